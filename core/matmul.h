/* matmul.h - single-precision matrix multiply kernels (row-major).
 *
 *   C[M,N] (+)= op(A)[M,K] * op(B)[K,N]
 *
 * op(A) = A (ta == 0, A is M x K with row stride lda) or A^T (ta == 1, A is
 * stored K x M with row stride lda); likewise op(B) with tb and ldb. With
 * accumulate == 0, C is overwritten; with accumulate == 1, the product is added
 * to C. Kernels never allocate: packing buffers are thread-local and static.
 *
 * Determinism: every C element is summed over k in one fixed order that
 * depends only on (M, N, K, ta, tb), never on the thread count, so results are
 * bitwise identical for any number of OpenMP threads.
 *
 *   float A[2*3], B[3*4], C[2*4];
 *   qkv_sgemm(0, 0, 2, 4, 3, A, 3, B, 4, 0, C, 4);   // C = A B
 *   qkv_sgemm(1, 0, 3, 4, 2, A, 3, C, 4, 1, B, 4);   // B += A^T C
 */
#ifndef QKV_MATMUL_H
#define QKV_MATMUL_H

/* C (+)= op(A) op(B). Uses OpenMP threads when the product is big enough and
 * the caller is not already inside a parallel region. */
void qkv_sgemm(int ta, int tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, int accumulate, float *C, int ldc);

/* C = max(op(A) op(B), 0), the relu applied as each tile of C is stored:
 * the same bits as qkv_sgemm followed by c = c > 0 ? c : 0, without a second
 * pass over C. */
void qkv_sgemm_relu(int ta, int tb, int M, int N, int K, const float *A,
                    int lda, const float *B, int ldb, float *C, int ldc);

/* Same contract, always on the calling thread (for use inside parallel loops).
 */
void qkv_sgemm_serial(int ta, int tb, int M, int N, int K, const float *A,
                      int lda, const float *B, int ldb, int accumulate,
                      float *C, int ldc);

/* The rows of a larger product: C = op(A) op(B) for M rows (relu: then
 * max(., 0), as qkv_sgemm_relu), each row with exactly the bits it would
 * get as a row of the same product with M_like rows. The kernels sum a row
 * the same way whatever M is, but long products (K >= 512) sum K in one or
 * two groups depending on M, N and K (see qkv_sgemm_k_groups); this takes
 * that choice from M_like. Incremental decoding computes the newest rows of
 * products that a full recompute does with every row. */
void qkv_sgemm_rows(int M_like, int relu, int ta, int tb, int M, int N, int K,
                    const float *A, int lda, const float *B, int ldb, float *C,
                    int ldc);
/* The same on the calling thread, with qkv_sgemm_serial's accumulate. */
void qkv_sgemm_rows_serial(int M_like, int ta, int tb, int M, int N, int K,
                           const float *A, int lda, const float *B, int ldb,
                           int accumulate, float *C, int ldc);
/* How a product of M rows groups its sum over K: 0 (one group), or where
 * the second group starts. Two products (same N and K) whose M give the
 * same value give the same bits in the rows they share; -1 with OpenBLAS
 * (no such promise). */
int qkv_sgemm_k_groups(int M, int N, int K);

/* Plain triple loop, the reference the fast kernels are tested against. */
void qkv_sgemm_ref(int ta, int tb, int M, int N, int K, const float *A, int lda,
                   const float *B, int ldb, int accumulate, float *C, int ldc);

/* Which kernel the build selected: "avx512", "avx2" or "portable". */
const char *qkv_sgemm_kernel_name(void);

#endif
