#include "tensor.h"

#include <math.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

struct qkv_params_cache {
    const float *values; /* the store's, and how many */
    size_t n;
    uint64_t version;
    qkv_bf16_packed *packed; /* n_packed of cap_packed */
    int n_packed, cap_packed;
};

size_t qkv_shape_numel(int ndim, const int *shape, const char *what) {
    QKV_CHECK(ndim >= 0 && ndim <= QKV_MAX_DIMS,
              "%s: %d dimensions (at most %d)", what, ndim, QKV_MAX_DIMS);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        QKV_CHECK(shape[i] >= 0, "%s: dimension %d is negative (%d)", what, i,
                  shape[i]);
        QKV_CHECK(qkv_mul_size(n, (size_t)shape[i], &n) &&
                      qkv_mul_size(n, sizeof(float), &(size_t){0}),
                  "%s: shape overflows size_t", what);
    }
    return n;
}

const char *qkv_dims_str(int ndim, const int *shape, char *buf) {
    int k = 0;
    buf[k++] = '(';
    for (int i = 0; i < ndim; i++)
        k += snprintf(buf + k, 64 - (size_t)k, i ? ",%d" : "%d", shape[i]);
    snprintf(buf + k, 64 - (size_t)k, ")");
    return buf;
}

const char *qkv_shape_str(const qkv_tensor *t, char *buf) {
    return qkv_dims_str(t->ndim, t->shape, buf);
}

int qkv_tensor_cols(const qkv_tensor *t) {
    return t->ndim ? t->shape[t->ndim - 1] : 1;
}

size_t qkv_tensor_rows(const qkv_tensor *t) {
    int c = qkv_tensor_cols(t);
    return c ? t->n / (size_t)c : 0;
}

int qkv_same_shape(const qkv_tensor *a, const qkv_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* ---- arena ---- */

struct qkv_arena_chunk {
    qkv_arena_chunk *next;
    /* data follows, 64-byte aligned: the header is padded to 64 bytes */
};
#define CHUNK_HEADER 64

void qkv_arena_init(qkv_arena *a, size_t bytes) {
    memset(a, 0, sizeof *a);
    if (bytes) {
        a->base = qkv_malloc_aligned(bytes, "graph arena");
        a->cap = bytes;
        a->n_mallocs = 1;
    }
}

void *qkv_arena_alloc(qkv_arena *a, size_t bytes) {
    size_t need;
    QKV_CHECK(qkv_add_size(bytes, 63, &need), "arena: %zu bytes overflows",
              bytes);
    need &= ~(size_t)63;
    if (need == 0) need = 64;
    QKV_CHECK(qkv_add_size(a->total, need, &a->total),
              "arena: total size overflows");
    if (a->total > a->peak) a->peak = a->total;
    if (a->cap - a->used >= need) {
        void *p = a->base + a->used;
        a->used += need;
        return p;
    }
    /* Out of room: a block of its own; reset() will merge the sizes. */
    size_t sz;
    QKV_CHECK(qkv_add_size(need, CHUNK_HEADER, &sz), "arena: overflow");
    qkv_arena_chunk *c = qkv_malloc_aligned(sz, "graph arena block");
    a->n_mallocs++;
    c->next = a->extra;
    a->extra = c;
    return (char *)c + CHUNK_HEADER;
}

void qkv_arena_reset(qkv_arena *a) {
    if (a->extra) {
        while (a->extra) {
            qkv_arena_chunk *next = a->extra->next;
            free(a->extra);
            a->extra = next;
        }
        /* at least double: a run whose steps keep growing (a decode, one
         * token longer each step) reallocates log(n) times, not n times;
         * pages never touched cost no memory */
        size_t cap = a->cap <= a->peak / 2 ? a->peak : 2 * a->cap;
        free(a->base);
        a->base = qkv_malloc_aligned(cap, "graph arena");
        a->cap = cap;
        a->n_mallocs++;
    }
    a->used = 0;
    a->total = 0;
}

void qkv_arena_free(qkv_arena *a) {
    while (a->extra) {
        qkv_arena_chunk *next = a->extra->next;
        free(a->extra);
        a->extra = next;
    }
    free(a->base);
    memset(a, 0, sizeof *a);
}

/* ---- parameter store ---- */

void qkv_params_init(qkv_params *ps) {
    memset(ps, 0, sizeof *ps);
}

qkv_tensor *qkv_params_add(qkv_params *ps, const char *name, int ndim,
                           const int *shape) {
    QKV_CHECK(!ps->values, "params_add(%s): store already allocated", name);
    QKV_CHECK(name && *name, "params_add: a parameter needs a name");
    QKV_CHECK(!qkv_params_find(ps, name), "params_add: duplicate name %s",
              name);
    size_t n = qkv_shape_numel(ndim, shape, name);
    QKV_CHECK(qkv_add_size(ps->n, n, &ps->n), "params_add(%s): overflow", name);
    if (ps->count == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 16;
        ps->list = qkv_realloc(ps->list, (size_t)ps->cap * sizeof *ps->list,
                               "parameter list");
    }
    if (!ps->cache) ps->cache = qkv_calloc(1, sizeof *ps->cache, "parameters");
    qkv_tensor *t = qkv_calloc(1, sizeof *t, "parameter");
    size_t len = strlen(name) + 1;
    char *copy = qkv_malloc(len, "parameter name");
    memcpy(copy, name, len);
    t->name = copy;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->n = n;
    t->requires_grad = 1;
    t->owner = ps->cache;
    ps->list[ps->count++] = t;
    return t;
}

void qkv_params_alloc(qkv_params *ps) {
    QKV_CHECK(!ps->values, "params_alloc: already allocated");
    size_t bytes;
    QKV_CHECK(qkv_mul_size(ps->n, sizeof(float), &bytes),
              "params_alloc: %zu floats overflow", ps->n);
    ps->values = qkv_malloc_aligned(bytes, "parameters");
    ps->grads = qkv_malloc_aligned(bytes, "parameter gradients");
    memset(ps->values, 0, bytes);
    memset(ps->grads, 0, bytes);
    size_t off = 0;
    for (int i = 0; i < ps->count; i++) {
        ps->list[i]->data = ps->values + off;
        ps->list[i]->grad = ps->grads + off;
        off += ps->list[i]->n;
    }
    if (!ps->cache) ps->cache = qkv_calloc(1, sizeof *ps->cache, "parameters");
    ps->cache->values = ps->values;
    ps->cache->n = ps->n;
    qkv_params_touch(ps);
}

void qkv_params_touch(qkv_params *ps) {
    if (ps->cache) ps->cache->version++;
}

const qkv_bf16_packed *qkv_params_packed(qkv_params_cache *ps,
                                         const float *data, int tb, int K,
                                         int N, int ldb) {
    tb = tb != 0;
    QKV_CHECK(ps && ps->values && data >= ps->values &&
                  data < ps->values + ps->n,
              "qkv_params_packed: the weight is not one of these parameters");
    qkv_bf16_packed *p = NULL;
    for (int i = 0; i < ps->n_packed && !p; i++) {
        qkv_bf16_packed *q = &ps->packed[i];
        if (q->src == data && q->tb == tb && q->K == K && q->N == N &&
            q->ldb == ldb)
            p = q;
    }
    if (!p) {
        if (ps->n_packed == ps->cap_packed) {
            ps->cap_packed = ps->cap_packed ? 2 * ps->cap_packed : 16;
            ps->packed =
                qkv_realloc(ps->packed, (size_t)ps->cap_packed * sizeof *p,
                            "bf16 packed weights");
        }
        p = &ps->packed[ps->n_packed++];
        memset(p, 0, sizeof *p);
    } else if (p->version == ps->version) {
        return p;
    }
    qkv_bf16_pack(p, tb, K, N, data, ldb);
    p->version = ps->version;
    return p;
}

qkv_tensor *qkv_params_find(const qkv_params *ps, const char *name) {
    for (int i = 0; i < ps->count; i++)
        if (strcmp(ps->list[i]->name, name) == 0) return ps->list[i];
    return NULL;
}

/* In pieces shared by the threads: one thread alone took 1.8 ms of base's
 * bf16 step (32 MB) while the others waited. */
void qkv_params_zero_grad(qkv_params *ps) {
    if (!ps->grads) return;
    enum { PIECES = 64 };
    const size_t n = ps->n, len = (n + PIECES - 1) / PIECES;
    QKV_OMP(omp parallel for if (n > (1 << 20)))
    for (int k = 0; k < PIECES; k++) {
        size_t lo = (size_t)k * len, hi = lo + len < n ? lo + len : n;
        if (lo < hi) memset(ps->grads + lo, 0, (hi - lo) * sizeof(float));
    }
}

int qkv_params_finite(const qkv_params *ps) {
    int ok = 1; /* no early exit: the loop vectorises */
    for (size_t i = 0; i < ps->n; i++) ok &= isfinite(ps->values[i]);
    return ok;
}

void qkv_params_free(qkv_params *ps) {
    for (int i = 0; i < ps->count; i++) {
        free((char *)ps->list[i]->name);
        free(ps->list[i]);
    }
    free(ps->list);
    if (ps->cache) {
        qkv_params_cache *c = ps->cache;
        for (int i = 0; i < c->n_packed; i++)
            qkv_bf16_packed_free(&c->packed[i]);
        free(c->packed);
        free(c);
    }
    free(ps->values);
    free(ps->grads);
    memset(ps, 0, sizeof *ps);
}
