#include "tape.h"

#include <stdlib.h>
#include <string.h>

#include "op_table.h"
#include "threads.h"

void qkv_graph_init(qkv_graph *g, size_t arena_bytes) {
    memset(g, 0, sizeof *g);
    qkv_arena_init(&g->arena, arena_bytes);
    g->recording = 1;
    g->training = 1;
}

void qkv_graph_reset(qkv_graph *g) {
    qkv_arena_reset(&g->arena);
    g->n_nodes = 0;
    g->free_grads = NULL;
    if (g->profile) g->profile->mark = qkv_seconds();
    qkv_threads_tick(); /* a step boundary: follow the machine's load */
}

void qkv_graph_free(qkv_graph *g) {
    qkv_arena_free(&g->arena);
    free(g->nodes);
    memset(g, 0, sizeof *g);
}

int qkv_graph_set_grad(qkv_graph *g, int on) {
    int was = g->recording;
    g->recording = on;
    return was;
}

qkv_tensor *qkv_tensor_wrap(qkv_graph *g, float *data, int ndim,
                            const int *shape) {
    size_t n = qkv_shape_numel(ndim, shape, "tensor");
    qkv_tensor *t = qkv_arena_alloc(&g->arena, sizeof *t);
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->n = n;
    t->data = data;
    return t;
}

qkv_tensor *qkv_tensor_new(qkv_graph *g, int ndim, const int *shape) {
    qkv_tensor *t = qkv_tensor_wrap(g, NULL, ndim, shape);
    t->data = qkv_arena_alloc(&g->arena, t->n * sizeof(float));
    return t;
}

qkv_tensor *qkv_tensor_zeros(qkv_graph *g, int ndim, const int *shape) {
    qkv_tensor *t = qkv_tensor_new(g, ndim, shape);
    memset(t->data, 0, t->n * sizeof(float));
    return t;
}

void *qkv_graph_copy(qkv_graph *g, const void *src, size_t bytes) {
    void *p = qkv_arena_alloc(&g->arena, bytes);
    if (bytes) memcpy(p, src, bytes);
    return p;
}

/* A released gradient buffer; the link lives in the buffer itself (arena
 * blocks are >= 64 bytes). */
typedef struct free_block {
    struct free_block *next;
    size_t bytes;
} free_block;

/* A gradient buffer of n floats: a released one of exactly that size, or new
 * from the arena. Exact sizes: the layers of a model repeat their shapes. */
static float *grad_alloc(qkv_graph *g, size_t n) {
    size_t bytes = n * sizeof(float);
    for (free_block **p = (free_block **)&g->free_grads; *p; p = &(*p)->next)
        if ((*p)->bytes == bytes) {
            free_block *b = *p;
            *p = b->next;
            return (float *)b;
        }
    return qkv_arena_alloc(&g->arena, bytes);
}

static void grad_release(qkv_graph *g, qkv_tensor *t) {
    if (t->grad && t->n * sizeof(float) >= sizeof(free_block)) {
        free_block *b = (free_block *)t->grad;
        b->bytes = t->n * sizeof(float);
        b->next = g->free_grads;
        g->free_grads = b;
    }
    t->grad = NULL;
}

float *qkv_grad(qkv_graph *g, qkv_tensor *t) {
    if (!t->grad) {
        t->grad = grad_alloc(g, t->n);
        memset(t->grad, 0, t->n * sizeof(float));
    }
    return t->grad;
}

float *qkv_grad_write(qkv_graph *g, qkv_tensor *t, int *acc) {
    *acc = t->grad != NULL;
    if (!t->grad) t->grad = grad_alloc(g, t->n);
    return t->grad;
}

float *qkv_grad_write_over(qkv_graph *g, qkv_node *nd, qkv_tensor *t,
                           int *acc) {
    qkv_tensor *out = nd->out;
    if (t->grad || t == out || t->n != out->n || !out->grad)
        return qkv_grad_write(g, t, acc);
    t->grad = out->grad;
    out->grad = NULL; /* qkv_backward's release then skips it */
    *acc = 0;
    return t->grad;
}

qkv_node *qkv_record(qkv_graph *g, qkv_op op, qkv_tensor *out, qkv_tensor *a,
                     qkv_tensor *b, qkv_tensor *c) {
    return qkv_record4(g, op, out, a, b, c, NULL);
}

qkv_node *qkv_record4(qkv_graph *g, qkv_op op, qkv_tensor *out, qkv_tensor *a,
                      qkv_tensor *b, qkv_tensor *c, qkv_tensor *d) {
    if (!g->recording) return NULL;
    if (g->profile) {
        double t = qkv_seconds();
        g->profile->fwd[op] += t - g->profile->mark;
        g->profile->n_fwd[op]++;
        g->profile->mark = t;
    }
    if (!((a && a->requires_grad) || (b && b->requires_grad) ||
          (c && c->requires_grad) || (d && d->requires_grad)))
        return NULL;
    if (g->n_nodes == g->cap_nodes) {
        g->cap_nodes = g->cap_nodes ? 2 * g->cap_nodes : 256;
        g->nodes = qkv_realloc(g->nodes,
                               (size_t)g->cap_nodes * sizeof *g->nodes, "tape");
        g->n_reallocs++;
    }
    qkv_node *nd = &g->nodes[g->n_nodes++];
    memset(nd, 0, sizeof *nd);
    nd->op = op;
    nd->out = out;
    nd->in[0] = a;
    nd->in[1] = b;
    nd->in[2] = c;
    nd->in[3] = d;
    out->requires_grad = 1;
    return nd;
}

void qkv_backward(qkv_graph *g, qkv_tensor *loss) {
    char sh[64];
    QKV_CHECK(loss->n == 1, "backward: loss must be a scalar, got shape %s",
              qkv_shape_str(loss, sh));
    QKV_CHECK(loss->requires_grad,
              "backward: loss does not depend on anything that requires grad "
              "(was it computed with recording off?)");
    qkv_grad(g, loss)[0] += 1.0f;
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        qkv_node *nd = &g->nodes[i];
        if (!nd->out->grad) continue; /* nothing flows back through this node */
        if (!g->profile) {
            qkv_op_table[nd->op].backward(g, nd);
        } else {
            double t = qkv_seconds();
            qkv_op_table[nd->op].backward(g, nd);
            g->profile->bwd[nd->op] += qkv_seconds() - t;
            g->profile->n_bwd[nd->op]++;
        }
        grad_release(g, nd->out); /* nothing reads it again */
    }
}

const char *qkv_op_name(qkv_op op) {
    return (unsigned)op < QKV_OP_COUNT ? qkv_op_table[op].name : "?";
}
