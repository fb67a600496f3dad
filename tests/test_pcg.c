/* PCG32 against the reference implementation's published outputs
 * (pcg32-demo with initstate 42, initseq 54), and the derived draws. */
#include "pcg.h"
#include "test.h"

static void test_reference_outputs(void) {
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 42u, 54u);
    const uint32_t want[6] = {0xa15c02b7, 0x7b47f409, 0xba1d3330,
                              0x83d2f293, 0xbfa4784b, 0xcbed606e};
    for (int i = 0; i < 6; i++) {
        uint32_t got = qkv_pcg32_next(&r);
        CHECK(got == want[i], "output %d: 0x%08x, want 0x%08x", i, got,
              want[i]);
    }
}

static void test_coins_and_dice(void) {
    /* The reference demo prints 6 outputs, then 65 coins, then 33 dice, from
     * one generator. */
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 42u, 54u);
    for (int i = 0; i < 6; i++) qkv_pcg32_next(&r);
    const char *coins =
        "HHTTTHTHHHTHTTTHHHHHTTTHHHTHTHTHTTHTTTHHHHHHTTTTHHTTTTTHTTTTTTTHT";
    char got[66] = {0};
    for (int i = 0; i < 65; i++) got[i] = qkv_pcg32_bounded(&r, 2) ? 'H' : 'T';
    CHECK(strcmp(got, coins) == 0, "coins %s\n   want %s", got, coins);
    const int dice[33] = {3, 4, 1, 1, 2, 2, 3, 2, 4, 3, 2, 4, 3, 3, 5, 2, 3,
                          1, 3, 1, 5, 1, 4, 1, 5, 6, 4, 6, 6, 2, 6, 3, 3};
    for (int i = 0; i < 33; i++) {
        int d = (int)qkv_pcg32_bounded(&r, 6) + 1;
        CHECK(d == dice[i], "die %d: %d, want %d", i, d, dice[i]);
    }
}

static void test_streams_differ(void) {
    qkv_pcg32 a, b;
    qkv_pcg32_seed(&a, 42u, 54u);
    qkv_pcg32_seed(&b, 42u, 55u);
    int same = 0;
    for (int i = 0; i < 100; i++)
        same += qkv_pcg32_next(&a) == qkv_pcg32_next(&b);
    CHECK(same < 3, "streams 54 and 55 share %d of 100 outputs", same);
}

static void test_bounded_is_uniform(void) {
    /* chi-square over 7 buckets (6 d.o.f.): 99.9% quantile is 22.46 */
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 1u, 2u);
    int count[7] = {0}, n = 70000;
    for (int i = 0; i < n; i++) {
        uint32_t v = qkv_pcg32_bounded(&r, 7);
        CHECK(v < 7, "bounded(7) returned %u", v);
        if (v < 7) count[v]++;
    }
    double chi = 0;
    for (int i = 0; i < 7; i++)
        chi += (count[i] - n / 7.0) * (count[i] - n / 7.0) / (n / 7.0);
    CHECK(chi < 22.46, "chi-square %.2f", chi);
}

static void test_float_and_normal(void) {
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 7u, 9u);
    double s = 0, s2 = 0, n = 200000, lo = 1, hi = 0;
    for (int i = 0; i < n; i++) {
        float u = qkv_pcg32_float(&r);
        CHECK(u >= 0.0f && u < 1.0f, "float %g outside [0,1)", (double)u);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    CHECK(lo < 1e-4 && hi > 1 - 1e-4, "float range [%g, %g]", lo, hi);
    for (int i = 0; i < n; i++) {
        double z = qkv_pcg32_normal(&r);
        CHECK(isfinite(z), "normal %g not finite", z);
        s += z;
        s2 += z * z;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    /* standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032 */
    CHECK(fabs(mean) < 0.012, "normal mean %g", mean);
    CHECK(fabs(var - 1) < 0.016, "normal variance %g", var);
}

static void test_shuffle(void) {
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 3u, 4u);
    int a[100], seen[100] = {0}, moved = 0;
    for (int i = 0; i < 100; i++) a[i] = i;
    qkv_pcg32_shuffle(&r, a, 100, sizeof a[0]);
    for (int i = 0; i < 100; i++) {
        CHECK(a[i] >= 0 && a[i] < 100, "element %d", a[i]);
        if (a[i] >= 0 && a[i] < 100) seen[a[i]]++;
        moved += a[i] != i;
    }
    for (int i = 0; i < 100; i++)
        CHECK(seen[i] == 1, "value %d seen %d times", i, seen[i]);
    CHECK(moved > 90, "only %d of 100 moved", moved);
    /* Every permutation of 3 is reachable, each about 1/6 of the time. */
    int perm[6] = {0};
    for (int t = 0; t < 60000; t++) {
        int p[3] = {0, 1, 2};
        qkv_pcg32_shuffle(&r, p, 3, sizeof p[0]);
        perm[p[0] * 2 + (p[1] > p[2])]++;
    }
    for (int i = 0; i < 6; i++)
        CHECK(abs(perm[i] - 10000) < 500, "permutation %d drawn %d times", i,
              perm[i]);
    /* Elements larger than the swap buffer move whole. */
    char big[5][100];
    for (int i = 0; i < 5; i++) memset(big[i], 'a' + i, 100);
    qkv_pcg32_shuffle(&r, big, 5, 100);
    for (int i = 0; i < 5; i++)
        for (int j = 1; j < 100; j++)
            CHECK(big[i][j] == big[i][0], "row %d torn", i);
}

static void test_repeatable(void) {
    qkv_pcg32 a, b;
    qkv_pcg32_seed(&a, 123u, 456u);
    b = a; /* the state is two integers: copying it forks the stream */
    for (int i = 0; i < 1000; i++)
        CHECK(qkv_pcg32_next(&a) == qkv_pcg32_next(&b), "diverged at %d", i);
}

int main(void) {
    test_prog = "pcg";
    RUN(test_reference_outputs);
    RUN(test_coins_and_dice);
    RUN(test_streams_differ);
    RUN(test_bounded_is_uniform);
    RUN(test_float_and_normal);
    RUN(test_shuffle);
    RUN(test_repeatable);
    return test_summary();
}
