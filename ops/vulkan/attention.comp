#version 450
/*
 * attention.comp - causal GQA attention of q (Dq, T) over the caches
 * (after this step's rows were appended): token t, head h reads rows
 * 0..pos[t] of kv head h / (nh / nkv).
 *
 * One workgroup per (head h = gl_WorkGroupID.x, token t = .z).  The cache
 * rows are taken in blocks of BR (32 for F16 caches, 16 for F32): the
 * block's k rows are loaded into shared memory with coalesced loads
 * (consecutive invocations, consecutive words), invocation j < BR scores
 * row j of the block from there (s = q . k_j / sqrt(hd), f32), then with
 * the block's max the running softmax is rescaled (online softmax: m, l
 * and the output accumulators are multiplied by exp(m_old - m_new)) and
 * invocation i adds sum_j p_j v_j[i] for its output elements i (i = l,
 * l + WG; hd <= 2 WG), reading v rows coalesced.  o = acc / l.  Scores
 * and sums in f32.  A position outside [0, n_ctx) writes NaN.
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

#define KS_WORDS 4128u /* 32 rows x (128 + 1) words, or 16 x (256 + 1) */
shared float sh_q[256];
shared uint sh_k[KS_WORDS];
shared float sh_p[32];

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.z, l = gl_LocalInvocationIndex;
    if (t >= uint(N_TOK)) return;
    const uint hd = pc.hd, dq = pc.nh * hd, dkv = pc.nkv * hd;
    const uint ho = (h / (pc.nh / pc.nkv)) * hd; /* kv head offset (elements) */
    const int p = pos[t];
    const bool bad = p < 0 || uint(p) >= pc.n_ctx;
    const uint n_kv = bad ? 1u : uint(p) + 1u;
    /* words per cache row of this head, the padded row stride in sh_k */
    const uint rw = KV_F16 != 0u ? hd / 2u : hd, rs = rw + 1u;
    const uint BR = KV_F16 != 0u ? 32u : 16u;
    for (uint i = l; i < hd; i += WG) sh_q[i] = q[t * dq + h * hd + i];
    const float scale = 1.0 / sqrt(float(hd));
    float acc[2] = float[2](0.0, 0.0);
    float m = 0.0, lsum = 0.0;
    for (uint j0 = 0u; j0 < n_kv; j0 += BR) {
        const uint cnt = min(BR, n_kv - j0);
        /* k rows j0 .. j0+cnt of this head into sh_k (row r at r * rs) */
        for (uint w = l; w < cnt * rw; w += WG) {
            const uint r = w / rw, c = w % rw;
            const uint e = (j0 + r) * dkv + ho; /* element offset of the row */
            sh_k[r * rs + c] = kc[(KV_F16 != 0u ? e / 2u : e) + c];
        }
        barrier(); /* sh_k (and sh_q on the first block) ready */
        float s = -1.0 / 0.0;
        if (l < cnt) {
            float d = 0.0;
            const uint b = l * rs;
            if (KV_F16 != 0u) {
                for (uint i = 0u; i < rw; i++) {
                    const vec2 kv = unpackHalf2x16(sh_k[b + i]);
                    d += sh_q[2u * i] * kv.x + sh_q[2u * i + 1u] * kv.y;
                }
            } else {
                for (uint i = 0u; i < rw; i++) d += sh_q[i] * uintBitsToFloat(sh_k[b + i]);
            }
            s = d * scale;
        }
        const float bm = wg_max(s); /* its barriers also end the reads of sh_k */
        const float mn = j0 == 0u ? bm : max(m, bm);
        const float alpha = j0 == 0u ? 0.0 : exp(m - mn);
        const float pj = l < cnt ? exp(s - mn) : 0.0;
        if (l < BR) sh_p[l] = pj;
        lsum = lsum * alpha + wg_sum(pj); /* its barriers publish sh_p */
        for (uint u = 0u; u < 2u; u++) {
            const uint i = l + u * WG;
            if (i >= hd) continue;
            float a = acc[u] * alpha;
            for (uint jj = 0u; jj < cnt; jj++) {
                const uint e = (j0 + jj) * dkv + ho + i;
                const float v = KV_F16 != 0u ? unpackHalf2x16(vc[e >> 1] >> ((e & 1u) * 16u)).x
                                             : uintBitsToFloat(vc[e]);
                a += sh_p[jj] * v;
            }
            acc[u] = a;
        }
        m = mn;
        barrier(); /* sh_p and sh_k are rewritten by the next block */
    }
    const float inv = 1.0 / lsum;
    for (uint u = 0u; u < 2u; u++) {
        const uint i = l + u * WG;
        if (i < hd) o[t * dq + h * hd + i] = bad ? uintBitsToFloat(0x7fc00000u) : acc[u] * inv;
    }
}
