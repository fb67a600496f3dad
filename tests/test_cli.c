/* The qkv program: flags, help, errors and a short training run, driven as a
 * user would from the shell. The program is build/examples/qkv, found next to
 * this test's build directory. */
#include <cjson/cJSON.h>
#include <math.h>
#include <sys/stat.h>

#include "bleu.h"
#include "pcg.h"
#include "safetensors.h"

#include "test.h"

static char qkv[600], dir[64];

static int run(const char *args, char *out, size_t cap) {
    return test_qkv(qkv, args, out, cap);
}

static void test_help_lists_every_flag_with_default(void) {
    char out[8192];
    CHECK(run("--help", out, sizeof out) == 0, "qkv --help failed");
    CHECK(strstr(out, "train"), "help lacks train: %s", out);
    CHECK(run("train --help", out, sizeof out) == 0, "train --help failed");
    const char *want[] = {
        "--task",    "--model",      "--N ",       "--N-enc",
        "--N-dec",   "--h ",         "--d-model",  "--d-ff",
        "--dropout", "--pos",        "--norm",     "--label-smoothing",
        "--optim",   "--lr",         "--schedule", "--warmup",
        "--clip",    "--batch",      "--steps",    "--seed",
        "--threads", "--eval-every", "--out",      "--quiet"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(strstr(out, want[i]), "train --help lacks %s", want[i]);
    int lines = 0, defaults = 0;
    for (char *s = out; (s = strstr(s, "\n  --")); s++) lines++;
    for (char *s = out; (s = strstr(s, "(default ")); s++) defaults++;
    CHECK(lines == defaults && lines >= 24, "%d flags, %d defaults", lines,
          defaults);
    const char *more[] = {"--data",         "--valid",    "--tok",
                          "--epochs",       "--min-freq", "--filter-len",
                          "--batch-tokens", "--resume",   "--save-every"};
    for (size_t i = 0; i < sizeof more / sizeof *more; i++)
        CHECK(strstr(out, more[i]), "train --help lacks %s", more[i]);
    static const struct {
        const char *cmd, *flags[6];
    } other[] = {
        {"eval", {"--ckpt", "--data", "--beam", "--threads", "--show", NULL}},
        {"decode",
         {"--ckpt", "--beam", "--temp", "--top-k", "--max-out", NULL}},
    };
    for (size_t c = 0; c < sizeof other / sizeof *other; c++) {
        char args[64];
        snprintf(args, sizeof args, "%s --help", other[c].cmd);
        CHECK(run(args, out, sizeof out) == 0, "%s failed", args);
        for (int i = 0; other[c].flags[i]; i++)
            CHECK(strstr(out, other[c].flags[i]), "%s lacks %s", args,
                  other[c].flags[i]);
        lines = defaults = 0;
        for (char *s = out; (s = strstr(s, "\n  --")); s++) lines++;
        for (char *s = out; (s = strstr(s, "(default ")); s++) defaults++;
        CHECK(lines == defaults && lines >= 5, "%s: %d flags, %d defaults",
              args, lines, defaults);
    }
    CHECK(run("--help", out, sizeof out) == 0 && strstr(out, "eval") &&
              strstr(out, "decode"),
          "qkv --help lacks a command: %s", out);
}

static void test_bad_input_is_one_line_and_exit_2(void) {
    static const struct {
        const char *args, *want;
    } bad[] = {
        {"", "usage"},
        {"frobnicate", "unknown command 'frobnicate'"},
        {"train --bogus 1", "unknown flag --bogus"},
        {"train --lr abc", "--lr wants a number, got 'abc'"},
        {"train --steps 1x", "--steps wants an integer, got '1x'"},
        {"train --steps", "--steps needs a value"},
        {"train --task foo", "--task must be one of copy|reverse|sort"},
        {"train --h 3", "h = 3 does not divide d_model = 64"},
        {"train --steps 0", "--steps must be positive"},
        {"train --min-len 3 --max-len 2", "lengths 3..2"},
        {"train extra", "unexpected argument 'extra'"},
    };
    char out[4096];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = run(bad[i].args, out, sizeof out);
        CHECK(rc == 2, "qkv %s: exit %d, want 2", bad[i].args, rc);
        CHECK(strstr(out, bad[i].want), "qkv %s: %s", bad[i].args, out);
        if (i > 0) {
            char *nl = strchr(out, '\n');
            CHECK(nl && nl[1] == 0, "qkv %s: not one line: %s", bad[i].args,
                  out);
        }
    }
}

static void test_train_writes_log_and_config(void) {
    char args[512], out[8192], path[600];
    snprintf(args, sizeof args,
             "train --task reverse --steps 40 --eval-every 20 --eval-size 20 "
             "--batch 16 --d-model 32 --d-ff 64 --quiet --out %s/run",
             dir);
    CHECK(run(args, out, sizeof out) == 0, "train failed: %s", out);
    CHECK(strstr(out, "done: 40 steps"), "final line: %s", out);
    snprintf(path, sizeof path, "%s/run/log.csv", dir);
    FILE *f = fopen(path, "r");
    CHECK(f, "no %s", path);
    if (f) {
        char line[256];
        int rows = 0, evals = 0;
        CHECK(fgets(line, sizeof line, f) &&
                  strcmp(line,
                         "step,tokens,seconds,lr,train_loss,val_loss,val_acc,"
                         "val_bleu\n") == 0,
              "header: %s", line);
        float first = 0, last = 0;
        while (fgets(line, sizeof line, f)) {
            int step;
            long tok;
            float sec, lr, loss;
            CHECK(sscanf(line, "%d,%ld,%f,%f,%f", &step, &tok, &sec, &lr,
                         &loss) == 5,
                  "row: %s", line);
            rows++;
            CHECK(step == rows, "step %d on row %d", step, rows);
            if (rows == 1) first = loss;
            last = loss;
            evals += strstr(line, ",,\n") == NULL;
        }
        fclose(f);
        CHECK(rows == 40 && evals == 2, "%d rows, %d evaluations", rows, evals);
        CHECK(last < first, "loss did not fall: %g -> %g", (double)first,
              (double)last);
    }
    snprintf(path, sizeof path, "%s/run/config.json", dir);
    f = fopen(path, "r");
    CHECK(f, "no %s", path);
    if (f) {
        char buf[8192];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        cJSON *j = cJSON_Parse(buf);
        CHECK(j, "config.json is not JSON");
        cJSON *task = cJSON_GetObjectItem(j, "task"),
              *steps = cJSON_GetObjectItem(j, "steps");
        CHECK(cJSON_IsString(task) && strcmp(task->valuestring, "reverse") == 0,
              "task");
        CHECK(cJSON_IsNumber(steps) && steps->valueint == 40, "steps");
        cJSON_Delete(j);
    }
}

static void test_same_seed_same_log(void) {
    char args[512], out[4096];
    const char *flags = "--steps 20 --eval-every 10 --eval-size 10 --batch 8 "
                        "--d-model 32 --d-ff 64 --dropout 0.1 --quiet";
    for (int r = 0; r < 2; r++) {
        snprintf(args, sizeof args, "train %s --threads %d --out %s/s%d", flags,
                 r + 1, dir, r);
        CHECK(run(args, out, sizeof out) == 0, "train failed: %s", out);
    }
    /* the losses (column 5 onwards) must match; seconds differ */
    char cmd[400];
    snprintf(
        cmd, sizeof cmd,
        "cmp -s <(cut -d, -f5- %s/s0/log.csv) <(cut -d, -f5- %s/s1/log.csv)",
        dir, dir);
    char full[600];
    snprintf(full, sizeof full, "bash -c '%s'", cmd);
    CHECK(system(full) == 0, "1 and 2 threads give different losses");
}

/* Ctrl-C saves a checkpoint; --resume continues and the log then equals an
 * uninterrupted run's, step for step (seconds aside). */
static void interrupt_and_resume(const char *flags, const char *name) {
    char cmd[3000], out[4096];
    snprintf(cmd, sizeof cmd, "train %s --out %s/%s-straight", flags, dir,
             name);
    CHECK(run(cmd, out, sizeof out) == 0, "straight run failed: %s", out);
    /* SIGINT once the first checkpoint (step 100 of 1500) exists: by then
     * the handler is installed and the run is mid-way, however loaded the
     * machine; the wait gives up after 60 s. */
    snprintf(cmd, sizeof cmd,
             "bash -c \"'%s' train %s --out %s/%s-cut >/dev/null 2>&1 & "
             "p=\\$!; for i in \\$(seq 6000); do "
             "[ -e %s/%s-cut/ckpt.safetensors ] && break; sleep 0.01; done; "
             "kill -INT \\$p; wait \\$p; echo rc=\\$?\"",
             qkv, flags, dir, name, dir, name);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    if (p) pclose(p);
    CHECK(strstr(out, "rc=130"), "the interrupted run did not exit 130: %s",
          out);
    snprintf(cmd, sizeof cmd, "train --resume %s/%s-cut --quiet", dir, name);
    CHECK(run(cmd, out, sizeof out) == 0, "resume failed: %s", out);
    snprintf(cmd, sizeof cmd,
             "bash -c 'cmp -s <(cut -d, -f1,2,4- %s/%s-straight/log.csv) "
             "<(cut -d, -f1,2,4- %s/%s-cut/log.csv)'",
             dir, name, dir, name);
    CHECK(system(cmd) == 0,
          "%s: the resumed log differs from the uninterrupted one", name);
}

static void test_interrupt_and_resume_equal_uninterrupted(void) {
    interrupt_and_resume("--steps 1500 --d-model 16 --d-ff 32 --batch 8 "
                         "--dropout 0.1 --eval-every 500 --eval-size 10 "
                         "--save-every 100 --quiet",
                         "task");
    char cmd[600], out[4096];
    snprintf(cmd, sizeof cmd, "train --resume %s/task-cut --h 2", dir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "--h cannot change"),
          "a model flag on --resume: %s", out);
    snprintf(cmd, sizeof cmd, "train --resume %s/none", dir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "cannot open"),
          "--resume of a missing run: %s", out);
}

/* ---------------------------------------------------------------- corpora */

static const char *const words[] = {"ka", "lo", "mi", "nu",
                                    "pe", "ro", "su", "grüß"};

/* A TSV corpus of n pairs "w1 .. wk<TAB>wk .. w1" (k in 2..5), drawn with
 * PCG32: word-level reversal, which needs attention to positions. */
static void write_reverse_corpus(const char *path, int n, uint64_t seed) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, seed, 9);
    for (int i = 0; i < n; i++) {
        int k = 2 + (int)qkv_pcg32_bounded(&rng, 4), w[5];
        for (int j = 0; j < k; j++) w[j] = (int)qkv_pcg32_bounded(&rng, 8);
        for (int j = 0; j < k; j++)
            fprintf(f, "%s%s", j ? " " : "", words[w[j]]);
        fputc('\t', f);
        for (int j = k - 1; j >= 0; j--)
            fprintf(f, "%s%s", j < k - 1 ? " " : "", words[w[j]]);
        fputc('\n', f);
    }
    fclose(f);
}

static char corpus_dir[200];

static void make_corpora(void) {
    char p[300];
    snprintf(corpus_dir, sizeof corpus_dir, "%s/corpus", dir);
    mkdir(corpus_dir, 0777);
    snprintf(p, sizeof p, "%s/train.tsv", corpus_dir);
    write_reverse_corpus(p, 2000, 1);
    snprintf(p, sizeof p, "%s/valid.tsv", corpus_dir);
    write_reverse_corpus(p, 100, 2);
    snprintf(p, sizeof p, "%s/test.tsv", corpus_dir);
    write_reverse_corpus(p, 200, 3);
}

/* The number after `key` in text (NAN if absent). */
static double figure(const char *text, const char *key) {
    const char *s = strstr(text, key);
    return s ? atof(s + strlen(key)) : NAN;
}

/* Last row of a log.csv, split into its 8 columns. */
static int last_row(const char *path, double col[8]) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[512], last[512] = "";
    while (fgets(line, sizeof line, f)) memcpy(last, line, sizeof line);
    fclose(f);
    char *s = last;
    for (int i = 0; i < 8; i++) {
        col[i] = *s && *s != ',' && *s != '\n' ? atof(s) : NAN;
        s = strchr(s, ',');
        if (!s && i < 7) return -1;
        if (s) s++;
    }
    return 0;
}

/* --hyp's file: a line per pair of the test file, and the BLEU eval printed
 * (sacreBLEU's, bleu.h) is that of these lines against the file's targets
 * (which the vocabulary knows, so the detokenized references are these). */
static void check_hyp_file(const char *out, double bleu, const char *tsv,
                           const char *hyp) {
    char path[600], ref[1000], line[1000];
    snprintf(path, sizeof path, "%s/%s", corpus_dir, tsv);
    FILE *r = fopen(path, "r");
    snprintf(path, sizeof path, "%s/%s", dir, hyp);
    FILE *h = fopen(path, "r");
    qkv_bleu b = {0};
    long n = 0, bad = 0;
    while (r && h && fgets(ref, sizeof ref, r)) {
        char *tab = strchr(ref, '\t');
        if (!fgets(line, sizeof line, h) || !tab) {
            bad++;
            break;
        }
        tab[strcspn(tab, "\n")] = 0;
        line[strcspn(line, "\n")] = 0;
        qkv_bleu_add_text(&b, line, tab + 1);
        n++;
    }
    bad += h && fgets(line, sizeof line, h) != NULL; /* a line too many */
    if (r) fclose(r);
    if (h) fclose(h);
    char want[64];
    snprintf(want, sizeof want, "%ld sequences", n);
    CHECK(r && h && !bad && n > 0 && strstr(out, want),
          "%s: %ld lines for %s: %s", hyp, n, tsv, out);
    CHECK(fabs(100 * qkv_bleu_score_smooth(&b) - bleu) < 0.006,
          "BLEU of %s %.4f, eval printed %.2f", hyp,
          100 * qkv_bleu_score_smooth(&b), bleu);
    CHECK(strstr(out, "(sacreBLEU 13a, detokenized)  token BLEU "),
          "labels: %s", out);
}

/* train on a corpus -> checkpoint -> eval: eval on the validation file
 * reproduces the run's last validation figures, and the model has learned
 * the task on the held-out test file. Then decode. */
static void test_corpus_train_eval_decode(void) {
    char cmd[2000], out[8192], path[400];
    snprintf(cmd, sizeof cmd,
             "train --data %s/train.tsv --valid %s/valid.tsv --eval-size 1000 "
             "--steps 400 --eval-every 200 --batch 32 --d-model 32 --d-ff 64 "
             "--lr 3e-3 --quiet --out %s/rev",
             corpus_dir, corpus_dir, dir);
    CHECK(run(cmd, out, sizeof out) == 0, "corpus train failed: %s", out);
    double row[8];
    snprintf(path, sizeof path, "%s/rev/log.csv", dir);
    CHECK(last_row(path, row) == 0 && row[0] == 400, "last log row");
    snprintf(cmd, sizeof cmd,
             "eval --ckpt %s/rev/ckpt.safetensors --data %s/valid.tsv", dir,
             corpus_dir);
    CHECK(run(cmd, out, sizeof out) == 0, "eval failed: %s", out);
    double loss = figure(out, "loss "), exact = figure(out, "exact match ");
    double bleu = figure(out, "BLEU ");
    CHECK(fabs(loss - row[5]) < 2e-6 + 1e-5 * row[5],
          "eval loss %.6f, train's last val loss %.6f", loss, row[5]);
    CHECK(fabs(exact - row[6]) < 0.01, "eval exact %.2f, log %.2f", exact,
          row[6]);
    CHECK(fabs(bleu - row[7]) < 0.01, "eval BLEU %.2f, log %.2f", bleu, row[7]);
    CHECK(strstr(out, "100 sequences"), "eval counts: %s", out);
    snprintf(cmd, sizeof cmd,
             "eval --ckpt %s/rev/ckpt.safetensors --data %s/test.tsv --hyp "
             "%s/rev/test.hyp",
             dir, corpus_dir, dir);
    CHECK(run(cmd, out, sizeof out) == 0, "eval failed: %s", out);
    exact = figure(out, "exact match ");
    bleu = figure(out, "BLEU ");
    double ppl = figure(out, "perplexity "), acc = figure(out, "accuracy ");
    CHECK(exact >= 90 && bleu >= 90 && acc >= 97 && ppl < 1.2,
          "reversal not learned: %s", out);
    check_hyp_file(out, bleu, "test.tsv", "rev/test.hyp");
    /* beam search does at least as well here */
    snprintf(cmd, sizeof cmd,
             "eval --ckpt %s/rev/ckpt.safetensors --data %s/test.tsv --beam 4",
             dir, corpus_dir);
    CHECK(run(cmd, out, sizeof out) == 0 && figure(out, "exact match ") >= 90,
          "beam eval: %s", out);
    snprintf(cmd, sizeof cmd,
             "decode --ckpt %s/rev/ckpt.safetensors 'ka lo grüß' 'su mi'", dir);
    CHECK(run(cmd, out, sizeof out) == 0 &&
              strcmp(out, "grüß lo ka\nmi su\n") == 0,
          "decode: %s", out);
    snprintf(cmd, sizeof cmd,
             "bash -c \"printf 'pe nu\\nro ka\\n' | '%s' decode --ckpt "
             "%s/rev/ckpt.safetensors --beam 3\"",
             qkv, dir);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    if (p) pclose(p);
    CHECK(strcmp(out, "nu pe\nka ro\n") == 0, "decode from stdin: %s", out);
    /* an unknown word is <unk>, not an error */
    snprintf(cmd, sizeof cmd, "decode --ckpt %s/rev/ckpt.safetensors 'ka zzz'",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "decode of an unknown word: %s", out);
}

/* Decoder-only on a corpus: x bos y in one sequence. Trains, evaluates and
 * continues a prompt. */
static void test_corpus_decoder_only(void) {
    char cmd[2000], out[8192];
    snprintf(cmd, sizeof cmd,
             "train --model decoder --data %s/train.tsv --valid %s/valid.tsv "
             "--steps 800 --eval-every 800 --batch 32 --d-model 32 --d-ff 64 "
             "--lr 3e-3 --quiet --out %s/lm",
             corpus_dir, corpus_dir, dir);
    CHECK(run(cmd, out, sizeof out) == 0, "decoder train failed: %s", out);
    snprintf(cmd, sizeof cmd,
             "eval --ckpt %s/lm/ckpt.safetensors --data %s/test.tsv", dir,
             corpus_dir);
    CHECK(run(cmd, out, sizeof out) == 0, "eval failed: %s", out);
    CHECK(figure(out, "exact match ") >= 80, "decoder-only: %s", out);
    snprintf(cmd, sizeof cmd, "decode --ckpt %s/lm/ckpt.safetensors 'mi ro'",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0 && strcmp(out, "ro mi\n") == 0,
          "decoder-only decode: %s", out);
    snprintf(cmd, sizeof cmd,
             "decode --ckpt %s/lm/ckpt.safetensors --temp 1 --top-k 3 "
             "--seed 5 'mi ro' 'mi ro'",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "sampling: %s", out);
    snprintf(cmd, sizeof cmd, "decode --ckpt %s/lm/ckpt.safetensors --beam 2 x",
             dir);
    CHECK(run(cmd, out, sizeof out) == 2 &&
              strstr(out, "--beam needs an encoder-decoder"),
          "beam on decoder-only: %s", out);
}

static void test_corpus_resume_equals_uninterrupted(void) {
    char flags[1000];
    /* 2000 pairs in ~60 batches: 1500 steps cross many epochs */
    snprintf(flags, sizeof flags,
             "--data %s/train.tsv --valid %s/valid.tsv --steps 1500 "
             "--d-model 16 --d-ff 32 --batch 32 --dropout 0.1 --eval-every "
             "500 --eval-size 20 --save-every 100 --quiet",
             corpus_dir, corpus_dir);
    interrupt_and_resume(flags, "corpus");
}

/* A task checkpoint: eval draws fresh sequences, decode reads numbers. */
static void test_task_eval_decode(void) {
    char cmd[600], out[8192];
    snprintf(cmd, sizeof cmd, "eval --ckpt %s/run/ckpt.safetensors --size 50",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "50 sequences") &&
              figure(out, "perplexity ") > 1,
          "task eval: %s", out);
    snprintf(cmd, sizeof cmd,
             "decode --ckpt %s/run/ckpt.safetensors '3 4 5 6 7 8 9 10 3 4'",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "task decode: %s", out);
    int k = 0;
    for (char *s = out; *s; s++) k += *s == ' ';
    CHECK(k == 9 && out[strlen(out) - 1] == '\n', "10 symbols out: %s", out);
}

/* A task without eos whose symbols include id 2 (eos's id when a task has
 * one): scoring and decoding must treat 2 as a symbol. Copy of 6 symbols
 * from {2, 3}, learned to 100% in a few seconds. */
static void test_task_symbol_2_is_not_eos(void) {
    char cmd[600], out[8192];
    snprintf(cmd, sizeof cmd,
             "train --task copy --vocab 4 --min-len 6 --max-len 6 --steps 300 "
             "--d-model 32 --d-ff 64 --batch 32 --eval-every 300 --quiet "
             "--out %s/c2",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "train: %s", out);
    double row[8];
    snprintf(cmd, sizeof cmd, "%s/c2/log.csv", dir);
    CHECK(last_row(cmd, row) == 0 && row[6] == 100.0, "val exact match %g",
          row[6]);
    snprintf(cmd, sizeof cmd, "eval --ckpt %s/c2/ckpt.safetensors --size 300",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0 && figure(out, "exact match ") == 100,
          "eval: %s", out);
    snprintf(cmd, sizeof cmd,
             "decode --ckpt %s/c2/ckpt.safetensors '2 3 2 2 3 2' '3 3 2 2 2 2'",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0 &&
              strcmp(out, "2 3 2 2 3 2\n3 3 2 2 2 2\n") == 0,
          "decode: %s", out);
}

/* --precision bf16 trains, names the kernel it runs on, and its checkpoint
 * evaluates in bf16 and fp32; QKV_BF16_KERNEL picks another kernel (the
 * portable one, which every CPU has), and a name that is no kernel, like an
 * unknown --precision, is a one-line error. */
static void test_precision_bf16(void) {
    char args[600], cmd[1400], out[8192];
    snprintf(args, sizeof args,
             "train --task copy --vocab 6 --min-len 4 --max-len 4 --steps 4 "
             "--d-model 32 --d-ff 64 --batch 8 --eval-every 4 --eval-size 8 "
             "--precision bf16 --out %s/bf --force",
             dir);
    CHECK(run(args, out, sizeof out) == 0 &&
              strstr(out, "bf16 matrix products on the ") &&
              !strstr(out, "(QKV_BF16_KERNEL)"),
          "train --precision bf16: %s", out);
    snprintf(cmd, sizeof cmd, "QKV_BF16_KERNEL=portable '%s' %s", qkv, args);
    CHECK(test_shell(cmd, out, sizeof out) == 0 &&
              strstr(out, "on the portable kernel (QKV_BF16_KERNEL)"),
          "QKV_BF16_KERNEL=portable: %s", out);
    snprintf(cmd, sizeof cmd, "QKV_BF16_KERNEL=fp8 '%s' %s --quiet", qkv, args);
    int rc = test_shell(cmd, out, sizeof out);
    char *nl = strchr(out, '\n');
    CHECK(rc == 2 && strstr(out, "QKV_BF16_KERNEL=fp8: no such bf16 kernel") &&
              nl && nl[1] == 0,
          "QKV_BF16_KERNEL=fp8: status %d, %s", rc, out);
    for (int p = 0; p < 2; p++) {
        snprintf(cmd, sizeof cmd,
                 "eval --ckpt %s/bf/ckpt.safetensors --size 8 --precision %s",
                 dir, p ? "bf16" : "fp32");
        CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "8 sequences"),
              "%s: %s", cmd, out);
    }
    snprintf(cmd, sizeof cmd, "%s --precision fp16", args);
    rc = run(cmd, out, sizeof out);
    nl = strchr(out, '\n');
    CHECK(rc == 2 && strstr(out, "--precision") && nl && nl[1] == 0,
          "--precision fp16: status %d, %s", rc, out);
}

/* --plot draws DIR/loss.png with its script; without gnuplot, training
 * still finishes and one line says what to install. */
static void test_train_plot(void) {
    char cmd[1200], out[8192], path[300];
    snprintf(cmd, sizeof cmd,
             "train --steps 40 --eval-every 20 --eval-size 10 --batch 8 "
             "--d-model 16 --d-ff 32 --plot --quiet --out %s/plot",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "train --plot: %s", out);
    snprintf(path, sizeof path, "%s/plot/loss.png", dir);
    FILE *f = fopen(path, "rb");
    unsigned char sig[8] = {0};
    long size = 0;
    if (f) {
        size_t n = fread(sig, 1, 8, f);
        fseek(f, 0, SEEK_END);
        size = n == 8 ? ftell(f) : 0;
        fclose(f);
    }
    CHECK(memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0 && size > 5000,
          "no real %s (%ld bytes)", path, size);
    snprintf(path, sizeof path, "%s/plot/loss.png.gp", dir);
    CHECK(access(path, R_OK) == 0, "no %s", path);
    /* no gnuplot on the PATH: one line, exit 0, the whole log */
    char empty[300];
    snprintf(empty, sizeof empty, "%s/nogp", dir);
    mkdir(empty, 0777);
    snprintf(cmd, sizeof cmd,
             "PATH='%s' '%s' train --steps 40 --eval-every 20 --eval-size 10 "
             "--batch 8 --d-model 16 --d-ff 32 --plot --quiet --out %s/plot2",
             empty, qkv, dir);
    int rc = test_shell(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "apt-get install gnuplot-nox"),
          "train --plot without gnuplot: exit %d: %s", rc, out);
    int warn = 0;
    for (char *s2 = out; (s2 = strstr(s2, "gnuplot-nox")); s2++) warn++;
    CHECK(warn == 1, "said %d times: %s", warn, out);
    double row[8];
    snprintf(path, sizeof path, "%s/plot2/log.csv", dir);
    CHECK(last_row(path, row) == 0 && row[0] == 40, "log incomplete");
}

/* --profile: a table of op kinds and phases whose parts add up, over the
 * steps after the warm-up. */
static void test_train_profile(void) {
    char cmd[600], out[8192];
    snprintf(cmd, sizeof cmd,
             "train --steps 30 --eval-every 30 --eval-size 10 --batch 8 "
             "--d-model 16 --d-ff 32 --profile --quiet --out %s/prof",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "train --profile: %s", out);
    CHECK(strstr(out, "profile: ms per step, over 28 steps (after 2 warm-up "
                      "steps)"),
          "%s", out);
    const char *rows[] = {"matmul",        "attention",        "layernorm",
                          "cross_entropy", "optimiser (Adam)", "backward"};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        CHECK(strstr(out, rows[i]), "no %s row: %s", rows[i], out);
    /* the ops' backward times are the backward phase, up to the loop */
    double fwd = NAN, bwd = NAN, phase_b = NAN;
    char *s = strstr(out, "all ops");
    if (s) sscanf(s, "all ops %lf %lf", &fwd, &bwd);
    s = strstr(out, "\n  backward ");
    if (s) sscanf(s, "\n  backward %lf", &phase_b);
    CHECK(bwd > 0 && phase_b >= bwd && bwd > 0.5 * phase_b,
          "ops' backward %.3f ms vs the phase's %.3f ms", bwd, phase_b);
}

/* ------------------------------------------------------------- bad input */

static void write_text(const char *path, const char *text, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fwrite(text, 1, n ? n : strlen(text), f);
    fclose(f);
}

/* The run rev's checkpoint with one tensor's shape transposed (same bytes):
 * a checkpoint of another shape. */
static void write_other_shape(const char *from, const char *to) {
    qkv_st_file f;
    qkv_st_error e;
    if (qkv_st_read(from, &f, &e)) return;
    qkv_st_entry *en = calloc((size_t)f.count, sizeof *en);
    for (int i = 0; i < f.count; i++) {
        qkv_st_entry x = {
            f.tensors[i].name, f.tensors[i].data, f.tensors[i].ndim, {0}};
        memcpy(x.shape, f.tensors[i].shape, sizeof x.shape);
        if (strcmp(x.name, "generator.weight") == 0) {
            int t = x.shape[0];
            x.shape[0] = x.shape[1], x.shape[1] = t;
        }
        en[i] = x;
    }
    int nm = cJSON_GetArraySize(f.metadata), k = 0;
    const char **keys = calloc((size_t)nm, sizeof *keys),
               **vals = calloc((size_t)nm, sizeof *vals);
    for (cJSON *m = f.metadata->child; m; m = m->next, k++)
        keys[k] = m->string, vals[k] = m->valuestring;
    qkv_st_write(to, en, f.count, keys, vals, nm, &e);
    free(keys);
    free(vals);
    free(en);
    qkv_st_free(&f);
}

static void test_bad_files_are_one_line_and_nothing_is_damaged(void) {
    char p[64][300];
    int np = 0;
#define FILE_(name) (snprintf(p[np], sizeof p[np], "%s/%s", dir, name), p[np++])
    const char *empty = FILE_("empty.tsv"), *notab = FILE_("notab.tsv"),
               *badutf = FILE_("badutf.tsv"), *trunc = FILE_("trunc.st"),
               *foreign = FILE_("foreign.st"), *shape = FILE_("shape.st"),
               *junk = FILE_("junk.st");
    FILE *ef = fopen(empty, "w");
    if (ef) fclose(ef);
    write_text(notab, "a b\tb a\nno tab here\n", 0);
    write_text(badutf, "a b\tb a\nc \xc3\x28\td\n", 0);
    write_text(junk, "hello, I am not a checkpoint\n", 0);
    char ckpt[300], cmd[3000], out[8192];
    snprintf(ckpt, sizeof ckpt, "%s/rev/ckpt.safetensors", dir);
    { /* the first 1000 bytes of a real checkpoint */
        FILE *in = fopen(ckpt, "rb");
        char buf[1000];
        size_t n = in ? fread(buf, 1, sizeof buf, in) : 0;
        if (in) fclose(in);
        write_text(trunc, buf, n);
    }
    { /* a safetensors file another program wrote (no qkv metadata) */
        float w[4] = {1, 2, 3, 4};
        qkv_st_entry e = {"weight", w, 2, {2, 2}};
        qkv_st_error err;
        qkv_st_write(foreign, &e, 1, NULL, NULL, 0, &err);
    }
    write_other_shape(ckpt, shape);
    static const struct {
        const char *args, *want;
    } bad[] = {
        {"train --data %s/nope.tsv", "nope.tsv"},
        {"train --data %s/empty.tsv", "empty.tsv"},
        {"train --data %s/notab.tsv", "line 2 has no tab"},
        {"train --data %s/badutf.tsv", "line 2 is not valid UTF-8"},
        {"train --data %s/corpus/train.tsv --valid %s/notab.tsv", "notab.tsv"},
        {"train --valid %s/notab.tsv", "--valid needs --data"},
        {"train --epochs 2", "--epochs needs --data"},
        {"train --data %s/corpus/train.tsv --batch-tokens 3", "cannot hold"},
        {"eval --ckpt %s/trunc.st --data %s/corpus/test.tsv", "trunc.st"},
        {"eval --ckpt %s/junk.st --data %s/corpus/test.tsv", "junk.st"},
        {"eval --ckpt %s/foreign.st --data %s/corpus/test.tsv", "foreign.st"},
        {"eval --ckpt %s/shape.st --data %s/corpus/test.tsv", "shape"},
        {"eval --ckpt %s/nope.st", "nope.st"},
        {"eval --data %s/corpus/test.tsv", "--ckpt is required"},
        {"eval --ckpt %s/rev/ckpt.safetensors", "--data is required"},
        {"eval --ckpt %s/rev/ckpt.safetensors --data %s/notab.tsv",
         "line 2 has no tab"},
        {"eval --ckpt %s/rev/ckpt.safetensors --data %s/badutf.tsv",
         "not valid UTF-8"},
        {"eval --ckpt %s/rev/ckpt.safetensors --data %s/empty.tsv", "empty"},
        {"eval --ckpt %s/rev/ckpt.safetensors --data x --beam 0",
         "--beam must be positive"},
        {"decode --ckpt %s/shape.st ka", "shape"},
        {"decode --ckpt %s/run/ckpt.safetensors '3 99'",
         "'99' is not a symbol of the task"},
        {"decode --ckpt %s/run/ckpt.safetensors '3 x'", "'x' is not a symbol"},
        {"decode --ckpt %s/rev/ckpt.safetensors \"$(printf 'ka \\377')\"",
         "not valid UTF-8"},
        {"decode --ckpt %s/rev/ckpt.safetensors --temp 1 ka",
         "--temp and --top-k are for decoder-only"},
        {"decode --ckpt %s/rev/ckpt.safetensors --bogus", "unknown flag"},
    };
    /* a finished run must survive every failed command */
    char log[300], before[65536], after[65536];
    snprintf(log, sizeof log, "%s/rev/log.csv", dir);
    FILE *f = fopen(log, "r");
    size_t nb = f ? fread(before, 1, sizeof before, f) : 0;
    if (f) fclose(f);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char args[1000];
        snprintf(args, sizeof args, bad[i].args, dir, dir);
        /* train failures aim at the finished run's directory */
        snprintf(cmd, sizeof cmd, "%s%s%s/rev", args,
                 strncmp(args, "train", 5) == 0 ? " --quiet --out " : "",
                 strncmp(args, "train", 5) == 0 ? dir : "");
        if (strncmp(args, "train", 5) != 0)
            snprintf(cmd, sizeof cmd, "%s", args);
        int rc = run(cmd, out, sizeof out);
        CHECK(rc == 2, "qkv %s: exit %d, want 2: %s", cmd, rc, out);
        CHECK(strstr(out, bad[i].want), "qkv %s: %s", cmd, out);
        char *nl = strchr(out, '\n');
        CHECK(nl && nl[1] == 0 && strncmp(out, "qkv: ", 5) == 0,
              "qkv %s: not one line: %s", cmd, out);
    }
    f = fopen(log, "r");
    size_t na = f ? fread(after, 1, sizeof after, f) : 0;
    if (f) fclose(f);
    CHECK(nb > 0 && na == nb && memcmp(before, after, nb) == 0,
          "a failed command changed %s", log);
#undef FILE_
}

int main(void) {
    test_prog = "cli";
    test_qkv_path(qkv, sizeof qkv);
    test_tmpdir(dir, sizeof dir, "cli");
    RUN(test_help_lists_every_flag_with_default);
    RUN(test_bad_input_is_one_line_and_exit_2);
    RUN(test_train_writes_log_and_config);
    RUN(test_same_seed_same_log);
    RUN(test_interrupt_and_resume_equal_uninterrupted);
    make_corpora();
    RUN(test_task_eval_decode);
    RUN(test_task_symbol_2_is_not_eos);
    RUN(test_precision_bf16);
    RUN(test_train_plot);
    RUN(test_train_profile);
    RUN(test_corpus_train_eval_decode);
    RUN(test_corpus_decoder_only);
    RUN(test_corpus_resume_equals_uninterrupted);
    RUN(test_bad_files_are_one_line_and_nothing_is_damaged);
    if (test_rmtree(dir)) return 1;
    return test_summary();
}
