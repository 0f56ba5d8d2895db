/*
 * qg_attention.glsl - the body of attention.comp (ROPE 0) and
 * rope_attn.comp (ROPE 1).
 *
 * ROPE 0: causal GQA attention of q (Dq, T) over the caches (after this
 * step's rows were appended): token t, head h reads rows 0..pos[t] of kv
 * head h / (nh / nkv).
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
 * ROPE 1 (decode graphs, one token: the executor folds rope -> attention
 * into one dispatch): the workgroup of q head h first does the rope node's
 * work for its heads, with rope.comp's arithmetic (qg_rope_head below:
 * invocations < 64 take rope.comp's element pairs, the others add 0 to
 * the norm's sum, so the values are rope.comp's bit for bit): q head h ->
 * q_rope (written) and the attention's q; k head g = h / group -> its
 * rotated row; v head g.  The first workgroup of each kv group writes
 * k_rope's head g and appends k and v to the caches at row pos (F16
 * rounded to nearest even, or F32), as rope_kv.comp does.  Every workgroup
 * of the group uses this step's row from shared memory, rounded as the
 * cache holds it, instead of reading row pos back: no workgroup waits on
 * another, and the scores equal those of the unfused pair.
 */
#include "qg_common.glsl"

#define WG 128u
layout(local_size_x = 128) in;
layout(constant_id = 1) const uint KV_F16 = 1u;

layout(std430, binding = 1) readonly buffer QBuf { float q[]; };   /* (Dq, T) */
layout(std430, binding = 2) buffer KcBuf { uint kc[]; };           /* (Dkv, C) */
layout(std430, binding = 3) buffer VcBuf { uint vc[]; };           /* (Dkv, C) */
layout(std430, binding = 4) readonly buffer PBuf { int pos[]; };   /* (T) */
layout(std430, binding = 5) writeonly buffer OBuf { float o[]; };  /* (Dq, T) */

#if ROPE
layout(std430, binding = 6) readonly buffer KBuf { float k[]; };     /* (Dkv, 1) */
layout(std430, binding = 7) readonly buffer VBuf { float v[]; };     /* (Dkv, 1) */
layout(std430, binding = 8) readonly buffer QnBuf { float qn[]; };   /* (hd) */
layout(std430, binding = 9) readonly buffer KnBuf { float kn[]; };   /* (hd) */
layout(std430, binding = 10) readonly buffer CBuf { float cs[]; };   /* (hd, n_ctx) */
layout(std430, binding = 11) writeonly buffer QoBuf { float qo[]; }; /* (Dq, 1) */
layout(std430, binding = 12) writeonly buffer KoBuf { float ko[]; }; /* (Dkv, 1) */
#endif

layout(push_constant) uniform PC {
    uint hd, nh, nkv;
    uint n_ctx;
    float eps; /* ROPE */
} pc;

#include "qg_reduce.glsl"

#define KS_WORDS 4128u /* 32 rows x (128 + 1) words, or 16 x (256 + 1) */
shared float sh_q[256];
shared uint sh_k[KS_WORDS];
shared float sh_p[32];

#if ROPE
shared float sh_kp[256], sh_vp[256]; /* this step's k (rotated) and v row of the kv head */

/* rope.comp's work on one head (q: isq, else k) at table row co: the
 * rotated pair (o0[u], o1[u]) of elements r = l + 64u and r + hd/2, for
 * invocations l < 64 (the others get zeros).  Every invocation must call
 * it. */
void qg_rope_head(bool isq, uint base, uint co, bool bad, out float o0[2], out float o1[2]) {
    const uint l = gl_LocalInvocationIndex, half_ = pc.hd / 2u;
    float x0[2], x1[2];
    precise float s = 0.0;
    for (uint u = 0u; u < 2u; u++) {
        const uint r = l + u * 64u;
        x0[u] = 0.0;
        x1[u] = 0.0;
        if (l < 64u && r < half_) {
            x0[u] = isq ? q[base + r] : k[base + r];
            x1[u] = isq ? q[base + r + half_] : k[base + r + half_];
        }
        s += x0[u] * x0[u] + x1[u] * x1[u];
    }
    const float scale = qg_norm_scale(s, pc.hd, pc.eps);
    for (uint u = 0u; u < 2u; u++) {
        const uint r = l + u * 64u;
        o0[u] = 0.0;
        o1[u] = 0.0;
        if (l >= 64u || r >= half_) continue;
        const float y0 = x0[u] * scale * (isq ? qn[r] : kn[r]);
        const float y1 = x1[u] * scale * (isq ? qn[r + half_] : kn[r + half_]);
        const float c = cs[co + r], sn = cs[co + half_ + r];
        precise float a = y0 * c - y1 * sn, b = y0 * sn + y1 * c;
        o0[u] = bad ? uintBitsToFloat(0x7fc00000u) : a;
        o1[u] = bad ? uintBitsToFloat(0x7fc00000u) : b;
    }
}

/* x as an F16 cache holds it (F32 caches: x) */
float qg_as_cached(float x) { return KV_F16 != 0u ? qg_f16_to_f32(qg_f32_to_f16(x)) : x; }
#endif

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
#if ROPE
    const uint grp = pc.nh / pc.nkv, g = h / grp, half_ = hd / 2u;
    const uint co = bad ? 0u : uint(p) * hd;
    {
        float o0[2], o1[2];
        qg_rope_head(true, h * hd, co, bad, o0, o1);
        for (uint u = 0u; u < 2u; u++) {
            const uint r = l + u * 64u;
            if (l >= 64u || r >= half_) continue;
            qo[h * hd + r] = o0[u];
            qo[h * hd + r + half_] = o1[u];
            sh_q[r] = o0[u];
            sh_q[r + half_] = o1[u];
        }
        qg_rope_head(false, g * hd, co, bad, o0, o1);
        for (uint u = 0u; u < 2u; u++) {
            const uint r = l + u * 64u;
            if (l >= 64u || r >= half_) continue;
            if (h % grp == 0u) {
                ko[g * hd + r] = o0[u];
                ko[g * hd + r + half_] = o1[u];
            }
            sh_kp[r] = o0[u];
            sh_kp[r + half_] = o1[u];
        }
        for (uint i = l; i < hd; i += WG) sh_vp[i] = v[g * hd + i];
        barrier(); /* sh_q, sh_kp, sh_vp */
        if (h % grp == 0u && !bad) { /* append row p of kv head g */
            const uint row = uint(p) * dkv + ho;
            for (uint i = l; i < half_; i += WG) {
                const float k0 = sh_kp[2u * i], k1 = sh_kp[2u * i + 1u];
                const float v0 = sh_vp[2u * i], v1 = sh_vp[2u * i + 1u];
                if (KV_F16 != 0u) {
                    const uint d = row / 2u + i;
                    kc[d] = qg_f32_to_f16(k0) | (qg_f32_to_f16(k1) << 16);
                    vc[d] = qg_f32_to_f16(v0) | (qg_f32_to_f16(v1) << 16);
                } else {
                    const uint d = row + 2u * i;
                    kc[d] = floatBitsToUint(k0);
                    kc[d + 1u] = floatBitsToUint(k1);
                    vc[d] = floatBitsToUint(v0);
                    vc[d + 1u] = floatBitsToUint(v1);
                }
            }
        }
        barrier(); /* every reader of sh_kp, sh_vp's raw values is done */
        for (uint i = l; i < hd; i += WG) {
            sh_kp[i] = qg_as_cached(sh_kp[i]);
            sh_vp[i] = qg_as_cached(sh_vp[i]);
        }
        barrier();
    }
#else
    for (uint i = l; i < hd; i += WG) sh_q[i] = q[t * dq + h * hd + i];
#endif
    const float scale = qg_div_rn(1.0, qg_sqrt_rn(float(hd)));
    float acc[2] = float[2](0.0, 0.0);
    float m = 0.0, lsum = 0.0;
    for (uint j0 = 0u; j0 < n_kv; j0 += BR) {
        const uint cnt = min(BR, n_kv - j0);
        /* k rows j0 .. j0+cnt of this head into sh_k (row r at r * rs) */
        for (uint w = l; w < cnt * rw; w += WG) {
            const uint r = w / rw, c = w % rw;
            const uint e = (j0 + r) * dkv + ho; /* element offset of the row */
#if ROPE
            if (j0 + r == n_kv - 1u && !bad) { /* this step's row, as the cache holds it */
                sh_k[r * rs + c] = KV_F16 != 0u ? qg_f32_to_f16(sh_kp[2u * c]) |
                                                      (qg_f32_to_f16(sh_kp[2u * c + 1u]) << 16)
                                                : floatBitsToUint(sh_kp[c]);
                continue;
            }
#endif
            sh_k[r * rs + c] = kc[(KV_F16 != 0u ? e / 2u : e) + c];
        }
        barrier(); /* sh_k (and sh_q on the first block) ready */
        float s = -1.0 / 0.0;
        if (l < cnt) {
            float d = 0.0;
            const uint b = l * rs;
            if (KV_F16 != 0u) {
                for (uint i = 0u; i < rw; i++) {
                    const vec2 kv = qg_unpack_f16x2(sh_k[b + i]);
                    d += sh_q[2u * i] * kv.x + sh_q[2u * i + 1u] * kv.y;
                }
            } else {
                for (uint i = 0u; i < rw; i++) d += sh_q[i] * uintBitsToFloat(sh_k[b + i]);
            }
            s = d * scale;
        }
        const float bm = wg_max(s); /* its barriers also end the reads of sh_k */
        const float mn = j0 == 0u ? bm : max(m, bm);
        const float alpha = j0 == 0u ? 0.0 : qg_exp(m - mn);
        const float pj = l < cnt ? qg_exp(s - mn) : 0.0;
        if (l < BR) sh_p[l] = pj;
        lsum = lsum * alpha + wg_sum(pj); /* its barriers publish sh_p */
        for (uint u = 0u; u < 2u; u++) {
            const uint i = l + u * WG;
            if (i >= hd) continue;
            float a = acc[u] * alpha;
            for (uint jj = 0u; jj < cnt; jj++) {
                const uint e = (j0 + jj) * dkv + ho + i;
#if ROPE
                const float v = j0 + jj == n_kv - 1u && !bad ? sh_vp[i]
                                : KV_F16 != 0u ? qg_f16_to_f32(vc[e >> 1] >> ((e & 1u) * 16u))
                                               : uintBitsToFloat(vc[e]);
#else
                const float v = KV_F16 != 0u ? qg_f16_to_f32(vc[e >> 1] >> ((e & 1u) * 16u))
                                             : uintBitsToFloat(vc[e]);
#endif
                a += sh_p[jj] * v;
            }
            acc[u] = a;
        }
        m = mn;
        barrier(); /* sh_p and sh_k are rewritten by the next block */
    }
    const float inv = qg_div_rn(1.0, lsum);
    for (uint u = 0u; u < 2u; u++) {
        const uint i = l + u * WG;
        if (i < hd) o[t * dq + h * hd + i] = bad ? uintBitsToFloat(0x7fc00000u) : acc[u] * inv;
    }
}
