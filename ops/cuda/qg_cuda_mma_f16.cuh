/*
 * qg_cuda_mma_f16.cuh - the f16 tensor-core pieces the attention kernels
 * share (op_attention_prefill.cu, op_attention_decode_tc.cu): ldmatrix,
 * mma.sync m16n8k16 with f32 accumulation, 16-byte cp.async with zero
 * fill, and the hi + lo split that carries an f32 operand in two f16s.
 *
 * Fragments (PTX ISA, mma.m16n8k16 .f16 A/B, .f32 C/D; g = lane / 4,
 * c = lane % 4):
 *   A (16x16, row major): a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g,
 *     2c+8..), a3 = (g+8, 2c+8..), two f16 per register, lower column in
 *     the low half;
 *   B (16x8, k x n): b0 = (k 2c..2c+1, n g), b1 = (k 2c+8.., n g);
 *   C (16x8): c0, c1 = (g, 2c..2c+1), c2, c3 = (g+8, 2c..2c+1).
 * Over a cache tile stored row-major [key][dim] with rows LD halves apart,
 * ldmatrix.x4 with lane address row qg_ldsm_k_row(lane), column
 * qg_ldsm_k_col(lane) (plus the tile's 16-key and 16-dim offsets) gives
 * the B fragments of K^T for keys +0..7 (b0, b1) and +8..15 (b2, b3), and
 * ldmatrix.x4.trans at qg_ldsm_v_row / qg_ldsm_v_col gives the B fragments
 * of V (k = keys) for dims +0..7 (b0, b1) and +8..15 (b2, b3).
 */
#ifndef QG_CUDA_MMA_F16_CUH
#define QG_CUDA_MMA_F16_CUH

#include "qg_cuda_common.cuh"

#include <cuda_fp16.h>
#include <stdint.h>

/* Four 8x8 b16 matrices; lane i gives the address of row i % 8 of matrix
 * i / 8 and receives (row i / 4, columns 2 (i % 4), +1) of each. */
__device__ __forceinline__ void qg_ldsm_x4(uint32_t (&r)[4], const half *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(qg_smem_addr(p)));
}
/* Same, transposed: lane i receives (rows 2 (i % 4), +1; column i / 4). */
__device__ __forceinline__ void qg_ldsm_x4_t(uint32_t (&r)[4], const half *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(qg_smem_addr(p)));
}

/* Lane addresses of the K^T and V fragment loads (see the header):
 * K, x4 = (keys +0..7 | +0..7 | +8..15 | +8..15) x (dims +0 | +8 | +0 | +8);
 * V^T, x4 = (keys +0..7 | +8..15 | +0..7 | +8..15) x (dims +0 | +0 | +8 | +8). */
__device__ __forceinline__ int qg_ldsm_k_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
__device__ __forceinline__ int qg_ldsm_k_col(int lane) { return ((lane >> 3) & 1) << 3; }
__device__ __forceinline__ int qg_ldsm_v_row(int lane) { return (lane & 7) + (((lane >> 3) & 1) << 3); }
__device__ __forceinline__ int qg_ldsm_v_col(int lane) { return (lane >> 4) << 3; }

/* d += a b (16x16 f16 by 16x8 f16, f32 accumulate). */
__device__ __forceinline__ void qg_mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                           uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros and
 * reads nothing. */
__device__ __forceinline__ void qg_cp16_zfill(half *dst, const half *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(qg_smem_addr(dst)),
                 "l"(src), "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ uint32_t qg_h2_bits(half2 h) { return *(uint32_t *)&h; }

/* (x, y) -> hi = f16(x, y), lo = f16((x, y) - hi); x - f16(x) is exact in
 * f32 for |x| < 65504. */
__device__ __forceinline__ void qg_split_f16x2(float x, float y, uint32_t &hi, uint32_t &lo) {
    const half2 h = __floats2half2_rn(x, y);
    const float2 hf = __half22float2(h);
    hi = qg_h2_bits(h);
    lo = qg_h2_bits(__floats2half2_rn(x - hf.x, y - hf.y));
}

#endif
