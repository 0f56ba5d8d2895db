/*
 * qg_rows.glsl - the work layout shared by the weight-times-activation
 * shaders (matmul, swiglu, aggregate).  Include after qg_common.glsl with
 * the specialization constants WG (<= 128), TPR (a power of two dividing
 * WG), RPT and SGROWS declared.
 *
 * A workgroup owns NR consecutive rows, split among row groups of lanes;
 * each group computes rows g, g + G, ... (RPT of them, G groups) relative
 * to the workgroup's first row, and its lanes take the row's 32-element
 * units lane, lane + (lanes per group), ... (qg_dequant.glsl lays units
 * out so that consecutive lanes read consecutive bytes).  Two layouts:
 *   SGROWS == 0: groups of TPR consecutive invocations (l / TPR, l % TPR),
 *     G = WG / TPR; partial sums reduced through shared memory, with no
 *     assumption on how invocations map to subgroups;
 *   SGROWS == 1 (QG_SUBGROUP builds, pipelines created with full
 *     subgroups required): one group per subgroup (gl_SubgroupID,
 *     gl_SubgroupInvocationID), G = gl_NumSubgroups; subgroupAdd reduces,
 *     no barrier.  The executor sizes NR with the device's subgroup size.
 * Each invocation ends with na partial sums (partial j of its group);
 * after qg_rows_reduce, the invocations for which qg_rows_slot returns
 * true write the results, reading any partial of their group with
 * qg_rows_sum.
 */
#define QG_ROWS_ACC 16 /* partial sums per invocation, at most */

#if QG_SUBGROUP
#define QG_SGROWS (SGROWS != 0u)
#else
#define QG_SGROWS false
#endif

shared float qg_rows_red[QG_ROWS_ACC * 128];
shared float qg_rows_out[128];

uint qg_rows_G() {
#if QG_SUBGROUP
    if (QG_SGROWS) return gl_NumSubgroups;
#endif
    return WG / TPR;
}
uint qg_rows_g() {
#if QG_SUBGROUP
    if (QG_SGROWS) return gl_SubgroupID;
#endif
    return gl_LocalInvocationIndex / TPR;
}
uint qg_rows_lane() {
#if QG_SUBGROUP
    if (QG_SGROWS) return gl_SubgroupInvocationID;
#endif
    return gl_LocalInvocationIndex % TPR;
}
uint qg_rows_lanes() {
#if QG_SUBGROUP
    if (QG_SGROWS) return gl_SubgroupSize;
#endif
    return TPR;
}

/* Sum the na partials over each group's lanes.  Every invocation must
 * call it. */
void qg_rows_reduce(inout float acc[QG_ROWS_ACC], uint na) {
#if QG_SUBGROUP
    if (QG_SGROWS) {
        for (uint j = 0u; j < QG_ROWS_ACC; j++)
            if (j < na) acc[j] = subgroupAdd(acc[j]);
        return;
    }
#endif
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

/* Is this invocation the writer of a result slot (slots j < nslot of each
 * group)?  If so, *j and *gg say which. */
bool qg_rows_slot(uint nslot, out uint j, out uint gg) {
#if QG_SUBGROUP
    if (QG_SGROWS) {
        j = gl_SubgroupInvocationID;
        gg = gl_SubgroupID;
        return j < nslot;
    }
#endif
    const uint l = gl_LocalInvocationIndex, G = WG / TPR;
    j = l / G;
    gg = l % G;
    return l < nslot * G;
}

/* Partial j of group gg, reduced (gg: the caller's slot group). */
float qg_rows_sum(float acc[QG_ROWS_ACC], uint j, uint gg) {
#if QG_SUBGROUP
    if (QG_SGROWS) {
        float v = 0.0;
        for (uint i = 0u; i < QG_ROWS_ACC; i++)
            if (i == j) v = acc[i];
        return v;
    }
#endif
    return qg_rows_out[j * (WG / TPR) + gg];
}
