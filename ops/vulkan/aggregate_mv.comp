#version 450
/*
 * aggregate_mv.comp - y = sum_k wts[k] * (D_e h[:, k]), e = ids[k]: the
 * experts' down projections and their weighted sum in decode graphs when
 * the executor's fast_mv option is on (QG_VK_MV=1; aggregate.comp
 * otherwise).  Same bindings, push constants and RESID fold as
 * aggregate.comp with one token: D (n=f, m=n_embd, X) any format;
 * h (f, K); ids, wts (K); y (m).  An id outside [0, X) writes NaN.
 *
 * Work layout (qg_rows.glsl): a workgroup owns NR = G * RPT rows, each row
 * group RPT of them (rows g, g + G, ...).  A row's work is K * nu items
 * (expert k, unit u; nu = f / 32), and the lanes of a group take items
 * lane, lane + lanes, ... over all of them, so every lane is busy and the
 * loads of several experts are in flight (K = 8, f = 768: 192 items for
 * 32 lanes).  Per item a lane loads the raw bytes of u of expert e's RPT
 * rows (qg_dqdot.glsl), h's elements of u once with their sums, and adds
 * wts[k] times each factored dot to its row's partial sum.  PF = 1
 * (qg_vk_opts.mv_pf) software-pipelines the items: the next item's
 * expert id and raw bytes are loaded during this item's dots.
 * RESID = 1: y = r + sum, r (m) at binding 6; otherwise binding 6 is h,
 * never read.
 */
#include "qg_common.glsl"

layout(constant_id = 0) const uint WG = 128u;
layout(constant_id = 1) const int WTYPE = 0;
layout(constant_id = 2) const uint TPR = 32u;
layout(constant_id = 3) const uint RPT = 1u; /* <= RPT_MAX */
#define RPT_MAX 8
layout(constant_id = 4) const uint RESID = 0u;
layout(constant_id = 7) const uint SGROWS = 0u;
layout(constant_id = 9) const uint PF = 0u; /* 1: load the next item during this one */
layout(local_size_x_id = 0) in;

layout(std430, binding = 1) readonly buffer DBuf { uint dbuf[]; };   /* (f, m, X) */
layout(std430, binding = 1) readonly buffer DBuf4 { uvec4 dbuf4[]; };
layout(std430, binding = 2) readonly buffer HBuf { vec4 h4[]; };     /* (f, K) */
layout(std430, binding = 3) readonly buffer IBuf { int ids[]; };     /* (K) */
layout(std430, binding = 4) readonly buffer WtBuf { float wts[]; };  /* (K) */
layout(std430, binding = 5) writeonly buffer YBuf { float y[]; };    /* (m) */
layout(std430, binding = 6) readonly buffer RBuf { float res[]; };   /* (m) RESID */

layout(push_constant) uniform PC {
    uint n;        /* f: elements per row */
    uint m;        /* rows per expert (n_embd) */
    uint rb;       /* bytes per row */
    uint k;        /* experts per token */
    uint n_expert;
    uint gx;
} pc;

#define DQD_LOAD ld_d
#define DQD_DOT dot_d
#define DQD_FN dqd_d
#define DQD_BUF dbuf
#define DQD_BUF4 dbuf4
#define DQD_TYPE WTYPE
#include "qg_dqdot.glsl"
/* qg_dequant.glsl for qg_unit_elems (its dq_d goes unused) */
#define DQ_FN dq_d
#define DQ_BUF dbuf
#define DQ_BUF4 dbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#include "qg_rows.glsl"

void main() {
    const uint G = qg_rows_G(), NR = G * RPT, g = qg_rows_g(), lane = qg_rows_lane();
    const uint lanes = qg_rows_lanes();
    const uint r0 = (gl_WorkGroupID.y * pc.gx + gl_WorkGroupID.x) * NR;
    if (gl_WorkGroupID.z >= uint(N_TOK) || r0 >= pc.m) return;
    const uint nu = pc.n / 32u, K = pc.k;
    bool bad = false;
    for (uint kk = 0u; kk < K; kk++) {
        const int e = ids[kk];
        bad = bad || e < 0 || uint(e) >= pc.n_expert;
    }
    uint rk[RPT_MAX]; /* the group's rows (rows past m repeat the last) */
    [[unroll]] for (uint k = 0u; k < RPT_MAX; k++) rk[k] = min(r0 + g + k * G, pc.m - 1u);

    float acc[QG_ROWS_ACC];
    for (uint i = 0u; i < QG_ROWS_ACC; i++) acc[i] = 0.0;
    const uint n_it = K * nu;
    /* item it's expert base row (eb; invalid id: ~0u) and raw bytes of
     * each row; PF: also the next item's */
    uint eb = ~0u, ebn = ~0u;
    uvec4 q[RPT_MAX][4], qn[RPT_MAX][4];
    for (uint it = lane; it < n_it; it += lanes) {
        if (PF == 0u || it == lane) {
            const int e = ids[it / nu];
            eb = e < 0 || uint(e) >= pc.n_expert ? ~0u : uint(e) * pc.m; /* bad: NaN below */
            if (eb != ~0u)
                [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
                    if (k < RPT) ld_d((eb + rk[k]) * pc.rb, it % nu, q[k]);
        }
        const bool more = PF != 0u && it + lanes < n_it;
        if (more) {
            const uint itn = it + lanes;
            const int e = ids[itn / nu];
            ebn = e < 0 || uint(e) >= pc.n_expert ? ~0u : uint(e) * pc.m;
            if (ebn != ~0u)
                [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
                    if (k < RPT) ld_d((ebn + rk[k]) * pc.rb, itn % nu, qn[k]);
        }
        if (eb != ~0u) {
            const uint kk = it / nu, u = it - kk * nu;
            uint e0, e1;
            qg_unit_elems(WTYPE, u, e0, e1);
            const uint a = (kk * pc.n + e0) >> 2, b = (kk * pc.n + e1) >> 2;
            vec4 xv[8];
            for (uint i = 0u; i < 4u; i++) {
                xv[i] = h4[a + i];
                xv[4u + i] = h4[b + i];
            }
            const vec2 xs = qg_xsums(xv);
            const float wk = wts[kk];
            [[unroll]] for (uint k = 0u; k < RPT_MAX; k++)
                if (k < RPT) acc[k] += wk * dot_d((eb + rk[k]) * pc.rb, u, q[k], xv, xs);
        }
        if (more) {
            eb = ebn;
            q = qn;
        }
    }
    qg_rows_reduce(acc, RPT);
    uint j, gg;
    if (qg_rows_slot(RPT, j, gg)) {
        const uint r = r0 + gg + j * G;
        if (r < pc.m) {
            const float v = bad ? uintBitsToFloat(0x7fc00000u) : qg_rows_sum(acc, j, gg);
            y[r] = RESID != 0u ? res[r] + v : v;
        }
    }
}
