/* qg_pass_memplan.c - pass 4: plan activations by liveness.
 *
 * Each executor gets one activation arena.  Walking the nodes in order, a
 * node's outputs are placed (best fit among free holes, else at the end)
 * before its inputs whose last use it is are released, so an output never
 * aliases an input of the same node.  INPUT and OUTPUT tensors live for the
 * whole step.  KV tensors go to the executor's KV arena in tensor order,
 * which the builder keeps identical across the decode and prefill graphs of
 * one context, so both graphs see the same cache.  Tensors no node touches
 * (left over by fusion) get no memory.
 */
#include "qg_sched.h"

#include <stdlib.h>
#include <string.h>

#define QG_ARENA_ALIGN 256

typedef struct hole {
    size_t off, size;
} hole;

/* A tiny allocator over offsets: a sorted list of free holes below `top`. */
typedef struct arena_plan {
    hole *holes;
    int n, cap;
    size_t top;
} arena_plan;

static size_t plan_alloc(arena_plan *a, size_t size) {
    size = qg_align_up(size ? size : 1, QG_ARENA_ALIGN);
    int best = -1;
    for (int i = 0; i < a->n; i++)
        if (a->holes[i].size >= size && (best < 0 || a->holes[i].size < a->holes[best].size))
            best = i;
    if (best >= 0) {
        size_t off = a->holes[best].off;
        a->holes[best].off += size;
        a->holes[best].size -= size;
        if (a->holes[best].size == 0) {
            memmove(&a->holes[best], &a->holes[best + 1], sizeof(hole) * (size_t)(a->n - best - 1));
            a->n--;
        }
        return off;
    }
    /* extend: if the last hole touches the top, grow it */
    if (a->n && a->holes[a->n - 1].off + a->holes[a->n - 1].size == a->top) {
        size_t off = a->holes[a->n - 1].off;
        a->top = off + size;
        a->n--;
        return off;
    }
    size_t off = a->top;
    a->top += size;
    return off;
}

static void plan_free(arena_plan *a, size_t off, size_t size) {
    size = qg_align_up(size ? size : 1, QG_ARENA_ALIGN);
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->holes = realloc(a->holes, sizeof(hole) * (size_t)a->cap);
        QG_ASSERT(a->holes);
    }
    int i = 0;
    while (i < a->n && a->holes[i].off < off) i++;
    memmove(&a->holes[i + 1], &a->holes[i], sizeof(hole) * (size_t)(a->n - i));
    a->holes[i] = (hole){off, size};
    a->n++;
    /* merge with neighbours */
    if (i + 1 < a->n && a->holes[i].off + a->holes[i].size == a->holes[i + 1].off) {
        a->holes[i].size += a->holes[i + 1].size;
        memmove(&a->holes[i + 1], &a->holes[i + 2], sizeof(hole) * (size_t)(a->n - i - 2));
        a->n--;
    }
    if (i > 0 && a->holes[i - 1].off + a->holes[i - 1].size == a->holes[i].off) {
        a->holes[i - 1].size += a->holes[i].size;
        memmove(&a->holes[i], &a->holes[i + 1], sizeof(hole) * (size_t)(a->n - i - 1));
        a->n--;
    }
}

void qg_pass_memplan(qg_graph *g) {
    for (int t = 0; t < g->n_tensors; t++) g->tensors[t].first_use = g->tensors[t].last_use = -1;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_in + n->n_out; k++) {
            qg_tensor *t = &g->tensors[k < n->n_in ? n->in[k] : n->out[k - n->n_in]];
            if (t->first_use < 0) t->first_use = i;
            t->last_use = i;
        }
    }
    arena_plan plans[QG_MAX_EXEC];
    memset(plans, 0, sizeof plans);
    memset(g->act_bytes, 0, sizeof g->act_bytes);
    memset(g->kv_bytes, 0, sizeof g->kv_bytes);

    /* whole-step tensors first: inputs, outputs, KV */
    for (int t = 0; t < g->n_tensors; t++) {
        qg_tensor *x = &g->tensors[t];
        if (x->exec < 0) continue;
        /* inputs and outputs always get memory: the host writes `step`
         * even where no kernel reads it as a tensor */
        if (x->role == QG_ROLE_INPUT || x->role == QG_ROLE_OUTPUT) {
            x->offset = plan_alloc(&plans[x->exec], x->nbytes);
        } else if (x->role == QG_ROLE_KV && x->first_use >= 0) {
            x->offset = g->kv_bytes[x->exec];
            g->kv_bytes[x->exec] += qg_align_up(x->nbytes, QG_ARENA_ALIGN);
        }
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_out; k++) {
            qg_tensor *x = &g->tensors[n->out[k]];
            if (x->role == QG_ROLE_ACT && x->first_use == i)
                x->offset = plan_alloc(&plans[x->exec], x->nbytes);
        }
        for (int k = 0; k < n->n_in + n->n_out; k++) {
            int tid = k < n->n_in ? n->in[k] : n->out[k - n->n_in];
            qg_tensor *x = &g->tensors[tid];
            /* release once, at the last use (a tensor may appear twice) */
            if (x->role != QG_ROLE_ACT || x->last_use != i || x->exec < 0) continue;
            bool dup = false;
            for (int j = 0; j < k; j++)
                dup |= (j < n->n_in ? n->in[j] : n->out[j - n->n_in]) == tid;
            if (!dup) plan_free(&plans[x->exec], x->offset, x->nbytes);
        }
    }
    for (int e = 0; e < QG_MAX_EXEC; e++) {
        g->act_bytes[e] = plans[e].top;
        free(plans[e].holes);
    }
}

qg_status qg_graph_schedule(qg_graph *g, bool fuse, const qg_place_opts *o,
                            qg_error *err) {
    qg_status st;
    if (fuse) qg_pass_fuse(g, o);                          /* 1 */
    if ((st = qg_pass_place(g, o, err))) return st;        /* 2 */
    if ((st = qg_pass_partition(g, err))) return st;       /* 3 */
    qg_pass_memplan(g);                                    /* 4 */
    return QG_OK;
}
