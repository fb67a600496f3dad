#include "model.h"

#include "bf16.h"

#include "io.h"
#include "matmul.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define F(...) QKV_INT_FIELD(qkv_model_config, __VA_ARGS__)
const qkv_field qkv_model_fields[] = {
    QKV_ENUM_FIELD(qkv_model_config, kind, "kind", "model", "encdec|decoder",
                   "encoder-decoder or decoder-only"),
    F(src_vocab, "src_vocab", NULL, 1, QKV_MAX_VOCAB, "source vocabulary"),
    F(tgt_vocab, "tgt_vocab", NULL, 1, QKV_MAX_VOCAB, "target vocabulary"),
    F(d_model, "d_model", "d-model", 1, QKV_MAX_WIDTH, "model width"),
    F(heads, "heads", "h", 1, QKV_MAX_WIDTH,
      "attention heads; must divide d-model"),
    F(d_ff, "d_ff", "d-ff", 1, QKV_MAX_WIDTH, "feed-forward width"),
    F(n_enc, "n_enc", NULL, 0, 64, "encoder layers"),
    F(n_dec, "n_dec", NULL, 1, 64, "decoder layers"),
    F(max_len, "max_len", NULL, 1, QKV_MAX_POSITIONS, "positions"),
    QKV_FLOAT_FIELD(qkv_model_config, dropout, "dropout", "dropout", 0, 0.99,
                    "dropout on sub-layer outputs and embeddings"),
    QKV_FLOAT_FIELD(qkv_model_config, ln_eps, "ln_eps", "ln-eps",
                    1.1754943508222875e-38, 1, "layer norm epsilon"),
    QKV_ENUM_FIELD(qkv_model_config, pos, "pos", "pos", "sin|learned",
                   "positional encoding"),
    QKV_ENUM_FIELD(qkv_model_config, norm, "norm", "norm", "post|pre",
                   "layer norm placement"),
    QKV_ENUM_FIELD(qkv_model_config, act, "act", "act", "relu|gelu",
                   "feed-forward activation"),
    QKV_BOOL_FIELD(qkv_model_config, scale_emb, "scale_emb", NULL,
                   "embeddings times sqrt(d_model)"),
    QKV_BOOL_FIELD(qkv_model_config, tie_output, "tie_output", "tie-output",
                   "the output layer shares the target embedding"),
    F(pad_id, "pad_id", NULL, 0, QKV_MAX_VOCAB, "the padding id"),
};
#undef F
const int qkv_model_n_fields =
    (int)(sizeof qkv_model_fields / sizeof *qkv_model_fields);
_Static_assert(sizeof(qkv_model_kind) == sizeof(int) &&
                   sizeof(qkv_pos_kind) == sizeof(int) &&
                   sizeof(qkv_norm_kind) == sizeof(int) &&
                   sizeof(qkv_act) == sizeof(int),
               "enum fields are read and written as ints");

char *qkv_model_config_to_json(const qkv_model_config *c) {
    return qkv_config_to_json(qkv_model_fields, qkv_model_n_fields, c);
}

int qkv_model_config_from_json(const char *json, qkv_model_config *c, char *err,
                               size_t errlen) {
    return qkv_config_from_json(qkv_model_fields, qkv_model_n_fields, c, json,
                                1, err, errlen);
}

int qkv_model_config_diff(const qkv_model_config *file,
                          const qkv_model_config *here, int with_dropout,
                          char *msg, size_t len) {
    /* dropout only acts in training; decoder-only models have no encoder */
    const char *skip[4] = {NULL}, **k = skip;
    if (!with_dropout) *k++ = "dropout";
    if (here->kind == QKV_MODEL_DECODER) *k++ = "src_vocab", *k++ = "n_enc";
    return qkv_config_diff(qkv_model_fields, qkv_model_n_fields, file, here,
                           skip, msg, len);
}

qkv_model_config qkv_model_defaults(qkv_model_kind kind) {
    qkv_model_config c = {
        .kind = kind,
        .d_model = 64,
        .heads = 4,
        .d_ff = 256,
        .n_enc = kind == QKV_MODEL_ENCDEC ? 2 : 0,
        .n_dec = 2,
        .max_len = 256,
        .dropout = 0.1f,
        .ln_eps = 1e-5f,
        .pos = QKV_POS_SIN,
        .norm = QKV_NORM_POST,
        .act = QKV_ACT_RELU,
        .scale_emb = 1,
        .tie_output = 0,
        .pad_id = 0,
    };
    return c;
}

static int config_error(char *err, size_t len, const char *fmt, ...)
    QKV_PRINTF(3, 4);
static int config_error(char *err, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return -1;
}

static int check_config(const qkv_model_config *c, char *err, size_t len) {
    int encdec = c->kind == QKV_MODEL_ENCDEC;
    if (c->d_model <= 0 || c->d_ff <= 0 || c->heads <= 0)
        return config_error(err, len,
                            "d_model (%d), d_ff and h (%d) must be positive",
                            c->d_model, c->heads);
    if (c->d_model % c->heads)
        return config_error(err, len, "h = %d does not divide d_model = %d",
                            c->heads, c->d_model);
    if (c->tgt_vocab < 2 || (encdec && c->src_vocab < 2))
        return config_error(err, len,
                            "vocabularies need >= 2 tokens (got %d, %d)",
                            c->src_vocab, c->tgt_vocab);
    if (c->n_dec < 1 || (encdec && c->n_enc < 1) || c->n_dec > 64 ||
        c->n_enc > 64)
        return config_error(err, len,
                            "layer counts must be 1..64 (N_enc %d, N_dec %d)",
                            c->n_enc, c->n_dec);
    if (c->max_len < 1)
        return config_error(err, len, "max_len must be positive (%d)",
                            c->max_len);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return config_error(err, len, "dropout %g is not in [0, 1)",
                            (double)c->dropout);
    if (!(c->ln_eps > 0.0f))
        return config_error(err, len, "layer norm eps %g must be positive",
                            (double)c->ln_eps);
    if (c->pad_id < 0 || c->pad_id >= c->tgt_vocab)
        return config_error(err, len, "pad id %d outside the vocabulary (%d)",
                            c->pad_id, c->tgt_vocab);
    /* Caps on what a config (from a flag or a file) may ask for, checked
     * before any of it is allocated. */
    if (c->tgt_vocab > QKV_MAX_VOCAB ||
        (encdec && c->src_vocab > QKV_MAX_VOCAB))
        return config_error(err, len,
                            "vocabularies of %d and %d tokens: at "
                            "most %d",
                            c->src_vocab, c->tgt_vocab, QKV_MAX_VOCAB);
    if (c->d_model > QKV_MAX_WIDTH || c->d_ff > QKV_MAX_WIDTH)
        return config_error(err, len, "d_model %d and d_ff %d: at most %d",
                            c->d_model, c->d_ff, QKV_MAX_WIDTH);
    if (c->max_len > QKV_MAX_POSITIONS ||
        (double)c->max_len * c->d_model > (double)QKV_MAX_POSITIONS * 1024)
        return config_error(err, len,
                            "max_len %d (x d_model %d): at most %d positions "
                            "and %d x 1024 position values",
                            c->max_len, c->d_model, QKV_MAX_POSITIONS,
                            QKV_MAX_POSITIONS);
    return 0;
}

int qkv_model_declare(qkv_model *m, const qkv_model_config *cfg, char *err,
                      size_t errlen) {
    memset(m, 0, sizeof *m);
    if (check_config(cfg, err, errlen)) return -1;
    const qkv_model_config *c = &m->cfg;
    m->cfg = *cfg;
    if (c->kind == QKV_MODEL_DECODER) m->cfg.n_enc = 0;
    int D = c->d_model, L = c->max_len;
    qkv_params *ps = &m->params;
    qkv_params_init(ps);
    if (c->kind == QKV_MODEL_ENCDEC) {
        m->src_embed =
            qkv_params_add(ps, "src_embed.weight", 2, (int[]){c->src_vocab, D});
        if (c->pos == QKV_POS_LEARNED)
            m->src_pos = qkv_params_add(ps, "src_pos.weight", 2, (int[]){L, D});
    }
    m->tgt_embed =
        qkv_params_add(ps, "tgt_embed.weight", 2, (int[]){c->tgt_vocab, D});
    if (c->pos == QKV_POS_LEARNED)
        m->tgt_pos = qkv_params_add(ps, "tgt_pos.weight", 2, (int[]){L, D});

    char name[64];
    m->enc = qkv_calloc((size_t)c->n_enc + 1, sizeof *m->enc, "encoder layers");
    m->dec = qkv_calloc((size_t)c->n_dec, sizeof *m->dec, "decoder layers");
    for (int i = 0; i < c->n_enc; i++) {
        snprintf(name, sizeof name, "encoder.layers.%d", i);
        qkv_encoder_layer_init(&m->enc[i], ps, name, D, c->heads, c->d_ff,
                               c->act, c->ln_eps);
    }
    if (c->norm == QKV_NORM_PRE && c->n_enc)
        qkv_norm_init(&m->enc_norm, ps, "encoder.norm", D, c->ln_eps);
    for (int i = 0; i < c->n_dec; i++) {
        snprintf(name, sizeof name, "decoder.layers.%d", i);
        qkv_decoder_layer_init(&m->dec[i], ps, name, D, c->heads, c->d_ff,
                               c->act, c->ln_eps, c->kind == QKV_MODEL_ENCDEC);
    }
    if (c->norm == QKV_NORM_PRE)
        qkv_norm_init(&m->dec_norm, ps, "decoder.norm", D, c->ln_eps);
    m->generator = c->tie_output ? m->tgt_embed
                                 : qkv_params_add(ps, "generator.weight", 2,
                                                  (int[]){c->tgt_vocab, D});
    /* weights and gradients, and the sinusoidal table */
    double bytes = 8.0 * (double)ps->n + 4.0 * L * D;
    char a[32], b[32];
    if (ps->n > QKV_MAX_PARAMS || bytes > (double)qkv_memory_limit()) {
        config_error(err, errlen,
                     "the model has %zu parameters: it needs %s for weights "
                     "and gradients, and qkv may use %s (at most %d "
                     "parameters)",
                     ps->n, qkv_bytes_str(bytes, a),
                     qkv_bytes_str((double)qkv_memory_limit(), b),
                     QKV_MAX_PARAMS);
        qkv_model_free(m);
        return -1;
    }
    return 0;
}

void qkv_model_alloc(qkv_model *m, uint64_t seed) {
    QKV_CHECK(m->params.count && !m->params.values,
              "model_alloc: declare the model first, and only once");
    qkv_params *ps = &m->params;
    int D = m->cfg.d_model, L = m->cfg.max_len;
    qkv_params_alloc(ps);
    qkv_pcg32 init;
    qkv_pcg32_seed(&init, seed, 0x1417); /* one stream for weights */
    qkv_xavier_init(ps, &init);
    qkv_params_touch(ps);
    qkv_pcg32_seed(&m->rng, seed, 0xd209); /* another for dropout */

    /* PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...)
     * (sec. 3.5) */
    m->pe =
        qkv_malloc_aligned((size_t)L * D * sizeof(float), "positional table");
    for (int p = 0; p < L; p++)
        for (int i = 0; i < D; i += 2) {
            double angle = p / pow(10000.0, (double)i / D);
            m->pe[(size_t)p * D + i] = (float)sin(angle);
            if (i + 1 < D) m->pe[(size_t)p * D + i + 1] = (float)cos(angle);
        }
}

int qkv_model_init(qkv_model *m, const qkv_model_config *cfg, uint64_t seed,
                   char *err, size_t errlen) {
    if (qkv_model_declare(m, cfg, err, errlen)) return -1;
    qkv_model_alloc(m, seed);
    return 0;
}

void qkv_model_free(qkv_model *m) {
    qkv_params_free(&m->params);
    free(m->enc);
    free(m->dec);
    free(m->pe);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- forward */

/* x = drop(embed(ids) * sqrt(D)? + pos[0..T)) : (B, T, D) */
static qkv_tensor *embed(qkv_model *m, qkv_graph *g, qkv_tensor *table,
                         qkv_tensor *pos, const int32_t *ids, int B, int T) {
    const qkv_model_config *c = &m->cfg;
    QKV_CHECK(T >= 1 && T <= c->max_len,
              "model: sequence length %d is outside 1..max_len = %d", T,
              c->max_len);
    int D = c->d_model;
    qkv_tensor *x = qkv_embedding(g, table, ids, 2, (int[]){B, T});
    if (c->scale_emb) x = qkv_scale(g, x, sqrtf((float)D));
    qkv_tensor *p;
    if (pos) {
        int32_t *at = qkv_arena_alloc(&g->arena, (size_t)T * sizeof *at);
        for (int t = 0; t < T; t++) at[t] = t;
        p = qkv_embedding(g, pos, at, 1, &T);
    } else {
        p = qkv_tensor_wrap(g, m->pe, 2, (int[]){T, D});
    }
    return qkv_dropout(g, qkv_add(g, x, p), c->dropout, &m->rng);
}

static qkv_sublayer_ctx sublayer_ctx(qkv_model *m) {
    qkv_sublayer_ctx c = {m->cfg.norm, m->cfg.dropout, &m->rng};
    return c;
}

qkv_tensor *qkv_model_encoder_forward(qkv_model *m, qkv_graph *g,
                                      const int32_t *src,
                                      const uint8_t *src_pad, int B, int S,
                                      float *weights) {
    QKV_CHECK(m->cfg.kind == QKV_MODEL_ENCDEC,
              "model: decoder-only has no encoder");
    qkv_sublayer_ctx c = sublayer_ctx(m);
    qkv_tensor *x = embed(m, g, m->src_embed, m->src_pos, src, B, S);
    size_t per = (size_t)B * m->cfg.heads * S * S;
    for (int i = 0; i < m->cfg.n_enc; i++)
        x = qkv_encoder_layer_forward(&m->enc[i], g, &c, x, src_pad,
                                      weights ? weights + i * per : NULL);
    if (m->cfg.norm == QKV_NORM_PRE) x = qkv_norm_forward(&m->enc_norm, g, x);
    return x;
}

qkv_tensor *qkv_model_decoder_forward(qkv_model *m, qkv_graph *g,
                                      const int32_t *tgt,
                                      const uint8_t *tgt_pad, int B, int T,
                                      qkv_tensor *mem, const uint8_t *src_pad,
                                      float *self_w, float *cross_w) {
    qkv_sublayer_ctx c = sublayer_ctx(m);
    qkv_tensor *x = embed(m, g, m->tgt_embed, m->tgt_pos, tgt, B, T);
    int S = mem ? mem->shape[1] : 0;
    size_t per_self = (size_t)B * m->cfg.heads * T * T,
           per_cross = (size_t)B * m->cfg.heads * T * S;
    for (int i = 0; i < m->cfg.n_dec; i++)
        x = qkv_decoder_layer_forward(&m->dec[i], g, &c, x, mem, tgt_pad,
                                      src_pad,
                                      self_w ? self_w + i * per_self : NULL,
                                      cross_w ? cross_w + i * per_cross : NULL);
    if (m->cfg.norm == QKV_NORM_PRE) x = qkv_norm_forward(&m->dec_norm, g, x);
    return qkv_matmul(g, x, m->generator, 0, 1);
}

qkv_tensor *qkv_model_forward(qkv_model *m, qkv_graph *g, const qkv_batch *b) {
    qkv_tensor *mem = NULL;
    if (m->cfg.kind == QKV_MODEL_ENCDEC) {
        QKV_CHECK(b->src, "model: the encoder-decoder needs a source batch");
        mem = qkv_model_encoder_forward(m, g, b->src, b->src_pad, b->B, b->S,
                                        NULL);
    }
    return qkv_model_decoder_forward(m, g, b->tgt_in, b->tgt_pad, b->B, b->T,
                                     mem, b->src_pad, NULL, NULL);
}

qkv_tensor *qkv_model_loss(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                           float label_smoothing) {
    return qkv_model_loss_over(m, g, b, label_smoothing, 0.0);
}

qkv_tensor *qkv_model_loss_over(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                                float label_smoothing, double divisor) {
    qkv_tensor *logits = qkv_model_forward(m, g, b);
    return qkv_cross_entropy_over(g, logits, b->tgt_out, m->cfg.pad_id,
                                  label_smoothing, divisor);
}

/* ----------------------------------------------------- incremental decoding */

void qkv_kv_cache_init(qkv_kv_cache *kc, const qkv_model *m, int rows,
                       int rows_cap, int cap, const float *mem, int S,
                       const uint8_t *src_pad) {
    const qkv_model_config *c = &m->cfg;
    int encdec = c->kind == QKV_MODEL_ENCDEC;
    QKV_CHECK(rows >= 1 && rows <= rows_cap && cap >= 1 && cap <= c->max_len,
              "kv_cache: %d of %d rows, %d positions (max_len %d)", rows,
              rows_cap, cap, c->max_len);
    QKV_CHECK(encdec ? mem && S >= 1 && S <= c->max_len : !mem && S == 0,
              "kv_cache: the encoder-decoder needs its memory (S %d), the "
              "decoder-only none",
              S);
    memset(kc, 0, sizeof *kc);
    kc->rows = rows, kc->rows_cap = rows_cap, kc->cap = cap, kc->S = S;
    kc->layers = c->n_dec, kc->heads = c->heads, kc->d_model = c->d_model;
    kc->d_k = c->d_model / c->heads;
    size_t D = (size_t)c->d_model, R = (size_t)rows_cap;
    size_t self = (size_t)kc->layers * 2 * R * cap * D * sizeof(float);
    size_t cross = (size_t)kc->layers * R * S * 2 * D * sizeof(float);
    for (int i = 0; i < 2; i++) {
        kc->self[i] = qkv_malloc_aligned(self, "key/value cache");
        if (!encdec) continue;
        kc->cross[i] = qkv_malloc_aligned(cross, "key/value cache");
        kc->mem[i] =
            qkv_malloc_aligned(R * S * D * sizeof(float), "key/value cache");
        if (src_pad) kc->pad[i] = qkv_malloc(R * S, "key/value cache");
    }
    size_t nwt = (size_t)c->tgt_vocab * D;
    for (int i = 0; i < c->n_dec; i++)
        nwt += qkv_decoder_layer_wt_size(&m->dec[i]);
    kc->wt = qkv_malloc_aligned(nwt * sizeof(float), "transposed weights");
    float *w = kc->wt;
    for (int i = 0; i < c->n_dec; i++) {
        qkv_decoder_layer_wt_fill(&m->dec[i], w);
        w += qkv_decoder_layer_wt_size(&m->dec[i]);
    }
    qkv_transpose(m->generator->data, c->tgt_vocab, (int)D, w);
    if (encdec) {
        memcpy(kc->mem[0], mem, (size_t)rows * S * D * sizeof(float));
        if (src_pad) memcpy(kc->pad[0], src_pad, (size_t)rows * S);
    }
}

void qkv_kv_cache_free(qkv_kv_cache *kc) {
    for (int i = 0; i < 2; i++) {
        free(kc->self[i]);
        free(kc->cross[i]);
        free(kc->mem[i]);
        free(kc->pad[i]);
    }
    free(kc->wt);
    memset(kc, 0, sizeof *kc);
}

/* Rows of `width` elements of `size` bytes: dst row i = src row parent[i],
 * for blocks of rows_cap rows `blocks` times. */
static void gather_rows(void *dst, const void *src, size_t row_bytes,
                        size_t block_bytes, int blocks, const int *parent,
                        int rows) {
    for (int k = 0; k < blocks; k++)
        for (int i = 0; i < rows; i++)
            memcpy((char *)dst + k * block_bytes + i * row_bytes,
                   (const char *)src + k * block_bytes +
                       (size_t)parent[i] * row_bytes,
                   row_bytes);
}

void qkv_kv_cache_gather(qkv_kv_cache *kc, const int *parent, int rows) {
    QKV_CHECK(rows >= 1 && rows <= kc->rows_cap,
              "kv_cache_gather: %d rows, at most %d", rows, kc->rows_cap);
    for (int i = 0; i < rows; i++)
        QKV_CHECK(parent[i] >= 0 && parent[i] < kc->rows,
                  "kv_cache_gather: parent %d of row %d outside 0..%d",
                  parent[i], i, kc->rows - 1);
    int a = kc->cur, b = 1 - a, H = kc->heads, K = kc->d_k;
    size_t R = (size_t)kc->rows_cap, D = (size_t)kc->d_model, S = kc->S;
    size_t head = (size_t)kc->cap * K * sizeof(float);
    /* only the cached positions of each head */
    for (int l = 0; l < 2 * kc->layers; l++)
        for (int i = 0; i < rows; i++)
            for (int h = 0; h < H; h++) {
                size_t blk = (size_t)l * R * H * head;
                memcpy((char *)kc->self[b] + blk + ((size_t)i * H + h) * head,
                       (char *)kc->self[a] + blk +
                           ((size_t)parent[i] * H + h) * head,
                       (size_t)kc->len * K * sizeof(float));
            }
    if (kc->S) {
        gather_rows(kc->cross[b], kc->cross[a], S * 2 * D * sizeof(float),
                    R * S * 2 * D * sizeof(float), kc->layers, parent, rows);
        gather_rows(kc->mem[b], kc->mem[a], S * D * sizeof(float), 0, 1, parent,
                    rows);
        if (kc->pad[a])
            gather_rows(kc->pad[b], kc->pad[a], S, 0, 1, parent, rows);
    }
    kc->cur = b;
    kc->rows = rows;
}

/* Layer i's view of the live buffers. */
static qkv_layer_kv layer_kv(const qkv_kv_cache *kc, int i) {
    size_t R = (size_t)kc->rows_cap, D = (size_t)kc->d_model, S = kc->S;
    size_t per = R * kc->cap * D; /* keys (or values) of one layer */
    float *self = kc->self[kc->cur] + (size_t)i * 2 * per;
    qkv_layer_kv kv = {.k = self,
                       .v = self + per,
                       .src_pad = kc->pad[kc->cur],
                       .cap = kc->cap,
                       .S = kc->S};
    if (S) kv.ckv = kc->cross[kc->cur] + (size_t)i * R * S * 2 * D;
    return kv;
}

qkv_tensor *qkv_model_decoder_step(qkv_model *m, qkv_graph *g, qkv_kv_cache *kc,
                                   const int32_t *tgt, size_t ld, int t) {
    const qkv_model_config *c = &m->cfg;
    int B = kc->rows, D = c->d_model, V = c->tgt_vocab;
    QKV_CHECK(t >= 1 && t <= kc->cap && (size_t)t <= ld,
              "decoder_step: position %d outside the cache (%d) or the rows "
              "(%zu)",
              t, kc->cap, ld);
    QKV_CHECK(!g->training && !g->recording,
              "decoder_step: decoding only (no tape, no dropout)");
    int plan[QKV_LAYER_PLAN];
    int np = qkv_decoder_layer_plan(B, t, kc->S, D, c->heads, c->d_ff, plan);
    int t0 = t - 1;
    if (kc->len != t - 1 || t == 1 || np != kc->nplan ||
        memcmp(plan, kc->plan, (size_t)np * sizeof *plan)) {
        t0 = 0; /* (re)compute every position, and the memory's K | V */
        kc->recomputes++;
        memcpy(kc->plan, plan, (size_t)np * sizeof *plan);
        kc->nplan = np;
        for (int i = 0; i < c->n_dec && kc->S; i++)
            qkv_decoder_layer_memory(&m->dec[i], g, kc->mem[kc->cur], B * kc->S,
                                     (float *)layer_kv(kc, i).ckv);
    }
    int T = t - t0;
    int32_t *ids = qkv_arena_alloc(&g->arena, (size_t)B * T * sizeof *ids);
    for (int b = 0; b < B; b++)
        memcpy(ids + (size_t)b * T, tgt + b * ld + t0, (size_t)T * sizeof *ids);
    /* embed(ids) * sqrt(D)? + pos[t0..t), as embed() */
    qkv_tensor *x = qkv_embedding(g, m->tgt_embed, ids, 2, (int[]){B, T});
    if (c->scale_emb) x = qkv_scale(g, x, sqrtf((float)D));
    qkv_tensor *p;
    if (m->tgt_pos) {
        int32_t *at = qkv_arena_alloc(&g->arena, (size_t)T * sizeof *at);
        for (int i = 0; i < T; i++) at[i] = t0 + i;
        p = qkv_embedding(g, m->tgt_pos, at, 1, &T);
    } else {
        p = qkv_tensor_wrap(g, m->pe + (size_t)t0 * D, 2, (int[]){T, D});
    }
    x = qkv_add(g, x, p);
    qkv_sublayer_ctx sc = sublayer_ctx(m);
    const float *wt = kc->wt;
    for (int i = 0; i < c->n_dec; i++) {
        qkv_layer_kv kv = layer_kv(kc, i);
        kv.wt = wt;
        x = qkv_decoder_layer_step(&m->dec[i], g, &sc, x, &kv, t0);
        wt += qkv_decoder_layer_wt_size(&m->dec[i]);
    }
    kc->len = t;
    /* the last position of each row: final norm, generator */
    qkv_tensor *last = qkv_tensor_new(g, 2, (int[]){B, D});
    for (int b = 0; b < B; b++)
        memcpy(last->data + (size_t)b * D,
               x->data + ((size_t)b * T + T - 1) * D,
               (size_t)D * sizeof(float));
    if (c->norm == QKV_NORM_PRE) last = qkv_norm_forward(&m->dec_norm, g, last);
    qkv_tensor *logits = qkv_tensor_new(g, 2, (int[]){B, V});
    if (g->precision == QKV_BF16) /* rows independent of M (bf16.h) */
        qkv_gemm_bf16_packed(0, B, last->data, D,
                             qkv_params_packed(m->generator->owner,
                                               m->generator->data, 1, D, V, D),
                             0, logits->data, V);
    else
        qkv_sgemm_rows(B * t, 0, 0, 0, B, V, D, last->data, D, wt, V,
                       logits->data, V);
    return logits;
}

/* ------------------------------------------------------------------ memory */

double qkv_model_activation_bytes(const qkv_model_config *c, int B, int S,
                                  int T, int train) {
    double b = B, s = c->kind == QKV_MODEL_ENCDEC ? S : 0, t = T;
    double D = c->d_model, H = c->heads, F = c->d_ff, V = c->tgt_vocab;
    double drop = c->dropout > 0, pre = c->norm == QKV_NORM_PRE;
    /* per layer: the Q|K|V projection (3D), attention output, W_O, the
     * residual and norm (post: one output; pre: the norm's and the sum's),
     * the FFN (F, then D), dropout masks, and the attention weights H S S */
    double enc = b * s * ((8 + 2 * pre + 3 * drop) * D + F) + b * H * s * s;
    double dec = b * t * ((8 + 3 * pre + 4 * drop) * D + F) + b * H * t * t;
    if (c->kind == QKV_MODEL_ENCDEC) /* cross-attention: Q, K|V of memory */
        dec += b * t * (4 + pre + drop) * D + b * s * 2 * D + b * H * t * s;
    double fwd = c->n_enc * enc + c->n_dec * dec + 3 * b * (s + t) * D +
                 2 * b * t * V; /* embeddings; logits and probabilities */
    /* The backward's gradients reuse dead buffers, but attention's dP and
     * a layer's gradients coexist with the activations: at most about as
     * much again (checked against the arena's peak in test_model). */
    /* and per layer some 100 tensors' headers and alignment */
    double overhead = 65536.0 * (c->n_enc + c->n_dec + 1);
    return 4.0 * (train ? 2 * fwd : fwd) + overhead;
}

/* --------------------------------------------------------------- decoding */
