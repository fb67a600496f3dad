/* batch.h - a batch of token ids: what data/ produces and nn/ consumes.
 *
 * It lives in core/ so that data/ (tasks, corpora, batch sources) and nn/
 * (models, the trainer, the evaluator) both see it without either including
 * the other.
 *
 * Two layouts. Encoder-decoder: src (B, S) is the source sentence, tgt_in
 * (B, T) = bos y, tgt_out (B, T) = y eos. Decoder-only: src is NULL and
 * tgt_in is the whole input sequence x bos y; tgt_out holds the next tokens,
 * pad wherever no loss is wanted (over x). Pad masks: nonzero = padding.
 */
#ifndef QKV_BATCH_H
#define QKV_BATCH_H

#include <stdint.h>

/* Special ids shared by every task and corpus: padding (masked, ignored by
 * the loss), beginning and end of sequence. Corpora add <unk> (corpus.h). */
enum { QKV_PAD = 0, QKV_BOS = 1, QKV_EOS = 2 };

typedef struct qkv_batch {
    int B, S, T;
    const int32_t *src;     /* (B, S); NULL for decoder-only */
    const uint8_t *src_pad; /* (B, S) */
    const int32_t *tgt_in;  /* (B, T) */
    const int32_t *tgt_out; /* (B, T) */
    const uint8_t *tgt_pad; /* (B, T) */
} qkv_batch;

/* Non-pad tokens of b, source and target: what tokens/s counts. */
static inline long qkv_batch_tokens(const qkv_batch *b) {
    long n = 0;
    if (b->src)
        for (long i = 0; i < (long)b->B * b->S; i++) n += !b->src_pad[i];
    for (long i = 0; i < (long)b->B * b->T; i++) n += !b->tgt_pad[i];
    return n;
}

/* Rows r0..r1-1 of b (the same S and T): a slice of the batch. */
static inline qkv_batch qkv_batch_rows(const qkv_batch *b, int r0, int r1) {
    qkv_batch s = *b;
    s.B = r1 - r0;
    if (b->src) s.src += (long)r0 * b->S, s.src_pad += (long)r0 * b->S;
    s.tgt_in += (long)r0 * b->T;
    s.tgt_out += (long)r0 * b->T;
    s.tgt_pad += (long)r0 * b->T;
    return s;
}

/* Targets of b that a loss scores: tgt_out entries other than pad_id. */
static inline long qkv_batch_targets(const qkv_batch *b, int pad_id) {
    long n = 0;
    for (long i = 0; i < (long)b->B * b->T; i++) n += b->tgt_out[i] != pad_id;
    return n;
}

#endif
