#version 450
/*
 * matmul.comp - y (m, T) = W x for a weight W (n, m) in any format and
 * x (n, T) f32: the matmul, router, lm_head and qkv nodes.
 *
 * Workgroup (WG invocations): NR consecutive rows x NT token columns.
 * Invocation l takes chunks l, l+WG, ... (32 elements each) of every one
 * of its rows, dequantizes the chunk once and multiplies it with the NT
 * columns of x; the NR*NT partial sums are reduced over the workgroup.
 * Row groups are numbered gl_WorkGroupID.y * gx + gl_WorkGroupID.x (the
 * grid may be 2-D when m / NR exceeds a dimension's limit); column blocks
 * are gl_WorkGroupID.z.  last_only: just the last live column of x, into
 * column 0 of y (lm_head without all logits).
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 64u;
layout(constant_id = 1) const int WTYPE = 0;
layout(constant_id = 2) const uint NR = 2u; /* rows per workgroup */
layout(constant_id = 3) const uint NT = 1u; /* columns per workgroup, NR*NT <= 16 */
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer WBuf { uint wbuf[]; };  /* (n, m) */
layout(std430, binding = 2) readonly buffer XBuf { vec4 x4[]; };    /* (n, T) */
layout(std430, binding = 3) writeonly buffer YBuf { float y[]; };   /* (m, T) */

layout(push_constant) uniform PC {
    uint n;         /* elements per row, a multiple of 32 */
    uint m;         /* rows */
    uint rb;        /* bytes per row */
    uint last_only;
    uint gx;        /* workgroups along x */
} pc;

#define DQ_FN dq_w
#define DQ_BUF wbuf
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#include "qg_reduce.glsl"

void main() {
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    const uint n_tok = uint(N_TOK);
    const uint ncol = pc.last_only != 0u ? 1u : n_tok;
    const uint c0 = gl_WorkGroupID.z * NT;
    if (r0 >= pc.m || c0 >= ncol) return;
    const uint xc0 = pc.last_only != 0u ? n_tok - 1u : c0;
    const uint nc = min(NT, ncol - c0);
    const uint nch = pc.n / 32u;

    float acc[QG_RED_N];
    [[unroll]] for (uint i = 0u; i < QG_RED_N; i++) acc[i] = 0.0;
    for (uint c = gl_LocalInvocationIndex; c < nch; c += WG) {
        [[unroll]] for (uint r = 0u; r < NR; r++) {
            if (r0 + r >= pc.m) break;
            float w[32];
            dq_w((r0 + r) * pc.rb, c, w);
            [[unroll]] for (uint t = 0u; t < NT; t++) {
                if (t >= nc) break;
                const uint xo = ((xc0 + t) * pc.n + 32u * c) >> 2;
                float s = 0.0;
                [[unroll]] for (uint i = 0u; i < 8u; i++)
                    s += dot(vec4(w[4u * i], w[4u * i + 1u], w[4u * i + 2u], w[4u * i + 3u]),
                             x4[xo + i]);
                acc[r * NT + t] += s;
            }
        }
    }
    wg_sum_n(acc, NR * NT);
    const uint l = gl_LocalInvocationIndex;
    if (l < NR * NT) {
        const uint r = l / NT, t = l % NT;
        if (r0 + r < pc.m && t < nc) y[(c0 + t) * pc.m + r0 + r] = qg_redn[l];
    }
}
