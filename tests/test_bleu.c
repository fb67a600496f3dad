/* Corpus BLEU-4 against values worked by hand, by an independent
 * Counter-based implementation (Python, in the comments) and by nltk's
 * corpus_bleu; the 13a tokenizer against sacreBLEU's regular expressions run
 * by Python; and a perfect output scoring 100 through the evaluator on every
 * task and shipped corpus. */
#include <stdlib.h>
#include <string.h>

#include "bleu.h"
#include "corpus.h"
#include "eval.h"
#include "tasks.h"
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
    CHECK(one(ref8, 0, ref8, 0) == 0.0, "empty reference and hypothesis");
}

/* Orders the references have no n-grams of are left out (bleu.h's N): a
 * perfect output of short sentences scores 1, where sacreBLEU scores 0. */
static void test_short_references(void) {
    CHECK_NEAR(one(ref8, 3, ref8, 3), 1.0, 1e-12, "3 tokens: N = 3");
    CHECK_NEAR(one(ref8, 1, ref8, 1), 1.0, 1e-12, "1 token: N = 1");
    qkv_bleu b = {0};
    qkv_bleu_add(&b, ref8, 3, ref8, 3);
    CHECK_NEAR(qkv_bleu_score_smooth(&b), 1.0, 1e-12, "smoothed, N = 3");
    /* 1 2 3 4 against 1 2 3: p1..p3 = 3/4, 2/3, 1/2, no brevity penalty;
     * the hypothesis' 4-gram does not count (no reference has one) */
    const int32_t h[] = {1, 2, 3, 4};
    CHECK_NEAR(one(h, 4, ref8, 3), pow(0.25, 1.0 / 3), 1e-12, "N = 3");
    /* one reference of 4 tokens makes N = 4 for the whole corpus */
    qkv_bleu c = {0};
    qkv_bleu_add(&c, ref8, 3, ref8, 3);
    qkv_bleu_add(&c, ref8, 4, ref8, 4);
    CHECK(qkv_bleu_score(&c) == 1.0, "perfect, N = 4: %.17g",
          qkv_bleu_score(&c));
    qkv_bleu_add(&c, h, 2, ref8, 1); /* candidate longer than reference */
    CHECK(c.ref_total[3] == 1 && c.total[3] == 1, "4-grams %lld %lld",
          (long long)c.ref_total[3], (long long)c.total[3]);
}

/* sacreBLEU's 'exp' smoothing, by hand. */
static void test_smoothing(void) {
    /* 1 2 9 3 against 1..8: p1 = 3/4, p2 = 1/3 (1 2), p3 = 0/2 -> 1/(2*2),
     * p4 = 0/1 -> 1/(4*1); BP = exp(1 - 8/4) */
    const int32_t h[] = {1, 2, 9, 3};
    qkv_bleu b = {0};
    qkv_bleu_add(&b, h, 4, ref8, 8);
    double want = exp(1.0 - 2.0) * pow(0.75 / 3 / 4 / 4, 0.25);
    CHECK_NEAR(qkv_bleu_score_smooth(&b), want, 1e-12, "exp smoothing");
    CHECK(qkv_bleu_score(&b) == 0.0, "unsmoothed: 0");
    /* nothing matches: p1..p4 = 1/(2*4), 1/(4*3), 1/(8*2), 1/(16*1) (as
     * sacreBLEU; nltk's corpus_bleu returns 0 when no unigram matches) */
    const int32_t x[] = {20, 21, 22, 23};
    qkv_bleu c = {0};
    qkv_bleu_add(&c, x, 4, ref8 + 4, 4);
    CHECK_NEAR(qkv_bleu_score_smooth(&c), pow(1.0 / 8 / 12 / 16 / 16, 0.25),
               1e-12, "no match at all");
    /* a candidate with no 4-gram where the references have some: 0, as in
     * sacreBLEU */
    qkv_bleu d = {0};
    qkv_bleu_add(&d, ref8, 3, ref8, 8);
    CHECK(qkv_bleu_score_smooth(&d) == 0.0, "no candidate 4-gram");
}

static void check_tok(const char *in, const char *want) {
    char out[512];
    size_t n = qkv_bleu_tokenize_13a(in, out, sizeof out);
    CHECK(strcmp(out, want) == 0 && n == strlen(want), "13a '%s': '%s'", in,
          out);
}

/* The 13a tokenizer. Expected strings from sacreBLEU's rules run by Python
 * (tok13a of tests/bleu_ref.py in the comment of test_nltk, below):
 *   /usr/bin/python3 -c 'from bleu_ref import tok13a; print(repr(tok13a(S)))'
 */
static void test_tokenize_13a(void) {
    check_tok("Hello, world! 3.5 1,000 5. .5 a..b",
              "Hello , world ! 3.5 1,000 5 . . 5 a . . b");
    check_tok("He said &quot;no&quot; on 2001-03-03.",
              "He said \" no \" on 2001 - 03 - 03 .");
    check_tok("&amp;lt; x&amp;y <skipped>z", "< x & y z");
    check_tok("tab\there\xc2\xa0nbsp\xe2\x80\x83"
              "em  ",
              "tab here nbsp em");
    check_tok("it's (a) {b} [c] ~d~ e/f g@h 100% #1 $5 a*b+c=d? x^y_z `q` a|b",
              "it's ( a ) { b } [ c ] ~ d ~ e / f g @ h 100 % # 1 $ 5 a * b "
              "+ c = d ? x ^ y _ z ` q ` a | b");
    check_tok("3,5-4 x-y 12-\nend\n", "3,5 - 4 x-y 12end");
    /* Python's whitespace beyond ASCII (U+3000, U+2028, \x1f, U+00A0), but
     * not U+200B or U+180E */
    check_tok("a\xe3\x80\x80"
              "b\xe2\x80\xa8"
              "c\x1f"
              "d\xe2\x80\x8b"
              "e\xc2\xa0"
              "f\xe1\xa0\x8eg",
              "a b c d\xe2\x80\x8b"
              "e f\xe1\xa0\x8eg");
    check_tok("", "");
    check_tok(" \t ", "");
    check_tok("caf\xc3\xa9. na\xc3\xafve,x", "caf\xc3\xa9 . na\xc3\xafve , x");
    char small[6];
    CHECK(qkv_bleu_tokenize_13a("a,b,c,d", small, sizeof small) == 13 &&
              strcmp(small, "a , b") == 0,
          "cut short: '%s'", small);
}

/* Corpus BLEU on text against nltk 3.8:
 *   /usr/bin/python3 tests/bleu_ref.py
 * which prints nltk.translate.bleu_score.corpus_bleu of the 13a-tokenized
 * corpora A, B, C below with SmoothingFunction().method3. */
static double text_bleu(const char *const *hyp, const char *const *ref, int n) {
    qkv_bleu b = {0};
    for (int i = 0; i < n; i++) qkv_bleu_add_text(&b, hyp[i], ref[i]);
    return qkv_bleu_score_smooth(&b);
}

static void test_nltk(void) {
    const char *ha[] = {"The cat sat on the mat.",
                        "It cost $3.5 million, or 1,000 times more!",
                        "He said &quot;no&quot; on 2001-03-03."};
    const char *ra[] = {"The cat is on the mat.",
                        "It cost 3.5 million dollars, or 1,000 times more.",
                        "She said \"no\" on 2001-03-03 & left."};
    CHECK_NEAR(text_bleu(ha, ra, 3), 0.5891633474225254, 1e-12, "corpus A");
    const char *hb[] = {"a b c d e f", "x y z w"};
    const char *rb[] = {"a b x c y d", "x q z w"};
    CHECK_NEAR(text_bleu(hb, rb, 2), 0.17375375743053154, 1e-12, "corpus B");
    const char *hc[] = {"one two three four five"};
    const char *rc[] = {"one two three four five six seven eight nine ten"};
    CHECK_NEAR(text_bleu(hc, rc, 1), 0.36787944117144233, 1e-12, "corpus C");
    /* case-sensitive: "the" is not "The" */
    const char *hd[] = {"the cat is on the mat ."};
    const char *rd[] = {"The cat is on the mat."};
    CHECK(text_bleu(hd, rd, 1) < 1.0 && text_bleu(rd, rd, 1) == 1.0, "case: %g",
          text_bleu(hd, rd, 1));
}

/* The rows of b's references as a decoder would output them (max_out = T):
 * y [eos], then pad; without_eos drops the eos (a decoder that ran out of
 * positions). */
static int32_t *perfect(const qkv_batch *b, int without_eos, int eos) {
    int32_t *h = malloc((size_t)b->B * b->T * sizeof *h);
    for (int r = 0; r < b->B; r++) {
        int k = 0;
        for (int j = 0; j < b->T; j++) {
            int32_t y = b->tgt_out[(size_t)r * b->T + j];
            if (y != QKV_PAD && !(without_eos && y == eos))
                h[(size_t)r * b->T + k++] = y;
        }
        while (k < b->T) h[(size_t)r * b->T + k++] = QKV_PAD;
    }
    return h;
}

/* Scores a perfect output of b through the evaluator: BLEU 100, both. */
static void check_perfect(const qkv_batch *b, const qkv_eval_opts *o,
                          const char *what) {
    for (int cut = 0; cut < 1 + (o->eos >= 0); cut++) {
        int32_t *h = perfect(b, cut, o->eos);
        qkv_scores s = {0};
        qkv_eval_score(b, h, b->T, o, &s);
        CHECK(qkv_scores_bleu(&s) == 100.0 &&
                  qkv_scores_token_bleu(&s) == 100.0 &&
                  qkv_scores_exact(&s) == (cut ? 0.0 : 1.0),
              "%s%s: BLEU %.17g, token BLEU %.17g, exact %g", what,
              cut ? " (no eos)" : "", qkv_scores_bleu(&s),
              qkv_scores_token_bleu(&s), qkv_scores_exact(&s));
        free(h);
    }
}

static void test_perfect_tasks(void) {
    const char *names[] = {"copy", "reverse", "sort"};
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 5, 1);
    for (int kind = 0; kind < 3; kind++)
        for (int eos = 0; eos < 2; eos++)
            for (int dec = 0; dec < 2; dec++)
                for (int len = 1; len <= 10; len += 9) {
                    /* one length without eos; 1..len with; vocab 5 has the
                     * symbol 3, an ordinary symbol here */
                    qkv_task t = {kind, 5, eos ? 1 : len, len, eos, dec};
                    qkv_task_batch tb;
                    qkv_task_batch_init(&tb, &t, 64);
                    qkv_task_sample(&t, &rng, &tb);
                    qkv_eval_opts o = {
                        eos ? QKV_EOS : -1, 1, 0.0f, 0, NULL, NULL};
                    char what[80];
                    snprintf(what, sizeof what, "%s eos %d dec %d len %d",
                             names[kind], eos, dec, len);
                    check_perfect(&tb.view, &o, what);
                    qkv_task_batch_free(&tb);
                }
}

typedef struct detok_ctx {
    const qkv_vocab *v;
    qkv_tok tok;
} detok_ctx;

static size_t detok(const void *ctx, const int32_t *ids, int n, char *out,
                    size_t cap) {
    const detok_ctx *d = ctx;
    return qkv_detokenize(d->v, d->tok, ids, n, out, cap);
}

/* The shipped corpora's test splits, characters and words, both layouts,
 * scored in batches of 100 pairs. The vocabularies come from the split
 * itself: an <unk> in a reference is never matched (eval.h), so a perfect
 * output scores 100 only on words the vocabulary knows. */
static void test_perfect_corpora(void) {
    const char *names[] = {"dates", "grammar"};
    for (int k = 0; k < 2; k++) {
        char path[128], err[512];
        snprintf(path, sizeof path, "data/corpora/%s/test.tsv", names[k]);
        qkv_corpus c;
        if (qkv_corpus_load(path, &c, err, sizeof err)) {
            CHECK(0, "%s", err);
            continue;
        }
        for (int tok = 0; tok < 2; tok++)
            for (int dec = 0; dec < 2; dec++) {
                qkv_tok tk = tok ? QKV_TOK_CHAR : QKV_TOK_WORD;
                qkv_vocab sv, tv;
                qkv_vocab_build(&sv, &c, QKV_SIDE_SRC, tk, 1);
                qkv_vocab_build(&tv, &c, QKV_SIDE_TGT, tk, 1);
                qkv_pairs p;
                qkv_pairs_encode(&p, &c, tk, &sv, &tv, 1000, 1000);
                p.decoder_only = dec;
                CHECK(p.n == c.n && p.n_unk == 0, "%s: %d pairs, %zu unk", path,
                      p.n, p.n_unk);
                detok_ctx dc = {&tv, tk};
                qkv_eval_opts o = {QKV_EOS, 1, 0.0f, QKV_UNK, detok, &dc};
                qkv_corpus_batch b;
                qkv_corpus_batch_init(
                    &b, 100 * 2 * (p.longest_src + p.longest_tgt + 2));
                int idx[100];
                qkv_scores all = {0};
                for (int i = 0; i < p.n; i += 100) {
                    int n = p.n - i < 100 ? p.n - i : 100;
                    for (int r = 0; r < n; r++) idx[r] = i + r;
                    qkv_pairs_batch(&p, idx, n, &b);
                    int32_t *h = perfect(&b.view, 0, QKV_EOS);
                    qkv_eval_score(&b.view, h, b.view.T, &o, &all);
                    free(h);
                    if (i == 0) {
                        char what[80];
                        snprintf(what, sizeof what, "%s %s dec %d", names[k],
                                 tok ? "chars" : "words", dec);
                        check_perfect(&b.view, &o, what);
                    }
                }
                CHECK(all.seqs == c.n && qkv_scores_bleu(&all) == 100.0 &&
                          qkv_scores_token_bleu(&all) == 100.0,
                      "%s: whole split: %ld, BLEU %.17g", path, all.seqs,
                      qkv_scores_bleu(&all));
                qkv_corpus_batch_free(&b);
                qkv_pairs_free(&p);
                qkv_vocab_free(&sv);
                qkv_vocab_free(&tv);
            }
        qkv_corpus_free(&c);
    }
}

/* The text the evaluator scores: up to eos, <unk> left out, numbers
 * without a detokenizer. */
static void test_eval_text(void) {
    const int32_t h[] = {5, 3, 12, QKV_EOS, 7, QKV_PAD};
    char *t = NULL;
    size_t cap = 0;
    qkv_eval_opts o = {QKV_EOS, 1, 0.0f, 0, NULL, NULL};
    CHECK(qkv_eval_text(&o, h, 6, &t, &cap) == 6 && strcmp(t, "5 3 12") == 0,
          "task text '%s'", t);
    o.unk = 3;
    CHECK(qkv_eval_text(&o, h, 6, &t, &cap) == 4 && strcmp(t, "5 12") == 0,
          "<unk> left out: '%s'", t);
    o.eos = -1, o.unk = 0; /* no eos: id 2 is a symbol, pad ends the row */
    CHECK(strcmp((qkv_eval_text(&o, h, 6, &t, &cap), t), "5 3 12 2 7") == 0,
          "no eos: '%s'", t);
    CHECK(qkv_eval_text(&o, h, 0, &t, &cap) == 0 && *t == 0, "empty: '%s'", t);
    /* a long row grows the buffer */
    int32_t many[400];
    for (int i = 0; i < 400; i++) many[i] = 1000 + i;
    CHECK(qkv_eval_text(&o, many, 400, &t, &cap) == 400 * 5 - 1 &&
              strncmp(t + 1994, " 1399", 6) == 0,
          "long row");
    free(t);
}

int main(void) {
    test_prog = "bleu";
    RUN(test_identical_is_one);
    RUN(test_one_substitution);
    RUN(test_brevity_penalty);
    RUN(test_clipping);
    RUN(test_corpus_sums_counts);
    RUN(test_empty);
    RUN(test_short_references);
    RUN(test_smoothing);
    RUN(test_tokenize_13a);
    RUN(test_nltk);
    RUN(test_perfect_tasks);
    RUN(test_perfect_corpora);
    RUN(test_eval_text);
    return test_summary();
}
