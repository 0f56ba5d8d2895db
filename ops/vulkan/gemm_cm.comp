#version 450
/* gemm_cm.comp - see qg_gemm_cm.glsl (SWIGLU 0, GROUPED 0) */
#define SWIGLU 0
#define GROUPED 0
#include "qg_gemm_cm.glsl"
