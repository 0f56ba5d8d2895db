/*
 * op_attention.cu - Qwen3's RoPE (per-head RMSNorm + NEOX rotation) and
 * causal GQA attention over the KV cache.
 *
 * rope: one warp per (token, head); angles pos * base^(-2i/hd) in float64
 * (the per-i factor comes from a table the executor computed on the host
 * with the CPU's expression), sin/cos in float64 rounded to f32 once, the
 * rotation's products and differences rounded one by one like the CPU.
 *
 * attention, in two launches:
 *   k_kv_append      rows pos[t] of both caches <- k, v (F16: rounded once)
 *   decode graphs    k_attn_decode: split-K over the cache rows; a CTA
 *                    takes GC q heads sharing one kv head and a chunk of
 *                    rows, 4 warps stride over the rows with an online
 *                    softmax (lanes hold hd/32 dims), the CTA merges its
 *                    warps and writes (max, sum, acc) per head; the last
 *                    CTA of a head group (an atomic ticket) merges the
 *                    splits and writes o.
 *   prefill graphs   k_attn_prefill: a CTA takes one head and 8 tokens
 *                    (a warp each) and walks tiles of 32 cache rows up to
 *                    the largest position among them, staged in shared
 *                    memory; lane j scores row j of the tile, then the
 *                    warp updates its online softmax and o.  No score
 *                    matrix is materialized.
 * Scores (q . k) / sqrt(hd), softmax and the weighted sum are f32.
 */
#include "qg_cuda_internal.cuh"

#include <math.h>

/* ---- rope ------------------------------------------------------------- */

__global__ void __launch_bounds__(128)
k_rope(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ qn,
       const float *__restrict__ kn, const int32_t *__restrict__ pos,
       const int32_t *__restrict__ step, const double *__restrict__ freq, int hd, int nh, int nkv,
       float eps, float *__restrict__ qo, float *__restrict__ ko) {
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
    float ss = 0.0f;
    for (int i = lane; i < hd; i += 32) ss = fmaf(src[i], src[i], ss);
    ss = qg_warp_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)hd + eps);
    const int half = hd / 2;
    const double p = (double)pos[t];
    for (int r = lane; r < half; r += 32) {
        const float y0 = __fmul_rn(__fmul_rn(src[r], scale), w[r]);
        const float y1 = __fmul_rn(__fmul_rn(src[r + half], scale), w[r + half]);
        double sd, cd;
        sincos(p * freq[r], &sd, &cd);
        const float c = (float)cd, s = (float)sd;
        dst[r] = __fsub_rn(__fmul_rn(y0, c), __fmul_rn(y1, s));
        dst[r + half] = __fadd_rn(__fmul_rn(y0, s), __fmul_rn(y1, c));
    }
}

cudaError_t qg_cu_rope(const qg_cuda_launch *l) {
    const qg_op_params *p = &l->n->p;
    if (!l->rope_freq) return cudaErrorInvalidValue;
    const dim3 grid(l->g->n_tok_max, (p->n_head + p->n_head_kv + 3) / 4);
    k_rope<<<grid, 128, 0, qg_cu_stream(l)>>>(
        qg_cu_in_ptr<const float>(l, 0), qg_cu_in_ptr<const float>(l, 1),
        qg_cu_in_ptr<const float>(l, 2), qg_cu_in_ptr<const float>(l, 3),
        qg_cu_in_ptr<const int32_t>(l, 4), l->step, l->rope_freq, p->head_dim, p->n_head,
        p->n_head_kv, p->eps, qg_cu_out_ptr<float>(l, 0), qg_cu_out_ptr<float>(l, 1));
    return cudaGetLastError();
}

/* ---- cache append ----------------------------------------------------- */

__device__ __forceinline__ void cache_put(half *d, float v) { *d = __float2half_rn(v); }
__device__ __forceinline__ void cache_put(float *d, float v) { *d = v; }
__device__ __forceinline__ float cache_get(const half *p) { return __half2float(*p); }
__device__ __forceinline__ float cache_get(const float *p) { return *p; }

/* k, v (Dkv, T) -> rows pos[t] of kc, vc (Dkv, C); grid (T, 2).  A
 * position outside [0, C) (the runtime refuses those) writes nothing. */
template <typename CT>
__global__ void __launch_bounds__(256)
k_kv_append(const float *__restrict__ k, const float *__restrict__ v, const int32_t *__restrict__ pos,
            const int32_t *__restrict__ step, int Dkv, int C, CT *__restrict__ kc,
            CT *__restrict__ vc) {
    const int t = blockIdx.x;
    if (t >= step[QG_STEP_N_TOK]) return;
    const int p = pos[t];
    if (p < 0 || p >= C) return;
    const float *src = (blockIdx.y ? v : k) + (size_t)t * Dkv;
    CT *dst = (blockIdx.y ? vc : kc) + (size_t)p * Dkv;
    for (int i = threadIdx.x; i < Dkv; i += blockDim.x) cache_put(dst + i, src[i]);
}

/* ---- decode: split-K -------------------------------------------------- */

struct at_args {
    const float *q;
    const void *kc, *vc;
    const int32_t *pos, *step;
    int nh, nkv, Dkv;
    float scale;
    float *o;
    float *part; /* (nh, ns_max) max | (nh, ns_max) sum | (nh, ns_max, hd) acc */
    int *counters;
    int ns_max, min_chunk;
};

#define AD_WARPS 4

template <typename CT, int GC, int DPL>
__global__ void __launch_bounds__(AD_WARPS * 32) k_attn_decode(at_args a) {
    constexpr int HD = 32 * DPL;
    __shared__ float s_m[AD_WARPS][GC], s_l[AD_WARPS][GC];
    __shared__ float s_acc[AD_WARPS][GC][HD];
    __shared__ int s_last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int rows = a.pos[0] + 1;
    int chunk = (rows + a.ns_max - 1) / a.ns_max;
    if (chunk < a.min_chunk) chunk = a.min_chunk;
    const int ns = (rows + chunk - 1) / chunk;
    const int s = blockIdx.y;
    if (s >= ns) return;
    const int j0 = s * chunk, j1 = min(rows, j0 + chunk);
    const int h0 = blockIdx.x * GC, kvh = h0 / (a.nh / a.nkv);
    float q[GC][DPL], m[GC], l[GC], acc[GC][DPL];
#pragma unroll
    for (int g = 0; g < GC; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            q[g][i] = a.q[(size_t)(h0 + g) * HD + lane * DPL + i];
            acc[g][i] = 0.0f;
        }
    }
    const CT *kc = (const CT *)a.kc + (size_t)kvh * HD + lane * DPL;
    const CT *vc = (const CT *)a.vc + (size_t)kvh * HD + lane * DPL;
    for (int j = j0 + warp; j < j1; j += AD_WARPS) {
        float kr[DPL], vr[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            kr[i] = cache_get(kc + (size_t)j * a.Dkv + i);
            vr[i] = cache_get(vc + (size_t)j * a.Dkv + i);
        }
#pragma unroll
        for (int g = 0; g < GC; g++) {
            float sc = 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++) sc = fmaf(q[g][i], kr[i], sc);
            sc = qg_warp_sum(sc) * a.scale;
            if (sc > m[g]) {
                const float c = expf(m[g] - sc);
                l[g] = l[g] * c + 1.0f;
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[g][i] = fmaf(acc[g][i], c, vr[i]);
                m[g] = sc;
            } else {
                const float p = expf(sc - m[g]);
                l[g] += p;
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[g][i] = fmaf(p, vr[i], acc[g][i]);
            }
        }
    }
#pragma unroll
    for (int g = 0; g < GC; g++) {
        if (lane == 0) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < DPL; i++) s_acc[warp][g][lane * DPL + i] = acc[g][i];
    }
    __syncthreads();
    const int NS = a.ns_max;
    float *pm = a.part, *pl = pm + (size_t)a.nh * NS, *pa = pl + (size_t)a.nh * NS;
    for (int idx = tid; idx < GC * HD; idx += AD_WARPS * 32) {
        const int g = idx / HD, d = idx - g * HD, h = h0 + g;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < AD_WARPS; w++) M = fmaxf(M, s_m[w][g]);
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int w = 0; w < AD_WARPS; w++) {
            const float f = s_m[w][g] == -INFINITY ? 0.0f : expf(s_m[w][g] - M);
            L += s_l[w][g] * f;
            A += s_acc[w][g][d] * f;
        }
        pa[((size_t)h * NS + s) * HD + d] = A;
        if (d == 0) {
            pm[(size_t)h * NS + s] = M;
            pl[(size_t)h * NS + s] = L;
        }
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(&a.counters[blockIdx.x], 1) == ns - 1;
    __syncthreads();
    if (!s_last) return;
    for (int idx = tid; idx < GC * HD; idx += AD_WARPS * 32) {
        const int g = idx / HD, d = idx - g * HD, h = h0 + g;
        float M = -INFINITY;
        for (int s2 = 0; s2 < ns; s2++) M = fmaxf(M, __ldcg(pm + (size_t)h * NS + s2));
        float L = 0.0f, A = 0.0f;
        for (int s2 = 0; s2 < ns; s2++) {
            const float f = expf(__ldcg(pm + (size_t)h * NS + s2) - M);
            L += __ldcg(pl + (size_t)h * NS + s2) * f;
            A += __ldcg(pa + ((size_t)h * NS + s2) * HD + d) * f;
        }
        a.o[(size_t)h * HD + d] = A * (1.0f / L);
    }
    if (tid == 0) a.counters[blockIdx.x] = 0;
}

/* ---- prefill ---------------------------------------------------------- */

#define AP_WARPS 8
#define AP_ROWS 32

template <typename CT, int DPL>
__global__ void __launch_bounds__(AP_WARPS * 32) k_attn_prefill(at_args a) {
    constexpr int HD = 32 * DPL;
    __shared__ float Ks[AP_ROWS][HD + 1], Vs[AP_ROWS][HD + 1];
    __shared__ float Qs[AP_WARPS][HD];
    __shared__ int s_pmax;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, tid = threadIdx.x;
    const int n_tok = a.step[QG_STEP_N_TOK];
    const int t0 = blockIdx.y * AP_WARPS;
    if (t0 >= n_tok) return;
    const int h = blockIdx.x, kvh = h / (a.nh / a.nkv), Dq = a.nh * HD;
    const int t = t0 + warp;
    const bool valid = t < n_tok;
    const int my_pos = valid ? a.pos[t] : -1;
    for (int d = lane; d < HD; d += 32) Qs[warp][d] = valid ? a.q[(size_t)t * Dq + h * HD + d] : 0.0f;
    if (tid == 0) s_pmax = -1;
    __syncthreads();
    if (lane == 0) atomicMax(&s_pmax, my_pos);
    __syncthreads();
    const int nrows = s_pmax + 1;
    const CT *kc = (const CT *)a.kc + (size_t)kvh * HD, *vc = (const CT *)a.vc + (size_t)kvh * HD;
    float m = -INFINITY, l = 0.0f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
    for (int j0 = 0; j0 < nrows; j0 += AP_ROWS) {
        __syncthreads();
        for (int idx = tid; idx < AP_ROWS * HD; idx += AP_WARPS * 32) {
            const int r = idx / HD, d = idx - r * HD, j = j0 + r;
            const bool in = j < nrows;
            Ks[r][d] = in ? cache_get(kc + (size_t)j * a.Dkv + d) : 0.0f;
            Vs[r][d] = in ? cache_get(vc + (size_t)j * a.Dkv + d) : 0.0f;
        }
        __syncthreads();
        if (!valid) continue;
        const int j = j0 + lane;
        const bool ok = j <= my_pos;
        float sc = -INFINITY;
        if (ok) {
            float d0 = 0.0f;
#pragma unroll 8
            for (int d = 0; d < HD; d++) d0 = fmaf(Qs[warp][d], Ks[lane][d], d0);
            sc = d0 * a.scale;
        }
        const float mt = qg_warp_max(sc);
        if (mt == -INFINITY) continue;
        const float mn = fmaxf(m, mt);
        const float c = expf(m - mn);
        const float p = ok ? expf(sc - mn) : 0.0f;
        l = l * c + qg_warp_sum(p);
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] *= c;
#pragma unroll 4
        for (int r = 0; r < AP_ROWS; r++) {
            const float pr = __shfl_sync(0xffffffffu, p, r);
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] = fmaf(pr, Vs[r][lane + 32 * i], acc[i]);
        }
        m = mn;
    }
    if (!valid) return;
    const float inv = 1.0f / l;
#pragma unroll
    for (int i = 0; i < DPL; i++) a.o[(size_t)t * Dq + h * HD + lane + 32 * i] = acc[i] * inv;
}

/* ---- launch ----------------------------------------------------------- */

/* q heads per decode CTA: the largest of 8, 4, 2, 1 dividing the group. */
static int attn_gc(const qg_op_params *p) {
    const int G = p->n_head / p->n_head_kv;
    for (int gc = 8; gc > 1; gc >>= 1)
        if (G % gc == 0) return gc;
    return 1;
}

#define AD_MIN_CHUNK 32

/* Most splits of the decode kernel: about two CTAs per multiprocessor,
 * never more than the cache can fill with AD_MIN_CHUNK rows each. */
static int attn_ns_max(const qg_graph *g, const qg_op_params *p, const qg_cuda_opts *o) {
    const int groups = p->n_head / attn_gc(p);
    const int n_sm = o->n_sm > 0 ? o->n_sm : 132;
    int ns = (2 * n_sm + groups - 1) / groups;
    const int by_rows = (g->n_ctx + AD_MIN_CHUNK - 1) / AD_MIN_CHUNK;
    if (ns > by_rows) ns = by_rows;
    if (ns > 64) ns = 64;
    return ns < 1 ? 1 : ns;
}

void qg_cu_attention_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o,
                           qg_cu_bump *b, int *n_counters) {
    *n_counters = 0;
    if (g->n_tok_max != 1) return;
    const qg_op_params *p = &n->p;
    const int ns = attn_ns_max(g, p, o);
    b->take<float>((size_t)p->n_head * ns * (p->head_dim + 2));
    *n_counters = p->n_head / attn_gc(p);
}

template <typename CT> static cudaError_t attention_t(const qg_cuda_launch *l) {
    const qg_op_params *p = &l->n->p;
    const qg_tensor *kt = qg_cu_in(l, 3);
    const int Dkv = (int)kt->ne[0], C = (int)kt->ne[1], hd = p->head_dim, T = l->g->n_tok_max;
    cudaStream_t s = qg_cu_stream(l);
    CT *kc = qg_cu_in_ptr<CT>(l, 3), *vc = qg_cu_in_ptr<CT>(l, 4);
    const int32_t *pos = qg_cu_in_ptr<const int32_t>(l, 5);
    k_kv_append<CT><<<dim3(T, 2), 256, 0, s>>>(qg_cu_in_ptr<const float>(l, 1),
                                               qg_cu_in_ptr<const float>(l, 2), pos, l->step, Dkv, C,
                                               kc, vc);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
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
    if (T == 1) {
        const int gc = attn_gc(p);
        a.part = (float *)l->scratch;
        a.counters = l->counters;
        a.ns_max = attn_ns_max(l->g, p, &l->o);
        a.min_chunk = AD_MIN_CHUNK;
        const dim3 grid(p->n_head / gc, a.ns_max);
#define AD_CASE(GCV, DPLV)                                                        \
    if (gc == GCV && dpl == DPLV) k_attn_decode<CT, GCV, DPLV><<<grid, AD_WARPS * 32, 0, s>>>(a)
#define AD_GC(GCV)                                                                \
    AD_CASE(GCV, 1);                                                              \
    else AD_CASE(GCV, 2);                                                         \
    else AD_CASE(GCV, 3);                                                         \
    else AD_CASE(GCV, 4)
        AD_GC(8);
        else AD_GC(4);
        else AD_GC(2);
        else AD_GC(1);
        else return cudaErrorInvalidValue;
#undef AD_GC
#undef AD_CASE
    } else {
        const dim3 grid(p->n_head, (T + AP_WARPS - 1) / AP_WARPS);
        if (dpl == 1) k_attn_prefill<CT, 1><<<grid, AP_WARPS * 32, 0, s>>>(a);
        else if (dpl == 2) k_attn_prefill<CT, 2><<<grid, AP_WARPS * 32, 0, s>>>(a);
        else if (dpl == 3) k_attn_prefill<CT, 3><<<grid, AP_WARPS * 32, 0, s>>>(a);
        else if (dpl == 4) k_attn_prefill<CT, 4><<<grid, AP_WARPS * 32, 0, s>>>(a);
        else return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

/* attention: q (Dq,T), k (Dkv,T), v (Dkv,T), kcache (Dkv,C), vcache (Dkv,C),
 * pos (I32,T) -> o (Dq,T) */
cudaError_t qg_cu_attention(const qg_cuda_launch *l) {
    return qg_cu_in(l, 3)->type == QG_F16 ? attention_t<half>(l) : attention_t<float>(l);
}
