/*
 * op_attention_prefill.cu - causal GQA attention of a prefill step on the
 * f16 tensor cores (mma.sync.m16n8k16, f32 accumulate), flash-attention
 * style: tiles of query rows x cache rows, online softmax in f32, the score
 * matrix never materialized.  The cache rows of this step are already
 * written (k_kv_append, or the rope kernel when the executor folds the
 * append); the attention op's launcher (op_attention.cu) calls
 * qg_cu_attention_prefill() for prefill graphs unless the executor runs
 * with f32_prefill, which keeps the f32 SIMT kernel k_attn_prefill.
 *
 * Work split.  A "row" is one (token, q head) pair.  A CTA (4 warps) takes
 * 64 rows that share one kv head: TQ = 64 / GH consecutive tokens times GH
 * q heads of one kv group (GH the largest power of two dividing the group
 * n_head / n_head_kv, at most 64), row r = token r / GH, head r % GH; warp
 * w owns rows 16w .. 16w + 15 (the m16 of the mma).  So every K/V tile
 * staged in shared memory serves all GH heads of the group at once.  The
 * CTA walks the cache rows 0 .. kmax in tiles of BC rows (kmax: the largest
 * position among its tokens, clamped to C - 1); row r sees cache row j iff
 * j <= pos[token of r].  Grid: (n_head_kv * G / GH, ceil(n_tok_max / TQ)),
 * token blocks in reverse order (the longest first); CTAs past the live
 * tokens exit.  Positions are read from the device (any n_tok, any start
 * position, even unsorted positions are handled; only the largest one
 * bounds the rows read).
 *
 * Per tile (BC rows, two block barriers):
 *   K tile landed -> barrier -> V tile requested -> S = Q K^T (mma) ->
 *   mask, online softmax, P -> V tile landed -> barrier -> next K tile
 *   requested -> O += P V (mma).
 * F16 caches: K, V tiles of BC = 32 rows copied with cp.async (rows past
 * kmax zero-filled, never read).  F32 caches: tiles of BC = 16 rows loaded
 * into registers, each value split into hi = f16(v), lo = f16(v - hi) and
 * stored as two f16 planes.  Shared memory rows are padded by 8 halves (16
 * bytes), so the ldmatrix row addresses of one 8x8 matrix fall in 8
 * different 16-byte bank groups.  Static shared memory: 2 x 32 x (hd + 8)
 * halves (17,408 bytes at hd 128) for both cache types.
 * Registers (ptxas, sm_90, hd 128): 235 (F16) / 239 (F32), no spills, so 2
 * CTAs per multiprocessor; q_hi, q_lo (64) and O (64) live in registers for
 * the whole walk.  Larger tiles (BC = 64 for F16, 32 for F32) spill.
 *
 * Fragments (qg_cuda_mma_f16.cuh has the PTX layouts):
 *   S = Q K^T: A = q rows (k = head dims) held in registers for the whole
 *     walk; B = K^T, i.e. b0 = K[key g][dims 2c, 2c+1]: ldmatrix (no
 *     transpose) over K rows gives it.
 *   O = P V: A = P straight from the S accumulators (S n-tiles 2s, 2s+1
 *     make the A fragment of keys 16s .. 16s+15); B = V with k = keys:
 *     ldmatrix.trans over V rows gives b0 = V[keys 2c, 2c+1][dim g].
 *
 * Numerics (activations are not quantized; everything below is f32-class):
 *   scores: q (f32) is split into q_hi = f16(q), q_lo = f16(q - q_hi); an
 *     F16 cache's k is exact in f16; an F32 cache's k is split likewise and
 *     S = q_hi k_hi + q_lo k_hi + q_hi k_lo (the dropped q_lo k_lo is below
 *     2^-22 |q k|).  Each product is thus within 2^-22 |q k| (F16 cache;
 *     3 * 2^-22 with an F32 cache) plus, for components below f16's normal
 *     range (2^-14), an absolute 2^-25 |k| (resp. 2^-25 (|q| + |k|)) where
 *     the lo part is subnormal; the tensor cores add the exact products in
 *     f32.  Scale (log2(e) / sqrt(hd), f32), masking, row maxima, exp2 and
 *     the rescaling of O and of the row sums are f32.
 *   weights: p' = 2^15 exp2(s - m) in [0, 2^15] (the power-of-two factor
 *     keeps the lo parts of probabilities down to 2^-29 out of f16's
 *     subnormals; it cancels in O / l) is split into p_hi + p_lo like q,
 *     and O += p_hi v + p_lo v (+ p_hi v_lo for an F32 cache): each weight
 *     is within 2^-22 p (3 * 2^-22 with an F32 cache) plus 2^-40 |v| per
 *     cache row.  The row sum l adds the f32 p' themselves.
 *   So every product of the two contractions is carried with a relative
 *   error of about 2^-22 (2.4e-7), the class of f32 FMAs, and tests hold the
 *   kernel to the f32 kernel's tolerance.  Values must lie in f16's range
 *   (|q|, |k|, |v| < 65504): F16 caches already require it of k and v.
 */
#include "qg_cuda_internal.cuh"
#include "qg_cuda_mma_f16.cuh"

#include <math.h>

#define PF_WARPS 4
#define PF_THREADS (PF_WARPS * 32)
#define PF_ROWS (PF_WARPS * 16) /* (token, head) rows per CTA */

/* ---- K/V tiles --------------------------------------------------------- */

/* One tile of BC cache rows of one kv head into NS f16 planes [NS][BC][LD]
 * (row j0 + r at r; rows at or past kend are zeros).  fetch() starts the
 * loads, land() completes them into shared memory (visible to the CTA
 * after the next barrier). */
template <typename CT, int HD> struct pf_tile;

/* F16 cache: one plane, cp.async straight into shared memory. */
template <int HD> struct pf_tile<half, HD> {
    static constexpr int BC = 32, NS = 1, LD = HD + 8, CPR = HD / 8; /* 16-byte chunks a row */
    static constexpr int N = BC * CPR / PF_THREADS;
    static_assert(BC * CPR % PF_THREADS == 0, "tile chunks");
    __device__ __forceinline__ void fetch(const half *src, int Dkv, int j0, int kend, half *dst) {
#pragma unroll
        for (int k = 0; k < N; k++) {
            const int idx = (int)threadIdx.x + PF_THREADS * k, r = idx / CPR, c = idx % CPR;
            const int j = j0 + r;
            const bool ok = j < kend;
            qg_cp16_zfill(dst + r * LD + 8 * c, src + (size_t)(ok ? j : 0) * Dkv + 8 * c, ok ? 16 : 0);
        }
        qg_cp_commit();
    }
    __device__ __forceinline__ void land(half *dst) {
        (void)dst;
        qg_cp_wait_all();
    }
};

/* F32 cache: loads into registers, split into hi and lo planes. */
template <int HD> struct pf_tile<float, HD> {
    static constexpr int BC = 16, NS = 2, LD = HD + 8, CPR = HD / 4; /* float4 a row */
    static constexpr int N = BC * CPR / PF_THREADS;
    static_assert(BC * CPR % PF_THREADS == 0, "tile chunks");
    float4 buf[N];
    __device__ __forceinline__ void fetch(const float *src, int Dkv, int j0, int kend, half *dst) {
        (void)dst;
#pragma unroll
        for (int k = 0; k < N; k++) {
            const int idx = (int)threadIdx.x + PF_THREADS * k, r = idx / CPR, c = idx % CPR;
            const int j = j0 + r;
            buf[k] = j < kend ? *(const float4 *)(src + (size_t)j * Dkv + 4 * c)
                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
    __device__ __forceinline__ void land(half *dst) {
#pragma unroll
        for (int k = 0; k < N; k++) {
            const int idx = (int)threadIdx.x + PF_THREADS * k, r = idx / CPR, c = idx % CPR;
            uint2 hi, lo;
            qg_split_f16x2(buf[k].x, buf[k].y, hi.x, lo.x);
            qg_split_f16x2(buf[k].z, buf[k].w, hi.y, lo.y);
            *(uint2 *)(dst + r * LD + 4 * c) = hi;
            *(uint2 *)(dst + (BC + r) * LD + 4 * c) = lo;
        }
    }
};

/* ---- the kernel -------------------------------------------------------- */

struct pf_args {
    const float *q;        /* (Dq, T) */
    const void *kc, *vc;   /* (Dkv, C) of the cache type */
    const int32_t *pos;    /* (T) */
    const int32_t *step;   /* QG_STEP_N */
    float *o;              /* (Dq, T) */
    int nh, nkv, C;
    int lgh;               /* log2(GH): q heads of one kv group per CTA */
    float sl2;             /* log2(e) / sqrt(hd) */
};

template <typename CT, int HD>
__global__ void __launch_bounds__(PF_THREADS, 2) k_attn_prefill_tc(pf_args a) {
    using tile = pf_tile<CT, HD>;
    constexpr int BC = tile::BC, NS = tile::NS, LD = tile::LD;
    constexpr int KS = HD / 16; /* k-steps of S = Q K^T */
    constexpr int NT = BC / 8;  /* n-tiles of S (8 cache rows each) */
    constexpr int ND = HD / 8;  /* n-tiles of O (8 dims each) */
    static_assert(HD % 32 == 0 && HD <= 128 && BC % 16 == 0, "shape");
    __shared__ __align__(16) half Ks[NS * BC * LD], Vs[NS * BC * LD];

    qg_pdl_wait();
    qg_pdl_trigger();
    const int n_tok = a.step[QG_STEP_N_TOK];
    const int GH = 1 << a.lgh, TQ = PF_ROWS >> a.lgh, G = a.nh / a.nkv, per_kv = G >> a.lgh;
    const int t0 = ((int)gridDim.y - 1 - (int)blockIdx.y) * TQ; /* longest blocks first */
    if (t0 >= n_tok) return;
    const int kvh = (int)blockIdx.x / per_kv;
    const int h0 = kvh * G + ((int)blockIdx.x % per_kv) * GH;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const int g = lane >> 2, c4 = lane & 3;
    const int Dq = a.nh * HD, Dkv = a.nkv * HD;

    /* the CTA's largest position: it bounds the cache rows read */
    int kmax = -1;
    for (int i = lane; i < TQ; i += 32)
        if (t0 + i < n_tok) kmax = max(kmax, min(a.pos[t0 + i], a.C - 1));
    kmax = __reduce_max_sync(0xffffffffu, kmax);
    const int kend = kmax + 1;

    /* this thread's two rows (g and g + 8 of its warp's 16): token rt,
     * head rh, position rp (-1: past the live tokens) */
    auto row_t = [&](int i) { return t0 + ((warp * 16 + g + 8 * i) >> a.lgh); };
    auto row_h = [&](int i) { return h0 + ((warp * 16 + g + 8 * i) & (GH - 1)); };
    int rp[2];
#pragma unroll
    for (int i = 0; i < 2; i++) rp[i] = row_t(i) < n_tok ? min(a.pos[row_t(i)], a.C - 1) : -1;
    /* the warp's row positions: tiles past wmax are skipped, tiles up to
     * wmin need no mask */
    const int wmax = __reduce_max_sync(0xffffffffu, max(rp[0], rp[1]));
    const int wmin = __reduce_min_sync(0xffffffffu, min(rp[0], rp[1]));

    /* q as A fragments, hi and lo (dead rows: zeros) */
    uint32_t qh[KS][4], ql[KS][4];
    {
        const bool live0 = row_t(0) < n_tok, live1 = row_t(1) < n_tok;
        const float *q0 = a.q + (live0 ? (size_t)row_t(0) * Dq + (size_t)row_h(0) * HD + 2 * c4 : 0);
        const float *q1 = a.q + (live1 ? (size_t)row_t(1) * Dq + (size_t)row_h(1) * HD + 2 * c4 : 0);
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const float2 z = make_float2(0.0f, 0.0f);
            const float2 x0 = live0 ? *(const float2 *)(q0 + 16 * ks) : z;
            const float2 x1 = live1 ? *(const float2 *)(q1 + 16 * ks) : z;
            const float2 x2 = live0 ? *(const float2 *)(q0 + 16 * ks + 8) : z;
            const float2 x3 = live1 ? *(const float2 *)(q1 + 16 * ks + 8) : z;
            qg_split_f16x2(x0.x, x0.y, qh[ks][0], ql[ks][0]);
            qg_split_f16x2(x1.x, x1.y, qh[ks][1], ql[ks][1]);
            qg_split_f16x2(x2.x, x2.y, qh[ks][2], ql[ks][2]);
            qg_split_f16x2(x3.x, x3.y, qh[ks][3], ql[ks][3]);
        }
    }

    const CT *kc = (const CT *)a.kc + (size_t)kvh * HD, *vc = (const CT *)a.vc + (size_t)kvh * HD;
    /* ldmatrix row addresses of this lane (see the fragment notes):
     * K, x4 = (keys +0..7 | +0..7 | +8..15 | +8..15) x (dims +0 | +8 | +0 | +8)
     * V^T, x4 = (keys +0..7 | +8..15 | +0..7 | +8..15) x (dims +0 | +0 | +8 | +8) */
    const int k_row = qg_ldsm_k_row(lane), k_col = qg_ldsm_k_col(lane);
    const int v_row = qg_ldsm_v_row(lane), v_col = qg_ldsm_v_col(lane);

    float oacc[ND][4];
#pragma unroll
    for (int d = 0; d < ND; d++) oacc[d][0] = oacc[d][1] = oacc[d][2] = oacc[d][3] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f}; /* l: this lane's part */

    tile tl;
    const int n_tiles = (kend + BC - 1) / BC;
    if (n_tiles > 0) tl.fetch(kc, Dkv, 0, kend, Ks);
    for (int it = 0; it < n_tiles; it++) {
        const int j0 = it * BC;
        tl.land(Ks);
        __syncthreads(); /* K tile visible; every warp is past its last P V */
        tl.fetch(vc, Dkv, j0, kend, Vs);
        const bool act = j0 <= wmax; /* warp-uniform */
        float s[NT][4];
        if (act) {
#pragma unroll
            for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            /* S = Q K^T, small terms first: q_hi k_lo (F32 caches), q_lo k_hi, q_hi k_hi */
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
#pragma unroll
                for (int np = 0; np < NT / 2; np++) {
#pragma unroll
                    for (int sp = NS - 1; sp >= 0; sp--) {
                        uint32_t b[4];
                        qg_ldsm_x4(b, Ks + (sp * BC + 16 * np + k_row) * LD + 16 * ks + k_col);
                        if (sp == 0) {
                            qg_mma_f16(s[2 * np], ql[ks], b[0], b[1]);
                            qg_mma_f16(s[2 * np + 1], ql[ks], b[2], b[3]);
                        }
                        qg_mma_f16(s[2 * np], qh[ks], b[0], b[1]);
                        qg_mma_f16(s[2 * np + 1], qh[ks], b[2], b[3]);
                    }
                }
            }
            /* scale to log2 units; mask j > pos of the row */
            const bool need_mask = j0 + BC - 1 > wmin;
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = j0 + 8 * n + 2 * c4 + (e & 1);
                    const float x = s[n][e] * a.sl2;
                    s[n][e] = need_mask && j > rp[e >> 1] ? -INFINITY : x;
                }
            /* online softmax per row; a quad (4 lanes) holds a row */
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < NT; n++) mx = fmaxf(mx, fmaxf(s[n][2 * i], s[n][2 * i + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mn = fmaxf(mrow[i], mx);
                /* nothing seen yet (mn = -inf): p = 0, and O, l stay 0 */
                const float mref = mn == -INFINITY ? 0.0f : mn;
                const float cr = mn == -INFINITY ? 1.0f : exp2f(mrow[i] - mn);
                mrow[i] = mn;
                float ls = 0.0f;
#pragma unroll
                for (int n = 0; n < NT; n++)
#pragma unroll
                    for (int e = 2 * i; e < 2 * i + 2; e++) {
                        const float p = exp2f(s[n][e] - mref) * 32768.0f; /* 2^15 exp2(s - m) */
                        s[n][e] = p;
                        ls += p;
                    }
                lrow[i] = lrow[i] * cr + ls;
#pragma unroll
                for (int d = 0; d < ND; d++) {
                    oacc[d][2 * i] *= cr;
                    oacc[d][2 * i + 1] *= cr;
                }
            }
        }
        tl.land(Vs);
        __syncthreads(); /* V tile visible; every warp is past its Q K^T */
        if (it + 1 < n_tiles) tl.fetch(kc, Dkv, j0 + BC, kend, Ks);
        if (act) {
            /* O += P V, P from the S accumulators, split hi + lo */
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) {
                uint32_t ph[4], pl[4];
                qg_split_f16x2(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
                qg_split_f16x2(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
                qg_split_f16x2(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
                qg_split_f16x2(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
#pragma unroll
                for (int dp = 0; dp < ND / 2; dp++) {
#pragma unroll
                    for (int sp = NS - 1; sp >= 0; sp--) {
                        uint32_t b[4];
                        qg_ldsm_x4_t(b, Vs + (sp * BC + 16 * kk + v_row) * LD + 16 * dp + v_col);
                        if (sp == 0) {
                            qg_mma_f16(oacc[2 * dp], pl, b[0], b[1]);
                            qg_mma_f16(oacc[2 * dp + 1], pl, b[2], b[3]);
                        }
                        qg_mma_f16(oacc[2 * dp], ph, b[0], b[1]);
                        qg_mma_f16(oacc[2 * dp + 1], ph, b[2], b[3]);
                    }
                }
            }
        }
    }

    /* o = O / l (rows that saw nothing: 0) */
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float l = lrow[i];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (row_t(i) >= n_tok) continue;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *op = a.o + (size_t)row_t(i) * Dq + (size_t)row_h(i) * HD + 2 * c4;
#pragma unroll
        for (int d = 0; d < ND; d++)
            *(float2 *)(op + 8 * d) = make_float2(oacc[d][2 * i] * inv, oacc[d][2 * i + 1] * inv);
    }
}

/* ---- launch ------------------------------------------------------------ */

template <typename CT> static cudaError_t prefill_t(const qg_cuda_launch *l, const pf_args &a, int hd,
                                                   dim3 grid) {
    const dim3 blk(PF_THREADS);
    switch (hd) {
    case 32: return qg_cu_launch(l, k_attn_prefill_tc<CT, 32>, grid, blk, 0, a);
    case 64: return qg_cu_launch(l, k_attn_prefill_tc<CT, 64>, grid, blk, 0, a);
    case 96: return qg_cu_launch(l, k_attn_prefill_tc<CT, 96>, grid, blk, 0, a);
    case 128: return qg_cu_launch(l, k_attn_prefill_tc<CT, 128>, grid, blk, 0, a);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t qg_cu_attention_prefill(const qg_cuda_launch *l) {
    const qg_op_params *p = &l->n->p;
    const qg_tensor *kt = qg_cu_in(l, 3);
    if (p->n_head_kv < 1 || p->n_head % p->n_head_kv != 0) return cudaErrorInvalidValue;
    const int G = p->n_head / p->n_head_kv;
    int lgh = 0; /* GH = 2^lgh: the largest power of two dividing G, <= 64 */
    while (lgh < 6 && G % (2 << lgh) == 0) lgh++;
    pf_args a = {};
    a.q = qg_cu_in_ptr<const float>(l, 0);
    a.kc = qg_cu_in_ptr<const void>(l, 3);
    a.vc = qg_cu_in_ptr<const void>(l, 4);
    a.pos = qg_cu_in_ptr<const int32_t>(l, 5);
    a.step = l->step;
    a.o = qg_cu_out_ptr<float>(l, 0);
    a.nh = p->n_head;
    a.nkv = p->n_head_kv;
    a.C = (int)kt->ne[1];
    a.lgh = lgh;
    a.sl2 = (float)(1.4426950408889634 / sqrt((double)p->head_dim));
    const int TQ = PF_ROWS >> lgh, T = l->g->n_tok_max;
    const dim3 grid((unsigned)(p->n_head >> lgh), (unsigned)((T + TQ - 1) / TQ));
    if (kt->type == QG_F16) return prefill_t<half>(l, a, p->head_dim, grid);
    if (kt->type == QG_F32) return prefill_t<float>(l, a, p->head_dim, grid);
    return cudaErrorInvalidValue;
}
