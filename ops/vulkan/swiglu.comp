#version 450
/* swiglu.comp - dense FFN and expert_swiglu; see qg_swiglu.glsl (GROUPED 0) */
#define GROUPED 0
#include "qg_swiglu.glsl"
