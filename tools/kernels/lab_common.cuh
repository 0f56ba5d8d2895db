/*
 * tools/kernels/lab_common.cuh - what the kernel labs (tools/kernels/,
 * one .cu program each) share: CUDA calls checked at file:line (CK), the
 * labs' random stream, random but valid quantized blocks, the device probe,
 * CUDA Graph replay timing and the float64 dot product the checks compare
 * with.
 *
 * Include it first: it makes C11's _Noreturn spell as C++ before any C
 * header of the project is seen.  Header-only (static functions), one copy
 * per lab program.
 */
#ifndef QG_LAB_COMMON_CUH
#define QG_LAB_COMMON_CUH

#if defined(__cplusplus) && !defined(_Noreturn)
#define _Noreturn [[noreturn]]
#endif

extern "C" {
#include "../../graph/qg_base.h"
#include "../../ops/quant/qg_quant.h"
}

#include <cuda_runtime.h>

#include <algorithm>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

/* Run a CUDA call; on failure print file:line, the call and the error and
 * exit (a lab has nothing to clean up). */
#define CK(call)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                 \
                    cudaGetErrorString(e_));                                              \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

/* The splitmix64 output function: a well-mixed 64-bit word from z. */
static inline uint64_t lab_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A lab's random stream (splitmix64); a lab seeds one and draws every
 * random input from it in program order, so a run is reproducible. */
struct lab_rng {
    uint64_t s;
};

/* The next 64 random bits of r. */
static inline uint64_t lab_rnd(lab_rng *r) { return lab_mix(r->s += 0x9e3779b97f4a7c15ull); }

/* A value in [-1, 1] in steps of 1/1000 (exact decimal inputs). */
static inline float lab_rndf(lab_rng *r) { return (float)((int64_t)(lab_rnd(r) % 2001) - 1000) / 1000.0f; }

/* A value uniform in [lo, hi) from the top 24 bits of the next word. */
static inline float lab_unif(lab_rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((lab_rnd(r) >> 40) * (1.0 / 16777216.0));
}

/* Store the f16 super-scales of one 256-element block blk of type t: Q4_K
 * d and dmin (bytes 0..3), Q6_K d (bytes 208..209); other types untouched. */
static inline void lab_block_scales(qg_dtype t, uint8_t *blk, uint16_t d, uint16_t dmin) {
    if (t == QG_Q4_K) {
        memcpy(blk, &d, 2);
        memcpy(blk + 2, &dmin, 2);
    } else if (t == QG_Q6_K) {
        memcpy(blk + 208, &d, 2);
    }
}

/* Random but valid blocks of type t for rows x n (p: rows rows of
 * qg_dtype_row_bytes(t, n) bytes): random payload bits, small positive f16
 * super-scales (d in [1e-3, 2e-3), dmin in [5e-3, 1e-2)). */
static inline void lab_fill_blocks(lab_rng *rng, qg_dtype t, uint8_t *p, int64_t rows, int64_t n) {
    const size_t rb = qg_dtype_row_bytes(t, n);
    for (size_t i = 0; i < rb * (size_t)rows; i += 8) {
        uint64_t v = lab_rnd(rng);
        memcpy(p + i, &v, QG_MIN((size_t)8, rb * (size_t)rows - i));
    }
    const int bs = qg_dtype_get((uint32_t)t)->type_size;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < n / 256; b++) {
            const uint16_t d = qg_f32_to_f16(1e-3f * (1.0f + (lab_rnd(rng) % 1000) / 1000.0f));
            const uint16_t m = qg_f32_to_f16(5e-3f * (1.0f + (lab_rnd(rng) % 1000) / 1000.0f));
            lab_block_scales(t, p + r * rb + b * bs, d, m);
        }
}

/* Device 0's properties into *prop; false (after printing "no CUDA device:
 * nothing to measure") where there is no device, which a lab reports as
 * success: a machine without a GPU has nothing to measure. */
static inline bool lab_device(cudaDeviceProp *prop) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: nothing to measure\n");
        return false;
    }
    CK(cudaGetDeviceProperties(prop, 0));
    return true;
}

/* Time `copies` calls enqueue(i, stream) -> cudaError_t, i = 0..copies-1,
 * captured as one CUDA Graph on a fresh stream (launch gaps as in the
 * executor's replayed graphs): one warm-up replay, then `reps` replays.
 * Returns microseconds per call: the median replay, each replay timed
 * alone, if `median`; else the mean over the reps replays run back to back
 * between two events. */
template <class F> static double lab_graph_us(int copies, int reps, bool median, F enqueue) {
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t gr;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < copies; i++) CK(enqueue(i, st));
    CK(cudaStreamEndCapture(st, &gr));
    CK(cudaGraphInstantiate(&ge, gr, 0));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double us;
    if (median) {
        std::vector<float> t(reps);
        for (int r = 0; r < reps; r++) {
            CK(cudaEventRecord(e0, st));
            CK(cudaGraphLaunch(ge, st));
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&t[r], e0, e1));
        }
        std::sort(t.begin(), t.end());
        us = t[reps / 2] * 1e3 / copies;
    } else {
        CK(cudaEventRecord(e0, st));
        for (int r = 0; r < reps; r++) CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        us = ms * 1e3 / ((double)reps * copies);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(gr);
    cudaStreamDestroy(st);
    return us;
}

/* sum_i w[i] x[i] in float64 over n elements; *abs_sum = sum_i |w[i] x[i]|
 * (the scale of the checks' tolerances). */
static inline double lab_dot_f64(const double *w, const float *x, int n, double *abs_sum) {
    double s = 0, a = 0;
    for (int i = 0; i < n; i++) {
        s += w[i] * x[i];
        a += fabs(w[i] * x[i]);
    }
    *abs_sum = a;
    return s;
}

#endif
