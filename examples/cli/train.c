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
 *
 * Nothing is written before everything is checked: every flag (in the type
 * it is used in), the data, the sizes (the step must fit in memory) and, on
 * --resume, the stored settings against the checkpoint's own tensors. Then
 * the directory is locked (one writer), and a directory that already holds a
 * run is refused unless --resume or --force (which starts clean). A loss or
 * gradient norm that is not finite stops the run (exit 3) before it can be
 * saved over the last good checkpoint, unless --skip-nonfinite N lets it
 * skip up to N such steps.
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

/* Exit status of a run stopped because it diverged (0 done, 1 a bug, 2 bad
 * input, 130 interrupted). */
enum { EXIT_DIVERGED = 3 };

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static const char log_header[] =
    "step,tokens,seconds,lr,train_loss,val_loss,val_acc,val_bleu\n";

/* The log of a resumed run: its header, then its rows up to `step` (the
 * checkpoint's; later rows were written after the last save), rewritten
 * atomically; then opened for appending. */
static FILE *reopen_log(const char *path, int step) {
    char err[600];
    FILE *in = NULL; /* a missing log starts again from its header */
    if (access(path, F_OK) == 0 &&
        !(in = qkv_fopen_file(path, QKV_MAX_TEXT_FILE, NULL, err, sizeof err)))
        cli_die("train: --resume: %s", err);
    cli_buf text = {0};
    cli_bprintf(&text, "%s", log_header);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    for (int row = 0; in && (n = qkv_getline_max(&line, &cap, in, 4096)) != -1;
         row++) {
        if (n == QKV_LINE_TOO_LONG || (size_t)n != strlen(line))
            cli_die("train: --resume: %s: row %d is not a log row", path,
                    row + 1);
        if (row == 0 && strcmp(line, log_header) == 0) continue;
        if (line[0] < '0' || line[0] > '9') continue; /* no header: add it */
        if (atoi(line) <= step && line[n - 1] == '\n')
            cli_bprintf(&text, "%s", line);
    }
    free(line);
    if (in) fclose(in);
    cli_write_file("train", path, text.s);
    free(text.s);
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
    int save_every, plot, dry_run, profile, force, skip_nonfinite;
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

/* Refuses a run whose memory would not fit: the parameters with their
 * gradients and the optimiser's state, the activations of the costliest
 * training batch (B rows of S + T tokens) and of a validation batch (vB
 * rows of vS + vT), and the data's buffers, against what qkv may use. */
static void check_memory(const qkv_model *m, const qkv_optim_config *oc, int B,
                         int S, int T, int vB, int vS, int vT,
                         double data_bytes) {
    const qkv_model_config *c = &m->cfg;
    double n = (double)m->params.n;
    int moments = oc->kind != QKV_OPTIM_SGD ? 2 : oc->momentum > 0;
    double params = 4.0 * n * (2 + moments) + 4.0 * c->max_len * c->d_model;
    double train = qkv_model_activation_bytes(c, B, S, T, 1);
    double valid = vB ? qkv_model_activation_bytes(c, vB, vS, vT, 0) : 0;
    double arena = train > valid ? train : valid; /* one arena, reset */
    double need = params + arena + data_bytes;
    double have = (double)qkv_memory_limit();
    if (need <= have) return;
    char a[32], b[32], p[32], t[32], v[32];
    cli_die("train: the run needs about %s of memory and qkv may use %s: "
            "parameters and optimiser %s, a step's activations (%d x %d+%d "
            "tokens) %s, validation (%d sequences) %s; lower --batch, "
            "--batch-tokens, --eval-size, --filter-len or the model's size",
            qkv_bytes_str(need, a), qkv_bytes_str(have, b),
            qkv_bytes_str(params, p), B, S, T, qkv_bytes_str(train, t), vB,
            qkv_bytes_str(valid, v));
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
        .force = 0,
        .skip_nonfinite = 0,
    };
    const flag flags[] = {
        {"task", FLAG_STR, &o.task, "copy|reverse|sort",
         "generated task (when no --data)", 0, 0},
        {"vocab", FLAG_INT, &o.vocab, NULL,
         "task vocabulary, specials included", 1, QKV_MAX_VOCAB},
        {"min-len", FLAG_INT, &o.min_len, NULL, "shortest task sequence", 1,
         512},
        {"max-len", FLAG_INT, &o.max_len, NULL,
         "longest task sequence (varying lengths add an eos)", 1, 512},
        {"data", FLAG_STR, &o.data, NULL,
         "training corpus, TSV source<TAB>target", 0, 0},
        {"valid", FLAG_STR, &o.valid, NULL, "validation corpus, TSV", 0, 0},
        {"tok", FLAG_STR, &o.tok, "word|char", "corpus tokenizer", 0, 0},
        {"min-freq", FLAG_INT, &o.min_freq, NULL,
         "rarer tokens of --data become <unk>", 0, INT_MAX},
        {"filter-len", FLAG_INT, &o.filter_len, NULL,
         "drop pairs with a side longer than this, in tokens (0: keep all)", 0,
         QKV_MAX_POSITIONS},
        {"batch-tokens", FLAG_INT, &o.batch_tokens, NULL,
         "corpus batches: tokens per batch (0: --batch x the longest pair)", 0,
         1 << 24},
        {"epochs", FLAG_INT, &o.epochs, NULL,
         "passes over --data; sets --steps (0: use --steps)", 0, 1000000},
        {"model", FLAG_STR, &o.model, "encdec|decoder",
         "encoder-decoder or decoder-only", 0, 0},
        {"N", FLAG_INT, &o.N, NULL, "layers in each stack", 1, 64},
        {"N-enc", FLAG_INT, &o.n_enc, NULL, "encoder layers (0: --N)", 0, 64},
        {"N-dec", FLAG_INT, &o.n_dec, NULL, "decoder layers (0: --N)", 0, 64},
        {"h", FLAG_INT, &o.h, NULL, "attention heads; must divide d-model", 1,
         QKV_MAX_WIDTH},
        {"d-model", FLAG_INT, &o.d_model, NULL, "model width", 1,
         QKV_MAX_WIDTH},
        {"d-ff", FLAG_INT, &o.d_ff, NULL, "feed-forward width", 1,
         QKV_MAX_WIDTH},
        {"dropout", FLAG_FLOAT, &o.dropout, NULL,
         "dropout on sub-layer outputs and embeddings", 0, 0.99},
        {"pos", FLAG_STR, &o.pos, "sin|learned", "positional encoding", 0, 0},
        {"norm", FLAG_STR, &o.norm, "post|pre", "layer norm placement", 0, 0},
        {"act", FLAG_STR, &o.act, "relu|gelu", "feed-forward activation", 0, 0},
        {"label-smoothing", FLAG_FLOAT, &o.label_smoothing, NULL,
         "label smoothing", 0, 1},
        {"optim", FLAG_STR, &o.optim, "adam|adamw|sgd", "optimiser", 0, 0},
        {"lr", FLAG_FLOAT, &o.lr, NULL, "learning rate (noam: the factor)",
         CLI_POSITIVE, FLT_MAX},
        {"weight-decay", FLAG_FLOAT, &o.weight_decay, NULL,
         "adamw decoupled weight decay", 0, FLT_MAX},
        {"schedule", FLAG_STR, &o.schedule, "const|noam|cosine",
         "learning-rate schedule", 0, 0},
        {"warmup", FLAG_INT, &o.warmup, NULL, "warm-up steps (noam, cosine)", 0,
         INT_MAX},
        {"clip", FLAG_FLOAT, &o.clip, NULL,
         "gradient clipping by global norm (0: off)", 0, FLT_MAX},
        {"batch", FLAG_INT, &o.batch, NULL, "sequences per step", 1, 1 << 20},
        {"steps", FLAG_INT, &o.steps, NULL, "training steps", 1, 1000000000},
        {"seed", FLAG_INT, &o.seed, NULL,
         "PCG32 seed for weights, data and dropout", 0, 0},
        {"threads", FLAG_INT, &o.threads, NULL,
         "OpenMP threads (0: the free cores, following the load)", 0,
         cli_max_threads()},
        {"eval-every", FLAG_INT, &o.eval_every, NULL,
         "steps between validations", 1, INT_MAX},
        {"eval-size", FLAG_INT, &o.eval_size, NULL,
         "validation sequences (task: fresh ones; corpus: the first of "
         "--valid)",
         1, 1 << 20},
        {"out", FLAG_STR, &o.out, NULL,
         "run directory (log.csv, config.json, ckpt.safetensors)", 0, 0},
        {"save-every", FLAG_INT, &o.save_every, NULL,
         "steps between checkpoints (0: only at the end)", 0, INT_MAX},
        {"resume", FLAG_STR, &o.resume, NULL,
         "continue the run in this directory where it stopped", 0, 0},
        {"force", FLAG_BOOL, &o.force, NULL,
         "start over in an --out that holds a run (its checkpoint, log and "
         "pictures are removed first)",
         0, 0},
        {"skip-nonfinite", FLAG_INT, &o.skip_nonfinite, NULL,
         "skip up to N steps whose loss or gradient is NaN or inf (0: stop "
         "at the first, exit 3)",
         0, 1000000},
        {"plot", FLAG_BOOL, &o.plot, NULL,
         "draw DIR/loss.png at every validation and at the end (gnuplot)", 0,
         0},
        {"quiet", FLAG_BOOL, &o.quiet, NULL, "print only the final line", 0, 0},
        {"profile", FLAG_BOOL, &o.profile, NULL,
         "print the time per op kind (forward, backward), optimiser and data "
         "at the end",
         0, 0},
        {"dry-run", FLAG_BOOL, &o.dry_run, NULL,
         "check the flags and data, print the model's size, write nothing", 0,
         0},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    const char *usage = "[--task T | --data TRAIN.tsv --valid VALID.tsv] "
                        "[flags]";
    cli_parse("train", usage, flags, nf, argc, argv, 2, NULL, 0, NULL);
    if (o.force && *o.resume)
        cli_die("train: --force starts a run afresh; it cannot go with "
                "--resume");

    /* --resume: the checkpoint holds the run's settings; only these may be
     * given again (more --steps or --epochs extends the run). The directory
     * is locked first: nobody else may write the run while it is read. The
     * stored settings are checked as flags are. */
    qkv_st_file meta = {0};
    cJSON *saved = NULL;
    char err[512], ckpt_path[4200];
    cli_data d = {0};
    qkv_model ck = {0};
    qkv_optim ck_opt = {0};
    qkv_pcg32 ck_data = {0, 1}; /* the checkpoint's data stream */
    int64_t start = 0;
    if (*o.resume) {
        const char *keep[] = {"resume",  "threads",    "quiet",
                              "steps",   "epochs",     "plot",
                              "profile", "save-every", "skip-nonfinite"};
        for (int i = 2; i < argc; i++) {
            if (strncmp(argv[i], "--", 2) != 0) continue;
            int ok = 0;
            size_t len = strcspn(argv[i] + 2, "=");
            for (size_t k = 0; k < sizeof keep / sizeof *keep; k++)
                ok |= strlen(keep[k]) == len &&
                      strncmp(argv[i] + 2, keep[k], len) == 0;
            if (!ok)
                cli_die("train: %.*s cannot change when resuming (the "
                        "checkpoint holds the run's settings)",
                        (int)(len + 2), argv[i]);
        }
        if (strlen(o.resume) > 4000)
            cli_die("train: --resume path is too long");
        cli_check_name("train", "--resume", o.resume);
        cli_run_lock("train", o.resume);
        snprintf(ckpt_path, sizeof ckpt_path, "%s/ckpt.safetensors", o.resume);
        qkv_ckpt_rng r = {"data", &ck_data};
        if (qkv_ckpt_load(ckpt_path, &ck, &ck_opt, &start, &r, 1, &meta, err,
                          sizeof err))
            cli_die("train: --resume: %s", err);
        const char *cli = qkv_st_meta(&meta, "cli");
        if (!cli || !(saved = cJSON_Parse(cli)))
            cli_die("train: --resume: %s was not written by qkv train (no "
                    "settings)",
                    ckpt_path);
        if (cli_data_from_meta(&d, &meta, err, sizeof err))
            cli_die("train: --resume: %s: %s", ckpt_path, err);
        const char *dir = o.resume;
        int steps = o.steps, skip = o.skip_nonfinite;
        /* the thread count is this machine's, not the saved run's */
        cJSON_DeleteItemFromObjectCaseSensitive(saved, "threads");
        if (cli_flags_from_json_err("train", flags, nf, saved, err, sizeof err))
            cli_die("train: --resume: %s: %s", ckpt_path, err + 7);
        int saved_epochs = o.epochs;
        o.epochs = 0;
        o.force = o.dry_run = 0;
        o.skip_nonfinite = skip;
        cli_parse("train", usage, flags, nf, argc, argv, 2, NULL, 0, NULL);
        if (o.epochs == 0 && o.steps == steps) o.epochs = saved_epochs;
        o.out = dir;
        o.resume = dir;
    }

    /* Flags that go together; the ranges were checked by the parser. */
    int corpus = *o.data != 0, decoder = strcmp(o.model, "decoder") == 0;
    if (!corpus && *o.valid)
        cli_die("train: --valid needs --data (a task makes its own)");
    if (!corpus && o.epochs)
        cli_die("train: --epochs needs --data (a task has no epochs)");
    if (strlen(o.out) > 4000) cli_die("train: --out path is too long");
    cli_check_name("train", *o.resume ? "--resume" : "--out", o.out);
    qkv_set_threads(o.threads);

    qkv_model_config c =
        qkv_model_defaults(decoder ? QKV_MODEL_DECODER : QKV_MODEL_ENCDEC);
    corpus_run cr;
    memset(&cr, 0, sizeof cr);
    int B, S, T, vB = 0, vS = 0, vT = 0; /* the costliest batches */
    double data_bytes = 0;
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
        qkv_task_dims(&task, &S, &T);
        B = o.batch;
        vB = o.eval_size, vS = S, vT = T;
        /* the batches' buffers: ids, targets and masks */
        data_bytes = 13.0 * (o.batch + o.eval_size) * (S + T);
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
        /* Positions for sentences up to twice the longest training one, in
         * 64-bit: a 1 MB line of characters is a million tokens. */
        int64_t cost = cli_pair_cost(&cr.train);
        int64_t max_len = 2 * cost + 8;
        if (max_len > QKV_MAX_POSITIONS)
            cli_die("train: --data: the longest pair is %lld tokens; a model "
                    "takes at most %d (give --filter-len to drop longer "
                    "pairs)",
                    (long long)cost, (QKV_MAX_POSITIONS - 8) / 2);
        c.max_len = (int)max_len;
        c.src_vocab = d.sv.size;
        c.tgt_vocab = d.tv.size;
        int64_t budget =
            o.batch_tokens ? o.batch_tokens : (int64_t)o.batch * cost;
        if (budget > 1 << 24)
            cli_die("train: --batch %d x the longest pair (%lld tokens) is "
                    "%lld tokens a batch, more than %d; lower --batch, or "
                    "give --batch-tokens or --filter-len",
                    o.batch, (long long)cost, (long long)budget, 1 << 24);
        if (qkv_batcher_init(&cr.it, &cr.train, (int)budget, err, sizeof err))
            cli_die("train: --batch-tokens: %s", err);
        B = (int)(budget / cost);
        S = decoder ? 0 : ls, T = decoder ? (int)cost : lt + 1;
        data_bytes = 13.0 * (double)budget + 8.0 * (double)cr.train.n_tokens;
        if (*o.valid) {
            int side = decoder ? (c.max_len - 1) / 2 : c.max_len - 1;
            load_pairs("--valid", o.valid, &d, side, side, &cr.valid, o.quiet);
            if (cr.valid.n > o.eval_size) cr.valid.n = o.eval_size;
            int vlong = cli_pair_cost(&cr.valid);
            int vbudget = budget > vlong ? (int)budget : vlong;
            if (qkv_batcher_init(&cr.vit, &cr.valid, vbudget, err, sizeof err))
                cli_die("train: --valid: %s", err);
            qkv_corpus_batch_init(&cr.vbatch, vbudget);
            cr.has_valid = 1;
            /* decoding runs to twice the reference, within the positions */
            vB = vbudget / vlong;
            vS = decoder ? 0 : cr.valid.longest_src;
            vT = 2 * vlong + 8 < c.max_len ? 2 * vlong + 8 : c.max_len;
            data_bytes +=
                13.0 * (double)vbudget + 8.0 * (double)cr.valid.n_tokens;
        }
        qkv_corpus_batch_init(&cr.batch, (int)budget);
        if (o.epochs) {
            int64_t steps = (int64_t)o.epochs * cr.it.n_batches;
            if (steps > 1000000000)
                cli_die("train: --epochs %d x %d batches an epoch is %lld "
                        "steps, more than 1000000000",
                        o.epochs, cr.it.n_batches, (long long)steps);
            o.steps = (int)steps;
        }
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

    /* The model is declared (checked, no memory yet), then sized against
     * the machine before anything is allocated. */
    qkv_model m;
    if (qkv_model_declare(&m, &c, err, sizeof err)) cli_die("train: %s", err);
    qkv_optim_config oc =
        qkv_optim_defaults(strcmp(o.optim, "sgd") == 0     ? QKV_OPTIM_SGD
                           : strcmp(o.optim, "adamw") == 0 ? QKV_OPTIM_ADAMW
                                                           : QKV_OPTIM_ADAM);
    if (oc.kind == QKV_OPTIM_ADAMW) oc.weight_decay = o.weight_decay;
    check_memory(&m, &oc, B, S, T, vB, vS, vT, data_bytes);

    qkv_optim opt;
    if (*o.resume) {
        /* The stored settings must give back the checkpoint's own model:
         * vocabularies, task and sizes agree with its tensors. */
        if (qkv_model_config_diff(&ck.cfg, &c, 1, err, sizeof err))
            cli_die("train: --resume: %s: its settings do not give its own "
                    "model (%s%s)",
                    ckpt_path, err, corpus ? "; was the corpus changed?" : "");
        if (ck_opt.n && ck_opt.cfg.kind != oc.kind)
            cli_die("train: --resume: %s: its optimiser is not the --optim "
                    "%s of its settings",
                    ckpt_path, o.optim);
        qkv_model_free(&m);
        m = ck; /* the checkpoint's weights and dropout stream */
        if (ck_opt.n)
            opt = ck_opt;
        else
            qkv_optim_init(&opt, &oc, &m.params);
    } else {
        qkv_model_alloc(&m, (uint64_t)o.seed);
        qkv_optim_init(&opt, &oc, &m.params);
    }
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
    long tokens = 0;
    double secs0 = 0;
    int served = 0, skipped = 0;
    if (*o.resume) { /* data stream, position and counters */
        *rngs[0].rng = ck_data;
        const char *t = qkv_st_meta(&meta, "tokens"),
                   *sec = qkv_st_meta(&meta, "seconds"),
                   *ep = qkv_st_meta(&meta, "epoch"),
                   *bt = qkv_st_meta(&meta, "batch"),
                   *sk = qkv_st_meta(&meta, "skipped");
        tokens = t ? atol(t) : 0;
        secs0 = sec ? atof(sec) : 0;
        cr.epoch = ep ? atoi(ep) : 0;
        served = bt ? atoi(bt) : 0;
        skipped = sk ? atoi(sk) : 0;
        if (tokens < 0 || !(secs0 >= 0 && secs0 < 1e12) || skipped < 0)
            cli_die("train: --resume: %s: its token count, time or skipped "
                    "steps are not counts",
                    ckpt_path);
        if (corpus && (!ep || !bt || served < 0 || served > cr.it.n_batches ||
                       cr.epoch < 1))
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

    if (o.dry_run) { /* every check above passed; write nothing */
        printf("qkv train --dry-run: %s, %s N=%d+%d h=%d d_model=%d, %zu "
               "parameters, %d steps: the flags and data are fine\n",
               corpus ? o.data : o.task, o.model, c.n_enc, c.n_dec, c.heads,
               c.d_model, m.params.n, o.steps);
        exit(0);
    }

    /* Only now is anything written: the directory is made and locked, an
     * old run in it is kept (or, with --force, removed), then config.json
     * and the log's header are written atomically. */
    char *cfg = cli_flags_json(flags, nf);
    char path[4200];
    snprintf(ckpt_path, sizeof ckpt_path, "%s/ckpt.safetensors", o.out);
    if (!*o.resume) {
        cli_make_dirs("train", o.out);
        cli_run_lock("train", o.out);
        if (cli_run_exists(o.out) && !o.force)
            cli_die("train: --out %s already holds a run; continue it with "
                    "--resume %s, or start it over with --force",
                    o.out, o.out);
        if (o.force) cli_run_clear("train", o.out);
    }
    snprintf(path, sizeof path, "%s/config.json", o.out);
    cli_write_file("train", path, cfg);
    snprintf(path, sizeof path, "%s/log.csv", o.out);
    FILE *log;
    if (*o.resume) {
        log = reopen_log(path, (int)start);
    } else {
        cli_write_file("train", path, log_header);
        log = fopen(path, "a");
        if (!log) cli_die("train: cannot write %s: %s", path, strerror(errno));
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
    int64_t last_save = *o.resume ? start : -1; /* the last good checkpoint */
    int diverged = 0;
    float norm = 0;
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
        /* The gradient norm comes free with clipping; without it (and
         * without --skip-nonfinite), a NaN gradient shows in the next loss,
         * or in the weights at a save. */
        norm = o.clip > 0             ? qkv_clip_grad_norm(&m.params, o.clip)
               : o.skip_nonfinite > 0 ? qkv_grad_norm(&m.params)
                                      : 0;
        PHASE(PH_CLIP);
        float lr = qkv_schedule_lr(&sched, step);
        int bad = !isfinite(train_loss) || !isfinite(norm);
        if (bad && skipped < o.skip_nonfinite)
            skipped++; /* the step is skipped: no update */
        else if (bad)
            diverged = 1;
        else
            qkv_optim_step(&opt, &m.params, lr);
        PHASE(PH_OPTIM);
        tokens += batch_tokens(bv);
        int report = step % o.eval_every == 0 || step == o.steps;
        int eval = do_valid && report && !diverged;
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
        if (diverged) break;
        int save = step == o.steps || interrupted ||
                   (o.save_every && step % o.save_every == 0);
        if (save && !qkv_params_finite(&m.params)) {
            diverged = 1; /* weights gone bad without a bad loss yet */
            break;
        }
        if (save) { /* the log first, so it never lags the checkpoint */
            fflush(log);
            char tok[32], sec[32], ep[16], bt[16], sk[16];
            snprintf(tok, sizeof tok, "%ld", tokens);
            snprintf(sec, sizeof sec, "%.3f", secs);
            snprintf(ep, sizeof ep, "%d", cr.epoch);
            snprintf(bt, sizeof bt, "%d", cr.it.next);
            snprintf(sk, sizeof sk, "%d", skipped);
            const char *keys[9] = {"cli",   "tokens", "seconds",
                                   "epoch", "batch",  "skipped"};
            const char *vals[9] = {cfg, tok, sec, ep, bt, sk};
            for (int k = 0; k < n_dmeta; k++)
                keys[6 + k] = dkeys[k], vals[6 + k] = dvals[k];
            if (qkv_ckpt_save(ckpt_path, &m, &opt, step, rngs, 1, keys, vals,
                              6 + n_dmeta, err, sizeof err))
                cli_die("train: %s", err);
            last_save = step;
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
    if (diverged) {
        char kept[4400];
        if (last_save >= 0)
            snprintf(kept, sizeof kept,
                     "the last good checkpoint (step %lld) is kept in %s",
                     (long long)last_save, ckpt_path);
        else
            snprintf(kept, sizeof kept, "no checkpoint was saved before it");
        char why[128];
        if (!isfinite(train_loss))
            snprintf(why, sizeof why, "the loss is %s",
                     isnan(train_loss) ? "NaN" : "infinite");
        else if (!isfinite(norm))
            snprintf(why, sizeof why, "the gradient norm is %s",
                     isnan(norm) ? "NaN" : "infinite");
        else
            snprintf(why, sizeof why, "the weights are no longer finite");
        cli_warn("train: diverged at step %d: %s (%d earlier step%s "
                 "skipped, --skip-nonfinite %d); %s; lower --lr or raise "
                 "--warmup",
                 step, why, skipped, skipped == 1 ? "" : "s", o.skip_nonfinite,
                 kept);
    } else if (interrupted)
        cli_warn("interrupted at step %d; checkpoint saved in %s "
                 "(continue with: qkv train --resume %s)",
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
    if (skipped && !diverged)
        cli_warn("train: %d step%s skipped for a loss or gradient that "
                 "was not finite (--skip-nonfinite %d)",
                 skipped, skipped == 1 ? "" : "s", o.skip_nonfinite);
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
    return diverged ? EXIT_DIVERGED : interrupted ? 130 : 0;
}
