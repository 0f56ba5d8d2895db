/* qg_model_build.c - the Qwen3 / Qwen3-MoE forward pass as a static op
 * graph.  Reads top to bottom like the model: embed, then per block
 * attention and the (sparse or dense) FFN with residuals, then the head. */
#include "qg_model.h"

#include <stdio.h>
#include <stdlib.h>

/* Builder state: the graph plus the few tensors every layer refers to. */
typedef struct builder {
    qg_graph *g;
    const qg_model *m;
    int64_t T; /* n_tok_max */
    int t_pos;
} builder;

/* A weight tensor viewing the mapped GGUF. */
static int weight(builder *b, const qg_gguf_tensor *w, int layer) {
    return qg_graph_add_tensor(b->g, w->cname, w->type, QG_ROLE_WEIGHT, layer,
                               w->n_dims, w->ne, w->data);
}

/* An activation of shape (ne0, ne1, T), n_dims 2 or 3. */
static int act(builder *b, const char *name, int layer, qg_dtype type,
               int64_t ne0, int64_t ne1) {
    char full[QG_NAME_LEN];
    if (layer >= 0) snprintf(full, sizeof full, "blk.%d.%s", layer, name);
    else snprintf(full, sizeof full, "%s", name);
    if (ne1 > 0) {
        int64_t ne[3] = {ne0, ne1, b->T};
        return qg_graph_add_tensor(b->g, full, type, QG_ROLE_ACT, layer, 3, ne, NULL);
    }
    int64_t ne[2] = {ne0, b->T};
    return qg_graph_add_tensor(b->g, full, type, QG_ROLE_ACT, layer, 2, ne, NULL);
}

static int node(builder *b, qg_op op, const char *name, int layer,
                const int *in, int n_in, const int *out, int n_out,
                const qg_op_params *p) {
    char full[QG_NAME_LEN];
    if (layer >= 0) snprintf(full, sizeof full, "blk.%d.%s", layer, name);
    else snprintf(full, sizeof full, "%s", name);
    return qg_graph_add_node(b->g, op, full, layer, in, n_in, out, n_out, p);
}

/* x (E,T) -> x + attention(rmsnorm(x)) */
static int build_attention(builder *b, int il, int x, const qg_build_opts *o) {
    const qg_hparams *hp = &b->m->hp;
    const qg_layer_weights *L = &b->m->layers[il];
    int64_t E = hp->n_embd, hd = hp->head_dim_k;
    int64_t Dq = hd * hp->n_head, Dkv = hd * hp->n_head_kv;
    qg_op_params p = {.eps = hp->rms_eps, .rope_theta = hp->rope_theta,
                      .head_dim = (int)hd, .n_head = (int)hp->n_head,
                      .n_head_kv = (int)hp->n_head_kv};

    int h = act(b, "attn_in", il, QG_F32, E, 0);             /* (E,T) */
    node(b, QG_OP_RMSNORM, "attn_norm", il, (int[]){x, weight(b, L->attn_norm, il)}, 2,
         (int[]){h}, 1, &p);

    int q = act(b, "q", il, QG_F32, Dq, 0);                  /* (Dq,T) */
    int k = act(b, "k", il, QG_F32, Dkv, 0);                 /* (Dkv,T) */
    int v = act(b, "v", il, QG_F32, Dkv, 0);                 /* (Dkv,T) */
    node(b, QG_OP_QKV, "qkv", il,
         (int[]){h, weight(b, L->wq, il), weight(b, L->wk, il), weight(b, L->wv, il)}, 4,
         (int[]){q, k, v}, 3, &p);

    int qr = act(b, "q_rope", il, QG_F32, Dq, 0);            /* (Dq,T) */
    int kr = act(b, "k_rope", il, QG_F32, Dkv, 0);           /* (Dkv,T) */
    node(b, QG_OP_ROPE, "rope", il,
         (int[]){q, k, weight(b, L->q_norm, il), weight(b, L->k_norm, il), b->t_pos}, 5,
         (int[]){qr, kr}, 2, &p);

    char nm[QG_NAME_LEN];
    int64_t kv_ne[2] = {Dkv, b->g->n_ctx};                   /* (Dkv,C) */
    snprintf(nm, sizeof nm, "blk.%d.cache_k", il);
    int kc = qg_graph_add_tensor(b->g, nm, o->kv_type, QG_ROLE_KV, il, 2, kv_ne, NULL);
    snprintf(nm, sizeof nm, "blk.%d.cache_v", il);
    int vc = qg_graph_add_tensor(b->g, nm, o->kv_type, QG_ROLE_KV, il, 2, kv_ne, NULL);

    int att = act(b, "attn_out", il, QG_F32, Dq, 0);         /* (Dq,T) */
    node(b, QG_OP_ATTENTION, "attention", il, (int[]){qr, kr, v, kc, vc, b->t_pos}, 6,
         (int[]){att}, 1, &p);

    int proj = act(b, "attn_proj", il, QG_F32, E, 0);        /* (E,T) */
    node(b, QG_OP_MATMUL, "attn_output", il, (int[]){weight(b, L->wo, il), att}, 2,
         (int[]){proj}, 1, &p);

    int x2 = act(b, "attn_resid", il, QG_F32, E, 0);         /* (E,T) */
    node(b, QG_OP_ADD, "attn_residual", il, (int[]){x, proj}, 2, (int[]){x2}, 1, &p);
    return x2;
}

/* x (E,T) -> x + ffn(rmsnorm(x)), sparse experts or dense SwiGLU */
static int build_ffn(builder *b, int il, int x) {
    const qg_hparams *hp = &b->m->hp;
    const qg_layer_weights *L = &b->m->layers[il];
    int64_t E = hp->n_embd;
    qg_op_params p = {.eps = hp->rms_eps, .n_expert = (int)hp->n_expert,
                      .n_expert_used = (int)hp->n_expert_used};

    int h = act(b, "ffn_in", il, QG_F32, E, 0);              /* (E,T) */
    node(b, QG_OP_RMSNORM, "ffn_norm", il, (int[]){x, weight(b, L->ffn_norm, il)}, 2,
         (int[]){h}, 1, &p);

    int y = act(b, "ffn_out", il, QG_F32, E, 0);             /* (E,T) */
    if (hp->arch == QG_ARCH_QWEN3MOE) {
        int64_t X = hp->n_expert, K = hp->n_expert_used, F = hp->n_ff_exp;
        int logits = act(b, "router_logits", il, QG_F32, X, 0); /* (X,T) */
        node(b, QG_OP_ROUTER, "router", il, (int[]){h, weight(b, L->gate_inp, il)}, 2,
             (int[]){logits}, 1, &p);
        int ids = act(b, "expert_ids", il, QG_I32, K, 0);    /* (K,T) i32 */
        int wts = act(b, "expert_wts", il, QG_F32, K, 0);    /* (K,T) */
        node(b, QG_OP_TOPK, "topk", il, (int[]){logits}, 1, (int[]){ids, wts}, 2, &p);
        int eh = act(b, "expert_h", il, QG_F32, F, K);       /* (F,K,T) */
        node(b, QG_OP_EXPERT_SWIGLU, "expert_swiglu", il,
             (int[]){h, weight(b, L->gate_exps, il), weight(b, L->up_exps, il), ids}, 4,
             (int[]){eh}, 1, &p);
        node(b, QG_OP_AGGREGATE, "aggregate", il,
             (int[]){eh, weight(b, L->down_exps, il), ids, wts}, 4, (int[]){y}, 1, &p);
    } else {
        int64_t F = hp->n_ff;
        int fh = act(b, "ffn_h", il, QG_F32, F, 0);          /* (F,T) */
        node(b, QG_OP_SWIGLU, "swiglu", il,
             (int[]){h, weight(b, L->ffn_gate, il), weight(b, L->ffn_up, il)}, 3,
             (int[]){fh}, 1, &p);
        node(b, QG_OP_MATMUL, "ffn_down", il, (int[]){weight(b, L->ffn_down, il), fh}, 2,
             (int[]){y}, 1, &p);
    }
    int x2 = act(b, "ffn_resid", il, QG_F32, E, 0);          /* (E,T) */
    node(b, QG_OP_ADD, "ffn_residual", il, (int[]){x, y}, 2, (int[]){x2}, 1, &p);
    return x2;
}

qg_graph *qg_model_build_graph(const qg_model *m, const qg_build_opts *o,
                               qg_error *err) {
    const qg_hparams *hp = &m->hp;
    if (o->n_tok_max < 1 || o->n_ctx < 1 || o->n_tok_max > o->n_ctx ||
        (o->phase == QG_PHASE_DECODE && o->n_tok_max != 1)) {
        qg_error_set(err, QG_ERR_ARG, "bad graph size: n_tok_max %d, n_ctx %d",
                     o->n_tok_max, o->n_ctx);
        return NULL;
    }
    if (o->kv_type != QG_F16 && o->kv_type != QG_F32) {
        qg_error_set(err, QG_ERR_ARG, "KV cache type %s: use f16 or f32", qg_dtype_name(o->kv_type));
        return NULL;
    }
    qg_graph *g = qg_graph_new(o->phase, o->n_tok_max, o->n_ctx);
    if (!g) { qg_error_set(err, QG_ERR_NOMEM, "out of memory"); return NULL; }
    builder b = {.g = g, .m = m, .T = o->n_tok_max};

    int64_t T = o->n_tok_max, E = hp->n_embd, V = hp->n_vocab;
    int64_t step_ne = QG_STEP_N;
    g->t_tokens = qg_graph_add_tensor(g, "tokens", QG_I32, QG_ROLE_INPUT, -1, 1, &T, NULL); /* (T) */
    g->t_pos = b.t_pos = qg_graph_add_tensor(g, "pos", QG_I32, QG_ROLE_INPUT, -1, 1, &T, NULL); /* (T) */
    g->t_step = qg_graph_add_tensor(g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &step_ne, NULL); /* (4) */

    qg_op_params p = {.eps = hp->rms_eps};
    int x = act(&b, "embd", -1, QG_F32, E, 0);               /* (E,T) */
    node(&b, QG_OP_EMBED, "embed", -1, (int[]){weight(&b, m->tok_embd, -1), g->t_tokens}, 2,
         (int[]){x}, 1, &p);

    for (uint32_t il = 0; il < hp->n_layer; il++) {
        x = build_attention(&b, (int)il, x, o);
        x = build_ffn(&b, (int)il, x);
    }

    int h = act(&b, "out_norm", -1, QG_F32, E, 0);           /* (E,T) */
    node(&b, QG_OP_RMSNORM, "output_norm", -1, (int[]){x, weight(&b, m->output_norm, -1)}, 2,
         (int[]){h}, 1, &p);
    int64_t R = o->logits_all ? T : 1;
    int64_t lne[2] = {V, R};                                 /* (V,R) */
    g->t_logits = qg_graph_add_tensor(g, "logits", QG_F32, QG_ROLE_OUTPUT, -1, 2, lne, NULL);
    p.only_last = !o->logits_all;
    node(&b, QG_OP_LM_HEAD, "lm_head", -1, (int[]){h, weight(&b, m->output, -1)}, 2,
         (int[]){g->t_logits}, 1, &p);
    return g;
}
