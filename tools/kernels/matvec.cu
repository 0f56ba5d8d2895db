/*
 * tools/kernels/matvec.cu - kernel lab: the single-token quantized matvec
 * (the decode bottleneck), llm.c dev/cuda style.
 *
 *   lab_matvec [reps]
 *
 * Part A measures the device-to-device copy bandwidth (bytes read plus
 * written), the ceiling every number below is compared with.
 * Part B runs numbered versions of y = W x over Q4_K and Q6_K weights of
 * the 30b-a3b decode shapes, rotating over enough copies of the matrix to
 * defeat the 50 MB L2, each checked against a float64 reference (64 rows,
 * |y - ref| <= 1e-5 sum|w x| + 1e-6) before it is timed:
 *   v1  one warp per row, lanes over 32-weight units, exactly dequantized
 *       weights (qg_unit<DT>::decode), x staged in shared memory with all
 *       loads in flight (the product kernel, ops/cuda/op_matvec.cu
 *       k_matvec, less its L2 prefetch of each warp's first rows)
 *   v2  v1 with two rows per warp interleaved (twice the loads in flight)
 *   v3  Q4_K only: factorized d*sum(q x) - m*sum(x) with the sub-block
 *       sums of x precomputed per block (3 instead of 5 operations per
 *       weight; same f32 accumulation class)
 *   v4  the product's integer tensor-core path (ops/cuda/op_matvec_i8.cu,
 *       qg_i8_mv) in its default shapes: x as three int8 planes, mma.sync
 *       s8, 16-row tiles (from the fifth session's shape switches until
 *       the seventh the lab's zeroed options asked for shape 0,
 *       k_mv8<4,1,3>, on every matrix)
 *   v5  v6  v7  the head path's k_hd8 shapes (QG_CUDA_I8_HEAD=6, 7, 8:
 *       each warp owns whole tiles), for products of more than 8 tiles
 *       per multiprocessor (the lm_head)
 * Every version is timed as a CUDA Graph of back-to-back launches over the
 * rotating copies (launch gaps as in the executor's decode graph).
 * Part C times the product's decode nodes through the CUDA executor with
 * per-node events (--profile's path): moe_fused (router + top-k, gate/up,
 * down + combine) over 128 experts of which 8 are used, attention at 4096
 * cached rows, and the 151936-row Q6_K lm_head, each as GB/s of the bytes
 * the node must read.
 * Prints one table; results go to docs/BENCHMARKS.md by hand.
 */
#include "lab_common.cuh"

#include "../../ops/cuda/qg_cuda_common.cuh"
#include "../../ops/cuda/qg_cuda_i8_ops.cuh"

extern "C" {
#include "../../exec/qg_exec.h"
#include "../../graph/qg_sched.h"
}

/* ---- Part B: matvec versions ----------------------------------------- */

/* Stage x (n floats, n % 4 == 0, n <= 16384) into shared memory with all
 * of a thread's loads in flight at once (as the product's stage_x). */
__device__ __forceinline__ void lab_stage(const float *__restrict__ x, int n, float *xs) {
    float4 v[16];
    const int n4 = n / 4;
#pragma unroll
    for (int k = 0; k < 16; k++) {
        const int i = threadIdx.x + 256 * k;
        if (i < n4) v[k] = ((const float4 *)x)[i];
    }
#pragma unroll
    for (int k = 0; k < 16; k++) {
        const int i = threadIdx.x + 256 * k;
        if (i < n4) ((float4 *)xs)[i] = v[k];
    }
    __syncthreads();
}

/* v1: the product kernel's loop (one warp per row). */
template <int DT>
__global__ void __launch_bounds__(256) mv_v1(const uint8_t *__restrict__ W, size_t rb, int n,
                                             int m, const float *__restrict__ x, float *y) {
    extern __shared__ float xs[];
    lab_stage(x, n, xs);
    const int lane = threadIdx.x & 31, U = n / 32, nw = gridDim.x * 8;
    for (int r = blockIdx.x * 8 + (threadIdx.x >> 5); r < m; r += nw) {
        const uint8_t *row = W + (size_t)r * rb;
        float acc = 0.0f;
#pragma unroll 2
        for (int u = lane; u < U; u += 32) acc += qg_unit_dot<DT>(row, u, xs);
        acc = qg_warp_sum(acc);
        if (lane == 0) y[r] = acc;
    }
}

/* v2: two rows per warp, their units interleaved. */
template <int DT>
__global__ void __launch_bounds__(256) mv_v2(const uint8_t *__restrict__ W, size_t rb, int n,
                                             int m, const float *__restrict__ x, float *y) {
    extern __shared__ float xs[];
    lab_stage(x, n, xs);
    const int lane = threadIdx.x & 31, U = n / 32, nw = gridDim.x * 8;
    for (int r = 2 * (blockIdx.x * 8 + (threadIdx.x >> 5)); r < m; r += 2 * nw) {
        const uint8_t *r0 = W + (size_t)r * rb, *r1 = r0 + rb;
        const bool two = r + 1 < m;
        float a0 = 0.0f, a1 = 0.0f;
        for (int u = lane; u < U; u += 32) {
            a0 += qg_unit_dot<DT>(r0, u, xs);
            if (two) a1 += qg_unit_dot<DT>(r1, u, xs);
        }
        a0 = qg_warp_sum(a0);
        a1 = qg_warp_sum(a1);
        if (lane == 0) {
            y[r] = a0;
            if (two) y[r + 1] = a1;
        }
    }
}

/* v3 (q4_K): per unit, d1 * sum(q x_lo) - m1 * sum(x_lo) + d2 * ... with
 * the 32-element sums of x (sub-block j of block b at xsum[8b + j]). */
__global__ void __launch_bounds__(256) mv_v3_q4k(const uint8_t *__restrict__ W, size_t rb, int n,
                                                 int m, const float *__restrict__ x, float *y) {
    extern __shared__ float xs[]; /* x (n) | sums (n / 32) */
    float *xsum = xs + n;
    lab_stage(x, n, xs);
    for (int j = threadIdx.x; j < n / 32; j += blockDim.x) {
        float s = 0.0f;
        for (int i = 0; i < 32; i++) s += xs[32 * j + i];
        xsum[j] = s;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, U = n / 32, nw = gridDim.x * 8;
    for (int r = blockIdx.x * 8 + (threadIdx.x >> 5); r < m; r += nw) {
        const uint8_t *row = W + (size_t)r * rb;
        float acc = 0.0f;
        for (int u = lane; u < U; u += 32) {
            const uint8_t *b = row + (size_t)(u >> 3) * 144;
            const int p = u & 7, c = p >> 1, hf = p & 1;
            const uint4 hd = qg_ld_v4(b);
            const uint4 q = qg_ld_v4(b + 16 + 32 * c + 16 * hf);
            const float d = qg_h2f(hd.x & 0xFFFFu), dmin = qg_h2f(hd.x >> 16);
            uint32_t sc, mm;
            qg_k4_scale_min(hd.y, hd.z, hd.w, 2 * c, &sc, &mm);
            const float d1 = d * (float)sc, m1 = dmin * (float)mm;
            qg_k4_scale_min(hd.y, hd.z, hd.w, 2 * c + 1, &sc, &mm);
            const float d2 = d * (float)sc, m2 = dmin * (float)mm;
            const int base = 256 * (u >> 3) + 64 * c + 16 * hf;
            const float *x0 = xs + base, *x1 = xs + base + 32;
            const uint32_t qw[4] = {q.x, q.y, q.z, q.w};
            float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint32_t lo = qw[k] & 0x0F0F0F0Fu, hi = (qw[k] >> 4) & 0x0F0F0F0Fu;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    s0 = fmaf(qg_byte_f(lo, i), x0[4 * k + i], s0);
                    s1 = fmaf(qg_byte_f(hi, i), x1[4 * k + i], s1);
                }
            }
            /* this unit holds half of sub-blocks 2c and 2c+1: their x sums
             * over the unit's 16 elements */
            float xs0 = 0.0f, xs1 = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i++) {
                xs0 += x0[i];
                xs1 += x1[i];
            }
            acc += d1 * s0 - m1 * xs0 + d2 * s1 - m2 * xs1;
        }
        acc = qg_warp_sum(acc);
        if (lane == 0) y[r] = acc;
    }
}

typedef void (*mv_fn)(const uint8_t *, size_t, int, int, const float *, float *);

struct version {
    const char *name;
    qg_dtype type;
    mv_fn fn;          /* a lab kernel, or NULL: the product's qg_i8_mv */
    size_t smem_extra; /* floats beyond n */
    int head_cfg;      /* the product's head shape (QG_CUDA_I8_HEAD), -1:
                          its default */
};

/* Enqueue one y = W x of version v on stream st. */
static void launch_version(const version &v, const uint8_t *W, size_t rb, int n, int m,
                           const float *x, float *y, int n_sm, cudaStream_t st) {
    if (v.fn) {
        const int blocks = QG_MIN((m + 7) / 8, 4 * n_sm);
        v.fn<<<blocks, 256, sizeof(float) * ((size_t)n + v.smem_extra), st>>>(W, rb, n, m, x, y);
        return;
    }
    qg_cuda_launch l = {};
    l.o.n_sm = n_sm;
    l.o.pdl = false;
    l.o.i8_decode = true;
    /* the product's default shapes, as the executor runs them (-1), or an
     * explicit head shape */
    l.o.i8_mv_cfg[0] = l.o.i8_mv_cfg[1] = l.o.i8_gu_cfg = -1;
    l.o.i8_head_cfg = v.head_cfg;
    l.stream = st;
    qg_cu_mat mat = {};
    mat.type = v.type;
    mat.w = W;
    mat.rb = rb;
    mat.m = m;
    mat.y = y;
    mat.ldy = m;
    CK(qg_i8_mv(&l, &mat, 1, n, x, false, nullptr));
}

/* Seconds per y = W x of version v: a CUDA Graph of `copies` launches over
 * the rotating copies of the matrix, replayed back to back `reps` times. */
static double bench_kernel(const version &v, const uint8_t *W, size_t mat_bytes, int copies,
                           size_t rb, int n, int m, const float *x, float *y, int reps, int n_sm) {
    return lab_graph_us(copies, reps, false, [&](int i, cudaStream_t st) {
               launch_version(v, W + i * mat_bytes, rb, n, m, x, y, n_sm, st);
               return cudaSuccess;
           }) / 1e6;
}

/* Check y against float64: the first `rows` rows of matrix copy 0 and
 * `rows` more spread over all of it (every tile position). */
static bool check_rows(qg_dtype t, const uint8_t *hw, size_t rb, int n, int m, const float *hx,
                       const float *y, int rows, const char *name) {
    double *w = (double *)malloc(sizeof(double) * n);
    bool ok = true;
    for (int k = 0; k < 2 * rows && ok; k++) {
        const int r = k < rows ? k : (int)(((int64_t)(k - rows) * m) / rows + (k * 7) % 16) % m;
        qg_dequant_row_f64(t, hw + r * rb, w, n);
        double a;
        const double s = lab_dot_f64(w, hx, n, &a);
        if (!(fabs(y[r] - s) <= 1e-5 * a + 1e-6)) {
            printf("  %s: row %d = %.9g, reference %.9g (tolerance %.3g): WRONG\n", name, r, y[r], s,
                   1e-5 * a + 1e-6);
            ok = false;
        }
    }
    free(w);
    return ok;
}

static void part_b(lab_rng *rng, int reps, int n_sm, double bw_copy) {
    struct shape {
        const char *what;
        qg_dtype t;
        int n, m;
    } shapes[] = {
        {"wq 2048->4096", QG_Q4_K, 2048, 4096},
        {"wo 4096->2048", QG_Q4_K, 4096, 2048},
        {"expert up 2048->768x8", QG_Q4_K, 2048, 6144},
        {"down 768->2048", QG_Q6_K, 768, 2048},
        {"down 768->2048", QG_Q4_K, 768, 2048},
        {"1000 rows (partial tile)", QG_Q4_K, 2048, 1000},
        {"1000 rows (partial tile)", QG_Q6_K, 4096, 1000},
        {"attn_v 2048->512", QG_Q6_K, 2048, 512},
        {"lm_head 2048->151936", QG_Q6_K, 2048, 151936},
    };
    printf("\nPart B: y = W x, one token (GB/s of weight bytes; %% of the copy bandwidth)\n");
    printf("  %-24s %-5s %-4s %10s %10s %7s %s\n", "shape", "type", "ver", "us", "GB/s", "%copy", "check");
    for (const shape &s : shapes) {
        const size_t rb = qg_dtype_row_bytes(s.t, s.n), mat = qg_align_up(rb * s.m, 256);
        const int copies = (int)QG_MAX((size_t)1, ((size_t)1 << 30) / mat);
        uint8_t *hw = (uint8_t *)malloc(mat);
        lab_fill_blocks(rng, s.t, hw, s.m, s.n);
        uint8_t *W;
        CK(cudaMalloc(&W, mat * copies));
        for (int i = 0; i < copies; i++) CK(cudaMemcpy(W + i * mat, hw, mat, cudaMemcpyHostToDevice));
        float *hx = (float *)malloc(sizeof(float) * s.n), *hy = (float *)malloc(sizeof(float) * s.m);
        for (int i = 0; i < s.n; i++) hx[i] = lab_rndf(rng);
        float *x, *y;
        CK(cudaMalloc(&x, sizeof(float) * s.n));
        CK(cudaMalloc(&y, sizeof(float) * s.m));
        CK(cudaMemcpy(x, hx, sizeof(float) * s.n, cudaMemcpyHostToDevice));
        version vs[7];
        int nv = 0;
        if (s.t == QG_Q4_K) {
            vs[nv++] = {"v1", s.t, mv_v1<QG_Q4_K>, 0, -1};
            vs[nv++] = {"v2", s.t, mv_v2<QG_Q4_K>, 0, -1};
            vs[nv++] = {"v3", s.t, mv_v3_q4k, (size_t)s.n / 32, -1};
        } else {
            vs[nv++] = {"v1", s.t, mv_v1<QG_Q6_K>, 0, -1};
            vs[nv++] = {"v2", s.t, mv_v2<QG_Q6_K>, 0, -1};
        }
        vs[nv++] = {"v4", s.t, nullptr, 0, -1};
        if (s.m / 16 > 8 * n_sm) { /* the head path: its k_hd8 shapes */
            vs[nv++] = {"v5", s.t, nullptr, 0, 6};
            vs[nv++] = {"v6", s.t, nullptr, 0, 7};
            vs[nv++] = {"v7", s.t, nullptr, 0, 8};
        }
        for (int v = 0; v < nv; v++) {
            CK(cudaMemset(y, 0xFF, sizeof(float) * s.m));
            launch_version(vs[v], W, rb, s.n, s.m, x, y, n_sm, 0);
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(hy, y, sizeof(float) * s.m, cudaMemcpyDeviceToHost));
            bool ok = check_rows(s.t, hw, rb, s.n, s.m, hx, hy, 64, vs[v].name);
            for (int r = 0; r < s.m && ok; r++)
                if (!(hy[r] == hy[r])) {
                    printf("  %s: row %d not written (NaN)\n", vs[v].name, r);
                    ok = false;
                }
            const double sec = bench_kernel(vs[v], W, mat, copies, rb, s.n, s.m, x, y, reps, n_sm);
            const double gbs = rb * s.m / sec / 1e9;
            printf("  %-24s %-5s %-4s %10.2f %10.1f %6.1f%% %s\n", s.what, qg_dtype_name(s.t),
                   vs[v].name, sec * 1e6, gbs, 100.0 * gbs / bw_copy, ok ? "ok" : "WRONG");
        }
        cudaFree(W);
        cudaFree(x);
        cudaFree(y);
        free(hw);
        free(hx);
        free(hy);
    }
}

/* ---- Part C: the product's decode nodes through the executor --------- */

struct lab_graph {
    lab_rng *rng; /* the random inputs' stream */
    qg_graph *g;
    void *host[64];
    int n;
};

static int lg_tensor(lab_graph *f, const char *name, qg_dtype t, qg_role role, int nd, int64_t e0,
                     int64_t e1, int64_t e2, bool fill) {
    const int64_t ne[3] = {e0, e1, e2};
    const int id = qg_graph_add_tensor(f->g, name, t, role, 0, nd, ne, NULL);
    const size_t nb = f->g->tensors[id].nbytes;
    f->host[id] = malloc(nb ? nb : 1);
    memset(f->host[id], 0, nb);
    if (fill) {
        if (t == QG_Q4_K || t == QG_Q6_K) {
            lab_fill_blocks(f->rng, t, (uint8_t *)f->host[id], qg_tensor_nelem(&f->g->tensors[id]) / e0, e0);
        } else if (t == QG_F32) {
            float *p = (float *)f->host[id];
            for (size_t i = 0; i < nb / 4; i++) p[i] = lab_rndf(f->rng);
        } else if (t == QG_F16) {
            uint16_t *p = (uint16_t *)f->host[id];
            for (size_t i = 0; i < nb / 2; i++)
                p[i] = qg_f32_to_f16(lab_rndf(f->rng));
        }
    }
    if (role == QG_ROLE_WEIGHT) f->g->tensors[id].data = f->host[id];
    f->n = id + 1;
    return id;
}

static void part_c(lab_rng *rng, int reps, double bw_copy) {
    printf("\nPart C: product decode nodes through the CUDA executor (events per node)\n");
    qg_exec ex;
    qg_error err = {};
    qg_exec_opts eo = {1, 0};
    setenv("QG_CUDA_FUSE", "0", 1);
    if (qg_exec_cuda_new(&eo, &ex, &err)) {
        printf("  %s\n", err.msg);
        return;
    }
    unsetenv("QG_CUDA_FUSE");
    const int E = 2048, F = 768, X = 128, K = 8, L = 4, C = 4096, hd = 128, nh = 32, nkv = 4, V = 151936;
    lab_graph f;
    memset(&f, 0, sizeof f);
    f.rng = rng;
    f.g = qg_graph_new(QG_PHASE_DECODE, 1, C);
    const int64_t sn = QG_STEP_N, one = 1;
    f.g->t_step = qg_graph_add_tensor(f.g, "step", QG_I32, QG_ROLE_INPUT, -1, 1, &sn, NULL);
    f.host[f.g->t_step] = calloc(QG_STEP_N, 4);
    const int pos = lg_tensor(&f, "pos", QG_I32, QG_ROLE_INPUT, 1, 1, 1, 1, false);
    (void)one;
    const int x = lg_tensor(&f, "x", QG_F32, QG_ROLE_INPUT, 2, E, 1, 1, true);
    qg_op_params p = {};
    p.n_expert = X;
    p.n_expert_used = K;
    p.head_dim = hd;
    p.n_head = nh;
    p.n_head_kv = nkv;
    p.only_last = true;
    int moe_nodes[L];
    int cur = x;
    for (int l = 0; l < L; l++) {
        const int gi = lg_tensor(&f, "gate_inp", QG_F32, QG_ROLE_WEIGHT, 2, E, X, 1, true);
        const int gw = lg_tensor(&f, "gate_exps", QG_Q4_K, QG_ROLE_WEIGHT, 3, E, F, X, true);
        const int uw = lg_tensor(&f, "up_exps", QG_Q4_K, QG_ROLE_WEIGHT, 3, E, F, X, true);
        const int dw = lg_tensor(&f, "down_exps", QG_Q6_K, QG_ROLE_WEIGHT, 3, F, E, X, true);
        const int y = lg_tensor(&f, "y", QG_F32, QG_ROLE_OUTPUT, 2, E, 1, 1, false);
        const int ids = lg_tensor(&f, "ids", QG_I32, QG_ROLE_OUTPUT, 2, K, 1, 1, false);
        const int wts = lg_tensor(&f, "wts", QG_F32, QG_ROLE_OUTPUT, 2, K, 1, 1, false);
        const int in[5] = {cur, gi, gw, uw, dw}, out[3] = {y, ids, wts};
        moe_nodes[l] = qg_graph_add_node(f.g, QG_OP_MOE_FUSED, "moe", l, in, 5, out, 3, &p);
        cur = y;
    }
    const int q = lg_tensor(&f, "q", QG_F32, QG_ROLE_INPUT, 2, hd * nh, 1, 1, true);
    const int kk = lg_tensor(&f, "k", QG_F32, QG_ROLE_INPUT, 2, hd * nkv, 1, 1, true);
    const int vv = lg_tensor(&f, "v", QG_F32, QG_ROLE_INPUT, 2, hd * nkv, 1, 1, true);
    const int kc = lg_tensor(&f, "cache_k", QG_F16, QG_ROLE_KV, 2, hd * nkv, C, 1, true);
    const int vc = lg_tensor(&f, "cache_v", QG_F16, QG_ROLE_KV, 2, hd * nkv, C, 1, true);
    const int o = lg_tensor(&f, "o", QG_F32, QG_ROLE_OUTPUT, 2, hd * nh, 1, 1, false);
    const int ain[6] = {q, kk, vv, kc, vc, pos};
    const int att = qg_graph_add_node(f.g, QG_OP_ATTENTION, "attention", 0, ain, 6, &o, 1, &p);
    const int ow = lg_tensor(&f, "output", QG_Q6_K, QG_ROLE_WEIGHT, 2, E, V, 1, true);
    const int lo = lg_tensor(&f, "logits", QG_F32, QG_ROLE_OUTPUT, 2, V, 1, 1, false);
    const int lin[2] = {x, ow};
    const int lmh = qg_graph_add_node(f.g, QG_OP_LM_HEAD, "lm_head", -1, lin, 2, &lo, 1, &p);
    qg_place_opts po = {1, &ex, 0, 0};
    if (qg_graph_schedule(f.g, false, &po, &err) ||
        ex.i->kv_alloc(ex.self, f.g->kv_bytes[0], &err) || ex.i->compile(ex.self, f.g, 0, &err)) {
        printf("  %s\n", err.msg);
        return;
    }
    for (int i = 0; i < f.n; i++) {
        const qg_tensor *t = &f.g->tensors[i];
        if ((t->role == QG_ROLE_INPUT || t->role == QG_ROLE_KV) && t->exec == 0 && i != pos &&
            i != f.g->t_step && ex.i->tensor_set(ex.self, f.g, i, f.host[i], 0, t->nbytes, &err))
            printf("  set %s: %s\n", t->name, err.msg);
    }
    int32_t step[QG_STEP_N] = {1, C, 0, 0};
    const int32_t p_last = C - 1;
    ex.i->tensor_set(ex.self, f.g, pos, &p_last, 0, 4, &err);
    ex.i->tensor_set(ex.self, f.g, f.g->t_step, step, 0, sizeof step, &err);
    qg_profile *prof = qg_profile_new((size_t)(reps + 1) * f.g->n_nodes + 16);
    double t_moe = 0, t_att = 0, t_lm = 0;
    for (int r = 0; r <= reps; r++) {
        /* fresh x each rep: new expert choices */
        float *hx = (float *)f.host[x];
        for (int i = 0; i < E; i++) hx[i] = lab_rndf(rng);
        ex.i->tensor_set(ex.self, f.g, x, hx, 0, sizeof(float) * E, &err);
        qg_profile_reset(prof);
        if (ex.i->run(ex.self, f.g, 0, step, prof, &err)) {
            printf("  run: %s\n", err.msg);
            return;
        }
        if (r == 0) continue; /* warm-up */
        for (size_t i = 0; i < prof->n; i++) {
            const double us = (prof->ev[i].t1_ns - prof->ev[i].t0_ns) / 1e3;
            const int nd = prof->ev[i].node;
            if (nd == att) t_att += us;
            else if (nd == lmh) t_lm += us;
            else
                for (int l = 0; l < L; l++)
                    if (nd == moe_nodes[l]) t_moe += us / L;
        }
    }
    t_moe /= reps;
    t_att /= reps;
    t_lm /= reps;
    const double moe_bytes = K * (2.0 * F * qg_dtype_row_bytes(QG_Q4_K, E) + E * qg_dtype_row_bytes(QG_Q6_K, F)) +
                             (double)X * E * 4;
    const double att_bytes = 2.0 * C * hd * nkv * 2;
    const double lm_bytes = (double)V * qg_dtype_row_bytes(QG_Q6_K, E);
    printf("  %-40s %10s %10s %7s\n", "node", "us", "GB/s", "%copy");
    printf("  %-40s %10.2f %10.1f %6.1f%%\n", "moe_fused 128 experts, 8 used (3 kernels)", t_moe,
           moe_bytes / t_moe / 1e3, 100 * moe_bytes / t_moe / 1e3 / bw_copy);
    printf("  %-40s %10.2f %10.1f %6.1f%%\n", "attention, 4096 rows, 32/4 heads (2 k.)", t_att,
           att_bytes / t_att / 1e3, 100 * att_bytes / t_att / 1e3 / bw_copy);
    printf("  %-40s %10.2f %10.1f %6.1f%%\n", "lm_head q6_K 2048 x 151936", t_lm,
           lm_bytes / t_lm / 1e3, 100 * lm_bytes / t_lm / 1e3 / bw_copy);
    qg_profile_free(prof);
    ex.i->release(ex.self, f.g);
    ex.i->free(ex.self);
    for (int i = 0; i < f.n; i++) free(f.host[i]);
    qg_graph_free(f.g);
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 20;
    cudaDeviceProp prop;
    if (!lab_device(&prop)) return 0;
    lab_rng rng = {0x1234567};
    printf("device: %s, %d SMs, %.1f GiB, L2 %.0f MB\n", prop.name, prop.multiProcessorCount,
           prop.totalGlobalMem / 1073741824.0, prop.l2CacheSize / 1e6);
    /* Part A */
    const size_t bytes = (size_t)2 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e0));
    for (int i = 0; i < 10; i++) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    const double bw = 2.0 * bytes * 10 / (ms / 1e3) / 1e9;
    printf("Part A: device-to-device copy %.1f GB/s (read + write, 2 GiB x 10)\n", bw);
    cudaFree(a);
    cudaFree(b);
    part_b(&rng, reps, prop.multiProcessorCount, bw);
    part_c(&rng, reps, bw);
    return 0;
}
