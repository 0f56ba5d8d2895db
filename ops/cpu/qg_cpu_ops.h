/*
 * qg_cpu_ops.h - the CPU kernels, one per op, behind one switch.
 *
 * The CPU executor runs a node by calling qg_cpu_op_run() on every worker
 * of its thread pool (ith = 0..nth-1); each kernel splits its own work.
 * Kernels read the live token count from args->n_tok and never allocate:
 * all temporary memory comes from the per-thread scratch and the per-node
 * shared scratch that the executor sized with qg_cpu_op_scratch() when the
 * graph was compiled.
 *
 * Numerics: f32 activations throughout (weights dequantized exactly to
 * f32, products accumulated in f32); softmax and norms accumulate in f32
 * with max-subtraction; the KV cache stores F16 (rounded once) or F32.
 */
#ifndef QG_CPU_OPS_H
#define QG_CPU_OPS_H

#include "../../exec/cpu/qg_threadpool.h"
#include "../../graph/qg_graph.h"
#include "../quant/qg_quant.h"

typedef struct qg_cpu_op_args {
    const qg_graph *g;
    const qg_node *n;
    void *const *addr;  /* addr[tensor id]: host address of every tensor */
    int n_tok;          /* live tokens this step (1..g->n_tok_max) */
    const qg_quant_kernels *qk;
    qg_threadpool *tp;  /* for qg_threadpool_barrier() in multi-phase ops */
    float *scratch;     /* per-thread: worker ith uses
                           scratch + ith * scratch_floats */
    size_t scratch_floats;
    void *shared;       /* one buffer shared by all workers of this node */
    size_t shared_bytes;
} qg_cpu_op_args;

/* Does the CPU implement node n (op and tensor dtypes)? */
bool qg_cpu_op_supports(const qg_graph *g, const qg_node *n);

/* Scratch node n needs: floats per thread and bytes shared, for the
 * worst case (g->n_tok_max tokens, g->n_ctx KV rows) with n_threads. */
void qg_cpu_op_scratch(const qg_graph *g, const qg_node *n, int n_threads,
                       size_t *per_thread_floats, size_t *shared_bytes);

/* Run node a->n on worker ith of nth. */
void qg_cpu_op_run(const qg_cpu_op_args *a, int ith, int nth);

/* The per-op kernels (ops/cpu/op_*.c), dispatched by qg_cpu_op_run. */
void qg_cpu_embed(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_rmsnorm(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_qkv(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_rope(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_attention(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_matmul(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_add(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_swiglu(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_router(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_topk(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_expert_swiglu(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_aggregate(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_moe_fused(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_lm_head(const qg_cpu_op_args *a, int ith, int nth);
void qg_cpu_copy(const qg_cpu_op_args *a, int ith, int nth);

#endif
