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
 * Fixtures, random inputs and the per-op checks are the shared harness of
 * tests/ref/qg_optest.h; this file keeps the CPU driver (run_spec) and the
 * CPU-only cases.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "qg_optest.h"
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

/* A different stream for every (test, case). */
static qg_test_rng rng_for(int test, int case_id) {
    return qg_optest_rng_for(test, case_id, 12345u);
}

/* ---- running a node -------------------------------------------------- */

static void task_run(void *arg, int ith, int nth) { qg_cpu_op_run(arg, ith, nth); }

/* Run node `node` on nth workers with the given quant kernels. */
static void fx_run(qg_optest_fx *f, int node, int n_tok, int nth, const qg_quant_kernels *qk) {
    const qg_node *n = &f->g->nodes[node];
    assert_true(qg_cpu_op_supports(f->g, n));
    size_t pt = 0, sh = 0;
    qg_cpu_op_scratch(f->g, n, nth, &pt, &sh);
    const size_t nf = pt * (size_t)nth;
    float *scr = malloc(sizeof(float) * (nf ? nf : 1));
    void *shared = malloc(sh ? sh : 1);
    assert_true(scr && shared);
    for (size_t i = 0; i < nf; i++) scr[i] = NAN;
    memset(shared, QG_OPTEST_POISON, sh);
    qg_threadpool *tp = qg_threadpool_new(nth);
    assert_non_null(tp);
    qg_cpu_op_args a = {.g = f->g, .n = n, .addr = f->host, .n_tok = n_tok, .qk = qk,
                        .tp = tp, .scratch = scr, .scratch_floats = pt,
                        .shared = shared, .shared_bytes = sh};
    qg_threadpool_run(tp, task_run, &a);
    qg_threadpool_free(tp);
    free(scr);
    free(shared);
}

typedef struct spec spec;

/* One case: node(s) to run, outputs, how to check. */
struct spec {
    qg_optest_fx *f;
    int node;           /* node to run (see also pre_nodes) */
    int n_pre;          /* nodes run before `node`, in order, each time */
    int pre[4];
    int n_tok;
    int n_res;          /* tensors compared bitwise across nth */
    int res[8];
    void (*prepare)(qg_optest_fx *f, const spec *s); /* restore mutable inputs; may be NULL */
    qg_optest_check_fn check; /* called with ctx */
    void *ctx;
};

/* The driver: both kernel levels, nth 1..3, poison, run, check tails, check
 * values, check bit-identity across nth. */
static void run_spec(const spec *s) {
    qg_quant_kernels lv[2] = {qg_quant_kernels_at(QG_SIMD_SCALAR), qg_quant_kernels_best()};
    const int n_lv = lv[1].level == QG_SIMD_SCALAR ? 1 : 2;
    qg_optest_fx *f = s->f;
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
                    memset(f->host[n->out[o]], QG_OPTEST_POISON, f->g->tensors[n->out[o]].nbytes);
            }
            for (int i = 0; i < nn; i++) fx_run(f, nodes[i], s->n_tok, nth, &lv[l]);
            for (int i = 0; i < nn; i++) {
                const qg_node *n = &f->g->nodes[nodes[i]];
                for (int o = 0; o < n->n_out; o++)
                    qg_optest_expect_tail(f, n->out[o], s->n_tok, label);
            }
            s->check(f, s->ctx, s->n_tok, label);
            for (int r = 0; r < s->n_res; r++) {
                const int id = s->res[r];
                const size_t nb = f->g->tensors[id].nbytes;
                if (nth == 1) {
                    first[r] = malloc(nb);
                    assert_non_null(first[r]);
                    memcpy(first[r], f->host[id], nb);
                } else if (memcmp(first[r], f->host[id], nb) != 0) {
                    fail_msg("%s: %s differs from the nth=1 result", label,
                             f->g->tensors[id].name);
                }
            }
        }
        for (int r = 0; r < s->n_res; r++) free(first[r]);
    }
}

static void test_embed(void **state) {
    (void)state;
    int case_id = 0;
    const int64_t Es[] = {256, 768};
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (size_t ei = 0; ei < QG_ARRAY_LEN(Es); ei++) {
            const int T = 5, V = 11;
            const int ntoks[] = {1, 2, T};
            for (int ni = 0; ni < 3; ni++) {
                qg_test_rng r = rng_for(1, case_id++);
                qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, false);
                qg_optest_embed c = {.E = Es[ei]};
                c.w = qg_optest_add_weight(&f, "tok_embd", QG_OPTEST_ALL_W[d], 2, c.E, V, 1, &r,
                                           1.0f);
                c.tok = qg_optest_add_tensor(&f, "tokens", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_tokens = c.tok;
                c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
                for (int t = 0; t < T; t++)
                    qg_optest_i32(&f, c.tok)[t] = t < ntoks[ni] ? qg_test_rng_int(&r, V) : -1;
                qg_op_params p = {0};
                const int node = qg_optest_add_node(&f, QG_OP_EMBED, "embed", (int[]){c.w, c.tok},
                                                    2, (int[]){c.x}, 1, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[ni], .n_res = 1,
                          .res = {c.x}, .check = qg_optest_check_embed, .ctx = &c};
                run_spec(&s);
                qg_optest_fx_free(&f);
            }
        }
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
            qg_test_rng r = rng_for(2, case_id++);
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, false);
            qg_optest_rms c = {.N = Ns[ni], .eps = epss[k]};
            c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.w = qg_optest_add_weight(&f, "norm", QG_F32, 1, c.N, 1, 1, &r, 2.0f);
            c.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            qg_optest_fill_act(&f, c.x, ntoks[k], &r, -3, 3);
            qg_op_params p = {.eps = c.eps};
            const int node = qg_optest_add_node(&f, QG_OP_RMSNORM, "rmsnorm", (int[]){c.x, c.w}, 2,
                                      (int[]){c.y}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = qg_optest_check_rmsnorm, .ctx = &c};
            run_spec(&s);
            qg_optest_fx_free(&f);
        }
    }
}

static void test_add(void **state) {
    (void)state;
    int case_id = 0;
    const int64_t Ns[] = {7, 300, 1024};
    for (int ni = 0; ni < 3; ni++) {
        const int T = 5;
        const int ntoks[] = {1, 2, T};
        for (int k = 0; k < 3; k++) {
            qg_test_rng r = rng_for(3, case_id++);
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, false);
            qg_optest_add c = {.N = Ns[ni]};
            c.a = qg_optest_add_tensor(&f, "a", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.b = qg_optest_add_tensor(&f, "b", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            qg_optest_fill_act(&f, c.a, ntoks[k], &r, -10, 10);
            qg_optest_fill_act(&f, c.b, ntoks[k], &r, -10, 10);
            qg_op_params p = {0};
            const int node =
                qg_optest_add_node(&f, QG_OP_ADD, "add", (int[]){c.a, c.b}, 2, (int[]){c.y}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = qg_optest_check_add, .ctx = &c};
            run_spec(&s);
            qg_optest_fx_free(&f);
        }
    }
}

typedef struct copy_ctx {
    int x, y;
} copy_ctx;

static void check_copy(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const copy_ctx *c = ctx;
    /* exact: the live bytes equal the source's */
    if (memcmp(f->host[c->x], f->host[c->y], qg_optest_live_bytes(f, c->x, n_tok)) != 0)
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
            qg_test_rng r = rng_for(4, case_id++);
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, false);
            copy_ctx c;
            const int64_t N = 1000 + 24 * ti; /* > 4 KiB per few tokens */
            c.x = qg_optest_add_tensor(&f, "x", types[ti], QG_ROLE_ACT, 2, N, T, 1);
            c.y = qg_optest_add_tensor(&f, "y", types[ti], QG_ROLE_ACT, 2, N, T, 1);
            unsigned char *b = f.host[c.x];
            for (size_t i = 0; i < f.g->tensors[c.x].nbytes; i++)
                b[i] = (unsigned char)qg_test_rng_u64(&r);
            qg_op_params p = {0};
            const int node =
                qg_optest_add_node(&f, QG_OP_COPY, "copy", (int[]){c.x}, 1, (int[]){c.y}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = check_copy, .ctx = &c};
            run_spec(&s);
            qg_optest_fx_free(&f);
        }
}

/* op: MATMUL (w, x), ROUTER (x, w) or LM_HEAD (x, w). */
static void mm_cases(qg_op op, int test_id) {
    int case_id = 0;
    const int64_t shapes[][2] = {{256, 37}, {512, 70}};
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (int si = 0; si < 2; si++)
            for (int ol = 0; ol < (op == QG_OP_LM_HEAD ? 2 : 1); ol++) {
                const int T = 37; /* two column blocks of the gemm */
                const int ntoks[] = {1, 3, T};
                for (int k = 0; k < 3; k++) {
                    qg_test_rng r = rng_for(test_id, case_id++);
                    qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
                    qg_optest_mm c = {.N = shapes[si][0], .M = shapes[si][1], .only_last = ol == 1};
                    c.w =
                        qg_optest_add_weight(&f, "w", QG_OPTEST_ALL_W[d], 2, c.N, c.M, 1, &r, 1.0f);
                    c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
                    c.y = qg_optest_add_tensor(&f, "y", QG_F32,
                                               op == QG_OP_LM_HEAD ? QG_ROLE_OUTPUT : QG_ROLE_ACT,
                                               2, c.M, c.only_last ? 1 : T, 1);
                    qg_optest_fill_act(&f, c.x, ntoks[k], &r, -1, 1);
                    qg_op_params p = {.only_last = c.only_last};
                    const int *in = op == QG_OP_MATMUL ? (int[]){c.w, c.x} : (int[]){c.x, c.w};
                    const int node =
                        qg_optest_add_node(&f, op, qg_op_name(op), in, 2, (int[]){c.y}, 1, &p);
                    spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1,
                              .res = {c.y}, .check = qg_optest_check_matmul, .ctx = &c};
                    run_spec(&s);
                    qg_optest_fx_free(&f);
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
                qg_test_rng r = rng_for(8, case_id++);
                qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
                qg_optest_qkv c = {.E = 256};
                const int hd = heads[hi][0];
                c.m[0] = (int64_t)hd * heads[hi][1];
                c.m[1] = c.m[2] = (int64_t)hd * heads[hi][2];
                c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
                for (int i = 0; i < 3; i++) {
                    c.w[i] =
                        qg_optest_add_weight(&f, "w", triples[ti][i], 2, c.E, c.m[i], 1, &r, 1.0f);
                    c.y[i] = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.m[i], T, 1);
                }
                qg_optest_fill_act(&f, c.x, ntoks[k], &r, -1, 1);
                qg_op_params p = {.head_dim = hd, .n_head = heads[hi][1],
                                  .n_head_kv = heads[hi][2]};
                const int node = qg_optest_add_node(
                    &f, QG_OP_QKV, "qkv", (int[]){c.x, c.w[0], c.w[1], c.w[2]}, 4, c.y, 3, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 3,
                          .res = {c.y[0], c.y[1], c.y[2]}, .check = qg_optest_check_qkv, .ctx = &c};
                run_spec(&s);
                qg_optest_fx_free(&f);
            }
        }
}

static void test_swiglu(void **state) {
    (void)state;
    int case_id = 0;
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++) {
        const int T = 37;
        const int ntoks[] = {1, 4, T};
        for (int k = 0; k < 3; k++) {
            qg_test_rng r = rng_for(9, case_id++);
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
            qg_optest_swiglu c = {.E = 256, .F = 48 + 8 * (int64_t)k};
            c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
            c.gate = qg_optest_add_weight(&f, "gate", QG_OPTEST_ALL_W[d], 2, c.E, c.F, 1, &r, 1.0f);
            c.up = qg_optest_add_weight(&f, "up",
                                        QG_OPTEST_ALL_W[(d + 3) % QG_ARRAY_LEN(QG_OPTEST_ALL_W)], 2,
                                        c.E, c.F, 1, &r, 1.0f);
            c.h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, c.F, T, 1);
            qg_optest_fill_act(&f, c.x, ntoks[k], &r, -0.3f, 0.3f);
            qg_op_params p = {0};
            const int node = qg_optest_add_node(&f, QG_OP_SWIGLU, "swiglu",
                                                (int[]){c.x, c.gate, c.up}, 3, (int[]){c.h}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.h},
                      .check = qg_optest_check_swiglu, .ctx = &c};
            run_spec(&s);
            qg_optest_fx_free(&f);
        }
    }
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
                qg_test_rng r = rng_for(10, case_id++);
                qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
                qg_optest_rope c = {.hd = heads[hi][0], .nh = heads[hi][1], .nkv = heads[hi][2],
                              .eps = 1e-6f, .theta = thetas[th]};
                c.q = qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_ACT, 2, (int64_t)c.hd * c.nh, T,
                                           1);
                c.k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_ACT, 2, (int64_t)c.hd * c.nkv,
                                           T, 1);
                c.qn = qg_optest_add_weight(&f, "q_norm", QG_F32, 1, c.hd, 1, 1, &r, 2.0f);
                c.kn = qg_optest_add_weight(&f, "k_norm", QG_F32, 1, c.hd, 1, 1, &r, 2.0f);
                c.pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                f.g->t_pos = c.pos;
                c.qo = qg_optest_add_tensor(&f, "q_rope", QG_F32, QG_ROLE_ACT, 2,
                                            (int64_t)c.hd * c.nh, T, 1);
                c.ko = qg_optest_add_tensor(&f, "k_rope", QG_F32, QG_ROLE_ACT, 2,
                                            (int64_t)c.hd * c.nkv, T, 1);
                qg_optest_fill_act(&f, c.q, ntoks[k], &r, -2, 2);
                qg_optest_fill_act(&f, c.k, ntoks[k], &r, -2, 2);
                /* positions up to 40000: where an f32 angle would fail */
                for (int t = 0; t < T; t++)
                    qg_optest_i32(&f, c.pos)[t] = k == 0 ? 0 : qg_test_rng_int(&r, 40000);
                qg_op_params p = {.eps = c.eps, .rope_theta = c.theta, .head_dim = c.hd,
                                  .n_head = c.nh, .n_head_kv = c.nkv};
                const int node = qg_optest_add_node(&f, QG_OP_ROPE, "rope",
                                          (int[]){c.q, c.k, c.qn, c.kn, c.pos}, 5,
                                          (int[]){c.qo, c.ko}, 2, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 2,
                          .res = {c.qo, c.ko}, .check = qg_optest_check_rope, .ctx = &c};
                run_spec(&s);
                qg_optest_fx_free(&f);
            }
        }
}

static void attn_prepare(qg_optest_fx *f, const spec *s) {
    const qg_optest_attn *c = s->ctx;
    memcpy(f->host[c->kc], c->kc0, f->g->tensors[c->kc].nbytes);
    memcpy(f->host[c->vc], c->vc0, f->g->tensors[c->vc].nbytes);
}

/* 1. the caches as qg_optest_expect_kv_written; 2. the output against the
 * reference over the caches as written: f32 scores (error ~ sqrt(hd) u
 * sum|q k| / sqrt(hd), u = 2^-24), softmax and a weighted sum over <= 48
 * rows, rounding errors growing like sqrt(n) u: |o - ref| <= 1e-6 * (1 +
 * qk_abs) * sum_j p_j |v_j| + 1e-7 (the largest seen is 7e-8 of that
 * scale; a 2e-5 relative exp error fails it); 3. F16 caches: against the
 * reference with this step's k, v unrounded (below). */
static void check_attention(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const qg_optest_attn *c = ctx;
    qg_optest_expect_kv_written(f, c, n_tok, label);
    qg_optest_expect_attention(f, c, n_tok, label, 1e-6, 1e-7);
    if (c->ct != QG_F16) return;
    /* 3. Rounding to f16 moves each k, v by at most u = 2^-11 relative (plus
     * 2^-25 absolute for subnormals), each score by at most d = u * qk_abs,
     * each p_j by a factor within e^(+-2d):
     * |o - ref| <= ((e^(2d) - 1)(1 + u) + u) * sum p|v| + the f32 bound
     * (subnormal f16 values add at most 2^-25, inside the 2e-7). */
    const int64_t Dkv = (int64_t)c->hd * c->nkv, Dq = (int64_t)c->hd * c->nh;
    const int32_t *pos = qg_optest_i32(f, c->pos);
    double *kd = qg_optest_dalloc(Dkv * c->C), *vd = qg_optest_dalloc(Dkv * c->C); /* (Dkv, C) */
    qg_optest_read_kv(f, c, kd, vd);
    for (int t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < Dkv; i++) {
            kd[(size_t)pos[t] * Dkv + i] = qg_optest_f32(f, c->k)[t * Dkv + i];
            vd[(size_t)pos[t] * Dkv + i] = qg_optest_f32(f, c->v)[t * Dkv + i];
        }
    double *ref = qg_optest_dalloc(Dq * n_tok),
           *pva = qg_optest_dalloc(Dq * n_tok);             /* (Dq, n_tok) */
    double *qka = qg_optest_dalloc((int64_t)c->nh * n_tok); /* (nh, n_tok) */
    double *mag = qg_optest_dalloc(Dq * n_tok);             /* (Dq, n_tok) */
    qg_ref_attention(qg_optest_f32(f, c->q), kd, vd, pos, n_tok, c->hd, c->nh, c->nkv, ref, pva,
                     qka);
    const double u = 0x1p-11;
    for (int t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < Dq; i++) {
            const double qa = qka[t * c->nh + i / c->hd] * (1 + u);
            const double d = u * qa;
            mag[t * Dq + i] =
                ((expm1(2 * d) * (1 + u) + u) * 1e6 + 1 + qa) * pva[t * Dq + i] * (1 + u);
        }
    qg_optest_expect_close(label, "o (unrounded k,v)", qg_optest_f32(f, c->o), ref, mag, Dq * n_tok,
                           1e-6, 2e-7);
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
                    qg_test_rng r = rng_for(11, case_id++);
                    qg_optest_fx f = qg_optest_fx_new(
                        phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, C, false);
                    qg_optest_attn c = {.hd = heads[hi][0], .nh = heads[hi][1], .nkv = heads[hi][2],
                                  .C = C, .ct = cts[ci]};
                    const int64_t Dq = (int64_t)c.hd * c.nh, Dkv = (int64_t)c.hd * c.nkv;
                    c.q = qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
                    c.k = qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_ACT, 2, Dkv, T, 1);
                    c.v = qg_optest_add_tensor(&f, "v", QG_F32, QG_ROLE_ACT, 2, Dkv, T, 1);
                    c.kc = qg_optest_add_tensor(&f, "cache_k", c.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                    c.vc = qg_optest_add_tensor(&f, "cache_v", c.ct, QG_ROLE_KV, 2, Dkv, C, 1);
                    c.pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1, 1);
                    f.g->t_pos = c.pos;
                    c.o = qg_optest_add_tensor(&f, "o", QG_F32, QG_ROLE_ACT, 2, Dq, T, 1);
                    const int n_tok = ntoks[k];
                    qg_optest_fill_act(&f, c.q, n_tok, &r, -2, 2);
                    qg_optest_fill_act(&f, c.k, n_tok, &r, -1, 1);
                    qg_optest_fill_act(&f, c.v, n_tok, &r, -1, 1);
                    /* consecutive positions from a random start (0 sometimes) */
                    const int p0 = (case_id % 4 == 0) ? 0 : qg_test_rng_int(&r, C - n_tok + 1);
                    for (int t = 0; t < T; t++)
                        qg_optest_i32(&f, c.pos)[t] = t < n_tok ? p0 + t : -1;
                    /* earlier rows: random, in the cache type */
                    const size_t cb = f.g->tensors[c.kc].nbytes;
                    c.kc0 = malloc(cb);
                    c.vc0 = malloc(cb);
                    assert_true(c.kc0 && c.vc0);
                    qg_optest_fill_cache(c.ct, c.kc0, c.vc0, (size_t)(Dkv * C), &r);
                    qg_op_params p = {.head_dim = c.hd, .n_head = c.nh, .n_head_kv = c.nkv};
                    const int node = qg_optest_add_node(&f, QG_OP_ATTENTION, "attention",
                                              (int[]){c.q, c.k, c.v, c.kc, c.vc, c.pos}, 6,
                                              (int[]){c.o}, 1, &p);
                    spec s = {.f = &f, .node = node, .n_tok = n_tok, .n_res = 3,
                              .res = {c.o, c.kc, c.vc}, .prepare = attn_prepare,
                              .check = check_attention, .ctx = &c};
                    run_spec(&s);
                    free(c.kc0);
                    free(c.vc0);
                    qg_optest_fx_free(&f);
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
    qg_test_rng r = rng_for(16, 0);
    for (int n = 1; n <= 1003; n += 71) {
        float *s = malloc(sizeof(float) * (size_t)n);
        double *ref = qg_optest_dalloc(n);
        assert_non_null(s);
        const float mx = qg_test_rng_unif(&r, -5, 5);
        double sum_ref = 0;
        for (int j = 0; j < n; j++) {
            /* mostly the softmax range, some below the clamp */
            s[j] =
                mx + (j % 17 == 0 ? qg_test_rng_unif(&r, -100, 0) : qg_test_rng_unif(&r, -20, 0));
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

static void test_topk(void **state) {
    (void)state;
    int case_id = 0;
    const int XK[][2] = {{8, 1}, {8, 8}, {64, 2}, {128, 8}, {60, 4}};
    for (int xi = 0; xi < 5; xi++)
        for (int ties = 0; ties < 2; ties++) {
            const int T = 9;
            const int ntoks[] = {1, 4, T};
            for (int k = 0; k < 3; k++) {
                qg_test_rng r = rng_for(12, case_id++);
                qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 16, false);
                qg_optest_topk c = {.X = XK[xi][0], .K = XK[xi][1], .exact_ties = ties == 1};
                c.logits = qg_optest_add_tensor(&f, "logits", QG_F32, QG_ROLE_ACT, 2, c.X, T, 1);
                c.ids = qg_optest_add_tensor(&f, "ids", QG_I32, QG_ROLE_ACT, 2, c.K, T, 1);
                c.wts = qg_optest_add_tensor(&f, "wts", QG_F32, QG_ROLE_ACT, 2, c.K, T, 1);
                qg_optest_fill_act(&f, c.logits, ntoks[k], &r, -6, 6);
                if (c.exact_ties)
                    for (int i = 0; i < c.X * ntoks[k]; i++)
                        qg_optest_f32(&f, c.logits)[i] = (float)qg_test_rng_int(&r, 4);
                qg_op_params p = {.n_expert = c.X, .n_expert_used = c.K};
                const int node = qg_optest_add_node(&f, QG_OP_TOPK, "topk", (int[]){c.logits}, 1,
                                          (int[]){c.ids, c.wts}, 2, &p);
                spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 2,
                          .res = {c.ids, c.wts}, .check = qg_optest_check_topk, .ctx = &c};
                run_spec(&s);
                qg_optest_fx_free(&f);
            }
        }
}

/* Build the MoE chain (and the fused node) for E, F, X, K, types. */
static qg_optest_moe moe_build(qg_optest_fx *f, int T, int64_t E, int64_t F, int X, int K,
                               qg_dtype rt, qg_dtype gt, qg_dtype ut, qg_dtype dt, qg_test_rng *r) {
    qg_optest_moe c = {.E = E, .F = F, .X = X, .K = K};
    c.x = qg_optest_add_tensor(f, "x", QG_F32, QG_ROLE_ACT, 2, E, T, 1);
    c.gate_inp = qg_optest_add_weight(f, "gate_inp", rt, 2, E, X, 1, r, 1.0f);
    c.gate = qg_optest_add_weight(f, "gate_exps", gt, 3, E, F, X, r, 1.0f);
    c.up = qg_optest_add_weight(f, "up_exps", ut, 3, E, F, X, r, 1.0f);
    c.down = qg_optest_add_weight(f, "down_exps", dt, 3, F, E, X, r, 1.0f);
    c.logits = qg_optest_add_tensor(f, "logits", QG_F32, QG_ROLE_ACT, 2, X, T, 1);
    c.ids = qg_optest_add_tensor(f, "ids", QG_I32, QG_ROLE_ACT, 2, K, T, 1);
    c.wts = qg_optest_add_tensor(f, "wts", QG_F32, QG_ROLE_ACT, 2, K, T, 1);
    c.h = qg_optest_add_tensor(f, "h", QG_F32, QG_ROLE_ACT, 3, F, K, T);
    c.y = qg_optest_add_tensor(f, "y", QG_F32, QG_ROLE_ACT, 2, E, T, 1);
    c.y2 = qg_optest_add_tensor(f, "y_fused", QG_F32, QG_ROLE_ACT, 2, E, T, 1);
    c.ids2 = qg_optest_add_tensor(f, "ids_fused", QG_I32, QG_ROLE_ACT, 2, K, T, 1);
    c.wts2 = qg_optest_add_tensor(f, "wts_fused", QG_F32, QG_ROLE_ACT, 2, K, T, 1);
    qg_op_params p = {.n_expert = X, .n_expert_used = K};
    c.n_router = qg_optest_add_node(f, QG_OP_ROUTER, "router", (int[]){c.x, c.gate_inp}, 2,
                          (int[]){c.logits}, 1, &p);
    c.n_topk = qg_optest_add_node(f, QG_OP_TOPK, "topk", (int[]){c.logits}, 1,
                                  (int[]){c.ids, c.wts}, 2, &p);
    c.n_swiglu = qg_optest_add_node(f, QG_OP_EXPERT_SWIGLU, "expert_swiglu",
                          (int[]){c.x, c.gate, c.up, c.ids}, 4, (int[]){c.h}, 1, &p);
    c.n_agg = qg_optest_add_node(f, QG_OP_AGGREGATE, "aggregate",
                                 (int[]){c.h, c.down, c.ids, c.wts}, 4, (int[]){c.y}, 1, &p);
    c.n_fused = qg_optest_add_node(f, QG_OP_MOE_FUSED, "moe_fused",
                         (int[]){c.x, c.gate_inp, c.gate, c.up, c.down}, 5,
                         (int[]){c.y2, c.ids2, c.wts2}, 3, &p);
    return c;
}

static void test_expert_swiglu_aggregate(void **state) {
    (void)state;
    int case_id = 0;
    const int XK[][2] = {{6, 2}, {4, 3}};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(QG_OPTEST_MOE_TYPES); ti++)
        for (int xi = 0; xi < 2; xi++) {
            const int T = 40; /* expert 0 gets 40 > 32 assignments */
            const int ntoks[] = {1, 5, T};
            for (int k = 0; k < 3; k++) {
                qg_test_rng r = rng_for(13, case_id++);
                qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
                qg_optest_moe c = moe_build(&f, T, 256, 256, XK[xi][0], XK[xi][1], QG_F32,
                                            QG_OPTEST_MOE_TYPES[ti][0], QG_OPTEST_MOE_TYPES[ti][1],
                                            QG_OPTEST_MOE_TYPES[ti][2], &r);
                const int n_tok = ntoks[k];
                qg_optest_fill_act(&f, c.x, n_tok, &r, -0.3f, 0.3f);
                qg_optest_make_ids(qg_optest_i32(&f, c.ids), c.X, c.K, n_tok, &r, true);
                qg_optest_fill_wts(&f, c.wts, c.K, n_tok, &r);
                spec s = {.f = &f, .node = c.n_swiglu, .n_tok = n_tok, .n_res = 1, .res = {c.h},
                          .check = qg_optest_check_expert_swiglu, .ctx = &c};
                run_spec(&s);
                /* aggregate of the h just computed (now a fixed input) */
                spec s2 = {.f = &f, .node = c.n_agg, .n_tok = n_tok, .n_res = 1, .res = {c.y},
                           .check = qg_optest_check_aggregate, .ctx = &c};
                run_spec(&s2);
                qg_optest_fx_free(&f);
            }
        }
}

/* ---- moe_fused -------------------------------------------------------- */

/* qg_optest_expect_fused with y bit-identical too: the unfused chain ran
 * just before with the same nth and kernels. */
static void check_fused(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    qg_optest_expect_fused(f, ctx, n_tok, label, true);
}

static void test_moe_fused(void **state) {
    (void)state;
    int case_id = 0;
    const qg_dtype rts[] = {QG_F32, QG_Q8_0};
    for (size_t ti = 0; ti < QG_ARRAY_LEN(QG_OPTEST_MOE_TYPES); ti++)
        for (int phase = 0; phase < 2; phase++) {
            const int T = phase == 0 ? 1 : 40;
            const int ntoks[] = {1, 7, T};
            for (int k = 0; k < (phase == 0 ? 1 : 3); k++) {
                qg_test_rng r = rng_for(14, case_id++);
                qg_optest_fx f =
                    qg_optest_fx_new(phase == 0 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, 64, false);
                const int X = phase == 0 ? 8 : 5, K = phase == 0 ? 3 : 2;
                qg_optest_moe c =
                    moe_build(&f, T, 256, 256, X, K, rts[ti % 2], QG_OPTEST_MOE_TYPES[ti][0],
                              QG_OPTEST_MOE_TYPES[ti][1], QG_OPTEST_MOE_TYPES[ti][2], &r);
                qg_optest_fill_act(&f, c.x, ntoks[k], &r, -0.3f, 0.3f);
                spec s = {.f = &f, .node = c.n_fused, .n_pre = 4,
                          .pre = {c.n_router, c.n_topk, c.n_swiglu, c.n_agg},
                          .n_tok = ntoks[k], .n_res = 3, .res = {c.y2, c.ids2, c.wts2},
                          .check = check_fused, .ctx = &c};
                run_spec(&s);
                qg_optest_fx_free(&f);
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
    for (size_t d = 0; d < QG_ARRAY_LEN(QG_OPTEST_ALL_W); d++)
        for (int k = 0; k < 3; k++) {
            qg_test_rng r = rng_for(16, case_id++);
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
            qg_optest_mm c = {.N = 256, .M = 37};
            c.w = qg_optest_add_weight(&f, "w", QG_OPTEST_ALL_W[d], 2, c.N, c.M, 1, &r, 1.0f);
            c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.N, T, 1);
            c.y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.M, T, 1);
            qg_optest_fill_act(&f, c.x, ntoks[k], &r, -1, 1);
            qg_op_params p = {0};
            const int node = qg_optest_add_node(&f, QG_OP_MATMUL, "matmul", (int[]){c.w, c.x}, 2,
                                      (int[]){c.y}, 1, &p);
            spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.y},
                      .check = qg_optest_check_matmul, .ctx = &c};
            run_spec(&s);
            qg_optest_fx_free(&f);
        }
    for (int k = 0; k < 3; k++) {
        qg_test_rng r = rng_for(16, case_id++);
        qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
        qg_optest_swiglu c = {.E = 256, .F = 40};
        c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
        c.gate = qg_optest_add_weight(&f, "gate", QG_Q4_K, 2, c.E, c.F, 1, &r, 1.0f);
        c.up = qg_optest_add_weight(&f, "up", QG_Q6_K, 2, c.E, c.F, 1, &r, 1.0f);
        c.h = qg_optest_add_tensor(&f, "h", QG_F32, QG_ROLE_ACT, 2, c.F, T, 1);
        qg_optest_fill_act(&f, c.x, ntoks[k], &r, -0.3f, 0.3f);
        qg_op_params p = {0};
        const int node = qg_optest_add_node(&f, QG_OP_SWIGLU, "swiglu", (int[]){c.x, c.gate, c.up},
                                            3, (int[]){c.h}, 1, &p);
        spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 1, .res = {c.h},
                  .check = qg_optest_check_swiglu, .ctx = &c};
        run_spec(&s);
        qg_optest_fx_free(&f);
    }
    for (int k = 0; k < 3; k++) {
        qg_test_rng r = rng_for(16, case_id++);
        qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
        qg_optest_qkv c = {.E = 256, .m = {64, 16, 16}};
        const qg_dtype types[3] = {QG_Q4_K, QG_Q8_0, QG_Q6_K};
        c.x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, c.E, T, 1);
        for (int i = 0; i < 3; i++) {
            c.w[i] = qg_optest_add_weight(&f, "w", types[i], 2, c.E, c.m[i], 1, &r, 1.0f);
            c.y[i] = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, c.m[i], T, 1);
        }
        qg_optest_fill_act(&f, c.x, ntoks[k], &r, -1, 1);
        qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 1};
        const int node = qg_optest_add_node(&f, QG_OP_QKV, "qkv",
                                            (int[]){c.x, c.w[0], c.w[1], c.w[2]}, 4, c.y, 3, &p);
        spec s = {.f = &f, .node = node, .n_tok = ntoks[k], .n_res = 3,
                  .res = {c.y[0], c.y[1], c.y[2]}, .check = qg_optest_check_qkv, .ctx = &c};
        run_spec(&s);
        qg_optest_fx_free(&f);
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
            qg_test_rng r = rng_for(17, case_id++);
            qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, T, 64, false);
            qg_optest_moe c = moe_build(&f, T, cfg[ci].E, cfg[ci].F, 5, 2, QG_F32, cfg[ci].g,
                                        cfg[ci].u, cfg[ci].d, &r);
            qg_optest_fill_act(&f, c.x, n_tok, &r, -0.3f, 0.3f);
            qg_optest_make_ids(qg_optest_i32(&f, c.ids), c.X, c.K, n_tok, &r, true);
            qg_optest_fill_wts(&f, c.wts, c.K, n_tok, &r);
            spec s = {.f = &f, .node = c.n_swiglu, .n_tok = n_tok, .n_res = 1, .res = {c.h},
                      .check = qg_optest_check_expert_swiglu, .ctx = &c};
            run_spec(&s);
            spec s2 = {.f = &f, .node = c.n_agg, .n_tok = n_tok, .n_res = 1, .res = {c.y},
                       .check = qg_optest_check_aggregate, .ctx = &c};
            run_spec(&s2);
            spec s3 = {.f = &f, .node = c.n_fused, .n_pre = 4,
                       .pre = {c.n_router, c.n_topk, c.n_swiglu, c.n_agg},
                       .n_tok = n_tok, .n_res = 3, .res = {c.y2, c.ids2, c.wts2},
                       .check = check_fused, .ctx = &c};
            run_spec(&s3);
            qg_optest_fx_free(&f);
        }
}

/* ---- supports --------------------------------------------------------- */

static void test_supports(void **state) {
    (void)state;
    qg_optest_fx f = qg_optest_fx_new(QG_PHASE_PREFILL, 4, 16, false);
    qg_test_rng r = rng_for(15, 0);
    const int x = qg_optest_add_tensor(&f, "x", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int xh = qg_optest_add_tensor(&f, "xh", QG_F16, QG_ROLE_ACT, 2, 64, 4, 1);
    const int w16 = qg_optest_add_weight(&f, "w16", QG_F16, 1, 64, 1, 1, &r, 1.0f);
    const int w32 = qg_optest_add_weight(&f, "w32", QG_F32, 1, 64, 1, 1, &r, 1.0f);
    const int wq = qg_optest_add_weight(&f, "wq", QG_Q8_0, 2, 64, 8, 1, &r, 1.0f);
    const int y = qg_optest_add_tensor(&f, "y", QG_F32, QG_ROLE_ACT, 2, 64, 4, 1);
    const int kc8 = qg_optest_add_tensor(&f, "kc8", QG_Q8_0, QG_ROLE_KV, 2, 64, 16, 1);
    const int pos = qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 4, 1, 1);
    qg_op_params p = {.head_dim = 16, .n_head = 4, .n_head_kv = 4, .eps = 1e-6f};
    const int ok =
        qg_optest_add_node(&f, QG_OP_RMSNORM, "ok", (int[]){x, w32}, 2, (int[]){y}, 1, &p);
    const int bad_w =
        qg_optest_add_node(&f, QG_OP_RMSNORM, "bad_w", (int[]){x, w16}, 2, (int[]){y}, 1, &p);
    const int bad_x =
        qg_optest_add_node(&f, QG_OP_ADD, "bad_x", (int[]){x, xh}, 2, (int[]){y}, 1, &p);
    const int mm = qg_optest_add_node(&f, QG_OP_MATMUL, "mm", (int[]){wq, x}, 2, (int[]){y}, 1, &p);
    const int att = qg_optest_add_node(&f, QG_OP_ATTENTION, "att", (int[]){x, x, x, kc8, kc8, pos},
                                       6, (int[]){y}, 1, &p);
    assert_true(qg_cpu_op_supports(f.g, &f.g->nodes[ok]));
    assert_false(qg_cpu_op_supports(f.g, &f.g->nodes[bad_w]));
    assert_false(qg_cpu_op_supports(f.g, &f.g->nodes[bad_x]));
    assert_true(qg_cpu_op_supports(f.g, &f.g->nodes[mm]));
    assert_false(qg_cpu_op_supports(f.g, &f.g->nodes[att]));
    qg_optest_fx_free(&f);
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
