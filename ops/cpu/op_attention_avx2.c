/*
 * op_attention_avx2.c - AVX2/FMA/F16C inner loops of the attention kernel
 * (compiled with -mavx2 -mfma -mf16c; called only when the quant dispatch
 * reports AVX2 or better, and for the row helpers only when head_dim is a
 * multiple of 8).
 *
 * The f16 conversions are exact (F16C widens exactly and narrows with
 * round-to-nearest-even, as qg_f32_to_f16 does).  exp is a Cephes-style
 * f32 polynomial (range reduction by ln 2 in two parts, degree-6
 * polynomial), within 2 ulp of expf on [-87, 0], the range softmax uses.
 */
#include "qg_cpu_internal.h"

#include <immintrin.h>

/* 8 cache elements (f16 or f32) at p + i, as f32. */
static inline __attribute__((always_inline)) __m256 load8(bool f16, const void *p, int64_t i) {
    if (f16)
        return _mm256_cvtph_ps(
            _mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)p + i)));
    return _mm256_loadu_ps((const float *)p + i);
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The row loops, specialized for f16 or f32 rows (f16 a constant at
 * every call site, so each caller gets its own branch-free copy). */
static inline __attribute__((always_inline)) void
scores_rows(bool f16, const float *q, const char *kb, size_t row_bytes,
            int64_t n, int hd, float scale, float *s) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const char *r0 = kb + (size_t)j * row_bytes;
        const char *r1 = r0 + row_bytes, *r2 = r1 + row_bytes, *r3 = r2 + row_bytes;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < hd; i += 8) {
            const __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(load8(f16, r0, i), qv, a0);
            a1 = _mm256_fmadd_ps(load8(f16, r1, i), qv, a1);
            a2 = _mm256_fmadd_ps(load8(f16, r2, i), qv, a2);
            a3 = _mm256_fmadd_ps(load8(f16, r3, i), qv, a3);
        }
        /* [r0 r0 r1 r1 | r0 r0 r1 r1], then [r0 r1 r2 r3 | r0 r1 r2 r3] */
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        _mm_storeu_ps(s + j, _mm_mul_ps(sum, _mm_set1_ps(scale)));
    }
    for (; j < n; j++) {
        const char *r = kb + (size_t)j * row_bytes;
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) a = _mm256_fmadd_ps(load8(f16, r, i), _mm256_loadu_ps(q + i), a);
        s[j] = hsum8(a) * scale;
    }
}

void qg_cpu_attn_scores_avx2(qg_dtype ct, const float *q, const void *k,
                             size_t stride, int64_t n, int hd, float scale,
                             float *s) {
    if (ct == QG_F16) scores_rows(true, q, k, stride * 2, n, hd, scale, s);
    else scores_rows(false, q, k, stride * 4, n, hd, scale, s);
}

/* exp(x) for x in [-87, 88] (inputs below are clamped to -87). */
static inline __m256 exp8(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 c1 = _mm256_set1_ps(0.693359375f), c2 = _mm256_set1_ps(-2.12194440e-4f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, log2e),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, c1, x);
    x = _mm256_fnmadd_ps(fx, c2, x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx),
                                                         _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

float qg_cpu_softmax_exp_avx2(float *s, int64_t n, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum8(acc);
    if (j < n) {
        float tmp[8] = {0};
        const int64_t r = n - j;
        for (int64_t i = 0; i < r; i++) tmp[i] = s[j + i] - mx;
        for (int64_t i = r; i < 8; i++) tmp[i] = -INFINITY;
        _mm256_storeu_ps(tmp, exp8(_mm256_loadu_ps(tmp)));
        for (int64_t i = 0; i < r; i++) {
            s[j + i] = tmp[i];
            sum += tmp[i];
        }
    }
    return sum;
}

static inline __attribute__((always_inline)) void
accum_rows(bool f16, const float *p, const char *vb, size_t row_bytes,
           int64_t n, int hd, float *acc) {
    int c0 = 0;
    /* 64 columns at a time in 8 registers */
    for (; c0 + 64 <= hd; c0 += 64) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        const char *row = vb;
        for (int64_t j = 0; j < n; j++, row += row_bytes) {
            const __m256 pj = _mm256_broadcast_ss(p + j);
            a0 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 0), a0);
            a1 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 8), a1);
            a2 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 16), a2);
            a3 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 24), a3);
            a4 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 32), a4);
            a5 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 40), a5);
            a6 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 48), a6);
            a7 = _mm256_fmadd_ps(pj, load8(f16, row, c0 + 56), a7);
        }
        _mm256_storeu_ps(acc + c0 + 0, a0);
        _mm256_storeu_ps(acc + c0 + 8, a1);
        _mm256_storeu_ps(acc + c0 + 16, a2);
        _mm256_storeu_ps(acc + c0 + 24, a3);
        _mm256_storeu_ps(acc + c0 + 32, a4);
        _mm256_storeu_ps(acc + c0 + 40, a5);
        _mm256_storeu_ps(acc + c0 + 48, a6);
        _mm256_storeu_ps(acc + c0 + 56, a7);
    }
    for (; c0 < hd; c0 += 8) {
        __m256 a = _mm256_setzero_ps();
        const char *row = vb;
        for (int64_t j = 0; j < n; j++, row += row_bytes)
            a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), load8(f16, row, c0), a);
        _mm256_storeu_ps(acc + c0, a);
    }
}

void qg_cpu_attn_accum_avx2(qg_dtype ct, const float *p, const void *v,
                            size_t stride, int64_t n, int hd, float *acc) {
    if (ct == QG_F16) accum_rows(true, p, v, stride * 2, n, hd, acc);
    else accum_rows(false, p, v, stride * 4, n, hd, acc);
}

void qg_cpu_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}
