/*
 * op_gemm.cu - tiled products for prefill graphs, dense and grouped by
 * expert, and the device-side expert lists.
 *
 * Q4_K / Q6_K weights take the integer tensor-core products of
 * op_gemm_i8.cu instead (qg_cuda_gemm_i8.cuh: activations as 24-bit
 * three-plane images built into the tail of the node's scratch, exact
 * s8 x s8 -> s32 sub-block products) unless the executor asks for
 * f32_prefill, turns the integer paths off (QG_CUDA_I8=0), or the
 * product does not fit them (n % 256, x alignment, no image scratch);
 * everything below is the path for the other weight types.
 *
 * A CTA computes a (rows x columns) tile of Y = W X, looping over K in
 * steps of 128 (a whole number of units in every format: see
 * qg_cuda_common.cuh).  Per step it dequantizes the weight tile exactly in
 * f32 (qg_unit<DT>::decode) into shared memory and stages the X columns:
 *   k_gemm_f16  weight and x tiles each split into two f16 parts, hi =
 *               f16(v) and lo = f16(v - hi), and WMMA 16x16x16 products
 *               hi*hi + hi*lo + lo*hi into f32 accumulators (about 22 bits
 *               of each operand: f32-class results at tensor-core speed);
 *               64 rows x 64 (dense) or 32 (dual, grouped) columns, 4 warps;
 *   k_gemm_f32  f32 tiles, f32 FMAs (the exact path: F32 weights, or the
 *               executor's f32_prefill); 16 rows x 32 columns.
 * Columns: dense products take columns blockIdx.y*BN.. of the live tokens
 * (n_tok from the step input); grouped products take tile blockIdx.y of
 * the device-built list (expert e, offset, count): column j is assignment
 * a = asg[off + j], read from x column a / xdiv and written to y column a.
 * "dual" tiles multiply the same X by gate and up and write
 * silu(gate x) * (up x).  An output element is computed by one thread
 * group in a fixed order whatever tile it lands in, so the grouping order
 * does not change results.
 */
#include "qg_cuda_gemm_i8.cuh"
#include "qg_cuda_internal.cuh"

#include <mma.h>

using namespace nvcuda;

#define GM_BK 128

struct gm_args {
    const uint8_t *w, *w2;
    size_t rb, rb2, es, es2;
    int n, m;
    const float *x;
    int ldx;
    float *y;
    int ldy;
    const float *add;
    const int32_t *step;
    const int32_t *tiles, *asg;
    int xdiv;
};

/* This CTA's columns: colx / coly (-1 past the end), and the expert's
 * weights.  false: no work (uniform over the block). */
template <int BN>
__device__ __forceinline__ bool gm_columns(const gm_args &a, int *colx, int *coly,
                                           const uint8_t **w, const uint8_t **w2) {
    if (a.tiles) {
        if ((int)blockIdx.y >= a.tiles[0]) return false;
        const int32_t *t = a.tiles + 1 + 3 * blockIdx.y;
        const int e = t[0], off = t[1], cnt = t[2];
        *w = a.w + (size_t)e * a.es;
        *w2 = a.w2 ? a.w2 + (size_t)e * a.es2 : nullptr;
        for (int j = threadIdx.x; j < BN; j += blockDim.x) {
            if (j < cnt) {
                const int as = a.asg[off + j];
                colx[j] = as / a.xdiv;
                coly[j] = as;
            } else {
                colx[j] = coly[j] = -1;
            }
        }
    } else {
        const int n_tok = a.step[QG_STEP_N_TOK], c0 = blockIdx.y * BN;
        if (c0 >= n_tok) return false;
        *w = a.w;
        *w2 = a.w2;
        for (int j = threadIdx.x; j < BN; j += blockDim.x) colx[j] = coly[j] = c0 + j < n_tok ? c0 + j : -1;
    }
    return true;
}

/* ---- f16 tensor cores, split in two parts ------------------------------ */

/* Bytes of dynamic shared memory of k_gemm_f16<., DUAL, BN>: hi and lo
 * tiles of the weights (NM x 64 rows) and of the columns (BN), rows of
 * GM_BK + 8 halves. */
static constexpr size_t gm_f16_smem(bool dual, int bn) {
    return (size_t)(2 * (dual ? 2 : 1) * 64 + 2 * bn) * (GM_BK + 8) * 2;
}

/* Split v into hi = f16(v) and lo = f16(v - hi): hi + lo carries about 22
 * bits of v (the lo part is subnormal, with 2^-25 absolute resolution, when
 * |v - hi| < 2^-14). */
__device__ __forceinline__ void split2(float a, float b, half2 *hi, half2 *lo) {
    const half2 h = __floats2half2_rn(a, b);
    const float2 hf = __half22float2(h);
    *hi = h;
    *lo = __floats2half2_rn(a - hf.x, b - hf.y);
}

template <int DT, bool DUAL, int BN>
__global__ void __launch_bounds__(128) k_gemm_f16(gm_args a) {
    constexpr int BM = 64, BK = GM_BK, LDS = BK + 8, NM = DUAL ? 2 : 1, UPR = BK / 32;
    constexpr int WN = BN / 2, FN = WN / 16;
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int colx[BN], coly[BN];
    const uint8_t *w, *w2;
    qg_pdl_wait();
    qg_pdl_trigger();
    if (!gm_columns<BN>(a, colx, coly, &w, &w2)) return;
    __syncthreads();
    half *Wh = (half *)smem;           /* (NM, BM, LDS) hi */
    half *Wl = Wh + NM * BM * LDS;     /* (NM, BM, LDS) lo */
    half *Xh = Wl + NM * BM * LDS;     /* (BN, LDS) hi */
    half *Xl = Xh + BN * LDS;          /* (BN, LDS) lo */
    const int tid = threadIdx.x, warp = tid >> 5, wm = warp & 1, wn = warp >> 1;
    const int row0 = blockIdx.x * BM, U = a.n / 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NM][2][FN];
#pragma unroll
    for (int q = 0; q < NM; q++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < FN; j++) wmma::fill_fragment(acc[q][i][j], 0.0f);

    constexpr int NU = NM * BM * UPR / 128; /* weight units per thread per step */
    constexpr int NX = BN * BK / 4 / 128;   /* float4 of x per thread per step */
    for (int k0 = 0; k0 < a.n; k0 += BK) {
        /* weights: read-only loads (hoistable past the shared stores) */
#pragma unroll
        for (int q = 0; q < NU; q++) {
            const int idx = tid + 128 * q, mat = idx / (BM * UPR), rem = idx - mat * BM * UPR;
            const int r = rem / UPR, uu = rem - r * UPR;
            const int gr = row0 + r, gu = k0 / 32 + uu;
            float v[32];
            int st[4];
            if (gr < a.m && gu < U) {
                qg_unit<DT>::decode(mat ? w2 + (size_t)gr * a.rb2 : w + (size_t)gr * a.rb, gu, v, st);
            } else {
                constexpr int RL = 32 / qg_unit<DT>::NR;
#pragma unroll
                for (int i = 0; i < 4; i++) st[i] = k0 + 32 * uu + i * RL;
#pragma unroll
                for (int i = 0; i < 32; i++) v[i] = 0.0f;
            }
            half *dh = Wh + (mat * BM + r) * LDS - k0, *dl = Wl + (mat * BM + r) * LDS - k0;
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const int e = qg_unit_elem<DT>(st, 2 * i);
                split2(v[2 * i], v[2 * i + 1], (half2 *)(dh + e), (half2 *)(dl + e));
            }
        }
        float4 xv[NX];
#pragma unroll
        for (int q = 0; q < NX; q++) {
            const int idx = tid + 128 * q, j = idx / (BK / 4), q4 = idx - j * (BK / 4);
            const int c = colx[j];
            xv[q] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (c >= 0 && k0 + 4 * q4 < a.n) xv[q] = __ldg((const float4 *)(a.x + (size_t)c * a.ldx + k0 + 4 * q4));
        }
#pragma unroll
        for (int q = 0; q < NX; q++) {
            const int idx = tid + 128 * q, j = idx / (BK / 4), q4 = idx - j * (BK / 4);
            half2 *h = (half2 *)(Xh + j * LDS + 4 * q4), *lo = (half2 *)(Xl + j * LDS + 4 * q4);
            split2(xv[q].x, xv[q].y, h, lo);
            split2(xv[q].z, xv[q].w, h + 1, lo + 1);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> bh[FN], bl[FN];
#pragma unroll
            for (int ni = 0; ni < FN; ni++) {
                wmma::load_matrix_sync(bh[ni], Xh + (wn * WN + 16 * ni) * LDS + kk, LDS);
                wmma::load_matrix_sync(bl[ni], Xl + (wn * WN + 16 * ni) * LDS + kk, LDS);
            }
#pragma unroll
            for (int mat = 0; mat < NM; mat++)
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> ah, al;
                    const int ro = (mat * BM + 32 * wm + 16 * mi) * LDS + kk;
                    wmma::load_matrix_sync(ah, Wh + ro, LDS);
                    wmma::load_matrix_sync(al, Wl + ro, LDS);
#pragma unroll
                    for (int ni = 0; ni < FN; ni++) {
                        wmma::mma_sync(acc[mat][mi][ni], al, bh[ni], acc[mat][mi][ni]);
                        wmma::mma_sync(acc[mat][mi][ni], ah, bl[ni], acc[mat][mi][ni]);
                        wmma::mma_sync(acc[mat][mi][ni], ah, bh[ni], acc[mat][mi][ni]);
                    }
                }
        }
        __syncthreads();
    }
    float *Cs = (float *)smem; /* (NM, BN, BM): column-major tiles */
#pragma unroll
    for (int mat = 0; mat < NM; mat++)
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < FN; ni++)
                wmma::store_matrix_sync(Cs + mat * BN * BM + (wn * WN + 16 * ni) * BM + 32 * wm + 16 * mi,
                                        acc[mat][mi][ni], BM, wmma::mem_col_major);
    __syncthreads();
    for (int idx = tid; idx < BM * BN; idx += 128) {
        const int j = idx / BM, r = idx - j * BM, c = coly[j], gr = row0 + r;
        if (c < 0 || gr >= a.m) continue;
        float v = Cs[j * BM + r];
        if (DUAL) v = qg_silu(v) * Cs[BN * BM + j * BM + r];
        const size_t o = (size_t)c * a.ldy + gr;
        if (a.add) v = a.add[o] + v;
        a.y[o] = v;
    }
}

/* ---- f32 (exact weights, f32 FMAs) ------------------------------------ */

template <int DT, bool DUAL>
__global__ void __launch_bounds__(128) k_gemm_f32(gm_args a) {
    constexpr int BM = 16, BN = 32, BK = GM_BK, NM = DUAL ? 2 : 1, UPR = BK / 32;
    __shared__ float Ws[NM][BK][BM + 1];
    __shared__ float Xs[BK][BN];
    __shared__ int colx[BN], coly[BN];
    const uint8_t *w, *w2;
    qg_pdl_wait();
    qg_pdl_trigger();
    if (!gm_columns<BN>(a, colx, coly, &w, &w2)) return;
    __syncthreads();
    const int tid = threadIdx.x, tr = tid & 15, tc = tid >> 4; /* row, 4-column group */
    const int row0 = blockIdx.x * BM, U = a.n / 32;
    float acc[NM][4];
#pragma unroll
    for (int q = 0; q < NM; q++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[q][i] = 0.0f;
    /* each step's weight unit (one per thread: NM * BM * UPR <= 128) and x
     * columns are loaded into registers one step ahead, so their latency
     * hides behind the previous step's FMAs (the FMAs and their order are
     * unchanged) */
    static_assert(NM * BM * UPR <= 128, "one weight unit per thread");
    constexpr int NX = BN * BK / 4 / 128; /* float4 of x per thread */
    const bool has_unit = tid < NM * BM * UPR;
    const int umat = tid / (BM * UPR), urem = tid - umat * (BM * UPR);
    const int ur = urem / UPR, uu = urem - ur * UPR, ugr = row0 + ur;
    const uint8_t *urow = !has_unit || ugr >= a.m ? nullptr
                          : umat ? w2 + (size_t)ugr * a.rb2
                                 : w + (size_t)ugr * a.rb;
    float v[32];
    int st[4];
    bool vok = false;
    float4 xv[NX];
    auto load = [&](int k0) {
        const int gu = k0 / 32 + uu;
        vok = urow && gu < U;
        if (vok) qg_unit<DT>::decode(urow, gu, v, st);
#pragma unroll
        for (int q = 0; q < NX; q++) {
            const int idx = tid + 128 * q, j = idx / (BK / 4), k4 = idx - j * (BK / 4);
            const int c = colx[j];
            xv[q] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (c >= 0 && k0 + 4 * k4 < a.n) xv[q] = *(const float4 *)(a.x + (size_t)c * a.ldx + k0 + 4 * k4);
        }
    };
    load(0);
    for (int k0 = 0; k0 < a.n; k0 += BK) {
        if (has_unit) {
            if (vok) {
#pragma unroll
                for (int i = 0; i < 32; i++) Ws[umat][qg_unit_elem<DT>(st, i) - k0][ur] = v[i];
            } else {
#pragma unroll
                for (int i = 0; i < 32; i++) Ws[umat][32 * uu + i][ur] = 0.0f;
            }
        }
#pragma unroll
        for (int q = 0; q < NX; q++) {
            const int idx = tid + 128 * q, j = idx / (BK / 4), k4 = idx - j * (BK / 4);
            Xs[4 * k4][j] = xv[q].x;
            Xs[4 * k4 + 1][j] = xv[q].y;
            Xs[4 * k4 + 2][j] = xv[q].z;
            Xs[4 * k4 + 3][j] = xv[q].w;
        }
        __syncthreads();
        if (k0 + BK < a.n) load(k0 + BK);
#pragma unroll 8
        for (int k = 0; k < BK; k++) {
#pragma unroll
            for (int mat = 0; mat < NM; mat++) {
                const float wv = Ws[mat][k][tr];
#pragma unroll
                for (int i = 0; i < 4; i++) acc[mat][i] = fmaf(wv, Xs[k][tc * 4 + i], acc[mat][i]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = coly[tc * 4 + i], gr = row0 + tr;
        if (c < 0 || gr >= a.m) continue;
        float v = acc[0][i];
        if (DUAL) v = qg_silu(v) * acc[NM - 1][i];
        const size_t o = (size_t)c * a.ldy + gr;
        if (a.add) v = a.add[o] + v;
        a.y[o] = v;
    }
}

/* ---- launchers --------------------------------------------------------- */

static gm_args gm_make(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n,
                       const float *x, int ldx, const float *add) {
    gm_args a = {};
    a.w = w->w;
    a.rb = w->rb;
    a.es = w->es;
    if (w2) {
        a.w2 = w2->w;
        a.rb2 = w2->rb;
        a.es2 = w2->es;
    }
    a.n = n;
    a.m = w->m;
    a.x = x;
    a.ldx = ldx;
    a.y = w->y;
    a.ldy = w->ldy;
    a.add = add;
    a.step = l->step;
    return a;
}

static bool gm_f32(const qg_cuda_launch *l, qg_dtype t) { return t == QG_F32 || l->o.f32_prefill; }

/* Does the integer path (op_gemm_i8.cu) take this product?  It also needs
 * x 16-byte aligned with a column stride of a multiple of 4 floats, and
 * its image scratch (qg_i8g_image; without it the f16 kernels run). */
static bool gm_i8(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n,
                  const float *x, int ldx) {
    return qg_i8g_ok(l, w, w2, n) && ((uintptr_t)x & 15) == 0 && ldx % 4 == 0 && l->g && l->n;
}

/* Launch a split-f16 gemm with `smem` bytes of dynamic shared memory
 * (qg_cu_gemm_prepare raised the limit above the 48 KiB default). */
static cudaError_t gm_f16_launch(const qg_cuda_launch *l, void (*k)(gm_args), dim3 grid,
                                 size_t smem, const gm_args &a) {
    return qg_cu_launch(l, k, grid, dim3(128), smem, a);
}

template <int DT> static cudaError_t gm_prepare_dt() {
    cudaError_t e = cudaFuncSetAttribute((const void *)k_gemm_f16<DT, true, 32>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)gm_f16_smem(true, 32));
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute((const void *)k_gemm_f16<DT, false, 64>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gm_f16_smem(false, 64));
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute((const void *)k_gemm_f16<DT, false, 32>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gm_f16_smem(false, 32));
    return e;
}

cudaError_t qg_cu_gemm_prepare(void) {
    const cudaError_t ei = qg_i8g_prepare();
    if (ei != cudaSuccess) return ei;
    const qg_dtype all[] = {QG_F32, QG_F16, QG_BF16, QG_Q8_0, QG_Q4_0, QG_Q4_K, QG_Q5_K, QG_Q6_K};
    for (qg_dtype t : all) {
        cudaError_t e = cudaSuccess;
        QG_CUDA_DISPATCH_DT(t, e = gm_prepare_dt<DT>());
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

/* Launch over grid.y column tiles; bn_dense: the f16 kernel's BN when not
 * grouped and not dual. */
static cudaError_t gm_launch(const qg_cuda_launch *l, qg_dtype t, bool dual, const gm_args &a,
                             int col_tiles_64, int col_tiles_32) {
    cudaError_t e = cudaSuccess;
    if (gm_f32(l, t)) {
        const dim3 grid((a.m + 15) / 16, col_tiles_32);
        if (dual) {
            QG_CUDA_DISPATCH_DT(t, e = qg_cu_launch(l, k_gemm_f32<DT, true>, grid, dim3(128), 0, a));
        } else {
            QG_CUDA_DISPATCH_DT(t, e = qg_cu_launch(l, k_gemm_f32<DT, false>, grid, dim3(128), 0, a));
        }
    } else if (dual) {
        const dim3 grid((a.m + 63) / 64, col_tiles_32);
        constexpr size_t sm = gm_f16_smem(true, 32);
        QG_CUDA_DISPATCH_DT(t, e = gm_f16_launch(l, k_gemm_f16<DT, true, 32>, grid, sm, a));
    } else if (col_tiles_64 > 0) {
        const dim3 grid((a.m + 63) / 64, col_tiles_64);
        constexpr size_t sm = gm_f16_smem(false, 64);
        QG_CUDA_DISPATCH_DT(t, e = gm_f16_launch(l, k_gemm_f16<DT, false, 64>, grid, sm, a));
    } else {
        const dim3 grid((a.m + 63) / 64, col_tiles_32);
        constexpr size_t sm = gm_f16_smem(false, 32);
        QG_CUDA_DISPATCH_DT(t, e = gm_f16_launch(l, k_gemm_f16<DT, false, 32>, grid, sm, a));
    }
    return e;
}

cudaError_t qg_cu_gemm_dense(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                             int n, const float *x, int ldx, const float *add) {
    if (w2 && w2->type != w->type) return cudaErrorInvalidValue;
    if (gm_i8(l, w, w2, n, x, ldx)) {
        uint8_t *img = qg_i8g_image(l, (size_t)l->g->n_tok_max * qg_i8p_col_bytes(n));
        if (img) return qg_i8g_dense(l, w, w2, n, x, ldx, add, img);
    }
    const gm_args a = gm_make(l, w, w2, n, x, ldx, add);
    const int T = l->g->n_tok_max;
    return gm_launch(l, w->type, w2 != nullptr, a, (T + 63) / 64, (T + 31) / 32);
}

cudaError_t qg_cu_gemm_multi(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, int n,
                             const float *x, int ldx, const float *add) {
    bool i8 = nm >= 1 && nm <= 3;
    for (int i = 0; i < nm && i8; i++) i8 = gm_i8(l, &mats[i], nullptr, n, x, ldx);
    if (i8) {
        uint8_t *img = qg_i8g_image(l, (size_t)l->g->n_tok_max * qg_i8p_col_bytes(n));
        if (img) return qg_i8g_multi(l, mats, nm, n, x, ldx, add, img);
    }
    for (int i = 0; i < nm; i++) {
        const cudaError_t e = qg_cu_gemm_dense(l, &mats[i], nullptr, n, x, ldx, i == 0 ? add : nullptr);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

cudaError_t qg_cu_gemm_grouped(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                               int n, const float *x, int ldx, const qg_cu_groups *gr) {
    if (w2 && w2->type != w->type) return cudaErrorInvalidValue;
    const int K = qg_i8g_node_k(l->g, l->n);
    if (gm_i8(l, w, w2, n, x, ldx) && K > 0 && gr->xdiv > 0 && K % gr->xdiv == 0) {
        const size_t cols = (size_t)l->g->n_tok_max * (size_t)(K / gr->xdiv);
        uint8_t *img = qg_i8g_image(l, cols * qg_i8p_col_bytes(n));
        if (img) return qg_i8g_grouped(l, w, w2, n, x, ldx, gr, img);
    }
    gm_args a = gm_make(l, w, w2, n, x, ldx, nullptr);
    a.tiles = gr->tiles;
    a.asg = gr->asg;
    a.xdiv = gr->xdiv;
    return gm_launch(l, w->type, w2 != nullptr, a, 0, gr->max_tiles);
}

/* ---- expert lists ------------------------------------------------------ */

#define LISTS_XMAX 1024

/* One block: count the n_tok*K assignments per expert, offsets, the tile
 * list (QG_CU_GROUP_BN columns per tile), then the assignments grouped by
 * expert (order within an expert: arrival of atomics; see the file
 * comment).  Ids outside [0, X) are dropped. */
__global__ void __launch_bounds__(1024)
k_moe_lists(const int32_t *__restrict__ ids, const int32_t *__restrict__ step, int K, int X,
            int32_t *__restrict__ off, int32_t *__restrict__ asg, int32_t *__restrict__ tiles) {
    __shared__ int cnt[LISTS_XMAX], base[LISTS_XMAX], tb[LISTS_XMAX], cur[LISTS_XMAX];
    qg_pdl_wait();
    qg_pdl_trigger();
    const int n = step[QG_STEP_N_TOK] * K;
    for (int e = threadIdx.x; e < X; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int e = ids[i];
        if (e >= 0 && e < X) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0, t = 0;
        for (int e = 0; e < X; e++) {
            base[e] = o;
            tb[e] = t;
            o += cnt[e];
            t += (cnt[e] + QG_CU_GROUP_BN - 1) / QG_CU_GROUP_BN;
        }
        off[X] = o;
        tiles[0] = t;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < X; e += blockDim.x) {
        off[e] = base[e];
        cur[e] = base[e];
        const int nt = (cnt[e] + QG_CU_GROUP_BN - 1) / QG_CU_GROUP_BN;
        for (int j = 0; j < nt; j++) {
            int32_t *t = tiles + 1 + 3 * (tb[e] + j);
            t[0] = e;
            t[1] = base[e] + j * QG_CU_GROUP_BN;
            t[2] = min(QG_CU_GROUP_BN, cnt[e] - j * QG_CU_GROUP_BN);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int e = ids[i];
        if (e >= 0 && e < X) asg[atomicAdd(&cur[e], 1)] = i;
    }
}

cudaError_t qg_cu_moe_lists(const qg_cuda_launch *l, const int32_t *ids, int K, int X,
                            int32_t *off, int32_t *asg, int32_t *tiles) {
    if (X > LISTS_XMAX) return cudaErrorInvalidValue;
    return qg_cu_launch(l, k_moe_lists, dim3(1), dim3(1024), 0, ids, l->step, K, X, off, asg, tiles);
}

/* ---- combine ----------------------------------------------------------- */

/* y[:, t] = add[:, t] + sum_{k ascending} wts[k,t] * yb[:, t*K+k]; the
 * products and sums rounded one by one as the CPU's aggregate does. */
__global__ void __launch_bounds__(256)
k_moe_combine(const float *__restrict__ yb, const int32_t *__restrict__ ids,
              const float *__restrict__ wts, int K, int X, int E, const float *__restrict__ add,
              const int32_t *__restrict__ step, float *__restrict__ y) {
    qg_pdl_wait();
    qg_pdl_trigger();
    const int t = blockIdx.y;
    if (t >= step[QG_STEP_N_TOK]) return;
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= E) return;
    float acc = 0.0f;
    for (int k = 0; k < K; k++) {
        const int e = ids[t * K + k];
        const float v = (e >= 0 && e < X) ? yb[((size_t)t * K + k) * E + r] : __int_as_float(0x7fc00000);
        acc = __fadd_rn(acc, __fmul_rn(wts[t * K + k], v));
    }
    const size_t o = (size_t)t * E + r;
    y[o] = add ? add[o] + acc : acc;
}

cudaError_t qg_cu_moe_combine(const qg_cuda_launch *l, const float *yb, const int32_t *ids,
                              const float *wts, int K, int X, int E, const float *add, float *y) {
    const dim3 grid((E + 255) / 256, l->g->n_tok_max);
    return qg_cu_launch(l, k_moe_combine, grid, dim3(256), 0, yb, ids, wts, K, X, E, add, l->step, y);
}
