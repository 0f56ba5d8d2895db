/*
 * qg_rope.c - the rotary-embedding angle table (qg_rope.h).
 */
#include "qg_rope.h"

#include <math.h>

void qg_rope_cos_sin(float *cs, int hd, int32_t pos, double base) {
    const int half = hd / 2;
    const double step = pow(base, -2.0 / hd);
    double freq = 1.0;
    for (int i = 0; i < half; i++, freq *= step) {
        const double theta = (double)pos * freq;
        cs[i] = (float)cos(theta);
        cs[half + i] = (float)sin(theta);
    }
}
