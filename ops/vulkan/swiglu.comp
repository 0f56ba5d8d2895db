#version 450
/*
 * swiglu.comp - h = silu(G x) * (U x), per row of the gate and up weights,
 * in decode graphs (multi-token graphs use gemm_swiglu.comp) and for the
 * unfused expert_swiglu node.
 *
 * MOE == 0 (the dense FFN): G, U (n, f); x (n, T) -> h (f, T).  Workgroup:
 *   NR rows x NT token columns (gl_WorkGroupID.z = column block).
 * MOE == 1 (expert_swiglu): G, U (n, f, X); ids (K, T) -> h (f, K, T).
 *   gl_WorkGroupID.z = t*K + k reads expert ids[k, t] (NT must be 1); an
 *   id outside [0, X) writes NaN.
 * Rows as in matmul.comp (qg_rows.glsl): lanes take units of both
 * matrices; gate and up partial sums (2*RPT*NT <= 16) are reduced over the
 * row's lanes.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 128u;
layout(constant_id = 1) const int WTYPE = 0; /* gate */
layout(constant_id = 2) const int UTYPE = 0; /* up */
layout(constant_id = 3) const uint TPR = 32u;
layout(constant_id = 4) const uint NT = 1u;
layout(constant_id = 5) const uint RPT = 1u;
layout(constant_id = 6) const uint MOE = 0u;
layout(constant_id = 7) const uint SGROWS = 0u;
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer GBuf { uint gbuf[]; };
layout(std430, binding = 1) readonly buffer GBuf4 { uvec4 gbuf4[]; };
layout(std430, binding = 2) readonly buffer UBuf { uint ubuf[]; };
layout(std430, binding = 2) readonly buffer UBuf4 { uvec4 ubuf4[]; };
layout(std430, binding = 3) readonly buffer XBuf { vec4 x4[]; };   /* (n, T) */
layout(std430, binding = 4) writeonly buffer HBuf { float h[]; };  /* (f, [K,] T) */
layout(std430, binding = 5) readonly buffer IBuf { int ids[]; };   /* (K, T) */

layout(push_constant) uniform PC {
    uint n;        /* elements per row (n_embd) */
    uint f;        /* rows per matrix (expert) */
    uint rbg, rbu; /* bytes per row of gate, up */
    uint k;        /* experts per token (MOE) */
    uint n_expert; /* (MOE) */
    uint gx;       /* workgroups along x */
} pc;

#define DQ_FN dq_g
#define DQ_BUF gbuf
#define DQ_BUF4 gbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#undef DQ_FN
#undef DQ_BUF
#undef DQ_BUF4
#undef DQ_TYPE
#define DQ_FN dq_u
#define DQ_BUF ubuf
#define DQ_BUF4 ubuf4
#define DQ_TYPE UTYPE
#include "qg_dequant.glsl"
#include "qg_rows.glsl"

float dot32(float w[32], uint xo, uint e0, uint e1) {
    float s = 0.0;
    const uint a = (xo + e0) >> 2, b = (xo + e1) >> 2;
    for (uint i = 0u; i < 4u; i++) {
        s += dot(vec4(w[4u * i], w[4u * i + 1u], w[4u * i + 2u], w[4u * i + 3u]), x4[a + i]);
        s += dot(vec4(w[16u + 4u * i], w[17u + 4u * i], w[18u + 4u * i], w[19u + 4u * i]), x4[b + i]);
    }
    return s;
}

void main() {
    const uint G = qg_rows_G(), NR = G * RPT, g = qg_rows_g(), lane = qg_rows_lane();
    const uint lanes = qg_rows_lanes();
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    const uint n_tok = uint(N_TOK);
    const uint z = gl_WorkGroupID.z;
    uint cols[8], ocols[8]; /* x (token) and h column of each column */
    uint nc, row0 = 0u;
    bool bad = false;
    if (MOE != 0u) {
        if (z >= n_tok * pc.k || r0 >= pc.f) return;
        const int e = ids[z];
        bad = e < 0 || uint(e) >= pc.n_expert;
        row0 = bad ? 0u : uint(e) * pc.f;
        nc = 1u;
        for (uint t = 0u; t < 8u; t++) {
            ocols[t] = z;        /* output column (t*K + k) */
            cols[t] = z / pc.k;  /* token */
        }
    } else {
        const uint c0 = z * NT;
        if (c0 >= n_tok || r0 >= pc.f) return;
        nc = min(NT, n_tok - c0);
        for (uint t = 0u; t < 8u; t++) cols[t] = ocols[t] = c0 + t;
    }
    const uint nu = pc.n / 32u;

    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    for (uint u = lane; u < nu; u += lanes) {
        for (uint k = 0u; k < RPT; k++) {
            const uint r = r0 + g + k * G;
            if (r >= pc.f) break;
            float wg_[32], wu[32];
            uint e0, e1, f0, f1;
            dq_g((row0 + r) * pc.rbg, u, wg_, e0, e1);
            dq_u((row0 + r) * pc.rbu, u, wu, f0, f1);
            for (uint t = 0u; t < NT; t++) {
                if (t >= nc) break;
                const uint xo = cols[t] * pc.n;
                acc[2u * (k * NT + t)] += dot32(wg_, xo, e0, e1);
                acc[2u * (k * NT + t) + 1u] += dot32(wu, xo, f0, f1);
            }
        }
    }
    /* partial 2j is gate, 2j+1 up of slot j: row k = j / NT, column t = j % NT */
    qg_rows_reduce(acc, 2u * RPT * NT);
    uint j, gg;
    if (qg_rows_slot(RPT * NT, j, gg)) {
        const uint t = j % NT, r = r0 + gg + (j / NT) * G;
        if (r < pc.f && t < nc) {
            const float gs = qg_rows_sum(acc, 2u * j, gg), us = qg_rows_sum(acc, 2u * j + 1u, gg);
            h[ocols[t] * pc.f + r] = bad ? uintBitsToFloat(0x7fc00000u) : qg_silu(gs) * us;
        }
    }
}
