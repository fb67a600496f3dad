/* layers.h - the transformer's layers, built only from core ops.
 *
 * A layer is a struct of parameter views (owned by a qkv_params store) plus
 * its settings. `_init` registers the parameters under a dotted name prefix;
 * after qkv_params_alloc, `qkv_xavier_init` fills them; `_forward` applies
 * the layer on a graph. Shapes: B batch, T target length, S source length,
 * D d_model, H heads, K = D / H, F d_ff, V vocabulary.
 *
 *   qkv_mha att;
 *   qkv_mha_init(&att, &ps, "decoder.layers.0.self_attn", 64, 4);
 *   ...  // causal self-attention on x (B, T, 64), no padding, weights unkept
 *   qkv_tensor *y = qkv_mha_forward(&att, g, x, x, NULL, 1, NULL);
 */
#ifndef QKV_LAYERS_H
#define QKV_LAYERS_H

#include "qkv.h"

typedef enum qkv_act { QKV_ACT_RELU, QKV_ACT_GELU } qkv_act;
typedef enum qkv_norm_kind { QKV_NORM_POST, QKV_NORM_PRE } qkv_norm_kind;

#define QKV_NAME_MAX 128 /* longest parameter name + 1 */

/* Registers NAME with the given shape; name = prefix + "." + suffix. */
qkv_tensor *qkv_param(qkv_params *ps, const char *prefix, const char *suffix,
                      int ndim, const int *shape);

/* Xavier/Glorot uniform (Glorot & Bengio 2010): every parameter with >= 2 dims
 * gets U(-a, a), a = sqrt(6 / (fan_in + fan_out)), drawn from rng in
 * registration order; 1-D parameters named *.gamma get 1, others 0. */
void qkv_xavier_init(qkv_params *ps, qkv_pcg32 *rng);

/* y = x W^T, W (out, in): a Linear without bias, laid out as PyTorch's. */
typedef struct qkv_linear {
    qkv_tensor *w; /* (out, in) */
} qkv_linear;
void qkv_linear_init(qkv_linear *l, qkv_params *ps, const char *name, int in,
                     int out);
qkv_tensor *qkv_linear_forward(const qkv_linear *l, qkv_graph *g,
                               qkv_tensor *x);

/* y = layernorm(x) * gamma + beta over the last dim (gamma 1, beta 0 at init)
 */
typedef struct qkv_norm {
    qkv_tensor *gamma, *beta; /* (D) */
    float eps;
} qkv_norm;
void qkv_norm_init(qkv_norm *n, qkv_params *ps, const char *name, int d,
                   float eps);
qkv_tensor *qkv_norm_forward(const qkv_norm *n, qkv_graph *g, qkv_tensor *x);

/* Multi-head attention (Vaswani et al. 2017, sec. 3.2.2):
 *   MHA(x, m) = concat_h(softmax(mask(Q_h K_h^T / sqrt(K))) V_h) W_O^T,
 *   Q = x W_Q^T, K = m W_K^T, V = m W_V^T, split into H heads of K = D / H. */
typedef struct qkv_mha {
    qkv_linear w_q, w_k, w_v, w_o; /* (D, D) each */
    int heads;
} qkv_mha;
void qkv_mha_init(qkv_mha *a, qkv_params *ps, const char *name, int d_model,
                  int heads);
/* x: (B, T, D) queries; mem: (B, S, D) keys/values (x itself for
 * self-attention); key_pad: (B, S) nonzero = padding, or NULL; causal for the
 * decoder's masked self-attention. If weights is non-NULL it receives the
 * (B, H, T, S) attention weights. */
qkv_tensor *qkv_mha_forward(const qkv_mha *a, qkv_graph *g, qkv_tensor *x,
                            qkv_tensor *mem, const uint8_t *key_pad, int causal,
                            float *weights);

/* Position-wise feed-forward: y = act(x W1^T) W2^T (sec. 3.3). */
typedef struct qkv_ffn {
    qkv_linear w1; /* (F, D) */
    qkv_linear w2; /* (D, F) */
    qkv_act act;
} qkv_ffn;
void qkv_ffn_init(qkv_ffn *f, qkv_params *ps, const char *name, int d_model,
                  int d_ff, qkv_act act);
qkv_tensor *qkv_ffn_forward(const qkv_ffn *f, qkv_graph *g, qkv_tensor *x);

/* What every sub-layer needs besides its parameters. */
typedef struct qkv_sublayer_ctx {
    qkv_norm_kind norm; /* post: LN(x + drop(f(x)));  pre: x + drop(f(LN(x))) */
    float dropout;
    qkv_pcg32 *rng; /* dropout masks */
} qkv_sublayer_ctx;

typedef struct qkv_encoder_layer {
    qkv_mha self_attn;
    qkv_ffn ffn;
    qkv_norm norm1, norm2;
} qkv_encoder_layer;
void qkv_encoder_layer_init(qkv_encoder_layer *l, qkv_params *ps,
                            const char *name, int d_model, int heads, int d_ff,
                            qkv_act act, float eps);
/* x: (B, S, D) -> (B, S, D); src_pad: (B, S) or NULL */
qkv_tensor *qkv_encoder_layer_forward(const qkv_encoder_layer *l, qkv_graph *g,
                                      const qkv_sublayer_ctx *c, qkv_tensor *x,
                                      const uint8_t *src_pad, float *weights);

typedef struct qkv_decoder_layer {
    qkv_mha self_attn;  /* masked (causal) */
    qkv_mha cross_attn; /* over the encoder output; unused by decoder-only */
    qkv_ffn ffn;
    qkv_norm norm1, norm2, norm3;
    int has_cross;
} qkv_decoder_layer;
void qkv_decoder_layer_init(qkv_decoder_layer *l, qkv_params *ps,
                            const char *name, int d_model, int heads, int d_ff,
                            qkv_act act, float eps, int has_cross);
/* x: (B, T, D) -> (B, T, D); mem: (B, S, D) or NULL (decoder-only);
 * tgt_pad (B, T), src_pad (B, S) or NULL; self_w/cross_w receive weights. */
qkv_tensor *qkv_decoder_layer_forward(const qkv_decoder_layer *l, qkv_graph *g,
                                      const qkv_sublayer_ctx *c, qkv_tensor *x,
                                      qkv_tensor *mem, const uint8_t *tgt_pad,
                                      const uint8_t *src_pad, float *self_w,
                                      float *cross_w);

/* ------------------------------------------------- incremental decoding */

/* One decoder layer's cache for incremental decoding (model.h's
 * qkv_model_decoder_step owns and fills it). */
typedef struct qkv_layer_kv {
    float *k, *v;           /* (B, H, cap, K) self-attention keys, values */
    const float *ckv;       /* (B, S, 2D) the memory's keys | values, or NULL */
    const uint8_t *src_pad; /* (B, S) or NULL */
    const float *wt;        /* the transposed weights, or NULL (below) */
    int cap, S;
} qkv_layer_kv;

/* A step's few rows multiply by the weights transposed, (in, out), read in
 * place instead of packed at every product (the same bits): floats of a
 * layer's copy, and filling it: [W_Q; W_K; W_V]^T (D, 3D), W_O^T, W_1^T
 * (D, F), W_2^T (F, D), then cross-attention's W_Q^T and W_O^T. */
size_t qkv_decoder_layer_wt_size(const qkv_decoder_layer *l);
void qkv_decoder_layer_wt_fill(const qkv_decoder_layer *l, float *wt);
/* dst (cols, rows) = src (rows, cols)^T */
void qkv_transpose(const float *src, int rows, int cols, float *dst);

/* The cross-attention keys | values of the memory (M = B S rows of D):
 * ckv (M, 2D) = mem [W_K; W_V]^T, as qkv_decoder_layer_forward computes
 * them (the same products, the same bits). */
void qkv_decoder_layer_memory(const qkv_decoder_layer *l, qkv_graph *g,
                              const float *mem, int M, float *ckv);

/* The layer on positions t0..t0+T-1 of x (B, T, D) -> (B, T, D), without a
 * tape: their self-attention keys and values are written into kv at those
 * positions, and the queries attend to positions 0..t0+T-1 of the cache.
 * Every row has exactly the bits qkv_decoder_layer_forward gives it on the
 * whole prefix (B, t0 + T), as long as the cached positions hold what that
 * would compute (model.c's plan check). */
qkv_tensor *qkv_decoder_layer_step(const qkv_decoder_layer *l, qkv_graph *g,
                                   const qkv_sublayer_ctx *c, qkv_tensor *x,
                                   const qkv_layer_kv *kv, int t0);

/* The kernel choices qkv_decoder_layer_step's rows depend on, for B rows
 * of t positions over S memory positions (0: none) of a layer of width D,
 * H heads and F: ints into plan (room for QKV_LAYER_PLAN), returns how many.
 * Equal plans: equal bits for the rows two computations share. */
#define QKV_LAYER_PLAN 16
int qkv_decoder_layer_plan(int B, int t, int S, int D, int H, int F, int *plan);

#endif
