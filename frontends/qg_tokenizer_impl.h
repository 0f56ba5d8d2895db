/*
 * qg_tokenizer_impl.h - private: the tokenizer's tables, shared by
 * qg_tokenizer.c (loading, lookups, pieces, detokenizer) and
 * qg_tokenizer_encode.c (special-token split, regex, BPE).
 */
#ifndef QG_TOKENIZER_IMPL_H
#define QG_TOKENIZER_IMPL_H

#include "qg_tokenizer.h"

typedef enum qg_tok_pre {
    QG_TOK_PRE_QWEN2 = 0,  /* Qwen2 / Qwen3 regex */
    QG_TOK_PRE_QWEN35 = 1, /* letter runs also take \p{M} */
} qg_tok_pre;

/* One merge: the pair (left, right) of token ids -> rank and result. */
typedef struct qg_tok_merge {
    int32_t left;   /* -1: empty slot */
    int32_t right;
    int32_t rank;   /* index in tokenizer.ggml.merges (first occurrence) */
    int32_t result; /* id of left's text + right's text */
} qg_tok_merge;

struct qg_tokenizer {
    int32_t n_vocab;
    qg_tok_pre pre;

    /* Stored token texts, concatenated: token i is
     * text[text_off[i] .. text_off[i+1]). */
    char *text;        /* (text_off[n_vocab]) */
    uint64_t *text_off; /* (n_vocab + 1) */
    /* Rendered bytes (see qg_tokenizer_piece, special = true). */
    char *piece;        /* (piece_off[n_vocab]) */
    uint64_t *piece_off; /* (n_vocab + 1) */
    size_t max_piece;
    uint16_t *attr;     /* (n_vocab) qg_token_attr bits */
    uint8_t *eog;       /* (n_vocab) 1: end of generation */

    /* Token text -> id, open addressing, linear probing. */
    int32_t *tok_hash;  /* (tok_mask + 1), -1: empty */
    uint32_t tok_mask;

    /* (left, right) -> merge, open addressing, linear probing. */
    qg_tok_merge *merge; /* (merge_mask + 1) */
    uint32_t merge_mask;

    /* Token of each single byte (its GPT-2 alphabet character); -1 when
     * the vocabulary lacks it (llama.cpp then drops that byte). */
    int32_t byte_tok[256];

    /* Tokens cut out of the text before pre-tokenization (control,
     * user-defined, unknown), by text length descending, then id. */
    int32_t *special; /* (n_special) */
    int32_t n_special;

    int32_t bos, eos, eot, eom, pad;
    bool add_bos, add_eos;

    /* Pre-tokenizer (PCRE2); opaque here. */
    void *re;       /* pcre2_code_8 * */
    void *re_match; /* pcre2_match_data_8 * */
};

/* Hash of a byte string (FNV-1a, 64-bit, folded). */
uint32_t qg_tok_hash_bytes(const void *p, size_t n);

/* Merge of the adjacent pair (left, right), or NULL. */
static inline const qg_tok_merge *qg_tok_merge_find(const qg_tokenizer *t,
                                                    int32_t left,
                                                    int32_t right) {
    uint64_t k = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    for (uint32_t i = (uint32_t)k & t->merge_mask;;
         i = (i + 1) & t->merge_mask) {
        const qg_tok_merge *m = &t->merge[i];
        if (m->left < 0) return NULL;
        if (m->left == left && m->right == right) return m;
    }
}

/* Compile the pre-tokenizer regex for t->pre into t->re / t->re_match.
 * QG_ERR_UNSUPPORTED when built without PCRE2. */
qg_status qg_tok_regex_init(qg_tokenizer *t, qg_error *err);
void qg_tok_regex_free(qg_tokenizer *t);

/* The character classes of the pre-tokenizer regex, for tests that check
 * them against llama.cpp's tables code point by code point. */
enum {
    QG_TOK_CLASS_WS = 1, /* \s as the regex spells it */
    QG_TOK_CLASS_L = 2,  /* \p{L} as the regex spells it */
    QG_TOK_CLASS_N = 4,  /* \p{N} */
    QG_TOK_CLASS_M = 8,  /* \p{M} (qwen35 only) */
};
/* out[i] = classes of code point first + i, for i < count (surrogates
 * get 0: the regex never sees one).  Compiles its own patterns: slow,
 * tests only.  QG_ERR_UNSUPPORTED without PCRE2. */
qg_status qg_tok_classify(uint32_t first, uint32_t count, uint8_t *out,
                          qg_error *err);

#endif
