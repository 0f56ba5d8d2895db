/*
 * qg_llama_oracle.h - llama.cpp as an external oracle for the tests.
 *
 * The prebuilt libllama of the npm package @node-llama-cpp/linux-x64 is
 * loaded at run time with dlopen (nothing links against it), its CPU
 * backend variants are registered with ggml_backend_load_all_from_path,
 * and the few functions used are resolved with dlsym.  The struct layouts
 * passed by value (llama_model_params, llama_context_params, llama_batch)
 * come from the real llama.h, extracted from the same release's git bundle
 * by tools/llama-include.sh at configure time.
 *
 * Where the library is: the directory QG_LLAMA_LIB_DIR in the environment
 * if set, else the one CMake found (compile definition QG_LLAMA_LIB_DIR).
 * When the build has no oracle (no bundle or no library at configure time)
 * or the library cannot be loaded, every function returns QG_ERR_BACKEND
 * with a message saying why; tests then skip() with that reason printed.
 *
 * Numerics of the oracle: the KV cache is F32 by default and flash
 * attention is off; llama.cpp's CPU matmuls may convert activations to the
 * weight's "vec_dot_type" (F16 for F16 weights, seen in the expert matmuls;
 * Q8_0 / Q8_K for quantized weights), so only F32 models match the float64
 * reference to ~1e-6 relative (measured: F32 ~1e-6, F16 ~5e-4, Q8_0 and
 * Q4_K_M ~2e-2 .. 5e-2 relative RMS on the logits of small models).
 *
 * Not thread-safe: llama.cpp's log callback is process-global, and the
 * oracle installs its own around each call to capture the last error.
 */
#ifndef QG_LLAMA_ORACLE_H
#define QG_LLAMA_ORACLE_H

#include "graph/qg_base.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct qg_llama_oracle qg_llama_oracle;

typedef struct qg_llama_oracle_opts {
    int n_threads; /* 0: 2 */
    int n_ctx;     /* most tokens of one eval / generation; 0: 512 */
    bool kv_f16;   /* F16 KV cache (llama.cpp's default) instead of F32 */
    bool capture_experts; /* observe llama.cpp's expert choice (MoE) with
                             an eval callback, for qg_llama_eval_logits_ex */
} qg_llama_oracle_opts;

/* True when this build was configured with the oracle (headers and
 * library found); the library may still fail to load at run time. */
bool qg_llama_oracle_built(void);

/*
 * Load the model at `path` on the CPU (no GPU, no mmap: the file may be
 * deleted or rewritten afterwards) and create one context of opts->n_ctx
 * tokens with n_batch = n_ubatch = n_ctx.  opts may be NULL (defaults).
 * NULL on error: QG_ERR_BACKEND when there is no oracle (message says
 * why), QG_ERR_MODEL when llama.cpp refuses the file (message carries
 * llama.cpp's last error line).
 */
qg_llama_oracle *qg_llama_oracle_load(const char *path,
                                      const qg_llama_oracle_opts *opts,
                                      qg_error *err);
void qg_llama_oracle_free(qg_llama_oracle *o);

/* Vocabulary size (rows of the logits). */
int qg_llama_n_vocab(const qg_llama_oracle *o);
/* Blocks, and experts used per token (0 for a dense model). */
int qg_llama_n_layer(const qg_llama_oracle *o);
int qg_llama_n_expert_used(const qg_llama_oracle *o);
/* End-of-generation token test (eos, eot, ...). */
bool qg_llama_is_eog(const qg_llama_oracle *o, int32_t token);

/*
 * Teacher forcing: clear the cache, decode tokens[0..n) at positions
 * 0..n-1 in one batch with an output for every token, and copy all
 * logits out.  logits: (n_vocab, n), token-major.  n <= n_ctx
 * (QG_ERR_RANGE otherwise).
 */
qg_status qg_llama_eval_logits(qg_llama_oracle *o, const int32_t *tokens,
                               int n, float *logits /* (n_vocab, n) */,
                               qg_error *err);

/*
 * The same, also reporting the experts llama.cpp chose (its tensors
 * "ffn_moe_topk-<layer>"): experts (K, n, n_layer) with K =
 * qg_llama_n_expert_used, in llama.cpp's order (decreasing probability).
 * experts may be NULL; non-NULL needs a MoE model loaded with
 * opts.capture_experts (QG_ERR_ARG otherwise), and QG_ERR_BACKEND if
 * llama.cpp's graph did not show every layer's choice.
 */
qg_status qg_llama_eval_logits_ex(qg_llama_oracle *o, const int32_t *tokens,
                                  int n, float *logits /* (n_vocab, n) */,
                                  int32_t *experts /* (K, n, n_layer) */,
                                  qg_error *err);

/*
 * Tokenize text[0..len) with llama.cpp's tokenizer.  add_special: add
 * BOS/EOS as the model's metadata asks; parse_special: recognize special
 * token text such as "<|im_start|>".  Writes up to `cap` ids to out and
 * the count to *n_out; QG_ERR_RANGE (with *n_out = the count needed) when
 * cap is too small.
 */
qg_status qg_llama_tokenize(qg_llama_oracle *o, const char *text, int len,
                            bool add_special, bool parse_special,
                            int32_t *out, int cap, int *n_out,
                            qg_error *err);

/* The bytes of one token (not NUL-terminated; special: render control
 * tokens' text too).  *n_out = byte count; QG_ERR_RANGE when cap is too
 * small or the id is out of range. */
qg_status qg_llama_token_to_piece(qg_llama_oracle *o, int32_t token,
                                  bool special, char *buf, int cap,
                                  int *n_out, qg_error *err);

/*
 * Greedy generation: clear the cache, decode the prompt, then repeatedly
 * take the argmax of the last logits (ties: lowest id) and feed it back,
 * up to n_gen tokens, stopping after an end-of-generation token when
 * stop_at_eog.  out: n_gen ids, *n_out = count generated.  n_prompt +
 * n_gen <= n_ctx.
 */
qg_status qg_llama_generate_greedy(qg_llama_oracle *o, const int32_t *prompt,
                                   int n_prompt, int n_gen, bool stop_at_eog,
                                   int32_t *out, int *n_out, qg_error *err);

/*
 * Timing for benchmarks, llama-bench style: clear the cache, fill it with
 * tokens[0..n_depth) (untimed), then time n tokens either as one prefill
 * (pp, logits of the last token only) or as n single-token decode steps
 * (tg).  *seconds receives the wall time of the timed part.
 */
qg_status qg_llama_time(qg_llama_oracle *o, const int32_t *tokens, int n_depth,
                        int n, bool pp, double *seconds, qg_error *err);

#endif
