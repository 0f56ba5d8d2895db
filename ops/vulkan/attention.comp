#version 450
/*
 * attention.comp - causal GQA attention of q (Dq, T) over the caches
 * (after this step's rows were appended): token t, head h reads rows
 * 0..pos[t] of kv head h / (nh / nkv).
 *
 * One workgroup of 128 invocations per (head h = gl_WorkGroupID.x, token
 * t = .z); scores, softmax and sums in f32; o = acc / l.  A position
 * outside [0, n_ctx) writes NaN.  Two algorithms, both an online softmax
 * (running max m, sum l and accumulators rescaled by exp(m_old - m_new)):
 *
 * attn_subgroups (subgroup builds, when the workgroup is whole subgroups
 * of at least 4 lanes and their partial outputs fit sh_k): the cache rows
 * are taken 128 at a time, row j0 + s*SG + i by lane i of subgroup s.
 * Each lane scores its own row straight from the cache (16-byte loads
 * where the rows allow), the subgroup takes its max and sum with subgroup
 * arithmetic and publishes its lanes' probabilities in shared memory, and
 * each lane then adds sum_j p_j v_j over the subgroup's rows for the row
 * words it owns (words i, i + SG, ...: coalesced v loads).  Subgroups run
 * independently, with no workgroup barrier inside the loop; at the end
 * their (m, l, acc) are merged through shared memory in subgroup order.
 *
 * attn_blocks (the shared-memory build, and the fallback): the cache rows
 * are taken in blocks of BR (32 for F16 caches, 16 for F32): the block's k
 * rows are loaded into shared memory with coalesced loads, invocation
 * j < BR scores row j of the block from there, the running softmax is
 * rescaled with the block's max (workgroup reductions), and invocation i
 * adds sum_j p_j v_j[i] for its output elements i (i = l, l + WG; hd <=
 * 2 WG), reading v rows coalesced.
 */
#include "qg_common.glsl"

#define WG 128u
layout(local_size_x = 128) in;
layout(constant_id = 1) const uint KV_F16 = 1u;

layout(std430, binding = 1) readonly buffer QBuf { float q[]; };   /* (Dq, T) */
layout(std430, binding = 2) readonly buffer KcBuf { uint kc[]; };  /* (Dkv, C) */
layout(std430, binding = 2) readonly buffer KcBuf4 { uvec4 kc4[]; };
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
shared float sh_p[WG]; /* probabilities: a block (attn_blocks), a subgroup's rows */

/* The shared-memory block algorithm (see the header). */
void attn_blocks(uint h, uint t, uint n_kv, bool bad) {
    const uint l = gl_LocalInvocationIndex;
    const uint hd = pc.hd, dq = pc.nh * hd, dkv = pc.nkv * hd;
    const uint ho = (h / (pc.nh / pc.nkv)) * hd; /* kv head offset (elements) */
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

#if QG_SUBGROUP
#define SG_WMAX 16u /* cache-row words per lane (attn_subgroups) */
shared float sh_m[32], sh_l[32]; /* each subgroup's running max and sum */

/* Can attn_subgroups run here: whole subgroups of >= 4 lanes, at most
 * SG_WMAX row words per lane, each subgroup's partial output in sh_k. */
bool attn_subgroups_fit() {
    const uint rw = KV_F16 != 0u ? pc.hd / 2u : pc.hd;
    return gl_SubgroupSize >= 4u && gl_NumSubgroups * gl_SubgroupSize == WG &&
           rw <= SG_WMAX * gl_SubgroupSize && gl_NumSubgroups * pc.hd <= KS_WORDS;
}

/* The subgroup algorithm (see the header). */
void attn_subgroups(uint h, uint t, uint n_kv, bool bad) {
    const uint l = gl_LocalInvocationIndex;
    const uint SG = gl_SubgroupSize, sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
    const uint hd = pc.hd, dq = pc.nh * hd, dkv = pc.nkv * hd;
    const uint ho = (h / (pc.nh / pc.nkv)) * hd; /* kv head offset (elements) */
    const uint rw = KV_F16 != 0u ? hd / 2u : hd; /* words per cache row */
    const uint nw = (rw + SG - 1u) / SG;         /* row words per lane */
    const uint wrow = KV_F16 != 0u ? dkv / 2u : dkv, wh = KV_F16 != 0u ? ho / 2u : ho;
    /* 16-byte k loads when every row of the head starts on 4 words */
    const bool k4 = rw % 4u == 0u && wrow % 4u == 0u && wh % 4u == 0u;
    for (uint i = l; i < hd; i += WG) sh_q[i] = q[t * dq + h * hd + i];
    barrier();
    const float scale = 1.0 / sqrt(float(hd));
    float acc[2u * SG_WMAX]; /* word k: elements 2k, 2k+1 (F16) or k (F32) */
    [[unroll]] for (uint k = 0u; k < 2u * SG_WMAX; k++) acc[k] = 0.0;
    float m = -1.0 / 0.0, lsum = 0.0;
    for (uint j0 = sg * SG; j0 < n_kv; j0 += WG) {
        /* this subgroup's rows j0 .. j0+cnt; lane scores row j0 + lane */
        const uint cnt = min(SG, n_kv - j0), j = j0 + lane;
        float s = -1.0 / 0.0;
        if (lane < cnt) {
            const uint kw = j * wrow + wh; /* first word of the row */
            float d = 0.0;
            if (k4) {
                for (uint w = 0u; w < rw / 4u; w++) {
                    const uvec4 kk = kc4[kw / 4u + w];
                    if (KV_F16 != 0u) {
                        const uint e = 8u * w;
                        for (uint c = 0u; c < 4u; c++) {
                            const vec2 kv = unpackHalf2x16(kk[c]);
                            d += sh_q[e + 2u * c] * kv.x + sh_q[e + 2u * c + 1u] * kv.y;
                        }
                    } else {
                        d += dot(vec4(sh_q[4u * w], sh_q[4u * w + 1u], sh_q[4u * w + 2u], sh_q[4u * w + 3u]),
                                 uintBitsToFloat(kk));
                    }
                }
            } else {
                for (uint w = 0u; w < rw; w++) {
                    if (KV_F16 != 0u) {
                        const vec2 kv = unpackHalf2x16(kc[kw + w]);
                        d += sh_q[2u * w] * kv.x + sh_q[2u * w + 1u] * kv.y;
                    } else {
                        d += sh_q[w] * uintBitsToFloat(kc[kw + w]);
                    }
                }
            }
            s = d * scale;
        }
        const float mn = max(m, subgroupMax(s)); /* finite: row j0 is live */
        const float alpha = exp(m - mn);          /* 0 on the first rows */
        const float pj = lane < cnt ? exp(s - mn) : 0.0;
        sh_p[sg * SG + lane] = pj;
        lsum = lsum * alpha + subgroupAdd(pj);
        subgroupMemoryBarrierShared();
        subgroupBarrier(); /* the subgroup's sh_p visible to its lanes */
        [[unroll]] for (uint k = 0u; k < SG_WMAX; k++) {
            acc[2u * k] *= alpha;
            acc[2u * k + 1u] *= alpha;
        }
        for (uint jj = 0u; jj < cnt; jj++) {
            const float pr = sh_p[sg * SG + jj];
            const uint vw = (j0 + jj) * wrow + wh; /* first word of row j0+jj */
            [[unroll]] for (uint k = 0u; k < SG_WMAX; k++) {
                const uint c = lane + k * SG;
                if (k < nw && c < rw) {
                    if (KV_F16 != 0u) {
                        const vec2 v = unpackHalf2x16(vc[vw + c]);
                        acc[2u * k] += pr * v.x;
                        acc[2u * k + 1u] += pr * v.y;
                    } else {
                        acc[2u * k] += pr * uintBitsToFloat(vc[vw + c]);
                    }
                }
            }
        }
        m = mn;
        subgroupBarrier(); /* sh_p is rewritten by the next rows */
    }
    /* merge the subgroups: subgroup s's outputs in sh_k[s * hd ..] */
    if (lane == 0u) {
        sh_m[sg] = m;
        sh_l[sg] = lsum;
    }
    [[unroll]] for (uint k = 0u; k < SG_WMAX; k++) {
        const uint c = lane + k * SG;
        if (k < nw && c < rw) {
            if (KV_F16 != 0u) {
                sh_k[sg * hd + 2u * c] = floatBitsToUint(acc[2u * k]);
                sh_k[sg * hd + 2u * c + 1u] = floatBitsToUint(acc[2u * k + 1u]);
            } else {
                sh_k[sg * hd + c] = floatBitsToUint(acc[2u * k]);
            }
        }
    }
    barrier();
    for (uint i = l; i < hd; i += WG) {
        float mx = -1.0 / 0.0;
        for (uint s2 = 0u; s2 < gl_NumSubgroups; s2++) mx = max(mx, sh_m[s2]);
        float ls = 0.0, a = 0.0;
        for (uint s2 = 0u; s2 < gl_NumSubgroups; s2++) {
            if (sh_l[s2] == 0.0) continue; /* no rows (or none yet) */
            const float f = exp(sh_m[s2] - mx);
            ls += sh_l[s2] * f;
            a += uintBitsToFloat(sh_k[s2 * hd + i]) * f;
        }
        o[t * dq + h * hd + i] = bad ? uintBitsToFloat(0x7fc00000u) : a / ls;
    }
}
#endif

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.z;
    if (t >= uint(N_TOK)) return;
    const int p = pos[t];
    const bool bad = p < 0 || uint(p) >= pc.n_ctx;
    const uint n_kv = bad ? 1u : uint(p) + 1u;
#if QG_SUBGROUP
    if (attn_subgroups_fit()) {
        attn_subgroups(h, t, n_kv, bad);
        return;
    }
#endif
    attn_blocks(h, t, n_kv, bad);
}
