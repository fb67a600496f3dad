/* train.c - `qkv train`: train on a generated task or a TSV corpus.
 *
 *   qkv train --task copy --N 2 --h 4 --steps 800 --out runs/copy
 *   qkv train --data data/corpora/dates/train.tsv \
 *             --valid data/corpora/dates/valid.tsv --tok char --out runs/dates
 *
 * Writes DIR/config.json (every flag), DIR/log.csv (one row per step; the
 * validation columns at every --eval-every) and DIR/ckpt.safetensors (every
 * --save-every steps, at the end, and on Ctrl-C). `--resume DIR` continues a
 * run bit for bit: the checkpoint holds the weights, the optimiser state, the
 * dropout and data generators, the position in the epoch, and the settings.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "optim.h"

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* Keeps the rows of log.csv up to `step` (a resumed run rewrites the rest). */
static FILE *reopen_log(const char *path, int step) {
    FILE *in = fopen(path, "r");
    if (!in)
        cli_die("train: --resume: cannot read %s: %s", path, strerror(errno));
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out) cli_die("train: cannot write %s: %s", tmp, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int first = 1;
    while (getline(&line, &cap, in) > 0) {
        if (first || atoi(line) <= step) fputs(line, out);
        first = 0;
    }
    free(line);
    fclose(in);
    if (fclose(out) || rename(tmp, path))
        cli_die("train: cannot rewrite %s", path);
    FILE *log = fopen(path, "a");
    if (!log) cli_die("train: cannot append to %s: %s", path, strerror(errno));
    return log;
}

typedef struct train_opts {
    const char *task, *data, *valid, *tok, *model, *pos, *norm, *act, *optim,
        *schedule, *out, *resume;
    int vocab, min_len, max_len, min_freq, filter_len, batch_tokens, epochs;
    int N, n_enc, n_dec, h, d_model, d_ff;
    float dropout, label_smoothing, lr, clip, weight_decay;
    int warmup, batch, steps, seed, threads, eval_every, eval_size, quiet;
    int save_every, plot, dry_run, profile;
} train_opts;

/* Non-pad tokens of a batch, source and target. */
static long batch_tokens(const qkv_batch *b) {
    long n = 0;
    if (b->src)
        for (size_t i = 0; i < (size_t)b->B * b->S; i++) n += !b->src_pad[i];
    for (size_t i = 0; i < (size_t)b->B * b->T; i++) n += !b->tgt_pad[i];
    return n;
}

/* The corpus side of a run: training pairs and their epochs, and the
 * validation pairs. */
typedef struct corpus_run {
    qkv_pairs train, valid;
    qkv_batcher it, vit;
    qkv_corpus_batch batch, vbatch;
    qkv_pcg32 epoch_rng; /* the data generator as this epoch began */
    int epoch, has_valid;
} corpus_run;

/* Encodes the corpus at path with d's vocabularies, keeping pairs within the
 * limits, and says how many were dropped. */
static void load_pairs(const char *flag_name, const char *path,
                       const cli_data *d, int max_src, int max_tgt,
                       qkv_pairs *p, int quiet) {
    qkv_corpus c;
    char err[512];
    if (qkv_corpus_load(path, &c, err, sizeof err))
        cli_die("train: %s: %s", flag_name, err);
    qkv_pairs_encode(p, &c, d->tok, &d->sv, &d->tv, max_src, max_tgt);
    p->decoder_only = d->decoder_only;
    if (!quiet)
        printf("%s: %d pairs, %d dropped by the length limit, %.2f%% of "
               "tokens unknown\n",
               path, p->n, p->dropped,
               p->n_tokens ? 100.0 * (double)p->n_unk / (double)p->n_tokens
                           : 0.0);
    qkv_corpus_free(&c);
    if (p->n < 1)
        cli_die("train: %s: no pairs left after the length limit", path);
}

/* Validation: sums over the validation set (task: a fixed batch; corpus:
 * the first --eval-size pairs of --valid). */
static void validate(qkv_model *m, qkv_graph *g, const cli_data *d,
                     qkv_task_batch *vb, corpus_run *cr, cli_scores *s) {
    memset(s, 0, sizeof *s);
    if (!d->corpus) {
        cli_score_batch(m, g, d, &vb->view, 1, 0, cli_max_out(m, d, &vb->view),
                        s, NULL);
        return;
    }
    qkv_batcher_epoch(&cr->vit, NULL);
    while (qkv_batcher_next(&cr->vit, &cr->vbatch))
        cli_score_batch(m, g, d, &cr->vbatch.view, 1, 0,
                        cli_max_out(m, d, &cr->vbatch.view), s, NULL);
}

/* The --profile table: per step, each op kind's forward and backward time
 * (from the tape) and the phases of the step timed in the loop. */
static void print_profile(const qkv_profile *p, const double *phase,
                          int n_phase, int steps, double wall) {
    static const char *const names[] = {
        "data (batch)", "forward (loss)",   "zero grad",  "backward",
        "clip",         "optimiser (Adam)", "validation", "log + checkpoint"};
    double fsum = 0, bsum = 0, psum = 0;
    for (int k = 0; k < QKV_OP_COUNT; k++) fsum += p->fwd[k], bsum += p->bwd[k];
    for (int k = 0; k < n_phase; k++) psum += phase[k];
    printf("\nprofile: ms per step, over %d steps\n", steps);
    printf("  %-16s %9s %9s %7s %6s\n", "op", "forward", "backward", "calls",
           "share");
    for (int k = 0; k < QKV_OP_COUNT; k++) {
        if (!p->n_fwd[k] && !p->n_bwd[k]) continue;
        double f = 1e3 * p->fwd[k] / steps, b = 1e3 * p->bwd[k] / steps;
        printf("  %-16s %9.3f %9.3f %7.1f %5.1f%%\n", qkv_op_name((qkv_op)k), f,
               b, (double)p->n_fwd[k] / steps,
               100 * (p->fwd[k] + p->bwd[k]) / psum);
    }
    printf("  %-16s %9.3f %9.3f\n", "all ops", 1e3 * fsum / steps,
           1e3 * bsum / steps);
    printf("  %-16s %9s\n", "phase", "ms");
    for (int k = 0; k < n_phase; k++)
        printf("  %-16s %9.3f %5.1f%%\n", names[k], 1e3 * phase[k] / steps,
               100 * phase[k] / psum);
    printf("  %-16s %9.3f (wall %.3f)\n", "step", 1e3 * psum / steps,
           1e3 * wall / steps);
}

int cmd_train(int argc, char **argv) {
    train_opts o = {
        .task = "copy",
        .data = "",
        .valid = "",
        .tok = "word",
        .model = "encdec",
        .pos = "sin",
        .norm = "post",
        .act = "relu",
        .optim = "adam",
        .schedule = "cosine",
        .out = "runs/qkv",
        .resume = "",
        .vocab = 11,
        .min_len = 10,
        .max_len = 10,
        .min_freq = 1,
        .filter_len = 0,
        .batch_tokens = 0,
        .epochs = 0,
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
        .quiet = 0,
        .save_every = 0,
    };
    const flag flags[] = {
        {"task", FLAG_STR, &o.task, "copy|reverse|sort",
         "generated task (when no --data)"},
        {"vocab", FLAG_INT, &o.vocab, NULL,
         "task vocabulary, specials included"},
        {"min-len", FLAG_INT, &o.min_len, NULL, "shortest task sequence"},
        {"max-len", FLAG_INT, &o.max_len, NULL,
         "longest task sequence (varying lengths add an eos)"},
        {"data", FLAG_STR, &o.data, NULL,
         "training corpus, TSV source<TAB>target"},
        {"valid", FLAG_STR, &o.valid, NULL, "validation corpus, TSV"},
        {"tok", FLAG_STR, &o.tok, "word|char", "corpus tokenizer"},
        {"min-freq", FLAG_INT, &o.min_freq, NULL,
         "rarer tokens of --data become <unk>"},
        {"filter-len", FLAG_INT, &o.filter_len, NULL,
         "drop pairs with a side longer than this, in tokens (0: keep all)"},
        {"batch-tokens", FLAG_INT, &o.batch_tokens, NULL,
         "corpus batches: tokens per batch (0: --batch x the longest pair)"},
        {"epochs", FLAG_INT, &o.epochs, NULL,
         "passes over --data; sets --steps (0: use --steps)"},
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
         "OpenMP threads (0: the free cores, following the load)"},
        {"eval-every", FLAG_INT, &o.eval_every, NULL,
         "steps between validations"},
        {"eval-size", FLAG_INT, &o.eval_size, NULL,
         "validation sequences (task: fresh ones; corpus: the first of "
         "--valid)"},
        {"out", FLAG_STR, &o.out, NULL,
         "run directory (log.csv, config.json, ckpt.safetensors)"},
        {"save-every", FLAG_INT, &o.save_every, NULL,
         "steps between checkpoints (0: only at the end)"},
        {"resume", FLAG_STR, &o.resume, NULL,
         "continue the run in this directory where it stopped"},
        {"plot", FLAG_BOOL, &o.plot, NULL,
         "draw DIR/loss.png at every validation and at the end (gnuplot)"},
        {"quiet", FLAG_BOOL, &o.quiet, NULL, "print only the final line"},
        {"profile", FLAG_BOOL, &o.profile, NULL,
         "print the time per op kind (forward, backward), optimiser and data "
         "at the end"},
        {"dry-run", FLAG_BOOL, &o.dry_run, NULL,
         "check the flags and data, print the model's size, write nothing"},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    const char *usage = "[--task T | --data TRAIN.tsv --valid VALID.tsv] "
                        "[flags]";
    cli_parse("train", usage, flags, nf, argc, argv, 2, NULL, 0, NULL);

    /* --resume: the checkpoint holds the run's settings; only these may be
     * given again (more --steps or --epochs extends the run). */
    qkv_st_file meta = {0};
    cJSON *saved = NULL;
    char err[512], ckpt_path[4200];
    cli_data d = {0};
    if (*o.resume) {
        const char *keep[] = {"resume", "threads", "quiet",   "steps",
                              "epochs", "plot",    "profile", "save-every"};
        for (int i = 2; i < argc; i++) {
            if (strncmp(argv[i], "--", 2) != 0) continue;
            int ok = 0;
            for (size_t k = 0; k < sizeof keep / sizeof *keep; k++)
                ok |= strcmp(argv[i] + 2, keep[k]) == 0;
            if (!ok)
                cli_die("train: %s cannot change when resuming (the "
                        "checkpoint holds the run's settings)",
                        argv[i]);
        }
        if (strlen(o.resume) > 4000)
            cli_die("train: --resume path is too long");
        snprintf(ckpt_path, sizeof ckpt_path, "%s/ckpt.safetensors", o.resume);
        qkv_model probe;
        if (qkv_ckpt_load(ckpt_path, &probe, NULL, NULL, NULL, 0, &meta, err,
                          sizeof err))
            cli_die("train: --resume: %s", err);
        qkv_model_free(&probe);
        const char *cli = qkv_st_meta(&meta, "cli");
        if (!cli || !(saved = cJSON_Parse(cli)))
            cli_die("train: --resume: %s was not written by qkv train (no "
                    "settings)",
                    ckpt_path);
        if (cli_data_from_meta(&d, &meta, err, sizeof err))
            cli_die("train: --resume: %s: %s", ckpt_path, err);
        const char *dir = o.resume;
        int steps = o.steps;
        cli_flags_from_json("train", flags, nf, saved);
        int saved_epochs = o.epochs;
        o.epochs = 0;
        cli_parse("train", usage, flags, nf, argc, argv, 2, NULL, 0, NULL);
        if (o.epochs == 0 && o.steps == steps) o.epochs = saved_epochs;
        o.out = dir;
        o.resume = dir;
    }

    /* Everything is checked before anything is written. */
    int corpus = *o.data != 0, decoder = strcmp(o.model, "decoder") == 0;
    if (o.steps < 1)
        cli_die("train: --steps must be positive, got %d", o.steps);
    if (o.batch < 1)
        cli_die("train: --batch must be positive, got %d", o.batch);
    if (o.eval_every < 1)
        cli_die("train: --eval-every must be positive, got %d", o.eval_every);
    if (o.eval_size < 1)
        cli_die("train: --eval-size must be positive, got %d", o.eval_size);
    if (o.threads < 0)
        cli_die("train: --threads must be >= 0, got %d", o.threads);
    if (o.warmup < 0) cli_die("train: --warmup must be >= 0, got %d", o.warmup);
    if (!(o.lr > 0))
        cli_die("train: --lr must be positive, got %g", (double)o.lr);
    if (o.clip < 0)
        cli_die("train: --clip must be >= 0, got %g", (double)o.clip);
    if (o.label_smoothing < 0 || o.label_smoothing > 1)
        cli_die("train: --label-smoothing must be in [0, 1], got %g",
                (double)o.label_smoothing);
    if (o.save_every < 0)
        cli_die("train: --save-every must be >= 0, got %d", o.save_every);
    if (o.epochs < 0) cli_die("train: --epochs must be >= 0, got %d", o.epochs);
    if (o.filter_len < 0)
        cli_die("train: --filter-len must be >= 0, got %d", o.filter_len);
    if (o.batch_tokens < 0)
        cli_die("train: --batch-tokens must be >= 0, got %d", o.batch_tokens);
    if (!corpus && *o.valid)
        cli_die("train: --valid needs --data (a task makes its own)");
    if (!corpus && o.epochs)
        cli_die("train: --epochs needs --data (a task has no epochs)");
    if (!corpus && o.max_len > 512)
        cli_die("train: --max-len must be at most 512, got %d", o.max_len);
    if (o.threads) qkv_set_threads(o.threads);

    qkv_model_config c =
        qkv_model_defaults(decoder ? QKV_MODEL_DECODER : QKV_MODEL_ENCDEC);
    corpus_run cr;
    memset(&cr, 0, sizeof cr);
    if (!corpus) {
        qkv_task task = {strcmp(o.task, "reverse") == 0 ? QKV_TASK_REVERSE
                         : strcmp(o.task, "sort") == 0  ? QKV_TASK_SORT
                                                        : QKV_TASK_COPY,
                         o.vocab,
                         o.min_len,
                         o.max_len,
                         o.min_len != o.max_len,
                         decoder};
        if (qkv_task_check(&task, err, sizeof err)) cli_die("train: %s", err);
        d.task = task;
        d.decoder_only = decoder;
        c.src_vocab = c.tgt_vocab = o.vocab;
        c.max_len = 2 * o.max_len + 2;
    } else {
        if (!*o.resume) { /* vocabularies from the training split */
            qkv_corpus tc;
            if (qkv_corpus_load(o.data, &tc, err, sizeof err))
                cli_die("train: --data: %s", err);
            d.corpus = 1;
            d.decoder_only = decoder;
            d.tok = strcmp(o.tok, "char") == 0 ? QKV_TOK_CHAR : QKV_TOK_WORD;
            int sides = decoder ? QKV_SIDE_BOTH : QKV_SIDE_SRC;
            qkv_vocab_build(&d.sv, &tc, sides, d.tok, o.min_freq);
            qkv_vocab_build(&d.tv, &tc, decoder ? QKV_SIDE_BOTH : QKV_SIDE_TGT,
                            d.tok, o.min_freq);
            qkv_corpus_free(&tc);
        }
        load_pairs("--data", o.data, &d, o.filter_len, o.filter_len, &cr.train,
                   o.quiet);
        int ls = cr.train.longest_src, lt = cr.train.longest_tgt;
        /* Positions for sentences up to twice the longest training one. */
        c.max_len = decoder ? 2 * (ls + lt + 1) + 8
                            : 2 * (ls > lt + 1 ? ls : lt + 1) + 8;
        c.src_vocab = d.sv.size;
        c.tgt_vocab = d.tv.size;
        int budget = o.batch_tokens ? o.batch_tokens
                                    : o.batch * cli_pair_cost(&cr.train);
        if (qkv_batcher_init(&cr.it, &cr.train, budget, err, sizeof err))
            cli_die("train: --batch-tokens: %s", err);
        if (*o.valid) {
            int side = decoder ? (c.max_len - 1) / 2 : c.max_len - 1;
            load_pairs("--valid", o.valid, &d, side, side, &cr.valid, o.quiet);
            if (cr.valid.n > o.eval_size) cr.valid.n = o.eval_size;
            int vlong = cli_pair_cost(&cr.valid);
            int vbudget = budget > vlong ? budget : vlong;
            if (qkv_batcher_init(&cr.vit, &cr.valid, vbudget, err, sizeof err))
                cli_die("train: --valid: %s", err);
            qkv_corpus_batch_init(&cr.vbatch, vbudget);
            cr.has_valid = 1;
        }
        qkv_corpus_batch_init(&cr.batch, budget);
        if (o.epochs) o.steps = o.epochs * cr.it.n_batches;
    }
    c.d_model = o.d_model;
    c.heads = o.h;
    c.d_ff = o.d_ff;
    c.n_enc = decoder ? 0 : (o.n_enc ? o.n_enc : o.N);
    c.n_dec = o.n_dec ? o.n_dec : o.N;
    c.dropout = o.dropout;
    c.pos = strcmp(o.pos, "learned") == 0 ? QKV_POS_LEARNED : QKV_POS_SIN;
    c.norm = strcmp(o.norm, "pre") == 0 ? QKV_NORM_PRE : QKV_NORM_POST;
    c.act = strcmp(o.act, "gelu") == 0 ? QKV_ACT_GELU : QKV_ACT_RELU;
    qkv_model m;
    if (qkv_model_init(&m, &c, (uint64_t)o.seed, err, sizeof err))
        cli_die("train: %s", err);

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

    /* Data streams: a task draws from `data` every step; a corpus draws
     * from it once per epoch (the shuffle), so the checkpoint keeps the
     * state as the epoch began and the batches served since. */
    qkv_pcg32 data, vdata;
    qkv_pcg32_seed(&data, (uint64_t)o.seed, 1);
    qkv_pcg32_seed(&vdata, (uint64_t)o.seed, 2);
    qkv_ckpt_rng rngs[1] = {{"data", corpus ? &cr.epoch_rng : &data}};
    int64_t start = 0;
    long tokens = 0;
    double secs0 = 0;
    int served = 0;
    if (*o.resume) { /* weights, Adam state, dropout and data streams, step */
        qkv_model_free(&m);
        qkv_optim_free(&opt);
        if (qkv_ckpt_load(ckpt_path, &m, &opt, &start, rngs, 1, NULL, err,
                          sizeof err))
            cli_die("train: --resume: %s", err);
        const char *t = qkv_st_meta(&meta, "tokens"),
                   *sec = qkv_st_meta(&meta, "seconds"),
                   *ep = qkv_st_meta(&meta, "epoch"),
                   *bt = qkv_st_meta(&meta, "batch");
        tokens = t ? atol(t) : 0;
        secs0 = sec ? atof(sec) : 0;
        cr.epoch = ep ? atoi(ep) : 0;
        served = bt ? atoi(bt) : 0;
        if (corpus && (!ep || !bt || served < 0 || served > cr.it.n_batches))
            cli_die("train: --resume: %s has no valid epoch position (was the "
                    "corpus changed?)",
                    ckpt_path);
        if (start >= o.steps)
            cli_die("train: --resume: the run already has %lld of %d steps "
                    "(give more --steps or --epochs)",
                    (long long)start, o.steps);
    }
    if (corpus) {
        if (!*o.resume) {
            cr.epoch_rng = data;
            cr.epoch = 1;
        }
        data = cr.epoch_rng;
        qkv_batcher_epoch(&cr.it, &data);
        cr.it.next = served;
    }

    if (strlen(o.out) > 4000) cli_die("train: --out path is too long");
    cli_check_name("train", *o.resume ? "--resume" : "--out", o.out);
    if (o.dry_run) { /* every check above passed; write nothing */
        printf("qkv train --dry-run: %s, %s N=%d+%d h=%d d_model=%d, %zu "
               "parameters, %d steps: the flags and data are fine\n",
               corpus ? o.data : o.task, o.model, c.n_enc, c.n_dec, c.heads,
               c.d_model, m.params.n, o.steps);
        exit(0);
    }
    cli_make_dirs("train", o.out);
    char path[4200];
    snprintf(ckpt_path, sizeof ckpt_path, "%s/ckpt.safetensors", o.out);
    char *cfg = cli_flags_json(flags, nf);
    snprintf(path, sizeof path, "%s/config.json", o.out);
    cli_write_file("train", path, cfg);
    snprintf(path, sizeof path, "%s/log.csv", o.out);
    FILE *log;
    if (*o.resume) {
        log = reopen_log(path, (int)start);
    } else {
        log = fopen(path, "w");
        if (!log) cli_die("train: cannot write %s: %s", path, strerror(errno));
        fprintf(
            log,
            "step,tokens,seconds,lr,train_loss,val_loss,val_acc,val_bleu\n");
    }
    const char *dkeys[3];
    char *dvals[3];
    int n_dmeta = cli_data_meta(&d, dkeys, dvals);

    signal(SIGINT, on_sigint);
    qkv_task_batch b = {0}, vb = {0};
    if (!corpus) {
        qkv_task_batch_init(&b, &d.task, o.batch);
        qkv_task_batch_init(&vb, &d.task, o.eval_size);
        qkv_task_sample(&d.task, &vdata, &vb);
    }
    int do_valid = !corpus || cr.has_valid;
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int tty = isatty(1) && !o.quiet;
    if (!o.quiet) {
        printf("qkv train: %s, %s N=%d+%d h=%d d_model=%d, %zu parameters, "
               "%d steps",
               corpus ? o.data : o.task, o.model, c.n_enc, c.n_dec, c.heads,
               c.d_model, m.params.n, o.steps);
        if (corpus)
            printf(" (%d batches per epoch, vocab %d/%d)", cr.it.n_batches,
                   m.cfg.src_vocab, m.cfg.tgt_vocab);
        printf("\n");
    }
    double t0 = qkv_seconds() - secs0;
    float train_loss = 0;
    double vloss = NAN, vacc = NAN, vbleu = NAN;
    /* --profile: op times from the tape, the rest timed here */
    qkv_profile prof;
    memset(&prof, 0, sizeof prof);
    enum {
        PH_DATA,
        PH_LOSS,
        PH_ZERO,
        PH_BACKWARD,
        PH_CLIP,
        PH_OPTIM,
        PH_VALID,
        PH_LOG,
        PH_N
    };
    double phase[PH_N] = {0}, tp = 0, tp0 = qkv_seconds();
    if (o.profile) g.profile = &prof;
#define PHASE(k)                                                               \
    do {                                                                       \
        if (o.profile) {                                                       \
            double t_ = qkv_seconds();                                         \
            phase[k] += t_ - tp;                                               \
            tp = t_;                                                           \
        }                                                                      \
    } while (0)
    int step;
    for (step = (int)start + 1; step <= o.steps; step++) {
        const qkv_batch *bv;
        tp = qkv_seconds();
        if (!corpus) {
            qkv_task_sample(&d.task, &data, &b);
            bv = &b.view;
        } else {
            if (!qkv_batcher_next(&cr.it, &cr.batch)) {
                cr.epoch_rng = data;
                cr.epoch++;
                qkv_batcher_epoch(&cr.it, &data);
                qkv_batcher_next(&cr.it, &cr.batch);
            }
            bv = &cr.batch.view;
        }
        PHASE(PH_DATA);
        qkv_graph_reset(&g);
        qkv_tensor *loss = qkv_model_loss(&m, &g, bv, o.label_smoothing);
        train_loss = loss->data[0]; /* validate() resets the arena */
        PHASE(PH_LOSS);
        qkv_params_zero_grad(&m.params);
        PHASE(PH_ZERO);
        qkv_backward(&g, loss);
        PHASE(PH_BACKWARD);
        if (o.clip > 0) qkv_clip_grad_norm(&m.params, o.clip);
        PHASE(PH_CLIP);
        float lr = qkv_schedule_lr(&sched, step);
        qkv_optim_step(&opt, &m.params, lr);
        PHASE(PH_OPTIM);
        tokens += batch_tokens(bv);
        int report = step % o.eval_every == 0 || step == o.steps;
        int eval = do_valid && report;
        if (eval) {
            cli_scores s;
            validate(&m, &g, &d, &vb, &cr, &s);
            vloss = s.loss_sum / (double)s.tokens;
            vacc = (double)s.exact / (double)s.seqs;
            vbleu = corpus ? 100.0 * qkv_bleu_score(&s.bleu) : NAN;
        }
        PHASE(PH_VALID);
        double secs = qkv_seconds() - t0;
        fprintf(log, "%d,%ld,%.3f,%.6g,%.6f,", step, tokens, secs, (double)lr,
                (double)train_loss);
        if (eval && corpus)
            fprintf(log, "%.6f,%.4f,%.2f\n", vloss, vacc, vbleu);
        else if (eval)
            fprintf(log, "%.6f,%.4f,\n", vloss, vacc);
        else
            fputs(",,\n", log);
        int save = step == o.steps || interrupted ||
                   (o.save_every && step % o.save_every == 0);
        if (save) { /* the log first, so it never lags the checkpoint */
            fflush(log);
            char tok[32], sec[32], ep[16], bt[16];
            snprintf(tok, sizeof tok, "%ld", tokens);
            snprintf(sec, sizeof sec, "%.3f", secs);
            snprintf(ep, sizeof ep, "%d", cr.epoch);
            snprintf(bt, sizeof bt, "%d", cr.it.next);
            const char *keys[8] = {"cli", "tokens", "seconds", "epoch",
                                   "batch"};
            const char *vals[8] = {cfg, tok, sec, ep, bt};
            for (int k = 0; k < n_dmeta; k++)
                keys[5 + k] = dkeys[k], vals[5 + k] = dvals[k];
            if (qkv_ckpt_save(ckpt_path, &m, &opt, step, rngs, 1, keys, vals,
                              5 + n_dmeta, err, sizeof err))
                cli_die("train: %s", err);
        }
        if (o.plot && (report || interrupted)) {
            char png[4300];
            const char *logs[1] = {path};
            snprintf(png, sizeof png, "%s/loss.png", o.out);
            cli_plot_opts po = {png, "png", "step", 0, NULL};
            fflush(log);
            if (cli_plot_logs("train", logs, NULL, 1, &po))
                o.plot = 0; /* said once; training goes on */
        }
        if (interrupted) break;
        if (o.quiet) continue;
        double eta = (secs - secs0) / (double)(step - start) * (o.steps - step);
        char line[256];
        int n = snprintf(line, sizeof line, "step %d/%d  loss %.4f", step,
                         o.steps, (double)train_loss);
        if (do_valid)
            n +=
                snprintf(line + n, sizeof line - (size_t)n,
                         "  val loss %.4f  exact %5.1f%%", vloss, 100.0 * vacc);
        if (corpus && do_valid && n < (int)sizeof line)
            n += snprintf(line + n, sizeof line - (size_t)n, "  BLEU %.1f",
                          vbleu);
        if (n < (int)sizeof line)
            snprintf(line + n, sizeof line - (size_t)n,
                     "  %.0f tok/s  ETA %.0fs", (double)tokens / secs, eta);
        if (tty)
            printf("\r%s ", line);
        else if (report)
            printf("%s\n", line);
        fflush(stdout);
    }
    if (o.profile) {
        PHASE(PH_LOG);
        int n = step - (int)start - (step > o.steps);
        print_profile(&prof, phase, PH_N, n < 1 ? 1 : n, qkv_seconds() - tp0);
    }
#undef PHASE
    if (fclose(log)) cli_die("train: writing %s failed", path);
    if (tty) printf("\n");
    if (interrupted)
        fprintf(stderr,
                "qkv: interrupted at step %d; checkpoint saved in %s "
                "(continue with: qkv train --resume %s)\n",
                step, ckpt_path, o.out);
    else if (!do_valid)
        printf("done: %d steps (%d epochs) in %.1f s, train loss %.4f (no "
               "--valid: no validation); log in %s, checkpoint %s\n",
               o.steps, cr.epoch, qkv_seconds() - t0, (double)train_loss, path,
               ckpt_path);
    else if (corpus)
        printf("done: %d steps (%d epochs) in %.1f s, train loss %.4f, val "
               "loss %.4f, exact match %.1f%%, BLEU %.1f; log in %s, "
               "checkpoint %s\n",
               o.steps, cr.epoch, qkv_seconds() - t0, (double)train_loss, vloss,
               100.0 * vacc, vbleu, path, ckpt_path);
    else
        printf("done: %d steps in %.1f s, train loss %.4f, val loss %.4f, val "
               "exact match %.1f%%; log in %s, checkpoint %s\n",
               o.steps, qkv_seconds() - t0, (double)train_loss, vloss,
               100.0 * vacc, path, ckpt_path);
    for (int k = 0; k < n_dmeta; k++) free(dvals[k]);
    free(cfg);
    cJSON_Delete(saved);
    qkv_st_free(&meta);
    if (!corpus) {
        qkv_task_batch_free(&b);
        qkv_task_batch_free(&vb);
    } else {
        qkv_batcher_free(&cr.it);
        qkv_corpus_batch_free(&cr.batch);
        qkv_pairs_free(&cr.train);
        if (cr.has_valid) {
            qkv_batcher_free(&cr.vit);
            qkv_corpus_batch_free(&cr.vbatch);
            qkv_pairs_free(&cr.valid);
        }
    }
    cli_data_free(&d);
    qkv_graph_free(&g);
    qkv_optim_free(&opt);
    qkv_model_free(&m);
    return interrupted ? 130 : 0;
}
