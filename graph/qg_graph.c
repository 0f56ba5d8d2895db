/* qg_graph.c - graph storage: tensors, nodes, op names, the cost model. */
#include "qg_graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const OP_NAMES[] = {
    [QG_OP_EMBED] = "embed",
    [QG_OP_RMSNORM] = "rmsnorm",
    [QG_OP_QKV] = "qkv",
    [QG_OP_ROPE] = "rope",
    [QG_OP_ATTENTION] = "attention",
    [QG_OP_MATMUL] = "matmul",
    [QG_OP_ADD] = "add",
    [QG_OP_SWIGLU] = "swiglu",
    [QG_OP_ROUTER] = "router",
    [QG_OP_TOPK] = "topk",
    [QG_OP_EXPERT_SWIGLU] = "expert_swiglu",
    [QG_OP_AGGREGATE] = "aggregate",
    [QG_OP_MOE_FUSED] = "moe_fused",
    [QG_OP_LM_HEAD] = "lm_head",
    [QG_OP_COPY] = "copy",
};
_Static_assert(QG_ARRAY_LEN(OP_NAMES) == QG_OP_COUNT, "OP_NAMES out of date");

const char *qg_op_name(qg_op op) {
    return (unsigned)op < QG_OP_COUNT ? OP_NAMES[op] : "?";
}

qg_graph *qg_graph_new(qg_phase phase, int n_tok_max, int n_ctx) {
    qg_graph *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->phase = phase;
    g->n_tok_max = n_tok_max;
    g->n_ctx = n_ctx;
    g->t_tokens = g->t_pos = g->t_step = g->t_logits = -1;
    return g;
}

void qg_graph_free(qg_graph *g) {
    if (!g) return;
    free(g->tensors);
    free(g->nodes);
    free(g->parts);
    free(g);
}

/* Grow an array to hold at least n+1 elements; aborts on OOM (graph
 * building happens once, at load, and is sized in the thousands). */
static void *grow(void *p, int *cap, int n, size_t elem) {
    if (n < *cap) return p;
    int nc = *cap ? *cap * 2 : 256;
    void *q = realloc(p, (size_t)nc * elem);
    if (!q) QG_ABORT("out of memory growing the graph to %d entries", nc);
    memset((char *)q + (size_t)*cap * elem, 0, (size_t)(nc - *cap) * elem);
    *cap = nc;
    return q;
}

int qg_graph_add_tensor(qg_graph *g, const char *name, qg_dtype type,
                        qg_role role, int layer, int n_dims,
                        const int64_t *ne, const void *data) {
    QG_ASSERT(n_dims >= 1 && n_dims <= 4);
    g->tensors = grow(g->tensors, &g->cap_tensors, g->n_tensors, sizeof *g->tensors);
    int id = g->n_tensors++;
    qg_tensor *t = &g->tensors[id];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    for (int i = 0; i < 4; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    QG_ASSERT(t->ne[0] % qg_dtype_block_size(type) == 0);
    t->nbytes = qg_dtype_row_bytes(type, t->ne[0]) * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
    t->role = role;
    t->layer = layer;
    t->data = data;
    t->producer = -1;
    t->exec = -1;
    t->first_use = t->last_use = -1;
    return id;
}

int qg_graph_add_node(qg_graph *g, qg_op op, const char *name, int layer,
                      const int *in, int n_in, const int *out, int n_out,
                      const qg_op_params *p) {
    QG_ASSERT(n_in <= QG_MAX_IN && n_out <= QG_MAX_OUT);
    g->nodes = grow(g->nodes, &g->cap_nodes, g->n_nodes, sizeof *g->nodes);
    int idx = g->n_nodes++;
    qg_node *n = &g->nodes[idx];
    memset(n, 0, sizeof *n);
    n->op = op;
    snprintf(n->name, sizeof n->name, "%s", name);
    n->layer = layer;
    n->n_in = n_in;
    n->n_out = n_out;
    for (int i = 0; i < n_in; i++) {
        QG_ASSERT(in[i] >= 0 && in[i] < g->n_tensors);
        n->in[i] = in[i];
    }
    for (int i = 0; i < n_out; i++) {
        QG_ASSERT(out[i] >= 0 && out[i] < g->n_tensors);
        n->out[i] = out[i];
        g->tensors[out[i]].producer = idx;
    }
    if (p) n->p = *p;
    n->exec = -1;
    n->partition = -1;
    return idx;
}

/* Bytes of `rows` rows of weight tensor t (rows of ne[0] elements). */
static double wbytes(const qg_tensor *t, double rows) {
    return (double)qg_dtype_row_bytes(t->type, t->ne[0]) * rows;
}

/* Rows of a weight (all dims above the first). */
static double wrows(const qg_tensor *t) {
    return (double)(t->ne[1] * t->ne[2] * t->ne[3]);
}

/* Expected distinct experts touched by n_tok tokens each choosing k of x
 * experts (uniform routing): x * (1 - (1 - k/x)^n_tok). */
static double experts_touched(int x, int k, int n_tok) {
    double miss = 1.0;
    for (int i = 0; i < n_tok && miss > 1e-12; i++) miss *= 1.0 - (double)k / x;
    return x * (1.0 - miss);
}

double qg_node_flops(const qg_graph *g, const qg_node *n, int n_tok, int n_kv) {
    const qg_tensor *T = g->tensors;
    double t = n_tok;
    switch (n->op) {
    case QG_OP_QKV:
        return 2.0 * t * T[n->in[1]].ne[0] *
               (wrows(&T[n->in[1]]) + wrows(&T[n->in[2]]) + wrows(&T[n->in[3]]));
    case QG_OP_MATMUL:
    case QG_OP_ROUTER:
        return 2.0 * t * T[n->in[0]].ne[0] * wrows(&T[n->in[0]]);
    case QG_OP_SWIGLU:
        return 2.0 * t * T[n->in[1]].ne[0] * (wrows(&T[n->in[1]]) + wrows(&T[n->in[2]]));
    case QG_OP_LM_HEAD:
        return 2.0 * (n->p.only_last ? 1 : t) * T[n->in[1]].ne[0] * wrows(&T[n->in[1]]);
    case QG_OP_ATTENTION: {
        double hd = n->p.head_dim, h = n->p.n_head;
        /* each token attends to about n_kv - n_tok/2 rows */
        double rows = QG_MAX(1.0, n_kv - t / 2);
        return 4.0 * t * h * hd * rows;
    }
    case QG_OP_EXPERT_SWIGLU: {
        const qg_tensor *w = &T[n->in[1]];
        return 2.0 * 2.0 * t * n->p.n_expert_used * w->ne[0] * w->ne[1];
    }
    case QG_OP_AGGREGATE: {
        const qg_tensor *w = &T[n->in[1]];
        return 2.0 * t * n->p.n_expert_used * w->ne[0] * w->ne[1];
    }
    case QG_OP_MOE_FUSED: {
        const qg_tensor *r = &T[n->in[1]], *w = &T[n->in[2]];
        return 2.0 * t * r->ne[0] * r->ne[1] +
               3.0 * 2.0 * t * n->p.n_expert_used * w->ne[0] * w->ne[1];
    }
    case QG_OP_ROPE: {
        double d = (double)T[n->in[0]].ne[0] + (double)T[n->in[1]].ne[0];
        return t * d * 6.0;
    }
    case QG_OP_RMSNORM: return t * T[n->in[0]].ne[0] * 4.0;
    case QG_OP_ADD: return t * T[n->in[0]].ne[0];
    case QG_OP_TOPK: return t * T[n->in[0]].ne[0] * 4.0;
    case QG_OP_EMBED:
    case QG_OP_COPY:
    case QG_OP_COUNT: return 0;
    }
    return 0;
}

/* Activation bytes of the live part of tensor id (per-token rows). */
static double abytes(const qg_graph *g, int id, int n_tok) {
    const qg_tensor *t = &g->tensors[id];
    if (t->role == QG_ROLE_WEIGHT) return (double)t->nbytes;
    return (double)t->nbytes / g->n_tok_max * n_tok;
}

double qg_node_bytes(const qg_graph *g, const qg_node *n, int n_tok, int n_kv) {
    const qg_tensor *T = g->tensors;
    double b = 0;
    switch (n->op) {
    case QG_OP_EMBED:
        return wbytes(&T[n->in[0]], n_tok) + abytes(g, n->out[0], n_tok);
    case QG_OP_ATTENTION: {
        const qg_tensor *kc = &T[n->in[3]];
        double row = (double)qg_dtype_row_bytes(kc->type, kc->ne[0]);
        b = 2.0 * row * n_kv; /* K and V cache rows read */
        for (int i = 0; i < 3; i++) b += abytes(g, n->in[i], n_tok);
        return b + abytes(g, n->out[0], n_tok);
    }
    case QG_OP_EXPERT_SWIGLU:
    case QG_OP_AGGREGATE:
    case QG_OP_MOE_FUSED: {
        int x = n->p.n_expert, k = n->p.n_expert_used;
        double frac = experts_touched(x, k, n_tok) / x;
        for (int i = 0; i < n->n_in; i++) {
            const qg_tensor *t = &T[n->in[i]];
            if (t->role == QG_ROLE_WEIGHT && t->n_dims == 3)
                b += (double)t->nbytes * frac;
            else
                b += abytes(g, n->in[i], n_tok);
        }
        for (int i = 0; i < n->n_out; i++) b += abytes(g, n->out[i], n_tok);
        return b;
    }
    case QG_OP_LM_HEAD:
        b = (double)T[n->in[1]].nbytes + abytes(g, n->in[0], n_tok);
        return b + (n->p.only_last ? (double)T[n->out[0]].nbytes
                                   : abytes(g, n->out[0], n_tok));
    default:
        for (int i = 0; i < n->n_in; i++) b += abytes(g, n->in[i], n_tok);
        for (int i = 0; i < n->n_out; i++) b += abytes(g, n->out[i], n_tok);
        return b;
    }
}
