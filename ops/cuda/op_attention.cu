/*
 * op_attention.cu - Qwen3's RoPE (per-head RMSNorm + NEOX rotation) and
 * causal GQA attention over the KV cache.
 *
 * rope: one warp per (token, head); angles pos * base^(-2i/hd) in float64
 * (the per-i factor comes from a table the executor computed on the host
 * with the CPU's expression), sin/cos in float64 rounded to f32 once, the
 * rotation's products and differences rounded one by one like the CPU.
 *
 * attention, in two launches (one when the executor folds the append into
 * the rope node, which then writes the rows itself):
 *   k_kv_append      rows pos[t] of both caches <- k, v (F16: rounded once)
 *   decode graphs    k_attn_decode: split-K over the cache rows; a CTA
 *                    takes up to 8 q heads sharing one kv head (a warp
 *                    each) and a chunk of rows, walked in tiles of 32
 *                    staged in shared memory (the next tile's loads in
 *                    flight while the current one is used); lane j scores
 *                    row j, online softmax per warp; each split writes
 *                    (max, sum, acc) per head, and the last CTA of a head
 *                    group (an atomic ticket) merges the splits and writes
 *                    o (each split's partial row contiguous: a lane reads
 *                    its four dims of eight splits at once).
 *   prefill graphs   k_attn_prefill: a CTA takes one head and 8 tokens
 *                    (a warp each) and walks tiles of 32 cache rows up to
 *                    the largest position among them, staged in shared
 *                    memory; lane j scores row j of the tile, then the
 *                    warp updates its online softmax and o.  No score
 *                    matrix is materialized.
 * Scores (q . k) / sqrt(hd), softmax and the weighted sum are f32.
 */
#include "qg_cuda_attention.cuh"

#include <math.h>

/* ---- rope ------------------------------------------------------------- */

__global__ void __launch_bounds__(128)
k_rope(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ qn,
       const float *__restrict__ kn, const int32_t *__restrict__ pos,
       const int32_t *__restrict__ step, const double *__restrict__ freq,
       const float *__restrict__ cs, int ncs, int hd, int nh, int nkv, float eps,
       float *__restrict__ qo, float *__restrict__ ko, rope_kv kv) {
    qg_pdl_wait();
    qg_pdl_trigger();
    const int t = blockIdx.x, lane = threadIdx.x & 31;
    const int j = blockIdx.y * 4 + (threadIdx.x >> 5);
    if (t >= step[QG_STEP_N_TOK] || j >= nh + nkv) return;
    const float *src, *w;
    float *dst;
    if (j < nh) {
        src = q + ((size_t)t * nh + j) * hd;
        dst = qo + ((size_t)t * nh + j) * hd;
        w = qn;
    } else {
        src = k + ((size_t)t * nkv + (j - nh)) * hd;
        dst = ko + ((size_t)t * nkv + (j - nh)) * hd;
        w = kn;
    }
    const int pi = pos[t];
    warp_rope<float>(src, w, freq, cs, ncs, hd, eps, pi, false, dst);
    if (kv.kc && j >= nh && pi >= 0 && pi < kv.C) {
        __syncwarp(); /* dst, written by this warp's lanes */
        const size_t row = (size_t)pi * nkv * hd + (size_t)(j - nh) * hd;
        const float *vs = kv.v + ((size_t)t * nkv + (j - nh)) * hd;
        for (int i = lane; i < hd; i += 32) {
            kv_put(kv, false, row + i, dst[i]);
            kv_put(kv, true, row + i, vs[i]);
        }
    }
}

cudaError_t qg_cu_rope(const qg_cuda_launch *l) {
    const qg_op_params *p = &l->n->p;
    if (!l->rope_freq) return cudaErrorInvalidValue;
    const dim3 grid(l->g->n_tok_max, (p->n_head + p->n_head_kv + 3) / 4);
    rope_kv kv = {l->kv_k, l->kv_v, l->kv_vsrc, l->kv_type == QG_F16, l->kv_ctx};
    return qg_cu_launch(l, k_rope, grid, dim3(128), 0, qg_cu_in_ptr<const float>(l, 0),
                        qg_cu_in_ptr<const float>(l, 1), qg_cu_in_ptr<const float>(l, 2),
                        qg_cu_in_ptr<const float>(l, 3), qg_cu_in_ptr<const int32_t>(l, 4), l->step,
                        l->rope_freq, l->rope_cs, l->rope_cs_n, p->head_dim, p->n_head,
                        p->n_head_kv, p->eps,
                        qg_cu_out_ptr<float>(l, 0), qg_cu_out_ptr<float>(l, 1), kv);
}

/* ---- cache append ----------------------------------------------------- */

/* k, v (Dkv, T) -> rows pos[t] of kc, vc (Dkv, C); grid (T, 2).  A
 * position outside [0, C) (the runtime refuses those) writes nothing. */
template <typename CT>
__global__ void __launch_bounds__(256)
k_kv_append(const float *__restrict__ k, const float *__restrict__ v, const int32_t *__restrict__ pos,
            const int32_t *__restrict__ step, int Dkv, int C, CT *__restrict__ kc,
            CT *__restrict__ vc) {
    qg_pdl_wait();
    qg_pdl_trigger();
    const int t = blockIdx.x;
    if (t >= step[QG_STEP_N_TOK]) return;
    const int p = pos[t];
    if (p < 0 || p >= C) return;
    const float *src = (blockIdx.y ? v : k) + (size_t)t * Dkv;
    CT *dst = (blockIdx.y ? vc : kc) + (size_t)p * Dkv;
    for (int i = threadIdx.x; i < Dkv; i += blockDim.x) cache_put(dst + i, src[i]);
}

/* ---- decode: split-K -------------------------------------------------- */

#define AD_ROWS 32

/* Four cache elements as floats. */
__device__ __forceinline__ float4 ld4(const half *p) {
    const uint2 u = *(const uint2 *)p;
    const float2 a = __half22float2(*(const half2 *)&u.x), b = __half22float2(*(const half2 *)&u.y);
    return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 ld4(const float *p) { return *(const float4 *)p; }

template <typename CT, int DPL>
__global__ void __launch_bounds__(256) k_attn_decode(at_args a) {
    constexpr int HD = 32 * DPL, R = AD_ROWS, NQ = 2 * DPL; /* 4-element loads per thread per tile */
    /* rows padded by 4 floats: lane j reading row j with 16-byte loads
     * touches each bank once per quarter warp */
    __shared__ __align__(16) float Ks[R][HD + 4], Vs[R][HD + 4];
    __shared__ __align__(16) float Qs[8][HD];
    __shared__ float Fs[8][64];
    __shared__ int s_last;
    qg_pdl_wait();
    qg_pdl_trigger();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int rows = a.pos[0] + 1;
    /* the one-dimensional grid as (head slot, split) of this step's mode:
     * wide (past gw_rows rows) gw heads per slot and up to ns_max splits,
     * else gw_lo heads and up to ns_lo */
    const bool wide = rows > a.gw_rows;
    const int gw = wide ? a.gw : a.gw_lo, nsx = wide ? a.ns_max : a.ns_lo;
    const int slot = blockIdx.x / nsx, s = blockIdx.x - slot * nsx;
    if (slot >= a.nh / gw) return;
    int chunk = (rows + nsx - 1) / nsx;
    chunk = (chunk + R - 1) / R * R;
    if (chunk < a.min_chunk) chunk = a.min_chunk;
    const int ns = (rows + chunk - 1) / chunk;
    if (s >= ns) return;
    const int j0 = s * chunk, j1 = min(rows, j0 + chunk);
    const int h0 = slot * gw;
    const bool active = warp < gw;
    const int h = h0 + warp, kvh = h0 / (a.nh / a.nkv);
    /* the first tile's loads go out before q and k are normalized and
     * rotated (with rope folded in, this step's row read here is stale and
     * replaced from shared memory below) */
    const CT *kb = (const CT *)a.kc + (size_t)kvh * HD, *vb = (const CT *)a.vc + (size_t)kvh * HD;
    float4 buf[NQ];
    auto load_tile = [&](int base) {
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            const int idx = tid + 256 * k, mat = idx / (R * HD / 4), rem = idx - mat * (R * HD / 4);
            const int r = rem / (HD / 4), q4 = rem - r * (HD / 4), j = base + r;
            buf[k] = j < j1 ? ld4((mat ? vb : kb) + (size_t)j * a.Dkv + 4 * q4)
                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    };
    load_tile(j0);
    /* rope folded in: this step's row (rows - 1) is held here, k' and v
     * rounded as the cache stores them, by the CTA whose chunk holds it */
    __shared__ __align__(16) float Kn[HD], Vn[HD];
    const int pn = rows - 1;
    const bool has_new = a.rope && pn >= j0 && pn < j1;
    if (a.rope) {
        if (active)
            warp_rope<CT>(a.rq + (size_t)h * HD, a.qn, a.freq, a.cs, a.ncs, HD, a.eps, pn, false, Qs[warp]);
        if (has_new) {
            if (warp == 7)
                warp_rope<CT>(a.rk + (size_t)kvh * HD, a.kn, a.freq, a.cs, a.ncs, HD, a.eps, pn, true, Kn);
            if (warp == 6)
                for (int i = lane; i < HD; i += 32) {
                    CT t;
                    cache_put(&t, a.rv[(size_t)kvh * HD + i]);
                    Vn[i] = cache_get(&t);
                }
        }
        __syncthreads();
        /* the first CTA of the KV head appends the row (the others read
         * it from shared memory, never from the cache) */
        if (has_new && h0 % (a.nh / a.nkv) == 0) {
            CT *kw = (CT *)a.kcw + (size_t)pn * a.Dkv + (size_t)kvh * HD;
            CT *vw = (CT *)a.vcw + (size_t)pn * a.Dkv + (size_t)kvh * HD;
            for (int i = tid; i < HD; i += 256) {
                cache_put(kw + i, Kn[i]);
                cache_put(vw + i, Vn[i]);
            }
        }
    } else if (active) {
        float qv[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++) qv[i] = a.q[(size_t)h * HD + lane + 32 * i];
#pragma unroll
        for (int i = 0; i < DPL; i++) Qs[warp][lane + 32 * i] = qv[i];
    }
    /* lane owns dims 4 lane .. 4 lane + 3 (lanes past hd/4 own none) */
    float m = -INFINITY, l = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int t0 = j0; t0 < j1; t0 += R) {
        __syncthreads();
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            const int idx = tid + 256 * k, mat = idx / (R * HD / 4), rem = idx - mat * (R * HD / 4);
            const int r = rem / (HD / 4), q4 = rem - r * (HD / 4);
            *(float4 *)(mat ? &Vs[r][4 * q4] : &Ks[r][4 * q4]) = buf[k];
        }
        if (has_new && pn >= t0 && pn < t0 + R) {
            __syncthreads();
            for (int i = tid; i < HD; i += 256) {
                Ks[pn - t0][i] = Kn[i];
                Vs[pn - t0][i] = Vn[i];
            }
        }
        __syncthreads();
        if (t0 + R < j1) load_tile(t0 + R);
        if (!active) continue;
        const int j = t0 + lane;
        const bool ok = j < j1;
        float sc = -INFINITY;
        if (ok) {
            float d0 = 0.0f, d1 = 0.0f;
            const float4 *q4p = (const float4 *)Qs[warp], *k4p = (const float4 *)Ks[lane];
#pragma unroll 8
            for (int d4 = 0; d4 < HD / 4; d4++) {
                const float4 qv = q4p[d4], kv = k4p[d4];
                d0 = fmaf(qv.x, kv.x, d0);
                d1 = fmaf(qv.y, kv.y, d1);
                d0 = fmaf(qv.z, kv.z, d0);
                d1 = fmaf(qv.w, kv.w, d1);
            }
            sc = (d0 + d1) * a.scale;
        }
        const float mn = fmaxf(m, qg_warp_max(sc));
        const float c = expf(m - mn);
        const float p = ok ? expf(sc - mn) : 0.0f;
        l = l * c + qg_warp_sum(p);
        acc[0] *= c;
        acc[1] *= c;
        acc[2] *= c;
        acc[3] *= c;
        if (4 * lane < HD) {
#pragma unroll 4
            for (int r = 0; r < R; r++) {
                const float pr = __shfl_sync(0xffffffffu, p, r);
                const float4 v = *(const float4 *)&Vs[r][4 * lane];
                acc[0] = fmaf(pr, v.x, acc[0]);
                acc[1] = fmaf(pr, v.y, acc[1]);
                acc[2] = fmaf(pr, v.z, acc[2]);
                acc[3] = fmaf(pr, v.w, acc[3]);
            }
        } else {
#pragma unroll 4
            for (int r = 0; r < R; r++) (void)__shfl_sync(0xffffffffu, p, r);
        }
        m = mn;
    }
    const bool owns = 4 * lane < HD;
    if (ns == 1) {
        if (active && owns) {
            const float inv = 1.0f / l;
#pragma unroll
            for (int c = 0; c < 4; c++) a.o[(size_t)h * HD + 4 * lane + c] = acc[c] * inv;
        }
        return;
    }
    const int NS = a.nsp;
    float *pm = a.part, *pl = pm + (size_t)a.nh * NS, *pa = pl + (size_t)a.nh * NS;
    if (active) {
        if (lane == 0) {
            pm[(size_t)h * NS + s] = m;
            pl[(size_t)h * NS + s] = l;
        }
        if (owns)
            *(float4 *)(pa + ((size_t)h * NS + s) * HD + 4 * lane) =
                make_float4(acc[0], acc[1], acc[2], acc[3]);
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(&a.counters[slot], 1) == ns - 1;
    __syncthreads();
    if (!s_last) return;
    if (active) {
        float M = -INFINITY;
        for (int s2 = lane; s2 < ns; s2 += 32) M = fmaxf(M, __ldcg(pm + (size_t)h * NS + s2));
        M = qg_warp_max(M);
        float L = 0.0f;
        for (int s2 = lane; s2 < ns; s2 += 32) {
            const float f = expf(__ldcg(pm + (size_t)h * NS + s2) - M);
            Fs[warp][s2] = f;
            L += __ldcg(pl + (size_t)h * NS + s2) * f;
        }
        L = qg_warp_sum(L);
        __syncwarp();
        const float inv = 1.0f / L;
        if (owns) {
            /* lane: dims 4 lane .. +3 of every split, one float4 each,
             * eight splits' loads in flight at a time */
            const float *src = pa + (size_t)h * NS * HD + 4 * lane;
            float4 A = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
            for (int s2 = 0; s2 < ns; s2++) {
                const float4 v = __ldcg((const float4 *)(src + (size_t)s2 * HD));
                const float f = Fs[warp][s2];
                A.x = fmaf(v.x, f, A.x);
                A.y = fmaf(v.y, f, A.y);
                A.z = fmaf(v.z, f, A.z);
                A.w = fmaf(v.w, f, A.w);
            }
            *(float4 *)(a.o + (size_t)h * HD + 4 * lane) =
                make_float4(A.x * inv, A.y * inv, A.z * inv, A.w * inv);
        }
    }
    if (tid == 0) a.counters[slot] = 0;
}

/* ---- prefill ----------------------------------------------------------
 * The default prefill attention is the tensor-core kernel of
 * op_attention_prefill.cu (qg_cu_attention_prefill); k_attn_prefill, the
 * f32 SIMT kernel below, runs when the executor's f32_prefill option is
 * set (QG_CUDA_F32_PREFILL=1). */

#define AP_WARPS 8
#define AP_ROWS 32

template <typename CT, int DPL>
__global__ void __launch_bounds__(AP_WARPS * 32) k_attn_prefill(at_args a) {
    constexpr int HD = 32 * DPL;
    __shared__ __align__(16) float Ks[AP_ROWS][HD + 4], Vs[AP_ROWS][HD + 4];
    __shared__ __align__(16) float Qs[AP_WARPS][HD];
    __shared__ int s_pmax;
    qg_pdl_wait();
    qg_pdl_trigger();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int n_tok = a.step[QG_STEP_N_TOK];
    const int t0 = blockIdx.y * AP_WARPS;
    if (t0 >= n_tok) return;
    const int h = blockIdx.x, kvh = h / (a.nh / a.nkv), Dq = a.nh * HD;
    const int t = t0 + warp;
    const bool valid = t < n_tok;
    const int my_pos = valid ? a.pos[t] : -1;
    {
        float qv[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++) qv[i] = valid ? a.q[(size_t)t * Dq + h * HD + lane + 32 * i] : 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) Qs[warp][lane + 32 * i] = qv[i];
    }
    if (tid == 0) s_pmax = -1;
    __syncthreads();
    if (lane == 0) atomicMax(&s_pmax, my_pos);
    __syncthreads();
    const int nrows = s_pmax + 1;
    const CT *kc = (const CT *)a.kc + (size_t)kvh * HD, *vc = (const CT *)a.vc + (size_t)kvh * HD;
    /* tiles of AP_ROWS rows of k and v: NQ 4-element loads per thread, the
     * next tile's in flight while the current one is used */
    constexpr int NQ = 2 * DPL;
    float4 buf[NQ];
    auto load_tile = [&](int base) {
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            const int idx = tid + 256 * k, mat = idx / (AP_ROWS * HD / 4);
            const int rem = idx - mat * (AP_ROWS * HD / 4), r = rem / (HD / 4), q4 = rem - r * (HD / 4);
            const int j = base + r;
            buf[k] = j < nrows ? ld4((mat ? vc : kc) + (size_t)j * a.Dkv + 4 * q4)
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    };
    load_tile(0);
    /* lane owns dims 4 lane .. 4 lane + 3 (lanes past hd/4 own none) */
    float m = -INFINITY, l = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j0 = 0; j0 < nrows; j0 += AP_ROWS) {
        __syncthreads();
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            const int idx = tid + 256 * k, mat = idx / (AP_ROWS * HD / 4);
            const int rem = idx - mat * (AP_ROWS * HD / 4), r = rem / (HD / 4), q4 = rem - r * (HD / 4);
            *(float4 *)(mat ? &Vs[r][4 * q4] : &Ks[r][4 * q4]) = buf[k];
        }
        __syncthreads();
        if (j0 + AP_ROWS < nrows) load_tile(j0 + AP_ROWS);
        if (!valid) continue;
        const int j = j0 + lane;
        const bool ok = j <= my_pos;
        float sc = -INFINITY;
        if (ok) {
            float d0 = 0.0f, d1 = 0.0f;
            const float4 *q4p = (const float4 *)Qs[warp], *k4p = (const float4 *)Ks[lane];
#pragma unroll 8
            for (int d4 = 0; d4 < HD / 4; d4++) {
                const float4 qv = q4p[d4], kv = k4p[d4];
                d0 = fmaf(qv.x, kv.x, d0);
                d1 = fmaf(qv.y, kv.y, d1);
                d0 = fmaf(qv.z, kv.z, d0);
                d1 = fmaf(qv.w, kv.w, d1);
            }
            sc = (d0 + d1) * a.scale;
        }
        const float mt = qg_warp_max(sc);
        if (mt == -INFINITY) continue;
        const float mn = fmaxf(m, mt);
        const float c = expf(m - mn);
        const float p = ok ? expf(sc - mn) : 0.0f;
        l = l * c + qg_warp_sum(p);
        acc[0] *= c;
        acc[1] *= c;
        acc[2] *= c;
        acc[3] *= c;
#pragma unroll 4
        for (int r = 0; r < AP_ROWS; r++) {
            const float pr = __shfl_sync(0xffffffffu, p, r);
            if (4 * lane < HD) {
                const float4 v = *(const float4 *)&Vs[r][4 * lane];
                acc[0] = fmaf(pr, v.x, acc[0]);
                acc[1] = fmaf(pr, v.y, acc[1]);
                acc[2] = fmaf(pr, v.z, acc[2]);
                acc[3] = fmaf(pr, v.w, acc[3]);
            }
        }
        m = mn;
    }
    if (!valid || 4 * lane >= HD) return;
    const float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < 4; c++) a.o[(size_t)t * Dq + h * HD + 4 * lane + c] = acc[c] * inv;
}

/* ---- launch ----------------------------------------------------------- */

/* q heads per decode CTA: o->attn_gw when it divides the group (A/B),
 * else the largest of 8, 4, 2, 1 that does. */
static int attn_gw(const qg_op_params *p, const qg_cuda_opts *o) {
    const int G = p->n_head / p->n_head_kv;
    if (o->attn_gw > 0 && o->attn_gw <= 8 && G % o->attn_gw == 0) return o->attn_gw;
    for (int gw = 8; gw > 1; gw >>= 1)
        if (G % gw == 0) return gw;
    return 1;
}

#define AD_MIN_CHUNK 64

/* Fewest cache rows per split: o->attn_chunk when set (A/B; a multiple of
 * the 32-row tile), else AD_MIN_CHUNK. */
/* q heads per decode CTA at short contexts (see at_args.gw_lo): 2 when
 * the group allows, none of it when o->attn_gw_rows is 0. */
static int attn_gw_lo(const qg_op_params *p, const qg_cuda_opts *o) {
    const int hi = attn_gw(p, o);
    return o->attn_gw_rows > 0 && hi > 2 && hi % 2 == 0 ? 2 : hi;
}

static int attn_chunk(const qg_cuda_opts *o) {
    return o->attn_chunk >= 32 && o->attn_chunk % 32 == 0 ? o->attn_chunk : AD_MIN_CHUNK;
}

/* Fewest cache rows per split of the tensor-core decode kernel: 256
 * unless o->attn_chunk says otherwise.  Its per-row work is small, so
 * splits cost more in merging than they gain in spreading (H100, 30B:
 * tg128 367.5 / 357.0 tok/s and tg128 at 4096 rows 329.9 / 320.4 with
 * 256 / 64; 512 gave 366.7 / 307.1). */
#define AD_TC_MIN_CHUNK 256
static int attn_chunk_tc(const qg_cuda_opts *o) {
    return o->attn_chunk >= 32 && o->attn_chunk % 32 == 0 ? o->attn_chunk : AD_TC_MIN_CHUNK;
}

/* Most splits of the decode kernel: about attn_ctas CTAs per
 * multiprocessor at the longest context, never more than the cache fills with AD_MIN_CHUNK
 * rows each, at most 64 (the merge's table). */
static int attn_ns_max(const qg_graph *g, const qg_op_params *p, const qg_cuda_opts *o) {
    const int groups = p->n_head / attn_gw(p, o);
    const int n_sm = (o->n_sm > 0 ? o->n_sm : 132) * (o->attn_ctas > 0 ? o->attn_ctas : 1);
    int ns = (n_sm + groups - 1) / groups;
    const int by_rows = (g->n_ctx + attn_chunk(o) - 1) / attn_chunk(o);
    if (ns > by_rows) ns = by_rows;
    if (ns > 64) ns = 64;
    return ns < 1 ? 1 : ns;
}

/* Most splits up to gw_rows rows (gw_lo heads per CTA): the rows in
 * chunks of the fewest per split, at most 64. */
static int attn_ns_lo(const qg_op_params *p, const qg_cuda_opts *o) {
    if (attn_gw_lo(p, o) == attn_gw(p, o)) return 1;
    const int ns = (o->attn_gw_rows + attn_chunk(o) - 1) / attn_chunk(o);
    return ns < 1 ? 1 : (ns > 64 ? 64 : ns);
}

void qg_cu_attention_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o,
                           qg_cu_bump *b, int *n_counters) {
    *n_counters = 0;
    if (g->n_tok_max != 1) return;
    const qg_op_params *p = &n->p;
    const int nsp = (QG_MAX(attn_ns_max(g, p, o), attn_ns_lo(p, o)) + 3) / 4 * 4;
    b->take<float>((size_t)p->n_head * nsp * (p->head_dim + 2));
    *n_counters = p->n_head / attn_gw_lo(p, o);
}

template <typename CT> static cudaError_t attention_t(const qg_cuda_launch *l) {
    const qg_op_params *p = &l->n->p;
    const qg_tensor *kt = qg_cu_in(l, 3);
    const int Dkv = (int)kt->ne[0], C = (int)kt->ne[1], hd = p->head_dim, T = l->g->n_tok_max;
    CT *kc = qg_cu_in_ptr<CT>(l, 3), *vc = qg_cu_in_ptr<CT>(l, 4);
    const int32_t *pos = qg_cu_in_ptr<const int32_t>(l, 5);
    cudaError_t e = cudaSuccess;
    if (!l->skip_append &&
        (e = qg_cu_launch(l, k_kv_append<CT>, dim3(T, 2), dim3(256), 0,
                          qg_cu_in_ptr<const float>(l, 1), qg_cu_in_ptr<const float>(l, 2), pos,
                          l->step, Dkv, C, kc, vc)) != cudaSuccess)
        return e;
    at_args a = {};
    a.q = qg_cu_in_ptr<const float>(l, 0);
    a.kc = kc;
    a.vc = vc;
    a.pos = pos;
    a.step = l->step;
    a.nh = p->n_head;
    a.nkv = p->n_head_kv;
    a.Dkv = Dkv;
    a.scale = 1.0f / sqrtf((float)hd);
    a.o = qg_cu_out_ptr<float>(l, 0);
    const int dpl = hd / 32;
    if (l->rope_fold) {
        if (T != 1 || !l->rope_freq) return cudaErrorInvalidValue; /* the executor never asks */
        a.rope = true;
        a.rq = l->rope_q;
        a.rk = l->rope_k;
        a.rv = qg_cu_in_ptr<const float>(l, 2);
        a.qn = l->rope_qn;
        a.kn = l->rope_kn;
        a.freq = l->rope_freq;
        a.cs = l->rope_cs;
        a.ncs = l->rope_cs_n;
        a.eps = l->rope_eps;
        a.kcw = kc;
        a.vcw = vc;
    }
    if (T == 1 && qg_cu_attn_tc_ok(l, kt->type, hd)) {
        /* tensor cores (op_attention_decode_tc.cu): every step in the
         * wide mode's slots, splits of a multiple of 16 rows */
        a.gw = attn_gw(p, &l->o);
        a.part = (float *)l->scratch;
        a.counters = l->counters;
        a.ns_max = attn_ns_max(l->g, p, &l->o);
        a.nsp = (QG_MAX(a.ns_max, attn_ns_lo(p, &l->o)) + 3) / 4 * 4;
        a.min_chunk = attn_chunk_tc(&l->o);
        a.sl2 = (float)(1.4426950408889634 / sqrt((double)hd));
        a.early = (l->o.staged & QG_CUDA_STAGED_EARLY) != 0;
        e = qg_cu_attention_decode_tc(l, a, hd);
    } else if (T == 1) {
        a.gw = attn_gw(p, &l->o);
        a.gw_lo = attn_gw_lo(p, &l->o);
        a.gw_rows = l->o.attn_gw_rows;
        a.ns_lo = attn_ns_lo(p, &l->o);
        if (a.gw_lo == a.gw) a.gw_rows = -1; /* one mode: always the wide one */
        a.part = (float *)l->scratch;
        a.counters = l->counters;
        a.ns_max = attn_ns_max(l->g, p, &l->o);
        a.nsp = (QG_MAX(a.ns_max, attn_ns_lo(p, &l->o)) + 3) / 4 * 4;
        a.min_chunk = attn_chunk(&l->o);
        const dim3 grid(QG_MAX(p->n_head / a.gw * a.ns_max, p->n_head / a.gw_lo * a.ns_lo));
        if (dpl == 1) e = qg_cu_launch(l, k_attn_decode<CT, 1>, grid, dim3(256), 0, a);
        else if (dpl == 2) e = qg_cu_launch(l, k_attn_decode<CT, 2>, grid, dim3(256), 0, a);
        else if (dpl == 3) e = qg_cu_launch(l, k_attn_decode<CT, 3>, grid, dim3(256), 0, a);
        else if (dpl == 4) e = qg_cu_launch(l, k_attn_decode<CT, 4>, grid, dim3(256), 0, a);
        else e = cudaErrorInvalidValue;
    } else if (!l->o.f32_prefill) {
        e = qg_cu_attention_prefill(l);
    } else {
        const dim3 grid(p->n_head, (T + AP_WARPS - 1) / AP_WARPS);
        const dim3 blk(AP_WARPS * 32);
        if (dpl == 1) e = qg_cu_launch(l, k_attn_prefill<CT, 1>, grid, blk, 0, a);
        else if (dpl == 2) e = qg_cu_launch(l, k_attn_prefill<CT, 2>, grid, blk, 0, a);
        else if (dpl == 3) e = qg_cu_launch(l, k_attn_prefill<CT, 3>, grid, blk, 0, a);
        else if (dpl == 4) e = qg_cu_launch(l, k_attn_prefill<CT, 4>, grid, blk, 0, a);
        else e = cudaErrorInvalidValue;
    }
    return e;
}

/* attention: q (Dq,T), k (Dkv,T), v (Dkv,T), kcache (Dkv,C), vcache (Dkv,C),
 * pos (I32,T) -> o (Dq,T) */
cudaError_t qg_cu_attention(const qg_cuda_launch *l) {
    return qg_cu_in(l, 3)->type == QG_F16 ? attention_t<half>(l) : attention_t<float>(l);
}
