/* The qkv program: flags, help, errors and a short training run, driven as a
 * user would from the shell. The program is build/examples/qkv, found next to
 * this test's build directory. */
#include <cjson/cJSON.h>
#include <libgen.h>

#include "test.h"

static char qkv[600], dir[64];

/* Runs `qkv ARGS`, capturing stdout+stderr into out; returns the exit status.
 */
static int run(const char *args, char *out, size_t cap) {
    char cmd[3000];
    if (snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", qkv, args) >= (int)sizeof cmd)
        return -1;
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
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
                  strcmp(
                      line,
                      "step,tokens,seconds,lr,train_loss,val_loss,val_acc\n") ==
                      0,
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
            evals += line[strlen(line) - 2] != ',';
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
static void test_interrupt_and_resume_equal_uninterrupted(void) {
    const char *flags = "--steps 1500 --d-model 16 --d-ff 32 --batch 8 --dropout 0.1 "
                        "--eval-every 500 --eval-size 10 --save-every 100 --quiet";
    char cmd[2000], out[4096];
    snprintf(cmd, sizeof cmd, "train %s --out %s/straight", flags, dir);
    CHECK(run(cmd, out, sizeof out) == 0, "straight run failed: %s", out);
    /* SIGINT once the first checkpoint (step 100 of 1500) exists: by then
     * the handler is installed and the run is mid-way, however loaded the
     * machine; the wait gives up after 60 s. */
    snprintf(cmd, sizeof cmd,
             "bash -c \"'%s' train %s --out %s/cut >/dev/null 2>&1 & p=\\$!; "
             "for i in \\$(seq 6000); do [ -e %s/cut/ckpt.safetensors ] && break; "
             "sleep 0.01; done; kill -INT \\$p; wait \\$p; echo rc=\\$?\"",
             qkv, flags, dir, dir);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    if (p) pclose(p);
    CHECK(strstr(out, "rc=130"), "the interrupted run did not exit 130: %s", out);
    snprintf(cmd, sizeof cmd, "train --resume %s/cut --quiet", dir);
    CHECK(run(cmd, out, sizeof out) == 0, "resume failed: %s", out);
    snprintf(cmd, sizeof cmd,
             "bash -c 'cmp -s <(cut -d, -f1,2,4- %s/straight/log.csv) "
             "<(cut -d, -f1,2,4- %s/cut/log.csv)'",
             dir, dir);
    CHECK(system(cmd) == 0, "the resumed log differs from the uninterrupted one");
    snprintf(cmd, sizeof cmd, "train --resume %s/cut --h 2", dir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "--h cannot change"),
          "a model flag on --resume: %s", out);
    snprintf(cmd, sizeof cmd, "train --resume %s/none", dir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "cannot open"),
          "--resume of a missing run: %s", out);
}

int main(void) {
    test_prog = "cli";
    char self[512] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) > 0)
        snprintf(qkv, sizeof qkv, "%s/../examples/qkv", dirname(self));
    snprintf(dir, sizeof dir, "/tmp/qkv-cli-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    RUN(test_help_lists_every_flag_with_default);
    RUN(test_bad_input_is_one_line_and_exit_2);
    RUN(test_train_writes_log_and_config);
    RUN(test_same_seed_same_log);
    RUN(test_interrupt_and_resume_equal_uninterrupted);
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm) != 0) return 1;
    return test_summary();
}
