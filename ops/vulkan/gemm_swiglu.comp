#version 450
/* gemm_swiglu.comp - see qg_gemm.glsl (SWIGLU 1, GROUPED 0) */
#define SWIGLU 1
#define GROUPED 0
#include "qg_gemm.glsl"
