/* Plain-text language models (data/text.h, qkv train --text, qkv generate):
 * the windows a source cuts and their exact offsets, the held-out split,
 * bad files refused with one line, resuming the source exactly, a short run
 * that beats the unigram perplexity, and the commands end to end. */
#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "eval.h"
#include "text.h"
#include "trainer.h"

#include "test.h"

static char qkv[600];
static const char *const shipped = "data/text/gnu-licenses.txt";

/* A stream of n ids 1000, 1001, ...: a window's ids tell its offset. */
static qkv_text_ids ramp(int64_t n) {
    qkv_text_ids x = {qkv_malloc((size_t)n * sizeof(int32_t), "ids"), n, 0};
    for (int64_t i = 0; i < n; i++) x.ids[i] = (int32_t)(1000 + i);
    return x;
}

/* Training windows: tgt_in the window, tgt_out shifted by one, no padding,
 * at offsets drawn by PCG32 (seed, stream 1), row after row. */
static void test_train_windows_exact(void) {
    char err[256];
    qkv_text_ids x = ramp(100);
    qkv_source *s = qkv_text_source(&x, 3, 8, 42, 0, 0, err, sizeof err);
    CHECK(s && s->max_B == 3 && s->max_S == 0 && s->max_T == 8, "source shape");
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 42, 1);
    int lo = 100, hi = -1, first[3] = {0};
    for (int k = 0; k < 400; k++) {
        const qkv_batch *b = qkv_source_next(s);
        CHECK(b->B == 3 && b->T == 8 && !b->src, "batch %d shape", k);
        for (int r = 0; r < 3; r++) {
            int o = (int)qkv_pcg32_bounded(&rng, 100 - 8);
            if (k == 0) first[r] = b->tgt_in[r * 8] - 1000;
            lo = o < lo ? o : lo, hi = o > hi ? o : hi;
            for (int j = 0; j < 8; j++) {
                CHECK(b->tgt_in[r * 8 + j] == 1000 + o + j, "in %d %d %d", k, r,
                      j);
                CHECK(b->tgt_out[r * 8 + j] == 1000 + o + j + 1, "out %d %d", k,
                      r);
                CHECK(!b->tgt_pad[r * 8 + j], "padding");
            }
        }
    }
    /* every offset 0 .. n - block - 1 is reachable, none beyond */
    CHECK(lo == 0 && hi == 100 - 8 - 1, "offsets %d..%d, want 0..91", lo, hi);
    /* the golden offsets of seed 42 (PCG32, pcg-random.org's generator) */
    printf("  first offsets of seed 42: %d %d %d\n", first[0], first[1],
           first[2]);
    CHECK(first[0] == 49 && first[1] == 6 && first[2] == 8,
          "first offsets %d %d %d", first[0], first[1], first[2]);
    qkv_source_free(s);
    /* a stream of exactly block + 1 tokens has one window; one less, none */
    qkv_text_ids y = ramp(9);
    s = qkv_text_source(&y, 2, 8, 1, 0, 0, err, sizeof err);
    CHECK(s && qkv_source_next(s)->tgt_in[0] == 1000, "one window at 0");
    qkv_source_free(s);
    y.n = 8;
    s = qkv_text_source(&y, 2, 8, 1, 0, 0, err, sizeof err);
    CHECK(!s && strstr(err, "8 tokens, fewer than a window of --block 8"),
          "too short: %s", err);
    qkv_text_ids_free(&y);
    qkv_text_ids_free(&x);
}

/* Validation: consecutive windows 0, block, 2 block ..., B a batch, the last
 * batch smaller, NULL at the end; a rewind gives the same pass. */
static void test_valid_windows(void) {
    char err[256];
    qkv_text_ids x = ramp(50); /* (50 - 1) / 8 = 6 windows */
    CHECK(qkv_text_windows(&x, 8, 0) == 6 && qkv_text_windows(&x, 8, 5) == 5,
          "window counts");
    qkv_source *s = qkv_text_source(&x, 4, 8, 0, 1, 0, err, sizeof err);
    for (int pass = 0; pass < 2; pass++) {
        qkv_source_rewind(s);
        const qkv_batch *b = qkv_source_next(s);
        CHECK(b && b->B == 4, "first batch of 4");
        for (int r = 0; b && r < 4; r++)
            CHECK(b->tgt_in[r * 8] == 1000 + 8 * r &&
                      b->tgt_out[r * 8 + 7] == 1000 + 8 * r + 8,
                  "window %d", r);
        b = qkv_source_next(s);
        CHECK(b && b->B == 2 && b->tgt_in[0] == 1032 && b->tgt_in[8] == 1040 &&
                  b->tgt_out[15] == 1048,
              "second batch: the windows at 32 and 40");
        CHECK(!qkv_source_next(s), "one pass");
    }
    qkv_source_free(s);
    s = qkv_text_source(&x, 4, 8, 0, 1, 5, err, sizeof err); /* --eval-size */
    CHECK(qkv_source_next(s)->B == 4 && qkv_source_next(s)->B == 1 &&
              !qkv_source_next(s),
          "5 windows: 4 + 1");
    qkv_source_free(s);
    s = qkv_text_source(&x, 64, 8, 0, 1, 0, err, sizeof err);
    CHECK(s->max_B == 6, "a batch of B 64 holds the 6 windows there are");
    qkv_source_free(s);
    qkv_text_ids_free(&x);
}

/* The source's position (the generator and the batches served) restores
 * exactly; a position of another kind is refused. */
static void test_resume_state(void) {
    char err[256];
    qkv_text_ids x = ramp(500);
    qkv_source *a = qkv_text_source(&x, 4, 16, 7, 0, 0, err, sizeof err);
    qkv_source *b = qkv_text_source(&x, 4, 16, 7, 0, 0, err, sizeof err);
    for (int k = 0; k < 5; k++) qkv_source_next(a);
    qkv_source_state st;
    qkv_source_get_state(a, &st);
    CHECK(st.epoch == 0 && st.batch == 5, "state %lld %lld",
          (long long)st.epoch, (long long)st.batch);
    CHECK(qkv_source_set_state(b, &st, err, sizeof err) == 0, "%s", err);
    for (int k = 0; k < 3; k++) {
        const qkv_batch *p = qkv_source_next(a);
        int32_t want[64];
        memcpy(want, p->tgt_in, sizeof want);
        const qkv_batch *q = qkv_source_next(b);
        CHECK(memcmp(want, q->tgt_in, sizeof want) == 0, "batch %d differs", k);
    }
    st.epoch = 1; /* a corpus's position */
    CHECK(qkv_source_set_state(b, &st, err, sizeof err) == -1 &&
              strstr(err, "no position of a text source"),
          "%s", err);
    qkv_source_free(a);
    qkv_source_free(b);
    qkv_text_ids_free(&x);
}

static void write_file(const char *path, const char *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(bytes, 1, n, f) == n, "cannot write %s", path);
    if (f) fclose(f);
}

/* Bad files: one line naming the file and what is wrong; t left empty. */
static void test_bad_files_refused(void) {
    static const struct {
        const char *name, *bytes;
        size_t n;
        const char *want;
    } bad[] = {
        {"empty.txt", "", 0, "empty.txt: empty (no text to learn from)"},
        {"bom.txt", "\xEF\xBB\xBF", 3, "bom.txt: empty"},
        {"latin1.txt", "ok\ncaf\xE9\n", 8,
         "latin1.txt: not valid UTF-8 at byte 7 (line 2)"},
        {"bin.txt", "ab\0cd", 5, "bin.txt: a NUL byte at byte 3 (line 1)"},
        {"surrogate.txt", "a\xED\xA0\x80", 4, "not valid UTF-8 at byte 2"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *path = test_path(bad[i].name);
        write_file(path, bad[i].bytes, bad[i].n);
        qkv_text t;
        CHECK(qkv_text_load(path, &t, err, sizeof err) == -1 && !t.s,
              "%s loaded", bad[i].name);
        CHECK(strstr(err, bad[i].want) && !strchr(err, '\n'), "%s: %s",
              bad[i].name, err);
    }
    qkv_text t;
    CHECK(qkv_text_load(test_dir, &t, err, sizeof err) == -1, "a directory");
    CHECK(qkv_text_load("/nonexistent/x.txt", &t, err, sizeof err) == -1,
          "a missing file");
    /* a byte-order mark is dropped, \r\n kept */
    write_file(test_path("ok.txt"), "\xEF\xBB\xBFh\xC3\xA9\r\n", 8);
    CHECK(qkv_text_load(test_path("ok.txt"), &t, err, sizeof err) == 0 &&
              t.n == 5 && memcmp(t.s, "h\xC3\xA9\r\n", 5) == 0,
          "BOM: %s", err);
    qkv_text_free(&t);
}

/* The held-out split cuts at the start of a line at or after 90%, or, in a
 * text of one line, at a character boundary. */
static void test_split(void) {
    char lines[1001];
    for (int i = 0; i < 1000; i++) lines[i] = i % 10 == 9 ? '\n' : 'a' + i % 7;
    lines[1000] = 0;
    qkv_text t = {lines, 1000};
    CHECK(qkv_text_split(&t, 0.9) == 900, "cut %zu, want 900",
          qkv_text_split(&t, 0.9));
    CHECK(qkv_text_split(&t, 0.905) == 910, "cut %zu, want 910",
          qkv_text_split(&t, 0.905));
    char one[301]; /* "é" 150 times: two bytes each, no newline */
    for (int i = 0; i < 150; i++) one[2 * i] = '\xC3', one[2 * i + 1] = '\xA9';
    one[300] = 0;
    t = (qkv_text){one, 300};
    size_t cut = qkv_text_split(&t, 0.9);
    CHECK(cut == 270, "cut %zu", cut);
    CHECK(qkv_text_split(&t, 0.9034) == 272, "inside a character: %zu",
          qkv_text_split(&t, 0.9034));
}

/* Characters: the vocabulary by count, the ids, and the text back. */
static void test_vocab_and_encode(void) {
    const char *s = "h\xC3\xA9llo\nhello";
    qkv_vocab v;
    qkv_text_vocab(&v, s, strlen(s), QKV_TOK_CHAR);
    /* l 4, h 2, o 2, \n 1, e 1, é 1: by count, then byte order */
    const char *want[] = {"l", "h", "o", "\n", "e", "\xC3\xA9"};
    CHECK(v.size == 4 + 6, "vocabulary %d", v.size);
    for (int i = 0; i < 6 && i + 4 < v.size; i++)
        CHECK(strcmp(v.tokens[4 + i], want[i]) == 0, "token %d is %s", 4 + i,
              v.tokens[4 + i]);
    qkv_text_ids x;
    qkv_text_encode(&x, &v, QKV_TOK_CHAR, s, strlen(s));
    CHECK(x.n == 11 && x.n_unk == 0, "%lld tokens", (long long)x.n);
    char back[64];
    qkv_detokenize(&v, QKV_TOK_CHAR, x.ids, (int)x.n, back, sizeof back);
    CHECK(strcmp(back, s) == 0, "round trip: %s", back);
    qkv_text_ids_free(&x);
    qkv_text_encode(&x, &v, QKV_TOK_CHAR, "hz", 2);
    CHECK(x.n == 2 && x.n_unk == 1 && x.ids[1] == QKV_UNK, "unknown z");
    qkv_text_ids_free(&x);
    qkv_vocab_free(&v);
}

/* exp of the cross-entropy of y under x's character frequencies (add-one):
 * the perplexity a model without context reaches. */
static double unigram_ppl(const qkv_text_ids *x, const qkv_text_ids *y, int V) {
    double *count = calloc((size_t)V, sizeof *count), h = 0;
    for (int64_t i = 0; i < x->n; i++) count[x->ids[i]]++;
    for (int64_t i = 0; i < y->n; i++)
        h -= log((count[y->ids[i]] + 1) / ((double)x->n + V));
    free(count);
    return exp(h / (double)y->n);
}

/* A tiny model on the shipped text, 300 steps: its validation perplexity
 * falls well below the unigram perplexity. */
static void test_learns_beyond_unigram(void) {
    char err[512];
    qkv_text t;
    if (qkv_text_load(shipped, &t, err, sizeof err))
        SKIP("no %s (run from the repository root)", shipped);
    size_t cut = qkv_text_split(&t, 0.9);
    qkv_vocab v;
    qkv_text_vocab(&v, t.s, cut, QKV_TOK_CHAR);
    qkv_text_ids tr, va;
    qkv_text_encode(&tr, &v, QKV_TOK_CHAR, t.s, cut);
    qkv_text_encode(&va, &v, QKV_TOK_CHAR, t.s + cut, t.n - cut);
    qkv_model_config c = test_tiny_config(QKV_MODEL_DECODER, v.size);
    qkv_model m;
    test_tiny_model(&m, &c, 1);
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, 3e-3f);
    qkv_trainer tn;
    qkv_trainer_init(&tn, &m, &tc);
    qkv_source *s = qkv_text_source(&tr, 16, 32, 1, 0, 0, err, sizeof err);
    qkv_source *vs = qkv_text_source(&va, 32, 32, 0, 1, 64, err, sizeof err);
    for (int k = 0; k < 300; k++) qkv_trainer_step(&tn, qkv_source_next(s));
    qkv_eval_opts eo = {.eos = QKV_EOS, .beam = 1, .unk = QKV_UNK};
    qkv_scores sc;
    memset(&sc, 0, sizeof sc);
    const qkv_batch *b;
    for (qkv_source_rewind(vs); (b = qkv_source_next(vs));)
        qkv_eval_batch(&tn.model, &tn.graph, b, &eo, 0, &sc, NULL);
    double ppl = exp(qkv_scores_loss(&sc)), uni = unigram_ppl(&tr, &va, v.size);
    printf("  %zu-byte text, vocabulary %d: validation perplexity %.2f after "
           "300 steps, unigram %.2f, token accuracy %.1f%%\n",
           t.n, v.size, ppl, uni, 100 * qkv_scores_accuracy(&sc));
    CHECK(sc.tokens == 64 * 32, "scored %ld tokens", sc.tokens);
    CHECK(uni > 15 && uni < 30, "unigram perplexity %.2f", uni);
    CHECK(ppl < 0.5 * uni, "perplexity %.2f, unigram %.2f", ppl, uni);
    qkv_source_free(s);
    qkv_source_free(vs);
    qkv_trainer_free(&tn);
    qkv_text_ids_free(&tr);
    qkv_text_ids_free(&va);
    qkv_vocab_free(&v);
    qkv_text_free(&t);
}

static int run(const char *args, char *out, size_t cap) {
    return test_qkv(qkv, args, out, cap);
}

/* The flags of a tiny text run in test_dir/NAME. */
static const char *tiny(const char *name, const char *more) {
    static char buf[1500];
    snprintf(buf, sizeof buf,
             "train --model decoder --text %s --tok char --block 32 --N 1 "
             "--d-model 32 --d-ff 64 --batch 16 --lr 3e-3 --schedule const "
             "--eval-size 16 "
             "--out %s %s",
             shipped, test_path(name), more);
    return buf;
}

/* qkv train --text, then qkv generate: N characters, the same for a seed,
 * others for another seed; --resume continues bit for bit (a constant
 * learning rate: a schedule's length is --steps). */
static void test_cli_train_and_generate(void) {
    static char out[16384], a[4096], b[4096];
    if (access(shipped, R_OK)) SKIP("no %s (run from the root)", shipped);
    int rc = run(tiny("lm", "--steps 60 --eval-every 30"), out, sizeof out);
    CHECK(rc == 0, "train: %d %s", rc, out);
    CHECK(strstr(out, "held-out last 10%") && strstr(out, "ppl ") &&
              strstr(out, "sample (temperature 0.8):\n  | ") &&
              strstr(out, "perplexity"),
          "train output: %s", out);
    char gen[1000];
    snprintf(gen, sizeof gen,
             "generate --ckpt %s --max-tokens 300 --top-k 10 --temp 0.8 "
             "2>/dev/null",
             test_path("lm/ckpt.safetensors"));
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "%s --seed 1", gen);
    CHECK(run(cmd, a, sizeof a) == 0, "generate: %s", a);
    CHECK(strlen(a) == 301 && a[300] == '\n', "%zu bytes: %s", strlen(a), a);
    CHECK(run(cmd, b, sizeof b) == 0 && strcmp(a, b) == 0, "seed 1 twice");
    snprintf(cmd, sizeof cmd, "%s --seed 2", gen);
    CHECK(run(cmd, b, sizeof b) == 0 && strcmp(a, b) != 0, "seeds 1, 2 agree");
    /* nucleus sampling: repeats for a seed, and differs from no nucleus */
    snprintf(cmd, sizeof cmd, "%s --seed 1 --top-p 0.5", gen);
    CHECK(run(cmd, b, sizeof b) == 0 && strlen(b) == 301 && strcmp(a, b) != 0,
          "--top-p 0.5: %s", b);
    static char c2[4096];
    CHECK(run(cmd, c2, sizeof c2) == 0 && strcmp(b, c2) == 0, "--top-p twice");
    /* a prompt is printed, then continued; 300 tokens past max_len 32 */
    snprintf(cmd, sizeof cmd, "%s --prompt 'This License'", gen);
    CHECK(run(cmd, b, sizeof b) == 0 && strncmp(b, "This License", 12) == 0 &&
              strlen(b) == 12 + 301,
          "prompt: %s", b);
    /* --resume: 30 + 30 steps are the 60 steps */
    CHECK(run(tiny("half", "--steps 30 --eval-every 30 --quiet"), out,
              sizeof out) == 0,
          "half: %s", out);
    snprintf(cmd, sizeof cmd, "train --resume %s --steps 60 --quiet",
             test_path("half"));
    CHECK(run(cmd, out, sizeof out) == 0, "resume: %s", out);
    qkv_model m1, m2;
    CHECK(qkv_ckpt_load(test_path("lm/ckpt.safetensors"), &m1, NULL, NULL, NULL,
                        0, NULL, a, sizeof a) == 0,
          "%s", a);
    CHECK(qkv_ckpt_load(test_path("half/ckpt.safetensors"), &m2, NULL, NULL,
                        NULL, 0, NULL, a, sizeof a) == 0,
          "%s", a);
    CHECK(m1.params.n == m2.params.n &&
              memcmp(m1.params.values, m2.params.values,
                     m1.params.n * sizeof(float)) == 0,
          "resumed weights differ");
    qkv_model_free(&m1);
    qkv_model_free(&m2);
    /* qkv eval --text scores a text as training's validation does: on a
     * --valid-text of exactly 16 windows (--eval-size 16), the run's last
     * val_loss (to the batching's rounding) */
    snprintf(cmd, sizeof cmd, "head -c 513 %s > %s", shipped,
             test_path("v16.txt"));
    CHECK(test_shell(cmd, out, sizeof out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd,
             "--steps 20 --eval-every 20 --quiet --valid-text %s",
             test_path("v16.txt"));
    CHECK(run(tiny("ev", cmd), out, sizeof out) == 0, "train: %s", out);
    snprintf(cmd, sizeof cmd, "tail -n 1 %s | cut -d, -f6",
             test_path("ev/log.csv"));
    CHECK(test_shell(cmd, out, sizeof out) == 0, "%s", out);
    double logged = atof(out);
    snprintf(cmd, sizeof cmd, "eval --ckpt %s --text %s",
             test_path("ev/ckpt.safetensors"), test_path("v16.txt"));
    CHECK(run(cmd, a, sizeof a) == 0 && strstr(a, "16 windows of 32 tokens") &&
              strstr(a, "perplexity"),
          "eval --text: %s", a);
    const char *l = strstr(a, "loss ");
    CHECK(l && fabs(atof(l + 5) - logged) < 1e-5 * logged,
          "eval --text: %s; the run's val_loss %.6f", a, logged);
    snprintf(cmd, sizeof cmd, "eval --ckpt %s",
             test_path("lm/ckpt.safetensors"));
    CHECK(run(cmd, a, sizeof a) == 2 && strstr(a, "--text is required"),
          "eval without --text: %s", a);
    snprintf(cmd, sizeof cmd, "decode --ckpt %s abc",
             test_path("lm/ckpt.safetensors"));
    CHECK(run(cmd, a, sizeof a) == 2 && strstr(a, "qkv generate"),
          "decode of a text model: %s", a);
    /* config.json records the text flags */
    snprintf(cmd, sizeof cmd, "grep -c '\"text\":\\|\"block\":\\s*32' %s",
             test_path("lm/config.json"));
    CHECK(test_shell(cmd, out, sizeof out) == 0 && atoi(out) == 2,
          "config.json: %s", out);
}

/* Bad uses of --text and of generate: one line, exit 2. */
static void test_cli_refusals(void) {
    if (access(shipped, R_OK)) SKIP("no %s (run from the root)", shipped);
    write_file(test_path("empty.txt"), "", 0);
    write_file(test_path("short.txt"), "0123456789\n", 11);
    static char args[6][1200];
    snprintf(args[0], sizeof args[0],
             "train --model decoder --text %s --out %s", test_path("empty.txt"),
             test_path("r0"));
    snprintf(args[1], sizeof args[1],
             "train --model decoder --text %s --block 32 --out %s",
             test_path("short.txt"), test_path("r1"));
    snprintf(args[2], sizeof args[2], "train --text %s --out %s", shipped,
             test_path("r2"));
    snprintf(args[3], sizeof args[3],
             "train --model decoder --text %s --valid-text %s --out %s",
             shipped, test_path("short.txt"), test_path("r3"));
    snprintf(args[4], sizeof args[4], "train --valid-text %s --out %s", shipped,
             test_path("r4"));
    static const char *const want[] = {
        "--text: ", "fewer than a window of --block 32", "--model decoder",
        "--valid-text: ", "--valid-text needs --text"};
    char out[4096];
    for (int i = 0; i < 5; i++) {
        int rc = run(args[i], out, sizeof out);
        CHECK(rc == 2 && strstr(out, want[i]) && test_one_line(out),
              "case %d: exit %d: %s", i, rc, out);
    }
    CHECK(strstr(args[0], "empty.txt"), "setup");
    /* generate refuses a task model and a missing checkpoint */
    snprintf(args[5], sizeof args[5],
             "train --task copy --model decoder --steps 2 --quiet --out %s",
             test_path("task"));
    CHECK(run(args[5], out, sizeof out) == 0, "task: %s", out);
    snprintf(args[5], sizeof args[5], "generate --ckpt %s",
             test_path("task/ckpt.safetensors"));
    int rc = run(args[5], out, sizeof out);
    CHECK(rc == 2 && strstr(out, "a generated task, not on a text") &&
              test_one_line(out),
          "generate a task model: %d %s", rc, out);
    rc = run("generate --ckpt /nonexistent.safetensors", out, sizeof out);
    CHECK(rc == 2 && test_one_line(out), "missing: %d %s", rc, out);
}

int main(void) {
    test_prog = "test_text";
    test_qkv_path(qkv, sizeof qkv);
    test_dir_make("text");
    RUN(test_train_windows_exact);
    RUN(test_valid_windows);
    RUN(test_resume_state);
    RUN(test_bad_files_refused);
    RUN(test_split);
    RUN(test_vocab_and_encode);
    RUN(test_learns_beyond_unigram);
    RUN(test_cli_train_and_generate);
    RUN(test_cli_refusals);
    CHECK(test_dir_remove() == 0, "cannot remove %s", test_dir);
    return test_summary();
}
