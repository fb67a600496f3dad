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
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define QKV_LANES 16

/* Adds the 16 partial sums pairwise in a fixed tree (lane l + w into lane
 * l, w = 8, 4, 2, 1): four vector adds instead of 15 dependent ones. */
static inline float qkv_lanes_total(float *p) {
    for (int w = QKV_LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) p[l] += p[l + w];
    return p[0];
}

/* sum_j x[j] */
static inline float qkv_vsum(const float *x, int n) {
    float p[QKV_LANES] = {0};
    int j = 0;
    for (; j + QKV_LANES <= n; j += QKV_LANES)
        for (int l = 0; l < QKV_LANES; l++) p[l] += x[j + l];
    for (int l = 0; j + l < n; l++) p[l] += x[j + l];
    return qkv_lanes_total(p);
}

/* sum_j x[j] y[j] */
static inline float qkv_vdot(const float *x, const float *y, int n) {
    float p[QKV_LANES] = {0};
    int j = 0;
    for (; j + QKV_LANES <= n; j += QKV_LANES)
        for (int l = 0; l < QKV_LANES; l++) p[l] += x[j + l] * y[j + l];
    for (int l = 0; j + l < n; l++) p[l] += x[j + l] * y[j + l];
    return qkv_lanes_total(p);
}

/* sum_j (x[j] - m)^2 */
static inline float qkv_vsqdev(const float *x, float m, int n) {
    float p[QKV_LANES] = {0};
    int j = 0;
    for (; j + QKV_LANES <= n; j += QKV_LANES)
        for (int l = 0; l < QKV_LANES; l++)
            p[l] += (x[j + l] - m) * (x[j + l] - m);
    for (int l = 0; j + l < n; l++) p[l] += (x[j + l] - m) * (x[j + l] - m);
    return qkv_lanes_total(p);
}

/* sum_j x[j] y[j] (z[j] - m) */
static inline float qkv_vdot3(const float *x, const float *y, const float *z,
                              float m, int n) {
    float p[QKV_LANES] = {0};
    int j = 0;
    for (; j + QKV_LANES <= n; j += QKV_LANES)
        for (int l = 0; l < QKV_LANES; l++)
            p[l] += x[j + l] * y[j + l] * (z[j + l] - m);
    for (int l = 0; j + l < n; l++)
        p[l] += x[j + l] * y[j + l] * (z[j + l] - m);
    return qkv_lanes_total(p);
}

/* max_j x[j] (-inf for n = 0); max is exact in any order. */
static inline float qkv_vmax(const float *x, int n) {
    float p[QKV_LANES];
    for (int l = 0; l < QKV_LANES; l++) p[l] = -INFINITY;
    int j = 0;
    for (; j + QKV_LANES <= n; j += QKV_LANES)
        for (int l = 0; l < QKV_LANES; l++)
            p[l] = x[j + l] > p[l] ? x[j + l] : p[l];
    for (int l = 0; j + l < n; l++) p[l] = x[j + l] > p[l] ? x[j + l] : p[l];
    float m = -INFINITY;
    for (int l = 0; l < QKV_LANES; l++) m = p[l] > m ? p[l] : m;
    return m;
}

/* e^x, inlinable so that loops over it vectorise. x = n ln2 + r with
 * |r| <= ln2 / 2 (ln2 split in two for an exact n ln2, Cody & Waite), e^r
 * by its Taylor series to r^7 (truncation < 6e-9 relative), times 2^n set
 * in the exponent bits. Within 2 ulp of expf on [-87, 88] (tested); 0 below
 * -87.3, where expf is subnormal or 0 (a masked score, -inf, gives exactly
 * 0); +inf above 88.7; NaN stays NaN. */
static inline float qkv_expf(float x) {
    float t = x < -87.3f ? -87.3f : x > 88.7f ? 88.7f : x;
    float n = rintf(t * 1.44269504088896341f);
    float r = (t - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n: n in [-126, 128]; 2^128 is split as 2 * 2^127 */
    int32_t e = (int32_t)n;
    int32_t e1 = e > 127 ? 127 : e;
    uint32_t b1 = (uint32_t)(e1 + 127) << 23, b2 = (uint32_t)(e - e1 + 127)
                                                   << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    float y = p * s1 * s2;
    y = x < -87.3f ? 0.0f : y;
    y = x > 88.7f ? INFINITY : y;
    return x != x ? x : y;
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
