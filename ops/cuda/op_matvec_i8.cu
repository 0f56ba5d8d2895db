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
 *           residual on matrix 0, optional last column of x; RP: also
 *           the router partials of y for the MoE launch after it
 *   k_gu8   h[k, f] = silu(gate_e x) * (up_e x), e = ids[k] on the device,
 *           or picked by each block (the router folded in behind a grid
 *           barrier, or summed from the router partials)
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
 * or a block's later tiles measured slower and was removed).  The pieces
 * these kernels share with the staged ones of op_matvec_i8s.cu (images,
 * tile products, the folded router) are in qg_cuda_i8_kern.cuh.
 */
#include "qg_cuda_i8_kern.cuh"

/* ---- dense: up to three matrices ---------------------------------------- */

/* RP: also the router partials of y (a.rp, one matrix: qg_i8_rpart): each
 * tile's slices of the router and norm weights are staged in shared
 * memory by cp.async (rp_stage: before the launch wait for the first tile,
 * after the previous tile's partials for later ones), and the epilogue
 * writes the tile's partials from its final rows (rp_row, rp_tile). */
template <int NW, int NF, int MINB, bool RP = false>
__global__ void __launch_bounds__(NW * 32, MINB) k_mv8(qg_i8_mv_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[NW][I8_TILE];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, T = a.tiles[a.nm];
    const int G = gridDim.x;
    int tile = blockIdx.x, mi = 0, r0 = 0;
    i8_frag f[NF];
    i8_job job = {};
    /* router partials' staging: (rp_smem(X)) after the image */
    float *rs = RP ? (float *)(img + rp_smem_off(a.n, a.norm_w != nullptr)) : nullptr;
    /* the weights are constant: the first tile's loads go out before the
     * previous kernel has finished (programmatic launch) */
    if (tile < T) {
        mv8_locate(a, tile, &mi, &r0);
        job = i8_rows_of(a.type[mi], a.w[mi], a.rb[mi], a.m[mi], r0);
        i8_job_load(job, f, w, NW, nsb);
        if (RP) rp_stage(a.rp, a.m[0], r0, rs);
    }
    const qg_i8_vec xv = mv8_input(a, NW, img, cs);
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
        if (RP) qg_cp_wait_all(); /* this thread's staged slices */
        __syncthreads();
        if (threadIdx.x < I8_TILE && cr0 + (int)threadIdx.x < a.m[ci]) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < NW; k++) s += red[k][threadIdx.x];
            const int r = cr0 + threadIdx.x;
            const float y = (ci == 0 && a.add) ? a.add[r] + s : s;
            a.y[ci][r] = y;
            if (RP) rp_row(a.rp, rs, threadIdx.x, y);
        }
        __syncthreads();
        if (RP) { /* one matrix: tile index = row of the partials */
            rp_tile(a.rp, tile, min(I8_TILE, a.m[0] - cr0), rs);
            if (tile + G < T) {
                __syncthreads(); /* every thread is done with rs */
                rp_stage(a.rp, a.m[0], r0, rs);
            }
        }
    }
}

/* ---- the output head: each warp owns whole tiles ------------------------- */

/* y_i = W_i x like k_mv8, for products of many tiles (the lm_head: 9496
 * tiles of 16 rows for the 151936-row vocabulary): warp gw of the grid
 * takes tiles gw, gw + GW, ... (GW warps in all) and walks each across
 * all of its super-blocks itself, so no tile needs a block barrier or a
 * cross-warp sum.  Its (tile, super-block) items stream through a ring of
 * NP fragments: item i + NP is requested before item i is multiplied, the
 * first NP before the programmatic-launch wait (weights are constant).  A
 * row is the 4-lane sum of its lanes' partials over the super-blocks in
 * order. */
template <int NW, int NP, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) k_hd8(qg_i8_mv_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nsb = a.n / 256;
    const int T = a.tiles[a.nm], GW = gridDim.x * NW, gw = blockIdx.x * NW + w;
    const int ni = gw < T ? ((T - gw + GW - 1) / GW) * nsb : 0; /* this warp's items */
    i8_frag f[NP];
    i8_job jb[NP];
    /* item i: tile gw + (i / nsb) * GW, super-block i % nsb */
    auto item = [&](int i, i8_frag &fr, i8_job &j) {
        int mi, r0;
        mv8_locate(a, gw + (i / nsb) * GW, &mi, &r0);
        j = i8_rows_of(a.type[mi], a.w[mi], a.rb[mi], a.m[mi], r0);
        i8_load(fr, j.type, j.rg, j.rg8, i % nsb);
    };
#pragma unroll
    for (int s = 0; s < NP; s++)
        if (s < ni) item(s, f[s], jb[s]);
    const qg_i8_vec xv = mv8_input(a, NW, img, cs);
    float ag = 0.0f, ag8 = 0.0f;
    for (int i0 = 0; i0 < ni; i0 += NP) {
#pragma unroll
        for (int s = 0; s < NP; s++) {
            const int i = i0 + s;
            if (i >= ni) break;
            const int sb = i % nsb;
            i8_dot(f[s], jb[s].type, xv, sb, ag, ag8);
            if (i + NP < ni) item(i + NP, f[s], jb[s]);
            if (sb == nsb - 1) { /* the tile's last super-block: its rows */
                ag += __shfl_xor_sync(0xffffffffu, ag, 1);
                ag += __shfl_xor_sync(0xffffffffu, ag, 2);
                ag8 += __shfl_xor_sync(0xffffffffu, ag8, 1);
                ag8 += __shfl_xor_sync(0xffffffffu, ag8, 2);
                int mi, r0;
                mv8_locate(a, gw + (i / nsb) * GW, &mi, &r0);
                const int r = r0 + (lane >> 2);
                if ((lane & 3) == 0) {
                    const bool res = mi == 0 && a.add;
                    if (r < a.m[mi]) a.y[mi][r] = res ? a.add[r] + ag : ag;
                    if (r + 8 < a.m[mi]) a.y[mi][r + 8] = res ? a.add[r + 8] + ag8 : ag8;
                }
                ag = 0.0f;
                ag8 = 0.0f;
            }
        }
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

/* How k_gu8 gets its experts: GU_IDS from a.ids (or one dense matrix);
 * GU_BAR the router folded in (qg_i8_router): block b computes router row
 * b (b < X) over x normalized in f32, all blocks meet at a grid barrier,
 * and each block picks the experts itself (gu_route); GU_PART each block
 * sums the router partials of the previous launch and picks the experts
 * itself, no barrier (gu_route_part). */
#define GU_IDS 0
#define GU_BAR 1
#define GU_PART 2

template <int NWH, int NF, int MINB, int RT>
__global__ void __launch_bounds__(2 * NWH * 32, MINB) k_gu8(qg_i8_gu_args a) {
    extern __shared__ __align__(16) uint8_t img[];
    __shared__ float red[2 * NWH][I8_TILE];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    /* folded router: the picks, and the softmax's probabilities */
    __shared__ int32_t s_ids[RT ? GU_RT_KMAX : 1];
    __shared__ float s_wts[RT ? GU_RT_KMAX : 1], s_p[RT ? GU_RT_XMAX : 1];
    /* router partials: the column totals, then the logits (X + 1) */
    __shared__ float s_tot[RT == GU_PART ? GU_RT_XMAX + 1 : 1];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, wi = w >= NWH ? w - NWH : w;
    const int FT = (a.F + I8_TILE - 1) / I8_TILE, T = a.K * FT;
    /* a folded router's row (block b takes row b) goes into registers
     * before the launch wait (weights are constant) */
    float4 wr[GU_RT_V4];
    if (RT == GU_BAR) gu_route_row(a, wr);
    const bool one = i8_norm_begin(a.norm_w, a.n, 2 * NWH, img);
    qg_pdl_wait();
    int tile = blockIdx.x;
    i8_frag f[NF];
    i8_job job = {};
    const int32_t *ids = a.ids;
    if (RT == GU_BAR) {
        gu_route(a, wr, one, cs, img, s_ids, s_wts, s_p);
        ids = s_ids;
    }
    if (RT == GU_PART) {
        gu_route_part(a, one, img, s_tot, s_ids, s_wts, s_p);
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
    if (RT == GU_IDS) i8_build_x(a.x, a.n, a.norm_w, a.eps, one, cs, img);
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
    if (a.early) qg_pdl_launch_next();
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
    if (l->rp_buf) {
        /* router partials: the register kernel's default shapes, whatever
         * the A/B switches ask (the next launch reads the partials) */
        if (nm != 1 || !qg_i8_mv_part_ok(m, n, l->rp_x)) return cudaErrorInvalidValue;
        a.rp.w = l->rp_w;
        a.rp.rb = l->rp_rb;
        a.rp.nw = l->rp_nw;
        a.rp.out = l->rp_buf;
        a.rp.X = l->rp_x;
        const size_t sm = rp_smem_off(n, a.norm_w != nullptr) + rp_smem(l->rp_x);
        if (nsb <= 4) return i8_launch(l, k_mv8<4, 1, 3, true>, 128, sm, T, 6, a);
        if (nsb <= 8) return i8_launch(l, k_mv8<8, 1, 2, true>, 256, sm, T, 4, a);
        if (nsb <= 16) return i8_launch(l, k_mv8<16, 1, 1, true>, 512, sm, T, 2, a);
        return i8_launch(l, k_mv8<8, 2, 1, true>, 256, sm, T, 3, a);
    }
    const bool head = nsb <= 8 && T > 8 * (l->o.n_sm > 0 ? l->o.n_sm : 132);
    if (!head && l->o.i8_mv_cfg[nsb <= 8 ? 0 : 1] < 0) {
        const cudaError_t e = qg_i8s_mv(l, a);
        if (e != cudaErrorNotSupported) return e;
    }
    /* an explicit shape (QG_CUDA_I8_MV / _MV16 / _HEAD, for A/B) */
    switch (head ? l->o.i8_head_cfg : l->o.i8_mv_cfg[nsb <= 8 ? 0 : 1]) {
    case 0: return i8_launch(l, k_mv8<4, 1, 3>, 128, smem, T, 6, a);
    case 1: return i8_launch(l, k_mv8<4, 2, 3>, 128, smem, T, 3, a);
    case 2: return i8_launch(l, k_mv8<8, 1, 2>, 256, smem, T, 4, a);
    case 3: return i8_launch(l, k_mv8<8, 2, 1>, 256, smem, T, 3, a);
    case 4: return i8_launch(l, k_mv8<16, 1, 1>, 512, smem, T, 2, a);
    case 5: return i8_launch(l, k_mv8<4, 4, 2>, 128, smem, T, 4, a);
    /* warps owning whole tiles (k_hd8): warps per block, fragments in
     * flight per warp, blocks per multiprocessor */
    case 6: return i8_launch(l, k_hd8<4, 3, 3>, 128, smem, T, 3, a);
    case 7: return i8_launch(l, k_hd8<4, 2, 4>, 128, smem, T, 4, a);
    case 8: return i8_launch(l, k_hd8<8, 4, 1>, 256, smem, T, 2, a);
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

bool qg_i8_mv_part_ok(const qg_cu_mat *m, int n, int X) {
    /* (staged slices of 16-byte chunks: m % 4; under the default 48 KiB of
     * dynamic shared memory with the largest image) */
    return qg_i8_mv_ok(m, 1, n) && m->m % 4 == 0 && X >= 1 && X <= GU_RT_XMAX &&
           rp_smem_off(n, true) + rp_smem(X) <= 48 * 1024;
}

/* The gate/up kernel's default shapes (by super-blocks per row, nsb) for
 * experts taken as RT says (GU_IDS or GU_PART), over T tiles. */
template <int RT>
static cudaError_t gu_launch_default(const qg_cuda_launch *l, int nsb, size_t smem, int T,
                                     const qg_i8_gu_args &a) {
    if (nsb <= 4) return i8_launch(l, k_gu8<4, 1, 2, RT>, 256, smem, T, 4, a);
    if (nsb <= 8) return i8_launch(l, k_gu8<8, 1, 1, RT>, 512, smem, T, 2, a);
    return i8_launch(l, k_gu8<8, 2, 1, RT>, 512, smem, T, 2, a);
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
    case 0: return i8_launch(l, k_gu8<4, 1, 2, GU_IDS>, 256, smem, T, 4, a);
    case 1: return i8_launch(l, k_gu8<8, 1, 1, GU_IDS>, 512, smem, T, 2, a);
    case 2: return i8_launch(l, k_gu8<8, 2, 1, GU_IDS>, 512, smem, T, 2, a);
    case 3: return i8_launch(l, k_gu8<4, 2, 1, GU_IDS>, 256, smem, T, 3, a);
    case 4: return i8_launch(l, k_gu8<2, 2, 2, GU_IDS>, 128, smem, T, 6, a);
    default: break;
    }
    return gu_launch_default<GU_IDS>(l, nsb, smem, T, a);
}

bool qg_i8_gu_part_ok(const qg_cu_mat *gate, const qg_cu_mat *up, const qg_cu_mat *router, int n,
                      int K, int X, int tiles) {
    return qg_i8_gu_ok(gate, up, n) && router->type == QG_F32 && router->m == X && X >= 1 &&
           X <= GU_RT_XMAX && K >= 1 && K <= GU_RT_KMAX && tiles == n / I8_TILE &&
           i8_img_smem(n, true) + gu_part_smem(X, tiles) <= 48 * 1024;
}

/* The gate/up launch summing router partials (rt->part; see
 * qg_i8_gu_router): the default shapes of qg_i8_gu, the grid as
 * i8_grid sizes it (no barrier, so neither a block per expert nor one wave
 * is needed). */
static cudaError_t gu_part_launch(const qg_cuda_launch *l, int n, int X, const qg_i8_gu_args &a) {
    const int nsb = n / 256, T = a.K * ((a.F + I8_TILE - 1) / I8_TILE);
    const size_t smem = i8_img_smem(n, true) + gu_part_smem(X, a.rt.part_tiles);
    return gu_launch_default<GU_PART>(l, nsb, smem, T, a);
}

cudaError_t qg_i8_gu_router(const qg_cuda_launch *l, const qg_cu_mat *gate, const qg_cu_mat *up,
                            const qg_cu_mat *router, int n, int K, int X, const float *x,
                            const qg_i8_router *rt, float *h, const qg_cu_mat *pf_down) {
    const bool part = rt->part && l->pre_norm &&
                      qg_i8_gu_part_ok(gate, up, router, n, K, X, rt->part_tiles);
    if (!l->o.rgu) return cudaErrorNotSupported;
    if (!part && (!l->o.i8_fit || router->type != QG_F32 || router->m != X ||
                  n % (4 * GU_RT_THREADS) || n > 4 * GU_RT_V4 * GU_RT_THREADS || X > GU_RT_XMAX ||
                  K > GU_RT_KMAX))
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
    /* (the staged down kernel, reading the ids early, stages them itself) */
    if (l->o.prefetch && pf_down && !(rt->flag && (l->o.staged & QG_CUDA_STAGED_DN))) {
        a.pf_down = pf_down->w;
        a.pf_es = pf_down->es;
    }
    a.rt = *rt;
    a.rt.w = (const float *)router->w;
    a.rt.rb = router->rb;
    a.rt.split = l->o.rt_split;
    if (part) return gu_part_launch(l, n, X, a);
    a.rt.part = nullptr;
    {
        const cudaError_t e = qg_i8s_gu_router(l, a);
        if (e != cudaErrorNotSupported) return e;
    }
    const int nsb = n / 256, T = K * ((a.F + I8_TILE - 1) / I8_TILE);
    /* the gate/up kernel's default shapes (qg_i8_gu), each block normalizing
     * x in one read (x in f32 after the image) */
    const int nw = nsb <= 4 ? 8 : 16;
    if (a.norm_w && !i8_build1_ok(n, nw)) return cudaErrorNotSupported;
    const size_t smem = i8_img_smem(n, a.norm_w != nullptr) + (a.norm_w ? sizeof(float) * (size_t)n : 0);
    void (*k)(qg_i8_gu_args) = nsb <= 4   ? k_gu8<4, 1, 2, GU_BAR>
                               : nsb <= 8 ? k_gu8<8, 1, 1, GU_BAR>
                                          : k_gu8<8, 2, 1, GU_BAR>;
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
                     float *y, int *flag) {
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
    a.flag = flag;
    if (qg_i8s_dn_ok(l, down, F, K)) return qg_i8s_dn(l, down, a);
    if (flag) return cudaErrorInvalidValue; /* the staged kernel alone reads it */
    a.early = (l->o.staged & QG_CUDA_STAGED_DN_LAUNCH) != 0;
    const int T = (a.E + I8_TILE - 1) / I8_TILE;
    return i8_launch(l, k_dn8, QG_I8_DN_WARPS * 32, (size_t)K * qg_i8_image_bytes(F), T, 4, a);
}
