#include "source.h"

#include <stdio.h>
#include <stdlib.h>

#include "common.h"

/* ------------------------------------------------------------------ tasks */

typedef struct task_source {
    qkv_source base;
    qkv_task task;
    qkv_task_batch b;
    qkv_pcg32 rng;
    int served; /* finite: the one batch has been handed out this pass */
} task_source;

static const qkv_batch *task_next(qkv_source *s) {
    task_source *t = (task_source *)s;
    if (s->finite) {
        if (t->served) return NULL;
        t->served = 1;
        return &t->b.view;
    }
    qkv_task_sample(&t->task, &t->rng, &t->b);
    return &t->b.view;
}

static void task_rewind(qkv_source *s) {
    ((task_source *)s)->served = 0;
}

static void task_get_state(const qkv_source *s, qkv_source_state *st) {
    const task_source *t = (const task_source *)s;
    st->rng = t->rng;
    st->epoch = st->batch = 0;
}

static int task_set_state(qkv_source *s, const qkv_source_state *st, char *err,
                          size_t errlen) {
    (void)err, (void)errlen;
    ((task_source *)s)->rng = st->rng;
    return 0;
}

static void task_free(qkv_source *s) {
    qkv_task_batch_free(&((task_source *)s)->b);
    free(s);
}

static const qkv_source_ops task_ops = {
    "task", task_next, task_rewind, task_get_state, task_set_state, task_free,
};

qkv_source *qkv_task_source(const qkv_task *t, int B, uint64_t seed,
                            int finite) {
    task_source *s = qkv_calloc(1, sizeof *s, "batch source");
    s->base.ops = &task_ops;
    s->base.finite = finite;
    s->task = *t;
    qkv_task_batch_init(&s->b, t, B);
    qkv_pcg32_seed(&s->rng, seed, finite ? 2 : 1);
    if (finite) qkv_task_sample(&s->task, &s->rng, &s->b);
    s->base.max_B = B;
    qkv_task_dims(t, &s->base.max_S, &s->base.max_T);
    return &s->base;
}

/* ---------------------------------------------------------------- corpora */

typedef struct corpus_source {
    qkv_source base;
    qkv_batcher it;
    qkv_corpus_batch b;
    qkv_pcg32 rng;       /* draws each epoch's shuffle */
    qkv_pcg32 epoch_rng; /* rng as this epoch began */
    int64_t epoch;
} corpus_source;

static void corpus_start_epoch(corpus_source *c) {
    c->epoch_rng = c->rng;
    qkv_batcher_epoch(&c->it, &c->rng);
}

static const qkv_batch *corpus_next(qkv_source *s) {
    corpus_source *c = (corpus_source *)s;
    if (qkv_batcher_next(&c->it, &c->b)) return &c->b.view;
    if (s->finite) return NULL;
    c->epoch++;
    corpus_start_epoch(c);
    qkv_batcher_next(&c->it, &c->b);
    return &c->b.view;
}

static void corpus_rewind(qkv_source *s) {
    corpus_source *c = (corpus_source *)s;
    if (s->finite)
        qkv_batcher_epoch(&c->it, NULL);
    else
        c->it.next = 0;
}

static void corpus_get_state(const qkv_source *s, qkv_source_state *st) {
    const corpus_source *c = (const corpus_source *)s;
    st->rng = c->epoch_rng;
    st->epoch = c->epoch;
    st->batch = c->it.next;
}

static int corpus_set_state(qkv_source *s, const qkv_source_state *st,
                            char *err, size_t errlen) {
    corpus_source *c = (corpus_source *)s;
    if (st->epoch < 1 || st->batch < 0 || st->batch > c->it.n_batches) {
        snprintf(err, errlen,
                 "epoch %lld, batch %lld is no position of this corpus (%d "
                 "batches an epoch; was the corpus changed?)",
                 (long long)st->epoch, (long long)st->batch, c->it.n_batches);
        return -1;
    }
    c->rng = st->rng;
    c->epoch = st->epoch;
    corpus_start_epoch(c);
    c->it.next = (int)st->batch;
    return 0;
}

static void corpus_free(qkv_source *s) {
    corpus_source *c = (corpus_source *)s;
    qkv_batcher_free(&c->it);
    qkv_corpus_batch_free(&c->b);
    free(c);
}

static const qkv_source_ops corpus_ops = {
    "corpus",         corpus_next,      corpus_rewind,
    corpus_get_state, corpus_set_state, corpus_free,
};

qkv_source *qkv_corpus_source(const qkv_pairs *p, int max_tokens, uint64_t seed,
                              int finite, char *err, size_t errlen) {
    corpus_source *c = qkv_calloc(1, sizeof *c, "batch source");
    if (qkv_batcher_init(&c->it, p, max_tokens, err, errlen)) {
        free(c);
        return NULL;
    }
    c->base.ops = &corpus_ops;
    c->base.finite = finite;
    c->base.epoch_batches = c->it.n_batches;
    qkv_corpus_batch_init(&c->b, max_tokens);
    qkv_pcg32_seed(&c->rng, seed, 1);
    c->epoch = 1;
    if (finite)
        qkv_batcher_epoch(&c->it, NULL);
    else
        corpus_start_epoch(c);
    /* the costliest batch: rows of the costliest pair */
    int cost = qkv_pairs_cost(p);
    c->base.max_B = max_tokens / cost;
    c->base.max_S = p->decoder_only ? 0 : p->longest_src;
    c->base.max_T = p->decoder_only ? cost : p->longest_tgt + 1;
    return &c->base;
}
