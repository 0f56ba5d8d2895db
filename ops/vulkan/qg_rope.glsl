/*
 * qg_rope.glsl - Qwen3's per-head q/k RMSNorm, then NEOX rotation: the
 * body of rope.comp (APPEND 0) and rope_kv.comp (APPEND 1).
 *
 * Workgroup (gl_WorkGroupID.x = j, .z = token t): head j of q for j < nh,
 * head j - nh of k otherwise.  y = x / sqrt(mean(x^2) + eps) * norm_w,
 * then pairs (r, r + hd/2) rotate by the angle of position pos[t]:
 * cos and sin come from the executor's table cs (hd, n_ctx), row p =
 * cos(p * theta^(-2r/hd)) for r < hd/2, then the sines, computed in
 * double on the host and rounded once (as the CPU kernel does).  A
 * position outside [0, n_ctx) writes NaN.  hd <= 2 * 2 * WG.
 *
 * APPEND 1 (the executor fuses a rope node with the attention node
 * that reads its k): the workgroups of k heads also store their rotated
 * head, and the same head of v, into the caches at row pos[t] (F16 rounded
 * to nearest even, or F32), exactly as kv_append.comp would.
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
#if APPEND
layout(std430, binding = 9) readonly buffer VBuf { float v[]; };    /* (Dkv, T) */
layout(std430, binding = 10) buffer KcBuf { uint kc[]; };           /* (Dkv, C) */
layout(std430, binding = 11) buffer VcBuf { uint vc[]; };           /* (Dkv, C) */
layout(constant_id = 1) const uint KV_F16 = 1u;
#endif

shared float sh_k[256];

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
    for (uint u = 0u; u < 2u; u++) {
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
    for (uint u = 0u; u < 2u; u++) {
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
            sh_k[r] = o0;
            sh_k[r + half_] = o1;
        }
    }
#if APPEND
    if (isq) return;
    barrier(); /* sh_k holds the head; uniform: the whole workgroup is a k head */
    if (bad) return;
    /* cache row p, kv head j - nh: pairs of elements per invocation */
    const uint hb = (j - pc.nh) * pc.hd, row = uint(p) * pc.nkv * pc.hd;
    for (uint i = l; i < half_; i += WG) {
        const float k0 = sh_k[2u * i], k1 = sh_k[2u * i + 1u];
        const float v0 = v[base + 2u * i], v1 = v[base + 2u * i + 1u];
        if (KV_F16 != 0u) {
            const uint d = (row + hb) / 2u + i;
            kc[d] = qg_f32_to_f16(k0) | (qg_f32_to_f16(k1) << 16);
            vc[d] = qg_f32_to_f16(v0) | (qg_f32_to_f16(v1) << 16);
        } else {
            const uint d = row + hb + 2u * i;
            kc[d] = floatBitsToUint(k0);
            kc[d + 1u] = floatBitsToUint(k1);
            vc[d] = floatBitsToUint(v0);
            vc[d + 1u] = floatBitsToUint(v1);
        }
    }
#endif
}
