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

#endif
