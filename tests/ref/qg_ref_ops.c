/*
 * qg_ref_ops.c - float64 references of the graph ops (see qg_ref_ops.h).
 * Written for clarity, not speed; every temporary is malloc'ed here.
 */
#include "qg_ref_ops.h"

#include "graph/qg_base.h"
#include "ops/quant/qg_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Largest |silu'(x)| (at x ~ 2.4): 1.0998. */
#define SILU_DERIV_MAX 1.1

static double *dalloc(int64_t n) {
    double *p = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!p) QG_ABORT("qg_ref_ops: out of memory (%lld doubles)", (long long)n);
    return p;
}

void qg_ref_weight_row(qg_dtype t, const void *w, int64_t n, int64_t r,
                       double *dst) {
    const size_t rb = qg_dtype_row_bytes(t, n);
    qg_dequant_row_f64(t, (const char *)w + (size_t)r * rb, dst, n);
}

void qg_ref_embed(qg_dtype t, const void *w, int64_t E, const int32_t *tok,
                  int n_tok, double *x) {
    for (int i = 0; i < n_tok; i++) qg_ref_weight_row(t, w, E, tok[i], x + (size_t)i * E);
}

void qg_ref_rmsnorm(const float *x, const float *w, int64_t n, int n_tok,
                    double eps, double *y) {
    for (int t = 0; t < n_tok; t++) {
        const float *xt = x + (size_t)t * n;
        double ss = 0;
        for (int64_t i = 0; i < n; i++) ss += (double)xt[i] * xt[i];
        const double s = 1.0 / sqrt(ss / (double)n + eps);
        for (int64_t i = 0; i < n; i++) y[(size_t)t * n + i] = xt[i] * s * w[i];
    }
}

void qg_ref_add(const float *a, const float *b, int64_t n, double *y) {
    for (int64_t i = 0; i < n; i++) y[i] = (double)a[i] + (double)b[i];
}

void qg_ref_matmul(qg_dtype t, const void *w, int64_t n, int64_t m,
                   const float *x, int n_tok, double *y, double *yabs) {
    double *row = dalloc(n);
    for (int64_t r = 0; r < m; r++) {
        qg_ref_weight_row(t, w, n, r, row);
        for (int c = 0; c < n_tok; c++) {
            const float *xc = x + (size_t)c * n;
            double s = 0, sa = 0;
            for (int64_t i = 0; i < n; i++) {
                s += row[i] * xc[i];
                sa += fabs(row[i] * xc[i]);
            }
            y[(size_t)c * m + r] = s;
            if (yabs) yabs[(size_t)c * m + r] = sa;
        }
    }
    free(row);
}

/* One head: normalize src (hd) with w, then rotate at position pos. */
static void rope_head(const float *src, const float *w, int hd, double eps,
                      double theta, int32_t pos, double *dst) {
    double ss = 0;
    for (int i = 0; i < hd; i++) ss += (double)src[i] * src[i];
    const double s = 1.0 / sqrt(ss / hd + eps);
    double *nx = dalloc(hd);
    for (int i = 0; i < hd; i++) nx[i] = src[i] * s * w[i];
    const int half = hd / 2;
    for (int i = 0; i < half; i++) {
        const double ang = pos * pow(theta, -2.0 * i / hd);
        const double c = cos(ang), sn = sin(ang);
        dst[i] = nx[i] * c - nx[i + half] * sn;
        dst[i + half] = nx[i] * sn + nx[i + half] * c;
    }
    free(nx);
}

void qg_ref_rope(const float *q, const float *k, const float *q_norm,
                 const float *k_norm, const int32_t *pos, int n_tok, int hd,
                 int nh, int nkv, double eps, double theta, double *qo,
                 double *ko) {
    for (int t = 0; t < n_tok; t++) {
        for (int h = 0; h < nh; h++) {
            const size_t o = (size_t)t * nh * hd + (size_t)h * hd;
            rope_head(q + o, q_norm, hd, eps, theta, pos[t], qo + o);
        }
        for (int h = 0; h < nkv; h++) {
            const size_t o = (size_t)t * nkv * hd + (size_t)h * hd;
            rope_head(k + o, k_norm, hd, eps, theta, pos[t], ko + o);
        }
    }
}

void qg_ref_attention(const float *q, const double *kc, const double *vc,
                      const int32_t *pos, int n_tok, int hd, int nh, int nkv,
                      double *o, double *pv_abs, double *qk_abs) {
    const int group = nh / nkv;
    const size_t Dq = (size_t)nh * hd, Dkv = (size_t)nkv * hd;
    const double scale = 1.0 / sqrt((double)hd);
    int max_rows = 1;
    for (int t = 0; t < n_tok; t++) max_rows = pos[t] + 1 > max_rows ? pos[t] + 1 : max_rows;
    double *s = dalloc(max_rows);
    for (int t = 0; t < n_tok; t++) {
        const int n_kv = pos[t] + 1;
        for (int h = 0; h < nh; h++) {
            const float *qh = q + (size_t)t * Dq + (size_t)h * hd;
            const size_t koff = (size_t)(h / group) * hd;
            double mx = -INFINITY, qa = 0;
            for (int j = 0; j < n_kv; j++) {
                const double *kj = kc + (size_t)j * Dkv + koff;
                double d = 0, da = 0;
                for (int i = 0; i < hd; i++) {
                    d += qh[i] * kj[i];
                    da += fabs(qh[i] * kj[i]);
                }
                s[j] = d * scale;
                mx = s[j] > mx ? s[j] : mx;
                qa = da * scale > qa ? da * scale : qa;
            }
            double sum = 0;
            for (int j = 0; j < n_kv; j++) {
                s[j] = exp(s[j] - mx);
                sum += s[j];
            }
            for (int i = 0; i < hd; i++) {
                double acc = 0, aa = 0;
                for (int j = 0; j < n_kv; j++) {
                    const double v = vc[(size_t)j * Dkv + koff + i];
                    acc += s[j] * v;
                    aa += s[j] * fabs(v);
                }
                o[(size_t)t * Dq + (size_t)h * hd + i] = acc / sum;
                if (pv_abs) pv_abs[(size_t)t * Dq + (size_t)h * hd + i] = aa / sum;
            }
            if (qk_abs) qk_abs[(size_t)t * nh + h] = qa;
        }
    }
    free(s);
}

double qg_ref_swiglu_val(double g, double u, double gabs, double uabs,
                         double *habs) {
    const double sg = g / (1.0 + exp(-g));
    const double hv = sg * u;
    if (habs) *habs = fabs(u) * SILU_DERIV_MAX * gabs + fabs(sg) * uabs + fabs(hv);
    return hv;
}

void qg_ref_swiglu(qg_dtype gt, const void *gate, qg_dtype ut, const void *up,
                   int64_t E, int64_t F, const float *x, int n_tok, double *h,
                   double *habs) {
    double *g = dalloc(F * n_tok), *ga = dalloc(F * n_tok);
    double *u = dalloc(F * n_tok), *ua = dalloc(F * n_tok);
    qg_ref_matmul(gt, gate, E, F, x, n_tok, g, ga);
    qg_ref_matmul(ut, up, E, F, x, n_tok, u, ua);
    for (int64_t i = 0; i < F * n_tok; i++)
        h[i] = qg_ref_swiglu_val(g[i], u[i], ga[i], ua[i], habs ? &habs[i] : NULL);
    free(g);
    free(ga);
    free(u);
    free(ua);
}

void qg_ref_topk(const float *logits, int X, int K, int n_tok, int32_t *ids,
                 double *wts, double *probs, double *gap) {
    double *p = dalloc(X);
    char *taken = calloc((size_t)X, 1);
    if (!taken) QG_ABORT("qg_ref_topk: out of memory");
    for (int t = 0; t < n_tok; t++) {
        const float *l = logits + (size_t)t * X;
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < X; e++) mx = l[e] > mx ? l[e] : mx;
        for (int e = 0; e < X; e++) sum += p[e] = exp((double)l[e] - mx);
        for (int e = 0; e < X; e++) p[e] /= sum;
        if (probs) memcpy(probs + (size_t)t * X, p, sizeof(double) * (size_t)X);
        memset(taken, 0, (size_t)X);
        double ws = 0, last = 0;
        for (int k = 0; k < K; k++) {
            int b = -1;
            for (int e = 0; e < X; e++)
                if (!taken[e] && (b < 0 || p[e] > p[b])) b = e;
            taken[b] = 1;
            ids[(size_t)t * K + k] = b;
            wts[(size_t)t * K + k] = p[b];
            ws += p[b];
            last = p[b];
        }
        for (int k = 0; k < K; k++) wts[(size_t)t * K + k] /= ws;
        if (gap) {
            double next = -1;
            for (int e = 0; e < X; e++)
                if (!taken[e] && p[e] > next) next = p[e];
            gap[t] = K == X ? 1.0 : last - next;
        }
    }
    free(taken);
    free(p);
}

void qg_ref_expert_swiglu(qg_dtype gt, const void *gate, qg_dtype ut,
                          const void *up, int64_t E, int64_t F, int X,
                          const float *x, const int32_t *ids, int K, int n_tok,
                          double *h, double *habs) {
    double *gr = dalloc(E), *ur = dalloc(E);
    for (int t = 0; t < n_tok; t++) {
        const float *xt = x + (size_t)t * E;
        for (int k = 0; k < K; k++) {
            const int e = ids[(size_t)t * K + k];
            if (e < 0 || e >= X) QG_ABORT("qg_ref_expert_swiglu: expert id %d", e);
            for (int64_t f = 0; f < F; f++) {
                qg_ref_weight_row(gt, gate, E, (int64_t)e * F + f, gr);
                qg_ref_weight_row(ut, up, E, (int64_t)e * F + f, ur);
                double g = 0, ga = 0, u = 0, ua = 0;
                for (int64_t i = 0; i < E; i++) {
                    g += gr[i] * xt[i];
                    ga += fabs(gr[i] * xt[i]);
                    u += ur[i] * xt[i];
                    ua += fabs(ur[i] * xt[i]);
                }
                const size_t o = ((size_t)t * K + k) * F + f;
                h[o] = qg_ref_swiglu_val(g, u, ga, ua, habs ? &habs[o] : NULL);
            }
        }
    }
    free(gr);
    free(ur);
}

void qg_ref_aggregate(const float *h, qg_dtype dt, const void *down,
                      int64_t F, int64_t E, int X, const int32_t *ids,
                      const float *wts, int K, int n_tok, double *y,
                      double *yabs) {
    double *row = dalloc(F);
    for (int t = 0; t < n_tok; t++) {
        for (int64_t r = 0; r < E; r++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                const int e = ids[(size_t)t * K + k];
                if (e < 0 || e >= X) QG_ABORT("qg_ref_aggregate: expert id %d", e);
                qg_ref_weight_row(dt, down, F, (int64_t)e * E + r, row);
                const float *hk = h + ((size_t)t * K + k) * F;
                double d = 0, da = 0;
                for (int64_t f = 0; f < F; f++) {
                    d += row[f] * hk[f];
                    da += fabs(row[f] * hk[f]);
                }
                s += wts[(size_t)t * K + k] * d;
                sa += fabs(wts[(size_t)t * K + k]) * da;
            }
            y[(size_t)t * E + r] = s;
            if (yabs) yabs[(size_t)t * E + r] = sa;
        }
    }
    free(row);
}
