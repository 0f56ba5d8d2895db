/*
 * qg_dequant.glsl - exact dequantization of one 32-element chunk of a
 * weight row, for every weight format (GGML block layouts, see
 * ops/quant/qg_quant_blocks.h; values computed in GGML's operation order).
 *
 * Include with three macros defined; may be included several times with
 * different ones (one function per weight buffer):
 *   DQ_FN    the function's name
 *   DQ_BUF   a uint array in a storage buffer holding the weight's bytes
 *   DQ_TYPE  its dtype (a QG_* id; usually a specialization constant)
 * The function is
 *   void DQ_FN(uint rb, uint c, out float w[32])
 * rb: byte offset of the row in DQ_BUF (rows of every format start on a
 * 2-byte boundary); c: chunk index in the row (elements 32c .. 32c+31);
 * w: the 32 dequantized values.
 *
 * Chunk of each format: F32/F16/BF16 32 elements; Q8_0/Q4_0 one block;
 * Q4_K/Q5_K sub-block c%8 of super-block c/8 (one scale and min); Q6_K
 * elements 32(c%8).. of super-block c/8 (two 16-element scales).
 */

/* 32 bits at byte offset o (o even) */
#define DQ_W32(o) ((((o) & 2u) == 0u) ? DQ_BUF[(o) >> 2] \
    : ((DQ_BUF[(o) >> 2] >> 16) | (DQ_BUF[((o) >> 2) + 1u] << 16)))
/* 16 bits at byte offset o (o even) */
#define DQ_U16(o) ((DQ_BUF[(o) >> 2] >> (((o) & 2u) * 8u)) & 0xffffu)
/* 8 bits at byte offset o */
#define DQ_U8(o) ((DQ_BUF[(o) >> 2] >> (((o) & 3u) * 8u)) & 0xffu)

void DQ_FN(uint rb, uint c, out float w[32]) {
    if (DQ_TYPE == QG_F32) {
        const uint o = (rb >> 2) + 32u * c;
        [[unroll]] for (uint i = 0u; i < 32u; i++) w[i] = uintBitsToFloat(DQ_BUF[o + i]);
    } else if (DQ_TYPE == QG_F16) {
        const uint o = (rb >> 2) + 16u * c;
        [[unroll]] for (uint i = 0u; i < 16u; i++) {
            const vec2 v = unpackHalf2x16(DQ_BUF[o + i]);
            w[2u * i] = v.x;
            w[2u * i + 1u] = v.y;
        }
    } else if (DQ_TYPE == QG_BF16) {
        const uint o = (rb >> 2) + 16u * c;
        [[unroll]] for (uint i = 0u; i < 16u; i++) {
            const uint u = DQ_BUF[o + i];
            w[2u * i] = uintBitsToFloat(u << 16);
            w[2u * i + 1u] = uintBitsToFloat(u & 0xffff0000u);
        }
    } else if (DQ_TYPE == QG_Q8_0) {
        const uint o = rb + 34u * c;
        const float d = unpackHalf2x16(DQ_U16(o)).x;
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            const int u = int(DQ_W32(o + 2u + 4u * i));
            [[unroll]] for (uint b = 0u; b < 4u; b++)
                w[4u * i + b] = float(bitfieldExtract(u, int(8u * b), 8)) * d;
        }
    } else if (DQ_TYPE == QG_Q4_0) {
        const uint o = rb + 18u * c;
        const float d = unpackHalf2x16(DQ_U16(o)).x;
        [[unroll]] for (uint i = 0u; i < 4u; i++) {
            const uint u = DQ_W32(o + 2u + 4u * i);
            [[unroll]] for (uint b = 0u; b < 4u; b++) {
                const uint q = (u >> (8u * b)) & 0xffu;
                w[4u * i + b] = float(int(q & 15u) - 8) * d;
                w[16u + 4u * i + b] = float(int(q >> 4) - 8) * d;
            }
        }
    } else if (DQ_TYPE == QG_Q4_K || DQ_TYPE == QG_Q5_K) {
        const uint bs = DQ_TYPE == QG_Q4_K ? 144u : 176u;
        const uint o = rb + bs * (c >> 3u), j = c & 7u;
        const vec2 dm = unpackHalf2x16(DQ_W32(o));
        const uint a = DQ_W32(o + 4u), b = DQ_W32(o + 8u), cc = DQ_W32(o + 12u);
        uint sc, mn;
        if (j < 4u) {
            sc = (a >> (8u * j)) & 63u;
            mn = (b >> (8u * j)) & 63u;
        } else {
            const uint s = 8u * (j - 4u);
            sc = ((cc >> s) & 15u) | (((a >> (s + 6u)) & 3u) << 4);
            mn = ((cc >> (s + 4u)) & 15u) | (((b >> (s + 6u)) & 3u) << 4);
        }
        const float d1 = dm.x * float(sc), m1 = dm.y * float(mn);
        const uint qo = o + (DQ_TYPE == QG_Q4_K ? 16u : 48u) + 32u * (j >> 1u);
        const uint sh = (j & 1u) * 4u;
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            const uint u = DQ_W32(qo + 4u * i);
            uint hb = 0u;
            if (DQ_TYPE == QG_Q5_K) hb = DQ_W32(o + 16u + 4u * i) >> j;
            [[unroll]] for (uint k = 0u; k < 4u; k++) {
                uint q = (u >> (8u * k + sh)) & 15u;
                if (DQ_TYPE == QG_Q5_K) q += ((hb >> (8u * k)) & 1u) << 4;
                precise float v = d1 * float(q) - m1; /* no fma: GGML's rounding */
                w[4u * i + k] = v;
            }
        }
    } else if (DQ_TYPE == QG_Q6_K) {
        const uint o = rb + 210u * (c >> 3u), j = c & 7u;
        const uint h = j >> 2u, qq = j & 3u;
        const float d = unpackHalf2x16(DQ_U16(o + 208u)).x;
        const uint so = o + 192u + 8u * h + 2u * qq;
        const float d0 = d * float(bitfieldExtract(int(DQ_U8(so)), 0, 8));
        const float d1 = d * float(bitfieldExtract(int(DQ_U8(so + 1u)), 0, 8));
        const uint lo = o + 64u * h + 32u * (qq & 1u), ls = (qq >> 1u) * 4u;
        const uint ho = o + 128u + 32u * h, hs = 2u * qq;
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            const uint ul = DQ_W32(lo + 4u * i), uh = DQ_W32(ho + 4u * i);
            [[unroll]] for (uint k = 0u; k < 4u; k++) {
                const int q = int(((ul >> (8u * k + ls)) & 15u) |
                                  (((uh >> (8u * k + hs)) & 3u) << 4)) - 32;
                w[4u * i + k] = (i < 4u ? d0 : d1) * float(q);
            }
        }
    } else {
        [[unroll]] for (uint i = 0u; i < 32u; i++) w[i] = uintBitsToFloat(0x7fc00000u);
    }
}
