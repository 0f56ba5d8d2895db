#version 450
/*
 * moe_sort.comp - group a prefill step's expert assignments by expert, for
 * gemm_swiglu_moe.comp and gemm_moe.comp.  One workgroup.
 *
 * ids (K, T): assignment a = t*K + k chose expert ids[a].  Writes
 *   off (X+1): expert e's assignments are asg[off[e] .. off[e+1]);
 *   asg (K*T): assignment ids grouped by expert (order within an expert
 *     is unspecified: every column is computed on its own, so the results
 *     do not depend on it);
 *   tiles: (e, first index in asg) for each block of up to NT assignments
 *     of one expert, in expert order;
 *   ind: two VkDispatchIndirectCommand, (gx0, gy0, tiles) and (gx1, gy1,
 *     tiles), the grids of the gate/up and the down dispatches.
 * Assignments with an id outside [0, X) are left out (moe_combine.comp
 * writes NaN for their token).
 */
#include "qg_common.glsl"

layout(local_size_x = 256) in;

layout(std430, binding = 1) readonly buffer IBuf { int ids[]; };   /* (K, T) */
layout(std430, binding = 2) writeonly buffer OffBuf { uint off[]; };
layout(std430, binding = 3) writeonly buffer AsgBuf { uint asg[]; };
layout(std430, binding = 4) writeonly buffer TileBuf { uvec2 tiles[]; };
layout(std430, binding = 5) writeonly buffer IndBuf { uint ind[]; };

layout(push_constant) uniform PC {
    uint k, x, nt;
    uint gx0, gy0, gx1, gy1;
} pc;

shared uint cnt[512], cur[512];

void main() {
    const uint l = gl_LocalInvocationIndex, n = uint(N_TOK) * pc.k;
    for (uint e = l; e < pc.x; e += 256u) cnt[e] = 0u;
    barrier();
    for (uint i = l; i < n; i += 256u) {
        const int e = ids[i];
        if (e >= 0 && uint(e) < pc.x) atomicAdd(cnt[e], 1u);
    }
    barrier();
    if (l == 0u) {
        uint s = 0u, nt = 0u;
        for (uint e = 0u; e < pc.x; e++) {
            off[e] = s;
            cur[e] = s;
            for (uint j = 0u; j < cnt[e]; j += pc.nt) tiles[nt++] = uvec2(e, s + j);
            s += cnt[e];
        }
        off[pc.x] = s;
        ind[0] = pc.gx0;
        ind[1] = pc.gy0;
        ind[2] = nt;
        ind[3] = pc.gx1;
        ind[4] = pc.gy1;
        ind[5] = nt;
    }
    barrier();
    for (uint i = l; i < n; i += 256u) {
        const int e = ids[i];
        if (e >= 0 && uint(e) < pc.x) asg[atomicAdd(cur[e], 1u)] = i;
    }
}
