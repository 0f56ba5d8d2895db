/*
 * qg_e2e.c - the end-to-end harness (see qg_e2e.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "qg_e2e.h"
#include "qg_llama_oracle.h"
#include "qg_ref_model.h"
#include "qg_test_rng.h"

#include "frontends/qg_synth.h"
#include "frontends/qg_tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const QG_E2E_FTYPES[4] = {"f32", "q8_0", "q4_k_m", "q6_k"};

const char *const QG_E2E_PROMPTS[10] = {
    "The capital of France is", "def fibonacci(n):",    "Once upon a time",
    "1, 2, 3, 4,",              "The quick brown fox",  "In 1492, Columbus",
    "import numpy as np",       "Dear Sir or Madam,",   "The meaning of life is",
    "SELECT * FROM",
};

qg_e2e_run qg_e2e_run_default(const char *backend) {
    return (qg_e2e_run){.backend = backend, .n_ctx = 64, .n_batch = 8, .n_threads = 2,
                        .kv_type = QG_F16};
}

/* ---- metrics ----------------------------------------------------------------- */

double qg_e2e_rel_rms(const float *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

double qg_e2e_rel_rms_f32(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

double qg_e2e_cosine(const float *a, const double *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += b[i] * b[i];
    }
    return ab / sqrt(aa * bb);
}

double qg_e2e_min_cos(const float *ours, const double *ref, size_t V, int n_pos) {
    double m = 1;
    for (int t = 0; t < n_pos; t++)
        m = fmin(m, qg_e2e_cosine(ours + (size_t)t * V, ref + (size_t)t * V, V));
    return m;
}

/* ---- files --------------------------------------------------------------------- */

void qg_e2e_make_model(const char *dir, const char *preset, const char *ftype, uint64_t synth_seed,
                       char *path, size_t n) {
    snprintf(path, n, "%s/%s-%s.gguf", dir, preset, ftype);
    if (access(path, R_OK) == 0) return;
    qg_synth_opts o = {.preset = preset, .ftype = ftype, .seed = synth_seed,
                       .vocab_mode = QG_SYNTH_VOCAB_BYTES, .n_threads = 2};
    qg_error err = {0};
    if (qg_synth_write(path, &o, NULL, &err)) fail_msg("synth %s %s: %s", preset, ftype, err.msg);
}

void qg_e2e_file_load(qg_e2e_file *f, const char *dir, const char *preset, const char *ftype,
                      uint64_t synth_seed, uint64_t tok_seed, bool with_llama) {
    memset(f, 0, sizeof *f);
    f->preset = preset;
    f->ftype = ftype;
    qg_e2e_make_model(dir, preset, ftype, synth_seed, f->path, sizeof f->path);
    qg_error err = {0};
    if (!(f->m = qg_model_load(f->path, &err))) fail_msg("load %s: %s", f->path, err.msg);
    f->V = f->m->hp.n_vocab;
    qg_test_rng r = {tok_seed};
    for (int i = 0; i < QG_E2E_N_TOK; i++) f->tok[i] = (int32_t)(qg_test_rng_u64(&r) % f->V);
    qg_ref_model *ref = qg_ref_model_load(f->path, &err);
    if (!ref) fail_msg("ref load: %s", err.msg);
    f->rl = malloc(sizeof(double) * f->V * QG_E2E_N_TOK);
    assert_non_null(f->rl);
    const qg_ref_eval_out ro = {.logits = f->rl, .route_margin = f->route_margin};
    if (qg_ref_model_eval_ex(ref, f->tok, QG_E2E_N_TOK, &ro, &err))
        fail_msg("ref eval: %s", err.msg);
    qg_ref_model_free(ref);
    f->e_llama = NAN;
    if (!with_llama) return;
    qg_llama_oracle_opts lo = {.n_threads = 2, .n_ctx = 64, .kv_f16 = true};
    qg_llama_oracle *o = qg_llama_oracle_load(f->path, &lo, &err);
    if (o) {
        float *ll = malloc(sizeof(float) * f->V * QG_E2E_N_TOK); /* (V, N_TOK) */
        assert_non_null(ll);
        if (qg_llama_eval_logits(o, f->tok, QG_E2E_N_TOK, ll, &err))
            fail_msg("llama eval: %s", err.msg);
        f->e_llama = qg_e2e_rel_rms(ll, f->rl, f->V * QG_E2E_N_TOK);
        free(ll);
        qg_llama_oracle_free(o);
    } else {
        const char *allow = getenv("QG_ALLOW_NO_ORACLE");
        if (!allow || strcmp(allow, "1")) fail_msg("llama.cpp oracle unavailable: %s", err.msg);
        printf("  (llama.cpp comparison skipped: %s)\n", err.msg);
    }
}

void qg_e2e_file_free(qg_e2e_file *f) {
    free(f->rl);
    qg_model_free(f->m);
    memset(f, 0, sizeof *f);
}

/* ---- our logits ------------------------------------------------------------------ */

qg_ctx *qg_e2e_ctx_new(const qg_model *m, const qg_e2e_run *r, bool logits_all) {
    qg_ctx_params p = qg_ctx_default_params();
    p.n_ctx = r->n_ctx;
    p.n_batch = r->n_batch;
    p.n_threads = r->n_threads;
    p.logits_all = logits_all;
    p.backend = r->backend;
    p.n_cpu_moe = r->n_cpu_moe;
    p.no_fuse = r->no_fuse;
    p.kv_type = r->kv_type;
    qg_error err = {0};
    qg_ctx *ctx = qg_ctx_new(m, &p, &err);
    if (!ctx) fail_msg("ctx (%s): %s", r->backend, err.msg);
    return ctx;
}

float *qg_e2e_logits_prefill(const qg_model *m, const qg_e2e_run *r, const int32_t *tok, int n) {
    qg_ctx *ctx = qg_e2e_ctx_new(m, r, true);
    const size_t V = m->hp.n_vocab;
    float *out = malloc(sizeof(float) * V * (size_t)n); /* (V, n) */
    assert_non_null(out);
    for (size_t i = 0; i < V * (size_t)n; i++) out[i] = NAN; /* poison */
    qg_error err = {0};
    if (qg_ctx_decode(ctx, tok, n, out, &err)) fail_msg("decode (%s): %s", r->backend, err.msg);
    for (size_t i = 0; i < V * (size_t)n; i++)
        if (!isfinite(out[i])) fail_msg("%s: logit %zu is not finite", r->backend, i);
    qg_ctx_free(ctx);
    return out;
}

float *qg_e2e_logits_stepwise(const qg_model *m, const qg_e2e_run *r, const int32_t *tok, int n) {
    qg_ctx *ctx = qg_e2e_ctx_new(m, r, false);
    const size_t V = m->hp.n_vocab;
    float *out = malloc(sizeof(float) * V * (size_t)n); /* (V, n) */
    assert_non_null(out);
    qg_error err = {0};
    for (int t = 0; t < n; t++) {
        if (qg_ctx_decode(ctx, &tok[t], 1, NULL, &err))
            fail_msg("decode (%s): %s", r->backend, err.msg);
        memcpy(out + (size_t)t * V, qg_ctx_logits(ctx), sizeof(float) * V);
        for (size_t i = 0; i < V; i++)
            if (!isfinite(out[(size_t)t * V + i]))
                fail_msg("%s: step %d logit %zu is not finite", r->backend, t, i);
    }
    qg_ctx_free(ctx);
    return out;
}

/* ---- the per-file bound --------------------------------------------------------- */

void qg_e2e_expect_vs_ref(const qg_e2e_file *f, const char *what, const float *ours) {
    const double e = qg_e2e_rel_rms(ours, f->rl, f->V * QG_E2E_N_TOK);
    const double min_cos = qg_e2e_min_cos(ours, f->rl, f->V, QG_E2E_N_TOK);
    printf("  %-12s %-7s %-16s %.3e  llama.cpp %.3e  min cos %.7f\n", f->preset, f->ftype, what, e,
           f->e_llama, min_cos);
    if (!isnan(f->e_llama) && !(e <= f->e_llama * QG_E2E_LLAMA_FACTOR + QG_E2E_LLAMA_SLACK))
        fail_msg("%s %s (%s): %.3e is farther from the reference than llama.cpp's %.3e", f->preset,
                 f->ftype, what, e, f->e_llama);
    const bool exact = !strcmp(f->ftype, "f32") || !strcmp(f->ftype, "f16");
    if (exact && !(min_cos >= QG_E2E_MIN_COS))
        fail_msg("%s %s (%s): per-position cosine %.7f < %g", f->preset, f->ftype, what, min_cos,
                 QG_E2E_MIN_COS);
}

/* ---- greedy ------------------------------------------------------------------------ */

int qg_e2e_tokenize(const qg_model *m, const char *text, int32_t *out, int cap) {
    qg_error err = {0};
    qg_tokenizer *tk = qg_tokenizer_from_gguf(m->gguf, &err);
    if (!tk) fail_msg("tokenizer: %s", err.msg);
    const int n = qg_tokenizer_encode(tk, text, strlen(text), false, out, cap, &err);
    qg_tokenizer_free(tk);
    if (n < 0) fail_msg("tokenize \"%s\": %s", text, err.msg);
    if (n == 0 || n > cap) fail_msg("tokenize \"%s\": %d tokens (room for %d)", text, n, cap);
    return n;
}

void qg_e2e_greedy(qg_ctx *ctx, int V, const int32_t *prompt, int n_prompt, int n_gen,
                   int32_t *out) {
    qg_error err = {0};
    qg_ctx_reset(ctx);
    if (qg_ctx_decode(ctx, prompt, n_prompt, NULL, &err)) fail_msg("prompt: %s", err.msg);
    for (int i = 0; i < n_gen; i++) {
        const float *l = qg_ctx_logits(ctx); /* (V) */
        int best = 0;
        for (int v = 1; v < V; v++)
            if (l[v] > l[best]) best = v;
        out[i] = best;
        if (qg_ctx_decode(ctx, &out[i], 1, NULL, &err)) fail_msg("step: %s", err.msg);
    }
}
