/*
 * qg_llama_bench.c - llama.cpp's CPU speed on a GGUF, measured the way
 * `qmoe-graph bench` measures ours, so both can be reported side by side
 * from one run on one machine (docs/BENCHMARKS.md):
 *
 *   qg-llama-bench MODEL [-p 512] [-n 128] [-d 0] [-r 5] [-t N] [-o md|json]
 *
 * Same token ids (the same generator as cmd_bench.c), one warm-up, then -r
 * timed repetitions; pp = one prefill of -p tokens, tg = -n single-token
 * steps, both after filling -d tokens of context.  Uses the prebuilt
 * libllama from npm through the test oracle (tests/ref/qg_llama_oracle.h).
 */
#include "qg_llama_oracle.h"
#include "../../frontends/qg_gguf.h"
#include "../../tools/qg_bench_report.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_REPS 100

/* Identical to cmd_bench.c's generator: the same ids for both programs. */
static void fill_tokens(int32_t *t, int n, uint32_t n_vocab, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    uint32_t range = n_vocab > 1024 ? n_vocab - 512 : n_vocab;
    for (int i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        t[i] = (int32_t)(s % range);
    }
}

int main(int argc, char **argv) {
    const char *model = NULL, *format = "md";
    int n_prompt = 512, n_gen = 128, n_depth = 0, reps = 5;
    int n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v && !strcmp(a, "-p")) { n_prompt = atoi(v); i++; }
        else if (v && !strcmp(a, "-n")) { n_gen = atoi(v); i++; }
        else if (v && !strcmp(a, "-d")) { n_depth = atoi(v); i++; }
        else if (v && !strcmp(a, "-r")) { reps = atoi(v); i++; }
        else if (v && !strcmp(a, "-t")) { n_threads = atoi(v); i++; }
        else if (v && !strcmp(a, "-o")) { format = v; i++; }
        else if (a[0] != '-' && !model) model = a;
        else {
            fprintf(stderr, "usage: qg-llama-bench MODEL [-p N] [-n N] [-d N] [-r N] [-t N] [-o md|json]\n");
            return 2;
        }
    }
    if (!model || reps < 1 || reps > MAX_REPS || n_prompt < 0 || n_gen < 0 || n_depth < 0 || n_threads < 1) {
        fprintf(stderr, "qg-llama-bench: bad arguments (see the header of qg_llama_bench.c)\n");
        return 2;
    }
    int need = n_depth + (n_prompt > n_gen ? n_prompt : n_gen) + 1;
    qg_error err = {0};
    qg_llama_oracle_opts lo = {.n_threads = n_threads, .n_ctx = need < 256 ? 256 : need, .kv_f16 = true};
    qg_llama_oracle *o = qg_llama_oracle_load(model, &lo, &err);
    if (!o) {
        fprintf(stderr, "qg-llama-bench: %s\n", err.msg);
        return 1;
    }
    int32_t *tok = malloc(sizeof *tok * (size_t)need);
    fill_tokens(tok, need, (uint32_t)qg_llama_n_vocab(o), 1234);
    /* size and parameters counted as `qmoe-graph bench` counts them */
    uint64_t size = 0, params = 0;
    qg_gguf *g = qg_gguf_open(model, &err);
    for (uint64_t i = 0; g && i < g->n_tensors; i++) {
        const qg_gguf_tensor *t = &g->tensors[i];
        size += t->nbytes;
        params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    qg_gguf_close(g);
    double samples[2][MAX_REPS];
    qg_bench_row rows[2];
    int n_rows = 0;
    bool md = strcmp(format, "json") != 0;
    if (md) qg_bench_print_md_header(stdout);
    for (int test = 0; test < 2; test++) {
        int n = test == 0 ? n_prompt : n_gen;
        if (n <= 0) continue;
        double s;
        if (qg_llama_time(o, tok, n_depth, n, test == 0, &s, &err)) goto fail; /* warm-up */
        for (int r = 0; r < reps; r++) {
            if (qg_llama_time(o, tok, n_depth, n, test == 0, &s, &err)) goto fail;
            samples[test][r] = n / s;
        }
        rows[n_rows] = (qg_bench_row){.model = model, .size_bytes = size, .n_params = params, .backend = "llama.cpp",
                                      .n_threads = n_threads, .n_prompt = test == 0 ? n : 0,
                                      .n_gen = test == 0 ? 0 : n, .n_depth = n_depth,
                                      .samples_ts = samples[test], .n_samples = reps};
        if (md) {
            qg_bench_print_md_row(stdout, &rows[n_rows]);
            fflush(stdout);
        }
        n_rows++;
    }
    if (!md) qg_bench_print_json(stdout, rows, n_rows);
    free(tok);
    qg_llama_oracle_free(o);
    return 0;
fail:
    fprintf(stderr, "qg-llama-bench: %s\n", err.msg);
    free(tok);
    qg_llama_oracle_free(o);
    return 1;
}
