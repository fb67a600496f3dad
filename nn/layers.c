#include "layers.h"

#include "bf16.h"

#include "matmul.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* out = prefix + "." + suffix (out holds QKV_NAME_MAX bytes) */
static const char *join(char *out, const char *prefix, const char *suffix) {
    int len = snprintf(out, QKV_NAME_MAX, "%s.%s", prefix, suffix);
    QKV_CHECK(len > 0 && len < QKV_NAME_MAX, "parameter name %s.%s is too long",
              prefix, suffix);
    return out;
}

qkv_tensor *qkv_param(qkv_params *ps, const char *prefix, const char *suffix,
                      int ndim, const int *shape) {
    char name[QKV_NAME_MAX];
    return qkv_params_add(ps, join(name, prefix, suffix), ndim, shape);
}

void qkv_xavier_init(qkv_params *ps, qkv_pcg32 *rng) {
    for (int i = 0; i < ps->count; i++) {
        qkv_tensor *t = ps->list[i];
        if (t->ndim >= 2) {
            /* PyTorch's fans: fan_in = shape[1] * receptive,
             *                 fan_out = shape[0] * receptive */
            size_t rf = t->n / ((size_t)t->shape[0] * (size_t)t->shape[1]);
            double fan_in = (double)t->shape[1] * (double)rf,
                   fan_out = (double)t->shape[0] * (double)rf;
            float a = (float)sqrt(6.0 / (fan_in + fan_out));
            for (size_t j = 0; j < t->n; j++)
                t->data[j] = a * (2.0f * qkv_pcg32_float(rng) - 1.0f);
        } else {
            size_t len = strlen(t->name);
            int gamma = len >= 6 && strcmp(t->name + len - 6, ".gamma") == 0;
            for (size_t j = 0; j < t->n; j++) t->data[j] = gamma ? 1.0f : 0.0f;
        }
    }
}

/* ------------------------------------------------------------------ linear */

void qkv_linear_init(qkv_linear *l, qkv_params *ps, const char *name, int in,
                     int out) {
    l->w = qkv_params_add(ps, name, 2, (int[]){out, in});
}

qkv_tensor *qkv_linear_forward(const qkv_linear *l, qkv_graph *g,
                               qkv_tensor *x) {
    return qkv_matmul(g, x, l->w, 0, 1);
}

/* -------------------------------------------------------------- layer norm */

void qkv_norm_init(qkv_norm *n, qkv_params *ps, const char *name, int d,
                   float eps) {
    n->gamma = qkv_param(ps, name, "gamma", 1, &d);
    n->beta = qkv_param(ps, name, "beta", 1, &d);
    n->eps = eps;
}

qkv_tensor *qkv_norm_forward(const qkv_norm *n, qkv_graph *g, qkv_tensor *x) {
    return qkv_layernorm(g, x, n->gamma, n->beta, n->eps);
}

/* ----------------------------------------------------- multi-head attention */

void qkv_mha_init(qkv_mha *a, qkv_params *ps, const char *name, int d_model,
                  int heads) {
    QKV_CHECK(heads > 0 && d_model % heads == 0,
              "%s: h = %d heads do not divide d_model = %d", name, heads,
              d_model);
    char sub[QKV_NAME_MAX];
    const char *w[4] = {"w_q", "w_k", "w_v", "w_o"};
    qkv_linear *l[4] = {&a->w_q, &a->w_k, &a->w_v, &a->w_o};
    for (int i = 0; i < 4; i++) {
        qkv_linear_init(l[i], ps, join(sub, name, w[i]), d_model, d_model);
    }
    a->heads = heads;
}

/* The weights of `count` linears of the same shape as one (count * out, in)
 * matrix, when they lie one after another in the parameter store (w_q, w_k,
 * w_v are added in that order, and so are their gradients): one product
 * x W^T then computes all their outputs side by side. NULL otherwise. */
static qkv_tensor *stacked(qkv_graph *g, const qkv_linear *const *l,
                           int count) {
    const qkv_tensor *w = l[0]->w;
    for (int i = 1; i < count; i++) {
        const qkv_tensor *wi = l[i]->w;
        if (!qkv_same_shape(wi, w) || wi->data != w->data + i * w->n ||
            wi->grad != (w->grad ? w->grad + i * w->n : NULL) ||
            wi->requires_grad != w->requires_grad)
            return NULL;
    }
    qkv_tensor *t = qkv_tensor_wrap(g, w->data, 2,
                                    (int[]){count * w->shape[0], w->shape[1]});
    t->grad = w->grad;
    t->requires_grad = w->requires_grad;
    t->owner = w->owner; /* the store's memory: bf16 packs it once */
    return t;
}

qkv_tensor *qkv_mha_forward(const qkv_mha *a, qkv_graph *g, qkv_tensor *x,
                            qkv_tensor *mem, const uint8_t *key_pad, int causal,
                            float *weights) {
    int d = a->w_q.w->shape[0];
    qkv_attn_opts o = {
        .causal = causal, .key_pad = key_pad, .weights = weights};
    qkv_tensor *y = NULL, *w;
    if (x == mem &&
        (w = stacked(g, (const qkv_linear *[]){&a->w_q, &a->w_k, &a->w_v},
                     3))) {
        /* self-attention: [Q K V] = x [W_Q; W_K; W_V]^T, one product */
        qkv_tensor *qkv = qkv_matmul(g, x, w, 0, 1);
        y = qkv_attention_packed(g, qkv, 0, qkv, d, qkv, 2 * d, d, a->heads,
                                 &o);
    } else {
        qkv_tensor *q = qkv_linear_forward(&a->w_q, g, x);
        if ((w = stacked(g, (const qkv_linear *[]){&a->w_k, &a->w_v}, 2))) {
            /* cross-attention: [K V] = mem [W_K; W_V]^T */
            qkv_tensor *kv = qkv_matmul(g, mem, w, 0, 1);
            y = qkv_attention_packed(g, q, 0, kv, 0, kv, d, d, a->heads, &o);
        } else {
            qkv_tensor *k = qkv_linear_forward(&a->w_k, g, mem);
            qkv_tensor *v = qkv_linear_forward(&a->w_v, g, mem);
            y = qkv_attention_packed(g, q, 0, k, 0, v, 0, d, a->heads, &o);
        }
    }
    return qkv_linear_forward(&a->w_o, g, y);
}

/* -------------------------------------------------------------------- ffn */

void qkv_ffn_init(qkv_ffn *f, qkv_params *ps, const char *name, int d_model,
                  int d_ff, qkv_act act) {
    char sub[QKV_NAME_MAX];
    qkv_linear_init(&f->w1, ps, join(sub, name, "w1"), d_model, d_ff);
    qkv_linear_init(&f->w2, ps, join(sub, name, "w2"), d_ff, d_model);
    f->act = act;
}

qkv_tensor *qkv_ffn_forward(const qkv_ffn *f, qkv_graph *g, qkv_tensor *x) {
    /* relu: applied by the kernel as it stores x W1^T */
    qkv_tensor *h = f->act == QKV_ACT_GELU
                        ? qkv_gelu(g, qkv_linear_forward(&f->w1, g, x))
                        : qkv_matmul_relu(g, x, f->w1.w, 0, 1);
    return qkv_linear_forward(&f->w2, g, h);
}

/* ------------------------------------------------ residual sub-layers */

/* The residual connection around one sub-layer (sec. 5.4: dropout on the
 * sub-layer output before it is added): post-norm LN(x + drop(y)), or
 * pre-norm x + drop(y), where y was computed from LN(x). */
static qkv_tensor *residual(const qkv_sublayer_ctx *c, qkv_graph *g,
                            const qkv_norm *n, qkv_tensor *x, qkv_tensor *y) {
    y = qkv_dropout(g, y, c->dropout, c->rng);
    if (c->norm == QKV_NORM_POST)
        return qkv_add_layernorm(g, x, y, n->gamma, n->beta, n->eps);
    return qkv_add(g, x, y);
}

/* The input a sub-layer sees: LN(x) for pre-norm, x for post-norm. */
static qkv_tensor *sub_input(const qkv_sublayer_ctx *c, qkv_graph *g,
                             const qkv_norm *n, qkv_tensor *x) {
    return c->norm == QKV_NORM_PRE ? qkv_norm_forward(n, g, x) : x;
}

void qkv_encoder_layer_init(qkv_encoder_layer *l, qkv_params *ps,
                            const char *name, int d_model, int heads, int d_ff,
                            qkv_act act, float eps) {
    char sub[QKV_NAME_MAX];
    qkv_mha_init(&l->self_attn, ps, join(sub, name, "self_attn"), d_model,
                 heads);
    qkv_ffn_init(&l->ffn, ps, join(sub, name, "ffn"), d_model, d_ff, act);
    qkv_norm_init(&l->norm1, ps, join(sub, name, "norm1"), d_model, eps);
    qkv_norm_init(&l->norm2, ps, join(sub, name, "norm2"), d_model, eps);
}

qkv_tensor *qkv_encoder_layer_forward(const qkv_encoder_layer *l, qkv_graph *g,
                                      const qkv_sublayer_ctx *c, qkv_tensor *x,
                                      const uint8_t *src_pad, float *weights) {
    qkv_tensor *h = sub_input(c, g, &l->norm1, x);
    x = residual(c, g, &l->norm1, x,
                 qkv_mha_forward(&l->self_attn, g, h, h, src_pad, 0, weights));
    h = sub_input(c, g, &l->norm2, x);
    return residual(c, g, &l->norm2, x, qkv_ffn_forward(&l->ffn, g, h));
}

void qkv_decoder_layer_init(qkv_decoder_layer *l, qkv_params *ps,
                            const char *name, int d_model, int heads, int d_ff,
                            qkv_act act, float eps, int has_cross) {
    char sub[QKV_NAME_MAX];
    memset(l, 0, sizeof *l);
    qkv_mha_init(&l->self_attn, ps, join(sub, name, "self_attn"), d_model,
                 heads);
    if (has_cross) {
        qkv_mha_init(&l->cross_attn, ps, join(sub, name, "cross_attn"), d_model,
                     heads);
    }
    qkv_ffn_init(&l->ffn, ps, join(sub, name, "ffn"), d_model, d_ff, act);
    qkv_norm_init(&l->norm1, ps, join(sub, name, "norm1"), d_model, eps);
    qkv_norm_init(&l->norm2, ps, join(sub, name, "norm2"), d_model, eps);
    if (has_cross) {
        qkv_norm_init(&l->norm3, ps, join(sub, name, "norm3"), d_model, eps);
    }
    l->has_cross = has_cross;
}

qkv_tensor *qkv_decoder_layer_forward(const qkv_decoder_layer *l, qkv_graph *g,
                                      const qkv_sublayer_ctx *c, qkv_tensor *x,
                                      qkv_tensor *mem, const uint8_t *tgt_pad,
                                      const uint8_t *src_pad, float *self_w,
                                      float *cross_w) {
    qkv_tensor *h = sub_input(c, g, &l->norm1, x);
    x = residual(c, g, &l->norm1, x,
                 qkv_mha_forward(&l->self_attn, g, h, h, tgt_pad, 1, self_w));
    const qkv_norm *ffn_norm = &l->norm2;
    if (l->has_cross) {
        QKV_CHECK(mem, "decoder layer with cross-attention needs the encoder "
                       "output");
        h = sub_input(c, g, &l->norm2, x);
        x = residual(
            c, g, &l->norm2, x,
            qkv_mha_forward(&l->cross_attn, g, h, mem, src_pad, 0, cross_w));
        ffn_norm = &l->norm3;
    }
    h = sub_input(c, g, ffn_norm, x);
    return residual(c, g, ffn_norm, x, qkv_ffn_forward(&l->ffn, g, h));
}

/* ------------------------------------------------- incremental decoding */

/* qkv_sgemm_rows in the graph's precision: a bf16 product's rows do not
 * depend on M at all (bf16.h: its order is fixed by K), so any row count
 * gives the full product's rows. w: the weight (N, K) whose transpose op(B)
 * is (B itself, or its transposed copy); in bf16 the product reads w
 * packed once per version of the parameters, which is the same op(B). */
static void gemm_rows(const qkv_graph *g, int M_like, int relu, int tb, int M,
                      int N, int K, const float *A, int lda, const float *B,
                      int ldb, const qkv_tensor *w, float *C, int ldc) {
    if (g->precision != QKV_BF16) {
        qkv_sgemm_rows(M_like, relu, 0, tb, M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
    const qkv_bf16_packed *p =
        w && w->owner
            ? qkv_params_packed(w->owner, w->data, 1, K, N, w->shape[1])
            : NULL;
    if (p && relu)
        qkv_gemm_bf16_packed_relu(0, M, A, lda, p, C, ldc);
    else if (p)
        qkv_gemm_bf16_packed(0, M, A, lda, p, 0, C, ldc);
    else if (relu)
        qkv_gemm_bf16_relu(0, tb, M, N, K, A, lda, B, ldb, C, ldc);
    else
        qkv_gemm_bf16(0, tb, M, N, K, A, lda, B, ldb, 0, C, ldc);
}

/* out (M, count N) = x (M, D) [W_1; ...; W_count]^T, the count linears
 * side by side, each row as in a product of M_like rows: one product when
 * their weights are stacked (as qkv_mha_forward does), else one each. */
static void project(qkv_graph *g, const qkv_linear *const *l, int count,
                    const float *x, int M, int M_like, const float *wt,
                    float *out) {
    int N = l[0]->w->shape[0], D = l[0]->w->shape[1], ld = count * N;
    qkv_tensor *w = count > 1 ? stacked(g, l, count) : NULL;
    if (w || count == 1) {
        const qkv_tensor *wl = w ? w : l[0]->w;
        if (wt) /* wt: (D, ld), the weights transposed */
            gemm_rows(g, M_like, 0, 0, M, ld, D, x, D, wt, ld, wl, out, ld);
        else
            gemm_rows(g, M_like, 0, 1, M, ld, D, x, D, wl->data, D, wl, out,
                      ld);
        return;
    }
    for (int i = 0; i < count; i++)
        if (wt)
            gemm_rows(g, M_like, 0, 0, M, N, D, x, D, wt + (size_t)i * N, ld,
                      l[i]->w, out + (size_t)i * N, ld);
        else
            gemm_rows(g, M_like, 0, 1, M, N, D, x, D, l[i]->w->data, D, l[i]->w,
                      out + (size_t)i * N, ld);
}

/* x (B, T, D) W^T for one linear, as rows of a product of M_like rows;
 * relu as qkv_matmul_relu; wt: W^T, or NULL. */
static qkv_tensor *linear_rows(qkv_graph *g, const qkv_linear *l, qkv_tensor *x,
                               int M_like, int relu, const float *wt) {
    int B = x->shape[0], T = x->shape[1], N = l->w->shape[0],
        D = l->w->shape[1];
    qkv_tensor *y = qkv_tensor_new(g, 3, (int[]){B, T, N});
    if (wt)
        gemm_rows(g, M_like, relu, 0, B * T, N, D, x->data, D, wt, N, l->w,
                  y->data, N);
    else
        gemm_rows(g, M_like, relu, 1, B * T, N, D, x->data, D, l->w->data, D,
                  l->w, y->data, N);
    return y;
}

void qkv_transpose(const float *src, int rows, int cols, float *dst) {
    for (int i0 = 0; i0 < rows; i0 += 32) /* 32 x 32 blocks stay in L1 */
        for (int j0 = 0; j0 < cols; j0 += 32)
            for (int i = i0; i < rows && i < i0 + 32; i++)
                for (int j = j0; j < cols && j < j0 + 32; j++)
                    dst[(size_t)j * rows + i] = src[(size_t)i * cols + j];
}

/* Offsets of the transposed weights in a layer's copy (floats). */
typedef struct wt_layout {
    size_t qkv, o, w1, w2, cq, co, n;
} wt_layout;

static wt_layout wt_offsets(const qkv_decoder_layer *l) {
    size_t D = (size_t)l->self_attn.w_q.w->shape[0],
           F = (size_t)l->ffn.w1.w->shape[0];
    wt_layout o = {0};
    o.o = 3 * D * D;
    o.w1 = o.o + D * D;
    o.w2 = o.w1 + D * F;
    o.cq = o.w2 + F * D;
    o.co = o.cq + (l->has_cross ? D * D : 0);
    o.n = o.co + (l->has_cross ? D * D : 0);
    return o;
}

size_t qkv_decoder_layer_wt_size(const qkv_decoder_layer *l) {
    return wt_offsets(l).n;
}

void qkv_decoder_layer_wt_fill(const qkv_decoder_layer *l, float *wt) {
    wt_layout o = wt_offsets(l);
    int D = l->self_attn.w_q.w->shape[0], F = l->ffn.w1.w->shape[0];
    float *tmp = qkv_malloc((size_t)3 * D * D * sizeof *tmp, "weights");
    const qkv_tensor *w[3] = {l->self_attn.w_q.w, l->self_attn.w_k.w,
                              l->self_attn.w_v.w};
    for (int i = 0; i < 3; i++) /* [W_Q; W_K; W_V]: (3D, D) */
        memcpy(tmp + (size_t)i * D * D, w[i]->data,
               (size_t)D * D * sizeof *tmp);
    qkv_transpose(tmp, 3 * D, D, wt + o.qkv);
    free(tmp);
    qkv_transpose(l->self_attn.w_o.w->data, D, D, wt + o.o);
    qkv_transpose(l->ffn.w1.w->data, F, D, wt + o.w1);
    qkv_transpose(l->ffn.w2.w->data, D, F, wt + o.w2);
    if (l->has_cross) {
        qkv_transpose(l->cross_attn.w_q.w->data, D, D, wt + o.cq);
        qkv_transpose(l->cross_attn.w_o.w->data, D, D, wt + o.co);
    }
}

void qkv_decoder_layer_memory(const qkv_decoder_layer *l, qkv_graph *g,
                              const float *mem, int M, float *ckv) {
    QKV_CHECK(l->has_cross, "decoder layer: no cross-attention");
    project(g, (const qkv_linear *[]){&l->cross_attn.w_k, &l->cross_attn.w_v},
            2, mem, M, M, NULL, ckv);
}

/* Self-attention of the new positions over the cache (B, T, D) -> before
 * W_O: as qkv_mha_forward(h, h, causal), with K and V of the earlier
 * positions from kv. */
static qkv_tensor *self_attn_step(const qkv_mha *a, qkv_graph *g, qkv_tensor *h,
                                  const qkv_layer_kv *kv, int t0,
                                  const float *wt) {
    int B = h->shape[0], T = h->shape[1], D = h->shape[2], H = a->heads,
        K = D / H, t = t0 + T;
    float *qkv = qkv_arena_alloc(&g->arena, (size_t)B * T * 3 * D * 4);
    project(g, (const qkv_linear *[]){&a->w_q, &a->w_k, &a->w_v}, 3, h->data,
            B * T, B * t, wt, qkv);
    size_t hs = (size_t)kv->cap * K; /* one head of the cache */
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) {
            const float *r = qkv + ((size_t)b * T + i) * 3 * D;
            for (int hh = 0; hh < H; hh++) {
                size_t at = ((size_t)b * H + hh) * hs + (size_t)(t0 + i) * K;
                memcpy(kv->k + at, r + D + hh * K, (size_t)K * 4);
                memcpy(kv->v + at, r + 2 * D + hh * K, (size_t)K * 4);
            }
        }
    qkv_tensor *y = qkv_tensor_new(g, 3, (int[]){B, T, D});
    qkv_heads q = {qkv, (size_t)T * 3 * D, (size_t)K, 3 * D},
              k = {kv->k, H * hs, hs, K}, v = {kv->v, H * hs, hs, K},
              o = {y->data, (size_t)T * D, (size_t)K, D};
    qkv_attn_opts opts = {.causal = 1};
    qkv_attention_rows(g, q, k, v, o, B, H, T, t, K, t, &opts);
    return y;
}

/* Cross-attention of the new positions over the memory's cached K | V. */
static qkv_tensor *cross_attn_step(const qkv_mha *a, qkv_graph *g,
                                   qkv_tensor *h, const qkv_layer_kv *kv,
                                   int t0, const float *wt) {
    int B = h->shape[0], T = h->shape[1], D = h->shape[2], H = a->heads,
        K = D / H, S = kv->S;
    qkv_tensor *q = linear_rows(g, &a->w_q, h, B * (t0 + T), 0, wt);
    qkv_tensor *y = qkv_tensor_new(g, 3, (int[]){B, T, D});
    float *ckv = (float *)kv->ckv;
    qkv_heads qh = {q->data, (size_t)T * D, (size_t)K, D},
              k = {ckv, (size_t)S * 2 * D, (size_t)K, 2 * D},
              v = {ckv + D, (size_t)S * 2 * D, (size_t)K, 2 * D},
              o = {y->data, (size_t)T * D, (size_t)K, D};
    qkv_attn_opts opts = {.key_pad = kv->src_pad};
    qkv_attention_rows(g, qh, k, v, o, B, H, T, S, K, t0 + T, &opts);
    return y;
}

qkv_tensor *qkv_decoder_layer_step(const qkv_decoder_layer *l, qkv_graph *g,
                                   const qkv_sublayer_ctx *c, qkv_tensor *x,
                                   const qkv_layer_kv *kv, int t0) {
    QKV_CHECK(!g->training && !g->recording,
              "decoder_layer_step: decoding only (no tape, no dropout)");
    QKV_CHECK(x->ndim == 3 && t0 >= 0 && t0 + x->shape[1] <= kv->cap,
              "decoder_layer_step: positions %d.. of %d outside the cache (%d)",
              t0, x->ndim == 3 ? x->shape[1] : -1, kv->cap);
    int M_like = x->shape[0] * (t0 + x->shape[1]);
    wt_layout o = wt_offsets(l);
    const float *wt = kv->wt;
#define WT(part) (wt ? wt + o.part : NULL)
    qkv_tensor *h = sub_input(c, g, &l->norm1, x);
    qkv_tensor *y = self_attn_step(&l->self_attn, g, h, kv, t0, WT(qkv));
    x = residual(c, g, &l->norm1, x,
                 linear_rows(g, &l->self_attn.w_o, y, M_like, 0, WT(o)));
    const qkv_norm *ffn_norm = &l->norm2;
    if (l->has_cross) {
        QKV_CHECK(kv->ckv, "decoder layer with cross-attention needs the "
                           "memory's keys and values");
        h = sub_input(c, g, &l->norm2, x);
        y = cross_attn_step(&l->cross_attn, g, h, kv, t0, WT(cq));
        x = residual(c, g, &l->norm2, x,
                     linear_rows(g, &l->cross_attn.w_o, y, M_like, 0, WT(co)));
        ffn_norm = &l->norm3;
    }
    h = sub_input(c, g, ffn_norm, x);
    const qkv_ffn *f = &l->ffn;
    qkv_tensor *z =
        f->act == QKV_ACT_GELU
            ? qkv_gelu(g, linear_rows(g, &f->w1, h, M_like, 0, WT(w1)))
            : linear_rows(g, &f->w1, h, M_like, 1, WT(w1));
    return residual(c, g, ffn_norm, x,
                    linear_rows(g, &f->w2, z, M_like, 0, WT(w2)));
#undef WT
}

int qkv_decoder_layer_plan(int B, int t, int S, int D, int H, int F,
                           int *plan) {
    int n = 0, M = B * t, K = D / H;
    plan[n++] = qkv_sgemm_k_groups(M, 3 * D, D); /* Q | K | V */
    plan[n++] = qkv_sgemm_k_groups(M, D, D);     /* one of them, W_O */
    plan[n++] = qkv_sgemm_k_groups(M, F, D);     /* W_1 */
    plan[n++] = qkv_sgemm_k_groups(M, D, F);     /* W_2 */
    n += qkv_attention_plan(t, t, K, plan + n);
    if (S > 0) {
        plan[n++] = qkv_sgemm_k_groups(B * S, 2 * D, D); /* memory K | V */
        plan[n++] = qkv_sgemm_k_groups(B * S, D, D);
        n += qkv_attention_plan(t, S, K, plan + n);
    }
    return n;
}
