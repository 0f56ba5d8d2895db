/*
 * qg_vk_spirv.h - the SPIR-V of the Vulkan shaders, embedded in the
 * library.
 *
 * cmake/vulkan.cmake compiles every ops/vulkan/<name>.comp with glslc at
 * build time, once with QG_SUBGROUP=0 (shared-memory reductions, any
 * Vulkan 1.1 device) and once with QG_SUBGROUP=1 (subgroup arithmetic),
 * and generates the table below (<build>/vulkan-spirv/qg_vk_spirv.c).
 */
#ifndef QG_VK_SPIRV_H
#define QG_VK_SPIRV_H

#include <stddef.h>
#include <stdint.h>

typedef struct qg_vk_spirv {
    const char *name;          /* file name without .comp: "matmul" */
    const uint32_t *code[2];   /* [0]: QG_SUBGROUP=0, [1]: QG_SUBGROUP=1 */
    size_t bytes[2];
} qg_vk_spirv;

/* The table, sorted by name; *n receives its length. */
const qg_vk_spirv *qg_vk_spirv_table(int *n);

#endif
