/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader.
 *
 * Each input is parsed with qg_gguf_open_memory.  A refused input must come
 * with a one-line message that starts with the label; an accepted one is
 * walked completely (every key, value, array element, string and tensor
 * byte range, plus the lookups and getters), so ASan reports any pointer
 * the validator let through that is not inside the input.  Built and run by
 * tests/fuzz/run_fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 */
#include "frontends/qg_gguf.h"

#include <stdlib.h>
#include <string.h>

/* Bytes per element of each scalar type (0: string / array). */
static const int ESIZE[QG_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4,
                                              1, 0, 0, 8, 8, 8};

/* Fold bytes into a checksum so the reads cannot be optimized away. */
static uint64_t touch(const void *p, uint64_t n, uint64_t h) {
    const uint8_t *b = p;
    for (uint64_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Look a key up through the C-string API when it can be spelled as one;
 * the first hit must be an entry with that key (keys are unique). */
static void check_lookup(const qg_gguf *g, const qg_gguf_kv *kv) {
    char key[256];
    if (kv->key.len >= sizeof key || memchr(kv->key.ptr, 0, kv->key.len)) return;
    memcpy(key, kv->key.ptr, kv->key.len);
    key[kv->key.len] = '\0';
    if (qg_gguf_find(g, key) != kv) abort();
    qg_error err;
    uint32_t u;
    float f;
    qg_str s;
    (void)qg_gguf_get_u32(g, key, &u, &err);
    (void)qg_gguf_get_f32(g, key, &f, &err);
    if (qg_gguf_get_str(g, key, &s, &err) == QG_OK && s.ptr != kv->str.ptr)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qg_error err;
    memset(&err, 0, sizeof err);
    qg_gguf *g = qg_gguf_open_memory(data, size, "fuzz", &err);
    if (!g) {
        if (err.code == QG_OK || strncmp(err.msg, "fuzz: ", 6) != 0 ||
            strchr(err.msg, '\n'))
            abort();
        return 0;
    }
    volatile uint64_t sink;
    uint64_t h = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const qg_gguf_kv *kv = &g->kv[i];
        h = touch(kv->key.ptr, kv->key.len, h);
        if (kv->type == QG_GGUF_STRING) {
            h = touch(kv->str.ptr, kv->str.len, h);
        } else if (kv->type == QG_GGUF_ARRAY) {
            if (kv->arr_type == QG_GGUF_STRING) {
                for (uint64_t k = 0; k < kv->arr_n; k++) {
                    qg_str s = qg_gguf_arr_str(kv, k);
                    h = touch(s.ptr, s.len, h);
                }
            } else {
                if (kv->arr_type >= QG_GGUF_TYPE_COUNT || !ESIZE[kv->arr_type])
                    abort();
                h = touch(kv->arr_data, kv->arr_n * (uint64_t)ESIZE[kv->arr_type], h);
            }
        } else {
            h = touch(&kv->v, sizeof kv->v, h);
        }
        h = touch(qg_gguf_type_name(kv->type), 1, h);
        check_lookup(g, kv);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const qg_gguf_tensor *t = &g->tensors[i];
        const uint8_t *d = t->data;
        if (t->nbytes == 0 || d < (const uint8_t *)data ||
            t->nbytes > size || d + t->nbytes > (const uint8_t *)data + size)
            abort();
        /* the whole range for small tensors, its ends for big ones */
        if (t->nbytes <= 4096) {
            h = touch(d, t->nbytes, h);
        } else {
            h = touch(d, 64, h);
            h = touch(d + t->nbytes - 64, 64, h);
        }
        if (qg_gguf_find_tensor(g, t->cname) != t) abort();
        if (t->n_dims < 1 || t->n_dims > 4 || strlen(t->cname) != t->name.len)
            abort();
    }
    sink = h;
    (void)sink;
    qg_gguf_close(g);
    return 0;
}
