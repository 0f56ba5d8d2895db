/*
 * qg_sampler.h - turn one row of logits into the next token id.
 *
 * The chain is llama.cpp's default one (common/common.h `samplers`, with
 * the stages we do not implement left out), applied in this order:
 *
 *   1. penalties    for every distinct token t among the last
 *                   penalty_last_n accepted tokens, with c = its count there:
 *                     logit[t] = logit[t] <= 0 ? logit[t] * penalty_repeat
 *                                               : logit[t] / penalty_repeat
 *                     logit[t] -= c * penalty_freq + penalty_present
 *   2. top-k        keep the k highest logits (k <= 0 or k >= n: off)
 *   3. top-p        softmax over what is left; keep the shortest prefix of
 *                   the candidates sorted by probability (descending) whose
 *                   cumulative probability is >= top_p (top_p >= 1: off)
 *   4. min-p        keep tokens with p >= min_p * p_max, computed on the
 *                   logits as logit >= max_logit + logf(min_p)
 *                   (min_p <= 0: off)
 *   5. temperature  logit /= temp
 *   6. sample       draw from softmax(logits) over what is left.
 *
 * Note that truncation (2-4) sees the logits before temperature, as in
 * llama.cpp: temperature only reshapes the distribution over the survivors.
 *
 * temp <= 0 is greedy: the token with the highest penalized logit (every
 * truncation stage keeps that token, so the stages are skipped).
 *
 * Ties: wherever an order is needed, candidates are ordered by logit
 * descending, then by token id ascending (so greedy ties go to the lowest
 * id, and a top-k boundary tie keeps the lower ids).  llama.cpp leaves the
 * order among equal logits unspecified.
 *
 * Not implemented (llama.cpp defaults leave them off): DRY, top-n-sigma,
 * typical-p, XTC, dynamic temperature, mirostat, logit bias, grammars,
 * min_keep (llama.cpp's default 0).
 *
 * Randomness: each sampler owns a xoshiro256** state seeded from `seed`
 * through splitmix64.  There is no global state; the same seed, logits and
 * accepted tokens give the same tokens on every platform.
 *
 * Logits: finite, or -INFINITY to ban a token.  NaN or +INFINITY is a bug
 * upstream (QG_ASSERT); at least one logit must be finite.
 *
 * Memory: qg_sampler_new allocates everything (candidates of n_vocab
 * entries, per-token counts, the history ring); sampling allocates nothing.
 * A sampler is not thread safe; use one per sequence.
 *
 * Cost for n_vocab = 151936 (no full sort anywhere): top-k <= 256 is one
 * pass over the logits into a bounded heap; larger top-k and top-p over
 * the whole vocabulary histogram the distance below the maximum logit
 * (counts, or probability mass), keep the buckets before the crossing one
 * and select inside that bucket only.  Measured on one Xeon core (-O2):
 * greedy and the default chain ~0.23 ms, top-p 0.95 alone ~1.9 ms (expf
 * over every token dominates), no truncation ~1.3 ms.
 */
#ifndef QG_SAMPLER_H
#define QG_SAMPLER_H

#include "../graph/qg_base.h"

typedef struct qg_sampler qg_sampler;

typedef struct qg_sampler_params {
    uint64_t seed;          /* RNG seed (any value)                        */
    float temp;             /* <= 0: greedy                                */
    int32_t top_k;          /* <= 0: off                                   */
    float top_p;            /* >= 1: off; must be > 0                      */
    float min_p;            /* <= 0: off; must be <= 1                     */
    int32_t penalty_last_n; /* tokens of history penalized; 0: off; >= 0   */
    float penalty_repeat;   /* 1: off; must be > 0                         */
    float penalty_freq;     /* 0: off                                      */
    float penalty_present;  /* 0: off                                      */
} qg_sampler_params;

/* One surviving candidate of the last draw (see qg_sampler_candidates). */
typedef struct qg_sampler_cand {
    int32_t id;    /* token id                                      */
    float logit;   /* final logit: penalized, divided by temp       */
    float p;       /* probability within the surviving set          */
} qg_sampler_cand;

/* llama.cpp's common defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * penalty_last_n 64, penalty_repeat 1 (off), freq 0, present 0, seed 0. */
qg_sampler_params qg_sampler_default_params(void);

/* A new sampler for a vocabulary of n_vocab tokens, with an empty history.
 * Returns NULL and fills *err (QG_ERR_ARG naming the field and value) when
 * a parameter is out of range or NaN, or QG_ERR_NOMEM. */
qg_sampler *qg_sampler_new(const qg_sampler_params *p, int32_t n_vocab,
                           qg_error *err);

/* Frees s (NULL is fine). */
void qg_sampler_free(qg_sampler *s);

/* The next token for logits (n_vocab floats).  Does not change the history:
 * call qg_sampler_accept with the token actually used.  Advances the RNG by
 * one draw when temp > 0 (also when a single candidate survives), not at all
 * when greedy. */
int32_t qg_sampler_sample(qg_sampler *s, const float *logits /* (n_vocab) */);

/* Append tok (0 <= tok < n_vocab) to the history used by the penalties.
 * Feed it the prompt tokens too if they should be penalized (llama.cpp's
 * CLI does). */
void qg_sampler_accept(qg_sampler *s, int32_t tok);

/* Clear the history and reseed the RNG from the original seed. */
void qg_sampler_reset(qg_sampler *s);

/* The candidates that survived truncation in the last qg_sampler_sample,
 * in no particular order, with their final logits and probabilities (which
 * sum to 1).  After a greedy draw: the chosen token alone, p = 1.  Valid
 * until the next call on s.  Returns the count (0 before any draw). */
int32_t qg_sampler_candidates(const qg_sampler *s,
                              const qg_sampler_cand **cands);

#endif
