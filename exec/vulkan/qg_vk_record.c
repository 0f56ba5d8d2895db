/* qg_vk_record.c - the Vulkan backend's one switch over ops: which nodes
 * it supports, and each node as compute dispatches of the ops/vulkan
 * shaders.
 *
 * A node becomes one or more dispatches (qkv: three matmuls; attention:
 * kv_append then attention; moe_fused: see rec_moe_fused), two node
 * pairs fuse (see qg_vk_record_node), and in decode graphs norms and
 * residual adds fold into the neighbouring products (qg_vk_fold.c,
 * rec_product): a qwen3moe decode layer is 10 dispatches in 8 barrier
 * stages (qkv x3 | rope_kv | attention | attn output + add | router with
 * the ffn norm | topk | expert swiglu | aggregate + add), against 12 in
 * 10 with QG_VK_FOLD=0.  Dispatches are recorded for the
 * worst case (g->n_tok_max tokens); the shaders read the live token count
 * from the step buffer (binding 0), and in prefill graphs the token
 * dimension's workgroup count is rewritten per step (indirect dispatch),
 * so the recorded command buffer never changes.
 *
 * Work shapes (see the shaders' comments):
 *   weight x activation shaders: 128 invocations in row groups of lanes
 *     (rows_for), NT token columns (1 in decode graphs, 8 in prefill);
 *   row groups beyond 65535 spill into gl_WorkGroupID.y (push constant gx);
 *   with c->fast_mv (QG_VK_MV=1), decode graphs' products use the *_mv
 *   shaders instead: RPT rows per row group (mv_rows: 2 unless QG_VK_MV_RPT says).
 */
#include "qg_vk.h"

#include <stdlib.h>
#include <string.h>

#define MAX_GROUPS 65535u
#define MAX_HEAD_DIM 256
#define MAX_EXPERTS 512
#define MAX_USED 64

/* ---- support ---------------------------------------------------------- */

static bool weight_type_ok(qg_dtype t) {
    switch (t) {
    case QG_F32: case QG_F16: case QG_BF16: case QG_Q8_0: case QG_Q4_0:
    case QG_Q4_K: case QG_Q5_K: case QG_Q6_K:
        return true;
    default:
        return false;
    }
}

/* A tensor one binding can reach (shaders index it with 32-bit words). */
static bool range_ok(const qg_vk_dev *d, const qg_tensor *t) {
    return t->nbytes <= d->props.limits.maxStorageBufferRange && t->nbytes < ((size_t)1 << 32);
}

static bool weight_ok(const qg_vk_dev *d, const qg_tensor *t) {
    return weight_type_ok(t->type) && t->ne[0] % 32 == 0 && range_ok(d, t);
}

static bool f32_ok(const qg_vk_dev *d, const qg_tensor *t) {
    return t->type == QG_F32 && range_ok(d, t);
}

bool qg_vk_supports(const qg_vk_dev *d, const qg_graph *g, const qg_node *n) {
    const qg_tensor *T = g->tensors;
#define IN(i) (&T[n->in[i]])
#define OUT(i) (&T[n->out[i]])
    const qg_op_params *p = &n->p;
    switch (n->op) {
    case QG_OP_EMBED:
        return n->n_in == 2 && n->n_out == 1 && weight_ok(d, IN(0)) && IN(1)->type == QG_I32 &&
               f32_ok(d, OUT(0)) && OUT(0)->ne[0] == IN(0)->ne[0];
    case QG_OP_RMSNORM:
    case QG_OP_ADD:
        return n->n_in == 2 && n->n_out == 1 && f32_ok(d, IN(0)) && f32_ok(d, IN(1)) &&
               f32_ok(d, OUT(0));
    case QG_OP_QKV:
        if (n->n_in != 4 || n->n_out != 3 || !f32_ok(d, IN(0))) return false;
        for (int i = 0; i < 3; i++)
            if (!weight_ok(d, IN(1 + i)) || IN(1 + i)->ne[0] != IN(0)->ne[0] || !f32_ok(d, OUT(i)))
                return false;
        return true;
    case QG_OP_ROPE:
        return n->n_in == 5 && n->n_out == 2 && p->head_dim % 2 == 0 && p->head_dim > 0 &&
               p->head_dim <= MAX_HEAD_DIM && f32_ok(d, IN(0)) && f32_ok(d, IN(1)) &&
               f32_ok(d, IN(2)) && f32_ok(d, IN(3)) && IN(4)->type == QG_I32 &&
               f32_ok(d, OUT(0)) && f32_ok(d, OUT(1));
    case QG_OP_ATTENTION: {
        if (n->n_in != 6 || n->n_out != 1) return false;
        const qg_dtype ct = IN(3)->type;
        return (ct == QG_F16 || ct == QG_F32) && IN(4)->type == ct && p->head_dim % 2 == 0 &&
               p->head_dim > 0 && p->head_dim <= MAX_HEAD_DIM && p->n_head_kv >= 1 &&
               p->n_head % p->n_head_kv == 0 && f32_ok(d, IN(0)) && f32_ok(d, IN(1)) &&
               f32_ok(d, IN(2)) && range_ok(d, IN(3)) && range_ok(d, IN(4)) &&
               IN(5)->type == QG_I32 && f32_ok(d, OUT(0));
    }
    case QG_OP_MATMUL:
        return n->n_in == 2 && n->n_out == 1 && weight_ok(d, IN(0)) && f32_ok(d, IN(1)) &&
               f32_ok(d, OUT(0));
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD:
        return n->n_in == 2 && n->n_out == 1 && f32_ok(d, IN(0)) && weight_ok(d, IN(1)) &&
               f32_ok(d, OUT(0));
    case QG_OP_SWIGLU:
        return n->n_in == 3 && n->n_out == 1 && f32_ok(d, IN(0)) && weight_ok(d, IN(1)) &&
               weight_ok(d, IN(2)) && f32_ok(d, OUT(0));
    case QG_OP_TOPK:
        return n->n_in == 1 && n->n_out == 2 && f32_ok(d, IN(0)) && OUT(0)->type == QG_I32 &&
               f32_ok(d, OUT(1)) && IN(0)->ne[0] <= MAX_EXPERTS && OUT(0)->ne[0] <= MAX_USED &&
               OUT(0)->ne[0] <= IN(0)->ne[0];
    case QG_OP_EXPERT_SWIGLU:
        return n->n_in == 4 && n->n_out == 1 && f32_ok(d, IN(0)) && weight_ok(d, IN(1)) &&
               weight_ok(d, IN(2)) && IN(3)->type == QG_I32 && f32_ok(d, OUT(0));
    case QG_OP_AGGREGATE:
        return n->n_in == 4 && n->n_out == 1 && f32_ok(d, IN(0)) && weight_ok(d, IN(1)) &&
               IN(2)->type == QG_I32 && f32_ok(d, IN(3)) && f32_ok(d, OUT(0));
    case QG_OP_MOE_FUSED:
        if (n->n_in != 5 || n->n_out != 3 || !f32_ok(d, IN(0))) return false;
        for (int i = 1; i < 5; i++)
            if (!weight_ok(d, IN(i))) return false;
        return f32_ok(d, OUT(0)) && OUT(1)->type == QG_I32 && f32_ok(d, OUT(2)) &&
               IN(1)->ne[1] <= MAX_EXPERTS && OUT(1)->ne[0] <= MAX_USED &&
               OUT(1)->ne[0] <= IN(1)->ne[1] &&
               qg_vk_moe_scratch_bytes(g, n) <= d->props.limits.maxStorageBufferRange;
    case QG_OP_COPY: /* copies are run by the runtime through tensor_get/set */
    case QG_OP_COUNT:
        break;
    }
    return false;
#undef IN
#undef OUT
}

/* moe_fused's scratch sections (byte offsets, 256-aligned). */
typedef struct moe_scratch {
    size_t logits, h, off, asg, tiles, ind, yk, total;
    uint32_t max_tiles;
} moe_scratch;

#define MOE_NT 32 /* assignments per tile of the grouped prefill path (GEMM_BN) */

static moe_scratch moe_scratch_of(const qg_graph *g, const qg_node *n) {
    const qg_tensor *T = g->tensors;
    const size_t E = (size_t)T[n->in[0]].ne[0], X = (size_t)T[n->in[1]].ne[1];
    const size_t F = (size_t)T[n->in[2]].ne[1], K = (size_t)T[n->out[1]].ne[0];
    const size_t Tm = (size_t)g->n_tok_max, A = K * Tm;
    moe_scratch m = {0};
    m.logits = 0;
    m.h = qg_align_up(4 * X * Tm, 256);
    m.total = m.h + qg_align_up(4 * F * A, 256);
    if (Tm > 1) {
        m.max_tiles = (uint32_t)((A + MOE_NT - 1) / MOE_NT + X);
        m.off = m.total;
        m.asg = m.off + qg_align_up(4 * (X + 1), 256);
        m.tiles = m.asg + qg_align_up(4 * A, 256);
        m.ind = m.tiles + qg_align_up(8 * (size_t)m.max_tiles, 256);
        m.yk = m.ind + 256;
        m.total = m.yk + qg_align_up(4 * E * A, 256);
    }
    return m;
}

size_t qg_vk_moe_scratch_bytes(const qg_graph *g, const qg_node *n) {
    return n->op == QG_OP_MOE_FUSED ? moe_scratch_of(g, n).total : 0;
}

/* ---- building dispatches ---------------------------------------------- */

typedef struct rec {
    const qg_vk_rec_ctx *c;
    int node;
    qg_vk_dispatch **out;
    int *n, *cap;
} rec;

static qg_vk_dispatch *new_dispatch(rec *r, qg_vk_shader s) {
    if (*r->n == *r->cap) {
        *r->cap = *r->cap ? 2 * *r->cap : 256;
        *r->out = realloc(*r->out, sizeof **r->out * (size_t)*r->cap);
        if (!*r->out) QG_ABORT("out of memory recording %d dispatches", *r->cap);
    }
    qg_vk_dispatch *d = &(*r->out)[(*r->n)++];
    memset(d, 0, sizeof *d);
    d->node = r->node;
    d->shader = s;
    d->b[0] = r->c->step;
    d->n_bind = 1;
    return d;
}

static void bind(qg_vk_dispatch *d, qg_vk_loc l, bool write) {
    QG_ASSERT(d->n_bind < QG_VK_MAX_BIND && l.buf != VK_NULL_HANDLE);
    if (write) d->writes |= 1u << d->n_bind;
    d->b[d->n_bind++] = l;
}

static qg_vk_loc tloc(rec *r, int t) { return r->c->loc(r->c->self, t); }

/* The folds one decode product dispatch takes (qg_vk_fold.c); all zero:
 * none. */
typedef struct xfold {
    bool norm;      /* x is an rmsnorm's input, normalized in the prologue */
    qg_vk_loc nw;   /* norm: its weight (n) */
    float eps;      /* norm */
    bool store;     /* norm: workgroup 0 also writes the normalized column */
    qg_vk_loc nout; /* store: there (the rmsnorm's output) */
    bool resid;     /* y = res + the product: a residual add folded in */
    qg_vk_loc res;  /* resid */
    bool exact;     /* multi-token: the f32 gemm even where the executor has
                       cooperative matrices (router logits choose experts;
                       f16 inputs would move near-ties) */
} xfold;

static const xfold NO_FOLD;

static void push(qg_vk_dispatch *d, uint32_t v) {
    QG_ASSERT(d->push_bytes + 4 <= QG_VK_PUSH_BYTES);
    d->push[d->push_bytes / 4] = v;
    d->push_bytes += 4;
}

static void pushf(qg_vk_dispatch *d, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    push(d, u);
}

static uint32_t div_up(uint64_t a, uint64_t b) { return (uint32_t)((a + b - 1) / b); }

/* The token dimension: gl_WorkGroupID.z runs over ceil(n_tok * mul / div)
 * workgroups, worst case recorded; the executor rewrites the count for the
 * live tokens of each step (indirect dispatch). */
static void tok_groups(qg_vk_dispatch *d, int n_tok_max, uint32_t mul, uint32_t div) {
    d->z_mul = mul;
    d->z_div = div;
    d->groups[2] = div_up((uint64_t)n_tok_max * mul, div);
}

/* Row groups as (gx, gy) with gx * gy >= groups. */
static void row_groups(qg_vk_dispatch *d, uint64_t groups) {
    QG_ASSERT(groups >= 1);
    d->groups[0] = (uint32_t)QG_MIN(groups, (uint64_t)MAX_GROUPS);
    d->groups[1] = div_up(groups, d->groups[0]);
    QG_ASSERT(d->groups[1] <= MAX_GROUPS);
}

/* The row layout of the weight shaders (ops/vulkan/qg_rows.glsl): WG
 * invocations in row groups of lanes, RPT rows per group.  With full
 * subgroups (and subgroup arithmetic) a group is a subgroup (SGROWS);
 * otherwise TPR consecutive invocations: the row's 32-element units
 * rounded up to a power of two, in [8, 32], and at least the na partial
 * sums per lane.  NR = groups * RPT rows per workgroup. */
#define ROWS_WG 128u
typedef struct rows { uint32_t wg, tpr, rpt, nr, sgrows; } rows;

static rows rows_for(const qg_vk_dev *dv, int64_t n, uint32_t na, uint32_t nslot, uint32_t rpt) {
    rows r = {.wg = ROWS_WG, .tpr = 8, .rpt = rpt};
    QG_ASSERT(na <= 16 && nslot <= na);
    if (dv->full_subgroups && nslot <= dv->sg_size) {
        /* the nslot results of a group are written by its first lanes */
        r.sgrows = 1;
        r.tpr = dv->sg_size;
        r.nr = r.wg / dv->sg_size * rpt;
        return r;
    }
    while (r.tpr < 32 && (int64_t)r.tpr * 32 < n) r.tpr *= 2;
    while (r.tpr < na) r.tpr *= 2;
    QG_ASSERT(r.tpr <= r.wg);
    r.nr = r.wg / r.tpr * rpt;
    return r;
}

/* The fast decode products' layout (c->fast_mv; the ops/vulkan
 * matmul_mv, swiglu_mv and aggregate_mv shaders): as rows_for, with RPT
 * rows per row group, each lane holding the raw
 * bytes of one unit of all of them (na_row partial sums per row: 1, or 2
 * for swiglu's gate and up).  RPT is c->mv_rpt when set, else
 * MV_RPT_DEFAULT, or less where MV_RAW_WORDS / words (words: the raw
 * 32-bit words a lane holds per row, qg_dqdot.glsl's DQD_LOAD) is less.
 * MV_RPT_DEFAULT is 2: on an H100 (eighth session, same run) every
 * product at 2 gave tg128 173.6 and 171.5 tok/s, against 159.1 for the
 * largest power of two up to 8 leaving 256 workgroups (4 for q, gate/up
 * and lm_head) and 154 for the default shaders. */
#define MV_RPT_DEFAULT 2u
#define MV_RAW_WORDS 64u
static rows mv_rows(const qg_vk_rec_ctx *c, int64_t n, uint32_t words, uint32_t na_row) {
    uint32_t rpt = c->mv_rpt;
    if (!rpt) rpt = QG_MIN(MV_RPT_DEFAULT, QG_MAX(1u, MV_RAW_WORDS / QG_MAX(words, 1u)));
    QG_ASSERT(rpt >= 1 && rpt <= 8);
    return rows_for(c->d, n, na_row * rpt, rpt, rpt);
}

/* Raw 32-bit words of one unit that qg_dqdot.glsl's DQD_LOAD keeps in
 * registers for type t (F32: none, its dot reads the buffer; counted as 8
 * for the register cap). */
static uint32_t unit_words(qg_dtype t) {
    switch (t) {
    case QG_F16: case QG_BF16: return 16;
    case QG_Q8_0: return 9;
    case QG_Q4_0: return 5;
    case QG_Q4_K: return 8;
    case QG_Q5_K: return 12;
    case QG_Q6_K: return 13;
    default: return 8;
    }
}

static uint32_t row_bytes(const qg_tensor *w) {
    return (uint32_t)qg_dtype_row_bytes(w->type, w->ne[0]);
}

/* The tiled product of multi-token graphs (ops/vulkan/qg_gemm.glsl):
 * y (m, cols) = W x, or silu(W x) * (U x) when ut; grouped: W (n, m, X)
 * experts over moe_sort's tiles (device-written counts at dev_ind), x
 * column a / xdiv of assignment a; else token columns, the token dimension
 * sized per step; exact: never the cooperative-matrix shaders.  Returns
 * the dispatch. */
#define GEMM_BM 64u
#define GEMM_BN 32u
static qg_vk_dispatch *rec_gemm(rec *r, const qg_tensor *wt, qg_vk_loc w, const qg_tensor *ut,
                                qg_vk_loc u, qg_vk_loc x, qg_vk_loc y, const qg_vk_loc *grouped,
                                qg_vk_loc dev_ind, uint32_t xdiv, bool exact) {
    /* the _cm shaders: same interface and tile, on cooperative matrices
     * (f16 inputs); F32 weights keep the f32 products, whose precision
     * their user chose */
    const bool cm = r->c->coopmat && !exact && wt->type != QG_F32 && (!ut || ut->type != QG_F32);
    const qg_vk_shader sh = grouped ? (ut ? (cm ? QG_VK_GEMM_SWIGLU_MOE_CM : QG_VK_GEMM_SWIGLU_MOE)
                                          : (cm ? QG_VK_GEMM_MOE_CM : QG_VK_GEMM_MOE))
                                    : (ut ? (cm ? QG_VK_GEMM_SWIGLU_CM : QG_VK_GEMM_SWIGLU)
                                          : (cm ? QG_VK_GEMM_CM : QG_VK_GEMM));
    qg_vk_dispatch *d = new_dispatch(r, sh);
    d->spec[1] = (uint32_t)wt->type;
    d->spec[2] = (uint32_t)(ut ? ut->type : wt->type);
    bind(d, w, false);
    bind(d, ut ? u : w, false);
    bind(d, x, false);
    bind(d, y, true);
    if (grouped)
        for (int i = 0; i < 3; i++) bind(d, grouped[i], false);
    push(d, (uint32_t)wt->ne[0]);
    push(d, (uint32_t)wt->ne[1]);
    push(d, row_bytes(wt));
    push(d, ut ? row_bytes(ut) : 0);
    push(d, xdiv);
    d->groups[0] = div_up((uint64_t)wt->ne[1], GEMM_BM);
    d->groups[1] = 1;
    QG_ASSERT(d->groups[0] <= MAX_GROUPS);
    if (grouped) d->dev_ind = dev_ind;
    else tok_groups(d, r->c->g->n_tok_max, 1, GEMM_BN);
    return d;
}

/* y (m, ncol) = W (n, m) x; last_only: the last live column only; f: the
 * decode folds (a one-column product).  Decode graphs with fast_mv take
 * matmul_mv.comp (matmul.comp's bindings, push constants and folds with
 * NT = 1; its rows per group from mv_rows). */
static void rec_matmul(rec *r, const qg_tensor *wt, qg_vk_loc w, qg_vk_loc x, qg_vk_loc y,
                       bool last_only, const xfold *f) {
    const int Tm = r->c->g->n_tok_max;
    QG_ASSERT(Tm == 1 || (!f->norm && !f->resid));
    if (Tm > 1 && !last_only) {
        rec_gemm(r, wt, w, NULL, w, x, y, NULL, (qg_vk_loc){0}, 1, f->exact);
        return;
    }
    const bool mv = r->c->fast_mv && Tm == 1;
    const uint32_t NT = (Tm > 1 && !last_only) ? 8 : 1;
    /* two rows per group, so each x load serves two rows (x traffic, not
     * the weights', bounds a matvec's speed from cache): always in prefill,
     * in decode where the matrix has rows enough to keep every SM busy */
    const uint32_t RPT = NT > 1 || wt->ne[1] >= 4096 ? 2 : 1;
    const rows L = mv ? mv_rows(r->c, wt->ne[0], unit_words(wt->type), 1)
                      : rows_for(r->c->d, wt->ne[0], NT * RPT, NT * RPT, RPT);
    qg_vk_dispatch *d = new_dispatch(r, mv ? QG_VK_MATMUL_MV : QG_VK_MATMUL);
    d->spec[0] = L.wg;
    d->spec[1] = (uint32_t)wt->type;
    d->spec[2] = L.tpr;
    d->spec[3] = NT;
    d->spec[4] = L.rpt;
    d->spec[5] = f->norm ? (f->store ? 2 : 1) : 0;
    d->spec[6] = f->resid;
    d->spec[QG_VK_SPEC_SGROWS] = L.sgrows;
    d->spec[QG_VK_SPEC_MV_PF] = mv && r->c->mv_pf;
    d->spec[8] = f->norm ? (uint32_t)(wt->ne[0] / 4) : 1; /* XN4 */
    bind(d, w, false);
    bind(d, x, false);
    bind(d, y, true);
    /* the fold bindings, or stand-ins the shader never touches */
    bind(d, f->norm ? f->nw : x, false);
    bind(d, f->norm && f->store ? f->nout : y, true);
    bind(d, f->resid ? f->res : x, false);
    row_groups(d, div_up((uint64_t)wt->ne[1], L.nr));
    push(d, (uint32_t)wt->ne[0]);
    push(d, (uint32_t)wt->ne[1]);
    push(d, row_bytes(wt));
    push(d, last_only ? 1 : 0);
    push(d, d->groups[0]);
    pushf(d, f->eps);
    if (last_only) d->groups[2] = 1;
    else tok_groups(d, Tm, 1, NT);
}

/* h = silu(G x) * (U x); moe: experts chosen by ids (K per token). */
static void rec_swiglu(rec *r, const qg_tensor *gt, qg_vk_loc g, const qg_tensor *ut, qg_vk_loc u,
                       qg_vk_loc x, qg_vk_loc h, bool moe, qg_vk_loc ids, int K, int X) {
    const int Tm = r->c->g->n_tok_max;
    if (Tm > 1 && !moe) {
        rec_gemm(r, gt, g, ut, u, x, h, NULL, (qg_vk_loc){0}, 1, false);
        return;
    }
    const bool mv = r->c->fast_mv && Tm == 1; /* swiglu_mv.comp, same interface */
    const uint32_t NT = moe || Tm == 1 ? 1 : 8;
    const rows L = mv ? mv_rows(r->c, gt->ne[0], unit_words(gt->type) + unit_words(ut->type), 2)
                      : rows_for(r->c->d, gt->ne[0], 2 * NT, NT, 1);
    qg_vk_dispatch *d = new_dispatch(r, mv ? QG_VK_SWIGLU_MV : QG_VK_SWIGLU);
    d->spec[0] = L.wg;
    d->spec[1] = (uint32_t)gt->type;
    d->spec[2] = (uint32_t)ut->type;
    d->spec[3] = L.tpr;
    d->spec[4] = NT;
    d->spec[5] = L.rpt;
    d->spec[6] = moe ? 1 : 0;
    d->spec[QG_VK_SPEC_SGROWS] = L.sgrows;
    d->spec[QG_VK_SPEC_MV_PF] = mv && r->c->mv_pf;
    bind(d, g, false);
    bind(d, u, false);
    bind(d, x, false);
    bind(d, h, true);
    bind(d, moe ? ids : r->c->step, false);
    row_groups(d, div_up((uint64_t)gt->ne[1], L.nr));
    push(d, (uint32_t)gt->ne[0]);
    push(d, (uint32_t)gt->ne[1]);
    push(d, row_bytes(gt));
    push(d, row_bytes(ut));
    push(d, moe ? (uint32_t)K : 0);
    push(d, moe ? (uint32_t)X : 0);
    push(d, d->groups[0]);
    if (moe) tok_groups(d, Tm, (uint32_t)K, 1);
    else tok_groups(d, Tm, 1, NT);
}

static void rec_topk(rec *r, qg_vk_loc logits, int X, int K, qg_vk_loc ids, qg_vk_loc wts) {
    qg_vk_dispatch *d = new_dispatch(r, QG_VK_TOPK);
    bind(d, logits, false);
    bind(d, ids, true);
    bind(d, wts, true);
    push(d, (uint32_t)X);
    push(d, (uint32_t)K);
    d->groups[0] = d->groups[1] = 1;
    tok_groups(d, r->c->g->n_tok_max, 1, 1);
}

/* y = sum_k wts * D_ids h_k (+ res when f->resid); D (F, E, X). */
static void rec_aggregate(rec *r, const qg_tensor *dt, qg_vk_loc dw, qg_vk_loc h, qg_vk_loc ids,
                          qg_vk_loc wts, qg_vk_loc y, int K, const xfold *f) {
    QG_ASSERT(!f->norm);
    /* fast_mv in decode graphs: aggregate_mv.comp, same interface */
    const bool mv = r->c->fast_mv && r->c->g->n_tok_max == 1;
    const rows L = mv ? mv_rows(r->c, dt->ne[0], unit_words(dt->type), 1)
                      : rows_for(r->c->d, dt->ne[0], 1, 1, 1);
    qg_vk_dispatch *d = new_dispatch(r, mv ? QG_VK_AGGREGATE_MV : QG_VK_AGGREGATE);
    d->spec[0] = L.wg;
    d->spec[1] = (uint32_t)dt->type;
    d->spec[2] = L.tpr;
    d->spec[3] = L.rpt;
    d->spec[4] = f->resid;
    d->spec[QG_VK_SPEC_SGROWS] = L.sgrows;
    d->spec[QG_VK_SPEC_MV_PF] = mv && r->c->mv_pf;
    bind(d, dw, false);
    bind(d, h, false);
    bind(d, ids, false);
    bind(d, wts, false);
    bind(d, y, true);
    bind(d, f->resid ? f->res : h, false); /* h: a stand-in, never read */
    row_groups(d, div_up((uint64_t)dt->ne[1], L.nr));
    push(d, (uint32_t)dt->ne[0]);
    push(d, (uint32_t)dt->ne[1]);
    push(d, row_bytes(dt));
    push(d, (uint32_t)K);
    push(d, (uint32_t)dt->ne[2]);
    push(d, d->groups[0]);
    tok_groups(d, r->c->g->n_tok_max, 1, 1);
}

/* attention node nd: kv_append (when append), then attention. */
static void rec_attention(rec *r, const qg_node *nd, bool append) {
    const qg_tensor *T = r->c->g->tensors;
    const qg_op_params *p = &nd->p;
    const uint32_t f16 = T[nd->in[3]].type == QG_F16, dkv = (uint32_t)T[nd->in[3]].ne[0];
    const uint32_t C = (uint32_t)T[nd->in[3]].ne[1];
    const int Tm = r->c->g->n_tok_max;
    qg_vk_dispatch *d;
    if (append) {
        d = new_dispatch(r, QG_VK_KV_APPEND);
        d->spec[1] = f16;
        bind(d, tloc(r, nd->in[1]), false);
        bind(d, tloc(r, nd->in[2]), false);
        bind(d, tloc(r, nd->in[3]), true);
        bind(d, tloc(r, nd->in[4]), true);
        bind(d, tloc(r, nd->in[5]), false);
        push(d, dkv);
        push(d, C);
        d->groups[0] = div_up(dkv / 2, 64);
        d->groups[1] = 2;
        tok_groups(d, Tm, 1, 1);
    }
    const int hd = p->head_dim, G = p->n_head_kv > 0 ? p->n_head / p->n_head_kv : 0;
    if (r->c->attn_tile && Tm > 1 && hd % 4 == 0 && hd <= 256 && G >= 1 && G <= 32 &&
        32 % G == 0 && p->n_head % p->n_head_kv == 0) {
        /* attention_tile.comp: 32 queries (G heads x 32 / G tokens) of a
         * kv head per workgroup */
        d = new_dispatch(r, QG_VK_ATTENTION_TILE);
        d->spec[1] = f16;
        d->spec[2] = (uint32_t)hd;
        bind(d, tloc(r, nd->in[0]), false);
        bind(d, tloc(r, nd->in[3]), false);
        bind(d, tloc(r, nd->in[4]), false);
        bind(d, tloc(r, nd->in[5]), false);
        bind(d, tloc(r, nd->out[0]), true);
        push(d, (uint32_t)hd);
        push(d, (uint32_t)p->n_head);
        push(d, (uint32_t)p->n_head_kv);
        push(d, C);
        d->groups[0] = (uint32_t)p->n_head_kv;
        d->groups[1] = 1;
        tok_groups(d, Tm, 1, (uint32_t)(32 / G));
        return;
    }
    d = new_dispatch(r, QG_VK_ATTENTION);
    d->spec[1] = f16;
    bind(d, tloc(r, nd->in[0]), false);
    bind(d, tloc(r, nd->in[3]), false);
    bind(d, tloc(r, nd->in[4]), false);
    bind(d, tloc(r, nd->in[5]), false);
    bind(d, tloc(r, nd->out[0]), true);
    push(d, (uint32_t)p->head_dim);
    push(d, (uint32_t)p->n_head);
    push(d, (uint32_t)p->n_head_kv);
    push(d, C);
    d->groups[0] = (uint32_t)p->n_head;
    d->groups[1] = 1;
    tok_groups(d, Tm, 1, 1);
}

/* moe_fused.  Decode: router (matmul), topk, expert swiglu (one workgroup
 * column per chosen expert), aggregate; with the folds f: the router
 * normalizes x's source column and stores it in x (the dropped rmsnorm's
 * output) for the expert swiglu, and the aggregate writes y + residual
 * into y (the folded add's output).  Multi-token graphs: router
 * (gemm), topk, moe_sort (assignments grouped by expert, tiles of up to
 * MOE_NT), gemm_swiglu_moe and gemm_moe over the tiles (indirect
 * dispatches sized by moe_sort, each expert's weights read once per tile),
 * moe_combine (weighted sum per token). */
static void rec_moe_fused(rec *r, const qg_node *nd, qg_vk_loc x_src, qg_vk_loc y,
                          const xfold *f) {
    const qg_graph *g = r->c->g;
    const qg_tensor *T = g->tensors;
    const qg_tensor *rt = &T[nd->in[1]], *gt = &T[nd->in[2]], *ut = &T[nd->in[3]];
    const qg_tensor *dt = &T[nd->in[4]];
    const int X = (int)rt->ne[1], K = (int)T[nd->out[1]].ne[0], Tm = g->n_tok_max;
    const int64_t E = T[nd->in[0]].ne[0], F = gt->ne[1];
    const moe_scratch ms = moe_scratch_of(g, nd);
    const qg_vk_loc s = r->c->moe_scratch;
    QG_ASSERT(s.range >= ms.total);
    const qg_vk_loc logits = {s.buf, s.off + ms.logits, 4 * (VkDeviceSize)X * Tm};
    const qg_vk_loc h = {s.buf, s.off + ms.h, 4 * (VkDeviceSize)F * K * Tm};
    const qg_vk_loc x = tloc(r, nd->in[0]);
    const qg_vk_loc ids = tloc(r, nd->out[1]), wts = tloc(r, nd->out[2]);
    const xfold fr = {.norm = f->norm, .nw = f->nw, .eps = f->eps, .store = f->norm, .nout = x,
                      .exact = true};
    const xfold fa = {.resid = f->resid, .res = f->res};
    rec_matmul(r, rt, tloc(r, nd->in[1]), x_src, logits, false, &fr);
    rec_topk(r, logits, X, K, ids, wts);
    if (Tm == 1) {
        rec_swiglu(r, gt, tloc(r, nd->in[2]), ut, tloc(r, nd->in[3]), x, h, true, ids, K, X);
        rec_aggregate(r, dt, tloc(r, nd->in[4]), h, ids, wts, y, K, &fa);
        return;
    }
    const VkDeviceSize A = (VkDeviceSize)K * Tm;
    const qg_vk_loc off = {s.buf, s.off + ms.off, 4 * (VkDeviceSize)(X + 1)};
    const qg_vk_loc asg = {s.buf, s.off + ms.asg, 4 * A};
    const qg_vk_loc tiles = {s.buf, s.off + ms.tiles, 8 * (VkDeviceSize)ms.max_tiles};
    const qg_vk_loc ind = {s.buf, s.off + ms.ind, 2 * sizeof(VkDispatchIndirectCommand)};
    const qg_vk_loc yk = {s.buf, s.off + ms.yk, 4 * (VkDeviceSize)E * A};
    const qg_vk_loc grouped[3] = {asg, off, tiles};
    qg_vk_dispatch *d = new_dispatch(r, QG_VK_MOE_SORT);
    bind(d, ids, false);
    bind(d, off, true);
    bind(d, asg, true);
    bind(d, tiles, true);
    bind(d, ind, true);
    push(d, (uint32_t)K);
    push(d, (uint32_t)X);
    push(d, MOE_NT);
    push(d, div_up((uint64_t)F, GEMM_BM)); /* the grids of the two products */
    push(d, 1);
    push(d, div_up((uint64_t)E, GEMM_BM));
    push(d, 1);
    d->groups[0] = d->groups[1] = d->groups[2] = 1;
    /* gate/up: x columns are tokens (a / K); down: h columns are a */
    rec_gemm(r, gt, tloc(r, nd->in[2]), ut, tloc(r, nd->in[3]), x, h, grouped,
             (qg_vk_loc){ind.buf, ind.off, sizeof(VkDispatchIndirectCommand)}, (uint32_t)K, false);
    rec_gemm(r, dt, tloc(r, nd->in[4]), NULL, (qg_vk_loc){0}, h, yk, grouped,
             (qg_vk_loc){ind.buf, ind.off + sizeof(VkDispatchIndirectCommand),
                         sizeof(VkDispatchIndirectCommand)}, 1, false);
    d = new_dispatch(r, QG_VK_MOE_COMBINE);
    bind(d, yk, false);
    bind(d, ids, false);
    bind(d, wts, false);
    bind(d, y, true);
    push(d, (uint32_t)E);
    push(d, (uint32_t)K);
    push(d, (uint32_t)X);
    d->groups[0] = div_up((uint64_t)E, 256);
    d->groups[1] = 1;
    tok_groups(d, Tm, 1, 1);
}

/* Do two locations share bytes? */
static bool overlap(qg_vk_loc a, qg_vk_loc b) {
    return a.buf == b.buf && a.off < b.off + b.range && b.off < a.off + a.range;
}

/* Product node pi (qkv, matmul, router, lm_head, moe_fused) with its
 * decode folds: ri >= 0 is the rmsnorm node before it that it takes into
 * its prologue (qg_vk_fold_norm said so), and the add after it, when
 * qg_vk_fold_add_resid allows, goes into its epilogue.  Returns the nodes
 * covered from pi: 1, or 2 with the add. */
static int rec_product(rec *r, int pi, int end, int ri) {
    const qg_graph *g = r->c->g;
    const qg_tensor *T = g->tensors;
    const qg_node *nd = &g->nodes[pi];
    const int n0 = *r->n;
    xfold f = NO_FOLD;
    qg_vk_loc x = tloc(r, nd->in[nd->op == QG_OP_MATMUL ? 1 : 0]);
    if (ri >= 0) { /* x's source column and the norm's weight instead */
        const qg_node *rn = &g->nodes[ri];
        f.norm = true;
        f.nw = tloc(r, rn->in[1]);
        f.eps = rn->p.eps;
        x = tloc(r, rn->in[0]);
    }
    const int res = r->c->fold ? qg_vk_fold_add_resid(g, pi, end) : -1;
    const qg_vk_loc y = tloc(r, res >= 0 ? g->nodes[pi + 1].out[0] : nd->out[0]);
    if (res >= 0) {
        f.resid = true;
        f.res = tloc(r, res);
    }
    r->node = pi;
    switch (nd->op) {
    case QG_OP_QKV:
        for (int i = 0; i < 3; i++)
            rec_matmul(r, &T[nd->in[1 + i]], tloc(r, nd->in[1 + i]), x, tloc(r, nd->out[i]), false,
                       &f);
        break;
    case QG_OP_MATMUL:
        rec_matmul(r, &T[nd->in[0]], tloc(r, nd->in[0]), x, y, false, &f);
        break;
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD:
        f.exact = nd->op == QG_OP_ROUTER;
        rec_matmul(r, &T[nd->in[1]], tloc(r, nd->in[1]), x, y,
                   nd->op == QG_OP_LM_HEAD && nd->p.only_last, &f);
        break;
    case QG_OP_MOE_FUSED:
        rec_moe_fused(r, nd, x, y, &f);
        break;
    default:
        QG_ABORT("vulkan: %s is no product", nd->name);
    }
    if (res < 0) return 1;
    /* the add's output: its own memory (qg_vk_exec.c), so nothing the
     * product reads can share its bytes */
    for (int i = n0; i < *r->n; i++)
        for (int k = 1; k < (*r->out)[i].n_bind; k++) {
            const qg_vk_loc b = (*r->out)[i].b[k];
            QG_ASSERT(!overlap(b, y) || (b.buf == y.buf && b.off == y.off &&
                                         ((*r->out)[i].writes >> k & 1u)));
        }
    return 2;
}

/* Does node b fuse into node a (see qg_vk_record_node)? */
static bool fuses(const qg_graph *g, const qg_node *a, const qg_node *b) {
    if (a->op == QG_OP_ADD && b->op == QG_OP_RMSNORM)
        return b->in[0] == a->out[0] && g->tensors[b->in[0]].ne[0] == g->tensors[a->in[0]].ne[0];
    if (a->op == QG_OP_ROPE && b->op == QG_OP_ATTENTION)
        return b->in[0] == a->out[0] && b->in[1] == a->out[1] && b->in[5] == a->in[4] &&
               b->p.head_dim == a->p.head_dim && b->p.n_head == a->p.n_head &&
               b->p.n_head_kv == a->p.n_head_kv;
    return false;
}

int qg_vk_record_node(const qg_vk_rec_ctx *c, int ni, int end, qg_vk_dispatch **out, int *n,
                      int *cap) {
    rec r = {.c = c, .node = ni, .out = out, .n = n, .cap = cap};
    const qg_graph *g = c->g;
    const qg_node *nd = &g->nodes[ni];
    const qg_node *next = c->fuse && ni + 1 < end ? &g->nodes[ni + 1] : NULL;
    const bool fused = next && fuses(g, nd, next);
    const qg_tensor *T = g->tensors;
    const qg_op_params *p = &nd->p;
    const uint32_t Tm = (uint32_t)g->n_tok_max;
#define IN(i) tloc(&r, nd->in[i])
#define OUT(i) tloc(&r, nd->out[i])
#define TIN(i) (&T[nd->in[i]])
#define TOUT(i) (&T[nd->out[i]])
    qg_vk_dispatch *d;
    switch (nd->op) {
    case QG_OP_EMBED: {
        const qg_tensor *w = TIN(0);
        d = new_dispatch(&r, QG_VK_EMBED);
        d->spec[1] = (uint32_t)w->type;
        bind(d, IN(0), false);
        bind(d, IN(1), false);
        bind(d, OUT(0), true);
        push(d, (uint32_t)w->ne[0]);
        push(d, row_bytes(w));
        push(d, (uint32_t)w->ne[1]);
        d->groups[0] = div_up((uint64_t)w->ne[0] / 32, 64);
        d->groups[1] = 1;
        tok_groups(d, (int)Tm, 1, 1);
        return 1;
    }
    case QG_OP_RMSNORM:
        if (c->fold && qg_vk_fold_norm(c->d, g, ni, end)) return 1 + rec_product(&r, ni + 1, end, ni);
        d = new_dispatch(&r, QG_VK_RMSNORM);
        bind(d, IN(0), false);
        bind(d, IN(1), false);
        bind(d, OUT(0), true);
        push(d, (uint32_t)TIN(0)->ne[0]);
        pushf(d, p->eps);
        d->groups[0] = d->groups[1] = 1;
        tok_groups(d, (int)Tm, 1, 1);
        return 1;
    case QG_OP_ADD:
        if (fused) { /* y = a + b; h = rmsnorm(y) * w */
            d = new_dispatch(&r, QG_VK_ADD_RMSNORM);
            bind(d, IN(0), false);
            bind(d, IN(1), false);
            bind(d, OUT(0), true);
            bind(d, tloc(&r, next->in[1]), false);
            bind(d, tloc(&r, next->out[0]), true);
            push(d, (uint32_t)TIN(0)->ne[0]);
            pushf(d, next->p.eps);
            d->groups[0] = d->groups[1] = 1;
            tok_groups(d, (int)Tm, 1, 1);
            return 2;
        }
        d = new_dispatch(&r, QG_VK_ADD);
        bind(d, IN(0), false);
        bind(d, IN(1), false);
        bind(d, OUT(0), true);
        push(d, (uint32_t)TIN(0)->ne[0]);
        d->groups[0] = div_up((uint64_t)TIN(0)->ne[0], 256);
        d->groups[1] = 1;
        tok_groups(d, (int)Tm, 1, 1);
        return 1;
    case QG_OP_QKV:
    case QG_OP_MATMUL:
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD:
    case QG_OP_MOE_FUSED:
        return rec_product(&r, ni, end, -1);
    case QG_OP_ROPE:
        d = new_dispatch(&r, fused ? QG_VK_ROPE_KV : QG_VK_ROPE);
        for (int i = 0; i < 5; i++) bind(d, IN(i), false);
        bind(d, c->rope_table(c->self, nd), false);
        bind(d, OUT(0), true);
        bind(d, OUT(1), true);
        if (fused) { /* also append k and v: the attention's first half */
            d->spec[1] = T[next->in[3]].type == QG_F16;
            bind(d, tloc(&r, next->in[2]), false);
            bind(d, tloc(&r, next->in[3]), true);
            bind(d, tloc(&r, next->in[4]), true);
        }
        push(d, (uint32_t)p->head_dim);
        push(d, (uint32_t)p->n_head);
        push(d, (uint32_t)p->n_head_kv);
        pushf(d, p->eps);
        push(d, (uint32_t)g->n_ctx);
        d->groups[0] = (uint32_t)(p->n_head + p->n_head_kv);
        d->groups[1] = 1;
        tok_groups(d, (int)Tm, 1, 1);
        if (!fused) return 1;
        r.node = ni + 1;
        rec_attention(&r, next, false);
        return 2;
    case QG_OP_ATTENTION:
        rec_attention(&r, nd, true);
        return 1;
    case QG_OP_SWIGLU:
        rec_swiglu(&r, TIN(1), IN(1), TIN(2), IN(2), IN(0), OUT(0), false, c->step, 0, 0);
        return 1;
    case QG_OP_TOPK:
        rec_topk(&r, IN(0), (int)TIN(0)->ne[0], (int)TOUT(0)->ne[0], OUT(0), OUT(1));
        return 1;
    case QG_OP_EXPERT_SWIGLU:
        rec_swiglu(&r, TIN(1), IN(1), TIN(2), IN(2), IN(0), OUT(0), true, IN(3),
                   (int)TIN(3)->ne[0], (int)TIN(1)->ne[2]);
        return 1;
    case QG_OP_AGGREGATE:
        rec_aggregate(&r, TIN(1), IN(1), IN(0), IN(2), IN(3), OUT(0), (int)TIN(2)->ne[0],
                      &NO_FOLD);
        return 1;
    case QG_OP_COPY:
    case QG_OP_COUNT:
        break;
    }
    QG_ABORT("vulkan: node %s (%s) cannot be recorded", nd->name, qg_op_name(nd->op));
#undef IN
#undef OUT
#undef TIN
#undef TOUT
}
