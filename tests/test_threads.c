/* The thread count: auto mode's rule on given loads, and the real thing on
 * this machine (processes that keep all but one CPU busy, then stop). */
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
    RUN(test_auto_mode_on_a_busy_machine);
    return test_summary();
}
