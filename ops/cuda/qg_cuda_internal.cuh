/*
 * qg_cuda_internal.cuh - what the op_*.cu files share: tensor accessors,
 * the scratch bump allocator, and the per-op launchers that
 * qg_cuda_ops.cu's switch calls (ops/cuda/ only).
 *
 * Scratch layouts: every op that needs device scratch describes it in one
 * function taking a qg_cu_bump; qg_cuda_op_needs() runs it over a NULL base
 * to size it and the launcher runs it over the real base, so the two can
 * never disagree.
 */
#ifndef QG_CUDA_INTERNAL_CUH
#define QG_CUDA_INTERNAL_CUH

/* graph/qg_base.h is C11; nvcc's front end knows _Noreturn only as C++11's
 * attribute. */
#if defined(__cplusplus) && !defined(_Noreturn)
#define _Noreturn [[noreturn]]
#endif

extern "C" {
#include "../../graph/qg_graph.h"
}
#include "qg_cuda_common.cuh"
#include "qg_cuda_ops.h"

#include <stddef.h>

/* ---- tensor accessors ------------------------------------------------- */

static inline const qg_tensor *qg_cu_in(const qg_cuda_launch *l, int i) {
    return &l->g->tensors[l->n->in[i]];
}
static inline const qg_tensor *qg_cu_out(const qg_cuda_launch *l, int i) {
    return &l->g->tensors[l->n->out[i]];
}
template <class T> static inline T *qg_cu_in_ptr(const qg_cuda_launch *l, int i) {
    return (T *)l->dev[l->n->in[i]];
}
template <class T> static inline T *qg_cu_out_ptr(const qg_cuda_launch *l, int i) {
    return (T *)l->dev[l->n->out[i]];
}
static inline cudaStream_t qg_cu_stream(const qg_cuda_launch *l) {
    return (cudaStream_t)l->stream;
}
static inline bool qg_cu_decode(const qg_graph *g) { return g->n_tok_max == 1; }

/* Launch kernel k on l's stream, with programmatic dependent launch when
 * the executor enables it (see qg_pdl_wait in qg_cuda_common.cuh). */
template <typename... P, typename... A>
static inline cudaError_t qg_cu_launch(const qg_cuda_launch *l, void (*k)(P...), dim3 grid,
                                       dim3 block, size_t smem, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = qg_cu_stream(l);
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = l->o.pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, ((P)args)...);
}

/* Bump allocator over a scratch base (NULL: sizing only). */
struct qg_cu_bump {
    char *base;
    size_t off;
    template <class T> T *take(size_t n) {
        off = (off + 255) & ~(size_t)255;
        T *p = base ? (T *)(base + off) : (T *)nullptr;
        off += n * sizeof(T);
        return p;
    }
};

/* Bytes of one weight row of n elements. */
static inline size_t qg_cu_row_bytes(qg_dtype t, int64_t n) { return qg_dtype_row_bytes(t, n); }

/* Blocks for a grid-stride loop over `n` items of `per_block`, capped at
 * `cap_per_sm` blocks per multiprocessor. */
static inline int qg_cu_blocks(int64_t n, int per_block, int n_sm, int cap_per_sm) {
    int64_t b = (n + per_block - 1) / per_block;
    int64_t cap = (int64_t)(n_sm > 0 ? n_sm : 132) * cap_per_sm;
    if (b > cap) b = cap;
    return (int)(b > 0 ? b : 1);
}

/* ---- products: y = W x for one matrix or the rows of up to three ------ */

/* A matrix of an output: W rows of n elements (row_bytes apart), m rows,
 * result columns ldy floats apart. */
typedef struct qg_cu_mat {
    qg_dtype type;
    const uint8_t *w;
    size_t rb;  /* bytes per row */
    size_t es;  /* bytes per expert (3-d weights), 0 otherwise */
    int m;      /* rows (per expert) */
    float *y;   /* output */
    int ldy;    /* floats between output columns */
} qg_cu_mat;

/* Dense product over the live columns of x (n, n_tok_max), column stride
 * ldx: decode graphs use the matvec kernels, prefill graphs the tiled
 * gemm (f16 tensor cores, or f32 for F32 weights / f32_prefill).
 * last_col: only column n_tok-1 of x into output column 0.
 * add: residual added to every output (same layout as y), or NULL. */
cudaError_t qg_cu_product(const qg_cuda_launch *l, const qg_cu_mat *mats, int n_mats, int n,
                          const float *x, int ldx, bool last_col, const float *add);

/* Kernel attributes the tiled products need (dynamic shared memory above
 * 48 KiB); idempotent, outside any stream capture. */
cudaError_t qg_cu_gemm_prepare(void);

/* Prefill (tiled) product over the live columns: y (m, cols) = W x, or
 * with w2 (same dtype) y = silu(W x) * (W2 x); add as for qg_cu_product. */
cudaError_t qg_cu_gemm_dense(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                             int n, const float *x, int ldx, const float *add);

/* ---- launchers (one per op) ------------------------------------------- */

cudaError_t qg_cu_embed(const qg_cuda_launch *l);
cudaError_t qg_cu_rmsnorm(const qg_cuda_launch *l);
cudaError_t qg_cu_add(const qg_cuda_launch *l);
cudaError_t qg_cu_copy(const qg_cuda_launch *l);
cudaError_t qg_cu_rope(const qg_cuda_launch *l);
cudaError_t qg_cu_attention(const qg_cuda_launch *l);
cudaError_t qg_cu_matmul(const qg_cuda_launch *l);  /* matmul, router, lm_head */
cudaError_t qg_cu_qkv(const qg_cuda_launch *l);
cudaError_t qg_cu_swiglu(const qg_cuda_launch *l);
cudaError_t qg_cu_topk(const qg_cuda_launch *l);
cudaError_t qg_cu_expert_swiglu(const qg_cuda_launch *l);
cudaError_t qg_cu_aggregate(const qg_cuda_launch *l);
cudaError_t qg_cu_moe_fused(const qg_cuda_launch *l);

/* Prefill attention on the f16 tensor cores (op_attention_prefill.cu):
 * o (Dq, n_tok) of attention node l->n from q over rows 0..pos[t] of its
 * caches (F16 or F32), this step's rows already appended; no scratch.
 * Split-f16 operands, f32 accumulation and softmax (error bound in the
 * file's header). */
cudaError_t qg_cu_attention_prefill(const qg_cuda_launch *l);

/* Scratch and counters of the ops that need them. */
void qg_cu_attention_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o,
                           qg_cu_bump *b, int *n_counters);
void qg_cu_moe_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o,
                     qg_cu_bump *b, int *n_counters);
void qg_cu_swiglu_needs(const qg_graph *g, const qg_node *n, qg_cu_bump *b);

/* ---- kernels shared between files ------------------------------------ */

/* Most router logits a lane holds in registers in qg_cu_warp_topk (X <=
 * 32 * QG_TOPK_REG takes the register path). */
#define QG_TOPK_REG 8

/* A logit of qg_cu_warp_topk: through L2 (global memory, possibly written
 * by other blocks of the same grid), or from shared memory (SM). */
template <bool SM> __device__ __forceinline__ float qg_topk_ld(const float *p) {
    return SM ? *p : __ldcg(p);
}

/* One warp: softmax over l[0..X) (f32, max subtracted), the K largest
 * probabilities (ties: lower id), weights renormalized to sum 1; p: X
 * floats of shared memory (used only when X > 32 * QG_TOPK_REG).  l is
 * read through L2 (it may have been written by other blocks of the same
 * grid), or with SM from shared memory (written by this block before a
 * barrier).  Lane t takes e = t, t + 32, ... in that order for every sum,
 * so both paths give the same bits; the register path issues all of its
 * L2 reads at once (the decode step waits on this: about 4 us with the
 * reads one after another). */
template <bool SM = false>
__device__ __forceinline__ void qg_cu_warp_topk(const float *l, int X, int K, int32_t *ids, float *wts, float *p) {
    const int lane = threadIdx.x & 31;
    if (X <= 32 * QG_TOPK_REG) {
        float v[QG_TOPK_REG];
#pragma unroll
        for (int i = 0; i < QG_TOPK_REG; i++) v[i] = lane + 32 * i < X ? qg_topk_ld<SM>(l + lane + 32 * i) : -INFINITY;
        float mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < QG_TOPK_REG; i++)
            if (lane + 32 * i < X) mx = fmaxf(mx, v[i]);
        mx = qg_warp_max(mx);
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < QG_TOPK_REG; i++)
            if (lane + 32 * i < X) {
                v[i] = expf(v[i] - mx);
                sum += v[i];
            }
        sum = qg_warp_sum(sum);
        const float inv = 1.0f / sum;
#pragma unroll
        for (int i = 0; i < QG_TOPK_REG; i++) v[i] = lane + 32 * i < X ? v[i] * inv : -1.0f;
        float wsum = 0.0f;
        for (int k = 0; k < K; k++) {
            unsigned bk = 0u;
            int li = 0x7fffffff;
#pragma unroll
            for (int i = 0; i < QG_TOPK_REG; i++) {
                const unsigned key = v[i] >= 0.0f ? __float_as_uint(fabsf(v[i])) + 1u : 0u;
                if (key > bk) {
                    bk = key;
                    li = lane + 32 * i;
                }
            }
            const unsigned mk = __reduce_max_sync(0xffffffffu, bk);
            const int bi = mk ? (int)__reduce_min_sync(0xffffffffu, bk == mk ? (unsigned)li : 0x7fffffffu)
                              : 0x7fffffff;
            const float bv = mk ? __uint_as_float(mk - 1u) : -2.0f;
            wsum += bv;
            if (lane == 0) {
                ids[k] = bi;
                wts[k] = bv;
            }
#pragma unroll
            for (int i = 0; i < QG_TOPK_REG; i++)
                if (bi == lane + 32 * i) v[i] = -1.0f;
        }
        __syncwarp();
        if (lane == 0)
            for (int k = 0; k < K; k++) wts[k] = wts[k] / wsum;
        __syncwarp();
        return;
    }
    float mx = -INFINITY;
    for (int e = lane; e < X; e += 32) {
        const float v = qg_topk_ld<SM>(l + e);
        p[e] = v;
        mx = fmaxf(mx, v);
    }
    mx = qg_warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < X; e += 32) {
        const float v = expf(p[e] - mx);
        p[e] = v;
        sum += v;
    }
    sum = qg_warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int e = lane; e < X; e += 32) p[e] = p[e] * inv;
    __syncwarp();
    float wsum = 0.0f;
    for (int k = 0; k < K; k++) {
        /* each lane's largest untaken probability (the lowest id on a tie)
         * as an order-preserving key (bits + 1 of a non-negative float;
         * 0: taken, negative or NaN, never chosen), then one warp-wide
         * max of the keys and one min of the ids that hold it */
        unsigned bk = 0u;
        int li = 0x7fffffff;
        for (int e = lane; e < X; e += 32) {
            const float v = p[e];
            const unsigned key = v >= 0.0f ? __float_as_uint(fabsf(v)) + 1u : 0u;
            if (key > bk) {
                bk = key;
                li = e;
            }
        }
        const unsigned mk = __reduce_max_sync(0xffffffffu, bk);
        const int bi = mk ? (int)__reduce_min_sync(0xffffffffu, bk == mk ? (unsigned)li : 0x7fffffffu)
                          : 0x7fffffff;
        const float bv = mk ? __uint_as_float(mk - 1u) : -2.0f; /* -2: below every probability */
        wsum += bv;
        if (lane == 0) {
            ids[k] = bi;
            wts[k] = bv;
        }
        if (bi < X && (bi & 31) == lane) p[bi] = -1.0f;
        __syncwarp();
    }
    if (lane == 0)
        for (int k = 0; k < K; k++) wts[k] = wts[k] / wsum;
    __syncwarp();
}

/* topk over logits (X, T) of the live tokens into ids, wts (K, T). */
cudaError_t qg_cu_topk_raw(const qg_cuda_launch *l, const float *logits, int X, int K,
                           int32_t *ids, float *wts);

/* Grouped (expert) products for prefill: see op_gemm.cu. */
typedef struct qg_cu_groups {
    const int32_t *tiles; /* [0]: tile count, then (expert, list offset, count) */
    const int32_t *asg;   /* assignment ids grouped by expert */
    int max_tiles;        /* grid size: the most tiles there can be */
    int xdiv;             /* x column of assignment a: a / xdiv */
} qg_cu_groups;

/* Columns per tile of the grouped gemms. */
#define QG_CU_GROUP_BN 32

/* Build the expert lists of ids (K, n_tok) on the device.  Scratch:
 * off (X+1), asg (K*T_max), tiles (1 + 3*max_tiles). */
cudaError_t qg_cu_moe_lists(const qg_cuda_launch *l, const int32_t *ids, int K, int X,
                            int32_t *off, int32_t *asg, int32_t *tiles);
static inline int qg_cu_max_tiles(int K, int T, int X) {
    return (K * T + QG_CU_GROUP_BN - 1) / QG_CU_GROUP_BN + X;
}

/* y (m per expert, cols) over grouped columns: Y[:, a] = W_e x[:, a/xdiv];
 * dual: Y[:, a] = silu(W_e x) * (W2_e x). */
cudaError_t qg_cu_gemm_grouped(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                               int n, const float *x, int ldx, const qg_cu_groups *gr);

/* y[:, t] = add[:, t] + sum_k wts[k,t] * yb[:, t*K+k] over live tokens. */
cudaError_t qg_cu_moe_combine(const qg_cuda_launch *l, const float *yb, const int32_t *ids,
                              const float *wts, int K, int X, int E, const float *add, float *y);

#endif
