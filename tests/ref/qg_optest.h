/*
 * qg_optest.h - the op-test harness shared by test_cpu_ops.c,
 * test_cuda_ops.c and test_vulkan_ops.c: small hand-built graphs with a
 * host copy of every tensor, random inputs, poisoned outputs, one step
 * through an executor (the qg_exec vtable of exec/qg_exec.h), and the
 * per-op comparisons with the float64 references of qg_ref_ops.h.
 *
 * A case reads top to bottom:
 *   qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, true);
 *   qg_optest_mm c = {.N = 256, .M = 37};
 *   c.w = qg_optest_add_weight(&f, "w", QG_Q4_K, 2, c.N, c.M, 1, &r, 1.0f);
 *   c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, c.N, T, 1);
 *   c.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, c.M, T, 1);
 *   qg_optest_add_node(&f, QG_OP_MATMUL, "matmul", (int[]){c.w, c.x}, 2,
 *                      (int[]){c.y}, 1, &p);
 *   qg_optest_schedule(&f, &ex, 1, 0); qg_optest_compile(&f, &ex);
 *   qg_optest_fill_act(&f, c.x, n_tok, &r, -1, 1);
 *   qg_optest_step(&f, &ex, (int[]){c.x}, 1, (int[]){c.y}, 1, n_tok, 0, label);
 *   qg_optest_check_matmul(&f, &c, n_tok, label);
 *   qg_optest_fx_free(&f);
 *
 * Conventions:
 *   - every tensor gets its own host buffer, filled with the poison byte
 *     0xFF (NaN as f32, -1 as i32) when it is added; weights are quantized
 *     from uniform random rows and are the graph's weight data;
 *   - activations are filled for the live tokens only; dead token columns
 *     hold NaN, so a kernel that reads them shows it;
 *   - every failure is a cmocka fail_msg naming the case label, the tensor
 *     and the element; every check states its tolerance at its definition.
 * The checks take the context as const void * so that one function serves
 * as the callback of every driver (qg_optest_check_fn).
 */
#ifndef QG_OPTEST_H
#define QG_OPTEST_H

#include "exec/qg_exec.h"
#include "graph/qg_graph.h"
#include "qg_test_rng.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QG_OPTEST_MAXT 40     /* tensors per fixture graph */
#define QG_OPTEST_POISON 0xFF /* poison byte: NaN as f32, -1 as i32 */

/* A hand-built graph and a host copy of each of its tensors. */
typedef struct qg_optest_fx {
    qg_graph *g;
    void *host[QG_OPTEST_MAXT]; /* host copy of tensor i (nbytes) */
    const qg_exec *ex;          /* released by qg_optest_fx_free when set */
} qg_optest_fx;

/* The weight types every matmul-like op is tested with. */
extern const qg_dtype QG_OPTEST_ALL_W[8];
/* Expert weight types (gate, up, down) of the CPU and Vulkan MoE cases. */
extern const qg_dtype QG_OPTEST_MOE_TYPES[4][3];

/* A different random stream for every (test, case); salt tells the files
 * apart. */
qg_test_rng qg_optest_rng_for(int test, int case_id, uint64_t salt);

/* An empty graph (phase, n_tok_max T, n_ctx C); with_step adds the `step`
 * input (I32, QG_STEP_N) that executors read, its host copy zeroed.
 * Aborts the test on failure.  Pair with qg_optest_fx_free. */
qg_optest_fx qg_optest_fx_new(qg_phase ph, int T, int C, bool with_step);
/* Release the graph on f->ex (when set), free the host copies and graph. */
void qg_optest_fx_free(qg_optest_fx *f);

/* A tensor of nd dims (e0, e1, e2) with its own poisoned host copy
 * (weights: the host copy is the tensor's data).  Returns its id. */
int qg_optest_add_tensor(qg_optest_fx *f, const char *name, qg_dtype type, qg_role role, int nd,
                         int64_t e0, int64_t e1, int64_t e2);
/* A weight of uniform random values in [-scale, scale], quantized row by
 * row (rows of e0 elements). */
int qg_optest_add_weight(qg_optest_fx *f, const char *name, qg_dtype type, int nd, int64_t e0,
                         int64_t e1, int64_t e2, qg_test_rng *r, float scale);
/* qg_graph_add_node in layer 0. */
int qg_optest_add_node(qg_optest_fx *f, qg_op op, const char *name, const int *in, int n_in,
                       const int *out, int n_out, const qg_op_params *p);

/* Host copy of tensor id as f32 / i32. */
float *qg_optest_f32(qg_optest_fx *f, int id);
int32_t *qg_optest_i32(qg_optest_fx *f, int id);

/* First n_tok tokens of f32 tensor id (token dim last) uniform in
 * [lo, hi], the rest NaN. */
void qg_optest_fill_act(qg_optest_fx *f, int id, int n_tok, qg_test_rng *r, float lo, float hi);
/* Routing weights (K, T): per live token K values uniform in [0.1, 1]
 * normalized to sum 1 (f32); dead tokens NaN. */
void qg_optest_fill_wts(qg_optest_fx *f, int id, int K, int n_tok, qg_test_rng *r);
/* Distinct random expert ids ids (K, n_tok) in [0, X).  expert0: expert 0
 * in every token (at k = t % K), so one expert gets more tokens than a
 * product's column tile. */
void qg_optest_make_ids(int32_t *ids, int X, int K, int n_tok, qg_test_rng *r, bool expert0);
/* n elements of each of two caches of type ct (F16 or F32): uniform in
 * [-1, 1], drawn k then v per element. */
void qg_optest_fill_cache(qg_dtype ct, void *kc, void *vc, size_t n, qg_test_rng *r);

/* Live bytes of tensor id for n_tok tokens: the token dim is last; KV
 * caches and (V, 1)-style outputs of a multi-token graph are whole. */
size_t qg_optest_live_bytes(const qg_optest_fx *f, int id, int n_tok);
/* Fail unless every byte of tensor id past its live bytes holds the
 * poison. */
void qg_optest_expect_tail(const qg_optest_fx *f, int id, int n_tok, const char *label);

/* n doubles (at least 1); aborts the test when out of memory. */
double *qg_optest_dalloc(int64_t n);

/* ---- executors and devices ---------------------------------------------- */

/* An executor constructor of exec/qg_exec.h (qg_exec_cuda_new, ...). */
typedef qg_status (*qg_optest_exec_new_fn)(const qg_exec_opts *o, qg_exec *out, qg_error *err);

/* Whether make() gives an executor (one thread, device 0; it is freed
 * again): for a cmocka group setup.  When not, prints "no <what> device:
 * skipped (<make's message>)" and returns false. */
bool qg_optest_have_exec(qg_optest_exec_new_fn make, const char *what);
/* Unless have, print "no <what> device: skipped" and skip the running
 * test. */
void qg_optest_need_exec(bool have, const char *what);
/* make() an executor (one thread, device 0) with the environment set by
 * env: pairs name, value (value NULL: unset the name), NULL-terminated;
 * every name is unset again afterwards.  Fails the test with "<name>:
 * <make's message>" when there is no executor.  Free with ex.i->free. */
qg_exec qg_optest_exec_new(qg_optest_exec_new_fn make, const char *name, const char *const *env);
/* main() of a test program built without the executor it tests: one test
 * called test_name that prints msg and is skipped. */
int qg_optest_run_skipped(const char *test_name, const char *msg);

/* A weight of random valid blocks of type t (Q4_K, Q6_K or Q8_0): random
 * payload bits (every code), positive f16 scales: Q4_K d in [1e-3, 2e-3]
 * and dmin in [5e-3, 1e-2], Q6_K d in [1e-3, 2e-3], Q8_0 d in [1e-2,
 * 2e-2], so no block is Inf or NaN.  Rows of e0 elements. */
int qg_optest_add_blocks(qg_optest_fx *f, const char *name, qg_dtype type, int nd, int64_t e0,
                         int64_t e1, int64_t e2, qg_test_rng *r);

/* ---- running through an executor ---------------------------------------- */

/* Passes 1-4 of f's graph with execs[0..n_exec) (CPU at cpu_index); every
 * node must land on execs[0]. */
void qg_optest_schedule(qg_optest_fx *f, const qg_exec *execs, int n_exec, int cpu_index);
/* Allocate e's KV arena (when the graph has one) and compile partition 0
 * on e.  The caller releases the graph on e (or sets f->ex). */
void qg_optest_compile(qg_optest_fx *f, const qg_exec *e);
/* f's graph on e alone: passes 1-4 (every node on e, one partition),
 * then qg_optest_compile; sets f->ex, so qg_optest_fx_free releases it. */
void qg_optest_compile_alone(qg_optest_fx *f, const qg_exec *e);
/* Host copy of tensor id to e / e's tensor id to its host copy. */
void qg_optest_upload(qg_optest_fx *f, const qg_exec *e, int id);
void qg_optest_download(qg_optest_fx *f, const qg_exec *e, int id);
/* One step of the compiled graph on e: the step input (n_tok, n_kv),
 * upload ins[] from their host copies, poison outs[] (on the host and the
 * device; KV outputs are read and written, so they are uploaded as they
 * are), run every partition, sync, download outs[] and check that the
 * bytes past their live tokens still hold the poison. */
void qg_optest_step(qg_optest_fx *f, const qg_exec *e, const int *ins, int n_ins, const int *outs,
                    int n_outs, int n_tok, int n_kv, const char *label);

/* ---- comparisons ------------------------------------------------------------ */

/* Every y[i] finite and |y[i] - ref[i]| <= rel * mag[i] + abs_tol (mag
 * NULL: |ref[i]|).  Returns the largest |y[i] - ref[i]| / tolerance (for a
 * log line; 0 where every tolerance is 0). */
double qg_optest_expect_close(const char *label, const char *what, const float *y, const double *ref,
                            const double *mag, int64_t n, double rel, double abs_tol);
/* Rope output (hd, n_heads_tok) against ref: |y - ref| <= 1e-5 *
 * |(ref_i, ref_pair)| + 1e-6 per element of a rotated pair (f32 norm,
 * f32-rounded sin/cos of float64 angles, two roundings in the rotation). */
void qg_optest_expect_rope(const char *label, const char *what, const float *y, const double *ref,
                           int n_heads_tok, int hd);
/* ids, wts (K, n_tok) against the reference top-k of logits (X, n_tok):
 * ids exact where the reference's K-th and (K+1)-th probabilities differ
 * by more than 1e-6 (or ties are exact); always K distinct valid ids whose
 * probabilities are within 1e-6 of the reference's choice; weights within
 * 1e-6 of the reference renormalization over the ids actually chosen. */
void qg_optest_expect_topk(const char *label, const float *logits, const int32_t *ids,
                           const float *wts, int X, int K, int n_tok, bool exact_ties);

/* ---- per-op cases: tensor ids, shapes, and their checks ---------------------- */

/* A driver's check callback: ctx is one of the structs below. */
typedef void (*qg_optest_check_fn)(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);

typedef struct qg_optest_embed {
    int w, tok, x; /* w (E, V), tok (T), x (E, T) */
    int64_t E, V;
} qg_optest_embed;

typedef struct qg_optest_rms {
    int x, w, y; /* x, y (N, T), w (N) */
    int64_t N;
    float eps;
} qg_optest_rms;

typedef struct qg_optest_add {
    int a, b, y; /* (N, T) each */
    int64_t N;
} qg_optest_add;

typedef struct qg_optest_mm {
    int w, x, y; /* w (N, M), x (N, T), y (M, T) or (M, 1) with only_last */
    int64_t N, M;
    bool only_last;
} qg_optest_mm;

typedef struct qg_optest_qkv {
    int x, w[3], y[3]; /* x (E, T), w[i] (E, m[i]), y[i] (m[i], T) */
    int64_t E, m[3];
} qg_optest_qkv;

typedef struct qg_optest_swiglu {
    int x, gate, up, h; /* x (E, T), gate / up (E, F), h (F, T) */
    int64_t E, F;
} qg_optest_swiglu;

typedef struct qg_optest_rope {
    int q, k, qn, kn, pos, qo, ko; /* q, qo (hd*nh, T), k, ko (hd*nkv, T),
                                      qn, kn (hd), pos (T) */
    int hd, nh, nkv, C;            /* C: positions drawn below C */
    float eps, theta;
} qg_optest_rope;

typedef struct qg_optest_attn {
    int q, k, v, kc, vc, pos, o; /* q, o (hd*nh, T), k, v (hd*nkv, T),
                                    kc, vc (hd*nkv, C) of type ct, pos (T) */
    int hd, nh, nkv, C;
    qg_dtype ct;
    void *kc0, *vc0; /* cache contents before the step (nbytes of kc) */
} qg_optest_attn;

typedef struct qg_optest_topk {
    int logits, ids, wts; /* logits (X, T), ids / wts (K, T) */
    int X, K;
    bool exact_ties; /* integer logits: exact ties, other gaps large */
} qg_optest_topk;

/* The MoE chain router -> topk -> expert_swiglu -> aggregate, and the
 * fused node over the same x. */
typedef struct qg_optest_moe {
    int x, gate_inp, gate, up, down;  /* x (E, T), gate_inp (E, X), gate / up
                                         (E, F, X), down (F, E, X) */
    int logits, ids, wts, h, y;       /* unfused: (X, T), (K, T), (K, T),
                                         (F, K, T), (E, T) */
    int y2, ids2, wts2;               /* fused: (E, T), (K, T), (K, T) */
    int n_router, n_topk, n_swiglu, n_agg, n_fused; /* node ids, where kept */
    int64_t E, F;
    int X, K;
} qg_optest_moe;

/* embed (qg_optest_embed): tolerance 0, the dequantized f32 values. */
void qg_optest_check_embed(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* rmsnorm (qg_optest_rms): f32 sum of squares, inverse square root and two
 * products per element: |y - ref| <= 1e-5 |ref| + 1e-6. */
void qg_optest_check_rmsnorm(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* add (qg_optest_add): one correctly rounded f32 add:
 * |y - ref| <= 2^-24 |ref|. */
void qg_optest_check_add(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* matmul, router, lm_head (qg_optest_mm): |y - ref| <= rel * sum|w||x| +
 * abs_tol. */
void qg_optest_expect_matmul(qg_optest_fx *f, const qg_optest_mm *c, int n_tok, const char *label,
                             double rel, double abs_tol);
/* ... at the exact-path tolerance (f32 accumulation of exactly dequantized
 * products): rel 1e-5, abs 1e-6. */
void qg_optest_check_matmul(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* qkv (qg_optest_qkv): each part as matmul, at rel and abs_tol. */
void qg_optest_expect_qkv(qg_optest_fx *f, const qg_optest_qkv *c, int n_tok, const char *label,
                          double rel, double abs_tol);
/* ... at the exact-path tolerance. */
void qg_optest_check_qkv(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* swiglu (qg_optest_swiglu): gate and up dots as matmul, propagated through
 * silu (|silu'| <= 1.1): |h - ref| <= rel * habs + abs_tol with habs =
 * 1.1 |u| sum|g x| + |silu g| sum|u x| + |h|. */
void qg_optest_expect_swiglu(qg_optest_fx *f, const qg_optest_swiglu *c, int n_tok,
                             const char *label, double rel, double abs_tol);
/* swiglu at the exact-path tolerance: rel 1e-5, abs 1e-6. */
void qg_optest_check_swiglu(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* rope (qg_optest_rope): qg_optest_expect_rope on q and k. */
void qg_optest_check_rope(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* The caches after an attention step (qg_optest_attn): rows pos[t] hold
 * this step's k, v rounded once to the cache type, bit-identical to
 * qg_f32_to_f16 / the f32 value; every other row as in kc0 / vc0. */
void qg_optest_expect_kv_written(qg_optest_fx *f, const qg_optest_attn *c, int n_tok,
                                 const char *label);
/* The caches kc, vc (Dkv, C) of type ct as written, in double: kd, vd
 * (Dkv, C). */
void qg_optest_read_kv(qg_optest_fx *f, const qg_optest_attn *c, double *kd, double *vd);
/* The attention output against the reference over the caches as written:
 * |o - ref| <= rel * (1 + qk_abs) * sum_j p_j |v_j| + abs_tol (qk_abs: the
 * head's sum |q k| / sqrt(hd) magnitude; the caller states rel and abs).
 * Returns the largest error as a fraction of its tolerance. */
double qg_optest_expect_attention(qg_optest_fx *f, const qg_optest_attn *c, int n_tok,
                                const char *label, double rel, double abs_tol);
/* topk (qg_optest_topk): qg_optest_expect_topk. */
void qg_optest_check_topk(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* expert_swiglu (qg_optest_moe: h from x, ids): as swiglu,
 * |h - ref| <= rel * habs + abs_tol. */
void qg_optest_expect_expert_swiglu(qg_optest_fx *f, const qg_optest_moe *c, int n_tok,
                                    const char *label, double rel, double abs_tol);
/* aggregate (qg_optest_moe: y from h, ids, wts): K dots as matmul, weighted
 * sum in f32: |y - ref| <= rel * sum_k |w_k| sum_f |down h| + abs_tol. */
void qg_optest_expect_aggregate(qg_optest_fx *f, const qg_optest_moe *c, int n_tok,
                                const char *label, double rel, double abs_tol);
/* expert_swiglu / aggregate at the exact-path tolerance: rel 1e-5, abs
 * 1e-6. */
void qg_optest_check_expert_swiglu(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
void qg_optest_check_aggregate(qg_optest_fx *f, const void *ctx, int n_tok, const char *label);
/* The fused y2 (qg_optest_moe) against the reference experts (float64 h
 * from x) over the kernel's routing ids2, wts2.  The kernel's h is within
 * rel * habs of the reference (as expert_swiglu), so
 * |y - ref| <= rel * (sum_k |w| sum_f |down| (|h| + habs)) + abs_tol. */
void qg_optest_expect_moe_y(qg_optest_fx *f, const qg_optest_moe *c, int n_tok, const char *label,
                            double rel, double abs_tol);
/* moe_fused after the unfused chain ran on the same x (qg_optest_moe):
 * fused ids, wts bit-identical to the chain's (and y when same_y); the
 * chain's router logits as matmul (|l - ref| <= 1e-5 * sum|w||x| + 1e-6);
 * the fused routing as topk over those logits; y2 by qg_optest_expect_moe_y
 * at rel 1e-5, abs 1e-6. */
void qg_optest_expect_fused(qg_optest_fx *f, const qg_optest_moe *c, int n_tok, const char *label,
                            bool same_y);
/* As qg_optest_expect_fused with y2 at rel and abs_tol (products of other
 * precision than the exact path's). */
void qg_optest_expect_fused_tol(qg_optest_fx *f, const qg_optest_moe *c, int n_tok,
                                const char *label, bool same_y, double rel, double abs_tol);

#endif
