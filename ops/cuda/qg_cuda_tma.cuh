/*
 * qg_cuda_tma.cuh - bulk asynchronous copies global -> shared memory and
 * the transaction barriers that say when they have landed (sm_90: the
 * copy engine of each multiprocessor, cp.async.bulk + mbarrier), as the
 * staged decode products of op_matvec_s8.cu use them (ops/cuda/ only).
 *
 * Protocol of one stage (a shared-memory buffer and its barrier, made for
 * one arrival per phase):
 *   producer thread:  qg_mbar_expect(bar, bytes)  then any number of
 *                     qg_bulk_copy(dst, src, n, bar) whose n sum to bytes
 *                     (other lanes of the same warp may issue copies after
 *                     a __syncwarp: the arrival is counted first, so the
 *                     phase cannot end before the last byte lands)
 *   consumers:        qg_mbar_wait(bar, parity): parity 0 on the stage's
 *                     first use, then alternating
 *   reuse:            every consumer done (a __syncthreads), then the
 *                     producer calls qg_fence_async() before its next
 *                     copies into the buffer (generic reads, then
 *                     asynchronous writes, of the same bytes)
 * Copies need 16-byte aligned addresses and sizes.  Without sm_90 the
 * functions compile to nothing (the launchers never choose these kernels
 * there).
 */
#ifndef QG_CUDA_TMA_CUH
#define QG_CUDA_TMA_CUH

#include <stdint.h>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QG_TMA_ON 1
#else
#define QG_TMA_ON 0
#endif

/* Shared-memory address of a generic pointer into shared memory. */
__device__ __forceinline__ uint32_t qg_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* One thread: make bar a barrier of `count` arrivals per phase, visible to
 * the copy engine; the block must __syncthreads() before anyone uses it. */
__device__ __forceinline__ void qg_mbar_init(uint64_t *bar, unsigned count) {
#if QG_TMA_ON
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(qg_smem_addr(bar)), "r"(count)
                 : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#else
    (void)bar;
    (void)count;
#endif
}

/* Arrive on bar, announcing `bytes` of copies that complete this phase. */
__device__ __forceinline__ void qg_mbar_expect(uint64_t *bar, unsigned bytes) {
#if QG_TMA_ON
    asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }" ::"r"(
                     qg_smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
#else
    (void)bar;
    (void)bytes;
#endif
}

/* Wait until the phase of bar with this parity has completed. */
__device__ __forceinline__ void qg_mbar_wait(uint64_t *bar, unsigned parity) {
#if QG_TMA_ON
    const uint32_t a = qg_smem_addr(bar);
    uint32_t done = 0;
    while (!done)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; "
                     "selp.u32 %0, 1, 0, p; }"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
#else
    (void)bar;
    (void)parity;
#endif
}

/* Copy n bytes (a multiple of 16; both addresses 16-byte aligned) from
 * global src to shared dst, completing n bytes of bar's phase. */
__device__ __forceinline__ void qg_bulk_copy(void *dst, const void *src, unsigned n, uint64_t *bar) {
#if QG_TMA_ON
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
                 "[%3];" ::"r"(qg_smem_addr(dst)),
                 "l"(src), "r"(n), "r"(qg_smem_addr(bar))
                 : "memory");
#else
    (void)dst;
    (void)src;
    (void)n;
    (void)bar;
#endif
}

/* Order this thread's earlier generic accesses to shared memory before its
 * later asynchronous copies (buffer reuse, see above). */
__device__ __forceinline__ void qg_fence_async() {
#if QG_TMA_ON
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

/* Let the next kernel of the stream launch now (programmatic dependent
 * launch); it still waits for this grid's completion before reading what
 * this grid writes (qg_pdl_wait). */
__device__ __forceinline__ void qg_pdl_launch_next() {
#if QG_TMA_ON
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#endif
