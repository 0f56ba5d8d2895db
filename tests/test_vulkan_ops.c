/*
 * test_vulkan_ops.c - every Vulkan shader (every node the Vulkan executor
 * records) against the float64 references of tests/ref/qg_ref_ops.h.
 *
 * Each case builds a small graph by hand (one node, or an MoE chain) with
 * host copies of every tensor, schedules it (passes 2-4) with the Vulkan
 * executor first, checks that every node landed on it, compiles it ONCE,
 * and then runs it for several live token counts (1, a few, n_tok_max)
 * with fresh random inputs each time: the same recorded command buffer
 * serves every step, only the step values and the input tensors change.
 * Per run:
 *   - inputs are written with tensor_set (dead token columns are NaN, or
 *     -1 for ids, so a shader that reads them shows it), outputs are
 *     poisoned with 0xFF bytes (NaN / -1) through tensor_set;
 *   - after the run every output is read back: each live element must be
 *     finite and within the op's tolerance of the reference (stated at each
 *     check), and the bytes past the live tokens must still hold the poison.
 * Every case runs on two executors over the same device: subgroup
 * reductions with the Khronos validation layer on (each case must leave
 * zero validation messages), and the shared-memory reduction shaders
 * (QG_SUBGROUP=0) without it.
 *
 * Without a Vulkan build this test skips and says why.  With one but no
 * device it fails, unless QG_ALLOW_NO_VULKAN=1.
 */
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

/* A different stream for every (test, case, run). */
static rng rng_for(int test, int case_id) {
    rng r = {(uint64_t)test * 0x100000001b3ull + (uint64_t)case_id * 7919u + 777u};
    rng_u64(&r);
    return r;
}

/* ---- executors ------------------------------------------------------- */

#define N_VK 2
static qg_exec g_vk[N_VK]; /* [0]: subgroups + validation, [1]: shared memory */
static qg_exec g_cpu;
static bool g_have;
static char g_why[600];

static int setup(void **state) {
    (void)state;
    qg_error err = {0};
    qg_exec_opts eo = {.n_threads = 1, .device = -1};
    if (qg_exec_cpu_new(&eo, &g_cpu, &err)) return -1;
    const qg_vk_opts vo[N_VK] = {{.validation = true}, {.no_subgroup = true}};
    for (int i = 0; i < N_VK; i++)
        if (qg_exec_vulkan_new_ex(&eo, &vo[i], &g_vk[i], &err)) {
            snprintf(g_why, sizeof g_why, "%s", err.msg);
            for (int j = 0; j < i; j++) g_vk[j].i->free(g_vk[j].self);
            return 0;
        }
    g_have = true;
    printf("vulkan device: %s\n", qg_exec_vulkan_device_name(&g_vk[0]));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (g_have)
        for (int i = 0; i < N_VK; i++) g_vk[i].i->free(g_vk[i].self);
    g_cpu.i->free(g_cpu.self);
    return 0;
}

/* Skip (QG_ALLOW_NO_VULKAN=1) or fail when there is no device. */
static void need_vulkan(void) {
    if (g_have) return;
    const char *allow = getenv("QG_ALLOW_NO_VULKAN");
    if (allow && !strcmp(allow, "1")) {
        printf("SKIP: Vulkan unavailable: %s (QG_ALLOW_NO_VULKAN=1)\n", g_why);
        skip();
    }
    fail_msg("Vulkan unavailable: %s (set QG_ALLOW_NO_VULKAN=1 to skip)", g_why);
}

/* ---- fixtures: a graph plus host copies ------------------------------ */

#define MAXT 32
#define POISON 0xFF

typedef struct fx {
    qg_graph *g;
    void *host[MAXT]; /* host copy of every tensor */
} fx;

static fx fx_make(qg_phase ph, int T, int C) {
    fx f;
    memset(&f, 0, sizeof f);
    f.g = qg_graph_new(ph, T, C);
    assert_non_null(f.g);
    const int64_t n = QG_STEP_N;
    f.g->t_step = qg_graph_add_tensor(f.g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &n, NULL);
    f.host[f.g->t_step] = calloc(1, f.g->tensors[f.g->t_step].nbytes);
    return f;
}

static void fx_free(fx *f) {
    for (int i = 0; i < f->g->n_tensors && i < MAXT; i++) free(f->host[i]);
    qg_graph_free(f->g);
}

/* A tensor of nd dims (e0, e1, e2) with its own poisoned host copy. */
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

/* A weight of random values in [-scale, scale], quantized per row. */
static int fx_weight(fx *f, const char *name, qg_dtype type, int nd, int64_t e0, int64_t e1,
                     int64_t e2, rng *r, float scale) {
    const int id = fx_tensor(f, name, type, QG_ROLE_WEIGHT, nd, e0, e1, e2);
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

static float *F32(fx *f, int id) { return f->host[id]; }
static int32_t *I32(fx *f, int id) { return f->host[id]; }

static int64_t per_tok(fx *f, int id) {
    const qg_tensor *t = &f->g->tensors[id];
    return qg_tensor_nelem(t) / t->ne[t->n_dims - 1];
}

/* First n_tok tokens of f32 tensor id uniform in [lo, hi], the rest NaN. */
static void fill_act(fx *f, int id, int n_tok, rng *r, float lo, float hi) {
    const int64_t n = per_tok(f, id), T = qg_tensor_nelem(&f->g->tensors[id]) / n;
    float *x = F32(f, id);
    for (int64_t i = 0; i < n * T; i++) x[i] = i < n * n_tok ? rng_unif(r, lo, hi) : NAN;
}

static const qg_dtype ALL_W[] = {QG_F32, QG_F16, QG_BF16, QG_Q8_0,
                                 QG_Q4_0, QG_Q4_K, QG_Q5_K, QG_Q6_K};

static int add_node(fx *f, qg_op op, const char *name, const int *in, int n_in, const int *out,
                    int n_out, const qg_op_params *p) {
    return qg_graph_add_node(f->g, op, name, 0, in, n_in, out, n_out, p);
}

/* Live bytes of tensor id: token dim last; (V,1)-style outputs of a
 * multi-token graph and KV caches are whole. */
static size_t live_bytes(fx *f, int id, int n_tok) {
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t T = f->g->n_tok_max;
    if (t->role == QG_ROLE_KV) return t->nbytes;
    if (T > 1 && t->ne[t->n_dims - 1] == T) return t->nbytes / (size_t)T * (size_t)n_tok;
    return t->nbytes;
}

static double *dalloc(int64_t n) {
    double *p = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    assert_non_null(p);
    return p;
}

/* Every y[i] finite and |y[i] - ref[i]| <= rel * mag[i] + abs_tol (mag NULL:
 * |ref[i]|). */
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

/* ---- the driver --------------------------------------------------------- */

typedef struct vcase vcase;
struct vcase {
    fx *f;
    int n_out;
    int out[10];  /* tensors written by the nodes: poisoned, read, tails checked */
    /* fresh inputs for a run of n_tok tokens (host copies) */
    void (*fill)(fx *f, const vcase *c, int n_tok, rng *r);
    void (*check)(fx *f, const vcase *c, int n_tok, const char *label);
    void *ctx;
};

static bool is_out(const vcase *c, int id) {
    for (int i = 0; i < c->n_out; i++)
        if (c->out[i] == id) return true;
    return false;
}

/* Schedule c's graph on [vulkan, cpu], then on each Vulkan executor:
 * compile once, and run it for every token count of ntoks. */
static void run_case(vcase *c, const int *ntoks, int n_ntok, int test, int case_id) {
    fx *f = c->f;
    qg_graph *g = f->g;
    const qg_exec execs[2] = {g_vk[0], g_cpu};
    qg_place_opts po = {.n_exec = 2, .execs = execs, .cpu_index = 1};
    qg_error err = {0};
    if (qg_graph_schedule(g, false, &po, &err)) fail_msg("schedule: %s", err.msg);
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].exec != 0)
            fail_msg("node %s (%s) was not placed on vulkan", g->nodes[i].name,
                     qg_op_name(g->nodes[i].op));
    for (int v = 0; v < N_VK; v++) {
        const qg_exec *e = &g_vk[v];
        if (g->kv_bytes[0] && e->i->kv_alloc(e->self, g->kv_bytes[0], &err))
            fail_msg("kv_alloc: %s", err.msg);
        if (e->i->compile(e->self, g, 0, &err)) fail_msg("compile: %s", err.msg);
        for (int k = 0; k < n_ntok; k++) {
            const int n_tok = ntoks[k];
            char label[200];
            snprintf(label, sizeof label, "%s case %d n_tok=%d/%d %s", g->nodes[g->n_nodes - 1].name,
                     case_id, n_tok, g->n_tok_max, v == 0 ? "subgroups" : "shared-memory");
            rng r = rng_for(test, case_id * 64 + k * 2 + v);
            c->fill(f, c, n_tok, &r);
            int32_t step[QG_STEP_N] = {n_tok, n_tok, 0, 0};
            memcpy(f->host[g->t_step], step, sizeof step);
            for (int t = 0; t < g->n_tensors; t++) {
                const qg_tensor *ts = &g->tensors[t];
                if (ts->role == QG_ROLE_WEIGHT || ts->exec < 0) continue;
                if (ts->role == QG_ROLE_KV) { /* fill() wrote the contents */
                } else if (is_out(c, t)) {
                    memset(f->host[t], POISON, ts->nbytes);
                } else if (ts->role != QG_ROLE_INPUT) {
                    continue;
                }
                if (e->i->tensor_set(e->self, g, t, f->host[t], 0, ts->nbytes, &err))
                    fail_msg("%s: tensor_set %s: %s", label, ts->name, err.msg);
            }
            for (int p = 0; p < g->n_parts; p++)
                if (e->i->run(e->self, g, p, step, NULL, &err)) fail_msg("%s: run: %s", label, err.msg);
            if (e->i->sync(e->self, &err)) fail_msg("%s: sync: %s", label, err.msg);
            for (int i = 0; i < c->n_out; i++) {
                const qg_tensor *ts = &g->tensors[c->out[i]];
                if (e->i->tensor_get(e->self, g, c->out[i], f->host[c->out[i]], 0, ts->nbytes, &err))
                    fail_msg("%s: tensor_get %s: %s", label, ts->name, err.msg);
                const size_t lb = live_bytes(f, c->out[i], n_tok);
                const unsigned char *b = f->host[c->out[i]];
                for (size_t j = lb; j < ts->nbytes; j++)
                    if (b[j] != POISON)
                        fail_msg("%s: %s byte %zu past the live tokens was written", label,
                                 ts->name, j);
            }
            c->check(f, c, n_tok, label);
            if (v == 0 && qg_exec_vulkan_messages(e))
                fail_msg("%s: %zu validation messages (see stderr)", label,
                         qg_exec_vulkan_messages(e));
        }
        e->i->release(e->self, g);
    }
}

#define RUN(c, ntoks, test, case_id) run_case(&(c), ntoks, (int)QG_ARRAY_LEN(ntoks), test, case_id)

/* ---- embed ------------------------------------------------------------ */

typedef struct embed_ctx {
    int w, tok, x;
    int64_t E, V;
} embed_ctx;

static void fill_embed(fx *f, const vcase *c, int n_tok, rng *r) {
    const embed_ctx *e = c->ctx;
    for (int t = 0; t < f->g->n_tok_max; t++)
        I32(f, e->tok)[t] = t < n_tok ? rng_int(r, (int)e->V) : -1;
}

static void check_embed(fx *f, const vcase *c, int n_tok, const char *label) {
    const embed_ctx *e = c->ctx;
    double *ref = dalloc(e->E * n_tok);
    qg_ref_embed(f->g->tensors[e->w].type, f->host[e->w], e->E, I32(f, e->tok), n_tok, ref);
    /* tolerance 0: the shader stores exactly the dequantized f32 values */
    expect_close(label, "x", F32(f, e->x), ref, NULL, e->E * n_tok, 0, 0);
    free(ref);
}

static void test_embed(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int64_t Es[] = {256, 2560};
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (size_t ei = 0; ei < QG_ARRAY_LEN(Es); ei++) {
            const int T = 5;
            fx f = fx_make(QG_PHASE_PREFILL, T, 16);
            rng r = rng_for(1, 1000 + case_id);
            embed_ctx e = {.E = Es[ei], .V = 11};
            e.w = fx_weight(&f, "tok_embd", ALL_W[d], 2, e.E, e.V, 1, &r, 1.0f);
            e.tok = fx_tensor(&f, "tokens", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
            f.g->t_tokens = e.tok;
            e.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, e.E, T, 1);
            qg_op_params p = {0};
            add_node(&f, QG_OP_EMBED, "embed", (int[]){e.w, e.tok}, 2, (int[]){e.x}, 1, &p);
            vcase c = {.f = &f, .n_out = 1, .out = {e.x}, .fill = fill_embed, .check = check_embed,
                       .ctx = &e};
            const int ntoks[] = {1, 2, T};
            RUN(c, ntoks, 1, case_id++);
            fx_free(&f);
        }
}

/* ---- rmsnorm, add ------------------------------------------------------ */

typedef struct rms_ctx {
    int x, w, y;
    int64_t N;
    float eps;
} rms_ctx;

static void fill_rmsnorm(fx *f, const vcase *c, int n_tok, rng *r) {
    const rms_ctx *e = c->ctx;
    fill_act(f, e->x, n_tok, r, -3, 3);
}

static void check_rmsnorm(fx *f, const vcase *c, int n_tok, const char *label) {
    const rms_ctx *e = c->ctx;
    double *ref = dalloc(e->N * n_tok);
    qg_ref_rmsnorm(F32(f, e->x), F32(f, e->w), e->N, n_tok, e->eps, ref);
    /* f32 sum of squares over a workgroup tree, inverse square root and two
     * products per element: |y - ref| <= 1e-5 |ref| + 1e-6 */
    expect_close(label, "y", F32(f, e->y), ref, NULL, e->N * n_tok, 1e-5, 1e-6);
    free(ref);
}

static void test_rmsnorm(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int64_t Ns[] = {64, 1000, 2048};
    const float epss[] = {1e-6f, 1e-5f, 0.5f};
    for (int ni = 0; ni < 3; ni++) {
        const int T = 7;
        fx f = fx_make(QG_PHASE_PREFILL, T, 16);
        rng r = rng_for(2, 1000 + case_id);
        rms_ctx e = {.N = Ns[ni], .eps = epss[ni]};
        e.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.N, T, 1);
        e.w = fx_weight(&f, "norm", QG_F32, 1, e.N, 1, 1, &r, 2.0f);
        e.y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.N, T, 1);
        qg_op_params p = {.eps = e.eps};
        add_node(&f, QG_OP_RMSNORM, "rmsnorm", (int[]){e.x, e.w}, 2, (int[]){e.y}, 1, &p);
        vcase c = {.f = &f, .n_out = 1, .out = {e.y}, .fill = fill_rmsnorm,
                   .check = check_rmsnorm, .ctx = &e};
        const int ntoks[] = {1, 3, T};
        RUN(c, ntoks, 2, case_id++);
        fx_free(&f);
    }
}

typedef struct add_ctx {
    int a, b, y;
    int64_t N;
} add_ctx;

static void fill_add(fx *f, const vcase *c, int n_tok, rng *r) {
    const add_ctx *e = c->ctx;
    fill_act(f, e->a, n_tok, r, -10, 10);
    fill_act(f, e->b, n_tok, r, -10, 10);
}

static void check_add(fx *f, const vcase *c, int n_tok, const char *label) {
    const add_ctx *e = c->ctx;
    const int64_t n = e->N * n_tok;
    double *ref = dalloc(n);
    qg_ref_add(F32(f, e->a), F32(f, e->b), n, ref);
    /* one correctly rounded f32 add: |y - ref| <= 2^-24 |ref| */
    expect_close(label, "y", F32(f, e->y), ref, NULL, n, 0x1p-24, 0);
    free(ref);
}

static void test_add(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int64_t Ns[] = {7, 300, 1024};
    for (int ni = 0; ni < 3; ni++) {
        const int T = 5;
        fx f = fx_make(QG_PHASE_PREFILL, T, 16);
        add_ctx e = {.N = Ns[ni]};
        e.a = fx_tensor(&f, "a", QG_F32, QG_ROLE_INPUT, 2, e.N, T, 1);
        e.b = fx_tensor(&f, "b", QG_F32, QG_ROLE_INPUT, 2, e.N, T, 1);
        e.y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.N, T, 1);
        qg_op_params p = {0};
        add_node(&f, QG_OP_ADD, "add", (int[]){e.a, e.b}, 2, (int[]){e.y}, 1, &p);
        vcase c = {.f = &f, .n_out = 1, .out = {e.y}, .fill = fill_add, .check = check_add,
                   .ctx = &e};
        const int ntoks[] = {1, 2, T};
        RUN(c, ntoks, 3, case_id++);
        fx_free(&f);
    }
}

/* ---- matmul, router, lm_head -------------------------------------------- */

typedef struct mm_ctx {
    int w, x, y;
    int64_t N, M;
    bool only_last;
} mm_ctx;

static void fill_mm(fx *f, const vcase *c, int n_tok, rng *r) {
    const mm_ctx *e = c->ctx;
    fill_act(f, e->x, n_tok, r, -1, 1);
}

static void check_mm(fx *f, const vcase *c, int n_tok, const char *label) {
    const mm_ctx *e = c->ctx;
    const int cols = e->only_last ? 1 : n_tok;
    const float *x = F32(f, e->x) + (e->only_last ? (size_t)(n_tok - 1) * e->N : 0);
    double *ref = dalloc(e->M * cols), *mag = dalloc(e->M * cols);
    qg_ref_matmul(f->g->tensors[e->w].type, f->host[e->w], e->N, e->M, x, cols, ref, mag);
    /* f32 accumulation of exactly dequantized products (per-invocation
     * chunk sums, then a workgroup tree):
     * |y - ref| <= 1e-5 * sum|w||x| + 1e-6 */
    expect_close(label, "y", F32(f, e->y), ref, mag, e->M * cols, 1e-5, 1e-6);
    free(ref);
    free(mag);
}

/* One matmul-like case: op MATMUL (w, x), ROUTER (x, w) or LM_HEAD (x, w). */
static void mm_case(qg_op op, int test, int case_id, qg_dtype wt, int64_t N, int64_t M, int T,
                    bool only_last) {
    fx f = fx_make(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64);
    rng r = rng_for(test, 1000 + case_id);
    mm_ctx e = {.N = N, .M = M, .only_last = only_last};
    e.w = fx_weight(&f, "w", wt, 2, N, M, 1, &r, 1.0f);
    e.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
    e.y = fx_tensor(&f, "y", QG_F32, op == QG_OP_LM_HEAD ? QG_ROLE_OUTPUT : QG_ROLE_ACT, 2, M,
                    only_last ? 1 : T, 1);
    qg_op_params p = {.only_last = only_last};
    const int *in = op == QG_OP_MATMUL ? (int[]){e.w, e.x} : (int[]){e.x, e.w};
    add_node(&f, op, qg_op_name(op), in, 2, (int[]){e.y}, 1, &p);
    vcase c = {.f = &f, .n_out = 1, .out = {e.y}, .fill = fill_mm, .check = check_mm, .ctx = &e};
    if (T == 1) {
        const int ntoks[] = {1, 1};
        RUN(c, ntoks, test, case_id);
    } else {
        const int ntoks[] = {1, 3, T};
        RUN(c, ntoks, test, case_id);
    }
    fx_free(&f);
}

static void test_matmul(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    /* rows not a multiple of the rows per workgroup; chunk counts below,
     * at and above the workgroup size; decode and prefill (NT=8 blocks) */
    const int64_t shapes[][2] = {{256, 37}, {512, 70}, {4608, 9}};
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (int si = 0; si < 3; si++) {
            mm_case(QG_OP_MATMUL, 5, case_id++, ALL_W[d], shapes[si][0], shapes[si][1], 1, false);
            mm_case(QG_OP_MATMUL, 5, case_id++, ALL_W[d], shapes[si][0], shapes[si][1], 19, false);
        }
}

static void test_router_lm_head(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const qg_dtype types[] = {QG_F32, QG_Q8_0, QG_Q6_K};
    for (int d = 0; d < 3; d++) {
        mm_case(QG_OP_ROUTER, 6, case_id++, types[d], 256, 8, 11, false);
        mm_case(QG_OP_LM_HEAD, 7, case_id++, types[d], 256, 300, 11, false);
        mm_case(QG_OP_LM_HEAD, 7, case_id++, types[d], 256, 300, 11, true);
        mm_case(QG_OP_LM_HEAD, 7, case_id++, types[d], 256, 300, 1, true);
    }
    /* more row groups than one grid dimension holds (65535 * 2 rows) */
    mm_case(QG_OP_LM_HEAD, 7, case_id++, QG_F16, 32, 140000, 1, true);
}

/* ---- qkv ---------------------------------------------------------------- */

typedef struct qkv_ctx {
    int x, w[3], y[3];
    int64_t E, m[3];
} qkv_ctx;

static void fill_qkv(fx *f, const vcase *c, int n_tok, rng *r) {
    const qkv_ctx *e = c->ctx;
    fill_act(f, e->x, n_tok, r, -1, 1);
}

static void check_qkv(fx *f, const vcase *c, int n_tok, const char *label) {
    const qkv_ctx *e = c->ctx;
    for (int i = 0; i < 3; i++) {
        double *ref = dalloc(e->m[i] * n_tok), *mag = dalloc(e->m[i] * n_tok);
        qg_ref_matmul(f->g->tensors[e->w[i]].type, f->host[e->w[i]], e->E, e->m[i], F32(f, e->x),
                      n_tok, ref, mag);
        /* as matmul: |y - ref| <= 1e-5 * sum|w||x| + 1e-6 */
        expect_close(label, i == 0 ? "q" : i == 1 ? "k" : "v", F32(f, e->y[i]), ref, mag,
                     e->m[i] * n_tok, 1e-5, 1e-6);
        free(ref);
        free(mag);
    }
}

static void test_qkv(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const qg_dtype triples[][3] = {{QG_Q4_K, QG_Q6_K, QG_Q8_0},
                                   {QG_F16, QG_BF16, QG_F32},
                                   {QG_Q5_K, QG_Q4_0, QG_Q4_K}};
    const int heads[][3] = {{16, 4, 2}, {64, 5, 1}}; /* hd, n_head, n_head_kv */
    for (int ti = 0; ti < 3; ti++)
        for (int hi = 0; hi < 2; hi++) {
            const int T = hi == 0 ? 1 : 9;
            fx f = fx_make(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64);
            rng r = rng_for(8, 1000 + case_id);
            qkv_ctx e = {.E = 256};
            const int hd = heads[hi][0];
            e.m[0] = (int64_t)hd * heads[hi][1];
            e.m[1] = e.m[2] = (int64_t)hd * heads[hi][2];
            e.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            for (int i = 0; i < 3; i++) {
                e.w[i] = fx_weight(&f, "w", triples[ti][i], 2, e.E, e.m[i], 1, &r, 1.0f);
                e.y[i] = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.m[i], T, 1);
            }
            qg_op_params p = {.head_dim = hd, .n_head = heads[hi][1], .n_head_kv = heads[hi][2]};
            add_node(&f, QG_OP_QKV, "qkv", (int[]){e.x, e.w[0], e.w[1], e.w[2]}, 4, e.y, 3, &p);
            vcase c = {.f = &f, .n_out = 3, .out = {e.y[0], e.y[1], e.y[2]}, .fill = fill_qkv,
                       .check = check_qkv, .ctx = &e};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 8, case_id++);
            fx_free(&f);
        }
}

/* ---- swiglu ---------------------------------------------------------------- */

typedef struct swiglu_ctx {
    int x, gate, up, h;
    int64_t E, F;
} swiglu_ctx;

static void fill_swiglu(fx *f, const vcase *c, int n_tok, rng *r) {
    const swiglu_ctx *e = c->ctx;
    fill_act(f, e->x, n_tok, r, -0.3f, 0.3f);
}

static void check_swiglu(fx *f, const vcase *c, int n_tok, const char *label) {
    const swiglu_ctx *e = c->ctx;
    const int64_t n = e->F * n_tok;
    double *ref = dalloc(n), *mag = dalloc(n);
    qg_ref_swiglu(f->g->tensors[e->gate].type, f->host[e->gate], f->g->tensors[e->up].type,
                  f->host[e->up], e->E, e->F, F32(f, e->x), n_tok, ref, mag);
    /* gate and up dots as matmul, propagated through silu (|silu'| <= 1.1):
     * |h - ref| <= 1e-5 * (1.1 |u| sum|g x| + |silu g| sum|u x| + |h|) + 1e-6 */
    expect_close(label, "h", F32(f, e->h), ref, mag, n, 1e-5, 1e-6);
    free(ref);
    free(mag);
}

static void test_swiglu(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    for (size_t d = 0; d < QG_ARRAY_LEN(ALL_W); d++)
        for (int ph = 0; ph < 2; ph++) {
            const int T = ph == 0 ? 1 : 10;
            fx f = fx_make(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64);
            rng r = rng_for(9, 1000 + case_id);
            swiglu_ctx e = {.E = 256, .F = 48 + 8 * (int64_t)ph};
            e.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            e.gate = fx_weight(&f, "gate", ALL_W[d], 2, e.E, e.F, 1, &r, 1.0f);
            e.up = fx_weight(&f, "up", ALL_W[(d + 3) % QG_ARRAY_LEN(ALL_W)], 2, e.E, e.F, 1, &r, 1.0f);
            e.h = fx_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, e.F, T, 1);
            qg_op_params p = {0};
            add_node(&f, QG_OP_SWIGLU, "swiglu", (int[]){e.x, e.gate, e.up}, 3, (int[]){e.h}, 1, &p);
            vcase c = {.f = &f, .n_out = 1, .out = {e.h}, .fill = fill_swiglu,
                       .check = check_swiglu, .ctx = &e};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 9, case_id++);
            fx_free(&f);
        }
}

/* ---- rope ------------------------------------------------------------------ */

typedef struct rope_ctx {
    int q, k, qn, kn, pos, qo, ko;
    int hd, nh, nkv, C;
    float eps, theta;
} rope_ctx;

static void fill_rope(fx *f, const vcase *c, int n_tok, rng *r) {
    const rope_ctx *e = c->ctx;
    fill_act(f, e->q, n_tok, r, -2, 2);
    fill_act(f, e->k, n_tok, r, -2, 2);
    for (int t = 0; t < f->g->n_tok_max; t++)
        I32(f, e->pos)[t] = t < n_tok ? (n_tok == 1 && t == 0 ? 0 : rng_int(r, e->C)) : -1;
}

/* |y - ref| <= 1e-5 * |(ref_i, ref_pair)| + 1e-6 per element of a pair: f32
 * norm, the executor's table of f32-rounded sin/cos of float64 angles, two
 * roundings in the rotation. */
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

static void check_rope(fx *f, const vcase *c, int n_tok, const char *label) {
    const rope_ctx *e = c->ctx;
    double *qr = dalloc((int64_t)e->hd * e->nh * n_tok);
    double *kr = dalloc((int64_t)e->hd * e->nkv * n_tok);
    qg_ref_rope(F32(f, e->q), F32(f, e->k), F32(f, e->qn), F32(f, e->kn), I32(f, e->pos), n_tok,
                e->hd, e->nh, e->nkv, e->eps, e->theta, qr, kr);
    expect_rope(label, "q", F32(f, e->qo), qr, e->nh * n_tok, e->hd);
    expect_rope(label, "k", F32(f, e->ko), kr, e->nkv * n_tok, e->hd);
    free(qr);
    free(kr);
}

static void test_rope(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int heads[][3] = {{16, 3, 1}, {64, 4, 2}, {128, 2, 2}, {256, 1, 1}};
    const float thetas[] = {1e6f, 1e4f};
    for (int hi = 0; hi < 4; hi++)
        for (int th = 0; th < 2; th++) {
            const int T = 6, C = 40000; /* positions where an f32 angle would fail */
            fx f = fx_make(QG_PHASE_PREFILL, T, C);
            rng r = rng_for(10, 1000 + case_id);
            rope_ctx e = {.hd = heads[hi][0], .nh = heads[hi][1], .nkv = heads[hi][2], .C = C,
                          .eps = 1e-6f, .theta = thetas[th]};
            e.q = fx_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, (int64_t)e.hd * e.nh, T, 1);
            e.k = fx_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, (int64_t)e.hd * e.nkv, T, 1);
            e.qn = fx_weight(&f, "q_norm", QG_F32, 1, e.hd, 1, 1, &r, 2.0f);
            e.kn = fx_weight(&f, "k_norm", QG_F32, 1, e.hd, 1, 1, &r, 2.0f);
            e.pos = fx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
            f.g->t_pos = e.pos;
            e.qo = fx_tensor(&f, "q_rope", QG_F32, QG_ROLE_ACT, 2, (int64_t)e.hd * e.nh, T, 1);
            e.ko = fx_tensor(&f, "k_rope", QG_F32, QG_ROLE_ACT, 2, (int64_t)e.hd * e.nkv, T, 1);
            qg_op_params p = {.eps = e.eps, .rope_theta = e.theta, .head_dim = e.hd,
                              .n_head = e.nh, .n_head_kv = e.nkv};
            add_node(&f, QG_OP_ROPE, "rope", (int[]){e.q, e.k, e.qn, e.kn, e.pos}, 5,
                     (int[]){e.qo, e.ko}, 2, &p);
            vcase c = {.f = &f, .n_out = 2, .out = {e.qo, e.ko}, .fill = fill_rope,
                       .check = check_rope, .ctx = &e};
            const int ntoks[] = {1, 2, T};
            RUN(c, ntoks, 10, case_id++);
            fx_free(&f);
        }
}

/* ---- attention -------------------------------------------------------------- */

typedef struct attn_ctx {
    int q, k, v, kc, vc, pos, o;
    int hd, nh, nkv, C;
    qg_dtype ct;
    void *kc0, *vc0; /* cache contents before the step */
} attn_ctx;

static void fill_attention(fx *f, const vcase *c, int n_tok, rng *r) {
    const attn_ctx *e = c->ctx;
    const int64_t Dkv = (int64_t)e->hd * e->nkv;
    fill_act(f, e->q, n_tok, r, -2, 2);
    fill_act(f, e->k, n_tok, r, -1, 1);
    fill_act(f, e->v, n_tok, r, -1, 1);
    /* consecutive positions from a random start (0 sometimes) */
    const int p0 = rng_int(r, 4) == 0 ? 0 : rng_int(r, e->C - n_tok + 1);
    for (int t = 0; t < f->g->n_tok_max; t++) I32(f, e->pos)[t] = t < n_tok ? p0 + t : -1;
    /* earlier rows: random, in the cache type */
    for (size_t i = 0; i < (size_t)(Dkv * e->C); i++) {
        const float a = rng_unif(r, -1, 1), b = rng_unif(r, -1, 1);
        if (e->ct == QG_F16) {
            ((uint16_t *)e->kc0)[i] = qg_f32_to_f16(a);
            ((uint16_t *)e->vc0)[i] = qg_f32_to_f16(b);
        } else {
            ((float *)e->kc0)[i] = a;
            ((float *)e->vc0)[i] = b;
        }
    }
    memcpy(f->host[e->kc], e->kc0, f->g->tensors[e->kc].nbytes);
    memcpy(f->host[e->vc], e->vc0, f->g->tensors[e->vc].nbytes);
}

static double cache_get(qg_dtype ct, const void *p, size_t i) {
    return ct == QG_F16 ? (double)qg_f16_to_f32(((const uint16_t *)p)[i])
                        : (double)((const float *)p)[i];
}

static void check_attention(fx *f, const vcase *c, int n_tok, const char *label) {
    const attn_ctx *e = c->ctx;
    const int64_t Dkv = (int64_t)e->hd * e->nkv, Dq = (int64_t)e->hd * e->nh;
    const int32_t *pos = I32(f, e->pos);
    const size_t es = e->ct == QG_F16 ? 2 : 4;
    /* 1. the caches: rows pos[t] hold this step's k, v rounded once to the
     * cache type, bit-identical to the CPU's qg_f32_to_f16; every other row
     * is unchanged. */
    for (int m = 0; m < 2; m++) {
        const int cid = m ? e->vc : e->kc;
        const float *src = F32(f, m ? e->v : e->k);
        const unsigned char *now = f->host[cid], *before = m ? e->vc0 : e->kc0;
        for (int row = 0; row < e->C; row++) {
            int t = -1;
            for (int i = 0; i < n_tok; i++)
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
                if (e->ct == QG_F16) {
                    uint16_t h;
                    memcpy(&h, now + off, 2);
                    ok = h == qg_f32_to_f16(x);
                } else {
                    ok = memcmp(now + off, &x, 4) == 0;
                }
                if (!ok)
                    fail_msg("%s: %s cache row %d [%lld] wrong", label, m ? "v" : "k", row,
                             (long long)i);
            }
        }
    }
    /* 2. the output against the reference over the caches as written */
    double *kd = dalloc(Dkv * e->C), *vd = dalloc(Dkv * e->C);
    for (size_t i = 0; i < (size_t)(Dkv * e->C); i++) {
        kd[i] = cache_get(e->ct, f->host[e->kc], i);
        vd[i] = cache_get(e->ct, f->host[e->vc], i);
    }
    double *ref = dalloc(Dq * n_tok), *pva = dalloc(Dq * n_tok);
    double *qka = dalloc((int64_t)e->nh * n_tok), *mag = dalloc(Dq * n_tok);
    qg_ref_attention(F32(f, e->q), kd, vd, pos, n_tok, e->hd, e->nh, e->nkv, ref, pva, qka);
    /* f32 scores (error ~ eps * sum|q k| / sqrt(hd)), an online softmax
     * (block maxima, rescaled by exp of f32 differences) and f32 weighted
     * sums: |o - ref| <= 2e-5 * (1 + qk_abs) * sum_j p_j |v_j| + 1e-6 (twice
     * the CPU's bound: the GPU's exp is allowed a few ulp more) */
    for (int t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < Dq; i++)
            mag[t * Dq + i] = (1.0 + qka[t * e->nh + i / e->hd]) * pva[t * Dq + i];
    expect_close(label, "o", F32(f, e->o), ref, mag, Dq * n_tok, 2e-5, 1e-6);
    free(kd);
    free(vd);
    free(ref);
    free(pva);
    free(qka);
    free(mag);
}

static void test_attention(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    /* hd up to 256 (two outputs per invocation); C > 128 (several blocks) */
    const int heads[][3] = {{16, 4, 2}, {64, 6, 1}, {256, 2, 2}};
    const qg_dtype cts[] = {QG_F32, QG_F16};
    for (int hi = 0; hi < 3; hi++)
        for (int ci = 0; ci < 2; ci++)
            for (int phase = 0; phase < 2; phase++) {
                const int T = phase == 0 ? 1 : 6, C = 300;
                fx f = fx_make(phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, C);
                attn_ctx e = {.hd = heads[hi][0], .nh = heads[hi][1], .nkv = heads[hi][2], .C = C,
                              .ct = cts[ci]};
                const int64_t Dq = (int64_t)e.hd * e.nh, Dkv = (int64_t)e.hd * e.nkv;
                e.q = fx_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T, 1);
                e.k = fx_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                e.v = fx_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                e.kc = fx_tensor(&f, "cache_k", e.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                e.vc = fx_tensor(&f, "cache_v", e.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                e.pos = fx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_pos = e.pos;
                e.o = fx_tensor(&f, "o", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
                const size_t cb = f.g->tensors[e.kc].nbytes;
                e.kc0 = malloc(cb);
                e.vc0 = malloc(cb);
                assert_true(e.kc0 && e.vc0);
                qg_op_params p = {.head_dim = e.hd, .n_head = e.nh, .n_head_kv = e.nkv};
                add_node(&f, QG_OP_ATTENTION, "attention", (int[]){e.q, e.k, e.v, e.kc, e.vc, e.pos},
                         6, (int[]){e.o}, 1, &p);
                vcase c = {.f = &f, .n_out = 3, .out = {e.o, e.kc, e.vc}, .fill = fill_attention,
                           .check = check_attention, .ctx = &e};
                /* the caches are outputs too: read back whole (no poison
                 * tail); fill() rewrites them before every run */
                if (phase == 0) {
                    const int ntoks[] = {1, 1};
                    RUN(c, ntoks, 11, case_id++);
                } else {
                    const int ntoks[] = {1, 3, T};
                    RUN(c, ntoks, 11, case_id++);
                }
                free(e.kc0);
                free(e.vc0);
                fx_free(&f);
            }
}

/* ---- topk ------------------------------------------------------------------- */

typedef struct topk_ctx {
    int logits, ids, wts;
    int X, K;
    bool exact_ties; /* integer logits: exact ties, other gaps large */
} topk_ctx;

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

static void fill_topk(fx *f, const vcase *c, int n_tok, rng *r) {
    const topk_ctx *e = c->ctx;
    fill_act(f, e->logits, n_tok, r, -6, 6);
    if (e->exact_ties)
        for (int i = 0; i < e->X * n_tok; i++) F32(f, e->logits)[i] = (float)rng_int(r, 4);
}

static void check_topk(fx *f, const vcase *c, int n_tok, const char *label) {
    const topk_ctx *e = c->ctx;
    expect_topk(label, F32(f, e->logits), I32(f, e->ids), F32(f, e->wts), e->X, e->K, n_tok,
                e->exact_ties);
}

static void test_topk(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int XK[][2] = {{8, 1}, {8, 8}, {64, 2}, {128, 8}, {60, 4}, {512, 64}};
    for (int xi = 0; xi < 6; xi++)
        for (int ties = 0; ties < 2; ties++) {
            const int T = 9;
            fx f = fx_make(QG_PHASE_PREFILL, T, 16);
            topk_ctx e = {.X = XK[xi][0], .K = XK[xi][1], .exact_ties = ties == 1};
            e.logits = fx_tensor(&f, "logits", QG_F32, QG_ROLE_INPUT, 2, e.X, T, 1);
            e.ids = fx_tensor(&f, "ids", QG_I32, QG_ROLE_ACT, 2, e.K, T, 1);
            e.wts = fx_tensor(&f, "wts", QG_F32, QG_ROLE_ACT, 2, e.K, T, 1);
            qg_op_params p = {.n_expert = e.X, .n_expert_used = e.K};
            add_node(&f, QG_OP_TOPK, "topk", (int[]){e.logits}, 1, (int[]){e.ids, e.wts}, 2, &p);
            vcase c = {.f = &f, .n_out = 2, .out = {e.ids, e.wts}, .fill = fill_topk,
                       .check = check_topk, .ctx = &e};
            const int ntoks[] = {1, 4, T};
            RUN(c, ntoks, 12, case_id++);
            fx_free(&f);
        }
}

/* ---- expert_swiglu -> aggregate, moe_fused ---------------------------------- */

/* Distinct random expert ids per token. */
static void make_ids(int32_t *ids, int X, int K, int T, rng *r) {
    for (int t = 0; t < T; t++) {
        int32_t *id = ids + (size_t)t * K;
        for (int k = 0; k < K; k++)
            for (;;) {
                const int e = rng_int(r, X);
                bool dup = false;
                for (int j = 0; j < k; j++) dup |= id[j] == e;
                if (!dup) {
                    id[k] = e;
                    break;
                }
            }
    }
}

typedef struct moe_ctx {
    int x, gate_inp, gate, up, down, logits, ids, wts, h, y; /* unfused */
    int y2, ids2, wts2;                                      /* fused */
    int64_t E, F;
    int X, K;
} moe_ctx;

/* Expert weight types of the MoE cases: (gate, up, down). */
static const qg_dtype MOE_TYPES[][3] = {
    {QG_Q4_K, QG_Q4_K, QG_Q6_K}, {QG_Q5_K, QG_Q8_0, QG_Q4_0},
    {QG_F16, QG_BF16, QG_F32},   {QG_Q6_K, QG_Q4_0, QG_Q5_K},
};

static void fill_experts(fx *f, const vcase *c, int n_tok, rng *r) {
    const moe_ctx *e = c->ctx;
    const int T = f->g->n_tok_max;
    fill_act(f, e->x, n_tok, r, -0.3f, 0.3f);
    for (int i = 0; i < e->K * T; i++) {
        I32(f, e->ids)[i] = -1;
        F32(f, e->wts)[i] = NAN;
    }
    make_ids(I32(f, e->ids), e->X, e->K, n_tok, r);
    for (int t = 0; t < n_tok; t++) {
        float sum = 0;
        for (int j = 0; j < e->K; j++) sum += F32(f, e->wts)[t * e->K + j] = rng_unif(r, 0.1f, 1);
        for (int j = 0; j < e->K; j++) F32(f, e->wts)[t * e->K + j] /= sum;
    }
}

static void check_experts(fx *f, const vcase *c, int n_tok, const char *label) {
    const moe_ctx *e = c->ctx;
    const int64_t nh = e->F * e->K * n_tok, ny = e->E * n_tok;
    double *ref = dalloc(nh), *mag = dalloc(nh);
    qg_ref_expert_swiglu(f->g->tensors[e->gate].type, f->host[e->gate], f->g->tensors[e->up].type,
                         f->host[e->up], e->E, e->F, e->X, F32(f, e->x), I32(f, e->ids), e->K,
                         n_tok, ref, mag);
    /* as swiglu: |h - ref| <= 1e-5 * (1.1 |u| sum|g x| + |silu g| sum|u x|
     * + |h|) + 1e-6 */
    expect_close(label, "h", F32(f, e->h), ref, mag, nh, 1e-5, 1e-6);
    free(ref);
    free(mag);
    /* aggregate of the shader's h: K dots as matmul, weighted sum in f32:
     * |y - ref| <= 1e-5 * sum_k |w_k| sum_f |down h| + 1e-6 */
    ref = dalloc(ny);
    mag = dalloc(ny);
    qg_ref_aggregate(F32(f, e->h), f->g->tensors[e->down].type, f->host[e->down], e->F, e->E,
                     e->X, I32(f, e->ids), F32(f, e->wts), e->K, n_tok, ref, mag);
    expect_close(label, "y", F32(f, e->y), ref, mag, ny, 1e-5, 1e-6);
    free(ref);
    free(mag);
}

static void test_expert_swiglu_aggregate(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int XK[][2] = {{6, 2}, {4, 3}};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(MOE_TYPES); ti++)
        for (int xi = 0; xi < 2; xi++) {
            const int T = xi == 0 ? 1 : 5;
            fx f = fx_make(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64);
            rng r = rng_for(13, 1000 + case_id);
            moe_ctx e = {.E = 256, .F = 256, .X = XK[xi][0], .K = XK[xi][1]};
            e.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            e.gate = fx_weight(&f, "gate_exps", MOE_TYPES[ti][0], 3, e.E, e.F, e.X, &r, 1.0f);
            e.up = fx_weight(&f, "up_exps", MOE_TYPES[ti][1], 3, e.E, e.F, e.X, &r, 1.0f);
            e.down = fx_weight(&f, "down_exps", MOE_TYPES[ti][2], 3, e.F, e.E, e.X, &r, 1.0f);
            e.ids = fx_tensor(&f, "ids", QG_I32, QG_ROLE_INPUT, 2, e.K, T, 1);
            e.wts = fx_tensor(&f, "wts", QG_F32, QG_ROLE_INPUT, 2, e.K, T, 1);
            e.h = fx_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 3, e.F, e.K, T);
            e.y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.E, T, 1);
            qg_op_params p = {.n_expert = e.X, .n_expert_used = e.K};
            add_node(&f, QG_OP_EXPERT_SWIGLU, "expert_swiglu", (int[]){e.x, e.gate, e.up, e.ids}, 4,
                     (int[]){e.h}, 1, &p);
            add_node(&f, QG_OP_AGGREGATE, "aggregate", (int[]){e.h, e.down, e.ids, e.wts}, 4,
                     (int[]){e.y}, 1, &p);
            vcase c = {.f = &f, .n_out = 2, .out = {e.h, e.y}, .fill = fill_experts,
                       .check = check_experts, .ctx = &e};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 13, case_id++);
            fx_free(&f);
        }
}

static void fill_fused(fx *f, const vcase *c, int n_tok, rng *r) {
    const moe_ctx *e = c->ctx;
    fill_act(f, e->x, n_tok, r, -0.3f, 0.3f);
}

static void check_fused(fx *f, const vcase *c, int n_tok, const char *label) {
    const moe_ctx *e = c->ctx;
    /* routing bit-identical to the unfused chain run just before it (the
     * same shaders); y too in decode graphs (the same expert shaders), but
     * not in prefill graphs, where the fused node groups assignments by
     * expert (moe_sort, swiglu_moe, matmul_moe, moe_combine) and sums in
     * another order: there y is held to the reference below */
    const struct {
        int a, b;
        const char *name;
    } same[] = {{e->ids, e->ids2, "ids"}, {e->wts, e->wts2, "wts"}, {e->y, e->y2, "y"}};
    for (int i = 0; i < (f->g->n_tok_max == 1 ? 3 : 2); i++)
        if (memcmp(f->host[same[i].a], f->host[same[i].b], live_bytes(f, same[i].a, n_tok)) != 0)
            fail_msg("%s: fused %s differs from the unfused chain", label, same[i].name);
    /* router logits: as matmul, |l - ref| <= 1e-5 * sum|w||x| + 1e-6 */
    double *lr = dalloc((int64_t)e->X * n_tok), *la = dalloc((int64_t)e->X * n_tok);
    qg_ref_matmul(f->g->tensors[e->gate_inp].type, f->host[e->gate_inp], e->E, e->X, F32(f, e->x),
                  n_tok, lr, la);
    expect_close(label, "logits", F32(f, e->logits), lr, la, (int64_t)e->X * n_tok, 1e-5, 1e-6);
    /* routing: as topk, over the shader's logits */
    expect_topk(label, F32(f, e->logits), I32(f, e->ids2), F32(f, e->wts2), e->X, e->K, n_tok,
                false);
    /* y: the reference experts (float64 h from x) over the shader's
     * routing; the shader's h is within 1e-5 * habs of the reference (as
     * expert_swiglu), so |y - ref| <= 1e-5 * (sum_k |w| sum_f |down| (|h| +
     * habs)) + 1e-6 */
    const int64_t nh = e->F * e->K * n_tok, ny = e->E * n_tok;
    double *h = dalloc(nh), *ha = dalloc(nh), *y = dalloc(ny), *ya = dalloc(ny), *yb = dalloc(ny);
    qg_ref_expert_swiglu(f->g->tensors[e->gate].type, f->host[e->gate], f->g->tensors[e->up].type,
                         f->host[e->up], e->E, e->F, e->X, F32(f, e->x), I32(f, e->ids2), e->K,
                         n_tok, h, ha);
    float *hf = malloc(sizeof(float) * (size_t)nh), *haf = malloc(sizeof(float) * (size_t)nh);
    assert_true(hf && haf);
    for (int64_t i = 0; i < nh; i++) {
        hf[i] = (float)h[i];
        haf[i] = (float)ha[i];
    }
    qg_ref_aggregate(hf, f->g->tensors[e->down].type, f->host[e->down], e->F, e->E, e->X,
                     I32(f, e->ids2), F32(f, e->wts2), e->K, n_tok, y, ya);
    qg_ref_aggregate(haf, f->g->tensors[e->down].type, f->host[e->down], e->F, e->E, e->X,
                     I32(f, e->ids2), F32(f, e->wts2), e->K, n_tok, yb, NULL);
    for (int64_t i = 0; i < ny; i++) ya[i] += fabs(yb[i]) * 1.0001;
    expect_close(label, "y", F32(f, e->y2), y, ya, ny, 1e-5, 1e-6);
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
    need_vulkan();
    int case_id = 0;
    const qg_dtype rts[] = {QG_F32, QG_Q8_0};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(MOE_TYPES); ti++)
        for (int phase = 0; phase < 3; phase++) {
            /* decode; prefill; prefill with > 8 assignments per expert
             * (several tiles of the grouped path per expert) */
            const int T = phase == 0 ? 1 : phase == 1 ? 7 : 40;
            const int X = phase == 0 ? 8 : phase == 1 ? 5 : 4, K = phase == 0 ? 3 : 2;
            fx f = fx_make(phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64);
            rng r = rng_for(14, 1000 + case_id);
            moe_ctx e = {.E = 256, .F = 256, .X = X, .K = K};
            e.x = fx_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            e.gate_inp = fx_weight(&f, "gate_inp", rts[ti % 2], 2, e.E, X, 1, &r, 1.0f);
            e.gate = fx_weight(&f, "gate_exps", MOE_TYPES[ti][0], 3, e.E, e.F, X, &r, 1.0f);
            e.up = fx_weight(&f, "up_exps", MOE_TYPES[ti][1], 3, e.E, e.F, X, &r, 1.0f);
            e.down = fx_weight(&f, "down_exps", MOE_TYPES[ti][2], 3, e.F, e.E, X, &r, 1.0f);
            /* the chain's tensors are OUTPUTs: never aliased, all readable */
            e.logits = fx_tensor(&f, "logits", QG_F32, QG_ROLE_OUTPUT, 2, X, T, 1);
            e.ids = fx_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, T, 1);
            e.wts = fx_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, T, 1);
            e.h = fx_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 3, e.F, K, T);
            e.y = fx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, e.E, T, 1);
            e.y2 = fx_tensor(&f, "y_fused", QG_F32, QG_ROLE_ACT, 2, e.E, T, 1);
            e.ids2 = fx_tensor(&f, "ids_fused", QG_I32, QG_ROLE_ACT, 2, K, T, 1);
            e.wts2 = fx_tensor(&f, "wts_fused", QG_F32, QG_ROLE_ACT, 2, K, T, 1);
            qg_op_params p = {.n_expert = X, .n_expert_used = K};
            add_node(&f, QG_OP_ROUTER, "router", (int[]){e.x, e.gate_inp}, 2, (int[]){e.logits}, 1,
                     &p);
            add_node(&f, QG_OP_TOPK, "topk", (int[]){e.logits}, 1, (int[]){e.ids, e.wts}, 2, &p);
            add_node(&f, QG_OP_EXPERT_SWIGLU, "expert_swiglu", (int[]){e.x, e.gate, e.up, e.ids},
                     4, (int[]){e.h}, 1, &p);
            add_node(&f, QG_OP_AGGREGATE, "aggregate", (int[]){e.h, e.down, e.ids, e.wts}, 4,
                     (int[]){e.y}, 1, &p);
            add_node(&f, QG_OP_MOE_FUSED, "moe_fused", (int[]){e.x, e.gate_inp, e.gate, e.up, e.down},
                     5, (int[]){e.y2, e.ids2, e.wts2}, 3, &p);
            vcase c = {.f = &f, .n_out = 8,
                       .out = {e.logits, e.ids, e.wts, e.h, e.y, e.y2, e.ids2, e.wts2},
                       .fill = fill_fused, .check = check_fused, .ctx = &e};
            if (phase == 0) {
                const int ntoks[] = {1, 1};
                RUN(c, ntoks, 14, case_id++);
            } else if (phase == 1) {
                const int ntoks[] = {1, 3, T};
                RUN(c, ntoks, 14, case_id++);
            } else {
                const int ntoks[] = {T - 5, T};
                RUN(c, ntoks, 14, case_id++);
            }
            fx_free(&f);
        }
}

/* ---- fused pairs: add -> rmsnorm, rope -> attention ------------------------ */

typedef struct addnorm_ctx {
    add_ctx add;
    rms_ctx rms;
} addnorm_ctx;

static void fill_addnorm(fx *f, const vcase *c, int n_tok, rng *r) {
    const addnorm_ctx *e = c->ctx;
    fill_act(f, e->add.a, n_tok, r, -3, 3);
    fill_act(f, e->add.b, n_tok, r, -3, 3);
}

static void check_addnorm(fx *f, const vcase *c, int n_tok, const char *label) {
    const addnorm_ctx *e = c->ctx;
    vcase ca = {.ctx = (void *)&e->add}, cr = {.ctx = (void *)&e->rms};
    check_add(f, &ca, n_tok, label);     /* y: as add */
    check_rmsnorm(f, &cr, n_tok, label); /* h from the y just checked: as rmsnorm */
}

typedef struct ropeattn_ctx {
    rope_ctx rope;
    attn_ctx attn; /* q, k: the rope's outputs */
} ropeattn_ctx;

static void fill_ropeattn(fx *f, const vcase *c, int n_tok, rng *r) {
    ropeattn_ctx *e = c->ctx;
    fill_attention(f, &(vcase){.ctx = &e->attn}, n_tok, r); /* v, pos, caches */
    fill_act(f, e->rope.q, n_tok, r, -2, 2);
    fill_act(f, e->rope.k, n_tok, r, -2, 2);
}

static void check_ropeattn(fx *f, const vcase *c, int n_tok, const char *label) {
    ropeattn_ctx *e = c->ctx;
    check_rope(f, &(vcase){.ctx = &e->rope}, n_tok, label);
    /* the caches hold the rotated k (bit-exact f16/f32 of the read-back
     * k_rope) and v; o as attention over them */
    check_attention(f, &(vcase){.ctx = &e->attn}, n_tok, label);
}

static void test_fused_pairs(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    for (int ph = 0; ph < 2; ph++) {
        const int T = ph == 0 ? 1 : 5;
        fx f = fx_make(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 16);
        rng r = rng_for(16, 1000 + case_id);
        addnorm_ctx e = {.add = {.N = 1000}, .rms = {.N = 1000, .eps = 1e-5f}};
        e.add.a = fx_tensor(&f, "a", QG_F32, QG_ROLE_INPUT, 2, e.add.N, T, 1);
        e.add.b = fx_tensor(&f, "b", QG_F32, QG_ROLE_INPUT, 2, e.add.N, T, 1);
        e.add.y = e.rms.x = fx_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, e.add.N, T, 1);
        e.rms.w = fx_weight(&f, "norm", QG_F32, 1, e.rms.N, 1, 1, &r, 2.0f);
        e.rms.y = fx_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, e.rms.N, T, 1);
        qg_op_params p = {.eps = e.rms.eps};
        add_node(&f, QG_OP_ADD, "add", (int[]){e.add.a, e.add.b}, 2, (int[]){e.add.y}, 1, &p);
        add_node(&f, QG_OP_RMSNORM, "add+rmsnorm", (int[]){e.add.y, e.rms.w}, 2, (int[]){e.rms.y},
                 1, &p);
        vcase c = {.f = &f, .n_out = 2, .out = {e.add.y, e.rms.y}, .fill = fill_addnorm,
                   .check = check_addnorm, .ctx = &e};
        const int ntoks[] = {1, T};
        RUN(c, ntoks, 16, case_id++);
        fx_free(&f);
    }
    const qg_dtype cts[] = {QG_F16, QG_F32};
    for (int ci = 0; ci < 2; ci++)
        for (int ph = 0; ph < 2; ph++) {
            const int T = ph == 0 ? 1 : 4, C = 200, hd = 64, nh = 4, nkv = 2;
            fx f = fx_make(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, C);
            rng r = rng_for(17, 1000 + case_id);
            ropeattn_ctx e = {.rope = {.hd = hd, .nh = nh, .nkv = nkv, .C = C, .eps = 1e-6f,
                                       .theta = 1e6f},
                              .attn = {.hd = hd, .nh = nh, .nkv = nkv, .C = C, .ct = cts[ci]}};
            const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
            e.rope.q = fx_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T, 1);
            e.rope.k = fx_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
            e.rope.qn = fx_weight(&f, "q_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
            e.rope.kn = fx_weight(&f, "k_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
            e.rope.pos = e.attn.pos = fx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
            f.g->t_pos = e.rope.pos;
            e.rope.qo = e.attn.q = fx_tensor(&f, "q_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T, 1);
            e.rope.ko = e.attn.k = fx_tensor(&f, "k_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, T, 1);
            e.attn.v = fx_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
            e.attn.kc = fx_tensor(&f, "cache_k", e.attn.ct, QG_ROLE_KV, 2, Dkv, C, 1);
            e.attn.vc = fx_tensor(&f, "cache_v", e.attn.ct, QG_ROLE_KV, 2, Dkv, C, 1);
            e.attn.o = fx_tensor(&f, "o", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
            const size_t cb = f.g->tensors[e.attn.kc].nbytes;
            e.attn.kc0 = malloc(cb);
            e.attn.vc0 = malloc(cb);
            assert_true(e.attn.kc0 && e.attn.vc0);
            qg_op_params p = {.eps = 1e-6f, .rope_theta = 1e6f, .head_dim = hd, .n_head = nh,
                              .n_head_kv = nkv};
            add_node(&f, QG_OP_ROPE, "rope", (int[]){e.rope.q, e.rope.k, e.rope.qn, e.rope.kn,
                                                     e.rope.pos}, 5, (int[]){e.rope.qo, e.rope.ko}, 2, &p);
            add_node(&f, QG_OP_ATTENTION, "rope+attention",
                     (int[]){e.attn.q, e.attn.k, e.attn.v, e.attn.kc, e.attn.vc, e.attn.pos}, 6,
                     (int[]){e.attn.o}, 1, &p);
            vcase c = {.f = &f, .n_out = 5,
                       .out = {e.rope.qo, e.rope.ko, e.attn.o, e.attn.kc, e.attn.vc},
                       .fill = fill_ropeattn, .check = check_ropeattn, .ctx = &e};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 17, case_id++);
            free(e.attn.kc0);
            free(e.attn.vc0);
            fx_free(&f);
        }
}

/* ---- supports ------------------------------------------------------------ */

static void test_supports(void **state) {
    (void)state;
    need_vulkan();
    fx f = fx_make(QG_PHASE_PREFILL, 4, 16);
    rng r = rng_for(15, 0);
    const int x = fx_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int xh = fx_tensor(&f, "xh", QG_F16, QG_ROLE_ACT, 2, 64, 4, 1);
    const int w16 = fx_weight(&f, "w16", QG_F16, 1, 64, 1, 1, &r, 1.0f);
    const int w32 = fx_weight(&f, "w32", QG_F32, 1, 64, 1, 1, &r, 1.0f);
    const int wq = fx_weight(&f, "wq", QG_Q8_0, 2, 64, 8, 1, &r, 1.0f);
    const int wodd = fx_weight(&f, "wodd", QG_F32, 2, 48, 8, 1, &r, 1.0f);
    const int y = fx_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int kc8 = fx_tensor(&f, "kc8", QG_Q8_0, QG_ROLE_KV, 2, 64, 16, 1);
    const int pos = fx_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 4, 1, 1);
    qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 4, .eps = 1e-6f};
    qg_op_params big = {.head_dim = 512, .n_head = 1, .n_head_kv = 1};
    const int ok = add_node(&f, QG_OP_RMSNORM, "ok", (int[]){x, w32}, 2, (int[]){y}, 1, &p);
    const int bad_w = add_node(&f, QG_OP_RMSNORM, "bad_w", (int[]){x, w16}, 2, (int[]){y}, 1, &p);
    const int bad_x = add_node(&f, QG_OP_ADD, "bad_x", (int[]){x, xh}, 2, (int[]){y}, 1, &p);
    const int mm = add_node(&f, QG_OP_MATMUL, "mm", (int[]){wq, x}, 2, (int[]){y}, 1, &p);
    const int mm_odd = add_node(&f, QG_OP_MATMUL, "mm_odd", (int[]){wodd, x}, 2, (int[]){y}, 1, &p);
    const int att = add_node(&f, QG_OP_ATTENTION, "att", (int[]){x, x, x, kc8, kc8, pos}, 6,
                             (int[]){y}, 1, &p);
    const int rope = add_node(&f, QG_OP_ROPE, "rope_big", (int[]){x, x, w32, w32, pos}, 5,
                              (int[]){y, y}, 2, &big);
    const int cp = add_node(&f, QG_OP_COPY, "copy", (int[]){x}, 1, (int[]){y}, 1, &p);
    const qg_exec *e = &g_vk[0];
    assert_true(e->i->supports(e->self, f.g, &f.g->nodes[ok]));
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[bad_w]));
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[bad_x]));
    assert_true(e->i->supports(e->self, f.g, &f.g->nodes[mm]));
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[mm_odd])); /* rows not 32-multiples */
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[att]));    /* Q8_0 cache */
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[rope]));   /* head_dim > 256 */
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[cp]));     /* runtime's job */
    fx_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_supports),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_router_lm_head),
        cmocka_unit_test(test_qkv),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_expert_swiglu_aggregate),
        cmocka_unit_test(test_moe_fused),
        cmocka_unit_test(test_fused_pairs),
    };
    if (getenv("QG_TEST_FILTER")) cmocka_set_test_filter(getenv("QG_TEST_FILTER")); /* one test */
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
