#version 450
/*
 * moe_combine.comp - the weighted sum of a prefill step's expert outputs:
 * y[:, t] = sum_k wts[k, t] * yk[:, t*K + k], summed in f32 with k
 * ascending.  An id outside [0, X) writes NaN.  gl_WorkGroupID.z = token.
 */
#include "qg_common.glsl"

layout(local_size_x = 256) in;

layout(std430, binding = 1) readonly buffer YkBuf { float yk[]; };  /* (m, K*T) */
layout(std430, binding = 2) readonly buffer IBuf { int ids[]; };    /* (K, T) */
layout(std430, binding = 3) readonly buffer WtBuf { float wts[]; }; /* (K, T) */
layout(std430, binding = 4) writeonly buffer YBuf { float y[]; };   /* (m, T) */

layout(push_constant) uniform PC {
    uint m, k, x;
} pc;

void main() {
    const uint r = gl_GlobalInvocationID.x, t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK) || r >= pc.m) return;
    float acc = 0.0;
    bool bad = false;
    for (uint kk = 0u; kk < pc.k; kk++) {
        const uint a = t * pc.k + kk;
        const int e = ids[a];
        bad = bad || e < 0 || uint(e) >= pc.x;
        acc += wts[a] * yk[a * pc.m + r];
    }
    y[t * pc.m + r] = bad ? uintBitsToFloat(0x7fc00000u) : acc;
}
