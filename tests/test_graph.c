/* test_graph.c - the graph builder and the scheduler passes: structure of
 * the built graph, fusion, placement with a second (fake) executor, copy
 * insertion, partitions, and the liveness memory plan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../include/qmoe_graph.h"

/* A model built in memory: tensor infos only (data points at a dummy
 * byte), which is all the builder reads. */
typedef struct fake_model {
    qg_model m;
    qg_gguf_tensor *t;
    int n;
    char dummy[64];
} fake_model;

static const qg_gguf_tensor *ft(fake_model *f, const char *name, qg_dtype type, int nd, int64_t a,
                                int64_t b, int64_t c) {
    qg_gguf_tensor *t = &f->t[f->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->cname, sizeof t->cname, "%s", name);
    t->n_dims = nd;
    t->ne[0] = a; t->ne[1] = nd > 1 ? b : 1; t->ne[2] = nd > 2 ? c : 1; t->ne[3] = 1;
    t->type = type;
    t->nbytes = qg_dtype_row_bytes(type, a) * (size_t)(t->ne[1] * t->ne[2]);
    t->data = f->dummy;
    return t;
}

static fake_model *fake_new(bool moe, int n_layer) {
    fake_model *f = calloc(1, sizeof *f);
    f->t = calloc(64 * (size_t)n_layer + 8, sizeof *f->t);
    qg_hparams *hp = &f->m.hp;
    hp->arch = moe ? QG_ARCH_QWEN3MOE : QG_ARCH_QWEN3;
    hp->n_layer = (uint32_t)n_layer; hp->n_embd = 256; hp->n_head = 4; hp->n_head_kv = 2;
    hp->head_dim_k = hp->head_dim_v = 64; hp->rms_eps = 1e-6f; hp->rope_theta = 1e6f;
    hp->n_vocab = 512; hp->n_ctx_train = 4096; hp->n_ff = 512;
    if (moe) { hp->n_expert = 8; hp->n_expert_used = 2; hp->n_ff_exp = 256; }
    f->m.tok_embd = ft(f, "token_embd.weight", QG_Q4_K, 2, 256, 512, 0);
    f->m.output_norm = ft(f, "output_norm.weight", QG_F32, 1, 256, 0, 0);
    f->m.output = ft(f, "output.weight", QG_Q6_K, 2, 256, 512, 0);
    f->m.layers = calloc((size_t)n_layer, sizeof *f->m.layers);
    for (int l = 0; l < n_layer; l++) {
        qg_layer_weights *L = &f->m.layers[l];
        L->attn_norm = ft(f, "attn_norm", QG_F32, 1, 256, 0, 0);
        L->wq = ft(f, "wq", QG_Q4_K, 2, 256, 256, 0);
        L->wk = ft(f, "wk", QG_Q4_K, 2, 256, 128, 0);
        L->wv = ft(f, "wv", QG_Q6_K, 2, 256, 128, 0);
        L->wo = ft(f, "wo", QG_Q4_K, 2, 256, 256, 0);
        L->q_norm = ft(f, "q_norm", QG_F32, 1, 64, 0, 0);
        L->k_norm = ft(f, "k_norm", QG_F32, 1, 64, 0, 0);
        L->ffn_norm = ft(f, "ffn_norm", QG_F32, 1, 256, 0, 0);
        if (moe) {
            L->gate_inp = ft(f, "gate_inp", QG_F32, 2, 256, 8, 0);
            L->gate_exps = ft(f, "gate_exps", QG_Q4_K, 3, 256, 256, 8);
            L->up_exps = ft(f, "up_exps", QG_Q4_K, 3, 256, 256, 8);
            L->down_exps = ft(f, "down_exps", QG_Q6_K, 3, 256, 256, 8);
        } else {
            L->ffn_gate = ft(f, "ffn_gate", QG_Q4_K, 2, 256, 512, 0);
            L->ffn_up = ft(f, "ffn_up", QG_Q4_K, 2, 256, 512, 0);
            L->ffn_down = ft(f, "ffn_down", QG_Q6_K, 2, 512, 256, 0);
        }
    }
    return f;
}

static void fake_free(fake_model *f) {
    free(f->m.layers);
    free(f->t);
    free(f);
}

/* A fake executor: supports every op except those in `refuse`, and
 * reports `mem` bytes available (0: host executor, no limit). */
typedef struct fake_exec {
    bool refuse[QG_OP_COUNT];
    size_t mem;
} fake_exec;

static bool fake_supports(void *self, const qg_graph *g, const qg_node *n) {
    (void)g;
    return !((fake_exec *)self)->refuse[n->op];
}
static size_t fake_mem(void *self) { return ((fake_exec *)self)->mem; }

static const qg_exec_i FAKE_HOST = {.name = "cpu", .supports = fake_supports};
static const qg_exec_i FAKE_DEV = {.name = "dev", .supports = fake_supports, .mem_available = fake_mem};

static qg_graph *build(fake_model *f, qg_phase ph, int T) {
    qg_build_opts o = {.phase = ph, .n_tok_max = T, .n_ctx = 64, .kv_type = QG_F16};
    qg_error err = {0};
    qg_graph *g = qg_model_build_graph(&f->m, &o, &err);
    assert_non_null(g);
    return g;
}

static int count_op(const qg_graph *g, qg_op op) {
    int n = 0;
    for (int i = 0; i < g->n_nodes; i++) n += g->nodes[i].op == op;
    return n;
}

/* Every input is a weight / input / kv, or produced by an earlier node. */
static void check_topological(const qg_graph *g) {
    for (int i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++) {
            const qg_tensor *t = &g->tensors[g->nodes[i].in[k]];
            if (t->role == QG_ROLE_ACT || t->role == QG_ROLE_OUTPUT) {
                assert_true(t->producer >= 0);
                assert_true(t->producer < i);
            }
        }
}

static void test_build_moe(void **state) {
    (void)state;
    fake_model *f = fake_new(true, 3);
    qg_graph *g = build(f, QG_PHASE_PREFILL, 8);
    assert_int_equal(count_op(g, QG_OP_EMBED), 1);
    assert_int_equal(count_op(g, QG_OP_RMSNORM), 2 * 3 + 1);
    assert_int_equal(count_op(g, QG_OP_QKV), 3);
    assert_int_equal(count_op(g, QG_OP_ROPE), 3);
    assert_int_equal(count_op(g, QG_OP_ATTENTION), 3);
    assert_int_equal(count_op(g, QG_OP_ROUTER), 3);
    assert_int_equal(count_op(g, QG_OP_TOPK), 3);
    assert_int_equal(count_op(g, QG_OP_EXPERT_SWIGLU), 3);
    assert_int_equal(count_op(g, QG_OP_AGGREGATE), 3);
    assert_int_equal(count_op(g, QG_OP_ADD), 6);
    assert_int_equal(count_op(g, QG_OP_LM_HEAD), 1);
    assert_int_equal(count_op(g, QG_OP_SWIGLU), 0);
    check_topological(g);
    /* the expert hidden state is (F, K, T) */
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == QG_OP_EXPERT_SWIGLU) {
            const qg_tensor *h = &g->tensors[g->nodes[i].out[0]];
            assert_int_equal(h->ne[0], 256);
            assert_int_equal(h->ne[1], 2);
            assert_int_equal(h->ne[2], 8);
        }
    /* only the last row of logits by default */
    assert_int_equal(g->tensors[g->t_logits].ne[1], 1);
    qg_graph_free(g);
    fake_free(f);
}

static void test_build_dense(void **state) {
    (void)state;
    fake_model *f = fake_new(false, 2);
    qg_graph *g = build(f, QG_PHASE_DECODE, 1);
    assert_int_equal(count_op(g, QG_OP_SWIGLU), 2);
    assert_int_equal(count_op(g, QG_OP_MATMUL), 4); /* wo, ffn_down per layer */
    assert_int_equal(count_op(g, QG_OP_ROUTER), 0);
    check_topological(g);
    qg_graph_free(g);
    fake_free(f);
}

static void test_bad_build_opts(void **state) {
    (void)state;
    fake_model *f = fake_new(true, 1);
    qg_error err = {0};
    qg_build_opts o = {.phase = QG_PHASE_DECODE, .n_tok_max = 4, .n_ctx = 64, .kv_type = QG_F16};
    assert_null(qg_model_build_graph(&f->m, &o, &err));
    assert_int_equal(err.code, QG_ERR_ARG);
    o = (qg_build_opts){.phase = QG_PHASE_PREFILL, .n_tok_max = 4, .n_ctx = 64, .kv_type = QG_Q4_K};
    assert_null(qg_model_build_graph(&f->m, &o, &err));
    assert_non_null(strstr(err.msg, "q4_K"));
    fake_free(f);
}

static void test_fuse(void **state) {
    (void)state;
    fake_model *f = fake_new(true, 2);
    fake_exec host = {0};
    qg_exec ex[1] = {{&FAKE_HOST, &host}};
    qg_place_opts po = {.n_exec = 1, .execs = ex, .cpu_index = 0};

    /* refused: nothing changes */
    host.refuse[QG_OP_MOE_FUSED] = true;
    qg_graph *g = build(f, QG_PHASE_DECODE, 1);
    int before = g->n_nodes;
    qg_pass_fuse(g, &po);
    assert_int_equal(g->n_nodes, before);
    assert_false(g->fused);
    qg_graph_free(g);

    host.refuse[QG_OP_MOE_FUSED] = false;
    g = build(f, QG_PHASE_DECODE, 1);
    qg_pass_fuse(g, &po);
    assert_true(g->fused);
    assert_int_equal(g->n_nodes, before - 3 * 2);
    assert_int_equal(count_op(g, QG_OP_MOE_FUSED), 2);
    assert_int_equal(count_op(g, QG_OP_ROUTER) + count_op(g, QG_OP_TOPK) +
                         count_op(g, QG_OP_EXPERT_SWIGLU) + count_op(g, QG_OP_AGGREGATE), 0);
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        if (n->op != QG_OP_MOE_FUSED) continue;
        assert_int_equal(n->n_in, 5);
        assert_int_equal(n->n_out, 3);
        assert_int_equal(g->tensors[n->in[2]].n_dims, 3); /* gate_exps */
        assert_int_equal(g->tensors[n->in[4]].ne[0], 256); /* down_exps (F,E,X) */
        assert_int_equal(g->tensors[n->out[1]].type, QG_I32); /* ids */
        /* the residual add reads the fused output */
        const qg_node *add = &g->nodes[i + 1];
        assert_int_equal(add->op, QG_OP_ADD);
        assert_int_equal(add->in[1], n->out[0]);
    }
    check_topological(g);
    qg_graph_free(g);
    fake_free(f);
}

/* Byte ranges of two tensors on one arena. */
static bool overlap(const qg_tensor *a, const qg_tensor *b) {
    return a->offset < b->offset + b->nbytes && b->offset < a->offset + a->nbytes;
}

static void check_memplan(const qg_graph *g) {
    for (int a = 0; a < g->n_tensors; a++) {
        const qg_tensor *x = &g->tensors[a];
        if (x->role == QG_ROLE_WEIGHT || x->first_use < 0) continue;
        assert_true(x->exec >= 0);
        if (x->role == QG_ROLE_KV) assert_true(x->offset + x->nbytes <= g->kv_bytes[x->exec]);
        else assert_true(x->offset + x->nbytes <= g->act_bytes[x->exec]);
        for (int b = a + 1; b < g->n_tensors; b++) {
            const qg_tensor *y = &g->tensors[b];
            if (y->role == QG_ROLE_WEIGHT || y->first_use < 0 || y->exec != x->exec) continue;
            if ((x->role == QG_ROLE_KV) != (y->role == QG_ROLE_KV)) continue;
            bool whole_x = x->role != QG_ROLE_ACT, whole_y = y->role != QG_ROLE_ACT;
            bool live_together = whole_x || whole_y ||
                                 (x->first_use <= y->last_use && y->first_use <= x->last_use);
            if (live_together && overlap(x, y))
                fail_msg("tensors %s [%d,%d] and %s [%d,%d] overlap in the arena", x->name, x->first_use,
                         x->last_use, y->name, y->first_use, y->last_use);
        }
    }
}

static void test_schedule_one_exec(void **state) {
    (void)state;
    fake_model *f = fake_new(true, 2);
    fake_exec host = {0};
    qg_exec ex[1] = {{&FAKE_HOST, &host}};
    qg_place_opts po = {.n_exec = 1, .execs = ex, .cpu_index = 0};
    qg_error err = {0};
    qg_graph *g = build(f, QG_PHASE_PREFILL, 16);
    assert_int_equal(qg_graph_schedule(g, true, &po, &err), QG_OK);
    assert_int_equal(g->n_parts, 1);
    assert_int_equal(count_op(g, QG_OP_COPY), 0);
    check_memplan(g);
    /* liveness reuse: the arena is much smaller than the sum of tensors */
    size_t sum = 0;
    for (int i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].role == QG_ROLE_ACT && g->tensors[i].first_use >= 0) sum += g->tensors[i].nbytes;
    assert_true(g->act_bytes[0] < sum / 2);
    /* KV offsets identical in the decode graph */
    qg_graph *d = build(f, QG_PHASE_DECODE, 1);
    assert_int_equal(qg_graph_schedule(d, true, &po, &err), QG_OK);
    assert_int_equal(d->kv_bytes[0], g->kv_bytes[0]);
    for (int i = 0, j = 0; i < g->n_tensors; i++) {
        if (g->tensors[i].role != QG_ROLE_KV) continue;
        while (d->tensors[j].role != QG_ROLE_KV) j++;
        assert_string_equal(d->tensors[j].name, g->tensors[i].name);
        assert_int_equal(d->tensors[j].offset, g->tensors[i].offset);
        j++;
    }
    qg_graph_free(d);
    qg_graph_free(g);
    fake_free(f);
}

static void test_mixed_placement(void **state) {
    (void)state;
    fake_model *f = fake_new(true, 3);
    fake_exec dev = {.mem = (size_t)1 << 40}, host = {0};
    dev.refuse[QG_OP_ATTENTION] = true; /* attention falls back to the CPU */
    qg_exec ex[2] = {{&FAKE_DEV, &dev}, {&FAKE_HOST, &host}};
    qg_place_opts po = {.n_exec = 2, .execs = ex, .cpu_index = 1, .n_cpu_moe = 1};
    qg_error err = {0};
    qg_graph *g = build(f, QG_PHASE_PREFILL, 4);
    assert_int_equal(qg_graph_schedule(g, true, &po, &err), QG_OK);
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        if (n->op == QG_OP_ATTENTION) assert_int_equal(n->exec, 1);
        if (n->op == QG_OP_MOE_FUSED) assert_int_equal(n->exec, n->layer < 1 ? 1 : 0);
        if (n->op == QG_OP_QKV) assert_int_equal(n->exec, 0);
        /* after partitioning every input lives where its node runs */
        for (int k = 0; k < n->n_in; k++) {
            const qg_tensor *t = &g->tensors[n->in[k]];
            if (t->role == QG_ROLE_WEIGHT || n->in[k] == g->t_step || n->op == QG_OP_COPY) continue;
            assert_int_equal(t->exec, n->exec);
        }
        if (n->op == QG_OP_COPY) {
            assert_int_not_equal(g->tensors[n->in[0]].exec, g->tensors[n->out[0]].exec);
            assert_int_equal(g->parts[n->partition].n, 1);
        }
    }
    assert_true(count_op(g, QG_OP_COPY) > 0);
    /* partitions cover the nodes in order, and neighbours differ */
    int next = 0;
    for (int p = 0; p < g->n_parts; p++) {
        assert_int_equal(g->parts[p].first, next);
        next += g->parts[p].n;
        for (int i = g->parts[p].first; i < next; i++) {
            assert_int_equal(g->nodes[i].partition, p);
            assert_int_equal(g->nodes[i].exec, g->parts[p].exec);
        }
    }
    assert_int_equal(next, g->n_nodes);
    check_topological(g);
    check_memplan(g);
    qg_graph_free(g);
    fake_free(f);
}

static void test_place_out_of_memory(void **state) {
    (void)state;
    fake_model *f = fake_new(true, 2);
    fake_exec dev = {.mem = 1000}, host = {0};
    qg_exec ex[2] = {{&FAKE_DEV, &dev}, {&FAKE_HOST, &host}};
    qg_place_opts po = {.n_exec = 2, .execs = ex, .cpu_index = 1};
    qg_error err = {0};
    qg_graph *g = build(f, QG_PHASE_DECODE, 1);
    assert_int_equal(qg_graph_schedule(g, true, &po, &err), QG_ERR_NOMEM);
    assert_non_null(strstr(err.msg, "GiB"));
    assert_non_null(strstr(err.msg, "dev"));
    assert_non_null(strstr(err.msg, "--n-cpu-moe"));
    qg_graph_free(g);
    fake_free(f);
}

static void test_cost_model(void **state) {
    (void)state;
    fake_model *f = fake_new(true, 1);
    qg_graph *g = build(f, QG_PHASE_PREFILL, 8);
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        double b = qg_node_bytes(g, n, 8, 8);
        assert_true(b > 0);
        if (n->op == QG_OP_QKV) /* 2 * T * E * (Dq + 2 Dkv) */
            assert_true(qg_node_flops(g, n, 8, 8) == 2.0 * 8 * 256 * (256 + 128 + 128));
        if (n->op == QG_OP_EXPERT_SWIGLU) { /* fewer tokens touch fewer experts */
            assert_true(qg_node_bytes(g, n, 1, 1) < qg_node_bytes(g, n, 8, 8));
        }
    }
    qg_graph_free(g);
    fake_free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_moe),       cmocka_unit_test(test_build_dense),
        cmocka_unit_test(test_bad_build_opts),  cmocka_unit_test(test_fuse),
        cmocka_unit_test(test_schedule_one_exec), cmocka_unit_test(test_mixed_placement),
        cmocka_unit_test(test_place_out_of_memory), cmocka_unit_test(test_cost_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
