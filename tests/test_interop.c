/* Interop: weights-only files and PyTorch.
 *
 * Always: `qkv export` of a checkpoint gives the same eval and decode output
 * as the checkpoint, and so does the same weights with no metadata plus the
 * config JSON (--config), the way a PyTorch program writes them; a bad
 * config, a missing, extra or misshapen tensor, and overwriting the input
 * are refused with one line; decode names the input tokens that became
 * <unk>, once per input, and prints what it printed before.
 *
 * With Debian's python3-torch: examples/torch_roundtrip.py on an
 * encoder-decoder and a decoder-only model, post- and pre-norm: the logits
 * of torch.nn.Transformer holding qkv's weights match qkv's within 1e-4,
 * and weights saved from torch load into qkv eval and decode, which print
 * what torch's own greedy decoding gives. */
#include <limits.h>
#include <stdarg.h>
#include <unistd.h>

#include "checkpoint.h"
#include "test.h"

/* QUICK (test.h: sanitizers, valgrind): the round trips train less (the
 * logits are compared all the same; greedy decoding may then repeat one
 * token). */

static char qkv[1100], build[1024];
static char out[1 << 16], out2[1 << 16];

static void find_build(void) {
    char self[PATH_MAX] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0) return;
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
    }
    snprintf(build, sizeof build, "%.1000s", self);
    snprintf(qkv, sizeof qkv, "%s/examples/qkv", build);
}

/* qkv ARGS (printf-style) into buf; returns the exit status. */
static int run(char *buf, size_t cap, const char *fmt, ...) QKV_PRINTF(3, 4);
static int run(char *buf, size_t cap, const char *fmt, ...) {
    char args[2400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    return test_qkv(qkv, args, buf, cap);
}

/* dst = the tensors of src with no metadata at all (safetensors' save_file
 * with metadata=None). */
static void strip_metadata(const char *src, const char *dst) {
    qkv_st_file f;
    qkv_st_error se;
    QKV_CHECK(qkv_st_read(src, &f, &se) == 0, "%s", se.msg);
    qkv_st_entry *e = qkv_malloc((size_t)f.count * sizeof *e, "entries");
    for (int i = 0; i < f.count; i++) {
        e[i] = (qkv_st_entry){
            f.tensors[i].name, f.tensors[i].data, f.tensors[i].ndim, {0}};
        memcpy(e[i].shape, f.tensors[i].shape, sizeof e[i].shape);
    }
    QKV_CHECK(qkv_st_write(dst, e, f.count, NULL, NULL, 0, &se) == 0, "%s",
              se.msg);
    free(e);
    qkv_st_free(&f);
}

/* Trains a small model into test_dir/name (steps steps, extra flags). */
static int train(const char *name, int steps, const char *flags) {
    int rc = run(out, sizeof out,
                 "train --steps %d --d-model 32 --quiet --out %s %s", steps,
                 test_path(name), flags);
    CHECK(rc == 0, "train %s: exit %d: %s", name, rc, out);
    return rc;
}

/* A checkpoint, its export, and its weights without metadata plus the
 * export's JSON give the same eval and decode output, byte for byte. */
static void check_same_outputs(const char *name, const char *eval_args,
                               const char *inputs) {
    char ck[400], ex[400], js[400], bare[400];
    snprintf(ck, sizeof ck, "%s/ckpt.safetensors", test_path(name));
    snprintf(ex, sizeof ex, "%s.export.safetensors", test_path(name));
    snprintf(js, sizeof js, "%s.json", test_path(name));
    snprintf(bare, sizeof bare, "%s.bare.safetensors", test_path(name));
    int rc =
        run(out, sizeof out, "export --ckpt %s -o %s --json %s", ck, ex, js);
    CHECK(rc == 0 && strstr(out, "parameters"), "export: exit %d: %s", rc, out);
    if (rc) return;
    strip_metadata(ex, bare);
    const char *models[2] = {ex, bare}, *configs[2] = {"", js};
    for (int k = 0; k < 2; k++) {
        run(out, sizeof out, "eval --ckpt %s %s", ck, eval_args);
        rc = run(out2, sizeof out2, "eval --ckpt %s %s%s %s", models[k],
                 *configs[k] ? "--config " : "", configs[k], eval_args);
        CHECK(rc == 0 && strstr(out, "loss") && !strcmp(out, out2),
              "%s: eval of %s differs:\n%s---\n%s", name, models[k], out, out2);
        run(out, sizeof out, "decode --ckpt %s %s", ck, inputs);
        rc = run(out2, sizeof out2, "decode --ckpt %s %s%s %s", models[k],
                 *configs[k] ? "--config " : "", configs[k], inputs);
        CHECK(rc == 0 && *out && !strcmp(out, out2),
              "%s: decode of %s differs:\n%s---\n%s", name, models[k], out,
              out2);
    }
}

static void test_export_same_outputs(void) {
    if (train("copy", 20, "--task copy") == 0)
        check_same_outputs("copy", "--size 40", "'3 4 5 6 7 8 9 10 3 4'");
    if (train("lm", 20,
              "--model decoder --norm pre --pos learned --task reverse "
              "--min-len 3 --max-len 8") == 0)
        check_same_outputs("lm", "--size 40", "'3 4 5' '9 8 7 6'");
    if (train("grammar", 20, "--data data/corpora/grammar/train.tsv") == 0)
        check_same_outputs("grammar", "--data data/corpora/grammar/test.tsv",
                           "'we see a dog .' 'the cat has a book .'");
}

/* Every refusal: exit 2, one line "qkv: ...", naming what was wrong. */
static void expect_refusal(const char *args, const char *want) {
    int rc = run(out, sizeof out, "%s", args);
    CHECK(rc == 2 && strstr(out, want) && test_one_line(out) &&
              !strncmp(out, "qkv: ", 5),
          "qkv %s: exit %d, want 2 and '%s': %s", args, rc, want, out);
}

static void test_refusals(void) {
    char ck[400], ex[400], js[400], bare[400], bad[400], cmd[2000];
    snprintf(ck, sizeof ck, "%s/ckpt.safetensors", test_path("copy"));
    snprintf(ex, sizeof ex, "%s", test_path("copy.export.safetensors"));
    snprintf(js, sizeof js, "%s", test_path("copy.json"));
    snprintf(bare, sizeof bare, "%s", test_path("copy.bare.safetensors"));
    snprintf(bad, sizeof bad, "%s", test_path("bad.json"));
    if (access(ex, F_OK)) SKIP("no export from test_export_same_outputs");
    /* a weights file without qkv's metadata needs --config */
    snprintf(cmd, sizeof cmd, "eval --ckpt %s --size 5", bare);
    expect_refusal(cmd, "--config");
    /* configs that do not parse or do not fit */
    FILE *f = fopen(bad, "w");
    fputs("{\"model\": {\"kind\": \"encdec\"", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "eval --ckpt %s --config %s --size 5", bare, bad);
    expect_refusal(cmd, "bad.json: not a JSON object");
    f = fopen(bad, "w");
    fputs("{\"model\": {\"kind\": \"encdec\"}}", f);
    fclose(f);
    expect_refusal(cmd, "bad.json: \"model\":");
    snprintf(cmd, sizeof cmd, "decode --ckpt %s --config %s/nope.json 3", bare,
             test_dir);
    expect_refusal(cmd, "nope.json");
    { /* the model alone: eval and decode need the data too */
        qkv_st_file x;
        qkv_st_error xe;
        QKV_CHECK(qkv_st_read(ex, &x, &xe) == 0, "%s", xe.msg);
        f = fopen(bad, "w");
        fprintf(f, "{\"model\": %s}", qkv_st_meta(&x, "model"));
        fclose(f);
        qkv_st_free(&x);
        snprintf(cmd, sizeof cmd, "decode --ckpt %s --config %s 3", bare, bad);
        expect_refusal(cmd, "bad.json: \"data\" is missing");
    }
    /* tensors: missing, extra, another shape */
    qkv_st_file w;
    qkv_st_error se;
    QKV_CHECK(qkv_st_read(bare, &w, &se) == 0, "%s", se.msg);
    qkv_st_entry e[128];
    int n = w.count < 127 ? w.count : 127;
    for (int i = 0; i < n; i++) {
        e[i] = (qkv_st_entry){
            w.tensors[i].name, w.tensors[i].data, w.tensors[i].ndim, {0}};
        memcpy(e[i].shape, w.tensors[i].shape, sizeof e[i].shape);
    }
    const char *t = test_path("t.safetensors");
    char missing[200], shaped[200];
    snprintf(missing, sizeof missing, "%s", e[n - 1].name);
    snprintf(shaped, sizeof shaped, "%s", e[0].name);
    for (int c = 0; c < 3; c++) {
        qkv_st_entry g[128];
        memcpy(g, e, sizeof g);
        int m = n;
        if (c == 0) m--;
        if (c == 1) g[m++] = (qkv_st_entry){"decoder.extra", e[0].data, 1, {3}};
        if (c == 2) g[0].shape[0]--;
        QKV_CHECK(qkv_st_write(t, g, m, NULL, NULL, 0, &se) == 0, "%s", se.msg);
        snprintf(cmd, sizeof cmd, "decode --ckpt %s --config %s 3", t, js);
        expect_refusal(cmd, c == 0   ? missing
                            : c == 1 ? "decoder.extra"
                                     : shaped);
    }
    qkv_st_free(&w);
    /* export never overwrites its input, nor writes without -o */
    size_t before = 0, after = 0;
    struct stat st;
    if (stat(ck, &st) == 0) before = (size_t)st.st_size;
    snprintf(cmd, sizeof cmd, "export --ckpt %s -o %s", ck, ck);
    expect_refusal(cmd, "would overwrite the input");
    snprintf(cmd, sizeof cmd, "export --ckpt %s --json %s -o %s/x.st", ck, ck,
             test_dir);
    expect_refusal(cmd, "would overwrite");
    if (stat(ck, &st) == 0) after = (size_t)st.st_size;
    CHECK(before && before == after, "the checkpoint changed");
    snprintf(cmd, sizeof cmd, "export --ckpt %s", ck);
    expect_refusal(cmd, "-o is required");
}

/* decode: one warning per input with unknown tokens, on stderr; stdout as
 * if the words were written <unk>. */
static void test_decode_warns_unknown(void) {
    char ck[400], cmd[4000], err[400];
    snprintf(ck, sizeof ck, "%s/ckpt.safetensors", test_path("grammar"));
    snprintf(err, sizeof err, "%s", test_path("stderr.txt"));
    if (access(ck, F_OK))
        SKIP("no grammar model from test_export_same_outputs");
    snprintf(cmd, sizeof cmd,
             "('%s' decode --ckpt %s 'we see a dog .' 'the Dog zebra sees us' "
             "'a b c d e' 2>%s)",
             qkv, ck, err);
    int rc = test_shell(cmd, out, sizeof out);
    snprintf(cmd, sizeof cmd,
             "('%s' decode --ckpt %s 'we see a dog .' 'the <unk> <unk> sees "
             "us' 'a <unk> <unk> <unk> <unk>' 2>/dev/null)",
             qkv, ck);
    test_shell(cmd, out2, sizeof out2);
    CHECK(rc == 0 && !strcmp(out, out2), "stdout differs:\n%s---\n%s", out,
          out2);
    FILE *f = fopen(err, "r");
    char text[2000] = "";
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = 0;
    /* 'a' is a word of the grammar corpus, 'b' .. 'e' are not */
    CHECK(!strcmp(text, "qkv: decode: input 2: 2 tokens not in the vocabulary "
                        "became <unk>: 'Dog', 'zebra'\n"
                        "qkv: decode: input 3: 4 tokens not in the vocabulary "
                        "became <unk>: 'b', 'c', 'd', ...\n"),
          "stderr: %s", text);
}

/* ---------------------------------------------------------------- torch */

static int have_torch(void) {
    return test_shell("/usr/bin/python3 -c 'import torch'", out, sizeof out) ==
           0;
}

/* examples/torch_roundtrip.py on a model trained a little (so that greedy
 * decoding is more than one token repeated). */
static void roundtrip(const char *name, const char *flags, const char *data) {
    if (!have_torch()) SKIP("python3-torch not installed");
    if (train(name, QUICK ? 10 : 150, flags)) return;
    char cmd[4000];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 examples/torch_roundtrip.py "
             "%s/ckpt.safetensors --qkv %s --logits %s/examples/logits "
             "--work %s --tol 1e-4 --name %s%s%s",
             test_path(name), qkv, build, test_dir, name,
             data ? " --data " : "", data ? data : "");
    int rc = test_shell(cmd, out, sizeof out);
    /* its lines, indented so that only this program's verdict counts */
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
        if (!strstr(line, "UserWarning") && !strstr(line, "nested_tensor"))
            printf("  %s\n", line);
    CHECK(rc == 0, "torch_roundtrip.py %s: exit %d", name, rc);
}

static void test_torch_encdec_post(void) {
    roundtrip("t_encdec_post", "--task copy --norm post", NULL);
}

static void test_torch_encdec_pre(void) {
    roundtrip("t_encdec_pre",
              "--task reverse --min-len 3 --max-len 8 --norm pre --pos "
              "learned --act gelu --tie-output",
              NULL);
}

static void test_torch_decoder_post(void) {
    roundtrip("t_decoder_post", "--task copy --model decoder --norm post",
              NULL);
}

static void test_torch_decoder_pre(void) {
    roundtrip("t_decoder_pre",
              "--task sort --min-len 3 --max-len 8 --model decoder --norm pre "
              "--pos learned",
              NULL);
}

static void test_torch_corpus(void) {
    roundtrip("t_corpus",
              "--data data/corpora/grammar/train.tsv --norm pre --act gelu",
              "data/corpora/grammar/test.tsv");
}

static void test_cleanup(void) {
    CHECK(test_rmtree(test_dir) == 0, "cannot remove %s", test_dir);
}

int main(void) {
    test_prog = "interop";
    find_build();
    test_dir_make("interop");
    RUN(test_export_same_outputs);
    RUN(test_refusals);
    RUN(test_decode_warns_unknown);
    RUN(test_torch_encdec_post);
    RUN(test_torch_encdec_pre);
    RUN(test_torch_decoder_post);
    RUN(test_torch_decoder_pre);
    RUN(test_torch_corpus);
    RUN(test_cleanup);
    return test_summary();
}
