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
 * Fixtures, the executor step and the per-op checks are the shared harness
 * of tests/ref/qg_optest.h; this file keeps the CUDA cases and tolerances.
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

#include "qg_optest.h"
#include "qg_ref_ops.h"

#include "exec/qg_exec.h"
#include "graph/qg_graph.h"
#include "graph/qg_sched.h"
#include "ops/quant/qg_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool g_have_device;

#define NEED_DEVICE()                                                         \
    do {                                                                      \
        if (!g_have_device) {                                                 \
            printf("no CUDA device: skipped\n");                              \
            skip();                                                           \
        }                                                                     \
    } while (0)

/* A different stream for every (test, case). */
static qg_test_rng rng_for(int test, int case_id) {
    return qg_optest_rng_for(test, case_id, 424242u);
}

/* ---- executors -------------------------------------------------------- */

/* EX_ATTN_SIMT: decode attention over F16 caches on the f32 SIMT kernel
 * instead of the tensor-core one (QG_CUDA_ATTN_TC=0); EX_NORGU: the decode
 * MoE's router as its own kernel, not folded into gate/up
 * (QG_CUDA_RGU=0). */
typedef enum ex_kind {
    EX_DEFAULT,
    EX_F32_PREFILL,
    EX_NOFUSE,
    EX_ATTN_SIMT,
    EX_NORGU,
    EX_STAGED, /* decode products with weights staged in shared memory (QG_CUDA_STAGED=15) */
    EX_RPART   /* router partials (QG_CUDA_RPART=1), logging its folds (QG_DEBUG=cuda) */
} ex_kind;

static qg_exec ex_new(ex_kind k) {
    if (k == EX_F32_PREFILL) setenv("QG_CUDA_F32_PREFILL", "1", 1);
    if (k == EX_NOFUSE) setenv("QG_CUDA_FUSE", "0", 1);
    if (k == EX_ATTN_SIMT) setenv("QG_CUDA_ATTN_TC", "0", 1);
    if (k == EX_NORGU) setenv("QG_CUDA_RGU", "0", 1);
    if (k == EX_STAGED) setenv("QG_CUDA_STAGED", "15", 1);
    char *dbg = getenv("QG_DEBUG") ? strdup(getenv("QG_DEBUG")) : NULL;
    if (k == EX_RPART) {
        setenv("QG_CUDA_RPART", "1", 1);
        setenv("QG_DEBUG", "cuda", 1);
    }
    qg_exec_opts o = {.n_threads = 1, .device = 0};
    qg_exec ex;
    qg_error err = {0};
    qg_status st = qg_exec_cuda_new(&o, &ex, &err);
    unsetenv("QG_CUDA_F32_PREFILL");
    unsetenv("QG_CUDA_FUSE");
    unsetenv("QG_CUDA_ATTN_TC");
    unsetenv("QG_CUDA_RGU");
    unsetenv("QG_CUDA_STAGED");
    unsetenv("QG_CUDA_RPART");
    if (dbg) setenv("QG_DEBUG", dbg, 1);
    else unsetenv("QG_DEBUG");
    free(dbg);
    if (st) fail_msg("qg_exec_cuda_new: %s", err.msg);
    return ex;
}

static void ex_free(qg_exec *ex) { ex->i->free(ex->self); }

/* ---- fixtures (tests/ref/qg_optest.h) on the CUDA executor alone ------- */

/* Place everything on ex (it must support every node), partition, plan
 * (one partition), allocate the KV arena and compile; qg_optest_fx_free
 * releases the graph on ex. */
static void cx_compile(qg_optest_fx *f, const qg_exec *ex) {
    qg_optest_schedule(f, ex, 1, 0);
    assert_int_equal(f->g->n_parts, 1);
    qg_optest_compile(f, ex);
    f->ex = ex;
}

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
    double *row = qg_optest_dalloc(n);
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
    double *ref = qg_optest_dalloc(m * cols), *mag = qg_optest_dalloc(m * cols);
    qg_ref_matmul(t, w, n, m, x, cols, ref, mag);
    if (f16) {
        for (int c = 0; c < cols; c++)
            for (int64_t r = 0; r < m; r++)
                mag[c * m + r] += 1e5 * mm_sub(t, w, n, r, x + (size_t)c * n);
        /* |y - ref| <= 1e-5 * (sum|w x| + 1e5 * sub) + 1e-6 */
        qg_optest_expect_close(label, what, y, ref, mag, m * cols, 1e-5, 1e-6);
    } else {
        /* |y - ref| <= 1e-5 * sum|w x| + 1e-6 */
        qg_optest_expect_close(label, what, y, ref, mag, m * cols, 1e-5, 1e-6);
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
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (size_t ei = 0; ei < 2; ei++)
            for (int ph = 0; ph < 2; ph++) {
                qg_test_rng r = rng_for(1, case_id++);
                const int T = ph ? 5 : 1, V = 11;
                const int64_t E = Es[ei];
                qg_optest_fx f =
                    qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 16, true);
                const int w =
                    qg_optest_add_weight(&f, "tok_embd", QG_OPTEST_ALL_W[d], 2, E, V, 1, &r, 1.0f);
                const int tok =
                    qg_optest_add_tensor(&f, "tokens", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_tokens = tok;
                const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_OUTPUT, 2, E, T, 1);
                qg_op_params p = {0};
                qg_optest_add_node(&f, QG_OP_EMBED, "embed", (int[]){w, tok}, 2, (int[]){x}, 1, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 2 : 1, T};
                for (int run = 0; run < 2; run++) {
                    char label[128];
                    snprintf(label, sizeof label, "embed %s E=%lld n_tok=%d",
                             qg_dtype_name(QG_OPTEST_ALL_W[d]), (long long)E, ntoks[run]);
                    for (int t = 0; t < T; t++)
                        qg_optest_i32(&f, tok)[t] = t < ntoks[run] ? qg_test_rng_int(&r, V) : -1;
                    qg_optest_step(&f, f.ex, (int[]){tok}, 1, (int[]){x}, 1, ntoks[run], 0, label);
                    /* tolerance 0: the dequantized f32 values, exactly */
                    const qg_optest_embed c = {.w = w, .tok = tok, .x = x, .E = E, .V = V};
                    qg_optest_check_embed(&f, &c, ntoks[run], label);
                }
                qg_optest_fx_free(&f);
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
            qg_test_rng r = rng_for(2, case_id++);
            const int T = ph ? 7 : 1;
            const int64_t N = Ns[ni];
            qg_optest_fx f = qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 16, true);
            const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
            const int b = qg_optest_add_tensor(&f, "b", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
            const int w = qg_optest_add_weight(&f, "norm", QG_F32, 1, N, 1, 1, &r, 2.0f);
            const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, N, T, 1);
            const int s = qg_optest_add_tensor(&f, "s", QG_F32, QG_ROLE_OUTPUT, 2, N, T, 1);
            qg_op_params p = {.eps = epss[ni]};
            qg_optest_add_node(&f, QG_OP_RMSNORM, "rmsnorm", (int[]){x, w}, 2, (int[]){y}, 1, &p);
            qg_optest_add_node(&f, QG_OP_ADD, "add", (int[]){x, b}, 2, (int[]){s}, 1, &p);
            cx_compile(&f, &ex);
            const int ntoks[2] = {ph ? 3 : 1, T};
            for (int run = 0; run < 2; run++) {
                const int nt = ntoks[run];
                char label[128];
                snprintf(label, sizeof label, "rmsnorm/add N=%lld n_tok=%d", (long long)N, nt);
                qg_optest_fill_act(&f, x, nt, &r, -3, 3);
                qg_optest_fill_act(&f, b, nt, &r, -10, 10);
                qg_optest_step(&f, f.ex, (int[]){x, b}, 2, (int[]){y, s}, 2, nt, 0, label);
                /* f32 sum of squares and two products per element:
                 * |y - ref| <= 1e-5 |ref| + 1e-6 */
                const qg_optest_rms cr = {.x = x, .w = w, .y = y, .N = N, .eps = epss[ni]};
                qg_optest_check_rmsnorm(&f, &cr, nt, label);
                /* one correctly rounded f32 add: |y - ref| <= 2^-24 |ref| */
                const qg_optest_add ca = {.a = x, .b = b, .y = s, .N = N};
                qg_optest_check_add(&f, &ca, nt, label);
            }
            qg_optest_fx_free(&f);
        }
    ex_free(&ex);
}

/* ---- matmul, router, lm_head ----------------------------------------- */

/* op: MATMUL (w, x), ROUTER (x, w) or LM_HEAD (x, w) on executor kind k. */
static void mm_cases(qg_op op, int test_id, ex_kind k) {
    qg_exec ex = ex_new(k);
    int case_id = 0;
    /* 2048 x 70: the 30B's input length (Q4_K rows of 1152 bytes) and a
     * partial last tile of the 16-row decode products */
    const int64_t shapes[][2] = {{256, 37}, {512, 70}, {768, 130}, {2048, 70}};
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (int si = 0; si < 4; si++)
            for (int ph = (k == EX_F32_PREFILL); ph < (si == 3 ? 1 : 2); ph++)
                for (int ol = 0; ol < (op == QG_OP_LM_HEAD ? 2 : 1); ol++) {
                    qg_test_rng r = rng_for(test_id, case_id++);
                    const int T = ph ? 37 : 1; /* two gemm column tiles of 32 */
                    const int64_t N = shapes[si][0], M = shapes[si][1];
                    if (QG_OPTEST_ALL_W[d] >= QG_Q4_K && QG_OPTEST_ALL_W[d] <= QG_Q6_K && N % 256)
                        continue;
                    qg_optest_fx f =
                        qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64, true);
                    const bool only_last = ol == 1;
                    const int w =
                        qg_optest_add_weight(&f, "w", QG_OPTEST_ALL_W[d], 2, N, M, 1, &r, 1.0f);
                    const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
                    const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, M,
                                                       only_last ? 1 : T, 1);
                    qg_op_params p = {.only_last = only_last};
                    const int *in = op == QG_OP_MATMUL ? (int[]){w, x} : (int[]){x, w};
                    qg_optest_add_node(&f, op, qg_op_name(op), in, 2, (int[]){y}, 1, &p);
                    cx_compile(&f, &ex);
                    const int ntoks[2] = {ph ? 3 : 1, T};
                    for (int run = 0; run < 2; run++) {
                        const int nt = ntoks[run];
                        char label[160];
                        snprintf(label, sizeof label, "%s %s %lldx%lld n_tok=%d%s%s",
                                 qg_op_name(op), qg_dtype_name(QG_OPTEST_ALL_W[d]), (long long)N,
                                 (long long)M, nt, only_last ? " only_last" : "",
                                 k == EX_F32_PREFILL ? " f32" : "");
                        qg_optest_fill_act(&f, x, nt, &r, -1, 1);
                        qg_optest_step(&f, f.ex, (int[]){x}, 1, (int[]){y}, 1, nt, 0, label);
                        const int cols = only_last ? 1 : nt;
                        const float *xc =
                            qg_optest_f32(&f, x) + (only_last ? (size_t)(nt - 1) * N : 0);
                        const bool f16 = !only_last && f16_path(k == EX_F32_PREFILL ? &ex : NULL,
                                                                QG_OPTEST_ALL_W[d], T);
                        check_product(label, "y", QG_OPTEST_ALL_W[d], f.host[w], N, M, xc, cols,
                                      qg_optest_f32(&f, y), f16);
                    }
                    qg_optest_fx_free(&f);
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

/* The output head's own shapes: a vocabulary of more tiles than
 * 8 x the multiprocessors takes the head path of the decode products
 * (op_matvec_i8.cu), each of its shapes (QG_CUDA_I8_HEAD: the default,
 * and 6, 7, 8, whose warps own whole tiles) with and without the output
 * norm folded in, Q4_K and Q6_K, against float64:
 * |y - ref| <= 1e-5 * sum|w x| + 1e-6. */
static void test_lm_head_wide(void **state) {
    (void)state;
    NEED_DEVICE();
    const char *cfgs[] = {NULL, "6", "7", "8"};
    const qg_dtype types[] = {QG_Q4_K, QG_Q6_K};
    const int64_t N = 2048, V = 20037; /* 1253 tiles, a partial last one */
    int case_id = 0;
    for (size_t ci = 0; ci < QG_ARRAY_LEN(cfgs); ci++) {
        if (cfgs[ci]) setenv("QG_CUDA_I8_HEAD", cfgs[ci], 1);
        qg_exec ex = ex_new(EX_DEFAULT);
        unsetenv("QG_CUDA_I8_HEAD");
        for (size_t ti = 0; ti < QG_ARRAY_LEN(types); ti++)
            for (int norm = 0; norm < 2; norm++) {
                qg_test_rng r = rng_for(30, case_id++);
                qg_optest_fx f = qg_optest_fx_new(QG_PHASE_DECODE, 1, 16, true);
                const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, 1, 1);
                const int nw = qg_optest_add_weight(&f, "norm", QG_F32, 1, N, 1, 1, &r, 2.0f);
                const int h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, N, 1, 1);
                const int w = qg_optest_add_weight(&f, "out", types[ti], 2, N, V, 1, &r, 1.0f);
                const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, V, 1, 1);
                qg_op_params p = {.eps = 1e-6f, .only_last = true};
                if (norm)
                    qg_optest_add_node(&f, QG_OP_RMSNORM, "output_norm", (int[]){x, nw}, 2,
                                       (int[]){h}, 1, &p);
                qg_optest_add_node(&f, QG_OP_LM_HEAD, "lm_head", (int[]){norm ? h : x, w}, 2,
                                   (int[]){y}, 1, &p);
                cx_compile(&f, &ex);
                char label[128];
                snprintf(label, sizeof label, "lm_head %s %lldx%lld shape %s%s",
                         qg_dtype_name(types[ti]), (long long)N, (long long)V,
                         cfgs[ci] ? cfgs[ci] : "default", norm ? " + norm" : "");
                qg_optest_fill_act(&f, x, 1, &r, -1, 1);
                qg_optest_step(&f, f.ex, (int[]){x}, 1, (int[]){y}, 1, 1, 0, label);
                float *xf = malloc(sizeof(float) * (size_t)N);
                double *hd = qg_optest_dalloc(N);
                assert_non_null(xf);
                if (norm) {
                    qg_ref_rmsnorm(qg_optest_f32(&f, x), qg_optest_f32(&f, nw), N, 1, 1e-6, hd);
                    for (int64_t i = 0; i < N; i++) xf[i] = (float)hd[i];
                } else {
                    memcpy(xf, qg_optest_f32(&f, x), sizeof(float) * (size_t)N);
                }
                check_product(label, "y", types[ti], f.host[w], N, V, xf, 1, qg_optest_f32(&f, y),
                              false);
                free(xf);
                free(hd);
                qg_optest_fx_free(&f);
            }
        ex_free(&ex);
    }
}

/* ---- non-finite activations ------------------------------------------- */

/* A NaN or an infinity in x must reach every output of its column, as in
 * the CPU's f32 arithmetic (the integer paths quantize x per super-block:
 * a NaN scale carries it).  Every weight type, decode and prefill; the
 * poison is 0xFF bytes, a NaN too, so a NaN output must also differ from
 * it bit for bit (the kernel wrote it). */
static void test_matmul_nonfinite(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const int64_t N = 512, M = 70;
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (int ph = 0; ph < 2; ph++) {
            qg_test_rng r = rng_for(40, case_id++);
            const int T = ph ? 37 : 1;
            qg_optest_fx f = qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64, true);
            const int w = qg_optest_add_weight(&f, "w", QG_OPTEST_ALL_W[d], 2, N, M, 1, &r, 1.0f);
            const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
            const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, M, T, 1);
            qg_op_params p = {0};
            qg_optest_add_node(&f, QG_OP_MATMUL, "matmul", (int[]){w, x}, 2, (int[]){y}, 1, &p);
            cx_compile(&f, &ex);
            const int nt = ph ? 3 : 1;
            for (int kind = 0; kind < 2; kind++) {
                char label[160];
                snprintf(label, sizeof label, "matmul %s n_tok=%d with %s in x",
                         qg_dtype_name(QG_OPTEST_ALL_W[d]), nt, kind ? "+inf" : "NaN");
                qg_optest_fill_act(&f, x, nt, &r, -1, 1);
                float *xs = qg_optest_f32(&f, x);
                for (int c = 0; c < nt; c++) /* one element, a different super-block per column */
                    xs[(size_t)c * N + 37 + 256 * (c % 2)] = kind ? INFINITY : NAN;
                qg_optest_step(&f, f.ex, (int[]){x}, 1, (int[]){y}, 1, nt, 0, label);
                const float *ys = qg_optest_f32(&f, y);
                for (int64_t i = 0; i < (int64_t)nt * M; i++) {
                    uint32_t bits;
                    memcpy(&bits, &ys[i], sizeof bits);
                    if (isfinite(ys[i]) || bits == 0xFFFFFFFFu)
                        fail_msg("%s: y[%lld] = %.9g (bits %08x): expected a non-finite value "
                                 "written by the kernel",
                                 label, (long long)i, (double)ys[i], (unsigned)bits);
                    if (kind == 0 && !isnan(ys[i]))
                        fail_msg("%s: y[%lld] = %.9g: expected NaN", label, (long long)i,
                                 (double)ys[i]);
                }
            }
            qg_optest_fx_free(&f);
        }
    ex_free(&ex);
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
                qg_test_rng r = rng_for(8, case_id++);
                const int T = ph ? 35 : 1;
                const int64_t E = 256;
                int64_t m[3];
                m[0] = (int64_t)heads[hi][0] * heads[hi][1];
                m[1] = m[2] = (int64_t)heads[hi][0] * heads[hi][2];
                qg_optest_fx f =
                    qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64, true);
                const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
                int w[3], y[3];
                for (int i = 0; i < 3; i++) {
                    w[i] = qg_optest_add_weight(&f, "w", triples[ti][i], 2, E, m[i], 1, &r, 1.0f);
                    y[i] = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, m[i], T, 1);
                }
                qg_op_params p = {.head_dim = heads[hi][0], .n_head = heads[hi][1],
                                  .n_head_kv = heads[hi][2]};
                qg_optest_add_node(&f, QG_OP_QKV, "qkv", (int[]){x, w[0], w[1], w[2]}, 4, y, 3, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 4 : 1, T};
                for (int run = 0; run < 2; run++) {
                    const int nt = ntoks[run];
                    char label[128];
                    snprintf(label, sizeof label, "qkv types %d heads %d n_tok=%d", ti, hi, nt);
                    qg_optest_fill_act(&f, x, nt, &r, -1, 1);
                    qg_optest_step(&f, f.ex, (int[]){x}, 1, y, 3, nt, 0, label);
                    for (int i = 0; i < 3; i++)
                        check_product(label,
                                      i == 0   ? "q"
                                      : i == 1 ? "k"
                                               : "v",
                                      triples[ti][i], f.host[w[i]], E, m[i], qg_optest_f32(&f, x),
                                      nt, qg_optest_f32(&f, y[i]),
                                      f16_path(NULL, triples[ti][i], T));
                }
                qg_optest_fx_free(&f);
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
        for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
            for (int mixed = 0; mixed < 2; mixed++)
                for (int ph = kind; ph < 2; ph++) {
                    qg_test_rng r = rng_for(9 + kind, case_id++);
                    const int T = ph ? 37 : 1;
                    const int64_t E = 256, F = 96;
                    const qg_dtype gt = QG_OPTEST_ALL_W[d],
                                   ut = mixed ? QG_OPTEST_ALL_W[(d + 3) % 8] : QG_OPTEST_ALL_W[d];
                    qg_optest_fx f =
                        qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64, true);
                    const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
                    const int g = qg_optest_add_weight(&f, "gate", gt, 2, E, F, 1, &r, 1.0f);
                    const int u = qg_optest_add_weight(&f, "up", ut, 2, E, F, 1, &r, 1.0f);
                    const int h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 2, F, T, 1);
                    qg_op_params p = {0};
                    qg_optest_add_node(&f, QG_OP_SWIGLU, "swiglu", (int[]){x, g, u}, 3, (int[]){h},
                                       1, &p);
                    cx_compile(&f, &ex);
                    const int ntoks[2] = {ph ? 4 : 1, T};
                    for (int run = 0; run < 2; run++) {
                        const int nt = ntoks[run];
                        char label[128];
                        snprintf(label, sizeof label, "swiglu %s/%s n_tok=%d%s", qg_dtype_name(gt),
                                 qg_dtype_name(ut), nt, kind ? " f32" : "");
                        qg_optest_fill_act(&f, x, nt, &r, -0.3f, 0.3f);
                        qg_optest_step(&f, f.ex, (int[]){x}, 1, (int[]){h}, 1, nt, 0, label);
                        const bool f16 = !kind && ph && (gt != QG_F32 || ut != QG_F32);
                        const qg_optest_swiglu c = {
                            .x = x, .gate = g, .up = u, .h = h, .E = E, .F = F};
                        qg_optest_expect_swiglu(&f, &c, nt, label, f16 ? 1e-3 : 1e-5,
                                                f16 ? 2e-5 : 1e-6);
                    }
                    qg_optest_fx_free(&f);
                }
        ex_free(&ex);
    }
}

/* ---- rope ------------------------------------------------------------- */

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
                qg_test_rng r = rng_for(11, case_id++);
                const int T = ph ? 6 : 1, hd = heads[hi][0], nh = heads[hi][1], nkv = heads[hi][2];
                qg_optest_fx f =
                    qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64, true);
                const int q =
                    qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, (int64_t)hd * nh, T, 1);
                const int k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2,
                                                   (int64_t)hd * nkv, T, 1);
                const int qn = qg_optest_add_weight(&f, "q_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
                const int kn = qg_optest_add_weight(&f, "k_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
                const int pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_pos = pos;
                const int qo = qg_optest_add_tensor(&f, "q_rope", QG_F32, QG_ROLE_OUTPUT, 2,
                                                    (int64_t)hd * nh, T, 1);
                const int ko = qg_optest_add_tensor(&f, "k_rope", QG_F32, QG_ROLE_OUTPUT, 2,
                                                    (int64_t)hd * nkv, T, 1);
                qg_op_params p = {.eps = 1e-6f, .rope_theta = thetas[th], .head_dim = hd,
                                  .n_head = nh, .n_head_kv = nkv};
                qg_optest_add_node(&f, QG_OP_ROPE, "rope", (int[]){q, k, qn, kn, pos}, 5,
                                   (int[]){qo, ko}, 2, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 2 : 1, T};
                for (int run = 0; run < 2; run++) {
                    const int nt = ntoks[run];
                    char label[128];
                    snprintf(label, sizeof label, "rope hd=%d nh=%d theta=%g n_tok=%d", hd, nh,
                             (double)thetas[th], nt);
                    qg_optest_fill_act(&f, q, nt, &r, -2, 2);
                    qg_optest_fill_act(&f, k, nt, &r, -2, 2);
                    /* positions up to 40000: where an f32 angle would fail */
                    for (int t = 0; t < T; t++)
                        qg_optest_i32(&f, pos)[t] =
                            run == 0 && t == 0 ? 0 : qg_test_rng_int(&r, 40000);
                    qg_optest_step(&f, f.ex, (int[]){q, k, pos}, 3, (int[]){qo, ko}, 2, nt, 0,
                                   label);
                    /* as the CPU: qg_optest_expect_rope on q and k */
                    const qg_optest_rope c = {.q = q,
                                              .k = k,
                                              .qn = qn,
                                              .kn = kn,
                                              .pos = pos,
                                              .qo = qo,
                                              .ko = ko,
                                              .hd = hd,
                                              .nh = nh,
                                              .nkv = nkv,
                                              .C = 40000,
                                              .eps = 1e-6f,
                                              .theta = thetas[th]};
                    qg_optest_check_rope(&f, &c, nt, label);
                }
                qg_optest_fx_free(&f);
            }
    ex_free(&ex);
}

/* Caches after the step as qg_optest_expect_kv_written (rows pos[t] hold
 * this step's k, v rounded once to the cache type, exact bits; every other
 * row as before).  Output against the reference over the caches as
 * written: |o - ref| <= 1e-5 * (1 + qk_abs) * sum_j p_j |v_j| + 1e-6 (f32
 * scores, softmax and weighted sum, as the CPU). */
static void check_attention(qg_optest_fx *f, const qg_optest_attn *c, int nt, const char *label) {
    qg_optest_expect_kv_written(f, c, nt, label);
    qg_optest_expect_attention(f, c, nt, label, 1e-5, 1e-6);
}

static void test_attention(void **state) {
    (void)state;
    NEED_DEVICE();
    /* decode runs on both kernels over F16 caches: the tensor-core one
     * (default) and the f32 SIMT one */
    qg_exec exs[2] = {ex_new(EX_DEFAULT), ex_new(EX_ATTN_SIMT)};
    static const char *const ex_names[2] = {"default", "simt"};
    int case_id = 0;
    /* hd, n_head, n_head_kv: groups of 2, 1, 6 (-> 2 per CTA), 8, 8 x 2 */
    const int heads[][3] = {{32, 4, 2}, {64, 3, 3}, {128, 6, 1}, {128, 8, 1}, {64, 16, 2}};
    const qg_dtype cts[] = {QG_F32, QG_F16};
    for (int hi = 0; hi < 5; hi++)
        for (int ci = 0; ci < 2; ci++)
            for (int ph = 0; ph < 3; ph++)
                for (int xi = 0; xi < (ph == 2 || cts[ci] != QG_F16 ? 1 : 2); xi++) {
                    /* ph 0: decode, short cache; 1: decode, 700 rows (many
                     * splits); 2: prefill, 40 tokens (5 CTAs of 8) */
                    qg_test_rng r = rng_for(12, case_id++);
                    qg_exec ex = exs[xi];
                    const int T = ph == 2 ? 40 : 1, C = ph == 0 ? 48 : ph == 1 ? 700 : 96;
                    const int hd = heads[hi][0], nh = heads[hi][1], nkv = heads[hi][2];
                    const qg_dtype ct = cts[ci];
                    const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
                    qg_optest_fx f =
                        qg_optest_fx_new(ph == 2 ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, C, true);
                    const int q = qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T, 1);
                    const int k =
                        qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                    const int v =
                        qg_optest_add_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                    const int kc =
                        qg_optest_add_tensor(&f, "cache_k", ct, QG_ROLE_KV, 2, Dkv, C, 1);
                    const int vc =
                        qg_optest_add_tensor(&f, "cache_v", ct, QG_ROLE_KV, 2, Dkv, C, 1);
                    const int pos =
                        qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                    f.g->t_pos = pos;
                    const int o =
                        qg_optest_add_tensor(&f, "o", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T, 1);
                    qg_op_params p = {.head_dim = hd, .n_head = nh, .n_head_kv = nkv};
                    qg_optest_add_node(&f, QG_OP_ATTENTION, "attention",
                                       (int[]){q, k, v, kc, vc, pos}, 6, (int[]){o}, 1, &p);
                    cx_compile(&f, &ex);
                    const size_t cb = f.g->tensors[kc].nbytes;
                    void *kc0 = malloc(cb), *vc0 = malloc(cb);
                    assert_true(kc0 && vc0);
                    const int ntoks[2] = {ph == 2 ? 7 : 1, T};
                    for (int run = 0; run < 2; run++) {
                        const int nt = ntoks[run];
                        /* earlier rows: random, in the cache type */
                        qg_optest_fill_cache(ct, kc0, vc0, (size_t)(Dkv * C), &r);
                        memcpy(f.host[kc], kc0, cb);
                        memcpy(f.host[vc], vc0, cb);
                        qg_optest_fill_act(&f, q, nt, &r, -2, 2);
                        qg_optest_fill_act(&f, k, nt, &r, -1, 1);
                        qg_optest_fill_act(&f, v, nt, &r, -1, 1);
                        /* consecutive positions from a random start; the second
                         * decode run of the long cache uses the last rows */
                        int p0 = qg_test_rng_int(&r, C - nt + 1);
                        if (run == 0 && ph == 0)
                            p0 = 0;
                        if (run == 1 && ph == 1)
                            p0 = C - 1;
                        for (int t = 0; t < T; t++)
                            qg_optest_i32(&f, pos)[t] = t < nt ? p0 + t : -1;
                        char label[160];
                        snprintf(label, sizeof label,
                                 "attention hd=%d nh=%d nkv=%d %s C=%d n_tok=%d p0=%d %s", hd, nh,
                                 nkv, qg_dtype_name(ct), C, nt, p0, ex_names[xi]);
                        qg_optest_step(&f, f.ex, (int[]){q, k, v, kc, vc, pos}, 6, (int[]){o}, 1,
                                       nt, p0 + nt, label);
                        qg_optest_download(&f, f.ex, kc);
                        qg_optest_download(&f, f.ex, vc);
                        const qg_optest_attn c = {.q = q,
                                                  .k = k,
                                                  .v = v,
                                                  .kc = kc,
                                                  .vc = vc,
                                                  .pos = pos,
                                                  .o = o,
                                                  .hd = hd,
                                                  .nh = nh,
                                                  .nkv = nkv,
                                                  .C = C,
                                                  .ct = ct,
                                                  .kc0 = kc0,
                                                  .vc0 = vc0};
                        check_attention(&f, &c, nt, label);
                    }
                    free(kc0);
                    free(vc0);
                    qg_optest_fx_free(&f);
                }
    ex_free(&exs[0]);
    ex_free(&exs[1]);
}

/* ---- topk ------------------------------------------------------------- */

static void test_topk(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    int case_id = 0;
    const int XK[][2] = {{8, 1}, {8, 8}, {64, 2}, {128, 8}, {60, 4}, {300, 16}};
    for (int xi = 0; xi < 6; xi++)
        for (int ties = 0; ties < 2; ties++)
            for (int ph = 0; ph < 2; ph++) {
                qg_test_rng r = rng_for(13, case_id++);
                const int T = ph ? 9 : 1, X = XK[xi][0], K = XK[xi][1];
                qg_optest_fx f =
                    qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 16, true);
                const int l = qg_optest_add_tensor(&f, "logits", QG_F32, QG_ROLE_INPUT, 2, X, T, 1);
                const int ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, T, 1);
                const int wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, T, 1);
                qg_op_params p = {.n_expert = X, .n_expert_used = K};
                qg_optest_add_node(&f, QG_OP_TOPK, "topk", (int[]){l}, 1, (int[]){ids, wts}, 2, &p);
                cx_compile(&f, &ex);
                const int ntoks[2] = {ph ? 4 : 1, T};
                for (int run = 0; run < 2; run++) {
                    const int nt = ntoks[run];
                    char label[128];
                    snprintf(label, sizeof label, "topk X=%d K=%d ties=%d n_tok=%d", X, K, ties,
                             nt);
                    qg_optest_fill_act(&f, l, nt, &r, -6, 6);
                    if (ties)
                        for (int i = 0; i < X * nt; i++)
                            qg_optest_f32(&f, l)[i] = (float)qg_test_rng_int(&r, 4);
                    qg_optest_step(&f, f.ex, (int[]){l}, 1, (int[]){ids, wts}, 2, nt, 0, label);
                    qg_optest_expect_topk(label, qg_optest_f32(&f, l), qg_optest_i32(&f, ids),
                                          qg_optest_f32(&f, wts), X, K, nt, ties);
                }
                qg_optest_fx_free(&f);
            }
    ex_free(&ex);
}

/* ---- sparse experts -------------------------------------------------- */

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
        /* the last: decode only, F = 2048 (down rows of eight
         * super-blocks) */
        const int XK[][2] = {{6, 2}, {4, 3}, {16, 8}, {4, 3}};
        for (size_t ti = 0; ti < QG_ARRAY_LEN(MOE_TYPES); ti++)
            for (int xi = 0; xi < 4; xi++)
                for (int ph = kind; ph < (xi == 3 ? 1 : 2); ph++) {
                    qg_test_rng r = rng_for(14 + kind, case_id++);
                    const int T = ph ? 40 : 1, X = XK[xi][0], K = XK[xi][1];
                    const int64_t E = 256, F = xi == 3 ? 2048 : 256;
                    const qg_dtype gt = MOE_TYPES[ti][0], ut = MOE_TYPES[ti][1],
                                   dt = MOE_TYPES[ti][2];
                    qg_optest_fx f =
                        qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64, true);
                    const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
                    const int gw = qg_optest_add_weight(&f, "gate_exps", gt, 3, E, F, X, &r, 1.0f);
                    const int uw = qg_optest_add_weight(&f, "up_exps", ut, 3, E, F, X, &r, 1.0f);
                    const int dw = qg_optest_add_weight(&f, "down_exps", dt, 3, F, E, X, &r, 1.0f);
                    const int ids =
                        qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_INPUT, 2, K, T, 1);
                    const int wts =
                        qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_INPUT, 2, K, T, 1);
                    const int h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 3, F, K, T);
                    const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, E, T, 1);
                    qg_op_params p = {.n_expert = X, .n_expert_used = K};
                    qg_optest_add_node(&f, QG_OP_EXPERT_SWIGLU, "expert_swiglu",
                                       (int[]){x, gw, uw, ids}, 4, (int[]){h}, 1, &p);
                    qg_optest_add_node(&f, QG_OP_AGGREGATE, "aggregate", (int[]){h, dw, ids, wts},
                                       4, (int[]){y}, 1, &p);
                    cx_compile(&f, &ex);
                    const int ntoks[2] = {ph ? 5 : 1, T};
                    for (int run = 0; run < 2; run++) {
                        const int nt = ntoks[run];
                        char label[160];
                        snprintf(label, sizeof label, "experts %s/%s/%s X=%d K=%d n_tok=%d%s",
                                 qg_dtype_name(gt), qg_dtype_name(ut), qg_dtype_name(dt), X, K, nt,
                                 kind ? " f32" : "");
                        qg_optest_fill_act(&f, x, nt, &r, -0.3f, 0.3f);
                        memset(f.host[ids], QG_OPTEST_POISON, f.g->tensors[ids].nbytes);
                        qg_optest_make_ids(qg_optest_i32(&f, ids), X, K, nt, &r, true);
                        qg_optest_fill_wts(&f, wts, K, nt, &r);
                        qg_optest_step(&f, f.ex, (int[]){x, ids, wts}, 3, (int[]){h, y}, 2, nt, 0,
                                       label);
                        const bool f16h = !kind && ph && (gt != QG_F32 || ut != QG_F32);
                        const bool f16y = !kind && ph && dt != QG_F32;
                        const qg_optest_moe c = {.x = x,
                                                 .gate = gw,
                                                 .up = uw,
                                                 .down = dw,
                                                 .ids = ids,
                                                 .wts = wts,
                                                 .h = h,
                                                 .y = y,
                                                 .E = E,
                                                 .F = F,
                                                 .X = X,
                                                 .K = K};
                        qg_optest_expect_expert_swiglu(&f, &c, nt, label, f16h ? 1e-3 : 1e-5,
                                                       f16h ? 2e-5 : 1e-6);
                        qg_optest_expect_aggregate(&f, &c, nt, label, f16y ? 1e-3 : 1e-5,
                                                   f16y ? 2e-5 : 1e-6);
                    }
                    qg_optest_fx_free(&f);
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
            qg_test_rng r = rng_for(16, case_id++);
            const int T = ph ? 40 : 1, X = ph ? 5 : 8, K = ph ? 2 : 3;
            /* decode: E = 1024, so F32 router rows take the register path
             * (k_router_topk: rows of a multiple of 1024) */
            const int64_t E = ph ? 256 : 1024, F = 256;
            const qg_dtype rt = rts[ti % 2], gt = MOE_TYPES[ti][0], ut = MOE_TYPES[ti][1],
                           dt = MOE_TYPES[ti][2];
            qg_optest_fx f = qg_optest_fx_new(ph ? QG_PHASE_PREFILL : QG_PHASE_DECODE, T, 64, true);
            const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, T, 1);
            const int gi = qg_optest_add_weight(&f, "gate_inp", rt, 2, E, X, 1, &r, 1.0f);
            const int gw = qg_optest_add_weight(&f, "gate_exps", gt, 3, E, F, X, &r, 1.0f);
            const int uw = qg_optest_add_weight(&f, "up_exps", ut, 3, E, F, X, &r, 1.0f);
            const int dw = qg_optest_add_weight(&f, "down_exps", dt, 3, F, E, X, &r, 1.0f);
            const int lg = qg_optest_add_tensor(&f, "logits", QG_F32, QG_ROLE_OUTPUT, 2, X, T, 1);
            const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, E, T, 1);
            const int ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, T, 1);
            const int wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, T, 1);
            qg_op_params p = {.n_expert = X, .n_expert_used = K};
            qg_optest_add_node(&f, QG_OP_ROUTER, "router", (int[]){x, gi}, 2, (int[]){lg}, 1, &p);
            qg_optest_add_node(&f, QG_OP_MOE_FUSED, "moe", (int[]){x, gi, gw, uw, dw}, 5,
                     (int[]){y, ids, wts}, 3, &p);
            cx_compile(&f, &ex);
            const int ntoks[2] = {ph ? 7 : 1, T};
            for (int run = 0; run < 2; run++) {
                const int nt = ntoks[run];
                char label[160];
                snprintf(label, sizeof label, "moe_fused %s/%s/%s/%s n_tok=%d", qg_dtype_name(rt),
                         qg_dtype_name(gt), qg_dtype_name(ut), qg_dtype_name(dt), nt);
                qg_optest_fill_act(&f, x, nt, &r, -0.3f, 0.3f);
                qg_optest_step(&f, f.ex, (int[]){x}, 1, (int[]){lg, y, ids, wts}, 4, nt, 0, label);
                const bool f16r = ph && rt != QG_F32;
                check_product(label, "logits", rt, f.host[gi], E, X, qg_optest_f32(&f, x), nt,
                              qg_optest_f32(&f, lg), f16r);
                qg_optest_expect_topk(label, qg_optest_f32(&f, lg), qg_optest_i32(&f, ids),
                                      qg_optest_f32(&f, wts), X, K, nt, false);
                /* the fused node's own routing and y (its tensors are the
                 * "fused" ones of qg_optest_moe) */
                const qg_optest_moe c = {.x = x, .gate_inp = gi, .gate = gw, .up = uw, .down = dw,
                                         .logits = lg, .y2 = y, .ids2 = ids, .wts2 = wts, .E = E,
                                         .F = F, .X = X, .K = K};
                const bool f16 = ph;
                qg_optest_expect_moe_y(&f, &c, nt, label, f16 ? 1e-3 : 1e-5, f16 ? 2e-5 : 1e-6);
            }
            qg_optest_fx_free(&f);
        }
    ex_free(&ex);
}

/* ---- executor-level folds --------------------------------------------- */

/* A decode chain with every fold the executor makes (E = 2048, the 30B's
 * input length; lm_head's last tile is partial):
 *   x -> rmsnorm -> moe_fused -> add(x, .) = r          (pre_norm, post_add)
 *   r -> matmul(W2, r) -> add(r, .) = s                 (post_add)
 *   s -> rmsnorm -> qkv -> q, k, v                      (pre_norm)
 *   s -> rmsnorm -> lm_head -> logits                   (pre_norm)
 * run on the default executor, on one made with QG_CUDA_FUSE=0, on one
 * made with QG_CUDA_RGU=0 (the router + top-k as their own kernel, not
 * folded into the gate/up launch behind a grid barrier; the down kernel
 * then reads the ids after its launch wait) and on one made with
 * QG_CUDA_STAGED=15 (weights staged in shared memory, op_matvec_i8s.cu,
 * the down kernel reading the ids before the gate/up kernel ends, instead
 * of held in registers, op_matvec_i8.cu) and on one made with
 * QG_CUDA_RPART=1 (no matmul feeds the MoE's norm here, so no router
 * partials: the option must change nothing; test_router_partials has the
 * pattern): every output bit-identical
 * (the folded kernels compute the same f32 values in the same order), and
 * the logits near the float64 reference of the chain (|l - ref| <= 1e-4 *
 * sum|w h| + 1e-5: four f32 stages).  Case 3 has the 30B's shapes where
 * they decide the staged kernels' layout (F = 768, K = 8: three gate/up
 * tiles a block; q of 4096 rows: three qkv tiles a block; down rows of
 * 630 bytes copied as whole tiles). */
static void test_fold(void **state) {
    (void)state;
    NEED_DEVICE();
    enum { NEX = 5 };
    static const char *const ex_names[NEX] = {"fused", "unfused", "router kernel", "staged",
                                              "router partials"};
    qg_exec exs[NEX] = {ex_new(EX_DEFAULT), ex_new(EX_NOFUSE), ex_new(EX_NORGU),
                        ex_new(EX_STAGED), ex_new(EX_RPART)};
    for (int c = 0; c < 4; c++) {
        void *res[NEX][6] = {{0}};
        size_t res_n[6] = {0};
        for (int e = 0; e < NEX; e++) {
            qg_test_rng r = rng_for(17, c); /* same weights and inputs on every executor */
            /* E = 2048: the folded router takes its register path */
            const bool big = c == 3;
            const int64_t E = 2048, F = big ? 768 : 256, Dq = big ? 4096 : 128;
            const int64_t Dkv = big ? 512 : 64, V = 300;
            const int X = big ? 16 : 8, K = big ? 8 : 2;
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_DECODE, 1, 16, true);
            const qg_dtype wt = c == 0 || big ? QG_Q4_K : c == 1 ? QG_Q8_0 : QG_F16;
            const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, 1, 1);
            const int n1 = qg_optest_add_weight(&f, "n1", QG_F32, 1, E, 1, 1, &r, 2.0f);
            const int n2 = qg_optest_add_weight(&f, "n2", QG_F32, 1, E, 1, 1, &r, 2.0f);
            const int n3 = qg_optest_add_weight(&f, "n3", QG_F32, 1, E, 1, 1, &r, 2.0f);
            const int gi = qg_optest_add_weight(&f, "gate_inp", QG_F32, 2, E, X, 1, &r, 1.0f);
            const int gw = qg_optest_add_weight(&f, "gate_exps", wt, 3, E, F, X, &r, 1.0f);
            const int uw = qg_optest_add_weight(&f, "up_exps", wt, 3, E, F, X, &r, 1.0f);
            const int dw = qg_optest_add_weight(&f, "down_exps", QG_Q6_K, 3, F, E, X, &r, 1.0f);
            const int w2 = qg_optest_add_weight(&f, "w2", wt, 2, E, E, 1, &r, 0.1f);
            const int wq = qg_optest_add_weight(&f, "wq", wt, 2, E, Dq, 1, &r, 1.0f);
            const int wk = qg_optest_add_weight(&f, "wk", QG_Q6_K, 2, E, Dkv, 1, &r, 1.0f);
            const int wv = qg_optest_add_weight(&f, "wv", wt, 2, E, Dkv, 1, &r, 1.0f);
            const int wo = qg_optest_add_weight(&f, "out", wt, 2, E, V, 1, &r, 1.0f);
            const int h1 = qg_optest_add_tensor(&f, "h1", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int ym = qg_optest_add_tensor(&f, "ym", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, 1, 1);
            const int wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, 1, 1);
            const int rr = qg_optest_add_tensor(&f, "r", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int pj = qg_optest_add_tensor(&f, "proj", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int s = qg_optest_add_tensor(&f, "s", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int h2 = qg_optest_add_tensor(&f, "h2", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int h3 = qg_optest_add_tensor(&f, "h3", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int q = qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_OUTPUT, 2, Dq, 1, 1);
            const int k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, 1, 1);
            const int v = qg_optest_add_tensor(&f, "v", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, 1, 1);
            const int lg = qg_optest_add_tensor(&f, "logits", QG_F32, QG_ROLE_OUTPUT, 2, V, 1, 1);
            qg_op_params p = {.eps = 1e-6f, .n_expert = X, .n_expert_used = K, .head_dim = 64,
                              .n_head = (int)(Dq / 64), .n_head_kv = (int)(Dkv / 64),
                              .only_last = true};
            qg_optest_add_node(&f, QG_OP_RMSNORM, "n1", (int[]){x, n1}, 2, (int[]){h1}, 1, &p);
            qg_optest_add_node(&f, QG_OP_MOE_FUSED, "moe", (int[]){h1, gi, gw, uw, dw}, 5,
                               (int[]){ym, ids, wts}, 3, &p);
            qg_optest_add_node(&f, QG_OP_ADD, "res1", (int[]){x, ym}, 2, (int[]){rr}, 1, &p);
            qg_optest_add_node(&f, QG_OP_MATMUL, "mm", (int[]){w2, rr}, 2, (int[]){pj}, 1, &p);
            qg_optest_add_node(&f, QG_OP_ADD, "res2", (int[]){rr, pj}, 2, (int[]){s}, 1, &p);
            qg_optest_add_node(&f, QG_OP_RMSNORM, "n2", (int[]){s, n2}, 2, (int[]){h2}, 1, &p);
            qg_optest_add_node(&f, QG_OP_QKV, "qkv", (int[]){h2, wq, wk, wv}, 4, (int[]){q, k, v},
                               3, &p);
            qg_optest_add_node(&f, QG_OP_RMSNORM, "n3", (int[]){s, n3}, 2, (int[]){h3}, 1, &p);
            qg_optest_add_node(&f, QG_OP_LM_HEAD, "lm_head", (int[]){h3, wo}, 2, (int[]){lg}, 1,
                               &p);
            cx_compile(&f, &exs[e]);
            char label[96];
            snprintf(label, sizeof label, "fold %s %s", qg_dtype_name(wt), ex_names[e]);
            qg_optest_fill_act(&f, x, 1, &r, -1, 1);
            const int outs[6] = {ids, wts, q, k, v, lg};
            qg_optest_step(&f, f.ex, (int[]){x}, 1, outs, 6, 1, 0, label);
            for (int i = 0; i < 6; i++) {
                res_n[i] = f.g->tensors[outs[i]].nbytes;
                res[e][i] = malloc(res_n[i]);
                assert_non_null(res[e][i]);
                memcpy(res[e][i], f.host[outs[i]], res_n[i]);
            }
            for (int i = 0; e > 0 && i < 6; i++)
                if (memcmp(res[0][i], res[e][i], res_n[i]) != 0)
                    fail_msg("%s: output %s differs from the default executor's", label,
                             f.g->tensors[outs[i]].name);
            if (e == 1) {
                /* reference of the chain up to the logits, in double from
                 * the kernels' own routing */
                double *hd = qg_optest_dalloc(E), *yd = qg_optest_dalloc(E),
                       *t = qg_optest_dalloc(E);
                float *hf = malloc(sizeof(float) * (size_t)E),
                      *rf = malloc(sizeof(float) * (size_t)E);
                assert_true(hf && rf);
                qg_ref_rmsnorm(qg_optest_f32(&f, x), qg_optest_f32(&f, n1), E, 1, 1e-6, hd);
                for (int i = 0; i < E; i++) hf[i] = (float)hd[i];
                double *eh = qg_optest_dalloc(F * K);
                qg_ref_expert_swiglu(wt, f.host[gw], wt, f.host[uw], E, F, X, hf,
                                     qg_optest_i32(&f, ids), K, 1, eh, NULL);
                float *ehf = malloc(sizeof(float) * (size_t)(F * K));
                assert_non_null(ehf);
                for (int i = 0; i < F * K; i++) ehf[i] = (float)eh[i];
                qg_ref_aggregate(ehf, QG_Q6_K, f.host[dw], F, E, X, qg_optest_i32(&f, ids),
                                 qg_optest_f32(&f, wts), K, 1, yd, NULL);
                for (int i = 0; i < E; i++) rf[i] = (float)(qg_optest_f32(&f, x)[i] + yd[i]);
                qg_ref_matmul(wt, f.host[w2], E, E, rf, 1, t, NULL);
                for (int i = 0; i < E; i++) rf[i] = (float)(rf[i] + t[i]);
                qg_ref_rmsnorm(rf, qg_optest_f32(&f, n3), E, 1, 1e-6, hd);
                for (int i = 0; i < E; i++) hf[i] = (float)hd[i];
                double *lr = qg_optest_dalloc(V), *la = qg_optest_dalloc(V);
                qg_ref_matmul(wt, f.host[wo], E, V, hf, 1, lr, la);
                qg_optest_expect_close(label, "logits", qg_optest_f32(&f, lg), lr, la, V, 1e-4,
                                       1e-5);
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
            qg_optest_fx_free(&f);
        }
        for (int e = 0; e < NEX; e++)
            for (int i = 0; i < 6; i++) free(res[e][i]);
    }
    for (int e = 0; e < NEX; e++) ex_free(&exs[e]);
}

/* ---- router partials --------------------------------------------------- */

/* cx_compile with file descriptor 2 captured: returns what was written to
 * it (malloc'd; echoed to stderr too). */
static char *compile_logged(qg_optest_fx *f, const qg_exec *ex) {
    fflush(stderr);
    FILE *tf = tmpfile();
    assert_non_null(tf);
    const int saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tf), 2) >= 0);
    cx_compile(f, ex);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    const off_t n = lseek(fileno(tf), 0, SEEK_END);
    char *buf = malloc((size_t)(n > 0 ? n : 0) + 1);
    assert_non_null(buf);
    ssize_t got = 0;
    if (n > 0 && lseek(fileno(tf), 0, SEEK_SET) == 0) got = read(fileno(tf), buf, (size_t)n);
    buf[got > 0 ? got : 0] = '\0';
    fclose(tf);
    fputs(buf, stderr);
    return buf;
}

/* The decode pattern of a layer's second half, where the attention-output
 * projection writes router partials for the MoE launch right after it
 * (QG_CUDA_RPART=1):
 *   proj = matmul(W_o, a); h = add(x, proj)              (post_add)
 *   hn = rmsnorm(h, nf); moe_fused(hn) = ym, ids, wts    (pre_norm)
 *   out = add(h, ym)
 * run on the default executor (the router folded into the gate/up launch
 * behind a grid barrier) and on one made with QG_CUDA_RPART=1, whose
 * compile log (QG_DEBUG=cuda) must report the pair: the path is taken.
 * The partials' logits are summed in another order than the router's, so
 * the two are not bit-identical; each is checked against the float64
 * reference of the chain from the same inputs: h_ref = x + W_o a (rounded
 * to f32), logits l = router(rmsnorm(h_ref)), tol = 1e-4 * max_e sum_r
 * |W_r[e][r] xn_r| + 1e-5 (four f32 stages: product, add, norm, router):
 *   - K distinct valid ids: the reference's top K where its K-th and
 *     (K+1)-th logits are more than 2 tol apart, else each chosen logit
 *     within 2 tol of the K-th;
 *   - weights within 2 tol + 1e-6 of the reference softmax renormalized
 *     over the chosen ids (|dw_k| <= w_k (|dl_k| + max_j |dl_j|));
 *   - out within 1e-4 * (|h| + sum|W_o a| + sum_k |w_k| sum_f |down h|) +
 *     1e-5 of h_ref + the reference experts over the executor's own
 *     routing.
 * Shapes: E = 2048, X = 128, K = 8 under a 4096-input W_o (the 30B: 128
 * tiles of partials, 129 columns, 512-thread producer blocks); E = 1280
 * (80 tiles: the consumer's last run of 32 tiles is partial), X = 128,
 * under a 1024-input W_o (128-thread producer blocks: a thread takes two
 * columns); E = 256, X = 16 (one partial run; 256-thread producer blocks,
 * Q6_K W_o).  W_o's rows are the MoE's input, a multiple of 256, so its
 * last tile is never partial here.  Case 3 is case 2 with x[37] NaN: h[37]
 * is NaN, and as on the default executor every output is NaN (all logits
 * NaN: no valid pick) with the routing bit-identical to it. */
static void test_router_partials(void **state) {
    (void)state;
    NEED_DEVICE();
    enum { NEX = 2, KMAX = 8 };
    static const char *const ex_names[NEX] = {"barrier router", "router partials"};
    qg_exec exs[NEX] = {ex_new(EX_DEFAULT), ex_new(EX_RPART)};
    static const struct {
        int64_t E, Din;
        int X, K;
        qg_dtype wo;
        bool nan;
    } cs[] = {
        {2048, 4096, 128, 8, QG_Q4_K, false},
        {1280, 1024, 128, 8, QG_Q4_K, false},
        {256, 2048, 16, 4, QG_Q6_K, false},
        {256, 2048, 16, 4, QG_Q6_K, true},
    };
    const int64_t F = 256;
    for (size_t c = 0; c < QG_ARRAY_LEN(cs); c++) {
        const int64_t E = cs[c].E, Din = cs[c].Din;
        const int X = cs[c].X, K = cs[c].K;
        int32_t ids_of[NEX][KMAX];
        float wts_of[NEX][KMAX];
        /* the case's weights, quantized once (case 0's experts take ~35 s
         * of one core) and copied into the second executor's fixture; r
         * then goes on from where the first executor's weights left it */
        const struct {
            const char *name;
            qg_dtype t;
            int nd;
            int64_t e0, e1, e2;
            float scale;
        } ws[6] = {{"attn_output", cs[c].wo, 2, Din, E, 1, 0.05f},
                   {"ffn_norm", QG_F32, 1, E, 1, 1, 2.0f},
                   {"gate_inp", QG_F32, 2, E, X, 1, 0.05f},
                   {"gate_exps", QG_Q4_K, 3, E, F, X, 1.0f},
                   {"up_exps", QG_Q4_K, 3, E, F, X, 1.0f},
                   {"down_exps", QG_Q6_K, 3, F, E, X, 1.0f}};
        void *wbuf[6] = {0};
        qg_test_rng r_after = {0};
        for (int e = 0; e < NEX; e++) {
            const uint64_t t0 = qg_time_ns();
            qg_test_rng r = rng_for(19, (int)c); /* same weights and inputs on both */
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_DECODE, 1, 16, true);
            const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, 1, 1);
            const int a = qg_optest_add_tensor(&f, "a", QG_F32, QG_ROLE_INPUT, 2, Din, 1, 1);
            int wid[6];
            for (int i = 0; i < 6; i++) {
                if (e == 0) {
                    wid[i] = qg_optest_add_weight(&f, ws[i].name, ws[i].t, ws[i].nd, ws[i].e0,
                                                  ws[i].e1, ws[i].e2, &r, ws[i].scale);
                    wbuf[i] = malloc(f.g->tensors[wid[i]].nbytes);
                    assert_non_null(wbuf[i]);
                    memcpy(wbuf[i], f.host[wid[i]], f.g->tensors[wid[i]].nbytes);
                } else {
                    wid[i] = qg_optest_add_tensor(&f, ws[i].name, ws[i].t, QG_ROLE_WEIGHT, ws[i].nd,
                                                  ws[i].e0, ws[i].e1, ws[i].e2);
                    memcpy(f.host[wid[i]], wbuf[i], f.g->tensors[wid[i]].nbytes);
                }
            }
            if (e == 0) r_after = r;
            else r = r_after;
            const int wo = wid[0], nf = wid[1], gi = wid[2], gw = wid[3], uw = wid[4], dw = wid[5];
            const int pj = qg_optest_add_tensor(&f, "proj", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int hn = qg_optest_add_tensor(&f, "hn", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int ym = qg_optest_add_tensor(&f, "ym", QG_F32, QG_ROLE_ACT, 2, E, 1, 1);
            const int ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, 1, 1);
            const int wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, 1, 1);
            const int out = qg_optest_add_tensor(&f, "out", QG_F32, QG_ROLE_OUTPUT, 2, E, 1, 1);
            qg_op_params p = {.eps = 1e-6f, .n_expert = X, .n_expert_used = K};
            qg_optest_add_node(&f, QG_OP_MATMUL, "attn_output", (int[]){wo, a}, 2, (int[]){pj}, 1,
                               &p);
            qg_optest_add_node(&f, QG_OP_ADD, "attn_residual", (int[]){x, pj}, 2, (int[]){h}, 1,
                               &p);
            qg_optest_add_node(&f, QG_OP_RMSNORM, "ffn_norm", (int[]){h, nf}, 2, (int[]){hn}, 1, &p);
            qg_optest_add_node(&f, QG_OP_MOE_FUSED, "moe", (int[]){hn, gi, gw, uw, dw}, 5,
                               (int[]){ym, ids, wts}, 3, &p);
            qg_optest_add_node(&f, QG_OP_ADD, "ffn_residual", (int[]){h, ym}, 2, (int[]){out}, 1,
                               &p);
            char label[128];
            snprintf(label, sizeof label, "router partials E=%lld Din=%lld X=%d K=%d %s%s: %s",
                     (long long)E, (long long)Din, X, K, qg_dtype_name(cs[c].wo),
                     cs[c].nan ? " NaN" : "", ex_names[e]);
            if (e == 1) {
                char *log = compile_logged(&f, &exs[e]);
                const bool taken = strstr(log, "router partials: 1 matmul -> moe_fused pairs");
                free(log);
                if (!taken) fail_msg("%s: the executor did not set up the router partials", label);
            } else {
                cx_compile(&f, &exs[e]);
            }
            qg_optest_fill_act(&f, x, 1, &r, -1, 1);
            qg_optest_fill_act(&f, a, 1, &r, -1, 1);
            if (cs[c].nan) qg_optest_f32(&f, x)[37] = NAN;
            /* progress on stderr (unbuffered): a GPU hang stops after
             * "stepping", a slow host anywhere else */
            fprintf(stderr, "%s: weights and compile %.1f s; stepping\n", label,
                    (double)(qg_time_ns() - t0) / 1e9);
            qg_optest_step(&f, f.ex, (int[]){x, a}, 2, (int[]){ids, wts, out}, 3, 1, 0, label);
            fprintf(stderr, "%s: step done\n", label);
            const int32_t *ki = qg_optest_i32(&f, ids);
            const float *kw = qg_optest_f32(&f, wts), *ko = qg_optest_f32(&f, out);
            memcpy(ids_of[e], ki, sizeof(int32_t) * (size_t)K);
            memcpy(wts_of[e], kw, sizeof(float) * (size_t)K);
            if (cs[c].nan) {
                for (int64_t i = 0; i < E; i++)
                    if (!isnan(ko[i]))
                        fail_msg("%s: out[%lld] = %g, not NaN", label, (long long)i, (double)ko[i]);
                qg_optest_fx_free(&f);
                continue;
            }
            /* the float64 reference of the chain */
            const float *xf = qg_optest_f32(&f, x);
            double *pr = qg_optest_dalloc(E), *pa = qg_optest_dalloc(E);
            double *xn = qg_optest_dalloc(E), *l = qg_optest_dalloc(X), *la = qg_optest_dalloc(X);
            float *hf = malloc(sizeof(float) * (size_t)E), *xnf = malloc(sizeof(float) * (size_t)E);
            assert_true(hf && xnf);
            qg_ref_matmul(cs[c].wo, f.host[wo], Din, E, qg_optest_f32(&f, a), 1, pr, pa);
            for (int64_t i = 0; i < E; i++) hf[i] = (float)(xf[i] + pr[i]);
            qg_ref_rmsnorm(hf, qg_optest_f32(&f, nf), E, 1, 1e-6, xn);
            for (int64_t i = 0; i < E; i++) xnf[i] = (float)xn[i];
            qg_ref_matmul(QG_F32, f.host[gi], E, X, xnf, 1, l, la);
            double tol = 0;
            for (int i = 0; i < X; i++) tol = fmax(tol, 1e-4 * la[i] + 1e-5);
            /* the reference's order: logits descending, ties to the lower id */
            int order[256];
            for (int i = 0; i < X; i++) order[i] = i;
            for (int i = 1; i < X; i++)
                for (int j = i; j > 0 && l[order[j]] > l[order[j - 1]]; j--) {
                    const int t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
            const bool clear = K == X || l[order[K - 1]] - l[order[K]] > 2 * tol;
            double mx = -INFINITY, sum = 0;
            for (int k = 0; k < K; k++) {
                if (ki[k] < 0 || ki[k] >= X) fail_msg("%s: ids[%d] = %d", label, k, ki[k]);
                for (int j = 0; j < k; j++)
                    if (ki[j] == ki[k]) fail_msg("%s: expert %d chosen twice", label, ki[k]);
                bool in_ref = false;
                for (int j = 0; j < K; j++) in_ref |= order[j] == ki[k];
                if (clear ? !in_ref : l[ki[k]] < l[order[K - 1]] - 2 * tol)
                    fail_msg("%s: expert %d (logit %.6g) is not among the reference's top %d "
                             "(K-th %.6g, tolerance %.3g)",
                             label, ki[k], l[ki[k]], K, l[order[K - 1]], 2 * tol);
                mx = fmax(mx, l[ki[k]]);
            }
            for (int k = 0; k < K; k++) sum += exp(l[ki[k]] - mx);
            for (int k = 0; k < K; k++) {
                const double wr = exp(l[ki[k]] - mx) / sum;
                if (!(fabs(kw[k] - wr) <= 2 * tol + 1e-6))
                    fail_msg("%s: wts[%d] = %.9g, reference %.9g (tolerance %.3g)", label, k,
                             (double)kw[k], wr, 2 * tol + 1e-6);
            }
            /* out: h_ref + the reference experts over this executor's routing */
            double *eh = qg_optest_dalloc(F * K), *yd = qg_optest_dalloc(E), *ya = qg_optest_dalloc(E);
            float *ehf = malloc(sizeof(float) * (size_t)(F * K));
            assert_non_null(ehf);
            qg_ref_expert_swiglu(QG_Q4_K, f.host[gw], QG_Q4_K, f.host[uw], E, F, X, xnf, ki, K, 1,
                                 eh, NULL);
            for (int64_t i = 0; i < F * K; i++) ehf[i] = (float)eh[i];
            qg_ref_aggregate(ehf, QG_Q6_K, f.host[dw], F, E, X, ki, kw, K, 1, yd, ya);
            for (int64_t i = 0; i < E; i++) {
                yd[i] += hf[i];
                ya[i] += fabs(hf[i]) + pa[i];
            }
            const double worst = qg_optest_expect_close(label, "out", ko, yd, ya, E, 1e-4, 1e-5);
            printf("%s: ids %s the reference's top %d, out at %.3f of its tolerance\n", label,
                   clear ? "are" : "are near", K, worst);
            free(pr);
            free(pa);
            free(xn);
            free(l);
            free(la);
            free(hf);
            free(xnf);
            free(eh);
            free(yd);
            free(ya);
            free(ehf);
            qg_optest_fx_free(&f);
        }
        for (int i = 0; i < 6; i++) free(wbuf[i]);
        if (cs[c].nan &&
            (memcmp(ids_of[0], ids_of[1], sizeof(int32_t) * (size_t)K) != 0 ||
             memcmp(wts_of[0], wts_of[1], sizeof(float) * (size_t)K) != 0))
            fail_msg("case %zu (NaN): the routing differs between the executors", c);
    }
    for (int e = 0; e < NEX; e++) ex_free(&exs[e]);
}

/* ---- supports --------------------------------------------------------- */

static void test_supports(void **state) {
    (void)state;
    NEED_DEVICE();
    qg_exec ex = ex_new(EX_DEFAULT);
    qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, 4, 16, true);
    qg_test_rng r = rng_for(18, 0);
    const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int x48 = qg_optest_add_tensor(&f, "x48", QG_F32, QG_ROLE_ACT, 2, 48, 4, 1);
    const int w32 = qg_optest_add_weight(&f, "w32", QG_F32, 1, 64, 1, 1, &r, 1.0f);
    const int w16 = qg_optest_add_weight(&f, "w16", QG_F16, 1, 64, 1, 1, &r, 1.0f);
    const int wq = qg_optest_add_weight(&f, "wq", QG_Q8_0, 2, 64, 8, 1, &r, 1.0f);
    const int w48 = qg_optest_add_weight(&f, "w48", QG_F16, 2, 48, 8, 1, &r, 1.0f);
    const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int kc8 = qg_optest_add_tensor(&f, "kc8", QG_Q8_0, QG_ROLE_KV, 2, 64, 16, 1);
    const int kc = qg_optest_add_tensor(&f, "kc", QG_F16, QG_ROLE_KV, 2, 64, 16, 1);
    const int pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 4, 1, 1);
    qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 4, .eps = 1e-6f};
    qg_op_params p64 = {.head_dim = 64, .n_head = 1, .n_head_kv = 1};
    const int ok =
        qg_optest_add_node(&f, QG_OP_RMSNORM, "ok", (int[]){x, w32}, 2, (int[]){y}, 1, &p);
    const int bad_w =
        qg_optest_add_node(&f, QG_OP_RMSNORM, "bad_w", (int[]){x, w16}, 2, (int[]){y}, 1, &p);
    const int mm = qg_optest_add_node(&f, QG_OP_MATMUL, "mm", (int[]){wq, x}, 2, (int[]){y}, 1, &p);
    const int mm48 =
        qg_optest_add_node(&f, QG_OP_MATMUL, "mm48", (int[]){w48, x48}, 2, (int[]){y}, 1, &p);
    const int att8 = qg_optest_add_node(&f, QG_OP_ATTENTION, "att8",
                                        (int[]){x, x, x, kc8, kc8, pos}, 6, (int[]){y}, 1, &p64);
    const int att16 = qg_optest_add_node(&f, QG_OP_ATTENTION, "att16",
                                         (int[]){x, x, x, kc, kc, pos}, 6, (int[]){y}, 1, &p);
    const int att64 = qg_optest_add_node(&f, QG_OP_ATTENTION, "att64",
                                         (int[]){x, x, x, kc, kc, pos}, 6, (int[]){y}, 1, &p64);
    const qg_exec_i *i = ex.i;
    assert_true(i->supports(ex.self, f.g, &f.g->nodes[ok]));
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[bad_w]));
    assert_true(i->supports(ex.self, f.g, &f.g->nodes[mm]));
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[mm48])); /* rows not a multiple of 32 */
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[att8]));  /* q8_0 cache */
    assert_false(i->supports(ex.self, f.g, &f.g->nodes[att16])); /* head_dim 16 */
    assert_true(i->supports(ex.self, f.g, &f.g->nodes[att64]));
    assert_true(i->mem_available(ex.self) > 0);
    qg_optest_fx_free(&f);
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
        cmocka_unit_test(test_lm_head_wide),
        cmocka_unit_test(test_matmul_nonfinite),
        cmocka_unit_test(test_qkv),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_expert_swiglu_aggregate),
        cmocka_unit_test(test_moe_fused),
        cmocka_unit_test(test_fold),
        cmocka_unit_test(test_router_partials),
    };
    /* a device session's narrowing: QG_TEST_FILTER runs the tests whose
     * names match, QG_TEST_SKIP skips them (cmocka patterns) */
    if (getenv("QG_TEST_FILTER")) cmocka_set_test_filter(getenv("QG_TEST_FILTER"));
    if (getenv("QG_TEST_SKIP")) cmocka_set_skip_filter(getenv("QG_TEST_SKIP"));
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
