/*
 * test_ref_vs_llama.c - the float64 reference model against llama.cpp.
 *
 * Small Qwen3-MoE and dense Qwen3 GGUFs are written with random weights
 * (seeded, a different seed per case), both by this file's own generator
 * (F32, F16 and a Q4_K_M-like mix, with a minimal byte-level BPE vocabulary
 * llama.cpp accepts) and by qg_synth_write (presets tiny, tiny-dense,
 * small-dense, gqa1 in f32, f16, q8_0, q4_k_m with llama.cpp's per-tensor
 * type rules): two independent writers of the same format.  The
 * teacher-forced logits of tests/ref/qg_ref_model.c (float64) must agree
 * with llama.cpp's (loaded through tests/ref/qg_llama_oracle.c) position by
 * position.  This validates the reference and proves the oracle plumbing.
 *
 * Tolerances (per position, over the n_vocab logits):
 *   F32:    cosine >= 0.99999 and relative RMS error <= 1e-4.  llama.cpp
 *           computes in f32 with an F32 KV cache, so the gap is f32
 *           rounding only (measured ~1e-6).
 *   F16:    cosine >= 0.999, rel. RMS <= 1e-2: llama.cpp may round the
 *           activations to f16 for F16 matmuls (measured ~4e-4 for MoE).
 *   Q8_0, Q4_K_M: cosine >= 0.99, rel. RMS <= 0.15: llama.cpp quantizes
 *           activations to Q8_0 / Q8_K for quantized matmuls (measured
 *           ~3e-2 .. 5e-2).
 * MoE: the oracle also reports which experts llama.cpp chose.  A position
 * where any layer's expert set differs from the reference's is excluded
 * from the bounds (a different expert is a different function), but the
 * reference's router-logit gap there (route_margin) must be a near-tie:
 * below 1e-3 for F32, 0.05 for F16, 0.5 for quantized (a few times the
 * router-logit error those activations imply); and at most a quarter of
 * the positions may be routed differently.
 *
 * Reference self-checks that need no oracle: causality (logits at t do not
 * depend on tokens after t, bit for bit) and router invariants (distinct
 * experts, weights sum to 1, decreasing).  The oracle's tokenizer is
 * checked for an exact round trip through token_to_piece.
 *
 * Without the oracle (no node_modules), the comparisons skip with the
 * reason printed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "frontends/qg_gguf.h"
#include "frontends/qg_synth.h"
#include "ops/quant/qg_quant.h"
#include "qg_llama_oracle.h"
#include "qg_ref_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- random numbers ---------------------------------------------------- */

typedef struct rng { uint64_t s; } rng;

static uint64_t rng_next(rng *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_sym(rng *r) {
    return (float)((double)(rng_next(r) >> 11) * 0x1.0p-52 - 1.0);
}

/* ---- a minimal byte-level BPE vocabulary ------------------------------- */

#define VOCAB_N 512
#define VOCAB_BYTES 256
#define VOCAB_SPECIAL 3 /* <|endoftext|>, <|im_start|>, <|im_end|> */
#define TOK_ENDOFTEXT (VOCAB_N - 3)
#define TOK_IM_START (VOCAB_N - 2)
#define TOK_IM_END (VOCAB_N - 1)

typedef struct vocab {
    char *tok[VOCAB_N];      /* token text, byte-level (GPT-2) encoded */
    int32_t type[VOCAB_N];   /* 1 normal, 3 control */
    char *merge[VOCAB_N];    /* "left right" */
    int n_merge;
} vocab;

/* GPT-2's byte -> code point map: printable bytes map to themselves, the
 * rest to 256 + k in byte order. */
static int byte_cp(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174))
        return b;
    int k = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174))
            k++;
    return 256 + k;
}

/* Append the UTF-8 of byte b's code point to s (room for 3 bytes). */
static size_t put_byte(char *s, int b) {
    int cp = byte_cp(b);
    if (cp < 0x80) {
        s[0] = (char)cp;
        return 1;
    }
    s[0] = (char)(0xC0 | (cp >> 6));
    s[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* Encode raw bytes w[0..n) as a token string. */
static char *enc(const char *w, size_t n) {
    char *s = calloc(2 * n + 1, 1);
    assert_non_null(s);
    size_t l = 0;
    for (size_t i = 0; i < n; i++) l += put_byte(s + l, (unsigned char)w[i]);
    return s;
}

static int vocab_find(const vocab *v, int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (v->tok[i] && strcmp(v->tok[i], s) == 0) return i;
    return -1;
}

/* 256 byte tokens, prefix merges of common words until the vocabulary is
 * full, then three control tokens. */
static void vocab_build(vocab *v) {
    static const char *const words[] = {
        " the", " quick", " brown", " fox", " jumps", " over", " lazy",
        " dog", "Hello", " world", " and", " of", " to", " in", " is",
        " that", " it", " was", " for", " on", " are", " with", " as",
        " his", " they", " be", " at", " one", " have", " this", " from",
        " by", " hot", " word", " but", " what", " some", " we", " can",
        " out", " other", " were", " all", " there", " when", " up",
        " use", " your", " how", " said", " an", " each", " she", " which",
        " do", " their", " time", " if", " will", " way", " about",
        " many", " then", " them", " write", " would", " like", " so",
        " these", " her", " long", " make", " thing", " see", " him",
        " two", " has", " look", " more", " day", " could", " go",
        " come", " did", " number", " sound", " no", " most", " people",
        " my", " water", " than", " call", " first", " who", " may",
        " down", " side", " been", " now", " find", "ing", "ed", "er",
        " user", " assistant", " system", "123", "\n\n", "  ", " hi",
    };
    memset(v, 0, sizeof *v);
    for (int b = 0; b < VOCAB_BYTES; b++) {
        char c = (char)b;
        v->tok[b] = enc(&c, 1);
        v->type[b] = 1;
    }
    int n = VOCAB_BYTES;
    const int n_max = VOCAB_N - VOCAB_SPECIAL;
    for (size_t w = 0; w < sizeof words / sizeof *words && n < n_max; w++) {
        const char *word = words[w];
        size_t len = strlen(word);
        for (size_t i = 2; i <= len && n < n_max; i++) {
            char *whole = enc(word, i);
            if (vocab_find(v, n, whole) >= 0) {
                free(whole);
                continue;
            }
            char *left = enc(word, i - 1), *right = enc(word + i - 1, 1);
            char *m = calloc(strlen(left) + strlen(right) + 2, 1);
            assert_non_null(m);
            sprintf(m, "%s %s", left, right);
            free(left);
            free(right);
            v->merge[v->n_merge++] = m;
            v->tok[n] = whole;
            v->type[n++] = 1;
        }
    }
    for (; n < n_max; n++) { /* unused slots, if the words ran out */
        char buf[32];
        snprintf(buf, sizeof buf, "<|reserved_%d|>", n);
        v->tok[n] = strdup(buf);
        v->type[n] = 3;
    }
    v->tok[TOK_ENDOFTEXT] = strdup("<|endoftext|>");
    v->tok[TOK_IM_START] = strdup("<|im_start|>");
    v->tok[TOK_IM_END] = strdup("<|im_end|>");
    for (int i = TOK_ENDOFTEXT; i < VOCAB_N; i++) v->type[i] = 3;
}

static void vocab_free(vocab *v) {
    for (int i = 0; i < VOCAB_N; i++) free(v->tok[i]);
    for (int i = 0; i < v->n_merge; i++) free(v->merge[i]);
}

/* ---- tiny model files --------------------------------------------------- */

typedef enum wq { WQ_F32, WQ_F16, WQ_Q8_0, WQ_Q4_K_M } wq;
static const char *const WQ_NAME[] = {"F32", "F16", "Q8_0", "Q4_K_M"};

typedef struct tiny_cfg {
    bool moe;
    wq quant;
    uint64_t seed;
} tiny_cfg;

enum {
    T_EMBD = 256, T_LAYER = 2, T_HEAD = 4, T_HEAD_KV = 2, T_HD = 64,
    T_EXPERT = 8, T_EXPERT_USED = 2, T_FF_EXP = 256, T_FF = 512,
};

/* How a tensor's values are drawn. */
typedef enum init { INIT_NORM, INIT_QKNORM, INIT_EMBD, INIT_MAT } init;

typedef struct tspec {
    char name[64];
    qg_dtype type;
    int n_dims;
    int64_t ne[3];
    init how;
    float gain; /* INIT_MAT: values uniform, std gain / sqrt(ne[0]) */
} tspec;

/* Weight type for a 2-D/3-D matrix `role` under quantization q:
 * Q4_K_M-like = Q4_K, with Q6_K for attn_v, ffn_down and output as
 * llama.cpp's Q4_K_M does for small models. */
static qg_dtype mat_type(wq q, const char *role) {
    switch (q) {
    case WQ_F32: return QG_F32;
    case WQ_F16: return QG_F16;
    case WQ_Q8_0: return QG_Q8_0;
    case WQ_Q4_K_M:
        if (strstr(role, "attn_v") || strstr(role, "ffn_down") ||
            strcmp(role, "output") == 0)
            return QG_Q6_K;
        return QG_Q4_K;
    }
    return QG_F32;
}

static int add_spec(tspec *s, int n, const char *name, qg_dtype type,
                    int n_dims, int64_t a, int64_t b, int64_t c, init how,
                    float gain) {
    tspec *t = &s[n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    t->ne[0] = a;
    t->ne[1] = b;
    t->ne[2] = c;
    t->how = how;
    t->gain = gain;
    return n + 1;
}

/* The tensor list of a tiny model.  MoE has its own output.weight; the
 * dense model ties the lm head to token_embd (no output.weight). */
static int tiny_specs(const tiny_cfg *c, tspec *s) {
    int n = 0;
    const wq q = c->quant;
    n = add_spec(s, n, "token_embd.weight", mat_type(q, "token_embd"), 2,
                 T_EMBD, VOCAB_N, 1, INIT_EMBD, 1);
    n = add_spec(s, n, "output_norm.weight", QG_F32, 1, T_EMBD, 1, 1,
                 INIT_NORM, 1);
    if (c->moe)
        n = add_spec(s, n, "output.weight", mat_type(q, "output"), 2, T_EMBD,
                     VOCAB_N, 1, INIT_MAT, 3);
    for (int il = 0; il < T_LAYER; il++) {
        char nm[64];
#define BLK(suffix) (snprintf(nm, sizeof nm, "blk.%d.%s.weight", il, suffix), nm)
        n = add_spec(s, n, BLK("attn_norm"), QG_F32, 1, T_EMBD, 1, 1,
                     INIT_NORM, 1);
        n = add_spec(s, n, BLK("attn_q"), mat_type(q, "attn_q"), 2, T_EMBD,
                     T_HD * T_HEAD, 1, INIT_MAT, 1);
        n = add_spec(s, n, BLK("attn_k"), mat_type(q, "attn_k"), 2, T_EMBD,
                     T_HD * T_HEAD_KV, 1, INIT_MAT, 1);
        n = add_spec(s, n, BLK("attn_v"), mat_type(q, "attn_v"), 2, T_EMBD,
                     T_HD * T_HEAD_KV, 1, INIT_MAT, 1);
        n = add_spec(s, n, BLK("attn_output"), mat_type(q, "attn_output"), 2,
                     T_HD * T_HEAD, T_EMBD, 1, INIT_MAT, 1);
        n = add_spec(s, n, BLK("attn_q_norm"), QG_F32, 1, T_HD, 1, 1,
                     INIT_QKNORM, 1);
        n = add_spec(s, n, BLK("attn_k_norm"), QG_F32, 1, T_HD, 1, 1,
                     INIT_QKNORM, 1);
        n = add_spec(s, n, BLK("ffn_norm"), QG_F32, 1, T_EMBD, 1, 1,
                     INIT_NORM, 1);
        if (c->moe) {
            /* the router stays F32, as llama.cpp's quantizer leaves it */
            n = add_spec(s, n, BLK("ffn_gate_inp"), QG_F32, 2, T_EMBD,
                         T_EXPERT, 1, INIT_MAT, 4);
            n = add_spec(s, n, BLK("ffn_gate_exps"), mat_type(q, "ffn_gate"),
                         3, T_EMBD, T_FF_EXP, T_EXPERT, INIT_MAT, 1);
            n = add_spec(s, n, BLK("ffn_up_exps"), mat_type(q, "ffn_up"), 3,
                         T_EMBD, T_FF_EXP, T_EXPERT, INIT_MAT, 1);
            n = add_spec(s, n, BLK("ffn_down_exps"), mat_type(q, "ffn_down"),
                         3, T_FF_EXP, T_EMBD, T_EXPERT, INIT_MAT, 1);
        } else {
            n = add_spec(s, n, BLK("ffn_gate"), mat_type(q, "ffn_gate"), 2,
                         T_EMBD, T_FF, 1, INIT_MAT, 1);
            n = add_spec(s, n, BLK("ffn_up"), mat_type(q, "ffn_up"), 2,
                         T_EMBD, T_FF, 1, INIT_MAT, 1);
            n = add_spec(s, n, BLK("ffn_down"), mat_type(q, "ffn_down"), 2,
                         T_FF, T_EMBD, 1, INIT_MAT, 1);
        }
#undef BLK
    }
    return n;
}

/* Draw tensor t's values (f32, ne[0]*ne[1]*ne[2]) and encode them in its
 * type into dst (qg_dtype_row_bytes per row). */
static void tiny_fill(const tspec *t, rng *r, float *vals, uint8_t *dst) {
    const int64_t n_row = t->ne[1] * t->ne[2], row = t->ne[0];
    const size_t rb = qg_dtype_row_bytes(t->type, row);
    for (int64_t i = 0; i < n_row * row; i++) {
        float u = rng_sym(r);
        switch (t->how) {
        case INIT_NORM: vals[i] = 1.0f + 0.25f * u; break;
        case INIT_QKNORM: vals[i] = 2.0f + 0.5f * u; break;
        case INIT_EMBD: vals[i] = u * 1.7320508f; break; /* std 1 */
        case INIT_MAT:
            vals[i] = u * 1.7320508f * t->gain / sqrtf((float)row);
            break;
        }
    }
    for (int64_t j = 0; j < n_row; j++) {
        const float *src = vals + j * row;
        uint8_t *d = dst + (size_t)j * rb;
        if (t->type == QG_F32) {
            memcpy(d, src, (size_t)row * sizeof(float));
        } else if (t->type == QG_F16) {
            for (int64_t i = 0; i < row; i++) {
                uint16_t h = qg_f32_to_f16(src[i]);
                memcpy(d + 2 * i, &h, 2);
            }
        } else {
            qg_quantize_row(t->type, src, d, row);
        }
    }
}

/* Write the tiny model of cfg c to path. */
static void tiny_write(const char *path, const tiny_cfg *c) {
    const char *arch = c->moe ? "qwen3moe" : "qwen3";
    qg_gguf_writer *w = qg_gguf_writer_new(0);
    assert_non_null(w);
    char key[128];
#define K(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    qg_gguf_writer_set_str(w, "general.architecture", arch);
    qg_gguf_writer_set_str(w, "general.name", "qg-tiny");
    qg_gguf_writer_set_u32(w, K("context_length"), 4096);
    qg_gguf_writer_set_u32(w, K("embedding_length"), T_EMBD);
    qg_gguf_writer_set_u32(w, K("block_count"), T_LAYER);
    qg_gguf_writer_set_u32(w, K("feed_forward_length"),
                           c->moe ? T_FF_EXP * T_EXPERT_USED : T_FF);
    qg_gguf_writer_set_u32(w, K("attention.head_count"), T_HEAD);
    qg_gguf_writer_set_u32(w, K("attention.head_count_kv"), T_HEAD_KV);
    qg_gguf_writer_set_u32(w, K("attention.key_length"), T_HD);
    qg_gguf_writer_set_u32(w, K("attention.value_length"), T_HD);
    qg_gguf_writer_set_f32(w, K("attention.layer_norm_rms_epsilon"), 1e-6f);
    qg_gguf_writer_set_f32(w, K("rope.freq_base"), 1000000.0f);
    if (c->moe) {
        qg_gguf_writer_set_u32(w, K("expert_count"), T_EXPERT);
        qg_gguf_writer_set_u32(w, K("expert_used_count"), T_EXPERT_USED);
        qg_gguf_writer_set_u32(w, K("expert_feed_forward_length"), T_FF_EXP);
    }
#undef K
    vocab v;
    vocab_build(&v);
    qg_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    qg_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2");
    qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
                               (const char *const *)v.tok, VOCAB_N);
    qg_gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", v.type,
                               VOCAB_N);
    qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges",
                               (const char *const *)v.merge,
                               (uint64_t)v.n_merge);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", TOK_IM_END);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", TOK_ENDOFTEXT);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id",
                           TOK_ENDOFTEXT);
    qg_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false);
    vocab_free(&v);

    tspec specs[64];
    const int n = tiny_specs(c, specs);
    for (int i = 0; i < n; i++)
        assert_int_equal(qg_gguf_writer_add_tensor(w, specs[i].name,
                                                   specs[i].type,
                                                   specs[i].n_dims,
                                                   specs[i].ne), i);
    qg_error err = {0};
    if (qg_gguf_writer_begin(w, path, &err)) fail_msg("%s", err.msg);
    rng r = {c->seed};
    for (int i = 0; i < n; i++) {
        const tspec *t = &specs[i];
        const int64_t n_el = t->ne[0] * t->ne[1] * t->ne[2];
        const size_t nb = qg_dtype_row_bytes(t->type, t->ne[0]) *
                          (size_t)(t->ne[1] * t->ne[2]);
        float *vals = malloc((size_t)n_el * sizeof(float));
        uint8_t *data = malloc(nb);
        assert_true(vals && data);
        tiny_fill(t, &r, vals, data);
        if (qg_gguf_writer_write_data(w, i, data, nb, &err))
            fail_msg("%s", err.msg);
        free(vals);
        free(data);
    }
    if (qg_gguf_writer_finish(w, &err)) fail_msg("%s", err.msg);
    qg_gguf_writer_free(w);
}

/* A fresh temporary path for one case. */
static void tmp_path(char *buf, size_t cap, const char *tag) {
    const char *dir = getenv("QG_BUILD_DIR");
    snprintf(buf, cap, "%s/qg_ref_vs_llama_%s_%ld.gguf",
             dir && *dir ? dir : "/tmp", tag, (long)getpid());
}

/* ---- comparison ---------------------------------------------------------- */

#define N_TOK 48

/* Random non-special token ids. */
static void random_tokens(rng *r, int32_t *tok, int n) {
    for (int i = 0; i < n; i++)
        tok[i] = (int32_t)(rng_next(r) % TOK_ENDOFTEXT);
}

typedef struct tol {
    double cos_min;     /* per-position cosine lower bound */
    double rel_rms_max; /* per-position RMS(err) / RMS(ref) upper bound */
    double flip_margin; /* routing may differ only where the reference's
                           router-logit gap is below this */
} tol;

/* Do the expert sets of (K) a and b differ? (order is not compared: two
 * chosen experts with near-equal probabilities may come in either order) */
static bool expert_sets_differ(const int32_t *a, const int32_t *b, int K) {
    for (int i = 0; i < K; i++) {
        bool found = false;
        for (int j = 0; j < K; j++) found |= a[i] == b[j];
        if (!found) return true;
    }
    return false;
}

/* Skip (with the reason printed) when the build has no oracle. */
static void skip_without_oracle(void) {
    if (!qg_llama_oracle_built()) {
        qg_error e = {0};
        qg_llama_oracle_load("", NULL, &e);
        print_message("skipping: %s\n", e.msg);
        skip();
    }
}

/*
 * Compare llama.cpp with the reference on the model file `path` over N_TOK
 * random tokens (from `seed`), with tolerance t; `label` names the case in
 * the printed summary.  Removes the file at the end.
 */
static void compare_file(const char *path, const char *label, tol t,
                         uint64_t seed) {
    qg_error err = {0};
    qg_ref_model *ref = qg_ref_model_load(path, &err);
    if (!ref) fail_msg("%s", err.msg);
    const qg_ref_hparams *hp = qg_ref_model_hparams(ref);
    const int V = hp->n_vocab, L = hp->n_layer;
    const int K = hp->moe ? hp->n_expert_used : 0;

    /* one thread: on a loaded 2-core machine a second one mostly spins */
    qg_llama_oracle_opts lo = {.n_threads = 1, .n_ctx = 64,
                               .capture_experts = hp->moe};
    qg_llama_oracle *o = qg_llama_oracle_load(path, &lo, &err);
    if (!o) {
        qg_ref_model_free(ref);
        unlink(path);
        if (err.code == QG_ERR_BACKEND) {
            print_message("skipping: %s\n", err.msg);
            skip();
        }
        fail_msg("%s", err.msg);
    }
    assert_int_equal(qg_llama_n_vocab(o), V);
    assert_int_equal(qg_llama_n_layer(o), L);
    assert_int_equal(qg_llama_n_expert_used(o), K);

    rng r = {seed ^ 0xA5A5A5A5u};
    int32_t tok[N_TOK];
    for (int i = 0; i < N_TOK; i++)
        tok[i] = (int32_t)(rng_next(&r) % (uint64_t)V);

    const size_t nl = (size_t)V * N_TOK, ne = (size_t)K * N_TOK * L;
    double *want = malloc(nl * sizeof(double));          /* (V, N_TOK) */
    float *got = malloc(nl * sizeof(float));             /* (V, N_TOK) */
    double margin[N_TOK];                                /* (N_TOK) */
    int32_t *ex_ref = malloc((ne + 1) * sizeof(int32_t)); /* (K, N_TOK, L) */
    int32_t *ex_ll = malloc((ne + 1) * sizeof(int32_t));  /* (K, N_TOK, L) */
    assert_true(want && got && ex_ref && ex_ll);
    for (size_t i = 0; i < nl; i++) {
        want[i] = NAN;
        got[i] = NAN;
    }
    memset(ex_ref, 0xFF, (ne + 1) * sizeof(int32_t));
    memset(ex_ll, 0xFF, (ne + 1) * sizeof(int32_t));
    qg_ref_eval_out out = {.logits = want, .route_margin = margin,
                           .experts = hp->moe ? ex_ref : NULL};
    if (qg_ref_model_eval_ex(ref, tok, N_TOK, &out, &err))
        fail_msg("%s", err.msg);
    if (qg_llama_eval_logits_ex(o, tok, N_TOK, got, hp->moe ? ex_ll : NULL,
                                &err))
        fail_msg("%s", err.msg);

    double worst_cos = 1, worst_rel = 0, sum_rel = 0, cross_cos = 0;
    int n_flip = 0, n_checked = 0, n_argmax = 0;
    for (int p = 0; p < N_TOK; p++) {
        const double *a = want + (size_t)p * V;
        const float *b = got + (size_t)p * V;
        double ab = 0, aa = 0, bb = 0, ee = 0;
        int am = 0, bm = 0;
        for (int i = 0; i < V; i++) {
            assert_true(isfinite(a[i]));
            assert_true(isfinite(b[i])); /* also: every logit was written */
            ab += a[i] * b[i];
            aa += a[i] * a[i];
            bb += (double)b[i] * b[i];
            ee += (a[i] - b[i]) * (a[i] - b[i]);
            if (a[i] > a[am]) am = i;
            if (b[i] > b[bm]) bm = i;
        }
        const double cs = ab / sqrt(aa * bb), rel = sqrt(ee / aa);
        n_argmax += am == bm;
        if (p > 0) { /* a different position: the check must discriminate */
            const double *a0 = want + (size_t)(p - 1) * V;
            double x = 0, y = 0;
            for (int i = 0; i < V; i++) {
                x += a0[i] * a[i];
                y += a0[i] * a0[i];
            }
            cross_cos += x / sqrt(aa * y) / (N_TOK - 1);
        }
        /* the logits must be spread out, or the cosine is meaningless */
        assert_true(sqrt(aa / V) > 0.3);
        bool flip = false;
        for (int il = 0; il < L && K > 0; il++) {
            const size_t off = ((size_t)il * N_TOK + p) * K;
            for (int k = 0; k < K; k++) {
                assert_true(ex_ll[off + k] >= 0 &&
                            ex_ll[off + k] < hp->n_expert);
                assert_true(ex_ref[off + k] >= 0 &&
                            ex_ref[off + k] < hp->n_expert);
            }
            flip |= expert_sets_differ(ex_ref + off, ex_ll + off, K);
        }
        if (flip) {
            /* llama.cpp routed this token elsewhere: only a near-tie in
             * the reference's router may explain that */
            n_flip++;
            print_message("  pos %2d: routed differently, reference router "
                          "gap %.2e: cos %.6f rel %.2e\n", p, margin[p], cs,
                          rel);
            assert_true(margin[p] < t.flip_margin);
            continue;
        }
        n_checked++;
        sum_rel += rel;
        if (cs < worst_cos) worst_cos = cs;
        if (rel > worst_rel) worst_rel = rel;
        if (cs < t.cos_min || rel > t.rel_rms_max)
            print_message("  pos %2d: cos %.7f rel-rms %.3e  <- out of "
                          "tolerance\n", p, cs, rel);
    }
    print_message("%-24s: min cos %.8f, rel-rms max %.3e mean %.3e, argmax "
                  "agree %d/%d, routed differently %d, adjacent-position cos "
                  "%.3f\n", label, worst_cos, worst_rel,
                  sum_rel / QG_MAX(n_checked, 1), n_argmax, N_TOK, n_flip,
                  cross_cos);
    assert_true(n_flip * 4 <= N_TOK);
    assert_true(worst_cos >= t.cos_min);
    assert_true(worst_rel <= t.rel_rms_max);
    /* positions differ far more than the tolerance allows */
    assert_true(cross_cos < t.cos_min - 0.2);

    free(want);
    free(got);
    free(ex_ref);
    free(ex_ll);
    qg_llama_oracle_free(o);
    qg_ref_model_free(ref);
    unlink(path);
}

/* One model from this file's own generator. */
static void run_case(const tiny_cfg *c, tol t) {
    skip_without_oracle();
    char path[1200];
    char tag[32];
    snprintf(tag, sizeof tag, "%s_%s", c->moe ? "moe" : "dense",
             WQ_NAME[c->quant]);
    tmp_path(path, sizeof path, tag);
    tiny_write(path, c);

    qg_error err = {0};
    qg_ref_model *ref = qg_ref_model_load(path, &err);
    if (!ref) fail_msg("%s", err.msg);
    const qg_ref_hparams *hp = qg_ref_model_hparams(ref);
    assert_int_equal(hp->n_vocab, VOCAB_N);
    assert_int_equal(hp->n_layer, T_LAYER);
    assert_int_equal(hp->head_dim, T_HD);
    assert_int_equal(hp->moe, c->moe);
    assert_int_equal(hp->tied_output, !c->moe);
    qg_ref_model_free(ref);

    char label[64];
    snprintf(label, sizeof label, "own %s %s", c->moe ? "moe" : "dense",
             WQ_NAME[c->quant]);
    compare_file(path, label, t, c->seed);
}

/* One model written by qg_synth_write (byte-level vocabulary). */
static void run_synth(const char *preset, const char *ftype, uint64_t seed,
                      tol t) {
    skip_without_oracle();
    char path[1200];
    char tag[64];
    snprintf(tag, sizeof tag, "synth_%s_%s", preset, ftype);
    tmp_path(path, sizeof path, tag);
    qg_synth_opts so;
    qg_synth_opts_init(&so);
    so.preset = preset;
    so.ftype = ftype;
    so.seed = seed;
    so.vocab_mode = QG_SYNTH_VOCAB_BYTES;
    so.n_threads = 2;
    qg_error err = {0};
    if (qg_synth_write(path, &so, NULL, &err)) fail_msg("%s", err.msg);
    char label[64];
    snprintf(label, sizeof label, "synth %s %s", preset, ftype);
    compare_file(path, label, t, seed);
}

static const tol TOL_F32 = {0.99999, 1e-4, 1e-3};
static const tol TOL_F16 = {0.999, 1e-2, 0.05};
static const tol TOL_QUANT = {0.99, 0.15, 0.5};

static void test_moe_f32(void **state) {
    (void)state;
    run_case(&(tiny_cfg){true, WQ_F32, 0x1001}, TOL_F32);
}
static void test_dense_f32(void **state) {
    (void)state;
    run_case(&(tiny_cfg){false, WQ_F32, 0x1002}, TOL_F32);
}
static void test_moe_f16(void **state) {
    (void)state;
    run_case(&(tiny_cfg){true, WQ_F16, 0x1003}, TOL_F16);
}
static void test_moe_q4_k_m(void **state) {
    (void)state;
    run_case(&(tiny_cfg){true, WQ_Q4_K_M, 0x1006}, TOL_QUANT);
}

/* Files from the synth engineer's generator: other shapes (head_dim 128
 * with q dim != n_embd, all experts used, a larger vocabulary) and
 * llama.cpp's own per-tensor type rules for each file type. */
static void test_synth_tiny_f32(void **state) {
    (void)state;
    run_synth("tiny", "f32", 0x4001, TOL_F32);
}
static void test_synth_tiny_f16(void **state) {
    (void)state;
    run_synth("tiny", "f16", 0x4002, TOL_F16);
}
static void test_synth_tiny_q8_0(void **state) {
    (void)state;
    run_synth("tiny", "q8_0", 0x4003, TOL_QUANT);
}
static void test_synth_tiny_q4_k_m(void **state) {
    (void)state;
    run_synth("tiny", "q4_k_m", 0x4004, TOL_QUANT);
}
static void test_synth_tiny_dense_q4_k_m(void **state) {
    (void)state;
    run_synth("tiny-dense", "q4_k_m", 0x4005, TOL_QUANT);
}
static void test_synth_small_dense_f32(void **state) {
    (void)state;
    run_synth("small-dense", "f32", 0x4006, TOL_F32);
}
static void test_synth_small_dense_q8_0(void **state) {
    (void)state;
    run_synth("small-dense", "q8_0", 0x4007, TOL_QUANT);
}
static void test_synth_gqa1_f32(void **state) {
    (void)state;
    run_synth("gqa1", "f32", 0x4008, TOL_F32);
}
static void test_synth_gqa1_q4_k_m(void **state) {
    (void)state;
    run_synth("gqa1", "q4_k_m", 0x4009, TOL_QUANT);
}

/* ---- reference self-checks (no oracle needed) --------------------------- */

/* Logits at position t depend only on tokens[0..t]: evaluating a prefix
 * gives bit-identical logits; and the router outputs are well formed. */
static void test_ref_causal_and_router(void **state) {
    (void)state;
    char path[1200];
    tmp_path(path, sizeof path, "selfcheck");
    const tiny_cfg c = {true, WQ_Q8_0, 0x2001};
    tiny_write(path, &c);
    qg_error err = {0};
    qg_ref_model *ref = qg_ref_model_load(path, &err);
    if (!ref) fail_msg("%s", err.msg);

    enum { N = 20, NP = 11, K = T_EXPERT_USED };
    rng r = {0x2002};
    int32_t tok[N];
    random_tokens(&r, tok, N);
    double *full = malloc((size_t)VOCAB_N * N * sizeof(double));
    double *pre = malloc((size_t)VOCAB_N * NP * sizeof(double));
    int32_t ex[K * N * T_LAYER];
    double ew[K * N * T_LAYER], hidden[T_EMBD * N * (T_LAYER + 1)];
    assert_true(full && pre);
    memset(ex, 0xFF, sizeof ex);
    for (size_t i = 0; i < QG_ARRAY_LEN(ew); i++) ew[i] = NAN;
    for (size_t i = 0; i < QG_ARRAY_LEN(hidden); i++) hidden[i] = NAN;
    qg_ref_eval_out out = {.logits = full, .experts = ex, .expert_w = ew,
                           .hidden = hidden};
    if (qg_ref_model_eval_ex(ref, tok, N, &out, &err)) fail_msg("%s", err.msg);
    if (qg_ref_model_eval(ref, tok, NP, pre, &err)) fail_msg("%s", err.msg);
    /* exact: the same operations in the same order */
    assert_memory_equal(full, pre, (size_t)VOCAB_N * NP * sizeof(double));

    for (size_t i = 0; i < QG_ARRAY_LEN(hidden); i++)
        assert_true(isfinite(hidden[i]));
    for (int i = 0; i < N * T_LAYER; i++) {
        const int32_t *e = ex + i * K;
        const double *w = ew + i * K;
        double s = 0;
        for (int k = 0; k < K; k++) {
            assert_true(e[k] >= 0 && e[k] < T_EXPERT);
            for (int j = 0; j < k; j++) assert_int_not_equal(e[j], e[k]);
            assert_true(w[k] > 0 && w[k] <= 1);
            if (k > 0) assert_true(w[k] <= w[k - 1]);
            s += w[k];
        }
        assert_true(fabs(s - 1) < 1e-12); /* renormalized in double */
    }
    /* slice 0 of hidden is the embedding row, exactly */
    const qg_gguf *g = qg_ref_model_gguf(ref);
    const qg_gguf_tensor *te = qg_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(te);
    double row[T_EMBD];
    const size_t rb = qg_dtype_row_bytes(te->type, T_EMBD);
    qg_dequant_row_f64(te->type, (const uint8_t *)te->data + rb * tok[3], row,
                       T_EMBD);
    assert_memory_equal(hidden + 3 * T_EMBD, row, sizeof row);

    /* bad token ids are refused with QG_ERR_RANGE */
    int32_t bad[2] = {1, VOCAB_N};
    assert_int_equal(qg_ref_model_eval(ref, bad, 2, pre, &err),
                     QG_ERR_RANGE);
    free(full);
    free(pre);
    qg_ref_model_free(ref);
    unlink(path);
}

/* ---- the oracle's tokenizer ---------------------------------------------- */

/* Concatenate the pieces of ids[0..n) into buf; returns the length. */
static int detok(qg_llama_oracle *o, const int32_t *ids, int n, bool special,
                 char *buf, int cap) {
    int len = 0;
    qg_error err = {0};
    for (int i = 0; i < n; i++) {
        int k = 0;
        if (qg_llama_token_to_piece(o, ids[i], special, buf + len, cap - len,
                                    &k, &err))
            fail_msg("%s", err.msg);
        len += k;
    }
    return len;
}

static void test_oracle_tokenizer(void **state) {
    (void)state;
    char path[1200];
    tmp_path(path, sizeof path, "tok");
    const tiny_cfg c = {false, WQ_F32, 0x3001};
    tiny_write(path, &c);
    qg_error err = {0};
    qg_llama_oracle *o = qg_llama_oracle_load(path, NULL, &err);
    if (!o) {
        unlink(path);
        if (err.code == QG_ERR_BACKEND) {
            print_message("skipping: %s\n", err.msg);
            skip();
        }
        fail_msg("%s", err.msg);
    }
    const char *text = "Hello world, the quick brown fox jumps over the lazy "
                       "dog 123 times!\n\n  Ünïcödé ok";
    int32_t ids[256];
    int n = 0;
    if (qg_llama_tokenize(o, text, (int)strlen(text), false, false, ids, 256,
                          &n, &err))
        fail_msg("%s", err.msg);
    char buf[1024];
    int len = detok(o, ids, n, false, buf, sizeof buf);
    assert_int_equal(len, (int)strlen(text));
    assert_memory_equal(buf, text, (size_t)len);
    assert_true(n < len / 2); /* the merges were used */
    print_message("tokenizer: %d bytes -> %d tokens, round trip exact\n", len,
                  n);

    /* a buffer too small reports the count needed */
    int need = 0;
    assert_int_equal(qg_llama_tokenize(o, text, (int)strlen(text), false,
                                       false, ids, 2, &need, &err),
                     QG_ERR_RANGE);
    assert_int_equal(need, n);

    /* special tokens: parsed only when asked */
    const char *chat = "<|im_start|>user\nhi<|im_end|>";
    if (qg_llama_tokenize(o, chat, (int)strlen(chat), false, true, ids, 256,
                          &n, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(ids[0], TOK_IM_START);
    assert_int_equal(ids[n - 1], TOK_IM_END);
    assert_true(qg_llama_is_eog(o, TOK_IM_END));
    len = detok(o, ids, n, true, buf, sizeof buf);
    assert_int_equal(len, (int)strlen(chat));
    assert_memory_equal(buf, chat, (size_t)len);
    if (qg_llama_tokenize(o, chat, (int)strlen(chat), false, false, ids, 256,
                          &n, &err))
        fail_msg("%s", err.msg);
    for (int i = 0; i < n; i++) assert_true(ids[i] < TOK_ENDOFTEXT);

    /* greedy generation is deterministic and matches teacher forcing */
    int32_t prompt[4] = {ids[0], ids[1], ids[2], ids[3]};
    int32_t gen[8], gen2[8];
    int ng = 0, ng2 = 0;
    if (qg_llama_generate_greedy(o, prompt, 4, 8, false, gen, &ng, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(ng, 8);
    if (qg_llama_generate_greedy(o, prompt, 4, 8, false, gen2, &ng2, &err))
        fail_msg("%s", err.msg);
    assert_memory_equal(gen, gen2, sizeof gen);
    int32_t seq[12];
    memcpy(seq, prompt, sizeof prompt);
    memcpy(seq + 4, gen, sizeof gen);
    float *lg = malloc((size_t)VOCAB_N * 12 * sizeof(float));
    assert_non_null(lg);
    if (qg_llama_eval_logits(o, seq, 12, lg, &err)) fail_msg("%s", err.msg);
    for (int p = 3; p < 11; p++) {
        const float *l = lg + (size_t)p * VOCAB_N;
        int am = 0;
        for (int i = 1; i < VOCAB_N; i++) am = l[i] > l[am] ? i : am;
        /* batch vs one-token decode may differ in the last bits; only a
         * near-tie could change the argmax */
        float second = -INFINITY;
        for (int i = 0; i < VOCAB_N; i++)
            if (i != am && l[i] > second) second = l[i];
        if (l[am] - second > 1e-3f) assert_int_equal(am, seq[p + 1]);
    }
    free(lg);
    qg_llama_oracle_free(o);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_causal_and_router),
        cmocka_unit_test(test_oracle_tokenizer),
        cmocka_unit_test(test_moe_f32),
        cmocka_unit_test(test_dense_f32),
        cmocka_unit_test(test_moe_f16),
        cmocka_unit_test(test_moe_q4_k_m),
        cmocka_unit_test(test_synth_tiny_f32),
        cmocka_unit_test(test_synth_tiny_f16),
        cmocka_unit_test(test_synth_tiny_q8_0),
        cmocka_unit_test(test_synth_tiny_q4_k_m),
        cmocka_unit_test(test_synth_tiny_dense_q4_k_m),
        cmocka_unit_test(test_synth_small_dense_f32),
        cmocka_unit_test(test_synth_small_dense_q8_0),
        cmocka_unit_test(test_synth_gqa1_f32),
        cmocka_unit_test(test_synth_gqa1_q4_k_m),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
