/*
 * op_attention_decode_tc.cu - attention of one decode token over an F16
 * KV cache on the f16 tensor cores: split-K over the cache rows, the GQA
 * group's q heads as the rows of the mma, online softmax in f32.
 *
 * Why: the f32 SIMT decode kernel (op_attention.cu) has each q head's warp
 * read every K and V row of its chunk from shared memory and spend an FMA
 * per element per head; at 4096 cache rows that made attention 21 us of a
 * 53 us layer (H100) against 2.8 us of cache bytes.  Here one warp scores
 * 16 cache rows against all (up to 8) q heads of its KV head with 16 mmas
 * and weights V with 16 more.
 *
 * Work split.  A CTA (8 warps by default) takes one slot (gw <= 8 q heads sharing a
 * kv head) and one chunk of cache rows (a split); warp w of NW walks
 * tiles w, w + NW, ... of 16 rows of the chunk, each staged by cp.async
 * in the warp's own ring of NST stages in shared memory (no block barrier
 * in the walk).  The warps' (max, sum, o) are merged in shared memory in a
 * fixed order; with more than one split, each CTA writes its merged
 * partials and the last CTA of the slot (an atomic ticket) merges the
 * splits in split order and writes o (a thread per head and 4 dims,
 * all splits' loads in flight).  With the rope folded in, each warp's
 * first two tiles are requested before the programmatic-launch wait (no
 * kernel of the step writes this layer's cache before this one).  Chunks are a multiple of 16 rows,
 * at least a.min_chunk, sized so that a step with rows cache rows uses at
 * most a.ns_max splits: the grid (slots x ns_max) serves every step, CTAs
 * past the live splits exit.
 *
 * The mma rows are the split q (see below): row g (g < 8) is q_hi of head
 * g, row g + 8 is q_lo of head g, so S = Q K^T gives, per head, the hi and
 * lo partial scores in the two rows a lane holds (c0, c1 and c2, c3 of the
 * accumulator), added in f32; heads g >= gw are zero rows.  P V likewise:
 * A = (p_hi of head g | p_lo of head g), so O's rows g and g + 8 are the
 * two halves of head g's weighted sum, added at the end.  Nothing of the
 * mma is padding.
 *
 * Numerics (f32-class, as op_attention_prefill.cu's kernel): q (f32) is
 * carried as q_hi = f16(q) + q_lo = f16(q - q_hi) (about 22 bits), the
 * cache's k and v are exact in f16, products are exact and the tensor
 * cores add them in f32; scores are scaled to log2 units in f32; p' =
 * 2^15 exp2(s - m) (the power of two keeps the lo parts of small weights
 * out of f16's subnormals and cancels in o / l) is split like q; the row
 * sums add the f32 p' themselves; the merges rescale by exp2 of the
 * maxima's differences in f32.
 *
 * Rope folded in (a.rope): the CTA normalizes and rotates its q heads and
 * this step's k with the rope kernel's arithmetic (warp_rope), keeps this
 * step's K/V row rounded as the cache stores it and puts it into the
 * staged tile in place of the cache row (which may not be written yet),
 * and the first CTA of the kv head holding that row appends it.
 */
#include "qg_cuda_bulk.cuh"
#include "qg_cuda_attention.cuh"
#include "qg_cuda_mma_f16.cuh"

#include <math.h>

#define DT_ROWS 16 /* cache rows per warp tile */
#define DT_HEADS 8 /* most q heads per CTA (the mma's rows hold hi and lo) */

/* Dynamic shared memory of the kernel at head_dim hd with NW warps of NST
 * stages: each warp's ring of NST (K, V) tiles of DT_ROWS rows padded by 8
 * halves (ldmatrix row addresses of one 8x8 matrix fall in 8 different
 * 16-byte bank groups), reused after the walk for the warps' o partials
 * (NW x DT_HEADS x hd floats). */
static constexpr size_t dt_tile_halves(int hd) { return (size_t)DT_ROWS * (hd + 8); }
static constexpr size_t dt_smem(int hd, int nw, int nst) {
    return (size_t)nw * nst * 2 * dt_tile_halves(hd) * sizeof(half) >
                   (size_t)nw * DT_HEADS * hd * sizeof(float)
               ? (size_t)nw * nst * 2 * dt_tile_halves(hd) * sizeof(half)
               : (size_t)nw * DT_HEADS * hd * sizeof(float);
}

/* cp.async.wait_group N: at most N of this thread's groups still pending. */
template <int N> __device__ __forceinline__ void dt_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <int HD, int NW, int NST>
__global__ void __launch_bounds__(NW * 32) k_attn_decode_tc(at_args a) {
    constexpr int DT_WARPS = NW, DT_THREADS = NW * 32;
    constexpr int LD = HD + 8, KS = HD / 16, ND = HD / 8, CPR = HD / 8; /* 16-byte chunks a row */
    constexpr int TILE = DT_ROWS * LD;
    static_assert(HD % 32 == 0 && HD <= 128, "head_dim");
    extern __shared__ __align__(16) uint8_t dt_dyn[];
    __shared__ __align__(16) float Qs[DT_HEADS][HD];
    __shared__ __align__(16) float Kn[HD], Vn[HD];
    __shared__ float Mw[DT_WARPS][DT_HEADS], Lw[DT_WARPS][DT_HEADS];
    __shared__ float Fw[DT_WARPS][DT_HEADS], Mh[DT_HEADS], Lh[DT_HEADS]; /* the warps' merge */
    __shared__ float Fs[DT_HEADS][64];
    __shared__ int s_last;

    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5, tid = (int)threadIdx.x;
    const int g = lane >> 2, c4 = lane & 3;
    if (a.early) qg_pdl_launch_next(); /* the output projection stages its weights */
    /* pos is a step input (copied in before the step): readable before
     * the wait */
    const int rows = a.pos[0] + 1, gw = a.gw, nsx = a.ns_max;
    const int slot = (int)blockIdx.x / nsx, s = (int)blockIdx.x - slot * nsx;
    int chunk = (rows + nsx - 1) / nsx;
    chunk = (chunk + DT_ROWS - 1) / DT_ROWS * DT_ROWS;
    if (chunk < a.min_chunk) chunk = a.min_chunk;
    const int ns = (rows + chunk - 1) / chunk;
    const bool live = slot < a.nh / gw && s < ns;
    const int j0 = s * chunk, j1 = min(rows, j0 + chunk);
    const int h0 = slot * gw, G = a.nh / a.nkv, kvh = h0 / G;
    const half *kb = (const half *)a.kc + (size_t)kvh * HD;
    const half *vb = (const half *)a.vc + (size_t)kvh * HD;
    const int nt = (j1 - j0 + DT_ROWS - 1) / DT_ROWS; /* tiles of the chunk */

    /* this warp's ring: stage st holds K at [st][0], V at [st][1];
     * fetch(t, st) stages tile t of the chunk (rows past j1 zero-filled)
     * and commits one cp.async group, empty when t >= nt */
    half *ring = (half *)dt_dyn + (size_t)warp * NST * 2 * TILE;
    auto fetch = [&](int t, int st) {
        if (t < nt) {
            half *kd = ring + (size_t)st * 2 * TILE, *vd = kd + TILE;
            const int base = j0 + t * DT_ROWS;
#pragma unroll
            for (int i = 0; i < DT_ROWS * CPR / 32; i++) {
                const int idx = lane + 32 * i, r = idx / CPR, c = idx - r * CPR, j = base + r;
                const bool ok = j < j1;
                const size_t off = (size_t)(ok ? j : 0) * a.Dkv + 8 * c;
                qg_cp16_zfill(kd + r * LD + 8 * c, kb + off, ok ? 16 : 0);
                qg_cp16_zfill(vd + r * LD + 8 * c, vb + off, ok ? 16 : 0);
            }
        }
        qg_cp_commit();
    };
    /* with the rope folded in, no kernel of this step writes the cache
     * before this one (its new row is replaced from shared memory below),
     * so the first tiles go out before the wait for the previous kernel;
     * otherwise the rope / append kernel before it writes row pn */
    /* the rope's constants (q and k norm weights, position pn's cos | sin
     * row) staged in shared memory ahead of the tiles, before the wait */
    __shared__ __align__(16) float s_qn[HD], s_kn[HD], s_cs[HD];
    const int pn = rows - 1;
    const bool cs_row = a.rope && a.cs && pn >= 0 && pn < a.ncs;
    if (live && a.rope) {
        for (int i = tid; i < 3 * HD / 4; i += DT_THREADS) {
            const int m = i / (HD / 4), c = i - m * (HD / 4);
            if (m == 2 && !cs_row) continue;
            const float *src = m == 0 ? a.qn : m == 1 ? a.kn : a.cs + (size_t)pn * HD;
            qg_cp_async16((m == 0 ? s_qn : m == 1 ? s_kn : s_cs) + 4 * c, src + 4 * c);
        }
        qg_cp_commit();
#pragma unroll
        for (int k = 0; k < NST; k++) fetch(warp + k * DT_WARPS, k);
    }
    qg_pdl_wait();
    if (!live) return;
    if (!a.rope)
#pragma unroll
        for (int k = 0; k < NST; k++) fetch(warp + k * DT_WARPS, k);

    /* q of the slot's heads (rope folded in: normalized and rotated here,
     * and this step's K/V row kept rounded as the cache stores it) */
    const bool has_new = a.rope && pn >= j0 && pn < j1;
    if (a.rope) {
        dt_cp_wait<NST>(); /* this thread's staging copies (the tiles may fly) */
        __syncthreads();
        const float *csp = cs_row ? s_cs : nullptr;
        for (int hh = warp; hh < gw; hh += DT_WARPS)
            warp_rope_row<half>(a.rq + (size_t)(h0 + hh) * HD, s_qn, a.freq, csp, HD, a.eps, pn,
                                false, Qs[hh]);
        if (has_new) {
            if (warp == DT_WARPS - 1)
                warp_rope_row<half>(a.rk + (size_t)kvh * HD, s_kn, a.freq, csp, HD, a.eps, pn, true,
                                    Kn);
            if (warp == DT_WARPS - 2)
                for (int i = lane; i < HD; i += 32) {
                    half t;
                    cache_put(&t, a.rv[(size_t)kvh * HD + i]);
                    Vn[i] = cache_get(&t);
                }
        }
    } else {
        for (int i = tid; i < gw * HD; i += DT_THREADS) Qs[i / HD][i % HD] = a.q[(size_t)h0 * HD + i];
    }
    __syncthreads();
    /* the first CTA of the kv head appends the row (the others use it from
     * shared memory, never from the cache) */
    if (has_new && h0 % G == 0) {
        half *kw = (half *)a.kcw + (size_t)pn * a.Dkv + (size_t)kvh * HD;
        half *vw = (half *)a.vcw + (size_t)pn * a.Dkv + (size_t)kvh * HD;
        for (int i = tid; i < HD; i += DT_THREADS) {
            cache_put(kw + i, Kn[i]);
            cache_put(vw + i, Vn[i]);
        }
    }

    /* A fragments of Q: rows g = q_hi of head g, g + 8 = q_lo */
    uint32_t qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        const float2 z = make_float2(0.0f, 0.0f);
        const float2 x0 = g < gw ? *(const float2 *)&Qs[g][16 * ks + 2 * c4] : z;
        const float2 x2 = g < gw ? *(const float2 *)&Qs[g][16 * ks + 8 + 2 * c4] : z;
        qg_split_f16x2(x0.x, x0.y, qa[ks][0], qa[ks][1]);
        qg_split_f16x2(x2.x, x2.y, qa[ks][2], qa[ks][3]);
    }

    const int k_row = qg_ldsm_k_row(lane), k_col = qg_ldsm_k_col(lane);
    const int v_row = qg_ldsm_v_row(lane), v_col = qg_ldsm_v_col(lane);
    float oacc[ND][4];
#pragma unroll
    for (int d = 0; d < ND; d++) oacc[d][0] = oacc[d][1] = oacc[d][2] = oacc[d][3] = 0.0f;
    float m = -INFINITY, l = 0.0f; /* head g: running max (log2 units), this lane's sum */
    int st = 0;
    for (int t = warp; t < nt; t += DT_WARPS) {
        half *kd = ring + (size_t)st * 2 * TILE, *vd = kd + TILE;
        dt_cp_wait<NST - 1>(); /* this tile's group (later ones may fly) */
        __syncwarp();
        const int base = j0 + t * DT_ROWS;
        if (has_new && pn >= base && pn < base + DT_ROWS) {
            for (int i = lane; i < HD; i += 32) {
                kd[(pn - base) * LD + i] = __float2half_rn(Kn[i]); /* exact: already f16 values */
                vd[(pn - base) * LD + i] = __float2half_rn(Vn[i]);
            }
            __syncwarp();
        }
        /* S = Q K^T over the tile's 16 rows (n-tiles of keys 0..7, 8..15) */
        float sa[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            uint32_t b[4];
            qg_ldsm_x4(b, kd + k_row * LD + 16 * ks + k_col);
            qg_mma_f16(sa[0], qa[ks], b[0], b[1]);
            qg_mma_f16(sa[1], qa[ks], b[2], b[3]);
        }
        /* head g's scores of keys 8n + 2c4 + e: hi row + lo row, log2 units */
        float sc[2][2], mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = base + 8 * n + 2 * c4 + e;
                const float x = (sa[n][e] + sa[n][e + 2]) * a.sl2;
                sc[n][e] = j < j1 ? x : -INFINITY;
                mx = fmaxf(mx, sc[n][e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m, mx); /* finite: the tile has a live row */
        const float cr = exp2f(m - mn);
        m = mn;
        float ls = 0.0f;
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                sc[n][e] = exp2f(sc[n][e] - mn) * 32768.0f; /* 2^15 exp2(s - m) */
                ls += sc[n][e];
            }
        l = l * cr + ls;
#pragma unroll
        for (int d = 0; d < ND; d++) {
            oacc[d][0] *= cr;
            oacc[d][1] *= cr;
            oacc[d][2] *= cr;
            oacc[d][3] *= cr;
        }
        /* O += P V: A rows g = p_hi of head g, g + 8 = p_lo */
        uint32_t pa[4];
        qg_split_f16x2(sc[0][0], sc[0][1], pa[0], pa[1]);
        qg_split_f16x2(sc[1][0], sc[1][1], pa[2], pa[3]);
#pragma unroll
        for (int dp = 0; dp < ND / 2; dp++) {
            uint32_t b[4];
            qg_ldsm_x4_t(b, vd + v_row * LD + 16 * dp + v_col);
            qg_mma_f16(oacc[2 * dp], pa, b[0], b[1]);
            qg_mma_f16(oacc[2 * dp + 1], pa, b[2], b[3]);
        }
        __syncwarp(); /* every lane is done with this stage */
        fetch(t + NST * DT_WARPS, st);
        st = st + 1 == NST ? 0 : st + 1;
    }
    qg_cp_wait_all(); /* only empty groups can be left */
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);

    /* the warps' partials, merged in warp order */
    __syncthreads(); /* every warp is out of its ring */
    float *Ow = (float *)dt_dyn; /* (DT_WARPS, DT_HEADS, HD) */
#pragma unroll
    for (int d = 0; d < ND; d++)
        *(float2 *)&Ow[((size_t)warp * DT_HEADS + g) * HD + 8 * d + 2 * c4] =
            make_float2(oacc[d][0] + oacc[d][2], oacc[d][1] + oacc[d][3]);
    if (c4 == 0) {
        Mw[warp][g] = m;
        Lw[warp][g] = l;
    }
    __syncthreads();
    const int NS = a.nsp;
    float *pm = a.part, *pl = pm + (size_t)a.nh * NS, *pa = pl + (size_t)a.nh * NS;
    if (tid < gw) { /* head tid: the warps' weights exp2(m_w - M) and the sum */
        float M = -INFINITY;
        for (int w = 0; w < DT_WARPS; w++) M = fmaxf(M, Mw[w][tid]);
        float L = 0.0f;
        for (int w = 0; w < DT_WARPS; w++) {
            const float f = Mw[w][tid] == -INFINITY ? 0.0f : exp2f(Mw[w][tid] - M);
            Fw[w][tid] = f;
            L = fmaf(Lw[w][tid], f, L);
        }
        Mh[tid] = M;
        Lh[tid] = L;
    }
    __syncthreads();
    for (int i = tid; i < gw * HD; i += DT_THREADS) {
        const int hh = i / HD, d = i - hh * HD;
        float O = 0.0f;
#pragma unroll
        for (int w = 0; w < DT_WARPS; w++)
            O = fmaf(Ow[((size_t)w * DT_HEADS + hh) * HD + d], Fw[w][hh], O);
        const int h = h0 + hh;
        if (ns == 1) {
            a.o[(size_t)h * HD + d] = O / Lh[hh];
            continue;
        }
        if (d == 0) {
            pm[(size_t)h * NS + s] = Mh[hh];
            pl[(size_t)h * NS + s] = Lh[hh];
        }
        pa[((size_t)h * NS + s) * HD + d] = O;
    }
    if (ns == 1) return;
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(&a.counters[slot], 1) == ns - 1;
    __syncthreads();
    if (!s_last) return;
    /* the last CTA of the slot: each split's weight exp2(m_s - M) (a warp
     * per head), then o a thread per (head, 4 dims), splits summed in
     * split order */
    __shared__ float Linv[DT_HEADS];
    for (int hh = warp; hh < gw; hh += DT_WARPS) {
        const int h = h0 + hh;
        float M = -INFINITY;
        for (int s2 = lane; s2 < ns; s2 += 32) M = fmaxf(M, __ldcg(pm + (size_t)h * NS + s2));
        M = qg_warp_max(M);
        float L = 0.0f;
        for (int s2 = lane; s2 < ns; s2 += 32) {
            const float f = exp2f(__ldcg(pm + (size_t)h * NS + s2) - M);
            Fs[hh][s2] = f;
            L = fmaf(__ldcg(pl + (size_t)h * NS + s2), f, L);
        }
        L = qg_warp_sum(L);
        if (lane == 0) Linv[hh] = 1.0f / L;
    }
    __syncthreads();
    for (int i = tid; i < gw * HD / 4; i += DT_THREADS) {
        const int hh = i / (HD / 4), d4 = i - hh * (HD / 4), h = h0 + hh;
        const float *src = pa + (size_t)h * NS * HD + 4 * d4;
        float4 A = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 16
        for (int s2 = 0; s2 < ns; s2++) {
            const float4 v = __ldcg((const float4 *)(src + (size_t)s2 * HD));
            const float f = Fs[hh][s2];
            A.x = fmaf(v.x, f, A.x);
            A.y = fmaf(v.y, f, A.y);
            A.z = fmaf(v.z, f, A.z);
            A.w = fmaf(v.w, f, A.w);
        }
        const float inv = Linv[hh];
        *(float4 *)(a.o + (size_t)h * HD + 4 * d4) =
            make_float4(A.x * inv, A.y * inv, A.z * inv, A.w * inv);
    }
    if (tid == 0) a.counters[slot] = 0;
}

bool qg_cu_attn_tc_ok(const qg_cuda_launch *l, qg_dtype cache_type, int hd) {
    return l->o.attn_tc && cache_type == QG_F16 && (hd == 32 || hd == 64 || hd == 96 || hd == 128);
}

/* Kernel shapes (warps, stages), o.attn_cfg for A/B: 0 (4, 2), 1 (8, 1),
 * the default, 2 (16, 1), 3 (8, 2).  H100, 30B, tg128 / tg128 at 4096
 * rows: (4, 2) 369.5 / 330.3, (8, 1) 375.4 / 338.2, (16, 1) 369.9 /
 * 328.5, (8, 2) 371.8 / 337.4 tok/s (one warp per scheduler left the
 * walk latency-bound; 16 warps spill). */
template <int HD>
static cudaError_t dt_launch(const qg_cuda_launch *l, const at_args &a, int cfg) {
    const dim3 grid((unsigned)(a.nh / a.gw * a.ns_max));
    switch (cfg) {
    case 0: return qg_cu_launch(l, k_attn_decode_tc<HD, 4, 2>, grid, dim3(128), dt_smem(HD, 4, 2), a);
    case 2: return qg_cu_launch(l, k_attn_decode_tc<HD, 16, 1>, grid, dim3(512), dt_smem(HD, 16, 1), a);
    case 3: return qg_cu_launch(l, k_attn_decode_tc<HD, 8, 2>, grid, dim3(256), dt_smem(HD, 8, 2), a);
    default: return qg_cu_launch(l, k_attn_decode_tc<HD, 8, 1>, grid, dim3(256), dt_smem(HD, 8, 1), a);
    }
}

/* The dynamic shared memory, and the largest carveout: the staged decode
 * products around this kernel ask for it too (op_matvec_i8s.cu), so their
 * blocks can share a multiprocessor with this kernel's. */
template <int HD, int NW, int NST> static cudaError_t dt_prepare1() {
    cudaError_t e = cudaFuncSetAttribute((const void *)k_attn_decode_tc<HD, NW, NST>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)dt_smem(HD, NW, NST));
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute((const void *)k_attn_decode_tc<HD, NW, NST>,
                                 cudaFuncAttributePreferredSharedMemoryCarveout,
                                 cudaSharedmemCarveoutMaxShared);
    return e;
}

template <int HD> static cudaError_t dt_prepare() {
    cudaError_t e = dt_prepare1<HD, 4, 2>();
    if (e == cudaSuccess) e = dt_prepare1<HD, 8, 1>();
    if (e == cudaSuccess) e = dt_prepare1<HD, 16, 1>();
    if (e == cudaSuccess) e = dt_prepare1<HD, 8, 2>();
    return e;
}

cudaError_t qg_cu_attention_decode_tc(const qg_cuda_launch *l, const at_args &a, int hd) {
    const int cfg = l->o.attn_cfg;
    switch (hd) {
    case 32: return dt_launch<32>(l, a, cfg);
    case 64: return dt_launch<64>(l, a, cfg);
    case 96: return dt_launch<96>(l, a, cfg);
    case 128: return dt_launch<128>(l, a, cfg);
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t qg_cu_attention_prepare(void) {
    cudaError_t e = dt_prepare<32>();
    if (e == cudaSuccess) e = dt_prepare<64>();
    if (e == cudaSuccess) e = dt_prepare<96>();
    if (e == cudaSuccess) e = dt_prepare<128>();
    return e;
}
