/*
 * qg_topk.glsl - the expert choice of one token, computed by a whole
 * workgroup: p = softmax(logits) over the X experts (f32: the max
 * subtracted, exp of qg_numerics.glsl, the sum, then each p multiplied by
 * the correctly rounded 1/sum), the K largest p (ties: lower id first, as
 * the CPU), their weights divided by their sum (summed in choice order, as
 * the CPU; correctly rounded divisions).  The results do not depend on the
 * workgroup or subgroup size: the sum of the p is a fixed pairwise tree
 * over a power-of-two padding of the X values, and maxima are exact in
 * any order.  So topk.comp (its own dispatch) and the expert swiglu that
 * routes for itself (swiglu.comp, TOPK = 1) choose identically.
 *
 * Include after qg_reduce.glsl with WG declared and a macro QG_TK_LOGIT(i)
 * reading logit i of the bound logits.  X <= 512, K <= 64.  Every
 * invocation must call qg_topk_wg (uniform control flow); afterwards every
 * invocation may read qg_tk_id[0..K) and qg_tk_w[0..K).  Shared memory:
 * 6 KiB.
 */
#define QG_TK_XMAX 512u
shared float qg_tk_p[QG_TK_XMAX];  /* probabilities; -1: taken */
shared float qg_tk_s[QG_TK_XMAX];  /* the sum's tree */
shared float qg_tk_bv[QG_WG_MAX / 2u];
shared uint qg_tk_be[QG_WG_MAX / 2u];
shared int qg_tk_id[64];
shared float qg_tk_w[64];

/* The largest (v, then lowest e) over the workgroup; every invocation
 * gets it.  Uses qg_tk_bv/be[0 .. WG/2): any reduction shape gives the
 * same answer. */
void qg_tk_argmax(inout float v, inout uint e) {
    const uint l = gl_LocalInvocationIndex;
#if QG_SUBGROUP
    const float sv = subgroupMax(v);
    const uint se = subgroupMin(v == sv ? e : 0xffffffffu);
    if (subgroupElect()) {
        qg_tk_bv[gl_SubgroupID] = sv;
        qg_tk_be[gl_SubgroupID] = se;
    }
    barrier();
    v = qg_tk_bv[0];
    e = qg_tk_be[0];
    for (uint i = 1u; i < gl_NumSubgroups; i++) {
        const float v2 = qg_tk_bv[i];
        const uint e2 = qg_tk_be[i];
        if (v2 > v || (v2 == v && e2 < e)) {
            v = v2;
            e = e2;
        }
    }
    barrier();
#else
    for (uint s = WG / 2u; s > 0u; s >>= 1u) {
        if (l >= s && l < 2u * s) {
            qg_tk_bv[l - s] = v;
            qg_tk_be[l - s] = e;
        }
        barrier();
        if (l < s) {
            const float v2 = qg_tk_bv[l];
            const uint e2 = qg_tk_be[l];
            if (v2 > v || (v2 == v && e2 < e)) {
                v = v2;
                e = e2;
            }
        }
        barrier();
    }
    if (l == 0u) {
        qg_tk_bv[0] = v;
        qg_tk_be[0] = e;
    }
    barrier();
    v = qg_tk_bv[0];
    e = qg_tk_be[0];
    barrier();
#endif
}

void qg_topk_wg(uint base, uint X, uint K) {
    const uint l = gl_LocalInvocationIndex;
    float mx = -1.0 / 0.0;
    for (uint e = l; e < X; e += WG) mx = max(mx, QG_TK_LOGIT(base + e));
    mx = wg_max(mx);
    uint P = 1u;
    while (P < X) P <<= 1;
    for (uint e = l; e < P; e += WG) {
        const float p = e < X ? qg_exp(QG_TK_LOGIT(base + e) - mx) : 0.0;
        qg_tk_p[e] = p;
        qg_tk_s[e] = p;
    }
    barrier();
    for (uint s = P / 2u; s > 0u; s >>= 1u) {
        for (uint e = l; e < s; e += WG) qg_tk_s[e] = qg_tk_s[e] + qg_tk_s[e + s];
        barrier();
    }
    const float inv = qg_div_rn(1.0, qg_tk_s[0]);
    for (uint e = l; e < X; e += WG) qg_tk_p[e] *= inv; /* own elements only */
    for (uint kk = 0u; kk < K; kk++) {
        float bv = -1.0;
        uint be = 0xffffffffu;
        for (uint e = l; e < X; e += WG) { /* ascending e: the lowest id wins ties */
            const float v = qg_tk_p[e];
            if (v > bv) {
                bv = v;
                be = e;
            }
        }
        qg_tk_argmax(bv, be);
        if (l == 0u) {
            qg_tk_id[kk] = int(be);
            qg_tk_w[kk] = bv;
        }
        if (be % WG == l) qg_tk_p[be] = -1.0; /* its owner: seen by its next scan */
    }
    if (l == 0u) { /* the sum in choice order, then the divisions in parallel */
        float wsum = 0.0;
        for (uint kk = 0u; kk < K; kk++) wsum += qg_tk_w[kk];
        qg_tk_s[0] = wsum;
    }
    barrier();
    for (uint kk = l; kk < K; kk += WG) qg_tk_w[kk] = qg_div_rn(qg_tk_w[kk], qg_tk_s[0]);
    barrier();
}
