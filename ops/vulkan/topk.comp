#version 450
/*
 * topk.comp - expert choice: per token, p = softmax(logits) over the X
 * experts, the K largest p (ties: lower id first, as the CPU), weights
 * divided by their sum; qg_topk.glsl says how, in one fixed order (the
 * router matmul that folds the top-k in, matmul.comp's TOPK, computes the
 * same bits).  One workgroup of 64 per token (gl_WorkGroupID.z); X <= 512,
 * K <= 64.
 */
#include "qg_common.glsl"

layout(local_size_x = 64) in;

layout(std430, binding = 1) readonly buffer LBuf { float qg_tk_lg[]; };   /* (X, T) */
layout(std430, binding = 2) writeonly buffer IBuf { int qg_tk_ids[]; };   /* (K, T) */
layout(std430, binding = 3) writeonly buffer WBuf { float qg_tk_wts[]; }; /* (K, T) */

layout(push_constant) uniform PC {
    uint x; /* experts */
    uint k; /* chosen */
} pc;

#include "qg_topk.glsl"

void main() {
    const uint t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK)) return;
    qg_topk(t * pc.x, pc.x, pc.k, t * pc.k);
}
