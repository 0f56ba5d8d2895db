/*
 * qg_cpu_ops.c - the CPU backend's one switch: which nodes it supports,
 * the scratch each needs, and the dispatch to the op_*.c kernels.
 */
#include "qg_cpu_internal.h"

/* A weight format the quant kernels dot and dequantize. */
static bool weight_ok(qg_dtype t) {
    const qg_dtype_info *i = qg_dtype_get((uint32_t)t);
    return i && i->supported && t != QG_I32;
}

/* Tensors in[0..n_in) / out[0..n_out) have these types (QG_DTYPE_COUNT:
 * any weight format). */
static bool types_are(const qg_graph *g, const qg_node *n, int n_in,
                      const qg_dtype *in, int n_out, const qg_dtype *out) {
    if (n->n_in != n_in || n->n_out != n_out) return false;
    for (int i = 0; i < n_in; i++) {
        const qg_dtype t = g->tensors[n->in[i]].type;
        if (in[i] == QG_DTYPE_COUNT ? !weight_ok(t) : t != in[i]) return false;
    }
    for (int i = 0; i < n_out; i++)
        if (g->tensors[n->out[i]].type != out[i]) return false;
    return true;
}

#define W QG_DTYPE_COUNT /* any weight format */
#define TYPES(ins, outs)                                                      \
    types_are(g, n, (int)QG_ARRAY_LEN(ins), ins, (int)QG_ARRAY_LEN(outs), outs)

bool qg_cpu_op_supports(const qg_graph *g, const qg_node *n) {
    switch (n->op) {
    case QG_OP_EMBED:
        return TYPES(((qg_dtype[]){W, QG_I32}), ((qg_dtype[]){QG_F32}));
    case QG_OP_RMSNORM:
    case QG_OP_ADD:
        return TYPES(((qg_dtype[]){QG_F32, QG_F32}), ((qg_dtype[]){QG_F32}));
    case QG_OP_QKV:
        return TYPES(((qg_dtype[]){QG_F32, W, W, W}),
                     ((qg_dtype[]){QG_F32, QG_F32, QG_F32}));
    case QG_OP_ROPE:
        return n->p.head_dim % 2 == 0 &&
               TYPES(((qg_dtype[]){QG_F32, QG_F32, QG_F32, QG_F32, QG_I32}),
                     ((qg_dtype[]){QG_F32, QG_F32}));
    case QG_OP_ATTENTION: {
        if (n->n_in != 6) return false;
        const qg_dtype ct = g->tensors[n->in[3]].type;
        if (ct != QG_F16 && ct != QG_F32) return false;
        if (n->p.n_head_kv < 1 || n->p.n_head % n->p.n_head_kv != 0) return false;
        return TYPES(((qg_dtype[]){QG_F32, QG_F32, QG_F32, ct, ct, QG_I32}),
                     ((qg_dtype[]){QG_F32}));
    }
    case QG_OP_MATMUL:
        return TYPES(((qg_dtype[]){W, QG_F32}), ((qg_dtype[]){QG_F32}));
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD:
        return TYPES(((qg_dtype[]){QG_F32, W}), ((qg_dtype[]){QG_F32}));
    case QG_OP_SWIGLU:
        return TYPES(((qg_dtype[]){QG_F32, W, W}), ((qg_dtype[]){QG_F32}));
    case QG_OP_TOPK:
        return TYPES(((qg_dtype[]){QG_F32}), ((qg_dtype[]){QG_I32, QG_F32})) &&
               g->tensors[n->out[0]].ne[0] <= g->tensors[n->in[0]].ne[0];
    case QG_OP_EXPERT_SWIGLU:
        return TYPES(((qg_dtype[]){QG_F32, W, W, QG_I32}), ((qg_dtype[]){QG_F32}));
    case QG_OP_AGGREGATE:
        return TYPES(((qg_dtype[]){QG_F32, W, QG_I32, QG_F32}), ((qg_dtype[]){QG_F32}));
    case QG_OP_MOE_FUSED:
        return TYPES(((qg_dtype[]){QG_F32, W, W, W, W}),
                     ((qg_dtype[]){QG_F32, QG_I32, QG_F32})) &&
               g->tensors[n->out[1]].ne[0] <= g->tensors[n->in[1]].ne[1];
    case QG_OP_COPY:
        return n->n_in == 1 && n->n_out == 1 &&
               g->tensors[n->in[0]].type == g->tensors[n->out[0]].type &&
               g->tensors[n->in[0]].nbytes == g->tensors[n->out[0]].nbytes;
    case QG_OP_COUNT:
        break;
    }
    return false;
}

#undef TYPES
#undef W

void qg_cpu_op_scratch(const qg_graph *g, const qg_node *n, int n_threads,
                       size_t *per_thread_floats, size_t *shared_bytes) {
    (void)n_threads; /* the layouts are per thread; nothing scales with it */
    const qg_tensor *T = g->tensors;
    const int Tm = g->n_tok_max;
    size_t pt = 0, sh = 0;
    switch (n->op) {
    case QG_OP_QKV:
        pt = qg_cpu_mm_scratch(T[n->in[0]].ne[0], Tm);
        break;
    case QG_OP_MATMUL:
        pt = qg_cpu_mm_scratch(T[n->in[0]].ne[0], Tm);
        break;
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD:
        pt = qg_cpu_mm_scratch(T[n->in[1]].ne[0], Tm);
        break;
    case QG_OP_SWIGLU:
        pt = qg_cpu_swiglu_scratch(T[n->in[1]].ne[0], Tm);
        break;
    case QG_OP_ROPE:
        pt = qg_cpu_rope_scratch(n->p.head_dim);
        break;
    case QG_OP_ATTENTION:
        pt = qg_cpu_attention_scratch(g->n_ctx, n->p.head_dim);
        break;
    case QG_OP_TOPK:
    case QG_OP_EXPERT_SWIGLU:
    case QG_OP_AGGREGATE:
    case QG_OP_MOE_FUSED:
        qg_cpu_moe_scratch(g, n, &pt, &sh);
        break;
    case QG_OP_EMBED:
    case QG_OP_RMSNORM:
    case QG_OP_ADD:
    case QG_OP_COPY:
    case QG_OP_COUNT:
        break;
    }
    *per_thread_floats = pt;
    *shared_bytes = sh;
}

void qg_cpu_op_run(const qg_cpu_op_args *a, int ith, int nth) {
    QG_ASSERT(a->n_tok >= 1 && a->n_tok <= a->g->n_tok_max);
    switch (a->n->op) {
    case QG_OP_EMBED: qg_cpu_embed(a, ith, nth); return;
    case QG_OP_RMSNORM: qg_cpu_rmsnorm(a, ith, nth); return;
    case QG_OP_QKV: qg_cpu_qkv(a, ith, nth); return;
    case QG_OP_ROPE: qg_cpu_rope(a, ith, nth); return;
    case QG_OP_ATTENTION: qg_cpu_attention(a, ith, nth); return;
    case QG_OP_MATMUL: qg_cpu_matmul(a, ith, nth); return;
    case QG_OP_ADD: qg_cpu_add(a, ith, nth); return;
    case QG_OP_SWIGLU: qg_cpu_swiglu(a, ith, nth); return;
    case QG_OP_ROUTER: qg_cpu_router(a, ith, nth); return;
    case QG_OP_TOPK: qg_cpu_topk(a, ith, nth); return;
    case QG_OP_EXPERT_SWIGLU: qg_cpu_expert_swiglu(a, ith, nth); return;
    case QG_OP_AGGREGATE: qg_cpu_aggregate(a, ith, nth); return;
    case QG_OP_MOE_FUSED: qg_cpu_moe_fused(a, ith, nth); return;
    case QG_OP_LM_HEAD: qg_cpu_lm_head(a, ith, nth); return;
    case QG_OP_COPY: qg_cpu_copy(a, ith, nth); return;
    case QG_OP_COUNT: break;
    }
    QG_ABORT("qg_cpu_op_run: op %d (%s) not implemented", (int)a->n->op,
             qg_op_name(a->n->op));
}
