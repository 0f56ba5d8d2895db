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
 *
 * ROPE = 1 (decode graphs, the executor's rope fold: exec/vulkan/
 * qg_vk_fold.c): binding 1 is the q of the qkv product, not yet roped, and
 * this step's k and v rows are not in the caches yet.  Each workgroup
 * normalizes and rotates its q head and its kv head's k (qg_ropehead.glsl,
 * rope_kv.comp's values bit for bit: norm weights at 8 and 9, the cos/sin
 * table at 10), rounds k and v (binding 7) as the cache stores them, and
 * uses those words for row pos[t] (always the last row it reads) instead
 * of reading them back; the first q head of each kv group also writes them
 * to the caches for later steps, as rope_kv.comp would.  No other
 * workgroup reads that row from memory, so nothing waits on the write.
 * Unused ROPE bindings (6..10) are bound to q and never touched.
 */
#include "qg_common.glsl"

#define WG 128u
layout(local_size_x = 128) in;
layout(constant_id = 1) const uint KV_F16 = 1u;
layout(constant_id = 2) const uint ROPE = 0u;

layout(std430, binding = 1) readonly buffer QBuf { float q[]; };   /* (Dq, T) */
layout(std430, binding = 2) buffer KcBuf { uint kc[]; };           /* (Dkv, C); ROPE writes */
layout(std430, binding = 3) buffer VcBuf { uint vc[]; };           /* (Dkv, C); ROPE writes */
layout(std430, binding = 4) readonly buffer PBuf { int pos[]; };   /* (T) */
layout(std430, binding = 5) writeonly buffer OBuf { float o[]; };  /* (Dq, T) */
layout(std430, binding = 6) readonly buffer KBuf { float k[]; };   /* (Dkv, T) ROPE: k, not roped */
layout(std430, binding = 7) readonly buffer VBuf { float v[]; };   /* (Dkv, T) ROPE */
layout(std430, binding = 8) readonly buffer QnBuf { float qn[]; }; /* (hd) ROPE */
layout(std430, binding = 9) readonly buffer KnBuf { float kn[]; }; /* (hd) ROPE */
layout(std430, binding = 10) readonly buffer CBuf { float cs[]; }; /* (hd, n_ctx) ROPE */

layout(push_constant) uniform PC {
    uint hd, nh, nkv;
    uint n_ctx;
    float eps; /* ROPE */
} pc;

#include "qg_reduce.glsl"
#include "qg_ropehead.glsl"

#define KS_WORDS 4128u /* 32 rows x (128 + 1) words, or 16 x (256 + 1) */
shared float sh_q[256];
shared uint sh_k[KS_WORDS];
shared float sh_p[32];

shared float sh_kr[256]; /* ROPE: this step's k head, roped (f32) */
shared uint sh_krow[256]; /* ROPE: its cache words at row pos[t] */
shared uint sh_vrow[256]; /* ROPE: v's */

/* ROPE: head `hb` (element offset) of src (0: q, 1: k) normalized and
 * rotated into dst (sh_q or sh_kr); position co (cs row offset).  Every
 * invocation calls it. */
void rope_head(uint src, uint hb, uint co) {
    const uint half_ = pc.hd / 2u, l = gl_LocalInvocationIndex;
    float x0[2], x1[2];
    for (uint u = 0u; u < 2u; u++) {
        const uint r = l + u * QG_RH_SLOTS;
        x0[u] = 0.0;
        x1[u] = 0.0;
        if (l < QG_RH_SLOTS && r < half_) {
            x0[u] = src == 0u ? q[hb + r] : k[hb + r];
            x1[u] = src == 0u ? q[hb + r + half_] : k[hb + r + half_];
        }
    }
    const float scale = qg_rope_scale(x0, x1, pc.hd, pc.eps);
    for (uint u = 0u; u < 2u; u++) {
        const uint r = l + u * QG_RH_SLOTS;
        if (l >= QG_RH_SLOTS || r >= half_) continue;
        float o0, o1;
        qg_rope_pair(x0[u], x1[u], scale, src == 0u ? qn[r] : kn[r],
                     src == 0u ? qn[r + half_] : kn[r + half_], cs[co + r], cs[co + half_ + r],
                     o0, o1);
        if (src == 0u) {
            sh_q[r] = o0;
            sh_q[r + half_] = o1;
        } else {
            sh_kr[r] = o0;
            sh_kr[r + half_] = o1;
        }
    }
}


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
    if (ROPE != 0u) {
        /* q and k roped here; row p's k and v words as the cache holds them */
        const uint kvh = h / (pc.nh / pc.nkv), co = bad ? 0u : uint(p) * hd;
        rope_head(0u, t * dq + h * hd, co);
        rope_head(1u, t * dkv + kvh * hd, co);
        barrier(); /* sh_kr */
        const uint vb = t * dkv + kvh * hd;
        for (uint i = l; i < rw; i += WG) {
            if (KV_F16 != 0u) {
                sh_krow[i] = qg_f32_to_f16(sh_kr[2u * i]) | (qg_f32_to_f16(sh_kr[2u * i + 1u]) << 16);
                sh_vrow[i] = qg_f32_to_f16(v[vb + 2u * i]) | (qg_f32_to_f16(v[vb + 2u * i + 1u]) << 16);
            } else {
                sh_krow[i] = floatBitsToUint(sh_kr[i]);
                sh_vrow[i] = floatBitsToUint(v[vb + i]);
            }
            if (!bad && h % (pc.nh / pc.nkv) == 0u) { /* the group's writer */
                const uint d = (uint(p) * dkv + ho) / (KV_F16 != 0u ? 2u : 1u) + i;
                kc[d] = sh_krow[i];
                vc[d] = sh_vrow[i];
            }
        }
        barrier(); /* sh_krow and sh_vrow, read by every invocation */
    } else {
        for (uint i = l; i < hd; i += WG) sh_q[i] = q[t * dq + h * hd + i];
    }
    const float scale = 1.0 / sqrt(float(hd));
    float acc[2] = float[2](0.0, 0.0);
    float m = 0.0, lsum = 0.0;
    for (uint j0 = 0u; j0 < n_kv; j0 += BR) {
        const uint cnt = min(BR, n_kv - j0);
        /* k rows j0 .. j0+cnt of this head into sh_k (row r at r * rs) */
        for (uint w = l; w < cnt * rw; w += WG) {
            const uint r = w / rw, c = w % rw;
            const uint e = (j0 + r) * dkv + ho; /* element offset of the row */
            sh_k[r * rs + c] = ROPE != 0u && int(j0 + r) == p ? sh_krow[c]
                                                              : kc[(KV_F16 != 0u ? e / 2u : e) + c];
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
            /* ROPE: row p (the last of the last block) from sh_vrow */
            const bool own_row = ROPE != 0u && !bad && j0 + cnt == n_kv;
            const uint nj = own_row ? cnt - 1u : cnt;
            for (uint jj = 0u; jj < nj; jj++) {
                const uint e = (j0 + jj) * dkv + ho + i;
                const float vv = KV_F16 != 0u ? unpackHalf2x16(vc[e >> 1] >> ((e & 1u) * 16u)).x
                                              : uintBitsToFloat(vc[e]);
                a += sh_p[jj] * vv;
            }
            if (own_row) {
                const float vv = KV_F16 != 0u
                                     ? unpackHalf2x16(sh_vrow[i >> 1] >> ((i & 1u) * 16u)).x
                                     : uintBitsToFloat(sh_vrow[i]);
                a += sh_p[cnt - 1u] * vv;
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
