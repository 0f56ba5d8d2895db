#version 450
/* attention.comp - see qg_attention.glsl */
#define ROPE 0
#include "qg_attention.glsl"
