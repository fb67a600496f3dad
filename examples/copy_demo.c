/* copy_demo - train the copy task end to end and log the loss curve.
 *
 * The Annotated Transformer's first experiment: an encoder-decoder (N = 2,
 * h = 4, d_model = 64) learns to copy 10 random symbols of a vocabulary of 11
 * (pad and BOS included). Prints progress, writes DIR/log.csv (step, tokens,
 * seconds, lr, train_loss, val_loss, val_acc) and decodes a few examples.
 * `make demo` runs it and plots the CSV with gnuplot.
 *
 *   copy_demo [DIR [STEPS [SEED]]]        defaults: runs/copy 800 42
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "optim.h"
#include "tasks.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Parses a positive integer argument or exits with a one-line error. */
static long arg_int(const char *what, const char *s, long max) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 1 || v > max) {
        fprintf(stderr,
                "copy_demo: %s must be an integer in 1..%ld, got '%s'\n", what,
                max, s);
        exit(2);
    }
    return v;
}

/* Loss on a fixed validation batch and exact match of greedy decoding. */
static void validate(qkv_model *m, qkv_graph *g, const qkv_task *t,
                     qkv_task_batch *vb, float *loss, float *acc) {
    int was = qkv_graph_set_grad(g, 0);
    g->training = 0;
    qkv_graph_reset(g);
    *loss = qkv_model_loss(m, g, &vb->view, 0.0f)->data[0];
    int B = vb->view.B, L = t->max_len, right = 0;
    int32_t *out = malloc((size_t)B * L * sizeof *out);
    qkv_model_greedy(m, g, vb->src, vb->src_pad, B, vb->view.S, QKV_BOS, -1, L,
                     out);
    for (int i = 0; i < B; i++)
        right += memcmp(out + (size_t)i * L, vb->src + (size_t)i * vb->view.S,
                        (size_t)L * sizeof *out) == 0;
    *acc = (float)right / (float)B;
    free(out);
    g->training = 1;
    qkv_graph_set_grad(g, was);
}

/* mkdir -p: creates dir and its missing parents. */
static int make_dirs(const char *dir) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return -1;
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0777) && errno != EEXIST) return -1;
            *s = '/';
        }
    return mkdir(p, 0777) && errno != EEXIST ? -1 : 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "runs/copy";
    int steps = argc > 2 ? (int)arg_int("STEPS", argv[2], 10000000) : 800;
    uint64_t seed =
        argc > 3 ? (uint64_t)arg_int("SEED", argv[3], 1L << 30) : 42;
    if (make_dirs(dir)) {
        fprintf(stderr, "copy_demo: cannot create %s: %s\n", dir,
                strerror(errno));
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    FILE *log = fopen(path, "w");
    if (!log) {
        fprintf(stderr, "copy_demo: cannot write %s: %s\n", path,
                strerror(errno));
        return 1;
    }

    qkv_task task = {QKV_TASK_COPY, 11, 10, 10, 0, 0};
    qkv_model_config c = qkv_model_defaults(QKV_MODEL_ENCDEC);
    c.src_vocab = c.tgt_vocab = task.vocab;
    c.d_ff = 128;
    c.max_len = 32;
    c.dropout = 0.0f;
    qkv_model m;
    char err[200];
    if (qkv_model_init(&m, &c, seed, err, sizeof err)) {
        fprintf(stderr, "copy_demo: %s\n", err);
        return 1;
    }
    qkv_optim opt;
    qkv_optim_config oc = qkv_optim_defaults(QKV_OPTIM_ADAM);
    qkv_optim_init(&opt, &oc, &m.params);
    qkv_schedule sched = {QKV_SCHEDULE_COSINE,
                          2e-3f,
                          steps < 400 ? steps / 4 : 100,
                          steps,
                          1e-4f,
                          0};
    printf(
        "copy task: encoder-decoder N=%d+%d h=%d d_model=%d, %zu parameters, "
        "%d steps, seed %llu\n",
        c.n_enc, c.n_dec, c.heads, c.d_model, m.params.n, steps,
        (unsigned long long)seed);

    qkv_pcg32 data, vdata;
    qkv_pcg32_seed(&data, seed, 1);
    qkv_pcg32_seed(&vdata, seed, 2);
    qkv_task_batch b, vb;
    qkv_task_batch_init(&b, &task, 64);
    qkv_task_batch_init(&vb, &task, 200);
    qkv_task_sample(&task, &vdata, &vb);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    fprintf(log, "step,tokens,seconds,lr,train_loss,val_loss,val_acc\n");
    double t0 = now();
    long tokens = 0;
    for (int step = 1; step <= steps; step++) {
        qkv_task_sample(&task, &data, &b);
        qkv_graph_reset(&g);
        qkv_tensor *loss = qkv_model_loss(&m, &g, &b.view, 0.0f);
        float train_loss = loss->data[0]; /* validate() resets the arena */
        qkv_params_zero_grad(&m.params);
        qkv_backward(&g, loss);
        qkv_clip_grad_norm(&m.params, 1.0f);
        float lr = qkv_schedule_lr(&sched, step);
        qkv_optim_step(&opt, &m.params, lr);
        tokens += (long)b.view.B * (b.view.S + b.view.T);
        int eval = step % 50 == 0 || step == steps;
        float vloss = 0, vacc = 0;
        if (eval) validate(&m, &g, &task, &vb, &vloss, &vacc);
        double secs = now() - t0;
        fprintf(log, "%d,%ld,%.3f,%.6g,%.6f,", step, tokens, secs, (double)lr,
                (double)train_loss);
        if (eval)
            fprintf(log, "%.6f,%.4f\n", (double)vloss, (double)vacc);
        else
            fprintf(log, ",\n");
        if (eval)
            printf("step %5d/%d  loss %.4f  val loss %.4f  val exact match "
                   "%5.1f%%  %.0f tok/s\n",
                   step, steps, (double)train_loss, (double)vloss, 100.0 * vacc,
                   tokens / secs);
    }
    if (fclose(log)) {
        fprintf(stderr, "copy_demo: writing %s failed\n", path);
        return 1;
    }
    printf("wrote %s (%.1f s)\n", path, now() - t0);

    /* three fresh examples */
    int32_t out[3 * 10];
    qkv_task_batch e;
    qkv_task_batch_init(&e, &task, 3);
    qkv_task_sample(&task, &vdata, &e);
    qkv_model_greedy(&m, &g, e.src, e.src_pad, 3, e.view.S, QKV_BOS, -1, 10,
                     out);
    for (int i = 0; i < 3; i++) {
        printf("  input ");
        for (int j = 0; j < 10; j++) printf(" %2d", e.src[i * 10 + j]);
        printf("   ->  output");
        for (int j = 0; j < 10; j++) printf(" %2d", out[i * 10 + j]);
        printf("\n");
    }
    qkv_task_batch_free(&e);
    qkv_task_batch_free(&b);
    qkv_task_batch_free(&vb);
    qkv_graph_free(&g);
    qkv_optim_free(&opt);
    qkv_model_free(&m);
    return 0;
}
