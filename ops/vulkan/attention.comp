#version 450
/*
 * attention.comp - causal GQA attention of q (Dq, T) over the caches
 * (after kv_append.comp wrote this step's rows): token t, head h reads
 * rows 0..pos[t] of kv head h / (nh / nkv).
 *
 * One workgroup per (head h = gl_WorkGroupID.x, token t = .z).  The cache
 * rows are taken in blocks of WG: invocation j scores row j of the block
 * (s = q . k_j / sqrt(hd), f32), then with the block's max the running
 * softmax is rescaled (online softmax: m, l, and the output accumulators
 * are multiplied by exp(m_old - m_new)) and invocation i adds
 * sum_j p_j v_j[i] for its output elements i (i = l, l + WG; hd <= 2 WG).
 * o = acc / l.  Scores and sums in f32.  A position outside [0, n_ctx)
 * writes NaN.
 */
#include "qg_common.glsl"

#define WG 128u
layout(local_size_x = 128) in;
layout(constant_id = 1) const uint KV_F16 = 1u;

layout(std430, binding = 1) readonly buffer QBuf { float q[]; };   /* (Dq, T) */
layout(std430, binding = 2) readonly buffer KcBuf { uint kc[]; };  /* (Dkv, C) */
layout(std430, binding = 3) readonly buffer VcBuf { uint vc[]; };  /* (Dkv, C) */
layout(std430, binding = 4) readonly buffer PBuf { int pos[]; };   /* (T) */
layout(std430, binding = 5) writeonly buffer OBuf { float o[]; };  /* (Dq, T) */

layout(push_constant) uniform PC {
    uint hd, nh, nkv;
    uint n_ctx;
} pc;

#include "qg_reduce.glsl"

shared float sh_q[256];
shared float sh_p[WG];

/* element i of row j of a cache at kv head offset ho (elements) */
float cache_at(bool isk, uint j, uint ho, uint i) {
    const uint e = j * pc.nkv * pc.hd + ho + i;
    if (KV_F16 != 0u) {
        const uint u = isk ? kc[e >> 1] : vc[e >> 1];
        return unpackHalf2x16(u >> ((e & 1u) * 16u)).x;
    }
    return uintBitsToFloat(isk ? kc[e] : vc[e]);
}

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.z, l = gl_LocalInvocationIndex;
    if (t >= uint(N_TOK)) return;
    const uint hd = pc.hd, dq = pc.nh * hd;
    const uint ho = (h / (pc.nh / pc.nkv)) * hd; /* kv head offset */
    const int p = pos[t];
    const bool bad = p < 0 || uint(p) >= pc.n_ctx;
    const uint n_kv = bad ? 1u : uint(p) + 1u;
    for (uint i = l; i < hd; i += WG) sh_q[i] = q[t * dq + h * hd + i];
    barrier();
    const float scale = 1.0 / sqrt(float(hd));
    float acc[2] = float[2](0.0, 0.0);
    float m = 0.0, lsum = 0.0;
    for (uint j0 = 0u; j0 < n_kv; j0 += WG) {
        const uint j = j0 + l;
        float s = -1.0 / 0.0;
        if (j < n_kv) {
            const uint e = j * pc.nkv * hd + ho;
            float d = 0.0;
            if (KV_F16 != 0u) {
                for (uint i = 0u; i < hd; i += 2u) {
                    const vec2 kv = unpackHalf2x16(kc[(e + i) >> 1]);
                    d += sh_q[i] * kv.x + sh_q[i + 1u] * kv.y;
                }
            } else {
                for (uint i = 0u; i < hd; i++) d += sh_q[i] * uintBitsToFloat(kc[e + i]);
            }
            s = d * scale;
        }
        const float bm = wg_max(s);
        const float mn = j0 == 0u ? bm : max(m, bm);
        const float alpha = j0 == 0u ? 0.0 : exp(m - mn);
        const float pj = j < n_kv ? exp(s - mn) : 0.0;
        sh_p[l] = pj;
        lsum = lsum * alpha + wg_sum(pj); /* its barriers publish sh_p */
        const uint cnt = min(WG, n_kv - j0);
        [[unroll]] for (uint u = 0u; u < 2u; u++) {
            const uint i = l + u * WG;
            if (i >= hd) continue;
            float a = acc[u] * alpha;
            for (uint jj = 0u; jj < cnt; jj++) a += sh_p[jj] * cache_at(false, j0 + jj, ho, i);
            acc[u] = a;
        }
        m = mn;
        barrier();
    }
    const float inv = 1.0 / lsum;
    [[unroll]] for (uint u = 0u; u < 2u; u++) {
        const uint i = l + u * WG;
        if (i < hd) o[t * dq + h * hd + i] = bad ? uintBitsToFloat(0x7fc00000u) : acc[u] * inv;
    }
}
