/*
 * qmoe_graph.h - the public API of qmoe-graph.
 *
 * Load a Qwen3 / Qwen3-MoE GGUF, make a context (executors, the static
 * decode and prefill graphs, the KV cache), feed it tokens, read logits.
 *
 *   qg_error err;
 *   qg_model *m = qg_model_load("model.gguf", &err);
 *   qg_ctx_params p = qg_ctx_default_params();
 *   qg_ctx *ctx = qg_ctx_new(m, &p, &err);
 *   qg_ctx_decode(ctx, prompt, n_prompt, NULL, &err);     // prefill
 *   const float *logits = qg_ctx_logits(ctx);             // (n_vocab)
 *   ... pick a token t ...
 *   qg_ctx_decode(ctx, &t, 1, NULL, &err);                // one step
 *   qg_ctx_free(ctx); qg_model_free(m);
 *
 * Every function that can fail returns a qg_status (or NULL) and fills a
 * qg_error with a one-line message; nothing is half done on failure.
 */
#ifndef QMOE_GRAPH_H
#define QMOE_GRAPH_H

#include "../exec/qg_exec.h"
#include "../frontends/qg_model.h"
#include "../graph/qg_profile.h"
#include "../graph/qg_sched.h"

typedef struct qg_ctx qg_ctx;

typedef struct qg_ctx_params {
    int n_ctx;           /* KV cache rows; 0: min(4096, context_length) */
    int n_batch;         /* width of the prefill graph (default 512) */
    int n_threads;       /* CPU worker threads; 0: all online CPUs */
    const char *backend; /* "cpu" (default), "cuda", "vulkan" */
    int device;          /* GPU index for cuda / vulkan */
    qg_dtype kv_type;    /* QG_F16 (default) or QG_F32 */
    bool no_fuse;        /* skip the sparse-expert fusion pass */
    bool logits_all;     /* prefill graph returns every row (eval) */
    int n_cpu_moe;       /* experts of layers [0, n) stay on the CPU */
    bool plan_only;      /* build, place and plan the graphs; allocate and
                            compile nothing (dump, info) */
} qg_ctx_params;

qg_ctx_params qg_ctx_default_params(void);

/* Build the graphs, place, plan, allocate, compile.  The model must
 * outlive the context.  NULL on error. */
qg_ctx *qg_ctx_new(const qg_model *m, const qg_ctx_params *p, qg_error *err);
void qg_ctx_free(qg_ctx *ctx);

/* Process tokens[0..n) at positions n_past.. (prefill in chunks of
 * n_batch; one token uses the decode graph).  When logits_out is non-NULL
 * the context must have logits_all, and it receives (n_vocab, n) floats.
 * Token ids are checked first; a token out of range or a context overflow
 * is refused (QG_ERR_RANGE) before anything runs. */
qg_status qg_ctx_decode(qg_ctx *ctx, const int32_t *tokens, int n,
                        float *logits_out, qg_error *err);

/* Logits of the last processed token: (n_vocab). */
const float *qg_ctx_logits(const qg_ctx *ctx);
int qg_ctx_n_past(const qg_ctx *ctx);
int qg_ctx_n_ctx(const qg_ctx *ctx);
/* Forget the conversation (the KV cache is simply overwritten later). */
void qg_ctx_reset(qg_ctx *ctx);
/* Record per-node events into prof (NULL stops); prof must outlive use. */
void qg_ctx_set_profile(qg_ctx *ctx, qg_profile *prof);
/* The scheduled graph of a phase (for dump). */
const qg_graph *qg_ctx_graph(const qg_ctx *ctx, qg_phase phase);
const char *qg_ctx_exec_name(const qg_ctx *ctx, int exec_index);
int qg_ctx_n_threads(const qg_ctx *ctx);

#endif
