/* ops.h - differentiable ops on qkv_tensors.
 *
 * Each op allocates its output from the graph arena, computes it eagerly and,
 * if recording is on and an input requires grad, records a tape node so that
 * qkv_backward can send gradients back. Shapes are checked on every call; a
 * mismatch exits with a message naming the op and the shapes.
 *
 *   qkv_tensor *h = qkv_relu(g, qkv_matmul(g, x, w1, 0, 1));   // relu(x W1^T)
 *   qkv_tensor *loss = qkv_cross_entropy(g, qkv_matmul(g, h, w2, 0, 1),
 *                                        targets, -1, 0.0f);
 *   qkv_backward(g, loss);
 */
#ifndef QKV_OPS_H
#define QKV_OPS_H

#include "tape.h"

/* y = op(a) op(b), op = transpose when ta/tb is 1.
 * a: (..., M, K) or (..., K, M); b: (K, N) or (N, K), shared by every matrix
 * of a's batch, or batched like a with the same leading dims. y: (..., M, N).
 * Linear layers: x W^T = (x, W, 0, 1). */
qkv_tensor *qkv_matmul(qkv_graph *g, qkv_tensor *a, qkv_tensor *b, int ta,
                       int tb);
/* relu(op(a) op(b)), the relu applied by the matmul kernel as it stores
 * each tile: the same values, nodes and gradients as
 * qkv_relu_inplace(g, qkv_matmul(g, a, b, ta, tb)), without the pass over y.
 * The FFN's relu(x W1^T). */
qkv_tensor *qkv_matmul_relu(qkv_graph *g, qkv_tensor *a, qkv_tensor *b, int ta,
                            int tb);
/* y = a + b; b has a's shape, or a's trailing dims (broadcast over the rest).
 */
qkv_tensor *qkv_add(qkv_graph *g, qkv_tensor *a, qkv_tensor *b);
/* y = a * b elementwise; b broadcast as in qkv_add. */
qkv_tensor *qkv_mul(qkv_graph *g, qkv_tensor *a, qkv_tensor *b);
/* y = s * x */
qkv_tensor *qkv_scale(qkv_graph *g, qkv_tensor *x, float s);
/* y = max(x, 0) */
qkv_tensor *qkv_relu(qkv_graph *g, qkv_tensor *x);
/* The same, written over x's data (saves one activation, e.g. the FFN's
 * d_ff-wide hidden layer). x's values are gone afterwards: its gradient is
 * still right, but x must not be read again, neither by the caller nor by
 * the backward of the op that made x (fine for matmul, add, layernorm,
 * attention: their backwards read their inputs, never their output). */
qkv_tensor *qkv_relu_inplace(qkv_graph *g, qkv_tensor *x);
/* y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))  (exact GELU, PyTorch's default)
 */
qkv_tensor *qkv_gelu(qkv_graph *g, qkv_tensor *x);
/* y = x * m / (1 - p), m ~ Bernoulli(1 - p) drawn from rng; identity when not
 * training or p == 0. */
qkv_tensor *qkv_dropout(qkv_graph *g, qkv_tensor *x, float p, qkv_pcg32 *rng);
/* y = exp(x - max) / sum exp(x - max) over the last dim */
qkv_tensor *qkv_softmax(qkv_graph *g, qkv_tensor *x);
/* y = (x - mean) / sqrt(var + eps) * gamma + beta over the last dim D;
 * gamma, beta: (D); var is the biased variance (Ba, Kiros, Hinton 2016). */
qkv_tensor *qkv_layernorm(qkv_graph *g, qkv_tensor *x, qkv_tensor *gamma,
                          qkv_tensor *beta, float eps);
/* layernorm(a + b) in one pass over the rows, forward and backward: the
 * post-norm residual LN(x + sublayer(x)). a and b have the same shape. Same
 * values, bit for bit, as qkv_layernorm(g, qkv_add(g, a, b), ...). */
qkv_tensor *qkv_add_layernorm(qkv_graph *g, qkv_tensor *a, qkv_tensor *b,
                              qkv_tensor *gamma, qkv_tensor *beta, float eps);
/* y[i, :] = table[ids[i], :]; table (V, D), ids of shape `shape` (ndim <= 3),
 * y of shape (shape..., D). The ids are copied. */
qkv_tensor *qkv_embedding(qkv_graph *g, qkv_tensor *table, const int32_t *ids,
                          int ndim, const int *shape);
/* y = x viewed with a new shape of the same size (shares x's data). */
qkv_tensor *qkv_reshape(qkv_graph *g, qkv_tensor *x, int ndim,
                        const int *shape);
/* (B, T, H*K) -> (B, H, T, K) */
qkv_tensor *qkv_split_heads(qkv_graph *g, qkv_tensor *x, int heads);
/* (B, H, T, K) -> (B, T, H*K) */
qkv_tensor *qkv_merge_heads(qkv_graph *g, qkv_tensor *x);

typedef struct qkv_attn_opts {
    int causal; /* key j is visible to query i iff j <= i + (S - T) */
    const uint8_t *key_pad; /* (B, S), nonzero = padding key; NULL: none */
    float scale;            /* scores are scaled by this; 0 means 1/sqrt(K) */
    float *weights;         /* if non-NULL, receives the (B, H, T, S) weights */
} qkv_attn_opts;

/* y = softmax(mask(scale * q k^T)) v per batch and head (Vaswani et al. 2017,
 * eq. 1). q: (B, H, T, K); k, v: (B, H, S, K); y: (B, H, T, K). Masked
 * scores are -inf; a row with every key masked gets weights 0 and y = 0.
 * opts may be NULL (no mask, scale 1/sqrt(K)). */
qkv_tensor *qkv_attention(qkv_graph *g, qkv_tensor *q, qkv_tensor *k,
                          qkv_tensor *v, const qkv_attn_opts *opts);
/* Heads with T, S and K all <= this (at most 64) take a register-blocked
 * path instead of the blocked sgemm; 0 forces the sgemm (tests compare). */
extern int qkv_attention_small_max;
/* In a bf16 graph (qkv_graph.precision) attention's six products are bf16
 * products too (operands rounded to bf16, fp32 sums: qkv_gemm_bf16's bits)
 * where that pays: with the avx512-bf16 kernel (bf16.h) and heads on the
 * register-blocked path with T, S, K >= 32 and T S K >= this (65536). On
 * AMD EPYC (Zen 5), 2 threads, a layer of base's 64 x 64 x 32 heads then
 * takes 0.8-0.9x the time; on smaller heads the rounding costs about what
 * vdpbf16ps saves (32 x 32 x 32: 0.97-1.1x; 16 x 16 x 16: 1.1x), and the
 * blocked path's 128 x 128 x 32 took 1.25x (`bench_train attention`, in
 * make bench, measures it). With the AMX kernel (or its model) heads on
 * the register-blocked path with T, S >= 32, K >= 16 and T S K >= 32768
 * take bf16 products on AMX tiles, summed in that kernel's order (its
 * bits): the tiles make the products nearly free, and the rest of that
 * path measured 0.72x fp32's time on base's heads and 0.85x on small's
 * 32 x 32 x 32 here (core/attention.c, bf16_kind); not yet timed on an AMX
 * CPU (bench/amx.sh prints the table there). Elsewhere attention stays
 * fp32. 0 makes every head of a bf16 graph bf16, with any kernel (tests). */
extern int qkv_attention_bf16_min;
/* 1 if a bf16 graph's heads of T queries, S keys, K columns take bf16
 * products (the rule above, with the bf16 kernel in use now), else 0. */
int qkv_attention_bf16_heads(int T, int S, int K);
/* The same attention on projections laid out as the linear layers make
 * them, heads side by side: q (B, T, Cq) supplies columns [q_col, q_col + d),
 * k (B, S, Ck) and v (B, S, Cv) columns [k_col, k_col + d) and
 * [v_col, v_col + d); head h is the K = d / heads columns from h K of each
 * block. y: (B, T, d), heads side by side. Equals
 * merge_heads(attention(split_heads(...))) without the copies, and lets one
 * tensor (x W_QKV^T, columns 0, d, 2d) be q, k and v at once. */
qkv_tensor *qkv_attention_packed(qkv_graph *g, qkv_tensor *q, int q_col,
                                 qkv_tensor *k, int k_col, qkv_tensor *v,
                                 int v_col, int d, int heads,
                                 const qkv_attn_opts *opts);
/* Heads at strides: element (b, h, s, k) is data[b sb + h sh + s ld + k]. */
typedef struct qkv_heads {
    float *data;
    size_t sb, sh;
    int ld;
} qkv_heads;
/* The attention of T queries per row that are the last T of T_full, without
 * a tape (incremental decoding: T new positions, the keys and values of all
 * S from a cache). q, y: (B, H, T, K) views; k, v: (B, H, S, K) views.
 * Masks as qkv_attention (causal: query i sees keys j <= i + S - T). Each
 * row of y has exactly the bits of the same row of qkv_attention_packed
 * over T_full queries with the same keys, provided the two choose the same
 * kernels (qkv_attention_plan of T_full here and there); a key hidden from
 * a query adds nothing, so keys past it do not change its row. The weights
 * are scratch in g's arena (or copied to opts->weights, (B, H, T, S)). */
void qkv_attention_rows(qkv_graph *g, qkv_heads q, qkv_heads k, qkv_heads v,
                        qkv_heads y, int B, int H, int T, int S, int K,
                        int T_full, const qkv_attn_opts *opts);
/* The kernel choices of an attention of T queries over S keys, K wide
 * (small-head path or not, then how its two products group their sums), in
 * plan; returns how many ints it wrote (at most 3). Equal plans, equal bits
 * for the rows two attentions share. */
int qkv_attention_plan(int T, int S, int K, int plan[3]);
/* loss = mean over rows i with target[i] != ignore_index of
 *   -(1 - ls) log p[i, target[i]] - (ls / V) sum_j log p[i, j],
 * p = softmax(logits[i, :]); logits (..., V), target one id per row.
 * Matches torch.nn.functional.cross_entropy(label_smoothing=ls). A batch with
 * every row ignored has loss 0. */
qkv_tensor *qkv_cross_entropy(qkv_graph *g, qkv_tensor *logits,
                              const int32_t *target, int ignore_index,
                              float label_smoothing);
/* The same sum over rows divided by divisor instead of their count (0: the
 * count): a slice of a batch scored against the whole batch's token count,
 * so slices' losses and gradients add up to the whole batch's (data-parallel
 * ranks, gradient accumulation). */
qkv_tensor *qkv_cross_entropy_over(qkv_graph *g, qkv_tensor *logits,
                                   const int32_t *target, int ignore_index,
                                   float label_smoothing, double divisor);
/* y = sum_i x_i (scalar) */
qkv_tensor *qkv_sum(qkv_graph *g, qkv_tensor *x);
/* y = sum_i x_i / n (scalar) */
qkv_tensor *qkv_mean(qkv_graph *g, qkv_tensor *x);

#endif
