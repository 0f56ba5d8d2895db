/*
 * op_basic.cu - the row-wise kernels: embed, rmsnorm, add, copy, and topk
 * (softmax, top-k, renormalize) with its one-warp core shared by the
 * fused decode router.
 *
 * Every kernel reads the live token count from the device step input and
 * is launched over n_tok_max tokens; blocks past the live tokens exit.
 */
#include "qg_cuda_internal.cuh"

#include <math.h>

/* ---- embed ------------------------------------------------------------ */

/* x (E, T) = rows tok[t] of w (E, V); grid (T, unit blocks), one unit of
 * 32 weights per thread.  An id outside [0, V) (a bug: the runtime checks
 * ids) writes NaN, so it cannot pass silently. */
template <int DT>
__global__ void __launch_bounds__(128)
k_embed(const uint8_t *__restrict__ w, size_t rb, int E, int V, const int32_t *__restrict__ tok,
        const int32_t *__restrict__ step, float *__restrict__ x) {
    qg_pdl_wait();
    qg_pdl_trigger();
    const int t = blockIdx.x;
    const int u = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= step[QG_STEP_N_TOK] || u >= E / 32) return;
    const int id = tok[t];
    float *xt = x + (size_t)t * E;
    if (id < 0 || id >= V) {
        for (int i = 0; i < 32; i++) xt[32 * u + i] = __int_as_float(0x7fc00000);
        return;
    }
    float wv[32];
    int st[4];
    qg_unit<DT>::decode(w + (size_t)id * rb, u, wv, st);
#pragma unroll
    for (int i = 0; i < 32; i++) xt[qg_unit_elem<DT>(st, i)] = wv[i];
}

cudaError_t qg_cu_embed(const qg_cuda_launch *l) {
    const qg_tensor *wt = qg_cu_in(l, 0);
    const int E = (int)wt->ne[0], V = (int)wt->ne[1];
    const dim3 grid(l->g->n_tok_max, (E / 32 + 127) / 128);
    const uint8_t *w = qg_cu_in_ptr<const uint8_t>(l, 0);
    const size_t rb = qg_cu_row_bytes(wt->type, E);
    cudaError_t e = cudaSuccess;
    QG_CUDA_DISPATCH_DT(wt->type, e = qg_cu_launch(l, k_embed<DT>, grid, dim3(128), 0, w, rb, E, V,
                                                   qg_cu_in_ptr<const int32_t>(l, 1), l->step,
                                                   qg_cu_out_ptr<float>(l, 0)));
    return e;
}

/* ---- rmsnorm ---------------------------------------------------------- */

/* y (N, T) = (x * scale) * w, scale = 1 / sqrt(mean(x^2) + eps); one block
 * per token, the sum of squares in f32 in qg_sumsq_fixed's order (the
 * products that fold an rmsnorm in get the same bits).  Dynamic shared
 * memory: (N + 255) / 256 floats. */
__global__ void __launch_bounds__(256)
k_rmsnorm(const float *__restrict__ x, const float *__restrict__ w, int N, float eps,
          const int32_t *__restrict__ step, float *__restrict__ y) {
    extern __shared__ float cs[];
    qg_pdl_wait();
    qg_pdl_trigger();
    const int t = blockIdx.x;
    if (t >= step[QG_STEP_N_TOK]) return;
    const float *xt = x + (size_t)t * N;
    float *yt = y + (size_t)t * N;
    const float ss = qg_sumsq_fixed(xt, N, cs);
    const float scale = 1.0f / sqrtf(ss / (float)N + eps);
    for (int i = threadIdx.x; i < N; i += blockDim.x) yt[i] = __fmul_rn(__fmul_rn(xt[i], scale), w[i]);
}

cudaError_t qg_cu_rmsnorm(const qg_cuda_launch *l) {
    const int N = (int)qg_cu_in(l, 0)->ne[0];
    return qg_cu_launch(l, k_rmsnorm, dim3(l->g->n_tok_max), dim3(256),
                        sizeof(float) * (size_t)((N + 255) / 256),
                        qg_cu_in_ptr<const float>(l, 0), qg_cu_in_ptr<const float>(l, 1), N,
                        l->n->p.eps, l->step, qg_cu_out_ptr<float>(l, 0));
}

/* ---- add -------------------------------------------------------------- */

/* y = a + b over the N * n_tok live elements (grid-stride). */
__global__ void __launch_bounds__(256)
k_add(const float *__restrict__ a, const float *__restrict__ b, int64_t N,
      const int32_t *__restrict__ step, float *__restrict__ y) {
    qg_pdl_wait();
    qg_pdl_trigger();
    const int64_t n = N * step[QG_STEP_N_TOK];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __fadd_rn(a[i], b[i]);
}

cudaError_t qg_cu_add(const qg_cuda_launch *l) {
    const int64_t N = qg_cu_in(l, 0)->ne[0];
    const int blocks = qg_cu_blocks(N * l->g->n_tok_max, 256, l->o.n_sm, 8);
    return qg_cu_launch(l, k_add, dim3(blocks), dim3(256), 0, qg_cu_in_ptr<const float>(l, 0),
                        qg_cu_in_ptr<const float>(l, 1), N, l->step, qg_cu_out_ptr<float>(l, 0));
}

/* ---- copy ------------------------------------------------------------- */

/* Copies normally run in the runtime (tensor_get / tensor_set); a copy
 * node handed to this executor copies the whole tensor on the device. */
cudaError_t qg_cu_copy(const qg_cuda_launch *l) {
    return cudaMemcpyAsync(qg_cu_out_ptr<void>(l, 0), qg_cu_in_ptr<const void>(l, 0),
                           qg_cu_in(l, 0)->nbytes, cudaMemcpyDeviceToDevice, qg_cu_stream(l));
}

/* ---- topk ------------------------------------------------------------- */

/* logits (X, T) -> ids (K, T), wts (K, T); one warp per token, 4 per block. */
__global__ void __launch_bounds__(128)
k_topk(const float *__restrict__ logits, int X, int K, const int32_t *__restrict__ step,
       int32_t *__restrict__ ids, float *__restrict__ wts) {
    extern __shared__ float p_all[]; /* (X, 4) */
    qg_pdl_wait();
    qg_pdl_trigger();
    const int w = threadIdx.x >> 5;
    const int t = blockIdx.x * 4 + w;
    if (t >= step[QG_STEP_N_TOK]) return;
    qg_cu_warp_topk(logits + (size_t)t * X, X, K, ids + (size_t)t * K, wts + (size_t)t * K,
                    p_all + (size_t)w * X);
}

cudaError_t qg_cu_topk_raw(const qg_cuda_launch *l, const float *logits, int X, int K,
                           int32_t *ids, float *wts) {
    const int T = l->g->n_tok_max;
    return qg_cu_launch(l, k_topk, dim3((T + 3) / 4), dim3(128), sizeof(float) * (size_t)X * 4,
                        logits, X, K, l->step, ids, wts);
}

cudaError_t qg_cu_topk(const qg_cuda_launch *l) {
    return qg_cu_topk_raw(l, qg_cu_in_ptr<const float>(l, 0), (int)qg_cu_in(l, 0)->ne[0],
                          (int)qg_cu_out(l, 0)->ne[0], qg_cu_out_ptr<int32_t>(l, 0),
                          qg_cu_out_ptr<float>(l, 1));
}
