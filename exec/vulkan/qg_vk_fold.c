/* qg_vk_fold.c - which nodes of a decode graph the Vulkan recorder folds
 * into a neighbouring product, so that a decode layer has no dispatch (and
 * no pipeline barrier) of its own for its norms and residual adds:
 *
 *   rmsnorm -> product    the product (qkv, matmul, router, lm_head,
 *                         moe_fused's router) normalizes its column in
 *                         its prologue (ops/vulkan/qg_xnorm.glsl), each
 *                         workgroup in qg_norm.glsl's fixed order, so the
 *                         values are rmsnorm.comp's bit for bit;
 *   product -> add        the product (matmul, moe_fused's aggregate)
 *                         writes y + residual into the add's output.
 *
 * Only in decode graphs (one token: the products are matvecs with one
 * column), only between neighbours of one partition, and only where the
 * intermediate has no other reader: the dropped rmsnorm output is not
 * written at all (moe_fused's router stores it, for the expert swiglu),
 * nor the product output an add consumed.  The executor gives every
 * folded add's output memory of its own (qg_vk_exec.c, plan_own): the
 * memory plan may place it over a tensor that dies at the product, which
 * the product still reads while it writes the add's output.
 * Nothing here changes the graph; qg_vk_record.c asks, node by node.
 */
#include "qg_vk.h"

/* Shared memory of matmul.comp besides the staged column (qg_rows.glsl's
 * 16 x 128 partials and 128 results, qg_norm.glsl's 136 floats), rounded
 * up: the column fits if 4 n + this <= the device's limit. */
#define MATMUL_SHARED_BYTES 10240u

/* How many nodes read tensor t (a node reading it twice counts once). */
static int readers(const qg_graph *g, int t) {
    int n = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *nd = &g->nodes[i];
        for (int k = 0; k < nd->n_in; k++)
            if (nd->in[k] == t) {
                n++;
                break;
            }
    }
    return n;
}

/* The input slot of node c that carries its activation column, or -1 if
 * c is no product that can fold a norm. */
static int x_slot(const qg_node *c) {
    switch (c->op) {
    case QG_OP_QKV: case QG_OP_ROUTER: case QG_OP_LM_HEAD: case QG_OP_MOE_FUSED:
        return 0;
    case QG_OP_MATMUL:
        return 1;
    default:
        return -1;
    }
}

bool qg_vk_fold_norm(const qg_vk_dev *d, const qg_graph *g, int ni, int end) {
    if (g->n_tok_max != 1 || ni + 1 >= end) return false;
    const qg_node *r = &g->nodes[ni], *c = &g->nodes[ni + 1];
    if (r->op != QG_OP_RMSNORM) return false;
    const int xs = x_slot(c);
    if (xs < 0 || c->in[xs] != r->out[0]) return false;
    for (int k = 0; k < c->n_in; k++)
        if (k != xs && c->in[k] == r->out[0]) return false;
    const qg_tensor *y = &g->tensors[r->out[0]], *x = &g->tensors[r->in[0]];
    const uint64_t n = (uint64_t)x->ne[0];
    return y->role == QG_ROLE_ACT && readers(g, r->out[0]) == 1 && n % 4 == 0 &&
           x->ne[1] == 1 && y->ne[0] == x->ne[0] &&
           4 * n + MATMUL_SHARED_BYTES <= d->props.limits.maxComputeSharedMemorySize;
}

int qg_vk_fold_add_resid(const qg_graph *g, int pi, int end) {
    if (g->n_tok_max != 1 || pi + 1 >= end) return -1;
    const qg_node *p = &g->nodes[pi], *a = &g->nodes[pi + 1];
    if ((p->op != QG_OP_MATMUL && p->op != QG_OP_MOE_FUSED) || a->op != QG_OP_ADD) return -1;
    const int y = p->out[0];
    const int k = a->in[0] == y ? 1 : a->in[1] == y ? 0 : -1;
    if (k < 0 || a->in[k] == y) return -1;
    const qg_tensor *T = g->tensors;
    if (T[y].role != QG_ROLE_ACT || readers(g, y) != 1) return -1;
    for (int d = 0; d < 4; d++)
        if (T[y].ne[d] != T[a->in[k]].ne[d] || T[y].ne[d] != T[a->out[0]].ne[d]) return -1;
    return a->in[k];
}
