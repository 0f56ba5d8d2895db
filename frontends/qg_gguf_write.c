/*
 * qg_gguf_write.c - the streaming GGUF v3 writer.
 *
 * Metadata is serialized as it is set (one blob per key, so setting a key
 * again replaces it), tensor infos are kept in a table with their offsets
 * in the data section computed at declaration, and begin() writes the whole
 * header in a few large writes.  Tensor data then goes straight from the
 * caller's buffer to the file (one fwrite per tensor, plus its padding), so
 * a 17 GiB output costs no per-element work and no extra copy.
 *
 * Everything goes to "<path>.tmp"; finish() flushes, fsyncs and renames it
 * to `path`, and free() removes the .tmp of a writer that never finished.
 * The layout written is the one qg_gguf_read.c describes, with every
 * tensor's data padded to the alignment (the last one too, as llama.cpp
 * does).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "qg_gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "qg_gguf_write.c writes values in host order: little-endian only"
#endif

#define WRITER_IOBUF (8u << 20) /* stdio buffer for the header and padding */
#define WRITER_MAX_ALIGN 4096u  /* padding is written from a zero block */

/* One metadata entry, serialized: { string key, u32 type, value }. */
typedef struct wkv {
    char *key;     /* NUL-terminated copy, for replacement lookups */
    uint8_t *blob; /* (len) bytes, exactly as they go to the file */
    size_t len;
} wkv;

typedef struct wtensor {
    char name[128];
    qg_dtype type;
    int n_dims;
    int64_t ne[4];   /* innermost first; unused dims 1 */
    uint64_t nbytes;
    uint64_t offset; /* in the data section, a multiple of the alignment */
} wtensor;

typedef enum wstate {
    WSTATE_DECLARE, /* setting metadata and adding tensors */
    WSTATE_DATA,    /* header written, streaming tensor data */
    WSTATE_DONE,    /* renamed to path */
    WSTATE_FAILED,  /* an I/O error; only free() is left */
} wstate;

struct qg_gguf_writer {
    uint64_t alignment;
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *tensors;
    size_t n_tensors, cap_tensors;
    uint64_t data_size; /* bytes of the data section, padded */

    wstate state;
    char *path, *tmp_path; /* set by begin() */
    FILE *f;
    char *iobuf;           /* (WRITER_IOBUF) stdio buffer of f */
    size_t next;           /* index of the next tensor to stream */
    bool tmp_exists;       /* tmp_path is on disk and ours to remove */
};

static const uint8_t ZEROS[WRITER_MAX_ALIGN];

/* ---- declaring --------------------------------------------------------- */

qg_gguf_writer *qg_gguf_writer_new(uint64_t alignment) {
    if (alignment == 0) alignment = 32;
    QG_ASSERT((alignment & (alignment - 1)) == 0);
    QG_ASSERT(alignment <= WRITER_MAX_ALIGN);
    qg_gguf_writer *w = calloc(1, sizeof *w);
    QG_ASSERT(w != NULL);
    w->alignment = alignment;
    w->state = WSTATE_DECLARE;
    /* readers default to 32; say so only when it differs */
    if (alignment != 32)
        qg_gguf_writer_set_u32(w, "general.alignment", (uint32_t)alignment);
    return w;
}

void qg_gguf_writer_free(qg_gguf_writer *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    if (w->tmp_exists) unlink(w->tmp_path);
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].blob);
    }
    free(w->kv);
    free(w->tensors);
    free(w->path);
    free(w->tmp_path);
    free(w->iobuf);
    free(w);
}

/* Start entry `key` of type `type` with `payload` value bytes to follow:
 * allocates the blob, writes key and type, and returns where the value
 * goes.  Replaces an existing entry of the same key in place. */
static uint8_t *kv_begin(qg_gguf_writer *w, const char *key, qg_gguf_type type,
                         size_t payload) {
    QG_ASSERT(w != NULL && key != NULL && key[0] != '\0');
    QG_ASSERT(w->state == WSTATE_DECLARE);
    uint64_t klen = strlen(key);
    size_t len = 8 + (size_t)klen + 4 + payload;
    QG_ASSERT(len > payload); /* no wrap */
    uint8_t *blob = malloc(len);
    QG_ASSERT(blob != NULL);
    uint32_t t = (uint32_t)type;
    memcpy(blob, &klen, 8);
    memcpy(blob + 8, key, (size_t)klen);
    memcpy(blob + 8 + klen, &t, 4);

    wkv *e = NULL;
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) e = &w->kv[i];
    if (e) {
        free(e->blob);
    } else {
        if (w->n_kv == w->cap_kv) {
            w->cap_kv = w->cap_kv ? 2 * w->cap_kv : 32;
            w->kv = realloc(w->kv, w->cap_kv * sizeof *w->kv);
            QG_ASSERT(w->kv != NULL);
        }
        e = &w->kv[w->n_kv++];
        e->key = strdup(key);
        QG_ASSERT(e->key != NULL);
    }
    e->blob = blob;
    e->len = len;
    return blob + 8 + klen + 4;
}

/* general.alignment belongs to the writer (qg_gguf_writer_new sets it);
 * other setters must not touch it. */
static bool is_alignment_key(const char *key) {
    QG_ASSERT(key != NULL);
    return strcmp(key, "general.alignment") == 0;
}

void qg_gguf_writer_set_u32(qg_gguf_writer *w, const char *key, uint32_t v) {
    /* the alignment is the writer's; a different value would lie */
    if (is_alignment_key(key)) QG_ASSERT(v == w->alignment);
    memcpy(kv_begin(w, key, QG_GGUF_UINT32, 4), &v, 4);
}

void qg_gguf_writer_set_i32(qg_gguf_writer *w, const char *key, int32_t v) {
    QG_ASSERT(!is_alignment_key(key));
    memcpy(kv_begin(w, key, QG_GGUF_INT32, 4), &v, 4);
}

void qg_gguf_writer_set_f32(qg_gguf_writer *w, const char *key, float v) {
    QG_ASSERT(!is_alignment_key(key));
    memcpy(kv_begin(w, key, QG_GGUF_FLOAT32, 4), &v, 4);
}

void qg_gguf_writer_set_bool(qg_gguf_writer *w, const char *key, bool v) {
    QG_ASSERT(!is_alignment_key(key));
    *kv_begin(w, key, QG_GGUF_BOOL, 1) = v ? 1 : 0;
}

void qg_gguf_writer_set_str(qg_gguf_writer *w, const char *key,
                            const char *v) {
    QG_ASSERT(v != NULL && !is_alignment_key(key));
    uint64_t n = strlen(v);
    uint8_t *p = kv_begin(w, key, QG_GGUF_STRING, 8 + (size_t)n);
    memcpy(p, &n, 8);
    memcpy(p + 8, v, (size_t)n);
}

/* Start an array entry of n elements of `et` with `bytes` of elements. */
static uint8_t *arr_begin(qg_gguf_writer *w, const char *key, qg_gguf_type et,
                          uint64_t n, size_t bytes) {
    QG_ASSERT(!is_alignment_key(key));
    uint8_t *p = kv_begin(w, key, QG_GGUF_ARRAY, 4 + 8 + bytes);
    uint32_t t = (uint32_t)et;
    memcpy(p, &t, 4);
    memcpy(p + 4, &n, 8);
    return p + 12;
}

void qg_gguf_writer_set_arr_str(qg_gguf_writer *w, const char *key,
                                const char *const *v, uint64_t n) {
    QG_ASSERT(v != NULL || n == 0);
    size_t bytes = 0;
    for (uint64_t i = 0; i < n; i++) {
        QG_ASSERT(v[i] != NULL);
        bytes += 8 + strlen(v[i]);
    }
    uint8_t *p = arr_begin(w, key, QG_GGUF_STRING, n, bytes);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = strlen(v[i]);
        memcpy(p, &len, 8);
        memcpy(p + 8, v[i], (size_t)len);
        p += 8 + len;
    }
}

void qg_gguf_writer_set_arr_i32(qg_gguf_writer *w, const char *key,
                                const int32_t *v, uint64_t n) {
    QG_ASSERT((v != NULL || n == 0) && n <= SIZE_MAX / 8);
    uint8_t *p = arr_begin(w, key, QG_GGUF_INT32, n, (size_t)n * 4);
    if (n) memcpy(p, v, (size_t)n * 4);
}

void qg_gguf_writer_set_arr_f32(qg_gguf_writer *w, const char *key,
                                const float *v, uint64_t n) {
    QG_ASSERT((v != NULL || n == 0) && n <= SIZE_MAX / 8);
    uint8_t *p = arr_begin(w, key, QG_GGUF_FLOAT32, n, (size_t)n * 4);
    if (n) memcpy(p, v, (size_t)n * 4);
}

int qg_gguf_writer_add_tensor(qg_gguf_writer *w, const char *name,
                              qg_dtype type, int n_dims, const int64_t *ne) {
    QG_ASSERT(w != NULL && w->state == WSTATE_DECLARE);
    QG_ASSERT(name != NULL && ne != NULL);
    size_t nlen = strlen(name);
    QG_ASSERT(nlen >= 1 && nlen <= 127);
    QG_ASSERT(n_dims >= 1 && n_dims <= 4);
    const qg_dtype_info *info = qg_dtype_get((uint32_t)type);
    QG_ASSERT(info != NULL && info->type_size > 0);
    QG_ASSERT(w->n_tensors < (size_t)INT32_MAX);

    if (w->n_tensors == w->cap_tensors) {
        w->cap_tensors = w->cap_tensors ? 2 * w->cap_tensors : 64;
        w->tensors = realloc(w->tensors, w->cap_tensors * sizeof *w->tensors);
        QG_ASSERT(w->tensors != NULL);
    }
    wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, nlen + 1);
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < 4; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        QG_ASSERT(t->ne[d] >= 1);
    }
    QG_ASSERT(t->ne[0] % info->block_size == 0);
    uint64_t nbytes = (uint64_t)(t->ne[0] / info->block_size);
    bool ovf = __builtin_mul_overflow(nbytes, (uint64_t)info->type_size, &nbytes);
    for (int d = 1; d < 4; d++)
        ovf |= __builtin_mul_overflow(nbytes, (uint64_t)t->ne[d], &nbytes);
    QG_ASSERT(!ovf && nbytes <= (uint64_t)INT64_MAX);
    t->nbytes = nbytes;
    t->offset = w->data_size;
    uint64_t padded = (nbytes + w->alignment - 1) & ~(w->alignment - 1);
    QG_ASSERT(!__builtin_add_overflow(w->data_size, padded, &w->data_size));
    return (int)w->n_tensors++;
}

/* ---- writing ----------------------------------------------------------- */

/* Record an I/O failure on the .tmp file (errno is the cause). */
static qg_status io_fail(qg_gguf_writer *w, const char *what, qg_error *err) {
    int e = errno;
    w->state = WSTATE_FAILED;
    return qg_error_set(err, QG_ERR_IO, "%s: %s: %s", w->tmp_path, what,
                        e ? strerror(e) : "unknown error");
}

static bool put(qg_gguf_writer *w, const void *p, size_t n) {
    return n == 0 || fwrite(p, 1, n, w->f) == n;
}

/* Zero bytes that take `pos` up to the next multiple of the alignment. */
static bool pad(qg_gguf_writer *w, uint64_t pos) {
    size_t n = (size_t)((w->alignment - pos % w->alignment) % w->alignment);
    return put(w, ZEROS, n);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Refuse two tensors of one name (the reader would refuse the file). */
static qg_status check_unique_names(qg_gguf_writer *w, const char *path,
                                    qg_error *err) {
    if (w->n_tensors < 2) return QG_OK;
    const char **names = malloc(w->n_tensors * sizeof *names);
    QG_ASSERT(names != NULL);
    for (size_t i = 0; i < w->n_tensors; i++) names[i] = w->tensors[i].name;
    qsort(names, w->n_tensors, sizeof *names, cmp_name);
    qg_status st = QG_OK;
    for (size_t i = 1; i < w->n_tensors && !st; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            st = qg_error_set(err, QG_ERR_ARG, "%s: duplicate tensor name '%s'",
                              path, names[i]);
    free(names);
    return st;
}

qg_status qg_gguf_writer_begin(qg_gguf_writer *w, const char *path,
                               qg_error *err) {
    QG_ASSERT(w != NULL && path != NULL);
    QG_ASSERT(w->state == WSTATE_DECLARE);
    qg_status st = check_unique_names(w, path, err);
    if (st) return st;

    size_t plen = strlen(path);
    w->path = strdup(path);
    w->tmp_path = malloc(plen + 5);
    w->iobuf = malloc(WRITER_IOBUF);
    QG_ASSERT(w->path && w->tmp_path && w->iobuf);
    memcpy(w->tmp_path, path, plen);
    memcpy(w->tmp_path + plen, ".tmp", 5);

    errno = 0;
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) return io_fail(w, "cannot create", err);
    w->tmp_exists = true;
    setvbuf(w->f, w->iobuf, _IOFBF, WRITER_IOBUF);

    uint32_t head32[2] = {0x46554747u /* "GGUF" */, 3};
    uint64_t counts[2] = {w->n_tensors, w->n_kv};
    uint64_t pos = 24;
    bool ok = put(w, head32, 8) && put(w, counts, 16);
    for (size_t i = 0; ok && i < w->n_kv; i++) {
        ok = put(w, w->kv[i].blob, w->kv[i].len);
        pos += w->kv[i].len;
    }
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        uint64_t nlen = strlen(t->name), ne[4];
        uint32_t nd = (uint32_t)t->n_dims, type = (uint32_t)t->type;
        for (int d = 0; d < t->n_dims; d++) ne[d] = (uint64_t)t->ne[d];
        ok = put(w, &nlen, 8) && put(w, t->name, (size_t)nlen) &&
             put(w, &nd, 4) && put(w, ne, 8 * nd) && put(w, &type, 4) &&
             put(w, &t->offset, 8);
        pos += 8 + nlen + 4 + 8 * nd + 4 + 8;
    }
    ok = ok && pad(w, pos);
    if (!ok) return io_fail(w, "write failed", err);
    w->state = WSTATE_DATA;
    w->next = 0;
    return QG_OK;
}

qg_status qg_gguf_writer_write_data(qg_gguf_writer *w, int index,
                                    const void *data, uint64_t nbytes,
                                    qg_error *err) {
    QG_ASSERT(w != NULL);
    if (w->state != WSTATE_DATA)
        return qg_error_set(err, QG_ERR_ARG, "%s: write_data %s",
                            w->path ? w->path : "gguf writer",
                            w->state == WSTATE_DECLARE ? "before begin()"
                            : w->state == WSTATE_DONE  ? "after finish()"
                                                       : "after an I/O error");
    if (index < 0 || (size_t)index != w->next)
        return qg_error_set(err, QG_ERR_ARG, "%s: tensor index %d written out "
                            "of order (expected %zu of %zu)", w->path, index,
                            w->next, w->n_tensors);
    const wtensor *t = &w->tensors[index];
    if (nbytes != t->nbytes)
        return qg_error_set(err, QG_ERR_ARG, "%s: tensor '%s': %" PRIu64
                            " bytes given, its shape needs %" PRIu64, w->path,
                            t->name, nbytes, t->nbytes);
    QG_ASSERT(data != NULL);
    errno = 0;
    if (!put(w, data, (size_t)nbytes) || !pad(w, nbytes))
        return io_fail(w, "write failed", err);
    w->next++;
    return QG_OK;
}

qg_status qg_gguf_writer_finish(qg_gguf_writer *w, qg_error *err) {
    QG_ASSERT(w != NULL);
    if (w->state != WSTATE_DATA)
        return qg_error_set(err, QG_ERR_ARG, "%s: finish %s",
                            w->path ? w->path : "gguf writer",
                            w->state == WSTATE_DECLARE ? "before begin()"
                            : w->state == WSTATE_DONE  ? "called twice"
                                                       : "after an I/O error");
    if (w->next != w->n_tensors)
        return qg_error_set(err, QG_ERR_ARG, "%s: finish after %zu of %zu "
                            "tensors' data (next: '%s')", w->path, w->next,
                            w->n_tensors, w->tensors[w->next].name);
    errno = 0;
    if (fflush(w->f) != 0) return io_fail(w, "write failed", err);
    if (fsync(fileno(w->f)) != 0) return io_fail(w, "fsync failed", err);
    FILE *f = w->f;
    w->f = NULL;
    if (fclose(f) != 0) return io_fail(w, "close failed", err);
    if (rename(w->tmp_path, w->path) != 0) {
        int e = errno;
        w->state = WSTATE_FAILED;
        return qg_error_set(err, QG_ERR_IO, "%s: cannot rename %s to it: %s",
                            w->path, w->tmp_path, strerror(e));
    }
    w->tmp_exists = false;
    w->state = WSTATE_DONE;
    return QG_OK;
}
