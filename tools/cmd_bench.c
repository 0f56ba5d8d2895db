/* cmd_bench.c - `qmoe-graph bench` (llama-bench style) and `qmoe-graph
 * profile` (a standard prefill + decode workload under the profiler).
 *
 * pp N: prefill N tokens into an empty cache, timed as a whole.
 * tg N: N single-token decode steps from an empty cache (or from depth d
 *       with -d d, like llama-bench), timed as a whole.
 * Each test runs once untimed (warm-up), then -r times; t/s is mean ± sd. */
#include "qg_bench_report.h"
#include "qg_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QG_BENCH_MAX_REPS 100

typedef struct bench_args {
    qg_cli_common c;
    int n_prompt, n_gen, n_depth, reps;
    const char *format;
    const char *profile_path;
} bench_args;

/* Deterministic pseudo-random token ids (avoid special tokens at the top). */
static void fill_tokens(int32_t *t, int n, uint32_t n_vocab, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    uint32_t range = n_vocab > 1024 ? n_vocab - 512 : n_vocab;
    for (int i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        t[i] = (int32_t)(s % range);
    }
}

/* Fill the cache to `depth` rows (untimed), then time `n` tokens fed as
 * one prefill (pp) or as n decode steps (tg).  Returns seconds, <0 on error. */
static double run_once(qg_ctx *ctx, const int32_t *tok, int depth, int n, bool pp, qg_error *err) {
    qg_ctx_reset(ctx);
    if (depth > 0 && qg_ctx_decode(ctx, tok, depth, NULL, err)) return -1;
    uint64_t t0 = qg_time_ns();
    if (pp) {
        if (qg_ctx_decode(ctx, tok + depth, n, NULL, err)) return -1;
    } else {
        for (int i = 0; i < n; i++)
            if (qg_ctx_decode(ctx, tok + depth + i, 1, NULL, err)) return -1;
    }
    return (qg_time_ns() - t0) / 1e9;
}

static int parse_bench(bench_args *b, int argc, char **argv, bool profile_cmd) {
    for (int i = 1; i < argc; i++) {
        int r = qg_cli_common_flag(&b->c, argc, argv, &i);
        if (r < 0) return QG_ERR_ARG;
        if (r) continue;
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        if (!strcmp(a, "-p") || !strcmp(a, "-n") || !strcmp(a, "-r") || !strcmp(a, "-d")) {
            if (!qg_cli_int(a, v, a[1] == 'r' ? 1 : 0, a[1] == 'r' ? QG_BENCH_MAX_REPS : 1 << 20, &x))
                return QG_ERR_ARG;
            if (a[1] == 'p') b->n_prompt = (int)x;
            else if (a[1] == 'n') b->n_gen = (int)x;
            else if (a[1] == 'r') b->reps = (int)x;
            else b->n_depth = (int)x;
            i++;
        } else if (!strcmp(a, "-o") && v) {
            if (profile_cmd) b->profile_path = v;
            else b->format = v;
            i++;
        } else if (!strcmp(a, "--profile") && v) {
            b->profile_path = v;
            i++;
        } else if (a[0] != '-' && !b->c.model) {
            b->c.model = a;
        } else {
            fprintf(stderr, "qmoe-graph %s: unexpected argument '%s'\n", argv[0], a);
            return QG_ERR_ARG;
        }
    }
    if (!b->c.model) {
        fprintf(stderr, "qmoe-graph %s: no MODEL given (see qmoe-graph --help)\n", argv[0]);
        return QG_ERR_ARG;
    }
    if (strcmp(b->format, "md") && strcmp(b->format, "json")) {
        fprintf(stderr, "qmoe-graph bench: -o '%s' is not md or json\n", b->format);
        return QG_ERR_ARG;
    }
    return 0;
}

/* Shared by bench and profile. */
static int bench_main(bench_args *b, bool profile_cmd) {
    qg_error err = {0};
    int rc = 0;
    qg_ctx *ctx = NULL;
    qg_profile *prof = NULL;
    int32_t *tok = NULL;
    qg_model *m = qg_cli_load_model(b->c.model, &err);
    if (!m) return qg_cli_fail(&err);
    int need = b->n_depth + QG_MAX(b->n_prompt, b->n_gen) + 1;
    if (b->c.ctx.n_ctx <= 0) b->c.ctx.n_ctx = QG_MAX(need, 256);
    if (b->c.ctx.n_batch <= 0) b->c.ctx.n_batch = QG_MAX(1, QG_MIN(512, QG_MAX(b->n_prompt, b->n_depth)));
    if (need > b->c.ctx.n_ctx) {
        qg_error_set(&err, QG_ERR_ARG, "-c %d is too small for depth %d + %d tokens", b->c.ctx.n_ctx,
                     b->n_depth, QG_MAX(b->n_prompt, b->n_gen));
        rc = qg_cli_fail(&err);
        goto done;
    }
    if (!(ctx = qg_ctx_new(m, &b->c.ctx, &err))) { rc = qg_cli_fail(&err); goto done; }
    if (!(tok = malloc(sizeof *tok * (size_t)need))) { rc = QG_ERR_NOMEM; goto done; }
    fill_tokens(tok, need, m->hp.n_vocab, 1234);

    uint64_t params = 0, size = 0;
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const qg_gguf_tensor *t = &m->gguf->tensors[i];
        params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        size += t->nbytes;
    }
    double samples[2][QG_BENCH_MAX_REPS];
    qg_bench_row rows[2];
    int n_rows = 0;
    bool md = !strcmp(b->format, "md");
    if (md && !profile_cmd) qg_bench_print_md_header(stdout);
    for (int test = 0; test < 2; test++) {
        int n = test == 0 ? b->n_prompt : b->n_gen;
        if (n <= 0) continue;
        bool pp = test == 0;
        if (run_once(ctx, tok, b->n_depth, n, pp, &err) < 0) { rc = qg_cli_fail(&err); goto done; }
        int reps = profile_cmd ? 1 : b->reps;
        for (int r = 0; r < reps; r++) {
            double s = run_once(ctx, tok, b->n_depth, n, pp, &err);
            if (s < 0) { rc = qg_cli_fail(&err); goto done; }
            samples[test][r] = n / s;
        }
        qg_bench_row *row = &rows[n_rows++];
        *row = (qg_bench_row){.model = b->c.model, .size_bytes = size, .n_params = params,
                              .backend = b->c.ctx.backend, .n_threads = qg_ctx_n_threads(ctx),
                              .n_prompt = pp ? n : 0, .n_gen = pp ? 0 : n, .n_depth = b->n_depth,
                              .samples_ts = samples[test], .n_samples = reps};
        if (md && !profile_cmd) {
            qg_bench_print_md_row(stdout, row);
            fflush(stdout);
        }
    }
    if (!md) qg_bench_print_json(stdout, rows, n_rows);

    if (b->profile_path || profile_cmd) {
        /* one more pass of each test with per-node events recorded */
        const qg_graph *gd = qg_ctx_graph(ctx, QG_PHASE_DECODE), *gp = qg_ctx_graph(ctx, QG_PHASE_PREFILL);
        size_t cap = (size_t)(gd->n_nodes + 1) * (size_t)(b->n_gen + 1) +
                     (size_t)(gp->n_nodes + 1) * (size_t)((b->n_prompt + b->n_depth) / gp->n_tok_max + 2);
        if (!(prof = qg_profile_new(cap))) { rc = QG_ERR_NOMEM; goto done; }
        qg_ctx_set_profile(ctx, prof);
        if ((b->n_prompt > 0 && run_once(ctx, tok, b->n_depth, b->n_prompt, true, &err) < 0) ||
            (b->n_gen > 0 && run_once(ctx, tok, b->n_depth, b->n_gen, false, &err) < 0)) {
            rc = qg_cli_fail(&err);
            goto done;
        }
        qg_ctx_set_profile(ctx, NULL);
        if (profile_cmd) {
            printf("profile of %s on %s, %d threads: pp%d then tg%d%s\n", b->c.model,
                   b->c.ctx.backend, qg_ctx_n_threads(ctx), b->n_prompt, b->n_gen,
                   b->n_depth ? " (after depth fill)" : "");
            for (int i = 0; i < n_rows; i++)
                printf("  %s: %.2f tok/s\n", rows[i].n_prompt ? "prefill" : "decode", rows[i].samples_ts[0]);
        }
        qg_profile_report(prof, stdout);
        if (b->profile_path && qg_profile_write_trace(prof, b->profile_path, &err)) {
            rc = qg_cli_fail(&err);
            goto done;
        }
        if (b->profile_path) fprintf(stderr, "trace written to %s\n", b->profile_path);
    }
done:
    qg_profile_free(prof);
    free(tok);
    qg_ctx_free(ctx);
    qg_model_free(m);
    return rc;
}

int qg_cmd_bench(int argc, char **argv) {
    bench_args b = {.c.ctx = qg_ctx_default_params(), .n_prompt = 512, .n_gen = 128, .reps = 5,
                    .format = "md"};
    b.c.ctx.n_batch = 0;
    int rc = parse_bench(&b, argc, argv, false);
    return rc ? rc : bench_main(&b, false);
}

int qg_cmd_profile(int argc, char **argv) {
    bench_args b = {.c.ctx = qg_ctx_default_params(), .n_prompt = 512, .n_gen = 64, .reps = 1,
                    .format = "md"};
    b.c.ctx.n_batch = 0;
    int rc = parse_bench(&b, argc, argv, true);
    return rc ? rc : bench_main(&b, true);
}
