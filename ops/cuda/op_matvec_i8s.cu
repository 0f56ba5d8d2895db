/*
 * op_matvec_i8s.cu - the decode products of op_matvec_i8.cu with each
 * block's whole weight slice staged in shared memory by bulk copies
 * (qg_cuda_bulk.cuh), issued as early as the data allows:
 *   k_mv8s  dense (qkv, output projection): before the programmatic-launch
 *           wait, so the weights stream while the previous kernel runs
 *   k_gu8s  gate / up with the router folded in: right after the block's
 *           own top-k (gu_route), all of the block's tiles at once
 *   k_dn8s  down + weighted sum: before the launch wait, the expert ids
 *           read as soon as k_gu8s's block 0 publishes them (a release /
 *           acquire flag, o.staged's counters), not when k_gu8s ends
 * and every block lets the next kernel launch at its start
 * (qg_pdl_launch_next), so two kernels share each multiprocessor: one
 * computing, the next one's copies in flight.  The kernels are sized for
 * it: one block per multiprocessor, at most half the register file
 * (__launch_bounds__(threads, 2)) and about half the shared memory.
 *
 * Products are those of op_matvec_i8.cu (the same tile functions, reading
 * shared memory), with the same per-warp order of super-blocks, so
 * results do not depend on the grid.  Shared-memory rows of a tile are
 * padded by 16 bytes when the row length is a multiple of 128 (rows would
 * otherwise start in the same bank: an 8-way conflict on every fragment
 * load).
 */
#include "qg_cuda_i8_kern.cuh"

/* Most tiles a block stages. */
#define S8_TMAX 4
/* Most dynamic shared memory of a staged block (two blocks of different
 * kernels share a multiprocessor's 228 KiB). */
#define S8_SMEM_MAX (120 * 1024)

/* Bytes between staged rows of rb bytes (see the header comment). */
static inline size_t s8_stride(const qg_cuda_launch *l, size_t rb) {
    return rb % 128 == 0 && !(l->o.staged & QG_CUDA_STAGED_NOPAD) ? rb + 16 : rb;
}

static inline size_t s8_round128(size_t b) { return (b + 127) & ~(size_t)127; }

/* Warp: copy `rows` consecutive rows of rb bytes from src to dst (rows sr
 * apart) on the copy engine, counted on bar (whose expected bytes the
 * caller has announced).  sr == rb: one copy (rows * rb % 16 == 0, which
 * the launchers check); otherwise one per row (rb % 16 == 0). */
__device__ __forceinline__ void s8_copy_rows(uint8_t *dst, const uint8_t *src, int rows, size_t rb,
                                             size_t sr, uint64_t *bar) {
    const int lane = threadIdx.x & 31;
    if (sr == rb) {
        if (lane == 0) qg_bulk_g2s(dst, src, (unsigned)(rows * rb), bar);
    } else {
        for (int r = lane; r < rows; r += 32) qg_bulk_g2s(dst + r * sr, src + r * rb, (unsigned)rb, bar);
    }
}

/* Block: initialize barriers bars[0..nt) for one use each. */
__device__ __forceinline__ void s8_bars_init(uint64_t *bars, int nt) {
    if (threadIdx.x == 0) {
        for (int j = 0; j < nt; j++) qg_mbar_init(&bars[j], 1);
        qg_mbar_fence_init();
    }
    __syncthreads();
}

/* Row pointers g, g+8 of a staged tile of `rows` live rows (clamped to
 * the last one, as i8_rows_of clamps). */
__device__ __forceinline__ void s8_rows(const uint8_t *t0, int rows, size_t sr, const uint8_t **rg,
                                        const uint8_t **rg8) {
    const int g = (threadIdx.x & 31) >> 2;
    *rg = t0 + (size_t)min(g, rows - 1) * sr;
    *rg8 = t0 + (size_t)min(g + 8, rows - 1) * sr;
}

/* ag, ag8 += super-blocks sb0, sb0 + step, ... of a staged tile. */
__device__ __forceinline__ void s8_dot(int type, const uint8_t *rg, const uint8_t *rg8, int sb0,
                                       int step, int nsb, const qg_i8_vec &xv, float &ag,
                                       float &ag8) {
    for (int sb = sb0; sb < nsb; sb += step) {
        i8_frag f;
        i8_load<true>(f, type, rg, rg8, sb);
        i8_dot(f, type, xv, sb, ag, ag8);
    }
}

/* ---- dense: up to three matrices ------------------------------------------ */

template <int NW>
__global__ void __launch_bounds__(NW * 32, 2) k_mv8s(qg_i8_mv_args a, qg_i8s_stage p) {
    extern __shared__ __align__(128) uint8_t sm[];
    __shared__ uint64_t bars[S8_TMAX];
    __shared__ float red[S8_TMAX][NW][I8_TILE];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, T = a.tiles[a.nm], G = gridDim.x;
    const int b = blockIdx.x, nt = min(p.tpb, (T - b + G - 1) / G);
    uint8_t *img = sm, *tiles = sm + p.img;
    s8_bars_init(bars, nt);
    /* the weights are constant: every tile of the block is on its way
     * before the previous kernel has finished */
    if (w == 0) {
        if (threadIdx.x == 0)
            for (int j = 0; j < nt; j++) {
                int mi, r0;
                mv8_locate(a, b + j * G, &mi, &r0);
                qg_mbar_expect(&bars[j], (unsigned)(min(I8_TILE, a.m[mi] - r0) * a.rb[mi]));
            }
        __syncwarp();
        for (int j = 0; j < nt; j++) {
            int mi, r0;
            mv8_locate(a, b + j * G, &mi, &r0);
            s8_copy_rows(tiles + j * p.slot, a.w[mi] + (size_t)r0 * a.rb[mi],
                         min(I8_TILE, a.m[mi] - r0), a.rb[mi], p.sr[mi], &bars[j]);
        }
    }
    if (p.early) qg_pdl_launch_next();
    const qg_i8_vec xv = mv8_input(a, NW, img, cs);
    for (int j = 0; j < nt; j++) {
        int mi, r0;
        mv8_locate(a, b + j * G, &mi, &r0);
        const uint8_t *rg, *rg8;
        s8_rows(tiles + j * p.slot, min(I8_TILE, a.m[mi] - r0), p.sr[mi], &rg, &rg8);
        qg_mbar_wait(&bars[j], 0);
        float ag = 0.0f, ag8 = 0.0f;
        s8_dot(a.type[mi], rg, rg8, w, NW, nsb, xv, ag, ag8);
        i8_warp_rows(ag, ag8, red[j][w]);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nt * I8_TILE; i += blockDim.x) {
        const int j = i / I8_TILE, r = i % I8_TILE;
        int mi, r0;
        mv8_locate(a, b + j * G, &mi, &r0);
        if (r0 + r >= a.m[mi]) continue;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < NW; k++) s += red[j][k][r];
        a.y[mi][r0 + r] = (mi == 0 && a.add) ? a.add[r0 + r] + s : s;
    }
}

/* ---- gate / up of the chosen experts, router folded in --------------------- */

/* Warps [0, NWH) take the gate matrix, [NWH, 2 NWH) the up matrix (the
 * order of k_gu8<NWH, ...>). */
template <int NWH>
__global__ void __launch_bounds__(2 * NWH * 32, 2) k_gu8s(qg_i8_gu_args a, qg_i8s_stage p) {
    extern __shared__ __align__(128) uint8_t sm[];
    __shared__ uint64_t bars[S8_TMAX];
    __shared__ float red[S8_TMAX][2 * NWH][I8_TILE];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    __shared__ int32_t s_ids[GU_RT_KMAX];
    __shared__ float s_wts[GU_RT_KMAX], s_p[GU_RT_XMAX];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, wi = w >= NWH ? w - NWH : w;
    const int FT = (a.F + I8_TILE - 1) / I8_TILE, T = a.K * FT, G = gridDim.x;
    const int b = blockIdx.x, nt = min(p.tpb, (T - b + G - 1) / G);
    /* the tiles overwrite the norm weights and the f32 input of the router
     * (dead once gu_route returns) */
    uint8_t *img = sm, *tiles = sm + p.img;
    float4 wr[GU_RT_V4];
    gu_route_row(a, wr);
    s8_bars_init(bars, nt);
    if (p.early) qg_pdl_launch_next();
    const bool one = i8_norm_begin(a.norm_w, a.n, 2 * NWH, img);
    qg_pdl_wait();
    gu_route(a, wr, one, cs, img, s_ids, s_wts, s_p);
    /* the experts are known: all of the block's gate and up rows */
    const size_t gb = I8_TILE * p.sr[0];
    if (w == 0) {
        if (threadIdx.x == 0)
            for (int j = 0; j < nt; j++) {
                const int t = b + j * G, k = t / FT, r0 = I8_TILE * (t - k * FT), e = s_ids[k];
                const int rows = min(I8_TILE, a.F - r0);
                const bool ok = e >= 0 && e < a.X;
                qg_mbar_expect(&bars[j], ok ? (unsigned)(rows * (a.rbg + a.rbu)) : 0u);
            }
        __syncwarp();
        for (int j = 0; j < nt; j++) {
            const int t = b + j * G, k = t / FT, r0 = I8_TILE * (t - k * FT), e = s_ids[k];
            const int rows = min(I8_TILE, a.F - r0);
            if (e < 0 || e >= a.X) continue;
            uint8_t *d = tiles + j * p.slot;
            s8_copy_rows(d, a.wg + (size_t)e * a.esg + (size_t)r0 * a.rbg, rows, a.rbg, p.sr[0], &bars[j]);
            s8_copy_rows(d + gb, a.wu + (size_t)e * a.esu + (size_t)r0 * a.rbu, rows, a.rbu, p.sr[1],
                         &bars[j]);
        }
    }
    /* the chosen experts' down rows, asked of L2 for the next kernel
     * (when it reads them after this one ends) */
    if (a.pf_down)
        for (int k = 0; k < a.K; k++) {
            const int e = s_ids[k];
            if (e >= 0 && e < a.X) qg_prefetch_grid(a.pf_down + (size_t)e * a.pf_es, a.pf_es);
        }
    const qg_i8_vec xv = qg_i8_at(img, a.n);
    const bool up = w >= NWH;
    for (int j = 0; j < nt; j++) {
        const int t = b + j * G, k = t / FT, r0 = I8_TILE * (t - k * FT), e = s_ids[k];
        const int rows = min(I8_TILE, a.F - r0);
        float ag = 0.0f, ag8 = 0.0f;
        qg_mbar_wait(&bars[j], 0);
        if (e >= 0 && e < a.X) {
            const uint8_t *rg, *rg8;
            s8_rows(tiles + j * p.slot + (up ? gb : 0), rows, p.sr[up ? 1 : 0], &rg, &rg8);
            s8_dot(up ? a.tu : a.tg, rg, rg8, wi, NWH, nsb, xv, ag, ag8);
        }
        i8_warp_rows(ag, ag8, red[j][w]);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nt * I8_TILE; i += blockDim.x) {
        const int j = i / I8_TILE, r = i % I8_TILE;
        const int t = b + j * G, k = t / FT, r0 = I8_TILE * (t - k * FT), e = s_ids[k];
        if (r0 + r >= a.F) continue;
        float gs = 0.0f, us = 0.0f;
#pragma unroll
        for (int q = 0; q < NWH; q++) {
            gs += red[j][q][r];
            us += red[j][NWH + q][r];
        }
        a.h[(size_t)k * a.F + r0 + r] =
            (e >= 0 && e < a.X) ? qg_silu(gs) * us : __int_as_float(0x7fc00000);
    }
}

/* ---- down projection + weighted sum ---------------------------------------- */

/* Warp w takes the (expert k, super-block) pairs w, w + NW, ... of K * nsb
 * for every tile. */
template <int NW>
__global__ void __launch_bounds__(NW * 32, 2) k_dn8s(qg_i8_dn_args a, qg_i8s_stage p) {
    extern __shared__ __align__(128) uint8_t sm[];
    __shared__ uint64_t bars[S8_TMAX];
    __shared__ float red[S8_TMAX][NW][I8_TILE];
    __shared__ float sw[QG_I8_DN_KMAX];
    __shared__ int32_t s_ids[QG_I8_DN_KMAX];
    __shared__ int s_bad;
    const int w = threadIdx.x >> 5, nsb = a.F / 256, T = (a.E + I8_TILE - 1) / I8_TILE;
    const int G = gridDim.x, b = blockIdx.x, nt = min(p.tpb, (T - b + G - 1) / G);
    const size_t ib = qg_i8_image_bytes(a.F), eb = I8_TILE * p.sr[0];
    uint8_t *img = sm, *tiles = sm + p.img;
    s8_bars_init(bars, nt);
    if (a.flag) {
        /* the ids are published before the gate/up kernel ends */
        dn_take_ids(a, s_ids);
    } else {
        qg_pdl_wait();
        if ((int)threadIdx.x < a.K) s_ids[threadIdx.x] = a.ids[threadIdx.x];
        __syncthreads();
    }
    if (w == 0) {
        if (threadIdx.x == 0)
            for (int j = 0; j < nt; j++) {
                const int rows = min(I8_TILE, a.E - I8_TILE * (b + j * G));
                int live = 0;
                for (int k = 0; k < a.K; k++) live += s_ids[k] >= 0 && s_ids[k] < a.X;
                qg_mbar_expect(&bars[j], (unsigned)(live * rows * a.rb));
            }
        __syncwarp();
        for (int j = 0; j < nt; j++) {
            const int r0 = I8_TILE * (b + j * G), rows = min(I8_TILE, a.E - r0);
            for (int k = 0; k < a.K; k++) {
                const int e = s_ids[k];
                if (e < 0 || e >= a.X) continue;
                s8_copy_rows(tiles + j * p.slot + k * eb, a.w + (size_t)e * a.es + (size_t)r0 * a.rb,
                             rows, a.rb, p.sr[0], &bars[j]);
            }
        }
    }
    if (p.early) qg_pdl_launch_next();
    qg_pdl_wait();
    if (threadIdx.x == 0) s_bad = 0;
    __syncthreads();
    if ((int)threadIdx.x < a.K) {
        const int e = s_ids[threadIdx.x];
        if (e < 0 || e >= a.X) s_bad = 1;
        sw[threadIdx.x] = a.wts[threadIdx.x];
    }
    i8_build(a.h, a.F, a.K, nullptr, 1.0f, img);
    for (int j = 0; j < nt; j++) {
        const int r0 = I8_TILE * (b + j * G), rows = min(I8_TILE, a.E - r0);
        qg_mbar_wait(&bars[j], 0);
        float ag = 0.0f, ag8 = 0.0f;
        for (int q = w; q < a.K * nsb; q += NW) {
            const int k = q / nsb, sb = q - k * nsb, e = s_ids[k];
            if (e < 0 || e >= a.X) continue;
            const uint8_t *rg, *rg8;
            s8_rows(tiles + j * p.slot + k * eb, rows, p.sr[0], &rg, &rg8);
            float pg = 0.0f, pg8 = 0.0f;
            s8_dot(a.type, rg, rg8, sb, nsb, nsb, qg_i8_at(img + (size_t)k * ib, a.F), pg, pg8);
            ag = fmaf(sw[k], pg, ag);
            ag8 = fmaf(sw[k], pg8, ag8);
        }
        i8_warp_rows(ag, ag8, red[j][w]);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nt * I8_TILE; i += blockDim.x) {
        const int j = i / I8_TILE, r = i % I8_TILE, r0 = I8_TILE * (b + j * G);
        if (r0 + r >= a.E) continue;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < NW; k++) s += red[j][k][r];
        if (s_bad) s = __int_as_float(0x7fc00000);
        a.y[r0 + r] = a.add ? a.add[r0 + r] + s : s;
    }
}

/* ---- launchers -------------------------------------------------------------- */

#define S8_MV_NW 8
#define S8_GU_NWH 8
#define S8_DN_NW 12 /* k_dn8's warps: the same order of sums */

/* Can a matrix of m rows of rb bytes at w (expert stride es, 0 if none) be
 * staged: 16-byte aligned rows or whole 16-row tiles? */
static bool s8_mat_ok(const uint8_t *w, size_t rb, size_t es, int m) {
    return (uintptr_t)w % 16 == 0 && es % 16 == 0 && (rb % 16 == 0 || m % I8_TILE == 0);
}

/* Blocks and tiles per block for T tiles: one block per multiprocessor,
 * at most S8_TMAX tiles each; false when T needs more. */
static bool s8_grid(const qg_cuda_launch *l, int T, int *G, int *tpb) {
    const int nsm = l->o.n_sm > 0 ? l->o.n_sm : 132;
    *tpb = (T + nsm - 1) / nsm;
    if (*tpb > S8_TMAX || T < 1) return false;
    *G = (T + *tpb - 1) / *tpb;
    return true;
}

cudaError_t qg_i8s_mv(const qg_cuda_launch *l, const qg_i8_mv_args &a) {
    if (!(l->o.staged & QG_CUDA_STAGED_MV)) return cudaErrorNotSupported;
    const int T = a.tiles[a.nm];
    qg_i8s_stage p = {};
    int G;
    if (!s8_grid(l, T, &G, &p.tpb)) return cudaErrorNotSupported;
    for (int i = 0; i < a.nm; i++) {
        if (!s8_mat_ok(a.w[i], a.rb[i], 0, a.m[i])) return cudaErrorNotSupported;
        p.sr[i] = s8_stride(l, a.rb[i]);
        p.slot = I8_TILE * p.sr[i] > p.slot ? I8_TILE * p.sr[i] : p.slot;
    }
    p.img = s8_round128(i8_img_smem(a.n, a.norm_w != nullptr));
    p.early = (l->o.staged & QG_CUDA_STAGED_EARLY) != 0;
    const size_t smem = p.img + p.tpb * p.slot;
    if (smem > S8_SMEM_MAX) return cudaErrorNotSupported;
    return qg_cu_launch(l, k_mv8s<S8_MV_NW>, dim3(G), dim3(S8_MV_NW * 32), smem, a, p);
}

cudaError_t qg_i8s_gu_router(const qg_cuda_launch *l, const qg_i8_gu_args &a) {
    if (!(l->o.staged & QG_CUDA_STAGED_GU)) return cudaErrorNotSupported;
    const int T = a.K * ((a.F + I8_TILE - 1) / I8_TILE);
    qg_i8s_stage p = {};
    int G;
    if (!s8_grid(l, T, &G, &p.tpb)) return cudaErrorNotSupported;
    if (G < a.X) G = a.X; /* a block per router row */
    if (G > (l->o.n_sm > 0 ? l->o.n_sm : 132)) return cudaErrorNotSupported;
    if (!s8_mat_ok(a.wg, a.rbg, a.esg, a.F) || !s8_mat_ok(a.wu, a.rbu, a.esu, a.F))
        return cudaErrorNotSupported;
    if (a.norm_w && !i8_build1_ok(a.n, 2 * S8_GU_NWH)) return cudaErrorNotSupported;
    p.sr[0] = s8_stride(l, a.rbg);
    p.sr[1] = s8_stride(l, a.rbu);
    p.slot = I8_TILE * (p.sr[0] + p.sr[1]);
    p.img = s8_round128(qg_i8_image_bytes(a.n));
    p.early = (l->o.staged & QG_CUDA_STAGED_EARLY) != 0;
    /* the router's staged norm weights and f32 input, or the tiles */
    const size_t rt = i8_img_smem(a.n, a.norm_w != nullptr) + (a.norm_w ? sizeof(float) * (size_t)a.n : 0);
    const size_t smem = p.img + p.tpb * p.slot > rt ? p.img + p.tpb * p.slot : rt;
    if (smem > S8_SMEM_MAX) return cudaErrorNotSupported;
    return qg_cu_launch(l, k_gu8s<S8_GU_NWH>, dim3(G), dim3(2 * S8_GU_NWH * 32), smem, a, p);
}

bool qg_i8s_dn_ok(const qg_cuda_launch *l, const qg_cu_mat *down, int F, int K) {
    if (!(l->o.staged & QG_CUDA_STAGED_DN) || !qg_i8_dn_ok(down, F, K)) return false;
    const int T = (down->m + I8_TILE - 1) / I8_TILE;
    int G, tpb;
    if (!s8_grid(l, T, &G, &tpb) || !s8_mat_ok(down->w, down->rb, down->es, down->m)) return false;
    const size_t smem = s8_round128((size_t)K * qg_i8_image_bytes(F)) +
                        tpb * (size_t)K * I8_TILE * s8_stride(l, down->rb);
    return smem <= S8_SMEM_MAX;
}

cudaError_t qg_i8s_dn(const qg_cuda_launch *l, const qg_cu_mat *down, const qg_i8_dn_args &a) {
    if (!qg_i8s_dn_ok(l, down, a.F, a.K)) return cudaErrorNotSupported;
    qg_i8s_stage p = {};
    int G = 1;
    s8_grid(l, (a.E + I8_TILE - 1) / I8_TILE, &G, &p.tpb);
    p.sr[0] = s8_stride(l, a.rb);
    p.slot = (size_t)a.K * I8_TILE * p.sr[0];
    p.img = s8_round128((size_t)a.K * qg_i8_image_bytes(a.F));
    p.early = (l->o.staged & QG_CUDA_STAGED_EARLY) != 0;
    const size_t smem = p.img + p.tpb * p.slot;
    return qg_cu_launch(l, k_dn8s<S8_DN_NW>, dim3(G), dim3(S8_DN_NW * 32), smem, a, p);
}

/* Every staged kernel asks for the largest shared-memory carveout: a
 * multiprocessor holds blocks of two kernels at once only when both run
 * under one carveout (a block whose kernel wants another one waits for
 * the multiprocessor to drain and be reconfigured). */
template <typename A> static cudaError_t s8_attrs(void (*k)(A, qg_i8s_stage)) {
    cudaError_t e = cudaFuncSetAttribute((const void *)k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         S8_SMEM_MAX);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute((const void *)k, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
    return e;
}

cudaError_t qg_i8s_prepare(void) {
    cudaError_t e = s8_attrs(k_mv8s<S8_MV_NW>);
    if (e == cudaSuccess) e = s8_attrs(k_gu8s<S8_GU_NWH>);
    if (e == cudaSuccess) e = s8_attrs(k_dn8s<S8_DN_NW>);
    return e;
}
