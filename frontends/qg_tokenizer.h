/*
 * qg_tokenizer.h - the Qwen2/Qwen3 byte-level BPE tokenizer, built from
 * GGUF metadata, producing exactly the token ids llama.cpp produces.
 *
 * What is read (keys of the GGUF):
 *   tokenizer.ggml.model        string, must be "gpt2" (byte-level BPE)
 *   tokenizer.ggml.pre          string: "qwen2" (also llama.cpp's aliases
 *                               "deepseek-r1-qwen", "kormo", "f2llmv2",
 *                               "megrez") or "qwen35"; anything else is
 *                               QG_ERR_UNSUPPORTED ("qwen3" is not a name
 *                               llama.cpp knows either: Qwen3 GGUFs say
 *                               "qwen2")
 *   tokenizer.ggml.tokens       string array: the vocabulary
 *   tokenizer.ggml.token_type   int32 array (optional): 1 normal,
 *                               2 unknown, 3 control, 4 user-defined,
 *                               5 unused, 6 byte, other undefined
 *   tokenizer.ggml.merges       string array "left right", rank = index
 *   tokenizer.ggml.{bos,eos,eot,eom,padding,fim_pad,fim_rep,fim_sep}
 *                  _token_id    optional; llama.cpp's defaults otherwise
 *   tokenizer.ggml.add_bos_token / add_eos_token   optional bools
 * Every failure is one line naming the key and the value, e.g.
 *   "tokenizer.ggml.merges[17]: 'Ġ th': token 'th' is not in the vocabulary".
 *
 * Encoding, step by step, as llama.cpp does it:
 *   1. Special tokens.  Every control (3), user-defined (4) and unknown (2)
 *      token is cut out of the raw text, longest token text first over the
 *      whole text (not leftmost-longest), each token's occurrences left to
 *      right.  With parse_special false only user-defined tokens are cut
 *      (Qwen3's <think>, <tool_call>, ... are user-defined).  Ties in
 *      length go to the lower id (llama.cpp's order among equal lengths is
 *      unspecified; for Qwen vocabularies no two equal-length special
 *      tokens can overlap, so the order does not matter there).  No
 *      white space is stripped around them: llama.cpp sets lstrip/rstrip
 *      only by model name (phi-3, jina, modern-bert), never for Qwen.
 *   2. Each remaining piece of text is decoded as llama.cpp decodes UTF-8
 *      (qg_utf8.h: invalid bytes become U+FFFD, overlong and surrogate
 *      forms are accepted and re-encoded canonically).
 *   3. Pre-tokenization with the Qwen2 regex (PCRE2, UTF + UCP, JIT):
 *        (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])
 *        |[^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} | ?[^\s\p{L}\p{N}]+[\r\n]*
 *        |\s*[\r\n]+ | \s+(?!\S) | \s+
 *      with the character classes pinned to llama.cpp's tables: \s is
 *      exactly Unicode White_Space (PCRE2's \s also matches U+180E), and
 *      \p{L} / \p{N} (\p{M} for qwen35) include the Unicode 15.0/15.1
 *      additions that llama.cpp's tables (Unicode 15.1) have and PCRE2
 *      10.42 (Unicode 14) lacks.  tests/test_tokenizer.c checks every
 *      code point against llama.cpp.  (A PCRE2 built on Unicode 16 or
 *      later would see a few newer letters that llama.cpp does not; that
 *      test would then name them.)  "qwen35" lets letter runs also take
 *      combining marks ([\p{L}\p{M}]+).
 *   4. Byte-level BPE per word: the word's bytes start as single-byte
 *      tokens (GPT-2's bytes_to_unicode alphabet), and the adjacent pair
 *      with the lowest merge rank is merged, ties to the leftmost, until
 *      no pair has a rank.  A merge whose parts or result are not in the
 *      vocabulary is rejected at load time (as Hugging Face does).
 *   No BOS/EOS is added (Qwen3 sets add_bos_token false);
 *   qg_tokenizer_add_bos() reports what the file asks for.
 *   No Unicode normalization is applied (llama.cpp applies none; Hugging
 *   Face's Qwen tokenizer applies NFC, so the two can differ on
 *   non-NFC text, and llama.cpp is the reference here).
 *
 * Thread safety: a tokenizer is immutable after loading except for the
 * PCRE2 match data it keeps, so qg_tokenizer_encode must not run on the
 * same tokenizer from two threads at once; everything else may.
 *
 * Built without PCRE2 (QG_HAVE_PCRE2 undefined), qg_tokenizer_from_gguf
 * fails with QG_ERR_UNSUPPORTED "built without PCRE2".
 */
#ifndef QG_TOKENIZER_H
#define QG_TOKENIZER_H

#include "../graph/qg_base.h"
#include "qg_gguf.h"
#include "qg_utf8.h"

typedef struct qg_tokenizer qg_tokenizer;

/* Token attributes (bit set), llama.cpp's llama_token_attr values. */
typedef enum qg_token_attr {
    QG_TOKEN_ATTR_UNDEFINED = 0,
    QG_TOKEN_ATTR_UNKNOWN = 1 << 0,
    QG_TOKEN_ATTR_UNUSED = 1 << 1,
    QG_TOKEN_ATTR_NORMAL = 1 << 2,
    QG_TOKEN_ATTR_CONTROL = 1 << 3,
    QG_TOKEN_ATTR_USER_DEFINED = 1 << 4,
    QG_TOKEN_ATTR_BYTE = 1 << 5,
} qg_token_attr;

/* Build the tokenizer from g's metadata (g may be closed afterwards:
 * everything needed is copied).  NULL on error (err says why). */
qg_tokenizer *qg_tokenizer_from_gguf(const qg_gguf *g, qg_error *err);
void qg_tokenizer_free(qg_tokenizer *t);

/* Number of tokens (rows of the embedding / logits). */
int32_t qg_tokenizer_n_vocab(const qg_tokenizer *t);

/*
 * Tokenize text[0..len) (any bytes; see the top of this file).
 * parse_special: recognize control tokens such as "<|im_start|>" in the
 * text (user-defined tokens are recognized either way, as in llama.cpp).
 * Writes min(count, cap) ids to out (which may be NULL when cap is 0)
 * and returns count; a return > cap means out is truncated and the call
 * should be repeated with cap >= the returned count.  Returns -(int)status on error (err, may be NULL,
 * says why): QG_ERR_ARG (len > INT32_MAX / 3), QG_ERR_NOMEM, QG_ERR_BACKEND
 * (a PCRE2 matching failure).
 */
int qg_tokenizer_encode(const qg_tokenizer *t, const char *text, size_t len,
                        bool parse_special, int32_t *out, int cap,
                        qg_error *err);

/*
 * The bytes token `id` stands for, as llama_token_to_piece renders it
 * (lstrip 0): normal tokens decoded from GPT-2's byte alphabet to raw
 * bytes; user-defined tokens their text; control and unknown tokens their
 * text when `special`, else nothing; unused/undefined tokens nothing.
 * Returns a pointer to *len bytes (not NUL-terminated) owned by the
 * tokenizer, or NULL if id is out of range.
 */
const char *qg_tokenizer_piece(const qg_tokenizer *t, int32_t id,
                               bool special, size_t *len);
/* Longest piece of any token, in bytes. */
size_t qg_tokenizer_max_piece(const qg_tokenizer *t);

/* The token's text as stored in the GGUF (normal tokens in GPT-2's byte
 * alphabet, e.g. "Ġthe").  NULL if id is out of range. */
const char *qg_tokenizer_text(const qg_tokenizer *t, int32_t id,
                              size_t *len);
/* Id of the token whose stored text is text[0..len), or -1. */
int32_t qg_tokenizer_find(const qg_tokenizer *t, const char *text,
                          size_t len);
/* Attributes (qg_token_attr bits); 0 for an out-of-range id. */
uint32_t qg_tokenizer_attr(const qg_tokenizer *t, int32_t id);

/* End of generation: eos, eot, eom, and llama.cpp's list by text
 * (<|im_end|>, <|endoftext|>, <|fim_pad|>, <|repo_name|>, <|file_sep|>
 * ... for Qwen).  False for an out-of-range id. */
bool qg_tokenizer_is_eog(const qg_tokenizer *t, int32_t id);

/* Special ids (-1 when there is none) and the add_bos/add_eos flags.
 * bos/eos/pad come from the GGUF keys (bos and eos default to 11, as in
 * llama.cpp); eot from its key, else the first of llama.cpp's EOT texts
 * present in the vocabulary (<|im_end|> for Qwen). */
int32_t qg_tokenizer_bos(const qg_tokenizer *t);
int32_t qg_tokenizer_eos(const qg_tokenizer *t);
int32_t qg_tokenizer_eot(const qg_tokenizer *t);
int32_t qg_tokenizer_pad(const qg_tokenizer *t);
bool qg_tokenizer_add_bos(const qg_tokenizer *t);
bool qg_tokenizer_add_eos(const qg_tokenizer *t);

/*
 * Streaming detokenizer: token pieces are concatenated and only whole
 * UTF-8 characters come out, so a character split over two tokens is
 * emitted once both have arrived.  Bytes that cannot become valid UTF-8
 * are replaced by U+FFFD (one per maximal invalid subpart), and
 * qg_detok_stream_flush turns an incomplete tail into one U+FFFD: the
 * output is always valid UTF-8 and, for tokens of valid UTF-8 text,
 * exactly that text.
 *
 *   qg_detok_stream ds;
 *   if (qg_detok_stream_init(&ds, tok, false, &err)) ...;
 *   for each id: qg_detok_stream_push(&ds, id, &p, &n, &err); write(p, n);
 *   qg_detok_stream_flush(&ds, &p, &n); write(p, n);
 *   qg_detok_stream_free(&ds);
 */
typedef struct qg_detok_stream {
    const qg_tokenizer *tok;
    bool special; /* render control tokens' text */
    qg_utf8_stream utf8;
    uint8_t *buf; /* (cap) output of the last push / flush */
    size_t cap;
} qg_detok_stream;

qg_status qg_detok_stream_init(qg_detok_stream *s, const qg_tokenizer *tok,
                               bool special, qg_error *err);
void qg_detok_stream_free(qg_detok_stream *s);
/* Append token id.  *out / *n: the bytes now complete (valid until the
 * next call).  QG_ERR_RANGE for an out-of-range id (nothing changes). */
qg_status qg_detok_stream_push(qg_detok_stream *s, int32_t id,
                               const char **out, size_t *n, qg_error *err);
/* End of the sequence: emits the pending tail (as U+FFFD) and resets. */
void qg_detok_stream_flush(qg_detok_stream *s, const char **out, size_t *n);

#endif
