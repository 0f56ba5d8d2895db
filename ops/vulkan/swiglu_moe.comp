#version 450
/* swiglu_moe.comp - experts' gate/up over assignments grouped by expert;
 * see qg_swiglu.glsl (GROUPED 1) */
#define GROUPED 1
#include "qg_swiglu.glsl"
