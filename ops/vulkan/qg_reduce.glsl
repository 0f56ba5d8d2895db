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

/*
 * Sum each of acc[0..n) over the workgroup (n <= QG_RED_N) and leave
 * sum i in qg_redn[i] for every invocation to read; the caller must
 * barrier() before the next call.
 */
#define QG_RED_N 16
shared float qg_redn[QG_RED_N * (QG_WG_MAX / 4)];
void wg_sum_n(inout float acc[QG_RED_N], uint n) {
#if QG_SUBGROUP
    const uint ns = gl_NumSubgroups;
    for (uint i = 0u; i < n; i++) {
        float v = subgroupAdd(acc[i]);
        if (subgroupElect()) qg_redn[i * ns + gl_SubgroupID] = v;
    }
    barrier();
    uint l = gl_LocalInvocationIndex;
    float s = 0.0;
    if (l < n)
        for (uint j = 0u; j < ns; j++) s += qg_redn[l * ns + j];
    barrier();
    if (l < n) qg_redn[l] = s;
    barrier();
#else
    uint l = gl_LocalInvocationIndex;
    for (uint i = 0u; i < n; i++) {
        qg_red[l] = acc[i];
        barrier();
        for (uint s = WG / 2u; s > 0u; s >>= 1u) {
            if (l < s) qg_red[l] += qg_red[l + s];
            barrier();
        }
        if (l == 0u) qg_redn[i] = qg_red[0];
        barrier();
    }
#endif
}
