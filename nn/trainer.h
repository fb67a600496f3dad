/* trainer.h - the training step, written once.
 *
 * A trainer owns a model, its optimiser, the learning-rate schedule,
 * gradient clipping and the graph, and counts what a run has done (steps,
 * tokens, skipped steps, time). One step: the batch's loss (forward with the
 * tape), zeroed gradients, backward, clipping by global norm, the scheduled
 * learning rate, the optimiser's update. The command line, every test, the
 * benchmark and the golden test call this step; nothing else trains.
 *
 * Data-parallel (comm.h, `mpirun -np K` of an MPI build): every rank holds
 * the whole model and is handed the whole batch; rank r runs forward and
 * backward on its slice (rows r B/K .. (r+1) B/K, each scored against the
 * whole batch's token count), one all-reduce sums the flat gradient buffer,
 * and every rank makes the same update, the one a single process would make
 * (up to the order of float sums). Clipping sees the global norm. With
 * accumulation each rank's slice is cut again into micro-batches.
 *
 * Its whole state saves into one checkpoint (checkpoint.h) and loads back
 * from it: weights, optimiser moments, the dropout generator, the step, and
 * the batch source's position, so a resumed run draws the very batches the
 * uninterrupted one would have and its losses agree bit for bit.
 *
 *   qkv_model m;
 *   if (qkv_model_init(&m, &cfg, seed, err, sizeof err)) die(err);
 *   qkv_trainer t;
 *   qkv_trainer_init(&t, &m, &tc);      // t owns the model now
 *   for (int i = 0; i < steps; i++)
 *       if (qkv_trainer_step(&t, qkv_source_next(data)) == QKV_STEP_DIVERGED)
 *           break;
 *   qkv_trainer_save(&t, "run/ckpt.safetensors", data, NULL, NULL, 0, err,
 *                    sizeof err);
 *   qkv_trainer_free(&t);
 */
#ifndef QKV_TRAINER_H
#define QKV_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "optim.h"
#include "safetensors.h"
#include "source.h"

typedef struct qkv_trainer_config {
    qkv_optim_config optim;
    qkv_schedule schedule;
    float clip;            /* clip gradients to this global norm; 0: off */
    float label_smoothing; /* of the loss, 0..1 */
    /* Steps whose loss or gradient norm is not finite are skipped (no
     * update) up to this many times; the next one ends the run (0: the
     * first does). */
    int skip_nonfinite;
    /* Gradient accumulation: each batch is cut into this many micro-batches
     * of consecutive rows, run one after another (less activation memory)
     * and scored against the whole batch's token count: the update is the
     * whole batch's. 0 or 1: the batch at once. */
    int accum;
    /* The linear layers' products in fp32 (0, the default) or in bf16 with
     * fp32 sums (QKV_BF16, tape.h); weights, gradients and the optimiser
     * stay fp32, and so do checkpoints. */
    qkv_precision precision;
} qkv_trainer_config;

/* A trainer config with the optimiser's defaults, a constant learning rate
 * lr, clipping at 1 and nothing else. */
qkv_trainer_config qkv_trainer_defaults(qkv_optim_kind kind, float lr);

/* Where a step's time goes (qkv_trainer.phase, with profiling on). The
 * trainer times LOSS..OPTIM; its caller times the others. */
enum {
    QKV_PHASE_DATA,
    QKV_PHASE_LOSS,
    QKV_PHASE_ZERO,
    QKV_PHASE_BACKWARD,
    QKV_PHASE_CLIP,
    QKV_PHASE_OPTIM,
    QKV_PHASE_VALID,
    QKV_PHASE_LOG,
    QKV_PHASE_COUNT
};
extern const char *const qkv_phase_names[QKV_PHASE_COUNT];

typedef enum qkv_step_result {
    QKV_STEP_OK,      /* the model was updated */
    QKV_STEP_SKIPPED, /* not finite, skipped (skip_nonfinite allowed it) */
    QKV_STEP_DIVERGED /* not finite, and no skips left: stop */
} qkv_step_result;

typedef struct qkv_trainer {
    qkv_model model;
    qkv_optim opt;
    qkv_trainer_config cfg;
    qkv_graph graph;
    int64_t step;   /* steps taken; the next one is step + 1 */
    int64_t tokens; /* non-pad tokens of the batches stepped on */
    int skipped;    /* steps skipped as not finite */
    double t0;      /* qkv_seconds() when the run began (earlier sessions
                     * included, so the clock goes on after a resume) */
    /* the last step's */
    float loss; /* mean cross-entropy of the batch */
    float norm; /* gradient norm before clipping (0 when it was not needed) */
    float lr;
    /* Profiling: with profile on, the graph times each op kind (tape.h) and
     * phase[] sums the seconds of each phase of the steps. */
    qkv_profile prof;
    double phase[QKV_PHASE_COUNT];
    float *acc; /* (n) the slices' gradient sum, with accumulation */
} qkv_trainer;

/* Takes over m (allocated; *m is zeroed: the trainer frees it) and starts a
 * fresh optimiser on its parameters. The clock starts now. */
void qkv_trainer_init(qkv_trainer *t, qkv_model *m,
                      const qkv_trainer_config *c);

/* Continues the run saved at path: the model, optimiser state (or a fresh
 * optimiser if the file has none), step, counters and the dropout
 * generator, and data's position (which must be of the same kind and data:
 * a source made as the run's was). c gives what the file does not hold
 * (schedule, clipping, ...); its optimiser must be of the file's kind.
 * meta_out, if non-NULL, receives the file's metadata (free with
 * qkv_st_free). 0, or -1 with one line naming path in err and nothing to
 * free. */
int qkv_trainer_resume(qkv_trainer *t, const char *path,
                       const qkv_trainer_config *c, qkv_source *data,
                       qkv_st_file *meta_out, char *err, size_t errlen);

/* Turns the profile on (once, before the first step). */
void qkv_trainer_profile(qkv_trainer *t);

/* One training step on batch b; updates step, tokens, skipped, loss, norm
 * and lr. */
qkv_step_result qkv_trainer_step(qkv_trainer *t, const qkv_batch *b);

/* Seconds since the run began. */
double qkv_trainer_seconds(const qkv_trainer *t);

/* Writes the checkpoint (atomically): model, optimiser, dropout generator,
 * step, and the trainer's state as typed JSON in the metadata key
 * "trainer": {"tokens": N, "seconds": S, "skipped": N, "data": {"kind":
 * "corpus", "epoch": N, "batch": N}} with data's generator as "rng.data";
 * then n_extra string pairs of the caller's. data may be NULL (no
 * position). Only rank 0 writes (the ranks' states are the same); the
 * others return 0. 0, or -1 with one line in err. */
int qkv_trainer_save(const qkv_trainer *t, const char *path,
                     const qkv_source *data, const char *const *keys,
                     const char *const *vals, int n_extra, char *err,
                     size_t errlen);

void qkv_trainer_free(qkv_trainer *t);

#endif
