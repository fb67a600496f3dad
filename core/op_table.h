/* op_table.h - internal: the table of ops, one row per qkv_op.
 * Each op's forward lives in ops.c or attention.c next to its backward; the
 * table maps the enum to the backward and a printable name. Both the rows
 * (ops.c) and the backwards' declarations below are generated from QKV_OPS
 * (tape.h), so an op cannot be added without its backward: a line of the
 * list whose qkv_<name>_backward is not defined fails to link. */
#ifndef QKV_OP_TABLE_H
#define QKV_OP_TABLE_H

#include "tape.h"

typedef void (*qkv_backward_fn)(qkv_graph *g, qkv_node *nd);

typedef struct qkv_op_info {
    const char *name;         /* "matmul": the op's name in QKV_OPS */
    qkv_backward_fn backward; /* qkv_matmul_backward */
} qkv_op_info;

extern const qkv_op_info qkv_op_table[QKV_OP_COUNT];

/* void qkv_matmul_backward(qkv_graph *g, qkv_node *nd); ... one per op:
 * accumulates d(out) into its inputs' gradients. Not public API (ops.h). */
#define QKV_OP_BACKWARD_DECL_(E, name)                                         \
    void qkv_##name##_backward(qkv_graph *g, qkv_node *nd);
QKV_OPS(QKV_OP_BACKWARD_DECL_)
#undef QKV_OP_BACKWARD_DECL_

#endif
