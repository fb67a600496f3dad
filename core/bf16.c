#define _DEFAULT_SOURCE /* syscall */
#include "bf16.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QKV_X86 1
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* ------------------------------------------------------------ conversion */

int qkv_bf16_kc(void) {
    return QKV_BF16_KC;
}

qkv_bf16 qkv_bf16_from_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it, quiet */
        return (qkv_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u); /* to nearest, ties to even */
    return (qkv_bf16)(u >> 16);
}

float qkv_bf16_to_float(qkv_bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

void qkv_bf16_round(const float *x, float *out, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = qkv_bf16_to_float(qkv_bf16_from_float(x[i]));
}

/* ------------------------------------------------- the order, one element */

/* A bf16 read as vdpbf16ps reads it: a denormal is zero (DAZ). */
static inline float bf_daz(uint32_t h) {
    h &= 0xffffu;
    if ((h & 0x7f80u) == 0) h &= 0x8000u;
    return qkv_bf16_to_float((qkv_bf16)h);
}

/* s + a b with one rounding, a denormal result flushed to zero (FTZ). With
 * FMA in the build this is exactly vdpbf16ps's step; without, a product
 * below FLT_MIN is rounded before the add (no other product is: bf16 x bf16
 * is exact in fp32). */
static inline float dp_step(float s, float a, float b) {
#ifdef __FMA__
    float r = fmaf(a, b, s);
#else
    float r = s + a * b;
#endif
    return fabsf(r) < FLT_MIN ? copysignf(0.0f, r) : r;
}

/* Two bf16 packed as vdpbf16ps pairs them: even k low, odd k high. */
static inline uint32_t pair(float lo, float hi) {
    return (uint32_t)qkv_bf16_from_float(lo) | (uint32_t)qkv_bf16_from_float(hi)
                                                   << 16;
}

static void check_args(int ta, int tb, int M, int N, int K, const float *A,
                       int lda, const float *B, int ldb, const float *C,
                       int ldc) {
    QKV_CHECK(M >= 0 && N >= 0 && K >= 0, "qkv_gemm_bf16: negative size");
    QKV_CHECK(lda >= (ta ? M : K) && ldb >= (tb ? K : N) && ldc >= N,
              "qkv_gemm_bf16: leading dimension too small");
    QKV_CHECK((A && B) || M == 0 || N == 0 || K == 0,
              "qkv_gemm_bf16: NULL operand");
    QKV_CHECK(C || M == 0 || N == 0, "qkv_gemm_bf16: NULL C");
}

void qkv_gemm_bf16_ref(int ta, int tb, int M, int N, int K, const float *A,
                       int lda, const float *B, int ldb, int accumulate,
                       float *C, int ldc) {
    check_args(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float *c = C + (size_t)i * ldc + j;
            if (K == 0 && !accumulate) *c = 0.0f;
            for (int k0 = 0; k0 < K; k0 += QKV_BF16_KC) {
                int k1 = k0 + QKV_BF16_KC < K ? k0 + QKV_BF16_KC : K;
                float s = 0.0f;
                for (int k = k0; k < k1; k += 2) {
                    float v[2][2] = {{0}}; /* [a, b][even, odd] */
                    for (int e = 0; e < 2 && k + e < k1; e++) {
                        int kk = k + e;
                        v[0][e] = ta ? A[(size_t)kk * lda + i]
                                     : A[(size_t)i * lda + kk];
                        v[1][e] = tb ? B[(size_t)j * ldb + kk]
                                     : B[(size_t)kk * ldb + j];
                    }
                    uint32_t a = pair(v[0][0], v[0][1]);
                    uint32_t b = pair(v[1][0], v[1][1]);
                    s = dp_step(s, bf_daz(a >> 16), bf_daz(b >> 16));
                    s = dp_step(s, bf_daz(a), bf_daz(b));
                }
                *c = k0 == 0 && !accumulate ? s : *c + s;
            }
        }
}

/* ----------------------------------------------------------------- kernels */

/* Register tile MR x NR, cache blocks MC rows x NC columns x KC k. */
enum { MR = 12, NR = 32, MC = 192, NC = 512, KC = QKV_BF16_KC };
/* The AMX kernels' pieces of C have AMX_MR rows (their slivers of op(A)
 * too); MR_MAX: the most of either. */
enum { AMX_MR = 32, MR_MAX = 32 };
/* The AMX kernels' row blocks are one sliver (AMX_MR rows): its packed
 * words (16 KB for a k block of 256) stay in L1 while the tiles go across
 * all of op(B)'s slivers, which stream from L2 (2 KB of consecutive words
 * a step). With MC's 6 slivers, 96 KB, each tile load of A came from L2
 * (rows 512 bytes apart). On a 2-core Intel Xeon with AMX (2 MB L2 a
 * core), 2 threads, alternating in turn: base's bf16 step 133.3-134.6
 * against 144.8-147.2 ms (MC 64: 138.5-141.3, 96: 143.0-145.3), small's
 * 8.05-8.08 against 8.50-8.57, tiny's 1.89-1.92 against 1.94-2.02;
 * products X W^T of 2048 tokens, 256 -> 768: 0.32 against 0.40 ms, 256 ->
 * 1000: 0.38 against 0.54. */
_Static_assert(MC % MR == 0, "MC: whole slivers");
/* The slivers of a row block, of n slivers of a kernel of mrk rows. */
static inline int block_slivers(int n, int mrk) {
    int most = mrk == AMX_MR ? 1 : MC / mrk;
    return n < most ? n : most;
}
_Static_assert(KC % 32 == 0 && KC >= 128 && KC <= 1024,
               "QKV_BF16_KC: a multiple of 32 from 128 to 1024 (bf16.h)");

/* make BF16_SKIP_SUMS=1: a build for timing only, whose kernels of
 * qkv_gemm_bf16 leave out their k loops (each k block's sums are zero; C
 * is still stored, or added to, block by block, and the operands packed,
 * staged and split as always; attention's own heads still compute). What
 * its step takes is what the products cost beside their arithmetic: the
 * floor that faster tiles cannot lower (bench/amx.sh). Its results are
 * wrong, and it says so on first use. */
#ifdef QKV_BF16_SKIP_SUMS
enum { SKIP_SUMS = 1 };
#else
enum { SKIP_SUMS = 0 };
#endif

/* Products smaller than this stay on the calling thread. */
#define PAR_MIN_FLOPS 2.0e6
/* elements of a weight per thread packing it (qkv_bf16_pack) */
#define PACK_MIN 16384

/* What a kernel does with its sums: stores them, or adds them to c (ADD);
 * with RELU, stores max(., 0) of the result (a NaN becomes 0, as
 * qkv_sgemm_relu has it). */
enum { ADD = 1, RELU = 2 };

/* c[rows x NR] (ldc) = acc, or c + acc (how: ADD, RELU), acc summed over np
 * pairs of the packed slivers a (MR rows of np words, of which the first
 * rows are used: pair p of row i at a[p MR + i], or with a_rows at
 * a[i np + p]) and b (np x NR words: b[p NR + j]). Each element's sum is
 * the same for any rows: fewer rows only skip work (a decoding step's
 * product has one row). */
typedef void kernel_fn(int np, const uint32_t *a, const uint32_t *b, float *c,
                       size_t ldc, int how, int rows, int a_rows);

static void kernel_portable(int np, const uint32_t *a, const uint32_t *b,
                            float *c, size_t ldc, int how, int rows,
                            int a_rows) {
    float acc[MR][NR] = {{0}};
    size_t rs = a_rows ? (size_t)np : 1, ps = a_rows ? 1 : MR;
    for (int p = 0; p < (SKIP_SUMS ? 0 : np); p++, a += ps, b += NR)
        for (int i = 0; i < rows; i++) {
            uint32_t ai = a[i * rs];
            float alo = bf_daz(ai), ahi = bf_daz(ai >> 16);
            for (int j = 0; j < NR; j++) {
                float s = dp_step(acc[i][j], ahi, bf_daz(b[j] >> 16));
                acc[i][j] = dp_step(s, alo, bf_daz(b[j]));
            }
        }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < NR; j++) {
            float *ci = c + (size_t)i * ldc + j;
            float v = how & ADD ? *ci + acc[i][j] : acc[i][j];
            *ci = how & RELU && !(v > 0.0f) ? 0.0f : v;
        }
}

#if QKV_X86
/* R rows (a constant in each caller: the accumulators stay in registers). */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void
kernel_avx512_rows(const int R, const int a_rows, int np, const uint32_t *a,
                   const uint32_t *b, float *c, size_t ldc, int how) {
    __m512 acc[MR][2];
    const size_t rs = a_rows ? (size_t)np : 1, ps = a_rows ? 1 : MR;
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int p = 0; p < (SKIP_SUMS ? 0 : np); p++, a += ps, b += NR) {
        __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
        for (int i = 0; i < R; i++) {
            __m512i ai = _mm512_set1_epi32((int)a[i * rs]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)ai, (__m512bh)b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)ai, (__m512bh)b1);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) {
        float *ci = c + (size_t)i * ldc;
        if (how & ADD) {
            acc[i][0] = _mm512_add_ps(_mm512_loadu_ps(ci), acc[i][0]);
            acc[i][1] = _mm512_add_ps(_mm512_loadu_ps(ci + 16), acc[i][1]);
        }
        if (how & RELU) { /* vmaxps gives its second operand for a NaN */
            acc[i][0] = _mm512_max_ps(acc[i][0], _mm512_setzero_ps());
            acc[i][1] = _mm512_max_ps(acc[i][1], _mm512_setzero_ps());
        }
        _mm512_storeu_ps(ci, acc[i][0]);
        _mm512_storeu_ps(ci + 16, acc[i][1]);
    }
}

/* rows rounded up to 1, 2, 4, 8 or MR (the caller's tile has room). */
__attribute__((target("avx512f,avx512bf16"))) static void
kernel_avx512(int np, const uint32_t *a, const uint32_t *b, float *c,
              size_t ldc, int how, int rows, int a_rows) {
#define QKV_ROWS(R)                                                            \
    (a_rows ? kernel_avx512_rows(R, 1, np, a, b, c, ldc, how)                  \
            : kernel_avx512_rows(R, 0, np, a, b, c, ldc, how))
    if (rows <= 1)
        QKV_ROWS(1);
    else if (rows <= 2)
        QKV_ROWS(2);
    else if (rows <= 4)
        QKV_ROWS(4);
    else if (rows <= 8)
        QKV_ROWS(8);
    else
        QKV_ROWS(MR);
#undef QKV_ROWS
}
#endif

/* ------------------------------------------------------------------- AMX */

/* The AMX kernel (Intel SDM vol. 1 ch. 3 "Intel AMX", vol. 2 TILELOADD,
 * TDPBF16PS, LDTILECFG). A tile register holds up to 16 rows of 64 bytes;
 * TDPBF16PS C, A, B adds A (rows x kp pair words) times B (kp rows of 16
 * pair words, one per column: the pair layout the B slivers already have)
 * into C (rows x 16 floats). Its pieces of C are AMX_MR = 32 rows by NR =
 * 32 columns: four C tiles, fed at each step of 16 pairs by two A tiles
 * (the top and bottom 16 rows' words, a_rows layout: row i's pairs at
 * a[i np ..]) and the two halves of the B sliver, so that the 4 tile
 * products of a step share 4 tile loads:
 *
 *   tmm0, tmm1  C, rows 0-15, columns 0-15 and 16-31    top x 64 bytes
 *   tmm2, tmm3  C, rows 16-31, the same                 bottom x 64 bytes
 *   tmm4, tmm5  A, rows 0-15 and 16-31                  top, bottom x 4 kp
 *   tmm6, tmm7  B, columns 0-15 and 16-31               kp x 64 bytes
 *
 * A piece of 16 rows or fewer leaves the bottom tiles out. The tile shapes
 * (top, bottom, kp) are loaded (LDTILECFG, which zeroes the tiles) only
 * when they change: a last step of r < 16 pairs stores the C tiles, takes
 * kp = r, and loads them back. Every C row's sums are the same whatever
 * the rows configured. A block whose sums go to C as they are (no adding, no
 * ReLU: a product's first k block) stores its tiles straight into C; the
 * others store them to a buffer and add that to C. */
enum { AMX_KP = 16 }; /* pairs a step */

/* The 64-byte configuration LDTILECFG reads (palette 1): byte 0 the
 * palette, bytes 16 + 2t the bytes a row of tile t (16-bit), byte 48 + t
 * its rows; all else zero (a tile of 0 rows is not configured). */
static void amx_config(uint8_t cfg[64], int top, int bot, int kp) {
    memset(cfg, 0, 64);
    cfg[0] = 1;
    int b64 = bot ? 64 : 0;
    int shape[8][2] = {{top, 64},  {top, 64},     {bot, b64},
                       {bot, b64}, {top, 4 * kp}, {bot, bot ? 4 * kp : 0},
                       {kp, 64},   {kp, 64}};
    for (int t = 0; t < 8; t++) {
        cfg[16 + 2 * t] = (uint8_t)(shape[t][1] & 0xff);
        cfg[17 + 2 * t] = (uint8_t)(shape[t][1] >> 8);
        cfg[48 + t] = (uint8_t)shape[t][0];
    }
}

/* The model: each thread's tile registers and the instructions on them, as
 * the SDM's pseudocode has them, with the checks whose failure would fault
 * on the hardware (#UD, #GP) made fatal. An independent reading, Bochs's
 * emulation of AMX (bochs/cpu/avx/amx.cc, 2024), has the same sums (even
 * and odd products apart from zero, DAZ, FTZ, then added to C) and the
 * same faults for what this kernel does. */
typedef struct amx_tile {
    int rows, colsb;
    uint8_t d[16][64];
} amx_tile;
static _Thread_local amx_tile model_t[8];

static void model_cfg(const uint8_t *cfg) {
    QKV_CHECK(cfg[0] == 1 && cfg[1] == 0, "AMX model: palette %d, start %d",
              cfg[0], cfg[1]);
    for (int i = 2; i < 16; i++)
        QKV_CHECK(cfg[i] == 0, "AMX model: reserved byte %d set", i);
    for (int t = 0; t < 16; t++) {
        int colsb = cfg[16 + 2 * t] | cfg[17 + 2 * t] << 8, rows = cfg[48 + t];
        QKV_CHECK(t < 8 || (colsb == 0 && rows == 0),
                  "AMX model: palette 1 has 8 tiles, tile %d configured", t);
        QKV_CHECK(rows <= 16 && colsb <= 64 && (rows == 0) == (colsb == 0),
                  "AMX model: tile %d of %d rows x %d bytes", t, rows, colsb);
        if (t < 8) {
            memset(&model_t[t], 0, sizeof model_t[t]);
            model_t[t].rows = rows, model_t[t].colsb = colsb;
        }
    }
}

static amx_tile *model_tile(int t) {
    QKV_CHECK(model_t[t].rows > 0, "AMX model: tile %d not configured", t);
    return &model_t[t];
}

/* A tile that TILELOADD, TILESTORED and TDPBF16PS take: configured, rows
 * of whole dwords (else #UD). */
static amx_tile *model_words(int t) {
    amx_tile *x = model_tile(t);
    QKV_CHECK(x->colsb % 4 == 0, "AMX model: tile %d rows of %d bytes", t,
              x->colsb);
    return x;
}

static void model_load(int t, const void *p, size_t stride) {
    amx_tile *x = model_words(t);
    memset(x->d, 0, sizeof x->d);
    for (int r = 0; r < x->rows; r++)
        memcpy(x->d[r], (const uint8_t *)p + r * stride, (size_t)x->colsb);
}

static void model_store(int t, void *p, size_t stride) {
    amx_tile *x = model_words(t);
    for (int r = 0; r < x->rows; r++)
        memcpy((uint8_t *)p + r * stride, x->d[r], (size_t)x->colsb);
}

static void model_zero(int t) {
    memset(model_tile(t)->d, 0, sizeof model_t[t].d);
}

static inline uint32_t tile_word(const amx_tile *x, int r, int w) {
    uint32_t u;
    memcpy(&u, &x->d[r][4 * w], 4);
    return u;
}

/* TDPBF16PS c, a, b: for each row m and column n, the even and the odd
 * products over a's kp pairs summed apart from zero (fused multiply-adds,
 * DAZ, FTZ), then their sum added to c's element. */
static void model_dp(int ct, int at, int bt) {
    amx_tile *c = model_words(ct), *a = model_words(at), *b = model_words(bt);
    QKV_CHECK(ct != at && ct != bt && at != bt && c->rows == a->rows &&
                  c->colsb == b->colsb && a->colsb == 4 * b->rows,
              "AMX model: TDPBF16PS tmm%d (%dx%d), tmm%d (%dx%d), tmm%d "
              "(%dx%d) do not fit",
              ct, c->rows, c->colsb, at, a->rows, a->colsb, bt, b->rows,
              b->colsb);
    int kp = a->colsb / 4, nn = c->colsb / 4;
    for (int m = 0; m < c->rows; m++) {
        float even[16] = {0}, odd[16] = {0};
        for (int k = 0; k < kp; k++) {
            uint32_t aw = tile_word(a, m, k);
            for (int n = 0; n < nn; n++) {
                uint32_t bw = tile_word(b, k, n);
                even[n] = dp_step(even[n], bf_daz(aw), bf_daz(bw));
                odd[n] = dp_step(odd[n], bf_daz(aw >> 16), bf_daz(bw >> 16));
            }
        }
        for (int n = 0; n < nn; n++) {
            float s, v;
            memcpy(&v, &c->d[m][4 * n], 4);
            s = dp_step(even[n], odd[n], 1.0f);
            v = dp_step(v, s, 1.0f);
            memcpy(&c->d[m][4 * n], &v, 4);
        }
    }
}

#if QKV_X86 && defined(__x86_64__) && defined(__linux__)
#define QKV_AMX 1
/* The instructions (AT&T operand order: TDPBF16PS's B, A, C); the memory
 * clobbers keep the compiler from moving the packing's stores past a load
 * or C's reads before a store. */
#define AMX_CFG(p) __asm__ volatile("ldtilecfg (%0)" ::"r"(p) : "memory")
#define AMX_LOAD(t, p, s)                                                      \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(p), "r"((long)(s))  \
                     : "memory")
#define AMX_STORE(t, p, s)                                                     \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(p),             \
                     "r"((long)(s))                                            \
                     : "memory")
#define AMX_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define AMX_DP(c, a, b)                                                        \
    __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#else
#define QKV_AMX            0
#define AMX_CFG(p)         (void)(p)
#define AMX_LOAD(t, p, s)  ((void)(p), (void)(s))
#define AMX_STORE(t, p, s) ((void)(p), (void)(s))
#define AMX_ZERO(t)        (void)0
#define AMX_DP(c, a, b)    (void)0
#endif

/* Each instruction on the model or the hardware (model: a constant). */
#define T_DO(on_model, on_cpu)                                                 \
    do {                                                                       \
        if (model)                                                             \
            on_model;                                                          \
        else                                                                   \
            on_cpu;                                                            \
    } while (0)
#define T_CFG(p)         T_DO(model_cfg(p), AMX_CFG(p))
#define T_LOAD(t, p, s)  T_DO(model_load(t, p, s), AMX_LOAD(t, p, s))
#define T_STORE(t, p, s) T_DO(model_store(t, p, s), AMX_STORE(t, p, s))
#define T_ZERO(t)        T_DO(model_zero(t), AMX_ZERO(t))
#define T_DP(c, a, b)    T_DO(model_dp(c, a, b), AMX_DP(c, a, b))

/* The shapes each thread's tiles have now (amx_config's arguments packed;
 * -1: none), for the hardware [0] and the model [1]. */
static _Thread_local int amx_shapes[2] = {-1, -1};

static inline __attribute__((always_inline)) void
amx_shape(const int model, int top, int bot, int kp) {
    int shape = top | bot << 5 | kp << 10;
    if (amx_shapes[model] != shape) {
        uint8_t cfg[64];
        amx_config(cfg, top, bot, kp);
        T_CFG(cfg);
        amx_shapes[model] = shape;
    }
}

/* The C tiles from or to c (AMX_MR rows ldc apart; columns 0-15, and
 * 16-31 when two). */
static inline __attribute__((always_inline)) void
amx_c_tiles(const int model, int store, int bot, int two, float *c,
            size_t ldc) {
    size_t sc = ldc * 4;
    if (store) {
        T_STORE(0, c, sc);
        if (two) T_STORE(1, c + 16, sc);
        if (bot) T_STORE(2, c + 16 * ldc, sc);
        if (bot && two) T_STORE(3, c + 16 * ldc + 16, sc);
    } else {
        T_LOAD(0, c, sc);
        if (two) T_LOAD(1, c + 16, sc);
        if (bot) T_LOAD(2, c + 16 * ldc, sc);
        if (bot && two) T_LOAD(3, c + 16 * ldc + 16, sc);
    }
}

/* rows (<= AMX_MR) x 32 columns of C (16 unless two) from np pairs: A's
 * row i at a + i lda words, B's pair row p at b + p ldb words (32 or 16
 * words of it read). The kernel's slivers are lda = np, ldb = NR, two;
 * core/attention.c's heads (qkv_bf16_amx_words) pass their own. */
static inline __attribute__((always_inline)) void
amx_piece(const int model, const int skip, int np, const uint32_t *a,
          size_t lda, const uint32_t *b, size_t ldb, int two, float *c,
          size_t ldc, int how, int rows) {
    int full = np / AMX_KP, r = np % AMX_KP;
    int top = rows < 16 ? rows : 16, bot = rows - top;
    size_t sa = lda * 4, sb = ldb * 4;
    const uint32_t *a1 = a + (size_t)16 * lda; /* the bottom rows */
    _Alignas(64) float acc[AMX_MR * NR];
    for (int part = 0; part < 2; part++) { /* full steps, then the rest */
        int steps = part ? r > 0 : full, kp = part ? r : AMX_KP;
        if (!steps) continue;
        if (part && full) amx_c_tiles(model, 1, bot, two, acc, NR);
        amx_shape(model, top, bot, kp);
        if (part && full) {
            amx_c_tiles(model, 0, bot, two, acc, NR);
        } else {
            T_ZERO(0);
            if (two) T_ZERO(1);
            if (bot) T_ZERO(2);
            if (bot && two) T_ZERO(3);
        }
        for (int s = 0; s < (skip ? 0 : steps); s++) {
            size_t p0 = (size_t)(part ? full : s) * AMX_KP;
            const uint32_t *bs = b + p0 * ldb;
            T_LOAD(6, bs, sb);
            if (two) T_LOAD(7, bs + 16, sb);
            T_LOAD(4, a + p0, sa);
            T_DP(0, 4, 6);
            if (two) T_DP(1, 4, 7);
            if (bot) {
                T_LOAD(5, a1 + p0, sa);
                T_DP(2, 5, 6);
                if (two) T_DP(3, 5, 7);
            }
        }
    }
    if (!(how & (ADD | RELU))) { /* the block's sums are C: stored there */
        amx_c_tiles(model, 1, bot, two, c, ldc);
        return;
    }
    amx_c_tiles(model, 1, bot, two, acc, NR);
    for (int i = 0; i < rows; i++) {
        float *ci = c + (size_t)i * ldc;
        const float *ai = acc + i * NR;
        for (int j = 0; j < (two ? 32 : 16); j++) {
            float v = how & ADD ? ci[j] + ai[j] : ai[j];
            ci[j] = how & RELU && !(v > 0.0f) ? 0.0f : v;
        }
    }
}

static inline __attribute__((always_inline)) void
kernel_amx_body(const int model, int np, const uint32_t *a, const uint32_t *b,
                float *c, size_t ldc, int how, int rows, int a_rows) {
    QKV_CHECK(a_rows && rows >= 1 && rows <= AMX_MR,
              "the AMX kernel reads up to %d rows of A's slivers as rows",
              AMX_MR);
    amx_piece(model, SKIP_SUMS, np, a, (size_t)np, b, NR, 1, c, ldc, how, rows);
}

static void kernel_amx_model(int np, const uint32_t *a, const uint32_t *b,
                             float *c, size_t ldc, int how, int rows,
                             int a_rows) {
    kernel_amx_body(1, np, a, b, c, ldc, how, rows, a_rows);
}

#if QKV_AMX
__attribute__((target("amx-tile,amx-bf16"))) static void
kernel_amx(int np, const uint32_t *a, const uint32_t *b, float *c, size_t ldc,
           int how, int rows, int a_rows) {
    kernel_amx_body(0, np, a, b, c, ldc, how, rows, a_rows);
}
#endif

/* ------------------------------------------------------------- dispatch */

static const char *const kernel_names[QKV_BF16_N_KERNELS] = {
    "portable", "avx512-bf16", "amx-bf16", "amx-model"};
static kernel_fn *const kernels[QKV_BF16_N_KERNELS] = {
    kernel_portable,
#if QKV_X86
    kernel_avx512,
#else
    NULL,
#endif
#if QKV_AMX
    kernel_amx,
#else
    NULL,
#endif
    kernel_amx_model,
};

/* The AMX kernels read op(A)'s slivers as rows whatever ta is. */
static int amx_kernel(qkv_bf16_kernel k) {
    return k == QKV_BF16_AMX || k == QKV_BF16_AMX_MODEL;
}

#if QKV_AMX
/* NULL if this process may run AMX instructions (asked for once), else why
 * not: the CPU (CPUID leaf 7: AMX-BF16 EDX bit 22, AMX-TILE bit 24), the
 * OS's XSAVE state (XCR0 bits 17 and 18, the tile configuration and data),
 * and Linux's permission for the tile data, which a process must request
 * (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA: Linux 5.16 on). */
static const char *amx_refused(void) {
    static const char *why; /* set once, under the lock */
    static int asked;
    static char buf[160];
    int done;
    __atomic_load(&asked, &done, __ATOMIC_ACQUIRE);
    if (done) return why;
    QKV_OMP(omp critical(qkv_amx_ask)) {
        if (!asked) {
            unsigned a = 0, b = 0, c = 0, d = 0;
            if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & 1u << 22) ||
                !(d & 1u << 24)) {
                why = "this CPU has no amx_bf16";
            } else if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & 1u << 27)) {
                why = "the OS has not enabled XSAVE (no AMX state)";
            } else {
                unsigned lo, hi;
                __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
                if ((lo & 3u << 17) != 3u << 17)
                    why = "the OS has not enabled the AMX tile state (XCR0)";
                else if (syscall(SYS_arch_prctl, 0x1023 /* REQ_XCOMP_PERM */,
                                 18 /* XTILEDATA */) != 0) {
                    snprintf(buf, sizeof buf,
                             "Linux refused the AMX tile state "
                             "(arch_prctl ARCH_REQ_XCOMP_PERM: %s)",
                             strerror(errno));
                    why = buf;
                }
            }
            __atomic_store_n(&asked, 1, __ATOMIC_RELEASE);
        }
    }
    return why;
}
#endif

const char *qkv_bf16_kernel_name(qkv_bf16_kernel k) {
    return k >= 0 && k < QKV_BF16_N_KERNELS ? kernel_names[k] : "?";
}

int qkv_bf16_kernel_usable(qkv_bf16_kernel k, char *why, size_t cap) {
    const char *no = NULL;
    if (k == QKV_BF16_PORTABLE || k == QKV_BF16_AMX_MODEL) return 1;
    if (k == QKV_BF16_AMX) {
#if QKV_AMX
        no = amx_refused();
#else
        no = "not an x86-64 CPU";
#endif
    } else if (k != QKV_BF16_AVX512) {
        no = "no such kernel";
    } else {
#if QKV_X86
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512f") ||
            !__builtin_cpu_supports("avx512bf16"))
            no = "this CPU has no avx512_bf16";
#else
        no = "not an x86-64 CPU";
#endif
    }
    if (no && why && cap) snprintf(why, cap, "%s", no);
    return !no;
}

qkv_bf16_kernel qkv_bf16_kernel_best(void) {
    if (qkv_bf16_kernel_usable(QKV_BF16_AMX, NULL, 0)) return QKV_BF16_AMX;
    return qkv_bf16_kernel_usable(QKV_BF16_AVX512, NULL, 0) ? QKV_BF16_AVX512
                                                            : QKV_BF16_PORTABLE;
}

/* The kernel in use; -1: not chosen yet. Atomic: the first call may come
 * from two threads at once (a weight's packing, qkv_bf16_pack, runs on the
 * threads and asks which kernel packs). */
static atomic_int current = -1;

int qkv_bf16_kernel_env(qkv_bf16_kernel *k, char *why, size_t cap) {
    const char *s = getenv("QKV_BF16_KERNEL");
    char no[160] = "no such bf16 kernel (portable, avx512-bf16, amx-bf16, "
                   "amx-model)";
    *k = qkv_bf16_kernel_best();
    if (!s || !*s) return 0;
    for (int i = 0; i < QKV_BF16_N_KERNELS; i++) {
        if (strcmp(s, kernel_names[i]) != 0) continue;
        if (qkv_bf16_kernel_usable((qkv_bf16_kernel)i, no, sizeof no)) {
            *k = (qkv_bf16_kernel)i;
            return 0;
        }
        break;
    }
    if (why && cap) snprintf(why, cap, "QKV_BF16_KERNEL=%.40s: %s", s, no);
    return -1;
}

qkv_bf16_kernel qkv_bf16_get_kernel(void) {
    int c = atomic_load(&current);
    if (c < 0) {
        qkv_bf16_kernel k;
        char why[200];
        QKV_CHECK(qkv_bf16_kernel_env(&k, why, sizeof why) == 0, "%s", why);
        /* the first to choose sets it (the others chose the same) */
        if (atomic_compare_exchange_strong(&current, &c, (int)k)) {
            c = (int)k;
            if (SKIP_SUMS)
                fprintf(stderr,
                        "qkv: this build's bf16 products skip their sums "
                        "(make BF16_SKIP_SUMS=1): for timing only, its "
                        "results are wrong\n");
        }
    }
    return (qkv_bf16_kernel)c;
}

qkv_bf16_kernel qkv_bf16_set_kernel(qkv_bf16_kernel k) {
    char why[128];
    QKV_CHECK(qkv_bf16_kernel_usable(k, why, sizeof why),
              "qkv_bf16_set_kernel(%s): %s", qkv_bf16_kernel_name(k), why);
    qkv_bf16_kernel old = qkv_bf16_get_kernel();
    atomic_store(&current, (int)k);
    return old;
}

/* --------------------------------------------------------------- packing */

/* The bits of bf16(x), as qkv_bf16_from_float, without a branch (the
 * packing loops vectorise): rne_high's high half (its low half is what the
 * rounding left), rne's low half. */
static inline uint32_t rne_high(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
    return (u & 0x7fffffffu) > 0x7f800000u ? u | 0x400000u : r;
}
static inline uint32_t rne(float x) {
    return rne_high(x) >> 16;
}

#if QKV_X86
/* pack()'s words for full pairs when i runs along X's rows, for ns
 * slivers x0, x0 + w, ... at once (sliver s's words at out + s stride):
 * two rows' elements rounded and their bf16 interleaved, 16 at a time.
 * With the avx512-bf16 and amx kernels only (their CPUs have
 * AVX512-BF16), so the portable kernel's tests cover the C loop. The
 * rounding is VCVTNE2PS2BF16's: to nearest even, a NaN quiet with its
 * payload's top, as rne(); but a denormal float becomes a zero of its sign
 * where rne() rounds it to a denormal bf16, which every kernel reads as
 * that same zero (DAZ), so the products are the same. 2-3x the rounding in
 * integer lanes this replaced.
 *
 * The slivers go pair row by pair row: the two rows of X are read from
 * left to right across all of them, a few pair rows ahead of the loads
 * (prefetch). One sliver at a time walked a column strip w floats wide
 * down the k block, which on AMD EPYC (Zen 5) waited on the loads: a
 * weight gradient's product (X^T dY, both operands packed this way, K =
 * 2048, 2 threads, operands not in cache) took 2.2-2.4 against 2.0-2.1 ms
 * for M 1024 x N 256, 2.0-2.1 against 1.86-1.99 ms for 256 x 1024. */
__attribute__((target("avx512f,avx512bw,avx512bf16"),
               always_inline)) static inline __m512i
pair16_avx512(__m512 lo, __m512 hi) {
    /* [lo's 16, hi's 16] -> lo[0], hi[0], lo[1], hi[1], ... */
    const __m512i mix = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11,
                                         26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                         5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(mix, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void
pack_pairs_avx512(const float *X, size_t ld, int x0, int k0, int full, int w,
                  int ns, size_t stride, uint32_t *out) {
    const int ahead = 4; /* pair rows */
    for (int p = 0; p < full; p++) {
        const float *r0 = X + (size_t)(k0 + 2 * p) * ld + x0, *r1 = r0 + ld;
        if (p + ahead < full)
            for (int i = 0; i < ns * w; i += 16) {
                __builtin_prefetch(r0 + 2 * ahead * ld + i);
                __builtin_prefetch(r1 + 2 * ahead * ld + i);
            }
        for (int s = 0; s < ns; s++) {
            uint32_t *o = out + (size_t)s * stride + (size_t)p * w;
            const float *a = r0 + (size_t)s * w, *b = r1 + (size_t)s * w;
            for (int i = 0; i < w; i += 16) {
                __mmask16 m =
                    w - i >= 16 ? 0xffff : (__mmask16)((1u << (w - i)) - 1);
                _mm512_mask_storeu_epi32(
                    o + i, m,
                    pair16_avx512(_mm512_maskz_loadu_ps(m, a + i),
                                  _mm512_maskz_loadu_ps(m, b + i)));
            }
        }
    }
}

/* pack()'s words of one row of A whose k runs along it (op(A) = A): m
 * pairs, 16 a store (the bf16 of 32 consecutive floats are 16 pairs in
 * order); rounding as pack_pairs_avx512's. */
__attribute__((target("avx512f,avx512bf16"))) static void
pack_row_avx512(const float *row, int m, uint32_t *o) {
    int p = 0;
    for (; p + 16 <= m; p += 16)
        _mm512_storeu_si512(o + p, (__m512i)_mm512_cvtne2ps_pbh(
                                       _mm512_loadu_ps(row + 2 * p + 16),
                                       _mm512_loadu_ps(row + 2 * p)));
    if (p < m) {
        int e = 2 * (m - p); /* floats left: 2 to 30 */
        __mmask16 lo = e >= 16 ? 0xffff : (__mmask16)((1u << e) - 1),
                  hi = e > 16 ? (__mmask16)((1u << (e - 16)) - 1) : 0;
        __m512bh h =
            _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, row + 2 * p + 16),
                                _mm512_maskz_loadu_ps(lo, row + 2 * p));
        _mm512_mask_storeu_epi32(o + p, (__mmask16)((1u << (m - p)) - 1),
                                 (__m512i)h);
    }
}
#endif

/* n rounded up to whole vectors of 16 words */
static int up16(int n) {
    return (n + 15) / 16 * 16;
}

#if QKV_X86 && defined(__AVX512F__) && defined(__AVX512BW__)
#include "vec.h" /* qkv_transpose16 */
#define QKV_TRANSPOSE16 1
/* qkv_bf16_row_pairs_t, and pack()'s words for a sliver of NR rows whose k
 * runs along them (a weight's W^T), 16 pairs at a time: each row's 32
 * floats rounded into 16 words (VCVTNE2PS2BF16, as pack_pairs_avx512), and
 * the 16 x 16 blocks of words transposed in registers (the scalar
 * transpose ran at 11 GB/s of fp32 read on Zen 5). */
__attribute__((target("avx512bf16"))) static void
row_pairs_t_avx512(int rows, int n, const float *X, size_t ld, uint32_t *out,
                   size_t ldo) {
    int np = (n + 1) / 2;
    for (int p0 = 0; p0 < np; p0 += 16) /* all rows' pairs p0.., then on */
        for (int i0 = 0; i0 < up16(rows); i0 += 16) {
            int e = n - 2 * p0; /* floats left in the rows */
            __mmask16 lo = e >= 16 ? 0xffff : (__mmask16)((1u << e) - 1),
                      hi = e >= 32  ? 0xffff
                           : e > 16 ? (__mmask16)((1u << (e - 16)) - 1)
                                    : 0;
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                int live = i0 + i < rows;
                const float *row =
                    live ? X + (size_t)(i0 + i) * ld + 2 * p0 : X;
                r[i] = (__m512)_mm512_cvtne2ps_pbh(
                    _mm512_maskz_loadu_ps(live ? hi : 0, row + 16),
                    _mm512_maskz_loadu_ps(live ? lo : 0, row));
            }
            qkv_transpose16(r);
            for (int q = 0; q < 16 && p0 + q < np; q++)
                _mm512_storeu_ps((float *)(out + (size_t)(p0 + q) * ldo + i0),
                                 r[q]);
        }
}

/* pack_as()'s words for a whole sliver of op(A) = X^T (element (i, k) at
 * X[k ld + x0 + i]; w a multiple of 16) laid out in rows, out[i np + p],
 * for the pairs of its first `groups` groups of 16: each pair row's words
 * for 16 rows at a time as pack_pairs_avx512 makes them, 16 pair rows of
 * them transposed in registers into 16 rows' 16 pairs. The AMX kernel's A
 * of a weight gradient (dY^T); pack_as gathered these one word at a time
 * from pack()'s pair-major words. */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void
pack_at_rows_avx512(const float *X, size_t ld, int x0, int k0, int groups,
                    int w, int np, uint32_t *out) {
    for (int g = 0; g < groups; g++)
        for (int i0 = 0; i0 < w; i0 += 16) {
            __m512 r[16];
            for (int q = 0; q < 16; q++) {
                const float *r0 =
                    X + (size_t)(k0 + 32 * g + 2 * q) * ld + x0 + i0;
                r[q] = (__m512)pair16_avx512(_mm512_loadu_ps(r0),
                                             _mm512_loadu_ps(r0 + ld));
            }
            qkv_transpose16(r);
            for (int i = 0; i < 16; i++)
                _mm512_storeu_ps(
                    (float *)(out + (size_t)(i0 + i) * np + 16 * g), r[i]);
        }
}
#endif

/* Whether packing may use AVX-512 (the avx512-bf16 and amx kernels' CPUs
 * have AVX512-BW); the portable and model kernels pack in C, so their
 * tests cover the C loops. */
static int avx512_packing(void) {
    qkv_bf16_kernel k = qkv_bf16_get_kernel();
    return k == QKV_BF16_AVX512 || k == QKV_BF16_AMX;
}

/* Element (r, c) of a row-major matrix stored transposed or not. */
static inline float at(const float *X, size_t ld, int trans, int r, int c) {
    return trans ? X[(size_t)c * ld + r] : X[(size_t)r * ld + c];
}

/* pack()'s pairs full..np - 1: rows past n, a lone last k. */
static void pack_edges(const float *X, size_t ld, int trans, int across, int n,
                       int x0, int k0, int kc, int w, int full, uint32_t *out) {
    int np = (kc + 1) / 2;
    for (int p = full; p < np; p++)
        for (int i = 0; i < w; i++) {
            float v[2] = {0.0f, 0.0f};
            for (int e = 0; e < 2; e++) {
                int k = k0 + 2 * p + e;
                if (x0 + i < n && 2 * p + e < kc)
                    v[e] = across ? at(X, ld, trans, k, x0 + i)
                                  : at(X, ld, trans, x0 + i, k);
            }
            out[(size_t)p * w + i] = rne(v[0]) | rne(v[1]) << 16;
        }
}

/* Packs the sliver of op(X) (rows: the w = MR or NR rows/columns the words
 * go across, from x0, zeros past n; k from k0, kc of them) as np pairs of w
 * words: out[p * w + i] = bf16 pair (k0 + 2p, k0 + 2p + 1) of row x0 + i.
 * `across` says how op(X)'s element (i, k) sits in memory: across 0, i is
 * the row of op(X) (A's rows), across 1, its column (B's columns).
 *
 * Except op(A) = A (across 0, trans 0): there each of A's rows already
 * holds its k in a row, and the sliver keeps them so (out[i * np + p],
 * the kernel's a_rows): packing is then one streaming pass (on Zen 5, about
 * 3x the speed of rounding the rows and transposing their words). */
static void pack(const float *X, size_t ld, int trans, int across, int n,
                 int x0, int k0, int kc, int w, uint32_t *out) {
    int np = (kc + 1) / 2, full = x0 + w <= n ? np - (kc & 1) : 0;
    if (!across && !trans) { /* op(A) = A: each row's pairs in a row */
        int live = n - x0 < w ? (n > x0 ? n - x0 : 0) : w;
        qkv_bf16_row_pairs(live, kc, X + (size_t)x0 * ld + k0, ld, out,
                           (size_t)np);
        memset(out + (size_t)live * np, 0,
               (size_t)(w - live) * np * sizeof *out);
        return;
    }
    if (across == trans) { /* k runs along X's rows: X[(x0 + i) ld + k] */
        int p0 = 0;        /* pairs done */
#if QKV_TRANSPOSE16
        if (w == NR && avx512_packing()) {
            row_pairs_t_avx512(NR, 2 * full, X + (size_t)x0 * ld + k0, ld, out,
                               NR);
            p0 = full;
        }
#endif
        /* each row rounded in one vectorised pass, then the words
         * transposed: far faster than rounding one pair at a time */
        uint16_t h[NR][KC];
        for (int i = 0; i < w && full > p0; i++) {
            const float *row = X + (size_t)(x0 + i) * ld + k0;
            for (int k = 2 * p0; k < 2 * full; k++)
                h[i][k] = (uint16_t)rne(row[k]);
        }
        for (int p = p0; p < full; p++)
            for (int i = 0; i < w; i++)
                out[(size_t)p * w + i] = h[i][2 * p] | (uint32_t)h[i][2 * p + 1]
                                                           << 16;
    } else { /* i runs along X's rows: X[k ld + x0 + i] */
#if QKV_X86
        if (avx512_packing()) {
            pack_pairs_avx512(X, ld, x0, k0, full, w, 1, 0, out);
            pack_edges(X, ld, trans, across, n, x0, k0, kc, w, full, out);
            return;
        }
#endif
        for (int p = 0; p < full; p++) {
            const float *r0 = X + (size_t)(k0 + 2 * p) * ld + x0, *r1 = r0 + ld;
            uint32_t *o = out + (size_t)p * w;
            for (int i = 0; i < w; i++)
                o[i] = rne_high(r0[i]) >> 16 | (rne_high(r1[i]) & 0xffff0000u);
        }
    }
    pack_edges(X, ld, trans, across, n, x0, k0, kc, w, full, out);
}

/* pack() of slivers s0..s1 - 1 (x0 = s w), sliver s at out + (s - s0) w np.
 * Where i runs along X's rows, the slivers that lie inside n are packed
 * together, pair row by pair row (pack_pairs_avx512). */
static inline __attribute__((always_inline)) void
pack_range(const float *X, size_t ld, int trans, int across, int n, int s0,
           int s1, int k0, int kc, int w, uint32_t *out) {
    int np = (kc + 1) / 2, s = s0;
    size_t stride = (size_t)w * np;
#if QKV_X86
    int inside = n / w < s1 ? n / w : s1; /* slivers s0..inside - 1 */
    if (across != trans && inside - s0 > 1 && avx512_packing()) {
        int full = np - (kc & 1);
        pack_pairs_avx512(X, ld, s0 * w, k0, full, w, inside - s0, stride, out);
        for (; s < inside; s++)
            pack_edges(X, ld, trans, across, n, s * w, k0, kc, w, full,
                       out + (size_t)(s - s0) * stride);
    }
#endif
    for (; s < s1; s++)
        pack(X, ld, trans, across, n, s * w, k0, kc, w,
             out + (size_t)(s - s0) * stride);
}

/* pack(), except that with a_rows a sliver of op(A) = A^T is laid out in
 * rows too (out[i * np + p], the AMX kernels' layout): packed pair-major,
 * then each row's words gathered. */
static void pack_as(int a_rows, const float *X, size_t ld, int trans,
                    int across, int n, int x0, int k0, int kc, int w,
                    uint32_t *out) {
    if (across || !trans || !a_rows) {
        pack(X, ld, trans, across, n, x0, k0, kc, w, out);
        return;
    }
    int np = (kc + 1) / 2;
#if QKV_TRANSPOSE16
    if (x0 + w <= n && w % 16 == 0 && avx512_packing()) {
        int groups = (np - (kc & 1)) / 16;
        pack_at_rows_avx512(X, ld, x0, k0, groups, w, np, out);
        for (int i = 0; i < w; i++) /* the pairs after the groups */
            for (int p = 16 * groups; p < np; p++) {
                const float *x = X + (size_t)(k0 + 2 * p) * ld + x0 + i;
                out[(size_t)i * np + p] =
                    rne(x[0]) | (2 * p + 1 < kc ? rne(x[ld]) << 16 : 0);
            }
        return;
    }
#endif
    uint32_t tmp[MR_MAX * (KC / 2)];
    QKV_CHECK(w <= MR_MAX && kc <= KC, "bf16: an A sliver of %d x %d", w, kc);
    pack(X, ld, trans, across, n, x0, k0, kc, w, tmp);
    for (int i = 0; i < w; i++)
        for (int p = 0; p < np; p++)
            out[(size_t)i * np + p] = tmp[(size_t)p * w + i];
}

/* pack_as() of slivers s0..s1 - 1 (x0 = s w), sliver s at
 * out + (s - s0) w np. */
static inline __attribute__((always_inline)) void
pack_slivers(int a_rows, const float *X, size_t ld, int trans, int across,
             int n, int s0, int s1, int k0, int kc, int w, uint32_t *out) {
    int np = (kc + 1) / 2;
    if (across || !trans || !a_rows) {
        pack_range(X, ld, trans, across, n, s0, s1, k0, kc, w, out);
        return;
    }
    for (int s = s0; s < s1; s++)
        pack_as(a_rows, X, ld, trans, across, n, s * w, k0, kc, w,
                out + (size_t)(s - s0) * w * np);
}

/* One mrk x NR tile (mrk: the kernel's rows); a partial one goes through a
 * local buffer, with exactly the operations of a whole one. */
static void tile(kernel_fn *kern, int mrk, int np, const uint32_t *a,
                 int a_rows, const uint32_t *b, float *c, size_t ldc, int mr,
                 int nr, int how) {
    if (mr == mrk && nr == NR) {
        kern(np, a, b, c, ldc, how, mrk, a_rows);
        return;
    }
    float buf[MR_MAX * NR] = {0};
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            buf[i * NR + j] = how & ADD ? c[(size_t)i * ldc + j] : 0.0f;
    kern(np, a, b, buf, NR, how, mr, a_rows);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) c[(size_t)i * ldc + j] = buf[i * NR + j];
}

/* *buf with room for bytes, grown as needed (kept between calls). */
static void *grown(void **buf, size_t *cap, size_t bytes, const char *what) {
    if (bytes > *cap) {
        free(*buf);
        *buf = qkv_malloc_aligned(bytes, what);
        *cap = bytes;
    }
    return *buf;
}

/* The calling thread's scratch for one product: the operand packed whole
 * and each thread's slice (its chunks' packed slivers and staged C). Only
 * the calling thread owns memory here: a team's other threads come and go
 * with the thread count, and would take theirs with them. */
static void *work(size_t bytes) {
    static _Thread_local void *buf;
    static _Thread_local size_t cap;
    return grown(&buf, &cap, bytes, "bf16 packing");
}

/* n floats or words, rounded up to whole cache lines */
static size_t lines(size_t n) {
    return (n + 15) / 16 * 16;
}

/* A product with several k blocks adds each block's sums to C. When C's
 * rows lie a multiple of 256 bytes apart (the model's widths: 256, 1024),
 * a tile's rows fall in the same few cache sets and evict each other
 * between blocks (measured: 385 against 455 GFLOPS for 240 x 1024 x 2048
 * on 2 threads); such a C is worked on in a copy whose rows are padded.
 * The copy changes where the sums are kept, not one operation on them. */
static int staged(int K, int ldc) {
    return K > KC && ldc % 64 == 0;
}

/* Words of packed op(B) (K x N) in a qkv_bf16_packed: k block q starts at
 * q * n_jr * NR * (KC / 2), sliver J (columns J NR ..) of it J * NR * np
 * words further (np: the block's pairs). All of op(A) packed at once is
 * laid out the same way, in row slivers of MR. */
static size_t packed_words(int K, int N) {
    size_t n_jr = (size_t)(N + NR - 1) / NR, n_q = (size_t)(K + KC - 1) / KC;
    return n_q * n_jr * NR * (KC / 2);
}
static size_t packed_a_words(int M, int K, int mr) {
    size_t n_ir = (size_t)(M + mr - 1) / mr, n_q = (size_t)(K + KC - 1) / KC;
    return n_q * n_ir * mr * (KC / 2);
}

/* Slivers s0..s1 (w = MR rows of op(A) or NR columns of op(B), across as
 * in pack()) of k block [pc, pc + kc): in whole (the operand packed at once,
 * n_all slivers a block), or packed here into own. */
static inline __attribute__((always_inline)) const uint32_t *
slivers(const uint32_t *whole, int n_all, int across, int trans, int a_rows,
        const float *X, size_t ld, int n, int s0, int s1, int w, int pc, int kc,
        uint32_t *own) {
    int np = (kc + 1) / 2;
    if (whole)
        return whole + (size_t)(pc / KC) * n_all * w * (KC / 2) +
               (size_t)s0 * w * np;
    pack_slivers(a_rows, X, ld, trans, across, n, s0, s1, pc, kc, w, own);
    return own;
}

/* One chunk of C: row slivers [r0, r1) (mrk rows each, the kernel's) x
 * column slivers [c0, c1) (NR columns each), computed k block by k block:
 * row blocks (MC rows; one sliver on the AMX kernels) outer, so an A block
 * is reused across the B slivers. The operands come packed whole (pre_a:
 * all of op(A), pre_b: all of op(B), either may be NULL), or the chunk
 * packs its own slivers of them into own (the thread's slice of the
 * scratch; stage holds a staged C). No chunk reads what another writes,
 * and the order of every element's operations is the same whichever
 * thread computes it. */
static inline __attribute__((always_inline)) void
chunk_rows(kernel_fn *kern, const int mrk, int ta, int a_rows, int tb, int M,
           int N, int K, const float *A, int lda, const float *B, int ldb,
           const uint32_t *pre_a, const uint32_t *pre_b, int how, float *C0,
           int ldc0, int r0, int r1, int c0, int c1, uint32_t *own,
           float *stage) {
    if (r0 >= r1 || c0 >= c1) return;
    int i_lo = r0 * mrk, i_hi = r1 * mrk < M ? r1 * mrk : M;
    int j_lo = c0 * NR, j_hi = c1 * NR < N ? c1 * NR : N, w = j_hi - j_lo;
    int n_ir = (M + mrk - 1) / mrk, n_jr = (N + NR - 1) / NR;
    int blk = block_slivers(r1 - r0, mrk);
    size_t a_words = pre_a ? 0 : (size_t)blk * mrk * (KC / 2);
    uint32_t *own_b = own + a_words;
    /* C, or a padded copy of this chunk of it (staged()) */
    float *C = C0 + (size_t)i_lo * ldc0 + j_lo;
    int ldc = ldc0;
    if (staged(K, ldc0)) {
        ldc = (int)lines((size_t)w) + 16;
        C = stage;
        for (int i = i_lo; i < i_hi && how & ADD; i++)
            memcpy(C + (size_t)(i - i_lo) * ldc, C0 + (size_t)i * ldc0 + j_lo,
                   (size_t)w * sizeof *C);
    }
    for (int pc = 0; pc < K; pc += KC) {
        int kc = K - pc < KC ? K - pc : KC, np = (kc + 1) / 2;
        int block = (pc > 0 || how & ADD ? ADD : 0) | /* RELU: last block */
                    (how & RELU && pc + kc == K ? RELU : 0);
        /* column slivers c0.. of this k block, then row slivers a row
         * block at a time (packed A stays in L2, or L1 for AMX's one
         * sliver, while the block's tiles read it) */
        const uint32_t *pb = slivers(pre_b, n_jr, 1, tb, 0, B, (size_t)ldb, N,
                                     c0, c1, NR, pc, kc, own_b);
        for (int ib = r0; ib < r1; ib += blk) {
            int ie = ib + blk < r1 ? ib + blk : r1;
            const uint32_t *pa =
                slivers(pre_a, n_ir, 0, ta, a_rows, A, (size_t)lda, M, ib, ie,
                        mrk, pc, kc, own);
            for (int jr = c0; jr < c1; jr++) {
                int j0 = jr * NR, nr = N - j0 < NR ? N - j0 : NR;
                for (int ir = ib; ir < ie; ir++) {
                    int i0 = ir * mrk, mr = M - i0 < mrk ? M - i0 : mrk;
                    tile(kern, mrk, np, pa + (size_t)(ir - ib) * mrk * np,
                         a_rows, pb + (size_t)(jr - c0) * NR * np,
                         C + (size_t)(i0 - i_lo) * ldc + (j0 - j_lo),
                         (size_t)ldc, mr, nr, block);
                }
            }
        }
    }
    if (C != C0 + (size_t)i_lo * ldc0 + j_lo)
        for (int i = i_lo; i < i_hi; i++)
            memcpy(C0 + (size_t)i * ldc0 + j_lo, C + (size_t)(i - i_lo) * ldc,
                   (size_t)w * sizeof *C);
}

/* chunk_rows with the kernel's rows a constant (the packing loops of a
 * sliver of MR rows are specialised for it: 15% of a weight gradient's
 * product when they were not). */
static void chunk(kernel_fn *kern, int mrk, int ta, int a_rows, int tb, int M,
                  int N, int K, const float *A, int lda, const float *B,
                  int ldb, const uint32_t *pre_a, const uint32_t *pre_b,
                  int how, float *C0, int ldc0, int r0, int r1, int c0, int c1,
                  uint32_t *own, float *stage) {
    if (mrk == MR)
        chunk_rows(kern, MR, ta, a_rows, tb, M, N, K, A, lda, B, ldb, pre_a,
                   pre_b, how, C0, ldc0, r0, r1, c0, c1, own, stage);
    else
        chunk_rows(kern, AMX_MR, ta, a_rows, tb, M, N, K, A, lda, B, ldb, pre_a,
                   pre_b, how, C0, ldc0, r0, r1, c0, c1, own, stage);
}

/* op(A) and op(B) from k on: their k block starting there */
static const float *a_at(int ta, const float *A, int lda, int k) {
    return ta ? A + (size_t)k * lda : A + k;
}
static const float *b_at(int tb, const float *B, int ldb, int k) {
    return tb ? B + k : B + (size_t)k * ldb;
}

/* gemm_ksplit's next k block for thread 0 (front: from the front, below
 * cap) or another (from the back, not below floor); -1 when none is left
 * to it. fb: the blocks not yet taken, front << 32 | back. */
static int take_block(_Atomic uint64_t *fb, int front, uint32_t cap,
                      uint32_t floor) {
    uint64_t v = atomic_load(fb), to;
    uint32_t f, e;
    do {
        f = (uint32_t)(v >> 32), e = (uint32_t)v;
        if (f >= e || (front ? f >= cap : e - 1 < floor)) return -1;
        to = front ? (uint64_t)(f + 1) << 32 | e : (uint64_t)f << 32 | (e - 1);
    } while (!atomic_compare_exchange_weak(fb, &v, to));
    return front ? (int)f : (int)e - 1;
}

/* The product on nt threads cut along K, for a C that is small beside K
 * (a weight gradient, X^T dY: K is the batch's tokens). Cut along C's
 * rows or columns instead, every thread reads the whole of both operands,
 * half of it last written by the other core (the forward and the backward
 * before it split the tokens between the threads): on AMD EPYC (Zen 5),
 * operands written that way, 2 threads ran base's weight gradients only
 * 1.56-1.74x as fast as 1 (fp32's, whose sgemm cuts K, 1.83-1.99x), and
 * the layer norm backward after them found its own rows evicted. Cut along
 * K, base's weight gradients (K = 2048) took 0.79-0.97 of the time for C
 * 256-1024 x 256 and 0.98-1.09 for 256 x 1024, its bf16 training step
 * 0.95-0.99 and small's 0.90 (alternating in one process, several sets:
 * the host's spells move these). A C of K^2 / 8 elements or more stays cut
 * the other way: 1024 x 1024 x 2048 took 1.06 of the time cut along K (the
 * block sums' buffers are C's size each). One block a thread is enough:
 * tiny's (512 tokens) bf16 step took 0.83-0.84 of the time with its weight
 * gradients cut so.
 *
 * The k blocks are taken as threads come free, thread 0 from the front
 * (block 0 first), the others from the back, so a slower core takes fewer:
 * a vCPU of the host can run at 0.78-0.94 of the other's speed for a
 * while (measured per thread in the products of base's step). Against a
 * fixed half each, base's bf16 step on 2 threads took 0.97 of the time
 * with a process taking 20% of one core, 0.99-1.00 without (tiny, small,
 * base; alternating in one process). The summation order stays the one
 * of bf16.h, so the bits are those of one thread whoever takes which:
 * thread 0 sums its blocks 0 .. j - 1 in order into a padded copy of C
 * (the first stored, or added to C's values; rows a multiple of 256 bytes
 * apart evict each other, and a 256 x 1024 C took 1.15x the time
 * unpadded), every other block's sum is stored by its thread in a padded
 * buffer of its own, and after a barrier each thread adds them to its
 * share of C's rows in block order, c = c + s, the ReLU (if any) with the
 * last. */
int qkv_bf16_ksplit_first;

static void gemm_ksplit(kernel_fn *kern, int mrk, int ta, int a_rows, int tb,
                        int M, int N, int K, const float *A, int lda,
                        const float *B, int ldb, int how, float *C, int ldc,
                        int nt) {
    int n_kb = (K + KC - 1) / KC, n_ir = (M + mrk - 1) / mrk,
        n_jr = (N + NR - 1) / NR;
    size_t ldp = lines((size_t)N) + 16, sum = (size_t)M * ldp;
    int blk = block_slivers(n_ir, mrk);
    size_t own_words =
        lines((size_t)blk * mrk * (KC / 2) + (size_t)n_jr * NR * (KC / 2));
    /* block b's sum at sums + b sum; block 0's place is thread 0's */
    float *sums = work(((size_t)n_kb * sum + (size_t)nt * own_words) * 4);
    uint32_t *slices = (uint32_t *)(sums + (size_t)n_kb * sum);
    /* blocks not yet taken, front << 32 | back (block 0: thread 0's); with
     * qkv_bf16_ksplit_first, thread 0 takes the blocks before it, the
     * others the rest */
    uint32_t cap0 = (uint32_t)n_kb, floor1 = 1;
    if (qkv_bf16_ksplit_first > 0)
        cap0 = floor1 =
            (uint32_t)(qkv_bf16_ksplit_first < n_kb ? qkv_bf16_ksplit_first
                                                    : n_kb);
    _Atomic uint64_t fb;
    atomic_init(&fb, (uint64_t)1 << 32 | (uint64_t)n_kb);
    QKV_OMP(omp parallel num_threads(nt)) {
        int me = 0;
        uint32_t cap = cap0;
#ifdef _OPENMP
        me = omp_get_thread_num();
        if (omp_get_num_threads() < 2) cap = (uint32_t)n_kb; /* all its */
#endif
        uint32_t *own = slices + (size_t)me * own_words;
        float *acc = sums; /* thread 0's running sum */
        if (me == 0 && how & ADD)
            for (int i = 0; i < M; i++)
                memcpy(acc + (size_t)i * ldp, C + (size_t)i * ldc,
                       (size_t)N * sizeof *C);
        for (int b = me == 0 ? 0 : -1;;) {
            if (b >= 0) {
                int pc = b * KC, kc = K - pc < KC ? K - pc : KC;
                chunk(kern, mrk, ta, a_rows, tb, M, N, kc, a_at(ta, A, lda, pc),
                      lda, b_at(tb, B, ldb, pc), ldb, NULL, NULL,
                      me == 0 && (b > 0 || how & ADD) ? ADD : 0,
                      me == 0 ? acc : sums + (size_t)b * sum, (int)ldp, 0, n_ir,
                      0, n_jr, own, NULL);
            }
            if ((b = take_block(&fb, me == 0, cap, floor1)) < 0) break;
        }
        QKV_OMP(omp barrier)
        /* thread 0's blocks: 0 .. j - 1 (only it moves the front) */
        int j = (int)(atomic_load(&fb) >> 32);
        QKV_OMP(omp for schedule(static))
        for (int t = 0; t < nt; t++)
            for (int i = (int)((long)M * t / nt);
                 i < (int)((long)M * (t + 1) / nt); i++) {
                float *c = C + (size_t)i * ldc;
                const float *a = acc + (size_t)i * ldp;
                if (j == n_kb) /* thread 0 took them all */
                    for (int q = 0; q < N; q++)
                        c[q] = how & RELU && !(a[q] > 0.0f) ? 0.0f : a[q];
                for (int b = j; b < n_kb; b++) {
                    const float *x = b == j ? a : c,
                                *s = sums + (size_t)b * sum + (size_t)i * ldp;
                    int relu = how & RELU && b == n_kb - 1;
                    for (int q = 0; q < N; q++) {
                        float y = x[q] + s[q];
                        c[q] = relu && !(y > 0.0f) ? 0.0f : y;
                    }
                }
            }
    }
}

/* C (+)= bf16(op(A)) bf16(op(B)); op(B)'s slivers are packed here, or taken
 * from pre (a qkv_bf16_packed's words for this B).
 *
 * Threads: a C small beside K (a weight gradient) is cut along K (gemm_ksplit);
 * any other C is cut along its longer side (rows when op(B) comes packed) into
 * one chunk per thread. The operand along the shorter side, which every chunk
 * reads, is packed whole first, shared; each chunk packs its own slivers of the
 * other. The only barrier is the one after that shared packing (the previous
 * version, three barriers per k block, ran a weight gradient's product, K =
 * 2048, only 1.1-1.3x faster on 2 threads than on 1). One chunk per thread, not
 * several taken as threads become free: each chunk streams all of the shared
 * operand again, and on AMD Zen 5 (2 threads) four chunks per thread made the
 * base config's products 14% slower (a linear layer's three products, 2048
 * tokens: 12.9 against 11.3 ms) while gaining 1.6% with the other core busy
 * (base step 627 against 637 ms), within the noise. Nor rows taken as threads
 * come free, a row block (MC) at a time, each thread from the front of its own
 * half, then from the back of the other's (work stealing; the bits do not
 * change): with a process taking 20% of one core base's bf16 step took
 * 0.95-0.98 of the time, without it small's took 1.01-1.02 (a stolen block's
 * rows were written, and are read next, by the other core). */
static void gemm(int ta, int tb, int M, int N, int K, const float *A, int lda,
                 const float *B, int ldb, const uint32_t *pre, int how,
                 float *C, int ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        for (int i = 0; i < M && !(how & ADD); i++)
            memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof *C);
        return;
    }
    qkv_bf16_kernel k = qkv_bf16_get_kernel();
    kernel_fn *kern = kernels[k];
    int a_rows = !ta || amx_kernel(k), mrk = amx_kernel(k) ? AMX_MR : MR;
    int n_ir = (M + mrk - 1) / mrk, n_jr = (N + NR - 1) / NR;
    int nt = 1;
#ifdef _OPENMP
    double flops = 2.0 * M * N * K;
    nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt > flops / PAR_MIN_FLOPS) nt = (int)(flops / PAR_MIN_FLOPS);
    if (nt < 1) nt = 1;
#endif
    if (nt > 1 && !pre && K >= nt * KC && (double)M * N <= (double)K * K / 8) {
        gemm_ksplit(kern, mrk, ta, a_rows, tb, M, N, K, A, lda, B, ldb, how, C,
                    ldc, nt);
        return;
    }
    int by_rows = pre || n_ir >= n_jr, n_s = by_rows ? n_ir : n_jr;
    int n_ch = nt < n_s ? nt : n_s;
    /* scratch: the shorter side's operand packed whole (unless op(B) came
     * packed), then a slice per thread for the largest chunk (chunks are
     * the threads' shares, threads.h) */
    qkv_cut cut;
    qkv_share_cut(&cut, n_s, n_ch, QKV_SHARE_PRODUCT_BF16);
    int smax = 0;
    for (int ch = 0, s0, s1; ch < n_ch; ch++) {
        qkv_share_range(&cut, ch, &s0, &s1);
        if (s1 - s0 > smax) smax = s1 - s0;
    }
    size_t whole_words =
        pre ? 0
            : lines(by_rows ? packed_words(K, N) : packed_a_words(M, K, mrk));
    int blk = block_slivers(smax, mrk);
    size_t own_words =
        lines((size_t)(by_rows ? blk * mrk : smax * NR) * (KC / 2));
    size_t stage_floats = 0;
    if (staged(K, ldc)) {
        size_t rows = by_rows ? (size_t)smax * mrk : (size_t)M;
        size_t w = by_rows ? (size_t)N : (size_t)smax * NR;
        stage_floats = lines(rows * (lines(w) + 16));
    }
    size_t slice = own_words + stage_floats; /* 4-byte units */
    uint32_t *scratch = work((whole_words + (size_t)nt * slice) * 4);
    uint32_t *whole = pre ? NULL : scratch;
    const uint32_t *pre_a = by_rows ? NULL : whole,
                   *pre_b = by_rows ? (pre ? pre : whole) : NULL;
    QKV_OMP(omp parallel num_threads(nt) if (nt > 1)) {
        for (int pc = 0; pc < K && whole; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC, np = (kc + 1) / 2;
            int n_w = by_rows ? n_jr : n_ir; /* the whole one's slivers */
            uint32_t *q = whole + (size_t)(pc / KC) * n_w *
                                      (by_rows ? NR : mrk) * (KC / 2);
            /* each thread packs a run of consecutive slivers */
            QKV_OMP(omp for schedule(static) nowait)
            for (int t = 0; t < nt; t++) {
                int s0 = n_w * t / nt, s1 = n_w * (t + 1) / nt;
                if (by_rows)
                    pack_slivers(0, B, (size_t)ldb, tb, 1, N, s0, s1, pc, kc,
                                 NR, q + (size_t)s0 * NR * np);
                else if (mrk == MR) /* a constant: the loops specialise */
                    pack_slivers(a_rows, A, (size_t)lda, ta, 0, M, s0, s1, pc,
                                 kc, MR, q + (size_t)s0 * MR * np);
                else
                    pack_slivers(a_rows, A, (size_t)lda, ta, 0, M, s0, s1, pc,
                                 kc, AMX_MR, q + (size_t)s0 * AMX_MR * np);
            }
        }
        if (whole) {
            QKV_OMP(omp barrier)
        }
#ifdef _OPENMP
        uint32_t *own = scratch + whole_words + omp_get_thread_num() * slice;
#else
        uint32_t *own = scratch + whole_words;
#endif
        float *stage = (float *)(own + own_words);
        QKV_OMP(omp for schedule(static, 1))
        for (int ch = 0; ch < n_ch; ch++) {
            int s0, s1;
            qkv_share_range(&cut, ch, &s0, &s1);
            if (by_rows)
                chunk(kern, mrk, ta, a_rows, tb, M, N, K, A, lda, B, ldb, NULL,
                      pre_b, how, C, ldc, s0, s1, 0, n_jr, own, stage);
            else
                chunk(kern, mrk, ta, a_rows, tb, M, N, K, A, lda, B, ldb, pre_a,
                      NULL, how, C, ldc, 0, n_ir, s0, s1, own, stage);
            qkv_share_done(&cut, ch);
        }
    }
    qkv_share_learn(&cut);
}

void qkv_gemm_bf16(int ta, int tb, int M, int N, int K, const float *A, int lda,
                   const float *B, int ldb, int accumulate, float *C, int ldc) {
    ta = ta != 0, tb = tb != 0;
    check_args(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    gemm(ta, tb, M, N, K, A, lda, B, ldb, NULL, accumulate ? ADD : 0, C, ldc);
}

void qkv_gemm_bf16_relu(int ta, int tb, int M, int N, int K, const float *A,
                        int lda, const float *B, int ldb, float *C, int ldc) {
    ta = ta != 0, tb = tb != 0;
    check_args(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    gemm(ta, tb, M, N, K, A, lda, B, ldb, NULL, RELU, C, ldc);
}

/* ------------------------------------------------------ packed operands */

void qkv_bf16_pack(qkv_bf16_packed *p, int tb, int K, int N, const float *B,
                   int ldb) {
    tb = tb != 0;
    QKV_CHECK(K >= 0 && N >= 0 && B && ldb >= (tb ? K : N) && ldb >= 1,
              "qkv_bf16_pack: bad arguments (K %d, N %d, ldb %d)", K, N, ldb);
    size_t words = packed_words(K, N);
    if (words > p->cap) {
        free(p->words);
        p->words = qkv_malloc_aligned(words * sizeof *p->words, "bf16 weights");
        p->cap = words;
    }
    p->tb = tb, p->K = K, p->N = N, p->ldb = ldb, p->src = B;
    int n_jr = (N + NR - 1) / NR, nt = 1;
#ifdef _OPENMP
    /* a run of slivers per thread, in one parallel region. A weight is
     * packed once per step, from memory the optimiser last wrote; each
     * k block's slivers were shared out only past 8 slivers (N > 256), so
     * most of base's weights were packed by one thread. Per weight, 2
     * threads, not in cache, on AMD EPYC (Zen 5): W^T 1024 x 256 91 ->
     * 46 us, 256 x 256 14 -> 8 us; W 1024 x 256 (k along the 1024) 65 ->
     * 38 us, 256 x 1024 52 -> 34 us. */
    nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt > (double)K * N / PACK_MIN) nt = (int)((double)K * N / PACK_MIN);
    if (nt > n_jr) nt = n_jr;
    if (nt < 1) nt = 1;
#endif
    QKV_OMP(omp parallel num_threads(nt) if (nt > 1))
    for (int pc = 0; pc < K; pc += KC) {
        int kc = K - pc < KC ? K - pc : KC, np = (kc + 1) / 2;
        uint32_t *q = p->words + (size_t)(pc / KC) * n_jr * NR * (KC / 2);
        QKV_OMP(omp for schedule(static) nowait)
        for (int t = 0; t < nt; t++) {
            int s0 = n_jr * t / nt, s1 = n_jr * (t + 1) / nt;
            pack_slivers(0, B, (size_t)ldb, tb, 1, N, s0, s1, pc, kc, NR,
                         q + (size_t)s0 * NR * np);
        }
    }
}

void qkv_gemm_bf16_packed(int ta, int M, const float *A, int lda,
                          const qkv_bf16_packed *B, int accumulate, float *C,
                          int ldc) {
    ta = ta != 0;
    check_args(ta, B->tb, M, B->N, B->K, A, lda, B->src, B->ldb, C, ldc);
    gemm(ta, B->tb, M, B->N, B->K, A, lda, B->src, B->ldb, B->words,
         accumulate ? ADD : 0, C, ldc);
}

void qkv_gemm_bf16_packed_relu(int ta, int M, const float *A, int lda,
                               const qkv_bf16_packed *B, float *C, int ldc) {
    ta = ta != 0;
    check_args(ta, B->tb, M, B->N, B->K, A, lda, B->src, B->ldb, C, ldc);
    gemm(ta, B->tb, M, B->N, B->K, A, lda, B->src, B->ldb, B->words, RELU, C,
         ldc);
}

void qkv_bf16_packed_free(qkv_bf16_packed *p) {
    free(p->words);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------- pair words for other kernels */

void qkv_bf16_row_pairs(int rows, int n, const float *X, size_t ld,
                        uint32_t *out, size_t ldo) {
    int np = (n + 1) / 2;
#if QKV_X86
    int fast = avx512_packing();
#endif
    for (int i = 0; i < rows; i++) {
        const float *row = X + (size_t)i * ld;
        uint32_t *o = out + (size_t)i * ldo;
#if QKV_X86
        if (fast)
            pack_row_avx512(row, n / 2, o);
        else
#endif
            for (int p = 0; p < n / 2; p++)
                o[p] = rne_high(row[2 * p]) >> 16 |
                       (rne_high(row[2 * p + 1]) & 0xffff0000u);
        if (n & 1) o[np - 1] = rne(row[n - 1]);
    }
}

#if QKV_X86
/* qkv_bf16_col_pairs with VCVTNE2PS2BF16, 16 columns at a time */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void
col_pairs_avx512(int rows, int n, const float *X, size_t ld, uint32_t *out,
                 size_t ldo) {
    for (int p = 0; p < (rows + 1) / 2; p++) {
        int odd = 2 * p + 1 == rows; /* a lone last row */
        const float *r0 = X + (size_t)(2 * p) * ld, *r1 = odd ? r0 : r0 + ld;
        for (int j = 0; j < up16(n); j += 16) {
            __mmask16 m = n - j >= 16 ? 0xffff
                          : n > j     ? (__mmask16)((1u << (n - j)) - 1)
                                      : 0;
            _mm512_storeu_si512(
                out + (size_t)p * ldo + j,
                pair16_avx512(_mm512_maskz_loadu_ps(m, r0 + j),
                              _mm512_maskz_loadu_ps(odd ? 0 : m, r1 + j)));
        }
    }
}
#endif

void qkv_bf16_col_pairs(int rows, int n, const float *X, size_t ld,
                        uint32_t *out, size_t ldo) {
    int w = up16(n);
#if QKV_X86
    if (avx512_packing()) {
        col_pairs_avx512(rows, n, X, ld, out, ldo);
        return;
    }
#endif
    for (int p = 0; p < (rows + 1) / 2; p++) {
        const float *r0 = X + (size_t)(2 * p) * ld, *r1 = r0 + ld;
        uint32_t *o = out + (size_t)p * ldo;
        if (2 * p + 1 < rows)
            for (int j = 0; j < n; j++)
                o[j] = rne_high(r0[j]) >> 16 | (rne_high(r1[j]) & 0xffff0000u);
        else
            for (int j = 0; j < n; j++) o[j] = rne(r0[j]);
        for (int j = n; j < w; j++) o[j] = 0;
    }
}

void qkv_bf16_row_pairs_t(int rows, int n, const float *X, size_t ld,
                          uint32_t *out, size_t ldo) {
    int np = (n + 1) / 2, w = up16(rows);
#if QKV_TRANSPOSE16
    if (avx512_packing()) {
        row_pairs_t_avx512(rows, n, X, ld, out, ldo);
        return;
    }
#endif
    for (int p = 0; p < np; p++) {
        uint32_t *o = out + (size_t)p * ldo;
        for (int i = 0; i < rows; i++) {
            const float *row = X + (size_t)i * ld;
            o[i] = 2 * p + 1 < n ? rne(row[2 * p]) | rne(row[2 * p + 1]) << 16
                                 : rne(row[2 * p]);
        }
        for (int i = rows; i < w; i++) o[i] = 0;
    }
}

/* ------------------------------------------- small products on AMX tiles */

static void amx_words(const int model, int rows, int w, int np,
                      const uint32_t *a, size_t lda, const uint32_t *b,
                      size_t ldb, float *c, size_t ldc) {
    int wv = up16(w);
    for (int i0 = 0; i0 < rows; i0 += AMX_MR)
        for (int j0 = 0; j0 < wv; j0 += 32)
            amx_piece(model, 0, np, a + (size_t)i0 * lda, lda, b + j0, ldb,
                      wv - j0 > 16, c + (size_t)i0 * ldc + j0, ldc, 0,
                      rows - i0 < AMX_MR ? rows - i0 : AMX_MR);
}

#if QKV_AMX
__attribute__((target("amx-tile,amx-bf16"))) static void
amx_words_cpu(int rows, int w, int np, const uint32_t *a, size_t lda,
              const uint32_t *b, size_t ldb, float *c, size_t ldc) {
    amx_words(0, rows, w, np, a, lda, b, ldb, c, ldc);
}
#endif

void qkv_bf16_amx_words(int rows, int w, int np, const uint32_t *a, size_t lda,
                        const uint32_t *b, size_t ldb, float *c, size_t ldc) {
    qkv_bf16_kernel k = qkv_bf16_get_kernel();
    QKV_CHECK(amx_kernel(k), "qkv_bf16_amx_words: the bf16 kernel is %s",
              qkv_bf16_kernel_name(k));
    QKV_CHECK(rows >= 1 && w >= 1 && np >= 1 && np <= KC / 2 &&
                  lda >= (size_t)np && ldb >= (size_t)up16(w) &&
                  ldc >= (size_t)up16(w),
              "qkv_bf16_amx_words: %d x %d from %d pairs, strides %zu, %zu, "
              "%zu",
              rows, w, np, lda, ldb, ldc);
#if QKV_AMX
    if (k == QKV_BF16_AMX) {
        amx_words_cpu(rows, w, np, a, lda, b, ldb, c, ldc);
        return;
    }
#endif
    amx_words(1, rows, w, np, a, lda, b, ldb, c, ldc);
}
