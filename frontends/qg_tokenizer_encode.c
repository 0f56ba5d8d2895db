/*
 * qg_tokenizer_encode.c - text -> token ids: special-token split, UTF-8
 * canonicalization, the Qwen2 pre-tokenizer regex (PCRE2), byte-level BPE.
 * The rules are llama.cpp's; see qg_tokenizer.h for the steps.
 */
#include "qg_tokenizer_impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef QG_HAVE_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

/* ---- the pre-tokenizer regex -------------------------------------------- */

/*
 * Character classes pinned to llama.cpp's Unicode tables (Unicode 15.1):
 *   WS  Unicode White_Space, which is llama.cpp's whitespace set.  (PCRE2's
 *       own \s also matches U+180E, a format character since Unicode 6.3.)
 *   LX  \p{L} plus the letters added in Unicode 15.0/15.1 (Kawi, Nag
 *       Mundari, Cyrillic Extended-D, CJK Extensions H and I, ...), which
 *       PCRE2 10.42's Unicode 14 tables lack.  Harmless on newer PCRE2.
 *   NX  \p{N} plus Unicode 15.0's digits (Kawi, Kaktovik, Nag Mundari).
 *   MX  \p{M} plus Unicode 15.0's marks (for qwen35 only).
 */
#define WS                                                                  \
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"     \
    "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define LX                                                                  \
    "\\p{L}\\x{1123F}-\\x{11240}\\x{11F02}\\x{11F04}-\\x{11F10}"            \
    "\\x{11F12}-\\x{11F33}\\x{1342F}\\x{13441}-\\x{13446}\\x{1B132}"        \
    "\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}"                  \
    "\\x{1E4D0}-\\x{1E4EB}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}"                  \
    "\\x{31350}-\\x{323AF}"
#define NX                                                                  \
    "\\p{N}\\x{11F50}-\\x{11F59}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}"
#define MX                                                                  \
    "\\p{M}\\x{CF3}\\x{ECE}\\x{10EFD}-\\x{10EFF}\\x{11241}"                 \
    "\\x{11F00}-\\x{11F01}\\x{11F03}\\x{11F34}-\\x{11F3A}"                  \
    "\\x{11F3E}-\\x{11F42}\\x{13440}\\x{13447}-\\x{13455}\\x{1E08F}"        \
    "\\x{1E4EC}-\\x{1E4EF}"

#define CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
/* The tail shared by both: whitespace rules, then any single character
 * (never reached for valid input: every character matches one rule). */
#define WS_TAIL                                                             \
    "|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+|(?s:.)"

/* llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2:
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}
 * | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static const char k_pattern_qwen2[] =
    CONTRACTIONS "|[^\\r\\n" LX NX "]?[" LX "]+|[" NX "]| ?[^" WS LX NX
                 "]+[\\r\\n]*" WS_TAIL;

/* llama.cpp LLAMA_VOCAB_PRE_TYPE_QWEN35: letter runs take marks too. */
static const char k_pattern_qwen35[] =
    CONTRACTIONS "|[^\\r\\n" LX NX "]?[" LX MX "]+|[" NX "]| ?[^" WS LX MX NX
                 "]+[\\r\\n]*" WS_TAIL;

qg_status qg_tok_regex_init(qg_tokenizer *t, qg_error *err) {
#ifndef QG_HAVE_PCRE2
    (void)t;
    (void)k_pattern_qwen2;
    (void)k_pattern_qwen35;
    return qg_error_set(err, QG_ERR_UNSUPPORTED,
                        "tokenizer: built without PCRE2 (install libpcre2-dev "
                        "and rebuild)");
#else
    const char *pat =
        t->pre == QG_TOK_PRE_QWEN35 ? k_pattern_qwen35 : k_pattern_qwen2;
    int code;
    PCRE2_SIZE where;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &code, &where, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return qg_error_set(err, QG_ERR_BACKEND,
                            "tokenizer: PCRE2 rejects the pre-tokenizer regex "
                            "at offset %zu: %s",
                            (size_t)where, (const char *)msg);
    }
    /* JIT where the platform has it; the interpreter otherwise. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) {
        pcre2_code_free(re);
        return qg_error_set(err, QG_ERR_NOMEM,
                            "tokenizer: out of memory for PCRE2 match data");
    }
    t->re = re;
    t->re_match = md;
    return QG_OK;
#endif
}

void qg_tok_regex_free(qg_tokenizer *t) {
#ifdef QG_HAVE_PCRE2
    pcre2_match_data_free((pcre2_match_data *)t->re_match);
    pcre2_code_free((pcre2_code *)t->re);
#endif
    t->re = t->re_match = NULL;
}

qg_status qg_tok_classify(uint32_t first, uint32_t count, uint8_t *out,
                          qg_error *err) {
#ifndef QG_HAVE_PCRE2
    (void)first;
    (void)count;
    (void)out;
    return qg_error_set(err, QG_ERR_UNSUPPORTED,
                        "tokenizer: built without PCRE2");
#else
    static const char *const pats[4] = {"[" WS "]", "[" LX "]", "[" NX "]",
                                        "[" MX "]"};
    pcre2_code *re[4] = {0};
    pcre2_match_data *md = NULL;
    qg_status st = QG_OK;
    for (int k = 0; k < 4 && !st; k++) {
        int code;
        PCRE2_SIZE where;
        re[k] = pcre2_compile((PCRE2_SPTR)pats[k], PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &code,
                              &where, NULL);
        if (!re[k])
            st = qg_error_set(err, QG_ERR_BACKEND,
                              "tokenizer: class pattern %d: PCRE2 error %d", k,
                              code);
    }
    if (!st && !(md = pcre2_match_data_create(2, NULL)))
        st = qg_error_set(err, QG_ERR_NOMEM, "tokenizer: out of memory");
    for (uint32_t i = 0; i < count && !st; i++) {
        uint32_t cp = first + i;
        out[i] = 0;
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        uint8_t u[4];
        int n = qg_utf8_encode(cp, u);
        for (int k = 0; k < 4; k++)
            if (pcre2_match(re[k], u, (PCRE2_SIZE)n, 0, 0, md, NULL) > 0)
                out[i] |= (uint8_t)(1u << k);
    }
    pcre2_match_data_free(md);
    for (int k = 0; k < 4; k++) pcre2_code_free(re[k]);
    return st;
#endif
}

/* ---- encoder state ------------------------------------------------------ */

/* A piece of the input: raw text to pre-tokenize, or one special token. */
typedef struct frag {
    size_t off, len; /* bytes of the input (raw text) */
    int32_t tok;     /* >= 0: a special token; -1: raw text */
} frag;

/* A candidate merge of symbols left and right (adjacent when pushed). */
typedef struct bigram {
    int32_t rank, left, right;
    int32_t left_id, right_id; /* ids when pushed; stale if either changed */
} bigram;

typedef struct enc {
    const qg_tokenizer *t;
    int32_t *out;
    int cap;
    int64_t n; /* ids produced so far (written while n < cap) */
    qg_error *err;

    uint8_t *canon, *rx; /* (3 * fragment bytes) see encode_text */
    size_t text_cap;

    int32_t *sym_id, *sym_prev, *sym_next; /* (sym_cap) one per word byte */
    size_t sym_cap;
    bigram *heap; /* (3 * sym_cap) min-heap by (rank, left) */
    size_t n_heap;
} enc;

#define SYM_DEAD (-3) /* id of a symbol merged into its left neighbour */

static void emit(enc *e, int32_t id) {
    if (e->n < e->cap) e->out[e->n] = id;
    e->n++;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* ---- BPE ---------------------------------------------------------------- */

static bool bigram_less(const bigram *a, const bigram *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(enc *e, bigram b) {
    size_t i = e->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_less(&b, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = b;
}

static bigram heap_pop(enc *e) {
    bigram top = e->heap[0];
    bigram last = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!bigram_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

/* Queue the merge of symbols l and r (adjacent) if the pair has a rank. */
static void try_pair(enc *e, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t a = e->sym_id[l], b = e->sym_id[r];
    if (a < 0 || b < 0) return;
    const qg_tok_merge *m = qg_tok_merge_find(e->t, a, b);
    if (m) heap_push(e, (bigram){m->rank, l, r, a, b});
}

/* Byte-level BPE of one word w[0..n) (n >= 1): start from one symbol per
 * byte, repeatedly merge the lowest-ranked adjacent pair (ties: leftmost),
 * emit the final symbols.  A byte without a token is dropped, as in
 * llama.cpp. */
static bool bpe_word(enc *e, const uint8_t *w, size_t n) {
    const qg_tokenizer *t = e->t;
    if (n == 1) {
        if (t->byte_tok[w[0]] >= 0) emit(e, t->byte_tok[w[0]]);
        return true;
    }
    if (n > e->sym_cap) {
        size_t c = QG_MAX(n, 2 * e->sym_cap);
        int32_t *a = realloc(e->sym_id, c * sizeof(int32_t));
        if (a) e->sym_id = a;
        int32_t *p = realloc(e->sym_prev, c * sizeof(int32_t));
        if (p) e->sym_prev = p;
        int32_t *x = realloc(e->sym_next, c * sizeof(int32_t));
        if (x) e->sym_next = x;
        bigram *h = realloc(e->heap, 3 * c * sizeof(bigram));
        if (h) e->heap = h;
        if (!a || !p || !x || !h) return false;
        e->sym_cap = c;
    }
    for (size_t i = 0; i < n; i++) {
        e->sym_id[i] = t->byte_tok[w[i]];
        e->sym_prev[i] = (int32_t)i - 1;
        e->sym_next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    e->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++) try_pair(e, (int32_t)i, (int32_t)i + 1);
    while (e->n_heap) {
        bigram b = heap_pop(e);
        if (e->sym_id[b.left] != b.left_id ||
            e->sym_id[b.right] != b.right_id ||
            e->sym_next[b.left] != b.right)
            continue; /* stale: a neighbour changed since it was queued */
        const qg_tok_merge *m = qg_tok_merge_find(t, b.left_id, b.right_id);
        int32_t nx = e->sym_next[b.right];
        e->sym_id[b.left] = m->result;
        e->sym_id[b.right] = SYM_DEAD;
        e->sym_next[b.left] = nx;
        if (nx >= 0) e->sym_prev[nx] = b.left;
        try_pair(e, e->sym_prev[b.left], b.left);
        try_pair(e, b.left, nx);
    }
    for (int32_t i = 0; i >= 0; i = e->sym_next[i])
        if (e->sym_id[i] >= 0) emit(e, e->sym_id[i]);
    return true;
}

/* ---- pre-tokenization --------------------------------------------------- */

#ifdef QG_HAVE_PCRE2
/* Split rx[0..n) with the regex and BPE each word of canon (same byte
 * offsets).  Unmatched gaps (none for valid input) are words too. */
static qg_status split_words(enc *e, const uint8_t *canon, const uint8_t *rx,
                             size_t n) {
    pcre2_code *re = (pcre2_code *)e->t->re;
    pcre2_match_data *md = (pcre2_match_data *)e->t->re_match;
    size_t start = 0;
    while (start < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)rx, n, start, PCRE2_NO_UTF_CHECK,
                             md, NULL);
        size_t a, b;
        if (rc == PCRE2_ERROR_NOMATCH) {
            a = b = n;
        } else if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return qg_error_set(e->err, QG_ERR_BACKEND,
                                "tokenizer: PCRE2 match failed at byte %zu: %s",
                                start, (const char *)msg);
        } else {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            a = ov[0];
            b = ov[1];
        }
        if (a > start && !bpe_word(e, canon + start, a - start))
            return qg_error_set(e->err, QG_ERR_NOMEM, "tokenizer: out of memory");
        if (b > a && !bpe_word(e, canon + a, b - a))
            return qg_error_set(e->err, QG_ERR_NOMEM, "tokenizer: out of memory");
        if (b == start) { /* empty match (cannot happen): step one char */
            int k = qg_utf8_check(rx + start, n - start);
            b = start + (size_t)(k > 0 ? k : 1);
            if (!bpe_word(e, canon + start, b - start))
                return qg_error_set(e->err, QG_ERR_NOMEM,
                                    "tokenizer: out of memory");
        }
        start = b;
    }
    return QG_OK;
}
#endif

/* Tokenize one piece of raw text s[0..n) (no special tokens in it).
 * Strict UTF-8 is used as is.  Otherwise the text is decoded as llama.cpp
 * decodes it and re-encoded (canon: invalid bytes become U+FFFD, overlong
 * forms shrink); the regex sees rx, which is canon with each surrogate
 * replaced by U+FFFD (same length, same class for the regex: neither
 * letter, digit nor space), since PCRE2 refuses surrogates. */
static qg_status encode_text(enc *e, const uint8_t *s, size_t n) {
#ifndef QG_HAVE_PCRE2
    (void)s;
    (void)n;
    (void)bpe_word;
    return qg_error_set(e->err, QG_ERR_UNSUPPORTED,
                        "tokenizer: built without PCRE2");
#else
    if (qg_utf8_valid(s, n)) return split_words(e, s, s, n);
    size_t c1 = e->text_cap, c2 = e->text_cap;
    if (!grow((void **)&e->canon, &c1, 3 * n, 1) ||
        !grow((void **)&e->rx, &c2, 3 * n, 1))
        return qg_error_set(e->err, QG_ERR_NOMEM, "tokenizer: out of memory");
    e->text_cap = c1 < c2 ? c1 : c2;
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += qg_utf8_decode_lax(s + i, n - i, &cp);
        int k = qg_utf8_encode(cp, e->canon + w);
        if (cp >= 0xD800 && cp <= 0xDFFF)
            qg_utf8_encode(QG_UTF8_REPLACEMENT, e->rx + w);
        else
            memcpy(e->rx + w, e->canon + w, (size_t)k);
        w += (size_t)k;
    }
    return split_words(e, e->canon, e->rx, w);
#endif
}

/* ---- special tokens ----------------------------------------------------- */

static bool push_frag(frag **v, size_t *n, size_t *cap, frag f) {
    if (!grow((void **)v, cap, *n + 1, sizeof(frag))) return false;
    (*v)[(*n)++] = f;
    return true;
}

/* Cut the special tokens out of text[0..len) as llama.cpp's
 * tokenizer_st_partition does: for each special token in order (longest
 * first), split every raw fragment at each of its occurrences, left to
 * right.  On success *out holds *n_out fragments (caller frees). */
static qg_status split_special(const qg_tokenizer *t, const char *text,
                               size_t len, bool parse_special, frag **out,
                               size_t *n_out, qg_error *err) {
    frag *a = NULL, *b = NULL;
    size_t na = 0, ca = 0, nb = 0, cb = 0;
    if (!push_frag(&a, &na, &ca, (frag){0, len, -1})) goto nomem;
    for (int32_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (!parse_special &&
            (t->attr[id] & (QG_TOKEN_ATTR_CONTROL | QG_TOKEN_ATTR_UNKNOWN)))
            continue; /* user-defined tokens are cut regardless */
        const char *st = t->text + t->text_off[id];
        size_t sn = (size_t)(t->text_off[id + 1] - t->text_off[id]);
        bool hit = false;
        for (size_t i = 0; i < na && !hit; i++)
            hit = a[i].tok < 0 && a[i].len >= sn &&
                  memmem(text + a[i].off, a[i].len, st, sn) != NULL;
        if (!hit) continue;
        nb = 0;
        for (size_t i = 0; i < na; i++) {
            frag f = a[i];
            if (f.tok >= 0) {
                if (!push_frag(&b, &nb, &cb, f)) goto nomem;
                continue;
            }
            size_t p = f.off, end = f.off + f.len;
            const char *q;
            while (end - p >= sn &&
                   (q = memmem(text + p, end - p, st, sn)) != NULL) {
                size_t at = (size_t)(q - text);
                if (at > p && !push_frag(&b, &nb, &cb, (frag){p, at - p, -1}))
                    goto nomem;
                if (!push_frag(&b, &nb, &cb, (frag){at, sn, id})) goto nomem;
                p = at + sn;
            }
            if (p < end && !push_frag(&b, &nb, &cb, (frag){p, end - p, -1}))
                goto nomem;
        }
        frag *tv = a;
        a = b;
        b = tv;
        size_t tc = ca;
        ca = cb;
        cb = tc;
        na = nb;
    }
    free(b);
    *out = a;
    *n_out = na;
    return QG_OK;
nomem:
    free(a);
    free(b);
    return qg_error_set(err, QG_ERR_NOMEM, "tokenizer: out of memory");
}

/* ---- entry point -------------------------------------------------------- */

int qg_tokenizer_encode(const qg_tokenizer *t, const char *text, size_t len,
                        bool parse_special, int32_t *out, int cap,
                        qg_error *err) {
    /* Each byte gives at most 3 bytes of canonical text (U+FFFD for an
     * invalid byte), hence at most 3 ids: the count fits an int. */
    if (len > INT32_MAX / 3) {
        qg_error_set(err, QG_ERR_ARG,
                     "tokenizer: text of %zu bytes is too long (limit %d)",
                     len, INT32_MAX / 3);
        return -(int)QG_ERR_ARG;
    }
    enc e = {.t = t, .out = out, .cap = cap < 0 ? 0 : cap, .err = err};
    frag *fr = NULL;
    size_t nfr = 0;
    qg_status st = QG_OK;
    if (len > 0) st = split_special(t, text, len, parse_special, &fr, &nfr, err);
    for (size_t i = 0; i < nfr && !st; i++) {
        if (fr[i].tok >= 0)
            emit(&e, fr[i].tok);
        else
            st = encode_text(&e, (const uint8_t *)text + fr[i].off, fr[i].len);
    }
    free(fr);
    free(e.canon);
    free(e.rx);
    free(e.sym_id);
    free(e.sym_prev);
    free(e.sym_next);
    free(e.heap);
    if (st) return -(int)st;
    return (int)e.n;
}
