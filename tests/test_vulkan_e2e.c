/* test_vulkan_e2e.c - end-to-end logits of the Vulkan executor against the
 * float64 reference and against llama.cpp, on synthetic Qwen3-MoE and
 * Qwen3 files (lavapipe in CI; any Vulkan device).
 *
 * For each (preset, ftype) file and a fresh random token sequence:
 *   vulkan = qg_ctx_decode with --backend vulkan, teacher-forced logits
 *            (prefill graph, chunks of 8 so the KV cache carries across
 *            chunks), and the same sequence one token at a time through
 *            the decode graph;
 *   cpu    = the same with the CPU executor;
 *   ref    = tests/ref/qg_ref_model (float64 throughout);
 *   llama  = llama.cpp (prebuilt libllama from npm), F16 KV like ours.
 * Checks, per file:
 *   - every logit finite (the output is poisoned with NaN first);
 *   - rel_rms(vulkan, ref) <= rel_rms(llama, ref) * 1.05 + 2e-6: at least
 *     as close as llama.cpp (slack only for rounding-order noise when both
 *     are at f32 precision, as on F32 files);
 *   - F32 files: per-position cosine(vulkan, ref) >= 0.9999;
 *   - the decode-graph path (matvec shaders) agrees with the prefill path
 *     (tiled products), and vulkan with the CPU executor: rel_rms < 3e-4
 *     each (the same f32 numerics in other summation orders; the F16 KV
 *     cache turns last-bit differences of k, v into occasional f16
 *     rounding flips of 2^-11 relative, which dominate); 1.5e-3 with
 *     QG_VK_CM (f16 prefill products; ctest's test_vulkan_e2e_cm runs this
 *     program so, emulated on lavapipe).
 * Further cases: mixed placement (experts of layer 0 on the CPU, so
 * tensors cross executors every layer), the unfused MoE chain, and one run
 * through the executor interface with the Khronos validation layer
 * (synchronization validation included) that requires zero messages and
 * checks the per-node timestamps of a profiled step, and the decode folds
 * (test_decode_folds: norms and residual adds riding in the neighbouring
 * products give the same bytes as their own dispatches, and save the
 * dispatches and barriers they should), also with the fast decode
 * products (fast_mv, QG_VK_MV=1) on both sides.
 * The oracle is required unless QG_ALLOW_NO_ORACLE=1; a Vulkan device is
 * required unless QG_ALLOW_NO_VULKAN=1; without a Vulkan build the test
 * skips and says why.  Files, references, logits and the per-file bound are
 * the shared harness of tests/ref/qg_e2e.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef QG_HAVE_VULKAN

#include "../exec/vulkan/qg_vulkan.h"
#include "../include/qmoe_graph.h"
#include "qg_e2e.h"

#define N_TOK QG_E2E_N_TOK
#define N_CTX 64

static char g_dir[256];
static bool g_have;
static char g_why[600];

static void need_vulkan(void) {
    if (g_have) return;
    const char *allow = getenv("QG_ALLOW_NO_VULKAN");
    if (allow && !strcmp(allow, "1")) {
        printf("SKIP: Vulkan unavailable: %s (QG_ALLOW_NO_VULKAN=1)\n", g_why);
        skip();
    }
    fail_msg("Vulkan unavailable: %s (set QG_ALLOW_NO_VULKAN=1 to skip)", g_why);
}

/* The bound on decode graph against prefill, and on Vulkan against the
 * CPU executor: rel_rms < 3e-4 with f32 products everywhere.  With
 * QG_VK_CM (the prefill products of quantized and F16 / BF16 weights on
 * cooperative matrices, their inputs rounded to f16: about 2^-12 relative
 * per product against the exact path's f32 rounding) prefill moves by up
 * to ~9e-4 on these models, so 1.5e-3; the bound against the reference
 * (llama.cpp's error) is the same either way. */
static double consistency_bound(void) {
    const char *cm = getenv("QG_VK_CM");
    return cm && *cm && strcmp(cm, "0") != 0 ? 1.5e-3 : 3e-4;
}

/* One file: the per-file bound on the prefill logits; decode graph against
 * prefill and Vulkan against the CPU executor: rel_rms below
 * consistency_bound() each. */
static void check_file(const char *preset, const char *ftype, uint64_t seed) {
    const double bound = consistency_bound();
    qg_e2e_file f;
    qg_e2e_file_load(&f, g_dir, preset, ftype, 7, seed, true);
    const qg_e2e_run vk = qg_e2e_run_default("vulkan"), cpu = qg_e2e_run_default("cpu");
    float *ours = qg_e2e_logits_prefill(f.m, &vk, f.tok, N_TOK);
    qg_e2e_expect_vs_ref(&f, "vulkan", ours);
    float *step = qg_e2e_logits_stepwise(f.m, &vk, f.tok, N_TOK);
    const double e_step = qg_e2e_rel_rms_f32(step, ours, f.V * N_TOK);
    float *c = qg_e2e_logits_prefill(f.m, &cpu, f.tok, N_TOK);
    const double e_cpu = qg_e2e_rel_rms_f32(ours, c, f.V * N_TOK);
    printf("  %-12s %-7s decode-vs-prefill %.1e  vulkan-vs-cpu %.1e\n", preset, ftype, e_step,
           e_cpu);
    if (!(e_step < bound))
        fail_msg("%s %s: the decode graph differs from prefill: %.3e", preset, ftype, e_step);
    if (!(e_cpu < bound)) fail_msg("%s %s: vulkan differs from the CPU: %.3e", preset, ftype, e_cpu);
    free(c);
    free(step);
    free(ours);
    qg_e2e_file_free(&f);
}

static void test_tiny_moe(void **state) {
    (void)state;
    need_vulkan();
    for (size_t i = 0; i < QG_ARRAY_LEN(QG_E2E_FTYPES); i++)
        check_file("tiny", QG_E2E_FTYPES[i], 100 + i);
}

static void test_tiny_dense(void **state) {
    (void)state;
    need_vulkan();
    for (size_t i = 0; i < QG_ARRAY_LEN(QG_E2E_FTYPES); i++)
        check_file("tiny-dense", QG_E2E_FTYPES[i], 200 + i);
}

static void test_small(void **state) {
    (void)state;
    need_vulkan();
    for (size_t i = 0; i < QG_ARRAY_LEN(QG_E2E_FTYPES); i++)
        check_file("small", QG_E2E_FTYPES[i], 300 + i);
}

/* Experts of layer 0 on the CPU (copies both ways every step), and the
 * unfused MoE chain on Vulkan. */
static void test_mixed_and_unfused(void **state) {
    (void)state;
    need_vulkan();
    qg_e2e_file f;
    qg_e2e_file_load(&f, g_dir, "tiny", "q4_k_m", 7, 400, true);
    qg_e2e_run mixed = qg_e2e_run_default("vulkan"), unfused = mixed;
    mixed.n_cpu_moe = 1;
    unfused.no_fuse = true;
    float *a = qg_e2e_logits_prefill(f.m, &mixed, f.tok, N_TOK);
    qg_e2e_expect_vs_ref(&f, "vulkan+cpu", a);
    float *b = qg_e2e_logits_prefill(f.m, &unfused, f.tok, N_TOK);
    qg_e2e_expect_vs_ref(&f, "vulkan unfused", b);
    free(a);
    free(b);
    qg_e2e_file_free(&f);
}

/* Through the executor interface (as the runtime does it), with the
 * validation layer and synchronization validation on: the decode graph of
 * tiny q4_k_m, fed the sequence one token at a time with the first
 * step profiled, then the prefill graph over its start.  Zero validation
 * messages; logits as close to the reference as llama.cpp's; one
 * timestamped event per node, in order. */
static void test_validation(void **state) {
    (void)state;
    need_vulkan();
    qg_e2e_file f;
    qg_e2e_file_load(&f, g_dir, "tiny", "q4_k_m", 7, 500, true);
    qg_error err = {0};
    qg_exec ex[2];
    const qg_exec_opts eo = {.n_threads = 2, .device = -1};
#if defined(__SANITIZE_ADDRESS__)
    /* the layer's synchronization validation leaks inside the layer (which
     * is unloaded at exit, so LeakSanitizer cannot be told which module) */
    const qg_vk_opts vo = {.validation = true, .sync_validation = false};
    printf("  (synchronization validation off under AddressSanitizer)\n");
#else
    const qg_vk_opts vo = {.validation = true, .sync_validation = true};
#endif
    if (qg_exec_vulkan_new_ex(&eo, &vo, &ex[0], &err)) fail_msg("vulkan: %s", err.msg);
    if (qg_exec_cpu_new(&eo, &ex[1], &err)) fail_msg("cpu: %s", err.msg);
    qg_build_opts bo = {.phase = QG_PHASE_DECODE, .n_tok_max = 1, .n_ctx = N_CTX,
                        .kv_type = QG_F16};
    qg_graph *g = qg_model_build_graph(f.m, &bo, &err);
    if (!g) fail_msg("build: %s", err.msg);
    qg_place_opts po = {.n_exec = 2, .execs = ex, .cpu_index = 1};
    if (qg_graph_schedule(g, true, &po, &err)) fail_msg("schedule: %s", err.msg);
    assert_int_equal(g->n_parts, 1); /* everything on Vulkan */
    assert_int_equal(g->parts[0].exec, 0);
    const qg_exec *e = &ex[0];
    if (e->i->kv_alloc(e->self, g->kv_bytes[0], &err)) fail_msg("kv: %s", err.msg);
    if (e->i->compile(e->self, g, 0, &err)) fail_msg("compile: %s", err.msg);
    qg_profile *prof = qg_profile_new(4096);
    assert_non_null(prof);
    float *ours = malloc(sizeof(float) * f.V * N_TOK);
    assert_non_null(ours);
    for (int t = 0; t < N_TOK; t++) {
        const int32_t step[QG_STEP_N] = {1, t + 1, 0, 0}, pos = t;
        if (e->i->tensor_set(e->self, g, g->t_tokens, &f.tok[t], 0, 4, &err) ||
            e->i->tensor_set(e->self, g, g->t_pos, &pos, 0, 4, &err) ||
            e->i->tensor_set(e->self, g, g->t_step, step, 0, sizeof step, &err))
            fail_msg("inputs: %s", err.msg);
        for (size_t i = 0; i < f.V; i++) ours[(size_t)t * f.V + i] = NAN;
        if (e->i->run(e->self, g, 0, step, t == 0 ? prof : NULL, &err))
            fail_msg("run: %s", err.msg);
        if (e->i->sync(e->self, &err) ||
            e->i->tensor_get(e->self, g, g->t_logits, ours + (size_t)t * f.V, 0,
                             sizeof(float) * f.V, &err))
            fail_msg("logits: %s", err.msg);
    }
    for (size_t i = 0; i < f.V * N_TOK; i++)
        if (!isfinite(ours[i])) fail_msg("logit %zu is not finite", i);
    qg_e2e_expect_vs_ref(&f, "vulkan validated", ours);
    /* profiled step: one event per node, in node order, non-negative and
     * contiguous spans on one clock */
    assert_int_equal(prof->n, (size_t)g->n_nodes);
    for (size_t i = 0; i < prof->n; i++) {
        const qg_profile_event *ev = &prof->ev[i];
        assert_int_equal(ev->node, (int)i);
        assert_true(ev->t1_ns >= ev->t0_ns);
        if (i) assert_int_equal(ev->t0_ns, prof->ev[i - 1].t1_ns);
    }
    printf("  profiled decode step: %.1f us over %zu nodes\n",
           (prof->ev[prof->n - 1].t1_ns - prof->ev[0].t0_ns) / 1e3, prof->n);
    e->i->release(e->self, g);
    qg_graph_free(g);

    /* the prefill graph (8 tokens, all logits; the MoE grouped by expert
     * with device-written indirect dispatches) over the first 12 tokens in
     * chunks of 8 and 4, on the same KV cache: as the decode path
     * (rel_rms < 1e-4, the e2e bound for decode vs prefill) */
    const int NP = 12;
    bo = (qg_build_opts){.phase = QG_PHASE_PREFILL, .n_tok_max = 8, .n_ctx = N_CTX,
                         .kv_type = QG_F16, .logits_all = true};
    if (!(g = qg_model_build_graph(f.m, &bo, &err))) fail_msg("build: %s", err.msg);
    if (qg_graph_schedule(g, true, &po, &err)) fail_msg("schedule: %s", err.msg);
    assert_int_equal(g->n_parts, 1);
    if (e->i->compile(e->self, g, 0, &err)) fail_msg("compile: %s", err.msg);
    float *pre = malloc(sizeof(float) * f.V * NP);
    assert_non_null(pre);
    for (size_t i = 0; i < f.V * NP; i++) pre[i] = NAN;
    for (int c0 = 0; c0 < NP; c0 += 8) {
        const int n = QG_MIN(8, NP - c0);
        int32_t pos[8];
        for (int i = 0; i < n; i++) pos[i] = c0 + i;
        const int32_t step[QG_STEP_N] = {n, c0 + n, 0, 0};
        if (e->i->tensor_set(e->self, g, g->t_tokens, &f.tok[c0], 0, 4 * (size_t)n, &err) ||
            e->i->tensor_set(e->self, g, g->t_pos, pos, 0, 4 * (size_t)n, &err) ||
            e->i->tensor_set(e->self, g, g->t_step, step, 0, sizeof step, &err) ||
            e->i->run(e->self, g, 0, step, NULL, &err) || e->i->sync(e->self, &err) ||
            e->i->tensor_get(e->self, g, g->t_logits, pre + (size_t)c0 * f.V, 0,
                             sizeof(float) * f.V * (size_t)n, &err))
            fail_msg("prefill: %s", err.msg);
    }
    for (size_t i = 0; i < f.V * NP; i++)
        if (!isfinite(pre[i])) fail_msg("prefill logit %zu is not finite", i);
    const double e_pre = qg_e2e_rel_rms_f32(pre, ours, f.V * NP);
    printf("  validated prefill vs decode: %.1e\n", e_pre);
    if (!(e_pre < 1e-4)) fail_msg("validated prefill differs from decode: %.3e", e_pre);
    free(pre);
    const size_t msgs = qg_exec_vulkan_messages(e);
    e->i->release(e->self, g);
    if (msgs) fail_msg("%zu validation messages (see stderr)", msgs);
    for (int i = 0; i < 2; i++) ex[i].i->free(ex[i].self);
    qg_profile_free(prof);
    qg_graph_free(g);
    free(ours);
    qg_e2e_file_free(&f);
}

/* Logits (V, n) of f's first n tokens fed one at a time through decode
 * graph g, compiled on executor e (its KV cache allocated and zeroed
 * first); poisoned with NaN before every step. */
static float *decode_steps(const qg_exec *e, qg_graph *g, const qg_e2e_file *f, int n) {
    qg_error err = {0};
    if (e->i->kv_alloc(e->self, g->kv_bytes[0], &err)) fail_msg("kv: %s", err.msg);
    if (e->i->compile(e->self, g, 0, &err)) fail_msg("compile: %s", err.msg);
    float *out = malloc(sizeof(float) * f->V * (size_t)n);
    assert_non_null(out);
    for (int t = 0; t < n; t++) {
        const int32_t step[QG_STEP_N] = {1, t + 1, 0, 0}, pos = t;
        float *row = out + (size_t)t * f->V;
        for (size_t i = 0; i < f->V; i++) row[i] = NAN;
        if (e->i->tensor_set(e->self, g, g->t_tokens, &f->tok[t], 0, 4, &err) ||
            e->i->tensor_set(e->self, g, g->t_pos, &pos, 0, 4, &err) ||
            e->i->tensor_set(e->self, g, g->t_step, step, 0, sizeof step, &err) ||
            e->i->run(e->self, g, 0, step, NULL, &err) || e->i->sync(e->self, &err) ||
            e->i->tensor_get(e->self, g, g->t_logits, row, 0, sizeof(float) * f->V, &err))
            fail_msg("step %d: %s", t, err.msg);
    }
    return out;
}

/* The decode graph of preset/ftype on two Vulkan executors over the same
 * device, decode folds on (validated) and off (QG_VK_FOLD=0), with
 * subgroup or shared-memory reductions: every step's logits byte for byte
 * the same (the folded norms sum in rmsnorm.comp's order, the folded adds
 * are add.comp's), within the per-file bound of the float64 reference,
 * and each fold present: per layer the two norm dispatches (and their
 * barriers) are gone, plus the output norm's; `saved_per_layer` says how
 * many per layer (2 for qwen3moe; 1 for qwen3, whose FFN norm feeds the
 * dense swiglu and keeps its dispatch).  fast_mv: both executors with the
 * fast decode products (QG_VK_MV=1), which must hold the same, the folded
 * one also with their loops software-pipelined (QG_VK_MV_PF=1: the same
 * sums in the same order, so the same bytes too). */
static void fold_case(const char *preset, const char *ftype, uint64_t seed, bool no_subgroup,
                      int saved_per_layer, bool fast_mv) {
    qg_e2e_file f;
    qg_e2e_file_load(&f, g_dir, preset, ftype, 7, seed, true);
    qg_error err = {0};
    const qg_exec_opts eo = {.n_threads = 2, .device = -1};
    const qg_vk_opts vo[2] = {{.validation = true, .no_subgroup = no_subgroup, .fast_mv = fast_mv,
                               .mv_pf = fast_mv},
                              {.no_subgroup = no_subgroup, .no_fold = true, .fast_mv = fast_mv}};
    qg_exec ex[3]; /* folds on, folds off, cpu */
    for (int i = 0; i < 2; i++)
        if (qg_exec_vulkan_new_ex(&eo, &vo[i], &ex[i], &err)) fail_msg("vulkan: %s", err.msg);
    if (qg_exec_cpu_new(&eo, &ex[2], &err)) fail_msg("cpu: %s", err.msg);
    const qg_build_opts bo = {.phase = QG_PHASE_DECODE, .n_tok_max = 1, .n_ctx = N_CTX,
                              .kv_type = QG_F16};
    qg_graph *g = qg_model_build_graph(f.m, &bo, &err);
    if (!g) fail_msg("build: %s", err.msg);
    const qg_exec sched[2] = {ex[0], ex[2]};
    qg_place_opts po = {.n_exec = 2, .execs = sched, .cpu_index = 1};
    if (qg_graph_schedule(g, true, &po, &err)) fail_msg("schedule: %s", err.msg);
    assert_int_equal(g->n_parts, 1); /* everything on Vulkan: both compile it as executor 0 */
    float *on = decode_steps(&ex[0], g, &f, N_TOK);
    float *off = decode_steps(&ex[1], g, &f, N_TOK);
    int nb_on = 0, nb_off = 0, n_layer = 0;
    const int nd_on = qg_exec_vulkan_counts(&ex[0], g, &nb_on);
    const int nd_off = qg_exec_vulkan_counts(&ex[1], g, &nb_off);
    for (int i = 0; i < g->n_nodes; i++) n_layer += g->nodes[i].op == QG_OP_QKV;
    printf("  %-10s %-7s %s%s: folds on %d dispatches, %d barriers; off %d, %d\n", preset, ftype,
           no_subgroup ? "shared-memory" : "subgroups", fast_mv ? ", fast_mv" : "", nd_on, nb_on,
           nd_off, nb_off);
    const int saved = saved_per_layer * n_layer + 1; /* + the output norm */
    assert_true(n_layer > 0);
    assert_int_equal(nd_off - nd_on, saved);
    assert_int_equal(nb_off - nb_on, saved);
    for (size_t i = 0; i < f.V * N_TOK; i++)
        if (memcmp(&on[i], &off[i], sizeof(float)))
            fail_msg("%s %s: logit %zu (step %zu) folded %.9g, unfolded %.9g", preset, ftype, i,
                     i / f.V, (double)on[i], (double)off[i]);
    for (size_t i = 0; i < f.V * N_TOK; i++)
        if (!isfinite(on[i])) fail_msg("logit %zu is not finite", i);
    qg_e2e_expect_vs_ref(&f, "vulkan folded", on);
    const size_t msgs = qg_exec_vulkan_messages(&ex[0]);
    for (int i = 0; i < 2; i++) ex[i].i->release(ex[i].self, g);
    if (msgs) fail_msg("%zu validation messages (see stderr)", msgs);
    for (int i = 0; i < 3; i++) ex[i].i->free(ex[i].self);
    qg_graph_free(g);
    free(on);
    free(off);
    qg_e2e_file_free(&f);
}

static void test_decode_folds(void **state) {
    (void)state;
    need_vulkan();
    fold_case("tiny", "q4_k_m", 600, false, 2, false);
    fold_case("tiny", "q4_k_m", 601, true, 2, false);
    fold_case("small", "q8_0", 602, false, 2, false);
    fold_case("small", "f32", 603, true, 2, false);
    fold_case("tiny-dense", "q4_k_m", 604, false, 1, false);
    /* the fast decode products (QG_VK_MV=1) */
    fold_case("tiny", "q4_k_m", 605, false, 2, true);
    fold_case("small", "q8_0", 606, true, 2, true);
    fold_case("small", "q4_k_m", 607, false, 2, true);
    fold_case("tiny-dense", "q4_k_m", 608, false, 1, true);
}

/* No device index past the list; a clear error. */
static void test_bad_device(void **state) {
    (void)state;
    need_vulkan();
    qg_exec e;
    qg_error err = {0};
    const qg_exec_opts eo = {.n_threads = 1, .device = 63};
    const qg_status st = qg_exec_vulkan_new(&eo, &e, &err);
    assert_int_equal(st, QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "--vk-device 63"));
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "%s/qg-vk-e2e-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir)) return -1;
    qg_exec e;
    qg_error err = {0};
    const qg_exec_opts eo = {.n_threads = 1, .device = -1};
    if (qg_exec_vulkan_new(&eo, &e, &err)) {
        snprintf(g_why, sizeof g_why, "%s", err.msg);
    } else {
        g_have = true;
        printf("vulkan device: %s\n", qg_exec_vulkan_device_name(&e));
        e.i->free(e.self);
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_device),
        cmocka_unit_test(test_tiny_moe),
        cmocka_unit_test(test_tiny_dense),
        cmocka_unit_test(test_small),
        cmocka_unit_test(test_mixed_and_unfused),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_decode_folds),
    };
    if (getenv("QG_TEST_FILTER")) cmocka_set_test_filter(getenv("QG_TEST_FILTER")); /* one test */
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
