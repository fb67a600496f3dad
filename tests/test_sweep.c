/* qkv sweep: the grid, sweep.csv against the printed table, the pictures,
 * resuming an interrupted sweep, and bad input. Drives build/examples/qkv. */
#include <math.h>
#include <sys/stat.h>

#include "test.h"

static char qkv[600], dir[64];

static int run(const char *args, char *out, size_t cap) {
    return test_qkv(qkv, args, out, cap);
}

/* One grid, small and fast: copy task, N 1,2 x h 1,4, 60 steps per cell. */
static const char *grid = "--N 1,2 --h 1,4 --task copy --steps 60 "
                          "--eval-every 30 --eval-size 20 --batch 16 "
                          "--d-model 16 --d-ff 32 --dropout 0.1";

typedef struct row {
    int N, h, d_model, d_k;
    long params;
    double train_loss, val_loss, val_acc;
} row;

/* Reads sweep.csv; returns the rows read. */
static int read_csv(const char *path, row *r, int max) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[512];
    int n = 0;
    if (!fgets(line, sizeof line, f) ||
        strcmp(line, "N,h,d_model,d_k,params,train_loss,val_loss,val_acc,"
                     "val_bleu,seconds,tokens_per_s\n") != 0) {
        fclose(f);
        return -2;
    }
    while (n < max && fgets(line, sizeof line, f)) {
        row x;
        if (sscanf(line, "%d,%d,%d,%d,%ld,%lf,%lf,%lf", &x.N, &x.h, &x.d_model,
                   &x.d_k, &x.params, &x.train_loss, &x.val_loss,
                   &x.val_acc) != 8)
            break;
        r[n++] = x;
    }
    fclose(f);
    return n;
}

static int is_png(const char *path, long min_size) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char sig[8];
    int ok =
        fread(sig, 1, 8, f) == 8 && memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0;
    fseek(f, 0, SEEK_END);
    ok = ok && ftell(f) >= min_size;
    fclose(f);
    return ok;
}

static void test_grid_csv_table_and_pictures(void) {
    char cmd[2000], out[16384], path[300];
    snprintf(cmd, sizeof cmd, "sweep %s --out %s/a", grid, dir);
    CHECK(run(cmd, out, sizeof out) == 0, "sweep failed: %s", out);
    snprintf(path, sizeof path, "%s/a/sweep.csv", dir);
    row r[8];
    int n = read_csv(path, r, 8);
    CHECK(n == 4, "sweep.csv has %d rows", n);
    if (n != 4) return;
    /* cells in grid order, d_model fixed and d_k = d_model / h */
    int want[4][2] = {{1, 1}, {1, 4}, {2, 1}, {2, 4}};
    for (int i = 0; i < 4; i++) {
        CHECK(r[i].N == want[i][0] && r[i].h == want[i][1], "row %d: N %d h %d",
              i, r[i].N, r[i].h);
        CHECK(r[i].d_model == 16 && r[i].d_k == 16 / r[i].h, "row %d: d %d/%d",
              i, r[i].d_model, r[i].d_k);
        CHECK(isfinite(r[i].val_loss) && r[i].val_loss > 0, "val loss");
    }
    /* heads do not change the parameter count; a layer does */
    CHECK(r[0].params == r[1].params && r[2].params == r[3].params &&
              r[2].params > r[0].params,
          "params %ld %ld %ld %ld", r[0].params, r[1].params, r[2].params,
          r[3].params);
    /* the printed table: sorted by val_loss, the same numbers as the CSV */
    char *t = strstr(out, "(sorted by val_loss)");
    CHECK(t, "no table: %s", out);
    if (!t) return;
    t = strchr(t, '\n') + 1;
    double last = -1;
    for (int i = 0; i < 4; i++) {
        int N, h, dm, dk;
        long params;
        double tl, vl;
        CHECK(sscanf(t, "%d %d %d %d %ld %lf %lf", &N, &h, &dm, &dk, &params,
                     &tl, &vl) == 7,
              "table row: %.80s", t);
        int k = (N - 1) * 2 + (h == 4);
        CHECK(k >= 0 && k < 4 && params == r[k].params &&
                  fabs(vl - r[k].val_loss) < 5.1e-5 &&
                  fabs(tl - r[k].train_loss) < 5.1e-5,
              "table row N=%d h=%d differs from the CSV", N, h);
        CHECK(vl >= last, "table not sorted by val_loss");
        last = vl;
        t = strchr(t, '\n') + 1;
    }
    snprintf(path, sizeof path, "%s/a/heatmap.png", dir);
    CHECK(is_png(path, 3000), "heatmap.png is not a real picture");
    snprintf(path, sizeof path, "%s/a/heatmap.png.gp", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0 && st.st_size > 100, "no heatmap.png.gp");
    snprintf(path, sizeof path, "%s/a/loss.png", dir);
    CHECK(is_png(path, 3000), "loss.png is not a real picture");
    /* the same command again: every cell is done, nothing is retrained */
    snprintf(cmd, sizeof cmd, "sweep %s --out %s/a", grid, dir);
    CHECK(run(cmd, out, sizeof out) == 0, "second sweep failed: %s", out);
    int before = 0;
    for (char *s = out; (s = strstr(s, ": done before")); s++) before++;
    CHECK(before == 4 && !strstr(out, "done: 60 steps"),
          "a finished cell was retrained: %s", out);
    row r2[8];
    snprintf(path, sizeof path, "%s/a/sweep.csv", dir);
    CHECK(read_csv(path, r2, 8) == 4 && memcmp(r, r2, sizeof(row) * 4) == 0,
          "the CSV changed");
}

/* Ctrl-C during the second cell; the same command then finishes the grid,
 * and every figure equals the uninterrupted sweep's (resume is exact). */
static void test_interrupted_sweep_resumes(void) {
    char cmd[3000], out[16384], path[300];
    snprintf(cmd, sizeof cmd,
             "bash -c \"'%s' sweep %s --steps 1500 --save-every 100 --N 1 "
             "--out %s/b >/dev/null 2>&1 & p=\\$!; for i in \\$(seq 6000); do "
             "[ -e %s/b/N1-h4/ckpt.safetensors ] && break; sleep 0.01; done; "
             "kill -INT -- \\$p; wait \\$p; echo rc=\\$?\"",
             qkv, grid, dir, dir);
    test_shell(cmd, out, sizeof out);
    CHECK(strstr(out, "rc=130"), "the interrupted sweep did not exit 130: %s",
          out);
    snprintf(path, sizeof path, "%s/b/N1-h4/done", dir);
    struct stat st;
    CHECK(stat(path, &st) != 0, "the cut cell was marked done");
    snprintf(cmd, sizeof cmd,
             "sweep %s --steps 1500 --save-every 100 --N 1 --out %s/b", grid,
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "resumed sweep failed: %s", out);
    CHECK(strstr(out, "N=1 h=1 d_model=16 d_k=16: done before") &&
              strstr(out, "N=1 h=4 d_model=16 d_k=4: resuming"),
          "resume did not skip and continue: %s", out);
    snprintf(cmd, sizeof cmd,
             "sweep %s --steps 1500 --save-every 100 --N 1 --out %s/c", grid,
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "straight sweep failed: %s", out);
    row b[4], c[4];
    char pb[300], pc[300];
    snprintf(pb, sizeof pb, "%s/b/sweep.csv", dir);
    snprintf(pc, sizeof pc, "%s/c/sweep.csv", dir);
    int nb = read_csv(pb, b, 4), nc = read_csv(pc, c, 4);
    CHECK(nb == 2 && nc == 2, "rows %d %d", nb, nc);
    for (int i = 0; i < nb && i < nc; i++)
        CHECK(b[i].train_loss == c[i].train_loss &&
                  b[i].val_loss == c[i].val_loss &&
                  b[i].val_acc == c[i].val_acc,
              "cell %d: resumed %.6f/%.6f, straight %.6f/%.6f", i,
              b[i].train_loss, b[i].val_loss, c[i].train_loss, c[i].val_loss);
}

/* --d-k K fixes d_k and grows d_model = h K (and the parameters). */
static void test_fixed_dk(void) {
    char cmd[2000], out[16384], path[300];
    snprintf(cmd, sizeof cmd,
             "sweep --N 1 --h 1,2 --d-k 8 --task copy --steps 10 --eval-every "
             "10 --eval-size 10 --batch 8 --d-ff 32 --term dumb --out %s/d",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "sweep --d-k failed: %s", out);
    row r[4];
    snprintf(path, sizeof path, "%s/d/sweep.csv", dir);
    CHECK(read_csv(path, r, 4) == 2 && r[0].d_model == 8 &&
              r[1].d_model == 16 && r[0].d_k == 8 && r[1].d_k == 8 &&
              r[1].params > r[0].params,
          "d_model/d_k with --d-k");
}

/* The last val_loss of a run's log.csv. */
static double last_val_loss(const char *log) {
    FILE *f = fopen(log, "r");
    char line[512];
    double v = -1;
    while (f && fgets(line, sizeof line, f)) {
        double c[6];
        int step;
        if (sscanf(line, "%d,%lf,%lf,%lf,%lf,%lf", &step, &c[0], &c[1], &c[2],
                   &c[3], &c[4]) == 6)
            v = c[4];
    }
    if (f) fclose(f);
    return v;
}

static void test_seeds_give_means_and_deviations(void) {
    char cmd[2000], out[16384], path[300], line[512];
    snprintf(cmd, sizeof cmd,
             "sweep --N 1 --h 1,2 --seeds 3,5 --task copy --steps 20 "
             "--eval-every 10 --eval-size 10 --batch 8 --d-model 16 --d-ff 32 "
             "--term dumb --out %s/s",
             dir);
    CHECK(run(cmd, out, sizeof out) == 0, "sweep --seeds failed: %s", out);
    CHECK(strstr(out, "mean±sd over the seeds") && strstr(out, "±"),
          "the table shows no deviations: %s", out);
    snprintf(path, sizeof path, "%s/s/sweep.csv", dir);
    FILE *f = fopen(path, "r");
    CHECK(f && fgets(line, sizeof line, f) &&
              strstr(line, ",seeds,train_loss_sd,val_loss_sd,val_acc_sd,"
                           "val_bleu_sd\n"),
          "sweep.csv has no seed columns");
    int N, h, runs, rows = 0;
    double vl, vl_sd;
    while (f && fgets(line, sizeof line, f)) {
        double x[8];
        if (sscanf(line, "%d,%d,%lf,%lf,%lf,%lf,%lf", &N, &h, &x[0], &x[1],
                   &x[2], &x[3], &vl) != 7)
            continue;
        const char *p = line;
        for (int i = 0; i < 11 && p; i++) p = strchr(p, ',') + 1;
        CHECK(p && sscanf(p, "%d,%lf,%lf", &runs, &x[0], &vl_sd) == 3,
              "seed columns of %s", line);
        /* the mean and sample sd of the two runs' last val_loss */
        char a[400], b[400];
        snprintf(a, sizeof a, "%s/s/N%d-h%d-s3/log.csv", dir, N, h);
        snprintf(b, sizeof b, "%s/s/N%d-h%d-s5/log.csv", dir, N, h);
        double va = last_val_loss(a), vb = last_val_loss(b);
        CHECK(runs == 2 && va > 0 && vb > 0, "runs %d, logs %g %g", runs, va,
              vb);
        CHECK(fabs(vl - (va + vb) / 2) < 2e-6, "mean %g of %g and %g", vl, va,
              vb);
        CHECK(fabs(vl_sd - fabs(va - vb) / sqrt(2)) < 2e-6, "sd %g of %g, %g",
              vl_sd, va, vb);
        CHECK(va != vb, "seeds 3 and 5 gave the same run");
        rows++;
    }
    if (f) fclose(f);
    CHECK(rows == 2, "sweep.csv has %d rows, want 2", rows);
}

static void test_bad_input(void) {
    static const struct {
        const char *args, *want;
    } bad[] = {
        {"sweep --N 0", "--N wants a list of positive integers"},
        {"sweep --N 1,x", "--N wants a list of positive integers"},
        {"sweep --h 1,1", "--h repeats 1"},
        {"sweep --h 3", "h = 3 does not divide d_model = 64"},
        {"sweep --resume x --N 1", "--resume cannot be given"},
        {"sweep --metric nope", "--metric must be one of"},
        {"sweep --d-k 8 --fixed-compute", "contradict"},
        {"sweep --N 1 --h 1 --steps 0 --out %s/e", "--steps must be positive"},
        {"sweep " /* same --out as test a, other settings */
         "--N 1 --h 1 --steps 5 --out %s/a",
         "holds a sweep with other settings"},
    };
    char out[8192], args[600];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(args, sizeof args, bad[i].args, dir);
        int rc = run(args, out, sizeof out);
        CHECK(rc == 2, "qkv %s: exit %d, want 2: %s", args, rc, out);
        CHECK(strstr(out, bad[i].want), "qkv %s: %s", args, out);
    }
}

int main(void) {
    test_prog = "sweep";
    test_qkv_path(qkv, sizeof qkv);
    test_tmpdir(dir, sizeof dir, "sweep");
    RUN(test_grid_csv_table_and_pictures);
    RUN(test_interrupted_sweep_resumes);
    RUN(test_fixed_dk);
    RUN(test_seeds_give_means_and_deviations);
    RUN(test_bad_input);
    if (test_rmtree(dir)) return 1;
    return test_summary();
}
