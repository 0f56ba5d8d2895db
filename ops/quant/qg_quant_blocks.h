/*
 * qg_quant_blocks.h - GGML block layouts and the per-level kernel entry
 * points (internal to ops/quant/).
 *
 * The structs below are byte-for-byte GGML's blocks (ggml-common.h); every
 * half-precision field holds IEEE binary16 bits.  Dequantized values are
 * computed in f32 in exactly GGML's operation order, so they match
 * dequantize_row_* of libggml bit for bit (tests/test_quant.c checks this).
 *
 * Layout summary (value of element i of a block):
 *   q4_0 (32 el.): d*(nibble-8); byte j holds element j (low nibble) and
 *                  element j+16 (high nibble).
 *   q8_0 (32 el.): d*qs[i].
 *   q4_K (256 el.): 8 sub-blocks of 32, 6-bit scale sc_j and min m_j packed
 *                  in scales[12] (see qg_quant_scale_min_k4); element
 *                  64c+l (l<32) is (d*sc_{2c})*(qs[32c+l]&15) - dmin*m_{2c},
 *                  element 64c+32+l uses qs[32c+l]>>4 and sub-block 2c+1.
 *   q5_K (256 el.): as q4_K plus a fifth bit: bit 2c of qh[l] for element
 *                  64c+l, bit 2c+1 for element 64c+32+l (adds 16).
 *   q6_K (256 el.): 16 sub-blocks of 16 with int8 scales[16]; value is
 *                  (d*scales[i/16])*(q-32), q a 6-bit code: for half h
 *                  (128 el.) and l<32, ql[64h+l] holds elements 128h+l (low)
 *                  and 128h+64+l (high nibble), ql[64h+32+l] holds 128h+32+l
 *                  and 128h+96+l; qh[32h+l] bits 0-1,2-3,4-5,6-7 are the
 *                  high two bits of elements 128h+l, +32, +64, +96.
 */
#ifndef QG_QUANT_BLOCKS_H
#define QG_QUANT_BLOCKS_H

#include "qg_quant.h"

#include <stdint.h>
#include <string.h>

typedef struct qg_block_q4_0 {
    uint16_t d;      /* f16 scale */
    uint8_t qs[16];  /* (32) nibbles */
} qg_block_q4_0;

typedef struct qg_block_q8_0 {
    uint16_t d;     /* f16 scale */
    int8_t qs[32];  /* (32) */
} qg_block_q8_0;

typedef struct qg_block_q4_K {
    uint16_t d;          /* f16 super-scale of the sub-block scales */
    uint16_t dmin;       /* f16 super-scale of the sub-block mins */
    uint8_t scales[12];  /* 8 x (6-bit scale, 6-bit min), packed */
    uint8_t qs[128];     /* (256) nibbles */
} qg_block_q4_K;

typedef struct qg_block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[32];   /* fifth bits */
    uint8_t qs[128];  /* low nibbles */
} qg_block_q5_K;

typedef struct qg_block_q6_K {
    uint8_t ql[128];    /* low 4 bits */
    uint8_t qh[64];     /* high 2 bits */
    int8_t scales[16];  /* per 16 elements */
    uint16_t d;         /* f16 super-scale */
} qg_block_q6_K;

_Static_assert(sizeof(qg_block_q4_0) == 18, "q4_0 block size");
_Static_assert(sizeof(qg_block_q8_0) == 34, "q8_0 block size");
_Static_assert(sizeof(qg_block_q4_K) == 144, "q4_K block size");
_Static_assert(sizeof(qg_block_q5_K) == 176, "q5_K block size");
_Static_assert(sizeof(qg_block_q6_K) == 210, "q6_K block size");

/* Sub-block j (0..7) scale and min of a q4_K / q5_K block (6 bits each):
 * j < 4: low 6 bits of q[j] and q[j+4]; j >= 4: low/high nibble of q[j+4]
 * plus the top two bits of q[j-4] / q[j] as bits 4-5. */
static inline void qg_quant_scale_min_k4(int j, const uint8_t *q, uint8_t *sc,
                                         uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* All 8 scales and mins of a q4_K / q5_K block at once (same values as
 * qg_quant_scale_min_k4 for j = 0..7), with 32-bit word arithmetic. */
static inline void qg_quant_unpack_k4(const uint8_t *q, uint8_t sc[8], uint8_t m[8]) {
    uint32_t a, b, c;
    memcpy(&a, q, 4);
    memcpy(&b, q + 4, 4);
    memcpy(&c, q + 8, 4);
    const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, lo2 = 0x03030303u;
    const uint32_t s0 = a & lo6, m0 = b & lo6;
    const uint32_t s1 = (c & lo4) | (((a >> 6) & lo2) << 4);
    const uint32_t m1 = ((c >> 4) & lo4) | (((b >> 6) & lo2) << 4);
    memcpy(sc, &s0, 4);
    memcpy(sc + 4, &s1, 4);
    memcpy(m, &m0, 4);
    memcpy(m + 4, &m1, 4);
}

/* Dequantize one block of type t (block_size elements) into dst, in f32,
 * in GGML's operation order.  t must be a supported quantized type. */
void qg_quant_dequant_block(qg_dtype t, const void *blk, float *dst);

/* The gemm's row blocking: scratch holds this many dequantized rows. */
#define QG_QUANT_GEMM_ROWS 8

/* Per-level kernels (signatures of qg_quant_kernels' slots). */
float qg_quant_dot_scalar(qg_dtype t, const void *w_row, const float *x,
                          int64_t n);
void qg_quant_gemm_scalar(qg_dtype t, const void *w, size_t w_row_bytes,
                          int n_rows, const float *x, size_t x_stride,
                          int n_cols, float *y, size_t y_stride, int64_t n,
                          float *scratch);
float qg_quant_dot_avx2(qg_dtype t, const void *w_row, const float *x,
                        int64_t n);
void qg_quant_gemm_avx2(qg_dtype t, const void *w, size_t w_row_bytes,
                        int n_rows, const float *x, size_t x_stride,
                        int n_cols, float *y, size_t y_stride, int64_t n,
                        float *scratch);
float qg_quant_dot_avx512(qg_dtype t, const void *w_row, const float *x,
                          int64_t n);
void qg_quant_gemm_avx512(qg_dtype t, const void *w, size_t w_row_bytes,
                          int n_rows, const float *x, size_t x_stride,
                          int n_cols, float *y, size_t y_stride, int64_t n,
                          float *scratch);
void qg_quant_gemm_cols_scalar(qg_dtype t, const void *w, size_t w_row_bytes,
                               int n_rows, const float *const *x, int n_cols,
                               float *y, size_t y_stride, int64_t n);
void qg_quant_gemm_cols_avx2(qg_dtype t, const void *w, size_t w_row_bytes,
                             int n_rows, const float *const *x, int n_cols,
                             float *y, size_t y_stride, int64_t n);
void qg_quant_gemm_cols_avx512(qg_dtype t, const void *w, size_t w_row_bytes,
                               int n_rows, const float *const *x, int n_cols,
                               float *y, size_t y_stride, int64_t n);

#endif
