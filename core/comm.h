/* comm.h - the processes of a data-parallel job, or just this one.
 *
 * Built with `make MPI=1` (mpicc, -DQKV_MPI) this is Open MPI's world:
 * `mpirun -np K prog` starts K processes, ranks 0..K-1, and
 * qkv_comm_sum_floats adds a buffer across all of them (MPI_Allreduce). In
 * the default build the job is this process alone: rank 0 of 1, and the sums
 * return their input. Either way the library calls the same functions, so
 * the trainer's one step (trainer.h) is written once.
 *
 *   qkv_comm_init(&argc, &argv);     // first thing in main
 *   ... qkv_comm_sum_floats(grads, n);   // every rank, the same n
 *   if (qkv_comm_rank() == 0) save(...);
 *   qkv_comm_finalize();
 *
 * Every rank must make the same calls in the same order (collectives); a
 * rank that dies ends the job (mpirun kills the others and says which).
 */
#ifndef QKV_COMM_H
#define QKV_COMM_H

#include <stddef.h>

/* Starts MPI (in an MPI build; a no-op otherwise). Call once, before
 * anything else reads argv. */
void qkv_comm_init(int *argc, char ***argv);
/* Ends MPI if it was started (registered with atexit by qkv_comm_init, so
 * an exit(2) after a bad flag ends cleanly on every rank). */
void qkv_comm_finalize(void);

int qkv_comm_rank(void); /* 0 .. size - 1 */
int qkv_comm_size(void); /* processes in the job; 1 without MPI */

/* Local mode (on != 0): this process acts as a job of one (rank 0 of 1)
 * while on, so the trainer and the command line work alone: a distributed
 * sweep gives whole runs to ranks. The world's rank and size stay readable. */
void qkv_comm_set_local(int on);
int qkv_comm_world_rank(void);
int qkv_comm_world_size(void);
void qkv_comm_world_barrier(void);

/* x[0..n) = the sum over every rank of its x[0..n), in place, the same
 * values on every rank. */
void qkv_comm_sum_floats(float *x, size_t n);
void qkv_comm_sum_doubles(double *x, size_t n);
/* 1 on every rank if flag is nonzero on any. */
int qkv_comm_any(int flag);
void qkv_comm_barrier(void);

#endif
