/* The bad-input table: qkv driven as a hostile but honest user would, with
 * malformed flags, files, checkpoints, saved settings, special files and
 * sizes that overflow. Every case must end with one line on stderr
 * ("qkv: CMD: ...", naming what was wrong), the expected exit status
 * (2: input), within a time limit and a memory limit (RLIMIT_AS 1 GB, peak
 * RSS under 400 MB; no address-space limit under AddressSanitizer), and the
 * finished runs in DIR/run (a task) and DIR/crun (a corpus) unchanged byte
 * for byte. Then the cases that must now work: divergence keeps the last
 * good checkpoint, a resumed log gets its header back, a lock keeps a second
 * writer out. Issue 14 lists the defects each case covers. */
#include <cjson/cJSON.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "pcg.h"

#include "test.h"

static char qkv[600], dir[64];

/* ------------------------------------------------------------ the files */

static void write_bytes(const char *name, const void *data, size_t n) {
    FILE *f = fopen(test_path(name), "wb");
    if (!f) return;
    fwrite(data, 1, n, f);
    fclose(f);
}

static void write_text(const char *name, const char *text) {
    write_bytes(name, text, strlen(text));
}

/* name: `lines` lines "PREFIX<TAB>b", PREFIX being `unit` repeated n times. */
static void write_long_line(const char *name, const char *unit, size_t n) {
    FILE *f = fopen(test_path(name), "wb");
    if (!f) return;
    fputs("a b\tb a\n", f);
    for (size_t i = 0; i < n; i++) fputs(unit, f);
    fputs("\tb\n", f);
    fclose(f);
}

/* A small corpus: n pairs "w1 .. wk<TAB>wk .. w1" (word-level reversal). */
static void write_corpus(const char *name, int n, uint64_t seed) {
    static const char *const w[] = {"ka", "lo", "mi", "nu", "pe", "ro"};
    FILE *f = fopen(test_path(name), "w");
    if (!f) return;
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, seed, 3);
    for (int i = 0; i < n; i++) {
        int k = 2 + (int)qkv_pcg32_bounded(&rng, 3), x[4];
        for (int j = 0; j < k; j++) x[j] = (int)qkv_pcg32_bounded(&rng, 6);
        for (int j = 0; j < k; j++) fprintf(f, "%s%s", j ? " " : "", w[x[j]]);
        fputc('\t', f);
        for (int j = k - 1; j >= 0; j--)
            fprintf(f, "%s%s", j < k - 1 ? " " : "", w[x[j]]);
        fputc('\n', f);
    }
    fclose(f);
}

/* Runs `qkv ARGS` (space-separated words; "@" in a word is the scratch
 * directory, "{NL}" a newline) with stdin from `in`, limits as above. */
static int run_words(const char *args, const char *in, test_proc *r) {
    char buf[4096], *argv[64];
    int n = 0;
    argv[n++] = qkv;
    size_t k = 0;
    for (const char *s = args; *s && k < sizeof buf - 200; s++) {
        if (*s == '@')
            k += (size_t)snprintf(buf + k, sizeof buf - k, "%s", dir);
        else if (strncmp(s, "{NL}", 4) == 0)
            buf[k++] = '\n', s += 3;
        else
            buf[k++] = *s;
    }
    buf[k] = 0;
    for (char *w = strtok(buf, " "); w && n < 63; w = strtok(NULL, " "))
        argv[n++] = w;
    argv[n] = NULL;
    char inpath[400] = "";
    if (in) snprintf(inpath, sizeof inpath, "%s", in[0] == '@' ? "" : in);
    if (in && in[0] == '@')
        snprintf(inpath, sizeof inpath, "%s%s", dir, in + 1);
    return test_exec(argv, in ? inpath : NULL, 1024, 60, r);
}

/* ---------------------------------------------------- checkpoint edits */

/* dst = src with metadata key set to val (NULL: removed) and, if tensor is
 * given, its value at index 3 replaced by x. */
static int edit_ckpt(const char *src, const char *dst, const char *key,
                     const char *val, const char *tensor, float x) {
    qkv_st_file f;
    qkv_st_error e;
    if (qkv_st_read(src, &f, &e)) return -1;
    qkv_st_entry *en = calloc((size_t)f.count, sizeof *en);
    for (int i = 0; i < f.count; i++) {
        qkv_st_tensor *t = &f.tensors[i];
        if (tensor && strcmp(t->name, tensor) == 0 && t->n > 3) t->data[3] = x;
        en[i] = (qkv_st_entry){t->name, t->data, t->ndim, {0}};
        memcpy(en[i].shape, t->shape, sizeof t->shape);
    }
    const char *keys[64], *vals[64];
    int nm = 0;
    for (cJSON *m = f.metadata->child; m && nm < 63; m = m->next) {
        if (key && strcmp(m->string, key) == 0) continue;
        keys[nm] = m->string, vals[nm++] = m->valuestring;
    }
    if (key && val) keys[nm] = key, vals[nm++] = val;
    int rc = qkv_st_write(dst, en, f.count, keys, vals, nm, &e);
    free(en);
    qkv_st_free(&f);
    return rc;
}

/* The JSON text `json` with field `name` set to the JSON value `v` (NULL:
 * removed); malloc'd. */
static char *edit_json(const char *json, const char *name, const char *v) {
    cJSON *o = cJSON_Parse(json);
    cJSON_DeleteItemFromObjectCaseSensitive(o, name);
    if (v) cJSON_AddItemToObject(o, name, cJSON_Parse(v));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* A copy of the run directory `from` as `to` whose checkpoint has the
 * settings ("cli") field `field` set to `value` (or, with meta, whose
 * metadata key `field` is `value` outright). */
static void victim(const char *from, const char *to, const char *field,
                   const char *value, int meta) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/%s' && cp -r '%s/%s' '%s/%s'", dir,
             to, dir, from, dir, to);
    if (system(cmd) != 0) return;
    char src[300], dst[300];
    snprintf(src, sizeof src, "%s/%s/ckpt.safetensors", dir, from);
    snprintf(dst, sizeof dst, "%s/%s/ckpt.safetensors", dir, to);
    if (meta) {
        edit_ckpt(src, dst, field, value, NULL, 0);
        return;
    }
    qkv_st_file f;
    qkv_st_error e;
    if (qkv_st_read(src, &f, &e)) return;
    char *cli = edit_json(qkv_st_meta(&f, "cli"), field, value);
    qkv_st_free(&f);
    edit_ckpt(src, dst, "cli", cli, NULL, 0);
    cJSON_free(cli);
}

/* --------------------------------------------------------- snapshots */

typedef struct snapshot {
    int n;
    char name[16][64];
    char *data[16];
    long size[16];
} snapshot;

static void snap(const char *sub, snapshot *s) {
    memset(s, 0, sizeof *s);
    char path[400];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d)) && s->n < 16;) {
        if (e->d_name[0] == '.') continue;
        char p[800];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        FILE *f = fopen(p, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *buf = malloc((size_t)size + 1);
        s->size[s->n] = (long)fread(buf, 1, (size_t)size, f);
        fclose(f);
        snprintf(s->name[s->n], 64, "%.60s", e->d_name);
        s->data[s->n++] = buf;
    }
    if (d) closedir(d);
}

/* 1 if sub holds exactly the files of s, with the same bytes. */
static int same(const char *sub, const snapshot *s) {
    snapshot now;
    snap(sub, &now);
    int ok = now.n == s->n;
    for (int i = 0; ok && i < s->n; i++) {
        int found = 0;
        for (int j = 0; j < now.n && !found; j++)
            found = strcmp(now.name[j], s->name[i]) == 0 &&
                    now.size[j] == s->size[i] &&
                    memcmp(now.data[j], s->data[i], (size_t)s->size[i]) == 0;
        ok = found;
    }
    for (int i = 0; i < now.n; i++) free(now.data[i]);
    return ok;
}

static void snap_free(snapshot *s) {
    for (int i = 0; i < s->n; i++) free(s->data[i]);
}

/* ------------------------------------------------------------ the table */

typedef struct hcase {
    const char *args; /* qkv's words (see run_words) */
    const char *in;   /* stdin ("@/x": in the scratch directory), or NULL */
    const char *want; /* in the one line on stderr */
} hcase;

#define RUN_         "--quiet --out @/run"
#define CORPUS_      "--data @/train.tsv --quiet --out @/run"
#define TASK_CKPT_   "@/run/ckpt.safetensors"
#define CORPUS_CKPT_ "@/crun/ckpt.safetensors"

static const hcase table[] = {
    /* flags: ranges in the type used, overflow, caps */
    {"train --lr abc " RUN_, NULL, "--lr wants a number, got 'abc'"},
    {"train --lr nan " RUN_, NULL, "--lr wants a number, got 'nan'"},
    {"train --lr 1e39 " RUN_, NULL, "--lr must be a finite float"},
    {"train --clip 1e39 " RUN_, NULL, "--clip must be a finite float"},
    {"train --lr -1 " RUN_, NULL, "--lr must be positive, got -1"},
    {"train --lr 0 " RUN_, NULL, "--lr must be positive"},
    {"train --clip -1 " RUN_, NULL, "--clip must be >= 0"},
    {"train --steps 0 " RUN_, NULL, "--steps must be positive"},
    {"train --steps 1x " RUN_, NULL, "--steps wants an integer, got '1x'"},
    {"train --steps 99999999999 " RUN_, NULL, "--steps wants an integer"},
    {"train --steps 2000000000 " RUN_, NULL, "--steps must be at most"},
    {"train --threads 100000 " RUN_, NULL, "--threads must be at most"},
    {"train --threads 5000 " RUN_, NULL, "--threads must be at most"},
    {"train --threads -1 " RUN_, NULL, "--threads must be >= 0"},
    {"train --batch 0 " RUN_, NULL, "--batch must be positive"},
    {"train --batch 2000000 " RUN_, NULL, "--batch must be at most"},
    {"train --batch 1000000 " RUN_, NULL, "the run needs about"},
    {"train --eval-size 1000000 " RUN_, NULL, "the run needs about"},
    {"train --d-model 65536 --d-ff 65536 --h 1 " RUN_, NULL, "the model has"},
    {"train --d-model 100000 " RUN_, NULL, "--d-model must be at most 65536"},
    {"train --h 3 " RUN_, NULL, "h = 3 does not divide d_model = 64"},
    {"train --dropout 1 " RUN_, NULL, "--dropout must be at most 0.99"},
    {"train --label-smoothing 2 " RUN_, NULL, "--label-smoothing must be"},
    {"train --N 0 " RUN_, NULL, "--N must be positive"},
    {"train --N 1000 " RUN_, NULL, "--N must be at most 64"},
    {"train --vocab 3 " RUN_, NULL, "leaves fewer than 2 symbols"},
    {"train --max-len 1000 " RUN_, NULL, "--max-len must be at most 512"},
    {"train --min-len 5 --max-len 3 " RUN_, NULL, "lengths 5..3"},
    {"train --task foo " RUN_, NULL, "--task must be one of copy|reverse"},
    {"train --bogus 1 " RUN_, NULL, "unknown flag --bogus"},
    {"train --quiet=1 --out @/run", NULL, "--quiet takes no value"},
    {"train --out @/run --steps", NULL, "--steps needs a value"},
    {"train --epochs 10000000 " CORPUS_, NULL, "--epochs must be at most"},
    {"train --epochs 1000000 --batch 1 " CORPUS_, NULL,
     "steps, more than 1000000000"},
    {"train --valid @/valid.tsv " RUN_, NULL, "--valid needs --data"},
    {"train --epochs 2 " RUN_, NULL, "--epochs needs --data"},
    {"train --force --resume @/run", NULL, "--force starts a run afresh"},
    /* a finished run is not lost by a mistyped command */
    {"train --steps 5 " RUN_, NULL, "already holds a run"},
    {"train --steps 5 --quiet --out @/crun", NULL, "already holds a run"},
    /* names that would reach gnuplot or split a message */
    {"train --steps 5 --quiet --out @/x{NL}system", NULL, "control character"},
    {"plot @/run --title ok -o @/y{NL}.png", NULL, "control character"},
    {"sweep --N 1 --h 1 --steps 2 --out @/s{NL}x", NULL, "control character"},
    /* data files: malformed, special, huge */
    {"train --data @/nope.tsv " RUN_, NULL, "nope.tsv: cannot open"},
    {"train --data @/empty.tsv " RUN_, NULL, "no sentence pairs"},
    {"train --data @/notab.tsv " RUN_, NULL, "line 2 has no tab"},
    {"train --data @/badutf.tsv " RUN_, NULL, "line 2 is not valid UTF-8"},
    {"train --data @/nul.tsv " RUN_, NULL, "line 2 has a NUL byte"},
    {"train --data @/fifo " RUN_, NULL, "is a FIFO"},
    {"train --data /dev/zero " RUN_, NULL, "is a character device"},
    {"train --data @ " RUN_, NULL, "is a directory"},
    {"train --data @/line2m.tsv " RUN_, NULL, "line 2 is longer than"},
    {"train --data @/line100m.tsv --tok char " RUN_, NULL,
     "line 2 is longer than 1048576 bytes"},
    {"train --data @/tokens100k.tsv " RUN_, NULL,
     "the longest pair is 100000 tokens"},
    {"train --data @/tokens30k.tsv " RUN_, NULL, "the run needs about"},
    {"train --batch-tokens 3 " CORPUS_, NULL, "cannot hold the longest pair"},
    {"train --data @/train.tsv --valid @/fifo " RUN_, NULL, "is a FIFO"},
    {"train --data @/train.tsv --valid @/notab.tsv " RUN_, NULL,
     "notab.tsv: line 2 has no tab"},
    /* checkpoints: malformed, special, huge, diverged */
    {"eval --ckpt @/nope.st", NULL, "nope.st: cannot open"},
    {"eval --ckpt @/fifo", NULL, "is a FIFO"},
    {"eval --ckpt /dev/zero", NULL, "is a character device"},
    {"eval --ckpt @/junk.st", NULL, "junk.st"},
    {"eval --ckpt @/trunc.st", NULL, "trunc.st"},
    {"eval --ckpt @/foreign.st", NULL, "not a qkv checkpoint"},
    {"eval --ckpt @/nan.st", NULL, "holds NaN"},
    {"eval --ckpt @/inf.st", NULL, "holds infinity"},
    {"decode --ckpt @/nan.st 3", NULL, "holds NaN"},
    {"attn --ckpt @/nan.st 3 -o @/a.png", NULL, "holds NaN"},
    {"eval --ckpt @/vocab10m.st", NULL, "at most 4194304"},
    {"eval --ckpt @/vocab4m.st", NULL, "shape mismatch"},
    {"eval --ckpt @/len10m.st", NULL, "max_len 10000000"},
    {"eval --ckpt @/nocli.st", NULL, "not written by qkv train"},
    {"eval --ckpt @/badvocab.st --data @/valid.tsv", NULL,
     "\"vocab.src\" is not a JSON array"},
    {"eval --ckpt " CORPUS_CKPT_ " --data @/valid.tsv --beam 1000000", NULL,
     "--beam must be at most 256"},
    {"eval --ckpt " CORPUS_CKPT_ " --data @/valid.tsv --beam 0", NULL,
     "--beam must be positive"},
    {"eval --ckpt " CORPUS_CKPT_ " --data @/valid.tsv --batch-tokens 16000000",
     NULL, "needs about"},
    {"eval --ckpt " CORPUS_CKPT_ " --data /dev/zero", NULL,
     "is a character device"},
    /* decode's input */
    {"decode --ckpt " TASK_CKPT_, "/dev/zero", "longer than 1048576 bytes"},
    {"decode --ckpt " TASK_CKPT_, "@/nulline.txt", "a NUL byte"},
    {"decode --ckpt " TASK_CKPT_, "@/tokens500k.txt", "has 500000 tokens"},
    {"decode --ckpt " TASK_CKPT_ " 3 99", NULL, "'99' is not a symbol"},
    {"decode --ckpt " CORPUS_CKPT_ " --beam 300 ka", NULL,
     "--beam must be at most 256"},
    /* --resume trusts nothing the checkpoint says */
    {"train --resume @/nope", NULL, "cannot open"},
    {"train --resume @/run --h 2", NULL, "--h cannot change when resuming"},
    {"train --resume @/v-vocab --steps 99", NULL,
     "its settings do not give its own model"},
    {"train --resume @/v-dmodel --steps 99", NULL,
     "its settings do not give its own model"},
    {"train --resume @/v-maxlen --steps 99", NULL,
     "its settings do not give its own model"},
    {"train --resume @/v-task --steps 99", NULL,
     "the saved setting --task must be one of"},
    {"train --resume @/v-lr --steps 99", NULL,
     "the saved setting --lr must be a finite float"},
    {"train --resume @/v-steps --steps 99", NULL,
     "the saved setting steps has the wrong type"},
    {"train --resume @/v-batch --steps 99", NULL,
     "the saved setting --batch must be at most"},
    {"train --resume @/v-optim --steps 99", NULL,
     "its optimiser state is adam's, not the sgd asked for"},
    {"train --resume @/v-cvocab --steps 99", NULL,
     "its settings do not give its own model"},
    {"train --resume @/v-nocli --steps 99", NULL, "not written by qkv train"},
    {"train --resume @/v-epoch --steps 99", NULL, "no position of this corpus"},
    {"train --resume @/v-count --steps 99", NULL,
     "\"tokens\" is missing or not a count"},
    {"train --resume @/run --steps 10", NULL, "already has 30 of 10 steps"},
    /* plot and sweep read run files without hanging */
    {"plot @/fifo", NULL, "is a FIFO"},
    {"plot @/biglog.csv", NULL, "not a row of numbers"},
    {"sweep --N 0 --h 1 --out @/sw", NULL, "--N wants a list"},
};

static const char *const victims[] = {
    "v-vocab", "v-dmodel", "v-maxlen", "v-task",  "v-lr",    "v-steps",
    "v-batch", "v-optim",  "v-cvocab", "v-nocli", "v-epoch", "v-count",
};

static void make_inputs(void) {
    write_text("empty.tsv", "");
    write_text("notab.tsv", "a b\tb a\nno tab here\n");
    write_text("badutf.tsv", "a b\tb a\nc \xc3\x28\td\n");
    write_bytes("nul.tsv", "a b\tb a\nc\0d\te\n", 15);
    write_text("junk.st", "hello, I am not a checkpoint\n");
    mkfifo(test_path("fifo"), 0600);
    write_long_line("line2m.tsv", "x", 2u << 20);
    write_long_line("line100m.tsv", "xxxxxxxxxx", 10000000);
    write_long_line("tokens100k.tsv", "a ", 100000);
    write_long_line("tokens30k.tsv", "a ", 30000);
    write_bytes("nulline.txt", "3 4\0 5\n", 7);
    FILE *f = fopen(test_path("tokens500k.txt"), "w");
    for (int i = 0; f && i < 500000; i++) fputs("3 ", f);
    if (f) fputs("\n", f), fclose(f);
    f = fopen(test_path("biglog.csv"), "w");
    if (f) {
        fputs("step,tokens,seconds,lr,train_loss,val_loss,val_acc,val_bleu\n",
              f);
        for (int i = 0; i < 3 << 20; i++) fputc('7', f);
        fclose(f);
    }
    /* checkpoints */
    char ck[300], cck[300];
    snprintf(ck, sizeof ck, "%s/run/ckpt.safetensors", dir);
    snprintf(cck, sizeof cck, "%s/crun/ckpt.safetensors", dir);
    FILE *in = fopen(ck, "rb");
    char buf[1000];
    size_t n = in ? fread(buf, 1, sizeof buf, in) : 0;
    if (in) fclose(in);
    write_bytes("trunc.st", buf, n);
    float w[4] = {1, 2, 3, 4};
    qkv_st_entry e = {"weight", w, 2, {2, 2}};
    qkv_st_error err;
    qkv_st_write(test_path("foreign.st"), &e, 1, NULL, NULL, 0, &err);
    edit_ckpt(ck, test_path("nan.st"), NULL, NULL, "generator.weight", NAN);
    edit_ckpt(ck, test_path("inf.st"), NULL, NULL, "tgt_embed.weight",
              INFINITY);
    edit_ckpt(cck, test_path("nocli.st"), "cli", NULL, NULL, 0);
    edit_ckpt(cck, test_path("badvocab.st"), "vocab.src", "{\"a\": 1}", NULL,
              0);
    qkv_st_file sf;
    if (qkv_st_read(ck, &sf, &err) == 0) {
        const char *model = qkv_st_meta(&sf, "model");
        char *v10 = edit_json(model, "src_vocab", "10000000"),
             *v4 = edit_json(model, "src_vocab", "4000000"),
             *l10 = edit_json(model, "max_len", "10000000");
        edit_ckpt(ck, test_path("vocab10m.st"), "model", v10, NULL, 0);
        edit_ckpt(ck, test_path("vocab4m.st"), "model", v4, NULL, 0);
        edit_ckpt(ck, test_path("len10m.st"), "model", l10, NULL, 0);
        cJSON_free(v10), cJSON_free(v4), cJSON_free(l10);
        qkv_st_free(&sf);
    }
    /* runs whose stored settings disagree with their tensors, or are bad */
    victim("run", "v-vocab", "vocab", "12", 0);
    victim("run", "v-dmodel", "d-model", "32", 0);
    victim("run", "v-maxlen", "max-len", "12", 0);
    victim("run", "v-task", "task", "\"unscramble\"", 0);
    victim("run", "v-lr", "lr", "1e39", 0);
    victim("run", "v-steps", "steps", "\"many\"", 0);
    victim("run", "v-batch", "batch", "1e9", 0);
    victim("run", "v-optim", "optim", "\"sgd\"", 0);
    victim("crun", "v-cvocab", "vocab.src",
           "[\"<pad>\",\"<bos>\",\"<eos>\",\"<unk>\",\"ka\"]", 1);
    victim("crun", "v-nocli", "cli", NULL, 1);
    victim("crun", "v-epoch", "trainer",
           "{\"tokens\":10,\"seconds\":1,\"skipped\":0,\"data\":{"
           "\"kind\":\"corpus\",\"epoch\":1,\"batch\":100000}}",
           1);
    victim("crun", "v-count", "trainer",
           "{\"tokens\":\"10\",\"seconds\":1,\"skipped\":0}", 1);
}

static void test_bad_input_table(void) {
    snapshot run, crun, vs[sizeof victims / sizeof *victims];
    snap("run", &run);
    snap("crun", &crun);
    for (size_t i = 0; i < sizeof victims / sizeof *victims; i++)
        snap(victims[i], &vs[i]);
    CHECK(run.n == 3 && crun.n == 3, "the runs have %d and %d files", run.n,
          crun.n);
    int n = (int)(sizeof table / sizeof *table);
    double worst_s = 0;
    long worst_mb = 0;
    for (int i = 0; i < n; i++) {
        const hcase *c = &table[i];
        test_proc r;
        run_words(c->args, c->in, &r);
        CHECK(r.status == 2 && !r.timed_out, "qkv %s: exit %d%s, want 2: %s",
              c->args, r.status,
              r.timed_out ? " (killed at the time limit)" : "", r.err);
        CHECK(test_one_line(r.err) && strncmp(r.err, "qkv: ", 5) == 0,
              "qkv %s: not one line 'qkv: ...' on stderr: %s", c->args, r.err);
        CHECK(strstr(r.err, c->want), "qkv %s: lacks '%s': %s", c->args,
              c->want, r.err);
        CHECK(r.max_rss_mb < 400, "qkv %s: peak RSS %ld MB", c->args,
              r.max_rss_mb);
        CHECK(!strstr(r.out, "done:"), "qkv %s: trained: %s", c->args, r.out);
        if (r.seconds > worst_s) worst_s = r.seconds;
        if (r.max_rss_mb > worst_mb) worst_mb = r.max_rss_mb;
        CHECK(same("run", &run) && same("crun", &crun),
              "qkv %s changed a finished run", c->args);
    }
    for (size_t i = 0; i < sizeof victims / sizeof *victims; i++) {
        CHECK(same(victims[i], &vs[i]), "a refused --resume changed %s",
              victims[i]);
        snap_free(&vs[i]);
    }
    printf("  %d bad inputs: each one line and exit 2, at most %.2f s and "
           "%ld MB; the finished runs unchanged\n",
           n, worst_s, worst_mb);
    snap_free(&run);
    snap_free(&crun);
}

/* ----------------------------------------------- what must work instead */

/* A run that diverges stops with exit 3 and one line; the last good
 * checkpoint stays as it was, and loads. */
static void test_divergence_keeps_the_last_good_checkpoint(void) {
    test_proc r;
    run_words("train --lr 1e6 --steps 50 --d-model 16 --d-ff 32 --batch 8 "
              "--quiet --out @/div",
              NULL, &r);
    CHECK(r.status == 3 && test_one_line(r.err) &&
              strstr(r.err, "diverged at step") &&
              strstr(r.err, "no checkpoint was saved"),
          "--lr 1e6: exit %d: %s", r.status, r.err);
    CHECK(access(test_path("div/ckpt.safetensors"), F_OK) != 0,
          "a diverged model was saved");
    /* diverges late: the weights blow up without a NaN loss first */
    run_words("train --lr 1000 --warmup 50 --clip 0 --save-every 5 --steps "
              "100 --d-model 16 --d-ff 32 --batch 8 --quiet --out @/div2",
              NULL, &r);
    CHECK(r.status == 3 && test_one_line(r.err) &&
              strstr(r.err, "the last good checkpoint (step"),
          "--lr 1000: exit %d: %s", r.status, r.err);
    int step = 0;
    const char *s = strstr(r.err, "(step ");
    if (s) step = atoi(s + 6);
    qkv_model m;
    int64_t at = -1;
    char err[400];
    int rc = qkv_ckpt_load(test_path("div2/ckpt.safetensors"), &m, NULL, &at,
                           NULL, 0, NULL, err, sizeof err);
    CHECK(rc == 0 && at == step && step > 0, "the last good checkpoint: %s",
          rc ? err : "another step");
    if (rc == 0) qkv_model_free(&m);
    /* --skip-nonfinite skips bad steps, up to its count */
    run_words("train --lr 1e6 --skip-nonfinite 3 --steps 50 --d-model 16 "
              "--d-ff 32 --batch 8 --quiet --out @/div3",
              NULL, &r);
    CHECK(r.status == 3 && strstr(r.err, "3 earlier steps skipped"),
          "--skip-nonfinite 3: exit %d: %s", r.status, r.err);
}

/* A run cut before its first save left a log without a header (a past bug)
 * or none: --resume writes it back with the header. A stale temporary of a
 * killed save is removed at the next save. The thread count of the saved
 * settings is not this machine's and is not used. */
static void test_resume_repairs_what_a_kill_left(void) {
    char cmd[1000];
    snprintf(cmd, sizeof cmd,
             "cp -r '%s/run' '%s/cut' && sed -i 1d '%s/cut/log.csv' && "
             "touch '%s/cut/ckpt.safetensors.tmp.999999999'",
             dir, dir, dir, dir);
    CHECK(system(cmd) == 0, "%s", cmd);
    char *cli = NULL;
    qkv_st_file f;
    qkv_st_error e;
    if (qkv_st_read(test_path("cut/ckpt.safetensors"), &f, &e) == 0) {
        cli = edit_json(qkv_st_meta(&f, "cli"), "threads", "100000");
        qkv_st_free(&f);
    }
    edit_ckpt(test_path("run/ckpt.safetensors"),
              test_path("cut/ckpt.safetensors"), "cli", cli, NULL, 0);
    cJSON_free(cli);
    test_proc r;
    run_words("train --resume @/cut --steps 40", NULL, &r);
    CHECK(r.status == 0, "resume: exit %d: %s", r.status, r.err);
    FILE *lf = fopen(test_path("cut/log.csv"), "r");
    char line[200] = "";
    int rows = 0;
    if (lf && fgets(line, sizeof line, lf))
        for (char l2[200]; fgets(l2, sizeof l2, lf);) rows++;
    if (lf) fclose(lf);
    CHECK(strncmp(line, "step,tokens,", 12) == 0 && rows == 40,
          "the log: first line '%s', %d rows", line, rows);
    CHECK(access(test_path("cut/ckpt.safetensors.tmp.999999999"), F_OK) != 0,
          "the stale temporary is still there");
}

/* While one process holds a run (its flock), another is refused, even with
 * --force, which would otherwise remove the run's files. */
static void test_a_second_writer_is_refused(void) {
    int fd = open(test_path("run"), O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0, "cannot lock");
    snapshot s;
    snap("run", &s);
    test_proc r;
    run_words("train --steps 5 --force --quiet --out @/run", NULL, &r);
    CHECK(r.status == 2 && test_one_line(r.err) && strstr(r.err, "is in use"),
          "a second writer: exit %d: %s", r.status, r.err);
    run_words("train --resume @/run --steps 40", NULL, &r);
    CHECK(r.status == 2 && strstr(r.err, "is in use"),
          "a second --resume: exit %d: %s", r.status, r.err);
    CHECK(same("run", &s), "the locked run changed");
    snap_free(&s);
    if (fd >= 0) close(fd);
    /* --force starts clean: no stale log rows, checkpoint or pictures */
    run_words("train --steps 5 --eval-every 5 --d-model 16 --d-ff 32 --batch "
              "8 --eval-size 8 --force --quiet --out @/run",
              NULL, &r);
    FILE *lf = fopen(test_path("run/log.csv"), "r");
    int rows = 0;
    for (char l[200]; lf && fgets(l, sizeof l, lf);) rows++;
    if (lf) fclose(lf);
    CHECK(r.status == 0 && rows == 6, "--force: exit %d, %d log lines: %s",
          r.status, rows, r.err);
}

int main(void) {
    test_prog = "hostile";
    test_qkv_path(qkv, sizeof qkv);
    test_dir_make("hostile");
    snprintf(dir, sizeof dir, "%s", test_dir);
    write_corpus("train.tsv", 2000, 1);
    write_corpus("valid.tsv", 50, 2);
    test_proc r;
    run_words("train --steps 30 --eval-every 30 --eval-size 8 --batch 8 "
              "--d-model 16 --d-ff 32 --h 2 --quiet --out @/run",
              NULL, &r);
    if (r.status != 0) {
        printf("FAIL hostile/setup: %s\n", r.err);
        return 1;
    }
    run_words("train --data @/train.tsv --valid @/valid.tsv --steps 30 "
              "--eval-every 30 --d-model 16 --d-ff 32 --h 2 --quiet --out "
              "@/crun",
              NULL, &r);
    if (r.status != 0) {
        printf("FAIL hostile/setup: %s\n", r.err);
        return 1;
    }
    make_inputs();
    RUN(test_bad_input_table);
    RUN(test_divergence_keeps_the_last_good_checkpoint);
    RUN(test_resume_repairs_what_a_kill_left);
    RUN(test_a_second_writer_is_refused);
    if (test_dir_remove()) return 1;
    return test_summary();
}
