/*
 * qg_ropehead.glsl - Qwen3's per-head q/k RMSNorm and NEOX rotation of one
 * head, in ONE fixed order whatever the workgroup or subgroup size: the
 * rope shaders (qg_rope.glsl, 64 invocations) and the decode attention
 * that folds the rope in (attention.comp with ROPE = 1, 128 invocations)
 * compute the same bits.
 *
 * Invocation l < 64 owns the pairs (r, r + hd/2) for r = l and l + 64
 * (r < hd/2; hd <= 256); invocations past 63 own nothing (their x0, x1
 * are 0 and ignored).  The sum of squares:
 *   slot partial l   = x0[0]^2 + x1[0]^2 + x0[1]^2 + x1[1]^2 (owned
 *                      pairs only), left to right;
 *   group q (q < 8)  = partial 8q + ... + partial 8q+7;
 *   sum              = group 0 + ... + group 7;
 * scale = 1 / sqrt(sum / hd + eps); then y = x * scale * w and
 * o0 = y0 c - y1 s, o1 = y0 s + y1 c; all `precise` (no contraction).
 * Include after qg_common.glsl.
 */
#define QG_RH_SLOTS 64u

shared float qg_rh_part[QG_RH_SLOTS];
shared float qg_rh_grp[8];

/* The head's norm scale from this invocation's pairs x0, x1 (see above).
 * Every invocation must call it (barriers); all get the scale.  Ends with
 * a barrier, so it may be called again right away. */
float qg_rope_scale(float x0[2], float x1[2], uint hd, float eps) {
    const uint l = gl_LocalInvocationIndex;
    if (l < QG_RH_SLOTS) {
        precise float s = 0.0;
        for (uint u = 0u; u < 2u; u++)
            if (l + u * QG_RH_SLOTS < hd / 2u) {
                s += x0[u] * x0[u];
                s += x1[u] * x1[u];
            }
        qg_rh_part[l] = s;
    }
    barrier();
    if (l < 8u) {
        precise float g = qg_rh_part[8u * l];
        for (uint i = 1u; i < 8u; i++) g += qg_rh_part[8u * l + i];
        qg_rh_grp[l] = g;
    }
    barrier();
    precise float s = qg_rh_grp[0];
    for (uint q = 1u; q < 8u; q++) s += qg_rh_grp[q];
    precise float scale = 1.0 / sqrt(s / float(hd) + eps);
    barrier();
    return scale;
}

/* One pair: normalized (weights w0, w1), then rotated by (c, sn). */
void qg_rope_pair(float x0, float x1, float scale, float w0, float w1, float c, float sn,
                  out float o0, out float o1) {
    precise float y0 = x0 * scale * w0, y1 = x1 * scale * w1;
    precise float r0 = y0 * c - y1 * sn, r1 = y0 * sn + y1 * c;
    o0 = r0;
    o1 = r1;
}
