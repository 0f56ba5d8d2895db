#version 450
/*
 * rmsnorm.comp - y[:, t] = x[:, t] / sqrt(mean(x^2) + eps) * w, f32.
 * One workgroup per token (gl_WorkGroupID.z).  The scale is qg_norm.glsl's
 * (one summation order for every shader), so products that fold this norm
 * into their prologue (qg_xnorm.glsl) compute the same bits.
 */
#include "qg_common.glsl"

#define WG 256u
layout(local_size_x = 256) in;

layout(std430, binding = 1) readonly buffer XBuf { float x[]; };   /* (n, T) */
layout(std430, binding = 2) readonly buffer WBuf { float w[]; };   /* (n) */
layout(std430, binding = 3) writeonly buffer YBuf { float y[]; };  /* (n, T) */

layout(push_constant) uniform PC {
    uint n;
    float eps;
} pc;

#include "qg_norm.glsl"

void main() {
    const uint t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK)) return;
    const uint o = t * pc.n;
    QG_NORM_PARTIALS(pc.n, x[o + i]);
    const float scale = qg_norm_scale(pc.n, pc.eps);
    for (uint i = gl_LocalInvocationIndex; i < pc.n; i += WG) y[o + i] = x[o + i] * scale * w[i];
}
