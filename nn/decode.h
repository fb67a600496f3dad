/* decode.h - beam search for the encoder-decoder, sampling for decoder-only.
 *
 * All run without a tape (recording off, training off; both restored on
 * return) and feed only the newest token of every row at each step, the
 * earlier positions' keys and values coming from a key/value cache
 * (model.h's qkv_kv_cache, allocated once per decode); beam search gathers
 * the cache rows of the hypotheses it keeps. The logits are bitwise those
 * of re-running the whole prefix through qkv_model_decoder_forward, which
 * qkv_decode_set_cache(0) does instead (tests and the bench compare). Graph
 * g is reset at every step (so its arena holds one step, not a whole decode)
 * and on return; the encoder memory lives in a malloc'd copy meanwhile. The
 * caller owns every buffer passed in; nothing is kept between calls.
 *
 *   float score;
 *   int32_t out[32];
 *   qkv_beam_search(&m, &g, src, NULL, S, 4, 0.6f, QKV_BOS, QKV_EOS, 32, out,
 *                   &score);
 *   qkv_sample(&lm, &g, prompt, P, 32, 0.8f, 40, 0.9f, QKV_EOS, &rng, out);
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
 * (ties: lower id; top_k <= 0 or >= V: all), then to the top_p nucleus
 * (Holtzman et al. 2019, "The Curious Case of Neural Text Degeneration",
 * sec. 3.1): the smallest set of those tokens, taken in descending
 * probability (ties: lower id), whose probability reaches top_p, the rest
 * dropped and the kept ones renormalised (top_p 0 or >= 1: off). One
 * qkv_pcg32_float u per token picks the first kept id, in id order, where
 * the cumulative probability exceeds u, so a seed repeats exactly.
 * temperature 0 is greedy (argmax, no draw). out (max_out) stops after eos
 * (written; eos < 0: never, all max_out tokens are drawn) and is padded
 * with pad_id. */
void qkv_sample(qkv_model *m, qkv_graph *g, const int32_t *prompt, int P,
                int max_out, float temperature, int top_k, float top_p, int eos,
                qkv_pcg32 *rng, int32_t *out);

/* Called by qkv_generate after each token with the whole sequence so far
 * (n tokens, the new one last). */
typedef void (*qkv_token_fn)(void *ctx, const int32_t *seq, int n);

/* Open-ended generation with the decoder-only model: continues seq[0..n)
 * (n >= 1; seq has room for n + max_out) by up to max_out tokens drawn as
 * qkv_sample draws them (temperature, top_k, top_p; rng), past the model's
 * positions if need be. Each token sees the sequence's last tokens, at most
 * max_len of them: when the sequence outgrows max_len, the window restarts
 * from its last max_len / 2 tokens (one pass over them fills the key/value
 * cache again), so every token sees at least max_len / 2 (nanoGPT crops to
 * the last max_len at every token instead, which costs a full pass per
 * token). Stops after drawing eos (eos < 0: never). on_token (may be NULL)
 * sees each token as it comes, for streaming. Returns the new length. */
int qkv_generate(qkv_model *m, qkv_graph *g, int32_t *seq, int n, int max_out,
                 float temperature, int top_k, float top_p, int eos,
                 qkv_pcg32 *rng, qkv_token_fn on_token, void *ctx);

/* The distribution qkv_sample draws a token from, for logits x (V) and
 * temperature > 0: p (V) as above (0 for the tokens top_k and top_p drop);
 * returns how many tokens it keeps. */
int qkv_sample_probs(const float *x, int V, float temperature, int top_k,
                     float top_p, double *p);
/* One draw from that distribution, as qkv_sample makes it (one
 * qkv_pcg32_float from rng). */
int qkv_sample_token(const float *x, int V, float temperature, int top_k,
                     float top_p, qkv_pcg32 *rng);

/* Decodes use the key/value cache (1, the default) or re-run the whole
 * prefix at every step (0); returns the previous setting. The outputs are
 * the same bits either way; for tests and the bench. Not thread-safe: set
 * it before decoding. */
int qkv_decode_set_cache(int on);

/* Called at every step of every decode with the next-token logits of the
 * `rows` rows (row i at logits + i * stride, V each) after t positions;
 * NULL: none (the default). For tests that compare the two paths' logits
 * step by step. */
typedef void (*qkv_decode_observer)(void *ctx, const float *logits, int rows,
                                    size_t stride, int t);
void qkv_decode_set_observer(qkv_decode_observer fn, void *ctx);

#endif
