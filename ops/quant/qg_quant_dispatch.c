/*
 * qg_quant_dispatch.c - pick the kernels for this CPU.
 *
 * The level is decided on every call from cpuid (__builtin_cpu_supports) and
 * the QG_SIMD environment variable; nothing is cached (no global mutable
 * state).  Callers call qg_quant_kernels_best() once and keep the table.
 */
#include "qg_quant_blocks.h"

#include "../../graph/qg_base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *qg_simd_level_name(qg_simd_level level) {
    switch (level) {
    case QG_SIMD_SCALAR: return "scalar";
    case QG_SIMD_AVX2: return "avx2";
    case QG_SIMD_AVX512: return "avx512";
    }
    return "unknown";
}

/* The highest level the CPU can run. */
static qg_simd_level cpu_level(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return QG_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return QG_SIMD_AVX2;
#endif
    return QG_SIMD_SCALAR;
}

qg_quant_kernels qg_quant_kernels_at(qg_simd_level level) {
    const qg_simd_level have = cpu_level();
    if (level > have) level = have;
    qg_quant_kernels k;
    switch (level) {
    case QG_SIMD_AVX512:
        k = (qg_quant_kernels){QG_SIMD_AVX512, qg_quant_dot_avx512, qg_quant_gemm_avx512,
                                qg_quant_gemm_cols_avx512};
        break;
    case QG_SIMD_AVX2:
        k = (qg_quant_kernels){QG_SIMD_AVX2, qg_quant_dot_avx2, qg_quant_gemm_avx2,
                                qg_quant_gemm_cols_avx2};
        break;
    default:
        k = (qg_quant_kernels){QG_SIMD_SCALAR, qg_quant_dot_scalar, qg_quant_gemm_scalar,
                                qg_quant_gemm_cols_scalar};
        break;
    }
    return k;
}

qg_quant_kernels qg_quant_kernels_best(void) {
    const char *env = getenv("QG_SIMD");
    if (env && *env) {
        if (strcmp(env, "scalar") == 0) return qg_quant_kernels_at(QG_SIMD_SCALAR);
        if (strcmp(env, "avx2") == 0) return qg_quant_kernels_at(QG_SIMD_AVX2);
        if (strcmp(env, "avx512") == 0) return qg_quant_kernels_at(QG_SIMD_AVX512);
        /* An unknown value is a user error with a harmless fallback: say
         * so once per call and use the best level. */
        fprintf(stderr, "qmoe-graph: QG_SIMD=%s unknown (scalar|avx2|avx512); using best\n", env);
    }
    return qg_quant_kernels_at(QG_SIMD_AVX512);
}

size_t qg_quant_gemm_scratch_floats(int64_t n, int n_rows) {
    QG_ASSERT(n >= 0 && n_rows >= 0);
    const int nr = QG_MIN(n_rows, QG_QUANT_GEMM_ROWS);
    /* nr dequantized rows plus one 64-byte line of slack per row. */
    return (size_t)nr * ((size_t)n + 16);
}
