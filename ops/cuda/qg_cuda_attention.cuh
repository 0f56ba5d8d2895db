/*
 * qg_cuda_attention.cuh - what the decode attention kernels share
 * (op_attention.cu's f32 SIMT kernels, op_attention_decode_tc.cu's tensor-
 * core kernel): the cache element conversions, the rope of one head (the
 * rope kernel's arithmetic, also run inside decode attention when the
 * executor folds the rope node into it) and the kernels' argument block.
 */
#ifndef QG_CUDA_ATTENTION_CUH
#define QG_CUDA_ATTENTION_CUH

#include "qg_cuda_internal.cuh"

__device__ __forceinline__ void cache_put(half *d, float v) { *d = __float2half_rn(v); }
__device__ __forceinline__ void cache_put(float *d, float v) { *d = v; }
__device__ __forceinline__ float cache_get(const half *p) { return __half2float(*p); }
__device__ __forceinline__ float cache_get(const float *p) { return *p; }

/* The append folded into rope: caches (Dkv, C), F16 or F32. */
struct rope_kv {
    void *kc, *vc;
    const float *v; /* (Dkv, T) */
    int f16, C;
};

__device__ __forceinline__ void kv_put(const rope_kv &kv, bool isv, size_t i, float x) {
    void *c = isv ? kv.vc : kv.kc;
    if (kv.f16) cache_put((half *)c + i, x);
    else cache_put((float *)c + i, x);
}

/* cos and sin of angle r at position p: from the CPU's table (csp: the
 * position's row, cos | sin) when there is one, else float64 sincos of
 * p * freq[r] rounded to f32. */
__device__ __forceinline__ void rope_angle(const float *csp, const double *freq, int p, int r,
                                           int half, float *c, float *s) {
    if (csp) {
        *c = csp[r];
        *s = csp[half + r];
        return;
    }
    double sd, cd;
    sincos((double)p * freq[r], &sd, &cd);
    *c = (float)cd;
    *s = (float)sd;
}

/* One warp: rmsnorm(src) * w then RoPE at position p into dst (hd floats,
 * shared or global), k_rope's arithmetic exactly; round: each output
 * rounded as the cache stores it (CT), for this step's K row. */
template <typename CT>
__device__ __forceinline__ void warp_rope_row(const float *__restrict__ src,
                                              const float *__restrict__ w,
                                              const double *__restrict__ freq,
                                              const float *__restrict__ csp, int hd, float eps,
                                              int p, bool round, float *dst);

template <typename CT>
__device__ __forceinline__ void warp_rope(const float *__restrict__ src, const float *__restrict__ w,
                                          const double *__restrict__ freq,
                                          const float *__restrict__ cs, int ncs, int hd, float eps,
                                          int p, bool round, float *dst) {
    warp_rope_row<CT>(src, w, freq, cs && p >= 0 && p < ncs ? cs + (size_t)p * hd : nullptr, hd,
                      eps, p, round, dst);
}

/* warp_rope with position p's row of the cos | sin table given (csp, hd
 * floats, or NULL: float64 sincos), wherever it lives (the decode kernels
 * stage it and the norm weights w in shared memory before the launch
 * wait). */
template <typename CT>
__device__ __forceinline__ void warp_rope_row(const float *__restrict__ src,
                                              const float *__restrict__ w,
                                              const double *__restrict__ freq,
                                              const float *__restrict__ csp, int hd, float eps,
                                              int p, bool round, float *dst) {
    const int lane = threadIdx.x & 31;
    float ss = 0.0f;
    for (int i = lane; i < hd; i += 32) ss = fmaf(src[i], src[i], ss);
    ss = qg_warp_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)hd + eps);
    const int half = hd / 2;
    for (int r = lane; r < half; r += 32) {
        const float y0 = __fmul_rn(__fmul_rn(src[r], scale), w[r]);
        const float y1 = __fmul_rn(__fmul_rn(src[r + half], scale), w[r + half]);
        float c, s;
        rope_angle(csp, freq, p, r, half, &c, &s);
        float o0 = __fsub_rn(__fmul_rn(y0, c), __fmul_rn(y1, s));
        float o1 = __fadd_rn(__fmul_rn(y0, s), __fmul_rn(y1, c));
        if (round) {
            CT t0, t1;
            cache_put(&t0, o0);
            cache_put(&t1, o1);
            o0 = cache_get(&t0);
            o1 = cache_get(&t1);
        }
        dst[r] = o0;
        dst[r + half] = o1;
    }
}

struct at_args {
    const float *q;
    const void *kc, *vc;
    const int32_t *pos, *step;
    int nh, nkv, Dkv;
    float scale;   /* 1 / sqrt(hd) (f32 SIMT kernels) */
    float sl2;     /* log2(e) / sqrt(hd) (tensor-core kernel: scores in
                      log2 units) */
    float *o;
    float *part;   /* (nh, NSP) max | (nh, NSP) sum | (nh, NSP, hd) acc */
    int *counters; /* (nh / gw_lo) */
    int gw;        /* q heads per CTA past gw_rows cache rows */
    int gw_lo;     /* q heads per CTA up to gw_rows rows (short contexts:
                      more CTAs, each K/V row read by more of them) */
    int gw_rows;
    int ns_lo;     /* most splits up to gw_rows rows */
    int ns_max, nsp, min_chunk;
    /* rope folded in (decode): raw q / k / v of this step, norms, table */
    bool rope;
    const float *rq, *rk, *rv, *qn, *kn;
    const double *freq;
    const float *cs; /* the CPU's cos | sin table (hd, ncs), or NULL */
    int ncs;
    float eps;
    void *kcw, *vcw; /* the caches, for the append */
    bool early;      /* tensor-core kernel: let the next kernel launch at
                        each block's start (o.staged == 1) */
};

/* Decode attention on the f16 tensor cores (op_attention_decode_tc.cu):
 * can it take this node (F16 cache, head_dim 32 / 64 / 96 / 128, the
 * executor's attn_tc option)?  Launch it with a's decode fields set by
 * op_attention.cu (gw, ns_max, min_chunk, part, counters, rope fold). */
bool qg_cu_attn_tc_ok(const qg_cuda_launch *l, qg_dtype cache_type, int hd);
cudaError_t qg_cu_attention_decode_tc(const qg_cuda_launch *l, const at_args &a, int hd);
/* Raise the tensor-core decode kernel's dynamic shared memory limit (once,
 * from qg_cu_gemm_prepare's caller). */
cudaError_t qg_cu_attention_prepare(void);

#endif
