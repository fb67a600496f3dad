/* qkv plot: loss curves drawn by gnuplot from real training logs, driven as
 * a user would from the shell. Two short runs of generated tasks give real
 * log.csv files; a hand-written log stands in for a corpus run (val_bleu
 * filled in), whose evaluation would take too long here. Every picture must
 * be a real file gnuplot made, with its script beside it. */
#include <sys/stat.h>

#include "test.h"

static char qkv[600], dir[64];

static int run(const char *args, char *out, size_t cap) {
    return test_qkv(qkv, args, out, cap);
}

/* The first cap - 1 bytes of path into buf (NUL-terminated); the file's
 * size, or -1 if it cannot be read. */
static long slurp(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    return size;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* path is a PNG of more than min_bytes. */
static void check_png(const char *path, long min_bytes) {
    char buf[16];
    long size = slurp(path, buf, sizeof buf);
    CHECK(size > min_bytes, "%s: %ld bytes, want > %ld", path, size, min_bytes);
    CHECK(size >= 8 && memcmp(buf, "\x89PNG\r\n\x1a\n", 8) == 0,
          "%s is not a PNG", path);
}

/* Count of lines of text that are data rows (start with a digit). */
static int data_rows(const char *text) {
    int n = 0;
    for (const char *s = text; *s; s++)
        if ((s == text || s[-1] == '\n') && *s >= '0' && *s <= '9') n++;
    return n;
}

static void test_help_lists_every_flag(void) {
    char out[8192];
    CHECK(run("plot --help", out, sizeof out) == 0, "plot --help failed");
    const char *want[] = {"--out",    "--term",    "--x ",     "--logy",
                          "--smooth", "--title",   "loss.png", "-o",
                          "--watch",  "--interval"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(strstr(out, want[i]), "plot --help lacks %s: %s", want[i], out);
    int lines = 0, defaults = 0;
    for (char *s = out; (s = strstr(s, "\n  --")); s++) lines++;
    for (char *s = out; (s = strstr(s, "(default ")); s++) defaults++;
    CHECK(lines == 8 && defaults == 8, "%d flags, %d defaults", lines,
          defaults);
}

static void test_one_run_png_with_script_and_data(void) {
    char args[512], out[4096], path[600], text[65536], log[600];
    snprintf(args, sizeof args, "plot %s/copy", dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv %s: %s", args, out);
    CHECK(strstr(out, "wrote ") && strstr(out, "copy/loss.png"),
          "no 'wrote' line: %s", out);
    snprintf(path, sizeof path, "%s/copy/loss.png", dir);
    check_png(path, 10000);
    /* the script reads the log and the smoothed series from files */
    snprintf(path, sizeof path, "%s/copy/loss.png.gp", dir);
    CHECK(slurp(path, text, sizeof text) > 0, "no %s", path);
    snprintf(log, sizeof log, "log1 = '%s/copy/log.csv'", dir);
    CHECK(strstr(text, log), "script does not read the log (%s): %s", log,
          text);
    snprintf(log, sizeof log, "set output '%s/copy/loss.png'", dir);
    CHECK(strstr(text, log), "script lacks %s", log);
    snprintf(log, sizeof log, "'%s/copy/loss.png.dat'", dir);
    CHECK(strstr(text, log), "script does not read %s", log);
    CHECK(strstr(text, "pngcairo") && strstr(text, "set terminal png "),
          "script lacks pngcairo with png as fallback");
    CHECK(!strstr(text, "EOD"), "script holds the data inline");
    CHECK(strstr(text, "title 'copy'"), "run not labelled 'copy'");
    CHECK(strstr(text, "axes x1y2"), "no exact match on the second axis");
    CHECK(!strstr(text, "BLEU"), "BLEU drawn for a task without it");
    snprintf(path, sizeof path, "%s/copy/loss.png.dat", dir);
    CHECK(slurp(path, text, sizeof text) > 0, "no %s", path);
    CHECK(data_rows(text) == 60, "%s: %d rows, want 60", path, data_rows(text));
}

/* The script beside the picture draws it again, byte for byte, run by
 * hand from another directory. */
static void test_script_redraws_the_picture(void) {
    static char before[1 << 20], after[1 << 20];
    char args[512], out[4096], png[600];
    snprintf(args, sizeof args, "plot %s/reverse -o %s/again/r.png", dir, dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv %s: %s", args, out);
    snprintf(png, sizeof png, "%s/again/r.png", dir);
    long nb = slurp(png, before, sizeof before);
    check_png(png, 10000);
    CHECK(remove(png) == 0 && !exists(png), "cannot remove %s", png);
    snprintf(args, sizeof args, "cd / && gnuplot '%s/again/r.png.gp'", dir);
    CHECK(test_shell(args, out, sizeof out) == 0, "%s: %s", args, out);
    long na = slurp(png, after, sizeof after);
    CHECK(na == nb && nb > 0 && memcmp(before, after, (size_t)nb) == 0,
          "gnuplot r.png.gp drew a different picture (%ld vs %ld bytes)", na,
          nb);
}

static void test_several_runs_overlaid(void) {
    char args[512], out[4096], path[600], text[65536];
    snprintf(args, sizeof args,
             "plot %s/copy %s/reverse %s/corpus/log.csv --logy --title 'three "
             "runs'",
             dir, dir, dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv %s: %s", args, out);
    /* the runs' common parent directory */
    snprintf(path, sizeof path, "%s/loss.png", dir);
    check_png(path, 20000);
    snprintf(path, sizeof path, "%s/loss.png.gp", dir);
    CHECK(slurp(path, text, sizeof text) > 0, "no %s", path);
    const char *want[] = {
        "title 'copy'", "title 'reverse'", "title 'corpus'",         "log3 = ",
        "index 2 ",     "set logscale y",  "set title 'three runs'", "BLEU"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(strstr(text, want[i]), "script lacks %s", want[i]);
    /* one colour per run: the smoothed curves' colours differ */
    char colour[3][16] = {{0}};
    const char *s = text;
    for (int r = 0; r < 3 && (s = strstr(s, "index ")); r++, s++) {
        const char *c = strstr(s, "lc rgb '#");
        if (c) snprintf(colour[r], sizeof colour[r], "%.6s", c + 9);
    }
    CHECK(*colour[2] && strcmp(colour[0], colour[1]) &&
              strcmp(colour[1], colour[2]) && strcmp(colour[0], colour[2]),
          "runs share a colour: %s %s %s", colour[0], colour[1], colour[2]);
    snprintf(path, sizeof path, "%s/loss.png.dat", dir);
    CHECK(slurp(path, text, sizeof text) > 0, "no %s", path);
    CHECK(data_rows(text) == 60 + 60 + 100, "%s: %d rows", path,
          data_rows(text));
}

/* Twelve runs: the last two share colours with the first two, so their
 * curves are dashed; every (colour, dash) pair differs. */
static void test_twelve_runs_stay_apart(void) {
    char args[8192], out[4096], path[600], text[1 << 17];
    int n = snprintf(args, sizeof args, "plot");
    for (int r = 0; r < 12; r++) {
        char cmd[600];
        snprintf(cmd, sizeof cmd,
                 "mkdir -p %s/many/r%02d && cp %s/copy/log.csv %s/many/r%02d/",
                 dir, r, dir, dir, r);
        CHECK(test_shell(cmd, out, sizeof out) == 0, "%s", out);
        n += snprintf(args + n, sizeof args - (size_t)n, " %s/many/r%02d", dir,
                      r);
    }
    snprintf(args + n, sizeof args - (size_t)n, " -o %s/many/loss.svg", dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv plot of 12 runs: %s", out);
    snprintf(path, sizeof path, "%s/many/loss.svg.gp", dir);
    CHECK(slurp(path, text, sizeof text) > 0, "no %s", path);
    char style[12][48] = {{0}};
    const char *s = text;
    for (int r = 0; r < 12 && (s = strstr(s, "smooth index ")); r++, s++) {
        const char *w = strstr(s, "lw 2"), *c = strstr(s, "'#");
        if (w && c)
            snprintf(style[r], sizeof style[r], "%.*s", (int)(c - w + 8), w);
    }
    for (int a = 0; a < 12; a++)
        for (int b = a + 1; b < 12; b++)
            CHECK(*style[a] && strcmp(style[a], style[b]),
                  "runs %d and %d are drawn alike: %s", a + 1, b + 1, style[a]);
    CHECK(strstr(style[10], "dt 2") && !strstr(style[0], "dt"),
          "run 11 is not dashed (%s) or run 1 is (%s)", style[10], style[0]);
}

static void test_svg(void) {
    char args[512], out[4096], path[600], text[65536];
    snprintf(args, sizeof args, "plot %s/copy --term svg --x tokens", dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv %s: %s", args, out);
    snprintf(path, sizeof path, "%s/copy/loss.svg", dir);
    long size = slurp(path, text, sizeof text);
    CHECK(size > 5000, "%s: %ld bytes", path, size);
    CHECK(strncmp(text, "<?xml", 5) == 0 && strstr(text, "<svg"),
          "%s is not SVG: %.80s", path, text);
    snprintf(path, sizeof path, "%s/copy/loss.svg.gp", dir);
    CHECK(slurp(path, text, sizeof text) > 0 &&
              strstr(text, "set terminal svg") && strstr(text, "xcol = 2"),
          "%s is not the svg script over tokens", path);
    /* the png's script, named after the whole file, is still the png's */
    snprintf(path, sizeof path, "%s/copy/loss.png.gp", dir);
    CHECK(slurp(path, text, sizeof text) > 0 && strstr(text, "png") &&
              !strstr(text, "set terminal svg"),
          "%s was overwritten by the svg's script", path);
    /* the extension picks the format; missing directories are made */
    snprintf(args, sizeof args, "plot %s/reverse -o %s/new/dir/r.svg", dir,
             dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv %s: %s", args, out);
    snprintf(path, sizeof path, "%s/new/dir/r.svg", dir);
    CHECK(slurp(path, text, sizeof text) > 5000 && strstr(text, "<svg"),
          "no svg at %s", path);
}

static void test_dumb_draws_in_the_terminal(void) {
    char args[512], out[16384], path[600], text[65536];
    snprintf(args, sizeof args,
             "plot %s/copy %s/corpus --term dumb --x seconds 2>/dev/null", dir,
             dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv %s: %s", args, out);
    const char *want[] = {"seconds (wall clock)", "copy train",
                          "copy val loss",        "copy exact %",
                          "corpus BLEU",          "+-----",
                          "cross-entropy loss"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(strstr(out, want[i]), "terminal plot lacks '%s':\n%s", want[i],
              out);
    CHECK(!strstr(out, "wrote"), "dumb plot claims a picture");
    snprintf(path, sizeof path, "%s/loss-dumb.gp", dir);
    CHECK(slurp(path, text, sizeof text) > 0 &&
              strstr(text, "set terminal dumb"),
          "no terminal script at %s", path);
}

/* --watch redraws in the terminal while a run writes its log, draws the
 * finished log once more, and ends by itself when the run ends; a finished
 * run is drawn once. */
static void test_watch_follows_a_live_run(void) {
    char cmd[2048], out[1 << 17];
    snprintf(cmd, sizeof cmd,
             "cd %s && ('%s' train --steps 400 --eval-every 20 --out watched "
             "--quiet >/dev/null 2>&1 &) && "
             "while [ ! -s watched/log.csv ]; do sleep 0.05; done && "
             "timeout 120 '%s' plot --watch watched --interval 0.1 2>&1",
             dir, qkv, qkv);
    CHECK(test_shell(cmd, out, sizeof out) == 0, "plot --watch: %s", out);
    int frames = 0;
    double step = -1, last = -1;
    int rising = 1;
    for (const char *s = out; (s = strstr(s, "qkv plot --watch: step ")); s++) {
        step = atof(s + strlen("qkv plot --watch: step "));
        rising &= step > last;
        last = step;
        frames++;
    }
    CHECK(frames >= 2, "%d drawings of a 400-step run:\n%.2000s", frames, out);
    CHECK(rising, "the drawings' steps do not rise");
    CHECK(last == 400, "the last drawing is of step %g, not the run's end",
          last);
    CHECK(strstr(out, "no run is writing the log") &&
              strstr(out, "cross-entropy loss"),
          "no end line or no plot:\n%.2000s", out);
    snprintf(cmd, sizeof cmd, "cd %s && timeout 60 '%s' plot --watch watched",
             dir, qkv);
    CHECK(test_shell(cmd, out, sizeof out) == 0 && strstr(out, "(1 drawing)") &&
              strstr(out, "qkv plot --watch: step 400 of watched\n"),
          "a finished run is not drawn once: %.2000s", out);
}

/* A language model's run (config.json has "text") logs token accuracy as
 * val_acc: the plot names it so, per run and on the axis. */
static void test_text_run_shows_token_accuracy(void) {
    char cmd[1200], out[16384];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/lm && cp %s/copy/log.csv %s/lm/ && "
             "printf '{\"text\": \"a.txt\"}' > %s/lm/config.json",
             dir, dir, dir, dir);
    CHECK(test_shell(cmd, out, sizeof out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "plot %s/lm --term dumb", dir);
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "lm acc %") &&
              strstr(out, "token accuracy in %") && !strstr(out, "exact"),
          "a text run's plot: %s", out);
    snprintf(cmd, sizeof cmd, "plot %s/lm %s/copy --term dumb", dir, dir);
    CHECK(run(cmd, out, sizeof out) == 0 &&
              strstr(out, "exact match / token accuracy") &&
              strstr(out, "copy exact %"),
          "a text run beside a task run: %s", out);
}

/* The dat file holds a centred moving average of the train loss. */
static void test_smoothing_is_a_centred_moving_average(void) {
    char args[512], out[4096], path[600];
    snprintf(args, sizeof args, "plot %s/copy --smooth 5 -o %s/s5.png", dir,
             dir);
    CHECK(run(args, out, sizeof out) == 0, "qkv %s: %s", args, out);
    double loss[64], smooth[64];
    int n = 0, m = 0;
    snprintf(path, sizeof path, "%s/copy/log.csv", dir);
    FILE *f = fopen(path, "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (n < 64 && sscanf(line, "%*d,%*d,%*f,%*f,%lf", &loss[n]) == 1) n++;
    if (f) fclose(f);
    snprintf(path, sizeof path, "%s/s5.png.dat", dir);
    f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (m < 64 && sscanf(line, "%*d,%*d,%*f,%lf", &smooth[m]) == 1) m++;
    if (f) fclose(f);
    CHECK(n == 60 && m == 60, "%d log rows, %d smoothed rows", n, m);
    for (int i = 0; i < n && i < m; i++) {
        double sum = 0;
        int c = 0;
        for (int j = i - 2; j <= i + 2; j++)
            if (j >= 0 && j < n) sum += loss[j], c++;
        CHECK_NEAR(smooth[i], sum / c, 1e-5 * (1 + sum / c), "smoothed loss");
    }
}

static void test_missing_gnuplot_is_one_line(void) {
    char cmd[2000], out[4096], path[600];
    snprintf(path, sizeof path, "%s/no-gnuplot", dir);
    mkdir(path, 0777);
    snprintf(cmd, sizeof cmd, "env PATH='%s' '%s' plot %s/copy -o %s/ng/x.png",
             path, qkv, dir, dir);
    int rc = test_shell(cmd, out, sizeof out);
    CHECK(rc != 0 && rc != -1, "exit %d without gnuplot: %s", rc, out);
    CHECK(strstr(out, "apt-get install gnuplot-nox"), "message: %s", out);
    char *nl = strchr(out, '\n');
    CHECK(nl && nl[1] == 0 && strncmp(out, "qkv: plot: ", 11) == 0,
          "not one line: %s", out);
    snprintf(path, sizeof path, "%s/ng/x.png.gp", dir);
    CHECK(exists(path), "no script %s without gnuplot", path);
    CHECK(strstr(out, path), "message does not name %s: %s", path, out);
    snprintf(path, sizeof path, "%s/ng/x.png.dat", dir);
    CHECK(exists(path), "no data %s without gnuplot", path);
    snprintf(path, sizeof path, "%s/ng/x.png", dir);
    CHECK(!exists(path), "a picture without gnuplot?");
}

static void test_bad_input_is_one_line_and_exit_2(void) {
    char path[600];
    /* a header without rows, a row of garbage, a file with no header */
    const char *header =
        "step,tokens,seconds,lr,train_loss,val_loss,val_acc,val_bleu\n";
    const char *files[][2] = {{"empty-log.csv", ""},
                              {"bad-row.csv", "1,2,3,4,oops,,,\n"},
                              {"no-header.csv", NULL},
                              {"zero.csv", NULL}};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i][0]);
        FILE *f = fopen(path, "w");
        if (!f) continue;
        if (i < 2) fprintf(f, "%s%s", header, files[i][1]);
        if (i == 2) fprintf(f, "a,b,c\n1,2,3\n");
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/not-a-run", dir);
    mkdir(path, 0777);
    snprintf(path, sizeof path, "%s/fifo.csv", dir); /* open would block */
    mkfifo(path, 0600);
    snprintf(path, sizeof path, "%s/long-row.csv", dir);
    FILE *lf = fopen(path, "w");
    if (lf) {
        fputs(header, lf);
        for (int i = 0; i < 5000; i++) fputc('1', lf);
        fputs(",2,3,4,5,,,\n", lf);
        fclose(lf);
    }
    static const struct {
        const char *args, *want;
    } bad[] = {
        {"plot", "one or more run directories"},
        {"plot DIR/nowhere", "DIR/nowhere: cannot open"},
        {"plot DIR/not-a-run", "DIR/not-a-run/log.csv: cannot open"},
        {"plot DIR/fifo.csv", "DIR/fifo.csv: is a FIFO"},
        {"plot DIR/long-row.csv", "line 2: not a row of numbers (binary, or "
                                  "over 4096 bytes)"},
        {"plot DIR/copy/config.json", "DIR/copy/config.json is not a qkv "
                                      "training log"},
        {"plot DIR/no-header.csv", "DIR/no-header.csv is not a qkv"},
        {"plot DIR/zero.csv", "DIR/zero.csv is empty"},
        {"plot DIR/empty-log.csv", "DIR/empty-log.csv has no rows"},
        {"plot DIR/bad-row.csv", "DIR/bad-row.csv line 2"},
        {"plot DIR/copy DIR/nowhere", "DIR/nowhere: cannot open"},
        {"plot DIR/copy -o DIR/x.jpg", "must end in .png or .svg"},
        {"plot DIR/copy --term svg -o DIR/x.png", "does not end in .svg"},
        {"plot DIR/copy --term pdf", "--term must be one of png|svg|dumb"},
        {"plot DIR/copy --x epochs", "--x must be one of"},
        {"plot DIR/copy --smooth -2", "--smooth must be >= 0"},
        {"plot DIR/copy --bogus", "unknown flag --bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char args[1000], want[1000], out[4096];
        /* DIR stands for the test's directory */
        const char *srcs[2] = {bad[i].args, bad[i].want};
        char *dsts[2] = {args, want};
        for (int k = 0; k < 2; k++) {
            size_t n = 0;
            for (const char *s = srcs[k]; *s && n < 900;)
                if (strncmp(s, "DIR", 3) == 0) {
                    n += (size_t)snprintf(dsts[k] + n, 1000 - n, "%s", dir);
                    s += 3;
                } else {
                    dsts[k][n++] = *s++;
                }
            dsts[k][n] = 0;
        }
        int rc = run(args, out, sizeof out);
        CHECK(rc == 2, "qkv %s: exit %d, want 2: %s", args, rc, out);
        CHECK(strstr(out, want), "qkv %s: lacks '%s': %s", args, want, out);
        char *nl = strchr(out, '\n');
        CHECK(nl && nl[1] == 0 && strncmp(out, "qkv: plot: ", 11) == 0,
              "qkv %s: not one line: %s", args, out);
    }
}

/* Two real runs (a few seconds) and a corpus-like log with BLEU. */
static int make_runs(void) {
    char args[512], out[4096], path[600];
    const char *flags = "--steps 60 --eval-every 20 --eval-size 20 --batch 16 "
                        "--d-model 32 --d-ff 64 --quiet";
    snprintf(args, sizeof args, "train --task copy %s --out %s/copy", flags,
             dir);
    if (run(args, out, sizeof out) != 0) return printf("%s\n", out), -1;
    snprintf(args, sizeof args,
             "train --task reverse --lr 0.003 %s --out %s/reverse", flags, dir);
    if (run(args, out, sizeof out) != 0) return printf("%s\n", out), -1;
    snprintf(path, sizeof path, "%s/corpus", dir);
    mkdir(path, 0777);
    snprintf(path, sizeof path, "%s/corpus/log.csv", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "step,tokens,seconds,lr,train_loss,val_loss,val_acc,val_bleu\n");
    for (int i = 1; i <= 100; i++) {
        double loss = 4 * exp(-i / 40.0) + 0.5 + 0.2 * sin(i * 1.7);
        fprintf(f, "%d,%d,%.3f,0.001,%.6f,", i, 900 * i, 0.05 * i, loss);
        if (i % 25 == 0)
            fprintf(f, "%.6f,%.2f,%.2f\n", loss + 0.1, i / 1.2, 0.6 * i);
        else
            fprintf(f, ",,\n");
    }
    return fclose(f) == 0 ? 0 : -1;
}

/* A title, a run directory or an output name carrying a newline and a
 * gnuplot command must not run it: the title is drawn as text, the names are
 * refused with one line, and no file appears. */
static void test_no_command_reaches_gnuplot(void) {
    /* in the scratch directory, so the commands name files there */
    char cwd[600], ckpt[300], copy[300], cp[1000];
    CHECK(getcwd(cwd, sizeof cwd) && chdir(dir) == 0, "cannot enter %s", dir);
    const char *title = "a title\nsystem \"touch pwned0\"\n`touch pwned1`",
               *evil = "run\nsystem \"touch pwned2\"\n",
               *png = "x\nsystem \"touch pwned3\"\n.png";
    snprintf(copy, sizeof copy, "%s/copy", dir);
    snprintf(ckpt, sizeof ckpt, "%s/copy/ckpt.safetensors", dir);
    char *a1[] = {qkv,           "plot", copy,        "--title",
                  (char *)title, "-o",   "title.png", NULL};
    test_proc r;
    CHECK(test_exec(a1, NULL, 0, 60, &r) == 0, "plot --title: exit %d: %s",
          r.status, r.err);
    check_png("title.png", 10000);
    /* a run directory whose name is a command */
    CHECK(mkdir(evil, 0777) == 0, "cannot make the directory");
    snprintf(cp, sizeof cp,
             "cp copy/log.csv 'run\nsystem \"touch pwned2\"\n/'");
    CHECK(system(cp) == 0, "cannot copy the log");
    char *a2[] = {qkv, "plot", (char *)evil, NULL};
    test_exec(a2, NULL, 0, 60, &r);
    CHECK(r.status == 2 && test_one_line(r.err) && strstr(r.err, "control"),
          "plot of the directory: exit %d: %s", r.status, r.err);
    /* and as output names of every command that draws or writes a run */
    char *cases[][12] = {
        {qkv, "plot", copy, "-o", (char *)png, NULL},
        {qkv, "train", "--steps", "2", "--out", (char *)evil, NULL},
        {qkv, "train", "--steps", "2", "--plot", "--out", (char *)png, NULL},
        {qkv, "sweep", "--N", "1", "--h", "1", "--steps", "2", "--out",
         (char *)png, NULL},
        {qkv, "attn", "--ckpt", ckpt, "3 4 5 6 7 8 9 10 3 4", "-o", (char *)png,
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        test_exec(cases[i], NULL, 0, 60, &r);
        CHECK(r.status == 2 && test_one_line(r.err) &&
                  strstr(r.err, "control character"),
              "qkv %s with a name holding a command: exit %d: %s", cases[i][1],
              r.status, r.err);
    }
    for (int i = 0; i < 4; i++) {
        char f[32];
        snprintf(f, sizeof f, "pwned%d", i);
        CHECK(!exists(f), "%s/%s exists: gnuplot ran the command", dir, f);
    }
    CHECK(test_rmtree(evil) == 0, "cannot remove the directory");
    CHECK(chdir(cwd) == 0, "cannot return to %s", cwd);
}

int main(void) {
    test_prog = "plot";
    test_qkv_path(qkv, sizeof qkv);
    test_tmpdir(dir, sizeof dir, "plot");
    RUN(test_help_lists_every_flag);
    if (make_runs() != 0) {
        printf("FAIL plot/make_runs: qkv train failed\n");
        return 1;
    }
    RUN(test_one_run_png_with_script_and_data);
    RUN(test_script_redraws_the_picture);
    RUN(test_several_runs_overlaid);
    RUN(test_svg);
    RUN(test_twelve_runs_stay_apart);
    RUN(test_dumb_draws_in_the_terminal);
    RUN(test_watch_follows_a_live_run);
    RUN(test_text_run_shows_token_accuracy);
    RUN(test_smoothing_is_a_centred_moving_average);
    RUN(test_missing_gnuplot_is_one_line);
    RUN(test_bad_input_is_one_line_and_exit_2);
    RUN(test_no_command_reaches_gnuplot);
    if (test_rmtree(dir)) return 1;
    return test_summary();
}
