/* vec.h - internal: row reductions and exp that the compiler vectorises.
 *
 * C11 forbids reassociating float arithmetic, so a plain `s += x[j]` loop
 * runs one dependent add at a time, and glibc's expf is a scalar call. These
 * helpers keep 16 partial sums (lane j % 16, one vector register) and add
 * them up in a fixed tree at the end: an order that depends on n alone,
 * so results stay bitwise identical for any thread count. Plain C; at -O3
 * GCC turns the lane loops into vector instructions for any target.
 */
#ifndef QKV_VEC_H
#define QKV_VEC_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h> /* vfma's AVX2 form needs it too */
#endif

#define QKV_LANES 16

/* ---- 16-lane vectors (GCC/clang vector extensions) ----
 * One zmm with AVX-512; the compiler splits them into two ymm or four xmm
 * otherwise. Internal to core/: short names. */
#define VW QKV_LANES
typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(float))));
/* Without AVX-512, GCC notes that passing vf by value has no fixed ABI;
 * these helpers are static and inlined, so no call crosses an ABI boundary.
 */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__AVX512F__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
/* Always inlined: an out-of-line copy (GCC's partial inlining makes some)
 * would pass vf by value across a call after all. */
#define VINLINE static inline __attribute__((always_inline))

VINLINE vf vload(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

VINLINE vf vsplat(float x) {
#if defined(__AVX512F__)
    return (vf)_mm512_set1_ps(x);
#else
    vf v;
    for (int l = 0; l < VW; l++) v[l] = x;
    return v;
#endif
}

/* m ? a : b lane by lane (m: -1 or 0, as vector comparisons give) */
VINLINE vf vselect(vi m, vf a, vf b) {
    return (vf)(((vi)a & m) | ((vi)b & ~m));
}

/* a > b ? a : b lane by lane, NaN and zeros of either sign included: with
 * AVX-512 one vmaxps, which is defined as exactly that (the select form
 * compiles to a compare and two masked xors). */
VINLINE vf vmax(vf a, vf b) {
#if defined(__AVX512F__)
    return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#else
    return vselect(a > b, a, b);
#endif
}

/* a < b ? a : b lane by lane, as vmax (vminps) */
VINLINE vf vmin(vf a, vf b) {
#if defined(__AVX512F__)
    return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#else
    return vselect(a < b, a, b);
#endif
}

/* Lanes [0, w) of p, zeros after; reads nothing past p + w. */
VINLINE vf vload_part(const float *p, int w) {
    if (w >= VW) return vload(p);
#if defined(__AVX512F__)
    return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << w) - 1u), p);
#else
    float t[VW] = {0};
    for (int j = 0; j < w; j++) t[j] = p[j];
    return vload(t);
#endif
}

/* -1 in lanes [0, w), 0 after */
VINLINE vi vfirst(int w) {
    const vi iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return iota < w;
}

/* Lane l + w moved to lane l, for w = 8, 4, 2, 1 (the other lanes: any).
 * __builtin_shufflevector: GCC >= 12 and clang. */
#define VDOWN(p, a, b, c, d, e, f, g, h)                                       \
    __builtin_shufflevector(p, p, a, b, c, d, e, f, g, h, 0, 0, 0, 0, 0, 0, 0, \
                            0)
VINLINE vf vdown(vf p, int w) {
    switch (w) {
    case 8:
        return VDOWN(p, 8, 9, 10, 11, 12, 13, 14, 15);
    case 4:
        return VDOWN(p, 4, 5, 6, 7, 0, 0, 0, 0);
    case 2:
        return VDOWN(p, 2, 3, 0, 0, 0, 0, 0, 0);
    default:
        return VDOWN(p, 1, 0, 0, 0, 0, 0, 0, 0);
    }
}
#undef VDOWN

/* The 16 partial sums added pairwise in a fixed tree (lane l + w into lane
 * l, w = 8, 4, 2, 1): four vector adds instead of 15 dependent ones, in an
 * order that depends on nothing but the lanes. */
VINLINE float vtotal(vf p) {
    for (int w = VW / 2; w >= 1; w /= 2) p = p + vdown(p, w);
    return p[0];
}

/* max over the lanes (exact in any order) */
VINLINE float vmaxall(vf p) {
    for (int w = VW / 2; w >= 1; w /= 2) {
        p = vmax(vdown(p, w), p);
    }
    return p[0];
}

/* ---- row reductions ----
 * Lane l sums elements j = l (mod 16) in order from 0, then vtotal adds the
 * lanes: the order depends on n alone. */

/* sum_j x[j] */
static inline float qkv_vsum(const float *x, int n) {
    vf p = vsplat(0.0f);
    int j = 0;
    for (; j + VW <= n; j += VW) p = p + vload(x + j);
    if (j < n) p = p + vload_part(x + j, n - j);
    return vtotal(p);
}

/* sum_j x[j] y[j] */
static inline float qkv_vdot(const float *x, const float *y, int n) {
    vf p = vsplat(0.0f);
    int j = 0;
    for (; j + VW <= n; j += VW) p = p + vload(x + j) * vload(y + j);
    if (j < n) p = p + vload_part(x + j, n - j) * vload_part(y + j, n - j);
    return vtotal(p);
}

/* sum_j (x[j] - m)^2 */
static inline float qkv_vsqdev(const float *x, float m, int n) {
    vf p = vsplat(0.0f), mv = vsplat(m);
    int j = 0;
    for (; j + VW <= n; j += VW) {
        vf d = vload(x + j) - mv;
        p = p + d * d;
    }
    if (j < n) {
        vf d = vselect(vfirst(n - j), vload_part(x + j, n - j) - mv, p - p);
        p = p + d * d;
    }
    return vtotal(p);
}

/* sum_j x[j] y[j] (z[j] - m) */
static inline float qkv_vdot3(const float *x, const float *y, const float *z,
                              float m, int n) {
    vf p = vsplat(0.0f), mv = vsplat(m);
    int j = 0;
    for (; j + VW <= n; j += VW)
        p = p + vload(x + j) * vload(y + j) * (vload(z + j) - mv);
    if (j < n) {
        int w = n - j;
        vf t = vload_part(x + j, w) * vload_part(y + j, w) *
               (vload_part(z + j, w) - mv);
        p = p + vselect(vfirst(w), t, vsplat(0.0f));
    }
    return vtotal(p);
}

/* max_j x[j] (-inf for n = 0); max is exact in any order. */
static inline float qkv_vmax(const float *x, int n) {
    vf p = vsplat(-INFINITY);
    int j = 0;
    for (; j + VW <= n; j += VW) {
        p = vmax(vload(x + j), p);
    }
    if (j < n) {
        vf v =
            vselect(vfirst(n - j), vload_part(x + j, n - j), vsplat(-INFINITY));
        p = vmax(v, p);
    }
    return vmaxall(p);
}

/* a * b + c, in one rounding where the machine has FMA (C11 does not
 * contract a * b + c by itself), else two. Scalar and 16-lane forms round
 * alike, so code written with either gives the same bits in one build. */
#if defined(__AVX512F__) || defined(__FMA__)
#define QKV_HAVE_FMA 1
#endif
static inline float qkv_fmaf(float a, float b, float c) {
#ifdef QKV_HAVE_FMA
    return __builtin_fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

VINLINE vf vfma(vf a, vf b, vf c) {
#if defined(__AVX512F__)
    return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 lo = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)&a),
                                _mm256_loadu_ps((const float *)&b),
                                _mm256_loadu_ps((const float *)&c));
    __m256 hi = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)&a + 8),
                                _mm256_loadu_ps((const float *)&b + 8),
                                _mm256_loadu_ps((const float *)&c + 8));
    vf r;
    memcpy(&r, &lo, sizeof lo);
    memcpy((float *)&r + 8, &hi, sizeof hi);
    return r;
#elif defined(__FMA__)
    vf r;
    for (int l = 0; l < VW; l++) r[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return r;
#else
    return a * b + c;
#endif
}

/* e^x, inlinable. x = n ln2 + r with |r| <= ln2 / 2 (n = x log2(e) rounded
 * to an integer by the 1.5 * 2^23 trick; ln2 split in two, Cody & Waite, so
 * r is nearly exact), e^r by its Taylor series to r^7 (truncation < 6e-9
 * relative) in Horner form with FMAs, times 2^n (exact unless the result
 * is subnormal, then rounded once). Within 2 ulp of expf on [-87, 88]
 * (tested); 0 below -87.3, where expf is subnormal or 0 (a masked score,
 * -inf, gives exactly 0); +inf above 88.7; NaN stays NaN. */
#define QKV_EXP_LO    (-87.3f)
#define QKV_EXP_HI    88.7f
#define QKV_EXP_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define QKV_EXP_POLY(p, r, fma)                                                \
    do {                                                                       \
        p = fma(p, r, QKV_EXP_C(1.0f / 720.0f));                               \
        p = fma(p, r, QKV_EXP_C(1.0f / 120.0f));                               \
        p = fma(p, r, QKV_EXP_C(1.0f / 24.0f));                                \
        p = fma(p, r, QKV_EXP_C(1.0f / 6.0f));                                 \
        p = fma(p, r, QKV_EXP_C(0.5f));                                        \
        p = fma(p, r, QKV_EXP_C(1.0f));                                        \
        p = fma(p, r, QKV_EXP_C(1.0f));                                        \
    } while (0)

static inline float qkv_expf(float x) {
    float t = x < QKV_EXP_LO ? QKV_EXP_LO : x > QKV_EXP_HI ? QKV_EXP_HI : x;
    float n = qkv_fmaf(t, 1.44269504088896341f, QKV_EXP_MAGIC) - QKV_EXP_MAGIC;
    float r = qkv_fmaf(n, 2.12194440e-4f, qkv_fmaf(-n, 0.693359375f, t));
    float p = 1.0f / 5040.0f;
#define QKV_EXP_C(c) (c)
    QKV_EXP_POLY(p, r, qkv_fmaf);
#undef QKV_EXP_C
    /* 2^n: n in [-126, 128]; 2^128 is split as 2 * 2^127 */
    int32_t e = (int32_t)n;
    int32_t e1 = e > 127 ? 127 : e;
    uint32_t b1 = (uint32_t)(e1 + 127) << 23, b2 = (uint32_t)(e - e1 + 127)
                                                   << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    float y = p * s1 * s2;
    y = x < QKV_EXP_LO ? 0.0f : y;
    y = x > QKV_EXP_HI ? INFINITY : y;
    return x != x ? x : y;
}

/* qkv_expf on 16 lanes: the same operations in the same order, so the same
 * bits. With AVX-512, 2^n is one scalef, which rounds p 2^n once as the two
 * multiplies by powers of two do. */
VINLINE vf vexpf(vf x) {
    const vf lo = vsplat(QKV_EXP_LO), hi = vsplat(QKV_EXP_HI);
    /* x < lo ? lo : x > hi ? hi : x (when x > hi, the inner is hi > lo) */
    vf t = vmax(lo, vmin(hi, x));
    const vf magic = vsplat(QKV_EXP_MAGIC);
    vf n = vfma(t, vsplat(1.44269504088896341f), magic) - magic;
    vf r = vfma(n, vsplat(2.12194440e-4f), vfma(-n, vsplat(0.693359375f), t));
    vf p = vsplat(1.0f / 5040.0f);
#define QKV_EXP_C(c) vsplat(c)
    QKV_EXP_POLY(p, r, vfma);
#undef QKV_EXP_C
#if defined(__AVX512F__)
    vf y = (vf)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
    vi e = __builtin_convertvector(n, vi), big = e > 127;
    vi e1 = (e & ~big) | (127 & big);
    vf s1 = (vf)((e1 + 127) << 23), s2 = (vf)((e - e1 + 127) << 23);
    vf y = p * s1 * s2;
#endif
    y = vselect(x < lo, vsplat(0.0f), y);
    y = vselect(x > hi, vsplat(INFINITY), y);
    return vselect(x != x, x, y);
}
#undef QKV_EXP_POLY

/* y[j] = e^(x[j] - m) for j < n; returns sum_j y[j] summed as qkv_vsum
 * does (y may be x). */
static inline float qkv_vexp_sum(float *y, const float *x, float m, int n) {
    vf p = vsplat(0.0f), mv = vsplat(m);
    int j = 0;
    for (; j + VW <= n; j += VW) {
        vf e = vexpf(vload(x + j) - mv);
        memcpy(y + j, &e, sizeof e);
        p = p + e;
    }
    if (j < n) {
        int w = n - j;
        vf e =
            vselect(vfirst(w), vexpf(vload_part(x + j, w) - mv), vsplat(0.0f));
        float t[VW];
        memcpy(t, &e, sizeof t);
        memcpy(y + j, t, (size_t)w * sizeof(float));
        p = p + e;
    }
    return vtotal(p);
}

#if defined(__AVX512F__)
/* In-register transpose of a 16 x 16 block, r[i][j] <- r[j][i], in three
 * rounds of shuffles (64 in all): 2x2 blocks of floats, 2x2 blocks of
 * float pairs, then the 128-bit lanes. */
static inline void qkv_transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4g + c], 128-bit lane l = rows 4g..4g+3 at column 4l + c */
    for (int g = 0; g < 16; g += 4) {
        __m512d t0 = _mm512_castps_pd(t[g]), t1 = _mm512_castps_pd(t[g + 1]);
        __m512d t2 = _mm512_castps_pd(t[g + 2]),
                t3 = _mm512_castps_pd(t[g + 3]);
        u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    /* column 4l + c = lane l of u[c], u[4 + c], u[8 + c], u[12 + c] */
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
        __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
        __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
        __m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
        r[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        r[8 + c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
}
#endif

#endif
