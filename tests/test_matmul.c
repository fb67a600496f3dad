/* test_matmul.c - qkv_sgemm and qkv_sgemm_serial against qkv_sgemm_ref.
 *
 * For each case: all four (ta, tb), accumulate 0/1, padded row strides.
 * Tolerance per element: |c - ref| <= 1e-5 * (sum_k |a||b| + |c0|) + 1e-30,
 * the bound of a float dot product summed in a different order.
 * Determinism: qkv_sgemm with 1 and 2 threads and qkv_sgemm_serial must agree
 * bit for bit. Prints PASS/FAIL per case, exits 1 on any failure.
 */
#include "matmul.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int n_fail;

/* xorshift32 -> uniform in [-1, 1) */
static uint32_t rng_state = 0x9e3779b9u;
static float frand(void) {
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return (float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

static float *alloc_rand(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "test_matmul: out of memory (%zu floats)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

typedef void (*gemm_fn)(int, int, int, int, int, const float *, int,
                        const float *, int, int, float *, int);

/* Runs one (ta, tb, M, N, K, accumulate, padding) case through fn and checks
 * it against the reference. Returns 0 on success, else writes detail. */
static int check_case(gemm_fn fn, int ta, int tb, int M, int N, int K, int acc,
                      int pad, char *detail, size_t dlen) {
    int arows = ta ? K : M, acols = ta ? M : K;
    int brows = tb ? N : K, bcols = tb ? K : N;
    int lda = acols + pad, ldb = bcols + 2 * pad, ldc = N + 3 * pad;
    float *A = alloc_rand((size_t)arows * lda);
    float *B = alloc_rand((size_t)brows * ldb);
    float *C0 = alloc_rand((size_t)M * ldc);
    float *C = malloc(((size_t)M * ldc + 1) * sizeof(float));
    float *R = malloc(((size_t)M * ldc + 1) * sizeof(float));
    if (!C || !R) {
        fprintf(stderr, "test_matmul: out of memory\n");
        exit(1);
    }
    memcpy(C, C0, (size_t)M * ldc * sizeof(float));
    memcpy(R, C0, (size_t)M * ldc * sizeof(float));
    fn(ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc);
    qkv_sgemm_ref(ta, tb, M, N, K, A, lda, B, ldb, acc, R, ldc);
    int bad = 0;
    for (int i = 0; i < M && !bad; i++)
        for (int j = 0; j < ldc && !bad; j++) {
            size_t o = (size_t)i * ldc + j;
            if (j >= N) { /* padding columns must be untouched */
                if (C[o] != C0[o]) {
                    snprintf(detail, dlen, "padding C[%d][%d] written", i, j);
                    bad = 1;
                }
                continue;
            }
            double mag = acc ? fabs(C0[o]) : 0.0;
            for (int k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                mag += fabs((double)a * b);
            }
            double err = fabs((double)C[o] - R[o]);
            if (!(err <= 1e-5 * mag + 1e-30)) {
                snprintf(detail, dlen,
                         "C[%d][%d] = %.9g, ref %.9g (bound %.3g)", i, j, C[o],
                         R[o], 1e-5 * mag + 1e-30);
                bad = 1;
            }
        }
    free(A);
    free(B);
    free(C0);
    free(C);
    free(R);
    return bad;
}

static void report(const char *name, int bad, const char *detail) {
    if (bad) {
        printf("FAIL test_matmul/%s: %s\n", name, detail);
        n_fail++;
    } else {
        printf("PASS test_matmul/%s\n", name);
    }
}

/* One shape, all (ta, tb, accumulate, padding) combinations, both entry
 * points; one output line. */
static void test_shape(int M, int N, int K) {
    char name[64], detail[256] = "";
    int bad = 0;
    snprintf(name, sizeof name, "%dx%dx%d", M, N, K);
    for (int v = 0; v < 16 && !bad; v++) {
        int ta = v & 1, tb = (v >> 1) & 1, acc = (v >> 2) & 1;
        int pad = (v >> 3) ? 3 : 0;
        static const gemm_fn fns[2] = {qkv_sgemm, qkv_sgemm_serial};
        for (int f = 0; f < 2 && !bad; f++) {
            char d[200];
            if (check_case(fns[f], ta, tb, M, N, K, acc, pad, d, sizeof d)) {
                snprintf(
                    detail, sizeof detail, "%s ta=%d tb=%d acc=%d pad=%d: %s",
                    f ? "qkv_sgemm_serial" : "qkv_sgemm", ta, tb, acc, pad, d);
                bad = 1;
            }
        }
    }
    report(name, bad, detail);
}

/* qkv_sgemm with 1, 2 and 4 threads == qkv_sgemm_serial, bitwise (4 threads
 * on 2 cores still exercises a 2 x 2 split of C). */
static void test_determinism(int ta, int tb, int M, int N, int K) {
    char name[64], detail[160] = "";
    snprintf(name, sizeof name, "determinism_%s%s_%dx%dx%d", ta ? "t" : "n",
             tb ? "t" : "n", M, N, K);
    int lda = ta ? M : K, ldb = tb ? K : N;
    float *A = alloc_rand((size_t)M * K), *B = alloc_rand((size_t)K * N);
    float *C0 = alloc_rand((size_t)M * N);
    float *C[4];
    for (int r = 0; r < 4; r++) {
        C[r] = malloc((size_t)M * N * sizeof(float));
        if (!C[r]) exit(1);
        memcpy(C[r], C0, (size_t)M * N * sizeof(float));
    }
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    qkv_sgemm(ta, tb, M, N, K, A, lda, B, ldb, 1, C[0], N);
#ifdef _OPENMP
    omp_set_num_threads(2);
#endif
    qkv_sgemm(ta, tb, M, N, K, A, lda, B, ldb, 1, C[1], N);
#ifdef _OPENMP
    omp_set_num_threads(4);
#endif
    qkv_sgemm(ta, tb, M, N, K, A, lda, B, ldb, 1, C[3], N);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
    qkv_sgemm_serial(ta, tb, M, N, K, A, lda, B, ldb, 1, C[2], N);
    size_t bytes = (size_t)M * N * sizeof(float);
    int bad = 0;
    if (memcmp(C[0], C[1], bytes)) {
        snprintf(detail, sizeof detail, "1 thread != 2 threads");
        bad = 1;
    } else if (memcmp(C[0], C[3], bytes)) {
        snprintf(detail, sizeof detail, "1 thread != 4 threads");
        bad = 1;
    } else if (memcmp(C[0], C[2], bytes)) {
        snprintf(detail, sizeof detail, "qkv_sgemm != qkv_sgemm_serial");
        bad = 1;
    }
    report(name, bad, detail);
    free(A);
    free(B);
    free(C0);
    for (int r = 0; r < 4; r++) free(C[r]);
}

/* K == 0: C = 0, or C unchanged when accumulating. */
static void test_k0(void) {
    float C[3 * 5], C0[3 * 5], A[1] = {1}, B[1] = {1};
    int bad = 0;
    for (int i = 0; i < 15; i++) C[i] = C0[i] = frand();
    qkv_sgemm(0, 0, 3, 4, 0, A, 0, B, 4, 1, C, 5);
    bad |= memcmp(C, C0, sizeof C) != 0;
    qkv_sgemm_serial(1, 1, 3, 4, 0, A, 3, B, 0, 0, C, 5);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5; j++)
            bad |= C[i * 5 + j] != (j < 4 ? 0.0f : C0[i * 5 + j]);
    report("k0", bad,
           "K == 0 must give C = 0 (or C unchanged when accumulating)");
}

/* qkv_sgemm_relu == qkv_sgemm then c > 0 ? c : 0, bit for bit, on 1 and 2
 * threads: full and edge tiles, several KC blocks (the relu only after the
 * last), a shape that splits K, and a NaN element (relu gives +0). */
static void test_relu(int ta, int tb, int M, int N, int K) {
    char name[64];
    snprintf(name, sizeof name, "relu_%s%s_%dx%dx%d", ta ? "t" : "n",
             tb ? "t" : "n", M, N, K);
    int lda = ta ? M : K, ldb = tb ? K : N;
    float *A = alloc_rand((size_t)M * K), *B = alloc_rand((size_t)K * N);
    float *want = alloc_rand((size_t)M * N), *got = alloc_rand((size_t)M * N);
    /* row 0 of op(A) = (inf, 0, 0, ...), column 0 of op(B) = 0: C[0][0] =
     * inf * 0 + ... = NaN */
    for (int k = 0; k < K; k++) {
        A[ta ? (size_t)k * lda : (size_t)k] = k ? 0.0f : INFINITY;
        B[tb ? (size_t)k : (size_t)k * ldb] = 0.0f;
    }
    qkv_sgemm(ta, tb, M, N, K, A, lda, B, ldb, 0, want, N);
    int bad = !isnan(want[0]);
    for (size_t i = 0; i < (size_t)M * N; i++)
        want[i] = want[i] > 0.0f ? want[i] : 0.0f;
    for (int t = 1; t <= 2; t++) {
#ifdef _OPENMP
        int saved = omp_get_max_threads();
        omp_set_num_threads(t);
#endif
        qkv_sgemm_relu(ta, tb, M, N, K, A, lda, B, ldb, got, N);
#ifdef _OPENMP
        omp_set_num_threads(saved);
#endif
        bad |= memcmp(want, got, (size_t)M * N * sizeof(float)) != 0;
    }
    report(name, bad, "qkv_sgemm_relu differs from qkv_sgemm + relu");
    free(A), free(B), free(want), free(got);
}

int main(void) {
    static const int sizes[] = {1,  2,  7,  15, 16,  17, 31,
                                33, 63, 64, 65, 127, 129};
    int ns = (int)(sizeof sizes / sizeof sizes[0]);
    /* each size on the diagonal and against a few others in every role */
    for (int i = 0; i < ns; i++) test_shape(sizes[i], sizes[i], sizes[i]);
    for (int i = 0; i < ns; i++) {
        int s = sizes[i], t = sizes[(i * 5 + 3) % ns],
            u = sizes[(i * 7 + 1) % ns];
        test_shape(s, t, u);
        test_shape(t, u, s);
    }
    test_shape(257, 130, 300); /* several KC blocks, ragged edges */
    test_shape(300, 1100, 20); /* more than one NC panel */
    test_shape(1, 1000, 513);  /* matrix-vector shapes */
    test_shape(1000, 1, 513);
    test_shape(16, 16, 16); /* attention-sized */
    test_shape(64, 64, 32);
    test_k0();
    test_determinism(0, 0, 300, 517, 129);
    test_determinism(1, 1, 300, 517, 129);
    test_determinism(0, 1, 517, 300, 600);
    test_determinism(1, 0, 40, 2000, 300);
    /* weight-gradient shapes, K split in two groups (see matmul.c) */
    test_determinism(1, 0, 128, 128, 1024);
    test_determinism(1, 0, 77, 200, 1500);
    test_determinism(0, 1, 3, 50, 700);
    test_shape(128, 128, 1024);
    test_shape(77, 200, 1500);
    /* K x 512 beyond the packed-B buffer: the first panel takes the loop
     * order with pc outside, the 88-column one packs all of K */
    test_shape(16, 600, 2400);
    test_determinism(0, 0, 16, 600, 2400);
    test_relu(0, 1, 256, 512, 128);  /* the FFN's relu(x W1^T) */
    test_relu(0, 1, 37, 45, 19);     /* edge tiles */
    test_relu(1, 0, 65, 70, 600);    /* three KC blocks */
    test_relu(1, 0, 128, 128, 1024); /* a shape that splits K without relu */
    return n_fail ? 1 : 0;
}
