/*
 * qg_gemm.glsl - tiled weight x activation products for multi-token
 * (prefill) graphs: the body of gemm.comp (SWIGLU 0, GROUPED 0),
 * gemm_swiglu.comp (1, 0), gemm_moe.comp (0, 1), gemm_swiglu_moe.comp
 * (1, 1).
 *
 *   SWIGLU 0:  y (m, cols) = W x               (matmul, qkv, lm_head, router)
 *   SWIGLU 1:  h (m, cols) = silu(G x) * (U x) (dense FFN, experts' gate/up)
 *   GROUPED 0: columns are tokens c0 .. c0+BN of x (n, T) and of the
 *              output; gl_WorkGroupID.z = column block
 *   GROUPED 1: gl_WorkGroupID.z = a tile of moe_sort.comp: expert e (its
 *              rows of W (n, m, X)) and up to BN of its assignments a =
 *              asg[i0 ..]; column a of the output, column a / xdiv of x
 *              (xdiv = K for the gate/up from x (n, T), 1 for the down
 *              projection from h (n, K*T))
 *
 * A workgroup of 128 computes a BM x BN = 64 x 32 tile of the output:
 * per step of 32 elements of the rows (one unit of qg_dequant.glsl), the
 * 64 rows' units are dequantized exactly into shared memory (invocations
 * 0..63; for SWIGLU, 64..127 dequantize U's), the matching 32 elements
 * of the 32 columns of x are staged next to them, and every invocation
 * accumulates a 4 x 4 block of the tile in f32 from shared memory.
 * gl_WorkGroupID.x = row tile.
 */
#define BM 64u
#define BN 32u
#define BK 32u
#include "qg_gemm_io.glsl"

layout(local_size_x = 128) in;

shared vec4 sh_w[BK * BM / 4u]; /* [k][row / 4] */
#if SWIGLU
shared vec4 sh_u[BK * BM / 4u];
#endif
shared vec4 sh_x[BK * BN / 4u]; /* [k][column / 4] */
#if SWIGLU
/* U's units may cover other elements than G's (another block layout):
 * then x is staged a second time in U's order */
shared vec4 sh_xu[BK * BN / 4u];
#endif

void main() {
    const uint l = gl_LocalInvocationIndex;
    const uint r0 = gl_WorkGroupID.x * BM;
    uint row0;
    const uint nc = qg_gemm_cols(l, row0);
    if (nc == 0u) return;
    barrier();
    /* 4 x 4 block: rows 4*ty .., columns 4*tx .. of the tile */
    const uint tx = l % 8u, ty = l / 8u;
    vec4 acc[4], accu[4];
    for (uint i = 0u; i < 4u; i++) {
        acc[i] = vec4(0.0);
        accu[i] = vec4(0.0);
    }
    /* loader roles: invocations 0..63 dequantize row l of W; SWIGLU:
     * 64..127 row l - 64 of U; x: 32 columns x 32 elements, 8 or 16 per
     * invocation */
    const uint nu = pc.n / 32u;
    const uint lr = l % BM, wr = min(r0 + lr, pc.m - 1u);
    for (uint u = 0u; u < nu; u++) {
        float w[32];
        uint e0, e1;
        if (l < BM) {
            dq_w((row0 + wr) * pc.rbw, u, w, e0, e1);
            for (uint k = 0u; k < 32u; k++) sh_w[k * (BM / 4u) + lr / 4u][lr % 4u] = w[k];
        }
#if SWIGLU
        else {
            dq_u((row0 + wr) * pc.rbu, u, w, e0, e1);
            for (uint k = 0u; k < 32u; k++) sh_u[k * (BM / 4u) + lr / 4u][lr % 4u] = w[k];
        }
        {
            /* x: 32 columns x 32 elements, 8 per invocation: column
             * l % 32, elements 8 * (l / 32) .. of G's unit (and U's) */
            const uint c = l % 32u, k0 = 8u * (l / 32u);
            for (uint m = 0u; m < (SAME_UNITS ? 1u : 2u); m++) {
                uint f0, f1;
                qg_unit_elems(m == 0u ? WTYPE : UTYPE, u, f0, f1);
                const uint xb = sh_xcol[c] * pc.n + (k0 < 16u ? f0 + k0 : f1 + k0 - 16u);
                const vec4 a = x4[xb >> 2], b = x4[(xb >> 2) + 1u];
                for (uint i = 0u; i < 4u; i++) {
                    const uint i0 = (k0 + i) * (BN / 4u) + c / 4u, i1 = i0 + 4u * (BN / 4u);
                    if (m == 0u) {
                        sh_x[i0][c % 4u] = a[i];
                        sh_x[i1][c % 4u] = b[i];
                    } else {
                        sh_xu[i0][c % 4u] = a[i];
                        sh_xu[i1][c % 4u] = b[i];
                    }
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
                for (uint j = 0u; j < 4u; j++)
                    sh_x[(16u * half_ + 4u * i + j) * (BN / 4u) + c / 4u][c % 4u] = a[j];
            }
        }
#endif
        barrier();
        /* the step's 32 products summed on their own, then added: two-level
         * f32 summation, error ~ (32 + n / 32) ulp rather than n */
        vec4 p[4], pu[4];
        for (uint i = 0u; i < 4u; i++) {
            p[i] = vec4(0.0);
            pu[i] = vec4(0.0);
        }
        for (uint k = 0u; k < BK; k++) {
            const vec4 a = sh_w[k * (BM / 4u) + ty];
            const vec4 b = sh_x[k * (BN / 4u) + tx];
            p[0] += a.x * b;
            p[1] += a.y * b;
            p[2] += a.z * b;
            p[3] += a.w * b;
#if SWIGLU
            const vec4 au = sh_u[k * (BM / 4u) + ty];
            const vec4 bu = SAME_UNITS ? b : sh_xu[k * (BN / 4u) + tx];
            pu[0] += au.x * bu;
            pu[1] += au.y * bu;
            pu[2] += au.z * bu;
            pu[3] += au.w * bu;
#endif
        }
        for (uint i = 0u; i < 4u; i++) {
            acc[i] += p[i];
            accu[i] += pu[i];
        }
        barrier();
    }
    /* acc[i][j]: row r0 + 4*ty + i, column 4*tx + j of the tile */
    for (uint j = 0u; j < 4u; j++) {
        const uint c = 4u * tx + j;
        if (c >= nc) break;
        const uint yo = sh_ycol[c] * pc.m;
        for (uint i = 0u; i < 4u; i++) {
            const uint r = r0 + 4u * ty + i;
            if (r >= pc.m) break;
#if SWIGLU
            y[yo + r] = qg_silu(acc[i][j]) * accu[i][j];
#else
            y[yo + r] = acc[i][j];
#endif
        }
    }
}
