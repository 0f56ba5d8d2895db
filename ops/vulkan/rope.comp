#version 450
/* rope.comp - see qg_rope.glsl */
#define APPEND 0
#include "qg_rope.glsl"
