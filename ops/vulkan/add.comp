#version 450
/*
 * add.comp - y = a + b over the live tokens' elements (n per token).
 * Invocations are numbered (gl_WorkGroupID.y * gx + gl_WorkGroupID.x) *
 * 256 + local id.
 */
#include "qg_common.glsl"

layout(local_size_x = 256) in;

layout(std430, binding = 1) readonly buffer ABuf { float a[]; };
layout(std430, binding = 2) readonly buffer BBuf { float b[]; };
layout(std430, binding = 3) writeonly buffer YBuf { float y[]; };

layout(push_constant) uniform PC {
    uint n;  /* elements per token */
    uint gx;
} pc;

void main() {
    const uint i = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * 256u + gl_LocalInvocationIndex;
    if (i >= pc.n * uint(N_TOK)) return;
    y[i] = a[i] + b[i];
}
