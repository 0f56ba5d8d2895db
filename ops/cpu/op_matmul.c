/*
 * op_matmul.c - the weight-times-activation kernels: matmul, router,
 * lm_head, qkv and the dense swiglu.
 *
 * All of them are y = W x with W (n, m) quantized rows and x (n, n_tok)
 * f32 columns.  One token: qk->dot per output row, rows split evenly.
 * Up to QG_CPU_THIN tokens: qk->gemm_cols over each worker's rows.  More:
 * qk->gemm per (QG_CPU_UNIT rows, QG_CPU_COLS tokens) tile, row units split
 * evenly over the workers (see qg_cpu_internal.h).
 */
#include "qg_cpu_internal.h"

size_t qg_cpu_mm_scratch(int64_t n, int n_tok_max) {
    return n_tok_max > 1 ? qg_quant_gemm_scratch_floats(n, QG_CPU_UNIT) : 0;
}

void qg_cpu_mm_rows(const qg_quant_kernels *qk, qg_dtype t, const void *w,
                    size_t w_row_bytes, int64_t n, int64_t r0, int64_t r1,
                    const float *x, size_t x_stride, int n_cols, float *y,
                    size_t y_stride, float *scratch) {
    const char *wb = w;
    if (n_cols == 1) {
        for (int64_t r = r0; r < r1; r++)
            y[r] = qk->dot(t, wb + (size_t)r * w_row_bytes, x, n);
        return;
    }
    if (n_cols <= QG_CPU_THIN) {
        const float *xc[QG_CPU_THIN]; /* column pointers */
        for (int c = 0; c < n_cols; c++) xc[c] = x + (size_t)c * x_stride;
        if (r1 > r0)
            qk->gemm_cols(t, wb + (size_t)r0 * w_row_bytes, w_row_bytes, (int)(r1 - r0), xc,
                          n_cols, y + r0, y_stride, n);
        return;
    }
    for (int c0 = 0; c0 < n_cols; c0 += QG_CPU_COLS) {
        const int nc = QG_MIN(QG_CPU_COLS, n_cols - c0);
        for (int64_t u = r0; u < r1;) {
            /* up to the next multiple of the unit, so tiles do not depend
             * on where this worker's range starts */
            const int64_t ue = QG_MIN(r1, (u / QG_CPU_UNIT + 1) * QG_CPU_UNIT);
            qk->gemm(t, wb + (size_t)u * w_row_bytes, w_row_bytes, (int)(ue - u),
                     x + (size_t)c0 * x_stride, x_stride, nc,
                     y + (size_t)c0 * y_stride + (size_t)u, y_stride, n, scratch);
            u = ue;
        }
    }
}

size_t qg_cpu_mm_cols_scratch(int64_t n, int n_rows, int n_cols_max) {
    if (n_cols_max <= QG_CPU_THIN) return 0;
    /* gathered block (n, COLS), then the gemm's scratch */
    return (size_t)n * QG_CPU_COLS + qg_quant_gemm_scratch_floats(n, n_rows);
}

void qg_cpu_mm_cols(const qg_quant_kernels *qk, qg_dtype t, const void *w,
                    size_t w_row_bytes, int64_t n, int n_rows,
                    const float *const *x, int n_cols, float *y,
                    size_t y_stride, float *scratch) {
    for (int c0 = 0; c0 < n_cols; c0 += QG_CPU_COLS) {
        const int nc = QG_MIN(QG_CPU_COLS, n_cols - c0);
        float *yc = y + (size_t)c0 * y_stride;
        if (nc <= QG_CPU_THIN) {
            qk->gemm_cols(t, w, w_row_bytes, n_rows, x + c0, nc, yc, y_stride, n);
            continue;
        }
        float *xg = scratch;                                  /* (n, nc) */
        float *gs = scratch + (size_t)n * QG_CPU_COLS;        /* gemm scratch */
        for (int c = 0; c < nc; c++)
            memcpy(xg + (size_t)c * (size_t)n, x[c0 + c], sizeof(float) * (size_t)n);
        qk->gemm(t, w, w_row_bytes, n_rows, xg, (size_t)n, nc, yc, y_stride, n, gs);
    }
}

void qg_cpu_matmul_part(const qg_quant_kernels *qk, qg_dtype t, const void *w,
                        int64_t n, int64_t m, const float *x, int n_tok,
                        float *y, float *scratch, int ith, int nth) {
    int64_t r0, r1;
    if (n_tok == 1) qg_cpu_split(m, ith, nth, &r0, &r1);
    else qg_cpu_split_units(m, QG_CPU_UNIT, ith, nth, &r0, &r1);
    qg_cpu_mm_rows(qk, t, w, qg_dtype_row_bytes(t, n), n, r0, r1, x, (size_t)n,
                   n_tok, y, (size_t)m, scratch);
}

/* matmul: w (N,M), x (N,T) -> y (M,T) */
void qg_cpu_matmul(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *w = qg_cpu_in(a, 0);
    qg_cpu_matmul_part(a->qk, w->type, qg_cpu_in_ptr(a, 0), w->ne[0], w->ne[1],
                       qg_cpu_in_ptr(a, 1), a->n_tok, qg_cpu_out_ptr(a, 0),
                       qg_cpu_scratch(a, ith), ith, nth);
}

/* router: x (E,T), gate_inp (E,X) -> logits (X,T) */
void qg_cpu_router(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *w = qg_cpu_in(a, 1);
    qg_cpu_matmul_part(a->qk, w->type, qg_cpu_in_ptr(a, 1), w->ne[0], w->ne[1],
                       qg_cpu_in_ptr(a, 0), a->n_tok, qg_cpu_out_ptr(a, 0),
                       qg_cpu_scratch(a, ith), ith, nth);
}

/* lm_head: x (E,T), out_w (E,V) -> logits (V,R).  only_last: the row of
 * token n_tok-1 into column 0. */
void qg_cpu_lm_head(const qg_cpu_op_args *a, int ith, int nth) {
    const qg_tensor *w = qg_cpu_in(a, 1);
    const int64_t E = w->ne[0];
    const float *x = qg_cpu_in_ptr(a, 0); /* (E,T) */
    int n_cols = a->n_tok;
    if (a->n->p.only_last) {
        x += (size_t)(a->n_tok - 1) * (size_t)E;
        n_cols = 1;
    }
    qg_cpu_matmul_part(a->qk, w->type, qg_cpu_in_ptr(a, 1), E, w->ne[1], x,
                       n_cols, qg_cpu_out_ptr(a, 0), qg_cpu_scratch(a, ith),
                       ith, nth);
}

/* qkv: x (E,T), wq (E,Dq), wk (E,Dkv), wv (E,Dkv) -> q (Dq,T), k (Dkv,T),
 * v (Dkv,T).  The rows of wq|wk|wv form one range [0, Dq+2Dkv) split over
 * the workers; each unit is cut at the matrix boundaries. */
void qg_cpu_qkv(const qg_cpu_op_args *a, int ith, int nth) {
    const float *x = qg_cpu_in_ptr(a, 0);
    const int64_t E = qg_cpu_in(a, 0)->ne[0];
    const qg_tensor *wt[3];
    const void *wp[3];
    float *yp[3];
    int64_t base[4] = {0};
    for (int i = 0; i < 3; i++) {
        wt[i] = qg_cpu_in(a, 1 + i);
        wp[i] = qg_cpu_in_ptr(a, 1 + i);
        yp[i] = qg_cpu_out_ptr(a, i);
        base[i + 1] = base[i] + wt[i]->ne[1];
    }
    const int64_t M = base[3];
    float *scratch = qg_cpu_scratch(a, ith);
    int64_t r0, r1;
    int64_t unit = a->n_tok == 1 ? M : QG_CPU_UNIT; /* one piece for decode */
    if (a->n_tok == 1) qg_cpu_split(M, ith, nth, &r0, &r1);
    else qg_cpu_split_units(M, QG_CPU_UNIT, ith, nth, &r0, &r1);
    for (int64_t u = r0; u < r1;) {
        const int64_t ue = a->n_tok == 1 ? r1 : QG_MIN(r1, u + unit);
        for (int i = 0; i < 3; i++) {
            const int64_t s = QG_MAX(u, base[i]), e = QG_MIN(ue, base[i + 1]);
            if (s >= e) continue;
            const int64_t m = wt[i]->ne[1];
            qg_cpu_mm_rows(a->qk, wt[i]->type, wp[i], qg_dtype_row_bytes(wt[i]->type, E),
                           E, s - base[i], e - base[i], x, (size_t)E, a->n_tok,
                           yp[i], (size_t)m, scratch);
        }
        u = ue;
    }
}

/* Per-thread scratch floats of swiglu: gate and up tiles (UNIT x COLS
 * each), then the gemm scratch. */
size_t qg_cpu_swiglu_scratch(int64_t E, int n_tok_max) {
    if (n_tok_max == 1) return 0;
    return 2 * (size_t)QG_CPU_UNIT * QG_CPU_COLS + qg_cpu_mm_scratch(E, n_tok_max);
}

/* swiglu (dense FFN): x (E,T), gate (E,F), up (E,F) -> h (F,T) =
 * silu(gate x) * (up x).  Rows of F split over the workers. */
void qg_cpu_swiglu(const qg_cpu_op_args *a, int ith, int nth) {
    const float *x = qg_cpu_in_ptr(a, 0); /* (E,T) */
    const qg_tensor *gt = qg_cpu_in(a, 1), *ut = qg_cpu_in(a, 2);
    const char *gw = qg_cpu_in_ptr(a, 1), *uw = qg_cpu_in_ptr(a, 2);
    float *h = qg_cpu_out_ptr(a, 0); /* (F,T) */
    const int64_t E = gt->ne[0], F = gt->ne[1];
    const size_t grb = qg_dtype_row_bytes(gt->type, E);
    const size_t urb = qg_dtype_row_bytes(ut->type, E);
    const qg_quant_kernels *qk = a->qk;
    int64_t r0, r1;
    if (a->n_tok == 1) {
        qg_cpu_split(F, ith, nth, &r0, &r1);
        for (int64_t r = r0; r < r1; r++) {
            float g = qk->dot(gt->type, gw + (size_t)r * grb, x, E);
            float u = qk->dot(ut->type, uw + (size_t)r * urb, x, E);
            h[r] = qg_cpu_silu(g) * u;
        }
        return;
    }
    float *gtile = qg_cpu_scratch(a, ith);         /* (UNIT, COLS) */
    float *utile = gtile + QG_CPU_UNIT * QG_CPU_COLS; /* (UNIT, COLS) */
    float *gs = utile + QG_CPU_UNIT * QG_CPU_COLS;  /* gemm scratch */
    qg_cpu_split_units(F, QG_CPU_UNIT, ith, nth, &r0, &r1);
    for (int c0 = 0; c0 < a->n_tok; c0 += QG_CPU_COLS) {
        const int nc = QG_MIN(QG_CPU_COLS, a->n_tok - c0);
        const float *xc = x + (size_t)c0 * (size_t)E;
        const float *xp[QG_CPU_THIN]; /* column pointers for gemm_cols */
        for (int c = 0; c < nc && nc <= QG_CPU_THIN; c++) xp[c] = xc + (size_t)c * (size_t)E;
        for (int64_t u = r0; u < r1; u += QG_CPU_UNIT) {
            const int nr = (int)QG_MIN((int64_t)QG_CPU_UNIT, r1 - u);
            if (nc <= QG_CPU_THIN) {
                qk->gemm_cols(gt->type, gw + (size_t)u * grb, grb, nr, xp, nc, gtile,
                              QG_CPU_UNIT, E);
                qk->gemm_cols(ut->type, uw + (size_t)u * urb, urb, nr, xp, nc, utile,
                              QG_CPU_UNIT, E);
            } else {
                qk->gemm(gt->type, gw + (size_t)u * grb, grb, nr, xc, (size_t)E, nc,
                         gtile, QG_CPU_UNIT, E, gs);
                qk->gemm(ut->type, uw + (size_t)u * urb, urb, nr, xc, (size_t)E, nc,
                         utile, QG_CPU_UNIT, E, gs);
            }
            for (int c = 0; c < nc; c++) {
                float *hc = h + (size_t)(c0 + c) * (size_t)F + (size_t)u;
                for (int r = 0; r < nr; r++)
                    hc[r] = qg_cpu_silu(gtile[c * QG_CPU_UNIT + r]) *
                            utile[c * QG_CPU_UNIT + r];
            }
        }
    }
}
