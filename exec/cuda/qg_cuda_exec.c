/* qg_cuda_exec.c - the CUDA executor: weights uploaded once in their GGUF
 * formats, one activation arena per graph from the memory plan, the
 * context's KV arena, and the partitions launched on one stream, each
 * captured once into a CUDA Graph and replayed for every later step.
 *
 * compile() (pass 5) does everything that can be done once: it uploads the
 * weights its nodes read (deduplicated by host address across all graphs of
 * the executor; a tied lm_head is the embedding, uploaded once), allocates
 * the arena, the scratch and the zeroed counters its kernels asked for
 * (qg_cuda_op_needs), folds rmsnorm nodes into the product that consumes
 * them and add nodes into the product that feeds them (decode graphs; see
 * fold_nodes), and resolves every node into a qg_cuda_launch.
 *
 * run() launches a partition's nodes in order.  Without a profile, the
 * first run of a partition is captured into a CUDA Graph (stream capture,
 * logged under QG_DEBUG=cuda) and every run replays it: the kernels read
 * token ids, positions and the step (live tokens, KV length) from device
 * memory, so one capture serves every step and there is never a reason to
 * capture again.  With a profile, the nodes are launched plainly with a
 * pair of events around each.  Nothing in a step synchronizes with the
 * host; tensor_get (the logits) waits for the stream.
 *
 * On sm_90 kernels are launched with programmatic dependent launch: a
 * kernel's launch and its weight prefetch overlap the previous kernel's
 * tail, and it waits for that kernel's writes before reading activations.
 *
 * Environment: QG_CUDA_GRAPH=0 launches plainly, QG_CUDA_FUSE=0 keeps every
 * node (also the rope/KV-append fold), QG_CUDA_PDL=0 turns off
 * programmatic dependent launch, QG_CUDA_F32_PREFILL=1 makes prefill
 * products exact f32, QG_CUDA_I8=0 turns off the integer tensor-core decode
 * products (Q4_K / Q6_K decode then runs the f32 kernels), QG_CUDA_ATTN_CTAS=N
 * (1..8, default 1) sets how many CTAs per multiprocessor the decode
 * attention's split over cache rows aims at, QG_CUDA_RPART=1 has the
 * attention-output projection write router partials that the next MoE
 * launch sums instead of its router's grid barrier (plan_router_partials).
 */
#include "../../graph/qg_rope.h"
#include "../../ops/cuda/qg_cuda_ops.h"
#include "../qg_exec.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QG_CUDA_MAX_GRAPHS 8
#define STAGING_BYTES ((size_t)8 << 20) /* pinned host buffer for small copies */
#define QG_CUDA_MAX_PINNED 4 /* host blocks cuda_host_alloc hands out at once */
#define DEV_ALIGN 256

/* Fill err for a failed CUDA call, naming the call and where it was. */
static qg_status cu_fail(qg_error *err, cudaError_t e, const char *what, const char *file,
                         int line) {
    return qg_error_set(err, QG_ERR_BACKEND, "cuda: %s failed at %s:%d: %s (%s)", what, file, line,
                        cudaGetErrorName(e), cudaGetErrorString(e));
}

/* Check a CUDA call; on failure set st and err and jump to fail. */
#define QG_CUDA_TRY(call)                                                        \
    do {                                                                         \
        cudaError_t e_ = (call);                                                 \
        if (e_ != cudaSuccess) {                                                 \
            st = cu_fail(err, e_, #call, __FILE__, __LINE__);                    \
            goto fail;                                                           \
        }                                                                        \
    } while (0)

/* Check a CUDA call whose failure is a bug (teardown, queries). */
#define QG_CUDA_CHECK(call)                                                      \
    do {                                                                         \
        cudaError_t e_ = (call);                                                 \
        if (e_ != cudaSuccess)                                                   \
            QG_ABORT("cuda: %s: %s (%s)", #call, cudaGetErrorName(e_),           \
                     cudaGetErrorString(e_));                                    \
    } while (0)

typedef struct cuda_weight {
    const void *host;
    void *dev;
    size_t bytes;
    int pool; /* index into cuda_exec.pools */
} cuda_weight;

/* One allocation of uploaded weights, held by the graphs that read any of
 * them (freed with its table entries when the last one is released, so a
 * host address reused after a model is freed never finds stale data). */
typedef struct cuda_pool {
    void *mem;
    size_t bytes;
    int refs;
} cuda_pool;

/* Per-graph state made by compile(). */
typedef struct cuda_graph {
    qg_graph *g;
    int exec_index;
    void *arena;           /* act_bytes[exec_index] */
    void **dev;            /* (n_tensors) device address of every tensor */
    void *scratch;         /* max over nodes of qg_cuda_op_needs */
    size_t scratch_bytes;
    int *counters;         /* (n_counters) zero between runs */
    int n_counters;
    int32_t *step_dev;     /* the step input as the kernels read it */
    bool step_own;         /* step_dev is ours (the step tensor lives elsewhere) */
    double *rope;          /* device rope tables, (head_dim/2) per rope node */
    float *rope_cs;        /* (head_dim, n_ctx): the CPU's cos | sin table of
                              every position, for the rope nodes with the
                              first rope node's base and head_dim */
    void *extra;           /* outputs of folded adds that need their own memory */
    float *rpart;          /* (tiles, X + 1) router partials (o.rpart): written
                              by a matmul, read by the moe_fused launch right
                              after it; one buffer serves every layer */
    qg_cuda_launch *L;     /* (n_nodes) */
    bool *skip;            /* (n_nodes) folded into a neighbour */
    cudaGraphExec_t *gexec; /* (n_parts) captured partitions */
    cudaEvent_t *ev;       /* (2 * n_nodes + 1) profile events, made on first use */
    int *pool_used;        /* weight pools this graph holds a reference on */
    int n_pool_used;
} cuda_graph;

typedef struct cuda_exec {
    int device;
    char name[256];
    size_t total_mem;
    cudaStream_t stream;
    qg_cuda_opts o;
    bool use_graphs, fuse, log;
    void *kv;
    size_t kv_bytes;
    cuda_weight *w; /* sorted by host address */
    int n_w, cap_w;
    cuda_pool *pools; /* weight allocations */
    int n_pools, cap_pools;
    size_t weight_bytes;
    unsigned char *staging; /* pinned, STAGING_BYTES */
    size_t staging_off;
    cuda_graph graphs[QG_CUDA_MAX_GRAPHS];
    struct { /* pinned host blocks handed out by cuda_host_alloc */
        void *p;
        size_t n;
    } pinned[QG_CUDA_MAX_PINNED];
} cuda_exec;

static cuda_graph *find_graph(cuda_exec *c, const qg_graph *g) {
    for (int i = 0; i < QG_CUDA_MAX_GRAPHS; i++)
        if (c->graphs[i].g == g) return &c->graphs[i];
    return NULL;
}

static bool env_is(const char *name, const char *v) {
    const char *e = getenv(name);
    return e && strcmp(e, v) == 0;
}

/* ---- weights ---------------------------------------------------------- */

/* Integer value of environment variable name in [lo, hi], else def. */
static int env_int(const char *name, int def, int lo, int hi) {
    const char *e = getenv(name);
    if (!e || !*e) return def;
    char *end = NULL;
    const long v = strtol(e, &end, 10);
    return *end || v < lo || v > hi ? def : (int)v;
}

static int weight_find(const cuda_exec *c, const void *host) {
    int lo = 0, hi = c->n_w - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        const char *h = c->w[mid].host;
        if (h == (const char *)host) return mid;
        if (h < (const char *)host) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int cmp_weight(const void *a, const void *b) {
    const char *x = ((const cuda_weight *)a)->host, *y = ((const cuda_weight *)b)->host;
    return x < y ? -1 : x > y;
}

/* Upload every weight read by g's nodes on executor e that no earlier
 * compile uploaded, into one new allocation.  Weights sharing a host
 * address are one upload.  On failure nothing new stays allocated. */
static qg_status upload_weights(cuda_exec *c, const qg_graph *g, int e, qg_error *err) {
    qg_status st = QG_OK;
    cuda_weight *nw = malloc(sizeof *nw * (size_t)(g->n_tensors + 1));
    void *pool = NULL;
    int n = 0;
    if (!nw) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *nd = &g->nodes[i];
        if (nd->exec != e) continue;
        for (int k = 0; k < nd->n_in; k++) {
            const qg_tensor *t = &g->tensors[nd->in[k]];
            if (t->role != QG_ROLE_WEIGHT || weight_find(c, t->data) >= 0) continue;
            nw[n++] = (cuda_weight){t->data, NULL, t->nbytes, -1};
        }
    }
    qsort(nw, (size_t)n, sizeof *nw, cmp_weight);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m && nw[m - 1].host == nw[i].host) {
            nw[m - 1].bytes = QG_MAX(nw[m - 1].bytes, nw[i].bytes);
            continue;
        }
        nw[m++] = nw[i];
    }
    size_t total = 0;
    for (int i = 0; i < m; i++) total += qg_align_up(nw[i].bytes, DEV_ALIGN);
    if (m == 0) goto done;
    cudaError_t ce = cudaMalloc(&pool, total);
    if (ce != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        st = qg_error_set(err, QG_ERR_NOMEM,
                          "cuda: cannot allocate %.2f GiB for the weights on %s: %.2f GiB free of "
                          "%.2f GiB (%.2f GiB already holds weights); keep some experts on the "
                          "CPU with --n-cpu-moe N",
                          total / 1073741824.0, c->name, fr / 1073741824.0, tot / 1073741824.0,
                          c->weight_bytes / 1073741824.0);
        pool = NULL;
        goto done;
    }
    uint64_t t0 = qg_time_ns();
    size_t off = 0;
    for (int i = 0; i < m; i++) {
        nw[i].dev = (char *)pool + off;
        QG_CUDA_TRY(cudaMemcpy(nw[i].dev, nw[i].host, nw[i].bytes, cudaMemcpyHostToDevice));
        off += qg_align_up(nw[i].bytes, DEV_ALIGN);
    }
    int pi = 0;
    while (pi < c->n_pools && c->pools[pi].mem) pi++;
    if (pi == c->n_pools && c->n_pools == c->cap_pools) {
        int cap = c->cap_pools ? 2 * c->cap_pools : 8;
        cuda_pool *p = realloc(c->pools, sizeof *p * (size_t)cap);
        if (!p) { st = qg_error_set(err, QG_ERR_NOMEM, "out of memory"); goto fail; }
        c->pools = p;
        c->cap_pools = cap;
    }
    if (c->n_w + m > c->cap_w) {
        int cap = QG_MAX(2 * c->cap_w, c->n_w + m);
        cuda_weight *p = realloc(c->w, sizeof *p * (size_t)cap);
        if (!p) { st = qg_error_set(err, QG_ERR_NOMEM, "out of memory"); goto fail; }
        c->w = p;
        c->cap_w = cap;
    }
    if (pi == c->n_pools) c->n_pools++;
    c->pools[pi] = (cuda_pool){pool, total, 0};
    for (int i = 0; i < m; i++) nw[i].pool = pi;
    memcpy(c->w + c->n_w, nw, sizeof *nw * (size_t)m);
    c->n_w += m;
    qsort(c->w, (size_t)c->n_w, sizeof *c->w, cmp_weight);
    c->weight_bytes += total;
    if (c->log)
        fprintf(stderr, "cuda: uploaded %d weights, %.3f GiB, in %.2f s (%.2f GB/s)\n", m,
                total / 1073741824.0, (qg_time_ns() - t0) / 1e9,
                total / (double)QG_MAX(1u, qg_time_ns() - t0));
    pool = NULL;
    goto done;
fail:
    if (pool) cudaFree(pool);
done:
    free(nw);
    return st;
}

/* Device allocation of `bytes` (at least 1), zeroed; NULL on failure. */
static void *dev_zalloc(size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) return NULL;
    if (cudaMemset(p, 0, bytes ? bytes : 1) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

/* Take a reference on every pool holding a weight g's nodes on executor e
 * read; cg->pool_used lists them. */
static qg_status hold_pools(cuda_exec *c, cuda_graph *cg, qg_error *err) {
    const qg_graph *g = cg->g;
    if (!(cg->pool_used = calloc((size_t)QG_MAX(c->n_pools, 1), sizeof *cg->pool_used)))
        return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    for (int i = 0; i < g->n_nodes; i++) {
        if (g->nodes[i].exec != cg->exec_index) continue;
        for (int k = 0; k < g->nodes[i].n_in; k++) {
            const qg_tensor *t = &g->tensors[g->nodes[i].in[k]];
            if (t->role != QG_ROLE_WEIGHT) continue;
            const int w = weight_find(c, t->data);
            if (w < 0) continue;
            bool have = false;
            for (int j = 0; j < cg->n_pool_used; j++) have |= cg->pool_used[j] == c->w[w].pool;
            if (!have) {
                cg->pool_used[cg->n_pool_used++] = c->w[w].pool;
                c->pools[c->w[w].pool].refs++;
            }
        }
    }
    return QG_OK;
}

/* Drop cg's pool references; free pools nobody holds, with their entries. */
static void drop_pools(cuda_exec *c, cuda_graph *cg) {
    for (int j = 0; j < cg->n_pool_used; j++) {
        cuda_pool *p = &c->pools[cg->pool_used[j]];
        if (--p->refs > 0) continue;
        cudaFree(p->mem);
        c->weight_bytes -= p->bytes;
        int m = 0;
        for (int i = 0; i < c->n_w; i++)
            if (c->w[i].pool != cg->pool_used[j]) c->w[m++] = c->w[i];
        c->n_w = m;
        *p = (cuda_pool){NULL, 0, 0};
    }
    free(cg->pool_used);
    cg->pool_used = NULL;
    cg->n_pool_used = 0;
}

/* ---- executor-level fusion ------------------------------------------- */

/* True when device ranges [a, a+na) and [b, b+nb) overlap. */
static bool overlap(const void *a, size_t na, const void *b, size_t nb) {
    const char *x = a, *y = b;
    return x < y + nb && y < x + na;
}

/* Would writing `y` (bytes) while node j runs clobber anything j reads or
 * writes, other than `except`? */
static bool clobbers(const cuda_graph *cg, const qg_node *j, const void *y, size_t bytes,
                     int except) {
    const qg_graph *g = cg->g;
    for (int k = 0; k < j->n_in + j->n_out; k++) {
        const int id = k < j->n_in ? j->in[k] : j->out[k - j->n_in];
        if (id == except || g->tensors[id].role == QG_ROLE_WEIGHT) continue;
        if (overlap(y, bytes, cg->dev[id], g->tensors[id].nbytes)) return true;
    }
    return false;
}

/* Does any node strictly between a and b touch [p, p+bytes)? */
static bool touched_between(const cuda_graph *cg, int a, int b, const void *p, size_t bytes) {
    for (int i = a + 1; i < b; i++)
        if (clobbers(cg, &cg->g->nodes[i], p, bytes, -1)) return true;
    return false;
}

/* The only node reading tensor t, or -1 (none, or several). */
static int sole_consumer(const qg_graph *g, int t) {
    int who = -1;
    for (int i = 0; i < g->n_nodes; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++)
            if (g->nodes[i].in[k] == t) {
                if (who >= 0 && who != i) return -1;
                who = i;
            }
    return who;
}

/* The matmul whose output, after its folded add, is tensor t (post[j]:
 * the residual of matmul j's folded add), or -1. */
static int matmul_of(const qg_graph *g, const int *post, int t) {
    const int p = g->tensors[t].producer;
    if (p < 0) return -1;
    const qg_node *np = &g->nodes[p];
    if (np->op == QG_OP_MATMUL) return post[p] < 0 ? p : -1;
    if (np->op != QG_OP_ADD) return -1;
    for (int k = 0; k < 2; k++) { /* the add folded into its matmul input's producer */
        const int j = g->tensors[np->in[k]].producer;
        if (j >= 0 && g->nodes[j].op == QG_OP_MATMUL && post[j] == np->in[1 - k] &&
            sole_consumer(g, g->nodes[j].out[0]) == p)
            return j;
    }
    return -1;
}

/* Router partials (o.rpart, decode graphs, after the folds): for each
 * moe_fused node m with a folded rmsnorm i whose raw input h is written by
 * matmul j (directly or through the add folded into j), where j's launch
 * is the one right before m's (every node between them folded away) and
 * both kernels take the form (qg_cuda_op_can_router_partials): j also
 * writes the router partials of h into cg->rpart, and m sums them instead
 * of computing its router behind a grid barrier.  One buffer serves every
 * pair: each is written and read by two consecutive kernels.  Returns the
 * pairs set up; anything that does not fit (shapes, the allocation) keeps
 * today's path. */
static int plan_router_partials(cuda_exec *c, cuda_graph *cg, const int *post) {
    qg_graph *g = cg->g;
    const int e = cg->exec_index;
    int *pair = malloc(sizeof *pair * (size_t)g->n_nodes); /* matmul of moe node m, -1 */
    int *tiles = malloc(sizeof *tiles * (size_t)g->n_nodes);
    size_t floats = 0;
    int n = 0;
    if (!pair || !tiles) goto done;
    for (int m = 0; m < g->n_nodes; m++) {
        const qg_node *nm = &g->nodes[m];
        pair[m] = -1;
        if (nm->exec != e || cg->skip[m] || nm->op != QG_OP_MOE_FUSED || !cg->L[m].pre_norm)
            continue;
        const int i = g->tensors[nm->in[0]].producer;
        if (i < 0 || g->nodes[i].op != QG_OP_RMSNORM || !cg->skip[i]) continue;
        const int j = matmul_of(g, post, g->nodes[i].in[0]);
        if (j < 0 || g->nodes[j].exec != e || g->nodes[j].partition != nm->partition || cg->skip[j])
            continue;
        bool next = true; /* m's launch follows j's */
        for (int k = j + 1; k < m; k++) next &= cg->skip[k];
        if (!next || !qg_cuda_op_can_router_partials(g, &g->nodes[j], nm, &c->o, &tiles[m]))
            continue;
        pair[m] = j;
        floats = QG_MAX(floats, (size_t)tiles[m] * (size_t)(g->tensors[nm->in[1]].ne[1] + 1));
        n++;
    }
    if (!n || !(cg->rpart = dev_zalloc(sizeof(float) * floats))) {
        cudaGetLastError();
        n = 0;
        goto done;
    }
    for (int m = 0; m < g->n_nodes; m++) {
        if (pair[m] < 0) continue;
        const qg_node *nm = &g->nodes[m];
        const qg_tensor *rt = &g->tensors[nm->in[1]];
        qg_cuda_launch *lj = &cg->L[pair[m]];
        lj->rp_w = cg->dev[nm->in[1]];
        lj->rp_rb = sizeof(float) * (size_t)rt->ne[0];
        lj->rp_nw = cg->L[m].pre_norm;
        lj->rp_x = (int)rt->ne[1];
        lj->rp_buf = cg->rpart;
        cg->L[m].rp_buf = cg->rpart;
        cg->L[m].rp_tiles = tiles[m];
    }
done:
    free(pair);
    free(tiles);
    return n;
}

/* Fold, within a partition of this executor:
 *   node j -> the add k that is the only consumer of j's out[0]
 *     (qg_cuda_op_can_post_add): j writes out + residual into the add's
 *     output, and dev[out of j] aliases it;
 *   rmsnorm i -> its only consumer j (qg_cuda_op_can_pre_norm, reading it
 *     as in[0]): j normalizes the raw input itself, and dev[out of i]
 *     aliases the raw input, which nothing else reads through that tensor.
 * When the add's output would overlap a tensor j still reads or writes
 * (the plan may reuse j's dying inputs for it), a decode graph gives that
 * output a buffer of its own in cg->extra (its readers all go through
 * dev[]), a prefill graph keeps the add.  An rmsnorm whose raw input
 * overlaps j's outputs is kept.  Adds go first so the norms see final
 * addresses; pointers captured in the launches are resolved at the end. */
static qg_status fold_nodes(cuda_exec *c, cuda_graph *cg, qg_error *err) {
    qg_graph *g = cg->g;
    const int e = cg->exec_index;
    int n_norm = 0, n_add = 0, n_own = 0;
    size_t extra_bytes = 0, extra_off = 0;
    int *post = malloc(sizeof *post * (size_t)g->n_nodes); /* residual tensor of node j, -1 */
    if (!post) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    for (int j = 0; j < g->n_nodes; j++) {
        post[j] = -1;
        if (g->n_tok_max == 1 && g->nodes[j].op == QG_OP_ADD && g->nodes[j].exec == e)
            extra_bytes += qg_align_up(g->tensors[g->nodes[j].out[0]].nbytes, DEV_ALIGN);
    }
    if (extra_bytes && !(cg->extra = dev_zalloc(extra_bytes))) {
        free(post);
        cudaGetLastError();
        return qg_error_set(err, QG_ERR_NOMEM, "cuda: cannot allocate %.1f KiB of outputs",
                            extra_bytes / 1024.0);
    }
    for (int j = 0; j < g->n_nodes; j++) {
        const qg_node *n = &g->nodes[j];
        if (n->exec != e || cg->skip[j] || !qg_cuda_op_can_post_add(g, n)) continue;
        const int t = n->out[0];
        const int k = sole_consumer(g, t);
        if (k <= j || g->tensors[t].role != QG_ROLE_ACT) continue;
        const qg_node *nk = &g->nodes[k];
        if (nk->op != QG_OP_ADD || nk->exec != e || nk->partition != n->partition || cg->skip[k])
            continue;
        const int other = nk->in[0] == t ? nk->in[1] : nk->in[0];
        const int y = nk->out[0];
        if (other == t || g->tensors[y].nbytes != g->tensors[t].nbytes ||
            g->tensors[y].role != QG_ROLE_ACT)
            continue;
        if (clobbers(cg, n, cg->dev[y], g->tensors[y].nbytes, t) ||
            touched_between(cg, j, k, cg->dev[y], g->tensors[y].nbytes)) {
            if (!cg->extra) continue;
            cg->dev[y] = (char *)cg->extra + extra_off;
            extra_off += qg_align_up(g->tensors[y].nbytes, DEV_ALIGN);
            n_own++;
        }
        cg->skip[k] = true;
        cg->dev[t] = cg->dev[y];
        post[j] = other;
        n_add++;
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        if (n->exec != e || cg->skip[i] || n->op != QG_OP_RMSNORM) continue;
        const int t = n->out[0];
        const int j = sole_consumer(g, t);
        if (j <= i || g->tensors[t].role != QG_ROLE_ACT) continue;
        const qg_node *nj = &g->nodes[j];
        if (nj->exec != e || nj->partition != n->partition || nj->in[0] != t ||
            !qg_cuda_op_can_pre_norm(g, nj))
            continue;
        const int x = n->in[0];
        bool bad = false;
        for (int k = 0; k < nj->n_out; k++)
            bad |= overlap(cg->dev[x], g->tensors[x].nbytes, cg->dev[nj->out[k]],
                           g->tensors[nj->out[k]].nbytes);
        if (bad || touched_between(cg, i, j, cg->dev[x], g->tensors[x].nbytes)) continue;
        cg->skip[i] = true;
        cg->dev[t] = cg->dev[x];
        cg->L[j].pre_norm = cg->dev[n->in[1]];
        cg->L[j].pre_eps = n->p.eps;
        n_norm++;
    }
    for (int j = 0; j < g->n_nodes; j++)
        if (post[j] >= 0) cg->L[j].post_add = cg->dev[post[j]];
    const int n_rp = c->o.rpart && g->n_tok_max == 1 ? plan_router_partials(c, cg, post) : 0;
    free(post);
    /* rope -> attention: in decode graphs the attention kernel does the
     * rope node's work; otherwise the rope kernel appends the KV rows */
    int n_app = 0, n_rope = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        if (n->exec != e || cg->skip[i] || n->op != QG_OP_ROPE) continue;
        const int j = sole_consumer(g, n->out[1]);
        if (j <= i) continue;
        const qg_node *a = &g->nodes[j];
        if (a->exec != e || a->partition != n->partition || cg->skip[j] ||
            !qg_cuda_op_can_fold_append(g, n, a))
            continue;
        const qg_tensor *kc = &g->tensors[a->in[3]];
        if (sole_consumer(g, n->out[0]) == j && qg_cuda_op_can_fold_rope(g, n, a)) {
            /* decode: the attention kernel does the rope node's work */
            cg->skip[i] = true;
            cg->L[j].rope_fold = true;
            cg->L[j].rope_q = cg->dev[n->in[0]];
            cg->L[j].rope_k = cg->dev[n->in[1]];
            cg->L[j].rope_qn = cg->dev[n->in[2]];
            cg->L[j].rope_kn = cg->dev[n->in[3]];
            cg->L[j].rope_eps = n->p.eps;
            cg->L[j].rope_freq = cg->L[i].rope_freq;
            cg->L[j].rope_cs = cg->L[i].rope_cs;
            cg->L[j].rope_cs_n = cg->L[i].rope_cs_n;
            cg->L[j].skip_append = true;
            n_rope++;
            continue;
        }
        cg->L[i].kv_k = cg->dev[a->in[3]];
        cg->L[i].kv_v = cg->dev[a->in[4]];
        cg->L[i].kv_vsrc = cg->dev[a->in[2]];
        cg->L[i].kv_type = kc->type;
        cg->L[i].kv_ctx = (int)kc->ne[1];
        cg->L[j].skip_append = true;
        n_app++;
    }
    if (c->log)
        fprintf(stderr,
                "cuda: %s graph: folded %d rmsnorm and %d add nodes into neighbours (%d add "
                "outputs moved to a buffer of their own), %d KV appends into rope, %d rope nodes "
                "into attention\n",
                g->phase == QG_PHASE_DECODE ? "decode" : "prefill", n_norm, n_add, n_own, n_app,
                n_rope);
    if (c->log && c->o.rpart && g->n_tok_max == 1)
        fprintf(stderr, "cuda: decode graph: router partials: %d matmul -> moe_fused pairs\n",
                n_rp);
    return QG_OK;
}

/* ---- vtable ----------------------------------------------------------- */

static bool cuda_supports(void *self, const qg_graph *g, const qg_node *n) {
    (void)self;
    return qg_cuda_op_supports(g, n);
}

static size_t cuda_mem_available(void *self) {
    cuda_exec *c = self;
    size_t fr = 0, tot = 0;
    if (cudaSetDevice(c->device) != cudaSuccess || cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return fr;
}

static qg_status cuda_kv_alloc(void *self, size_t bytes, qg_error *err) {
    cuda_exec *c = self;
    qg_status st = QG_OK;
    void *p = NULL;
    QG_CUDA_TRY(cudaSetDevice(c->device));
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return qg_error_set(err, QG_ERR_NOMEM,
                            "cuda: cannot allocate the KV cache (%.2f GiB) on %s: %.2f GiB free",
                            bytes / 1073741824.0, c->name, fr / 1073741824.0);
    }
    QG_CUDA_TRY(cudaMemset(p, 0, bytes));
    QG_CUDA_TRY(cudaDeviceSynchronize());
    if (c->kv) cudaFree(c->kv);
    c->kv = p;
    c->kv_bytes = bytes;
    return QG_OK;
fail:
    if (p) cudaFree(p);
    return st;
}

static void cuda_release(void *self, qg_graph *g) {
    cuda_exec *c = self;
    cuda_graph *cg = find_graph(c, g);
    if (!cg) return;
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream);
    if (cg->gexec)
        for (int p = 0; p < g->n_parts; p++)
            if (cg->gexec[p]) cudaGraphExecDestroy(cg->gexec[p]);
    if (cg->ev)
        for (int i = 0; i < 2 * g->n_nodes + 1; i++)
            if (cg->ev[i]) cudaEventDestroy(cg->ev[i]);
    cudaFree(cg->arena);
    cudaFree(cg->scratch);
    cudaFree(cg->counters);
    if (cg->step_own) cudaFree(cg->step_dev);
    cudaFree(cg->rope);
    cudaFree(cg->rope_cs);
    cudaFree(cg->extra);
    cudaFree(cg->rpart);
    cudaGetLastError();
    drop_pools(c, cg);
    free(cg->dev);
    free(cg->L);
    free(cg->skip);
    free(cg->gexec);
    free(cg->ev);
    memset(cg, 0, sizeof *cg);
}

/* The CPU's cos | sin table of every position (graph/qg_rope.h) on the
 * device, for the rope nodes that share the first rope node's base and
 * head_dim (all of them in Qwen3): their kernels read it instead of
 * computing sin / cos, so RoPE is bit-identical to the CPU executor's. */
static qg_status rope_cos_sin(cuda_graph *cg, qg_error *err) {
    const qg_graph *g = cg->g;
    const qg_node *first = NULL;
    for (int i = 0; i < g->n_nodes && !first; i++)
        if (g->nodes[i].op == QG_OP_ROPE && cg->L[i].rope_freq) first = &g->nodes[i];
    if (!first || g->n_ctx <= 0) return QG_OK;
    const int hd = first->p.head_dim;
    const size_t n = (size_t)hd * (size_t)g->n_ctx;
    float *host = malloc(sizeof(float) * n);
    if (!host) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    for (int p = 0; p < g->n_ctx; p++) qg_rope_cos_sin(host + (size_t)p * hd, hd, p, first->p.rope_theta);
    cudaError_t ce = cudaMalloc((void **)&cg->rope_cs, sizeof(float) * n);
    if (ce == cudaSuccess) ce = cudaMemcpy(cg->rope_cs, host, sizeof(float) * n, cudaMemcpyHostToDevice);
    free(host);
    if (ce != cudaSuccess) {
        cudaGetLastError();
        cg->rope_cs = NULL;
        return qg_error_set(err, QG_ERR_NOMEM, "cuda: cannot allocate the %.1f MiB rope table",
                            sizeof(float) * n / 1048576.0);
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n2 = &g->nodes[i];
        if (n2->op == QG_OP_ROPE && cg->L[i].rope_freq && n2->p.head_dim == hd &&
            n2->p.rope_theta == first->p.rope_theta) {
            cg->L[i].rope_cs = cg->rope_cs;
            cg->L[i].rope_cs_n = g->n_ctx;
        }
    }
    return QG_OK;
}

static qg_status cuda_compile(void *self, qg_graph *g, int exec_index, qg_error *err) {
    cuda_exec *c = self;
    qg_status st = QG_OK;
    cuda_release(c, g);
    cuda_graph *cg = find_graph(c, NULL);
    if (!cg) return qg_error_set(err, QG_ERR_BACKEND, "cuda: too many graphs");
    QG_CUDA_TRY(cudaSetDevice(c->device));
    QG_CUDA_TRY((cudaError_t)qg_cuda_ops_prepare());
    if ((st = upload_weights(c, g, exec_index, err))) return st;
    cg->g = g;
    cg->exec_index = exec_index;
    if ((st = hold_pools(c, cg, err))) goto fail;
    cg->dev = calloc((size_t)g->n_tensors, sizeof *cg->dev);
    cg->L = calloc((size_t)g->n_nodes, sizeof *cg->L);
    cg->skip = calloc((size_t)g->n_nodes, sizeof *cg->skip);
    cg->gexec = calloc((size_t)QG_MAX(g->n_parts, 1), sizeof *cg->gexec);
    if (!cg->dev || !cg->L || !cg->skip || !cg->gexec) goto oom;

    const size_t act = g->act_bytes[exec_index];
    if (!(cg->arena = dev_zalloc(act))) goto oom_dev;
    for (int i = 0; i < g->n_tensors; i++) {
        const qg_tensor *t = &g->tensors[i];
        if (t->role == QG_ROLE_WEIGHT) {
            const int w = weight_find(c, t->data);
            cg->dev[i] = w >= 0 ? c->w[w].dev : NULL;
        } else if (t->exec != exec_index || (t->role == QG_ROLE_ACT && t->first_use < 0)) {
            continue;
        } else if (t->role == QG_ROLE_KV) {
            if (!c->kv || t->offset + t->nbytes > c->kv_bytes) {
                st = qg_error_set(err, QG_ERR_BACKEND, "cuda: KV arena too small for %s", t->name);
                goto fail;
            }
            cg->dev[i] = (char *)c->kv + t->offset;
        } else {
            cg->dev[i] = (char *)cg->arena + t->offset;
        }
    }
    if (g->t_step >= 0 && g->tensors[g->t_step].exec == exec_index && cg->dev[g->t_step]) {
        cg->step_dev = cg->dev[g->t_step];
    } else {
        if (!(cg->step_dev = dev_zalloc(sizeof(int32_t) * QG_STEP_N))) goto oom_dev;
        cg->step_own = true;
    }

    /* scratch, counters, rope tables */
    int n_rope = 0, rope_len = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        if (n->exec != exec_index) continue;
        size_t sb = 0;
        int nc = 0;
        qg_cuda_op_needs(g, n, &c->o, &sb, &nc);
        cg->scratch_bytes = QG_MAX(cg->scratch_bytes, sb);
        cg->n_counters += nc;
        if (n->op == QG_OP_ROPE) {
            n_rope++;
            rope_len += n->p.head_dim / 2;
        }
    }
    if (cg->scratch_bytes && !(cg->scratch = dev_zalloc(cg->scratch_bytes))) goto oom_dev;
    if (cg->n_counters && !(cg->counters = dev_zalloc(sizeof(int) * (size_t)cg->n_counters)))
        goto oom_dev;
    double *rope_host = NULL;
    if (n_rope) {
        rope_host = malloc(sizeof(double) * (size_t)rope_len);
        if (!rope_host) goto oom;
        if (cudaMalloc((void **)&cg->rope, sizeof(double) * (size_t)rope_len) != cudaSuccess) {
            free(rope_host);
            goto oom_dev;
        }
    }
    int ctr = 0, rope_off = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const qg_node *n = &g->nodes[i];
        /* copy nodes are run by the runtime (tensor_get / tensor_set) */
        if (n->exec != exec_index || n->op == QG_OP_COPY) continue;
        size_t sb = 0;
        int nc = 0;
        qg_cuda_op_needs(g, n, &c->o, &sb, &nc);
        qg_cuda_launch *l = &cg->L[i];
        l->g = g;
        l->n = n;
        l->dev = cg->dev;
        l->step = cg->step_dev;
        l->scratch = cg->scratch;
        l->scratch_bytes = cg->scratch_bytes;
        l->counters = nc ? cg->counters + ctr : NULL;
        ctr += nc;
        l->stream = c->stream;
        l->o = c->o;
        if (n->op == QG_OP_ROPE) {
            /* the CPU's angle factor: pow(base, -2i/hd) in double */
            const int hd = n->p.head_dim;
            for (int k = 0; k < hd / 2; k++)
                rope_host[rope_off + k] = pow((double)n->p.rope_theta, -2.0 * k / hd);
            l->rope_freq = cg->rope + rope_off;
            rope_off += hd / 2;
        }
        for (int k = 0; k < n->n_in; k++)
            if (!cg->dev[n->in[k]] && g->tensors[n->in[k]].role != QG_ROLE_WEIGHT) {
                free(rope_host);
                st = qg_error_set(err, QG_ERR_BACKEND, "cuda: node %s reads %s, which has no memory here",
                                  n->name, g->tensors[n->in[k]].name);
                goto fail;
            }
    }
    if (n_rope) {
        cudaError_t ce = cudaMemcpy(cg->rope, rope_host, sizeof(double) * (size_t)rope_len,
                                    cudaMemcpyHostToDevice);
        free(rope_host);
        QG_CUDA_TRY(ce);
        if ((st = rope_cos_sin(cg, err))) goto fail;
    }
    if (c->fuse && (st = fold_nodes(c, cg, err))) goto fail;
    /* the zeroing memsets above run on the legacy stream, which does not
     * order with ours (non-blocking): finish them before any step */
    QG_CUDA_TRY(cudaDeviceSynchronize());
    if (c->log)
        fprintf(stderr,
                "cuda: compiled the %s graph (%d nodes here): arena %.1f MiB, scratch %.1f MiB, "
                "%d counters, weights %.3f GiB, KV %.1f MiB\n",
                g->phase == QG_PHASE_DECODE ? "decode" : "prefill", g->n_nodes, act / 1048576.0,
                cg->scratch_bytes / 1048576.0, cg->n_counters, c->weight_bytes / 1073741824.0,
                c->kv_bytes / 1048576.0);
    return QG_OK;
oom_dev:
    cudaGetLastError();
    st = qg_error_set(err, QG_ERR_NOMEM,
                      "cuda: cannot allocate the %s graph's device memory (arena %.1f MiB, "
                      "scratch %.1f MiB) on %s",
                      g->phase == QG_PHASE_DECODE ? "decode" : "prefill",
                      g->act_bytes[exec_index] / 1048576.0, cg->scratch_bytes / 1048576.0, c->name);
    goto fail;
oom:
    st = qg_error_set(err, QG_ERR_NOMEM, "out of memory");
fail:
    cg->g = g;
    cuda_release(c, g);
    return st;
}

/* Launch the nodes of partition p plainly; prof: events around each. */
static qg_status launch_nodes(cuda_exec *c, cuda_graph *cg, const qg_partition *p, qg_error *err,
                              bool profile) {
    for (int i = p->first; i < p->first + p->n; i++) {
        if (cg->skip[i]) continue;
        if (!cg->L[i].n)
            return qg_error_set(err, QG_ERR_BACKEND, "cuda: node %s (%s) is not launchable here",
                                cg->g->nodes[i].name, qg_op_name(cg->g->nodes[i].op));
        if (profile) cudaEventRecord(cg->ev[2 * i + 1], c->stream);
        const int e = qg_cuda_op_launch(&cg->L[i]);
        if (e != 0)
            return qg_error_set(err, QG_ERR_BACKEND, "cuda: launching node %s (%s) failed: %s",
                                cg->g->nodes[i].name, qg_op_name(cg->g->nodes[i].op),
                                cudaGetErrorString((cudaError_t)e));
        if (profile) cudaEventRecord(cg->ev[2 * i + 2], c->stream);
    }
    return QG_OK;
}

/* Stage `n` bytes of src in pinned memory and copy them to dst on the
 * stream (no wait); large copies go synchronously. */
static qg_status copy_in(cuda_exec *c, void *dst, const void *src, size_t n, qg_error *err) {
    qg_status st = QG_OK;
    if (n > STAGING_BYTES) {
        QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
        QG_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
        return QG_OK;
    }
    if (c->staging_off + n > STAGING_BYTES) {
        QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
        c->staging_off = 0;
    }
    unsigned char *s = c->staging + c->staging_off;
    memcpy(s, src, n);
    c->staging_off = qg_align_up(c->staging_off + n, 64);
    QG_CUDA_TRY(cudaMemcpyAsync(dst, s, n, cudaMemcpyHostToDevice, c->stream));
    return QG_OK;
fail:
    return st;
}

static qg_status cuda_run(void *self, qg_graph *g, int part, const int32_t *step,
                          qg_profile *prof, qg_error *err) {
    cuda_exec *c = self;
    qg_status st = QG_OK;
    cuda_graph *cg = find_graph(c, g);
    if (!cg) return qg_error_set(err, QG_ERR_BACKEND, "cuda: graph not compiled");
    const qg_partition *p = &g->parts[part];
    if (p->exec != cg->exec_index)
        return qg_error_set(err, QG_ERR_BACKEND, "cuda: partition %d is not on this executor", part);
    QG_CUDA_TRY(cudaSetDevice(c->device));
    if (cg->step_own && (st = copy_in(c, cg->step_dev, step, sizeof(int32_t) * QG_STEP_N, err)))
        return st;
    if (prof) {
        if (!cg->ev) {
            const int ne = 2 * g->n_nodes + 1;
            if (!(cg->ev = calloc((size_t)ne, sizeof *cg->ev)))
                return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
            for (int i = 0; i < ne; i++) QG_CUDA_TRY(cudaEventCreate(&cg->ev[i]));
        }
        /* a common clock: the stream is idle when ev[0] is recorded right
         * after the host reads its clock */
        QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
        const uint64_t t0 = qg_time_ns();
        QG_CUDA_TRY(cudaEventRecord(cg->ev[0], c->stream));
        if ((st = launch_nodes(c, cg, p, err, true))) return st;
        QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
        c->staging_off = 0;
        for (int i = p->first; i < p->first + p->n; i++) {
            if (cg->skip[i]) continue;
            float a = 0, b = 0;
            QG_CUDA_TRY(cudaEventElapsedTime(&a, cg->ev[0], cg->ev[2 * i + 1]));
            QG_CUDA_TRY(cudaEventElapsedTime(&b, cg->ev[0], cg->ev[2 * i + 2]));
            qg_profile_add(prof, g, i, step[QG_STEP_N_TOK], step[QG_STEP_N_KV], cg->exec_index,
                           t0 + (uint64_t)(a * 1e6), t0 + (uint64_t)(b * 1e6));
        }
        return QG_OK;
    }
    if (!c->use_graphs) {
        if ((st = launch_nodes(c, cg, p, err, false))) return st;
        QG_CUDA_TRY(cudaGetLastError());
        return QG_OK;
    }
    if (!cg->gexec[part]) {
        const uint64_t t0 = qg_time_ns();
        cudaGraph_t graph = NULL;
        QG_CUDA_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
        st = launch_nodes(c, cg, p, err, false);
        cudaError_t ce = cudaStreamEndCapture(c->stream, &graph);
        if (st) {
            if (graph) cudaGraphDestroy(graph);
            return st;
        }
        QG_CUDA_TRY(ce);
        ce = cudaGraphInstantiate(&cg->gexec[part], graph, 0);
        size_t n_kern = 0;
        cudaGraphGetNodes(graph, NULL, &n_kern);
        cudaGraphDestroy(graph);
        QG_CUDA_TRY(ce);
        if (c->log)
            fprintf(stderr,
                    "cuda: captured %s partition %d (%d nodes, %zu graph nodes) into a CUDA Graph "
                    "in %.2f ms; it is replayed for every step (token ids, positions and the step "
                    "are read from device memory, so it is never re-captured)\n",
                    g->phase == QG_PHASE_DECODE ? "decode" : "prefill", part, p->n, n_kern,
                    (qg_time_ns() - t0) / 1e6);
    }
    QG_CUDA_TRY(cudaGraphLaunch(cg->gexec[part], c->stream));
    return QG_OK;
fail:
    return st;
}

static qg_status cuda_tensor_set(void *self, const qg_graph *g, int t, const void *src,
                                 size_t off, size_t n, qg_error *err) {
    cuda_exec *c = self;
    cuda_graph *cg = find_graph(c, g);
    if (!cg || !cg->dev[t] || off + n > g->tensors[t].nbytes ||
        g->tensors[t].role == QG_ROLE_WEIGHT)
        return qg_error_set(err, QG_ERR_BACKEND, "cuda: bad write to tensor %s", g->tensors[t].name);
    if (n == 0) return QG_OK;
    return copy_in(c, (char *)cg->dev[t] + off, src, n, err);
}

/* Does [p, p + n) lie in one of the pinned blocks cuda_host_alloc gave? */
static bool pinned_holds(const cuda_exec *c, const void *p, size_t n) {
    const char *q = p;
    for (int i = 0; i < QG_CUDA_MAX_PINNED; i++) {
        const char *b = c->pinned[i].p;
        if (b && q >= b && q + n <= b + c->pinned[i].n) return true;
    }
    return false;
}

/* Pinned host memory (cudaMallocHost), so that tensor_get into it is one
 * DMA with no staging copy (the runtime's logits); NULL when none is
 * left (the caller falls back to malloc). */
static void *cuda_host_alloc(void *self, size_t bytes) {
    cuda_exec *c = self;
    if (env_is("QG_CUDA_PINNED", "0")) return NULL; /* A/B: staged copies */
    for (int i = 0; i < QG_CUDA_MAX_PINNED; i++) {
        if (c->pinned[i].p) continue;
        void *p = NULL;
        if (cudaSetDevice(c->device) != cudaSuccess || cudaMallocHost(&p, bytes) != cudaSuccess) {
            cudaGetLastError();
            return NULL;
        }
        c->pinned[i].p = p;
        c->pinned[i].n = bytes;
        return p;
    }
    return NULL;
}

static void cuda_host_free(void *self, void *p) {
    cuda_exec *c = self;
    for (int i = 0; i < QG_CUDA_MAX_PINNED; i++)
        if (p && c->pinned[i].p == p) {
            cudaFreeHost(p);
            c->pinned[i].p = NULL;
            c->pinned[i].n = 0;
        }
}

static qg_status cuda_tensor_get(void *self, const qg_graph *g, int t, void *dst, size_t off,
                                 size_t n, qg_error *err) {
    cuda_exec *c = self;
    qg_status st = QG_OK;
    cuda_graph *cg = find_graph(c, g);
    if (!cg || !cg->dev[t] || off + n > g->tensors[t].nbytes)
        return qg_error_set(err, QG_ERR_BACKEND, "cuda: bad read of tensor %s", g->tensors[t].name);
    const char *src = (const char *)cg->dev[t] + off;
    QG_CUDA_TRY(cudaSetDevice(c->device));
    if (pinned_holds(c, dst, n)) { /* straight into the caller's pinned memory */
        QG_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->stream));
        QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
    } else if (n > STAGING_BYTES) {
        QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
        QG_CUDA_TRY(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
    } else {
        QG_CUDA_TRY(cudaMemcpyAsync(c->staging + STAGING_BYTES - n, src, n,
                                    cudaMemcpyDeviceToHost, c->stream));
        QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
        memcpy(dst, c->staging + STAGING_BYTES - n, n);
    }
    c->staging_off = 0;
    return QG_OK;
fail:
    return st;
}

static qg_status cuda_sync(void *self, qg_error *err) {
    cuda_exec *c = self;
    qg_status st = QG_OK;
    QG_CUDA_TRY(cudaSetDevice(c->device));
    QG_CUDA_TRY(cudaStreamSynchronize(c->stream));
    c->staging_off = 0;
    return QG_OK;
fail:
    return st;
}

static void cuda_free(void *self) {
    cuda_exec *c = self;
    if (!c) return;
    cudaSetDevice(c->device);
    for (int i = 0; i < QG_CUDA_MAX_GRAPHS; i++)
        if (c->graphs[i].g) cuda_release(c, c->graphs[i].g);
    for (int i = 0; i < c->n_pools; i++)
        if (c->pools[i].mem) cudaFree(c->pools[i].mem);
    if (c->kv) cudaFree(c->kv);
    if (c->staging) cudaFreeHost(c->staging);
    for (int i = 0; i < QG_CUDA_MAX_PINNED; i++) /* blocks never handed back */
        if (c->pinned[i].p) cudaFreeHost(c->pinned[i].p);
    if (c->stream) cudaStreamDestroy(c->stream);
    cudaGetLastError();
    free(c->pools);
    free(c->w);
    free(c);
}

static const qg_exec_i CUDA_EXEC = {
    .name = "cuda",
    .supports = cuda_supports,
    .mem_available = cuda_mem_available,
    .kv_alloc = cuda_kv_alloc,
    .compile = cuda_compile,
    .run = cuda_run,
    .tensor_set = cuda_tensor_set,
    .tensor_get = cuda_tensor_get,
    .tensor_host = NULL,
    .sync = cuda_sync,
    .release = cuda_release,
    .free = cuda_free,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
};

/* Number of CUDA devices, or an error message in err. */
static qg_status count_devices(int *n, qg_error *err) {
    *n = 0;
    cudaError_t e = cudaGetDeviceCount(n);
    if (e != cudaSuccess || *n <= 0) {
        cudaGetLastError();
        *n = 0;
        return qg_error_set(err, QG_ERR_BACKEND,
                            "--backend cuda: no CUDA device found (cudaGetDeviceCount: %s)",
                            e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    return QG_OK;
}

qg_status qg_exec_cuda_new(const qg_exec_opts *o, qg_exec *out, qg_error *err) {
    int n_dev = 0;
    qg_status st = count_devices(&n_dev, err);
    if (st) return st;
    const int dev = o ? o->device : 0;
    if (dev < 0 || dev >= n_dev)
        return qg_error_set(err, QG_ERR_BACKEND, "--device %d: there are %d CUDA devices (0..%d)",
                            dev, n_dev, n_dev - 1);
    cuda_exec *c = calloc(1, sizeof *c);
    if (!c) return qg_error_set(err, QG_ERR_NOMEM, "out of memory");
    c->device = dev;
    struct cudaDeviceProp prop;
    QG_CUDA_TRY(cudaSetDevice(dev));
    QG_CUDA_TRY(cudaGetDeviceProperties(&prop, dev));
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    c->total_mem = prop.totalGlobalMem;
    c->o.n_sm = prop.multiProcessorCount;
    c->o.f32_prefill = env_is("QG_CUDA_F32_PREFILL", "1");
    c->o.pdl = prop.major >= 9 && !env_is("QG_CUDA_PDL", "0");
    c->o.i8_decode = !env_is("QG_CUDA_I8", "0");
    c->o.prefetch = !env_is("QG_CUDA_PREFETCH", "0");
    c->o.i8_fit = !env_is("QG_CUDA_I8_FIT", "0");
    c->o.rgu = !env_is("QG_CUDA_RGU", "0");
    c->o.staged = prop.major >= 9 ? env_int("QG_CUDA_STAGED", 0, 0, 63) : 0;
    c->o.dn_early = !env_is("QG_CUDA_DN_EARLY", "0");
    c->o.rt_split = !env_is("QG_CUDA_RT_SPLIT", "0");
    c->o.rpart = env_is("QG_CUDA_RPART", "1");
    c->o.i8_mv_cfg[0] = env_int("QG_CUDA_I8_MV", -1, 0, 5);
    c->o.i8_mv_cfg[1] = env_int("QG_CUDA_I8_MV16", -1, 0, 5);
    c->o.i8_gu_cfg = env_int("QG_CUDA_I8_GU", -1, 0, 4);
    c->o.i8_head_cfg = env_int("QG_CUDA_I8_HEAD", -1, 0, 8);
    c->o.attn_tc = !env_is("QG_CUDA_ATTN_TC", "0");
    c->o.attn_cfg = env_int("QG_CUDA_ATTN_CFG", -1, 0, 3);
    c->o.attn_gw = env_int("QG_CUDA_ATTN_GW", 0, 1, 8);
    c->o.attn_chunk = env_int("QG_CUDA_ATTN_CHUNK", 0, 32, 4096);
    c->o.attn_gw_rows = env_int("QG_CUDA_ATTN_GW_ROWS", 512, 0, 1 << 30);
    c->o.drop = env_int("QG_CUDA_DEBUG_DROP", 0, 0, 63);
    if (c->o.drop)
        fprintf(stderr, "cuda: QG_CUDA_DEBUG_DROP=%d: decode kernels left out, output is wrong "
                        "(for timing only)\n", c->o.drop);
    {
        const char *ac = getenv("QG_CUDA_ATTN_CTAS");
        c->o.attn_ctas = ac && atoi(ac) > 0 && atoi(ac) <= 8 ? atoi(ac) : 1;
    }
    c->use_graphs = !env_is("QG_CUDA_GRAPH", "0");
    c->fuse = !env_is("QG_CUDA_FUSE", "0");
    c->log = qg_debug_enabled("cuda");
    QG_CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    QG_CUDA_TRY(cudaMallocHost((void **)&c->staging, STAGING_BYTES));
    if (c->log)
        fprintf(stderr,
                "cuda: device %d: %s, compute %d.%d, %d SMs, %.1f GiB; graphs %s, fusion %s, "
                "programmatic dependent launch %s, prefill products %s, decode products %s, "
                "L2 prefetch of the chosen down rows %s, one-wave decode grids %s, "
                "staged decode products 0x%x\n",
                dev, c->name, prop.major, prop.minor, prop.multiProcessorCount,
                prop.totalGlobalMem / 1073741824.0, c->use_graphs ? "on" : "off",
                c->fuse ? "on" : "off", c->o.pdl ? "on" : "off",
                c->o.f32_prefill ? "f32" : "f16 tensor cores",
                c->o.i8_decode ? "integer tensor cores (Q4_K, Q6_K)" : "f32",
                c->o.prefetch ? "on" : "off", c->o.i8_fit ? "on" : "off", c->o.staged);
    if (c->log && (c->o.i8_mv_cfg[0] >= 0 || c->o.i8_mv_cfg[1] >= 0 || c->o.i8_gu_cfg >= 0))
        fprintf(stderr, "cuda: decode product shapes mv %d / %d, gate-up %d (-1: default)\n",
                c->o.i8_mv_cfg[0], c->o.i8_mv_cfg[1], c->o.i8_gu_cfg);
    out->i = &CUDA_EXEC;
    out->self = c;
    return QG_OK;
fail:
    cuda_free(c);
    return st;
}

void qg_exec_cuda_describe(FILE *f) {
    int n = 0;
    qg_error err = {0};
    if (count_devices(&n, &err)) {
        fprintf(f, "cuda: %s\n", err.msg);
        return;
    }
    for (int i = 0; i < n; i++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        fprintf(f, "cuda: device %d: %s, compute %d.%d, %d SMs, %.1f GiB\n", i, p.name, p.major,
                p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0);
    }
}
