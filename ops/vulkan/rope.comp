#version 450
/*
 * rope.comp - Qwen3's per-head q/k RMSNorm, then NEOX rotation.
 *
 * Workgroup (gl_WorkGroupID.x = j, .z = token t): head j of q for j < nh,
 * head j - nh of k otherwise.  y = x / sqrt(mean(x^2) + eps) * norm_w,
 * then pairs (r, r + hd/2) rotate by the angle of position pos[t]:
 * cos and sin come from the executor's table cs (hd, n_ctx), row p =
 * cos(p * theta^(-2r/hd)) for r < hd/2, then the sines, computed in
 * double on the host and rounded once (as the CPU kernel does).  A
 * position outside [0, n_ctx) writes NaN.  hd <= 2 * 2 * WG.
 */
#include "qg_common.glsl"

#define WG 64u
layout(local_size_x = 64) in;

layout(std430, binding = 1) readonly buffer QBuf { float q[]; };    /* (Dq, T) */
layout(std430, binding = 2) readonly buffer KBuf { float k[]; };    /* (Dkv, T) */
layout(std430, binding = 3) readonly buffer QnBuf { float qn[]; };  /* (hd) */
layout(std430, binding = 4) readonly buffer KnBuf { float kn[]; };  /* (hd) */
layout(std430, binding = 5) readonly buffer PBuf { int pos[]; };    /* (T) */
layout(std430, binding = 6) readonly buffer CBuf { float cs[]; };   /* (hd, n_ctx) */
layout(std430, binding = 7) writeonly buffer QoBuf { float qo[]; }; /* (Dq, T) */
layout(std430, binding = 8) writeonly buffer KoBuf { float ko[]; }; /* (Dkv, T) */

layout(push_constant) uniform PC {
    uint hd, nh, nkv;
    float eps;
    uint n_ctx;
} pc;

#include "qg_reduce.glsl"

void main() {
    const uint j = gl_WorkGroupID.x, t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK)) return;
    const uint half_ = pc.hd / 2u, l = gl_LocalInvocationIndex;
    const bool isq = j < pc.nh;
    const uint base = isq ? t * pc.nh * pc.hd + j * pc.hd : t * pc.nkv * pc.hd + (j - pc.nh) * pc.hd;
    float x0[2], x1[2];
    float s = 0.0;
    [[unroll]] for (uint u = 0u; u < 2u; u++) {
        const uint r = l + u * WG;
        x0[u] = 0.0;
        x1[u] = 0.0;
        if (r < half_) {
            x0[u] = isq ? q[base + r] : k[base + r];
            x1[u] = isq ? q[base + r + half_] : k[base + r + half_];
        }
        s += x0[u] * x0[u] + x1[u] * x1[u];
    }
    const float scale = 1.0 / sqrt(wg_sum(s) / float(pc.hd) + pc.eps);
    const int p = pos[t];
    const bool bad = p < 0 || uint(p) >= pc.n_ctx;
    const uint co = bad ? 0u : uint(p) * pc.hd;
    [[unroll]] for (uint u = 0u; u < 2u; u++) {
        const uint r = l + u * WG;
        if (r >= half_) continue;
        const float y0 = x0[u] * scale * (isq ? qn[r] : kn[r]);
        const float y1 = x1[u] * scale * (isq ? qn[r + half_] : kn[r + half_]);
        const float c = cs[co + r], sn = cs[co + half_ + r];
        float o0 = y0 * c - y1 * sn, o1 = y0 * sn + y1 * c;
        if (bad) o0 = o1 = uintBitsToFloat(0x7fc00000u);
        if (isq) {
            qo[base + r] = o0;
            qo[base + r + half_] = o1;
        } else {
            ko[base + r] = o0;
            ko[base + r + half_] = o1;
        }
    }
}
