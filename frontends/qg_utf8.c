/* qg_utf8.c - strict and llama.cpp-lenient UTF-8, streaming assembler. */
#include "qg_utf8.h"

#include <string.h>

int qg_utf8_check(const uint8_t *s, size_t n) {
    uint8_t b0 = s[0];
    if (b0 < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b0 < 0xC2) return -1;     /* continuation byte, or overlong C0/C1 */
    if (b0 < 0xE0) {
        need = 2;
    } else if (b0 < 0xF0) {
        need = 3;
        if (b0 == 0xE0) lo = 0xA0;      /* no overlongs */
        else if (b0 == 0xED) hi = 0x9F; /* no surrogates */
    } else if (b0 < 0xF5) {
        need = 4;
        if (b0 == 0xF0) lo = 0x90;      /* no overlongs */
        else if (b0 == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) return 0;
        uint8_t c = s[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (c < l || c > h) return -i;
    }
    return need;
}

size_t qg_utf8_valid_len(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int r = qg_utf8_check(s + i, n - i);
        if (r <= 0) break;
        i += (size_t)r;
    }
    return i;
}

size_t qg_utf8_decode_lax(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    size_t need;
    uint32_t v;
    if ((b0 & 0x40) == 0) goto invalid; /* 0x80..0xBF */
    if ((b0 & 0x20) == 0) {
        need = 2;
        v = b0 & 0x1Fu;
    } else if ((b0 & 0x10) == 0) {
        need = 3;
        v = b0 & 0x0Fu;
    } else if ((b0 & 0x08) == 0) {
        need = 4;
        v = b0 & 0x07u;
    } else {
        goto invalid; /* 0xF8..0xFF */
    }
    if (n < need) goto invalid;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) goto invalid;
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    if (v > 0x10FFFF) goto invalid; /* llama.cpp would throw here */
    *cp = v;
    return need;
invalid:
    *cp = QG_UTF8_REPLACEMENT;
    return 1;
}

size_t qg_utf8_decode(const uint8_t *s, uint32_t *cp) {
    uint8_t b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    if (b0 < 0xE0) {
        *cp = ((b0 & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        return 2;
    }
    if (b0 < 0xF0) {
        *cp = ((b0 & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        return 3;
    }
    *cp = ((b0 & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) |
          ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    return 4;
}

int qg_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static size_t put_replacement(uint8_t *out) {
    out[0] = 0xEF;
    out[1] = 0xBF;
    out[2] = 0xBD;
    return 3;
}

/* Push one byte into the pending prefix and emit whatever became final.
 * Invariant on entry and exit: pend[0..n_pend) is a valid incomplete
 * prefix (qg_utf8_check == 0) or empty. */
static size_t stream_push(qg_utf8_stream *st, uint8_t b, uint8_t *out) {
    size_t w = 0;
    st->pend[st->n_pend++] = b;
    for (;;) {
        int r = qg_utf8_check(st->pend, st->n_pend);
        if (r == 0) return w;
        if (r > 0) {
            memcpy(out + w, st->pend, (size_t)r);
            w += (size_t)r;
            st->n_pend = 0;
            return w;
        }
        /* The first k bytes are one maximal invalid subpart; what follows
         * (at most the byte just pushed) is examined again on its own. */
        size_t k = (size_t)-r;
        w += put_replacement(out + w);
        memmove(st->pend, st->pend + k, st->n_pend - k);
        st->n_pend = (uint8_t)(st->n_pend - k);
        if (st->n_pend == 0) return w;
    }
}

size_t qg_utf8_stream_feed(qg_utf8_stream *st, const uint8_t *in, size_t n,
                           uint8_t *out) {
    size_t w = 0;
    size_t i = 0;
    while (i < n) {
        /* Fast path: nothing pending and a run of valid input. */
        if (st->n_pend == 0) {
            size_t v = qg_utf8_valid_len(in + i, n - i);
            memcpy(out + w, in + i, v);
            w += v;
            i += v;
            if (i == n) break;
        }
        w += stream_push(st, in[i], out + w);
        i++;
    }
    return w;
}

size_t qg_utf8_stream_flush(qg_utf8_stream *st, uint8_t *out) {
    if (st->n_pend == 0) return 0;
    st->n_pend = 0;
    return put_replacement(out);
}
