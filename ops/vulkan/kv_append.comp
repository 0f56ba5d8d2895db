#version 450
/*
 * kv_append.comp - the first half of the attention node: this step's k
 * and v rows (f32) into the caches at row pos[t], as F16 (rounded to
 * nearest even, bit-identical to the CPU's qg_f32_to_f16) or F32.
 * Invocation: one pair of elements; gl_WorkGroupID.y: 0 = k, 1 = v;
 * gl_WorkGroupID.z: token.  Positions outside [0, n_ctx) write nothing.
 */
#include "qg_common.glsl"

layout(constant_id = 1) const uint KV_F16 = 1u;
layout(local_size_x = 64) in;

layout(std430, binding = 1) readonly buffer KBuf { float k[]; };   /* (Dkv, T) */
layout(std430, binding = 2) readonly buffer VBuf { float v[]; };   /* (Dkv, T) */
layout(std430, binding = 3) buffer KcBuf { uint kc[]; };           /* (Dkv, C) */
layout(std430, binding = 4) buffer VcBuf { uint vc[]; };           /* (Dkv, C) */
layout(std430, binding = 5) readonly buffer PBuf { int pos[]; };   /* (T) */

layout(push_constant) uniform PC {
    uint dkv;
    uint n_ctx;
} pc;

void main() {
    const uint i = gl_GlobalInvocationID.x, t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK) || i >= pc.dkv / 2u) return;
    const int p = pos[t];
    if (p < 0 || uint(p) >= pc.n_ctx) return;
    const uint src = t * pc.dkv + 2u * i;
    const bool isk = gl_WorkGroupID.y == 0u;
    const float a = isk ? k[src] : v[src], b = isk ? k[src + 1u] : v[src + 1u];
    if (KV_F16 != 0u) {
        const uint d = (uint(p) * pc.dkv) / 2u + i;
        const uint hv = qg_f32_to_f16(a) | (qg_f32_to_f16(b) << 16);
        if (isk) kc[d] = hv; else vc[d] = hv;
    } else {
        const uint d = uint(p) * pc.dkv + 2u * i;
        if (isk) {
            kc[d] = floatBitsToUint(a);
            kc[d + 1u] = floatBitsToUint(b);
        } else {
            vc[d] = floatBitsToUint(a);
            vc[d + 1u] = floatBitsToUint(b);
        }
    }
}
