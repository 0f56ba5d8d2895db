/*
 * qg_cuda_i8_kern.cuh - the device pieces the integer tensor-core decode
 * kernels share (op_matvec_i8.cu: weights held in registers;
 * op_matvec_i8s.cu: weights staged in shared memory): input images with
 * the rmsnorm folded in, one warp's share of a 16-row tile, the row
 * reduction, and the router folded into the gate/up launch (its row
 * product, the grid barrier, the per-block top-k; or, with router
 * partials, the dense product's epilogue that writes them and the gate/up
 * launch's sum of them).  ops/cuda/ only.
 */
#ifndef QG_CUDA_I8_KERN_CUH
#define QG_CUDA_I8_KERN_CUH

#include "qg_cuda_bulk.cuh"
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
 * must hold.  image = false: only xs (the image is built later from it,
 * same bits).  Ends with __syncthreads(). */
__device__ __forceinline__ void i8_build1(const float *__restrict__ x, int n, const float *nws,
                                          float eps, float *cs, uint8_t *base,
                                          float *xs = nullptr, bool image = true) {
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
        if (image) qg_i8_store_sb(e, sb, base, n);
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
 * matrix into f (all loads issued, none waited for); SM: rg / rg8 point
 * into shared memory. */
template <bool SM = false>
__device__ __forceinline__ void i8_load(i8_frag &f, int type, const uint8_t *rg, const uint8_t *rg8,
                                        int sb) {
    const size_t o = (size_t)sb * i8_bs(type);
    if (type == QG_Q4_K) qg_i8_q4k_load<SM>(f.k4, rg + o, rg8 + o);
    else qg_i8_q6k_load<SM>(f.k6, rg + o, rg8 + o);
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

/* Matrix and first row of dense tile `tile`. */
__device__ __forceinline__ void mv8_locate(const qg_i8_mv_args &a, int tile, int *i, int *r0) {
    int k = 0;
    while (tile >= a.tiles[k + 1]) k++;
    *i = k;
    *r0 = I8_TILE * (tile - a.tiles[k]);
}

/* Block (nw warps) of a dense product, once its first weight loads are
 * issued: stage the folded norm's weights, wait for the previous kernel
 * (programmatic launch), and build the image of x (its column n_tok - 1
 * when a.last_col) in img; returns the image.  Ends with
 * __syncthreads(). */
__device__ __forceinline__ qg_i8_vec mv8_input(const qg_i8_mv_args &a, int nw, uint8_t *img,
                                               float *cs) {
    const bool one = i8_norm_begin(a.norm_w, a.n, nw, img);
    qg_pdl_wait();
    const float *x = a.x;
    if (a.last_col) x += (size_t)(a.step[QG_STEP_N_TOK] - 1) * a.n;
    i8_build_x(x, a.n, a.norm_w, a.eps, one, cs, img);
    return qg_i8_at(img, a.n);
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
 * wave); what a block wrote before its arrival is visible to every block
 * after the wait.  gen: gu_bar_gen() of this barrier, read by thread 0
 * earlier.  bar[0] counts arrivals (an acquire-release add, cumulative
 * over the block's writes ordered by the block barrier); the last arriver
 * restores it to 0 and bumps the generation bar[1] with a release add,
 * which the others spin on with acquire loads.  Split in two so that a
 * block can work between its arrival and the wait: gu_bar_arrive returns
 * (to thread 0) whether this block arrived last. */
__device__ __forceinline__ bool gu_bar_arrive(int *bar) {
    __syncthreads();
    bool last = false;
    if (threadIdx.x == 0) {
        int old;
        asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(old) : "l"(bar) : "memory");
        if (old == (int)gridDim.x - 1) {
            asm volatile("st.relaxed.gpu.global.s32 [%0], 0;" ::"l"(bar) : "memory");
            asm volatile("red.release.gpu.global.add.s32 [%0], 1;" ::"l"(bar + 1) : "memory");
            last = true;
        }
    }
    return last;
}

__device__ __forceinline__ void gu_bar_wait(const int *bar, int gen, bool last) {
    if (threadIdx.x == 0 && !last) {
        int g;
        do {
            asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(g) : "l"(bar + 1) : "memory");
        } while (g == gen);
    }
    __syncthreads();
}

/* ---- the down kernels' early read of the expert ids -------------------------- */

/* Block, before the programmatic-launch wait of a down kernel whose
 * a.flag is set: wait (thread 0) for the folded router's release of the
 * ids, read them into s_ids (through L2), and count this block's read;
 * the last block to read resets both counters for the next step (no other
 * kernel of the step touches them, and the next step's router runs after
 * this grid has ended).  Ends with __syncthreads(). */
__device__ __forceinline__ void dn_take_ids(const qg_i8_dn_args &a, int32_t *s_ids) {
    if (threadIdx.x == 0) qg_spin_acquire(a.flag, 1);
    __syncthreads();
    if ((int)threadIdx.x < a.K) s_ids[threadIdx.x] = __ldcg(a.ids + threadIdx.x);
    __syncthreads();
    if (threadIdx.x == 0 && atomicAdd(a.flag + 1, 1) == (int)gridDim.x - 1) {
        a.flag[1] = 0;
        a.flag[0] = 0;
    }
}

/* ---- the router folded into the gate/up launch ---------------------------- */

/* Block b < X: router row b into this thread's registers (thread t <
 * GU_RT_THREADS takes float4 t, t + GU_RT_THREADS, ...); weights are
 * constant, so this goes before the programmatic-launch wait. */
__device__ __forceinline__ void gu_route_row(const qg_i8_gu_args &a, float4 (&wr)[GU_RT_V4]) {
    const int nv = a.n / (4 * GU_RT_THREADS);
    if ((int)blockIdx.x >= a.X || threadIdx.x >= GU_RT_THREADS) return;
    const float4 *w4 = (const float4 *)((const uint8_t *)a.rt.w + (size_t)blockIdx.x * a.rt.rb);
#pragma unroll
    for (int k = 0; k < GU_RT_V4; k++)
        if (k < nv) wr[k] = __ldg(w4 + threadIdx.x + GU_RT_THREADS * k);
}

/* Warp 0 of every block, once s_ids / s_wts hold the picks: block 0
 * writes them to a.rt.ids / wts and, when a.rt.flag is set, publishes
 * them there (release store of 1) for a down kernel that reads them
 * before its own launch wait. */
__device__ __forceinline__ void gu_route_publish(const qg_i8_gu_args &a, const int32_t *s_ids,
                                                 const float *s_wts) {
    __syncwarp();
    if (blockIdx.x == 0 && (int)threadIdx.x < a.K) {
        a.rt.ids[threadIdx.x] = s_ids[threadIdx.x];
        a.rt.wts[threadIdx.x] = s_wts[threadIdx.x];
        if (a.rt.flag) __threadfence();
    }
    if (blockIdx.x == 0 && a.rt.flag) {
        __syncwarp();
        if (threadIdx.x == 0) qg_store_release(a.rt.flag, 1);
    }
}

/* Block, after the programmatic-launch wait: x's image into img (x
 * normalized when a.norm_w; `one` from i8_norm_begin), block b < X's
 * router logit (row wr, summed in the router kernel's order) to
 * a.rt.logits, a grid barrier, then every block's own softmax / top-k /
 * renormalize (qg_cu_warp_topk) into s_ids / s_wts (s_p: X floats).
 * Block 0 writes ids and weights to a.rt.ids / wts and, when a.rt.flag is
 * set, publishes them there (release store of 1) for a down kernel that
 * reads them before its own launch wait.  The grid must be co-resident
 * and hold at least X blocks.  Ends with __syncthreads(). */
__device__ __forceinline__ void gu_route(const qg_i8_gu_args &a, const float4 (&wr)[GU_RT_V4],
                                         bool one, float *cs, uint8_t *img, int32_t *s_ids,
                                         float *s_wts, float *s_p) {
    const int w = threadIdx.x >> 5, nv = a.n / (4 * GU_RT_THREADS);
    const bool rrow = (int)blockIdx.x < a.X && threadIdx.x < GU_RT_THREADS;
    const int gen = threadIdx.x == 0 ? gu_bar_gen(a.rt.bar) : 0;
    /* x normalized in f32 for the router (the norm folded in; an
     * unnormalized input is read as it is), and x's image: with a.rt.split
     * built between this block's arrival at the barrier and its wait,
     * from the same f32 values (same bits) */
    float *xs = a.norm_w ? (float *)(img + i8_img_smem(a.n, true)) : nullptr;
    const bool split = a.rt.split && (!a.norm_w || one);
    if (!split) i8_build_x(a.x, a.n, a.norm_w, a.eps, one, cs, img, xs);
    else if (a.norm_w) i8_build1(a.x, a.n, (const float *)(img + qg_i8_image_bytes(a.n)), a.eps, cs, img, xs, false);
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
    const bool last = gu_bar_arrive(a.rt.bar);
    if (split) i8_build(xr, a.n, 1, nullptr, 1.0f, img);
    gu_bar_wait(a.rt.bar, gen, last);
    if (w == 0) {
        qg_cu_warp_topk(a.rt.logits, a.X, a.K, s_ids, s_wts, s_p);
        gu_route_publish(a, s_ids, s_wts);
    }
    __syncthreads();
}

/* ---- router partials: the producer (a dense product's epilogue) ----------- */

/* Floats between two experts' staged router slices: 16 used, 20 so that
 * the float4 reads of 8 consecutive threads fall in distinct banks. */
#define RP_LD 20

/* Dynamic shared memory of a dense product's router-partial staging (X
 * experts), right after its image (i8_img_smem, rounded up to 16): X
 * router slices of RP_LD floats, then the norm weights' slice, the tile's
 * h and h * nw (16 floats each). */
__host__ __device__ __forceinline__ size_t rp_smem(int X) {
    return sizeof(float) * ((size_t)X * RP_LD + 3 * I8_TILE);
}
__host__ __device__ __forceinline__ size_t rp_smem_off(int n, bool norm) {
    return (i8_img_smem(n, norm) + 15) & ~(size_t)15;
}

/* Block: start copying the slices of the tile at row r0 of an m-row output
 * (m % 4 == 0; rows past m left out) into rs (rp_smem): columns r0 ..
 * r0+15 of each router row and of the norm weights, by cp.async (no
 * registers held).  Constant data: issued before the programmatic-launch
 * wait for a block's first tile; waited for (qg_cp_wait_all) before the
 * barrier that precedes the tile's epilogue. */
__device__ __forceinline__ void rp_stage(const qg_i8_rpart &p, int m, int r0, float *rs) {
    const int nc = min(I8_TILE, m - r0) / 4; /* 16-byte chunks per slice */
    for (int q = threadIdx.x; q < 4 * (p.X + 1); q += blockDim.x) {
        const int e = q >> 2, c = q & 3;
        if (c >= nc) continue;
        if (e < p.X)
            qg_cp_async16(rs + e * RP_LD + 4 * c,
                          (const uint8_t *)p.w + (size_t)e * p.rb + sizeof(float) * (r0 + 4 * c));
        else
            qg_cp_async16(rs + p.X * RP_LD + 4 * c, p.nw + r0 + 4 * c);
    }
    qg_cp_commit();
}

/* Thread j < 16 of a tile's epilogue, once the row's final y (= h) is
 * known and the staged slices are visible: h and h * nw into rs. */
__device__ __forceinline__ void rp_row(const qg_i8_rpart &p, float *rs, int j, float h) {
    rs[p.X * RP_LD + I8_TILE + j] = h;
    rs[p.X * RP_LD + 2 * I8_TILE + j] = __fmul_rn(h, rs[p.X * RP_LD + j]);
}

/* Block, after the barrier that follows the rp_row calls of tile t (jn =
 * min(16, m - r0) live rows): the tile's partials into row t of p.out.
 * Thread e takes column e (e, e + blockDim.x, ... <= X): for e < X the
 * router slice times h * nw, for e == X h times h; each j ascending over
 * the live rows, f32 FMAs from 0 (rows past m count as 0). */
__device__ __forceinline__ void rp_tile(const qg_i8_rpart &p, int t, int jn, const float *rs) {
    const float *hv = rs + p.X * RP_LD + I8_TILE, *hn = hv + I8_TILE;
    for (int e = threadIdx.x; e <= p.X; e += blockDim.x) {
        const float *a = e < p.X ? rs + e * RP_LD : hv, *b = e < p.X ? hn : hv;
        float acc = 0.0f;
#pragma unroll
        for (int c = 0; c < I8_TILE / 4; c++) {
            const float4 u = *(const float4 *)(a + 4 * c), v = *(const float4 *)(b + 4 * c);
            if (4 * c + 0 < jn) acc = fmaf(u.x, v.x, acc);
            if (4 * c + 1 < jn) acc = fmaf(u.y, v.y, acc);
            if (4 * c + 2 < jn) acc = fmaf(u.z, v.z, acc);
            if (4 * c + 3 < jn) acc = fmaf(u.w, v.w, acc);
        }
        p.out[(size_t)t * (p.X + 1) + e] = acc;
    }
}

/* ---- router partials: the consumer (gate/up launch) ----------------------- */

/* Tiles per run of the partials' column sums (see gu_route_part). */
#define GU_RP_RUN 32

/* Dynamic shared memory after the image (i8_img_smem(n, true)) that
 * gu_route_part takes for its run sums: (runs, X + 1) floats. */
__host__ __device__ __forceinline__ size_t gu_part_smem(int X, int tiles) {
    return sizeof(float) * (size_t)((tiles + GU_RP_RUN - 1) / GU_RP_RUN) * (size_t)(X + 1);
}

/* Block, after the programmatic-launch wait, instead of gu_route (router
 * partials, a.rt.part: a.rt.part_tiles rows of X + 1 floats written by the
 * previous launch; the rmsnorm folded in, a.norm_w set; `one` from
 * i8_norm_begin).  The h loads (a.x, raw) and the partial loads are issued
 * together.  Column c of the partials is summed in one order that depends
 * on nothing but the tile count T: runs of GU_RP_RUN tiles, run k =
 * P[32k][c] + P[32k+1][c] + ... (left to right, up to T), then the runs
 * left to right, tot = ((run0 + run1) + run2) + ...; (the block's threads
 * take (run, column) items, into shared memory, then one thread per column
 * adds the runs).  s = 1 / sqrt(tot[X] / n + eps), logit[e] = tot[e] * s
 * (in tot, shared memory); warp 0 takes the softmax / top-k / renormalize
 * (qg_cu_warp_topk from shared memory) into s_ids / s_wts and block 0
 * publishes them as gu_route does, while the other warps build x's image,
 * x_i = (h_i * s) * nw_i (i8_build's products).  No grid barrier: any grid
 * size.  Ends with __syncthreads(). */
__device__ __forceinline__ void gu_route_part(const qg_i8_gu_args &a, bool one, uint8_t *img,
                                              float *tot, int32_t *s_ids, float *s_wts,
                                              float *s_p) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int nsb = a.n / 256, C = a.X + 1, T = a.rt.part_tiles;
    const int NR = (T + GU_RP_RUN - 1) / GU_RP_RUN;
    float *rs = (float *)(img + i8_img_smem(a.n, true)); /* (NR, C) run sums */
    /* h: warp w holds super-blocks nw-1-w, 2nw-1-w, ... (warp 0 holds
     * none while nsb < nw: it takes the top-k) */
    float v[I8_BUILD_REG][8];
    if (one) {
#pragma unroll
        for (int k = 0; k < I8_BUILD_REG; k++) {
            const int sb = nw - 1 - w + k * nw;
            if (sb >= nsb) continue;
            const float *p = a.x + 256 * sb + 8 * lane;
            const float4 u0 = *(const float4 *)p, u1 = *(const float4 *)(p + 4);
            v[k][0] = u0.x, v[k][1] = u0.y, v[k][2] = u0.z, v[k][3] = u0.w;
            v[k][4] = u1.x, v[k][5] = u1.y, v[k][6] = u1.z, v[k][7] = u1.w;
        }
    }
    for (int i = threadIdx.x; i < NR * C; i += blockDim.x) {
        const int k = i / C, c = i - k * C, t0 = GU_RP_RUN * k;
        float u[GU_RP_RUN];
        /* every load unconditional, all in flight at once (a partial run
         * reads the last tile again and leaves it out of the sum) */
#pragma unroll
        for (int j = 0; j < GU_RP_RUN; j++)
            u[j] = __ldcg(a.rt.part + (size_t)min(t0 + j, T - 1) * C + c);
        float r = u[0];
#pragma unroll
        for (int j = 1; j < GU_RP_RUN; j++)
            if (t0 + j < T) r += u[j];
        rs[i] = r;
    }
    qg_cp_wait_all(); /* this thread's norm-weight copies (i8_norm_begin) */
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float r = rs[c];
        for (int k = 1; k < NR; k++) r += rs[k * C + c];
        tot[c] = r;
    }
    __syncthreads();
    const float scale = 1.0f / sqrtf(tot[a.X] / (float)a.n + a.eps);
    if (w == 0) {
        for (int e = lane; e < a.X; e += 32) tot[e] = tot[e] * scale;
        __syncwarp();
        qg_cu_warp_topk<true>(tot, a.X, a.K, s_ids, s_wts, s_p);
        gu_route_publish(a, s_ids, s_wts);
    }
    if (one) {
        const float *nws = (const float *)(img + qg_i8_image_bytes(a.n));
#pragma unroll
        for (int k = 0; k < I8_BUILD_REG; k++) {
            const int sb = nw - 1 - w + k * nw;
            if (sb >= nsb) continue;
            const float *nn = nws + 256 * sb + 8 * lane;
            float e[8];
#pragma unroll
            for (int i = 0; i < 8; i++) e[i] = __fmul_rn(__fmul_rn(v[k][i], scale), nn[i]);
            qg_i8_store_sb(e, sb, img, a.n);
        }
        __syncthreads();
    } else {
        i8_build(a.x, a.n, 1, a.norm_w, scale, img);
    }
}

#endif
