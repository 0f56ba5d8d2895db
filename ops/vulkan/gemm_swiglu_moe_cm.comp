#version 450
/* gemm_swiglu_moe_cm.comp - see qg_gemm_cm.glsl (SWIGLU 1, GROUPED 1) */
#define SWIGLU 1
#define GROUPED 1
#include "qg_gemm_cm.glsl"
