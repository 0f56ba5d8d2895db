#version 450
/*
 * embed.comp - x[:, t] = row tokens[t] of W (n_embd, n_vocab), any format.
 * One invocation per 32-element unit (qg_dequant.glsl); gl_WorkGroupID.z =
 * token.  A token id outside [0, n_vocab) writes NaN (the runtime refuses
 * such ids first).
 */
#include "qg_common.glsl"

layout(constant_id = 1) const int WTYPE = 0;
layout(local_size_x = 64) in;

layout(std430, binding = 1) readonly buffer WBuf { uint wbuf[]; };  /* (E, V) */
layout(std430, binding = 1) readonly buffer WBuf4 { uvec4 wbuf4[]; };
layout(std430, binding = 2) readonly buffer TBuf { int tok[]; };    /* (T) */
layout(std430, binding = 3) writeonly buffer XBuf { float x[]; };   /* (E, T) */

layout(push_constant) uniform PC {
    uint n;   /* n_embd */
    uint rb;  /* bytes per row */
    uint n_vocab;
} pc;

#define DQ_FN dq_w
#define DQ_BUF wbuf
#define DQ_BUF4 wbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"

void main() {
    const uint u = gl_GlobalInvocationID.x, t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK) || u >= pc.n / 32u) return;
    const int id = tok[t];
    float w[32];
    uint e0, e1;
    if (id < 0 || uint(id) >= pc.n_vocab) {
        for (uint i = 0u; i < 32u; i++) w[i] = uintBitsToFloat(0x7fc00000u);
        e0 = 32u * u;
        e1 = e0 + 16u;
    } else {
        dq_w(uint(id) * pc.rb, u, w, e0, e1);
    }
    const uint o = t * pc.n;
    for (uint i = 0u; i < 16u; i++) {
        x[o + e0 + i] = w[i];
        x[o + e1 + i] = w[16u + i];
    }
}
