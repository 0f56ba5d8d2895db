/*
 * qg_rope.h - the rotary-embedding angle table every executor uses, so
 * that RoPE is bit-identical across them: cos and sin of pos * base^(-2i/hd)
 * in float64, rounded to f32 once (see ops/cpu/op_rope.c for why float64).
 */
#ifndef QG_ROPE_H
#define QG_ROPE_H

#include <stdint.h>

/* cs[0..hd/2): cos, cs[hd/2..hd): sin of the angles at position pos.  The
 * frequencies base^(-2i/hd) come from repeated multiplication in double
 * (relative error ~ i * 2^-53, far below the f32 rounding of the result). */
void qg_rope_cos_sin(float *cs, int hd, int32_t pos, double base);

#endif
