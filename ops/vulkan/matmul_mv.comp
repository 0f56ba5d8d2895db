#version 450
/*
 * matmul_mv.comp - y = W x for a weight W (n, m) in any format and one f32
 * column x (n): the matmul, router, lm_head and qkv nodes of decode graphs
 * when the executor's fast_mv option is on (QG_VK_MV=1; matmul.comp
 * otherwise).  Same bindings, push constants and folds as matmul.comp with
 * NT = 1; lm_head's last_only reads the last live column of x.
 *
 * Work layout (qg_rows.glsl): a workgroup owns NR = G * RPT rows, each
 * row group (a subgroup, SGROWS) RPT of them (rows g, g + G, ...).  Per
 * unit u (lane, lane + lanes, ...) a lane first loads the raw quant bytes
 * of u of all RPT rows (qg_dqdot.glsl's DQD_LOAD: RPT independent loads in
 * flight), then x's elements of u once with their sums, then the RPT
 * factored dots.  The first unit's loads are issued before the NORM
 * prologue, so they fly while the workgroup normalizes x.  PF = 1
 * (qg_vk_opts.mv_pf) software-pipelines the loop: each unit's raw bytes
 * are loaded during the previous unit's dots, so a lane's units cost one
 * memory latency rather than one each.  Rows past m repeat the last row;
 * their sums are not written.
 *
 * Executor folds (decode graphs; exec/vulkan/qg_vk_fold.c), as in
 * matmul.comp: NORM = 1 normalizes x into shared memory first
 * (qg_xnorm.glsl), NORM = 2 also stores it at binding 5 (workgroup 0),
 * RESID = 1 adds r (binding 6).  Unused fold bindings are bound to x (4,
 * 6) and y (5) and never touched.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 128u;
layout(constant_id = 1) const int WTYPE = 0;
layout(constant_id = 2) const uint TPR = 32u; /* lanes per row (SGROWS == 0) */
layout(constant_id = 4) const uint RPT = 1u;  /* rows per row group, <= RPT_MAX */
#define RPT_MAX 8
layout(constant_id = 5) const uint NORM = 0u;
layout(constant_id = 6) const uint RESID = 0u;
layout(constant_id = 7) const uint SGROWS = 0u;
layout(constant_id = 8) const uint XN4 = 1u; /* NORM: n / 4 */
layout(constant_id = 9) const uint PF = 0u;  /* 1: load the next unit during this one */
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
    uint m;         /* rows */
    uint rb;        /* bytes per row */
    uint last_only;
    uint gx;        /* workgroups along x */
    float eps;      /* NORM */
} pc;

#define DQD_LOAD ld_w
#define DQD_DOT dot_w
#define DQD_FN dqd_w
#define DQD_BUF wbuf
#define DQD_BUF4 wbuf4
#define DQD_TYPE WTYPE
#include "qg_dqdot.glsl"
/* qg_dequant.glsl for qg_unit_elems (its dq_w goes unused) */
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
    const uint n_tok = uint(N_TOK);
    const uint xc = pc.last_only != 0u ? n_tok - 1u : 0u; /* x's column */
    const uint nu = pc.n / 32u;
    uint rbk[RPT_MAX]; /* byte offset of each of the group's rows */
    [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
        rbk[k] = min(r0 + g + k * G, pc.m - 1u) * pc.rb;

    uvec4 q[RPT_MAX][4];  /* unit u's raw bytes of each row */
    uvec4 qn[RPT_MAX][4]; /* PF: unit u + lanes's */
    uint u = lane;
    if (u < nu)
        [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
            if (k < RPT) ld_w(rbk[k], u, q[k]);
    if (NORM != 0u) qg_xnorm_stage(xc * pc.n, pc.n, pc.eps, NORM == 2u && r0 == 0u);

    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    for (; u < nu; u += lanes) {
        if (PF == 0u && u != lane)
            [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
                if (k < RPT) ld_w(rbk[k], u, q[k]);
        const bool more = PF != 0u && u + lanes < nu;
        if (more)
            [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
                if (k < RPT) ld_w(rbk[k], u + lanes, qn[k]);
        uint e0, e1;
        qg_unit_elems(WTYPE, u, e0, e1);
        const uint xo = NORM != 0u ? 0u : xc * pc.n;
        const uint a = (xo + e0) >> 2, b = (xo + e1) >> 2;
        vec4 xv[8];
        for (uint i = 0u; i < 4u; i++) {
            xv[i] = NORM != 0u ? qg_xn[a + i] : x4[a + i];
            xv[4u + i] = NORM != 0u ? qg_xn[b + i] : x4[b + i];
        }
        const vec2 xs = qg_xsums(xv);
        [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
            if (k < RPT) acc[k] += dot_w(rbk[k], u, q[k], xv, xs);
        if (more) q = qn;
    }
    qg_rows_reduce(acc, RPT);
    uint j, gg;
    if (qg_rows_slot(RPT, j, gg)) {
        const uint r = r0 + gg + j * G;
        if (r < pc.m) {
            const float v = qg_rows_sum(acc, j, gg);
            y[r] = RESID != 0u ? res[r] + v : v;
        }
    }
}
