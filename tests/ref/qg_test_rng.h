/*
 * qg_test_rng.h - the tests' random numbers: splitmix64, one stream per
 * state, reproducible from its seed.
 *
 *   qg_test_rng r = {seed};
 *   float x = qg_test_rng_unif(&r, -1, 1);
 *
 * Shared by the op harness (qg_optest.h), the end-to-end harness
 * (qg_e2e.h) and any test that wants fresh inputs it can replay.
 */
#ifndef QG_TEST_RNG_H
#define QG_TEST_RNG_H

#include <stdint.h>

typedef struct qg_test_rng {
    uint64_t s; /* the whole state; any value is a valid seed */
} qg_test_rng;

/* The next 64 random bits (splitmix64). */
uint64_t qg_test_rng_u64(qg_test_rng *r);

/* Uniform in [lo, hi) with 24 random bits. */
float qg_test_rng_unif(qg_test_rng *r, float lo, float hi);

/* Uniform in [0, n), n > 0 (modulo bias below 2^-32 for test sizes). */
int qg_test_rng_int(qg_test_rng *r, int n);

#endif
