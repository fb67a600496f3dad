#include "trainer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"

const char *const qkv_phase_names[QKV_PHASE_COUNT] = {
    "data (batch)", "forward (loss)",   "zero grad",  "backward",
    "clip",         "optimiser (Adam)", "validation", "log + checkpoint"};

qkv_trainer_config qkv_trainer_defaults(qkv_optim_kind kind, float lr) {
    qkv_trainer_config c = {0};
    c.optim = qkv_optim_defaults(kind);
    c.schedule.kind = QKV_SCHEDULE_CONSTANT;
    c.schedule.lr = lr;
    c.clip = 1.0f;
    return c;
}

static void start(qkv_trainer *t, const qkv_trainer_config *c) {
    t->cfg = *c;
    qkv_graph_init(&t->graph, 0);
    t->graph.precision = c->precision;
    t->t0 = qkv_seconds();
}

void qkv_trainer_init(qkv_trainer *t, qkv_model *m,
                      const qkv_trainer_config *c) {
    memset(t, 0, sizeof *t);
    t->model = *m;
    memset(m, 0, sizeof *m);
    qkv_optim_init(&t->opt, &c->optim, &t->model.params);
    start(t, c);
}

void qkv_trainer_profile(qkv_trainer *t) {
    t->graph.profile = &t->prof;
}

/* Adds the seconds since *tp to phase k (with profiling on). */
static void phase(qkv_trainer *t, int k, double *tp) {
    if (!t->graph.profile) return;
    double now = qkv_seconds();
    t->phase[k] += now - *tp;
    *tp = now;
}

/* The loss and gradients of batch b: at once (one process, no accumulation:
 * the mean over b's targets), or slice by slice, each divided by b's whole
 * target count, this rank's slices only, then summed over the ranks. */
static void loss_and_grads(qkv_trainer *t, const qkv_batch *b, double *tp) {
    const qkv_trainer_config *c = &t->cfg;
    int ranks = qkv_comm_size(), micro = c->accum > 1 ? c->accum : 1;
    if (ranks == 1 && micro == 1) {
        qkv_graph_reset(&t->graph);
        qkv_tensor *loss =
            qkv_model_loss(&t->model, &t->graph, b, c->label_smoothing);
        t->loss = loss->data[0];
        phase(t, QKV_PHASE_LOSS, tp);
        qkv_params_zero_grad(&t->model.params);
        phase(t, QKV_PHASE_ZERO, tp);
        qkv_backward(&t->graph, loss);
        phase(t, QKV_PHASE_BACKWARD, tp);
        return;
    }
    double count = (double)qkv_batch_targets(b, t->model.cfg.pad_id);
    double loss = 0.0;
    int slices = ranks * micro, first = qkv_comm_rank() * micro, have = 0;
    qkv_params *ps = &t->model.params;
    if (!t->acc && micro > 1)
        t->acc = qkv_malloc_aligned(ps->n * sizeof *t->acc, "gradient sums");
    for (int s = first; s < first + micro; s++) {
        int r0 = (int)((long)b->B * s / slices);
        int r1 = (int)((long)b->B * (s + 1) / slices);
        if (r1 == r0) continue;
        qkv_batch part = qkv_batch_rows(b, r0, r1);
        qkv_graph_reset(&t->graph);
        qkv_tensor *l = qkv_model_loss_over(&t->model, &t->graph, &part,
                                            c->label_smoothing, count);
        loss += l->data[0];
        phase(t, QKV_PHASE_LOSS, tp);
        qkv_params_zero_grad(ps);
        phase(t, QKV_PHASE_ZERO, tp);
        qkv_backward(&t->graph, l);
        /* each slice's gradient whole, then added: g0 + g1 + ..., the sum
         * the all-reduce forms across ranks (K = 2 ranks are bit for bit one
         * process with --accum 2) */
        if (micro > 1) {
            float *acc = t->acc;
            const float *g = ps->grads;
            if (!have)
                memcpy(acc, g, ps->n * sizeof *acc);
            else
                for (size_t i = 0; i < ps->n; i++) acc[i] += g[i];
        }
        have = 1;
        phase(t, QKV_PHASE_BACKWARD, tp);
    }
    if (!have)
        qkv_params_zero_grad(ps); /* a rank with no rows adds nothing */
    else if (micro > 1)
        memcpy(ps->grads, t->acc, ps->n * sizeof *t->acc);
    /* one all-reduce of the gradients, one of the loss (no-ops alone) */
    qkv_comm_sum_floats(t->model.params.grads, t->model.params.n);
    qkv_comm_sum_doubles(&loss, 1);
    t->loss = (float)loss;
    phase(t, QKV_PHASE_BACKWARD, tp);
}

qkv_step_result qkv_trainer_step(qkv_trainer *t, const qkv_batch *b) {
    double tp = t->graph.profile ? qkv_seconds() : 0;
    const qkv_trainer_config *c = &t->cfg;
    qkv_params *ps = &t->model.params;
    t->step++;
    loss_and_grads(t, b, &tp);
    /* The norm comes free with clipping; without it (and without skipping),
     * a NaN gradient shows in the next loss, or in the weights at a save. */
    t->norm = c->clip > 0             ? qkv_clip_grad_norm(ps, c->clip)
              : c->skip_nonfinite > 0 ? qkv_grad_norm(ps)
                                      : 0;
    phase(t, QKV_PHASE_CLIP, &tp);
    t->lr = qkv_schedule_lr(&c->schedule, t->step);
    qkv_step_result r = QKV_STEP_OK;
    if (!isfinite(t->loss) || !isfinite(t->norm))
        r = t->skipped < c->skip_nonfinite ? QKV_STEP_SKIPPED
                                           : QKV_STEP_DIVERGED;
    if (r == QKV_STEP_SKIPPED) t->skipped++;
    if (r == QKV_STEP_OK) qkv_optim_step(&t->opt, ps, t->lr);
    phase(t, QKV_PHASE_OPTIM, &tp);
    t->tokens += qkv_batch_tokens(b);
    return r;
}

double qkv_trainer_seconds(const qkv_trainer *t) {
    return qkv_seconds() - t->t0;
}

/* ------------------------------------------------------------ checkpoints */

int qkv_trainer_save(const qkv_trainer *t, const char *path,
                     const qkv_source *data, const char *const *keys,
                     const char *const *vals, int n_extra, char *err,
                     size_t errlen) {
    if (qkv_comm_rank() != 0) return 0; /* every rank holds the same state */
    qkv_source_state st = {{0, 0}, 0, 0};
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "tokens", (double)t->tokens);
    /* milliseconds: the log's precision */
    cJSON_AddNumberToObject(j, "seconds",
                            round(qkv_trainer_seconds(t) * 1e3) / 1e3);
    cJSON_AddNumberToObject(j, "skipped", t->skipped);
    if (data) {
        qkv_source_get_state(data, &st);
        cJSON *d = cJSON_AddObjectToObject(j, "data");
        cJSON_AddStringToObject(d, "kind", data->ops->kind);
        cJSON_AddNumberToObject(d, "epoch", (double)st.epoch);
        cJSON_AddNumberToObject(d, "batch", (double)st.batch);
    }
    char *json = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!json) {
        snprintf(err, errlen, "%s: out of memory for its metadata", path);
        return -1;
    }
    int n = 1 + n_extra;
    const char **k = qkv_malloc((size_t)n * sizeof *k, "checkpoint keys");
    const char **v = qkv_malloc((size_t)n * sizeof *v, "checkpoint keys");
    k[0] = "trainer", v[0] = json;
    for (int i = 0; i < n_extra; i++) k[1 + i] = keys[i], v[1 + i] = vals[i];
    qkv_ckpt_rng r = {"data", &st.rng};
    int rc = qkv_ckpt_save(path, &t->model, &t->opt, t->step, &r, data ? 1 : 0,
                           k, v, n, err, errlen);
    free(k);
    free(v);
    free(json);
    return rc;
}

/* A whole, non-negative JSON number of o's key (at most max) into *x. */
static int get_count(const cJSON *o, const char *key, double max, double *x,
                     const char *path, char *err, size_t errlen) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(n) || !(n->valuedouble >= 0) || n->valuedouble > max) {
        snprintf(err, errlen,
                 "%s: the trainer state's \"%s\" is missing or not a count",
                 path, key);
        return -1;
    }
    *x = n->valuedouble;
    return 0;
}

/* The trainer's counters and data's position from the "trainer" metadata;
 * st->rng is already the file's. */
static int read_state(qkv_trainer *t, const qkv_st_file *meta, const char *path,
                      qkv_source *data, qkv_source_state *st, char *err,
                      size_t errlen) {
    const char *s = qkv_st_meta(meta, "trainer");
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        snprintf(err, errlen,
                 "%s has no trainer state to resume from (written by eval "
                 "tools, or an older qkv)",
                 path);
        return -1;
    }
    double tokens, secs, skipped, epoch = 0, batch = 0;
    int rc = get_count(j, "tokens", 9e15, &tokens, path, err, errlen) ||
             get_count(j, "seconds", 1e12, &secs, path, err, errlen) ||
             get_count(j, "skipped", 1e9, &skipped, path, err, errlen);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "data");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(d, "kind");
    if (!rc && (!cJSON_IsString(kind) ||
                strcmp(kind->valuestring, data->ops->kind) != 0)) {
        snprintf(err, errlen,
                 "%s: its data position is not of a %s (was the data "
                 "changed?)",
                 path, data->ops->kind);
        rc = -1;
    }
    rc = rc || get_count(d, "epoch", 1e15, &epoch, path, err, errlen) ||
         get_count(d, "batch", 1e15, &batch, path, err, errlen);
    cJSON_Delete(j);
    if (rc) return -1;
    t->tokens = (int64_t)tokens;
    t->t0 = qkv_seconds() - secs;
    t->skipped = (int)skipped;
    st->epoch = (int64_t)epoch;
    st->batch = (int64_t)batch;
    char why[300];
    if (qkv_source_set_state(data, st, why, sizeof why)) {
        snprintf(err, errlen, "%s: %s", path, why);
        return -1;
    }
    return 0;
}

int qkv_trainer_resume(qkv_trainer *t, const char *path,
                       const qkv_trainer_config *c, qkv_source *data,
                       qkv_st_file *meta_out, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    qkv_source_state st = {{0, 1}, 0, 0};
    qkv_ckpt_rng r = {"data", &st.rng};
    qkv_st_file meta = {0};
    if (qkv_ckpt_load(path, &t->model, &t->opt, &t->step, &r, 1, &meta, err,
                      errlen))
        return -1;
    int rc = 0;
    if (t->opt.n && t->opt.cfg.kind != c->optim.kind) {
        static const char *const names[] = {"adam", "adamw", "sgd"};
        snprintf(err, errlen,
                 "%s: its optimiser state is %s's, not the %s asked for", path,
                 names[t->opt.cfg.kind], names[c->optim.kind]);
        rc = -1;
    }
    start(t, c);
    if (!rc) rc = read_state(t, &meta, path, data, &st, err, errlen);
    if (rc) {
        qkv_st_free(&meta);
        qkv_trainer_free(t);
        return -1;
    }
    if (!t->opt.n) qkv_optim_init(&t->opt, &c->optim, &t->model.params);
    if (meta_out)
        *meta_out = meta;
    else
        qkv_st_free(&meta);
    return 0;
}

void qkv_trainer_free(qkv_trainer *t) {
    free(t->acc);
    qkv_graph_free(&t->graph);
    qkv_optim_free(&t->opt);
    qkv_model_free(&t->model);
    memset(t, 0, sizeof *t);
}
