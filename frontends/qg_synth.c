/*
 * qg_synth.c - presets, llama.cpp's per-tensor type rules, the tensor plan
 * and the multi-threaded generate -> quantize -> write pipeline.
 *
 * ---------------------------------------------------------------------------
 * Per-tensor types (facts from llama.cpp: convert_hf_to_gguf.py /
 * conversion/base.py for the float files; src/llama-quant.cpp
 * tensor_allows_quantization, llama_tensor_get_type_impl and
 * tensor_type_fallback for the quantized ones).  E = preset n_expert,
 * L = n_layer, i = the tensor's layer, D = the ftype's default type
 * (llama_ftype_get_default_type: q8_0->Q8_0, q4_0->Q4_0, q4_k_m->Q4_K,
 * q5_k_m->Q5_K, q6_k->Q6_K), and
 *   use_more_bits(i, L) = i < L/8 || i >= 7*L/8 || (i - L/8) % 3 == 2.
 *
 *  tensor                    f32/f16/bf16     quantized ftypes
 *  ------------------------  ---------------  -------------------------------
 *  1-D tensors, *_norm       F32              F32 (n_dims < 2 / "_norm.weight"
 *                                             are never quantized)
 *  ffn_gate_inp (router)     F32 (forced)     F32 (never quantized)
 *  output.weight             base             Q8_0 if ne[0] % blck(D) != 0;
 *                                             else Q6_K unless D == Q8_0
 *  token_embd.weight         base             D (output.weight is always
 *                                             written, so embeddings are not
 *                                             tied and keep D)
 *  attn_v                    base             Q4_K_M, Q5_K_M: Q6_K if
 *                                             use_more_bits(i, L) (the attn_v
 *                                             counter is the layer: tensors are
 *                                             visited sorted by layer); then
 *                                             E == 8: Q8_0 for every ftype
 *  attn_k                    base             E == 8: Q8_0 for every ftype
 *  attn_output               base             E == 8 and Q4_K_M: Q5_K
 *  ffn_down(_exps)           base             Q4_K_M, Q5_K_M: Q6_K if
 *                                             use_more_bits(i, L)
 *  attn_q, ffn_gate(_exps),  base             D
 *  ffn_up(_exps)
 *
 *  Fallback (llama-quant tensor_type_fallback), applied last to the
 *  quantized types: if ne[0] % blck(type) != 0 then Q4_K->Q5_0, Q5_K->Q5_1,
 *  Q6_K->Q8_0, 32-blocks stay; if that still does not divide, F16.  (Every
 *  built-in preset has inner dims that are multiples of 256, so no fallback
 *  fires; Q5_0/Q5_1 would be rejected as unsupported.)
 *  The float files follow convert_hf_to_gguf: f32 -> F32, f16 -> F16,
 *  bf16 -> BF16 for every 2-D/3-D weight except the forced-F32 router.
 * ---------------------------------------------------------------------------
 */
#include "qg_synth.h"

#include "../ops/quant/qg_quant.h"
#include "qg_gguf.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Qwen3's padded vocabulary size (config.json vocab_size). */
#define QWEN3_N_VOCAB 151936

/* ---- presets ---------------------------------------------------------- */

static const qg_synth_preset PRESETS[] = {
    {"30b-a3b", "qwen3moe", "Qwen3-30B-A3B shape (48 layers, 128 experts, 8 used)",
     48, 2048, 32, 4, 128, 6144, 128, 8, 768, 40960, 1e6f, 1e-6f, QWEN3_N_VOCAB, true},
    {"235b-a22b", "qwen3moe", "Qwen3-235B-A22B shape (94 layers, 128 experts, 8 used)",
     94, 4096, 64, 4, 128, 12288, 128, 8, 1536, 40960, 1e6f, 1e-6f, QWEN3_N_VOCAB, true},
    {"tiny", "qwen3moe", "2 layers, n_embd 256, 8 experts (2 used)",
     2, 256, 4, 2, 64, 512, 8, 2, 256, 4096, 1e6f, 1e-6f, 0, false},
    {"tiny-dense", "qwen3", "dense: 2 layers, n_embd 256, ff 512",
     2, 256, 4, 2, 64, 512, 0, 0, 0, 4096, 1e6f, 1e-6f, 0, false},
    {"small", "qwen3moe", "4 layers, n_embd 512, 16 experts (4 used)",
     4, 512, 8, 4, 64, 1024, 16, 4, 256, 4096, 1e6f, 1e-6f, 0, false},
    {"small-dense", "qwen3", "dense: 3 layers, n_embd 512, head_dim 128 (q dim 1024)",
     3, 512, 8, 2, 128, 768, 0, 0, 0, 4096, 1e6f, 1e-6f, 0, false},
    {"gqa1", "qwen3moe", "2 layers, 2 heads = 2 kv heads, head_dim 128, 4 experts (all used)",
     2, 256, 2, 2, 128, 1024, 4, 4, 256, 4096, 1e6f, 1e-6f, 0, false},
    {"medium", "qwen3moe", "8 layers, n_embd 1024, 32 experts (4 used): a benchmark size",
     8, 1024, 16, 4, 64, 2048, 32, 4, 512, 8192, 1e6f, 1e-6f, 0, false},
};

static const char *const PRESET_NAMES[] = {"30b-a3b", "tiny", "tiny-dense", "small",
                                           "small-dense", "gqa1", "medium", "235b-a22b",
                                           NULL};
_Static_assert(QG_ARRAY_LEN(PRESET_NAMES) == QG_ARRAY_LEN(PRESETS) + 1, "preset names");

const char *const *qg_synth_preset_names(void) { return PRESET_NAMES; }

const qg_synth_preset *qg_synth_preset_find(const char *name) {
    for (size_t i = 0; name && i < QG_ARRAY_LEN(PRESETS); i++)
        if (strcmp(PRESETS[i].name, name) == 0) return &PRESETS[i];
    return NULL;
}

/* ---- file types ------------------------------------------------------------ */

static const qg_synth_ftype FTYPES[] = {
    {"f32", 0, QG_F32},     {"f16", 1, QG_F16},     {"bf16", 32, QG_BF16},
    {"q8_0", 7, QG_Q8_0},   {"q4_0", 2, QG_Q4_0},   {"q4_k_m", 15, QG_Q4_K},
    {"q5_k_m", 17, QG_Q5_K}, {"q6_k", 18, QG_Q6_K},
};
static const char *const FTYPE_NAMES[] = {"f32", "f16", "bf16", "q8_0", "q4_0",
                                          "q4_k_m", "q5_k_m", "q6_k", NULL};
_Static_assert(QG_ARRAY_LEN(FTYPE_NAMES) == QG_ARRAY_LEN(FTYPES) + 1, "ftype names");

/* llama_ftype values used by the rules */
enum { FT_Q4_K_M = 15, FT_Q5_K_M = 17 };
/* GGML type ids of fallbacks we cannot write */
enum { GGML_TYPE_Q5_0 = 6, GGML_TYPE_Q5_1 = 7 };

const char *const *qg_synth_ftype_names(void) { return FTYPE_NAMES; }

const qg_synth_ftype *qg_synth_ftype_find(const char *name) {
    for (size_t i = 0; name && i < QG_ARRAY_LEN(FTYPES); i++)
        if (strcasecmp(FTYPES[i].name, name) == 0) return &FTYPES[i];
    return NULL;
}

/* ---- type rules -------------------------------------------------------- */

static bool use_more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static bool has(const char *name, const char *part) { return strstr(name, part) != NULL; }

qg_dtype qg_synth_tensor_type(const qg_synth_preset *p, const qg_synth_ftype *ft,
                              const char *name, int n_dims, const int64_t ne[4]) {
    /* never quantized; F32 in the converted source as well */
    if (n_dims < 2 || has(name, "_norm.weight") || has(name, "ffn_gate_inp.weight"))
        return QG_F32;
    qg_dtype base = ft->base;
    if (!qg_dtype_get((uint32_t)base)->quantized) return base;

    int layer = -1;
    sscanf(name, "blk.%d.", &layer);
    const int n_layer = p->n_layer;
    const bool e8 = p->n_expert == 8;
    const bool km = ft->llama_ftype == FT_Q4_K_M || ft->llama_ftype == FT_Q5_K_M;
    qg_dtype t = base;
    if (strcmp(name, "output.weight") == 0) {
        if (ne[0] % qg_dtype_block_size(base) != 0) t = QG_Q8_0;
        else if (base != QG_Q8_0) t = QG_Q6_K;
    } else if (strcmp(name, "token_embd.weight") == 0) {
        t = base;
    } else if (has(name, "attn_v.weight")) {
        if (km && use_more_bits(layer, n_layer)) t = QG_Q6_K;
        if (e8) t = QG_Q8_0;
    } else if (has(name, "attn_k.weight")) {
        if (e8) t = QG_Q8_0;
    } else if (has(name, "attn_q.weight")) {
        t = base;
    } else if (has(name, "attn_output.weight")) {
        if (e8 && ft->llama_ftype == FT_Q4_K_M) t = QG_Q5_K;
    } else if (has(name, "ffn_up") || has(name, "ffn_gate")) {
        t = base;
    } else if (has(name, "ffn_down")) {
        if (km && use_more_bits(layer, n_layer)) t = QG_Q6_K;
    }
    /* shapes the block size does not divide */
    if (ne[0] % qg_dtype_block_size(t) != 0) {
        switch (t) {
        case QG_Q4_K: t = (qg_dtype)GGML_TYPE_Q5_0; break;
        case QG_Q5_K: t = (qg_dtype)GGML_TYPE_Q5_1; break;
        case QG_Q6_K: t = QG_Q8_0; break;
        default: break;
        }
        if (ne[0] % 32 != 0) t = QG_F16;
    }
    return t;
}

/* ---- the plan --------------------------------------------------------------- */

typedef struct plan_builder {
    qg_synth_plan *plan;
    int cap;
} plan_builder;

/* Append one tensor (type by the rules, distribution by its role). */
static void plan_add(plan_builder *b, const char *name, int n_dims, int64_t ne0, int64_t ne1,
                     int64_t ne2, float mean, float std) {
    qg_synth_plan *pl = b->plan;
    QG_ASSERT(pl->n_tensors < b->cap);
    qg_synth_tensor *t = &pl->tensors[pl->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->ne[3] = 1;
    t->type = qg_synth_tensor_type(pl->preset, pl->ftype, name, n_dims, t->ne);
    t->mean = mean;
    t->std = std;
}

qg_status qg_synth_plan_new(const qg_synth_preset *p, const char *ftype, int n_vocab,
                            qg_synth_plan **out, qg_error *err) {
    *out = NULL;
    const qg_synth_ftype *ft = qg_synth_ftype_find(ftype);
    if (!ft) return qg_error_set(err, QG_ERR_ARG, "unknown ftype '%s'", ftype ? ftype : "");
    if (n_vocab <= 0) return qg_error_set(err, QG_ERR_ARG, "vocabulary size %d", n_vocab);
    qg_synth_plan *pl = calloc(1, sizeof *pl);
    const int per_layer = 12;
    int cap = 3 + per_layer * p->n_layer;
    if (pl) pl->tensors = calloc((size_t)cap, sizeof *pl->tensors);
    if (!pl || !pl->tensors) {
        free(pl);
        return qg_error_set(err, QG_ERR_NOMEM, "out of memory for the tensor plan");
    }
    pl->preset = p;
    pl->ftype = ft;
    pl->n_vocab = n_vocab;
    plan_builder b = {pl, cap};
    const int64_t E = p->n_embd, V = n_vocab, hd = p->head_dim;
    const int64_t q_dim = hd * p->n_head, kv_dim = hd * p->n_head_kv;
    const float fan_e = 1.0f / sqrtf((float)E);
    char nm[64];

    plan_add(&b, "token_embd.weight", 2, E, V, 1, 0.0f, 1.0f);
    for (int i = 0; i < p->n_layer; i++) {
#define NAME(s) (snprintf(nm, sizeof nm, "blk.%d.%s", i, s), nm)
        plan_add(&b, NAME("attn_norm.weight"), 1, E, 1, 1, 1.0f, 0.1f);
        plan_add(&b, NAME("attn_q.weight"), 2, E, q_dim, 1, 0.0f, fan_e);
        plan_add(&b, NAME("attn_k.weight"), 2, E, kv_dim, 1, 0.0f, fan_e);
        plan_add(&b, NAME("attn_v.weight"), 2, E, kv_dim, 1, 0.0f, fan_e);
        plan_add(&b, NAME("attn_output.weight"), 2, q_dim, E, 1, 0.0f, 1.0f / sqrtf((float)q_dim));
        plan_add(&b, NAME("attn_q_norm.weight"), 1, hd, 1, 1, 1.0f, 0.1f);
        plan_add(&b, NAME("attn_k_norm.weight"), 1, hd, 1, 1, 1.0f, 0.1f);
        plan_add(&b, NAME("ffn_norm.weight"), 1, E, 1, 1, 1.0f, 0.1f);
        if (p->n_expert > 0) {
            const int64_t F = p->n_ff_exp, X = p->n_expert;
            plan_add(&b, NAME("ffn_gate_inp.weight"), 2, E, X, 1, 0.0f, 3.0f * fan_e);
            plan_add(&b, NAME("ffn_gate_exps.weight"), 3, E, F, X, 0.0f, fan_e);
            plan_add(&b, NAME("ffn_up_exps.weight"), 3, E, F, X, 0.0f, fan_e);
            plan_add(&b, NAME("ffn_down_exps.weight"), 3, F, E, X, 0.0f, 1.0f / sqrtf((float)F));
        } else {
            const int64_t F = p->n_ff;
            plan_add(&b, NAME("ffn_gate.weight"), 2, E, F, 1, 0.0f, fan_e);
            plan_add(&b, NAME("ffn_up.weight"), 2, E, F, 1, 0.0f, fan_e);
            plan_add(&b, NAME("ffn_down.weight"), 2, F, E, 1, 0.0f, 1.0f / sqrtf((float)F));
        }
#undef NAME
    }
    plan_add(&b, "output_norm.weight", 1, E, 1, 1, 1.0f, 0.1f);
    plan_add(&b, "output.weight", 2, E, V, 1, 0.0f, 5.0f * fan_e);
    pl->tensors[pl->n_tensors - 1].damp_unused_rows = true;

    for (int i = 0; i < pl->n_tensors; i++) {
        qg_synth_tensor *t = &pl->tensors[i];
        const qg_dtype_info *info = qg_dtype_get((uint32_t)t->type);
        if (!info || !info->supported) {
            qg_status st = qg_error_set(err, QG_ERR_UNSUPPORTED,
                                        "preset '%s', ftype %s: tensor '%s' would be %s "
                                        "(llama.cpp's fallback), which cannot be written",
                                        p->name, ft->name, t->name, info ? info->name : "?");
            qg_synth_plan_free(pl);
            return st;
        }
        t->nbytes = qg_dtype_row_bytes(t->type, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2]);
        pl->data_bytes += qg_align_up(t->nbytes, 32);
    }
    *out = pl;
    return QG_OK;
}

void qg_synth_plan_free(qg_synth_plan *plan) {
    if (!plan) return;
    free(plan->tensors);
    free(plan);
}

/* ---- the generator ---------------------------------------------------------- */

#define GOLDEN 0x9e3779b97f4a7c15ull

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The generator key of one tensor: depends on the seed and the name only. */
static uint64_t tensor_key(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) {
        h ^= *c;
        h *= 0x100000001b3ull;
    }
    return mix64(seed ^ mix64(h + GOLDEN));
}

/*
 * dst[j] = value of element i0 + j, j < n: splitmix64 at counter i0+j+1,
 * its four 16-bit lanes summed and centred (Irwin-Hall(4)), scaled to
 * variance std^2 and shifted by mean.  Integer math, then one float
 * multiply and one add: the same bits on every machine.
 */
static void gen_values(uint64_t key, float mean, float std, int64_t i0, int64_t n, float *dst) {
    const float scale = (float)((double)std * 1.7320508075688772 / 65536.0);
    uint64_t ctr = key + (uint64_t)(i0 + 1) * GOLDEN;
    for (int64_t j = 0; j < n; j++, ctr += GOLDEN) {
        uint64_t u = mix64(ctr);
        int32_t s = (int32_t)(u & 0xffff) + (int32_t)((u >> 16) & 0xffff) +
                    (int32_t)((u >> 32) & 0xffff) + (int32_t)(u >> 48) - 131070;
        float x = (float)s * scale;
        dst[j] = x + mean;
    }
}

/* ---- the pipeline ------------------------------------------------------------ */

/*
 * Workers generate and convert chunks of rows of up to NSLOTS tensors ahead
 * of the writer (the calling thread), which writes tensor t as soon as all
 * its rows are done, then frees its slot.  Chunks are claimed in file order,
 * so memory is bounded by the NSLOTS largest consecutive tensors.
 */
#define NSLOTS 2
#define CHUNK_ELEMS ((int64_t)1 << 18)

typedef struct slot {
    uint8_t *buf;       /* (nbytes) the tensor's data */
    int64_t rows_done;
} slot;

typedef struct pipeline {
    const qg_synth_plan *plan;
    uint64_t seed;
    const int32_t *token_types; /* (n_vocab) for damp_unused_rows */
    pthread_mutex_t mu;
    pthread_cond_t cv_space; /* a slot was freed */
    pthread_cond_t cv_done;  /* a tensor's rows are all done */
    int t_claim;             /* tensor being handed out */
    int64_t row_claim;       /* its next row */
    int t_written;           /* tensors written so far */
    slot slots[NSLOTS];
    bool failed;             /* out of memory: everyone stops */
} pipeline;

static int64_t tensor_rows(const qg_synth_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }

/* Store one row of n floats in format `type` at dst. */
static void convert_row(qg_dtype type, const float *src, uint8_t *dst, int64_t n) {
    if (type == QG_F32) {
        memcpy(dst, src, (size_t)n * sizeof *src);
    } else if (type == QG_F16 || type == QG_BF16) {
        uint16_t h[256];
        for (int64_t j = 0; j < n; j += 256) {
            int64_t m = QG_MIN(256, n - j);
            for (int64_t k = 0; k < m; k++)
                h[k] = type == QG_F16 ? qg_f32_to_f16(src[j + k]) : qg_f32_to_bf16(src[j + k]);
            memcpy(dst + 2 * j, h, (size_t)m * 2);
        }
    } else {
        qg_quantize_row(type, src, dst, n);
    }
}

/*
 * Direct codes, for the big presets (30b-a3b, 235b-a22b) in quantized
 * formats, where quantizing 30 billion floats would take many CPU-minutes:
 * each block copies its scale bytes from one of QG_SYNTH_TEMPLATES template
 * blocks (Gaussian values of the tensor's mean/std, quantized once per
 * tensor by qg_quantize_row) and draws its code bytes (the quants)
 * uniformly from the counter-based generator.  Values then spread evenly
 * over each template sub-block's [min, max], about 1.4x the target std;
 * the file stays deterministic and numerically sane, and writes at disk
 * speed.  Byte ranges are GGML's block layouts.
 */
#define QG_SYNTH_TEMPLATES 8

typedef struct code_layout {
    int hdr0, hdr1;   /* scale/header bytes [hdr0, hdr1) copied from a template */
    int code0, code1; /* code bytes [code0, code1) drawn at random */
} code_layout;

/* The byte ranges of one block; false for formats without direct codes. */
static bool direct_layout(qg_dtype type, code_layout *l) {
    switch (type) {
    case QG_Q4_0: *l = (code_layout){0, 2, 2, 18}; return true;    /* d | qs[16]        */
    case QG_Q8_0: *l = (code_layout){0, 2, 2, 34}; return true;    /* d | qs[32]        */
    case QG_Q4_K: *l = (code_layout){0, 16, 16, 144}; return true; /* d dmin sc[12] | qs */
    case QG_Q5_K: *l = (code_layout){0, 16, 16, 176}; return true; /* ... | qh[32] qs   */
    case QG_Q6_K: *l = (code_layout){192, 210, 0, 192}; return true; /* ql qh | sc[16] d */
    default: return false;
    }
}

/* Per-worker cache of one tensor's template blocks. */
typedef struct direct_cache {
    const qg_synth_tensor *t;
    uint8_t tmpl[QG_SYNTH_TEMPLATES][256]; /* one block each (<= 210 bytes) */
} direct_cache;

static void direct_prepare(direct_cache *c, const qg_synth_tensor *t, uint64_t key, float *scratch) {
    if (c->t == t) return;
    const int bs = qg_dtype_block_size(t->type);
    for (int k = 0; k < QG_SYNTH_TEMPLATES; k++) {
        /* template k: values from a counter range no real element uses */
        gen_values(key ^ 0x7E3A1A7Eull, t->mean, t->std, (int64_t)k * bs, bs, scratch);
        qg_quantize_row(t->type, scratch, c->tmpl[k], bs);
    }
    c->t = t;
}

/* Row r of t in direct codes. */
static void direct_row(const direct_cache *c, const qg_synth_tensor *t, uint64_t key, int64_t r,
                       uint8_t *out) {
    code_layout l;
    QG_ASSERT(direct_layout(t->type, &l));
    const int bs = qg_dtype_block_size(t->type);
    const size_t bytes = qg_dtype_row_bytes(t->type, bs);
    const int64_t nb = t->ne[0] / bs;
    for (int64_t b = 0; b < nb; b++, out += bytes) {
        uint64_t ctr = key + (uint64_t)(r * nb + b + 1) * GOLDEN * 3;
        const uint8_t *tm = c->tmpl[mix64(ctr) % QG_SYNTH_TEMPLATES];
        memcpy(out + l.hdr0, tm + l.hdr0, (size_t)(l.hdr1 - l.hdr0));
        for (int i = l.code0; i < l.code1; i += 8) {
            uint64_t u = mix64(ctr += GOLDEN);
            memcpy(out + i, &u, (size_t)QG_MIN(8, l.code1 - i));
        }
    }
}

/* Generate rows [r0, r1) of tensor t into dst (the tensor's buffer),
 * using scratch of CHUNK_ELEMS floats (more if one row is longer). */
static void compute_rows(const pipeline *pp, const qg_synth_tensor *t, int64_t r0, int64_t r1,
                         uint8_t *dst, float *scratch, direct_cache *dc) {
    const int64_t ne0 = t->ne[0];
    const size_t row_bytes = qg_dtype_row_bytes(t->type, ne0);
    const uint64_t key = tensor_key(pp->seed, t->name);
    uint8_t *out = dst + (size_t)r0 * row_bytes;
    code_layout l;
    if (pp->plan->preset->big && direct_layout(t->type, &l)) {
        direct_prepare(dc, t, key, scratch);
        for (int64_t r = r0; r < r1; r++, out += row_bytes) {
            if (t->damp_unused_rows && pp->token_types[r] == QG_SYNTH_TOKEN_UNUSED) {
                gen_values(key, t->mean, t->std / 64.0f, r * ne0, ne0, scratch);
                convert_row(t->type, scratch, out, ne0);
            } else {
                direct_row(dc, t, key, r, out);
            }
        }
        return;
    }
    if (t->damp_unused_rows) {
        /* row by row: a row's std depends on its token's type */
        for (int64_t r = r0; r < r1; r++, out += row_bytes) {
            float std = pp->token_types[r] == QG_SYNTH_TOKEN_UNUSED ? t->std / 64.0f : t->std;
            gen_values(key, t->mean, std, r * ne0, ne0, scratch);
            convert_row(t->type, scratch, out, ne0);
        }
        return;
    }
    if (t->type == QG_F32) {
        gen_values(key, t->mean, t->std, r0 * ne0, (r1 - r0) * ne0, (float *)(void *)out);
        return;
    }
    for (int64_t r = r0; r < r1; r++, out += row_bytes) {
        gen_values(key, t->mean, t->std, r * ne0, ne0, scratch);
        convert_row(t->type, scratch, out, ne0);
    }
}

static void *worker_main(void *arg) {
    pipeline *pp = arg;
    const qg_synth_plan *pl = pp->plan;
    int64_t max_ne0 = 0;
    for (int i = 0; i < pl->n_tensors; i++) max_ne0 = QG_MAX(max_ne0, pl->tensors[i].ne[0]);
    float *scratch = malloc((size_t)QG_MAX(max_ne0, 256) * sizeof *scratch);
    direct_cache *dc = calloc(1, sizeof *dc);
    pthread_mutex_lock(&pp->mu);
    if (!scratch || !dc) pp->failed = true;
    for (;;) {
        if (pp->failed || pp->t_claim >= pl->n_tensors) break;
        if (pp->t_claim >= pp->t_written + NSLOTS) {
            pthread_cond_wait(&pp->cv_space, &pp->mu);
            continue;
        }
        const int ti = pp->t_claim;
        const qg_synth_tensor *t = &pl->tensors[ti];
        slot *s = &pp->slots[ti % NSLOTS];
        if (pp->row_claim == 0) {
            QG_ASSERT(s->buf == NULL);
            s->buf = malloc(t->nbytes ? t->nbytes : 1);
            s->rows_done = 0;
            if (!s->buf) {
                pp->failed = true;
                break;
            }
        }
        const int64_t rows = tensor_rows(t);
        const int64_t chunk = QG_MAX(1, CHUNK_ELEMS / t->ne[0]);
        const int64_t r0 = pp->row_claim, r1 = QG_MIN(rows, r0 + chunk);
        pp->row_claim = r1;
        if (r1 == rows) {
            pp->t_claim++;
            pp->row_claim = 0;
        }
        uint8_t *buf = s->buf;
        pthread_mutex_unlock(&pp->mu);
        compute_rows(pp, t, r0, r1, buf, scratch, dc);
        pthread_mutex_lock(&pp->mu);
        s->rows_done += r1 - r0;
        if (s->rows_done == rows) pthread_cond_broadcast(&pp->cv_done);
    }
    pthread_cond_broadcast(&pp->cv_done);
    pthread_cond_broadcast(&pp->cv_space);
    pthread_mutex_unlock(&pp->mu);
    free(scratch);
    free(dc);
    return NULL;
}

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)QG_MIN(n, 256) : 1;
}

/* Print the progress line (at most once a second, and a final one). */
static void progress_line(uint64_t done, uint64_t total, uint64_t t0, uint64_t *last, bool final) {
    uint64_t now = qg_time_ns();
    if (!final && now - *last < 1000000000ull) return;
    *last = now;
    double s = (double)(now - t0) / 1e9;
    fprintf(stderr, "\rsynth: %.2f / %.2f GiB (%3.0f%%)  %.0f MB/s  %.0f s%s",
            (double)done / (1u << 30), (double)total / (1u << 30),
            total ? 100.0 * (double)done / (double)total : 100.0,
            s > 0 ? (double)done / s / 1e6 : 0.0, s, final ? "\n" : "");
    fflush(stderr);
}

/* Run the pipeline: workers compute, this thread writes.  Declares nothing:
 * the writer must have begun. */
static qg_status run_pipeline(const qg_synth_plan *pl, uint64_t seed,
                              const int32_t *token_types, int n_threads, qg_gguf_writer *w,
                              bool progress, qg_error *err) {
    pipeline pp = {.plan = pl, .seed = seed, .token_types = token_types};
    pthread_mutex_init(&pp.mu, NULL);
    pthread_cond_init(&pp.cv_space, NULL);
    pthread_cond_init(&pp.cv_done, NULL);
    pthread_t *th = calloc((size_t)n_threads, sizeof *th);
    int started = 0;
    qg_status st = QG_OK;
    if (!th) {
        st = qg_error_set(err, QG_ERR_NOMEM, "out of memory for %d threads", n_threads);
        goto out;
    }
    for (; started < n_threads; started++) {
        if (pthread_create(&th[started], NULL, worker_main, &pp) != 0) break;
    }
    if (started == 0) {
        st = qg_error_set(err, QG_ERR_NOMEM, "cannot create worker threads");
        goto out;
    }
    uint64_t t0 = qg_time_ns(), last = t0, done = 0;
    bool printed = false;
    progress = progress && pl->data_bytes >= ((uint64_t)256 << 20);
    for (int ti = 0; ti < pl->n_tensors; ti++) {
        const qg_synth_tensor *t = &pl->tensors[ti];
        slot *s = &pp.slots[ti % NSLOTS];
        pthread_mutex_lock(&pp.mu);
        while (!pp.failed && !(pp.t_claim > ti && s->rows_done == tensor_rows(t)))
            pthread_cond_wait(&pp.cv_done, &pp.mu);
        bool failed = pp.failed;
        pthread_mutex_unlock(&pp.mu);
        if (failed) {
            st = qg_error_set(err, QG_ERR_NOMEM, "out of memory generating tensor '%s' "
                              "(%llu bytes)", t->name, (unsigned long long)t->nbytes);
            break;
        }
        st = qg_gguf_writer_write_data(w, ti, s->buf, t->nbytes, err);
        pthread_mutex_lock(&pp.mu);
        free(s->buf);
        s->buf = NULL;
        s->rows_done = 0;
        pp.t_written++;
        if (st != QG_OK) pp.failed = true;
        pthread_cond_broadcast(&pp.cv_space);
        pthread_mutex_unlock(&pp.mu);
        if (st != QG_OK) break;
        done += qg_align_up(t->nbytes, 32);
        if (progress) {
            uint64_t before = last;
            progress_line(done, pl->data_bytes, t0, &last, false);
            printed |= last != before;
        }
    }
    if (printed) progress_line(done, pl->data_bytes, t0, &last, true);
out:
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NSLOTS; i++) free(pp.slots[i].buf);
    free(th);
    pthread_cond_destroy(&pp.cv_done);
    pthread_cond_destroy(&pp.cv_space);
    pthread_mutex_destroy(&pp.mu);
    return st;
}

/* ---- writing ------------------------------------------------------------------ */

void qg_synth_opts_init(qg_synth_opts *o) {
    memset(o, 0, sizeof *o);
    o->preset = "tiny";
    o->ftype = "q8_0";
    o->vocab_mode = QG_SYNTH_VOCAB_AUTO;
}

qg_status qg_synth_vocab_for(const qg_synth_preset *p, const qg_synth_opts *o,
                             qg_synth_vocab *v, qg_error *err) {
    memset(v, 0, sizeof *v);
    char path[1024];
    bool found = qg_synth_find_tokenizer(o->tokenizer_json, path, sizeof path);
    if (o->tokenizer_json && !found)
        return qg_error_set(err, QG_ERR_IO, "%s: tokenizer.json not found or unreadable",
                            o->tokenizer_json);
    qg_synth_vocab_mode mode = o->vocab_mode;
    if (mode == QG_SYNTH_VOCAB_AUTO)
        mode = p->big && found ? QG_SYNTH_VOCAB_REAL : QG_SYNTH_VOCAB_BYTES;
    if (mode == QG_SYNTH_VOCAB_REAL) {
        if (!found)
            return qg_error_set(err, QG_ERR_IO, "--vocab real: no tokenizer.json (give "
                                "--tokenizer PATH or set QG_TOKENIZER_JSON)");
        return qg_synth_vocab_load_real(path, p->n_vocab ? (uint32_t)p->n_vocab : QWEN3_N_VOCAB,
                                        v, err);
    }
    if (mode != QG_SYNTH_VOCAB_BYTES)
        return qg_error_set(err, QG_ERR_ARG, "unknown vocabulary mode %d", (int)mode);
    return qg_synth_vocab_make_bytes((uint32_t)p->n_vocab, v, err);
}

/* Declare every metadata key of the model. */
static void set_metadata(qg_gguf_writer *w, const qg_synth_plan *pl, const qg_synth_vocab *v,
                         uint64_t seed) {
    const qg_synth_preset *p = pl->preset;
    char key[128], name[160];
#define K(suffix) (snprintf(key, sizeof key, "%s.%s", p->arch, suffix), key)
    qg_gguf_writer_set_str(w, "general.architecture", p->arch);
    qg_gguf_writer_set_str(w, "general.type", "model");
    snprintf(name, sizeof name, "qmoe-graph synth %s %s seed %llu", p->name, pl->ftype->name,
             (unsigned long long)seed);
    qg_gguf_writer_set_str(w, "general.name", name);
    qg_gguf_writer_set_u32(w, "general.file_type", pl->ftype->llama_ftype);
    qg_gguf_writer_set_u32(w, "general.quantization_version", 2);
    qg_gguf_writer_set_u32(w, "general.alignment", 32);
    qg_gguf_writer_set_u32(w, K("block_count"), (uint32_t)p->n_layer);
    qg_gguf_writer_set_u32(w, K("context_length"), (uint32_t)p->n_ctx);
    qg_gguf_writer_set_u32(w, K("embedding_length"), (uint32_t)p->n_embd);
    qg_gguf_writer_set_u32(w, K("feed_forward_length"), (uint32_t)p->n_ff);
    qg_gguf_writer_set_u32(w, K("attention.head_count"), (uint32_t)p->n_head);
    qg_gguf_writer_set_u32(w, K("attention.head_count_kv"), (uint32_t)p->n_head_kv);
    qg_gguf_writer_set_u32(w, K("attention.key_length"), (uint32_t)p->head_dim);
    qg_gguf_writer_set_u32(w, K("attention.value_length"), (uint32_t)p->head_dim);
    qg_gguf_writer_set_f32(w, K("attention.layer_norm_rms_epsilon"), p->rms_eps);
    qg_gguf_writer_set_f32(w, K("rope.freq_base"), p->rope_freq_base);
    if (p->n_expert > 0) {
        qg_gguf_writer_set_u32(w, K("expert_count"), (uint32_t)p->n_expert);
        qg_gguf_writer_set_u32(w, K("expert_used_count"), (uint32_t)p->n_expert_used);
        qg_gguf_writer_set_u32(w, K("expert_feed_forward_length"), (uint32_t)p->n_ff_exp);
    }
#undef K
    qg_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    qg_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2");
    qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens,
                               v->n_tokens);
    qg_gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", v->types, v->n_tokens);
    qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges,
                               v->n_merges);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos_id);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad_id);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos_id);
    qg_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false);
    if (v->chat_template) qg_gguf_writer_set_str(w, "tokenizer.chat_template", v->chat_template);
}

qg_status qg_synth_write(const char *path, const qg_synth_opts *o, qg_synth_stats *stats,
                         qg_error *err) {
    uint64_t t0 = qg_time_ns();
    if (stats) memset(stats, 0, sizeof *stats);
    const qg_synth_preset *p = qg_synth_preset_find(o->preset);
    if (!p) return qg_error_set(err, QG_ERR_ARG, "unknown preset '%s'", o->preset ? o->preset : "");
    if (!qg_synth_ftype_find(o->ftype))
        return qg_error_set(err, QG_ERR_ARG, "unknown ftype '%s'", o->ftype ? o->ftype : "");
    int n_threads = o->n_threads > 0 ? o->n_threads : online_cpus();

    qg_synth_vocab v;
    memset(&v, 0, sizeof v);
    qg_synth_plan *pl = NULL;
    qg_gguf_writer *w = NULL;
    qg_status st = qg_synth_vocab_for(p, o, &v, err);
    if (st != QG_OK) goto out;
    if ((st = qg_synth_plan_new(p, o->ftype, (int)v.n_tokens, &pl, err)) != QG_OK) goto out;

    w = qg_gguf_writer_new(32);
    set_metadata(w, pl, &v, o->seed);
    for (int i = 0; i < pl->n_tensors; i++) {
        const qg_synth_tensor *t = &pl->tensors[i];
        int idx = qg_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne);
        QG_ASSERT(idx == i);
    }
    if ((st = qg_gguf_writer_begin(w, path, err)) != QG_OK) goto out;
    if ((st = run_pipeline(pl, o->seed, v.types, n_threads, w, o->progress, err)) != QG_OK) goto out;
    if ((st = qg_gguf_writer_finish(w, err)) != QG_OK) goto out;
    if (stats) {
        FILE *f = fopen(path, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            stats->file_bytes = n > 0 ? (uint64_t)n : 0;
            fclose(f);
        }
        stats->data_bytes = pl->data_bytes;
        stats->n_threads = n_threads;
        stats->seconds = (double)(qg_time_ns() - t0) / 1e9;
        snprintf(stats->vocab_source, sizeof stats->vocab_source, "%s", v.source);
    }
out:
    qg_gguf_writer_free(w);
    qg_synth_plan_free(pl);
    qg_synth_vocab_free(&v);
    return st;
}
