/*
 * fuzz_seed.c - writes the seed corpus for fuzz_gguf into a directory.
 *
 * Usage: fuzz_seed DIR.  Seeds are small valid GGUFs: written by
 * qg_gguf_writer (several tensor types, alignments 32 / 64 / 128, string
 * and numeric arrays), one copy patched to version 2, and one hand-encoded
 * image with every metadata type and an array of each, so the fuzzer starts
 * from inputs that reach every branch of the validator.
 */
#include "frontends/qg_gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Write one seed from qg_gguf_writer; `variant` picks the contents. */
static int write_seed(const char *dir, int variant) {
    char path[1024];
    snprintf(path, sizeof path, "%s/seed_w%d.gguf", dir, variant);
    qg_gguf_writer *w = qg_gguf_writer_new(variant == 1 ? 64 : variant == 2 ? 128 : 0);
    qg_gguf_writer_set_str(w, "general.architecture", variant & 1 ? "qwen3" : "qwen3moe");
    qg_gguf_writer_set_u32(w, "qwen3moe.block_count", 1);
    qg_gguf_writer_set_i32(w, "t.i32", -3);
    qg_gguf_writer_set_f32(w, "qwen3moe.rope.freq_base", 1e6f);
    qg_gguf_writer_set_bool(w, "t.bool", true);
    const char *toks[] = {"<|im_start|>", "a", "", "\xc4\xa0the", "x"};
    qg_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 5);
    int32_t tt[] = {3, 1, 1, 1, 1};
    qg_gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", tt, 5);
    float sc[] = {0.f, -1.f, -2.f, 0.5f, 1e-3f};
    qg_gguf_writer_set_arr_f32(w, "tokenizer.ggml.scores", sc, 5);
    static const struct {
        const char *name;
        qg_dtype type;
        int n_dims;
        int64_t ne[4];
    } T[] = {
        {"token_embd.weight", QG_Q8_0, 2, {32, 2, 1, 1}},
        {"blk.0.attn_norm.weight", QG_F32, 1, {5, 1, 1, 1}},
        {"blk.0.ffn_up_exps.weight", QG_Q4_K, 3, {256, 1, 2, 1}},
        {"blk.0.attn_k.weight", QG_F16, 2, {3, 2, 1, 1}},
        {"blk.0.q6", QG_Q6_K, 1, {256, 1, 1, 1}},
        {"blk.0.bf", QG_BF16, 4, {2, 1, 1, 2}},
    };
    int n = variant == 3 ? 1 : 6;
    for (int i = 0; i < n; i++)
        qg_gguf_writer_add_tensor(w, T[i].name, T[i].type, T[i].n_dims, T[i].ne);
    qg_error err;
    if (qg_gguf_writer_begin(w, path, &err)) goto fail;
    uint8_t buf[1024];
    for (int i = 0; i < n; i++) {
        const qg_dtype_info *in = qg_dtype_get(T[i].type);
        uint64_t nb = (uint64_t)(T[i].ne[0] / in->block_size * in->type_size *
                                 T[i].ne[1] * T[i].ne[2] * T[i].ne[3]);
        for (uint64_t k = 0; k < nb; k++) buf[k] = (uint8_t)(k * 7 + (uint64_t)i);
        if (qg_gguf_writer_write_data(w, i, buf, nb, &err)) goto fail;
    }
    if (qg_gguf_writer_finish(w, &err)) goto fail;
    qg_gguf_writer_free(w);
    return 0;
fail:
    fprintf(stderr, "fuzz_seed: %s\n", err.msg);
    qg_gguf_writer_free(w);
    return 1;
}

/* Copy seed_w0.gguf to seed_v2.gguf with the version field set to 2. */
static int write_v2(const char *dir) {
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/seed_w0.gguf", dir);
    snprintf(dst, sizeof dst, "%s/seed_v2.gguf", dir);
    FILE *f = fopen(src, "rb");
    if (!f) return 1;
    static uint8_t img[1 << 16];
    size_t n = fread(img, 1, sizeof img, f);
    fclose(f);
    if (n < 8) return 1;
    img[4] = 2;
    f = fopen(dst, "wb");
    if (!f) return 1;
    int bad = fwrite(img, 1, n, f) != n;
    return fclose(f) != 0 || bad;
}

/* A hand-encoded image with a scalar and an array of every type. */
static int write_all_types(const char *dir) {
    static uint8_t img[4096];
    size_t n = 0;
#define PUT(p, len) (memcpy(img + n, (p), (len)), n += (len))
#define PUT32(v) do { uint32_t v32_ = (v); PUT(&v32_, 4); } while (0)
#define PUT64(v) do { uint64_t v64_ = (v); PUT(&v64_, 8); } while (0)
#define PUTSTR(s) do { PUT64(strlen(s)); PUT((s), strlen(s)); } while (0)
    static const int esz[QG_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    PUT32(0x46554747u);
    PUT32(3);
    PUT64(0);
    PUT64(2 * (QG_GGUF_TYPE_COUNT - 1));
    for (uint32_t t = 0; t < QG_GGUF_TYPE_COUNT; t++) {
        if (t == QG_GGUF_ARRAY) continue;
        char key[32];
        uint8_t one[8] = {1};
        snprintf(key, sizeof key, "s.%s", qg_gguf_type_name((qg_gguf_type)t));
        PUTSTR(key);
        PUT32(t);
        if (t == QG_GGUF_STRING) PUTSTR("value");
        else PUT(one, (size_t)esz[t]);
        snprintf(key, sizeof key, "a.%s", qg_gguf_type_name((qg_gguf_type)t));
        PUTSTR(key);
        PUT32(QG_GGUF_ARRAY);
        PUT32(t);
        PUT64(3);
        for (int i = 0; i < 3; i++) {
            if (t == QG_GGUF_STRING) PUTSTR("ab");
            else PUT(one, (size_t)esz[t]);
        }
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/seed_types.gguf", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    int bad = fwrite(img, 1, n, f) != n;
    return fclose(f) != 0 || bad;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seed DIR\n");
        return 2;
    }
    int bad = 0;
    for (int v = 0; v < 4; v++) bad |= write_seed(argv[1], v);
    bad |= write_v2(argv[1]);
    bad |= write_all_types(argv[1]);
    return bad;
}
