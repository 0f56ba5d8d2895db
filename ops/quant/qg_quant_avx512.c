/*
 * qg_quant_avx512.c - AVX-512 (F/BW/VL/DQ + FMA + F16C) dot and gemm.
 *
 * Every weight is decoded to exactly the f32 value qg_dequant_row gives
 * (GGML's), then multiplied by the f32 activation and accumulated in f32
 * with four independent accumulators (the dot is a memory stream; the
 * accumulators hide FMA latency).
 *
 * Decoding tricks:
 *   4-bit codes (q4_0, q4_K): a 16-entry table of the sub-block's possible
 *     values, table[k] = d1*k - m1 (formed by the same mul and sub as the
 *     scalar code), is looked up with vpermps, which reads only the low four
 *     bits of each 32-bit index: no mask, no int->float conversion.
 *   5-bit codes (q5_K): a 32-entry table in two registers, vpermt2ps.
 *   q8_0, q6_K: int -> float conversion times the (sub-)block scale.
 *
 * The gemm dequantizes up to QG_QUANT_GEMM_ROWS weight rows into the
 * caller's scratch and runs a 4 rows x 4 columns register-blocked f32
 * micro-kernel over them (16 accumulators); for 1-2 columns it calls the dot.
 */
#include "qg_quant_blocks.h"

#include "../../graph/qg_base.h"

#include <immintrin.h>

/* The gemm switches from direct dots to dequantize + micro-kernel here. */
#define GEMM_MIN_COLS 3

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

static inline __m512i load_u8x16(const uint8_t *p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

static inline __m512i load_i8x16(const int8_t *p) {
    return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
}

static inline __m512 iota16(void) {
    return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

/* table[k] = d*k - m for k = base..base+15 (mul, then sub: GGML's rounding). */
static inline __m512 value_table(float d, float m, float base) {
    const __m512 k = _mm512_add_ps(iota16(), _mm512_set1_ps(base));
    return _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(d), k), _mm512_set1_ps(m));
}

/* ---- decoders: one block (or part) into registers ------------------------ */

/* q8_0 block -> w[0] = elements 0..15, w[1] = 16..31. */
static inline void decode_q8_0(const qg_block_q8_0 *b, __m512 w[2]) {
    const __m512 d = _mm512_set1_ps(h2f(b->d));
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(load_i8x16(b->qs)), d);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(load_i8x16(b->qs + 16)), d);
}

/* q4_0 block -> w[0] = elements 0..15 (low nibbles), w[1] = 16..31. */
static inline void decode_q4_0(const qg_block_q4_0 *b, __m512 w[2]) {
    const float d = h2f(b->d);
    /* (k-8)*d for k = 0..15, as the scalar (float)(k-8) * d */
    const __m512 tab = _mm512_mul_ps(_mm512_sub_ps(iota16(), _mm512_set1_ps(8)), _mm512_set1_ps(d));
    const __m512i q = load_u8x16(b->qs);
    w[0] = _mm512_permutexvar_ps(q, tab);
    w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), tab);
}

/*
 * The 8 sub-block scales d*sc_j and mins dmin*m_j of a q4_K / q5_K block,
 * as GGML forms them (one f32 product each), into ds[0..8) and ms[0..8).
 */
static inline void k4_scales(const uint8_t *scales, float d, float dmin, float ds[8], float ms[8]) {
    uint8_t sc[8], m[8];
    qg_quant_unpack_k4(scales, sc, m);
    const __m256 vs = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sc)));
    const __m256 vm = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)m)));
    _mm256_storeu_ps(ds, _mm256_mul_ps(_mm256_set1_ps(d), vs));
    _mm256_storeu_ps(ms, _mm256_mul_ps(_mm256_set1_ps(dmin), vm));
}

/* q4_K elements 64c..64c+63 of a block -> w[0..3] (16 each, in order);
 * ds, ms from k4_scales. */
static inline void decode_q4_K(const qg_block_q4_K *b, const float *ds, const float *ms, int c,
                               __m512 w[4]) {
    const __m512 t1 = value_table(ds[2 * c], ms[2 * c], 0);
    const __m512 t2 = value_table(ds[2 * c + 1], ms[2 * c + 1], 0);
    const __m512i qa = load_u8x16(b->qs + 32 * c);
    const __m512i qb = load_u8x16(b->qs + 32 * c + 16);
    w[0] = _mm512_permutexvar_ps(qa, t1);
    w[1] = _mm512_permutexvar_ps(qb, t1);
    w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(qa, 4), t2);
    w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(qb, 4), t2);
}

/* q5_K elements 64c..64c+63 -> w[0..3]; 5-bit code = nibble | qh bit << 4.
 * vpermt2ps reads five index bits, so bits above 4 may hold anything. */
static inline void decode_q5_K(const qg_block_q5_K *b, const float *ds, const float *ms, int c,
                               __m512 w[4]) {
    const __m512 t1lo = value_table(ds[2 * c], ms[2 * c], 0);
    const __m512 t1hi = value_table(ds[2 * c], ms[2 * c], 16);
    const __m512 t2lo = value_table(ds[2 * c + 1], ms[2 * c + 1], 0);
    const __m512 t2hi = value_table(ds[2 * c + 1], ms[2 * c + 1], 16);
    const __m128i shift = _mm_cvtsi32_si128(2 * c);
    const __m512i qa = load_u8x16(b->qs + 32 * c);
    const __m512i qb = load_u8x16(b->qs + 32 * c + 16);
    /* qh bit 2c moved to bit 4 (low-nibble codes), bit 2c+1 to bit 4 */
    const __m512i ha = _mm512_srl_epi32(_mm512_slli_epi32(load_u8x16(b->qh), 4), shift);
    const __m512i hb = _mm512_srl_epi32(_mm512_slli_epi32(load_u8x16(b->qh + 16), 4), shift);
    const __m512i k16 = _mm512_set1_epi32(16);
    /* 0xD8: bitwise select, C ? B : A */
    const __m512i i0 = _mm512_ternarylogic_epi32(qa, ha, k16, 0xD8);
    const __m512i i1 = _mm512_ternarylogic_epi32(qb, hb, k16, 0xD8);
    const __m512i i2 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(qa, 4), _mm512_srli_epi32(ha, 1), k16, 0xD8);
    const __m512i i3 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(qb, 4), _mm512_srli_epi32(hb, 1), k16, 0xD8);
    w[0] = _mm512_permutex2var_ps(t1lo, i0, t1hi);
    w[1] = _mm512_permutex2var_ps(t1lo, i1, t1hi);
    w[2] = _mm512_permutex2var_ps(t2lo, i2, t2hi);
    w[3] = _mm512_permutex2var_ps(t2lo, i3, t2hi);
}

/*
 * q6_K: half h (elements 128h..128h+127), part p (l = 16p..16p+15) ->
 * w[k] = elements 128h + 32k + 16p + (0..15), k = 0..3.
 */
static inline void decode_q6_K(const qg_block_q6_K *b, float d, int h, int p, __m512 w[4]) {
    const uint8_t *ql = b->ql + 64 * h + 16 * p;
    const uint8_t *qh = b->qh + 32 * h + 16 * p;
    const int8_t *sc = b->scales + 8 * h + p;
    const __m512i a = load_u8x16(ql), c = load_u8x16(ql + 32), hh = load_u8x16(qh);
    const __m512i k15 = _mm512_set1_epi32(15), k48 = _mm512_set1_epi32(48), k32 = _mm512_set1_epi32(32);
    __m512i q[4];
    q[0] = _mm512_or_si512(_mm512_and_si512(a, k15), _mm512_and_si512(_mm512_slli_epi32(hh, 4), k48));
    q[1] = _mm512_or_si512(_mm512_and_si512(c, k15), _mm512_and_si512(_mm512_slli_epi32(hh, 2), k48));
    q[2] = _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_and_si512(hh, k48));
    q[3] = _mm512_or_si512(_mm512_srli_epi32(c, 4), _mm512_and_si512(_mm512_srli_epi32(hh, 2), k48));
    for (int k = 0; k < 4; k++) {
        const __m512 ds = _mm512_set1_ps(d * (float)sc[2 * k]); /* (d*sc)*q as GGML */
        w[k] = _mm512_mul_ps(ds, _mm512_cvtepi32_ps(_mm512_sub_epi32(q[k], k32)));
    }
}

/* 16 plain-type elements (f32/f16/bf16) at p, masked to the first `m`. */
static inline __m512 load_plain(qg_dtype t, const void *p, int64_t i, __mmask16 m) {
    switch (t) {
    case QG_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i));
    case QG_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i)), 16));
    default:
        return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    }
}

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* ---- dot ----------------------------------------------------------------- */

static float dot_plain(qg_dtype t, const void *w, const float *x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(load_plain(t, w, i, 0xFFFF), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(load_plain(t, w, i + 16, 0xFFFF), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(load_plain(t, w, i + 32, 0xFFFF), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(load_plain(t, w, i + 48, 0xFFFF), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        a0 = _mm512_fmadd_ps(load_plain(t, w, i, m), _mm512_maskz_loadu_ps(m, x + i), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_q8_0(const qg_block_q8_0 *b, const float *x, int64_t nb) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    __m512 w[2];
    for (; i + 2 <= nb; i += 2, x += 64) {
        decode_q8_0(b + i, w);
        a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), a0);
        a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 16), a1);
        decode_q8_0(b + i + 1, w);
        a2 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x + 32), a2);
        a3 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 48), a3);
    }
    if (i < nb) {
        decode_q8_0(b + i, w);
        a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), a0);
        a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 16), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_q4_0(const qg_block_q4_0 *b, const float *x, int64_t nb) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    __m512 w[2];
    for (; i + 2 <= nb; i += 2, x += 64) {
        decode_q4_0(b + i, w);
        a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), a0);
        a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 16), a1);
        decode_q4_0(b + i + 1, w);
        a2 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x + 32), a2);
        a3 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 48), a3);
    }
    if (i < nb) {
        decode_q4_0(b + i, w);
        a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), a0);
        a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 16), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_q4_K(const qg_block_q4_K *b, const float *x, int64_t nb) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512 w[4];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        float ds[8], ms[8];
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), ds, ms);
        for (int c = 0; c < 4; c++) {
            decode_q4_K(b + i, ds, ms, c, w);
            a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x + 64 * c), a0);
            a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 64 * c + 16), a1);
            a2 = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(x + 64 * c + 32), a2);
            a3 = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(x + 64 * c + 48), a3);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_q5_K(const qg_block_q5_K *b, const float *x, int64_t nb) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512 w[4];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        float ds[8], ms[8];
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), ds, ms);
        for (int c = 0; c < 4; c++) {
            decode_q5_K(b + i, ds, ms, c, w);
            a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x + 64 * c), a0);
            a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 64 * c + 16), a1);
            a2 = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(x + 64 * c + 32), a2);
            a3 = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(x + 64 * c + 48), a3);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_q6_K(const qg_block_q6_K *b, const float *x, int64_t nb) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512 w[4];
    for (int64_t i = 0; i < nb; i++, x += QG_QK_K) {
        const float d = h2f(b[i].d);
        for (int h = 0; h < 2; h++) {
            for (int p = 0; p < 2; p++) {
                const float *xp = x + 128 * h + 16 * p;
                decode_q6_K(b + i, d, h, p, w);
                a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xp), a0);
                a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xp + 32), a1);
                a2 = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(xp + 64), a2);
                a3 = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(xp + 96), a3);
            }
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

float qg_quant_dot_avx512(qg_dtype t, const void *w_row, const float *x, int64_t n) {
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
    __m512 w[4];
    switch (t) {
    case QG_F32: case QG_F16: case QG_BF16:
        for (int64_t i = 0; i < n; i += 16) {
            const __mmask16 m = tail_mask(n - i);
            _mm512_mask_storeu_ps(dst + i, m, load_plain(t, src, i, m));
        }
        return;
    case QG_Q8_0:
        for (int64_t i = 0; i < nb; i++, dst += 32) {
            decode_q8_0((const qg_block_q8_0 *)src + i, w);
            _mm512_storeu_ps(dst, w[0]);
            _mm512_storeu_ps(dst + 16, w[1]);
        }
        return;
    case QG_Q4_0:
        for (int64_t i = 0; i < nb; i++, dst += 32) {
            decode_q4_0((const qg_block_q4_0 *)src + i, w);
            _mm512_storeu_ps(dst, w[0]);
            _mm512_storeu_ps(dst + 16, w[1]);
        }
        return;
    case QG_Q4_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q4_K *b = (const qg_block_q4_K *)src + i;
            float ds[8], ms[8];
            k4_scales(b->scales, h2f(b->d), h2f(b->dmin), ds, ms);
            for (int c = 0; c < 4; c++) {
                decode_q4_K(b, ds, ms, c, w);
                for (int k = 0; k < 4; k++) _mm512_storeu_ps(dst + 64 * c + 16 * k, w[k]);
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
                for (int k = 0; k < 4; k++) _mm512_storeu_ps(dst + 64 * c + 16 * k, w[k]);
            }
        }
        return;
    case QG_Q6_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q6_K *b = (const qg_block_q6_K *)src + i;
            const float d = h2f(b->d);
            for (int h = 0; h < 2; h++)
                for (int p = 0; p < 2; p++) {
                    decode_q6_K(b, d, h, p, w);
                    for (int k = 0; k < 4; k++) _mm512_storeu_ps(dst + 128 * h + 32 * k + 16 * p, w[k]);
                }
        }
        return;
    default: QG_ABORT("qg_quant_gemm: unsupported type %s", qg_dtype_name(t));
    }
}

/*
 * out[r][c] = sum_k wr[r][k] * xc[c][k], k < n, for 4 f32 rows and 4 f32
 * columns (callers repeat a row / column pointer to fill a partial tile).
 */
static void kernel_4x4(const float *const wr[4], const float *const xc[4], int64_t n, float out[4][4]) {
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512 xv[4];
        for (int c = 0; c < 4; c++) xv[c] = _mm512_loadu_ps(xc[c] + k);
        for (int r = 0; r < 4; r++) {
            const __m512 wv = _mm512_loadu_ps(wr[r] + k);
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
        }
    }
    if (k < n) { /* plain types only: n need not be a multiple of 16 */
        const __mmask16 m = tail_mask(n - k);
        __m512 xv[4];
        for (int c = 0; c < 4; c++) xv[c] = _mm512_maskz_loadu_ps(m, xc[c] + k);
        for (int r = 0; r < 4; r++) {
            const __m512 wv = _mm512_maskz_loadu_ps(m, wr[r] + k);
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++) out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
}

void qg_quant_gemm_avx512(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                          const float *x, size_t x_stride, int n_cols, float *y,
                          size_t y_stride, int64_t n, float *scratch) {
    QG_ASSERT(n_rows >= 0 && n_cols >= 0 && n >= 0);
    const char *wb = w;
    if (n_cols < GEMM_MIN_COLS) {
        for (int r = 0; r < n_rows; r++)
            for (int c = 0; c < n_cols; c++)
                y[(size_t)c * y_stride + (size_t)r] =
                    qg_quant_dot_avx512(t, wb + (size_t)r * w_row_bytes, x + (size_t)c * x_stride, n);
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
        for (int c0 = 0; c0 < n_cols; c0 += 4) {
            const int nc = QG_MIN(4, n_cols - c0);
            const float *xc[4];
            for (int c = 0; c < 4; c++) xc[c] = x + (size_t)(c0 + QG_MIN(c, nc - 1)) * x_stride;
            for (int rr = 0; rr < nr; rr += 4) {
                const int nrr = QG_MIN(4, nr - rr);
                const float *wr[4];
                for (int r = 0; r < 4; r++) wr[r] = rows[rr + QG_MIN(r, nrr - 1)];
                float out[4][4];
                kernel_4x4(wr, xc, n, out);
                for (int c = 0; c < nc; c++)
                    for (int r = 0; r < nrr; r++)
                        y[(size_t)(c0 + c) * y_stride + (size_t)(r0 + rr + r)] = out[r][c];
            }
        }
    }
}
