/*
 * qg_quant_scalar.c - reference dequantization and the scalar kernels.
 *
 * Dequantization follows GGML's dequantize_row_* operation by operation (the
 * same f32 products and differences in the same order), so the values are
 * bit-identical to libggml's.  This file is compiled without FMA flags and in
 * ISO C mode (no fp-contract), so no product-sum is fused.
 *
 * The scalar dot dequantizes one block at a time into a stack buffer and
 * accumulates w*x in f32 with four accumulators.
 */
#include "qg_quant_blocks.h"

#include "../../graph/qg_base.h"

#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static void dequant_q4_0(const qg_block_q4_0 *b, float *y) {
    const float d = qg_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        const int x0 = (b->qs[j] & 0x0F) - 8;
        const int x1 = (b->qs[j] >> 4) - 8;
        y[j] = (float)x0 * d;
        y[j + 16] = (float)x1 * d;
    }
}

static void dequant_q8_0(const qg_block_q8_0 *b, float *y) {
    const float d = qg_f16_to_f32(b->d);
    for (int j = 0; j < 32; j++) y[j] = (float)b->qs[j] * d;
}

static void dequant_q4_K(const qg_block_q4_K *b, float *y) {
    const float d = qg_f16_to_f32(b->d);
    const float min = qg_f16_to_f32(b->dmin);
    const uint8_t *q = b->qs;
    for (int c = 0; c < 4; c++) {
        uint8_t sc, m;
        qg_quant_scale_min_k4(2 * c, b->scales, &sc, &m);
        const float d1 = d * (float)sc, m1 = min * (float)m;
        qg_quant_scale_min_k4(2 * c + 1, b->scales, &sc, &m);
        const float d2 = d * (float)sc, m2 = min * (float)m;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        q += 32;
    }
}

static void dequant_q5_K(const qg_block_q5_K *b, float *y) {
    const float d = qg_f16_to_f32(b->d);
    const float min = qg_f16_to_f32(b->dmin);
    const uint8_t *ql = b->qs;
    uint8_t u1 = 1, u2 = 2;
    for (int c = 0; c < 4; c++) {
        uint8_t sc, m;
        qg_quant_scale_min_k4(2 * c, b->scales, &sc, &m);
        const float d1 = d * (float)sc, m1 = min * (float)m;
        qg_quant_scale_min_k4(2 * c + 1, b->scales, &sc, &m);
        const float d2 = d * (float)sc, m2 = min * (float)m;
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (float)((ql[l] & 0xF) + (b->qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (float)((ql[l] >> 4) + (b->qh[l] & u2 ? 16 : 0)) - m2;
        ql += 32;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

static void dequant_q6_K(const qg_block_q6_K *b, float *y) {
    const float d = qg_f16_to_f32(b->d);
    const uint8_t *ql = b->ql;
    const uint8_t *qh = b->qh;
    const int8_t *sc = b->scales;
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * (float)sc[is + 0] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

void qg_quant_dequant_block(qg_dtype t, const void *blk, float *dst) {
    switch (t) {
    case QG_Q4_0: dequant_q4_0(blk, dst); return;
    case QG_Q8_0: dequant_q8_0(blk, dst); return;
    case QG_Q4_K: dequant_q4_K(blk, dst); return;
    case QG_Q5_K: dequant_q5_K(blk, dst); return;
    case QG_Q6_K: dequant_q6_K(blk, dst); return;
    default: QG_ABORT("qg_quant_dequant_block: not a block type: %s", qg_dtype_name(t));
    }
}

/* True for the types this module handles. */
static bool type_ok(qg_dtype t) {
    switch (t) {
    case QG_F32: case QG_F16: case QG_BF16: case QG_Q4_0: case QG_Q8_0:
    case QG_Q4_K: case QG_Q5_K: case QG_Q6_K:
        return true;
    default:
        return false;
    }
}

void qg_dequant_row(qg_dtype t, const void *src, float *dst, int64_t n) {
    if (!type_ok(t)) QG_ABORT("qg_dequant_row: unsupported type %s", qg_dtype_name(t));
    const int bs = qg_dtype_block_size(t);
    QG_ASSERT(n >= 0 && n % bs == 0);
    switch (t) {
    case QG_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case QG_F16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qg_f16_to_f32(h[i]);
        return;
    }
    case QG_BF16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qg_bf16_to_f32(h[i]);
        return;
    }
    default: {
        const size_t ts = (size_t)qg_dtype_get((uint32_t)t)->type_size;
        const char *p = src;
        for (int64_t b = 0; b < n / bs; b++)
            qg_quant_dequant_block(t, p + (size_t)b * ts, dst + b * bs);
        return;
    }
    }
}

void qg_dequant_row_f64(qg_dtype t, const void *src, double *dst, int64_t n) {
    if (!type_ok(t)) QG_ABORT("qg_dequant_row_f64: unsupported type %s", qg_dtype_name(t));
    const int bs = qg_dtype_block_size(t);
    QG_ASSERT(n >= 0 && n % bs == 0);
    /* Every dequantized weight is an f32 value by definition (the kernels
     * multiply exactly that value), so convert the f32 result block-wise. */
    float tmp[QG_QK_K]; /* (block) */
    const int chunk = bs > 1 ? bs : QG_QK_K;
    const size_t chunk_bytes = qg_dtype_row_bytes(t, chunk);
    const char *p = src;
    for (int64_t i = 0; i < n; i += chunk) {
        const int m = (int)QG_MIN((int64_t)chunk, n - i);
        qg_dequant_row(t, p, tmp, m);
        for (int j = 0; j < m; j++) dst[i + j] = (double)tmp[j];
        p += chunk_bytes;
    }
}

/* f32 dot of two arrays with four accumulators (n any). */
static float dot_f32(const float *a, const float *b, int64_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

float qg_quant_dot_scalar(qg_dtype t, const void *w_row, const float *x, int64_t n) {
    if (!type_ok(t)) QG_ABORT("qg_quant_dot: unsupported type %s", qg_dtype_name(t));
    if (t == QG_F32) return dot_f32(w_row, x, n);
    /* Other types: dequantize a chunk, then the f32 dot; one accumulator
     * per chunk summed into the total. */
    const int bs = qg_dtype_block_size(t);
    QG_ASSERT(n >= 0 && n % bs == 0);
    float tmp[QG_QK_K]; /* (chunk) */
    const int chunk = bs > 1 ? bs : QG_QK_K;
    const size_t chunk_bytes = qg_dtype_row_bytes(t, chunk);
    const char *p = w_row;
    float sum = 0;
    for (int64_t i = 0; i < n; i += chunk) {
        const int m = (int)QG_MIN((int64_t)chunk, n - i);
        qg_dequant_row(t, p, tmp, m);
        sum += dot_f32(tmp, x + i, m);
        p += chunk_bytes;
    }
    return sum;
}

void qg_quant_gemm_scalar(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                          const float *x, size_t x_stride, int n_cols, float *y,
                          size_t y_stride, int64_t n, float *scratch) {
    QG_ASSERT(n_rows >= 0 && n_cols >= 0);
    const char *wb = w;
    if (n_cols < 3 || t == QG_F32) {
        for (int c = 0; c < n_cols; c++)
            for (int r = 0; r < n_rows; r++)
                y[(size_t)c * y_stride + (size_t)r] = qg_quant_dot_scalar(
                    t, wb + (size_t)r * w_row_bytes, x + (size_t)c * x_stride, n);
        return;
    }
    /* Dequantize up to QG_QUANT_GEMM_ROWS rows once, reuse for all columns. */
    for (int r0 = 0; r0 < n_rows; r0 += QG_QUANT_GEMM_ROWS) {
        const int nr = QG_MIN(QG_QUANT_GEMM_ROWS, n_rows - r0);
        for (int r = 0; r < nr; r++)
            qg_dequant_row(t, wb + (size_t)(r0 + r) * w_row_bytes, scratch + (size_t)r * (size_t)n, n);
        for (int c = 0; c < n_cols; c++)
            for (int r = 0; r < nr; r++)
                y[(size_t)c * y_stride + (size_t)(r0 + r)] =
                    dot_f32(scratch + (size_t)r * (size_t)n, x + (size_t)c * x_stride, n);
    }
}

/* The scalar thin product: one dot per (row, column). */
void qg_quant_gemm_cols_scalar(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                               const float *const *x, int n_cols, float *y, size_t y_stride,
                               int64_t n) {
    QG_ASSERT(n_rows >= 0 && n_cols >= 0);
    const char *wb = w;
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < n_cols; c++)
            y[(size_t)c * y_stride + (size_t)r] =
                qg_quant_dot_scalar(t, wb + (size_t)r * w_row_bytes, x[c], n);
}
