/* qg_pass_fuse.c - pass 1: sparse-expert fusion.
 *
 * Pattern, per layer, as the builder emits it:
 *   router(h, gate_inp) -> logits
 *   topk(logits) -> ids, wts
 *   expert_swiglu(h, gate_exps, up_exps, ids) -> eh
 *   aggregate(eh, down_exps, ids, wts) -> y
 * becomes
 *   moe_fused(h, gate_inp, gate_exps, up_exps, down_exps) -> y, ids, wts
 * when the executor chosen for the router supports the fused node.  The
 * intermediate logits and eh disappear from the graph (no consumer left).
 */
#include "qg_sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Index of the node at or after `from` with op `op` in layer `layer`. */
static int find_next(const qg_graph *g, int from, qg_op op, int layer) {
    for (int i = from; i < g->n_nodes && g->nodes[i].layer == layer; i++)
        if (g->nodes[i].op == op) return i;
    return -1;
}

void qg_pass_fuse(qg_graph *g, const qg_place_opts *o) {
    bool *dead = NULL;
    int n_dead = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        qg_node *r = &g->nodes[i];
        if (r->op != QG_OP_ROUTER) continue;
        int it = find_next(g, i + 1, QG_OP_TOPK, r->layer);
        int is = it < 0 ? -1 : find_next(g, it + 1, QG_OP_EXPERT_SWIGLU, r->layer);
        int ia = is < 0 ? -1 : find_next(g, is + 1, QG_OP_AGGREGATE, r->layer);
        if (ia < 0) continue;
        qg_node *tk = &g->nodes[it], *sw = &g->nodes[is], *ag = &g->nodes[ia];
        /* the chain must be wired as the builder wires it */
        if (tk->in[0] != r->out[0] || sw->in[0] != r->in[0] || sw->in[3] != tk->out[0] ||
            ag->in[0] != sw->out[0] || ag->in[2] != tk->out[0] || ag->in[3] != tk->out[1])
            continue;

        qg_node f = *r;
        f.op = QG_OP_MOE_FUSED;
        snprintf(f.name, sizeof f.name, "blk.%d.moe", r->layer);
        f.n_in = 5;
        f.in[0] = r->in[0];  /* h (E,T) */
        f.in[1] = r->in[1];  /* gate_inp (E,X) */
        f.in[2] = sw->in[1]; /* gate_exps (E,F,X) */
        f.in[3] = sw->in[2]; /* up_exps (E,F,X) */
        f.in[4] = ag->in[1]; /* down_exps (F,E,X) */
        f.n_out = 3;
        f.out[0] = ag->out[0]; /* y (E,T) */
        f.out[1] = tk->out[0]; /* ids (I32,K,T) */
        f.out[2] = tk->out[1]; /* wts (K,T) */

        int e = qg_place_choose(g, &f, o);
        if (e < 0 || !o->execs[e].i->supports(o->execs[e].self, g, &f)) continue;

        if (!dead) {
            dead = calloc((size_t)g->n_nodes, sizeof *dead);
            QG_ASSERT(dead);
        }
        *r = f;
        dead[it] = dead[is] = dead[ia] = true;
        n_dead += 3;
    }
    if (!dead) return;
    int w = 0;
    for (int i = 0; i < g->n_nodes; i++)
        if (!dead[i]) g->nodes[w++] = g->nodes[i];
    g->n_nodes = w;
    for (int t = 0; t < g->n_tensors; t++) g->tensors[t].producer = -1;
    for (int i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_out; k++)
            g->tensors[g->nodes[i].out[k]].producer = i;
    free(dead);
    g->fused = true;
    (void)n_dead;
}
