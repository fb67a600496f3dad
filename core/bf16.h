/* bf16.h - bfloat16 matrix products: operands rounded to bf16, products
 * summed in fp32 (what PyTorch's CPU autocast does for matmuls).
 *
 * bfloat16 is the top half of an IEEE float: sign, 8 exponent bits, 7
 * mantissa bits (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep
 * Learning Training"). A float becomes bf16 by rounding to nearest, ties to
 * even; NaN stays NaN (quiet). The product of two bf16 numbers is exact in
 * fp32 (8 + 8 significant bits < 24), so the only roundings of a product
 * are the fp32 additions, and their order is the whole contract:
 *
 *   C[i][j] (+)= sum over k of bf16(op(A)[i][k]) * bf16(op(B)[k][j])
 *
 * summed, for each block of QKV_BF16_KC consecutive k, from 0 in pairs
 * (k, k+1) with k even within the block: s = s + a[k+1] b[k+1], then
 * s = s + a[k] b[k] (a lone last k pairs with a zero); then the block sum
 * is stored (first block, no accumulate) or added to C (c = c + s). This is
 * the order of the AVX512-BF16 instruction vdpbf16ps (Intel SDM: odd element
 * first, each step one fused multiply-add with denormal inputs read as zero
 * and denormal results flushed to zero, round to nearest even), so these
 * kernels give the same bits:
 *
 *   avx512   vdpbf16ps, 12 x 32 register tiles (CPUs with avx512_bf16:
 *            Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on);
 *   portable plain C emulating it, denormals included, for any CPU.
 *
 * The AMX kernel sums in the order of its instruction instead: TDPBF16PS
 * (Intel SDM) takes 16 pairs of k at a time, sums their even and their odd
 * products apart (each step a fused multiply-add, DAZ, FTZ, round to nearest
 * even), adds the two, then adds that to the tile; each k block's sum is
 * still stored or added to C as above. Its bits differ from the others'
 * (its error is within the same bound: every term is still exact and passes
 * through at most K + 1 fp32 additions):
 *
 *   amx      Intel AMX, 32 x 32 pieces of C in four tiles (amx_tile +
 *            amx_bf16: Sapphire Rapids on), once Linux grants the process
 *            the tile state;
 *   amx-model the same kernel with its tile instructions modelled in C as
 *            the SDM defines them: slow, never chosen by itself; the tests
 *            run it on any CPU to check the AMX kernel's layouts and tile
 *            shapes, and compare the hardware with it where there is AMX.
 *
 * The kernel is chosen at run time (qkv_bf16_kernel_best), so one binary
 * runs everywhere; with any one kernel, results are bitwise identical for
 * any thread count, and a row of C does not depend on the other rows.
 *
 *   float A[2*3], B[3*4], C[2*4];
 *   qkv_gemm_bf16(0, 0, 2, 4, 3, A, 3, B, 4, 0, C, 4);   // C = A B in bf16
 */
#ifndef QKV_BF16_H
#define QKV_BF16_H

#include <stddef.h>
#include <stdint.h>

typedef uint16_t qkv_bf16;

/* The k block of the summation order above. A build may take another, a
 * multiple of 32 from 128 to 1024 (make BF16_KC=512, objects in
 * build-kc512/), to measure what the k blocks cost (bench/amx.sh: each
 * block's sums are added to C, a pass over C's tile that AMX's tiles make
 * large beside their products); its bits then differ from the default
 * build's. */
#ifndef QKV_BF16_KC
#define QKV_BF16_KC 256
#endif
/* The k block the library was built with: its QKV_BF16_KC, which a program
 * compiled with another -DQKV_BF16_KC than its libqkv.a does not see. */
int qkv_bf16_kc(void);

/* x rounded to bf16 (nearest, ties to even; NaN stays a quiet NaN). */
qkv_bf16 qkv_bf16_from_float(float x);
/* The float a bf16 number is (exact). */
float qkv_bf16_to_float(qkv_bf16 h);
/* x rounded to bf16 and back, n values (out may be x). */
void qkv_bf16_round(const float *x, float *out, size_t n);

typedef enum qkv_bf16_kernel {
    QKV_BF16_PORTABLE,
    QKV_BF16_AVX512,    /* avx512f + avx512_bf16 */
    QKV_BF16_AMX,       /* amx_tile + amx_bf16, and Linux's permission */
    QKV_BF16_AMX_MODEL, /* the AMX kernel on a C model of its instructions */
    QKV_BF16_N_KERNELS
} qkv_bf16_kernel;

/* "portable", "avx512-bf16", "amx-bf16", "amx-model" */
const char *qkv_bf16_kernel_name(qkv_bf16_kernel k);
/* 1 if this CPU (and build) can run kernel k; else 0 with the reason in
 * why (e.g. "this CPU has no avx512_bf16"). why may be NULL. */
int qkv_bf16_kernel_usable(qkv_bf16_kernel k, char *why, size_t cap);
/* The fastest usable kernel (amx, else avx512, else portable). */
qkv_bf16_kernel qkv_bf16_kernel_best(void);
/* The kernel the environment variable QKV_BF16_KERNEL names ("portable",
 * "avx512-bf16", "amx-bf16", "amx-model"), or the best where it is unset or
 * empty: a way to compare kernels, or to step around one, without
 * rebuilding. Returns 0 and sets *k; -1 with why (e.g. "QKV_BF16_KERNEL=x:
 * no such bf16 kernel (...)") when it names no kernel or one this CPU
 * cannot run. */
int qkv_bf16_kernel_env(qkv_bf16_kernel *k, char *why, size_t cap);
/* The kernel qkv_gemm_bf16 uses from now on (it must be usable); returns
 * the previous one. The first call of qkv_gemm_bf16 (or get_kernel) takes
 * qkv_bf16_kernel_env's, and a QKV_BF16_KERNEL it refuses is a fatal
 * one-line error there. */
qkv_bf16_kernel qkv_bf16_set_kernel(qkv_bf16_kernel k);
qkv_bf16_kernel qkv_bf16_get_kernel(void);

/* C (+)= bf16(op(A)) bf16(op(B)) in the order above, with the arguments of
 * qkv_sgemm (matmul.h). Uses OpenMP threads when the product is big enough
 * and the caller is not inside a parallel region. */
void qkv_gemm_bf16(int ta, int tb, int M, int N, int K, const float *A, int lda,
                   const float *B, int ldb, int accumulate, float *C, int ldc);

/* op(B) packed once for many products: a weight between two optimiser
 * steps is rounded and laid out in the kernel's order once, and every
 * product that reads it skips that work (decoding one token is a product
 * of one row, where packing the weight was nearly all the time). The
 * result is bitwise qkv_gemm_bf16's. Zero-initialise; it keeps a pointer
 * to B (src) only as a key: packing copies what it needs. */
typedef struct qkv_bf16_packed {
    int tb, K, N, ldb;
    const float *src; /* the B it was packed from */
    uint64_t version; /* free for the owner (qkv_params: its version) */
    uint32_t *words;  /* the packed slivers */
    size_t cap;       /* words allocated */
} qkv_bf16_packed;

/* Packs op(B) (K x N; tb, ldb as qkv_gemm_bf16's) into p (reusing its
 * memory when it is big enough). */
void qkv_bf16_pack(qkv_bf16_packed *p, int tb, int K, int N, const float *B,
                   int ldb);
/* qkv_gemm_bf16(ta, B->tb, M, B->N, B->K, A, lda, B->src, B->ldb, ...),
 * with B as packed. */
void qkv_gemm_bf16_packed(int ta, int M, const float *A, int lda,
                          const qkv_bf16_packed *B, int accumulate, float *C,
                          int ldc);

/* C = max(bf16(op(A)) bf16(op(B)), 0) (a NaN becomes 0, as qkv_sgemm_relu):
 * the ReLU applied as the last k block's sums are stored, not in a second
 * pass over C. The products' bits are qkv_gemm_bf16's. */
void qkv_gemm_bf16_relu(int ta, int tb, int M, int N, int K, const float *A,
                        int lda, const float *B, int ldb, float *C, int ldc);
void qkv_gemm_bf16_packed_relu(int ta, int M, const float *A, int lda,
                               const qkv_bf16_packed *B, float *C, int ldc);
void qkv_bf16_packed_free(qkv_bf16_packed *p);

/* For tests: a weight gradient's product cut along K (bf16.c, gemm_ksplit)
 * gives its first thread k blocks 0 .. first - 1 and the others the rest,
 * where they are otherwise taken as threads come free; 0 (the default):
 * taken so. The bits are the same for every value. */
extern int qkv_bf16_ksplit_first;

/* Pair words for kernels outside this file that run vdpbf16ps themselves
 * (core/attention.c's small heads). A word holds two bf16 as vdpbf16ps
 * pairs them: the lower k in the low half; a lone last k pairs with zero.
 * X is rows x n, row stride ld:
 *
 *   row_pairs    out[i ldo + p] = (X[i][2p], X[i][2p+1]), p < ceil(n/2):
 *                each row's pairs in a row (an A operand, k along rows);
 *   col_pairs    out[p ldo + j] = (X[2p][j], X[2p+1][j]), p < ceil(rows/2):
 *                pairs down the columns (a B operand; also A^T's words,
 *                read with a row stride of 1 and a pair stride of ldo);
 *   row_pairs_t  out[p ldo + i] = (X[i][2p], X[i][2p+1]), p < ceil(n/2):
 *                row_pairs transposed (X^T as a B operand).
 *
 * col_pairs and row_pairs_t fill each out row with zero words up to a
 * multiple of 16 (n, resp. rows, rounded up; ldo must be at least that),
 * so a kernel may read whole vectors. Rounding as the packing's: to
 * nearest even (a denormal may become a zero of its sign; vdpbf16ps reads
 * denormals as zero anyway). */
void qkv_bf16_row_pairs(int rows, int n, const float *X, size_t ld,
                        uint32_t *out, size_t ldo);
void qkv_bf16_col_pairs(int rows, int n, const float *X, size_t ld,
                        uint32_t *out, size_t ldo);
void qkv_bf16_row_pairs_t(int rows, int n, const float *X, size_t ld,
                          uint32_t *out, size_t ldo);

/* For core/attention.c's small heads where the kernel in use is amx-bf16
 * or amx-model (else a fatal error): c (rows x w floats, row stride ldc)
 * = A B from pair words, A's row i at a + i lda (np words), B's pair row p
 * at b + p ldb (w words, zero words after them up to a multiple of 16, as
 * col_pairs and row_pairs_t leave them), on the AMX kernel's tiles in its
 * order for one k block (np <= QKV_BF16_KC / 2): qkv_gemm_bf16's bits for
 * that product with that kernel. c's columns are written up to w rounded up
 * to 16 (ldc must be at least that; the extra ones are not C's). */
void qkv_bf16_amx_words(int rows, int w, int np, const uint32_t *a, size_t lda,
                        const uint32_t *b, size_t ldb, float *c, size_t ldc);

/* The definition itself, one element at a time (slow): what the kernels are
 * tested against. */
void qkv_gemm_bf16_ref(int ta, int tb, int M, int N, int K, const float *A,
                       int lda, const float *B, int ldb, int accumulate,
                       float *C, int ldc);

#endif
