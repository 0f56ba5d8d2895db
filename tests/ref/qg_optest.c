/*
 * qg_optest.c - the op-test harness (see qg_optest.h): fixtures, random
 * inputs, one step through an executor, and the per-op comparisons with
 * the float64 references.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "qg_optest.h"
#include "qg_ref_ops.h"

#include "exec/cpu/qg_threadpool.h"
#include "graph/qg_sched.h"
#include "ops/quant/qg_quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const qg_dtype QG_OPTEST_ALL_W[8] = {QG_F32,  QG_F16,  QG_BF16, QG_Q8_0,
                                     QG_Q4_0, QG_Q4_K, QG_Q5_K, QG_Q6_K};

const qg_dtype QG_OPTEST_MOE_TYPES[4][3] = {
    {QG_Q4_K, QG_Q4_K, QG_Q6_K}, {QG_Q5_K, QG_Q8_0, QG_Q4_0},
    {QG_F16, QG_BF16, QG_F32},   {QG_Q6_K, QG_Q4_0, QG_Q5_K},
};

qg_test_rng qg_optest_rng_for(int test, int case_id, uint64_t salt) {
    qg_test_rng r = {(uint64_t)test * 0x100000001b3ull + (uint64_t)case_id * 7919u + salt};
    qg_test_rng_u64(&r);
    return r;
}

/* ---- fixtures ------------------------------------------------------------ */

qg_optest_fx qg_optest_fx_new(qg_phase ph, int T, int C, bool with_step) {
    qg_optest_fx f;
    memset(&f, 0, sizeof f);
    f.g = qg_graph_new(ph, T, C);
    assert_non_null(f.g);
    if (with_step) {
        const int64_t n = QG_STEP_N;
        f.g->t_step = qg_graph_add_tensor(f.g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &n, NULL);
        assert_true(f.g->t_step < QG_OPTEST_MAXT);
        f.host[f.g->t_step] = calloc(QG_STEP_N, sizeof(int32_t)); /* (QG_STEP_N) */
        assert_non_null(f.host[f.g->t_step]);
    }
    return f;
}

void qg_optest_fx_free(qg_optest_fx *f) {
    if (f->ex) f->ex->i->release(f->ex->self, f->g);
    for (int i = 0; i < f->g->n_tensors && i < QG_OPTEST_MAXT; i++) free(f->host[i]);
    qg_graph_free(f->g);
}

int qg_optest_add_tensor(qg_optest_fx *f, const char *name, qg_dtype type, qg_role role, int nd,
                         int64_t e0, int64_t e1, int64_t e2) {
    const int64_t ne[3] = {e0, e1, e2};
    const int id = qg_graph_add_tensor(f->g, name, type, role, 0, nd, ne, NULL);
    assert_true(id >= 0 && id < QG_OPTEST_MAXT);
    const size_t nb = f->g->tensors[id].nbytes;
    f->host[id] = malloc(nb ? nb : 1);
    assert_non_null(f->host[id]);
    memset(f->host[id], QG_OPTEST_POISON, nb);
    if (role == QG_ROLE_WEIGHT) f->g->tensors[id].data = f->host[id];
    return id;
}

/* A chunk of rows to quantize: src (e0, n) f32 -> dst, n rows of rb bytes. */
typedef struct quant_chunk {
    qg_dtype type;
    const float *src;
    char *dst;
    int64_t e0, n;
    size_t rb;
} quant_chunk;

/* Worker ith of nth: rows ith, ith + nth, ... of the chunk. */
static void quant_rows(void *arg, int ith, int nth) {
    const quant_chunk *c = arg;
    for (int64_t i = ith; i < c->n; i += nth)
        qg_quantize_row(c->type, c->src + (size_t)(i * c->e0), c->dst + (size_t)i * c->rb, c->e0);
}

/* Rows per chunk of qg_optest_add_weight's parallel quantization. */
#define QUANT_CHUNK_ELEMS ((int64_t)1 << 22)

int qg_optest_add_weight(qg_optest_fx *f, const char *name, qg_dtype type, int nd, int64_t e0,
                         int64_t e1, int64_t e2, qg_test_rng *r, float scale) {
    const int id = qg_optest_add_tensor(f, name, type, QG_ROLE_WEIGHT, nd, e0, e1, e2);
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t rb = qg_dtype_row_bytes(type, e0);
    /* the values are drawn row after row from r (the same stream as one
     * row at a time), a chunk of rows at once, and the chunk's rows are
     * quantized on every core: big weights (the 30B's experts) took
     * minutes of one core */
    const int64_t per = QG_MAX((int64_t)1, QG_MIN(rows, QUANT_CHUNK_ELEMS / e0));
    float *src = malloc(sizeof(float) * (size_t)(per * e0)); /* (e0, per) */
    assert_non_null(src);
    const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    const int nth = rows * e0 >= ((int64_t)1 << 20) ? (int)QG_MAX(1L, QG_MIN(ncpu, 16L)) : 1;
    qg_threadpool *tp = nth > 1 ? qg_threadpool_new(nth) : NULL;
    for (int64_t i0 = 0; i0 < rows; i0 += per) {
        const int64_t n = QG_MIN(per, rows - i0);
        for (int64_t j = 0; j < n * e0; j++) src[j] = qg_test_rng_unif(r, -scale, scale);
        quant_chunk c = {type, src, (char *)f->host[id] + (size_t)i0 * rb, e0, n, rb};
        if (tp) qg_threadpool_run(tp, quant_rows, &c);
        else quant_rows(&c, 0, 1);
    }
    if (tp) qg_threadpool_free(tp);
    free(src);
    return id;
}

int qg_optest_add_node(qg_optest_fx *f, qg_op op, const char *name, const int *in, int n_in,
                       const int *out, int n_out, const qg_op_params *p) {
    return qg_graph_add_node(f->g, op, name, 0, in, n_in, out, n_out, p);
}

float *qg_optest_f32(qg_optest_fx *f, int id) { return f->host[id]; }
int32_t *qg_optest_i32(qg_optest_fx *f, int id) { return f->host[id]; }

void qg_optest_fill_act(qg_optest_fx *f, int id, int n_tok, qg_test_rng *r, float lo, float hi) {
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t n = qg_tensor_nelem(t) / t->ne[t->n_dims - 1]; /* floats per token */
    const int64_t T = qg_tensor_nelem(t) / n;
    float *x = f->host[id];
    for (int64_t i = 0; i < n * T; i++) x[i] = i < n * n_tok ? qg_test_rng_unif(r, lo, hi) : NAN;
}

void qg_optest_fill_wts(qg_optest_fx *f, int id, int K, int n_tok, qg_test_rng *r) {
    qg_optest_fill_act(f, id, n_tok, r, 0.1f, 1.0f);
    float *w = f->host[id]; /* (K, T) */
    for (int t = 0; t < n_tok; t++) {
        float sum = 0;
        for (int j = 0; j < K; j++) sum += w[t * K + j];
        for (int j = 0; j < K; j++) w[t * K + j] /= sum;
    }
}

void qg_optest_make_ids(int32_t *ids, int X, int K, int n_tok, qg_test_rng *r, bool expert0) {
    for (int t = 0; t < n_tok; t++) {
        int32_t *id = ids + (size_t)t * K;
        for (int k = 0; k < K; k++) {
            if (expert0 && k == t % K) {
                id[k] = 0;
                continue;
            }
            for (;;) {
                const int e = expert0 ? 1 + qg_test_rng_int(r, X - 1) : qg_test_rng_int(r, X);
                bool dup = false;
                for (int j = 0; j < k; j++) dup |= id[j] == e;
                if (!dup) {
                    id[k] = e;
                    break;
                }
            }
        }
    }
}

void qg_optest_fill_cache(qg_dtype ct, void *kc, void *vc, size_t n, qg_test_rng *r) {
    QG_ASSERT(ct == QG_F16 || ct == QG_F32);
    for (size_t i = 0; i < n; i++) {
        const float a = qg_test_rng_unif(r, -1, 1), b = qg_test_rng_unif(r, -1, 1);
        if (ct == QG_F16) {
            ((uint16_t *)kc)[i] = qg_f32_to_f16(a);
            ((uint16_t *)vc)[i] = qg_f32_to_f16(b);
        } else {
            ((float *)kc)[i] = a;
            ((float *)vc)[i] = b;
        }
    }
}

size_t qg_optest_live_bytes(const qg_optest_fx *f, int id, int n_tok) {
    const qg_tensor *t = &f->g->tensors[id];
    const int64_t T = f->g->n_tok_max;
    if (t->role == QG_ROLE_KV) return t->nbytes;
    if (T > 1 && t->ne[t->n_dims - 1] == T) return t->nbytes / (size_t)T * (size_t)n_tok;
    return t->nbytes;
}

void qg_optest_expect_tail(const qg_optest_fx *f, int id, int n_tok, const char *label) {
    const size_t lb = qg_optest_live_bytes(f, id, n_tok), nb = f->g->tensors[id].nbytes;
    const unsigned char *b = f->host[id];
    for (size_t k = lb; k < nb; k++)
        if (b[k] != QG_OPTEST_POISON)
            fail_msg("%s: %s byte %zu past the live tokens was written", label,
                     f->g->tensors[id].name, k);
}

double *qg_optest_dalloc(int64_t n) {
    double *p = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    assert_non_null(p);
    return p;
}

/* ---- executors and devices ---------------------------------------------- */

bool qg_optest_have_exec(qg_optest_exec_new_fn make, const char *what) {
    qg_exec ex;
    qg_error err = {0};
    const qg_exec_opts o = {.n_threads = 1, .device = 0};
    if (make(&o, &ex, &err) != QG_OK) {
        printf("no %s device: skipped (%s)\n", what, err.msg);
        return false;
    }
    ex.i->free(ex.self);
    return true;
}

void qg_optest_need_exec(bool have, const char *what) {
    if (!have) {
        printf("no %s device: skipped\n", what);
        skip();
    }
}

qg_exec qg_optest_exec_new(qg_optest_exec_new_fn make, const char *name, const char *const *env) {
    for (int i = 0; env && env[i]; i += 2) {
        if (env[i + 1]) setenv(env[i], env[i + 1], 1);
        else unsetenv(env[i]);
    }
    const qg_exec_opts o = {.n_threads = 1, .device = 0};
    qg_exec ex;
    qg_error err = {0};
    const qg_status st = make(&o, &ex, &err);
    for (int i = 0; env && env[i]; i += 2) unsetenv(env[i]);
    if (st) fail_msg("%s: %s", name, err.msg);
    return ex;
}

/* The test of qg_optest_run_skipped: *state is its message. */
static void optest_skipped(void **state) {
    printf("%s\n", (const char *)*state);
    skip();
}

int qg_optest_run_skipped(const char *test_name, const char *msg) {
    const struct CMUnitTest tests[] = {{test_name, optest_skipped, NULL, NULL, (void *)msg}};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

int qg_optest_add_blocks(qg_optest_fx *f, const char *name, qg_dtype type, int nd, int64_t e0,
                         int64_t e1, int64_t e2, qg_test_rng *r) {
    QG_ASSERT(type == QG_Q4_K || type == QG_Q6_K || type == QG_Q8_0);
    const int id = qg_optest_add_tensor(f, name, type, QG_ROLE_WEIGHT, nd, e0, e1, e2);
    const qg_tensor *t = &f->g->tensors[id];
    uint8_t *p = f->host[id]; /* (rows, rb) */
    for (size_t i = 0; i < t->nbytes; i += 8) {
        const uint64_t v = qg_test_rng_u64(r);
        memcpy(p + i, &v, t->nbytes - i < 8 ? t->nbytes - i : 8);
    }
    const int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t rb = qg_dtype_row_bytes(type, e0), bs = qg_dtype_get((uint32_t)type)->type_size;
    const int64_t be = type == QG_Q8_0 ? 32 : 256; /* elements a block */
    for (int64_t row = 0; row < rows; row++)
        for (int64_t b = 0; b < e0 / be; b++) {
            uint8_t *blk = p + (size_t)row * rb + (size_t)b * bs;
            const float u = 1.0f + (float)qg_test_rng_int(r, 1000) / 1000.0f; /* [1, 2) */
            if (type == QG_Q8_0) { /* the f16 scale first */
                const uint16_t d = qg_f32_to_f16(1e-2f * u);
                memcpy(blk, &d, 2);
                continue;
            }
            const uint16_t d = qg_f32_to_f16(1e-3f * u);
            const uint16_t m = qg_f32_to_f16(5e-3f * (1.0f + (float)qg_test_rng_int(r, 1000) / 1000.0f));
            if (type == QG_Q4_K) {
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &m, 2);
            } else {
                memcpy(blk + 208, &d, 2); /* Q6_K: d last */
            }
        }
    return id;
}

/* ---- running through an executor ---------------------------------------- */

void qg_optest_schedule(qg_optest_fx *f, const qg_exec *execs, int n_exec, int cpu_index) {
    qg_graph *g = f->g;
    qg_place_opts po = {.n_exec = n_exec, .execs = execs, .cpu_index = cpu_index};
    qg_error err = {0};
    if (qg_graph_schedule(g, false, &po, &err)) fail_msg("schedule: %s", err.msg);
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].exec != 0)
            fail_msg("node %s (%s) was not placed on %s", g->nodes[i].name,
                     qg_op_name(g->nodes[i].op), execs[0].i->name);
}

void qg_optest_compile(qg_optest_fx *f, const qg_exec *e) {
    qg_error err = {0};
    if (f->g->kv_bytes[0] && e->i->kv_alloc(e->self, f->g->kv_bytes[0], &err))
        fail_msg("kv_alloc: %s", err.msg);
    if (e->i->compile(e->self, f->g, 0, &err)) fail_msg("compile: %s", err.msg);
}

void qg_optest_compile_alone(qg_optest_fx *f, const qg_exec *e) {
    qg_optest_schedule(f, e, 1, 0);
    assert_int_equal(f->g->n_parts, 1);
    qg_optest_compile(f, e);
    f->ex = e;
}

void qg_optest_upload(qg_optest_fx *f, const qg_exec *e, int id) {
    qg_error err = {0};
    if (e->i->tensor_set(e->self, f->g, id, f->host[id], 0, f->g->tensors[id].nbytes, &err))
        fail_msg("tensor_set %s: %s", f->g->tensors[id].name, err.msg);
}

void qg_optest_download(qg_optest_fx *f, const qg_exec *e, int id) {
    qg_error err = {0};
    if (e->i->tensor_get(e->self, f->g, id, f->host[id], 0, f->g->tensors[id].nbytes, &err))
        fail_msg("tensor_get %s: %s", f->g->tensors[id].name, err.msg);
}

void qg_optest_step(qg_optest_fx *f, const qg_exec *e, const int *ins, int n_ins, const int *outs,
                    int n_outs, int n_tok, int n_kv, const char *label) {
    qg_graph *g = f->g;
    int32_t *st = f->host[g->t_step]; /* (QG_STEP_N) */
    memset(st, 0, sizeof(int32_t) * QG_STEP_N);
    st[QG_STEP_N_TOK] = n_tok;
    st[QG_STEP_N_KV] = n_kv;
    qg_optest_upload(f, e, g->t_step);
    for (int i = 0; i < n_ins; i++) qg_optest_upload(f, e, ins[i]);
    for (int i = 0; i < n_outs; i++) {
        const qg_tensor *t = &g->tensors[outs[i]];
        if (t->role != QG_ROLE_KV) memset(f->host[outs[i]], QG_OPTEST_POISON, t->nbytes);
        qg_optest_upload(f, e, outs[i]);
    }
    qg_error err = {0};
    for (int p = 0; p < g->n_parts; p++)
        if (e->i->run(e->self, g, p, st, NULL, &err)) fail_msg("%s: run: %s", label, err.msg);
    if (e->i->sync(e->self, &err)) fail_msg("%s: sync: %s", label, err.msg);
    for (int i = 0; i < n_outs; i++) {
        qg_optest_download(f, e, outs[i]);
        qg_optest_expect_tail(f, outs[i], n_tok, label);
    }
}

/* ---- comparisons ------------------------------------------------------------ */

double qg_optest_expect_close(const char *label, const char *what, const float *y, const double *ref,
                              const double *mag, int64_t n, double rel, double abs_tol) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        const double m = mag ? mag[i] : fabs(ref[i]);
        const double tol = rel * m + abs_tol, d = fabs((double)y[i] - ref[i]);
        if (!isfinite(y[i]) || d > tol)
            fail_msg("%s: %s[%lld] = %.9g, reference %.9g, tolerance %.3g", label, what,
                     (long long)i, (double)y[i], ref[i], tol);
        if (tol > 0 && d / tol > worst) worst = d / tol;
    }
    return worst;
}

void qg_optest_expect_rope(const char *label, const char *what, const float *y, const double *ref,
                           int n_heads_tok, int hd) {
    const int half = hd / 2;
    for (int h = 0; h < n_heads_tok; h++)
        for (int i = 0; i < hd; i++) {
            const size_t o = (size_t)h * hd;
            const int j = i < half ? i + half : i - half;
            const double tol = 1e-5 * hypot(ref[o + i], ref[o + j]) + 1e-6;
            const double v = y[o + i];
            if (!isfinite(v) || fabs(v - ref[o + i]) > tol)
                fail_msg("%s: %s head-row %d [%d] = %.9g, reference %.9g, tolerance %.3g", label,
                         what, h, i, v, ref[o + i], tol);
        }
}

void qg_optest_expect_topk(const char *label, const float *logits, const int32_t *ids,
                           const float *wts, int X, int K, int n_tok, bool exact_ties) {
    int32_t *rid = malloc(sizeof(int32_t) * (size_t)K * (size_t)n_tok); /* (K, n_tok) */
    double *rw = qg_optest_dalloc((int64_t)K * n_tok);                  /* (K, n_tok) */
    double *pr = qg_optest_dalloc((int64_t)X * n_tok);                  /* (X, n_tok) */
    double *gap = qg_optest_dalloc(n_tok);                              /* (n_tok) */
    assert_non_null(rid);
    qg_ref_topk(logits, X, K, n_tok, rid, rw, pr, gap);
    for (int t = 0; t < n_tok; t++) {
        const int32_t *id = ids + (size_t)t * K;
        const double *p = pr + (size_t)t * X;
        double sum = 0;
        for (int k = 0; k < K; k++) {
            if (id[k] < 0 || id[k] >= X) fail_msg("%s: token %d id[%d] = %d", label, t, k, id[k]);
            for (int j = 0; j < k; j++)
                if (id[j] == id[k]) fail_msg("%s: token %d repeats expert %d", label, t, id[k]);
            if (p[id[k]] < p[rid[(size_t)t * K + k]] - 1e-6)
                fail_msg("%s: token %d choice %d = %d has p %.9g < reference %.9g", label, t, k,
                         id[k], p[id[k]], p[rid[(size_t)t * K + k]]);
            sum += p[id[k]];
        }
        if (gap[t] > 1e-6 || exact_ties)
            for (int k = 0; k < K; k++)
                if (id[k] != rid[(size_t)t * K + k])
                    fail_msg("%s: token %d id[%d] = %d, reference %d (gap %.3g)", label, t, k,
                             id[k], rid[(size_t)t * K + k], gap[t]);
        for (int k = 0; k < K; k++) {
            const double w = p[id[k]] / sum, v = wts[(size_t)t * K + k];
            if (!isfinite(v) || fabs(v - w) > 1e-6)
                fail_msg("%s: token %d wts[%d] = %.9g, reference %.9g", label, t, k, v, w);
        }
    }
    free(rid);
    free(rw);
    free(pr);
    free(gap);
}

/* ---- per-op checks ---------------------------------------------------------- */

void qg_optest_check_embed(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const qg_optest_embed *c = ctx;
    double *ref = qg_optest_dalloc(c->E * n_tok); /* (E, n_tok) */
    qg_ref_embed(f->g->tensors[c->w].type, f->host[c->w], c->E, qg_optest_i32(f, c->tok), n_tok,
                 ref);
    /* tolerance 0: the kernel stores exactly the dequantized f32 values */
    qg_optest_expect_close(label, "x", qg_optest_f32(f, c->x), ref, NULL, c->E * n_tok, 0, 0);
    free(ref);
}

void qg_optest_check_rmsnorm(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const qg_optest_rms *c = ctx;
    double *ref = qg_optest_dalloc(c->N * n_tok); /* (N, n_tok) */
    qg_ref_rmsnorm(qg_optest_f32(f, c->x), qg_optest_f32(f, c->w), c->N, n_tok, c->eps, ref);
    /* f32 sum of squares (partial sums or a workgroup tree), inverse square
     * root and two products per element: |y - ref| <= 1e-5 |ref| + 1e-6 */
    qg_optest_expect_close(label, "y", qg_optest_f32(f, c->y), ref, NULL, c->N * n_tok, 1e-5, 1e-6);
    free(ref);
}

void qg_optest_check_add(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const qg_optest_add *c = ctx;
    const int64_t n = c->N * n_tok;
    double *ref = qg_optest_dalloc(n); /* (N, n_tok) */
    qg_ref_add(qg_optest_f32(f, c->a), qg_optest_f32(f, c->b), n, ref);
    /* one correctly rounded f32 add: |y - ref| <= 2^-24 |ref| */
    qg_optest_expect_close(label, "y", qg_optest_f32(f, c->y), ref, NULL, n, 0x1p-24, 0);
    free(ref);
}

void qg_optest_expect_matmul(qg_optest_fx *f, const qg_optest_mm *c, int n_tok, const char *label,
                             double rel, double abs_tol) {
    const int cols = c->only_last ? 1 : n_tok;
    const float *x = qg_optest_f32(f, c->x) + (c->only_last ? (size_t)(n_tok - 1) * c->N : 0);
    double *ref = qg_optest_dalloc(c->M * cols),
           *mag = qg_optest_dalloc(c->M * cols); /* (M, cols) */
    qg_ref_matmul(f->g->tensors[c->w].type, f->host[c->w], c->N, c->M, x, cols, ref, mag);
    qg_optest_expect_close(label, "y", qg_optest_f32(f, c->y), ref, mag, c->M * cols, rel, abs_tol);
    free(ref);
    free(mag);
}

void qg_optest_check_matmul(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    /* f32 accumulation of exactly dequantized products (in any grouping of
     * partial sums): |y - ref| <= 1e-5 * sum|w||x| + 1e-6 */
    qg_optest_expect_matmul(f, ctx, n_tok, label, 1e-5, 1e-6);
}

void qg_optest_expect_qkv(qg_optest_fx *f, const qg_optest_qkv *c, int n_tok, const char *label,
                          double rel, double abs_tol) {
    for (int i = 0; i < 3; i++) {
        double *ref = qg_optest_dalloc(c->m[i] * n_tok), *mag = qg_optest_dalloc(c->m[i] * n_tok);
        qg_ref_matmul(f->g->tensors[c->w[i]].type, f->host[c->w[i]], c->E, c->m[i],
                      qg_optest_f32(f, c->x), n_tok, ref, mag);
        qg_optest_expect_close(label, i == 0 ? "q" : i == 1 ? "k" : "v", qg_optest_f32(f, c->y[i]),
                               ref, mag, c->m[i] * n_tok, rel, abs_tol);
        free(ref);
        free(mag);
    }
}

void qg_optest_check_qkv(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    /* as matmul: |y - ref| <= 1e-5 * sum|w||x| + 1e-6 */
    qg_optest_expect_qkv(f, ctx, n_tok, label, 1e-5, 1e-6);
}

void qg_optest_expect_swiglu(qg_optest_fx *f, const qg_optest_swiglu *c, int n_tok,
                             const char *label, double rel, double abs_tol) {
    const int64_t n = c->F * n_tok;
    double *ref = qg_optest_dalloc(n), *mag = qg_optest_dalloc(n); /* (F, n_tok) */
    qg_ref_swiglu(f->g->tensors[c->gate].type, f->host[c->gate], f->g->tensors[c->up].type,
                  f->host[c->up], c->E, c->F, qg_optest_f32(f, c->x), n_tok, ref, mag);
    qg_optest_expect_close(label, "h", qg_optest_f32(f, c->h), ref, mag, n, rel, abs_tol);
    free(ref);
    free(mag);
}

void qg_optest_check_swiglu(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    /* |h - ref| <= 1e-5 * (1.1 |u| sum|g x| + |silu g| sum|u x| + |h|) + 1e-6 */
    qg_optest_expect_swiglu(f, ctx, n_tok, label, 1e-5, 1e-6);
}

void qg_optest_check_rope(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const qg_optest_rope *c = ctx;
    double *qr = qg_optest_dalloc((int64_t)c->hd * c->nh * n_tok);  /* (hd * nh, n_tok) */
    double *kr = qg_optest_dalloc((int64_t)c->hd * c->nkv * n_tok); /* (hd * nkv, n_tok) */
    qg_ref_rope(qg_optest_f32(f, c->q), qg_optest_f32(f, c->k), qg_optest_f32(f, c->qn),
                qg_optest_f32(f, c->kn), qg_optest_i32(f, c->pos), n_tok, c->hd, c->nh, c->nkv,
                c->eps, c->theta, qr, kr);
    qg_optest_expect_rope(label, "q", qg_optest_f32(f, c->qo), qr, c->nh * n_tok, c->hd);
    qg_optest_expect_rope(label, "k", qg_optest_f32(f, c->ko), kr, c->nkv * n_tok, c->hd);
    free(qr);
    free(kr);
}

void qg_optest_expect_kv_written(qg_optest_fx *f, const qg_optest_attn *c, int n_tok,
                                 const char *label) {
    const int64_t Dkv = (int64_t)c->hd * c->nkv;
    const int32_t *pos = qg_optest_i32(f, c->pos);
    const size_t es = c->ct == QG_F16 ? 2 : 4;
    for (int m = 0; m < 2; m++) {
        const float *src = qg_optest_f32(f, m ? c->v : c->k); /* (Dkv, T) */
        const unsigned char *now = f->host[m ? c->vc : c->kc], *before = m ? c->vc0 : c->kc0;
        for (int row = 0; row < c->C; row++) {
            int t = -1;
            for (int i = 0; i < n_tok; i++)
                if (pos[i] == row) t = i;
            for (int64_t i = 0; i < Dkv; i++) {
                const size_t off = ((size_t)row * Dkv + i) * es;
                if (t < 0) {
                    if (memcmp(now + off, before + off, es) != 0)
                        fail_msg("%s: cache row %d changed (not written this step)", label, row);
                    continue;
                }
                const float x = src[(size_t)t * Dkv + i];
                bool ok;
                if (c->ct == QG_F16) {
                    uint16_t h;
                    memcpy(&h, now + off, 2);
                    ok = h == qg_f32_to_f16(x);
                } else {
                    ok = memcmp(now + off, &x, 4) == 0;
                }
                if (!ok)
                    fail_msg("%s: %s cache row %d [%lld] wrong", label, m ? "v" : "k", row,
                             (long long)i);
            }
        }
    }
}

/* Cache element i of a cache buffer of type ct, as double. */
static double cache_get(qg_dtype ct, const void *p, size_t i) {
    return ct == QG_F16 ? (double)qg_f16_to_f32(((const uint16_t *)p)[i])
                        : (double)((const float *)p)[i];
}

void qg_optest_read_kv(qg_optest_fx *f, const qg_optest_attn *c, double *kd, double *vd) {
    const int64_t Dkv = (int64_t)c->hd * c->nkv;
    for (size_t i = 0; i < (size_t)(Dkv * c->C); i++) {
        kd[i] = cache_get(c->ct, f->host[c->kc], i);
        vd[i] = cache_get(c->ct, f->host[c->vc], i);
    }
}

double qg_optest_expect_attention(qg_optest_fx *f, const qg_optest_attn *c, int n_tok,
                                  const char *label, double rel, double abs_tol) {
    const int64_t Dkv = (int64_t)c->hd * c->nkv, Dq = (int64_t)c->hd * c->nh;
    double *kd = qg_optest_dalloc(Dkv * c->C), *vd = qg_optest_dalloc(Dkv * c->C); /* (Dkv, C) */
    qg_optest_read_kv(f, c, kd, vd);
    double *ref = qg_optest_dalloc(Dq * n_tok),
           *pva = qg_optest_dalloc(Dq * n_tok);             /* (Dq, n_tok) */
    double *qka = qg_optest_dalloc((int64_t)c->nh * n_tok); /* (nh, n_tok) */
    double *mag = qg_optest_dalloc(Dq * n_tok);             /* (Dq, n_tok) */
    qg_ref_attention(qg_optest_f32(f, c->q), kd, vd, qg_optest_i32(f, c->pos), n_tok, c->hd, c->nh,
                     c->nkv, ref, pva, qka);
    for (int t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < Dq; i++)
            mag[t * Dq + i] = (1.0 + qka[t * c->nh + i / c->hd]) * pva[t * Dq + i];
    const double worst =
        qg_optest_expect_close(label, "o", qg_optest_f32(f, c->o), ref, mag, Dq * n_tok, rel, abs_tol);
    free(kd);
    free(vd);
    free(ref);
    free(pva);
    free(qka);
    free(mag);
    return worst;
}

void qg_optest_check_topk(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    const qg_optest_topk *c = ctx;
    qg_optest_expect_topk(label, qg_optest_f32(f, c->logits), qg_optest_i32(f, c->ids),
                          qg_optest_f32(f, c->wts), c->X, c->K, n_tok, c->exact_ties);
}

void qg_optest_expect_expert_swiglu(qg_optest_fx *f, const qg_optest_moe *c, int n_tok,
                                    const char *label, double rel, double abs_tol) {
    const int64_t n = c->F * c->K * n_tok;
    double *ref = qg_optest_dalloc(n), *mag = qg_optest_dalloc(n); /* (F, K, n_tok) */
    qg_ref_expert_swiglu(f->g->tensors[c->gate].type, f->host[c->gate], f->g->tensors[c->up].type,
                         f->host[c->up], c->E, c->F, c->X, qg_optest_f32(f, c->x),
                         qg_optest_i32(f, c->ids), c->K, n_tok, ref, mag);
    qg_optest_expect_close(label, "h", qg_optest_f32(f, c->h), ref, mag, n, rel, abs_tol);
    free(ref);
    free(mag);
}

void qg_optest_expect_aggregate(qg_optest_fx *f, const qg_optest_moe *c, int n_tok,
                                const char *label, double rel, double abs_tol) {
    const int64_t n = c->E * n_tok;
    double *ref = qg_optest_dalloc(n), *mag = qg_optest_dalloc(n); /* (E, n_tok) */
    qg_ref_aggregate(qg_optest_f32(f, c->h), f->g->tensors[c->down].type, f->host[c->down], c->F,
                     c->E, c->X, qg_optest_i32(f, c->ids), qg_optest_f32(f, c->wts), c->K, n_tok,
                     ref, mag);
    qg_optest_expect_close(label, "y", qg_optest_f32(f, c->y), ref, mag, n, rel, abs_tol);
    free(ref);
    free(mag);
}

void qg_optest_check_expert_swiglu(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    /* as swiglu: |h - ref| <= 1e-5 * (1.1 |u| sum|g x| + |silu g| sum|u x|
     * + |h|) + 1e-6 */
    qg_optest_expect_expert_swiglu(f, ctx, n_tok, label, 1e-5, 1e-6);
}

void qg_optest_check_aggregate(qg_optest_fx *f, const void *ctx, int n_tok, const char *label) {
    /* |y - ref| <= 1e-5 * sum_k |w_k| sum_f |down h| + 1e-6 */
    qg_optest_expect_aggregate(f, ctx, n_tok, label, 1e-5, 1e-6);
}

void qg_optest_expect_moe_y(qg_optest_fx *f, const qg_optest_moe *c, int n_tok, const char *label,
                            double rel, double abs_tol) {
    const int64_t nh = c->F * c->K * n_tok, ny = c->E * n_tok;
    double *h = qg_optest_dalloc(nh), *ha = qg_optest_dalloc(nh); /* (F, K, n_tok) */
    double *y = qg_optest_dalloc(ny), *ya = qg_optest_dalloc(ny); /* (E, n_tok) */
    double *yb = qg_optest_dalloc(ny);                            /* (E, n_tok) */
    const int32_t *ids = qg_optest_i32(f, c->ids2);
    const float *wts = qg_optest_f32(f, c->wts2);
    qg_ref_expert_swiglu(f->g->tensors[c->gate].type, f->host[c->gate], f->g->tensors[c->up].type,
                         f->host[c->up], c->E, c->F, c->X, qg_optest_f32(f, c->x), ids, c->K,
                         n_tok, h, ha);
    float *hf = malloc(sizeof(float) * (size_t)nh), *haf = malloc(sizeof(float) * (size_t)nh);
    assert_true(hf && haf);
    for (int64_t i = 0; i < nh; i++) {
        hf[i] = (float)h[i];
        haf[i] = (float)ha[i];
    }
    /* y from the reference h rounded to f32 (adds <= 2^-24 |h|, covered);
     * the h error bound carried through down as the y error bound */
    const qg_dtype dt = f->g->tensors[c->down].type;
    qg_ref_aggregate(hf, dt, f->host[c->down], c->F, c->E, c->X, ids, wts, c->K, n_tok, y, ya);
    qg_ref_aggregate(haf, dt, f->host[c->down], c->F, c->E, c->X, ids, wts, c->K, n_tok, yb, NULL);
    for (int64_t i = 0; i < ny; i++) ya[i] += fabs(yb[i]) * 1.0001;
    qg_optest_expect_close(label, "y", qg_optest_f32(f, c->y2), y, ya, ny, rel, abs_tol);
    free(h);
    free(ha);
    free(y);
    free(ya);
    free(yb);
    free(hf);
    free(haf);
}

void qg_optest_expect_fused(qg_optest_fx *f, const qg_optest_moe *c, int n_tok, const char *label,
                            bool same_y) {
    qg_optest_expect_fused_tol(f, c, n_tok, label, same_y, 1e-5, 1e-6);
}

void qg_optest_expect_fused_tol(qg_optest_fx *f, const qg_optest_moe *c, int n_tok,
                                const char *label, bool same_y, double rel, double abs_tol) {
    const struct {
        int a, b;
        const char *name;
    } same[] = {{c->ids, c->ids2, "ids"}, {c->wts, c->wts2, "wts"}, {c->y, c->y2, "y"}};
    for (int i = 0; i < (same_y ? 3 : 2); i++)
        if (memcmp(f->host[same[i].a], f->host[same[i].b],
                   qg_optest_live_bytes(f, same[i].a, n_tok)) != 0)
            fail_msg("%s: fused %s differs from the unfused chain", label, same[i].name);
    /* router logits (the unfused chain's, bitwise what the fused node
     * used): as matmul, |l - ref| <= 1e-5 * sum|w||x| + 1e-6 */
    double *lr = qg_optest_dalloc((int64_t)c->X * n_tok); /* (X, n_tok) */
    double *la = qg_optest_dalloc((int64_t)c->X * n_tok); /* (X, n_tok) */
    qg_ref_matmul(f->g->tensors[c->gate_inp].type, f->host[c->gate_inp], c->E, c->X,
                  qg_optest_f32(f, c->x), n_tok, lr, la);
    qg_optest_expect_close(label, "logits", qg_optest_f32(f, c->logits), lr, la,
                           (int64_t)c->X * n_tok, 1e-5, 1e-6);
    /* routing: as topk, over those logits */
    qg_optest_expect_topk(label, qg_optest_f32(f, c->logits), qg_optest_i32(f, c->ids2),
                          qg_optest_f32(f, c->wts2), c->X, c->K, n_tok, false);
    /* y: |y - ref| <= rel * (sum_k |w| sum_f |down| (|h| + habs)) + abs_tol */
    qg_optest_expect_moe_y(f, c, n_tok, label, rel, abs_tol);
    free(lr);
    free(la);
}
