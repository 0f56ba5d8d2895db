/* qg_vk_pipeline.c - shader modules, descriptor set layouts and compute
 * pipelines.
 *
 * Every shader module comes from the SPIR-V that the build embedded
 * (qg_vk_spirv.h), in the subgroup or the shared-memory variant as the
 * device allows.  Descriptor set layouts and pipeline layouts exist per
 * binding count (all bindings are storage buffers; one push-constant
 * range of QG_VK_PUSH_BYTES).  Pipelines are made on first use for each
 * (shader, binding count, specialization constants) and kept until the
 * executor is freed: compile() asks for them, run() never does. */
#include "qg_vk.h"
#include "qg_vk_spirv.h"

#include <stdlib.h>
#include <string.h>

static const char *const SHADER_NAMES[] = {
    [QG_VK_ADD] = "add",
    [QG_VK_ADD_RMSNORM] = "add_rmsnorm",
    [QG_VK_AGGREGATE] = "aggregate",
    [QG_VK_AGGREGATE_MV] = "aggregate_mv",
    [QG_VK_ATTENTION] = "attention",
    [QG_VK_ATTENTION_TILE] = "attention_tile",
    [QG_VK_EMBED] = "embed",
    [QG_VK_GEMM] = "gemm",
    [QG_VK_GEMM_MOE] = "gemm_moe",
    [QG_VK_GEMM_SWIGLU] = "gemm_swiglu",
    [QG_VK_GEMM_SWIGLU_MOE] = "gemm_swiglu_moe",
    [QG_VK_GEMM_CM] = "gemm_cm",
    [QG_VK_GEMM_SWIGLU_CM] = "gemm_swiglu_cm",
    [QG_VK_GEMM_MOE_CM] = "gemm_moe_cm",
    [QG_VK_GEMM_SWIGLU_MOE_CM] = "gemm_swiglu_moe_cm",
    [QG_VK_KV_APPEND] = "kv_append",
    [QG_VK_MATMUL] = "matmul",
    [QG_VK_MATMUL_MV] = "matmul_mv",
    [QG_VK_MOE_COMBINE] = "moe_combine",
    [QG_VK_MOE_SORT] = "moe_sort",
    [QG_VK_RMSNORM] = "rmsnorm",
    [QG_VK_ROPE] = "rope",
    [QG_VK_ROPE_KV] = "rope_kv",
    [QG_VK_SWIGLU] = "swiglu",
    [QG_VK_SWIGLU_MV] = "swiglu_mv",
    [QG_VK_TOPK] = "topk",
};
_Static_assert(QG_ARRAY_LEN(SHADER_NAMES) == QG_VK_SHADER_COUNT, "SHADER_NAMES out of date");

const char *qg_vk_shader_name(qg_vk_shader s) {
    return s >= 0 && s < QG_VK_SHADER_COUNT ? SHADER_NAMES[s] : "?";
}

qg_status qg_vk_pipes_init(qg_vk_dev *d, qg_vk_pipes *p, qg_error *err) {
    memset(p, 0, sizeof *p);
    int n_tab = 0;
    const qg_vk_spirv *tab = qg_vk_spirv_table(&n_tab);
    for (int s = 0; s < QG_VK_SHADER_COUNT; s++) {
        const qg_vk_spirv *sp = NULL;
        for (int i = 0; i < n_tab; i++)
            if (!strcmp(tab[i].name, SHADER_NAMES[s])) sp = &tab[i];
        if (!sp) {
            qg_error_set(err, QG_ERR_BACKEND, "vulkan: shader %s.comp is missing from the build",
                         SHADER_NAMES[s]);
            goto fail;
        }
        /* the cooperative-matrix shaders only where they were enabled, or
         * their emulation (the QG_SUBGROUP=0 build) where it was asked for */
        const bool cm = s >= QG_VK_GEMM_CM && s <= QG_VK_GEMM_SWIGLU_MOE_CM;
        if (cm && !d->coopmat && !d->cm_emulate) continue;
        const int v = cm ? (d->coopmat ? 1 : 0) : d->subgroup ? 1 : 0;
        VkShaderModuleCreateInfo mci = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                        .codeSize = sp->bytes[v], .pCode = sp->code[v]};
        QG_VK_CHECK(vkCreateShaderModule(d->dev, &mci, NULL, &p->module[s]));
    }
    VkDescriptorSetLayoutBinding b[QG_VK_MAX_BIND];
    for (int i = 0; i < QG_VK_MAX_BIND; i++)
        b[i] = (VkDescriptorSetLayoutBinding){.binding = (uint32_t)i,
                                              .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = 1,
                                              .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkPushConstantRange pr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0,
                              .size = QG_VK_PUSH_BYTES};
    for (int n = 1; n <= QG_VK_MAX_BIND; n++) {
        VkDescriptorSetLayoutCreateInfo lci = {
            .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
            .bindingCount = (uint32_t)n, .pBindings = b};
        QG_VK_CHECK(vkCreateDescriptorSetLayout(d->dev, &lci, NULL, &p->dsl[n]));
        VkPipelineLayoutCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                          .setLayoutCount = 1, .pSetLayouts = &p->dsl[n],
                                          .pushConstantRangeCount = 1, .pPushConstantRanges = &pr};
        QG_VK_CHECK(vkCreatePipelineLayout(d->dev, &pci, NULL, &p->layout[n]));
    }
    return QG_OK;
fail:
    qg_vk_pipes_free(d, p);
    return QG_ERR_BACKEND;
}

void qg_vk_pipes_free(qg_vk_dev *d, qg_vk_pipes *p) {
    for (int i = 0; i < p->n; i++) vkDestroyPipeline(d->dev, p->e[i].pipe, NULL);
    free(p->e);
    for (int n = 0; n <= QG_VK_MAX_BIND; n++) {
        if (p->layout[n]) vkDestroyPipelineLayout(d->dev, p->layout[n], NULL);
        if (p->dsl[n]) vkDestroyDescriptorSetLayout(d->dev, p->dsl[n], NULL);
    }
    for (int s = 0; s < QG_VK_SHADER_COUNT; s++)
        if (p->module[s]) vkDestroyShaderModule(d->dev, p->module[s], NULL);
    memset(p, 0, sizeof *p);
}

VkPipeline qg_vk_pipe_get(qg_vk_dev *d, qg_vk_pipes *p, qg_vk_shader shader, int n_bind,
                          const uint32_t *spec, qg_error *err) {
    QG_ASSERT(shader >= 0 && shader < QG_VK_SHADER_COUNT && n_bind >= 1 && n_bind <= QG_VK_MAX_BIND);
    QG_ASSERT(p->module[shader] != VK_NULL_HANDLE);
    for (int i = 0; i < p->n; i++)
        if (p->e[i].shader == shader && p->e[i].n_bind == n_bind &&
            !memcmp(p->e[i].spec, spec, sizeof p->e[i].spec))
            return p->e[i].pipe;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 32;
        qg_vk_pipe_entry *e = realloc(p->e, sizeof *e * (size_t)cap);
        if (!e) {
            qg_error_set(err, QG_ERR_NOMEM, "out of memory");
            return VK_NULL_HANDLE;
        }
        p->e = e;
        p->cap = cap;
    }
    VkSpecializationMapEntry me[QG_VK_MAX_SPEC];
    for (uint32_t i = 0; i < QG_VK_MAX_SPEC; i++)
        me[i] = (VkSpecializationMapEntry){.constantID = i, .offset = 4 * i, .size = 4};
    VkSpecializationInfo si = {.mapEntryCount = QG_VK_MAX_SPEC, .pMapEntries = me,
                               .dataSize = 4 * QG_VK_MAX_SPEC, .pData = spec};
    /* the weight shaders with one row group per subgroup (spec 7) need
     * full subgroups, so that subgroups tile the workgroup exactly */
    const bool sgrows = (shader == QG_VK_MATMUL || shader == QG_VK_SWIGLU ||
                         shader == QG_VK_AGGREGATE || shader == QG_VK_MATMUL_MV ||
                         shader == QG_VK_SWIGLU_MV || shader == QG_VK_AGGREGATE_MV) &&
                        spec[QG_VK_SPEC_SGROWS];
    QG_ASSERT(!sgrows || d->full_subgroups);
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                  .flags = sgrows ? VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT_EXT : 0,
                  .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = p->module[shader],
                  .pName = "main", .pSpecializationInfo = &si},
        .layout = p->layout[n_bind]};
    VkPipeline pipe = VK_NULL_HANDLE;
    QG_VK_CHECK(vkCreateComputePipelines(d->dev, VK_NULL_HANDLE, 1, &ci, NULL, &pipe));
    qg_vk_pipe_entry *e = &p->e[p->n++];
    e->shader = shader;
    e->n_bind = n_bind;
    memcpy(e->spec, spec, sizeof e->spec);
    e->pipe = pipe;
    return pipe;
fail:
    return VK_NULL_HANDLE;
}
