/*
 * qg_vulkan.h - the Vulkan executor's extras beyond exec/qg_exec.h.
 *
 * qg_exec_vulkan_new() (declared in exec/qg_exec.h) makes the executor with
 * default options; the environment can change these:
 *   QG_VK_VALIDATION=1   enable VK_LAYER_KHRONOS_validation and a debug
 *                        messenger that prints every message to stderr;
 *                        =2 adds synchronization validation (slow: it
 *                        checks every barrier between dispatches)
 *   QG_VK_NO_SUBGROUP=1  use the shared-memory reduction shaders even where
 *                        the device has subgroup arithmetic
 *   QG_VK_FOLD=0         no decode folds: every rmsnorm and residual add of
 *                        a decode graph gets a dispatch of its own instead
 *                        of riding in the neighbouring product (the same
 *                        bits either way; for A/B)
 *   QG_VK_MV=1           fast decode weight products (fast_mv): the
 *                        decode graphs' matmul, router, lm_head, qkv,
 *                        swiglu, expert swiglu and aggregate dispatches
 *                        use ops/vulkan/{matmul,swiglu,aggregate}_mv.comp
 *                        (several rows per subgroup with their loads in
 *                        flight, factored dequant-dots of
 *                        qg_dqdot.glsl) instead of the exact-dequant
 *                        shaders; off by default until its tests run on
 *                        a GPU (tg128 +11.6% on an H100, BENCHMARKS.md).
 *                        Results differ from the default path in f32
 *                        rounding only (the op tests' tolerances)
 *   QG_VK_MV_RPT=N       with QG_VK_MV=1: N (1..8) rows per row group in
 *                        every fast product instead of the default 2
 *                        (qg_vk_record.c, mv_rows); for tuning
 *   QG_VK_MV_PF=1        with QG_VK_MV=1: the fast products' loops
 *                        software-pipelined (a unit's weight bytes, and in
 *                        aggregate_mv the expert id, loaded during the
 *                        previous unit's dots: one memory latency per
 *                        lane instead of one per unit); same results;
 *                        off until measured on a GPU
 *   QG_VK_ATTN_TILE=1    prefill attention with the 32 queries of a kv
 *                        head and token block in one workgroup, each
 *                        cache row read once for them
 *                        (ops/vulkan/attention_tile.comp); off by default
 *                        until measured on a GPU
 *   QG_VK_CM=1           prefill weight products (the gemm shaders) on
 *                        cooperative matrices (VK_NV_cooperative_matrix,
 *                        f16 inputs, f32 sums; ops/vulkan/qg_gemm_cm.glsl)
 *                        where the device has them (NVIDIA); ignored
 *                        elsewhere (lavapipe).  Off by default until its
 *                        tests pass on a GPU.  QG_VK_CM=emulate: their
 *                        scalar emulation where the device lacks them
 *                        (slow; to test the shaders on lavapipe)
 * qg_exec_vulkan_new_ex() takes them explicitly (tests), and
 * qg_exec_vulkan_messages() reports how many validation messages (warning
 * or error severity) the executor's instance has produced so far.
 *
 * Device choice (qg_exec_opts.device): devices are listed in preference
 * order, discrete GPUs first, then integrated, virtual, CPU (lavapipe) and
 * other; N >= 0 picks the N-th of that list (what `qmoe-graph info` and
 * qg_exec_vulkan_describe() print), so the default 0 and -1 both mean "the
 * best device".  Devices without Vulkan 1.1 or a compute queue are not
 * listed.
 */
#ifndef QG_VULKAN_H
#define QG_VULKAN_H

#include "../qg_exec.h"

typedef struct qg_vk_opts {
    bool validation;  /* Khronos validation layer + messenger */
    bool sync_validation; /* with validation: synchronization checks too */
    bool no_subgroup; /* force the shared-memory reduction shaders */
    bool no_fold;     /* no decode folds (exec/vulkan/qg_vk_fold.c) */
    bool fast_mv;     /* fast decode weight products (QG_VK_MV=1) */
    int mv_rpt;       /* fast_mv: rows per row group, 1..8; 0: the default (2) */
    bool mv_pf;       /* fast_mv: each unit's loads issued during the
                         previous unit's dots (QG_VK_MV_PF=1) */
    bool attn_tile;   /* prefill attention with the queries of a kv head tiled */
    bool coopmat;     /* prefill products on cooperative matrices, where the
                         device has them (QG_VK_CM=1) */
    bool cm_emulate;  /* with coopmat, on a device without them: the
                         shaders' scalar emulation (tests: CI checks the
                         shaders' tiling on lavapipe) */
} qg_vk_opts;

/* As qg_exec_vulkan_new, with explicit options (vo may be NULL: defaults,
 * then the environment variables above are read). */
qg_status qg_exec_vulkan_new_ex(const qg_exec_opts *o, const qg_vk_opts *vo,
                                qg_exec *out, qg_error *err);

/* Validation messages of warning or error severity seen so far by the
 * Vulkan executor e (0 when validation is off).  e must be a Vulkan
 * executor (e->i->name is "vulkan"). */
size_t qg_exec_vulkan_messages(const qg_exec *e);

/* The dispatches recorded for graph g (compiled on the Vulkan executor e),
 * and in *n_barrier (may be NULL) the pipeline barriers between them in
 * its plain command buffers; -1 if g is not compiled there.  For tests and
 * QG_DEBUG=vulkan: what the folds and fusions saved. */
int qg_exec_vulkan_counts(const qg_exec *e, const qg_graph *g, int *n_barrier);

/* Short description of the device e runs on ("llvmpipe (LLVM 15.0.6, 256
 * bits), cpu, subgroup 8"); e must be a Vulkan executor. */
const char *qg_exec_vulkan_device_name(const qg_exec *e);

#endif
