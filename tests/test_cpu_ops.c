/*
 * test_cpu_ops.c - every CPU kernel against the float64 references of
 * tests/ref/qg_ref_ops.h.
 *
 * Each case builds a small qg_graph by hand (one node, or the MoE chain),
 * allocates a host buffer per tensor (the addr[] table), fills the inputs
 * with fresh random values (seeded per case; dead token columns of inputs
 * are NaN so a kernel that reads them shows it), poisons every output with
 * 0xFF bytes (NaN / -1), and runs the node through a thread pool.  For the
 * scalar and the best SIMD quant kernels and nth = 1, 2, 3 it checks:
 *   - every live output element is finite and within the op's tolerance
 *     of the reference (stated at each check),
 *   - output bytes past the live tokens still hold the poison,
 *   - results are bit-identical for every nth (the kernels' splits are
 *     designed so; see ops/cpu/qg_cpu_internal.h).
 * Per-thread and shared scratch are poisoned (NaN / 0xFF) and allocated at
 * exactly the size qg_cpu_op_scratch asks for (ASan catches overruns).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "qg_ref_ops.h"

#include "exec/cpu/qg_threadpool.h"
#include "graph/qg_graph.h"
#include "ops/cpu/qg_cpu_internal.h" /* the AVX2 exp helper, tested alone */
#include "ops/cpu/qg_cpu_ops.h"
#include "ops/quant/qg_quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    rng r = {(uint64_t)test * 0x100000001b3ull + (uint64_t)case_id * 7919u + 12345u};
    rng_u64(&r);
    return r;
}

/* ---- fixtures: a graph plus host buffers ----------------------------- */

#define MAXT 24
#define POISON 0xFF

typedef struct fx {
    qg_graph *g;
    void *addr[MAXT]; /* host buffer of every tensor */
} fx;

static fx fx_make(qg_phase ph, int T, int C) {
    fx f;
    memset(&f, 0, sizeof f);
    f.g = qg_graph_new(ph, T, C);
    assert_non_null(f.g);
    return f;
}

static void fx_free(fx *f) {
    for (int i = 0; i < f->g->n_tensors; i++) free(f->addr[i]);
    qg_graph_free(f->g);
}

/* Add a tensor of nd dims (e0, e1, e2) with its own buffer (poisoned). */
static int fx_tensor(fx *f, const char *name, qg_dtype type, qg_role role, int nd,
                     int64_t e0, int64_t e1, int64_t e2) {
    const int64_t ne[3] = {e0, e1, e2};
    const int id = qg_graph_add_tensor(f->g, name, type, role, 0, nd, ne, NULL);
    assert_true(id < MAXT);
    const size_t nb = f->g->tensors[id].nbytes;
    f->addr[id] = malloc(nb ? nb : 1);
    assert_non_null(f->addr[id]);
    memset(f->addr[id], POISON, nb);
    if (role == QG_ROLE_WEIGHT) f->g->tensors[id].data = f->addr[id];
    return id;
}

/* A weight tensor of random values in [-scale, scale], quantized per row
 * (rows of e0 elements). */
static int fx_weight(fx *f, const char *name, qg_dtype type, int nd, int64_t e0,
                     int64_t e1, int64_t e2, rng *r, float scale) {
    const int id = fx_tensor(f, name, type, QG_ROLE_WEIGHT, nd, e0, e1, e2);
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t rb = qg_dtype_row_bytes(type, e0);
    float *src = malloc(sizeof(float) * (size_t)e0);
    assert_non_null(src);
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < e0; j++) src[j] = rng_unif(r, -scale, scale);
        qg_quantize_row(type, src, (char *)f->addr[id] + (size_t)i * rb, e0);
    }
    free(src);
    return id;
}

static float *F32(fx *f, int id) { return f->addr[id]; }
static int32_t *I32(fx *f, int id) { return f->addr[id]; }

/* Floats per token of an activation (all dims but the last). */
static int64_t per_tok(fx *f, int id) {
    const qg_tensor *t = &f->g->tensors[id];
    return qg_tensor_nelem(t) / t->ne[t->n_dims - 1];
}

/* Fill the first n_tok tokens of f32 tensor id uniformly in [lo, hi], the
 * rest with NaN. */
static void fill_act(fx *f, int id, int n_tok, rng *r, float lo, float hi) {
    const int64_t n = per_tok(f, id), T = qg_tensor_nelem(&f->g->tensors[id]) / n;
    float *x = F32(f, id);
    for (int64_t i = 0; i < n * T; i++) x[i] = i < n * n_tok ? rng_unif(r, lo, hi) : NAN;
}

static const qg_dtype ALL_W[] = {QG_F32, QG_F16, QG_BF16, QG_Q8_0,
                                 QG_Q4_0, QG_Q4_K, QG_Q5_K, QG_Q6_K};

/* ---- running a node -------------------------------------------------- */

static void task_run(void *arg, int ith, int nth) { qg_cpu_op_run(arg, ith, nth); }

/* Run node `node` on nth workers with the given quant kernels. */
static void fx_run(fx *f, int node, int n_tok, int nth, const qg_quant_kernels *qk) {
    const qg_node *n = &f->g->nodes[node];
    assert_true(qg_cpu_op_supports(f->g, n));
    size_t pt = 0, sh = 0;
    qg_cpu_op_scratch(f->g, n, nth, &pt, &sh);
    const size_t nf = pt * (size_t)nth;
    float *scr = malloc(sizeof(float) * (nf ? nf : 1));
    void *shared = malloc(sh ? sh : 1);
    assert_true(scr && shared);
    for (size_t i = 0; i < nf; i++) scr[i] = NAN;
    memset(shared, POISON, sh);
    qg_threadpool *tp = qg_threadpool_new(nth);
    assert_non_null(tp);
    qg_cpu_op_args a = {.g = f->g, .n = n, .addr = f->addr, .n_tok = n_tok, .qk = qk,
                        .tp = tp, .scratch = scr, .scratch_floats = pt,
                        .shared = shared, .shared_bytes = sh};
    qg_threadpool_run(tp, task_run, &a);
    qg_threadpool_free(tp);
    free(scr);
    free(shared);
}

/* Live bytes of output tensor id (token dim last; (V,1)-style outputs of a
 * multi-token graph are whole). */
static size_t live_bytes(fx *f, int id, int n_tok) {
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t T = f->g->n_tok_max;
    if (T > 1 && t->ne[t->n_dims - 1] == T) return t->nbytes / (size_t)T * (size_t)n_tok;
    return t->nbytes;
}

typedef struct spec spec;
typedef void (*check_fn)(fx *f, const spec *s, const char *label);

/* One case: node(s) to run, outputs, how to check. */
struct spec {
    fx *f;
    int node;           /* node to run (see also pre_nodes) */
    int n_pre;          /* nodes run before `node`, in order, each time */
    int pre[4];
    int n_tok;
    int n_res;          /* tensors compared bitwise across nth */
    int res[8];
    void (*prepare)(fx *f, const spec *s); /* restore mutable inputs; may be NULL */
    check_fn check;
    void *ctx;
};

/* The driver: both kernel levels, nth 1..3, poison, run, check tails, check
 * values, check bit-identity across nth. */
static void run_spec(const spec *s) {
    qg_quant_kernels lv[2] = {qg_quant_kernels_at(QG_SIMD_SCALAR), qg_quant_kernels_best()};
    const int n_lv = lv[1].level == QG_SIMD_SCALAR ? 1 : 2;
    fx *f = s->f;
    for (int l = 0; l < n_lv; l++) {
        void *first[8] = {0};
        for (int nth = 1; nth <= 3; nth++) {
            char label[160];
            snprintf(label, sizeof label, "%s n_tok=%d nth=%d %s", f->g->nodes[s->node].name,
                     s->n_tok, nth, qg_simd_level_name(lv[l].level));
            if (s->prepare) s->prepare(f, s);
            int nodes[5], nn = 0;
            for (int i = 0; i < s->n_pre; i++) nodes[nn++] = s->pre[i];
            nodes[nn++] = s->node;
            for (int i = 0; i < nn; i++) {
                const qg_node *n = &f->g->nodes[nodes[i]];
                for (int o = 0; o < n->n_out; o++)
                    memset(f->addr[n->out[o]], POISON, f->g->tensors[n->out[o]].nbytes);
            }
            for (int i = 0; i < nn; i++) fx_run(f, nodes[i], s->n_tok, nth, &lv[l]);
            for (int i = 0; i < nn; i++) {
                const qg_node *n = &f->g->nodes[nodes[i]];
                for (int o = 0; o < n->n_out; o++) {
                    const int id = n->out[o];
                    const size_t lb = live_bytes(f, id, s->n_tok), nb = f->g->tensors[id].nbytes;
                    const unsigned char *b = f->addr[id];
                    for (size_t k = lb; k < nb; k++)
                        if (b[k] != POISON)
                            fail_msg("%s: %s byte %zu past the live tokens was written", label,
                                     f->g->tensors[id].name, k);
                }
            }
            s->check(f, s, label);
            for (int r = 0; r < s->n_res; r++) {
                const int id = s->res[r];
                const size_t nb = f->g->tensors[id].nbytes;
                if (nth == 1) {
                    first[r] = malloc(nb);
                    assert_non_null(first[r]);
                    memcpy(first[r], f->addr[id], nb);
                } else if (memcmp(first[r], f->addr[id], nb) != 0) {
                    fail_msg("%s: %s differs from the nth=1 result", label,
                             f->g->tensors[id].name);
                }
            }
        }
        for (int r = 0; r < s->n_res; r++) free(first[r]);
    }
}

/* Every y[i] finite and |y[i] - ref[i]| <= rel * mag[i] + abs_tol (mag NULL:
 * |ref[i]|). */
static void expect_close(const char *label, const char *what, const float *y,
                         const double *ref, const double *mag, int64_t n, double rel,
                         double abs_tol) {
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

static int add_node(fx *f, qg_op op, const char *name, const int *in, int n_in,
                    const int *out, int n_out, const qg_op_params *p) {
    return qg_graph_add_node(f->g, op, name, 0, in, n_in, out, n_out, p);
}

/* ---- embed ------------------------------------------------------------ */

typedef struct embed_ctx {
    int w, tok, x;
    int64_t E;
} embed_ctx;

static void check_embed(fx *f, const spec *s, const char *label) {
    const embed_ctx *c = s->ctx;
    double *ref = dalloc(c->E * s->n_tok);
    qg_ref_embed(f->g->tensors[c->w].type, f->addr[c->w], c->E, I32(f, c->tok), s->n_tok, ref);
    /* tolerance 0: the kernel stores exactly the dequantized f32 values */
    expect_close(label, "x", F32(f, c->x), ref, NULL, c->E * s->n_tok, 0, 0);
    free(ref);
}

static void test_embed(void **state) {
    (void)state;
    int case_id = 0;
    const int64_t Es[] = {256, 768};
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (size_t ei = 0; ei < QG_ARRAY_LEN(Es); ei++) {
            const int T = 5, V = 11;
            const int ntoks[] = {1, 2, T};
            for (int ni = 0; ni < 3; ni++) {
                rng r = rng_for(1, case_id++);
                fx f = fx_make(QG_PHASE_PREFILL, T, 16);
                embed_ctx c = {.E = Es[ei]};
                c.w = fx_weight(&f, "tok_embd", ALL_W[d], 2, c.E, V, 1, &r, 1.0f);
                c.tok = fx_tensor(&f, "tokens", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_tokens = c.tok;
                c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
                for (int t = 0; t < T; t++) I32(&f, c.tok)[t] = t < ntoks[ni] ? rng_int(&r, V) : -1;
                qg_op_params p = {0};
                const int node = add_node(&f, QG_OP_EMBED, "embed", (int[]){c.w, c.tok}, 2,
                                          (int[]){c.x}, 1, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[ni], .n_res = 1,
                          .res = {c.x}, .check = check_embed, .ctx = &c};
                run_spec(&s);
                fx_free(&f);
            }
        }
}

/* ---- rmsnorm, add, copy ----------------------------------------------- */

typedef struct rms_ctx {
    int x, w, y;
    int64_t N;
    float eps;
} rms_ctx;

static void check_rmsnorm(fx *f, const spec *s, const char *label) {
    const rms_ctx *c = s->ctx;
    double *ref = dalloc(c->N * s->n_tok);
    qg_ref_rmsnorm(F32(f, c->x), F32(f, c->w), c->N, s->n_tok, c->eps, ref);
    /* f32 sum of squares (8 partial sums) and two products per element:
     * |y - ref| <= 1e-5 |ref| + 1e-6 */
    expect_close(label, "y", F32(f, c->y), ref, NULL, c->N * s->n_tok, 1e-5, 1e-6);
    free(ref);
}

static void test_rmsnorm(void **state) {
    (void)state;
    int case_id = 0;
    const int64_t Ns[] = {64, 1000, 2048};
    const float epss[] = {1e-6f, 1e-5f, 0.5f};
    for (int ni = 0; ni < 3; ni++) {
        const int T = 7;
        const int ntoks[] = {1, 3, T};
        for (int k = 0; k < 3; k++) {
            rng r = rng_for(2, case_id++);
            fx f = fx_make(QG_PHASE_PREFILL, T, 16);
            rms_ctx c = {.N = Ns[ni], .eps = epss[k]};
            c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.w = fx_weight(&f, "norm", QG_F32, 1, c.N, 1, 1, &r, 2.0f);
            c.y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            fill_act(&f, c.x, ntoks[k], &r, -3, 3);
            qg_op_params p = {.eps = c.eps};
            const int node = add_node(&f, QG_OP_RMSNORM, "rmsnorm", (int[]){c.x, c.w}, 2,
                                      (int[]){c.y}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = check_rmsnorm, .ctx = &c};
            run_spec(&s);
            fx_free(&f);
        }
    }
}

typedef struct add_ctx {
    int a, b, y;
    int64_t N;
} add_ctx;

static void check_add(fx *f, const spec *s, const char *label) {
    const add_ctx *c = s->ctx;
    const int64_t n = c->N * s->n_tok;
    double *ref = dalloc(n);
    qg_ref_add(F32(f, c->a), F32(f, c->b), n, ref);
    /* one correctly rounded f32 add: |y - ref| <= 2^-24 |ref| */
    expect_close(label, "y", F32(f, c->y), ref, NULL, n, 0x1p-24, 0);
    free(ref);
}

static void test_add(void **state) {
    (void)state;
    int case_id = 0;
    const int64_t Ns[] = {7, 300, 1024};
    for (int ni = 0; ni < 3; ni++) {
        const int T = 5;
        const int ntoks[] = {1, 2, T};
        for (int k = 0; k < 3; k++) {
            rng r = rng_for(3, case_id++);
            fx f = fx_make(QG_PHASE_PREFILL, T, 16);
            add_ctx c = {.N = Ns[ni]};
            c.a = fx_tensor(&f, "a", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.b = fx_tensor(&f, "b", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            fill_act(&f, c.a, ntoks[k], &r, -10, 10);
            fill_act(&f, c.b, ntoks[k], &r, -10, 10);
            qg_op_params p = {0};
            const int node = add_node(&f, QG_OP_ADD, "add", (int[]){c.a, c.b}, 2, (int[]){c.y},
                                      1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = check_add, .ctx = &c};
            run_spec(&s);
            fx_free(&f);
        }
    }
}

typedef struct copy_ctx {
    int x, y;
} copy_ctx;

static void check_copy(fx *f, const spec *s, const char *label) {
    const copy_ctx *c = s->ctx;
    /* exact: the live bytes equal the source's */
    if (memcmp(f->addr[c->x], f->addr[c->y], live_bytes(f, c->x, s->n_tok)) != 0)
        fail_msg("%s: copy differs from its source", label);
}

static void test_copy(void **state) {
    (void)state;
    int case_id = 0;
    const qg_dtype types[] = {QG_F32, QG_I32, QG_F16};
    for (int ti = 0; ti < 3; ti++)
        for (int k = 0; k < 3; k++) {
            const int T = 6;
            const int ntoks[] = {1, 4, T};
            rng r = rng_for(4, case_id++);
            fx f = fx_make(QG_PHASE_PREFILL, T, 16);
            copy_ctx c;
            const int64_t N = 1000 + 24 * ti; /* > 4 KiB per few tokens */
            c.x = fx_tensor(&f, "x", types[ti], QG_ROLE_ACT, 2, N, T, 1);
            c.y = fx_tensor(&f, "y", types[ti], QG_ROLE_ACT, 2, N, T, 1);
            unsigned char *b = f.addr[c.x];
            for (size_t i = 0; i < f.g->tensors[c.x].nbytes; i++) b[i] = (unsigned char)rng_u64(&r);
            qg_op_params p = {0};
            const int node = add_node(&f, QG_OP_COPY, "copy", (int[]){c.x}, 1, (int[]){c.y}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = check_copy, .ctx = &c};
            run_spec(&s);
            fx_free(&f);
        }
}

/* ---- matmul, router, lm_head ------------------------------------------ */

typedef struct mm_ctx {
    int w, x, y;
    int64_t N, M;
    bool only_last;
} mm_ctx;

static void check_mm(fx *f, const spec *s, const char *label) {
    const mm_ctx *c = s->ctx;
    const int cols = c->only_last ? 1 : s->n_tok;
    const float *x = F32(f, c->x) + (c->only_last ? (size_t)(s->n_tok - 1) * c->N : 0);
    double *ref = dalloc(c->M * cols), *mag = dalloc(c->M * cols);
    qg_ref_matmul(f->g->tensors[c->w].type, f->addr[c->w], c->N, c->M, x, cols, ref, mag);
    /* f32 accumulation of exactly dequantized products:
     * |y - ref| <= 1e-5 * sum|w||x| + 1e-6 */
    expect_close(label, "y", F32(f, c->y), ref, mag, c->M * cols, 1e-5, 1e-6);
    free(ref);
    free(mag);
}

/* op: MATMUL (w, x), ROUTER (x, w) or LM_HEAD (x, w). */
static void mm_cases(qg_op op, int test_id) {
    int case_id = 0;
    const int64_t shapes[][2] = {{256, 37}, {512, 70}};
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (int si = 0; si < 2; si++)
            for (int ol = 0; ol < (op == QG_OP_LM_HEAD ? 2 : 1); ol++) {
                const int T = 37; /* two column blocks of the gemm */
                const int ntoks[] = {1, 3, T};
                for (int k = 0; k < 3; k++) {
                    rng r = rng_for(test_id, case_id++);
                    fx f = fx_make(QG_PHASE_PREFILL, T, 64);
                    mm_ctx c = {.N = shapes[si][0], .M = shapes[si][1], .only_last = ol == 1};
                    c.w = fx_weight(&f, "w", ALL_W[d], 2, c.N, c.M, 1, &r, 1.0f);
                    c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
                    c.y = fx_tensor(&f, "y", QG_F32, op == QG_OP_LM_HEAD ? QG_ROLE_OUTPUT : QG_ROLE_ACT,
                                    2, c.M, c.only_last ? 1 : T, 1);
                    fill_act(&f, c.x, ntoks[k], &r, -1, 1);
                    qg_op_params p = {.only_last = c.only_last};
                    const int *in = op == QG_OP_MATMUL ? (int[]){c.w, c.x} : (int[]){c.x, c.w};
                    const int node = add_node(&f, op, qg_op_name(op), in, 2, (int[]){c.y}, 1, &p);
                    spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1,
                              .res = {c.y}, .check = check_mm, .ctx = &c};
                    run_spec(&s);
                    fx_free(&f);
                }
            }
}

static void test_matmul(void **state) {
    (void)state;
    mm_cases(QG_OP_MATMUL, 5);
}
static void test_router(void **state) {
    (void)state;
    mm_cases(QG_OP_ROUTER, 6);
}
static void test_lm_head(void **state) {
    (void)state;
    mm_cases(QG_OP_LM_HEAD, 7);
}

/* ---- qkv -------------------------------------------------------------- */

typedef struct qkv_ctx {
    int x, w[3], y[3];
    int64_t E, m[3];
} qkv_ctx;

static void check_qkv(fx *f, const spec *s, const char *label) {
    const qkv_ctx *c = s->ctx;
    for (int i = 0; i < 3; i++) {
        double *ref = dalloc(c->m[i] * s->n_tok), *mag = dalloc(c->m[i] * s->n_tok);
        qg_ref_matmul(f->g->tensors[c->w[i]].type, f->addr[c->w[i]], c->E, c->m[i],
                      F32(f, c->x), s->n_tok, ref, mag);
        /* as matmul: |y - ref| <= 1e-5 * sum|w||x| + 1e-6 */
        expect_close(label, i == 0 ? "q" : i == 1 ? "k" : "v", F32(f, c->y[i]), ref, mag,
                     c->m[i] * s->n_tok, 1e-5, 1e-6);
        free(ref);
        free(mag);
    }
}

static void test_qkv(void **state) {
    (void)state;
    int case_id = 0;
    const qg_dtype triples[][3] = {{QG_Q4_K, QG_Q6_K, QG_Q8_0},
                                   {QG_F16, QG_BF16, QG_F32},
                                   {QG_Q5_K, QG_Q4_0, QG_Q4_K}};
    const int heads[][3] = {{16, 4, 2}, {8, 5, 1}}; /* hd, n_head, n_head_kv */
    for (int ti = 0; ti < 3; ti++)
        for (int hi = 0; hi < 2; hi++) {
            const int T = 35;
            const int ntoks[] = {1, 4, T};
            for (int k = 0; k < 3; k++) {
                rng r = rng_for(8, case_id++);
                fx f = fx_make(QG_PHASE_PREFILL, T, 64);
                qkv_ctx c = {.E = 256};
                const int hd = heads[hi][0];
                c.m[0] = (int64_t)hd * heads[hi][1];
                c.m[1] = c.m[2] = (int64_t)hd * heads[hi][2];
                c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
                for (int i = 0; i < 3; i++) {
                    c.w[i] = fx_weight(&f, "w", triples[ti][i], 2, c.E, c.m[i], 1, &r, 1.0f);
                    c.y[i] = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.m[i], T, 1);
                }
                fill_act(&f, c.x, ntoks[k], &r, -1, 1);
                qg_op_params p = {.head_dim = hd, .n_head = heads[hi][1],
                                  .n_head_kv = heads[hi][2]};
                const int node = add_node(&f, QG_OP_QKV, "qkv", (int[]){c.x, c.w[0], c.w[1], c.w[2]},
                                          4, c.y, 3, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 3,
                          .res = {c.y[0], c.y[1], c.y[2]}, .check = check_qkv, .ctx = &c};
                run_spec(&s);
                fx_free(&f);
            }
        }
}

/* ---- swiglu ----------------------------------------------------------- */

typedef struct swiglu_ctx {
    int x, gate, up, h;
    int64_t E, F;
} swiglu_ctx;

static void check_swiglu(fx *f, const spec *s, const char *label) {
    const swiglu_ctx *c = s->ctx;
    const int64_t n = c->F * s->n_tok;
    double *ref = dalloc(n), *mag = dalloc(n);
    qg_ref_swiglu(f->g->tensors[c->gate].type, f->addr[c->gate], f->g->tensors[c->up].type,
                  f->addr[c->up], c->E, c->F, F32(f, c->x), s->n_tok, ref, mag);
    /* gate and up dots as matmul, propagated through silu (|silu'| <= 1.1):
     * |h - ref| <= 1e-5 * (1.1 |u| sum|g x| + |silu g| sum|u x| + |h|) + 1e-6 */
    expect_close(label, "h", F32(f, c->h), ref, mag, n, 1e-5, 1e-6);
    free(ref);
    free(mag);
}

static void test_swiglu(void **state) {
    (void)state;
    int case_id = 0;
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++) {
        const int T = 37;
        const int ntoks[] = {1, 4, T};
        for (int k = 0; k < 3; k++) {
            rng r = rng_for(9, case_id++);
            fx f = fx_make(QG_PHASE_PREFILL, T, 64);
            swiglu_ctx c = {.E = 256, .F = 48 + 8 * (int64_t)k};
            c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
            c.gate = fx_weight(&f, "gate", ALL_W[d], 2, c.E, c.F, 1, &r, 1.0f);
            c.up = fx_weight(&f, "up", ALL_W[(d + 3) % QG_ARRAY_LEN(ALL_W)], 2, c.E, c.F, 1, &r, 1.0f);
            c.h = fx_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, c.F, T, 1);
            fill_act(&f, c.x, ntoks[k], &r, -0.3f, 0.3f);
            qg_op_params p = {0};
            const int node = add_node(&f, QG_OP_SWIGLU, "swiglu", (int[]){c.x, c.gate, c.up}, 3,
                                      (int[]){c.h}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.h},
                      .check = check_swiglu, .ctx = &c};
            run_spec(&s);
            fx_free(&f);
        }
    }
}

/* ---- rope ------------------------------------------------------------- */

typedef struct rope_ctx {
    int q, k, qn, kn, pos, qo, ko;
    int hd, nh, nkv;
    float eps, theta;
} rope_ctx;

/* |y - ref| <= 1e-5 * |(ref_i, ref_pair)| + 1e-6 per element of a pair: f32
 * norm, f32-rounded sin/cos of a float64 angle, two roundings in the
 * rotation.  (An f32 angle would be off by ~pos * 2^-24 rad.) */
static void expect_rope(const char *label, const char *what, const float *y, const double *ref,
                        int n_heads_tok, int hd) {
    const int half = hd / 2;
    for (int h = 0; h < n_heads_tok; h++)
        for (int i = 0; i < hd; i++) {
            const size_t o = (size_t)h * hd;
            const int j = i < half ? i + half : i - half;
            const double m = hypot(ref[o + i], ref[o + j]);
            const double tol = 1e-5 * m + 1e-6;
            const double v = y[o + i];
            if (!isfinite(v) || fabs(v - ref[o + i]) > tol)
                fail_msg("%s: %s head-row %d [%d] = %.9g, reference %.9g, tolerance %.3g", label,
                         what, h, i, v, ref[o + i], tol);
        }
}

static void check_rope(fx *f, const spec *s, const char *label) {
    const rope_ctx *c = s->ctx;
    double *qr = dalloc((int64_t)c->hd * c->nh * s->n_tok);
    double *kr = dalloc((int64_t)c->hd * c->nkv * s->n_tok);
    qg_ref_rope(F32(f, c->q), F32(f, c->k), F32(f, c->qn), F32(f, c->kn), I32(f, c->pos),
                s->n_tok, c->hd, c->nh, c->nkv, c->eps, c->theta, qr, kr);
    expect_rope(label, "q", F32(f, c->qo), qr, c->nh * s->n_tok, c->hd);
    expect_rope(label, "k", F32(f, c->ko), kr, c->nkv * s->n_tok, c->hd);
    free(qr);
    free(kr);
}

static void test_rope(void **state) {
    (void)state;
    int case_id = 0;
    const int heads[][3] = {{16, 3, 1}, {64, 4, 2}, {128, 2, 2}};
    const float thetas[] = {1e6f, 1e4f};
    for (int hi = 0; hi < 3; hi++)
        for (int th = 0; th < 2; th++) {
            const int T = 6;
            const int ntoks[] = {1, 2, T};
            for (int k = 0; k < 3; k++) {
                rng r = rng_for(10, case_id++);
                fx f = fx_make(QG_PHASE_PREFILL, T, 64);
                rope_ctx c = {.hd = heads[hi][0], .nh = heads[hi][1], .nkv = heads[hi][2],
                              .eps = 1e-6f, .theta = thetas[th]};
                c.q = fx_tensor(&f, "q", QG_F32, QG_ROLE_ACT, 2, (int64_t)c.hd * c.nh, T, 1);
                c.k = fx_tensor(&f, "k", QG_F32, QG_ROLE_ACT, 2, (int64_t)c.hd * c.nkv, T, 1);
                c.qn = fx_weight(&f, "q_norm", QG_F32, 1, c.hd, 1, 1, &r, 2.0f);
                c.kn = fx_weight(&f, "k_norm", QG_F32, 1, c.hd, 1, 1, &r, 2.0f);
                c.pos = fx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_pos = c.pos;
                c.qo = fx_tensor(&f, "q_rope", QG_F32, QG_ROLE_ACT, 2, (int64_t)c.hd * c.nh, T, 1);
                c.ko = fx_tensor(&f, "k_rope", QG_F32, QG_ROLE_ACT, 2, (int64_t)c.hd * c.nkv, T, 1);
                fill_act(&f, c.q, ntoks[k], &r, -2, 2);
                fill_act(&f, c.k, ntoks[k], &r, -2, 2);
                /* positions up to 40000: where an f32 angle would fail */
                for (int t = 0; t < T; t++) I32(&f, c.pos)[t] = k == 0 ? 0 : rng_int(&r, 40000);
                qg_op_params p = {.eps = c.eps, .rope_theta = c.theta, .head_dim = c.hd,
                                  .n_head = c.nh, .n_head_kv = c.nkv};
                const int node = add_node(&f, QG_OP_ROPE, "rope",
                                          (int[]){c.q, c.k, c.qn, c.kn, c.pos}, 5,
                                          (int[]){c.qo, c.ko}, 2, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 2,
                          .res = {c.qo, c.ko}, .check = check_rope, .ctx = &c};
                run_spec(&s);
                fx_free(&f);
            }
        }
}

/* ---- attention -------------------------------------------------------- */

typedef struct attn_ctx {
    int q, k, v, kc, vc, pos, o;
    int hd, nh, nkv, C;
    qg_dtype ct;
    void *kc0, *vc0; /* cache contents before the step */
} attn_ctx;

static void attn_prepare(fx *f, const spec *s) {
    const attn_ctx *c = s->ctx;
    memcpy(f->addr[c->kc], c->kc0, f->g->tensors[c->kc].nbytes);
    memcpy(f->addr[c->vc], c->vc0, f->g->tensors[c->vc].nbytes);
}

/* cache element i of a cache buffer as double */
static double cache_get(qg_dtype ct, const void *p, size_t i) {
    return ct == QG_F16 ? (double)qg_f16_to_f32(((const uint16_t *)p)[i])
                        : (double)((const float *)p)[i];
}

static void check_attention(fx *f, const spec *s, const char *label) {
    const attn_ctx *c = s->ctx;
    const int64_t Dkv = (int64_t)c->hd * c->nkv, Dq = (int64_t)c->hd * c->nh;
    const int32_t *pos = I32(f, c->pos);
    const size_t es = c->ct == QG_F16 ? 2 : 4;
    /* 1. the caches: rows pos[t] hold this step's k, v, rounded once to the
     * cache type (exact bits); every other row is unchanged. */
    for (int m = 0; m < 2; m++) {
        const int cid = m ? c->vc : c->kc;
        const float *src = F32(f, m ? c->v : c->k);
        const unsigned char *now = f->addr[cid], *before = m ? c->vc0 : c->kc0;
        for (int row = 0; row < c->C; row++) {
            int t = -1;
            for (int i = 0; i < s->n_tok; i++)
                if (pos[i] == row) t = i;
            for (int64_t i = 0; i < Dkv; i++) {
                const size_t off = ((size_t)row * Dkv + i) * es;
                if (t < 0) {
                    if (memcmp(now + off, before + off, es) != 0)
                        fail_msg("%s: cache row %d changed (not written this step)", label, row);
                    continue;
                }
                const float x = src[(size_t)t * Dkv + i];
                bool ok;
                if (c->ct == QG_F16) {
                    uint16_t h;
                    memcpy(&h, now + off, 2);
                    ok = h == qg_f32_to_f16(x);
                } else {
                    ok = memcmp(now + off, &x, 4) == 0;
                }
                if (!ok) fail_msg("%s: %s cache row %d [%lld] wrong", label, m ? "v" : "k", row,
                                  (long long)i);
            }
        }
    }
    /* 2. the output against the reference over the caches as written */
    double *kd = dalloc(Dkv * c->C), *vd = dalloc(Dkv * c->C);
    for (size_t i = 0; i < (size_t)(Dkv * c->C); i++) {
        kd[i] = cache_get(c->ct, f->addr[c->kc], i);
        vd[i] = cache_get(c->ct, f->addr[c->vc], i);
    }
    double *ref = dalloc(Dq * s->n_tok), *pva = dalloc(Dq * s->n_tok);
    double *qka = dalloc((int64_t)c->nh * s->n_tok);
    qg_ref_attention(F32(f, c->q), kd, vd, pos, s->n_tok, c->hd, c->nh, c->nkv, ref, pva, qka);
    /* f32 scores (error ~ sqrt(hd) u sum|q k| / sqrt(hd), u = 2^-24),
     * softmax and a weighted sum over <= 48 rows, rounding errors growing
     * like sqrt(n) u: |o - ref| <= 1e-6 * (1 + qk_abs) * sum_j p_j |v_j|
     * + 1e-7 (the largest seen is 7e-8 of that scale; a 2e-5 relative exp
     * error fails it) */
    double *mag = dalloc(Dq * s->n_tok);
    for (int t = 0; t < s->n_tok; t++)
        for (int64_t i = 0; i < Dq; i++)
            mag[t * Dq + i] = (1.0 + qka[t * c->nh + i / c->hd]) * pva[t * Dq + i];
    expect_close(label, "o", F32(f, c->o), ref, mag, Dq * s->n_tok, 1e-6, 1e-7);
    /* 3. F16 cache: against the reference with this step's k, v unrounded.
     * Rounding to f16 moves each k, v by at most u = 2^-11 relative (plus
     * 2^-25 absolute for subnormals), each score by at most
     * d = u * qk_abs, each p_j by a factor within e^(+-2d):
     * |o - ref| <= ((e^(2d) - 1)(1 + u) + u) * sum p|v| + the f32 bound
     * (subnormal f16 values add at most 2^-25, inside the 2e-7). */
    if (c->ct == QG_F16) {
        for (int t = 0; t < s->n_tok; t++)
            for (int64_t i = 0; i < Dkv; i++) {
                kd[(size_t)pos[t] * Dkv + i] = F32(f, c->k)[t * Dkv + i];
                vd[(size_t)pos[t] * Dkv + i] = F32(f, c->v)[t * Dkv + i];
            }
        qg_ref_attention(F32(f, c->q), kd, vd, pos, s->n_tok, c->hd, c->nh, c->nkv, ref, pva, qka);
        const double u = 0x1p-11;
        for (int t = 0; t < s->n_tok; t++)
            for (int64_t i = 0; i < Dq; i++) {
                const double qa = qka[t * c->nh + i / c->hd] * (1 + u);
                const double d = u * qa;
                mag[t * Dq + i] = ((expm1(2 * d) * (1 + u) + u) * 1e6 + 1 + qa) *
                                  pva[t * Dq + i] * (1 + u);
            }
        expect_close(label, "o (unrounded k,v)", F32(f, c->o), ref, mag, Dq * s->n_tok, 1e-6, 2e-7);
    }
    free(kd);
    free(vd);
    free(ref);
    free(pva);
    free(qka);
    free(mag);
}

static void test_attention(void **state) {
    (void)state;
    int case_id = 0;
    /* hd 12: not a multiple of 8, the scalar loops at every level */
    const int heads[][3] = {{16, 4, 2}, {32, 3, 3}, {64, 6, 1}, {12, 2, 1}};
    const qg_dtype cts[] = {QG_F32, QG_F16};
    for (int hi = 0; hi < 4; hi++)
        for (int ci = 0; ci < 2; ci++)
            for (int phase = 0; phase < 2; phase++) {
                const int T = phase == 0 ? 1 : 6, C = 48;
                const int ntoks[] = {1, 3, T};
                for (int k = 0; k < (phase == 0 ? 1 : 3); k++) {
                    rng r = rng_for(11, case_id++);
                    fx f = fx_make(phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, C);
                    attn_ctx c = {.hd = heads[hi][0], .nh = heads[hi][1], .nkv = heads[hi][2],
                                  .C = C, .ct = cts[ci]};
                    const int64_t Dq = (int64_t)c.hd * c.nh, Dkv = (int64_t)c.hd * c.nkv;
                    c.q = fx_tensor(&f, "q", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
                    c.k = fx_tensor(&f, "k", QG_F32, QG_ROLE_ACT, 2, Dkv, T, 1);
                    c.v = fx_tensor(&f, "v", QG_F32, QG_ROLE_ACT, 2, Dkv, T, 1);
                    c.kc = fx_tensor(&f, "cache_k", c.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                    c.vc = fx_tensor(&f, "cache_v", c.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                    c.pos = fx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                    f.g->t_pos = c.pos;
                    c.o = fx_tensor(&f, "o", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
                    const int n_tok = ntoks[k];
                    fill_act(&f, c.q, n_tok, &r, -2, 2);
                    fill_act(&f, c.k, n_tok, &r, -1, 1);
                    fill_act(&f, c.v, n_tok, &r, -1, 1);
                    /* consecutive positions from a random start (0 sometimes) */
                    const int p0 = (case_id % 4 == 0) ? 0 : rng_int(&r, C - n_tok + 1);
                    for (int t = 0; t < T; t++) I32(&f, c.pos)[t] = t < n_tok ? p0 + t : -1;
                    /* earlier rows: random, in the cache type */
                    const size_t cb = f.g->tensors[c.kc].nbytes;
                    c.kc0 = malloc(cb);
                    c.vc0 = malloc(cb);
                    assert_true(c.kc0 && c.vc0);
                    for (size_t i = 0; i < (size_t)(Dkv * C); i++) {
                        const float a = rng_unif(&r, -1, 1), b = rng_unif(&r, -1, 1);
                        if (c.ct == QG_F16) {
                            ((uint16_t *)c.kc0)[i] = qg_f32_to_f16(a);
                            ((uint16_t *)c.vc0)[i] = qg_f32_to_f16(b);
                        } else {
                            ((float *)c.kc0)[i] = a;
                            ((float *)c.vc0)[i] = b;
                        }
                    }
                    qg_op_params p = {.head_dim = c.hd, .n_head = c.nh, .n_head_kv = c.nkv};
                    const int node = add_node(&f, QG_OP_ATTENTION, "attention",
                                              (int[]){c.q, c.k, c.v, c.kc, c.vc, c.pos}, 6,
                                              (int[]){c.o}, 1, &p);
                    spec s = {.f = &f, .node = node, .n_tok = n_tok, .n_res = 3,
                              .res = {c.o, c.kc, c.vc}, .prepare = attn_prepare,
                              .check = check_attention, .ctx = &c};
                    run_spec(&s);
                    free(c.kc0);
                    free(c.vc0);
                    fx_free(&f);
                }
            }
}

/* The AVX2 softmax exp (op_attention_avx2.c) on its own: attention's
 * normalization hides small exp errors, so check each value against exp in
 * double: |e - ref| <= 2^-22 ref (4 ulp) + 2e-38 (inputs below -87 are
 * clamped to exp(-87) = 1.6e-38); the sum within 1e-6 relative. */
static void test_softmax_exp_avx2(void **state) {
    (void)state;
    if (qg_quant_kernels_best().level < QG_SIMD_AVX2) {
        printf("no AVX2 on this CPU (or QG_SIMD below avx2): the AVX2 exp is not used; skipped\n");
        skip();
    }
    rng r = rng_for(16, 0);
    for (int n = 1; n <= 1003; n += 71) {
        float *s = malloc(sizeof(float) * (size_t)n);
        double *ref = dalloc(n);
        assert_non_null(s);
        const float mx = rng_unif(&r, -5, 5);
        double sum_ref = 0;
        for (int j = 0; j < n; j++) {
            /* mostly the softmax range, some below the clamp */
            s[j] = mx + (j % 17 == 0 ? rng_unif(&r, -100, 0) : rng_unif(&r, -20, 0));
            ref[j] = exp((double)(s[j] - mx)); /* the kernel's argument, rounded in f32 */
            sum_ref += ref[j];
        }
        const float sum = qg_cpu_softmax_exp_avx2(s, n, mx);
        for (int j = 0; j < n; j++)
            if (!(fabs(s[j] - ref[j]) <= 0x1p-22 * ref[j] + 2e-38))
                fail_msg("exp: n=%d [%d] = %.9g, reference %.9g", n, j, (double)s[j], ref[j]);
        if (!(fabs(sum - sum_ref) <= 1e-6 * sum_ref))
            fail_msg("exp: n=%d sum %.9g, reference %.9g", n, (double)sum, sum_ref);
        free(s);
        free(ref);
    }
}

/* ---- topk ------------------------------------------------------------- */

typedef struct topk_ctx {
    int logits, ids, wts;
    int X, K;
    bool exact_ties; /* integer logits: exact ties, other gaps large */
} topk_ctx;

/* ids, wts of n_tok tokens against the reference top-k of `logits`:
 * ids exact where the reference's K-th and (K+1)-th probabilities differ by
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

static void check_topk(fx *f, const spec *s, const char *label) {
    const topk_ctx *c = s->ctx;
    expect_topk(label, F32(f, c->logits), I32(f, c->ids), F32(f, c->wts), c->X, c->K, s->n_tok,
                c->exact_ties);
}

static void test_topk(void **state) {
    (void)state;
    int case_id = 0;
    const int XK[][2] = {{8, 1}, {8, 8}, {64, 2}, {128, 8}, {60, 4}};
    for (int xi = 0; xi < 5; xi++)
        for (int ties = 0; ties < 2; ties++) {
            const int T = 9;
            const int ntoks[] = {1, 4, T};
            for (int k = 0; k < 3; k++) {
                rng r = rng_for(12, case_id++);
                fx f = fx_make(QG_PHASE_PREFILL, T, 16);
                topk_ctx c = {.X = XK[xi][0], .K = XK[xi][1], .exact_ties = ties == 1};
                c.logits = fx_tensor(&f, "logits", QG_F32, QG_ROLE_ACT, 2, c.X, T, 1);
                c.ids = fx_tensor(&f, "ids", QG_I32, QG_ROLE_ACT, 2, c.K, T, 1);
                c.wts = fx_tensor(&f, "wts", QG_F32, QG_ROLE_ACT, 2, c.K, T, 1);
                fill_act(&f, c.logits, ntoks[k], &r, -6, 6);
                if (c.exact_ties)
                    for (int i = 0; i < c.X * ntoks[k]; i++)
                        F32(&f, c.logits)[i] = (float)rng_int(&r, 4);
                qg_op_params p = {.n_expert = c.X, .n_expert_used = c.K};
                const int node = add_node(&f, QG_OP_TOPK, "topk", (int[]){c.logits}, 1,
                                          (int[]){c.ids, c.wts}, 2, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 2,
                          .res = {c.ids, c.wts}, .check = check_topk, .ctx = &c};
                run_spec(&s);
                fx_free(&f);
            }
        }
}

/* ---- expert_swiglu, aggregate ----------------------------------------- */

/* Distinct random expert ids per token; expert 0 in every token (at
 * k = t % K) so one expert gets more than a gemm column block. */
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

typedef struct moe_ctx {
    int x, gate_inp, gate, up, down, logits, ids, wts, h, y; /* unfused */
    int y2, ids2, wts2;                                      /* fused */
    int n_router, n_topk, n_swiglu, n_agg, n_fused;
    int64_t E, F;
    int X, K;
} moe_ctx;

static void check_expert_swiglu(fx *f, const spec *s, const char *label) {
    const moe_ctx *c = s->ctx;
    const int64_t n = c->F * c->K * s->n_tok;
    double *ref = dalloc(n), *mag = dalloc(n);
    qg_ref_expert_swiglu(f->g->tensors[c->gate].type, f->addr[c->gate], f->g->tensors[c->up].type,
                         f->addr[c->up], c->E, c->F, c->X, F32(f, c->x), I32(f, c->ids), c->K,
                         s->n_tok, ref, mag);
    /* as swiglu: |h - ref| <= 1e-5 * (1.1 |u| sum|g x| + |silu g| sum|u x|
     * + |h|) + 1e-6 */
    expect_close(label, "h", F32(f, c->h), ref, mag, n, 1e-5, 1e-6);
    free(ref);
    free(mag);
}

static void check_aggregate(fx *f, const spec *s, const char *label) {
    const moe_ctx *c = s->ctx;
    const int64_t n = c->E * s->n_tok;
    double *ref = dalloc(n), *mag = dalloc(n);
    qg_ref_aggregate(F32(f, c->h), f->g->tensors[c->down].type, f->addr[c->down], c->F, c->E,
                     c->X, I32(f, c->ids), F32(f, c->wts), c->K, s->n_tok, ref, mag);
    /* K dots as matmul, weighted sum in f32:
     * |y - ref| <= 1e-5 * sum_k |w_k| sum_f |down h| + 1e-6 */
    expect_close(label, "y", F32(f, c->y), ref, mag, n, 1e-5, 1e-6);
    free(ref);
    free(mag);
}

/* Build the MoE chain (and the fused node) for E, F, X, K, types. */
static moe_ctx moe_build(fx *f, int T, int64_t E, int64_t F, int X, int K, qg_dtype rt,
                         qg_dtype gt, qg_dtype ut, qg_dtype dt, rng *r) {
    moe_ctx c = {.E = E, .F = F, .X = X, .K = K};
    c.x = fx_tensor(f, "x", QG_F32, QG_ROLE_ACT, 2, E, T, 1);
    c.gate_inp = fx_weight(f, "gate_inp", rt, 2, E, X, 1, r, 1.0f);
    c.gate = fx_weight(f, "gate_exps", gt, 3, E, F, X, r, 1.0f);
    c.up = fx_weight(f, "up_exps", ut, 3, E, F, X, r, 1.0f);
    c.down = fx_weight(f, "down_exps", dt, 3, F, E, X, r, 1.0f);
    c.logits = fx_tensor(f, "logits", QG_F32, QG_ROLE_ACT, 2, X, T, 1);
    c.ids = fx_tensor(f, "ids", QG_I32, QG_ROLE_ACT, 2, K, T, 1);
    c.wts = fx_tensor(f, "wts", QG_F32, QG_ROLE_ACT, 2, K, T, 1);
    c.h = fx_tensor(f, "h", QG_F32, QG_ROLE_ACT, 3, F, K, T);
    c.y = fx_tensor(f, "y", QG_F32, QG_ROLE_ACT, 2, E, T, 1);
    c.y2 = fx_tensor(f, "y_fused", QG_F32, QG_ROLE_ACT, 2, E, T, 1);
    c.ids2 = fx_tensor(f, "ids_fused", QG_I32, QG_ROLE_ACT, 2, K, T, 1);
    c.wts2 = fx_tensor(f, "wts_fused", QG_F32, QG_ROLE_ACT, 2, K, T, 1);
    qg_op_params p = {.n_expert = X, .n_expert_used = K};
    c.n_router = add_node(f, QG_OP_ROUTER, "router", (int[]){c.x, c.gate_inp}, 2,
                          (int[]){c.logits}, 1, &p);
    c.n_topk = add_node(f, QG_OP_TOPK, "topk", (int[]){c.logits}, 1, (int[]){c.ids, c.wts}, 2, &p);
    c.n_swiglu = add_node(f, QG_OP_EXPERT_SWIGLU, "expert_swiglu",
                          (int[]){c.x, c.gate, c.up, c.ids}, 4, (int[]){c.h}, 1, &p);
    c.n_agg = add_node(f, QG_OP_AGGREGATE, "aggregate", (int[]){c.h, c.down, c.ids, c.wts}, 4,
                       (int[]){c.y}, 1, &p);
    c.n_fused = add_node(f, QG_OP_MOE_FUSED, "moe_fused",
                         (int[]){c.x, c.gate_inp, c.gate, c.up, c.down}, 5,
                         (int[]){c.y2, c.ids2, c.wts2}, 3, &p);
    return c;
}

/* Expert weight types of the MoE cases: (gate, up, down). */
static const qg_dtype MOE_TYPES[][3] = {
    {QG_Q4_K, QG_Q4_K, QG_Q6_K}, {QG_Q5_K, QG_Q8_0, QG_Q4_0},
    {QG_F16, QG_BF16, QG_F32},   {QG_Q6_K, QG_Q4_0, QG_Q5_K},
};

static void test_expert_swiglu_aggregate(void **state) {
    (void)state;
    int case_id = 0;
    const int XK[][2] = {{6, 2}, {4, 3}};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(MOE_TYPES); ti++)
        for (int xi = 0; xi < 2; xi++) {
            const int T = 40; /* expert 0 gets 40 > 32 assignments */
            const int ntoks[] = {1, 5, T};
            for (int k = 0; k < 3; k++) {
                rng r = rng_for(13, case_id++);
                fx f = fx_make(QG_PHASE_PREFILL, T, 64);
                moe_ctx c = moe_build(&f, T, 256, 256, XK[xi][0], XK[xi][1], QG_F32,
                                      MOE_TYPES[ti][0], MOE_TYPES[ti][1], MOE_TYPES[ti][2], &r);
                const int n_tok = ntoks[k];
                fill_act(&f, c.x, n_tok, &r, -0.3f, 0.3f);
                make_ids(I32(&f, c.ids), c.X, c.K, n_tok, &r);
                for (int t = 0; t < n_tok; t++) {
                    float sum = 0;
                    for (int j = 0; j < c.K; j++) sum += F32(&f, c.wts)[t * c.K + j] = rng_unif(&r, 0.1f, 1);
                    for (int j = 0; j < c.K; j++) F32(&f, c.wts)[t * c.K + j] /= sum;
                }
                spec s = {.f = &f, .node = c.n_swiglu, .n_tok = n_tok, .n_res = 1, .res = {c.h},
                          .check = check_expert_swiglu, .ctx = &c};
                run_spec(&s);
                /* aggregate of the h just computed (now a fixed input) */
                spec s2 = {.f = &f, .node = c.n_agg, .n_tok = n_tok, .n_res = 1, .res = {c.y},
                           .check = check_aggregate, .ctx = &c};
                run_spec(&s2);
                fx_free(&f);
            }
        }
}

/* ---- moe_fused -------------------------------------------------------- */

static void check_fused(fx *f, const spec *s, const char *label) {
    const moe_ctx *c = s->ctx;
    const int n_tok = s->n_tok;
    /* bit-identical to the unfused chain run just before (same nth, same
     * kernels) */
    const struct { int a, b; const char *name; } same[] = {
        {c->y, c->y2, "y"}, {c->ids, c->ids2, "ids"}, {c->wts, c->wts2, "wts"}};
    for (int i = 0; i < 3; i++)
        if (memcmp(f->addr[same[i].a], f->addr[same[i].b], live_bytes(f, same[i].a, n_tok)) != 0)
            fail_msg("%s: fused %s differs from the unfused chain", label, same[i].name);
    /* router logits (the unfused chain's, bitwise what the fused node
     * used): as matmul, |l - ref| <= 1e-5 * sum|w||x| + 1e-6 */
    double *lr = dalloc((int64_t)c->X * n_tok), *la = dalloc((int64_t)c->X * n_tok);
    qg_ref_matmul(f->g->tensors[c->gate_inp].type, f->addr[c->gate_inp], c->E, c->X,
                  F32(f, c->x), n_tok, lr, la);
    expect_close(label, "logits", F32(f, c->logits), lr, la, (int64_t)c->X * n_tok, 1e-5, 1e-6);
    /* routing: as topk */
    expect_topk(label, F32(f, c->logits), I32(f, c->ids2), F32(f, c->wts2), c->X, c->K, n_tok,
                false);
    /* y: the reference experts (float64 h from x) over the kernel's routing.
     * The kernel's h is within 1e-5 * habs of the reference (as
     * expert_swiglu), so |y - ref| <= 1e-5 * (sum_k |w| sum_f |down| (|h| +
     * habs)) + 1e-6. */
    const int64_t nh = c->F * c->K * n_tok, ny = c->E * n_tok;
    double *h = dalloc(nh), *ha = dalloc(nh), *y = dalloc(ny), *ya = dalloc(ny), *yb = dalloc(ny);
    qg_ref_expert_swiglu(f->g->tensors[c->gate].type, f->addr[c->gate], f->g->tensors[c->up].type,
                         f->addr[c->up], c->E, c->F, c->X, F32(f, c->x), I32(f, c->ids2), c->K,
                         n_tok, h, ha);
    float *hf = malloc(sizeof(float) * (size_t)nh), *haf = malloc(sizeof(float) * (size_t)nh);
    assert_true(hf && haf);
    for (int64_t i = 0; i < nh; i++) {
        hf[i] = (float)h[i];
        haf[i] = (float)ha[i];
    }
    /* y from the reference h rounded to f32 (adds <= 2^-24 |h|, covered) */
    qg_ref_aggregate(hf, f->g->tensors[c->down].type, f->addr[c->down], c->F, c->E, c->X,
                     I32(f, c->ids2), F32(f, c->wts2), c->K, n_tok, y, ya);
    qg_ref_aggregate(haf, f->g->tensors[c->down].type, f->addr[c->down], c->F, c->E, c->X,
                     I32(f, c->ids2), F32(f, c->wts2), c->K, n_tok, yb, NULL);
    for (int64_t i = 0; i < ny; i++) ya[i] += fabs(yb[i]) * 1.0001;
    expect_close(label, "y", F32(f, c->y2), y, ya, ny, 1e-5, 1e-6);
    free(lr);
    free(la);
    free(h);
    free(ha);
    free(y);
    free(ya);
    free(yb);
    free(hf);
    free(haf);
}

static void test_moe_fused(void **state) {
    (void)state;
    int case_id = 0;
    const qg_dtype rts[] = {QG_F32, QG_Q8_0};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(MOE_TYPES); ti++)
        for (int phase = 0; phase < 2; phase++) {
            const int T = phase == 0 ? 1 : 40;
            const int ntoks[] = {1, 7, T};
            for (int k = 0; k < (phase == 0 ? 1 : 3); k++) {
                rng r = rng_for(14, case_id++);
                fx f = fx_make(phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64);
                const int X = phase == 0 ? 8 : 5, K = phase == 0 ? 3 : 2;
                moe_ctx c = moe_build(&f, T, 256, 256, X, K, rts[ti % 2], MOE_TYPES[ti][0],
                                      MOE_TYPES[ti][1], MOE_TYPES[ti][2], &r);
                fill_act(&f, c.x, ntoks[k], &r, -0.3f, 0.3f);
                spec s = {.f = &f, .node = c.n_fused, .n_pre = 4,
                          .pre = {c.n_router, c.n_topk, c.n_swiglu, c.n_agg},
                          .n_tok = ntoks[k], .n_res = 3, .res = {c.y2, c.ids2, c.wts2},
                          .check = check_fused, .ctx = &c};
                run_spec(&s);
                fx_free(&f);
            }
        }
}

/* ---- wide batches ---------------------------------------------------- */

/*
 * The column-count boundaries of the products (see ops/cpu/qg_cpu_internal.h):
 * QG_CPU_THIN columns (the last gemm_cols size), one more (the first tiled
 * gemm), and more than QG_CPU_COLS (two column blocks) for matmul, swiglu
 * and qkv; checks and tolerances as in their own tests.
 */
static void test_wide_batches(void **state) {
    (void)state;
    int case_id = 0;
    enum { T = QG_CPU_COLS + 6 };
    const int ntoks[] = {QG_CPU_THIN, QG_CPU_THIN + 1, T};
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (int k = 0; k < 3; k++) {
            rng r = rng_for(16, case_id++);
            fx f = fx_make(QG_PHASE_PREFILL, T, 64);
            mm_ctx c = {.N = 256, .M = 37};
            c.w = fx_weight(&f, "w", ALL_W[d], 2, c.N, c.M, 1, &r, 1.0f);
            c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.M, T, 1);
            fill_act(&f, c.x, ntoks[k], &r, -1, 1);
            qg_op_params p = {0};
            const int node = add_node(&f, QG_OP_MATMUL, "matmul", (int[]){c.w, c.x}, 2,
                                      (int[]){c.y}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = check_mm, .ctx = &c};
            run_spec(&s);
            fx_free(&f);
        }
    for (int k = 0; k < 3; k++) {
        rng r = rng_for(16, case_id++);
        fx f = fx_make(QG_PHASE_PREFILL, T, 64);
        swiglu_ctx c = {.E = 256, .F = 40};
        c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
        c.gate = fx_weight(&f, "gate", QG_Q4_K, 2, c.E, c.F, 1, &r, 1.0f);
        c.up = fx_weight(&f, "up", QG_Q6_K, 2, c.E, c.F, 1, &r, 1.0f);
        c.h = fx_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, c.F, T, 1);
        fill_act(&f, c.x, ntoks[k], &r, -0.3f, 0.3f);
        qg_op_params p = {0};
        const int node = add_node(&f, QG_OP_SWIGLU, "swiglu", (int[]){c.x, c.gate, c.up}, 3,
                                  (int[]){c.h}, 1, &p);
        spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.h},
                  .check = check_swiglu, .ctx = &c};
        run_spec(&s);
        fx_free(&f);
    }
    for (int k = 0; k < 3; k++) {
        rng r = rng_for(16, case_id++);
        fx f = fx_make(QG_PHASE_PREFILL, T, 64);
        qkv_ctx c = {.E = 256, .m = {64, 16, 16}};
        const qg_dtype types[3] = {QG_Q4_K, QG_Q8_0, QG_Q6_K};
        c.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
        for (int i = 0; i < 3; i++) {
            c.w[i] = fx_weight(&f, "w", types[i], 2, c.E, c.m[i], 1, &r, 1.0f);
            c.y[i] = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.m[i], T, 1);
        }
        fill_act(&f, c.x, ntoks[k], &r, -1, 1);
        qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 1};
        const int node = add_node(&f, QG_OP_QKV, "qkv", (int[]){c.x, c.w[0], c.w[1], c.w[2]}, 4,
                                  c.y, 3, &p);
        spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 3,
                  .res = {c.y[0], c.y[1], c.y[2]}, .check = check_qkv, .ctx = &c};
        run_spec(&s);
        fx_free(&f);
    }
}

/*
 * The expert kernels past their boundaries: expert 0 takes every token, so
 * with QG_CPU_THIN + 1 tokens it is just past the thin products (a tiled
 * gemm over gathered columns) and with QG_CPU_COLS + 6 it spans two column
 * blocks (gathered, then 6 thin);
 * shapes whose rows do not fill the last work item (E = 288 rows of down,
 * 64 per item; F = 272 rows of gate/up, 32 per item; plain types).  Then
 * moe_fused on the same shapes, routed by its own router (about T*K/X
 * tokens per expert).  Checks and tolerances as in the tests above.
 */
static void test_moe_wide(void **state) {
    (void)state;
    int case_id = 0;
    enum { T = QG_CPU_COLS + 6 };
    const struct { int64_t E, F; qg_dtype g, u, d; } cfg[] = {
        {256, 256, QG_Q4_K, QG_Q4_K, QG_Q6_K},
        {288, 272, QG_F16, QG_BF16, QG_F32},
        {256, 256, QG_Q5_K, QG_Q8_0, QG_Q4_0},
    };
    const int ntoks[] = {QG_CPU_THIN + 1, T};
    for (size_t ci = 0; ci < QG_ARRAY_LEN(cfg); ci++)
        for (int k = 0; k < 2; k++) {
            const int n_tok = ntoks[k];
            rng r = rng_for(17, case_id++);
            fx f = fx_make(QG_PHASE_PREFILL, T, 64);
            moe_ctx c = moe_build(&f, T, cfg[ci].E, cfg[ci].F, 5, 2, QG_F32, cfg[ci].g, cfg[ci].u,
                                  cfg[ci].d, &r);
            fill_act(&f, c.x, n_tok, &r, -0.3f, 0.3f);
            make_ids(I32(&f, c.ids), c.X, c.K, n_tok, &r);
            for (int t = 0; t < n_tok; t++) {
                float sum = 0;
                for (int j = 0; j < c.K; j++) sum += F32(&f, c.wts)[t * c.K + j] = rng_unif(&r, 0.1f, 1);
                for (int j = 0; j < c.K; j++) F32(&f, c.wts)[t * c.K + j] /= sum;
            }
            spec s = {.f = &f, .node = c.n_swiglu, .n_tok = n_tok, .n_res = 1, .res = {c.h},
                      .check = check_expert_swiglu, .ctx = &c};
            run_spec(&s);
            spec s2 = {.f = &f, .node = c.n_agg, .n_tok = n_tok, .n_res = 1, .res = {c.y},
                       .check = check_aggregate, .ctx = &c};
            run_spec(&s2);
            spec s3 = {.f = &f, .node = c.n_fused, .n_pre = 4,
                       .pre = {c.n_router, c.n_topk, c.n_swiglu, c.n_agg},
                       .n_tok = n_tok, .n_res = 3, .res = {c.y2, c.ids2, c.wts2},
                       .check = check_fused, .ctx = &c};
            run_spec(&s3);
            fx_free(&f);
        }
}

/* ---- supports --------------------------------------------------------- */

static void test_supports(void **state) {
    (void)state;
    fx f = fx_make(QG_PHASE_PREFILL, 4, 16);
    rng r = rng_for(15, 0);
    const int x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int xh = fx_tensor(&f, "xh", QG_F16, QG_ROLE_ACT, 2, 64, 4, 1);
    const int w16 = fx_weight(&f, "w16", QG_F16, 1, 64, 1, 1, &r, 1.0f);
    const int w32 = fx_weight(&f, "w32", QG_F32, 1, 64, 1, 1, &r, 1.0f);
    const int wq = fx_weight(&f, "wq", QG_Q8_0, 2, 64, 8, 1, &r, 1.0f);
    const int y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int kc8 = fx_tensor(&f, "kc8", QG_Q8_0, QG_ROLE_KV, 2, 64, 16, 1);
    const int pos = fx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 4, 1, 1);
    qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 4, .eps = 1e-6f};
    const int ok = add_node(&f, QG_OP_RMSNORM, "ok", (int[]){x, w32}, 2, (int[]){y}, 1, &p);
    const int bad_w = add_node(&f, QG_OP_RMSNORM, "bad_w", (int[]){x, w16}, 2, (int[]){y}, 1, &p);
    const int bad_x = add_node(&f, QG_OP_ADD, "bad_x", (int[]){x, xh}, 2, (int[]){y}, 1, &p);
    const int mm = add_node(&f, QG_OP_MATMUL, "mm", (int[]){wq, x}, 2, (int[]){y}, 1, &p);
    const int att = add_node(&f, QG_OP_ATTENTION, "att", (int[]){x, x, x, kc8, kc8, pos}, 6,
                             (int[]){y}, 1, &p);
    assert_true(qg_cpu_op_supports(f.g, &f.g->nodes[ok]));
    assert_false(qg_cpu_op_supports(f.g, &f.g->nodes[bad_w]));
    assert_false(qg_cpu_op_supports(f.g, &f.g->nodes[bad_x]));
    assert_true(qg_cpu_op_supports(f.g, &f.g->nodes[mm]));
    assert_false(qg_cpu_op_supports(f.g, &f.g->nodes[att]));
    fx_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_supports),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_router),
        cmocka_unit_test(test_lm_head),
        cmocka_unit_test(test_qkv),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_softmax_exp_avx2),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_expert_swiglu_aggregate),
        cmocka_unit_test(test_moe_fused),
        cmocka_unit_test(test_wide_batches),
        cmocka_unit_test(test_moe_wide),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
