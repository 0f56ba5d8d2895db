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
 * Built without CUDA, or run without a device, every test is skipped with
 * a message saying so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#ifdef QG_HAVE_CUDA

#include "qg_ref_ops.h"

#include "exec/qg_exec.h"
#include "graph/qg_graph.h"
#include "graph/qg_sched.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool g_have_device;

#define NEED_DEVICE()                                                         \
    do {                                                                      \
        if (!g_have_device) {                                                 \
            printf("no CUDA device: skipped\n");                              \
            skip();                                                           \
        }                                                                     \
    } while (0)

#define POISON 0xFF
#define T_MAX 512
#define C_CTX 830 /* >= 300 + 512 rows */

/* ---- random numbers (splitmix64) ---------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_unif(rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_u64(r) >> 40) * (1.0 / 16777216.0));
}

/* ---- one attention graph and its host tensors ---------------------------- */

typedef struct shape {
    int hd, nh, nkv;
} shape;

typedef struct afx {
    qg_graph *g;
    qg_exec *ex;
    shape s;
    qg_dtype ct;
    int q, k, v, kc, vc, pos, o; /* tensor ids */
    float *hq, *hk, *hv, *ho;    /* (Dq, T), (Dkv, T), (Dkv, T), (Dq, T) */
    void *hkc, *hvc;             /* (Dkv, C) as the device holds them */
    void *kc0, *vc0;             /* (Dkv, C) before the step */
    int32_t *hpos;               /* (T) */
} afx;

static int add_tensor(afx *f, const char *name, qg_dtype t, qg_role role, int nd, int64_t e0,
                      int64_t e1) {
    const int64_t ne[2] = {e0, e1};
    return qg_graph_add_tensor(f->g, name, t, role, 0, nd, ne, NULL);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

/* Build, schedule and compile the graph of one attention node on ex. */
static afx afx_new(qg_exec *ex, shape s, qg_dtype ct) {
    afx f;
    memset(&f, 0, sizeof f);
    f.s = s;
    f.ct = ct;
    f.g = qg_graph_new(QG_PHASE_PREFILL, T_MAX, C_CTX);
    assert_non_null(f.g);
    const int64_t sn = QG_STEP_N;
    f.g->t_step = qg_graph_add_tensor(f.g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &sn, NULL);
    const int64_t Dq = (int64_t)s.hd * s.nh, Dkv = (int64_t)s.hd * s.nkv;
    f.q = add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T_MAX);
    f.k = add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T_MAX);
    f.v = add_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T_MAX);
    f.kc = add_tensor(&f, "cache_k", ct, QG_ROLE_KV, 2, Dkv, C_CTX);
    f.vc = add_tensor(&f, "cache_v", ct, QG_ROLE_KV, 2, Dkv, C_CTX);
    f.pos = add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T_MAX, 1);
    f.g->t_pos = f.pos;
    f.o = add_tensor(&f, "o", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T_MAX);
    qg_op_params p = {.head_dim = s.hd, .n_head = s.nh, .n_head_kv = s.nkv};
    qg_graph_add_node(f.g, QG_OP_ATTENTION, "attention", 0, (int[]){f.q, f.k, f.v, f.kc, f.vc, f.pos},
                      6, (int[]){f.o}, 1, &p);
    const size_t es = qg_dtype_row_bytes(ct, 1), cb = (size_t)Dkv * C_CTX * es;
    f.hq = xmalloc(sizeof(float) * (size_t)(Dq * T_MAX));
    f.hk = xmalloc(sizeof(float) * (size_t)(Dkv * T_MAX));
    f.hv = xmalloc(sizeof(float) * (size_t)(Dkv * T_MAX));
    f.ho = xmalloc(sizeof(float) * (size_t)(Dq * T_MAX));
    f.hkc = xmalloc(cb);
    f.hvc = xmalloc(cb);
    f.kc0 = xmalloc(cb);
    f.vc0 = xmalloc(cb);
    f.hpos = xmalloc(sizeof(int32_t) * T_MAX);
    qg_place_opts po = {.n_exec = 1, .execs = ex, .cpu_index = 0, .n_cpu_moe = 0};
    qg_error err = {0};
    if (qg_graph_schedule(f.g, false, &po, &err)) fail_msg("schedule: %s", err.msg);
    assert_int_equal(f.g->n_parts, 1);
    if (f.g->kv_bytes[0] && ex->i->kv_alloc(ex->self, f.g->kv_bytes[0], &err))
        fail_msg("kv_alloc: %s", err.msg);
    if (ex->i->compile(ex->self, f.g, 0, &err)) fail_msg("compile: %s", err.msg);
    f.ex = ex;
    return f;
}

static void afx_free(afx *f) {
    f->ex->i->release(f->ex->self, f->g);
    qg_graph_free(f->g);
    free(f->hq);
    free(f->hk);
    free(f->hv);
    free(f->ho);
    free(f->hkc);
    free(f->hvc);
    free(f->kc0);
    free(f->vc0);
    free(f->hpos);
}

static void put(afx *f, int id, const void *src) {
    qg_error err = {0};
    if (f->ex->i->tensor_set(f->ex->self, f->g, id, src, 0, f->g->tensors[id].nbytes, &err))
        fail_msg("tensor_set %s: %s", f->g->tensors[id].name, err.msg);
}

static void get(afx *f, int id, void *dst) {
    qg_error err = {0};
    if (f->ex->i->tensor_get(f->ex->self, f->g, id, dst, 0, f->g->tensors[id].nbytes, &err))
        fail_msg("tensor_get %s: %s", f->g->tensors[id].name, err.msg);
}

/* Cache element i as the cache type stores v (rounded once for F16). */
static void cache_set(qg_dtype ct, void *c, size_t i, float v) {
    if (ct == QG_F16) ((uint16_t *)c)[i] = qg_f32_to_f16(v);
    else ((float *)c)[i] = v;
}

static double cache_val(qg_dtype ct, const void *c, size_t i) {
    return ct == QG_F16 ? (double)qg_f16_to_f32(((const uint16_t *)c)[i]) : (double)((const float *)c)[i];
}

/* One step of n_tok tokens from position p0 with q amplitude amp, checked
 * against the reference (see the file comment for the checks and the
 * tolerance). */
static void run_case(afx *f, rng *r, int n_tok, int p0, float amp, const char *label) {
    const int hd = f->s.hd, nh = f->s.nh, nkv = f->s.nkv;
    const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
    const qg_dtype ct = f->ct;
    const size_t es = qg_dtype_row_bytes(ct, 1), cb = (size_t)Dkv * C_CTX * es;
    /* inputs: live columns random, dead ones NaN */
    for (int64_t i = 0; i < Dq * T_MAX; i++) f->hq[i] = i < Dq * n_tok ? rng_unif(r, -amp, amp) : NAN;
    for (int64_t i = 0; i < Dkv * T_MAX; i++) {
        f->hk[i] = i < Dkv * n_tok ? rng_unif(r, -1, 1) : NAN;
        f->hv[i] = i < Dkv * n_tok ? rng_unif(r, -1, 1) : NAN;
    }
    /* caches: earlier rows random, rows from p0 on NaN */
    for (size_t i = 0; i < (size_t)(Dkv * C_CTX); i++) {
        const bool early = i < (size_t)(Dkv * p0);
        cache_set(ct, f->kc0, i, early ? rng_unif(r, -1, 1) : NAN);
        cache_set(ct, f->vc0, i, early ? rng_unif(r, -1, 1) : NAN);
    }
    for (int t = 0; t < T_MAX; t++) f->hpos[t] = t < n_tok ? p0 + t : -1;
    int32_t step[QG_STEP_N] = {0};
    step[QG_STEP_N_TOK] = n_tok;
    step[QG_STEP_N_KV] = p0 + n_tok;
    put(f, f->g->t_step, step);
    put(f, f->q, f->hq);
    put(f, f->k, f->hk);
    put(f, f->v, f->hv);
    put(f, f->kc, f->kc0);
    put(f, f->vc, f->vc0);
    put(f, f->pos, f->hpos);
    memset(f->ho, POISON, sizeof(float) * (size_t)(Dq * T_MAX));
    put(f, f->o, f->ho);
    qg_error err = {0};
    if (f->ex->i->run(f->ex->self, f->g, 0, step, NULL, &err)) fail_msg("%s: run: %s", label, err.msg);
    if (f->ex->i->sync(f->ex->self, &err)) fail_msg("%s: sync: %s", label, err.msg);
    get(f, f->o, f->ho);
    get(f, f->kc, f->hkc);
    get(f, f->vc, f->hvc);

    /* o past the live tokens: untouched */
    const unsigned char *ob = (const unsigned char *)f->ho;
    for (size_t b = sizeof(float) * (size_t)(Dq * n_tok); b < sizeof(float) * (size_t)(Dq * T_MAX); b++)
        if (ob[b] != POISON) fail_msg("%s: o byte %zu past the live tokens was written", label, b);
    /* caches: this step's rows appended (rounded once), the rest as before */
    for (int m = 0; m < 2; m++) {
        void *want = m ? f->vc0 : f->kc0;
        const float *src = m ? f->hv : f->hk;
        for (int t = 0; t < n_tok; t++)
            for (int64_t i = 0; i < Dkv; i++) cache_set(ct, want, (size_t)(p0 + t) * Dkv + i, src[t * Dkv + i]);
        const unsigned char *now = m ? f->hvc : f->hkc, *w = want;
        for (size_t b = 0; b < cb; b++)
            if (now[b] != w[b])
                fail_msg("%s: %s cache byte %zu (row %zu) differs from the expected append", label,
                         m ? "v" : "k", b, b / ((size_t)Dkv * es));
    }
    /* o against the float64 reference over the expected caches */
    double *kd = xmalloc(sizeof(double) * (size_t)(Dkv * C_CTX));
    double *vd = xmalloc(sizeof(double) * (size_t)(Dkv * C_CTX));
    for (size_t i = 0; i < (size_t)(Dkv * C_CTX); i++) {
        kd[i] = cache_val(ct, f->kc0, i);
        vd[i] = cache_val(ct, f->vc0, i);
    }
    double *ref = xmalloc(sizeof(double) * (size_t)(Dq * n_tok));
    double *pva = xmalloc(sizeof(double) * (size_t)(Dq * n_tok));
    double *qka = xmalloc(sizeof(double) * (size_t)(nh * n_tok));
    qg_ref_attention(f->hq, kd, vd, f->hpos, n_tok, hd, nh, nkv, ref, pva, qka);
    double worst = 0; /* largest |o - ref| / tolerance, for the log */
    for (int t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < Dq; i++) {
            const size_t at = (size_t)(t * Dq + i);
            /* |o - ref| <= 1e-5 * (1 + qk_abs) * pv_abs + 1e-6 */
            const double tol = 1e-5 * (1.0 + qka[t * nh + i / hd]) * pva[at] + 1e-6;
            const double y = f->ho[at], d = fabs(y - ref[at]);
            if (!isfinite(y) || !(d <= tol))
                fail_msg("%s: o[token %d, head %lld, dim %lld] = %.9g, reference %.9g, tolerance %.3g",
                         label, t, (long long)(i / hd), (long long)(i % hd), y, ref[at], tol);
            if (d / tol > worst) worst = d / tol;
        }
    printf("  %-64s ok (worst error %.3f of the tolerance)\n", label, worst);
    free(kd);
    free(vd);
    free(ref);
    free(pva);
    free(qka);
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
static void run_all(qg_exec *ex, const char *kernel, int test_id, bool full) {
    const qg_dtype cts[] = {QG_F16, QG_F32};
    int case_id = 0;
    for (size_t si = 0; si < sizeof SHAPES / sizeof SHAPES[0]; si++)
        for (int ci = 0; ci < 2; ci++) {
            const shape s = SHAPES[si];
            afx f = afx_new(ex, s, cts[ci]);
            for (int pi = 0; pi < 2; pi++)
                for (int ni = 0; ni < 5; ni++) {
                    const int nt = NTOKS[ni], p0 = P0S[pi];
                    if (!full && nt == 512 && si > 0) continue;
                    rng r = {(uint64_t)test_id * 0x100000001b3ull + (uint64_t)case_id * 7919u + 99u};
                    rng_u64(&r);
                    const float amp = case_id % 2 ? 16.0f : 2.0f;
                    case_id++;
                    char label[160];
                    snprintf(label, sizeof label, "%s hd=%d nh=%d nkv=%d %s n_tok=%d p0=%d |q|<=%g", kernel,
                             s.hd, s.nh, s.nkv, qg_dtype_name(cts[ci]), nt, p0, (double)amp);
                    run_case(&f, &r, nt, p0, amp, label);
                }
            afx_free(&f);
        }
}

static qg_exec ex_new(bool f32_prefill) {
    if (f32_prefill) setenv("QG_CUDA_F32_PREFILL", "1", 1);
    qg_exec_opts o = {.n_threads = 1, .device = 0};
    qg_exec ex;
    qg_error err = {0};
    const qg_status st = qg_exec_cuda_new(&o, &ex, &err);
    unsetenv("QG_CUDA_F32_PREFILL");
    if (st) fail_msg("qg_exec_cuda_new: %s", err.msg);
    return ex;
}

/* The default executor: the tensor-core kernel. */
static void test_prefill_tensor_cores(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(false);
    run_all(&ex, "tc", 1, true);
    ex.i->free(ex.self);
}

/* QG_CUDA_F32_PREFILL=1: the f32 SIMT kernel. */
static void test_prefill_f32(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(true);
    run_all(&ex, "f32", 2, false);
    ex.i->free(ex.self);
}

static int setup(void **state) {
    (void)state;
    qg_exec ex;
    qg_error err = {0};
    qg_exec_opts o = {.n_threads = 1, .device = 0};
    if (qg_exec_cuda_new(&o, &ex, &err) == QG_OK) {
        g_have_device = true;
        ex.i->free(ex.self);
    } else {
        printf("no CUDA device: skipped (%s)\n", err.msg);
    }
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

static void test_no_cuda(void **state) {
    (void)state;
    printf("no CUDA device: skipped (built without the CUDA executor)\n");
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_cuda)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif
