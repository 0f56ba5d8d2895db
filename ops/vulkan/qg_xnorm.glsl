/*
 * qg_xnorm.glsl - an RMSNorm folded into the prologue of a weight shader
 * (matmul.comp, swiglu.comp with NORM = 1): the executor drops the rmsnorm
 * node whose only reader is the product and binds the norm's input and
 * weight instead; each workgroup normalizes the column it needs into
 * shared memory, xn = x * scale * w, with the scale of qg_norm_scale
 * (the values of rmsnorm.comp, bit for bit, for WG = 128).  Cheap: the
 * column (n_embd floats) is read once per workgroup from cache, against
 * the NR weight rows the workgroup streams.
 *
 * Include after qg_reduce.glsl, with declared: WG, NORM, XN4 (the column's
 * vec4 count, the shared array's size), the buffers xs (raw x, f32) and
 * nw (norm weight).  Every invocation of the workgroup must call it.
 */
shared vec4 sh_x4[XN4];

void qg_xnorm_stage(uint xo, uint n, float eps) {
    const uint l = gl_LocalInvocationIndex;
    precise float s = 0.0;
    for (uint i = l; i < n; i += WG) {
        const float v = xs[xo + i];
        sh_x4[i >> 2][i & 3u] = v;
        s += v * v;
    }
    const float scale = qg_norm_scale(s, n, eps); /* its barriers publish nothing yet */
    for (uint i = l; i < n; i += WG) sh_x4[i >> 2][i & 3u] = sh_x4[i >> 2][i & 3u] * scale * nw[i];
    barrier();
}
