/*
 * qg_dtype.h - tensor element types.
 *
 * The enum values are GGML's type ids, so a GGUF tensor's type field maps to
 * qg_dtype with a range check and a table lookup.  Block types store
 * `block_size` elements in `type_size` bytes; plain types have block_size 1.
 */
#ifndef QG_DTYPE_H
#define QG_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum qg_dtype {
    QG_F32 = 0,
    QG_F16 = 1,
    QG_Q4_0 = 2,
    QG_Q8_0 = 8,
    QG_Q4_K = 12,
    QG_Q5_K = 13,
    QG_Q6_K = 14,
    QG_I32 = 26,
    QG_BF16 = 30,
    QG_DTYPE_COUNT = 43, /* GGML_TYPE_COUNT: ids at or above are unknown */
} qg_dtype;

#define QG_QK_K 256 /* super-block size of the K-quants */
#define QG_QK8_0 32
#define QG_QK4_0 32

/* Describe a dtype.  For ids we do not support, supported == false. */
typedef struct qg_dtype_info {
    const char *name;   /* "q4_K", as GGML spells it */
    int block_size;     /* elements per block */
    int type_size;      /* bytes per block */
    bool quantized;
    bool supported;     /* we can load, dequantize and dot it */
} qg_dtype_info;

/* Info for any id 0..QG_DTYPE_COUNT-1 (unsupported ids have supported=false,
 * name "unknown" if GGML never used the id).  id out of range: NULL. */
const qg_dtype_info *qg_dtype_get(uint32_t id);

const char *qg_dtype_name(qg_dtype t);
/* Bytes for a row of n elements; n must be a multiple of the block size. */
size_t qg_dtype_row_bytes(qg_dtype t, int64_t n);
int qg_dtype_block_size(qg_dtype t);

/* Parse "f32", "q4_k", "Q4_K", ... ; returns false if unknown. */
bool qg_dtype_from_name(const char *name, qg_dtype *out);

#endif
