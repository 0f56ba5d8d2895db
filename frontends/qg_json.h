/*
 * qg_json.h - a small, strict JSON parser producing a read-only DOM.
 *
 * Made for tokenizer.json (~11 MB, ~150k vocab entries, ~150k merges) and
 * tokenizer_config.json, but general: RFC 8259 JSON, nothing more.
 *
 *   qg_error err;
 *   qg_json_doc *d = qg_json_parse_file("tokenizer.json", &err);
 *   if (!d) { fprintf(stderr, "%s\n", err.msg); ... }
 *   const qg_json *vocab = qg_json_get(qg_json_get(qg_json_root(d), "model"),
 *                                      "vocab");
 *   for (uint32_t i = 0; vocab && i < vocab->n; i++)
 *       use(vocab->items[i].key, vocab->items[i].num);
 *   qg_json_free(d);
 *
 * Strictness: one value per document (leading UTF-8 BOM and surrounding
 * white space allowed), no comments, no trailing commas, no NaN/Infinity,
 * numbers per the JSON grammar, raw control characters in strings rejected,
 * raw bytes must be valid UTF-8 (no overlongs, no surrogates), \u escapes
 * decoded to UTF-8 with surrogate pairs joined (a lone surrogate is an
 * error), nesting deeper than `max_depth` rejected.  Duplicate object keys
 * are kept; qg_json_get returns the LAST one (as JavaScript and Python do).
 *
 * Errors are one line naming the label and the byte offset, e.g.
 *   "tokenizer.json: byte 1234: expected ',' or '}' after object member".
 *
 * Memory: every node and string lives in the document's arena; the DOM is
 * valid until qg_json_free.  Strings are NUL-terminated for convenience but
 * may contain NUL bytes (from \u0000): use `n` for their length.
 */
#ifndef QG_JSON_H
#define QG_JSON_H

#include "../graph/qg_base.h"

#include <stddef.h>
#include <stdint.h>

typedef enum qg_json_type {
    QG_JSON_NULL = 0,
    QG_JSON_BOOL = 1,
    QG_JSON_NUMBER = 2,
    QG_JSON_STRING = 3,
    QG_JSON_ARRAY = 4,
    QG_JSON_OBJECT = 5,
} qg_json_type;

/* One value.  For members of an object, key/key_len name the member. */
typedef struct qg_json qg_json;
struct qg_json {
    qg_json_type type;
    uint32_t n;           /* STRING: bytes; ARRAY/OBJECT: children; else 0 */
    const char *key;      /* member of an object: its key (NUL-terminated) */
    uint32_t key_len;     /* bytes of key (it may contain NUL) */
    bool b;               /* BOOL */
    double num;           /* NUMBER (as strtod reads it, C locale) */
    const char *str;      /* STRING: UTF-8, NUL-terminated, n bytes */
    const qg_json *items; /* ARRAY / OBJECT: n children, in document order */
};

typedef struct qg_json_doc qg_json_doc;

#define QG_JSON_DEFAULT_MAX_DEPTH 512

/* Parse `len` bytes of `text` (need not be NUL-terminated; not kept).
 * `label` names the input in error messages (e.g. a file name).
 * max_depth: nesting limit for arrays/objects (0: the default above).
 * Returns NULL on error with err->code QG_ERR_FORMAT (bad JSON) or
 * QG_ERR_NOMEM. */
qg_json_doc *qg_json_parse(const char *text, size_t len, const char *label,
                           int max_depth, qg_error *err);

/* Read and parse a whole file.  QG_ERR_IO if it cannot be read. */
qg_json_doc *qg_json_parse_file(const char *path, qg_error *err);

/* Free a document and every node and string in it.  NULL is a no-op. */
void qg_json_free(qg_json_doc *d);

const qg_json *qg_json_root(const qg_json_doc *d);

/* Member `key` of an object (the last one if duplicated); NULL if `obj` is
 * NULL, not an object, or has no such member. */
const qg_json *qg_json_get(const qg_json *obj, const char *key);

/* Element i of an array; NULL if `arr` is NULL, not an array or i >= n. */
const qg_json *qg_json_at(const qg_json *arr, size_t i);

/* Typed conveniences: the string of a STRING node (else NULL); whether a
 * NUMBER node holds an integer in [lo, hi] (stored in *out). */
const char *qg_json_str(const qg_json *v);
bool qg_json_int(const qg_json *v, int64_t lo, int64_t hi, int64_t *out);

const char *qg_json_type_name(qg_json_type t);

#endif
