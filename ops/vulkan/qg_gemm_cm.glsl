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
 * Built with subgroup operations only; the executor uses these shaders on
 * devices with the extension, a 16 x 16 x 16 f16/f32 subgroup shape and
 * subgroups of 32 (four per workgroup of 128).
 *
 * A workgroup computes a BM x BN = 64 x 32 tile of the output.  Per step
 * of one unit (BK = 32 elements of the rows, qg_dequant.glsl), the 64
 * rows' units are dequantized into shared memory as f16 (invocations
 * 0..63; SWIGLU: 64..127 dequantize U's) and the matching elements of the
 * 32 columns of x staged beside them, in the units' element order (the
 * sum runs over k in any order, the same for both).  Shared memory holds
 * two steps: a step's tiles are written while the previous step's are
 * multiplied, one barrier per step.  Subgroup s multiplies rows
 * 16s .. 16s+15 of the tile by both 16-column halves.
 */
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require

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

shared float16_t sh_w[2u * BM * LDW]; /* [step % 2][row][k] */
#if SWIGLU
shared float16_t sh_u[2u * BM * LDW];
/* U's units may cover other elements than G's (another block layout):
 * then x is staged a second time in U's order */
shared float16_t sh_xu[2u * BN * LDX];
#endif
shared float16_t sh_x[2u * BN * LDX]; /* [step % 2][column][k] */
shared float sh_o[BN * LDO];          /* [column][row]: the tile, f32 */

#define MA fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define MC fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>

/* x: elements k0 .. k0+3 (of the unit's order, k0 % 4 == 0) of column c,
 * from x's elements xb .. xb+3, into the step's x tile at sx */
#define STAGE_X4(SH, sx, c, k0, a)                                              \
    for (uint i_ = 0u; i_ < 4u; i_++) SH[(sx) + (c) * LDX + (k0) + i_] = float16_t((a)[i_])

/* Stage unit u of the tile's rows and columns into shared buffer b. */
void stage(uint l, uint u, uint b, uint row0, uint wr) {
    float w[32];
    uint e0, e1;
    const uint sw = b * BM * LDW, sx = b * BN * LDX;
    const uint lr = l % BM;
    if (l < BM) {
        dq_w((row0 + wr) * pc.rbw, u, w, e0, e1);
        for (uint k = 0u; k < 32u; k++) sh_w[sw + lr * LDW + k] = float16_t(w[k]);
    }
#if SWIGLU
    else {
        dq_u((row0 + wr) * pc.rbu, u, w, e0, e1);
        for (uint k = 0u; k < 32u; k++) sh_u[sw + lr * LDW + k] = float16_t(w[k]);
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
    const uint s = gl_SubgroupID; /* rows 16s .. of the tile */
    const uint wr = min(r0 + l % BM, pc.m - 1u);
    const uint nu = pc.n / 32u;
    MC acc0 = MC(0.0), acc1 = MC(0.0);
#if SWIGLU
    MC accu0 = MC(0.0), accu1 = MC(0.0);
#endif
    stage(l, 0u, 0u, row0, wr);
    barrier();
    for (uint u = 0u; u < nu; u++) {
        const uint b = u & 1u;
        if (u + 1u < nu) stage(l, u + 1u, b ^ 1u, row0, wr);
        const uint sw = b * BM * LDW + 16u * s * LDW, sx = b * BN * LDX;
        [[unroll]] for (uint kk = 0u; kk < BK; kk += 16u) {
            MA a, x0, x1;
            coopMatLoadNV(a, sh_w, sw + kk, LDW, false);
            /* x (k, column) at column * LDX + k: column-major */
            coopMatLoadNV(x0, sh_x, sx + kk, LDX, true);
            coopMatLoadNV(x1, sh_x, sx + 16u * LDX + kk, LDX, true);
            acc0 = coopMatMulAddNV(a, x0, acc0);
            acc1 = coopMatMulAddNV(a, x1, acc1);
#if SWIGLU
            MA au;
            coopMatLoadNV(au, sh_u, sw + kk, LDW, false);
            if (!SAME_UNITS) {
                coopMatLoadNV(x0, sh_xu, sx + kk, LDX, true);
                coopMatLoadNV(x1, sh_xu, sx + 16u * LDX + kk, LDX, true);
            }
            accu0 = coopMatMulAddNV(au, x0, accu0);
            accu1 = coopMatMulAddNV(au, x1, accu1);
#endif
        }
        barrier();
    }
#if SWIGLU
    /* the accumulators of G and U share their layout: element i of one
     * is element i of the other */
    for (int i = 0; i < acc0.length(); i++) {
        acc0[i] = qg_silu(acc0[i]) * accu0[i];
        acc1[i] = qg_silu(acc1[i]) * accu1[i];
    }
#endif
    /* tile (row, column) at column * LDO + row */
    coopMatStoreNV(acc0, sh_o, 16u * s, LDO, true);
    coopMatStoreNV(acc1, sh_o, 16u * LDO + 16u * s, LDO, true);
    barrier();
    for (uint i = l; i < BM * BN; i += 128u) {
        const uint c = i / BM, r = i % BM;
        if (c < nc && r0 + r < pc.m) y[sh_ycol[c] * pc.m + r0 + r] = sh_o[c * LDO + r];
    }
}
