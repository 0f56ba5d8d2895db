/* cmd_run.c - `qmoe-graph run`: generate text, streamed, with optional chat
 * formatting and an interactive chat that keeps the conversation in the KV
 * cache.  With no MODEL it runs the embedded default (random weights). */
#include "qg_cli.h"

#include "../frontends/qg_chat.h"
#include "../frontends/qg_sampler.h"
#include "../frontends/qg_tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct run_args {
    qg_cli_common c;
    const char *prompt, *prompt_file, *system, *profile_path;
    int n_predict;
    bool chat, interactive, think, is_default;
    qg_sampler_params sp;
} run_args;

/* Everything a generation needs, made once. */
typedef struct run_state {
    qg_model *m;
    qg_ctx *ctx;
    qg_tokenizer *tok;
    qg_sampler *smp;
    qg_profile *prof;
    int32_t *buf; /* (n_ctx) token scratch */
    int n_ctx;
    double t_prefill, t_decode;
    int n_prefilled, n_decoded;
} run_state;

static char *read_file(const char *path, qg_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        qg_error_set(err, QG_ERR_IO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    size_t k;
    while (s && (k = fread(s + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (n + 1 == cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) { free(s); s = NULL; }
            else s = t;
        }
    }
    bool bad = ferror(f);
    fclose(f);
    if (!s || bad) {
        free(s);
        qg_error_set(err, QG_ERR_IO, "%s: cannot read the prompt file", path);
        return NULL;
    }
    s[n] = 0;
    return s;
}

/* Tokenize text into r->buf; returns the count or -1 (err set). */
static int tokenize(run_state *r, const char *text, bool special, qg_error *err) {
    int room = r->n_ctx - qg_ctx_n_past(r->ctx);
    int n = qg_tokenizer_encode(r->tok, text, strlen(text), special, r->buf, r->n_ctx, err);
    if (n < 0) return -1;
    if (n > room) {
        qg_error_set(err, QG_ERR_RANGE,
                     "the prompt is %d tokens but only %d of the context's %d remain (use -c to enlarge it)", n,
                     room, r->n_ctx);
        return -1;
    }
    return n;
}

/* Prefill n tokens of r->buf, then sample and stream up to n_predict
 * tokens; stops at end-of-turn/text tokens and at the context limit.  The
 * final end-of-generation token is also fed, so a chat can continue. */
static qg_status generate(run_state *r, int n, int n_predict, qg_error *err) {
    uint64_t t0 = qg_time_ns();
    qg_status st = qg_ctx_decode(r->ctx, r->buf, n, NULL, err);
    if (st) return st;
    r->t_prefill += (qg_time_ns() - t0) / 1e9;
    r->n_prefilled += n;
    for (int i = 0; i < n; i++) qg_sampler_accept(r->smp, r->buf[i]);

    qg_detok_stream ds;
    if ((st = qg_detok_stream_init(&ds, r->tok, false, err))) return st;
    uint64_t t1 = qg_time_ns();
    for (int i = 0; n_predict < 0 || i < n_predict; i++) {
        int32_t t = qg_sampler_sample(r->smp, qg_ctx_logits(r->ctx));
        qg_sampler_accept(r->smp, t);
        bool eog = qg_tokenizer_is_eog(r->tok, t);
        if (!eog) {
            const char *p;
            size_t len;
            if ((st = qg_detok_stream_push(&ds, t, &p, &len, err))) break;
            fwrite(p, 1, len, stdout);
            fflush(stdout);
        }
        if (qg_ctx_n_past(r->ctx) >= r->n_ctx) {
            fprintf(stderr, "\n[context full: %d tokens; stopping]\n", r->n_ctx);
            break;
        }
        if ((st = qg_ctx_decode(r->ctx, &t, 1, NULL, err))) break;
        r->n_decoded++;
        if (eog) break;
    }
    const char *p;
    size_t len;
    qg_detok_stream_flush(&ds, &p, &len);
    fwrite(p, 1, len, stdout);
    fflush(stdout);
    qg_detok_stream_free(&ds);
    r->t_decode += (qg_time_ns() - t1) / 1e9;
    return st;
}

/* Render one chat turn (optionally with the system message) into text. */
static char *render_turn(const run_args *a, const char *user, bool first, qg_error *err) {
    qg_chat_msg msgs[2];
    int n = 0;
    if (first && a->system) msgs[n++] = (qg_chat_msg){.role = "system", .content = a->system};
    msgs[n++] = (qg_chat_msg){.role = "user", .content = user};
    size_t len;
    char *s = qg_chat_render_alloc(msgs, n, true, a->think, &len, err);
    if (!s || first) return s;
    /* later turns follow the previous assistant turn's <|im_end|> */
    char *t = malloc(len + 2);
    if (!t) { free(s); qg_error_set(err, QG_ERR_NOMEM, "out of memory"); return NULL; }
    t[0] = '\n';
    memcpy(t + 1, s, len + 1);
    free(s);
    return t;
}

static int parse_args(run_args *a, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        int r = qg_cli_common_flag(&a->c, argc, argv, &i);
        if (r < 0) return QG_ERR_ARG;
        if (r) continue;
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        char *end;
#define NEED_V() do { if (!v) { fprintf(stderr, "qmoe-graph run: %s needs a value\n", f); return QG_ERR_ARG; } i++; } while (0)
#define FLOAT_V(dst, lo, hi)                                                                \
    do {                                                                                    \
        NEED_V();                                                                           \
        errno = 0;                                                                          \
        double d = strtod(v, &end);                                                         \
        if (!*v || *end || errno || !(d >= (lo) && d <= (hi))) {                            \
            fprintf(stderr, "qmoe-graph run: %s: '%s' is not a number in [%g, %g]\n", f, v, \
                    (double)(lo), (double)(hi));                                            \
            return QG_ERR_ARG;                                                              \
        }                                                                                   \
        (dst) = (float)d;                                                                   \
    } while (0)
        if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) { NEED_V(); a->prompt = v; }
        else if (!strcmp(f, "-f") || !strcmp(f, "--file")) { NEED_V(); a->prompt_file = v; }
        else if (!strcmp(f, "--system")) { NEED_V(); a->system = v; }
        else if (!strcmp(f, "--profile")) { NEED_V(); a->profile_path = v; }
        else if (!strcmp(f, "--chat")) a->chat = true;
        else if (!strcmp(f, "-i") || !strcmp(f, "--interactive")) a->chat = a->interactive = true;
        else if (!strcmp(f, "--no-think")) a->think = false;
        else if (!strcmp(f, "--think")) a->think = true;
        else if (!strcmp(f, "-n") || !strcmp(f, "--n-predict")) {
            if (!qg_cli_int(f, v, -1, 1 << 24, &x)) return QG_ERR_ARG;
            a->n_predict = (int)x;
            i++;
        } else if (!strcmp(f, "--top-k")) {
            if (!qg_cli_int(f, v, 0, 1 << 24, &x)) return QG_ERR_ARG;
            a->sp.top_k = (int32_t)x;
            i++;
        } else if (!strcmp(f, "--seed") || !strcmp(f, "-s")) {
            NEED_V();
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (!*v || *end || errno) { fprintf(stderr, "qmoe-graph run: --seed: '%s' is not an integer\n", v); return QG_ERR_ARG; }
            a->sp.seed = s;
        } else if (!strcmp(f, "--temp")) FLOAT_V(a->sp.temp, 0, 100);
        else if (!strcmp(f, "--top-p")) FLOAT_V(a->sp.top_p, 1e-6, 1);
        else if (!strcmp(f, "--min-p")) FLOAT_V(a->sp.min_p, 0, 1);
        else if (!strcmp(f, "--repeat-penalty")) FLOAT_V(a->sp.penalty_repeat, 1e-3, 100);
        else if (f[0] != '-' && !a->c.model) a->c.model = f;
        else {
            fprintf(stderr, "qmoe-graph run: unexpected argument '%s'\n", f);
            return QG_ERR_ARG;
        }
#undef NEED_V
#undef FLOAT_V
    }
    if (a->prompt && a->prompt_file) {
        fprintf(stderr, "qmoe-graph run: give -p or -f, not both\n");
        return QG_ERR_ARG;
    }
    return 0;
}

int qg_cmd_run(int argc, char **argv) {
    run_args a = {.c.ctx = qg_ctx_default_params(), .n_predict = 128, .think = true,
                  .sp = qg_sampler_default_params()};
    int rc = parse_args(&a, argc, argv);
    if (rc) return rc;
    qg_error err = {0};
    run_state r = {0};
    char *file_text = NULL, *turn = NULL, default_path[1200];
    if (!a.c.model) {
        if ((rc = qg_default_model_path(default_path, sizeof default_path, &err))) return qg_cli_fail(&err);
        a.c.model = default_path;
        a.is_default = true;
        fprintf(stderr, "note: no MODEL given: running the embedded default, a tiny synthetic Qwen3-MoE with "
                        "RANDOM weights (%s). Its text is noise; pass a real GGUF for language.\n", a.c.model);
    }
    if (a.prompt_file && !(file_text = read_file(a.prompt_file, &err))) return qg_cli_fail(&err);
    const char *prompt = file_text ? file_text : a.prompt ? a.prompt : "Once upon a time";

    uint64_t t_load = qg_time_ns();
    if (!(r.m = qg_cli_load_model(a.c.model, &err))) { rc = qg_cli_fail(&err); goto done; }
    if (!(r.tok = qg_tokenizer_from_gguf(r.m->gguf, &err))) { qg_error_prefix(&err, "%s", a.c.model); rc = qg_cli_fail(&err); goto done; }
    if (!(r.ctx = qg_ctx_new(r.m, &a.c.ctx, &err))) { rc = qg_cli_fail(&err); goto done; }
    r.n_ctx = qg_ctx_n_ctx(r.ctx);
    if (!(r.smp = qg_sampler_new(&a.sp, (int32_t)r.m->hp.n_vocab, &err))) { rc = qg_cli_fail(&err); goto done; }
    if (!(r.buf = malloc(sizeof *r.buf * (size_t)r.n_ctx))) { rc = QG_ERR_NOMEM; goto done; }
    if (a.profile_path) {
        const qg_graph *gd = qg_ctx_graph(r.ctx, QG_PHASE_DECODE);
        if (!(r.prof = qg_profile_new((size_t)(gd->n_nodes + 8) * (size_t)(r.n_ctx + 8)))) { rc = QG_ERR_NOMEM; goto done; }
        qg_ctx_set_profile(r.ctx, r.prof);
    }
    double load_s = (qg_time_ns() - t_load) / 1e9;

    int n;
    if (a.chat) {
        if (!(turn = render_turn(&a, prompt, true, &err)) || (n = tokenize(&r, turn, true, &err)) < 0) {
            rc = qg_cli_fail(&err);
            goto done;
        }
    } else if ((n = tokenize(&r, prompt, false, &err)) < 0) {
        rc = qg_cli_fail(&err);
        goto done;
    } else if (!a.interactive) {
        fputs(prompt, stdout);
    }
    if (n == 0) {
        qg_error_set(&err, QG_ERR_ARG, "the prompt is empty");
        rc = qg_cli_fail(&err);
        goto done;
    }
    if (generate(&r, n, a.n_predict, &err)) { rc = qg_cli_fail(&err); goto done; }
    fputc('\n', stdout);
    while (a.interactive) {
        char line[8192];
        fputs("> ", stdout);
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        free(turn);
        if (!(turn = render_turn(&a, line, false, &err)) || (n = tokenize(&r, turn, true, &err)) < 0) {
            fprintf(stderr, "qmoe-graph: %s\n", err.msg);
            break;
        }
        if (generate(&r, n, a.n_predict, &err)) { rc = qg_cli_fail(&err); goto done; }
        fputc('\n', stdout);
    }
    fprintf(stderr, "\nload %.2f s | prefill %d tokens, %.1f tok/s | decode %d tokens, %.1f tok/s%s\n", load_s,
            r.n_prefilled, r.t_prefill > 0 ? r.n_prefilled / r.t_prefill : 0.0, r.n_decoded,
            r.t_decode > 0 ? r.n_decoded / r.t_decode : 0.0, a.is_default ? " | embedded default, random weights" : "");
    if (r.prof) {
        qg_ctx_set_profile(r.ctx, NULL);
        qg_profile_report(r.prof, stderr);
        if (qg_profile_write_trace(r.prof, a.profile_path, &err)) rc = qg_cli_fail(&err);
    }
done:
    free(turn);
    free(file_text);
    free(r.buf);
    qg_profile_free(r.prof);
    qg_sampler_free(r.smp);
    qg_ctx_free(r.ctx);
    qg_tokenizer_free(r.tok);
    qg_model_free(r.m);
    return rc;
}
