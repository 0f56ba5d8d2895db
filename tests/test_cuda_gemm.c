/*
 * test_cuda_gemm.c - the CUDA prefill products over Q4_K / Q6_K weights
 * (ops/cuda/op_gemm_i8.cu: integer tensor cores, activations as 24-bit
 * three-plane images) against float64, through the CUDA executor.
 *
 * Each case builds a small prefill graph by hand (n_tok_max > 1, so the
 * products take the tiled path), schedules it onto the CUDA executor alone,
 * compiles it and runs it twice with fresh random inputs and a different
 * live token count each time (the second run replays the capture).  Before
 * each run every output is poisoned on the device (0xFF bytes: NaN); after
 * it every live output must be finite (written) and within the tolerance
 * below of the float64 reference (weights dequantized by
 * qg_dequant_row_f64, sums in double), and the columns past the live tokens
 * must still hold the poison.
 *
 * Cases: dense matmul (Q4_K, Q6_K; rows not a multiple of the 64-row tile;
 * live tokens 1, 3, 17, 64, 512), matmul with a residual add folded into it,
 * qkv as one grid over its three matrices (Q4_K q / k and a Q6_K v; and
 * Q6_K / Q4_K / Q6_K with 630-byte Q6_K rows, so blocks start at every even
 * offset mod 16, and row counts that end inside a tile), dense swiglu (same
 * and mixed gate / up types), and expert_swiglu + aggregate grouped by
 * expert (experts with 0, 1 and many assignments, more than one 32-column
 * tile; same and mixed gate / up types; Q6_K and Q4_K down).  Every case
 * runs under each integer kernel variant (qg_cuda_gemm_i8.cuh: the
 * product's default, then 0, 2 and 3, chosen through QG_CUDA_I8G_VARIANT and
 * QG_CUDA_I8G_VARIANT_GROUPED).
 *
 * Tolerance of one product y = sum_i w_i x_i (qg_cuda_gemm_i8.cuh): the
 * image of x is within 1.5 s_b of x per element, s_b = M_b / 8257536 with
 * M_b the largest |x| of the element's 256-element super-block; the rest
 * is f32 rounding of partial sums:
 *   |y - ref| <= 1e-5 * sum|w x| + 2e-7 * sum_i |w_i| M_b(i) + 1e-6.
 * silu(g) * u: 1.1 tol_g (|u| + tol_u) + |silu(g)| tol_u + 1e-6 (silu's
 * slope is below 1.1); the aggregate's sum_k wts_k y_k: sum_k |wts_k|
 * tol_k + 1e-6 (1 + sum_k |wts_k y_k|).
 *
 * Fixtures (random valid weight blocks, poisoned outputs, the executor
 * step and its check of the bytes past the live tokens) are the shared
 * harness of tests/ref/qg_optest.h.
 *
 * Without CUDA, or without a device, every test is skipped with a message.
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
#include "ops/quant/qg_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool g_have_device;

/* The integer kernel variants each case runs under (NULL: the product's
 * default). */
static const char *const k_variants[] = {NULL, "0", "2", "3"};
#define N_VARIANTS ((int)(sizeof k_variants / sizeof k_variants[0]))

/* Each test's random stream per variant: qg_optest_rng_for(test, variant,
 * SALT). */
#define SALT 0x5eed1234u

/* Select variant v for the products compiled from now on. */
static void set_variant(int v) {
    const char *s = k_variants[v];
    if (s) {
        setenv("QG_CUDA_I8G_VARIANT", s, 1);
        setenv("QG_CUDA_I8G_VARIANT_GROUPED", s, 1);
    } else {
        unsetenv("QG_CUDA_I8G_VARIANT");
        unsetenv("QG_CUDA_I8G_VARIANT_GROUPED");
    }
    printf("integer kernel variant: %s\n", s ? s : "default");
}

/* ---- graphs on the CUDA executor (tests/ref/qg_optest.h) ------------------ */

/* A prefill graph of n_tok_max tokens and a fresh CUDA executor *ex made
 * with QG_CUDA_F32_PREFILL and QG_CUDA_I8 unset (the integer products, not
 * forced onto another path); compile the graph with
 * qg_optest_compile_alone, free both with fx_free. */
static qg_optest_fx fx_new(qg_exec *ex, int n_tok_max) {
    const char *const env[] = {"QG_CUDA_F32_PREFILL", NULL, "QG_CUDA_I8", NULL, NULL};
    *ex = qg_optest_exec_new(qg_exec_cuda_new, "qg_exec_cuda_new", env);
    return qg_optest_fx_new(QG_PHASE_PREFILL, n_tok_max, 4096, true);
}

static void fx_free(qg_optest_fx *f, qg_exec *ex) {
    qg_optest_fx_free(f);
    ex->i->free(ex->self);
}

/* A tensor of shape (a, b, c) (3 dims when c > 1); weights get random
 * valid blocks now. */
static int fx_tensor(qg_optest_fx *f, qg_test_rng *r, const char *name, qg_dtype t, qg_role role,
                     int64_t a, int64_t b, int64_t c) {
    const int nd = c > 1 ? 3 : 2;
    if (role == QG_ROLE_WEIGHT) return qg_optest_add_blocks(f, name, t, nd, a, b, c, r);
    return qg_optest_add_tensor(f, name, t, role, nd, a, b, c);
}

/* ---- references ----------------------------------------------------------- */

/* One product: value, sum|w x| and the image term sum_i |w_i| M_b(i). */
typedef struct prod {
    double v, mag, img;
} prod;

static prod dot_ref(const double *w, const float *x, int64_t n) {
    prod p = {0, 0, 0};
    for (int64_t b = 0; b < n; b += 256) {
        const int64_t be = b + 256 < n ? b + 256 : n; /* rows of 96 (Q8_0) end inside a block */
        double mb = 0;
        for (int64_t i = b; i < be; i++) mb = fmax(mb, fabs((double)x[i]));
        for (int64_t i = b; i < be; i++) {
            p.v += w[i] * x[i];
            p.mag += fabs(w[i] * x[i]);
            p.img += fabs(w[i]) * mb;
        }
    }
    return p;
}

/* |y - ref| bound of one product (header comment). */
static double tol_of(prod p) { return 1e-5 * p.mag + 2e-7 * p.img + 1e-6; }

static double silu(double v) { return v / (1.0 + exp(-v)); }

/* Expect y (finite) within tol of ref. */
#define EXPECT(y, ref, tol, ...)                                                              \
    do {                                                                                      \
        const double y_ = (y), r_ = (ref), t_ = (tol);                                        \
        if (!isfinite(y_) || !(fabs(y_ - r_) <= t_)) {                                        \
            printf(__VA_ARGS__);                                                              \
            printf(": %.9g, reference %.9g, tolerance %.3g\n", y_, r_, t_);                   \
            fail();                                                                           \
        }                                                                                     \
    } while (0)

/* Dequantized rows of weight id: (ne1 * ne2, ne0) doubles. */
static double *deq(const qg_optest_fx *f, int id) {
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t rows = t->ne[1] * t->ne[2], n = t->ne[0];
    const size_t rb = qg_dtype_row_bytes(t->type, n);
    double *d = malloc(sizeof(double) * (size_t)(rows * n));
    assert_non_null(d);
    for (int64_t r = 0; r < rows; r++)
        qg_dequant_row_f64(t->type, (const uint8_t *)f->host[id] + (size_t)r * rb, d + r * n, n);
    return d;
}

/* ---- dense matmul (optionally + residual) ----------------------------------- */

static void matmul_case(qg_test_rng *rg, qg_dtype t, int n, int m, int T, const int *live, int n_live,
                        bool add) {
    qg_exec ex;
    qg_optest_fx f = fx_new(&ex, T);
    const int w = fx_tensor(&f, rg, "w", t, QG_ROLE_WEIGHT, n, m, 1);
    const int x = fx_tensor(&f, rg, "x", QG_F32, QG_ROLE_INPUT, n, T, 1);
    const int y = fx_tensor(&f, rg, "y", QG_F32, add ? QG_ROLE_ACT : QG_ROLE_OUTPUT, m, T, 1);
    const int in[2] = {w, x};
    qg_op_params p = {0};
    qg_graph_add_node(f.g, QG_OP_MATMUL, "matmul", 0, in, 2, &y, 1, &p);
    int out = y, r = -1;
    if (add) {
        r = fx_tensor(&f, rg, "r", QG_F32, QG_ROLE_INPUT, m, T, 1);
        out = fx_tensor(&f, rg, "out", QG_F32, QG_ROLE_OUTPUT, m, T, 1);
        const int ain[2] = {r, y};
        qg_graph_add_node(f.g, QG_OP_ADD, "add", 0, ain, 2, &out, 1, &p);
    }
    qg_optest_compile_alone(&f, &ex);
    double *wd = deq(&f, w);
    for (int k = 0; k < n_live; k++) {
        const int nt = live[k];
        char label[96];
        snprintf(label, sizeof label, "matmul %s n %d m %d live %d%s", qg_dtype_name(t), n, m, nt,
                 add ? " +add" : "");
        qg_optest_fill_act(&f, x, nt, rg, -1, 1);
        if (add) qg_optest_fill_act(&f, r, nt, rg, -1, 1);
        /* out poisoned; after the step, bytes past the live tokens untouched */
        qg_optest_step(&f, &ex, (int[]){x, r}, add ? 2 : 1, &out, 1, nt, nt, label);
        const float *xv = f.host[x], *yv = f.host[out], *rv = add ? f.host[r] : NULL;
        for (int c = 0; c < nt; c++)
            for (int i = 0; i < m; i++) {
                const prod pr = dot_ref(wd + (size_t)i * n, xv + (size_t)c * n, n);
                const double ref = pr.v + (add ? rv[(size_t)c * m + i] : 0.0);
                /* tol_of(pr) plus the f32 rounding of the add */
                EXPECT(yv[(size_t)c * m + i], ref, tol_of(pr) + 6e-8 * fabs(ref),
                       "matmul %s n %d m %d live %d%s: y[%d, %d]", qg_dtype_name(t), n, m, nt,
                       add ? " +add" : "", i, c);
            }
    }
    free(wd);
    fx_free(&f, &ex);
}

static void test_matmul(void **state) {
    (void)state;
    qg_optest_need_exec(g_have_device, "CUDA");
    const int live512[] = {512, 1, 3, 17, 64};
    const int live64[] = {64, 17, 3, 1};
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        qg_test_rng r = qg_optest_rng_for(1, v, SALT);
        matmul_case(&r, QG_Q4_K, 768, 200, 512, live512, 5, false); /* 200 rows: partial tile */
        matmul_case(&r, QG_Q6_K, 512, 100, 64, live64, 4, false);
        matmul_case(&r, QG_Q6_K, 768, 130, 64, live64, 2, false); /* 630-byte rows */
        matmul_case(&r, QG_Q4_K, 256, 16, 64, live64, 2, false);
        matmul_case(&r, QG_Q6_K, 1024, 40, 64, live64 + 1, 2, true); /* residual epilogue */
        matmul_case(&r, QG_Q4_K, 512, 72, 64, live64, 2, true);
    }
    set_variant(0);
}

/* ---- qkv ---------------------------------------------------------------------- */

/* qkv node over x (n, T): three matrices of types ts, rows ms, in one grid;
 * runs with T and then live1 tokens. */
static void qkv_case(qg_test_rng *rg, int n, const int ms[3], const qg_dtype ts[3], int T, int live1) {
    qg_exec ex;
    qg_optest_fx f = fx_new(&ex, T);
    const int x = fx_tensor(&f, rg, "x", QG_F32, QG_ROLE_INPUT, n, T, 1);
    int w[3], y[3], in[4] = {x, 0, 0, 0};
    for (int i = 0; i < 3; i++) w[i] = in[1 + i] = fx_tensor(&f, rg, "w", ts[i], QG_ROLE_WEIGHT, n, ms[i], 1);
    for (int i = 0; i < 3; i++) y[i] = fx_tensor(&f, rg, "y", QG_F32, QG_ROLE_OUTPUT, ms[i], T, 1);
    qg_op_params p = {0};
    qg_graph_add_node(f.g, QG_OP_QKV, "qkv", 0, in, 4, y, 3, &p);
    qg_optest_compile_alone(&f, &ex);
    const int live[2] = {T, live1};
    for (int k = 0; k < 2; k++) {
        const int nt = live[k];
        char label[64];
        snprintf(label, sizeof label, "qkv n %d live %d", n, nt);
        qg_optest_fill_act(&f, x, nt, rg, -1, 1);
        /* y poisoned; after the step, bytes past the live tokens untouched */
        qg_optest_step(&f, &ex, &x, 1, y, 3, nt, nt, label);
        for (int j = 0; j < 3; j++) {
            double *wd = deq(&f, w[j]);
            const float *xv = f.host[x], *yv = f.host[y[j]];
            for (int c = 0; c < nt; c++)
                for (int i = 0; i < ms[j]; i++) {
                    const prod pr = dot_ref(wd + (size_t)i * n, xv + (size_t)c * n, n);
                    EXPECT(yv[(size_t)c * ms[j] + i], pr.v, tol_of(pr), "qkv n %d output %d (%s) live %d: [%d, %d]",
                           n, j, qg_dtype_name(ts[j]), nt, i, c);
                }
            free(wd);
        }
    }
    fx_free(&f, &ex);
}

static void test_qkv(void **state) {
    (void)state;
    qg_optest_need_exec(g_have_device, "CUDA");
    const int ms1[3] = {128, 32, 32}, ms2[3] = {200, 40, 72};
    const qg_dtype ts1[3] = {QG_Q4_K, QG_Q4_K, QG_Q6_K}, ts2[3] = {QG_Q6_K, QG_Q4_K, QG_Q6_K};
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        qg_test_rng r = qg_optest_rng_for(2, v, SALT);
        qkv_case(&r, 512, ms1, ts1, 64, 17);
        qkv_case(&r, 768, ms2, ts2, 64, 33); /* 630-byte Q6_K rows, partial tiles */
    }
    set_variant(0);
}

/* ---- gate / up ------------------------------------------------------------------ */

/* tol of silu(g) * u (header comment) */
static double tol_glu(prod g, prod u) {
    const double tg = tol_of(g), tu = tol_of(u);
    return 1.1 * tg * (fabs(u.v) + tu) + fabs(silu(g.v)) * tu + 1e-6;
}

static void swiglu_case(qg_test_rng *rg, qg_dtype tg, qg_dtype tu, int n, int F, int T, int nt) {
    qg_exec ex;
    qg_optest_fx f = fx_new(&ex, T);
    const int x = fx_tensor(&f, rg, "x", QG_F32, QG_ROLE_INPUT, n, T, 1);
    const int g = fx_tensor(&f, rg, "gate", tg, QG_ROLE_WEIGHT, n, F, 1);
    const int u = fx_tensor(&f, rg, "up", tu, QG_ROLE_WEIGHT, n, F, 1);
    const int h = fx_tensor(&f, rg, "h", QG_F32, QG_ROLE_OUTPUT, F, T, 1);
    const int in[3] = {x, g, u};
    qg_op_params p = {0};
    qg_graph_add_node(f.g, QG_OP_SWIGLU, "swiglu", 0, in, 3, &h, 1, &p);
    qg_optest_compile_alone(&f, &ex);
    double *gd = deq(&f, g), *ud = deq(&f, u);
    char label[64];
    snprintf(label, sizeof label, "swiglu %s/%s live %d", qg_dtype_name(tg), qg_dtype_name(tu), nt);
    qg_optest_fill_act(&f, x, nt, rg, -1, 1);
    /* h poisoned; after the step, bytes past the live tokens untouched */
    qg_optest_step(&f, &ex, &x, 1, &h, 1, nt, nt, label);
    const float *xv = f.host[x], *hv = f.host[h];
    for (int c = 0; c < nt; c++)
        for (int i = 0; i < F; i++) {
            const prod pg = dot_ref(gd + (size_t)i * n, xv + (size_t)c * n, n);
            const prod pu = dot_ref(ud + (size_t)i * n, xv + (size_t)c * n, n);
            EXPECT(hv[(size_t)c * F + i], silu(pg.v) * pu.v, tol_glu(pg, pu), "swiglu %s/%s live %d: h[%d, %d]",
                   qg_dtype_name(tg), qg_dtype_name(tu), nt, i, c);
        }
    free(gd);
    free(ud);
    fx_free(&f, &ex);
}

static void test_swiglu(void **state) {
    (void)state;
    qg_optest_need_exec(g_have_device, "CUDA");
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        qg_test_rng r = qg_optest_rng_for(3, v, SALT);
        swiglu_case(&r, QG_Q4_K, QG_Q4_K, 512, 200, 64, 64); /* dual kernel */
        swiglu_case(&r, QG_Q6_K, QG_Q6_K, 256, 40, 64, 3);
        swiglu_case(&r, QG_Q4_K, QG_Q6_K, 512, 72, 64, 17); /* mixed: two products */
        swiglu_case(&r, QG_Q4_K, QG_Q4_K, 256, 48, 64, 1);
    }
    set_variant(0);
}

/* ---- experts: expert_swiglu + aggregate, grouped ---------------------------------- */

#define EX_X 8
#define EX_K 2

/* Expert choice of token t (slot k): token 0 takes experts 1 and 2 (expert
 * 1 has exactly one assignment), the others 7 (more than one 32-column tile)
 * and one of 2..6; expert 0 has none. */
static int expert_of(int t, int k) {
    if (t == 0) return k ? 2 : 1;
    return k ? 2 + (t * 3) % 5 : 7;
}

static void experts_case(qg_test_rng *rg, qg_dtype tg, qg_dtype tu, qg_dtype td, int E, int F, int T,
                         int nt) {
    qg_exec ex;
    qg_optest_fx f = fx_new(&ex, T);
    const int x = fx_tensor(&f, rg, "x", QG_F32, QG_ROLE_INPUT, E, T, 1);
    const int g = fx_tensor(&f, rg, "gate", tg, QG_ROLE_WEIGHT, E, F, EX_X);
    const int u = fx_tensor(&f, rg, "up", tu, QG_ROLE_WEIGHT, E, F, EX_X);
    const int d = fx_tensor(&f, rg, "down", td, QG_ROLE_WEIGHT, F, E, EX_X);
    const int ids = fx_tensor(&f, rg, "ids", QG_I32, QG_ROLE_INPUT, EX_K, T, 1);
    const int wts = fx_tensor(&f, rg, "wts", QG_F32, QG_ROLE_INPUT, EX_K, T, 1);
    const int h = fx_tensor(&f, rg, "h", QG_F32, QG_ROLE_OUTPUT, F, EX_K, T);
    /* the aggregate reads its own h input, so its products are checked
     * independently of gate / up */
    const int hin = fx_tensor(&f, rg, "h_in", QG_F32, QG_ROLE_INPUT, F, EX_K, T);
    const int y = fx_tensor(&f, rg, "y", QG_F32, QG_ROLE_OUTPUT, E, T, 1);
    qg_op_params p = {0};
    p.n_expert = EX_X;
    p.n_expert_used = EX_K;
    const int gin[4] = {x, g, u, ids}, ain[4] = {hin, d, ids, wts};
    qg_graph_add_node(f.g, QG_OP_EXPERT_SWIGLU, "experts", 0, gin, 4, &h, 1, &p);
    qg_graph_add_node(f.g, QG_OP_AGGREGATE, "aggregate", 0, ain, 4, &y, 1, &p);
    qg_optest_compile_alone(&f, &ex);
    double *gd = deq(&f, g), *ud = deq(&f, u), *dd = deq(&f, d);
    const int live[2] = {nt, nt > 5 ? nt - 5 : 1};
    for (int r = 0; r < 2; r++) {
        const int n = live[r];
        char label[64];
        snprintf(label, sizeof label, "experts %s/%s/%s live %d", qg_dtype_name(tg), qg_dtype_name(tu),
                 qg_dtype_name(td), n);
        qg_optest_fill_act(&f, x, n, rg, -1, 1);
        qg_optest_fill_act(&f, hin, n, rg, -1, 1);
        int32_t *iv = f.host[ids];
        float *wv = f.host[wts];
        for (int t = 0; t < T; t++)
            for (int k = 0; k < EX_K; k++) {
                iv[t * EX_K + k] = t < n ? expert_of(t, k) : -1;
                wv[t * EX_K + k] = t < n ? 0.25f + 0.5f * (float)qg_test_rng_int(rg, 1000) / 1000.0f : NAN;
            }
        const int outs[2] = {h, y};
        /* h, y poisoned; after the step, bytes past the live tokens untouched */
        qg_optest_step(&f, &ex, (int[]){x, hin, ids, wts}, 4, outs, 2, n, n, label);
        const float *xv = f.host[x], *hv = f.host[h], *hi = f.host[hin], *yv = f.host[y];
        for (int t = 0; t < n; t++) {
            for (int k = 0; k < EX_K; k++) {
                const int e = expert_of(t, k);
                for (int i = 0; i < F; i++) {
                    const size_t row = (size_t)e * F + i;
                    const prod pg = dot_ref(gd + row * E, xv + (size_t)t * E, E);
                    const prod pu = dot_ref(ud + row * E, xv + (size_t)t * E, E);
                    EXPECT(hv[((size_t)t * EX_K + k) * F + i], silu(pg.v) * pu.v, tol_glu(pg, pu),
                           "expert_swiglu %s/%s live %d: token %d slot %d expert %d row %d",
                           qg_dtype_name(tg), qg_dtype_name(tu), n, t, k, e, i);
                }
            }
            for (int i = 0; i < E; i++) {
                double ref = 0, tol = 1e-6, mag = 0;
                for (int k = 0; k < EX_K; k++) {
                    const int e = expert_of(t, k);
                    const prod pd = dot_ref(dd + ((size_t)e * E + i) * F, hi + ((size_t)t * EX_K + k) * F, F);
                    ref += wv[t * EX_K + k] * pd.v;
                    tol += fabs(wv[t * EX_K + k]) * tol_of(pd);
                    mag += fabs(wv[t * EX_K + k] * pd.v);
                }
                EXPECT(yv[(size_t)t * E + i], ref, tol + 1e-6 * mag, "aggregate %s live %d: y[%d, %d]",
                       qg_dtype_name(td), n, i, t);
            }
        }
    }
    free(gd);
    free(ud);
    free(dd);
    fx_free(&f, &ex);
}

static void test_experts(void **state) {
    (void)state;
    qg_optest_need_exec(g_have_device, "CUDA");
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        qg_test_rng r = qg_optest_rng_for(4, v, SALT);
        experts_case(&r, QG_Q4_K, QG_Q4_K, QG_Q6_K, 512, 256, 64, 64); /* expert 7: 63 assignments */
        /* mixed gate / up, 96 rows (not a multiple of the 64-row tile); the
         * down matrix then has 96-element rows, which no K-quant allows: Q8_0 */
        experts_case(&r, QG_Q4_K, QG_Q6_K, QG_Q8_0, 256, 96, 64, 40);
        experts_case(&r, QG_Q6_K, QG_Q6_K, QG_Q6_K, 256, 256, 16, 3);
        /* 768-element down rows: 630-byte Q6_K rows (blocks at every even
         * offset mod 16) */
        experts_case(&r, QG_Q4_K, QG_Q4_K, QG_Q6_K, 256, 768, 64, 64);
    }
    set_variant(0);
}

/* ---- main ------------------------------------------------------------------------ */

static int setup(void **state) {
    (void)state;
    g_have_device = qg_optest_have_exec(qg_exec_cuda_new, "CUDA");
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_qkv),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_experts),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

#else /* !QG_HAVE_CUDA */

int main(void) {
    return qg_optest_run_skipped("test_no_cuda", "no CUDA device: skipped (built without the CUDA executor)");
}

#endif
