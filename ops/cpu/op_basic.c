/*
 * op_basic.c - the row-wise kernels: embed, rmsnorm, add, copy.
 */
#include "qg_cpu_internal.h"

#include "../quant/qg_quant.h"

/* Elements per work item of embed (a multiple of every block size). */
#define EMBED_CHUNK 256
/* Elements per work item of add (one cache line of f32 per 16). */
#define ADD_CHUNK 256

/* embed: tok_embd (E,V) any dtype, tokens (I32,T) -> x (E,T).  Work items
 * are (token, chunk of EMBED_CHUNK elements), split evenly. */
void qg_cpu_embed(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *w = qg_cpu_in(a, 0);
    const char *wd = qg_cpu_in_ptr(a, 0);
    const int32_t *tok = qg_cpu_in_ptr(a, 1); /* (T) */
    float *x = qg_cpu_out_ptr(a, 0);          /* (E,T) */
    const int64_t E = w->ne[0], V = w->ne[1];
    const size_t rb = qg_dtype_row_bytes(w->type, E);
    const int64_t per_tok = (E + EMBED_CHUNK - 1) / EMBED_CHUNK;
    int64_t i0, i1;
    qg_cpu_split(per_tok * a->n_tok, ith, nth, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t = i / per_tok, c = (i % per_tok) * EMBED_CHUNK;
        const int64_t id = tok[t];
        QG_ASSERT(id >= 0 && id < V);
        const int64_t len = QG_MIN((int64_t)EMBED_CHUNK, E - c);
        qg_dequant_row(w->type, wd + (size_t)id * rb + qg_dtype_row_bytes(w->type, c),
                       x + (size_t)t * (size_t)E + (size_t)c, len);
    }
}

/* sum of squares of x[0..n) in f32 with 8 partial sums */
static float sumsq_f32(const float *x, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += x[i + j] * x[i + j];
    for (; i < n; i++) s[0] += x[i] * x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void qg_cpu_rmsnorm_row(const float *x, const float *w, float *y, int64_t n,
                        float eps) {
    const float scale = 1.0f / sqrtf(sumsq_f32(x, n) / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}

/* rmsnorm: x (N,T), w (N) f32 -> y (N,T); tokens split over workers. */
void qg_cpu_rmsnorm(const qg_cpu_op_args *a, int ith, int nth) {
    const float *x = qg_cpu_in_ptr(a, 0); /* (N,T) */
    const float *w = qg_cpu_in_ptr(a, 1); /* (N) */
    float *y = qg_cpu_out_ptr(a, 0);      /* (N,T) */
    const int64_t N = qg_cpu_in(a, 0)->ne[0];
    int64_t t0, t1;
    qg_cpu_split(a->n_tok, ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        qg_cpu_rmsnorm_row(x + (size_t)t * (size_t)N, w, y + (size_t)t * (size_t)N,
                           N, a->n->p.eps);
}

/* add: a (N,T), b (N,T) -> y (N,T); chunks of the live elements split. */
void qg_cpu_add(const qg_cpu_op_args *a, int ith, int nth) {
    const float *x = qg_cpu_in_ptr(a, 0), *z = qg_cpu_in_ptr(a, 1);
    float *y = qg_cpu_out_ptr(a, 0);
    const int64_t n = qg_cpu_in(a, 0)->ne[0] * a->n_tok;
    int64_t c0, c1;
    qg_cpu_split((n + ADD_CHUNK - 1) / ADD_CHUNK, ith, nth, &c0, &c1);
    const int64_t e = QG_MIN(c1 * ADD_CHUNK, n);
    for (int64_t i = c0 * ADD_CHUNK; i < e; i++) y[i] = x[i] + z[i];
}

size_t qg_cpu_live_bytes(const qg_graph *g, int id, int n_tok) {
    const qg_tensor *t = &g->tensors[id];
    const bool per_token =
        t->role != QG_ROLE_WEIGHT && t->role != QG_ROLE_KV && id != g->t_step &&
        t->ne[t->n_dims - 1] == g->n_tok_max &&
        (t->n_dims > 1 || id == g->t_tokens || id == g->t_pos);
    return per_token ? t->nbytes / (size_t)g->n_tok_max * (size_t)n_tok : t->nbytes;
}

/* copy: x -> y, same type and shape; the live tokens' bytes, split in
 * 4 KiB pieces. */
void qg_cpu_copy(const qg_cpu_op_args *a, int ith, int nth) {
    const char *x = qg_cpu_in_ptr(a, 0);
    char *y = qg_cpu_out_ptr(a, 0);
    const size_t n = qg_cpu_live_bytes(a->g, a->n->in[0], a->n_tok);
    const int64_t piece = 4096;
    int64_t p0, p1;
    qg_cpu_split(((int64_t)n + piece - 1) / piece, ith, nth, &p0, &p1);
    const size_t b = (size_t)(p0 * piece), e = QG_MIN((size_t)(p1 * piece), n);
    if (e > b) memcpy(y + b, x + b, e - b);
}
