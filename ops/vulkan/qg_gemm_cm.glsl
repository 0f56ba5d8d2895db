/*
 * qg_gemm_cm.glsl - the tiled prefill products of qg_gemm.glsl on
 * cooperative matrices (VK_NV_cooperative_matrix: 16 x 16 x 16, f16
 * inputs, f32 accumulation): the body of gemm_cm.comp (SWIGLU 0,
 * GROUPED 0), gemm_swiglu_cm.comp (1, 0), gemm_moe_cm.comp (0, 1) and
 * gemm_swiglu_moe_cm.comp (1, 1).  Same bindings, push constants,
 * workgroup grid and results as qg_gemm.glsl (qg_gemm_io.glsl), up to
 * rounding: weights (d q - m in f32, qg_dqdot.glsl's DQD_VALS) and x are
 * rounded to f16 (11 significant bits) before the products, which are
 * summed in f32.
 *
 * Two builds (cmake/vulkan.cmake):
 *   QG_SUBGROUP=1  the cooperative matrices, for devices with the
 *                  extension, a 16 x 16 x 16 f16/f32 subgroup shape and
 *                  subgroups of 32 (four per workgroup of 128);
 *   QG_SUBGROUP=0  QG_CM_EMU: the same shader with each matrix operation
 *                  written out in scalar code over the same shared tiles
 *                  (a "subgroup" is 32 consecutive invocations, each
 *                  holding 8 of a 16 x 16 accumulator's elements), so
 *                  that lavapipe tests the tiling, staging and epilogue
 *                  in CI (qg_vk_opts.cm_emulate; slow, for tests only).
 *
 * A workgroup computes a BM x BN = 64 x 32 tile of the output, one unit
 * (BK = 32 elements of the rows) per step.  Roles: invocations 0..63
 * each hold row l's unit of W (SWIGLU: 64..127 row l - 64's of U); the x
 * staging is spread over the others (8 elements of a column each for
 * SWIGLU, a second copy in U's order when U's units cover other
 * elements; 16 each by 64..127 otherwise), in the unit's element order
 * (the sum runs over k in any order, the same for both).  Each step's
 * tiles live in shared memory as packed halves ([row][k], [column][k];
 * 16-byte stores), two steps at a time: per step, the subgroups multiply
 * step u's tiles, the invocations convert step u + 1's raw bytes (loaded
 * a step earlier into registers) into the other buffer and issue step
 * u + 2's loads, then one barrier.  Subgroup s multiplies rows 16s ..
 * 16s+15 of the tile by both 16-column halves.  (The emulation keeps one
 * step in shared memory, two barriers a step, to fit lavapipe's 32 KB.)
 */
#define QG_CM_EMU (QG_SUBGROUP == 0)
#if !QG_CM_EMU
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#endif

#define BM 64u
#define BN 32u
#define BK 32u
#include "qg_gemm_io.glsl"

layout(local_size_x = 128) in;

#define DQD_LOAD ld_w
#define DQD_DOT dot_w
#define DQD_FN dqd_w
#define DQD_VALS vals_w
#define DQD_BUF wbuf
#define DQD_BUF4 wbuf4
#define DQD_TYPE WTYPE
#include "qg_dqdot.glsl"
#undef DQD_LOAD
#undef DQD_DOT
#undef DQD_FN
#undef DQD_VALS
#undef DQD_BUF
#undef DQD_BUF4
#undef DQD_TYPE
#define DQD_LOAD ld_u
#define DQD_DOT dot_u
#define DQD_FN dqd_u
#define DQD_VALS vals_u
#define DQD_BUF ubuf
#define DQD_BUF4 ubuf4
#define DQD_TYPE UTYPE
#include "qg_dqdot.glsl"

/* row strides in halves: 16-byte multiples, off the 128-byte bank period */
#define LDW (BK + 8u)
#define LDX (BK + 8u)
#define LDO (BM + 4u) /* floats */
#if QG_CM_EMU
#define NBUF 1u
#else
#define NBUF 2u
#endif

/* the tiles, 8 halves per uvec4: element h at [h / 8], word (h / 2) % 4,
 * half h % 2 (packHalf2x16's order) */
shared uvec4 sh_w[NBUF * BM * LDW / 8u]; /* [step % NBUF][row][k] */
#if SWIGLU
shared uvec4 sh_u[NBUF * BM * LDW / 8u];
shared uvec4 sh_xu[NBUF * BN * LDX / 8u]; /* x in U's order (other unit layouts) */
#endif
shared uvec4 sh_x[NBUF * BN * LDX / 8u]; /* [step % NBUF][column][k] */
shared float sh_o[BN * LDO];             /* [column][row]: the tile, f32 */

/* The matrix operations of a subgroup on its 16 x 16 accumulators:
 *   ACC(name)                       declare one, zeroed
 *   MMA(acc, SA, offa, SB, offb)    acc += A B: A (16 x 16, row-major in
 *                                   SA at half offa, rows LDW apart), B
 *                                   (16 x 16, column-major in SB at half
 *                                   offb, columns LDX apart)
 *   STORE(acc, offo)                into sh_o, column-major at offo
 *   ACC_EL(acc, i), i < ACC_LEN     its elements held by this invocation
 *                                   (the same layout for every accumulator) */
#if QG_CM_EMU
#define SH_HALF(A, h) unpackHalf2x16(A[(h) >> 3][((h) >> 1) & 3u])[(h) & 1u]
struct cm_acc {
    float v[8];
};
cm_acc cm_zero() {
    cm_acc a;
    for (uint i = 0u; i < 8u; i++) a.v[i] = 0.0;
    return a;
}
/* element i of lane t: e = t + 32 i, row e / 16, column e % 16 */
#define ACC(name) cm_acc name = cm_zero()
#define ACC_LEN 8
#define ACC_EL(acc, i) acc.v[i]
#define MMA(acc, SA, offa, SB, offb)                                            \
    for (uint i_ = 0u; i_ < 8u; i_++) {                                         \
        const uint e_ = lane + 32u * i_, r_ = e_ / 16u, c_ = e_ % 16u;           \
        float s_ = 0.0;                                                         \
        for (uint k_ = 0u; k_ < 16u; k_++)                                      \
            s_ += SH_HALF(SA, (offa) + r_ * LDW + k_) *                         \
                  SH_HALF(SB, (offb) + c_ * LDX + k_);                          \
        acc.v[i_] += s_;                                                        \
    }
#define STORE(acc, offo)                                                        \
    for (uint i_ = 0u; i_ < 8u; i_++) {                                         \
        const uint e_ = lane + 32u * i_;                                        \
        sh_o[(offo) + (e_ % 16u) * LDO + e_ / 16u] = acc.v[i_];                 \
    }
#else
#define MA fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define MC fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
#define ACC(name) MC name = MC(0.0)
#define ACC_LEN acc0.length()
#define ACC_EL(acc, i) acc[i]
/* offsets and strides in uvec4s of 8 halves (all multiples of 8) */
#define MMA(acc, SA, offa, SB, offb)                                            \
    {                                                                           \
        MA a_, b_;                                                              \
        coopMatLoadNV(a_, SA, (offa) / 8u, LDW / 8u, false);                    \
        coopMatLoadNV(b_, SB, (offb) / 8u, LDX / 8u, true);                     \
        acc = coopMatMulAddNV(a_, b_, acc);                                     \
    }
#define STORE(acc, offo) coopMatStoreNV(acc, sh_o, offo, LDO, true)
#endif

/* A step's raw inputs, held in registers between its loads and its
 * conversion into the tiles. */
struct cm_raw {
    uvec4 q[4]; /* the unit's raw bytes (W, or SWIGLU's W or U) */
    vec4 x[4];  /* x: SWIGLU 8 elements in W's order (x[0..2)) and, when
                   the layouts differ, 8 in U's (x[2..4)); else 16 */
};

/* x's elements of this invocation for unit u in the layout of type t:
 * column c, elements k0 .. k0+n-1 of the unit's order (n = 8 or 16,
 * k0 % 8 == 0, within one half of the unit) */
void load_x(int t, uint u, uint c, uint k0, uint n, inout vec4 xr[4], uint at) {
    uint f0, f1;
    qg_unit_elems(t, u, f0, f1);
    const uint xb = sh_xcol[c] * pc.n + (k0 < 16u ? f0 + k0 : f1 + k0 - 16u);
    for (uint i = 0u; i < n / 4u; i++) xr[at + i] = x4[(xb >> 2) + i];
}

/* Issue unit u's loads. */
void load_step(uint l, uint u, uint rw, inout cm_raw r) {
#if SWIGLU
    if (l < BM) ld_w(rw * pc.rbw, u, r.q);
    else ld_u(rw * pc.rbu, u, r.q);
    load_x(WTYPE, u, l % 32u, 8u * (l / 32u), 8u, r.x, 0u);
    if (!SAME_UNITS) load_x(UTYPE, u, l % 32u, 8u * (l / 32u), 8u, r.x, 2u);
#else
    if (l < BM) ld_w(rw * pc.rbw, u, r.q);
    else load_x(WTYPE, u, (l - 64u) % 32u, 16u * ((l - 64u) / 32u), 16u, r.x, 0u);
#endif
}

/* Four f32 pairs as one uvec4 of halves. */
uvec4 pack8(vec4 a, vec4 b) {
    return uvec4(packHalf2x16(a.xy), packHalf2x16(a.zw), packHalf2x16(b.xy), packHalf2x16(b.zw));
}

/* Convert unit u's raw inputs into shared buffer b. */
void store_step(uint l, uint u, uint b, uint rw, cm_raw r) {
    const uint sw = b * BM * LDW / 8u, sx = b * BN * LDX / 8u;
    float w[32];
#if SWIGLU
    if (l < BM) vals_w(rw * pc.rbw, u, r.q, w);
    else vals_u(rw * pc.rbu, u, r.q, w);
#else
    if (l < BM) vals_w(rw * pc.rbw, u, r.q, w);
#endif
    if (SWIGLU != 0 || l < BM) {
        uvec4 v[4];
        for (uint i = 0u; i < 4u; i++)
            v[i] = pack8(vec4(w[8u * i], w[8u * i + 1u], w[8u * i + 2u], w[8u * i + 3u]),
                         vec4(w[8u * i + 4u], w[8u * i + 5u], w[8u * i + 6u], w[8u * i + 7u]));
        const uint o = sw + (l % BM) * (LDW / 8u);
#if SWIGLU
        if (l >= BM) {
            for (uint i = 0u; i < 4u; i++) sh_u[o + i] = v[i];
        } else
#endif
            for (uint i = 0u; i < 4u; i++) sh_w[o + i] = v[i];
    }
#if SWIGLU
    {
        const uint c = l % 32u, k0 = 8u * (l / 32u);
        sh_x[sx + (c * LDX + k0) / 8u] = pack8(r.x[0], r.x[1]);
        if (!SAME_UNITS) sh_xu[sx + (c * LDX + k0) / 8u] = pack8(r.x[2], r.x[3]);
    }
#else
    if (l >= BM) {
        const uint c = (l - 64u) % 32u, k0 = 16u * ((l - 64u) / 32u);
        sh_x[sx + (c * LDX + k0) / 8u] = pack8(r.x[0], r.x[1]);
        sh_x[sx + (c * LDX + k0) / 8u + 1u] = pack8(r.x[2], r.x[3]);
    }
#endif
}

void main() {
    const uint l = gl_LocalInvocationIndex;
    const uint r0 = gl_WorkGroupID.x * BM;
    uint row0;
    const uint nc = qg_gemm_cols(l, row0);
    if (nc == 0u) return;
    barrier();
#if QG_CM_EMU
    const uint s = l / 32u, lane = l % 32u;
#else
    const uint s = gl_SubgroupID; /* rows 16s .. of the tile */
#endif
    /* this invocation's weight row (rows past m repeat the last) */
    const uint rw = row0 + min(r0 + l % BM, pc.m - 1u);
    const uint nu = pc.n / 32u;
    ACC(acc0);
    ACC(acc1);
#if SWIGLU
    ACC(accu0);
    ACC(accu1);
#endif
    cm_raw raw;
    for (uint i = 0u; i < 4u; i++) {
        raw.q[i] = uvec4(0u);
        raw.x[i] = vec4(0.0);
    }
    load_step(l, 0u, rw, raw);
    store_step(l, 0u, 0u, rw, raw);
    if (nu > 1u) load_step(l, 1u, rw, raw);
    barrier();
    for (uint u = 0u; u < nu; u++) {
        const uint b = NBUF == 2u ? u & 1u : 0u;
        const uint sw = b * BM * LDW + 16u * s * LDW, sx = b * BN * LDX;
        [[unroll]] for (uint kk = 0u; kk < BK; kk += 16u) {
            /* x (k, column) at column * LDX + k: column-major */
            MMA(acc0, sh_w, sw + kk, sh_x, sx + kk);
            MMA(acc1, sh_w, sw + kk, sh_x, sx + 16u * LDX + kk);
#if SWIGLU
            if (SAME_UNITS) {
                MMA(accu0, sh_u, sw + kk, sh_x, sx + kk);
                MMA(accu1, sh_u, sw + kk, sh_x, sx + 16u * LDX + kk);
            } else {
                MMA(accu0, sh_u, sw + kk, sh_xu, sx + kk);
                MMA(accu1, sh_u, sw + kk, sh_xu, sx + 16u * LDX + kk);
            }
#endif
        }
#if QG_CM_EMU
        barrier(); /* one buffer: the products read it before it is refilled */
#endif
        if (u + 1u < nu) {
            store_step(l, u + 1u, NBUF == 2u ? b ^ 1u : 0u, rw, raw);
            if (u + 2u < nu) load_step(l, u + 2u, rw, raw);
        }
#if QG_CM_EMU
        if (u + 1u < nu) barrier();
#else
        barrier();
#endif
    }
#if SWIGLU
    /* the accumulators of G and U share their layout: element i of one
     * is element i of the other */
    for (int i = 0; i < ACC_LEN; i++) {
        ACC_EL(acc0, i) = qg_silu(ACC_EL(acc0, i)) * ACC_EL(accu0, i);
        ACC_EL(acc1, i) = qg_silu(ACC_EL(acc1, i)) * ACC_EL(accu1, i);
    }
#endif
    /* tile (row, column) at column * LDO + row */
    STORE(acc0, 16u * s);
    STORE(acc1, 16u * LDO + 16u * s);
    barrier();
    for (uint i = l; i < BM * BN; i += 128u) {
        const uint c = i / BM, r = i % BM;
        if (c < nc && r0 + r < pc.m) y[sh_ycol[c] * pc.m + r0 + r] = sh_o[c * LDO + r];
    }
}
