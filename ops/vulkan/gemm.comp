#version 450
/* gemm.comp - see qg_gemm.glsl (SWIGLU 0, GROUPED 0) */
#define SWIGLU 0
#define GROUPED 0
#include "qg_gemm.glsl"
