/*
 * qg_cuda_router.cuh - the decode router's arithmetic over F32 router
 * weights, shared by the router kernel (op_matvec.cu, k_router_f32) and
 * the output projection that folds the router in (op_matvec_i8.cu, k_mv8
 * with a router), so that both give the same bits (ops/cuda/ only).
 *
 * For h (n elements, the raw residual the MoE node normalizes), norm
 * weights nw and router rows W (X rows of n), in tiles t of QG_RT_TILE
 * elements (tile t: elements 16t .. 16t+15):
 *   u_i     = nw_i * h_i                                   (f32)
 *   P[t][e] = fmaf chain over tile t, ascending, of W[e][i] * u_i
 *   Q[t]    = fmaf chain over tile t, ascending, of h_i * h_i
 *   S_e     = P[0][e] + P[1][e] + ...   (ascending t, from 0)
 *   SS      = Q[0] + Q[1] + ...
 *   logit_e = S_e * (1 / sqrtf(SS / n + eps))
 * which is W (rmsnorm(h) * nw) with the norm's scale applied once per
 * logit instead of once per element (f32 rounding differs from the CPU
 * executor's order as any GPU summation order does), then softmax, top-k
 * and renormalize in one warp (qg_cu_warp_topk).  The tile partials are
 * what a 16-row tile of the output projection can compute from its own
 * rows, so the projection can route without a kernel of its own.
 */
#ifndef QG_CUDA_ROUTER_CUH
#define QG_CUDA_ROUTER_CUH

#include "qg_cuda_common.cuh"

/* Elements per partial (the decode products' 16-row tile). */
#define QG_RT_TILE 16
/* Longest h of the tiled router arithmetic: one thread per tile in the
 * router kernel's 256-thread block. */
#define QG_RT_N_MAX (256 * QG_RT_TILE)

/* Can routers of X experts over n-element inputs use it? */
__host__ __device__ constexpr bool qg_rt_ok(int n, int X) {
    return n % 256 == 0 && n <= QG_RT_N_MAX && X % 4 == 0 && X <= 256;
}

/* P of one tile: w (rows floats of one router row, the tile's), u (rows). */
__device__ __forceinline__ float qg_rt_partial(const float *w, const float *u, int rows) {
    float p = 0.0f;
    for (int i = 0; i < rows; i++) p = fmaf(w[i], u[i], p);
    return p;
}

/* Q of one tile: h (rows). */
__device__ __forceinline__ float qg_rt_sumsq(const float *h, int rows) {
    float q = 0.0f;
    for (int i = 0; i < rows; i++) q = fmaf(h[i], h[i], q);
    return q;
}

/* logit from the sums (see the header). */
__device__ __forceinline__ float qg_rt_logit(float S, float SS, int n, float eps) {
    return S * (1.0f / sqrtf(SS / (float)n + eps));
}

#endif
