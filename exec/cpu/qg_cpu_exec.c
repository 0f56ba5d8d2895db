/* qg_cpu_exec.c - the CPU executor: a persistent thread pool running the
 * ops/cpu kernels node by node over one host arena per graph.
 *
 * compile() allocates the graph's activation arena and the scratch the
 * kernels asked for (qg_cpu_op_scratch, worst case) and fills the address
 * table; run() only dispatches: nothing is allocated per step. */
#include "../../ops/cpu/qg_cpu_ops.h"
#include "../qg_exec.h"

#include <stdlib.h>
#include <string.h>

#define QG_CPU_MAX_GRAPHS 8

/* Per-graph state made by compile(). */
typedef struct cpu_graph {
    qg_graph *g;
    int exec_index;
    void *arena;     /* act_bytes[exec_index] */
    void **addr;     /* (n_tensors) host address of every tensor */
    float *scratch;  /* (n_threads, scratch_floats) */
    size_t scratch_floats;
    void *shared;    /* shared_bytes */
    size_t shared_bytes;
} cpu_graph;

typedef struct cpu_exec {
    qg_threadpool *tp;
    int n_threads;
    qg_quant_kernels qk;
    void *kv;        /* the context's KV arena */
    size_t kv_bytes;
    cpu_graph graphs[QG_CPU_MAX_GRAPHS];
} cpu_exec;

static cpu_graph *find_graph(cpu_exec *c, const qg_graph *g) {
    for (int i = 0; i < QG_CPU_MAX_GRAPHS; i++)
        if (c->graphs[i].g == g) return &c->graphs[i];
    return NULL;
}

static bool cpu_supports(void *self, const qg_graph *g, const qg_node *n) {
    (void)self;
    return qg_cpu_op_supports(g, n);
}

static qg_status cpu_kv_alloc(void *self, size_t bytes, qg_error *err) {
    cpu_exec *c = self;
    free(c->kv);
    c->kv = aligned_alloc(256, qg_align_up(bytes ? bytes : 1, 256));
    if (!c->kv)
        return qg_error_set(err, QG_ERR_NOMEM, "cpu: cannot allocate the KV cache (%.2f GiB)",
                            bytes / 1073741824.0);
    memset(c->kv, 0, bytes);
    c->kv_bytes = bytes;
    return QG_OK;
}

static void cpu_release(void *self, qg_graph *g) {
    cpu_graph *cg = find_graph(self, g);
    if (!cg) return;
    free(cg->arena);
    free(cg->addr);
    free(cg->scratch);
    free(cg->shared);
    memset(cg, 0, sizeof *cg);
}

static qg_status cpu_compile(void *self, qg_graph *g, int exec_index, qg_error *err) {
    cpu_exec *c = self;
    cpu_release(c, g);
    cpu_graph *cg = find_graph(c, NULL);
    if (!cg) return qg_error_set(err, QG_ERR_BACKEND, "cpu: too many graphs");
    cg->g = g;
    cg->exec_index = exec_index;
    size_t act = g->act_bytes[exec_index];
    cg->arena = aligned_alloc(256, qg_align_up(act ? act : 1, 256));
    cg->addr = calloc((size_t)g->n_tensors, sizeof *cg->addr);
    if (!cg->arena || !cg->addr) goto oom;
    for (int i = 0; i < g->n_tensors; i++) {
        qg_tensor *t = &g->tensors[i];
        if (t->role == QG_ROLE_WEIGHT) cg->addr[i] = (void *)(uintptr_t)t->data;
        else if (t->exec != exec_index || (t->role == QG_ROLE_ACT && t->first_use < 0)) continue;
        else if (t->role == QG_ROLE_KV) {
            if (!c->kv || t->offset + t->nbytes > c->kv_bytes)
                return qg_error_set(err, QG_ERR_BACKEND, "cpu: KV arena too small for %s", t->name);
            cg->addr[i] = (char *)c->kv + t->offset;
        } else {
            cg->addr[i] = (char *)cg->arena + t->offset;
        }
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        if (n->exec != exec_index) continue;
        size_t pt = 0, sh = 0;
        qg_cpu_op_scratch(g, n, c->n_threads, &pt, &sh);
        cg->scratch_floats = QG_MAX(cg->scratch_floats, pt);
        cg->shared_bytes = QG_MAX(cg->shared_bytes, sh);
    }
    cg->scratch_floats = qg_align_up(cg->scratch_floats, 16);
    cg->scratch = aligned_alloc(64, sizeof(float) * (cg->scratch_floats * (size_t)c->n_threads + 16));
    cg->shared = aligned_alloc(64, qg_align_up(cg->shared_bytes + 64, 64));
    if (!cg->scratch || !cg->shared) goto oom;
    return QG_OK;
oom:
    cpu_release(c, g);
    return qg_error_set(err, QG_ERR_NOMEM, "cpu: cannot allocate the activation arena (%.1f MiB)",
                        act / 1048576.0);
}

static void run_node_task(void *arg, int ith, int nth) {
    qg_cpu_op_run(arg, ith, nth);
}

static qg_status cpu_run(void *self, qg_graph *g, int part, const int32_t *step,
                         qg_profile *prof, qg_error *err) {
    cpu_exec *c = self;
    cpu_graph *cg = find_graph(c, g);
    if (!cg) return qg_error_set(err, QG_ERR_BACKEND, "cpu: graph not compiled");
    const qg_partition *p = &g->parts[part];
    qg_cpu_op_args a = {
        .g = g, .addr = cg->addr, .n_tok = step[QG_STEP_N_TOK], .qk = &c->qk,
        .tp = c->tp, .scratch = cg->scratch, .scratch_floats = cg->scratch_floats,
        .shared = cg->shared, .shared_bytes = cg->shared_bytes,
    };
    for (int i = p->first; i < p->first + p->n; i++) {
        a.n = &g->nodes[i];
        uint64_t t0 = prof ? qg_time_ns() : 0;
        qg_threadpool_run(c->tp, run_node_task, &a);
        if (prof)
            qg_profile_add(prof, g, i, a.n_tok, step[QG_STEP_N_KV], cg->exec_index, t0,
                           qg_time_ns());
    }
    return QG_OK;
}

static void *cpu_tensor_host(void *self, const qg_graph *g, int t) {
    cpu_graph *cg = find_graph(self, g);
    return cg ? cg->addr[t] : NULL;
}

static qg_status cpu_tensor_set(void *self, const qg_graph *g, int t, const void *src,
                                size_t off, size_t n, qg_error *err) {
    char *dst = cpu_tensor_host(self, g, t);
    if (!dst || off + n > g->tensors[t].nbytes)
        return qg_error_set(err, QG_ERR_BACKEND, "cpu: bad write to tensor %s", g->tensors[t].name);
    memcpy(dst + off, src, n);
    return QG_OK;
}

static qg_status cpu_tensor_get(void *self, const qg_graph *g, int t, void *dst,
                                size_t off, size_t n, qg_error *err) {
    const char *src = cpu_tensor_host(self, g, t);
    if (!src || off + n > g->tensors[t].nbytes)
        return qg_error_set(err, QG_ERR_BACKEND, "cpu: bad read of tensor %s", g->tensors[t].name);
    memcpy(dst, src + off, n);
    return QG_OK;
}

static qg_status cpu_sync(void *self, qg_error *err) {
    (void)self;
    (void)err;
    return QG_OK;
}

static void cpu_free(void *self) {
    cpu_exec *c = self;
    if (!c) return;
    for (int i = 0; i < QG_CPU_MAX_GRAPHS; i++)
        if (c->graphs[i].g) cpu_release(c, c->graphs[i].g);
    qg_threadpool_free(c->tp);
    free(c->kv);
    free(c);
}

static const qg_exec_i CPU_EXEC = {
    .name = "cpu",
    .supports = cpu_supports,
    .mem_available = NULL,
    .kv_alloc = cpu_kv_alloc,
    .compile = cpu_compile,
    .run = cpu_run,
    .tensor_set = cpu_tensor_set,
    .tensor_get = cpu_tensor_get,
    .tensor_host = cpu_tensor_host,
    .sync = cpu_sync,
    .release = cpu_release,
    .free = cpu_free,
    .host_alloc = NULL,
    .host_free = NULL,
};

qg_status qg_exec_cpu_new(const qg_exec_opts *o, qg_exec *out, qg_error *err) {
    int n = o && o->n_threads > 0 ? o->n_threads : 1;
    if (n > 1024) return qg_error_set(err, QG_ERR_ARG, "-t %d: too many threads", n);
    cpu_exec *c = calloc(1, sizeof *c);
    if (!c) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    c->n_threads = n;
    c->qk = qg_quant_kernels_best();
    c->tp = qg_threadpool_new(n);
    if (!c->tp) {
        free(c);
        return qg_error_set(err, QG_ERR_BACKEND, "cpu: cannot start %d threads", n);
    }
    out->i = &CPU_EXEC;
    out->self = c;
    return QG_OK;
}
