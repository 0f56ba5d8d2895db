#version 450
/* gemm_moe.comp - see qg_gemm.glsl (SWIGLU 0, GROUPED 1) */
#define SWIGLU 0
#define GROUPED 1
#include "qg_gemm.glsl"
