/* bleu.h - corpus BLEU-4 on token ids (Papineni et al. 2002).
 *
 *   BLEU = BP * exp(sum_{n=1..4} log(p_n) / 4),
 *   p_n  = sum over sentences of clipped n-gram matches /
 *          sum over sentences of candidate n-grams,
 *   BP   = 1 if c > r, else exp(1 - r / c)   (c, r: total candidate and
 *          reference lengths), one reference per sentence.
 * Counts are summed over the corpus before dividing (corpus BLEU, not a mean
 * of sentence scores); if any p_n is 0 the score is 0. Scores are in [0, 1];
 * multiply by 100 for the usual scale.
 *
 *   qkv_bleu b = {0};
 *   for each sentence: qkv_bleu_add(&b, hyp, hyp_len, ref, ref_len);
 *   double score = qkv_bleu_score(&b);
 */
#ifndef QKV_BLEU_H
#define QKV_BLEU_H

#include <stdint.h>

typedef struct qkv_bleu {
    int64_t match[4], total[4]; /* clipped matches, candidate n-grams */
    int64_t hyp_len, ref_len;
} qkv_bleu;

/* Adds one sentence pair (token ids; lengths may be 0). */
void qkv_bleu_add(qkv_bleu *b, const int32_t *hyp, int hyp_len,
                  const int32_t *ref, int ref_len);
/* Corpus BLEU-4 of everything added, in [0, 1]. */
double qkv_bleu_score(const qkv_bleu *b);

#endif
