/*
 * qg_quantize.c - the deterministic scalar quantizer (f32 -> any format).
 *
 * Determinism: only IEEE-exact operations are used (+ - * /, comparisons,
 * fabsf), each rounded to f32 on its own: this file is built in ISO
 * C mode without FMA flags (GCC's default for -std=c11 is -ffp-contract=off)
 * and clang is told so below, so the bytes produced for a given input are
 * the same on every x86-64 machine and compiler setting we build with.
 *
 * Method (our own, with GGML's block layouts):
 *   q8_0, q4_0: symmetric scale per 32, chosen among a few candidates around
 *               max|x|/levels by least squares error.
 *   q4_K, q5_K: per sub-block of 32 an affine fit x ~ s*L - m (L in
 *               0..nmax, m >= 0) searched over candidate scales, each refit
 *               by least squares; then the 8 scales and 8 mins are
 *               quantized to 6 bits against f16 super-scales d and dmin,
 *               and L is recomputed with the quantized values.
 *   q6_K:       per sub-block of 16 a symmetric fit with L in -32..31, the
 *               16 scales quantized to int8 against an f16 super-scale.
 */
#include "qg_quant_blocks.h"

#include "../../graph/qg_base.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/*
 * Nearest integer of v (ties to even), saturated to +-2^21.  Adding 1.5*2^23
 * leaves the rounded integer in the low mantissa bits: one IEEE add, exact
 * and the same everywhere (roundf is a libm call without SSE4.1).
 */
static int round_i(float v) {
    if (!(v > -2097152.0f)) return -2097152; /* also NaN */
    if (v > 2097152.0f) return 2097152;
    const float r = v + 12582912.0f;
    uint32_t bits;
    memcpy(&bits, &r, sizeof bits);
    return (int)(bits & 0x7fffff) - 0x400000;
}

/* f32 -> f16 -> f32: the value a stored f16 field will dequantize to. */
static float f16_round(float v) { return qg_f16_to_f32(qg_f32_to_f16(v)); }

/*
 * Symmetric fit of x[0..n) with integer levels in [-nmax, nmax-1]: returns
 * the scale s (may be negative: the sign is chosen so the largest |x| lands
 * on -nmax, which has one more level) minimizing sum (s*L - x)^2 over a few
 * candidate inverse scales, each refit by least squares.  Returns 0 for an
 * all-zero x.
 */
static float fit_symmetric(const float *x, int n, int nmax, int is_max) {
    float amax = 0, vmax = 0;
    for (int i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            vmax = x[i];
        }
    }
    if (amax < 1e-30f) return 0;
    float best_s = 0, best_err = INFINITY;
    /* Candidates from 6% wider to 40% narrower than the no-clipping scale
     * (narrower ones clip the extremes but resolve the common values
     * better).  Each pass picks levels for s, scores (s, levels) and moves s
     * to the least-squares scale for those levels. */
    for (int is = -3; is <= is_max; is += 2) {
        float s = -vmax / ((float)nmax * (1.0f + 0.02f * (float)is));
        for (int pass = 0; pass < 3; pass++) {
            const float inv = 1.0f / s;
            float sum_xl = 0, sum_l2 = 0, err = 0;
            for (int i = 0; i < n; i++) {
                const int l = clampi(round_i(inv * x[i]), -nmax, nmax - 1);
                const float e = s * (float)l - x[i];
                err += e * e;
                sum_xl += x[i] * (float)l;
                sum_l2 += (float)(l * l);
            }
            if (err < best_err) {
                best_err = err;
                best_s = s;
            }
            if (sum_l2 <= 0 || sum_xl == 0) break;
            s = sum_xl / sum_l2;
        }
    }
    return best_s;
}

/*
 * Affine fit x ~ s*L - m with L in [0, nmax] and m >= 0 (GGML's K-quant
 * convention; m >= 0 means the zero level is at or below min(x, 0)).  Tries
 * inverse scales around nmax/(max-min), refits s and m by least squares for
 * each, keeps the smallest squared error.  Writes s and m.
 */
static void fit_affine(const float *x, int n, int nmax, float *s_out, float *m_out) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    if (lo > 0) lo = 0;
    if (hi <= lo) { /* constant block (<= 0): all levels 0 */
        *s_out = 0;
        *m_out = -lo;
        return;
    }
    float best_s = (hi - lo) / (float)nmax, best_off = lo;
    float best_err = INFINITY;
    /* Candidate steps from 6% wider to 40% narrower than (hi-lo)/nmax.
     * Each pass picks levels for (s, off), scores them, and moves (s, off)
     * to the least-squares fit for those levels. */
    for (int is = -3; is <= 21; is += 2) {
        float s = (hi - lo) / ((float)nmax * (1.0f + 0.02f * (float)is));
        float off = lo;
        for (int pass = 0; pass < 3; pass++) {
            const float inv = 1.0f / s;
            float sum_l = 0, sum_l2 = 0, sum_xl = 0, sum_x = 0, err = 0;
            for (int i = 0; i < n; i++) {
                const int l = clampi(round_i(inv * (x[i] - off)), 0, nmax);
                const float e = s * (float)l + off - x[i];
                err += e * e;
                sum_l += (float)l;
                sum_l2 += (float)(l * l);
                sum_xl += (float)l * x[i];
                sum_x += x[i];
            }
            if (err < best_err) {
                best_err = err;
                best_s = s;
                best_off = off;
            }
            const float det = (float)n * sum_l2 - sum_l * sum_l;
            if (det <= 0) break;
            float s2 = ((float)n * sum_xl - sum_x * sum_l) / det;
            float off2 = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if (off2 > 0) { /* the zero level must not lie above 0 */
                off2 = 0;
                s2 = sum_xl / sum_l2;
            }
            if (!(s2 > 0)) break;
            s = s2;
            off = off2;
        }
    }
    *s_out = best_s;
    *m_out = -best_off;
}

/* ---- one block per format ------------------------------------------------ */

static void quantize_q8_0(const float *x, qg_block_q8_0 *b) {
    const float d = f16_round(fit_symmetric(x, 32, 128, 3));
    b->d = qg_f32_to_f16(d);
    for (int i = 0; i < 32; i++)
        b->qs[i] = (int8_t)(d != 0 ? clampi(round_i(x[i] / d), -128, 127) : 0);
}

static void quantize_q4_0(const float *x, qg_block_q4_0 *b) {
    const float d = f16_round(fit_symmetric(x, 32, 8, 21));
    b->d = qg_f32_to_f16(d);
    uint8_t L[32];
    for (int i = 0; i < 32; i++)
        L[i] = (uint8_t)(d != 0 ? clampi(round_i(x[i] / d), -8, 7) + 8 : 8);
    for (int j = 0; j < 16; j++) b->qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

/*
 * The K-quant scale part shared by q4_K and q5_K: fit each of the 8
 * sub-blocks, quantize scales and mins to 6 bits, pack them into scales[12],
 * write d and dmin, and return the final levels L[256] in 0..nmax.
 */
static void quantize_k_affine(const float *x, int nmax, uint16_t *d_out, uint16_t *dmin_out,
                              uint8_t scales[12], uint8_t L[QG_QK_K]) {
    float s[8], m[8], s_max = 0, m_max = 0;
    for (int j = 0; j < 8; j++) {
        fit_affine(x + 32 * j, 32, nmax, &s[j], &m[j]);
        if (s[j] > s_max) s_max = s[j];
        if (m[j] > m_max) m_max = m[j];
    }
    const float d = f16_round(s_max / 63.0f);
    const float dmin = f16_round(m_max / 63.0f);
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)(d > 0 ? clampi(round_i(s[j] / d), 0, 63) : 0);
        lm[j] = (uint8_t)(dmin > 0 ? clampi(round_i(m[j] / dmin), 0, 63) : 0);
    }
    memset(scales, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            scales[j] |= ls[j];
            scales[j + 4] |= lm[j];
        } else {
            scales[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            scales[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            scales[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
    *d_out = qg_f32_to_f16(d);
    *dmin_out = qg_f32_to_f16(dmin);
    for (int j = 0; j < 8; j++) {
        /* the same f32 products the dequantizer forms */
        const float sd = d * (float)ls[j], md = dmin * (float)lm[j];
        for (int i = 0; i < 32; i++) {
            const float v = x[32 * j + i];
            L[32 * j + i] = (uint8_t)(sd > 0 ? clampi(round_i((v + md) / sd), 0, nmax) : 0);
        }
    }
}

static void quantize_q4_K(const float *x, qg_block_q4_K *b) {
    uint8_t L[QG_QK_K];
    quantize_k_affine(x, 15, &b->d, &b->dmin, b->scales, L);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            b->qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

static void quantize_q5_K(const float *x, qg_block_q5_K *b) {
    uint8_t L[QG_QK_K];
    quantize_k_affine(x, 31, &b->d, &b->dmin, b->scales, L);
    memset(b->qh, 0, sizeof b->qh);
    for (int c = 0; c < 4; c++) {
        for (int l = 0; l < 32; l++) {
            const uint8_t lo = L[64 * c + l], hi = L[64 * c + 32 + l];
            b->qs[32 * c + l] = (uint8_t)((lo & 0xF) | ((hi & 0xF) << 4));
            b->qh[l] |= (uint8_t)(((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
        }
    }
}

static void quantize_q6_K(const float *x, qg_block_q6_K *b) {
    float s[16], s_amax = 0;
    for (int j = 0; j < 16; j++) {
        s[j] = fit_symmetric(x + 16 * j, 16, 32, 21);
        if (fabsf(s[j]) > s_amax) s_amax = fabsf(s[j]);
    }
    const float d = f16_round(s_amax / 127.0f);
    b->d = qg_f32_to_f16(d);
    uint8_t L[QG_QK_K];
    for (int j = 0; j < 16; j++) {
        const int sc = d > 0 ? clampi(round_i(s[j] / d), -128, 127) : 0;
        b->scales[j] = (int8_t)sc;
        const float sd = d * (float)sc;
        for (int i = 0; i < 16; i++) {
            const float v = x[16 * j + i];
            L[16 * j + i] = (uint8_t)(sd != 0 ? clampi(round_i(v / sd), -32, 31) + 32 : 32);
        }
    }
    for (int h = 0; h < 2; h++) {
        const uint8_t *q = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            const uint8_t q1 = q[l], q2 = q[l + 32], q3 = q[l + 64], q4 = q[l + 96];
            b->ql[64 * h + l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
            b->ql[64 * h + l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
            b->qh[32 * h + l] =
                (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

void qg_quantize_row(qg_dtype t, const float *src, void *dst, int64_t n) {
    const qg_dtype_info *info = qg_dtype_get((uint32_t)t);
    QG_ASSERT(info && info->supported && t != QG_I32);
    QG_ASSERT(n >= 0 && n % info->block_size == 0);
    const int64_t nb = n / info->block_size;
    switch (t) {
    case QG_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return;
    case QG_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = qg_f32_to_f16(src[i]);
        return;
    }
    case QG_BF16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = qg_f32_to_bf16(src[i]);
        return;
    }
    case QG_Q8_0:
        for (int64_t i = 0; i < nb; i++) quantize_q8_0(src + 32 * i, (qg_block_q8_0 *)dst + i);
        return;
    case QG_Q4_0:
        for (int64_t i = 0; i < nb; i++) quantize_q4_0(src + 32 * i, (qg_block_q4_0 *)dst + i);
        return;
    case QG_Q4_K:
        for (int64_t i = 0; i < nb; i++) quantize_q4_K(src + 256 * i, (qg_block_q4_K *)dst + i);
        return;
    case QG_Q5_K:
        for (int64_t i = 0; i < nb; i++) quantize_q5_K(src + 256 * i, (qg_block_q5_K *)dst + i);
        return;
    case QG_Q6_K:
        for (int64_t i = 0; i < nb; i++) quantize_q6_K(src + 256 * i, (qg_block_q6_K *)dst + i);
        return;
    default: QG_ABORT("qg_quantize_row: unsupported type %s", qg_dtype_name(t));
    }
}
