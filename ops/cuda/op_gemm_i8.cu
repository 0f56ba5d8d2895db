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
 * A grid may cover up to three matrices over the same image (qkv: q, k, v
 * in one launch): blockIdx.x walks the row tiles of each in turn, and a
 * grid whose matrices differ in type (I8G_MIXED) branches per CTA.
 * Variant 1 (lab_gemm v3; the product's default) stages each
 * step's B of the CTA's 32 columns in shared memory instead (cp.async,
 * double-buffered, one barrier per step): the 8 columns of a fragment load
 * are 8 different image lines in global memory, one padded shared row each
 * here.  Variants 2 / 3 (k_gemm_i8a, lab v4 / v5) stage the weights too,
 * a super-block at a time (see there).
 * Fragment layouts (PTX ISA, mma.m16n8k32 / m16n8k16 .s8, g = lane / 4,
 * t = lane % 4): A a0 (row g, k 4t..4t+3), a1 (row g+8, same k), a2 / a3
 * (rows g / g+8, k 16+4t..) for k32; B b0 (k 4t.., column g), b1 (k 16+4t..);
 * C c0, c1 (row g, columns 2t, 2t+1), c2, c3 (row g+8).  An output is
 * computed by one lane in a fixed order whatever tile it lands in.
 */
#include "qg_cuda_gemm_i8.cuh"
#include "qg_cuda_i8.cuh"

#include <stdlib.h>
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
        const qg_i8_lane8 z = qg_i8_quant8(v);
        int sx = z.sx;
        sx += __shfl_xor_sync(0xffffffffu, sx, 1);
        sx += __shfl_xor_sync(0xffffffffu, sx, 2);
        uint8_t *col = img + (size_t)c * cb;
        uint8_t *gp = col + (size_t)j * 96 + 8 * t;
        *(uint2 *)gp = make_uint2(z.pa[0], z.pa[1]);
        *(uint2 *)(gp + 32) = make_uint2(z.pb[0], z.pb[1]);
        *(uint2 *)(gp + 64) = make_uint2(z.pc[0], z.pc[1]);
        float *sums = (float *)(col + (size_t)3 * n);
        if (t == 0) sums[j] = (float)sx * z.s;
        if (lane == 0) sums[n / 32 + sb] = z.s;
    }
}

/* ---- weight fragments of one step --------------------------------------- */

/* 4 bytes of shared memory at a 2-byte aligned address. */
__device__ __forceinline__ uint32_t i8g_lds_a2(const uint8_t *p) {
    return (uint32_t)*(const uint16_t *)p | ((uint32_t)*(const uint16_t *)(p + 2) << 16);
}

/* The loads of the weight fragments: from global memory by the read-only
 * path (SH false), or from a CTA's shared-memory copy of the rows'
 * super-block (SH true, variants 2 and 3; Q6_K copies may start at any even
 * byte). */
template <bool SH> struct i8g_ld {
    static __device__ __forceinline__ uint4 v4(const uint8_t *p) { return qg_ld_v4(p); }
    static __device__ __forceinline__ uint32_t u32(const uint8_t *p) { return __ldg((const uint32_t *)p); }
    static __device__ __forceinline__ uint32_t u32a2(const uint8_t *p) { return qg_ld_u32a2(p); }
    static __device__ __forceinline__ uint32_t u16(const uint8_t *p) { return qg_ld_u16(p); }
};
template <> struct i8g_ld<true> {
    static __device__ __forceinline__ uint4 v4(const uint8_t *p) { return *(const uint4 *)p; }
    static __device__ __forceinline__ uint32_t u32(const uint8_t *p) { return *(const uint32_t *)p; }
    static __device__ __forceinline__ uint32_t u32a2(const uint8_t *p) { return i8g_lds_a2(p); }
    static __device__ __forceinline__ uint32_t u16(const uint8_t *p) { return *(const uint16_t *)p; }
};

/* Q4_K, step h of a super-block (sub-blocks 4h..4h+3, qs pairs 2h, 2h+1):
 * header of rows g, g+8 and qs words 32c + 4t, 32c + 16 + 4t. */
struct i8g_q4 {
    uint4 hd[2];
    uint32_t q[2][2][2]; /* [row g, g+8][pair 2h + cc][k 4t.. / 16+4t..] */
};

/* The fragments of step h from the super-block of row g at r0 and of row
 * g+8 at r8. */
template <bool SH>
__device__ __forceinline__ void i8g_frag(i8g_q4 &f, const uint8_t *r0, const uint8_t *r8, int h) {
    typedef i8g_ld<SH> L;
    const int t = threadIdx.x & 3;
    const uint8_t *r[2] = {r0, r8};
#pragma unroll
    for (int k = 0; k < 2; k++) {
        f.hd[k] = L::v4(r[k]);
#pragma unroll
        for (int cc = 0; cc < 2; cc++) {
            const uint8_t *qs = r[k] + 16 + 32 * (2 * h + cc) + 4 * t;
            f.q[k][cc][0] = L::u32(qs);
            f.q[k][cc][1] = L::u32(qs + 16);
        }
    }
}

/* Q6_K, step h = half h of a super-block (sub-blocks 8h..8h+7): ql words
 * 64h + 32(q%2) + 16i + 4t, qh words 128 + 32h + 16i + 4t, the eight int8
 * scales 192 + 8h.., d (210-byte blocks: 16-bit loads). */
struct i8g_q6 {
    uint32_t ql[2][2][2]; /* [row][q % 2][i] */
    uint32_t qh[2][2];    /* [row][i] */
    uint32_t sc[2][2];    /* [row][scales 8h..8h+3, 8h+4..8h+7] */
    uint32_t d[2];
};

template <bool SH>
__device__ __forceinline__ void i8g_frag(i8g_q6 &f, const uint8_t *r0, const uint8_t *r8, int h) {
    typedef i8g_ld<SH> L;
    const int t = threadIdx.x & 3;
    const uint8_t *r[2] = {r0, r8};
#pragma unroll
    for (int k = 0; k < 2; k++) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            f.ql[k][0][i] = L::u32a2(r[k] + 64 * h + 16 * i + 4 * t);
            f.ql[k][1][i] = L::u32a2(r[k] + 64 * h + 32 + 16 * i + 4 * t);
            f.qh[k][i] = L::u32a2(r[k] + 128 + 32 * h + 16 * i + 4 * t);
        }
        f.sc[k][0] = L::u32a2(r[k] + 192 + 8 * h);
        f.sc[k][1] = L::u32a2(r[k] + 196 + 8 * h);
        f.d[k] = L::u16(r[k] + 208);
    }
}

/* Step s (super-block s / 2, half s % 2) of rows g, g+8 (r0, r8: the rows)
 * from global memory. */
__device__ __forceinline__ void i8g_load(i8g_q4 &f, const uint8_t *r0, const uint8_t *r8, int s) {
    const size_t o = (size_t)(s >> 1) * 144;
    i8g_frag<false>(f, r0 + o, r8 + o, s & 1);
}

__device__ __forceinline__ void i8g_load(i8g_q6 &f, const uint8_t *r0, const uint8_t *r8, int s) {
    const size_t o = (size_t)(s >> 1) * 210;
    i8g_frag<false>(f, r0 + o, r8 + o, s & 1);
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

/* One matrix of a launch: m rows (per expert: es bytes apart) of rb bytes,
 * Q4_K or Q6_K; output y (m, cols), ldy floats per column; residual add
 * (same layout as y) or NULL. */
struct i8g_mat {
    const uint8_t *w;
    size_t rb, es;
    int m, type;
    float *y;
    int ldy;
    const float *add;
};

/* Most matrices of one grid (qkv: q, k, v). */
#define I8G_MAT_MAX 3
/* Kernel type parameter of grids whose matrices differ in type: each CTA
 * branches (uniformly) on its matrix's type. */
#define I8G_MIXED (-1)

struct i8g_args {
    i8g_mat mt[I8G_MAT_MAX]; /* row tiles tile0[i] .. tile0[i+1]-1 (blockIdx.x) are mt[i]'s */
    int tile0[I8G_MAT_MAX + 1];
    int nm;
    const uint8_t *w2; /* dual (nm == 1): the up matrix, mt[0]'s type and shape */
    size_t rb2, es2;
    int n;
    const uint8_t *img; /* images, qg_i8p_col_bytes(n) apart */
    const int32_t *step;
    const int32_t *tiles, *asg; /* grouped: device tile list; NULL: dense */
    int xdiv;
};

/* This CTA's matrix (index into a.mt) and row tile within it. */
__device__ __forceinline__ int i8g_job(const i8g_args &a, int *tile) {
    int mi = 0;
#pragma unroll
    for (int i = 1; i < I8G_MAT_MAX; i++)
        if (i < a.nm && (int)blockIdx.x >= a.tile0[i]) mi = i;
    *tile = (int)blockIdx.x - a.tile0[mi];
    return mi;
}

/* The CTA's BN columns: s_img[j] the image column (a live one, also past
 * the end), s_y[j] the output column or -1; *e the expert (0: dense);
 * *nlive (when given) the live columns, a prefix: n-tiles past it need no
 * work.  false: no work (uniform over the block; nothing written). */
template <int BN>
__device__ __forceinline__ bool i8g_columns(const i8g_args &a, int *s_img, int *s_y, int *e,
                                            int *nlive = nullptr) {
    if (a.tiles) {
        if ((int)blockIdx.y >= a.tiles[0]) return false;
        const int32_t *tl = a.tiles + 1 + 3 * blockIdx.y;
        const int off = tl[1], cnt = tl[2];
        *e = tl[0];
        if (nlive) *nlive = min(cnt, BN);
        for (int j = threadIdx.x; j < BN; j += blockDim.x) {
            const int as = a.asg[off + (j < cnt ? j : 0)];
            s_img[j] = as / a.xdiv;
            s_y[j] = j < cnt ? as : -1;
        }
    } else {
        const int nt = a.step[QG_STEP_N_TOK], c0 = blockIdx.y * BN;
        if (c0 >= nt) return false;
        *e = 0;
        if (nlive) *nlive = min(nt - c0, BN);
        for (int j = threadIdx.x; j < BN; j += blockDim.x) {
            s_img[j] = min(c0 + j, nt - 1);
            s_y[j] = c0 + j < nt ? c0 + j : -1;
        }
    }
    return true;
}

/* Write lane's outputs acc[j][i] (rows r0 + g (+8), columns 8j + 2t (+1))
 * of matrix M; dual: silu(acc) * up, up from s_up (the up warps' results,
 * (4, NW, 4, 32) floats, this warp's slot (warp & 3)). */
template <int NW, bool DUAL>
__device__ __forceinline__ void i8g_store(const i8g_mat &M, int r0, const int *s_y, const float *s_up,
                                          const float (&acc)[NW][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, wq = (threadIdx.x >> 5) & 3;
#pragma unroll
    for (int j = 0; j < NW; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = r0 + g + 8 * (i >> 1), c = s_y[8 * j + 2 * t + (i & 1)];
            if (c < 0 || row >= M.m) continue;
            float v = acc[j][i];
            if (DUAL) v = qg_silu(v) * s_up[((wq * NW + j) * 4 + i) * 32 + lane];
            const size_t o = (size_t)c * M.ldy + row;
            if (M.add) v = M.add[o] + v;
            M.y[o] = v;
        }
}

/* Dual CTAs at the end of a tile: the up warps (mat 1) hand their
 * accumulators to the gate warps through s_up, every warp of the CTA meets
 * the barrier.  Returns true for the up warps (their part is done). */
template <int NW, bool DUAL>
__device__ __forceinline__ bool i8g_hand_up(int mat, float *s_up, const float (&acc)[NW][4]) {
    if (!DUAL) return false;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (mat == 1) {
#pragma unroll
        for (int j = 0; j < NW; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) s_up[(((warp & 3) * NW + j) * 4 + i) * 32 + lane] = acc[j][i];
    }
    __syncthreads();
    return mat == 1;
}

/* Threads of k_gemm_i8: 4 warps, or 8 when dual (warps 0-3 gate, 4-7 up,
 * the same 64 rows). */
__host__ __device__ constexpr int i8g_threads(bool dual) { return dual ? 256 : 128; }

/* Shared-memory copy of one step's B (SMB): per column the 384 image bytes
 * of the step's four groups, columns I8G_SB_LD bytes apart (104 words,
 * 8 mod 32: the 8-byte fragment loads of a half-warp, columns g < 4 and
 * t < 4, hit 32 distinct banks). */
#define I8G_SB_LD 416

/* All but the most recent group landed (qg_cp_async16's groups). */
__device__ __forceinline__ void i8g_cp_wait1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

/* SMB: the CTA copies step s's B of its BN columns into sb (16 bytes per
 * thread per turn, all in flight). */
template <int BN>
__device__ __forceinline__ void i8g_stage(const uint8_t *img, size_t cb, const int *s_img, int s,
                                          uint8_t *sb) {
    for (int i = threadIdx.x; i < BN * 24; i += blockDim.x) {
        const int c = i / 24, k = i - c * 24;
        qg_cp_async16(sb + c * I8G_SB_LD + 16 * k, img + (size_t)s_img[c] * cb + (size_t)s * 384 + 16 * k);
    }
    qg_cp_commit();
}

/* Variants 0 / 1, the rows of one CTA (row tile `tile` of matrix M, expert
 * e): SMB: B read from a double-buffered shared-memory copy of each step
 * (every warp of the CTA meets a barrier per step; s_b: 2 x BN x
 * I8G_SB_LD bytes), else straight from the image in global memory (warps
 * independent).  s_up: dual only. */
template <int DT, bool DUAL, int NW, bool SMB>
__device__ __forceinline__ void i8g_body(const i8g_args &a, const i8g_mat &M, int e, int tile,
                                         const int *s_img, const int *s_y, float *s_up, uint8_t *s_b) {
    constexpr int BN = 8 * NW;
    using frag = typename std::conditional<DT == QG_Q4_K, i8g_q4, i8g_q6>::type;
    const int warp = threadIdx.x >> 5, mat = DUAL ? warp >> 2 : 0;
    const uint8_t *w = (mat ? a.w2 : M.w) + (size_t)e * (mat ? a.es2 : M.es);
    const size_t rb = mat ? a.rb2 : M.rb;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int r0 = tile * I8G_BM + (warp & 3) * 16;
    /* warps past the rows: nothing to do (those that meet barriers below
     * still take part in them and in the copies) */
    if (!DUAL && !SMB && r0 >= M.m) return;
    const bool live = r0 < M.m;
    const int rg = min(r0 + g, M.m - 1), rg8 = min(r0 + g + 8, M.m - 1);
    const uint8_t *wr0 = w + (size_t)rg * rb, *wr8 = w + (size_t)rg8 * rb;
    const size_t cb = qg_i8p_col_bytes(a.n);
    const int S = (live || SMB) ? a.n / I8G_STEP : 0, G = a.n / 32;
    float acc[NW][4];
#pragma unroll
    for (int j = 0; j < NW; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = 0.0f;
    if (SMB) i8g_stage<BN>(a.img, cb, s_img, 0, s_b);
#if I8G_PREFETCH
    frag f, fn;
    if (S > 0 && live) i8g_load(f, wr0, wr8, 0);
#endif
    for (int s = 0; s < S; s++) {
        if (SMB) {
            qg_cp_wait_all();
            __syncthreads(); /* step s landed; step s-1's buffer is free */
            if (s + 1 < S) i8g_stage<BN>(a.img, cb, s_img, s + 1, s_b + ((s + 1) & 1) * BN * I8G_SB_LD);
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
            const uint8_t *bp = SMB ? s_b + ((s & 1) * BN + 8 * j + g) * I8G_SB_LD + 8 * t
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
    if (i8g_hand_up<NW, DUAL>(mat, s_up, acc)) return;
    if (!live) return;
    i8g_store<NW, DUAL>(M, r0, s_y, s_up, acc);
}

/* Variants 0 / 1: a CTA of 4 warps (8 when dual) over 64 rows x 8 NW
 * columns.  DT I8G_MIXED: the matrices of the grid differ in type. */
template <int DT, bool DUAL, int NW, bool SMB>
__global__ void __launch_bounds__(i8g_threads(DUAL), DUAL ? 2 : 4) k_gemm_i8(i8g_args a) {
    constexpr int BN = 8 * NW;
    __shared__ int s_img[BN], s_y[BN];
    __shared__ float s_up[DUAL ? 4 * NW * 4 * 32 : 1]; /* dual: the up warps' results */
    __shared__ __align__(16) uint8_t s_b[SMB ? 2 * BN * I8G_SB_LD : 16];
    qg_pdl_wait();
    int e = 0, tile = 0;
    const int mi = i8g_job(a, &tile);
    if (!i8g_columns<BN>(a, s_img, s_y, &e)) return;
    __syncthreads();
    const i8g_mat &M = a.mt[mi];
    if (DT == QG_Q4_K || (DT == I8G_MIXED && M.type == QG_Q4_K))
        i8g_body<QG_Q4_K, DUAL, NW, SMB>(a, M, e, tile, s_img, s_y, s_up, s_b);
    else
        i8g_body<QG_Q6_K, DUAL, NW, SMB>(a, M, e, tile, s_img, s_y, s_up, s_b);
}

/* ---- variant 2: every operand of a super-block staged -------------------
 * A CTA of 8 warps (I8A_WARPS) takes BN = 32 columns and 128 rows (dual: 64
 * rows of gate, warps 0-3, and of up, warps 4-7).  Per super-block (256
 * elements, two steps) all of it lands in shared memory by cp.async, the
 * next super-block's copies in flight during this one's mmas (two stages,
 * two barriers per super-block): B's planes (768 bytes per column), the
 * column's group sums and scale, and the weights of the CTA's rows (Q4_K:
 * the 144-byte block; Q6_K: the 16-byte chunks covering the 210-byte block,
 * which starts at any even byte).  No global load waits in the mma loop. */
#define I8A_WARPS 8
#define I8A_BN 32
/* Bytes between columns of a stage's planes: 200 words, 8 mod 32 (as
 * I8G_SB_LD). */
#define I8A_BLD 800

/* Weight bytes per row of a stage (16-byte multiple) and 16-byte chunks
 * copied per row: Q4_K 144 / 9; Q6_K 240 / 14 (60 words a row: the eight
 * rows of a fragment load fall in distinct banks). */
__host__ __device__ constexpr int i8a_ald(int dt) { return dt == QG_Q4_K ? 144 : 240; }
__host__ __device__ constexpr int i8a_ach(int dt) { return dt == QG_Q4_K ? 9 : 14; }

/* One stage: planes (I8A_BN, I8A_BLD) | sums (I8A_BN, 8) f32 | scale
 * chunks (I8A_BN, 4) f32 | weights (NR, ALD).  NR = 16 * warps. */
__host__ __device__ constexpr int i8a_bbytes() { return I8A_BN * (I8A_BLD + 32 + 16); }
__host__ __device__ constexpr int i8a_stage_bytes(int dt, int warps) {
    return i8a_bbytes() + 16 * warps * (dt == I8G_MIXED ? i8a_ald(QG_Q6_K) : i8a_ald(dt));
}
/* Dynamic shared memory of k_gemm_i8a<DT, ., W>: two stages. */
__host__ __device__ constexpr int i8a_smem(int dt, int warps) { return 2 * i8a_stage_bytes(dt, warps); }

/* Output rows per CTA. */
__host__ __device__ constexpr int i8a_bm(bool dual, int warps) { return dual ? 8 * warps : 16 * warps; }

/* Copy super-block sb of the CTA's operands into stage st (commits one
 * cp.async group): the first ncb columns (the live n-tiles') and all the
 * weight rows.  w / w2: the CTA's matrices (expert applied), rows row0..
 * (clamped to m - 1). */
template <int DT, bool DUAL, int W>
__device__ __forceinline__ void i8a_stage(const i8g_args &a, const uint8_t *w, size_t rb,
                                          const uint8_t *w2, size_t rb2, int m, int row0,
                                          const int *s_img, size_t cb, int sb, int ncb,
                                          uint8_t *st) {
    constexpr int NT = 32 * W, NR = 16 * W, BM = i8a_bm(DUAL, W), ALD = i8a_ald(DT), ACH = i8a_ach(DT);
    constexpr int BS = DT == QG_Q4_K ? 144 : 210;
    uint8_t *sp = st, *ss = st + I8A_BN * I8A_BLD, *sc = ss + I8A_BN * 32, *sa = st + i8a_bbytes();
    const size_t sums = (size_t)3 * a.n, scl = sums + (size_t)a.n / 8;
    for (int i = threadIdx.x; i < ncb * 51; i += NT) { /* the live n-tiles' columns */
        const int c = i / 51, k = i - c * 51;
        const uint8_t *col = a.img + (size_t)s_img[c] * cb;
        if (k < 48)
            qg_cp_async16(sp + c * I8A_BLD + 16 * k, col + (size_t)sb * 768 + 16 * k);
        else if (k < 50)
            qg_cp_async16(ss + c * 32 + 16 * (k - 48), col + sums + 32 * sb + 16 * (k - 48));
        else
            qg_cp_async16(sc + c * 16, col + scl + 16 * (sb >> 2));
    }
    for (int i = threadIdx.x; i < NR * ACH; i += NT) {
        const int r = i / ACH, k = i - r * ACH;
        const int mat = DUAL ? r / BM : 0, gr = min(row0 + (DUAL ? r - mat * BM : r), m - 1);
        const uint8_t *src = (mat ? w2 + (size_t)gr * rb2 : w + (size_t)gr * rb) + (size_t)sb * BS;
        if (DT == QG_Q6_K) src = (const uint8_t *)((uintptr_t)src & ~(uintptr_t)15);
        qg_cp_async16(sa + r * ALD + 16 * k, src + 16 * k);
    }
    qg_cp_commit();
}

template <int DT, bool DUAL, int W>
__device__ __forceinline__ void i8a_body(const i8g_args &a, const i8g_mat &M, int e, int tile,
                                         const int *s_img, const int *s_y, int nlive, float *s_up,
                                         uint8_t *smem) {
    constexpr int NW = I8A_BN / 8, BM = i8a_bm(DUAL, W), ALD = i8a_ald(DT);
    constexpr int SS = i8a_stage_bytes(DT, W), BS = DT == QG_Q4_K ? 144 : 210;
    using frag = typename std::conditional<DT == QG_Q4_K, i8g_q4, i8g_q6>::type;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint8_t *w = M.w + (size_t)e * M.es, *w2 = DUAL ? a.w2 + (size_t)e * a.es2 : nullptr;
    const int row0 = tile * BM;
    /* this warp's rows within the stage's weights, and within the matrix */
    const int ri = 16 * warp, mat = DUAL ? warp / (W / 2) : 0;
    const int r0 = row0 + (DUAL ? ri - mat * BM : ri);
    /* Q6_K: the byte offsets mod 16 of rows g, g+8 (their copies start at
     * the block's offset mod 16) */
    int ob0 = 0, ob8 = 0;
    if (DT == QG_Q6_K) {
        const uint8_t *wm = mat ? w2 : w;
        const size_t rbm = mat ? a.rb2 : M.rb;
        ob0 = (int)((uintptr_t)(wm + (size_t)min(r0 + g, M.m - 1) * rbm) & 15);
        ob8 = (int)((uintptr_t)(wm + (size_t)min(r0 + g + 8, M.m - 1) * rbm) & 15);
    }
    const size_t cb = qg_i8p_col_bytes(a.n);
    const int NSB = a.n / 256;
    /* n-tiles with a live column (grouped tiles are often part-full): the
     * others are neither staged nor multiplied */
    const int nnt = (nlive + 7) / 8, ncb = 8 * nnt;
    float acc[NW][4];
#pragma unroll
    for (int j = 0; j < NW; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = 0.0f;
    i8a_stage<DT, DUAL, W>(a, w, M.rb, w2, a.rb2, M.m, row0, s_img, cb, 0, ncb, smem);
    for (int sb = 0; sb < NSB; sb++) {
        if (sb + 1 < NSB)
            i8a_stage<DT, DUAL, W>(a, w, M.rb, w2, a.rb2, M.m, row0, s_img, cb, sb + 1, ncb,
                                   smem + ((sb + 1) & 1) * SS);
        else
            qg_cp_commit(); /* an empty group: "all but the latest" is then super-block sb */
        i8g_cp_wait1();
        __syncthreads(); /* super-block sb landed for every thread's copies */
        const uint8_t *st = smem + (sb & 1) * SS;
        const uint8_t *sp = st, *sa = st + i8a_bbytes();
        const float *ss = (const float *)(st + I8A_BN * I8A_BLD), *sc = ss + I8A_BN * 8;
        /* the copies of rows g, g+8 (Q6_K: at the block's offset mod 16) */
        const int o0 = DT == QG_Q6_K ? (ob0 + BS * sb) & 15 : 0;
        const int o8 = DT == QG_Q6_K ? (ob8 + BS * sb) & 15 : 0;
        const uint8_t *ra = sa + (ri + g) * ALD + o0, *ra8 = sa + (ri + g + 8) * ALD + o8;
#pragma unroll 1
        for (int h = 0; h < 2; h++) {
            frag f;
            i8g_frag<true>(f, ra, ra8, h); /* the shared-memory copies */
#pragma unroll
            for (int j = 0; j < NW; j++) {
                if (j >= nnt) break; /* uniform over the block */
                const int c0 = 8 * j + 2 * t;
                const uint8_t *bp = sp + (8 * j + g) * I8A_BLD + 384 * h + 8 * t;
                const float sx[2] = {sc[4 * c0 + (sb & 3)], sc[4 * c0 + 4 + (sb & 3)]};
                float4 sm[2];
                if (DT == QG_Q4_K) {
                    sm[0] = *(const float4 *)(ss + 8 * c0 + 4 * h);
                    sm[1] = *(const float4 *)(ss + 8 * c0 + 8 + 4 * h);
                } else {
                    sm[0] = sm[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
                i8g_tile<true>(f, h, bp, sx, sm, acc[j]);
            }
        }
        __syncthreads(); /* the stage is free for super-block sb + 2 */
    }
    if (i8g_hand_up<NW, DUAL>(mat, s_up, acc)) return;
    if (r0 >= M.m) return;
    i8g_store<NW, DUAL>(M, r0, s_y, s_up, acc);
}

/* Variant 2 (W = 8) and 3 (W = 4, not dual): see above; dynamic shared
 * memory i8a_smem(DT, W). */
template <int DT, bool DUAL, int W>
__global__ void __launch_bounds__(32 * W, 16 / W) k_gemm_i8a(i8g_args a) {
    static_assert(!DUAL || W == 8, "dual: 4 warps per matrix");
    extern __shared__ __align__(128) uint8_t smem[];
    __shared__ int s_img[I8A_BN], s_y[I8A_BN];
    __shared__ float s_up[DUAL ? 4 * (I8A_BN / 8) * 4 * 32 : 1];
    qg_pdl_wait();
    int e = 0, tile = 0, nlive = I8A_BN;
    const int mi = i8g_job(a, &tile);
    if (!i8g_columns<I8A_BN>(a, s_img, s_y, &e, &nlive)) return;
    __syncthreads();
    const i8g_mat &M = a.mt[mi];
    if (DT == QG_Q4_K || (DT == I8G_MIXED && M.type == QG_Q4_K))
        i8a_body<QG_Q4_K, DUAL, W>(a, M, e, tile, s_img, s_y, nlive, s_up, smem);
    else
        i8a_body<QG_Q6_K, DUAL, W>(a, M, e, tile, s_img, s_y, nlive, s_up, smem);
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

static i8g_mat i8g_mat_of(const qg_cu_mat *w, const float *add) {
    i8g_mat m = {};
    m.w = w->w;
    m.rb = w->rb;
    m.es = w->es;
    m.m = w->m;
    m.type = (int)w->type;
    m.y = w->y;
    m.ldy = w->ldy;
    m.add = add;
    return m;
}

/* Arguments of a launch over nm matrices (add: matrix 0's residual) or one
 * dual pair (w2). */
static i8g_args i8g_make(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, const qg_cu_mat *w2,
                         int n, const uint8_t *img, const float *add) {
    i8g_args a = {};
    for (int i = 0; i < nm; i++) a.mt[i] = i8g_mat_of(&mats[i], i == 0 ? add : nullptr);
    a.nm = nm;
    if (w2) {
        a.w2 = w2->w;
        a.rb2 = w2->rb;
        a.es2 = w2->es;
    }
    a.n = n;
    a.img = img;
    a.step = l->step;
    a.xdiv = 1;
    return a;
}

/* Row tiles of bm rows of every matrix into a.tile0; returns their total. */
static int i8g_tiles(i8g_args *a, int bm) {
    a->tile0[0] = 0;
    for (int i = 0; i < I8G_MAT_MAX; i++)
        a->tile0[i + 1] = a->tile0[i] + (i < a->nm ? (a->mt[i].m + bm - 1) / bm : 0);
    return a->tile0[a->nm];
}

/* Enqueue the image of n_tok * cpt columns of x (grid for n_tok_max). */
static cudaError_t i8g_images(const qg_cuda_launch *l, const float *x, int ldx, int n, int cpt,
                              uint8_t *img) {
    const int64_t items = (int64_t)l->g->n_tok_max * cpt * (n / 256);
    const int blocks = qg_cu_blocks(items, 8, l->o.n_sm, 8);
    return qg_cu_launch(l, k_i8p_image, dim3(blocks), dim3(256), 0, x, ldx, n, cpt, l->step, img);
}

/* Kernel configuration of a launch: variant, dual, columns per CTA (8 NW,
 * variants 0 / 1). */
struct i8g_cfg {
    int variant;
    bool dual;
    int nw;
};

/* Output rows per CTA of configuration c. */
static int i8g_cfg_bm(const i8g_cfg &c) {
    if (c.variant == 2) return i8a_bm(c.dual, 8);
    if (c.variant == 3) return c.dual ? i8a_bm(true, 8) : i8a_bm(false, 4);
    return I8G_BM;
}

/* Columns per CTA of configuration c. */
static int i8g_cfg_bn(const i8g_cfg &c) { return c.variant >= 2 ? I8A_BN : 8 * c.nw; }

template <int DT>
static cudaError_t i8g_launch_dt(const qg_cuda_launch *l, const i8g_cfg &c, dim3 grid, const i8g_args &a) {
    const dim3 b1(i8g_threads(false)), b2(i8g_threads(true));
    if (c.variant >= 2) {
        if (c.dual || c.variant == 2) {
            if (DT != I8G_MIXED && c.dual)
                return qg_cu_launch(l, k_gemm_i8a<DT == I8G_MIXED ? QG_Q4_K : DT, true, 8>, grid,
                                    dim3(256), (size_t)i8a_smem(DT, 8), a);
            if (c.dual) return cudaErrorInvalidValue;
            return qg_cu_launch(l, k_gemm_i8a<DT, false, 8>, grid, dim3(256), (size_t)i8a_smem(DT, 8), a);
        }
        return qg_cu_launch(l, k_gemm_i8a<DT, false, 4>, grid, dim3(128), (size_t)i8a_smem(DT, 4), a);
    }
    if (c.variant == 1) {
        if (c.dual) {
            if (DT == I8G_MIXED) return cudaErrorInvalidValue;
            return qg_cu_launch(l, k_gemm_i8<DT == I8G_MIXED ? QG_Q4_K : DT, true, 4, true>, grid, b2, 0, a);
        }
        return qg_cu_launch(l, k_gemm_i8<DT, false, 4, true>, grid, b1, 0, a);
    }
    if (c.dual) {
        if (DT == I8G_MIXED) return cudaErrorInvalidValue;
        return qg_cu_launch(l, k_gemm_i8<DT == I8G_MIXED ? QG_Q4_K : DT, true, 4, false>, grid, b2, 0, a);
    }
    if (c.nw == 8) return qg_cu_launch(l, k_gemm_i8<DT, false, 8, false>, grid, b1, 0, a);
    return qg_cu_launch(l, k_gemm_i8<DT, false, 4, false>, grid, b1, 0, a);
}

/* Launch configuration c over a's matrices (row tiles filled in here) and
 * col_tiles column tiles. */
static cudaError_t i8g_launch(const qg_cuda_launch *l, const i8g_cfg &c, i8g_args a, int col_tiles) {
    int t = a.mt[0].type;
    for (int i = 1; i < a.nm; i++)
        if (a.mt[i].type != t) t = I8G_MIXED;
    const dim3 grid(i8g_tiles(&a, i8g_cfg_bm(c)), col_tiles);
    if (t == QG_Q4_K) return i8g_launch_dt<QG_Q4_K>(l, c, grid, a);
    if (t == QG_Q6_K) return i8g_launch_dt<QG_Q6_K>(l, c, grid, a);
    if (t == I8G_MIXED) return i8g_launch_dt<I8G_MIXED>(l, c, grid, a);
    return cudaErrorInvalidValue;
}

template <int DT> static cudaError_t i8g_prepare_dt() {
    cudaError_t e = cudaFuncSetAttribute((const void *)k_gemm_i8a<DT, false, 8>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, i8a_smem(DT, 8));
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute((const void *)k_gemm_i8a<DT, false, 4>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, i8a_smem(DT, 4));
    if (e == cudaSuccess && DT != I8G_MIXED)
        e = cudaFuncSetAttribute((const void *)k_gemm_i8a<DT == I8G_MIXED ? QG_Q4_K : DT, true, 8>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, i8a_smem(DT, 8));
    return e;
}

cudaError_t qg_i8g_prepare(void) {
    cudaError_t e = i8g_prepare_dt<QG_Q4_K>();
    if (e == cudaSuccess) e = i8g_prepare_dt<QG_Q6_K>();
    if (e == cudaSuccess) e = i8g_prepare_dt<I8G_MIXED>();
    return e;
}

cudaError_t qg_i8g_multi_v(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const float *add, uint8_t *img, int variant) {
    if (nm < 1 || nm > I8G_MAT_MAX || (w2 && (nm != 1 || w2->type != mats[0].type)) || variant < 0 ||
        variant > 3)
        return cudaErrorInvalidValue;
    cudaError_t e = i8g_images(l, x, ldx, n, 1, img);
    if (e != cudaSuccess) return e;
    const int T = l->g->n_tok_max;
    const i8g_cfg c = {variant, w2 != nullptr, (!w2 && T >= 64 && variant == 0) ? 8 : 4};
    const int bn = i8g_cfg_bn(c);
    return i8g_launch(l, c, i8g_make(l, mats, nm, w2, n, img, add), (T + bn - 1) / bn);
}

cudaError_t qg_i8g_dense_v(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const float *add, uint8_t *img,
                           int variant) {
    return qg_i8g_multi_v(l, w, 1, w2, n, x, ldx, add, img, variant);
}

cudaError_t qg_i8g_grouped_v(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                             int n, const float *x, int ldx, const qg_cu_groups *gr, uint8_t *img,
                             int variant) {
    const int K = qg_i8g_node_k(l->g, l->n);
    if (K <= 0 || gr->xdiv <= 0 || K % gr->xdiv || variant < 0 || variant > 3) return cudaErrorInvalidValue;
    cudaError_t e = i8g_images(l, x, ldx, n, K / gr->xdiv, img);
    if (e != cudaSuccess) return e;
    i8g_args a = i8g_make(l, w, 1, w2, n, img, nullptr);
    a.tiles = gr->tiles;
    a.asg = gr->asg;
    a.xdiv = gr->xdiv;
    const i8g_cfg c = {variant, w2 != nullptr, 4};
    return i8g_launch(l, c, a, gr->max_tiles);
}

/* The variant a product launches: environment variable `env` when it is
 * one digit 0..3 (A/B runs, tests), else def.  Read when the launch is
 * enqueued (graph capture), so a compiled graph keeps its variant. */
static int i8g_variant(const char *env, int def) {
    const char *v = getenv(env);
    return (v && v[0] >= '0' && v[0] <= '3' && v[1] == '\0') ? v[0] - '0' : def;
}

cudaError_t qg_i8g_multi(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, int n, const float *x,
                         int ldx, const float *add, uint8_t *img) {
    return qg_i8g_multi_v(l, mats, nm, nullptr, n, x, ldx, add, img,
                          i8g_variant("QG_CUDA_I8G_VARIANT", QG_I8G_VARIANT));
}

cudaError_t qg_i8g_dense(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n,
                         const float *x, int ldx, const float *add, uint8_t *img) {
    return qg_i8g_dense_v(l, w, w2, n, x, ldx, add, img, i8g_variant("QG_CUDA_I8G_VARIANT", QG_I8G_VARIANT));
}

cudaError_t qg_i8g_grouped(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const qg_cu_groups *gr, uint8_t *img) {
    return qg_i8g_grouped_v(l, w, w2, n, x, ldx, gr, img,
                            i8g_variant("QG_CUDA_I8G_VARIANT_GROUPED", QG_I8G_VARIANT_GROUPED));
}
