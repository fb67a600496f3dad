/* vec.h - internal: row reductions and exp that the compiler vectorises.
 *
 * C11 forbids reassociating float arithmetic, so a plain `s += x[j]` loop
 * runs one dependent add at a time, and glibc's expf is a scalar call. These
 * helpers keep 16 partial sums (lane j % 16, one vector register) and add
 * them up in lane order at the end: a fixed order that depends on n alone,
 * so results stay bitwise identical for any thread count. Plain C; at -O3
 * GCC turns the lane loops into vector instructions for any target.
 */
#ifndef QKV_VEC_H
#define QKV_VEC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define QKV_LANES 16

/* Adds the 16 partial sums in lane order. */
static inline float qkv_lanes_total(const float *p) {
    float s = 0.0f;
    for (int l = 0; l < QKV_LANES; l++) s += p[l];
    return s;
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

#endif
