/*
 * test_cuda_attention.c - the CUDA executor's prefill attention against
 * the float64 reference qg_ref_attention (tests/ref/qg_ref_ops.h), for many
 * shapes: the tensor-core kernel (ops/cuda/op_attention_prefill.cu, the
 * default) and the f32 SIMT kernel kept behind QG_CUDA_F32_PREFILL=1.
 *
 * Each shape (head_dim, n_head, n_head_kv) and cache type (F16, F32) gets
 * one prefill graph of a single attention node (n_tok_max 512, 830 cache
 * rows), scheduled and compiled on the executor; then one step for every
 * start position p0 in {0, 300} and live token count n_tok in {1, 7, 64,
 * 129, 512}, each with fresh random inputs:
 *   - q (amplitude 2, or 16 for a peaked softmax with tiny probabilities),
 *     k, v uniform; their dead token columns hold NaN;
 *   - cache rows before p0 random in the cache type, rows from p0 on NaN
 *     (the rows this step appends, and rows no token may read: a kernel
 *     that reads past the largest position, or weights a NaN row by 0,
 *     shows it);
 *   - positions p0 .. p0 + n_tok - 1 (dead entries -1);
 *   - the output poisoned with 0xFF bytes on the device.
 * Checks: bytes of o past the live tokens still hold the poison; the
 * caches hold this step's k, v rounded once to the cache type at rows
 * pos[t] and every other row unchanged (bit for bit); every live element
 * of o is finite and
 *     |o - ref| <= 1e-5 * (1 + qk_abs) * pv_abs + 1e-6
 * where pv_abs = sum_j p_j |v_j| and qk_abs = max_j sum_i |q_i k_ji| /
 * sqrt(hd) (the f32 kernels' bound, as in test_cuda_ops.c).  The
 * tensor-core kernel carries every product with a relative error of about
 * 2^-22 (split hi + lo f16 operands, f32 accumulation; see the kernel's
 * header), so a score is off by at most a few 2^-22 * qk_abs and o by
 * twice that times pv_abs: well inside the bound.
 *
 * Fixtures, the executor step, the cache check and the reference
 * comparison are the shared harness of tests/ref/qg_optest.h.
 *
 * Built without CUDA, or run without a device, every test is skipped with
 * a message saying so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#include "qg_optest.h"

#ifdef QG_HAVE_CUDA

#include "exec/qg_exec.h"
#include "graph/qg_graph.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool g_have_device;

#define T_MAX 512
#define C_CTX 830 /* >= 300 + 512 rows */

/* ---- one attention graph and its host tensors ---------------------------- */

typedef struct shape {
    int hd, nh, nkv;
} shape;

/* The graph of one attention node, scheduled and compiled on ex; c holds
 * its tensor ids, shape, cache type and the caches before a step. */
static qg_optest_fx afx_new(const qg_exec *ex, shape s, qg_dtype ct, qg_optest_attn *c) {
    qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T_MAX, C_CTX, true);
    const int64_t Dq = (int64_t)s.hd * s.nh, Dkv = (int64_t)s.hd * s.nkv;
    memset(c, 0, sizeof *c);
    c->hd = s.hd;
    c->nh = s.nh;
    c->nkv = s.nkv;
    c->C = C_CTX;
    c->ct = ct;
    c->q = qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T_MAX, 1);
    c->k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T_MAX, 1);
    c->v = qg_optest_add_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T_MAX, 1);
    c->kc = qg_optest_add_tensor(&f, "cache_k", ct, QG_ROLE_KV, 2, Dkv, C_CTX, 1);
    c->vc = qg_optest_add_tensor(&f, "cache_v", ct, QG_ROLE_KV, 2, Dkv, C_CTX, 1);
    c->pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T_MAX, 1, 1);
    f.g->t_pos = c->pos;
    c->o = qg_optest_add_tensor(&f, "o", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T_MAX, 1);
    qg_op_params p = {.head_dim = s.hd, .n_head = s.nh, .n_head_kv = s.nkv};
    qg_optest_add_node(&f, QG_OP_ATTENTION, "attention", (int[]){c->q, c->k, c->v, c->kc, c->vc, c->pos},
                       6, (int[]){c->o}, 1, &p);
    const size_t cb = f.g->tensors[c->kc].nbytes; /* (Dkv, C) of type ct */
    c->kc0 = malloc(cb);
    c->vc0 = malloc(cb);
    assert_non_null(c->kc0);
    assert_non_null(c->vc0);
    qg_optest_compile_alone(&f, ex);
    return f;
}

static void afx_free(qg_optest_fx *f, qg_optest_attn *c) {
    qg_optest_fx_free(f);
    free(c->kc0);
    free(c->vc0);
}

/* One step of n_tok tokens from position p0 with q amplitude amp, checked
 * against the reference (see the file comment for the checks and the
 * tolerance). */
static void run_case(qg_optest_fx *f, const qg_optest_attn *c, const qg_exec *ex, qg_test_rng *r,
                     int n_tok, int p0, float amp, const char *label) {
    const int64_t Dkv = (int64_t)c->hd * c->nkv;
    const size_t cb = f->g->tensors[c->kc].nbytes;
    /* inputs: live columns random, dead ones NaN */
    qg_optest_fill_act(f, c->q, n_tok, r, -amp, amp);
    qg_optest_fill_act(f, c->k, n_tok, r, -1, 1);
    qg_optest_fill_act(f, c->v, n_tok, r, -1, 1);
    /* caches: earlier rows random, rows from p0 on NaN (0xFF bytes) */
    memset(c->kc0, 0xFF, cb);
    memset(c->vc0, 0xFF, cb);
    qg_optest_fill_cache(c->ct, c->kc0, c->vc0, (size_t)(Dkv * p0), r);
    memcpy(f->host[c->kc], c->kc0, cb);
    memcpy(f->host[c->vc], c->vc0, cb);
    int32_t *pos = qg_optest_i32(f, c->pos);
    for (int t = 0; t < T_MAX; t++) pos[t] = t < n_tok ? p0 + t : -1;
    /* o poisoned; after the step, o past the live tokens untouched */
    qg_optest_step(f, ex, (int[]){c->q, c->k, c->v, c->pos}, 4, (int[]){c->o, c->kc, c->vc}, 3, n_tok,
                   p0 + n_tok, label);
    /* caches: this step's rows appended (rounded once), the rest as before */
    qg_optest_expect_kv_written(f, c, n_tok, label);
    /* o against the float64 reference over the caches as written (checked
     * above): every live element finite and
     * |o - ref| <= 1e-5 * (1 + qk_abs) * pv_abs + 1e-6 */
    const double worst = qg_optest_expect_attention(f, c, n_tok, label, 1e-5, 1e-6);
    printf("  %-64s ok (worst error %.3f of the tolerance)\n", label, worst);
}
static const shape SHAPES[] = {
    {128, 32, 4}, {128, 16, 16}, {128, 8, 1}, /* 30b-a3b's 32/4 first */
    {64, 32, 4},  {64, 16, 16},  {64, 8, 1},
    {96, 12, 2},  {32, 4, 2}, /* other head sizes; a group of 6 (2 heads a CTA) */
};
static const int NTOKS[] = {1, 7, 64, 129, 512};
static const int P0S[] = {0, 300};

/* Every shape, cache type, start and token count on executor ex; `full`
 * false runs the 512-token steps only for the first shape (the f32
 * kernel's run, kept short). */
static void run_all(const qg_exec *ex, const char *kernel, int test_id, bool full) {
    const qg_dtype cts[] = {QG_F16, QG_F32};
    int case_id = 0;
    for (size_t si = 0; si < sizeof SHAPES / sizeof SHAPES[0]; si++)
        for (int ci = 0; ci < 2; ci++) {
            const shape s = SHAPES[si];
            qg_optest_attn c;
            qg_optest_fx f = afx_new(ex, s, cts[ci], &c);
            for (int pi = 0; pi < 2; pi++)
                for (int ni = 0; ni < 5; ni++) {
                    const int nt = NTOKS[ni], p0 = P0S[pi];
                    if (!full && nt == 512 && si > 0) continue;
                    qg_test_rng r = qg_optest_rng_for(test_id, case_id, 99u);
                    const float amp = case_id % 2 ? 16.0f : 2.0f;
                    case_id++;
                    char label[160];
                    snprintf(label, sizeof label, "%s hd=%d nh=%d nkv=%d %s n_tok=%d p0=%d |q|<=%g", kernel,
                             s.hd, s.nh, s.nkv, qg_dtype_name(cts[ci]), nt, p0, (double)amp);
                    run_case(&f, &c, ex, &r, nt, p0, amp, label);
                }
            afx_free(&f, &c);
        }
}

static qg_exec ex_new(bool f32_prefill) {
    const char *const env[] = {"QG_CUDA_F32_PREFILL", f32_prefill ? "1" : NULL, NULL};
    return qg_optest_exec_new(qg_exec_cuda_new, "qg_exec_cuda_new", env);
}

/* The default executor: the tensor-core kernel. */
static void test_prefill_tensor_cores(void **state) {
    (void)state;
    qg_optest_need_exec(g_have_device, "CUDA");
    qg_exec ex = ex_new(false);
    run_all(&ex, "tc", 1, true);
    ex.i->free(ex.self);
}

/* QG_CUDA_F32_PREFILL=1: the f32 SIMT kernel. */
static void test_prefill_f32(void **state) {
    (void)state;
    qg_optest_need_exec(g_have_device, "CUDA");
    qg_exec ex = ex_new(true);
    run_all(&ex, "f32", 2, false);
    ex.i->free(ex.self);
}

static int setup(void **state) {
    (void)state;
    g_have_device = qg_optest_have_exec(qg_exec_cuda_new, "CUDA");
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_tensor_cores),
        cmocka_unit_test(test_prefill_f32),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

#else /* !QG_HAVE_CUDA */

int main(void) {
    return qg_optest_run_skipped("test_no_cuda", "no CUDA device: skipped (built without the CUDA executor)");
}

#endif
