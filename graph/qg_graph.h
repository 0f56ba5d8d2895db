/*
 * qg_graph.h - the static op graph.
 *
 * A graph is a flat, topologically ordered array of nodes over a table of
 * tensors.  It is built once per (model, context, phase) and never changes
 * between steps: everything that varies per step (token ids, positions, the
 * number of live tokens) lives in the three INPUT tensors, so a captured CUDA
 * Graph or a recorded Vulkan command buffer can serve every token.
 *
 * Shapes are ne[4], innermost first, as in GGUF.  Activation tensors are
 * sized for the worst case (n_tok_max tokens); ops read the live token count
 * from the `step` input at run time.
 *
 * Passes (graph/qg_pass_*.c), run in this order by qg_graph_schedule():
 *   1 fuse       router+topk+expert_swiglu+aggregate -> moe_fused
 *   2 place      choose an executor per node (policy in qg_pass_place.c)
 *   3 partition  cut runs of same-executor nodes, insert copy nodes
 *   4 memplan    liveness-based offsets into one arena per executor
 *   5 compile    per executor (exec/): upload, capture, record
 */
#ifndef QG_GRAPH_H
#define QG_GRAPH_H

#include "qg_base.h"
#include "qg_dtype.h"

#define QG_MAX_IN 8
#define QG_MAX_OUT 3
#define QG_MAX_EXEC 4
#define QG_NAME_LEN 64

/* The ops.  Each comment gives inputs -> outputs with shapes (innermost
 * first); T = n_tok_max, E = n_embd, V = n_vocab, X = n_expert,
 * K = n_expert_used, F = expert (or dense) FFN width, Dq = head_dim*n_head,
 * Dkv = head_dim*n_head_kv, C = n_ctx. */
typedef enum qg_op {
    QG_OP_EMBED,         /* tok_embd (E,V) any dtype, tokens (I32,T) -> x (E,T) */
    QG_OP_RMSNORM,       /* x (N,T), w (N) f32 -> y (N,T)                        */
    QG_OP_QKV,           /* x (E,T), wq (E,Dq), wk (E,Dkv), wv (E,Dkv)
                            -> q (Dq,T), k (Dkv,T), v (Dkv,T)                   */
    QG_OP_ROPE,          /* q (Dq,T), k (Dkv,T), q_norm (hd), k_norm (hd),
                            pos (I32,T) -> q' (Dq,T), k' (Dkv,T): per-head
                            RMSNorm, then NEOX rotation at pos[t]               */
    QG_OP_ATTENTION,     /* q (Dq,T), k (Dkv,T), v (Dkv,T), kcache (Dkv,C),
                            vcache (Dkv,C), pos (I32,T) -> o (Dq,T).  Writes
                            k,v rows at pos[t] into the caches, then causal
                            GQA attention of q[t] over cache rows 0..pos[t]   */
    QG_OP_MATMUL,        /* w (N,M), x (N,T) -> y (M,T)                         */
    QG_OP_ADD,           /* a (N,T), b (N,T) -> y (N,T)                         */
    QG_OP_SWIGLU,        /* dense FFN: x (E,T), gate (E,F), up (E,F)
                            -> h (F,T) = silu(gate x) * (up x)                 */
    QG_OP_ROUTER,        /* x (E,T), gate_inp (E,X) -> logits (X,T) f32         */
    QG_OP_TOPK,          /* logits (X,T) -> ids (I32,K,T), wts (K,T): softmax
                            over X, top-K, renormalize to sum 1                 */
    QG_OP_EXPERT_SWIGLU, /* x (E,T), gate_exps (E,F,X), up_exps (E,F,X),
                            ids (I32,K,T) -> h (F,K,T)                          */
    QG_OP_AGGREGATE,     /* h (F,K,T), down_exps (F,E,X), ids (I32,K,T),
                            wts (K,T) -> y (E,T) = sum_k wts*down_ids h        */
    QG_OP_MOE_FUSED,     /* x (E,T), gate_inp (E,X), gate_exps, up_exps,
                            down_exps -> y (E,T), ids (I32,K,T), wts (K,T):
                            router+topk+expert_swiglu+aggregate in one node    */
    QG_OP_LM_HEAD,       /* x (E,T), out_w (E,V) -> logits (V,R); R = T, or 1
                            with p.only_last (the last live token's row)       */
    QG_OP_COPY,          /* x -> y, same shape; crosses executors            */
    QG_OP_COUNT
} qg_op;

const char *qg_op_name(qg_op op); /* "embed", "rmsnorm", ... */

typedef enum qg_role {
    QG_ROLE_WEIGHT, /* view into the mapped file */
    QG_ROLE_ACT,    /* planned into the executor's activation arena */
    QG_ROLE_KV,     /* KV cache: planned into the executor's KV arena,
                       identical offsets in every graph of a context */
    QG_ROLE_INPUT,  /* tokens, pos, step: host writes before each step */
    QG_ROLE_OUTPUT, /* logits: host reads after each step */
} qg_role;

typedef enum qg_phase { QG_PHASE_DECODE, QG_PHASE_PREFILL } qg_phase;

/* The `step` input: (I32, QG_STEP_N).  Written by the host per step. */
enum {
    QG_STEP_N_TOK = 0, /* live tokens this step, 1..n_tok_max */
    QG_STEP_N_KV = 1,  /* KV rows valid after this step = pos[n_tok-1]+1 */
    QG_STEP_N = 4,
};

typedef struct qg_tensor {
    char name[QG_NAME_LEN];
    qg_dtype type;
    int n_dims;
    int64_t ne[4];
    size_t nbytes; /* worst case */
    qg_role role;
    int layer;         /* -1 outside the blocks */
    const void *data;  /* WEIGHT: into the map; else NULL */
    int producer;      /* node index, -1 for weights, inputs, kv */
    /* set by the passes */
    int exec;          /* executor holding it (ACT/KV/INPUT/OUTPUT); -1 */
    size_t offset;     /* in that executor's arena (ACT/INPUT/OUTPUT) or
                          KV arena (KV) */
    int first_use, last_use; /* node indices (memplan) */
} qg_tensor;

typedef struct qg_op_params {
    float eps;        /* rmsnorm, rope's q/k norm */
    float rope_theta; /* rope */
    int head_dim, n_head, n_head_kv; /* rope, attention */
    int n_expert, n_expert_used;     /* topk, moe ops */
    bool only_last;   /* lm_head */
} qg_op_params;

typedef struct qg_node {
    qg_op op;
    char name[QG_NAME_LEN]; /* "blk.7.router" */
    int layer;              /* -1 outside the blocks */
    int n_in, n_out;
    int in[QG_MAX_IN];      /* tensor ids */
    int out[QG_MAX_OUT];
    qg_op_params p;
    int exec;      /* executor index, set by place */
    int partition; /* set by partition */
} qg_node;

/* A maximal run of nodes on one executor (after pass 3). */
typedef struct qg_partition {
    int exec;
    int first, n; /* nodes [first, first+n) */
} qg_partition;

typedef struct qg_graph {
    qg_phase phase;
    int n_tok_max; /* 1 for decode */
    int n_ctx;
    bool fused;    /* pass 1 ran */

    qg_tensor *tensors;
    int n_tensors, cap_tensors;
    qg_node *nodes;
    int n_nodes, cap_nodes;

    int t_tokens, t_pos, t_step; /* INPUT tensor ids */
    int t_logits;                /* OUTPUT tensor id */

    qg_partition *parts;
    int n_parts;

    int n_exec;                          /* executors given to place */
    size_t act_bytes[QG_MAX_EXEC];       /* arena sizes from memplan */
    size_t kv_bytes[QG_MAX_EXEC];
} qg_graph;

/* Building.  The graph owns its arrays; qg_graph_free releases them. */
qg_graph *qg_graph_new(qg_phase phase, int n_tok_max, int n_ctx);
void qg_graph_free(qg_graph *g);
/* Add a tensor; returns its id.  ne has n_dims entries. */
int qg_graph_add_tensor(qg_graph *g, const char *name, qg_dtype type,
                        qg_role role, int layer, int n_dims,
                        const int64_t *ne, const void *data);
/* Add a node with inputs/outputs (tensor ids); returns its index and sets
 * each output's producer. */
int qg_graph_add_node(qg_graph *g, qg_op op, const char *name, int layer,
                      const int *in, int n_in, const int *out, int n_out,
                      const qg_op_params *p);

/* Rows (per token) of tensor t: ne[1]*ne[2]*ne[3] / n_tok_max when the
 * last used dim is the token dim.  Convenience for kernels. */
static inline int64_t qg_tensor_nelem(const qg_tensor *t) {
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

/* Cost model for dump/profile: FLOPs and bytes moved by node n when
 * n_tok tokens are live and the KV cache holds n_kv rows. */
double qg_node_flops(const qg_graph *g, const qg_node *n, int n_tok, int n_kv);
double qg_node_bytes(const qg_graph *g, const qg_node *n, int n_tok, int n_kv);

#endif
