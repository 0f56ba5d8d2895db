#version 450
/* matmul.comp - y = W x; see qg_matmul.glsl (GROUPED 0) */
#define GROUPED 0
#include "qg_matmul.glsl"
