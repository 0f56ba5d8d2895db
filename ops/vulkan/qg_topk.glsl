/*
 * qg_topk.glsl - the expert choice of one token, shared by topk.comp (one
 * workgroup of 64 per token) and the router matmul that folds it in
 * (matmul.comp with TOPK = 1: the router's last workgroup, 128
 * invocations), so the two give the same bits:
 *   p = softmax(logits) over the X experts (f32: max subtracted, exp, then
 *   multiplied by 1 / sum), the K largest p (ties: lower id first, as the
 *   CPU), their weights divided by their sum (summed in k order).
 * Every value is computed in ONE fixed order whatever the workgroup or
 * subgroup size:
 *   slot v (v < 64) owns experts v, v + 64, ... (X <= 512: 8 per slot);
 *   invocations past slot 63 own nothing;
 *   max                  exact in any order (a max is one of its inputs);
 *   slot partial v       = p[v] + p[v + 64] + ... left to right;
 *   group q (q < 8)      = partial 8q + ... + partial 8q+7;
 *   sum                  = group 0 + ... + group 7;
 *   each round's argmax  the largest p, then the lowest id: a unique
 *                        answer, so the subgroup max/min and the
 *                        shared-memory tree agree;
 *   all `precise`, so nothing is contracted.
 * No subgroup arithmetic touches a sum (its order is the implementation's).
 *
 * Include after qg_common.glsl, with declared (any qualifiers, readable or
 * writable as used): float qg_tk_lg[] (logits), int qg_tk_ids[] and
 * float qg_tk_wts[] (the choice).  Workgroups of at least 64 invocations;
 * with subgroups, at most 64 subgroups.  Every invocation of the workgroup
 * must call qg_topk (it has barriers).
 */
#define QG_TOPK_SLOTS 64u
#define QG_TOPK_PER 8u   /* experts per slot: X <= 512 */

shared float qg_tk_part[QG_TOPK_SLOTS];
shared float qg_tk_grp[8];
shared float qg_tk_v[2u * QG_TOPK_SLOTS]; /* argmax candidates, two halves */
shared uint qg_tk_e[2u * QG_TOPK_SLOTS];
shared float qg_tk_w[64];                 /* the K chosen p, K <= 64 */

/* Softmax and top-k of logits qg_tk_lg[lo .. lo + X); writes ids and
 * weights to qg_tk_ids / qg_tk_wts[oo .. oo + K).  X <= 512, K <= 64,
 * K <= X. */
void qg_topk(uint lo, uint X, uint K, uint oo) {
    const uint l = gl_LocalInvocationIndex;
    const bool own = l < QG_TOPK_SLOTS;
    precise float p[QG_TOPK_PER];
    float mx = -1.0 / 0.0;
    for (uint u = 0u; u < QG_TOPK_PER; u++) {
        const uint e = l + u * QG_TOPK_SLOTS;
        p[u] = own && e < X ? qg_tk_lg[lo + e] : 0.0;
        if (own && e < X) mx = max(mx, p[u]);
    }
    if (own) qg_tk_part[l] = mx;
    barrier();
    mx = qg_tk_part[0];
    for (uint i = 1u; i < QG_TOPK_SLOTS; i++) mx = max(mx, qg_tk_part[i]);
    barrier();
    precise float s = 0.0;
    for (uint u = 0u; u < QG_TOPK_PER; u++) {
        const bool ok = own && l + u * QG_TOPK_SLOTS < X;
        p[u] = ok ? exp(p[u] - mx) : -1.0;
        if (ok) s += p[u];
    }
    if (own) qg_tk_part[l] = s;
    barrier();
    if (l < 8u) {
        precise float gs = qg_tk_part[8u * l];
        for (uint i = 1u; i < 8u; i++) gs += qg_tk_part[8u * l + i];
        qg_tk_grp[l] = gs;
    }
    barrier();
    precise float sum = qg_tk_grp[0];
    for (uint q = 1u; q < 8u; q++) sum += qg_tk_grp[q];
    precise float inv = 1.0 / sum;
    for (uint u = 0u; u < QG_TOPK_PER; u++)
        if (own && l + u * QG_TOPK_SLOTS < X) p[u] *= inv;
    /* taken or absent experts hold -1 */
    precise float wsum = 0.0;
    for (uint kk = 0u; kk < K; kk++) {
        float bv = -1.0;
        uint be = 0xffffffffu;
        for (uint u = 0u; u < QG_TOPK_PER; u++)
            if (own && p[u] > bv) {
                bv = p[u];
                be = l + u * QG_TOPK_SLOTS;
            }
#if QG_SUBGROUP
        /* the subgroup's best (largest p, then lowest id), then the best
         * of the subgroups' */
        const float sv = subgroupMax(bv);
        const uint se = subgroupMin(bv == sv ? be : 0xffffffffu);
        const uint buf = (kk & 1u) * QG_TOPK_SLOTS; /* alternate halves: one barrier a round */
        if (subgroupElect()) {
            qg_tk_v[buf + gl_SubgroupID] = sv;
            qg_tk_e[buf + gl_SubgroupID] = se;
        }
        barrier();
        float v = qg_tk_v[buf];
        uint e = qg_tk_e[buf];
        for (uint i = 1u; i < gl_NumSubgroups; i++) {
            const float v2 = qg_tk_v[buf + i];
            const uint e2 = qg_tk_e[buf + i];
            if (v2 > v || (v2 == v && e2 < e)) {
                v = v2;
                e = e2;
            }
        }
#else
        if (own) {
            qg_tk_v[l] = bv;
            qg_tk_e[l] = be;
        }
        barrier();
        for (uint st = QG_TOPK_SLOTS / 2u; st > 0u; st >>= 1u) {
            if (l < st) {
                const float v2 = qg_tk_v[l + st];
                const uint e2 = qg_tk_e[l + st];
                if (v2 > qg_tk_v[l] || (v2 == qg_tk_v[l] && e2 < qg_tk_e[l])) {
                    qg_tk_v[l] = v2;
                    qg_tk_e[l] = e2;
                }
            }
            barrier();
        }
        const float v = qg_tk_v[0];
        const uint e = qg_tk_e[0];
        barrier();
#endif
        if (own && e % QG_TOPK_SLOTS == l) {
            for (uint u = 0u; u < QG_TOPK_PER; u++)
                if (u == e / QG_TOPK_SLOTS) p[u] = -1.0;
        }
        if (l == 0u) {
            qg_tk_ids[oo + kk] = int(e);
            qg_tk_w[kk] = v;
            wsum += v;
        }
    }
    if (l == 0u)
        for (uint kk = 0u; kk < K; kk++) qg_tk_wts[oo + kk] = qg_tk_w[kk] / wsum;
}
