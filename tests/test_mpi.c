/* Data-parallel training on Open MPI: `mpirun -np 2` of the MPI build
 * (build-mpi/examples/qkv, made by `make test` when mpicc is on the machine)
 * against one process of the default build.
 *
 * - Two ranks compute the update one process computes on the same batch:
 *   bit for bit the same as one process with --accum 2 and half the --batch
 *   (the same two slices, their gradients added in the same order), on a
 *   task and on a corpus; against one process without --accum, the same
 *   within 1e-5 until float-order differences grow (they do in one process
 *   too: --accum 2 alone moves the curve as much), and both learn the task.
 * - Two runs with two ranks are bitwise identical.
 * - A checkpoint does not depend on the rank count: a 2-rank run resumed by
 *   one process continues it.
 * - A sweep across 2 ranks, with --seeds, writes the sequential sweep's
 *   figures, means and deviations.
 * - A bad flag is said once, exit 2; a killed rank ends the job, no hang;
 *   Ctrl-C on mpirun ends every rank and the last checkpoint loads.
 *
 * Without mpirun or the MPI build every case says SKIP. */

#include <math.h>
#include <signal.h>
#include <sys/stat.h>

#include "common.h"
#include "test.h"

static char dir[256], qkv[600], qkv_mpi[600], out[1 << 16];
static const char *mpirun =
    "mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2";

static int have_mpi(void) {
    struct stat st;
    return qkv_mpi[0] && stat(qkv_mpi, &st) == 0 &&
           test_shell("command -v mpirun", out, sizeof out) == 0;
}

/* Runs a shell command; its output is in out. */
static int sh(const char *fmt, const char *a, const char *b, const char *c) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b, c);
    return test_shell(cmd, out, sizeof out);
}

/* The train_loss column of DIR/NAME/log.csv into loss[] (at most max). */
static int losses(const char *name, double *loss, int max) {
    char path[512], line[256];
    snprintf(path, sizeof path, "%s/%s/log.csv", dir, name);
    FILE *f = fopen(path, "r");
    int n = 0;
    if (!f) return 0;
    while (n < max && fgets(line, sizeof line, f)) {
        int step;
        long tok;
        double secs, lr, l;
        if (sscanf(line, "%d,%ld,%lf,%lf,%lf", &step, &tok, &secs, &lr, &l) ==
            5)
            loss[n++] = l;
    }
    fclose(f);
    return n;
}

/* 1 if two runs' logs are the same but for the seconds column. */
static int same_log(const char *a, const char *b) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cmp -s <(cut -d, -f1,2,4- %s/%s/log.csv) "
             "<(cut -d, -f1,2,4- %s/%s/log.csv)",
             dir, a, dir, b);
    char full[1200];
    snprintf(full, sizeof full, "bash -c '%s'", cmd);
    return test_shell(full, out, sizeof out) == 0;
}

/* The last val_acc of a run's log. */
static double last_acc(const char *name) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -1 %s/%s/log.csv | cut -d, -f7", dir, name);
    test_shell(cmd, out, sizeof out);
    return atof(out);
}

#define TASK                                                                   \
    "train --task copy --steps 300 --eval-every 100 --threads 1 --quiet"
#define DATES                                                                  \
    "train --data data/corpora/dates/train.tsv --valid "                       \
    "data/corpora/dates/valid.tsv --tok char --steps 120 --eval-every 60 "     \
    "--threads 1 --quiet"

static void test_two_ranks_are_one_process_with_accum_2(void) {
    if (!have_mpi())
        SKIP("no mpirun or no MPI build (apt-get install openmpi-bin "
             "libopenmpi-dev)");
    int rc = sh("%s %s " TASK " --out %s/k2", mpirun, qkv_mpi, dir);
    CHECK(rc == 0, "mpirun -np 2 train: exit %d: %s", rc, out);
    rc = sh("%s " TASK " --batch 32 --accum 2 --out %s/a2%s", qkv, dir, "");
    CHECK(rc == 0, "train --accum 2: exit %d: %s", rc, out);
    CHECK(same_log("k2", "a2"),
          "2 ranks and 1 process with --accum 2: the logs differ");
    rc = sh("%s %s " DATES " --out %s/ck2", mpirun, qkv_mpi, dir);
    CHECK(rc == 0, "mpirun -np 2 train (corpus): exit %d: %s", rc, out);
    rc = sh("%s " DATES " --batch 32 --accum 2 --out %s/ca2%s", qkv, dir, "");
    CHECK(rc == 0, "train --accum 2 (corpus): exit %d: %s", rc, out);
    CHECK(same_log("ck2", "ca2"),
          "corpus: 2 ranks and 1 process with --accum 2: the logs differ");
}

static void test_two_ranks_against_one_process(void) {
    if (!have_mpi()) SKIP("no mpirun or no MPI build");
    int rc = sh("%s " TASK " --out %s/k1%s", qkv, dir, "");
    CHECK(rc == 0, "train: exit %d: %s", rc, out);
    double a[400], b[400], c[400];
    int na = losses("k1", a, 400), nb = losses("k2", b, 400);
    int nc = losses("a2", c, 400);
    CHECK(na == 300 && nb == 300 && nc == 300, "log rows %d, %d, %d", na, nb,
          nc);
    int agree = 0; /* steps from the first within 1e-5 relative */
    while (agree < na && agree < nb &&
           fabs(a[agree] - b[agree]) <= 1e-5 * fabs(a[agree]))
        agree++;
    int agree1 = 0; /* the same for one process with --accum 2 */
    while (agree1 < na && fabs(a[agree1] - c[agree1]) <= 1e-5 * fabs(a[agree1]))
        agree1++;
    printf("  2 ranks vs 1 process: losses within 1e-5 for the first %d "
           "steps (1 process with --accum 2: %d); final exact match %.1f%% "
           "and %.1f%%\n",
           agree, agree1, last_acc("k2"), last_acc("k1"));
    CHECK(agree >= 30, "2 ranks leave 1 process's curve at step %d", agree + 1);
    /* --accum 2 --batch 32 is --batch 64's update, up to float order */
    CHECK(agree1 >= 30, "--accum 2 leaves --batch 64's curve at step %d",
          agree1 + 1);
    CHECK(last_acc("k1") >= 98 && last_acc("k2") >= 98,
          "exact match %.2f%% (1 process), %.2f%% (2 ranks)", last_acc("k1"),
          last_acc("k2"));
}

static void test_two_ranks_repeat_bit_for_bit(void) {
    if (!have_mpi()) SKIP("no mpirun or no MPI build");
    int rc = sh("%s %s " TASK " --out %s/k2b", mpirun, qkv_mpi, dir);
    CHECK(rc == 0, "mpirun: exit %d: %s", rc, out);
    CHECK(same_log("k2", "k2b"), "two 2-rank runs differ");
}

static void test_resume_with_another_rank_count(void) {
    if (!have_mpi()) SKIP("no mpirun or no MPI build");
        /* 2 ranks to step 300; 2 ranks to 150, then 1 process to 300 (a
     * constant rate: the schedule does not depend on --steps) */
#define CONST                                                                  \
    "train --task copy --schedule const --eval-every 100 --threads 1 --quiet"
    int rc =
        sh("%s %s " CONST " --steps 300 --out %s/c2", mpirun, qkv_mpi, dir);
    CHECK(rc == 0, "mpirun: exit %d: %s", rc, out);
    rc = sh("%s %s " CONST " --steps 150 --out %s/r", mpirun, qkv_mpi, dir);
    CHECK(rc == 0, "mpirun: exit %d: %s", rc, out);
    rc = sh("%s train --resume %s/r --steps 300 --quiet%s", qkv, dir, "");
    CHECK(rc == 0, "resume with 1 process: exit %d: %s", rc, out);
    double a[400], b[400];
    int na = losses("c2", a, 400), nb = losses("r", b, 400);
    CHECK(nb == 300, "the resumed log has %d rows", nb);
    CHECK(na == 300 && memcmp(a, b, 150 * sizeof *a) == 0,
          "the first 150 steps differ from the uninterrupted 2-rank run");
    /* step 151's loss comes from the same weights: only float order */
    CHECK(na == 300 && fabs(a[150] - b[150]) <= 1e-5 * fabs(a[150]),
          "step 151: %.6f resumed vs %.6f", b[150], a[150]);
    /* and back: one process's checkpoint continued by 2 ranks */
    rc = sh("%s %s train --resume %s/r --steps 320 --threads 1 --quiet", mpirun,
            qkv_mpi, dir);
    CHECK(rc == 0, "resume with 2 ranks: exit %d: %s", rc, out);
    CHECK(losses("r", b, 400) == 320, "the log does not reach step 320");
}

static void test_bad_flag_said_once(void) {
    if (!have_mpi()) SKIP("no mpirun or no MPI build");
    int rc =
        sh("%s %s train --steps -5 --out %s/bad 2>&1", mpirun, qkv_mpi, dir);
    int lines = 0;
    for (const char *p = out; (p = strstr(p, "qkv: train:")); p++) lines++;
    CHECK(rc == 2, "mpirun with a bad flag: exit %d", rc);
    CHECK(lines == 1, "the error was said %d times: %s", lines, out);
}

static void test_a_killed_rank_ends_the_job(void) {
    if (!have_mpi()) SKIP("no mpirun or no MPI build");
    /* rank 1 is killed after a second; mpirun must end within 60 s */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "bash -c '%s %s train --task copy --steps 100000 --threads 1 "
             "--quiet --out %s/kill >/dev/null 2>%s/kill.err & m=$!; sleep 2; "
             "pkill -9 -n -P $m; "
             "timeout 60 bash -c \"while kill -0 $m 2>/dev/null; do sleep "
             "0.2; done\"; t=$?; wait $m; echo \"rc=$? t=$t\"'",
             mpirun, qkv_mpi, dir, dir);
    double t0 = qkv_seconds();
    test_shell(cmd, out, sizeof out);
    int rc = -1, t = -1;
    const char *p = strstr(out, "rc=");
    if (p) sscanf(p, "rc=%d t=%d", &rc, &t);
    printf("  killed rank: mpirun ended in %.1f s with exit %d\n",
           qkv_seconds() - t0, rc);
    CHECK(t == 0, "mpirun still ran 60 s after a rank was killed: %s", out);
    CHECK(rc != 0, "the job exited 0 with a rank killed");
}

static void test_ctrl_c_keeps_the_last_checkpoint(void) {
    if (!have_mpi()) SKIP("no mpirun or no MPI build");
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "bash -c '%s %s train --task copy --steps 100000 --threads 1 "
             "--quiet --save-every 50 --out %s/int >/dev/null 2>&1 & m=$!; "
             "sleep 3; kill -INT $m; timeout 30 bash -c \"while kill -0 $m "
             "2>/dev/null; do sleep 0.2; done\"; echo t=$?'",
             mpirun, qkv_mpi, dir);
    test_shell(cmd, out, sizeof out);
    CHECK(strstr(out, "t=0") != NULL, "mpirun ran on after Ctrl-C: %s", out);
    /* the last checkpoint is whole */
    int rc =
        sh("%s eval --ckpt %s/int/ckpt.safetensors --size 50%s", qkv, dir, "");
    CHECK(rc == 0, "the checkpoint left by Ctrl-C does not load: %s", out);
}

static void test_sweep_across_ranks(void) {
    if (!have_mpi()) SKIP("no mpirun or no MPI build");
#define SWEEP                                                                  \
    "sweep --N 1,2 --h 1,2 --seeds 1,2 --steps 60 --eval-every 30 --term dumb"
    int rc = sh("%s " SWEEP " --out %s/sw1%s", qkv, dir, "");
    CHECK(rc == 0, "sweep: exit %d: %s", rc, out);
    rc = sh("%s %s " SWEEP " --out %s/sw2", mpirun, qkv_mpi, dir);
    CHECK(rc == 0, "mpirun sweep: exit %d: %s", rc, out);
    /* the same figures but for the time columns */
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "bash -c 'cmp <(cut -d, -f1-9,12- %s/sw1/sweep.csv) <(cut -d, "
             "-f1-9,12- %s/sw2/sweep.csv)'",
             dir, dir);
    CHECK(test_shell(cmd, out, sizeof out) == 0,
          "the 2-rank sweep's sweep.csv differs from the sequential one: %s",
          out);
}

int main(void) {
    test_prog = "mpi";
    test_qkv_path(qkv, sizeof qkv);
    /* BUILD/tests/test_mpi -> build-mpi/examples/qkv beside BUILD */
    char self[400] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) > 0)
        for (int up = 0; up < 3; up++) *strrchr(self, '/') = 0;
    snprintf(qkv_mpi, sizeof qkv_mpi, "%s/build-mpi/examples/qkv", self);
#if defined(__SANITIZE_ADDRESS__)
    qkv_mpi[0] = 0; /* ~50x slower: the cases run in the normal build */
#endif
    test_tmpdir(dir, sizeof dir, "mpi");
    RUN(test_two_ranks_are_one_process_with_accum_2);
    RUN(test_two_ranks_against_one_process);
    RUN(test_two_ranks_repeat_bit_for_bit);
    RUN(test_resume_with_another_rank_count);
    RUN(test_bad_flag_said_once);
    RUN(test_a_killed_rank_ends_the_job);
    RUN(test_ctrl_c_keeps_the_last_checkpoint);
    RUN(test_sweep_across_ranks);
    test_rmtree(dir);
    return test_summary();
}
