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
 * Without CUDA, or without a device, every test is skipped with a message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>

#ifdef QG_HAVE_CUDA

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

/* The integer kernel variants each case runs under (NULL: the product's
 * default). */
static const char *const k_variants[] = {NULL, "0", "2", "3"};
#define N_VARIANTS ((int)(sizeof k_variants / sizeof k_variants[0]))

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

/* ---- random data -------------------------------------------------------- */

static uint64_t g_rng = 0x5eed1234u;
static uint64_t rnd(void) {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* uniform in [-1, 1] */
static float rndf(void) { return (float)((double)(rnd() >> 11) * 0x1p-52 - 1.0); }

/* Random valid blocks of type t (Q4_K / Q6_K) for rows x n: random payload
 * bits, positive f16 super-scales of 1e-3..2e-3 (d) and 5e-3..1e-2 (dmin). */
static void fill_blocks(qg_dtype t, uint8_t *p, int64_t rows, int64_t n) {
    /* random payload bits; the scales (Q4_K d, dmin; Q6_K d; Q8_0 d) set to
     * small positive values so no block is Inf or NaN */
    const size_t rb = qg_dtype_row_bytes(t, n), nb = rb * (size_t)rows;
    for (size_t i = 0; i < nb; i++) p[i] = (uint8_t)rnd();
    const size_t bs = qg_dtype_get((uint32_t)t)->type_size;
    if (t == QG_Q8_0) { /* 32-element blocks, the f16 scale first */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < n / 32; b++) {
                const uint16_t d = qg_f32_to_f16(1e-2f * (1.0f + (float)(rnd() % 1000) / 1000.0f));
                memcpy(p + (size_t)r * rb + (size_t)b * bs, &d, 2);
            }
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < n / 256; b++) {
            uint8_t *blk = p + (size_t)r * rb + (size_t)b * bs;
            const uint16_t d = qg_f32_to_f16(1e-3f * (1.0f + (float)(rnd() % 1000) / 1000.0f));
            const uint16_t m = qg_f32_to_f16(5e-3f * (1.0f + (float)(rnd() % 1000) / 1000.0f));
            if (t == QG_Q4_K) {
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &m, 2);
            } else {
                memcpy(blk + 208, &d, 2);
            }
        }
}

/* ---- graphs on the CUDA executor ---------------------------------------- */

#define MAX_T 16

typedef struct fx {
    qg_graph *g;
    qg_exec ex;
    void *host[MAX_T]; /* host data of every tensor (weights: uploaded) */
    int n;
} fx;

static void fx_init(fx *f, int n_tok_max) {
    memset(f, 0, sizeof *f);
    qg_exec_opts o = {.n_threads = 1, .device = 0};
    qg_error err = {0};
    unsetenv("QG_CUDA_F32_PREFILL");
    unsetenv("QG_CUDA_I8");
    if (qg_exec_cuda_new(&o, &f->ex, &err)) fail_msg("qg_exec_cuda_new: %s", err.msg);
    f->g = qg_graph_new(QG_PHASE_PREFILL, n_tok_max, 4096);
    const int64_t sn = QG_STEP_N;
    f->g->t_step = qg_graph_add_tensor(f->g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &sn, NULL);
    f->host[f->g->t_step] = calloc(QG_STEP_N, sizeof(int32_t));
    f->n = f->g->t_step + 1;
}

/* Add a tensor of shape (a, b, c); weights get random blocks now. */
static int fx_tensor(fx *f, const char *name, qg_dtype t, qg_role role, int64_t a, int64_t b,
                     int64_t c) {
    const int64_t ne[3] = {a, b, c};
    const int nd = c > 1 ? 3 : 2;
    const int id = qg_graph_add_tensor(f->g, name, t, role, 0, nd, ne, NULL);
    assert_true(id < MAX_T);
    const size_t nb = f->g->tensors[id].nbytes;
    f->host[id] = calloc(nb ? nb : 1, 1);
    assert_non_null(f->host[id]);
    if (role == QG_ROLE_WEIGHT) {
        fill_blocks(t, f->host[id], b * c, a);
        f->g->tensors[id].data = f->host[id];
    }
    f->n = id + 1;
    return id;
}

static void fx_compile(fx *f) {
    qg_error err = {0};
    qg_place_opts po = {1, &f->ex, 0, 0};
    if (qg_graph_schedule(f->g, false, &po, &err)) fail_msg("schedule: %s", err.msg);
    for (int i = 0; i < f->g->n_nodes; i++) assert_int_equal(f->g->nodes[i].exec, 0);
    assert_int_equal(f->g->n_parts, 1);
    if (f->ex.i->kv_alloc(f->ex.self, f->g->kv_bytes[0], &err) ||
        f->ex.i->compile(f->ex.self, f->g, 0, &err))
        fail_msg("compile: %s", err.msg);
}

static void fx_free(fx *f) {
    f->ex.i->release(f->ex.self, f->g);
    f->ex.i->free(f->ex.self);
    for (int i = 0; i < f->n; i++) free(f->host[i]);
    qg_graph_free(f->g);
}

static void fx_set(fx *f, int id) {
    qg_error err = {0};
    if (f->ex.i->tensor_set(f->ex.self, f->g, id, f->host[id], 0, f->g->tensors[id].nbytes, &err))
        fail_msg("set %s: %s", f->g->tensors[id].name, err.msg);
}

/* Poison the outputs, upload the inputs (host[] already filled), run with
 * n_tok live tokens, download the outputs. */
static void fx_run(fx *f, const int *outs, int n_outs, int n_tok) {
    qg_error err = {0};
    for (int k = 0; k < n_outs; k++) {
        const qg_tensor *t = &f->g->tensors[outs[k]];
        void *p = malloc(t->nbytes);
        memset(p, 0xFF, t->nbytes);
        if (f->ex.i->tensor_set(f->ex.self, f->g, outs[k], p, 0, t->nbytes, &err))
            fail_msg("poison %s: %s", t->name, err.msg);
        free(p);
    }
    int32_t *step = f->host[f->g->t_step];
    step[QG_STEP_N_TOK] = n_tok;
    step[QG_STEP_N_KV] = n_tok;
    for (int i = 0; i < f->n; i++)
        if (f->g->tensors[i].role == QG_ROLE_INPUT && f->g->tensors[i].exec == 0) fx_set(f, i);
    if (f->ex.i->run(f->ex.self, f->g, 0, step, NULL, &err) || f->ex.i->sync(f->ex.self, &err))
        fail_msg("run: %s", err.msg);
    for (int k = 0; k < n_outs; k++) {
        const qg_tensor *t = &f->g->tensors[outs[k]];
        if (f->ex.i->tensor_get(f->ex.self, f->g, outs[k], f->host[outs[k]], 0, t->nbytes, &err))
            fail_msg("get %s: %s", t->name, err.msg);
    }
}

/* Fill input id with uniform [-1, 1] values (live and dead columns: dead
 * columns hold NaN so that reading them shows). */
static void fx_fill_x(fx *f, int id, int64_t live_floats) {
    float *p = f->host[id];
    const size_t n = f->g->tensors[id].nbytes / sizeof(float);
    for (size_t i = 0; i < n; i++) p[i] = (int64_t)i < live_floats ? rndf() : NAN;
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

/* Bytes past the live columns still hold the poison. */
static void expect_poison(const fx *f, int id, size_t live_bytes) {
    const qg_tensor *t = &f->g->tensors[id];
    const uint8_t *p = f->host[id];
    for (size_t i = live_bytes; i < t->nbytes; i++)
        if (p[i] != 0xFF) fail_msg("%s: byte %zu past the live tokens was written", t->name, i);
}

/* Dequantized rows of weight id: (ne1 * ne2, ne0) doubles. */
static double *deq(const fx *f, int id) {
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

static void matmul_case(qg_dtype t, int n, int m, int T, const int *live, int n_live, bool add) {
    fx f;
    fx_init(&f, T);
    const int w = fx_tensor(&f, "w", t, QG_ROLE_WEIGHT, n, m, 1);
    const int x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, n, T, 1);
    const int y = fx_tensor(&f, "y", QG_F32, add ? QG_ROLE_ACT : QG_ROLE_OUTPUT, m, T, 1);
    const int in[2] = {w, x};
    qg_op_params p = {0};
    qg_graph_add_node(f.g, QG_OP_MATMUL, "matmul", 0, in, 2, &y, 1, &p);
    int out = y, r = -1;
    if (add) {
        r = fx_tensor(&f, "r", QG_F32, QG_ROLE_INPUT, m, T, 1);
        out = fx_tensor(&f, "out", QG_F32, QG_ROLE_OUTPUT, m, T, 1);
        const int ain[2] = {r, y};
        qg_graph_add_node(f.g, QG_OP_ADD, "add", 0, ain, 2, &out, 1, &p);
    }
    fx_compile(&f);
    double *wd = deq(&f, w);
    for (int k = 0; k < n_live; k++) {
        const int nt = live[k];
        fx_fill_x(&f, x, (int64_t)n * nt);
        if (add) fx_fill_x(&f, r, (int64_t)m * nt);
        fx_run(&f, &out, 1, nt);
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
        expect_poison(&f, out, sizeof(float) * (size_t)m * nt);
    }
    free(wd);
    fx_free(&f);
}

static void test_matmul(void **state) {
    (void)state;
    NEED_DEVICE();
    const int live512[] = {512, 1, 3, 17, 64};
    const int live64[] = {64, 17, 3, 1};
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        matmul_case(QG_Q4_K, 768, 200, 512, live512, 5, false); /* 200 rows: partial tile */
        matmul_case(QG_Q6_K, 512, 100, 64, live64, 4, false);
        matmul_case(QG_Q6_K, 768, 130, 64, live64, 2, false); /* 630-byte rows */
        matmul_case(QG_Q4_K, 256, 16, 64, live64, 2, false);
        matmul_case(QG_Q6_K, 1024, 40, 64, live64 + 1, 2, true); /* residual epilogue */
        matmul_case(QG_Q4_K, 512, 72, 64, live64, 2, true);
    }
    set_variant(0);
}

/* ---- qkv ---------------------------------------------------------------------- */

/* qkv node over x (n, T): three matrices of types ts, rows ms, in one grid;
 * runs with T and then live1 tokens. */
static void qkv_case(int n, const int ms[3], const qg_dtype ts[3], int T, int live1) {
    fx f;
    fx_init(&f, T);
    const int x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, n, T, 1);
    int w[3], y[3], in[4] = {x, 0, 0, 0};
    for (int i = 0; i < 3; i++) w[i] = in[1 + i] = fx_tensor(&f, "w", ts[i], QG_ROLE_WEIGHT, n, ms[i], 1);
    for (int i = 0; i < 3; i++) y[i] = fx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, ms[i], T, 1);
    qg_op_params p = {0};
    qg_graph_add_node(f.g, QG_OP_QKV, "qkv", 0, in, 4, y, 3, &p);
    fx_compile(&f);
    const int live[2] = {T, live1};
    for (int k = 0; k < 2; k++) {
        const int nt = live[k];
        fx_fill_x(&f, x, (int64_t)n * nt);
        fx_run(&f, y, 3, nt);
        for (int j = 0; j < 3; j++) {
            double *wd = deq(&f, w[j]);
            const float *xv = f.host[x], *yv = f.host[y[j]];
            for (int c = 0; c < nt; c++)
                for (int i = 0; i < ms[j]; i++) {
                    const prod pr = dot_ref(wd + (size_t)i * n, xv + (size_t)c * n, n);
                    EXPECT(yv[(size_t)c * ms[j] + i], pr.v, tol_of(pr), "qkv n %d output %d (%s) live %d: [%d, %d]",
                           n, j, qg_dtype_name(ts[j]), nt, i, c);
                }
            expect_poison(&f, y[j], sizeof(float) * (size_t)ms[j] * nt);
            free(wd);
        }
    }
    fx_free(&f);
}

static void test_qkv(void **state) {
    (void)state;
    NEED_DEVICE();
    const int ms1[3] = {128, 32, 32}, ms2[3] = {200, 40, 72};
    const qg_dtype ts1[3] = {QG_Q4_K, QG_Q4_K, QG_Q6_K}, ts2[3] = {QG_Q6_K, QG_Q4_K, QG_Q6_K};
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        qkv_case(512, ms1, ts1, 64, 17);
        qkv_case(768, ms2, ts2, 64, 33); /* 630-byte Q6_K rows, partial tiles */
    }
    set_variant(0);
}

/* ---- gate / up ------------------------------------------------------------------ */

/* tol of silu(g) * u (header comment) */
static double tol_glu(prod g, prod u) {
    const double tg = tol_of(g), tu = tol_of(u);
    return 1.1 * tg * (fabs(u.v) + tu) + fabs(silu(g.v)) * tu + 1e-6;
}

static void swiglu_case(qg_dtype tg, qg_dtype tu, int n, int F, int T, int nt) {
    fx f;
    fx_init(&f, T);
    const int x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, n, T, 1);
    const int g = fx_tensor(&f, "gate", tg, QG_ROLE_WEIGHT, n, F, 1);
    const int u = fx_tensor(&f, "up", tu, QG_ROLE_WEIGHT, n, F, 1);
    const int h = fx_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, F, T, 1);
    const int in[3] = {x, g, u};
    qg_op_params p = {0};
    qg_graph_add_node(f.g, QG_OP_SWIGLU, "swiglu", 0, in, 3, &h, 1, &p);
    fx_compile(&f);
    double *gd = deq(&f, g), *ud = deq(&f, u);
    fx_fill_x(&f, x, (int64_t)n * nt);
    fx_run(&f, &h, 1, nt);
    const float *xv = f.host[x], *hv = f.host[h];
    for (int c = 0; c < nt; c++)
        for (int i = 0; i < F; i++) {
            const prod pg = dot_ref(gd + (size_t)i * n, xv + (size_t)c * n, n);
            const prod pu = dot_ref(ud + (size_t)i * n, xv + (size_t)c * n, n);
            EXPECT(hv[(size_t)c * F + i], silu(pg.v) * pu.v, tol_glu(pg, pu), "swiglu %s/%s live %d: h[%d, %d]",
                   qg_dtype_name(tg), qg_dtype_name(tu), nt, i, c);
        }
    expect_poison(&f, h, sizeof(float) * (size_t)F * nt);
    free(gd);
    free(ud);
    fx_free(&f);
}

static void test_swiglu(void **state) {
    (void)state;
    NEED_DEVICE();
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        swiglu_case(QG_Q4_K, QG_Q4_K, 512, 200, 64, 64); /* dual kernel */
        swiglu_case(QG_Q6_K, QG_Q6_K, 256, 40, 64, 3);
        swiglu_case(QG_Q4_K, QG_Q6_K, 512, 72, 64, 17); /* mixed: two products */
        swiglu_case(QG_Q4_K, QG_Q4_K, 256, 48, 64, 1);
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

static void experts_case(qg_dtype tg, qg_dtype tu, qg_dtype td, int E, int F, int T, int nt) {
    fx f;
    fx_init(&f, T);
    const int x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, E, T, 1);
    const int g = fx_tensor(&f, "gate", tg, QG_ROLE_WEIGHT, E, F, EX_X);
    const int u = fx_tensor(&f, "up", tu, QG_ROLE_WEIGHT, E, F, EX_X);
    const int d = fx_tensor(&f, "down", td, QG_ROLE_WEIGHT, F, E, EX_X);
    const int ids = fx_tensor(&f, "ids", QG_I32, QG_ROLE_INPUT, EX_K, T, 1);
    const int wts = fx_tensor(&f, "wts", QG_F32, QG_ROLE_INPUT, EX_K, T, 1);
    const int h = fx_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, F, EX_K, T);
    /* the aggregate reads its own h input, so its products are checked
     * independently of gate / up */
    const int hin = fx_tensor(&f, "h_in", QG_F32, QG_ROLE_INPUT, F, EX_K, T);
    const int y = fx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, E, T, 1);
    qg_op_params p = {0};
    p.n_expert = EX_X;
    p.n_expert_used = EX_K;
    const int gin[4] = {x, g, u, ids}, ain[4] = {hin, d, ids, wts};
    qg_graph_add_node(f.g, QG_OP_EXPERT_SWIGLU, "experts", 0, gin, 4, &h, 1, &p);
    qg_graph_add_node(f.g, QG_OP_AGGREGATE, "aggregate", 0, ain, 4, &y, 1, &p);
    fx_compile(&f);
    double *gd = deq(&f, g), *ud = deq(&f, u), *dd = deq(&f, d);
    const int live[2] = {nt, nt > 5 ? nt - 5 : 1};
    for (int r = 0; r < 2; r++) {
        const int n = live[r];
        fx_fill_x(&f, x, (int64_t)E * n);
        fx_fill_x(&f, hin, (int64_t)F * EX_K * n);
        int32_t *iv = f.host[ids];
        float *wv = f.host[wts];
        for (int t = 0; t < T; t++)
            for (int k = 0; k < EX_K; k++) {
                iv[t * EX_K + k] = t < n ? expert_of(t, k) : -1;
                wv[t * EX_K + k] = t < n ? 0.25f + 0.5f * (float)(rnd() % 1000) / 1000.0f : NAN;
            }
        const int outs[2] = {h, y};
        fx_run(&f, outs, 2, n);
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
        expect_poison(&f, h, sizeof(float) * (size_t)F * EX_K * n);
        expect_poison(&f, y, sizeof(float) * (size_t)E * n);
    }
    free(gd);
    free(ud);
    free(dd);
    fx_free(&f);
}

static void test_experts(void **state) {
    (void)state;
    NEED_DEVICE();
    for (int v = 0; v < N_VARIANTS; v++) {
        set_variant(v);
        experts_case(QG_Q4_K, QG_Q4_K, QG_Q6_K, 512, 256, 64, 64); /* expert 7: 63 assignments */
        /* mixed gate / up, 96 rows (not a multiple of the 64-row tile); the
         * down matrix then has 96-element rows, which no K-quant allows: Q8_0 */
        experts_case(QG_Q4_K, QG_Q6_K, QG_Q8_0, 256, 96, 64, 40);
        experts_case(QG_Q6_K, QG_Q6_K, QG_Q6_K, 256, 256, 16, 3);
        /* 768-element down rows: 630-byte Q6_K rows (blocks at every even
         * offset mod 16) */
        experts_case(QG_Q4_K, QG_Q4_K, QG_Q6_K, 256, 768, 64, 64);
    }
    set_variant(0);
}

/* ---- main ------------------------------------------------------------------------ */

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
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_qkv),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_experts),
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
