/* bleu.h - corpus BLEU-4 (Papineni et al. 2002), on token ids and on text
 * as sacreBLEU scores it (Post 2018, "A Call for Clarity in Reporting BLEU
 * Scores").
 *
 * Statistics: for each sentence pair (one reference), the clipped n-gram
 * matches and the candidate n-grams for n = 1..4, the reference's n-grams,
 * and the two lengths, all summed over the corpus (corpus BLEU, not a mean
 * of sentence scores). Two scores of them, in [0, 1] (x100 for the usual
 * scale):
 *
 *   qkv_bleu_score (the token-level figure, no smoothing):
 *     BLEU = BP * exp(sum_{n=1..N} log(p_n) / N),  p_n = match_n / total_n,
 *     0 if any p_n is 0;
 *   qkv_bleu_score_smooth (sacreBLEU's defaults: smooth_method 'exp'):
 *     the same, but the k-th order (k = 1, 2, ...) with no match but some
 *     candidate n-grams gets p_n = 1 / (2^k * total_n) (the geometric
 *     smoothing of NIST's mteval-v13a.pl, nltk's SmoothingFunction().method3,
 *     though nltk's corpus_bleu returns 0 when no unigram matches at all);
 *     0 if the candidates have no n-grams of an order n <= N.
 *   BP = 1 if c > r, else exp(1 - r / c)  (c, r: total candidate and
 *   reference lengths; 0 if c = 0).
 *
 * N is 4, unless no reference of the corpus has 4 tokens: then N is the
 * longest order the references have n-grams of (1 for one-token
 * references). So a perfect output scores 1 on any corpus, even one of
 * short sentences. This is the one difference from sacreBLEU, which scores
 * such a corpus 0 (without --effective-order): on a corpus with a reference
 * of 4 or more tokens (words, for text), qkv_bleu_score_smooth of the text
 * is sacreBLEU's corpus_score / 100 with its defaults, and qkv_bleu_score
 * is the same computation with smooth_method 'none'.
 *
 * Text is scored as sacreBLEU does by default: 13a tokenization
 * (qkv_bleu_tokenize_13a), case-sensitive, words compared as byte strings.
 *
 *   qkv_bleu b = {0};
 *   for each sentence: qkv_bleu_add(&b, hyp, hyp_len, ref, ref_len);
 *                  or: qkv_bleu_add_text(&b, hyp_text, ref_text);
 *   double score = 100 * qkv_bleu_score_smooth(&b);
 */
#ifndef QKV_BLEU_H
#define QKV_BLEU_H

#include <stddef.h>
#include <stdint.h>

typedef struct qkv_bleu {
    int64_t match[4], total[4]; /* clipped matches, candidate n-grams */
    int64_t ref_total[4];       /* reference n-grams (for N, above) */
    int64_t hyp_len, ref_len;
} qkv_bleu;

/* Adds one sentence pair (token ids; lengths may be 0). */
void qkv_bleu_add(qkv_bleu *b, const int32_t *hyp, int hyp_len,
                  const int32_t *ref, int ref_len);
/* Adds one sentence pair of text (NUL-terminated UTF-8): both are 13a
 * tokenized, then their words are compared. */
void qkv_bleu_add_text(qkv_bleu *b, const char *hyp, const char *ref);

/* Corpus BLEU of everything added, in [0, 1]: without smoothing (the
 * token-level figure), and with sacreBLEU's 'exp' smoothing. */
double qkv_bleu_score(const qkv_bleu *b);
double qkv_bleu_score_smooth(const qkv_bleu *b);

/* The 13a tokenization of text (mteval-v13a.pl's, and sacreBLEU's default
 * tokenize='13a'), words separated by one space, into out (cap bytes,
 * NUL-terminated when cap > 0, cut short if too small). Returns the length
 * of the whole result, as snprintf does. In order, as sacreBLEU applies
 * them (each a pass over the whole line):
 *   - delete "<skipped>" and "-\n"; "\n" becomes a space;
 *   - unescape &quot; &amp; &lt; &gt; (to " & < >), one after the other
 *     (so "&amp;lt;" becomes "<"); pad the line with a space at each end;
 *   - split off each of { | } ~ [ \ ] ^ _ ` ! " # $ % & ( ) * + : ; < = > ?
 *     @ / as a word of its own;
 *   - split off . and , unless preceded by a digit, then again unless
 *     followed by one ("3.5" and "1,000" stay whole, "end." splits);
 *   - split off - when preceded by a digit ("2001-03-03" is 2001 - 03 - 03);
 *   - collapse whitespace (Python's str.split(): ASCII space, \t \n \v \f
 *     \r, \x1c-\x1f, and the Unicode spaces U+0085, U+00A0, U+1680,
 *     U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000) to one space,
 *     none at either end.
 * Bytes are compared as bytes: the digits are ASCII 0-9 only, as in the
 * regular expressions ([0-9]) of the original. */
size_t qkv_bleu_tokenize_13a(const char *text, char *out, size_t cap);

#endif
