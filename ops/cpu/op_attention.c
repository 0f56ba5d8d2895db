/*
 * op_attention.c - causal GQA attention over the KV cache.
 *
 * Phase 1 appends this step's k and v rows to the caches at rows pos[t]
 * (F16 caches: rounded once, to nearest even).  A barrier, then phase 2:
 * for every (token t, q head h), over cache rows 0..pos[t] of kv head
 * h / (n_head / n_head_kv):
 *   s_j = (q . k_j) / sqrt(hd)        qk->dot (f32 or f16 row)
 *   p_j = exp(s_j - max s)            f32
 *   o   = sum_j p_j v_j / sum_j p_j   f32 accumulators
 * (token, head) pairs are split by their cost (pos[t] + 1 rows, plus a
 * constant), so prefill's long late rows do not all land on one worker.
 * Each pair is computed whole by one worker, so the result does not depend
 * on the thread count.
 *
 * With AVX2 (and hd % 8 == 0) the three loops over the rows run in
 * op_attention_avx2.c: scores four rows at a time, a vector exp, and the
 * weighted sum with 64 accumulator columns held in registers.  Otherwise
 * qk->dot, expf and a scalar axpy.
 */
#include "qg_cpu_internal.h"

/* Elements per work item of the cache append. */
#define APPEND_CHUNK 64
/* Fixed cost of a (token, head) pair, in cache rows, for the split. */
#define PAIR_OVERHEAD 32

static void axpy_f32(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void axpy_f16(float *y, float a, const uint16_t *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * qg_f16_to_f32(x[i]);
}

static void f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = qg_f32_to_f16(x[i]);
}

size_t qg_cpu_attention_scratch(int n_ctx, int head_dim) {
    return (size_t)n_ctx + (size_t)head_dim;
}

/* Phase 1: k, v (Dkv,T) -> cache rows pos[t] (Dkv,C), split in chunks. */
static void append_kv(const qg_cpu_op_args *a, int ith, int nth, bool simd) {
    const float *src[2] = {qg_cpu_in_ptr(a, 1), qg_cpu_in_ptr(a, 2)}; /* (Dkv,T) */
    char *dst[2] = {qg_cpu_in_ptr(a, 3), qg_cpu_in_ptr(a, 4)};        /* (Dkv,C) */
    const int32_t *pos = qg_cpu_in_ptr(a, 5);                        /* (T) */
    const qg_tensor *kc = qg_cpu_in(a, 3);
    const int64_t Dkv = kc->ne[0], C = kc->ne[1];
    const bool f16 = kc->type == QG_F16;
    const size_t es = f16 ? 2 : 4;
    const int64_t cpr = (Dkv + APPEND_CHUNK - 1) / APPEND_CHUNK; /* chunks per row */
    const int64_t per_mat = cpr * a->n_tok;
    int64_t i0, i1;
    qg_cpu_split(2 * per_mat, ith, nth, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        const int m = (int)(i / per_mat);
        const int64_t t = (i % per_mat) / cpr, c = (i % cpr) * APPEND_CHUNK;
        const int64_t len = QG_MIN((int64_t)APPEND_CHUNK, Dkv - c);
        QG_ASSERT(pos[t] >= 0 && pos[t] < C);
        const float *s = src[m] + (size_t)t * (size_t)Dkv + (size_t)c;
        char *d = dst[m] + ((size_t)pos[t] * (size_t)Dkv + (size_t)c) * es;
        if (!f16) memcpy(d, s, (size_t)len * sizeof(float));
        else if (simd) qg_cpu_f32_to_f16_avx2(s, (uint16_t *)d, len);
        else f32_to_f16(s, (uint16_t *)d, len);
    }
}

/* One (token, head) pair: o (hd) from q (hd) over rows [0, n_kv) of the
 * caches starting at kbase / vbase (row stride Dkv elements of type ct).
 * s: (n_kv) scores, acc: (hd). */
static void attend_one(const qg_quant_kernels *qk, qg_dtype ct, bool simd,
                       const float *q, const char *kbase, const char *vbase,
                       size_t stride, int64_t n_kv, int hd, float *s,
                       float *acc, float *o) {
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t row_bytes = stride * (ct == QG_F16 ? 2 : 4);
    simd = simd && hd % 8 == 0;
    if (simd) {
        qg_cpu_attn_scores_avx2(ct, q, kbase, stride, n_kv, hd, scale, s);
    } else {
        for (int64_t j = 0; j < n_kv; j++)
            s[j] = qk->dot(ct, kbase + (size_t)j * row_bytes, q, hd) * scale;
    }
    float mx = -INFINITY;
    for (int64_t j = 0; j < n_kv; j++) mx = s[j] > mx ? s[j] : mx;
    float sum = 0;
    if (simd) {
        sum = qg_cpu_softmax_exp_avx2(s, n_kv, mx);
        qg_cpu_attn_accum_avx2(ct, s, vbase, stride, n_kv, hd, acc);
    } else {
        for (int64_t j = 0; j < n_kv; j++) {
            s[j] = expf(s[j] - mx);
            sum += s[j];
        }
        memset(acc, 0, sizeof(float) * (size_t)hd);
        for (int64_t j = 0; j < n_kv; j++) {
            const char *v = vbase + (size_t)j * row_bytes;
            if (ct == QG_F16) axpy_f16(acc, s[j], (const uint16_t *)v, hd);
            else axpy_f32(acc, s[j], (const float *)v, hd);
        }
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < hd; i++) o[i] = acc[i] * inv;
}

/* attention: q (Dq,T), k (Dkv,T), v (Dkv,T), kcache (Dkv,C),
 * vcache (Dkv,C), pos (I32,T) -> o (Dq,T). */
void qg_cpu_attention(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_op_params *p = &a->n->p;
    const bool simd = a->qk->level >= QG_SIMD_AVX2;
    append_kv(a, ith, nth, simd);
    qg_threadpool_barrier(a->tp);

    const int hd = p->head_dim, nh = p->n_head, group = nh / p->n_head_kv;
    const float *q = qg_cpu_in_ptr(a, 0);     /* (Dq,T) */
    const qg_tensor *kc = qg_cpu_in(a, 3);
    const char *kcache = qg_cpu_in_ptr(a, 3); /* (Dkv,C) */
    const char *vcache = qg_cpu_in_ptr(a, 4); /* (Dkv,C) */
    const int32_t *pos = qg_cpu_in_ptr(a, 5); /* (T) */
    float *o = qg_cpu_out_ptr(a, 0);          /* (Dq,T) */
    const size_t es = kc->type == QG_F16 ? 2 : 4;
    const size_t stride = (size_t)kc->ne[0]; /* Dkv elements per row */
    const size_t Dq = (size_t)nh * hd;
    float *s = qg_cpu_scratch(a, ith);        /* (C) scores */
    float *acc = s + a->g->n_ctx;             /* (hd) */

    /* total cost, then each pair goes to the worker whose share holds the
     * middle of the pair's cost interval */
    int64_t total = 0;
    for (int t = 0; t < a->n_tok; t++) total += (int64_t)nh * (pos[t] + 1 + PAIR_OVERHEAD);
    int64_t cum = 0;
    for (int t = 0; t < a->n_tok; t++) {
        const int64_t w = pos[t] + 1 + PAIR_OVERHEAD;
        const int64_t lo = cum, hi = cum + (int64_t)nh * w;
        cum = hi;
        /* skip tokens wholly outside this worker's share */
        if ((hi - 1) * nth / total < ith || lo * nth / total > ith) continue;
        for (int h = 0; h < nh; h++) {
            const int64_t mid = lo + (int64_t)h * w + w / 2;
            if (mid * nth / total != ith) continue;
            const size_t koff = (size_t)(h / group) * (size_t)hd * es;
            attend_one(a->qk, kc->type, simd, q + (size_t)t * Dq + (size_t)h * hd,
                       kcache + koff, vcache + koff, stride, (int64_t)pos[t] + 1, hd,
                       s, acc, o + (size_t)t * Dq + (size_t)h * hd);
        }
    }
}
