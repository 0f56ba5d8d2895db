/*
 * op_matvec.cu - single-token products (decode graphs): y = W x with one
 * warp per output row, and the sparse-expert decode path.
 *
 * A block stages x in shared memory (optionally normalizing it: the
 * executor folds an rmsnorm node into its consumer, and the staged values
 * are then exactly what the rmsnorm kernel would have written), then each
 * warp takes rows in a grid-stride loop; lane l sums units l, l+32, ... of
 * the row (qg_unit_dot: exactly dequantized weights, f32 FMAs) and the warp
 * reduces.  Grids are capped at a few blocks per multiprocessor so the
 * staging is paid a bounded number of times.
 *
 * Sparse experts, decode (moe_fused, 3 launches):
 *   1 k_router_topk  router rows -> logits, one row per block; the last
 *                    block to finish (an atomic ticket) runs softmax /
 *                    top-k / renormalize in one warp and writes ids, wts
 *   2 k_gate_up      rows (k, f): h[k,f] = silu(gate_e x) * (up_e x),
 *                    e = ids[k] read from device memory
 *   3 k_down         y[r] = sum_k wts[k] * (down_e h_k)[r] (+ residual)
 */
#include "qg_cuda_i8_ops.cuh"
#include "qg_cuda_internal.cuh"

#define MV_THREADS 256
#define MV_WARPS (MV_THREADS / 32)
/* Largest x staged in shared memory (floats). */
#define MV_XS_MAX 10240

/* Most float4 loads per thread when staging (MV_XS_MAX floats over
 * MV_THREADS threads). */
#define MV_STAGE_V4 ((MV_XS_MAX / 4 + MV_THREADS - 1) / MV_THREADS)

/* Stage x (n floats, n % 4 == 0, 16-byte aligned, n <= MV_XS_MAX) into xs,
 * normalized by norm_w when non-NULL: xs = (x * scale) * w with scale =
 * 1 / sqrt(mean(x^2) + eps), the sum of squares in qg_sumsq_fixed's order
 * so the values are exactly the rmsnorm kernel's.  red: QG_SUMSQ_CHUNKS
 * floats of shared memory.  All of a thread's loads are issued before any
 * is used (one memory latency, not one per element).  nws (optional):
 * norm_w already in shared memory, float4 i copied by thread i %
 * MV_THREADS (rt_stage_norm), so no other thread's copy is read.  Block of
 * MV_THREADS threads; ends with __syncthreads(). */
__device__ __forceinline__ void stage_x(const float *__restrict__ x, int n,
                                        const float *__restrict__ norm_w, float eps, float *xs,
                                        float *red, const float *nws = nullptr) {
    const int n4 = n / 4, tid = threadIdx.x;
    float4 v[MV_STAGE_V4];
#pragma unroll
    for (int k = 0; k < MV_STAGE_V4; k++) {
        const int i = tid + MV_THREADS * k;
        v[k] = i < n4 ? ((const float4 *)x)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float4 *xs4 = (float4 *)xs;
    if (norm_w) {
        /* stage plainly, then the sum of squares in qg_sumsq_fixed's
         * order (the rmsnorm kernel's) */
#pragma unroll
        for (int k = 0; k < MV_STAGE_V4; k++) {
            const int i = tid + MV_THREADS * k;
            if (i < n4) xs4[i] = v[k];
        }
        __syncthreads();
        const float scale = 1.0f / sqrtf(qg_sumsq_fixed(xs, n, red) / (float)n + eps);
        float4 w[MV_STAGE_V4];
#pragma unroll
        for (int k = 0; k < MV_STAGE_V4; k++) {
            const int i = tid + MV_THREADS * k;
            w[k] = i >= n4 ? make_float4(0.0f, 0.0f, 0.0f, 0.0f)
                           : (nws ? ((const float4 *)nws)[i] : ((const float4 *)norm_w)[i]);
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < MV_STAGE_V4; k++) {
            const int i = tid + MV_THREADS * k;
            if (i < n4)
                xs4[i] = make_float4(__fmul_rn(__fmul_rn(v[k].x, scale), w[k].x),
                                     __fmul_rn(__fmul_rn(v[k].y, scale), w[k].y),
                                     __fmul_rn(__fmul_rn(v[k].z, scale), w[k].z),
                                     __fmul_rn(__fmul_rn(v[k].w, scale), w[k].w));
        }
    } else {
#pragma unroll
        for (int k = 0; k < MV_STAGE_V4; k++) {
            const int i = tid + MV_THREADS * k;
            if (i < n4) xs4[i] = v[k];
        }
    }
    __syncthreads();
}

/* ---- y = W x for up to three matrices of one dtype ------------------- */

struct mv_args {
    const uint8_t *w0, *w1, *w2;
    size_t rb0, rb1, rb2;
    int m0, m1, m2;
    float *y0, *y1, *y2;
    int n;
    const float *x;
    const int32_t *step;
    bool last_col;       /* x column n_tok-1 */
    const float *norm_w; /* pre-norm, or NULL */
    float eps;
    const float *add;    /* residual for segment 0, or NULL */
};

template <int DT, bool XS>
__global__ void __launch_bounds__(MV_THREADS) k_matvec(mv_args a) {
    extern __shared__ float xs[];
    __shared__ float red[QG_SUMSQ_CHUNKS];
    {
        /* the weights are constant: ask L2 for this warp's first rows (lane
         * i its i-th row, up to 4) while x is staged (and, with programmatic
         * launch, while the previous kernel finishes) */
        const int lane = threadIdx.x & 31;
        int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5) + lane * gridDim.x * MV_WARPS;
        if (lane < 4 && r < a.m0 + a.m1 + a.m2) {
            const uint8_t *w = a.w0;
            size_t rb = a.rb0;
            if (r >= a.m0) {
                r -= a.m0;
                w = a.w1;
                rb = a.rb1;
                if (r >= a.m1) {
                    r -= a.m1;
                    w = a.w2;
                    rb = a.rb2;
                }
            }
            qg_prefetch_l2(w + (size_t)r * rb, rb);
        }
    }
    qg_pdl_wait();
    qg_pdl_trigger();
    const float *x = a.x;
    if (a.last_col) x += (size_t)(a.step[QG_STEP_N_TOK] - 1) * a.n;
    if (XS) {
        stage_x(x, a.n, a.norm_w, a.eps, xs, red);
        x = xs;
    }
    const int lane = threadIdx.x & 31;
    const int M = a.m0 + a.m1 + a.m2, U = a.n / 32;
    const int nw = gridDim.x * MV_WARPS;
    for (int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5); r < M; r += nw) {
        int rr = r;
        const uint8_t *w = a.w0;
        size_t rb = a.rb0;
        float *y = a.y0;
        if (rr >= a.m0) {
            rr -= a.m0;
            w = a.w1;
            rb = a.rb1;
            y = a.y1;
            if (rr >= a.m1) {
                rr -= a.m1;
                w = a.w2;
                rb = a.rb2;
                y = a.y2;
            }
        }
        const uint8_t *row = w + (size_t)rr * rb;
        float acc = 0.0f;
#pragma unroll 2
        for (int u = lane; u < U; u += 32) acc += qg_unit_dot<DT>(row, u, x);
        acc = qg_warp_sum(acc);
        if (lane == 0) y[rr] = (a.add && y == a.y0) ? a.add[rr] + acc : acc;
    }
}

/* Launch k_matvec over the matrices of one dtype. */
static cudaError_t matvec_launch(const qg_cuda_launch *l, const qg_cu_mat *const *m, int nm,
                                 int n, const float *x, bool last_col, const float *add) {
    mv_args a = {};
    const uint8_t **w[3] = {&a.w0, &a.w1, &a.w2};
    size_t *rb[3] = {&a.rb0, &a.rb1, &a.rb2};
    int *mm[3] = {&a.m0, &a.m1, &a.m2};
    float **y[3] = {&a.y0, &a.y1, &a.y2};
    int M = 0;
    for (int i = 0; i < nm; i++) {
        *w[i] = m[i]->w;
        *rb[i] = m[i]->rb;
        *mm[i] = m[i]->m;
        *y[i] = m[i]->y;
        M += m[i]->m;
    }
    a.n = n;
    a.x = x;
    a.step = l->step;
    a.last_col = last_col;
    a.norm_w = l->pre_norm;
    a.eps = l->pre_eps;
    a.add = add;
    const bool xs = n <= MV_XS_MAX;
    if (!xs && l->pre_norm) return cudaErrorInvalidValue; /* the executor never asks */
    const int blocks = qg_cu_blocks(M, MV_WARPS, l->o.n_sm, 4);
    const size_t smem = xs ? sizeof(float) * (size_t)n : 0;
    cudaError_t e = cudaSuccess;
    if (xs) {
        QG_CUDA_DISPATCH_DT(m[0]->type, e = qg_cu_launch(l, k_matvec<DT, true>, dim3(blocks),
                                                         dim3(MV_THREADS), smem, a));
    } else {
        QG_CUDA_DISPATCH_DT(m[0]->type, e = qg_cu_launch(l, k_matvec<DT, false>, dim3(blocks),
                                                         dim3(MV_THREADS), 0, a));
    }
    return e;
}

/* Decode products: group the matrices by dtype, one launch per group. */
static cudaError_t matvec_all(const qg_cuda_launch *l, const qg_cu_mat *mats, int n_mats, int n,
                              const float *x, bool last_col, const float *add) {
    if (l->o.i8_decode && qg_i8_mv_ok(mats, n_mats, n))
        return qg_i8_mv(l, mats, n_mats, n, x, last_col, add);
    bool done[3] = {false, false, false};
    for (int i = 0; i < n_mats; i++) {
        if (done[i]) continue;
        const qg_cu_mat *grp[3];
        int ng = 0;
        for (int j = i; j < n_mats; j++)
            if (!done[j] && mats[j].type == mats[i].type) {
                grp[ng++] = &mats[j];
                done[j] = true;
            }
        cudaError_t e = matvec_launch(l, grp, ng, n, x, last_col, i == 0 ? add : nullptr);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

cudaError_t qg_cu_product(const qg_cuda_launch *l, const qg_cu_mat *mats, int n_mats, int n,
                          const float *x, int ldx, bool last_col, const float *add) {
    if (qg_cu_decode(l->g) || last_col) return matvec_all(l, mats, n_mats, n, x, last_col, add);
    if (l->pre_norm) return cudaErrorInvalidValue; /* decode-only fusion */
    /* all matrices in one grid over one image where the integer path takes
     * them, else one tiled product each (op_gemm.cu; declared in
     * qg_cuda_gemm_i8.cuh) */
    cudaError_t qg_cu_gemm_multi(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, int n,
                                 const float *x, int ldx, const float *add);
    return qg_cu_gemm_multi(l, mats, n_mats, n, x, ldx, add);
}

/* ---- gate / up: h = silu(gate x) * (up x), per expert ------------------ */

struct gu_args {
    const uint8_t *wg, *wu; /* wu NULL: single matrix, raw dots into h */
    size_t rbg, rbu, esg, esu;
    int n, F, K, X;
    const float *x;
    const int32_t *ids; /* (K) expert ids, or NULL: one dense matrix */
    const float *norm_w;
    float eps;
    float *h; /* (F, K) */
};

template <int DT, bool XS>
__global__ void __launch_bounds__(MV_THREADS) k_gate_up(gu_args a) {
    extern __shared__ float xs[];
    __shared__ float red[QG_SUMSQ_CHUNKS];
    qg_pdl_wait();
    qg_pdl_trigger();
    {
        /* ask L2 for this warp's first two rows of gate and up (the expert
         * ids are known now) while x is staged */
        const int lane = threadIdx.x & 31;
        const int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5) + (lane >> 1) * gridDim.x * MV_WARPS;
        if (lane < 4 && r < a.K * a.F) {
            const int k = r / a.F, f = r - k * a.F, e = a.ids ? a.ids[k] : 0;
            if (e >= 0 && e < a.X) {
                if (!(lane & 1)) qg_prefetch_l2(a.wg + (size_t)e * a.esg + (size_t)f * a.rbg, a.rbg);
                else if (a.wu) qg_prefetch_l2(a.wu + (size_t)e * a.esu + (size_t)f * a.rbu, a.rbu);
            }
        }
    }
    const float *x = a.x;
    if (XS) {
        stage_x(x, a.n, a.norm_w, a.eps, xs, red);
        x = xs;
    }
    const int lane = threadIdx.x & 31, U = a.n / 32;
    const int rows = a.K * a.F, nw = gridDim.x * MV_WARPS;
    for (int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5); r < rows; r += nw) {
        const int k = r / a.F, f = r - k * a.F;
        const int e = a.ids ? a.ids[k] : 0;
        if (e < 0 || e >= a.X) {
            if (lane == 0) a.h[r] = __int_as_float(0x7fc00000);
            continue;
        }
        const uint8_t *rg = a.wg + (size_t)e * a.esg + (size_t)f * a.rbg;
        float g = 0.0f, u = 0.0f;
        if (a.wu) {
            const uint8_t *ru = a.wu + (size_t)e * a.esu + (size_t)f * a.rbu;
#pragma unroll 2
            for (int uu = lane; uu < U; uu += 32) {
                g += qg_unit_dot<DT>(rg, uu, x);
                u += qg_unit_dot<DT>(ru, uu, x);
            }
            g = qg_warp_sum(g);
            u = qg_warp_sum(u);
            if (lane == 0) a.h[r] = qg_silu(g) * u;
        } else {
#pragma unroll 2
            for (int uu = lane; uu < U; uu += 32) g += qg_unit_dot<DT>(rg, uu, x);
            g = qg_warp_sum(g);
            if (lane == 0) a.h[r] = g;
        }
    }
}

/* h = silu(g) * u elementwise over per_col * n_tok live elements (n_tok
 * from the step input; step NULL: one column). */
__global__ void k_silu_mul(const float *__restrict__ g, const float *__restrict__ u,
                           int64_t per_col, const int32_t *__restrict__ step,
                           float *__restrict__ h) {
    qg_pdl_wait();
    qg_pdl_trigger();
    const int64_t n = per_col * (step ? step[QG_STEP_N_TOK] : 1);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        h[i] = qg_silu(g[i]) * u[i];
}

static cudaError_t silu_mul(const qg_cuda_launch *l, const float *g, const float *u,
                            int64_t per_col, bool per_token, float *h) {
    const int64_t cnt = per_col * (per_token ? l->g->n_tok_max : 1);
    return qg_cu_launch(l, k_silu_mul, dim3(qg_cu_blocks(cnt, 256, l->o.n_sm, 4)), dim3(256), 0,
                        g, u, per_col, per_token ? l->step : nullptr, h);
}

static cudaError_t gate_up_launch(const qg_cuda_launch *l, qg_dtype t, const gu_args &a) {
    const bool xs = a.n <= MV_XS_MAX;
    if (!xs && a.norm_w) return cudaErrorInvalidValue;
    const int blocks = qg_cu_blocks((int64_t)a.K * a.F, MV_WARPS, l->o.n_sm, 4);
    const size_t smem = xs ? sizeof(float) * (size_t)a.n : 0;
    cudaError_t e = cudaSuccess;
    if (xs) {
        QG_CUDA_DISPATCH_DT(t, e = qg_cu_launch(l, k_gate_up<DT, true>, dim3(blocks),
                                                dim3(MV_THREADS), smem, a));
    } else {
        QG_CUDA_DISPATCH_DT(t, e = qg_cu_launch(l, k_gate_up<DT, false>, dim3(blocks),
                                                dim3(MV_THREADS), 0, a));
    }
    return e;
}

/* Decode gate/up of K experts (ids on the device; NULL: the dense FFN with
 * K = 1).  Same dtypes: one launch.  Mixed: gate and up separately into
 * g, u (F*K floats each, scratch), then silu(g) * u. */
static cudaError_t gate_up_decode(const qg_cuda_launch *l, const qg_cu_mat *gate,
                                  const qg_cu_mat *up, int n, int K, int X, const float *x,
                                  const int32_t *ids, float *h, float *g, float *u,
                                  const qg_cu_mat *pf_down) {
    gu_args a = {};
    a.wg = gate->w;
    a.rbg = gate->rb;
    a.esg = gate->es;
    a.n = n;
    a.F = gate->m;
    a.K = K;
    a.X = X;
    a.x = x;
    a.ids = ids;
    a.norm_w = l->pre_norm;
    a.eps = l->pre_eps;
    if (l->o.i8_decode && qg_i8_gu_ok(gate, up, n)) return qg_i8_gu(l, gate, up, n, K, X, x, ids, h, pf_down);
    if (gate->type == up->type) {
        a.wu = up->w;
        a.rbu = up->rb;
        a.esu = up->es;
        a.h = h;
        return gate_up_launch(l, gate->type, a);
    }
    a.h = g;
    cudaError_t e = gate_up_launch(l, gate->type, a);
    if (e != cudaSuccess) return e;
    a.wg = up->w;
    a.rbg = up->rb;
    a.esg = up->es;
    a.h = u;
    if ((e = gate_up_launch(l, up->type, a)) != cudaSuccess) return e;
    return silu_mul(l, g, u, (int64_t)gate->m * K, false, h);
}

/* ---- down projection + weighted sum ----------------------------------- */

struct dn_args {
    const uint8_t *w;
    size_t rb, es;
    int F, E, K, X;
    const float *h; /* (F, K) */
    const int32_t *ids;
    const float *wts;
    const float *add;
    float *y; /* (E) */
};

#define DN_KMAX 32
#define DN_HS_MAX 11264 /* 44 KiB of shared memory */

template <int DT, bool HS>
__global__ void __launch_bounds__(MV_THREADS) k_down(dn_args a) {
    extern __shared__ float hs[];
    __shared__ int sid[DN_KMAX];
    __shared__ float sw[DN_KMAX];
    qg_pdl_wait();
    qg_pdl_trigger();
    {
        /* ask L2 for this warp's first row of each chosen expert (lane k:
         * expert k) while h is staged */
        const int lane = threadIdx.x & 31, r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
        if (lane < a.K && r < a.E) {
            const int e = a.ids[lane];
            if (e >= 0 && e < a.X) qg_prefetch_l2(a.w + (size_t)e * a.es + (size_t)r * a.rb, a.rb);
        }
    }
    const float *h = a.h;
    if (HS) {
        /* (K*F)/4 float4s, all loads of a thread in flight at once */
        constexpr int NV = (DN_HS_MAX / 4 + MV_THREADS - 1) / MV_THREADS;
        const int n4 = a.K * a.F / 4;
        float4 v[NV];
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int i = threadIdx.x + MV_THREADS * k;
            if (i < n4) v[k] = ((const float4 *)h)[i];
        }
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int i = threadIdx.x + MV_THREADS * k;
            if (i < n4) ((float4 *)hs)[i] = v[k];
        }
        h = hs;
    }
    if (threadIdx.x < a.K) {
        const int e = a.ids[threadIdx.x];
        sid[threadIdx.x] = (e >= 0 && e < a.X) ? e : -1;
        sw[threadIdx.x] = a.wts[threadIdx.x];
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, UF = a.F / 32, P = a.K * UF;
    const int nw = gridDim.x * MV_WARPS;
    for (int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5); r < a.E; r += nw) {
        float acc = 0.0f;
        for (int pi = lane; pi < P; pi += 32) {
            const int k = pi / UF, u = pi - k * UF;
            const int e = sid[k];
            if (e < 0) {
                acc = __int_as_float(0x7fc00000);
                continue;
            }
            acc = fmaf(sw[k], qg_unit_dot<DT>(a.w + (size_t)e * a.es + (size_t)r * a.rb, u,
                                              h + (size_t)k * a.F),
                       acc);
        }
        acc = qg_warp_sum(acc);
        if (lane == 0) a.y[r] = a.add ? a.add[r] + acc : acc;
    }
}

static cudaError_t down_decode(const qg_cuda_launch *l, const qg_cu_mat *down, int F, int K,
                               int X, const float *h, const int32_t *ids, const float *wts,
                               const float *add, float *y, int *flag = nullptr) {
    if (l->o.i8_decode && qg_i8_dn_ok(down, F, K))
        return qg_i8_dn(l, down, F, K, X, h, ids, wts, add, y, flag);
    if (K > DN_KMAX) return cudaErrorInvalidValue;
    dn_args a = {down->w, down->rb, down->es, F, down->m, K, X, h, ids, wts, add, y};
    const bool hs = K * F <= DN_HS_MAX;
    const int blocks = qg_cu_blocks(down->m, MV_WARPS, l->o.n_sm, 4);
    cudaError_t e = cudaSuccess;
    if (hs) {
        const size_t smem = sizeof(float) * (size_t)K * F;
        QG_CUDA_DISPATCH_DT(down->type, e = qg_cu_launch(l, k_down<DT, true>, dim3(blocks),
                                                         dim3(MV_THREADS), smem, a));
    } else {
        QG_CUDA_DISPATCH_DT(down->type, e = qg_cu_launch(l, k_down<DT, false>, dim3(blocks),
                                                         dim3(MV_THREADS), 0, a));
    }
    return e;
}

/* ---- router + top-k (decode) ----------------------------------------- */

struct rt_args {
    const uint8_t *w;
    size_t rb;
    int n, X, K;
    const float *x;
    const float *norm_w;
    float eps;
    float *logits; /* (X) scratch */
    int32_t *ids;
    float *wts;
    int *counter;
};

/* F32 router rows a thread holds in registers: up to RT_V4 float4 each. */
#define RT_V4 4
/* Longest input whose norm weights the router stages in shared memory. */
#define RT_NWS_MAX 4096

/* Does the register path take F32 router rows of n elements? */
__host__ __device__ constexpr bool rt_regs_ok(int n) {
    return n % (4 * MV_THREADS) == 0 && n <= 4 * RT_V4 * MV_THREADS;
}

template <int DT>
__global__ void __launch_bounds__(MV_THREADS) k_router_topk(rt_args a) {
    extern __shared__ float sm[]; /* xs (n) | p (X) | nws (n), X % 4 == 0 */
    __shared__ float red[QG_SUMSQ_CHUNKS];
    __shared__ int s_last;
    float *xs = sm, *p = sm + a.n, *nws = sm + a.n + a.X;
    /* constant data goes out before the launch wait: an F32 router's first
     * row straight into registers (else asked of L2), and the norm weights
     * into shared memory */
    constexpr bool F32 = DT == QG_F32;
    const bool regs = F32 && rt_regs_ok(a.n) && blockIdx.x < a.X;
    const int nv = a.n / (4 * MV_THREADS);
    float4 wr[RT_V4];
    if (regs) {
        const float4 *w4 = (const float4 *)(a.w + (size_t)blockIdx.x * a.rb);
#pragma unroll
        for (int k = 0; k < RT_V4; k++)
            if (k < nv) wr[k] = __ldg(w4 + threadIdx.x + MV_THREADS * k);
    } else if (threadIdx.x == 0 && blockIdx.x < a.X) {
        qg_prefetch_l2(a.w + (size_t)blockIdx.x * a.rb, a.rb);
    }
    const bool staged = a.norm_w && a.X % 4 == 0 && a.n <= RT_NWS_MAX;
    if (staged) {
        for (int i = threadIdx.x; i < a.n / 4; i += MV_THREADS) qg_cp_async16(nws + 4 * i, a.norm_w + 4 * i);
        qg_cp_commit();
    }
    qg_pdl_wait();
    qg_pdl_trigger();
    if (staged) qg_cp_wait_all();
    stage_x(a.x, a.n, a.norm_w, a.eps, xs, red, staged ? nws : nullptr);
    /* one row per block (the router has few rows and long ones: a warp per
     * row left most of the GPU idle), every thread over units (or, from
     * registers, over float4 t, t + MV_THREADS, ...) */
    const int U = a.n / 32;
    for (int r = blockIdx.x; r < a.X; r += gridDim.x) {
        const uint8_t *row = a.w + (size_t)r * a.rb;
        float acc = 0.0f;
        if (regs && r == (int)blockIdx.x) {
            const float4 *x4 = (const float4 *)xs;
#pragma unroll
            for (int k = 0; k < RT_V4; k++) {
                if (k >= nv) break;
                const float4 w = wr[k], v = x4[threadIdx.x + MV_THREADS * k];
                acc = fmaf(w.x, v.x, acc);
                acc = fmaf(w.y, v.y, acc);
                acc = fmaf(w.z, v.z, acc);
                acc = fmaf(w.w, v.w, acc);
            }
        } else {
            for (int u = threadIdx.x; u < U; u += MV_THREADS) acc += qg_unit_dot<DT>(row, u, xs);
        }
        acc = qg_block_sum(acc, red);
        if (threadIdx.x == 0) a.logits[r] = acc;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(a.counter, 1) == (int)gridDim.x - 1;
    __syncthreads();
    if (!s_last) return;
    if (threadIdx.x < 32) qg_cu_warp_topk(a.logits, a.X, a.K, a.ids, a.wts, p);
    if (threadIdx.x == 0) *a.counter = 0;
}

static cudaError_t router_topk_decode(const qg_cuda_launch *l, const qg_cu_mat *router, int n,
                                      int K, const float *x, float *logits, int32_t *ids,
                                      float *wts, int *counter) {
    if (n > MV_XS_MAX) return cudaErrorInvalidValue;
    rt_args a = {router->w, router->rb, n, router->m, K, x, l->pre_norm, l->pre_eps,
                 logits, ids, wts, counter};
    const int blocks = qg_cu_blocks(router->m, 1, l->o.n_sm, 2);
    const size_t smem =
        sizeof(float) * ((size_t)n + (size_t)router->m + (n <= RT_NWS_MAX ? (size_t)n : 0));
    cudaError_t e = cudaSuccess;
    QG_CUDA_DISPATCH_DT(router->type, e = qg_cu_launch(l, k_router_topk<DT>, dim3(blocks),
                                                       dim3(MV_THREADS), smem, a));
    return e;
}

/* ---- the ops ---------------------------------------------------------- */

/* Matrix view of weight tensor t (rows of ne[0], ne[1] rows per expert). */
static qg_cu_mat mat_of(const qg_tensor *t, const void *dev, float *y, int ldy) {
    qg_cu_mat m;
    m.type = t->type;
    m.w = (const uint8_t *)dev;
    m.rb = qg_cu_row_bytes(t->type, t->ne[0]);
    m.es = m.rb * (size_t)t->ne[1];
    m.m = (int)t->ne[1];
    m.y = y;
    m.ldy = ldy;
    return m;
}

/* matmul: w (N,M), x (N,T) -> y (M,T); router: x, w; lm_head: x, w with
 * only_last. */
cudaError_t qg_cu_matmul(const qg_cuda_launch *l) {
    const bool mm = l->n->op == QG_OP_MATMUL;
    const int wi = mm ? 0 : 1, xi = mm ? 1 : 0;
    const qg_tensor *wt = qg_cu_in(l, wi);
    const int n = (int)wt->ne[0], m = (int)wt->ne[1];
    float *y = qg_cu_out_ptr<float>(l, 0);
    const qg_cu_mat mat = mat_of(wt, l->dev[l->n->in[wi]], y, m);
    const bool last = l->n->op == QG_OP_LM_HEAD && l->n->p.only_last;
    /* router partials for the next launch: the integer decode product alone
     * writes them (the executor asks only where it runs) */
    if (l->rp_buf && (!qg_cu_decode(l->g) || !l->o.i8_decode || !qg_i8_mv_part_ok(&mat, n, l->rp_x)))
        return cudaErrorInvalidValue;
    return qg_cu_product(l, &mat, 1, n, qg_cu_in_ptr<const float>(l, xi), n, last, l->post_add);
}

extern "C" bool qg_cuda_op_can_router_partials(const qg_graph *g, const qg_node *mm,
                                               const qg_node *moe, const qg_cuda_opts *o,
                                               int *tiles) {
    if (!o->rpart || !o->i8_decode || !o->rgu || !qg_cu_decode(g) || mm->op != QG_OP_MATMUL ||
        moe->op != QG_OP_MOE_FUSED ||
        (o->drop & (QG_CUDA_DROP_MATMUL | QG_CUDA_DROP_ROUTER | QG_CUDA_DROP_GU)))
        return false;
    const qg_tensor *T = g->tensors;
    const qg_tensor *wt = &T[mm->in[0]], *rt = &T[moe->in[1]];
    const int n = (int)wt->ne[0], m = (int)wt->ne[1];
    const int E = (int)T[moe->in[0]].ne[0], X = (int)rt->ne[1], K = (int)T[moe->out[1]].ne[0];
    const qg_cu_mat w = mat_of(wt, nullptr, nullptr, m), r = mat_of(rt, nullptr, nullptr, X);
    const qg_cu_mat gu = mat_of(&T[moe->in[2]], nullptr, nullptr, 0);
    const qg_cu_mat up = mat_of(&T[moe->in[3]], nullptr, nullptr, 0);
    *tiles = (m + 15) / 16;
    return E == m && rt->ne[0] == E && T[moe->in[2]].ne[2] == X && qg_i8_mv_part_ok(&w, n, X) &&
           qg_i8_gu_part_ok(&gu, &up, &r, E, K, X, *tiles);
}

/* qkv: x (E,T), wq, wk, wv -> q, k, v */
cudaError_t qg_cu_qkv(const qg_cuda_launch *l) {
    qg_cu_mat m[3];
    for (int i = 0; i < 3; i++) {
        const qg_tensor *wt = qg_cu_in(l, 1 + i);
        m[i] = mat_of(wt, l->dev[l->n->in[1 + i]], qg_cu_out_ptr<float>(l, i), (int)wt->ne[1]);
    }
    const int E = (int)qg_cu_in(l, 0)->ne[0];
    return qg_cu_product(l, m, 3, E, qg_cu_in_ptr<const float>(l, 0), E, false, nullptr);
}

/* swiglu (dense): x (E,T), gate (E,F), up (E,F) -> h (F,T) */
cudaError_t qg_cu_swiglu(const qg_cuda_launch *l) {
    const qg_tensor *gt = qg_cu_in(l, 1), *ut = qg_cu_in(l, 2);
    float *h = qg_cu_out_ptr<float>(l, 0);
    const int E = (int)gt->ne[0], F = (int)gt->ne[1];
    qg_cu_mat g = mat_of(gt, l->dev[l->n->in[1]], h, F);
    qg_cu_mat u = mat_of(ut, l->dev[l->n->in[2]], h, F);
    qg_cu_bump b = {(char *)l->scratch, 0};
    const int T = l->g->n_tok_max;
    float *gs = b.take<float>((size_t)F * T), *us = b.take<float>((size_t)F * T);
    const float *x = qg_cu_in_ptr<const float>(l, 0);
    if (qg_cu_decode(l->g)) return gate_up_decode(l, &g, &u, E, 1, 1, x, nullptr, h, gs, us, nullptr);
    if (g.type == u.type) return qg_cu_gemm_dense(l, &g, &u, E, x, E, nullptr);
    g.y = gs;
    u.y = us;
    cudaError_t e = qg_cu_gemm_dense(l, &g, nullptr, E, x, E, nullptr);
    if (e == cudaSuccess) e = qg_cu_gemm_dense(l, &u, nullptr, E, x, E, nullptr);
    if (e != cudaSuccess) return e;
    return silu_mul(l, gs, us, F, true, h);
}

void qg_cu_swiglu_needs(const qg_graph *g, const qg_node *n, qg_cu_bump *b) {
    const qg_tensor *gt = &g->tensors[n->in[1]], *ut = &g->tensors[n->in[2]];
    if (gt->type == ut->type) return;
    b->take<float>((size_t)gt->ne[1] * g->n_tok_max);
    b->take<float>((size_t)gt->ne[1] * g->n_tok_max);
}

/* ---- sparse experts --------------------------------------------------- */

/* Scratch of the MoE ops (decode and prefill); see qg_cu_moe_needs. */
struct moe_scratch {
    float *logits;  /* (X, T) */
    float *h;       /* (F, K*T) fused only */
    float *g, *u;   /* (F, K*T) mixed gate/up dtypes */
    float *yb;      /* (E, K*T) prefill: per-assignment down outputs */
    int32_t *off, *asg, *tiles;
};

static moe_scratch moe_layout(const qg_graph *g, const qg_node *n, qg_cu_bump *b) {
    moe_scratch s = {};
    const qg_tensor *T = g->tensors;
    const int Tm = g->n_tok_max;
    int E = 0, F = 0, X = 0, K = 0;
    bool fused = n->op == QG_OP_MOE_FUSED, mixed = false, need_lists = Tm > 1;
    switch (n->op) {
    case QG_OP_MOE_FUSED:
        E = (int)T[n->in[0]].ne[0];
        F = (int)T[n->in[2]].ne[1];
        X = (int)T[n->in[2]].ne[2];
        K = (int)T[n->out[1]].ne[0];
        mixed = T[n->in[2]].type != T[n->in[3]].type;
        break;
    case QG_OP_EXPERT_SWIGLU:
        E = (int)T[n->in[0]].ne[0];
        F = (int)T[n->in[1]].ne[1];
        X = (int)T[n->in[1]].ne[2];
        K = (int)T[n->in[3]].ne[0];
        mixed = T[n->in[1]].type != T[n->in[2]].type;
        break;
    case QG_OP_AGGREGATE:
        F = (int)T[n->in[1]].ne[0];
        E = (int)T[n->in[1]].ne[1];
        X = (int)T[n->in[1]].ne[2];
        K = (int)T[n->in[2]].ne[0];
        break;
    default:
        return s;
    }
    const size_t KT = (size_t)K * Tm;
    if (fused) {
        s.logits = b->take<float>((size_t)X * Tm);
        s.h = b->take<float>((size_t)F * KT);
    }
    if (mixed) {
        s.g = b->take<float>((size_t)F * KT);
        s.u = b->take<float>((size_t)F * KT);
    }
    if (need_lists) {
        if (n->op != QG_OP_EXPERT_SWIGLU) s.yb = b->take<float>((size_t)E * KT);
        s.off = b->take<int32_t>((size_t)X + 1);
        s.asg = b->take<int32_t>(KT);
        s.tiles = b->take<int32_t>(1 + 3 * (size_t)qg_cu_max_tiles(K, Tm, X));
    }
    return s;
}

void qg_cu_moe_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o, qg_cu_bump *b,
                     int *n_counters) {
    (void)o;
    moe_layout(g, n, b);
    /* router ticket, or the folded router's barrier; the staged down
     * kernel's ids flag (dn_take_ids) */
    *n_counters = n->op == QG_OP_MOE_FUSED ? 4 : 0;
}

/* Prefill gate/up over grouped columns: h (F, K*T). */
static cudaError_t gate_up_grouped(const qg_cuda_launch *l, const qg_cu_mat *gate,
                                   const qg_cu_mat *up, int n, const float *x,
                                   const qg_cu_groups *gr, const moe_scratch &s, float *h,
                                   int K) {
    if (gate->type == up->type) return qg_cu_gemm_grouped(l, gate, up, n, x, n, gr);
    qg_cu_mat g = *gate, u = *up;
    g.y = s.g;
    u.y = s.u;
    cudaError_t e = qg_cu_gemm_grouped(l, &g, nullptr, n, x, n, gr);
    if (e == cudaSuccess) e = qg_cu_gemm_grouped(l, &u, nullptr, n, x, n, gr);
    if (e != cudaSuccess) return e;
    return silu_mul(l, s.g, s.u, (int64_t)gate->m * K, true, h);
}

/* expert_swiglu: x (E,T), gate_exps (E,F,X), up_exps (E,F,X), ids (K,T)
 * -> h (F,K,T) */
cudaError_t qg_cu_expert_swiglu(const qg_cuda_launch *l) {
    const qg_tensor *gt = qg_cu_in(l, 1), *ut = qg_cu_in(l, 2);
    const int E = (int)gt->ne[0], F = (int)gt->ne[1], X = (int)gt->ne[2];
    const int K = (int)qg_cu_in(l, 3)->ne[0], T = l->g->n_tok_max;
    float *h = qg_cu_out_ptr<float>(l, 0);
    qg_cu_mat g = mat_of(gt, l->dev[l->n->in[1]], h, F), u = mat_of(ut, l->dev[l->n->in[2]], h, F);
    const float *x = qg_cu_in_ptr<const float>(l, 0);
    const int32_t *ids = qg_cu_in_ptr<const int32_t>(l, 3);
    qg_cu_bump b = {(char *)l->scratch, 0};
    const moe_scratch s = moe_layout(l->g, l->n, &b);
    if (qg_cu_decode(l->g)) return gate_up_decode(l, &g, &u, E, K, X, x, ids, h, s.g, s.u, nullptr);
    cudaError_t e = qg_cu_moe_lists(l, ids, K, X, s.off, s.asg, s.tiles);
    if (e != cudaSuccess) return e;
    const qg_cu_groups gr = {s.tiles, s.asg, qg_cu_max_tiles(K, T, X), K};
    return gate_up_grouped(l, &g, &u, E, x, &gr, s, h, K);
}

/* aggregate: h (F,K,T), down_exps (F,E,X), ids (K,T), wts (K,T) -> y (E,T) */
cudaError_t qg_cu_aggregate(const qg_cuda_launch *l) {
    const qg_tensor *dt = qg_cu_in(l, 1);
    const int F = (int)dt->ne[0], E = (int)dt->ne[1], X = (int)dt->ne[2];
    const int K = (int)qg_cu_in(l, 2)->ne[0], T = l->g->n_tok_max;
    float *y = qg_cu_out_ptr<float>(l, 0);
    const float *h = qg_cu_in_ptr<const float>(l, 0);
    const int32_t *ids = qg_cu_in_ptr<const int32_t>(l, 2);
    const float *wts = qg_cu_in_ptr<const float>(l, 3);
    qg_cu_bump b = {(char *)l->scratch, 0};
    const moe_scratch s = moe_layout(l->g, l->n, &b);
    qg_cu_mat d = mat_of(dt, l->dev[l->n->in[1]], y, E);
    if (qg_cu_decode(l->g)) return down_decode(l, &d, F, K, X, h, ids, wts, l->post_add, y);
    cudaError_t e = qg_cu_moe_lists(l, ids, K, X, s.off, s.asg, s.tiles);
    if (e != cudaSuccess) return e;
    d.y = s.yb;
    const qg_cu_groups gr = {s.tiles, s.asg, qg_cu_max_tiles(K, T, X), 1};
    if ((e = qg_cu_gemm_grouped(l, &d, nullptr, F, h, F, &gr)) != cudaSuccess) return e;
    return qg_cu_moe_combine(l, s.yb, ids, wts, K, X, E, l->post_add, y);
}

/* moe_fused: x (E,T), gate_inp (E,X), gate_exps, up_exps, down_exps
 * -> y (E,T), ids (K,T), wts (K,T) */
cudaError_t qg_cu_moe_fused(const qg_cuda_launch *l) {
    const qg_tensor *rt = qg_cu_in(l, 1), *gt = qg_cu_in(l, 2), *ut = qg_cu_in(l, 3);
    const qg_tensor *dt = qg_cu_in(l, 4);
    const int E = (int)gt->ne[0], F = (int)gt->ne[1], X = (int)gt->ne[2];
    const int K = (int)qg_cu_out(l, 1)->ne[0], T = l->g->n_tok_max;
    const float *x = qg_cu_in_ptr<const float>(l, 0);
    float *y = qg_cu_out_ptr<float>(l, 0);
    int32_t *ids = qg_cu_out_ptr<int32_t>(l, 1);
    float *wts = qg_cu_out_ptr<float>(l, 2);
    qg_cu_bump b = {(char *)l->scratch, 0};
    const moe_scratch s = moe_layout(l->g, l->n, &b);
    qg_cu_mat r = mat_of(rt, l->dev[l->n->in[1]], s.logits, X);
    qg_cu_mat g = mat_of(gt, l->dev[l->n->in[2]], s.h, F);
    qg_cu_mat u = mat_of(ut, l->dev[l->n->in[3]], s.h, F);
    qg_cu_mat d = mat_of(dt, l->dev[l->n->in[4]], y, E);
    cudaError_t e;
    if (qg_cu_decode(l->g)) {
        const int drop = l->o.drop; /* measurement only (qg_cuda_opts.drop) */
        /* router + top-k + gate/up in one launch where the shapes allow */
        e = cudaErrorNotSupported;
        /* the staged down kernel reads the folded router's ids before its
         * launch wait (a flag in counters 2, 3) */
        int *flag = !(drop & QG_CUDA_DROP_DOWN) && l->o.i8_decode && l->o.dn_early &&
                            qg_i8s_dn_ok(l, &d, F, K)
                        ? l->counters + 2
                        : nullptr;
        if (!(drop & (QG_CUDA_DROP_ROUTER | QG_CUDA_DROP_GU)) && l->o.i8_decode &&
            qg_i8_gu_ok(&g, &u, E)) {
            /* (rp_buf: the router partials of the previous launch) */
            const qg_i8_router rt = {nullptr, 0, s.logits, ids, wts, l->counters, flag, false,
                                     l->rp_buf, l->rp_tiles};
            e = qg_i8_gu_router(l, &g, &u, &r, E, K, X, x, &rt, s.h, &d);
            if (e != cudaSuccess && e != cudaErrorNotSupported) return e;
            if (e == cudaErrorNotSupported) flag = nullptr;
        } else {
            flag = nullptr;
        }
        if (e == cudaErrorNotSupported) {
            if (!(drop & QG_CUDA_DROP_ROUTER) &&
                (e = router_topk_decode(l, &r, E, K, x, s.logits, ids, wts, l->counters)))
                return e;
            if (!(drop & QG_CUDA_DROP_GU) &&
                (e = gate_up_decode(l, &g, &u, E, K, X, x, ids, s.h, s.g, s.u, &d)))
                return e;
        }
        if (drop & QG_CUDA_DROP_DOWN) return cudaSuccess;
        return down_decode(l, &d, F, K, X, s.h, ids, wts, l->post_add, y, flag);
    }
    if ((e = qg_cu_product(l, &r, 1, E, x, E, false, nullptr))) return e;
    if ((e = qg_cu_topk_raw(l, s.logits, X, K, ids, wts))) return e;
    if ((e = qg_cu_moe_lists(l, ids, K, X, s.off, s.asg, s.tiles))) return e;
    const qg_cu_groups gu = {s.tiles, s.asg, qg_cu_max_tiles(K, T, X), K};
    if ((e = gate_up_grouped(l, &g, &u, E, x, &gu, s, s.h, K))) return e;
    d.y = s.yb;
    const qg_cu_groups gd = {s.tiles, s.asg, qg_cu_max_tiles(K, T, X), 1};
    if ((e = qg_cu_gemm_grouped(l, &d, nullptr, F, s.h, F, &gd))) return e;
    return qg_cu_moe_combine(l, s.yb, ids, wts, K, X, E, l->post_add, y);
}
