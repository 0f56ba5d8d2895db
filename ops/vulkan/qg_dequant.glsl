/*
 * qg_dequant.glsl - exact dequantization of one 32-element unit of a
 * weight row, for every weight format (GGML block layouts, see
 * ops/quant/qg_quant_blocks.h; values computed in GGML's operation order,
 * `precise` where GGML subtracts, so no fused multiply-add changes them).
 *
 * Include with four macros defined; may be included several times with
 * different ones (one function per weight buffer):
 *   DQ_FN    the function's name
 *   DQ_BUF   a uint array in a storage buffer holding the weight's bytes
 *   DQ_BUF4  a uvec4 array aliasing the same buffer (same binding)
 *   DQ_TYPE  its dtype (a QG_* id; usually a specialization constant)
 * The function is
 *   void DQ_FN(uint rb, uint u, out float w[32], out uint e0, out uint e1)
 * rb: byte offset of the row in the buffer (rows of every format start on
 * a 2-byte boundary; 16-byte for F32, F16, BF16, Q4_K, Q5_K); u: unit
 * index in the row (row length / 32 units).  w[0..16) are the row's
 * elements e0 .. e0+15, w[16..32) elements e1 .. e1+15.
 *
 * Units are laid out so that consecutive units read consecutive bytes
 * (coalesced loads when invocation i takes unit i):
 *   F32, F16, BF16, Q8_0, Q4_0: elements 32u .. 32u+31 (e1 = e0 + 16);
 *   Q4_K, Q5_K: the 16 quant bytes 16(u%8) of super-block u/8: the low
 *     nibbles are elements e0 = 64c + 16h .. (sub-block 2c), the high
 *     nibbles e1 = e0 + 32 (sub-block 2c+1), c = (u%8)/2, h = u%2;
 *   Q6_K: the 16 low-bit bytes ql[64hh + 16q ..] of super-block u/8
 *     (hh = (u%8)/4, q = u%4): low nibbles e0 = 128hh + 32(q/2) + 16(q%2)
 *     .., high nibbles e1 = e0 + 64.
 */

#ifndef QG_UNIT_ELEMS
#define QG_UNIT_ELEMS
/* The row elements of unit u of a row of type t (what DQ_FN returns in e0
 * and e1, without reading the weight). */
void qg_unit_elems(int t, uint u, out uint e0, out uint e1) {
    if (t == QG_Q4_K || t == QG_Q5_K) {
        e0 = 256u * (u >> 3u) + 64u * ((u & 7u) >> 1u) + 16u * (u & 1u);
        e1 = e0 + 32u;
    } else if (t == QG_Q6_K) {
        const uint q = u & 3u;
        e0 = 256u * (u >> 3u) + 128u * ((u & 7u) >> 2u) + 32u * (q >> 1u) + 16u * (q & 1u);
        e1 = e0 + 64u;
    } else {
        e0 = 32u * u;
        e1 = e0 + 16u;
    }
}
#endif

/* 32 bits at byte offset o (o even) */
#define DQ_W32(o) ((((o) & 2u) == 0u) ? DQ_BUF[(o) >> 2] \
    : ((DQ_BUF[(o) >> 2] >> 16) | (DQ_BUF[((o) >> 2) + 1u] << 16)))
/* 16 bits at byte offset o (o even) */
#define DQ_U16(o) ((DQ_BUF[(o) >> 2] >> (((o) & 2u) * 8u)) & 0xffffu)
/* 8 bits at byte offset o */
#define DQ_U8(o) ((DQ_BUF[(o) >> 2] >> (((o) & 3u) * 8u)) & 0xffu)

void DQ_FN(uint rb, uint u, out float w[32], out uint e0, out uint e1) {
    if (DQ_TYPE == QG_F32) {
        e0 = 32u * u;
        e1 = e0 + 16u;
        const uint o = (rb >> 4) + 8u * u;
        for (uint i = 0u; i < 8u; i++) {
            const vec4 v = uintBitsToFloat(DQ_BUF4[o + i]);
            w[4u * i] = v.x;
            w[4u * i + 1u] = v.y;
            w[4u * i + 2u] = v.z;
            w[4u * i + 3u] = v.w;
        }
    } else if (DQ_TYPE == QG_F16 || DQ_TYPE == QG_BF16) {
        e0 = 32u * u;
        e1 = e0 + 16u;
        const uint o = (rb >> 4) + 4u * u;
        for (uint i = 0u; i < 4u; i++) {
            const uvec4 q = DQ_BUF4[o + i];
            for (uint k = 0u; k < 4u; k++) {
                if (DQ_TYPE == QG_F16) {
                    const vec2 v = unpackHalf2x16(q[k]);
                    w[8u * i + 2u * k] = v.x;
                    w[8u * i + 2u * k + 1u] = v.y;
                } else {
                    w[8u * i + 2u * k] = uintBitsToFloat(q[k] << 16);
                    w[8u * i + 2u * k + 1u] = uintBitsToFloat(q[k] & 0xffff0000u);
                }
            }
        }
    } else if (DQ_TYPE == QG_Q8_0) {
        e0 = 32u * u;
        e1 = e0 + 16u;
        const uint o = rb + 34u * u;
        const float d = unpackHalf2x16(DQ_U16(o)).x;
        for (uint i = 0u; i < 8u; i++) {
            const int q = int(DQ_W32(o + 2u + 4u * i));
            for (uint b = 0u; b < 4u; b++)
                w[4u * i + b] = float(bitfieldExtract(q, int(8u * b), 8)) * d;
        }
    } else if (DQ_TYPE == QG_Q4_0) {
        e0 = 32u * u;
        e1 = e0 + 16u;
        const uint o = rb + 18u * u;
        const float d = unpackHalf2x16(DQ_U16(o)).x;
        for (uint i = 0u; i < 4u; i++) {
            const uint q = DQ_W32(o + 2u + 4u * i);
            for (uint b = 0u; b < 4u; b++) {
                const uint c = (q >> (8u * b)) & 0xffu;
                w[4u * i + b] = float(int(c & 15u) - 8) * d;
                w[16u + 4u * i + b] = float(int(c >> 4) - 8) * d;
            }
        }
    } else if (DQ_TYPE == QG_Q4_K || DQ_TYPE == QG_Q5_K) {
        const bool q5 = DQ_TYPE == QG_Q5_K;
        const uint sb = u >> 3u, c = (u & 7u) >> 1u, h = u & 1u;
        const uint o = rb + (q5 ? 176u : 144u) * sb; /* 16-aligned */
        const uvec4 hd = DQ_BUF4[o >> 4];            /* d|dmin, scales[12] */
        const vec2 dm = unpackHalf2x16(hd.x);
        /* 6-bit scale and min of sub-blocks j = 2c and 2c+1 */
        float d1[2], m1[2];
        for (uint s = 0u; s < 2u; s++) {
            const uvec2 sm = qg_k4_scale_min(hd, 2u * c + s);
            d1[s] = dm.x * float(sm.x);
            m1[s] = dm.y * float(sm.y);
        }
        const uvec4 qs = DQ_BUF4[(o + (q5 ? 48u : 16u) + 32u * c + 16u * h) >> 4];
        uvec4 qh = uvec4(0u);
        if (q5) qh = DQ_BUF4[(o + 16u + 16u * h) >> 4];
        e0 = 256u * sb + 64u * c + 16u * h;
        e1 = e0 + 32u;
        for (uint i = 0u; i < 4u; i++)
            for (uint k = 0u; k < 4u; k++) {
                const uint byte_ = (qs[i] >> (8u * k)) & 0xffu;
                uint lo = byte_ & 15u, hi = byte_ >> 4;
                if (q5) {
                    const uint hb = (qh[i] >> (8u * k)) & 0xffu;
                    lo += ((hb >> (2u * c)) & 1u) << 4;
                    hi += ((hb >> (2u * c + 1u)) & 1u) << 4;
                }
                precise float vl = d1[0] * float(lo) - m1[0];
                precise float vh = d1[1] * float(hi) - m1[1];
                w[4u * i + k] = vl;
                w[16u + 4u * i + k] = vh;
            }
    } else if (DQ_TYPE == QG_Q6_K) {
        const uint sb = u >> 3u, hh = (u & 7u) >> 2u, q = u & 3u, k0 = q >> 1u, p = q & 1u;
        const uint o = rb + 210u * sb;
        const float d = unpackHalf2x16(DQ_U16(o + 208u)).x;
        const uint si = o + 192u + 8u * hh + 2u * k0 + p;
        const float s0 = d * float(bitfieldExtract(int(DQ_U8(si)), 0, 8));
        const float s1 = d * float(bitfieldExtract(int(DQ_U8(si + 4u)), 0, 8));
        const uint lo_ = o + 64u * hh + 16u * q, ho = o + 128u + 32u * hh + 16u * p;
        e0 = 256u * sb + 128u * hh + 32u * k0 + 16u * p;
        e1 = e0 + 64u;
        for (uint i = 0u; i < 4u; i++) {
            const uint ul = DQ_W32(lo_ + 4u * i), uh = DQ_W32(ho + 4u * i);
            for (uint k = 0u; k < 4u; k++) {
                const uint l8 = (ul >> (8u * k)) & 0xffu, h8 = (uh >> (8u * k)) & 0xffu;
                const int ql = int((l8 & 15u) | (((h8 >> (2u * k0)) & 3u) << 4)) - 32;
                const int qv = int((l8 >> 4) | (((h8 >> (2u * k0 + 4u)) & 3u) << 4)) - 32;
                w[4u * i + k] = s0 * float(ql);
                w[16u + 4u * i + k] = s1 * float(qv);
            }
        }
    } else {
        e0 = 32u * u;
        e1 = e0 + 16u;
        for (uint i = 0u; i < 32u; i++) w[i] = uintBitsToFloat(0x7fc00000u);
    }
}
