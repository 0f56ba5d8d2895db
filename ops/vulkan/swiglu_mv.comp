#version 450
/*
 * swiglu_mv.comp - h = silu(G x) * (U x) in decode graphs when the
 * executor's fast_mv option is on (QG_VK_MV=1; swiglu.comp otherwise).
 * Same bindings and push constants as swiglu.comp with NT = 1:
 * MOE == 0 (the dense FFN): G, U (n, f); x (n) -> h (f).
 * MOE == 1 (expert_swiglu): G, U (n, f, X); ids (K) -> h (f, K);
 *   gl_WorkGroupID.z = k reads expert ids[k] (t*K + k with t = 0); an id
 *   outside [0, X) writes NaN.
 *
 * Work layout as matmul_mv.comp: a workgroup owns NR = G * RPT rows, each
 * row group RPT of them (rows g, g + G, ...).  Per unit u of its lane a
 * lane loads the raw bytes of u of the RPT gate rows and the RPT up rows
 * (2 RPT loads in flight), then x's elements of u once with their sums
 * (twice when the gate and up formats lay units out differently, e.g.
 * Q4_K and Q6_K), then the 2 RPT factored dots (qg_dqdot.glsl).  Partial
 * 2k is row k's gate, 2k+1 its up (2 RPT <= 16), reduced over the group.
 * PF = 1 (qg_vk_opts.mv_pf): the next unit's raw bytes are loaded during
 * this unit's dots.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 128u;
layout(constant_id = 1) const int WTYPE = 0; /* gate */
layout(constant_id = 2) const int UTYPE = 0; /* up */
layout(constant_id = 3) const uint TPR = 32u;
layout(constant_id = 5) const uint RPT = 1u; /* <= RPT_MAX */
#define RPT_MAX 8
layout(constant_id = 6) const uint MOE = 0u;
layout(constant_id = 7) const uint SGROWS = 0u;
layout(constant_id = 9) const uint PF = 0u; /* 1: load the next unit during this one */
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer GBuf { uint gbuf[]; };
layout(std430, binding = 1) readonly buffer GBuf4 { uvec4 gbuf4[]; };
layout(std430, binding = 2) readonly buffer UBuf { uint ubuf[]; };
layout(std430, binding = 2) readonly buffer UBuf4 { uvec4 ubuf4[]; };
layout(std430, binding = 3) readonly buffer XBuf { vec4 x4[]; };   /* (n) */
layout(std430, binding = 4) writeonly buffer HBuf { float h[]; };  /* (f[, K]) */
layout(std430, binding = 5) readonly buffer IBuf { int ids[]; };   /* (K) */

layout(push_constant) uniform PC {
    uint n;        /* elements per row (n_embd) */
    uint f;        /* rows per matrix (expert) */
    uint rbg, rbu; /* bytes per row of gate, up */
    uint k;        /* experts per token (MOE) */
    uint n_expert; /* (MOE) */
    uint gx;       /* workgroups along x */
} pc;

#define DQD_LOAD ld_g
#define DQD_DOT dot_g
#define DQD_FN dqd_g
#define DQD_BUF gbuf
#define DQD_BUF4 gbuf4
#define DQD_TYPE WTYPE
#include "qg_dqdot.glsl"
#undef DQD_LOAD
#undef DQD_DOT
#undef DQD_FN
#undef DQD_BUF
#undef DQD_BUF4
#undef DQD_TYPE
#define DQD_LOAD ld_u
#define DQD_DOT dot_u
#define DQD_FN dqd_u
#define DQD_BUF ubuf
#define DQD_BUF4 ubuf4
#define DQD_TYPE UTYPE
#include "qg_dqdot.glsl"
/* qg_dequant.glsl for qg_unit_elems (its dq_g goes unused) */
#define DQ_FN dq_g
#define DQ_BUF gbuf
#define DQ_BUF4 gbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#include "qg_rows.glsl"

/* x's elements e0 .. e0+15 and e1 .. e1+15 (xv) and their sums (xs) */
void load_x(uint e0, uint e1, out vec4 xv[8], out vec2 xs) {
    const uint a = e0 >> 2, b = e1 >> 2;
    for (uint i = 0u; i < 4u; i++) {
        xv[i] = x4[a + i];
        xv[4u + i] = x4[b + i];
    }
    xs = qg_xsums(xv);
}

void main() {
    const uint G = qg_rows_G(), NR = G * RPT, g = qg_rows_g(), lane = qg_rows_lane();
    const uint lanes = qg_rows_lanes();
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    const uint z = gl_WorkGroupID.z; /* h column: k (MOE), else 0 */
    uint row0 = 0u;
    bool bad = false;
    if (MOE != 0u) {
        if (z >= uint(N_TOK) * pc.k || r0 >= pc.f) return;
        const int e = ids[z];
        bad = e < 0 || uint(e) >= pc.n_expert;
        row0 = bad ? 0u : uint(e) * pc.f;
    } else if (z >= uint(N_TOK) || r0 >= pc.f) {
        return;
    }
    const uint nu = pc.n / 32u;
    uint rk[RPT_MAX]; /* row of the expert's matrices */
    [[unroll]] for (uint k = 0u; k < RPT_MAX; k++) rk[k] = row0 + min(r0 + g + k * G, pc.f - 1u);
    /* do the gate's and the up's units cover the same elements? */
    uint a0, a1, b0, b1;
    qg_unit_elems(WTYPE, 1u, a0, a1);
    qg_unit_elems(UTYPE, 1u, b0, b1);
    const bool same_x = a0 == b0 && a1 == b1;

    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    /* unit u's raw bytes of each row of the gate and the up; PF: also
     * unit u + lanes's, loaded during u's dots */
    uvec4 qg_[RPT_MAX][4], qu[RPT_MAX][4], qgn[RPT_MAX][4], qun[RPT_MAX][4];
    for (uint u = lane; u < nu; u += lanes) {
        if (PF == 0u || u == lane)
            [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
                if (k < RPT) {
                    ld_g(rk[k] * pc.rbg, u, qg_[k]);
                    ld_u(rk[k] * pc.rbu, u, qu[k]);
                }
        const bool more = PF != 0u && u + lanes < nu;
        if (more)
            [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
                if (k < RPT) {
                    ld_g(rk[k] * pc.rbg, u + lanes, qgn[k]);
                    ld_u(rk[k] * pc.rbu, u + lanes, qun[k]);
                }
        uint e0, e1;
        vec4 xv[8];
        vec2 xs;
        qg_unit_elems(WTYPE, u, e0, e1);
        load_x(e0, e1, xv, xs);
        [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
            if (k < RPT) acc[2u * k] += dot_g(rk[k] * pc.rbg, u, qg_[k], xv, xs);
        if (!same_x) {
            qg_unit_elems(UTYPE, u, e0, e1);
            load_x(e0, e1, xv, xs);
        }
        [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
            if (k < RPT) acc[2u * k + 1u] += dot_u(rk[k] * pc.rbu, u, qu[k], xv, xs);
        if (more) {
            qg_ = qgn;
            qu = qun;
        }
    }
    qg_rows_reduce(acc, 2u * RPT);
    uint j, gg;
    if (qg_rows_slot(RPT, j, gg)) {
        const uint r = r0 + gg + j * G;
        if (r < pc.f) {
            const float gs = qg_rows_sum(acc, 2u * j, gg), us = qg_rows_sum(acc, 2u * j + 1u, gg);
            h[z * pc.f + r] = bad ? uintBitsToFloat(0x7fc00000u) : qg_silu(gs) * us;
        }
    }
}
