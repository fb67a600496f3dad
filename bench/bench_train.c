/* bench_train.c - training speed of qkv on the three bench configs.
 *
 * An encoder-decoder (bias-free linears, post-norm, sinusoidal positions,
 * ReLU FFN, no dropout, Adam) trains on the copy task; one process per
 * config, so the peak RSS is the config's own. Prints one line of
 * key=value pairs that bench/run.sh turns into the table:
 *
 *   bench_train tiny [--threads N] [--steps K] [--reps R]
 *                    [--precision bf16]   the linear layers' products in
 *                                         bf16 (core/bf16.h)
 *                    [--precision both]   fp32 and bf16 taking turns in one
 *                                         process, and their ratio (see
 *                                         paired())
 *                    [--shares both]      the threads' pieces cut equal and
 *                                         by their speeds, taking turns (see
 *                                         shares_paired())
 *                    [--shares equal]     equal pieces only
 *                    [--profile]          where the timed steps' time
 *                                         goes, per op kind and Adam (see
 *                                         print_profile())
 *   bench_train peak [--threads N]        the machine's FMA peak, GFLOPS
 *   bench_train tape                      tape overhead per recorded op
 *   bench_train generate [--reps R]       tokens/s of a 512-token sample
 *                                         with and without the key/value
 *                                         cache (see generation())
 *   bench_train attention [--reps R]      one attention layer's forward +
 *                                         backward, fp32 against bf16
 *                                         products, per head shape (see
 *                                         attention_heads())
 *   bench_train vcpus                     each CPU's FMA speed with all busy
 *                                         (see vcpu_speeds())
 *   bench_train pingpong                  the round trip of a cache line
 *                                         between two threads, ns
 *   bench_train spin                      a busy CPU, until killed (run.sh's
 *                                         "other core busy" rows)
 *   mpirun -np K bench_train base ...     (make bench-mpi) data-parallel: the
 *                                         step on K ranks, and the time of
 *                                         its gradient all-reduce alone
 *
 * Timing: 5 warm-up steps, then R runs of K steps; the figure is the
 * median run's time per step (CLOCK_MONOTONIC). A step is a fresh batch
 * and qkv_trainer_step, the program's step: forward, backward and the Adam
 * update (clipping off, as in bench_torch.py).
 *
 * FLOPs count the matrix products only (the standard convention): for one
 * forward, per encoder layer 8BSD^2 (Q K V O) + 4BS^2D (scores and A V) +
 * 4BSDF (FFN); per decoder layer 8BTD^2 + 4BT^2D (self), 4BTD^2 + 4BSD^2 +
 * 4BTSD (cross), 4BTDF; and 2BTDV for the generator. Training is 3 times
 * the forward (the backward computes two products per forward one).
 *
 * Heap allocations after the warm-up are counted by wrapping malloc,
 * calloc and realloc (glibc's __libc_* entry points).
 */
#define _GNU_SOURCE /* sched_setaffinity (bench_train vcpus) */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16.h"
#include "decode.h"
#include "threads.h"
#include "trainer.h"

/* ---------------------------------------------------- allocation counter */

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QKV_NO_MALLOC_WRAP 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define QKV_NO_MALLOC_WRAP 1
#endif
static volatile size_t n_allocs;
#ifndef QKV_NO_MALLOC_WRAP /* ASan has its own malloc */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
void *malloc(size_t n) {
    n_allocs++;
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t m) {
    n_allocs++;
    return __libc_calloc(n, m);
}
void *realloc(void *p, size_t n) {
    n_allocs++;
    return __libc_realloc(p, n);
}
#endif

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct config {
    const char *name;
    int D, N, H, F, L, B, V;
} config;

static const config configs[] = {
    {"tiny", 64, 2, 4, 256, 16, 32, 16},
    {"small", 128, 2, 4, 512, 32, 32, 64},
    {"base", 256, 4, 8, 1024, 64, 32, 1000},
};

/* Matrix-product FLOPs of one training step (see the top). */
static double step_flops(const config *c) {
    double B = c->B, S = c->L, T = c->L, D = c->D, F = c->F, V = c->V;
    double enc = 8 * B * S * D * D + 4 * B * S * S * D + 4 * B * S * D * F;
    double dec = 8 * B * T * D * D + 4 * B * T * T * D + 4 * B * T * D * D +
                 4 * B * S * D * D + 4 * B * T * S * D + 4 * B * T * D * F;
    return 3 * (c->N * (enc + dec) + 2 * B * T * D * V);
}

/* ------------------------------------------------------------------ peak */

/* GFLOPS of a register-resident FMA loop on every thread: 8 independent
 * vector accumulators (enough to cover the FMA latency), 16 floats each. */
/* iters rounds of 8 independent 16-wide FMA chains (2 x 128 flops each) */
static float fma_loop(long iters) {
    float sink = 0;
#ifdef __AVX512F__
    __m512 a[8], x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < 8; k++) a[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 8; k++) a[k] = _mm512_fmadd_ps(a[k], x, y);
    for (int k = 0; k < 8; k++) sink += _mm512_reduce_add_ps(a[k]);
#else
    float a[8][16];
    for (int k = 0; k < 8; k++)
        for (int j = 0; j < 16; j++) a[k][j] = (float)k;
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 8; k++) QKV_OMP(omp simd)
    for (int j = 0; j < 16; j++) a[k][j] = fmaf(a[k][j], 0.999999f, 1e-7f);
    for (int k = 0; k < 8; k++) sink += a[k][0];
#endif
    return sink;
}

static double fma_peak(void) {
    const long iters = 20000000;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        int threads = 1;
        double t0 = qkv_seconds();
        float sink = 0;
        QKV_OMP(omp parallel reduction(+ : sink)) {
#ifdef _OPENMP
#pragma omp single
            threads = omp_get_num_threads();
#endif
            sink += fma_loop(iters);
        }
        double t = qkv_seconds() - t0;
        if (sink == 12345.f) printf("!");
        double g = (double)threads * iters * 8 * 16 * 2 / t / 1e9;
        if (g > best) best = g;
    }
    return best;
}

/* Each CPU's FMA speed while all run the loop at once (one thread pinned
 * to each CPU this process may use, up to 16), the median of 5 rounds:
 * on a shared host one vCPU can run at a fraction of the other's speed
 * for minutes (core/threads.h, shares). Prints GFLOPS per CPU and the
 * slowest over the fastest. */
static int vcpu_speeds(void) {
#ifdef _OPENMP
    cpu_set_t all;
    if (sched_getaffinity(0, sizeof all, &all) != 0) return 1;
    int cpus[16], n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < 16; c++)
        if (CPU_ISSET(c, &all)) cpus[n++] = c;
    const long iters = 10000000;
    double g[5][16];
    QKV_OMP(omp parallel num_threads(n)) {
        int me = omp_get_thread_num();
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[me], &one);
        sched_setaffinity(0, sizeof one, &one);
        for (int r = 0; r < 5; r++) {
            QKV_OMP(omp barrier)
            double t0 = qkv_seconds();
            float sink = fma_loop(iters);
            g[r][me] = iters * 8 * 16 * 2 / (qkv_seconds() - t0) / 1e9;
            if (sink == 12345.f) printf("!");
        }
        sched_setaffinity(0, sizeof all, &all);
    }
    printf("vcpu_gflops=");
    double lo = 0, hi = 0;
    for (int c = 0; c < n; c++) {
        double m[5];
        for (int r = 0; r < 5; r++) m[r] = g[r][c];
        qsort(m, 5, sizeof *m, cmp_double);
        printf("%s%.1f", c ? "," : "", m[2]);
        if (c == 0 || m[2] < lo) lo = m[2];
        if (c == 0 || m[2] > hi) hi = m[2];
    }
    printf(" slowest_over_fastest=%.3f\n", lo / hi);
    return 0;
#else
    printf("vcpu_gflops=- slowest_over_fastest=-\n");
    return 0;
#endif
}

/* ------------------------------------------------------------ ping-pong */

/* The round trip of one cache line between two threads (each waits for the
 * other's store, then stores): what sharing data between the two cores
 * costs. On a shared host the vCPUs move between placements, and the
 * 2-thread figures move with them (README, Speed), so make bench prints
 * this beside them. Median of 5 runs of 20000 round trips; 0 without
 * OpenMP or with fewer than 2 threads. */
static double round_trip_ns(void) {
    double t[5] = {0};
#ifdef _OPENMP
    enum { TRIPS = 20000 };
    static _Alignas(64) _Atomic long flag;
    if (omp_get_max_threads() < 2) return 0;
    for (int r = 0; r < 5; r++) {
        atomic_store(&flag, 0);
        double t0 = 0;
#pragma omp parallel num_threads(2)
        {
            long me = omp_get_thread_num();
            int two = omp_get_num_threads() == 2; /* a team of 1 would wait */
#pragma omp barrier
            if (me == 0) t0 = qkv_seconds();
            for (long i = 0; i < TRIPS && two; i++) {
                long want = 2 * i + me;
                while (atomic_load_explicit(&flag, memory_order_acquire) !=
                       want) {
                }
                atomic_store_explicit(&flag, want + 1, memory_order_release);
            }
            if (me == 0 && two) t[r] = (qkv_seconds() - t0) / TRIPS;
        }
    }
    qsort(t, 5, sizeof *t, cmp_double);
#endif
    return 1e9 * t[2];
}

/* ------------------------------------------------------------------ tape */

/* Seconds per op of n adds of 1-element tensors, recording or not; the
 * difference is what the tape adds per recorded op. */
static double add_time(qkv_graph *g, qkv_tensor *a, qkv_tensor *b, int rec,
                       int n) {
    qkv_graph_set_grad(g, rec);
    double best = 1e9;
    for (int r = 0; r < 7; r++) {
        qkv_graph_reset(g);
        double t0 = qkv_seconds();
        qkv_tensor *x = a;
        for (int i = 0; i < n; i++) x = qkv_add(g, x, b);
        double t = (qkv_seconds() - t0) / n;
        if (t < best) best = t;
    }
    return best;
}

static void tape_overhead(void) {
    qkv_params ps;
    qkv_params_init(&ps);
    int shape[1] = {1};
    qkv_tensor *a = qkv_params_add(&ps, "a", 1, shape);
    qkv_tensor *b = qkv_params_add(&ps, "b", 1, shape);
    qkv_params_alloc(&ps);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int n = 100000;
    add_time(&g, a, b, 1, n); /* grow the arena and the tape once */
    double on = add_time(&g, a, b, 1, n), off = add_time(&g, a, b, 0, n);
    printf("tape_us_per_op=%.4f op_us_recorded=%.4f op_us_unrecorded=%.4f\n",
           1e6 * (on - off), 1e6 * on, 1e6 * off);
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

/* ------------------------------------------------------------ generation */

/* Generation speed with and without the key/value cache: a decoder-only
 * model of the small config's shape (D 128, 2 layers, 4 heads, F 512,
 * V 64; max_len 513, as initialised, seed 42) samples 512 tokens after a
 * one-token prompt (temperature 1, eos never), alternately with the cache
 * and recomputing the prefix at every step; medians of reps runs each. The
 * two must draw the same tokens (same_tokens=1). */
static int generation(int reps, int bf16) {
    enum { P = 1, N = 512 };
    qkv_model_config mc = qkv_model_defaults(QKV_MODEL_DECODER);
    mc.tgt_vocab = 64;
    mc.d_model = 128, mc.heads = 4, mc.d_ff = 512, mc.n_dec = 2;
    mc.max_len = P + N;
    mc.dropout = 0;
    qkv_model m;
    char err[256];
    if (qkv_model_init(&m, &mc, 42, err, sizeof err)) {
        fprintf(stderr, "bench_train: %s\n", err);
        return 1;
    }
    qkv_graph g;
    qkv_graph_init(&g, 0);
    g.precision = bf16 ? QKV_BF16 : QKV_FP32;
    int32_t prompt[P] = {1}, out[2][N];
    double *t[2];
    for (int k = 0; k < 2; k++) t[k] = malloc((size_t)reps * sizeof *t[k]);
    int same = 1;
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < 2; k++) { /* 0: cache, 1: recompute */
            int was = qkv_decode_set_cache(k == 0);
            qkv_pcg32 rng;
            qkv_pcg32_seed(&rng, 7, 7);
            double t0 = qkv_seconds();
            qkv_sample(&m, &g, prompt, P, N, 1.0f, 0, 0.0f, -1, &rng, out[k]);
            t[k][r] = qkv_seconds() - t0;
            qkv_decode_set_cache(was);
        }
    same = !memcmp(out[0], out[1], sizeof out[0]);
    for (int k = 0; k < 2; k++)
        qsort(t[k], (size_t)reps, sizeof *t[k], cmp_double);
    double c = t[0][reps / 2], f = t[1][reps / 2];
#ifdef _OPENMP
    int nthreads = omp_get_max_threads();
#else
    int nthreads = 1;
#endif
    printf("config=generate precision=%s threads=%d tokens=%d reps=%d "
           "cache_tokens_per_s=%.1f recompute_tokens_per_s=%.1f speedup=%.2f "
           "same_tokens=%d\n",
           bf16 ? "bf16" : "fp32", nthreads, N, reps, N / c, N / f, f / c,
           same);
    for (int k = 0; k < 2; k++) free(t[k]);
    qkv_graph_free(&g);
    qkv_model_free(&m);
    return same ? 0 : 1;
}

/* ------------------------------------------------------------- attention */

/* One attention layer's forward + backward in fp32 and with bf16 products,
 * per head shape: what qkv_attention_bf16_min (core/ops.h) is chosen
 * from. B 32 x H 8 heads of T queries, T keys (S = T), K columns, laid out
 * as the model's self-attention (q, k, v: columns of one (B, T, 3 H K)
 * projection), no mask; the gradient of y is all ones (loss = sum y). The
 * bf16 runs force bf16 products on every head (qkv_attention_bf16_min =
 * 0), and the two precisions alternate, rep by rep; each time is a median
 * of reps runs of 10 calls, the ratio the median of the runs' ratios.
 * rule= says which precision a bf16 graph's heads of that shape take now,
 * with this CPU's kernel. */
static int attention_heads(int reps) {
    static const int shapes[][2] = {{16, 16}, {32, 32}, {64, 16},
                                    {64, 32}, {64, 64}, {128, 32}};
    enum { B = 32, H = 8, CALLS = 10 };
    int was = qkv_attention_bf16_min;
    double *t[2], *ratio = malloc((size_t)reps * sizeof *ratio);
    for (int k = 0; k < 2; k++) t[k] = malloc((size_t)reps * sizeof *t[k]);
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int T = shapes[c][0], K = shapes[c][1], d = H * K;
        qkv_params ps;
        qkv_params_init(&ps);
        qkv_tensor *x = qkv_params_add(&ps, "qkv", 3, (int[]){B, T, 3 * d});
        qkv_params_alloc(&ps);
        qkv_pcg32 r;
        qkv_pcg32_seed(&r, 1, 1);
        for (size_t i = 0; i < ps.n; i++) ps.values[i] = qkv_pcg32_normal(&r);
        qkv_graph g;
        qkv_graph_init(&g, 0);
        qkv_attention_bf16_min = was;
        int rule = qkv_attention_bf16_heads(T, T, K);
        qkv_attention_bf16_min = 0;
        for (int rep = -1; rep < reps; rep++) /* rep -1: warm-up */
            for (int p = 0; p < 2; p++) {
                g.precision = p ? QKV_BF16 : QKV_FP32;
                double t0 = qkv_seconds();
                for (int i = 0; i < CALLS; i++) {
                    qkv_graph_reset(&g);
                    qkv_params_zero_grad(&ps);
                    qkv_tensor *y = qkv_attention_packed(&g, x, 0, x, d, x,
                                                         2 * d, d, H, NULL);
                    qkv_backward(&g, qkv_sum(&g, y));
                }
                if (rep >= 0) t[p][rep] = (qkv_seconds() - t0) / CALLS;
            }
        for (int rep = 0; rep < reps; rep++) ratio[rep] = t[1][rep] / t[0][rep];
        for (int k = 0; k < 2; k++)
            qsort(t[k], (size_t)reps, sizeof *t[k], cmp_double);
        qsort(ratio, (size_t)reps, sizeof *ratio, cmp_double);
        printf("config=attention T=%d S=%d K=%d heads=%d fp32_ms=%.3f "
               "bf16_ms=%.3f bf16_over_fp32=%.3f rule=%s kernel=%s\n",
               T, T, K, B * H, 1e3 * t[0][reps / 2], 1e3 * t[1][reps / 2],
               ratio[reps / 2], rule ? "bf16" : "fp32",
               qkv_bf16_kernel_name(qkv_bf16_get_kernel()));
        qkv_graph_free(&g);
        qkv_params_free(&ps);
    }
    qkv_attention_bf16_min = was;
    for (int k = 0; k < 2; k++) free(t[k]);
    free(ratio);
    return 0;
}

/* ------------------------------------------------------------------ main */

/* ------------------------------------------------------------ training */

/* A config's model and the program's training step (qkv_trainer_step, Adam,
 * clipping off: bench_torch.py does not clip either) on the copy task,
 * after 5 warm-up steps. */
typedef struct run {
    qkv_trainer tr;
    qkv_source *data;
} run;

static int run_init(run *r, const config *c, int bf16) {
    qkv_model_config mc = qkv_model_defaults(QKV_MODEL_ENCDEC);
    mc.src_vocab = mc.tgt_vocab = c->V;
    mc.d_model = c->D, mc.heads = c->H, mc.d_ff = c->F;
    mc.n_enc = mc.n_dec = c->N;
    mc.max_len = c->L;
    mc.dropout = 0;
    qkv_model m;
    char err[256];
    if (qkv_model_init(&m, &mc, 42, err, sizeof err)) {
        fprintf(stderr, "bench_train: %s\n", err);
        return 1;
    }
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, 1e-3f);
    tc.clip = 0.0f;
    tc.precision = bf16 ? QKV_BF16 : QKV_FP32;
    qkv_trainer_init(&r->tr, &m, &tc);
    qkv_task task = {QKV_TASK_COPY, c->V, c->L, c->L, 0, 0};
    r->data = qkv_task_source(&task, c->B, 1, 0);
    for (int i = 0; i < 5; i++)
        qkv_trainer_step(&r->tr, qkv_source_next(r->data));
    return 0;
}

/* Seconds per step of the next `steps` steps. */
static double run_steps(run *r, int steps) {
    double t0 = qkv_seconds();
    for (int i = 0; i < steps; i++)
        qkv_trainer_step(&r->tr, qkv_source_next(r->data));
    return (qkv_seconds() - t0) / steps;
}

static void run_free(run *r) {
    qkv_source_free(r->data);
    qkv_trainer_free(&r->tr);
}

/* --precision both: the config in fp32 and in bf16 in one process, the two
 * taking turns run by run (fp32 then bf16, then bf16 then fp32, ...), so
 * the two runs of a pair are a second or less apart and the host's drift
 * (15-35% within minutes on this project's shared machines, README:
 * Speed) lands on both sides of the ratio alike; separate processes, even
 * alternating, are tens of seconds apart for base. Times are each side's
 * median run, the ratio the median of the pairs' ratios (with their
 * smallest and largest). Both models stay in memory (base: ~2 x 0.5 GB);
 * a run starts with the other model's data in the caches, which costs
 * little where it would matter (base streams its 350 MB arena from memory
 * every step anyway; measured against separate processes in README,
 * Speed). */
static int paired(const config *c, int steps, int reps, int nthreads) {
    run r[2]; /* 0: fp32, 1: bf16 */
    if (run_init(&r[0], c, 0)) return 1;
    if (run_init(&r[1], c, 1)) {
        run_free(&r[0]);
        return 1;
    }
    double *t = malloc((size_t)reps * 3 * sizeof *t);
    double *t32 = t, *t16 = t + reps, *q = t + 2 * reps;
    for (int i = 0; i < reps; i++) {
        int first = i % 2; /* 0: fp32 first */
        double x = run_steps(&r[first], steps);
        double y = run_steps(&r[!first], steps);
        t32[i] = first ? y : x;
        t16[i] = first ? x : y;
        q[i] = t16[i] / t32[i];
    }
    for (int k = 0; k < 3; k++)
        qsort(t + (size_t)k * reps, (size_t)reps, sizeof *t, cmp_double);
    double flops = step_flops(c);
    printf("config=%s threads=%d steps=%d reps=%d fp32_ms=%.3f bf16_ms=%.3f "
           "bf16_gflops=%.1f bf16_over_fp32=%.4f ratio_min=%.4f "
           "ratio_max=%.4f kernel=%s\n",
           c->name, nthreads, steps, reps, 1e3 * t32[reps / 2],
           1e3 * t16[reps / 2], flops / t16[reps / 2] / 1e9, q[reps / 2], q[0],
           q[reps - 1], qkv_bf16_kernel_name(qkv_bf16_get_kernel()));
    free(t);
    run_free(&r[0]);
    run_free(&r[1]);
    return 0;
}

/* --shares both: the threads' pieces of the products and the attention
 * heads cut equal (qkv_share_fix) and in proportion to their measured
 * speeds (threads.h), taking turns run by run in one process as in
 * paired(); the learned shares start from equal and carry on from one of
 * their runs to the next (they do not learn in the equal runs). --shares
 * equal: equal pieces only. */
static int shares_paired(const config *c, int steps, int reps, int nthreads,
                         int bf16) {
    run r;
    if (run_init(&r, c, bf16)) return 1;
    double *t = malloc((size_t)reps * 3 * sizeof *t), *w = NULL;
    double *te = t, *tl = t + reps, *q = t + 2 * reps;
    if (nthreads > 1) {
        w = malloc((size_t)nthreads * sizeof *w);
        for (int i = 0; i < nthreads; i++) w[i] = 1;
    }
    double share0 = 0;
    for (int i = 0; i < reps; i++) {
        for (int k = 0; k < 2; k++) {
            int learned = (i + k) % 2; /* 0: equal first */
            if (w) qkv_share_fix(nthreads, learned ? NULL : w);
            double x = run_steps(&r, steps);
            if (learned) {
                tl[i] = x;
                share0 += qkv_share_of(bf16 ? QKV_SHARE_PRODUCT_BF16
                                            : QKV_SHARE_PRODUCT,
                                       0, nthreads) /
                          reps;
            } else
                te[i] = x;
        }
        q[i] = tl[i] / te[i];
    }
    if (w) qkv_share_fix(nthreads, NULL);
    for (int k = 0; k < 3; k++)
        qsort(t + (size_t)k * reps, (size_t)reps, sizeof *t, cmp_double);
    printf("config=%s precision=%s threads=%d steps=%d reps=%d equal_ms=%.3f "
           "learned_ms=%.3f learned_over_equal=%.4f ratio_min=%.4f "
           "ratio_max=%.4f share0=%.3f\n",
           c->name, bf16 ? "bf16" : "fp32", nthreads, steps, reps,
           1e3 * te[reps / 2], 1e3 * tl[reps / 2], q[reps / 2], q[0],
           q[reps - 1], share0);
    free(t);
    free(w);
    run_free(&r);
    return 0;
}

/* --profile: where the timed steps' time went (qkv_trainer_profile), one
 * line per part, ms per step: each op kind's forward + backward (from the
 * tape: a forward includes the glue code since the op before it), the
 * trainer's zeroing of the gradients and its optimiser step (Adam; the
 * bench does not clip), and what is left of the mean step (the batch, the
 * loss's reduction, ...). */
static void print_profile(const qkv_trainer *tr, int steps, double step_s) {
    const qkv_profile *p = &tr->prof;
    double per = 1e3 / steps, sum = 0;
    for (int k = 0; k < QKV_OP_COUNT; k++) {
        if (!p->n_fwd[k] && !p->n_bwd[k]) continue;
        printf("profile part=%s ms=%.3f fwd_ms=%.3f bwd_ms=%.3f calls=%.1f\n",
               qkv_op_name((qkv_op)k), per * (p->fwd[k] + p->bwd[k]),
               per * p->fwd[k], per * p->bwd[k], (double)p->n_fwd[k] / steps);
        sum += per * (p->fwd[k] + p->bwd[k]);
    }
    static const struct {
        int phase;
        const char *name;
    } phases[] = {{QKV_PHASE_ZERO, "zero_grad"}, {QKV_PHASE_OPTIM, "adam"}};
    for (size_t i = 0; i < sizeof phases / sizeof *phases; i++) {
        double ms = per * tr->phase[phases[i].phase];
        printf("profile part=%s ms=%.3f\n", phases[i].name, ms);
        sum += ms;
    }
    printf("profile part=rest ms=%.3f\n", 1e3 * step_s - sum);
    printf("profile part=step ms=%.3f\n", 1e3 * step_s);
}

int main(int argc, char **argv) {
    qkv_comm_init(&argc, &argv); /* make bench-mpi: mpirun -np K */
    if (argc < 2) {
        fprintf(
            stderr,
            "usage: bench_train "
            "tiny|small|base|peak|vcpus|tape|spin|generate|attention|pingpong "
            "[--threads N] [--steps K] [--reps R] "
            "[--precision fp32|bf16|both] [--shares equal|both] "
            "[--profile]\n");
        return 2;
    }
    int threads = 0, steps = 20, reps = 5, precision = 0; /* 2: both */
    int shares = 0; /* 1: equal, 2: both */
    int profile = 0;
    for (int i = 2; i < argc; i += 2) {
        if (strcmp(argv[i], "--profile") == 0) {
            profile = 1;
            i--; /* a flag without a value */
            continue;
        }
        if (i + 1 == argc) {
            fprintf(stderr, "bench_train: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--steps") == 0)
            steps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--shares") == 0 &&
                 (strcmp(argv[i + 1], "equal") == 0 ||
                  strcmp(argv[i + 1], "both") == 0))
            shares = strcmp(argv[i + 1], "both") == 0 ? 2 : 1;
        else if (strcmp(argv[i], "--precision") == 0 &&
                 (strcmp(argv[i + 1], "fp32") == 0 ||
                  strcmp(argv[i + 1], "bf16") == 0 ||
                  strcmp(argv[i + 1], "both") == 0))
            precision = strcmp(argv[i + 1], "bf16") == 0   ? 1
                        : strcmp(argv[i + 1], "both") == 0 ? 2
                                                           : 0;
        else {
            fprintf(stderr, "bench_train: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    if (steps < 1 || reps < 1) {
        fprintf(stderr, "bench_train: --steps and --reps must be 1 or more\n");
        return 2;
    }
    if (threads > 0) qkv_set_threads(threads);
#ifdef _OPENMP
    int nthreads = omp_get_max_threads();
#else
    int nthreads = 1;
#endif
    if (strcmp(argv[1], "peak") == 0) {
        printf("peak_gflops=%.1f threads=%d\n", fma_peak(), nthreads);
        return 0;
    }
    if (strcmp(argv[1], "vcpus") == 0) return vcpu_speeds();
    if (strcmp(argv[1], "pingpong") == 0) {
        printf("round_trip_ns=%.0f\n", round_trip_ns());
        return 0;
    }
    if (strcmp(argv[1], "spin") == 0)
        for (volatile unsigned long x = 0;; x++) {
        }
    if (strcmp(argv[1], "tape") == 0) {
        tape_overhead();
        return 0;
    }
    if (strcmp(argv[1], "generate") == 0)
        return generation(reps, precision == 1);
    if (strcmp(argv[1], "attention") == 0) return attention_heads(reps);
    const config *c = NULL;
    for (size_t i = 0; i < sizeof configs / sizeof *configs; i++)
        if (strcmp(argv[1], configs[i].name) == 0) c = &configs[i];
    if (!c) {
        fprintf(stderr, "bench_train: unknown config %s\n", argv[1]);
        return 2;
    }
    if (profile && (precision == 2 || shares == 2)) {
        fprintf(stderr, "bench_train: --profile times one run of one "
                        "precision (not --precision both or --shares both)\n");
        return 2;
    }
    if (shares == 2 && precision < 2)
        return shares_paired(c, steps, reps, nthreads, precision);
    if (shares == 1 && nthreads > 1) {
        double w[QKV_SHARE_MAX];
        for (int i = 0; i < nthreads && i < QKV_SHARE_MAX; i++) w[i] = 1;
        if (nthreads <= QKV_SHARE_MAX) qkv_share_fix(nthreads, w);
    }
    if (precision == 2) return paired(c, steps, reps, nthreads);
    run run1;
    if (run_init(&run1, c, precision)) return 1;
    qkv_trainer *tr = &run1.tr;
    if (profile) qkv_trainer_profile(tr); /* after the warm-up steps */
    double *t = malloc((size_t)reps * sizeof *t);
    size_t allocs0 = n_allocs;
    for (int r = 0; r < reps; r++) t[r] = run_steps(&run1, steps);
    size_t allocs = n_allocs - allocs0;
    double mean = 0; /* the profile's steps: all of them */
    for (int r = 0; r < reps; r++) mean += t[r] / reps;
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double s = t[reps / 2], flops = step_flops(c);
    if (qkv_comm_size() > 1) { /* the step's all-reduce alone */
        double *a = malloc((size_t)(5 * reps) * sizeof *a);
        for (int r = 0; r < 5 * reps; r++) {
            qkv_comm_barrier();
            double t0 = qkv_seconds();
            qkv_comm_sum_floats(tr->model.params.grads, tr->model.params.n);
            a[r] = qkv_seconds() - t0;
        }
        qsort(a, (size_t)(5 * reps), sizeof *a, cmp_double);
        if (qkv_comm_rank() == 0)
            printf("ranks=%d grad_mb=%.1f allreduce_ms=%.3f ", qkv_comm_size(),
                   4.0 * (double)tr->model.params.n / 1e6,
                   1e3 * a[5 * reps / 2]);
        free(a);
    }
    if (qkv_comm_rank() != 0) {
        free(t);
        run_free(&run1);
        return 0;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("config=%s threads=%d threads_at_end=%d ms_per_step=%.3f "
           "tokens_per_s=%.0f gflops=%.1f rss_mb=%.1f arena_mb=%.1f "
           "allocs_after_warmup=%zu params=%zu loss=%.4f bf16_kc=%d%s\n",
           c->name, nthreads, qkv_get_threads(), 1e3 * s, 2.0 * c->B * c->L / s,
           flops / s / 1e9, (double)ru.ru_maxrss / 1024,
           (double)tr->graph.arena.peak / (1 << 20), allocs, tr->model.params.n,
           (double)tr->loss, qkv_bf16_kc(),
#ifdef QKV_BF16_SKIP_SUMS
           " bf16_sums=skipped"
#else
           ""
#endif
    );
    if (profile) print_profile(tr, reps * steps, mean);
    free(t);
    run_free(&run1);
    return 0;
}
