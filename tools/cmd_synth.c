/*
 * cmd_synth.c - `qmoe-graph synth`: write a deterministic synthetic
 * Qwen3-MoE / Qwen3 model (frontends/qg_synth.h).
 *
 *   qmoe-graph synth OUT.gguf --preset NAME --ftype TYPE [--seed S]
 *       [--vocab real|bytes] [--tokenizer PATH] [-t N] [--quiet]
 *   qmoe-graph synth --preset NAME --ftype TYPE --dry-run   (tensor table)
 *   qmoe-graph synth --list                                 (presets)
 */
#include "qg_cli.h"

#include "../frontends/qg_synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void synth_usage(FILE *f) {
    fprintf(f,
            "usage: qmoe-graph synth OUT.gguf --preset NAME --ftype TYPE [--seed S]\n"
            "           [--vocab real|bytes] [--tokenizer PATH] [-t N] [--quiet] [--dry-run]\n"
            "       qmoe-graph synth --list\n"
            "  TYPE: f32 f16 bf16 q8_0 q4_0 q4_k_m q5_k_m q6_k\n");
}

/* Print "qmoe-graph synth: <msg>" and return the status (never 0). */
static int synth_fail(const qg_error *err) {
    fprintf(stderr, "qmoe-graph synth: %s\n", err->msg[0] ? err->msg : "error");
    return err->code ? (int)err->code : 1;
}

static void synth_list(void) {
    printf("presets:\n");
    for (const char *const *n = qg_synth_preset_names(); *n; n++) {
        const qg_synth_preset *p = qg_synth_preset_find(*n);
        printf("  %-12s %-9s %s\n", p->name, p->arch, p->about);
    }
    printf("ftypes:");
    for (const char *const *n = qg_synth_ftype_names(); *n; n++) printf(" %s", *n);
    printf("\n");
}

/* Print the tensor table and sizes of the file the options describe. */
static int synth_dry_run(const qg_synth_opts *o) {
    qg_error err = {0};
    const qg_synth_preset *p = qg_synth_preset_find(o->preset);
    qg_synth_vocab v;
    qg_status st = qg_synth_vocab_for(p, o, &v, &err);
    if (st != QG_OK) return synth_fail(&err);
    qg_synth_plan *pl = NULL;
    st = qg_synth_plan_new(p, o->ftype, (int)v.n_tokens, &pl, &err);
    if (st != QG_OK) {
        qg_synth_vocab_free(&v);
        return synth_fail(&err);
    }
    for (int i = 0; i < pl->n_tensors; i++) {
        const qg_synth_tensor *t = &pl->tensors[i];
        printf("%-28s %-5s %6lld %6lld %4lld %12llu\n", t->name, qg_dtype_name(t->type),
               (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
               (unsigned long long)t->nbytes);
    }
    printf("preset %s, ftype %s, vocab %s (%u tokens, %u merges): %d tensors, "
           "%llu bytes of tensor data = %.4f GiB\n",
           p->name, pl->ftype->name, v.source, v.n_tokens, v.n_merges, pl->n_tensors,
           (unsigned long long)pl->data_bytes, (double)pl->data_bytes / (1u << 30));
    qg_synth_plan_free(pl);
    qg_synth_vocab_free(&v);
    return 0;
}

static int synth_bad(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "qmoe-graph synth: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    return QG_ERR_ARG;
}

int qg_cmd_synth(int argc, char **argv) {
    qg_synth_opts o;
    qg_synth_opts_init(&o);
    o.preset = NULL;
    o.ftype = NULL;
    o.progress = true;
    const char *out = NULL;
    bool dry_run = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = !strcmp(a, "--preset") || !strcmp(a, "--ftype") || !strcmp(a, "--seed") ||
                     !strcmp(a, "--vocab") || !strcmp(a, "--tokenizer") || !strcmp(a, "-t") ||
                     !strcmp(a, "--threads");
        if (takes && !v) return synth_bad("%s needs a value%s", a, "");
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            synth_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            synth_list();
            return 0;
        } else if (!strcmp(a, "--preset")) {
            o.preset = v;
        } else if (!strcmp(a, "--ftype")) {
            o.ftype = v;
        } else if (!strcmp(a, "--seed")) {
            char *end = NULL;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 0);
            if (!*v || *end || errno || v[0] == '-')
                return synth_bad("--seed: '%s' is not an unsigned 64-bit integer%s", v, "");
            o.seed = s;
        } else if (!strcmp(a, "--vocab")) {
            if (!strcmp(v, "real")) o.vocab_mode = QG_SYNTH_VOCAB_REAL;
            else if (!strcmp(v, "bytes")) o.vocab_mode = QG_SYNTH_VOCAB_BYTES;
            else return synth_bad("--vocab: '%s' is not 'real' or 'bytes'%s", v, "");
        } else if (!strcmp(a, "--tokenizer")) {
            o.tokenizer_json = v;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            char *end = NULL;
            errno = 0;
            long n = strtol(v, &end, 10);
            if (!*v || *end || errno || n < 1 || n > 1024)
                return synth_bad("%s: '%s' is not an integer in [1, 1024]", a, v);
            o.n_threads = (int)n;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            o.progress = false;
        } else if (!strcmp(a, "--dry-run")) {
            dry_run = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            return synth_bad("unknown option '%s'%s (try --help)", a, "");
        } else if (!out) {
            out = a;
        } else {
            return synth_bad("unexpected argument '%s' (output already given as '%s')", a, out);
        }
        if (takes) i++;
    }
    if (!o.preset) return synth_bad("--preset is required (try --list)%s%s", "", "");
    if (!qg_synth_preset_find(o.preset)) {
        char known[512] = "";
        for (const char *const *n = qg_synth_preset_names(); *n; n++) {
            strncat(known, known[0] ? ", " : "", sizeof known - strlen(known) - 1);
            strncat(known, *n, sizeof known - strlen(known) - 1);
        }
        return synth_bad("unknown preset '%s' (known: %s)", o.preset, known);
    }
    if (!o.ftype) return synth_bad("--ftype is required (f32 f16 bf16 q8_0 q4_0 q4_k_m q5_k_m q6_k)%s%s", "", "");
    if (!qg_synth_ftype_find(o.ftype))
        return synth_bad("unknown ftype '%s'%s (f32 f16 bf16 q8_0 q4_0 q4_k_m q5_k_m q6_k)",
                         o.ftype, "");
    if (dry_run) return synth_dry_run(&o);
    if (!out) return synth_bad("missing the output file OUT.gguf%s%s", "", "");

    qg_error err = {0};
    qg_synth_stats s;
    qg_status st = qg_synth_write(out, &o, &s, &err);
    if (st != QG_OK) return synth_fail(&err);
    printf("synth: wrote %s (%.3f GiB; preset %s, %s, seed %llu, vocab %s) in %.2f s, "
           "%.0f MB/s with %d threads\n",
           out, (double)s.file_bytes / (1u << 30), o.preset, o.ftype,
           (unsigned long long)o.seed, s.vocab_source, s.seconds,
           s.seconds > 0 ? (double)s.file_bytes / s.seconds / 1e6 : 0.0, s.n_threads);
    return 0;
}
