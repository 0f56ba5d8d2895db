/*
 * qg_ref_model.h - the float64 reference forward pass of Qwen3 / Qwen3-MoE.
 *
 * This is the truth every executor is measured against.  It is written
 * independently of frontends/qg_model.[ch] and of the graph: it reads the
 * hyperparameters from the GGUF metadata itself, dequantizes each weight
 * row with qg_dequant_row_f64 when it needs it, and computes everything
 * (activations, KV, softmax, router) in double.  It is slow by design and
 * simple enough to check against the paper line by line.
 *
 * Architectures (general.architecture): "qwen3moe" and "qwen3".
 *
 *   x = tok_embd[token]                                          (E)
 *   per layer:
 *     h  = rmsnorm(x) * attn_norm
 *     q  = Wq h, k = Wk h, v = Wv h                  (hd, n_head / n_head_kv)
 *     q, k: per-head rmsnorm * attn_q_norm / attn_k_norm (same eps)
 *     q, k: NEOX RoPE, pairs (i, i + hd/2),
 *           angle = pos * base^(-2i/hd), i in [0, hd/2)
 *     a  = causal softmax(q k^T / sqrt(hd)) v, q head j reads kv head
 *          j / (n_head / n_head_kv)
 *     x += Wo a
 *     h  = rmsnorm(x) * ffn_norm
 *     qwen3moe: p = softmax(gate_inp h) over all experts; the top-K by p
 *               (ties: lower expert id) with weights renormalized to sum 1;
 *               y = sum_k w_k down_k(silu(gate_k h) * up_k h)
 *     qwen3:    y = down(silu(gate h) * up h)
 *     x += y
 *   logits = output (rmsnorm(x) * output_norm)   (output tied to tok_embd
 *                                                  when output.weight absent)
 *
 * rmsnorm(x) = x / sqrt(mean(x^2) + eps), eps from
 * <arch>.attention.layer_norm_rms_epsilon.  Positions are 0..n-1.
 *
 * Memory: weights stay in the mapped file; one dequantized row at a time is
 * held, so any model size works (only slowly).  Activations for all n tokens
 * of one layer are kept: about n * (4 E + 3 n_head hd) doubles.
 */
#ifndef QG_REF_MODEL_H
#define QG_REF_MODEL_H

#include "frontends/qg_gguf.h"
#include "graph/qg_base.h"

#include <stdint.h>

typedef struct qg_ref_hparams {
    char arch[16];         /* "qwen3moe" or "qwen3" */
    bool moe;              /* arch == qwen3moe */
    int n_layer;           /* block_count */
    int n_embd;            /* embedding_length */
    int n_head, n_head_kv; /* attention.head_count(_kv) */
    int head_dim;          /* attention.key_length (== value_length) */
    int n_vocab;           /* token_embd.weight ne[1] */
    int n_ff;              /* dense: ffn width; moe: expert ffn width */
    int n_expert;          /* moe only, else 0 */
    int n_expert_used;     /* moe only, else 0 */
    double rms_eps;        /* attention.layer_norm_rms_epsilon, as stored */
    double rope_base;      /* rope.freq_base (10000 when absent) */
    bool tied_output;      /* no output.weight: lm head is token_embd */
} qg_ref_hparams;

typedef struct qg_ref_model qg_ref_model;

/* Open `path` and check every tensor the forward pass reads: presence,
 * shape against the hyperparameters and a dtype qg_dequant_row_f64 handles.
 * NULL on error (err names the file and the key or tensor). */
qg_ref_model *qg_ref_model_load(const char *path, qg_error *err);
void qg_ref_model_free(qg_ref_model *m);

const qg_ref_hparams *qg_ref_model_hparams(const qg_ref_model *m);
/* The open file (owned by the model), e.g. to read the vocabulary. */
const qg_gguf *qg_ref_model_gguf(const qg_ref_model *m);

/*
 * Everything an evaluation can report; any pointer may be NULL.  Shapes
 * innermost first; n is the number of tokens; K = n_expert_used.
 */
typedef struct qg_ref_eval_out {
    double *logits;        /* (n_vocab, n) */
    double *hidden;        /* (n_embd, n, n_layer + 1): slice l is the input
                              of layer l; slice n_layer the final residual
                              (before output_norm) */
    int32_t *experts;      /* (K, n, n_layer), moe: chosen expert ids in
                              order of decreasing probability */
    double *expert_w;      /* (K, n, n_layer), moe: renormalized weights */
    double *route_margin;  /* (n): min over layers of the router-logit
                              gap between the last chosen and the best
                              unchosen expert (how close the choice was to
                              flipping; a rounding error this large in the
                              router logits may pick another expert);
                              dense or K == n_expert: +INFINITY */
} qg_ref_eval_out;

/*
 * Teacher-forced forward pass over tokens[0..n) at positions 0..n-1 from an
 * empty cache: fills every non-NULL field of *out for all positions.
 * QG_ERR_RANGE for a token id outside [0, n_vocab); QG_ERR_ARG for n < 1;
 * QG_ERR_NOMEM when the activations do not fit.  Outputs are only
 * partly written on error.
 */
qg_status qg_ref_model_eval_ex(qg_ref_model *m, const int32_t *tokens, int n,
                               const qg_ref_eval_out *out, qg_error *err);

/* Shorthand: logits only.  logits: (n_vocab, n). */
qg_status qg_ref_model_eval(qg_ref_model *m, const int32_t *tokens, int n,
                            double *logits /* (n_vocab, n) */,
                            qg_error *err);

#endif
