/* qkv.h - everything in core/: include this one header.
 *
 *   #include "qkv.h"
 *   qkv_pcg32 rng;  qkv_pcg32_seed(&rng, 42, 54);
 *   qkv_params ps;  qkv_params_init(&ps);  ... qkv_params_alloc(&ps);
 *   qkv_graph g;    qkv_graph_init(&g, 0);
 *   qkv_tensor *loss = ...ops on g...;  qkv_backward(&g, loss);
 */
#ifndef QKV_H
#define QKV_H

#include "comm.h"
#include "common.h"
#include "io.h"
#include "matmul.h"
#include "ops.h"
#include "pcg.h"
#include "tape.h"
#include "tensor.h"
#include "threads.h"

#endif
