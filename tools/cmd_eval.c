/* cmd_eval.c - `qmoe-graph eval`: teacher-forced logits of every position,
 * written as raw little-endian float32, one row of n_vocab per token.  The
 * interface every parity test uses. */
#include "qg_cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parse "1,2,3" into a malloc'd array; NULL (message printed) on error. */
static int32_t *parse_tokens(const char *s, int *n_out) {
    int cap = 16, n = 0;
    int32_t *v = malloc(sizeof *v * (size_t)cap);
    if (!v) return NULL;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            fprintf(stderr, "qmoe-graph: --tokens: '%s' is not a comma-separated list of token ids\n", s);
            free(v);
            return NULL;
        }
        if (n == cap) {
            int32_t *w = realloc(v, sizeof *v * (size_t)(cap *= 2));
            if (!w) { free(v); return NULL; }
            v = w;
        }
        v[n++] = (int32_t)x;
        p = *end ? end + 1 : end;
    }
    if (!n) {
        fprintf(stderr, "qmoe-graph: --tokens: no token ids given\n");
        free(v);
        return NULL;
    }
    *n_out = n;
    return v;
}

int qg_cmd_eval(int argc, char **argv) {
    qg_cli_common c = {.ctx = qg_ctx_default_params()};
    c.ctx.n_batch = 0;
    const char *tokens_arg = NULL, *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        int r = qg_cli_common_flag(&c, argc, argv, &i);
        if (r < 0) return QG_ERR_ARG;
        if (r) continue;
        if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens_arg = argv[++i];
        else if (!strcmp(argv[i], "--logits") && i + 1 < argc) out_path = argv[++i];
        else if (argv[i][0] != '-' && !c.model) c.model = argv[i];
        else {
            fprintf(stderr, "qmoe-graph eval: unexpected argument '%s'\n", argv[i]);
            return QG_ERR_ARG;
        }
    }
    if (!c.model || !tokens_arg || !out_path) {
        fprintf(stderr, "usage: qmoe-graph eval MODEL --tokens 1,2,3 --logits OUT.bin [--backend cpu] [-t N]\n");
        return QG_ERR_ARG;
    }
    int n = 0;
    int32_t *tokens = parse_tokens(tokens_arg, &n);
    if (!tokens) return QG_ERR_ARG;

    qg_error err = {0};
    int rc = 0;
    qg_ctx *ctx = NULL;
    float *logits = NULL;
    FILE *f = NULL;
    char tmp[4096];
    tmp[0] = '\0';
    qg_model *m = qg_cli_load_model(c.model, &err);
    if (!m) { rc = qg_cli_fail(&err); goto done; }
    c.ctx.logits_all = true;
    if (c.ctx.n_ctx <= 0) c.ctx.n_ctx = QG_MAX(n, 16);
    if (c.ctx.n_batch <= 0) c.ctx.n_batch = QG_MIN(n, 64);
    if (!(ctx = qg_ctx_new(m, &c.ctx, &err))) { rc = qg_cli_fail(&err); goto done; }
    size_t V = m->hp.n_vocab;
    logits = malloc(sizeof(float) * V * (size_t)n);
    if (!logits) { qg_error_set(&err, QG_ERR_NOMEM, "out of memory for %d x %zu logits", n, V); rc = qg_cli_fail(&err); goto done; }
    if (qg_ctx_decode(ctx, tokens, n, logits, &err)) { rc = qg_cli_fail(&err); goto done; }
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    f = fopen(tmp, "wb");
    if (!f || fwrite(logits, sizeof(float) * V, (size_t)n, f) != (size_t)n || fclose(f) != 0) {
        f = NULL;
        remove(tmp);
        qg_error_set(&err, QG_ERR_IO, "%s: cannot write the logits: %s", out_path, strerror(errno));
        rc = qg_cli_fail(&err);
        goto done;
    }
    f = NULL;
    if (rename(tmp, out_path) != 0) {
        remove(tmp);
        qg_error_set(&err, QG_ERR_IO, "%s: cannot write the logits: %s", out_path, strerror(errno));
        rc = qg_cli_fail(&err);
    }
done:
    if (f) fclose(f);
    free(logits);
    qg_ctx_free(ctx);
    qg_model_free(m);
    free(tokens);
    return rc;
}
