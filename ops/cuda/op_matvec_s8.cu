/*
 * op_matvec_s8.cu - the integer decode products of op_matvec_i8.cu with
 * their weights staged in shared memory by the copy engine (sm_90 bulk
 * copies): the same tiles, the same per-warp work and summation order,
 * the same results for the same warp counts, a different way of getting
 * the bytes in.
 *
 * Why: a register-fed warp issues its tile's loads, waits one memory
 * latency, multiplies, and only then asks for the next tile, so each
 * block has one or two tiles in flight and a decode product spends most
 * of its time waiting (Nsight: 20-30% of the copy bandwidth on the 30B's
 * shapes).  Here each block owns a ring of S stages in shared memory, one
 * tile each, and keeps all of them loading: one thread announces a
 * stage's bytes on its transaction barrier (qg_cuda_tma.cuh), the warp
 * issues the copies, every warp waits on the barrier, multiplies from
 * shared memory, and the stage is refilled with the block's tile S ahead.
 * Dense weights are constant, so their first S tiles are asked for before
 * the programmatic-launch wait, while the previous kernel still runs.
 *
 * Layout of a stage: the 16 rows of a tile of each matrix it holds (gate
 * then up for k_gu8s; one tile per chosen expert for k_dn8s), row j at
 * j * rs.  Rows whose length is a multiple of 128 bytes (Q4_K) would put
 * the eight rows a warp reads at once in the same shared-memory banks, so
 * they are copied one per row with rs = rb + 16; other rows (Q6_K) are
 * one copy of the tile's span, rs = rb, the span's last (< 16) bytes
 * copied by the issuing thread.  A tile past a matrix's last row copies
 * only the rows that exist; the fragments read the last one instead.
 *
 * With `early` (QG_CUDA_EARLY) a kernel lets the next one launch right
 * after its own launch wait (griddepcontrol.launch_dependents), so the
 * next product's copies overlap this one's work; k_dn8s then reads the
 * expert ids (written by the router, two kernels back, complete before
 * the gate/up kernel's wait returned) before its own wait, through L2.
 */
#include "qg_cuda_i8_img.cuh"
#include "qg_cuda_i8_ops.cuh"
#include "qg_cuda_internal.cuh"
#include "qg_cuda_tma.cuh"

/* Most stages of a block's ring. */
#define S8_MAX_STAGES 8
/* Dynamic shared memory the staged kernels may use: the 227 KiB a block
 * of sm_90 may have, less room for their static arrays (under 4 KiB). */
#define S8_SMEM_MAX (223 * 1024)

/* ---- staging plan ------------------------------------------------------- */

/* Bytes between a staged tile's rows for rows of rb bytes. */
__host__ __device__ __forceinline__ unsigned s8_rs(size_t rb) {
    return (unsigned)(rb % 128 == 0 ? rb + 16 : rb);
}
/* Bytes a staged 16-row tile of rb-byte rows takes (128-byte multiple). */
__host__ __device__ __forceinline__ unsigned s8_tile_bytes(size_t rb) {
    return (16u * s8_rs(rb) + 127u) & ~127u;
}
/* Start of the stages in dynamic shared memory, after the input image(s). */
__host__ __device__ __forceinline__ size_t s8_stage0(size_t img) { return (img + 127) & ~(size_t)127; }

/* Bytes of the bulk copies of nr rows of rb bytes (the announced part). */
__device__ __forceinline__ unsigned s8_bulk_bytes(size_t rb, int nr) {
    return rb % 128 == 0 ? (unsigned)(nr * rb) : (unsigned)((nr * rb) & ~(size_t)15);
}

/* Lane 0: the span's tail (bytes past its last 16-byte multiple), copied
 * plainly before the stage's arrival (which publishes them). */
__device__ __forceinline__ void s8_tail(uint8_t *dst, const uint8_t *src, size_t rb, int nr) {
    if (rb % 128 == 0) return;
    const size_t n = nr * rb, b = n & ~(size_t)15;
    for (size_t i = b; i < n; i++) dst[i] = src[i];
}

/* Warp: the bulk copies of rows [0, nr) at src (rb bytes apart) into dst
 * (s8_rs apart), lanes lane0, lane0 + lanes, ... taking one row each. */
__device__ __forceinline__ void s8_copy(uint8_t *dst, const uint8_t *src, size_t rb, int nr,
                                        uint64_t *bar, int lane0, int lanes) {
    const int lane = threadIdx.x & 31;
    if (rb % 128 == 0) {
        const unsigned rs = s8_rs(rb);
        for (int j = lane - lane0; j >= 0 && j < nr; j += lanes)
            qg_bulk_copy(dst + (size_t)j * rs, src + (size_t)j * rb, (unsigned)rb, bar);
    } else if (lane == lane0) {
        const unsigned b = s8_bulk_bytes(rb, nr);
        if (b) qg_bulk_copy(dst, src, b, bar);
    }
}

/* Row pointers of this lane's rows g, g + 8 of a staged tile of nr rows. */
__device__ __forceinline__ void s8_rows(const uint8_t *tile, size_t rb, int nr, const uint8_t **rg,
                                        const uint8_t **rg8) {
    const int g = (threadIdx.x & 31) >> 2;
    const unsigned rs = s8_rs(rb);
    *rg = tile + (size_t)min(g, nr - 1) * rs;
    *rg8 = tile + (size_t)min(g + 8, nr - 1) * rs;
}

/* ag, ag8 += super-blocks sb0, sb0 + step, ... of a staged tile. */
__device__ __forceinline__ void s8_dot(int type, const uint8_t *tile, size_t rb, int nr, int sb0,
                                       int step, int nsb, const qg_i8_vec &xv, float &ag,
                                       float &ag8) {
    const uint8_t *rg, *rg8;
    s8_rows(tile, rb, nr, &rg, &rg8);
    for (int sb = sb0; sb < nsb; sb += step) {
        i8_frag f;
        i8_load<true>(f, type, rg, rg8, sb);
        i8_dot(f, type, xv, sb, ag, ag8);
    }
}

/* Thread 0 makes the block's stage barriers; the block then syncs. */
__device__ __forceinline__ void s8_init(uint64_t *bar, int S) {
    if (threadIdx.x == 0)
        for (int s = 0; s < S; s++) qg_mbar_init(&bar[s], 1);
    __syncthreads();
}

/* Tiles of this block (tile blockIdx.x + i * gridDim.x, i < return). */
__device__ __forceinline__ int s8_my_tiles(int T) {
    return (int)blockIdx.x < T ? (T - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x : 0;
}

/* ---- dense: up to three matrices ---------------------------------------- */

/* Matrix i and first row r0 of dense tile t (as mv8_locate). */
__device__ __forceinline__ void s8_locate(const qg_i8_mv_args &a, int t, int *i, int *r0) {
    int k = 0;
    while (t >= a.tiles[k + 1]) k++;
    *i = k;
    *r0 = 16 * (t - a.tiles[k]);
}

/* Warp 0: stage s <- dense tile t. */
__device__ __forceinline__ void mv8s_issue(const qg_i8_mv_args &a, int t, uint8_t *stage,
                                           uint64_t *bar) {
    int mi, r0;
    s8_locate(a, t, &mi, &r0);
    const int nr = min(16, a.m[mi] - r0);
    const uint8_t *src = a.w[mi] + (size_t)r0 * a.rb[mi];
    qg_fence_async();
    if ((threadIdx.x & 31) == 0) {
        s8_tail(stage, src, a.rb[mi], nr);
        qg_mbar_expect(bar, s8_bulk_bytes(a.rb[mi], nr));
    }
    __syncwarp();
    s8_copy(stage, src, a.rb[mi], nr, bar, 0, 32);
}

template <int NW>
__global__ void __launch_bounds__(NW * 32, 1) k_mv8s(qg_i8_mv_args a) {
    extern __shared__ __align__(128) uint8_t img[];
    __shared__ float red[NW][16];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    __shared__ uint64_t bar[S8_MAX_STAGES];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, T = a.tiles[a.nm];
    const int nt = s8_my_tiles(T), S = min(nt, a.stages);
    uint8_t *stg = img + s8_stage0(i8_img_smem(a.n, a.norm_w != nullptr));
    s8_init(bar, S);
    /* the weights are constant: the first S tiles go out before the
     * previous kernel has finished */
    if (w == 0)
        for (int i = 0; i < S; i++)
            mv8s_issue(a, blockIdx.x + i * gridDim.x, stg + (size_t)i * a.stage_bytes, &bar[i]);
    const bool one = i8_norm_begin(a.norm_w, a.n, NW, img);
    qg_pdl_wait();
    if (a.early) qg_pdl_launch_next();
    const float *x = a.x;
    if (a.last_col) x += (size_t)(a.step[QG_STEP_N_TOK] - 1) * a.n;
    i8_build_x(x, a.n, a.norm_w, a.eps, one, cs, img);
    const qg_i8_vec xv = qg_i8_at(img, a.n);
    for (int i = 0; i < nt; i++) {
        const int t = blockIdx.x + i * gridDim.x, s = i % S;
        int mi, r0;
        s8_locate(a, t, &mi, &r0);
        const int nr = min(16, a.m[mi] - r0);
        uint8_t *stage = stg + (size_t)s * a.stage_bytes;
        qg_mbar_wait(&bar[s], (unsigned)(i / S) & 1u);
        float ag = 0.0f, ag8 = 0.0f;
        s8_dot(a.type[mi], stage, a.rb[mi], nr, w, NW, nsb, xv, ag, ag8);
        i8_warp_rows(ag, ag8, red[w]);
        __syncthreads(); /* stage s read by every warp */
        if (w == 0 && i + S < nt) mv8s_issue(a, t + S * gridDim.x, stage, &bar[s]);
        if (threadIdx.x < 16 && (int)threadIdx.x < nr) {
            float sum = 0.0f;
#pragma unroll
            for (int k = 0; k < NW; k++) sum += red[k][threadIdx.x];
            const int r = r0 + threadIdx.x;
            a.y[mi][r] = (mi == 0 && a.add) ? a.add[r] + sum : sum;
        }
        __syncthreads();
    }
}

/* ---- gate / up of the chosen experts -------------------------------------- */

/* Expert of gate/up tile t (its k = t / FT), or -1 when ids[k] is out of
 * range; ids NULL: the dense FFN (expert 0). */
__device__ __forceinline__ int gu8s_expert(const qg_i8_gu_args &a, int t, int FT) {
    const int e = a.ids ? a.ids[t / FT] : 0;
    return e >= 0 && e < a.X ? e : -1;
}

/* Warp 0: stage <- gate rows then up rows of tile t (nothing for an
 * invalid expert: the phase completes on the arrival alone). */
__device__ __forceinline__ void gu8s_issue(const qg_i8_gu_args &a, int t, int FT, uint8_t *stage,
                                           uint64_t *bar) {
    const int e = gu8s_expert(a, t, FT), r0 = 16 * (t % FT), nr = min(16, a.F - r0);
    uint8_t *up = stage + s8_tile_bytes(a.rbg);
    const uint8_t *sg = e < 0 ? nullptr : a.wg + (size_t)e * a.esg + (size_t)r0 * a.rbg;
    const uint8_t *su = e < 0 ? nullptr : a.wu + (size_t)e * a.esu + (size_t)r0 * a.rbu;
    qg_fence_async();
    if ((threadIdx.x & 31) == 0) {
        unsigned b = 0;
        if (e >= 0) {
            s8_tail(stage, sg, a.rbg, nr);
            s8_tail(up, su, a.rbu, nr);
            b = s8_bulk_bytes(a.rbg, nr) + s8_bulk_bytes(a.rbu, nr);
        }
        qg_mbar_expect(bar, b);
    }
    __syncwarp();
    if (e < 0) return;
    s8_copy(stage, sg, a.rbg, nr, bar, 0, 16);
    s8_copy(up, su, a.rbu, nr, bar, 16, 16);
}

template <int NWH>
__global__ void __launch_bounds__(2 * NWH * 32, 1) k_gu8s(qg_i8_gu_args a) {
    extern __shared__ __align__(128) uint8_t img[];
    __shared__ float red[2 * NWH][16];
    __shared__ float cs[QG_SUMSQ_CHUNKS];
    __shared__ uint64_t bar[S8_MAX_STAGES];
    const int w = threadIdx.x >> 5, nsb = a.n / 256, wi = w >= NWH ? w - NWH : w;
    const bool up = w >= NWH;
    const int FT = (a.F + 15) / 16, T = a.K * FT;
    const int nt = s8_my_tiles(T), S = min(nt, a.stages);
    uint8_t *stg = img + s8_stage0(i8_img_smem(a.n, a.norm_w != nullptr));
    s8_init(bar, S);
    const bool one = i8_norm_begin(a.norm_w, a.n, 2 * NWH, img);
    qg_pdl_wait();
    /* the expert ids are known: the first S tiles go out, then the L2
     * requests for the chosen experts' down rows (the next kernel's) */
    if (w == 0)
        for (int i = 0; i < S; i++)
            gu8s_issue(a, blockIdx.x + i * gridDim.x, FT, stg + (size_t)i * a.stage_bytes, &bar[i]);
    if (a.early) qg_pdl_launch_next();
    if (a.pf_down)
        for (int k = 0; k < a.K; k++) {
            const int e = a.ids[k];
            if (e >= 0 && e < a.X) qg_prefetch_grid(a.pf_down + (size_t)e * a.pf_es, a.pf_es);
        }
    i8_build_x(a.x, a.n, a.norm_w, a.eps, one, cs, img);
    const qg_i8_vec xv = qg_i8_at(img, a.n);
    for (int i = 0; i < nt; i++) {
        const int t = blockIdx.x + i * gridDim.x, s = i % S;
        const int k = t / FT, r0 = 16 * (t - k * FT), nr = min(16, a.F - r0);
        const int e = gu8s_expert(a, t, FT);
        uint8_t *stage = stg + (size_t)s * a.stage_bytes;
        qg_mbar_wait(&bar[s], (unsigned)(i / S) & 1u);
        float ag = 0.0f, ag8 = 0.0f;
        if (e >= 0) {
            if (up) s8_dot(a.tu, stage + s8_tile_bytes(a.rbg), a.rbu, nr, wi, NWH, nsb, xv, ag, ag8);
            else s8_dot(a.tg, stage, a.rbg, nr, wi, NWH, nsb, xv, ag, ag8);
        }
        i8_warp_rows(ag, ag8, red[w]);
        __syncthreads();
        if (w == 0 && i + S < nt) gu8s_issue(a, t + S * gridDim.x, FT, stage, &bar[s]);
        if (threadIdx.x < 16 && (int)threadIdx.x < nr) {
            float gs = 0.0f, us = 0.0f;
#pragma unroll
            for (int j = 0; j < NWH; j++) {
                gs += red[j][threadIdx.x];
                us += red[NWH + j][threadIdx.x];
            }
            a.h[(size_t)k * a.F + r0 + threadIdx.x] =
                e >= 0 ? qg_silu(gs) * us : __int_as_float(0x7fc00000);
        }
        __syncthreads();
    }
}

/* ---- down projection + weighted sum --------------------------------------- */

#define DN_NW QG_I8_DN_WARPS

/* Expert k's id, or -1 when out of range; early: read through L2 before
 * the launch wait (see the header). */
__device__ __forceinline__ int dn8s_expert(const qg_i8_dn_args &a, int k, bool early) {
    const int e = early ? __ldcg(a.ids + k) : a.ids[k];
    return e >= 0 && e < a.X ? e : -1;
}

/* Warp 0: stage <- 16 rows of every chosen expert at tile t, expert k's
 * rows at k * s8_tile_bytes(rb). */
__device__ __forceinline__ void dn8s_issue(const qg_i8_dn_args &a, int t, bool early,
                                           uint8_t *stage, uint64_t *bar) {
    const int r0 = 16 * t, nr = min(16, a.E - r0), lane = threadIdx.x & 31;
    const unsigned tb = s8_tile_bytes(a.rb);
    qg_fence_async();
    if (lane == 0) {
        unsigned b = 0;
        for (int k = 0; k < a.K; k++) {
            const int e = dn8s_expert(a, k, early);
            if (e < 0) continue;
            s8_tail(stage + (size_t)k * tb, a.w + (size_t)e * a.es + (size_t)r0 * a.rb, a.rb, nr);
            b += s8_bulk_bytes(a.rb, nr);
        }
        qg_mbar_expect(bar, b);
    }
    __syncwarp();
    for (int k = 0; k < a.K; k++) {
        const int e = dn8s_expert(a, k, early);
        if (e < 0) continue;
        /* two experts per pass of the warp: lanes 0-15 and 16-31 */
        s8_copy(stage + (size_t)k * tb, a.w + (size_t)e * a.es + (size_t)r0 * a.rb, a.rb, nr, bar,
                16 * (k & 1), 16);
    }
}

__global__ void __launch_bounds__(DN_NW * 32, 1) k_dn8s(qg_i8_dn_args a) {
    extern __shared__ __align__(128) uint8_t img[];
    __shared__ float red[DN_NW][16];
    __shared__ float sw[QG_I8_DN_KMAX];
    __shared__ int s_bad;
    __shared__ uint64_t bar[S8_MAX_STAGES];
    const int w = threadIdx.x >> 5, nsb = a.F / 256, T = (a.E + 15) / 16;
    const int nt = s8_my_tiles(T), S = min(nt, a.stages);
    const size_t ib = qg_i8_image_bytes(a.F);
    const unsigned tb = s8_tile_bytes(a.rb);
    uint8_t *stg = img + s8_stage0((size_t)a.K * ib);
    s8_init(bar, S);
    if (a.ids_early && w == 0)
        for (int i = 0; i < S; i++)
            dn8s_issue(a, blockIdx.x + i * gridDim.x, true, stg + (size_t)i * a.stage_bytes, &bar[i]);
    qg_pdl_wait();
    if (!a.ids_early && w == 0)
        for (int i = 0; i < S; i++)
            dn8s_issue(a, blockIdx.x + i * gridDim.x, false, stg + (size_t)i * a.stage_bytes, &bar[i]);
    if (a.early) qg_pdl_launch_next();
    if (threadIdx.x == 0) s_bad = 0;
    __syncthreads();
    if (threadIdx.x < a.K) {
        if (dn8s_expert(a, threadIdx.x, false) < 0) s_bad = 1;
        sw[threadIdx.x] = a.wts[threadIdx.x];
    }
    i8_build(a.h, a.F, a.K, nullptr, 1.0f, img);
    for (int i = 0; i < nt; i++) {
        const int t = blockIdx.x + i * gridDim.x, s = i % S;
        const int r0 = 16 * t, nr = min(16, a.E - r0);
        uint8_t *stage = stg + (size_t)s * a.stage_bytes;
        qg_mbar_wait(&bar[s], (unsigned)(i / S) & 1u);
        float ag = 0.0f, ag8 = 0.0f;
        /* pair p = (expert p / nsb, super-block p % nsb), warp w takes
         * p = w, w + DN_NW, ... (k_dn8's order) */
        for (int p = w; p < a.K * nsb; p += DN_NW) {
            const int k = p / nsb;
            if (s_bad) break;
            float pg = 0.0f, pg8 = 0.0f;
            const uint8_t *rg, *rg8;
            s8_rows(stage + (size_t)k * tb, a.rb, nr, &rg, &rg8);
            i8_frag f;
            i8_load<true>(f, a.type, rg, rg8, p % nsb);
            i8_dot(f, a.type, qg_i8_at(img + (size_t)k * ib, a.F), p % nsb, pg, pg8);
            ag = fmaf(sw[k], pg, ag);
            ag8 = fmaf(sw[k], pg8, ag8);
        }
        i8_warp_rows(ag, ag8, red[w]);
        __syncthreads();
        if (w == 0 && i + S < nt) dn8s_issue(a, t + S * gridDim.x, false, stage, &bar[s]);
        if (threadIdx.x < 16 && (int)threadIdx.x < nr) {
            float sum = 0.0f;
#pragma unroll
            for (int k = 0; k < DN_NW; k++) sum += red[k][threadIdx.x];
            if (s_bad) sum = __int_as_float(0x7fc00000);
            const int r = r0 + threadIdx.x;
            a.y[r] = a.add ? a.add[r] + sum : sum;
        }
        __syncthreads();
    }
}

/* ---- launchers ------------------------------------------------------------ */

/* Can tiles of the matrix at w (experts es bytes apart, 0: one matrix) be
 * copied by the copy engine?  Tile starts are then 16-byte aligned: a
 * tile starts 16 k rows in, and rows of 128 k bytes are copied singly. */
static bool s8_aligned(const void *w, size_t es) { return (uintptr_t)w % 16 == 0 && es % 16 == 0; }

/* Stages of stage_bytes each that fit `budget` bytes and the block's
 * shared memory beside img bytes of images; 0: not even one. */
static int s8_stages(size_t img, unsigned stage_bytes, size_t budget, int tiles_per_block) {
    const size_t room = S8_SMEM_MAX - s8_stage0(img);
    size_t s = budget / stage_bytes;
    if (s * stage_bytes > room) s = room / stage_bytes;
    if (s > S8_MAX_STAGES) s = S8_MAX_STAGES;
    if (s > (size_t)tiles_per_block) s = tiles_per_block;
    if (s == 0 && stage_bytes <= room) s = 1;
    return (int)s;
}

/* Blocks of a staged kernel over T tiles: one per multiprocessor at most. */
static int s8_grid(const qg_cuda_launch *l, int T) {
    const int n = l->o.n_sm > 0 ? l->o.n_sm : 132;
    return T < n ? (T > 0 ? T : 1) : n;
}

static size_t s8_budget(const qg_cuda_launch *l) { return (size_t)l->o.stage_kb * 1024; }

bool qg_s8_mv(const qg_cuda_launch *l, qg_i8_mv_args *a, cudaError_t *e) {
    if (!l->o.stage || a->nm < 1) return false;
    unsigned sb = 0;
    for (int i = 0; i < a->nm; i++) {
        if (!s8_aligned(a->w[i], 0)) return false;
        sb = s8_tile_bytes(a->rb[i]) > sb ? s8_tile_bytes(a->rb[i]) : sb;
    }
    const int T = a->tiles[a->nm], G = s8_grid(l, T), nsb = a->n / 256;
    const size_t img = i8_img_smem(a->n, a->norm_w != nullptr);
    /* the lm_head (many tiles, nothing after it to overlap) takes a deeper
     * ring */
    const size_t budget = T > 8 * G ? 3 * s8_budget(l) / 2 : s8_budget(l);
    a->stages = s8_stages(img, sb, budget, (T + G - 1) / G);
    if (a->stages < 1) return false;
    a->stage_bytes = sb;
    a->early = l->o.early;
    const size_t smem = s8_stage0(img) + (size_t)a->stages * sb;
    if (nsb <= 4) *e = qg_cu_launch(l, k_mv8s<4>, dim3(G), dim3(128), smem, *a);
    else if (nsb <= 8) *e = qg_cu_launch(l, k_mv8s<8>, dim3(G), dim3(256), smem, *a);
    else *e = qg_cu_launch(l, k_mv8s<16>, dim3(G), dim3(512), smem, *a);
    return true;
}

bool qg_s8_gu(const qg_cuda_launch *l, qg_i8_gu_args *a, cudaError_t *e) {
    if (!l->o.stage || !s8_aligned(a->wg, a->esg) || !s8_aligned(a->wu, a->esu))
        return false;
    const int T = a->K * ((a->F + 15) / 16), G = s8_grid(l, T), nsb = a->n / 256;
    const unsigned sb = s8_tile_bytes(a->rbg) + s8_tile_bytes(a->rbu);
    const size_t img = i8_img_smem(a->n, a->norm_w != nullptr);
    a->stages = s8_stages(img, sb, s8_budget(l), (T + G - 1) / G);
    if (a->stages < 1) return false;
    a->stage_bytes = sb;
    a->early = l->o.early;
    const size_t smem = s8_stage0(img) + (size_t)a->stages * sb;
    if (nsb <= 4) *e = qg_cu_launch(l, k_gu8s<4>, dim3(G), dim3(256), smem, *a);
    else *e = qg_cu_launch(l, k_gu8s<8>, dim3(G), dim3(512), smem, *a);
    return true;
}

bool qg_s8_dn(const qg_cuda_launch *l, qg_i8_dn_args *a, bool ids_early, cudaError_t *e) {
    if (!l->o.stage || !s8_aligned(a->w, a->es)) return false;
    const int T = (a->E + 15) / 16, G = s8_grid(l, T);
    const unsigned sb = (unsigned)a->K * s8_tile_bytes(a->rb);
    const size_t img = (size_t)a->K * qg_i8_image_bytes(a->F);
    a->stages = s8_stages(img, sb, s8_budget(l), (T + G - 1) / G);
    if (a->stages < 1) return false;
    a->stage_bytes = sb;
    a->early = l->o.early;
    a->ids_early = ids_early && l->o.early;
    const size_t smem = s8_stage0(img) + (size_t)a->stages * sb;
    *e = qg_cu_launch(l, k_dn8s, dim3(G), dim3(DN_NW * 32), smem, *a);
    return true;
}

cudaError_t qg_s8_prepare(void) {
    /* devices before sm_90 (less shared memory) never take these kernels
     * (the executor's o.stage) */
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
        return cudaGetLastError();
    if (optin < S8_SMEM_MAX + 4096) return cudaSuccess;
    const void *k[] = {(const void *)k_mv8s<4>, (const void *)k_mv8s<8>, (const void *)k_mv8s<16>,
                       (const void *)k_gu8s<4>, (const void *)k_gu8s<8>, (const void *)k_dn8s};
    for (const void *f : k) {
        const cudaError_t e =
            cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, S8_SMEM_MAX);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}
