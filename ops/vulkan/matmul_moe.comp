#version 450
/* matmul_moe.comp - experts' down projections over assignments grouped by
 * expert; see qg_matmul.glsl (GROUPED 1) */
#define GROUPED 1
#include "qg_matmul.glsl"
