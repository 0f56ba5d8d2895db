/*
 * test_vulkan_f16.c - the Vulkan executor's numerics that must equal the
 * CPU executor's bit for bit, through the real shaders on the device:
 *
 *   test_kv_append_bits   f32 -> f16 rounding of the KV cache append, both
 *                         paths (attention's kv_append, and rope_kv when
 *                         rope and attention are fused), with adversarial
 *                         values: exact ties at every f16 exponent (normal
 *                         and subnormal), one f32 ulp either side of each,
 *                         2^-25 and its neighbours, the largest finite f16,
 *                         the overflow tie 65520 and its neighbours, Inf,
 *                         NaN, +-0, f32 subnormals, random values.  Every
 *                         cache element written must equal qg_f32_to_f16
 *                         (graph/qg_base.c, the CPU's conversion) of the
 *                         value the shader stored; rows not written must be
 *                         unchanged; o is checked against the float64
 *                         reference over the caches as written.
 *   test_f16_roundtrip    every one of the 65536 f16 bit patterns (NaNs as
 *                         NaN) appended and read back by attention at
 *                         position 0, where o = v exactly: the cache holds
 *                         the pattern, o holds its exact f32 value
 *                         (qg_f16_to_f32: subnormals never flushed).
 *   test_norm_bits        rmsnorm, add+rmsnorm (fused) and rope+attention
 *                         (fused, F16 cache) on inputs whose sums of
 *                         squares are exact in f32 (multiples of 1/8 with
 *                         small numerators): then every output the CPU
 *                         executor computes is determined by correctly
 *                         rounded divisions, square roots and unfused
 *                         products, and the Vulkan outputs must equal the
 *                         CPU executor's bit for bit (q, k after rope, the
 *                         caches); they are also checked against the
 *                         float64 reference (relative 1e-6).
 *
 * Each case runs on two Vulkan executors over the same device: subgroup
 * reductions with the validation layer (zero messages allowed) and the
 * shared-memory shaders.  Outputs are poisoned (0xFF) before every run.
 * Without a Vulkan build this test skips and says why; with one but no
 * device it fails, unless QG_ALLOW_NO_VULKAN=1.
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

#ifdef QG_HAVE_VULKAN

#include "qg_ref_ops.h"

#include "exec/vulkan/qg_vulkan.h"
#include "graph/qg_sched.h"

/* ---- random numbers, bits ---------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_unif(rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_u64(r) >> 40) * (1.0 / 16777216.0));
}

static int rng_int(rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ---- executors ----------------------------------------------------------- */

#define N_VK 2
static qg_exec g_vk[N_VK]; /* [0]: subgroups + validation, [1]: shared memory */
static qg_exec g_cpu;
static bool g_have;
static char g_why[600];

static int setup(void **state) {
    (void)state;
    qg_error err = {0};
    qg_exec_opts eo = {.n_threads = 1, .device = -1};
    if (qg_exec_cpu_new(&eo, &g_cpu, &err)) return -1;
    const qg_vk_opts vo[N_VK] = {{.validation = true}, {.no_subgroup = true}};
    for (int i = 0; i < N_VK; i++)
        if (qg_exec_vulkan_new_ex(&eo, &vo[i], &g_vk[i], &err)) {
            snprintf(g_why, sizeof g_why, "%s", err.msg);
            for (int j = 0; j < i; j++) g_vk[j].i->free(g_vk[j].self);
            return 0;
        }
    g_have = true;
    printf("vulkan device: %s\n", qg_exec_vulkan_device_name(&g_vk[0]));
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (g_have)
        for (int i = 0; i < N_VK; i++) g_vk[i].i->free(g_vk[i].self);
    g_cpu.i->free(g_cpu.self);
    return 0;
}

static void need_vulkan(void) {
    if (g_have) return;
    const char *allow = getenv("QG_ALLOW_NO_VULKAN");
    if (allow && !strcmp(allow, "1")) {
        printf("SKIP: Vulkan unavailable: %s (QG_ALLOW_NO_VULKAN=1)\n", g_why);
        skip();
    }
    fail_msg("Vulkan unavailable: %s (set QG_ALLOW_NO_VULKAN=1 to skip)", g_why);
}

/* ---- a graph with host copies of its tensors ------------------------------ */

#define MAXT 24
#define POISON 0xFF

typedef struct fx {
    qg_graph *g;
    void *host[MAXT];
    int outs[8], n_outs; /* poisoned before each run, read back after */
    bool placed;
} fx;

static void fx_init(fx *f, qg_phase ph, int T, int C) {
    memset(f, 0, sizeof *f);
    f->g = qg_graph_new(ph, T, C);
    assert_non_null(f->g);
    const int64_t n = QG_STEP_N;
    f->g->t_step = qg_graph_add_tensor(f->g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &n, NULL);
    f->host[f->g->t_step] = calloc(1, f->g->tensors[f->g->t_step].nbytes);
}

static void fx_free(fx *f) {
    for (int i = 0; i < f->g->n_tensors && i < MAXT; i++) free(f->host[i]);
    qg_graph_free(f->g);
}

static int fx_tensor(fx *f, const char *name, qg_dtype type, qg_role role, int nd, int64_t e0,
                     int64_t e1) {
    const int64_t ne[2] = {e0, e1};
    const int id = qg_graph_add_tensor(f->g, name, type, role, 0, nd, ne, NULL);
    assert_true(id < MAXT);
    const size_t nb = f->g->tensors[id].nbytes;
    f->host[id] = malloc(nb ? nb : 1);
    assert_non_null(f->host[id]);
    memset(f->host[id], POISON, nb);
    if (role == QG_ROLE_WEIGHT) f->g->tensors[id].data = f->host[id];
    return id;
}

static void fx_out(fx *f, int id) { f->outs[f->n_outs++] = id; }

static float *F32(fx *f, int id) { return f->host[id]; }
static int32_t *I32(fx *f, int id) { return f->host[id]; }
static uint16_t *U16(fx *f, int id) { return f->host[id]; }

/* Schedule f on executor e (alone, or e then the CPU) the first time;
 * compile is redone per call (cheap at these sizes). */
static void fx_place(fx *f, const qg_exec *e) {
    if (f->placed) return;
    const bool cpu = e == &g_cpu;
    const qg_exec execs[2] = {*e, g_cpu};
    qg_place_opts po = {.n_exec = cpu ? 1 : 2, .execs = execs, .cpu_index = cpu ? 0 : 1};
    qg_error err = {0};
    if (qg_graph_schedule(f->g, false, &po, &err)) fail_msg("schedule: %s", err.msg);
    for (int i = 0; i < f->g->n_nodes; i++)
        if (f->g->nodes[i].exec != 0)
            fail_msg("node %s was not placed on executor 0", f->g->nodes[i].name);
    f->placed = true;
}

/* Compile f on e, write every input and KV tensor from the host copies,
 * poison the outputs, run n_tok tokens, read the outputs and KV tensors
 * back into the host copies, release.  Fails on validation messages. */
static void fx_run(fx *f, const qg_exec *e, int n_tok, const char *label) {
    qg_graph *g = f->g;
    qg_error err = {0};
    fx_place(f, e);
    if (g->kv_bytes[0] && e->i->kv_alloc(e->self, g->kv_bytes[0], &err))
        fail_msg("%s: kv_alloc: %s", label, err.msg);
    if (e->i->compile(e->self, g, 0, &err)) fail_msg("%s: compile: %s", label, err.msg);
    const int32_t step[QG_STEP_N] = {n_tok, n_tok, 0, 0};
    memcpy(f->host[g->t_step], step, sizeof step);
    for (int t = 0; t < g->n_tensors; t++) {
        const qg_tensor *ts = &g->tensors[t];
        bool out = false;
        for (int i = 0; i < f->n_outs; i++) out |= f->outs[i] == t;
        if (out) memset(f->host[t], POISON, ts->nbytes);
        else if (ts->role != QG_ROLE_INPUT && ts->role != QG_ROLE_KV) continue;
        if (e->i->tensor_set(e->self, g, t, f->host[t], 0, ts->nbytes, &err))
            fail_msg("%s: tensor_set %s: %s", label, ts->name, err.msg);
    }
    for (int p = 0; p < g->n_parts; p++)
        if (e->i->run(e->self, g, p, step, NULL, &err)) fail_msg("%s: run: %s", label, err.msg);
    if (e->i->sync(e->self, &err)) fail_msg("%s: sync: %s", label, err.msg);
    for (int t = 0; t < g->n_tensors; t++) {
        const qg_tensor *ts = &g->tensors[t];
        bool out = ts->role == QG_ROLE_KV;
        for (int i = 0; i < f->n_outs; i++) out |= f->outs[i] == t;
        if (out && e->i->tensor_get(e->self, g, t, f->host[t], 0, ts->nbytes, &err))
            fail_msg("%s: tensor_get %s: %s", label, ts->name, err.msg);
    }
    e->i->release(e->self, g);
    if (e == &g_vk[0] && qg_exec_vulkan_messages(e))
        fail_msg("%s: %zu validation messages (see stderr)", label, qg_exec_vulkan_messages(e));
}

/* ---- adversarial f32 values for the f16 conversion ---------------------- */

/* The list: for every f16 exponent (subnormal range included) the exact
 * midpoints between consecutive f16 values (even and odd lower
 * neighbours) and one f32 ulp either side, both signs; the special
 * values; then random values of every magnitude.  Returns the count. */
static int adversarial(float *v, int cap, rng *r) {
    int n = 0;
#define PUT(x)                  \
    do {                        \
        if (n < cap) v[n++] = (x); \
    } while (0)
    for (int e = 0; e < 31; e++) /* f16 exponent field; 0 = subnormal */
        for (int k = 0; k < 4; k++) {
            /* a mantissa m (k = 0, 1: the smallest two, then random), the
             * midpoint between h = (e, m) and h + 1 */
            const int m = k < 2 ? k : rng_int(r, 1023);
            const uint16_t h = (uint16_t)((e << 10) | m);
            const double lo = qg_f16_to_f32(h), hi = e == 30 && m == 1023 ? 65536.0
                                                                            : qg_f16_to_f32((uint16_t)(h + 1));
            const float mid = (float)((lo + hi) / 2); /* exact: 12 significant bits */
            const uint32_t b = f_bits(mid);
            for (int s = 0; s < 2; s++) {
                const float sg = s ? -1.0f : 1.0f;
                PUT(sg * mid);
                PUT(sg * bits_f(b + 1));
                PUT(sg * bits_f(b - 1));
                PUT(sg * (float)lo);
            }
        }
    const float special[] = {65504.0f, 65519.0f, bits_f(0x477fefffu), 65520.0f,
                             bits_f(0x477ff001u), 65536.0f, 1e10f, 3.4e38f, INFINITY,
                             -INFINITY, NAN, -NAN, 0.0f, -0.0f,
                             bits_f(0x33000000u) /* 2^-25: ties to 0 */,
                             bits_f(0x33000001u), bits_f(0x32ffffffu),
                             bits_f(0x33c00000u) /* 1.5 2^-24: ties to 2 */,
                             bits_f(0x387fc000u) /* ties up to the smallest normal */,
                             bits_f(0x387fbfffu), bits_f(0x38800000u), bits_f(0x00000001u),
                             bits_f(0x807fffffu), bits_f(0x00800000u), 1.0f, -1.0f,
                             1.00048828125f /* 1 + 2^-11: ties to 1 */, 1.00146484375f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) PUT(special[i]);
    while (n < cap) { /* random magnitudes 2^-30 .. 2^17, random signs */
        const float x = ldexpf(rng_unif(r, 1.0f, 2.0f), rng_int(r, 48) - 30);
        PUT(rng_int(r, 2) ? -x : x);
    }
#undef PUT
    return n;
}

/* f16 bits equal, NaN payloads aside?  (Both conversions give 0x7e00.) */
static void expect_f16(const char *label, const char *what, int row, int64_t i, uint16_t got,
                       float x) {
    const uint16_t want = qg_f32_to_f16(x);
    if (got != want)
        fail_msg("%s: %s cache row %d [%lld]: 0x%04x, CPU conversion of %.9g (0x%08x) is 0x%04x",
                 label, what, row, (long long)i, got, (double)x, f_bits(x), want);
    /* and the CPU conversion itself against float64: nearest, ties even */
    if (isfinite(x) && fabs((double)x) < 65520.0) {
        const double d = fabs((double)qg_f16_to_f32(want) - (double)x);
        const double u = fabs((double)x) < 6.103515625e-05 ? ldexp(1, -24)
                                                           : ldexp(1, ilogb((double)x) - 10);
        if (d > u / 2) fail_msg("%s: qg_f32_to_f16(%.9g) is not nearest", label, (double)x);
    }
}

/* The next value of vals from *j that is finite below 65504 in magnitude
 * (and, when normal_only, not an f32 subnormal: k_norm passes through
 * f32 products, which may flush those). */
static float next_k(const float *vals, int nv, int *j, bool normal_only) {
    for (;;) {
        const float x = vals[(*j)++ % nv];
        if (isfinite(x) && fabsf(x) <= 65504.0f && (!normal_only || x == 0 || fabsf(x) >= 1.2e-38f))
            return x;
    }
}

/* ---- attention: the kv append paths -------------------------------------- */

typedef struct att {
    fx f;
    int q, k, v, kc, vc, pos, o;
    int qn, kn, qr, kr; /* rope path */
    int hd, nh, nkv, C, T;
    bool rope;
} att;

static void att_make(att *a, bool rope, int T, int hd, int nh, int nkv, int C) {
    memset(a, 0, sizeof *a);
    a->rope = rope;
    a->T = T, a->hd = hd, a->nh = nh, a->nkv = nkv, a->C = C;
    fx *f = &a->f;
    fx_init(f, T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, T, C);
    const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
    a->q = fx_tensor(f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T);
    a->k = fx_tensor(f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T);
    a->v = fx_tensor(f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T);
    a->kc = fx_tensor(f, "cache_k", QG_F16, QG_ROLE_KV, 2, Dkv, C);
    a->vc = fx_tensor(f, "cache_v", QG_F16, QG_ROLE_KV, 2, Dkv, C);
    a->pos = fx_tensor(f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1);
    f->g->t_pos = a->pos;
    a->o = fx_tensor(f, "o", QG_F32, QG_ROLE_ACT, 2, Dq, T);
    qg_op_params p = {.eps = 0.0f, .rope_theta = 1e6f, .head_dim = hd, .n_head = nh,
                      .n_head_kv = nkv};
    if (rope) {
        a->qn = fx_tensor(f, "q_norm", QG_F32, QG_ROLE_WEIGHT, 1, hd, 1);
        a->kn = fx_tensor(f, "k_norm", QG_F32, QG_ROLE_WEIGHT, 1, hd, 1);
        a->qr = fx_tensor(f, "q_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T);
        a->kr = fx_tensor(f, "k_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, T);
        qg_graph_add_node(f->g, QG_OP_ROPE, "rope", 0, (int[]){a->q, a->k, a->qn, a->kn, a->pos},
                          5, (int[]){a->qr, a->kr}, 2, &p);
        fx_out(f, a->qr);
        fx_out(f, a->kr);
    }
    qg_graph_add_node(f->g, QG_OP_ATTENTION, "attention", 0,
                      (int[]){rope ? a->qr : a->q, rope ? a->kr : a->k, a->v, a->kc, a->vc, a->pos},
                      6, (int[]){a->o}, 1, &p);
    fx_out(f, a->o);
}

/* The caches after a run: rows pos[t] hold f16(k'), f16(v) of token t
 * (k' = k, or the rotated k read back), bit for bit; other rows equal
 * before (Dkv*C f16 each). */
static void att_check_caches(att *a, int n_tok, const uint16_t *kc0, const uint16_t *vc0,
                             const char *label) {
    fx *f = &a->f;
    const int64_t Dkv = (int64_t)a->hd * a->nkv;
    const float *ks = F32(f, a->rope ? a->kr : a->k), *vs = F32(f, a->v);
    for (int m = 0; m < 2; m++) {
        const uint16_t *now = U16(f, m ? a->vc : a->kc), *before = m ? vc0 : kc0;
        for (int row = 0; row < a->C; row++) {
            int t = -1;
            for (int i = 0; i < n_tok; i++)
                if (I32(f, a->pos)[i] == row) t = i;
            for (int64_t i = 0; i < Dkv; i++) {
                const size_t o = (size_t)row * (size_t)Dkv + (size_t)i;
                if (t < 0) {
                    if (now[o] != before[o]) fail_msg("%s: cache row %d changed", label, row);
                    continue;
                }
                expect_f16(label, m ? "v" : "k", row, i, now[o],
                           (m ? vs : ks)[(size_t)t * (size_t)Dkv + (size_t)i]);
            }
        }
    }
}

/* o against the float64 reference over the caches as written: where the
 * reference is finite, |o - ref| <= 2e-5 (1 + qk_abs) pv_abs + 1e-6 (the
 * bound of test_vulkan_ops: f32 scores and sums, exp within a few ulp);
 * where it is not (Inf or NaN in the caches), o must not be finite. */
static void att_check_o(att *a, int n_tok, const char *label) {
    fx *f = &a->f;
    const int64_t Dkv = (int64_t)a->hd * a->nkv, Dq = (int64_t)a->hd * a->nh;
    const size_t nc = (size_t)(Dkv * a->C);
    double *kd = malloc(sizeof(double) * nc), *vd = malloc(sizeof(double) * nc);
    double *ref = malloc(sizeof(double) * (size_t)(Dq * n_tok));
    double *pva = malloc(sizeof(double) * (size_t)(Dq * n_tok));
    double *qka = malloc(sizeof(double) * (size_t)(a->nh * n_tok));
    assert_true(kd && vd && ref && pva && qka);
    for (size_t i = 0; i < nc; i++) {
        kd[i] = qg_f16_to_f32(U16(f, a->kc)[i]);
        vd[i] = qg_f16_to_f32(U16(f, a->vc)[i]);
    }
    qg_ref_attention(F32(f, a->rope ? a->qr : a->q), kd, vd, I32(f, a->pos), n_tok, a->hd, a->nh,
                     a->nkv, ref, pva, qka);
    const float *o = F32(f, a->o);
    for (int64_t i = 0; i < Dq * n_tok; i++) {
        if (!isfinite(ref[i])) {
            if (isfinite(o[i])) fail_msg("%s: o[%lld] = %g, reference %g", label, (long long)i,
                                         (double)o[i], ref[i]);
            continue;
        }
        const double tol = 2e-5 * (1.0 + qka[i / Dq * a->nh + (i % Dq) / a->hd]) * pva[i] + 1e-6;
        if (!isfinite(o[i]) || fabs(o[i] - ref[i]) > tol)
            fail_msg("%s: o[%lld] = %.9g, reference %.9g, tolerance %.3g", label, (long long)i,
                     (double)o[i], ref[i], tol);
    }
    free(kd);
    free(vd);
    free(ref);
    free(pva);
    free(qka);
}

static void test_kv_append_bits(void **state) {
    (void)state;
    need_vulkan();
    enum { NV = 6000 };
    float *vals = malloc(sizeof(float) * NV);
    assert_non_null(vals);
    rng r = {0x5eed0001u};
    const int nv = adversarial(vals, NV, &r);
    for (int path = 0; path < 2; path++)
        for (int ph = 0; ph < 2; ph++) {
            const int T = ph == 0 ? 1 : 4, hd = 128, nh = 8, nkv = 4, C = 16;
            att a;
            att_make(&a, path == 1, T, hd, nh, nkv, C);
            fx *f = &a.f;
            const int64_t Dkv = (int64_t)hd * nkv, Dq = (int64_t)hd * nh;
            const size_t cn = (size_t)(Dkv * C);
            uint16_t *kc0 = malloc(2 * cn), *vc0 = malloc(2 * cn);
            assert_true(kc0 && vc0);
            /* runs until every value went through k (or k_norm) and v */
            int at = 0;
            for (int run = 0; at < nv; run++) {
                const bool finite_only = run % 2 == 1; /* o meaningful everywhere */
                for (int v = 0; v < N_VK; v++) {
                    char label[160];
                    snprintf(label, sizeof label, "%s %s run %d %s", path ? "rope_kv" : "kv_append",
                             T == 1 ? "decode" : "prefill", run, v ? "shared-memory" : "subgroups");
                    rng rr = {0xabc00000u + (uint64_t)run * 4 + (uint64_t)v};
                    const int n_tok = T == 1 ? 1 : 1 + rng_int(&rr, T);
                    /* positions: distinct random rows (pos 0 first in the
                     * rope path, where k' = k_norm exactly) */
                    const int p0 = path ? 0 : rng_int(&rr, C - n_tok + 1);
                    for (int t = 0; t < T; t++) I32(f, a.pos)[t] = t < n_tok ? p0 + t : -1;
                    for (size_t i = 0; i < cn; i++) {
                        kc0[i] = qg_f32_to_f16(rng_unif(&rr, -1, 1));
                        vc0[i] = qg_f32_to_f16(rng_unif(&rr, -1, 1));
                    }
                    memcpy(f->host[a.kc], kc0, 2 * cn);
                    memcpy(f->host[a.vc], vc0, 2 * cn);
                    int j = at;
#define NEXT() (finite_only ? rng_unif(&rr, -2, 2) : vals[(j++) % nv])
                    /* k (and k_norm): values that stay finite in f16, so
                     * the scores are finite; Inf, NaN and the overflow
                     * ties go through v */
#define NEXT_K() (finite_only ? rng_unif(&rr, -2, 2) : next_k(vals, nv, &j, path == 1))
                    for (int64_t i = 0; i < Dq * T; i++)
                        F32(f, a.q)[i] = i < Dq * n_tok ? rng_unif(&rr, -0.01f, 0.01f) : NAN;
                    for (int64_t i = 0; i < Dkv * T; i++) {
                        const bool live = i < Dkv * n_tok;
                        F32(f, a.v)[i] = live ? NEXT() : NAN;
                        /* rope path: x = 1 everywhere, eps 0, so the norm
                         * is exactly 1 and k' = k_norm at position 0 */
                        F32(f, a.k)[i] = !live ? NAN : path ? 1.0f : NEXT_K();
                    }
                    if (path) {
                        for (int i = 0; i < hd; i++) {
                            F32(f, a.kn)[i] = NEXT_K();
                            F32(f, a.qn)[i] = rng_unif(&rr, -0.01f, 0.01f);
                        }
                    }
#undef NEXT
#undef NEXT_K
                    fx_run(f, &g_vk[v], n_tok, label);
                    if (path) /* the adversarial values reached the cache store */
                        for (int64_t i = 0; i < Dkv; i++)
                            if (F32(f, a.kn)[i % hd] != 0 &&
                                f_bits(F32(f, a.kr)[i]) != f_bits(F32(f, a.kn)[i % hd]))
                                fail_msg("%s: k_rope[%lld] = %.9g, expected k_norm %.9g", label,
                                         (long long)i, (double)F32(f, a.kr)[i],
                                         (double)F32(f, a.kn)[i % hd]);
                    att_check_caches(&a, n_tok, kc0, vc0, label);
                    att_check_o(&a, n_tok, label);
                    if (v == N_VK - 1 && !finite_only) at = j;
                }
            }
            free(kc0);
            free(vc0);
            fx_free(f);
        }
    free(vals);
}

/* Every f16 pattern through append and attention at position 0. */
static void test_f16_roundtrip(void **state) {
    (void)state;
    need_vulkan();
    const int hd = 128, nh = 8, nkv = 8, C = 4, Dkv = hd * nkv;
    att a;
    att_make(&a, false, 1, hd, nh, nkv, C);
    fx *f = &a.f;
    const size_t cn = (size_t)Dkv * (size_t)C;
    uint16_t *kc0 = malloc(2 * cn), *vc0 = malloc(2 * cn);
    assert_true(kc0 && vc0);
    rng r = {0x5eed0002u};
    for (int base = 0; base < 65536; base += Dkv)
        for (int v = 0; v < N_VK; v++) {
            char label[120];
            snprintf(label, sizeof label, "patterns %d.. %s", base, v ? "shared-memory" : "subgroups");
            I32(f, a.pos)[0] = 0;
            for (size_t i = 0; i < cn; i++) kc0[i] = vc0[i] = qg_f32_to_f16(rng_unif(&r, -1, 1));
            memcpy(f->host[a.kc], kc0, 2 * cn);
            memcpy(f->host[a.vc], vc0, 2 * cn);
            for (int i = 0; i < Dkv; i++) {
                F32(f, a.q)[i] = rng_unif(&r, -1, 1);
                F32(f, a.k)[i] = rng_unif(&r, -1, 1);
                F32(f, a.v)[i] = qg_f16_to_f32((uint16_t)(base + i)); /* NaN patterns: NaN */
            }
            fx_run(f, &g_vk[v], 1, label);
            att_check_caches(&a, 1, kc0, vc0, label);
            for (int i = 0; i < Dkv; i++) {
                const uint16_t h = (uint16_t)(base + i);
                const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
                if (!nan && U16(f, a.vc)[i] != h)
                    fail_msg("%s: pattern 0x%04x stored as 0x%04x", label, h, U16(f, a.vc)[i]);
                /* o = 1 * v exactly (softmax over one row); -0 reads +0 */
                const float want = qg_f16_to_f32(U16(f, a.vc)[i]), got = F32(f, a.o)[i];
                if (nan ? !isnan(got) : got != want)
                    fail_msg("%s: pattern 0x%04x read as %.9g (0x%08x), exact value %.9g", label,
                             U16(f, a.vc)[i], (double)got, f_bits(got), (double)want);
            }
        }
    free(kc0);
    free(vc0);
    fx_free(f);
}

/* ---- norms and rope: bit-identical to the CPU executor -------------------- */

/* k/8, |k| <= 40: squares are multiples of 1/64 below 25, so sums of up to
 * 2^16 of them are exact in f32. */
static float eighths(rng *r) { return (float)(rng_int(r, 81) - 40) / 8.0f; }

typedef struct norm_case {
    int kind; /* 0 rmsnorm, 1 add+rmsnorm, 2 rope+attention */
    int T, n;
} norm_case;

/* Build case c into f; returns its output ids in outs (count). */
static void norm_build(fx *f, const norm_case *c, int *ids) {
    fx_init(f, c->T == 1 ? QG_PHASE_DECODE : QG_PHASE_PREFILL, c->T, 16);
    const int T = c->T, n = c->n;
    if (c->kind < 2) {
        qg_op_params p = {.eps = 0};
        ids[0] = fx_tensor(f, "a", QG_F32, QG_ROLE_INPUT, 2, n, T);
        ids[1] = c->kind == 1 ? fx_tensor(f, "b", QG_F32, QG_ROLE_INPUT, 2, n, T) : -1;
        ids[2] = fx_tensor(f, "w", QG_F32, QG_ROLE_WEIGHT, 1, n, 1);
        ids[3] = c->kind == 1 ? fx_tensor(f, "y", QG_F32, QG_ROLE_OUTPUT, 2, n, T) : -1;
        ids[4] = fx_tensor(f, "h", QG_F32, QG_ROLE_OUTPUT, 2, n, T);
        int x = ids[0];
        if (c->kind == 1) {
            qg_graph_add_node(f->g, QG_OP_ADD, "add", 0, (int[]){ids[0], ids[1]}, 2,
                              (int[]){ids[3]}, 1, &p);
            fx_out(f, ids[3]);
            x = ids[3];
        }
        qg_graph_add_node(f->g, QG_OP_RMSNORM, "rmsnorm", 0, (int[]){x, ids[2]}, 2,
                          (int[]){ids[4]}, 1, &p);
        fx_out(f, ids[4]);
        return;
    }
    const int hd = n, nh = 4, nkv = 2, Dq = hd * nh, Dkv = hd * nkv;
    qg_op_params p = {.rope_theta = 1e6f, .head_dim = hd, .n_head = nh, .n_head_kv = nkv};
    ids[0] = fx_tensor(f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, T);
    ids[1] = fx_tensor(f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, T);
    ids[2] = fx_tensor(f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, T);
    ids[3] = fx_tensor(f, "q_norm", QG_F32, QG_ROLE_WEIGHT, 1, hd, 1);
    ids[4] = fx_tensor(f, "k_norm", QG_F32, QG_ROLE_WEIGHT, 1, hd, 1);
    ids[5] = fx_tensor(f, "pos", QG_I32, QG_ROLE_INPUT, 1, T, 1);
    f->g->t_pos = ids[5];
    ids[6] = fx_tensor(f, "q_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T);
    ids[7] = fx_tensor(f, "k_rope", QG_F32, QG_ROLE_OUTPUT, 2, Dkv, T);
    ids[8] = fx_tensor(f, "cache_k", QG_F16, QG_ROLE_KV, 2, Dkv, 16);
    ids[9] = fx_tensor(f, "cache_v", QG_F16, QG_ROLE_KV, 2, Dkv, 16);
    ids[10] = fx_tensor(f, "o", QG_F32, QG_ROLE_OUTPUT, 2, Dq, T);
    qg_graph_add_node(f->g, QG_OP_ROPE, "rope", 0, (int[]){ids[0], ids[1], ids[3], ids[4], ids[5]},
                      5, (int[]){ids[6], ids[7]}, 2, &p);
    qg_graph_add_node(f->g, QG_OP_ATTENTION, "attention", 0,
                      (int[]){ids[6], ids[7], ids[2], ids[8], ids[9], ids[5]}, 6, (int[]){ids[10]},
                      1, &p);
    fx_out(f, ids[6]);
    fx_out(f, ids[7]);
    fx_out(f, ids[10]);
}

static void test_norm_bits(void **state) {
    (void)state;
    need_vulkan();
    const norm_case cases[] = {{0, 1, 2048}, {0, 3, 1000}, {1, 1, 2048}, {1, 4, 96},
                               {2, 1, 128},  {2, 3, 64},   {2, 1, 256}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int v = 0; v < N_VK; v++)
            for (int run = 0; run < 3; run++) {
                const norm_case *c = &cases[ci];
                char label[120];
                snprintf(label, sizeof label, "case %zu (kind %d, T %d, n %d) run %d %s", ci, c->kind,
                         c->T, c->n, run, v ? "shared-memory" : "subgroups");
                rng r = {0x5eed0100u + ci * 64 + (uint64_t)run * 2 + (uint64_t)v};
                fx fg, fc; /* the same graph on the GPU and on the CPU */
                int ig[12], ic[12];
                norm_build(&fg, c, ig);
                norm_build(&fc, c, ic);
                const int n_tok = 1 + rng_int(&r, c->T);
                const float eps = ldexpf(rng_unif(&r, 1, 2), -rng_int(&r, 20));
                for (int i = 0; i < fg.g->n_nodes; i++) fg.g->nodes[i].p.eps = fc.g->nodes[i].p.eps = eps;
                /* inputs: eighths (live tokens), NaN (dead); weights random */
                for (int t = 0; t < fg.g->n_tensors; t++) {
                    const qg_tensor *ts = &fg.g->tensors[t];
                    if (ts->type != QG_F32 || (ts->role != QG_ROLE_INPUT && ts->role != QG_ROLE_WEIGHT))
                        continue;
                    const int64_t ne = qg_tensor_nelem(ts), per = ne / fg.g->n_tok_max;
                    for (int64_t i = 0; i < ne; i++)
                        F32(&fg, t)[i] = ts->role == QG_ROLE_WEIGHT ? rng_unif(&r, -2, 2)
                                         : i < per * n_tok          ? eighths(&r)
                                                                    : NAN;
                }
                if (c->kind == 2) {
                    const int p0 = rng_int(&r, 16 - n_tok + 1);
                    for (int t = 0; t < c->T; t++) I32(&fg, ig[5])[t] = t < n_tok ? p0 + t : -1;
                    for (int m = 8; m <= 9; m++)
                        for (int64_t i = 0; i < qg_tensor_nelem(&fg.g->tensors[ig[m]]); i++)
                            U16(&fg, ig[m])[i] = qg_f32_to_f16(rng_unif(&r, -1, 1));
                }
                for (int t = 0; t < fg.g->n_tensors; t++)
                    memcpy(fc.host[t], fg.host[t], fg.g->tensors[t].nbytes);
                fx_run(&fg, &g_vk[v], n_tok, label);
                fx_run(&fc, &g_cpu, n_tok, label);
                /* bit for bit: norm outputs, rotated q and k, the caches */
                const int cmp[] = {c->kind < 2 ? ig[4] : ig[6], c->kind == 1 ? ig[3] : -1,
                                   c->kind == 2 ? ig[7] : -1, c->kind == 2 ? ig[8] : -1,
                                   c->kind == 2 ? ig[9] : -1};
                for (size_t k = 0; k < 5; k++) {
                    if (cmp[k] < 0) continue;
                    const qg_tensor *ts = &fg.g->tensors[cmp[k]];
                    const size_t es = ts->type == QG_F16 ? 2 : 4;
                    const size_t nb = ts->role == QG_ROLE_KV
                                          ? ts->nbytes
                                          : ts->nbytes / (size_t)c->T * (size_t)n_tok;
                    for (size_t b = 0; b < nb; b += es)
                        if (memcmp((char *)fg.host[cmp[k]] + b, (char *)fc.host[cmp[k]] + b, es))
                            fail_msg("%s: %s element %zu differs from the CPU executor's (%s)",
                                     label, ts->name, b / es,
                                     es == 4 ? "f32" : "f16");
                    for (size_t b = nb; b < ts->nbytes; b++)
                        if (((unsigned char *)fg.host[cmp[k]])[b] != POISON)
                            fail_msg("%s: %s byte %zu past the live tokens was written", label,
                                     ts->name, b);
                }
                /* and against float64 (relative 1e-6 of the row's scale:
                 * a few f32 roundings) */
                if (c->kind < 2) {
                    const int x = c->kind == 1 ? ig[3] : ig[0];
                    double *ref = malloc(sizeof(double) * (size_t)c->n * (size_t)n_tok);
                    assert_non_null(ref);
                    qg_ref_rmsnorm(F32(&fg, x), F32(&fg, ig[2]), c->n, n_tok, eps, ref);
                    for (int64_t i = 0; i < (int64_t)c->n * n_tok; i++) {
                        const double y = F32(&fg, ig[4])[i];
                        if (!isfinite(y) || fabs(y - ref[i]) > 1e-6 * fabs(ref[i]) + 1e-7)
                            fail_msg("%s: h[%lld] = %.9g, reference %.9g", label, (long long)i, y,
                                     ref[i]);
                    }
                    free(ref);
                } else {
                    const int hd = c->n, Dq = hd * 4, Dkv = hd * 2;
                    double *qr = malloc(sizeof(double) * (size_t)(Dq * n_tok));
                    double *kr = malloc(sizeof(double) * (size_t)(Dkv * n_tok));
                    assert_true(qr && kr);
                    qg_ref_rope(F32(&fg, ig[0]), F32(&fg, ig[1]), F32(&fg, ig[3]), F32(&fg, ig[4]),
                                I32(&fg, ig[5]), n_tok, hd, 4, 2, eps, 1e6, qr, kr);
                    /* |ref| <= 2 max|w| sqrt(hd): relative 1e-6 of that */
                    const double tol = 1e-6 * 2 * 2 * sqrt(hd);
                    for (int64_t i = 0; i < Dq * n_tok; i++)
                        if (!isfinite(F32(&fg, ig[6])[i]) || fabs(F32(&fg, ig[6])[i] - qr[i]) > tol)
                            fail_msg("%s: q_rope[%lld] = %.9g, reference %.9g", label,
                                     (long long)i, (double)F32(&fg, ig[6])[i], qr[i]);
                    for (int64_t i = 0; i < Dkv * n_tok; i++)
                        if (!isfinite(F32(&fg, ig[7])[i]) || fabs(F32(&fg, ig[7])[i] - kr[i]) > tol)
                            fail_msg("%s: k_rope[%lld] = %.9g, reference %.9g", label,
                                     (long long)i, (double)F32(&fg, ig[7])[i], kr[i]);
                    for (int64_t i = 0; i < Dq * n_tok; i++)
                        if (!isfinite(F32(&fg, ig[10])[i]))
                            fail_msg("%s: o[%lld] not finite", label, (long long)i);
                    free(qr);
                    free(kr);
                }
                fx_free(&fg);
                fx_free(&fc);
            }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_append_bits),
        cmocka_unit_test(test_f16_roundtrip),
        cmocka_unit_test(test_norm_bits),
    };
    if (getenv("QG_TEST_FILTER")) cmocka_set_test_filter(getenv("QG_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}

#else /* !QG_HAVE_VULKAN */

static void test_no_vulkan(void **state) {
    (void)state;
    printf("SKIP: this build has no Vulkan executor (configure with libvulkan-dev and glslc "
           "installed, QG_VULKAN=ON)\n");
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_vulkan)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif
