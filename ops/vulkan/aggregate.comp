#version 450
/*
 * aggregate.comp - y[:, t] = sum_k wts[k, t] * (D_e h[:, k, t]),
 * e = ids[k, t]: the experts' down projections and their weighted sum.
 *
 * D (n=f, m=n_embd, X) any format; h (f, K, T); ids, wts (K, T);
 * y (m, T).  Workgroup: NR rows of token gl_WorkGroupID.z; invocations
 * take 32-element chunks of every chosen expert's rows and accumulate
 * wts * partial dot; the NR sums are reduced over the workgroup.  An id
 * outside [0, X) writes NaN.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 64u;
layout(constant_id = 1) const int WTYPE = 0;
layout(constant_id = 2) const uint NR = 2u; /* <= 16 */
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer DBuf { uint dbuf[]; };   /* (f, m, X) */
layout(std430, binding = 2) readonly buffer HBuf { vec4 h4[]; };     /* (f, K, T) */
layout(std430, binding = 3) readonly buffer IBuf { int ids[]; };     /* (K, T) */
layout(std430, binding = 4) readonly buffer WtBuf { float wts[]; };  /* (K, T) */
layout(std430, binding = 5) writeonly buffer YBuf { float y[]; };    /* (m, T) */

layout(push_constant) uniform PC {
    uint n;        /* f: elements per row */
    uint m;        /* rows per expert (n_embd) */
    uint rb;       /* bytes per row */
    uint k;        /* experts per token */
    uint n_expert;
    uint gx;
} pc;

#define DQ_FN dq_d
#define DQ_BUF dbuf
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#include "qg_reduce.glsl"

void main() {
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    const uint t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK) || r0 >= pc.m) return;
    const uint nch = pc.n / 32u;
    bool bad = false;
    float acc[QG_RED_N];
    [[unroll]] for (uint i = 0u; i < QG_RED_N; i++) acc[i] = 0.0;
    for (uint kk = 0u; kk < pc.k; kk++) {
        const int e = ids[t * pc.k + kk];
        if (e < 0 || uint(e) >= pc.n_expert) {
            bad = true;
            continue;
        }
        const float wk = wts[t * pc.k + kk];
        const uint row0 = uint(e) * pc.m + r0;
        const uint ho = (t * pc.k + kk) * pc.n;
        for (uint c = gl_LocalInvocationIndex; c < nch; c += WG) {
            [[unroll]] for (uint r = 0u; r < NR; r++) {
                if (r0 + r >= pc.m) break;
                float w[32];
                dq_d((row0 + r) * pc.rb, c, w);
                const uint xo = (ho + 32u * c) >> 2;
                float s = 0.0;
                [[unroll]] for (uint i = 0u; i < 8u; i++)
                    s += dot(vec4(w[4u * i], w[4u * i + 1u], w[4u * i + 2u], w[4u * i + 3u]),
                             h4[xo + i]);
                acc[r] += wk * s;
            }
        }
    }
    wg_sum_n(acc, NR);
    const uint l = gl_LocalInvocationIndex;
    if (l < NR && r0 + l < pc.m)
        y[t * pc.m + r0 + l] = bad ? uintBitsToFloat(0x7fc00000u) : qg_redn[l];
}
