/*
 * qg_cpu_internal.h - helpers shared by the CPU kernels (ops/cpu/ only).
 *
 * Work splitting.  Batched matmuls (n_tok > 1) split output rows in units
 * of QG_CPU_UNIT rows and call the gemm once per (unit, block of
 * QG_CPU_COLS tokens), both aligned to absolute multiples of their size.
 * The gemm calls are therefore the same whatever the thread count, so every
 * kernel gives bit-identical results for any nth (the tests check this).
 * Single-token matvecs call qk->dot per row and split rows evenly.
 *
 * Per-thread scratch of a node: worker ith owns a->scratch + ith *
 * a->scratch_floats; layouts are given by each kernel next to its
 * qg_cpu_*_scratch function.
 */
#ifndef QG_CPU_INTERNAL_H
#define QG_CPU_INTERNAL_H

#include "qg_cpu_ops.h"

#include <math.h>
#include <string.h>

#define QG_CPU_UNIT 16 /* output rows per gemm call (one cache line of y) */
#define QG_CPU_COLS 64 /* tokens per gemm call */
/* Products with up to this many columns use qk->gemm_cols (weights decoded
 * into registers, nothing gathered); wider ones the tiled qk->gemm.  The
 * choice depends only on the column count, never on the thread count. */
#define QG_CPU_THIN 10

/* The part [*a, *b) of [0, n) that worker ith of nth owns (even split). */
static inline void qg_cpu_split(int64_t n, int ith, int nth, int64_t *a,
                                int64_t *b) {
    *a = n * ith / nth;
    *b = n * (ith + 1) / nth;
}

/* Even split of [0, m) in units of `unit` rows (the last unit may be
 * short); row boundaries are multiples of unit. */
static inline void qg_cpu_split_units(int64_t m, int64_t unit, int ith,
                                      int nth, int64_t *r0, int64_t *r1) {
    int64_t nu = (m + unit - 1) / unit, u0, u1;
    qg_cpu_split(nu, ith, nth, &u0, &u1);
    *r0 = QG_MIN(u0 * unit, m);
    *r1 = QG_MIN(u1 * unit, m);
}

/* This worker's per-thread scratch (scratch_floats floats). */
static inline float *qg_cpu_scratch(const qg_cpu_op_args *a, int ith) {
    return a->scratch + (size_t)ith * a->scratch_floats;
}

static inline const qg_tensor *qg_cpu_in(const qg_cpu_op_args *a, int i) {
    return &a->g->tensors[a->n->in[i]];
}
static inline const qg_tensor *qg_cpu_out(const qg_cpu_op_args *a, int i) {
    return &a->g->tensors[a->n->out[i]];
}
static inline void *qg_cpu_in_ptr(const qg_cpu_op_args *a, int i) {
    return a->addr[a->n->in[i]];
}
static inline void *qg_cpu_out_ptr(const qg_cpu_op_args *a, int i) {
    return a->addr[a->n->out[i]];
}

static inline float qg_cpu_silu(float x) { return x / (1.0f + expf(-x)); }

/* Floats of per-thread scratch that qg_cpu_mm_rows needs for rows of n
 * elements when n_tok_max > 1 (0 for single-token graphs). */
size_t qg_cpu_mm_scratch(int64_t n, int n_tok_max);

/*
 * y[c * y_stride + r] = dot(row r of w, x + c * x_stride) for r in
 * [r0, r1), c in [0, n_cols).  Rows are w_row_bytes apart, of n elements of
 * type t.  n_cols == 1: one qk->dot per row; 2..QG_CPU_THIN: one
 * qk->gemm_cols over the rows.  Otherwise one gemm call per (unit of
 * QG_CPU_UNIT rows aligned to multiples of the unit in w's row index, block
 * of QG_CPU_COLS columns), scratch: qg_cpu_mm_scratch floats.
 */
void qg_cpu_mm_rows(const qg_quant_kernels *qk, qg_dtype t, const void *w,
                    size_t w_row_bytes, int64_t n, int64_t r0, int64_t r1,
                    const float *x, size_t x_stride, int n_cols, float *y,
                    size_t y_stride, float *scratch);

/* Floats of scratch qg_cpu_mm_cols needs for rows of n elements, up to
 * n_rows rows per call and n_cols_max columns. */
size_t qg_cpu_mm_cols_scratch(int64_t n, int n_rows, int n_cols_max);

/*
 * y[c * y_stride + r] = dot(row r of w, x[c]) for r in [0, n_rows), c in
 * [0, n_cols): columns given as pointers (e.g. the tokens routed to one
 * expert).  Blocks of QG_CPU_COLS columns; a block of up to QG_CPU_THIN
 * columns is one qk->gemm_cols, a wider one is gathered into scratch and
 * multiplied with qk->gemm.  Scratch: qg_cpu_mm_cols_scratch floats.
 */
void qg_cpu_mm_cols(const qg_quant_kernels *qk, qg_dtype t, const void *w,
                    size_t w_row_bytes, int64_t n, int n_rows,
                    const float *const *x, int n_cols, float *y,
                    size_t y_stride, float *scratch);

/*
 * y (m, n_tok) = W x, W (n, m) of type t, x (n, n_tok): worker ith's share
 * (rows split evenly for one token, in units otherwise).  The matmul,
 * router and lm_head kernels and moe_fused's router phase.
 */
void qg_cpu_matmul_part(const qg_quant_kernels *qk, qg_dtype t, const void *w,
                        int64_t n, int64_t m, const float *x, int n_tok,
                        float *y, float *scratch, int ith, int nth);

/* Bytes of the live part (first n_tok tokens) of tensor id: all bytes when
 * its last dimension is not the token dimension. */
size_t qg_cpu_live_bytes(const qg_graph *g, int id, int n_tok);

/* y (n) = x / sqrt(mean(x^2) + eps) * w, sum of squares in f32. */
void qg_cpu_rmsnorm_row(const float *x, const float *w, float *y, int64_t n,
                        float eps);

/* Per-thread scratch floats of the kernels that need some. */
size_t qg_cpu_swiglu_scratch(int64_t E, int n_tok_max);
size_t qg_cpu_rope_scratch(int head_dim);
size_t qg_cpu_attention_scratch(int n_ctx, int head_dim);
/* topk, expert_swiglu, aggregate, moe_fused: per-thread floats and shared
 * bytes. */
void qg_cpu_moe_scratch(const qg_graph *g, const qg_node *n, size_t *pt,
                        size_t *sh);

/* Attention's inner loops (op_attention_avx2.c), called only when
 * qk->level >= QG_SIMD_AVX2; the row helpers also need hd % 8 == 0.
 * Cache rows (type ct, F16 or F32) are `stride` elements apart.
 *   scores: s[j] = scale * dot(q, row j of k), j < n
 *   softmax_exp: s[j] = exp(s[j] - mx), returns the sum
 *   accum: acc[0..hd) = sum_j p[j] * row j of v */
void qg_cpu_attn_scores_avx2(qg_dtype ct, const float *q, const void *k,
                             size_t stride, int64_t n, int hd, float scale,
                             float *s);
float qg_cpu_softmax_exp_avx2(float *s, int64_t n, float mx);
void qg_cpu_attn_accum_avx2(qg_dtype ct, const float *p, const void *v,
                            size_t stride, int64_t n, int hd, float *acc);
/* y[i] = f16(x[i]), round to nearest even */
void qg_cpu_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n);

#endif
