/*
 * test_vulkan_fused.c - the Vulkan executor's decode-graph folds
 * (exec/vulkan/qg_vk_record.c, record_folded) through the real shaders:
 *
 *   rmsnorm -> qkv               NORM prologue in the three matmuls
 *   rmsnorm -> matmul -> add     NORM prologue and RESID epilogue
 *   matmul -> add                RESID epilogue alone
 *   rmsnorm -> moe_fused -> add  NORM in router and expert swiglu, RESID
 *                                in aggregate
 *   rmsnorm -> lm_head, rmsnorm -> router, rmsnorm -> swiglu (dense)
 *   moe_fused's topk         the expert swiglu routes for itself
 *   rope -> attention        one dispatch: rope, KV append, attention
 *
 * Each case is a one-token (decode) graph with random inputs, run on the
 * Vulkan executors with folds (subgroup reductions + validation layer,
 * zero messages allowed; and the shared-memory shaders) and on the same
 * two with QG_VK_NO_FOLD=1.  Checks, per run:
 *   - every output poisoned (0xFF) before the run, finite after, and
 *     within tolerance of the float64 reference: rmsnorm in double, then
 *     the products of the exactly dequantized weights in double;
 *     tolerances stated at each check;
 *   - the folded run equals the unfolded one bit for bit (the folded norm
 *     computes rmsnorm.comp's scale with the same reduction, the epilogue
 *     the same f32 add);
 *   - the fold happened: the dropped nodes' intermediate tensors (the
 *     rmsnorm's output, the product's output before the add), poisoned
 *     too, are never written by the folded run and always by the unfolded
 *     one (except the rmsnorm's output in the MoE case, which the router
 *     stores for the expert swiglu: compared bit for bit instead).
 * Without a Vulkan build this test skips and says why; with one but no
 * device it fails, unless QG_ALLOW_NO_VULKAN=1.
 */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef QG_HAVE_VULKAN

#include "qg_ref_ops.h"

#include "exec/vulkan/qg_vulkan.h"
#include "graph/qg_sched.h"
#include "ops/quant/qg_quant.h"

/* ---- random numbers -------------------------------------------------------- */

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

/* ---- executors: [v] folded, [N_VK + v] QG_VK_NO_FOLD ------------------------ */

#define N_VK 2
static qg_exec g_vk[2 * N_VK];
static qg_exec g_cpu;
static bool g_have;
static char g_why[600];

static int setup(void **state) {
    (void)state;
    qg_error err = {0};
    qg_exec_opts eo = {.n_threads = 1, .device = -1};
    if (qg_exec_cpu_new(&eo, &g_cpu, &err)) return -1;
    const qg_vk_opts vo[N_VK] = {{.validation = true}, {.no_subgroup = true}};
    for (int i = 0; i < 2 * N_VK; i++) {
        if (i == N_VK) setenv("QG_VK_NO_FOLD", "1", 1);
        qg_status st = qg_exec_vulkan_new_ex(&eo, &vo[i % N_VK], &g_vk[i], &err);
        if (i == 2 * N_VK - 1 || st) unsetenv("QG_VK_NO_FOLD");
        if (st) {
            snprintf(g_why, sizeof g_why, "%s", err.msg);
            for (int j = 0; j < i; j++) g_vk[j].i->free(g_vk[j].self);
            return 0;
        }
    }
    g_have = true;
    printf("vulkan device: %s\n", qg_exec_vulkan_device_name(&g_vk[0]));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (g_have)
        for (int i = 0; i < 2 * N_VK; i++) g_vk[i].i->free(g_vk[i].self);
    g_cpu.i->free(g_cpu.self);
    return 0;
}

static void need_vulkan(void) {
    if (g_have) return;
    const char *allow = getenv("QG_ALLOW_NO_VULKAN");
    if (allow && !strcmp(allow, "1")) {
        printf("SKIP: Vulkan unavailable: %s (QG_ALLOW_NO_VULKAN=1)\n", g_why);
        skip();
    }
    fail_msg("Vulkan unavailable: %s (set QG_ALLOW_NO_VULKAN=1 to skip)", g_why);
}

/* ---- a decode graph with host copies ---------------------------------------- */

#define MAXT 24
#define POISON 0xFF

typedef struct fx {
    qg_graph *g;
    void *host[MAXT];
    int outs[8], n_outs;     /* poisoned, read back, checked */
    int probes[4], n_probes; /* dropped intermediates: poisoned, read back */
} fx;

/* A decode graph of a context of C rows. */
static void fx_init_ctx(fx *f, int C) {
    memset(f, 0, sizeof *f);
    f->g = qg_graph_new(QG_PHASE_DECODE, 1, C);
    assert_non_null(f->g);
    const int64_t n = QG_STEP_N;
    f->g->t_step = qg_graph_add_tensor(f->g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &n, NULL);
    f->host[f->g->t_step] = calloc(1, f->g->tensors[f->g->t_step].nbytes);
}

static void fx_init(fx *f) { fx_init_ctx(f, 16); }

static void fx_free(fx *f) {
    for (int i = 0; i < f->g->n_tensors && i < MAXT; i++) free(f->host[i]);
    qg_graph_free(f->g);
}

static int fx_tensor(fx *f, const char *name, qg_dtype type, qg_role role, int nd, int64_t e0,
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

/* A weight of random values in [-s, s], quantized per row of e0. */
static int fx_weight(fx *f, const char *name, qg_dtype type, int nd, int64_t e0, int64_t e1,
                     int64_t e2, rng *r, float s) {
    const int id = fx_tensor(f, name, type, QG_ROLE_WEIGHT, nd, e0, e1, e2);
    const size_t rb = qg_dtype_row_bytes(type, e0);
    float *src = malloc(sizeof(float) * (size_t)e0);
    assert_non_null(src);
    for (int64_t i = 0; i < e1 * e2; i++) {
        for (int64_t j = 0; j < e0; j++) src[j] = rng_unif(r, -s, s);
        qg_quantize_row(type, src, (char *)f->host[id] + (size_t)i * rb, e0);
    }
    free(src);
    return id;
}

static float *F32(fx *f, int id) { return f->host[id]; }
static int32_t *I32(fx *f, int id) { return f->host[id]; }

static int node(fx *f, qg_op op, const char *name, const int *in, int n_in, const int *out,
                int n_out, float eps) {
    qg_op_params p = {.eps = eps};
    return qg_graph_add_node(f->g, op, name, 0, in, n_in, out, n_out, &p);
}

/* The graph's schedule on the Vulkan executor: every node on it. */
static void fx_schedule(fx *f) {
    const qg_exec execs[2] = {g_vk[0], g_cpu};
    qg_place_opts po = {.n_exec = 2, .execs = execs, .cpu_index = 1};
    qg_error err = {0};
    if (qg_graph_schedule(f->g, false, &po, &err)) fail_msg("schedule: %s", err.msg);
    for (int i = 0; i < f->g->n_nodes; i++)
        if (f->g->nodes[i].exec != 0) fail_msg("node %s not placed on vulkan", f->g->nodes[i].name);
}

/* Compile on e, write the inputs and KV tensors, poison outputs and
 * probes, run one token, read outputs, probes and KV tensors back,
 * release. */
static void fx_run(fx *f, const qg_exec *e, const char *label) {
    qg_graph *g = f->g;
    qg_error err = {0};
    if (g->kv_bytes[0] && e->i->kv_alloc(e->self, g->kv_bytes[0], &err))
        fail_msg("%s: kv_alloc: %s", label, err.msg);
    if (e->i->compile(e->self, g, 0, &err)) fail_msg("%s: compile: %s", label, err.msg);
    const int32_t step[QG_STEP_N] = {1, 1, 0, 0};
    memcpy(f->host[g->t_step], step, sizeof step);
    for (int t = 0; t < g->n_tensors; t++) {
        const qg_tensor *ts = &g->tensors[t];
        bool out = false;
        for (int i = 0; i < f->n_outs; i++) out |= f->outs[i] == t;
        for (int i = 0; i < f->n_probes; i++) out |= f->probes[i] == t;
        if (out) memset(f->host[t], POISON, ts->nbytes);
        else if (ts->role != QG_ROLE_INPUT && ts->role != QG_ROLE_KV) continue;
        if (e->i->tensor_set(e->self, g, t, f->host[t], 0, ts->nbytes, &err))
            fail_msg("%s: tensor_set %s: %s", label, ts->name, err.msg);
    }
    for (int p = 0; p < g->n_parts; p++)
        if (e->i->run(e->self, g, p, step, NULL, &err)) fail_msg("%s: run: %s", label, err.msg);
    if (e->i->sync(e->self, &err)) fail_msg("%s: sync: %s", label, err.msg);
    for (int i = 0; i < f->n_outs + f->n_probes; i++) {
        const int t = i < f->n_outs ? f->outs[i] : f->probes[i - f->n_outs];
        if (e->i->tensor_get(e->self, g, t, f->host[t], 0, g->tensors[t].nbytes, &err))
            fail_msg("%s: tensor_get %s: %s", label, g->tensors[t].name, err.msg);
    }
    for (int t = 0; t < g->n_tensors; t++)
        if (g->tensors[t].role == QG_ROLE_KV &&
            e->i->tensor_get(e->self, g, t, f->host[t], 0, g->tensors[t].nbytes, &err))
            fail_msg("%s: tensor_get %s: %s", label, g->tensors[t].name, err.msg);
    e->i->release(e->self, g);
    if (e == &g_vk[0] && qg_exec_vulkan_messages(e))
        fail_msg("%s: %zu validation messages (see stderr)", label, qg_exec_vulkan_messages(e));
}

/* Is tensor t alone in its memory (no other tensor of the plan overlaps
 * it)?  Only then does an untouched poison prove a dropped node. */
static bool alone(const qg_graph *g, int t) {
    const qg_tensor *a = &g->tensors[t];
    for (int u = 0; u < g->n_tensors; u++) {
        const qg_tensor *b = &g->tensors[u];
        if (u == t || b->role != a->role || b->exec != a->exec || b->first_use < 0) continue;
        if (a->offset < b->offset + b->nbytes && b->offset < a->offset + a->nbytes) return false;
    }
    return true;
}

/* ---- references ------------------------------------------------------------- */

/* xn (n) = x / sqrt(mean(x^2) + eps) * w, in double. */
static void ref_norm(const float *x, const float *w, int64_t n, float eps, double *xn) {
    qg_ref_rmsnorm(x, w, n, 1, eps, xn);
}

/* y (m) = W xn for W (n, m[, e]) of type t, rows from `row0`; yabs =
 * sum |w| |xn|; weights dequantized exactly (as float, then double). */
static void ref_mv(qg_dtype t, const void *w, int64_t n, int64_t m, int64_t row0, const double *xn,
                   double *y, double *yabs) {
    const size_t rb = qg_dtype_row_bytes(t, n);
    double *row = malloc(sizeof(double) * (size_t)n);
    assert_non_null(row);
    for (int64_t r = 0; r < m; r++) {
        qg_dequant_row_f64(t, (const char *)w + (size_t)(row0 + r) * rb, row, n);
        double s = 0, a = 0;
        for (int64_t i = 0; i < n; i++) {
            s += row[i] * xn[i];
            a += fabs(row[i] * xn[i]);
        }
        y[r] = s;
        yabs[r] = a;
    }
    free(row);
}

/* |y - ref| <= rel * mag + abs for every element, y finite. */
static void expect_close(const char *label, const char *what, const float *y, const double *ref,
                         const double *mag, int64_t n, double rel, double abs_tol) {
    for (int64_t i = 0; i < n; i++) {
        const double tol = rel * mag[i] + abs_tol;
        if (!isfinite(y[i]) || fabs((double)y[i] - ref[i]) > tol)
            fail_msg("%s: %s[%lld] = %.9g, reference %.9g, tolerance %.3g", label, what,
                     (long long)i, (double)y[i], ref[i], tol);
    }
}

/* ---- the driver ----------------------------------------------------------------- */

typedef struct fcase fcase;
struct fcase {
    fx f;
    /* float64 check of the outputs of a run (host copies hold its results) */
    void (*check)(fcase *c, const char *label);
    int x, nw, res;       /* raw x, norm weight (-1: no norm), residual (-1) */
    int w[5];             /* weights */
    int y[3];             /* outputs (y[1..] -1 when absent) */
    int ids, wts;         /* moe: chosen experts, their weights */
    float eps;
    int64_t n, m, F, X, K;
};

/* Run c on the folded and the unfolded executors (fresh inputs each
 * round): float64 checks, bit equality, the probes. */
static void run_fcase(fcase *c, int test) {
    fx *f = &c->f;
    fx_schedule(f);
    for (int round = 0; round < 3; round++)
        for (int v = 0; v < N_VK; v++) {
            rng r = {(uint64_t)test * 1000003u + (uint64_t)round * 17u + (uint64_t)v};
            for (int64_t i = 0; i < c->n; i++) F32(f, c->x)[i] = rng_unif(&r, -2, 2);
            if (c->res >= 0)
                for (int64_t i = 0; i < qg_tensor_nelem(&f->g->tensors[c->res]); i++)
                    F32(f, c->res)[i] = rng_unif(&r, -3, 3);
            unsigned char *got[8];
            for (int k = 0; k < 2; k++) {
                const qg_exec *e = &g_vk[k * N_VK + v];
                char label[160];
                snprintf(label, sizeof label, "%s round %d %s %s", f->g->nodes[f->g->n_nodes - 1].name,
                         round, v ? "shared-memory" : "subgroups", k ? "unfolded" : "folded");
                fx_run(f, e, label);
                /* the dropped intermediates: untouched when folded, written
                 * when not */
                for (int i = 0; i < f->n_probes; i++) {
                    const int t = f->probes[i];
                    const size_t nb = f->g->tensors[t].nbytes;
                    if (!alone(f->g, t))
                        fail_msg("%s: test setup: %s shares memory", label, f->g->tensors[t].name);
                    size_t poisoned = 0;
                    for (size_t b = 0; b < nb; b++) poisoned += ((unsigned char *)f->host[t])[b] == POISON;
                    if (k == 0 && poisoned != nb)
                        fail_msg("%s: %s was written: its node was not folded", label,
                                 f->g->tensors[t].name);
                    if (k == 1 && poisoned == nb)
                        fail_msg("%s: %s was not written by the unfolded run", label,
                                 f->g->tensors[t].name);
                }
                c->check(c, label);
                for (int i = 0; i < f->n_outs; i++) {
                    const int t = f->outs[i];
                    const size_t nb = f->g->tensors[t].nbytes;
                    if (k == 0) {
                        got[i] = malloc(nb);
                        assert_non_null(got[i]);
                        memcpy(got[i], f->host[t], nb);
                    } else {
                        if (memcmp(got[i], f->host[t], nb))
                            fail_msg("%s: %s: folded and unfolded runs differ", label,
                                     f->g->tensors[t].name);
                        free(got[i]);
                    }
                }
            }
        }
}

/* xn of the run's x, in double (or x itself without a norm). */
static double *run_xn(fcase *c) {
    double *xn = malloc(sizeof(double) * (size_t)c->n);
    assert_non_null(xn);
    if (c->nw >= 0) ref_norm(F32(&c->f, c->x), F32(&c->f, c->nw), c->n, c->eps, xn);
    else
        for (int64_t i = 0; i < c->n; i++) xn[i] = F32(&c->f, c->x)[i];
    return xn;
}

/* Products (qkv parts, matmul, lm_head, router; + residual): f32
 * accumulation of exact products of weights with the f32-rounded xn:
 * |y - ref| <= 1e-5 (sum |w| |xn| + |res|) + 1e-6. */
static void check_mv(fcase *c, const char *label) {
    fx *f = &c->f;
    double *xn = run_xn(c);
    for (int k = 0; k < 3 && c->y[k] >= 0; k++) {
        const qg_tensor *wt = &f->g->tensors[c->w[k]];
        const int64_t m = wt->ne[1];
        double *ref = malloc(sizeof(double) * (size_t)m), *mag = malloc(sizeof(double) * (size_t)m);
        assert_true(ref && mag);
        ref_mv(wt->type, f->host[c->w[k]], c->n, m, 0, xn, ref, mag);
        if (c->res >= 0)
            for (int64_t i = 0; i < m; i++) {
                ref[i] += F32(f, c->res)[i];
                mag[i] += fabs(F32(f, c->res)[i]);
            }
        expect_close(label, f->g->tensors[c->y[k]].name, F32(f, c->y[k]), ref, mag, m, 1e-5, 1e-6);
        free(ref);
        free(mag);
    }
    free(xn);
}

/* silu(g) * u rows of gate/up rows [row0, row0 + F) (h, habs: its error
 * magnitude for dot errors of 1e-5 |.| as in qg_ref_swiglu_val). */
static void ref_swiglu_rows(fcase *c, int gw, int uw, int64_t row0, const double *xn, double *h,
                            double *habs) {
    fx *f = &c->f;
    double *g = malloc(sizeof(double) * (size_t)c->F), *u = malloc(sizeof(double) * (size_t)c->F);
    double *ga = malloc(sizeof(double) * (size_t)c->F), *ua = malloc(sizeof(double) * (size_t)c->F);
    assert_true(g && u && ga && ua);
    ref_mv(f->g->tensors[gw].type, f->host[gw], c->n, c->F, row0, xn, g, ga);
    ref_mv(f->g->tensors[uw].type, f->host[uw], c->n, c->F, row0, xn, u, ua);
    for (int64_t i = 0; i < c->F; i++) h[i] = qg_ref_swiglu_val(g[i], u[i], ga[i], ua[i], &habs[i]);
    free(g);
    free(u);
    free(ga);
    free(ua);
}

/* Dense swiglu: |h - ref| <= 1e-5 habs + 1e-6 (the ops test's bound). */
static void check_swiglu(fcase *c, const char *label) {
    double *xn = run_xn(c);
    double *h = malloc(sizeof(double) * (size_t)c->F), *ha = malloc(sizeof(double) * (size_t)c->F);
    assert_true(h && ha);
    ref_swiglu_rows(c, c->w[0], c->w[1], 0, xn, h, ha);
    expect_close(label, "h", F32(&c->f, c->y[0]), h, ha, c->F, 1e-5, 1e-6);
    free(h);
    free(ha);
    free(xn);
}

static int cmp_desc(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* moe_fused + add.  Routing: K distinct valid ids whose reference
 * probabilities are within 1e-6 of the reference's K-th largest or above;
 * weights within 1e-6 of the reference renormalization over the chosen
 * ids.  y against res + sum_k wts_k D_e h_e with the run's ids and wts:
 * |y - ref| <= 1e-5 (|res| + sum_k |wts_k| sum_f |D| habs_f) + 1e-6. */
static void check_moe(fcase *c, const char *label) {
    fx *f = &c->f;
    const int64_t n = c->n, X = c->X, K = c->K, F = c->F;
    double *xn = run_xn(c);
    double *lg = malloc(sizeof(double) * (size_t)X), *la = malloc(sizeof(double) * (size_t)X);
    double *p = malloc(sizeof(double) * (size_t)X);
    assert_true(lg && la && p);
    ref_mv(QG_F32, f->host[c->w[0]], n, X, 0, xn, lg, la);
    double mx = -INFINITY, sum = 0;
    for (int64_t e = 0; e < X; e++) mx = fmax(mx, lg[e]);
    for (int64_t e = 0; e < X; e++) sum += (p[e] = exp(lg[e] - mx));
    for (int64_t e = 0; e < X; e++) p[e] /= sum;
    /* the reference's K-th largest probability */
    double *ps = malloc(sizeof(double) * (size_t)X);
    assert_non_null(ps);
    memcpy(ps, p, sizeof(double) * (size_t)X);
    qsort(ps, (size_t)X, sizeof(double), cmp_desc);
    const double kth = ps[K - 1];
    free(ps);
    const int32_t *ids = I32(f, c->ids);
    const float *wts = F32(f, c->wts);
    double wsum = 0;
    for (int64_t k = 0; k < K; k++) {
        if (ids[k] < 0 || ids[k] >= X) fail_msg("%s: expert id %d out of range", label, ids[k]);
        for (int64_t j = 0; j < k; j++)
            if (ids[j] == ids[k]) fail_msg("%s: expert %d chosen twice", label, ids[k]);
        if (p[ids[k]] < kth - 1e-6)
            fail_msg("%s: expert %d (p %.9g) is not among the top %lld (K-th p %.9g)", label,
                     ids[k], p[ids[k]], (long long)K, kth);
        wsum += p[ids[k]];
    }
    for (int64_t k = 0; k < K; k++)
        if (!isfinite(wts[k]) || fabs(wts[k] - p[ids[k]] / wsum) > 1e-6)
            fail_msg("%s: weight %lld = %.9g, reference %.9g", label, (long long)k, (double)wts[k],
                     p[ids[k]] / wsum);
    /* y */
    const qg_tensor *dt = &f->g->tensors[c->w[3]];
    double *y = calloc((size_t)n, sizeof(double)), *ya = calloc((size_t)n, sizeof(double));
    double *h = malloc(sizeof(double) * (size_t)F), *ha = malloc(sizeof(double) * (size_t)F);
    double *d = malloc(sizeof(double) * (size_t)F);
    assert_true(y && ya && h && ha && d);
    const size_t rb = qg_dtype_row_bytes(dt->type, F);
    for (int64_t k = 0; k < K; k++) {
        ref_swiglu_rows(c, c->w[1], c->w[2], (int64_t)ids[k] * F, xn, h, ha);
        for (int64_t r = 0; r < n; r++) {
            qg_dequant_row_f64(dt->type, (const char *)f->host[c->w[3]] + (size_t)(ids[k] * n + r) * rb,
                               d, F);
            double s = 0, a = 0;
            for (int64_t i = 0; i < F; i++) {
                s += d[i] * h[i];
                a += fabs(d[i]) * (ha[i] + fabs(h[i]));
            }
            y[r] += wts[k] * s;
            ya[r] += fabs(wts[k]) * a;
        }
    }
    for (int64_t r = 0; r < n; r++) {
        y[r] += F32(f, c->res)[r];
        ya[r] += fabs(F32(f, c->res)[r]);
    }
    expect_close(label, "y", F32(f, c->y[0]), y, ya, n, 1e-5, 1e-6);
    free(y);
    free(ya);
    free(h);
    free(ha);
    free(d);
    free(lg);
    free(la);
    free(p);
    free(xn);
}

/* ---- cases ---------------------------------------------------------------------- */

static void fcase_init(fcase *c, int64_t n, float eps) {
    memset(c, 0, sizeof *c);
    fx_init(&c->f);
    c->n = n;
    c->eps = eps;
    c->nw = c->res = c->ids = c->wts = -1;
    for (int i = 0; i < 3; i++) c->y[i] = -1;
}

/* x (n) -> [rmsnorm ->] xn; returns the product's input tensor. */
static int add_norm(fcase *c, bool norm, rng *r) {
    fx *f = &c->f;
    c->x = fx_tensor(f, "x", QG_F32, QG_ROLE_INPUT, 2, c->n, 1, 1);
    if (!norm) return c->x;
    c->nw = fx_weight(f, "norm", QG_F32, 1, c->n, 1, 1, r, 2.0f);
    const int xn = fx_tensor(f, "xn", QG_F32, QG_ROLE_ACT, 2, c->n, 1, 1);
    node(f, QG_OP_RMSNORM, "rmsnorm", (int[]){c->x, c->nw}, 2, (int[]){xn}, 1, c->eps);
    f->probes[f->n_probes++] = xn;
    return xn;
}

/* [rmsnorm ->] product p (m) [-> add(res, p) -> y] */
static void add_resid(fcase *c, int p, int64_t m) {
    fx *f = &c->f;
    c->res = fx_tensor(f, "res", QG_F32, QG_ROLE_INPUT, 2, m, 1, 1);
    c->y[0] = fx_tensor(f, "y", QG_F32, QG_ROLE_OUTPUT, 2, m, 1, 1);
    node(f, QG_OP_ADD, "add", (int[]){c->res, p}, 2, (int[]){c->y[0]}, 1, 0);
    f->probes[f->n_probes++] = p;
    f->outs[f->n_outs++] = c->y[0];
}

static void test_norm_qkv(void **state) {
    (void)state;
    need_vulkan();
    const int64_t ns[] = {256, 2048};
    for (int ci = 0; ci < 2; ci++) {
        rng r = {0xf00d0001u + (uint64_t)ci};
        fcase c;
        fcase_init(&c, ns[ci], ci ? 1e-6f : 0.25f);
        fx *f = &c.f;
        const int xn = add_norm(&c, true, &r);
        const qg_dtype ts[3] = {QG_Q4_K, QG_Q6_K, QG_Q8_0};
        const int64_t ms[3] = {128, 64, 96};
        const char *names[3] = {"q", "k", "v"};
        for (int i = 0; i < 3; i++) {
            c.w[i] = fx_weight(f, names[i], ts[i], 2, c.n, ms[i], 1, &r, 1.0f);
            c.y[i] = fx_tensor(f, names[i], QG_F32, QG_ROLE_OUTPUT, 2, ms[i], 1, 1);
            f->outs[f->n_outs++] = c.y[i];
        }
        node(f, QG_OP_QKV, "norm+qkv", (int[]){xn, c.w[0], c.w[1], c.w[2]}, 4,
             (int[]){c.y[0], c.y[1], c.y[2]}, 3, 0);
        c.check = check_mv;
        run_fcase(&c, 1 + ci);
        fx_free(f);
    }
}

static void test_matmul_add(void **state) {
    (void)state;
    need_vulkan();
    /* with and without the norm; a row count that is not a multiple of the
     * rows per workgroup; F32 and quantized weights */
    const qg_dtype ts[] = {QG_Q5_K, QG_F32, QG_Q4_0};
    for (int ci = 0; ci < 3; ci++) {
        rng r = {0xf00d0100u + (uint64_t)ci};
        fcase c;
        fcase_init(&c, ci == 1 ? 96 : 512, 1e-5f);
        fx *f = &c.f;
        const int x = add_norm(&c, ci != 2, &r);
        const int64_t m = ci == 0 ? 4100 : 250;
        c.w[0] = fx_weight(f, "w", ts[ci], 2, c.n, m, 1, &r, 0.5f);
        const int p = fx_tensor(f, "p", QG_F32, QG_ROLE_ACT, 2, m, 1, 1);
        node(f, QG_OP_MATMUL, "matmul", (int[]){c.w[0], x}, 2, (int[]){p}, 1, 0);
        add_resid(&c, p, m);
        c.check = check_mv;
        run_fcase(&c, 10 + ci);
        fx_free(f);
    }
}

static void test_norm_heads(void **state) {
    (void)state;
    need_vulkan();
    /* lm_head, router, dense swiglu */
    for (int ci = 0; ci < 3; ci++) {
        rng r = {0xf00d0200u + (uint64_t)ci};
        fcase c;
        fcase_init(&c, 256, 1e-6f);
        fx *f = &c.f;
        const int xn = add_norm(&c, true, &r);
        if (ci < 2) {
            const int64_t m = ci == 0 ? 1000 : 64;
            c.w[0] = fx_weight(f, "w", ci == 0 ? QG_Q6_K : QG_F32, 2, c.n, m, 1, &r, 1.0f);
            c.y[0] = fx_tensor(f, "y", QG_F32, QG_ROLE_OUTPUT, 2, m, 1, 1);
            qg_op_params p = {.only_last = true};
            qg_graph_add_node(f->g, ci == 0 ? QG_OP_LM_HEAD : QG_OP_ROUTER,
                              ci == 0 ? "norm+lm_head" : "norm+router", 0, (int[]){xn, c.w[0]}, 2,
                              (int[]){c.y[0]}, 1, &p);
            c.check = check_mv;
        } else {
            c.F = 384;
            c.w[0] = fx_weight(f, "gate", QG_Q4_K, 2, c.n, c.F, 1, &r, 1.0f);
            c.w[1] = fx_weight(f, "up", QG_Q5_K, 2, c.n, c.F, 1, &r, 1.0f);
            c.y[0] = fx_tensor(f, "h", QG_F32, QG_ROLE_OUTPUT, 2, c.F, 1, 1);
            node(f, QG_OP_SWIGLU, "norm+swiglu", (int[]){xn, c.w[0], c.w[1]}, 3, (int[]){c.y[0]},
                 1, 0);
            c.check = check_swiglu;
        }
        f->outs[f->n_outs++] = c.y[0];
        run_fcase(&c, 20 + ci);
        fx_free(f);
    }
}

static void test_norm_moe_add(void **state) {
    (void)state;
    need_vulkan();
    const qg_dtype ts[][3] = {{QG_Q4_K, QG_Q4_K, QG_Q6_K}, {QG_Q8_0, QG_F16, QG_Q5_K}};
    for (int ci = 0; ci < 2; ci++) {
        rng r = {0xf00d0300u + (uint64_t)ci};
        fcase c;
        fcase_init(&c, 256, 1e-6f);
        fx *f = &c.f;
        c.X = 16, c.K = 4, c.F = 256;
        const int xn = add_norm(&c, true, &r);
        /* the router's first workgroup stores the normalized x for the
         * expert swiglu: xn is written, equal to the rmsnorm's bit for bit */
        f->n_probes--;
        f->outs[f->n_outs++] = xn;
        c.w[0] = fx_weight(f, "gate_inp", QG_F32, 2, c.n, c.X, 1, &r, 0.5f);
        c.w[1] = fx_weight(f, "gate", ts[ci][0], 3, c.n, c.F, c.X, &r, 1.0f);
        c.w[2] = fx_weight(f, "up", ts[ci][1], 3, c.n, c.F, c.X, &r, 1.0f);
        c.w[3] = fx_weight(f, "down", ts[ci][2], 3, c.F, c.n, c.X, &r, 1.0f);
        const int o = fx_tensor(f, "moe_out", QG_F32, QG_ROLE_ACT, 2, c.n, 1, 1);
        c.ids = fx_tensor(f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, c.K, 1, 1);
        c.wts = fx_tensor(f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, c.K, 1, 1);
        node(f, QG_OP_MOE_FUSED, "moe", (int[]){xn, c.w[0], c.w[1], c.w[2], c.w[3]}, 5,
             (int[]){o, c.ids, c.wts}, 3, 0);
        f->outs[f->n_outs++] = c.ids;
        f->outs[f->n_outs++] = c.wts;
        add_resid(&c, o, c.n);
        c.check = check_moe;
        run_fcase(&c, 30 + ci);
        fx_free(f);
    }
}

/* ---- rope -> attention ------------------------------------------------------- */

typedef struct ra_case {
    fx f;
    int q, k, v, qn, kn, pos, qr, kr, kc, vc, o;
    int hd, nh, nkv, C;
    qg_dtype ct;
} ra_case;

static double cache_at(const ra_case *c, int id, size_t i) {
    return c->ct == QG_F16 ? (double)qg_f16_to_f32(((const uint16_t *)c->f.host[id])[i])
                           : (double)((const float *)c->f.host[id])[i];
}

/* Rope outputs against qg_ref_rope: |y - ref| <= 1e-5 |(ref_i, ref_pair)|
 * + 1e-6 (f32 norm and rotation; the ops test's bound).  Cache row pos:
 * f16 / f32 of k_rope and v bit for bit; the other rows as written before
 * the run (kc0, vc0).  o against qg_ref_attention over the caches as
 * written: |o - ref| <= 2e-5 (1 + qk_abs) pv_abs + 1e-6 (test_vulkan_ops'
 * bound). */
static void ra_check(ra_case *c, const void *kc0, const void *vc0, const char *label) {
    fx *f = &c->f;
    const int hd = c->hd, half = hd / 2, Dq = hd * c->nh, Dkv = hd * c->nkv, p = I32(f, c->pos)[0];
    double *qr = malloc(sizeof(double) * (size_t)Dq), *kr = malloc(sizeof(double) * (size_t)Dkv);
    assert_true(qr && kr);
    qg_ref_rope(F32(f, c->q), F32(f, c->k), F32(f, c->qn), F32(f, c->kn), &I32(f, c->pos)[0], 1, hd,
                c->nh, c->nkv, 1e-6, 1e6, qr, kr);
    for (int m = 0; m < 2; m++) {
        const double *ref = m ? kr : qr;
        const float *y = F32(f, m ? c->kr : c->qr);
        for (int i = 0; i < (m ? Dkv : Dq); i++) {
            const int j = (i % hd) < half ? i + half : i - half;
            const double tol = 1e-5 * hypot(ref[i], ref[j]) + 1e-6;
            if (!isfinite(y[i]) || fabs(y[i] - ref[i]) > tol)
                fail_msg("%s: %s[%d] = %.9g, reference %.9g", label, m ? "k_rope" : "q_rope", i,
                         (double)y[i], ref[i]);
        }
    }
    const size_t es = c->ct == QG_F16 ? 2 : 4;
    for (int m = 0; m < 2; m++) {
        const unsigned char *now = f->host[m ? c->vc : c->kc], *before = m ? vc0 : kc0;
        const float *src = F32(f, m ? c->v : c->kr);
        for (int row = 0; row < c->C; row++)
            for (int i = 0; i < Dkv; i++) {
                const size_t off = ((size_t)row * (size_t)Dkv + (size_t)i) * es;
                if (row != p) {
                    if (memcmp(now + off, before + off, es))
                        fail_msg("%s: cache row %d changed", label, row);
                    continue;
                }
                bool ok;
                if (c->ct == QG_F16) {
                    uint16_t h;
                    memcpy(&h, now + off, 2);
                    ok = h == qg_f32_to_f16(src[i]);
                } else {
                    ok = !memcmp(now + off, &src[i], 4);
                }
                if (!ok) fail_msg("%s: %s cache row %d [%d] wrong", label, m ? "v" : "k", row, i);
            }
    }
    const size_t nc = (size_t)Dkv * (size_t)c->C;
    double *kd = malloc(sizeof(double) * nc), *vd = malloc(sizeof(double) * nc);
    double *ref = malloc(sizeof(double) * (size_t)Dq), *pva = malloc(sizeof(double) * (size_t)Dq);
    double *qka = malloc(sizeof(double) * (size_t)c->nh), *mag = malloc(sizeof(double) * (size_t)Dq);
    assert_true(kd && vd && ref && pva && qka && mag);
    for (size_t i = 0; i < nc; i++) {
        kd[i] = cache_at(c, c->kc, i);
        vd[i] = cache_at(c, c->vc, i);
    }
    qg_ref_attention(F32(f, c->qr), kd, vd, &I32(f, c->pos)[0], 1, hd, c->nh, c->nkv, ref, pva, qka);
    for (int i = 0; i < Dq; i++) mag[i] = (1.0 + qka[i / hd]) * pva[i];
    expect_close(label, "o", F32(f, c->o), ref, mag, Dq, 2e-5, 1e-6);
    free(qr);
    free(kr);
    free(kd);
    free(vd);
    free(ref);
    free(pva);
    free(qka);
    free(mag);
}

static void test_rope_attention(void **state) {
    (void)state;
    need_vulkan();
    const int shapes[][3] = {{128, 8, 2}, {64, 4, 4}, {256, 2, 1}}; /* hd, nh, nkv */
    for (int si = 0; si < 3; si++)
        for (int ci = 0; ci < 2; ci++) {
            ra_case c = {.hd = shapes[si][0], .nh = shapes[si][1], .nkv = shapes[si][2], .C = 80,
                         .ct = ci ? QG_F32 : QG_F16};
            fx *f = &c.f;
            fx_init_ctx(f, c.C);
            rng r = {0xf00d0400u + (uint64_t)(si * 2 + ci)};
            const int Dq = c.hd * c.nh, Dkv = c.hd * c.nkv;
            c.q = fx_tensor(f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, 1, 1);
            c.k = fx_tensor(f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, 1, 1);
            c.v = fx_tensor(f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, 1, 1);
            c.qn = fx_weight(f, "q_norm", QG_F32, 1, c.hd, 1, 1, &r, 2.0f);
            c.kn = fx_weight(f, "k_norm", QG_F32, 1, c.hd, 1, 1, &r, 2.0f);
            c.pos = fx_tensor(f, "pos", QG_I32, QG_ROLE_INPUT, 1, 1, 1, 1);
            f->g->t_pos = c.pos;
            c.qr = fx_tensor(f, "q_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dq, 1, 1);
            c.kr = fx_tensor(f, "k_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, 1, 1);
            c.kc = fx_tensor(f, "cache_k", c.ct, QG_ROLE_KV, 2, Dkv, c.C, 1);
            c.vc = fx_tensor(f, "cache_v", c.ct, QG_ROLE_KV, 2, Dkv, c.C, 1);
            c.o = fx_tensor(f, "o", QG_F32, QG_ROLE_OUTPUT, 2, Dq, 1, 1);
            qg_op_params p = {.eps = 1e-6f, .rope_theta = 1e6f, .head_dim = c.hd, .n_head = c.nh,
                              .n_head_kv = c.nkv};
            qg_graph_add_node(f->g, QG_OP_ROPE, "rope", 0, (int[]){c.q, c.k, c.qn, c.kn, c.pos}, 5,
                              (int[]){c.qr, c.kr}, 2, &p);
            qg_graph_add_node(f->g, QG_OP_ATTENTION, "rope+attention", 0,
                              (int[]){c.qr, c.kr, c.v, c.kc, c.vc, c.pos}, 6, (int[]){c.o}, 1, &p);
            f->outs[f->n_outs++] = c.qr;
            f->outs[f->n_outs++] = c.kr;
            f->outs[f->n_outs++] = c.o;
            fx_schedule(f);
            const size_t cb = f->g->tensors[c.kc].nbytes;
            void *kc0 = malloc(cb), *vc0 = malloc(cb), *got[5];
            assert_true(kc0 && vc0);
            const int positions[] = {0, 1, 31, 32, 79}; /* blocks of 32 (F16) and 16 (F32) rows */
            for (int pi = 0; pi < 5; pi++)
                for (int v = 0; v < N_VK; v++) {
                    for (int i = 0; i < Dq; i++) F32(f, c.q)[i] = rng_unif(&r, -2, 2);
                    for (int i = 0; i < Dkv; i++) {
                        F32(f, c.k)[i] = rng_unif(&r, -2, 2);
                        F32(f, c.v)[i] = rng_unif(&r, -1, 1);
                    }
                    I32(f, c.pos)[0] = positions[pi];
                    for (size_t i = 0; i < cb / (c.ct == QG_F16 ? 2 : 4); i++) {
                        const float a = rng_unif(&r, -1, 1), b = rng_unif(&r, -1, 1);
                        if (c.ct == QG_F16) {
                            ((uint16_t *)kc0)[i] = qg_f32_to_f16(a);
                            ((uint16_t *)vc0)[i] = qg_f32_to_f16(b);
                        } else {
                            ((float *)kc0)[i] = a;
                            ((float *)vc0)[i] = b;
                        }
                    }
                    const int ids[5] = {c.qr, c.kr, c.o, c.kc, c.vc};
                    for (int k = 0; k < 2; k++) {
                        char label[160];
                        snprintf(label, sizeof label, "rope+attention hd %d nh %d nkv %d %s pos %d %s %s",
                                 c.hd, c.nh, c.nkv, ci ? "f32" : "f16", positions[pi],
                                 v ? "shared-memory" : "subgroups", k ? "unfolded" : "folded");
                        memcpy(f->host[c.kc], kc0, cb);
                        memcpy(f->host[c.vc], vc0, cb);
                        fx_run(f, &g_vk[k * N_VK + v], label);
                        ra_check(&c, kc0, vc0, label);
                        for (int i = 0; i < 5; i++) {
                            const size_t nb = f->g->tensors[ids[i]].nbytes;
                            if (k == 0) {
                                got[i] = malloc(nb);
                                assert_non_null(got[i]);
                                memcpy(got[i], f->host[ids[i]], nb);
                            } else {
                                if (memcmp(got[i], f->host[ids[i]], nb))
                                    fail_msg("%s: %s: folded and unfolded runs differ", label,
                                             f->g->tensors[ids[i]].name);
                                free(got[i]);
                            }
                        }
                    }
                }
            free(kc0);
            free(vc0);
            fx_free(f);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_norm_qkv),
        cmocka_unit_test(test_matmul_add),
        cmocka_unit_test(test_norm_heads),
        cmocka_unit_test(test_norm_moe_add),
        cmocka_unit_test(test_rope_attention),
    };
    if (getenv("QG_TEST_FILTER")) cmocka_set_test_filter(getenv("QG_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}

#else /* !QG_HAVE_VULKAN */

static void test_no_vulkan(void **state) {
    (void)state;
    printf("SKIP: this build has no Vulkan executor (configure with libvulkan-dev and glslc "
           "installed, QG_VULKAN=ON)\n");
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_vulkan)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif
