/*
 * qg_sched.h - the scheduler passes over a built graph.
 *
 *   1 qg_pass_fuse       rewrite router+topk+expert_swiglu+aggregate into
 *                        moe_fused where the node's executor supports it
 *   2 qg_pass_place      executor per node: the policy lives here
 *   3 qg_pass_partition  maximal same-executor runs; copy nodes inserted
 *                        where a tensor crosses executors
 *   4 qg_pass_memplan    liveness offsets into one arena per executor,
 *                        KV tensors into the per-executor KV arena
 *
 * Pass 5 (compile) is each executor's compile().  qg_graph_schedule runs
 * 1-4.  QG_DEBUG=sched logs the placement decisions.
 */
#ifndef QG_SCHED_H
#define QG_SCHED_H

#include "../exec/qg_exec.h"

/* Placement policy. */
typedef struct qg_place_opts {
    int n_exec;            /* executors[0..n_exec) in order of preference;
                              the last one must be the CPU */
    const qg_exec *execs;
    int cpu_index;         /* index of the CPU executor */
    int n_cpu_moe;         /* experts of layers [0, n_cpu_moe) on the CPU */
} qg_place_opts;

/* Pass 1.  Replaces each router, topk, expert_swiglu, aggregate chain of a
 * layer by one moe_fused node when the executor that pass 2 will choose for
 * the chain supports the fused node.  Leaves dead tensors in the table
 * (the memory plan ignores tensors nobody uses). */
void qg_pass_fuse(qg_graph *g, const qg_place_opts *o);

/* The executor the placement policy picks for node n (pass 2's rule). */
int qg_place_choose(const qg_graph *g, const qg_node *n, const qg_place_opts *o);
/* Pass 2. */
qg_status qg_pass_place(qg_graph *g, const qg_place_opts *o, qg_error *err);
/* Pass 3.  May add tensors and copy nodes (reorders the node array). */
qg_status qg_pass_partition(qg_graph *g, qg_error *err);
/* Pass 4. */
void qg_pass_memplan(qg_graph *g);

/* Run passes 1-4 (fuse when `fuse`). */
qg_status qg_graph_schedule(qg_graph *g, bool fuse, const qg_place_opts *o,
                            qg_error *err);

#endif
