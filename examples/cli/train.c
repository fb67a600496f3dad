/* train.c - `qkv train`: train on a generated task or a TSV corpus.
 *
 *   qkv train --task copy --N 2 --h 4 --steps 800 --out runs/copy
 *   qkv train --data data/corpora/dates/train.tsv \
 *             --valid data/corpora/dates/valid.tsv --tok char --out runs/dates
 *   qkv train --model decoder --text data/text/gnu-licenses.txt --tok char \
 *             --block 128 --out runs/text
 *
 * Writes DIR/config.json (the settings that apply), DIR/log.csv (one row per
 * step; the validation columns at every --eval-every: val_acc the exact
 * match in percent (token accuracy for a text), val_bleu, for a corpus, the
 * BLEU of eval.h on detokenized text, sacreBLEU's default, 0..100) and
 * DIR/ckpt.safetensors (every
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

#include "bf16.h"
#include "cli.h"
#include "eval.h"
#include "text.h"
#include "trainer.h"

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

/* The settings of a run that are neither the model's nor the optimiser's
 * (those are qkv_model_config and qkv_optim_config, whose flags come from
 * their tables, config.h). */
typedef struct train_opts {
    const char *data, *valid, *out, *resume;
    int task, tok,
        schedule; /* enums: qkv_task_kind, qkv_tok, qkv_schedule_kind */
    int vocab, min_len, max_len, min_freq, filter_len, batch_tokens, epochs;
    int N, n_enc, n_dec;
    float label_smoothing, lr, clip, weight_decay;
    int warmup, batch, steps, seed, threads, eval_every, eval_size, quiet;
    int save_every, plot, dry_run, profile, force, skip_nonfinite, accum;
    const char *config; /* --config: a previous run's config.json */
    int metric;         /* 0 val_loss, 1 val_acc, 2 val_bleu */
    int keep_best, patience;
    int precision;                 /* qkv_precision */
    const char *text, *valid_text; /* --text: a language model of a text */
    int block;
    int spm_vocab, spm_type; /* --tok spm: pieces, 0 unigram / 1 bpe */
    const char *spm_model;   /* --tok spm: a model to use, not train */
} train_opts;

/* The flags write into o, mc (the model's) and oc (the optimiser's);
 * config.json and --resume read them back. */
static train_opts o;
static qkv_model_config mc;
static qkv_optim_config oc;
static const train_opts defaults = {
    .task = QKV_TASK_COPY,
    .tok = QKV_TOK_WORD,
    .schedule = QKV_SCHEDULE_COSINE,
    .data = "",
    .valid = "",
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
    .accum = 1,
    .config = "",
    .text = "",
    .valid_text = "",
    .block = 64,
    .spm_model = "",
};

static const flag train_flags[] = {
    {"task", FLAG_ENUM, &o.task, "copy|reverse|sort",
     "generated task (when no --data)", 0, 0},
    {"vocab", FLAG_INT, &o.vocab, NULL, "task vocabulary, specials included", 1,
     QKV_MAX_VOCAB},
    {"min-len", FLAG_INT, &o.min_len, NULL, "shortest task sequence", 1, 512},
    {"max-len", FLAG_INT, &o.max_len, NULL,
     "longest task sequence (varying lengths add an eos)", 1, 512},
    {"data", FLAG_STR, &o.data, NULL, "training corpus, TSV source<TAB>target",
     0, 0},
    {"valid", FLAG_STR, &o.valid, NULL, "validation corpus, TSV", 0, 0},
    {"tok", FLAG_ENUM, &o.tok, "word|char|spm",
     "corpus tokenizer (spm: SentencePiece subwords of both sides)", 0, 0},
    {"spm-vocab", FLAG_INT, &o.spm_vocab, NULL,
     "--tok spm: train a model of N pieces on --data", 0, QKV_MAX_VOCAB},
    {"spm-type", FLAG_ENUM, &o.spm_type, "unigram|bpe",
     "--tok spm: the model --spm-vocab trains", 0, 0},
    {"spm-model", FLAG_STR, &o.spm_model, NULL,
     "--tok spm: use this SentencePiece model file instead of training one", 0,
     0},
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
    {"text", FLAG_STR, &o.text, NULL,
     "a plain UTF-8 text to train a language model on (--model decoder): "
     "random windows of --block tokens",
     0, 0},
    {"valid-text", FLAG_STR, &o.valid_text, NULL,
     "validation text for --text (none: the last 10% of --text, held out)", 0,
     0},
    {"block", FLAG_INT, &o.block, NULL,
     "--text: tokens a window holds (the model's positions)", 1,
     QKV_MAX_POSITIONS},
    {"N", FLAG_INT, &o.N, NULL, "layers in each stack", 1, 64},
    {"N-enc", FLAG_INT, &o.n_enc, NULL, "encoder layers (0: --N)", 0, 64},
    {"N-dec", FLAG_INT, &o.n_dec, NULL, "decoder layers (0: --N)", 0, 64},
    {"label-smoothing", FLAG_FLOAT, &o.label_smoothing, NULL, "label smoothing",
     0, 1},
    {"lr", FLAG_FLOAT, &o.lr, NULL, "learning rate (noam: the factor)",
     CLI_POSITIVE, FLT_MAX},
    {"weight-decay", FLAG_FLOAT, &o.weight_decay, NULL,
     "adamw decoupled weight decay", 0, FLT_MAX},
    {"schedule", FLAG_ENUM, &o.schedule, "const|noam|cosine",
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
     0 /* cli_max_threads(), set at run time */},
    {"eval-every", FLAG_INT, &o.eval_every, NULL, "steps between validations",
     1, INT_MAX},
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
    {"config", FLAG_STR, &o.config, NULL,
     "start from the settings of a previous run's config.json (flags given "
     "here win)",
     0, 0},
    {"metric", FLAG_ENUM, &o.metric, "val_loss|val_acc|val_bleu",
     "the validation figure --keep-best and --patience follow", 0, 0},
    {"keep-best", FLAG_BOOL, &o.keep_best, NULL,
     "keep DIR/best.safetensors, the checkpoint at the best --metric so far", 0,
     0},
    {"patience", FLAG_INT, &o.patience, NULL,
     "stop after N validations without a better --metric (0: never)", 0,
     1000000},
    {"accum", FLAG_INT, &o.accum, NULL,
     "gradient accumulation: each step draws N batches' worth and runs them "
     "N micro-batches at a time (the update of one N-times-larger batch)",
     1, 1024},
    {"precision", FLAG_ENUM, &o.precision, "fp32|bf16",
     "the linear layers' matrix products: fp32, or bf16 operands with fp32 "
     "sums (as PyTorch's autocast; weights, gradients and Adam stay fp32)",
     0, 0},
    {"plot", FLAG_BOOL, &o.plot, NULL,
     "draw DIR/loss.png at every validation and at the end (gnuplot)", 0, 0},
    {"quiet", FLAG_BOOL, &o.quiet, NULL, "print only the final line", 0, 0},
    {"profile", FLAG_BOOL, &o.profile, NULL,
     "print the time per op kind (forward, backward), optimiser and data "
     "at the end",
     0, 0},
    {"dry-run", FLAG_BOOL, &o.dry_run, NULL,
     "check the flags and data, print the model's size, write nothing", 0, 0},
};
#define N_TRAIN ((int)(sizeof train_flags / sizeof *train_flags))

/* Every flag of qkv train: its own, then the model's and the optimiser's
 * from their tables (made by make_flags). */
static flag flags[N_TRAIN + 32];
static int n_flags;
#define N_FLAGS n_flags

/* The flags, each pointing at its setting, with the defaults in place (the
 * model's as qkv train has them: a narrower feed-forward, no dropout). */
static void make_flags(void) {
    o = defaults;
    mc = qkv_model_defaults(QKV_MODEL_ENCDEC);
    mc.d_ff = 128;
    mc.dropout = 0.0f;
    oc = qkv_optim_defaults(QKV_OPTIM_ADAM);
    memcpy(flags, train_flags, sizeof train_flags);
    n_flags = N_TRAIN;
    int room = (int)(sizeof flags / sizeof *flags);
    n_flags += cli_flags_from_fields(flags + n_flags, room - n_flags,
                                     qkv_model_fields, qkv_model_n_fields, &mc);
    n_flags += cli_flags_from_fields(flags + n_flags, room - n_flags,
                                     qkv_optim_fields, qkv_optim_n_fields, &oc);
}
static const char usage[] = "[--task T | --data TRAIN.tsv --valid VALID.tsv] "
                            "[flags]";

/* A run as it is set up, trained and reported. */
typedef struct train_run {
    int corpus, decoder, resume;
    int text;                 /* --text */
    qkv_text ttext, vtext;    /* --text, --valid-text */
    qkv_text_ids tids, vids;  /* their ids: training, validation */
    cli_data d;               /* the task, or the corpus's vocabularies */
    qkv_pairs train, valid;   /* corpus only */
    qkv_source *data, *vdata; /* vdata NULL: no validation */
    int vB, vS, vT;           /* the costliest validation batch */
    double data_bytes;        /* the data's buffers */
    qkv_model_config c;
    qkv_trainer t;
    qkv_st_file meta; /* --resume: the checkpoint's metadata */
    cJSON *saved;     /* --resume: its settings */
    int64_t start;    /* --resume: the steps it had */
    char ckpt[4200], log_path[4200];
    char *cfg; /* every flag, as JSON: the checkpoint's "cli" */
    const char *dkeys[CLI_DATA_META];
    char *dvals[CLI_DATA_META];
    int n_dmeta;
    FILE *log;
    /* how it went */
    double vloss, vacc, vbleu, secs0;
    int64_t last_save; /* the last good checkpoint's step, or -1 */
    int step, diverged;
    int profile_from; /* --profile: the steps after this one are timed */
    /* --metric's best so far, its step, and validations since (-1: none) */
    double best;
    int best_step, since, stopped_early;
} train_run;

static const char *task_name(void) {
    static const char *const names[] = {"copy", "reverse", "sort"};
    return names[o.task];
}

static void read_best(train_run *r);

static flag *find_flag(const char *name) {
    for (int i = 0; i < N_FLAGS; i++)
        if (strcmp(flags[i].name, name) == 0) return &flags[i];
    return NULL;
}

/* Flags a --resume may give again: the checkpoint holds the rest. */
static void check_resume_flags(int argc, char **argv) {
    static const char *const keep[] = {
        "resume",         "threads",  "quiet",    "steps",
        "epochs",         "plot",     "profile",  "save-every",
        "skip-nonfinite", "patience", "precision"};
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
}

/* The --spm-* flags given by hand, and only with --tok spm. */
static void check_spm_flags(int argc, char **argv) {
    for (int i = 2; i < argc; i++)
        if (o.tok != QKV_TOK_SPM && strncmp(argv[i], "--spm-", 6) == 0)
            cli_die("train: %.*s needs --tok spm", (int)strcspn(argv[i], "="),
                    argv[i]);
    if (o.tok != QKV_TOK_SPM || (!*o.data && !*o.text)) return;
    if (*o.spm_model && o.spm_vocab)
        cli_die("train: give --spm-vocab (train a model) or --spm-model (use "
                "one), not both");
    if (!*o.spm_model && o.spm_vocab < QKV_N_SPECIAL + 1)
        cli_die("train: --tok spm needs --spm-vocab N (pieces to train, N > "
                "%d) or --spm-model FILE",
                QKV_N_SPECIAL);
}

/* --resume: the settings stored in the checkpoint, checked as flags are,
 * then the flags given again on top. The directory is locked first: nobody
 * else may write the run while it is read. */
static void read_settings(train_run *r, int argc, char **argv) {
    char err[512];
    check_resume_flags(argc, argv);
    if (strlen(o.resume) > 4000) cli_die("train: --resume path is too long");
    cli_check_name("train", "--resume", o.resume);
    cli_run_lock("train", o.resume);
    snprintf(r->ckpt, sizeof r->ckpt, "%s/ckpt.safetensors", o.resume);
    qkv_model ck = {0};
    if (qkv_ckpt_load(r->ckpt, &ck, NULL, &r->start, NULL, 0, &r->meta, err,
                      sizeof err))
        cli_die("train: --resume: %s", err);
    qkv_model_free(&ck); /* read again, with the rest, by the trainer */
    const char *cli = qkv_st_meta(&r->meta, "cli");
    if (!cli || !(r->saved = cJSON_Parse(cli)))
        cli_die("train: --resume: %s was not written by qkv train (no "
                "settings)",
                r->ckpt);
    if (cli_data_from_meta(&r->d, &r->meta, err, sizeof err))
        cli_die("train: --resume: %s: %s", r->ckpt, err);
    const char *dir = o.resume;
    int steps = o.steps, skip = o.skip_nonfinite;
    /* the thread count is this machine's, not the saved run's */
    cJSON_DeleteItemFromObjectCaseSensitive(r->saved, "threads");
    if (cli_flags_from_json_err("train", flags, N_FLAGS, r->saved, err,
                                sizeof err))
        cli_die("train: --resume: %s: %s", r->ckpt, err + 7);
    int saved_epochs = o.epochs;
    o.epochs = 0;
    o.force = o.dry_run = 0;
    o.skip_nonfinite = skip;
    cli_parse("train", usage, flags, N_FLAGS, argc, argv, 2, NULL, 0, NULL);
    if (o.epochs == 0 && o.steps == steps) o.epochs = saved_epochs;
    o.out = dir;
    o.resume = dir;
}

/* The flags, then (--resume) the stored settings; flags that must go
 * together. The ranges were checked by the parser. */
/* --config FILE: the settings a previous run wrote (config.json), checked
 * as flags are, then the flags on the command line again, which win. What
 * only makes sense given by hand (--resume, --force, --dry-run) is not
 * taken from the file. */
static void apply_config(int argc, char **argv) {
    char err[600];
    const char *path = o.config;
    FILE *f = qkv_fopen_file(path, 1 << 20, NULL, err, sizeof err);
    if (!f) cli_die("train: --config: %s", err);
    char *text = qkv_malloc((1 << 20) + 1, "config");
    size_t n = fread(text, 1, 1 << 20, f);
    text[n] = 0;
    fclose(f);
    static cJSON *j; /* string settings point into it for the whole run */
    cJSON_Delete(j);
    j = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(j))
        cli_die("train: --config: %s is not a JSON object (a config.json "
                "that qkv train wrote)",
                path);
    static const char *const by_hand[] = {"config", "resume", "force",
                                          "dry-run"};
    for (size_t i = 0; i < sizeof by_hand / sizeof *by_hand; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(j, by_hand[i]);
    if (cli_flags_from_json_err("train", flags, N_FLAGS, j, err, sizeof err))
        cli_die("train: --config: %s: %s", path, err + 7);
    cli_parse("train", usage, flags, N_FLAGS, argc, argv, 2, NULL, 0, NULL);
}

/* --text: the flags that go with it, and those that do not. */
static void check_text_flags(const train_run *r) {
    if (!r->text) {
        if (*o.valid_text) cli_die("train: --valid-text needs --text");
        return;
    }
    if (r->corpus || *o.valid)
        cli_die("train: --text trains on a plain text; it cannot go with "
                "--data or --valid (TSV pairs)");
    if (!r->decoder)
        cli_die("train: --text trains a language model: give --model "
                "decoder");
    if (o.epochs)
        cli_die("train: --epochs needs --data; a --text run counts --steps "
                "(its windows are drawn at random)");
    if (o.metric == 2)
        cli_die("train: --metric val_bleu: a --text run has no BLEU (use "
                "val_loss or val_acc)");
}

/* The text at path (flag names it) into t; a bad file ends the run. */
static void load_text(const char *flag_name, const char *path, qkv_text *t) {
    char err[600];
    cli_check_name("train", flag_name, path);
    if (qkv_text_load(path, t, err, sizeof err))
        cli_die("train: %s: %s", flag_name, err);
}

/* --tok spm: the model of --spm-model, or one trained (--spm-vocab,
 * --spm-type) on both sides of a corpus tc or, tc NULL, on a text's lines;
 * both vocabularies share it. */
static void spm_vocabs(cli_data *d, const qkv_corpus *tc, const char *text,
                       size_t n);

/* A plain text: random windows of --block + 1 tokens of it to train on;
 * the first --eval-size consecutive windows of --valid-text, or of the
 * text's last tenth (held out, as nanoGPT does), to validate on. */
static void text_data(train_run *r) {
    char err[600];
    cli_data *d = &r->d;
    load_text("--text", o.text, &r->ttext);
    size_t cut = r->ttext.n;
    if (*o.valid_text)
        load_text("--valid-text", o.valid_text, &r->vtext);
    else
        cut = qkv_text_split(&r->ttext, 0.9);
    if (!r->resume) { /* else the checkpoint's vocabulary */
        d->corpus = d->text = d->decoder_only = 1;
        d->tok = (qkv_tok)o.tok;
        if (d->tok == QKV_TOK_SPM) {
            spm_vocabs(d, NULL, r->ttext.s, cut);
        } else {
            qkv_text_vocab(&d->sv, r->ttext.s, cut, d->tok);
            qkv_text_vocab(&d->tv, r->ttext.s, cut, d->tok);
        }
    }
    const qkv_text *vt = *o.valid_text ? &r->vtext : &r->ttext;
    size_t v0 = *o.valid_text ? 0 : cut;
    qkv_text_encode(&r->tids, &d->sv, d->tok, r->ttext.s, cut);
    qkv_text_encode(&r->vids, &d->sv, d->tok, vt->s + v0, vt->n - v0);
    r->c.max_len = o.block;
    r->c.src_vocab = r->c.tgt_vocab = d->sv.size;
    r->data = qkv_text_source(&r->tids, o.batch * o.accum, o.block,
                              (uint64_t)o.seed, 0, 0, err, sizeof err);
    if (!r->data) cli_die("train: --text: %s: %s; lower --block", o.text, err);
    r->vdata = qkv_text_source(&r->vids, o.batch, o.block, 0, 1, o.eval_size,
                               err, sizeof err);
    if (!r->vdata && *o.valid_text)
        cli_die("train: --valid-text: %s: %s; lower --block", o.valid_text,
                err);
    if (!r->vdata)
        cli_die("train: --text: %s: its last 10%%, held out to validate on, "
                "has %s; give --valid-text or lower --block",
                o.text, err);
    r->vB = r->vdata->max_B, r->vS = 0, r->vT = o.block;
    r->data_bytes = (double)r->ttext.n + (double)r->vtext.n +
                    4.0 * (double)(r->tids.n + r->vids.n) +
                    9.0 * o.block * (o.batch * o.accum + r->vB);
    if (o.quiet) return;
    int64_t vw = qkv_text_windows(&r->vids, o.block, o.eval_size);
    printf("%s: %lld tokens to train on (vocabulary %d); validation: %s%s, "
           "%lld tokens (%.2f%% unknown), the first %lld windows of %d\n",
           o.text, (long long)r->tids.n, d->sv.size,
           *o.valid_text ? o.valid_text : "the held-out last 10% of ",
           *o.valid_text ? "" : o.text, (long long)r->vids.n,
           r->vids.n ? 100.0 * (double)r->vids.n_unk / (double)r->vids.n : 0.0,
           (long long)vw, o.block);
}

/* --text validation: teacher-forced loss and token accuracy, no decoding
 * (a window has no answer to match: max_out 0). */
static void text_validate(train_run *r) {
    qkv_eval_opts eo = {.eos = QKV_EOS, .beam = 1, .unk = QKV_UNK};
    qkv_scores s;
    memset(&s, 0, sizeof s);
    const qkv_batch *b;
    for (qkv_source_rewind(r->vdata); (b = qkv_source_next(r->vdata));)
        qkv_eval_batch(&r->t.model, &r->t.graph, b, &eo, 0, &s, NULL);
    r->vloss = qkv_scores_loss(&s);
    r->vacc = 100.0 * qkv_scores_accuracy(&s); /* percent, as exact match */
    r->vbleu = NAN;
}

/* --text: a short sample at each validation, from a fixed seed, starting
 * after a newline (or the text's first token), each line shown as "  | ". */
static void print_sample(train_run *r) {
    enum { SAMPLE = 120 };
    int32_t seq[SAMPLE + 1];
    int32_t nl = qkv_vocab_find(&r->d.sv, "\n", 1);
    seq[0] = nl != QKV_UNK ? nl : r->tids.ids[0];
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 1, 7);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return;
    cli_generate(&r->t.model, &r->t.graph, &r->d, seq, 1, SAMPLE, 0.8f, 0, 0.0f,
                 0, &rng, f);
    fclose(f);
    printf("%ssample (temperature 0.8):\n  | ", isatty(1) ? "\n" : "");
    for (const char *c = text; *c; c++)
        if (*c == '\n')
            printf("\n  | ");
        else
            putchar(*c);
    printf("\n");
    free(text);
}

static void parse_flags(train_run *r, int argc, char **argv) {
    make_flags();
    find_flag("threads")->hi = cli_max_threads();
    cli_parse("train", usage, flags, N_FLAGS, argc, argv, 2, NULL, 0, NULL);
    if (*o.config && *o.resume)
        cli_die("train: --config starts a run from settings; it cannot go "
                "with --resume (the checkpoint holds the run's settings)");
    if (*o.config) apply_config(argc, argv);
    if (o.force && *o.resume)
        cli_die("train: --force starts a run afresh; it cannot go with "
                "--resume");
    r->resume = *o.resume != 0;
    r->last_save = -1;
    if (r->resume) read_settings(r, argc, argv);
    if (!r->resume) check_spm_flags(argc, argv);
    r->corpus = *o.data != 0;
    r->decoder = mc.kind == QKV_MODEL_DECODER;
    r->text = *o.text != 0;
    check_text_flags(r);
    if (!r->corpus && *o.valid)
        cli_die("train: --valid needs --data (a task makes its own)");
    if (!r->corpus && o.epochs)
        cli_die("train: --epochs needs --data (a task has no epochs)");
    if (!r->corpus && o.metric == 2)
        cli_die("train: --metric val_bleu needs --data (a task has no BLEU)");
    r->best_step = -1;
    if (strlen(o.out) > 4000) cli_die("train: --out path is too long");
    cli_check_name("train", r->resume ? "--resume" : "--out", o.out);
    qkv_set_threads(o.threads);
    if (qkv_comm_rank() != 0) o.quiet = 1, o.plot = 0; /* rank 0 speaks */
}

/* A generated task: fresh batches to train on, one fixed batch to
 * validate on. */
static void task_data(train_run *r) {
    char err[512];
    qkv_task task = {(qkv_task_kind)o.task,  o.vocab,   o.min_len, o.max_len,
                     o.min_len != o.max_len, r->decoder};
    if (qkv_task_check(&task, err, sizeof err)) cli_die("train: %s", err);
    r->d.task = task;
    r->d.decoder_only = r->decoder;
    r->c.src_vocab = r->c.tgt_vocab = o.vocab;
    r->c.max_len = 2 * o.max_len + 2;
    r->data = qkv_task_source(&task, o.batch * o.accum, (uint64_t)o.seed, 0);
    r->vdata = qkv_task_source(&task, o.eval_size, (uint64_t)o.seed, 1);
    r->vB = o.eval_size, r->vS = r->data->max_S, r->vT = r->data->max_T;
    /* the batches' buffers: ids, targets and masks */
    r->data_bytes = 13.0 * (o.batch * o.accum + o.eval_size) *
                    (r->data->max_S + r->data->max_T);
}

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

static void spm_vocabs(cli_data *d, const qkv_corpus *tc, const char *text,
                       size_t n) {
    char err[600];
    const char *type = o.spm_type ? "bpe" : "unigram";
    if (*o.spm_model &&
        qkv_vocab_load_spm(&d->sv, o.spm_model, err, sizeof err))
        cli_die("train: --spm-model: %s", err);
    if (!*o.spm_model &&
        (tc ? qkv_vocab_train_spm(&d->sv, tc, QKV_SIDE_BOTH, type, o.spm_vocab,
                                  err, sizeof err)
            : qkv_text_vocab_spm(&d->sv, text, n, type, o.spm_vocab, err,
                                 sizeof err)))
        cli_die("train: --spm-vocab %d: %s", o.spm_vocab, err);
    size_t len;
    const void *bytes = qkv_spm_bytes(d->sv.spm, &len);
    if (qkv_vocab_from_spm(&d->tv, bytes, len, "spm", err, sizeof err))
        cli_die("train: %s", err);
}

/* A fresh corpus run's vocabularies, from the training split. */
static void build_vocabs(train_run *r) {
    qkv_corpus tc;
    char err[512];
    if (qkv_corpus_load(o.data, &tc, err, sizeof err))
        cli_die("train: --data: %s%s", err,
                strstr(err, "has no tab") ? "; a plain text? --model decoder "
                                            "--text FILE trains on one"
                                          : "");
    cli_data *d = &r->d;
    d->corpus = 1;
    d->decoder_only = r->decoder;
    d->tok = (qkv_tok)o.tok;
    if (d->tok == QKV_TOK_SPM) {
        spm_vocabs(d, &tc, NULL, 0);
        qkv_corpus_free(&tc);
        return;
    }
    qkv_vocab_build(&d->sv, &tc, r->decoder ? QKV_SIDE_BOTH : QKV_SIDE_SRC,
                    d->tok, o.min_freq);
    qkv_vocab_build(&d->tv, &tc, r->decoder ? QKV_SIDE_BOTH : QKV_SIDE_TGT,
                    d->tok, o.min_freq);
    qkv_corpus_free(&tc);
}

/* The first --eval-size pairs of --valid, in order, batched as training's
 * (or as the longest pair, if longer). */
static void corpus_valid(train_run *r, int budget) {
    char err[512];
    int side = r->decoder ? (r->c.max_len - 1) / 2 : r->c.max_len - 1;
    load_pairs("--valid", o.valid, &r->d, side, side, &r->valid, o.quiet);
    if (r->valid.n > o.eval_size) r->valid.n = o.eval_size;
    int vlong = qkv_pairs_cost(&r->valid);
    int vbudget = budget > vlong ? budget : vlong;
    r->vdata = qkv_corpus_source(&r->valid, vbudget, 0, 1, err, sizeof err);
    if (!r->vdata) cli_die("train: --valid: %s", err);
    /* decoding runs to twice the reference, within the positions */
    r->vB = vbudget / vlong;
    r->vS = r->decoder ? 0 : r->valid.longest_src;
    r->vT = 2 * vlong + 8 < r->c.max_len ? 2 * vlong + 8 : r->c.max_len;
    r->data_bytes += 13.0 * (double)vbudget + 8.0 * (double)r->valid.n_tokens;
}

/* A TSV corpus: shuffled epochs of batches by token budget. */
static void corpus_data(train_run *r) {
    char err[512];
    if (!r->resume) build_vocabs(r);
    load_pairs("--data", o.data, &r->d, o.filter_len, o.filter_len, &r->train,
               o.quiet);
    /* Positions for sentences up to twice the longest training one, in
     * 64-bit: a 1 MB line of characters is a million tokens. */
    int64_t cost = qkv_pairs_cost(&r->train), max_len = 2 * cost + 8;
    if (max_len > QKV_MAX_POSITIONS)
        cli_die("train: --data: the longest pair is %lld tokens; a model "
                "takes at most %d (give --filter-len to drop longer pairs)",
                (long long)cost, (QKV_MAX_POSITIONS - 8) / 2);
    r->c.max_len = (int)max_len;
    r->c.src_vocab = r->d.sv.size;
    r->c.tgt_vocab = r->d.tv.size;
    int64_t budget = o.batch_tokens ? o.batch_tokens : (int64_t)o.batch * cost;
    budget *= o.accum; /* drawn at once, run --accum micro-batches a step */
    if (budget > 1 << 24)
        cli_die("train: --batch %d x the longest pair (%lld tokens) x --accum "
                "%d is %lld tokens a batch, more than %d; lower --batch, or "
                "give --batch-tokens or --filter-len",
                o.batch, (long long)cost, o.accum, (long long)budget, 1 << 24);
    r->data = qkv_corpus_source(&r->train, (int)budget, (uint64_t)o.seed, 0,
                                err, sizeof err);
    if (!r->data) cli_die("train: --batch-tokens: %s", err);
    r->data_bytes = 13.0 * (double)budget + 8.0 * (double)r->train.n_tokens;
    if (*o.valid) corpus_valid(r, (int)(budget / o.accum));
    if (o.epochs) {
        int64_t steps = (int64_t)o.epochs * r->data->epoch_batches;
        if (steps > 1000000000)
            cli_die("train: --epochs %d x %d batches an epoch is %lld steps, "
                    "more than 1000000000",
                    o.epochs, r->data->epoch_batches, (long long)steps);
        o.steps = (int)steps;
    }
}

/* The model's config: the flags' (mc), the data's sizes (set by task_data
 * or corpus_data) and the layer counts. */
static void model_config(train_run *r) {
    qkv_model_config *c = &r->c;
    int src_vocab = c->src_vocab, tgt_vocab = c->tgt_vocab;
    int max_len = c->max_len;
    *c = mc;
    c->src_vocab = src_vocab;
    c->tgt_vocab = tgt_vocab;
    c->max_len = max_len;
    c->n_enc = r->decoder ? 0 : (o.n_enc ? o.n_enc : o.N);
    c->n_dec = o.n_dec ? o.n_dec : o.N;
}

/* The optimiser, schedule, clipping and skipping of the flags. */
static qkv_trainer_config trainer_config(void) {
    qkv_trainer_config tc = {0};
    tc.optim = qkv_optim_defaults(oc.kind);
    if (tc.optim.kind == QKV_OPTIM_ADAMW)
        tc.optim.weight_decay = o.weight_decay;
    int warm = o.warmup < o.steps ? o.warmup : o.steps;
    qkv_schedule s = {(qkv_schedule_kind)o.schedule,
                      o.lr,
                      warm,
                      o.steps,
                      o.lr / 20,
                      mc.d_model};
    if (s.kind == QKV_SCHEDULE_NOAM && warm < 1) s.warmup = 1;
    tc.schedule = s;
    tc.clip = o.clip;
    tc.label_smoothing = o.label_smoothing;
    tc.skip_nonfinite = o.skip_nonfinite;
    tc.accum = o.accum;
    tc.precision = (qkv_precision)o.precision;
    return tc;
}

/* Refuses a run whose memory would not fit: the parameters with their
 * gradients and the optimiser's state, the activations of the costliest
 * training batch and of a validation batch, and the data's buffers, against
 * what qkv may use. */
static void check_memory(const train_run *r, const qkv_model *m,
                         const qkv_optim_config *opt) {
    const qkv_model_config *c = &m->cfg;
    const qkv_source *s = r->data;
    double n = (double)m->params.n;
    int moments = opt->kind != QKV_OPTIM_SGD ? 2 : opt->momentum > 0;
    double params = 4.0 * n * (2 + moments + (o.accum > 1)) +
                    4.0 * c->max_len * c->d_model; /* + --accum's sums */
    /* a step runs its batch a slice at a time: --accum micro-batches, each
     * cut across the processes of an MPI job */
    int slices = o.accum * qkv_comm_size();
    int rows = (s->max_B + slices - 1) / slices;
    double train = qkv_model_activation_bytes(c, rows, s->max_S, s->max_T, 1);
    double valid =
        r->vdata ? qkv_model_activation_bytes(c, r->vB, r->vS, r->vT, 0) : 0;
    double arena = train > valid ? train : valid; /* one arena, reset */
    double need = params + arena + r->data_bytes;
    double have = (double)qkv_memory_limit();
    if (need <= have) return;
    char a[32], b[32], p[32], t[32], v[32];
    cli_die("train: the run needs about %s of memory and qkv may use %s: "
            "parameters and optimiser %s, a step's activations (%d x %d+%d "
            "tokens) %s, validation (%d sequences) %s; lower --batch, "
            "--batch-tokens, --eval-size, --filter-len or the model's size",
            qkv_bytes_str(need, a), qkv_bytes_str(have, b),
            qkv_bytes_str(params, p), rows, s->max_S, s->max_T,
            qkv_bytes_str(train, t), r->vB, qkv_bytes_str(valid, v));
}

/* The model is declared (checked, no memory yet) and sized against the
 * machine before anything is allocated; then the trainer starts fresh, or
 * continues the checkpoint, whose stored settings must give back its own
 * model (vocabularies, task and sizes agree with its tensors). */
static void build_trainer(train_run *r) {
    char err[512];
    qkv_model m;
    if (qkv_model_declare(&m, &r->c, err, sizeof err))
        cli_die("train: %s", err);
    qkv_trainer_config tc = trainer_config();
    check_memory(r, &m, &tc.optim);
    if (!r->resume) {
        qkv_model_alloc(&m, (uint64_t)o.seed);
        qkv_trainer_init(&r->t, &m, &tc);
        return;
    }
    qkv_model_free(&m);
    if (qkv_trainer_resume(&r->t, r->ckpt, &tc, r->data, NULL, err, sizeof err))
        cli_die("train: --resume: %s", err);
    if (qkv_model_config_diff(&r->t.model.cfg, &r->c, 1, err, sizeof err))
        cli_die("train: --resume: %s: its settings do not give its own model "
                "(%s%s)",
                r->ckpt, err, r->corpus ? "; was the corpus changed?" : "");
    if (r->start >= o.steps)
        cli_die("train: --resume: the run already has %lld of %d steps (give "
                "more --steps or --epochs)",
                (long long)r->start, o.steps);
    r->last_save = r->start;
    read_best(r);
}

/* Only now is anything written: the directory is made and locked, an old
 * run in it is kept (or, with --force, removed), then config.json and the
 * log's header are written atomically. */
/* config.json: the settings that apply to this run, not every flag. Dropped:
 * what is given by hand for one invocation (--resume, --force, --config,
 * --dry-run); the flags of the other kinds of data (a task, a TSV corpus,
 * a text); --N-enc/--N-dec left at 0 (they follow --N) and --N-enc of a
 * decoder-only model; --warmup under a constant schedule; --metric when
 * neither --keep-best nor --patience reads it. A dropped key keeps its
 * default under --config, which is what it meant here. (The checkpoint
 * keeps every flag, for --resume.) */
static char *config_json(void) {
    char *all = cli_flags_json(flags, N_FLAGS);
    cJSON *j = cJSON_Parse(all);
    free(all);
    /* per kind of data (task, corpus, text): 1 if the flag applies */
    static const struct {
        const char *name;
        char applies[3];
    } data_flags[] = {
        {"task", {1, 0, 0}},       {"vocab", {1, 0, 0}},
        {"min-len", {1, 0, 0}},    {"max-len", {1, 0, 0}},
        {"data", {0, 1, 0}},       {"valid", {0, 1, 0}},
        {"filter-len", {0, 1, 0}}, {"batch-tokens", {0, 1, 0}},
        {"epochs", {0, 1, 0}},     {"tok", {0, 1, 1}},
        {"min-freq", {0, 1, 1}},   {"text", {0, 0, 1}},
        {"valid-text", {0, 0, 1}}, {"block", {0, 0, 1}},
        {"resume", {0, 0, 0}},     {"force", {0, 0, 0}},
        {"config", {0, 0, 0}},     {"dry-run", {0, 0, 0}},
    };
    int kind = *o.text ? 2 : *o.data ? 1 : 0;
    const char *drop[48];
    int n = 0;
    for (size_t i = 0; i < sizeof data_flags / sizeof *data_flags; i++)
        if (!data_flags[i].applies[kind]) drop[n++] = data_flags[i].name;
    if (!*o.valid) drop[n++] = "valid";
    if (!*o.valid_text) drop[n++] = "valid-text";
    if (o.n_enc == 0 || mc.kind == QKV_MODEL_DECODER) drop[n++] = "N-enc";
    if (o.n_dec == 0) drop[n++] = "N-dec";
    if (o.schedule == QKV_SCHEDULE_CONSTANT) drop[n++] = "warmup";
    if (!o.keep_best && o.patience == 0) drop[n++] = "metric";
    if (o.tok != QKV_TOK_SPM) {
        drop[n++] = "spm-vocab";
        drop[n++] = "spm-type";
        drop[n++] = "spm-model";
    }
    for (int i = 0; i < n; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(j, drop[i]);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    return text;
}

static void open_run(train_run *r) {
    char path[4200];
    r->cfg = cli_flags_json(flags, N_FLAGS);
    snprintf(r->ckpt, sizeof r->ckpt, "%s/ckpt.safetensors", o.out);
    snprintf(r->log_path, sizeof r->log_path, "%s/log.csv", o.out);
    r->n_dmeta = cli_data_meta(&r->d, r->dkeys, r->dvals);
    if (qkv_comm_rank() != 0) return; /* rank 0 writes for an MPI job */
    if (!r->resume) {
        cli_make_dirs("train", o.out);
        cli_run_lock("train", o.out);
        if (cli_run_exists(o.out) && !o.force)
            cli_die("train: --out %s already holds a run; continue it with "
                    "--resume %s, or start it over with --force",
                    o.out, o.out);
        if (o.force) cli_run_clear("train", o.out);
    }
    snprintf(path, sizeof path, "%s/config.json", o.out);
    char *applies = config_json();
    cli_write_file("train", path, applies);
    free(applies);
    if (r->d.tok == QKV_TOK_SPM) { /* for spm_encode and co. */
        size_t len;
        const void *bytes = qkv_spm_bytes(r->d.sv.spm, &len);
        snprintf(path, sizeof path, "%s/spm.model", o.out);
        cli_write_bytes("train", path, bytes, len);
    }
    if (r->resume) {
        r->log = reopen_log(r->log_path, (int)r->start);
    } else {
        cli_write_file("train", r->log_path, log_header);
        r->log = fopen(r->log_path, "a");
        if (!r->log)
            cli_die("train: cannot write %s: %s", r->log_path, strerror(errno));
    }
}

/* val_acc: exact match in percent; val_bleu: BLEU on detokenized text. */
static void validate(train_run *r) {
    if (r->text) {
        text_validate(r);
        return;
    }
    qkv_eval_opts eo = {.eos = cli_data_eos(&r->d),
                        .beam = 1,
                        .unk = cli_data_unk(&r->d),
                        .detok_ctx = &r->d};
    if (r->corpus) eo.detok = cli_eval_detok;
    qkv_scores s;
    qkv_evaluate(&r->t.model, &r->t.graph, r->vdata, &eo, &s);
    r->vloss = qkv_scores_loss(&s);
    r->vacc = 100.0 * qkv_scores_exact(&s);
    r->vbleu = r->corpus ? qkv_scores_bleu(&s) : NAN;
}

static void log_row(train_run *r, double secs, int eval) {
    if (!r->log) return; /* not rank 0 */
    fprintf(r->log, "%d,%lld,%.3f,%.6g,%.6f,", r->step, (long long)r->t.tokens,
            secs, (double)r->t.lr, (double)r->t.loss);
    if (eval && r->corpus)
        fprintf(r->log, "%.6f,%.2f,%.2f\n", r->vloss, r->vacc, r->vbleu);
    else if (eval)
        fprintf(r->log, "%.6f,%.2f,\n", r->vloss, r->vacc);
    else
        fputs(",,\n", r->log);
}

/* The checkpoint, after the log (so the log never lags it). */
static void save_to(train_run *r, const char *path) {
    char err[512], best[160];
    if (r->log) fflush(r->log);
    if (r->best_step >= 0) /* --metric's best so far, for --resume */
        snprintf(best, sizeof best,
                 "{\"value\":%.17g,\"step\":%d,\"since\":%d}", r->best,
                 r->best_step, r->since);
    else
        snprintf(best, sizeof best, "{\"step\":-1}");
    const char *keys[2 + CLI_DATA_META] = {"cli", "best"},
                         *vals[2 + CLI_DATA_META] = {r->cfg, best};
    for (int k = 0; k < r->n_dmeta; k++)
        keys[2 + k] = r->dkeys[k], vals[2 + k] = r->dvals[k];
    if (qkv_trainer_save(&r->t, path, r->data, keys, vals, 2 + r->n_dmeta, err,
                         sizeof err))
        cli_die("train: %s", err);
}

static void save(train_run *r) {
    save_to(r, r->ckpt);
    r->last_save = r->step;
}

/* After a validation: a better --metric is the new best (kept as
 * DIR/best.safetensors with --keep-best); --patience validations without
 * one stop the run. */
static void track_best(train_run *r) {
    double v = o.metric == 0 ? r->vloss : o.metric == 1 ? r->vacc : r->vbleu;
    int better =
        r->best_step < 0 || (o.metric == 0 ? v < r->best : v > r->best);
    if (!better) {
        if (o.patience && ++r->since >= o.patience) r->stopped_early = 1;
        return;
    }
    r->best = v, r->best_step = r->step, r->since = 0;
    if (!o.keep_best || !qkv_params_finite(&r->t.model.params)) return;
    char path[4300];
    snprintf(path, sizeof path, "%s/best.safetensors", o.out);
    save_to(r, path);
}

/* --resume: the best so far, as the checkpoint kept it. */
static void read_best(train_run *r) {
    const char *b = qkv_st_meta(&r->meta, "best");
    cJSON *j = b ? cJSON_Parse(b) : NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "value"),
                *st = cJSON_GetObjectItemCaseSensitive(j, "step"),
                *si = cJSON_GetObjectItemCaseSensitive(j, "since");
    if (cJSON_IsNumber(v) && cJSON_IsNumber(st) && cJSON_IsNumber(si) &&
        st->valuedouble >= 0 && st->valuedouble <= r->start &&
        si->valuedouble >= 0 && si->valuedouble <= r->start) {
        r->best = v->valuedouble;
        r->best_step = (int)st->valuedouble;
        r->since = (int)si->valuedouble;
    }
    cJSON_Delete(j);
}

static void plot(train_run *r) {
    char png[4300];
    const char *logs[1] = {r->log_path};
    snprintf(png, sizeof png, "%s/loss.png", o.out);
    cli_plot_opts po = {png, "png", "step", 0, NULL};
    fflush(r->log);
    if (cli_plot_logs("train", logs, NULL, 1, &po))
        o.plot = 0; /* said once; training goes on */
}

/* The progress line: over itself on a terminal, else at validations. */
static void progress(train_run *r, double secs, int report) {
    int tty = isatty(1);
    double eta =
        (secs - r->secs0) / (double)(r->step - r->start) * (o.steps - r->step);
    char line[256];
    int n = snprintf(line, sizeof line, "step %d/%d  loss %.4f", r->step,
                     o.steps, (double)r->t.loss);
    int shown = r->vdata && !isnan(r->vloss); /* none before the first */
    if (shown && r->text) /* perplexity exp(loss) and token accuracy */
        n += snprintf(line + n, sizeof line - (size_t)n,
                      "  val loss %.4f  ppl %.2f  acc %5.1f%%", r->vloss,
                      exp(r->vloss), r->vacc);
    else if (shown)
        n += snprintf(line + n, sizeof line - (size_t)n,
                      "  val loss %.4f  exact %5.1f%%", r->vloss, r->vacc);
    if (r->corpus && shown && n < (int)sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, "  BLEU %.1f",
                      r->vbleu);
    if (n < (int)sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, "  %.0f tok/s  ETA %.0fs",
                 (double)r->t.tokens / secs, eta);
    if (tty)
        printf("\r%s ", line);
    else if (report)
        printf("%s\n", line);
    fflush(stdout);
}

/* --profile leaves out a run's first steps when it has more than twice as
 * many: they touch the arena's and the gradients' memory for the first
 * time (page faults), and on the base config an attention forward took
 * 18 ms there against 1.7 ms in every later step, which made the table
 * say twice what a step spends in attention. */
#define PROFILE_WARMUP 2

/* Times phase k of the loop (with --profile). */
static void phase(train_run *r, int k, double *tp) {
    if (!o.profile) return;
    double now = qkv_seconds();
    r->t.phase[k] += now - *tp;
    *tp = now;
}

/* Steps until --steps, a divergence or Ctrl-C: validation every
 * --eval-every steps and at the end, checkpoints every --save-every and at
 * the end (never of weights gone bad). */
static void train_loop(train_run *r) {
    qkv_trainer *t = &r->t;
    r->vloss = r->vacc = r->vbleu = NAN;
    r->secs0 = qkv_trainer_seconds(t);
    r->profile_from = (int)r->start;
    if (o.steps - r->start > 2 * PROFILE_WARMUP)
        r->profile_from += PROFILE_WARMUP;
    for (r->step = (int)r->start + 1; r->step <= o.steps; r->step++) {
        if (o.profile && r->step == r->profile_from + 1 &&
            r->profile_from > r->start) { /* the warm-up ends */
            memset(&t->prof, 0, sizeof t->prof);
            memset(t->phase, 0, sizeof t->phase);
        }
        double tp = qkv_seconds();
        const qkv_batch *b = qkv_source_next(r->data);
        phase(r, QKV_PHASE_DATA, &tp);
        r->diverged = qkv_trainer_step(t, b) == QKV_STEP_DIVERGED;
        tp = qkv_seconds();
        int report = r->step % o.eval_every == 0 || r->step == o.steps;
        int eval = r->vdata && report && !r->diverged;
        if (eval) validate(r);
        phase(r, QKV_PHASE_VALID, &tp);
        double secs = qkv_trainer_seconds(t);
        log_row(r, secs, eval);
        if (r->diverged) break;
        if (eval) track_best(r);
        /* an MPI job's ranks stop at the same step, whichever got Ctrl-C */
        if (qkv_comm_size() > 1) interrupted = qkv_comm_any(interrupted);
        int save_now = r->step == o.steps || interrupted || r->stopped_early ||
                       (o.save_every && r->step % o.save_every == 0);
        if (save_now && !qkv_params_finite(&t->model.params)) {
            r->diverged = 1; /* weights gone bad without a bad loss yet */
            break;
        }
        if (save_now) save(r);
        if (o.plot && (report || interrupted)) plot(r);
        phase(r, QKV_PHASE_LOG, &tp);
        if (interrupted || r->stopped_early) break;
        if (!o.quiet) progress(r, secs, report);
        if (!o.quiet && eval && r->text) print_sample(r);
    }
}

/* The --profile table: per step, each op kind's forward and backward time
 * (from the tape) and the phases of the step. */
static void print_profile(const qkv_trainer *t, int steps, int warmup) {
    const qkv_profile *p = &t->prof;
    const double *ph = t->phase;
    double fsum = 0, bsum = 0, psum = 0;
    for (int k = 0; k < QKV_OP_COUNT; k++) fsum += p->fwd[k], bsum += p->bwd[k];
    for (int k = 0; k < QKV_PHASE_COUNT; k++) psum += ph[k];
    printf("\nprofile: ms per step, over %d steps", steps);
    if (warmup) printf(" (after %d warm-up steps)", warmup);
    printf("\n");
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
    for (int k = 0; k < QKV_PHASE_COUNT; k++)
        printf("  %-16s %9.3f %5.1f%%\n", qkv_phase_names[k],
               1e3 * ph[k] / steps, 100 * ph[k] / psum);
    printf("  %-16s %9.3f\n", "step", 1e3 * psum / steps);
}

/* Why the run stopped, on stderr: it diverged, or was interrupted. */
static void warn_stopped(const train_run *r) {
    const qkv_trainer *t = &r->t;
    if (!r->diverged) {
        cli_warn("interrupted at step %d; checkpoint saved in %s (continue "
                 "with: qkv train --resume %s)",
                 r->step, r->ckpt, o.out);
        return;
    }
    char kept[4400], why[128];
    if (r->last_save >= 0)
        snprintf(kept, sizeof kept,
                 "the last good checkpoint (step %lld) is kept in %s",
                 (long long)r->last_save, r->ckpt);
    else
        snprintf(kept, sizeof kept, "no checkpoint was saved before it");
    if (!isfinite(t->loss))
        snprintf(why, sizeof why, "the loss is %s",
                 isnan(t->loss) ? "NaN" : "infinite");
    else if (!isfinite(t->norm))
        snprintf(why, sizeof why, "the gradient norm is %s",
                 isnan(t->norm) ? "NaN" : "infinite");
    else
        snprintf(why, sizeof why, "the weights are no longer finite");
    cli_warn("train: diverged at step %d: %s (%d earlier step%s skipped, "
             "--skip-nonfinite %d); %s; lower --lr or raise --warmup",
             r->step, why, t->skipped, t->skipped == 1 ? "" : "s",
             o.skip_nonfinite, kept);
}

/* The last line: how the run ended. */
static void report(const train_run *r) {
    const qkv_trainer *t = &r->t;
    qkv_source_state st;
    qkv_source_get_state(r->data, &st);
    double secs = qkv_trainer_seconds(t);
    int last = r->stopped_early ? r->step : o.steps;
    if (r->stopped_early) {
        static const char *const names[] = {"val_loss", "val_acc", "val_bleu"};
        printf("stopped early at step %d: %d validations without a better %s "
               "(--patience %d; the best, %.4f, at step %d%s)\n",
               r->step, r->since, names[o.metric], o.patience, r->best,
               r->best_step, o.keep_best ? ", in best.safetensors" : "");
    }
    if (r->diverged || interrupted)
        warn_stopped(r);
    else if (!r->vdata)
        printf("done: %d steps (%lld epochs) in %.1f s, train loss %.4f (no "
               "--valid: no validation); log in %s, checkpoint %s\n",
               last, (long long)st.epoch, secs, (double)t->loss, r->log_path,
               r->ckpt);
    else if (r->text)
        printf("done: %d steps in %.1f s, train loss %.4f, val loss %.4f, "
               "perplexity %.2f, token accuracy %.1f%%; log in %s, checkpoint "
               "%s\n",
               last, secs, (double)t->loss, r->vloss, exp(r->vloss), r->vacc,
               r->log_path, r->ckpt);
    else if (r->corpus)
        printf("done: %d steps (%lld epochs) in %.1f s, train loss %.4f, val "
               "loss %.4f, exact match %.1f%%, BLEU %.1f; log in %s, "
               "checkpoint %s\n",
               last, (long long)st.epoch, secs, (double)t->loss, r->vloss,
               r->vacc, r->vbleu, r->log_path, r->ckpt);
    else
        printf("done: %d steps in %.1f s, train loss %.4f, val loss %.4f, val "
               "exact match %.1f%%; log in %s, checkpoint %s\n",
               last, secs, (double)t->loss, r->vloss, r->vacc, r->log_path,
               r->ckpt);
    if (t->skipped && !r->diverged)
        cli_warn("train: %d step%s skipped for a loss or gradient that was "
                 "not finite (--skip-nonfinite %d)",
                 t->skipped, t->skipped == 1 ? "" : "s", o.skip_nonfinite);
}

static void free_run(train_run *r) {
    for (int k = 0; k < r->n_dmeta; k++) free(r->dvals[k]);
    free(r->cfg);
    cJSON_Delete(r->saved);
    qkv_st_free(&r->meta);
    qkv_source_free(r->data);
    qkv_source_free(r->vdata);
    if (r->corpus) {
        qkv_pairs_free(&r->train);
        if (r->vdata) qkv_pairs_free(&r->valid);
    }
    qkv_text_free(&r->ttext);
    qkv_text_free(&r->vtext);
    qkv_text_ids_free(&r->tids);
    qkv_text_ids_free(&r->vids);
    cli_data_free(&r->d);
    qkv_trainer_free(&r->t);
}

int cli_train_flags(flag **out) {
    make_flags();
    find_flag("threads")->hi = cli_max_threads();
    *out = flags;
    return n_flags;
}

int cli_train_flag_takes_value(const char *name) {
    make_flags();
    size_t len = strcspn(name, "=");
    for (int i = 0; i < n_flags; i++)
        if (strlen(flags[i].name) == len && !strncmp(flags[i].name, name, len))
            return flags[i].type != FLAG_BOOL;
    return 1; /* unknown: qkv train will say so */
}

int cmd_train(int argc, char **argv) {
    static train_run run;
    train_run *r = &run;
    memset(r, 0, sizeof *r);
    interrupted = 0;
    parse_flags(r, argc, argv);
    if (r->text)
        text_data(r);
    else if (r->corpus)
        corpus_data(r);
    else
        task_data(r);
    if (!r->vdata && (o.keep_best || o.patience))
        cli_die("train: --keep-best and --patience follow the validation: "
                "give --valid");
    model_config(r);
    build_trainer(r);
    if (o.dry_run) { /* every check above passed; write nothing */
        if (qkv_comm_rank() == 0)
            printf("qkv train --dry-run: %s, %s N=%d+%d h=%d d_model=%d, %zu "
                   "parameters, %d steps: the flags and data are fine\n",
                   r->text     ? o.text
                   : r->corpus ? o.data
                               : task_name(),
                   r->decoder ? "decoder" : "encdec", r->c.n_enc, r->c.n_dec,
                   r->c.heads, r->c.d_model, r->t.model.params.n, o.steps);
        free_run(r);
        return 0;
    }
    cli_check_precision("train", o.precision);
    open_run(r);
    signal(SIGINT, on_sigint);
    if (!o.quiet) {
        printf("qkv train: %s, %s N=%d+%d h=%d d_model=%d, %zu parameters, "
               "%d steps",
               r->text     ? o.text
               : r->corpus ? o.data
                           : task_name(),
               r->decoder ? "decoder" : "encdec", r->c.n_enc, r->c.n_dec,
               r->c.heads, r->c.d_model, r->t.model.params.n, o.steps);
        if (r->corpus)
            printf(" (%d batches per epoch, vocab %d/%d)",
                   r->data->epoch_batches, r->c.src_vocab, r->c.tgt_vocab);
        printf("\n");
    }
    cli_set_precision("train", &r->t.graph, o.precision, o.quiet);
    if (o.profile) qkv_trainer_profile(&r->t);
    train_loop(r);
    if (o.profile) {
        int n = r->step - r->profile_from - (r->step > o.steps);
        print_profile(&r->t, n < 1 ? 1 : n, r->profile_from - (int)r->start);
    }
    if (r->log && fclose(r->log))
        cli_die("train: writing %s failed", r->log_path);
    if (isatty(1) && !o.quiet) printf("\n");
    if (qkv_comm_rank() == 0) report(r);
    int rc = r->diverged ? EXIT_DIVERGED : interrupted ? 130 : 0;
    free_run(r);
    return rc;
}
