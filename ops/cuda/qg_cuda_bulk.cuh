/*
 * qg_cuda_bulk.cuh - Hopper bulk copies into shared memory and the early
 * launch of a dependent kernel (sm_90; ops/cuda/ only).
 *
 * A bulk copy (cp.async.bulk) moves a contiguous range from global to
 * shared memory on the copy engine: no registers, no thread waits for it,
 * and its completion is counted in bytes on a shared-memory barrier
 * (mbarrier).  The staged decode kernels (op_matvec_i8s.cu) use it to
 * pull their whole weight slice into shared memory before the
 * programmatic-launch wait, so the weights stream while the previous
 * kernel still runs.
 *
 * Protocol of one barrier, used once per launch (phase 0):
 *   qg_mbar_init(bar, 1)        one thread, then qg_mbar_fence_init() and
 *                               __syncthreads()
 *   qg_mbar_expect(bar, bytes)  one thread: the one arrival, with the
 *                               bytes the copies will deliver
 *   qg_bulk_g2s(dst, src, n, bar) any threads, after the expect
 *   qg_mbar_wait(bar, 0)        every reader: the bytes have landed
 */
#ifndef QG_CUDA_BULK_CUH
#define QG_CUDA_BULK_CUH

#include "qg_cuda_common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QG_BULK_ARCH 1
#else
#define QG_BULK_ARCH 0
#endif

__device__ __forceinline__ void qg_mbar_init(uint64_t *bar, unsigned count) {
#if QG_BULK_ARCH
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(qg_smem_addr(bar)), "r"(count)
                 : "memory");
#else
    (void)bar;
    (void)count;
#endif
}

/* Make initialized barriers visible to the copy engine (the async proxy). */
__device__ __forceinline__ void qg_mbar_fence_init() {
#if QG_BULK_ARCH
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

/* The barrier's one arrival, announcing `bytes` of copies. */
__device__ __forceinline__ void qg_mbar_expect(uint64_t *bar, unsigned bytes) {
#if QG_BULK_ARCH
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(qg_smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
#else
    (void)bar;
    (void)bytes;
#endif
}

/* Copy [src, src + bytes) to dst (shared); bytes % 16 == 0, both
 * addresses 16-byte aligned.  Completion is counted on bar. */
__device__ __forceinline__ void qg_bulk_g2s(void *dst, const void *src, unsigned bytes,
                                            uint64_t *bar) {
#if QG_BULK_ARCH
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                 "%2, [%3];" ::"r"(qg_smem_addr(dst)),
                 "l"(src), "r"(bytes), "r"(qg_smem_addr(bar))
                 : "memory");
#else
    (void)dst;
    (void)src;
    (void)bytes;
    (void)bar;
#endif
}

/* Wait until the barrier's phase `parity` has completed. */
__device__ __forceinline__ void qg_mbar_wait(uint64_t *bar, unsigned parity) {
#if QG_BULK_ARCH
    const unsigned a = qg_smem_addr(bar);
    unsigned done = 0;
    while (!done) {
        asm volatile("{\n\t.reg .pred p;\n\t"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                     "selp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
    }
#else
    (void)bar;
    (void)parity;
#endif
}

/* Let the next kernel on the stream launch now (programmatic dependent
 * launch): its blocks take whatever room the multiprocessors have left
 * and run up to their own qg_pdl_wait(), which still waits for this whole
 * grid.  Called by every thread of every block (a block that never calls
 * it counts at its exit). */
__device__ __forceinline__ void qg_pdl_launch_next() {
#if QG_BULK_ARCH
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Spin (one thread) until the word at p reads `want`, with acquire
 * semantics at device scope. */
__device__ __forceinline__ void qg_spin_acquire(const int *p, int want) {
    int v;
    do {
        asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    } while (v != want);
}

__device__ __forceinline__ void qg_store_release(int *p, int v) {
    asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

#endif
