/*
 * qg_cuda_common.cuh - device helpers shared by the CUDA kernels
 * (ops/cuda/ and the kernel lab tools/kernels/ only).
 *
 * Weight rows are read in "units" of 32 consecutive weights of one row, in
 * every format:
 *   F32/F16/BF16  32 contiguous elements (row length must be a multiple of
 *                 32 so rows stay 16-byte aligned)
 *   Q8_0, Q4_0    one block (32 elements)
 *   Q4_K, Q5_K    an eighth of a super-block: c = p/2, half = p%2 of
 *                 unit p in the block: qs bytes 32c+16half..+16, low
 *                 nibbles are elements 64c+16half+i, high nibbles
 *                 64c+32+16half+i (two runs of 16)
 *   Q6_K          unit p: h = p/4, j = p%4, l in [8j, 8j+8): elements
 *                 128h+32g+l for g = 0..3 (four runs of 8)
 * qg_unit<DT>::decode() returns the 32 weights in f32 exactly as
 * ops/quant/qg_quant_scalar.c dequantizes them (same products and
 * differences, same order: __fmul_rn / __fsub_rn keep nvcc from fusing a
 * product into an FMA), and the first element of each run.  A unit's
 * elements lie in [32u, 32u+32) for plain and 32-blocks, and in the same
 * 128-element half of the super-block for K-quants, so a K-tile of 64 or
 * 128 elements aligned to its size holds whole units.
 *
 * Layout facts used (ops/quant/qg_quant_blocks.h): Q4_K blocks are 144
 * bytes and Q5_K 176 (multiples of 16: 16-byte loads of the header and qs
 * are aligned when the row start is); Q8_0 (34), Q4_0 (18) and Q6_K (210)
 * blocks are only 2-byte aligned and are read with 16-bit loads.
 */
#ifndef QG_CUDA_COMMON_CUH
#define QG_CUDA_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "../../graph/qg_dtype.h"
}

#define QG_CUDA_WARP 32

/* ---- loads ------------------------------------------------------------ */

__device__ __forceinline__ uint32_t qg_ld_u16(const uint8_t *p) {
    return (uint32_t)__ldg((const unsigned short *)p);
}
/* 4 bytes at a 2-byte aligned address */
__device__ __forceinline__ uint32_t qg_ld_u32a2(const uint8_t *p) {
    return qg_ld_u16(p) | (qg_ld_u16(p + 2) << 16);
}
__device__ __forceinline__ uint4 qg_ld_v4(const uint8_t *p) {
    return __ldg((const uint4 *)p);
}
__device__ __forceinline__ float qg_h2f(uint32_t h) {
    return __half2float(__ushort_as_half((unsigned short)h));
}
__device__ __forceinline__ float qg_bf2f(uint32_t h) {
    return __uint_as_float(h << 16);
}
/* Unsigned byte i (compile-time 0..3) of v as an exact float: the bits
 * 0x4B0000bb are 2^23 + b. */
__device__ __forceinline__ float qg_byte_f(uint32_t v, int i) {
    return __int_as_float((int)__byte_perm(v, 0x4B000000u, 0x7440u | (unsigned)i)) - 8388608.0f;
}

/* ---- programmatic dependent launch (sm_90) ----------------------------
 * Kernels are launched with the programmatic-serialization attribute (see
 * qg_cu_launch), so a kernel may start while its predecessor on the stream
 * is still running.  Every kernel calls qg_pdl_wait() before it reads
 * anything a predecessor wrote, and before any early exit (so its own
 * completion still implies its predecessors'); only constant data (weights)
 * may be touched before.  qg_pdl_trigger() lets the successor launch.  Both
 * are no-ops without the attribute. */
__device__ __forceinline__ void qg_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
/* (An explicit early trigger, griddepcontrol.launch_dependents, measured
 * slower on H200: the successor's CTAs occupy the SMs while they wait.  The
 * implicit trigger at the predecessor's exit is kept.) */
__device__ __forceinline__ void qg_pdl_trigger() {}
/* Ask for [p, p + bytes) in L2 (one bulk prefetch; sm_90), the range
 * widened to 16-byte bounds.  For constant data only. */
__device__ __forceinline__ void qg_prefetch_l2(const void *p, size_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const uintptr_t a = (uintptr_t)p & ~(uintptr_t)15;
    const uintptr_t e = ((uintptr_t)p + bytes + 15) & ~(uintptr_t)15;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a), "r"((unsigned)(e - a))
                 : "memory");
#else
    (void)p;
    (void)bytes;
#endif
}

/* Shared-memory address of a generic pointer into shared memory. */
__device__ __forceinline__ uint32_t qg_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* ---- asynchronous copies (sm_80+) --------------------------------------
 * 16 bytes global -> shared without passing through registers; both
 * addresses 16-byte aligned.  A thread's copies are complete after
 * qg_cp_wait_all(); other threads see them after a barrier. */
__device__ __forceinline__ void qg_cp_async16(void *smem_dst, const void *src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void qg_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void qg_cp_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

/* Bytes per bulk prefetch when a range is spread over a grid. */
#define QG_PF_CHUNK 32768

/* This thread's share of asking L2 for [p, p + bytes) (constant data): the
 * range in QG_PF_CHUNK pieces dealt round-robin over the grid's blocks,
 * then over each block's threads (a block's thread 0 takes its first). */
__device__ __forceinline__ void qg_prefetch_grid(const void *p, size_t bytes) {
    if (!p || !bytes) return;
    const size_t nb = (size_t)gridDim.x * gridDim.y * gridDim.z;
    const size_t b = blockIdx.x + (size_t)gridDim.x * (blockIdx.y + (size_t)gridDim.y * blockIdx.z);
    const size_t nc = (bytes + QG_PF_CHUNK - 1) / QG_PF_CHUNK;
    for (size_t c = b + nb * threadIdx.x; c < nc; c += nb * blockDim.x) {
        const size_t o = c * QG_PF_CHUNK;
        qg_prefetch_l2((const uint8_t *)p + o, bytes - o < QG_PF_CHUNK ? bytes - o : QG_PF_CHUNK);
    }
}

/* ---- reductions ------------------------------------------------------- */

__device__ __forceinline__ float qg_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float qg_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
 * gets the total.  red: __shared__ float[32]. */
__device__ __forceinline__ float qg_block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = qg_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return qg_warp_sum(t);
}

/* Sum of squares of x[0..n) (global or shared memory) in an order that
 * does not depend on the block size, so every kernel that normalizes a
 * vector (the rmsnorm kernel and the products that fold it in) gets the
 * same bits: 256-element chunk c is summed by one warp (lane l: elements
 * 256c + 8l .. +7 in order, then qg_warp_sum), the chunk sums in chunk
 * order.  cs: shared memory, >= (n + 255) / 256 floats.  Every thread
 * gets the total; ends with __syncthreads() (cs may be reused). */
__device__ __forceinline__ float qg_sumsq_fixed(const float *x, int n, float *cs) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int nc = (n + 255) / 256;
    for (int c = w; c < nc; c += nw) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int e = 256 * c + 8 * lane + i;
            if (e < n) s = fmaf(x[e], x[e], s);
        }
        s = qg_warp_sum(s);
        if (lane == 0) cs[c] = s;
    }
    __syncthreads();
    float t = 0.0f;
    for (int c = 0; c < nc; c++) t += cs[c];
    __syncthreads();
    return t;
}
/* Chunk sums qg_sumsq_fixed can hold in a fixed __shared__ array. */
#define QG_SUMSQ_CHUNKS 64

__device__ __forceinline__ float qg_silu(float x) { return x / (1.0f + expf(-x)); }

/* ---- units ------------------------------------------------------------ */

template <int DT> struct qg_unit;

template <> struct qg_unit<QG_F32> {
    static constexpr int NR = 1;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *p = row + (size_t)u * 128;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint4 v = qg_ld_v4(p + 16 * i);
            w[4 * i + 0] = __uint_as_float(v.x);
            w[4 * i + 1] = __uint_as_float(v.y);
            w[4 * i + 2] = __uint_as_float(v.z);
            w[4 * i + 3] = __uint_as_float(v.w);
        }
        st[0] = 32 * u;
    }
};

template <> struct qg_unit<QG_F16> {
    static constexpr int NR = 1;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *p = row + (size_t)u * 64;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 v = qg_ld_v4(p + 16 * i);
            const uint32_t a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                w[8 * i + 2 * k] = qg_h2f(a[k] & 0xFFFFu);
                w[8 * i + 2 * k + 1] = qg_h2f(a[k] >> 16);
            }
        }
        st[0] = 32 * u;
    }
};

template <> struct qg_unit<QG_BF16> {
    static constexpr int NR = 1;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *p = row + (size_t)u * 64;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 v = qg_ld_v4(p + 16 * i);
            const uint32_t a[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                w[8 * i + 2 * k] = qg_bf2f(a[k] & 0xFFFFu);
                w[8 * i + 2 * k + 1] = qg_bf2f(a[k] >> 16);
            }
        }
        st[0] = 32 * u;
    }
};

/* q8_0: w = (float)qs[i] * d */
template <> struct qg_unit<QG_Q8_0> {
    static constexpr int NR = 1;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *b = row + (size_t)u * 34;
        const float d = qg_h2f(qg_ld_u16(b));
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t v = qg_ld_u32a2(b + 2 + 4 * k) ^ 0x80808080u; /* q + 128 */
#pragma unroll
            for (int i = 0; i < 4; i++) w[4 * k + i] = __fmul_rn(qg_byte_f(v, i) - 128.0f, d);
        }
        st[0] = 32 * u;
    }
};

/* q4_0: w = (float)(nibble - 8) * d; byte j: elements j (low), j+16 (high) */
template <> struct qg_unit<QG_Q4_0> {
    static constexpr int NR = 1;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *b = row + (size_t)u * 18;
        const float d = qg_h2f(qg_ld_u16(b));
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t v = qg_ld_u32a2(b + 2 + 4 * k);
            const uint32_t lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                w[4 * k + i] = __fmul_rn(qg_byte_f(lo, i) - 8.0f, d);
                w[16 + 4 * k + i] = __fmul_rn(qg_byte_f(hi, i) - 8.0f, d);
            }
        }
        st[0] = 32 * u;
    }
};

/* Scale and min of sub-block j (0..7) of a q4_K / q5_K block from the
 * three scale words a = scales[0..3], b = scales[4..7], c = scales[8..11]
 * (qg_quant_unpack_k4's word arithmetic). */
__device__ __forceinline__ void qg_k4_scale_min(uint32_t a, uint32_t b, uint32_t c, int j,
                                                uint32_t *sc, uint32_t *m) {
    const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
    const uint32_t s = j < 4 ? (a & lo6) : ((c & lo4) | (((a >> 6) & lo2) << 4));
    const uint32_t mm = j < 4 ? (b & lo6) : (((c >> 4) & lo4) | (((b >> 6) & lo2) << 4));
    const int sh = 8 * (j & 3);
    *sc = (s >> sh) & 0xFFu;
    *m = (mm >> sh) & 0xFFu;
}

/* q4_K: w = (d*sc) * q - dmin*m */
template <> struct qg_unit<QG_Q4_K> {
    static constexpr int NR = 2;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *b = row + (size_t)(u >> 3) * 144;
        const int p = u & 7, c = p >> 1, hf = p & 1;
        const uint4 hd = qg_ld_v4(b);
        const uint4 q = qg_ld_v4(b + 16 + 32 * c + 16 * hf);
        const float d = qg_h2f(hd.x & 0xFFFFu), dmin = qg_h2f(hd.x >> 16);
        uint32_t sc, m;
        qg_k4_scale_min(hd.y, hd.z, hd.w, 2 * c, &sc, &m);
        const float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
        qg_k4_scale_min(hd.y, hd.z, hd.w, 2 * c + 1, &sc, &m);
        const float d2 = __fmul_rn(d, (float)sc), m2 = __fmul_rn(dmin, (float)m);
        const uint32_t qw[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t lo = qw[k] & 0x0F0F0F0Fu, hi = (qw[k] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                w[4 * k + i] = __fsub_rn(__fmul_rn(d1, qg_byte_f(lo, i)), m1);
                w[16 + 4 * k + i] = __fsub_rn(__fmul_rn(d2, qg_byte_f(hi, i)), m2);
            }
        }
        st[0] = 256 * (u >> 3) + 64 * c + 16 * hf;
        st[1] = st[0] + 32;
    }
};

/* q5_K: as q4_K plus 16 where bit 2c (low) / 2c+1 (high) of qh[l] is set */
template <> struct qg_unit<QG_Q5_K> {
    static constexpr int NR = 2;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *b = row + (size_t)(u >> 3) * 176;
        const int p = u & 7, c = p >> 1, hf = p & 1;
        const uint4 hd = qg_ld_v4(b);
        const uint4 qh = qg_ld_v4(b + 16 + 16 * hf);
        const uint4 q = qg_ld_v4(b + 48 + 32 * c + 16 * hf);
        const float d = qg_h2f(hd.x & 0xFFFFu), dmin = qg_h2f(hd.x >> 16);
        uint32_t sc, m;
        qg_k4_scale_min(hd.y, hd.z, hd.w, 2 * c, &sc, &m);
        const float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
        qg_k4_scale_min(hd.y, hd.z, hd.w, 2 * c + 1, &sc, &m);
        const float d2 = __fmul_rn(d, (float)sc), m2 = __fmul_rn(dmin, (float)m);
        const uint32_t qw[4] = {q.x, q.y, q.z, q.w};
        const uint32_t hw[4] = {qh.x, qh.y, qh.z, qh.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t lo = (qw[k] & 0x0F0F0F0Fu) | (((hw[k] >> (2 * c)) & 0x01010101u) << 4);
            const uint32_t hi =
                ((qw[k] >> 4) & 0x0F0F0F0Fu) | (((hw[k] >> (2 * c + 1)) & 0x01010101u) << 4);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                w[4 * k + i] = __fsub_rn(__fmul_rn(d1, qg_byte_f(lo, i)), m1);
                w[16 + 4 * k + i] = __fsub_rn(__fmul_rn(d2, qg_byte_f(hi, i)), m2);
            }
        }
        st[0] = 256 * (u >> 3) + 64 * c + 16 * hf;
        st[1] = st[0] + 32;
    }
};

/* q6_K: w = (d * sc) * (q - 32) */
template <> struct qg_unit<QG_Q6_K> {
    static constexpr int NR = 4;
    __device__ __forceinline__ static void decode(const uint8_t *row, int u, float *w, int *st) {
        const uint8_t *b = row + (size_t)(u >> 3) * 210;
        const int p = u & 7, h = p >> 2, j = p & 3;
        const float d = qg_h2f(qg_ld_u16(b + 208));
        const int8_t *scp = (const int8_t *)(b + 192 + 8 * h + (j >> 1));
        float ds[4];
#pragma unroll
        for (int g = 0; g < 4; g++) ds[g] = __fmul_rn(d, (float)__ldg(scp + 2 * g));
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const uint32_t l0 = qg_ld_u32a2(b + 64 * h + 8 * j + 4 * k);
            const uint32_t l1 = qg_ld_u32a2(b + 64 * h + 32 + 8 * j + 4 * k);
            const uint32_t qh = qg_ld_u32a2(b + 128 + 32 * h + 8 * j + 4 * k);
            const uint32_t v[4] = {
                (l0 & 0x0F0F0F0Fu) | ((qh & 0x03030303u) << 4),
                (l1 & 0x0F0F0F0Fu) | (((qh >> 2) & 0x03030303u) << 4),
                ((l0 >> 4) & 0x0F0F0F0Fu) | (((qh >> 4) & 0x03030303u) << 4),
                ((l1 >> 4) & 0x0F0F0F0Fu) | (((qh >> 6) & 0x03030303u) << 4),
            };
#pragma unroll
            for (int g = 0; g < 4; g++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    w[8 * g + 4 * k + i] = __fmul_rn(ds[g], qg_byte_f(v[g], i) - 32.0f);
        }
#pragma unroll
        for (int g = 0; g < 4; g++) st[g] = 256 * (u >> 3) + 128 * h + 32 * g + 8 * j;
    }
};

/* Weight index of w[i] (i a compile-time constant) given the run starts. */
template <int DT> __device__ __forceinline__ int qg_unit_elem(const int *st, int i) {
    constexpr int RL = 32 / qg_unit<DT>::NR;
    return st[i / RL] + i % RL;
}

/* Partial dot of unit u of a row with x (f32, 16-byte aligned, indexed by
 * weight index; global or shared memory, so plain loads): sum_i w_i *
 * x[elem(i)], f32 FMAs. */
template <int DT>
__device__ __forceinline__ float qg_unit_dot(const uint8_t *row, int u, const float *x) {
    float w[32];
    int st[4];
    qg_unit<DT>::decode(row, u, w, st);
    constexpr int NR = qg_unit<DT>::NR, RL = 32 / NR;
    float a0 = 0.0f, a1 = 0.0f;
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const float4 *xp = (const float4 *)(x + st[r]);
#pragma unroll
        for (int q = 0; q < RL / 4; q++) {
            const float4 xv = xp[q];
            const float *ww = w + r * RL + 4 * q;
            a0 = fmaf(ww[0], xv.x, a0);
            a1 = fmaf(ww[1], xv.y, a1);
            a0 = fmaf(ww[2], xv.z, a0);
            a1 = fmaf(ww[3], xv.w, a1);
        }
    }
    return a0 + a1;
}

/* Call F.template operator()<DT>() for the runtime dtype t; false if t is
 * not a weight format the kernels know. */
#define QG_CUDA_DISPATCH_DT(t, ...)                                               \
    switch (t) {                                                                  \
    case QG_F32: { constexpr int DT = QG_F32; __VA_ARGS__; } break;               \
    case QG_F16: { constexpr int DT = QG_F16; __VA_ARGS__; } break;               \
    case QG_BF16: { constexpr int DT = QG_BF16; __VA_ARGS__; } break;             \
    case QG_Q8_0: { constexpr int DT = QG_Q8_0; __VA_ARGS__; } break;             \
    case QG_Q4_0: { constexpr int DT = QG_Q4_0; __VA_ARGS__; } break;             \
    case QG_Q4_K: { constexpr int DT = QG_Q4_K; __VA_ARGS__; } break;             \
    case QG_Q5_K: { constexpr int DT = QG_Q5_K; __VA_ARGS__; } break;             \
    case QG_Q6_K: { constexpr int DT = QG_Q6_K; __VA_ARGS__; } break;             \
    default: return cudaErrorInvalidValue;                                        \
    }

#endif
