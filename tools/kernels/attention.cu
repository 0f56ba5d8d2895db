/*
 * tools/kernels/attention.cu - kernel lab: prefill attention (causal GQA
 * over the KV cache), llm.c dev/cuda style.
 *
 *   lab_attention [reps]
 *
 * Shape of the 30b-a3b prefill: 32 q heads, 4 kv heads, head_dim 128,
 * n_tok 512 tokens at positions 0..511 (KV 512), and the same 512 tokens
 * continuing a conversation at positions 512..1023 (KV 1024); F16 and F32
 * caches.  Versions (both are the product's, called through the op
 * launcher qg_cuda_op_launch with the cache rows already in place, so only
 * the attention kernel runs):
 *   v1  k_attn_prefill (ops/cuda/op_attention.cu): f32 SIMT, a warp per
 *       (token, head), executor option f32_prefill
 *   v2  k_attn_prefill_tc (ops/cuda/op_attention_prefill.cu): flash
 *       attention on the f16 tensor cores, split hi + lo operands, f32
 *       online softmax (the default)
 * Each version is checked first against a float64 reference on 40 tokens
 * (every head): |o - ref| <= 1e-5 * (1 + qk_abs) * pv_abs + 1e-6, the
 * tolerance of tests/test_cuda_attention.c, printing the worst error as a
 * fraction of it; then timed with events over `reps` launches.  TFLOP/s
 * counts the causal work once: 4 * head_dim * n_head * sum_t (pos_t + 1)
 * (q k and p v, two flops per multiply-add), not the split operands' extra
 * products.
 */
#include "lab_common.cuh"

/* qg_graph.h is C: included with C linkage before qg_cuda_ops.h (which
 * includes it outside its extern "C" block) */
extern "C" {
#include "../../graph/qg_graph.h"
}
#include "../../ops/cuda/qg_cuda_common.cuh"
#include "../../ops/cuda/qg_cuda_ops.h"

/* One attention node of the prefill graph and its device tensors. */
struct lab {
    qg_graph *g;
    int node;
    void *dev[8];
    int32_t *d_step;
    int T, C, hd, nh, nkv, p0;
    qg_dtype ct;
    float *hq;       /* (Dq, T) */
    double *kd, *vd; /* (Dkv, C): the cache values */
    int32_t *hpos;   /* (T) */
};

static lab lab_new(lab_rng *rng, qg_dtype ct, int T, int p0, int hd, int nh, int nkv) {
    lab L;
    memset(&L, 0, sizeof L);
    L.T = T;
    L.C = p0 + T;
    L.hd = hd;
    L.nh = nh;
    L.nkv = nkv;
    L.p0 = p0;
    L.ct = ct;
    L.g = qg_graph_new(QG_PHASE_PREFILL, T, L.C);
    const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * nkv;
    const int64_t sq[2] = {Dq, T}, skv[2] = {Dkv, T}, sc[2] = {Dkv, L.C}, sp[1] = {T};
    const int q = qg_graph_add_tensor(L.g, "q", QG_F32, QG_ROLE_INPUT, 0, 2, sq, NULL);
    const int k = qg_graph_add_tensor(L.g, "k", QG_F32, QG_ROLE_INPUT, 0, 2, skv, NULL);
    const int v = qg_graph_add_tensor(L.g, "v", QG_F32, QG_ROLE_INPUT, 0, 2, skv, NULL);
    const int kc = qg_graph_add_tensor(L.g, "cache_k", ct, QG_ROLE_KV, 0, 2, sc, NULL);
    const int vc = qg_graph_add_tensor(L.g, "cache_v", ct, QG_ROLE_KV, 0, 2, sc, NULL);
    const int pos = qg_graph_add_tensor(L.g, "pos", QG_I32, QG_ROLE_INPUT, 0, 1, sp, NULL);
    const int o = qg_graph_add_tensor(L.g, "o", QG_F32, QG_ROLE_OUTPUT, 0, 2, sq, NULL);
    qg_op_params p;
    memset(&p, 0, sizeof p);
    p.head_dim = hd;
    p.n_head = nh;
    p.n_head_kv = nkv;
    const int in[6] = {q, k, v, kc, vc, pos};
    L.node = qg_graph_add_node(L.g, QG_OP_ATTENTION, "attention", 0, in, 6, &o, 1, &p);
    for (int id = 0; id <= o; id++) CK(cudaMalloc(&L.dev[id], L.g->tensors[id].nbytes));
    /* inputs */
    L.hq = (float *)malloc(sizeof(float) * Dq * T);
    for (int64_t i = 0; i < Dq * T; i++) L.hq[i] = lab_unif(rng, -2, 2);
    CK(cudaMemcpy(L.dev[q], L.hq, sizeof(float) * Dq * T, cudaMemcpyHostToDevice));
    L.hpos = (int32_t *)malloc(sizeof(int32_t) * T);
    for (int t = 0; t < T; t++) L.hpos[t] = p0 + t;
    CK(cudaMemcpy(L.dev[pos], L.hpos, sizeof(int32_t) * T, cudaMemcpyHostToDevice));
    /* every cache row in place (the attention's own append is not run) */
    const size_t n = (size_t)(Dkv * L.C);
    L.kd = (double *)malloc(sizeof(double) * n);
    L.vd = (double *)malloc(sizeof(double) * n);
    void *hk = malloc(n * 4), *hv = malloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        const float a = lab_unif(rng, -1, 1), b = lab_unif(rng, -1, 1);
        if (ct == QG_F16) {
            ((uint16_t *)hk)[i] = qg_f32_to_f16(a);
            ((uint16_t *)hv)[i] = qg_f32_to_f16(b);
            L.kd[i] = qg_f16_to_f32(((uint16_t *)hk)[i]);
            L.vd[i] = qg_f16_to_f32(((uint16_t *)hv)[i]);
        } else {
            ((float *)hk)[i] = a;
            ((float *)hv)[i] = b;
            L.kd[i] = a;
            L.vd[i] = b;
        }
    }
    CK(cudaMemcpy(L.dev[kc], hk, L.g->tensors[kc].nbytes, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(L.dev[vc], hv, L.g->tensors[vc].nbytes, cudaMemcpyHostToDevice));
    free(hk);
    free(hv);
    int32_t step[QG_STEP_N] = {T, p0 + T, 0, 0};
    CK(cudaMalloc(&L.d_step, sizeof step));
    CK(cudaMemcpy(L.d_step, step, sizeof step, cudaMemcpyHostToDevice));
    return L;
}

static void lab_free(lab *L) {
    for (int i = 0; i < 8; i++)
        if (L->dev[i]) cudaFree(L->dev[i]);
    cudaFree(L->d_step);
    free(L->hq);
    free(L->kd);
    free(L->vd);
    free(L->hpos);
    qg_graph_free(L->g);
}

static int launch(const lab *L, bool f32, int n_sm) {
    qg_cuda_launch l;
    memset(&l, 0, sizeof l);
    l.g = L->g;
    l.n = &L->g->nodes[L->node];
    l.dev = L->dev;
    l.step = L->d_step;
    l.o.f32_prefill = f32;
    l.o.n_sm = n_sm;
    l.skip_append = true;
    return qg_cuda_op_launch(&l);
}

/* Worst |o - ref| / tolerance over 40 tokens (all heads); -1 if an element
 * is not finite. */
static double check(const lab *L, const float *o) {
    const int hd = L->hd, nh = L->nh, G = L->nh / L->nkv;
    const int64_t Dq = (int64_t)hd * nh, Dkv = (int64_t)hd * L->nkv;
    const double scale = 1.0 / sqrt((double)hd);
    double worst = 0;
    double *s = (double *)malloc(sizeof(double) * L->C);
    for (int k = 0; k < 40; k++) {
        const int t = k < 39 ? k * (L->T / 39) : L->T - 1;
        const int nkv = L->hpos[t] + 1;
        for (int h = 0; h < nh; h++) {
            const float *q = L->hq + t * Dq + h * hd;
            const int64_t koff = (int64_t)(h / G) * hd;
            double mx = -INFINITY, qa = 0;
            for (int j = 0; j < nkv; j++) {
                double d = 0, da = 0;
                for (int i = 0; i < hd; i++) {
                    d += q[i] * L->kd[j * Dkv + koff + i];
                    da += fabs(q[i] * L->kd[j * Dkv + koff + i]);
                }
                s[j] = d * scale;
                mx = s[j] > mx ? s[j] : mx;
                qa = da * scale > qa ? da * scale : qa;
            }
            double sum = 0;
            for (int j = 0; j < nkv; j++) sum += (s[j] = exp(s[j] - mx));
            for (int i = 0; i < hd; i++) {
                double acc = 0, aa = 0;
                for (int j = 0; j < nkv; j++) {
                    const double v = L->vd[j * Dkv + koff + i];
                    acc += s[j] * v;
                    aa += s[j] * fabs(v);
                }
                const double ref = acc / sum, tol = 1e-5 * (1 + qa) * (aa / sum) + 1e-6;
                const double y = o[t * Dq + h * hd + i];
                if (!isfinite(y)) {
                    free(s);
                    return -1;
                }
                worst = fmax(worst, fabs(y - ref) / tol);
            }
        }
    }
    free(s);
    return worst;
}

static void run(lab_rng *rng, qg_dtype ct, int p0, int reps, int n_sm) {
    const int T = 512, hd = 128, nh = 32, nkv = 4;
    lab L = lab_new(rng, ct, T, p0, hd, nh, nkv);
    const int64_t Dq = (int64_t)hd * nh;
    double work = 0;
    for (int t = 0; t < T; t++) work += 4.0 * hd * nh * (L.hpos[t] + 1);
    float *ho = (float *)malloc(sizeof(float) * Dq * T);
    const int o = L.g->nodes[L.node].out[0];
    for (int v = 0; v < 2; v++) {
        const bool f32 = v == 0;
        CK(cudaMemset(L.dev[o], 0xFF, sizeof(float) * Dq * T));
        CK((cudaError_t)launch(&L, f32, n_sm));
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(ho, L.dev[o], sizeof(float) * Dq * T, cudaMemcpyDeviceToHost));
        const double worst = check(&L, ho);
        cudaEvent_t a, b;
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        for (int r = 0; r < 3; r++) CK((cudaError_t)launch(&L, f32, n_sm));
        CK(cudaEventRecord(a));
        for (int r = 0; r < reps; r++) CK((cudaError_t)launch(&L, f32, n_sm));
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, a, b));
        const double us = ms * 1e3 / reps;
        printf("  %-4s n_tok %d KV %4d %-3s %-3s %10.2f %9.1f   %s (worst %.3f of tol)\n",
               qg_dtype_name(ct), T, p0 + T, v ? "v2" : "v1", v ? "tc" : "f32", us,
               work / (us * 1e-6) / 1e12, worst >= 0 && worst <= 1 ? "ok" : "WRONG", worst);
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
    free(ho);
    lab_free(&L);
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 50;
    cudaDeviceProp prop;
    if (!lab_device(&prop)) return 0;
    lab_rng rng = {0x5eed};
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    printf("prefill attention, 32/4 heads, head_dim 128 (us per launch; TFLOP/s of the causal work)\n");
    printf("  %-4s %-18s %-3s %-3s %10s %9s   %s\n", "kv", "shape", "ver", "", "us", "TFLOP/s", "check");
    const qg_dtype cts[2] = {QG_F16, QG_F32};
    for (int c = 0; c < 2; c++)
        for (int p0 = 0; p0 <= 512; p0 += 512) run(&rng, cts[c], p0, reps, prop.multiProcessorCount);
    return 0;
}
