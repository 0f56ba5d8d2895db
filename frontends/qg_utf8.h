/*
 * qg_utf8.h - UTF-8 decoding, validation and a streaming assembler.
 *
 * Three views of UTF-8 are needed by the tokenizer and the CLI:
 *
 *   1. Strict UTF-8 (RFC 3629 / Unicode Table 3-7): no overlong forms, no
 *      surrogates (U+D800..U+DFFF), nothing above U+10FFFF.  Used to decide
 *      what may be printed and what PCRE2 may see.
 *
 *   2. llama.cpp's lenient decoder, which the tokenizer must reproduce
 *      byte for byte: a lead byte 0xC0..0xF7 followed by enough
 *      continuation bytes is accepted whatever the value (overlongs and
 *      surrogates included); every other byte (a stray continuation byte,
 *      0xF8..0xFF, a truncated sequence) becomes U+FFFD and decoding
 *      resumes at the NEXT byte.  One exception, where llama.cpp throws an
 *      exception that escapes llama_tokenize and kills the process: a
 *      4-byte form whose value is above U+10FFFF.  qg_utf8_decode_lax
 *      treats its lead byte as invalid (U+FFFD, advance one byte), so such
 *      input tokenizes as U+FFFD per byte instead of crashing.
 *
 *   3. A streaming assembler for detokenization: bytes arrive in pieces
 *      (a token may end in the middle of a character), and only whole,
 *      strictly valid sequences are emitted.  A byte sequence that can no
 *      longer become valid is replaced by one U+FFFD per maximal invalid
 *      subpart (the Unicode "best practice" of section 3.9, also what
 *      WHATWG decoders do), so the output is always strict UTF-8.  At the
 *      end, an incomplete tail is flushed as one U+FFFD.
 */
#ifndef QG_UTF8_H
#define QG_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QG_UTF8_REPLACEMENT 0xFFFDu

/*
 * Classify the start of s[0..n) (n >= 1) under strict UTF-8:
 *   > 0   a complete valid sequence of that many bytes;
 *   == 0  a valid but incomplete prefix (n is too short; more bytes could
 *         complete it);
 *   < 0   invalid: -k where k >= 1 is the length of the maximal invalid
 *         subpart (the bytes one U+FFFD replaces).
 */
int qg_utf8_check(const uint8_t *s, size_t n);

/* Length of the longest strictly valid prefix of s[0..n). */
size_t qg_utf8_valid_len(const uint8_t *s, size_t n);

/* Whether all of s[0..n) is strict UTF-8. */
static inline bool qg_utf8_valid(const uint8_t *s, size_t n) {
    return qg_utf8_valid_len(s, n) == n;
}

/* Decode one code point from s[0..n) (n >= 1) as llama.cpp does (see the
 * top of this file).  *cp receives the value (U+FFFD for an invalid
 * byte); returns the bytes consumed (1..4). */
size_t qg_utf8_decode_lax(const uint8_t *s, size_t n, uint32_t *cp);

/* Decode one code point from a strictly valid sequence (as checked by
 * qg_utf8_check); returns its length. */
size_t qg_utf8_decode(const uint8_t *s, uint32_t *cp);

/* Encode cp (< 0x110000; surrogates are encoded as 3 bytes like any other
 * value, which llama.cpp also does) into out; returns 1..4. */
int qg_utf8_encode(uint32_t cp, uint8_t out[4]);

/*
 * Streaming assembler.  Zero-initialize (or qg_utf8_stream_reset), then
 * feed bytes; each call writes to `out` only whole valid sequences and
 * U+FFFD replacements, keeping an incomplete tail (at most 3 bytes) for
 * the next call.  `out` must have room for 3 * (n + 3) bytes.  Returns
 * the bytes written.
 */
typedef struct qg_utf8_stream {
    uint8_t pend[4]; /* incomplete prefix of one sequence */
    uint8_t n_pend;  /* 0..3 */
} qg_utf8_stream;

#define QG_UTF8_STREAM_OUT_CAP(n) (3 * ((size_t)(n) + 3))

static inline void qg_utf8_stream_reset(qg_utf8_stream *st) {
    st->n_pend = 0;
}
size_t qg_utf8_stream_feed(qg_utf8_stream *st, const uint8_t *in, size_t n,
                           uint8_t *out);
/* End of input: an incomplete tail becomes one U+FFFD (3 bytes written;
 * out needs 3 bytes), nothing pending writes nothing.  Returns bytes
 * written; the stream is reset. */
size_t qg_utf8_stream_flush(qg_utf8_stream *st, uint8_t *out);

#endif
