/* End-to-end learning: the models must learn the toy tasks, judged by exact
 * match of greedy decoding on 200 fresh random sequences, and a run must
 * repeat bit for bit with 1 and 2 threads. Prints steps and seconds. */

#include <math.h>

#include "eval.h"
#include "test.h"
#include "trainer.h"

/* QUICK (test.h: sanitizers, valgrind): each case trains a few steps and
 * decodes a few sequences, a memory-safety pass over the same code paths; the
 * accuracy targets are asserted by the normal build's `make test`. */

typedef struct learn_case {
    const char *name;
    qkv_task task;
    qkv_model_config mc;
    int batch, max_steps, eval_every;
    float lr, target; /* exact-match accuracy to reach */
} learn_case;

/* The tiny model, twice as wide and deep: D 64, H 4, F 128, 2 + 2 layers. */
static qkv_model_config model_for(qkv_model_kind kind, int vocab) {
    qkv_model_config c = test_tiny_config(kind, vocab);
    c.d_model = 64;
    c.heads = 4;
    c.d_ff = 128;
    c.n_enc = kind == QKV_MODEL_ENCDEC ? 2 : 0;
    c.n_dec = 2;
    return c;
}

/* Exact-match accuracy of greedy decoding on n fresh sequences, drawn from
 * another seed than training's. */
static double exact_match(qkv_trainer *t, const qkv_task *task, int n) {
    qkv_source *valid = qkv_task_source(task, n, 777, 1);
    qkv_eval_opts eo = {task->use_eos ? QKV_EOS : -1, 1, 0.0f, 0, NULL, NULL};
    qkv_scores s;
    qkv_evaluate(&t->model, &t->graph, valid, &eo, &s);
    qkv_source_free(valid);
    /* a perfect output scores BLEU 100 (task symbol 3 is no <unk>) */
    if (qkv_scores_exact(&s) == 1.0)
        CHECK(fabs(qkv_scores_bleu(&s) - 100.0) < 1e-9 &&
                  fabs(qkv_scores_token_bleu(&s) - 100.0) < 1e-9,
              "100%% exact match but BLEU %.4f, token BLEU %.4f",
              qkv_scores_bleu(&s), qkv_scores_token_bleu(&s));
    return qkv_scores_exact(&s);
}

/* Trains until the target accuracy (checked every eval_every steps) or
 * max_steps; returns the final accuracy. losses (if non-NULL) gets the
 * loss of every step. */
static size_t n_params; /* of the last model trained */

static double train(const learn_case *lc, int threads, float *losses,
                    int *steps, double *seconds) {
    qkv_set_threads(threads);
    qkv_model m;
    test_tiny_model(&m, &lc->mc, 42);
    n_params = m.params.n;
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, lc->lr);
    int warm = lc->max_steps < 1000 ? lc->max_steps / 4 : 100;
    qkv_schedule sched = {QKV_SCHEDULE_COSINE, lc->lr,      warm,
                          lc->max_steps,       lc->lr / 20, 0};
    tc.schedule = sched;
    qkv_trainer t;
    qkv_trainer_init(&t, &m, &tc);
    qkv_source *data = qkv_task_source(&lc->task, lc->batch, 42, 0);
    double t0 = qkv_seconds(), acc = 0;
    int step;
    for (step = 1; step <= lc->max_steps; step++) {
        qkv_trainer_step(&t, qkv_source_next(data));
        if (losses) losses[step - 1] = t.loss;
        if (lc->eval_every && step % lc->eval_every == 0) {
            acc = exact_match(&t, &lc->task, QUICK ? 10 : 200);
            if (acc >= lc->target) break;
        }
    }
    *seconds = qkv_seconds() - t0;
    *steps = step > lc->max_steps ? lc->max_steps : step;
    qkv_source_free(data);
    qkv_trainer_free(&t);
    return acc;
}

static void run_case(const learn_case *lc0) {
    learn_case quick = *lc0, *lc = &quick;
    if (QUICK) {
        quick.max_steps = quick.eval_every = 20;
        quick.batch = 8;
    }
    int steps = 0;
    double secs = 0, acc = train(lc, 2, NULL, &steps, &secs);
    if (QUICK) {
        printf("  %-24s quick pass: %d steps, %.1f%% exact match\n", lc->name,
               steps, 100 * acc);
        return;
    }
    printf(
        "  %-24s %5.1f%% exact match after %d steps, %.1f s, %zu parameters\n",
        lc->name, 100 * acc, steps, secs, n_params);
    CHECK(acc >= lc->target, "%s: %.1f%% < %.1f%%", lc->name, 100 * acc,
          100 * lc->target);
}

/* One learning case: batch 64, up to 3000 steps, evaluated every 100, peak
 * learning rate 2e-3; passes at `target` exact match. */
static void learn(const char *name, qkv_task task, qkv_model_kind kind,
                  float target) {
    learn_case lc = {name,  task,  model_for(kind, task.vocab), 64, 3000, 100,
                     2e-3f, target};
    run_case(&lc);
}

static void test_copy_encdec(void) {
    learn("copy (enc-dec)", (qkv_task){QKV_TASK_COPY, 11, 10, 10, 0, 0},
          QKV_MODEL_ENCDEC, 1.0f);
}
static void test_reverse_encdec(void) {
    learn("reverse (enc-dec)", (qkv_task){QKV_TASK_REVERSE, 11, 10, 10, 0, 0},
          QKV_MODEL_ENCDEC, 0.99f);
}
static void test_copy_decoder_only(void) {
    learn("copy x BOS x (decoder)", (qkv_task){QKV_TASK_COPY, 11, 10, 10, 0, 1},
          QKV_MODEL_DECODER, 0.99f);
}
static void test_sort_varying_lengths_decoder_only(void) {
    learn("sort 3-6 + eos (decoder)", (qkv_task){QKV_TASK_SORT, 12, 3, 6, 1, 1},
          QKV_MODEL_DECODER, 0.99f);
}

static void test_same_seed_same_curve_any_threads(void) {
    learn_case lc = {"determinism",
                     {QKV_TASK_COPY, 11, 10, 10, 0, 0},
                     model_for(QKV_MODEL_ENCDEC, 11),
                     32,
                     40,
                     0,
                     2e-3f,
                     0};
    lc.mc.dropout = 0.1f; /* dropout masks too must repeat */
    if (QUICK) lc.batch = 4;
    float a[40], b[40], c[40];
    int steps;
    double secs;
    train(&lc, 1, a, &steps, &secs);
    train(&lc, 2, b, &steps, &secs);
    train(&lc, 2, c, &steps, &secs);
    CHECK(memcmp(a, b, sizeof a) == 0, "1 and 2 threads differ");
    CHECK(memcmp(b, c, sizeof b) == 0, "two runs differ");
    CHECK(a[39] < a[0], "loss did not fall: %g -> %g", (double)a[0],
          (double)a[39]);
}

int main(void) {
    test_prog = "learn";
    RUN(test_same_seed_same_curve_any_threads);
    RUN(test_copy_encdec);
    RUN(test_reverse_encdec);
    RUN(test_copy_decoder_only);
    RUN(test_sort_varying_lengths_decoder_only);
    return test_summary();
}
