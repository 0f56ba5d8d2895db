#version 450
/*
 * add.comp - y = a + b, n elements per token; gl_WorkGroupID.z = token.
 */
#include "qg_common.glsl"

layout(local_size_x = 256) in;

layout(std430, binding = 1) readonly buffer ABuf { float a[]; };
layout(std430, binding = 2) readonly buffer BBuf { float b[]; };
layout(std430, binding = 3) writeonly buffer YBuf { float y[]; };

layout(push_constant) uniform PC {
    uint n;  /* elements per token */
} pc;

void main() {
    const uint t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK) || gl_GlobalInvocationID.x >= pc.n) return;
    const uint i = t * pc.n + gl_GlobalInvocationID.x;
    y[i] = a[i] + b[i];
}
