/*
 * qg_gemm_cm.glsl - the tiled prefill products of qg_gemm.glsl on
 * cooperative matrices (VK_NV_cooperative_matrix: 16 x 16 x 16, f16
 * inputs, f32 accumulation): the body of gemm_cm.comp (SWIGLU 0,
 * GROUPED 0), gemm_swiglu_cm.comp (1, 0), gemm_moe_cm.comp (0, 1) and
 * gemm_swiglu_moe_cm.comp (1, 1).  Same bindings, push constants,
 * workgroup grid and results as qg_gemm.glsl (qg_gemm_io.glsl), up to
 * rounding: weights and x are rounded to f16 (11 significant bits) before
 * the products, which are summed in f32.
 *
 * Two builds (cmake/vulkan.cmake):
 *   QG_SUBGROUP=1  the cooperative matrices, for devices with the
 *                  extension, a 16 x 16 x 16 f16/f32 subgroup shape and
 *                  subgroups of 32 (four per workgroup of 128);
 *   QG_SUBGROUP=0  QG_CM_EMU: the same shader with each matrix operation
 *                  written out in scalar code over the same shared tiles
 *                  (a "subgroup" is 32 consecutive invocations, each
 *                  holding 8 of a 16 x 16 accumulator's elements; f16
 *                  rounding by packHalf2x16), so that lavapipe tests the
 *                  tiling, staging and epilogue in CI (qg_vk_opts.
 *                  cm_emulate; slow, for tests only).
 *
 * A workgroup computes a BM x BN = 64 x 32 tile of the output.  Per step
 * of one unit (BK = 32 elements of the rows, qg_dequant.glsl), the 64
 * rows' units are dequantized into shared memory as f16 (invocations
 * 0..63; SWIGLU: 64..127 dequantize U's) and the matching elements of the
 * 32 columns of x staged beside them, in the units' element order (the
 * sum runs over k in any order, the same for both).  Shared memory holds
 * two steps: a step's tiles are written while the previous step's are
 * multiplied, one barrier per step (the emulation: one step, two
 * barriers).  Subgroup s multiplies rows
 * 16s .. 16s+15 of the tile by both 16-column halves.
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

/* row strides in f16 elements: 16-byte multiples, off the 128-byte bank
 * period */
#define LDW (BK + 8u)
#define LDX (BK + 8u)
#define LDO (BM + 4u)

/* The emulation keeps its f16 values in f32, with one step's tiles at a
 * time, to stay within lavapipe's 32 KB of shared memory. */
#if QG_CM_EMU
#define F16 float
/* round to f16 and back */
#define TO_F16(v) unpackHalf2x16(packHalf2x16(vec2((v), 0.0))).x
#define NBUF 1u
#else
#define F16 float16_t
#define TO_F16(v) float16_t(v)
#define NBUF 2u
#endif

shared F16 sh_w[NBUF * BM * LDW]; /* [step % NBUF][row][k] */
#if SWIGLU
shared F16 sh_u[NBUF * BM * LDW];
/* U's units may cover other elements than G's (another block layout):
 * then x is staged a second time in U's order */
shared F16 sh_xu[NBUF * BN * LDX];
#endif
shared F16 sh_x[NBUF * BN * LDX]; /* [step % NBUF][column][k] */
#if QG_CM_EMU
/* the output tile in W's tiles, done with by then (BN * LDO <= BM * LDW) */
#define sh_o sh_w
#else
shared float sh_o[BN * LDO]; /* [column][row]: the tile, f32 */
#endif

/* The matrix operations of a subgroup on its 16 x 16 accumulators:
 *   ACC(name)                       declare one, zeroed
 *   MMA(acc, SA, offa, SB, offb)    acc += A B: A (16 x 16, row-major in
 *                                   SA at offa, rows LDW apart), B (16 x 16,
 *                                   column-major in SB at offb, columns LDX
 *                                   apart)
 *   STORE(acc, offo)                into sh_o, column-major at offo
 *   acc[i] for i < ACC_LEN          its elements held by this invocation
 *                                   (the same layout for every accumulator) */
#if QG_CM_EMU
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
            s_ += SA[(offa) + r_ * LDW + k_] * SB[(offb) + c_ * LDX + k_];      \
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
#define MMA(acc, SA, offa, SB, offb)                                            \
    {                                                                           \
        MA a_, b_;                                                              \
        coopMatLoadNV(a_, SA, offa, LDW, false);                                \
        coopMatLoadNV(b_, SB, offb, LDX, true);                                 \
        acc = coopMatMulAddNV(a_, b_, acc);                                     \
    }
#define STORE(acc, offo) coopMatStoreNV(acc, sh_o, offo, LDO, true)
#endif

/* x: elements k0 .. k0+3 (of the unit's order, k0 % 4 == 0) of column c,
 * from x's elements xb .. xb+3, into the step's x tile at sx */
#define STAGE_X4(SH, sx, c, k0, a)                                              \
    for (uint i_ = 0u; i_ < 4u; i_++) SH[(sx) + (c) * LDX + (k0) + i_] = TO_F16((a)[i_])

/* Stage unit u of the tile's rows and columns into shared buffer b. */
void stage(uint l, uint u, uint b, uint row0, uint wr) {
    float w[32];
    uint e0, e1;
    const uint sw = b * BM * LDW, sx = b * BN * LDX;
    const uint lr = l % BM;
    if (l < BM) {
        dq_w((row0 + wr) * pc.rbw, u, w, e0, e1);
        for (uint k = 0u; k < 32u; k++) sh_w[sw + lr * LDW + k] = TO_F16(w[k]);
    }
#if SWIGLU
    else {
        dq_u((row0 + wr) * pc.rbu, u, w, e0, e1);
        for (uint k = 0u; k < 32u; k++) sh_u[sw + lr * LDW + k] = TO_F16(w[k]);
    }
    {
        /* x: 32 columns x 32 elements, 8 per invocation: column l % 32,
         * elements 8 * (l / 32) .. of G's unit (and of U's) */
        const uint c = l % 32u, k0 = 8u * (l / 32u);
        for (uint mm = 0u; mm < (SAME_UNITS ? 1u : 2u); mm++) {
            uint f0, f1;
            qg_unit_elems(mm == 0u ? WTYPE : UTYPE, u, f0, f1);
            const uint xb = sh_xcol[c] * pc.n + (k0 < 16u ? f0 + k0 : f1 + k0 - 16u);
            const vec4 a = x4[xb >> 2], a2 = x4[(xb >> 2) + 1u];
            if (mm == 0u) {
                STAGE_X4(sh_x, sx, c, k0, a);
                STAGE_X4(sh_x, sx, c, k0 + 4u, a2);
            } else {
                STAGE_X4(sh_xu, sx, c, k0, a);
                STAGE_X4(sh_xu, sx, c, k0 + 4u, a2);
            }
        }
    }
#else
    else {
        /* x: 32 columns x 32 elements, 16 per invocation (64..127):
         * column (l - 64) % 32, elements 16 * ((l - 64) / 32) .. */
        uint f0, f1;
        qg_unit_elems(WTYPE, u, f0, f1);
        const uint c = (l - 64u) % 32u, half_ = (l - 64u) / 32u;
        const uint xb = sh_xcol[c] * pc.n + (half_ == 0u ? f0 : f1);
        for (uint i = 0u; i < 4u; i++) {
            const vec4 a = x4[(xb >> 2) + i];
            STAGE_X4(sh_x, sx, c, 16u * half_ + 4u * i, a);
        }
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
    const uint wr = min(r0 + l % BM, pc.m - 1u);
    const uint nu = pc.n / 32u;
    ACC(acc0);
    ACC(acc1);
#if SWIGLU
    ACC(accu0);
    ACC(accu1);
#endif
    stage(l, 0u, 0u, row0, wr);
    barrier();
    for (uint u = 0u; u < nu; u++) {
        const uint b = NBUF == 2u ? u & 1u : 0u;
#if !QG_CM_EMU
        if (u + 1u < nu) stage(l, u + 1u, b ^ 1u, row0, wr);
#endif
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
        barrier();
#if QG_CM_EMU
        if (u + 1u < nu) {
            stage(l, u + 1u, 0u, row0, wr);
            barrier();
        }
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
