/* qg_dtype.c - the dtype table. */
#include "qg_dtype.h"

#include <strings.h>

static const qg_dtype_info UNKNOWN = {"unknown", 1, 0, false, false};

/* Indexed by GGML type id.  Ids GGML uses but we do not run are listed
 * with supported=false so messages can name them. */
static const qg_dtype_info TABLE[QG_DTYPE_COUNT] = {
    [0] = {"f32", 1, 4, false, true},
    [1] = {"f16", 1, 2, false, true},
    [2] = {"q4_0", 32, 18, true, true},
    [3] = {"q4_1", 32, 20, true, false},
    [6] = {"q5_0", 32, 22, true, false},
    [7] = {"q5_1", 32, 24, true, false},
    [8] = {"q8_0", 32, 34, true, true},
    [9] = {"q8_1", 32, 36, true, false},
    [10] = {"q2_K", 256, 84, true, false},
    [11] = {"q3_K", 256, 110, true, false},
    [12] = {"q4_K", 256, 144, true, true},
    [13] = {"q5_K", 256, 176, true, true},
    [14] = {"q6_K", 256, 210, true, true},
    [15] = {"q8_K", 256, 292, true, false},
    [16] = {"iq2_xxs", 256, 66, true, false},
    [17] = {"iq2_xs", 256, 74, true, false},
    [18] = {"iq3_xxs", 256, 98, true, false},
    [19] = {"iq1_s", 256, 50, true, false},
    [20] = {"iq4_nl", 32, 18, true, false},
    [21] = {"iq3_s", 256, 110, true, false},
    [22] = {"iq2_s", 256, 82, true, false},
    [23] = {"iq4_xs", 256, 136, true, false},
    [24] = {"i8", 1, 1, false, false},
    [25] = {"i16", 1, 2, false, false},
    [26] = {"i32", 1, 4, false, true},
    [27] = {"i64", 1, 8, false, false},
    [28] = {"f64", 1, 8, false, false},
    [29] = {"iq1_m", 256, 56, true, false},
    [30] = {"bf16", 1, 2, false, true},
    [34] = {"tq1_0", 256, 54, true, false},
    [35] = {"tq2_0", 256, 66, true, false},
    [39] = {"mxfp4", 32, 17, true, false},
};

const qg_dtype_info *qg_dtype_get(uint32_t id) {
    if (id >= QG_DTYPE_COUNT) return NULL;
    return TABLE[id].name ? &TABLE[id] : &UNKNOWN;
}

const char *qg_dtype_name(qg_dtype t) {
    const qg_dtype_info *i = qg_dtype_get((uint32_t)t);
    return i ? i->name : "unknown";
}

int qg_dtype_block_size(qg_dtype t) { return qg_dtype_get((uint32_t)t)->block_size; }

size_t qg_dtype_row_bytes(qg_dtype t, int64_t n) {
    const qg_dtype_info *i = qg_dtype_get((uint32_t)t);
    return (size_t)(n / i->block_size) * (size_t)i->type_size;
}

bool qg_dtype_from_name(const char *name, qg_dtype *out) {
    for (uint32_t id = 0; id < QG_DTYPE_COUNT; id++) {
        if (TABLE[id].name && TABLE[id].supported &&
            strcasecmp(TABLE[id].name, name) == 0) {
            *out = (qg_dtype)id;
            return true;
        }
    }
    return false;
}
