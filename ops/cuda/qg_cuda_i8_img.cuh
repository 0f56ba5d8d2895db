/*
 * qg_cuda_i8_img.cuh - the parts of the integer decode products that the
 * register-fed kernels (op_matvec_i8.cu) and the staged ones
 * (op_matvec_s8.cu) share: building a block's input image in shared
 * memory (with the folded rmsnorm), one super-block of a 16-row tile
 * loaded and multiplied, and a warp's row partials (ops/cuda/ only).
 */
#ifndef QG_CUDA_I8_IMG_CUH
#define QG_CUDA_I8_IMG_CUH

#include "qg_cuda_i8.cuh"

/* Rows per tile (the mma's M). */
#define I8_TILE 16

/* ---- images --------------------------------------------------------------- */

/* Block: 1 / sqrt(mean(x^2) + eps) over x[0..n) (global memory), the sum
 * of squares in qg_sumsq_fixed's order (the rmsnorm kernel's bits). */
__device__ __forceinline__ float i8_norm_scale(const float *__restrict__ x, int n, float eps,
                                               float *cs) {
    return 1.0f / sqrtf(qg_sumsq_fixed(x, n, cs) / (float)n + eps);
}

/* Block: images of nv vectors of n elements each (vector v at x + v * n,
 * global memory) into base (image v at base + v * qg_i8_image_bytes(n)),
 * each element as (x * scale) * norm_w[i] when norm_w is given (the
 * rmsnorm kernel's products).  Ends with __syncthreads(). */
__device__ __forceinline__ void i8_build(const float *__restrict__ x, int n, int nv,
                                         const float *__restrict__ norm_w, float scale,
                                         uint8_t *base) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int nsb = n / 256;
    for (int q = w; q < nv * nsb; q += nw) {
        const int v = q / nsb, sb = q - v * nsb;
        const float *p = x + (size_t)v * n + 256 * sb + 8 * lane;
        const float4 u0 = *(const float4 *)p, u1 = *(const float4 *)(p + 4);
        float e[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
        if (norm_w) {
            const float4 n0 = *(const float4 *)(norm_w + 256 * sb + 8 * lane);
            const float4 n1 = *(const float4 *)(norm_w + 256 * sb + 8 * lane + 4);
            const float nn[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
#pragma unroll
            for (int i = 0; i < 8; i++) e[i] = __fmul_rn(__fmul_rn(e[i], scale), nn[i]);
        }
        qg_i8_store_sb(e, sb, base + (size_t)v * qg_i8_image_bytes(n), n);
    }
    __syncthreads();
}

/* Most elements whose norm weights a block stages in shared memory (the
 * single-read build below; longer inputs take i8_norm_scale + i8_build). */
#define I8_NWS_MAX 4096
/* Super-blocks a warp holds in registers in the single-read build. */
#define I8_BUILD_REG 2

/* Does the single-read normalized build take an n-element input with nw
 * warps? */
__device__ __forceinline__ bool i8_build1_ok(int n, int nw) {
    return n <= I8_NWS_MAX && n / 256 <= I8_BUILD_REG * nw && n / 256 <= QG_SUMSQ_CHUNKS;
}

/* Block: start copying the norm weights (n floats, constant) into nws
 * (shared memory) without holding registers: issued before the
 * programmatic-launch wait, waited for in i8_build1. */
__device__ __forceinline__ void i8_stage_norm(const float *__restrict__ norm_w, int n, float *nws) {
    for (int i = threadIdx.x; i < n / 4; i += blockDim.x) qg_cp_async16(nws + 4 * i, norm_w + 4 * i);
    qg_cp_commit();
}

/* Block: the image of x (n elements, global memory) normalized, each
 * element (x * scale) * nws[i] with scale = 1 / sqrt(mean(x^2) + eps), x
 * read once: the warp that images super-block sb holds it in registers and
 * sums its squares as chunk sb of qg_sumsq_fixed (same order, same bits as
 * i8_norm_scale + i8_build).  nws: the norm weights, staged by
 * i8_stage_norm.  cs: QG_SUMSQ_CHUNKS floats.  i8_build1_ok(n, warps)
 * must hold.  Ends with __syncthreads(). */
__device__ __forceinline__ void i8_build1(const float *__restrict__ x, int n, const float *nws,
                                          float eps, float *cs, uint8_t *base) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int nsb = n / 256;
    float v[I8_BUILD_REG][8];
#pragma unroll
    for (int k = 0; k < I8_BUILD_REG; k++) {
        const int sb = w + k * nw;
        if (sb >= nsb) continue;
        const float *p = x + 256 * sb + 8 * lane;
        const float4 u0 = *(const float4 *)p, u1 = *(const float4 *)(p + 4);
        v[k][0] = u0.x, v[k][1] = u0.y, v[k][2] = u0.z, v[k][3] = u0.w;
        v[k][4] = u1.x, v[k][5] = u1.y, v[k][6] = u1.z, v[k][7] = u1.w;
        float ss = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) ss = fmaf(v[k][i], v[k][i], ss);
        ss = qg_warp_sum(ss);
        if (lane == 0) cs[sb] = ss;
    }
    qg_cp_wait_all(); /* this thread's norm-weight copies */
    __syncthreads();
    float t = 0.0f;
    for (int c = 0; c < nsb; c++) t += cs[c];
    const float scale = 1.0f / sqrtf(t / (float)n + eps);
#pragma unroll
    for (int k = 0; k < I8_BUILD_REG; k++) {
        const int sb = w + k * nw;
        if (sb >= nsb) continue;
        const float *nn = nws + 256 * sb + 8 * lane;
        float e[8];
#pragma unroll
        for (int i = 0; i < 8; i++) e[i] = __fmul_rn(__fmul_rn(v[k][i], scale), nn[i]);
        qg_i8_store_sb(e, sb, base, n);
    }
    __syncthreads();
}

/* Dynamic shared memory of a block's input image: the image, and the norm
 * weights when a folded norm can take the single-read build (host and
 * device agree on the layout: weights right after the image). */
__host__ __device__ __forceinline__ size_t i8_img_smem(int n, bool norm) {
    return qg_i8_image_bytes(n) + (norm && n <= I8_NWS_MAX ? sizeof(float) * (size_t)n : 0);
}

/* Block (nw warps): before the programmatic-launch wait, start staging
 * norm_w (or NULL) for the single-read build when it takes this input;
 * returns whether it does (pass it to i8_build_x). */
__device__ __forceinline__ bool i8_norm_begin(const float *norm_w, int n, int nw, uint8_t *img) {
    const bool one = norm_w && i8_build1_ok(n, nw);
    if (one) i8_stage_norm(norm_w, n, (float *)(img + qg_i8_image_bytes(n)));
    return one;
}

/* Block: the image of one input x (n elements), normalized by norm_w when
 * given, by the single-read build when i8_norm_begin said so.  Ends with
 * __syncthreads(). */
__device__ __forceinline__ void i8_build_x(const float *__restrict__ x, int n,
                                           const float *norm_w, float eps, bool one, float *cs,
                                           uint8_t *img) {
    if (one) {
        i8_build1(x, n, (const float *)(img + qg_i8_image_bytes(n)), eps, cs, img);
        return;
    }
    const float sc = norm_w ? i8_norm_scale(x, n, eps, cs) : 1.0f;
    i8_build(x, n, 1, norm_w, sc, img);
}

/* ---- one warp's share of a tile --------------------------------------------- */

/* The loaded weights of one super-block of a 16-row tile, either format. */
union i8_frag {
    qg_i8_q4k k4;
    qg_i8_q6k k6;
};

/* Bytes of one super-block of each format. */
__device__ __forceinline__ size_t i8_bs(int type) { return type == QG_Q4_K ? 144 : 210; }

/* Load super-block sb of rows rg / rg8 (row starts) of a Q4_K / Q6_K
 * matrix into f (all loads issued, none waited for); SH: rows in shared
 * memory. */
template <bool SH = false>
__device__ __forceinline__ void i8_load(i8_frag &f, int type, const uint8_t *rg, const uint8_t *rg8,
                                        int sb) {
    const size_t o = (size_t)sb * i8_bs(type);
    if (type == QG_Q4_K) qg_i8_q4k_load<SH>(f.k4, rg + o, rg8 + o);
    else qg_i8_q6k_load<SH>(f.k6, rg + o, rg8 + o);
}

/* ag, ag8 += this lane's share of rows g, g+8 over super-block sb. */
__device__ __forceinline__ void i8_dot(const i8_frag &f, int type, const qg_i8_vec &xv, int sb,
                                       float &ag, float &ag8) {
    if (type == QG_Q4_K) qg_i8_q4k_dot(f.k4, xv, sb, ag, ag8);
    else qg_i8_q6k_dot(f.k6, xv, sb, ag, ag8);
}

/* Sum a warp's row partials over the four lanes of each row group and put
 * rows g, g + 8 into red[0..16). */
__device__ __forceinline__ void i8_warp_rows(float ag, float ag8, float *red) {
    ag += __shfl_xor_sync(0xffffffffu, ag, 1);
    ag += __shfl_xor_sync(0xffffffffu, ag, 2);
    ag8 += __shfl_xor_sync(0xffffffffu, ag8, 1);
    ag8 += __shfl_xor_sync(0xffffffffu, ag8, 2);
    const int lane = threadIdx.x & 31;
    if ((lane & 3) == 0) {
        red[lane >> 2] = ag;
        red[(lane >> 2) + 8] = ag8;
    }
}

#endif
