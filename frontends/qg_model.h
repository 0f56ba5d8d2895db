/*
 * qg_model.h - Qwen3 / Qwen3-MoE models from GGUF: hyperparameters, the
 * validated weight table, and the graph builder.
 *
 * Architectures: "qwen3moe" (sparse experts) and "qwen3" (dense SwiGLU).
 * Keys read (prefix = the value of general.architecture):
 *   <arch>.block_count, .embedding_length, .feed_forward_length,
 *   .context_length, .attention.head_count, .attention.head_count_kv,
 *   .attention.key_length, .attention.value_length,
 *   .attention.layer_norm_rms_epsilon, .rope.freq_base,
 *   .expert_count, .expert_used_count, .expert_feed_forward_length (moe).
 */
#ifndef QG_MODEL_H
#define QG_MODEL_H

#include "../graph/qg_graph.h"
#include "qg_gguf.h"

typedef enum qg_arch { QG_ARCH_QWEN3MOE, QG_ARCH_QWEN3 } qg_arch;

typedef struct qg_hparams {
    qg_arch arch;
    uint32_t n_layer;      /* block_count */
    uint32_t n_embd;       /* embedding_length */
    uint32_t n_ff;         /* feed_forward_length (dense FFN width) */
    uint32_t n_ctx_train;  /* context_length */
    uint32_t n_head, n_head_kv;
    uint32_t head_dim_k, head_dim_v; /* key_length, value_length (equal) */
    float rms_eps;
    float rope_theta;
    uint32_t n_expert, n_expert_used, n_ff_exp; /* 0 for dense qwen3 */
    uint32_t n_vocab;      /* rows of token_embd.weight */
} qg_hparams;

/* Weights of one block.  Shapes innermost first, as in GGUF. */
typedef struct qg_layer_weights {
    const qg_gguf_tensor *attn_norm;   /* (E) */
    const qg_gguf_tensor *wq;          /* (E, hd*n_head) */
    const qg_gguf_tensor *wk;          /* (E, hd*n_head_kv) */
    const qg_gguf_tensor *wv;          /* (E, hd*n_head_kv) */
    const qg_gguf_tensor *wo;          /* (hd*n_head, E) */
    const qg_gguf_tensor *q_norm;      /* (hd) */
    const qg_gguf_tensor *k_norm;      /* (hd) */
    const qg_gguf_tensor *ffn_norm;    /* (E) */
    /* qwen3moe */
    const qg_gguf_tensor *gate_inp;    /* (E, X) */
    const qg_gguf_tensor *gate_exps;   /* (E, F, X) */
    const qg_gguf_tensor *up_exps;     /* (E, F, X) */
    const qg_gguf_tensor *down_exps;   /* (F, E, X) */
    /* qwen3 */
    const qg_gguf_tensor *ffn_gate;    /* (E, n_ff) */
    const qg_gguf_tensor *ffn_up;      /* (E, n_ff) */
    const qg_gguf_tensor *ffn_down;    /* (n_ff, E) */
} qg_layer_weights;

typedef struct qg_model {
    qg_gguf *gguf; /* owned */
    qg_hparams hp;
    const qg_gguf_tensor *tok_embd;    /* (E, V) */
    const qg_gguf_tensor *output_norm; /* (E) */
    const qg_gguf_tensor *output;      /* (E, V); == tok_embd when tied */
    bool tied_output;
    qg_layer_weights *layers;          /* n_layer */
} qg_model;

/* Read and check hyperparameters only (no tensors). */
qg_status qg_hparams_read(const qg_gguf *g, qg_hparams *hp, qg_error *err);

/* Open `path`, read hparams, check every required tensor for presence,
 * type (one we can compute with) and shape.  NULL on error. */
qg_model *qg_model_load(const char *path, qg_error *err);
/* Same over an already-open GGUF (takes ownership on success only). */
qg_model *qg_model_from_gguf(qg_gguf *g, qg_error *err);
void qg_model_free(qg_model *m);

/* Graph build options. */
typedef struct qg_build_opts {
    qg_phase phase;
    int n_tok_max;     /* decode: 1 */
    int n_ctx;
    qg_dtype kv_type;  /* QG_F16 (default) or QG_F32 */
    bool logits_all;   /* lm_head over every token (eval); else last only */
} qg_build_opts;

/* Build the plain (unfused) graph: embed, then per layer rmsnorm, qkv,
 * rope, attention, matmul (wo), add, rmsnorm, router, topk, expert_swiglu,
 * aggregate (or swiglu + matmul for dense), add; then rmsnorm, lm_head. */
qg_graph *qg_model_build_graph(const qg_model *m, const qg_build_opts *o,
                               qg_error *err);

#endif
