/* tensor.h - float32 tensors, the activation arena and the parameter store.
 *
 * A qkv_tensor is a view: it points at row-major float data it does not own.
 * Activations get their memory from a qkv_arena that is reset every training
 * step (bump allocation; after the first step the arena holds one block as big
 * as the step needed, so a steady-state step calls no malloc). Parameters live
 * in a qkv_params store: ONE contiguous buffer of values and ONE of gradients
 * (llm.c's layout), each parameter a named view into both, so zeroing the
 * gradients is one memset and an optimiser is one loop over n floats.
 *
 *   qkv_params ps;
 *   qkv_params_init(&ps);
 *   qkv_tensor *w = qkv_params_add(&ps, "dec.w_q", 2, (int[]){64, 64});
 *   qkv_params_alloc(&ps);            // w->data, w->grad now valid
 *   ...  qkv_params_zero_grad(&ps);  ...  qkv_params_free(&ps);
 */
#ifndef QKV_TENSOR_H
#define QKV_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define QKV_MAX_DIMS 4

typedef struct qkv_tensor {
    float *data; /* n values, row-major */
    float *grad; /* n gradients; NULL until backward reaches it */
    size_t n;    /* product of shape[0..ndim) (1 for a scalar) */
    int ndim;    /* 0 (scalar) .. QKV_MAX_DIMS */
    int shape[QKV_MAX_DIMS];
    int requires_grad; /* parameters, and outputs of ops on them */
    const char *name;  /* parameters: stable dotted name; others NULL */
    /* parameters: what their store derives from the values (shared by
     * copies of the store); others NULL */
    struct qkv_params_cache *owner;
} qkv_tensor;

/* Element count of a shape; exits with a message naming `what` on overflow
 * or a negative dimension. */
size_t qkv_shape_numel(int ndim, const int *shape, const char *what);
/* Writes "(2,3,4)" into buf (at least 64 bytes) and returns buf: a shape
 * of ndim dimensions, or a tensor's. */
const char *qkv_dims_str(int ndim, const int *shape, char *buf);
const char *qkv_shape_str(const qkv_tensor *t, char *buf);
/* Last dimension, and the number of rows (n / last dim). */
int qkv_tensor_cols(const qkv_tensor *t);
size_t qkv_tensor_rows(const qkv_tensor *t);
/* 1 if a and b have the same ndim and shape. */
int qkv_same_shape(const qkv_tensor *a, const qkv_tensor *b);

/* ---- arena: bump allocator for one step's activations ---- */

typedef struct qkv_arena_chunk qkv_arena_chunk;

typedef struct qkv_arena {
    char *base;             /* main block, 64-byte aligned */
    size_t cap, used;       /* bytes in base, bytes handed out from base */
    qkv_arena_chunk *extra; /* overflow blocks allocated since the last reset */
    size_t total;           /* bytes handed out since the last reset */
    size_t peak;            /* largest `total` seen: the size a step needs */
    size_t n_mallocs;       /* malloc calls made so far (tests watch this) */
} qkv_arena;

/* Starts with a main block of `bytes` (0: grow on first use). */
void qkv_arena_init(qkv_arena *a, size_t bytes);
/* 64-byte aligned, uninitialised; grows by a new block when full. */
void *qkv_arena_alloc(qkv_arena *a, size_t bytes);
/* Forgets everything allocated; if the step overflowed the main block, the
 * main block is replaced by one of max(peak, 2 * cap) bytes, so the next
 * step fits. */
void qkv_arena_reset(qkv_arena *a);
void qkv_arena_free(qkv_arena *a);

/* ---- parameter store ---- */

struct qkv_bf16_packed;
typedef struct qkv_params_cache qkv_params_cache;

typedef struct qkv_params {
    qkv_tensor **list; /* count views, in registration order */
    int count, cap;
    size_t n;      /* total floats */
    float *values; /* (n) all parameters, contiguous */
    float *grads;  /* (n) all gradients, same layout */
    /* What is derived from the values (the bf16 packed weights of
     * qkv_params_packed) and their version, which changes whenever the
     * values may have: the optimisers, the loaders and qkv_params_touch.
     * On the heap, so a copy of the store (a trainer takes its model by
     * value) still reaches it. */
    struct qkv_params_cache *cache;
} qkv_params;

void qkv_params_init(qkv_params *ps);
/* Registers a parameter; its data/grad pointers are set by qkv_params_alloc.
 * The returned tensor is owned by the store and valid until qkv_params_free.
 * Names must be unique. */
qkv_tensor *qkv_params_add(qkv_params *ps, const char *name, int ndim,
                           const int *shape);
/* Allocates the two flat buffers (values zeroed) and points every view into
 * them. */
void qkv_params_alloc(qkv_params *ps);
/* Parameter by name, or NULL. */
qkv_tensor *qkv_params_find(const qkv_params *ps, const char *name);
/* grads = 0: one memset. */
void qkv_params_zero_grad(qkv_params *ps);
/* 1 if every value is finite: no NaN, no infinity (a trainer checks before
 * it saves: a diverged model must never replace a good checkpoint). */
int qkv_params_finite(const qkv_params *ps);
void qkv_params_free(qkv_params *ps);
/* Says the values changed: call it after writing parameter values yourself
 * (the library's optimisers and loaders call it). */
void qkv_params_touch(qkv_params *ps);
/* A weight of a store as a bf16 product's op(B) (core/bf16.h: tb, K, N,
 * ldb as qkv_gemm_bf16's, B = data, which must lie in the store's values;
 * c: a parameter tensor's owner), packed once per version of the values:
 * weights are converted once per optimiser step, not once per product.
 * Valid until the next call for the store or qkv_params_free; like a
 * graph, a store is used by one caller at a time (not thread-safe). */
const struct qkv_bf16_packed *qkv_params_packed(struct qkv_params_cache *c,
                                                const float *data, int tb,
                                                int K, int N, int ldb);

#endif
