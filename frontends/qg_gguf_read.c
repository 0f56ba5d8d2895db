/*
 * qg_gguf_read.c - the GGUF v2/v3 reader: map, validate, look up.
 *
 * One parser serves both entry points: qg_gguf_open maps a file read-only
 * and hands the map to parse(); qg_gguf_open_memory hands a caller's buffer
 * to the same function.  parse() walks the image once with a bounds-checked
 * cursor and refuses anything it cannot prove is in range, so the tables it
 * returns (keys, strings, arrays, tensor data) can be used without further
 * checks.
 *
 * File layout (all little-endian; v2 and v3 are identical on disk, v1 used
 * 32-bit counts and is refused):
 *   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 type, value },
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type,
 *                 u64 offset },
 *   padding to `general.alignment` (default 32), then the data section.
 * A string is { u64 len, len bytes } without a NUL.  An array value is
 * { u32 element type, u64 count, elements }.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "qg_gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "qg_gguf_read.c reads GGUF values in host order: little-endian only"
#endif

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_TENSORS (1u << 24)
#define GGUF_MAX_KV (1u << 24)
#define GGUF_MIN_KV_BYTES (8 + 4 + 1)             /* key len, type, u8 */
#define GGUF_MIN_TENSOR_BYTES (8 + 4 + 8 + 4 + 8) /* name, n_dims, ne, type, off */
#define GGUF_HEADER_BYTES (4 + 4 + 8 + 8)

/* Byte size of a scalar value of each type; 0 for STRING and ARRAY. */
static const uint8_t SCALAR_SIZE[QG_GGUF_TYPE_COUNT] = {
    [QG_GGUF_UINT8] = 1,   [QG_GGUF_INT8] = 1,    [QG_GGUF_UINT16] = 2,
    [QG_GGUF_INT16] = 2,   [QG_GGUF_UINT32] = 4,  [QG_GGUF_INT32] = 4,
    [QG_GGUF_FLOAT32] = 4, [QG_GGUF_BOOL] = 1,    [QG_GGUF_STRING] = 0,
    [QG_GGUF_ARRAY] = 0,   [QG_GGUF_UINT64] = 8,  [QG_GGUF_INT64] = 8,
    [QG_GGUF_FLOAT64] = 8,
};

static const char *const TYPE_NAME[QG_GGUF_TYPE_COUNT] = {
    "uint8", "int8",  "uint16", "int16",  "uint32", "int32", "float32",
    "bool",  "string", "array", "uint64", "int64",  "float64",
};
_Static_assert(QG_ARRAY_LEN(TYPE_NAME) == QG_GGUF_TYPE_COUNT,
               "TYPE_NAME must name every qg_gguf_type");

/* A name and its index, for the sorted lookup tables. */
typedef struct name_ref {
    qg_str name;
    uint32_t index;
} name_ref;

/* The handle we allocate: the public struct plus private lookup tables.
 * `pub` is first so a qg_gguf * converts back to a gguf_impl *. */
typedef struct gguf_impl {
    qg_gguf pub;
    name_ref *kv_sorted;     /* (n_kv) keys in byte order */
    name_ref *tensor_sorted; /* (n_tensors) tensor names in byte order */
} gguf_impl;

/* Parser state: the image, a cursor into it, and where errors go. */
typedef struct parser {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    const char *label;
    qg_error *err;
} parser;

const char *qg_gguf_type_name(qg_gguf_type t) {
    return (unsigned)t < QG_GGUF_TYPE_COUNT ? TYPE_NAME[t] : "unknown";
}

bool qg_str_eq(qg_str s, const char *c) {
    QG_ASSERT(c != NULL);
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

/* Fill err with "<label>: <message>".  Returns code. */
static qg_status fail(const parser *p, qg_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static qg_status fail(const parser *p, qg_status code, const char *fmt, ...) {
    if (p->err) {
        char *msg = p->err->msg;
        size_t cap = sizeof p->err->msg;
        /* a label too long for the buffer keeps only its start */
        int n = snprintf(msg, cap, "%.200s: ", p->label);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg + n, cap - (size_t)n, fmt, ap);
        va_end(ap);
        p->err->code = code;
    }
    return code;
}

/* Copy s into buf (of `cap` >= 8 bytes) as printable ASCII for a message:
 * other bytes become '?', and a long name is cut with "...". */
static const char *show(qg_str s, char *buf, size_t cap) {
    size_t n = 0;
    for (uint64_t i = 0; i < s.len; i++) {
        if (n + 4 >= cap) {
            memcpy(buf + n, "...", 3);
            n += 3;
            break;
        }
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[n++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    buf[n] = '\0';
    return buf;
}

static uint64_t left(const parser *p) { return p->size - p->pos; }

static uint32_t rd_u32(const uint8_t *q) {
    uint32_t v;
    memcpy(&v, q, 4);
    return v;
}

static uint64_t rd_u64(const uint8_t *q) {
    uint64_t v;
    memcpy(&v, q, 8);
    return v;
}

/* Read a u64 at the cursor; `what` names the field in the error. */
static qg_status take_u64(parser *p, uint64_t *out, const char *what) {
    if (left(p) < 8)
        return fail(p, QG_ERR_FORMAT, "%s at offset %" PRIu64
                    " runs past the end of the file (%" PRIu64 " bytes)",
                    what, p->pos, p->size);
    *out = rd_u64(p->base + p->pos);
    p->pos += 8;
    return QG_OK;
}

/* Read a GGUF string at the cursor.  `what` names it in errors. */
static qg_status take_str(parser *p, qg_str *out, const char *what) {
    uint64_t len = 0;
    qg_status st = take_u64(p, &len, what);
    if (st) return st;
    if (len > left(p))
        return fail(p, QG_ERR_FORMAT, "%s: string length %" PRIu64
                    " at offset %" PRIu64 " runs past the end of the file (%"
                    PRIu64 " bytes)", what, len, p->pos - 8, p->size);
    out->ptr = (const char *)(p->base + p->pos);
    out->len = len;
    p->pos += len;
    return QG_OK;
}

/* Byte-order comparison of two names (shorter first on a common prefix). */
static int cmp_str(qg_str a, qg_str b) {
    uint64_t n = QG_MIN(a.len, b.len);
    int c = n ? memcmp(a.ptr, b.ptr, (size_t)n) : 0;
    if (c) return c;
    return (a.len > b.len) - (a.len < b.len);
}

static int cmp_name_ref(const void *a, const void *b) {
    const name_ref *x = a, *y = b;
    int c = cmp_str(x->name, y->name);
    if (c) return c;
    return (x->index > y->index) - (x->index < y->index);
}

/* Binary search a sorted name table; returns the index or -1. */
static int64_t lookup(const name_ref *tab, uint64_t n, const char *name) {
    qg_str key = {name, strlen(name)};
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = cmp_str(tab[mid].name, key);
        if (c == 0) return tab[mid].index;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* Parse the value of metadata entry kv (key and type already read). */
static qg_status parse_value(parser *p, qg_gguf_kv *kv) {
    char kb[160];
    const char *key = show(kv->key, kb, sizeof kb);
    const uint8_t *q = p->base + p->pos;
    switch (kv->type) {
    case QG_GGUF_STRING: {
        if (left(p) < 8)
            return fail(p, QG_ERR_FORMAT, "key '%s': string length runs past "
                        "the end of the file (%" PRIu64 " bytes)", key,
                        p->size);
        uint64_t len = rd_u64(q);
        p->pos += 8;
        if (len > left(p))
            return fail(p, QG_ERR_FORMAT, "key '%s': string length %" PRIu64
                        " runs past the end of the file (%" PRIu64 " bytes)",
                        key, len, p->size);
        kv->str = (qg_str){(const char *)(p->base + p->pos), len};
        p->pos += len;
        return QG_OK;
    }
    case QG_GGUF_ARRAY: {
        uint32_t et;
        uint64_t n;
        if (left(p) < 12)
            return fail(p, QG_ERR_FORMAT, "key '%s': array header runs past "
                        "the end of the file (%" PRIu64 " bytes)", key,
                        p->size);
        et = rd_u32(q);
        n = rd_u64(q + 4);
        p->pos += 12;
        if (et >= QG_GGUF_TYPE_COUNT)
            return fail(p, QG_ERR_FORMAT, "key '%s': array of unknown type id "
                        "%" PRIu32, key, et);
        if (et == QG_GGUF_ARRAY)
            return fail(p, QG_ERR_FORMAT, "key '%s': arrays of arrays are "
                        "not supported", key);
        kv->arr_type = (qg_gguf_type)et;
        kv->arr_n = n;
        kv->arr_data = p->base + p->pos;
        if (et != QG_GGUF_STRING) {
            uint64_t es = SCALAR_SIZE[et];
            if (n > left(p) / es)
                return fail(p, QG_ERR_FORMAT, "key '%s': array of %" PRIu64
                            " %s runs past the end of the file (%" PRIu64
                            " bytes)", key, n, TYPE_NAME[et], p->size);
            if (et == QG_GGUF_BOOL) {
                for (uint64_t i = 0; i < n; i++)
                    if (kv->arr_data[i] > 1)
                        return fail(p, QG_ERR_FORMAT, "key '%s': bool element "
                                    "%" PRIu64 " is %u, not 0 or 1", key, i,
                                    kv->arr_data[i]);
            }
            p->pos += n * es;
            return QG_OK;
        }
        /* Strings: each needs at least its 8-byte length, which bounds n
         * (and so the offset table) by the file size. */
        if (n > left(p) / 8)
            return fail(p, QG_ERR_FORMAT, "key '%s': array of %" PRIu64
                        " strings runs past the end of the file (%" PRIu64
                        " bytes)", key, n, p->size);
        if (n) {
            kv->str_offsets = malloc((size_t)n * sizeof *kv->str_offsets);
            if (!kv->str_offsets)
                return fail(p, QG_ERR_NOMEM, "key '%s': cannot allocate the "
                            "offsets of %" PRIu64 " strings", key, n);
        }
        uint64_t start = p->pos;
        for (uint64_t i = 0; i < n; i++) {
            if (left(p) < 8)
                return fail(p, QG_ERR_FORMAT, "key '%s': string %" PRIu64
                            " of %" PRIu64 " runs past the end of the file (%"
                            PRIu64 " bytes)", key, i, n, p->size);
            uint64_t len = rd_u64(p->base + p->pos);
            kv->str_offsets[i] = p->pos - start;
            p->pos += 8;
            if (len > left(p))
                return fail(p, QG_ERR_FORMAT, "key '%s': string %" PRIu64
                            " has length %" PRIu64 ", past the end of the file "
                            "(%" PRIu64 " bytes)", key, i, len, p->size);
            p->pos += len;
        }
        return QG_OK;
    }
    default:
        break;
    }
    /* scalars */
    uint64_t es = SCALAR_SIZE[kv->type];
    if (left(p) < es)
        return fail(p, QG_ERR_FORMAT, "key '%s': %s value runs past the end of "
                    "the file (%" PRIu64 " bytes)", key, TYPE_NAME[kv->type],
                    p->size);
    switch (kv->type) {
    case QG_GGUF_UINT8: kv->v.u64 = q[0]; break;
    case QG_GGUF_INT8: kv->v.i64 = (int8_t)q[0]; break;
    case QG_GGUF_BOOL:
        if (q[0] > 1)
            return fail(p, QG_ERR_FORMAT, "key '%s': bool value %u is not 0 "
                        "or 1", key, q[0]);
        kv->v.u64 = q[0];
        break;
    case QG_GGUF_UINT16: { uint16_t v; memcpy(&v, q, 2); kv->v.u64 = v; } break;
    case QG_GGUF_INT16: { int16_t v; memcpy(&v, q, 2); kv->v.i64 = v; } break;
    case QG_GGUF_UINT32: kv->v.u64 = rd_u32(q); break;
    case QG_GGUF_INT32: kv->v.i64 = (int32_t)rd_u32(q); break;
    case QG_GGUF_UINT64: kv->v.u64 = rd_u64(q); break;
    case QG_GGUF_INT64: { int64_t v; memcpy(&v, q, 8); kv->v.i64 = v; } break;
    case QG_GGUF_FLOAT32: { float v; memcpy(&v, q, 4); kv->v.f64 = v; } break;
    case QG_GGUF_FLOAT64: { double v; memcpy(&v, q, 8); kv->v.f64 = v; } break;
    default: QG_ABORT("unreachable gguf type %d", (int)kv->type);
    }
    p->pos += es;
    return QG_OK;
}

/* Parse metadata entry i of n. */
static qg_status parse_kv(parser *p, qg_gguf_kv *kv, uint64_t i, uint64_t n) {
    char what[64];
    snprintf(what, sizeof what, "metadata entry %" PRIu64 " of %" PRIu64, i, n);
    qg_status st = take_str(p, &kv->key, what);
    if (st) return st;
    char kb[160];
    uint32_t type;
    if (left(p) < 4)
        return fail(p, QG_ERR_FORMAT, "key '%s': value type runs past the end "
                    "of the file (%" PRIu64 " bytes)",
                    show(kv->key, kb, sizeof kb), p->size);
    type = rd_u32(p->base + p->pos);
    p->pos += 4;
    if (type >= QG_GGUF_TYPE_COUNT)
        return fail(p, QG_ERR_FORMAT, "key '%s': unknown value type id %" PRIu32,
                    show(kv->key, kb, sizeof kb), type);
    kv->type = (qg_gguf_type)type;
    return parse_value(p, kv);
}

/* Parse tensor info i (name, dims, type, offset) and compute its size. */
static qg_status parse_tensor(parser *p, qg_gguf_tensor *t, uint64_t i) {
    char what[64], nb[160];
    snprintf(what, sizeof what, "tensor %" PRIu64 " name", i);
    qg_status st = take_str(p, &t->name, what);
    if (st) return st;
    const char *name = show(t->name, nb, sizeof nb);
    if (t->name.len >= sizeof t->cname)
        return fail(p, QG_ERR_FORMAT, "tensor %" PRIu64 " '%s': name is %"
                    PRIu64 " bytes, longer than %zu", i, name, t->name.len,
                    sizeof t->cname - 1);
    if (t->name.len == 0)
        return fail(p, QG_ERR_FORMAT, "tensor %" PRIu64 ": empty name", i);
    if (memchr(t->name.ptr, 0, (size_t)t->name.len))
        return fail(p, QG_ERR_FORMAT, "tensor %" PRIu64 " '%s': name contains "
                    "a NUL byte", i, name);
    memcpy(t->cname, t->name.ptr, (size_t)t->name.len);
    t->cname[t->name.len] = '\0';

    uint32_t n_dims;
    if (left(p) < 4)
        return fail(p, QG_ERR_FORMAT, "tensor '%s': n_dims runs past the end of "
                    "the file (%" PRIu64 " bytes)", name, p->size);
    n_dims = rd_u32(p->base + p->pos);
    p->pos += 4;
    if (n_dims < 1 || n_dims > 4)
        return fail(p, QG_ERR_FORMAT, "tensor '%s': n_dims %" PRIu32
                    " is not in 1..4", name, n_dims);
    t->n_dims = (int)n_dims;
    if (left(p) < 8ull * n_dims + 4 + 8)
        return fail(p, QG_ERR_FORMAT, "tensor '%s': info runs past the end of "
                    "the file (%" PRIu64 " bytes)", name, p->size);
    int64_t n_elem = 1;
    for (int d = 0; d < 4; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims) continue;
        uint64_t ne = rd_u64(p->base + p->pos);
        p->pos += 8;
        if (ne == 0)
            return fail(p, QG_ERR_FORMAT, "tensor '%s': ne[%d] is 0", name, d);
        if (ne > (uint64_t)INT64_MAX)
            return fail(p, QG_ERR_FORMAT, "tensor '%s': ne[%d] = %" PRIu64
                        " is too large", name, d, ne);
        t->ne[d] = (int64_t)ne;
        if (__builtin_mul_overflow(n_elem, t->ne[d], &n_elem))
            return fail(p, QG_ERR_FORMAT, "tensor '%s': shape [%" PRId64 ", %"
                        PRId64 ", %" PRId64 ", %" PRId64 "] (first %d dims) "
                        "has more than INT64_MAX elements", name, t->ne[0],
                        d >= 1 ? t->ne[1] : 1, d >= 2 ? t->ne[2] : 1,
                        d >= 3 ? t->ne[3] : 1, d + 1);
    }

    uint32_t type = rd_u32(p->base + p->pos);
    p->pos += 4;
    const qg_dtype_info *info = qg_dtype_get(type);
    if (!info || info->type_size == 0)
        return fail(p, QG_ERR_FORMAT, "tensor '%s': unknown type id %" PRIu32,
                    name, type);
    if (!info->supported)
        return fail(p, QG_ERR_UNSUPPORTED, "tensor '%s' has type %s, which "
                    "qmoe-graph does not support", name, info->name);
    t->type = (qg_dtype)type;
    if (t->ne[0] % info->block_size != 0)
        return fail(p, QG_ERR_FORMAT, "tensor '%s': ne[0] = %" PRId64 " is not "
                    "a multiple of %s's block size %d", name, t->ne[0],
                    info->name, info->block_size);
    uint64_t nbytes = (uint64_t)(t->ne[0] / info->block_size);
    bool ovf = __builtin_mul_overflow(nbytes, (uint64_t)info->type_size, &nbytes);
    for (int d = 1; d < 4; d++)
        ovf |= __builtin_mul_overflow(nbytes, (uint64_t)t->ne[d], &nbytes);
    if (ovf)
        return fail(p, QG_ERR_FORMAT, "tensor '%s': size in bytes of shape [%"
                    PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] %s "
                    "overflows", name, t->ne[0], t->ne[1], t->ne[2], t->ne[3],
                    info->name);
    t->nbytes = nbytes;
    t->offset = rd_u64(p->base + p->pos);
    p->pos += 8;
    return QG_OK;
}

/* Sort `n` names into tab and refuse duplicates; `what` is "key" or
 * "tensor name". */
static qg_status sort_unique(parser *p, name_ref *tab, uint64_t n,
                             const char *what) {
    if (n == 0) return QG_OK;
    qsort(tab, (size_t)n, sizeof *tab, cmp_name_ref);
    for (uint64_t i = 1; i < n; i++) {
        if (cmp_str(tab[i - 1].name, tab[i].name) == 0) {
            char nb[160];
            return fail(p, QG_ERR_FORMAT, "duplicate %s '%s' (entries %" PRIu32
                        " and %" PRIu32 ")", what,
                        show(tab[i].name, nb, sizeof nb), tab[i - 1].index,
                        tab[i].index);
        }
    }
    return QG_OK;
}

/* Read general.alignment if present: uint32, a nonzero power of two. */
static qg_status parse_alignment(parser *p, gguf_impl *g) {
    g->pub.alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = lookup(g->kv_sorted, g->pub.n_kv, "general.alignment");
    if (i < 0) return QG_OK;
    const qg_gguf_kv *kv = &g->pub.kv[i];
    if (kv->type != QG_GGUF_UINT32)
        return fail(p, QG_ERR_FORMAT, "key 'general.alignment' has type %s, "
                    "expected uint32", qg_gguf_type_name(kv->type));
    uint64_t a = kv->v.u64;
    if (a == 0 || (a & (a - 1)) != 0)
        return fail(p, QG_ERR_FORMAT, "key 'general.alignment' = %" PRIu64
                    " is not a nonzero power of two", a);
    g->pub.alignment = a;
    return QG_OK;
}

/* Order (offset, index) pairs by offset. */
static int cmp_u64_pair(const void *a, const void *b) {
    const uint64_t *x = a, *y = b;
    if (x[0] != y[0]) return (x[0] > y[0]) - (x[0] < y[0]);
    return (x[1] > y[1]) - (x[1] < y[1]);
}

/* Check each tensor's offset (aligned), extent (inside the file) and that
 * no two tensors' data overlap; then point t->data into the image. */
static qg_status place_tensors(parser *p, gguf_impl *g) {
    qg_gguf *pub = &g->pub;
    char nb[160];
    for (uint64_t i = 0; i < pub->n_tensors; i++) {
        qg_gguf_tensor *t = &pub->tensors[i];
        const char *name = show(t->name, nb, sizeof nb);
        if (t->offset % pub->alignment != 0)
            return fail(p, QG_ERR_FORMAT, "tensor '%s': offset %" PRIu64
                        " is not a multiple of the alignment %" PRIu64, name,
                        t->offset, pub->alignment);
        /* data_offset <= size + alignment - 1 < 2^63, so sums stay exact
         * once offset <= size. */
        if (t->offset > p->size || pub->data_offset + t->offset > p->size)
            return fail(p, QG_ERR_FORMAT, "tensor '%s': offset %" PRIu64
                        " is past the end of the file (data section at %"
                        PRIu64 ", file %" PRIu64 " bytes)", name, t->offset,
                        pub->data_offset, p->size);
        uint64_t start = pub->data_offset + t->offset, end;
        if (t->nbytes > p->size - start) {
            if (__builtin_add_overflow(start, t->nbytes, &end))
                return fail(p, QG_ERR_FORMAT, "tensor '%s': data at %" PRIu64
                            " of %" PRIu64 " bytes runs past the end of the "
                            "file (%" PRIu64 " bytes)", name, start, t->nbytes,
                            p->size);
            return fail(p, QG_ERR_FORMAT, "tensor '%s': data [%" PRIu64 ", %"
                        PRIu64 ") runs past the end of the file (%" PRIu64
                        " bytes)", name, start, end, p->size);
        }
        t->data = p->base + start;
    }
    if (pub->n_tensors < 2) return QG_OK;
    /* overlap: sort (offset, index) pairs, compare neighbours */
    uint64_t *by_off = malloc((size_t)pub->n_tensors * 2 * sizeof *by_off);
    if (!by_off)
        return fail(p, QG_ERR_NOMEM, "cannot allocate the overlap check of %"
                    PRIu64 " tensors", pub->n_tensors);
    for (uint64_t i = 0; i < pub->n_tensors; i++) {
        by_off[2 * i] = pub->tensors[i].offset;
        by_off[2 * i + 1] = i;
    }
    qsort(by_off, (size_t)pub->n_tensors, 2 * sizeof *by_off, cmp_u64_pair);
    qg_status st = QG_OK;
    for (uint64_t k = 1; k < pub->n_tensors && !st; k++) {
        const qg_gguf_tensor *a = &pub->tensors[by_off[2 * k - 2 + 1]];
        const qg_gguf_tensor *b = &pub->tensors[by_off[2 * k + 1]];
        if (b->offset < a->offset + a->nbytes) {
            char nb2[160];
            st = fail(p, QG_ERR_FORMAT, "tensor '%s' at [%" PRIu64 ", %" PRIu64
                      ") overlaps tensor '%s' at [%" PRIu64 ", %" PRIu64 ")",
                      show(b->name, nb, sizeof nb), b->offset,
                      b->offset + b->nbytes, show(a->name, nb2, sizeof nb2),
                      a->offset, a->offset + a->nbytes);
        }
    }
    free(by_off);
    return st;
}

/* The fixed header: magic, version, counts checked against the size. */
static qg_status parse_header(parser *p, uint64_t *n_tensors, uint64_t *n_kv) {
    if (p->size == 0) return fail(p, QG_ERR_IO, "empty file");
    if (p->size < 4)
        return fail(p, QG_ERR_FORMAT, "file of %" PRIu64 " bytes is too small "
                    "for a GGUF header (%d bytes)", p->size, GGUF_HEADER_BYTES);
    uint32_t magic = rd_u32(p->base);
    if (magic != GGUF_MAGIC) {
        char m[20];
        int n = 0;
        for (int i = 0; i < 4; i++) {
            unsigned char c = p->base[i];
            if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'')
                m[n++] = (char)c;
            else
                n += snprintf(m + n, sizeof m - (size_t)n, "\\x%02x", c);
        }
        m[n] = '\0';
        return fail(p, QG_ERR_FORMAT, "not a GGUF file (magic '%s', expected "
                    "'GGUF')", m);
    }
    if (p->size < GGUF_HEADER_BYTES)
        return fail(p, QG_ERR_FORMAT, "file of %" PRIu64 " bytes is too small "
                    "for a GGUF header (%d bytes)", p->size, GGUF_HEADER_BYTES);
    uint32_t version = rd_u32(p->base + 4);
    if (version != 2 && version != 3) {
        if (version == 0x02000000u || version == 0x03000000u)
            return fail(p, QG_ERR_FORMAT, "GGUF version field 0x%08" PRIx32
                        " is a big-endian GGUF; only little-endian files are "
                        "supported", version);
        return fail(p, QG_ERR_FORMAT, "GGUF version %" PRIu32 " is not "
                    "supported (only versions 2 and 3)", version);
    }
    *n_tensors = rd_u64(p->base + 8);
    *n_kv = rd_u64(p->base + 16);
    p->pos = GGUF_HEADER_BYTES;
    uint64_t avail = p->size - GGUF_HEADER_BYTES;
    if (*n_tensors > GGUF_MAX_TENSORS)
        return fail(p, QG_ERR_FORMAT, "n_tensors %" PRIu64 " is over the limit "
                    "of %u", *n_tensors, GGUF_MAX_TENSORS);
    if (*n_kv > GGUF_MAX_KV)
        return fail(p, QG_ERR_FORMAT, "n_kv %" PRIu64 " is over the limit of %u",
                    *n_kv, GGUF_MAX_KV);
    /* both counts are < 2^24 now, so these products cannot overflow */
    uint64_t need_t = *n_tensors * GGUF_MIN_TENSOR_BYTES;
    uint64_t need_kv = *n_kv * GGUF_MIN_KV_BYTES;
    if (need_t > avail)
        return fail(p, QG_ERR_FORMAT, "n_tensors %" PRIu64 " cannot fit in a "
                    "file of %" PRIu64 " bytes", *n_tensors, p->size);
    if (need_kv > avail)
        return fail(p, QG_ERR_FORMAT, "n_kv %" PRIu64 " cannot fit in a file "
                    "of %" PRIu64 " bytes", *n_kv, p->size);
    if (need_t + need_kv > avail)
        return fail(p, QG_ERR_FORMAT, "n_tensors %" PRIu64 " and n_kv %" PRIu64
                    " cannot both fit in a file of %" PRIu64 " bytes",
                    *n_tensors, *n_kv, p->size);
    return QG_OK;
}

/* Parse and validate the whole image into g (whose tables start empty).
 * On error the partial tables stay in g for qg_gguf_close to free. */
static qg_status parse(parser *p, gguf_impl *g) {
    qg_gguf *pub = &g->pub;
    uint64_t n_tensors = 0, n_kv = 0;
    qg_status st = parse_header(p, &n_tensors, &n_kv);
    if (st) return st;
    pub->version = rd_u32(p->base + 4);

    if (n_kv) {
        pub->kv = calloc((size_t)n_kv, sizeof *pub->kv);
        g->kv_sorted = calloc((size_t)n_kv, sizeof *g->kv_sorted);
        if (!pub->kv || !g->kv_sorted)
            return fail(p, QG_ERR_NOMEM, "cannot allocate %" PRIu64
                        " metadata entries", n_kv);
    }
    /* n_kv counts the entries whose str_offsets close() must free */
    pub->n_kv = n_kv;
    for (uint64_t i = 0; i < n_kv; i++) {
        st = parse_kv(p, &pub->kv[i], i, n_kv);
        if (st) return st;
        g->kv_sorted[i] = (name_ref){pub->kv[i].key, (uint32_t)i};
    }
    st = sort_unique(p, g->kv_sorted, n_kv, "key");
    if (st) return st;
    st = parse_alignment(p, g);
    if (st) return st;

    if (n_tensors) {
        pub->tensors = calloc((size_t)n_tensors, sizeof *pub->tensors);
        g->tensor_sorted = calloc((size_t)n_tensors, sizeof *g->tensor_sorted);
        if (!pub->tensors || !g->tensor_sorted)
            return fail(p, QG_ERR_NOMEM, "cannot allocate %" PRIu64 " tensors",
                        n_tensors);
    }
    pub->n_tensors = n_tensors;
    for (uint64_t i = 0; i < n_tensors; i++) {
        st = parse_tensor(p, &pub->tensors[i], i);
        if (st) return st;
        g->tensor_sorted[i] = (name_ref){pub->tensors[i].name, (uint32_t)i};
    }
    st = sort_unique(p, g->tensor_sorted, n_tensors, "tensor name");
    if (st) return st;

    /* pos <= size < 2^63 and alignment <= 2^31: no overflow */
    pub->data_offset = (p->pos + pub->alignment - 1) & ~(pub->alignment - 1);
    return place_tensors(p, g);
}

/* Build a handle over an image; the map is not owned (the caller sets
 * owns_map after success).  NULL on error, with nothing left allocated. */
static qg_gguf *open_image(const uint8_t *data, uint64_t size,
                           const char *label, qg_error *err) {
    parser p = {.base = data, .size = size, .pos = 0, .label = label,
                .err = err};
    gguf_impl *g = calloc(1, sizeof *g);
    if (!g) {
        fail(&p, QG_ERR_NOMEM, "cannot allocate the GGUF handle");
        return NULL;
    }
    snprintf(g->pub.path, sizeof g->pub.path, "%s", label);
    g->pub.map = data;
    g->pub.size = size;
    g->pub.owns_map = false;
    if (parse(&p, g) != QG_OK) {
        qg_gguf_close(&g->pub);
        return NULL;
    }
    return &g->pub;
}

qg_gguf *qg_gguf_open_memory(const void *data, size_t size, const char *label,
                             qg_error *err) {
    QG_ASSERT(data != NULL || size == 0);
    static const uint8_t none[1] = {0};
    return open_image(data ? data : none, size, label ? label : "<memory>",
                      err);
}

qg_gguf *qg_gguf_open(const char *path, qg_error *err) {
    QG_ASSERT(path != NULL);
    parser p = {.label = path, .err = err};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(&p, QG_ERR_IO, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        fail(&p, QG_ERR_IO, "cannot stat: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    if (S_ISDIR(sb.st_mode) || !S_ISREG(sb.st_mode) || sb.st_size == 0) {
        fail(&p, QG_ERR_IO, "%s", S_ISDIR(sb.st_mode) ? "is a directory"
                                  : !S_ISREG(sb.st_mode) ? "not a regular file"
                                                         : "empty file");
        close(fd);
        return NULL;
    }
    uint64_t size = (uint64_t)sb.st_size;
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        fail(&p, QG_ERR_IO, "cannot map %" PRIu64 " bytes: %s", size,
             strerror(map_errno));
        return NULL;
    }
    qg_gguf *g = open_image(map, size, path, err);
    if (!g) {
        munmap(map, (size_t)size);
        return NULL;
    }
    g->owns_map = true;
    return g;
}

void qg_gguf_close(qg_gguf *pub) {
    if (!pub) return;
    gguf_impl *g = (gguf_impl *)pub;
    for (uint64_t i = 0; pub->kv && i < pub->n_kv; i++)
        free(pub->kv[i].str_offsets);
    free(pub->kv);
    free(pub->tensors);
    free(g->kv_sorted);
    free(g->tensor_sorted);
    if (pub->owns_map) munmap((void *)pub->map, (size_t)pub->size);
    free(g);
}

const qg_gguf_kv *qg_gguf_find(const qg_gguf *pub, const char *key) {
    QG_ASSERT(pub != NULL && key != NULL);
    const gguf_impl *g = (const gguf_impl *)pub;
    int64_t i = lookup(g->kv_sorted, pub->n_kv, key);
    return i < 0 ? NULL : &pub->kv[i];
}

const qg_gguf_tensor *qg_gguf_find_tensor(const qg_gguf *pub,
                                          const char *name) {
    QG_ASSERT(pub != NULL && name != NULL);
    const gguf_impl *g = (const gguf_impl *)pub;
    int64_t i = lookup(g->tensor_sorted, pub->n_tensors, name);
    return i < 0 ? NULL : &pub->tensors[i];
}

/* Find `key` for a getter: QG_ERR_MODEL naming it when absent. */
static qg_status getter_find(const qg_gguf *g, const char *key,
                             const qg_gguf_kv **out, qg_error *err) {
    *out = qg_gguf_find(g, key);
    if (!*out)
        return qg_error_set(err, QG_ERR_MODEL, "%s: key '%s' is missing",
                            g->path, key);
    return QG_OK;
}

static bool is_unsigned(qg_gguf_type t) {
    return t == QG_GGUF_UINT8 || t == QG_GGUF_UINT16 || t == QG_GGUF_UINT32 ||
           t == QG_GGUF_UINT64;
}

static bool is_signed(qg_gguf_type t) {
    return t == QG_GGUF_INT8 || t == QG_GGUF_INT16 || t == QG_GGUF_INT32 ||
           t == QG_GGUF_INT64;
}

qg_status qg_gguf_get_u32(const qg_gguf *g, const char *key, uint32_t *out,
                          qg_error *err) {
    const qg_gguf_kv *kv;
    qg_status st = getter_find(g, key, &kv, err);
    if (st) return st;
    if (is_unsigned(kv->type)) {
        if (kv->v.u64 > UINT32_MAX)
            return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' = %" PRIu64
                                " (%s) does not fit in uint32", g->path, key,
                                kv->v.u64, TYPE_NAME[kv->type]);
        *out = (uint32_t)kv->v.u64;
        return QG_OK;
    }
    if (is_signed(kv->type)) {
        if (kv->v.i64 < 0 || kv->v.i64 > (int64_t)UINT32_MAX)
            return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' = %" PRId64
                                " (%s) does not fit in uint32", g->path, key,
                                kv->v.i64, TYPE_NAME[kv->type]);
        *out = (uint32_t)kv->v.i64;
        return QG_OK;
    }
    return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' has type %s, "
                        "expected an integer", g->path, key,
                        qg_gguf_type_name(kv->type));
}

qg_status qg_gguf_get_f32(const qg_gguf *g, const char *key, float *out,
                          qg_error *err) {
    const qg_gguf_kv *kv;
    qg_status st = getter_find(g, key, &kv, err);
    if (st) return st;
    if (kv->type != QG_GGUF_FLOAT32 && kv->type != QG_GGUF_FLOAT64)
        return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' has type %s, "
                            "expected float32 or float64", g->path, key,
                            qg_gguf_type_name(kv->type));
    double v = kv->v.f64;
    /* NaN and the infinities convert as they are; finite values must fit */
    if (isfinite(v) && (v > FLT_MAX || v < -FLT_MAX))
        return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' = %g (%s) "
                            "does not fit in float32", g->path, key, v,
                            TYPE_NAME[kv->type]);
    *out = (float)v;
    return QG_OK;
}

qg_status qg_gguf_get_str(const qg_gguf *g, const char *key, qg_str *out,
                          qg_error *err) {
    const qg_gguf_kv *kv;
    qg_status st = getter_find(g, key, &kv, err);
    if (st) return st;
    if (kv->type != QG_GGUF_STRING)
        return qg_error_set(err, QG_ERR_FORMAT, "%s: key '%s' has type %s, "
                            "expected string", g->path, key,
                            qg_gguf_type_name(kv->type));
    *out = kv->str;
    return QG_OK;
}

qg_str qg_gguf_arr_str(const qg_gguf_kv *kv, uint64_t i) {
    QG_ASSERT(kv != NULL && kv->type == QG_GGUF_ARRAY &&
              kv->arr_type == QG_GGUF_STRING && i < kv->arr_n);
    const uint8_t *q = kv->arr_data + kv->str_offsets[i];
    return (qg_str){(const char *)(q + 8), rd_u64(q)};
}
