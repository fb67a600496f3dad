/* eval.h - the evaluator: how well a model does on a batch source.
 *
 * One pass over the source, without a tape: teacher-forced cross-entropy
 * (in double) and token accuracy (argmax), then decoding (greedy, or beam
 * search for an encoder-decoder) for exact match and two corpus BLEU
 * figures (bleu.h):
 *   - BLEU: sacreBLEU's default, on text: each decoded row and its
 *     reference (tokens before eos) detokenized by o->detok, 13a-tokenized,
 *     'exp' smoothing. The reference is the detokenized reference ids (the
 *     data as the model sees it, <unk> included), not the raw file line; a
 *     predicted <unk> is left out of the hypothesis, so an unknown word is
 *     never a right guess;
 *   - token BLEU: on the token ids, no smoothing, an <unk> in the reference
 *     matching nothing.
 * Training's validation, `qkv eval` and the tests all score here.
 *
 *   qkv_eval_opts o = {QKV_EOS, 1, 0.0f, QKV_UNK, my_detok, &vocab};
 *   qkv_scores s;   // eos, beam, length penalty, unk, detokenizer (or NULL)
 *   qkv_evaluate(&m, &g, valid, &o, &s);
 *   printf("loss %.4f exact %.1f%% BLEU %.2f\n", qkv_scores_loss(&s),
 *          100 * qkv_scores_exact(&s), qkv_scores_bleu(&s));
 */
#ifndef QKV_EVAL_H
#define QKV_EVAL_H

#include <stdint.h>

#include "bleu.h"
#include "model.h"
#include "source.h"

typedef struct qkv_eval_opts {
    int eos;     /* the end token (QKV_EOS), or -1: the data has none (a
                  * task of one length) and answers are cut at their length */
    int beam;    /* 1: greedy; > 1: beam search (encoder-decoder only) */
    float alpha; /* beam search's length penalty (decode.h) */
    /* The <unk> id of a corpus vocabulary (QKV_UNK), which matches nothing
     * in BLEU (an unknown reference word is not a right guess), or 0: the
     * data has none (a task, whose id 3 is an ordinary symbol). */
    int unk;
    /* The text of ids[0..n) (no eos, no <unk>) into out (cap bytes,
     * NUL-terminated when cap > 0), returning the length the whole text
     * needs, as snprintf (and corpus.h's qkv_detokenize) do; ctx is
     * detok_ctx. NULL: the ids are written as decimal numbers separated by
     * spaces, as a task's symbols are. */
    size_t (*detok)(const void *ctx, const int32_t *ids, int n, char *out,
                    size_t cap);
    const void *detok_ctx;
} qkv_eval_opts;

/* Sums over an evaluation set; qkv_scores_* turn them into figures. */
typedef struct qkv_scores {
    double loss_sum; /* cross-entropy summed over target tokens */
    long tokens;     /* target tokens scored (eos included) */
    long right;      /* of those, predicted right by argmax (teacher forcing) */
    long seqs, exact;    /* sequences decoded, and exactly right */
    qkv_bleu bleu;       /* on detokenized text (sacreBLEU's) */
    qkv_bleu token_bleu; /* on token ids */
} qkv_scores;

/* Zeroes s, then scores every batch of one pass of data (rewound first). */
void qkv_evaluate(qkv_model *m, qkv_graph *g, qkv_source *data,
                  const qkv_eval_opts *o, qkv_scores *s);

/* Adds batch b to s, decoding max_out tokens a row. If hyps is non-NULL it
 * receives each row's decoded tokens (B rows of max_out ids, pad after eos).
 * Uses and resets g; recording and training mode are restored on return. */
void qkv_eval_batch(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                    const qkv_eval_opts *o, int max_out, qkv_scores *s,
                    int32_t *hyps);

/* Adds the exact matches and BLEU statistics of decoded rows to s: hyps
 * holds b->B rows of max_out ids (as qkv_eval_batch decodes them), scored
 * against b's references. qkv_eval_batch's second half, for output decoded
 * elsewhere. */
void qkv_eval_score(const qkv_batch *b, const int32_t *hyps, int max_out,
                    const qkv_eval_opts *o, qkv_scores *s);

/* The text BLEU scores for a decoded row h (max_out ids): its tokens before
 * eos (or pad), any <unk> left out, through o->detok, into *text (malloc'd,
 * *cap bytes, grown as needed; start with NULL, 0). Returns its length.
 * What `qkv eval --hyp` writes. */
size_t qkv_eval_text(const qkv_eval_opts *o, const int32_t *h, int max_out,
                     char **text, size_t *cap);

/* How many tokens to decode for batch b: the answer's length when the data
 * has no eos (eos < 0), else room for a wrong, longer answer (twice the
 * longest reference + 8, within the model's positions). */
int qkv_eval_max_out(const qkv_model *m, const qkv_batch *b, int eos);

double qkv_scores_loss(const qkv_scores *s);     /* mean cross-entropy */
double qkv_scores_accuracy(const qkv_scores *s); /* token accuracy, 0..1 */
double qkv_scores_exact(const qkv_scores *s);    /* exact match, 0..1 */
/* BLEU, 0..100: on detokenized text as sacreBLEU scores it (13a, 'exp'
 * smoothing), and on token ids (no smoothing). */
double qkv_scores_bleu(const qkv_scores *s);
double qkv_scores_token_bleu(const qkv_scores *s);

#endif
