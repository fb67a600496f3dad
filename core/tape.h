/* tape.h - the graph: activation arena + autodiff tape (reverse mode).
 *
 * Every op computes its output eagerly. When recording is on and an input
 * requires a gradient, the op also appends a node (kind, inputs, output, saved
 * state) to the tape. qkv_backward(g, loss) seeds d(loss) = 1 and walks the
 * tape in reverse; each node's backward ACCUMULATES (+=) into its inputs'
 * gradients, so a tensor used twice receives both contributions. Gradients of
 * activations are allocated from the arena when first needed; parameters'
 * gradients are views into the parameter store's flat buffer. An op's output
 * gradient is dead once that op's backward has run: qkv_backward then hands
 * its memory to the next gradient of the same size and sets it to NULL, so
 * only leaves (parameters, inputs no op produced) keep a gradient afterwards
 * (PyTorch's rule for .grad), and the backward needs little memory beyond
 * the forward's activations.
 *
 *   qkv_graph g;
 *   qkv_graph_init(&g, 0);
 *   for (step...) {
 *       qkv_graph_reset(&g);                   // frees last step's activations
 *       qkv_tensor *loss = forward(&g, ...);   // ops record nodes
 *       qkv_params_zero_grad(&ps);
 *       qkv_backward(&g, loss);
 *   }
 *   qkv_graph_free(&g);
 */
#ifndef QKV_TAPE_H
#define QKV_TAPE_H

#include "pcg.h"
#include "tensor.h"

/* The list of ops, one line X(E, name) each, in enum order. It generates
 * the enum value QKV_OP_<E>, the printable name "<name>" (qkv_op_name, for
 * the profiler and errors) and the op table's row, whose backward is
 * qkv_<name>_backward (op_table.h declares them all from this list, ops.c
 * builds the table from it): an op without its backward fails to link,
 * never a NULL call at backward time. Adding an op: a line here, its forward
 * (declared in ops.h, defined in ops.c) with qkv_<name>_backward right below
 * it, its saved state in qkv_node's union if it needs any, and a gradient
 * test (docs/ARCHITECTURE.md, "Adding an op"). */
#define QKV_OPS(X)                                                             \
    X(MATMUL, matmul)                                                          \
    X(ADD, add)                                                                \
    X(MUL, mul)                                                                \
    X(SCALE, scale)                                                            \
    X(RELU, relu)                                                              \
    X(GELU, gelu)                                                              \
    X(DROPOUT, dropout)                                                        \
    X(SOFTMAX, softmax)                                                        \
    X(LAYERNORM, layernorm)                                                    \
    X(ADD_LAYERNORM, add_layernorm)                                            \
    X(EMBEDDING, embedding)                                                    \
    X(RESHAPE, reshape)                                                        \
    X(SPLIT_HEADS, split_heads)                                                \
    X(MERGE_HEADS, merge_heads)                                                \
    X(ATTENTION, attention)                                                    \
    X(CROSS_ENTROPY, cross_entropy)                                            \
    X(SUM, sum)                                                                \
    X(MEAN, mean)

#define QKV_OP_ENUM_(E, name) QKV_OP_##E,
typedef enum qkv_op { QKV_OPS(QKV_OP_ENUM_) QKV_OP_COUNT } qkv_op;
#undef QKV_OP_ENUM_

/* What a node's backward needs, in named slots per op. Pointers point into
 * the graph arena, so they live exactly as long as the tape. */
typedef struct qkv_node {
    qkv_op op;
    qkv_tensor *out;
    qkv_tensor *in[4];
    union {
        struct {
            int ta, tb;
        } matmul;
        struct {
            float s;
        } scale;
        struct {
            const float *mask;
        } dropout; /* (n) 0 or 1/(1-p) */
        struct {
            const float *mean, *rstd; /* (rows) each */
        } layernorm; /* add_layernorm's backward adds a + b again */
        struct {
            const int32_t *ids;
        } embedding; /* (rows) token ids */
        struct {
            int heads;
        } heads;
        struct {
            const float *p; /* (B,H,T,S) attention weights */
            float scale;
            int heads;
            int packed; /* 0: (B,H,T,K) inputs; 1: (B,T,C) column blocks */
            int col[3]; /* packed: first column of q, k, v */
        } attention;
        struct {
            const float *prob;     /* (N,V) softmax of the logits */
            const int32_t *target; /* (N) class ids */
            int ignore_index;
            float smoothing;
            float count; /* rows not ignored */
        } xent;
    } s;
} qkv_node;

/* Time per op kind, filled while g->profile points here (qkv train
 * --profile). A forward is timed from the previous recorded op (or the
 * graph reset) to its own record, so it includes the glue code between
 * ops; a backward is timed exactly. Seconds, summed over steps. */
typedef struct qkv_profile {
    double fwd[QKV_OP_COUNT], bwd[QKV_OP_COUNT];
    long n_fwd[QKV_OP_COUNT], n_bwd[QKV_OP_COUNT];
    double mark; /* end of the last timed forward */
} qkv_profile;

/* What the matrix products of the linear layers (qkv_matmul) compute in:
 * fp32, or bf16 operands with fp32 sums (bf16.h) as PyTorch's autocast
 * does; everything else (norms, softmax, attention, the loss, gradients,
 * the optimiser) stays fp32 either way. */
typedef enum qkv_precision { QKV_FP32, QKV_BF16 } qkv_precision;

typedef struct qkv_graph {
    qkv_arena arena;
    qkv_profile *profile; /* NULL: not profiling */
    qkv_node *nodes;      /* the tape, in execution order */
    int n_nodes, cap_nodes;
    size_t n_reallocs;       /* tape growths so far (tests watch this) */
    void *free_grads;        /* released gradient buffers, reused by size */
    int recording;           /* 1: ops record nodes (grad mode); 0: no_grad */
    int training;            /* 1: dropout is active */
    qkv_precision precision; /* of qkv_matmul, forward and backward */
} qkv_graph;

/* Starts recording and training; `arena_bytes` may be 0 (grows as needed). */
void qkv_graph_init(qkv_graph *g, size_t arena_bytes);
/* Drops all activations, gradients and nodes of the previous step. */
void qkv_graph_reset(qkv_graph *g);
void qkv_graph_free(qkv_graph *g);
/* Turns recording on (1) or off (0: no_grad); returns the previous setting. */
int qkv_graph_set_grad(qkv_graph *g, int on);

/* New activation tensor from the arena, uninitialised. */
qkv_tensor *qkv_tensor_new(qkv_graph *g, int ndim, const int *shape);
qkv_tensor *qkv_tensor_zeros(qkv_graph *g, int ndim, const int *shape);
/* A constant tensor (no gradient) viewing memory the caller owns and keeps
 * alive until the graph is reset, e.g. a table of positional encodings. */
qkv_tensor *qkv_tensor_wrap(qkv_graph *g, float *data, int ndim,
                            const int *shape);
/* Copies n elements of `src` into the arena (for ids and masks the tape keeps).
 */
void *qkv_graph_copy(qkv_graph *g, const void *src, size_t bytes);

/* t->grad, allocated from the arena and zeroed if it was NULL. */
float *qkv_grad(qkv_graph *g, qkv_tensor *t);
/* t->grad for a backward that writes every element of it. If it was NULL it
 * is allocated and left uninitialised and *acc = 0: the backward stores its
 * values (y = ...). Otherwise *acc = 1: it adds them (y += ...). The first
 * contribution to a gradient then costs one write instead of a zeroing pass
 * plus a read-modify-write; 0 + x == x, so the values are the same. */
float *qkv_grad_write(qkv_graph *g, qkv_tensor *t, int *acc);
/* qkv_grad_write for the input t of an elementwise node nd (t->n ==
 * nd->out->n) whose backward computes dx[i] from dy[i] alone: when t has no
 * gradient yet, it takes over nd->out's, which nothing reads after this
 * backward, and dx[i] overwrites dy[i] in place (no new buffer, one stream
 * less). The backward must read nd->out->grad before calling this. */
float *qkv_grad_write_over(qkv_graph *g, qkv_node *nd, qkv_tensor *t, int *acc);

/* Appends a node for op if recording and an input requires grad, marking the
 * output as requiring grad. Returns the node (to fill its saved state) or NULL.
 */
qkv_node *qkv_record(qkv_graph *g, qkv_op op, qkv_tensor *out, qkv_tensor *a,
                     qkv_tensor *b, qkv_tensor *c);
/* The same for an op of four inputs (add_layernorm). */
qkv_node *qkv_record4(qkv_graph *g, qkv_op op, qkv_tensor *out, qkv_tensor *a,
                      qkv_tensor *b, qkv_tensor *c, qkv_tensor *d);

/* d(loss)/d(everything) for a scalar loss; accumulates into gradients. */
void qkv_backward(qkv_graph *g, qkv_tensor *loss);

/* Printable op name ("matmul"), for errors and the profiler. */
const char *qkv_op_name(qkv_op op);

#endif
