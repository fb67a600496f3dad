/* bench_matmul.c - GFLOPS of qkv_sgemm on square and transformer shapes.
 *
 * Each number is the median of 7 runs; a run repeats the call until at least
 * 50 ms have passed (CLOCK_MONOTONIC). GFLOPS = 2 M N K / seconds / 1e9.
 * Usage: bench_matmul [quick]           all shapes ("quick": 1 run of >= 10 ms)
 *        bench_matmul ta tb M N K      one shape
 *        bench_matmul bf16 [quick]     qkv_gemm_bf16 (core/bf16.h) beside
 *                                      qkv_sgemm on the transformer shapes,
 *                                      and the CPU's FMA and bf16 peaks
 *        bench_matmul bf16 peak        those peaks alone, key=value
 *
 * When libopenblas.so.0 can be loaded (apt-get install libopenblas0-pthread)
 * its cblas_sgemm is measured beside, with OPENBLAS_CORETYPE=SkylakeX unless
 * set (OpenBLAS 0.3.21 picks its AVX2 kernels on this AVX-512 CPU otherwise),
 * and the ratio qkv / OpenBLAS is printed. It is loaded at run time, so the
 * build needs nothing.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include "bf16.h"
#include "common.h"
#include "matmul.h"

#include <dlfcn.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int n_runs = 7;
static double min_run_s = 0.05;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef void (*gemm_fn)(int, int, int, int, int, const float *, int,
                        const float *, int, int, float *, int);

static void set_threads(int nt) {
#ifdef _OPENMP
    omp_set_num_threads(nt);
#else
    (void)nt;
#endif
}

/* OpenBLAS, when it loads: cblas_sgemm behind qkv_sgemm's signature. */
typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float,
                               const float *, int, const float *, int, float,
                               float *, int);
static cblas_sgemm_fn ob_sgemm;
static void (*ob_set_threads)(int);

static void openblas_load(void) {
    /* This machine's environment presets OPENBLAS_CORETYPE=Haswell (AVX2);
     * QKV_OPENBLAS_CORETYPE chooses another. */
    const char *core = getenv("QKV_OPENBLAS_CORETYPE");
    setenv("OPENBLAS_CORETYPE", core ? core : "SkylakeX", 1);
    void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    *(void **)&ob_sgemm = dlsym(h, "cblas_sgemm");
    *(void **)&ob_set_threads = dlsym(h, "openblas_set_num_threads");
    if (!ob_sgemm || !ob_set_threads) ob_sgemm = NULL;
}

static void openblas_gemm(int ta, int tb, int M, int N, int K, const float *A,
                          int lda, const float *B, int ldb, int accumulate,
                          float *C, int ldc) {
    enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
    ob_sgemm(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, M, N, K,
             1.0f, A, lda, B, ldb, accumulate ? 1.0f : 0.0f, C, ldc);
}

/* median GFLOPS of fn on C[M,N] = op(A)[M,K] op(B)[K,N] with nt threads */
static double bench(gemm_fn fn, int nt, int ta, int tb, int M, int N, int K) {
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
    float *C = malloc(nc * sizeof(float));
    if (!A || !B || !C) {
        fprintf(stderr, "bench_matmul: out of memory\n");
        exit(1);
    }
    uint32_t x = 12345;
    for (size_t i = 0; i < na; i++)
        x = x * 1664525u + 1013904223u,
        A[i] = (float)(x >> 9) / 8388608.0f - 0.5f;
    for (size_t i = 0; i < nb; i++)
        x = x * 1664525u + 1013904223u,
        B[i] = (float)(x >> 9) / 8388608.0f - 0.5f;
    memset(C, 0, nc * sizeof(float));
    int lda = ta ? M : K, ldb = tb ? K : N;
    set_threads(nt);
    if (ob_set_threads) ob_set_threads(nt);
    fn(ta, tb, M, N, K, A, lda, B, ldb, 0, C, N); /* warm up */
    double rate[16];
    for (int r = 0; r < n_runs; r++) {
        long reps = 0;
        double t0 = qkv_seconds(), t;
        do {
            fn(ta, tb, M, N, K, A, lda, B, ldb, 0, C, N);
            reps++;
            t = qkv_seconds() - t0;
        } while (t < min_run_s);
        rate[r] = 2.0 * M * N * K * (double)reps / t / 1e9;
    }
    qsort(rate, (size_t)n_runs, sizeof(double), cmp_double);
    free(A);
    free(B);
    free(C);
    return rate[n_runs / 2];
}

/* The cases are measured qkv first, all of them, then OpenBLAS: OpenBLAS's
 * threads keep spinning for a while after a call and would slow the OpenMP
 * threads of a qkv measurement that followed it. */
typedef struct bench_case {
    const char *label;
    int ta, tb, M, N, K;
} bench_case;

static void run_cases(const bench_case *c, int n) {
    double(*g)[4] = calloc((size_t)n, sizeof *g);
    for (int i = 0; i < n; i++) {
        g[i][0] = bench(qkv_sgemm, 1, c[i].ta, c[i].tb, c[i].M, c[i].N, c[i].K);
        g[i][1] = bench(qkv_sgemm, 2, c[i].ta, c[i].tb, c[i].M, c[i].N, c[i].K);
    }
    for (int i = 0; i < n && ob_sgemm; i++) {
        g[i][2] =
            bench(openblas_gemm, 1, c[i].ta, c[i].tb, c[i].M, c[i].N, c[i].K);
        g[i][3] =
            bench(openblas_gemm, 2, c[i].ta, c[i].tb, c[i].M, c[i].N, c[i].K);
    }
    for (int i = 0; i < n; i++) {
        printf("%-22s %2d %2d %5d %5d %5d %9.1f %9.1f", c[i].label, c[i].ta,
               c[i].tb, c[i].M, c[i].N, c[i].K, g[i][0], g[i][1]);
        if (ob_sgemm)
            printf(" %9.1f %9.1f %6.0f%% %6.0f%%", g[i][2], g[i][3],
                   100 * g[i][0] / g[i][2], 100 * g[i][1] / g[i][3]);
        printf("\n");
    }
    free(g);
}

/* ------------------------------------------------------------------ bf16 */

/* Peak GFLOPS of one core: 16 independent accumulators (enough to cover the
 * latency of 2 pipes), in registers, no memory traffic. fp32 FMA: 32 flops
 * per zmm instruction; vdpbf16ps: 64 (16 lanes x 2 products x 2). */
#if defined(__x86_64__)
#define PEAK_LOOP(T, ZERO, OP, FLOPS)                                          \
    do {                                                                       \
        T acc[16];                                                             \
        for (int i = 0; i < 16; i++) acc[i] = ZERO;                            \
        long reps = 0;                                                         \
        double t0 = qkv_seconds(), t;                                          \
        do {                                                                   \
            for (int it = 0; it < 4096; it++) {                                \
                _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) acc[i] = \
                    OP;                                                        \
            }                                                                  \
            reps += 4096;                                                      \
            t = qkv_seconds() - t0;                                            \
        } while (t < 0.2);                                                     \
        float sink = 0;                                                        \
        for (int i = 0; i < 16; i++) {                                         \
            float v[16];                                                       \
            memcpy(v, &acc[i], sizeof v);                                      \
            sink += v[0];                                                      \
        }                                                                      \
        if (sink == 12345.0f) printf(" ");                                     \
        return (double)reps * 16 * FLOPS / t / 1e9;                            \
    } while (0)

__attribute__((target("avx512f"))) static double peak_fma(void) {
    __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
    PEAK_LOOP(__m512, _mm512_setzero_ps(), _mm512_fmadd_ps(acc[i], x, y), 32);
}

__attribute__((target("avx512f,avx512bf16"))) static double peak_bf16(void) {
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    PEAK_LOOP(__m512, _mm512_setzero_ps(), _mm512_dpbf16_ps(acc[i], x, x), 64);
}

/* AMX: four 16 x 16 accumulator tiles (tmm0-3) fed by two A tiles (tmm4,
 * tmm5) and two B tiles (tmm6, tmm7), all 16 rows x 64 bytes, in registers;
 * one TDPBF16PS is 16 x 16 x 32 x 2 = 16384 flops. Only where
 * qkv_bf16_kernel_usable granted the tile state, and before any AMX product
 * on this thread: it loads its own tile configuration, which core/bf16.c
 * (keeping each thread's between products) does not know about. */
static double peak_amx(void) {
    uint8_t cfg[64] = {1};
    for (int t = 0; t < 8; t++) cfg[16 + 2 * t] = 64, cfg[48 + t] = 16;
    __asm__ volatile("ldtilecfg (%0)" ::"r"(cfg) : "memory");
    long reps = 0;
    double t0 = qkv_seconds(), t;
    do {
        for (int it = 0; it < 1024; it++)
            __asm__ volatile("tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\t"
                             "tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
                             "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\t"
                             "tdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::);
        reps += 1024;
        t = qkv_seconds() - t0;
    } while (t < 0.2);
    __asm__ volatile("tilerelease" ::);
    return (double)reps * 4 * 16384 / t / 1e9;
}
#endif

static void run_bf16(void) {
    qkv_bf16_kernel k = qkv_bf16_kernel_best();
    printf("qkv_gemm_bf16 kernel: %s; qkv_sgemm kernel: %s; GFLOPS (median "
           "of %d runs)\n",
           qkv_bf16_kernel_name(k), qkv_sgemm_kernel_name(), n_runs);
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        double f = peak_fma();
        printf("one core's peak: fp32 FMA %.1f GFLOPS", f);
        if (qkv_bf16_kernel_usable(QKV_BF16_AVX512, NULL, 0))
            printf(", vdpbf16ps %.1f GFLOPS (%.2fx)", peak_bf16(),
                   peak_bf16() / f);
        if (qkv_bf16_kernel_usable(QKV_BF16_AMX, NULL, 0)) {
            double a = peak_amx();
            printf(", AMX TDPBF16PS %.1f GFLOPS (%.2fx)", a, a / f);
        }
        printf("\n");
    }
#endif
    printf("%-14s %2s %2s %5s %5s %5s %8s %8s %8s %8s %6s %6s\n", "case", "ta",
           "tb", "M", "N", "K", "fp32 1t", "bf16 1t", "fp32 2t", "bf16 2t",
           "x 1t", "x 2t");
    static const int tf[][3] = {
        {1024, 384, 128},  {1024, 512, 128},   {1024, 128, 512},
        {2048, 768, 256},  {2048, 1024, 256},  {2048, 256, 1024},
        {2048, 1000, 256}, {1024, 1024, 1024},
    };
    for (size_t i = 0; i < sizeof tf / sizeof tf[0]; i++) {
        int M = tf[i][0], N = tf[i][1], K = tf[i][2];
        bench_case c[3] = {{"fwd  X W^T", 0, 1, M, N, K},
                           {"bwd  dY W", 0, 0, M, K, N},
                           {"bwd  dY^T X", 1, 0, N, K, M}};
        for (int j = 0; j < 3; j++) {
            double g[4];
            for (int t = 1; t <= 2; t++) {
                g[2 * t - 2] = bench(qkv_sgemm, t, c[j].ta, c[j].tb, c[j].M,
                                     c[j].N, c[j].K);
                g[2 * t - 1] = bench(qkv_gemm_bf16, t, c[j].ta, c[j].tb, c[j].M,
                                     c[j].N, c[j].K);
            }
            printf("%-14s %2d %2d %5d %5d %5d %8.1f %8.1f %8.1f %8.1f %6.2f "
                   "%6.2f\n",
                   c[j].label, c[j].ta, c[j].tb, c[j].M, c[j].N, c[j].K, g[0],
                   g[1], g[2], g[3], g[1] / g[0], g[3] / g[2]);
        }
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "quick") == 0) n_runs = 1, min_run_s = 0.01;
    if (argc > 1 && strcmp(argv[1], "bf16") == 0) {
        if (argc > 2 && strcmp(argv[2], "peak") == 0) { /* key=value */
            double f = 0, b = 0;
#if defined(__x86_64__)
            __builtin_cpu_init();
            if (__builtin_cpu_supports("avx512f")) f = peak_fma();
            if (qkv_bf16_kernel_usable(QKV_BF16_AVX512, NULL, 0))
                b = peak_bf16();
            double a = 0;
            if (qkv_bf16_kernel_usable(QKV_BF16_AMX, NULL, 0)) a = peak_amx();
            if (a > 0) printf("amx_peak_gflops=%.1f ", a);
#endif
            printf("bf16_kernel=%s fma_peak_gflops=%.1f",
                   qkv_bf16_kernel_name(qkv_bf16_kernel_best()), f);
            if (b > 0) printf(" bf16_peak_gflops=%.1f", b);
            printf(" (one core)\n");
            return 0;
        }
        if (argc > 2 && strcmp(argv[2], "quick") == 0)
            n_runs = 1, min_run_s = 0.01;
        run_bf16();
        return 0;
    }
    openblas_load();
    if (argc == 6) {
        int d[5];
        for (int i = 0; i < 5; i++) d[i] = atoi(argv[i + 1]);
        if (d[2] < 1 || d[3] < 1 || d[4] < 1) {
            fprintf(stderr, "bench_matmul: M N K must be positive\n");
            return 1;
        }
        bench_case one = {"shape", d[0] != 0, d[1] != 0, d[2], d[3], d[4]};
        run_cases(&one, 1);
        return 0;
    }
    printf("qkv_sgemm kernel: %s, GFLOPS (median of %d runs)\n",
           qkv_sgemm_kernel_name(), n_runs);
    printf("%-22s %2s %2s %5s %5s %5s %9s %9s", "case", "ta", "tb", "M", "N",
           "K", "1 thread", "2 threads");
    if (ob_sgemm)
        printf(" %9s %9s %7s %7s", "OpenBLAS1", "OpenBLAS2", "qkv/OB1",
               "qkv/OB2");
    else
        printf("  (OpenBLAS not found: apt-get install libopenblas0-pthread)");
    printf("\n");
    bench_case c[64];
    int n = 0;
    static const int sq[] = {16, 64, 128, 256, 512, 1024};
    for (int i = 0; i < 6; i++)
        c[n++] = (bench_case){"square", 0, 0, sq[i], sq[i], sq[i]};
    c[n++] = (bench_case){"square A^T", 1, 0, 512, 512, 512};
    c[n++] = (bench_case){"square B^T", 0, 1, 512, 512, 512};
    c[n++] = (bench_case){"square A^T B^T", 1, 1, 512, 512, 512};
    /* A linear layer's forward Y[M,N] = X[M,K] W[N,K]^T (tb = 1) and its
     * backward dX[M,K] = dY W (plain) and dW[N,K] = dY^T X (ta = 1), at the
     * bench configs' shapes (M = batch x length): [W_Q; W_K; W_V] (N = 3d),
     * W_O, the FFN's W1 and W2, and base's output projection. */
    static const int tf[][3] = {
        {512, 192, 64},    {512, 64, 64},     {512, 256, 64},
        {512, 64, 256},    {1024, 384, 128},  {1024, 128, 128},
        {1024, 512, 128},  {1024, 128, 512},  {2048, 768, 256},
        {2048, 256, 256},  {2048, 1024, 256}, {2048, 256, 1024},
        {2048, 1000, 256},
    };
    for (size_t i = 0; i < sizeof tf / sizeof tf[0]; i++) {
        int M = tf[i][0], N = tf[i][1], K = tf[i][2];
        c[n++] = (bench_case){"fwd  X W^T", 0, 1, M, N, K};
        c[n++] = (bench_case){"bwd  dY W", 0, 0, M, K, N};
        c[n++] = (bench_case){"bwd  dY^T X", 1, 0, N, K, M};
    }
    c[n++] = (bench_case){"attn  Q K^T", 0, 1, 64, 64, 32};
    c[n++] = (bench_case){"attn  P V", 0, 0, 64, 32, 64};
    c[n++] = (bench_case){"attn  tiny", 0, 1, 16, 16, 16};
    run_cases(c, n);

    double gr = bench(qkv_sgemm_ref, 1, 0, 0, 256, 256, 256);
    printf("%-22s %2d %2d %5d %5d %5d %9.1f %9s\n", "reference triple loop", 0,
           0, 256, 256, 256, gr, "-");
    return 0;
}
