/*
 * op_moe.c - the sparse-expert kernels: topk, expert_swiglu, aggregate and
 * moe_fused (router -> topk -> expert_swiglu -> aggregate in one node).
 *
 * Each op is a "part" function of explicit arrays run by every worker;
 * the unfused kernels and moe_fused call the same parts with the same
 * work items, so the fused node is bit-identical to the unfused chain.
 *
 * Prefill (n_tok > 1) groups the (token, k) assignments by expert: worker
 * 0 builds the lists in the node's shared scratch (a counting sort, tokens
 * ascending within an expert; the experts that have assignments; two work
 * counters), then a barrier.  The expert products are work items of (one
 * expert, MOE_FB rows of F) for gate/up and (one expert, MOE_EB rows of E)
 * for down, taken in ascending order from an atomic counter, so every
 * worker stays busy however unevenly the tokens are routed, and the
 * workers together stream each expert's rows front to back.  An item
 * multiplies its rows by all the expert's tokens at once
 * (qg_cpu_mm_cols: the columns are pointers, nothing is gathered for the
 * usual few tokens per expert).  Down writes each assignment's output
 * (E, K*T) to shared scratch; after a barrier every worker sums the K
 * outputs of its rows of every token.  What an item computes does not
 * depend on which worker takes it, so results are the same for any
 * thread count.
 * Decode (n_tok == 1) splits the K*F expert rows (expert_swiglu) or the E
 * output rows (aggregate) evenly and uses qk->dot.
 *
 * aggregate sums the K expert outputs of a token in ascending k, whatever
 * the path, so the result does not depend on the thread count.
 */
#include "qg_cpu_internal.h"

#include <stdatomic.h>

#define MOE_FB 32 /* rows of F per gate/up work item */
#define MOE_EB 64 /* rows of E per down work item */

/* The expert lists in shared scratch. */
typedef struct moe_lists {
    atomic_int *next; /* work item counters: next[0] gate/up, next[16] down
                         (one cache line each) */
    int32_t *off;     /* (X+1) assignments of expert e: asg[off[e] .. off[e+1]) */
    int32_t *cur;     /* (X) fill cursors */
    int32_t *used;    /* (X+1) used[0] experts have assignments: used[1..] */
    int32_t *asg;     /* (K*T) assignment ids t*K + k, grouped by expert */
} moe_lists;

#define LISTS_HEAD 128 /* bytes of the two counters' cache lines */

static size_t lists_bytes(int X, int K, int T) {
    return LISTS_HEAD + qg_align_up(sizeof(int32_t) * (size_t)(3 * X + 2 + K * T), 64);
}

static moe_lists lists_at(void *p, int X) {
    moe_lists L;
    L.next = p;
    L.off = (int32_t *)(void *)((char *)p + LISTS_HEAD);
    L.cur = L.off + X + 1;
    L.used = L.cur + X;
    L.asg = L.used + X + 1;
    return L;
}

/* Counting sort of the n_tok*K assignments by expert id, the list of used
 * experts, the work counters reset.  One worker, before a barrier. */
static void lists_build(const int32_t *ids, int X, int K, int n_tok,
                        const moe_lists *L) {
    const int n = n_tok * K;
    memset(L->off, 0, sizeof(int32_t) * (size_t)(X + 1));
    for (int i = 0; i < n; i++) {
        QG_ASSERT(ids[i] >= 0 && ids[i] < X);
        L->off[ids[i] + 1]++;
    }
    for (int e = 0; e < X; e++) L->off[e + 1] += L->off[e];
    memcpy(L->cur, L->off, sizeof(int32_t) * (size_t)X);
    for (int i = 0; i < n; i++) L->asg[L->cur[ids[i]]++] = i;
    int nu = 0;
    for (int e = 0; e < X; e++)
        if (L->off[e + 1] > L->off[e]) L->used[1 + nu++] = e;
    L->used[0] = nu;
    atomic_store_explicit(&L->next[0], 0, memory_order_relaxed);
    atomic_store_explicit(&L->next[16], 0, memory_order_relaxed);
}

/* Bytes at the start of a work item's rows that the worker prefetches (into
 * L2) while it finishes its previous item. */
#define MOE_PF_BYTES 4096

static void prefetch_bytes(const void *p, size_t bytes) {
    const char *c = p;
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 2);
}

/* The next work item of counter `which` (0 or 16), or -1 past n_items. */
static int lists_take(const moe_lists *L, int which, int n_items) {
    const int it = atomic_fetch_add_explicit(&L->next[which], 1, memory_order_relaxed);
    return it < n_items ? it : -1;
}

/* ---- topk ----------------------------------------------------------- */

/* logits (X,T) -> ids (I32,K,T), wts (K,T): per token softmax (f32, max
 * subtracted), the K largest probabilities (ties: lower id first), their
 * weights divided by their sum.  p: (X) scratch.  Tokens split evenly. */
static void topk_part(const float *logits, int X, int K, int n_tok,
                      int32_t *ids, float *wts, float *p, int ith, int nth) {
    int64_t t0, t1;
    qg_cpu_split(n_tok, ith, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *l = logits + (size_t)t * (size_t)X;
        int32_t *id = ids + (size_t)t * (size_t)K;
        float *w = wts + (size_t)t * (size_t)K;
        float mx = -INFINITY;
        for (int e = 0; e < X; e++) mx = l[e] > mx ? l[e] : mx;
        float sum = 0;
        for (int e = 0; e < X; e++) {
            p[e] = expf(l[e] - mx);
            sum += p[e];
        }
        const float inv = 1.0f / sum;
        for (int e = 0; e < X; e++) p[e] *= inv;
        float wsum = 0;
        for (int k = 0; k < K; k++) {
            int best = -1;
            float bv = 0;
            for (int e = 0; e < X; e++) {
                if (p[e] == -1.0f) continue; /* taken */
                if (best < 0 || p[e] > bv) {
                    best = e;
                    bv = p[e];
                }
            }
            id[k] = best;
            w[k] = bv;
            wsum += bv;
            p[best] = -1.0f;
        }
        for (int k = 0; k < K; k++) w[k] = w[k] / wsum;
    }
}

void qg_cpu_topk(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *lt = qg_cpu_in(a, 0), *it = qg_cpu_out(a, 0);
    topk_part(qg_cpu_in_ptr(a, 0), (int)lt->ne[0], (int)it->ne[0], a->n_tok,
              qg_cpu_out_ptr(a, 0), qg_cpu_out_ptr(a, 1), qg_cpu_scratch(a, ith),
              ith, nth);
}

/* ---- expert_swiglu -------------------------------------------------- */

/* The experts' weights of one projection. */
typedef struct moe_w {
    qg_dtype type;
    const char *data;
    size_t row_bytes; /* one row of n elements */
    int64_t rows;     /* rows per expert */
} moe_w;

static inline const char *moe_row(const moe_w *w, int e, int64_t r) {
    return w->data + ((size_t)e * (size_t)w->rows + (size_t)r) * w->row_bytes;
}

static size_t swiglu_scratch(int64_t E, int T) {
    if (T == 1) return 0;
    return 2 * (size_t)MOE_FB * QG_CPU_COLS + qg_cpu_mm_cols_scratch(E, MOE_FB, T);
}

/*
 * x (E,T), gate/up experts (E,F,X), ids (K,T) -> h (F,K,T):
 * h[:,k,t] = silu(gate_e x_t) * (up_e x_t), e = ids[k,t].
 * Scratch (prefill): gate tile (FB, COLS) | up tile (FB, COLS) |
 * qg_cpu_mm_cols scratch.
 */
static void expert_swiglu_part(const qg_quant_kernels *qk, const float *x,
                               int64_t E, const moe_w *gw, const moe_w *uw,
                               const int32_t *ids, int K, int n_tok,
                               const moe_lists *L, int X, float *h,
                               float *scratch, int ith, int nth) {
    const int64_t F = gw->rows;
    if (n_tok == 1) {
        int64_t i0, i1;
        qg_cpu_split((int64_t)K * F, ith, nth, &i0, &i1);
        for (int64_t i = i0; i < i1; i++) {
            const int k = (int)(i / F);
            const int64_t f = i % F;
            const int e = ids[k];
            QG_ASSERT(e >= 0 && e < X);
            const float g = qk->dot(gw->type, moe_row(gw, e, f), x, E);
            const float u = qk->dot(uw->type, moe_row(uw, e, f), x, E);
            h[i] = qg_cpu_silu(g) * u;
        }
        return;
    }
    float *gt = scratch;                     /* (FB, COLS) */
    float *ut = gt + MOE_FB * QG_CPU_COLS;   /* (FB, COLS) */
    float *ms = ut + MOE_FB * QG_CPU_COLS;   /* qg_cpu_mm_cols scratch */
    const float *xp[QG_CPU_COLS];            /* the block's token columns */
    const int nch = (int)((F + MOE_FB - 1) / MOE_FB);
    const int n_items = L->used[0] * nch;
    /* each worker holds its next item, so it can prefetch the item's first
     * rows of gate and up while it works on the current one */
    for (int it = lists_take(L, 0, n_items), nx; it >= 0; it = nx) {
        nx = lists_take(L, 0, n_items);
        if (nx >= 0) {
            const int ne = L->used[1 + nx / nch];
            const int64_t nf0 = (int64_t)(nx % nch) * MOE_FB;
            const int64_t nnr = QG_MIN((int64_t)MOE_FB, F - nf0);
            prefetch_bytes(moe_row(gw, ne, nf0), QG_MIN((size_t)MOE_PF_BYTES, (size_t)nnr * gw->row_bytes));
            prefetch_bytes(moe_row(uw, ne, nf0), QG_MIN((size_t)MOE_PF_BYTES, (size_t)nnr * uw->row_bytes));
        }
        const int e = L->used[1 + it / nch];
        const int64_t f0 = (int64_t)(it % nch) * MOE_FB;
        const int nr = (int)QG_MIN((int64_t)MOE_FB, F - f0);
        const int32_t *as = L->asg + L->off[e];
        const int cnt = L->off[e + 1] - L->off[e];
        for (int c0 = 0; c0 < cnt; c0 += QG_CPU_COLS) {
            const int nc = QG_MIN(QG_CPU_COLS, cnt - c0);
            for (int c = 0; c < nc; c++) xp[c] = x + (size_t)(as[c0 + c] / K) * (size_t)E;
            qg_cpu_mm_cols(qk, gw->type, moe_row(gw, e, f0), gw->row_bytes, E, nr, xp, nc, gt,
                           MOE_FB, ms);
            qg_cpu_mm_cols(qk, uw->type, moe_row(uw, e, f0), uw->row_bytes, E, nr, xp, nc, ut,
                           MOE_FB, ms);
            for (int c = 0; c < nc; c++) {
                float *hc = h + (size_t)as[c0 + c] * (size_t)F + (size_t)f0;
                for (int r = 0; r < nr; r++)
                    hc[r] = qg_cpu_silu(gt[c * MOE_FB + r]) * ut[c * MOE_FB + r];
            }
        }
    }
}

static moe_w moe_weights(const qg_tensor *t, const void *data) {
    /* (n, rows, X) */
    moe_w w = {t->type, data, qg_dtype_row_bytes(t->type, t->ne[0]), t->ne[1]};
    return w;
}

void qg_cpu_expert_swiglu(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *xt = qg_cpu_in(a, 0), *gt = qg_cpu_in(a, 1), *it = qg_cpu_in(a, 3);
    const moe_w gw = moe_weights(gt, qg_cpu_in_ptr(a, 1));
    const moe_w uw = moe_weights(qg_cpu_in(a, 2), qg_cpu_in_ptr(a, 2));
    const int X = (int)gt->ne[2], K = (int)it->ne[0];
    const int32_t *ids = qg_cpu_in_ptr(a, 3);
    moe_lists L = {0};
    if (a->n_tok > 1) {
        L = lists_at(a->shared, X);
        if (ith == 0) lists_build(ids, X, K, a->n_tok, &L);
        qg_threadpool_barrier(a->tp);
    }
    expert_swiglu_part(a->qk, qg_cpu_in_ptr(a, 0), xt->ne[0], &gw, &uw, ids, K,
                       a->n_tok, &L, X, qg_cpu_out_ptr(a, 0), qg_cpu_scratch(a, ith),
                       ith, nth);
}

/* ---- aggregate ------------------------------------------------------ */

static size_t aggregate_scratch(int64_t F, int T) {
    if (T == 1) return 0;
    return (size_t)MOE_EB * QG_CPU_COLS + qg_cpu_mm_cols_scratch(F, MOE_EB, T);
}

/* Shared bytes of the per-assignment down outputs dn (E, K*T). */
static size_t dn_bytes(int64_t E, int K, int T) {
    return T > 1 ? qg_align_up(sizeof(float) * (size_t)E * (size_t)K * (size_t)T, 64) : 0;
}

/*
 * h (F,K,T), down experts (F,E,X), ids (K,T), wts (K,T) -> y (E,T):
 * y[:,t] = sum_{k ascending} wts[k,t] * (down_e h[:,k,t]).
 * Prefill: dn (E, K*T) shared, the outputs of every assignment, then a
 * barrier and the weighted sums.  Scratch (prefill): out tile (EB, COLS) |
 * qg_cpu_mm_cols scratch.
 */
static void aggregate_part(const qg_quant_kernels *qk, qg_threadpool *tp,
                           const float *h, int64_t F, const moe_w *dw,
                           const int32_t *ids, const float *wts, int K, int n_tok,
                           const moe_lists *L, int X, float *dn, float *y,
                           float *scratch, int ith, int nth) {
    const int64_t E = dw->rows;
    int64_t r0, r1;
    qg_cpu_split(E, ith, nth, &r0, &r1);
    if (n_tok == 1) {
        for (int k = 0; k < K; k++) QG_ASSERT(ids[k] >= 0 && ids[k] < X);
        for (int64_t r = r0; r < r1; r++) {
            float acc = 0;
            for (int k = 0; k < K; k++)
                acc += wts[k] * qk->dot(dw->type, moe_row(dw, ids[k], r),
                                        h + (size_t)k * (size_t)F, F);
            y[r] = acc;
        }
        return;
    }
    float *ot = scratch;                   /* (EB, COLS) */
    float *ms = ot + MOE_EB * QG_CPU_COLS; /* qg_cpu_mm_cols scratch */
    const float *hp[QG_CPU_COLS];          /* the block's assignment columns */
    const int nch = (int)((E + MOE_EB - 1) / MOE_EB);
    const int n_items = L->used[0] * nch;
    for (int it = lists_take(L, 16, n_items), nx; it >= 0; it = nx) {
        nx = lists_take(L, 16, n_items); /* held, prefetched: as for gate/up */
        if (nx >= 0) {
            const int64_t ne0 = (int64_t)(nx % nch) * MOE_EB;
            const int64_t nnr = QG_MIN((int64_t)MOE_EB, E - ne0);
            prefetch_bytes(moe_row(dw, L->used[1 + nx / nch], ne0),
                           QG_MIN((size_t)MOE_PF_BYTES, (size_t)nnr * dw->row_bytes));
        }
        const int e = L->used[1 + it / nch];
        const int64_t e0 = (int64_t)(it % nch) * MOE_EB;
        const int nr = (int)QG_MIN((int64_t)MOE_EB, E - e0);
        const int32_t *as = L->asg + L->off[e];
        const int cnt = L->off[e + 1] - L->off[e];
        for (int c0 = 0; c0 < cnt; c0 += QG_CPU_COLS) {
            const int nc = QG_MIN(QG_CPU_COLS, cnt - c0);
            for (int c = 0; c < nc; c++) hp[c] = h + (size_t)as[c0 + c] * (size_t)F;
            qg_cpu_mm_cols(qk, dw->type, moe_row(dw, e, e0), dw->row_bytes, F, nr, hp, nc, ot,
                           MOE_EB, ms);
            for (int c = 0; c < nc; c++)
                memcpy(dn + (size_t)as[c0 + c] * (size_t)E + (size_t)e0, ot + c * MOE_EB,
                       sizeof(float) * (size_t)nr);
        }
    }
    qg_threadpool_barrier(tp);
    /* y[r,t] = sum_k wts[k,t] * dn[r, t*K+k], k ascending, rows [r0, r1) */
    for (int t = 0; t < n_tok; t++) {
        const float *w = wts + (size_t)t * (size_t)K;
        float *yt = y + (size_t)t * (size_t)E;
        for (int64_t r = r0; r < r1; r++) yt[r] = 0;
        for (int k = 0; k < K; k++) {
            const float *dk = dn + ((size_t)t * (size_t)K + (size_t)k) * (size_t)E;
            for (int64_t r = r0; r < r1; r++) yt[r] += w[k] * dk[r];
        }
    }
}

void qg_cpu_aggregate(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *dt = qg_cpu_in(a, 1), *it = qg_cpu_in(a, 2);
    const moe_w dw = moe_weights(dt, qg_cpu_in_ptr(a, 1));
    const int X = (int)dt->ne[2], K = (int)it->ne[0];
    const int32_t *ids = qg_cpu_in_ptr(a, 2);
    moe_lists L = {0};
    float *dn = NULL; /* (E, K*T) */
    if (a->n_tok > 1) {
        dn = a->shared;
        L = lists_at((char *)a->shared + dn_bytes(dw.rows, K, a->g->n_tok_max), X);
        if (ith == 0) lists_build(ids, X, K, a->n_tok, &L);
        qg_threadpool_barrier(a->tp);
    }
    aggregate_part(a->qk, a->tp, qg_cpu_in_ptr(a, 0), dt->ne[0], &dw, ids, qg_cpu_in_ptr(a, 3),
                   K, a->n_tok, &L, X, dn, qg_cpu_out_ptr(a, 0), qg_cpu_scratch(a, ith),
                   ith, nth);
}

/* ---- moe_fused ------------------------------------------------------ */

/* Shared scratch of moe_fused: logits (X,T) | h (F,K,T) | dn (E,K*T) |
 * lists (dn and lists for prefill only). */
typedef struct fused_layout {
    size_t logits, h, dn, lists, total; /* byte offsets, total size */
} fused_layout;

static fused_layout fused_layout_of(int64_t E, int64_t F, int X, int K, int T) {
    fused_layout l;
    l.logits = 0;
    l.h = qg_align_up(sizeof(float) * (size_t)X * (size_t)T, 64);
    l.dn = l.h + qg_align_up(sizeof(float) * (size_t)F * (size_t)K * (size_t)T, 64);
    l.lists = l.dn + dn_bytes(E, K, T);
    l.total = l.lists + (T > 1 ? lists_bytes(X, K, T) : 0);
    return l;
}

/* moe_fused: x (E,T), gate_inp (E,X), gate_exps (E,F,X), up_exps (E,F,X),
 * down_exps (F,E,X) -> y (E,T), ids (I32,K,T), wts (K,T).  The unfused
 * chain's parts, separated by barriers, intermediates in shared scratch. */
void qg_cpu_moe_fused(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *xt = qg_cpu_in(a, 0), *rt = qg_cpu_in(a, 1);
    const qg_tensor *gt = qg_cpu_in(a, 2), *it = qg_cpu_out(a, 1);
    const int64_t E = xt->ne[0], F = gt->ne[1];
    const int X = (int)gt->ne[2], K = (int)it->ne[0];
    const float *x = qg_cpu_in_ptr(a, 0);
    int32_t *ids = qg_cpu_out_ptr(a, 1);
    float *wts = qg_cpu_out_ptr(a, 2);
    float *scratch = qg_cpu_scratch(a, ith);
    const fused_layout lay = fused_layout_of(E, F, X, K, a->g->n_tok_max);
    QG_ASSERT(a->shared_bytes >= lay.total);
    float *logits = (float *)(void *)((char *)a->shared + lay.logits); /* (X,T) */
    float *h = (float *)(void *)((char *)a->shared + lay.h);           /* (F,K,T) */

    qg_cpu_matmul_part(a->qk, rt->type, qg_cpu_in_ptr(a, 1), E, rt->ne[1], x,
                       a->n_tok, logits, scratch, ith, nth);
    qg_threadpool_barrier(a->tp);
    topk_part(logits, X, K, a->n_tok, ids, wts, scratch, ith, nth);
    qg_threadpool_barrier(a->tp);
    moe_lists L = {0};
    if (a->n_tok > 1) {
        L = lists_at((char *)a->shared + lay.lists, X);
        if (ith == 0) lists_build(ids, X, K, a->n_tok, &L);
        qg_threadpool_barrier(a->tp);
    }
    const moe_w gw = moe_weights(gt, qg_cpu_in_ptr(a, 2));
    const moe_w uw = moe_weights(qg_cpu_in(a, 3), qg_cpu_in_ptr(a, 3));
    const moe_w dw = moe_weights(qg_cpu_in(a, 4), qg_cpu_in_ptr(a, 4));
    if (a->n_tok == 1) {
        /* decode: the down rows this worker's aggregate share reads, one
         * stream per expert, start arriving while gate/up stream */
        int64_t r0, r1;
        qg_cpu_split(E, ith, nth, &r0, &r1);
        for (int k = 0; k < K && r1 > r0; k++) {
            QG_ASSERT(ids[k] >= 0 && ids[k] < X);
            prefetch_bytes(moe_row(&dw, ids[k], r0),
                           QG_MIN((size_t)MOE_PF_BYTES / 2, (size_t)(r1 - r0) * dw.row_bytes));
        }
    }
    expert_swiglu_part(a->qk, x, E, &gw, &uw, ids, K, a->n_tok, &L, X, h, scratch,
                       ith, nth);
    qg_threadpool_barrier(a->tp);
    float *dn = (float *)(void *)((char *)a->shared + lay.dn); /* (E,K*T) */
    aggregate_part(a->qk, a->tp, h, F, &dw, ids, wts, K, a->n_tok, &L, X, dn,
                   qg_cpu_out_ptr(a, 0), scratch, ith, nth);
}

/* ---- scratch -------------------------------------------------------- */

void qg_cpu_moe_scratch(const qg_graph *g, const qg_node *n, size_t *pt,
                        size_t *sh) {
    const qg_tensor *T = g->tensors;
    const int Tm = g->n_tok_max;
    *pt = 0;
    *sh = 0;
    switch (n->op) {
    case QG_OP_TOPK:
        *pt = (size_t)T[n->in[0]].ne[0];
        break;
    case QG_OP_EXPERT_SWIGLU: {
        const qg_tensor *gt = &T[n->in[1]];
        *pt = swiglu_scratch(gt->ne[0], Tm);
        if (Tm > 1) *sh = lists_bytes((int)gt->ne[2], (int)T[n->in[3]].ne[0], Tm);
        break;
    }
    case QG_OP_AGGREGATE: {
        const qg_tensor *dt = &T[n->in[1]];
        const int K = (int)T[n->in[2]].ne[0];
        *pt = aggregate_scratch(dt->ne[0], Tm);
        if (Tm > 1) *sh = dn_bytes(dt->ne[1], K, Tm) + lists_bytes((int)dt->ne[2], K, Tm);
        break;
    }
    case QG_OP_MOE_FUSED: {
        const int64_t E = T[n->in[0]].ne[0];
        const qg_tensor *gt = &T[n->in[2]];
        const int64_t F = gt->ne[1];
        const int X = (int)gt->ne[2], K = (int)T[n->out[1]].ne[0];
        *pt = QG_MAX(qg_cpu_mm_scratch(E, Tm), (size_t)X);
        *pt = QG_MAX(*pt, swiglu_scratch(E, Tm));
        *pt = QG_MAX(*pt, aggregate_scratch(F, Tm));
        *sh = fused_layout_of(E, F, X, K, Tm).total;
        break;
    }
    default:
        break;
    }
}
