/*
 * qg_e2e.h - the end-to-end harness shared by test_parity.c,
 * test_cuda_e2e.c and test_vulkan_e2e.c: synthetic model files, a fresh
 * random token sequence per file, its float64 reference logits and
 * llama.cpp's error, our logits through the public API (poisoned, checked
 * finite), and the per-file bound every executor meets.
 *
 *   qg_e2e_file f;
 *   qg_e2e_file_load(&f, dir, "tiny", "q4_k_m", 7, 100, true);
 *   qg_e2e_run r = qg_e2e_run_default("vulkan");
 *   float *ours = qg_e2e_logits_prefill(f.m, &r, f.tok, QG_E2E_N_TOK);
 *   qg_e2e_expect_vs_ref(&f, "vulkan", ours);
 *   free(ours);
 *   qg_e2e_file_free(&f);
 *
 * The per-file bound (qg_e2e_expect_vs_ref), the tolerance table of the
 * end-to-end tests:
 *   - rel_rms(ours, ref) <= rel_rms(llama, ref) * QG_E2E_LLAMA_FACTOR +
 *     QG_E2E_LLAMA_SLACK: at least as close as llama.cpp (the 5% + 2e-6
 *     slack only covers rounding-order noise where both are at f32
 *     precision, as on F32 files);
 *   - F32 and F16 files: per-position cosine(ours, ref) >= QG_E2E_MIN_COS.
 * Each test adds its own executor-to-executor bounds next to their
 * reasons.  The llama.cpp oracle is required: without it qg_e2e_file_load
 * fails the test, unless QG_ALLOW_NO_ORACLE=1 (then e_llama is NAN, the
 * llama.cpp comparison alone is skipped, and it says so).
 */
#ifndef QG_E2E_H
#define QG_E2E_H

#include "include/qmoe_graph.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QG_E2E_N_TOK 20          /* tokens per file */
#define QG_E2E_LLAMA_FACTOR 1.05 /* ours within 1.05x llama.cpp's error ... */
#define QG_E2E_LLAMA_SLACK 2e-6  /* ... + 2e-6 */
#define QG_E2E_MIN_COS 0.9999    /* F32 / F16 files: per-position cosine */

/* The file types of the GPU end-to-end tests. */
extern const char *const QG_E2E_FTYPES[4];
/* The 10 text prompts of the greedy agreement checks (the same as
 * tools/agree-device.sh). */
extern const char *const QG_E2E_PROMPTS[10];

/* How to run a context (qg_ctx_params that the tests vary). */
typedef struct qg_e2e_run {
    const char *backend; /* "cpu", "cuda", "vulkan" */
    int n_ctx;           /* KV rows */
    int n_batch;         /* prefill chunk */
    int n_threads;
    int n_cpu_moe;
    bool no_fuse;
    qg_dtype kv_type;
} qg_e2e_run;

/* backend with n_ctx 64, n_batch 8 (20 tokens: chunks 8 + 8 + 4, so the KV
 * cache carries across chunks), 2 threads, F16 KV. */
qg_e2e_run qg_e2e_run_default(const char *backend);

/* One synthetic file and its references. */
typedef struct qg_e2e_file {
    const char *preset, *ftype;
    char path[512];
    qg_model *m;
    size_t V;                          /* n_vocab */
    int32_t tok[QG_E2E_N_TOK];         /* random ids in [0, V) */
    double *rl;                        /* (V, QG_E2E_N_TOK) reference logits */
    double route_margin[QG_E2E_N_TOK]; /* reference router-logit margins */
    double e_llama;                    /* rel_rms(llama.cpp, ref); NAN: none */
} qg_e2e_file;

/* Write dir/preset-ftype.gguf (unless it exists) with qg_synth (byte
 * vocabulary, seed synth_seed); path receives its name. */
void qg_e2e_make_model(const char *dir, const char *preset, const char *ftype, uint64_t synth_seed,
                       char *path, size_t n);
/* Make (or reuse) the file, load it, draw QG_E2E_N_TOK tokens from
 * tok_seed, evaluate the float64 reference (logits and route margins) and,
 * with_llama, llama.cpp (F16 KV, n_ctx 64; else e_llama is NAN).  Fails
 * the test on any error.  preset and ftype must outlive f.  Pair with
 * qg_e2e_file_free. */
void qg_e2e_file_load(qg_e2e_file *f, const char *dir, const char *preset, const char *ftype,
                      uint64_t synth_seed, uint64_t tok_seed, bool with_llama);
void qg_e2e_file_free(qg_e2e_file *f);

/* A context as r says (logits_all: every prefill row); fails the test on
 * error. */
qg_ctx *qg_e2e_ctx_new(const qg_model *m, const qg_e2e_run *r, bool logits_all);
/* Teacher-forced logits (n_vocab, n) in prefill chunks of r->n_batch; the
 * output is poisoned with NaN first and every logit must be finite.
 * Caller frees. */
float *qg_e2e_logits_prefill(const qg_model *m, const qg_e2e_run *r, const int32_t *tok, int n);
/* Logits (n_vocab, n) one token at a time through the decode graph; every
 * logit must be finite.  Caller frees. */
float *qg_e2e_logits_stepwise(const qg_model *m, const qg_e2e_run *r, const int32_t *tok, int n);

/* Relative RMS error of a against b over n: sqrt(sum (a-b)^2 / sum b^2). */
double qg_e2e_rel_rms(const float *a, const double *b, size_t n);
double qg_e2e_rel_rms_f32(const float *a, const float *b, size_t n);
/* Cosine of a and b over n. */
double qg_e2e_cosine(const float *a, const double *b, size_t n);
/* The smallest per-position cosine of ours (V, n_pos) against ref. */
double qg_e2e_min_cos(const float *ours, const double *ref, size_t V, int n_pos);

/* The per-file bound (top of this file) for logits ours (V, QG_E2E_N_TOK):
 * prints the errors under the name `what` and fails the test past it. */
void qg_e2e_expect_vs_ref(const qg_e2e_file *f, const char *what, const float *ours);

/* Tokenize text with the model's tokenizer (no special tokens, as `run
 * -p`): returns the count (<= cap) or fails the test. */
int qg_e2e_tokenize(const qg_model *m, const char *text, int32_t *out, int cap);
/* Greedy continuation: reset ctx, prefill prompt, then n_gen argmax tokens
 * over the V logits (each fed back) into out.  Fails the test on any
 * error. */
void qg_e2e_greedy(qg_ctx *ctx, int V, const int32_t *prompt, int n_prompt, int n_gen,
                   int32_t *out);

#endif
