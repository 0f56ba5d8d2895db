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
 *   - Division, sqrt, exp and every conversion to or from f16 go through
 *     qg_numerics.glsl (correctly rounded, or with a stated bound), never
 *     the implementation-defined built-ins, so the results do not depend
 *     on the driver's approximations.
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

#include "qg_numerics.glsl"

/* silu(x) = x / (1 + exp(-x)), the CPU's expression; division correctly
 * rounded, exp within 2 ulp (qg_numerics.glsl). */
float qg_silu(float x) { return qg_div_rn(x, 1.0 + qg_exp(-x)); }
