/*
 * qg_vk.h - internals of the Vulkan executor (exec/vulkan/ only).
 *
 *   qg_vk_device.c    instance, device choice, memory, buffers, transfers,
 *                     the validation messenger, describe()
 *   qg_vk_pipeline.c  shader modules from the embedded SPIR-V, descriptor
 *                     set layouts, pipelines cached by (shader, constants)
 *   qg_vk_record.c    the one switch over ops: which nodes are supported,
 *                     and each node as a list of dispatches
 *   qg_vk_fold.c      which decode-graph norms and residual adds fold into
 *                     a neighbouring product (no dispatch of their own)
 *   qg_vk_exec.c      the executor vtable: compile (upload, plan buffers,
 *                     record one command buffer per partition), run
 *                     (resubmit), tensor_set / tensor_get, profiling
 *
 * Every Vulkan call that can fail is checked; failures become
 * QG_ERR_BACKEND with the call, file:line and the VkResult name.
 */
#ifndef QG_VK_H
#define QG_VK_H

#include "qg_vulkan.h"

#include <vulkan/vulkan.h>

/* Check a VkResult; on failure set err and `goto fail`. */
#define QG_VK_CHECK(call)                                                        \
    do {                                                                         \
        VkResult vr_ = (call);                                                   \
        if (vr_ != VK_SUCCESS) {                                                 \
            qg_error_set(err, QG_ERR_BACKEND, "vulkan: %s failed at %s:%d: %s",  \
                         #call, __FILE__, __LINE__, qg_vk_result_name(vr_));     \
            goto fail;                                                           \
        }                                                                        \
    } while (0)

const char *qg_vk_result_name(VkResult r);

/* ---- device (qg_vk_device.c) ----------------------------------------- */

/* A buffer with its own memory, or a view into a pooled one (mem NULL). */
typedef struct qg_vk_buf {
    VkBuffer buf;
    VkDeviceMemory mem;
    VkDeviceSize size;
    void *map; /* persistent mapping when host visible, else NULL */
} qg_vk_buf;

typedef struct qg_vk_dev {
    VkInstance inst;
    VkDebugUtilsMessengerEXT messenger;
    size_t n_messages;      /* validation messages, warning or error */
    VkPhysicalDevice pd;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties memp;
    VkDevice dev;
    VkQueue queue;
    uint32_t qfam;
    uint32_t sg_size;       /* subgroup size */
    bool subgroup;          /* use the QG_SUBGROUP=1 shaders */
    bool full_subgroups;    /* VK_EXT_subgroup_size_control enabled with
                               computeFullSubgroups: the weight shaders may
                               give one row group per subgroup (SGROWS) */
    bool coopmat;           /* VK_NV_cooperative_matrix enabled: the prefill
                               products may take qg_gemm_cm.glsl (asked for
                               by qg_vk_opts.coopmat) */
    bool cm_emulate;        /* no cooperative matrices, but their scalar
                               emulation asked for (qg_vk_opts.cm_emulate) */
    bool timestamps;        /* the queue supports timestamp queries */
    uint32_t mt_device;     /* memory type for device buffers */
    uint32_t mt_host;       /* host-visible, coherent (cached if any) */
    VkDeviceSize heap_bytes;/* size of mt_device's heap */
    VkDeviceSize allocated; /* bytes of device memory we hold */
    VkCommandPool pool;
    VkCommandBuffer once;   /* one-shot transfers */
    VkFence once_fence;
    qg_vk_buf staging;      /* host buffer for transfers, made on demand */
    char desc[384];         /* "name (type, subgroup N, ...)" */
} qg_vk_dev;

/* Open device `index` of the preference list (< 0: the first).  d must be
 * zeroed.  On failure everything made so far is released. */
qg_status qg_vk_dev_open(qg_vk_dev *d, int index, const qg_vk_opts *o,
                         qg_error *err);
void qg_vk_dev_close(qg_vk_dev *d);

/* A storage buffer of `size` bytes (at least 4): in device memory, or in
 * host-visible coherent memory when `host`.  Mapped whenever the memory is
 * host visible. */
qg_status qg_vk_buf_new(qg_vk_dev *d, VkDeviceSize size, bool host,
                        qg_vk_buf *b, qg_error *err);
void qg_vk_buf_free(qg_vk_dev *d, qg_vk_buf *b);

/* Copy n bytes between host memory and buffer b at offset off, through the
 * staging buffer when b is not mapped.  The device must be idle with
 * respect to those bytes (the caller waits for its submissions first). */
qg_status qg_vk_write(qg_vk_dev *d, const qg_vk_buf *b, VkDeviceSize off,
                      const void *src, size_t n, qg_error *err);
qg_status qg_vk_read(qg_vk_dev *d, const qg_vk_buf *b, VkDeviceSize off,
                     void *dst, size_t n, qg_error *err);
/* Fill n bytes (multiple of 4) at off with the 32-bit word v, and wait. */
qg_status qg_vk_fill(qg_vk_dev *d, const qg_vk_buf *b, VkDeviceSize off,
                     VkDeviceSize n, uint32_t v, qg_error *err);

/* ---- pipelines (qg_vk_pipeline.c) ------------------------------------ */

/* The shaders, one per ops/vulkan/<name>.comp. */
typedef enum qg_vk_shader {
    QG_VK_ADD,
    QG_VK_ADD_RMSNORM,
    QG_VK_AGGREGATE,
    QG_VK_AGGREGATE_MV,
    QG_VK_ATTENTION,
    QG_VK_ATTENTION_TILE,
    QG_VK_EMBED,
    QG_VK_GEMM,
    QG_VK_GEMM_MOE,
    QG_VK_GEMM_SWIGLU,
    QG_VK_GEMM_SWIGLU_MOE,
    QG_VK_GEMM_CM,             /* the gemm shaders on cooperative matrices */
    QG_VK_GEMM_SWIGLU_CM,
    QG_VK_GEMM_MOE_CM,
    QG_VK_GEMM_SWIGLU_MOE_CM,
    QG_VK_KV_APPEND,
    QG_VK_MATMUL,
    QG_VK_MATMUL_MV,
    QG_VK_MOE_COMBINE,
    QG_VK_MOE_SORT,
    QG_VK_RMSNORM,
    QG_VK_ROPE,
    QG_VK_ROPE_KV,
    QG_VK_SWIGLU,
    QG_VK_SWIGLU_MV,
    QG_VK_TOPK,
    QG_VK_SHADER_COUNT
} qg_vk_shader;

#define QG_VK_MAX_BIND 12 /* storage buffers per dispatch, step included */
#define QG_VK_MAX_SPEC 10 /* specialization constants, ids 0.. */
#define QG_VK_SPEC_SGROWS 7 /* weight shaders: one row group per subgroup */
#define QG_VK_SPEC_MV_PF 9  /* the *_mv shaders: software-pipelined loads */
#define QG_VK_PUSH_BYTES 64

typedef struct qg_vk_pipe_entry {
    qg_vk_shader shader;
    uint32_t spec[QG_VK_MAX_SPEC];
    int n_bind;
    VkPipeline pipe;
} qg_vk_pipe_entry;

/* The shader's name, as its .comp file is named ("matmul_mv"). */
const char *qg_vk_shader_name(qg_vk_shader s);

typedef struct qg_vk_pipes {
    VkShaderModule module[QG_VK_SHADER_COUNT];
    VkDescriptorSetLayout dsl[QG_VK_MAX_BIND + 1]; /* by binding count */
    VkPipelineLayout layout[QG_VK_MAX_BIND + 1];
    qg_vk_pipe_entry *e;
    int n, cap;
} qg_vk_pipes;

qg_status qg_vk_pipes_init(qg_vk_dev *d, qg_vk_pipes *p, qg_error *err);
void qg_vk_pipes_free(qg_vk_dev *d, qg_vk_pipes *p);
/* The pipeline of `shader` with n_bind storage buffers and constants
 * spec[0..QG_VK_MAX_SPEC) (ids 0..; unused ids are ignored by shaders that
 * do not declare them), made on first use.  VK_NULL_HANDLE on error. */
VkPipeline qg_vk_pipe_get(qg_vk_dev *d, qg_vk_pipes *p, qg_vk_shader shader,
                          int n_bind, const uint32_t *spec, qg_error *err);

/* ---- recording (qg_vk_record.c) -------------------------------------- */

/* Where a tensor (or any buffer range) lives. */
typedef struct qg_vk_loc {
    VkBuffer buf;
    VkDeviceSize off, range;
} qg_vk_loc;

/* One compute dispatch: pipeline, bindings (0 = step), push constants,
 * workgroup counts, and the node it belongs to. */
typedef struct qg_vk_dispatch {
    int node;
    qg_vk_shader shader;
    uint32_t spec[QG_VK_MAX_SPEC];
    int n_bind;
    qg_vk_loc b[QG_VK_MAX_BIND];
    uint32_t writes; /* bit i: binding i is written */
    uint32_t push[QG_VK_PUSH_BYTES / 4];
    uint32_t push_bytes;
    uint32_t groups[3];  /* worst case (n_tok_max tokens) */
    uint32_t z_mul, z_div; /* z_div > 0: groups[2] of a step with n_tok
                              live tokens is ceil(n_tok * z_mul / z_div) */
    qg_vk_loc dev_ind;   /* buf set: the workgroup counts are a
                            VkDispatchIndirectCommand that an earlier
                            dispatch wrote there */
    VkPipeline pipe;     /* filled by the executor */
    VkDescriptorSet set; /* filled by the executor */
} qg_vk_dispatch;

/* What the recorder needs from the executor: device limits and the
 * location of every tensor and helper buffer of the graph. */
typedef struct qg_vk_rec_ctx {
    const qg_vk_dev *d;
    const qg_graph *g;
    qg_vk_loc step;                       /* int step[QG_STEP_N] */
    qg_vk_loc (*loc)(void *self, int t);  /* tensor t */
    void *self;
    /* rope table (hd, n_ctx) for a node's head_dim and theta */
    qg_vk_loc (*rope_table)(void *self, const qg_node *n);
    qg_vk_loc moe_scratch;                /* moe_fused's logits | h */
    bool fuse;                            /* peephole fusion of node pairs */
    bool fold;                            /* decode folds (qg_vk_fold.c) */
    bool fast_mv;                         /* decode products: the *_mv shaders */
    uint32_t mv_rpt;                      /* fast_mv: rows per row group; 0: mv_rows default */
    bool mv_pf;                           /* fast_mv: loops software-pipelined (spec 9) */
    bool attn_tile;                       /* prefill attention: attention_tile.comp */
    bool coopmat;                         /* prefill products: the *_cm shaders */
} qg_vk_rec_ctx;

/* Can the Vulkan executor run node n on device d? */
bool qg_vk_supports(const qg_vk_dev *d, const qg_graph *g, const qg_node *n);

/* Bytes of moe_fused's scratch for node n, 0 for other nodes: logits
 * (X,T) and h (F,K,T); in multi-token graphs also the expert grouping
 * (offsets, assignments, tiles, two indirect commands) and the per
 * assignment down outputs (E,K,T).  Sections 256-aligned. */
size_t qg_vk_moe_scratch_bytes(const qg_graph *g, const qg_node *n);

/* Append node `ni`'s dispatches to *out (grown with realloc; *n, *cap)
 * and return how many nodes they cover: 1, or 2 when c->fuse and node
 * ni+1 (< end, the partition's end) fuses with it:
 *   add -> rmsnorm of its result     one add_rmsnorm dispatch (node ni)
 *   rope -> attention of its q, k    rope also appends k and v to the
 *                                    caches; then attention (node ni+1)
 * and, when c->fold, up to 3 for the folds of qg_vk_fold.c (an rmsnorm
 * covers the product after it, which covers the add after it).  The fused
 * and folded dispatches compute the same values with the same f32
 * operations.  Aborts on allocation failure (compile time only). */
int qg_vk_record_node(const qg_vk_rec_ctx *c, int ni, int end, qg_vk_dispatch **out, int *n,
                      int *cap);

/* ---- decode folds (qg_vk_fold.c) --------------------------------------- */

/* Does rmsnorm node ni fold into the product at ni + 1 (< end)?  True in
 * decode graphs when that product (qkv, matmul, router, lm_head,
 * moe_fused) is the only reader of the norm's output (an activation), and
 * the column fits matmul.comp's shared memory on device d. */
bool qg_vk_fold_norm(const qg_vk_dev *d, const qg_graph *g, int ni, int end);

/* Does the add at pi + 1 (< end) fold into the product at pi (matmul or
 * moe_fused)?  In decode graphs, when the add is the only reader of the
 * product's output (an activation of the add's shape).  Returns the add's
 * other input (the residual), or -1. */
int qg_vk_fold_add_resid(const qg_graph *g, int pi, int end);

#endif
