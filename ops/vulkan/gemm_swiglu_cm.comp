#version 450
/* gemm_swiglu_cm.comp - see qg_gemm_cm.glsl (SWIGLU 1, GROUPED 0) */
#define SWIGLU 1
#define GROUPED 0
#include "qg_gemm_cm.glsl"
