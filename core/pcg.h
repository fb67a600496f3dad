/* pcg.h - PCG32, the only random number generator in qkv.
 *
 * PCG-XSH-RR with 64-bit state and a 64-bit stream selector (M. E. O'Neill,
 * "PCG: A Family of Simple Fast Space-Efficient Statistically Good Algorithms
 * for Random Number Generation", 2014). Seeding, output and bounded draws
 * follow the reference pcg32_srandom_r / pcg32_random_r /
 * pcg32_boundedrand_r, so the reference test vectors hold. The whole state is
 * two integers: a checkpoint saves it and a resumed run continues exactly.
 *
 *   qkv_pcg32 rng;
 *   qkv_pcg32_seed(&rng, 42, 54);
 *   uint32_t die = qkv_pcg32_bounded(&rng, 6) + 1;
 */
#ifndef QKV_PCG_H
#define QKV_PCG_H

#include <stddef.h>
#include <stdint.h>

typedef struct qkv_pcg32 {
    uint64_t state; /* all 2^64 values are valid */
    uint64_t inc;   /* stream selector; always odd */
} qkv_pcg32;

/* Seeds as pcg32_srandom_r(rng, initstate, initseq). */
void qkv_pcg32_seed(qkv_pcg32 *rng, uint64_t initstate, uint64_t initseq);
/* Next uniformly distributed 32-bit value. */
uint32_t qkv_pcg32_next(qkv_pcg32 *rng);
/* Uniform integer in [0, bound), unbiased (rejection below 2^32 mod bound).
 * bound > 0. */
uint32_t qkv_pcg32_bounded(qkv_pcg32 *rng, uint32_t bound);
/* Uniform float in [0, 1) with 24 random bits. */
float qkv_pcg32_float(qkv_pcg32 *rng);
/* Standard normal N(0, 1) by the Box-Muller transform (two draws per value). */
float qkv_pcg32_normal(qkv_pcg32 *rng);
/* Fisher-Yates shuffle of n elements of `size` bytes each, in place. n < 2^32.
 */
void qkv_pcg32_shuffle(qkv_pcg32 *rng, void *base, size_t n, size_t size);

#endif
