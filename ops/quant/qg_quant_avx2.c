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
 * ymm registers in all), cache-blocked: k in chunks of GEMM_KC floats,
 * columns in blocks of GEMM_CB.  For 1-2 columns it calls the dot.
 *
 * Exactness of the decoded weights relies on mul and sub not being fused
 * (ISO C mode: GCC's -ffp-contract=off; clang is told below);
 * tests/test_quant.c checks it with one-hot activations.
 */
#include "qg_quant_blocks.h"

#include "../../graph/qg_base.h"

#include <immintrin.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Fixed-trip loops over registers must be unrolled so that arrays of
 * vectors (accumulators, decoded weights) live in registers; GCC -O2 does
 * not fully unroll them on its own. */
#define UNROLL _Pragma("GCC unroll 16")

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
    UNROLL for (int k = 0; k < 4; k++) w[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(load_i8x8(b->qs + 8 * k)), d);
}

/* q4_0 block -> w[0..3] = elements 8k..8k+7 ((k-8)*d as the scalar code). */
static inline void decode_q4_0(const qg_block_q4_0 *b, __m256 w[4]) {
    const __m256 d = _mm256_set1_ps(h2f(b->d));
    const __m256i k8 = _mm256_set1_epi32(8), k15 = _mm256_set1_epi32(15);
    UNROLL for (int g = 0; g < 2; g++) {
        const __m256i q = load_u8x8(b->qs + 8 * g);
        w[g] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(q, k15), k8)), d);
        w[g + 2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(q, 4), k8)), d);
    }
}

/*
 * Scales go through a small stack array: the compiler then reads each one
 * with a broadcast load (load port) instead of shuffling it out of a
 * register.  The empty asm says the array may have changed, so the stored
 * values are not forwarded back into registers.
 */
static inline void spill16(float v[16]) { __asm__("" : "+m"(*(float(*)[16])v)); }

/* Sub-block scales d*sc_j (dm[0..8)) and mins dmin*m_j (dm[8..16)) of a
 * q4_K / q5_K block, each one f32 product as GGML forms it. */
static inline void k4_scales(const uint8_t *scales, float d, float dmin, float dm[16]) {
    uint8_t sc[8], m[8];
    qg_quant_unpack_k4(scales, sc, m);
    _mm256_storeu_ps(dm, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(load_u8x8(sc))));
    _mm256_storeu_ps(dm + 8, _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(load_u8x8(m))));
    spill16(dm);
}

/* The 16 sub-block scales d*scales[j] of a q6_K block into ds. */
static inline void q6_scales(const qg_block_q6_K *b, float ds[16]) {
    const __m256 d = _mm256_set1_ps(h2f(b->d));
    _mm256_storeu_ps(ds, _mm256_mul_ps(d, _mm256_cvtepi32_ps(load_i8x8(b->scales))));
    _mm256_storeu_ps(ds + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(load_i8x8(b->scales + 8))));
    spill16(ds);
}

/* q4_K elements 64c..64c+63 -> w[0..7] (8 each, in order). */
static inline void decode_q4_K(const qg_block_q4_K *b, const float *dm, int c, __m256 w[8]) {
    const __m256 d1 = _mm256_set1_ps(dm[2 * c]), m1 = _mm256_set1_ps(dm[8 + 2 * c]);
    const __m256 d2 = _mm256_set1_ps(dm[2 * c + 1]), m2 = _mm256_set1_ps(dm[9 + 2 * c]);
    const __m256i k15 = _mm256_set1_epi32(15);
    UNROLL for (int g = 0; g < 4; g++) {
        const __m256i q = load_u8x8(b->qs + 32 * c + 8 * g);
        w[g] = affine(_mm256_and_si256(q, k15), d1, m1);
        w[g + 4] = affine(_mm256_srli_epi32(q, 4), d2, m2);
    }
}

/* q5_K elements 64c..64c+63 -> w[0..7]; code = nibble + 16 * qh bit. */
static inline void decode_q5_K(const qg_block_q5_K *b, const float *dm, int c, __m256 w[8]) {
    const __m256 d1 = _mm256_set1_ps(dm[2 * c]), m1 = _mm256_set1_ps(dm[8 + 2 * c]);
    const __m256 d2 = _mm256_set1_ps(dm[2 * c + 1]), m2 = _mm256_set1_ps(dm[9 + 2 * c]);
    const __m256i k15 = _mm256_set1_epi32(15), k16 = _mm256_set1_epi32(16);
    const __m128i shift = _mm_cvtsi32_si128(2 * c);
    UNROLL for (int g = 0; g < 4; g++) {
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
 * (0..7), k = 0..3; value (d*sc)*(q-32) as GGML; ds from q6_scales.
 */
static inline void decode_q6_K(const qg_block_q6_K *b, const float *ds, int h, int g, __m256 w[4]) {
    const uint8_t *ql = b->ql + 64 * h + 8 * g;
    const uint8_t *qh = b->qh + 32 * h + 8 * g;
    const __m256i a = load_u8x8(ql), c = load_u8x8(ql + 32), hh = load_u8x8(qh);
    const __m256i k15 = _mm256_set1_epi32(15), k48 = _mm256_set1_epi32(48), k32 = _mm256_set1_epi32(32);
    __m256i q[4];
    q[0] = _mm256_or_si256(_mm256_and_si256(a, k15), _mm256_and_si256(_mm256_slli_epi32(hh, 4), k48));
    q[1] = _mm256_or_si256(_mm256_and_si256(c, k15), _mm256_and_si256(_mm256_slli_epi32(hh, 2), k48));
    q[2] = _mm256_or_si256(_mm256_srli_epi32(a, 4), _mm256_and_si256(hh, k48));
    q[3] = _mm256_or_si256(_mm256_srli_epi32(c, 4), _mm256_and_si256(_mm256_srli_epi32(hh, 2), k48));
    UNROLL for (int k = 0; k < 4; k++) {
        const __m256 s = _mm256_set1_ps(ds[8 * h + g / 2 + 2 * k]);
        w[k] = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[k], k32)));
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
            UNROLL for (int k = 0; k < 4; k++)                                         \
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
        float dm[16];
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), dm);
        UNROLL for (int c = 0; c < 4; c++) {
            decode_q4_K(b + i, dm, c, w);
            UNROLL for (int k = 0; k < 8; k++)
                a[k & 3] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(x + 64 * c + 8 * k), a[k & 3]);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

static float dot_q5_K(const qg_block_q5_K *b, const float *x, int64_t nb) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 w[8];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        float dm[16];
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), dm);
        UNROLL for (int c = 0; c < 4; c++) {
            decode_q5_K(b + i, dm, c, w);
            UNROLL for (int k = 0; k < 8; k++)
                a[k & 3] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(x + 64 * c + 8 * k), a[k & 3]);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

static float dot_q6_K(const qg_block_q6_K *b, const float *x, int64_t nb) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 w[4];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        float ds[16];
        q6_scales(b + i, ds);
        UNROLL for (int h = 0; h < 2; h++)
            UNROLL for (int g = 0; g < 4; g++) {
                const float *xp = x + 128 * h + 8 * g;
                decode_q6_K(b + i, ds, h, g, w);
                UNROLL for (int k = 0; k < 4; k++) a[k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(xp + 32 * k), a[k]);
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
            UNROLL for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 8 * k, w[k]);
        }
        return;
    case QG_Q4_0:
        for (int64_t i = 0; i < nb; i++, dst += 32) {
            decode_q4_0((const qg_block_q4_0 *)src + i, w);
            UNROLL for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 8 * k, w[k]);
        }
        return;
    case QG_Q4_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q4_K *b = (const qg_block_q4_K *)src + i;
            float dm[16];
            k4_scales(b->scales, h2f(b->d), h2f(b->dmin), dm);
            UNROLL for (int c = 0; c < 4; c++) {
                decode_q4_K(b, dm, c, w);
                UNROLL for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + 64 * c + 8 * k, w[k]);
            }
        }
        return;
    case QG_Q5_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q5_K *b = (const qg_block_q5_K *)src + i;
            float dm[16];
            k4_scales(b->scales, h2f(b->d), h2f(b->dmin), dm);
            UNROLL for (int c = 0; c < 4; c++) {
                decode_q5_K(b, dm, c, w);
                UNROLL for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + 64 * c + 8 * k, w[k]);
            }
        }
        return;
    case QG_Q6_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q6_K *b = (const qg_block_q6_K *)src + i;
            float ds[16];
            q6_scales(b, ds);
            UNROLL for (int h = 0; h < 2; h++)
                UNROLL for (int g = 0; g < 4; g++) {
                    decode_q6_K(b, ds, h, g, w);
                    UNROLL for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 128 * h + 32 * k + 8 * g, w[k]);
                }
        }
        return;
    default: QG_ABORT("qg_quant_gemm: unsupported type %s", qg_dtype_name(t));
    }
}

/* Cache blocking of the gemm: k is walked in chunks of GEMM_KC floats so
 * that 8 weight rows and GEMM_CB columns of one chunk (20 KB) stay in L1
 * while every 4x3 tile of the block passes over them; the tiles' vector
 * partial sums live in a small stack array between chunks. */
#define GEMM_KC 256
#define GEMM_CB 12

/*
 * acc[3*r + c] += (per-lane partial sums of) wr[r][k] * xc[c][k] for k in
 * [k0, k1) with k1 - k0 a multiple of 8 (the caller handles a plain type's
 * tail), 4 f32 rows by 3 f32 columns.  Callers repeat a row / column
 * pointer to fill a partial tile.
 */
static void kernel_4x3(const float *const wr[4], const float *const xc[3], int64_t k0, int64_t k1,
                       __m256 acc[12]) {
    __m256 a[4][3];
    UNROLL for (int r = 0; r < 4; r++)
        UNROLL for (int c = 0; c < 3; c++) a[r][c] = acc[3 * r + c];
    for (int64_t k = k0; k < k1; k += 8) {
        const __m256 x0 = _mm256_loadu_ps(xc[0] + k), x1 = _mm256_loadu_ps(xc[1] + k);
        const __m256 x2 = _mm256_loadu_ps(xc[2] + k);
        UNROLL for (int r = 0; r < 4; r++) {
            const __m256 wv = _mm256_loadu_ps(wr[r] + k);
            a[r][0] = _mm256_fmadd_ps(wv, x0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(wv, x1, a[r][1]);
            a[r][2] = _mm256_fmadd_ps(wv, x2, a[r][2]);
        }
    }
    UNROLL for (int r = 0; r < 4; r++)
        UNROLL for (int c = 0; c < 3; c++) acc[3 * r + c] = a[r][c];
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
    enum { RT = QG_QUANT_GEMM_ROWS / 4, CT = GEMM_CB / 3 };
    const size_t ld = qg_align_up((size_t)n, 16); /* scratch row stride */
    const int64_t n8 = n & ~(int64_t)7;           /* vector part of k */
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
        const int nrt = (nr + 3) / 4;
        const float *wr[RT][4];
        for (int rt = 0; rt < nrt; rt++)
            UNROLL for (int r = 0; r < 4; r++) wr[rt][r] = rows[QG_MIN(4 * rt + r, nr - 1)];
        for (int cb = 0; cb < n_cols; cb += GEMM_CB) {
            const int ncb = QG_MIN(GEMM_CB, n_cols - cb), nct = (ncb + 2) / 3;
            const float *xc[CT][3];
            for (int ct = 0; ct < nct; ct++)
                UNROLL for (int c = 0; c < 3; c++)
                    xc[ct][c] = x + (size_t)(cb + QG_MIN(3 * ct + c, ncb - 1)) * x_stride;
            __m256 acc[RT][CT][12]; /* vector partial sums per tile */
            for (int rt = 0; rt < nrt; rt++)
                for (int ct = 0; ct < nct; ct++)
                    UNROLL for (int i = 0; i < 12; i++) acc[rt][ct][i] = _mm256_setzero_ps();
            for (int64_t k0 = 0; k0 < n8; k0 += GEMM_KC) {
                const int64_t k1 = QG_MIN(n8, k0 + GEMM_KC);
                for (int ct = 0; ct < nct; ct++)
                    for (int rt = 0; rt < nrt; rt++) kernel_4x3(wr[rt], xc[ct], k0, k1, acc[rt][ct]);
            }
            for (int ct = 0; ct < nct; ct++)
                for (int rt = 0; rt < nrt; rt++)
                    for (int c = 0; c < 3 && 3 * ct + c < ncb; c++)
                        for (int r = 0; r < 4 && 4 * rt + r < nr; r++) {
                            const float *wrow = wr[rt][r], *xcol = xc[ct][c];
                            float s = hsum(acc[rt][ct][3 * r + c]);
                            for (int64_t j = n8; j < n; j++) s += wrow[j] * xcol[j]; /* plain tail */
                            y[(size_t)(cb + 3 * ct + c) * y_stride + (size_t)(r0 + 4 * rt + r)] = s;
                        }
        }
    }
}

/* The AVX2 thin product: one dot per (row, column) (AVX2 has too few
 * registers to keep several columns' accumulators next to the decoded
 * weights). */
void qg_quant_gemm_cols_avx2(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                             const float *const *x, int n_cols, float *y, size_t y_stride,
                             int64_t n) {
    QG_ASSERT(n_rows >= 0 && n_cols >= 0);
    const char *wb = w;
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < n_cols; c++)
            y[(size_t)c * y_stride + (size_t)r] =
                qg_quant_dot_avx2(t, wb + (size_t)r * w_row_bytes, x[c], n);
}
