/*
 * qg_xnorm.glsl - an RMSNorm folded into the prologue of a decode product
 * (matmul.comp with NORM != 0).  The executor drops the rmsnorm node whose
 * only reader is the product and binds the norm's input x and weight nw
 * instead; each workgroup normalizes the one column it reads into shared
 * memory, xn = x * scale * nw, with qg_norm.glsl's scale: the values
 * rmsnorm.comp writes, bit for bit.  The column (n_embd floats) comes from
 * cache once per workgroup, against the rows of weights it streams.
 *
 * Include after qg_norm.glsl, with declared: the specialization constant
 * XN4 (vec4s of the column: n / 4, the shared array's size) and the
 * buffers xn_x4 (x as vec4), xn_xs (x as float), xn_w4 (nw as vec4) and
 * xn_out4 (where a stored column goes, vec4).
 * Every invocation of the workgroup must call qg_xnorm_stage.
 */
shared vec4 qg_xn[XN4];

/* Normalize column x[xo .. xo + n) (xo and n multiples of 4, n <= 4 *
 * XN4) into qg_xn; when store, also write it to xn_out4 (the dropped
 * rmsnorm's output, for its other readers).  Ends with a barrier: qg_xn
 * is ready for every invocation. */
void qg_xnorm_stage(uint xo, uint n, float eps, bool store) {
    QG_NORM_PARTIALS(n, xn_xs[xo + i]);
    const float scale = qg_norm_scale(n, eps);
    for (uint i = gl_LocalInvocationIndex; i < n / 4u; i += gl_WorkGroupSize.x) {
        const vec4 y = xn_x4[xo / 4u + i] * scale * xn_w4[i];
        qg_xn[i] = y;
        if (store) xn_out4[i] = y;
    }
    barrier();
}
