/*
 * qg_dqdot.glsl - the dot of one 32-element unit of a weight row with the
 * matching activations, in factored form, for every weight format: the
 * fast decode products (matmul_mv, swiglu_mv, aggregate_mv; executor
 * option fast_mv).  Units are qg_dequant.glsl's (same e0 / e1, see
 * qg_unit_elems), but no weight is dequantized to f32: for a part of a
 * unit with scale d and min m (K-quant sub-block halves),
 *   sum_i (d q_i - m) x_i = d sum_i q_i x_i - m sum_i x_i,
 * Q6_K  s (sum q x - 32 sum x),  Q4_0  d (sum q x - 8 sum x),
 * Q8_0  d sum q x,  F32 / F16 / BF16 plain dots.  The quants are taken
 * four bytes per integer op (w & 0x0F0F0F0F, (w >> 4) & ...) and made
 * exact floats by the 2^23 mantissa trick (qg_u8x4).  Activations stay
 * f32, accumulation f32; the order differs from the exact path (results
 * within the matmul tolerance, not bit-identical to it).
 *
 * The work is split so that a caller can issue every row's loads before
 * any math: DQD_LOAD reads the unit's raw bytes into four uvec4
 * registers (F32 reads nothing: its dot reads the buffer itself), DQD_DOT
 * computes the unit's dot from them.  DQD_FN does both.
 *
 * DQD_VALS (optional) gives the unit's 32 weights from the same raw
 * bytes, w[0..16) elements e0 .., w[16..32) e1 .. (qg_unit_elems), each
 * d q - m in f32 (one rounding, not GGML's exact order): the
 * cooperative-matrix products, which round them to f16 anyway.
 *
 * Include with defined (may be included several times, one set per
 * weight buffer):
 *   DQD_LOAD  void DQD_LOAD(uint rb, uint u, out uvec4 q[4])
 *   DQD_DOT   float DQD_DOT(uint rb, uint u, uvec4 q[4], vec4 xv[8], vec2 xs)
 *   DQD_FN    float DQD_FN(uint rb, uint u, vec4 xv[8], vec2 xs)
 *   DQD_VALS  void DQD_VALS(uint rb, uint u, uvec4 q[4], out float w[32])
 *             (only when defined)
 *   DQD_BUF   a uint array in a storage buffer holding the weight's bytes
 *   DQD_BUF4  a uvec4 array aliasing it (same binding)
 *   DQD_TYPE  its dtype (a QG_* id; usually a specialization constant)
 * rb: byte offset of the row (2-byte aligned; 16-byte for F32, F16, BF16,
 * Q4_K, Q5_K), u: the unit; xv[0..4) the activations of elements e0 ..
 * e0+15, xv[4..8) of e1 .. e1+15 (qg_unit_elems), xs = (sum xv[0..4),
 * sum xv[4..8)) (qg_xsums).  A type the executor never passes gives NaN.
 */

#ifndef QG_DQDOT_COMMON
#define QG_DQDOT_COMMON
/* The four bytes of w as exact floats: OR-ing a byte into the mantissa of
 * 2^23 gives 2^23 + b, and the subtraction is exact. */
vec4 qg_u8x4(uint w) {
    const uvec4 b = uvec4(w & 0xffu, (w >> 8) & 0xffu, (w >> 16) & 0xffu, w >> 24);
    return uintBitsToFloat(b | 0x4b000000u) - 8388608.0;
}
/* The four bytes of w as signed (int8) exact floats. */
vec4 qg_s8x4(uint w) {
    const uint v = w ^ 0x80808080u;
    const uvec4 b = uvec4(v & 0xffu, (v >> 8) & 0xffu, (v >> 16) & 0xffu, v >> 24);
    return uintBitsToFloat(b | 0x4b000000u) - 8388736.0; /* 2^23 + 128 */
}
/* 32 bits at byte offset 2 (odd2) or 0 of the word pair (a, b). */
uint qg_w32at(uint a, uint b, bool odd2) { return odd2 ? (a >> 16) | (b << 16) : a; }
/* Q4_K / Q5_K: quant word i of a unit (qs) as its bytes' low nibbles
 * (sub-block 2c: elements e0 + 4i ..) and high nibbles (2c + 1: e1 +
 * 4i ..), each byte one quant, with Q5_K's fifth bits from qh or-ed in. */
uvec2 qg_k4_quants(uint qs, uint qh, uint c, bool q5) {
    uint lo = qs & 0x0f0f0f0fu, hi = (qs >> 4) & 0x0f0f0f0fu;
    if (q5) {
        lo |= ((qh >> (2u * c)) & 0x01010101u) << 4;
        hi |= ((qh >> (2u * c + 1u)) & 0x01010101u) << 4;
    }
    return uvec2(lo, hi);
}
/* Q6_K: the 6-bit quants of a unit's word from its ql word ul and qh word
 * uh (k0: which 2-bit pair of qh), low (e0 + 4i ..) and high (e1 + 4i ..)
 * halves, each byte one unsigned quant (0..63). */
uvec2 qg_q6_quants(uint ul, uint uh, uint k0) {
    return uvec2((ul & 0x0f0f0f0fu) | (((uh >> (2u * k0)) & 0x03030303u) << 4),
                 ((ul >> 4) & 0x0f0f0f0fu) | (((uh >> (2u * k0 + 4u)) & 0x03030303u) << 4));
}
/* Q4_K / Q5_K: the scales (d1) and mins (m1) of sub-blocks 2c (.x, the
 * unit's low nibbles) and 2c + 1 (.y) from the super-block header hd. */
void qg_k4_unit_scales(uvec4 hd, uint c, out vec2 d1, out vec2 m1) {
    const vec2 dm = unpackHalf2x16(hd.x);
    for (uint s = 0u; s < 2u; s++) {
        const uvec2 sm = qg_k4_scale_min(hd, 2u * c + s);
        d1[s] = dm.x * float(sm.x);
        m1[s] = dm.y * float(sm.y);
    }
}
/* Q6_K: from the raw bytes q of unit u of the row at byte rb (the
 * loader's layout): the scales of its halves (s.x for elements e0 ..,
 * s.y for e1 ..; d times the int8 scale), and its quants' words, low and
 * high halves (qg_q6_quants of words i = 0..3). */
void qg_q6_unit(uint rb, uint u, uvec4 q[4], out vec2 s, out uvec2 lh[4]) {
    const uint hh = (u & 7u) >> 2u, qq = u & 3u, k0 = qq >> 1u, p = qq & 1u;
    const uint o = rb + 210u * (u >> 3u);
    const bool odd2 = (o & 2u) != 0u; /* ql, qh, d share it */
    const uint sb = 8u * ((o + 192u + 8u * hh + 2u * k0 + p) & 3u);
    const float d = unpackHalf2x16(odd2 ? q[3].x >> 16 : q[3].x).x;
    s = vec2(d * float(bitfieldExtract(int(q[2].z), int(sb), 8)),
             d * float(bitfieldExtract(int(q[2].w), int(sb), 8)));
    const uint ql[5] = uint[5](q[0].x, q[0].y, q[0].z, q[0].w, q[2].x);
    const uint qh[5] = uint[5](q[1].x, q[1].y, q[1].z, q[1].w, q[2].y);
    for (uint i = 0u; i < 4u; i++)
        lh[i] = qg_q6_quants(qg_w32at(ql[i], ql[i + 1u], odd2), qg_w32at(qh[i], qh[i + 1u], odd2),
                             k0);
}
/* (sum of xv[0..4), sum of xv[4..8)): the sums the min terms need. */
vec2 qg_xsums(vec4 xv[8]) {
    const vec4 a = (xv[0] + xv[1]) + (xv[2] + xv[3]);
    const vec4 b = (xv[4] + xv[5]) + (xv[6] + xv[7]);
    return vec2(dot(a, vec4(1.0)), dot(b, vec4(1.0)));
}
#endif

void DQD_LOAD(uint rb, uint u, out uvec4 q[4]) {
    for (uint i = 0u; i < 4u; i++) q[i] = uvec4(0u);
    if (DQD_TYPE == QG_F16 || DQD_TYPE == QG_BF16) {
        const uint o = (rb >> 4) + 4u * u; /* 64 bytes: elements 32u .. */
        for (uint i = 0u; i < 4u; i++) q[i] = DQD_BUF4[o + i];
    } else if (DQD_TYPE == QG_Q8_0) {
        const uint w = (rb + 34u * u) >> 2; /* 9 words hold the 34 bytes */
        q[0] = uvec4(DQD_BUF[w], DQD_BUF[w + 1u], DQD_BUF[w + 2u], DQD_BUF[w + 3u]);
        q[1] = uvec4(DQD_BUF[w + 4u], DQD_BUF[w + 5u], DQD_BUF[w + 6u], DQD_BUF[w + 7u]);
        q[2].x = DQD_BUF[w + 8u];
    } else if (DQD_TYPE == QG_Q4_0) {
        const uint w = (rb + 18u * u) >> 2; /* 5 words hold the 18 bytes */
        q[0] = uvec4(DQD_BUF[w], DQD_BUF[w + 1u], DQD_BUF[w + 2u], DQD_BUF[w + 3u]);
        q[1].x = DQD_BUF[w + 4u];
    } else if (DQD_TYPE == QG_Q4_K || DQD_TYPE == QG_Q5_K) {
        const bool q5 = DQD_TYPE == QG_Q5_K;
        const uint sb = u >> 3u, c = (u & 7u) >> 1u, h = u & 1u;
        const uint o = rb + (q5 ? 176u : 144u) * sb; /* 16-aligned */
        q[0] = DQD_BUF4[o >> 4];                     /* d|dmin, scales[12] */
        q[1] = DQD_BUF4[(o + (q5 ? 48u : 16u) + 32u * c + 16u * h) >> 4];
        if (q5) q[2] = DQD_BUF4[(o + 16u + 16u * h) >> 4];
    } else if (DQD_TYPE == QG_Q6_K) {
        const uint sb = u >> 3u, hh = (u & 7u) >> 2u, qq = u & 3u, k0 = qq >> 1u, p = qq & 1u;
        const uint o = rb + 210u * sb;
        const uint l = (o + 64u * hh + 16u * qq) >> 2, hq = (o + 128u + 32u * hh + 16u * p) >> 2;
        const uint si = (o + 192u + 8u * hh + 2u * k0 + p) >> 2;
        /* ql and qh: 5 words each (16 bytes at a 2-byte offset) */
        q[0] = uvec4(DQD_BUF[l], DQD_BUF[l + 1u], DQD_BUF[l + 2u], DQD_BUF[l + 3u]);
        q[1] = uvec4(DQD_BUF[hq], DQD_BUF[hq + 1u], DQD_BUF[hq + 2u], DQD_BUF[hq + 3u]);
        q[2] = uvec4(DQD_BUF[l + 4u], DQD_BUF[hq + 4u], DQD_BUF[si], DQD_BUF[si + 1u]);
        q[3].x = DQD_BUF[(o + 208u) >> 2]; /* d */
    }
}

float DQD_DOT(uint rb, uint u, uvec4 q[4], vec4 xv[8], vec2 xs) {
    if (DQD_TYPE == QG_F32) {
        const uint o = (rb >> 4) + 8u * u;
        float s = 0.0;
        for (uint i = 0u; i < 8u; i++) s += dot(uintBitsToFloat(DQD_BUF4[o + i]), xv[i]);
        return s;
    } else if (DQD_TYPE == QG_F16 || DQD_TYPE == QG_BF16) {
        /* word j of q holds elements 2j, 2j+1 */
        float s = 0.0;
        for (uint i = 0u; i < 4u; i++) {
            vec4 a, b;
            if (DQD_TYPE == QG_F16) {
                a = vec4(unpackHalf2x16(q[i].x), unpackHalf2x16(q[i].y));
                b = vec4(unpackHalf2x16(q[i].z), unpackHalf2x16(q[i].w));
            } else {
                a = uintBitsToFloat(uvec4(q[i].x << 16, q[i].x & 0xffff0000u,
                                          q[i].y << 16, q[i].y & 0xffff0000u));
                b = uintBitsToFloat(uvec4(q[i].z << 16, q[i].z & 0xffff0000u,
                                          q[i].w << 16, q[i].w & 0xffff0000u));
            }
            s += dot(a, xv[2u * i]) + dot(b, xv[2u * i + 1u]);
        }
        return s;
    } else if (DQD_TYPE == QG_Q8_0) {
        const bool odd2 = ((rb + 34u * u) & 2u) != 0u;
        const uint w[9] = uint[9](q[0].x, q[0].y, q[0].z, q[0].w, q[1].x, q[1].y, q[1].z, q[1].w,
                                  q[2].x);
        const float d = unpackHalf2x16(odd2 ? w[0] >> 16 : w[0]).x;
        float s = 0.0; /* quant word i: elements 4i .. 4i+3 */
        for (uint i = 0u; i < 8u; i++)
            s += dot(qg_s8x4(odd2 ? w[i + 1u] : qg_w32at(w[i], w[i + 1u], true)), xv[i]);
        return d * s;
    } else if (DQD_TYPE == QG_Q4_0) {
        const bool odd2 = ((rb + 18u * u) & 2u) != 0u;
        const uint w[5] = uint[5](q[0].x, q[0].y, q[0].z, q[0].w, q[1].x);
        const float d = unpackHalf2x16(odd2 ? w[0] >> 16 : w[0]).x;
        float s = 0.0; /* byte b of word i: element 4i+b low, 16+4i+b high */
        for (uint i = 0u; i < 4u; i++) {
            const uint v = odd2 ? w[i + 1u] : qg_w32at(w[i], w[i + 1u], true);
            s += dot(qg_u8x4(v & 0x0f0f0f0fu), xv[i]);
            s += dot(qg_u8x4((v >> 4) & 0x0f0f0f0fu), xv[4u + i]);
        }
        return d * (s - 8.0 * (xs.x + xs.y));
    } else if (DQD_TYPE == QG_Q4_K || DQD_TYPE == QG_Q5_K) {
        const bool q5 = DQD_TYPE == QG_Q5_K;
        const uint c = (u & 7u) >> 1u;
        const uvec4 qs = q[1], qh = q[2];
        vec2 d1, m1;
        qg_k4_unit_scales(q[0], c, d1, m1);
        float sl = 0.0, sh = 0.0;
        for (uint i = 0u; i < 4u; i++) {
            const uvec2 lh = qg_k4_quants(qs[i], qh[i], c, q5);
            sl += dot(qg_u8x4(lh.x), xv[i]);
            sh += dot(qg_u8x4(lh.y), xv[4u + i]);
        }
        return (d1.x * sl - m1.x * xs.x) + (d1.y * sh - m1.y * xs.y);
    } else if (DQD_TYPE == QG_Q6_K) {
        vec2 sc;
        uvec2 lh[4];
        qg_q6_unit(rb, u, q, sc, lh);
        float sl = 0.0, sh = 0.0; /* byte b of word i: elements 4i+b of each half */
        for (uint i = 0u; i < 4u; i++) {
            sl += dot(qg_u8x4(lh[i].x), xv[i]);
            sh += dot(qg_u8x4(lh[i].y), xv[4u + i]);
        }
        return sc.x * (sl - 32.0 * xs.x) + sc.y * (sh - 32.0 * xs.y);
    }
    return uintBitsToFloat(0x7fc00000u);
}

float DQD_FN(uint rb, uint u, vec4 xv[8], vec2 xs) {
    uvec4 q[4];
    DQD_LOAD(rb, u, q);
    return DQD_DOT(rb, u, q, xv, xs);
}

#ifdef DQD_VALS
void DQD_VALS(uint rb, uint u, uvec4 q[4], out float w[32]) {
    if (DQD_TYPE == QG_F32) {
        const uint o = (rb >> 4) + 8u * u;
        for (uint i = 0u; i < 8u; i++) {
            const vec4 v = uintBitsToFloat(DQD_BUF4[o + i]);
            for (uint j = 0u; j < 4u; j++) w[4u * i + j] = v[j];
        }
    } else if (DQD_TYPE == QG_F16 || DQD_TYPE == QG_BF16) {
        /* word j of q holds elements 2j, 2j+1 */
        for (uint j = 0u; j < 16u; j++) {
            const uint v = q[j >> 2][j & 3u];
            const vec2 h = DQD_TYPE == QG_F16 ? unpackHalf2x16(v)
                                              : uintBitsToFloat(uvec2(v << 16, v & 0xffff0000u));
            w[2u * j] = h.x;
            w[2u * j + 1u] = h.y;
        }
    } else if (DQD_TYPE == QG_Q8_0) {
        const bool odd2 = ((rb + 34u * u) & 2u) != 0u;
        const uint ww[9] = uint[9](q[0].x, q[0].y, q[0].z, q[0].w, q[1].x, q[1].y, q[1].z, q[1].w,
                                   q[2].x);
        const float d = unpackHalf2x16(odd2 ? ww[0] >> 16 : ww[0]).x;
        for (uint i = 0u; i < 8u; i++) {
            const vec4 v = d * qg_s8x4(odd2 ? ww[i + 1u] : qg_w32at(ww[i], ww[i + 1u], true));
            for (uint b = 0u; b < 4u; b++) w[4u * i + b] = v[b];
        }
    } else if (DQD_TYPE == QG_Q4_0) {
        const bool odd2 = ((rb + 18u * u) & 2u) != 0u;
        const uint ww[5] = uint[5](q[0].x, q[0].y, q[0].z, q[0].w, q[1].x);
        const float d = unpackHalf2x16(odd2 ? ww[0] >> 16 : ww[0]).x;
        for (uint i = 0u; i < 4u; i++) {
            const uint v = odd2 ? ww[i + 1u] : qg_w32at(ww[i], ww[i + 1u], true);
            const vec4 lo = d * (qg_u8x4(v & 0x0f0f0f0fu) - 8.0);
            const vec4 hi = d * (qg_u8x4((v >> 4) & 0x0f0f0f0fu) - 8.0);
            for (uint b = 0u; b < 4u; b++) {
                w[4u * i + b] = lo[b];
                w[16u + 4u * i + b] = hi[b];
            }
        }
    } else if (DQD_TYPE == QG_Q4_K || DQD_TYPE == QG_Q5_K) {
        const bool q5 = DQD_TYPE == QG_Q5_K;
        const uint c = (u & 7u) >> 1u;
        const uvec4 qs = q[1], qh = q[2];
        vec2 d1, m1;
        qg_k4_unit_scales(q[0], c, d1, m1);
        for (uint i = 0u; i < 4u; i++) {
            const uvec2 lh = qg_k4_quants(qs[i], qh[i], c, q5);
            const vec4 vl = d1.x * qg_u8x4(lh.x) - m1.x, vh = d1.y * qg_u8x4(lh.y) - m1.y;
            for (uint b = 0u; b < 4u; b++) {
                w[4u * i + b] = vl[b];
                w[16u + 4u * i + b] = vh[b];
            }
        }
    } else if (DQD_TYPE == QG_Q6_K) {
        vec2 sc;
        uvec2 lh[4];
        qg_q6_unit(rb, u, q, sc, lh);
        for (uint i = 0u; i < 4u; i++) {
            const vec4 vl = sc.x * (qg_u8x4(lh[i].x) - 32.0), vh = sc.y * (qg_u8x4(lh[i].y) - 32.0);
            for (uint b = 0u; b < 4u; b++) {
                w[4u * i + b] = vl[b];
                w[16u + 4u * i + b] = vh[b];
            }
        }
    } else {
        for (uint i = 0u; i < 32u; i++) w[i] = uintBitsToFloat(0x7fc00000u);
    }
}
#endif
