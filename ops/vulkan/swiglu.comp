#version 450
/*
 * swiglu.comp - h = silu(G x) * (U x), per row of the gate and up weights.
 *
 * MOE == 0 (the dense FFN): G, U (n, f); x (n, T) -> h (f, T).  Workgroup:
 *   NR rows x NT token columns (gl_WorkGroupID.z = column block).
 * MOE == 1 (expert_swiglu): G, U (n, f, X); ids (K, T) -> h (f, K, T).
 *   gl_WorkGroupID.z = t*K + k reads expert ids[k, t] (NT must be 1); an
 *   id outside [0, X) writes NaN.
 * Rows as in matmul.comp: invocations take 32-element chunks, gate and up
 * partial sums (2*NR*NT <= 16) are reduced over the workgroup.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 64u;
layout(constant_id = 1) const int WTYPE = 0; /* gate */
layout(constant_id = 2) const int UTYPE = 0; /* up */
layout(constant_id = 3) const uint NR = 2u;
layout(constant_id = 4) const uint NT = 1u;
layout(constant_id = 5) const uint MOE = 0u;
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer GBuf { uint gbuf[]; };
layout(std430, binding = 2) readonly buffer UBuf { uint ubuf[]; };
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
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#undef DQ_FN
#undef DQ_BUF
#undef DQ_TYPE
#define DQ_FN dq_u
#define DQ_BUF ubuf
#define DQ_TYPE UTYPE
#include "qg_dequant.glsl"
#include "qg_reduce.glsl"

void main() {
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    const uint n_tok = uint(N_TOK);
    const uint z = gl_WorkGroupID.z;
    uint c0, xc0, nc, row0 = 0u;
    bool bad = false;
    if (MOE != 0u) {
        if (z >= n_tok * pc.k || r0 >= pc.f) return;
        const int e = ids[z];
        bad = e < 0 || uint(e) >= pc.n_expert;
        row0 = bad ? 0u : uint(e) * pc.f;
        c0 = z;           /* output column (t*K + k) */
        xc0 = z / pc.k;   /* token */
        nc = 1u;
    } else {
        c0 = z * NT;
        if (c0 >= n_tok || r0 >= pc.f) return;
        xc0 = c0;
        nc = min(NT, n_tok - c0);
    }
    const uint nch = pc.n / 32u;

    float acc[QG_RED_N];
    [[unroll]] for (uint i = 0u; i < QG_RED_N; i++) acc[i] = 0.0;
    for (uint c = gl_LocalInvocationIndex; c < nch; c += WG) {
        [[unroll]] for (uint r = 0u; r < NR; r++) {
            if (r0 + r >= pc.f) break;
            float wg_[32], wu[32];
            dq_g((row0 + r0 + r) * pc.rbg, c, wg_);
            dq_u((row0 + r0 + r) * pc.rbu, c, wu);
            [[unroll]] for (uint t = 0u; t < NT; t++) {
                if (t >= nc) break;
                const uint xo = ((xc0 + t) * pc.n + 32u * c) >> 2;
                float sg = 0.0, su = 0.0;
                [[unroll]] for (uint i = 0u; i < 8u; i++) {
                    const vec4 xv = x4[xo + i];
                    sg += dot(vec4(wg_[4u * i], wg_[4u * i + 1u], wg_[4u * i + 2u], wg_[4u * i + 3u]), xv);
                    su += dot(vec4(wu[4u * i], wu[4u * i + 1u], wu[4u * i + 2u], wu[4u * i + 3u]), xv);
                }
                acc[2u * (r * NT + t)] += sg;
                acc[2u * (r * NT + t) + 1u] += su;
            }
        }
    }
    wg_sum_n(acc, 2u * NR * NT);
    const uint l = gl_LocalInvocationIndex;
    if (l < NR * NT) {
        const uint r = l / NT, t = l % NT;
        if (r0 + r < pc.f && t < nc) {
            const float g = qg_redn[2u * l], u = qg_redn[2u * l + 1u];
            h[(c0 + t) * pc.f + r0 + r] = bad ? uintBitsToFloat(0x7fc00000u) : qg_silu(g) * u;
        }
    }
}
