/* matmul.c - packed, cache-blocked, register-blocked SGEMM (row-major).
 *
 * The scheme is the one of Goto & van de Geijn, "Anatomy of High-Performance
 * Matrix Multiplication" (ACM TOMS 34(3), 2008), with the loop order and the
 * small "micro-kernel" of BLIS (Van Zee & van de Geijn, "BLIS: A Framework
 * for Rapidly Instantiating BLAS Functionality", ACM TOMS 41(3), 2015):
 *
 *   for jc in N step NC:                      B panel   op(B)[kc, nc]  -> L3
 *     for pc in K step KC:                    pack it into pb (KC x NC)
 *       for ic in M step MC:                  A block   op(A)[mc, kc]  -> L2
 *         pack it into pa (MC x KC)
 *         for jr in nc step NR:               B sliver  [kc, NR]       -> L1
 *           for ir in mc step MR:             A sliver  [MR, kc] from L2
 *             C[ir:+MR, jr:+NR] (+)= pa sliver * pb sliver   (micro-kernel)
 *
 * Packing copies a block of op(A) (or op(B)) into the exact order the
 * micro-kernel reads it: A slivers as [kc][MR] (the MR values of one column k
 * are adjacent, to be broadcast), B slivers as [kc][NR] (one row of NR values,
 * NR/16 vector loads). The transposes ta/tb are absorbed here, so the kernel
 * sees one layout, and ragged edges are zero-padded so the kernel always runs
 * full MR x NR tiles (an edge tile lands in a local buffer; only its valid
 * part is copied out).
 *
 * The micro-kernel keeps the whole MR x NR tile of C in registers. AVX-512:
 * 8 x 32 = 16 zmm accumulators; per k, 2 loads of B, 8 broadcasts of A and 16
 * FMAs, i.e. 16 independent FMA chains where 2 pipes x 4 cycles latency need
 * 8. MR = 12 or 14 (24 or 28 accumulators) measured the same on large shapes
 * but wastes padded rows on the multiples of 8 that transformer shapes are.
 *
 * Determinism: C[i][j] is the sum over KC blocks taken in order, each block
 * summed by one accumulator with k ascending (long, thin products: two such
 * sums over the two halves of K, then added; see k_split). That depends only
 * on the shape (and the build's kernel), not on which part of the work a
 * thread owns, so threads split C into row/column ranges (or K in its two
 * halves) and the bits do not depend on the thread count.
 */
#include "matmul.h"
#include "common.h"
#include "threads.h"
#include "vec.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#ifdef QKV_OPENBLAS
#include <cblas.h>
#endif

/* Micro-tile MR x NR per instruction set. NR is a multiple of the vector
 * width; MR * NR / width accumulators + NR / width B vectors + 1 broadcast must
 * fit the register file (32 zmm, 16 ymm, 16 xmm). */
#if defined(__AVX512F__)
#define KERNEL_NAME "avx512"
#define MR          8
#define NR          32
#elif defined(__AVX2__) && defined(__FMA__)
#define KERNEL_NAME "avx2"
#define MR          6
#define NR          16
#else
#define KERNEL_NAME "portable"
#define MR          4
#define NR          8
#endif

/* Cache blocks (Zen 5: L1d 48 KiB, L2 1 MiB per core). A B sliver KC x NR
 * (32 KiB for AVX-512) stays in L1 while the MR-row slivers of A stream past
 * it; the packed A block MC x KC (160 KiB) lives in L2; the packed B panel
 * KC x NC (512 KiB) in L2/L3. Measured on Zen 5: KC 192..384, MC 120..480 and
 * NC 512..2048 are all within noise of each other. Overridable with -D for
 * tuning; KC changes the summation order, so results change bitwise. */
#ifndef KC
#define KC 256
#endif
#ifndef MC
#define MC (MR * 20)
#endif
#ifndef NC
#define NC 512
#endif
_Static_assert(MC % MR == 0 && NC % NR == 0, "MC, NC: multiples of MR, NR");

/* Threads only when each gets at least this many flops: below it, waking the
 * team costs about as much as the product (64^3 stays serial, 128^3 not). */
#define PAR_MIN_FLOPS 2.0e6

/* What the kernels do with C (`accumulate` inside this file): ADD adds the
 * product to C; RELU stores max(value, 0), on the last KC block only. */
enum { ADD = 1, RELU = 2 };

/* Packed B holds all of K for one NC panel when that fits (see
 * gemm_blocked); at least one KC x NC block. */
#ifndef PACK_B_MAX
#define PACK_B_MAX (1024 * NC)
#endif
_Static_assert(PACK_B_MAX >= KC * NC, "PACK_B_MAX: at least one KC block");

/* Packing buffers, one pair per thread (static TLS: kernels never allocate;
 * 2.2 MiB per thread with AVX-512, carved from each thread's stack
 * allocation by glibc; pages of B past K x NC are never touched). 64-byte
 * aligned so the kernel's loads of B are. */
static _Thread_local _Alignas(64) float pack_a_buf[MC * KC];
static _Thread_local _Alignas(64) float pack_b_buf[PACK_B_MAX];

/* ------------------------------------------------------------------------ */
/* Micro-kernels: c[MR, NR] (+)= a[MR, kc] b[kc, NR], kc >= 1.
 *   a: packed A sliver, a[k * MR + i] = op(A)[i][k]
 *   b: packed B sliver, b[k * NR + j] = op(B)[k][j], 64-byte aligned
 *   c: row stride ldc; add: 0 (c = ab), ADD (c = c + ab), and with RELU
 *      the result's negative (and NaN) elements stored as +0.
 * All three keep one accumulator per C element, summed in k order. */

#if defined(__AVX512F__)
static void kernel(int kc, const float *restrict a, const float *restrict b,
                   float *restrict c, size_t ldc, int add) {
    __m512 acc[MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += MR;
        b += NR;
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        float *ci = c + (size_t)i * ldc;
        if (add & ADD) {
            acc[i][0] = _mm512_add_ps(_mm512_loadu_ps(ci), acc[i][0]);
            acc[i][1] = _mm512_add_ps(_mm512_loadu_ps(ci + 16), acc[i][1]);
        }
        if (add & RELU) { /* max(NaN or -0, +0) gives +0, as x > 0 ? x : 0 */
            acc[i][0] = _mm512_max_ps(acc[i][0], _mm512_setzero_ps());
            acc[i][1] = _mm512_max_ps(acc[i][1], _mm512_setzero_ps());
        }
        _mm512_storeu_ps(ci, acc[i][0]);
        _mm512_storeu_ps(ci + 16, acc[i][1]);
    }
}
#elif defined(__AVX2__) && defined(__FMA__)
static void kernel(int kc, const float *restrict a, const float *restrict b,
                   float *restrict c, size_t ldc, int add) {
    __m256 acc[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
        a += MR;
        b += NR;
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        float *ci = c + (size_t)i * ldc;
        if (add & ADD) {
            acc[i][0] = _mm256_add_ps(_mm256_loadu_ps(ci), acc[i][0]);
            acc[i][1] = _mm256_add_ps(_mm256_loadu_ps(ci + 8), acc[i][1]);
        }
        if (add & RELU) {
            acc[i][0] = _mm256_max_ps(acc[i][0], _mm256_setzero_ps());
            acc[i][1] = _mm256_max_ps(acc[i][1], _mm256_setzero_ps());
        }
        _mm256_storeu_ps(ci, acc[i][0]);
        _mm256_storeu_ps(ci + 8, acc[i][1]);
    }
}
#else
/* Plain C; at -O3 the j loops become SSE2 multiplies and adds. */
static void kernel(int kc, const float *restrict a, const float *restrict b,
                   float *restrict c, size_t ldc, int add) {
    float acc[MR][NR] = {{0}};
    for (int k = 0; k < kc; k++) {
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[i] * b[j];
        a += MR;
        b += NR;
    }
    for (int i = 0; i < MR; i++) {
        float *ci = c + (size_t)i * ldc;
        for (int j = 0; j < NR; j++) {
            float v = add & ADD ? ci[j] + acc[i][j] : acc[i][j];
            ci[j] = add & RELU ? (v > 0.0f ? v : 0.0f) : v;
        }
    }
}
#endif

/* One mr x nr tile of C (mr <= MR, nr <= NR). A partial tile goes through a
 * local buffer: its valid elements get exactly the same operations (one
 * accumulator, then c + acc) as in a full tile, so results do not depend on
 * where the tile boundaries fall. */
static void tile(int mr, int nr, int kc, const float *a, const float *b,
                 float *c, size_t ldc, int add) {
    if (mr == MR && nr == NR) {
        kernel(kc, a, b, c, ldc, add);
        return;
    }
    _Alignas(64) float t[MR * NR];
    kernel(kc, a, b, t, NR, 0);
    for (int i = 0; i < mr; i++) {
        float *ci = c + (size_t)i * ldc;
        const float *ti = t + i * NR;
        for (int j = 0; j < nr; j++) {
            float v = add & ADD ? ci[j] + ti[j] : ti[j];
            ci[j] = add & RELU ? (v > 0.0f ? v : 0.0f) : v;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Packing. Both operands reduce to two patterns, with width = MR (A) or NR
 * (B) and n <= width valid lanes, the rest zero-padded:
 *   copy:      dst[k][i] = src[k * lds + i]   (op(A) with ta=1, op(B), tb=0)
 *   transpose: dst[k][i] = src[i * lds + k]   (op(A) with ta=0, op(B), tb=1)
 * where dst is a sliver [kc][width]; pack_copy fills all slivers of a block,
 * pack_transpose one. */

/* The copy pattern for a whole block of n lanes (ceil(n / width) slivers).
 * Going sliver by sliver would walk src down its columns with stride lds, and
 * going k by k across all slivers would write to many streams one sliver
 * (often a power of two bytes) apart; both map to a few L1 sets. So take 16
 * rows of src at a time (they stay in L1) and fill each sliver's 16 rows. */
static void pack_copy(int n, int width, int kc, const float *src, size_t lds,
                      float *restrict dst) {
    for (int k0 = 0; k0 < kc; k0 += 16) {
        int k1 = kc - k0 < 16 ? kc : k0 + 16;
        float *d = dst;
        for (int i0 = 0; i0 < n; i0 += width, d += (size_t)width * kc) {
            int w = n - i0 < width ? n - i0 : width;
            for (int k = k0; k < k1; k++) {
                const float *s = src + (size_t)k * lds + i0;
                float *dk = d + (size_t)k * width;
                if (w == width) { /* constant size: a few vector moves */
                    memcpy(dk, s, sizeof(float) * (size_t)width);
                } else {
                    memcpy(dk, s, sizeof(float) * (size_t)w);
                    memset(dk + w, 0, sizeof(float) * (size_t)(width - w));
                }
            }
        }
    }
}

static inline void pack_transpose(int n, int width, int kc, const float *src,
                                  size_t lds, float *restrict dst) {
    int k0 = 0;
#if defined(__AVX512F__)
    /* 16 k at a time: load up to 16 rows (zeros past n), transpose, store
     * the first `width` lanes of each k: 1/4 shuffle per element instead of
     * a scalar load and store (took 512x64x64 from 150 to 185 GFLOPS). */
    for (; k0 + 16 <= kc; k0 += 16)
        for (int i0 = 0; i0 < width; i0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i0 + i < n
                           ? _mm512_loadu_ps(src + (size_t)(i0 + i) * lds + k0)
                           : _mm512_setzero_ps();
            qkv_transpose16(r);
            int w = width - i0 < 16 ? width - i0 : 16;
            __mmask16 m = (__mmask16)((1u << w) - 1u);
            for (int k = 0; k < 16; k++)
                _mm512_mask_storeu_ps(dst + (size_t)(k0 + k) * width + i0, m,
                                      r[k]);
        }
#endif
    for (int i = 0; i < n; i++) {
        const float *s = src + (size_t)i * lds;
        for (int k = k0; k < kc; k++) dst[(size_t)k * width + i] = s[k];
    }
    for (int i = n; i < width; i++)
        for (int k = k0; k < kc; k++) dst[(size_t)k * width + i] = 0.0f;
}

/* pa <- op(A)[mc, kc] as ceil(mc / MR) slivers of [kc][MR]. A points at
 * op(A)[0][0] of the block: op(A)[i][k] = ta ? A[k lda + i] : A[i lda + k]. */
static void pack_a(int ta, int mc, int kc, const float *A, size_t lda,
                   float *restrict pa) {
    if (ta) {
        pack_copy(mc, MR, kc, A, lda, pa);
        return;
    }
    for (int ir = 0; ir < mc; ir += MR, pa += (size_t)MR * kc) {
        int mr = mc - ir < MR ? mc - ir : MR;
        pack_transpose(mr, MR, kc, A + (size_t)ir * lda, lda, pa);
    }
}

/* pb <- op(B)[kc, nc] as ceil(nc / NR) slivers of [kc][NR]. B points at
 * op(B)[0][0] of the block: op(B)[k][j] = tb ? B[j ldb + k] : B[k ldb + j]. */
static void pack_b(int tb, int kc, int nc, const float *B, size_t ldb,
                   float *restrict pb) {
    if (!tb) {
        pack_copy(nc, NR, kc, B, ldb, pb);
        return;
    }
    for (int jr = 0; jr < nc; jr += NR, pb += (size_t)NR * kc) {
        int nr = nc - jr < NR ? nc - jr : NR;
        pack_transpose(nr, NR, kc, B + (size_t)jr * ldb, ldb, pb);
    }
}

/* ------------------------------------------------------------------------ */
/* The micro-kernels over one packed A block (mc x kc) and B block
 * (kc x nc): C block (+)= pa pb. */
static void block_product(int mc, int nc, int kc, const float *pa,
                          const float *pb, float *C, size_t ldc, int add) {
    for (int jr = 0; jr < nc; jr += NR) {
        int nr = nc - jr < NR ? nc - jr : NR;
        for (int ir = 0; ir < mc; ir += MR) {
            int mr = mc - ir < MR ? mc - ir : MR;
            tile(mr, nr, kc, pa + (size_t)ir * kc, pb + (size_t)jr * kc,
                 C + (size_t)ir * ldc + jr, ldc, add);
        }
    }
}

/* What the kernels do to C for the KC block at pc: add all but the first
 * (or all, accumulating), relu once the last block is in. */
static int block_add(int accumulate, int pc, int kc, int K) {
    return (accumulate & ADD || pc > 0 ? ADD : 0) |
           (accumulate & RELU && pc + kc == K ? RELU : 0);
}

/* Packs op(A)[ic:+mc, pc:+kc] and multiplies it by the packed B block pb
 * (kc x nc) into rows ic.. of C (the panel's first column). */
static void a_block_product(int ta, const float *A, size_t lda, int ic, int mc,
                            int pc, int K, int nc, const float *pb, float *C,
                            size_t ldc, int accumulate) {
    int kc = K - pc < KC ? K - pc : KC;
    pack_a(ta, mc, kc,
           ta ? A + (size_t)pc * lda + ic : A + (size_t)ic * lda + pc, lda,
           pack_a_buf);
    block_product(mc, nc, kc, pack_a_buf, pb, C + (size_t)ic * ldc, ldc,
                  block_add(accumulate, pc, kc, K));
}

/* The five loops on the calling thread. M, N, K >= 1, arguments checked.
 *
 * When K x NC fits pack_b_buf, the B panel is packed for all of K first and
 * the loops run ic outside pc: each C block (MC x NC, 320 KiB) then takes
 * its KC blocks one after another while it is in L2, and the B blocks
 * stream through from L3, which the prefetchers handle. With pc outside
 * (the textbook order, kept for longer K) each KC block is one more pass
 * over all of C, a read-modify-write from L3 or memory whose misses stall
 * the kernel's final loads: products with K = 1024 measured 305-330
 * GFLOPS that way on 2 threads against 355 for K = 256. Either way a C
 * element gets its KC blocks in the same order: the bits do not change. */
static void gemm_blocked(int ta, int tb, int M, int N, int K, const float *A,
                         size_t lda, const float *B, size_t ldb, int accumulate,
                         float *C, size_t ldc) {
    float *pb = pack_b_buf;
    for (int jc = 0; jc < N; jc += NC) {
        int nc = N - jc < NC ? N - jc : NC;
        const float *Bj = tb ? B + (size_t)jc * ldb : B + jc;
        size_t ncp = (size_t)(nc + NR - 1) / NR * NR; /* padded slivers */
        if ((size_t)K * ncp <= PACK_B_MAX) {
            /* block pc at pb + pc ncp */
            for (int pc = 0; pc < K; pc += KC)
                pack_b(tb, K - pc < KC ? K - pc : KC, nc,
                       tb ? Bj + pc : Bj + (size_t)pc * ldb, ldb,
                       pb + (size_t)pc * ncp);
            for (int ic = 0; ic < M; ic += MC) {
                int mc = M - ic < MC ? M - ic : MC;
                for (int pc = 0; pc < K; pc += KC)
                    a_block_product(ta, A, lda, ic, mc, pc, K, nc,
                                    pb + (size_t)pc * ncp, C + jc, ldc,
                                    accumulate);
            }
            continue;
        }
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC;
            pack_b(tb, kc, nc, tb ? Bj + pc : Bj + (size_t)pc * ldb, ldb, pb);
            for (int ic = 0; ic < M; ic += MC)
                a_block_product(ta, A, lda, ic, M - ic < MC ? M - ic : MC, pc,
                                K, nc, pb, C + jc, ldc, accumulate);
        }
    }
}

/* Programmer errors abort with the numbers; they stay on in release builds. */
static void check_args(int ta, int tb, int M, int N, int K, const float *A,
                       int lda, const float *B, int ldb, const float *C,
                       int ldc) {
    const char *what = NULL;
    char msg[160];
    int arow = ta ? M : K, brow = tb ? K : N;
    if (M < 0 || N < 0 || K < 0)
        what = "negative size";
    else if (lda < arow || ldb < brow || ldc < N)
        what = "row stride smaller than the row length";
    else if ((A == NULL && (int64_t)M * K > 0) ||
             (B == NULL && (int64_t)K * N > 0) ||
             (C == NULL && (int64_t)M * N > 0))
        what = "NULL matrix with nonzero size";
    if (!what) return;
    snprintf(msg, sizeof msg,
             "ta=%d tb=%d M=%d N=%d K=%d lda=%d (>= %d) ldb=%d (>= %d) "
             "ldc=%d (>= %d) A=%p B=%p C=%p",
             ta, tb, M, N, K, lda, arow, ldb, brow, ldc, N, (const void *)A,
             (const void *)B, (const void *)C);
    fprintf(stderr, "qkv: sgemm: %s: %s\n", what, msg);
    abort();
}

/* Handles the empty cases; returns 1 if nothing is left to do. */
static int gemm_trivial(int M, int N, int K, int accumulate, float *C,
                        int ldc) {
    if (M == 0 || N == 0) return 1;
    if (K == 0) {
        if (!(accumulate & ADD)) /* C = 0 (relu(0) = 0) */
            for (int i = 0; i < M; i++)
                memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        return 1;
    }
    return 0;
}

/* ---- long products: K in two groups ----
 * A weight gradient dW = dY^T X sums over every row of the batch: K is
 * thousands while M x N is a few hundred squared. Cutting C into rectangles
 * then makes each thread pack the whole of one operand (the one its
 * rectangle spans), and both threads stream it from memory. Such products
 * instead split K in two groups of KC blocks, summed separately and then
 * added:  C = (C_old (+) group 0) + group 1,  group 1 into a static buffer.
 * Which products split depends on the shape alone, so the bits still do not
 * depend on the thread count; with two threads, each takes one group and
 * packs half of each operand. */
#define KSPLIT_MAX (1 << 18) /* C elements: 1 MiB of buffer per thread */
static _Thread_local _Alignas(64) float ksplit_buf[KSPLIT_MAX];

/* Length of group 0 (a multiple of KC), or 0: no split. */
static int k_split(int M, int N, int K) {
    if (K < 2 * KC || (int64_t)M * N > KSPLIT_MAX ||
        (int64_t)M * N * 8 > (int64_t)(M + N) * K)
        return 0;
    int blocks = (K + KC - 1) / KC;
    return (blocks + 1) / 2 * KC;
}

/* op(A)[:, k0:] and op(B)[k0:, :] */
static const float *a_from(int ta, const float *A, size_t lda, int k0) {
    return ta ? A + (size_t)k0 * lda : A + k0;
}
static const float *b_from(int tb, const float *B, size_t ldb, int k0) {
    return tb ? B + k0 : B + (size_t)k0 * ldb;
}

/* Rows [i0, i1) of C += buf (M x N, row stride N): the groups' sum, then
 * the relu when asked for. */
static void add_group(int i0, int i1, int N, const float *buf, float *C,
                      size_t ldc, int relu) {
    for (int i = i0; i < i1; i++) {
        float *c = C + (size_t)i * ldc;
        const float *b = buf + (size_t)i * N;
        for (int j = 0; j < N; j++) {
            float v = c[j] + b[j];
            c[j] = relu && !(v > 0.0f) ? 0.0f : v;
        }
    }
}

/* The split product on the calling thread. */
static void gemm_split_serial(int ta, int tb, int M, int N, int K, int K1,
                              const float *A, size_t lda, const float *B,
                              size_t ldb, int accumulate, float *C,
                              size_t ldc) {
    float *buf = ksplit_buf;
    gemm_blocked(ta, tb, M, N, K1, A, lda, B, ldb, accumulate & ADD, C, ldc);
    gemm_blocked(ta, tb, M, N, K - K1, a_from(ta, A, lda, K1), lda,
                 b_from(tb, B, ldb, K1), ldb, 0, buf, (size_t)N);
    add_group(0, M, N, buf, C, ldc, accumulate & RELU);
}

#ifdef _OPENMP
/* The grid of pm x pn rectangles nt threads cut C into (tm x tn tiles).
 * Each thread packs its own A rows and B columns, so the grid shape trades
 * packing work (pn copies of A, pm of B) against load balance; with 2
 * threads it splits the longer side. */
static void grid(int nt, int tm, int tn, int *pm, int *pn) {
    double best = -1.0;
    *pm = nt, *pn = 1;
    for (int d = 1; d <= nt; d++) {
        if (nt % d) continue;
        int e = nt / d;
        /* per-thread cost in element operations: flops / 16 + packing */
        double rows = (double)((tm + d - 1) / d) * MR;
        double cols = (double)((tn + e - 1) / e) * NR;
        double cost = rows * cols / 16.0 + rows + cols;
        if (best < 0.0 || cost < best) best = cost, *pm = d, *pn = e;
    }
}

/* Thread t of nt computes one rectangle of grid()'s over C, cut at
 * multiples of MR rows and NR columns; with a cut (a grid of one row or
 * column of rectangles, cut for nt) their sizes are the threads' shares
 * (threads.h), and the thread reports its time. */
static void gemm_part(int t, int nt, qkv_cut *cut, int ta, int tb, int M, int N,
                      int K, const float *A, size_t lda, const float *B,
                      size_t ldb, int accumulate, float *C, size_t ldc) {
    int tm = (M + MR - 1) / MR, tn = (N + NR - 1) / NR; /* tiles per side */
    int pm, pn;
    grid(nt, tm, tn, &pm, &pn);
    int im = t / pn, in = t % pn;
    int m0 = (int)((int64_t)tm * im / pm) * MR;
    int m1 = (int)((int64_t)tm * (im + 1) / pm) * MR;
    int n0 = (int)((int64_t)tn * in / pn) * NR;
    int n1 = (int)((int64_t)tn * (in + 1) / pn) * NR;
    if (cut && cut->nt != nt) cut = NULL;
    if (cut && pn == 1) {
        qkv_share_range(cut, t, &m0, &m1);
        m0 *= MR, m1 *= MR;
    } else if (cut) {
        qkv_share_range(cut, t, &n0, &n1);
        n0 *= NR, n1 *= NR;
    }
    m1 = m1 < M ? m1 : M;
    n1 = n1 < N ? n1 : N;
    if (m0 >= m1 || n0 >= n1) return;
    const float *Ap = ta ? A + m0 : A + (size_t)m0 * lda;
    const float *Bp = tb ? B + (size_t)n0 * ldb : B + n0;
    gemm_blocked(ta, tb, m1 - m0, n1 - n0, K, Ap, lda, Bp, ldb, accumulate,
                 C + (size_t)m0 * ldc + n0, ldc);
    if (cut) qkv_share_done(cut, t);
}

/* The split product on a team of nt >= 2 threads (called by each): the
 * first half of the team computes group 0 into C, the second group 1 into
 * buf (the calling thread's), then all add buf to C by rows. */
static void gemm_split_part(int t, int nt, int ta, int tb, int M, int N, int K,
                            int K1, const float *A, size_t lda, const float *B,
                            size_t ldb, int accumulate, float *C, size_t ldc,
                            float *buf) {
    int n0 = nt / 2;
    if (t < n0)
        gemm_part(t, n0, NULL, ta, tb, M, N, K1, A, lda, B, ldb,
                  accumulate & ADD, C, ldc);
    else
        gemm_part(t - n0, nt - n0, NULL, ta, tb, M, N, K - K1,
                  a_from(ta, A, lda, K1), lda, b_from(tb, B, ldb, K1), ldb, 0,
                  buf, (size_t)N);
#pragma omp barrier
    add_group((int)((int64_t)M * t / nt), (int)((int64_t)M * (t + 1) / nt), N,
              buf, C, ldc, accumulate & RELU);
}
#endif

/* The whole product on the calling thread, K in groups as K1 says (0: one
 * group; see k_split); arguments already checked. */
static void gemm_serial(int K1, int ta, int tb, int M, int N, int K,
                        const float *A, size_t lda, const float *B, size_t ldb,
                        int accumulate, float *C, size_t ldc) {
    if (K1)
        gemm_split_serial(ta, tb, M, N, K, K1, A, lda, B, ldb, accumulate, C,
                          ldc);
    else
        gemm_blocked(ta, tb, M, N, K, A, lda, B, ldb, accumulate, C, ldc);
}

/* qkv_sgemm_serial, K grouped as for a product of M_like rows */
static void sgemm_serial(int M_like, int ta, int tb, int M, int N, int K,
                         const float *A, int lda, const float *B, int ldb,
                         int accumulate, float *C, int ldc) {
    ta = ta != 0, tb = tb != 0, accumulate = accumulate != 0;
    check_args(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    if (gemm_trivial(M, N, K, accumulate, C, ldc)) return;
    gemm_serial(k_split(M_like, N, K), ta, tb, M, N, K, A, (size_t)lda, B,
                (size_t)ldb, accumulate, C, (size_t)ldc);
}

void qkv_sgemm_serial(int ta, int tb, int M, int N, int K, const float *A,
                      int lda, const float *B, int ldb, int accumulate,
                      float *C, int ldc) {
    sgemm_serial(M, ta, tb, M, N, K, A, lda, B, ldb, accumulate, C, ldc);
}

void qkv_sgemm_rows_serial(int M_like, int ta, int tb, int M, int N, int K,
                           const float *A, int lda, const float *B, int ldb,
                           int accumulate, float *C, int ldc) {
    sgemm_serial(M_like, ta, tb, M, N, K, A, lda, B, ldb, accumulate, C, ldc);
}

int qkv_sgemm_k_groups(int M, int N, int K) {
#ifdef QKV_OPENBLAS
    (void)M, (void)N, (void)K;
    return -1;
#else
    return k_split(M, N, K);
#endif
}

/* qkv_sgemm with accumulate = 0, ADD or RELU; K grouped as for a product
 * of M_like rows (M_like = M but in qkv_sgemm_rows) */
static void sgemm(int M_like, int ta, int tb, int M, int N, int K,
                  const float *A, int lda, const float *B, int ldb,
                  int accumulate, float *C, int ldc) {
    ta = ta != 0, tb = tb != 0;
    check_args(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    if (gemm_trivial(M, N, K, accumulate, C, ldc)) return;
    (void)M_like; /* unused with OpenBLAS */
#ifdef QKV_OPENBLAS
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb,
                accumulate & ADD ? 1.0f : 0.0f, C, ldc);
    if (accumulate & RELU)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (size_t)i * ldc + j;
                *c = *c > 0.0f ? *c : 0.0f;
            }
    return;
#endif
#ifdef _OPENMP
    double flops = 2.0 * M * N * K;
    int nt = omp_get_max_threads();
    int tiles = ((M + MR - 1) / MR) * ((N + NR - 1) / NR);
    if (nt > tiles) nt = tiles;
    if (nt > flops / PAR_MIN_FLOPS) nt = (int)(flops / PAR_MIN_FLOPS);
    int K1 = k_split(M_like, N, K);
    if (nt > 1 && !omp_in_parallel()) {
        float *buf = ksplit_buf; /* the calling thread's */
        /* one row or column of rectangles: cut by the threads' shares */
        qkv_cut cut, *shares = NULL;
        int tm = (M + MR - 1) / MR, tn = (N + NR - 1) / NR, pm, pn;
        grid(nt, tm, tn, &pm, &pn);
        if (!K1 && (pm == 1 || pn == 1)) {
            qkv_share_cut(&cut, pn == 1 ? tm : tn, nt, QKV_SHARE_PRODUCT);
            shares = &cut;
        }
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), n = omp_get_num_threads();
            if (K1 && n > 1)
                gemm_split_part(t, n, ta, tb, M, N, K, K1, A, (size_t)lda, B,
                                (size_t)ldb, accumulate, C, (size_t)ldc, buf);
            else if (K1 && t == 0) /* a team of one after all */
                gemm_split_serial(ta, tb, M, N, K, K1, A, (size_t)lda, B,
                                  (size_t)ldb, accumulate, C, (size_t)ldc);
            else if (!K1)
                gemm_part(t, n, shares, ta, tb, M, N, K, A, (size_t)lda, B,
                          (size_t)ldb, accumulate, C, (size_t)ldc);
        }
        if (shares) qkv_share_learn(shares);
        return;
    }
#endif
    gemm_serial(k_split(M_like, N, K), ta, tb, M, N, K, A, (size_t)lda, B,
                (size_t)ldb, accumulate, C, (size_t)ldc);
}

void qkv_sgemm(int ta, int tb, int M, int N, int K, const float *A, int lda,
               const float *B, int ldb, int accumulate, float *C, int ldc) {
    sgemm(M, ta, tb, M, N, K, A, lda, B, ldb, accumulate ? ADD : 0, C, ldc);
}

void qkv_sgemm_relu(int ta, int tb, int M, int N, int K, const float *A,
                    int lda, const float *B, int ldb, float *C, int ldc) {
    sgemm(M, ta, tb, M, N, K, A, lda, B, ldb, RELU, C, ldc);
}

#if !defined(QKV_OPENBLAS) &&                                                  \
    (defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__)))
#define ROWS_FMA 1
/* A few rows of C = op(A) op(B), ta = tb = 0, without packing: the micro
 * kernels' operations element by element (one accumulator per KC block,
 * fused multiply-adds in k order from zero, then c + acc; the two groups
 * of a split sum added; the relu last), so the same bits as the blocked
 * path, for the one or few rows of a decoding step, where packing B and
 * running MR-row tiles for one row cost up to 8 times the product. Four
 * 16-column blocks at a time keep four FMA chains in flight. */
static void rows_fma(int K1, int M, int N, int K, const float *A, size_t lda,
                     const float *B, size_t ldb, int relu, float *C,
                     size_t ldc) {
    enum { NB = 4 };
    for (int i = 0; i < M; i++) {
        const float *a = A + (size_t)i * lda;
        for (int j0 = 0; j0 < N; j0 += NB * VW) {
            int w[NB], nb = 0;
            for (int b = 0; b < NB && j0 + b * VW < N; b++, nb++)
                w[b] = N - j0 - b * VW < VW ? N - j0 - b * VW : VW;
            vf c[NB], g[NB];
            for (int grp = 0; grp < (K1 ? 2 : 1); grp++) {
                int k0 = grp ? K1 : 0, k1 = K1 && !grp ? K1 : K;
                vf *sum = grp ? g : c;
                for (int pc = k0; pc < k1; pc += KC) {
                    int ke = k1 - pc < KC ? k1 : pc + KC;
                    vf acc[NB];
                    for (int b = 0; b < nb; b++) acc[b] = vsplat(0.0f);
                    for (int k = pc; k < ke; k++) {
                        vf x = vsplat(a[k]);
                        const float *bk = B + (size_t)k * ldb + j0;
                        for (int b = 0; b < nb; b++)
                            acc[b] =
                                vfma(x, vload_part(bk + b * VW, w[b]), acc[b]);
                    }
                    for (int b = 0; b < nb; b++)
                        sum[b] = pc == k0 ? acc[b] : sum[b] + acc[b];
                }
            }
            for (int b = 0; b < nb; b++) {
                vf v = K1 ? c[b] + g[b] : c[b];
                if (relu) v = vmax(v, vsplat(0.0f));
                float t[VW];
                memcpy(t, &v, sizeof t);
                memcpy(C + (size_t)i * ldc + j0 + b * VW, t,
                       (size_t)w[b] * sizeof(float));
            }
        }
    }
}
#endif

void qkv_sgemm_rows(int M_like, int relu, int ta, int tb, int M, int N, int K,
                    const float *A, int lda, const float *B, int ldb, float *C,
                    int ldc) {
#ifdef ROWS_FMA
    if (!ta && !tb && M >= 1 && M <= 4 && N >= 1 && K >= 1) {
        check_args(0, 0, M, N, K, A, lda, B, ldb, C, ldc);
        rows_fma(k_split(M_like, N, K), M, N, K, A, (size_t)lda, B, (size_t)ldb,
                 relu, C, (size_t)ldc);
        return;
    }
#endif
    sgemm(M_like, ta, tb, M, N, K, A, lda, B, ldb, relu ? RELU : 0, C, ldc);
}

void qkv_sgemm_ref(int ta, int tb, int M, int N, int K, const float *A, int lda,
                   const float *B, int ldb, int accumulate, float *C, int ldc) {
    check_args(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
            }
            float *c = C + (size_t)i * ldc + j;
            *c = accumulate ? *c + s : s;
        }
}

const char *qkv_sgemm_kernel_name(void) {
#ifdef QKV_OPENBLAS
    return "openblas";
#else
    return KERNEL_NAME;
#endif
}
