/* qg_vk_exec.c - the Vulkan executor: the exec/qg_exec.h vtable.
 *
 * compile(g) does everything once per graph:
 *   - buffers: the activation arena (device memory, the memory plan's
 *     offsets), an "io" buffer in host-visible coherent memory for the
 *     step values and every tensor the host reads or writes (inputs,
 *     outputs, both ends of copies: tensor_set/get and tensor_host are
 *     plain memcpy there; see plan_io), a device mirror of its
 *     host-written part, moe_fused's scratch, and in decode graphs with
 *     folds the outputs of folded adds (plan_own);
 *   - weights: uploaded once per executor through staging (deduplicated
 *     by host pointer, so the decode and prefill graphs share them), kept
 *     in their GGUF block formats;
 *   - RoPE cos/sin tables (hd, n_ctx), computed in double as the CPU does;
 *   - every node of its partitions as dispatches (qg_vk_record.c), their
 *     pipelines and descriptor sets;
 *   - one command buffer per partition (plus a variant with a barrier and
 *     a timestamp query after each dispatch when the queue has
 *     timestamps), with a
 *     pipeline barrier wherever a dispatch touches memory that an earlier
 *     dispatch since the last barrier wrote (or writes what one read).
 * run() writes the step values into the io buffer and resubmits the
 * partition's command buffer, which first copies the host-written part of
 * io into its device mirror: nothing is recorded or allocated per step.
 * In multi-token (prefill) graphs the token dimension of each dispatch is
 * an indirect dispatch whose workgroup counts run() writes for the live
 * tokens, so a short prefill does not launch n_batch tokens' workgroups.
 * Submission is asynchronous; sync(), tensor_set() and tensor_get() wait
 * for it.  With a profile, run() waits and turns the timestamps into
 * per-node events, placed on the host clock at the time of submission,
 * and adds each dispatch's time to the graph's per-dispatch totals, which
 * release() prints by node op and shader under QG_DEBUG=vulkan (where a
 * fused node's time goes: a decode moe_fused is router, top-k, swiglu and
 * aggregate dispatches). */
#include "qg_vk.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GRAPHS 8
#define NO_IO UINT64_MAX

typedef struct vk_weight {
    const void *data; /* host address: the key; NULL for a free slot */
    size_t nbytes;
    int refs;         /* compiled graphs using it */
    qg_vk_buf b;
} vk_weight;

typedef struct vk_rope {
    int hd, n_ctx;
    float theta;
    qg_vk_buf b; /* (hd, n_ctx) f32: cos then sin per position */
} vk_rope;

typedef struct vk_part {
    VkCommandBuffer cmd[2]; /* [0] plain, [1] with timestamps */
    VkQueryPool qp;         /* nd + 1 timestamps: the start, after each dispatch */
    uint64_t *ts;           /* (nd + 1) their values, read after a timed run */
    int d0, nd;             /* its dispatches [d0, d0+nd) */
    int n_barrier;          /* barriers between its dispatches (plain buffer) */
} vk_part;

typedef struct vk_graph {
    qg_graph *g;
    int exec_index;
    qg_vk_buf act, io, scratch;
    qg_vk_buf own;        /* folded adds' outputs, each in memory of its own */
    VkDeviceSize *own_off;/* (n_tensors) offset in own, or NO_IO */
    qg_vk_buf in;         /* device mirror of io's host-written region */
    VkDeviceSize in_bytes;
    qg_vk_buf ind;        /* (n_disp) VkDispatchIndirectCommand, host-visible */
    VkDeviceSize *io_off; /* (n_tensors) offset in io, or NO_IO */
    qg_vk_dispatch *disp;
    int n_disp, cap_disp;
    double *disp_ns;      /* (n_disp) time of each dispatch over timed runs */
    int *disp_runs;       /* (n_disp) timed runs that included it */
    VkDescriptorPool dpool;
    vk_part *parts; /* (g->n_parts); cmd[0] NULL for other executors' */
    int *wids;      /* weights it holds a reference to */
    int n_wids;
} vk_graph;

typedef struct vk_exec {
    qg_vk_dev d; /* first: its address is the messenger's user data */
    qg_vk_pipes pipes;
    qg_vk_buf kv;
    vk_weight *w;
    int n_w, cap_w;
    vk_rope *rope;
    int n_rope, cap_rope;
    vk_graph graphs[MAX_GRAPHS];
    vk_graph *cur; /* the graph being compiled (for the loc callbacks) */
    VkFence fence;
    bool in_flight;
    bool no_fuse; /* QG_VK_NO_FUSE=1: one node, one set of dispatches */
    bool no_fold; /* QG_VK_FOLD=0: no decode folds (qg_vk_fold.c); the
                     node-pair fusions stay on */
    bool fast_mv; /* QG_VK_MV=1: the *_mv decode products */
    uint32_t mv_rpt; /* QG_VK_MV_RPT: their rows per row group (0: the default, mv_rows) */
    bool mv_pf;      /* QG_VK_MV_PF=1: their loops software-pipelined */
    bool attn_tile; /* QG_VK_ATTN_TILE=1: prefill attention_tile.comp */
} vk_exec;

static vk_graph *find_graph(vk_exec *x, const qg_graph *g) {
    for (int i = 0; i < MAX_GRAPHS; i++)
        if (x->graphs[i].g == g) return &x->graphs[i];
    return NULL;
}

static bool vk_supports(void *self, const qg_graph *g, const qg_node *n) {
    vk_exec *x = self;
    return qg_vk_supports(&x->d, g, n);
}

static size_t vk_mem_available(void *self) {
    vk_exec *x = self;
    VkDeviceSize usable = x->d.heap_bytes / 10 * 9;
    return usable > x->d.allocated ? (size_t)(usable - x->d.allocated) : 0;
}

static qg_status vk_sync(void *self, qg_error *err) {
    vk_exec *x = self;
    if (!x->in_flight) return QG_OK;
    x->in_flight = false;
    QG_VK_CHECK(vkWaitForFences(x->d.dev, 1, &x->fence, VK_TRUE, UINT64_MAX));
    QG_VK_CHECK(vkResetFences(x->d.dev, 1, &x->fence));
    return QG_OK;
fail:
    return QG_ERR_BACKEND;
}

static qg_status vk_kv_alloc(void *self, size_t bytes, qg_error *err) {
    vk_exec *x = self;
    qg_status st = vk_sync(x, err);
    if (st) return st;
    qg_vk_buf_free(&x->d, &x->kv);
    if ((st = qg_vk_buf_new(&x->d, bytes, false, &x->kv, err))) {
        qg_error_prefix(err, "vulkan KV cache (%.2f GiB)", bytes / 1073741824.0);
        return st;
    }
    return qg_vk_fill(&x->d, &x->kv, 0, x->kv.size, 0, err);
}

/* ---- locations ---------------------------------------------------------- */

static vk_weight *weight_of(vk_exec *x, const void *data) {
    for (int i = 0; i < x->n_w; i++)
        if (x->w[i].data && x->w[i].data == data) return &x->w[i];
    return NULL;
}

/* Where tensor t of the graph being compiled lives. */
static qg_vk_loc tensor_loc(void *self, int t) {
    vk_exec *x = self;
    vk_graph *vg = x->cur;
    const qg_tensor *ts = &vg->g->tensors[t];
    qg_vk_loc l = {VK_NULL_HANDLE, 0, ts->nbytes};
    if (ts->role == QG_ROLE_WEIGHT) {
        vk_weight *w = weight_of(x, ts->data);
        QG_ASSERT(w && w->nbytes >= ts->nbytes);
        l.buf = w->b.buf;
        l.range = w->b.size; /* whole 32-bit words: shaders read words */
    } else if (vg->own_off[t] != NO_IO) {
        l.buf = vg->own.buf;
        l.off = vg->own_off[t];
    } else if (vg->io_off[t] != NO_IO) { /* host-written: the device mirror */
        l.buf = vg->io_off[t] < vg->in_bytes ? vg->in.buf : vg->io.buf;
        l.off = vg->io_off[t];
    } else if (ts->role == QG_ROLE_KV) {
        QG_ASSERT(ts->offset + ts->nbytes <= x->kv.size);
        l.buf = x->kv.buf;
        l.off = ts->offset;
    } else {
        QG_ASSERT(ts->exec == vg->exec_index && ts->first_use >= 0 &&
                  ts->offset + ts->nbytes <= vg->act.size);
        l.buf = vg->act.buf;
        l.off = ts->offset;
    }
    return l;
}

static qg_vk_loc rope_loc(void *self, const qg_node *n) {
    vk_exec *x = self;
    for (int i = 0; i < x->n_rope; i++) {
        vk_rope *r = &x->rope[i];
        if (r->hd == n->p.head_dim && r->theta == n->p.rope_theta && r->n_ctx == x->cur->g->n_ctx)
            return (qg_vk_loc){r->b.buf, 0, r->b.size};
    }
    QG_ABORT("vulkan: no RoPE table for %s", n->name);
}

/* ---- compile ------------------------------------------------------------ */

/* Make weight t resident (once per executor) and count graph vg's
 * reference to it (once per graph).  Weights are freed when the last
 * graph using them is released, so a host address reused later (another
 * model) never finds stale bytes. */
static qg_status use_weight(vk_exec *x, vk_graph *vg, const qg_tensor *t, qg_error *err) {
    if (!t->data) return qg_error_set(err, QG_ERR_BACKEND, "vulkan: weight %s has no data", t->name);
    vk_weight *w = weight_of(x, t->data);
    if (w) {
        for (int i = 0; i < vg->n_wids; i++)
            if (vg->wids[i] == (int)(w - x->w)) return QG_OK;
    } else {
        int slot = -1;
        for (int i = 0; i < x->n_w && slot < 0; i++)
            if (!x->w[i].data) slot = i;
        if (slot < 0) {
            if (x->n_w == x->cap_w) {
                int cap = x->cap_w ? 2 * x->cap_w : 64;
                vk_weight *nw = realloc(x->w, sizeof *nw * (size_t)cap);
                if (!nw) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
                x->w = nw;
                x->cap_w = cap;
            }
            slot = x->n_w++;
            memset(&x->w[slot], 0, sizeof x->w[slot]);
        }
        w = &x->w[slot];
        qg_status st = qg_vk_buf_new(&x->d, t->nbytes, false, &w->b, err);
        if (st) {
            qg_error_prefix(err, "weight %s", t->name);
            return st;
        }
        if ((st = qg_vk_write(&x->d, &w->b, 0, t->data, t->nbytes, err))) {
            qg_vk_buf_free(&x->d, &w->b);
            return st;
        }
        w->data = t->data;
        w->nbytes = t->nbytes;
        w->refs = 0;
    }
    /* vg->wids has room for every tensor of the graph */
    vg->wids[vg->n_wids++] = (int)(w - x->w);
    w->refs++;
    return QG_OK;
}

/* The cos/sin table of a rope node: row p = cos(p f_i), i < hd/2, then
 * sin(p f_i), f_i = theta^(-2i/hd); angles in double, rounded once (the
 * CPU kernel's values, bit for bit). */
static qg_status make_rope(vk_exec *x, const qg_node *n, int n_ctx, qg_error *err) {
    const int hd = n->p.head_dim, half = hd / 2;
    for (int i = 0; i < x->n_rope; i++)
        if (x->rope[i].hd == hd && x->rope[i].theta == n->p.rope_theta && x->rope[i].n_ctx == n_ctx)
            return QG_OK;
    if (x->n_rope == x->cap_rope) {
        int cap = x->cap_rope ? 2 * x->cap_rope : 4;
        vk_rope *r = realloc(x->rope, sizeof *r * (size_t)cap);
        if (!r) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
        x->rope = r;
        x->cap_rope = cap;
    }
    size_t nf = (size_t)hd * (size_t)n_ctx;
    float *cs = malloc(sizeof(float) * nf);  /* (hd, n_ctx) */
    double *fr = malloc(sizeof(double) * (size_t)half);
    if (!cs || !fr) {
        free(cs);
        free(fr);
        return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    }
    const double base = n->p.rope_theta;
    for (int i = 0; i < half; i++) fr[i] = pow(base, -2.0 * i / hd);
    for (int p = 0; p < n_ctx; p++)
        for (int i = 0; i < half; i++) {
            const double th = (double)p * fr[i];
            cs[(size_t)p * hd + i] = (float)cos(th);
            cs[(size_t)p * hd + half + i] = (float)sin(th);
        }
    vk_rope *r = &x->rope[x->n_rope];
    r->hd = hd;
    r->n_ctx = n_ctx;
    r->theta = n->p.rope_theta;
    qg_status st = qg_vk_buf_new(&x->d, sizeof(float) * nf, false, &r->b, err);
    if (!st && (st = qg_vk_write(&x->d, &r->b, 0, cs, sizeof(float) * nf, err)))
        qg_vk_buf_free(&x->d, &r->b);
    free(cs);
    free(fr);
    if (!st) x->n_rope++;
    return st;
}

/* Pending accesses since the last barrier (for the hazard check). */
typedef struct access {
    VkBuffer buf;
    VkDeviceSize a, b;
    bool write;
} access;

/* Does dispatch d conflict with the pending accesses? */
static bool hazard(const qg_vk_dispatch *d, const access *acc, int n_acc) {
    for (int i = 0; i < d->n_bind; i++) {
        const bool w = (d->writes >> i) & 1u;
        const VkDeviceSize a = d->b[i].off, b = d->b[i].off + d->b[i].range;
        for (int j = 0; j < n_acc; j++)
            if (acc[j].buf == d->b[i].buf && a < acc[j].b && acc[j].a < b && (w || acc[j].write))
                return true;
    }
    return false;
}

static void barrier(VkCommandBuffer cb, VkPipelineStageFlags src, VkAccessFlags sa,
                    VkPipelineStageFlags dst, VkAccessFlags da) {
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER, .srcAccessMask = sa,
                          .dstAccessMask = da};
    vkCmdPipelineBarrier(cb, src, dst, 0, 1, &mb, 0, NULL, 0, NULL);
}

#define SHADER_RW (VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT)

/* Record partition p's command buffer; timed: a barrier and a timestamp
 * after each dispatch, so dispatch (and node) times do not overlap. */
static qg_status record_part(vk_exec *x, vk_graph *vg, int p, bool timed, qg_error *err) {
    vk_part *vp = &vg->parts[p];
    const qg_partition *part = &vg->g->parts[p];
    VkCommandBuffer cb = vp->cmd[timed];
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    QG_VK_CHECK(vkBeginCommandBuffer(cb, &bi));
    if (timed) {
        vkCmdResetQueryPool(cb, vp->qp, 0, (uint32_t)vp->nd + 1);
        vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, vp->qp, 0);
    }
    /* the host-written tensors into their device mirror (after earlier
     * submissions' shaders are done with it) */
    barrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, VK_PIPELINE_STAGE_TRANSFER_BIT, 0);
    const VkBufferCopy cp = {0, 0, vg->in_bytes};
    vkCmdCopyBuffer(cb, vg->io.buf, vg->in.buf, 1, &cp);
    /* earlier submissions' shader and transfer writes, and the host's */
    barrier(cb,
            VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT |
                VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
            VK_ACCESS_HOST_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_WRITE_BIT,
            VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_DRAW_INDIRECT_BIT,
            SHADER_RW | VK_ACCESS_INDIRECT_COMMAND_READ_BIT);
    access acc[4 * QG_VK_MAX_BIND * 8];
    int n_acc = 0, di = vp->d0;
    for (int node = part->first; node < part->first + part->n; node++) {
        /* the node's dispatches (none when fused into the one before) */
        for (; di < vp->d0 + vp->nd && vg->disp[di].node == node; di++) {
            const qg_vk_dispatch *d = &vg->disp[di];
            if (d->dev_ind.buf) { /* its counts were written by a shader */
                barrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_DRAW_INDIRECT_BIT,
                        SHADER_RW | VK_ACCESS_INDIRECT_COMMAND_READ_BIT);
                n_acc = 0;
                vp->n_barrier += !timed;
            } else if (hazard(d, acc, n_acc) || n_acc + d->n_bind > (int)QG_ARRAY_LEN(acc)) {
                barrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, SHADER_RW);
                n_acc = 0;
                vp->n_barrier += !timed;
            }
            vkCmdBindPipeline(cb, VK_PIPELINE_BIND_POINT_COMPUTE, d->pipe);
            vkCmdBindDescriptorSets(cb, VK_PIPELINE_BIND_POINT_COMPUTE, x->pipes.layout[d->n_bind],
                                    0, 1, &d->set, 0, NULL);
            if (d->push_bytes)
                vkCmdPushConstants(cb, x->pipes.layout[d->n_bind], VK_SHADER_STAGE_COMPUTE_BIT, 0,
                                   d->push_bytes, d->push);
            if (d->dev_ind.buf)
                vkCmdDispatchIndirect(cb, d->dev_ind.buf, d->dev_ind.off);
            else if (d->z_div && vg->g->n_tok_max > 1)
                vkCmdDispatchIndirect(cb, vg->ind.buf,
                                      sizeof(VkDispatchIndirectCommand) * (size_t)di);
            else
                vkCmdDispatch(cb, d->groups[0], d->groups[1], d->groups[2]);
            for (int k = 0; k < d->n_bind; k++)
                acc[n_acc++] = (access){d->b[k].buf, d->b[k].off, d->b[k].off + d->b[k].range,
                                        (d->writes >> k) & 1u};
            if (timed) {
                barrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, SHADER_RW);
                n_acc = 0;
                vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, vp->qp,
                                    (uint32_t)(di - vp->d0 + 1));
            }
        }
    }
    QG_ASSERT(di == vp->d0 + vp->nd);
    /* results to the host and to transfers (tensor_get, copies) */
    barrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
            VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
            VK_ACCESS_HOST_READ_BIT | VK_ACCESS_TRANSFER_READ_BIT);
    QG_VK_CHECK(vkEndCommandBuffer(cb));
    return QG_OK;
fail:
    return QG_ERR_BACKEND;
}

static void vk_release(void *self, qg_graph *g);

/* Decide which tensors live in the io buffer and lay it out, 256-aligned:
 * the host-written region [0, in_bytes) first (the step values at 0, then
 * inputs and copy destinations), then the host-read tensors (outputs, copy
 * sources).  Shaders read the host-written region from a device-local
 * mirror that each partition's command buffer refreshes first (so no
 * workgroup waits on a read across the bus); they write the host-read
 * tensors in place (posted writes).  Returns the io size. */
static VkDeviceSize plan_io(vk_graph *vg, VkDeviceSize *in_bytes) {
    const qg_graph *g = vg->g;
    VkDeviceSize top = 256; /* step */
    for (int t = 0; t < g->n_tensors; t++) vg->io_off[t] = NO_IO;
    for (int pass = 0; pass < 2; pass++) {
        for (int t = 0; t < g->n_tensors; t++) {
            const qg_tensor *ts = &g->tensors[t];
            if (ts->exec != vg->exec_index || vg->io_off[t] != NO_IO ||
                ts->role == QG_ROLE_WEIGHT || ts->role == QG_ROLE_KV)
                continue;
            bool in = ts->role == QG_ROLE_INPUT, out = ts->role == QG_ROLE_OUTPUT;
            for (int i = 0; i < g->n_nodes; i++)
                if (g->nodes[i].op == QG_OP_COPY) {
                    in |= g->nodes[i].out[0] == t;
                    out |= g->nodes[i].in[0] == t;
                }
            if (pass == 0 ? !in : !out) continue;
            vg->io_off[t] = top;
            top += qg_align_up(ts->nbytes ? ts->nbytes : 4, 256);
        }
        if (pass == 0) *in_bytes = top;
    }
    return top;
}

/* Decode graphs with folds: give the output of every add that folds into
 * the product before it (qg_vk_fold_add_resid) a range of its own in
 * vg->own, 256-aligned, instead of its memory-plan slot.  The plan may
 * place it over a tensor that dies at the product (the attention output,
 * the routing ids), and the folded product still reads those while it
 * writes the add's output.  A few n_embd rows per layer.  Host-visible
 * tensors (io) keep their place.  Returns the bytes (at least 4). */
static VkDeviceSize plan_own(vk_graph *vg, bool fold) {
    const qg_graph *g = vg->g;
    VkDeviceSize top = 0;
    for (int t = 0; t < g->n_tensors; t++) vg->own_off[t] = NO_IO;
    if (!fold || g->n_tok_max != 1) return 4;
    for (int p = 0; p < g->n_parts; p++) {
        const qg_partition *part = &g->parts[p];
        if (part->exec != vg->exec_index) continue;
        for (int i = part->first; i < part->first + part->n; i++) {
            if (qg_vk_fold_add_resid(g, i, part->first + part->n) < 0) continue;
            const int t = g->nodes[i + 1].out[0];
            const qg_tensor *ts = &g->tensors[t];
            if (ts->role != QG_ROLE_ACT || vg->io_off[t] != NO_IO || vg->own_off[t] != NO_IO)
                continue;
            vg->own_off[t] = top;
            top += qg_align_up(ts->nbytes ? ts->nbytes : 4, 256);
        }
    }
    return top ? top : 4;
}

static qg_status vk_compile(void *self, qg_graph *g, int e, qg_error *err) {
    vk_exec *x = self;
    vk_release(x, g);
    vk_graph *vg = find_graph(x, NULL);
    if (!vg) return qg_error_set(err, QG_ERR_BACKEND, "vulkan: too many graphs");
    memset(vg, 0, sizeof *vg);
    vg->g = g;
    vg->exec_index = e;
    x->cur = vg;
    qg_status st = QG_OK;
    vg->io_off = malloc(sizeof *vg->io_off * (size_t)QG_MAX(g->n_tensors, 1));
    vg->own_off = malloc(sizeof *vg->own_off * (size_t)QG_MAX(g->n_tensors, 1));
    vg->parts = calloc((size_t)QG_MAX(g->n_parts, 1), sizeof *vg->parts);
    vg->wids = malloc(sizeof *vg->wids * (size_t)QG_MAX(g->n_tensors, 1));
    if (!vg->io_off || !vg->own_off || !vg->parts || !vg->wids) {
        st = qg_error_set(err, QG_ERR_NOMEM, "out of memory");
        goto out;
    }
    size_t scratch = 4;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        if (n->exec != e || n->op == QG_OP_COPY) continue;
        if (!qg_vk_supports(&x->d, g, n)) {
            st = qg_error_set(err, QG_ERR_BACKEND, "vulkan: node %s (%s) placed here is unsupported",
                              n->name, qg_op_name(n->op));
            goto out;
        }
        scratch = QG_MAX(scratch, qg_vk_moe_scratch_bytes(g, n));
        for (int k = 0; k < n->n_in; k++) {
            const qg_tensor *t = &g->tensors[n->in[k]];
            if (t->role == QG_ROLE_WEIGHT && (st = use_weight(x, vg, t, err))) goto out;
            if (t->role == QG_ROLE_KV && t->offset + t->nbytes > x->kv.size) {
                st = qg_error_set(err, QG_ERR_BACKEND, "vulkan: KV arena too small for %s", t->name);
                goto out;
            }
        }
        if (n->op == QG_OP_ROPE && (st = make_rope(x, n, g->n_ctx, err))) goto out;
    }
    const VkDeviceSize io_bytes = plan_io(vg, &vg->in_bytes);
    const bool fold = !x->no_fold && !x->no_fuse;
    const VkDeviceSize own_bytes = plan_own(vg, fold);
    if ((st = qg_vk_buf_new(&x->d, io_bytes, true, &vg->io, err)) ||
        (st = qg_vk_buf_new(&x->d, vg->in_bytes, false, &vg->in, err)) ||
        (st = qg_vk_buf_new(&x->d, g->act_bytes[e], false, &vg->act, err)) ||
        (st = qg_vk_buf_new(&x->d, scratch, false, &vg->scratch, err)) ||
        (st = qg_vk_buf_new(&x->d, own_bytes, false, &vg->own, err))) {
        qg_error_prefix(err, "vulkan activations of the %s graph",
                        g->phase == QG_PHASE_DECODE ? "decode" : "prefill");
        goto out;
    }
    memset(vg->io.map, 0, vg->io.size);

    /* nodes -> dispatches */
    qg_vk_rec_ctx rc = {.d = &x->d, .g = g, .step = {vg->in.buf, 0, sizeof(int32_t) * QG_STEP_N},
                        .loc = tensor_loc, .self = x, .rope_table = rope_loc,
                        .moe_scratch = {vg->scratch.buf, 0, vg->scratch.size},
                        .fuse = !x->no_fuse, .fold = fold, .fast_mv = x->fast_mv,
                        .mv_rpt = x->mv_rpt, .mv_pf = x->mv_pf, .attn_tile = x->attn_tile,
                        .coopmat = x->d.coopmat || x->d.cm_emulate};
    size_t n_desc = 0;
    for (int p = 0; p < g->n_parts; p++) {
        const qg_partition *part = &g->parts[p];
        if (part->exec != e || g->nodes[part->first].op == QG_OP_COPY) continue;
        vg->parts[p].d0 = vg->n_disp;
        for (int i = part->first; i < part->first + part->n;)
            i += qg_vk_record_node(&rc, i, part->first + part->n, &vg->disp, &vg->n_disp,
                                   &vg->cap_disp);
        vg->parts[p].nd = vg->n_disp - vg->parts[p].d0;
    }
    for (int i = 0; i < vg->n_disp; i++) {
        qg_vk_dispatch *d = &vg->disp[i];
        n_desc += (size_t)d->n_bind;
        if (!(d->pipe = qg_vk_pipe_get(&x->d, &x->pipes, d->shader, d->n_bind, d->spec, err))) {
            st = QG_ERR_BACKEND;
            goto out;
        }
    }

    if ((st = qg_vk_buf_new(&x->d, sizeof(VkDispatchIndirectCommand) * (size_t)QG_MAX(vg->n_disp, 1),
                            true, &vg->ind, err)))
        goto out;

    /* descriptor sets, written once */
    if (vg->n_disp) {
        VkDescriptorPoolSize ps = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                   .descriptorCount = (uint32_t)n_desc};
        VkDescriptorPoolCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                                          .maxSets = (uint32_t)vg->n_disp, .poolSizeCount = 1,
                                          .pPoolSizes = &ps};
        QG_VK_CHECK(vkCreateDescriptorPool(x->d.dev, &pci, NULL, &vg->dpool));
    }
    for (int i = 0; i < vg->n_disp; i++) {
        qg_vk_dispatch *d = &vg->disp[i];
        VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                          .descriptorPool = vg->dpool, .descriptorSetCount = 1,
                                          .pSetLayouts = &x->pipes.dsl[d->n_bind]};
        QG_VK_CHECK(vkAllocateDescriptorSets(x->d.dev, &ai, &d->set));
        VkDescriptorBufferInfo bi[QG_VK_MAX_BIND];
        VkWriteDescriptorSet wr[QG_VK_MAX_BIND];
        for (int k = 0; k < d->n_bind; k++) {
            bi[k] = (VkDescriptorBufferInfo){d->b[k].buf, d->b[k].off, d->b[k].range};
            wr[k] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                           .dstSet = d->set, .dstBinding = (uint32_t)k,
                                           .descriptorCount = 1,
                                           .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                           .pBufferInfo = &bi[k]};
        }
        vkUpdateDescriptorSets(x->d.dev, (uint32_t)d->n_bind, wr, 0, NULL);
    }

    /* one command buffer per partition (and a timed one) */
    if (x->d.timestamps && vg->n_disp > 0 &&
        (!(vg->disp_ns = calloc((size_t)vg->n_disp, sizeof *vg->disp_ns)) ||
         !(vg->disp_runs = calloc((size_t)vg->n_disp, sizeof *vg->disp_runs)))) {
        st = qg_error_set(err, QG_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int p = 0; p < g->n_parts; p++) {
        const qg_partition *part = &g->parts[p];
        if (part->exec != e || g->nodes[part->first].op == QG_OP_COPY) continue;
        vk_part *vp = &vg->parts[p];
        const int variants = x->d.timestamps ? 2 : 1;
        VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                           .commandPool = x->d.pool,
                                           .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                           .commandBufferCount = (uint32_t)variants};
        QG_VK_CHECK(vkAllocateCommandBuffers(x->d.dev, &cai, vp->cmd));
        if (variants == 2) {
            VkQueryPoolCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                         .queryType = VK_QUERY_TYPE_TIMESTAMP,
                                         .queryCount = (uint32_t)vp->nd + 1};
            QG_VK_CHECK(vkCreateQueryPool(x->d.dev, &qci, NULL, &vp->qp));
            if (!(vp->ts = malloc(sizeof(uint64_t) * (size_t)(vp->nd + 1)))) {
                st = qg_error_set(err, QG_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
        for (int v = 0; v < variants; v++)
            if ((st = record_part(x, vg, p, v == 1, err))) goto out;
    }
    if (qg_debug_enabled("vulkan")) {
        int nn = 0, nb = 0;
        for (int p = 0; p < g->n_parts; p++)
            if (vg->parts[p].cmd[0]) {
                nn += g->parts[p].n;
                nb += vg->parts[p].n_barrier;
            }
        fprintf(stderr, "vulkan: %s graph: %d nodes, %d dispatches, %d barriers%s%s\n",
                g->phase == QG_PHASE_DECODE ? "decode" : "prefill", nn, vg->n_disp, nb,
                x->no_fuse ? " (QG_VK_NO_FUSE)" : x->no_fold ? " (QG_VK_FOLD=0)" : "",
                x->fast_mv && g->n_tok_max == 1 ? " (QG_VK_MV: fast decode products)" : "");
    }
out:
    x->cur = NULL;
    if (st) vk_release(x, g);
    return st;
fail:
    st = QG_ERR_BACKEND;
    goto out;
}

/* Under QG_DEBUG=vulkan, graph vg's dispatch times over its timed runs,
 * summed by (node op, shader): calls a run, µs a run, µs a dispatch. */
static void print_dispatch_times(const vk_graph *vg) {
    if (!vg->disp_runs || !qg_debug_enabled("vulkan")) return;
    int runs = 0;
    double all = 0;
    for (int i = 0; i < vg->n_disp; i++) {
        runs = QG_MAX(runs, vg->disp_runs[i]);
        all += vg->disp_ns[i];
    }
    if (!runs) return;
    const qg_graph *g = vg->g;
    fprintf(stderr, "vulkan: %s graph, dispatch times over %d timed runs (%.1f us a run):\n",
            g->phase == QG_PHASE_DECODE ? "decode" : "prefill", runs, all / 1e3 / runs);
    fprintf(stderr, "vulkan:   %-12s %-16s %9s %12s %12s %6s\n", "node op", "shader",
            "calls/run", "us/run", "us/call", "%");
    /* each (op, shader) pair once, at its first dispatch */
    for (int i = 0; i < vg->n_disp; i++) {
        const qg_op op = g->nodes[vg->disp[i].node].op;
        const qg_vk_shader sh = vg->disp[i].shader;
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen = vg->disp[j].shader == sh && g->nodes[vg->disp[j].node].op == op;
        if (seen) continue;
        double ns = 0;
        int calls = 0;
        for (int j = i; j < vg->n_disp; j++)
            if (vg->disp[j].shader == sh && g->nodes[vg->disp[j].node].op == op) {
                ns += vg->disp_ns[j];
                calls += vg->disp_runs[j];
            }
        if (!calls) continue;
        fprintf(stderr, "vulkan:   %-12s %-16s %9.1f %12.1f %12.2f %6.1f\n", qg_op_name(op),
                qg_vk_shader_name(sh), (double)calls / runs, ns / 1e3 / runs, ns / 1e3 / calls,
                all > 0 ? 100.0 * ns / all : 0.0);
    }
}

static void vk_release(void *self, qg_graph *g) {
    vk_exec *x = self;
    vk_graph *vg = find_graph(x, g);
    if (!vg) return;
    vk_sync(x, NULL);
    print_dispatch_times(vg);
    free(vg->disp_ns);
    free(vg->disp_runs);
    if (vg->parts)
        for (int p = 0; p < g->n_parts; p++) {
            vk_part *vp = &vg->parts[p];
            for (int v = 0; v < 2; v++)
                if (vp->cmd[v]) vkFreeCommandBuffers(x->d.dev, x->d.pool, 1, &vp->cmd[v]);
            if (vp->qp) vkDestroyQueryPool(x->d.dev, vp->qp, NULL);
            free(vp->ts);
        }
    if (vg->dpool) vkDestroyDescriptorPool(x->d.dev, vg->dpool, NULL);
    qg_vk_buf_free(&x->d, &vg->act);
    qg_vk_buf_free(&x->d, &vg->io);
    qg_vk_buf_free(&x->d, &vg->in);
    qg_vk_buf_free(&x->d, &vg->scratch);
    qg_vk_buf_free(&x->d, &vg->own);
    qg_vk_buf_free(&x->d, &vg->ind);
    for (int i = 0; i < vg->n_wids; i++) {
        vk_weight *w = &x->w[vg->wids[i]];
        if (--w->refs == 0) {
            qg_vk_buf_free(&x->d, &w->b);
            w->data = NULL;
        }
    }
    free(vg->wids);
    free(vg->io_off);
    free(vg->own_off);
    free(vg->disp);
    free(vg->parts);
    memset(vg, 0, sizeof *vg);
}

/* ---- run ------------------------------------------------------------------ */

static qg_status vk_run(void *self, qg_graph *g, int part, const int32_t *step, qg_profile *prof,
                        qg_error *err) {
    vk_exec *x = self;
    vk_graph *vg = find_graph(x, g);
    if (!vg || !vg->parts[part].cmd[0])
        return qg_error_set(err, QG_ERR_BACKEND, "vulkan: partition %d was not compiled", part);
    qg_status st = vk_sync(x, err);
    if (st) return st;
    const vk_part *vp = &vg->parts[part];
    memcpy(vg->io.map, step, sizeof(int32_t) * QG_STEP_N);
    if (g->n_tok_max > 1) { /* workgroup counts of the token dimension */
        const uint64_t n_tok = (uint64_t)step[QG_STEP_N_TOK];
        VkDispatchIndirectCommand *ic = vg->ind.map;
        for (int i = vp->d0; i < vp->d0 + vp->nd; i++) {
            const qg_vk_dispatch *d = &vg->disp[i];
            if (!d->z_div) continue;
            ic[i].x = d->groups[0];
            ic[i].y = d->groups[1];
            ic[i].z = (uint32_t)((n_tok * d->z_mul + d->z_div - 1) / d->z_div);
        }
    }
    const bool timed = prof && vp->qp;
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1,
                       .pCommandBuffers = &vp->cmd[timed]};
    const uint64_t t0 = qg_time_ns();
    QG_VK_CHECK(vkQueueSubmit(x->d.queue, 1, &si, x->fence));
    x->in_flight = true;
    if (!prof) return QG_OK;
    if ((st = vk_sync(x, err))) return st;
    const qg_partition *pp = &g->parts[part];
    if (!timed) { /* no timestamps on this queue: the partition as one span */
        const uint64_t t1 = qg_time_ns();
        for (int i = 0; i < pp->n; i++)
            qg_profile_add(prof, g, pp->first + i, step[QG_STEP_N_TOK], step[QG_STEP_N_KV],
                           vg->exec_index, t0 + (t1 - t0) * (uint64_t)i / (uint64_t)pp->n,
                           t0 + (t1 - t0) * (uint64_t)(i + 1) / (uint64_t)pp->n);
        return QG_OK;
    }
    const int nq = vp->nd + 1;
    QG_VK_CHECK(vkGetQueryPoolResults(x->d.dev, vp->qp, 0, (uint32_t)nq,
                                      sizeof(uint64_t) * (size_t)nq, vp->ts, sizeof(uint64_t),
                                      VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT));
    const double per = x->d.props.limits.timestampPeriod; /* ns per tick */
    for (int j = 0; j < vp->nd; j++) { /* dispatch d0 + j: queries j .. j+1 */
        vg->disp_ns[vp->d0 + j] += (double)(vp->ts[j + 1] - vp->ts[j]) * per;
        vg->disp_runs[vp->d0 + j]++;
    }
    /* node i spans from the end of the node before to its last dispatch
     * (zero length when it has none: fused into the node before) */
    int di = vp->d0, q = 0;
    for (int i = 0; i < pp->n; i++) {
        const int q0 = q;
        while (di < vp->d0 + vp->nd && vg->disp[di].node == pp->first + i) q = ++di - vp->d0;
        const uint64_t a = t0 + (uint64_t)((double)(vp->ts[q0] - vp->ts[0]) * per);
        const uint64_t b = t0 + (uint64_t)((double)(vp->ts[q] - vp->ts[0]) * per);
        qg_profile_add(prof, g, pp->first + i, step[QG_STEP_N_TOK], step[QG_STEP_N_KV],
                       vg->exec_index, a, b);
    }
    return QG_OK;
fail:
    return QG_ERR_BACKEND;
}

/* ---- tensor access ---------------------------------------------------------- */

static void *vk_tensor_host(void *self, const qg_graph *g, int t) {
    vk_graph *vg = find_graph(self, g);
    if (!vg || t < 0 || t >= g->n_tensors || vg->io_off[t] == NO_IO) return NULL;
    return (char *)vg->io.map + vg->io_off[t];
}

/* Buffer and offset of tensor t for host access; NULL for weights. */
static const qg_vk_buf *access_loc(vk_exec *x, vk_graph *vg, int t, VkDeviceSize *off) {
    const qg_tensor *ts = &vg->g->tensors[t];
    if (vg->io_off[t] != NO_IO) {
        *off = vg->io_off[t];
        return &vg->io;
    }
    if (vg->own_off[t] != NO_IO) {
        *off = vg->own_off[t];
        return &vg->own;
    }
    if (ts->exec != vg->exec_index) return NULL;
    if (ts->role == QG_ROLE_KV) {
        *off = ts->offset;
        return x->kv.buf && ts->offset + ts->nbytes <= x->kv.size ? &x->kv : NULL;
    }
    if (ts->role == QG_ROLE_ACT && ts->first_use >= 0) {
        *off = ts->offset;
        return &vg->act;
    }
    return NULL;
}

static qg_status vk_tensor_set(void *self, const qg_graph *g, int t, const void *src, size_t off,
                               size_t n, qg_error *err) {
    vk_exec *x = self;
    vk_graph *vg = find_graph(x, g);
    VkDeviceSize o = 0;
    const qg_vk_buf *b = vg && t >= 0 && t < g->n_tensors ? access_loc(x, vg, t, &o) : NULL;
    if (!b || off + n > g->tensors[t].nbytes)
        return qg_error_set(err, QG_ERR_BACKEND, "vulkan: bad write to tensor %s",
                            t >= 0 && t < g->n_tensors ? g->tensors[t].name : "?");
    qg_status st = vk_sync(x, err);
    if (st) return st;
    return qg_vk_write(&x->d, b, o + off, src, n, err);
}

static qg_status vk_tensor_get(void *self, const qg_graph *g, int t, void *dst, size_t off,
                               size_t n, qg_error *err) {
    vk_exec *x = self;
    vk_graph *vg = find_graph(x, g);
    VkDeviceSize o = 0;
    const qg_vk_buf *b = vg && t >= 0 && t < g->n_tensors ? access_loc(x, vg, t, &o) : NULL;
    if (!b || off + n > g->tensors[t].nbytes)
        return qg_error_set(err, QG_ERR_BACKEND, "vulkan: bad read of tensor %s",
                            t >= 0 && t < g->n_tensors ? g->tensors[t].name : "?");
    qg_status st = vk_sync(x, err);
    if (st) return st;
    return qg_vk_read(&x->d, b, o + off, dst, n, err);
}

/* ---- life ----------------------------------------------------------------- */

static void vk_free(void *self) {
    vk_exec *x = self;
    if (!x) return;
    if (x->d.dev) {
        vk_sync(x, NULL);
        for (int i = 0; i < MAX_GRAPHS; i++)
            if (x->graphs[i].g) vk_release(x, x->graphs[i].g);
        for (int i = 0; i < x->n_w; i++) qg_vk_buf_free(&x->d, &x->w[i].b);
        for (int i = 0; i < x->n_rope; i++) qg_vk_buf_free(&x->d, &x->rope[i].b);
        qg_vk_buf_free(&x->d, &x->kv);
        qg_vk_pipes_free(&x->d, &x->pipes);
        if (x->fence) vkDestroyFence(x->d.dev, x->fence, NULL);
    }
    free(x->w);
    free(x->rope);
    qg_vk_dev_close(&x->d);
    free(x);
}

static const qg_exec_i VK_EXEC = {
    .name = "vulkan",
    .supports = vk_supports,
    .mem_available = vk_mem_available,
    .kv_alloc = vk_kv_alloc,
    .compile = vk_compile,
    .run = vk_run,
    .tensor_set = vk_tensor_set,
    .tensor_get = vk_tensor_get,
    .tensor_host = vk_tensor_host,
    .sync = vk_sync,
    .release = vk_release,
    .free = vk_free,
    .host_alloc = NULL,
    .host_free = NULL,
};

static bool env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

qg_status qg_exec_vulkan_new_ex(const qg_exec_opts *o, const qg_vk_opts *vo, qg_exec *out,
                                qg_error *err) {
    qg_vk_opts opts = {0};
    if (vo) opts = *vo;
    else {
        opts.validation = env_on("QG_VK_VALIDATION");
        opts.sync_validation = opts.validation && !strcmp(getenv("QG_VK_VALIDATION"), "2");
        opts.no_subgroup = env_on("QG_VK_NO_SUBGROUP");
        const char *fold = getenv("QG_VK_FOLD");
        opts.no_fold = fold && !strcmp(fold, "0");
        opts.fast_mv = env_on("QG_VK_MV");
        const char *rpt = getenv("QG_VK_MV_RPT");
        opts.mv_rpt = rpt ? atoi(rpt) : 0;
        opts.mv_pf = env_on("QG_VK_MV_PF");
        opts.attn_tile = env_on("QG_VK_ATTN_TILE");
        opts.coopmat = env_on("QG_VK_CM");
        opts.cm_emulate = opts.coopmat && !strcmp(getenv("QG_VK_CM"), "emulate");
    }
    if (opts.mv_rpt < 0 || opts.mv_rpt > 8)
        return qg_error_set(err, QG_ERR_ARG, "vulkan: QG_VK_MV_RPT=%d: rows per row group are 1..8",
                            opts.mv_rpt);
    vk_exec *x = calloc(1, sizeof *x);
    if (!x) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    qg_status st = qg_vk_dev_open(&x->d, o ? o->device : -1, &opts, err);
    if (st) {
        free(x);
        return st;
    }
    if ((st = qg_vk_pipes_init(&x->d, &x->pipes, err))) goto fail_st;
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    QG_VK_CHECK(vkCreateFence(x->d.dev, &fci, NULL, &x->fence));
    x->no_fuse = env_on("QG_VK_NO_FUSE");
    x->no_fold = opts.no_fold;
    x->fast_mv = opts.fast_mv;
    x->mv_rpt = (uint32_t)opts.mv_rpt;
    x->mv_pf = opts.mv_pf;
    x->attn_tile = opts.attn_tile;
    if (qg_debug_enabled("vulkan"))
        fprintf(stderr, "vulkan: %s; fast decode products (QG_VK_MV) %s; tiled prefill attention (QG_VK_ATTN_TILE) %s; cooperative-matrix prefill products (QG_VK_CM) %s\n",
                x->d.desc,
                !x->fast_mv ? "off"
                : x->mv_rpt ? (x->mv_pf ? "on, fixed rows per group, pipelined" : "on, fixed rows per group")
                : x->mv_pf ? "on, pipelined" : "on",
                x->attn_tile ? "on" : "off",
                x->d.coopmat ? "on" : x->d.cm_emulate ? "emulated"
                : opts.coopmat ? "asked for, not available" : "off");
    out->i = &VK_EXEC;
    out->self = x;
    return QG_OK;
fail:
    st = QG_ERR_BACKEND;
fail_st:
    vk_free(x);
    return st;
}

qg_status qg_exec_vulkan_new(const qg_exec_opts *o, qg_exec *out, qg_error *err) {
    return qg_exec_vulkan_new_ex(o, NULL, out, err);
}

size_t qg_exec_vulkan_messages(const qg_exec *e) {
    QG_ASSERT(e && e->i == &VK_EXEC);
    return ((const vk_exec *)e->self)->d.n_messages;
}

const char *qg_exec_vulkan_device_name(const qg_exec *e) {
    QG_ASSERT(e && e->i == &VK_EXEC);
    return ((const vk_exec *)e->self)->d.desc;
}

int qg_exec_vulkan_counts(const qg_exec *e, const qg_graph *g, int *n_barrier) {
    QG_ASSERT(e && e->i == &VK_EXEC);
    vk_graph *vg = find_graph(e->self, g);
    if (!vg) return -1;
    int nb = 0;
    for (int p = 0; p < g->n_parts; p++)
        if (vg->parts[p].cmd[0]) nb += vg->parts[p].n_barrier;
    if (n_barrier) *n_barrier = nb;
    return vg->n_disp;
}
