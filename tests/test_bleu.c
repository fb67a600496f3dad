/* Corpus BLEU-4 against values worked by hand and by an independent
 * Counter-based implementation (Python, in the comments). */
#include "bleu.h"
#include "test.h"

static const int32_t ref8[] = {1, 2, 3, 4, 5, 6, 7, 8};

static double one(const int32_t *h, int hl, const int32_t *r, int rl) {
    qkv_bleu b = {0};
    qkv_bleu_add(&b, h, hl, r, rl);
    return qkv_bleu_score(&b);
}

static void test_identical_is_one(void) {
    CHECK_NEAR(one(ref8, 8, ref8, 8), 1.0, 1e-12, "identical");
}

static void test_one_substitution(void) {
    /* 1 2 3 4 9 6 7 8: p1..p4 = 7/8, 5/7, 3/6, 1/5, product 1/16, BLEU 0.5 */
    const int32_t h[] = {1, 2, 3, 4, 9, 6, 7, 8};
    CHECK_NEAR(one(h, 8, ref8, 8), 0.5, 1e-12, "one substitution");
}

static void test_brevity_penalty(void) {
    /* 2 3 4 5 6: every n-gram matches, BP = exp(1 - 8/5) */
    const int32_t h[] = {2, 3, 4, 5, 6};
    CHECK_NEAR(one(h, 5, ref8, 8), exp(-0.6), 1e-12, "short hypothesis");
    /* longer than the reference: no penalty, precision pays instead */
    const int32_t l[] = {1, 2, 3, 4, 5, 6, 7, 8, 8};
    double p = (8.0 / 9) * (7.0 / 8) * (6.0 / 7) * (5.0 / 6);
    CHECK_NEAR(one(l, 9, ref8, 8), pow(p, 0.25), 1e-12, "long hypothesis");
}

static void test_clipping(void) {
    /* 1 1 1 1 1 1 against 1..7: the unigram 1 counts once, no bigram
     * matches, so the score is 0 (a repeated word earns nothing) */
    const int32_t h[] = {1, 1, 1, 1, 1, 1}, r[] = {1, 2, 3, 4, 5, 6, 7};
    CHECK(one(h, 6, r, 7) == 0.0, "repeats: %g", one(h, 6, r, 7));
    qkv_bleu b = {0};
    qkv_bleu_add(&b, h, 6, r, 7);
    CHECK(b.match[0] == 1 && b.total[0] == 6, "clipped unigrams %lld/%lld",
          (long long)b.match[0], (long long)b.total[0]);
}

static void test_corpus_sums_counts(void) {
    /* Python: bleu([(B, ref8), (D, 1..9), (E, ref8)]) = 0.5092986258570136,
     * not the mean of the sentence scores. */
    const int32_t b1[] = {1, 2, 3, 4, 9, 6, 7, 8};
    const int32_t d[] = {5, 6, 7, 8, 1, 2, 3},
                  dr[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const int32_t e[] = {2, 3, 4, 5, 6};
    qkv_bleu b = {0};
    qkv_bleu_add(&b, b1, 8, ref8, 8);
    qkv_bleu_add(&b, d, 7, dr, 9);
    qkv_bleu_add(&b, e, 5, ref8, 8);
    CHECK_NEAR(qkv_bleu_score(&b), 0.5092986258570136, 1e-12, "corpus BLEU");
}

static void test_empty(void) {
    qkv_bleu b = {0};
    CHECK(qkv_bleu_score(&b) == 0.0, "empty corpus");
    qkv_bleu_add(&b, ref8, 0, ref8, 8);
    CHECK(qkv_bleu_score(&b) == 0.0, "empty hypothesis");
    CHECK(one(ref8, 3, ref8, 3) == 0.0, "3 tokens have no 4-gram: BLEU-4 is 0");
}

int main(void) {
    test_prog = "bleu";
    RUN(test_identical_is_one);
    RUN(test_one_substitution);
    RUN(test_brevity_penalty);
    RUN(test_clipping);
    RUN(test_corpus_sums_counts);
    RUN(test_empty);
    return test_summary();
}
