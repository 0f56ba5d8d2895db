/*
 * qg_cuda_i8.cuh - exact integer products on the tensor cores: an f32
 * vector as three int8 "planes" (a 24-bit fixed-point image of it), the
 * K-quant weights as their integer quants, mma.sync s8 x s8 -> s32.
 *
 * Why: a batch-1 product reads each weight once, so it must stream weights
 * at memory speed; dequantizing every weight to f32 and multiplying in f32
 * costs about five instructions per weight and made the decode kernels
 * instruction-bound.  Here the inner products are integer-exact on the
 * tensor cores and the f32 work is per 16 or 32 weights.  Activations are
 * not rounded to 8 or 16 bits: the planes carry 24 bits per value.
 *
 * The plane format of a vector x (n floats, n % 256 == 0), per super-block
 * b of 256 elements:
 *   s_b = max|x_i| / QG_I8_XMAX  (0 when the super-block is all zero)
 *   X_i = rint(x_i * (QG_I8_XMAX / max|x_i|)),  |X_i| <= QG_I8_XMAX + 1
 *   X_i = 65536 a_i + 256 b_i + c_i  with balanced digits a, b, c in
 *         [-128, 127] (all three signed int8)
 * so x_i = s_b X_i + e_i with |e_i| <= 1.5 s_b ~ 1.8e-7 max|x| (f32's own
 * rounding of the largest element is 6e-8 max|x|).  Per 32-element group
 * j the exact integer sum sum_i X_i is kept as sums[j] = s_b * sum X (f32),
 * the x-sum the K-quant "min" terms need.
 *
 * Shared-memory image of one vector (n elements, G = n / 32 groups):
 *   planes  G x 96 bytes: group j = [a: 32 bytes | b: 32 | c: 32], the
 *           elements of the group in order
 *   scale   n / 256 floats (s_b)
 *   sums    G floats
 *
 * Products of a 16-row weight tile with one vector (one warp, mma m16n8k32
 * for Q4_K's 32-element sub-blocks, m16n8k16 for Q6_K's 16-element ones):
 * B's columns 0, 1, 2 are the planes a, b, c (columns 3..7 zero), so one
 * mma gives, per row, D_a, D_b, D_c = sum q * {a, b, c}; lane t = lane % 4
 * of the C fragment holds columns 2t, 2t+1: lane 0 (D_a, D_b), lane 1
 * (D_c, 0), lanes 2, 3 zero.  Each lane weights its columns (65536, 256),
 * (1, 0) or (0, 0), and a 4-lane sum yields the row.  The integer
 * accumulators (sub-block results times 6-bit / 8-bit scales, over one
 * super-block) stay below 2^31: Q4_K 8 x 32 x 15 x 128 x 63, Q6_K
 * 16 x 16 x 32 x 128 x 128.
 */
#ifndef QG_CUDA_I8_CUH
#define QG_CUDA_I8_CUH

#include "qg_cuda_common.cuh"

/* Largest |X| of a plane image (see above: the top digit stays in int8). */
#define QG_I8_XMAX 8257536.0f

/* Bytes of the shared-memory image of an n-element vector, rounded up to
 * 16 so that consecutive images stay 16-byte aligned. */
__host__ __device__ constexpr size_t qg_i8_image_bytes(int n) {
    return ((size_t)n / 32 * 96 + sizeof(float) * ((size_t)n / 256 + (size_t)n / 32) + 15) &
           ~(size_t)15;
}

/* A vector's image in shared memory. */
struct qg_i8_vec {
    const uint8_t *planes; /* (96, n/32) */
    const float *scale;    /* (n/256) */
    const float *sums;     /* (n/32) */
};

__device__ __forceinline__ qg_i8_vec qg_i8_at(uint8_t *base, int n) {
    qg_i8_vec v;
    v.planes = base;
    v.scale = (const float *)(base + (size_t)n / 32 * 96);
    v.sums = v.scale + n / 256;
    return v;
}

/* ---- building an image ------------------------------------------------- */

/* Balanced base-256 digits of X (|X| <= QG_I8_XMAX + 1): X = 65536 a +
 * 256 b + c, each in [-128, 127], returned as bytes of uint32s. */
__device__ __forceinline__ void qg_i8_digits(int X, uint32_t *a, uint32_t *b, uint32_t *c) {
    const int dc = ((X + 128) & 255) - 128;
    const int X1 = (X - dc) >> 8;
    const int db = ((X1 + 128) & 255) - 128;
    const int da = (X1 - db) >> 8;
    *a = (uint32_t)da & 0xFFu;
    *b = (uint32_t)db & 0xFFu;
    *c = (uint32_t)dc & 0xFFu;
}

/* One lane's share of a super-block's image: its 8 values quantized
 * against the super-block's largest |x| (a warp-wide max: the warp holds
 * the 256 values, 8 per lane, in any fixed assignment), as bytes i of the
 * plane words pa, pb, pc (value i in byte i % 4 of word i / 4), the sum sx
 * of the lane's 8 integers, and the super-block's scale s.  A NaN or
 * infinite value anywhere in the super-block makes s NaN (and every digit
 * 0), so each product with the image is NaN, as the f32 arithmetic of the
 * CPU executor would make it. */
struct qg_i8_lane8 {
    uint32_t pa[2], pb[2], pc[2];
    int sx;
    float s;
};

__device__ __forceinline__ qg_i8_lane8 qg_i8_quant8(const float (&v)[8]) {
    float mx = 0.0f;
    bool bad = false;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        mx = fmaxf(mx, fabsf(v[i]));
        bad |= !(fabsf(v[i]) <= 3.402823466e38f); /* NaN or infinite */
    }
    mx = qg_warp_max(mx);
    bad = __any_sync(0xffffffffu, bad);
    const float inv = (mx > 0.0f && !bad) ? QG_I8_XMAX / mx : 0.0f;
    qg_i8_lane8 r = {{0, 0}, {0, 0}, {0, 0}, 0, 0.0f};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int X = __float2int_rn(v[i] * inv);
        r.sx += X;
        uint32_t a, b, c;
        qg_i8_digits(X, &a, &b, &c);
        r.pa[i >> 2] |= a << (8 * (i & 3));
        r.pb[i >> 2] |= b << (8 * (i & 3));
        r.pc[i >> 2] |= c << (8 * (i & 3));
    }
    r.s = bad ? __int_as_float(0x7fc00000) : mx / QG_I8_XMAX;
    return r;
}

/* One warp: the image of the 256 values v[0..7] of its lanes (lane l holds
 * elements 8l .. 8l+7 of super-block sb) into the image at base (vector of
 * n elements). */
__device__ __forceinline__ void qg_i8_store_sb(const float (&v)[8], int sb, uint8_t *base, int n) {
    const int lane = threadIdx.x & 31;
    const qg_i8_lane8 q = qg_i8_quant8(v);
    /* the four lanes of a 32-element group */
    int sx = q.sx;
    sx += __shfl_xor_sync(0xffffffffu, sx, 1);
    sx += __shfl_xor_sync(0xffffffffu, sx, 2);
    const int j = sb * 8 + (lane >> 2), o = 8 * (lane & 3);
    uint8_t *g = base + (size_t)j * 96;
    *(uint2 *)(g + o) = make_uint2(q.pa[0], q.pa[1]);
    *(uint2 *)(g + 32 + o) = make_uint2(q.pb[0], q.pb[1]);
    *(uint2 *)(g + 64 + o) = make_uint2(q.pc[0], q.pc[1]);
    float *scale = (float *)(base + (size_t)n / 32 * 96);
    if (lane == 0) scale[sb] = q.s;
    if ((lane & 3) == 0) scale[n / 256 + j] = (float)sx * q.s;
}

/* ---- tensor-core products ------------------------------------------------ */

/* d += A (16x32 s8, row) * B (32x8 s8, col); PTX fragment layouts. */
__device__ __forceinline__ void qg_mma_s8_16832(int (&d)[4], uint32_t a0, uint32_t a1,
                                                uint32_t a2, uint32_t a3, uint32_t b0,
                                                uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* d += A (16x16 s8, row) * B (16x8 s8, col). */
__device__ __forceinline__ void qg_mma_s8_16816(int (&d)[4], uint32_t a0, uint32_t a1,
                                                uint32_t b0) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, "
                 "{%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

/* Column weights of this lane's C fragment (see the header comment). */
__device__ __forceinline__ void qg_i8_lane_weights(float *wa, float *wb) {
    const int t = threadIdx.x & 3;
    *wa = t == 0 ? 65536.0f : (t == 1 ? 1.0f : 0.0f);
    *wb = t == 0 ? 256.0f : 0.0f;
}

/* ---- Q4_K: one super-block of a 16-row tile ------------------------------
 * Lane (g = lane/4, t = lane%4) holds rows g and g+8.  mma k-slots of lane
 * t, {4t..4t+3, 16+4t..16+4t+3}, are elements 8t .. 8t+7 of a sub-block:
 * qs bytes 32c + 8t .. +8 of sub-block pair c (low nibbles: sub-block 2c,
 * high: 2c+1), and bytes 8t .. 8t+7 of each plane of the group. */
struct qg_i8_q4k {
    uint2 q[2][4]; /* [row g, g+8][pair c] */
    uint4 hd[2];   /* d, dmin, scales[12] */
};

/* Weight loads: from global memory through the read-only path, or (SM)
 * from shared memory (staged tiles, op_matvec_i8s.cu). */
template <bool SM> __device__ __forceinline__ uint4 qg_i8_ld16(const uint8_t *p) {
    return SM ? *(const uint4 *)p : qg_ld_v4(p);
}
template <bool SM> __device__ __forceinline__ uint2 qg_i8_ld8(const uint8_t *p) {
    return SM ? *(const uint2 *)p : __ldg((const uint2 *)p);
}
template <bool SM> __device__ __forceinline__ uint32_t qg_i8_ld2(const uint8_t *p) {
    return SM ? (uint32_t) * (const unsigned short *)p : qg_ld_u16(p);
}
/* 4 bytes at a 2-byte aligned address */
template <bool SM> __device__ __forceinline__ uint32_t qg_i8_ld4a2(const uint8_t *p) {
    return qg_i8_ld2<SM>(p) | (qg_i8_ld2<SM>(p + 2) << 16);
}

template <bool SM = false>
__device__ __forceinline__ void qg_i8_q4k_load(qg_i8_q4k &f, const uint8_t *rg, const uint8_t *rg8) {
    const int t = threadIdx.x & 3;
    f.hd[0] = qg_i8_ld16<SM>(rg);
    f.hd[1] = qg_i8_ld16<SM>(rg8);
#pragma unroll
    for (int c = 0; c < 4; c++) {
        f.q[0][c] = qg_i8_ld8<SM>(rg + 16 + 32 * c + 8 * t);
        f.q[1][c] = qg_i8_ld8<SM>(rg8 + 16 + 32 * c + 8 * t);
    }
}

/* Six-bit scales and mins of the eight sub-blocks as bytes of two words. */
__device__ __forceinline__ void qg_i8_q4k_scales(const uint4 &hd, uint32_t *sc_lo, uint32_t *sc_hi,
                                                 uint32_t *m_lo, uint32_t *m_hi) {
    *sc_lo = hd.y & 0x3F3F3F3Fu;
    *m_lo = hd.z & 0x3F3F3F3Fu;
    *sc_hi = (hd.w & 0x0F0F0F0Fu) | ((hd.y >> 2) & 0x30303030u);
    *m_hi = ((hd.w >> 4) & 0x0F0F0F0Fu) | ((hd.z >> 2) & 0x30303030u);
}

/* acc_g, acc_g8 += this lane's share of rows g, g+8 of W x over super-block
 * sb (x's image xv). */
__device__ __forceinline__ void qg_i8_q4k_dot(const qg_i8_q4k &f, const qg_i8_vec &xv, int sb,
                                              float &acc_g, float &acc_g8) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    uint32_t sl[2], sh[2], ml[2], mh[2];
    qg_i8_q4k_scales(f.hd[0], &sl[0], &sh[0], &ml[0], &mh[0]);
    qg_i8_q4k_scales(f.hd[1], &sl[1], &sh[1], &ml[1], &mh[1]);
    const uint8_t *pl = xv.planes + (size_t)sb * 8 * 96 + 32 * g + 8 * t;
    const float *sums = xv.sums + sb * 8;
    int I[4] = {0, 0, 0, 0};
    float mt0 = 0.0f, mt1 = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int c = j >> 1;
        const uint2 w0 = f.q[0][c], w1 = f.q[1][c];
        const int sh4 = (j & 1) ? 4 : 0;
        const uint32_t M = 0x0F0F0F0Fu;
        uint2 b = make_uint2(0, 0);
        if (g < 3) b = *(const uint2 *)(pl + j * 96);
        int d[4] = {0, 0, 0, 0};
        qg_mma_s8_16832(d, (w0.x >> sh4) & M, (w1.x >> sh4) & M, (w0.y >> sh4) & M,
                        (w1.y >> sh4) & M, b.x, b.y);
        const int bsh = 8 * (j & 3);
        const uint32_t s0 = (((j < 4) ? sl[0] : sh[0]) >> bsh) & 0xFFu;
        const uint32_t s1 = (((j < 4) ? sl[1] : sh[1]) >> bsh) & 0xFFu;
        I[0] += d[0] * (int)s0;
        I[1] += d[1] * (int)s0;
        I[2] += d[2] * (int)s1;
        I[3] += d[3] * (int)s1;
    }
    /* the min terms: lane t takes sub-blocks 2t and 2t+1 (the 4-lane sum
     * of the rows adds them up) */
#pragma unroll
    for (int jj = 0; jj < 2; jj++) {
        const int j = 2 * t + jj, bsh = 8 * (j & 3);
        const float xs = sums[j];
        mt0 = fmaf((float)((((j < 4) ? ml[0] : mh[0]) >> bsh) & 0xFFu), xs, mt0);
        mt1 = fmaf((float)((((j < 4) ? ml[1] : mh[1]) >> bsh) & 0xFFu), xs, mt1);
    }
    float wa, wb;
    qg_i8_lane_weights(&wa, &wb);
    const float s = xv.scale[sb];
    const float d0 = qg_h2f(f.hd[0].x & 0xFFFFu), m0 = qg_h2f(f.hd[0].x >> 16);
    const float d1 = qg_h2f(f.hd[1].x & 0xFFFFu), m1 = qg_h2f(f.hd[1].x >> 16);
    acc_g += (d0 * s) * fmaf(wa, (float)I[0], wb * (float)I[1]) - m0 * mt0;
    acc_g8 += (d1 * s) * fmaf(wa, (float)I[2], wb * (float)I[3]) - m1 * mt1;
}

/* ---- Q6_K: one super-block of a 16-row tile ------------------------------
 * Sub-block s (16 elements, scale index s): half n = s/8, group q = (s/2)%4,
 * part i = s%2; element 128n + 32q + 16i + l (l < 16) has its low four
 * bits in ql[64n + 32(q%2) + 16i + l] (low nibble for q < 2, high for
 * q >= 2) and its high two in bits 2q, 2q+1 of qh[32n + 16i + l].  Lane t's
 * k-slots 4t .. 4t+3 are l = 4t .. 4t+3.  Blocks are 210 bytes, so words
 * are read as two 16-bit halves. */
struct qg_i8_q6k {
    uint32_t ql[2][2][2][2]; /* [row][n][q%2][i] */
    uint32_t qh[2][2][2];    /* [row][n][i] */
    uint32_t sc[2][4];       /* [row] scales[16] as int8 bytes */
    uint32_t d[2];           /* f16 bits */
};

template <bool SM = false>
__device__ __forceinline__ void qg_i8_q6k_load(qg_i8_q6k &f, const uint8_t *rg, const uint8_t *rg8) {
    const int t = threadIdx.x & 3;
    const uint8_t *r[2] = {rg, rg8};
#pragma unroll
    for (int k = 0; k < 2; k++) {
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                f.ql[k][n][0][i] = qg_i8_ld4a2<SM>(r[k] + 64 * n + 16 * i + 4 * t);
                f.ql[k][n][1][i] = qg_i8_ld4a2<SM>(r[k] + 64 * n + 32 + 16 * i + 4 * t);
                f.qh[k][n][i] = qg_i8_ld4a2<SM>(r[k] + 128 + 32 * n + 16 * i + 4 * t);
            }
#pragma unroll
        for (int w = 0; w < 4; w++) f.sc[k][w] = qg_i8_ld4a2<SM>(r[k] + 192 + 4 * w);
        f.d[k] = qg_i8_ld2<SM>(r[k] + 208);
    }
}

/* Four 6-bit quants (bytes 0..63) minus 32, as signed bytes. */
__device__ __forceinline__ uint32_t qg_i8_q6_center(uint32_t v) {
    return (v ^ 0x20202020u) | ((~v & 0x20202020u) * 6u);
}

__device__ __forceinline__ void qg_i8_q6k_dot(const qg_i8_q6k &f, const qg_i8_vec &xv, int sb,
                                              float &acc_g, float &acc_g8) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint8_t *pl = xv.planes + (size_t)sb * 8 * 96 + 32 * g + 4 * t;
    int I[4] = {0, 0, 0, 0};
#pragma unroll
    for (int s = 0; s < 16; s++) {
        const int n = s >> 3, q = (s >> 1) & 3, i = s & 1;
        const int nsh = q >= 2 ? 4 : 0, hsh = 2 * q;
        uint32_t a[2];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const uint32_t v = ((f.ql[k][n][q & 1][i] >> nsh) & 0x0F0F0F0Fu) |
                               (((f.qh[k][n][i] >> hsh) & 0x03030303u) << 4);
            a[k] = qg_i8_q6_center(v);
        }
        /* elements 16s .. 16s+15 of the super-block: group s/2, half s%2 */
        uint32_t b = 0;
        if (g < 3) b = *(const uint32_t *)(pl + (s >> 1) * 96 + 16 * (s & 1));
        int d[4] = {0, 0, 0, 0};
        qg_mma_s8_16816(d, a[0], a[1], b);
        const int s0 = (int)(int8_t)((f.sc[0][s >> 2] >> (8 * (s & 3))) & 0xFFu);
        const int s1 = (int)(int8_t)((f.sc[1][s >> 2] >> (8 * (s & 3))) & 0xFFu);
        I[0] += d[0] * s0;
        I[1] += d[1] * s0;
        I[2] += d[2] * s1;
        I[3] += d[3] * s1;
    }
    float wa, wb;
    qg_i8_lane_weights(&wa, &wb);
    const float s = xv.scale[sb];
    acc_g += (qg_h2f(f.d[0]) * s) * fmaf(wa, (float)I[0], wb * (float)I[1]);
    acc_g8 += (qg_h2f(f.d[1]) * s) * fmaf(wa, (float)I[2], wb * (float)I[3]);
}

/* Is dtype t read by the integer tensor-core products? */
__host__ __device__ constexpr bool qg_i8_supports(int t) { return t == QG_Q4_K || t == QG_Q6_K; }

#endif
