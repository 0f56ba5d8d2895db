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
 * (QG_SUBGROUP=0) without it.  The weight-product cases (vcase.mv) also
 * run on three with the fast decode products (fast_mv, QG_VK_MV=1: the
 * *_mv shaders in decode graphs; multi-token graphs are the same as on
 * the first two): subgroups with validation and the rows per row group
 * chosen per shape; shared memory with 8 rows per group; subgroups with
 * 3 (not a power of two); the last two with the loops software-pipelined
 * (mv_pf, QG_VK_MV_PF=1).  Those three also have the tiled prefill
 * attention (attn_tile, QG_VK_ATTN_TILE=1: attention_tile.comp), and the
 * attention cases (vcase.mv too) run on them.  The multi-token product
 * cases (vcase.check_cm) also run on a sixth executor, with the
 * cooperative-matrix prefill products (coopmat, QG_VK_CM=1: f16 inputs,
 * f32 sums) and validation: the real ones where the device has them
 * (NVIDIA), else their scalar emulation (cm_emulate: lavapipe, in CI),
 * held to the f16 tolerance CM_REL.
 *
 * Fixtures, the executor step and the per-op checks are the shared harness
 * of tests/ref/qg_optest.h; this file keeps the Vulkan driver (run_case).
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

#include "qg_optest.h"
#include "qg_ref_ops.h"

#include "exec/vulkan/qg_vulkan.h"
#include "graph/qg_sched.h"
#include "ops/quant/qg_quant.h"

/* A different stream for every (test, case, run). */
static qg_test_rng rng_for(int test, int case_id) { return qg_optest_rng_for(test, case_id, 777u); }

/* ---- executors ------------------------------------------------------- */

#define N_VK 6
#define N_VK_PLAIN 2 /* the executors without fast_mv */
#define VK_CM 5      /* the cooperative-matrix executor */
/* [0]: subgroups + validation, [1]: shared memory; fast_mv: [2] subgroups
 * + validation, [3] shared memory, 8 rows per group, pipelined, [4]
 * subgroups, 3, pipelined;
 * [5] coopmat + validation */
static qg_exec g_vk[N_VK];
static const char *const VK_NAMES[N_VK] = {"subgroups", "shared-memory", "mv subgroups",
                                           "mv shared-memory rpt 8 pf", "mv subgroups rpt 3 pf",
                                           "coopmat"};
static qg_exec g_cpu;
static bool g_have;
static char g_why[600];
/* the coopmat executor is made on its own: a device whose cooperative
 * matrices fail fails only the cases that use them */
static bool g_have_cm;
static char g_cm_why[600];

static int setup(void **state) {
    (void)state;
    qg_error err = {0};
    qg_exec_opts eo = {.n_threads = 1, .device = -1};
    if (qg_exec_cpu_new(&eo, &g_cpu, &err)) return -1;
    const qg_vk_opts vo[N_VK] = {{.validation = true},
                                 {.no_subgroup = true},
                                 {.validation = true, .fast_mv = true, .attn_tile = true},
                                 {.no_subgroup = true, .fast_mv = true, .mv_rpt = 8, .mv_pf = true,
                                  .attn_tile = true},
                                 {.fast_mv = true, .mv_rpt = 3, .mv_pf = true, .attn_tile = true},
                                 {.validation = true, .coopmat = true, .cm_emulate = true}};
    for (int i = 0; i < VK_CM; i++)
        if (qg_exec_vulkan_new_ex(&eo, &vo[i], &g_vk[i], &err)) {
            snprintf(g_why, sizeof g_why, "%s", err.msg);
            for (int j = 0; j < i; j++) g_vk[j].i->free(g_vk[j].self);
            return 0;
        }
    g_have = true;
    printf("vulkan device: %s\n", qg_exec_vulkan_device_name(&g_vk[0]));
    if (qg_exec_vulkan_new_ex(&eo, &vo[VK_CM], &g_vk[VK_CM], &err)) {
        snprintf(g_cm_why, sizeof g_cm_why, "%s", err.msg);
        printf("coopmat executor: cannot be made: %s\n", g_cm_why);
    } else {
        g_have_cm = true;
        printf("coopmat executor: %s\n", qg_exec_vulkan_device_name(&g_vk[VK_CM]));
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (g_have)
        for (int i = 0; i < VK_CM + (g_have_cm ? 1 : 0); i++) g_vk[i].i->free(g_vk[i].self);
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

/* ---- the driver --------------------------------------------------------- */

typedef struct vcase vcase;
struct vcase {
    qg_optest_fx *f;
    int n_out;
    int out[10]; /* tensors written by the nodes: poisoned, read, tails checked */
    /* fresh inputs for a run of n_tok tokens (host copies) */
    void (*fill)(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r);
    qg_optest_check_fn check;
    void *ctx; /* passed to fill and check */
    bool mv;   /* also on the executors with the opt-in paths (fast_mv, attn_tile) */
    qg_optest_check_fn check_cm; /* also on the coopmat executor, checked so */
    int n_disp; /* > 0: the dispatches every executor must record */
};

static bool is_out(const vcase *c, int id) {
    for (int i = 0; i < c->n_out; i++)
        if (c->out[i] == id) return true;
    return false;
}

/* Schedule c's graph on [vulkan, cpu] (every node on Vulkan), then on each
 * Vulkan executor: compile once, and run it for every token count of
 * ntoks.  Each run uploads every placed input and KV tensor (fill() wrote
 * them), poisons the outputs c->out, and ends with zero validation
 * messages on the validated executor. */
static void run_case(vcase *c, const int *ntoks, int n_ntok, int test, int case_id) {
    qg_optest_fx *f = c->f;
    qg_graph *g = f->g;
    const qg_exec execs[2] = {g_vk[0], g_cpu};
    qg_optest_schedule(f, execs, 2, 1);
    int ins[QG_OPTEST_MAXT], n_ins = 0;
    for (int t = 0; t < g->n_tensors; t++) {
        const qg_tensor *ts = &g->tensors[t];
        if (t != g->t_step && ts->exec >= 0 && !is_out(c, t) &&
            (ts->role == QG_ROLE_INPUT || ts->role == QG_ROLE_KV))
            ins[n_ins++] = t;
    }
    for (int v = 0; v < N_VK; v++) {
        if (v >= N_VK_PLAIN && v < VK_CM && !c->mv) continue;
        if (v == VK_CM && !c->check_cm) continue;
        if (v == VK_CM && !g_have_cm) fail_msg("case %d: no coopmat executor: %s", case_id, g_cm_why);
        const qg_exec *e = &g_vk[v];
        qg_optest_compile(f, e);
        if (c->n_disp && qg_exec_vulkan_counts(e, g, NULL) != c->n_disp)
            fail_msg("case %d on %s: %d dispatches, want %d", case_id, VK_NAMES[v],
                     qg_exec_vulkan_counts(e, g, NULL), c->n_disp);
        for (int k = 0; k < n_ntok; k++) {
            const int n_tok = ntoks[k];
            char label[200];
            snprintf(label, sizeof label, "%s case %d n_tok=%d/%d %s",
                     g->nodes[g->n_nodes - 1].name, case_id, n_tok, g->n_tok_max, VK_NAMES[v]);
            qg_test_rng r = rng_for(test, case_id * 64 + k * N_VK + v);
            c->fill(f, c->ctx, n_tok, &r);
            qg_optest_step(f, e, ins, n_ins, c->out, c->n_out, n_tok, n_tok, label);
            (v == VK_CM ? c->check_cm : c->check)(f, c->ctx, n_tok, label);
            if (qg_exec_vulkan_messages(e))
                fail_msg("%s: %zu validation messages (see stderr)", label,
                         qg_exec_vulkan_messages(e));
        }
        e->i->release(e->self, g);
    }
}

#define RUN(c, ntoks, test, case_id) run_case(&(c), ntoks, (int)QG_ARRAY_LEN(ntoks), test, case_id)

/* The cooperative-matrix products round weights and x to f16 (11
 * significant bits, relative error <= 2^-11 each): each product within
 * 2 * 2^-11 + 2^-22 of |w x|.  They sum in f32, on NVIDIA's tensor cores
 * with truncating alignment: up to n * 2^-23 of sum |w x| for rows of n
 * <= 4608 here (5.5e-4), plus the exact path's 1e-5 for the sums across
 * steps.  x below f16's normal range (2^-14) loses at most 2^-25
 * absolutely, covered by CM_ABS at these sizes. */
#define CM_REL 1.6e-3
#define CM_ABS 1e-5

static void check_matmul_cm(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_expect_matmul(f, ctx, n_tok, label, CM_REL, CM_ABS);
}

static void check_qkv_cm(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_expect_qkv(f, ctx, n_tok, label, CM_REL, CM_ABS);
}

static void check_swiglu_cm(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_expect_swiglu(f, ctx, n_tok, label, CM_REL, CM_ABS);
}

static void fill_embed(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_embed *e = ctx;
    for (int t = 0; t < f->g->n_tok_max; t++)
        qg_optest_i32(f, e->tok)[t] = t < n_tok ? qg_test_rng_int(r, (int)e->V) : -1;
}

static void test_embed(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int64_t Es[] = {256, 2560};
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (size_t ei = 0; ei < QG_ARRAY_LEN(Es); ei++) {
            const int T = 5;
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, true);
            qg_test_rng r = rng_for(1, 1000 + case_id);
            qg_optest_embed e = {.E = Es[ei], .V = 11};
            e.w =
                qg_optest_add_weight(&f, "tok_embd", QG_OPTEST_ALL_W[d], 2, e.E, e.V, 1, &r, 1.0f);
            e.tok = qg_optest_add_tensor(&f, "tokens", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
            f.g->t_tokens = e.tok;
            e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, e.E, T, 1);
            qg_op_params p = {0};
            qg_optest_add_node(&f, QG_OP_EMBED, "embed", (int[]){e.w, e.tok}, 2, (int[]){e.x}, 1,
                               &p);
            vcase c = {.f = &f,
                       .n_out = 1,
                       .out = {e.x},
                       .fill = fill_embed,
                       .check = qg_optest_check_embed,
                       .ctx = &e};
            const int ntoks[] = {1, 2, T};
            RUN(c, ntoks, 1, case_id++);
            qg_optest_fx_free(&f);
        }
}

static void fill_rmsnorm(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_rms *e = ctx;
    qg_optest_fill_act(f, e->x, n_tok, r, -3, 3);
}

static void test_rmsnorm(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int64_t Ns[] = {64, 1000, 2048};
    const float epss[] = {1e-6f, 1e-5f, 0.5f};
    for (int ni = 0; ni < 3; ni++) {
        const int T = 7;
        qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, true);
        qg_test_rng r = rng_for(2, 1000 + case_id);
        qg_optest_rms e = {.N = Ns[ni], .eps = epss[ni]};
        e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.N, T, 1);
        e.w = qg_optest_add_weight(&f, "norm", QG_F32, 1, e.N, 1, 1, &r, 2.0f);
        e.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.N, T, 1);
        qg_op_params p = {.eps = e.eps};
        qg_optest_add_node(&f, QG_OP_RMSNORM, "rmsnorm", (int[]){e.x, e.w}, 2, (int[]){e.y}, 1, &p);
        vcase c = {.f = &f, .n_out = 1, .out = {e.y}, .fill = fill_rmsnorm,
                   .check = qg_optest_check_rmsnorm, .ctx = &e};
        const int ntoks[] = {1, 3, T};
        RUN(c, ntoks, 2, case_id++);
        qg_optest_fx_free(&f);
    }
}

static void fill_add(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_add *e = ctx;
    qg_optest_fill_act(f, e->a, n_tok, r, -10, 10);
    qg_optest_fill_act(f, e->b, n_tok, r, -10, 10);
}

static void test_add(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int64_t Ns[] = {7, 300, 1024};
    for (int ni = 0; ni < 3; ni++) {
        const int T = 5;
        qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, true);
        qg_optest_add e = {.N = Ns[ni]};
        e.a = qg_optest_add_tensor(&f, "a", QG_F32, QG_ROLE_INPUT, 2, e.N, T, 1);
        e.b = qg_optest_add_tensor(&f, "b", QG_F32, QG_ROLE_INPUT, 2, e.N, T, 1);
        e.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.N, T, 1);
        qg_op_params p = {0};
        qg_optest_add_node(&f, QG_OP_ADD, "add", (int[]){e.a, e.b}, 2, (int[]){e.y}, 1, &p);
        vcase c = {.f = &f,
                   .n_out = 1,
                   .out = {e.y},
                   .fill = fill_add,
                   .check = qg_optest_check_add,
                   .ctx = &e};
        const int ntoks[] = {1, 2, T};
        RUN(c, ntoks, 3, case_id++);
        qg_optest_fx_free(&f);
    }
}

static void fill_mm(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_mm *e = ctx;
    qg_optest_fill_act(f, e->x, n_tok, r, -1, 1);
}

/* One matmul-like case: op MATMUL (w, x), ROUTER (x, w) or LM_HEAD (x, w). */
static void mm_case(qg_op op, int test, int case_id, qg_dtype wt, int64_t N, int64_t M, int T,
                    bool only_last) {
    qg_optest_fx f = qg_optest_fx_new(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64, true);
    qg_test_rng r = rng_for(test, 1000 + case_id);
    qg_optest_mm e = {.N = N, .M = M, .only_last = only_last};
    e.w = qg_optest_add_weight(&f, "w", wt, 2, N, M, 1, &r, 1.0f);
    e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, N, T, 1);
    e.y = qg_optest_add_tensor(&f, "y", QG_F32, op == QG_OP_LM_HEAD ? QG_ROLE_OUTPUT : QG_ROLE_ACT,
                               2, M, only_last ? 1 : T, 1);
    qg_op_params p = {.only_last = only_last};
    const int *in = op == QG_OP_MATMUL ? (int[]){e.w, e.x} : (int[]){e.x, e.w};
    qg_optest_add_node(&f, op, qg_op_name(op), in, 2, (int[]){e.y}, 1, &p);
    vcase c = {.f = &f,
               .n_out = 1,
               .out = {e.y},
               .fill = fill_mm,
               .check = qg_optest_check_matmul,
               .ctx = &e,
               .mv = true,
               /* the router keeps the exact path (it chooses experts) */
               .check_cm = T == 1 ? NULL
                           : op == QG_OP_ROUTER ? qg_optest_check_matmul : check_matmul_cm};
    if (T == 1) {
        const int ntoks[] = {1, 1};
        RUN(c, ntoks, test, case_id);
    } else {
        const int ntoks[] = {1, 3, T};
        RUN(c, ntoks, test, case_id);
    }
    qg_optest_fx_free(&f);
}

static void test_matmul(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    /* rows not a multiple of the rows per workgroup; chunk counts below,
     * at and above the workgroup size; decode and prefill (NT=8 blocks) */
    const int64_t shapes[][2] = {{256, 37}, {512, 70}, {4608, 9}};
    /* decode only: rows of 24, 72 and 128 units (units per lane above one
     * and, for 32-lane groups, not a multiple of the lanes) and row counts
     * that leave the last workgroup of the fast layout part-filled */
    const int64_t mv_shapes[][2] = {{768, 37}, {2304, 45}, {4096, 70}};
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (int si = 0; si < 3; si++) {
            mm_case(QG_OP_MATMUL, 5, case_id++, QG_OPTEST_ALL_W[d], mv_shapes[si][0],
                    mv_shapes[si][1], 1, false);
            mm_case(QG_OP_MATMUL, 5, case_id++, QG_OPTEST_ALL_W[d], shapes[si][0], shapes[si][1], 1,
                    false);
            mm_case(QG_OP_MATMUL, 5, case_id++, QG_OPTEST_ALL_W[d], shapes[si][0], shapes[si][1],
                    19, false);
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

static void fill_qkv(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_qkv *e = ctx;
    qg_optest_fill_act(f, e->x, n_tok, r, -1, 1);
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
            qg_optest_fx f =
                qg_optest_fx_new(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64, true);
            qg_test_rng r = rng_for(8, 1000 + case_id);
            qg_optest_qkv e = {.E = 256};
            const int hd = heads[hi][0];
            e.m[0] = (int64_t)hd * heads[hi][1];
            e.m[1] = e.m[2] = (int64_t)hd * heads[hi][2];
            e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            for (int i = 0; i < 3; i++) {
                e.w[i] = qg_optest_add_weight(&f, "w", triples[ti][i], 2, e.E, e.m[i], 1, &r, 1.0f);
                e.y[i] = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.m[i], T, 1);
            }
            qg_op_params p = {.head_dim = hd, .n_head = heads[hi][1], .n_head_kv = heads[hi][2]};
            qg_optest_add_node(&f, QG_OP_QKV, "qkv", (int[]){e.x, e.w[0], e.w[1], e.w[2]}, 4, e.y,
                               3, &p);
            vcase c = {.f = &f, .n_out = 3, .out = {e.y[0], e.y[1], e.y[2]}, .fill = fill_qkv,
                       .check = qg_optest_check_qkv, .ctx = &e, .mv = true,
                       .check_cm = T == 1 ? NULL : check_qkv_cm};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 8, case_id++);
            qg_optest_fx_free(&f);
        }
}

static void fill_swiglu(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_swiglu *e = ctx;
    qg_optest_fill_act(f, e->x, n_tok, r, -0.3f, 0.3f);
}

static void test_swiglu(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (int ph = 0; ph < 2; ph++) {
            const int T = ph == 0 ? 1 : 10;
            qg_optest_fx f =
                qg_optest_fx_new(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64, true);
            qg_test_rng r = rng_for(9, 1000 + case_id);
            qg_optest_swiglu e = {.E = 256, .F = 48 + 8 * (int64_t)ph};
            e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            e.gate = qg_optest_add_weight(&f, "gate", QG_OPTEST_ALL_W[d], 2, e.E, e.F, 1, &r, 1.0f);
            e.up = qg_optest_add_weight(&f, "up",
                                        QG_OPTEST_ALL_W[(d + 3) % QG_ARRAY_LEN(QG_OPTEST_ALL_W)], 2,
                                        e.E, e.F, 1, &r, 1.0f);
            e.h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, e.F, T, 1);
            qg_op_params p = {0};
            qg_optest_add_node(&f, QG_OP_SWIGLU, "swiglu", (int[]){e.x, e.gate, e.up}, 3,
                               (int[]){e.h}, 1, &p);
            vcase c = {.f = &f, .n_out = 1, .out = {e.h}, .fill = fill_swiglu,
                       .check = qg_optest_check_swiglu, .ctx = &e, .mv = true,
                       .check_cm = T == 1 ? NULL : check_swiglu_cm};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 9, case_id++);
            qg_optest_fx_free(&f);
        }
}

static void fill_rope(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_rope *e = ctx;
    qg_optest_fill_act(f, e->q, n_tok, r, -2, 2);
    qg_optest_fill_act(f, e->k, n_tok, r, -2, 2);
    for (int t = 0; t < f->g->n_tok_max; t++)
        qg_optest_i32(f, e->pos)[t] =
            t < n_tok ? (n_tok == 1 && t == 0 ? 0 : qg_test_rng_int(r, e->C)) : -1;
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
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, C, true);
            qg_test_rng r = rng_for(10, 1000 + case_id);
            qg_optest_rope e = {.hd = heads[hi][0], .nh = heads[hi][1], .nkv = heads[hi][2], .C = C,
                          .eps = 1e-6f, .theta = thetas[th]};
            e.q =
                qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, (int64_t)e.hd * e.nh, T, 1);
            e.k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, (int64_t)e.hd * e.nkv, T,
                                       1);
            e.qn = qg_optest_add_weight(&f, "q_norm", QG_F32, 1, e.hd, 1, 1, &r, 2.0f);
            e.kn = qg_optest_add_weight(&f, "k_norm", QG_F32, 1, e.hd, 1, 1, &r, 2.0f);
            e.pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
            f.g->t_pos = e.pos;
            e.qo = qg_optest_add_tensor(&f, "q_rope", QG_F32, QG_ROLE_ACT, 2, (int64_t)e.hd * e.nh,
                                        T, 1);
            e.ko = qg_optest_add_tensor(&f, "k_rope", QG_F32, QG_ROLE_ACT, 2, (int64_t)e.hd * e.nkv,
                                        T, 1);
            qg_op_params p = {.eps = e.eps, .rope_theta = e.theta, .head_dim = e.hd,
                              .n_head = e.nh, .n_head_kv = e.nkv};
            qg_optest_add_node(&f, QG_OP_ROPE, "rope", (int[]){e.q, e.k, e.qn, e.kn, e.pos}, 5,
                     (int[]){e.qo, e.ko}, 2, &p);
            vcase c = {.f = &f, .n_out = 2, .out = {e.qo, e.ko}, .fill = fill_rope,
                       .check = qg_optest_check_rope, .ctx = &e};
            const int ntoks[] = {1, 2, T};
            RUN(c, ntoks, 10, case_id++);
            qg_optest_fx_free(&f);
        }
}

static void fill_attention(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_attn *e = ctx;
    const int64_t Dkv = (int64_t)e->hd * e->nkv;
    qg_optest_fill_act(f, e->q, n_tok, r, -2, 2);
    qg_optest_fill_act(f, e->k, n_tok, r, -1, 1);
    qg_optest_fill_act(f, e->v, n_tok, r, -1, 1);
    /* consecutive positions from a random start (0 sometimes) */
    const int p0 = qg_test_rng_int(r, 4) == 0 ? 0 : qg_test_rng_int(r, e->C - n_tok + 1);
    for (int t = 0; t < f->g->n_tok_max; t++) qg_optest_i32(f, e->pos)[t] = t < n_tok ? p0 + t : -1;
    /* earlier rows: random, in the cache type */
    qg_optest_fill_cache(e->ct, e->kc0, e->vc0, (size_t)(Dkv * e->C), r);
    memcpy(f->host[e->kc], e->kc0, f->g->tensors[e->kc].nbytes);
    memcpy(f->host[e->vc], e->vc0, f->g->tensors[e->vc].nbytes);
}

/* The caches as qg_optest_expect_kv_written (bit-identical to the CPU's
 * qg_f32_to_f16); the output over the caches as written: f32 scores (error
 * ~ eps * sum|q k| / sqrt(hd)), an online softmax (block maxima, rescaled
 * by exp of f32 differences) and f32 weighted sums: |o - ref| <= 2e-5 *
 * (1 + qk_abs) * sum_j p_j |v_j| + 1e-6 (twice the CPU's bound: the GPU's
 * exp is allowed a few ulp more). */
static void check_attention(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_expect_kv_written(f, ctx, n_tok, label);
    qg_optest_expect_attention(f, ctx, n_tok, label, 2e-5, 1e-6);
}

static void test_attention(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    /* hd up to 256 (two outputs per invocation); C > 128 (several blocks);
     * attention_tile (attn_tile executors, prefill): G = 2 and 1 (hd 256:
     * blocks of 8 rows), G = 8 with hd 128 (the 30B's heads), and G = 6
     * (not dividing 32: attention.comp) */
    const int heads[][3] = {{16, 4, 2}, {64, 6, 1}, {256, 2, 2}, {128, 16, 2}};
    const qg_dtype cts[] = {QG_F32, QG_F16};
    for (int hi = 0; hi < 4; hi++)
        for (int ci = 0; ci < 2; ci++)
            for (int phase = 0; phase < 2; phase++) {
                const int T = phase == 0 ? 1 : 6, C = 300;
                qg_optest_fx f =
                    qg_optest_fx_new(phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, C, true);
                qg_optest_attn e = {.hd = heads[hi][0],
                                    .nh = heads[hi][1],
                                    .nkv = heads[hi][2],
                                    .C = C,
                                    .ct = cts[ci]};
                const int64_t Dq = (int64_t)e.hd * e.nh, Dkv = (int64_t)e.hd * e.nkv;
                e.q = qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T, 1);
                e.k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                e.v = qg_optest_add_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
                e.kc = qg_optest_add_tensor(&f, "cache_k", e.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                e.vc = qg_optest_add_tensor(&f, "cache_v", e.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                e.pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_pos = e.pos;
                e.o = qg_optest_add_tensor(&f, "o", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
                const size_t cb = f.g->tensors[e.kc].nbytes;
                e.kc0 = malloc(cb);
                e.vc0 = malloc(cb);
                assert_true(e.kc0 && e.vc0);
                qg_op_params p = {.head_dim = e.hd, .n_head = e.nh, .n_head_kv = e.nkv};
                qg_optest_add_node(&f, QG_OP_ATTENTION, "attention",
                                   (int[]){e.q, e.k, e.v, e.kc, e.vc, e.pos}, 6, (int[]){e.o}, 1,
                                   &p);
                vcase c = {.f = &f, .n_out = 3, .out = {e.o, e.kc, e.vc}, .fill = fill_attention,
                           .check = check_attention, .ctx = &e, .mv = true};
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
                qg_optest_fx_free(&f);
            }
}

static void fill_topk(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_topk *e = ctx;
    qg_optest_fill_act(f, e->logits, n_tok, r, -6, 6);
    if (e->exact_ties)
        for (int i = 0; i < e->X * n_tok; i++)
            qg_optest_f32(f, e->logits)[i] = (float)qg_test_rng_int(r, 4);
}

static void test_topk(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int XK[][2] = {{8, 1}, {8, 8}, {64, 2}, {128, 8}, {60, 4}, {512, 64}};
    for (int xi = 0; xi < 6; xi++)
        for (int ties = 0; ties < 2; ties++) {
            const int T = 9;
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, true);
            qg_optest_topk e = {.X = XK[xi][0], .K = XK[xi][1], .exact_ties = ties == 1};
            e.logits = qg_optest_add_tensor(&f, "logits", QG_F32, QG_ROLE_INPUT, 2, e.X, T, 1);
            e.ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_ACT, 2, e.K, T, 1);
            e.wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_ACT, 2, e.K, T, 1);
            qg_op_params p = {.n_expert = e.X, .n_expert_used = e.K};
            qg_optest_add_node(&f, QG_OP_TOPK, "topk", (int[]){e.logits}, 1, (int[]){e.ids, e.wts},
                               2, &p);
            vcase c = {.f = &f, .n_out = 2, .out = {e.ids, e.wts}, .fill = fill_topk,
                       .check = qg_optest_check_topk, .ctx = &e};
            const int ntoks[] = {1, 4, T};
            RUN(c, ntoks, 12, case_id++);
            qg_optest_fx_free(&f);
        }
}

static void fill_experts(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_moe *e = ctx;
    const int T = f->g->n_tok_max;
    qg_optest_fill_act(f, e->x, n_tok, r, -0.3f, 0.3f);
    for (int i = 0; i < e->K * T; i++) qg_optest_i32(f, e->ids)[i] = -1;
    qg_optest_make_ids(qg_optest_i32(f, e->ids), e->X, e->K, n_tok, r, false);
    qg_optest_fill_wts(f, e->wts, e->K, n_tok, r); /* dead tokens NaN */
}

/* h as qg_optest_check_expert_swiglu; y as qg_optest_check_aggregate, of
 * the shader's h. */
static void check_experts(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_check_expert_swiglu(f, ctx, n_tok, label);
    qg_optest_check_aggregate(f, ctx, n_tok, label);
}

static void test_expert_swiglu_aggregate(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    /* X, K; the third (decode) as Qwen3-MoE's K = 8 with rows of 768 in the
     * down projection: 192 (expert, unit) items per row */
    const int XK[][2] = {{6, 2}, {4, 3}, {10, 8}};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(QG_OPTEST_MOE_TYPES); ti++)
        for (int xi = 0; xi < 3; xi++) {
            const int T = xi == 1 ? 5 : 1;
            qg_optest_fx f =
                qg_optest_fx_new(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64, true);
            qg_test_rng r = rng_for(13, 1000 + case_id);
            const int64_t F = xi == 2 ? 768 : 256;
            qg_optest_moe e = {.E = 256, .F = F, .X = XK[xi][0], .K = XK[xi][1]};
            e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            e.gate = qg_optest_add_weight(&f, "gate_exps", QG_OPTEST_MOE_TYPES[ti][0], 3, e.E, e.F,
                                          e.X, &r, 1.0f);
            e.up = qg_optest_add_weight(&f, "up_exps", QG_OPTEST_MOE_TYPES[ti][1], 3, e.E, e.F, e.X,
                                        &r, 1.0f);
            e.down = qg_optest_add_weight(&f, "down_exps", QG_OPTEST_MOE_TYPES[ti][2], 3, e.F, e.E,
                                          e.X, &r, 1.0f);
            e.ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_INPUT, 2, e.K, T, 1);
            e.wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_INPUT, 2, e.K, T, 1);
            e.h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 3, e.F, e.K, T);
            e.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.E, T, 1);
            qg_op_params p = {.n_expert = e.X, .n_expert_used = e.K};
            qg_optest_add_node(&f, QG_OP_EXPERT_SWIGLU, "expert_swiglu",
                               (int[]){e.x, e.gate, e.up, e.ids}, 4, (int[]){e.h}, 1, &p);
            qg_optest_add_node(&f, QG_OP_AGGREGATE, "aggregate", (int[]){e.h, e.down, e.ids, e.wts},
                               4, (int[]){e.y}, 1, &p);
            vcase c = {.f = &f, .n_out = 2, .out = {e.h, e.y}, .fill = fill_experts,
                       .check = check_experts, .ctx = &e, .mv = true};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 13, case_id++);
            qg_optest_fx_free(&f);
        }
}

/* As fill_experts, then two of token 0's ids out of range: k = 1 is X,
 * k = K - 2 is negative. */
static void fill_bad_ids(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_moe *e = ctx;
    fill_experts(f, ctx, n_tok, r);
    qg_optest_i32(f, e->ids)[1] = e->X;
    qg_optest_i32(f, e->ids)[e->K - 2] = -7;
}

/* The shaders' NaN (0x7fc00000, not the 0xFF poison: so written) in the
 * bad experts' h columns and all of token 0's y; the other h columns
 * finite. */
static void check_bad_ids(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    (void)n_tok;
    const qg_optest_moe *e = ctx;
    const float *h = qg_optest_f32(f, e->h), *y = qg_optest_f32(f, e->y);
    for (int k = 0; k < e->K; k++)
        for (int64_t i = 0; i < e->F; i++) {
            uint32_t b;
            memcpy(&b, &h[k * e->F + i], 4);
            const bool bad = k == 1 || k == e->K - 2;
            if (bad ? b != 0x7fc00000u : !isfinite(h[k * e->F + i]))
                fail_msg("%s: h[%lld, %d] = 0x%08x (%s)", label, (long long)i, k, b,
                         bad ? "want the NaN of a bad id" : "want a finite value");
        }
    for (int64_t i = 0; i < e->E; i++) {
        uint32_t b;
        memcpy(&b, &y[i], 4);
        if (b != 0x7fc00000u) fail_msg("%s: y[%lld] = 0x%08x, want NaN", label, (long long)i, b);
    }
}

/* Expert ids outside [0, X) make NaN (decode, K = 8, rows of 768 in the
 * down projection), on the plain and the fast decode shaders. */
static void test_bad_expert_ids(void **state) {
    (void)state;
    need_vulkan();
    const qg_dtype types[][3] = {{QG_Q4_K, QG_Q4_K, QG_Q6_K}, {QG_Q8_0, QG_Q6_K, QG_F16}};
    for (int ti = 0; ti < 2; ti++) {
        qg_optest_fx f = qg_optest_fx_new(QG_PHASE_DECODE, 1, 64, true);
        qg_test_rng r = rng_for(18, 1000 + ti);
        qg_optest_moe e = {.E = 256, .F = 768, .X = 10, .K = 8};
        e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, 1, 1);
        e.gate = qg_optest_add_weight(&f, "gate_exps", types[ti][0], 3, e.E, e.F, e.X, &r, 1.0f);
        e.up = qg_optest_add_weight(&f, "up_exps", types[ti][1], 3, e.E, e.F, e.X, &r, 1.0f);
        e.down = qg_optest_add_weight(&f, "down_exps", types[ti][2], 3, e.F, e.E, e.X, &r, 1.0f);
        e.ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_INPUT, 2, e.K, 1, 1);
        e.wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_INPUT, 2, e.K, 1, 1);
        e.h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 3, e.F, e.K, 1);
        e.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, e.E, 1, 1);
        qg_op_params p = {.n_expert = e.X, .n_expert_used = e.K};
        qg_optest_add_node(&f, QG_OP_EXPERT_SWIGLU, "expert_swiglu",
                           (int[]){e.x, e.gate, e.up, e.ids}, 4, (int[]){e.h}, 1, &p);
        qg_optest_add_node(&f, QG_OP_AGGREGATE, "aggregate", (int[]){e.h, e.down, e.ids, e.wts}, 4,
                           (int[]){e.y}, 1, &p);
        vcase c = {.f = &f, .n_out = 2, .out = {e.h, e.y}, .fill = fill_bad_ids,
                   .check = check_bad_ids, .ctx = &e, .mv = true};
        const int ntoks[] = {1};
        RUN(c, ntoks, 18, ti);
        qg_optest_fx_free(&f);
    }
}

/* ---- decode folds: rmsnorm -> product -> add ------------------------------ */

typedef struct fold_ctx {
    int x, nw, w, r, out; /* x, nw (N), W (N, M), r, out (M) */
    int64_t N, M;
    float eps;
} fold_ctx;

static void fill_fold(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const fold_ctx *e = ctx;
    qg_optest_fill_act(f, e->x, n_tok, r, -2, 2);
    qg_optest_fill_act(f, e->r, n_tok, r, -1, 1);
}

/* out = r + W rmsnorm(x): the norm (f32, within a few ulps: rmsnorm's
 * tolerance) through the dot, the dot as matmul, one f32 add:
 * |out - ref| <= 3e-5 * (sum|w||xn| + |ref|) + 1e-6, ref over the
 * float64 norm rounded to f32. */
static void check_fold(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const fold_ctx *e = ctx;
    QG_ASSERT(n_tok == 1);
    double *xn = qg_optest_dalloc(e->N); /* (N) */
    double *ref = qg_optest_dalloc(e->M), *mag = qg_optest_dalloc(e->M); /* (M) */
    float *xf = malloc(sizeof(float) * (size_t)e->N);
    assert_non_null(xf);
    qg_ref_rmsnorm(qg_optest_f32(f, e->x), qg_optest_f32(f, e->nw), e->N, 1, e->eps, xn);
    for (int64_t i = 0; i < e->N; i++) xf[i] = (float)xn[i];
    qg_ref_matmul(f->g->tensors[e->w].type, f->host[e->w], e->N, e->M, xf, 1, ref, mag);
    const float *r = qg_optest_f32(f, e->r);
    for (int64_t i = 0; i < e->M; i++) {
        ref[i] += r[i];
        mag[i] += fabs(ref[i]);
    }
    qg_optest_expect_close(label, "out", qg_optest_f32(f, e->out), ref, mag, e->M, 3e-5, 1e-6);
    free(xf);
    free(xn);
    free(ref);
    free(mag);
}

/* A decode graph rmsnorm -> matmul -> add whose norm and add fold into
 * the product (NORM and RESID: one dispatch), every weight type, on the
 * plain and the fast decode shaders. */
static void test_product_folds(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const int64_t shapes[][2] = {{768, 37}, {2304, 70}, {4096, 45}};
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (int si = 0; si < 3; si++) {
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_DECODE, 1, 64, true);
            qg_test_rng r = rng_for(19, 1000 + case_id);
            fold_ctx e = {.N = shapes[si][0], .M = shapes[si][1], .eps = 1e-6f};
            e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.N, 1, 1);
            e.nw = qg_optest_add_weight(&f, "norm", QG_F32, 1, e.N, 1, 1, &r, 2.0f);
            e.w = qg_optest_add_weight(&f, "w", QG_OPTEST_ALL_W[d], 2, e.N, e.M, 1, &r, 1.0f);
            e.r = qg_optest_add_tensor(&f, "r", QG_F32, QG_ROLE_INPUT, 2, e.M, 1, 1);
            const int xn = qg_optest_add_tensor(&f, "xn", QG_F32, QG_ROLE_ACT, 2, e.N, 1, 1);
            const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, e.M, 1, 1);
            e.out = qg_optest_add_tensor(&f, "out", QG_F32, QG_ROLE_OUTPUT, 2, e.M, 1, 1);
            qg_op_params p = {.eps = e.eps};
            qg_optest_add_node(&f, QG_OP_RMSNORM, "norm", (int[]){e.x, e.nw}, 2, (int[]){xn}, 1,
                               &p);
            qg_optest_add_node(&f, QG_OP_MATMUL, "matmul", (int[]){e.w, xn}, 2, (int[]){y}, 1, &p);
            qg_optest_add_node(&f, QG_OP_ADD, "add", (int[]){y, e.r}, 2, (int[]){e.out}, 1, &p);
            vcase c = {.f = &f, .n_out = 1, .out = {e.out}, .fill = fill_fold,
                       .check = check_fold, .ctx = &e, .mv = true, .n_disp = 1};
            const int ntoks[] = {1, 1};
            RUN(c, ntoks, 19, case_id++);
            qg_optest_fx_free(&f);
        }
}

static void fill_fused(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const qg_optest_moe *e = ctx;
    qg_optest_fill_act(f, e->x, n_tok, r, -0.3f, 0.3f);
}

/* qg_optest_expect_fused.  Routing bit-identical to the unfused chain run
 * just before it (the same shaders); y too in decode graphs (the same
 * expert shaders), but not in prefill graphs, where the fused node groups
 * assignments by expert (moe_sort, swiglu_moe, matmul_moe, moe_combine)
 * and sums in another order: there y is held to the reference alone. */
static void check_fused(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_expect_fused(f, ctx, n_tok, label, f->g->n_tok_max == 1);
}

/* As check_fused, prefill on the coopmat executor: the routing still
 * bit-identical to the chain's (both routers keep the exact path), y at
 * the f16 tolerance. */
static void check_fused_cm(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_expect_fused_tol(f, ctx, n_tok, label, false, CM_REL, CM_ABS);
}

static void test_moe_fused(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    const qg_dtype rts[] = {QG_F32, QG_Q8_0};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(QG_OPTEST_MOE_TYPES); ti++)
        for (int phase = 0; phase < 3; phase++) {
            /* decode; prefill; prefill with > 8 assignments per expert
             * (several tiles of the grouped path per expert) */
            const int T = phase == 0 ? 1 : phase == 1 ? 7 : 40;
            const int X = phase == 0 ? 8 : phase == 1 ? 5 : 4, K = phase == 0 ? 3 : 2;
            qg_optest_fx f =
                qg_optest_fx_new(phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64, true);
            qg_test_rng r = rng_for(14, 1000 + case_id);
            qg_optest_moe e = {.E = 256, .F = 256, .X = X, .K = K};
            e.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, e.E, T, 1);
            e.gate_inp = qg_optest_add_weight(&f, "gate_inp", rts[ti % 2], 2, e.E, X, 1, &r, 1.0f);
            e.gate = qg_optest_add_weight(&f, "gate_exps", QG_OPTEST_MOE_TYPES[ti][0], 3, e.E, e.F,
                                          X, &r, 1.0f);
            e.up = qg_optest_add_weight(&f, "up_exps", QG_OPTEST_MOE_TYPES[ti][1], 3, e.E, e.F, X,
                                        &r, 1.0f);
            e.down = qg_optest_add_weight(&f, "down_exps", QG_OPTEST_MOE_TYPES[ti][2], 3, e.F, e.E,
                                          X, &r, 1.0f);
            /* the chain's tensors are OUTPUTs: never aliased, all readable */
            e.logits = qg_optest_add_tensor(&f, "logits", QG_F32, QG_ROLE_OUTPUT, 2, X, T, 1);
            e.ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, T, 1);
            e.wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, T, 1);
            e.h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_OUTPUT, 3, e.F, K, T);
            e.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, e.E, T, 1);
            e.y2 = qg_optest_add_tensor(&f, "y_fused", QG_F32, QG_ROLE_ACT, 2, e.E, T, 1);
            e.ids2 = qg_optest_add_tensor(&f, "ids_fused", QG_I32, QG_ROLE_ACT, 2, K, T, 1);
            e.wts2 = qg_optest_add_tensor(&f, "wts_fused", QG_F32, QG_ROLE_ACT, 2, K, T, 1);
            qg_op_params p = {.n_expert = X, .n_expert_used = K};
            qg_optest_add_node(&f, QG_OP_ROUTER, "router", (int[]){e.x, e.gate_inp}, 2,
                               (int[]){e.logits}, 1, &p);
            qg_optest_add_node(&f, QG_OP_TOPK, "topk", (int[]){e.logits}, 1, (int[]){e.ids, e.wts},
                               2, &p);
            qg_optest_add_node(&f, QG_OP_EXPERT_SWIGLU, "expert_swiglu",
                               (int[]){e.x, e.gate, e.up, e.ids}, 4, (int[]){e.h}, 1, &p);
            qg_optest_add_node(&f, QG_OP_AGGREGATE, "aggregate", (int[]){e.h, e.down, e.ids, e.wts},
                               4, (int[]){e.y}, 1, &p);
            qg_optest_add_node(&f, QG_OP_MOE_FUSED, "moe_fused",
                               (int[]){e.x, e.gate_inp, e.gate, e.up, e.down}, 5,
                               (int[]){e.y2, e.ids2, e.wts2}, 3, &p);
            vcase c = {.f = &f, .n_out = 8,
                       .out = {e.logits, e.ids, e.wts, e.h, e.y, e.y2, e.ids2, e.wts2},
                       .fill = fill_fused, .check = check_fused, .ctx = &e, .mv = true,
                       .check_cm = phase == 0 ? NULL : check_fused_cm};
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
            qg_optest_fx_free(&f);
        }
}

/* ---- fused pairs: add -> rmsnorm, rope -> attention ------------------------ */

typedef struct addnorm_ctx {
    qg_optest_add add;
    qg_optest_rms rms;
} addnorm_ctx;

static void fill_addnorm(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const addnorm_ctx *e = ctx;
    qg_optest_fill_act(f, e->add.a, n_tok, r, -3, 3);
    qg_optest_fill_act(f, e->add.b, n_tok, r, -3, 3);
}

static void check_addnorm(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const addnorm_ctx *e = ctx;
    qg_optest_check_add(f, &e->add, n_tok, label);     /* y: as add */
    qg_optest_check_rmsnorm(f, &e->rms, n_tok, label); /* h from the y just checked */
}

typedef struct ropeattn_ctx {
    qg_optest_rope rope;
    qg_optest_attn attn; /* q, k: the rope's outputs */
} ropeattn_ctx;

static void fill_ropeattn(qg_optest_fx *f, const void *ctx, int n_tok, qg_test_rng *r) {
    const ropeattn_ctx *e = ctx;
    fill_attention(f, &e->attn, n_tok, r); /* v, pos, caches */
    qg_optest_fill_act(f, e->rope.q, n_tok, r, -2, 2);
    qg_optest_fill_act(f, e->rope.k, n_tok, r, -2, 2);
}

static void check_ropeattn(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const ropeattn_ctx *e = ctx;
    qg_optest_check_rope(f, &e->rope, n_tok, label);
    /* the caches hold the rotated k (bit-exact f16/f32 of the read-back
     * k_rope) and v; o as attention over them */
    check_attention(f, &e->attn, n_tok, label);
}

static void test_fused_pairs(void **state) {
    (void)state;
    need_vulkan();
    int case_id = 0;
    for (int ph = 0; ph < 2; ph++) {
        const int T = ph == 0 ? 1 : 5;
        qg_optest_fx f = qg_optest_fx_new(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 16, true);
        qg_test_rng r = rng_for(16, 1000 + case_id);
        addnorm_ctx e = {.add = {.N = 1000}, .rms = {.N = 1000, .eps = 1e-5f}};
        e.add.a = qg_optest_add_tensor(&f, "a", QG_F32, QG_ROLE_INPUT, 2, e.add.N, T, 1);
        e.add.b = qg_optest_add_tensor(&f, "b", QG_F32, QG_ROLE_INPUT, 2, e.add.N, T, 1);
        e.add.y = e.rms.x = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, e.add.N, T, 1);
        e.rms.w = qg_optest_add_weight(&f, "norm", QG_F32, 1, e.rms.N, 1, 1, &r, 2.0f);
        e.rms.y = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, e.rms.N, T, 1);
        qg_op_params p = {.eps = e.rms.eps};
        qg_optest_add_node(&f, QG_OP_ADD, "add", (int[]){e.add.a, e.add.b}, 2, (int[]){e.add.y}, 1,
                           &p);
        qg_optest_add_node(&f, QG_OP_RMSNORM, "add+rmsnorm", (int[]){e.add.y, e.rms.w}, 2,
                           (int[]){e.rms.y}, 1, &p);
        vcase c = {.f = &f, .n_out = 2, .out = {e.add.y, e.rms.y}, .fill = fill_addnorm,
                   .check = check_addnorm, .ctx = &e, .mv = true};
        const int ntoks[] = {1, T};
        RUN(c, ntoks, 16, case_id++);
        qg_optest_fx_free(&f);
    }
    const qg_dtype cts[] = {QG_F16, QG_F32};
    for (int ci = 0; ci < 2; ci++)
        for (int ph = 0; ph < 2; ph++) {
            const int T = ph == 0 ? 1 : 4, C = 200, hd = 64, nh = 4, nkv = 2;
            qg_optest_fx f =
                qg_optest_fx_new(T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, C, true);
            qg_test_rng r = rng_for(17, 1000 + case_id);
            ropeattn_ctx e = {.rope = {.hd = hd, .nh = nh, .nkv = nkv, .C = C, .eps = 1e-6f,
                                       .theta = 1e6f},
                              .attn = {.hd = hd, .nh = nh, .nkv = nkv, .C = C, .ct = cts[ci]}};
            const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
            e.rope.q = qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T, 1);
            e.rope.k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
            e.rope.qn = qg_optest_add_weight(&f, "q_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
            e.rope.kn = qg_optest_add_weight(&f, "k_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
            e.rope.pos = e.attn.pos =
                qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
            f.g->t_pos = e.rope.pos;
            e.rope.qo = e.attn.q =
                qg_optest_add_tensor(&f, "q_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T, 1);
            e.rope.ko = e.attn.k =
                qg_optest_add_tensor(&f, "k_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, T, 1);
            e.attn.v = qg_optest_add_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T, 1);
            e.attn.kc = qg_optest_add_tensor(&f, "cache_k", e.attn.ct, QG_ROLE_KV, 2, Dkv, C, 1);
            e.attn.vc = qg_optest_add_tensor(&f, "cache_v", e.attn.ct, QG_ROLE_KV, 2, Dkv, C, 1);
            e.attn.o = qg_optest_add_tensor(&f, "o", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
            const size_t cb = f.g->tensors[e.attn.kc].nbytes;
            e.attn.kc0 = malloc(cb);
            e.attn.vc0 = malloc(cb);
            assert_true(e.attn.kc0 && e.attn.vc0);
            qg_op_params p = {.eps = 1e-6f, .rope_theta = 1e6f, .head_dim = hd, .n_head = nh,
                              .n_head_kv = nkv};
            qg_optest_add_node(&f, QG_OP_ROPE, "rope",
                               (int[]){e.rope.q, e.rope.k, e.rope.qn, e.rope.kn, e.rope.pos}, 5,
                               (int[]){e.rope.qo, e.rope.ko}, 2, &p);
            qg_optest_add_node(&f, QG_OP_ATTENTION, "rope+attention",
                     (int[]){e.attn.q, e.attn.k, e.attn.v, e.attn.kc, e.attn.vc, e.attn.pos}, 6,
                     (int[]){e.attn.o}, 1, &p);
            vcase c = {.f = &f, .n_out = 5,
                       .out = {e.rope.qo, e.rope.ko, e.attn.o, e.attn.kc, e.attn.vc},
                       .fill = fill_ropeattn, .check = check_ropeattn, .ctx = &e,
                       .mv = true};
            const int ntoks[] = {1, T};
            RUN(c, ntoks, 17, case_id++);
            free(e.attn.kc0);
            free(e.attn.vc0);
            qg_optest_fx_free(&f);
        }
}

/* ---- supports ------------------------------------------------------------ */

static void test_supports(void **state) {
    (void)state;
    need_vulkan();
    qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, 4, 16, true);
    qg_test_rng r = rng_for(15, 0);
    const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int xh = qg_optest_add_tensor(&f, "xh", QG_F16, QG_ROLE_ACT, 2, 64, 4, 1);
    const int w16 = qg_optest_add_weight(&f, "w16", QG_F16, 1, 64, 1, 1, &r, 1.0f);
    const int w32 = qg_optest_add_weight(&f, "w32", QG_F32, 1, 64, 1, 1, &r, 1.0f);
    const int wq = qg_optest_add_weight(&f, "wq", QG_Q8_0, 2, 64, 8, 1, &r, 1.0f);
    const int wodd = qg_optest_add_weight(&f, "wodd", QG_F32, 2, 48, 8, 1, &r, 1.0f);
    const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int kc8 = qg_optest_add_tensor(&f, "kc8", QG_Q8_0, QG_ROLE_KV, 2, 64, 16, 1);
    const int pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 4, 1, 1);
    qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 4, .eps = 1e-6f};
    qg_op_params big = {.head_dim = 512, .n_head = 1, .n_head_kv = 1};
    const int ok =
        qg_optest_add_node(&f, QG_OP_RMSNORM, "ok", (int[]){x, w32}, 2, (int[]){y}, 1, &p);
    const int bad_w =
        qg_optest_add_node(&f, QG_OP_RMSNORM, "bad_w", (int[]){x, w16}, 2, (int[]){y}, 1, &p);
    const int bad_x =
        qg_optest_add_node(&f, QG_OP_ADD, "bad_x", (int[]){x, xh}, 2, (int[]){y}, 1, &p);
    const int mm = qg_optest_add_node(&f, QG_OP_MATMUL, "mm", (int[]){wq, x}, 2, (int[]){y}, 1, &p);
    const int mm_odd =
        qg_optest_add_node(&f, QG_OP_MATMUL, "mm_odd", (int[]){wodd, x}, 2, (int[]){y}, 1, &p);
    const int att = qg_optest_add_node(&f, QG_OP_ATTENTION, "att", (int[]){x, x, x, kc8, kc8, pos},
                                       6, (int[]){y}, 1, &p);
    const int rope = qg_optest_add_node(&f, QG_OP_ROPE, "rope_big", (int[]){x, x, w32, w32, pos}, 5,
                              (int[]){y, y}, 2, &big);
    const int cp = qg_optest_add_node(&f, QG_OP_COPY, "copy", (int[]){x}, 1, (int[]){y}, 1, &p);
    const qg_exec *e = &g_vk[0];
    assert_true(e->i->supports(e->self, f.g, &f.g->nodes[ok]));
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[bad_w]));
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[bad_x]));
    assert_true(e->i->supports(e->self, f.g, &f.g->nodes[mm]));
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[mm_odd])); /* rows not 32-multiples */
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[att]));    /* Q8_0 cache */
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[rope]));   /* head_dim > 256 */
    assert_false(e->i->supports(e->self, f.g, &f.g->nodes[cp]));     /* runtime's job */
    qg_optest_fx_free(&f);
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
        cmocka_unit_test(test_bad_expert_ids),
        cmocka_unit_test(test_moe_fused),
        cmocka_unit_test(test_product_folds),
        cmocka_unit_test(test_fused_pairs),
    };
    /* narrowing: QG_TEST_FILTER runs the matching tests, QG_TEST_SKIP
     * skips them (cmocka patterns) */
    if (getenv("QG_TEST_FILTER")) cmocka_set_test_filter(getenv("QG_TEST_FILTER"));
    if (getenv("QG_TEST_SKIP")) cmocka_set_skip_filter(getenv("QG_TEST_SKIP"));
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
