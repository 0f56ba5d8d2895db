/* qg_model_load.c - Qwen3 / Qwen3-MoE: hyperparameters and weight table
 * from a validated GGUF, with every required tensor checked for presence,
 * dtype and shape. */
#include "qg_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hard limits that catch absurd metadata before anything is sized from it. */
#define QG_MAX_LAYERS 1024
#define QG_MAX_EMBD (1 << 17)
#define QG_MAX_HEADS 1024
#define QG_MAX_HEAD_DIM 1024
#define QG_MAX_EXPERTS 4096

static qg_status get_u32(const qg_gguf *g, const char *arch, const char *key,
                         uint32_t *out, qg_error *err) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    return qg_gguf_get_u32(g, full, out, err);
}

static qg_status get_f32(const qg_gguf *g, const char *arch, const char *key,
                         float *out, qg_error *err) {
    char full[160];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    return qg_gguf_get_f32(g, full, out, err);
}

/* Check lo <= v <= hi, naming the key on failure. */
static qg_status check_range(const char *arch, const char *key, uint64_t v,
                             uint64_t lo, uint64_t hi, qg_error *err) {
    if (v < lo || v > hi)
        return qg_error_set(err, QG_ERR_MODEL,
                            "%s.%s = %llu is out of range [%llu, %llu]", arch,
                            key, (unsigned long long)v, (unsigned long long)lo,
                            (unsigned long long)hi);
    return QG_OK;
}

qg_status qg_hparams_read(const qg_gguf *g, qg_hparams *hp, qg_error *err) {
    memset(hp, 0, sizeof *hp);
    qg_str a;
    qg_status st = qg_gguf_get_str(g, "general.architecture", &a, err);
    if (st) return st;
    char arch[32];
    if (qg_str_eq(a, "qwen3moe")) {
        hp->arch = QG_ARCH_QWEN3MOE;
    } else if (qg_str_eq(a, "qwen3")) {
        hp->arch = QG_ARCH_QWEN3;
    } else {
        return qg_error_set(err, QG_ERR_UNSUPPORTED,
                            "general.architecture = '%.*s' is not supported "
                            "(qmoe-graph runs qwen3moe and qwen3)",
                            (int)QG_MIN(a.len, 64), a.ptr);
    }
    snprintf(arch, sizeof arch, "%s", hp->arch == QG_ARCH_QWEN3MOE ? "qwen3moe" : "qwen3");
    bool moe = hp->arch == QG_ARCH_QWEN3MOE;

    if ((st = get_u32(g, arch, "block_count", &hp->n_layer, err)) ||
        (st = get_u32(g, arch, "embedding_length", &hp->n_embd, err)) ||
        (st = get_u32(g, arch, "context_length", &hp->n_ctx_train, err)) ||
        (st = get_u32(g, arch, "attention.head_count", &hp->n_head, err)) ||
        (st = get_f32(g, arch, "attention.layer_norm_rms_epsilon", &hp->rms_eps, err)))
        return st;
    /* Optional keys with llama.cpp's defaults. */
    if (get_u32(g, arch, "attention.head_count_kv", &hp->n_head_kv, NULL))
        hp->n_head_kv = hp->n_head;
    if (get_f32(g, arch, "rope.freq_base", &hp->rope_theta, NULL))
        hp->rope_theta = 10000.0f;
    if (get_u32(g, arch, "feed_forward_length", &hp->n_ff, moe ? NULL : err)) {
        if (!moe) return err ? err->code : QG_ERR_MODEL;
        hp->n_ff = 0;
    }
    if ((st = check_range(arch, "block_count", hp->n_layer, 1, QG_MAX_LAYERS, err)) ||
        (st = check_range(arch, "embedding_length", hp->n_embd, 1, QG_MAX_EMBD, err)) ||
        (st = check_range(arch, "attention.head_count", hp->n_head, 1, QG_MAX_HEADS, err)) ||
        (st = check_range(arch, "attention.head_count_kv", hp->n_head_kv, 1, hp->n_head, err)) ||
        (st = check_range(arch, "context_length", hp->n_ctx_train, 1, 1u << 24, err)))
        return st;
    if (hp->n_head % hp->n_head_kv)
        return qg_error_set(err, QG_ERR_MODEL,
                            "%s.attention.head_count_kv = %u does not divide "
                            "attention.head_count = %u", arch, hp->n_head_kv, hp->n_head);
    uint32_t hd_default = hp->n_embd / hp->n_head;
    if (get_u32(g, arch, "attention.key_length", &hp->head_dim_k, NULL)) hp->head_dim_k = hd_default;
    if (get_u32(g, arch, "attention.value_length", &hp->head_dim_v, NULL)) hp->head_dim_v = hd_default;
    if ((st = check_range(arch, "attention.key_length", hp->head_dim_k, 2, QG_MAX_HEAD_DIM, err)) ||
        (st = check_range(arch, "attention.value_length", hp->head_dim_v, 2, QG_MAX_HEAD_DIM, err)))
        return st;
    if (hp->head_dim_k != hp->head_dim_v || hp->head_dim_k % 2)
        return qg_error_set(err, QG_ERR_MODEL,
                            "%s.attention.key_length = %u and value_length = %u: "
                            "they must be equal and even", arch, hp->head_dim_k, hp->head_dim_v);
    if (!(hp->rms_eps > 0.0f && hp->rms_eps < 1.0f))
        return qg_error_set(err, QG_ERR_MODEL,
                            "%s.attention.layer_norm_rms_epsilon = %g is not in (0, 1)",
                            arch, (double)hp->rms_eps);
    if (!(hp->rope_theta > 1.0f && hp->rope_theta < 1e12f))
        return qg_error_set(err, QG_ERR_MODEL, "%s.rope.freq_base = %g is out of range",
                            arch, (double)hp->rope_theta);
    if (moe) {
        if ((st = get_u32(g, arch, "expert_count", &hp->n_expert, err)) ||
            (st = get_u32(g, arch, "expert_used_count", &hp->n_expert_used, err)) ||
            (st = get_u32(g, arch, "expert_feed_forward_length", &hp->n_ff_exp, err)))
            return st;
        if ((st = check_range(arch, "expert_count", hp->n_expert, 1, QG_MAX_EXPERTS, err)) ||
            (st = check_range(arch, "expert_used_count", hp->n_expert_used, 1, hp->n_expert, err)) ||
            (st = check_range(arch, "expert_feed_forward_length", hp->n_ff_exp, 1, 1u << 20, err)))
            return st;
    } else if ((st = check_range(arch, "feed_forward_length", hp->n_ff, 1, 1u << 20, err))) {
        return st;
    }
    return QG_OK;
}

/* Can the executors compute with weights of this dtype? */
static bool weight_type_ok(qg_dtype t) {
    switch (t) {
    case QG_F32: case QG_F16: case QG_BF16: case QG_Q8_0: case QG_Q4_0:
    case QG_Q4_K: case QG_Q5_K: case QG_Q6_K:
        return true;
    default:
        return false;
    }
}

/* Find tensor `name` and check its shape (n_dims entries of ne; 0 in ne
 * means "any").  norm: 1-D norm weights must be F32. */
static const qg_gguf_tensor *need(const qg_gguf *g, const char *name, int n_dims,
                                  const int64_t *ne, bool f32_only, qg_error *err) {
    const qg_gguf_tensor *t = qg_gguf_find_tensor(g, name);
    if (!t) {
        qg_error_set(err, QG_ERR_MODEL, "required tensor '%s' is missing", name);
        return NULL;
    }
    bool ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++) ok = ne[i] == 0 || t->ne[i] == ne[i];
    if (!ok) {
        char want[96], got[96];
        int w = 0, k = 0;
        for (int i = 0; i < n_dims; i++)
            w += snprintf(want + w, sizeof want - (size_t)w, "%s%lld", i ? ", " : "", (long long)ne[i]);
        for (int i = 0; i < t->n_dims; i++)
            k += snprintf(got + k, sizeof got - (size_t)k, "%s%lld", i ? ", " : "", (long long)t->ne[i]);
        qg_error_set(err, QG_ERR_MODEL, "tensor '%s' has shape [%s], expected [%s]", name, got, want);
        return NULL;
    }
    if (f32_only ? t->type != QG_F32 : !weight_type_ok(t->type)) {
        qg_error_set(err, QG_ERR_UNSUPPORTED, "tensor '%s' has type %s, which qmoe-graph %s",
                     name, qg_dtype_name(t->type),
                     f32_only ? "requires to be f32" : "cannot compute with");
        return NULL;
    }
    return t;
}

#define NEED(dst, name, nd, f32, ...)                                      \
    do {                                                                   \
        const int64_t ne_[] = {__VA_ARGS__};                               \
        if (!((dst) = need(g, name, nd, ne_, f32, err))) goto fail;        \
    } while (0)

qg_model *qg_model_from_gguf(qg_gguf *g, qg_error *err) {
    qg_model *m = calloc(1, sizeof *m);
    if (!m) { qg_error_set(err, QG_ERR_NOMEM, "out of memory"); return NULL; }
    if (qg_hparams_read(g, &m->hp, err)) goto fail;
    qg_hparams *hp = &m->hp;
    const qg_gguf_tensor *te = qg_gguf_find_tensor(g, "token_embd.weight");
    if (!te) { qg_error_set(err, QG_ERR_MODEL, "required tensor 'token_embd.weight' is missing"); goto fail; }
    if (te->n_dims != 2 || te->ne[1] < 1 || te->ne[1] > (1 << 22)) {
        qg_error_set(err, QG_ERR_MODEL, "tensor 'token_embd.weight' has an unusable shape");
        goto fail;
    }
    hp->n_vocab = (uint32_t)te->ne[1];
    int64_t E = hp->n_embd, V = hp->n_vocab, hd = hp->head_dim_k;
    int64_t Dq = hd * hp->n_head, Dkv = hd * hp->n_head_kv;
    NEED(m->tok_embd, "token_embd.weight", 2, false, E, V);
    NEED(m->output_norm, "output_norm.weight", 1, true, E);
    if (qg_gguf_find_tensor(g, "output.weight")) {
        NEED(m->output, "output.weight", 2, false, E, V);
    } else {
        m->output = m->tok_embd;
        m->tied_output = true;
    }
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    if (!m->layers) { qg_error_set(err, QG_ERR_NOMEM, "out of memory"); goto fail; }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        qg_layer_weights *L = &m->layers[il];
        char nm[96];
#define LNAME(s) (snprintf(nm, sizeof nm, "blk.%u." s, il), nm)
        NEED(L->attn_norm, LNAME("attn_norm.weight"), 1, true, E);
        NEED(L->wq, LNAME("attn_q.weight"), 2, false, E, Dq);
        NEED(L->wk, LNAME("attn_k.weight"), 2, false, E, Dkv);
        NEED(L->wv, LNAME("attn_v.weight"), 2, false, E, Dkv);
        NEED(L->wo, LNAME("attn_output.weight"), 2, false, Dq, E);
        NEED(L->q_norm, LNAME("attn_q_norm.weight"), 1, true, hd);
        NEED(L->k_norm, LNAME("attn_k_norm.weight"), 1, true, hd);
        NEED(L->ffn_norm, LNAME("ffn_norm.weight"), 1, true, E);
        if (hp->arch == QG_ARCH_QWEN3MOE) {
            int64_t X = hp->n_expert, F = hp->n_ff_exp;
            NEED(L->gate_inp, LNAME("ffn_gate_inp.weight"), 2, false, E, X);
            NEED(L->gate_exps, LNAME("ffn_gate_exps.weight"), 3, false, E, F, X);
            NEED(L->up_exps, LNAME("ffn_up_exps.weight"), 3, false, E, F, X);
            NEED(L->down_exps, LNAME("ffn_down_exps.weight"), 3, false, F, E, X);
        } else {
            int64_t F = hp->n_ff;
            NEED(L->ffn_gate, LNAME("ffn_gate.weight"), 2, false, E, F);
            NEED(L->ffn_up, LNAME("ffn_up.weight"), 2, false, E, F);
            NEED(L->ffn_down, LNAME("ffn_down.weight"), 2, false, F, E);
        }
#undef LNAME
    }
    m->gguf = g;
    return m;
fail:
    free(m->layers);
    free(m);
    return NULL;
}

qg_model *qg_model_load(const char *path, qg_error *err) {
    qg_gguf *g = qg_gguf_open(path, err);
    if (!g) return NULL;
    qg_model *m = qg_model_from_gguf(g, err);
    if (!m) {
        qg_error_prefix(err, "%s", path);
        qg_gguf_close(g);
    }
    return m;
}

void qg_model_free(qg_model *m) {
    if (!m) return;
    qg_gguf_close(m->gguf);
    free(m->layers);
    free(m);
}
