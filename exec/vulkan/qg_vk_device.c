/* qg_vk_device.c - the Vulkan instance and device: choice, memory,
 * buffers, transfers through a staging buffer, the validation messenger,
 * and the device list for `info`.
 *
 * Devices are ranked discrete GPU > integrated GPU > virtual GPU > CPU
 * (lavapipe) > other, keeping the loader's order within a rank; devices
 * without Vulkan 1.1 or a compute queue are left out.  The rank list is
 * what --vk-device indexes and what describe() prints. */
#include "qg_vk.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STAGING_BYTES ((VkDeviceSize)64 << 20)
#define MAX_DEVICES 16

const char *qg_vk_result_name(VkResult r) {
    switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FORMAT_NOT_SUPPORTED: return "VK_ERROR_FORMAT_NOT_SUPPORTED";
    case VK_ERROR_FRAGMENTED_POOL: return "VK_ERROR_FRAGMENTED_POOL";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default: return "VkResult (unknown)";
    }
}

static const char *type_name(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete GPU";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated GPU";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual GPU";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
    }
}

static int type_rank(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 3;
    default: return 4;
    }
}

/* Index of a queue family with compute, preferring compute without
 * graphics; -1 if none. */
static int compute_family(VkPhysicalDevice pd) {
    uint32_t n = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, NULL);
    VkQueueFamilyProperties q[32];
    if (n > 32) n = 32;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, q);
    int best = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (!(q[i].queueFlags & VK_QUEUE_COMPUTE_BIT)) continue;
        if (best < 0 || ((q[best].queueFlags & VK_QUEUE_GRAPHICS_BIT) &&
                         !(q[i].queueFlags & VK_QUEUE_GRAPHICS_BIT) && q[i].timestampValidBits))
            best = (int)i;
    }
    return best;
}

/* The usable devices of inst in preference order; returns the count. */
static uint32_t ranked_devices(VkInstance inst, VkPhysicalDevice *out) {
    uint32_t n = MAX_DEVICES;
    VkPhysicalDevice all[MAX_DEVICES];
    VkResult r = vkEnumeratePhysicalDevices(inst, &n, all);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) return 0;
    uint32_t m = 0;
    for (int rank = 0; rank <= 4; rank++)
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(all[i], &p);
            if (type_rank(p.deviceType) != rank) continue;
            if (p.apiVersion < VK_API_VERSION_1_1 || compute_family(all[i]) < 0) continue;
            out[m++] = all[i];
        }
    return m;
}

static VKAPI_ATTR VkBool32 VKAPI_CALL on_message(VkDebugUtilsMessageSeverityFlagBitsEXT sev,
                                                 VkDebugUtilsMessageTypeFlagsEXT type,
                                                 const VkDebugUtilsMessengerCallbackDataEXT *data,
                                                 void *user) {
    (void)type;
    qg_vk_dev *d = user;
    if (sev >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT) d->n_messages++;
    fprintf(stderr, "vulkan validation (%s): %s\n",
            sev >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT     ? "error"
            : sev >= VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT ? "warning"
                                                                     : "info",
            data && data->pMessage ? data->pMessage : "?");
    return VK_FALSE;
}

static bool has_layer(const char *name) {
    uint32_t n = 0;
    if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || !n) return false;
    VkLayerProperties *l = malloc(sizeof *l * n);
    if (!l) return false;
    bool found = false;
    if (vkEnumerateInstanceLayerProperties(&n, l) == VK_SUCCESS)
        for (uint32_t i = 0; i < n; i++) found |= strcmp(l[i].layerName, name) == 0;
    free(l);
    return found;
}

/* Create the instance (validation: the Khronos layer, debug utils, and the
 * messenger whose user data is d; sync: synchronization validation too). */
static qg_status make_instance(qg_vk_dev *d, bool validation, bool sync, qg_error *err) {
    const char *layer = "VK_LAYER_KHRONOS_validation";
    const char *ext = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    if (validation && !has_layer(layer))
        return qg_error_set(err, QG_ERR_BACKEND,
                            "vulkan: validation requested but %s is not installed "
                            "(apt install vulkan-validationlayers)", layer);
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .pApplicationName = "qmoe-graph",
                             .pEngineName = "qmoe-graph",
                             .apiVersion = VK_API_VERSION_1_1};
    VkDebugUtilsMessengerCreateInfoEXT mci = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
        .pfnUserCallback = on_message,
        .pUserData = d};
    /* synchronization validation too: it checks the executor's barriers */
    const VkValidationFeatureEnableEXT enables[] = {
        VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT};
    VkValidationFeaturesEXT vf = {.sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
                                  .pNext = &mci,
                                  .enabledValidationFeatureCount = 1,
                                  .pEnabledValidationFeatures = enables};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                               .pNext = !validation ? NULL : sync ? (const void *)&vf
                                                                  : (const void *)&mci,
                               .pApplicationInfo = &app,
                               .enabledLayerCount = validation ? 1 : 0,
                               .ppEnabledLayerNames = &layer,
                               .enabledExtensionCount = validation ? 1 : 0,
                               .ppEnabledExtensionNames = &ext};
    VkResult r = vkCreateInstance(&ci, NULL, &d->inst);
    if (r != VK_SUCCESS) {
        d->inst = VK_NULL_HANDLE;
        return qg_error_set(err, QG_ERR_BACKEND,
                            "vulkan: cannot create an instance (%s): no Vulkan 1.1 driver? "
                            "(install mesa-vulkan-drivers for the lavapipe CPU device)",
                            qg_vk_result_name(r));
    }
    if (validation) {
        PFN_vkCreateDebugUtilsMessengerEXT mk = (PFN_vkCreateDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(d->inst, "vkCreateDebugUtilsMessengerEXT");
        if (!mk || mk(d->inst, &mci, NULL, &d->messenger) != VK_SUCCESS)
            return qg_error_set(err, QG_ERR_BACKEND, "vulkan: cannot install the debug messenger");
    }
    return QG_OK;
}

/* Memory type index for bits/required flags, preferring `want` too; the
 * first match in the driver's order (which ranks by performance). */
static int find_mem(const VkPhysicalDeviceMemoryProperties *m, uint32_t bits,
                    VkMemoryPropertyFlags need, VkMemoryPropertyFlags want) {
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < m->memoryTypeCount; i++) {
            VkMemoryPropertyFlags f = m->memoryTypes[i].propertyFlags;
            if (!(bits & (1u << i)) || (f & need) != need) continue;
            if (pass == 0 && (f & want) != want) continue;
            return (int)i;
        }
    return -1;
}

/* Is extension `name` among the device's n extensions? */
static bool has_ext(const VkExtensionProperties *e, uint32_t n, const char *name) {
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(e[i].extensionName, name)) return true;
    return false;
}

/* Can qg_gemm_cm.glsl run on d: VK_NV_cooperative_matrix with its
 * feature, a 16 x 16 x 16 subgroup shape of f16 x f16 + f32, f16
 * arithmetic and the Vulkan memory model (which its SPIR-V declares), and
 * subgroups of 32 with subgroup operations (four per workgroup of 128).
 * The three feature structs are filled by the query. */
static bool coopmat_usable(qg_vk_dev *d, const VkExtensionProperties *e, uint32_t n,
                           VkPhysicalDeviceShaderFloat16Int8FeaturesKHR *f16f,
                           VkPhysicalDeviceVulkanMemoryModelFeaturesKHR *vmmf,
                           VkPhysicalDeviceCooperativeMatrixFeaturesNV *cmf) {
    if (!d->subgroup || d->sg_size != 32 || !has_ext(e, n, VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME) ||
        !has_ext(e, n, VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME) ||
        !has_ext(e, n, VK_KHR_VULKAN_MEMORY_MODEL_EXTENSION_NAME))
        return false;
    f16f->pNext = vmmf;
    vmmf->pNext = cmf;
    cmf->pNext = NULL;
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                    .pNext = f16f};
    vkGetPhysicalDeviceFeatures2(d->pd, &f2);
    if (!f16f->shaderFloat16 || !vmmf->vulkanMemoryModel || !cmf->cooperativeMatrix) return false;
    PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV props =
        (PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesNV)vkGetInstanceProcAddr(
            d->inst, "vkGetPhysicalDeviceCooperativeMatrixPropertiesNV");
    uint32_t np = 0;
    if (!props || props(d->pd, &np, NULL) != VK_SUCCESS || np == 0) return false;
    VkCooperativeMatrixPropertiesNV cp[64];
    if (np > 64) np = 64;
    for (uint32_t i = 0; i < np; i++)
        cp[i] = (VkCooperativeMatrixPropertiesNV){
            .sType = VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_NV};
    VkResult r = props(d->pd, &np, cp);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) return false;
    for (uint32_t i = 0; i < np; i++)
        if (cp[i].MSize == 16 && cp[i].NSize == 16 && cp[i].KSize == 16 &&
            cp[i].AType == VK_COMPONENT_TYPE_FLOAT16_NV && cp[i].BType == VK_COMPONENT_TYPE_FLOAT16_NV &&
            cp[i].CType == VK_COMPONENT_TYPE_FLOAT32_NV && cp[i].DType == VK_COMPONENT_TYPE_FLOAT32_NV &&
            cp[i].scope == VK_SCOPE_SUBGROUP_NV)
            return true;
    return false;
}

qg_status qg_vk_dev_open(qg_vk_dev *d, int index, const qg_vk_opts *o, qg_error *err) {
    qg_status st = make_instance(d, o && o->validation, o && o->sync_validation, err);
    if (st) goto fail_st;
    VkPhysicalDevice devs[MAX_DEVICES];
    uint32_t n = ranked_devices(d->inst, devs);
    if (n == 0) {
        st = qg_error_set(err, QG_ERR_BACKEND,
                          "vulkan: no usable device (Vulkan 1.1 with a compute queue); install "
                          "mesa-vulkan-drivers for the lavapipe CPU device");
        goto fail_st;
    }
    if (index >= (int)n) {
        st = qg_error_set(err, QG_ERR_ARG, "--vk-device %d: only %u Vulkan device%s (0..%u)",
                          index, n, n == 1 ? "" : "s", n - 1);
        goto fail_st;
    }
    d->pd = devs[index < 0 ? 0 : index];
    vkGetPhysicalDeviceProperties(d->pd, &d->props);
    vkGetPhysicalDeviceMemoryProperties(d->pd, &d->memp);
    VkPhysicalDeviceSubgroupProperties sgp = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = &sgp};
    vkGetPhysicalDeviceProperties2(d->pd, &p2);
    d->sg_size = sgp.subgroupSize;
    const VkSubgroupFeatureFlags need_ops =
        VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT;
    d->subgroup = (sgp.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                  (sgp.supportedOperations & need_ops) == need_ops && sgp.subgroupSize >= 4 &&
                  !(o && o->no_subgroup);
    d->qfam = (uint32_t)compute_family(d->pd);
    {
        uint32_t nq = 0;
        vkGetPhysicalDeviceQueueFamilyProperties(d->pd, &nq, NULL);
        VkQueueFamilyProperties qp[32];
        if (nq > 32) nq = 32;
        vkGetPhysicalDeviceQueueFamilyProperties(d->pd, &nq, qp);
        d->timestamps = qp[d->qfam].timestampValidBits > 0 && d->props.limits.timestampPeriod > 0;
    }

    /* the device's extensions, for the optional features below */
    uint32_t n_ext = 0;
    VkExtensionProperties *exts = NULL;
    if (vkEnumerateDeviceExtensionProperties(d->pd, NULL, &n_ext, NULL) == VK_SUCCESS && n_ext) {
        exts = malloc(sizeof *exts * n_ext);
        if (!exts || vkEnumerateDeviceExtensionProperties(d->pd, NULL, &n_ext, exts) != VK_SUCCESS)
            n_ext = 0;
    }
    const char *enable[4];
    uint32_t n_enable = 0;
    const void *chain = NULL;

    /* full subgroups (VK_EXT_subgroup_size_control): lets the weight
     * shaders map one row to one subgroup; the workgroup size (128) must
     * be a multiple of every subgroup size the device may use */
    VkPhysicalDeviceSubgroupSizeControlFeaturesEXT sgf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_FEATURES_EXT};
    if (has_ext(exts, n_ext, VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME)) {
        VkPhysicalDeviceSubgroupSizeControlPropertiesEXT sgp2 = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES_EXT};
        VkPhysicalDeviceProperties2 pp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                          .pNext = &sgp2};
        vkGetPhysicalDeviceProperties2(d->pd, &pp);
        VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
                                        .pNext = &sgf};
        vkGetPhysicalDeviceFeatures2(d->pd, &f2);
        d->full_subgroups = d->subgroup && sgf.subgroupSizeControl && sgf.computeFullSubgroups &&
                            sgp2.maxSubgroupSize && 128 % sgp2.maxSubgroupSize == 0 &&
                            d->sg_size >= 8 && d->sg_size <= 128;
    }
    if (d->full_subgroups) {
        sgf.pNext = NULL;
        sgf.subgroupSizeControl = sgf.computeFullSubgroups = VK_TRUE;
        enable[n_enable++] = VK_EXT_SUBGROUP_SIZE_CONTROL_EXTENSION_NAME;
        chain = &sgf;
    }

    /* cooperative matrices for the prefill products (QG_VK_CM=1) */
    VkPhysicalDeviceShaderFloat16Int8FeaturesKHR f16f = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES_KHR};
    VkPhysicalDeviceVulkanMemoryModelFeaturesKHR vmmf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_MEMORY_MODEL_FEATURES_KHR};
    VkPhysicalDeviceCooperativeMatrixFeaturesNV cmf = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV};
    if (o && o->coopmat) {
        d->coopmat = coopmat_usable(d, exts, n_ext, &f16f, &vmmf, &cmf);
        d->cm_emulate = !d->coopmat && o->cm_emulate;
        if (d->coopmat) {
            f16f = (VkPhysicalDeviceShaderFloat16Int8FeaturesKHR){
                .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES_KHR,
                .pNext = (void *)chain, .shaderFloat16 = VK_TRUE};
            vmmf = (VkPhysicalDeviceVulkanMemoryModelFeaturesKHR){
                .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_MEMORY_MODEL_FEATURES_KHR,
                .pNext = &f16f, .vulkanMemoryModel = VK_TRUE};
            cmf = (VkPhysicalDeviceCooperativeMatrixFeaturesNV){
                .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_NV,
                .pNext = &vmmf, .cooperativeMatrix = VK_TRUE};
            chain = &cmf;
            enable[n_enable++] = VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME;
            enable[n_enable++] = VK_KHR_VULKAN_MEMORY_MODEL_EXTENSION_NAME;
            enable[n_enable++] = VK_NV_COOPERATIVE_MATRIX_EXTENSION_NAME;
        }
    }
    free(exts);

    /* memory types: probe with a throwaway storage buffer's requirements */
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                   .queueFamilyIndex = d->qfam, .queueCount = 1,
                                   .pQueuePriorities = &prio};
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                              .pNext = chain,
                              .queueCreateInfoCount = 1, .pQueueCreateInfos = &qci,
                              .enabledExtensionCount = n_enable,
                              .ppEnabledExtensionNames = enable};
    snprintf(d->desc, sizeof d->desc, "%.256s (%s, subgroup %u%s%s)", d->props.deviceName,
             type_name(d->props.deviceType), d->sg_size,
             !d->subgroup ? ", shared-memory reductions"
             : d->full_subgroups ? ", full subgroups" : "",
             d->coopmat ? ", cooperative matrices" : d->cm_emulate ? ", cooperative matrices emulated" : "");
    QG_VK_CHECK(vkCreateDevice(d->pd, &dci, NULL, &d->dev));
    vkGetDeviceQueue(d->dev, d->qfam, 0, &d->queue);
    {
        VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = 256,
                                  .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                           VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                           VK_BUFFER_USAGE_TRANSFER_DST_BIT};
        VkBuffer probe;
        QG_VK_CHECK(vkCreateBuffer(d->dev, &bci, NULL, &probe));
        VkMemoryRequirements mr;
        vkGetBufferMemoryRequirements(d->dev, probe, &mr);
        vkDestroyBuffer(d->dev, probe, NULL);
        int md = find_mem(&d->memp, mr.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0);
        if (md < 0) md = find_mem(&d->memp, mr.memoryTypeBits, 0, 0);
        int mh = find_mem(&d->memp, mr.memoryTypeBits,
                          VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                          VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
        if (md < 0 || mh < 0) {
            qg_error_set(err, QG_ERR_BACKEND, "vulkan: %s has no usable memory type for storage buffers",
                         d->props.deviceName);
            goto fail;
        }
        d->mt_device = (uint32_t)md;
        d->mt_host = (uint32_t)mh;
        d->heap_bytes = d->memp.memoryHeaps[d->memp.memoryTypes[md].heapIndex].size;
    }
    VkCommandPoolCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                   .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                   .queueFamilyIndex = d->qfam};
    QG_VK_CHECK(vkCreateCommandPool(d->dev, &pci, NULL, &d->pool));
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                       .commandPool = d->pool,
                                       .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                       .commandBufferCount = 1};
    QG_VK_CHECK(vkAllocateCommandBuffers(d->dev, &cai, &d->once));
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    QG_VK_CHECK(vkCreateFence(d->dev, &fci, NULL, &d->once_fence));
    return QG_OK;
fail:
    st = err ? err->code : QG_ERR_BACKEND;
fail_st:
    qg_vk_dev_close(d);
    return st ? st : QG_ERR_BACKEND;
}

void qg_vk_dev_close(qg_vk_dev *d) {
    if (d->dev) {
        vkDeviceWaitIdle(d->dev);
        qg_vk_buf_free(d, &d->staging);
        if (d->once_fence) vkDestroyFence(d->dev, d->once_fence, NULL);
        if (d->pool) vkDestroyCommandPool(d->dev, d->pool, NULL);
        vkDestroyDevice(d->dev, NULL);
    }
    if (d->messenger) {
        PFN_vkDestroyDebugUtilsMessengerEXT rm = (PFN_vkDestroyDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(d->inst, "vkDestroyDebugUtilsMessengerEXT");
        if (rm) rm(d->inst, d->messenger, NULL);
    }
    if (d->inst) vkDestroyInstance(d->inst, NULL);
    d->dev = VK_NULL_HANDLE;
    d->inst = VK_NULL_HANDLE;
    d->messenger = VK_NULL_HANDLE;
    d->pool = VK_NULL_HANDLE;
    d->once_fence = VK_NULL_HANDLE;
}

qg_status qg_vk_buf_new(qg_vk_dev *d, VkDeviceSize size, bool host, qg_vk_buf *b,
                        qg_error *err) {
    memset(b, 0, sizeof *b);
    size = qg_align_up(size < 4 ? 4 : size, 4);
    uint32_t mt = host ? d->mt_host : d->mt_device;
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_DST_BIT |
                                       VK_BUFFER_USAGE_INDIRECT_BUFFER_BIT,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    QG_VK_CHECK(vkCreateBuffer(d->dev, &bci, NULL, &b->buf));
    VkMemoryRequirements mr;
    vkGetBufferMemoryRequirements(d->dev, b->buf, &mr);
    if (!(mr.memoryTypeBits & (1u << mt))) {
        qg_error_set(err, QG_ERR_BACKEND, "vulkan: memory type %u unusable for a buffer", mt);
        goto fail;
    }
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                .allocationSize = mr.size, .memoryTypeIndex = mt};
    VkResult r = vkAllocateMemory(d->dev, &mai, NULL, &b->mem);
    if (r != VK_SUCCESS) {
        b->mem = VK_NULL_HANDLE;
        qg_error_set(err, r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY
                              ? QG_ERR_NOMEM : QG_ERR_BACKEND,
                     "vulkan: cannot allocate %.1f MiB of %s memory on %s (%s; %.1f MiB held)",
                     mr.size / 1048576.0, host ? "host-visible" : "device", d->props.deviceName,
                     qg_vk_result_name(r), d->allocated / 1048576.0);
        qg_vk_buf_free(d, b);
        return err ? err->code : QG_ERR_NOMEM;
    }
    QG_VK_CHECK(vkBindBufferMemory(d->dev, b->buf, b->mem, 0));
    if (d->memp.memoryTypes[mt].propertyFlags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)
        QG_VK_CHECK(vkMapMemory(d->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map));
    b->size = size;
    d->allocated += size;
    return QG_OK;
fail:
    qg_vk_buf_free(d, b);
    return QG_ERR_BACKEND;
}

void qg_vk_buf_free(qg_vk_dev *d, qg_vk_buf *b) {
    if (b->buf) vkDestroyBuffer(d->dev, b->buf, NULL);
    if (b->mem) {
        if (b->map) vkUnmapMemory(d->dev, b->mem);
        vkFreeMemory(d->dev, b->mem, NULL);
        d->allocated = d->allocated > b->size ? d->allocated - b->size : 0;
    }
    memset(b, 0, sizeof *b);
}

/* Begin / submit-and-wait the one-shot command buffer. */
static qg_status once_begin(qg_vk_dev *d, qg_error *err) {
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    QG_VK_CHECK(vkResetCommandBuffer(d->once, 0));
    QG_VK_CHECK(vkBeginCommandBuffer(d->once, &bi));
    return QG_OK;
fail:
    return QG_ERR_BACKEND;
}

static qg_status once_end(qg_vk_dev *d, qg_error *err) {
    /* make transfer writes visible to later shaders and to the host */
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT | VK_ACCESS_SHADER_READ_BIT |
                                           VK_ACCESS_SHADER_WRITE_BIT};
    vkCmdPipelineBarrier(d->once, VK_PIPELINE_STAGE_TRANSFER_BIT,
                         VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1,
                         &mb, 0, NULL, 0, NULL);
    QG_VK_CHECK(vkEndCommandBuffer(d->once));
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1,
                       .pCommandBuffers = &d->once};
    QG_VK_CHECK(vkResetFences(d->dev, 1, &d->once_fence));
    QG_VK_CHECK(vkQueueSubmit(d->queue, 1, &si, d->once_fence));
    QG_VK_CHECK(vkWaitForFences(d->dev, 1, &d->once_fence, VK_TRUE, UINT64_MAX));
    return QG_OK;
fail:
    return QG_ERR_BACKEND;
}

static qg_status staging_ready(qg_vk_dev *d, qg_error *err) {
    if (d->staging.buf) return QG_OK;
    return qg_vk_buf_new(d, STAGING_BYTES, true, &d->staging, err);
}

qg_status qg_vk_write(qg_vk_dev *d, const qg_vk_buf *b, VkDeviceSize off, const void *src,
                      size_t n, qg_error *err) {
    QG_ASSERT(off + n <= b->size);
    if (b->map) {
        memcpy((char *)b->map + off, src, n);
        return QG_OK;
    }
    qg_status st = staging_ready(d, err);
    if (st) return st;
    for (size_t done = 0; done < n;) {
        size_t piece = QG_MIN(n - done, (size_t)STAGING_BYTES);
        memcpy(d->staging.map, (const char *)src + done, piece);
        if ((st = once_begin(d, err))) return st;
        VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                              .srcAccessMask = VK_ACCESS_HOST_WRITE_BIT,
                              .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT};
        vkCmdPipelineBarrier(d->once, VK_PIPELINE_STAGE_HOST_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0,
                             1, &mb, 0, NULL, 0, NULL);
        VkBufferCopy cp = {.srcOffset = 0, .dstOffset = off + done, .size = piece};
        vkCmdCopyBuffer(d->once, d->staging.buf, b->buf, 1, &cp);
        if ((st = once_end(d, err))) return st;
        done += piece;
    }
    return QG_OK;
}

qg_status qg_vk_read(qg_vk_dev *d, const qg_vk_buf *b, VkDeviceSize off, void *dst, size_t n,
                     qg_error *err) {
    QG_ASSERT(off + n <= b->size);
    if (b->map) {
        memcpy(dst, (const char *)b->map + off, n);
        return QG_OK;
    }
    qg_status st = staging_ready(d, err);
    if (st) return st;
    for (size_t done = 0; done < n;) {
        size_t piece = QG_MIN(n - done, (size_t)STAGING_BYTES);
        if ((st = once_begin(d, err))) return st;
        VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                              .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
                              .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT};
        vkCmdPipelineBarrier(d->once, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                             VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
        VkBufferCopy cp = {.srcOffset = off + done, .dstOffset = 0, .size = piece};
        vkCmdCopyBuffer(d->once, b->buf, d->staging.buf, 1, &cp);
        if ((st = once_end(d, err))) return st;
        memcpy((char *)dst + done, d->staging.map, piece);
        done += piece;
    }
    return QG_OK;
}

qg_status qg_vk_fill(qg_vk_dev *d, const qg_vk_buf *b, VkDeviceSize off, VkDeviceSize n,
                     uint32_t v, qg_error *err) {
    QG_ASSERT(off + n <= b->size && n % 4 == 0);
    if (n == 0) return QG_OK;
    qg_status st = once_begin(d, err);
    if (st) return st;
    vkCmdFillBuffer(d->once, b->buf, off, n, v);
    return once_end(d, err);
}

void qg_exec_vulkan_describe(FILE *f) {
    qg_vk_dev d;
    memset(&d, 0, sizeof d);
    qg_error err = {0};
    if (make_instance(&d, false, false, &err)) {
        fprintf(f, "vulkan: %s\n", err.msg);
        return;
    }
    VkPhysicalDevice devs[MAX_DEVICES];
    uint32_t n = ranked_devices(d.inst, devs);
    if (n == 0) fprintf(f, "vulkan: no usable device (Vulkan 1.1 with a compute queue)\n");
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties p;
        VkPhysicalDeviceMemoryProperties m;
        VkPhysicalDeviceSubgroupProperties sg = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
        VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                          .pNext = &sg};
        vkGetPhysicalDeviceProperties(devs[i], &p);
        vkGetPhysicalDeviceProperties2(devs[i], &p2);
        vkGetPhysicalDeviceMemoryProperties(devs[i], &m);
        VkDeviceSize local = 0;
        for (uint32_t h = 0; h < m.memoryHeapCount; h++)
            if (m.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
                local = QG_MAX(local, m.memoryHeaps[h].size);
        fprintf(f,
                "vulkan device %u: %s (%s), %.1f GiB device-local, subgroup %u%s, Vulkan %u.%u.%u%s\n",
                i, p.deviceName, type_name(p.deviceType), local / 1073741824.0, sg.subgroupSize,
                (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) ? " (arithmetic)" : "",
                VK_API_VERSION_MAJOR(p.apiVersion), VK_API_VERSION_MINOR(p.apiVersion),
                VK_API_VERSION_PATCH(p.apiVersion), i == 0 ? "  [default]" : "");
    }
    qg_vk_dev_close(&d);
}
