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
 * NORM = 1 (decode graphs, NT == 1): the executor folded the rmsnorm that
 *   produced x; each workgroup normalizes its token's column into shared
 *   memory first (qg_xnorm.glsl: binding 6 the norm weight, push eps,
 *   XN4 = n / 4).  Otherwise binding 6 is bound to x and unused.
 * TOPK = 1 (MOE decode graphs: the executor dropped the topk dispatch):
 *   each workgroup routes its token itself from the router logits (binding
 *   7, (X, T)) with qg_topk.glsl, the rules and results of topk.comp, and
 *   takes its expert k = z % K; the workgroups of row block 0 and k = 0
 *   write the token's ids (binding 5) and weights (binding 8) for the
 *   aggregate.  Otherwise bindings 7 and 8 are bound to x and unused.
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
layout(constant_id = 8) const uint XN4 = 1u;
layout(constant_id = 9) const uint NORM = 0u;
layout(constant_id = 10) const uint TOPK = 0u;
layout(constant_id = 11) const uint UPL = 0u; /* units per lane, 0: dynamic */
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer GBuf { uint gbuf[]; };
layout(std430, binding = 1) readonly buffer GBuf4 { uvec4 gbuf4[]; };
layout(std430, binding = 2) readonly buffer UBuf { uint ubuf[]; };
layout(std430, binding = 2) readonly buffer UBuf4 { uvec4 ubuf4[]; };
layout(std430, binding = 3) readonly buffer XBuf { vec4 x4[]; };   /* (n, T) */
layout(std430, binding = 4) writeonly buffer HBuf { float h[]; };  /* (f, [K,] T) */
layout(std430, binding = 5) buffer IBuf { int ids[]; };            /* (K, T) */
layout(std430, binding = 3) readonly buffer XBufS { float xs[]; }; /* (n, T) */
layout(std430, binding = 6) readonly buffer NBuf { float nw[]; };  /* (n) NORM */
layout(std430, binding = 7) readonly buffer LBuf { float lg[]; };  /* (X, T) TOPK */
layout(std430, binding = 8) writeonly buffer WtBuf { float wts[]; }; /* (K, T) TOPK */

layout(push_constant) uniform PC {
    uint n;        /* elements per row (n_embd) */
    uint f;        /* rows per matrix (expert) */
    uint rbg, rbu; /* bytes per row of gate, up */
    uint k;        /* experts per token (MOE) */
    uint n_expert; /* (MOE) */
    uint gx;       /* workgroups along x */
    float eps;     /* NORM */
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
#include "qg_reduce.glsl"
#include "qg_xnorm.glsl"
#define QG_TK_LOGIT(i) lg[i]
#include "qg_topk.glsl"

float dot32(float w[32], uint xo, uint e0, uint e1) {
    float s = 0.0;
    const uint a = (xo + e0) >> 2, b = (xo + e1) >> 2;
    for (uint i = 0u; i < 4u; i++) {
        const vec4 xa = NORM != 0u ? sh_x4[a + i] : x4[a + i];
        const vec4 xb = NORM != 0u ? sh_x4[b + i] : x4[b + i];
        s += dot(vec4(w[4u * i], w[4u * i + 1u], w[4u * i + 2u], w[4u * i + 3u]), xa);
        s += dot(vec4(w[16u + 4u * i], w[17u + 4u * i], w[18u + 4u * i], w[19u + 4u * i]), xb);
    }
    return s;
}

/* Unit u of this group's RPT rows of gate and up against the nc columns:
 * acc[2(k*NT + t)] (gate), acc[2(k*NT + t) + 1] (up) += partial dots. */
void sw_unit(uint u, uint r0, uint g, uint G, uint row0, uint nc, uint cols[8],
             inout float acc[QG_ROWS_ACC]) {
    for (uint k = 0u; k < RPT; k++) {
        const uint r = r0 + g + k * G;
        if (r >= pc.f) break;
        float wg_[32], wu[32];
        uint e0, e1, f0, f1;
        dq_g((row0 + r) * pc.rbg, u, wg_, e0, e1);
        dq_u((row0 + r) * pc.rbu, u, wu, f0, f1);
        for (uint t = 0u; t < NT; t++) {
            if (t >= nc) break;
            const uint xo = NORM != 0u ? 0u : cols[t] * pc.n;
            acc[2u * (k * NT + t)] += dot32(wg_, xo, e0, e1);
            acc[2u * (k * NT + t) + 1u] += dot32(wu, xo, f0, f1);
        }
    }
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
        int e;
        if (TOPK != 0u) { /* route token z / K here; expert slot z % K */
            const uint t = z / pc.k, kk = z % pc.k, l = gl_LocalInvocationIndex;
            qg_topk_wg(t * pc.n_expert, pc.n_expert, pc.k);
            e = qg_tk_id[kk];
            if (r0 == 0u && kk == 0u)
                for (uint i = l; i < pc.k; i += WG) {
                    ids[t * pc.k + i] = qg_tk_id[i];
                    wts[t * pc.k + i] = qg_tk_w[i];
                }
        } else {
            e = ids[z];
        }
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
    if (NORM != 0u) qg_xnorm_stage(cols[0] * pc.n, pc.n, pc.eps); /* NT == 1 */

    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    /* UPL (units per lane, a constant): a loop the driver can unroll, all
     * of a lane's weight loads issued before the first is used; the
     * dynamic loop where the lanes are fewer than assumed */
    if (UPL != 0u && UPL * lanes >= nu) {
        for (uint i = 0u; i < UPL; i++)
            if (lane + i * lanes < nu) sw_unit(lane + i * lanes, r0, g, G, row0, nc, cols, acc);
    } else {
        for (uint u = lane; u < nu; u += lanes) sw_unit(u, r0, g, G, row0, nc, cols, acc);
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
