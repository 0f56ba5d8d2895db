/*
 * qg_tokenizer.c - build the tokenizer from GGUF metadata; lookups,
 * pieces, end-of-generation set, streaming detokenizer.
 *
 * Encoding lives in qg_tokenizer_encode.c.  The rules reproduced here
 * (defaults, which tokens become control, the end-of-generation list)
 * follow llama.cpp's llama_vocab::impl::load; see qg_tokenizer.h.
 */
#include "qg_tokenizer_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

/* ---- small helpers ------------------------------------------------------ */

uint32_t qg_tok_hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    return (uint32_t)(h ^ (h >> 32));
}

/* Printable rendering of s[0..n) for error messages: valid UTF-8 as is,
 * other bytes and controls as \xNN, cut after ~48 bytes. */
static const char *show(const char *s, size_t n, char *buf, size_t cap) {
    size_t w = 0;
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        if (w + 8 >= cap || i >= 48) {
            snprintf(buf + w, cap - w, "...");
            return buf;
        }
        int r = qg_utf8_check(u + i, n - i);
        if (r > 1) {
            memcpy(buf + w, u + i, (size_t)r);
            w += (size_t)r;
            i += (size_t)r;
        } else if (r == 1 && u[i] >= 0x20 && u[i] < 0x7F) {
            buf[w++] = (char)u[i++];
        } else {
            w += (size_t)snprintf(buf + w, cap - w, "\\x%02X", u[i++]);
        }
    }
    buf[w] = '\0';
    return buf;
}

/* GPT-2's bytes_to_unicode: bytes that are printable in Latin-1 map to
 * themselves, the other 68 to U+0100.. in byte order. */
static bool byte_is_identity(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

static void byte_alphabet(uint32_t cp_of_byte[256], int16_t byte_of_cp[324]) {
    int n = 0;
    for (int i = 0; i < 324; i++) byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) {
        cp_of_byte[b] = byte_is_identity(b) ? (uint32_t)b : (uint32_t)(256 + n++);
        byte_of_cp[cp_of_byte[b]] = (int16_t)b;
    }
}

static const char *tok_text(const qg_tokenizer *t, int32_t id, size_t *len) {
    *len = (size_t)(t->text_off[id + 1] - t->text_off[id]);
    return t->text + t->text_off[id];
}

int32_t qg_tokenizer_find(const qg_tokenizer *t, const char *text,
                          size_t len) {
    for (uint32_t i = qg_tok_hash_bytes(text, len) & t->tok_mask;;
         i = (i + 1) & t->tok_mask) {
        int32_t id = t->tok_hash[i];
        if (id < 0) return -1;
        size_t n;
        const char *s = tok_text(t, id, &n);
        if (n == len && memcmp(s, text, len) == 0) return id;
    }
}

static uint32_t pow2_at_least(uint64_t n) {
    uint64_t p = 16;
    while (p < n) p <<= 1;
    return (uint32_t)p;
}

/* ---- loading ------------------------------------------------------------ */

/* Key must be an array of `type`; QG_ERR_MODEL if missing (when
 * required), QG_ERR_FORMAT if of another type. */
static qg_status get_array(const qg_gguf *g, const char *key,
                           qg_gguf_type type, bool required,
                           const qg_gguf_kv **out, qg_error *err) {
    const qg_gguf_kv *kv = qg_gguf_find(g, key);
    *out = NULL;
    if (!kv) {
        if (!required) return QG_OK;
        return qg_error_set(err, QG_ERR_MODEL, "%s: key '%s' is missing",
                            g->path, key);
    }
    if (kv->type != QG_GGUF_ARRAY || kv->arr_type != type)
        return qg_error_set(err, QG_ERR_FORMAT,
                            "%s: key '%s' is %s of %s, expected an array of %s",
                            g->path, key, qg_gguf_type_name(kv->type),
                            kv->type == QG_GGUF_ARRAY
                                ? qg_gguf_type_name(kv->arr_type)
                                : "-",
                            qg_gguf_type_name(type));
    *out = kv;
    return QG_OK;
}

static qg_status load_model_kind(qg_tokenizer *t, const qg_gguf *g,
                                 qg_error *err) {
    char b[160];
    qg_str s;
    qg_status st = qg_gguf_get_str(g, KEY_MODEL, &s, err);
    if (st) return st;
    if (!qg_str_eq(s, "gpt2"))
        return qg_error_set(err, QG_ERR_UNSUPPORTED,
                            "%s: %s = '%s': only 'gpt2' (byte-level BPE) "
                            "is supported",
                            g->path, KEY_MODEL, show(s.ptr, s.len, b, sizeof b));
    if (!qg_gguf_find(g, KEY_PRE))
        return qg_error_set(err, QG_ERR_UNSUPPORTED,
                            "%s: key '%s' is missing (expected 'qwen2')",
                            g->path, KEY_PRE);
    st = qg_gguf_get_str(g, KEY_PRE, &s, err);
    if (st) return st;
    static const char *const qwen2_names[] = {"qwen2", "deepseek-r1-qwen",
                                              "kormo", "f2llmv2", "megrez"};
    for (size_t i = 0; i < QG_ARRAY_LEN(qwen2_names); i++) {
        if (qg_str_eq(s, qwen2_names[i])) {
            t->pre = QG_TOK_PRE_QWEN2;
            return QG_OK;
        }
    }
    if (qg_str_eq(s, "qwen35")) {
        t->pre = QG_TOK_PRE_QWEN35;
        return QG_OK;
    }
    return qg_error_set(err, QG_ERR_UNSUPPORTED,
                        "%s: %s = '%s': unsupported pre-tokenizer (supported: "
                        "qwen2 and its aliases, qwen35)",
                        g->path, KEY_PRE, show(s.ptr, s.len, b, sizeof b));
}

/* Copy the vocabulary and its types; build the text -> id table. */
static qg_status load_tokens(qg_tokenizer *t, const qg_gguf *g,
                             qg_error *err) {
    char b1[160];
    const qg_gguf_kv *kv, *types;
    qg_status st = get_array(g, KEY_TOKENS, QG_GGUF_STRING, true, &kv, err);
    if (st) return st;
    if (kv->arr_n == 0 || kv->arr_n > INT32_MAX - 1)
        return qg_error_set(err, QG_ERR_MODEL, "%s: %s has %llu tokens",
                            g->path, KEY_TOKENS,
                            (unsigned long long)kv->arr_n);
    t->n_vocab = (int32_t)kv->arr_n;
    st = get_array(g, KEY_TYPES, QG_GGUF_INT32, false, &types, err);
    if (st) return st;
    if (types && types->arr_n < kv->arr_n)
        return qg_error_set(err, QG_ERR_MODEL,
                            "%s: %s has %llu entries for %d tokens", g->path,
                            KEY_TYPES, (unsigned long long)types->arr_n,
                            t->n_vocab);

    /* Texts: llama.cpp names an empty token "[EMPTY_<id>]". */
    uint64_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        uint64_t n = qg_gguf_arr_str(kv, (uint64_t)i).len;
        total += n ? n : 24;
    }
    t->text = malloc(total ? total : 1);
    t->text_off = malloc(sizeof(uint64_t) * ((size_t)t->n_vocab + 1));
    t->attr = calloc((size_t)t->n_vocab, sizeof(uint16_t));
    t->eog = calloc((size_t)t->n_vocab, 1);
    t->tok_mask = pow2_at_least(2 * (uint64_t)t->n_vocab) - 1;
    t->tok_hash = malloc(sizeof(int32_t) * ((size_t)t->tok_mask + 1));
    if (!t->text || !t->text_off || !t->attr || !t->eog || !t->tok_hash)
        return qg_error_set(err, QG_ERR_NOMEM,
                            "%s: out of memory for %d tokens", g->path,
                            t->n_vocab);
    memset(t->tok_hash, 0xFF, sizeof(int32_t) * ((size_t)t->tok_mask + 1));
    uint64_t off = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        qg_str s = qg_gguf_arr_str(kv, (uint64_t)i);
        t->text_off[i] = off;
        if (s.len) {
            memcpy(t->text + off, s.ptr, s.len);
            off += s.len;
        } else {
            off += (uint64_t)snprintf(t->text + off, 24, "[EMPTY_%d]", (int)i);
        }
    }
    t->text_off[t->n_vocab] = off;

    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t n;
        const char *s = tok_text(t, i, &n);
        uint32_t h = qg_tok_hash_bytes(s, n) & t->tok_mask;
        for (;; h = (h + 1) & t->tok_mask) {
            int32_t o = t->tok_hash[h];
            if (o < 0) {
                t->tok_hash[h] = i;
                break;
            }
            size_t on;
            const char *os = tok_text(t, o, &on);
            if (on == n && memcmp(os, s, n) == 0)
                return qg_error_set(err, QG_ERR_MODEL,
                                    "%s: %s[%d] = '%s' duplicates token %d",
                                    g->path, KEY_TOKENS, (int)i,
                                    show(s, n, b1, sizeof b1), (int)o);
        }
        int32_t ty = 1; /* normal when there are no types */
        if (types) memcpy(&ty, types->arr_data + 4 * (size_t)i, 4);
        uint16_t a;
        switch (ty) {
        case 1: a = QG_TOKEN_ATTR_NORMAL; break;
        case 2: a = QG_TOKEN_ATTR_UNKNOWN; break;
        case 3: a = QG_TOKEN_ATTR_CONTROL; break;
        case 4: a = QG_TOKEN_ATTR_USER_DEFINED; break;
        case 5: a = QG_TOKEN_ATTR_UNUSED; break;
        case 6: a = QG_TOKEN_ATTR_BYTE; break;
        default: a = QG_TOKEN_ATTR_UNDEFINED; break;
        }
        t->attr[i] = a;
    }
    return QG_OK;
}

/* The single-byte tokens and the merge table. */
static qg_status load_merges(qg_tokenizer *t, const qg_gguf *g,
                             qg_error *err) {
    char b1[160], b2[160];
    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[324];
    byte_alphabet(cp_of_byte, byte_of_cp);
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        int n = qg_utf8_encode(cp_of_byte[b], u);
        t->byte_tok[b] = qg_tokenizer_find(t, (const char *)u, (size_t)n);
    }

    const qg_gguf_kv *kv;
    qg_status st = get_array(g, KEY_MERGES, QG_GGUF_STRING, true, &kv, err);
    if (st) return st;
    if (kv->arr_n > INT32_MAX)
        return qg_error_set(err, QG_ERR_MODEL, "%s: %s has %llu entries",
                            g->path, KEY_MERGES, (unsigned long long)kv->arr_n);
    t->merge_mask = pow2_at_least(2 * kv->arr_n) - 1;
    t->merge = malloc(sizeof(qg_tok_merge) * ((size_t)t->merge_mask + 1));
    if (!t->merge)
        return qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory for %s",
                            g->path, KEY_MERGES);
    for (uint32_t i = 0; i <= t->merge_mask; i++) t->merge[i].left = -1;

    char *buf = NULL;
    size_t buf_cap = 0;
    for (uint64_t r = 0; r < kv->arr_n; r++) {
        qg_str s = qg_gguf_arr_str(kv, r);
        /* llama.cpp splits at the first space after the first byte. */
        const char *sp =
            s.len > 1 ? memchr(s.ptr + 1, ' ', (size_t)s.len - 1) : NULL;
        if (!sp) {
            free(buf);
            return qg_error_set(err, QG_ERR_MODEL,
                                "%s: %s[%llu] = '%s': no space between the "
                                "two parts",
                                g->path, KEY_MERGES, (unsigned long long)r,
                                show(s.ptr, s.len, b1, sizeof b1));
        }
        size_t nl = (size_t)(sp - s.ptr), nr = (size_t)s.len - nl - 1;
        if (nl + nr > buf_cap) {
            free(buf);
            buf_cap = 2 * (nl + nr);
            buf = malloc(buf_cap);
            if (!buf)
                return qg_error_set(err, QG_ERR_NOMEM,
                                    "%s: out of memory for %s", g->path,
                                    KEY_MERGES);
        }
        memcpy(buf, s.ptr, nl);
        memcpy(buf + nl, sp + 1, nr);
        int32_t left = qg_tokenizer_find(t, buf, nl);
        int32_t right = qg_tokenizer_find(t, buf + nl, nr);
        int32_t result = qg_tokenizer_find(t, buf, nl + nr);
        const char *missing = NULL;
        size_t mlen = 0;
        if (left < 0) missing = buf, mlen = nl;
        else if (right < 0) missing = buf + nl, mlen = nr;
        else if (result < 0) missing = buf, mlen = nl + nr;
        if (missing) {
            qg_error_set(err, QG_ERR_MODEL,
                         "%s: %s[%llu] = '%s': token '%s' is not in the "
                         "vocabulary",
                         g->path, KEY_MERGES, (unsigned long long)r,
                         show(s.ptr, s.len, b1, sizeof b1),
                         show(missing, mlen, b2, sizeof b2));
            free(buf);
            return QG_ERR_MODEL;
        }
        if (qg_tok_merge_find(t, left, right)) continue; /* first rank wins */
        uint64_t k = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
        k ^= k >> 33;
        k *= 0xff51afd7ed558ccdULL;
        k ^= k >> 33;
        uint32_t h = (uint32_t)k & t->merge_mask;
        while (t->merge[h].left >= 0) h = (h + 1) & t->merge_mask;
        t->merge[h] = (qg_tok_merge){left, right, (int32_t)r, result};
    }
    free(buf);
    return QG_OK;
}

/* Optional token-id key: absent leaves *id; present must be < n_vocab. */
static qg_status get_id(const qg_tokenizer *t, const qg_gguf *g,
                        const char *key, int32_t *id, bool *found,
                        qg_error *err) {
    if (found) *found = false;
    if (!qg_gguf_find(g, key)) return QG_OK;
    uint32_t v;
    qg_status st = qg_gguf_get_u32(g, key, &v, err);
    if (st) return st;
    if (v >= (uint32_t)t->n_vocab)
        return qg_error_set(err, QG_ERR_MODEL,
                            "%s: %s = %u is out of range (vocabulary of %d)",
                            g->path, key, v, t->n_vocab);
    *id = (int32_t)v;
    if (found) *found = true;
    return QG_OK;
}

static qg_status get_bool(const qg_gguf *g, const char *key, bool *out,
                          qg_error *err) {
    const qg_gguf_kv *kv = qg_gguf_find(g, key);
    if (!kv) return QG_OK;
    if (kv->type != QG_GGUF_BOOL)
        return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' is %s, not bool",
                            g->path, key, qg_gguf_type_name(kv->type));
    *out = kv->v.u64 != 0;
    return QG_OK;
}

/* The first text of `list` (in list order) that is a token, made
 * control; -1 if none.  (llama.cpp takes the first one its hash map
 * yields; vocabularies with several such texts, like Qwen's <|im_end|>
 * and <|endoftext|> for EOT, may differ in the id picked, not in the
 * end-of-generation set or the token attributes.) */
static int32_t detect(qg_tokenizer *t, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = qg_tokenizer_find(t, list[i], strlen(list[i]));
        if (id >= 0) {
            t->attr[id] |= QG_TOKEN_ATTR_CONTROL;
            return id;
        }
    }
    return -1;
}

#define DETECT(list) detect(t, list, QG_ARRAY_LEN(list))

/* Special ids, llama.cpp's auto-detection by text and the end-of-
 * generation set (llama_vocab::impl::load, "special tokens"). */
static qg_status load_specials(qg_tokenizer *t, const qg_gguf *g,
                               qg_error *err) {
    /* Defaults of llama.cpp's "gpt2" model: bos = eos = 11. */
    t->bos = t->eos = t->n_vocab > 11 ? 11 : -1;
    t->eot = t->eom = t->pad = -1;
    int32_t fim_pad = -1, fim_rep = -1, fim_sep = -1, unused = -1;
    bool has_eot, has_eom, has_pre, has_suf, has_mid, has_pad, has_rep, has_sep;
    qg_status st;
    if ((st = get_id(t, g, "tokenizer.ggml.bos_token_id", &t->bos, NULL, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.eos_token_id", &t->eos, NULL, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.eot_token_id", &t->eot, &has_eot, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.eom_token_id", &t->eom, &has_eom, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.padding_token_id", &t->pad, NULL, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.fim_pre_token_id", &unused, &has_pre, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.fim_suf_token_id", &unused, &has_suf, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.fim_mid_token_id", &unused, &has_mid, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.fim_pad_token_id", &fim_pad, &has_pad, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.fim_rep_token_id", &fim_rep, &has_rep, err)) ||
        (st = get_id(t, g, "tokenizer.ggml.fim_sep_token_id", &fim_sep, &has_sep, err)))
        return st;
    t->add_bos = t->add_eos = false;
    if ((st = get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) ||
        (st = get_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err)))
        return st;

    static const char *const eot_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
        "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
        "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
        "<end_of_utterance>"};
    static const char *const eom_texts[] = {"<|eom_id|>"};
    static const char *const pre_texts[] = {
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
        "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>",
        "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"};
    static const char *const suf_texts[] = {
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
        "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>",
        "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"};
    static const char *const mid_texts[] = {
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>",
        "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>",
        "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"};
    static const char *const pad_texts[] = {"<|fim_pad|>", "<fim-pad>",
                                            "<fim_pad>", "<PAD>", "[PAD]"};
    static const char *const rep_texts[] = {"<|fim_repo|>", "<|repo_name|>",
                                            "<fim-repo>", "<REPO>",
                                            "<reponame>"};
    static const char *const sep_texts[] = {"<|file_sep|>"};
    static const char *const eog_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
        "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
        "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
        "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
        "[e~["};
    /* gpt-oss: always rendered, never cut as control. */
    static const char *const user_texts[] = {"<|channel|>", "<|message|>",
                                             "<|start|>", "<|constrain|>"};

    if (!has_eot) t->eot = DETECT(eot_texts);
    if (!has_eom) t->eom = DETECT(eom_texts);
    if (!has_pre) DETECT(pre_texts);
    if (!has_suf) DETECT(suf_texts);
    if (!has_mid) DETECT(mid_texts);
    if (!has_pad) fim_pad = DETECT(pad_texts);
    if (!has_rep) fim_rep = DETECT(rep_texts);
    if (!has_sep) fim_sep = DETECT(sep_texts);

    for (size_t i = 0; i < QG_ARRAY_LEN(eog_texts); i++) {
        int32_t id = qg_tokenizer_find(t, eog_texts[i], strlen(eog_texts[i]));
        if (id < 0) continue;
        t->eog[id] = 1;
        t->attr[id] |= QG_TOKEN_ATTR_CONTROL;
    }
    for (size_t i = 0; i < QG_ARRAY_LEN(user_texts); i++) {
        int32_t id = qg_tokenizer_find(t, user_texts[i], strlen(user_texts[i]));
        if (id >= 0) t->attr[id] = QG_TOKEN_ATTR_USER_DEFINED;
    }
    const int32_t more[] = {fim_pad, fim_rep, fim_sep, t->eos, t->eot, t->eom};
    for (size_t i = 0; i < QG_ARRAY_LEN(more); i++)
        if (more[i] >= 0) t->eog[more[i]] = 1;
    return QG_OK;
}

/* Order of special tokens: text length descending, then id ascending.
 * qsort has no context argument, so each element carries its length. */
typedef struct special_key {
    uint64_t len;
    int32_t id;
} special_key;

static int cmp_special(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static qg_status build_special_list(qg_tokenizer *t, qg_error *err) {
    const uint16_t want = QG_TOKEN_ATTR_CONTROL | QG_TOKEN_ATTR_USER_DEFINED |
                          QG_TOKEN_ATTR_UNKNOWN;
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) n += (t->attr[i] & want) != 0;
    special_key *keys = malloc(sizeof(special_key) * (size_t)(n ? n : 1));
    t->special = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (!keys || !t->special) {
        free(keys);
        return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    }
    n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (!(t->attr[i] & want)) continue;
        keys[n].len = t->text_off[i + 1] - t->text_off[i];
        keys[n++].id = i;
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_special);
    for (int32_t i = 0; i < n; i++) t->special[i] = keys[i].id;
    t->n_special = n;
    free(keys);
    return QG_OK;
}

/* Rendered bytes of every token (llama_token_to_piece, special = true). */
static qg_status build_pieces(qg_tokenizer *t, const qg_gguf *g,
                              qg_error *err) {
    char b1[160];
    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[324];
    byte_alphabet(cp_of_byte, byte_of_cp);
    /* Normal tokens shrink when decoded, except for llama.cpp's
     * "[UNK_BYTE_0x..<text>]" marks; the buffer grows when needed. */
    uint64_t cap = t->text_off[t->n_vocab] + 1;
    t->piece = malloc(cap);
    t->piece_off = malloc(sizeof(uint64_t) * ((size_t)t->n_vocab + 1));
    if (!t->piece || !t->piece_off)
        return qg_error_set(err, QG_ERR_NOMEM, "out of memory for pieces");
    const uint16_t as_text = QG_TOKEN_ATTR_UNKNOWN | QG_TOKEN_ATTR_CONTROL |
                             QG_TOKEN_ATTR_USER_DEFINED;
    uint64_t w = 0;
    t->max_piece = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n;
        const char *s = tok_text(t, id, &n);
        t->piece_off[id] = w;
        uint64_t need = w + (uint64_t)n * (n + 24) + 1; /* worst case */
        if (need > cap) {
            while (cap < need) cap *= 2;
            char *np = realloc(t->piece, cap);
            if (!np)
                return qg_error_set(err, QG_ERR_NOMEM,
                                    "out of memory for pieces");
            t->piece = np;
        }
        uint16_t a = t->attr[id];
        if (a & as_text) {
            memcpy(t->piece + w, s, n);
            w += n;
        } else if (a & QG_TOKEN_ATTR_NORMAL) {
            const uint8_t *u = (const uint8_t *)s;
            for (size_t i = 0; i < n;) {
                uint32_t cp;
                size_t k = qg_utf8_decode_lax(u + i, n - i, &cp);
                i += k;
                if (cp < 324 && byte_of_cp[cp] >= 0) {
                    t->piece[w++] = (char)byte_of_cp[cp];
                    continue;
                }
                uint8_t e[4];
                int ne = qg_utf8_encode(cp, e);
                w += (uint64_t)sprintf(t->piece + w, "[UNK_BYTE_0x");
                for (int j = 0; j < ne; j++)
                    w += (uint64_t)sprintf(t->piece + w, "%02x", e[j]);
                memcpy(t->piece + w, s, n);
                w += n;
                t->piece[w++] = ']';
            }
        } else if (a & QG_TOKEN_ATTR_BYTE) {
            /* "<0xAB>": llama.cpp reads the two hex digits at offset 3. */
            char hex[3] = {0, 0, 0};
            if (n < 3)
                return qg_error_set(err, QG_ERR_MODEL,
                                    "%s: %s[%d] = '%s' is a byte token but "
                                    "not of the form <0xAB>",
                                    g->path, KEY_TOKENS, (int)id,
                                    show(s, n, b1, sizeof b1));
            memcpy(hex, s + 3, n - 3 < 2 ? n - 3 : 2);
            t->piece[w++] = (char)strtol(hex, NULL, 16);
        }
        size_t pn = (size_t)(w - t->piece_off[id]);
        if (pn > t->max_piece) t->max_piece = pn;
    }
    t->piece_off[t->n_vocab] = w;
    return QG_OK;
}

qg_tokenizer *qg_tokenizer_from_gguf(const qg_gguf *g, qg_error *err) {
    qg_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", g->path);
        return NULL;
    }
    if (load_model_kind(t, g, err) || load_tokens(t, g, err) ||
        load_merges(t, g, err) || load_specials(t, g, err) ||
        build_special_list(t, err) || build_pieces(t, g, err) ||
        qg_tok_regex_init(t, err)) {
        qg_tokenizer_free(t);
        return NULL;
    }
    return t;
}

void qg_tokenizer_free(qg_tokenizer *t) {
    if (!t) return;
    qg_tok_regex_free(t);
    free(t->text);
    free(t->text_off);
    free(t->piece);
    free(t->piece_off);
    free(t->attr);
    free(t->eog);
    free(t->tok_hash);
    free(t->merge);
    free(t->special);
    free(t);
}

/* ---- queries ------------------------------------------------------------ */

int32_t qg_tokenizer_n_vocab(const qg_tokenizer *t) { return t->n_vocab; }

static bool in_range(const qg_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab;
}

const char *qg_tokenizer_piece(const qg_tokenizer *t, int32_t id,
                               bool special, size_t *len) {
    if (!in_range(t, id)) {
        *len = 0;
        return NULL;
    }
    const char *p = t->piece + t->piece_off[id];
    *len = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
    if (!special &&
        (t->attr[id] & (QG_TOKEN_ATTR_UNKNOWN | QG_TOKEN_ATTR_CONTROL)))
        *len = 0;
    return p;
}

size_t qg_tokenizer_max_piece(const qg_tokenizer *t) { return t->max_piece; }

const char *qg_tokenizer_text(const qg_tokenizer *t, int32_t id,
                              size_t *len) {
    if (!in_range(t, id)) {
        *len = 0;
        return NULL;
    }
    return tok_text(t, id, len);
}

uint32_t qg_tokenizer_attr(const qg_tokenizer *t, int32_t id) {
    return in_range(t, id) ? t->attr[id] : 0;
}

bool qg_tokenizer_is_eog(const qg_tokenizer *t, int32_t id) {
    return in_range(t, id) && t->eog[id];
}

int32_t qg_tokenizer_bos(const qg_tokenizer *t) { return t->bos; }
int32_t qg_tokenizer_eos(const qg_tokenizer *t) { return t->eos; }
int32_t qg_tokenizer_eot(const qg_tokenizer *t) { return t->eot; }
int32_t qg_tokenizer_pad(const qg_tokenizer *t) { return t->pad; }
bool qg_tokenizer_add_bos(const qg_tokenizer *t) { return t->add_bos; }
bool qg_tokenizer_add_eos(const qg_tokenizer *t) { return t->add_eos; }

/* ---- streaming detokenizer ---------------------------------------------- */

qg_status qg_detok_stream_init(qg_detok_stream *s, const qg_tokenizer *tok,
                               bool special, qg_error *err) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->special = special;
    s->cap = QG_UTF8_STREAM_OUT_CAP(tok->max_piece);
    s->buf = malloc(s->cap);
    if (!s->buf)
        return qg_error_set(err, QG_ERR_NOMEM,
                            "detokenizer: out of memory (%zu bytes)", s->cap);
    return QG_OK;
}

void qg_detok_stream_free(qg_detok_stream *s) {
    free(s->buf);
    s->buf = NULL;
}

qg_status qg_detok_stream_push(qg_detok_stream *s, int32_t id,
                               const char **out, size_t *n, qg_error *err) {
    size_t len;
    const char *p = qg_tokenizer_piece(s->tok, id, s->special, &len);
    *out = (const char *)s->buf;
    *n = 0;
    if (!p)
        return qg_error_set(err, QG_ERR_RANGE,
                            "token id %d is out of range (vocabulary of %d)",
                            (int)id, (int)s->tok->n_vocab);
    *n = qg_utf8_stream_feed(&s->utf8, (const uint8_t *)p, len, s->buf);
    return QG_OK;
}

void qg_detok_stream_flush(qg_detok_stream *s, const char **out, size_t *n) {
    *out = (const char *)s->buf;
    *n = qg_utf8_stream_flush(&s->utf8, s->buf);
}
