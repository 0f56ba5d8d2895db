/*
 * test_gguf.c - the GGUF reader and writer.
 *
 * Images are built byte by byte here (a tiny independent encoder of the
 * GGUF layout), so the reader is checked against the format, not against
 * our own writer; the writer is then checked by round trips through the
 * reader.  Every value and every tensor byte is drawn from a seeded RNG
 * (a different seed per case) and compared exactly: tolerance 0, bit-exact,
 * because nothing is computed, only stored and read back.
 *
 * Bad inputs are made by mutating a valid image; each must be refused with
 * the expected status and a message naming the key / tensor / value.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "frontends/qg_gguf.h"

/* ---- helpers: RNG, byte buffer, temp dir -------------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_fill(uint64_t *s, void *dst, size_t n) {
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = (uint8_t)rng_next(s);
}

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void b_put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
/* Each appender returns the offset it wrote at, for later mutation. */
static size_t b_u8(buf *b, uint8_t v) { size_t at = b->n; b_put(b, &v, 1); return at; }
static size_t b_u32(buf *b, uint32_t v) { size_t at = b->n; b_put(b, &v, 4); return at; }
static size_t b_u64(buf *b, uint64_t v) { size_t at = b->n; b_put(b, &v, 8); return at; }
static size_t b_str(buf *b, const char *s) {
    size_t at = b_u64(b, strlen(s));
    b_put(b, s, strlen(s));
    return at;
}
static void b_pad(buf *b, size_t align) {
    static const uint8_t zero[256];
    b_put(b, zero, (align - b->n % align) % align);
}
static void w32(uint8_t *p, size_t at, uint32_t v) { memcpy(p + at, &v, 4); }
static void w64(uint8_t *p, size_t at, uint64_t v) { memcpy(p + at, &v, 8); }

static void make_tmpdir(char *dir, size_t cap) {
    snprintf(dir, cap, "/tmp/qg_test_gguf_XXXXXX");
    assert_non_null(mkdtemp(dir));
}

/* Remove every file in dir, then dir (the tests create no subdirs but
 * the one named "adir", which is removed too). */
static void remove_tmpdir(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    char p[1200];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) != 0) assert_int_equal(rmdir(p), 0);
    }
    closedir(d);
    assert_int_equal(rmdir(dir), 0);
}

static void write_file(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(d, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ---- the base image: a small valid GGUF with marks for mutation -------- */

#define BASE_NT 3
typedef struct base_marks {
    size_t n_tensors, n_kv, version;
    size_t arch_len;         /* general.architecture string length */
    size_t u32_key, u32_type; /* test.u32: key bytes, type id */
    size_t bool_val;         /* test.bool value byte */
    size_t arr_type, arr_n;  /* test.arr: element type, count */
    size_t sarr_n;           /* tokenizer.tokens: count */
    size_t sarr_len1;        /* tokenizer.tokens: string 1's length */
    size_t align_val;        /* general.alignment value (if written) */
    size_t t_name[BASE_NT], t_ndims[BASE_NT], t_ne[BASE_NT][4];
    size_t t_type[BASE_NT], t_off[BASE_NT];
    size_t data_offset, data_end;
    size_t t_data[BASE_NT];  /* file offset of each tensor's data */
    uint64_t t_nbytes[BASE_NT];
} base_marks;

typedef struct base_opts {
    uint32_t version;    /* 2 or 3 */
    uint32_t alignment;  /* 0: no general.alignment key (32 applies) */
    const char *name0;   /* name of tensor 0 (NULL: default) */
} base_opts;

static const char *const BASE_NAMES[BASE_NT] = {
    "blk.0.ffn_up.weight", "blk.0.ffn_dn.weight", "output_norm.weight"};
static const qg_dtype BASE_TYPES[BASE_NT] = {QG_F32, QG_Q8_0, QG_F16};
static const int BASE_NDIMS[BASE_NT] = {2, 2, 1};
static const uint64_t BASE_NE[BASE_NT][4] = {{8, 3, 1, 1}, {64, 2, 1, 1},
                                             {4, 1, 1, 1}};

/* Build the base image into b (tensor data random from *seed). */
static void build_base(buf *b, base_marks *m, const base_opts *o,
                       uint64_t *seed) {
    memset(m, 0, sizeof *m);
    uint32_t align = o->alignment ? o->alignment : 32;
    b_u32(b, 0x46554747u); /* "GGUF" */
    m->version = b_u32(b, o->version);
    m->n_tensors = b_u64(b, BASE_NT);
    m->n_kv = b_u64(b, o->alignment ? 7 : 6);

    b_str(b, "general.architecture");
    b_u32(b, QG_GGUF_STRING);
    m->arch_len = b_str(b, "qwen3moe");

    m->u32_key = b_str(b, "test.u32") + 8;
    m->u32_type = b_u32(b, QG_GGUF_UINT32);
    b_u32(b, 7);

    b_str(b, "test.i32");
    b_u32(b, QG_GGUF_INT32);
    b_u32(b, (uint32_t)-5);

    b_str(b, "test.bool");
    b_u32(b, QG_GGUF_BOOL);
    m->bool_val = b_u8(b, 1);

    b_str(b, "test.arr");
    b_u32(b, QG_GGUF_ARRAY);
    m->arr_type = b_u32(b, QG_GGUF_INT32);
    m->arr_n = b_u64(b, 3);
    for (uint32_t i = 0; i < 3; i++) b_u32(b, i * 10);

    b_str(b, "tokenizer.tokens");
    b_u32(b, QG_GGUF_ARRAY);
    b_u32(b, QG_GGUF_STRING);
    m->sarr_n = b_u64(b, 3);
    b_str(b, "a");
    m->sarr_len1 = b_str(b, "bc");
    b_str(b, "");

    if (o->alignment) {
        b_str(b, "general.alignment");
        b_u32(b, QG_GGUF_UINT32);
        m->align_val = b_u32(b, o->alignment);
    }

    uint64_t off = 0;
    for (int t = 0; t < BASE_NT; t++) {
        const char *name = (t == 0 && o->name0) ? o->name0 : BASE_NAMES[t];
        m->t_name[t] = b_str(b, name);
        m->t_ndims[t] = b_u32(b, (uint32_t)BASE_NDIMS[t]);
        for (int d = 0; d < BASE_NDIMS[t]; d++)
            m->t_ne[t][d] = b_u64(b, BASE_NE[t][d]);
        m->t_type[t] = b_u32(b, (uint32_t)BASE_TYPES[t]);
        const qg_dtype_info *in = qg_dtype_get(BASE_TYPES[t]);
        m->t_nbytes[t] = BASE_NE[t][0] / (uint64_t)in->block_size *
                         (uint64_t)in->type_size * BASE_NE[t][1];
        m->t_off[t] = b_u64(b, off);
        off += (m->t_nbytes[t] + align - 1) / align * align;
    }
    b_pad(b, align);
    m->data_offset = b->n;
    for (int t = 0; t < BASE_NT; t++) {
        m->t_data[t] = b->n;
        uint8_t tmp[256];
        assert_true(m->t_nbytes[t] <= sizeof tmp);
        rng_fill(seed, tmp, (size_t)m->t_nbytes[t]);
        b_put(b, tmp, (size_t)m->t_nbytes[t]);
        if (t + 1 < BASE_NT) b_pad(b, align);
    }
    m->data_end = b->n;
    b_pad(b, align);
}

/* Check that g holds exactly the base image in b. */
static void check_base(const qg_gguf *g, const buf *b, const base_marks *m,
                       const base_opts *o) {
    assert_int_equal(g->version, o->version);
    assert_int_equal(g->alignment, o->alignment ? o->alignment : 32);
    assert_int_equal(g->n_kv, o->alignment ? 7 : 6);
    assert_int_equal(g->n_tensors, BASE_NT);
    assert_int_equal(g->data_offset, m->data_offset);

    qg_str s;
    qg_error err;
    assert_int_equal(qg_gguf_get_str(g, "general.architecture", &s, &err), QG_OK);
    assert_true(qg_str_eq(s, "qwen3moe"));
    uint32_t u;
    assert_int_equal(qg_gguf_get_u32(g, "test.u32", &u, &err), QG_OK);
    assert_int_equal(u, 7);
    const qg_gguf_kv *kv = qg_gguf_find(g, "test.i32");
    assert_non_null(kv);
    assert_int_equal(kv->type, QG_GGUF_INT32);
    assert_int_equal(kv->v.i64, -5);
    kv = qg_gguf_find(g, "test.bool");
    assert_non_null(kv);
    assert_int_equal(kv->type, QG_GGUF_BOOL);
    assert_int_equal(kv->v.u64, 1);
    kv = qg_gguf_find(g, "test.arr");
    assert_non_null(kv);
    assert_int_equal(kv->type, QG_GGUF_ARRAY);
    assert_int_equal(kv->arr_type, QG_GGUF_INT32);
    assert_int_equal(kv->arr_n, 3);
    assert_null(kv->str_offsets);
    for (int i = 0; i < 3; i++) {
        int32_t v;
        memcpy(&v, kv->arr_data + 4 * i, 4);
        assert_int_equal(v, i * 10);
    }
    kv = qg_gguf_find(g, "tokenizer.tokens");
    assert_non_null(kv);
    assert_int_equal(kv->arr_type, QG_GGUF_STRING);
    assert_int_equal(kv->arr_n, 3);
    assert_true(qg_str_eq(qg_gguf_arr_str(kv, 0), "a"));
    assert_true(qg_str_eq(qg_gguf_arr_str(kv, 1), "bc"));
    assert_true(qg_str_eq(qg_gguf_arr_str(kv, 2), ""));
    assert_null(qg_gguf_find(g, "test.absent"));
    assert_null(qg_gguf_find(g, "test.u3"));

    for (int t = 0; t < BASE_NT; t++) {
        const char *name = (t == 0 && o->name0) ? o->name0 : BASE_NAMES[t];
        const qg_gguf_tensor *ti = qg_gguf_find_tensor(g, name);
        assert_non_null(ti);
        assert_ptr_equal(ti, &g->tensors[t]);
        assert_string_equal(ti->cname, name);
        assert_true(qg_str_eq(ti->name, name));
        assert_int_equal(ti->n_dims, BASE_NDIMS[t]);
        for (int d = 0; d < 4; d++)
            assert_int_equal(ti->ne[d], BASE_NE[t][d]);
        assert_int_equal(ti->type, BASE_TYPES[t]);
        assert_int_equal(ti->nbytes, m->t_nbytes[t]);
        assert_ptr_equal(ti->data, g->map + m->t_data[t]);
        assert_memory_equal(ti->data, b->p + m->t_data[t], ti->nbytes);
    }
    assert_null(qg_gguf_find_tensor(g, "blk.0.ffn_up"));
}

static void test_base_v3_and_v2(void **state) {
    (void)state;
    for (uint32_t version = 2; version <= 3; version++) {
        for (uint32_t align = 0; align <= 64; align += 64) {
            uint64_t seed = 100 + version * 10 + align;
            buf b = {0};
            base_marks m;
            base_opts o = {.version = version, .alignment = align};
            build_base(&b, &m, &o, &seed);
            qg_error err = {0};
            qg_gguf *g = qg_gguf_open_memory(b.p, b.n, "base.gguf", &err);
            if (!g) fail_msg("%s", err.msg);
            assert_false(g->owns_map);
            assert_ptr_equal(g->map, b.p);
            check_base(g, &b, &m, &o);
            qg_gguf_close(g);

            /* the same image through the file path (mmap) */
            char dir[64], path[128];
            make_tmpdir(dir, sizeof dir);
            snprintf(path, sizeof path, "%s/base.gguf", dir);
            write_file(path, b.p, b.n);
            g = qg_gguf_open(path, &err);
            if (!g) fail_msg("%s", err.msg);
            assert_true(g->owns_map);
            assert_string_equal(g->path, path);
            check_base(g, &b, &m, &o);
            qg_gguf_close(g);
            remove_tmpdir(dir);
            free(b.p);
        }
    }
}

/* ---- every metadata type, hand-encoded --------------------------------- */

static void test_all_metadata_types(void **state) {
    (void)state;
    uint64_t seed = 777;
    buf b = {0};
    uint8_t u8 = (uint8_t)rng_next(&seed);
    int8_t i8 = (int8_t)(rng_next(&seed) | 0x80); /* negative */
    uint16_t u16 = (uint16_t)rng_next(&seed);
    int16_t i16 = (int16_t)(rng_next(&seed) | 0x8000);
    uint32_t u32 = (uint32_t)rng_next(&seed) | 0x80000000u;
    int32_t i32 = (int32_t)((uint32_t)rng_next(&seed) >> 2); /* fits u32 */
    float f32 = (float)(rng_next(&seed) >> 40) / 1024.0f - 1000.0f;
    uint64_t u64 = rng_next(&seed) | (1ull << 63);
    int64_t i64 = -(int64_t)(rng_next(&seed) >> 2);
    double f64 = (double)(rng_next(&seed) >> 11) * 0x1p-40;
    enum { NA = 17 };
    uint8_t arr[QG_GGUF_TYPE_COUNT][NA * 8];
    for (int t = 0; t < QG_GGUF_TYPE_COUNT; t++) rng_fill(&seed, arr[t], sizeof arr[t]);
    for (int i = 0; i < NA; i++) arr[QG_GGUF_BOOL][i] &= 1;
    static const int esz[QG_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    char strs[NA][40];
    for (int i = 0; i < NA; i++) {
        int len = (int)(rng_next(&seed) % 39);
        for (int k = 0; k < len; k++) strs[i][k] = (char)(1 + rng_next(&seed) % 255);
        strs[i][len] = 0;
    }

    b_u32(&b, 0x46554747u);
    b_u32(&b, 3);
    b_u64(&b, 0);
    int n_kv = 11 + 12 + 1 + 1; /* scalars, arrays, k.str, a.empty */
    b_u64(&b, (uint64_t)n_kv);
    b_str(&b, "k.u8"); b_u32(&b, QG_GGUF_UINT8); b_put(&b, &u8, 1);
    b_str(&b, "k.i8"); b_u32(&b, QG_GGUF_INT8); b_put(&b, &i8, 1);
    b_str(&b, "k.u16"); b_u32(&b, QG_GGUF_UINT16); b_put(&b, &u16, 2);
    b_str(&b, "k.i16"); b_u32(&b, QG_GGUF_INT16); b_put(&b, &i16, 2);
    b_str(&b, "k.u32"); b_u32(&b, QG_GGUF_UINT32); b_put(&b, &u32, 4);
    b_str(&b, "k.i32"); b_u32(&b, QG_GGUF_INT32); b_put(&b, &i32, 4);
    b_str(&b, "k.f32"); b_u32(&b, QG_GGUF_FLOAT32); b_put(&b, &f32, 4);
    b_str(&b, "k.bool"); b_u32(&b, QG_GGUF_BOOL); b_u8(&b, 0);
    b_str(&b, "k.u64"); b_u32(&b, QG_GGUF_UINT64); b_put(&b, &u64, 8);
    b_str(&b, "k.i64"); b_u32(&b, QG_GGUF_INT64); b_put(&b, &i64, 8);
    b_str(&b, "k.f64"); b_u32(&b, QG_GGUF_FLOAT64); b_put(&b, &f64, 8);
    static const char *const anames[QG_GGUF_TYPE_COUNT] = {
        "a.u8", "a.i8", "a.u16", "a.i16", "a.u32", "a.i32", "a.f32",
        "a.bool", "a.str", NULL, "a.u64", "a.i64", "a.f64"};
    for (int t = 0; t < QG_GGUF_TYPE_COUNT; t++) {
        if (t == QG_GGUF_ARRAY) continue;
        b_str(&b, anames[t]);
        b_u32(&b, QG_GGUF_ARRAY);
        b_u32(&b, (uint32_t)t);
        b_u64(&b, NA);
        if (t == QG_GGUF_STRING)
            for (int i = 0; i < NA; i++) b_str(&b, strs[i]);
        else
            b_put(&b, arr[t], (size_t)(NA * esz[t]));
    }
    b_str(&b, "k.str"); b_u32(&b, QG_GGUF_STRING); b_str(&b, strs[3]);
    b_str(&b, "a.empty"); b_u32(&b, QG_GGUF_ARRAY); b_u32(&b, QG_GGUF_FLOAT32);
    b_u64(&b, 0);

    qg_error err = {0};
    qg_gguf *g = qg_gguf_open_memory(b.p, b.n, "types.gguf", &err);
    if (!g) fail_msg("%s", err.msg);
    assert_int_equal(g->n_kv, n_kv);
    assert_int_equal(g->n_tensors, 0);
    assert_int_equal(g->alignment, 32);

    const qg_gguf_kv *kv;
#define CHECK_KV(key, T, field, want)                   \
    kv = qg_gguf_find(g, key);                          \
    assert_non_null(kv);                                \
    assert_int_equal(kv->type, T);                      \
    assert_true(kv->v.field == (want))
    CHECK_KV("k.u8", QG_GGUF_UINT8, u64, u8);
    CHECK_KV("k.i8", QG_GGUF_INT8, i64, i8);
    CHECK_KV("k.u16", QG_GGUF_UINT16, u64, u16);
    CHECK_KV("k.i16", QG_GGUF_INT16, i64, i16);
    CHECK_KV("k.u32", QG_GGUF_UINT32, u64, u32);
    CHECK_KV("k.i32", QG_GGUF_INT32, i64, i32);
    CHECK_KV("k.f32", QG_GGUF_FLOAT32, f64, (double)f32);
    CHECK_KV("k.bool", QG_GGUF_BOOL, u64, 0);
    CHECK_KV("k.u64", QG_GGUF_UINT64, u64, u64);
    CHECK_KV("k.i64", QG_GGUF_INT64, i64, i64);
    CHECK_KV("k.f64", QG_GGUF_FLOAT64, f64, f64);
#undef CHECK_KV
    kv = qg_gguf_find(g, "k.str");
    assert_non_null(kv);
    assert_int_equal(kv->type, QG_GGUF_STRING);
    assert_true(qg_str_eq(kv->str, strs[3]));
    for (int t = 0; t < QG_GGUF_TYPE_COUNT; t++) {
        if (t == QG_GGUF_ARRAY) continue;
        kv = qg_gguf_find(g, anames[t]);
        assert_non_null(kv);
        assert_int_equal(kv->type, QG_GGUF_ARRAY);
        assert_int_equal(kv->arr_type, t);
        assert_int_equal(kv->arr_n, NA);
        if (t == QG_GGUF_STRING) {
            assert_non_null(kv->str_offsets);
            for (int i = 0; i < NA; i++)
                assert_true(qg_str_eq(qg_gguf_arr_str(kv, (uint64_t)i), strs[i]));
        } else {
            assert_null(kv->str_offsets);
            assert_memory_equal(kv->arr_data, arr[t], (size_t)(NA * esz[t]));
        }
    }
    kv = qg_gguf_find(g, "a.empty");
    assert_non_null(kv);
    assert_int_equal(kv->arr_n, 0);

    /* typed getters: u32 takes any integer type whose value fits */
    uint32_t u;
    float f;
    qg_str s;
    assert_int_equal(qg_gguf_get_u32(g, "k.u8", &u, &err), QG_OK);
    assert_int_equal(u, u8);
    assert_int_equal(qg_gguf_get_u32(g, "k.u16", &u, &err), QG_OK);
    assert_int_equal(u, u16);
    assert_int_equal(qg_gguf_get_u32(g, "k.u32", &u, &err), QG_OK);
    assert_int_equal(u, u32);
    assert_int_equal(qg_gguf_get_u32(g, "k.i32", &u, &err), QG_OK);
    assert_int_equal(u, (uint32_t)i32);
    /* values that do not fit, and wrong types: errors name key and value */
    static const struct { const char *key, *want; } bad_u32[] = {
        {"k.i8", "int8"}, {"k.i16", "int16"}, {"k.u64", "uint64"},
        {"k.i64", "int64"}, {"k.f32", "float32"}, {"k.bool", "bool"},
        {"k.str", "string"}, {"a.u32", "array"}};
    for (size_t i = 0; i < QG_ARRAY_LEN(bad_u32); i++) {
        memset(&err, 0, sizeof err);
        u = 12345;
        assert_int_equal(qg_gguf_get_u32(g, bad_u32[i].key, &u, &err),
                         QG_ERR_FORMAT);
        assert_int_equal(err.code, QG_ERR_FORMAT);
        assert_int_equal(u, 12345);
        assert_non_null(strstr(err.msg, bad_u32[i].key));
        assert_non_null(strstr(err.msg, bad_u32[i].want));
        assert_non_null(strstr(err.msg, "types.gguf: "));
    }
    char want[64];
    snprintf(want, sizeof want, "%" PRId64, (int64_t)i8);
    assert_int_equal(qg_gguf_get_u32(g, "k.i8", &u, &err), QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, want));
    assert_int_equal(qg_gguf_get_u32(g, "k.absent", &u, &err), QG_ERR_MODEL);
    assert_non_null(strstr(err.msg, "k.absent"));

    assert_int_equal(qg_gguf_get_f32(g, "k.f32", &f, &err), QG_OK);
    assert_true(f == f32);
    assert_int_equal(qg_gguf_get_f32(g, "k.f64", &f, &err), QG_OK);
    assert_true(f == (float)f64);
    assert_int_equal(qg_gguf_get_f32(g, "k.u32", &f, &err), QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "k.u32"));
    assert_non_null(strstr(err.msg, "uint32"));
    assert_int_equal(qg_gguf_get_f32(g, "k.absent", &f, &err), QG_ERR_MODEL);

    assert_int_equal(qg_gguf_get_str(g, "k.str", &s, &err), QG_OK);
    assert_true(qg_str_eq(s, strs[3]));
    assert_int_equal(qg_gguf_get_str(g, "k.u8", &s, &err), QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "k.u8"));
    assert_non_null(strstr(err.msg, "uint8"));
    assert_int_equal(qg_gguf_get_str(g, "k.absent", &s, &err), QG_ERR_MODEL);
    qg_gguf_close(g);

    /* a float64 beyond float32's range is refused by get_f32 */
    buf b2 = {0};
    b_u32(&b2, 0x46554747u);
    b_u32(&b2, 3);
    b_u64(&b2, 0);
    b_u64(&b2, 1);
    double big = 1e300;
    b_str(&b2, "k.big"); b_u32(&b2, QG_GGUF_FLOAT64); b_put(&b2, &big, 8);
    g = qg_gguf_open_memory(b2.p, b2.n, "big.gguf", &err);
    if (!g) fail_msg("%s", err.msg);
    assert_int_equal(qg_gguf_get_f32(g, "k.big", &f, &err), QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "k.big"));
    assert_non_null(strstr(err.msg, "1e+300"));
    qg_gguf_close(g);
    free(b2.p);
    free(b.p);

    for (int t = 0; t < QG_GGUF_TYPE_COUNT; t++)
        assert_string_not_equal(qg_gguf_type_name((qg_gguf_type)t), "unknown");
    assert_string_equal(qg_gguf_type_name(QG_GGUF_TYPE_COUNT), "unknown");
}

/* ---- bad inputs --------------------------------------------------------- */

/* Open a copy of img (exactly n bytes, so ASan sees any over-read) and
 * expect failure with `code` and each of the NULL-terminated substrings. */
static void expect_fail_n(const uint8_t *img, size_t n, qg_status code, ...) {
    uint8_t *copy = n ? malloc(n) : NULL;
    if (n) memcpy(copy, img, n);
    qg_error err;
    memset(&err, 0, sizeof err);
    qg_gguf *g = qg_gguf_open_memory(copy, n, "bad.gguf", &err);
    if (g) fail_msg("accepted a bad image of %zu bytes", n);
    if (getenv("QG_TEST_VERBOSE")) printf("  refused: %s\n", err.msg);
    if (err.code != code)
        fail_msg("status %d, expected %d: %s", err.code, code, err.msg);
    if (strncmp(err.msg, "bad.gguf: ", 10) != 0) fail_msg("no label: %s", err.msg);
    if (strchr(err.msg, '\n')) fail_msg("multi-line message: %s", err.msg);
    va_list ap;
    va_start(ap, code);
    for (const char *s; (s = va_arg(ap, const char *));)
        if (!strstr(err.msg, s)) fail_msg("'%s' not in: %s", s, err.msg);
    va_end(ap);
    free(copy);
}

/* One mutation of the base image: the setup, then the expectation. */
typedef struct mutant {
    buf b;
    base_marks m;
} mutant;

static void mutant_new(mutant *mu, uint64_t seed) {
    memset(mu, 0, sizeof *mu);
    base_opts o = {.version = 3, .alignment = 0};
    build_base(&mu->b, &mu->m, &o, &seed);
}

#define EXPECT_FAIL(mu, code, ...) \
    expect_fail_n((mu)->b.p, (mu)->b.n, code, __VA_ARGS__, (const char *)NULL)

static void test_bad_header(void **state) {
    (void)state;
    mutant mu;
    uint64_t seed = 4000;

    expect_fail_n(NULL, 0, QG_ERR_IO, "empty file", (const char *)NULL);
    const char *text = "hello, this is a text file and not a model\n";
    expect_fail_n((const uint8_t *)text, strlen(text), QG_ERR_FORMAT,
                  "not a GGUF file", "hell", (const char *)NULL);
    expect_fail_n((const uint8_t *)"GG", 2, QG_ERR_FORMAT, "too small",
                  (const char *)NULL);

    mutant_new(&mu, seed++);
    mu.b.p[0] = 'X';
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "magic", "XGUF");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w32(mu.b.p, mu.m.version, 1);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "version 1 ");
    w32(mu.b.p, mu.m.version, 99);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "version 99");
    w32(mu.b.p, mu.m.version, 0x03000000u);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "big-endian");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w64(mu.b.p, mu.m.n_tensors, 1ull << 40);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "n_tensors 1099511627776");
    w64(mu.b.p, mu.m.n_tensors, 1000); /* under the cap, over the size */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "n_tensors 1000 cannot fit");
    w64(mu.b.p, mu.m.n_tensors, 4); /* fits the size; the 4th info is data */
    expect_fail_n(mu.b.p, mu.b.n, QG_ERR_FORMAT, "bad.gguf: ", (const char *)NULL);
    w64(mu.b.p, mu.m.n_tensors, BASE_NT);
    w64(mu.b.p, mu.m.n_kv, UINT64_MAX);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "n_kv 18446744073709551615");
    w64(mu.b.p, mu.m.n_kv, 100);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "n_kv 100 cannot fit");
    free(mu.b.p);
}

static void test_bad_metadata(void **state) {
    (void)state;
    mutant mu;
    uint64_t seed = 5000;

    mutant_new(&mu, seed++);
    w64(mu.b.p, mu.m.arch_len, 1ull << 50);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'general.architecture'", "string length");
    w64(mu.b.p, mu.m.arch_len, UINT64_MAX);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'general.architecture'", "string length");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w32(mu.b.p, mu.m.u32_type, 13);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'test.u32'", "type id 13");
    w32(mu.b.p, mu.m.u32_type, 0xffffffffu);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'test.u32'", "type id 4294967295");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    mu.b.p[mu.m.bool_val] = 2;
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'test.bool'", "bool value 2");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w64(mu.b.p, mu.m.arr_n, 1ull << 40);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'test.arr'", "array of 1099511627776");
    w64(mu.b.p, mu.m.arr_n, UINT64_MAX); /* count * 4 would wrap */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'test.arr'", "array of");
    w64(mu.b.p, mu.m.arr_n, 3);
    w32(mu.b.p, mu.m.arr_type, 200);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'test.arr'", "unknown type id 200");
    w32(mu.b.p, mu.m.arr_type, QG_GGUF_ARRAY);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'test.arr'", "arrays of arrays");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w64(mu.b.p, mu.m.sarr_n, 1ull << 61); /* offsets would need 2^64 bytes */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'tokenizer.tokens'", "strings");
    w64(mu.b.p, mu.m.sarr_n, 3);
    w64(mu.b.p, mu.m.sarr_len1, 1ull << 62);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'tokenizer.tokens'", "string 1 ");
    free(mu.b.p);

    /* duplicate key: "test.u32" becomes a second "test.i32" */
    mutant_new(&mu, seed++);
    mu.b.p[mu.m.u32_key + 5] = 'i';
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "duplicate key 'test.i32'");
    free(mu.b.p);

    /* general.alignment: a power of two, and uint32 */
    buf b = {0};
    base_marks m;
    base_opts o = {.version = 3, .alignment = 64};
    build_base(&b, &m, &o, &seed);
    w32(b.p, m.align_val, 48);
    expect_fail_n(b.p, b.n, QG_ERR_FORMAT, "'general.alignment'", "48",
                  (const char *)NULL);
    w32(b.p, m.align_val, 0);
    expect_fail_n(b.p, b.n, QG_ERR_FORMAT, "'general.alignment'", "= 0",
                  (const char *)NULL);
    w32(b.p, m.align_val, 64);
    w32(b.p, m.align_val - 4, QG_GGUF_INT32);
    expect_fail_n(b.p, b.n, QG_ERR_FORMAT, "'general.alignment'", "int32",
                  (const char *)NULL);
    free(b.p);
}

static void test_bad_tensors(void **state) {
    (void)state;
    mutant mu;
    uint64_t seed = 6000;
    const char *n0 = "'blk.0.ffn_up.weight'", *n1 = "'blk.0.ffn_dn.weight'";

    mutant_new(&mu, seed++);
    w64(mu.b.p, mu.m.t_off[2], 1ull << 40);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'output_norm.weight'", "past the end");
    w64(mu.b.p, mu.m.t_off[2], UINT64_MAX - 31); /* aligned, wraps if added */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "'output_norm.weight'", "past the end");
    free(mu.b.p);

    /* data that starts inside the file and runs past its end */
    mutant_new(&mu, seed++);
    {
        uint64_t off;
        memcpy(&off, mu.b.p + mu.m.t_off[2], 8);
        uint64_t end = mu.m.data_offset + off + mu.m.t_nbytes[2];
        char want[128];
        snprintf(want, sizeof want, "data [%" PRIu64 ", %" PRIu64 ") runs past "
                 "the end of the file (%zu bytes)", end - mu.m.t_nbytes[2], end,
                 (size_t)mu.m.data_end - 1);
        expect_fail_n(mu.b.p, mu.m.data_end - 1, QG_ERR_FORMAT,
                      "tensor 'output_norm.weight': ", want, (const char *)NULL);
    }
    free(mu.b.p);

    mutant_new(&mu, seed++);
    {
        uint64_t off;
        memcpy(&off, mu.b.p + mu.m.t_off[1], 8);
        w64(mu.b.p, mu.m.t_off[1], off + 4);
        EXPECT_FAIL(&mu, QG_ERR_FORMAT, n1, "not a multiple of the alignment 32");
        /* tensor 1 moved onto tensor 0's data: overlap */
        w64(mu.b.p, mu.m.t_off[1], 64);
        EXPECT_FAIL(&mu, QG_ERR_FORMAT, n1, n0, "overlaps");
    }
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w32(mu.b.p, mu.m.t_type[1], 77);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n1, "unknown type id 77");
    w32(mu.b.p, mu.m.t_type[1], 4); /* an id GGML retired */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n1, "unknown type id 4");
    w32(mu.b.p, mu.m.t_type[1], 10); /* q2_K */
    EXPECT_FAIL(&mu, QG_ERR_UNSUPPORTED, "bad.gguf: tensor 'blk.0.ffn_dn.weight' "
                "has type q2_K, which qmoe-graph does not support");
    w32(mu.b.p, mu.m.t_type[1], QG_Q4_K); /* ne[0] = 64: not a multiple of 256 */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n1, "ne[0] = 64", "block size 256");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w32(mu.b.p, mu.m.t_ndims[0], 5);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n0, "n_dims 5");
    w32(mu.b.p, mu.m.t_ndims[0], 0);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n0, "n_dims 0");
    free(mu.b.p);

    mutant_new(&mu, seed++);
    w64(mu.b.p, mu.m.t_ne[0][1], 0);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n0, "ne[1] is 0");
    w64(mu.b.p, mu.m.t_ne[0][1], 3);
    w64(mu.b.p, mu.m.t_ne[0][0], 1ull << 62); /* 3 * 2^62 > INT64_MAX */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n0, "more than INT64_MAX elements");
    w64(mu.b.p, mu.m.t_ne[0][0], 1ull << 61); /* 3 * 2^61 * 4 bytes > 2^64 */
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n0, "size in bytes");
    w64(mu.b.p, mu.m.t_ne[0][0], 1ull << 63);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, n0, "ne[0]", "too large");
    free(mu.b.p);

    /* duplicate tensor name: "ffn_dn" becomes "ffn_up" */
    mutant_new(&mu, seed++);
    memcpy(mu.b.p + mu.m.t_name[1] + 8 + 10, "up", 2);
    EXPECT_FAIL(&mu, QG_ERR_FORMAT, "duplicate tensor name", n0);
    free(mu.b.p);

    /* names: 127 bytes is fine, 128 is not; no NUL inside */
    char name[200];
    memset(name, 'n', sizeof name);
    name[127] = 0;
    buf b = {0};
    base_marks m;
    base_opts o = {.version = 3, .alignment = 0, .name0 = name};
    build_base(&b, &m, &o, &seed);
    qg_error err;
    qg_gguf *g = qg_gguf_open_memory(b.p, b.n, "ok.gguf", &err);
    if (!g) fail_msg("%s", err.msg);
    check_base(g, &b, &m, &o);
    qg_gguf_close(g);
    b.p[m.t_name[0] + 8 + 3] = 0;
    expect_fail_n(b.p, b.n, QG_ERR_FORMAT, "tensor 0", "NUL", (const char *)NULL);
    free(b.p);
    memset(&b, 0, sizeof b);
    name[127] = 'n';
    name[128] = 0;
    build_base(&b, &m, &o, &seed);
    expect_fail_n(b.p, b.n, QG_ERR_FORMAT, "tensor 0", "nnnnnnnn",
                  "128 bytes, longer than 127", (const char *)NULL);
    free(b.p);
}

/* Every prefix of the image up to the end of the last tensor's data is
 * refused (empty: QG_ERR_IO, else QG_ERR_FORMAT) without reading outside
 * the prefix (each is its own exact-size heap block for ASan).  Then every
 * single-byte change of the header region must be either accepted or
 * refused cleanly. */
static void test_truncation_and_bitflips(void **state) {
    (void)state;
    for (uint32_t align = 0; align <= 64; align += 64) {
        mutant mu;
        memset(&mu, 0, sizeof mu);
        uint64_t seed = 7000 + align;
        base_opts o = {.version = 3, .alignment = align};
        build_base(&mu.b, &mu.m, &o, &seed);
        for (size_t n = 0; n < mu.m.data_end; n++)
            expect_fail_n(mu.b.p, n, n ? QG_ERR_FORMAT : QG_ERR_IO,
                          (const char *)NULL);
        /* the full image and the image without its tail padding are fine */
        for (size_t n = mu.m.data_end; n <= mu.b.n; n += mu.b.n - mu.m.data_end) {
            qg_error err;
            qg_gguf *g = qg_gguf_open_memory(mu.b.p, n, "ok.gguf", &err);
            if (!g) fail_msg("%s", err.msg);
            qg_gguf_close(g);
            if (n == mu.b.n) break;
        }
        uint64_t rs = 7100 + align;
        for (size_t at = 0; at < mu.m.data_offset; at++) {
            for (int k = 0; k < 3; k++) {
                uint8_t *copy = malloc(mu.b.n);
                memcpy(copy, mu.b.p, mu.b.n);
                copy[at] ^= (uint8_t)(1u << (rng_next(&rs) % 8));
                if (k == 2) copy[at] = (uint8_t)rng_next(&rs);
                qg_error err = {0};
                qg_gguf *g = qg_gguf_open_memory(copy, mu.b.n, "flip.gguf", &err);
                if (g) {
                    for (uint64_t t = 0; t < g->n_tensors; t++) {
                        const qg_gguf_tensor *ti = &g->tensors[t];
                        assert_true((const uint8_t *)ti->data >= copy);
                        assert_true((const uint8_t *)ti->data + ti->nbytes <=
                                    copy + mu.b.n);
                    }
                    qg_gguf_close(g);
                } else {
                    assert_true(err.code == QG_ERR_FORMAT ||
                                err.code == QG_ERR_UNSUPPORTED);
                    assert_int_equal(strncmp(err.msg, "flip.gguf: ", 11), 0);
                }
                free(copy);
            }
        }
        free(mu.b.p);
    }
}

static void test_bad_files(void **state) {
    (void)state;
    char dir[64], path[256];
    make_tmpdir(dir, sizeof dir);
    qg_error err;

    snprintf(path, sizeof path, "%s/missing.gguf", dir);
    assert_null(qg_gguf_open(path, &err));
    assert_int_equal(err.code, QG_ERR_IO);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "No such file"));

    snprintf(path, sizeof path, "%s/adir", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_null(qg_gguf_open(path, &err));
    assert_int_equal(err.code, QG_ERR_IO);
    char want[300];
    snprintf(want, sizeof want, "%s: is a directory", path);
    assert_string_equal(err.msg, want);

    snprintf(path, sizeof path, "%s/empty.gguf", dir);
    write_file(path, "", 0);
    assert_null(qg_gguf_open(path, &err));
    assert_int_equal(err.code, QG_ERR_IO);
    snprintf(want, sizeof want, "%s: empty file", path);
    assert_string_equal(err.msg, want);

    snprintf(path, sizeof path, "%s/text.gguf", dir);
    const char *text = "not a model at all, just some words in a file\n";
    write_file(path, text, strlen(text));
    assert_null(qg_gguf_open(path, &err));
    assert_int_equal(err.code, QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "not a GGUF file"));

    /* a few truncations through the mmap path */
    mutant mu;
    mutant_new(&mu, 8000);
    snprintf(path, sizeof path, "%s/trunc.gguf", dir);
    size_t cuts[] = {3, 23, 24, 30, mu.m.t_name[1] + 3, mu.m.data_offset,
                     mu.m.data_end - 1};
    for (size_t i = 0; i < QG_ARRAY_LEN(cuts); i++) {
        write_file(path, mu.b.p, cuts[i]);
        assert_null(qg_gguf_open(path, &err));
        assert_int_equal(err.code, QG_ERR_FORMAT);
        assert_int_equal(strncmp(err.msg, path, strlen(path)), 0);
    }
    free(mu.b.p);
    remove_tmpdir(dir);
}

/* ---- the writer --------------------------------------------------------- */

#define N_TOKENS 150000

typedef struct wt_spec {
    const char *name;
    qg_dtype type;
    int n_dims;
    int64_t ne[4];
} wt_spec;

static const wt_spec WT[] = {
    {"token_embd.weight", QG_Q4_K, 2, {256, 3, 1, 1}},
    {"blk.0.attn_norm.weight", QG_F32, 1, {33, 1, 1, 1}},
    {"blk.0.attn_q.weight", QG_Q8_0, 2, {64, 3, 1, 1}},
    {"blk.0.ffn_up_exps.weight", QG_Q6_K, 3, {512, 2, 3, 1}},
    {"blk.0.ffn_down_exps.weight", QG_Q5_K, 3, {256, 1, 2, 1}},
    {"blk.0.attn_k.weight", QG_F16, 2, {7, 5, 1, 1}},
    {"blk.0.attn_v.weight", QG_BF16, 2, {9, 3, 1, 1}},
    {"blk.0.q40", QG_Q4_0, 2, {32, 5, 1, 1}},
    {"idx", QG_I32, 4, {5, 2, 1, 3}},
};
#define N_WT ((int)QG_ARRAY_LEN(WT))

static uint64_t wt_nbytes(const wt_spec *t) {
    const qg_dtype_info *in = qg_dtype_get(t->type);
    return (uint64_t)(t->ne[0] / in->block_size) * (uint64_t)in->type_size *
           (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
}

static void test_writer_round_trip(void **state) {
    (void)state;
    for (uint64_t align = 0; align <= 64; align += 64) {
        uint64_t seed = 9000 + align;
        char dir[64], path[128], tmp[140];
        make_tmpdir(dir, sizeof dir);
        snprintf(path, sizeof path, "%s/out.gguf", dir);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);

        /* metadata values, random per case */
        uint32_t u32 = (uint32_t)rng_next(&seed);
        int32_t i32 = (int32_t)rng_next(&seed);
        float f32;
        do {
            uint32_t bits = (uint32_t)rng_next(&seed);
            memcpy(&f32, &bits, 4);
        } while (!isfinite(f32));
        char str[64];
        for (int k = 0; k < 63; k++) str[k] = (char)(1 + rng_next(&seed) % 255);
        str[63] = 0;
        /* token strings: (N_TOKENS) of 0..11 random non-NUL bytes */
        char(*tok)[12] = malloc(sizeof(*tok) * N_TOKENS);
        const char **tokp = malloc(sizeof(*tokp) * N_TOKENS);
        assert_non_null(tok);
        assert_non_null(tokp);
        for (int i = 0; i < N_TOKENS; i++) {
            int len = (int)(rng_next(&seed) % 12);
            for (int k = 0; k < len; k++) tok[i][k] = (char)(1 + rng_next(&seed) % 255);
            tok[i][len] = 0;
            tokp[i] = tok[i];
        }
        enum { NI = 1000 };
        int32_t ai[NI];
        float af[NI];
        rng_fill(&seed, ai, sizeof ai);
        for (int i = 0; i < NI; i++)
            af[i] = (float)((double)(int64_t)rng_next(&seed) * 0x1p-60);

        qg_gguf_writer *w = qg_gguf_writer_new(align);
        qg_gguf_writer_set_str(w, "general.architecture", "qwen3moe");
        qg_gguf_writer_set_u32(w, "t.u32", u32 ^ 1); /* replaced below */
        qg_gguf_writer_set_u32(w, "t.u32", u32);
        qg_gguf_writer_set_i32(w, "t.i32", i32);
        qg_gguf_writer_set_f32(w, "t.f32", f32);
        qg_gguf_writer_set_bool(w, "t.true", true);
        qg_gguf_writer_set_bool(w, "t.false", false);
        qg_gguf_writer_set_str(w, "t.str", str);
        qg_gguf_writer_set_str(w, "t.empty", "");
        qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokp, N_TOKENS);
        qg_gguf_writer_set_arr_i32(w, "t.ai", ai, NI);
        qg_gguf_writer_set_arr_f32(w, "t.af", af, NI);
        qg_gguf_writer_set_arr_f32(w, "t.af0", NULL, 0);

        uint8_t *data[N_WT];
        for (int t = 0; t < N_WT; t++) {
            assert_int_equal(qg_gguf_writer_add_tensor(w, WT[t].name, WT[t].type,
                                                       WT[t].n_dims, WT[t].ne), t);
            data[t] = malloc(wt_nbytes(&WT[t]));
            rng_fill(&seed, data[t], wt_nbytes(&WT[t]));
        }
        qg_error err = {0};
        if (qg_gguf_writer_begin(w, path, &err)) fail_msg("%s", err.msg);
        assert_true(file_exists(tmp));
        assert_false(file_exists(path));
        for (int t = 0; t < N_WT; t++)
            if (qg_gguf_writer_write_data(w, t, data[t], wt_nbytes(&WT[t]), &err))
                fail_msg("%s", err.msg);
        assert_false(file_exists(path));
        if (qg_gguf_writer_finish(w, &err)) fail_msg("%s", err.msg);
        assert_true(file_exists(path));
        assert_false(file_exists(tmp));
        qg_gguf_writer_free(w);
        assert_true(file_exists(path)); /* free after finish keeps it */

        qg_gguf *g = qg_gguf_open(path, &err);
        if (!g) fail_msg("%s", err.msg);
        uint64_t want_align = align ? align : 32;
        assert_int_equal(g->version, 3);
        assert_int_equal(g->alignment, want_align);
        assert_int_equal(g->n_kv, 12 + (want_align != 32));
        uint32_t u;
        float f;
        qg_str s;
        assert_int_equal(qg_gguf_get_u32(g, "t.u32", &u, &err), QG_OK);
        assert_int_equal(u, u32);
        const qg_gguf_kv *kv = qg_gguf_find(g, "t.i32");
        assert_non_null(kv);
        assert_int_equal(kv->type, QG_GGUF_INT32);
        assert_int_equal(kv->v.i64, i32);
        assert_int_equal(qg_gguf_get_f32(g, "t.f32", &f, &err), QG_OK);
        assert_memory_equal(&f, &f32, 4);
        kv = qg_gguf_find(g, "t.true");
        assert_non_null(kv);
        assert_int_equal(kv->type, QG_GGUF_BOOL);
        assert_int_equal(kv->v.u64, 1);
        kv = qg_gguf_find(g, "t.false");
        assert_non_null(kv);
        assert_int_equal(kv->type, QG_GGUF_BOOL);
        assert_int_equal(kv->v.u64, 0);
        assert_int_equal(qg_gguf_get_str(g, "t.str", &s, &err), QG_OK);
        assert_true(qg_str_eq(s, str));
        assert_int_equal(qg_gguf_get_str(g, "t.empty", &s, &err), QG_OK);
        assert_int_equal(s.len, 0);
        assert_int_equal(qg_gguf_get_str(g, "general.architecture", &s, &err), QG_OK);
        assert_true(qg_str_eq(s, "qwen3moe"));
        kv = qg_gguf_find(g, "tokenizer.ggml.tokens");
        assert_non_null(kv);
        assert_int_equal(kv->arr_type, QG_GGUF_STRING);
        assert_int_equal(kv->arr_n, N_TOKENS);
        for (int i = 0; i < N_TOKENS; i++)
            if (!qg_str_eq(qg_gguf_arr_str(kv, (uint64_t)i), tok[i]))
                fail_msg("token %d differs", i);
        kv = qg_gguf_find(g, "t.ai");
        assert_non_null(kv);
        assert_int_equal(kv->arr_type, QG_GGUF_INT32);
        assert_int_equal(kv->arr_n, NI);
        assert_memory_equal(kv->arr_data, ai, sizeof ai);
        kv = qg_gguf_find(g, "t.af");
        assert_non_null(kv);
        assert_int_equal(kv->arr_type, QG_GGUF_FLOAT32);
        assert_int_equal(kv->arr_n, NI);
        assert_memory_equal(kv->arr_data, af, sizeof af);
        kv = qg_gguf_find(g, "t.af0");
        assert_non_null(kv);
        assert_int_equal(kv->arr_n, 0);
        if (want_align != 32) {
            assert_int_equal(qg_gguf_get_u32(g, "general.alignment", &u, &err), QG_OK);
            assert_int_equal(u, want_align);
        }

        assert_int_equal(g->n_tensors, N_WT);
        assert_int_equal(g->data_offset % want_align, 0);
        uint64_t end = 0;
        for (int t = 0; t < N_WT; t++) {
            const qg_gguf_tensor *ti = qg_gguf_find_tensor(g, WT[t].name);
            assert_ptr_equal(ti, &g->tensors[t]);
            assert_int_equal(ti->n_dims, WT[t].n_dims);
            for (int d = 0; d < 4; d++) assert_int_equal(ti->ne[d], WT[t].ne[d]);
            assert_int_equal(ti->type, WT[t].type);
            assert_int_equal(ti->nbytes, wt_nbytes(&WT[t]));
            assert_int_equal(ti->offset % want_align, 0);
            assert_true(ti->offset >= end); /* in order, no overlap */
            assert_memory_equal(ti->data, data[t], ti->nbytes);
            end = ti->offset + ti->nbytes;
            free(data[t]);
        }
        /* every tensor padded, the last one too */
        assert_int_equal(g->size, g->data_offset + (end + want_align - 1) /
                                                       want_align * want_align);
        qg_gguf_close(g);
        free(tok);
        free(tokp);
        remove_tmpdir(dir);
    }
}

/* free() without finish() removes the .tmp and leaves `path` as it was;
 * out-of-order or mis-sized data, an early finish and duplicate names are
 * refused with QG_ERR_ARG naming the file and tensor. */
static void test_writer_errors(void **state) {
    (void)state;
    char dir[64], path[128], tmp[140];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/w.gguf", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    const char *old = "previous contents";
    write_file(path, old, strlen(old));
    int64_t ne[2] = {4, 2};
    float d[8] = {0};
    qg_error err;

    /* abandoned before begin, after begin, and mid-data */
    for (int stage = 0; stage < 3; stage++) {
        qg_gguf_writer *w = qg_gguf_writer_new(0);
        qg_gguf_writer_set_u32(w, "a", 1);
        qg_gguf_writer_add_tensor(w, "x", QG_F32, 2, ne);
        qg_gguf_writer_add_tensor(w, "y", QG_F32, 2, ne);
        if (stage >= 1) assert_int_equal(qg_gguf_writer_begin(w, path, &err), QG_OK);
        if (stage >= 2)
            assert_int_equal(qg_gguf_writer_write_data(w, 0, d, 32, &err), QG_OK);
        if (stage >= 1) assert_true(file_exists(tmp));
        qg_gguf_writer_free(w);
        assert_false(file_exists(tmp));
        FILE *f = fopen(path, "rb");
        char back[64] = {0};
        assert_non_null(f);
        assert_int_equal(fread(back, 1, sizeof back, f), strlen(old));
        fclose(f);
        assert_string_equal(back, old);
    }

    qg_gguf_writer *w = qg_gguf_writer_new(0);
    qg_gguf_writer_add_tensor(w, "x", QG_F32, 2, ne);
    qg_gguf_writer_add_tensor(w, "y", QG_F32, 2, ne);
    assert_int_equal(qg_gguf_writer_write_data(w, 0, d, 32, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "before begin"));
    assert_int_equal(qg_gguf_writer_begin(w, path, &err), QG_OK);
    assert_int_equal(qg_gguf_writer_write_data(w, 1, d, 32, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "out of order"));
    assert_int_equal(qg_gguf_writer_write_data(w, 0, d, 28, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "tensor 'x': 28 bytes given, its shape needs 32"));
    assert_int_equal(qg_gguf_writer_write_data(w, 0, d, 32, &err), QG_OK);
    assert_int_equal(qg_gguf_writer_finish(w, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "'y'"));
    assert_int_equal(qg_gguf_writer_write_data(w, 1, d, 32, &err), QG_OK);
    assert_int_equal(qg_gguf_writer_finish(w, &err), QG_OK);
    assert_int_equal(qg_gguf_writer_finish(w, &err), QG_ERR_ARG);
    qg_gguf_writer_free(w);
    qg_gguf *g = qg_gguf_open(path, &err);
    if (!g) fail_msg("%s", err.msg);
    assert_int_equal(g->n_tensors, 2);
    assert_int_equal(g->n_kv, 0);
    qg_gguf_close(g);

    w = qg_gguf_writer_new(0);
    qg_gguf_writer_add_tensor(w, "same", QG_F32, 2, ne);
    qg_gguf_writer_add_tensor(w, "other", QG_F32, 2, ne);
    qg_gguf_writer_add_tensor(w, "same", QG_F32, 2, ne);
    assert_int_equal(qg_gguf_writer_begin(w, path, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "duplicate tensor name 'same'"));
    qg_gguf_writer_free(w);

    char nodir[200];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.gguf", dir);
    w = qg_gguf_writer_new(64);
    assert_int_equal(qg_gguf_writer_begin(w, nodir, &err), QG_ERR_IO);
    assert_non_null(strstr(err.msg, "x.gguf.tmp"));
    assert_non_null(strstr(err.msg, "No such file"));
    qg_gguf_writer_free(w);

    /* no tensors, no metadata: still a valid file */
    w = qg_gguf_writer_new(0);
    assert_int_equal(qg_gguf_writer_begin(w, path, &err), QG_OK);
    assert_int_equal(qg_gguf_writer_finish(w, &err), QG_OK);
    qg_gguf_writer_free(w);
    g = qg_gguf_open(path, &err);
    if (!g) fail_msg("%s", err.msg);
    assert_int_equal(g->n_tensors, 0);
    assert_int_equal(g->n_kv, 0);
    qg_gguf_close(g);
    remove_tmpdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_v3_and_v2),
        cmocka_unit_test(test_all_metadata_types),
        cmocka_unit_test(test_bad_header),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_bad_tensors),
        cmocka_unit_test(test_truncation_and_bitflips),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_writer_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
