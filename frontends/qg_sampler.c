/*
 * qg_sampler.c - penalties, top-k, top-p, min-p, temperature and the draw
 * (see qg_sampler.h for the chain and its exact semantics).
 *
 * Candidates live in one array of n_vocab entries allocated by
 * qg_sampler_new; every stage narrows the prefix cand[0 .. n_cand) in place.
 */
#include "qg_sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Top-k with k up to this uses a bounded heap (one pass, most tokens
 * rejected by a single compare); larger k uses selection. */
#define QG_SAMPLER_HEAP_MAX 256
/* Ranges this small are finished by insertion sort inside selections. */
#define QG_SAMPLER_SMALL 16
/* Top-p buckets: 16 per nat of distance below the maximum logit, the last
 * one taking everything from 64 nats down (weights below e^-64). */
#define QG_SAMPLER_BUCKET_SCALE 16.0f
#define QG_SAMPLER_NBUCKET 1024

struct qg_sampler {
    qg_sampler_params p;
    int32_t n_vocab;
    uint64_t rng[4];           /* xoshiro256** state */
    qg_sampler_cand *cand;     /* (n_vocab) candidates; prefix n_cand live */
    int32_t n_cand;
    qg_sampler_cand *heap;     /* (QG_SAMPLER_HEAP_MAX) top-k scratch */
    int32_t *count;            /* (n_vocab) occurrences in the history ring */
    int32_t *ring;             /* (penalty_last_n) history, oldest at head */
    int32_t ring_len, ring_head;
    /* this draw's penalized tokens: distinct history tokens and their new
     * logits, n_pen of them */
    int32_t *pen_id;           /* (penalty_last_n) */
    float *pen_logit;          /* (penalty_last_n) */
    int32_t n_pen;
    bool pen_on;               /* penalties enabled by the parameters */
    /* top-p: probability mass and token count per bucket of
     * (max_logit - logit), QG_SAMPLER_BUCKET_SCALE buckets per nat */
    double bucket_mass[QG_SAMPLER_NBUCKET];
    int32_t bucket_count[QG_SAMPLER_NBUCKET];
};

/* ---- RNG: splitmix64 seeding, xoshiro256** ------------------------------ */

static uint64_t qg_sampler_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t qg_sampler_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static void qg_sampler_seed_rng(qg_sampler *s) {
    uint64_t x = s->p.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = qg_sampler_splitmix64(&x);
}

static uint64_t qg_sampler_next_u64(qg_sampler *s) {
    uint64_t *r = s->rng;
    const uint64_t out = qg_sampler_rotl(r[1] * 5, 7) * 9;
    const uint64_t t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = qg_sampler_rotl(r[3], 45);
    return out;
}

/* Uniform in [0, 1) with 53 random bits. */
static double qg_sampler_next_unit(qg_sampler *s) {
    return (double)(qg_sampler_next_u64(s) >> 11) * 0x1.0p-53;
}

/* ---- parameters, lifetime ------------------------------------------------ */

qg_sampler_params qg_sampler_default_params(void) {
    qg_sampler_params p = {
        .seed = 0,
        .temp = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .penalty_last_n = 64,
        .penalty_repeat = 1.0f,
        .penalty_freq = 0.0f,
        .penalty_present = 0.0f,
    };
    return p;
}

/* QG_OK when every field of p is usable, else QG_ERR_ARG naming it. */
static qg_status qg_sampler_check_params(const qg_sampler_params *p,
                                         int32_t n_vocab, qg_error *err) {
    if (n_vocab <= 0)
        return qg_error_set(err, QG_ERR_ARG, "sampler: n_vocab = %d must be > 0",
                            (int)n_vocab);
    if (isnan(p->temp))
        return qg_error_set(err, QG_ERR_ARG, "sampler: temp is NaN");
    if (!(p->top_p >= 0.0f))
        return qg_error_set(err, QG_ERR_ARG, "sampler: top_p = %g must be >= 0",
                            (double)p->top_p);
    if (isnan(p->min_p))
        return qg_error_set(err, QG_ERR_ARG, "sampler: min_p is NaN");
    if (p->penalty_last_n < 0)
        return qg_error_set(err, QG_ERR_ARG,
                            "sampler: penalty_last_n = %d must be >= 0",
                            (int)p->penalty_last_n);
    if (!(p->penalty_repeat > 0.0f) || isinf(p->penalty_repeat))
        return qg_error_set(err, QG_ERR_ARG,
                            "sampler: penalty_repeat = %g must be finite and > 0",
                            (double)p->penalty_repeat);
    if (!isfinite(p->penalty_freq))
        return qg_error_set(err, QG_ERR_ARG,
                            "sampler: penalty_freq = %g must be finite",
                            (double)p->penalty_freq);
    if (!isfinite(p->penalty_present))
        return qg_error_set(err, QG_ERR_ARG,
                            "sampler: penalty_present = %g must be finite",
                            (double)p->penalty_present);
    return QG_OK;
}

qg_sampler *qg_sampler_new(const qg_sampler_params *p, int32_t n_vocab,
                           qg_error *err) {
    QG_ASSERT(p != NULL);
    if (qg_sampler_check_params(p, n_vocab, err) != QG_OK) return NULL;
    qg_sampler *s = calloc(1, sizeof(*s));
    if (!s) goto nomem;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof(*s->cand));
    s->heap = malloc(QG_SAMPLER_HEAP_MAX * sizeof(*s->heap));
    s->count = calloc((size_t)n_vocab, sizeof(*s->count));
    const size_t n_ring = (size_t)QG_MAX(p->penalty_last_n, 1);
    s->ring = malloc(n_ring * sizeof(*s->ring));
    s->pen_id = malloc(n_ring * sizeof(*s->pen_id));
    s->pen_logit = malloc(n_ring * sizeof(*s->pen_logit));
    if (!s->cand || !s->heap || !s->count || !s->ring || !s->pen_id || !s->pen_logit)
        goto nomem;
    s->pen_on = p->penalty_last_n > 0 &&
                (p->penalty_repeat != 1.0f || p->penalty_freq != 0.0f ||
                 p->penalty_present != 0.0f);
    qg_sampler_seed_rng(s);
    return s;
nomem:
    qg_sampler_free(s);
    qg_error_set(err, QG_ERR_NOMEM, "sampler: out of memory for n_vocab = %d",
                 (int)n_vocab);
    return NULL;
}

void qg_sampler_free(qg_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->heap);
    free(s->count);
    free(s->ring);
    free(s->pen_id);
    free(s->pen_logit);
    free(s);
}

void qg_sampler_reset(qg_sampler *s) {
    memset(s->count, 0, (size_t)s->n_vocab * sizeof(*s->count));
    s->ring_len = 0;
    s->ring_head = 0;
    s->n_cand = 0;
    qg_sampler_seed_rng(s);
}

void qg_sampler_accept(qg_sampler *s, int32_t tok) {
    QG_ASSERT(tok >= 0 && tok < s->n_vocab);
    const int32_t cap = s->p.penalty_last_n;
    if (cap == 0) return;
    if (s->ring_len == cap) { /* full: drop the oldest */
        s->count[s->ring[s->ring_head]]--;
        s->ring[s->ring_head] = tok;
        s->ring_head = (s->ring_head + 1) % cap;
    } else {
        s->ring[(s->ring_head + s->ring_len) % cap] = tok;
        s->ring_len++;
    }
    s->count[tok]++;
}

int32_t qg_sampler_candidates(const qg_sampler *s,
                              const qg_sampler_cand **cands) {
    *cands = s->cand;
    return s->n_cand;
}

/* ---- ordering and selection ---------------------------------------------- */

/* True when a comes before b: higher logit first, then lower id. */
static inline bool qg_sampler_before(const qg_sampler_cand *a,
                                     const qg_sampler_cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

/* max(a, b) for non-NaN values (fmaxf may be a library call). */
static inline float qg_sampler_maxf(float a, float b) { return a > b ? a : b; }

static inline void qg_sampler_swap(qg_sampler_cand *a, qg_sampler_cand *b) {
    qg_sampler_cand t = *a;
    *a = *b;
    *b = t;
}

/* Sorts a[lo .. hi) into candidate order. */
static void qg_sampler_insertion_sort(qg_sampler_cand *a, int32_t lo,
                                      int32_t hi) {
    for (int32_t i = lo + 1; i < hi; i++) {
        qg_sampler_cand x = a[i];
        int32_t j = i;
        while (j > lo && qg_sampler_before(&x, &a[j - 1])) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = x;
    }
}

/* Partitions a[lo .. hi) (hi - lo >= 3) around a median-of-three pivot and
 * returns its final index m: a[lo .. m) come before a[m], a(m .. hi) after
 * it.  The order is total (ids break ties), so no range degenerates from
 * equal keys. */
static int32_t qg_sampler_partition(qg_sampler_cand *a, int32_t lo,
                                    int32_t hi) {
    const int32_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (qg_sampler_before(&a[mid], &a[lo])) qg_sampler_swap(&a[mid], &a[lo]);
    if (qg_sampler_before(&a[last], &a[lo])) qg_sampler_swap(&a[last], &a[lo]);
    if (qg_sampler_before(&a[last], &a[mid])) qg_sampler_swap(&a[last], &a[mid]);
    /* now a[lo] <= a[mid] <= a[last] in candidate order: pivot = a[mid] */
    qg_sampler_swap(&a[mid], &a[last]);
    const qg_sampler_cand pivot = a[last];
    int32_t store = lo;
    for (int32_t i = lo; i < last; i++) {
        if (qg_sampler_before(&a[i], &pivot)) qg_sampler_swap(&a[i], &a[store++]);
    }
    qg_sampler_swap(&a[store], &a[last]);
    return store;
}

/* Rearranges a[0 .. n) so that a[0 .. k) hold the first k candidates in
 * candidate order (in no particular order among themselves); 0 < k < n. */
static void qg_sampler_select_count(qg_sampler_cand *a, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n;
    while (hi - lo > QG_SAMPLER_SMALL) {
        const int32_t m = qg_sampler_partition(a, lo, hi);
        if (m == k - 1 || m == k) return;
        if (m < k) lo = m + 1;
        else hi = m;
    }
    qg_sampler_insertion_sort(a, lo, hi);
}

/* Restores the heap property (root = the candidate that comes last) below
 * index i of h[0 .. n). */
static void qg_sampler_heap_down(qg_sampler_cand *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t w = i;
        const int32_t l = 2 * i + 1, r = l + 1;
        if (l < n && qg_sampler_before(&h[w], &h[l])) w = l;
        if (r < n && qg_sampler_before(&h[w], &h[r])) w = r;
        if (w == i) return;
        qg_sampler_swap(&h[i], &h[w]);
        i = w;
    }
}

/* Returns the length m >= 1 of the shortest prefix, in candidate order, of
 * a[0 .. n) whose weights (field p) sum to >= target, and rearranges a so
 * that this prefix is a[0 .. m).  n if no prefix reaches target.  Expected
 * linear time (quickselect on mass; sums in float64). */
static int32_t qg_sampler_select_mass(qg_sampler_cand *a, int32_t n,
                                      double target) {
    int32_t lo = 0, hi = n;
    double acc = 0.0; /* weight of a[0 .. lo), all inside the prefix */
    while (hi - lo > QG_SAMPLER_SMALL) {
        const int32_t m = qg_sampler_partition(a, lo, hi);
        double up = 0.0;
        for (int32_t i = lo; i < m; i++) up += a[i].p;
        if (acc + up >= target) { /* the prefix ends inside a[lo .. m) */
            hi = m;
            continue;
        }
        acc += up + a[m].p;
        if (acc >= target) return m + 1;
        lo = m + 1;
    }
    qg_sampler_insertion_sort(a, lo, hi);
    for (int32_t i = lo; i < hi; i++) {
        acc += a[i].p;
        if (acc >= target) return i + 1;
    }
    return QG_MAX(hi, 1);
}

/* ---- the stages ----------------------------------------------------------- */

/* Fills s->pen_id / s->pen_logit with each distinct history token and its
 * penalized logit (formula in qg_sampler.h); n_pen = 0 when penalties are
 * off.  While this runs, count[t] is negated to mark t as done. */
static void qg_sampler_penalize(qg_sampler *s, const float *logits) {
    s->n_pen = 0;
    if (!s->pen_on) return;
    const qg_sampler_params *p = &s->p;
    const int32_t cap = p->penalty_last_n;
    for (int32_t j = 0; j < s->ring_len; j++) {
        const int32_t t = s->ring[(s->ring_head + j) % cap];
        const int32_t cnt = s->count[t];
        if (cnt <= 0) continue;
        float l = logits[t];
        l = l <= 0.0f ? l * p->penalty_repeat : l / p->penalty_repeat;
        l -= (float)cnt * p->penalty_freq + p->penalty_present;
        s->pen_id[s->n_pen] = t;
        s->pen_logit[s->n_pen] = l;
        s->n_pen++;
        s->count[t] = -cnt;
    }
    for (int32_t j = 0; j < s->n_pen; j++) s->count[s->pen_id[j]] *= -1;
}

/* True when token i is among this draw's penalized tokens. */
static inline bool qg_sampler_is_penalized(const qg_sampler *s, int32_t i) {
    return s->pen_on && s->count[i] != 0;
}

/* Aborts on a NaN or +inf logit (bad != 0) or when no token is possible. */
static void qg_sampler_check_logits(bool bad, float best) {
    if (bad) QG_ABORT("sampler: NaN or +inf logit");
    if (!(best > -INFINITY)) QG_ABORT("sampler: every logit is -inf");
}

/* Greedy: the highest penalized logit, lowest id on ties; one pass over
 * logits, the penalized tokens looked up only when they would win. */
static qg_sampler_cand qg_sampler_argmax(const qg_sampler *s,
                                         const float *logits) {
    qg_sampler_cand best = {.id = -1, .logit = -INFINITY, .p = 1.0f};
    bool bad = false;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        const float v = logits[i];
        bad |= !(v < INFINITY);
        if ((v > best.logit || best.id < 0) && !qg_sampler_is_penalized(s, i)) {
            best.id = i;
            best.logit = v;
        }
    }
    for (int32_t j = 0; j < s->n_pen; j++) {
        const qg_sampler_cand c = {s->pen_id[j], s->pen_logit[j], 1.0f};
        if (best.id < 0 || qg_sampler_before(&c, &best)) best = c;
    }
    qg_sampler_check_logits(bad, best.logit);
    return best;
}

/* Loads every token into cand[0 .. n_vocab) with its penalized logit. */
static void qg_sampler_load(qg_sampler *s, const float *logits) {
    qg_sampler_cand *c = s->cand; /* (n_vocab) */
    bool bad = false;
    float best = -INFINITY;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        const float v = logits[i];
        bad |= !(v < INFINITY);
        c[i].id = i;
        c[i].logit = v;
        c[i].p = 0.0f;
    }
    for (int32_t j = 0; j < s->n_pen; j++) c[s->pen_id[j]].logit = s->pen_logit[j];
    for (int32_t i = 0; i < s->n_vocab; i++) best = qg_sampler_maxf(best, c[i].logit);
    qg_sampler_check_logits(bad, best);
    s->n_cand = s->n_vocab;
}

/* Puts c into the bounded heap h (k entries, root = the one that comes
 * last) when c comes before the root. */
static inline void qg_sampler_heap_offer(qg_sampler_cand *h, int32_t k,
                                         const qg_sampler_cand *c) {
    if (qg_sampler_before(c, &h[0])) {
        h[0] = *c;
        qg_sampler_heap_down(h, k, 0);
    }
}

/* Top-k straight from the logits by a bounded heap (0 < k <=
 * QG_SAMPLER_HEAP_MAX, k < n_vocab): cand[0 .. k) = the first k tokens.
 * The heap starts full of sentinels that come after every token. */
static void qg_sampler_top_k_heap(qg_sampler *s, const float *logits,
                                  int32_t k) {
    qg_sampler_cand *h = s->heap; /* (k) */
    for (int32_t j = 0; j < k; j++)
        h[j] = (qg_sampler_cand){.id = INT32_MAX, .logit = -INFINITY, .p = 0.0f};
    bool bad = false;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        const float v = logits[i];
        bad |= !(v < INFINITY);
        if (v >= h[0].logit && !qg_sampler_is_penalized(s, i)) {
            const qg_sampler_cand c = {i, v, 0.0f};
            qg_sampler_heap_offer(h, k, &c);
        }
    }
    for (int32_t j = 0; j < s->n_pen; j++) {
        const qg_sampler_cand c = {s->pen_id[j], s->pen_logit[j], 0.0f};
        qg_sampler_heap_offer(h, k, &c);
    }
    float best = -INFINITY;
    for (int32_t j = 0; j < k; j++) best = qg_sampler_maxf(best, h[j].logit);
    qg_sampler_check_logits(bad, best);
    memcpy(s->cand, h, (size_t)k * sizeof(*h));
    s->n_cand = k;
}

/* The top-p bucket of a logit d = max_logit - logit below the maximum
 * (d >= 0, +inf for banned tokens); non-decreasing in d. */
static inline int32_t qg_sampler_bucket(float d) {
    const float top = (float)(QG_SAMPLER_NBUCKET - 1) / QG_SAMPLER_BUCKET_SCALE;
    return d < top ? (int32_t)(d * QG_SAMPLER_BUCKET_SCALE) : QG_SAMPLER_NBUCKET - 1;
}

/* Moves the candidates of c[0 .. n) in buckets < B to the front, followed
 * by those in bucket B (relative to max_l); drops the rest.  Returns the
 * number in buckets < B.  Mostly-predictable branches: one compaction
 * pass, then a three-way partition of the (usually few) survivors. */
static int32_t qg_sampler_gather(qg_sampler_cand *c, int32_t n, float max_l,
                                 int32_t B) {
    int32_t w = 0;
    for (int32_t i = 0; i < n; i++)
        if (qg_sampler_bucket(max_l - c[i].logit) <= B) c[w++] = c[i];
    int32_t lo = 0, mid = 0, hi = w;
    while (mid < hi) {
        const int32_t b = qg_sampler_bucket(max_l - c[mid].logit);
        if (b < B) qg_sampler_swap(&c[lo++], &c[mid++]);
        else if (b == B) mid++;
        else qg_sampler_swap(&c[mid], &c[--hi]);
    }
    return lo;
}

/* Top-p over cand[0 .. n_cand): softmax of the logits, then the shortest
 * most-probable prefix with cumulative probability >= top_p.
 * One pass computes the weights and their mass per bucket of distance
 * below the maximum (bucket order agrees with candidate order); the
 * buckets before the one where the mass crosses top_p are kept whole, and
 * only the crossing bucket is searched token by token. */
static void qg_sampler_top_p(qg_sampler *s) {
    qg_sampler_cand *c = s->cand; /* (n_cand) */
    const int32_t n = s->n_cand;
    float max_l = -INFINITY;
    for (int32_t i = 0; i < n; i++) max_l = qg_sampler_maxf(max_l, c[i].logit);
    memset(s->bucket_mass, 0, sizeof(s->bucket_mass));
    memset(s->bucket_count, 0, sizeof(s->bucket_count));
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        const float d = max_l - c[i].logit; /* >= 0, +inf for banned */
        const float w = expf(-d);
        const int32_t b = qg_sampler_bucket(d);
        c[i].p = w;
        s->bucket_mass[b] += w;
        s->bucket_count[b]++;
    }
    for (int32_t b = 0; b < QG_SAMPLER_NBUCKET; b++) sum += s->bucket_mass[b];
    const double target = (double)s->p.top_p * sum;
    /* the crossing bucket B and the mass of the buckets before it */
    double acc = 0.0;
    int32_t B = -1, last = 0, n_keep = 0;
    for (int32_t b = 0; b < QG_SAMPLER_NBUCKET; b++) {
        if (s->bucket_count[b] == 0) continue;
        last = b;
        if (acc + s->bucket_mass[b] >= target) {
            B = b;
            break;
        }
        acc += s->bucket_mass[b];
        n_keep += s->bucket_count[b];
    }
    if (B < 0) { /* rounding: the whole mass fell short of target */
        B = last;
        acc -= s->bucket_mass[B];
        n_keep -= s->bucket_count[B];
    }
    const int32_t n_before = qg_sampler_gather(c, n, max_l, B);
    QG_ASSERT(n_before == n_keep);
    const int32_t m = qg_sampler_select_mass(c + n_before, s->bucket_count[B], target - acc);
    s->n_cand = n_before + m;
}

/* Top-k for large k (0 < k < n_cand) by a histogram of bucket counts: the
 * buckets before the one where the count reaches k are kept whole, and k
 * is completed by selection inside that bucket. */
static void qg_sampler_top_k_hist(qg_sampler *s, int32_t k) {
    qg_sampler_cand *c = s->cand; /* (n_cand) */
    const int32_t n = s->n_cand;
    float max_l = -INFINITY;
    for (int32_t i = 0; i < n; i++) max_l = qg_sampler_maxf(max_l, c[i].logit);
    memset(s->bucket_count, 0, sizeof(s->bucket_count));
    for (int32_t i = 0; i < n; i++) s->bucket_count[qg_sampler_bucket(max_l - c[i].logit)]++;
    int32_t B = 0, n_keep = 0;
    while (n_keep + s->bucket_count[B] < k) n_keep += s->bucket_count[B++];
    const int32_t n_before = qg_sampler_gather(c, n, max_l, B);
    QG_ASSERT(n_before == n_keep);
    qg_sampler_select_count(c + n_before, s->bucket_count[B], k - n_before);
    s->n_cand = k;
}

/* Min-p over cand[0 .. n_cand): keep logit >= max + logf(min_p); the best
 * candidate always stays. */
static void qg_sampler_min_p(qg_sampler *s) {
    qg_sampler_cand *c = s->cand;
    int32_t best = 0;
    for (int32_t i = 1; i < s->n_cand; i++)
        if (qg_sampler_before(&c[i], &c[best])) best = i;
    const float min_logit = c[best].logit + logf(s->p.min_p);
    int32_t n = 0;
    for (int32_t i = 0; i < s->n_cand; i++)
        if (i == best || c[i].logit >= min_logit) c[n++] = c[i];
    s->n_cand = n;
}

/* Temperature, softmax and one draw over cand[0 .. n_cand). */
static int32_t qg_sampler_draw(qg_sampler *s) {
    qg_sampler_cand *c = s->cand;
    const int32_t n = s->n_cand;
    const float temp = s->p.temp;
    float max_l = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        c[i].logit /= temp;
        max_l = qg_sampler_maxf(max_l, c[i].logit);
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        c[i].p = expf(c[i].logit - max_l);
        sum += c[i].p;
    }
    const double target = qg_sampler_next_unit(s) * sum;
    double cum = 0.0;
    int32_t pick = -1, last_nonzero = 0;
    for (int32_t i = 0; i < n; i++) {
        const double w = c[i].p;
        if (w > 0.0) last_nonzero = i;
        cum += w;
        if (pick < 0 && cum > target) pick = i;
        c[i].p = (float)(w / sum);
    }
    if (pick < 0) pick = last_nonzero; /* rounding in the running sum */
    return c[pick].id;
}

int32_t qg_sampler_sample(qg_sampler *s, const float *logits) {
    const qg_sampler_params *p = &s->p;
    qg_sampler_penalize(s, logits);
    if (!(p->temp > 0.0f)) {
        s->cand[0] = qg_sampler_argmax(s, logits);
        s->n_cand = 1;
        return s->cand[0].id;
    }
    if (p->top_k > 0 && p->top_k <= QG_SAMPLER_HEAP_MAX && p->top_k < s->n_vocab) {
        qg_sampler_top_k_heap(s, logits, p->top_k);
    } else {
        qg_sampler_load(s, logits);
        if (p->top_k > 0 && p->top_k < s->n_cand) qg_sampler_top_k_hist(s, p->top_k);
    }
    if (p->top_p < 1.0f) qg_sampler_top_p(s);
    if (p->min_p > 0.0f) qg_sampler_min_p(s);
    return qg_sampler_draw(s);
}
