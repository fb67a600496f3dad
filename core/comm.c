#include "comm.h"

#include <limits.h>
#include <stdlib.h>

#include "common.h"

#ifdef QKV_MPI
#include <mpi.h>

static int started, rank_, size_ = 1, local;

void qkv_comm_init(int *argc, char ***argv) {
    int done = 0;
    MPI_Initialized(&done);
    if (done) return;
    if (MPI_Init(argc, argv) != MPI_SUCCESS)
        QKV_FATAL("MPI_Init failed (is this run by mpirun?)");
    started = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    atexit(qkv_comm_finalize);
}

void qkv_comm_finalize(void) {
    int done = 0;
    if (!started) return;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

int qkv_comm_rank(void) {
    return local ? 0 : rank_;
}
int qkv_comm_size(void) {
    return local ? 1 : size_;
}
int qkv_comm_world_rank(void) {
    return rank_;
}
int qkv_comm_world_size(void) {
    return size_;
}
void qkv_comm_set_local(int on) {
    local = on != 0;
}

/* MPI counts are ints: a buffer of more than INT_MAX goes in pieces. */
static void sum(void *x, size_t n, size_t elem, MPI_Datatype type) {
    if (qkv_comm_size() == 1) return;
    for (size_t at = 0; at < n; at += INT_MAX / 2) {
        size_t k = n - at < INT_MAX / 2 ? n - at : INT_MAX / 2;
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)x + at * elem, (int)k,
                               type, MPI_SUM, MPI_COMM_WORLD);
        QKV_CHECK(rc == MPI_SUCCESS, "MPI_Allreduce failed (%d)", rc);
    }
}

void qkv_comm_sum_floats(float *x, size_t n) {
    sum(x, n, sizeof *x, MPI_FLOAT);
}
void qkv_comm_sum_doubles(double *x, size_t n) {
    sum(x, n, sizeof *x, MPI_DOUBLE);
}

int qkv_comm_any(int flag) {
    if (qkv_comm_size() == 1) return flag != 0;
    int in = flag != 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return out;
}

void qkv_comm_barrier(void) {
    if (qkv_comm_size() > 1) MPI_Barrier(MPI_COMM_WORLD);
}

void qkv_comm_world_barrier(void) {
    if (size_ > 1) MPI_Barrier(MPI_COMM_WORLD);
}

#else /* one process */

void qkv_comm_init(int *argc, char ***argv) {
    (void)argc, (void)argv;
}
void qkv_comm_finalize(void) {}
int qkv_comm_rank(void) {
    return 0;
}
int qkv_comm_size(void) {
    return 1;
}
int qkv_comm_world_rank(void) {
    return 0;
}
int qkv_comm_world_size(void) {
    return 1;
}
void qkv_comm_set_local(int on) {
    (void)on;
}
void qkv_comm_world_barrier(void) {}
void qkv_comm_sum_floats(float *x, size_t n) {
    (void)x, (void)n;
}
void qkv_comm_sum_doubles(double *x, size_t n) {
    (void)x, (void)n;
}
int qkv_comm_any(int flag) {
    return flag != 0;
}
void qkv_comm_barrier(void) {}

#endif
