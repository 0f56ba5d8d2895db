/* qg_json.c - strict JSON to a read-only DOM (see qg_json.h). */
#include "qg_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena: a list of blocks, bump-allocated, freed all at once ------- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_block;

#define ARENA_BLOCK_BYTES ((size_t)1 << 20)

struct qg_json_doc {
    arena_block *blocks;
    qg_json root;
};

/* Allocate n bytes (8-aligned) from the document's arena; NULL on OOM. */
static void *arena_alloc(qg_json_doc *d, size_t n) {
    n = qg_align_up(n ? n : 1, 8);
    arena_block *b = d->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ARENA_BLOCK_BYTES / 4 ? n : ARENA_BLOCK_BYTES;
        arena_block *nb = malloc(sizeof *nb + cap);
        if (!nb) return NULL;
        nb->used = 0;
        nb->cap = cap;
        if (cap == n && b) {
            /* a big allocation gets its own block behind the current one,
             * so the current block keeps serving small requests */
            nb->next = b->next;
            b->next = nb;
        } else {
            nb->next = b;
            d->blocks = nb;
        }
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

void qg_json_free(qg_json_doc *d) {
    if (!d) return;
    for (arena_block *b = d->blocks; b;) {
        arena_block *n = b->next;
        free(b);
        b = n;
    }
    free(d);
}

/* ---- parser --------------------------------------------------------------- */

typedef struct parser {
    const unsigned char *s;
    size_t len, pos;
    const char *label;
    int max_depth;
    qg_json_doc *doc;
    /* children of the open containers, innermost last */
    qg_json *stack;
    size_t stack_n, stack_cap;
    qg_error *err;
} parser;

/* Record a format error at byte `at`; always returns false. */
__attribute__((format(printf, 3, 4))) static bool fail_at(parser *p, size_t at,
                                                          const char *fmt, ...) {
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    qg_error_set(p->err, QG_ERR_FORMAT, "%s: byte %zu: %s", p->label, at, msg);
    return false;
}

static bool fail_nomem(parser *p) {
    qg_error_set(p->err, QG_ERR_NOMEM, "%s: out of memory while parsing JSON",
                 p->label);
    return false;
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* Describe the byte at pos for messages ("'x'", "byte 0x07", "end of input"). */
static const char *describe(const parser *p, size_t pos, char *buf, size_t n) {
    if (pos >= p->len) return "end of input";
    unsigned char c = p->s[pos];
    if (c >= 0x20 && c < 0x7f)
        snprintf(buf, n, "'%c'", c);
    else
        snprintf(buf, n, "byte 0x%02x", c);
    return buf;
}

static bool push_node(parser *p, const qg_json *v) {
    if (p->stack_n == p->stack_cap) {
        size_t cap = p->stack_cap ? p->stack_cap * 2 : 1024;
        qg_json *ns = realloc(p->stack, cap * sizeof *ns);
        if (!ns) return fail_nomem(p);
        p->stack = ns;
        p->stack_cap = cap;
    }
    p->stack[p->stack_n++] = *v;
    return true;
}

/* Length of a valid UTF-8 sequence starting at s[0] (lead byte >= 0x80)
 * with `avail` bytes available; 0 if invalid (overlong, surrogate, > U+10FFFF,
 * truncated, bad continuation). */
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; }
    else return 0;
    if (avail < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) return 0;
    if (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) return 0;
    return n;
}

static int hex4(const unsigned char *s) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[i];
        int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t put_utf8(unsigned char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/*
 * Parse a string whose opening quote is at p->pos.  On success *out points
 * to the decoded, NUL-terminated UTF-8 in the arena, *out_len is its length
 * and p->pos is just past the closing quote.
 */
static bool parse_string(parser *p, const char **out, uint32_t *out_len) {
    size_t start = p->pos + 1;
    /* find the closing quote: escaped characters are skipped in pairs */
    size_t end = start;
    while (end < p->len && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail_at(p, p->pos, "unterminated string");
    if (end - start > UINT32_MAX) return fail_at(p, p->pos, "string too long");
    /* decoded output is never longer than the raw text */
    unsigned char *o = arena_alloc(p->doc, end - start + 1);
    if (!o) return fail_nomem(p);
    size_t n = 0;
    size_t i = start;
    while (i < end) {
        unsigned char c = p->s[i];
        if (c == '\\') {
            unsigned char e = p->s[i + 1];
            switch (e) {
            case '"': o[n++] = '"'; i += 2; continue;
            case '\\': o[n++] = '\\'; i += 2; continue;
            case '/': o[n++] = '/'; i += 2; continue;
            case 'b': o[n++] = '\b'; i += 2; continue;
            case 'f': o[n++] = '\f'; i += 2; continue;
            case 'n': o[n++] = '\n'; i += 2; continue;
            case 'r': o[n++] = '\r'; i += 2; continue;
            case 't': o[n++] = '\t'; i += 2; continue;
            case 'u': break;
            default: {
                char d[32];
                return fail_at(p, i, "invalid escape '\\' followed by %s",
                               describe(p, i + 1, d, sizeof d));
            }
            }
            int hi = i + 6 <= end ? hex4(p->s + i + 2) : -1;
            if (hi < 0) return fail_at(p, i, "invalid \\u escape (need 4 hex digits)");
            uint32_t cp = (uint32_t)hi;
            size_t esc_at = i;
            i += 6;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return fail_at(p, esc_at, "lone low surrogate \\u%04x", cp);
            if (cp >= 0xd800 && cp <= 0xdbff) {
                int lo = (i + 6 <= end && p->s[i] == '\\' && p->s[i + 1] == 'u')
                             ? hex4(p->s + i + 2)
                             : -1;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return fail_at(p, esc_at,
                                   "high surrogate \\u%04x not followed by a low "
                                   "surrogate escape", cp);
                cp = 0x10000 + ((cp - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
                i += 6;
            }
            n += put_utf8(o + n, cp);
        } else if (c < 0x20) {
            return fail_at(p, i, "raw control character 0x%02x in string", c);
        } else if (c < 0x80) {
            o[n++] = c;
            i++;
        } else {
            size_t k = utf8_seq_len(p->s + i, end - i);
            if (!k) return fail_at(p, i, "invalid UTF-8 in string");
            memcpy(o + n, p->s + i, k);
            n += k;
            i += k;
        }
    }
    o[n] = '\0';
    *out = (const char *)o;
    *out_len = (uint32_t)n;
    p->pos = end + 1;
    return true;
}

/* Parse a number per the JSON grammar at p->pos into v. */
static bool parse_number(parser *p, qg_json *v) {
    size_t st = p->pos, i = st;
    const unsigned char *s = p->s;
    if (i < p->len && s[i] == '-') i++;
    if (i >= p->len || s[i] < '0' || s[i] > '9') {
        char d[32];
        return fail_at(p, i, "expected a digit, found %s", describe(p, i, d, sizeof d));
    }
    if (s[i] == '0') {
        i++;
        if (i < p->len && s[i] >= '0' && s[i] <= '9')
            return fail_at(p, st, "leading zero in number");
    } else {
        while (i < p->len && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < p->len && s[i] == '.') {
        i++;
        if (i >= p->len || s[i] < '0' || s[i] > '9')
            return fail_at(p, i, "expected a digit after '.'");
        while (i < p->len && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < p->len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < p->len && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= p->len || s[i] < '0' || s[i] > '9')
            return fail_at(p, i, "expected a digit in exponent");
        while (i < p->len && s[i] >= '0' && s[i] <= '9') i++;
    }
    size_t n = i - st;
    char small[64];
    char *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf) return fail_nomem(p);
    memcpy(buf, s + st, n);
    buf[n] = '\0';
    errno = 0;
    double x = strtod(buf, NULL);
    int e = errno;
    if (buf != small) free(buf);
    if (e == ERANGE && isinf(x)) return fail_at(p, st, "number out of range");
    v->type = QG_JSON_NUMBER;
    v->num = x;
    p->pos = i;
    return true;
}

static bool match_word(parser *p, const char *w) {
    size_t n = strlen(w);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, w, n) != 0) return false;
    p->pos += n;
    return true;
}

/* Move the children pushed since `base` into one arena array. */
static bool close_container(parser *p, size_t base, qg_json *v) {
    size_t n = p->stack_n - base;
    if (n > UINT32_MAX) return fail_at(p, p->pos, "container has too many elements");
    qg_json *items = NULL;
    if (n) {
        items = arena_alloc(p->doc, n * sizeof *items);
        if (!items) return fail_nomem(p);
        memcpy(items, p->stack + base, n * sizeof *items);
    }
    v->items = items;
    v->n = (uint32_t)n;
    p->stack_n = base;
    return true;
}

static bool parse_value(parser *p, qg_json *v, int depth);

static bool parse_array(parser *p, qg_json *v, int depth) {
    size_t open = p->pos;
    if (depth >= p->max_depth)
        return fail_at(p, open, "nesting deeper than %d", p->max_depth);
    p->pos++;
    size_t base = p->stack_n;
    v->type = QG_JSON_ARRAY;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return close_container(p, base, v);
    }
    for (;;) {
        qg_json item = {0};
        skip_ws(p);
        if (!parse_value(p, &item, depth + 1)) return false;
        if (!push_node(p, &item)) return false;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->s[p->pos] == ']') { p->pos++; break; }
        char d[32];
        return fail_at(p, p->pos, "expected ',' or ']' after array element, found %s",
                       describe(p, p->pos, d, sizeof d));
    }
    return close_container(p, base, v);
}

static bool parse_object(parser *p, qg_json *v, int depth) {
    size_t open = p->pos;
    if (depth >= p->max_depth)
        return fail_at(p, open, "nesting deeper than %d", p->max_depth);
    p->pos++;
    size_t base = p->stack_n;
    v->type = QG_JSON_OBJECT;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return close_container(p, base, v);
    }
    for (;;) {
        char d[32];
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != '"')
            return fail_at(p, p->pos, "expected a string key in object, found %s",
                           describe(p, p->pos, d, sizeof d));
        qg_json member = {0};
        if (!parse_string(p, &member.key, &member.key_len)) return false;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':')
            return fail_at(p, p->pos, "expected ':' after object key, found %s",
                           describe(p, p->pos, d, sizeof d));
        p->pos++;
        skip_ws(p);
        const char *key = member.key;
        uint32_t key_len = member.key_len;
        if (!parse_value(p, &member, depth + 1)) return false;
        member.key = key;
        member.key_len = key_len;
        if (!push_node(p, &member)) return false;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->s[p->pos] == '}') { p->pos++; break; }
        return fail_at(p, p->pos, "expected ',' or '}' after object member, found %s",
                       describe(p, p->pos, d, sizeof d));
    }
    return close_container(p, base, v);
}

/* Parse one value at p->pos (white space already skipped) into *v. */
static bool parse_value(parser *p, qg_json *v, int depth) {
    char d[32];
    if (p->pos >= p->len) return fail_at(p, p->pos, "expected a value, found end of input");
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_object(p, v, depth);
    case '[': return parse_array(p, v, depth);
    case '"':
        v->type = QG_JSON_STRING;
        return parse_string(p, &v->str, &v->n);
    case 't':
        if (!match_word(p, "true")) break;
        v->type = QG_JSON_BOOL;
        v->b = true;
        return true;
    case 'f':
        if (!match_word(p, "false")) break;
        v->type = QG_JSON_BOOL;
        v->b = false;
        return true;
    case 'n':
        if (!match_word(p, "null")) break;
        v->type = QG_JSON_NULL;
        return true;
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, v);
        break;
    }
    return fail_at(p, p->pos, "expected a value, found %s", describe(p, p->pos, d, sizeof d));
}

qg_json_doc *qg_json_parse(const char *text, size_t len, const char *label,
                           int max_depth, qg_error *err) {
    if (!label) label = "<json>";
    qg_json_doc *d = calloc(1, sizeof *d);
    if (!d) {
        qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory", label);
        return NULL;
    }
    parser p = {
        .s = (const unsigned char *)text,
        .len = len,
        .label = label,
        .max_depth = max_depth > 0 ? max_depth : QG_JSON_DEFAULT_MAX_DEPTH,
        .doc = d,
        .err = err,
    };
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) p.pos = 3;
    skip_ws(&p);
    bool ok = parse_value(&p, &d->root, 0);
    if (ok) {
        skip_ws(&p);
        if (p.pos != p.len) {
            char buf[32];
            ok = fail_at(&p, p.pos, "unexpected %s after the JSON value",
                         describe(&p, p.pos, buf, sizeof buf));
        }
    }
    free(p.stack);
    if (!ok) {
        qg_json_free(d);
        return NULL;
    }
    return d;
}

qg_json_doc *qg_json_parse_file(const char *path, qg_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        qg_error_set(err, QG_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            size_t ncap = cap ? cap * 2 : (size_t)1 << 20;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                qg_error_set(err, QG_ERR_NOMEM, "%s: out of memory reading file", path);
                return NULL;
            }
            buf = nb;
            cap = ncap;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    bool bad = ferror(f);
    int e = errno;
    fclose(f);
    if (bad) {
        free(buf);
        qg_error_set(err, QG_ERR_IO, "%s: read error: %s", path, strerror(e));
        return NULL;
    }
    qg_json_doc *d = qg_json_parse(buf, n, path, 0, err);
    free(buf);
    return d;
}

const qg_json *qg_json_root(const qg_json_doc *d) { return d ? &d->root : NULL; }

const qg_json *qg_json_get(const qg_json *obj, const char *key) {
    if (!obj || obj->type != QG_JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = obj->n; i-- > 0;) {
        const qg_json *m = &obj->items[i];
        if (m->key_len == kl && memcmp(m->key, key, kl) == 0) return m;
    }
    return NULL;
}

const qg_json *qg_json_at(const qg_json *arr, size_t i) {
    if (!arr || arr->type != QG_JSON_ARRAY || i >= arr->n) return NULL;
    return &arr->items[i];
}

const char *qg_json_str(const qg_json *v) {
    return v && v->type == QG_JSON_STRING ? v->str : NULL;
}

bool qg_json_int(const qg_json *v, int64_t lo, int64_t hi, int64_t *out) {
    if (!v || v->type != QG_JSON_NUMBER) return false;
    double x = v->num;
    if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0) || x != floor(x))
        return false;
    if ((int64_t)x < lo || (int64_t)x > hi) return false;
    *out = (int64_t)x;
    return true;
}

const char *qg_json_type_name(qg_json_type t) {
    static const char *const NAMES[] = {"null", "bool", "number", "string", "array", "object"};
    _Static_assert(QG_ARRAY_LEN(NAMES) == QG_JSON_OBJECT + 1, "name table");
    return (unsigned)t < QG_ARRAY_LEN(NAMES) ? NAMES[t] : "?";
}
