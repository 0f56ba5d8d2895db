/*
 * qg_cuda_ops.cu - the CUDA backend's one switch: which nodes it supports,
 * the scratch each needs, which executor-level fusions a node accepts, and
 * the dispatch to the op_*.cu launchers.
 */
#include "qg_cuda_gemm_i8.cuh"
#include "qg_cuda_attention.cuh"
#include "qg_cuda_i8_ops.cuh"
#include "qg_cuda_internal.cuh"

#include <initializer_list>

/* A weight format the kernels decode (qg_cuda_common.cuh). */
static bool weight_ok(qg_dtype t) {
    switch (t) {
    case QG_F32: case QG_F16: case QG_BF16: case QG_Q8_0: case QG_Q4_0:
    case QG_Q4_K: case QG_Q5_K: case QG_Q6_K:
        return true;
    default:
        return false;
    }
}

/* Weight tensor id: a supported format with rows of a multiple of 32. */
static bool weight_at(const qg_graph *g, int id) {
    const qg_tensor *t = &g->tensors[id];
    return weight_ok(t->type) && t->ne[0] % 32 == 0;
}

/* n_in / n_out match and the listed tensors have these types
 * (QG_DTYPE_COUNT: any weight format with rows of a multiple of 32). */
static bool types_are(const qg_graph *g, const qg_node *n, std::initializer_list<qg_dtype> in,
                      std::initializer_list<qg_dtype> out) {
    if (n->n_in != (int)in.size() || n->n_out != (int)out.size()) return false;
    int i = 0;
    for (qg_dtype want : in) {
        const qg_dtype t = g->tensors[n->in[i]].type;
        if (want == QG_DTYPE_COUNT ? !weight_at(g, n->in[i]) : t != want) return false;
        i++;
    }
    i = 0;
    for (qg_dtype want : out)
        if (g->tensors[n->out[i++]].type != want) return false;
    return true;
}

#define W QG_DTYPE_COUNT
#define TYPES(...) types_are(g, n, __VA_ARGS__)
#define MOE_XMAX 1024
#define MOE_KMAX 32
#define MATVEC_XS_MAX 10240

extern "C" bool qg_cuda_op_supports(const qg_graph *g, const qg_node *n) {
    const qg_tensor *T = g->tensors;
    switch (n->op) {
    case QG_OP_EMBED:
        return TYPES({W, QG_I32}, {QG_F32});
    case QG_OP_RMSNORM:
    case QG_OP_ADD:
        return TYPES({QG_F32, QG_F32}, {QG_F32});
    case QG_OP_QKV:
        return TYPES({QG_F32, W, W, W}, {QG_F32, QG_F32, QG_F32});
    case QG_OP_ROPE:
        return n->p.head_dim % 2 == 0 && n->p.head_dim > 0 &&
               TYPES({QG_F32, QG_F32, QG_F32, QG_F32, QG_I32},
                     {QG_F32, QG_F32});
    case QG_OP_ATTENTION: {
        if (n->n_in != 6) return false;
        const qg_dtype ct = T[n->in[3]].type;
        if (ct != QG_F16 && ct != QG_F32) return false;
        if (n->p.n_head_kv < 1 || n->p.n_head % n->p.n_head_kv != 0) return false;
        if (n->p.head_dim % 32 != 0 || n->p.head_dim > 128 || n->p.head_dim < 32) return false;
        return TYPES({QG_F32, QG_F32, QG_F32, ct, ct, QG_I32},
                     {QG_F32});
    }
    case QG_OP_MATMUL:
        return TYPES({W, QG_F32}, {QG_F32});
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD:
        return TYPES({QG_F32, W}, {QG_F32});
    case QG_OP_SWIGLU:
        return TYPES({QG_F32, W, W}, {QG_F32});
    case QG_OP_TOPK:
        return TYPES({QG_F32}, {QG_I32, QG_F32}) &&
               T[n->out[0]].ne[0] <= T[n->in[0]].ne[0] && T[n->in[0]].ne[0] <= MOE_XMAX;
    case QG_OP_EXPERT_SWIGLU:
        return TYPES({QG_F32, W, W, QG_I32}, {QG_F32}) &&
               T[n->in[1]].ne[2] <= MOE_XMAX && T[n->in[3]].ne[0] <= MOE_KMAX;
    case QG_OP_AGGREGATE:
        return TYPES({QG_F32, W, QG_I32, QG_F32}, {QG_F32}) &&
               T[n->in[1]].ne[2] <= MOE_XMAX && T[n->in[2]].ne[0] <= MOE_KMAX;
    case QG_OP_MOE_FUSED:
        return TYPES({QG_F32, W, W, W, W}, {QG_F32, QG_I32, QG_F32}) &&
               T[n->out[1]].ne[0] <= T[n->in[1]].ne[1] && T[n->in[1]].ne[1] <= MOE_XMAX &&
               T[n->out[1]].ne[0] <= MOE_KMAX && T[n->in[0]].ne[0] <= MATVEC_XS_MAX;
    case QG_OP_COPY:
        return n->n_in == 1 && n->n_out == 1 && T[n->in[0]].type == T[n->out[0]].type &&
               T[n->in[0]].nbytes == T[n->out[0]].nbytes;
    case QG_OP_COUNT:
        break;
    }
    return false;
}

#undef TYPES
#undef W

extern "C" void qg_cuda_op_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o,
                                 size_t *scratch_bytes, int *n_counters) {
    qg_cu_bump b = {nullptr, 0};
    int nc = 0;
    switch (n->op) {
    case QG_OP_ATTENTION:
        qg_cu_attention_needs(g, n, o, &b, &nc);
        break;
    case QG_OP_EXPERT_SWIGLU:
    case QG_OP_AGGREGATE:
    case QG_OP_MOE_FUSED:
        qg_cu_moe_needs(g, n, o, &b, &nc);
        break;
    case QG_OP_SWIGLU:
        qg_cu_swiglu_needs(g, n, &b);
        break;
    default:
        break;
    }
    /* the prefill products' activation images: last, at the tail (see
     * qg_cuda_gemm_i8.cuh) */
    qg_cu_gemm_needs(g, n, o, &b);
    *scratch_bytes = b.off;
    *n_counters = nc;
}

extern "C" bool qg_cuda_op_can_pre_norm(const qg_graph *g, const qg_node *n) {
    if (g->n_tok_max != 1) return false;
    switch (n->op) {
    case QG_OP_QKV:
    case QG_OP_MOE_FUSED:
    case QG_OP_LM_HEAD:
    case QG_OP_SWIGLU:
        return g->tensors[n->in[0]].ne[0] <= MATVEC_XS_MAX;
    default:
        return false;
    }
}

extern "C" bool qg_cuda_op_can_post_add(const qg_graph *g, const qg_node *n) {
    (void)g;
    return n->op == QG_OP_MATMUL || n->op == QG_OP_MOE_FUSED || n->op == QG_OP_AGGREGATE;
}

extern "C" bool qg_cuda_op_can_fold_append(const qg_graph *g, const qg_node *r,
                                           const qg_node *a) {
    if (r->op != QG_OP_ROPE || a->op != QG_OP_ATTENTION || r->n_out != 2 || a->n_in != 6) return false;
    const qg_tensor *kc = &g->tensors[a->in[3]];
    return a->in[1] == r->out[1] && a->in[5] == r->in[4] && r->p.head_dim == a->p.head_dim &&
           r->p.n_head_kv == a->p.n_head_kv && (kc->type == QG_F16 || kc->type == QG_F32) &&
           kc->ne[0] == (int64_t)a->p.head_dim * a->p.n_head_kv &&
           g->tensors[a->in[2]].producer < (int)(r - g->nodes);
}

extern "C" bool qg_cuda_op_can_fold_rope(const qg_graph *g, const qg_node *r, const qg_node *a) {
    const int hd = a->p.head_dim;
    return g->n_tok_max == 1 && qg_cuda_op_can_fold_append(g, r, a) && a->in[0] == r->out[0] &&
           hd % 32 == 0 && hd <= 128 && r->p.n_head == a->p.n_head &&
           g->tensors[r->in[2]].type == QG_F32 && g->tensors[r->in[3]].type == QG_F32;
}

extern "C" int qg_cuda_ops_prepare(void) {
    cudaError_t e = qg_cu_gemm_prepare();
    if (e == cudaSuccess) e = qg_cu_attention_prepare();
    if (e == cudaSuccess) e = qg_i8s_prepare();
    return (int)e;
}

/* Is node l's kernel left out of decode steps (opts.drop)? */
static bool dropped(const qg_cuda_launch *l) {
    if (!l->o.drop || l->g->n_tok_max != 1) return false;
    switch (l->n->op) {
    case QG_OP_QKV: return l->o.drop & QG_CUDA_DROP_QKV;
    case QG_OP_ATTENTION: return l->o.drop & QG_CUDA_DROP_ATTN;
    case QG_OP_MATMUL: return l->o.drop & QG_CUDA_DROP_MATMUL;
    default: return false;
    }
}

extern "C" int qg_cuda_op_launch(const qg_cuda_launch *l) {
    cudaError_t e;
    if (dropped(l)) return 0;
    switch (l->n->op) {
    case QG_OP_EMBED: e = qg_cu_embed(l); break;
    case QG_OP_RMSNORM: e = qg_cu_rmsnorm(l); break;
    case QG_OP_QKV: e = qg_cu_qkv(l); break;
    case QG_OP_ROPE: e = qg_cu_rope(l); break;
    case QG_OP_ATTENTION: e = qg_cu_attention(l); break;
    case QG_OP_MATMUL:
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD: e = qg_cu_matmul(l); break;
    case QG_OP_ADD: e = qg_cu_add(l); break;
    case QG_OP_SWIGLU: e = qg_cu_swiglu(l); break;
    case QG_OP_TOPK: e = qg_cu_topk(l); break;
    case QG_OP_EXPERT_SWIGLU: e = qg_cu_expert_swiglu(l); break;
    case QG_OP_AGGREGATE: e = qg_cu_aggregate(l); break;
    case QG_OP_MOE_FUSED: e = qg_cu_moe_fused(l); break;
    case QG_OP_COPY: e = qg_cu_copy(l); break;
    default: e = cudaErrorInvalidValue; break;
    }
    return (int)e;
}
