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
 *   k_dn8   y = add + sum_k wts[k] * down_{ids[k]} h_k, the (expert,
 *           super-block) pairs spread over 12 warps
 * Weight loads go out before anything else a block waits for: before the
 * programmatic-launch wait for dense products (weights are constant),
 * right after reading the expert ids for the MoE ones, and the next
 * tile's loads under the current tile's epilogue.  A normalized input is
 * read once (i8_build1: the norm weights copied in by cp.async before the
 * wait).  Grids hold no more blocks than the device runs at once (i8_grid,
 * o.i8_fit), so no block waits for another to leave and each builds its
 * image once.  k_gu8 asks L2 for the chosen experts' down rows, which
 * k_dn8 reads next (o.prefetch; asking for the next node's dense weights
 * or a block's later tiles measured slower and was removed).
 */
#include "qg_cuda_i8.cuh"
#include "qg_cuda_i8_ops.cuh"
#include "qg_cuda_internal.cuh"


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
__host__ __device__ __forceinline__ bool i8_build1_ok(int n, int nw) {
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
                                          float eps, float *cs, uint8_t *base,
                                          float *xs = nullptr) {
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
        if (xs) {
            *(float4 *)(xs + 256 * sb + 8 * lane) = make_float4(e[0], e[1], e[2], e[3]);
            *(float4 *)(xs + 256 * sb + 8 * lane + 4) = make_float4(e[4], e[5], e[6], e[7]);
        }
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
                                           uint8_t *img, float *xs = nullptr) {
    if (one) {
        i8_build1(x, n, (const float *)(img + qg_i8_image_bytes(n)), eps, cs, img, xs);
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
 * matrix into f (all loads issued, none waited for). */
__device__ __forceinline__ void i8_load(i8_frag &f, int type, const uint8_t *rg, const uint8_t *rg8,
                                        int sb) {
    const size_t o = (size_t)sb * i8_bs(type);
    if (type == QG_Q4_K) qg_i8_q4k_load(f.k4, rg + o, rg8 + o);
    else qg_i8_q6k_load(f.k6, rg + o, rg8 + o);
}

/* ag, ag8 += this lane's share of rows g, g+8 over super-block sb. */
__device__ __forceinline__ void i8_dot(const i8_frag &f, int type, const qg_i8_vec &xv, int sb,
                                       float &ag, float &ag8) {
    if (type == QG_Q4_K) qg_i8_q4k_dot(f.k4, xv, sb, ag, ag8);
    else qg_i8_q6k_dot(f.k6, xv, sb, ag, ag8);
}

/* A warp's work on one tile: super-blocks sb0, sb0 + step, ... of one
 * matrix (rows rg / rg8), the first NF loaded ahead (f), any further ones
 * (long rows only) loaded as they come. */
struct i8_job {
    int type;
    const uint8_t *rg, *rg8;
    bool live; /* false: nothing to do (idle warp, invalid expert) */
};

template <int NF>
__device__ __forceinline__ void i8_job_load(const i8_job &j, i8_frag (&f)[NF], int sb0, int step,
                                            int nsb) {
    if (!j.live) return;
#pragma unroll
    for (int c = 0; c < NF; c++)
        if (sb0 + c * step < nsb) i8_load(f[c], j.type, j.rg, j.rg8, sb0 + c * step);
}

template <int NF>
__device__ __forceinline__ void i8_job_dot(const i8_job &j, const i8_frag (&f)[NF], int sb0,
                                           int step, int nsb, const qg_i8_vec &xv, float &ag,
                                           float &ag8) {
    if (!j.live) return;
#pragma unroll
    for (int c = 0; c < NF; c++)
        if (sb0 + c * step < nsb) i8_dot(f[c], j.type, xv, sb0 + c * step, ag, ag8);
    for (int sb = sb0 + NF * step; sb < nsb; sb += step) {
        i8_frag h;
        i8_load(h, j.type, j.rg, j.rg8, sb);
        i8_dot(h, j.type, xv, sb, ag, ag8);
    }
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

/* Rows g, g+8 of the tile at r0 of an m-row matrix (clamped to the last
 * row; clamped rows are computed and not written). */
__device__ __forceinline__ i8_job i8_rows_of(int type, const uint8_t *w, size_t rb, int m, int r0) {
    const int g = (threadIdx.x & 31) >> 2;
    i8_job j;
    j.type = type;
    j.rg = w + (size_t)min(r0 + g, m - 1) * rb;
    j.rg8 = w + (size_t)min(r0 + g + 8, m - 1) * rb;
    j.live = true;
    return j;
}

/* ---- dense: up to three matrices ---------------------------------------- */

/* Matrix and first row of dense tile `tile`. */
__device__ __forceinline__ void mv8_locate(const qg_i8_mv_args &a, int tile, int *i, int *r0) {
    int k = 0;
    while (tile >= a.tiles[k + 1]) k++;
    *i = k;
    *r0 = I8_TILE * (tile - a.tiles[k]);
}

template <int NW, int NF, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) k_mv8(qg_i8_mv_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[NW][I8_TILE];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, T = a.tiles[a.nm];
    const int G = gridDim.x;
    int tile = blockIdx.x, mi = 0, r0 = 0;
    i8_frag f[NF];
    i8_job job = {};
    /* the weights are constant: the first tile's loads go out before the
     * previous kernel has finished (programmatic launch) */
    if (tile < T) {
        mv8_locate(a, tile, &mi, &r0);
        job = i8_rows_of(a.type[mi], a.w[mi], a.rb[mi], a.m[mi], r0);
        i8_job_load(job, f, w, NW, nsb);
    }
    const bool one = i8_norm_begin(a.norm_w, a.n, NW, img);
    qg_pdl_wait();
    const float *x = a.x;
    if (a.last_col) x += (size_t)(a.step[QG_STEP_N_TOK] - 1) * a.n;
    i8_build_x(x, a.n, a.norm_w, a.eps, one, cs, img);
    const qg_i8_vec xv = qg_i8_at(img, a.n);
    for (; tile < T; tile += gridDim.x) {
        float ag = 0.0f, ag8 = 0.0f;
        i8_job_dot(job, f, w, NW, nsb, xv, ag, ag8);
        const int ci = mi, cr0 = r0;
        if (tile + G < T) { /* next tile's loads under this epilogue */
            mv8_locate(a, tile + G, &mi, &r0);
            job = i8_rows_of(a.type[mi], a.w[mi], a.rb[mi], a.m[mi], r0);
            i8_job_load(job, f, w, NW, nsb);
        }
        i8_warp_rows(ag, ag8, red[w]);
        __syncthreads();
        if (threadIdx.x < I8_TILE && cr0 + (int)threadIdx.x < a.m[ci]) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < NW; k++) s += red[k][threadIdx.x];
            const int r = cr0 + threadIdx.x;
            a.y[ci][r] = (ci == 0 && a.add) ? a.add[r] + s : s;
        }
        __syncthreads();
    }
}

/* ---- gate / up of the chosen experts -------------------------------------- */

/* Warps [0, NWH) take the gate matrix, [NWH, 2 NWH) the up matrix. */
__device__ __forceinline__ i8_job gu8_job(const qg_i8_gu_args &a, const int32_t *ids, int tile,
                                          int NWH) {
    const int FT = (a.F + I8_TILE - 1) / I8_TILE, k = tile / FT, r0 = I8_TILE * (tile - k * FT);
    const int e = ids ? ids[k] : 0;
    const bool up = (int)(threadIdx.x >> 5) >= NWH;
    i8_job j = {};
    if (e < 0 || e >= a.X) return j; /* live = false */
    return up ? i8_rows_of(a.tu, a.wu + (size_t)e * a.esu, a.rbu, a.F, r0)
              : i8_rows_of(a.tg, a.wg + (size_t)e * a.esg, a.rbg, a.F, r0);
}

/* Most experts (router rows) and picks of a folded router. */
#define GU_RT_XMAX 256
#define GU_RT_KMAX 32
/* Threads of a router row's dot product: the router kernel's block
 * (op_matvec.cu, MV_THREADS), whose summation order the folded router
 * repeats: thread t takes float4 t, t + 256, ... of the row in order, then
 * qg_block_sum over 8 warps. */
#define GU_RT_THREADS 256
#define GU_RT_V4 4

/* A grid barrier's generation word (bar[1]), read before the block
 * arrives (it cannot change until every block has arrived, this one
 * included), so that the wait needs no read of its own first. */
__device__ __forceinline__ int gu_bar_gen(const int *bar) {
    int g;
    asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];" : "=r"(g) : "l"(bar + 1) : "memory");
    return g;
}

/* All blocks of the grid meet here (the grid must be co-resident: one
 * wave); what a block wrote before it is visible to every block after it.
 * gen: gu_bar_gen() of this barrier, read by thread 0 earlier.  bar[0]
 * counts arrivals (an acquire-release add, cumulative over the block's
 * writes ordered by the block barrier); the last arriver restores it to 0
 * and bumps the generation bar[1] with a release add, which the others
 * spin on with acquire loads. */
__device__ __forceinline__ void gu_grid_barrier(int *bar, int gen) {
    __syncthreads();
    if (threadIdx.x == 0) {
        int old;
        asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(old) : "l"(bar) : "memory");
        if (old == (int)gridDim.x - 1) {
            asm volatile("st.relaxed.gpu.global.s32 [%0], 0;" ::"l"(bar) : "memory");
            asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(bar + 1) : "memory");
        } else {
            int g;
            do {
                asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(g) : "l"(bar + 1) : "memory");
            } while (g == gen);
        }
    }
    __syncthreads();
}

/* RT: the router folded in (qg_i8_router): block b computes router row b
 * (b < X) over x normalized in f32, all blocks meet at a grid barrier,
 * and each block picks the experts itself. */
template <int NWH, int NF, int MINB, bool RT>
__global__ void __launch_bounds__(2 * NWH * 32, MINB) k_gu8(qg_i8_gu_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[2 * NWH][I8_TILE];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    /* folded router: the picks, and the softmax's probabilities */
    __shared__ int32_t s_ids[RT ? GU_RT_KMAX : 1];
    __shared__ float s_wts[RT ? GU_RT_KMAX : 1], s_p[RT ? GU_RT_XMAX : 1];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, wi = w >= NWH ? w - NWH : w;
    const int FT = (a.F + I8_TILE - 1) / I8_TILE, T = a.K * FT;
    /* a folded router's row (block b takes row b) goes into registers
     * before the launch wait (weights are constant) */
    float4 wr[GU_RT_V4];
    const bool rrow = RT && (int)blockIdx.x < a.X && threadIdx.x < GU_RT_THREADS;
    const int nv = a.n / (4 * GU_RT_THREADS);
    if (rrow) {
        const float4 *w4 = (const float4 *)((const uint8_t *)a.rt.w + (size_t)blockIdx.x * a.rt.rb);
#pragma unroll
        for (int k = 0; k < GU_RT_V4; k++)
            if (k < nv) wr[k] = __ldg(w4 + threadIdx.x + GU_RT_THREADS * k);
    }
    const bool one = i8_norm_begin(a.norm_w, a.n, 2 * NWH, img);
    qg_pdl_wait();
    int tile = blockIdx.x;
    i8_frag f[NF];
    i8_job job = {};
    const int32_t *ids = a.ids;
    if (RT) {
        const int gen = threadIdx.x == 0 ? gu_bar_gen(a.rt.bar) : 0;
        /* x's image, and x normalized in f32 for the router (the norm
         * folded in; an unnormalized input is read as it is) */
        float *xs = a.norm_w ? (float *)(img + i8_img_smem(a.n, true)) : nullptr;
        i8_build_x(a.x, a.n, a.norm_w, a.eps, one, cs, img, xs);
        const float *xr = xs ? xs : a.x;
        float acc = 0.0f;
        if (rrow) {
            const float4 *x4 = (const float4 *)xr;
#pragma unroll
            for (int k = 0; k < GU_RT_V4; k++) {
                if (k >= nv) break;
                const float4 wv = wr[k], v = x4[threadIdx.x + GU_RT_THREADS * k];
                acc = fmaf(wv.x, v.x, acc);
                acc = fmaf(wv.y, v.y, acc);
                acc = fmaf(wv.z, v.z, acc);
                acc = fmaf(wv.w, v.w, acc);
            }
        }
        /* qg_block_sum over the first 8 warps, as the router kernel sums */
        acc = qg_warp_sum(acc);
        if ((threadIdx.x & 31) == 0 && w < GU_RT_THREADS / 32) cs[w] = acc;
        __syncthreads();
        if (w == 0 && (int)blockIdx.x < a.X) {
            float t = (threadIdx.x & 31) < GU_RT_THREADS / 32 ? cs[threadIdx.x & 31] : 0.0f;
            t = qg_warp_sum(t);
            if (threadIdx.x == 0) a.rt.logits[blockIdx.x] = t;
        }
        gu_grid_barrier(a.rt.bar, gen);
        if (w == 0) {
            qg_cu_warp_topk(a.rt.logits, a.X, a.K, s_ids, s_wts, s_p);
            __syncwarp();
            if (blockIdx.x == 0 && (int)threadIdx.x < a.K) {
                a.rt.ids[threadIdx.x] = s_ids[threadIdx.x];
                a.rt.wts[threadIdx.x] = s_wts[threadIdx.x];
            }
        }
        __syncthreads();
        ids = s_ids;
    }
    /* the expert ids are known: the first tile's loads go out (before x's
     * image is built when the router is not folded), then the L2 requests
     * for the chosen experts' down rows (the next kernel's) */
    if (tile < T) {
        job = gu8_job(a, ids, tile, NWH);
        i8_job_load(job, f, wi, NWH, nsb);
    }
    if (a.pf_down)
        for (int k = 0; k < a.K; k++) {
            const int e = ids[k];
            if (e >= 0 && e < a.X) qg_prefetch_grid(a.pf_down + (size_t)e * a.pf_es, a.pf_es);
        }
    if (!RT) i8_build_x(a.x, a.n, a.norm_w, a.eps, one, cs, img);
    const qg_i8_vec xv = qg_i8_at(img, a.n);
    for (; tile < T; tile += gridDim.x) {
        float ag = 0.0f, ag8 = 0.0f;
        i8_job_dot(job, f, wi, NWH, nsb, xv, ag, ag8);
        const int k = tile / FT, r0 = I8_TILE * (tile - k * FT);
        const int e = ids ? ids[k] : 0;
        const bool ok = e >= 0 && e < a.X;
        if (tile + (int)gridDim.x < T) {
            job = gu8_job(a, ids, tile + gridDim.x, NWH);
            i8_job_load(job, f, wi, NWH, nsb);
        }
        i8_warp_rows(ag, ag8, red[w]);
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

/* Warp w's (expert k, super-block) pairs of a down tile: p = w, w + NW,
 * ... over K * nsb pairs, k = p / nsb.  Each pair is its own job (its own
 * expert and weight). */
#define DN_NW QG_I8_DN_WARPS
#define DN_PAIRS 2 /* pairs per warp held in registers */

__device__ __forceinline__ i8_job dn8_job(const qg_i8_dn_args &a, int r0, int p, int nsb) {
    i8_job j = {};
    if (p >= a.K * nsb) return j;
    const int e = a.ids[p / nsb];
    if (e < 0 || e >= a.X) return j;
    return i8_rows_of(a.type, a.w + (size_t)e * a.es, a.rb, a.E, r0);
}

__global__ void __launch_bounds__(DN_NW * 32) k_dn8(qg_i8_dn_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[DN_NW][I8_TILE];
    __shared__ float sw[QG_I8_DN_KMAX];
    __shared__ int s_bad;
    const int w = threadIdx.x >> 5, nsb = a.F / 256, T = (a.E + I8_TILE - 1) / I8_TILE;
    const size_t ib = qg_i8_image_bytes(a.F);
    qg_pdl_wait();
    int tile = blockIdx.x;
    i8_frag f[DN_PAIRS];
    i8_job job[DN_PAIRS] = {};
    auto load = [&](int t) { /* one super-block per pair */
#pragma unroll
        for (int q = 0; q < DN_PAIRS; q++) {
            const int p = w + q * DN_NW;
            job[q] = dn8_job(a, I8_TILE * t, p, nsb);
            if (job[q].live) i8_load(f[q], job[q].type, job[q].rg, job[q].rg8, p % nsb);
        }
    };
    if (tile < T) load(tile);
    if (threadIdx.x == 0) s_bad = 0;
    __syncthreads();
    if (threadIdx.x < a.K) {
        const int e = a.ids[threadIdx.x];
        if (e < 0 || e >= a.X) s_bad = 1;
        sw[threadIdx.x] = a.wts[threadIdx.x];
    }
    i8_build(a.h, a.F, a.K, nullptr, 1.0f, img);
    for (; tile < T; tile += gridDim.x) {
        float ag = 0.0f, ag8 = 0.0f;
#pragma unroll
        for (int q = 0; q < DN_PAIRS; q++) {
            const int p = w + q * DN_NW;
            if (!job[q].live) continue;
            const int k = p / nsb;
            float pg = 0.0f, pg8 = 0.0f;
            i8_dot(f[q], job[q].type, qg_i8_at(img + (size_t)k * ib, a.F), p % nsb, pg, pg8);
            ag = fmaf(sw[k], pg, ag);
            ag8 = fmaf(sw[k], pg8, ag8);
        }
        /* pairs beyond DN_NW * DN_PAIRS (more experts or longer rows than
         * the 30B shapes): loaded as they come */
        for (int p = w + DN_PAIRS * DN_NW; p < a.K * nsb; p += DN_NW) {
            const i8_job j = dn8_job(a, I8_TILE * tile, p, nsb);
            if (!j.live) continue;
            const int k = p / nsb;
            i8_frag h;
            float pg = 0.0f, pg8 = 0.0f;
            i8_load(h, j.type, j.rg, j.rg8, p % nsb);
            i8_dot(h, j.type, qg_i8_at(img + (size_t)k * ib, a.F), p % nsb, pg, pg8);
            ag = fmaf(sw[k], pg, ag);
            ag8 = fmaf(sw[k], pg8, ag8);
        }
        const int r0 = I8_TILE * tile;
        if (tile + (int)gridDim.x < T) load(tile + gridDim.x);
        i8_warp_rows(ag, ag8, red[w]);
        __syncthreads();
        if (threadIdx.x < I8_TILE && r0 + (int)threadIdx.x < a.E) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < DN_NW; k++) s += red[k][threadIdx.x];
            if (s_bad) s = __int_as_float(0x7fc00000);
            const int r = r0 + threadIdx.x;
            a.y[r] = a.add ? a.add[r] + s : s;
        }
        __syncthreads();
    }
}

/* ---- launchers ------------------------------------------------------------ */

/* Grid of kernel k (threads per block, smem bytes): the tile count,
 * capped at `per_sm` blocks per multiprocessor, and with o.i8_fit at the
 * blocks a multiprocessor holds at once (one wave: a block's later tiles
 * are then loaded under its earlier ones, the image is built once per
 * block, and no block waits for another to leave). */
template <typename K>
static int i8_grid(const qg_cuda_launch *l, K k, int threads, size_t smem, int tiles, int per_sm) {
    if (l->o.i8_fit) {
        int nb = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, k, threads, smem) == cudaSuccess &&
            nb > 0 && nb < per_sm)
            per_sm = nb;
        else
            cudaGetLastError();
    }
    const int cap = (l->o.n_sm > 0 ? l->o.n_sm : 132) * per_sm;
    return tiles < cap ? (tiles > 0 ? tiles : 1) : cap;
}

/* Launch kernel k over `tiles` tiles (see i8_grid). */
template <typename A>
static cudaError_t i8_launch(const qg_cuda_launch *l, void (*k)(A), int threads, size_t smem,
                             int tiles, int per_sm, const A &a) {
    return qg_cu_launch(l, k, dim3(i8_grid(l, k, threads, smem, tiles, per_sm)), dim3(threads),
                        smem, a);
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
    /* room for staged norm weights whenever n allows; a shape whose warps
     * cannot hold the input takes the two-pass build and leaves it unused */
    const size_t smem = i8_img_smem(n, a.norm_w != nullptr);
    const bool head = nsb <= 8 && T > 8 * (l->o.n_sm > 0 ? l->o.n_sm : 132);
    /* an explicit shape (QG_CUDA_I8_MV / _MV16 / _HEAD, for A/B) */
    switch (head ? l->o.i8_head_cfg : l->o.i8_mv_cfg[nsb <= 8 ? 0 : 1]) {
    case 0: return i8_launch(l, k_mv8<4, 1, 3>, 128, smem, T, 6, a);
    case 1: return i8_launch(l, k_mv8<4, 2, 3>, 128, smem, T, 3, a);
    case 2: return i8_launch(l, k_mv8<8, 1, 2>, 256, smem, T, 4, a);
    case 3: return i8_launch(l, k_mv8<8, 2, 1>, 256, smem, T, 3, a);
    case 4: return i8_launch(l, k_mv8<16, 1, 1>, 512, smem, T, 2, a);
    case 5: return i8_launch(l, k_mv8<4, 4, 2>, 128, smem, T, 4, a);
    default: break;
    }
    /* a warp takes NF super-blocks of a tile (NW warps: the row), the
     * register cap keeps MINB blocks on a multiprocessor */
    if (nsb <= 4) return i8_launch(l, k_mv8<4, 1, 3>, 128, smem, T, 6, a);
    /* many tiles (the lm_head): fewer, longer warps stream better (H100:
     * 140 against 173 us for the 151936-row Q6_K head) */
    if (head) return i8_launch(l, k_mv8<4, 2, 3>, 128, smem, T, 3, a);
    if (nsb <= 8) return i8_launch(l, k_mv8<8, 1, 2>, 256, smem, T, 4, a);
    /* 16 warps of one super-block each (H100, the 4096-input output
     * projection: tg128 338 against 331 tok/s with 8 warps of two) */
    if (nsb <= 16) return i8_launch(l, k_mv8<16, 1, 1>, 512, smem, T, 2, a);
    return i8_launch(l, k_mv8<8, 2, 1>, 256, smem, T, 3, a);
}

bool qg_i8_gu_ok(const qg_cu_mat *gate, const qg_cu_mat *up, int n) {
    return n % 256 == 0 && n <= QG_I8_N_MAX && qg_i8_supports(gate->type) &&
           qg_i8_supports(up->type) && gate->m == up->m;
}

cudaError_t qg_i8_gu(const qg_cuda_launch *l, const qg_cu_mat *gate, const qg_cu_mat *up, int n,
                     int K, int X, const float *x, const int32_t *ids, float *h,
                     const qg_cu_mat *pf_down) {
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
    if (l->o.prefetch && pf_down && ids) {
        a.pf_down = pf_down->w;
        a.pf_es = pf_down->es;
    }
    const int nsb = n / 256, T = K * ((a.F + I8_TILE - 1) / I8_TILE);
    const size_t smem = i8_img_smem(n, a.norm_w != nullptr);
    switch (l->o.i8_gu_cfg) { /* an explicit shape (QG_CUDA_I8_GU, for A/B) */
    case 0: return i8_launch(l, k_gu8<4, 1, 2, false>, 256, smem, T, 4, a);
    case 1: return i8_launch(l, k_gu8<8, 1, 1, false>, 512, smem, T, 2, a);
    case 2: return i8_launch(l, k_gu8<8, 2, 1, false>, 512, smem, T, 2, a);
    case 3: return i8_launch(l, k_gu8<4, 2, 1, false>, 256, smem, T, 3, a);
    case 4: return i8_launch(l, k_gu8<2, 2, 2, false>, 128, smem, T, 6, a);
    default: break;
    }
    if (nsb <= 4) return i8_launch(l, k_gu8<4, 1, 2, false>, 256, smem, T, 4, a);
    if (nsb <= 8) return i8_launch(l, k_gu8<8, 1, 1, false>, 512, smem, T, 2, a);
    return i8_launch(l, k_gu8<8, 2, 1, false>, 512, smem, T, 2, a);
}

cudaError_t qg_i8_gu_router(const qg_cuda_launch *l, const qg_cu_mat *gate, const qg_cu_mat *up,
                            const qg_cu_mat *router, int n, int K, int X, const float *x,
                            const qg_i8_router *rt, float *h, const qg_cu_mat *pf_down) {
    if (!l->o.rgu || !l->o.i8_fit || router->type != QG_F32 || router->m != X ||
        n % (4 * GU_RT_THREADS) || n > 4 * GU_RT_V4 * GU_RT_THREADS || X > GU_RT_XMAX ||
        K > GU_RT_KMAX)
        return cudaErrorNotSupported;
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
    a.norm_w = l->pre_norm;
    a.eps = l->pre_eps;
    a.h = h;
    if (l->o.prefetch && pf_down) {
        a.pf_down = pf_down->w;
        a.pf_es = pf_down->es;
    }
    a.rt = *rt;
    a.rt.w = (const float *)router->w;
    a.rt.rb = router->rb;
    const int nsb = n / 256, T = K * ((a.F + I8_TILE - 1) / I8_TILE);
    /* the gate/up kernel's default shapes (qg_i8_gu), each block normalizing
     * x in one read (x in f32 after the image) */
    const int nw = nsb <= 4 ? 8 : 16;
    if (a.norm_w && !i8_build1_ok(n, nw)) return cudaErrorNotSupported;
    const size_t smem = i8_img_smem(n, a.norm_w != nullptr) + (a.norm_w ? sizeof(float) * (size_t)n : 0);
    void (*k)(qg_i8_gu_args) = nsb <= 4   ? k_gu8<4, 1, 2, true>
                               : nsb <= 8 ? k_gu8<8, 1, 1, true>
                                          : k_gu8<8, 2, 1, true>;
    const int grid = i8_grid(l, k, 32 * nw, smem, T, nsb <= 4 ? 4 : 2);
    if (grid < X) return cudaErrorNotSupported; /* a block per router row */
    return qg_cu_launch(l, k, dim3(grid), dim3(32 * nw), smem, a);
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
    return i8_launch(l, k_dn8, QG_I8_DN_WARPS * 32, (size_t)K * qg_i8_image_bytes(F), T, 4, a);
}
