/* op_table.h - internal: the table of ops, one row per qkv_op.
 * Each op's forward lives in ops.c or attention.c next to its backward; the
 * table maps the enum to the backward and a printable name. */
#ifndef QKV_OP_TABLE_H
#define QKV_OP_TABLE_H

#include "tape.h"

typedef void (*qkv_backward_fn)(qkv_graph *g, qkv_node *nd);

typedef struct qkv_op_info {
    const char *name;
    qkv_backward_fn backward;
} qkv_op_info;

extern const qkv_op_info qkv_op_table[QKV_OP_COUNT];

void qkv_attention_backward(qkv_graph *g, qkv_node *nd);

#endif
