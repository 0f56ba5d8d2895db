#version 450
/* rope_kv.comp - rope that also appends k and v to the caches; see
 * qg_rope.glsl */
#define APPEND 1
#include "qg_rope.glsl"
