/* decode.h - beam search for the encoder-decoder, sampling for decoder-only.
 *
 * Both run without a tape (recording off, training off; both restored on
 * return) and re-run the whole prefix through qkv_model_decoder_forward at each step,
 * as qkv_greedy does: no key/value cache, cheap at these lengths. Graph
 * g is reset at every step (so its arena holds one step, not a whole decode)
 * and on return; the encoder memory lives in a malloc'd copy meanwhile. The
 * caller owns every buffer passed in; nothing is kept between calls.
 *
 *   float score;
 *   int32_t out[32];
 *   qkv_beam_search(&m, &g, src, NULL, S, 4, 0.6f, QKV_BOS, QKV_EOS, 32, out,
 *                   &score);
 *   qkv_sample(&lm, &g, prompt, P, 32, 0.8f, 40, QKV_EOS, &rng, out);
 */
#ifndef QKV_DECODE_H
#define QKV_DECODE_H

#include "model.h"

/* Greedy decoding, batched, without a tape. Encoder-decoder: src (B, S)
 * -> out (B, max_out), starting from bos; a row stops at eos (eos < 0: never)
 * and is padded with pad_id after it. Decoder-only: src is the prompt
 * (B, S, no padding) and out receives the max_out tokens that follow it.
 * Uses (and resets) graph g. */
void qkv_greedy(qkv_model *m, qkv_graph *g, const int32_t *src,
                const uint8_t *src_pad, int B, int S, int bos, int eos,
                int max_out, int32_t *out);

/* log(sum_v exp(x[v] - max)) in double, with *max = the largest x[v]: the
 * log-softmax of x is x[v] - *max - this. Beam search and the evaluator's
 * loss both use it. */
double qkv_log_sum_exp(const float *x, int n, double *max);

/* GNMT length penalty lp(len) = ((5 + len) / 6)^alpha (Wu et al. 2016,
 * eq. 14); alpha 0 gives 1. */
double qkv_length_penalty(int len, float alpha);

/* Beam search for one source sentence (encoder-decoder; batch 1).
 * src, src_pad: (S) (src_pad may be NULL). A hypothesis scores the sum of
 * its tokens' log-probabilities (log-softmax in double). Each step expands
 * the live hypotheses (run as one batch) by every token and keeps the best
 * `beam - finished` candidates (ties: lower beam index, then lower token id);
 * those ending in eos, or reaching max_out tokens, finish and shrink the
 * beam. A finished hypothesis of len tokens (eos included) is ranked by
 * score / lp(len), alpha = length_penalty >= 0 (ties: the first to finish).
 * Stops when every slot has finished, or when no live hypothesis can beat
 * the best finished one even with no further loss, the bound
 * score / lp(max_out). With beam 1 this is exactly qkv_greedy.
 * out (max_out) receives the best hypothesis without bos, with its eos if
 * any, then pad_id; *score (if non-NULL) its score / lp(len). eos < 0: none. */
void qkv_beam_search(qkv_model *m, qkv_graph *g, const int32_t *src,
                     const uint8_t *src_pad, int S, int beam,
                     float length_penalty, int bos, int eos, int max_out,
                     int32_t *out, float *score);

/* Sampling for the decoder-only model: the P prompt tokens (no padding) are
 * continued by up to max_out tokens, each drawn from
 * softmax(logits / temperature) restricted to the top_k largest logits
 * (ties: lower id; top_k <= 0 or >= V: all). One qkv_pcg32_float u per
 * token picks the first id, in id order, where the cumulative probability
 * exceeds u, so a seed repeats exactly. temperature 0 is greedy (argmax,
 * no draw). out (max_out) stops after eos (written; eos < 0: never) and is
 * padded with pad_id. */
void qkv_sample(qkv_model *m, qkv_graph *g, const int32_t *prompt, int P,
                int max_out, float temperature, int top_k, int eos,
                qkv_pcg32 *rng, int32_t *out);

#endif
