/*
 * test_json.c - the JSON parser (frontends/qg_json.h).
 *
 * Values are checked against what the text says (numbers against strtod's
 * float64 reading of the same text, exact equality: both must be correctly
 * rounded), strings against independently written UTF-8 bytes, random
 * documents round-trip through a serializer written here, and every error
 * case checks the status, the label and the byte offset in the message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "frontends/qg_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static qg_json_doc *parse_ok(const char *text) {
    qg_error err = {0};
    qg_json_doc *d = qg_json_parse(text, strlen(text), "t.json", 0, &err);
    if (!d) fail_msg("parse of '%s' failed: %s", text, err.msg);
    return d;
}

static void test_scalars(void **state) {
    (void)state;
    qg_json_doc *d = parse_ok(" [null, true, false, 0, -0, 12, -7, 1.5, 1.5e3, 2E-2, -3.25e+2,"
                              " 123456789012, 0.1] ");
    const qg_json *a = qg_json_root(d);
    assert_int_equal(a->type, QG_JSON_ARRAY);
    assert_int_equal(a->n, 13);
    assert_int_equal(a->items[0].type, QG_JSON_NULL);
    assert_int_equal(a->items[1].type, QG_JSON_BOOL);
    assert_true(a->items[1].b);
    assert_int_equal(a->items[2].type, QG_JSON_BOOL);
    assert_false(a->items[2].b);
    /* exact: the reference is the float64 value of each literal */
    const double want[] = {0.0, -0.0, 12.0, -7.0, 1.5, 1500.0, 0.02, -325.0, 123456789012.0, 0.1};
    for (int i = 0; i < 10; i++) {
        assert_int_equal(a->items[3 + i].type, QG_JSON_NUMBER);
        assert_true(a->items[3 + i].num == want[i]);
    }
    assert_true(signbit(a->items[4].num));
    int64_t v;
    assert_true(qg_json_int(&a->items[5], 0, 100, &v));
    assert_int_equal(v, 12);
    assert_false(qg_json_int(&a->items[5], 13, 100, &v)); /* below lo */
    assert_false(qg_json_int(&a->items[7], -100, 100, &v)); /* 1.5 */
    assert_false(qg_json_int(&a->items[0], -100, 100, &v)); /* null */
    assert_true(qg_json_int(&a->items[11], 0, INT64_MAX, &v));
    assert_int_equal(v, 123456789012LL);
    qg_json_free(d);
}

/* Random doubles printed with %.17g parse back to the same bits. */
static void test_numbers_roundtrip(void **state) {
    (void)state;
    uint64_t s = 0x1234abcdULL;
    char buf[64];
    for (int i = 0; i < 2000; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        uint64_t bits = s;
        double x;
        memcpy(&x, &bits, 8);
        if (!isfinite(x)) continue;
        snprintf(buf, sizeof buf, "%.17g", x);
        qg_json_doc *d = parse_ok(buf);
        double ref = strtod(buf, NULL); /* float64 reference */
        assert_memory_equal(&qg_json_root(d)->num, &ref, 8);
        qg_json_free(d);
    }
}

static void test_strings(void **state) {
    (void)state;
    const char *text = "[\"plain\", \"q\\\"b\\\\s\\/\\b\\f\\n\\r\\t\", \"\\u0041\\u00e9\\u20AC\","
                       " \"\\ud83d\\ude00\", \"a\\u0000b\", \"caf\xc3\xa9 \xf0\x9f\x98\x80\", \"\"]";
    qg_json_doc *d = parse_ok(text);
    const qg_json *a = qg_json_root(d);
    assert_int_equal(a->n, 7);
    assert_string_equal(qg_json_str(&a->items[0]), "plain");
    assert_int_equal(a->items[1].n, 11);
    assert_memory_equal(a->items[1].str, "q\"b\\s/\b\f\n\r\t", 11);
    const unsigned char u1[] = {'A', 0xc3, 0xa9, 0xe2, 0x82, 0xac};
    assert_int_equal(a->items[2].n, sizeof u1);
    assert_memory_equal(a->items[2].str, u1, sizeof u1);
    const unsigned char u2[] = {0xf0, 0x9f, 0x98, 0x80}; /* U+1F600 */
    assert_int_equal(a->items[3].n, 4);
    assert_memory_equal(a->items[3].str, u2, 4);
    assert_int_equal(a->items[4].n, 3);
    assert_memory_equal(a->items[4].str, "a\0b", 3);
    assert_int_equal(a->items[4].str[3], '\0'); /* still NUL-terminated */
    assert_string_equal(a->items[5].str, "caf\xc3\xa9 \xf0\x9f\x98\x80");
    assert_int_equal(a->items[6].n, 0);
    assert_string_equal(a->items[6].str, "");
    qg_json_free(d);
}

static void test_objects(void **state) {
    (void)state;
    qg_json_doc *d = parse_ok("\xef\xbb\xbf{\"a\": 1, \"b\": {\"c\": [1, 2, {}], \"d\": []}, "
                              "\"a\": 2, \"k\\u0000\": 3}");
    const qg_json *r = qg_json_root(d);
    assert_int_equal(r->type, QG_JSON_OBJECT);
    assert_int_equal(r->n, 4);
    assert_true(qg_json_get(r, "a")->num == 2.0); /* the last duplicate */
    assert_string_equal(r->items[0].key, "a");
    assert_true(r->items[0].num == 1.0);
    const qg_json *b = qg_json_get(r, "b");
    assert_non_null(b);
    const qg_json *c = qg_json_get(b, "c");
    assert_int_equal(c->n, 3);
    assert_true(qg_json_at(c, 1)->num == 2.0);
    assert_int_equal(qg_json_at(c, 2)->type, QG_JSON_OBJECT);
    assert_int_equal(qg_json_at(c, 2)->n, 0);
    assert_null(qg_json_at(c, 3));
    assert_int_equal(qg_json_get(b, "d")->n, 0);
    assert_null(qg_json_get(b, "zz"));
    assert_null(qg_json_get(c, "a")); /* not an object */
    assert_null(qg_json_at(b, 0));    /* not an array */
    assert_null(qg_json_get(NULL, "a"));
    assert_int_equal(r->items[3].key_len, 2);
    assert_memory_equal(r->items[3].key, "k\0", 2);
    assert_null(qg_json_get(r, "k")); /* the key has a NUL: not "k" */
    qg_json_free(d);
}

/* ---- random documents ---------------------------------------------------- */

typedef struct rng { uint64_t s; } rng;
static uint64_t rnext(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

typedef struct sbuf { char *p; size_t n, cap; } sbuf;
static void sput(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void sputs(sbuf *b, const char *s) { sput(b, s, strlen(s)); }

static size_t utf8_enc(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xc0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f)); return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[3] = (char)(0x80 | (cp & 0x3f)); return 4;
}

/* A random string: `want` gets its UTF-8 bytes, `json` its JSON text with a
 * random mix of raw characters, short escapes and \u escapes. */
static void rand_string(rng *r, sbuf *want, sbuf *json) {
    int len = (int)(rnext(r) % 12);
    sputs(json, "\"");
    for (int i = 0; i < len; i++) {
        uint32_t cp;
        switch (rnext(r) % 5) {
        case 0: cp = (uint32_t)(rnext(r) % 0x20); break;          /* control */
        case 1: cp = 0x20 + (uint32_t)(rnext(r) % 0x5f); break;   /* ASCII */
        case 2: cp = 0x80 + (uint32_t)(rnext(r) % 0xd780); break; /* BMP below surrogates */
        case 3: cp = 0xe000 + (uint32_t)(rnext(r) % 0x2000); break;
        default: cp = 0x10000 + (uint32_t)(rnext(r) % 0x100000); break; /* astral */
        }
        char u[4];
        size_t un = utf8_enc(cp, u);
        sput(want, u, un);
        char e[16];
        bool must_escape = cp < 0x20 || cp == '"' || cp == '\\';
        if (must_escape || rnext(r) % 3 == 0) {
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04X", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            } else if (cp == '\n' && rnext(r) % 2) {
                snprintf(e, sizeof e, "\\n");
            } else {
                snprintf(e, sizeof e, "\\u%04x", cp);
            }
            sputs(json, e);
        } else {
            sput(json, u, un);
        }
    }
    sputs(json, "\"");
}

/* The expected tree, kept in simple arrays. */
typedef struct enode {
    qg_json_type type;
    double num;
    bool b;
    sbuf str, key;
    int n;
    struct enode *kids;
} enode;

static void rand_value(rng *r, int depth, enode *e, sbuf *json) {
    int kind = (int)(rnext(r) % (depth > 4 ? 4 : 6));
    char buf[64];
    switch (kind) {
    case 0: e->type = QG_JSON_NULL; sputs(json, "null"); break;
    case 1:
        e->type = QG_JSON_BOOL; e->b = rnext(r) & 1; sputs(json, e->b ? "true" : "false"); break;
    case 2: {
        e->type = QG_JSON_NUMBER;
        int64_t m = (int64_t)(rnext(r) % 2000001) - 1000000;
        int ex = (int)(rnext(r) % 21) - 10;
        snprintf(buf, sizeof buf, "%lldE%d", (long long)m, ex);
        e->num = strtod(buf, NULL); /* float64 reference */
        sputs(json, buf);
        break;
    }
    case 3: e->type = QG_JSON_STRING; rand_string(r, &e->str, json); break;
    default: {
        bool obj = kind == 5;
        e->type = obj ? QG_JSON_OBJECT : QG_JSON_ARRAY;
        e->n = (int)(rnext(r) % 6);
        e->kids = calloc((size_t)e->n + 1, sizeof *e->kids);
        sputs(json, obj ? "{" : "[");
        for (int i = 0; i < e->n; i++) {
            if (i) sputs(json, rnext(r) % 2 ? "," : " ,\n ");
            if (obj) {
                sbuf kj = {0};
                rand_string(r, &e->kids[i].key, &kj);
                sputs(json, kj.p);
                sputs(json, rnext(r) % 2 ? ":" : " : ");
                free(kj.p);
            }
            rand_value(r, depth + 1, &e->kids[i], json);
        }
        sputs(json, obj ? "}" : "]");
    }
    }
}

static void check_tree(const enode *e, const qg_json *v) {
    assert_int_equal(v->type, e->type);
    switch (e->type) {
    case QG_JSON_BOOL: assert_int_equal(v->b, e->b); break;
    case QG_JSON_NUMBER: assert_true(v->num == e->num); break;
    case QG_JSON_STRING:
        assert_int_equal(v->n, e->str.n);
        if (e->str.n) assert_memory_equal(v->str, e->str.p, e->str.n);
        break;
    case QG_JSON_ARRAY:
    case QG_JSON_OBJECT:
        assert_int_equal(v->n, e->n);
        for (int i = 0; i < e->n; i++) {
            if (e->type == QG_JSON_OBJECT) {
                assert_int_equal(v->items[i].key_len, e->kids[i].key.n);
                if (e->kids[i].key.n) assert_memory_equal(v->items[i].key, e->kids[i].key.p, e->kids[i].key.n);
            }
            check_tree(&e->kids[i], &v->items[i]);
        }
        break;
    default: break;
    }
}

static void free_tree(enode *e) {
    for (int i = 0; i < e->n; i++) free_tree(&e->kids[i]);
    free(e->kids);
    free(e->str.p);
    free(e->key.p);
}

static void test_random_documents(void **state) {
    (void)state;
    for (int c = 0; c < 300; c++) {
        rng r = {0xabc0000ULL + (uint64_t)c}; /* a fresh seed per case */
        enode root = {0};
        sbuf json = {0};
        root.type = QG_JSON_ARRAY;
        root.n = 1 + (int)(rnext(&r) % 4);
        root.kids = calloc((size_t)root.n, sizeof *root.kids);
        sputs(&json, "[");
        for (int i = 0; i < root.n; i++) {
            if (i) sputs(&json, ",");
            rand_value(&r, 0, &root.kids[i], &json);
        }
        sputs(&json, "]");
        qg_error err = {0};
        qg_json_doc *d = qg_json_parse(json.p, json.n, "rand", 0, &err);
        if (!d) fail_msg("case %d: %s\n%s", c, err.msg, json.p);
        check_tree(&root, qg_json_root(d));
        qg_json_free(d);
        free_tree(&root);
        free(json.p);
    }
}

/* A big flat array and object: the node stack and the arena grow. */
static void test_large(void **state) {
    (void)state;
    const int n = 200000;
    sbuf j = {0};
    sputs(&j, "{\"arr\": [");
    char buf[64];
    for (int i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "%s[\"t%d\", %d]", i ? "," : "", i, i * 3);
        sputs(&j, buf);
    }
    sputs(&j, "], \"obj\": {");
    for (int i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "%s\"k%d\": %d", i ? "," : "", i, -i);
        sputs(&j, buf);
    }
    sputs(&j, "}}");
    qg_error err = {0};
    qg_json_doc *d = qg_json_parse(j.p, j.n, "large", 0, &err);
    assert_non_null(d);
    const qg_json *arr = qg_json_get(qg_json_root(d), "arr");
    const qg_json *obj = qg_json_get(qg_json_root(d), "obj");
    assert_int_equal(arr->n, n);
    assert_int_equal(obj->n, n);
    for (int i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "t%d", i);
        assert_string_equal(arr->items[i].items[0].str, buf);
        assert_true(arr->items[i].items[1].num == (double)i * 3);
        snprintf(buf, sizeof buf, "k%d", i);
        assert_string_equal(obj->items[i].key, buf);
        assert_true(obj->items[i].num == -(double)i);
    }
    qg_json_free(d);
    free(j.p);
}

/* ---- errors ------------------------------------------------------------------ */

typedef struct bad_case {
    const char *text;
    size_t len; /* 0: strlen */
    size_t at;  /* the byte offset the message must name */
    const char *words;
} bad_case;

static void test_errors(void **state) {
    (void)state;
    static const bad_case CASES[] = {
        {"", 0, 0, "expected a value"},
        {"   ", 0, 3, "end of input"},
        {"[1,]", 0, 3, "expected a value, found ']'"},
        {"{\"a\" 1}", 0, 5, "expected ':'"},
        {"[1 2]", 0, 3, "expected ',' or ']'"},
        {"{\"a\":1 \"b\":2}", 0, 7, "expected ',' or '}'"},
        {"{\"a\":1,}", 0, 7, "expected a string key"},
        {"{1:2}", 0, 1, "expected a string key"},
        {"\"abc", 0, 0, "unterminated string"},
        {"01", 0, 0, "leading zero"},
        {"1.", 0, 2, "after '.'"},
        {"1e", 0, 2, "exponent"},
        {"-", 0, 1, "expected a digit"},
        {"1e999", 0, 0, "out of range"},
        {"NaN", 0, 0, "expected a value"},
        {"tru", 0, 0, "expected a value"},
        {"[1] x", 0, 4, "unexpected 'x'"},
        {"\"\\x\"", 0, 1, "invalid escape"},
        {"\"\\u12G4\"", 0, 1, "\\u escape"},
        {"\"\\ud800\"", 0, 1, "high surrogate"},
        {"\"\\ud800\\u0041\"", 0, 1, "high surrogate"},
        {"\"\\udc00\"", 0, 1, "lone low surrogate"},
        {"\"a\x01\"", 0, 2, "control character 0x01"},
        {"\"a\xc0\xaf\"", 0, 2, "invalid UTF-8"},        /* overlong '/' */
        {"\"\xed\xa0\x80\"", 0, 1, "invalid UTF-8"},     /* encoded surrogate */
        {"\"\xf4\x90\x80\x80\"", 0, 1, "invalid UTF-8"}, /* > U+10FFFF */
        {"\"\xe2\x82\"", 0, 1, "invalid UTF-8"},         /* truncated */
        {"[1]\0", 4, 3, "unexpected byte 0x00"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const bad_case *c = &CASES[i];
        size_t len = c->len ? c->len : strlen(c->text);
        qg_error err = {0};
        qg_json_doc *d = qg_json_parse(c->text, len, "bad.json", 0, &err);
        if (d) fail_msg("case %zu ('%s') parsed", i, c->text);
        assert_int_equal(err.code, QG_ERR_FORMAT);
        char want[64];
        snprintf(want, sizeof want, "bad.json: byte %zu: ", c->at);
        if (strncmp(err.msg, want, strlen(want)) != 0 || !strstr(err.msg, c->words))
            fail_msg("case %zu ('%s'): got '%s', want '%s...%s'", i, c->text, err.msg, want, c->words);
    }
}

static void test_depth(void **state) {
    (void)state;
    char buf[2000];
    /* 10 levels pass with max_depth 10, 11 fail at the 11th '[' (byte 10) */
    for (int depth = 10; depth <= 11; depth++) {
        memset(buf, '[', (size_t)depth);
        memset(buf + depth, ']', (size_t)depth);
        qg_error err = {0};
        qg_json_doc *d = qg_json_parse(buf, (size_t)depth * 2, "deep", 10, &err);
        if (depth == 10) {
            assert_non_null(d);
            qg_json_free(d);
        } else {
            assert_null(d);
            assert_int_equal(err.code, QG_ERR_FORMAT);
            assert_non_null(strstr(err.msg, "deep: byte 10: nesting deeper than 10"));
        }
    }
    /* the default limit */
    memset(buf, '[', 1000);
    memset(buf + 1000, ']', 1000);
    qg_error err = {0};
    assert_null(qg_json_parse(buf, 2000, "deep", 0, &err));
    snprintf(buf, sizeof buf, "byte %d: nesting deeper than %d", QG_JSON_DEFAULT_MAX_DEPTH,
             QG_JSON_DEFAULT_MAX_DEPTH);
    assert_non_null(strstr(err.msg, buf));
}

static void test_file(void **state) {
    (void)state;
    char path[] = "/tmp/qg_test_json_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}}}";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    qg_error err = {0};
    qg_json_doc *d = qg_json_parse_file(path, &err);
    assert_non_null(d);
    const qg_json *v = qg_json_get(qg_json_get(qg_json_root(d), "model"), "vocab");
    assert_int_equal(v->n, 2);
    assert_string_equal(v->items[1].key, "b");
    qg_json_free(d);
    /* bad content names the file */
    FILE *f = fopen(path, "w");
    fputs("{\"a\": }", f);
    fclose(f);
    assert_null(qg_json_parse_file(path, &err));
    assert_int_equal(err.code, QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "byte 6"));
    unlink(path);
    assert_null(qg_json_parse_file(path, &err));
    assert_int_equal(err.code, QG_ERR_IO);
    assert_non_null(strstr(err.msg, path));
    qg_json_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),    cmocka_unit_test(test_numbers_roundtrip),
        cmocka_unit_test(test_strings),    cmocka_unit_test(test_objects),
        cmocka_unit_test(test_random_documents), cmocka_unit_test(test_large),
        cmocka_unit_test(test_errors),     cmocka_unit_test(test_depth),
        cmocka_unit_test(test_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
