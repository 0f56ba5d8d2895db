#version 450
/*
 * topk.comp - expert choice: per token (gl_WorkGroupID.z), the softmax of
 * its X logits, the K largest probabilities and their renormalized
 * weights (qg_topk.glsl: the CPU's rules; X <= 512, K <= 64).  One
 * workgroup of 64 per token.
 */
#include "qg_common.glsl"

#define WG 64u
layout(local_size_x = 64) in;

layout(std430, binding = 1) readonly buffer LBuf { float lg[]; };   /* (X, T) */
layout(std430, binding = 2) writeonly buffer IBuf { int ids[]; };   /* (K, T) */
layout(std430, binding = 3) writeonly buffer WBuf { float wts[]; }; /* (K, T) */

layout(push_constant) uniform PC {
    uint x; /* experts */
    uint k; /* chosen */
} pc;

#include "qg_reduce.glsl"
#define QG_TK_LOGIT(i) lg[i]
#include "qg_topk.glsl"

void main() {
    const uint t = gl_WorkGroupID.z, l = gl_LocalInvocationIndex;
    if (t >= uint(N_TOK)) return;
    qg_topk_wg(t * pc.x, pc.x, pc.k);
    for (uint kk = l; kk < pc.k; kk += WG) {
        ids[t * pc.k + kk] = qg_tk_id[kk];
        wts[t * pc.k + kk] = qg_tk_w[kk];
    }
}
