/*
 * qg_norm.glsl - the RMSNorm scale 1 / sqrt(sum(x^2) / n + eps) of one
 * column, summed in ONE fixed order by every shader that computes it
 * (rmsnorm.comp, add_rmsnorm.comp, and the products that fold an rmsnorm
 * into their prologue, qg_xnorm.glsl), whatever the workgroup size or the
 * subgroup size:
 *   partial v (v < QG_NORM_V)  = x[v]^2 + x[v + V]^2 + x[v + 2V]^2 + ...
 *   group q (q < QG_NORM_G)    = partial qP + partial qP+1 + ... (P = V / G)
 *   sum                        = group 0 + group 1 + ... + group G-1
 * each left to right, with no contractions (`precise`: no fused
 * multiply-adds), then scale = 1.0 / sqrt(sum / float(n) + eps).  No
 * subgroup arithmetic takes part (its order is the implementation's), so
 * a folded norm is bit-identical to the rmsnorm dispatch it replaces.
 *
 * Include after qg_common.glsl.  Use:
 *   QG_NORM_PARTIALS(n, ELEM)   every invocation; ELEM is an expression of
 *                               the element index i (a float);
 *   scale = qg_norm_scale(n, eps);   every invocation (uniform control
 *                               flow: it has barriers); all get the scale.
 * Workgroups of any size (gl_WorkGroupSize.x) work; with fewer than
 * QG_NORM_V invocations each takes several partials.
 */
#define QG_NORM_V 128u /* partials: lanes of the first pass */
#define QG_NORM_G 8u   /* groups of QG_NORM_V / QG_NORM_G partials */

shared float qg_norm_part[QG_NORM_V];
shared float qg_norm_grp[QG_NORM_G];

/* Partial v of every v this invocation owns, into qg_norm_part. */
#define QG_NORM_PARTIALS(n_, ELEM)                                                      \
    for (uint qg_v = gl_LocalInvocationIndex; qg_v < QG_NORM_V;                         \
         qg_v += gl_WorkGroupSize.x) {                                                  \
        precise float qg_s = 0.0;                                                       \
        for (uint i = qg_v; i < (n_); i += QG_NORM_V) {                                 \
            const float qg_e = (ELEM);                                                  \
            qg_s += qg_e * qg_e;                                                        \
        }                                                                               \
        qg_norm_part[qg_v] = qg_s;                                                      \
    }

/* The scale from the partials QG_NORM_PARTIALS stored.  Ends with a
 * barrier, so the shared arrays may be reused right after. */
float qg_norm_scale(uint n, float eps) {
    const uint l = gl_LocalInvocationIndex, P = QG_NORM_V / QG_NORM_G;
    barrier();
    for (uint q = l; q < QG_NORM_G; q += gl_WorkGroupSize.x) {
        precise float s = qg_norm_part[q * P];
        for (uint i = 1u; i < P; i++) s += qg_norm_part[q * P + i];
        qg_norm_grp[q] = s;
    }
    barrier();
    precise float s = qg_norm_grp[0];
    for (uint q = 1u; q < QG_NORM_G; q++) s += qg_norm_grp[q];
    precise float scale = 1.0 / sqrt(s / float(n) + eps);
    barrier();
    return scale;
}
