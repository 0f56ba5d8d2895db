#version 450
/*
 * aggregate.comp - y[:, t] = sum_k wts[k, t] * (D_e h[:, k, t]),
 * e = ids[k, t]: the experts' down projections and their weighted sum.
 *
 * D (n=f, m=n_embd, X) any format; h (f, K, T); ids, wts (K, T);
 * y (m, T).  Workgroup: NR rows (qg_rows.glsl) of token gl_WorkGroupID.z;
 * lanes take units of every chosen expert's rows and accumulate
 * wts * partial dot; the RPT sums per lane are reduced over the row's
 * lanes.  An id outside [0, X) writes NaN.
 * RESID = 1 (executor fold, decode graphs: exec/vulkan/qg_vk_fold.c):
 *   y = r + sum, r (m, T) at binding 6: the residual add that was the
 *   MoE output's only reader (add.comp's f32 add); otherwise binding 6 is
 *   bound to h and never read.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 128u;
layout(constant_id = 1) const int WTYPE = 0;
layout(constant_id = 2) const uint TPR = 32u;
layout(constant_id = 3) const uint RPT = 1u; /* <= min(16, TPR) */
layout(constant_id = 4) const uint RESID = 0u;
layout(constant_id = 7) const uint SGROWS = 0u;
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer DBuf { uint dbuf[]; };   /* (f, m, X) */
layout(std430, binding = 1) readonly buffer DBuf4 { uvec4 dbuf4[]; };
layout(std430, binding = 2) readonly buffer HBuf { vec4 h4[]; };     /* (f, K, T) */
layout(std430, binding = 3) readonly buffer IBuf { int ids[]; };     /* (K, T) */
layout(std430, binding = 4) readonly buffer WtBuf { float wts[]; };  /* (K, T) */
layout(std430, binding = 5) writeonly buffer YBuf { float y[]; };    /* (m, T) */
layout(std430, binding = 6) readonly buffer RBuf { float res[]; };   /* (m, T) RESID */

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
#define DQ_BUF4 dbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#include "qg_rows.glsl"

void main() {
    const uint G = qg_rows_G(), NR = G * RPT, g = qg_rows_g(), lane = qg_rows_lane();
    const uint lanes = qg_rows_lanes();
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    const uint t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK) || r0 >= pc.m) return;
    const uint nu = pc.n / 32u;
    bool bad = false;
    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    for (uint kk = 0u; kk < pc.k; kk++) {
        const int e = ids[t * pc.k + kk];
        if (e < 0 || uint(e) >= pc.n_expert) {
            bad = true;
            continue;
        }
        const float wk = wts[t * pc.k + kk];
        const uint ho = (t * pc.k + kk) * pc.n;
        for (uint u = lane; u < nu; u += lanes) {
            for (uint k = 0u; k < RPT; k++) {
                const uint r = r0 + g + k * G;
                if (r >= pc.m) break;
                float w[32];
                uint e0, e1;
                dq_d((uint(e) * pc.m + r) * pc.rb, u, w, e0, e1);
                const uint a = (ho + e0) >> 2, b = (ho + e1) >> 2;
                float s = 0.0;
                for (uint i = 0u; i < 4u; i++) {
                    s += dot(vec4(w[4u * i], w[4u * i + 1u], w[4u * i + 2u], w[4u * i + 3u]), h4[a + i]);
                    s += dot(vec4(w[16u + 4u * i], w[17u + 4u * i], w[18u + 4u * i], w[19u + 4u * i]),
                             h4[b + i]);
                }
                acc[k] += wk * s;
            }
        }
    }
    qg_rows_reduce(acc, RPT);
    uint j, gg;
    if (qg_rows_slot(RPT, j, gg)) {
        const uint r = r0 + gg + j * G;
        if (r < pc.m) {
            const float v = bad ? uintBitsToFloat(0x7fc00000u) : qg_rows_sum(acc, j, gg);
            y[t * pc.m + r] = RESID != 0u ? res[t * pc.m + r] + v : v;
        }
    }
}
