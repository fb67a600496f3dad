/* qkv - train transformers from the terminal.
 *
 *   qkv train --task copy --N 2 --h 4 --steps 800 --out runs/copy
 *   qkv --help | qkv train --help
 *
 * This version trains on the generated tasks (copy, reverse, sort), writes
 * DIR/log.csv, DIR/config.json and DIR/ckpt.safetensors (every --save-every
 * steps, at the end, and on Ctrl-C), and `--resume DIR` continues a run bit
 * for bit. Corpora, eval, decode, sweep, plot and attn arrive with issues 4
 * and 5.
 *
 * Every flag lives in one table (name, type, where it goes, help), which the
 * parser, --help and config.json all read, so they cannot disagree.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <signal.h>

#include "checkpoint.h"
#include "optim.h"
#include "tasks.h"

/* ------------------------------------------------------------------ flags */

typedef enum flag_type { FLAG_INT, FLAG_FLOAT, FLAG_STR, FLAG_BOOL } flag_type;

typedef struct flag {
    const char *name; /* without the leading "--" */
    flag_type type;
    void *dst;           /* int*, float*, const char**, int* */
    const char *choices; /* FLAG_STR: "a|b|c" or NULL for any string */
    const char *help;
} flag;

static void die(const char *fmt, ...) QKV_PRINTF(1, 2);
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("qkv: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

/* 1 if s is one of the '|'-separated words of choices. */
static int is_choice(const char *s, const char *choices) {
    size_t n = strlen(s);
    for (const char *c = choices; *c;) {
        const char *end = strchr(c, '|');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == n && strncmp(c, s, n) == 0) return 1;
        if (!end) break;
        c = end + 1;
    }
    return 0;
}

static void set_flag(const char *cmd, const flag *f, const char *v) {
    char *end;
    errno = 0;
    switch (f->type) {
    case FLAG_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < INT_MIN || x > INT_MAX)
            die("%s: --%s wants an integer, got '%s'", cmd, f->name, v);
        *(int *)f->dst = (int)x;
        break;
    }
    case FLAG_FLOAT: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x))
            die("%s: --%s wants a number, got '%s'", cmd, f->name, v);
        *(float *)f->dst = (float)x;
        break;
    }
    case FLAG_STR:
        if (f->choices && !is_choice(v, f->choices))
            die("%s: --%s must be one of %s, got '%s'", cmd, f->name,
                f->choices, v);
        *(const char **)f->dst = v;
        break;
    case FLAG_BOOL:
        *(int *)f->dst = 1;
        break;
    }
}

static void print_help(const char *cmd, const char *usage, const flag *flags,
                       int n) {
    printf("usage: qkv %s %s\n\n", cmd, usage);
    for (int i = 0; i < n; i++) {
        const flag *f = &flags[i];
        char def[64] = "";
        switch (f->type) {
        case FLAG_INT:
            snprintf(def, sizeof def, "%d", *(int *)f->dst);
            break;
        case FLAG_FLOAT:
            snprintf(def, sizeof def, "%g", (double)*(float *)f->dst);
            break;
        case FLAG_STR:
            snprintf(def, sizeof def, "%s", *(const char **)f->dst);
            break;
        case FLAG_BOOL:
            snprintf(def, sizeof def, "off");
            break;
        }
        char name[48];
        snprintf(name, sizeof name, "--%s%s", f->name,
                 f->type == FLAG_BOOL ? ""
                 : f->choices         ? " WORD"
                                      : " N");
        printf("  %-22s %s (default %s)\n", name, f->help, def);
    }
}

/* Parses argv[first..] against flags; --help prints and exits 0. */
static void parse_flags(const char *cmd, const char *usage, const flag *flags,
                        int n, int argc, char **argv, int first) {
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help(cmd, usage, flags, n);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0)
            die("%s: unexpected argument '%s'", cmd, a);
        const flag *f = NULL;
        for (int k = 0; k < n && !f; k++)
            if (strcmp(a + 2, flags[k].name) == 0) f = &flags[k];
        if (!f) die("%s: unknown flag %s (see qkv %s --help)", cmd, a, cmd);
        if (f->type == FLAG_BOOL) {
            set_flag(cmd, f, "");
            continue;
        }
        if (i + 1 >= argc) die("%s: %s needs a value", cmd, a);
        set_flag(cmd, f, argv[++i]);
    }
}

/* config.json: every flag's final value. */
static char *flags_json(const flag *flags, int n) {
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < n; i++) {
        const flag *f = &flags[i];
        switch (f->type) {
        case FLAG_INT:
            cJSON_AddNumberToObject(o, f->name, *(int *)f->dst);
            break;
        case FLAG_FLOAT:
            cJSON_AddNumberToObject(o, f->name, *(float *)f->dst);
            break;
        case FLAG_STR:
            cJSON_AddStringToObject(o, f->name, *(const char **)f->dst);
            break;
        case FLAG_BOOL:
            cJSON_AddBoolToObject(o, f->name, *(int *)f->dst);
            break;
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* Sets every flag found in a config.json object (strings point into j). */
static void flags_from_json(const char *cmd, const flag *flags, int n,
                            const cJSON *j) {
    for (int i = 0; i < n; i++) {
        const flag *f = &flags[i];
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, f->name);
        if (!v) continue;
        int ok = f->type == FLAG_STR ? cJSON_IsString(v)
                 : f->type == FLAG_BOOL ? cJSON_IsBool(v)
                                        : cJSON_IsNumber(v);
        if (!ok) die("%s: the saved setting %s has the wrong type", cmd, f->name);
        switch (f->type) {
        case FLAG_INT: *(int *)f->dst = v->valueint; break;
        case FLAG_FLOAT: *(float *)f->dst = (float)v->valuedouble; break;
        case FLAG_STR: *(const char **)f->dst = v->valuestring; break;
        case FLAG_BOOL: *(int *)f->dst = cJSON_IsTrue(v); break;
        }
    }
}

/* ------------------------------------------------------------------ train */

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* Keeps the rows of log.csv up to `step` (a resumed run rewrites the rest). */
static FILE *reopen_log(const char *path, int step) {
    FILE *in = fopen(path, "r");
    if (!in) die("train: --resume: cannot read %s: %s", path, strerror(errno));
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out) die("train: cannot write %s: %s", tmp, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int first = 1;
    while (getline(&line, &cap, in) > 0) {
        if (first || atoi(line) <= step) fputs(line, out);
        first = 0;
    }
    free(line);
    fclose(in);
    if (fclose(out) || rename(tmp, path)) die("train: cannot rewrite %s", path);
    FILE *log = fopen(path, "a");
    if (!log) die("train: cannot append to %s: %s", path, strerror(errno));
    return log;
}

typedef struct train_opts {
    const char *task, *model, *pos, *norm, *act, *optim, *schedule, *out;
    int vocab, min_len, max_len;
    int N, n_enc, n_dec, h, d_model, d_ff;
    float dropout, label_smoothing, lr, clip, weight_decay;
    int warmup, batch, steps, seed, threads, eval_every, eval_size, quiet;
    int save_every;
    const char *resume;
} train_opts;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void make_dirs(const char *dir) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        die("train: --out path is too long");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || !*s) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0777) && errno != EEXIST)
                die("train: cannot create %s: %s", p, strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
}

/* Writes path atomically (temp file + rename) so a crash never leaves half a
 * file. */
static void write_file(const char *path, const char *text) {
    char tmp[4300];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >=
        (int)sizeof tmp)
        die("path %s is too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f) die("cannot write %s: %s", tmp, strerror(errno));
    int ok = fputs(text, f) >= 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path)) {
        remove(tmp);
        die("cannot write %s: %s", path, strerror(errno));
    }
}

/* Validation: loss on a fixed batch and greedy exact match. */
static void validate(qkv_model *m, qkv_graph *g, const qkv_task *t,
                     qkv_task_batch *vb, float *loss, float *acc) {
    int was = qkv_graph_set_grad(g, 0), train = g->training;
    g->training = 0;
    qkv_graph_reset(g);
    *loss = qkv_model_loss(m, g, &vb->view, 0.0f)->data[0];
    *acc = (float)qkv_task_exact_match(m, g, t, vb);
    g->training = train;
    qkv_graph_set_grad(g, was);
}

static int cmd_train(int argc, char **argv) {
    train_opts o = {
        .task = "copy",
        .model = "encdec",
        .pos = "sin",
        .norm = "post",
        .act = "relu",
        .optim = "adam",
        .schedule = "cosine",
        .out = "runs/qkv",
        .vocab = 11,
        .min_len = 10,
        .max_len = 10,
        .N = 2,
        .n_enc = 0,
        .n_dec = 0,
        .h = 4,
        .d_model = 64,
        .d_ff = 128,
        .dropout = 0.0f,
        .label_smoothing = 0.0f,
        .lr = 2e-3f,
        .clip = 1.0f,
        .weight_decay = 0.01f,
        .warmup = 100,
        .batch = 64,
        .steps = 800,
        .seed = 42,
        .threads = 0,
        .eval_every = 50,
        .eval_size = 200,
        .quiet = 0, .save_every = 0, .resume = "",
    };
    const flag flags[] = {
        {"task", FLAG_STR, &o.task, "copy|reverse|sort", "generated task"},
        {"vocab", FLAG_INT, &o.vocab, NULL,
         "task vocabulary, specials included"},
        {"min-len", FLAG_INT, &o.min_len, NULL, "shortest task sequence"},
        {"max-len", FLAG_INT, &o.max_len, NULL,
         "longest task sequence (varying lengths add an eos)"},
        {"model", FLAG_STR, &o.model, "encdec|decoder",
         "encoder-decoder or decoder-only"},
        {"N", FLAG_INT, &o.N, NULL, "layers in each stack"},
        {"N-enc", FLAG_INT, &o.n_enc, NULL, "encoder layers (0: --N)"},
        {"N-dec", FLAG_INT, &o.n_dec, NULL, "decoder layers (0: --N)"},
        {"h", FLAG_INT, &o.h, NULL, "attention heads; must divide d-model"},
        {"d-model", FLAG_INT, &o.d_model, NULL, "model width"},
        {"d-ff", FLAG_INT, &o.d_ff, NULL, "feed-forward width"},
        {"dropout", FLAG_FLOAT, &o.dropout, NULL,
         "dropout on sub-layer outputs and embeddings"},
        {"pos", FLAG_STR, &o.pos, "sin|learned", "positional encoding"},
        {"norm", FLAG_STR, &o.norm, "post|pre", "layer norm placement"},
        {"act", FLAG_STR, &o.act, "relu|gelu", "feed-forward activation"},
        {"label-smoothing", FLAG_FLOAT, &o.label_smoothing, NULL,
         "label smoothing"},
        {"optim", FLAG_STR, &o.optim, "adam|adamw|sgd", "optimiser"},
        {"lr", FLAG_FLOAT, &o.lr, NULL, "learning rate (noam: the factor)"},
        {"weight-decay", FLAG_FLOAT, &o.weight_decay, NULL,
         "adamw decoupled weight decay"},
        {"schedule", FLAG_STR, &o.schedule, "const|noam|cosine",
         "learning-rate schedule"},
        {"warmup", FLAG_INT, &o.warmup, NULL, "warm-up steps (noam, cosine)"},
        {"clip", FLAG_FLOAT, &o.clip, NULL,
         "gradient clipping by global norm (0: off)"},
        {"batch", FLAG_INT, &o.batch, NULL, "sequences per step"},
        {"steps", FLAG_INT, &o.steps, NULL, "training steps"},
        {"seed", FLAG_INT, &o.seed, NULL,
         "PCG32 seed for weights, data and dropout"},
        {"threads", FLAG_INT, &o.threads, NULL,
         "OpenMP threads (0: all cores)"},
        {"eval-every", FLAG_INT, &o.eval_every, NULL,
         "steps between validations"},
        {"eval-size", FLAG_INT, &o.eval_size, NULL, "validation sequences"},
        {"out", FLAG_STR, &o.out, NULL, "run directory (log.csv, config.json, ckpt.safetensors)"},
        {"save-every", FLAG_INT, &o.save_every, NULL, "steps between checkpoints (0: only at the end)"},
        {"resume", FLAG_STR, &o.resume, NULL, "continue the run in this directory where it stopped"},
        {"quiet", FLAG_BOOL, &o.quiet, NULL, "print only the final line"},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    parse_flags("train", "[flags]", flags, nf, argc, argv, 2);

    /* --resume: the checkpoint holds the run's settings; only these may be
     * given again (more --steps extends the run with a new schedule). */
    qkv_st_file meta = {0};
    cJSON *saved = NULL;
    char err[256], ckpt_path[4200];
    if (*o.resume) {
        const char *keep[] = {"resume", "threads", "quiet", "steps", "save-every"};
        for (int i = 2; i < argc; i++) {
            if (strncmp(argv[i], "--", 2) != 0) continue;
            int ok = 0;
            for (size_t k = 0; k < sizeof keep / sizeof *keep; k++)
                ok |= strcmp(argv[i] + 2, keep[k]) == 0;
            if (!ok)
                die("train: %s cannot change when resuming (the checkpoint "
                    "holds the run's settings)", argv[i]);
        }
        if (strlen(o.resume) > 4000) die("train: --resume path is too long");
        snprintf(ckpt_path, sizeof ckpt_path, "%s/ckpt.safetensors", o.resume);
        qkv_model probe;
        if (qkv_ckpt_load(ckpt_path, &probe, NULL, NULL, NULL, 0, &meta, err, sizeof err))
            die("train: --resume: %s", err);
        qkv_model_free(&probe);
        const char *cli = qkv_st_meta(&meta, "cli");
        if (!cli || !(saved = cJSON_Parse(cli)))
            die("train: --resume: %s was not written by qkv train (no settings)", ckpt_path);
        const char *dir = o.resume;
        flags_from_json("train", flags, nf, saved);
        parse_flags("train", "[flags]", flags, nf, argc, argv, 2);
        o.out = dir;
        o.resume = dir;
    }

    /* Everything is checked before anything is written. */
    if (o.steps < 1) die("train: --steps must be positive, got %d", o.steps);
    if (o.batch < 1) die("train: --batch must be positive, got %d", o.batch);
    if (o.eval_every < 1)
        die("train: --eval-every must be positive, got %d", o.eval_every);
    if (o.eval_size < 1)
        die("train: --eval-size must be positive, got %d", o.eval_size);
    if (o.threads < 0) die("train: --threads must be >= 0, got %d", o.threads);
    if (o.warmup < 0) die("train: --warmup must be >= 0, got %d", o.warmup);
    if (!(o.lr > 0)) die("train: --lr must be positive, got %g", (double)o.lr);
    if (o.clip < 0) die("train: --clip must be >= 0, got %g", (double)o.clip);
    if (o.label_smoothing < 0 || o.label_smoothing > 1)
        die("train: --label-smoothing must be in [0, 1], got %g",
            (double)o.label_smoothing);
    if (o.max_len > 512)
        die("train: --max-len must be at most 512, got %d", o.max_len);
    qkv_task task = {strcmp(o.task, "reverse") == 0 ? QKV_TASK_REVERSE
                     : strcmp(o.task, "sort") == 0  ? QKV_TASK_SORT
                                                    : QKV_TASK_COPY,
                     o.vocab,
                     o.min_len,
                     o.max_len,
                     o.min_len != o.max_len,
                     strcmp(o.model, "decoder") == 0};
    if (qkv_task_check(&task, err, sizeof err)) die("train: %s", err);
    qkv_model_config c = qkv_model_defaults(
        task.decoder_only ? QKV_MODEL_DECODER : QKV_MODEL_ENCDEC);
    c.src_vocab = c.tgt_vocab = o.vocab;
    c.d_model = o.d_model;
    c.heads = o.h;
    c.d_ff = o.d_ff;
    c.n_enc = task.decoder_only ? 0 : (o.n_enc ? o.n_enc : o.N);
    c.n_dec = o.n_dec ? o.n_dec : o.N;
    c.max_len = 2 * o.max_len + 2;
    c.dropout = o.dropout;
    c.pos = strcmp(o.pos, "learned") == 0 ? QKV_POS_LEARNED : QKV_POS_SIN;
    c.norm = strcmp(o.norm, "pre") == 0 ? QKV_NORM_PRE : QKV_NORM_POST;
    c.act = strcmp(o.act, "gelu") == 0 ? QKV_ACT_GELU : QKV_ACT_RELU;
    qkv_model m;
    if (qkv_model_init(&m, &c, (uint64_t)o.seed, err, sizeof err))
        die("train: %s", err);
    if (o.threads) qkv_set_threads(o.threads);
    if (o.save_every < 0) die("train: --save-every must be >= 0, got %d", o.save_every);

    qkv_optim opt;
    qkv_optim_config oc =
        qkv_optim_defaults(strcmp(o.optim, "sgd") == 0     ? QKV_OPTIM_SGD
                           : strcmp(o.optim, "adamw") == 0 ? QKV_OPTIM_ADAMW
                                                           : QKV_OPTIM_ADAM);
    if (oc.kind == QKV_OPTIM_ADAMW) oc.weight_decay = o.weight_decay;
    qkv_optim_init(&opt, &oc, &m.params);
    int warm = o.warmup < o.steps ? o.warmup : o.steps;
    qkv_schedule sched = {strcmp(o.schedule, "noam") == 0 ? QKV_SCHEDULE_NOAM
                          : strcmp(o.schedule, "const") == 0
                              ? QKV_SCHEDULE_CONSTANT
                              : QKV_SCHEDULE_COSINE,
                          o.lr,
                          warm,
                          o.steps,
                          o.lr / 20,
                          o.d_model};
    if (sched.kind == QKV_SCHEDULE_NOAM && warm < 1) sched.warmup = 1;

    qkv_pcg32 data, vdata;
    qkv_pcg32_seed(&data, (uint64_t)o.seed, 1);
    qkv_pcg32_seed(&vdata, (uint64_t)o.seed, 2);
    qkv_ckpt_rng rngs[1] = {{"data", &data}};
    int64_t start = 0;
    long tokens = 0;
    double secs0 = 0;
    if (*o.resume) { /* weights, Adam state, dropout and data streams, step */
        qkv_model_free(&m);
        qkv_optim_free(&opt);
        if (qkv_ckpt_load(ckpt_path, &m, &opt, &start, rngs, 1, NULL, err, sizeof err))
            die("train: --resume: %s", err);
        const char *t = qkv_st_meta(&meta, "tokens"), *sec = qkv_st_meta(&meta, "seconds");
        tokens = t ? atol(t) : 0;
        secs0 = sec ? atof(sec) : 0;
        if (start >= o.steps)
            die("train: --resume: the run already has %lld of %d steps (give more --steps)",
                (long long)start, o.steps);
    }

    if (strlen(o.out) > 4000) die("train: --out path is too long");
    make_dirs(o.out);
    char path[4200];
    snprintf(ckpt_path, sizeof ckpt_path, "%s/ckpt.safetensors", o.out);
    char *cfg = flags_json(flags, nf);
    snprintf(path, sizeof path, "%s/config.json", o.out);
    write_file(path, cfg);
    snprintf(path, sizeof path, "%s/log.csv", o.out);
    FILE *log;
    if (*o.resume) {
        log = reopen_log(path, (int)start);
    } else {
        log = fopen(path, "w");
        if (!log) die("train: cannot write %s: %s", path, strerror(errno));
        fprintf(log, "step,tokens,seconds,lr,train_loss,val_loss,val_acc\n");
    }
    signal(SIGINT, on_sigint);
    qkv_task_batch b, vb;
    qkv_task_batch_init(&b, &task, o.batch);
    qkv_task_batch_init(&vb, &task, o.eval_size);
    qkv_task_sample(&task, &vdata, &vb);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int tty = isatty(1) && !o.quiet;
    if (!o.quiet)
        printf("qkv train: %s, %s N=%d+%d h=%d d_model=%d, %zu parameters, %d "
               "steps\n",
               o.task, o.model, c.n_enc, c.n_dec, c.heads, c.d_model,
               m.params.n, o.steps);
    double t0 = now() - secs0;
    float vloss = NAN, vacc = NAN, train_loss = 0;
    int step;
    for (step = (int)start + 1; step <= o.steps; step++) {
        qkv_task_sample(&task, &data, &b);
        qkv_graph_reset(&g);
        qkv_tensor *loss = qkv_model_loss(&m, &g, &b.view, o.label_smoothing);
        train_loss = loss->data[0]; /* validate() resets the arena */
        qkv_params_zero_grad(&m.params);
        qkv_backward(&g, loss);
        if (o.clip > 0) qkv_clip_grad_norm(&m.params, o.clip);
        float lr = qkv_schedule_lr(&sched, step);
        qkv_optim_step(&opt, &m.params, lr);
        tokens += (long)b.view.B * (b.view.S + b.view.T);
        int eval = step % o.eval_every == 0 || step == o.steps;
        if (eval) validate(&m, &g, &task, &vb, &vloss, &vacc);
        double secs = now() - t0;
        fprintf(log, "%d,%ld,%.3f,%.6g,%.6f,", step, tokens, secs, (double)lr,
                (double)train_loss);
        if (eval)
            fprintf(log, "%.6f,%.4f\n", (double)vloss, (double)vacc);
        else
            fputs(",\n", log);
        int save = step == o.steps || interrupted ||
                   (o.save_every && step % o.save_every == 0);
        if (save) { /* the log first, so it never lags the checkpoint */
            fflush(log);
            char tok[32], sec[32];
            snprintf(tok, sizeof tok, "%ld", tokens);
            snprintf(sec, sizeof sec, "%.3f", secs);
            const char *keys[3] = {"cli", "tokens", "seconds"};
            const char *vals[3] = {cfg, tok, sec};
            if (qkv_ckpt_save(ckpt_path, &m, &opt, step, rngs, 1, keys, vals, 3,
                              err, sizeof err))
                die("train: %s", err);
        }
        if (interrupted) break;
        if (o.quiet) continue;
        double eta = (secs - secs0) / (double)(step - start) * (o.steps - step);
        if (tty)
            printf("\rstep %d/%d  loss %.4f  val loss %.4f  val acc %5.1f%%  "
                   "%.0f tok/s  ETA %.0fs ",
                   step, o.steps, (double)train_loss, (double)vloss,
                   100.0 * vacc, tokens / secs, eta);
        else if (eval)
            printf("step %d/%d  loss %.4f  val loss %.4f  val acc %.1f%%  %.0f "
                   "tok/s  ETA %.0fs\n",
                   step, o.steps, (double)train_loss, (double)vloss,
                   100.0 * vacc, tokens / secs, eta);
        fflush(stdout);
    }
    if (fclose(log)) die("train: writing %s failed", path);
    if (tty) printf("\n");
    if (interrupted)
        fprintf(stderr, "qkv: interrupted at step %d; checkpoint saved in %s "
                        "(continue with: qkv train --resume %s)\n",
                step, ckpt_path, o.out);
    else
        printf("done: %d steps in %.1f s, train loss %.4f, val loss %.4f, val "
           "exact match %.1f%%; log in %s, checkpoint %s\n",
           o.steps, now() - t0, (double)train_loss, (double)vloss, 100.0 * vacc,
           path, ckpt_path);
    free(cfg);
    cJSON_Delete(saved);
    qkv_st_free(&meta);
    qkv_task_batch_free(&b);
    qkv_task_batch_free(&vb);
    qkv_graph_free(&g);
    qkv_optim_free(&opt);
    qkv_model_free(&m);
    return interrupted ? 130 : 0;
}

/* ------------------------------------------------------------------- main */

static void usage(FILE *f) {
    fputs(
        "usage: qkv COMMAND [flags]\n\n"
        "commands:\n"
        "  train    train a model on a generated task (copy, reverse, sort)\n\n"
        "qkv COMMAND --help lists the command's flags with their defaults.\n",
        f);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "train") == 0) return cmd_train(argc, argv);
    die("unknown command '%s' (see qkv --help)", argv[1]);
}
