#include "layers.h"

#include <math.h>
#include <stdio.h>
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
