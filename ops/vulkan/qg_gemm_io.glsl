/*
 * qg_gemm_io.glsl - the interface shared by the tiled prefill products
 * (qg_gemm.glsl: f32 FMA; qg_gemm_cm.glsl: cooperative matrices): their
 * bindings, push constants, dequantization functions, and the mapping of
 * a workgroup's BN columns to columns of x and of the output.
 *
 * The includer defines SWIGLU, GROUPED (0/1) and BN (columns per tile;
 * GROUPED: moe_sort.comp's tile width) before including it.
 *
 *   W / G (n, m) or (n, m, X)  binding 1   weight rows, GGUF blocks
 *   U     (n, m) or (n, m, X)  binding 2   SWIGLU only (else bound to W)
 *   x     (n, T) or (n, K*T)   binding 3   f32 activations
 *   y     (m, cols)            binding 4   f32 output, column-major
 *   asg, off, tiles            5..7        GROUPED: moe_sort's grouping
 */
#include "qg_common.glsl"

layout(constant_id = 1) const int WTYPE = 0; /* W, or G */
layout(constant_id = 2) const int UTYPE = 0; /* U (SWIGLU) */

/* unit layout classes of qg_dequant.glsl: contiguous, Q4_K/Q5_K, Q6_K */
int qg_unit_class(int t) { return t == QG_Q4_K || t == QG_Q5_K ? 1 : t == QG_Q6_K ? 2 : 0; }
#define SAME_UNITS (qg_unit_class(WTYPE) == qg_unit_class(UTYPE))

layout(std430, binding = 1) readonly buffer WBuf { uint wbuf[]; };
layout(std430, binding = 1) readonly buffer WBuf4 { uvec4 wbuf4[]; };
layout(std430, binding = 2) readonly buffer UBuf { uint ubuf[]; };   /* SWIGLU; else unused */
layout(std430, binding = 2) readonly buffer UBuf4 { uvec4 ubuf4[]; };
layout(std430, binding = 3) readonly buffer XBuf { vec4 x4[]; };
layout(std430, binding = 4) writeonly buffer YBuf { float y[]; };
#if GROUPED
layout(std430, binding = 5) readonly buffer AsgBuf { uint asg[]; };
layout(std430, binding = 6) readonly buffer OffBuf { uint off[]; };
layout(std430, binding = 7) readonly buffer TileBuf { uvec2 tiles[]; };
#endif

layout(push_constant) uniform PC {
    uint n;        /* elements per row */
    uint m;        /* rows (per expert) */
    uint rbw, rbu; /* bytes per row of W (G), U */
    uint xdiv;     /* GROUPED: x column = a / xdiv */
} pc;

#define DQ_FN dq_w
#define DQ_BUF wbuf
#define DQ_BUF4 wbuf4
#define DQ_TYPE WTYPE
#include "qg_dequant.glsl"
#undef DQ_FN
#undef DQ_BUF
#undef DQ_BUF4
#undef DQ_TYPE
#define DQ_FN dq_u
#define DQ_BUF ubuf
#define DQ_BUF4 ubuf4
#define DQ_TYPE UTYPE
#include "qg_dequant.glsl"

/* column c of the tile: column sh_xcol[c] of x, sh_ycol[c] of y */
shared uint sh_xcol[BN], sh_ycol[BN];

/* The tile's live columns (0: none, the workgroup has nothing to do) and
 * in *row0 the first row of its weight (the expert's, GROUPED).
 * Invocations 0..BN-1 fill sh_xcol / sh_ycol (dead columns repeat a live
 * one); the caller's barrier publishes them. */
uint qg_gemm_cols(uint l, out uint row0) {
    row0 = 0u;
#if GROUPED
    const uvec2 tile = tiles[gl_WorkGroupID.z];
    const uint nc = min(BN, off[tile.x + 1u] - tile.y);
    row0 = tile.x * pc.m;
    if (l < BN) {
        const uint a = l < nc ? asg[tile.y + l] : asg[tile.y];
        sh_xcol[l] = a / pc.xdiv;
        sh_ycol[l] = a;
    }
#else
    const uint c0 = gl_WorkGroupID.z * BN, n_tok = uint(N_TOK);
    if (c0 >= n_tok) return 0u;
    const uint nc = min(BN, n_tok - c0);
    if (l < BN) {
        sh_xcol[l] = c0 + min(l, nc - 1u);
        sh_ycol[l] = c0 + l;
    }
#endif
    return nc;
}
