/* The thread count: auto mode's rule on given loads, and the real thing on
 * this machine (processes that keep all but one CPU busy, then stop). */
#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "qkv.h"

#include "test.h"

static void test_pick_follows_the_load(void) {
    static const struct {
        int cur, max, ncpu;
        double others;
        int want;
    } c[] = {
        {2, 2, 2, 0.00, 2}, /* quiet: all */
        {2, 2, 2, 0.30, 2}, /* a small competitor is not worth a thread */
        {2, 2, 2, 0.67, 1}, /* a spinning process shares a core with us */
        {2, 2, 2, 1.00, 1},
        {2, 2, 2, 2.00, 1}, /* never below 1 */
        {1, 2, 2, 1.00, 1}, /* the competitor still runs: stay */
        {1, 2, 2, 0.30, 1}, /* not a whole CPU idle: stay */
        {1, 2, 2, 0.10, 2}, /* it stopped: up */
        {8, 8, 8, 2.40, 6}, /* two busy CPUs (and some) of eight */
        {6, 8, 8, 2.00, 6},
        {6, 8, 8, 0.05, 7}, /* up one at a time */
        {7, 8, 8, 0.05, 8},
        {8, 8, 8, 0.05, 8}, /* never above max */
        {4, 4, 8, 0.05, 4},
        {4, 4, 8, 4.00, 4}, /* four idle CPUs are enough for our four */
        {4, 4, 8, 4.60, 3},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        int got = qkv_threads_pick(c[i].cur, c[i].max, c[i].ncpu, c[i].others);
        CHECK(got == c[i].want,
              "pick(cur %d, max %d, ncpu %d, others %.2f) = "
              "%d, want %d",
              c[i].cur, c[i].max, c[i].ncpu, c[i].others, got, c[i].want);
    }
}

/* A cut's ranges are consecutive and cover the units, equal until learned,
 * else in proportion to the shares (+-1 unit). */
static void test_share_ranges_cover_the_units(void) {
    static const double w[] = {0.2, 1.3, 0.5, 2.0, 1.0};
    for (int nt = 1; nt <= 5; nt++)
        for (int fixed = 0; fixed < 2; fixed++) {
            qkv_share_fix(nt, fixed ? w : NULL);
            qkv_share_forget();
            double total = 0;
            for (int t = 0; t < nt; t++) total += w[t];
            for (int n = 0; n <= 40; n += n < 10 ? 1 : 7) {
                qkv_cut cut;
                qkv_share_cut(&cut, n, nt, QKV_SHARE_PRODUCT);
                int end = 0, lo, hi;
                for (int t = 0; t < nt; t++) {
                    qkv_share_range(&cut, t, &lo, &hi);
                    double want = n * (fixed ? w[t] / total : 1.0 / nt);
                    CHECK(lo == end && hi >= lo && fabs((hi - lo) - want) <= 1,
                          "nt %d (%s), n %d: thread %d has [%d, %d), want "
                          "%.1f units from %d",
                          nt, fixed ? "fixed" : "equal", n, t, lo, hi, want,
                          end);
                    end = hi;
                }
                CHECK(end == n, "nt %d, n %d: the ranges end at %d", nt, n,
                      end);
                qkv_share_range(&cut, nt, &lo, &hi);
                CHECK(lo == hi, "thread %d of %d has [%d, %d)", nt, nt, lo, hi);
            }
        }
    /* a team larger than QKV_SHARE_MAX: equal pieces */
    qkv_cut cut;
    qkv_share_cut(&cut, 1000, QKV_SHARE_MAX + 36, QKV_SHARE_PRODUCT);
    int lo, hi, end = 0;
    for (int t = 0; t < QKV_SHARE_MAX + 36; t++, end = hi) {
        qkv_share_range(&cut, t, &lo, &hi);
        CHECK(lo == end && (hi - lo == 10 || hi - lo == 9),
              "big team: %d: [%d, %d)", t, lo, hi);
    }
    CHECK(end == 1000, "big team: the ranges end at %d", end);
    qkv_share_fix(2, NULL);
}

/* One cut of n units for a team of nt whose thread t works at speed[t]
 * units per second (times slow[t]), then learning from it. */
static void share_round(int nt, int n, const double *speed,
                        const double *slow) {
    qkv_cut cut;
    qkv_share_cut(&cut, n, nt, QKV_SHARE_PRODUCT);
    for (int t = 0; t < nt; t++) {
        int lo, hi;
        qkv_share_range(&cut, t, &lo, &hi);
        qkv_share_took(&cut, t, (hi - lo) / speed[t] * slow[t]);
    }
    qkv_share_learn(&cut);
}

/* The shares settle where the threads take the same time, follow a change
 * of speeds, and move little for one preempted piece; pieces too short to
 * time and rounds with a missing report teach nothing. */
static void test_shares_follow_the_speeds(void) {
    double speed[3] = {1e6, 6e5, 1e6}, one[3] = {1, 1, 1};
    qkv_share_fix(2, NULL);
    qkv_share_forget();
    CHECK(qkv_share_of(QKV_SHARE_PRODUCT, 0, 2) == 0.5,
          "not equal before learning: %g",
          qkv_share_of(QKV_SHARE_PRODUCT, 0, 2));
    for (int i = 0; i < 200; i++) share_round(2, 4000, speed, one);
    double s0 = qkv_share_of(QKV_SHARE_PRODUCT, 0, 2);
    CHECK(fabs(s0 - 1 / 1.6) < 0.002,
          "speeds 1 : 0.6 gave share %.4f, want "
          "%.4f",
          s0, 1 / 1.6);
    /* the other sites learned nothing from it */
    for (int site = 0; site < QKV_SHARE_SITES; site++)
        CHECK(site == QKV_SHARE_PRODUCT || qkv_share_of(site, 0, 2) == 0.5,
              "site %d learned from another's pieces: %.4f", site,
              qkv_share_of(site, 0, 2));
    /* one piece of thread 1 preempted for 10x its time */
    share_round(2, 4000, speed, (double[]){1, 10});
    double s1 = qkv_share_of(QKV_SHARE_PRODUCT, 0, 2);
    CHECK(s1 > s0 && s1 - s0 <= 0.02 + 1e-12,
          "a preempted piece moved the share from %.4f to %.4f", s0, s1);
    for (int i = 0; i < 100; i++) share_round(2, 4000, speed, one);
    CHECK(fabs(qkv_share_of(QKV_SHARE_PRODUCT, 0, 2) - 1 / 1.6) < 0.002,
          "no recovery: %.4f", qkv_share_of(QKV_SHARE_PRODUCT, 0, 2));
    /* the slow thread is fast again */
    speed[1] = 1e6;
    for (int i = 0; i < 200; i++) share_round(2, 4000, speed, one);
    CHECK(fabs(qkv_share_of(QKV_SHARE_PRODUCT, 0, 2) - 0.5) < 0.002,
          "equal speeds: share %.4f", qkv_share_of(QKV_SHARE_PRODUCT, 0, 2));
    /* pieces of 10 us, and a round where thread 1 did not report */
    speed[1] = 2e5;
    double before = qkv_share_of(QKV_SHARE_PRODUCT, 0, 2);
    for (int i = 0; i < 50; i++) share_round(2, 10, speed, one);
    qkv_cut cut;
    qkv_share_cut(&cut, 1000, 2, QKV_SHARE_PRODUCT);
    qkv_share_took(&cut, 0, 1e-3);
    qkv_share_learn(&cut);
    CHECK(qkv_share_of(QKV_SHARE_PRODUCT, 0, 2) == before,
          "learned from nothing: %.4f, was %.4f",
          qkv_share_of(QKV_SHARE_PRODUCT, 0, 2), before);
    /* a team of three, one of them at half speed */
    speed[1] = 5e5;
    for (int i = 0; i < 300; i++) share_round(3, 6000, speed, one);
    CHECK(fabs(qkv_share_of(QKV_SHARE_PRODUCT, 1, 3) - 0.2) < 0.002 &&
              fabs(qkv_share_of(QKV_SHARE_PRODUCT, 0, 3) - 0.4) < 0.002,
          "speeds 1 : 0.5 : 1 gave shares %.4f %.4f %.4f",
          qkv_share_of(QKV_SHARE_PRODUCT, 0, 3),
          qkv_share_of(QKV_SHARE_PRODUCT, 1, 3),
          qkv_share_of(QKV_SHARE_PRODUCT, 2, 3));
    /* the floor: a quarter of an equal share */
    speed[1] = 1e3;
    for (int i = 0; i < 300; i++) share_round(2, 4000, speed, one);
    CHECK(fabs(qkv_share_of(QKV_SHARE_PRODUCT, 1, 2) - 0.125) < 1e-9,
          "floor: share %.4f", qkv_share_of(QKV_SHARE_PRODUCT, 1, 2));
    /* fixed shares stand in for the learned ones, which wait */
    double w1 = qkv_share_of(QKV_SHARE_PRODUCT, 1, 2);
    qkv_share_fix(2, (double[]){1, 1});
    speed[1] = 1e6;
    for (int i = 0; i < 50; i++) share_round(2, 4000, speed, one);
    CHECK(qkv_share_of(QKV_SHARE_PRODUCT, 1, 2) == 0.5, "fixed: %.4f",
          qkv_share_of(QKV_SHARE_PRODUCT, 1, 2));
    qkv_share_fix(2, NULL);
    CHECK(qkv_share_of(QKV_SHARE_PRODUCT, 1, 2) == w1,
          "learned %.4f, then %.4f after fixed ones", w1,
          qkv_share_of(QKV_SHARE_PRODUCT, 1, 2));
    qkv_share_forget();
}

#ifdef _OPENMP
/* Graph resets (step boundaries) every 10 ms until the thread count is
 * `want` or `secs` have passed; returns the count. */
static int steps_until(qkv_graph *g, int want, double secs) {
    double t0 = qkv_seconds();
    while (qkv_get_threads() != want && qkv_seconds() - t0 < secs) {
        qkv_graph_reset(g);
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    return qkv_get_threads();
}
#endif

static void test_auto_mode_on_a_busy_machine(void) {
#ifndef _OPENMP
    SKIP("built without OpenMP");
#else
    int ncpu = qkv_cpu_count();
    if (ncpu < 2 || ncpu > 16) SKIP("%d CPUs (2 to 16 wanted)", ncpu);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_set_threads(0);
    CHECK(qkv_get_threads() == ncpu, "auto starts with %d threads, not %d",
          qkv_get_threads(), ncpu);
    /* all CPUs but one kept busy by other processes */
    pid_t hog[16];
    int nh = 0;
    fflush(stdout);
    for (; nh < ncpu - 1; nh++) {
        hog[nh] = fork();
        if (hog[nh] == 0)
            for (volatile unsigned long x = 0;; x++) {
            }
    }
    int busy = steps_until(&g, 1, 5.0);
    for (int i = 0; i < nh; i++) kill(hog[i], SIGKILL);
    for (int i = 0; i < nh; i++) waitpid(hog[i], NULL, 0);
    CHECK(busy == 1, "with %d of %d CPUs busy: %d threads, want 1", nh, ncpu,
          busy);
    int quiet = steps_until(&g, ncpu, 10.0);
    double others = qkv_threads_others();
    if (quiet != ncpu && others >= 0.15) /* not ours: someone else is busy */
        printf("  not checked: the threads coming back (others still use "
               "%.2f CPUs)\n",
               others);
    else
        CHECK(quiet == ncpu, "once they stopped: %d threads, want %d", quiet,
              ncpu);
    /* a count set through OpenMP itself is left alone */
    omp_set_num_threads(3);
    steps_until(&g, -1, 0.6);
    CHECK(qkv_get_threads() == 3, "OpenMP's count became %d",
          qkv_get_threads());
    /* and so is an explicit one */
    qkv_set_threads(1);
    steps_until(&g, -1, 0.6);
    CHECK(qkv_get_threads() == 1, "the explicit count became %d",
          qkv_get_threads());
    qkv_set_threads(0);
    qkv_graph_free(&g);
#endif
}

int main(void) {
    test_prog = "threads";
    RUN(test_pick_follows_the_load);
    RUN(test_share_ranges_cover_the_units);
    RUN(test_shares_follow_the_speeds);
    RUN(test_auto_mode_on_a_busy_machine);
    return test_summary();
}
