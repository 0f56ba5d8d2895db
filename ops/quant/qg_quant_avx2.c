/*
 * qg_quant_avx2.c - AVX2 + FMA + F16C dot and gemm.
 *
 * Same numerics as the AVX-512 file: each weight is decoded to exactly
 * qg_dequant_row's (GGML's) f32 value with the same mul / sub sequence,
 * multiplied by the f32 activation, and accumulated in f32 with four
 * independent accumulators.  AVX2 has no 16-entry permute, so codes are
 * converted int -> float and scaled (d1*q - m1, as GGML).
 *
 * The gemm dequantizes up to QG_QUANT_GEMM_ROWS rows into the caller's
 * scratch and runs a 4 rows x 3 columns micro-kernel (12 accumulators, 16
 * ymm registers in all); for 1-2 columns it calls the dot.
 */
#include "qg_quant_blocks.h"

#include "../../graph/qg_base.h"

#include <immintrin.h>

#define GEMM_MIN_COLS 3

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* 8 bytes at p widened to 8 int32. */
static inline __m256i load_u8x8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

static inline __m256i load_i8x8(const int8_t *p) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

/* d*q - m for 8 integer codes q (mul, then sub: GGML's rounding). */
static inline __m256 affine(__m256i q, __m256 d, __m256 m) {
    return _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(q)), m);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- decoders ------------------------------------------------------------ */

/* q8_0 block -> w[0..3] = elements 8k..8k+7. */
static inline void decode_q8_0(const qg_block_q8_0 *b, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(h2f(b->d));
    for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(load_i8x8(b->qs + 8 * k)), d);
}

/* q4_0 block -> w[0..3] = elements 8k..8k+7 ((k-8)*d as the scalar code). */
static inline void decode_q4_0(const qg_block_q4_0 *b, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(h2f(b->d));
    const __m256i k8 = _mm256_set1_epi32(8), k15 = _mm256_set1_epi32(15);
    for (int g = 0; g < 2; g++) {
        const __m256i q = load_u8x8(b->qs + 8 * g);
        w[g] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(q, k15), k8)), d);
        w[g + 2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(q, 4), k8)), d);
    }
}

/* Sub-block scales d*sc_j and mins dmin*m_j of a q4_K / q5_K block. */
static inline void k4_scales(const uint8_t *scales, float d, float dmin, float ds[8], float ms[8]) {
    uint8_t sc[8], m[8];
    qg_quant_unpack_k4(scales, sc, m);
    _mm256_storeu_ps(ds, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(load_u8x8(sc))));
    _mm256_storeu_ps(ms, _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(load_u8x8(m))));
}

/* q4_K elements 64c..64c+63 -> w[0..7] (8 each, in order). */
static inline void decode_q4_K(const qg_block_q4_K *b, const float *ds, const float *ms, int c,
                               __m256 w[8]) {
    const __m256 d1 = _mm256_set1_ps(ds[2 * c]), m1 = _mm256_set1_ps(ms[2 * c]);
    const __m256 d2 = _mm256_set1_ps(ds[2 * c + 1]), m2 = _mm256_set1_ps(ms[2 * c + 1]);
    const __m256i k15 = _mm256_set1_epi32(15);
    for (int g = 0; g < 4; g++) {
        const __m256i q = load_u8x8(b->qs + 32 * c + 8 * g);
        w[g] = affine(_mm256_and_si256(q, k15), d1, m1);
        w[g + 4] = affine(_mm256_srli_epi32(q, 4), d2, m2);
    }
}

/* q5_K elements 64c..64c+63 -> w[0..7]; code = nibble + 16 * qh bit. */
static inline void decode_q5_K(const qg_block_q5_K *b, const float *ds, const float *ms, int c,
                               __m256 w[8]) {
    const __m256 d1 = _mm256_set1_ps(ds[2 * c]), m1 = _mm256_set1_ps(ms[2 * c]);
    const __m256 d2 = _mm256_set1_ps(ds[2 * c + 1]), m2 = _mm256_set1_ps(ms[2 * c + 1]);
    const __m256i k15 = _mm256_set1_epi32(15), k16 = _mm256_set1_epi32(16);
    const __m128i shift = _mm_cvtsi32_si128(2 * c);
    for (int g = 0; g < 4; g++) {
        const __m256i q = load_u8x8(b->qs + 32 * c + 8 * g);
        /* bit 2c of qh at bit 4, bit 2c+1 at bit 5 */
        const __m256i h = _mm256_srl_epi32(_mm256_slli_epi32(load_u8x8(b->qh + 8 * g), 4), shift);
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, k15), _mm256_and_si256(h, k16));
        const __m256i hi = _mm256_or_si256(_mm256_srli_epi32(q, 4), _mm256_and_si256(_mm256_srli_epi32(h, 1), k16));
        w[g] = affine(lo, d1, m1);
        w[g + 4] = affine(hi, d2, m2);
    }
}

/*
 * q6_K half h, l = 8g..8g+7 (g = 0..3) -> w[k] = elements 128h + 32k + 8g +
 * (0..7), k = 0..3; value (d*sc)*(q-32) as GGML.
 */
static inline void decode_q6_K(const qg_block_q6_K *b, float d, int h, int g, __m256 w[4]) {
    const uint8_t *ql = b->ql + 64 * h + 8 * g;
    const uint8_t *qh = b->qh + 32 * h + 8 * g;
    const int8_t *sc = b->scales + 8 * h + g / 2;
    const __m256i a = load_u8x8(ql), c = load_u8x8(ql + 32), hh = load_u8x8(qh);
    const __m256i k15 = _mm256_set1_epi32(15), k48 = _mm256_set1_epi32(48), k32 = _mm256_set1_epi32(32);
    __m256i q[4];
    q[0] = _mm256_or_si256(_mm256_and_si256(a, k15), _mm256_and_si256(_mm256_slli_epi32(hh, 4), k48));
    q[1] = _mm256_or_si256(_mm256_and_si256(c, k15), _mm256_and_si256(_mm256_slli_epi32(hh, 2), k48));
    q[2] = _mm256_or_si256(_mm256_srli_epi32(a, 4), _mm256_and_si256(hh, k48));
    q[3] = _mm256_or_si256(_mm256_srli_epi32(c, 4), _mm256_and_si256(_mm256_srli_epi32(hh, 2), k48));
    for (int k = 0; k < 4; k++) {
        const __m256 ds = _mm256_set1_ps(d * (float)sc[2 * k]);
        w[k] = _mm256_mul_ps(ds, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], k32)));
    }
}

/* 8 plain-type elements (f32/f16/bf16) at element i of p. */
static inline __m256 load_plain(qg_dtype t, const void *p, int64_t i) {
    switch (t) {
    case QG_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    case QG_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i))), 16));
    default: return _mm256_loadu_ps((const float *)p + i);
    }
}

/* One plain-type element, for tails. */
static inline float plain_at(qg_dtype t, const void *p, int64_t i) {
    switch (t) {
    case QG_F16: return h2f(((const uint16_t *)p)[i]);
    case QG_BF16: return qg_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* ---- dot ----------------------------------------------------------------- */

static float dot_plain(qg_dtype t, const void *w, const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_plain(t, w, i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_plain(t, w, i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_plain(t, w, i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_plain(t, w, i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_plain(t, w, i), _mm256_loadu_ps(x + i), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += plain_at(t, w, i) * x[i];
    return s;
}

/* Blocks of 32 (q8_0, q4_0): four vectors per block, one per accumulator. */
#define DOT_32(NAME, BLOCK, DECODE)                                              \
    static float NAME(const BLOCK *b, const float *x, int64_t nb) {             \
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(),                \
                       _mm256_setzero_ps(), _mm256_setzero_ps()};               \
        __m256 w[4];                                                            \
        for (int64_t i = 0; i < nb; i++, x += 32) {                             \
            DECODE(b + i, w);                                                   \
            for (int k = 0; k < 4; k++)                                         \
                a[k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(x + 8 * k), a[k]); \
        }                                                                       \
        return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))); \
    }

DOT_32(dot_q8_0, qg_block_q8_0, decode_q8_0)
DOT_32(dot_q4_0, qg_block_q4_0, decode_q4_0)

static float dot_q4_K(const qg_block_q4_K *b, const float *x, int64_t nb) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 w[8];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        float ds[8], ms[8];
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), ds, ms);
        for (int c = 0; c < 4; c++) {
            decode_q4_K(b + i, ds, ms, c, w);
            for (int k = 0; k < 8; k++)
                a[k & 3] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(x + 64 * c + 8 * k), a[k & 3]);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

static float dot_q5_K(const qg_block_q5_K *b, const float *x, int64_t nb) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 w[8];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        float ds[8], ms[8];
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), ds, ms);
        for (int c = 0; c < 4; c++) {
            decode_q5_K(b + i, ds, ms, c, w);
            for (int k = 0; k < 8; k++)
                a[k & 3] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(x + 64 * c + 8 * k), a[k & 3]);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

static float dot_q6_K(const qg_block_q6_K *b, const float *x, int64_t nb) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 w[4];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        const float d = h2f(b[i].d);
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 4; g++) {
                const float *xp = x + 128 * h + 8 * g;
                decode_q6_K(b + i, d, h, g, w);
                for (int k = 0; k < 4; k++) a[k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xp + 32 * k), a[k]);
            }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

float qg_quant_dot_avx2(qg_dtype t, const void *w_row, const float *x, int64_t n) {
    const int64_t nb = n / qg_dtype_block_size(t);
    QG_ASSERT(n >= 0 && nb * qg_dtype_block_size(t) == n);
    switch (t) {
    case QG_F32: case QG_F16: case QG_BF16: return dot_plain(t, w_row, x, n);
    case QG_Q8_0: return dot_q8_0(w_row, x, nb);
    case QG_Q4_0: return dot_q4_0(w_row, x, nb);
    case QG_Q4_K: return dot_q4_K(w_row, x, nb);
    case QG_Q5_K: return dot_q5_K(w_row, x, nb);
    case QG_Q6_K: return dot_q6_K(w_row, x, nb);
    default: QG_ABORT("qg_quant_dot: unsupported type %s", qg_dtype_name(t));
    }
}

/* ---- gemm ---------------------------------------------------------------- */

/* Dequantize one row of n elements into dst (n floats), GGML's values. */
static void dequant_row(qg_dtype t, const void *src, float *dst, int64_t n) {
    const int64_t nb = n / qg_dtype_block_size(t);
    __m256 w[8];
    switch (t) {
    case QG_F32: case QG_F16: case QG_BF16: {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_plain(t, src, i));
        for (; i < n; i++) dst[i] = plain_at(t, src, i);
        return;
    }
    case QG_Q8_0:
        for (int64_t i = 0; i < nb; i++, dst += 32) {
            decode_q8_0((const qg_block_q8_0 *)src + i, w);
            for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 8 * k, w[k]);
        }
        return;
    case QG_Q4_0:
        for (int64_t i = 0; i < nb; i++, dst += 32) {
            decode_q4_0((const qg_block_q4_0 *)src + i, w);
            for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 8 * k, w[k]);
        }
        return;
    case QG_Q4_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q4_K *b = (const qg_block_q4_K *)src + i;
            float ds[8], ms[8];
            k4_scales(b->scales, h2f(b->d), h2f(b->dmin), ds, ms);
            for (int c = 0; c < 4; c++) {
                decode_q4_K(b, ds, ms, c, w);
                for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + 64 * c + 8 * k, w[k]);
            }
        }
        return;
    case QG_Q5_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q5_K *b = (const qg_block_q5_K *)src + i;
            float ds[8], ms[8];
            k4_scales(b->scales, h2f(b->d), h2f(b->dmin), ds, ms);
            for (int c = 0; c < 4; c++) {
                decode_q5_K(b, ds, ms, c, w);
                for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + 64 * c + 8 * k, w[k]);
            }
        }
        return;
    case QG_Q6_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q6_K *b = (const qg_block_q6_K *)src + i;
            const float d = h2f(b->d);
            for (int h = 0; h < 2; h++)
                for (int g = 0; g < 4; g++) {
                    decode_q6_K(b, d, h, g, w);
                    for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 128 * h + 32 * k + 8 * g, w[k]);
                }
        }
        return;
    default: QG_ABORT("qg_quant_gemm: unsupported type %s", qg_dtype_name(t));
    }
}

/*
 * out[r][c] = sum_k wr[r][k] * xc[c][k], k < n, for 4 f32 rows and 3 f32
 * columns (callers repeat a pointer to fill a partial tile).
 */
static void kernel_4x3(const float *const wr[4], const float *const xc[3], int64_t n, float out[4][3]) {
    __m256 acc[4][3];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 3; c++) acc[r][c] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 x0 = _mm256_loadu_ps(xc[0] + k), x1 = _mm256_loadu_ps(xc[1] + k);
        const __m256 x2 = _mm256_loadu_ps(xc[2] + k);
        for (int r = 0; r < 4; r++) {
            const __m256 wv = _mm256_loadu_ps(wr[r] + k);
            acc[r][0] = _mm256_fmadd_ps(wv, x0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(wv, x1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(wv, x2, acc[r][2]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 3; c++) {
            float s = hsum(acc[r][c]);
            for (int64_t j = k; j < n; j++) s += wr[r][j] * xc[c][j]; /* plain-type tail */
            out[r][c] = s;
        }
}

void qg_quant_gemm_avx2(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                        const float *x, size_t x_stride, int n_cols, float *y,
                        size_t y_stride, int64_t n, float *scratch) {
    QG_ASSERT(n_rows >= 0 && n_cols >= 0 && n >= 0);
    const char *wb = w;
    if (n_cols < GEMM_MIN_COLS) {
        for (int r = 0; r < n_rows; r++)
            for (int c = 0; c < n_cols; c++)
                y[(size_t)c * y_stride + (size_t)r] =
                    qg_quant_dot_avx2(t, wb + (size_t)r * w_row_bytes, x + (size_t)c * x_stride, n);
        return;
    }
    const size_t ld = qg_align_up((size_t)n, 16); /* scratch row stride */
    for (int r0 = 0; r0 < n_rows; r0 += QG_QUANT_GEMM_ROWS) {
        const int nr = QG_MIN(QG_QUANT_GEMM_ROWS, n_rows - r0);
        const float *rows[QG_QUANT_GEMM_ROWS]; /* each (n) */
        for (int r = 0; r < nr; r++) {
            const void *src = wb + (size_t)(r0 + r) * w_row_bytes;
            if (t == QG_F32) {
                rows[r] = src;
            } else {
                dequant_row(t, src, scratch + (size_t)r * ld, n);
                rows[r] = scratch + (size_t)r * ld;
            }
        }
        for (int c0 = 0; c0 < n_cols; c0 += 3) {
            const int nc = QG_MIN(3, n_cols - c0);
            const float *xc[3];
            for (int c = 0; c < 3; c++) xc[c] = x + (size_t)(c0 + QG_MIN(c, nc - 1)) * x_stride;
            for (int rr = 0; rr < nr; rr += 4) {
                const int nrr = QG_MIN(4, nr - rr);
                const float *wr[4];
                for (int r = 0; r < 4; r++) wr[r] = rows[rr + QG_MIN(r, nrr - 1)];
                float out[4][3];
                kernel_4x3(wr, xc, n, out);
                for (int c = 0; c < nc; c++)
                    for (int r = 0; r < nrr; r++)
                        y[(size_t)(c0 + c) * y_stride + (size_t)(r0 + rr + r)] = out[r][c];
            }
        }
    }
}
