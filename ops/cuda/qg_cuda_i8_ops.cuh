/*
 * qg_cuda_i8_ops.cuh - the integer tensor-core decode products of
 * op_matvec_i8.cu, as op_matvec.cu calls them (ops/cuda/ only).  Each
 * *_ok() says whether the fast path takes a product (weight types Q4_K /
 * Q6_K, sizes); otherwise the f32 kernels of op_matvec.cu run.
 */
#ifndef QG_CUDA_I8_OPS_CUH
#define QG_CUDA_I8_OPS_CUH

#include "qg_cuda_internal.cuh"

/* Longest input vector (elements) of the fast path: its image (3.1 bytes
 * per element) stays under the default 48 KiB of shared memory. */
#define QG_I8_N_MAX 12288
/* Most experts per token of the fast down projection, and its warps. */
#define QG_I8_DN_KMAX 32
#define QG_I8_DN_WARPS 12

/* Router partials of a dense product (qg_cuda_launch.rp_*): for each
 * 16-row tile t of matrix 0's output y (rows r0 .. r0+15, those past m
 * left out), out[t * (X+1) + e] = sum_j w[e][r0+j] * (y[r0+j] * nw[r0+j])
 * for e < X and out[t * (X+1) + X] = sum_j y[r0+j]^2, j ascending, in f32
 * FMAs.  out NULL: none. */
struct qg_i8_rpart {
    const float *w;  /* (m, X) router weights, rows rb bytes apart */
    size_t rb;
    const float *nw; /* (m) norm weights */
    float *out;      /* (T, X + 1) */
    int X;
};

struct qg_i8_mv_args {
    const uint8_t *w[3];
    size_t rb[3];
    int m[3], type[3];
    float *y[3];
    int tiles[4]; /* tiles[i]: first tile of matrix i; tiles[nm]: total */
    int nm, n;
    const float *x;      /* (n, T) */
    const int32_t *step; /* device step input */
    bool last_col;       /* x column n_tok-1 */
    const float *norm_w; /* pre-norm weights (n), or NULL */
    float eps;
    const float *add;    /* residual of matrix 0, or NULL */
    qg_i8_rpart rp;      /* router partials of matrix 0 (k_mv8<..., true>) */
};

/* The decode MoE's router, folded into the gate/up launch: F32 rows
 * (X of n floats, rb bytes apart) over the (normalized) input, the logits
 * to scratch, a grid-wide barrier, then every block takes the softmax /
 * top-k / renormalize itself (qg_cu_warp_topk: the bits of the separate
 * router kernel) and block 0 writes ids and weights for the down kernel. */
struct qg_i8_router {
    const float *w;
    size_t rb;
    float *logits;   /* (X) scratch */
    int32_t *ids;    /* (K) out */
    float *wts;      /* (K) out */
    int *bar;        /* 2 zeroed counters: the barrier's arrivals, generation */
    int *flag;       /* or NULL: set to 1 once ids / wts are written (the
                        staged down kernel's early read, dn_take_ids) */
    bool split;      /* x's image built between the barrier's arrival and
                        wait (o.rt_split) */
    const float *part; /* or NULL: router partials of the previous launch
                          (qg_i8_rpart, (part_tiles, X + 1)) summed instead
                          of router rows and a barrier (gu_route_part) */
    int part_tiles;
};

struct qg_i8_gu_args {
    const uint8_t *wg, *wu;
    size_t rbg, rbu, esg, esu;
    int tg, tu;
    int n, F, K, X;
    const float *x;       /* (n) */
    const int32_t *ids;   /* (K), or NULL: one dense matrix */
    const float *norm_w;
    float eps;
    float *h;             /* (F, K) */
    const uint8_t *pf_down; /* the down experts (es bytes each, rows of
                               expert e at pf_down + e * pf_es), the chosen
                               ones asked of L2; NULL: none */
    size_t pf_es;
    qg_i8_router rt;      /* router folded in (rt.w non-NULL): ids are
                             computed by the kernel itself */
};

struct qg_i8_dn_args {
    const uint8_t *w;
    size_t rb, es;
    int type;
    int F, E, K, X;
    const float *h;       /* (F, K) */
    const int32_t *ids;   /* (K) */
    const float *wts;     /* (K) */
    const float *add;     /* (E) or NULL */
    float *y;             /* (E) */
    int *flag;            /* or NULL: 2 zeroed counters, [0] set to 1 by
                             the folded router once ids are written (the
                             staged kernel reads them before its launch
                             wait), [1] counting the blocks that read them */
    bool early;           /* let the next kernel launch at the block's start
                             (QG_CUDA_STAGED_DN_LAUNCH) */
};

/* How a staged kernel (op_matvec_i8s.cu) lays out its shared memory. */
struct qg_i8s_stage {
    size_t sr[3]; /* bytes between staged rows of each matrix (gate/up:
                     [0] gate, [1] up) */
    size_t img;   /* bytes before the first tile (the input images) */
    size_t slot;  /* bytes per staged tile */
    int tpb;      /* most tiles per block */
    bool early;   /* let the next kernel launch at the block's start */
};

/* y_i = W_i x for nm <= 3 matrices (mats[i].y), x of n elements (column
 * n_tok-1 when last_col); the executor's pre_norm folded in; add on
 * matrix 0.  With l->rp_buf (nm == 1, qg_i8_mv_part_ok), also the router
 * partials of y (qg_i8_rpart), always by the register kernel k_mv8 in its
 * default shape for n (explicit shapes and the staged kernel are not
 * taken). */
bool qg_i8_mv_ok(const qg_cu_mat *m, int nm, int n);
cudaError_t qg_i8_mv(const qg_cuda_launch *l, const qg_cu_mat *m, int nm, int n, const float *x,
                     bool last_col, const float *add);

/* h (F, K) = silu(gate_e x) * (up_e x), e = ids[k] (ids NULL: K = 1, the
 * dense FFN); invalid ids give NaN rows.  pf_down (or NULL): the down
 * experts that follow, whose chosen rows the kernel asks L2 for (with
 * l->o.prefetch). */
bool qg_i8_gu_ok(const qg_cu_mat *gate, const qg_cu_mat *up, int n);
cudaError_t qg_i8_gu(const qg_cuda_launch *l, const qg_cu_mat *gate, const qg_cu_mat *up, int n,
                     int K, int X, const float *x, const int32_t *ids, float *h,
                     const qg_cu_mat *pf_down);
/* The same with the router folded in (ids computed on the device, see
 * qg_i8_router; x is the router's input).  Returns cudaErrorNotSupported,
 * launching nothing, when this shape cannot take it (router not F32 or its
 * rows not register-sized, more experts than blocks, one-wave grids off):
 * then run the router kernel and qg_i8_gu.  With rt->part (router
 * partials, the executor's pre_norm folded in), the kernel sums them
 * instead (no barrier; any grid); qg_i8_gu_part_ok says which shapes take
 * that form. */
cudaError_t qg_i8_gu_router(const qg_cuda_launch *l, const qg_cu_mat *gate, const qg_cu_mat *up,
                            const qg_cu_mat *router, int n, int K, int X, const float *x,
                            const qg_i8_router *rt, float *h, const qg_cu_mat *pf_down);
bool qg_i8_gu_part_ok(const qg_cu_mat *gate, const qg_cu_mat *up, const qg_cu_mat *router, int n,
                      int K, int X, int tiles);
/* Does the dense product (one matrix of m rows over n inputs) take router
 * partials of X experts (qg_i8_mv with l->rp_buf)? */
bool qg_i8_mv_part_ok(const qg_cu_mat *m, int n, int X);

/* y (E) = add + sum_k wts[k] * down_{ids[k]} h[:, k]; any invalid id makes
 * y NaN.  flag: NULL, or (only where qg_i8s_dn_ok) the counters that the
 * folded router of the same step publishes ids on (qg_i8_router.flag). */
bool qg_i8_dn_ok(const qg_cu_mat *down, int F, int K);
cudaError_t qg_i8_dn(const qg_cuda_launch *l, const qg_cu_mat *down, int F, int K, int X,
                     const float *h, const int32_t *ids, const float *wts, const float *add,
                     float *y, int *flag);

/* ---- staged kernels (op_matvec_i8s.cu, with l->o.staged) ---------------
 * The same products with each block's weights staged in shared memory by
 * bulk copies; each returns cudaErrorNotSupported, launching nothing, when
 * the option is off or the shape does not fit (then the register kernels
 * above run). */
cudaError_t qg_i8s_mv(const qg_cuda_launch *l, const qg_i8_mv_args &a);
cudaError_t qg_i8s_gu_router(const qg_cuda_launch *l, const qg_i8_gu_args &a);
/* Does the staged down kernel take this shape?  When it does, qg_i8_dn
 * runs it, and only then may the caller hand the folded router and the
 * down kernel a flag (qg_i8_router.flag, qg_i8_dn's flag). */
bool qg_i8s_dn_ok(const qg_cuda_launch *l, const qg_cu_mat *down, int F, int K);
cudaError_t qg_i8s_dn(const qg_cuda_launch *l, const qg_cu_mat *down, const qg_i8_dn_args &a);
/* Raise the staged kernels' dynamic shared memory limit and carveout
 * (once, outside any capture). */
cudaError_t qg_i8s_prepare(void);

#endif
