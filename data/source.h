/* source.h - batch sources: where a trainer or an evaluator gets its batches.
 *
 * One interface, two implementations here: generated tasks (tasks.h) and
 * TSV corpora (corpus.h); a third, windows of a plain text, is in text.h.
 * A source hands out batches one at a time and tells its position as a
 * typed state (qkv_source_state), which the trainer saves in
 * its checkpoint and gives back on resume: nothing else is needed to go on
 * with the very batch that would have come next.
 *
 * A training source never ends (a task draws fresh examples; a corpus starts
 * its next shuffled epoch). An evaluation source is one finite pass (a task's
 * fixed batch; a corpus's pairs in order): next returns NULL at its end, and
 * qkv_source_rewind starts the pass again.
 *
 *   qkv_source *train = qkv_task_source(&task, 64, seed, 0);
 *   qkv_source *valid = qkv_task_source(&task, 200, seed, 1);
 *   const qkv_batch *b = qkv_source_next(train);   // never NULL
 *   for (qkv_source_rewind(valid); (b = qkv_source_next(valid));) ...
 *   qkv_source_free(train);
 *
 * A new source (a data loader of your own) fills a qkv_source_ops table and
 * embeds a qkv_source as the first member of its struct; see source.c.
 */
#ifndef QKV_SOURCE_H
#define QKV_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "corpus.h"
#include "pcg.h"
#include "tasks.h"

/* The position of a source: its generator, and for a corpus the epoch (1 is
 * the first) and the batches served in it. A corpus keeps the generator as
 * its epoch began (the shuffle draws from it once per epoch); a task keeps it
 * as it is now. */
typedef struct qkv_source_state {
    qkv_pcg32 rng;
    int64_t epoch, batch;
} qkv_source_state;

typedef struct qkv_source qkv_source;

typedef struct qkv_source_ops {
    const char *kind; /* "task", "corpus": saved with the state */
    /* The next batch, valid until the next call; NULL at the end of a
     * finite pass. */
    const qkv_batch *(*next)(qkv_source *s);
    void (*rewind)(qkv_source *s);
    void (*get_state)(const qkv_source *s, qkv_source_state *st);
    /* 0, or -1 and one line in err when st is not a position of s. */
    int (*set_state)(qkv_source *s, const qkv_source_state *st, char *err,
                     size_t errlen);
    void (*free)(qkv_source *s);
} qkv_source_ops;

struct qkv_source {
    const qkv_source_ops *ops;
    int finite;        /* 1: one pass, then NULL */
    int epoch_batches; /* corpus: batches per epoch; task: 0 */
    /* The costliest batch it can hand out, B rows of S + T tokens: what the
     * memory check sizes the activations by. */
    int max_B, max_S, max_T;
};

/* Generated examples of task t, B a batch. finite 0: fresh examples every
 * batch, drawn from PCG32 (seed, stream 1); finite 1: one batch drawn once
 * from (seed, stream 2), handed out once per pass (a validation set). */
qkv_source *qkv_task_source(const qkv_task *t, int B, uint64_t seed,
                            int finite);

/* Batches of the encoded pairs p (not owned: they must outlive the source)
 * of at most max_tokens tokens (qkv_batcher). finite 0: shuffled epochs
 * forever from PCG32 (seed, stream 1); finite 1: one pass in order. NULL and
 * one line in err if max_tokens cannot hold p's costliest pair. */
qkv_source *qkv_corpus_source(const qkv_pairs *p, int max_tokens, uint64_t seed,
                              int finite, char *err, size_t errlen);

static inline const qkv_batch *qkv_source_next(qkv_source *s) {
    return s->ops->next(s);
}
static inline void qkv_source_rewind(qkv_source *s) {
    s->ops->rewind(s);
}
static inline void qkv_source_get_state(const qkv_source *s,
                                        qkv_source_state *st) {
    s->ops->get_state(s, st);
}
static inline int qkv_source_set_state(qkv_source *s,
                                       const qkv_source_state *st, char *err,
                                       size_t errlen) {
    return s->ops->set_state(s, st, err, errlen);
}
static inline void qkv_source_free(qkv_source *s) {
    if (s) s->ops->free(s);
}

#endif
