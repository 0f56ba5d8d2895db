/*
 * op_gemm_i8.cu - prefill products over Q4_K / Q6_K weights on the integer
 * tensor cores: y (m, cols) = W x, dual silu(W x) * (W2 x), optional
 * residual, dense over the live tokens or grouped by expert (numerics and
 * the image format: qg_cuda_gemm_i8.cuh).
 *
 * Two kernels per product:
 *   k_i8p_image  one warp per (column, 256-element super-block): the
 *                column's plane image into device scratch, once per product
 *   k_gemm_i8    a CTA of 4 warps takes 64 weight rows x BN = 8 NW columns;
 *                each warp owns 16 rows (of both matrices when dual) and all
 *                BN columns, so warps never synchronize after the column
 *                table is set up.  Per step of 128 elements (half a
 *                super-block) a warp holds its rows' quants in registers
 *                (the next step's loads in flight), and for each 8-column
 *                n-tile and each sub-block runs three mmas (planes a, b, c)
 *                that share the A fragment, reading B straight from the
 *                image (8 bytes per lane, L1-resident across the 4 warps):
 *                  Q4_K  m16n8k32 per 32-element sub-block, 6-bit scales
 *                        as integer multiply-adds, the min term
 *                        dmin * sum_j m_j * sums_j in f32
 *                  Q6_K  m16n8k16 per 16-element sub-block, int8 scales
 *                The step's integer sums (|I| < 2^24 for Q4_K, < 2^27 for
 *                Q6_K) go to f32 as d * s_col * (65536 Ia + 256 Ib + Ic).
 * Variant 1 (lab_gemm v3; the product runs QG_I8G_VARIANT) stages each
 * step's B of the CTA's 32 columns in shared memory instead (cp.async,
 * double-buffered, one barrier per step): the 8 columns of a fragment load
 * are 8 different image lines in global memory, one padded shared row each
 * here.
 * Fragment layouts (PTX ISA, mma.m16n8k32 / m16n8k16 .s8, g = lane / 4,
 * t = lane % 4): A a0 (row g, k 4t..4t+3), a1 (row g+8, same k), a2 / a3
 * (rows g / g+8, k 16+4t..) for k32; B b0 (k 4t.., column g), b1 (k 16+4t..);
 * C c0, c1 (row g, columns 2t, 2t+1), c2, c3 (row g+8).  An output is
 * computed by one lane in a fixed order whatever tile it lands in.
 */
#include "qg_cuda_gemm_i8.cuh"
#include "qg_cuda_i8.cuh"

#include <type_traits>

/* Rows per CTA (4 warps x 16). */
#define I8G_BM 64
/* Load the next step's weights during this one (registers) or not. */
#ifndef I8G_PREFETCH
#define I8G_PREFETCH 0
#endif
/* Elements per step. */
#define I8G_STEP 128

static_assert(QG_CU_GROUP_BN == 32, "grouped tiles are 4 n-tiles of 8 columns");

/* ---- images -------------------------------------------------------------- */

/* Images of x columns 0 .. n_tok * cpt - 1 (x: (n, *) with column stride
 * ldx, 16-byte aligned, ldx % 4 == 0) into img.  Lane l of the warp of
 * (column c, super-block sb) takes group j = 8 sb + l / 4, elements
 * 4t..4t+3 and 16+4t..16+4t+3 of it (t = l % 4): exactly plane bytes
 * 8t..8t+7 of the group. */
__global__ void __launch_bounds__(256)
k_i8p_image(const float *__restrict__ x, int ldx, int n, int cpt, const int32_t *__restrict__ step,
            uint8_t *__restrict__ img) {
    qg_pdl_wait();
    const int lane = threadIdx.x & 31, t = lane & 3, jl = lane >> 2;
    const int nsb = n / 256, items = step[QG_STEP_N_TOK] * cpt * nsb;
    const size_t cb = qg_i8p_col_bytes(n);
    const int nw = gridDim.x * (blockDim.x >> 5);
    for (int q = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); q < items; q += nw) {
        const int c = q / nsb, sb = q - c * nsb, j = 8 * sb + jl;
        const float *p = x + (size_t)c * ldx + 32 * j + 4 * t;
        const float4 u0 = *(const float4 *)p, u1 = *(const float4 *)(p + 16);
        const float v[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
        float mx = 0.0f;
        bool bad = false;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            mx = fmaxf(mx, fabsf(v[i]));
            bad |= !(fabsf(v[i]) <= 3.402823466e38f); /* NaN or infinite */
        }
        mx = qg_warp_max(mx);
        bad = __any_sync(0xffffffffu, bad);
        const float inv = (mx > 0.0f && !bad) ? QG_I8_XMAX / mx : 0.0f;
        uint32_t pa[2] = {0, 0}, pb[2] = {0, 0}, pc[2] = {0, 0};
        int sx = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int X = __float2int_rn(v[i] * inv);
            sx += X;
            uint32_t da, db, dc;
            qg_i8_digits(X, &da, &db, &dc);
            pa[i >> 2] |= da << (8 * (i & 3));
            pb[i >> 2] |= db << (8 * (i & 3));
            pc[i >> 2] |= dc << (8 * (i & 3));
        }
        sx += __shfl_xor_sync(0xffffffffu, sx, 1);
        sx += __shfl_xor_sync(0xffffffffu, sx, 2);
        uint8_t *col = img + (size_t)c * cb;
        uint8_t *gp = col + (size_t)j * 96 + 8 * t;
        *(uint2 *)gp = make_uint2(pa[0], pa[1]);
        *(uint2 *)(gp + 32) = make_uint2(pb[0], pb[1]);
        *(uint2 *)(gp + 64) = make_uint2(pc[0], pc[1]);
        const float s = bad ? __int_as_float(0x7fc00000) : mx / QG_I8_XMAX;
        float *sums = (float *)(col + (size_t)3 * n);
        if (t == 0) sums[j] = (float)sx * s;
        if (lane == 0) sums[n / 32 + sb] = s;
    }
}

/* ---- weight fragments of one step --------------------------------------- */

/* Q4_K, step h of super-block sb (sub-blocks 4h..4h+3, qs pairs 2h, 2h+1):
 * header of rows g, g+8 and qs words 32c + 4t, 32c + 16 + 4t. */
struct i8g_q4 {
    uint4 hd[2];
    uint32_t q[2][2][2]; /* [row g, g+8][pair 2h + cc][k 4t.. / 16+4t..] */
};

__device__ __forceinline__ void i8g_load(i8g_q4 &f, const uint8_t *r0, const uint8_t *r8, int s) {
    const int t = threadIdx.x & 3, sb = s >> 1, h = s & 1;
    const uint8_t *r[2] = {r0 + (size_t)sb * 144, r8 + (size_t)sb * 144};
#pragma unroll
    for (int k = 0; k < 2; k++) {
        f.hd[k] = qg_ld_v4(r[k]);
#pragma unroll
        for (int cc = 0; cc < 2; cc++) {
            const uint8_t *qs = r[k] + 16 + 32 * (2 * h + cc) + 4 * t;
            f.q[k][cc][0] = __ldg((const uint32_t *)qs);
            f.q[k][cc][1] = __ldg((const uint32_t *)(qs + 16));
        }
    }
}

/* Q6_K, step h = half n of super-block sb (sub-blocks 8h..8h+7): ql words
 * 64h + 32(q%2) + 16i + 4t, qh words 128 + 32h + 16i + 4t, the eight int8
 * scales 192 + 8h.., d (210-byte blocks: 16-bit loads). */
struct i8g_q6 {
    uint32_t ql[2][2][2]; /* [row][q % 2][i] */
    uint32_t qh[2][2];    /* [row][i] */
    uint32_t sc[2][2];    /* [row][scales 8h..8h+3, 8h+4..8h+7] */
    uint32_t d[2];
};

__device__ __forceinline__ void i8g_load(i8g_q6 &f, const uint8_t *r0, const uint8_t *r8, int s) {
    const int t = threadIdx.x & 3, sb = s >> 1, h = s & 1;
    const uint8_t *r[2] = {r0 + (size_t)sb * 210, r8 + (size_t)sb * 210};
#pragma unroll
    for (int k = 0; k < 2; k++) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            f.ql[k][0][i] = qg_ld_u32a2(r[k] + 64 * h + 16 * i + 4 * t);
            f.ql[k][1][i] = qg_ld_u32a2(r[k] + 64 * h + 32 + 16 * i + 4 * t);
            f.qh[k][i] = qg_ld_u32a2(r[k] + 128 + 32 * h + 16 * i + 4 * t);
        }
        f.sc[k][0] = qg_ld_u32a2(r[k] + 192 + 8 * h);
        f.sc[k][1] = qg_ld_u32a2(r[k] + 196 + 8 * h);
        f.d[k] = qg_ld_u16(r[k] + 208);
    }
}

/* B words: from the image in global memory (read-only path) or from the
 * CTA's shared-memory copy of the step (SMB). */
template <bool SMB> __device__ __forceinline__ uint2 i8g_ldb(const uint8_t *p) {
    if (SMB) return *(const uint2 *)p;
    return __ldg((const uint2 *)p);
}

/* ---- one step of one n-tile ----------------------------------------------
 * acc[0..3] (rows g, g, g+8, g+8 x columns 2t, 2t+1) += this step's share.
 * bp: the image of B column g at the step's first group, + 8t; sx: scales
 * of columns 2t, 2t+1; sm: their sums of the step's four groups (Q4_K). */

template <bool SMB>
__device__ __forceinline__ void i8g_tile(const i8g_q4 &f, int h, const uint8_t *bp,
                                         const float (&sx)[2], const float4 (&sm)[2],
                                         float (&acc)[4]) {
    const uint32_t M = 0x0F0F0F0Fu;
    uint32_t scw[2], mw[2];
#pragma unroll
    for (int k = 0; k < 2; k++) {
        const uint4 hd = f.hd[k];
        scw[k] = h ? ((hd.w & M) | ((hd.y >> 2) & 0x30303030u)) : (hd.y & 0x3F3F3F3Fu);
        mw[k] = h ? (((hd.w >> 4) & M) | ((hd.z >> 2) & 0x30303030u)) : (hd.z & 0x3F3F3F3Fu);
    }
    int I[3][4];
#pragma unroll
    for (int p = 0; p < 3; p++)
#pragma unroll
        for (int i = 0; i < 4; i++) I[p][i] = 0;
    float mt[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float smv[2][4] = {{sm[0].x, sm[0].y, sm[0].z, sm[0].w}, {sm[1].x, sm[1].y, sm[1].z, sm[1].w}};
#pragma unroll
    for (int jj = 0; jj < 4; jj++) {
        const int cc = jj >> 1, sh = 4 * (jj & 1);
        const uint32_t a0 = (f.q[0][cc][0] >> sh) & M, a1 = (f.q[1][cc][0] >> sh) & M;
        const uint32_t a2 = (f.q[0][cc][1] >> sh) & M, a3 = (f.q[1][cc][1] >> sh) & M;
        const int s0 = (int)((scw[0] >> (8 * jj)) & 0xFFu), s1 = (int)((scw[1] >> (8 * jj)) & 0xFFu);
#pragma unroll
        for (int p = 0; p < 3; p++) {
            const uint2 b = i8g_ldb<SMB>(bp + jj * 96 + 32 * p);
            int d[4] = {0, 0, 0, 0};
            qg_mma_s8_16832(d, a0, a1, a2, a3, b.x, b.y);
            I[p][0] += d[0] * s0;
            I[p][1] += d[1] * s0;
            I[p][2] += d[2] * s1;
            I[p][3] += d[3] * s1;
        }
        const float m0 = (float)((mw[0] >> (8 * jj)) & 0xFFu), m1 = (float)((mw[1] >> (8 * jj)) & 0xFFu);
        mt[0] = fmaf(m0, smv[0][jj], mt[0]);
        mt[1] = fmaf(m0, smv[1][jj], mt[1]);
        mt[2] = fmaf(m1, smv[0][jj], mt[2]);
        mt[3] = fmaf(m1, smv[1][jj], mt[3]);
    }
    const float dd[2] = {qg_h2f(f.hd[0].x & 0xFFFFu), qg_h2f(f.hd[1].x & 0xFFFFu)};
    const float dm[2] = {qg_h2f(f.hd[0].x >> 16), qg_h2f(f.hd[1].x >> 16)};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float v = fmaf(65536.0f, (float)I[0][i], fmaf(256.0f, (float)I[1][i], (float)I[2][i]));
        acc[i] = fmaf(dd[i >> 1] * sx[i & 1], v, fmaf(-dm[i >> 1], mt[i], acc[i]));
    }
}

template <bool SMB>
__device__ __forceinline__ void i8g_tile(const i8g_q6 &f, int h, const uint8_t *bp,
                                         const float (&sx)[2], const float4 (&sm)[2],
                                         float (&acc)[4]) {
    (void)h;
    (void)sm;
    int I[3][4];
#pragma unroll
    for (int p = 0; p < 3; p++)
#pragma unroll
        for (int i = 0; i < 4; i++) I[p][i] = 0;
#pragma unroll
    for (int gq = 0; gq < 4; gq++) {
        /* group gq of the step: sub-blocks 2gq (.x) and 2gq+1 (.y) */
        uint2 b[3];
#pragma unroll
        for (int p = 0; p < 3; p++) b[p] = i8g_ldb<SMB>(bp + gq * 96 + 32 * p);
        const int nsh = gq >= 2 ? 4 : 0, hsh = 2 * gq;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int s8 = 2 * gq + i;
            uint32_t a[2];
            int sc[2];
#pragma unroll
            for (int k = 0; k < 2; k++) {
                const uint32_t v = ((f.ql[k][gq & 1][i] >> nsh) & 0x0F0F0F0Fu) |
                                   (((f.qh[k][i] >> hsh) & 0x03030303u) << 4);
                a[k] = qg_i8_q6_center(v);
                sc[k] = (int)(int8_t)((f.sc[k][s8 >> 2] >> (8 * (s8 & 3))) & 0xFFu);
            }
#pragma unroll
            for (int p = 0; p < 3; p++) {
                int d[4] = {0, 0, 0, 0};
                qg_mma_s8_16816(d, a[0], a[1], i ? b[p].y : b[p].x);
                I[p][0] += d[0] * sc[0];
                I[p][1] += d[1] * sc[0];
                I[p][2] += d[2] * sc[1];
                I[p][3] += d[3] * sc[1];
            }
        }
    }
    const float dd[2] = {qg_h2f(f.d[0]), qg_h2f(f.d[1])};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float v = fmaf(65536.0f, (float)I[0][i], fmaf(256.0f, (float)I[1][i], (float)I[2][i]));
        acc[i] = fmaf(dd[i >> 1] * sx[i & 1], v, acc[i]);
    }
}

/* ---- the product --------------------------------------------------------- */

struct i8g_args {
    const uint8_t *w, *w2;
    size_t rb, rb2, es, es2;
    int n, m;
    const uint8_t *img; /* images, qg_i8p_col_bytes(n) apart */
    float *y;
    int ldy;
    const float *add;
    const int32_t *step;
    const int32_t *tiles, *asg; /* grouped: device tile list; NULL: dense */
    int xdiv;
};

/* Threads of k_gemm_i8: 4 warps, or 8 when dual (warps 0-3 gate, 4-7 up,
 * the same 64 rows). */
__host__ __device__ constexpr int i8g_threads(bool dual) { return dual ? 256 : 128; }

/* Shared-memory copy of one step's B (SMB): per column the 384 image bytes
 * of the step's four groups, columns I8G_SB_LD bytes apart (104 words,
 * 8 mod 32: the 8-byte fragment loads of a half-warp, columns g < 4 and
 * t < 4, hit 32 distinct banks). */
#define I8G_SB_LD 416

__device__ __forceinline__ void i8g_cp16(void *dst, const void *src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void i8g_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void i8g_cp_wait() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

/* SMB: the CTA copies step s's B of its BN columns into sb (16 bytes per
 * thread per turn, all in flight). */
template <int BN>
__device__ __forceinline__ void i8g_stage(const uint8_t *img, size_t cb, const int *s_img, int s,
                                          uint8_t *sb) {
    for (int i = threadIdx.x; i < BN * 24; i += blockDim.x) {
        const int c = i / 24, k = i - c * 24;
        i8g_cp16(sb + c * I8G_SB_LD + 16 * k, img + (size_t)s_img[c] * cb + (size_t)s * 384 + 16 * k);
    }
    i8g_cp_commit();
}

/* SMB: B read from a double-buffered shared-memory copy of each step
 * (every warp of the CTA meets a barrier per step), else straight from the
 * image in global memory (warps independent). */
template <int DT, bool DUAL, int NW, bool SMB>
__global__ void __launch_bounds__(i8g_threads(DUAL), DUAL ? 2 : 4) k_gemm_i8(i8g_args a) {
    constexpr int BN = 8 * NW;
    using frag = typename std::conditional<DT == QG_Q4_K, i8g_q4, i8g_q6>::type;
    __shared__ int s_img[BN], s_y[BN];
    __shared__ float s_up[DUAL ? 4 : 1][NW][4][32]; /* dual: the up warps' results */
    __shared__ __align__(16) uint8_t s_b[SMB ? 2 : 1][SMB ? BN : 1][SMB ? I8G_SB_LD : 16];
    qg_pdl_wait();
    const int warp = threadIdx.x >> 5, mat = DUAL ? warp >> 2 : 0;
    const uint8_t *w = mat ? a.w2 : a.w;
    const size_t rb = mat ? a.rb2 : a.rb;
    if (a.tiles) {
        if ((int)blockIdx.y >= a.tiles[0]) return;
        const int32_t *tl = a.tiles + 1 + 3 * blockIdx.y;
        const int e = tl[0], off = tl[1], cnt = tl[2];
        w += (size_t)e * (mat ? a.es2 : a.es);
        for (int j = threadIdx.x; j < BN; j += blockDim.x) {
            const int as = a.asg[off + (j < cnt ? j : 0)];
            s_img[j] = as / a.xdiv;
            s_y[j] = j < cnt ? as : -1;
        }
    } else {
        const int nt = a.step[QG_STEP_N_TOK], c0 = blockIdx.y * BN;
        if (c0 >= nt) return;
        for (int j = threadIdx.x; j < BN; j += blockDim.x) {
            s_img[j] = min(c0 + j, nt - 1);
            s_y[j] = c0 + j < nt ? c0 + j : -1;
        }
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int r0 = blockIdx.x * I8G_BM + (warp & 3) * 16;
    /* warps past the rows: nothing to do (those that meet barriers below
     * still take part in them and in the copies) */
    if (!DUAL && !SMB && r0 >= a.m) return;
    const bool live = r0 < a.m;
    const int rg = min(r0 + g, a.m - 1), rg8 = min(r0 + g + 8, a.m - 1);
    const uint8_t *wr0 = w + (size_t)rg * rb, *wr8 = w + (size_t)rg8 * rb;
    const size_t cb = qg_i8p_col_bytes(a.n);
    const int S = (live || SMB) ? a.n / I8G_STEP : 0, G = a.n / 32;
    float acc[NW][4];
#pragma unroll
    for (int j = 0; j < NW; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = 0.0f;
    if (SMB) i8g_stage<BN>(a.img, cb, s_img, 0, &s_b[0][0][0]);
#if I8G_PREFETCH
    frag f, fn;
    if (S > 0 && live) i8g_load(f, wr0, wr8, 0);
#endif
    for (int s = 0; s < S; s++) {
        if (SMB) {
            i8g_cp_wait();
            __syncthreads(); /* step s landed; step s-1's buffer is free */
            if (s + 1 < S) i8g_stage<BN>(a.img, cb, s_img, s + 1, &s_b[(s + 1) & 1][0][0]);
            if (!live) continue;
        }
#if I8G_PREFETCH
        if (s + 1 < S) i8g_load(fn, wr0, wr8, s + 1);
#else
        frag f;
        i8g_load(f, wr0, wr8, s);
#endif
        const int sb = s >> 1, h = s & 1, g0 = 4 * s; /* first group of the step */
#pragma unroll
        for (int j = 0; j < NW; j++) {
            const uint8_t *bp = SMB ? &s_b[s & 1][8 * j + g][8 * t]
                                    : a.img + (size_t)s_img[8 * j + g] * cb + (size_t)g0 * 96 + 8 * t;
            const float *c0 = (const float *)(a.img + (size_t)s_img[8 * j + 2 * t] * cb + (size_t)3 * a.n);
            const float *c1 = (const float *)(a.img + (size_t)s_img[8 * j + 2 * t + 1] * cb + (size_t)3 * a.n);
            const float sx[2] = {__ldg(c0 + G + sb), __ldg(c1 + G + sb)};
            float4 sm[2];
            if (DT == QG_Q4_K) {
                sm[0] = __ldg((const float4 *)(c0 + g0));
                sm[1] = __ldg((const float4 *)(c1 + g0));
            } else {
                sm[0] = sm[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
            i8g_tile<SMB>(f, h, bp, sx, sm, acc[j]);
        }
#if I8G_PREFETCH
        if (s + 1 < S) f = fn;
#endif
    }
    if (DUAL) {
        if (mat == 1) {
#pragma unroll
            for (int j = 0; j < NW; j++)
#pragma unroll
                for (int i = 0; i < 4; i++) s_up[DUAL ? warp & 3 : 0][j][i][lane] = acc[j][i];
        }
        __syncthreads();
        if (mat == 1) return;
    }
    if (!live) return;
#pragma unroll
    for (int j = 0; j < NW; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = r0 + g + 8 * (i >> 1), c = s_y[8 * j + 2 * t + (i & 1)];
            if (c < 0 || row >= a.m) continue;
            float v = acc[j][i];
            if (DUAL) v = qg_silu(v) * s_up[DUAL ? warp & 3 : 0][j][i][lane];
            const size_t o = (size_t)c * a.ldy + row;
            if (a.add) v = a.add[o] + v;
            a.y[o] = v;
        }
}

/* ---- host side ------------------------------------------------------------ */

int qg_i8g_node_k(const qg_graph *g, const qg_node *n) {
    const qg_tensor *T = g->tensors;
    switch (n->op) {
    case QG_OP_EXPERT_SWIGLU: return (int)T[n->in[3]].ne[0];
    case QG_OP_AGGREGATE: return (int)T[n->in[2]].ne[0];
    case QG_OP_MOE_FUSED: return (int)T[n->out[1]].ne[0];
    default: return 0;
    }
}

/* Bytes of images of `cols` columns of n elements when a product over
 * weight type t (n inputs) takes the integer path, else 0. */
static size_t img_if(qg_dtype t, int64_t n, size_t cols) {
    return (qg_i8_supports(t) && n % 256 == 0) ? cols * qg_i8p_col_bytes((int)n) : 0;
}

size_t qg_cu_gemm_image_bytes(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o) {
    if (g->n_tok_max <= 1 || !o->i8_decode || o->f32_prefill) return 0;
    const qg_tensor *T = g->tensors;
    const size_t Tm = (size_t)g->n_tok_max;
    size_t b = 0;
    switch (n->op) {
    case QG_OP_QKV:
        for (int i = 1; i <= 3; i++) b = QG_MAX(b, img_if(T[n->in[i]].type, T[n->in[0]].ne[0], Tm));
        break;
    case QG_OP_MATMUL:
        b = img_if(T[n->in[0]].type, T[n->in[0]].ne[0], Tm);
        break;
    case QG_OP_ROUTER:
    case QG_OP_LM_HEAD:
        if (n->op == QG_OP_ROUTER || !n->p.only_last) b = img_if(T[n->in[1]].type, T[n->in[1]].ne[0], Tm);
        break;
    case QG_OP_SWIGLU:
    case QG_OP_EXPERT_SWIGLU:
        for (int i = 1; i <= 2; i++) b = QG_MAX(b, img_if(T[n->in[i]].type, T[n->in[i]].ne[0], Tm));
        break;
    case QG_OP_AGGREGATE:
        b = img_if(T[n->in[1]].type, T[n->in[1]].ne[0], Tm * (size_t)qg_i8g_node_k(g, n));
        break;
    case QG_OP_MOE_FUSED:
        for (int i = 1; i <= 3; i++) b = QG_MAX(b, img_if(T[n->in[i]].type, T[n->in[i]].ne[0], Tm));
        b = QG_MAX(b, img_if(T[n->in[4]].type, T[n->in[4]].ne[0], Tm * (size_t)qg_i8g_node_k(g, n)));
        break;
    default:
        break;
    }
    return b;
}

void qg_cu_gemm_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o, qg_cu_bump *b) {
    const size_t bytes = qg_cu_gemm_image_bytes(g, n, o);
    if (bytes) b->take<uint8_t>(bytes);
}

uint8_t *qg_i8g_image(const qg_cuda_launch *l, size_t bytes) {
    if (!l->scratch || !l->g || !l->n || !bytes) return nullptr;
    const size_t mine = qg_cu_gemm_image_bytes(l->g, l->n, &l->o);
    if (mine < bytes) return nullptr;
    size_t total = 0;
    int nc = 0;
    qg_cuda_op_needs(l->g, l->n, &l->o, &total, &nc);
    if (total > l->scratch_bytes || total < mine) return nullptr;
    return (uint8_t *)l->scratch + (total - mine); /* the tail: qg_cu_gemm_needs' take */
}

bool qg_i8g_ok(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n) {
    return l->o.i8_decode && !l->o.f32_prefill && qg_i8_supports(w->type) &&
           (!w2 || w2->type == w->type) && n % 256 == 0 && n > 0;
}

static i8g_args i8g_make(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n,
                         const uint8_t *img, const float *add) {
    i8g_args a = {};
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
    a.img = img;
    a.y = w->y;
    a.ldy = w->ldy;
    a.add = add;
    a.step = l->step;
    a.xdiv = 1;
    return a;
}

/* Enqueue the image of n_tok * cpt columns of x (grid for n_tok_max). */
static cudaError_t i8g_images(const qg_cuda_launch *l, const float *x, int ldx, int n, int cpt,
                              uint8_t *img) {
    const int64_t items = (int64_t)l->g->n_tok_max * cpt * (n / 256);
    const int blocks = qg_cu_blocks(items, 8, l->o.n_sm, 8);
    return qg_cu_launch(l, k_i8p_image, dim3(blocks), dim3(256), 0, x, ldx, n, cpt, l->step, img);
}

template <int DT>
static cudaError_t i8g_launch_dt(const qg_cuda_launch *l, int nm, int nw, bool smb, dim3 grid,
                                 const i8g_args &a) {
    const dim3 b1(i8g_threads(false)), b2(i8g_threads(true));
    if (smb) {
        if (nm == 2) return qg_cu_launch(l, k_gemm_i8<DT, true, 4, true>, grid, b2, 0, a);
        return qg_cu_launch(l, k_gemm_i8<DT, false, 4, true>, grid, b1, 0, a);
    }
    if (nm == 2) return qg_cu_launch(l, k_gemm_i8<DT, true, 4, false>, grid, b2, 0, a);
    if (nw == 8) return qg_cu_launch(l, k_gemm_i8<DT, false, 8, false>, grid, b1, 0, a);
    return qg_cu_launch(l, k_gemm_i8<DT, false, 4, false>, grid, b1, 0, a);
}

static cudaError_t i8g_launch(const qg_cuda_launch *l, qg_dtype t, int nm, int nw, bool smb,
                              dim3 grid, const i8g_args &a) {
    if (t == QG_Q4_K) return i8g_launch_dt<QG_Q4_K>(l, nm, nw, smb, grid, a);
    if (t == QG_Q6_K) return i8g_launch_dt<QG_Q6_K>(l, nm, nw, smb, grid, a);
    return cudaErrorInvalidValue;
}

cudaError_t qg_i8g_dense_v(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const float *add, uint8_t *img,
                           int variant) {
    cudaError_t e = i8g_images(l, x, ldx, n, 1, img);
    if (e != cudaSuccess) return e;
    const i8g_args a = i8g_make(l, w, w2, n, img, add);
    const bool smb = variant == 1;
    const int T = l->g->n_tok_max, nm = w2 ? 2 : 1, nw = (nm == 1 && T >= 64 && !smb) ? 8 : 4;
    const dim3 grid((w->m + I8G_BM - 1) / I8G_BM, (T + 8 * nw - 1) / (8 * nw));
    return i8g_launch(l, w->type, nm, nw, smb, grid, a);
}

cudaError_t qg_i8g_grouped_v(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                             int n, const float *x, int ldx, const qg_cu_groups *gr, uint8_t *img,
                             int variant) {
    const int K = qg_i8g_node_k(l->g, l->n);
    if (K <= 0 || gr->xdiv <= 0 || K % gr->xdiv) return cudaErrorInvalidValue;
    cudaError_t e = i8g_images(l, x, ldx, n, K / gr->xdiv, img);
    if (e != cudaSuccess) return e;
    i8g_args a = i8g_make(l, w, w2, n, img, nullptr);
    a.tiles = gr->tiles;
    a.asg = gr->asg;
    a.xdiv = gr->xdiv;
    const dim3 grid((w->m + I8G_BM - 1) / I8G_BM, gr->max_tiles);
    return i8g_launch(l, w->type, w2 ? 2 : 1, 4, variant == 1, grid, a);
}

cudaError_t qg_i8g_dense(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n,
                         const float *x, int ldx, const float *add, uint8_t *img) {
    return qg_i8g_dense_v(l, w, w2, n, x, ldx, add, img, QG_I8G_VARIANT);
}

cudaError_t qg_i8g_grouped(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const qg_cu_groups *gr, uint8_t *img) {
    return qg_i8g_grouped_v(l, w, w2, n, x, ldx, gr, img, QG_I8G_VARIANT);
}
