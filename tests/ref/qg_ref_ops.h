/*
 * qg_ref_ops.h - float64 reference implementations of every graph op.
 *
 * The truth the CPU kernels (and any other executor's kernels) are checked
 * against.  Inputs are what the kernels read: f32 activations, weights in
 * their stored format (dequantized row by row with qg_dequant_row_f64, so
 * exactly the values the kernels multiply).  Everything is computed in
 * double, in the plainest order.  Shapes innermost first, as in
 * graph/qg_graph.h; n_tok is the number of live tokens (columns).
 *
 * Several functions also return an "abs" array: the magnitude that bounds
 * the kernel's f32 rounding error for that element (e.g. sum |w_i x_i| for
 * a dot product), so a test can state a tolerance like
 * |y - ref| <= 1e-5 * abs + 1e-6.  Any abs pointer may be NULL.
 */
#ifndef QG_REF_OPS_H
#define QG_REF_OPS_H

#include "graph/qg_dtype.h"

#include <stdint.h>

/* dst (n) = row r of weight w (rows of n elements of type t), in double. */
void qg_ref_weight_row(qg_dtype t, const void *w, int64_t n, int64_t r,
                       double *dst);

/* embed: x (E, n_tok) = rows tok[t] of w (E, V) of type t. */
void qg_ref_embed(qg_dtype t, const void *w, int64_t E, const int32_t *tok,
                  int n_tok, double *x);

/* rmsnorm: y (n, n_tok) = x / sqrt(mean(x^2) + eps) * w. */
void qg_ref_rmsnorm(const float *x, const float *w, int64_t n, int n_tok,
                    double eps, double *y);

/* add: y (n) = a + b. */
void qg_ref_add(const float *a, const float *b, int64_t n, double *y);

/* matmul: y (m, n_tok) = W x, W (n, m) of type t, x (n, n_tok);
 * yabs = sum_i |w_i x_i|.  (matmul, router, lm_head, each qkv part.) */
void qg_ref_matmul(qg_dtype t, const void *w, int64_t n, int64_t m,
                   const float *x, int n_tok, double *y, double *yabs);

/* rope: q (hd*nh, n_tok), k (hd*nkv, n_tok): per head
 * x / sqrt(mean(x^2) + eps) * norm_w, then NEOX rotation of pairs
 * (i, i + hd/2) by pos[t] * theta^(-2i/hd). */
void qg_ref_rope(const float *q, const float *k, const float *q_norm,
                 const float *k_norm, const int32_t *pos, int n_tok, int hd,
                 int nh, int nkv, double eps, double theta, double *qo,
                 double *ko);

/*
 * attention: o (hd*nh, n_tok) for q (hd*nh, n_tok) over the caches
 * kc, vc (hd*nkv, C) given in double as the kernel must see them (this
 * step's rows already written): token t, head h reads rows 0..pos[t] of
 * kv head h / (nh/nkv); scores scaled by 1/sqrt(hd), softmax, weighted sum.
 * pv_abs (hd*nh, n_tok) = sum_j p_j |v_j|; qk_abs (nh, n_tok) =
 * max_j sum_i |q_i k_ji| / sqrt(hd).
 */
void qg_ref_attention(const float *q, const double *kc, const double *vc,
                      const int32_t *pos, int n_tok, int hd, int nh, int nkv,
                      double *o, double *pv_abs, double *qk_abs);

/* silu(g) * u and the error magnitude of an f32 evaluation whose g and u
 * carry dot-product errors bounded by c*gabs and c*uabs:
 * |u| * max|silu'| * gabs + |silu(g)| * uabs + |silu(g) u|. */
double qg_ref_swiglu_val(double g, double u, double gabs, double uabs,
                         double *habs);

/* swiglu (dense): h (F, n_tok) = silu(gate x) * (up x); gate, up (E, F). */
void qg_ref_swiglu(qg_dtype gt, const void *gate, qg_dtype ut, const void *up,
                   int64_t E, int64_t F, const float *x, int n_tok, double *h,
                   double *habs);

/*
 * topk: per token p = softmax(logits[:,t]) over X; ids (K, n_tok) the K
 * largest p (ties: lower id first), wts (K, n_tok) = p_id / sum of the K.
 * probs (X, n_tok): p.  gap (n_tok): p of the K-th minus p of the (K+1)-th
 * choice (1 when K == X).  probs and gap may be NULL.
 */
void qg_ref_topk(const float *logits, int X, int K, int n_tok, int32_t *ids,
                 double *wts, double *probs, double *gap);

/* expert_swiglu: h (F, K, n_tok): h[:,k,t] = silu(gate_e x_t) * (up_e x_t),
 * e = ids[k,t]; gate, up (E, F, X). */
void qg_ref_expert_swiglu(qg_dtype gt, const void *gate, qg_dtype ut,
                          const void *up, int64_t E, int64_t F, int X,
                          const float *x, const int32_t *ids, int K, int n_tok,
                          double *h, double *habs);

/* aggregate: y (E, n_tok) = sum_k wts[k,t] * (down_e h[:,k,t]),
 * down (F, E, X); yabs = sum_k |wts| sum_f |down h|. */
void qg_ref_aggregate(const float *h, qg_dtype dt, const void *down,
                      int64_t F, int64_t E, int X, const int32_t *ids,
                      const float *wts, int K, int n_tok, double *y,
                      double *yabs);

#endif
