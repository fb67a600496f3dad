#include "pcg.h"

#include <math.h>
#include <string.h>

#include "common.h"

void qkv_pcg32_seed(qkv_pcg32 *rng, uint64_t initstate, uint64_t initseq) {
    rng->state = 0u;
    rng->inc = (initseq << 1u) | 1u;
    qkv_pcg32_next(rng);
    rng->state += initstate;
    qkv_pcg32_next(rng);
}

uint32_t qkv_pcg32_next(qkv_pcg32 *rng) {
    uint64_t old = rng->state;
    rng->state = old * 6364136223846793005ULL + rng->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31u));
}

uint32_t qkv_pcg32_bounded(qkv_pcg32 *rng, uint32_t bound) {
    QKV_CHECK(bound > 0, "pcg32_bounded: bound must be positive");
    /* 2^32 mod bound: values below it would make small results more likely. */
    uint32_t threshold = (uint32_t)(-bound) % bound;
    for (;;) {
        uint32_t r = qkv_pcg32_next(rng);
        if (r >= threshold) return r % bound;
    }
}

float qkv_pcg32_float(qkv_pcg32 *rng) {
    return (float)(qkv_pcg32_next(rng) >> 8) * 0x1p-24f;
}

float qkv_pcg32_normal(qkv_pcg32 *rng) {
    /* u1 in (0, 1] so log(u1) is finite; computed in double for accuracy. */
    double u1 = ((double)qkv_pcg32_next(rng) + 1.0) * 0x1p-32;
    double u2 = (double)qkv_pcg32_next(rng) * 0x1p-32;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void qkv_pcg32_shuffle(qkv_pcg32 *rng, void *base, size_t n, size_t size) {
    QKV_CHECK(n <= UINT32_MAX, "pcg32_shuffle: %zu elements is too many", n);
    unsigned char *p = base, tmp[64];
    for (size_t i = n; i > 1; i--) {
        size_t j = qkv_pcg32_bounded(rng, (uint32_t)i);
        if (j == i - 1) continue;
        unsigned char *a = p + (i - 1) * size, *b = p + j * size;
        for (size_t off = 0; off < size; off += sizeof tmp) {
            size_t len = size - off < sizeof tmp ? size - off : sizeof tmp;
            memcpy(tmp, a + off, len);
            memcpy(a + off, b + off, len);
            memcpy(b + off, tmp, len);
        }
    }
}
