/*
 * test_cuda_ops.c - every CUDA kernel against the float64 references of
 * tests/ref/qg_ref_ops.h, through the CUDA executor itself.
 *
 * Each case builds a small graph by hand (one node, or a chain), schedules
 * it onto a CUDA executor alone (place, partition, memory plan), compiles
 * it, and then, twice with fresh random inputs (the second run replays the
 * captured CUDA Graph, often with another live token count, so nothing may
 * be baked into the capture):
 *   - uploads the inputs (inputs' dead token columns hold NaN, so a kernel
 *     reading them shows it), poisons every output on the device with 0xFF
 *     bytes (NaN / -1),
 *   - runs the partition, downloads the outputs,
 *   - checks every live element is finite and within the op's tolerance of
 *     the reference (stated at each check) and that bytes past the live
 *     tokens still hold the poison.
 * Decode graphs (n_tok_max 1) use the exact f32 kernels; prefill graphs are
 * run on two executors: the default one (f16 tensor-core products for
 * non-F32 weights) and one made with QG_CUDA_F32_PREFILL=1 (exact f32).
 * The executor-level folds (rmsnorm into its consumer, add into its
 * producer) are checked bit for bit against an executor made with
 * QG_CUDA_FUSE=0.
 *
 * Built without CUDA, or run without a device, every test is skipped with
 * "no CUDA device: skipped".
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
#include "ops/quant/qg_quant.h"

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

/* ---- random numbers ------------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_unif(rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_u64(r) >> 40) * (1.0 / 16777216.0));
}

static int rng_int(rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }

/* A different stream for every (test, case). */
static rng rng_for(int test, int case_id) {
    rng r = {(uint64_t)test * 0x100000001b3ull + (uint64_t)case_id * 7919u + 424242u};
    rng_u64(&r);
    return r;
}

/* ---- executors -------------------------------------------------------- */

typedef enum ex_kind { EX_DEFAULT, EX_F32_PREFILL, EX_NOFUSE } ex_kind;

static qg_exec ex_new(ex_kind k) {
    if (k == EX_F32_PREFILL) setenv("QG_CUDA_F32_PREFILL", "1", 1);
    if (k == EX_NOFUSE) setenv("QG_CUDA_FUSE", "0", 1);
    qg_exec_opts o = {.n_threads = 1, .device = 0};
    qg_exec ex;
    qg_error err = {0};
    qg_status st = qg_exec_cuda_new(&o, &ex, &err);
    unsetenv("QG_CUDA_F32_PREFILL");
    unsetenv("QG_CUDA_FUSE");
    if (st) fail_msg("qg_exec_cuda_new: %s", err.msg);
    return ex;
}

static void ex_free(qg_exec *ex) { ex->i->free(ex->self); }

/* ---- fixtures: a graph plus a host copy of every tensor ---------------- */

#define MAXT 40
#define POISON 0xFF

typedef struct cx {
    qg_graph *g;
    void *host[MAXT];
    qg_exec *ex;
} cx;

static cx cx_make(qg_phase ph, int T, int C) {
    cx f;
    memset(&f, 0, sizeof f);
    f.g = qg_graph_new(ph, T, C);
    assert_non_null(f.g);
    const int64_t sn = QG_STEP_N;
    f.g->t_step = qg_graph_add_tensor(f.g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &sn, NULL);
    f.host[f.g->t_step] = calloc(QG_STEP_N, sizeof(int32_t));
    return f;
}

static void cx_free(cx *f) {
    if (f->ex) f->ex->i->release(f->ex->self, f->g);
    for (int i = 0; i < f->g->n_tensors; i++) free(f->host[i]);
    qg_graph_free(f->g);
}

/* Add a tensor of nd dims (e0, e1, e2) with a host buffer (poisoned). */
static int cx_tensor(cx *f, const char *name, qg_dtype type, qg_role role, int nd, int64_t e0,
                     int64_t e1, int64_t e2) {
    const int64_t ne[3] = {e0, e1, e2};
    const int id = qg_graph_add_tensor(f->g, name, type, role, 0, nd, ne, NULL);
    assert_true(id < MAXT);
    const size_t nb = f->g->tensors[id].nbytes;
    f->host[id] = malloc(nb ? nb : 1);
    assert_non_null(f->host[id]);
    memset(f->host[id], POISON, nb);
    if (role == QG_ROLE_WEIGHT) f->g->tensors[id].data = f->host[id];
    return id;
}

/* A weight of random values in [-scale, scale], quantized per row. */
static int cx_weight(cx *f, const char *name, qg_dtype type, int nd, int64_t e0, int64_t e1,
                     int64_t e2, rng *r, float scale) {
    const int id = cx_tensor(f, name, type, QG_ROLE_WEIGHT, nd, e0, e1, e2);
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t rb = qg_dtype_row_bytes(type, e0);
    float *src = malloc(sizeof(float) * (size_t)e0);
    assert_non_null(src);
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < e0; j++) src[j] = rng_unif(r, -scale, scale);
        qg_quantize_row(type, src, (char *)f->host[id] + (size_t)i * rb, e0);
    }
    free(src);
    return id;
}

static float *F32(cx *f, int id) { return f->host[id]; }
static int32_t *I32(cx *f, int id) { return f->host[id]; }

static int64_t per_tok(cx *f, int id) {
    const qg_tensor *t = &f->g->tensors[id];
    return qg_tensor_nelem(t) / t->ne[t->n_dims - 1];
}

/* Fill the first n_tok tokens of f32 tensor id uniformly in [lo, hi], the
 * rest with NaN. */
static void fill_act(cx *f, int id, int n_tok, rng *r, float lo, float hi) {
    const int64_t n = per_tok(f, id), T = qg_tensor_nelem(&f->g->tensors[id]) / n;
    float *x = F32(f, id);
    for (int64_t i = 0; i < n * T; i++) x[i] = i < n * n_tok ? rng_unif(r, lo, hi) : NAN;
}

static int add_node(cx *f, qg_op op, const char *name, const int *in, int n_in, const int *out,
                    int n_out, const qg_op_params *p) {
    return qg_graph_add_node(f->g, op, name, 0, in, n_in, out, n_out, p);
}

/* Place everything on ex (it must support every node), partition, plan,
 * allocate the KV arena and compile. */
static void cx_compile(cx *f, qg_exec *ex) {
    qg_place_opts po = {.n_exec = 1, .execs = ex, .cpu_index = 0, .n_cpu_moe = 0};
    qg_error err = {0};
    if (qg_graph_schedule(f->g, false, &po, &err)) fail_msg("schedule: %s", err.msg);
    assert_int_equal(f->g->n_parts, 1);
    if (f->g->kv_bytes[0] && ex->i->kv_alloc(ex->self, f->g->kv_bytes[0], &err))
        fail_msg("kv_alloc: %s", err.msg);
    if (ex->i->compile(ex->self, f->g, 0, &err)) fail_msg("compile: %s", err.msg);
    f->ex = ex;
}

static void cx_upload(cx *f, int id) {
    qg_error err = {0};
    if (f->ex->i->tensor_set(f->ex->self, f->g, id, f->host[id], 0, f->g->tensors[id].nbytes, &err))
        fail_msg("tensor_set %s: %s", f->g->tensors[id].name, err.msg);
}

static void cx_download(cx *f, int id) {
    qg_error err = {0};
    if (f->ex->i->tensor_get(f->ex->self, f->g, id, f->host[id], 0, f->g->tensors[id].nbytes, &err))
        fail_msg("tensor_get %s: %s", f->g->tensors[id].name, err.msg);
}

/* Live bytes of tensor id (token dim last; (V,1)-style outputs of a
 * multi-token graph are whole). */
static size_t live_bytes(cx *f, int id, int n_tok) {
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t T = f->g->n_tok_max;
    if (T > 1 && t->ne[t->n_dims - 1] == T) return t->nbytes / (size_t)T * (size_t)n_tok;
    return t->nbytes;
}

/* One step: upload inputs / weights-free tensors listed in `ins`, poison
 * the outputs listed in `outs` on the device, run, download the outputs and
 * check their tails hold the poison. */
static void cx_step(cx *f, const int *ins, int n_ins, const int *outs, int n_outs, int n_tok,
                    int n_kv, const char *label) {
    int32_t *st = I32(f, f->g->t_step);
    memset(st, 0, sizeof(int32_t) * QG_STEP_N);
    st[QG_STEP_N_TOK] = n_tok;
    st[QG_STEP_N_KV] = n_kv;
    cx_upload(f, f->g->t_step);
    for (int i = 0; i < n_ins; i++) cx_upload(f, ins[i]);
    for (int i = 0; i < n_outs; i++) {
        memset(f->host[outs[i]], POISON, f->g->tensors[outs[i]].nbytes);
        cx_upload(f, outs[i]);
    }
    qg_error err = {0};
    for (int p = 0; p < f->g->n_parts; p++)
        if (f->ex->i->run(f->ex->self, f->g, p, st, NULL, &err)) fail_msg("%s: run: %s", label, err.msg);
    if (f->ex->i->sync(f->ex->self, &err)) fail_msg("%s: sync: %s", label, err.msg);
    for (int i = 0; i < n_outs; i++) {
        const int id = outs[i];
        cx_download(f, id);
        const size_t lb = live_bytes(f, id, n_tok), nb = f->g->tensors[id].nbytes;
        const unsigned char *b = f->host[id];
        for (size_t k = lb; k < nb; k++)
            if (b[k] != POISON)
                fail_msg("%s: %s byte %zu past the live tokens was written", label,
                         f->g->tensors[id].name, k);
    }
}

/* Every y[i] finite and |y[i] - ref[i]| <= rel * mag[i] + abs_tol (mag
 * NULL: |ref[i]|). */
static void expect_close(const char *label, const char *what, const float *y, const double *ref,
                         const double *mag, int64_t n, double rel, double abs_tol) {
    for (int64_t i = 0; i < n; i++) {
        const double m = mag ? mag[i] : fabs(ref[i]);
        const double tol = rel * m + abs_tol;
        if (!isfinite(y[i]) || fabs((double)y[i] - ref[i]) > tol)
            fail_msg("%s: %s[%lld] = %.9g, reference %.9g, tolerance %.3g", label, what,
                     (long long)i, (double)y[i], ref[i], tol);
    }
}

static double *dalloc(int64_t n) {
    double *p = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    assert_non_null(p);
    return p;
}

static const qg_dtype ALL_W[] = {QG_F32, QG_F16, QG_BF16, QG_Q8_0,
                                 QG_Q4_0, QG_Q4_K, QG_Q5_K, QG_Q6_K};

/*
 * Tolerance of a product y = sum_i w_i x_i against the float64 reference:
 *   exact path (decode, F32 weights, f32 prefill): weights exact, f32 FMAs:
 *     |y - ref| <= 1e-5 * sum|w x| + 1e-6 (as the CPU kernels);
 *   split-f16 path (prefill, non-F32 weights): w and x each carried as
 *     hi + lo f16 parts (hi = f16(v), lo = f16(v - hi)), products hi*hi +
 *     hi*lo + lo*hi accumulated in f32 by the tensor cores.  Each operand is
 *     within 2^-22 |v| + 2^-25 of itself (the lo part may be subnormal: a
 *     multiple of 2^-24), the dropped lo*lo is below 2^-22 |w x|, so
 *     |y - ref| <= 1e-5 * sum|w x| + sub + 1e-6 with sub = sum over i of
 *     2^-25 (|x_i| + |w_i|).  mm_sub() computes sub.
 */
static bool f16_path(const qg_exec *ex_is_f32, qg_dtype t, int n_tok_max) {
    return n_tok_max > 1 && t != QG_F32 && !ex_is_f32;
}

/* sub (above) for row r of weight w (n elements of type t) and x. */
static double mm_sub(qg_dtype t, const void *w, int64_t n, int64_t r, const float *x) {
    double *row = dalloc(n);
    qg_ref_weight_row(t, w, n, r, row);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += 0x1p-25 * (fabs(x[i]) + fabs(row[i]));
    free(row);
    return s;
}

/* Check y (m, cols) = W x (n, cols) against the reference. */
static void check_product(const char *label, const char *what, qg_dtype t, const void *w,
                          int64_t n, int64_t m, const float *x, int cols, const float *y,
                          bool f16) {
    double *ref = dalloc(m * cols), *mag = dalloc(m * cols);
    qg_ref_matmul(t, w, n, m, x, cols, ref, mag);
    if (f16) {
        for (int c = 0; c < cols; c++)
            for (int64_t r = 0; r < m; r++)
                mag[c * m + r] += 1e5 * mm_sub(t, w, n, r, x + (size_t)c * n);
        /* |y - ref| <= 1e-5 * (sum|w x| + 1e5 * sub) + 1e-6 */
        expect_close(label, what, y, ref, mag, m * cols, 1e-5, 1e-6);
    } else {
        /* |y - ref| <= 1e-5 * sum|w x| + 1e-6 */
        expect_close(label, what, y, ref, mag, m * cols, 1e-5, 1e-6);
    }
    free(ref);
    free(mag);
}

/* ---- embed ------------------------------------------------------------ */

static void test_embed(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const int64_t Es[] = {256, 768};
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (size_t ei = 0; ei < 2; ei++)
            for (int ph = 0; ph < 2; ph++) {
                rng r = rng_for(1, case_id++);
                const int T = ph ? 5 : 1, V = 11;
                const int64_t E = Es[ei];
                cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 16);
                const int w = cx_weight(&f, "tok_embd", ALL_W[d], 2, E, V, 1, &r, 1.0f);
                const int tok = cx_tensor(&f, "tokens", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_tokens = tok;
                const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_OUTPUT, 2, E, T, 1);
                qg_op_params p = {0};
                add_node(&f, QG_OP_EMBED, "embed", (int[]){w, tok}, 2, (int[]){x}, 1, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 2 : 1, T};
                for (int run = 0; run < 2; run++) {
                    char label[128];
                    snprintf(label, sizeof label, "embed %s E=%lld n_tok=%d",
                             qg_dtype_name(ALL_W[d]), (long long)E, ntoks[run]);
                    for (int t = 0; t < T; t++) I32(&f, tok)[t] = t < ntoks[run] ? rng_int(&r, V) : -1;
                    cx_step(&f, (int[]){tok}, 1, (int[]){x}, 1, ntoks[run], 0, label);
                    double *ref = dalloc(E * ntoks[run]);
                    qg_ref_embed(ALL_W[d], f.host[w], E, I32(&f, tok), ntoks[run], ref);
                    /* tolerance 0: the dequantized f32 values, exactly */
                    expect_close(label, "x", F32(&f, x), ref, NULL, E * ntoks[run], 0, 0);
                    free(ref);
                }
                cx_free(&f);
            }
    ex_free(&ex);
}

/* ---- rmsnorm, add ---------------------------------------------------- */

static void test_rmsnorm_add(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const int64_t Ns[] = {64, 1000, 2048};
    const float epss[] = {1e-6f, 1e-5f, 0.5f};
    for (int ni = 0; ni < 3; ni++)
        for (int ph = 0; ph < 2; ph++) {
            rng r = rng_for(2, case_id++);
            const int T = ph ? 7 : 1;
            const int64_t N = Ns[ni];
            cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 16);
            const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
            const int b = cx_tensor(&f, "b", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
            const int w = cx_weight(&f, "norm", QG_F32, 1, N, 1, 1, &r, 2.0f);
            const int y = cx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, N, T, 1);
            const int s = cx_tensor(&f, "s", QG_F32, QG_ROLE_OUTPUT, 2, N, T, 1);
            qg_op_params p = {.eps = epss[ni]};
            add_node(&f, QG_OP_RMSNORM, "rmsnorm", (int[]){x, w}, 2, (int[]){y}, 1, &p);
            add_node(&f, QG_OP_ADD, "add", (int[]){x, b}, 2, (int[]){s}, 1, &p);
            cx_compile(&f, &ex);
            const int ntoks[2] = {ph ? 3 : 1, T};
            for (int run = 0; run < 2; run++) {
                const int nt = ntoks[run];
                char label[128];
                snprintf(label, sizeof label, "rmsnorm/add N=%lld n_tok=%d", (long long)N, nt);
                fill_act(&f, x, nt, &r, -3, 3);
                fill_act(&f, b, nt, &r, -10, 10);
                cx_step(&f, (int[]){x, b}, 2, (int[]){y, s}, 2, nt, 0, label);
                double *ref = dalloc(N * nt);
                qg_ref_rmsnorm(F32(&f, x), F32(&f, w), N, nt, epss[ni], ref);
                /* f32 sum of squares and two products per element:
                 * |y - ref| <= 1e-5 |ref| + 1e-6 */
                expect_close(label, "rmsnorm", F32(&f, y), ref, NULL, N * nt, 1e-5, 1e-6);
                qg_ref_add(F32(&f, x), F32(&f, b), N * nt, ref);
                /* one correctly rounded f32 add: |y - ref| <= 2^-24 |ref| */
                expect_close(label, "add", F32(&f, s), ref, NULL, N * nt, 0x1p-24, 0);
                free(ref);
            }
            cx_free(&f);
        }
    ex_free(&ex);
}

/* ---- matmul, router, lm_head ----------------------------------------- */

/* op: MATMUL (w, x), ROUTER (x, w) or LM_HEAD (x, w) on executor kind k. */
static void mm_cases(qg_op op, int test_id, ex_kind k) {
    qg_exec ex = ex_new(k);
    int case_id = 0;
    const int64_t shapes[][2] = {{256, 37}, {512, 70}, {768, 130}};
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (int si = 0; si < 3; si++)
            for (int ph = (k == EX_F32_PREFILL); ph < 2; ph++)
                for (int ol = 0; ol < (op == QG_OP_LM_HEAD ? 2 : 1); ol++) {
                    rng r = rng_for(test_id, case_id++);
                    const int T = ph ? 37 : 1; /* two gemm column tiles of 32 */
                    const int64_t N = shapes[si][0], M = shapes[si][1];
                    if (ALL_W[d] >= QG_Q4_K && ALL_W[d] <= QG_Q6_K && N % 256) continue;
                    cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64);
                    const bool only_last = ol == 1;
                    const int w = cx_weight(&f, "w", ALL_W[d], 2, N, M, 1, &r, 1.0f);
                    const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
                    const int y = cx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, M, only_last ? 1 : T, 1);
                    qg_op_params p = {.only_last = only_last};
                    const int *in = op == QG_OP_MATMUL ? (int[]){w, x} : (int[]){x, w};
                    add_node(&f, op, qg_op_name(op), in, 2, (int[]){y}, 1, &p);
                    cx_compile(&f, &ex);
                    const int ntoks[2] = {ph ? 3 : 1, T};
                    for (int run = 0; run < 2; run++) {
                        const int nt = ntoks[run];
                        char label[160];
                        snprintf(label, sizeof label, "%s %s %lldx%lld n_tok=%d%s%s", qg_op_name(op),
                                 qg_dtype_name(ALL_W[d]), (long long)N, (long long)M, nt,
                                 only_last ? " only_last" : "", k == EX_F32_PREFILL ? " f32" : "");
                        fill_act(&f, x, nt, &r, -1, 1);
                        cx_step(&f, (int[]){x}, 1, (int[]){y}, 1, nt, 0, label);
                        const int cols = only_last ? 1 : nt;
                        const float *xc = F32(&f, x) + (only_last ? (size_t)(nt - 1) * N : 0);
                        const bool f16 = !only_last && f16_path(k == EX_F32_PREFILL ? &ex : NULL,
                                                                ALL_W[d], T);
                        check_product(label, "y", ALL_W[d], f.host[w], N, M, xc, cols, F32(&f, y), f16);
                    }
                    cx_free(&f);
                }
    ex_free(&ex);
}

static void test_matmul(void **state) {
    (void)state;
    NEED_DEVICE();
    mm_cases(QG_OP_MATMUL, 3, EX_DEFAULT);
    mm_cases(QG_OP_MATMUL, 4, EX_F32_PREFILL);
}
static void test_router(void **state) {
    (void)state;
    NEED_DEVICE();
    mm_cases(QG_OP_ROUTER, 5, EX_DEFAULT);
}
static void test_lm_head(void **state) {
    (void)state;
    NEED_DEVICE();
    mm_cases(QG_OP_LM_HEAD, 6, EX_DEFAULT);
    mm_cases(QG_OP_LM_HEAD, 7, EX_F32_PREFILL);
}

/* ---- qkv, swiglu ------------------------------------------------------ */

static void test_qkv(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const qg_dtype triples[][3] = {{QG_Q4_K, QG_Q6_K, QG_Q8_0}, {QG_F16, QG_BF16, QG_F32},
                                   {QG_Q5_K, QG_Q4_0, QG_Q4_K}, {QG_Q4_K, QG_Q4_K, QG_Q4_K}};
    const int heads[][3] = {{32, 4, 2}, {64, 5, 1}}; /* hd, n_head, n_head_kv */
    for (int ti = 0; ti < 4; ti++)
        for (int hi = 0; hi < 2; hi++)
            for (int ph = 0; ph < 2; ph++) {
                rng r = rng_for(8, case_id++);
                const int T = ph ? 35 : 1;
                const int64_t E = 256;
                int64_t m[3];
                m[0] = (int64_t)heads[hi][0] * heads[hi][1];
                m[1] = m[2] = (int64_t)heads[hi][0] * heads[hi][2];
                cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64);
                const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
                int w[3], y[3];
                for (int i = 0; i < 3; i++) {
                    w[i] = cx_weight(&f, "w", triples[ti][i], 2, E, m[i], 1, &r, 1.0f);
                    y[i] = cx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, m[i], T, 1);
                }
                qg_op_params p = {.head_dim = heads[hi][0], .n_head = heads[hi][1],
                                  .n_head_kv = heads[hi][2]};
                add_node(&f, QG_OP_QKV, "qkv", (int[]){x, w[0], w[1], w[2]}, 4, y, 3, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 4 : 1, T};
                for (int run = 0; run < 2; run++) {
                    const int nt = ntoks[run];
                    char label[128];
                    snprintf(label, sizeof label, "qkv types %d heads %d n_tok=%d", ti, hi, nt);
                    fill_act(&f, x, nt, &r, -1, 1);
                    cx_step(&f, (int[]){x}, 1, y, 3, nt, 0, label);
                    for (int i = 0; i < 3; i++)
                        check_product(label, i == 0 ? "q" : i == 1 ? "k" : "v", triples[ti][i],
                                      f.host[w[i]], E, m[i], F32(&f, x), nt, F32(&f, y[i]),
                                      f16_path(NULL, triples[ti][i], T));
                }
                cx_free(&f);
            }
    ex_free(&ex);
}

/* h = silu(g) * u checks: the reference with its error magnitude habs
 * (qg_ref_swiglu_val); exact path |h - ref| <= 1e-5 habs + 1e-6; split-f16
 * path (a looser bound than check_product's, which the product check
 * already makes tight): |h - ref| <= 1e-3 habs + 2e-5, where 2e-5 covers the
 * dots' subnormal term n * 2^-25 * (|x| + |w|) <= 256 * 2^-25 * 1.3. */
static void test_swiglu(void **state) {
    (void)state;
    NEED_DEVICE();
    for (int kind = 0; kind < 2; kind++) {
        qg_exec ex = ex_new(kind ? EX_F32_PREFILL : EX_DEFAULT);
        int case_id = 0;
        for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
            for (int mixed = 0; mixed < 2; mixed++)
                for (int ph = kind; ph < 2; ph++) {
                    rng r = rng_for(9 + kind, case_id++);
                    const int T = ph ? 37 : 1;
                    const int64_t E = 256, F = 96;
                    const qg_dtype gt = ALL_W[d], ut = mixed ? ALL_W[(d + 3) % 8] : ALL_W[d];
                    cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64);
                    const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
                    const int g = cx_weight(&f, "gate", gt, 2, E, F, 1, &r, 1.0f);
                    const int u = cx_weight(&f, "up", ut, 2, E, F, 1, &r, 1.0f);
                    const int h = cx_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 2, F, T, 1);
                    qg_op_params p = {0};
                    add_node(&f, QG_OP_SWIGLU, "swiglu", (int[]){x, g, u}, 3, (int[]){h}, 1, &p);
                    cx_compile(&f, &ex);
                    const int ntoks[2] = {ph ? 4 : 1, T};
                    for (int run = 0; run < 2; run++) {
                        const int nt = ntoks[run];
                        char label[128];
                        snprintf(label, sizeof label, "swiglu %s/%s n_tok=%d%s", qg_dtype_name(gt),
                                 qg_dtype_name(ut), nt, kind ? " f32" : "");
                        fill_act(&f, x, nt, &r, -0.3f, 0.3f);
                        cx_step(&f, (int[]){x}, 1, (int[]){h}, 1, nt, 0, label);
                        double *ref = dalloc(F * nt), *mag = dalloc(F * nt);
                        qg_ref_swiglu(gt, f.host[g], ut, f.host[u], E, F, F32(&f, x), nt, ref, mag);
                        const bool f16 = !kind && ph && (gt != QG_F32 || ut != QG_F32);
                        expect_close(label, "h", F32(&f, h), ref, mag, F * nt, f16 ? 1e-3 : 1e-5,
                                     f16 ? 2e-5 : 1e-6);
                        free(ref);
                        free(mag);
                    }
                    cx_free(&f);
                }
        ex_free(&ex);
    }
}

/* ---- rope ------------------------------------------------------------- */

/* |y - ref| <= 1e-5 * |(ref_i, ref_pair)| + 1e-6 per element of a pair (as
 * the CPU: f32 norm, f32-rounded sin/cos of a float64 angle, two roundings
 * in the rotation). */
static void expect_rope(const char *label, const char *what, const float *y, const double *ref,
                        int n_heads_tok, int hd) {
    const int half = hd / 2;
    for (int h = 0; h < n_heads_tok; h++)
        for (int i = 0; i < hd; i++) {
            const size_t o = (size_t)h * hd;
            const int j = i < half ? i + half : i - half;
            const double tol = 1e-5 * hypot(ref[o + i], ref[o + j]) + 1e-6;
            const double v = y[o + i];
            if (!isfinite(v) || fabs(v - ref[o + i]) > tol)
                fail_msg("%s: %s head-row %d [%d] = %.9g, reference %.9g, tolerance %.3g", label,
                         what, h, i, v, ref[o + i], tol);
        }
}

static void test_rope(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const int heads[][3] = {{16, 3, 1}, {64, 4, 2}, {128, 2, 2}, {96, 9, 3}};
    const float thetas[] = {1e6f, 1e4f};
    for (int hi = 0; hi < 4; hi++)
        for (int th = 0; th < 2; th++)
            for (int ph = 0; ph < 2; ph++) {
                rng r = rng_for(11, case_id++);
                const int T = ph ? 6 : 1, hd = heads[hi][0], nh = heads[hi][1], nkv = heads[hi][2];
                cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64);
                const int q = cx_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, (int64_t)hd * nh, T, 1);
                const int k = cx_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, (int64_t)hd * nkv, T, 1);
                const int qn = cx_weight(&f, "q_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
                const int kn = cx_weight(&f, "k_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
                const int pos = cx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_pos = pos;
                const int qo = cx_tensor(&f, "q_rope", QG_F32, QG_ROLE_OUTPUT, 2, (int64_t)hd * nh, T, 1);
                const int ko = cx_tensor(&f, "k_rope", QG_F32, QG_ROLE_OUTPUT, 2, (int64_t)hd * nkv, T, 1);
                qg_op_params p = {.eps = 1e-6f, .rope_theta = thetas[th], .head_dim = hd,
                                  .n_head = nh, .n_head_kv = nkv};
                add_node(&f, QG_OP_ROPE, "rope", (int[]){q, k, qn, kn, pos}, 5, (int[]){qo, ko}, 2, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 2 : 1, T};
                for (int run = 0; run < 2; run++) {
                    const int nt = ntoks[run];
                    char label[128];
                    snprintf(label, sizeof label, "rope hd=%d nh=%d theta=%g n_tok=%d", hd, nh,
                             (double)thetas[th], nt);
                    fill_act(&f, q, nt, &r, -2, 2);
                    fill_act(&f, k, nt, &r, -2, 2);
                    /* positions up to 40000: where an f32 angle would fail */
                    for (int t = 0; t < T; t++) I32(&f, pos)[t] = run == 0 && t == 0 ? 0 : rng_int(&r, 40000);
                    cx_step(&f, (int[]){q, k, pos}, 3, (int[]){qo, ko}, 2, nt, 0, label);
                    double *qr = dalloc((int64_t)hd * nh * nt), *kr = dalloc((int64_t)hd * nkv * nt);
                    qg_ref_rope(F32(&f, q), F32(&f, k), F32(&f, qn), F32(&f, kn), I32(&f, pos), nt, hd,
                                nh, nkv, 1e-6, thetas[th], qr, kr);
                    expect_rope(label, "q", F32(&f, qo), qr, nh * nt, hd);
                    expect_rope(label, "k", F32(&f, ko), kr, nkv * nt, hd);
                    free(qr);
                    free(kr);
                }
                cx_free(&f);
            }
    ex_free(&ex);
}

/* ---- attention -------------------------------------------------------- */

static double cache_get(qg_dtype ct, const void *p, size_t i) {
    return ct == QG_F16 ? (double)qg_f16_to_f32(((const uint16_t *)p)[i])
                        : (double)((const float *)p)[i];
}

/* Caches after the step: rows pos[t] hold this step's k, v rounded once
 * to the cache type (exact bits), every other row as before.  Output
 * against the reference over the caches as written:
 * |o - ref| <= 1e-5 * (1 + qk_abs) * sum_j p_j |v_j| + 1e-6 (f32 scores,
 * softmax and weighted sum, as the CPU). */
static void check_attention(cx *f, const char *label, int q, int k, int v, int kc, int vc,
                            int pos, int o, const void *kc0, const void *vc0, int nt, int hd,
                            int nh, int nkv, int C, qg_dtype ct) {
    const int64_t Dkv = (int64_t)hd * nkv, Dq = (int64_t)hd * nh;
    const int32_t *ps = I32(f, pos);
    const size_t es = ct == QG_F16 ? 2 : 4;
    for (int m = 0; m < 2; m++) {
        const int cid = m ? vc : kc;
        const float *src = F32(f, m ? v : k);
        const unsigned char *now = f->host[cid], *before = m ? vc0 : kc0;
        for (int row = 0; row < C; row++) {
            int t = -1;
            for (int i = 0; i < nt; i++)
                if (ps[i] == row) t = i;
            if (t < 0) {
                if (memcmp(now + (size_t)row * Dkv * es, before + (size_t)row * Dkv * es,
                           (size_t)Dkv * es) != 0)
                    fail_msg("%s: cache row %d changed (not written this step)", label, row);
                continue;
            }
            for (int64_t i = 0; i < Dkv; i++) {
                const size_t off = ((size_t)row * Dkv + i) * es;
                const float x = src[(size_t)t * Dkv + i];
                bool ok;
                if (ct == QG_F16) {
                    uint16_t h;
                    memcpy(&h, now + off, 2);
                    ok = h == qg_f32_to_f16(x);
                } else {
                    ok = memcmp(now + off, &x, 4) == 0;
                }
                if (!ok) fail_msg("%s: %s cache row %d [%lld] wrong", label, m ? "v" : "k", row, (long long)i);
            }
        }
    }
    double *kd = dalloc(Dkv * C), *vd = dalloc(Dkv * C);
    for (size_t i = 0; i < (size_t)(Dkv * C); i++) {
        kd[i] = cache_get(ct, f->host[kc], i);
        vd[i] = cache_get(ct, f->host[vc], i);
    }
    double *ref = dalloc(Dq * nt), *pva = dalloc(Dq * nt), *qka = dalloc((int64_t)nh * nt);
    qg_ref_attention(F32(f, q), kd, vd, ps, nt, hd, nh, nkv, ref, pva, qka);
    double *mag = dalloc(Dq * nt);
    for (int t = 0; t < nt; t++)
        for (int64_t i = 0; i < Dq; i++) mag[t * Dq + i] = (1.0 + qka[t * nh + i / hd]) * pva[t * Dq + i];
    expect_close(label, "o", F32(f, o), ref, mag, Dq * nt, 1e-5, 1e-6);
    free(kd);
    free(vd);
    free(ref);
    free(pva);
    free(qka);
    free(mag);
}

static void test_attention(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    /* hd, n_head, n_head_kv: groups of 2, 1, 6 (-> 2 per CTA), 8, 8 x 2 */
    const int heads[][3] = {{32, 4, 2}, {64, 3, 3}, {128, 6, 1}, {128, 8, 1}, {64, 16, 2}};
    const qg_dtype cts[] = {QG_F32, QG_F16};
    for (int hi = 0; hi < 5; hi++)
        for (int ci = 0; ci < 2; ci++)
            for (int ph = 0; ph < 3; ph++) {
                /* ph 0: decode, short cache; 1: decode, 700 rows (many
                 * splits); 2: prefill, 40 tokens (5 CTAs of 8) */
                rng r = rng_for(12, case_id++);
                const int T = ph == 2 ? 40 : 1, C = ph == 0 ? 48 : ph == 1 ? 700 : 96;
                const int hd = heads[hi][0], nh = heads[hi][1], nkv = heads[hi][2];
                const qg_dtype ct = cts[ci];
                const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
                cx f = cx_make(ph == 2 ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, C);
                const int q = cx_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T, 1);
                const int k = cx_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                const int v = cx_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                const int kc = cx_tensor(&f, "cache_k", ct, QG_ROLE_KV, 2, Dkv, C, 1);
                const int vc = cx_tensor(&f, "cache_v", ct, QG_ROLE_KV, 2, Dkv, C, 1);
                const int pos = cx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_pos = pos;
                const int o = cx_tensor(&f, "o", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T, 1);
                qg_op_params p = {.head_dim = hd, .n_head = nh, .n_head_kv = nkv};
                add_node(&f, QG_OP_ATTENTION, "attention", (int[]){q, k, v, kc, vc, pos}, 6,
                         (int[]){o}, 1, &p);
                cx_compile(&f, &ex);
                const size_t cb = f.g->tensors[kc].nbytes;
                void *kc0 = malloc(cb), *vc0 = malloc(cb);
                assert_true(kc0 && vc0);
                const int ntoks[2] = {ph == 2 ? 7 : 1, T};
                for (int run = 0; run < 2; run++) {
                    const int nt = ntoks[run];
                    /* earlier rows: random, in the cache type */
                    for (size_t i = 0; i < (size_t)(Dkv * C); i++) {
                        const float a = rng_unif(&r, -1, 1), b = rng_unif(&r, -1, 1);
                        if (ct == QG_F16) {
                            ((uint16_t *)kc0)[i] = qg_f32_to_f16(a);
                            ((uint16_t *)vc0)[i] = qg_f32_to_f16(b);
                        } else {
                            ((float *)kc0)[i] = a;
                            ((float *)vc0)[i] = b;
                        }
                    }
                    memcpy(f.host[kc], kc0, cb);
                    memcpy(f.host[vc], vc0, cb);
                    fill_act(&f, q, nt, &r, -2, 2);
                    fill_act(&f, k, nt, &r, -1, 1);
                    fill_act(&f, v, nt, &r, -1, 1);
                    /* consecutive positions from a random start; the second
                     * decode run of the long cache uses the last rows */
                    int p0 = rng_int(&r, C - nt + 1);
                    if (run == 0 && ph == 0) p0 = 0;
                    if (run == 1 && ph == 1) p0 = C - 1;
                    for (int t = 0; t < T; t++) I32(&f, pos)[t] = t < nt ? p0 + t : -1;
                    char label[160];
                    snprintf(label, sizeof label, "attention hd=%d nh=%d nkv=%d %s C=%d n_tok=%d p0=%d",
                             hd, nh, nkv, qg_dtype_name(ct), C, nt, p0);
                    cx_step(&f, (int[]){q, k, v, kc, vc, pos}, 6, (int[]){o}, 1, nt, p0 + nt, label);
                    cx_download(&f, kc);
                    cx_download(&f, vc);
                    check_attention(&f, label, q, k, v, kc, vc, pos, o, kc0, vc0, nt, hd, nh, nkv, C, ct);
                }
                free(kc0);
                free(vc0);
                cx_free(&f);
            }
    ex_free(&ex);
}

/* ---- topk ------------------------------------------------------------- */

/* ids, wts of n_tok tokens against the reference top-k of `logits`: ids
 * exact where the reference's K-th and (K+1)-th probabilities differ by
 * more than 1e-6 (or ties are exact); always K distinct valid ids whose
 * probabilities are within 1e-6 of the reference's choice; weights within
 * 1e-6 of the reference renormalization over the ids actually chosen. */
static void expect_topk(const char *label, const float *logits, const int32_t *ids,
                        const float *wts, int X, int K, int n_tok, bool exact_ties) {
    int32_t *rid = malloc(sizeof(int32_t) * (size_t)K * (size_t)n_tok);
    double *rw = dalloc((int64_t)K * n_tok), *pr = dalloc((int64_t)X * n_tok), *gap = dalloc(n_tok);
    assert_non_null(rid);
    qg_ref_topk(logits, X, K, n_tok, rid, rw, pr, gap);
    for (int t = 0; t < n_tok; t++) {
        const int32_t *id = ids + (size_t)t * K;
        const double *p = pr + (size_t)t * X;
        double sum = 0;
        for (int k = 0; k < K; k++) {
            if (id[k] < 0 || id[k] >= X) fail_msg("%s: token %d id[%d] = %d", label, t, k, id[k]);
            for (int j = 0; j < k; j++)
                if (id[j] == id[k]) fail_msg("%s: token %d repeats expert %d", label, t, id[k]);
            if (p[id[k]] < p[rid[(size_t)t * K + k]] - 1e-6)
                fail_msg("%s: token %d choice %d = %d has p %.9g < reference %.9g", label, t, k,
                         id[k], p[id[k]], p[rid[(size_t)t * K + k]]);
            sum += p[id[k]];
        }
        if (gap[t] > 1e-6 || exact_ties)
            for (int k = 0; k < K; k++)
                if (id[k] != rid[(size_t)t * K + k])
                    fail_msg("%s: token %d id[%d] = %d, reference %d (gap %.3g)", label, t, k, id[k],
                             rid[(size_t)t * K + k], gap[t]);
        for (int k = 0; k < K; k++) {
            const double w = p[id[k]] / sum, v = wts[(size_t)t * K + k];
            if (!isfinite(v) || fabs(v - w) > 1e-6)
                fail_msg("%s: token %d wts[%d] = %.9g, reference %.9g", label, t, k, v, w);
        }
    }
    free(rid);
    free(rw);
    free(pr);
    free(gap);
}

static void test_topk(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const int XK[][2] = {{8, 1}, {8, 8}, {64, 2}, {128, 8}, {60, 4}, {300, 16}};
    for (int xi = 0; xi < 6; xi++)
        for (int ties = 0; ties < 2; ties++)
            for (int ph = 0; ph < 2; ph++) {
                rng r = rng_for(13, case_id++);
                const int T = ph ? 9 : 1, X = XK[xi][0], K = XK[xi][1];
                cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 16);
                const int l = cx_tensor(&f, "logits", QG_F32, QG_ROLE_INPUT, 2, X, T, 1);
                const int ids = cx_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, T, 1);
                const int wts = cx_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, T, 1);
                qg_op_params p = {.n_expert = X, .n_expert_used = K};
                add_node(&f, QG_OP_TOPK, "topk", (int[]){l}, 1, (int[]){ids, wts}, 2, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 4 : 1, T};
                for (int run = 0; run < 2; run++) {
                    const int nt = ntoks[run];
                    char label[128];
                    snprintf(label, sizeof label, "topk X=%d K=%d ties=%d n_tok=%d", X, K, ties, nt);
                    fill_act(&f, l, nt, &r, -6, 6);
                    if (ties)
                        for (int i = 0; i < X * nt; i++) F32(&f, l)[i] = (float)rng_int(&r, 4);
                    cx_step(&f, (int[]){l}, 1, (int[]){ids, wts}, 2, nt, 0, label);
                    expect_topk(label, F32(&f, l), I32(&f, ids), F32(&f, wts), X, K, nt, ties);
                }
                cx_free(&f);
            }
    ex_free(&ex);
}

/* ---- sparse experts -------------------------------------------------- */

/* Distinct random expert ids per token; expert 0 in every token (at
 * k = t % K) so one expert gets more than one gemm column tile. */
static void make_ids(int32_t *ids, int X, int K, int T, rng *r) {
    for (int t = 0; t < T; t++) {
        int32_t *id = ids + (size_t)t * K;
        for (int k = 0; k < K; k++) {
            if (k == t % K) {
                id[k] = 0;
                continue;
            }
            for (;;) {
                const int e = 1 + rng_int(r, X - 1);
                bool dup = false;
                for (int j = 0; j < k; j++) dup |= id[j] == e;
                if (!dup) {
                    id[k] = e;
                    break;
                }
            }
        }
    }
}

/* Expert weight types: (gate, up, down). */
static const qg_dtype MOE_TYPES[][3] = {
    {QG_Q4_K, QG_Q4_K, QG_Q6_K}, {QG_Q5_K, QG_Q8_0, QG_Q4_0},
    {QG_F16, QG_BF16, QG_F32},   {QG_Q6_K, QG_Q6_K, QG_Q5_K},
};

/* expert_swiglu then aggregate over given ids / wts.  Tolerances: h as
 * swiglu (exact 1e-5 habs + 1e-6; f16 1e-3 habs + 2e-5); y: K dots as
 * matmul, weighted sum in f32 (exact 1e-5 yabs + 1e-6; f16 1e-3 yabs +
 * 2e-5, yabs = sum_k |w_k| sum_f |down h|). */
static void test_expert_swiglu_aggregate(void **state) {
    (void)state;
    NEED_DEVICE();
    for (int kind = 0; kind < 2; kind++) {
        qg_exec ex = ex_new(kind ? EX_F32_PREFILL : EX_DEFAULT);
        int case_id = 0;
        const int XK[][2] = {{6, 2}, {4, 3}, {16, 8}};
        for (size_t ti = 0; ti < QG_ARRAY_LEN(MOE_TYPES); ti++)
            for (int xi = 0; xi < 3; xi++)
                for (int ph = kind; ph < 2; ph++) {
                    rng r = rng_for(14 + kind, case_id++);
                    const int T = ph ? 40 : 1, X = XK[xi][0], K = XK[xi][1];
                    const int64_t E = 256, F = 256;
                    const qg_dtype gt = MOE_TYPES[ti][0], ut = MOE_TYPES[ti][1], dt = MOE_TYPES[ti][2];
                    cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64);
                    const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
                    const int gw = cx_weight(&f, "gate_exps", gt, 3, E, F, X, &r, 1.0f);
                    const int uw = cx_weight(&f, "up_exps", ut, 3, E, F, X, &r, 1.0f);
                    const int dw = cx_weight(&f, "down_exps", dt, 3, F, E, X, &r, 1.0f);
                    const int ids = cx_tensor(&f, "ids", QG_I32, QG_ROLE_INPUT, 2, K, T, 1);
                    const int wts = cx_tensor(&f, "wts", QG_F32, QG_ROLE_INPUT, 2, K, T, 1);
                    const int h = cx_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 3, F, K, T);
                    const int y = cx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, E, T, 1);
                    qg_op_params p = {.n_expert = X, .n_expert_used = K};
                    add_node(&f, QG_OP_EXPERT_SWIGLU, "expert_swiglu", (int[]){x, gw, uw, ids}, 4,
                             (int[]){h}, 1, &p);
                    add_node(&f, QG_OP_AGGREGATE, "aggregate", (int[]){h, dw, ids, wts}, 4,
                             (int[]){y}, 1, &p);
                    cx_compile(&f, &ex);
                    const int ntoks[2] = {ph ? 5 : 1, T};
                    for (int run = 0; run < 2; run++) {
                        const int nt = ntoks[run];
                        char label[160];
                        snprintf(label, sizeof label, "experts %s/%s/%s X=%d K=%d n_tok=%d%s",
                                 qg_dtype_name(gt), qg_dtype_name(ut), qg_dtype_name(dt), X, K, nt,
                                 kind ? " f32" : "");
                        fill_act(&f, x, nt, &r, -0.3f, 0.3f);
                        memset(f.host[ids], POISON, f.g->tensors[ids].nbytes);
                        make_ids(I32(&f, ids), X, K, nt, &r);
                        fill_act(&f, wts, nt, &r, 0.1f, 1.0f);
                        for (int t = 0; t < nt; t++) {
                            float s = 0;
                            for (int j = 0; j < K; j++) s += F32(&f, wts)[t * K + j];
                            for (int j = 0; j < K; j++) F32(&f, wts)[t * K + j] /= s;
                        }
                        cx_step(&f, (int[]){x, ids, wts}, 3, (int[]){h, y}, 2, nt, 0, label);
                        const bool f16h = !kind && ph && (gt != QG_F32 || ut != QG_F32);
                        const bool f16y = !kind && ph && dt != QG_F32;
                        const int64_t nh = F * K * nt, ny = E * nt;
                        double *ref = dalloc(nh), *mag = dalloc(nh);
                        qg_ref_expert_swiglu(gt, f.host[gw], ut, f.host[uw], E, F, X, F32(&f, x),
                                             I32(&f, ids), K, nt, ref, mag);
                        expect_close(label, "h", F32(&f, h), ref, mag, nh, f16h ? 1e-3 : 1e-5,
                                     f16h ? 2e-5 : 1e-6);
                        free(ref);
                        free(mag);
                        ref = dalloc(ny);
                        mag = dalloc(ny);
                        qg_ref_aggregate(F32(&f, h), dt, f.host[dw], F, E, X, I32(&f, ids),
                                         F32(&f, wts), K, nt, ref, mag);
                        expect_close(label, "y", F32(&f, y), ref, mag, ny, f16y ? 1e-3 : 1e-5,
                                     f16y ? 2e-5 : 1e-6);
                        free(ref);
                        free(mag);
                    }
                    cx_free(&f);
                }
        ex_free(&ex);
    }
}

/* moe_fused next to the unfused chain over the same x: router logits (of
 * the unfused router) against the reference as matmul; the fused routing
 * as topk over those logits; the fused y against the reference experts
 * over the fused routing: |y - ref| <= tol * (sum_k |w| sum_f |down|
 * (|h| + habs)) + abs, tol 1e-5 exact / 1e-3 f16, abs 1e-6 / 2e-5. */
static void test_moe_fused(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const qg_dtype rts[] = {QG_F32, QG_Q8_0};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(MOE_TYPES); ti++)
        for (int ph = 0; ph < 2; ph++) {
            rng r = rng_for(16, case_id++);
            const int T = ph ? 40 : 1, X = ph ? 5 : 8, K = ph ? 2 : 3;
            const int64_t E = 256, F = 256;
            const qg_dtype rt = rts[ti % 2], gt = MOE_TYPES[ti][0], ut = MOE_TYPES[ti][1],
                           dt = MOE_TYPES[ti][2];
            cx f = cx_make(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64);
            const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
            const int gi = cx_weight(&f, "gate_inp", rt, 2, E, X, 1, &r, 1.0f);
            const int gw = cx_weight(&f, "gate_exps", gt, 3, E, F, X, &r, 1.0f);
            const int uw = cx_weight(&f, "up_exps", ut, 3, E, F, X, &r, 1.0f);
            const int dw = cx_weight(&f, "down_exps", dt, 3, F, E, X, &r, 1.0f);
            const int lg = cx_tensor(&f, "logits", QG_F32, QG_ROLE_OUTPUT, 2, X, T, 1);
            const int y = cx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, E, T, 1);
            const int ids = cx_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, T, 1);
            const int wts = cx_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, T, 1);
            qg_op_params p = {.n_expert = X, .n_expert_used = K};
            add_node(&f, QG_OP_ROUTER, "router", (int[]){x, gi}, 2, (int[]){lg}, 1, &p);
            add_node(&f, QG_OP_MOE_FUSED, "moe", (int[]){x, gi, gw, uw, dw}, 5,
                     (int[]){y, ids, wts}, 3, &p);
            cx_compile(&f, &ex);
            const int ntoks[2] = {ph ? 7 : 1, T};
            for (int run = 0; run < 2; run++) {
                const int nt = ntoks[run];
                char label[160];
                snprintf(label, sizeof label, "moe_fused %s/%s/%s/%s n_tok=%d", qg_dtype_name(rt),
                         qg_dtype_name(gt), qg_dtype_name(ut), qg_dtype_name(dt), nt);
                fill_act(&f, x, nt, &r, -0.3f, 0.3f);
                cx_step(&f, (int[]){x}, 1, (int[]){lg, y, ids, wts}, 4, nt, 0, label);
                const bool f16r = ph && rt != QG_F32;
                check_product(label, "logits", rt, f.host[gi], E, X, F32(&f, x), nt, F32(&f, lg), f16r);
                expect_topk(label, F32(&f, lg), I32(&f, ids), F32(&f, wts), X, K, nt, false);
                const int64_t nh = F * K * nt, ny = E * nt;
                double *h = dalloc(nh), *ha = dalloc(nh), *yr = dalloc(ny), *ya = dalloc(ny),
                       *yb = dalloc(ny);
                qg_ref_expert_swiglu(gt, f.host[gw], ut, f.host[uw], E, F, X, F32(&f, x), I32(&f, ids),
                                     K, nt, h, ha);
                float *hf = malloc(sizeof(float) * (size_t)nh), *haf = malloc(sizeof(float) * (size_t)nh);
                assert_true(hf && haf);
                for (int64_t i = 0; i < nh; i++) {
                    hf[i] = (float)h[i];
                    haf[i] = (float)ha[i];
                }
                qg_ref_aggregate(hf, dt, f.host[dw], F, E, X, I32(&f, ids), F32(&f, wts), K, nt, yr, ya);
                qg_ref_aggregate(haf, dt, f.host[dw], F, E, X, I32(&f, ids), F32(&f, wts), K, nt, yb, NULL);
                for (int64_t i = 0; i < ny; i++) ya[i] += fabs(yb[i]) * 1.0001;
                const bool f16 = ph;
                expect_close(label, "y", F32(&f, y), yr, ya, ny, f16 ? 1e-3 : 1e-5, f16 ? 2e-5 : 1e-6);
                free(h);
                free(ha);
                free(yr);
                free(ya);
                free(yb);
                free(hf);
                free(haf);
            }
            cx_free(&f);
        }
    ex_free(&ex);
}

/* ---- executor-level folds --------------------------------------------- */

/* A decode chain with every fold the executor makes:
 *   x -> rmsnorm -> moe_fused -> add(x, .) = r          (pre_norm, post_add)
 *   r -> matmul(W2, r) -> add(r, .) = s                 (post_add)
 *   s -> rmsnorm -> qkv -> q, k, v                      (pre_norm)
 *   s -> rmsnorm -> lm_head -> logits                   (pre_norm)
 * run on the default executor and on one made with QG_CUDA_FUSE=0: every
 * output bit-identical (the folded kernels compute the same f32 values in
 * the same order), and the logits near the float64 reference of the chain
 * (|l - ref| <= 1e-4 * sum|w h| + 1e-5: four f32 stages). */
static void test_fold(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec exs[2] = {ex_new(EX_DEFAULT), ex_new(EX_NOFUSE)};
    for (int c = 0; c < 3; c++) {
        void *res[2][6] = {{0}};
        size_t res_n[6] = {0};
        for (int e = 0; e < 2; e++) {
            rng r = rng_for(17, c); /* same weights and inputs on both executors */
            const int64_t E = 256, F = 256, Dq = 128, Dkv = 64, V = 300;
            const int X = 8, K = 2;
            cx f = cx_make(QG_PHASE_DECODE, 1, 16);
            const qg_dtype wt = c == 0 ? QG_Q4_K : c == 1 ? QG_Q8_0 : QG_F16;
            const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, 1, 1);
            const int n1 = cx_weight(&f, "n1", QG_F32, 1, E, 1, 1, &r, 2.0f);
            const int n2 = cx_weight(&f, "n2", QG_F32, 1, E, 1, 1, &r, 2.0f);
            const int n3 = cx_weight(&f, "n3", QG_F32, 1, E, 1, 1, &r, 2.0f);
            const int gi = cx_weight(&f, "gate_inp", QG_F32, 2, E, X, 1, &r, 1.0f);
            const int gw = cx_weight(&f, "gate_exps", wt, 3, E, F, X, &r, 1.0f);
            const int uw = cx_weight(&f, "up_exps", wt, 3, E, F, X, &r, 1.0f);
            const int dw = cx_weight(&f, "down_exps", QG_Q6_K, 3, F, E, X, &r, 1.0f);
            const int w2 = cx_weight(&f, "w2", wt, 2, E, E, 1, &r, 0.1f);
            const int wq = cx_weight(&f, "wq", wt, 2, E, Dq, 1, &r, 1.0f);
            const int wk = cx_weight(&f, "wk", QG_Q6_K, 2, E, Dkv, 1, &r, 1.0f);
            const int wv = cx_weight(&f, "wv", wt, 2, E, Dkv, 1, &r, 1.0f);
            const int wo = cx_weight(&f, "out", wt, 2, E, V, 1, &r, 1.0f);
            const int h1 = cx_tensor(&f, "h1", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int ym = cx_tensor(&f, "ym", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int ids = cx_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, 1, 1);
            const int wts = cx_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, 1, 1);
            const int rr = cx_tensor(&f, "r", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int pj = cx_tensor(&f, "proj", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int s = cx_tensor(&f, "s", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int h2 = cx_tensor(&f, "h2", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int h3 = cx_tensor(&f, "h3", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int q = cx_tensor(&f, "q", QG_F32, QG_ROLE_OUTPUT, 2, Dq, 1, 1);
            const int k = cx_tensor(&f, "k", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, 1, 1);
            const int v = cx_tensor(&f, "v", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, 1, 1);
            const int lg = cx_tensor(&f, "logits", QG_F32, QG_ROLE_OUTPUT, 2, V, 1, 1);
            qg_op_params p = {.eps = 1e-6f, .n_expert = X, .n_expert_used = K, .head_dim = 64,
                              .n_head = 2, .n_head_kv = 1, .only_last = true};
            add_node(&f, QG_OP_RMSNORM, "n1", (int[]){x, n1}, 2, (int[]){h1}, 1, &p);
            add_node(&f, QG_OP_MOE_FUSED, "moe", (int[]){h1, gi, gw, uw, dw}, 5, (int[]){ym, ids, wts}, 3, &p);
            add_node(&f, QG_OP_ADD, "res1", (int[]){x, ym}, 2, (int[]){rr}, 1, &p);
            add_node(&f, QG_OP_MATMUL, "mm", (int[]){w2, rr}, 2, (int[]){pj}, 1, &p);
            add_node(&f, QG_OP_ADD, "res2", (int[]){rr, pj}, 2, (int[]){s}, 1, &p);
            add_node(&f, QG_OP_RMSNORM, "n2", (int[]){s, n2}, 2, (int[]){h2}, 1, &p);
            add_node(&f, QG_OP_QKV, "qkv", (int[]){h2, wq, wk, wv}, 4, (int[]){q, k, v}, 3, &p);
            add_node(&f, QG_OP_RMSNORM, "n3", (int[]){s, n3}, 2, (int[]){h3}, 1, &p);
            add_node(&f, QG_OP_LM_HEAD, "lm_head", (int[]){h3, wo}, 2, (int[]){lg}, 1, &p);
            cx_compile(&f, &exs[e]);
            char label[96];
            snprintf(label, sizeof label, "fold %s %s", qg_dtype_name(wt), e ? "unfused" : "fused");
            fill_act(&f, x, 1, &r, -1, 1);
            const int outs[6] = {ids, wts, q, k, v, lg};
            cx_step(&f, (int[]){x}, 1, outs, 6, 1, 0, label);
            for (int i = 0; i < 6; i++) {
                res_n[i] = f.g->tensors[outs[i]].nbytes;
                res[e][i] = malloc(res_n[i]);
                assert_non_null(res[e][i]);
                memcpy(res[e][i], f.host[outs[i]], res_n[i]);
            }
            if (e == 1) {
                for (int i = 0; i < 6; i++)
                    if (memcmp(res[0][i], res[1][i], res_n[i]) != 0)
                        fail_msg("%s: output %s differs between the folded and the plain graph",
                                 label, f.g->tensors[outs[i]].name);
                /* reference of the chain up to the logits, in double from
                 * the kernels' own routing */
                double *hd = dalloc(E), *yd = dalloc(E), *t = dalloc(E);
                float *hf = malloc(sizeof(float) * (size_t)E), *rf = malloc(sizeof(float) * (size_t)E);
                assert_true(hf && rf);
                qg_ref_rmsnorm(F32(&f, x), F32(&f, n1), E, 1, 1e-6, hd);
                for (int i = 0; i < E; i++) hf[i] = (float)hd[i];
                double *eh = dalloc(F * K);
                qg_ref_expert_swiglu(wt, f.host[gw], wt, f.host[uw], E, F, X, hf, I32(&f, ids), K, 1, eh, NULL);
                float *ehf = malloc(sizeof(float) * (size_t)(F * K));
                assert_non_null(ehf);
                for (int i = 0; i < F * K; i++) ehf[i] = (float)eh[i];
                qg_ref_aggregate(ehf, QG_Q6_K, f.host[dw], F, E, X, I32(&f, ids), F32(&f, wts), K, 1, yd, NULL);
                for (int i = 0; i < E; i++) rf[i] = (float)(F32(&f, x)[i] + yd[i]);
                qg_ref_matmul(wt, f.host[w2], E, E, rf, 1, t, NULL);
                for (int i = 0; i < E; i++) rf[i] = (float)(rf[i] + t[i]);
                qg_ref_rmsnorm(rf, F32(&f, n3), E, 1, 1e-6, hd);
                for (int i = 0; i < E; i++) hf[i] = (float)hd[i];
                double *lr = dalloc(V), *la = dalloc(V);
                qg_ref_matmul(wt, f.host[wo], E, V, hf, 1, lr, la);
                expect_close(label, "logits", F32(&f, lg), lr, la, V, 1e-4, 1e-5);
                free(hd);
                free(yd);
                free(t);
                free(hf);
                free(rf);
                free(eh);
                free(ehf);
                free(lr);
                free(la);
            }
            cx_free(&f);
        }
        for (int e = 0; e < 2; e++)
            for (int i = 0; i < 6; i++) free(res[e][i]);
    }
    ex_free(&exs[0]);
    ex_free(&exs[1]);
}

/* ---- supports --------------------------------------------------------- */

static void test_supports(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    cx f = cx_make(QG_PHASE_PREFILL, 4, 16);
    rng r = rng_for(18, 0);
    const int x = cx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int x48 = cx_tensor(&f, "x48", QG_F32, QG_ROLE_ACT, 2, 48, 4, 1);
    const int w32 = cx_weight(&f, "w32", QG_F32, 1, 64, 1, 1, &r, 1.0f);
    const int w16 = cx_weight(&f, "w16", QG_F16, 1, 64, 1, 1, &r, 1.0f);
    const int wq = cx_weight(&f, "wq", QG_Q8_0, 2, 64, 8, 1, &r, 1.0f);
    const int w48 = cx_weight(&f, "w48", QG_F16, 2, 48, 8, 1, &r, 1.0f);
    const int y = cx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int kc8 = cx_tensor(&f, "kc8", QG_Q8_0, QG_ROLE_KV, 2, 64, 16, 1);
    const int kc = cx_tensor(&f, "kc", QG_F16, QG_ROLE_KV, 2, 64, 16, 1);
    const int pos = cx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 4, 1, 1);
    qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 4, .eps = 1e-6f};
    qg_op_params p64 = {.head_dim = 64, .n_head = 1, .n_head_kv = 1};
    const int ok = add_node(&f, QG_OP_RMSNORM, "ok", (int[]){x, w32}, 2, (int[]){y}, 1, &p);
    const int bad_w = add_node(&f, QG_OP_RMSNORM, "bad_w", (int[]){x, w16}, 2, (int[]){y}, 1, &p);
    const int mm = add_node(&f, QG_OP_MATMUL, "mm", (int[]){wq, x}, 2, (int[]){y}, 1, &p);
    const int mm48 = add_node(&f, QG_OP_MATMUL, "mm48", (int[]){w48, x48}, 2, (int[]){y}, 1, &p);
    const int att8 = add_node(&f, QG_OP_ATTENTION, "att8", (int[]){x, x, x, kc8, kc8, pos}, 6,
                              (int[]){y}, 1, &p64);
    const int att16 = add_node(&f, QG_OP_ATTENTION, "att16", (int[]){x, x, x, kc, kc, pos}, 6,
                               (int[]){y}, 1, &p);
    const int att64 = add_node(&f, QG_OP_ATTENTION, "att64", (int[]){x, x, x, kc, kc, pos}, 6,
                               (int[]){y}, 1, &p64);
    const qg_exec_i *i = ex.i;
    assert_true(i->supports(ex.self, f.g, &f.g->nodes[ok]));
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[bad_w]));
    assert_true(i->supports(ex.self, f.g, &f.g->nodes[mm]));
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[mm48])); /* rows not a multiple of 32 */
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[att8]));  /* q8_0 cache */
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[att16])); /* head_dim 16 */
    assert_true(i->supports(ex.self, f.g, &f.g->nodes[att64]));
    assert_true(i->mem_available(ex.self) > 0);
    cx_free(&f);
    ex_free(&ex);
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
        cmocka_unit_test(test_supports),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm_add),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_router),
        cmocka_unit_test(test_lm_head),
        cmocka_unit_test(test_qkv),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_expert_swiglu_aggregate),
        cmocka_unit_test(test_moe_fused),
        cmocka_unit_test(test_fold),
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
