/*
 * qg_exec.h - the executor interface.
 *
 * An executor runs partitions of a planned graph with its own kernels and
 * memory.  The same few functions, with the same names, in every executor
 * (exec/cpu, exec/cuda, exec/vulkan).  Slots marked optional may be NULL.
 *
 * Life cycle, per context:
 *   kv_alloc(bytes)            once: the KV arena shared by all graphs
 *   compile(graph)             once per graph, after the memory plan:
 *                              allocate its activation arena, bind weights,
 *                              capture / record what it can
 *   per step:  tensor_set(inputs) ... run(partition) ... tensor_get(logits)
 *   release(graph), free()
 */
#ifndef QG_EXEC_H
#define QG_EXEC_H

#include "../graph/qg_graph.h"
#include "../graph/qg_profile.h"

#include <stdio.h>

typedef struct qg_exec_i {
    const char *name; /* "cpu", "cuda", "vulkan" */
    /* Can this executor run node n (op and dtypes)? */
    bool (*supports)(void *self, const qg_graph *g, const qg_node *n);
    /* optional: device memory available for weights + arenas, in bytes;
     * NULL for executors that use host memory. */
    size_t (*mem_available)(void *self);
    /* Allocate the KV arena (bytes from the memory plan).  Once. */
    qg_status (*kv_alloc)(void *self, size_t bytes, qg_error *err);
    /* Prepare graph g (its partitions with exec == this executor). */
    qg_status (*compile)(void *self, qg_graph *g, int exec_index, qg_error *err);
    /* Run partition `part` of g.  step: the host copy of the step input.
     * prof: record per-node events when non-NULL. */
    qg_status (*run)(void *self, qg_graph *g, int part, const int32_t *step,
                     qg_profile *prof, qg_error *err);
    /* Copy bytes [off, off+n) of tensor t between host memory and this
     * executor (INPUT / OUTPUT / copies across executors). */
    qg_status (*tensor_set)(void *self, const qg_graph *g, int t, const void *src,
                            size_t off, size_t n, qg_error *err);
    qg_status (*tensor_get)(void *self, const qg_graph *g, int t, void *dst,
                            size_t off, size_t n, qg_error *err);
    /* optional: host address of tensor t when the executor's memory is
     * host memory (lets copies and outputs skip a staging copy). */
    void *(*tensor_host)(void *self, const qg_graph *g, int t);
    /* Wait for all submitted work. */
    qg_status (*sync)(void *self, qg_error *err);
    /* Forget graph g (free its arena). */
    void (*release)(void *self, qg_graph *g);
    void (*free)(void *self);
    /* optional: host memory that tensor_get copies into directly (pinned:
     * no staging copy), `bytes` of it, or NULL (the caller then uses
     * malloc); host_free returns it.  Both NULL when the executor gains
     * nothing from it. */
    void *(*host_alloc)(void *self, size_t bytes);
    void (*host_free)(void *self, void *p);
} qg_exec_i;

typedef struct qg_exec {
    const qg_exec_i *i;
    void *self;
} qg_exec;

/* Executor options shared by the constructors. */
typedef struct qg_exec_opts {
    int n_threads;   /* cpu: worker threads (>= 1) */
    int device;      /* gpu: device index */
} qg_exec_opts;

/* The CPU executor (always available). */
qg_status qg_exec_cpu_new(const qg_exec_opts *o, qg_exec *out, qg_error *err);

/* The GPU executors, when built (QG_HAVE_CUDA / QG_HAVE_VULKAN are defined
 * for the whole build by cmake/cuda.cmake and cmake/vulkan.cmake).  Each
 * returns QG_ERR_BACKEND with a clear message when no usable device is
 * present.  *_describe prints the devices found (for `info`). */
#ifdef QG_HAVE_CUDA
qg_status qg_exec_cuda_new(const qg_exec_opts *o, qg_exec *out, qg_error *err);
void qg_exec_cuda_describe(FILE *f);
#endif
#ifdef QG_HAVE_VULKAN
qg_status qg_exec_vulkan_new(const qg_exec_opts *o, qg_exec *out, qg_error *err);
void qg_exec_vulkan_describe(FILE *f);
#endif

#endif
