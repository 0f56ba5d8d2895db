/*
 * qg_reduce.glsl - workgroup reductions.  Include after qg_common.glsl in a
 * shader whose workgroup is 1-D of size WG (a power of two <= QG_WG_MAX;
 * may be a specialization constant).  Every invocation of the workgroup
 * must call a reduction (uniform control flow); every invocation gets the
 * result.  Subgroup version: subgroup partials in shared memory, summed in
 * subgroup order; fallback: a shared-memory tree.
 */
shared float qg_red[QG_WG_MAX];

float wg_sum(float v) {
#if QG_SUBGROUP
    v = subgroupAdd(v);
    if (subgroupElect()) qg_red[gl_SubgroupID] = v;
    barrier();
    float s = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; i++) s += qg_red[i];
    barrier();
    return s;
#else
    uint l = gl_LocalInvocationIndex;
    qg_red[l] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1u) {
        if (l < s) qg_red[l] += qg_red[l + s];
        barrier();
    }
    float r = qg_red[0];
    barrier();
    return r;
#endif
}

float wg_max(float v) {
#if QG_SUBGROUP
    v = subgroupMax(v);
    if (subgroupElect()) qg_red[gl_SubgroupID] = v;
    barrier();
    float s = qg_red[0];
    for (uint i = 1u; i < gl_NumSubgroups; i++) s = max(s, qg_red[i]);
    barrier();
    return s;
#else
    uint l = gl_LocalInvocationIndex;
    qg_red[l] = v;
    barrier();
    for (uint s = WG / 2u; s > 0u; s >>= 1u) {
        if (l < s) qg_red[l] = max(qg_red[l], qg_red[l + s]);
        barrier();
    }
    float r = qg_red[0];
    barrier();
    return r;
#endif
}
