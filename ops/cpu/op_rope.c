/*
 * op_rope.c - Qwen3's per-head q/k RMSNorm followed by NEOX rotary
 * position embedding.
 *
 * Angles: theta_i = pos * rope_theta^(-2i/hd), i in [0, hd/2), computed in
 * float64 (the frequency, the product, sin/cos in double) and rounded to
 * f32 once.  llama.cpp instead builds theta in f32 by repeated
 * multiplication (theta *= powf(base, -2/hd)), whose error grows with pos
 * and i (about pos * i * 2^-24 rad); the float64 angle is accurate to the
 * f32 rounding of sin/cos at every position, so we use it.
 */
#include "qg_cpu_internal.h"

#include "../../graph/qg_rope.h"

size_t qg_cpu_rope_scratch(int head_dim) { return (size_t)head_dim; }

/* rope: q (Dq,T), k (Dkv,T), q_norm (hd), k_norm (hd), pos (I32,T)
 *       -> q' (Dq,T), k' (Dkv,T).
 * Work items are (token, head) over the q heads then the k heads of each
 * token, split evenly; each worker caches the table of its current token. */
void qg_cpu_rope(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_op_params *p = &a->n->p;
    const int hd = p->head_dim, nh = p->n_head, nkv = p->n_head_kv, half = hd / 2;
    const float *q = qg_cpu_in_ptr(a, 0);      /* (Dq,T) */
    const float *k = qg_cpu_in_ptr(a, 1);      /* (Dkv,T) */
    const float *qn = qg_cpu_in_ptr(a, 2);     /* (hd) */
    const float *kn = qg_cpu_in_ptr(a, 3);     /* (hd) */
    const int32_t *pos = qg_cpu_in_ptr(a, 4);  /* (T) */
    float *qo = qg_cpu_out_ptr(a, 0);          /* (Dq,T) */
    float *ko = qg_cpu_out_ptr(a, 1);          /* (Dkv,T) */
    float *cs = qg_cpu_scratch(a, ith);        /* (hd) cos | sin */
    const size_t Dq = (size_t)nh * hd, Dkv = (size_t)nkv * hd;
    const int per_tok = nh + nkv;
    int64_t i0, i1;
    qg_cpu_split((int64_t)per_tok * a->n_tok, ith, nth, &i0, &i1);
    int64_t t_table = -1;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t = i / per_tok;
        const int j = (int)(i % per_tok);
        if (t != t_table) {
            qg_rope_cos_sin(cs, hd, pos[t], p->rope_theta);
            t_table = t;
        }
        const float *src, *w;
        float *dst;
        if (j < nh) {
            src = q + (size_t)t * Dq + (size_t)j * hd;
            dst = qo + (size_t)t * Dq + (size_t)j * hd;
            w = qn;
        } else {
            src = k + (size_t)t * Dkv + (size_t)(j - nh) * hd;
            dst = ko + (size_t)t * Dkv + (size_t)(j - nh) * hd;
            w = kn;
        }
        qg_cpu_rmsnorm_row(src, w, dst, hd, p->eps);
        for (int r = 0; r < half; r++) {
            const float x0 = dst[r], x1 = dst[r + half];
            const float c = cs[r], s = cs[half + r];
            dst[r] = x0 * c - x1 * s;
            dst[r + half] = x0 * s + x1 * c;
        }
    }
}
