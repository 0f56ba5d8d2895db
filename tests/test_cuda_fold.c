/*
 * test_cuda_fold.c - the CUDA executor's rope -> attention fold of decode
 * graphs: the attention kernel normalizes and rotates q and this step's k
 * itself, uses this step's K/V row from shared memory (rounded as the
 * cache stores it) and appends it, and the rope node never runs.
 *
 * The fold must not change a single bit: every case runs the same graph
 * (raw q, k, v -> rope -> attention over a KV cache) on the default
 * executor and on one made with QG_CUDA_FUSE=0 (rope kernel, then the
 * attention kernel reading the cache), from the same random inputs and
 * cache contents, and requires the attention output and both caches to be
 * byte-identical, every output finite, and the rope and attention outputs
 * of the plain run within their float64 tolerances (tests/test_cuda_ops.c
 * checks each kernel alone; here the chain).  Cases: head_dim 128 / 64,
 * 32/4, 8/2 and 4/4 heads (one or several CTAs per KV head), F16 caches
 * on both decode kernels (the tensor-core default and the f32 SIMT one,
 * QG_CUDA_ATTN_TC=0) and F32 caches, positions 0, a few, the middle and the last row of a 700-row
 * cache (one and many splits of the decode kernel).
 *
 * Without a CUDA device every test skips visibly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "exec/qg_exec.h"
#include "qg_optest.h"

#include <math.h>
#include <stdio.h>

#ifdef QG_HAVE_CUDA
/* A CUDA executor (default, or with QG_CUDA_FUSE=0), or false when there
 * is no device. */
static bool ex_make(bool nofuse, bool simt, qg_exec *ex) {
    if (nofuse) setenv("QG_CUDA_FUSE", "0", 1);
    if (simt) setenv("QG_CUDA_ATTN_TC", "0", 1);
    qg_exec_opts o = {.n_threads = 1, .device = 0};
    qg_error err = {0};
    const qg_status st = qg_exec_cuda_new(&o, ex, &err);
    unsetenv("QG_CUDA_FUSE");
    unsetenv("QG_CUDA_ATTN_TC");
    return st == QG_OK;
}

static void test_rope_attention_fold(void **state) {
    (void)state;
    /* [kernel][folded, plain]: kernel 0 the default decode attention (the
     * tensor-core one over F16 caches), 1 the f32 SIMT one */
    qg_exec pairs[2][2];
    if (!ex_make(false, false, &pairs[0][0])) {
        printf("no CUDA device (or built without CUDA): skipped\n");
        skip();
    }
    for (int x = 0; x < 4; x++)
        if (x && !ex_make(x & 1, x >> 1, &pairs[x >> 1][x & 1]))
            fail_msg("CUDA executor %d", x);
    static const int heads[4][3] = {{128, 32, 4}, {128, 8, 2}, {64, 4, 4}, {64, 8, 1}};
    static const qg_dtype cts[2] = {QG_F16, QG_F32};
    const int C = 700;
    int case_id = 0;
    for (int hi = 0; hi < 4; hi++)
        for (int ci = 0; ci < 2; ci++)
            for (int xk = 0; xk < (cts[ci] == QG_F16 ? 2 : 1); xk++) {
                qg_exec *exs = pairs[xk];
                const int hd = heads[hi][0], nh = heads[hi][1], nkv = heads[hi][2];
                const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
                const qg_dtype ct = cts[ci];
                const int ps[4] = {0, 3, 350, C - 1};
                for (int pi = 0; pi < 4; pi++) {
                    const int p0 = ps[pi];
                    void *out[2][3] = {{0}};
                    size_t nb[3] = {0};
                    for (int e = 0; e < 2; e++) {
                        /* the same stream on both executors: same weights, inputs, cache */
                        qg_test_rng r = qg_optest_rng_for(1, case_id, 0xf01d);
                        qg_optest_fx f = qg_optest_fx_new(QG_PHASE_DECODE, 1, C, true);
                        const int q =
                            qg_optest_add_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, Dq, 1, 1);
                        const int k =
                            qg_optest_add_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, Dkv, 1, 1);
                        const int v =
                            qg_optest_add_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, Dkv, 1, 1);
                        const int qn =
                            qg_optest_add_weight(&f, "q_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
                        const int kn =
                            qg_optest_add_weight(&f, "k_norm", QG_F32, 1, hd, 1, 1, &r, 2.0f);
                        const int pos =
                            qg_optest_add_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 1, 1, 1);
                        f.g->t_pos = pos;
                        const int qr =
                            qg_optest_add_tensor(&f, "q_rope", QG_F32, QG_ROLE_ACT, 2, Dq, 1, 1);
                        const int kr =
                            qg_optest_add_tensor(&f, "k_rope", QG_F32, QG_ROLE_ACT, 2, Dkv, 1, 1);
                        const int kc =
                            qg_optest_add_tensor(&f, "cache_k", ct, QG_ROLE_KV, 2, Dkv, C, 1);
                        const int vc =
                            qg_optest_add_tensor(&f, "cache_v", ct, QG_ROLE_KV, 2, Dkv, C, 1);
                        const int o =
                            qg_optest_add_tensor(&f, "o", QG_F32, QG_ROLE_OUTPUT, 2, Dq, 1, 1);
                        qg_op_params p = {.eps = 1e-6f,
                                          .rope_theta = 1e6f,
                                          .head_dim = hd,
                                          .n_head = nh,
                                          .n_head_kv = nkv};
                        qg_optest_add_node(&f, QG_OP_ROPE, "rope", (int[]){q, k, qn, kn, pos}, 5,
                                           (int[]){qr, kr}, 2, &p);
                        qg_optest_add_node(&f, QG_OP_ATTENTION, "attention",
                                           (int[]){qr, kr, v, kc, vc, pos}, 6, (int[]){o}, 1, &p);
                        qg_optest_schedule(&f, &exs[e], 1, 0);
                        assert_int_equal(f.g->n_parts, 1);
                        qg_optest_compile(&f, &exs[e]);
                        f.ex = &exs[e];
                        qg_optest_fill_cache(ct, f.host[kc], f.host[vc], (size_t)(Dkv * C), &r);
                        qg_optest_fill_act(&f, q, 1, &r, -2, 2);
                        qg_optest_fill_act(&f, k, 1, &r, -2, 2);
                        qg_optest_fill_act(&f, v, 1, &r, -1, 1);
                        qg_optest_i32(&f, pos)[0] = p0;
                        char label[160];
                        snprintf(label, sizeof label,
                                 "rope+attention hd=%d nh=%d nkv=%d %s pos=%d %s", hd, nh, nkv,
                                 qg_dtype_name(ct), p0, e ? "unfused" : "fused");
                        qg_optest_step(&f, f.ex, (int[]){q, k, v, kc, vc, pos}, 6, (int[]){o}, 1, 1,
                                       p0 + 1, label);
                        qg_optest_download(&f, f.ex, kc);
                        qg_optest_download(&f, f.ex, vc);
                        const int ids[3] = {o, kc, vc};
                        for (int i = 0; i < 3; i++) {
                            nb[i] = f.g->tensors[ids[i]].nbytes;
                            out[e][i] = malloc(nb[i]);
                            assert_non_null(out[e][i]);
                            memcpy(out[e][i], f.host[ids[i]], nb[i]);
                        }
                        const float *of = qg_optest_f32(&f, o);
                        for (int64_t i = 0; i < Dq; i++)
                            if (!isfinite(of[i]))
                                fail_msg("%s: o[%lld] = %g", label, (long long)i, (double)of[i]);
                        qg_optest_fx_free(&f);
                    }
                    static const char *const what[3] = {"attention output", "K cache", "V cache"};
                    for (int i = 0; i < 3; i++) {
                        if (memcmp(out[0][i], out[1][i], nb[i]) != 0)
                            fail_msg(
                                "hd=%d nh=%d nkv=%d %s pos=%d %s kernel: the %s differs between "
                                "the folded and the plain graph",
                                hd, nh, nkv, qg_dtype_name(ct), p0, xk ? "simt" : "default",
                                what[i]);
                        free(out[0][i]);
                        free(out[1][i]);
                    }
                    case_id++;
                }
            }
    printf("rope -> attention fold: %d cases bit-identical to the plain graph\n", case_id);
    for (int x = 0; x < 4; x++)
        pairs[x >> 1][x & 1].i->free(pairs[x >> 1][x & 1].self);
}
#else
static void test_rope_attention_fold(void **state) {
    (void)state;
    printf("built without CUDA: skipped\n");
    skip();
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_attention_fold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
