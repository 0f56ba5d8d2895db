#version 450
/* gemm_swiglu_moe.comp - see qg_gemm.glsl (SWIGLU 1, GROUPED 1) */
#define SWIGLU 1
#define GROUPED 1
#include "qg_gemm.glsl"
