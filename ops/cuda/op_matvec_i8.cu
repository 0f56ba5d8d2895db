/*
 * op_matvec_i8.cu - single-token products over Q4_K / Q6_K weights on the
 * tensor cores (the decode hot path); see qg_cuda_i8.cuh for the integer
 * plane format and the per-super-block tile products.
 *
 * Every kernel works on tiles of 16 weight rows: a block builds the plane
 * image of its input vector(s) in shared memory once (folding the rmsnorm
 * in when asked), then takes tiles in a grid-stride loop; within a tile
 * each warp takes a share of the super-blocks (or one matrix / one expert)
 * with all of a chunk's weight loads in flight before the first mma, and
 * the warps' partial rows are summed in a fixed order (results do not
 * depend on the grid):
 *   k_mv8   y_i = W_i x for up to three matrices (q, k, v), optional
 *           residual on matrix 0, optional last column of x
 *   k_gu8   h[k, f] = silu(gate_e x) * (up_e x), e = ids[k] on the device
 *   k_dn8   y = add + sum_k wts[k] * down_{ids[k]} h_k, one warp per expert
 */
#include "qg_cuda_i8.cuh"
#include "qg_cuda_i8_ops.cuh"
#include "qg_cuda_internal.cuh"

#include <type_traits>

/* Rows per tile (the mma's M). */
#define I8_TILE 16

/* ---- images --------------------------------------------------------------- */

/* Block: 1 / sqrt(mean(x^2) + eps) over x[0..n) (global memory). */
__device__ __forceinline__ float i8_norm_scale(const float *__restrict__ x, int n, float eps,
                                               float *red) {
    float ss = 0.0f;
    for (int i = 4 * threadIdx.x; i < n; i += 4 * blockDim.x) {
        const float4 v = *(const float4 *)(x + i);
        ss = fmaf(v.x, v.x, ss);
        ss = fmaf(v.y, v.y, ss);
        ss = fmaf(v.z, v.z, ss);
        ss = fmaf(v.w, v.w, ss);
    }
    ss = qg_block_sum(ss, red);
    return 1.0f / sqrtf(ss / (float)n + eps);
}

/* Block: images of nv vectors of n elements each (vector v at x + v * n,
 * global memory) into base (image v at base + v * qg_i8_image_bytes(n)),
 * each element times scale and norm_w[i] when norm_w is given.  Ends with
 * __syncthreads(). */
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

/* One warp: its share of a 16-row tile, rows rg / rg8 (row starts) of type
 * DT, super-blocks sb0, sb0 + step, ... below nsb; two super-blocks' loads
 * in flight at a time. */
template <int DT>
__device__ __forceinline__ void i8_rows(const uint8_t *rg, const uint8_t *rg8, int sb0, int step,
                                        int nsb, const qg_i8_vec &xv, float &ag, float &ag8) {
    constexpr int BS = DT == QG_Q4_K ? 144 : 210;
    using frag = typename std::conditional<DT == QG_Q4_K, qg_i8_q4k, qg_i8_q6k>::type;
    for (int sb = sb0; sb < nsb; sb += 2 * step) {
        frag f0, f1;
        const bool two = sb + step < nsb;
        const size_t o0 = (size_t)sb * BS, o1 = (size_t)(sb + step) * BS;
        if constexpr (DT == QG_Q4_K) {
            qg_i8_q4k_load(f0, rg + o0, rg8 + o0);
            if (two) qg_i8_q4k_load(f1, rg + o1, rg8 + o1);
            qg_i8_q4k_dot(f0, xv, sb, ag, ag8);
            if (two) qg_i8_q4k_dot(f1, xv, sb + step, ag, ag8);
        } else {
            qg_i8_q6k_load(f0, rg + o0, rg8 + o0);
            if (two) qg_i8_q6k_load(f1, rg + o1, rg8 + o1);
            qg_i8_q6k_dot(f0, xv, sb, ag, ag8);
            if (two) qg_i8_q6k_dot(f1, xv, sb + step, ag, ag8);
        }
    }
}

/* i8_rows for a runtime dtype (Q4_K or Q6_K). */
__device__ __forceinline__ void i8_rows_t(int type, const uint8_t *rg, const uint8_t *rg8, int sb0,
                                          int step, int nsb, const qg_i8_vec &xv, float &ag,
                                          float &ag8) {
    if (type == QG_Q4_K) i8_rows<QG_Q4_K>(rg, rg8, sb0, step, nsb, xv, ag, ag8);
    else i8_rows<QG_Q6_K>(rg, rg8, sb0, step, nsb, xv, ag, ag8);
}

/* Sum a warp's row partials over the four lanes of each row group and put
 * rows r0 + g, r0 + g + 8 into red[0..16). */
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

/* ---- dense: up to three matrices ---------------------------------------- */

template <int NW>
__global__ void __launch_bounds__(NW * 32) k_mv8(qg_i8_mv_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[NW][I8_TILE];
    __shared__ float bred[32];
    qg_pdl_wait();
    const float *x = a.x;
    if (a.last_col) x += (size_t)(a.step[QG_STEP_N_TOK] - 1) * a.n;
    const float sc = a.norm_w ? i8_norm_scale(x, a.n, a.eps, bred) : 1.0f;
    i8_build(x, a.n, 1, a.norm_w, sc, img);
    const qg_i8_vec xv = qg_i8_at(img, a.n);
    const int w = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, nsb = a.n / 256;
    for (int tile = blockIdx.x; tile < a.tiles[a.nm]; tile += gridDim.x) {
        int i = 0;
        while (tile >= a.tiles[i + 1]) i++;
        const int r0 = I8_TILE * (tile - a.tiles[i]), m = a.m[i];
        const uint8_t *rg = a.w[i] + (size_t)min(r0 + g, m - 1) * a.rb[i];
        const uint8_t *rg8 = a.w[i] + (size_t)min(r0 + g + 8, m - 1) * a.rb[i];
        float ag = 0.0f, ag8 = 0.0f;
        i8_rows_t(a.type[i], rg, rg8, w, NW, nsb, xv, ag, ag8);
        i8_warp_rows(ag, ag8, red[w]);
        __syncthreads();
        if (threadIdx.x < I8_TILE && r0 + (int)threadIdx.x < m) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < NW; k++) s += red[k][threadIdx.x];
            const int r = r0 + threadIdx.x;
            a.y[i][r] = (i == 0 && a.add) ? a.add[r] + s : s;
        }
        __syncthreads();
    }
}

/* ---- gate / up of the chosen experts -------------------------------------- */

template <int NWH>
__global__ void __launch_bounds__(2 * NWH * 32) k_gu8(qg_i8_gu_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[2 * NWH][I8_TILE];
    __shared__ float bred[32];
    qg_pdl_wait();
    const float sc = a.norm_w ? i8_norm_scale(a.x, a.n, a.eps, bred) : 1.0f;
    i8_build(a.x, a.n, 1, a.norm_w, sc, img);
    const qg_i8_vec xv = qg_i8_at(img, a.n);
    const int w = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, nsb = a.n / 256;
    const int up = w >= NWH, wi = up ? w - NWH : w;
    const int FT = (a.F + I8_TILE - 1) / I8_TILE;
    for (int tile = blockIdx.x; tile < a.K * FT; tile += gridDim.x) {
        const int k = tile / FT, r0 = I8_TILE * (tile - k * FT);
        const int e = a.ids ? a.ids[k] : 0;
        const bool ok = e >= 0 && e < a.X;
        if (ok) {
            const uint8_t *base = up ? a.wu + (size_t)e * a.esu : a.wg + (size_t)e * a.esg;
            const size_t rb = up ? a.rbu : a.rbg;
            const uint8_t *rg = base + (size_t)min(r0 + g, a.F - 1) * rb;
            const uint8_t *rg8 = base + (size_t)min(r0 + g + 8, a.F - 1) * rb;
            float ag = 0.0f, ag8 = 0.0f;
            i8_rows_t(up ? a.tu : a.tg, rg, rg8, wi, NWH, nsb, xv, ag, ag8);
            i8_warp_rows(ag, ag8, red[w]);
        }
        __syncthreads();
        if (threadIdx.x < I8_TILE && r0 + (int)threadIdx.x < a.F) {
            float gs = 0.0f, us = 0.0f;
#pragma unroll
            for (int j = 0; j < NWH; j++) {
                gs += red[j][threadIdx.x];
                us += red[NWH + j][threadIdx.x];
            }
            a.h[(size_t)k * a.F + r0 + threadIdx.x] = ok ? qg_silu(gs) * us : __int_as_float(0x7fc00000);
        }
        __syncthreads();
    }
}

/* ---- down projection + weighted sum --------------------------------------- */

__global__ void __launch_bounds__(QG_I8_DN_KMAX * 32) k_dn8(qg_i8_dn_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[QG_I8_DN_KMAX][I8_TILE];
    __shared__ int sid[QG_I8_DN_KMAX];
    __shared__ float sw[QG_I8_DN_KMAX];
    qg_pdl_wait();
    i8_build(a.h, a.F, a.K, nullptr, 1.0f, img);
    if (threadIdx.x < a.K) {
        const int e = a.ids[threadIdx.x];
        sid[threadIdx.x] = (e >= 0 && e < a.X) ? e : -1;
        sw[threadIdx.x] = a.wts[threadIdx.x];
    }
    __syncthreads();
    const int w = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, nsb = a.F / 256;
    const size_t ib = qg_i8_image_bytes(a.F);
    bool bad = false;
    for (int k = 0; k < a.K; k++) bad |= sid[k] < 0;
    for (int tile = blockIdx.x; tile < (a.E + I8_TILE - 1) / I8_TILE; tile += gridDim.x) {
        const int r0 = I8_TILE * tile;
        if (w < a.K && sid[w] >= 0) {
            const uint8_t *base = a.w + (size_t)sid[w] * a.es;
            const uint8_t *rg = base + (size_t)min(r0 + g, a.E - 1) * a.rb;
            const uint8_t *rg8 = base + (size_t)min(r0 + g + 8, a.E - 1) * a.rb;
            const qg_i8_vec hv = qg_i8_at(img + (size_t)w * ib, a.F);
            float ag = 0.0f, ag8 = 0.0f;
            i8_rows_t(a.type, rg, rg8, 0, 1, nsb, hv, ag, ag8);
            i8_warp_rows(ag, ag8, red[w]);
        }
        __syncthreads();
        if (threadIdx.x < I8_TILE && r0 + (int)threadIdx.x < a.E) {
            float s = 0.0f;
            for (int k = 0; k < a.K; k++) s = fmaf(sw[k], red[k][threadIdx.x], s);
            if (bad) s = __int_as_float(0x7fc00000);
            const int r = r0 + threadIdx.x;
            a.y[r] = a.add ? a.add[r] + s : s;
        }
        __syncthreads();
    }
}

/* ---- launchers ------------------------------------------------------------ */

/* Grid: the tile count, capped at `per_sm` blocks per multiprocessor. */
static int i8_grid(int tiles, int n_sm, int per_sm) {
    const int cap = (n_sm > 0 ? n_sm : 132) * per_sm;
    return tiles < cap ? (tiles > 0 ? tiles : 1) : cap;
}

bool qg_i8_mv_ok(const qg_cu_mat *m, int nm, int n) {
    if (n % 256 || n > QG_I8_N_MAX) return false;
    for (int i = 0; i < nm; i++)
        if (!qg_i8_supports(m[i].type)) return false;
    return true;
}

cudaError_t qg_i8_mv(const qg_cuda_launch *l, const qg_cu_mat *m, int nm, int n, const float *x,
                     bool last_col, const float *add) {
    qg_i8_mv_args a = {};
    a.tiles[0] = 0;
    for (int i = 0; i < nm; i++) {
        a.w[i] = m[i].w;
        a.rb[i] = m[i].rb;
        a.m[i] = m[i].m;
        a.type[i] = m[i].type;
        a.y[i] = m[i].y;
        a.tiles[i + 1] = a.tiles[i] + (m[i].m + I8_TILE - 1) / I8_TILE;
    }
    a.nm = nm;
    a.n = n;
    a.x = x;
    a.step = l->step;
    a.last_col = last_col;
    a.norm_w = l->pre_norm;
    a.eps = l->pre_eps;
    a.add = add;
    const int nsb = n / 256, T = a.tiles[nm];
    const size_t smem = qg_i8_image_bytes(n);
    if (nsb <= 2) return qg_cu_launch(l, k_mv8<1>, dim3(i8_grid(T, l->o.n_sm, 16)), dim3(32), smem, a);
    if (nsb <= 4) return qg_cu_launch(l, k_mv8<2>, dim3(i8_grid(T, l->o.n_sm, 8)), dim3(64), smem, a);
    if (nsb <= 8) return qg_cu_launch(l, k_mv8<4>, dim3(i8_grid(T, l->o.n_sm, 8)), dim3(128), smem, a);
    return qg_cu_launch(l, k_mv8<8>, dim3(i8_grid(T, l->o.n_sm, 4)), dim3(256), smem, a);
}

bool qg_i8_gu_ok(const qg_cu_mat *gate, const qg_cu_mat *up, int n) {
    return n % 256 == 0 && n <= QG_I8_N_MAX && qg_i8_supports(gate->type) &&
           qg_i8_supports(up->type) && gate->m == up->m;
}

cudaError_t qg_i8_gu(const qg_cuda_launch *l, const qg_cu_mat *gate, const qg_cu_mat *up, int n,
                     int K, int X, const float *x, const int32_t *ids, float *h) {
    qg_i8_gu_args a = {};
    a.wg = gate->w;
    a.wu = up->w;
    a.rbg = gate->rb;
    a.rbu = up->rb;
    a.esg = gate->es;
    a.esu = up->es;
    a.tg = gate->type;
    a.tu = up->type;
    a.n = n;
    a.F = gate->m;
    a.K = K;
    a.X = X;
    a.x = x;
    a.ids = ids;
    a.norm_w = l->pre_norm;
    a.eps = l->pre_eps;
    a.h = h;
    const int nsb = n / 256, T = K * ((a.F + I8_TILE - 1) / I8_TILE);
    const size_t smem = qg_i8_image_bytes(n);
    if (nsb <= 2) return qg_cu_launch(l, k_gu8<1>, dim3(i8_grid(T, l->o.n_sm, 16)), dim3(64), smem, a);
    if (nsb <= 4) return qg_cu_launch(l, k_gu8<2>, dim3(i8_grid(T, l->o.n_sm, 8)), dim3(128), smem, a);
    return qg_cu_launch(l, k_gu8<4>, dim3(i8_grid(T, l->o.n_sm, 4)), dim3(256), smem, a);
}

bool qg_i8_dn_ok(const qg_cu_mat *down, int F, int K) {
    return F % 256 == 0 && K <= QG_I8_DN_KMAX && qg_i8_supports(down->type) &&
           (size_t)K * qg_i8_image_bytes(F) <= 48 * 1024;
}

cudaError_t qg_i8_dn(const qg_cuda_launch *l, const qg_cu_mat *down, int F, int K, int X,
                     const float *h, const int32_t *ids, const float *wts, const float *add,
                     float *y) {
    qg_i8_dn_args a = {};
    a.w = down->w;
    a.rb = down->rb;
    a.es = down->es;
    a.type = down->type;
    a.F = F;
    a.E = down->m;
    a.K = K;
    a.X = X;
    a.h = h;
    a.ids = ids;
    a.wts = wts;
    a.add = add;
    a.y = y;
    const int T = (a.E + I8_TILE - 1) / I8_TILE;
    return qg_cu_launch(l, k_dn8, dim3(i8_grid(T, l->o.n_sm, 4)), dim3(QG_I8_DN_KMAX * 32),
                        (size_t)K * qg_i8_image_bytes(F), a);
}
