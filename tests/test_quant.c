/*
 * test_quant.c - weight formats: layouts, quantizer, dot and gemm kernels.
 *
 * Checks, for F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K:
 *   (a) hand-built blocks: scale bytes and codes set by hand, expected values
 *       computed here from the layout description (GGML's ggml-common.h),
 *       compared exactly, plus a few literal values worked out by hand;
 *   (b) quantize -> dequantize relative RMS error on Gaussian rows, within
 *       the bounds stated at quant_bound(); the quantizer is deterministic
 *       (same bytes twice) and handles zero / constant / outlier rows;
 *   (c) dot at every SIMD level this CPU has against a float64 dot of
 *       qg_dequant_row_f64 x activation; one-hot activations return the
 *       dequantized weight exactly (so SIMD decoding == reference decoding);
 *   (d) gemm for every tile size n_rows 1..9 x n_cols 1..17 against float64,
 *       with NaN-poisoned outputs: every element written, padding untouched;
 *   (e) qg_dequant_row_f64 == (double)qg_dequant_row exactly (random bytes);
 *   (f) the real GGML (libggml-base.so, dlopen): its dequantize_row_* on our
 *       blocks and ours on its quantize_row_*_ref blocks are bit-identical.
 *       Library path: env QG_GGML_BASE_LIB, else the node-llama-cpp copy;
 *       when absent the case is skipped with the reason printed.
 *
 * Tolerance of the dot / gemm checks (the only rounding is the f32
 * accumulation, as weights decode exactly):
 *   |got - ref| <= 1e-5 * sum_i |w_i x_i| + 1e-30.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "graph/qg_base.h"
#include "ops/quant/qg_quant.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DOT_RTOL 1e-5

static const qg_dtype ALL_TYPES[] = {QG_F32, QG_F16, QG_BF16, QG_Q8_0,
                                     QG_Q4_0, QG_Q4_K, QG_Q5_K, QG_Q6_K};

/* ---- helpers ------------------------------------------------------------- */

/* splitmix64: a small seeded generator, one per test case. */
typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

static float rng_gauss(rng *r) {
    const double u1 = rng_unit(r) + 1e-300, u2 = rng_unit(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static void fill_nan(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = NAN;
}

/* The SIMD levels this CPU runs (qg_quant_kernels_at returns them as is). */
static int cpu_levels(qg_simd_level out[3]) {
    int n = 0;
    for (int l = QG_SIMD_SCALAR; l <= QG_SIMD_AVX512; l++)
        if (qg_quant_kernels_at((qg_simd_level)l).level == (qg_simd_level)l) out[n++] = (qg_simd_level)l;
    return n;
}

/* Quantize a Gaussian row of n (scale varies per 256 to exercise scales). */
static void random_row(rng *r, qg_dtype t, int64_t n, float *f32, void *q) {
    for (int64_t i = 0; i < n; i++) {
        const float scale = 0.05f + (float)((i / 256) % 5) * 0.7f;
        f32[i] = scale * rng_gauss(r);
    }
    qg_quantize_row(t, f32, q, n);
}

/* ---- (a) hand-built blocks ------------------------------------------------ */

/*
 * Layout facts used below (GGML ggml-common.h / dequantize_row_*):
 *   f16 bits 0x3C00 = 1, 0x3800 = 0.5, 0x3400 = 0.25, 0x4000 = 2.
 *   q8_0: {f16 d; int8 qs[32]}, value d*qs[i].
 *   q4_0: {f16 d; u8 qs[16]}, element j = low nibble of qs[j], element
 *         j+16 = high nibble; value d*(nibble-8).
 *   q4_K: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}.  Sub-block j (32
 *         elements) has 6-bit scale sc_j and min m_j: for j<4, sc_j = low 6
 *         bits of scales[j], m_j = low 6 bits of scales[j+4]; for j>=4,
 *         sc_j = low nibble of scales[j+4] | (top 2 bits of scales[j-4]) << 4,
 *         m_j = high nibble of scales[j+4] | (top 2 bits of scales[j]) << 4.
 *         Element 64c+l (l<32) is the low nibble of qs[32c+l] in sub-block
 *         2c, element 64c+32+l the high nibble in sub-block 2c+1; value
 *         (d*sc_j)*q - dmin*m_j.
 *   q5_K: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as q4_K,
 *         plus 16 when bit 2c (low-nibble element) / 2c+1 (high) of qh[l].
 *   q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}.  Element e: half
 *         h=e/128, r=e%128, k=r/32, l=r%32; low 4 bits from ql[64h+l+32*(k&1)]
 *         (low nibble for k<2, high for k>=2), high 2 bits = bits 2k..2k+1
 *         of qh[32h+l]; value (d*scales[e/16])*(q-32).
 */

/* sub-block scales and mins used for the q4_K / q5_K blocks, and their
 * packing into scales[12] worked out by hand from the rules above */
static const uint8_t K_SC[8] = {1, 2, 3, 4, 17, 33, 50, 63};
static const uint8_t K_M[8] = {0, 5, 10, 63, 16, 32, 48, 1};
static const uint8_t K_PACKED[12] = {0x41, 0x82, 0xC3, 0xC4, 0x40, 0x85,
                                     0xCA, 0x3F, 0x01, 0x01, 0x02, 0x1F};

static void check_exact(const float *got, const double *want, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if ((double)got[i] != want[i]) {
            fprintf(stderr, "%s: element %d: got %.9g want %.9g\n", what, i, got[i], want[i]);
            fail();
        }
    }
}

static void test_known_plain(void **state) {
    (void)state;
    const uint16_t h[6] = {0x3C00, 0xC000, 0x3555, 0x0001, 0x7BFF, 0x8000};
    /* 0x3555 = 1.0101010101b * 2^-2 = 1365/4096 */
    const double hv[6] = {1.0, -2.0, 1365.0 / 4096.0, ldexp(1.0, -24), 65504.0, -0.0};
    float out[6];
    qg_dequant_row(QG_F16, h, out, 6);
    check_exact(out, hv, 6, "f16");
    assert_true(signbit(out[5]));
    const uint16_t b[4] = {0x3F80, 0xC0A0, 0x3E20, 0x4049};
    /* 0x4049 = 1.1001001b * 2 = 3.140625 */
    const double bv[4] = {1.0, -5.0, 0.15625, 3.140625};
    qg_dequant_row(QG_BF16, b, out, 4);
    check_exact(out, bv, 4, "bf16");
    const float f[3] = {1.5f, -0.0f, 1e-30f};
    const double fv[3] = {1.5, 0.0, (double)1e-30f};
    qg_dequant_row(QG_F32, f, out, 3);
    check_exact(out, fv, 3, "f32");
}

static void test_known_q8_0_q4_0(void **state) {
    (void)state;
    uint8_t blk[34];
    float out[32];
    double want[32];
    /* q8_0: d = 0.5, qs[i] = i - 16 */
    blk[0] = 0x00, blk[1] = 0x38; /* little-endian 0x3800 */
    for (int i = 0; i < 32; i++) blk[2 + i] = (uint8_t)(int8_t)(i - 16);
    for (int i = 0; i < 32; i++) want[i] = 0.5 * (i - 16);
    qg_dequant_row(QG_Q8_0, blk, out, 32);
    check_exact(out, want, 32, "q8_0");
    assert_true(out[0] == -8.0f && out[31] == 7.5f);

    /* q4_0: d = 2, qs[j] = j | (15-j) << 4 */
    blk[0] = 0x00, blk[1] = 0x40;
    for (int j = 0; j < 16; j++) blk[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    for (int j = 0; j < 16; j++) {
        want[j] = 2.0 * (j - 8);
        want[j + 16] = 2.0 * ((15 - j) - 8);
    }
    qg_dequant_row(QG_Q4_0, blk, out, 32);
    check_exact(out, want, 32, "q4_0");
    assert_true(out[0] == -16.0f && out[15] == 14.0f && out[16] == 14.0f && out[31] == -16.0f);
}

/* Low nibble of q4_K/q5_K byte l of chunk c, and high nibble (test pattern). */
static int pat_lo(int c, int l) { return (l + 3 * c) & 15; }
static int pat_hi(int c, int l) { return (15 - l + c) & 15; }

static void test_known_q4_K(void **state) {
    (void)state;
    uint8_t blk[144];
    blk[0] = 0x00, blk[1] = 0x3C; /* d = 1 */
    blk[2] = 0x00, blk[3] = 0x38; /* dmin = 0.5 */
    memcpy(blk + 4, K_PACKED, 12);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) blk[16 + 32 * c + l] = (uint8_t)(pat_lo(c, l) | (pat_hi(c, l) << 4));
    double want[256];
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            want[64 * c + l] = 1.0 * K_SC[2 * c] * pat_lo(c, l) - 0.5 * K_M[2 * c];
            want[64 * c + 32 + l] = 1.0 * K_SC[2 * c + 1] * pat_hi(c, l) - 0.5 * K_M[2 * c + 1];
        }
    float out[256];
    qg_dequant_row(QG_Q4_K, blk, out, 256);
    check_exact(out, want, 256, "q4_K");
    /* by hand: element 0: sc 1, q 0, m 0 -> 0; element 33: sub-block 1
     * (sc 2, m 5), high nibble of qs[1] = 14 -> 28 - 2.5; element 255:
     * sub-block 7 (sc 63, m 1), high nibble of qs[127] = (15-31+3)&15 = 3
     * -> 189 - 0.5; element 192: sub-block 6 (sc 50, m 48), low nibble of
     * qs[96] = 9 -> 450 - 24 */
    assert_true(out[0] == 0.0f && out[33] == 25.5f && out[255] == 188.5f && out[192] == 426.0f);
}

static void test_known_q5_K(void **state) {
    (void)state;
    uint8_t blk[176];
    blk[0] = 0x00, blk[1] = 0x3C; /* d = 1 */
    blk[2] = 0x00, blk[3] = 0x38; /* dmin = 0.5 */
    memcpy(blk + 4, K_PACKED, 12);
    uint8_t *qh = blk + 16, *qs = blk + 48;
    for (int l = 0; l < 32; l++) qh[l] = (uint8_t)(l * 37 + 11);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) qs[32 * c + l] = (uint8_t)(pat_lo(c, l) | (pat_hi(c, l) << 4));
    double want[256];
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            const int qlo = pat_lo(c, l) + ((qh[l] >> (2 * c)) & 1) * 16;
            const int qhi = pat_hi(c, l) + ((qh[l] >> (2 * c + 1)) & 1) * 16;
            want[64 * c + l] = 1.0 * K_SC[2 * c] * qlo - 0.5 * K_M[2 * c];
            want[64 * c + 32 + l] = 1.0 * K_SC[2 * c + 1] * qhi - 0.5 * K_M[2 * c + 1];
        }
    float out[256];
    qg_dequant_row(QG_Q5_K, blk, out, 256);
    check_exact(out, want, 256, "q5_K");
    /* by hand: qh[0] = 11 = 0b1011: element 0 (bit 0 set): q = 0+16, sc 1,
     * m 0 -> 16; element 32 (bit 1 set): q = 15+16, sc 2, m 5 -> 62 - 2.5;
     * element 64 (bit 2 clear): q = 3, sc 3, m 10 -> 9 - 5 */
    assert_true(out[0] == 16.0f && out[32] == 59.5f && out[64] == 4.0f);
}

static void test_known_q6_K(void **state) {
    (void)state;
    uint8_t blk[210];
    uint8_t *ql = blk, *qh = blk + 128;
    int8_t sc[16];
    for (int i = 0; i < 128; i++) ql[i] = (uint8_t)(i * 29 + 7);
    for (int i = 0; i < 64; i++) qh[i] = (uint8_t)(i * 53 + 5);
    for (int j = 0; j < 16; j++) sc[j] = (int8_t)(j * 17 - 128); /* -128 .. 127 */
    memcpy(blk + 192, sc, 16);
    blk[208] = 0x00, blk[209] = 0x34; /* d = 0.25 */
    double want[256];
    for (int e = 0; e < 256; e++) {
        const int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
        const uint8_t b = ql[64 * h + l + 32 * (k & 1)];
        const int lo4 = k < 2 ? (b & 15) : (b >> 4);
        const int hi2 = (qh[32 * h + l] >> (2 * k)) & 3;
        want[e] = (0.25 * sc[e / 16]) * ((lo4 | (hi2 << 4)) - 32);
    }
    float out[256];
    qg_dequant_row(QG_Q6_K, blk, out, 256);
    check_exact(out, want, 256, "q6_K");
    /* by hand: element 0: ql[0] = 7 (low 7), qh[0] = 5 (bits 0-1 = 1) ->
     * q = 7 + 16 = 23, scale -128 -> 0.25*-128*(23-32) = 288 */
    assert_true(out[0] == 288.0f);
}

/* ---- (b) quantizer quality ------------------------------------------------ */

/*
 * Relative RMS error bound of quantize -> dequantize on N(0,1) data
 * (sqrt(sum err^2 / sum x^2)).  Measured with this quantizer: f16 0.021%,
 * bf16 0.17%, q8_0 0.52%, q6_K 1.72%, q5_K 3.63%, q4_K 7.08%, q4_0 8.12%;
 * the bounds leave ~5-15% headroom for other seeds.
 */
static double quant_bound(qg_dtype t) {
    switch (t) {
    case QG_F32: return 0.0;
    case QG_F16: return 0.0003;
    case QG_BF16: return 0.0025;
    case QG_Q8_0: return 0.0058;
    case QG_Q6_K: return 0.0190;
    case QG_Q5_K: return 0.0390;
    case QG_Q4_K: return 0.0760;
    case QG_Q4_0: return 0.0860;
    default: return -1;
    }
}

static void test_quantize_error(void **state) {
    (void)state;
    const int64_t n = 256 * 32;
    float *x = xmalloc((size_t)n * 4), *y = xmalloc((size_t)n * 4);
    void *q = xmalloc((size_t)n * 4), *q2 = xmalloc((size_t)n * 4);
    for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
        const qg_dtype t = ALL_TYPES[ti];
        rng r = {1000 + ti};
        for (int64_t i = 0; i < n; i++) x[i] = rng_gauss(&r);
        const size_t rb = qg_dtype_row_bytes(t, n);
        memset(q, 0x7F, rb);
        qg_quantize_row(t, x, q, n);
        fill_nan(y, (size_t)n);
        qg_dequant_row(t, q, y, n);
        double e2 = 0, x2 = 0;
        for (int64_t i = 0; i < n; i++) {
            assert_true(isfinite(y[i]));
            e2 += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            x2 += (double)x[i] * x[i];
        }
        const double rel = sqrt(e2 / x2);
        printf("quantize %-5s rel rms err %.4f%% (bound %.2f%%)\n", qg_dtype_name(t), 100 * rel,
               100 * quant_bound(t));
        assert_true(rel <= quant_bound(t));
        /* deterministic: the same bytes again */
        memset(q2, 0x55, rb);
        qg_quantize_row(t, x, q2, n);
        assert_memory_equal(q, q2, rb);
    }
    free(x), free(y), free(q), free(q2);
}

/* Zero, constant, all-positive, and single-outlier rows stay finite and
 * close (zero rows exactly zero; the outlier itself within 1%). */
static void test_quantize_edges(void **state) {
    (void)state;
    const int64_t n = 512;
    float x[512], y[512];
    uint8_t q[512 * 4];
    for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
        const qg_dtype t = ALL_TYPES[ti];
        rng r = {2000 + ti};
        for (int kind = 0; kind < 4; kind++) {
            for (int64_t i = 0; i < n; i++) {
                switch (kind) {
                case 0: x[i] = 0; break;
                case 1: x[i] = -0.75f; break;
                case 2: x[i] = 1.0f + fabsf(rng_gauss(&r)); break;
                default: x[i] = 0.01f * rng_gauss(&r); break;
                }
            }
            if (kind == 3) x[77] = 100.0f;
            qg_quantize_row(t, x, q, n);
            fill_nan(y, (size_t)n);
            qg_dequant_row(t, q, y, n);
            double e2 = 0, x2 = 0;
            for (int64_t i = 0; i < n; i++) {
                assert_true(isfinite(y[i]));
                e2 += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
                x2 += (double)x[i] * x[i];
            }
            if (kind == 0) {
                assert_true(e2 == 0);
            } else {
                /* relative error on these easy rows within the Gaussian bound */
                assert_true(sqrt(e2 / x2) <= quant_bound(t) + 1e-9);
            }
            if (kind == 3) assert_true(fabs(y[77] - 100.0) <= 1.0);
        }
    }
}

/* ---- (c) dot ------------------------------------------------------------- */

static void check_dot_case(qg_quant_kernels k, qg_dtype t, int64_t n, rng *r) {
    const size_t rb = qg_dtype_row_bytes(t, n);
    float *wf = xmalloc((size_t)n * 4);
    /* x offset by one float so it is not 64-byte aligned */
    float *xbuf = xmalloc((size_t)(n + 1) * 4), *x = xbuf + 1;
    double *wd = xmalloc((size_t)n * 8);
    void *w = xmalloc(rb);
    random_row(r, t, n, wf, w);
    for (int64_t i = 0; i < n; i++) x[i] = rng_gauss(r);
    qg_dequant_row_f64(t, w, wd, n);
    double ref = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        ref += wd[i] * x[i];
        mag += fabs(wd[i] * x[i]);
    }
    const float got = k.dot(t, w, x, n);
    const double err = fabs((double)got - ref);
    if (!(err <= DOT_RTOL * mag + 1e-30)) {
        fprintf(stderr, "dot %s %s n=%lld: got %.9g ref %.9g (sum|wx| %.3g)\n",
                qg_simd_level_name(k.level), qg_dtype_name(t), (long long)n, got, ref, mag);
        fail();
    }
    free(wf), free(xbuf), free(wd), free(w);
}

static void test_dot(void **state) {
    (void)state;
    qg_simd_level lv[3];
    const int nl = cpu_levels(lv);
    assert_true(nl >= 1 && lv[0] == QG_SIMD_SCALAR);
    const int64_t ns[] = {1, 7, 32, 33, 96, 100, 256, 1000, 2048, 4096};
    for (int li = 0; li < nl; li++) {
        const qg_quant_kernels k = qg_quant_kernels_at(lv[li]);
        for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
            const qg_dtype t = ALL_TYPES[ti];
            for (size_t ni = 0; ni < QG_ARRAY_LEN(ns); ni++) {
                if (ns[ni] % qg_dtype_block_size(t)) continue;
                for (int rep = 0; rep < 3; rep++) {
                    rng r = {((uint64_t)li << 40) ^ (ti << 32) ^ ((uint64_t)ni << 16) ^ (uint64_t)rep};
                    check_dot_case(k, t, ns[ni], &r);
                }
            }
        }
    }
}

/*
 * dot(w, e_j) must be exactly w_j: the SIMD decoders produce the reference
 * (GGML) values bit for bit.  Rows are random bytes with finite f16
 * scales, so every code and scale pattern occurs.
 */
static void random_blocks(rng *r, qg_dtype t, void *dst, int64_t n) {
    const size_t rb = qg_dtype_row_bytes(t, n);
    uint8_t *p = dst;
    for (size_t i = 0; i < rb; i++) p[i] = (uint8_t)rng_u64(r);
    const int bs = qg_dtype_block_size(t);
    const size_t ts = rb / (size_t)(n / bs);
    /* f16 fields: random sign/mantissa, exponent in a tame range */
    for (int64_t b = 0; b < n / bs; b++) {
        uint8_t *blk = p + (size_t)b * ts;
        int off[2] = {-1, -1}; /* byte offsets of the block's f16 fields */
        switch (t) {
        case QG_Q8_0: case QG_Q4_0: case QG_F16: off[0] = 0; break;
        case QG_Q4_K: case QG_Q5_K: off[0] = 0, off[1] = 2; break;
        case QG_Q6_K: off[0] = 208; break;
        default: break;
        }
        for (int k = 0; k < 2; k++)
            if (off[k] >= 0) {
                uint16_t v;
                memcpy(&v, blk + off[k], 2);
                v = (uint16_t)((v & 0x83FF) | ((8 + rng_u64(r) % 12) << 10));
                memcpy(blk + off[k], &v, 2);
            }
    }
    if (t == QG_BF16)
        for (int64_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, p + 2 * i, 2);
            v = (uint16_t)((v & 0x807F) | ((110 + rng_u64(r) % 30) << 7));
            memcpy(p + 2 * i, &v, 2);
        }
    if (t == QG_F32)
        for (int64_t i = 0; i < n; i++) {
            const float f = rng_gauss(r);
            memcpy(p + 4 * i, &f, 4);
        }
}

static void test_dot_onehot_exact(void **state) {
    (void)state;
    qg_simd_level lv[3];
    const int nl = cpu_levels(lv);
    const int64_t n = 512;
    enum { NC = 17, NR = 5 };
    float *x = xmalloc((size_t)n * 4), *ref = xmalloc((size_t)n * 4 * NR);
    uint8_t *w = xmalloc((size_t)n * 4 * NR);
    float *xs = xmalloc((size_t)n * NC * 4); /* (n, NC): column c = e_{31c} */
    float *y = xmalloc((size_t)NR * NC * 4);  /* (NR, NC) */
    float *scratch = xmalloc(qg_quant_gemm_scratch_floats(n, NR) * 4);
    for (int li = 0; li < nl; li++) {
        const qg_quant_kernels k = qg_quant_kernels_at(lv[li]);
        for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
            const qg_dtype t = ALL_TYPES[ti];
            rng r = {3000 + 16 * (uint64_t)li + ti};
            random_blocks(&r, t, w, n);
            qg_dequant_row(t, w, ref, n);
            memset(x, 0, (size_t)n * 4);
            for (int64_t j = 0; j < n; j++) {
                x[j] = 1.0f;
                const float got = k.dot(t, w, x, n);
                x[j] = 0.0f;
                if (got != ref[j] && !(ref[j] == 0 && got == 0)) {
                    fprintf(stderr, "onehot %s %s j=%lld: got %.9g want %.9g\n",
                            qg_simd_level_name(k.level), qg_dtype_name(t), (long long)j, got, ref[j]);
                    fail();
                }
            }
            /* the gemm's dequantize-to-scratch path: one-hot columns */
            const size_t rb = qg_dtype_row_bytes(t, n);
            for (int rr = 1; rr < NR; rr++) {
                random_blocks(&r, t, w + rr * rb, n);
                qg_dequant_row(t, w + rr * rb, ref + rr * n, n);
            }
            memset(xs, 0, (size_t)n * NC * 4);
            for (int c = 0; c < NC; c++) xs[(size_t)c * (size_t)n + (size_t)(31 * c)] = 1.0f;
            fill_nan(y, (size_t)NR * NC);
            k.gemm(t, w, rb, NR, xs, (size_t)n, NC, y, NR, n, scratch);
            for (int c = 0; c < NC; c++)
                for (int rr = 0; rr < NR; rr++) {
                    const float want = ref[rr * n + 31 * c], got = y[c * NR + rr];
                    if (got != want) {
                        fprintf(stderr, "onehot gemm %s %s r=%d c=%d: got %.9g want %.9g\n",
                                qg_simd_level_name(k.level), qg_dtype_name(t), rr, c, got, want);
                        fail();
                    }
                }
        }
    }
    free(x), free(ref), free(w), free(xs), free(y), free(scratch);
}

/* ---- (d) gemm ------------------------------------------------------------ */

static void check_gemm_type(qg_quant_kernels k, qg_dtype t, int64_t n, rng *r) {
    enum { MAX_R = 9, MAX_C = 17, Y_PAD = 3, X_PAD = 5 };
    const size_t rb = qg_dtype_row_bytes(t, n);
    const size_t x_stride = (size_t)n + X_PAD, y_stride = MAX_R + Y_PAD;
    uint8_t *w = xmalloc(rb * MAX_R);                              /* (rb, MAX_R) */
    float *wf = xmalloc((size_t)n * 4);
    double *wd = xmalloc((size_t)n * MAX_R * 8);                   /* (n, MAX_R) */
    float *x = xmalloc(x_stride * MAX_C * 4);                      /* (x_stride, MAX_C) */
    float *y = xmalloc(y_stride * MAX_C * 4);                      /* (y_stride, MAX_C) */
    double *ref = xmalloc((size_t)MAX_R * MAX_C * 8), *mag = xmalloc((size_t)MAX_R * MAX_C * 8);
    for (int rr = 0; rr < MAX_R; rr++) {
        random_row(r, t, n, wf, w + rr * rb);
        qg_dequant_row_f64(t, w + rr * rb, wd + (size_t)rr * (size_t)n, n);
    }
    for (size_t i = 0; i < x_stride * MAX_C; i++) x[i] = rng_gauss(r);
    for (int c = 0; c < MAX_C; c++)
        for (int rr = 0; rr < MAX_R; rr++) {
            double s = 0, m = 0;
            for (int64_t i = 0; i < n; i++) {
                const double p = wd[(size_t)rr * (size_t)n + (size_t)i] * x[(size_t)c * x_stride + (size_t)i];
                s += p;
                m += fabs(p);
            }
            ref[c * MAX_R + rr] = s, mag[c * MAX_R + rr] = m;
        }
    for (int n_rows = 1; n_rows <= MAX_R; n_rows++) {
        const size_t sf = qg_quant_gemm_scratch_floats(n, n_rows);
        float *scratch = xmalloc(sf * 4); /* exact size: ASan catches overruns */
        for (int n_cols = 1; n_cols <= MAX_C; n_cols++) {
            fill_nan(y, y_stride * MAX_C);
            fill_nan(scratch, sf);
            k.gemm(t, w, rb, n_rows, x, x_stride, n_cols, y, y_stride, n, scratch);
            for (int c = 0; c < MAX_C; c++)
                for (size_t rr = 0; rr < y_stride; rr++) {
                    const float got = y[(size_t)c * y_stride + rr];
                    if (c < n_cols && rr < (size_t)n_rows) {
                        const double err = fabs((double)got - ref[c * MAX_R + (int)rr]);
                        if (!(err <= DOT_RTOL * mag[c * MAX_R + (int)rr] + 1e-30)) {
                            fprintf(stderr, "gemm %s %s n=%lld %dx%d at r=%zu c=%d: got %.9g ref %.9g\n",
                                    qg_simd_level_name(k.level), qg_dtype_name(t), (long long)n,
                                    n_rows, n_cols, rr, c, got, ref[c * MAX_R + (int)rr]);
                            fail();
                        }
                    } else if (!isnan(got)) {
                        fprintf(stderr, "gemm %s %s %dx%d wrote outside the tile at r=%zu c=%d\n",
                                qg_simd_level_name(k.level), qg_dtype_name(t), n_rows, n_cols, rr, c);
                        fail();
                    }
                }
        }
        free(scratch);
    }
    free(w), free(wf), free(wd), free(x), free(y), free(ref), free(mag);
}

static void test_gemm(void **state) {
    (void)state;
    qg_simd_level lv[3];
    const int nl = cpu_levels(lv);
    for (int li = 0; li < nl; li++) {
        const qg_quant_kernels k = qg_quant_kernels_at(lv[li]);
        for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
            const qg_dtype t = ALL_TYPES[ti];
            const int bs = qg_dtype_block_size(t);
            rng r = {4000 + 16 * (uint64_t)li + ti};
            /* one k-chunk; odd tails; several chunks (the kernels walk k in
             * chunks of 256) with a tail for the plain types */
            check_gemm_type(k, t, 256, &r);
            check_gemm_type(k, t, bs == 1 ? 37 : 3 * bs, &r);
            check_gemm_type(k, t, bs == 1 ? 300 : (bs == 32 ? 608 : 768), &r);
        }
    }
}

/* ---- (d2) gemm_cols --------------------------------------------------------- */

/*
 * gemm_cols against the float64 reference (|y - ref| <= DOT_RTOL * sum|w x|,
 * as the dot), every n_rows x n_cols tile up to 5 x 19 (passes of 8
 * columns and a partial one), columns at scattered unaligned addresses;
 * y poisoned with NaN, nothing outside the tile may be written.  And the
 * contract that a column's result does not depend on its neighbours: every
 * element equals gemm_cols of that row and that column alone, bitwise.
 */
static void check_gemm_cols_type(qg_quant_kernels k, qg_dtype t, int64_t n, rng *r) {
    enum { MAX_R = 5, MAX_C = 19, Y_PAD = 2 };
    const size_t rb = qg_dtype_row_bytes(t, n);
    const size_t y_stride = MAX_R + Y_PAD;
    uint8_t *w = xmalloc(rb * MAX_R);             /* (rb, MAX_R) */
    float *wf = xmalloc((size_t)n * 4);
    double *wd = xmalloc((size_t)n * MAX_R * 8);  /* (n, MAX_R) */
    /* columns in one buffer, each starting 1..3 floats after a 64-byte
     * boundary, in reverse order of their index */
    const size_t cs = qg_align_up((size_t)n + 3, 16) + 16;
    float *xbuf = xmalloc(cs * MAX_C * 4);
    const float *xc[MAX_C];
    for (int c = 0; c < MAX_C; c++) {
        float *col = xbuf + (size_t)(MAX_C - 1 - c) * cs + 1 + (size_t)(c % 3);
        for (int64_t i = 0; i < n; i++) col[i] = rng_gauss(r);
        xc[c] = col;
    }
    float *y = xmalloc(y_stride * MAX_C * 4);  /* (y_stride, MAX_C) */
    float one[1];
    double *ref = xmalloc((size_t)MAX_R * MAX_C * 8), *mag = xmalloc((size_t)MAX_R * MAX_C * 8);
    for (int rr = 0; rr < MAX_R; rr++) {
        random_row(r, t, n, wf, w + rr * rb);
        qg_dequant_row_f64(t, w + rr * rb, wd + (size_t)rr * (size_t)n, n);
    }
    for (int c = 0; c < MAX_C; c++)
        for (int rr = 0; rr < MAX_R; rr++) {
            double sum = 0, m = 0;
            for (int64_t i = 0; i < n; i++) {
                const double p = wd[(size_t)rr * (size_t)n + (size_t)i] * xc[c][i];
                sum += p;
                m += fabs(p);
            }
            ref[c * MAX_R + rr] = sum, mag[c * MAX_R + rr] = m;
        }
    for (int n_rows = 1; n_rows <= MAX_R; n_rows++)
        for (int n_cols = 1; n_cols <= MAX_C; n_cols++) {
            fill_nan(y, y_stride * MAX_C);
            k.gemm_cols(t, w, rb, n_rows, xc, n_cols, y, y_stride, n);
            for (int c = 0; c < MAX_C; c++)
                for (size_t rr = 0; rr < y_stride; rr++) {
                    const float got = y[(size_t)c * y_stride + rr];
                    if (c < n_cols && rr < (size_t)n_rows) {
                        const double err = fabs((double)got - ref[c * MAX_R + (int)rr]);
                        if (!(err <= DOT_RTOL * mag[c * MAX_R + (int)rr] + 1e-30)) {
                            fprintf(stderr, "gemm_cols %s %s n=%lld %dx%d at r=%zu c=%d: got %.9g ref %.9g\n",
                                    qg_simd_level_name(k.level), qg_dtype_name(t), (long long)n,
                                    n_rows, n_cols, rr, c, got, ref[c * MAX_R + (int)rr]);
                            fail();
                        }
                        one[0] = NAN;
                        k.gemm_cols(t, w + rr * rb, rb, 1, xc + c, 1, one, 1, n);
                        if (memcmp(&one[0], &got, sizeof got) != 0) {
                            fprintf(stderr, "gemm_cols %s %s n=%lld %dx%d at r=%zu c=%d: %.9g alone, %.9g in the tile\n",
                                    qg_simd_level_name(k.level), qg_dtype_name(t), (long long)n,
                                    n_rows, n_cols, rr, c, one[0], got);
                            fail();
                        }
                    } else if (!isnan(got)) {
                        fprintf(stderr, "gemm_cols %s %s %dx%d wrote outside the tile at r=%zu c=%d\n",
                                qg_simd_level_name(k.level), qg_dtype_name(t), n_rows, n_cols, rr, c);
                        fail();
                    }
                }
        }
    free(w), free(wf), free(wd), free(xbuf), free(y), free(ref), free(mag);
}

static void test_gemm_cols(void **state) {
    (void)state;
    qg_simd_level lv[3];
    const int nl = cpu_levels(lv);
    for (int li = 0; li < nl; li++) {
        const qg_quant_kernels k = qg_quant_kernels_at(lv[li]);
        for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
            const qg_dtype t = ALL_TYPES[ti];
            const int bs = qg_dtype_block_size(t);
            rng r = {6000 + 16 * (uint64_t)li + ti};
            /* one block row; an odd block count (q8_0 / q4_0: a half
             * 64-element step); past the AVX-512 kernel's 1024-element k
             * chunk, ending in a partial chunk */
            check_gemm_cols_type(k, t, bs == 1 ? 64 : bs == 32 ? 64 : 256, &r);
            check_gemm_cols_type(k, t, bs == 1 ? 37 : 3 * bs, &r);
            check_gemm_cols_type(k, t, bs == 1 ? 1100 : (bs == 32 ? 1056 : 1280), &r);
        }
    }
}

/*
 * gemm_cols decodes weights exactly: with one-hot columns (column c =
 * e_{37c}) every y element is the dequantized weight, bit for bit, for
 * random block bytes (every code and scale pattern).
 */
static void test_gemm_cols_onehot_exact(void **state) {
    (void)state;
    qg_simd_level lv[3];
    const int nl = cpu_levels(lv);
    const int64_t n = 1536; /* past one 1024-element k chunk */
    enum { NC = 13, NR = 3 };
    float *ref = xmalloc((size_t)n * 4 * NR);      /* (n, NR) */
    uint8_t *w = xmalloc((size_t)n * 4 * NR);
    float *xs = xmalloc((size_t)n * NC * 4);       /* (n, NC) */
    float *y = xmalloc((size_t)NR * NC * 4);       /* (NR, NC) */
    const float *xc[NC];
    for (int c = 0; c < NC; c++) xc[c] = xs + (size_t)c * (size_t)n;
    for (int li = 0; li < nl; li++) {
        const qg_quant_kernels k = qg_quant_kernels_at(lv[li]);
        for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
            const qg_dtype t = ALL_TYPES[ti];
            const size_t rb = qg_dtype_row_bytes(t, n);
            rng r = {7000 + 16 * (uint64_t)li + ti};
            for (int rr = 0; rr < NR; rr++) {
                random_blocks(&r, t, w + rr * rb, n);
                qg_dequant_row(t, w + rr * rb, ref + (size_t)rr * (size_t)n, n);
            }
            for (int shift = 0; shift < 3; shift++) {
                memset(xs, 0, (size_t)n * NC * 4);
                for (int c = 0; c < NC; c++)
                    xs[(size_t)c * (size_t)n + (size_t)((37 * c + 500 * shift) % n)] = 1.0f;
                fill_nan(y, (size_t)NR * NC);
                k.gemm_cols(t, w, rb, NR, xc, NC, y, NR, n);
                for (int c = 0; c < NC; c++)
                    for (int rr = 0; rr < NR; rr++) {
                        const float want = ref[(size_t)rr * (size_t)n + (size_t)((37 * c + 500 * shift) % n)];
                        const float got = y[c * NR + rr];
                        if (got != want && !(want == 0 && got == 0)) {
                            fprintf(stderr, "onehot gemm_cols %s %s r=%d c=%d: got %.9g want %.9g\n",
                                    qg_simd_level_name(k.level), qg_dtype_name(t), rr, c, got, want);
                            fail();
                        }
                    }
            }
        }
    }
    free(ref), free(w), free(xs), free(y);
}

/* ---- (e) f64 dequant ----------------------------------------------------- */

static void test_dequant_f64(void **state) {
    (void)state;
    const int64_t n = 1024;
    float *f = xmalloc((size_t)n * 4);
    double *d = xmalloc((size_t)n * 8);
    uint8_t *w = xmalloc((size_t)n * 4);
    for (size_t ti = 0; ti < QG_ARRAY_LEN(ALL_TYPES); ti++) {
        const qg_dtype t = ALL_TYPES[ti];
        rng r = {5000 + ti};
        for (int rep = 0; rep < 4; rep++) {
            random_blocks(&r, t, w, n);
            fill_nan(f, (size_t)n);
            for (int64_t i = 0; i < n; i++) d[i] = NAN;
            qg_dequant_row(t, w, f, n);
            qg_dequant_row_f64(t, w, d, n);
            for (int64_t i = 0; i < n; i++) {
                assert_false(isnan(f[i]));
                assert_true(d[i] == (double)f[i]);
            }
        }
    }
    free(f), free(d), free(w);
}

/* ---- dispatch -------------------------------------------------------------- */

static void test_dispatch(void **state) {
    (void)state;
    qg_simd_level lv[3];
    const int nl = cpu_levels(lv);
    const char *old = getenv("QG_SIMD");
    char *saved = old ? strdup(old) : NULL;
    unsetenv("QG_SIMD");
    assert_int_equal(qg_quant_kernels_best().level, lv[nl - 1]);
    setenv("QG_SIMD", "scalar", 1);
    assert_int_equal(qg_quant_kernels_best().level, QG_SIMD_SCALAR);
    setenv("QG_SIMD", "avx2", 1);
    assert_int_equal(qg_quant_kernels_best().level, QG_MIN(lv[nl - 1], QG_SIMD_AVX2));
    setenv("QG_SIMD", "avx512", 1);
    assert_int_equal(qg_quant_kernels_best().level, lv[nl - 1]);
    if (saved) {
        setenv("QG_SIMD", saved, 1);
        free(saved);
    } else {
        unsetenv("QG_SIMD");
    }
    assert_string_equal(qg_simd_level_name(QG_SIMD_SCALAR), "scalar");
    assert_string_equal(qg_simd_level_name(QG_SIMD_AVX2), "avx2");
    assert_string_equal(qg_simd_level_name(QG_SIMD_AVX512), "avx512");
    printf("simd levels on this cpu:");
    for (int i = 0; i < nl; i++) printf(" %s", qg_simd_level_name(lv[i]));
    printf("\n");
}

/* ---- (f) the real GGML ----------------------------------------------------- */

#define GGML_DEFAULT_LIB \
    "/tmp/npmo/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so"

typedef void (*ggml_deq_fn)(const void *x, float *y, int64_t k);
typedef void (*ggml_quant_fn)(const float *x, void *y, int64_t k);

static void test_ggml_bit_identical(void **state) {
    (void)state;
    const char *path = getenv("QG_GGML_BASE_LIB");
    if (!path || !*path) path = GGML_DEFAULT_LIB;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("SKIP ggml cross-check: cannot load %s: %s\n", path, dlerror());
        skip();
    }
    static const struct {
        qg_dtype t;
        const char *deq, *quant;
    } T[] = {
        {QG_F16, "ggml_fp16_to_fp32_row", NULL},
        {QG_BF16, "ggml_bf16_to_fp32_row", NULL},
        {QG_Q8_0, "dequantize_row_q8_0", "quantize_row_q8_0_ref"},
        {QG_Q4_0, "dequantize_row_q4_0", "quantize_row_q4_0_ref"},
        {QG_Q4_K, "dequantize_row_q4_K", "quantize_row_q4_K_ref"},
        {QG_Q5_K, "dequantize_row_q5_K", "quantize_row_q5_K_ref"},
        {QG_Q6_K, "dequantize_row_q6_K", "quantize_row_q6_K_ref"},
    };
    const int64_t n = 256 * 16;
    float *x = xmalloc((size_t)n * 4), *ours = xmalloc((size_t)n * 4), *theirs = xmalloc((size_t)n * 4);
    uint8_t *q = xmalloc((size_t)n * 4);
    for (size_t i = 0; i < QG_ARRAY_LEN(T); i++) {
        const qg_dtype t = T[i].t;
        ggml_deq_fn deq = (ggml_deq_fn)dlsym(lib, T[i].deq);
        if (!deq) {
            fprintf(stderr, "%s: symbol %s missing\n", path, T[i].deq);
            fail();
        }
        rng r = {6000 + i};
        for (int rep = 0; rep < 3; rep++) {
            /* our quantizer's blocks (mixed scales per row segment), then
             * random-byte blocks */
            for (int kind = 0; kind < 2; kind++) {
                if (kind == 0)
                    random_row(&r, t, n, x, q);
                else
                    random_blocks(&r, t, q, n);
                fill_nan(ours, (size_t)n);
                fill_nan(theirs, (size_t)n);
                qg_dequant_row(t, q, ours, n);
                deq(q, theirs, n);
                assert_memory_equal(ours, theirs, (size_t)n * 4);
            }
            /* GGML's reference quantizer's blocks through both dequantizers */
            if (T[i].quant) {
                ggml_quant_fn quant = (ggml_quant_fn)dlsym(lib, T[i].quant);
                if (quant) {
                    for (int64_t j = 0; j < n; j++) x[j] = rng_gauss(&r) * (1.0f + (float)(j % 3));
                    quant(x, q, n);
                    fill_nan(ours, (size_t)n);
                    fill_nan(theirs, (size_t)n);
                    qg_dequant_row(t, q, ours, n);
                    deq(q, theirs, n);
                    assert_memory_equal(ours, theirs, (size_t)n * 4);
                } else {
                    printf("note: %s not exported by %s\n", T[i].quant, path);
                }
            }
        }
    }
    free(x), free(ours), free(theirs), free(q);
    dlclose(lib);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_plain),
        cmocka_unit_test(test_known_q8_0_q4_0),
        cmocka_unit_test(test_known_q4_K),
        cmocka_unit_test(test_known_q5_K),
        cmocka_unit_test(test_known_q6_K),
        cmocka_unit_test(test_quantize_error),
        cmocka_unit_test(test_quantize_edges),
        cmocka_unit_test(test_dot),
        cmocka_unit_test(test_dot_onehot_exact),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_cols),
        cmocka_unit_test(test_gemm_cols_onehot_exact),
        cmocka_unit_test(test_dequant_f64),
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_ggml_bit_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
