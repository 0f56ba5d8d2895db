/*
 * op_attention_avx2.c - AVX2/FMA/F16C vector helpers of the attention
 * kernel (compiled with -mavx2 -mfma -mf16c; called only when the quant
 * dispatch reports AVX2 or better).
 *
 * The f16 conversions are exact (F16C widens exactly and narrows with
 * round-to-nearest-even, as qg_f32_to_f16 does).
 */
#include "qg_cpu_internal.h"

#include <immintrin.h>

/* y[i] += a * x[i], i < n */
void qg_cpu_axpy_f32_avx2(float *y, float a, const float *x, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

/* y[i] += a * f32(x[i]), i < n, x f16 bits */
void qg_cpu_axpy_f16_avx2(float *y, float a, const uint16_t *x, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 vx =
            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, vx, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = fmaf(a, _cvtsh_ss(x[i]), y[i]);
}

/* y[i] = f16(x[i]) rounded to nearest even, i < n */
void qg_cpu_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}
