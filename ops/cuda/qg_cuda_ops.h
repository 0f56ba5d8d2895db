/*
 * qg_cuda_ops.h - the CUDA kernels, one per op, behind one switch (a C
 * interface: the executor exec/cuda/qg_cuda_exec.c is C11, the kernels in
 * ops/cuda/op_*.cu are CUDA C++ behind extern "C").
 *
 * The executor resolves every node once, at compile time, into a
 * qg_cuda_launch: the device address of each tensor, the device `step`
 * input, scratch and counters.  At run time it only calls
 * qg_cuda_op_launch() for each node of a partition, in order, on its one
 * stream; the same calls are made inside a CUDA Graph capture, so a launch
 * never reads anything from the host that changes between steps: the live
 * token count, the KV length, token ids, positions and expert choices are
 * all read by the kernels from device memory.  Grids are sized for the
 * worst case (n_tok_max tokens, n_ctx rows); blocks past the live work exit.
 *
 * Numerics (see docs/ARCHITECTURE.md, "CUDA"):
 *   - decode graphs (n_tok_max == 1), Q4_K / Q6_K weights (i8_decode):
 *     exact integer products of the weight quants with a 24-bit
 *     fixed-point image of the activations (three int8 planes per value,
 *     one scale per 256 elements; error <= 1.8e-7 of the largest element,
 *     f32's own is 6e-8), scales applied in f32 (qg_cuda_i8.cuh);
 *   - other decode products and every f32-weight product: weights
 *     dequantized exactly to the f32 values ops/quant produces, times f32
 *     activations, accumulated in f32 (the CPU rule);
 *   - prefill graphs, Q4_K / Q6_K weights (unless f32_prefill, or
 *     i8_decode is off): the same exact integer products as decode, over
 *     tiles of 64 rows x 32 or 64 tokens; each activation column becomes
 *     once per product a 24-bit three-plane image (one scale per 256
 *     elements, error <= 1.5 s_b = 1.8e-7 of the super-block's largest
 *     element per value), sub-block scales applied as integers over 128
 *     elements, d / dmin / the column scale in f32 (qg_cuda_gemm_i8.cuh);
 *   - other prefill products over non-f32 weights: weight tiles dequantized
 *     exactly in f32 and activations, each split into hi + lo f16 parts,
 *     f16 tensor-core products hi*hi + hi*lo + lo*hi accumulated in f32
 *     (about 22 bits of each operand; unless f32_prefill);
 *   - norms, RoPE (float64 angles), softmax, top-k and attention in f32 on
 *     every path; the KV cache is written rounded once (F16) or exact (F32).
 */
#ifndef QG_CUDA_OPS_H
#define QG_CUDA_OPS_H

#include "../../graph/qg_graph.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Options of the executor that change which kernels run. */
typedef struct qg_cuda_opts {
    bool f32_prefill; /* prefill products in f32 (exact path) for every dtype */
    bool pdl;         /* programmatic dependent launch (sm_90) */
    bool i8_decode;   /* decode products over Q4_K / Q6_K on the integer
                         tensor cores (op_matvec_i8.cu) */
    bool attn_tc;     /* decode attention over F16 caches on the f16
                         tensor cores (op_attention_decode_tc.cu); false:
                         the f32 SIMT kernel */
    int attn_cfg;     /* its shape (A/B, op_attention_decode_tc.cu's
                         table; -1: the default) */
    int attn_ctas;    /* decode attention: CTAs per multiprocessor the
                         split over cache rows aims at (long contexts) */
    int attn_gw;      /* decode attention: q heads per CTA (A/B; 0: the
                         largest of 8, 4, 2, 1 dividing the GQA group) */
    int attn_gw_rows; /* decode attention: up to this many cache rows, 2
                         q heads per CTA (more CTAs); past it attn_gw's
                         (fewer K/V reads); 0: always attn_gw's */
    int attn_chunk;   /* decode attention: fewest cache rows per split
                         (A/B; 0: 64) */
    int n_sm;         /* multiprocessors of the device (split sizes) */
    bool prefetch;    /* decode MoE: the gate/up kernel asks L2 for the
                         chosen experts' down rows (read by the next
                         kernel) */
    bool i8_fit;      /* decode products: grids no larger than the blocks
                         the device holds at once (one wave) */
    bool rgu;         /* decode MoE: the router and its top-k folded into
                         the gate/up launch (op_matvec_i8.cu, needs i8_fit) */
    int staged;       /* decode products with each block's weights staged in
                         shared memory by bulk copies (op_matvec_i8s.cu),
                         bits QG_CUDA_STAGED_* (QG_CUDA_STAGED; 0, the
                         default: the register kernels, which measured
                         faster, docs/BENCHMARKS.md) */
#define QG_CUDA_STAGED_MV 1    /* dense products (qkv, output projection) */
#define QG_CUDA_STAGED_GU 2    /* gate / up with the router folded in */
#define QG_CUDA_STAGED_DN 4    /* down + weighted sum */
#define QG_CUDA_STAGED_EARLY 8 /* staged kernels and decode attention let
                                  the next kernel launch at their start */
#define QG_CUDA_STAGED_NOPAD 16 /* staged rows unpadded: a tile is one copy */
#define QG_CUDA_STAGED_DN_LAUNCH 32 /* the register down kernel lets the next
                                       kernel (a staged q/k/v) launch at its
                                       start */
    bool dn_early;    /* decode MoE, staged down kernel: it reads the expert
                         ids the folded router publishes, and stages its
                         weights, before its launch wait (QG_CUDA_DN_EARLY;
                         the register kernel doing the same measured
                         slower and was removed) */
    bool rt_split;    /* decode MoE: the folded router builds x's image
                         between its grid barrier's arrival and wait */
    bool rpart;       /* decode MoE: the attention-output projection writes
                         per-tile router partials and the gate/up launch
                         sums them, no grid barrier (QG_CUDA_RPART=1;
                         qg_cuda_launch.rp_*) */
    int i8_mv_cfg[2]; /* decode product shapes (op_matvec_i8.cu's table),
                         inputs of <= 2048 / longer; -1: the default */
    int i8_gu_cfg;    /* gate/up shape, likewise */
    int i8_head_cfg;  /* the output head's shape (many tiles), likewise */
    int drop;         /* measurement only (QG_CUDA_DEBUG_DROP): decode
                         kernels left out of the step, bits QG_CUDA_DROP_*;
                         the output is then wrong, the time it saves is
                         the kernel's cost inside the step */
#define QG_CUDA_DROP_QKV 1
#define QG_CUDA_DROP_ATTN 2
#define QG_CUDA_DROP_MATMUL 4
#define QG_CUDA_DROP_ROUTER 8
#define QG_CUDA_DROP_GU 16
#define QG_CUDA_DROP_DOWN 32
} qg_cuda_opts;

/* One node, resolved for launching. */
typedef struct qg_cuda_launch {
    const qg_graph *g;
    const qg_node *n;
    void *const *dev;      /* dev[tensor id]: device address (weights too) */
    const int32_t *step;   /* device copy of the step input (QG_STEP_N) */
    void *scratch;         /* device scratch, >= qg_cuda_op_needs bytes */
    size_t scratch_bytes;
    int *counters;         /* qg_cuda_op_needs counters, zero between runs
                              (kernels that use one restore it to 0) */
    const double *rope_freq; /* rope: (head_dim/2) base^(-2i/hd), float64 */
    const float *rope_cs;  /* rope: (head_dim, rope_cs_n) cos | sin of each
                              position (the CPU's table), or NULL */
    int rope_cs_n;
    void *stream;          /* cudaStream_t */
    qg_cuda_opts o;
    /* Executor-level fusions (set by the executor; NULL / 0 when off):
     * pre_norm: in[0] of this node is the raw input of an rmsnorm node that
     *   was folded in; the kernel computes rmsnorm(x) * pre_norm itself.
     * post_add: out[0] of this node receives out + post_add (an add node
     *   folded in; out[0] then is the add's output tensor). */
    const float *pre_norm;
    float pre_eps;
    const float *post_add;
    /* rope -> attention: the rope kernel also writes this step's k' and v
     * rows into the caches (the attention node then skips its append). */
    void *kv_k, *kv_v;     /* rope: caches (Dkv, kv_ctx) of kv_type */
    const float *kv_vsrc;  /* rope: v (Dkv, T) */
    qg_dtype kv_type;
    int kv_ctx;
    bool skip_append;      /* attention: the rope node appended */
    /* rope folded into decode attention (the rope node is skipped): the
     * attention kernel normalizes and rotates q and this step's k itself
     * (k_rope's arithmetic, rope_freq its table), uses k' and v of this
     * step from shared memory, rounded as the cache stores them, and
     * appends them; in[0] and in[1] of the attention node are not read. */
    bool rope_fold;
    const float *rope_q, *rope_k;   /* raw q (Dq), k (Dkv) */
    const float *rope_qn, *rope_kn; /* q_norm, k_norm weights (head_dim) */
    float rope_eps;
    /* Router partials (o.rpart, decode graphs; see
     * qg_cuda_op_can_router_partials).  The producer, a matmul whose output
     * h (m rows, with its folded add) is the raw input of the rmsnorm
     * folded into the next launch's moe_fused, also writes for each 16-row
     * tile t of h: rp_buf[t][e] = sum_j rp_w[e][r0+j] * (h[r0+j] *
     * rp_nw[r0+j]) for e < rp_x, and rp_buf[t][rp_x] = sum_j h[r0+j]^2.
     * The consumer, that moe_fused, sums them (rp_tiles rows) for its
     * router logits and norm scale instead of computing the router itself.
     * NULL / 0 when off. */
    const float *rp_w;     /* producer: router weights (rp_x rows, rp_rb bytes apart) */
    size_t rp_rb;
    const float *rp_nw;    /* producer: the folded rmsnorm's weights (m) */
    int rp_x;              /* producer: experts (router rows) */
    float *rp_buf;         /* producer: out, consumer: in; (rp_tiles, rp_x + 1) */
    int rp_tiles;          /* consumer: tiles of h (rows of rp_buf) */
} qg_cuda_launch;

/* Does the CUDA executor implement node n (op, dtypes, shapes)? */
bool qg_cuda_op_supports(const qg_graph *g, const qg_node *n);

/* Device scratch bytes and zeroed int counters node n needs in graph g
 * (worst case: n_tok_max tokens, n_ctx rows). */
void qg_cuda_op_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o,
                      size_t *scratch_bytes, int *n_counters);

/* Can node n fold the rmsnorm producing its in[0] (pre_norm), and the add
 * consuming its out[0] (post_add)?  Only the kernels that take the fused
 * form say yes; the executor checks the graph side (single consumer). */
bool qg_cuda_op_can_pre_norm(const qg_graph *g, const qg_node *n);
bool qg_cuda_op_can_post_add(const qg_graph *g, const qg_node *n);
/* Can rope node r append the KV rows of attention node a? */
bool qg_cuda_op_can_fold_append(const qg_graph *g, const qg_node *r, const qg_node *a);
/* Can decode attention node a do rope node r's work itself (rope_fold)? */
bool qg_cuda_op_can_fold_rope(const qg_graph *g, const qg_node *r, const qg_node *a);
/* Can matmul node mm produce router partials (qg_cuda_launch.rp_*) for
 * moe_fused node moe under options o, both kernels taking their integer
 * tensor-core paths?  The executor checks the graph side: mm's output
 * (after its folded add) is the raw input of an rmsnorm folded into moe,
 * and moe is the next launch after mm.  *tiles: rows of the partials. */
bool qg_cuda_op_can_router_partials(const qg_graph *g, const qg_node *mm, const qg_node *moe,
                                    const qg_cuda_opts *o, int *tiles);

/* Set the kernels' launch attributes on the current device (shared memory
 * above the default limit).  Call before launching, outside any stream
 * capture; idempotent.  Returns a cudaError_t (0 on success). */
int qg_cuda_ops_prepare(void);

/* Enqueue node l->n on l->stream.  Returns the cudaError_t of the launch
 * (0 on success); nothing is synchronized. */
int qg_cuda_op_launch(const qg_cuda_launch *l);

#ifdef __cplusplus
}
#endif

#endif
