#version 450
/*
 * attention_tile.comp - causal GQA attention of multi-token (prefill)
 * graphs with the queries that share a kv head tiled together (executor
 * option attn_tile, QG_VK_ATTN_TILE=1; attention.comp otherwise): q (Dq,
 * T) over the caches (after this step's rows were appended); token t,
 * head h reads rows 0..pos[t] of kv head h / G, G = nh / nkv.
 *
 * One workgroup of 128 per (kv head g = gl_WorkGroupID.x, token block z =
 * gl_WorkGroupID.z) owns 32 queries: the G heads of g for the BT = 32 / G
 * tokens z*BT ..; query i is head g*G + i % G of token z*BT + i / G, and
 * 4 invocations serve it (s = l % 4), each holding q and the output
 * accumulators of dims 4k + s (HD / 4 of them).  The cache rows the
 * block's latest position needs are taken BK at a time (16 rows, 8 when
 * HD > 128): staged in shared memory as f32, scored (each invocation its
 * dims' partial dot, the 4 partials summed in a fixed order by each of
 * the 4, so they agree bit for bit), then an online softmax per query
 * (running max m and sum l; accumulators rescaled by exp(m_old - m_new))
 * with rows past the query's position left out.  Every cache row is read
 * from memory once per 32 queries instead of once per query.  f32
 * throughout; o = acc / l.  A position outside [0, n_ctx) writes NaN.
 * Needs HD % 4 == 0, HD <= 256 and G dividing 32 (the executor checks).
 */
#include "qg_common.glsl"

#define WG 128u
layout(local_size_x = 128) in;
layout(constant_id = 1) const uint KV_F16 = 1u;
layout(constant_id = 2) const uint HD = 128u; /* head_dim */

layout(std430, binding = 1) readonly buffer QBuf { float q[]; };   /* (Dq, T) */
layout(std430, binding = 2) readonly buffer KcBuf { uint kc[]; };  /* (Dkv, C) */
layout(std430, binding = 3) readonly buffer VcBuf { uint vc[]; };  /* (Dkv, C) */
layout(std430, binding = 4) readonly buffer PBuf { int pos[]; };   /* (T) */
layout(std430, binding = 5) writeonly buffer OBuf { float o[]; };  /* (Dq, T) */

layout(push_constant) uniform PC {
    uint hd, nh, nkv;
    uint n_ctx;
} pc;

const uint NQ = 32u;                      /* queries per workgroup */
const uint DPI = HD / 4u;                 /* dims per invocation */
const uint BK = HD <= 128u ? 16u : 8u;    /* cache rows per block */
#define SH_ROWS 2048u                     /* BK * HD at most */
shared float sh_k[SH_ROWS], sh_v[SH_ROWS]; /* block rows: [r * HD + d] */
shared float sh_part[WG * 16u];           /* [l * BK + r]: partial dots */
shared int sh_pos[NQ];

/* Element e of a cache row (word buffer b: F16 pairs or F32 bits). */
float cache_at(uint w, uint e) {
    return KV_F16 != 0u ? unpackHalf2x16(w >> ((e & 1u) * 16u)).x : uintBitsToFloat(w);
}

void main() {
    const uint l = gl_LocalInvocationIndex, qi = l / 4u, s = l % 4u;
    const uint g = gl_WorkGroupID.x, G = pc.nh / pc.nkv, BT = NQ / G;
    const uint dq = pc.nh * HD, dkv = pc.nkv * HD;
    const uint t = gl_WorkGroupID.z * BT + qi / G, h = g * G + qi % G;
    const uint n_tok = uint(N_TOK);
    if (gl_WorkGroupID.z * BT >= n_tok) return; /* the whole block past the live tokens */
    const bool live = t < n_tok;
    const int p = live ? pos[t] : -1;
    const bool bad = live && (p < 0 || uint(p) >= pc.n_ctx);
    /* the rows this block needs: the largest live position + 1 */
    if (l < NQ) {
        const uint tt = gl_WorkGroupID.z * BT + l / G;
        const int pp = tt < n_tok ? pos[tt] : -1;
        sh_pos[l] = pp < 0 || uint(pp) >= pc.n_ctx ? 0 : pp + 1;
    }
    float qv[DPI], acc[DPI];
    for (uint k = 0u; k < DPI; k++) {
        qv[k] = live ? q[t * dq + h * HD + 4u * k + s] : 0.0;
        acc[k] = 0.0;
    }
    barrier();
    uint n_kv = 0u;
    for (uint i = 0u; i < NQ; i++) n_kv = max(n_kv, uint(sh_pos[i]));
    const uint mine = bad || !live ? 0u : uint(p) + 1u; /* rows of this query */
    const float scale = 1.0 / sqrt(float(HD));
    const uint ho = g * HD; /* kv head offset (elements) */
    float m = -1.0 / 0.0, lsum = 0.0;
    for (uint j0 = 0u; j0 < n_kv; j0 += BK) {
        const uint cnt = min(BK, n_kv - j0);
        /* rows j0 .. j0+cnt of this kv head into sh_k, sh_v as f32 */
        const uint rw = KV_F16 != 0u ? HD / 2u : HD; /* words per row */
        for (uint w = l; w < cnt * rw; w += WG) {
            const uint r = w / rw, c = w % rw;
            const uint e = (j0 + r) * dkv + ho; /* element offset of the row */
            const uint wi = (KV_F16 != 0u ? e / 2u : e) + c;
            const uint kw = kc[wi], vw = vc[wi];
            if (KV_F16 != 0u) {
                sh_k[r * HD + 2u * c] = cache_at(kw, 0u);
                sh_k[r * HD + 2u * c + 1u] = cache_at(kw, 1u);
                sh_v[r * HD + 2u * c] = cache_at(vw, 0u);
                sh_v[r * HD + 2u * c + 1u] = cache_at(vw, 1u);
            } else {
                sh_k[r * HD + c] = uintBitsToFloat(kw);
                sh_v[r * HD + c] = uintBitsToFloat(vw);
            }
        }
        barrier();
        /* this invocation's partial dot of each row, dims 4k + s */
        for (uint r = 0u; r < BK; r++) {
            float d = 0.0;
            if (r < cnt)
                for (uint k = 0u; k < DPI; k++) d += qv[k] * sh_k[r * HD + 4u * k + s];
            sh_part[l * BK + r] = d;
        }
        barrier();
        /* the query's scores (its 4 partials in order), block max */
        float sc[16];
        float bm = -1.0 / 0.0;
        const uint b0 = (l & ~3u) * BK;
        for (uint r = 0u; r < BK; r++) {
            const float d = ((sh_part[b0 + r] + sh_part[b0 + BK + r]) + sh_part[b0 + 2u * BK + r]) +
                            sh_part[b0 + 3u * BK + r];
            const bool ok = r < cnt && j0 + r < mine;
            sc[r] = ok ? d * scale : -1.0 / 0.0;
            bm = max(bm, sc[r]);
        }
        if (bm > -1.0 / 0.0) { /* the query has rows in this block */
            const float mn = max(m, bm);
            const float alpha = exp(m - mn); /* 0 on the first rows */
            float ps = 0.0;
            for (uint k = 0u; k < DPI; k++) acc[k] *= alpha;
            for (uint r = 0u; r < BK; r++) {
                if (sc[r] == -1.0 / 0.0) continue;
                const float pr = exp(sc[r] - mn);
                ps += pr;
                for (uint k = 0u; k < DPI; k++) acc[k] += pr * sh_v[r * HD + 4u * k + s];
            }
            lsum = lsum * alpha + ps;
            m = mn;
        }
        barrier(); /* sh_k, sh_v and sh_part are rewritten by the next block */
    }
    if (!live) return;
    const float inv = 1.0 / lsum;
    for (uint k = 0u; k < DPI; k++)
        o[t * dq + h * HD + 4u * k + s] = bad ? uintBitsToFloat(0x7fc00000u) : acc[k] * inv;
}
