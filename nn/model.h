/* model.h - the two models: encoder-decoder (translation) and decoder-only.
 *
 * The encoder-decoder is the Transformer of Vaswani et al. 2017 without
 * biases: embeddings (optionally * sqrt(D)) + positions (sinusoidal or
 * learned) -> dropout -> N_enc encoder layers; the decoder likewise with
 * N_dec layers of masked self-attention, cross-attention and FFN; then the
 * generator, a (V, D) linear (optionally tied to the target embedding).
 * Post-norm is the paper's; pre-norm adds a final norm after each stack.
 * The decoder-only model is the decoder without cross-attention.
 *
 * Every parameter lives in m->params under a stable dotted name
 * (encoder.layers.0.self_attn.w_q) that checkpoints and the PyTorch golden
 * test share.
 *
 *   qkv_model m;
 *   qkv_model_config c = qkv_model_defaults(QKV_MODEL_ENCDEC);
 *   c.src_vocab = c.tgt_vocab = 11;
 *   if (qkv_model_init(&m, &c, 42, err, sizeof err)) die(err);
 *   qkv_tensor *loss = qkv_model_loss(&m, &g, &batch, 0.0f);
 */
#ifndef QKV_MODEL_H
#define QKV_MODEL_H

#include <stdio.h>

#include "batch.h"
#include "config.h"
#include "layers.h"

typedef enum qkv_model_kind {
    QKV_MODEL_ENCDEC,
    QKV_MODEL_DECODER
} qkv_model_kind;
typedef enum qkv_pos_kind { QKV_POS_SIN, QKV_POS_LEARNED } qkv_pos_kind;

typedef struct qkv_model_config {
    qkv_model_kind kind;
    int src_vocab, tgt_vocab; /* decoder-only uses tgt_vocab */
    int d_model, heads, d_ff;
    int n_enc, n_dec; /* layers; n_enc unused by decoder-only */
    int max_len;      /* longest sequence the positions cover */
    float dropout;    /* on sub-layer outputs and embedding sums */
    float ln_eps;     /* layer norm epsilon (1e-5) */
    qkv_pos_kind pos;
    qkv_norm_kind norm;
    qkv_act act;
    int scale_emb;  /* embeddings * sqrt(d_model) (paper sec. 3.4) */
    int tie_output; /* generator shares the target embedding */
    int pad_id;     /* padding token: masked, and ignored by the loss */
} qkv_model_config;

/* The config's fields, one row each (config.h): JSON keys as checkpoints
 * store them, the command-line flags of those a user chooses (the vocabulary
 * sizes, layer counts and positions come from the data and the command),
 * ranges, enum names and help. */
extern const qkv_field qkv_model_fields[];
extern const int qkv_model_n_fields;

/* As JSON (qkv_model_fields): every field by name, enums as strings
 * ("encdec"/"decoder", "sin"/"learned", "post"/"pre", "relu"/"gelu"), flags
 * as true/false. malloc'd; free() it. */
char *qkv_model_config_to_json(const qkv_model_config *c);
/* Strict inverse: every field must be present exactly once with the right
 * type (ints integral and in range, floats finite), no unknown fields or enum
 * strings. Returns 0, or -1 with a one-line reason naming the field in err
 * and *c unchanged. Value ranges are qkv_model_init's to check. */
int qkv_model_config_from_json(const char *json, qkv_model_config *c, char *err,
                               size_t errlen);

/* The first field in which two configs differ ("max_len is 30 in the file
 * but 40 here"), in msg; returns 1, or 0 if none does. Dropout is compared
 * only if with_dropout; src_vocab and n_enc not for decoder-only models. */
int qkv_model_config_diff(const qkv_model_config *file,
                          const qkv_model_config *here, int with_dropout,
                          char *msg, size_t len);

/* The paper's base shape, scaled down: D 64, H 4, F 256, N 2+2, post-norm,
 * sinusoidal positions, ReLU, dropout 0.1, pad 0, max_len 256. Vocab 0: set it.
 */
qkv_model_config qkv_model_defaults(qkv_model_kind kind);

typedef struct qkv_model {
    qkv_model_config cfg;
    qkv_params params;
    qkv_tensor *src_embed, *tgt_embed; /* (V, D) */
    qkv_tensor *src_pos, *tgt_pos; /* (max_len, D) when learned, else NULL */
    qkv_tensor *generator;         /* (V_tgt, D), == tgt_embed when tied */
    qkv_encoder_layer *enc;        /* n_enc */
    qkv_decoder_layer *dec;        /* n_dec */
    qkv_norm enc_norm, dec_norm;   /* pre-norm only */
    float *pe;                     /* (max_len, D) sinusoidal table */
    qkv_pcg32 rng;                 /* dropout masks */
} qkv_model;

/* Caps a config may ask for (a flag or a checkpoint's metadata); beyond
 * them, or beyond the memory qkv may use (io.h), qkv_model_declare refuses
 * it before allocating. QKV_MAX_PARAMS: optimiser state is saved as one
 * tensor, whose dimensions are ints. */
#define QKV_MAX_VOCAB (1 << 22)
#define QKV_MAX_WIDTH (1 << 16) /* d_model, d_ff */
/* max_len; also max_len x d_model <= 2^26 (a 256 MB sinusoid table) */
#define QKV_MAX_POSITIONS (1 << 16)
#define QKV_MAX_PARAMS    2147483647

/* Checks the config (a bad one returns -1 with a one-line reason in err),
 * registers and allocates the parameters, and initialises them with Xavier
 * uniform from PCG32 stream `seed`. The same as qkv_model_declare, then
 * qkv_model_alloc. */
int qkv_model_init(qkv_model *m, const qkv_model_config *cfg, uint64_t seed,
                   char *err, size_t errlen);
/* The first half of qkv_model_init: checks cfg and registers the parameters
 * (names and shapes in m->params, no buffers yet), so a checkpoint's config
 * can be compared with its tensors before the model's memory is allocated.
 * Refuses a model whose weights and gradients would not fit in the memory
 * qkv may use. After -1 there is nothing to free; after 0 either
 * qkv_model_alloc or qkv_model_free. */
int qkv_model_declare(qkv_model *m, const qkv_model_config *cfg, char *err,
                      size_t errlen);
/* The second half: allocates the parameters and initialises them. */
void qkv_model_alloc(qkv_model *m, uint64_t seed);
void qkv_model_free(qkv_model *m);
/* Encoder output (B, S, D). weights, if non-NULL, receives per layer the
 * (B, H, S, S) self-attention weights, layer after layer. */
qkv_tensor *qkv_model_encoder_forward(qkv_model *m, qkv_graph *g,
                                      const int32_t *src,
                                      const uint8_t *src_pad, int B, int S,
                                      float *weights);
/* Logits (B, T, V). mem: encoder output (NULL for decoder-only). self_w and
 * cross_w, if non-NULL, receive per layer the (B, H, T, T) and (B, H, T, S)
 * weights. */
qkv_tensor *qkv_model_decoder_forward(qkv_model *m, qkv_graph *g,
                                      const int32_t *tgt,
                                      const uint8_t *tgt_pad, int B, int T,
                                      qkv_tensor *mem, const uint8_t *src_pad,
                                      float *self_w, float *cross_w);
/* Logits (B, T, V) of a batch. */
qkv_tensor *qkv_model_forward(qkv_model *m, qkv_graph *g, const qkv_batch *b);
/* Mean cross-entropy over the non-pad targets of a batch. */
qkv_tensor *qkv_model_loss(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                           float label_smoothing);
/* The cross-entropy summed over the batch's non-pad targets and divided by
 * divisor (0: their count, as qkv_model_loss): a slice of a larger batch
 * (data-parallel ranks, accumulation) divides by the larger batch's count. */
qkv_tensor *qkv_model_loss_over(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                                float label_smoothing, double divisor);

/* ------------------------------------------------- incremental decoding
 *
 * A key/value cache: each decoder layer keeps the self-attention keys and
 * values of the positions decoded so far, (rows, H, cap, K), and, for the
 * encoder-decoder, the cross-attention keys and values of the encoder memory,
 * computed once. qkv_model_decoder_step then feeds only the newest token of
 * every row. Its logits have exactly the bits of qkv_model_decoder_forward
 * on the whole prefix: every product and attention row is computed with the
 * kernel choices the whole prefix would get (matmul.h's qkv_sgemm_rows,
 * ops.h's qkv_attention_rows), and where those choices change with the
 * prefix length or the row count (long products group their sums by shape)
 * the cache is recomputed from the tokens, a few times per decode at most.
 *
 *   qkv_kv_cache kc;
 *   qkv_kv_cache_init(&kc, &m, B, B, max_t, mem, S, src_pad);  // mem: or NULL
 *   for (int t = 1; t <= max_t; t++)   // seq (B, L): tokens so far
 *       logits = qkv_model_decoder_step(&m, &g, &kc, seq, L, t);  // (B, V)
 *   qkv_kv_cache_free(&kc);
 */
typedef struct qkv_kv_cache {
    int rows, rows_cap; /* live rows; the most there may be */
    int cap;            /* positions per row */
    int len;            /* positions cached in every row */
    int S;              /* memory positions (encoder-decoder), else 0 */
    int layers, heads, d_k, d_model;
    float *self[2];  /* (layers, 2, rows_cap, H, cap, K) keys, values */
    float *cross[2]; /* (layers, rows_cap, S, 2D) the memory's K | V */
    float *mem[2];   /* (rows_cap, S, D) the encoder memory */
    uint8_t *pad[2]; /* (rows_cap, S) its padding mask, or NULL */
    int cur;         /* which of each pair is live (gather swaps) */
    float *wt;       /* the decoder's weights transposed, layer by layer
                      * (qkv_decoder_layer_wt_fill), then the generator's
                      * (D, V): products of a few rows read them in place */
    int plan[QKV_LAYER_PLAN], nplan; /* kernel choices of the cached values */
    int recomputes; /* steps that computed every position (the first too) */
} qkv_kv_cache;

/* A cache for up to rows_cap rows of cap positions (cap <= max_len),
 * starting with `rows` rows, empty. Encoder-decoder: mem (rows, S, D), the
 * encoder output, and src_pad (rows, S) (or NULL) are copied; decoder-only:
 * NULL, 0, NULL. Out of memory: a message and exit 2. */
void qkv_kv_cache_init(qkv_kv_cache *kc, const qkv_model *m, int rows,
                       int rows_cap, int cap, const float *mem, int S,
                       const uint8_t *src_pad);
void qkv_kv_cache_free(qkv_kv_cache *kc);
/* Beam search keeps some hypotheses: row i becomes old row parent[i]
 * (i < rows <= rows_cap; parents may repeat), cached positions, memory and
 * mask alike. */
void qkv_kv_cache_gather(qkv_kv_cache *kc, const int *parent, int rows);

/* The logits (rows, V) of position t - 1 of tgt (rows, t), row stride ld,
 * without a tape (recording and training off): only positions past those
 * cached are computed, and they are cached. The cache must hold a prefix of
 * these very tokens (it is recomputed from tgt when t - 1 positions are not
 * cached, or when the kernel choices changed). The result lives in g's
 * arena. */
qkv_tensor *qkv_model_decoder_step(qkv_model *m, qkv_graph *g, qkv_kv_cache *kc,
                                   const int32_t *tgt, size_t ld, int t);

/* Bytes of activations (the graph arena) one batch of B rows of S source
 * and T target tokens needs: a training step (train 1: forward with the
 * tape, then backward), or a forward without a tape (0: evaluation, a
 * decoding step). An upper bound within a small factor of the arena's peak
 * (test_model checks both), for refusing a batch that cannot fit before it
 * is tried. Double: the sizes a hostile flag asks for overflow size_t. */
double qkv_model_activation_bytes(const qkv_model_config *c, int B, int S,
                                  int T, int train);

#endif
