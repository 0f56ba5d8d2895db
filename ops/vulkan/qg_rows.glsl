/*
 * qg_rows.glsl - the work layout shared by the weight-times-activation
 * shaders (matmul, swiglu, aggregate).  Include after qg_common.glsl with
 * WG (<= 128), TPR (a power of two dividing WG) and RPT defined (spec
 * constants).
 *
 * A workgroup of WG invocations owns NR = (WG / TPR) * RPT consecutive
 * rows: invocation l is lane l % TPR of row group g = l / TPR, and that
 * group computes rows g, g + WG/TPR, ... (RPT of them) relative to the
 * workgroup's first row.  Lanes take the row's 32-element units lane,
 * lane + TPR, ... (qg_dequant.glsl lays units out so that consecutive
 * lanes read consecutive bytes).  Each invocation ends with na partial
 * sums; qg_rows_reduce sums them over the TPR lanes of each row group
 * through shared memory, with no assumption on how invocations map to
 * subgroups.
 */
#define QG_ROWS_ACC 16 /* partial sums per invocation, at most */

shared float qg_rows_red[QG_ROWS_ACC * 128];
shared float qg_rows_out[128];

/* Afterwards qg_rows_out[j * (WG / TPR) + g] holds the sum over the lanes
 * of row group g of partial j, for j < na (na <= TPR, so na * WG / TPR <=
 * WG).  Every invocation must call it (two barriers). */
void qg_rows_reduce(float acc[QG_ROWS_ACC], uint na) {
    const uint l = gl_LocalInvocationIndex, G = WG / TPR;
    for (uint j = 0u; j < na; j++) qg_rows_red[j * WG + l] = acc[j];
    barrier();
    if (l < na * G) {
        const uint base = (l / G) * WG + (l % G) * TPR;
        float s = 0.0;
        for (uint i = 0u; i < TPR; i++) s += qg_rows_red[base + i];
        qg_rows_out[l] = s;
    }
    barrier();
}
