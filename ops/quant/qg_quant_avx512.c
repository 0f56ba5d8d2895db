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
 * micro-kernel over them (16 accumulators), cache-blocked: k in chunks of
 * GEMM_KC floats, columns in blocks of GEMM_CB, so one chunk of the rows
 * and of the block's columns stays in L1.  For 1-2 columns it calls the dot.
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

/*
 * Scales go through a small stack array: the compiler then reads each one
 * with a broadcast load (load port) instead of shuffling it out of a
 * register (two uops on port 5, which the table lookups already saturate).
 * The empty asm says the array may have changed, so the stored values are
 * not forwarded back into registers.
 */
static inline void spill16(float v[16]) { __asm__("" : "+m"(*(float(*)[16])v)); }

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
 * The 8 sub-block scales d*sc_j (dm[0..8)) and mins dmin*m_j (dm[8..16))
 * of a q4_K / q5_K block, each one f32 product as GGML forms it.
 */
static inline void k4_scales(const uint8_t *scales, float d, float dmin, float dm[16]) {
    uint8_t sm[16]; /* sc[0..8), m[0..8) */
    qg_quant_unpack_k4(scales, sm, sm + 8);
    const __m512 v = _mm512_cvtepi32_ps(load_u8x16(sm));
    const __m512 f = _mm512_insertf32x8(_mm512_set1_ps(d), _mm256_set1_ps(dmin), 1);
    _mm512_storeu_ps(dm, _mm512_mul_ps(f, v));
    spill16(dm);
}

/* q4_K elements 64c..64c+63 of a block -> w[0..3] (16 each, in order);
 * dm from k4_scales. */
static inline void decode_q4_K(const qg_block_q4_K *b, const float *dm, int c, __m512 w[4]) {
    const __m512 t1 = value_table(dm[2 * c], dm[8 + 2 * c], 0);
    const __m512 t2 = value_table(dm[2 * c + 1], dm[9 + 2 * c], 0);
    const __m512i qa = load_u8x16(b->qs + 32 * c);
    const __m512i qb = load_u8x16(b->qs + 32 * c + 16);
    w[0] = _mm512_permutexvar_ps(qa, t1);
    w[1] = _mm512_permutexvar_ps(qb, t1);
    w[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(qa, 4), t2);
    w[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(qb, 4), t2);
}

/* q5_K elements 64c..64c+63 -> w[0..3]; 5-bit code = nibble | qh bit << 4.
 * vpermt2ps reads five index bits, so bits above 4 may hold anything. */
static inline void decode_q5_K(const qg_block_q5_K *b, const float *dm, int c, __m512 w[4]) {
    const float d1 = dm[2 * c], m1 = dm[8 + 2 * c], d2 = dm[2 * c + 1], m2 = dm[9 + 2 * c];
    const __m512 t1lo = value_table(d1, m1, 0), t1hi = value_table(d1, m1, 16);
    const __m512 t2lo = value_table(d2, m2, 0), t2hi = value_table(d2, m2, 16);
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

/* The 16 sub-block scales d*scales[j] of a q6_K block into ds (f32
 * products as GGML forms them). */
static inline void q6_scales(const qg_block_q6_K *b, float ds[16]) {
    _mm512_storeu_ps(ds, _mm512_mul_ps(_mm512_set1_ps(h2f(b->d)), _mm512_cvtepi32_ps(load_i8x16(b->scales))));
    spill16(ds);
}

/*
 * q6_K half h (elements 128h..128h+127) -> q[0..128), the signed codes
 * q-32 as int8 in element order.  Built 64 codes at a time in the byte
 * domain: the low nibble from ql, bits 4-5 from qh moved into place by a
 * 16-bit shift (the bits a shift carries across the byte boundary are
 * masked off).  q[0..64): ql[64h+p] & 15 | (qh[32h+p%32] >> 2(p/32) & 3) << 4;
 * q[64..128): ql[64h+p] >> 4 | (qh[32h+p%32] >> (4 + 2(p/32)) & 3) << 4.
 * Nine vector operations per 128 codes, versus three per 16 in registers.
 */
static inline void q6_codes(const qg_block_q6_K *b, int h, int8_t q[128]) {
    const __m512i l = _mm512_loadu_si512(b->ql + 64 * h);
    const __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
    const __m512i k0f = _mm512_set1_epi8(0x0F), k30 = _mm512_set1_epi8(0x30), k32 = _mm512_set1_epi8(32);
    /* bytes 0..31 take qh bits 0-1 (4-5 for the high codes), 32..63 bits
     * 2-3 (6-7): left by 4 / 2, right by 0 / 2 */
    const __m512i sl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i hl = _mm512_and_si512(_mm512_sllv_epi16(hb, sl), k30);
    const __m512i hh = _mm512_and_si512(_mm512_srlv_epi16(hb, sr), k30);
    /* 0xEA: (A & B) | C */
    const __m512i lo = _mm512_ternarylogic_epi32(l, k0f, hl, 0xEA);
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l, 4), k0f, hh, 0xEA);
    _mm512_storeu_si512(q, _mm512_sub_epi8(lo, k32));
    _mm512_storeu_si512(q + 64, _mm512_sub_epi8(hi, k32));
}

/* q6_K elements 128h + 64j .. +63 -> w[0..3] (16 each, in order), value
 * (d*sc)*(q-32) as GGML; q from q6_codes(h), ds from q6_scales. */
static inline void decode_q6_K(const int8_t *q, const float *ds, int h, int j, __m512 w[4]) {
    UNROLL for (int k = 0; k < 4; k++)
        w[k] = _mm512_mul_ps(_mm512_set1_ps(ds[8 * h + 4 * j + k]),
                             _mm512_cvtepi32_ps(load_i8x16(q + 64 * j + 16 * k)));
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

/*
 * Software prefetch of the weight stream: every block prefetches the bytes
 * PF_AHEAD past itself (n_lines lines), which lie further along the row or
 * in the next rows the caller walks.  The hardware streamer stops at 4 KB
 * page boundaries; these keep a thread's requests going across them.
 * Prefetches never fault, so running past the end of a tensor is harmless.
 */
#define PF_AHEAD 2048

/* n_lines cache lines from blk + off on. */
static inline void prefetch_at(const void *blk, ptrdiff_t off, int n_lines) {
    const char *p = (const char *)blk + off;
    UNROLL for (int l = 0; l < n_lines; l++) _mm_prefetch(p + 64 * l, _MM_HINT_T0);
}

static inline void prefetch_lines(const void *blk, int n_lines) { prefetch_at(blk, PF_AHEAD, n_lines); }

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
        prefetch_lines(b + i, 2);
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
        prefetch_lines(b + i, 1);
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
        float dm[16];
        prefetch_lines(b + i, 3);
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), dm);
        UNROLL for (int c = 0; c < 4; c++) {
            decode_q4_K(b + i, dm, c, w);
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
        float dm[16];
        prefetch_lines(b + i, 3);
        k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), dm);
        UNROLL for (int c = 0; c < 4; c++) {
            decode_q5_K(b + i, dm, c, w);
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
        float ds[16];
        int8_t q[128];
        prefetch_lines(b + i, 4);
        q6_scales(b + i, ds);
        UNROLL for (int h = 0; h < 2; h++) {
            q6_codes(b + i, h, q);
            UNROLL for (int j = 0; j < 2; j++) {
                const float *xp = x + 128 * h + 64 * j;
                decode_q6_K(q, ds, h, j, w);
                a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xp), a0);
                a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xp + 16), a1);
                a2 = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(xp + 32), a2);
                a3 = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(xp + 48), a3);
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
            float dm[16];
            k4_scales(b->scales, h2f(b->d), h2f(b->dmin), dm);
            UNROLL for (int c = 0; c < 4; c++) {
                decode_q4_K(b, dm, c, w);
                UNROLL for (int k = 0; k < 4; k++) _mm512_storeu_ps(dst + 64 * c + 16 * k, w[k]);
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
                UNROLL for (int k = 0; k < 4; k++) _mm512_storeu_ps(dst + 64 * c + 16 * k, w[k]);
            }
        }
        return;
    case QG_Q6_K:
        for (int64_t i = 0; i < nb; i++, dst += QG_QK_K) {
            const qg_block_q6_K *b = (const qg_block_q6_K *)src + i;
            float ds[16];
            int8_t q[128];
            q6_scales(b, ds);
            UNROLL for (int h = 0; h < 2; h++) {
                q6_codes(b, h, q);
                UNROLL for (int j = 0; j < 2; j++) {
                    decode_q6_K(q, ds, h, j, w);
                    UNROLL for (int k = 0; k < 4; k++) _mm512_storeu_ps(dst + 128 * h + 64 * j + 16 * k, w[k]);
                }
            }
        }
        return;
    default: QG_ABORT("qg_quant_gemm: unsupported type %s", qg_dtype_name(t));
    }
}

/* Cache blocking of the gemm: k is walked in chunks of GEMM_KC floats so
 * that 8 weight rows and GEMM_CB columns of one chunk (24 KB) stay in L1
 * while every 4x4 tile of the block passes over them; the tiles' vector
 * partial sums live in a small stack array between chunks. */
#define GEMM_KC 256
#define GEMM_CB 16

/*
 * acc[4*r + c] += (per-lane partial sums of) wr[r][k] * xc[c][k] for k in
 * [k0, k1), 4 f32 rows by 4 f32 columns, 16 accumulators in registers.
 * k1 - k0 is a multiple of 16 except in a plain type's last chunk.
 * Callers repeat a row / column pointer to fill a partial tile.
 */
static void kernel_4x4(const float *const wr[4], const float *const xc[4], int64_t k0, int64_t k1,
                       __m512 acc[16]) {
    __m512 a[4][4];
    UNROLL for (int r = 0; r < 4; r++)
        UNROLL for (int c = 0; c < 4; c++) a[r][c] = acc[4 * r + c];
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
        __m512 xv[4];
        UNROLL for (int c = 0; c < 4; c++) xv[c] = _mm512_loadu_ps(xc[c] + k);
        UNROLL for (int r = 0; r < 4; r++) {
            const __m512 wv = _mm512_loadu_ps(wr[r] + k);
            UNROLL for (int c = 0; c < 4; c++) a[r][c] = _mm512_fmadd_ps(wv, xv[c], a[r][c]);
        }
    }
    if (k < k1) {
        const __mmask16 m = tail_mask(k1 - k);
        __m512 xv[4];
        UNROLL for (int c = 0; c < 4; c++) xv[c] = _mm512_maskz_loadu_ps(m, xc[c] + k);
        UNROLL for (int r = 0; r < 4; r++) {
            const __m512 wv = _mm512_maskz_loadu_ps(m, wr[r] + k);
            UNROLL for (int c = 0; c < 4; c++) a[r][c] = _mm512_fmadd_ps(wv, xv[c], a[r][c]);
        }
    }
    UNROLL for (int r = 0; r < 4; r++)
        UNROLL for (int c = 0; c < 4; c++) acc[4 * r + c] = a[r][c];
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
    enum { RT = QG_QUANT_GEMM_ROWS / 4, CT = GEMM_CB / 4 };
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
        const int nrt = (nr + 3) / 4;
        const float *wr[RT][4];
        for (int rt = 0; rt < nrt; rt++)
            UNROLL for (int r = 0; r < 4; r++) wr[rt][r] = rows[QG_MIN(4 * rt + r, nr - 1)];
        for (int cb = 0; cb < n_cols; cb += GEMM_CB) {
            const int ncb = QG_MIN(GEMM_CB, n_cols - cb), nct = (ncb + 3) / 4;
            const float *xc[CT][4];
            for (int ct = 0; ct < nct; ct++)
                UNROLL for (int c = 0; c < 4; c++)
                    xc[ct][c] = x + (size_t)(cb + QG_MIN(4 * ct + c, ncb - 1)) * x_stride;
            __m512 acc[RT][CT][16]; /* vector partial sums per tile */
            for (int rt = 0; rt < nrt; rt++)
                for (int ct = 0; ct < nct; ct++)
                    UNROLL for (int i = 0; i < 16; i++) acc[rt][ct][i] = _mm512_setzero_ps();
            for (int64_t k0 = 0; k0 < n; k0 += GEMM_KC) {
                const int64_t k1 = QG_MIN(n, k0 + GEMM_KC);
                for (int ct = 0; ct < nct; ct++)
                    for (int rt = 0; rt < nrt; rt++) kernel_4x4(wr[rt], xc[ct], k0, k1, acc[rt][ct]);
            }
            for (int ct = 0; ct < nct; ct++)
                for (int rt = 0; rt < nrt; rt++)
                    for (int c = 0; c < 4 && 4 * ct + c < ncb; c++)
                        for (int r = 0; r < 4 && 4 * rt + r < nr; r++)
                            y[(size_t)(cb + 4 * ct + c) * y_stride + (size_t)(r0 + 4 * rt + r)] =
                                _mm512_reduce_add_ps(acc[rt][ct][4 * r + c]);
        }
    }
}

/* ---- gemm_cols: thin products, weights decoded once into registers ------- */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Columns per register pass: 2 accumulators per column, 16 in all, leave
 * room for the 4 decoded weight vectors and the decoder's temporaries. */
#define COLS_PASS 8

/*
 * acc[c][0..1] += w[0..3] * x[c][off .. off+64), for c < nc.  Column c's
 * accumulators see the same FMAs in the same order whatever nc is, so a
 * column's result does not depend on which columns share its pass.
 */
ALWAYS_INLINE void fma_cols(const __m512 w[4], const float *const *x, int64_t off, int nc,
                            __m512 acc[][2]) {
    UNROLL for (int c = 0; c < nc; c++) {
        const float *xc = x[c] + off;
        acc[c][0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xc), acc[c][0]);
        acc[c][1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xc + 16), acc[c][1]);
        acc[c][0] = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(xc + 32), acc[c][0]);
        acc[c][1] = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(xc + 48), acc[c][1]);
    }
}

/* The half-chunk step of the 32-element block types (an odd block count). */
ALWAYS_INLINE void fma_cols_half(const __m512 w[2], const float *const *x, int64_t off, int nc,
                                 __m512 acc[][2]) {
    UNROLL for (int c = 0; c < nc; c++) {
        acc[c][0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x[c] + off), acc[c][0]);
        acc[c][1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x[c] + off + 16), acc[c][1]);
    }
}

/*
 * acc[c][0..1] += the products of elements [k0, k1) of a row of block type
 * t with x[c], for c < nc (a compile-time constant after inlining): every
 * 64 elements are decoded once into 4 registers and FMA'd into all nc
 * columns.  k0 and k1 are multiples of 256 (of 32 for q8_0 / q4_0) or n.
 * The accumulators come from and go back to memory, which does not change
 * their values: a row may be walked in several k ranges.  Each block
 * prefetches the bytes pf past itself (the same block of a row walked
 * later).
 */
ALWAYS_INLINE void cols_row(qg_dtype t, const void *row, int64_t k0, int64_t k1,
                            const float *const *x, int nc, __m512 (*accm)[2], ptrdiff_t pf) {
    __m512 acc[COLS_PASS][2];
    UNROLL for (int c = 0; c < nc; c++) acc[c][0] = accm[c][0], acc[c][1] = accm[c][1];
    __m512 w[4];
    switch (t) {
    case QG_Q4_K: {
        const qg_block_q4_K *b = row;
        for (int64_t i = k0 / QG_QK_K; i < k1 / QG_QK_K; i++) {
            float dm[16];
            prefetch_at(b + i, pf, 3);
            k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), dm);
            UNROLL for (int c = 0; c < 4; c++) {
                decode_q4_K(b + i, dm, c, w);
                fma_cols(w, x, i * QG_QK_K + 64 * c, nc, acc);
            }
        }
        break;
    }
    case QG_Q5_K: {
        const qg_block_q5_K *b = row;
        for (int64_t i = k0 / QG_QK_K; i < k1 / QG_QK_K; i++) {
            float dm[16];
            prefetch_at(b + i, pf, 3);
            k4_scales(b[i].scales, h2f(b[i].d), h2f(b[i].dmin), dm);
            UNROLL for (int c = 0; c < 4; c++) {
                decode_q5_K(b + i, dm, c, w);
                fma_cols(w, x, i * QG_QK_K + 64 * c, nc, acc);
            }
        }
        break;
    }
    case QG_Q6_K: {
        const qg_block_q6_K *b = row;
        for (int64_t i = k0 / QG_QK_K; i < k1 / QG_QK_K; i++) {
            float ds[16];
            int8_t q[128];
            prefetch_at(b + i, pf, 4);
            q6_scales(b + i, ds);
            UNROLL for (int h = 0; h < 2; h++) {
                q6_codes(b + i, h, q);
                UNROLL for (int j = 0; j < 2; j++) {
                    decode_q6_K(q, ds, h, j, w);
                    fma_cols(w, x, i * QG_QK_K + 128 * h + 64 * j, nc, acc);
                }
            }
        }
        break;
    }
    case QG_Q8_0: {
        const qg_block_q8_0 *b = row;
        int64_t i = k0 / 32;
        for (; i + 2 <= k1 / 32; i += 2) {
            prefetch_at(b + i, pf, 2);
            decode_q8_0(b + i, w);
            decode_q8_0(b + i + 1, w + 2);
            fma_cols(w, x, 32 * i, nc, acc);
        }
        if (i < k1 / 32) {
            decode_q8_0(b + i, w);
            fma_cols_half(w, x, 32 * i, nc, acc);
        }
        break;
    }
    case QG_Q4_0: {
        const qg_block_q4_0 *b = row;
        int64_t i = k0 / 32;
        for (; i + 2 <= k1 / 32; i += 2) {
            prefetch_at(b + i, pf, 1);
            decode_q4_0(b + i, w);
            decode_q4_0(b + i + 1, w + 2);
            fma_cols(w, x, 32 * i, nc, acc);
        }
        if (i < k1 / 32) {
            decode_q4_0(b + i, w);
            fma_cols_half(w, x, 32 * i, nc, acc);
        }
        break;
    }
    default: QG_ABORT("qg_quant_gemm_cols: not a block type: %s", qg_dtype_name(t));
    }
    UNROLL for (int c = 0; c < nc; c++) accm[c][0] = acc[c][0], accm[c][1] = acc[c][1];
}

/* One instance per pass width, so that the accumulators live in
 * registers. */
#define COLS_INSTANCE(NC)                                                                 \
    static void cols_row_##NC(qg_dtype t, const void *row, int64_t k0, int64_t k1,       \
                              const float *const *x, __m512 (*accm)[2], ptrdiff_t pf) {   \
        cols_row(t, row, k0, k1, x, NC, accm, pf);                                        \
    }
COLS_INSTANCE(1)
COLS_INSTANCE(2)
COLS_INSTANCE(3)
COLS_INSTANCE(4)
COLS_INSTANCE(5)
COLS_INSTANCE(6)
COLS_INSTANCE(7)
COLS_INSTANCE(8)

typedef void (*cols_row_fn)(qg_dtype t, const void *row, int64_t k0, int64_t k1,
                            const float *const *x, __m512 (*accm)[2], ptrdiff_t pf);

/* Cache blocking of gemm_cols: COLS_ROWS rows walk k in chunks of COLS_KC
 * elements, so the chunk of up to 8 columns (32 KB) stays in L1 while the
 * rows pass over it; each weight is still decoded once per pass.  While a
 * group of rows is walked, the next group is prefetched block by block (the
 * walk is not sequential, so the hardware streamer alone lags). */
#define COLS_KC 1024
#define COLS_ROWS 4

void qg_quant_gemm_cols_avx512(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                               const float *const *x, int n_cols, float *y, size_t y_stride,
                               int64_t n) {
    QG_ASSERT(n_rows >= 0 && n_cols >= 0 && n >= 0);
    const char *wb = w;
    if (qg_dtype_block_size(t) == 1) {
        /* plain types: nothing to decode, the dot is the kernel */
        for (int r = 0; r < n_rows; r++)
            for (int c = 0; c < n_cols; c++)
                y[(size_t)c * y_stride + (size_t)r] = dot_plain(t, wb + (size_t)r * w_row_bytes, x[c], n);
        return;
    }
    QG_ASSERT(n % qg_dtype_block_size(t) == 0);
    static const cols_row_fn pass[COLS_PASS + 1] = {NULL,         cols_row_1, cols_row_2,
                                                    cols_row_3,   cols_row_4, cols_row_5,
                                                    cols_row_6,   cols_row_7, cols_row_8};
    __m512 acc[COLS_ROWS][COLS_PASS][2]; /* per (row, column) vector partial sums */
    for (int r0 = 0; r0 < n_rows; r0 += COLS_ROWS) {
        const int nr = QG_MIN(COLS_ROWS, n_rows - r0);
        const ptrdiff_t pf = r0 + COLS_ROWS < n_rows ? (ptrdiff_t)(COLS_ROWS * w_row_bytes) : PF_AHEAD;
        for (int c0 = 0; c0 < n_cols; c0 += COLS_PASS) {
            const int nc = QG_MIN(COLS_PASS, n_cols - c0);
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++) acc[r][c][0] = acc[r][c][1] = _mm512_setzero_ps();
            for (int64_t k0 = 0; k0 < n; k0 += COLS_KC) {
                const int64_t k1 = QG_MIN(n, k0 + COLS_KC);
                for (int r = 0; r < nr; r++)
                    pass[nc](t, wb + (size_t)(r0 + r) * w_row_bytes, k0, k1, x + c0, acc[r],
                             c0 == 0 ? pf : 0);
            }
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++)
                    y[(size_t)(c0 + c) * y_stride + (size_t)(r0 + r)] =
                        _mm512_reduce_add_ps(_mm512_add_ps(acc[r][c][0], acc[r][c][1]));
        }
    }
}
