/* qg_pass_partition.c - pass 3: cut the placed graph into partitions and
 * insert the copies between them.
 *
 * Every non-weight tensor lives on one executor: the executor of its
 * producer (inputs: of their first consumer).  When a node reads a tensor
 * living elsewhere, a copy node is inserted just before the first such
 * reader on that executor, producing a twin tensor there; later readers on
 * the same executor reuse the twin.  Copy nodes form partitions of their
 * own, run by the runtime through tensor_get / tensor_set; every other
 * partition is a maximal run of nodes on one executor.
 */
#include "qg_sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add_part(qg_graph *g, int *cap, int exec, int first) {
    if (g->n_parts == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        g->parts = realloc(g->parts, sizeof *g->parts * (size_t)*cap);
        QG_ASSERT(g->parts);
    }
    g->parts[g->n_parts++] = (qg_partition){.exec = exec, .first = first, .n = 1};
}

qg_status qg_pass_partition(qg_graph *g, qg_error *err) {
    (void)err;
    /* home executor of every tensor */
    for (int t = 0; t < g->n_tensors; t++) g->tensors[t].exec = -1;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_out; k++) g->tensors[n->out[k]].exec = n->exec;
        for (int k = 0; k < n->n_in; k++) {
            qg_tensor *t = &g->tensors[n->in[k]];
            if (t->exec < 0 && (t->role == QG_ROLE_INPUT || t->role == QG_ROLE_KV))
                t->exec = n->exec;
        }
    }
    /* the step input is read by every executor's kernels through the
     * host copy passed to run(), and lives with the first consumer */
    if (g->tensors[g->t_step].exec < 0) g->tensors[g->t_step].exec = 0;

    /* twin[t * n_exec + e]: copy of tensor t on executor e, or -1 */
    int n_exec = QG_MAX(g->n_exec, 1);
    int n_orig = g->n_tensors;
    int *twin = malloc(sizeof *twin * (size_t)n_orig * (size_t)n_exec);
    qg_node *out = malloc(sizeof *out * (size_t)g->n_nodes * 3 + 16);
    QG_ASSERT(twin && out);
    memset(twin, -1, sizeof *twin * (size_t)n_orig * (size_t)n_exec);
    int n_out = 0;
    int n_nodes = g->n_nodes;
    for (int i = 0; i < n_nodes; i++) {
        qg_node n = g->nodes[i];
        for (int k = 0; k < n.n_in; k++) {
            int tid = n.in[k];
            if (tid >= n_orig) continue;
            qg_tensor *t = &g->tensors[tid];
            if (t->role == QG_ROLE_WEIGHT || t->exec == n.exec || t->exec < 0) continue;
            if (tid == g->t_step) continue;
            int *tw = &twin[tid * n_exec + n.exec];
            if (*tw < 0) {
                char nm[QG_NAME_LEN];
                snprintf(nm, sizeof nm, "%.50s@%d", t->name, n.exec);
                qg_tensor src = *t; /* add_tensor may move the table */
                *tw = qg_graph_add_tensor(g, nm, src.type, QG_ROLE_ACT, src.layer,
                                          src.n_dims, src.ne, NULL);
                g->tensors[*tw].exec = n.exec;
                qg_node c = {.op = QG_OP_COPY, .layer = n.layer, .n_in = 1, .n_out = 1,
                             .exec = n.exec, .partition = -1};
                snprintf(c.name, sizeof c.name, "copy.%.48s", src.name);
                c.in[0] = tid;
                c.out[0] = *tw;
                out[n_out++] = c;
            }
            n.in[k] = *tw;
        }
        out[n_out++] = n;
    }
    free(twin);
    free(g->nodes);
    g->nodes = out;
    g->n_nodes = g->cap_nodes = n_out;
    for (int t = 0; t < g->n_tensors; t++) g->tensors[t].producer = -1;
    for (int i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_out; k++)
            g->tensors[g->nodes[i].out[k]].producer = i;

    /* partitions */
    free(g->parts);
    g->parts = NULL;
    g->n_parts = 0;
    int cap = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        qg_node *n = &g->nodes[i];
        qg_partition *last = g->n_parts ? &g->parts[g->n_parts - 1] : NULL;
        bool is_copy = n->op == QG_OP_COPY;
        bool last_copy = last && g->nodes[last->first].op == QG_OP_COPY;
        if (last && last->exec == n->exec && !is_copy && !last_copy)
            last->n++;
        else
            add_part(g, &cap, n->exec, i);
        n->partition = g->n_parts - 1;
    }
    return QG_OK;
}
