/*
 * qg_llama_oracle.c - llama.cpp loaded with dlopen, as a test oracle (see
 * qg_llama_oracle.h).
 *
 * Built two ways: with QG_HAVE_LLAMA_ORACLE (CMake found the bundle's
 * headers and the prebuilt library) the real implementation below; without
 * it, stubs that return QG_ERR_BACKEND so tests can skip with a reason.
 *
 * The library handle is never dlclose'd: ggml keeps process-wide state
 * (backend registry, thread pools, atexit hooks) that must outlive any one
 * oracle; a second dlopen of the same path only bumps a reference count.
 */
#include "qg_llama_oracle.h"

#include <stdlib.h>
#include <string.h>

#ifndef QG_HAVE_LLAMA_ORACLE

static const char QG_LLAMA_NONE[] =
    "llama.cpp oracle not built (configure found no node_modules/"
    "node-llama-cpp bundle or no @node-llama-cpp/linux-x64 libllama; run "
    "npm install at the repository root or pass -DQG_LLAMA_DIR=...)";

bool qg_llama_oracle_built(void) { return false; }

qg_llama_oracle *qg_llama_oracle_load(const char *path,
                                      const qg_llama_oracle_opts *opts,
                                      qg_error *err) {
    (void)path;
    (void)opts;
    qg_error_set(err, QG_ERR_BACKEND, "%s", QG_LLAMA_NONE);
    return NULL;
}

void qg_llama_oracle_free(qg_llama_oracle *o) { (void)o; }

int qg_llama_n_vocab(const qg_llama_oracle *o) {
    (void)o;
    return 0;
}

int qg_llama_n_layer(const qg_llama_oracle *o) {
    (void)o;
    return 0;
}

int qg_llama_n_expert_used(const qg_llama_oracle *o) {
    (void)o;
    return 0;
}

bool qg_llama_is_eog(const qg_llama_oracle *o, int32_t token) {
    (void)o;
    (void)token;
    return false;
}

qg_status qg_llama_eval_logits(qg_llama_oracle *o, const int32_t *tokens,
                               int n, float *logits, qg_error *err) {
    (void)o; (void)tokens; (void)n; (void)logits;
    return qg_error_set(err, QG_ERR_BACKEND, "%s", QG_LLAMA_NONE);
}

qg_status qg_llama_eval_logits_ex(qg_llama_oracle *o, const int32_t *tokens,
                                  int n, float *logits, int32_t *experts,
                                  qg_error *err) {
    (void)o; (void)tokens; (void)n; (void)logits; (void)experts;
    return qg_error_set(err, QG_ERR_BACKEND, "%s", QG_LLAMA_NONE);
}

qg_status qg_llama_tokenize(qg_llama_oracle *o, const char *text, int len,
                            bool add_special, bool parse_special,
                            int32_t *out, int cap, int *n_out,
                            qg_error *err) {
    (void)o; (void)text; (void)len; (void)add_special; (void)parse_special;
    (void)out; (void)cap; (void)n_out;
    return qg_error_set(err, QG_ERR_BACKEND, "%s", QG_LLAMA_NONE);
}

qg_status qg_llama_token_to_piece(qg_llama_oracle *o, int32_t token,
                                  bool special, char *buf, int cap,
                                  int *n_out, qg_error *err) {
    (void)o; (void)token; (void)special; (void)buf; (void)cap; (void)n_out;
    return qg_error_set(err, QG_ERR_BACKEND, "%s", QG_LLAMA_NONE);
}

qg_status qg_llama_generate_greedy(qg_llama_oracle *o, const int32_t *prompt,
                                   int n_prompt, int n_gen, bool stop_at_eog,
                                   int32_t *out, int *n_out, qg_error *err) {
    (void)o; (void)prompt; (void)n_prompt; (void)n_gen; (void)stop_at_eog;
    (void)out; (void)n_out;
    return qg_error_set(err, QG_ERR_BACKEND, "%s", QG_LLAMA_NONE);
}
qg_status qg_llama_time(qg_llama_oracle *o, const int32_t *tokens, int n_depth,
                        int n, bool pp, double *seconds, qg_error *err) {
    (void)o; (void)tokens; (void)n_depth; (void)n; (void)pp; (void)seconds;
    return qg_error_set(err, QG_ERR_BACKEND, "%s", QG_LLAMA_NONE);
}

#else /* QG_HAVE_LLAMA_ORACLE */

#include "llama.h"

#include <dlfcn.h>
#include <stdio.h>

#ifndef QG_LLAMA_LIB_DIR
#error "QG_HAVE_LLAMA_ORACLE needs QG_LLAMA_LIB_DIR (set by tests/CMakeLists.txt)"
#endif
#ifndef QG_LLAMA_LIB_NAME
#define QG_LLAMA_LIB_NAME "libllama.v0.5.0.so"
#endif

/* The llama.cpp / ggml entry points used, resolved with dlsym. */
typedef struct llama_api {
    void (*log_set)(ggml_log_callback cb, void *user_data);
    void (*backend_init)(void);
    void (*backend_load_all_from_path)(const char *dir);
    ggml_backend_dev_t (*dev_by_type)(enum ggml_backend_dev_type type);
    struct llama_model_params (*model_default_params)(void);
    struct llama_context_params (*context_default_params)(void);
    struct llama_model *(*model_load_from_file)(const char *path,
                                                struct llama_model_params p);
    void (*model_free)(struct llama_model *model);
    struct llama_context *(*init_from_model)(struct llama_model *model,
                                             struct llama_context_params p);
    void (*free_ctx)(struct llama_context *ctx);
    const struct llama_vocab *(*model_get_vocab)(const struct llama_model *m);
    int32_t (*model_n_layer)(const struct llama_model *m);
    int32_t (*model_meta_val_str)(const struct llama_model *m, const char *key,
                                  char *buf, size_t buf_size);
    int32_t (*vocab_n_tokens)(const struct llama_vocab *vocab);
    bool (*vocab_is_eog)(const struct llama_vocab *vocab, llama_token t);
    llama_memory_t (*get_memory)(const struct llama_context *ctx);
    void (*memory_clear)(llama_memory_t mem, bool data);
    int32_t (*decode)(struct llama_context *ctx, struct llama_batch batch);
    float *(*get_logits_ith)(struct llama_context *ctx, int32_t i);
    int32_t (*tokenize)(const struct llama_vocab *vocab, const char *text,
                        int32_t text_len, llama_token *tokens,
                        int32_t n_tokens_max, bool add_special,
                        bool parse_special);
    int32_t (*token_to_piece)(const struct llama_vocab *vocab,
                              llama_token token, char *buf, int32_t length,
                              int32_t lstrip, bool special);
} llama_api;

struct qg_llama_oracle {
    llama_api api;
    struct llama_model *model;
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    int n_vocab;
    int n_ctx;           /* as requested; llama.cpp may round up */
    int n_layer;
    int n_expert_used;   /* 0: dense */
    bool capture;        /* context created with the eval callback */
    /* expert capture during one eval (cap_experts NULL otherwise) */
    int32_t *cap_experts; /* (K, cap_n, n_layer) */
    int cap_n;
    int cap_seen;         /* layers captured */
    bool cap_bad;         /* a captured tensor had an unexpected shape */
    char last_err[400];  /* llama.cpp's last ERROR log line */
    bool in_error;       /* the last log line was an ERROR (CONT appends) */
    bool echo;           /* QG_LLAMA_LOG set: copy the log to stderr */
};

bool qg_llama_oracle_built(void) { return true; }

/* Log sink while a call runs (user_data = the oracle): keep the last
 * error line; echo everything when QG_LLAMA_LOG is set. */
static void oracle_log(enum ggml_log_level level, const char *text,
                       void *user_data) {
    qg_llama_oracle *o = user_data;
    if (!o) {
        const char *e = getenv("QG_LLAMA_LOG");
        if (e && *e && strcmp(e, "0") != 0) fputs(text, stderr);
        return;
    }
    if (o->echo) fputs(text, stderr);
    if (level == GGML_LOG_LEVEL_ERROR) {
        snprintf(o->last_err, sizeof o->last_err, "%s", text);
        o->in_error = true;
    } else if (level == GGML_LOG_LEVEL_CONT && o->in_error) {
        size_t l = strlen(o->last_err);
        snprintf(o->last_err + l, sizeof o->last_err - l, "%s", text);
    } else {
        o->in_error = false;
    }
    /* one line: drop a trailing newline */
    size_t l = strlen(o->last_err);
    while (l > 0 && (o->last_err[l - 1] == '\n' || o->last_err[l - 1] == '\r'))
        o->last_err[--l] = '\0';
}

/* Route llama.cpp's log to this oracle for the duration of one call. */
static void oracle_log_begin(qg_llama_oracle *o) {
    o->last_err[0] = '\0';
    o->in_error = false;
    o->api.log_set(oracle_log, o);
}

static void oracle_log_end(qg_llama_oracle *o) {
    o->api.log_set(oracle_log, NULL);
}

/* dlopen the library and fill o->api.  On failure, err says which file or
 * symbol. */
static qg_status oracle_open_lib(qg_llama_oracle *o, char *dir, size_t cap,
                                 qg_error *err) {
    const char *env = getenv("QG_LLAMA_LIB_DIR");
    snprintf(dir, cap, "%s", env && *env ? env : QG_LLAMA_LIB_DIR);
    char lib[1200];
    snprintf(lib, sizeof lib, "%s/%s", dir, QG_LLAMA_LIB_NAME);
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return qg_error_set(err, QG_ERR_BACKEND, "llama.cpp oracle: dlopen "
                            "%s: %s", lib, dlerror());
    /* A handle's dlsym also searches its dependencies (libggml,
     * libggml-base), so the ggml entry points resolve through it. */
#define ORACLE_SYM(field, name)                                              \
    do {                                                                     \
        void *p_ = dlsym(h, name);                                           \
        if (!p_)                                                             \
            return qg_error_set(err, QG_ERR_BACKEND, "llama.cpp oracle: %s " \
                                "has no symbol %s", lib, name);              \
        memcpy(&o->api.field, &p_, sizeof p_);                               \
    } while (0)
    ORACLE_SYM(log_set, "llama_log_set");
    ORACLE_SYM(backend_init, "llama_backend_init");
    ORACLE_SYM(backend_load_all_from_path, "ggml_backend_load_all_from_path");
    ORACLE_SYM(dev_by_type, "ggml_backend_dev_by_type");
    ORACLE_SYM(model_default_params, "llama_model_default_params");
    ORACLE_SYM(context_default_params, "llama_context_default_params");
    ORACLE_SYM(model_load_from_file, "llama_model_load_from_file");
    ORACLE_SYM(model_free, "llama_model_free");
    ORACLE_SYM(init_from_model, "llama_init_from_model");
    ORACLE_SYM(free_ctx, "llama_free");
    ORACLE_SYM(model_get_vocab, "llama_model_get_vocab");
    ORACLE_SYM(model_n_layer, "llama_model_n_layer");
    ORACLE_SYM(model_meta_val_str, "llama_model_meta_val_str");
    ORACLE_SYM(vocab_n_tokens, "llama_vocab_n_tokens");
    ORACLE_SYM(vocab_is_eog, "llama_vocab_is_eog");
    ORACLE_SYM(get_memory, "llama_get_memory");
    ORACLE_SYM(memory_clear, "llama_memory_clear");
    ORACLE_SYM(decode, "llama_decode");
    ORACLE_SYM(get_logits_ith, "llama_get_logits_ith");
    ORACLE_SYM(tokenize, "llama_tokenize");
    ORACLE_SYM(token_to_piece, "llama_token_to_piece");
#undef ORACLE_SYM
    return QG_OK;
}

/* ggml scheduler callback: ask for, then copy, the tensors
 * "ffn_moe_topk-<layer>" (I32, (K, n_tokens), possibly a strided view of
 * the argsort) while an eval with capture runs. */
static bool oracle_eval_cb(struct ggml_tensor *t, bool ask, void *user_data) {
    qg_llama_oracle *o = user_data;
    static const char prefix[] = "ffn_moe_topk-";
    if (!o->cap_experts || strncmp(t->name, prefix, sizeof prefix - 1) != 0)
        return ask ? false : true;
    if (ask) return true;
    char *end = NULL;
    long il = strtol(t->name + sizeof prefix - 1, &end, 10);
    const int K = o->n_expert_used;
    if (!end || *end != '\0' || il < 0 || il >= o->n_layer ||
        t->type != GGML_TYPE_I32 || t->ne[0] != K || t->ne[1] != o->cap_n ||
        !t->data) {
        o->cap_bad = true;
        return true;
    }
    for (int j = 0; j < o->cap_n; j++)
        for (int k = 0; k < K; k++) {
            const char *src = (const char *)t->data + (size_t)k * t->nb[0] +
                              (size_t)j * t->nb[1];
            memcpy(&o->cap_experts[((size_t)il * o->cap_n + j) * K + k], src,
                   sizeof(int32_t));
        }
    o->cap_seen++;
    return true;
}

/* Read integer metadata "<general.architecture>.<suffix>"; 0 if absent. */
static int oracle_meta_int(qg_llama_oracle *o, const char *suffix) {
    char arch[64], key[160], val[64];
    if (o->api.model_meta_val_str(o->model, "general.architecture", arch,
                                  sizeof arch) < 0)
        return 0;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (o->api.model_meta_val_str(o->model, key, val, sizeof val) < 0)
        return 0;
    return atoi(val);
}

qg_llama_oracle *qg_llama_oracle_load(const char *path,
                                      const qg_llama_oracle_opts *opts,
                                      qg_error *err) {
    qg_llama_oracle_opts d = {0};
    if (opts) d = *opts;
    if (d.n_threads <= 0) d.n_threads = 2;
    if (d.n_ctx <= 0) d.n_ctx = 512;

    qg_llama_oracle *o = calloc(1, sizeof *o);
    if (!o) {
        qg_error_set(err, QG_ERR_NOMEM, "llama.cpp oracle: out of memory");
        return NULL;
    }
    const char *e = getenv("QG_LLAMA_LOG");
    o->echo = e && *e && strcmp(e, "0") != 0;
    char dir[1024];
    if (oracle_open_lib(o, dir, sizeof dir, err)) {
        free(o);
        return NULL;
    }
    oracle_log_begin(o);
    o->api.backend_init();
    /* The CPU backend lives in one of the libggml-cpu-<variant>.so next to
     * the library; ggml picks the best for this CPU.  Register only once
     * per process (the registry is ggml's, not ours). */
    if (!o->api.dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU))
        o->api.backend_load_all_from_path(dir);
    if (!o->api.dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)) {
        qg_error_set(err, QG_ERR_BACKEND, "llama.cpp oracle: no CPU backend "
                     "could be loaded from %s (%s)", dir, o->last_err);
        goto fail;
    }

    struct llama_model_params mp = o->api.model_default_params();
    mp.n_gpu_layers = 0;
    mp.load_mode = LLAMA_LOAD_MODE_NONE; /* read, do not map */
    mp.progress_callback = NULL;
    o->model = o->api.model_load_from_file(path, mp);
    if (!o->model) {
        qg_error_set(err, QG_ERR_MODEL, "%s: llama.cpp refused the model: %s",
                     path, o->last_err[0] ? o->last_err : "(no message)");
        goto fail;
    }
    struct llama_context_params cp = o->api.context_default_params();
    cp.n_ctx = (uint32_t)d.n_ctx;
    cp.n_batch = (uint32_t)d.n_ctx;
    cp.n_ubatch = (uint32_t)d.n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = d.n_threads;
    cp.n_threads_batch = d.n_threads;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = d.kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.type_v = d.kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cp.no_perf = true;
    cp.embeddings = false;
    if (d.capture_experts) {
        cp.cb_eval = oracle_eval_cb;
        cp.cb_eval_user_data = o;
        o->capture = true;
    }
    o->ctx = o->api.init_from_model(o->model, cp);
    if (!o->ctx) {
        qg_error_set(err, QG_ERR_BACKEND, "%s: llama.cpp could not create a "
                     "context of %d tokens: %s", path, d.n_ctx,
                     o->last_err[0] ? o->last_err : "(no message)");
        goto fail;
    }
    o->vocab = o->api.model_get_vocab(o->model);
    o->n_vocab = o->api.vocab_n_tokens(o->vocab);
    o->n_ctx = d.n_ctx;
    o->n_layer = o->api.model_n_layer(o->model);
    o->n_expert_used = oracle_meta_int(o, "expert_used_count");
    oracle_log_end(o);
    return o;
fail:
    oracle_log_end(o);
    qg_llama_oracle_free(o);
    return NULL;
}

void qg_llama_oracle_free(qg_llama_oracle *o) {
    if (!o) return;
    if (o->ctx) o->api.free_ctx(o->ctx);
    if (o->model) o->api.model_free(o->model);
    free(o);
}

int qg_llama_n_vocab(const qg_llama_oracle *o) { return o->n_vocab; }

int qg_llama_n_layer(const qg_llama_oracle *o) { return o->n_layer; }

int qg_llama_n_expert_used(const qg_llama_oracle *o) {
    return o->n_expert_used;
}

bool qg_llama_is_eog(const qg_llama_oracle *o, int32_t token) {
    return o->api.vocab_is_eog(o->vocab, token);
}

/* One llama_batch over tokens[0..n) at positions pos0.., sequence 0,
 * asking for logits of every token (all_logits) or of the last only. */
typedef struct oracle_batch {
    struct llama_batch b;
    llama_seq_id seq0;
} oracle_batch;

static bool oracle_batch_make(oracle_batch *ob, const int32_t *tokens, int n,
                              int pos0, bool all_logits) {
    memset(ob, 0, sizeof *ob);
    if (n < 1) return false;
    struct llama_batch *b = &ob->b;
    b->n_tokens = n;
    b->token = malloc((size_t)n * sizeof *b->token);
    b->pos = malloc((size_t)n * sizeof *b->pos);
    b->n_seq_id = malloc((size_t)n * sizeof *b->n_seq_id);
    b->seq_id = malloc((size_t)n * sizeof *b->seq_id);
    b->logits = malloc((size_t)n * sizeof *b->logits);
    if (!b->token || !b->pos || !b->n_seq_id || !b->seq_id || !b->logits)
        return false;
    ob->seq0 = 0;
    for (int i = 0; i < n; i++) {
        b->token[i] = tokens[i];
        b->pos[i] = pos0 + i;
        b->n_seq_id[i] = 1;
        b->seq_id[i] = &ob->seq0;
        b->logits[i] = (int8_t)(all_logits || i == n - 1);
    }
    return true;
}

static void oracle_batch_free(oracle_batch *ob) {
    free(ob->b.token);
    free(ob->b.pos);
    free(ob->b.n_seq_id);
    free(ob->b.seq_id);
    free(ob->b.logits);
}

/* Decode tokens[0..n) at positions pos0.. (logits for all or the last). */
static qg_status oracle_decode(qg_llama_oracle *o, const int32_t *tokens,
                               int n, int pos0, bool all_logits,
                               qg_error *err) {
    if (n < 1)
        return qg_error_set(err, QG_ERR_ARG, "llama.cpp oracle: decode of %d "
                            "tokens", n);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= o->n_vocab)
            return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: token "
                                "%d at position %d is outside [0, %d)",
                                tokens[i], pos0 + i, o->n_vocab);
    oracle_batch ob;
    if (!oracle_batch_make(&ob, tokens, n, pos0, all_logits)) {
        oracle_batch_free(&ob);
        return qg_error_set(err, QG_ERR_NOMEM, "llama.cpp oracle: out of "
                            "memory for a batch of %d", n);
    }
    oracle_log_begin(o);
    int32_t rc = o->api.decode(o->ctx, ob.b);
    oracle_log_end(o);
    oracle_batch_free(&ob);
    if (rc != 0)
        return qg_error_set(err, QG_ERR_BACKEND, "llama.cpp oracle: "
                            "llama_decode of %d tokens at position %d "
                            "returned %d: %s", n, pos0, (int)rc,
                            o->last_err[0] ? o->last_err : "(no message)");
    return QG_OK;
}

qg_status qg_llama_eval_logits_ex(qg_llama_oracle *o, const int32_t *tokens,
                                  int n, float *logits, int32_t *experts,
                                  qg_error *err) {
    if (n < 1 || n > o->n_ctx)
        return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: %d tokens "
                            "for a context of %d", n, o->n_ctx);
    if (experts && (!o->capture || o->n_expert_used < 1))
        return qg_error_set(err, QG_ERR_ARG, "llama.cpp oracle: expert "
                            "capture needs a MoE model loaded with "
                            "capture_experts");
    o->api.memory_clear(o->api.get_memory(o->ctx), true);
    o->cap_experts = experts;
    o->cap_n = n;
    o->cap_seen = 0;
    o->cap_bad = false;
    qg_status st = oracle_decode(o, tokens, n, 0, true, err);
    o->cap_experts = NULL;
    if (st) return st;
    if (experts && (o->cap_bad || o->cap_seen != o->n_layer))
        return qg_error_set(err, QG_ERR_BACKEND, "llama.cpp oracle: captured "
                            "the expert choice of %d of %d layers%s",
                            o->cap_seen, o->n_layer,
                            o->cap_bad ? " (unexpected tensor shape)" : "");
    for (int i = 0; i < n; i++) {
        const float *l = o->api.get_logits_ith(o->ctx, i);
        if (!l)
            return qg_error_set(err, QG_ERR_BACKEND, "llama.cpp oracle: no "
                                "logits for token %d", i);
        memcpy(logits + (size_t)i * o->n_vocab, l,
               (size_t)o->n_vocab * sizeof(float));
    }
    return QG_OK;
}

qg_status qg_llama_eval_logits(qg_llama_oracle *o, const int32_t *tokens,
                               int n, float *logits, qg_error *err) {
    return qg_llama_eval_logits_ex(o, tokens, n, logits, NULL, err);
}

qg_status qg_llama_tokenize(qg_llama_oracle *o, const char *text, int len,
                            bool add_special, bool parse_special,
                            int32_t *out, int cap, int *n_out,
                            qg_error *err) {
    oracle_log_begin(o);
    int32_t r = o->api.tokenize(o->vocab, text, len, out, cap, add_special,
                                parse_special);
    oracle_log_end(o);
    if (r < 0) {
        if (r == INT32_MIN)
            return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: "
                                "tokenization of %d bytes overflowed", len);
        *n_out = -r;
        return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: "
                            "tokenization needs %d ids, buffer holds %d",
                            (int)-r, cap);
    }
    *n_out = r;
    return QG_OK;
}

qg_status qg_llama_token_to_piece(qg_llama_oracle *o, int32_t token,
                                  bool special, char *buf, int cap,
                                  int *n_out, qg_error *err) {
    if (token < 0 || token >= o->n_vocab)
        return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: token %d "
                            "is outside [0, %d)", token, o->n_vocab);
    int32_t r = o->api.token_to_piece(o->vocab, token, buf, cap, 0, special);
    if (r < 0)
        return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: token %d "
                            "needs %d bytes, buffer holds %d", token, (int)-r,
                            cap);
    *n_out = r;
    return QG_OK;
}

/* Argmax of v[0..n), lowest index on ties. */
static int32_t oracle_argmax(const float *v, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

qg_status qg_llama_generate_greedy(qg_llama_oracle *o, const int32_t *prompt,
                                   int n_prompt, int n_gen, bool stop_at_eog,
                                   int32_t *out, int *n_out, qg_error *err) {
    *n_out = 0;
    if (n_prompt < 1 || n_gen < 0 || n_prompt + n_gen > o->n_ctx)
        return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: prompt %d +"
                            " %d generated tokens for a context of %d",
                            n_prompt, n_gen, o->n_ctx);
    o->api.memory_clear(o->api.get_memory(o->ctx), true);
    qg_status st = oracle_decode(o, prompt, n_prompt, 0, false, err);
    if (st) return st;
    int pos = n_prompt;
    for (int g = 0; g < n_gen; g++) {
        const float *l = o->api.get_logits_ith(o->ctx, -1);
        if (!l)
            return qg_error_set(err, QG_ERR_BACKEND, "llama.cpp oracle: no "
                                "logits after position %d", pos - 1);
        int32_t tok = oracle_argmax(l, o->n_vocab);
        out[g] = tok;
        *n_out = g + 1;
        if (stop_at_eog && qg_llama_is_eog(o, tok)) break;
        if (g + 1 == n_gen) break;
        if ((st = oracle_decode(o, &tok, 1, pos, true, err))) return st;
        pos++;
    }
    return QG_OK;
}


qg_status qg_llama_time(qg_llama_oracle *o, const int32_t *tokens, int n_depth,
                        int n, bool pp, double *seconds, qg_error *err) {
    if (n_depth < 0 || n < 1 || n_depth + n > o->n_ctx)
        return qg_error_set(err, QG_ERR_RANGE, "llama.cpp oracle: depth %d + %d "
                            "tokens for a context of %d", n_depth, n, o->n_ctx);
    o->api.memory_clear(o->api.get_memory(o->ctx), true);
    qg_status st;
    if (n_depth > 0 && (st = oracle_decode(o, tokens, n_depth, 0, false, err)))
        return st;
    uint64_t t0 = qg_time_ns();
    if (pp) {
        if ((st = oracle_decode(o, tokens + n_depth, n, n_depth, false, err)))
            return st;
    } else {
        for (int i = 0; i < n; i++)
            if ((st = oracle_decode(o, tokens + n_depth + i, 1, n_depth + i,
                                    false, err)))
                return st;
    }
    *seconds = (qg_time_ns() - t0) / 1e9;
    return QG_OK;
}
#endif /* QG_HAVE_LLAMA_ORACLE */
