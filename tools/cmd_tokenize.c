/* cmd_tokenize.c - `qmoe-graph tokenize MODEL TEXT`: comma-separated ids,
 * exactly as llama.cpp's tokenizer gives them (special tokens parsed). */
#include "qg_cli.h"

#include "../frontends/qg_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qg_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL;
    bool no_special = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-parse-special")) no_special = true;
        else if (!model) model = argv[i];
        else if (!text) text = argv[i];
        else {
            fprintf(stderr, "qmoe-graph tokenize: unexpected argument '%s'\n", argv[i]);
            return QG_ERR_ARG;
        }
    }
    if (!model || !text) {
        fprintf(stderr, "usage: qmoe-graph tokenize MODEL TEXT [--no-parse-special]\n");
        return QG_ERR_ARG;
    }
    qg_error err = {0};
    qg_gguf *g = qg_gguf_open(model, &err);
    if (!g) return qg_cli_fail(&err);
    qg_tokenizer *tok = qg_tokenizer_from_gguf(g, &err);
    if (!tok) {
        qg_error_prefix(&err, "%s", model);
        qg_gguf_close(g);
        return qg_cli_fail(&err);
    }
    size_t len = strlen(text);
    int cap = (int)len + 16;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    int n = ids ? qg_tokenizer_encode(tok, text, len, !no_special, ids, cap, &err) : -1;
    int rc = 0;
    if (n < 0) {
        rc = qg_cli_fail(&err);
    } else {
        for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
        printf("\n");
    }
    free(ids);
    qg_tokenizer_free(tok);
    qg_gguf_close(g);
    return rc;
}
