/* qg_test_rng.c - splitmix64 for the tests (see qg_test_rng.h). */
#include "qg_test_rng.h"

uint64_t qg_test_rng_u64(qg_test_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float qg_test_rng_unif(qg_test_rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((qg_test_rng_u64(r) >> 40) * (1.0 / 16777216.0));
}

int qg_test_rng_int(qg_test_rng *r, int n) { return (int)(qg_test_rng_u64(r) % (uint64_t)n); }
