#version 450
/* gemm_moe_cm.comp - see qg_gemm_cm.glsl (SWIGLU 0, GROUPED 1) */
#define SWIGLU 0
#define GROUPED 1
#include "qg_gemm_cm.glsl"
