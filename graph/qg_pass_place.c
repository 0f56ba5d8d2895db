/* qg_pass_place.c - pass 2: the placement policy, in one place.
 *
 * Rule order:
 *   1. user rule: expert nodes (router, topk, expert_swiglu, aggregate,
 *      moe_fused) of layers below n_cpu_moe go to the CPU, like llama.cpp's
 *      --n-cpu-moe;
 *   2. otherwise the first executor, in preference order, that supports
 *      the node;
 *   3. the CPU supports everything and is always last, so every node lands.
 * After placing, the weights each device executor must hold are summed
 * (shared weights once) and checked against its memory; the error gives the
 * arithmetic.
 */
#include "qg_sched.h"

#include <stdio.h>
#include <stdlib.h>

static bool is_expert_op(qg_op op) {
    return op == QG_OP_ROUTER || op == QG_OP_TOPK || op == QG_OP_EXPERT_SWIGLU ||
           op == QG_OP_AGGREGATE || op == QG_OP_MOE_FUSED;
}

int qg_place_choose(const qg_graph *g, const qg_node *n, const qg_place_opts *o) {
    if (is_expert_op(n->op) && n->layer >= 0 && n->layer < o->n_cpu_moe)
        return o->cpu_index;
    for (int e = 0; e < o->n_exec; e++)
        if (o->execs[e].i->supports(o->execs[e].self, g, n)) return e;
    return -1;
}

static int cmp_ptr(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    return x < y ? -1 : x > y;
}

/* Bytes of distinct weights used by nodes on executor e. */
static size_t weight_bytes_on(const qg_graph *g, int e) {
    const void **seen = malloc(sizeof *seen * (size_t)g->n_tensors);
    QG_ASSERT(seen);
    int n = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *nd = &g->nodes[i];
        if (nd->exec != e) continue;
        for (int k = 0; k < nd->n_in; k++) {
            const qg_tensor *t = &g->tensors[nd->in[k]];
            if (t->role == QG_ROLE_WEIGHT) seen[n++] = t->data;
        }
    }
    qsort(seen, (size_t)n, sizeof *seen, cmp_ptr);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (i && seen[i] == seen[i - 1]) continue;
        for (int t = 0; t < g->n_tensors; t++)
            if (g->tensors[t].data == seen[i]) { total += g->tensors[t].nbytes; break; }
    }
    free(seen);
    return total;
}

qg_status qg_pass_place(qg_graph *g, const qg_place_opts *o, qg_error *err) {
    bool log = qg_debug_enabled("sched");
    g->n_exec = o->n_exec;
    for (int i = 0; i < g->n_nodes; i++) {
        qg_node *n = &g->nodes[i];
        n->exec = qg_place_choose(g, n, o);
        if (n->exec < 0)
            return qg_error_set(err, QG_ERR_BACKEND, "no executor supports node '%s' (%s)",
                                n->name, qg_op_name(n->op));
        if (log)
            fprintf(stderr, "sched: %-28s %-14s -> %s%s\n", n->name, qg_op_name(n->op),
                    o->execs[n->exec].i->name,
                    (is_expert_op(n->op) && n->layer >= 0 && n->layer < o->n_cpu_moe)
                        ? " (--n-cpu-moe)" : "");
    }
    for (int e = 0; e < o->n_exec; e++) {
        if (!o->execs[e].i->mem_available) continue;
        size_t avail = o->execs[e].i->mem_available(o->execs[e].self);
        size_t need = weight_bytes_on(g, e);
        if (need > avail)
            return qg_error_set(
                err, QG_ERR_NOMEM,
                "the weights placed on %s need %.2f GiB but it has %.2f GiB free "
                "(%.2f GiB short); keep some experts on the CPU with --n-cpu-moe N",
                o->execs[e].i->name, need / 1073741824.0, avail / 1073741824.0,
                (need - avail) / 1073741824.0);
    }
    return QG_OK;
}
