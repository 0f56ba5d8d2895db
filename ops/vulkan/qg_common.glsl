/*
 * qg_common.glsl - included by every ops/vulkan shader.
 *
 * Conventions of the Vulkan executor (exec/vulkan/qg_vk_record.c):
 *   - binding 0 is the executor's step buffer: int step[4] as in
 *     graph/qg_graph.h (step[0] = live tokens this step).  Shaders read the
 *     live token count from it, so a recorded command buffer serves every
 *     step; dispatches are sized for the worst case (n_tok_max) and
 *     workgroups past the live tokens return at once.
 *   - bindings 1.. are the node's tensors, each bound at its own offset;
 *     weights keep their GGUF block format and are read as uint words.
 *   - QG_SUBGROUP (set by the build: 0 or 1) selects subgroup arithmetic
 *     or shared-memory tree reductions; both give the same contract.
 *   - Activations are f32; weights are dequantized exactly (GGML's order)
 *     and multiplied in f32 with f32 accumulation.
 */
#extension GL_EXT_control_flow_attributes : enable
#if QG_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

/* GGML type ids (graph/qg_dtype.h) */
#define QG_F32 0
#define QG_F16 1
#define QG_Q4_0 2
#define QG_Q8_0 8
#define QG_Q4_K 12
#define QG_Q5_K 13
#define QG_Q6_K 14
#define QG_BF16 30

layout(std430, binding = 0) readonly buffer StepBuf { int step[]; };
#define N_TOK (step[0])

/* The largest workgroup any shader uses (bounds the shared arrays). */
#define QG_WG_MAX 256

float qg_silu(float x) { return x / (1.0 + exp(-x)); }

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K
 * super-block, from its header words hd = (d|dmin, scales[0..12)):
 * GGML's get_scale_min_k4. */
uvec2 qg_k4_scale_min(uvec4 hd, uint j) {
    if (j < 4u) return uvec2((hd.y >> (8u * j)) & 63u, (hd.z >> (8u * j)) & 63u);
    const uint b = 8u * (j - 4u);
    return uvec2(((hd.w >> b) & 15u) | (((hd.y >> (b + 6u)) & 3u) << 4),
                 ((hd.w >> (b + 4u)) & 15u) | (((hd.z >> (b + 6u)) & 3u) << 4));
}

/* f32 -> f16 bits, round to nearest even, exactly as qg_f32_to_f16
 * (graph/qg_base.c): Inf/NaN kept, overflow to Inf, subnormals rounded. */
uint qg_f32_to_f16(float f) {
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint e = (x >> 23) & 0xffu;
    uint m = x & 0x7fffffu;
    if (e == 0xffu) return sign | 0x7c00u | (m != 0u ? 0x200u : 0u);
    int ee = int(e) - 127 + 15;
    if (ee >= 31) return sign | 0x7c00u;
    if (ee <= 0) {
        if (ee < -10) return sign;
        m |= 0x800000u;
        uint shift = uint(14 - ee);
        uint h = m >> shift;
        uint rem = m & ((1u << shift) - 1u), half_ = 1u << (shift - 1u);
        if (rem > half_ || (rem == half_ && (h & 1u) != 0u)) h++;
        return sign | h;
    }
    uint h = (uint(ee) << 10) | (m >> 13);
    uint rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) h++;
    return sign | h; /* a carry into the exponent is the right rounding */
}
