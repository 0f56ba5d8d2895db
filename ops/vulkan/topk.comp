#version 450
/*
 * topk.comp - expert choice: per token, p = softmax(logits) over the X
 * experts (f32, max subtracted, then multiplied by 1/sum), the K largest
 * p (ties: lower id first, as the CPU), weights divided by their sum
 * (summed in k order).  One workgroup of 64 per token (gl_WorkGroupID.z);
 * X <= 512 (8 experts per invocation), K <= 64.  Each round's argmax: a
 * subgroup max/min and one barrier (QG_SUBGROUP), or a shared-memory tree.
 */
#include "qg_common.glsl"

#define WG 64u
#define PER 8u
layout(local_size_x = 64) in;

layout(std430, binding = 1) readonly buffer LBuf { float lg[]; };   /* (X, T) */
layout(std430, binding = 2) writeonly buffer IBuf { int ids[]; };   /* (K, T) */
layout(std430, binding = 3) writeonly buffer WBuf { float wts[]; }; /* (K, T) */

layout(push_constant) uniform PC {
    uint x; /* experts */
    uint k; /* chosen */
} pc;

#include "qg_reduce.glsl"

shared float sh_v[WG];
shared uint sh_e[WG];
shared float sh_w[64];

void main() {
    const uint t = gl_WorkGroupID.z, l = gl_LocalInvocationIndex;
    if (t >= uint(N_TOK)) return;
    const uint X = pc.x;
    float p[PER];
    float mx = -1.0 / 0.0;
    for (uint u = 0u; u < PER; u++) {
        const uint e = l + u * WG;
        p[u] = e < X ? lg[t * X + e] : 0.0;
        if (e < X) mx = max(mx, p[u]);
    }
    mx = wg_max(mx);
    float s = 0.0;
    for (uint u = 0u; u < PER; u++) {
        const uint e = l + u * WG;
        p[u] = e < X ? exp(p[u] - mx) : -1.0;
        if (e < X) s += p[u];
    }
    const float inv = 1.0 / wg_sum(s);
    for (uint u = 0u; u < PER; u++)
        if (l + u * WG < X) p[u] *= inv;
    /* taken or absent experts hold -1 */
    float wsum = 0.0;
    for (uint kk = 0u; kk < pc.k; kk++) {
        float bv = -1.0;
        uint be = 0xffffffffu;
        for (uint u = 0u; u < PER; u++)
            if (p[u] > bv) {
                bv = p[u];
                be = l + u * WG;
            }
#if QG_SUBGROUP
        /* the subgroup's best (largest p, then lowest id), then the best
         * of the subgroups' */
        const float sv = subgroupMax(bv);
        const uint se = subgroupMin(bv == sv ? be : 0xffffffffu);
        const uint buf = (kk & 1u) * WG; /* alternate halves: one barrier a round */
        if (subgroupElect()) {
            sh_v[buf / 2u + gl_SubgroupID] = sv;
            sh_e[buf / 2u + gl_SubgroupID] = se;
        }
        barrier();
        float v = sh_v[buf / 2u];
        uint e = sh_e[buf / 2u];
        for (uint i = 1u; i < gl_NumSubgroups; i++) {
            const float v2 = sh_v[buf / 2u + i];
            const uint e2 = sh_e[buf / 2u + i];
            if (v2 > v || (v2 == v && e2 < e)) {
                v = v2;
                e = e2;
            }
        }
#else
        sh_v[l] = bv;
        sh_e[l] = be;
        barrier();
        for (uint st = WG / 2u; st > 0u; st >>= 1u) {
            if (l < st) {
                const float v2 = sh_v[l + st];
                const uint e2 = sh_e[l + st];
                if (v2 > sh_v[l] || (v2 == sh_v[l] && e2 < sh_e[l])) {
                    sh_v[l] = v2;
                    sh_e[l] = e2;
                }
            }
            barrier();
        }
        const float v = sh_v[0];
        const uint e = sh_e[0];
        barrier();
#endif
        if (e % WG == l) {
            for (uint u = 0u; u < PER; u++)
                if (u == e / WG) p[u] = -1.0;
        }
        if (l == 0u) {
            ids[t * pc.k + kk] = int(e);
            sh_w[kk] = v;
            wsum += v;
        }
    }
    if (l == 0u)
        for (uint kk = 0u; kk < pc.k; kk++) wts[t * pc.k + kk] = sh_w[kk] / wsum;
}
