#version 450
/* rope_attn.comp - rope, the KV append and attention of one decode token
 * in one dispatch; see qg_attention.glsl */
#define ROPE 1
#include "qg_attention.glsl"
