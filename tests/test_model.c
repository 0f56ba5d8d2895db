/* test_model.c - the model loader refuses bad models with one clear line:
 * inconsistent hyperparameters, unsupported architectures, missing or
 * misshapen tensors, weights of types we cannot compute with; and accepts
 * the tied-embedding variant (no output.weight).
 *
 * Each case rewrites a valid synthetic tiny model through the GGUF writer
 * with one mutation, loads it, and checks the status and that the message
 * names the key / tensor / value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../frontends/qg_synth.h"
#include "../include/qmoe_graph.h"

static char g_dir[256], g_src[300], g_dense[300];

typedef struct mutation {
    const char *key;       /* override this key ... */
    int64_t u32;           /* ... with this u32 (when >= 0) */
    const char *str;       /* ... or this string */
    const char *drop;      /* drop this tensor */
    const char *reshape;   /* give this tensor ne[1] = ne[1] / 2 */
} mutation;

static char *cstr(qg_str s) {
    char *c = malloc(s.len + 1);
    memcpy(c, s.ptr, s.len);
    c[s.len] = 0;
    return c;
}

/* Copy src to dst applying m.  Keys of types our files do not use are
 * not expected (the test fails if one appears). */
static void rewrite(const char *src, const char *dst, const mutation *m) {
    qg_error err = {0};
    qg_gguf *g = qg_gguf_open(src, &err);
    assert_non_null(g);
    qg_gguf_writer *w = qg_gguf_writer_new(g->alignment);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const qg_gguf_kv *kv = &g->kv[i];
        char *key = cstr(kv->key);
        if (m->key && !strcmp(key, m->key)) {
            if (m->str) qg_gguf_writer_set_str(w, key, m->str);
            else qg_gguf_writer_set_u32(w, key, (uint32_t)m->u32);
            free(key);
            continue;
        }
        switch (kv->type) {
        case QG_GGUF_UINT32: qg_gguf_writer_set_u32(w, key, (uint32_t)kv->v.u64); break;
        case QG_GGUF_INT32: qg_gguf_writer_set_i32(w, key, (int32_t)kv->v.i64); break;
        case QG_GGUF_FLOAT32: qg_gguf_writer_set_f32(w, key, (float)kv->v.f64); break;
        case QG_GGUF_BOOL: qg_gguf_writer_set_bool(w, key, kv->v.u64 != 0); break;
        case QG_GGUF_STRING: {
            char *v = cstr(kv->str);
            qg_gguf_writer_set_str(w, key, v);
            free(v);
            break;
        }
        case QG_GGUF_ARRAY:
            if (kv->arr_type == QG_GGUF_STRING) {
                char **v = malloc(sizeof *v * kv->arr_n);
                for (uint64_t j = 0; j < kv->arr_n; j++) v[j] = cstr(qg_gguf_arr_str(kv, j));
                qg_gguf_writer_set_arr_str(w, key, (const char *const *)v, kv->arr_n);
                for (uint64_t j = 0; j < kv->arr_n; j++) free(v[j]);
                free(v);
            } else if (kv->arr_type == QG_GGUF_INT32) {
                qg_gguf_writer_set_arr_i32(w, key, (const int32_t *)kv->arr_data, kv->arr_n);
            } else if (kv->arr_type == QG_GGUF_FLOAT32) {
                qg_gguf_writer_set_arr_f32(w, key, (const float *)kv->arr_data, kv->arr_n);
            } else {
                fail_msg("unexpected array type in %s", key);
            }
            break;
        default: fail_msg("unexpected key type %d for %s", kv->type, key);
        }
        free(key);
    }
    int *idx = calloc(g->n_tensors, sizeof *idx);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const qg_gguf_tensor *t = &g->tensors[i];
        idx[i] = -1;
        if (m->drop && !strcmp(t->cname, m->drop)) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (m->reshape && !strcmp(t->cname, m->reshape)) ne[1] /= 2;
        idx[i] = qg_gguf_writer_add_tensor(w, t->cname, t->type, t->n_dims, ne);
    }
    assert_int_equal(qg_gguf_writer_begin(w, dst, &err), QG_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const qg_gguf_tensor *t = &g->tensors[i];
        if (idx[i] < 0) continue;
        uint64_t n = t->nbytes;
        if (m->reshape && !strcmp(t->cname, m->reshape)) n /= 2;
        assert_int_equal(qg_gguf_writer_write_data(w, idx[i], t->data, n, &err), QG_OK);
    }
    assert_int_equal(qg_gguf_writer_finish(w, &err), QG_OK);
    qg_gguf_writer_free(w);
    free(idx);
    qg_gguf_close(g);
}

/* Load src mutated by m: expect status `code` and every needle in the message. */
static void expect(const char *src, mutation m, qg_status code, const char *n1, const char *n2) {
    char dst[400];
    snprintf(dst, sizeof dst, "%s/mut.gguf", g_dir);
    rewrite(src, dst, &m);
    qg_error err = {0};
    qg_model *mod = qg_model_load(dst, &err);
    if (code == QG_OK) {
        if (!mod) fail_msg("expected success, got: %s", err.msg);
        qg_model_free(mod);
        return;
    }
    if (mod) fail_msg("expected failure %d (%s / %s), the model loaded", code, n1, n2 ? n2 : "");
    if (err.code != code) fail_msg("status %d, expected %d: %s", err.code, code, err.msg);
    if (n1 && !strstr(err.msg, n1)) fail_msg("message lacks '%s': %s", n1, err.msg);
    if (n2 && !strstr(err.msg, n2)) fail_msg("message lacks '%s': %s", n2, err.msg);
    if (strchr(err.msg, '\n')) fail_msg("message is not one line: %s", err.msg);
    if (!strstr(err.msg, "mut.gguf")) fail_msg("message does not name the file: %s", err.msg);
}

static void test_valid(void **state) {
    (void)state;
    expect(g_src, (mutation){.u32 = -1}, QG_OK, NULL, NULL);
    expect(g_dense, (mutation){.u32 = -1}, QG_OK, NULL, NULL);
    /* tied output: the embedding serves as the head */
    char dst[400];
    snprintf(dst, sizeof dst, "%s/tied.gguf", g_dir);
    rewrite(g_src, dst, &(mutation){.u32 = -1, .drop = "output.weight"});
    qg_error err = {0};
    qg_model *m = qg_model_load(dst, &err);
    assert_non_null(m);
    assert_true(m->tied_output);
    assert_ptr_equal(m->output, m->tok_embd);
    qg_model_free(m);
}

static void test_bad_hparams(void **state) {
    (void)state;
    expect(g_src, (mutation){.key = "qwen3moe.block_count", .u32 = 0}, QG_ERR_MODEL, "qwen3moe.block_count", "0");
    expect(g_src, (mutation){.key = "qwen3moe.block_count", .u32 = 100000}, QG_ERR_MODEL, "block_count", "100000");
    expect(g_src, (mutation){.key = "qwen3moe.attention.head_count", .u32 = 0}, QG_ERR_MODEL, "head_count", NULL);
    expect(g_src, (mutation){.key = "qwen3moe.attention.head_count_kv", .u32 = 3}, QG_ERR_MODEL, "head_count_kv = 3", "divide");
    expect(g_src, (mutation){.key = "qwen3moe.expert_count", .u32 = 0}, QG_ERR_MODEL, "expert_count", NULL);
    expect(g_src, (mutation){.key = "qwen3moe.expert_used_count", .u32 = 9}, QG_ERR_MODEL, "expert_used_count", "9");
    expect(g_src, (mutation){.key = "qwen3moe.embedding_length", .u32 = 128}, QG_ERR_MODEL, "token_embd.weight", NULL);
    expect(g_src, (mutation){.key = "general.architecture", .str = "llama"}, QG_ERR_UNSUPPORTED, "llama", "architecture");
    expect(g_src, (mutation){.key = "qwen3moe.attention.layer_norm_rms_epsilon", .str = "x"}, QG_ERR_FORMAT,
           "layer_norm_rms_epsilon", NULL);
}

static void test_bad_tensors(void **state) {
    (void)state;
    expect(g_src, (mutation){.u32 = -1, .drop = "blk.1.ffn_down_exps.weight"}, QG_ERR_MODEL,
           "blk.1.ffn_down_exps.weight", "missing");
    expect(g_src, (mutation){.u32 = -1, .drop = "token_embd.weight"}, QG_ERR_MODEL, "token_embd.weight", NULL);
    expect(g_src, (mutation){.u32 = -1, .reshape = "blk.0.attn_k.weight"}, QG_ERR_MODEL, "blk.0.attn_k.weight",
           "shape");
    expect(g_src, (mutation){.u32 = -1, .reshape = "blk.0.ffn_gate_exps.weight"}, QG_ERR_MODEL,
           "blk.0.ffn_gate_exps.weight", "expected");
    expect(g_dense, (mutation){.u32 = -1, .drop = "blk.0.ffn_up.weight"}, QG_ERR_MODEL, "blk.0.ffn_up.weight", NULL);
}

static void test_missing_path(void **state) {
    (void)state;
    qg_error err = {0};
    assert_null(qg_model_load("/nonexistent/model.gguf", &err));
    assert_int_equal(err.code, QG_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/model.gguf"));
    assert_null(qg_model_load(g_dir, &err));
    assert_int_equal(err.code, QG_ERR_IO);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "%s/qg-model-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_src, sizeof g_src, "%s/tiny.gguf", g_dir);
    snprintf(g_dense, sizeof g_dense, "%s/dense.gguf", g_dir);
    qg_error err = {0};
    qg_synth_opts o = {.preset = "tiny", .ftype = "q4_k_m", .seed = 3, .vocab_mode = QG_SYNTH_VOCAB_BYTES,
                       .n_threads = 2};
    if (qg_synth_write(g_src, &o, NULL, &err)) return -1;
    o.preset = "tiny-dense";
    o.ftype = "q8_0";
    return qg_synth_write(g_dense, &o, NULL, &err) ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid), cmocka_unit_test(test_bad_hparams),
        cmocka_unit_test(test_bad_tensors), cmocka_unit_test(test_missing_path),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
