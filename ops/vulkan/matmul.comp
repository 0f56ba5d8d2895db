#version 450
/*
 * matmul.comp - y = W x for a weight W (n, m) in any format and f32
 * columns x (n, T) -> y (m, T): the matmul, router, lm_head and qkv nodes
 * of decode graphs, and lm_head's last row (last_only: the last live
 * column of x, into column 0 of y).  Multi-token products use the tiled
 * gemm.comp.
 *
 * Workgroup: NR rows (qg_rows.glsl) x NT token columns,
 * gl_WorkGroupID.z = column block.  Each lane dequantizes a unit of each
 * of its RPT rows, then loads each column's matching x once and multiplies
 * it with all of them; the RPT*NT partial sums per lane are reduced over
 * the row's lanes.  Row groups are numbered gl_WorkGroupID.y * gx +
 * gl_WorkGroupID.x (a 2-D grid when m / NR exceeds one dimension's limit).
 *
 * Executor folds (decode graphs, NT == 1; exec/vulkan/qg_vk_fold.c):
 *   NORM = 1: x is the input of an rmsnorm the executor dropped; each
 *     workgroup normalizes its column into shared memory first
 *     (qg_xnorm.glsl: binding 4 the norm weight, push eps, XN4 = n / 4);
 *   NORM = 2: also workgroup 0 stores the normalized column at binding 5
 *     (the rmsnorm's output, which a later dispatch reads);
 *   RESID = 1: y = r + W x, r (m, T) at binding 6: the residual add that
 *     was the product's only reader (add.comp's f32 add).
 * Unused fold bindings are bound to x (4, 6) and y (5) and never touched.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 128u;
layout(constant_id = 1) const int WTYPE = 0;
layout(constant_id = 2) const uint TPR = 32u; /* lanes per row */
layout(constant_id = 3) const uint NT = 1u;   /* columns per workgroup, <= 8 */
layout(constant_id = 4) const uint RPT = 1u;  /* rows per row group (<= RPT_MAX); RPT*NT <= 16 */
#define RPT_MAX 2
layout(constant_id = 5) const uint NORM = 0u;
layout(constant_id = 6) const uint RESID = 0u;
layout(constant_id = 7) const uint SGROWS = 0u;
layout(constant_id = 8) const uint XN4 = 1u; /* NORM: n / 4 */
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer WBuf { uint wbuf[]; };     /* (n, m) */
layout(std430, binding = 1) readonly buffer WBuf4 { uvec4 wbuf4[]; };
layout(std430, binding = 2) readonly buffer XBuf { vec4 x4[]; };       /* (n, T) */
layout(std430, binding = 2) readonly buffer XBufS { float xn_xs[]; };  /* x (NORM) */
layout(std430, binding = 2) readonly buffer XBufN { vec4 xn_x4[]; };   /* x (NORM) */
layout(std430, binding = 3) writeonly buffer YBuf { float y[]; };      /* (m, T) */
layout(std430, binding = 4) readonly buffer NBuf { vec4 xn_w4[]; };    /* (n) NORM */
layout(std430, binding = 5) writeonly buffer NOBuf { vec4 xn_out4[]; };/* (n) NORM == 2 */
layout(std430, binding = 6) readonly buffer RBuf { float res[]; };     /* (m, T) RESID */

layout(push_constant) uniform PC {
    uint n;         /* elements per row, a multiple of 32 */
    uint m;         /* rows (per expert) */
    uint rb;        /* bytes per row */
    uint last_only;
    uint gx;        /* workgroups along x */
    float eps;      /* NORM */
} pc;

#define DQ_FN dq_w
#define DQ_BUF wbuf
#define DQ_BUF4 wbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#include "qg_rows.glsl"
#include "qg_norm.glsl"
#include "qg_xnorm.glsl"

void main() {
    const uint G = qg_rows_G(), NR = G * RPT, g = qg_rows_g(), lane = qg_rows_lane();
    const uint lanes = qg_rows_lanes();
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    if (r0 >= pc.m) return;
    uint cols[8]; /* x and y column of each of the nc columns */
    uint nc, row0 = 0u;
    const uint n_tok = uint(N_TOK);
    const uint ncol = pc.last_only != 0u ? 1u : n_tok;
    const uint c0 = gl_WorkGroupID.z * NT;
    if (c0 >= ncol) return;
    const uint xc0 = pc.last_only != 0u ? n_tok - 1u : c0;
    nc = min(NT, ncol - c0);
    for (uint t = 0u; t < 8u; t++) cols[t] = xc0 + t;
    const uint nu = pc.n / 32u;
    if (NORM != 0u) /* NT == 1: the one column xc0 */
        qg_xnorm_stage(xc0 * pc.n, pc.n, pc.eps, NORM == 2u && r0 == 0u);

    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    for (uint u = lane; u < nu; u += lanes) {
        /* the unit of each of this group's rows (rows past m repeat the
         * last one; their sums are not written), then each column's x
         * once for all of them */
        float w[RPT_MAX][32];
        uint e0, e1;
        for (uint k = 0u; k < RPT; k++)
            dq_w((row0 + min(r0 + g + k * G, pc.m - 1u)) * pc.rb, u, w[k], e0, e1);
        for (uint t = 0u; t < NT; t++) {
            if (t >= nc) break;
            const uint xo = NORM != 0u ? 0u : cols[t] * pc.n;
            const uint a = (xo + e0) >> 2, b = (xo + e1) >> 2;
            vec4 xv[8];
            for (uint i = 0u; i < 4u; i++) {
                xv[i] = NORM != 0u ? qg_xn[a + i] : x4[a + i];
                xv[4u + i] = NORM != 0u ? qg_xn[b + i] : x4[b + i];
            }
            for (uint k = 0u; k < RPT; k++) {
                float s = 0.0;
                for (uint i = 0u; i < 8u; i++)
                    s += dot(vec4(w[k][4u * i], w[k][4u * i + 1u], w[k][4u * i + 2u], w[k][4u * i + 3u]),
                             xv[i]);
                acc[k * NT + t] += s;
            }
        }
    }
    qg_rows_reduce(acc, RPT * NT);
    /* slot j: row k = j / NT, column t = j % NT of group gg */
    uint j, gg;
    if (qg_rows_slot(RPT * NT, j, gg)) {
        const uint t = j % NT, r = r0 + gg + (j / NT) * G;
        const uint yc = c0 + t;
        if (r < pc.m && t < nc) {
            /* v ends in an add (or a subgroup sum): nothing to contract */
            const float v = qg_rows_sum(acc, j, gg);
            y[yc * pc.m + r] = RESID != 0u ? res[yc * pc.m + r] + v : v;
        }
    }
}
