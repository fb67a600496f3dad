/* threads.h - how many OpenMP threads the kernels use, and how that number
 * follows a busy machine.
 *
 * Threads that meet at a barrier run at the pace of the slowest: when another
 * process holds one of the cores, one of ours waits for a time slice while
 * the others spin at the barrier (libgomp spins ~3 ms before sleeping), and a
 * step on 2 cores takes 2-3x (up to 70x on some CPUs) as long as on 1 thread.
 * So by default (auto) the count follows the load: at most every 0.25 s, at a
 * step boundary (qkv_graph_reset calls qkv_threads_tick), qkv reads from
 * /proc/stat how much of the CPUs this process may run on the other processes
 * used over the last window, and uses the CPUs they leave free (at least 1).
 * Results do not depend on the thread count, so a run is the same whatever
 * the load did (kernels split only independent rows).
 *
 * An explicit count (qkv_set_threads(n), n > 0; `--threads N`) is kept as
 * is, and so is one set through OpenMP directly (omp_set_num_threads): auto
 * mode steps aside as soon as the count is not the one it set.
 *
 *   qkv_set_threads(0);   // auto (the default): all CPUs while they are free
 *   qkv_set_threads(1);   // exactly one, whatever the load
 */
#ifndef QKV_THREADS_H
#define QKV_THREADS_H

/* n > 0: exactly n threads from now on. n == 0: auto, starting from all the
 * CPUs this process may run on (or OMP_NUM_THREADS). No-op without OpenMP. */
void qkv_set_threads(int n);
/* Threads the next parallel kernel will use. */
int qkv_get_threads(void);
/* CPUs this process may run on (sched_getaffinity; at least 1). */
int qkv_cpu_count(void);

/* In auto mode, once a window (0.25 s) has passed since the last look:
 * measures the other processes' use of our CPUs over it and sets the thread
 * count (qkv_threads_pick). Cheap otherwise (one clock read). Called at step
 * boundaries; must not be called inside a parallel region. */
void qkv_threads_tick(void);

/* CPU-seconds per second the other processes used on our CPUs over auto
 * mode's last window (its input to qkv_threads_pick), or -1 before one has
 * been measured. For diagnostics and tests. */
double qkv_threads_others(void);

/* The count auto mode moves to from cur, given max (the most it may use),
 * ncpu (CPUs it may run on) and others (CPU-seconds per second the other
 * processes used on them over the last window, steal time included):
 *   down at once to ncpu - ceil(others - 0.5) when that is below cur (a
 *     competitor of half a core or more leaves a thread waiting at every
 *     barrier);
 *   up by one when at least 0.85 of a CPU beyond cur is idle;
 *   always within [1, max]. */
int qkv_threads_pick(int cur, int max, int ncpu, double others);

/* ------------------------------------------------------------------ shares
 *
 * The vCPUs of a shared host do not run at the same speed: on this
 * project's AMD EPYC (Zen 5) machine the second vCPU ran an AVX-512 FMA
 * loop 1.47x as slow as the first for tens of minutes (its core's other
 * hyperthread busy with another guest, as nothing in ours ran), then
 * 1.02x. A product cut into equal halves runs at the slow thread's pace
 * while the other spins at the barrier. So the kernels that cut their work
 * into one piece per thread (the products, the attention heads) cut it in
 * proportion to the threads' speeds, measured in the pieces before: each
 * thread reports when its piece was done, and after the region the shares
 * move toward the threads' units per second since the cut (relative to
 * the team's) by an eighth of the gap, at most 0.02 at a time (a preempted
 * piece), never below a quarter of an equal share. They settle where the
 * threads finish together, whatever made one late: a slower vCPU, a later
 * start, a piece's ragged edge. A piece is independent rows, so
 * results do not depend on the shares, as they do not on the thread count.
 *
 *   qkv_cut cut;                         // before the region:
 *   qkv_share_cut(&cut, n, nt, site);    // n units for nt threads
 *   ...                                  // in thread t of the team:
 *   int lo, hi;
 *   qkv_share_range(&cut, t, &lo, &hi);  // its units [lo, hi)
 *   work(lo, hi);
 *   qkv_share_done(&cut, t);
 *   ...                                  // after the region:
 *   qkv_share_learn(&cut);
 *
 * Shares belong to the thread that cuts and learns (the one that starts
 * the teams): callers on different threads keep their own. Thread t's
 * share is the team thread's, not a CPU's: Linux keeps a busy team's
 * threads where they are, and if it moves them the shares follow within a
 * few dozen products (a step of base has ~90). */
#define QKV_SHARE_MAX 64 /* larger teams cut equal pieces */

/* Each kind of region learns its own shares (a thread can be late in one
 * and not in another: with equal pieces base's bf16 products ran 2% longer
 * on the second thread, its attention heads 3% shorter). */
enum {
    QKV_SHARE_PRODUCT,      /* core/matmul.c, fp32 */
    QKV_SHARE_PRODUCT_BF16, /* core/bf16.c */
    QKV_SHARE_ATTENTION,    /* core/attention.c, forward */
    QKV_SHARE_ATTENTION_BACK,
    QKV_SHARE_SITES
};

typedef struct {
    int n, nt;                 /* n units for a team of nt */
    int site;                  /* whose shares (QKV_SHARE_PRODUCT, ...) */
    double t0;                 /* when it was cut (qkv_seconds) */
    int at[QKV_SHARE_MAX + 1]; /* thread t's units: [at[t], at[t + 1]) */
    struct {
        _Alignas(64) double seconds; /* its piece's time; < 0: none */
    } took[QKV_SHARE_MAX];
} qkv_cut;

/* Cuts n units into nt consecutive ranges in order, by the calling
 * thread's shares at `site` for a team of nt (equal +-1 until learned). */
void qkv_share_cut(qkv_cut *cut, int n, int nt, int site);
/* Thread t's units [lo, hi) (empty for t outside the team). */
void qkv_share_range(const qkv_cut *cut, int t, int *lo, int *hi);
/* Thread t's piece is done: its time is from the cut to now (the wait for
 * the team to start included: what the shares even out is when the
 * threads finish). Safe in a region (a slot each). */
void qkv_share_done(qkv_cut *cut, int t);
/* Thread t's piece took `seconds` from the cut (qkv_share_done's
 * measure; tests give their own). */
void qkv_share_took(qkv_cut *cut, int t, double seconds);
/* After the region: the calling thread's shares for the team learn from
 * its speeds (not from a cut with a piece unreported, empty or under
 * 20 us). */
void qkv_share_learn(const qkv_cut *cut);
/* Fixed shares of the calling thread for teams of nt at every site (w[t]
 * > 0, scaled to sum 1), in place of the learned ones, which do not learn
 * meanwhile, until the next call; w = NULL: the learned ones again. For
 * tests and the bench. */
void qkv_share_fix(int nt, const double *w);
/* The calling thread's learned shares back to equal. */
void qkv_share_forget(void);
/* Thread t's share of a team of nt at `site` as the next cut would use it
 * (1 / nt until learned). */
double qkv_share_of(int site, int t, int nt);
/* In a parallel region, the calling thread's number and the team's size;
 * 0 and 1 outside one or without OpenMP. */
int qkv_team_thread(void);
int qkv_team_size(void);

#endif
