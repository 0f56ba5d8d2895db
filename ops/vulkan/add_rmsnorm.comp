#version 450
/*
 * add_rmsnorm.comp - a residual add and the RMSNorm that reads its result,
 * in one dispatch (the executor fuses an add node followed by an rmsnorm
 * node of the add's output): y = a + b; h = y / sqrt(mean(y^2) + eps) * w.
 * Both y and h are written; the values are those of add.comp then
 * rmsnorm.comp (same f32 operations, qg_norm.glsl's summation order; its
 * partials recompute a + b, which is exact to repeat).  Every read of a
 * and b comes before the norm's barriers and h is made from the y each
 * invocation wrote itself, so h may share memory with a or b (the plan
 * lets it: they die at the add).  One workgroup per token
 * (gl_WorkGroupID.z).
 */
#include "qg_common.glsl"

#define WG 256u
layout(local_size_x = 256) in;

layout(std430, binding = 1) readonly buffer ABuf { float a[]; };   /* (n, T) */
layout(std430, binding = 2) readonly buffer BBuf { float b[]; };   /* (n, T) */
layout(std430, binding = 3) buffer YBuf { float y[]; };            /* (n, T) */
layout(std430, binding = 4) readonly buffer WBuf { float w[]; };   /* (n) */
layout(std430, binding = 5) writeonly buffer HBuf { float h[]; };  /* (n, T) */

layout(push_constant) uniform PC {
    uint n;
    float eps;
} pc;

#include "qg_norm.glsl"

void main() {
    const uint t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK)) return;
    const uint o = t * pc.n;
    for (uint i = gl_LocalInvocationIndex; i < pc.n; i += WG) y[o + i] = a[o + i] + b[o + i];
    QG_NORM_PARTIALS(pc.n, a[o + i] + b[o + i]);
    const float scale = qg_norm_scale(pc.n, pc.eps);
    /* each invocation reads back only the elements it wrote */
    for (uint i = gl_LocalInvocationIndex; i < pc.n; i += WG) h[o + i] = y[o + i] * scale * w[i];
}
