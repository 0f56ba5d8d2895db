/*
 * test_sampler.c - frontends/qg_sampler against an independent float64
 * model of llama.cpp's default chain (penalties -> top-k -> top-p -> min-p
 * -> temperature -> draw).
 *
 * For every trial, fresh random logits (seeded, different per trial) and a
 * random history go through the sampler; the test then recomputes, in
 * float64 and from the formulas alone, which tokens each stage must keep:
 *   ALLOW  certainly kept, EXCL certainly dropped, AMBIG within rounding of a
 *   boundary (float32 vs float64), where either outcome is correct.
 * Tolerances (float32 arithmetic in the sampler vs float64 here):
 *   - top-p boundary: cumulative probability within 3e-6 of top_p is AMBIG
 *     (the sampler's weights are expf of float32 logit differences, a few
 *     ulp each, summed in float64);
 *   - min-p boundary: logit within 1e-5 * max(1, |threshold|) is AMBIG;
 *   - top-k boundary: exact unless a boundary token is penalized (the
 *     sampler then compares float32 results); a penalized boundary within
 *     1e-6 relative makes the trial's set check AMBIG;
 *   - probabilities: |p - p_ref| <= tol * p_ref + 1e-12 with
 *     tol = 2e-5 + 6e-7 * max|logit / temp| (float32 rounding of logit/temp
 *     and of its difference to the maximum, ~10 ulp of the largest
 *     exponent, plus 2e-5 for expf and the normalization).
 * The tests also assert that AMBIG stays rare, so the bands cannot hide a
 * wrong stage.  The draw itself is checked by chi-square goodness of fit
 * (p-value > 0.001, computed with the regularized incomplete gamma
 * function, itself checked against the table value 43.82 for df = 19).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "frontends/qg_sampler.h"

enum { EXCL = 0, ALLOW = 1, AMBIG = 2 };

/* ---- test RNG (independent of the sampler's) ---------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static int rng_int(uint64_t *s, int lo, int hi) { /* [lo, hi] */
    return lo + (int)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static double rng_gauss(uint64_t *s) {
    double u1 = rng_unit(s), u2 = rng_unit(s);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Random logits: gaussian of a random scale; some trials quantized to
 * produce exact ties, some with banned (-inf) tokens. */
static void make_logits(uint64_t *s, float *l, int n, bool ties, bool bans) {
    const double sigma = 0.5 + 4.5 * rng_unit(s);
    for (int i = 0; i < n; i++) {
        double v = sigma * rng_gauss(s);
        if (ties) v = round(v * 2.0) / 2.0;
        l[i] = (float)v;
    }
    if (bans) {
        int nb = rng_int(s, 1, n > 2 ? n / 2 : 1);
        for (int j = 0; j < nb; j++) l[rng_int(s, 0, n - 1)] = -INFINITY;
        l[rng_int(s, 0, n - 1)] = 1.0f; /* at least one finite logit */
    }
}

/* ---- float64 reference ------------------------------------------------------ */

typedef struct rank_ent {
    double pen;
    int id;
} rank_ent;

static int rank_cmp(const void *a, const void *b) {
    const rank_ent *x = a, *y = b;
    if (x->pen > y->pen) return -1;
    if (x->pen < y->pen) return 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

typedef struct ref_out {
    double *pen;     /* (n) penalized logits, float64 */
    uint8_t *state;  /* (n) EXCL / ALLOW / AMBIG */
    rank_ent *rank;  /* (n) scratch */
    int n_ambig;     /* tokens AMBIG */
    bool k_ambig;    /* top-k boundary within rounding: set unreliable */
} ref_out;

static void ref_alloc(ref_out *r, int n) {
    r->pen = malloc((size_t)n * sizeof(double));
    r->state = malloc((size_t)n);
    r->rank = malloc((size_t)n * sizeof(rank_ent));
    assert_non_null(r->pen);
    assert_non_null(r->state);
    assert_non_null(r->rank);
}

static void ref_free(ref_out *r) {
    free(r->pen);
    free(r->state);
    free(r->rank);
}

/* Penalized logits from the formula in qg_sampler.h, over the window of
 * the last penalty_last_n entries of hist. */
static bool ref_penalize(const float *l, int n, const qg_sampler_params *p,
                         const int32_t *hist, int n_hist, double *pen) {
    for (int i = 0; i < n; i++) pen[i] = l[i];
    bool any = false;
    if (p->penalty_last_n == 0) return false;
    if (p->penalty_repeat == 1.0f && p->penalty_freq == 0.0f && p->penalty_present == 0.0f)
        return false;
    int w0 = n_hist - p->penalty_last_n;
    if (w0 < 0) w0 = 0;
    int *cnt = calloc((size_t)n, sizeof(int));
    assert_non_null(cnt);
    for (int j = w0; j < n_hist; j++) cnt[hist[j]]++;
    for (int t = 0; t < n; t++) {
        if (!cnt[t]) continue;
        double v = l[t];
        v = v <= 0 ? v * (double)p->penalty_repeat : v / (double)p->penalty_repeat;
        v -= cnt[t] * (double)p->penalty_freq + (double)p->penalty_present;
        pen[t] = v;
        any = true;
    }
    free(cnt);
    return any;
}

/* Fills r->state for logits l under params p and history hist. */
static void ref_allowed(const float *l, int n, const qg_sampler_params *p,
                        const int32_t *hist, int n_hist, ref_out *r) {
    (void)ref_penalize(l, n, p, hist, n_hist, r->pen);
    for (int i = 0; i < n; i++) {
        r->rank[i].pen = r->pen[i];
        r->rank[i].id = i;
        r->state[i] = ALLOW;
    }
    qsort(r->rank, (size_t)n, sizeof(rank_ent), rank_cmp);
    r->n_ambig = 0;
    r->k_ambig = false;
    /* top-k */
    int K = (p->top_k > 0 && p->top_k < n) ? p->top_k : n;
    for (int j = K; j < n; j++) r->state[r->rank[j].id] = EXCL;
    if (K < n) {
        const rank_ent *a = &r->rank[K - 1], *b = &r->rank[K];
        const bool pen_a = a->pen != (double)l[a->id], pen_b = b->pen != (double)l[b->id];
        if ((pen_a || pen_b) && fabs(a->pen - b->pen) <= 1e-6 * fmax(1.0, fabs(a->pen)))
            r->k_ambig = true;
    }
    /* top-p over the first K */
    if (p->top_p < 1.0f) {
        const double mx = r->rank[0].pen;
        double sum = 0;
        for (int j = 0; j < K; j++) sum += exp(r->rank[j].pen - mx);
        double before = 0;
        for (int j = 0; j < K; j++) {
            const int id = r->rank[j].id;
            if (j > 0) {
                if (before > (double)p->top_p + 3e-6) r->state[id] = EXCL;
                else if (before >= (double)p->top_p - 3e-6) r->state[id] = AMBIG;
            }
            before += exp(r->rank[j].pen - mx) / sum;
        }
    }
    /* min-p over the survivors */
    if (p->min_p > 0.0f) {
        const double thr = r->rank[0].pen + log((double)p->min_p);
        const double eps = 1e-5 * fmax(1.0, fabs(thr));
        for (int j = 1; j < n; j++) {
            const int id = r->rank[j].id;
            if (r->state[id] == EXCL) continue;
            if (r->pen[id] < thr - eps) r->state[id] = EXCL;
            else if (r->pen[id] <= thr + eps) r->state[id] = AMBIG;
        }
    }
    for (int i = 0; i < n; i++) r->n_ambig += r->state[i] == AMBIG;
}

/* Relative tolerance of a probability (see the top of the file), given the
 * final logits pen[ids[j]] / temp of the kept set. */
static double p_tol(const double *pen, const qg_sampler_cand *c, int nc, double temp) {
    double zmax = 0;
    for (int j = 0; j < nc; j++)
        if (isfinite(pen[c[j].id])) zmax = fmax(zmax, fabs(pen[c[j].id] / temp));
    return 2e-5 + 6e-7 * zmax;
}

/* ---- checking one draw ------------------------------------------------------ */

typedef struct trial_stats {
    int trials, ambig_trials, k_ambig_trials;
    long n_cands;
} trial_stats;

/* Runs one sample on a fresh sampler fed hist, and checks the token, the
 * candidate set and the candidate probabilities against the reference. */
static void check_trial(const float *l, int n, const qg_sampler_params *p,
                        const int32_t *hist, int n_hist, trial_stats *st) {
    qg_error err = {0};
    qg_sampler *s = qg_sampler_new(p, n, &err);
    assert_non_null(s);
    for (int j = 0; j < n_hist; j++) qg_sampler_accept(s, hist[j]);
    ref_out r;
    ref_alloc(&r, n);
    ref_allowed(l, n, p, hist, n_hist, &r);

    const int32_t tok = qg_sampler_sample(s, l);
    assert_true(tok >= 0 && tok < n);
    if (p->temp <= 0.0f) { /* greedy: argmax of the penalized logits */
        const bool close = n > 1 && r.rank[0].pen != r.rank[1].pen &&
                           fabs(r.rank[0].pen - r.rank[1].pen) <=
                               1e-6 * fmax(1.0, fabs(r.rank[0].pen));
        if (!close) assert_int_equal(tok, r.rank[0].id);
    }
    if (!r.k_ambig) assert_int_not_equal(r.state[tok], EXCL);

    const qg_sampler_cand *c = NULL;
    const int32_t nc = qg_sampler_candidates(s, &c);
    assert_true(nc >= 1 && nc <= n);
    uint8_t *seen = calloc((size_t)n, 1);
    assert_non_null(seen);
    double mx = -INFINITY, psum = 0;
    bool tok_in = false;
    for (int32_t j = 0; j < nc; j++) {
        assert_true(c[j].id >= 0 && c[j].id < n);
        assert_false(seen[c[j].id]); /* unique */
        seen[c[j].id] = 1;
        tok_in |= c[j].id == tok;
        mx = fmax(mx, r.pen[c[j].id]);
    }
    assert_true(tok_in);
    if (p->temp > 0.0f) {
        if (!r.k_ambig) {
            for (int i = 0; i < n; i++) {
                if (r.state[i] == ALLOW && !seen[i]) fail_msg("token %d allowed but dropped", i);
                if (r.state[i] == EXCL && seen[i]) fail_msg("token %d excluded but kept", i);
            }
        }
        /* probabilities: softmax(pen / temp) over the kept set */
        const double T = p->temp;
        double z = 0;
        const double tol = p_tol(r.pen, c, nc, T);
        for (int32_t j = 0; j < nc; j++) z += exp((r.pen[c[j].id] - mx) / T);
        for (int32_t j = 0; j < nc; j++) {
            const double ref = exp((r.pen[c[j].id] - mx) / T) / z;
            assert_false(isnan(c[j].p));
            if (fabs(c[j].p - ref) > tol * ref + 1e-12)
                fail_msg("token %d: p %.9g, expected %.9g (temp %g)", c[j].id, (double)c[j].p, ref, T);
            if (c[j].id == tok) assert_true(ref > 0);
            psum += c[j].p;
        }
        assert_true(fabs(psum - 1.0) < 1e-5);
    } else {
        assert_int_equal(nc, 1);
        assert_int_equal(c[0].id, tok);
    }
    st->trials++;
    st->ambig_trials += r.n_ambig > 0;
    st->k_ambig_trials += r.k_ambig;
    st->n_cands += nc;
    free(seen);
    ref_free(&r);
    qg_sampler_free(s);
}

static qg_sampler_params params_off(float temp) {
    qg_sampler_params p = qg_sampler_default_params();
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.penalty_repeat = 1.0f;
    return p;
}

/* Random history over a small subset of tokens so that repeats occur. */
static int make_hist(uint64_t *s, int32_t *hist, int n) {
    const int nh = rng_int(s, 0, 100);
    const int sub = rng_int(s, 1, n < 30 ? n : 30);
    for (int j = 0; j < nh; j++) hist[j] = rng_int(s, 0, sub - 1) * (n / sub);
    return nh;
}

static void check_stats(const trial_stats *st, const char *what) {
    printf("%s: %d trials, %d with an AMBIG token, %d with an AMBIG top-k, mean %.1f candidates\n",
           what, st->trials, st->ambig_trials, st->k_ambig_trials,
           (double)st->n_cands / st->trials);
    /* the rounding bands must stay exceptional: an AMBIG token excuses that
     * token alone, and most trials have none */
    assert_true(st->ambig_trials * 4 <= st->trials);
    assert_true(st->k_ambig_trials * 50 <= st->trials);
}

/* ---- the tests ------------------------------------------------------------ */

/* top-k alone: heap path (k <= 256), selection path (k > 256), off (k >= n) */
static void test_top_k(void **state) {
    (void)state;
    uint64_t rs = 0x70b1;
    static const int ks[] = {1, 2, 5, 40, 256, 257, 600, 2000, 2999, 3000, 5000};
    trial_stats st = {0};
    float *l = malloc(3000 * sizeof(float));
    for (int t = 0; t < 220; t++) {
        const int n = t % 4 == 0 ? 3000 : rng_int(&rs, 2, 3000);
        make_logits(&rs, l, n, t % 3 == 1, t % 5 == 2);
        qg_sampler_params p = params_off(0.3f + 1.5f * (float)rng_unit(&rs));
        p.seed = rng_next(&rs);
        p.top_k = ks[t % (int)(sizeof ks / sizeof ks[0])];
        check_trial(l, n, &p, NULL, 0, &st);
    }
    free(l);
    check_stats(&st, "top-k");
}

/* top-p alone, over small and full-size vocabularies */
static void test_top_p(void **state) {
    (void)state;
    uint64_t rs = 0x70b2;
    static const float ps[] = {0.0f, 0.1f, 0.5f, 0.8f, 0.9f, 0.95f, 0.99f, 0.999f};
    trial_stats st = {0};
    const int big = 151936;
    float *l = malloc((size_t)big * sizeof(float));
    for (int t = 0; t < 240; t++) {
        const int n = t < 6 ? big : rng_int(&rs, 2, 3000);
        make_logits(&rs, l, n, t % 3 == 1, t % 5 == 2);
        qg_sampler_params p = params_off(0.3f + 1.5f * (float)rng_unit(&rs));
        p.seed = rng_next(&rs);
        p.top_p = ps[t % (int)(sizeof ps / sizeof ps[0])];
        check_trial(l, n, &p, NULL, 0, &st);
    }
    free(l);
    check_stats(&st, "top-p");
}

/* min-p alone */
static void test_min_p(void **state) {
    (void)state;
    uint64_t rs = 0x70b3;
    static const float ms[] = {0.001f, 0.01f, 0.05f, 0.2f, 0.5f, 0.9f, 1.0f};
    trial_stats st = {0};
    float *l = malloc(3000 * sizeof(float));
    for (int t = 0; t < 200; t++) {
        const int n = rng_int(&rs, 2, 3000);
        make_logits(&rs, l, n, t % 3 == 1, t % 5 == 2);
        qg_sampler_params p = params_off(0.3f + 1.5f * (float)rng_unit(&rs));
        p.seed = rng_next(&rs);
        p.min_p = ms[t % (int)(sizeof ms / sizeof ms[0])];
        check_trial(l, n, &p, NULL, 0, &st);
    }
    free(l);
    check_stats(&st, "min-p");
}

/* every stage at once, with penalties and histories; also greedy */
static void test_chain(void **state) {
    (void)state;
    uint64_t rs = 0x70b4;
    trial_stats st = {0};
    float *l = malloc(3000 * sizeof(float));
    int32_t hist[128];
    static const int lastn[] = {0, 1, 8, 64};
    for (int t = 0; t < 300; t++) {
        const int n = rng_int(&rs, 2, 3000);
        make_logits(&rs, l, n, t % 3 == 1, t % 7 == 2);
        qg_sampler_params p = qg_sampler_default_params();
        p.seed = rng_next(&rs);
        p.temp = t % 6 == 0 ? (t % 12 == 0 ? 0.0f : -1.0f) : 0.2f + 1.6f * (float)rng_unit(&rs);
        p.top_k = rng_int(&rs, 0, 400);
        p.top_p = t % 4 == 0 ? 1.0f : (float)(0.5 + 0.5 * rng_unit(&rs));
        p.min_p = t % 4 == 1 ? 0.0f : (float)(0.2 * rng_unit(&rs));
        p.penalty_last_n = lastn[t % 4];
        p.penalty_repeat = (float)(0.7 + 1.0 * rng_unit(&rs));
        p.penalty_freq = t % 2 ? (float)(0.3 * rng_unit(&rs)) : 0.0f;
        p.penalty_present = t % 3 ? (float)(0.3 * rng_unit(&rs)) : 0.0f;
        const int nh = make_hist(&rs, hist, n);
        check_trial(l, n, &p, hist, nh, &st);
    }
    free(l);
    check_stats(&st, "chain");
}

/* greedy: argmax, ties to the lowest id, penalties included */
static void test_greedy(void **state) {
    (void)state;
    uint64_t rs = 0x70b5;
    float l[500];
    for (int t = 0; t < 100; t++) {
        const int n = rng_int(&rs, 1, 500);
        make_logits(&rs, l, n, true, t % 2 == 0);
        /* plant a tie for the maximum at two random places */
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) mx = fmaxf(mx, l[i]);
        const int a = rng_int(&rs, 0, n - 1), b = rng_int(&rs, 0, n - 1);
        l[a] = l[b] = mx;
        int want = 0;
        for (int i = 1; i < n; i++)
            if (l[i] > l[want]) want = i;
        qg_sampler_params p = params_off(t % 2 ? 0.0f : -0.5f);
        p.seed = rng_next(&rs);
        p.top_k = rng_int(&rs, 0, 50);
        p.top_p = 0.3f;
        p.min_p = 0.1f;
        qg_sampler *s = qg_sampler_new(&p, n, NULL);
        assert_non_null(s);
        for (int k = 0; k < 3; k++) assert_int_equal(qg_sampler_sample(s, l), want);
        qg_sampler_free(s);
    }
}

/* The p-value of a chi-square statistic x with df degrees of freedom:
 * Q(df/2, x/2), the regularized upper incomplete gamma function (series
 * for x < a + 1, continued fraction otherwise). */
static double chi2_pvalue(double x, int df) {
    const double a = df / 2.0, z = x / 2.0;
    if (z <= 0) return 1.0;
    const double lg = lgamma(a);
    if (z < a + 1) {
        double sum = 1.0 / a, term = sum, ap = a;
        for (int i = 0; i < 1000; i++) {
            ap += 1;
            term *= z / ap;
            sum += term;
            if (fabs(term) < fabs(sum) * 1e-15) break;
        }
        return 1.0 - sum * exp(-z + a * log(z) - lg);
    }
    double b = z + 1 - a, c = 1e300, d = 1 / b, h = d;
    for (int i = 1; i < 1000; i++) {
        const double an = -i * (i - a);
        b += 2;
        d = an * d + b;
        if (fabs(d) < 1e-300) d = 1e-300;
        c = b + an / c;
        if (fabs(c) < 1e-300) c = 1e-300;
        d = 1 / d;
        const double del = d * c;
        h *= del;
        if (fabs(del - 1) < 1e-15) break;
    }
    return exp(-z + a * log(z) - lg) * h;
}

/* Draws `draws` tokens from logits l (n) with params p and returns the
 * chi-square p-value of the counts against expected probabilities q (n;
 * zero where excluded); *df_out gets the degrees of freedom. */
static double chi2_run(const float *l, int n, const qg_sampler_params *p,
                       const int32_t *hist, int n_hist, const double *q,
                       int draws, int *df_out) {
    qg_sampler *s = qg_sampler_new(p, n, NULL);
    assert_non_null(s);
    for (int j = 0; j < n_hist; j++) qg_sampler_accept(s, hist[j]);
    int *cnt = calloc((size_t)n, sizeof(int));
    assert_non_null(cnt);
    for (int d = 0; d < draws; d++) {
        const int32_t tok = qg_sampler_sample(s, l);
        assert_true(tok >= 0 && tok < n);
        cnt[tok]++;
    }
    double x = 0;
    int cells = 0;
    for (int i = 0; i < n; i++) {
        if (q[i] == 0) {
            assert_int_equal(cnt[i], 0); /* never an excluded token */
            continue;
        }
        const double e = q[i] * draws;
        assert_true(e >= 5.0); /* validity of the chi-square approximation */
        x += (cnt[i] - e) * (cnt[i] - e) / e;
        cells++;
    }
    free(cnt);
    qg_sampler_free(s);
    *df_out = cells - 1;
    const double pv = chi2_pvalue(x, cells - 1);
    printf("chi-square %.2f, df %d, p-value %.4f\n", x, cells - 1, pv);
    return pv;
}

/* The draw: frequencies over 20 tokens against softmax(logits / temp) */
static void test_chi_square_temp(void **state) {
    (void)state;
    /* the p-value function against table values (0.999 quantiles) */
    assert_true(fabs(chi2_pvalue(43.820, 19) - 0.001) < 1e-5);
    assert_true(fabs(chi2_pvalue(29.588, 10) - 0.001) < 1e-5);
    assert_true(fabs(chi2_pvalue(3.841, 1) - 0.05) < 1e-4);
    uint64_t rs = 0x70b6;
    static const float temps[] = {0.7f, 1.0f, 1.6f};
    for (int t = 0; t < 3; t++) {
        float l[20];
        double q[20], z = 0;
        for (int i = 0; i < 20; i++) l[i] = (float)(3.0 * rng_unit(&rs) - 1.5);
        for (int i = 0; i < 20; i++) z += exp(l[i] / (double)temps[t]);
        for (int i = 0; i < 20; i++) q[i] = exp(l[i] / (double)temps[t]) / z;
        qg_sampler_params p = params_off(temps[t]);
        p.seed = rng_next(&rs);
        int df;
        /* p = 0.001, df = 19: critical value 43.82 */
        const double pv = chi2_run(l, 20, &p, NULL, 0, q, 20000, &df);
        assert_int_equal(df, 19);
        assert_true(pv > 0.001);
    }
}

/* The draw after truncation and penalties: frequencies against the
 * renormalized softmax over the allowed set */
static void test_chi_square_chain(void **state) {
    (void)state;
    uint64_t rs = 0x70b7;
    int done = 0;
    for (int attempt = 0; attempt < 50 && done < 4; attempt++) {
        const int n = 40;
        float l[40];
        for (int i = 0; i < n; i++) l[i] = (float)(2.0 * rng_gauss(&rs));
        qg_sampler_params p = qg_sampler_default_params();
        p.seed = rng_next(&rs);
        p.temp = 0.6f + (float)rng_unit(&rs);
        p.top_k = rng_int(&rs, 8, 25);
        p.top_p = 0.85f + 0.1f * (float)rng_unit(&rs);
        p.min_p = 0.02f;
        p.penalty_last_n = 16;
        p.penalty_repeat = 1.4f;
        p.penalty_freq = 0.05f;
        p.penalty_present = 0.1f;
        int32_t hist[24];
        for (int j = 0; j < 24; j++) hist[j] = rng_int(&rs, 0, 9) * 4;
        ref_out r;
        ref_alloc(&r, n);
        ref_allowed(l, n, &p, hist, 24, &r);
        double q[40], z = 0, mx = -INFINITY;
        int n_allow = 0;
        for (int i = 0; i < n; i++)
            if (r.state[i] == ALLOW) mx = fmax(mx, r.pen[i]);
        for (int i = 0; i < n; i++) {
            q[i] = r.state[i] == ALLOW ? exp((r.pen[i] - mx) / p.temp) : 0.0;
            z += q[i];
            n_allow += r.state[i] == ALLOW;
        }
        bool usable = r.n_ambig == 0 && !r.k_ambig && n_allow >= 3;
        for (int i = 0; i < n; i++) {
            q[i] /= z;
            if (q[i] > 0 && q[i] * 20000 < 5) usable = false;
        }
        ref_free(&r);
        if (!usable) continue;
        int df;
        const double pv = chi2_run(l, n, &p, hist, 24, q, 20000, &df);
        assert_int_equal(df, n_allow - 1);
        assert_true(pv > 0.001);
        done++;
    }
    assert_int_equal(done, 4);
}

/* Same seed -> same sequence; different seed -> different; reset replays */
static void test_seeds(void **state) {
    (void)state;
    uint64_t rs = 0x70b8;
    const int n = 1000, steps = 300;
    float *l = malloc((size_t)n * steps * sizeof(float)); /* (n, steps) */
    for (int t = 0; t < steps; t++) make_logits(&rs, l + (size_t)t * n, n, false, false);
    qg_sampler_params p = qg_sampler_default_params();
    p.top_k = 0;
    p.top_p = 0.99f;
    p.min_p = 0.0f;
    p.temp = 1.5f;
    p.penalty_repeat = 1.1f;
    p.seed = 12345;
    qg_sampler *a = qg_sampler_new(&p, n, NULL);
    qg_sampler *b = qg_sampler_new(&p, n, NULL);
    p.seed = 12346;
    qg_sampler *c = qg_sampler_new(&p, n, NULL);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    int32_t seq[300];
    int diff = 0;
    for (int t = 0; t < steps; t++) {
        const float *lt = l + (size_t)t * n;
        const int32_t ta = qg_sampler_sample(a, lt), tb = qg_sampler_sample(b, lt);
        const int32_t tc = qg_sampler_sample(c, lt);
        assert_int_equal(ta, tb);
        diff += ta != tc;
        seq[t] = ta;
        qg_sampler_accept(a, ta);
        qg_sampler_accept(b, tb);
        qg_sampler_accept(c, ta); /* same history, so only the RNG differs */
    }
    printf("different seeds: %d of %d tokens differ\n", diff, steps);
    assert_true(diff > steps / 2);
    qg_sampler_reset(a);
    for (int t = 0; t < steps; t++) {
        const int32_t ta = qg_sampler_sample(a, l + (size_t)t * n);
        assert_int_equal(ta, seq[t]);
        qg_sampler_accept(a, ta);
    }
    qg_sampler_free(a);
    qg_sampler_free(b);
    qg_sampler_free(c);
    free(l);
}

/* The repetition penalty: probabilities follow the formula, the window
 * slides (tokens older than penalty_last_n are forgiven), reset clears it */
static void test_penalty(void **state) {
    (void)state;
    uint64_t rs = 0x70b9;
    const int n = 64;
    float l[64];
    for (int t = 0; t < 40; t++) {
        make_logits(&rs, l, n, false, false);
        qg_sampler_params p = params_off(0.5f + (float)rng_unit(&rs));
        p.seed = rng_next(&rs);
        p.penalty_last_n = rng_int(&rs, 1, 12);
        p.penalty_repeat = t % 2 ? 1.5f : 0.8f;
        p.penalty_freq = t % 3 == 0 ? 0.2f : 0.0f;
        p.penalty_present = t % 4 == 0 ? 0.3f : 0.0f;
        qg_sampler *s = qg_sampler_new(&p, n, NULL);
        assert_non_null(s);
        int32_t hist[40];
        const int nh = rng_int(&rs, 1, 40);
        for (int j = 0; j < nh; j++) {
            hist[j] = rng_int(&rs, 0, 7);
            qg_sampler_accept(s, hist[j]);
        }
        double pen[64];
        assert_true(ref_penalize(l, n, &p, hist, nh, pen));
        (void)qg_sampler_sample(s, l);
        const qg_sampler_cand *c;
        assert_int_equal(qg_sampler_candidates(s, &c), n);
        double z = 0, mx = -INFINITY;
        for (int i = 0; i < n; i++) mx = fmax(mx, pen[i]);
        for (int i = 0; i < n; i++) z += exp((pen[i] - mx) / p.temp);
        int changed = 0;
        const double tol = p_tol(pen, c, n, p.temp); /* see the top of the file */
        for (int j = 0; j < n; j++) {
            const double ref = exp((pen[c[j].id] - mx) / p.temp) / z;
            if (fabs(c[j].p - ref) > tol * ref + 1e-12)
                fail_msg("penalty: token %d p %.9g expected %.9g", c[j].id, (double)c[j].p, ref);
            changed += pen[c[j].id] != (double)l[c[j].id];
            /* final logit = penalized logit / temp */
            const double fl = pen[c[j].id] / p.temp;
            assert_true(fabs(c[j].logit - fl) <= 1e-5 * fmax(1.0, fabs(fl)));
        }
        assert_true(changed >= 1);
        /* reset forgets the history: plain softmax(l / temp) */
        qg_sampler_reset(s);
        (void)qg_sampler_sample(s, l);
        assert_int_equal(qg_sampler_candidates(s, &c), n);
        double z0 = 0, m0 = -INFINITY;
        for (int i = 0; i < n; i++) m0 = fmax(m0, l[i]);
        for (int i = 0; i < n; i++) z0 += exp((l[i] - m0) / p.temp);
        for (int j = 0; j < n; j++) {
            const double ref = exp((l[c[j].id] - m0) / p.temp) / z0;
            assert_true(fabs(c[j].p - ref) <= tol * ref + 1e-12);
        }
        qg_sampler_free(s);
    }
    /* direction: a repeated positive logit loses, a repeated negative one
     * loses too (multiplied), by exactly the factor */
    float l2[4] = {2.0f, -2.0f, 0.0f, 1.0f};
    qg_sampler_params p = params_off(1.0f);
    p.penalty_repeat = 2.0f;
    qg_sampler *s = qg_sampler_new(&p, 4, NULL);
    assert_non_null(s);
    qg_sampler_accept(s, 0);
    qg_sampler_accept(s, 1);
    (void)qg_sampler_sample(s, l2);
    const qg_sampler_cand *c;
    assert_int_equal(qg_sampler_candidates(s, &c), 4);
    for (int j = 0; j < 4; j++) {
        const double want[4] = {1.0, -4.0, 0.0, 1.0};
        assert_true(fabs(c[j].logit - want[c[j].id]) < 1e-6);
    }
    qg_sampler_free(s);
}

/* Temperature: final logits and probabilities against the formula */
static void test_temperature(void **state) {
    (void)state;
    uint64_t rs = 0x70ba;
    float l[300];
    static const float temps[] = {0.05f, 0.3f, 0.8f, 1.0f, 2.0f, 10.0f};
    for (int t = 0; t < 60; t++) {
        const int n = rng_int(&rs, 1, 300);
        make_logits(&rs, l, n, false, t % 4 == 0);
        qg_sampler_params p = params_off(temps[t % 6]);
        p.seed = rng_next(&rs);
        qg_sampler *s = qg_sampler_new(&p, n, NULL);
        assert_non_null(s);
        (void)qg_sampler_sample(s, l);
        const qg_sampler_cand *c;
        assert_int_equal(qg_sampler_candidates(s, &c), n);
        double mx = -INFINITY, z = 0;
        double pen[300];
        for (int i = 0; i < n; i++) pen[i] = l[i];
        const double tol = p_tol(pen, c, n, p.temp); /* see the top of the file */
        for (int i = 0; i < n; i++) mx = fmax(mx, l[i]);
        for (int i = 0; i < n; i++) z += exp(((double)l[i] - mx) / p.temp);
        for (int j = 0; j < n; j++) {
            const double ref = exp(((double)l[c[j].id] - mx) / p.temp) / z;
            if (fabs(c[j].p - ref) > tol * ref + 1e-12)
                fail_msg("temp %g token %d: p %.9g expected %.9g", (double)p.temp, c[j].id,
                         (double)c[j].p, ref);
            if (isinf(l[c[j].id])) assert_true(c[j].p == 0.0f);
            else assert_true(fabs(c[j].logit - l[c[j].id] / (double)p.temp) <=
                             1e-6 * fmax(1.0, fabs(l[c[j].id] / (double)p.temp)));
        }
        qg_sampler_free(s);
    }
}

/* Parameter validation: every bad field is named */
static void test_params(void **state) {
    (void)state;
    static const char *const field[] = {"temp", "top_p", "min_p", "penalty_last_n",
                                        "penalty_repeat", "penalty_freq", "penalty_present"};
    for (size_t i = 0; i < sizeof field / sizeof field[0]; i++) {
        qg_sampler_params p = qg_sampler_default_params();
        switch (i) {
        case 0: p.temp = NAN; break;
        case 1: p.top_p = -0.5f; break;
        case 2: p.min_p = NAN; break;
        case 3: p.penalty_last_n = -1; break;
        case 4: p.penalty_repeat = 0.0f; break;
        case 5: p.penalty_freq = INFINITY; break;
        case 6: p.penalty_present = NAN; break;
        }
        qg_error err = {0};
        assert_null(qg_sampler_new(&p, 100, &err));
        assert_int_equal(err.code, QG_ERR_ARG);
        assert_non_null(strstr(err.msg, field[i]));
    }
    qg_sampler_params p = qg_sampler_default_params();
    qg_error err = {0};
    assert_null(qg_sampler_new(&p, 0, &err));
    assert_int_equal(err.code, QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "n_vocab"));
    /* a one-token vocabulary always gives token 0 */
    qg_sampler *s = qg_sampler_new(&p, 1, &err);
    assert_non_null(s);
    float one = -3.0f;
    for (int k = 0; k < 5; k++) assert_int_equal(qg_sampler_sample(s, &one), 0);
    qg_sampler_free(s);
}

/* Timing at the Qwen3 vocabulary size (printed, not asserted: the sanitizer
 * builds are several times slower) */
static void test_speed(void **state) {
    (void)state;
    const int n = 151936, reps = 20;
    uint64_t rs = 0x70bb;
    float *l = malloc((size_t)n * sizeof(float));
    make_logits(&rs, l, n, false, false);
    struct {
        const char *name;
        int top_k;
        float top_p, min_p;
    } cfg[] = {{"defaults (k40 p0.95 m0.05)", 40, 0.95f, 0.05f},
               {"top-p 0.95 alone", 0, 0.95f, 0.0f},
               {"top-k 1000", 1000, 1.0f, 0.0f},
               {"min-p 0.05 alone", 0, 1.0f, 0.05f},
               {"no truncation", 0, 1.0f, 0.0f}};
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        qg_sampler_params p = qg_sampler_default_params();
        p.top_k = cfg[i].top_k;
        p.top_p = cfg[i].top_p;
        p.min_p = cfg[i].min_p;
        qg_sampler *s = qg_sampler_new(&p, n, NULL);
        assert_non_null(s);
        struct timespec t0, t1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
        for (int r = 0; r < reps; r++) {
            const int32_t tok = qg_sampler_sample(s, l);
            assert_true(tok >= 0 && tok < n);
            qg_sampler_accept(s, tok);
        }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
        const double ms = ((double)(t1.tv_sec - t0.tv_sec) * 1e3 +
                           (double)(t1.tv_nsec - t0.tv_nsec) * 1e-6) / reps;
        printf("n_vocab %d, %-28s %.3f ms/sample\n", n, cfg[i].name, ms);
        qg_sampler_free(s);
    }
    free(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_chain),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_chi_square_temp),
        cmocka_unit_test(test_chi_square_chain),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_penalty),
        cmocka_unit_test(test_temperature),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
