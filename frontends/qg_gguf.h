/*
 * qg_gguf.h - GGUF v2/v3 reader (over mmap) and a streaming writer.
 *
 * Reader: qg_gguf_open maps the file read-only and validates everything it
 * can before returning: magic, version, counts (against the file size),
 * every metadata type, string lengths, array sizes, tensor dims (1..4, no
 * overflow), tensor types (known ids), tensor offsets (aligned, inside the
 * file, non-overlapping ends).  A file that passes can be read without any
 * further bounds checks.  On failure it returns NULL and err->msg names the
 * file and the offending key / tensor / value, e.g.
 *   "model.gguf: tensor 'blk.0.attn_q.weight': offset 123456 + 4096 bytes
 *    is past the end of the file (100000 bytes)".
 *
 * Strings in a GGUF are not NUL-terminated; qg_str points into the map.
 */
#ifndef QG_GGUF_H
#define QG_GGUF_H

#include "../graph/qg_base.h"
#include "../graph/qg_dtype.h"

#include <stdio.h>

typedef enum qg_gguf_type {
    QG_GGUF_UINT8 = 0,
    QG_GGUF_INT8 = 1,
    QG_GGUF_UINT16 = 2,
    QG_GGUF_INT16 = 3,
    QG_GGUF_UINT32 = 4,
    QG_GGUF_INT32 = 5,
    QG_GGUF_FLOAT32 = 6,
    QG_GGUF_BOOL = 7,
    QG_GGUF_STRING = 8,
    QG_GGUF_ARRAY = 9,
    QG_GGUF_UINT64 = 10,
    QG_GGUF_INT64 = 11,
    QG_GGUF_FLOAT64 = 12,
    QG_GGUF_TYPE_COUNT = 13,
} qg_gguf_type;

typedef struct qg_str {
    const char *ptr; /* into the map; not NUL-terminated */
    uint64_t len;
} qg_str;

/* One metadata key/value. */
typedef struct qg_gguf_kv {
    qg_str key;
    qg_gguf_type type;
    /* scalars (type != ARRAY, != STRING): value widened */
    union {
        uint64_t u64; /* UINT8/16/32/64, BOOL */
        int64_t i64;  /* INT8/16/32/64 */
        double f64;   /* FLOAT32/64 */
    } v;
    qg_str str; /* type == STRING */
    /* type == ARRAY: element type, count, raw little-endian data.  For an
     * array of strings, str_offsets[i] is the byte offset (from arr_data) of
     * string i's 8-byte length prefix; it is NULL for other arrays. */
    qg_gguf_type arr_type;
    uint64_t arr_n;
    const uint8_t *arr_data;
    uint64_t *str_offsets;
} qg_gguf_kv;

typedef struct qg_gguf_tensor {
    qg_str name;
    char cname[128]; /* name, NUL-terminated (names over 127 bytes: error) */
    int n_dims;
    int64_t ne[4];   /* innermost first; unused dims are 1 */
    qg_dtype type;
    uint64_t offset; /* relative to the data section */
    uint64_t nbytes;
    const void *data; /* into the map */
} qg_gguf_tensor;

typedef struct qg_gguf {
    char path[1024];
    const uint8_t *map; /* whole file */
    uint64_t size;
    uint32_t version;
    uint64_t alignment;
    uint64_t n_kv;
    qg_gguf_kv *kv;
    uint64_t n_tensors;
    qg_gguf_tensor *tensors;
    uint64_t data_offset; /* start of the tensor data section */
    bool owns_map;        /* false for qg_gguf_open_memory */
} qg_gguf;

/* Open and validate `path`.  NULL on error (err says why). */
qg_gguf *qg_gguf_open(const char *path, qg_error *err);
/* Parse a GGUF image already in memory (not copied; must outlive the
 * result).  `label` names it in messages.  Used by the fuzzer and tests. */
qg_gguf *qg_gguf_open_memory(const void *data, size_t size, const char *label,
                             qg_error *err);
void qg_gguf_close(qg_gguf *g);

/* Metadata lookup; NULL if absent. */
const qg_gguf_kv *qg_gguf_find(const qg_gguf *g, const char *key);
/* Typed getters.  Integer getters accept any integer type whose value fits;
 * float getters accept FLOAT32/64.  Return QG_OK, or an error naming the
 * key and the value/type found (QG_ERR_MODEL if missing, QG_ERR_FORMAT if
 * the type is wrong or the value does not fit). */
qg_status qg_gguf_get_u32(const qg_gguf *g, const char *key, uint32_t *out,
                          qg_error *err);
qg_status qg_gguf_get_f32(const qg_gguf *g, const char *key, float *out,
                          qg_error *err);
qg_status qg_gguf_get_str(const qg_gguf *g, const char *key, qg_str *out,
                          qg_error *err);
/* String i of a string array (i < kv->arr_n). */
qg_str qg_gguf_arr_str(const qg_gguf_kv *kv, uint64_t i);
/* Compare a qg_str with a C string. */
bool qg_str_eq(qg_str s, const char *c);

const qg_gguf_tensor *qg_gguf_find_tensor(const qg_gguf *g, const char *name);
const char *qg_gguf_type_name(qg_gguf_type t);

/*
 * Writer.  Declare metadata and tensor infos, then qg_gguf_writer_begin()
 * writes the header, and each tensor's data is streamed in declaration
 * order with qg_gguf_writer_write_data() (padding handled).  Writes to
 * "<path>.tmp" and renames on qg_gguf_writer_finish(), so a failed or
 * interrupted write never leaves a partial file at `path`.
 */
typedef struct qg_gguf_writer qg_gguf_writer;

qg_gguf_writer *qg_gguf_writer_new(uint64_t alignment /* 0: 32 */);
void qg_gguf_writer_free(qg_gguf_writer *w); /* also removes a .tmp */
void qg_gguf_writer_set_u32(qg_gguf_writer *w, const char *key, uint32_t v);
void qg_gguf_writer_set_i32(qg_gguf_writer *w, const char *key, int32_t v);
void qg_gguf_writer_set_f32(qg_gguf_writer *w, const char *key, float v);
void qg_gguf_writer_set_bool(qg_gguf_writer *w, const char *key, bool v);
void qg_gguf_writer_set_str(qg_gguf_writer *w, const char *key,
                            const char *v);
/* Arrays are copied. */
void qg_gguf_writer_set_arr_str(qg_gguf_writer *w, const char *key,
                                const char *const *v, uint64_t n);
void qg_gguf_writer_set_arr_i32(qg_gguf_writer *w, const char *key,
                                const int32_t *v, uint64_t n);
void qg_gguf_writer_set_arr_f32(qg_gguf_writer *w, const char *key,
                                const float *v, uint64_t n);
/* Declare a tensor (ne innermost first, n_dims 1..4); returns its index. */
int qg_gguf_writer_add_tensor(qg_gguf_writer *w, const char *name,
                              qg_dtype type, int n_dims, const int64_t *ne);
qg_status qg_gguf_writer_begin(qg_gguf_writer *w, const char *path,
                               qg_error *err);
/* Data of tensor `index` (must be the next one), exactly its nbytes. */
qg_status qg_gguf_writer_write_data(qg_gguf_writer *w, int index,
                                    const void *data, uint64_t nbytes,
                                    qg_error *err);
qg_status qg_gguf_writer_finish(qg_gguf_writer *w, qg_error *err);

#endif
