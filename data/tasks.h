/* tasks.h - toy sequence tasks generated on the fly with PCG32.
 *
 * copy (y = x), reverse (y = x backwards), sort (y = x in ascending order):
 * x is `len` symbols drawn uniformly from the vocabulary's non-special ids,
 * len uniform in [min_len, max_len]. Special ids: pad 0, bos 1, and eos 2
 * when use_eos (needed when lengths vary, so a decoder knows when to stop).
 * The Annotated Transformer's copy task is vocab 11, length 10, no eos.
 *
 * Encoder-decoder layout: src = x, tgt_in = bos y [eos dropped], tgt_out =
 * y [eos]. Decoder-only layout: one sequence x bos y [eos]; the model reads
 * all but the last token and is scored only on y [eos] (targets over x are
 * pad, which the loss ignores).
 *
 *   qkv_task t = {QKV_TASK_COPY, 11, 10, 10, 0, 0};
 *   qkv_task_batch b;
 *   qkv_task_batch_init(&b, &t, 64);
 *   qkv_task_sample(&t, &rng, &b);     // b.view is a qkv_batch
 */
#ifndef QKV_TASKS_H
#define QKV_TASKS_H

#include "batch.h"
#include "pcg.h"

typedef enum qkv_task_kind {
    QKV_TASK_COPY,
    QKV_TASK_REVERSE,
    QKV_TASK_SORT
} qkv_task_kind;

typedef struct qkv_task {
    qkv_task_kind kind;
    int vocab;            /* including the special ids */
    int min_len, max_len; /* of x */
    int use_eos;
    int decoder_only;
} qkv_task;

/* Buffers for B examples of task t, and the qkv_batch view over them. */
typedef struct qkv_task_batch {
    int32_t *src, *tgt_in, *tgt_out;
    uint8_t *src_pad, *tgt_pad;
    int *len; /* (B) length of each x */
    qkv_batch view;
} qkv_task_batch;

/* Checks the task (-1 and a one-line reason in err if it is impossible). */
int qkv_task_check(const qkv_task *t, char *err, size_t errlen);
void qkv_task_batch_init(qkv_task_batch *b, const qkv_task *t, int B);
/* The S and T of t's batches (S = 0 for decoder-only), without making one. */
void qkv_task_dims(const qkv_task *t, int *S, int *T);
void qkv_task_batch_free(qkv_task_batch *b);
/* Draws B fresh examples (in order, from rng). */
void qkv_task_sample(const qkv_task *t, qkv_pcg32 *rng, qkv_task_batch *b);
/* The answer y for x (len symbols) into y. */
void qkv_task_answer(const qkv_task *t, const int32_t *x, int len, int32_t *y);

#endif
