/*
 * qg_ref_model.c - the float64 reference forward pass (see qg_ref_model.h).
 *
 * Layout of the file: hyperparameters and tensor checks (load), then the
 * building blocks (matmul over a dequantized row at a time, rmsnorm, rope,
 * attention, ffn), then the forward pass, which reads top to bottom like
 * the model description in the header.  All activations are stored for
 * all n tokens of the current layer, token-major: a (D, n) buffer holds
 * token t's D values at [t * D, t * D + D).
 */
#include "qg_ref_model.h"

#include "ops/quant/qg_quant.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_layer {
    const qg_gguf_tensor *attn_norm; /* (E) */
    const qg_gguf_tensor *wq;        /* (E, hd * n_head) */
    const qg_gguf_tensor *wk;        /* (E, hd * n_head_kv) */
    const qg_gguf_tensor *wv;        /* (E, hd * n_head_kv) */
    const qg_gguf_tensor *wo;        /* (hd * n_head, E) */
    const qg_gguf_tensor *q_norm;    /* (hd) */
    const qg_gguf_tensor *k_norm;    /* (hd) */
    const qg_gguf_tensor *ffn_norm;  /* (E) */
    /* qwen3moe */
    const qg_gguf_tensor *gate_inp;  /* (E, X) */
    const qg_gguf_tensor *gate_exps; /* (E, F, X) */
    const qg_gguf_tensor *up_exps;   /* (E, F, X) */
    const qg_gguf_tensor *down_exps; /* (F, E, X) */
    /* qwen3 */
    const qg_gguf_tensor *ffn_gate;  /* (E, F) */
    const qg_gguf_tensor *ffn_up;    /* (E, F) */
    const qg_gguf_tensor *ffn_down;  /* (F, E) */
} ref_layer;

struct qg_ref_model {
    qg_gguf *g;
    qg_ref_hparams hp;
    const qg_gguf_tensor *tok_embd;    /* (E, V) */
    const qg_gguf_tensor *output_norm; /* (E) */
    const qg_gguf_tensor *output;      /* (E, V), == tok_embd when tied */
    ref_layer *layers;                 /* n_layer */
};

/* ---- load: hyperparameters ------------------------------------------- */

/* Read integer key "<arch>.<suffix>" into *out.  When the key is absent and
 * `def` >= 0, *out = def; when absent and def < 0, QG_ERR_MODEL.  Values
 * must be in [1, 2^30]. */
static qg_status ref_key_int(const qg_gguf *g, const char *arch,
                             const char *suffix, long def, int *out,
                             qg_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!qg_gguf_find(g, key)) {
        if (def < 0)
            return qg_error_set(err, QG_ERR_MODEL, "%s: missing key '%s'",
                                g->path, key);
        *out = (int)def;
        return QG_OK;
    }
    uint32_t v;
    qg_status st = qg_gguf_get_u32(g, key, &v, err);
    if (st) return st;
    if (v < 1 || v > (1u << 30))
        return qg_error_set(err, QG_ERR_MODEL, "%s: key '%s' = %" PRIu32
                            " is out of range [1, 2^30]", g->path, key, v);
    *out = (int)v;
    return QG_OK;
}

/* Read float key "<arch>.<suffix>" as stored (float32 or float64, not
 * rounded through float).  Absent: `def` if def_ok, else QG_ERR_MODEL. */
static qg_status ref_key_f64(const qg_gguf *g, const char *arch,
                             const char *suffix, bool def_ok, double def,
                             double *out, qg_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    const qg_gguf_kv *kv = qg_gguf_find(g, key);
    if (!kv) {
        if (!def_ok)
            return qg_error_set(err, QG_ERR_MODEL, "%s: missing key '%s'",
                                g->path, key);
        *out = def;
        return QG_OK;
    }
    if (kv->type != QG_GGUF_FLOAT32 && kv->type != QG_GGUF_FLOAT64)
        return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' has type %s, "
                            "expected float32 or float64", g->path, key,
                            qg_gguf_type_name(kv->type));
    if (!(kv->v.f64 > 0) || isinf(kv->v.f64))
        return qg_error_set(err, QG_ERR_MODEL, "%s: key '%s' = %g must be "
                            "positive and finite", g->path, key, kv->v.f64);
    *out = kv->v.f64;
    return QG_OK;
}

/* Fill m->hp's scalar fields from the metadata (n_vocab, n_ff and
 * tied_output come from the tensors later). */
static qg_status ref_read_hparams(qg_ref_model *m, qg_error *err) {
    const qg_gguf *g = m->g;
    qg_ref_hparams *hp = &m->hp;
    qg_str arch;
    qg_status st = qg_gguf_get_str(g, "general.architecture", &arch, err);
    if (st) return st;
    if (qg_str_eq(arch, "qwen3moe")) {
        hp->moe = true;
    } else if (qg_str_eq(arch, "qwen3")) {
        hp->moe = false;
    } else {
        return qg_error_set(err, QG_ERR_UNSUPPORTED, "%s: general.architecture"
                            " = '%.*s': the reference runs qwen3moe and qwen3",
                            g->path, (int)QG_MIN(arch.len, 64), arch.ptr);
    }
    snprintf(hp->arch, sizeof hp->arch, "%s", hp->moe ? "qwen3moe" : "qwen3");
    const char *a = hp->arch;

    if ((st = ref_key_int(g, a, "block_count", -1, &hp->n_layer, err)) ||
        (st = ref_key_int(g, a, "embedding_length", -1, &hp->n_embd, err)) ||
        (st = ref_key_int(g, a, "attention.head_count", -1, &hp->n_head,
                          err)) ||
        (st = ref_key_int(g, a, "attention.head_count_kv", hp->n_head,
                          &hp->n_head_kv, err)))
        return st;
    int hd_k, hd_v;
    if ((st = ref_key_int(g, a, "attention.key_length",
                          hp->n_embd / hp->n_head, &hd_k, err)) ||
        (st = ref_key_int(g, a, "attention.value_length", hd_k, &hd_v, err)))
        return st;
    if (hd_k != hd_v)
        return qg_error_set(err, QG_ERR_UNSUPPORTED, "%s: %s.attention."
                            "key_length = %d != value_length = %d", g->path,
                            a, hd_k, hd_v);
    if (hd_k < 2 || hd_k % 2 != 0)
        return qg_error_set(err, QG_ERR_MODEL, "%s: %s.attention.key_length "
                            "= %d: the head size must be even and >= 2 (RoPE "
                            "pairs)", g->path, a, hd_k);
    hp->head_dim = hd_k;
    if (hp->n_head % hp->n_head_kv != 0)
        return qg_error_set(err, QG_ERR_MODEL, "%s: %s.attention.head_count "
                            "= %d is not a multiple of head_count_kv = %d",
                            g->path, a, hp->n_head, hp->n_head_kv);
    int n_rot;
    if ((st = ref_key_int(g, a, "rope.dimension_count", hd_k, &n_rot, err)))
        return st;
    if (n_rot != hd_k)
        return qg_error_set(err, QG_ERR_UNSUPPORTED, "%s: %s.rope."
                            "dimension_count = %d != head size %d (partial "
                            "rotary)", g->path, a, n_rot, hd_k);
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    const qg_gguf_kv *sc = qg_gguf_find(g, key);
    char fkey[128];
    snprintf(fkey, sizeof fkey, "%s.rope.scaling.factor", a);
    const qg_gguf_kv *sf = qg_gguf_find(g, fkey);
    /* "none", or "linear" with factor 1 (llama.cpp's default), is no
     * scaling; anything else changes the angles and is not modelled */
    bool plain = !sc || (sc->type == QG_GGUF_STRING &&
                         (qg_str_eq(sc->str, "none") ||
                          qg_str_eq(sc->str, "linear")));
    if (sf && (sf->type == QG_GGUF_FLOAT32 || sf->type == QG_GGUF_FLOAT64) &&
        sf->v.f64 != 0 && sf->v.f64 != 1)
        plain = false;
    if (!plain)
        return qg_error_set(err, QG_ERR_UNSUPPORTED, "%s: RoPE scaling (key "
                            "'%s' / '%s') is set: the reference has none",
                            g->path, key, fkey);
    if ((st = ref_key_f64(g, a, "attention.layer_norm_rms_epsilon", false, 0,
                          &hp->rms_eps, err)) ||
        (st = ref_key_f64(g, a, "rope.freq_base", true, 10000.0,
                          &hp->rope_base, err)))
        return st;
    if (hp->moe) {
        if ((st = ref_key_int(g, a, "expert_count", -1, &hp->n_expert,
                              err)) ||
            (st = ref_key_int(g, a, "expert_used_count", -1,
                              &hp->n_expert_used, err)))
            return st;
        if (hp->n_expert_used > hp->n_expert)
            return qg_error_set(err, QG_ERR_MODEL, "%s: %s.expert_used_count"
                                " = %d > expert_count = %d", g->path, a,
                                hp->n_expert_used, hp->n_expert);
    }
    return QG_OK;
}

/* ---- load: tensors ---------------------------------------------------- */

/* Find tensor `name` and check it has exactly the shape ne[0..n_dims) (the
 * remaining dims 1) and a dtype we can dequantize.  `optional`: absent is
 * not an error (*out = NULL). */
static qg_status ref_tensor(const qg_gguf *g, const char *name, int n_dims,
                            int64_t ne0, int64_t ne1, int64_t ne2,
                            bool optional, const qg_gguf_tensor **out,
                            qg_error *err) {
    const qg_gguf_tensor *t = qg_gguf_find_tensor(g, name);
    *out = NULL;
    if (!t) {
        if (optional) return QG_OK;
        return qg_error_set(err, QG_ERR_MODEL, "%s: missing tensor '%s'",
                            g->path, name);
    }
    const int64_t want[4] = {ne0, ne1, ne2, 1};
    for (int d = 0; d < 4; d++) {
        int64_t w = d < n_dims ? want[d] : 1;
        if (t->ne[d] != w)
            return qg_error_set(err, QG_ERR_MODEL, "%s: tensor '%s' has shape"
                                " (%" PRId64 ", %" PRId64 ", %" PRId64 ", %"
                                PRId64 "), expected (%" PRId64 ", %" PRId64
                                ", %" PRId64 ")", g->path, name, t->ne[0],
                                t->ne[1], t->ne[2], t->ne[3], ne0,
                                n_dims > 1 ? ne1 : 1, n_dims > 2 ? ne2 : 1);
    }
    const qg_dtype_info *info = qg_dtype_get((uint32_t)t->type);
    if (!info || !info->supported)
        return qg_error_set(err, QG_ERR_UNSUPPORTED, "%s: tensor '%s' has "
                            "type %s, which the reference cannot dequantize",
                            g->path, name, info ? info->name : "unknown");
    if (t->ne[0] % info->block_size != 0)
        return qg_error_set(err, QG_ERR_MODEL, "%s: tensor '%s': row length "
                            "%" PRId64 " is not a multiple of the %s block "
                            "size %d", g->path, name, t->ne[0], info->name,
                            info->block_size);
    *out = t;
    return QG_OK;
}

/* Look up and check every tensor of block il. */
static qg_status ref_load_layer(qg_ref_model *m, int il, qg_error *err) {
    const qg_gguf *g = m->g;
    const qg_ref_hparams *hp = &m->hp;
    ref_layer *L = &m->layers[il];
    const int64_t E = hp->n_embd, hd = hp->head_dim;
    const int64_t q_dim = hd * hp->n_head, kv_dim = hd * hp->n_head_kv;
    char n[128];
    qg_status st;
#define REF_T(field, suffix, nd, a, b, c)                                    \
    do {                                                                     \
        snprintf(n, sizeof n, "blk.%d.%s.weight", il, suffix);               \
        if ((st = ref_tensor(g, n, nd, a, b, c, false, &L->field, err)))     \
            return st;                                                       \
    } while (0)
    REF_T(attn_norm, "attn_norm", 1, E, 1, 1);
    REF_T(wq, "attn_q", 2, E, q_dim, 1);
    REF_T(wk, "attn_k", 2, E, kv_dim, 1);
    REF_T(wv, "attn_v", 2, E, kv_dim, 1);
    REF_T(wo, "attn_output", 2, q_dim, E, 1);
    REF_T(q_norm, "attn_q_norm", 1, hd, 1, 1);
    REF_T(k_norm, "attn_k_norm", 1, hd, 1, 1);
    REF_T(ffn_norm, "ffn_norm", 1, E, 1, 1);
    const int64_t F = hp->n_ff, X = hp->n_expert;
    if (hp->moe) {
        REF_T(gate_inp, "ffn_gate_inp", 2, E, X, 1);
        REF_T(gate_exps, "ffn_gate_exps", 3, E, F, X);
        REF_T(up_exps, "ffn_up_exps", 3, E, F, X);
        REF_T(down_exps, "ffn_down_exps", 3, F, E, X);
    } else {
        REF_T(ffn_gate, "ffn_gate", 2, E, F, 1);
        REF_T(ffn_up, "ffn_up", 2, E, F, 1);
        REF_T(ffn_down, "ffn_down", 2, F, E, 1);
    }
#undef REF_T
    return QG_OK;
}

/* The FFN width: from the metadata key when present, else from block 0's
 * gate tensor; both checked against each other. */
static qg_status ref_read_n_ff(qg_ref_model *m, qg_error *err) {
    const qg_gguf *g = m->g;
    qg_ref_hparams *hp = &m->hp;
    const char *tname = hp->moe ? "blk.0.ffn_gate_exps.weight"
                                : "blk.0.ffn_gate.weight";
    const char *kname = hp->moe ? "expert_feed_forward_length"
                                : "feed_forward_length";
    const qg_gguf_tensor *t = qg_gguf_find_tensor(g, tname);
    if (!t)
        return qg_error_set(err, QG_ERR_MODEL, "%s: missing tensor '%s'",
                            g->path, tname);
    if (t->ne[1] < 1 || t->ne[1] > (1 << 30))
        return qg_error_set(err, QG_ERR_MODEL, "%s: tensor '%s' has ne[1] = "
                            "%" PRId64, g->path, tname, t->ne[1]);
    int from_key;
    qg_status st = ref_key_int(g, hp->arch, kname, (long)t->ne[1], &from_key,
                               err);
    if (st) return st;
    if (from_key != t->ne[1])
        return qg_error_set(err, QG_ERR_MODEL, "%s: %s.%s = %d but tensor "
                            "'%s' has %" PRId64 " rows", g->path, hp->arch,
                            kname, from_key, tname, t->ne[1]);
    hp->n_ff = from_key;
    return QG_OK;
}

qg_ref_model *qg_ref_model_load(const char *path, qg_error *err) {
    qg_ref_model *m = calloc(1, sizeof *m);
    if (!m) {
        qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    qg_status st;
    m->g = qg_gguf_open(path, err);
    if (!m->g) goto err;
    if ((st = ref_read_hparams(m, err))) goto err;

    qg_ref_hparams *hp = &m->hp;
    const qg_gguf_tensor *te = qg_gguf_find_tensor(m->g, "token_embd.weight");
    if (!te) {
        qg_error_set(err, QG_ERR_MODEL, "%s: missing tensor "
                     "'token_embd.weight'", path);
        goto err;
    }
    if (te->ne[1] < 1 || te->ne[1] > INT32_MAX) {
        qg_error_set(err, QG_ERR_MODEL, "%s: tensor 'token_embd.weight' has "
                     "%" PRId64 " rows", path, te->ne[1]);
        goto err;
    }
    hp->n_vocab = (int)te->ne[1];
    if ((st = ref_tensor(m->g, "token_embd.weight", 2, hp->n_embd,
                         hp->n_vocab, 1, false, &m->tok_embd, err)) ||
        (st = ref_tensor(m->g, "output_norm.weight", 1, hp->n_embd, 1, 1,
                         false, &m->output_norm, err)) ||
        (st = ref_tensor(m->g, "output.weight", 2, hp->n_embd, hp->n_vocab,
                         1, true, &m->output, err)))
        goto err;
    hp->tied_output = m->output == NULL;
    if (hp->tied_output) m->output = m->tok_embd;
    if ((st = ref_read_n_ff(m, err))) goto err;

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", path);
        goto err;
    }
    for (int il = 0; il < hp->n_layer; il++)
        if ((st = ref_load_layer(m, il, err))) goto err;
    return m;
err:
    qg_ref_model_free(m);
    return NULL;
}

void qg_ref_model_free(qg_ref_model *m) {
    if (!m) return;
    if (m->g) qg_gguf_close(m->g);
    free(m->layers);
    free(m);
}

const qg_ref_hparams *qg_ref_model_hparams(const qg_ref_model *m) {
    return &m->hp;
}

const qg_gguf *qg_ref_model_gguf(const qg_ref_model *m) { return m->g; }

/* ---- building blocks --------------------------------------------------- */

/* Row `row` of weight w (rows of ne[0] elements; a 3-D expert tensor's
 * expert e, row r is row e * ne[1] + r), dequantized into dst (ne[0]). */
static void ref_row(const qg_gguf_tensor *w, int64_t row, double *dst) {
    const size_t rb = qg_dtype_row_bytes(w->type, w->ne[0]);
    qg_dequant_row_f64(w->type, (const uint8_t *)w->data + (size_t)row * rb,
                       dst, w->ne[0]);
}

/*
 * y = W x for n_tok tokens, with W the n_out rows of w starting at row0
 * (each of n_in = w->ne[0] elements):
 *   y[t * n_out + r] = sum_i W[row0 + r][i] * x[t * n_in + i]
 * x: (n_in, n_tok), y: (n_out, n_tok); rowbuf: n_in doubles of scratch.
 * Each row is dequantized once for all tokens.
 */
static void ref_matmul(const qg_gguf_tensor *w, int64_t row0, int64_t n_out,
                       const double *x, int n_tok, double *y,
                       double *rowbuf) {
    const int64_t n_in = w->ne[0];
    for (int64_t r = 0; r < n_out; r++) {
        ref_row(w, row0 + r, rowbuf);
        for (int t = 0; t < n_tok; t++) {
            const double *xt = x + (size_t)t * n_in;
            double s = 0;
            for (int64_t i = 0; i < n_in; i++) s += rowbuf[i] * xt[i];
            y[(size_t)t * n_out + r] = s;
        }
    }
}

/* dst[i] = src[i] / sqrt(mean(src^2) + eps) * wt[i], i < n.  dst may be
 * src. */
static void ref_rmsnorm(const double *src, const double *wt, int64_t n,
                        double eps, double *dst) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += src[i] * src[i];
    const double inv = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++) dst[i] = src[i] * inv * wt[i];
}

/* NEOX rotary embedding of one head v (hd) at position pos, in place:
 * pairs (i, i + hd/2), angle pos * base^(-2i/hd). */
static void ref_rope_neox(double *v, int hd, int pos, double base) {
    const int half = hd / 2;
    for (int i = 0; i < half; i++) {
        const double ang = pos * pow(base, -2.0 * i / hd);
        const double c = cos(ang), s = sin(ang);
        const double x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x0 * s + x1 * c;
    }
}

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

/* Scratch for one forward pass; every buffer token-major. */
typedef struct ref_scratch {
    double *x;       /* (E, n) residual stream */
    double *h;       /* (E, n) normed input of the current sublayer */
    double *q;       /* (hd * n_head, n) */
    double *k;       /* (hd * n_head_kv, n) */
    double *v;       /* (hd * n_head_kv, n) */
    double *att;     /* (hd * n_head, n) attention output */
    double *y;       /* (E, n) sublayer output */
    double *ff_g;    /* (F, n) gate projection */
    double *ff_u;    /* (F, n) up projection */
    double *ff_xs;   /* (E, n) gathered inputs of one expert's tokens */
    double *ff_ys;   /* (E, n) outputs of one expert */
    double *score;   /* (n) attention scores of one query */
    double *row;     /* (max row length) dequantized weight row */
    double *wvec;    /* (max(E, hd)) a dequantized norm weight */
    double *probs;   /* (X) router probabilities of one token */
    double *rlogit;  /* (X, n) router logits */
    int32_t *sel;    /* (K, n) chosen experts */
    double *selw;    /* (K, n) their renormalized weights */
    int32_t *tok_of; /* (n) tokens routed to one expert */
    double *w_of;    /* (n) their weights */
} ref_scratch;

static void ref_scratch_free(ref_scratch *s) {
    free(s->x); free(s->h); free(s->q); free(s->k); free(s->v); free(s->att);
    free(s->y); free(s->ff_g); free(s->ff_u); free(s->ff_xs); free(s->ff_ys);
    free(s->score); free(s->row); free(s->wvec); free(s->probs); free(s->rlogit); free(s->sel);
    free(s->selw); free(s->tok_of); free(s->w_of);
}

static bool ref_scratch_alloc(const qg_ref_hparams *hp, int n,
                              ref_scratch *s) {
    memset(s, 0, sizeof *s);
    const size_t N = (size_t)n, E = (size_t)hp->n_embd;
    const size_t hd = (size_t)hp->head_dim, F = (size_t)hp->n_ff;
    const size_t qd = hd * (size_t)hp->n_head, kvd = hd * (size_t)hp->n_head_kv;
    size_t max_row = QG_MAX(QG_MAX(E, F), qd);
    size_t K = hp->moe ? (size_t)hp->n_expert_used : 1;
    size_t X = hp->moe ? (size_t)hp->n_expert : 1;
    s->x = malloc(E * N * sizeof(double));
    s->h = malloc(E * N * sizeof(double));
    s->q = malloc(qd * N * sizeof(double));
    s->k = malloc(kvd * N * sizeof(double));
    s->v = malloc(kvd * N * sizeof(double));
    s->att = malloc(qd * N * sizeof(double));
    s->y = malloc(E * N * sizeof(double));
    s->ff_g = malloc(F * N * sizeof(double));
    s->ff_u = malloc(F * N * sizeof(double));
    s->ff_xs = malloc(E * N * sizeof(double));
    s->ff_ys = malloc(E * N * sizeof(double));
    s->score = malloc(N * sizeof(double));
    s->row = malloc(max_row * sizeof(double));
    s->wvec = malloc(QG_MAX(E, hd) * sizeof(double));
    s->probs = malloc(X * sizeof(double));
    s->rlogit = malloc(X * N * sizeof(double));
    s->sel = malloc(K * N * sizeof(int32_t));
    s->selw = malloc(K * N * sizeof(double));
    s->tok_of = malloc(N * sizeof(int32_t));
    s->w_of = malloc(N * sizeof(double));
    if (!s->x || !s->h || !s->q || !s->k || !s->v || !s->att || !s->y ||
        !s->ff_g || !s->ff_u || !s->ff_xs || !s->ff_ys || !s->score ||
        !s->row || !s->wvec || !s->probs || !s->rlogit || !s->sel || !s->selw ||
        !s->tok_of || !s->w_of) {
        ref_scratch_free(s);
        return false;
    }
    return true;
}

/* h[t] = rmsnorm(x[t]) * norm for all n tokens; x, h: (E, n). */
static void ref_norm_all(const qg_gguf_tensor *norm, const double *x, int n,
                         int64_t E, double eps, double *wbuf, double *h) {
    ref_row(norm, 0, wbuf);
    for (int t = 0; t < n; t++)
        ref_rmsnorm(x + (size_t)t * E, wbuf, E, eps, h + (size_t)t * E);
}

/* ---- the forward pass -------------------------------------------------- */

/* Self-attention sublayer of block L: reads s->h (E, n), writes s->y
 * (E, n) = Wo attention(...). */
static void ref_attention(const qg_ref_hparams *hp, const ref_layer *L,
                          int n, ref_scratch *s) {
    const int hd = hp->head_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int group = nh / nkv;
    const size_t qd = (size_t)hd * nh, kvd = (size_t)hd * nkv;

    ref_matmul(L->wq, 0, (int64_t)qd, s->h, n, s->q, s->row);
    ref_matmul(L->wk, 0, (int64_t)kvd, s->h, n, s->k, s->row);
    ref_matmul(L->wv, 0, (int64_t)kvd, s->h, n, s->v, s->row);

    /* per-head q/k RMSNorm, then RoPE at position t */
    ref_row(L->q_norm, 0, s->wvec);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < nh; j++) {
            double *qh = s->q + (size_t)t * qd + (size_t)j * hd;
            ref_rmsnorm(qh, s->wvec, hd, hp->rms_eps, qh);
            ref_rope_neox(qh, hd, t, hp->rope_base);
        }
    ref_row(L->k_norm, 0, s->wvec);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < nkv; j++) {
            double *kh = s->k + (size_t)t * kvd + (size_t)j * hd;
            ref_rmsnorm(kh, s->wvec, hd, hp->rms_eps, kh);
            ref_rope_neox(kh, hd, t, hp->rope_base);
        }

    /* causal softmax(q k^T / sqrt(hd)) v per query head */
    const double scale = 1.0 / sqrt((double)hd);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < nh; j++) {
            const double *qh = s->q + (size_t)t * qd + (size_t)j * hd;
            const int jk = j / group;
            double mx = -INFINITY;
            for (int u = 0; u <= t; u++) {
                const double *kh = s->k + (size_t)u * kvd + (size_t)jk * hd;
                double d = 0;
                for (int i = 0; i < hd; i++) d += qh[i] * kh[i];
                s->score[u] = d * scale;
                if (s->score[u] > mx) mx = s->score[u];
            }
            double sum = 0;
            for (int u = 0; u <= t; u++) {
                s->score[u] = exp(s->score[u] - mx);
                sum += s->score[u];
            }
            double *o = s->att + (size_t)t * qd + (size_t)j * hd;
            for (int i = 0; i < hd; i++) o[i] = 0;
            for (int u = 0; u <= t; u++) {
                const double p = s->score[u] / sum;
                const double *vh = s->v + (size_t)u * kvd + (size_t)jk * hd;
                for (int i = 0; i < hd; i++) o[i] += p * vh[i];
            }
        }
    ref_matmul(L->wo, 0, hp->n_embd, s->att, n, s->y, s->row);
}

/* SwiGLU over n_sel tokens with the F rows starting at row0 of gate/up and
 * expert `e` of down (e = 0 for the dense FFN): ys = down(silu(gate xs) *
 * up xs).  xs: (E, n_sel), ys: (E, n_sel). */
static void ref_swiglu(const qg_ref_hparams *hp, const qg_gguf_tensor *gate,
                       const qg_gguf_tensor *up, const qg_gguf_tensor *down,
                       int e, const double *xs, int n_sel, double *ys,
                       ref_scratch *s) {
    const int64_t F = hp->n_ff, E = hp->n_embd;
    ref_matmul(gate, (int64_t)e * F, F, xs, n_sel, s->ff_g, s->row);
    ref_matmul(up, (int64_t)e * F, F, xs, n_sel, s->ff_u, s->row);
    for (size_t i = 0; i < (size_t)F * n_sel; i++)
        s->ff_g[i] = ref_silu(s->ff_g[i]) * s->ff_u[i];
    ref_matmul(down, (int64_t)e * E, E, s->ff_g, n_sel, ys, s->row);
}

/* Router of one token: probs (X) = softmax(logit) -> top-K ids
 * (decreasing p, ties to the lower id) and renormalized weights; returns
 * the router-logit gap between the last chosen and the best unchosen
 * expert (+inf when K == X). */
static double ref_route(const double *logit, int X, int K, double *probs,
                        int32_t *sel, double *selw) {
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < X; e++) mx = logit[e] > mx ? logit[e] : mx;
    for (int e = 0; e < X; e++) {
        probs[e] = exp(logit[e] - mx);
        sum += probs[e];
    }
    for (int e = 0; e < X; e++) probs[e] /= sum;
    double wsum = 0;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < X; e++) {
            bool taken = false;
            for (int j = 0; j < k; j++) taken |= sel[j] == e;
            if (!taken && (best < 0 || probs[e] > probs[best])) best = e;
        }
        sel[k] = best;
        selw[k] = probs[best];
        wsum += probs[best];
    }
    for (int k = 0; k < K; k++) selw[k] /= wsum;
    double next = -INFINITY;
    for (int e = 0; e < X; e++) {
        bool taken = false;
        for (int j = 0; j < K; j++) taken |= sel[j] == e;
        if (!taken && logit[e] > next) next = logit[e];
    }
    return K == X ? INFINITY : logit[sel[K - 1]] - next;
}

/* MoE sublayer of block il: reads s->h (E, n), writes s->y (E, n) and the
 * routing outputs of *out. */
static void ref_moe(const qg_ref_hparams *hp, const ref_layer *L, int il,
                    int n, const qg_ref_eval_out *out, ref_scratch *s) {
    const int E = hp->n_embd, X = hp->n_expert, K = hp->n_expert_used;
    double *logit = s->rlogit; /* (X, n) */
    ref_matmul(L->gate_inp, 0, X, s->h, n, logit, s->row);
    for (int t = 0; t < n; t++) {
        int32_t *sel = s->sel + (size_t)t * K;
        double *selw = s->selw + (size_t)t * K;
        double margin = ref_route(logit + (size_t)t * X, X, K, s->probs, sel,
                                  selw);
        if (out->route_margin && margin < out->route_margin[t])
            out->route_margin[t] = margin;
        const size_t o = ((size_t)il * n + t) * K;
        for (int k = 0; k < K; k++) {
            if (out->experts) out->experts[o + k] = sel[k];
            if (out->expert_w) out->expert_w[o + k] = selw[k];
        }
    }

    memset(s->y, 0, (size_t)E * n * sizeof(double));
    for (int e = 0; e < X; e++) {
        int n_sel = 0;
        for (int t = 0; t < n; t++)
            for (int k = 0; k < K; k++)
                if (s->sel[(size_t)t * K + k] == e) {
                    s->tok_of[n_sel] = t;
                    s->w_of[n_sel] = s->selw[(size_t)t * K + k];
                    memcpy(s->ff_xs + (size_t)n_sel * E, s->h + (size_t)t * E,
                           (size_t)E * sizeof(double));
                    n_sel++;
                }
        if (n_sel == 0) continue;
        ref_swiglu(hp, L->gate_exps, L->up_exps, L->down_exps, e, s->ff_xs,
                   n_sel, s->ff_ys, s);
        for (int j = 0; j < n_sel; j++) {
            double *yt = s->y + (size_t)s->tok_of[j] * E;
            const double *ye = s->ff_ys + (size_t)j * E;
            for (int i = 0; i < E; i++) yt[i] += s->w_of[j] * ye[i];
        }
    }
}

qg_status qg_ref_model_eval_ex(qg_ref_model *m, const int32_t *tokens, int n,
                               const qg_ref_eval_out *out, qg_error *err) {
    const qg_ref_hparams *hp = &m->hp;
    if (n < 1)
        return qg_error_set(err, QG_ERR_ARG, "qg_ref_model_eval: n = %d", n);
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= hp->n_vocab)
            return qg_error_set(err, QG_ERR_RANGE, "%s: token %d at position"
                                " %d is outside [0, %d)", m->g->path,
                                tokens[t], t, hp->n_vocab);
    ref_scratch s;
    if (!ref_scratch_alloc(hp, n, &s))
        return qg_error_set(err, QG_ERR_NOMEM, "%s: reference activations "
                            "for %d tokens do not fit", m->g->path, n);
    const int64_t E = hp->n_embd;
    const size_t EN = (size_t)E * n;
    if (out->route_margin)
        for (int t = 0; t < n; t++) out->route_margin[t] = INFINITY;

    /* x = tok_embd[token] */
    for (int t = 0; t < n; t++) ref_row(m->tok_embd, tokens[t], s.x + t * E);

    for (int il = 0; il < hp->n_layer; il++) {
        const ref_layer *L = &m->layers[il];
        if (out->hidden)
            memcpy(out->hidden + (size_t)il * EN, s.x, EN * sizeof(double));
        /* x += attention(rmsnorm(x) * attn_norm) */
        ref_norm_all(L->attn_norm, s.x, n, E, hp->rms_eps, s.wvec, s.h);
        ref_attention(hp, L, n, &s);
        for (size_t i = 0; i < EN; i++) s.x[i] += s.y[i];
        /* x += ffn(rmsnorm(x) * ffn_norm) */
        ref_norm_all(L->ffn_norm, s.x, n, E, hp->rms_eps, s.wvec, s.h);
        if (hp->moe)
            ref_moe(hp, L, il, n, out, &s);
        else
            ref_swiglu(hp, L->ffn_gate, L->ffn_up, L->ffn_down, 0, s.h, n,
                       s.y, &s);
        for (size_t i = 0; i < EN; i++) s.x[i] += s.y[i];
    }
    if (out->hidden)
        memcpy(out->hidden + (size_t)hp->n_layer * EN, s.x,
               EN * sizeof(double));

    /* logits = output (rmsnorm(x) * output_norm) */
    if (out->logits) {
        ref_norm_all(m->output_norm, s.x, n, E, hp->rms_eps, s.wvec, s.h);
        ref_matmul(m->output, 0, hp->n_vocab, s.h, n, out->logits, s.row);
    }
    ref_scratch_free(&s);
    return QG_OK;
}

qg_status qg_ref_model_eval(qg_ref_model *m, const int32_t *tokens, int n,
                            double *logits, qg_error *err) {
    qg_ref_eval_out out = {.logits = logits};
    return qg_ref_model_eval_ex(m, tokens, n, &out, err);
}
