/* Runs you can manage (qkv train): --keep-best keeps the checkpoint of the
 * best --metric, --patience stops a run that no longer improves (and a
 * resumed run remembers how long it has waited), --config starts from a
 * previous run's settings with the flags on the line winning, and
 * --flag=value works. Drives build/examples/qkv. */

#include "safetensors.h"
#include "test.h"

static char qkv[600], dir[256], out[1 << 15];

static int run(const char *fmt, const char *a) {
    char args[2000];
    snprintf(args, sizeof args, fmt, a, a, a);
    return test_qkv(qkv, args, out, sizeof out);
}

static void test_keep_best(void) {
    int rc = run("train --task copy --steps 200 --eval-every 50 --quiet "
                 "--keep-best --metric val_acc --out %s/kb",
                 dir);
    CHECK(rc == 0, "train --keep-best: exit %d: %s", rc, out);
    /* the step with the best val_acc in the log (the first of equals) */
    char path[400], line[256];
    snprintf(path, sizeof path, "%s/kb/log.csv", dir);
    FILE *f = fopen(path, "r");
    int best_step = -1;
    double best = -1;
    while (f && fgets(line, sizeof line, f)) {
        int step;
        double c[5];
        if (sscanf(line, "%d,%lf,%lf,%lf,%lf,%lf,%lf", &step, &c[0], &c[1],
                   &c[2], &c[3], &c[4], &c[4]) == 7 &&
            c[4] > best)
            best = c[4], best_step = step;
    }
    if (f) fclose(f);
    snprintf(path, sizeof path, "%s/kb/best.safetensors", dir);
    qkv_st_file st;
    qkv_st_error e;
    CHECK(qkv_st_read(path, &st, &e) == 0, "best.safetensors: %s", e.msg);
    const char *step = qkv_st_meta(&st, "step");
    CHECK(step && atoi(step) == best_step && best_step > 0,
          "best.safetensors is of step %s, the log's best (%.4f) is at %d",
          step ? step : "?", best, best_step);
    qkv_st_free(&st);
    rc = run("eval --ckpt %s/kb/best.safetensors --size 50", dir);
    CHECK(rc == 0, "eval of best.safetensors: exit %d: %s", rc, out);
}

static void test_patience_stops_and_remembers(void) {
    /* a rate too small to learn: exact match stays 0, never better */
    const char *flags = "train --task copy --steps 200 --eval-every 10 "
                        "--lr 1e-9 --warmup 0 --schedule const --patience 2 "
                        "--metric val_acc --quiet --out %s/pt";
    int rc = run(flags, dir);
    CHECK(rc == 0, "train --patience: exit %d: %s", rc, out);
    CHECK(strstr(out, "stopped early at step 30: 2 validations without a "
                      "better val_acc"),
          "no early stop at step 30: %s", out);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "wc -l < %s/pt/log.csv", dir);
    test_shell(cmd, out, sizeof out);
    CHECK(atoi(out) == 31, "the log has %d rows, want 30 and a header",
          atoi(out) - 1);
    /* resumed, it has waited 2 validations already: it stops at the next */
    rc = run("train --resume %s/pt --steps 400 --quiet", dir);
    CHECK(rc == 0 && strstr(out, "stopped early at step 40"),
          "the resumed run did not stop at step 40: %s", out);
}

static void test_config_and_flag_equals_value(void) {
    int rc = run("train --task reverse --steps=20 --eval-every=10 --d-model=32 "
                 "--h=2 --d-ff=48 --quiet --out=%s/c1",
                 dir);
    CHECK(rc == 0, "train --flag=value: exit %d: %s", rc, out);
    rc = run("train --config %s/c1/config.json --steps 10 --h 4 --quiet "
             "--out %s/c2",
             dir);
    CHECK(rc == 0, "train --config: exit %d: %s", rc, out);
    char path[400], text[8192] = "";
    snprintf(path, sizeof path, "%s/c2/config.json", dir);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    text[n] = 0;
    if (f) fclose(f);
    CHECK(strstr(text, "\"task\":\t\"reverse\"") &&
              strstr(text, "\"d-model\":\t32") && strstr(text, "\"d-ff\":\t48"),
          "the settings of --config are not in the new run: %s", text);
    CHECK(strstr(text, "\"h\":\t4") && strstr(text, "\"steps\":\t10"),
          "the flags on the line did not win: %s", text);
    /* only what applies: no corpus flags in a task run, no one-off actions,
     * no metric nothing reads; numbers at their precision */
    const char *absent[] = {"\"data\"",    "\"tok\"",   "\"epochs\"",
                            "\"resume\"",  "\"force\"", "\"config\"",
                            "\"dry-run\"", "\"N-enc\"", "\"metric\""};
    for (size_t i = 0; i < sizeof absent / sizeof *absent; i++)
        CHECK(!strstr(text, absent[i]), "config.json of a task run has %s",
              absent[i]);
    CHECK(strstr(text, "\"lr\":\t0.002,") && strstr(text, "\"warmup\""),
          "lr or warmup not as given: %s", text);
    rc = run("train --data data/corpora/dates/train.tsv --tok char --model "
             "decoder --schedule const --steps 2 --quiet --out %s/c5",
             dir);
    snprintf(path, sizeof path, "%s/c5/config.json", dir);
    f = fopen(path, "r");
    n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    text[n] = 0;
    if (f) fclose(f);
    CHECK(rc == 0 && strstr(text, "\"tok\":\t\"char\"") &&
              !strstr(text, "\"task\"") && !strstr(text, "\"vocab\"") &&
              !strstr(text, "\"warmup\"") && !strstr(text, "\"valid\""),
          "config.json of a corpus run without --valid: %s", text);
    rc = run("train --config %s/nope.json --out %s/c3", dir);
    CHECK(rc == 2 && test_one_line(out) && strstr(out, "--config"),
          "a missing --config: exit %d: %s", rc, out);
    rc = run("train --data data/corpora/dates/train.tsv --tok char "
             "--keep-best --steps 1 --quiet --out %s/c4",
             dir);
    CHECK(rc == 2 && strstr(out, "give --valid"),
          "--keep-best without --valid: exit %d: %s", rc, out);
}

int main(void) {
    test_prog = "manage";
    test_qkv_path(qkv, sizeof qkv);
    test_tmpdir(dir, sizeof dir, "manage");
    RUN(test_keep_best);
    RUN(test_patience_stops_and_remembers);
    RUN(test_config_and_flag_equals_value);
    test_rmtree(dir);
    return test_summary();
}
