/*
 * qg_quant.h - weight formats: dequantize, quantize, and dot products.
 *
 * Block layouts are bit-identical to GGML's (F32, F16, BF16, Q8_0, Q4_0,
 * Q4_K, Q5_K, Q6_K), so GGUF tensors are used in place, straight from the
 * mapped file.
 *
 * Numerics: activations are NEVER quantized on the CPU path.  Every dot
 * product multiplies a dequantized weight (exactly representable in f32)
 * by an f32 activation and accumulates in f32.  The GPU executors follow the
 * same rule for decode, so all executors approximate the same float64
 * reference and cannot drift apart by construction.
 *
 * SIMD: the first call of qg_quant_kernels() picks AVX-512, AVX2+FMA or
 * scalar code at run time (cpuid); QG_SIMD=scalar|avx2|avx512 in the
 * environment forces a level (for tests).  No global mutable state: the
 * selected table is returned to the caller, who keeps it.
 */
#ifndef QG_QUANT_H
#define QG_QUANT_H

#include "../../graph/qg_dtype.h"

#include <stddef.h>
#include <stdint.h>

typedef enum qg_simd_level {
    QG_SIMD_SCALAR = 0,
    QG_SIMD_AVX2 = 1,
    QG_SIMD_AVX512 = 2,
} qg_simd_level;

/* One weight format's kernels at one SIMD level. */
typedef struct qg_quant_kernels {
    qg_simd_level level;
    /* dot(w_row[0..n), x[0..n)) with w in format t; n multiple of block. */
    float (*dot)(qg_dtype t, const void *w_row, const float *x, int64_t n);
    /*
     * Tile product for prefill / batched matmul:
     *   y[c * y_stride + r] = dot(row r of w, x + c * x_stride)
     * for r in [0, n_rows), c in [0, n_cols).  Row r of w starts at
     * (const char *)w + r * w_row_bytes.  scratch must hold at least
     * qg_quant_gemm_scratch_floats(n, n_rows) floats (caller-owned, so
     * nothing is allocated here).
     */
    void (*gemm)(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                 const float *x, size_t x_stride, int n_cols, float *y,
                 size_t y_stride, int64_t n, float *scratch);
    /*
     * Thin product (few columns, e.g. the tokens routed to one expert):
     *   y[c * y_stride + r] = dot(row r of w, x[c])
     * for r in [0, n_rows), c in [0, n_cols); columns are separate
     * pointers (nothing is gathered) and no scratch is used.  Each block of
     * weights is decoded once into registers and multiplied into up to 8
     * columns, so it beats gemm's dequantize-to-scratch for small n_cols.
     * Every y element is computed by the same operations whatever n_rows
     * and n_cols are (a column's result does not depend on its neighbours).
     */
    void (*gemm_cols)(qg_dtype t, const void *w, size_t w_row_bytes, int n_rows,
                      const float *const *x, int n_cols, float *y, size_t y_stride,
                      int64_t n);
} qg_quant_kernels;

/* Kernels for the best level this CPU has (or QG_SIMD's choice). */
qg_quant_kernels qg_quant_kernels_best(void);
/* Kernels at a given level; falls back to the best level <= `level` that
 * the CPU supports.  */
qg_quant_kernels qg_quant_kernels_at(qg_simd_level level);
const char *qg_simd_level_name(qg_simd_level level);

/* Floats of scratch the gemm needs for rows of n elements, n_rows rows. */
size_t qg_quant_gemm_scratch_floats(int64_t n, int n_rows);

/* Scalar reference dequantization of n elements (n multiple of block). */
void qg_dequant_row(qg_dtype t, const void *src, float *dst, int64_t n);
/* Same into float64, for the reference computations. */
void qg_dequant_row_f64(qg_dtype t, const void *src, double *dst, int64_t n);

/*
 * Quantize n floats into format t (n multiple of the block size).  A
 * deterministic scalar quantizer (same bits on every machine for the same
 * input) of reasonable quality (K-quants: per-sub-block scale/min search).
 * Used by synth and by the tests.
 */
void qg_quantize_row(qg_dtype t, const float *src, void *dst, int64_t n);

#endif
