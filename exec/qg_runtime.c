/* qg_runtime.c - a context: executors, the two static graphs, the KV cache,
 * and the step loop that feeds them.
 *
 * Per step the host writes three small inputs (tokens, pos, step), runs the
 * partitions in order (copy partitions through tensor_get/tensor_set), and
 * reads the logits.  The graphs never change after qg_ctx_new. */
#include "../include/qmoe_graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct qg_ctx {
    const qg_model *m;
    qg_ctx_params p;
    qg_exec execs[QG_MAX_EXEC];
    int n_exec, cpu_index;
    qg_graph *decode;  /* n_tok_max = 1, last row of logits */
    qg_graph *prefill; /* n_tok_max = n_batch */
    int n_past;
    float *logits;     /* (n_vocab) last token */
    int logits_exec;   /* executor whose host_alloc gave logits, or -1 (malloc) */
    int32_t *tokens;   /* (n_batch) staging */
    int32_t *pos;      /* (n_batch) staging */
    void *staging;     /* copies between two non-host executors */
    size_t staging_bytes;
    qg_profile *prof;
};

qg_ctx_params qg_ctx_default_params(void) {
    qg_ctx_params p = {0};
    p.n_batch = 512;
    p.backend = "cpu";
    p.kv_type = QG_F16;
    return p;
}

/* Executors in preference order, the CPU last. */
static qg_status make_execs(qg_ctx *c, qg_error *err) {
    qg_exec_opts eo = {.n_threads = c->p.n_threads, .device = c->p.device};
    const char *b = c->p.backend ? c->p.backend : "cpu";
    qg_status st;
    if (strcmp(b, "cuda") == 0) {
#ifdef QG_HAVE_CUDA
        if ((st = qg_exec_cuda_new(&eo, &c->execs[c->n_exec], err))) return st;
        c->n_exec++;
#else
        return qg_error_set(err, QG_ERR_BACKEND,
                            "--backend cuda: this build of qmoe-graph has no CUDA executor "
                            "(configure on a machine with nvcc, QG_CUDA=ON)");
#endif
    } else if (strcmp(b, "vulkan") == 0) {
#ifdef QG_HAVE_VULKAN
        if ((st = qg_exec_vulkan_new(&eo, &c->execs[c->n_exec], err))) return st;
        c->n_exec++;
#else
        return qg_error_set(err, QG_ERR_BACKEND,
                            "--backend vulkan: this build of qmoe-graph has no Vulkan executor "
                            "(install libvulkan-dev and glslc, QG_VULKAN=ON)");
#endif
    } else if (strcmp(b, "cpu") != 0) {
        return qg_error_set(err, QG_ERR_ARG, "--backend %s: unknown backend (cpu, cuda, vulkan)", b);
    }
    st = qg_exec_cpu_new(&eo, &c->execs[c->n_exec], err);
    if (st) return st;
    c->cpu_index = c->n_exec++;
    return QG_OK;
}

static qg_graph *build_and_schedule(qg_ctx *c, qg_phase phase, int n_tok, bool all,
                                    qg_error *err) {
    qg_build_opts bo = {.phase = phase, .n_tok_max = n_tok, .n_ctx = c->p.n_ctx,
                        .kv_type = c->p.kv_type, .logits_all = all};
    qg_graph *g = qg_model_build_graph(c->m, &bo, err);
    if (!g) return NULL;
    qg_place_opts po = {.n_exec = c->n_exec, .execs = c->execs, .cpu_index = c->cpu_index,
                        .n_cpu_moe = c->p.n_cpu_moe};
    if (qg_graph_schedule(g, !c->p.no_fuse, &po, err)) {
        qg_graph_free(g);
        return NULL;
    }
    return g;
}

qg_ctx *qg_ctx_new(const qg_model *m, const qg_ctx_params *p, qg_error *err) {
    qg_ctx *c = calloc(1, sizeof *c);
    if (!c) { qg_error_set(err, QG_ERR_NOMEM, "out of memory"); return NULL; }
    c->logits_exec = -1;
    c->m = m;
    c->p = *p;
    if (c->p.n_ctx <= 0) c->p.n_ctx = (int)QG_MIN(4096u, m->hp.n_ctx_train);
    if (c->p.n_batch <= 0) c->p.n_batch = 512;
    if (c->p.n_batch > c->p.n_ctx) c->p.n_batch = c->p.n_ctx;
    if (c->p.n_threads <= 0) c->p.n_threads = (int)QG_MAX(1, sysconf(_SC_NPROCESSORS_ONLN));
    if (c->p.n_ctx > (int)(1u << 22)) {
        qg_error_set(err, QG_ERR_ARG, "-c %d: context too large", c->p.n_ctx);
        goto fail;
    }
    if (make_execs(c, err)) goto fail;
    if (!(c->decode = build_and_schedule(c, QG_PHASE_DECODE, 1, false, err))) goto fail;
    if (!(c->prefill = build_and_schedule(c, QG_PHASE_PREFILL, c->p.n_batch, c->p.logits_all, err)))
        goto fail;
    for (int e = 0; e < c->n_exec && !c->p.plan_only; e++) {
        QG_ASSERT(c->decode->kv_bytes[e] == c->prefill->kv_bytes[e]);
        if (c->decode->kv_bytes[e] && c->execs[e].i->kv_alloc(c->execs[e].self, c->decode->kv_bytes[e], err))
            goto fail;
        if (c->execs[e].i->compile(c->execs[e].self, c->decode, e, err) ||
            c->execs[e].i->compile(c->execs[e].self, c->prefill, e, err))
            goto fail;
    }
    /* the last token's logits, in memory the logits' executor copies into
     * fastest (pinned for CUDA) when it offers such memory */
    if (!c->p.plan_only) {
        const qg_exec *le = &c->execs[c->decode->tensors[c->decode->t_logits].exec];
        if (le->i->host_alloc &&
            (c->logits = le->i->host_alloc(le->self, sizeof(float) * m->hp.n_vocab)))
            c->logits_exec = c->decode->tensors[c->decode->t_logits].exec;
    }
    if (!c->logits) c->logits = malloc(sizeof(float) * m->hp.n_vocab);
    c->tokens = malloc(sizeof(int32_t) * (size_t)c->p.n_batch);
    c->pos = malloc(sizeof(int32_t) * (size_t)c->p.n_batch);
    if (!c->logits || !c->tokens || !c->pos) {
        qg_error_set(err, QG_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* staging for copies between executors that both lack host memory */
    qg_graph *gs[2] = {c->decode, c->prefill};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < gs[k]->n_nodes; i++)
            if (gs[k]->nodes[i].op == QG_OP_COPY)
                c->staging_bytes = QG_MAX(c->staging_bytes, gs[k]->tensors[gs[k]->nodes[i].in[0]].nbytes);
    if (c->staging_bytes && !(c->staging = malloc(c->staging_bytes))) {
        qg_error_set(err, QG_ERR_NOMEM, "out of memory");
        goto fail;
    }
    return c;
fail:
    qg_ctx_free(c);
    return NULL;
}

void qg_ctx_free(qg_ctx *c) {
    if (!c) return;
    if (c->logits_exec >= 0) { /* returned before its executor goes */
        const qg_exec *le = &c->execs[c->logits_exec];
        le->i->host_free(le->self, c->logits);
        c->logits = NULL;
    }
    for (int e = 0; e < c->n_exec; e++) {
        if (c->p.plan_only) { c->execs[e].i->free(c->execs[e].self); continue; }
        if (c->decode) c->execs[e].i->release(c->execs[e].self, c->decode);
        if (c->prefill) c->execs[e].i->release(c->execs[e].self, c->prefill);
        c->execs[e].i->free(c->execs[e].self);
    }
    qg_graph_free(c->decode);
    qg_graph_free(c->prefill);
    free(c->logits);
    free(c->tokens);
    free(c->pos);
    free(c->staging);
    free(c);
}

/* Write bytes [0, n) of input tensor t on its executor. */
static qg_status set_input(qg_ctx *c, qg_graph *g, int t, const void *src, size_t n,
                           qg_error *err) {
    const qg_exec *e = &c->execs[g->tensors[t].exec];
    return e->i->tensor_set(e->self, g, t, src, 0, n, err);
}

/* Run a copy node: the live tokens' bytes of in[0] into out[0]. */
static qg_status run_copy(qg_ctx *c, qg_graph *g, const qg_node *n, int n_tok, qg_error *err) {
    const qg_tensor *s = &g->tensors[n->in[0]], *d = &g->tensors[n->out[0]];
    size_t bytes = s->role == QG_ROLE_INPUT && n->in[0] == g->t_step
                       ? s->nbytes : s->nbytes / (size_t)g->n_tok_max * (size_t)n_tok;
    const qg_exec *a = &c->execs[s->exec], *b = &c->execs[d->exec];
    qg_status st = a->i->sync(a->self, err);
    if (st) return st;
    void *dh = b->i->tensor_host ? b->i->tensor_host(b->self, g, n->out[0]) : NULL;
    if (dh) return a->i->tensor_get(a->self, g, n->in[0], dh, 0, bytes, err);
    void *sh = a->i->tensor_host ? a->i->tensor_host(a->self, g, n->in[0]) : NULL;
    if (sh) return b->i->tensor_set(b->self, g, n->out[0], sh, 0, bytes, err);
    if ((st = a->i->tensor_get(a->self, g, n->in[0], c->staging, 0, bytes, err))) return st;
    return b->i->tensor_set(b->self, g, n->out[0], c->staging, 0, bytes, err);
}

/* One step of graph g over n_tok tokens already staged in c->tokens/pos. */
static qg_status run_step(qg_ctx *c, qg_graph *g, int n_tok, float *rows_out, qg_error *err) {
    int32_t step[QG_STEP_N] = {0};
    step[QG_STEP_N_TOK] = n_tok;
    step[QG_STEP_N_KV] = c->pos[n_tok - 1] + 1;
    qg_status st;
    if ((st = set_input(c, g, g->t_tokens, c->tokens, sizeof(int32_t) * (size_t)n_tok, err)) ||
        (st = set_input(c, g, g->t_pos, c->pos, sizeof(int32_t) * (size_t)n_tok, err)) ||
        (st = set_input(c, g, g->t_step, step, sizeof step, err)))
        return st;
    for (int p = 0; p < g->n_parts; p++) {
        const qg_partition *part = &g->parts[p];
        const qg_exec *e = &c->execs[part->exec];
        if (g->nodes[part->first].op == QG_OP_COPY) {
            uint64_t t0 = c->prof ? qg_time_ns() : 0;
            if ((st = run_copy(c, g, &g->nodes[part->first], n_tok, err))) return st;
            if (c->prof)
                qg_profile_add(c->prof, g, part->first, n_tok, step[QG_STEP_N_KV], part->exec,
                               t0, qg_time_ns());
        } else if ((st = e->i->run(e->self, g, p, step, c->prof, err))) {
            return st;
        }
    }
    /* tensor_get waits for the executor's work itself (its copy goes out
     * right behind the step, with no host round trip in between) */
    const qg_tensor *lt = &g->tensors[g->t_logits];
    const qg_exec *le = &c->execs[lt->exec];
    size_t V = c->m->hp.n_vocab, row = sizeof(float) * V;
    int rows = (int)lt->ne[1];
    if (rows == 1) return le->i->tensor_get(le->self, g, g->t_logits, c->logits, 0, row, err);
    if (rows_out && (st = le->i->tensor_get(le->self, g, g->t_logits, rows_out, 0, row * (size_t)n_tok, err)))
        return st;
    return le->i->tensor_get(le->self, g, g->t_logits, c->logits, row * (size_t)(n_tok - 1), row, err);
}

qg_status qg_ctx_decode(qg_ctx *c, const int32_t *tokens, int n, float *logits_out,
                        qg_error *err) {
    if (n <= 0) return qg_error_set(err, QG_ERR_ARG, "no tokens to process");
    if (c->p.plan_only) return qg_error_set(err, QG_ERR_ARG, "this context was made to plan only");
    if (logits_out && !c->p.logits_all)
        return qg_error_set(err, QG_ERR_ARG, "all-token logits need a context made with logits_all");
    if ((int64_t)c->n_past + n > c->p.n_ctx)
        return qg_error_set(err, QG_ERR_RANGE,
                            "%d tokens at position %d do not fit in the context of %d tokens",
                            n, c->n_past, c->p.n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= c->m->hp.n_vocab)
            return qg_error_set(err, QG_ERR_RANGE,
                                "token %d (at index %d) is out of range: the vocabulary has %u tokens",
                                tokens[i], i, c->m->hp.n_vocab);
    for (int done = 0; done < n;) {
        int chunk = QG_MIN(n - done, c->p.n_batch);
        qg_graph *g = (chunk == 1 && !logits_out) ? c->decode : c->prefill;
        for (int i = 0; i < chunk; i++) {
            c->tokens[i] = tokens[done + i];
            c->pos[i] = c->n_past + i;
        }
        float *rows = logits_out ? logits_out + (size_t)done * c->m->hp.n_vocab : NULL;
        qg_status st = run_step(c, g, chunk, rows, err);
        if (st) return st;
        c->n_past += chunk;
        done += chunk;
    }
    return QG_OK;
}

const float *qg_ctx_logits(const qg_ctx *c) { return c->logits; }
int qg_ctx_n_past(const qg_ctx *c) { return c->n_past; }
int qg_ctx_n_ctx(const qg_ctx *c) { return c->p.n_ctx; }
void qg_ctx_reset(qg_ctx *c) { c->n_past = 0; }
void qg_ctx_set_profile(qg_ctx *c, qg_profile *prof) {
    c->prof = prof;
    if (prof)
        for (int e = 0; e < c->n_exec && e < QG_MAX_EXEC; e++) prof->exec_names[e] = c->execs[e].i->name;
}
const qg_graph *qg_ctx_graph(const qg_ctx *c, qg_phase phase) {
    return phase == QG_PHASE_DECODE ? c->decode : c->prefill;
}
const char *qg_ctx_exec_name(const qg_ctx *c, int e) {
    return e >= 0 && e < c->n_exec ? c->execs[e].i->name : "?";
}
int qg_ctx_n_threads(const qg_ctx *c) { return c->p.n_threads; }
