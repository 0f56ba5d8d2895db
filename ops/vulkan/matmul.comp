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
 * Executor folds (decode graphs, NT == 1; exec/vulkan/qg_vk_record.c):
 *   NORM = 1: x is the input of an rmsnorm the executor dropped; each
 *     workgroup normalizes its column into shared memory first
 *     (qg_xnorm.glsl: binding 4 the norm weight, push eps, XN4 = n / 4);
 *   RESID = 1: y = r + W x, r (m, T) at binding 5: the residual add that
 *     read this product (same f32 add as add.comp).
 *   XOUT = 1 (with NORM): workgroup 0 also stores the normalized column
 *     at binding 10 (the dropped rmsnorm's output, for the other
 *     consumers: moe_fused's router hands it to the expert swiglu).
 * Unused fold bindings are bound to x.
 *
 * NMAT = 3 (the qkv node of decode graphs, one dispatch for its three
 * products): matrices W (binding 1, type WTYPE, m rows), W2 (binding 6,
 * WTYPE2, m2 rows), W3 (binding 7, WTYPE3, m3 rows) over the same x, into
 * y, y2 (binding 8), y3 (binding 9).  Row groups [0, g1) are W's, the
 * next g2 W2's, the rest W3's; each workgroup computes rows of one matrix
 * exactly as a dispatch of its own would.  NMAT = 1: those bindings are
 * bound to x and unused.
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
layout(constant_id = 8) const uint XN4 = 1u;
layout(constant_id = 9) const uint UPL = 0u;  /* units per lane, 0: dynamic */
layout(constant_id = 10) const uint NMAT = 1u;
layout(constant_id = 11) const int WTYPE2 = 0;
layout(constant_id = 12) const int WTYPE3 = 0;
layout(constant_id = 13) const uint XOUT = 0u;
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer WBuf { uint wbuf[]; };     /* (n, m) */
layout(std430, binding = 1) readonly buffer WBuf4 { uvec4 wbuf4[]; };
layout(std430, binding = 2) readonly buffer XBuf { vec4 x4[]; };       /* (n, T) */
layout(std430, binding = 2) readonly buffer XBufS { float xs[]; };     /* (n, T) */
layout(std430, binding = 3) writeonly buffer YBuf { float y[]; };      /* (m, T) */
layout(std430, binding = 4) readonly buffer NBuf { float nw[]; };      /* (n) NORM */
layout(std430, binding = 5) readonly buffer RBuf { float res[]; };     /* (m, T) RESID */
layout(std430, binding = 6) readonly buffer W2Buf { uint w2buf[]; };   /* (n, m2) NMAT 3 */
layout(std430, binding = 6) readonly buffer W2Buf4 { uvec4 w2buf4[]; };
layout(std430, binding = 7) readonly buffer W3Buf { uint w3buf[]; };   /* (n, m3) NMAT 3 */
layout(std430, binding = 7) readonly buffer W3Buf4 { uvec4 w3buf4[]; };
layout(std430, binding = 8) writeonly buffer Y2Buf { float y2[]; };    /* (m2, T) NMAT 3 */
layout(std430, binding = 9) writeonly buffer Y3Buf { float y3[]; };    /* (m3, T) NMAT 3 */
layout(std430, binding = 10) writeonly buffer XoBuf { float xout[]; }; /* (n) XOUT */

layout(push_constant) uniform PC {
    uint n;         /* elements per row, a multiple of 32 */
    uint m;         /* rows (per expert) */
    uint rb;        /* bytes per row */
    uint last_only;
    uint gx;        /* workgroups along x */
    float eps;      /* NORM */
    uint m2, m3;    /* NMAT 3: rows of W2, W3 */
    uint rb2, rb3;  /* their bytes per row */
    uint g1, g2;    /* row groups of W, W2 */
} pc;

#define DQ_FN dq_w
#define DQ_BUF wbuf
#define DQ_BUF4 wbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#undef DQ_FN
#undef DQ_BUF
#undef DQ_BUF4
#undef DQ_TYPE
#define DQ_FN dq_w2
#define DQ_BUF w2buf
#define DQ_BUF4 w2buf4
#define DQ_TYPE WTYPE2
#include "qg_dequant.glsl"
#undef DQ_FN
#undef DQ_BUF
#undef DQ_BUF4
#undef DQ_TYPE
#define DQ_FN dq_w3
#define DQ_BUF w3buf
#define DQ_BUF4 w3buf4
#define DQ_TYPE WTYPE3
#include "qg_dequant.glsl"
#include "qg_rows.glsl"
#include "qg_reduce.glsl"
#include "qg_xnorm.glsl"

/* Unit u of this group's RPT rows against the nc columns: acc[k*NT + t]
 * += the partial dot products. */
void mm_unit(uint u, uint mat, uint m, uint rb, uint r0, uint g, uint G, uint row0, uint nc,
             uint cols[8], inout float acc[QG_ROWS_ACC]) {
    /* the unit of each of this group's rows (rows past m repeat the
     * last one; their sums are not written), then each column's x
     * once for all of them */
    float w[RPT_MAX][32];
    uint e0, e1;
    for (uint k = 0u; k < RPT; k++) {
        const uint o = (row0 + min(r0 + g + k * G, m - 1u)) * rb;
        if (NMAT == 1u || mat == 0u) dq_w(o, u, w[k], e0, e1);
        else if (mat == 1u) dq_w2(o, u, w[k], e0, e1);
        else dq_w3(o, u, w[k], e0, e1);
    }
    for (uint t = 0u; t < NT; t++) {
        if (t >= nc) break;
        const uint xo = NORM != 0u ? 0u : cols[t] * pc.n;
        const uint a = (xo + e0) >> 2, b = (xo + e1) >> 2;
        vec4 xv[8];
        for (uint i = 0u; i < 4u; i++) {
            xv[i] = NORM != 0u ? sh_x4[a + i] : x4[a + i];
            xv[4u + i] = NORM != 0u ? sh_x4[b + i] : x4[b + i];
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

void main() {
    const uint G = qg_rows_G(), NR = G * RPT, g = qg_rows_g(), lane = qg_rows_lane();
    const uint lanes = qg_rows_lanes();
    /* the matrix of this workgroup (NMAT 3), its rows and row bytes */
    uint wgi = gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x, mat = 0u, m = pc.m, rb = pc.rb;
    if (NMAT == 3u && wgi >= pc.g1) {
        wgi -= pc.g1;
        mat = 1u;
        m = pc.m2;
        rb = pc.rb2;
        if (wgi >= pc.g2) {
            wgi -= pc.g2;
            mat = 2u;
            m = pc.m3;
            rb = pc.rb3;
        }
    }
    const uint r0 = wgi * NR;
    if (r0 >= m) return;
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
    if (NORM != 0u) qg_xnorm_stage(xc0 * pc.n, pc.n, pc.eps); /* NT == 1 */
    if (XOUT != 0u && gl_WorkGroupID.x == 0u && gl_WorkGroupID.y == 0u)
        for (uint i = gl_LocalInvocationIndex; i < pc.n; i += WG) xout[i] = sh_x4[i >> 2][i & 3u];

    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    /* UPL (units per lane, a constant): a loop the driver can unroll, all
     * of a lane's weight loads issued before the first is used; the
     * dynamic loop where the lanes are fewer than assumed */
    if (UPL != 0u && UPL * lanes >= nu) {
        for (uint i = 0u; i < UPL; i++)
            if (lane + i * lanes < nu)
                mm_unit(lane + i * lanes, mat, m, rb, r0, g, G, row0, nc, cols, acc);
    } else {
        for (uint u = lane; u < nu; u += lanes) mm_unit(u, mat, m, rb, r0, g, G, row0, nc, cols, acc);
    }
    qg_rows_reduce(acc, RPT * NT);
    /* slot j: row k = j / NT, column t = j % NT of group gg */
    uint j, gg;
    if (qg_rows_slot(RPT * NT, j, gg)) {
        const uint t = j % NT, r = r0 + gg + (j / NT) * G;
        const uint yc = c0 + t;
        if (r < m && t < nc) {
            const float v = qg_rows_sum(acc, j, gg);
            if (NMAT == 1u || mat == 0u) y[yc * m + r] = RESID != 0u ? res[yc * m + r] + v : v;
            else if (mat == 1u) y2[yc * m + r] = v;
            else y3[yc * m + r] = v;
        }
    }
}
