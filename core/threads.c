/* threads.c - the OpenMP thread count, fixed or following the load. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_ISSET */
#include "threads.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"

int qkv_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int qkv_threads_pick(int cur, int max, int ncpu, double others) {
    int n = cur;
    if (others >= 0.5) {
        int left = ncpu - (int)ceil(others - 0.5);
        if (left < n) n = left;
    } else if ((double)(ncpu - cur) - others >= 0.85) {
        n = cur + 1;
    }
    if (n > max) n = max;
    return n < 1 ? 1 : n;
}

#ifdef _OPENMP

#define WINDOW 0.25 /* seconds between looks at the load */

static struct {
    int fixed;           /* a count was set explicitly: never adapt */
    int started;         /* auto mode has taken its first sample */
    int max;             /* auto: the most threads it may use */
    int cur;             /* auto: the count it set last */
    double t0;           /* auto: start of the window (qkv_seconds) */
    double busy0, self0; /* auto: CPU-seconds at the start of the window */
    double others;       /* auto: the last window's load of the others */
} thr = {.others = -1};

double qkv_threads_others(void) {
    return thr.others;
}

void qkv_set_threads(int n) {
    QKV_CHECK(n >= 0, "set_threads: %d threads", n);
    thr.fixed = n > 0;
    thr.started = 0;
    if (n > 0)
        omp_set_num_threads(n);
    else if (!getenv("OMP_NUM_THREADS"))
        omp_set_num_threads(qkv_cpu_count());
}

int qkv_get_threads(void) {
    return omp_get_max_threads();
}

/* CPU-seconds the CPUs this process may run on have been busy since boot
 * (user, nice, system, irq, softirq and steal time from /proc/stat), or -1
 * if that cannot be read (not Linux, no /proc). Reads with read(2) into a
 * static buffer: no heap allocation, so a warm training step still makes
 * none. */
static double busy_seconds(void) {
    static char buf[1 << 16];
    static long hz;
    cpu_set_t set;
    if (!hz) hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0 || sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = 0;
    for (ssize_t k; len < sizeof buf - 1; len += (size_t)k) {
        k = read(fd, buf + len, sizeof buf - 1 - len);
        if (k < 0 && errno == EINTR)
            k = 0;
        else if (k <= 0)
            break;
    }
    close(fd);
    buf[len] = 0;
    double ticks = 0;
    int seen = 0;
    /* "cpu  ..." (the total), then "cpuN user nice system idle iowait irq
     * softirq steal ..." per CPU; the other lines come after them */
    for (char *line = buf; strncmp(line, "cpu", 3) == 0;) {
        char *end = strchr(line, '\n');
        if (!end) break; /* cut by the buffer */
        *end = 0;
        unsigned cpu;
        unsigned long long v[8];
        if (sscanf(line + 3, "%u %llu %llu %llu %llu %llu %llu %llu %llu", &cpu,
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                   &v[7]) == 9 &&
            cpu < CPU_SETSIZE && CPU_ISSET(cpu, &set)) {
            ticks += (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
            seen++;
        }
        line = end + 1;
    }
    return seen ? ticks / (double)hz : -1;
}

/* CPU-seconds this process has used (every thread, user and system). */
static double self_seconds(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

void qkv_threads_tick(void) {
    if (thr.fixed) return;
    double now = qkv_seconds();
    if (thr.started && now - thr.t0 < WINDOW) return;
    if (thr.started && omp_get_max_threads() != thr.cur) {
        thr.fixed = 1; /* someone set a count through OpenMP: theirs wins */
        return;
    }
    double busy = busy_seconds(), self = self_seconds();
    if (busy < 0) {
        thr.fixed = 1; /* no /proc/stat: keep OpenMP's count */
        return;
    }
    if (!thr.started) {
        thr.started = 1;
        thr.max = thr.cur = omp_get_max_threads();
    } else {
        double others =
            (busy - thr.busy0 - (self - thr.self0)) / (now - thr.t0);
        thr.others = others;
        int n = qkv_threads_pick(thr.cur, thr.max, qkv_cpu_count(), others);
        if (n != thr.cur) omp_set_num_threads(n);
        thr.cur = n;
    }
    thr.t0 = now, thr.busy0 = busy, thr.self0 = self;
}

#else /* no OpenMP: one thread, always */

void qkv_set_threads(int n) {
    QKV_CHECK(n >= 0, "set_threads: %d threads", n);
}

int qkv_get_threads(void) {
    return 1;
}

void qkv_threads_tick(void) {}

#endif

/* ------------------------------------------------------------------ shares */

#define SHARE_STEP  0.125 /* how far a share moves toward a measurement */
#define SHARE_MOVE  0.02  /* and at most this much (a preempted piece) */
#define SHARE_FLOOR 0.25  /* the least share, of an equal one */
#define SHARE_MIN_S 2e-5  /* shorter pieces are not measured */

/* the calling thread's shares, one set per site */
typedef struct {
    int nt;                  /* the team size w is for (0: none) */
    double w[QKV_SHARE_MAX]; /* thread t's share; they sum to 1 */
} shares;
static _Thread_local shares share_at[QKV_SHARE_SITES];
static _Thread_local shares share_fixed; /* qkv_share_fix's (nt 0: none) */

static void share_equal(shares *sh, int nt) {
    sh->nt = nt;
    for (int t = 0; t < nt; t++) sh->w[t] = 1.0 / nt;
}

static shares *site_shares(int site) {
    QKV_CHECK(site >= 0 && site < QKV_SHARE_SITES, "shares: site %d", site);
    return &share_at[site];
}

void qkv_share_cut(qkv_cut *cut, int n, int nt, int site) {
    const shares *share = share_fixed.nt ? &share_fixed : site_shares(site);
    cut->site = site;
    cut->n = n > 0 ? n : 0, cut->nt = nt > 0 ? nt : 1;
    cut->t0 = qkv_seconds();
    if (cut->nt > QKV_SHARE_MAX) return; /* qkv_share_range: equal */
    double c = 0;
    cut->at[0] = 0;
    for (int t = 0; t < cut->nt; t++) {
        if (share->nt == cut->nt) { /* learned, or fixed */
            c += share->w[t];
            int e = (int)lround(cut->n * c);
            e = e > cut->n ? cut->n : e;
            cut->at[t + 1] = e < cut->at[t] ? cut->at[t] : e;
        } else
            cut->at[t + 1] = (int)((long long)cut->n * (t + 1) / cut->nt);
        cut->took[t].seconds = -1;
    }
    cut->at[cut->nt] = cut->n;
}

void qkv_share_range(const qkv_cut *cut, int t, int *lo, int *hi) {
    if (t < 0 || t >= cut->nt)
        *lo = *hi = 0;
    else if (cut->nt > QKV_SHARE_MAX)
        *lo = (int)((long long)cut->n * t / cut->nt),
        *hi = (int)((long long)cut->n * (t + 1) / cut->nt);
    else
        *lo = cut->at[t], *hi = cut->at[t + 1];
}

void qkv_share_done(qkv_cut *cut, int t) {
    qkv_share_took(cut, t, qkv_seconds() - cut->t0);
}

void qkv_share_took(qkv_cut *cut, int t, double seconds) {
    if (t >= 0 && t < cut->nt && cut->nt <= QKV_SHARE_MAX)
        cut->took[t].seconds = seconds;
}

void qkv_share_learn(const qkv_cut *cut) {
    int nt = cut->nt;
    shares *share = site_shares(cut->site);
    if (nt < 2 || nt > QKV_SHARE_MAX || share_fixed.nt) return;
    double v[QKV_SHARE_MAX], sum = 0;
    for (int t = 0; t < nt; t++) {
        int units = cut->at[t + 1] - cut->at[t];
        if (units <= 0 || !(cut->took[t].seconds >= SHARE_MIN_S)) return;
        v[t] = units / cut->took[t].seconds;
        sum += v[t];
    }
    if (share->nt != nt) share_equal(share, nt);
    double total = 0, floor = SHARE_FLOOR / nt, low = 0, rest = 0;
    for (int t = 0; t < nt; t++) {
        double d = SHARE_STEP * (v[t] / sum - share->w[t]);
        d = d > SHARE_MOVE ? SHARE_MOVE : d < -SHARE_MOVE ? -SHARE_MOVE : d;
        share->w[t] += d;
        total += share->w[t];
    }
    /* sum 1 again (the moves were clipped), none below the floor */
    for (int t = 0; t < nt; t++) {
        share->w[t] /= total;
        if (share->w[t] < floor)
            low += floor;
        else
            rest += share->w[t];
    }
    for (int t = 0; t < nt; t++)
        share->w[t] =
            share->w[t] < floor ? floor : share->w[t] * (1 - low) / rest;
}

void qkv_share_fix(int nt, const double *w) {
    share_fixed.nt = 0;
    if (!w) return;
    QKV_CHECK(nt >= 1 && nt <= QKV_SHARE_MAX, "share_fix: %d threads", nt);
    double total = 0;
    for (int t = 0; t < nt; t++) {
        QKV_CHECK(w[t] > 0 && isfinite(w[t]), "share_fix: share %d is %g", t,
                  w[t]);
        total += w[t];
    }
    for (int t = 0; t < nt; t++) share_fixed.w[t] = w[t] / total;
    share_fixed.nt = nt;
}

void qkv_share_forget(void) {
    for (int site = 0; site < QKV_SHARE_SITES; site++) share_at[site].nt = 0;
}

double qkv_share_of(int site, int t, int nt) {
    const shares *share = share_fixed.nt ? &share_fixed : site_shares(site);
    if (t < 0 || t >= nt) return 0;
    return share->nt == nt ? share->w[t] : 1.0 / nt;
}

int qkv_team_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int qkv_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
