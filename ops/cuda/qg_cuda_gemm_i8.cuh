/*
 * qg_cuda_gemm_i8.cuh - the prefill (multi-token) products over Q4_K / Q6_K
 * weights on the integer tensor cores (op_gemm_i8.cu), as op_gemm.cu and
 * the kernel lab call them (ops/cuda/ and tools/kernels/ only).
 *
 * Numerics: as the decode products of qg_cuda_i8.cuh.  Each activation
 * column is turned once per product into a 24-bit fixed-point image (three
 * int8 planes, one f32 scale per 256 elements, the f32 sums of each
 * 32-element group); the weight quants times the planes are exact integer
 * sub-block dot products (mma.sync s8 x s8 -> s32), the 6-bit (Q4_K) or
 * 8-bit (Q6_K) sub-block scales are applied as integer multiply-adds over
 * half a super-block (128 elements), and d, dmin and the column's scale in
 * f32.  Error per output: at most 1.5 s_b |w_i| per element (s_b =
 * max|x| of its super-block / 8257536, i.e. 1.8e-7 of that maximum) plus
 * f32 rounding of the per-128-element partial sums.
 *
 * Prefill image of one column of n elements (n % 256 == 0), column c at
 * img + c * qg_i8p_col_bytes(n):
 *   planes  n/32 groups of 96 bytes: group j = [a: 32 | b: 32 | c: 32];
 *           byte 8t+i (t < 4, i < 8) of a plane holds element
 *           32j + 4t + i (i < 4) or 32j + 16 + 4t + (i - 4) (i >= 4), so
 *           lane t of an mma reads its B fragment (k-slots 4t..4t+3 and
 *           16+4t..16+4t+3 of m16n8k32; or, for m16n8k16, k-slots 4t..4t+3
 *           of the two 16-element halves) as one 8-byte word
 *   sums    n/32 floats at byte 3n: s_b * (sum of X over group j)
 *   scale   n/256 floats after the sums: s_b
 * (X = 65536 a + 256 b + c as in qg_cuda_i8.cuh; a non-finite element
 * makes its super-block's scale NaN, so results are NaN as on f32 paths.)
 *
 * Scratch: a node that runs these products takes its images from the tail
 * of its device scratch, declared by qg_cu_gemm_needs (called last by
 * qg_cuda_op_needs).
 */
#ifndef QG_CUDA_GEMM_I8_CUH
#define QG_CUDA_GEMM_I8_CUH

#include "qg_cuda_internal.cuh"

/* Bytes of one column's prefill image (n % 256 == 0), a multiple of 64. */
__host__ __device__ constexpr size_t qg_i8p_col_bytes(int n) {
    return ((size_t)n * 3 + sizeof(float) * ((size_t)n / 32 + (size_t)n / 256) + 63) & ~(size_t)63;
}

/* Image bytes node n (of graph g, options o) takes at the tail of its
 * scratch; 0 when none of its products runs on the integer path. */
size_t qg_cu_gemm_image_bytes(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o);

/* Declare those bytes in b (the node's scratch layout; call it last). */
void qg_cu_gemm_needs(const qg_graph *g, const qg_node *n, const qg_cuda_opts *o, qg_cu_bump *b);

/* Does the integer path take a product of w (and w2 for dual) over n
 * inputs?  Q4_K / Q6_K weights (w2 of w's type), n % 256 == 0, not
 * f32_prefill, i8_decode on (QG_CUDA_I8=0 turns both paths off). */
bool qg_i8g_ok(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n);

/* The image region of launch l for `bytes` bytes, or NULL when its scratch
 * does not hold one (then the f16 products run). */
uint8_t *qg_i8g_image(const qg_cuda_launch *l, size_t bytes);

/* As qg_cu_gemm_dense / qg_cu_gemm_grouped (qg_cuda_internal.cuh) on the
 * integer path, images built into img (qg_i8g_image).  Grouped: the node
 * gives K (x columns per token: K / xdiv). */
cudaError_t qg_i8g_dense(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2, int n,
                         const float *x, int ldx, const float *add, uint8_t *img);
cudaError_t qg_i8g_grouped(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const qg_cu_groups *gr, uint8_t *img);

/* Dense products of nm <= 3 matrices over the same x (qkv) in one grid
 * over all their row tiles, from one image: mats[i].y = mats[i] x, each
 * matrix its own type (Q4_K or Q6_K, qg_i8g_ok for each); add (or NULL)
 * is added to matrix 0's outputs only. */
cudaError_t qg_i8g_multi(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, int n, const float *x,
                         int ldx, const float *add, uint8_t *img);

/* Dense (nm matrices, or one dual pair w, w2) and grouped products with a
 * kernel variant (the kernel lab's versions):
 *   0  B read straight from the image (warps independent), 64 rows x 32 or
 *      64 columns per CTA
 *   1  B staged per step in shared memory (cp.async, double-buffered, one
 *      barrier per step), 64 rows x 32 columns
 *   2  every operand of a super-block staged (weights, B, column sums and
 *      scales; cp.async, two stages), 8 warps: 128 rows (dual: 64 rows of
 *      each matrix) x 32 columns
 *   3  as 2 with 4 warps and 64 rows (dual: as 2)
 * The product uses QG_I8G_VARIANT (dense, qkv) and QG_I8G_VARIANT_GROUPED
 * (experts), or the digit in the environment variables
 * QG_CUDA_I8G_VARIANT / QG_CUDA_I8G_VARIANT_GROUPED at capture time.  cudaErrorInvalidValue: bad arguments (nothing enqueued). */
/* Variant 2 measured best on an H100 (2026-11-22): pp512 8321 tok/s with
 * it for the experts against 7768 with variant 1 and 8098 with 3; lab_gemm:
 * attn_output 108 against 137 us, q+k+v 166 against 172 us. */
#define QG_I8G_VARIANT 2
#define QG_I8G_VARIANT_GROUPED 2
cudaError_t qg_i8g_multi_v(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const float *add, uint8_t *img, int variant);
cudaError_t qg_i8g_dense_v(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                           int n, const float *x, int ldx, const float *add, uint8_t *img,
                           int variant);
cudaError_t qg_i8g_grouped_v(const qg_cuda_launch *l, const qg_cu_mat *w, const qg_cu_mat *w2,
                             int n, const float *x, int ldx, const qg_cu_groups *gr, uint8_t *img,
                             int variant);

/* Kernel attributes of the integer products (dynamic shared memory above
 * 48 KiB for variants 2 and 3); called by qg_cu_gemm_prepare. */
cudaError_t qg_i8g_prepare(void);

/* Several dense products over the same x (qkv; op_gemm.cu): the integer
 * path's qg_i8g_multi when every matrix takes it, else qg_cu_gemm_dense
 * per matrix; add applies to matrix 0.  (op_matvec.cu's qg_cu_product
 * declares it locally: it does not include this header.) */
cudaError_t qg_cu_gemm_multi(const qg_cuda_launch *l, const qg_cu_mat *mats, int nm, int n,
                             const float *x, int ldx, const float *add);

/* Experts per token of a grouped node (expert_swiglu, aggregate,
 * moe_fused), 0 for other ops. */
int qg_i8g_node_k(const qg_graph *g, const qg_node *n);

#endif
