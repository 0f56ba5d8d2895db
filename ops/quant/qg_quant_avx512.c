/*
 * qg_quant_avx512.c - avx512 kernels (placeholder: forwards to the scalar
 * kernels until the vector versions land).
 */
#include "qg_quant_blocks.h"

float qg_quant_dot_avx512(qg_dtype t, const void *w_row, const float *x, int64_t n) {
    return qg_quant_dot_scalar(t, w_row, x, n);
}

void qg_quant_gemm_avx512(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                        const float *x, size_t x_stride, int n_cols, float *y,
                        size_t y_stride, int64_t n, float *scratch) {
    qg_quant_gemm_scalar(t, w, w_row_bytes, n_rows, x, x_stride, n_cols, y, y_stride, n,
                         scratch);
}
