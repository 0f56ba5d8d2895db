/*
 * qg_profile.h - graph-level profiling: per-node times, roll-ups, traces.
 *
 * An executor in profile mode records one event per node run (and per copy)
 * into a qg_profile that was sized before the run, so recording allocates
 * nothing.  qg_profile_report() prints the table rolled up by op and by
 * layer (µs, %, GB/s from qg_node_bytes), and qg_profile_write_trace()
 * writes a Chrome-trace JSON that Perfetto / chrome://tracing open.
 */
#ifndef QG_PROFILE_H
#define QG_PROFILE_H

#include "qg_graph.h"

#include <stdio.h>

typedef struct qg_profile_event {
    const qg_graph *g; /* graph the node belongs to (decode or prefill) */
    int node;          /* index in g->nodes */
    int n_tok, n_kv;   /* step shape, for the cost model */
    int tid;           /* trace row: executor index */
    uint64_t t0_ns, t1_ns; /* start/end on a common clock */
} qg_profile_event;

typedef struct qg_profile {
    qg_profile_event *ev;
    size_t n, cap; /* recording stops (and `dropped` counts) at cap */
    size_t dropped;
    const char *exec_names[QG_MAX_EXEC];
} qg_profile;

/* cap events; NULL on allocation failure. */
qg_profile *qg_profile_new(size_t cap);
void qg_profile_free(qg_profile *p);
void qg_profile_reset(qg_profile *p);

/* Append an event (no allocation; drops when full). */
static inline void qg_profile_add(qg_profile *p, const qg_graph *g, int node,
                                  int n_tok, int n_kv, int tid, uint64_t t0,
                                  uint64_t t1) {
    if (p->n < p->cap) {
        qg_profile_event *e = &p->ev[p->n++];
        e->g = g; e->node = node; e->n_tok = n_tok; e->n_kv = n_kv;
        e->tid = tid; e->t0_ns = t0; e->t1_ns = t1;
    } else {
        p->dropped++;
    }
}

/* Print the per-op and per-layer tables (and the top nodes) to f. */
void qg_profile_report(const qg_profile *p, FILE *f);
/* Write the Chrome-trace JSON; QG_ERR_IO names the path on failure (and
 * no partial file is left). */
qg_status qg_profile_write_trace(const qg_profile *p, const char *path,
                                 qg_error *err);

#endif
