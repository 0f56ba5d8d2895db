/*
 * tools/kernels/gemm.cu - kernel lab: the prefill products (tiled GEMMs over
 * quantized weights), llm.c dev/cuda style.
 *
 *   lab_gemm [reps]
 *
 * Numbered versions of y = W x over the live tokens (dense) or grouped by
 * expert, on the 30b-a3b shapes:
 *   v1  today's split-f16 product (ops/cuda/op_gemm.cu k_gemm_f16: weight
 *       tiles dequantized to f32, hi + lo f16 parts, WMMA), reached through
 *       qg_cu_gemm_dense / qg_cu_gemm_grouped with no image scratch
 *   v2  the integer tensor-core product (ops/cuda/op_gemm_i8.cu: x as three
 *       int8 planes built once per product, mma.sync s8), variant 0: each
 *       warp reads its B fragments straight from the image (L1)
 *   v3  the same, variant 1: each step's B staged in shared memory by the
 *       CTA (cp.async, double-buffered), 32-column tiles
 *   v4  variant 2: weights, B, column sums and scales of each super-block
 *       staged by cp.async (two stages), 8 warps, 128 rows (dual: 64 of
 *       gate and of up) x 32 columns
 *   v5  variant 3: as v4 with 4 warps and 64 rows (dual: as v4)
 * (the product runs variants QG_I8G_VARIANT / QG_I8G_VARIANT_GROUPED of
 * qg_cuda_gemm_i8.cuh)
 * The "qkv one launch" line times q, k and v together: v1 three f16
 * products, v2..v5 one integer grid over all three (qg_i8g_multi_v, one
 * image); compare it with the sum of the three qkv lines above it.
 * Each version is checked against a float64 reference before it is timed:
 * the output is poisoned (0xFF bytes: NaN), every live output must be
 * written and finite, and sampled outputs (every row of a few columns, every
 * column of 64 rows) must satisfy |y - ref| <= 1e-5 * sum|w x| + 1e-6
 * (dual: the tolerance of silu(g) * u from those of g and u).
 * Timing: a CUDA Graph of `copies` launches over rotating copies of the
 * weights (dense) or rotating expert choices (grouped), so weights come from
 * HBM as in a 48-layer prefill; replayed `reps` times, median per product;
 * TFLOP/s = 2 * rows * n * columns (x2 for gate + up) / time.
 */
#include "lab_common.cuh"

#include "../../ops/cuda/qg_cuda_common.cuh"
#include "../../ops/cuda/qg_cuda_gemm_i8.cuh"
#include "../../ops/cuda/qg_cuda_internal.cuh"

extern "C" {
#include "../../graph/qg_graph.h"
}

/* One product shape. */
struct shape {
    const char *what;
    qg_dtype t;
    int n, m;      /* inputs, rows (per expert) */
    bool dual;     /* gate and up (same type), silu(g) * u */
    bool add;      /* residual */
    int grouped;   /* 0: dense over T tokens; else tokens per expert (8 experts) */
    int T;         /* dense: tokens */
    bool down;     /* grouped: x columns are assignments (xdiv 1), else tokens */
};

#define LAB_X 128 /* experts of the grouped shapes' weights */
#define LAB_K 8   /* experts per token */
#define LAB_NV 5  /* versions */

/* The graph context a launch needs: a prefill graph with one node of the
 * product's op (its scratch layout), a device step input and the scratch. */
struct ctx {
    qg_graph *g;
    int node;
    int32_t *step;
    void *scratch;
    size_t scratch_bytes;
};

static int add_t(qg_graph *g, const char *name, qg_dtype t, qg_role r, int nd, int64_t a, int64_t b,
                 int64_t c) {
    const int64_t ne[3] = {a, b, c};
    return qg_graph_add_tensor(g, name, t, r, 0, nd, ne, NULL);
}

static ctx ctx_new(const shape &s, int T, const qg_cuda_opts &o) {
    ctx c = {};
    c.g = qg_graph_new(QG_PHASE_PREFILL, T, 4096);
    qg_graph *g = c.g;
    qg_op_params p = {};
    p.n_expert = LAB_X;
    p.n_expert_used = LAB_K;
    if (!s.grouped && !s.dual) {
        const int w = add_t(g, "w", s.t, QG_ROLE_WEIGHT, 2, s.n, s.m, 1);
        const int x = add_t(g, "x", QG_F32, QG_ROLE_INPUT, 2, s.n, T, 1);
        const int y = add_t(g, "y", QG_F32, QG_ROLE_OUTPUT, 2, s.m, T, 1);
        const int in[2] = {w, x};
        c.node = qg_graph_add_node(g, QG_OP_MATMUL, "matmul", 0, in, 2, &y, 1, &p);
    } else if (!s.grouped) {
        const int x = add_t(g, "x", QG_F32, QG_ROLE_INPUT, 2, s.n, T, 1);
        const int gw = add_t(g, "gate", s.t, QG_ROLE_WEIGHT, 2, s.n, s.m, 1);
        const int uw = add_t(g, "up", s.t, QG_ROLE_WEIGHT, 2, s.n, s.m, 1);
        const int y = add_t(g, "h", QG_F32, QG_ROLE_OUTPUT, 2, s.m, T, 1);
        const int in[3] = {x, gw, uw};
        c.node = qg_graph_add_node(g, QG_OP_SWIGLU, "swiglu", 0, in, 3, &y, 1, &p);
    } else if (!s.down) {
        const int x = add_t(g, "x", QG_F32, QG_ROLE_INPUT, 2, s.n, T, 1);
        const int gw = add_t(g, "gate", s.t, QG_ROLE_WEIGHT, 3, s.n, s.m, LAB_X);
        const int uw = add_t(g, "up", s.t, QG_ROLE_WEIGHT, 3, s.n, s.m, LAB_X);
        const int ids = add_t(g, "ids", QG_I32, QG_ROLE_INPUT, 2, LAB_K, T, 1);
        const int h = add_t(g, "h", QG_F32, QG_ROLE_OUTPUT, 3, s.m, LAB_K, T);
        const int in[4] = {x, gw, uw, ids};
        c.node = qg_graph_add_node(g, QG_OP_EXPERT_SWIGLU, "experts", 0, in, 4, &h, 1, &p);
    } else {
        const int h = add_t(g, "h", QG_F32, QG_ROLE_INPUT, 3, s.n, LAB_K, T);
        const int dw = add_t(g, "down", s.t, QG_ROLE_WEIGHT, 3, s.n, s.m, LAB_X);
        const int ids = add_t(g, "ids", QG_I32, QG_ROLE_INPUT, 2, LAB_K, T, 1);
        const int wts = add_t(g, "wts", QG_F32, QG_ROLE_INPUT, 2, LAB_K, T, 1);
        const int y = add_t(g, "y", QG_F32, QG_ROLE_OUTPUT, 2, s.m, T, 1);
        const int in[4] = {h, dw, ids, wts};
        c.node = qg_graph_add_node(g, QG_OP_AGGREGATE, "aggregate", 0, in, 4, &y, 1, &p);
    }
    int nc = 0;
    qg_cuda_op_needs(g, &g->nodes[c.node], &o, &c.scratch_bytes, &nc);
    if (c.scratch_bytes) CK(cudaMalloc(&c.scratch, c.scratch_bytes));
    CK(cudaMalloc(&c.step, sizeof(int32_t) * QG_STEP_N));
    const int32_t st[QG_STEP_N] = {T, T, 0, 0};
    CK(cudaMemcpy(c.step, st, sizeof st, cudaMemcpyHostToDevice));
    return c;
}

static void ctx_free(ctx &c) {
    cudaFree(c.scratch);
    cudaFree(c.step);
    qg_graph_free(c.g);
}

/* Grouped lists on the host: expert of tile list `rot` for slot k is
 * (8 rot + k) % LAB_X; every token takes all 8 slots, so each expert has T
 * assignments a = t * K + k. */
struct lists {
    int32_t *tiles, *asg; /* device */
    int max_tiles;
};

static lists lists_new(int T, int rot) {
    std::vector<int32_t> asg, tl(1, 0);
    for (int k = 0; k < LAB_K; k++) {
        const int off = (int)asg.size();
        for (int t = 0; t < T; t++) asg.push_back(t * LAB_K + k);
        for (int j = 0; j < T; j += QG_CU_GROUP_BN) {
            tl.push_back((8 * rot + k) % LAB_X);
            tl.push_back(off + j);
            tl.push_back(std::min(QG_CU_GROUP_BN, T - j));
            tl[0]++;
        }
    }
    lists L = {};
    L.max_tiles = qg_cu_max_tiles(LAB_K, T, LAB_X);
    tl.resize(1 + 3 * (size_t)L.max_tiles, 0);
    CK(cudaMalloc(&L.tiles, sizeof(int32_t) * tl.size()));
    CK(cudaMalloc(&L.asg, sizeof(int32_t) * asg.size()));
    CK(cudaMemcpy(L.tiles, tl.data(), sizeof(int32_t) * tl.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(L.asg, asg.data(), sizeof(int32_t) * asg.size(), cudaMemcpyHostToDevice));
    return L;
}

/* Enqueue one product of version v (1: f16, 2..5: integer variants 0..3). */
static cudaError_t launch(int v, const shape &s, const ctx &c, const qg_cuda_opts &o, const uint8_t *w,
                          const uint8_t *w2, const float *x, float *y, const float *add,
                          const lists *L, cudaStream_t st) {
    qg_cuda_launch l = {};
    l.g = c.g;
    l.n = &c.g->nodes[c.node];
    l.step = c.step;
    l.scratch = v >= 2 ? c.scratch : nullptr; /* v1: no image scratch, the f16 kernels */
    l.scratch_bytes = v >= 2 ? c.scratch_bytes : 0;
    l.stream = st;
    l.o = o;
    const size_t rb = qg_dtype_row_bytes(s.t, s.n);
    qg_cu_mat m = {}, m2 = {};
    m.type = s.t;
    m.w = w;
    m.rb = rb;
    m.es = rb * s.m;
    m.m = s.m;
    m.y = y;
    m.ldy = s.m;
    m2 = m;
    m2.w = w2;
    const qg_cu_groups gr = {L ? L->tiles : nullptr, L ? L->asg : nullptr, L ? L->max_tiles : 0,
                             s.down ? 1 : LAB_K};
    if (v == 1) {
        if (!s.grouped) return qg_cu_gemm_dense(&l, &m, s.dual ? &m2 : nullptr, s.n, x, s.n, add);
        return qg_cu_gemm_grouped(&l, &m, s.dual ? &m2 : nullptr, s.n, x, s.n, &gr);
    }
    const size_t cols = (size_t)c.g->n_tok_max * (s.grouped && s.down ? LAB_K : 1);
    uint8_t *img = qg_i8g_image(&l, cols * qg_i8p_col_bytes(s.n));
    if (!img) return cudaErrorInvalidValue;
    if (!s.grouped) return qg_i8g_dense_v(&l, &m, s.dual ? &m2 : nullptr, s.n, x, s.n, add, img, v - 2);
    return qg_i8g_grouped_v(&l, &m, s.dual ? &m2 : nullptr, s.n, x, s.n, &gr, img, v - 2);
}

static double silu(double v) { return v / (1.0 + exp(-v)); }

/* Check the output of version `name` (host copy y) against float64. */
static bool check(const shape &s, int T, const uint8_t *hw, const uint8_t *hw2, const float *hx,
                  const float *hadd, const float *hy, const char *name) {
    const size_t rb = qg_dtype_row_bytes(s.t, s.n);
    const int cols = s.grouped ? T * LAB_K : T; /* y columns */
    /* every live output written */
    for (size_t i = 0; i < (size_t)cols * s.m; i++)
        if (!std::isfinite(hy[i])) {
            printf("    %s: y[%zu] (column %zu, row %zu) = %g: not written or not finite\n", name, i,
                   i / s.m, i % s.m, hy[i]);
            return false;
        }
    std::vector<double> wr(s.n), wr2(s.n);
    const int ccheck[3] = {0, cols / 2, cols - 1};
    for (int r = 0; r < s.m; r++) {
        const bool all = (r * 64) / s.m != ((r + 1) * 64) / s.m || r == s.m - 1;
        for (int ci = 0; ci < (all ? cols : 3); ci++) {
            const int c = all ? ci : ccheck[ci];
            const int e = s.grouped ? (c % LAB_K) : 0; /* expert slot; rotation 0 */
            const int xc = s.grouped && !s.down ? c / LAB_K : c;
            if (ci == 0 || s.grouped) {
                const size_t eo = (size_t)e * rb * s.m;
                qg_dequant_row_f64(s.t, hw + eo + (size_t)r * rb, wr.data(), s.n);
                if (s.dual) qg_dequant_row_f64(s.t, hw2 + eo + (size_t)r * rb, wr2.data(), s.n);
            }
            const float *xv = hx + (size_t)xc * s.n;
            double am, bm = 0;
            const double a = lab_dot_f64(wr.data(), xv, s.n, &am);
            const double b = s.dual ? lab_dot_f64(wr2.data(), xv, s.n, &bm) : 0;
            double ref = a, tol = 1e-5 * am + 1e-6;
            if (s.dual) {
                /* |d silu(a)/da| <= 1.1: tol(silu(a) * b) from those of a, b */
                const double ta = 1e-5 * am + 1e-6, tb = 1e-5 * bm + 1e-6;
                ref = silu(a) * b;
                tol = 1.1 * ta * (fabs(b) + tb) + fabs(silu(a)) * tb + 1e-6;
            }
            const size_t o = (size_t)c * s.m + r;
            if (hadd) ref += hadd[o];
            if (!(fabs(hy[o] - ref) <= tol)) {
                printf("    %s: row %d column %d = %.9g, reference %.9g (tolerance %.3g): WRONG\n", name,
                       r, c, hy[o], ref, tol);
                return false;
            }
        }
    }
    return true;
}

static void run_shape(lab_rng *rng, const shape &s, int reps, const qg_cuda_opts &o) {
    const int T = s.grouped ? s.grouped : s.T;
    const size_t rb = qg_dtype_row_bytes(s.t, s.n);
    const int X = s.grouped ? LAB_X : 1;
    const size_t mat = qg_align_up(rb * s.m * X, 256);
    const int nmat = s.dual ? 2 : 1;
    const int copies = s.grouped ? LAB_X / LAB_K
                                 : (int)QG_MAX((size_t)1, ((size_t)512 << 20) / (mat * nmat));
    /* host weights: one copy (grouped: all experts) */
    std::vector<uint8_t> hw(mat * nmat);
    lab_fill_blocks(rng, s.t, hw.data(), (int64_t)s.m * X, s.n);
    if (s.dual) lab_fill_blocks(rng, s.t, hw.data() + mat, (int64_t)s.m * X, s.n);
    uint8_t *W;
    const int dcopies = s.grouped ? 1 : copies;
    CK(cudaMalloc(&W, mat * nmat * dcopies));
    for (int i = 0; i < dcopies; i++)
        CK(cudaMemcpy(W + i * mat * nmat, hw.data(), mat * nmat, cudaMemcpyHostToDevice));
    const int xcols = s.grouped && s.down ? T * LAB_K : T;
    const int ycols = s.grouped ? T * LAB_K : T;
    std::vector<float> hx((size_t)xcols * s.n), hy((size_t)ycols * s.m), hadd;
    for (float &v : hx) v = lab_rndf(rng);
    float *x, *y, *add = nullptr;
    CK(cudaMalloc(&x, sizeof(float) * hx.size()));
    CK(cudaMalloc(&y, sizeof(float) * hy.size()));
    CK(cudaMemcpy(x, hx.data(), sizeof(float) * hx.size(), cudaMemcpyHostToDevice));
    if (s.add) {
        hadd.resize(hy.size());
        for (float &v : hadd) v = lab_rndf(rng);
        CK(cudaMalloc(&add, sizeof(float) * hadd.size()));
        CK(cudaMemcpy(add, hadd.data(), sizeof(float) * hadd.size(), cudaMemcpyHostToDevice));
    }
    std::vector<lists> L;
    if (s.grouped)
        for (int r = 0; r < copies; r++) L.push_back(lists_new(T, r));
    ctx c = ctx_new(s, T, o);
    const double flop = 2.0 * s.m * s.n * (double)ycols * nmat;
    for (int v = 1; v <= LAB_NV; v++) {
        char name[8];
        snprintf(name, sizeof name, "v%d", v);
        auto wp = [&](int i) { return W + (s.grouped ? 0 : (size_t)i * mat * nmat); };
        CK(cudaMemset(y, 0xFF, sizeof(float) * hy.size()));
        CK(launch(v, s, c, o, wp(0), wp(0) + mat, x, y, add, s.grouped ? &L[0] : nullptr, 0));
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(hy.data(), y, sizeof(float) * hy.size(), cudaMemcpyDeviceToHost));
        const bool ok = check(s, T, hw.data(), hw.data() + mat, hx.data(), s.add ? hadd.data() : nullptr,
                              hy.data(), name);
        const double us = lab_graph_us(copies, reps, true, [&](int i, cudaStream_t st) {
            return launch(v, s, c, o, wp(i), wp(i) + mat, x, y, add, s.grouped ? &L[i] : nullptr, st);
        });
        printf("  %-34s %-5s %-3s %10.2f %9.1f  %s\n", s.what, qg_dtype_name(s.t), name, us,
               flop / us / 1e6, ok ? "ok" : "WRONG");
    }
    for (lists &l : L) {
        cudaFree(l.tiles);
        cudaFree(l.asg);
    }
    ctx_free(c);
    cudaFree(W);
    cudaFree(x);
    cudaFree(y);
    cudaFree(add);
}

/* q (Q4_K 2048 -> 4096), k (Q4_K -> 512), v (Q6_K -> 512) over 512 tokens:
 * v1 three f16 products, v2..v5 one integer grid of variant v - 2. */
static void run_qkv(lab_rng *rng, int reps, const qg_cuda_opts &o) {
    const int n = 2048, T = 512, ms[3] = {4096, 512, 512};
    const qg_dtype ts[3] = {QG_Q4_K, QG_Q4_K, QG_Q6_K};
    size_t off[4] = {0, 0, 0, 0};
    for (int i = 0; i < 3; i++) off[i + 1] = off[i] + qg_align_up(qg_dtype_row_bytes(ts[i], n) * ms[i], 256);
    const size_t set = off[3];
    const int copies = (int)QG_MAX((size_t)1, ((size_t)512 << 20) / set);
    std::vector<uint8_t> hw(set);
    for (int i = 0; i < 3; i++) lab_fill_blocks(rng, ts[i], hw.data() + off[i], ms[i], n);
    uint8_t *W;
    CK(cudaMalloc(&W, set * copies));
    for (int i = 0; i < copies; i++) CK(cudaMemcpy(W + i * set, hw.data(), set, cudaMemcpyHostToDevice));
    std::vector<float> hx((size_t)T * n);
    for (float &v : hx) v = lab_rndf(rng);
    float *x, *y[3];
    CK(cudaMalloc(&x, sizeof(float) * hx.size()));
    CK(cudaMemcpy(x, hx.data(), sizeof(float) * hx.size(), cudaMemcpyHostToDevice));
    for (int i = 0; i < 3; i++) CK(cudaMalloc(&y[i], sizeof(float) * (size_t)T * ms[i]));
    const shape s = {"qkv", QG_Q4_K, n, ms[0], false, false, 0, T, false};
    ctx c = ctx_new(s, T, o); /* a matmul node over n inputs: the same image bytes */
    auto enqueue = [&](int v, int copy, cudaStream_t st) -> cudaError_t {
        qg_cuda_launch l = {};
        l.g = c.g;
        l.n = &c.g->nodes[c.node];
        l.step = c.step;
        l.scratch = v >= 2 ? c.scratch : nullptr;
        l.scratch_bytes = v >= 2 ? c.scratch_bytes : 0;
        l.stream = st;
        l.o = o;
        qg_cu_mat m[3] = {};
        for (int i = 0; i < 3; i++) {
            m[i].type = ts[i];
            m[i].w = W + (size_t)copy * set + off[i];
            m[i].rb = qg_dtype_row_bytes(ts[i], n);
            m[i].m = ms[i];
            m[i].y = y[i];
            m[i].ldy = ms[i];
        }
        if (v == 1) {
            for (int i = 0; i < 3; i++) {
                const cudaError_t e = qg_cu_gemm_dense(&l, &m[i], nullptr, n, x, n, nullptr);
                if (e != cudaSuccess) return e;
            }
            return cudaSuccess;
        }
        uint8_t *img = qg_i8g_image(&l, (size_t)T * qg_i8p_col_bytes(n));
        if (!img) return cudaErrorInvalidValue;
        return qg_i8g_multi_v(&l, m, 3, nullptr, n, x, n, nullptr, img, v - 2);
    };
    double flop = 0;
    for (int i = 0; i < 3; i++) flop += 2.0 * ms[i] * n * (double)T;
    for (int v = 1; v <= LAB_NV; v++) {
        char name[8];
        snprintf(name, sizeof name, "v%d", v);
        for (int i = 0; i < 3; i++) CK(cudaMemset(y[i], 0xFF, sizeof(float) * (size_t)T * ms[i]));
        CK(enqueue(v, 0, 0));
        CK(cudaDeviceSynchronize());
        bool ok = true;
        for (int i = 0; i < 3 && ok; i++) {
            std::vector<float> hy((size_t)T * ms[i]);
            CK(cudaMemcpy(hy.data(), y[i], sizeof(float) * hy.size(), cudaMemcpyDeviceToHost));
            const shape si = {"qkv", ts[i], n, ms[i], false, false, 0, T, false};
            ok = check(si, T, hw.data() + off[i], nullptr, hx.data(), nullptr, hy.data(), name);
        }
        const double us =
            lab_graph_us(copies, reps, true, [&](int i, cudaStream_t st) { return enqueue(v, i, st); });
        printf("  %-34s %-5s %-3s %10.2f %9.1f  %s\n", "qkv one launch q+k+v, 512 tok", "mixed", name, us,
               flop / us / 1e6, ok ? "ok" : "WRONG");
    }
    ctx_free(c);
    cudaFree(W);
    cudaFree(x);
    for (int i = 0; i < 3; i++) cudaFree(y[i]);
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 21;
    cudaDeviceProp prop;
    if (!lab_device(&prop)) return 0;
    lab_rng rng = {0x7654321};
    printf("device: %s, %d SMs, L2 %.0f MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);
    CK(qg_cu_gemm_prepare());
    qg_cuda_opts o = {};
    o.n_sm = prop.multiProcessorCount;
    o.i8_decode = true;
    const shape shapes[] = {
        {"qkv: q 2048->4096, 512 tok", QG_Q4_K, 2048, 4096, false, false, 0, 512, false},
        {"qkv: k 2048->512, 512 tok", QG_Q4_K, 2048, 512, false, false, 0, 512, false},
        {"qkv: v 2048->512, 512 tok", QG_Q6_K, 2048, 512, false, false, 0, 512, false},
        {"attn_output 4096->2048 +res, 512", QG_Q4_K, 4096, 2048, false, true, 0, 512, false},
        {"dense 2048->1000 rows, 17 tok", QG_Q4_K, 2048, 1000, false, false, 0, 17, false},
        {"dense 2048->1000 rows, 17 tok", QG_Q6_K, 2048, 1000, false, false, 0, 17, false},
        {"gate/up 2048->768 x8, 32 tok/exp", QG_Q4_K, 2048, 768, true, false, 32, 0, false},
        {"gate/up 2048->768 x8, 64 tok/exp", QG_Q4_K, 2048, 768, true, false, 64, 0, false},
        {"down 768->2048 x8, 32 tok/exp", QG_Q6_K, 768, 2048, false, false, 32, 0, true},
        {"down 768->2048 x8, 64 tok/exp", QG_Q6_K, 768, 2048, false, false, 64, 0, true},
        {"down 768->2048 x8, 32 tok/exp", QG_Q4_K, 768, 2048, false, false, 32, 0, true},
        {"down 768->2048 x8, 64 tok/exp", QG_Q4_K, 768, 2048, false, false, 64, 0, true},
    };
    printf("  %-34s %-5s %-3s %10s %9s  %s\n", "shape", "type", "ver", "us", "TFLOP/s", "check");
    for (int i = 0; i < 3; i++) run_shape(&rng, shapes[i], reps, o);
    run_qkv(&rng, reps, o);
    for (size_t i = 3; i < sizeof shapes / sizeof shapes[0]; i++) run_shape(&rng, shapes[i], reps, o);
    return 0;
}
