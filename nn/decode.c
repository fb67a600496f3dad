#include "decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double qkv_log_sum_exp(const float *x, int n, double *max) {
    double mx = x[0], sum = 0.0;
    for (int v = 1; v < n; v++) mx = x[v] > mx ? x[v] : mx;
    for (int v = 0; v < n; v++) sum += exp((double)x[v] - mx);
    *max = mx;
    return log(sum);
}

double qkv_length_penalty(int len, float alpha) {
    return alpha == 0.0f ? 1.0 : pow((5.0 + len) / 6.0, (double)alpha);
}

/* No tape, no dropout for the length of a decode; restored by decode_end. */
typedef struct decode_mode {
    int rec, train;
} decode_mode;

static decode_mode decode_begin(qkv_graph *g) {
    decode_mode d = {qkv_graph_set_grad(g, 0), g->training};
    g->training = 0;
    return d;
}

static void decode_end(qkv_graph *g, decode_mode d) {
    qkv_graph_reset(g); /* drops views of buffers about to be freed */
    g->training = d.train;
    qkv_graph_set_grad(g, d.rec);
}

/* ------------------------------------------------------ next-token logits */

static int cache_on = 1;

int qkv_decode_set_cache(int on) {
    int was = cache_on;
    cache_on = on != 0;
    return was;
}

static qkv_decode_observer observer;
static void *observer_ctx;

void qkv_decode_set_observer(qkv_decode_observer fn, void *ctx) {
    observer = fn;
    observer_ctx = ctx;
}

/* Where a decode's next-token logits come from: the key/value cache, or the
 * whole prefix again (qkv_decode_set_cache(0)). */
typedef struct stepper {
    qkv_model *m;
    qkv_graph *g;
    int cached;
    qkv_kv_cache kc;
    const float *mem;   /* recompute: (rows, S, D) encoder memory, or NULL */
    const uint8_t *pad; /* (rows, S) or NULL */
    int S;
    int32_t *cur; /* recompute: (rows_cap, cap) the prefixes packed */
} stepper;

/* rows_cap rows of up to cap >= 1 positions; mem (rows, S, D) and pad stay
 * the caller's (the cache copies them). */
static void stepper_init(stepper *st, qkv_model *m, qkv_graph *g, int rows,
                         int rows_cap, int cap, const float *mem, int S,
                         const uint8_t *pad) {
    memset(st, 0, sizeof *st);
    st->m = m, st->g = g, st->cached = cache_on;
    st->mem = mem, st->pad = pad, st->S = S;
    /* past max_len a step fails as the recompute would, naming the length */
    if (cap > m->cfg.max_len) cap = m->cfg.max_len;
    if (st->cached)
        qkv_kv_cache_init(&st->kc, m, rows, rows_cap, cap, mem, mem ? S : 0,
                          pad);
    else
        st->cur = qkv_malloc((size_t)rows_cap * cap * sizeof *st->cur,
                             "decode buffer");
}

static void stepper_free(stepper *st) {
    if (st->cached) qkv_kv_cache_free(&st->kc);
    free(st->cur);
}

/* The logits of position t - 1 of the rows of seq (rows, t; row stride ld):
 * row i at the result + i * *stride. Resets g first. */
static const float *stepper_logits(stepper *st, const int32_t *seq, size_t ld,
                                   int rows, int t, size_t *stride) {
    qkv_graph *g = st->g;
    int V = st->m->cfg.tgt_vocab;
    const float *x;
    QKV_CHECK(t >= 1 && t <= st->m->cfg.max_len,
              "model: sequence length %d is outside 1..max_len = %d", t,
              st->m->cfg.max_len);
    qkv_graph_reset(g);
    if (st->cached) {
        QKV_CHECK(st->kc.rows == rows, "decode: %d rows, the cache has %d",
                  rows, st->kc.rows);
        x = qkv_model_decoder_step(st->m, g, &st->kc, seq, ld, t)->data;
        *stride = (size_t)V;
    } else {
        for (int i = 0; i < rows; i++)
            memcpy(st->cur + (size_t)i * t, seq + i * ld,
                   (size_t)t * sizeof *st->cur);
        qkv_tensor *memt =
            st->mem ? qkv_tensor_wrap(g, (float *)st->mem, 3,
                                      (int[]){rows, st->S, st->m->cfg.d_model})
                    : NULL;
        x = qkv_model_decoder_forward(st->m, g, st->cur, NULL, rows, t, memt,
                                      st->pad, NULL, NULL)
                ->data +
            (size_t)(t - 1) * V;
        *stride = (size_t)t * V;
    }
    if (observer) observer(observer_ctx, x, rows, *stride, t);
    return x;
}

/* ------------------------------------------------------------ beam search */

/* A candidate: hypothesis `idx / V` extended by token `idx % V`. */
typedef struct beam_cand {
    double score;
    int64_t idx;
} beam_cand;

/* Inserts c into best (n sorted by score descending, *count <= cap filled),
 * keeping the first `cap`. Candidates arrive in increasing idx, so an equal
 * score goes after the ones already there: ties favour the lower idx. */
static void cand_insert(beam_cand *best, int *count, int cap, beam_cand c) {
    if (*count == cap && !(c.score > best[cap - 1].score)) return;
    int pos = *count < cap ? (*count)++ : cap - 1;
    while (pos > 0 && best[pos - 1].score < c.score) {
        best[pos] = best[pos - 1];
        pos--;
    }
    best[pos] = c;
}

/* One beam search's buffers and state. */
typedef struct beam_state {
    int beam, S, D, V, max_out, eos;
    float alpha;       /* the length penalty */
    size_t L;          /* max_out + 1: room for bos and every token */
    float *mem;        /* (beam, S, D) the encoder memory, once per beam row */
    uint8_t *pad;      /* (beam, S) the source mask per beam row, or NULL */
    int32_t *hyp_buf;  /* holds hyp and next */
    int32_t *hyp;      /* (beam, L) live hypotheses: bos, tokens */
    int32_t *next;     /* (beam, L) the next step's, built from hyp */
    double *score_buf; /* holds lscore and nscore */
    double *lscore;    /* (beam) live: sum of log p */
    double *nscore;    /* (beam) the next step's */
    int32_t *fin;      /* (beam, max_out) finished hypotheses, without bos */
    double *fnorm;     /* (beam) their scores over the length penalty */
    int *flen;         /* (beam) their lengths */
    beam_cand *best;   /* (beam) this step's best candidates */
    int *parent;       /* (beam) the live hypothesis each next one extends */
    int live, nfin;
    stepper st;
} beam_state;

/* Encodes the source once (B = 1) into a fresh arena, copies the memory and
 * the mask to every beam row, and allocates the rest of bs. */
static void beam_alloc(beam_state *bs, qkv_model *m, qkv_graph *g,
                       const int32_t *src, const uint8_t *src_pad) {
    int beam = bs->beam, S = bs->S;
    qkv_graph_reset(g);
    qkv_tensor *mem1 =
        qkv_model_encoder_forward(m, g, src, src_pad, 1, S, NULL);
    size_t row = (size_t)S * bs->D, L = bs->L;
    bs->mem =
        qkv_malloc_aligned((size_t)beam * row * sizeof *bs->mem, "beam memory");
    bs->pad = src_pad ? qkv_malloc((size_t)beam * S, "beam source mask") : NULL;
    for (int i = 0; i < beam; i++) {
        memcpy(bs->mem + i * row, mem1->data, row * sizeof *bs->mem);
        if (bs->pad) memcpy(bs->pad + (size_t)i * S, src_pad, (size_t)S);
    }
    /* the cache starts with the one live hypothesis */
    stepper_init(&bs->st, m, g, 1, beam, bs->max_out, mem1->data, S, src_pad);
    bs->st.mem = bs->mem, bs->st.pad = bs->pad; /* recompute: per beam row */
    bs->hyp_buf = qkv_malloc(2 * (size_t)beam * L * sizeof *bs->hyp_buf,
                             "beam hypotheses");
    bs->hyp = bs->hyp_buf;
    bs->next = bs->hyp_buf + (size_t)beam * L;
    bs->parent = qkv_malloc((size_t)beam * sizeof *bs->parent, "beam parents");
    bs->fin = qkv_malloc((size_t)beam * bs->max_out * sizeof *bs->fin,
                         "beam finished");
    bs->score_buf =
        qkv_malloc(2 * (size_t)beam * sizeof *bs->score_buf, "beam scores");
    bs->lscore = bs->score_buf;
    bs->nscore = bs->score_buf + beam;
    bs->fnorm = qkv_malloc((size_t)beam * sizeof *bs->fnorm, "beam finished");
    bs->flen = qkv_malloc((size_t)beam * sizeof *bs->flen, "beam finished");
    bs->best = qkv_malloc((size_t)beam * sizeof *bs->best, "beam candidates");
}

static void beam_free(beam_state *bs) {
    stepper_free(&bs->st);
    free(bs->hyp_buf);
    free(bs->parent);
    free(bs->fin);
    free(bs->score_buf);
    free(bs->fnorm);
    free(bs->flen);
    free(bs->best);
    free(bs->mem);
    free(bs->pad);
}

/* Fills bs->best with the best extensions of the live hypotheses, as many as
 * beams are not finished yet, from their next-token logits (row i at
 * logits + i stride); returns how many. */
static int beam_expand(beam_state *bs, const float *logits, size_t stride,
                       int t) {
    int V = bs->V, want = bs->beam - bs->nfin, nbest = 0;
    for (int i = 0; i < bs->live; i++) {
        /* log p = x - logsumexp(x), in double */
        const float *x = logits + i * stride;
        double mx, lse = qkv_log_sum_exp(x, V, &mx);
        lse += mx;
        QKV_CHECK(isfinite(lse),
                  "qkv_beam_search: non-finite logits at step %d", t);
        for (int v = 0; v < V; v++) {
            beam_cand cd = {bs->lscore[i] + ((double)x[v] - lse),
                            (int64_t)i * V + v};
            cand_insert(bs->best, &nbest, want, cd);
        }
    }
    return nbest;
}

/* Step t's nbest candidates become finished hypotheses (those that end with
 * eos or reach max_out) or the next step's live ones. */
static void beam_advance(beam_state *bs, int t, int nbest) {
    int V = bs->V, max_out = bs->max_out, nlive = 0;
    size_t L = bs->L;
    for (int k = 0; k < nbest; k++) {
        int i = (int)(bs->best[k].idx / V), v = (int)(bs->best[k].idx % V);
        if (v == bs->eos || t == max_out) {
            int32_t *f = bs->fin + (size_t)bs->nfin * max_out;
            memcpy(f, bs->hyp + i * L + 1, (size_t)(t - 1) * sizeof *f);
            f[t - 1] = v;
            bs->flen[bs->nfin] = t;
            bs->fnorm[bs->nfin++] =
                bs->best[k].score / qkv_length_penalty(t, bs->alpha);
        } else {
            memcpy(bs->next + nlive * L, bs->hyp + i * L,
                   (size_t)t * sizeof *bs->next);
            bs->next[nlive * L + t] = v;
            bs->parent[nlive] = i;
            bs->nscore[nlive++] = bs->best[k].score;
        }
    }
    int32_t *th = bs->hyp;
    bs->hyp = bs->next;
    bs->next = th;
    double *ts = bs->lscore;
    bs->lscore = bs->nscore;
    bs->nscore = ts;
    bs->live = nlive;
    /* the cache follows: row k becomes its parent's */
    if (nlive > 0 && bs->st.cached)
        qkv_kv_cache_gather(&bs->st.kc, bs->parent, nlive);
}

/* Early exit: a live score s <= 0 can only fall, and lp grows with the
 * length, so s / lp(max_out) bounds what it can still reach. */
static int beam_settled(const beam_state *bs, double lp_max) {
    if (bs->nfin == 0 || bs->live == 0) return 0;
    double top = bs->fnorm[0];
    for (int k = 1; k < bs->nfin; k++)
        top = bs->fnorm[k] > top ? bs->fnorm[k] : top;
    return bs->lscore[0] / lp_max <= top; /* lscore[0] is the best live */
}

void qkv_beam_search(qkv_model *m, qkv_graph *g, const int32_t *src,
                     const uint8_t *src_pad, int S, int beam,
                     float length_penalty, int bos, int eos, int max_out,
                     int32_t *out, float *score) {
    const qkv_model_config *c = &m->cfg;
    int V = c->tgt_vocab, D = c->d_model;
    QKV_CHECK(c->kind == QKV_MODEL_ENCDEC,
              "qkv_beam_search: needs the encoder-decoder, got the "
              "decoder-only model");
    QKV_CHECK(beam >= 1, "qkv_beam_search: beam = %d must be >= 1", beam);
    QKV_CHECK(max_out >= 1 && max_out <= c->max_len,
              "qkv_beam_search: max_out = %d is outside 1..max_len = %d",
              max_out, c->max_len);
    QKV_CHECK(
        S >= 1 && S <= c->max_len,
        "qkv_beam_search: source length S = %d is outside 1..max_len = %d", S,
        c->max_len);
    QKV_CHECK(length_penalty >= 0.0f,
              "qkv_beam_search: length_penalty = %g must be >= 0",
              (double)length_penalty);
    QKV_CHECK(bos >= 0 && bos < V,
              "qkv_beam_search: bos = %d outside the vocabulary (%d)", bos, V);
    QKV_CHECK(eos < V, "qkv_beam_search: eos = %d outside the vocabulary (%d)",
              eos, V);
    decode_mode mode = decode_begin(g);
    beam_state bs = {.beam = beam,
                     .S = S,
                     .D = D,
                     .V = V,
                     .max_out = max_out,
                     .eos = eos,
                     .alpha = length_penalty,
                     .L = (size_t)max_out + 1};
    beam_alloc(&bs, m, g, src, src_pad);
    double lp_max = qkv_length_penalty(max_out, length_penalty);
    bs.live = 1;
    bs.hyp[0] = bos;
    bs.lscore[0] = 0.0;
    for (int t = 1; t <= max_out && bs.live > 0; t++) {
        /* the live prefixes (live, t) -> their next-token logits */
        size_t stride;
        const float *x =
            stepper_logits(&bs.st, bs.hyp, bs.L, bs.live, t, &stride);
        beam_advance(&bs, t, beam_expand(&bs, x, stride, t));
        if (beam_settled(&bs, lp_max)) break;
    }

    int b = 0; /* the first finished with the best normalised score */
    for (int k = 1; k < bs.nfin; k++)
        if (bs.fnorm[k] > bs.fnorm[b]) b = k;
    for (int k = 0; k < max_out; k++)
        out[k] = k < bs.flen[b] ? bs.fin[(size_t)b * max_out + k] : c->pad_id;
    if (score) *score = (float)bs.fnorm[b];
    beam_free(&bs);
    decode_end(g, mode);
}

/* --------------------------------------------------------------- sampling */

typedef struct logit_id {
    float x;
    int id;
} logit_id;

/* Larger logit first, then lower id. */
static int logit_id_cmp(const void *pa, const void *pb) {
    const logit_id *a = pa, *b = pb;
    if (a->x != b->x) return a->x > b->x ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

typedef struct prob_id {
    double w;
    int id;
} prob_id;

/* Larger probability first, then lower id. */
static int prob_id_cmp(const void *pa, const void *pb) {
    const prob_id *a = pa, *b = pb;
    if (a->w != b->w) return a->w > b->w ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int j = 1; j < n; j++)
        if (x[j] > x[best]) best = j;
    return best;
}

/* Scratch of one draw, V each. */
typedef struct draw_scratch {
    uint8_t *kept;
    double *w;
    logit_id *order;
    prob_id *by_p;
} draw_scratch;

static void scratch_alloc(draw_scratch *d, int V) {
    d->kept = qkv_malloc((size_t)V, "sample scratch");
    d->w = qkv_malloc((size_t)V * sizeof *d->w, "sample scratch");
    d->order = qkv_malloc((size_t)V * sizeof *d->order, "sample scratch");
    d->by_p = qkv_malloc((size_t)V * sizeof *d->by_p, "sample scratch");
}

static void scratch_free(draw_scratch *d) {
    free(d->kept);
    free(d->w);
    free(d->order);
    free(d->by_p);
}

/* d->w (V) = exp((x - max) / temp) over the top_k largest of x, then over
 * the top_p nucleus (Holtzman et al. 2019, sec. 3.1: the smallest set, by
 * descending probability, whose probability reaches top_p), 0 elsewhere,
 * d->kept marking them; returns their sum. */
static double draw_weights(const float *x, int V, float temp, int top_k,
                           float top_p, draw_scratch *d) {
    uint8_t *kept = d->kept;
    double *w = d->w;
    if (top_k <= 0 || top_k >= V) {
        memset(kept, 1, (size_t)V);
    } else {
        for (int v = 0; v < V; v++) d->order[v] = (logit_id){x[v], v};
        qsort(d->order, (size_t)V, sizeof *d->order, logit_id_cmp);
        memset(kept, 0, (size_t)V);
        for (int k = 0; k < top_k; k++) kept[d->order[k].id] = 1;
    }
    double mx = -INFINITY, total = 0.0;
    for (int v = 0; v < V; v++)
        if (kept[v] && x[v] > mx) mx = x[v];
    QKV_CHECK(isfinite(mx), "qkv_sample: non-finite logits");
    for (int v = 0; v < V; v++) {
        w[v] = kept[v] ? exp(((double)x[v] - mx) / temp) : 0.0;
        total += w[v];
    }
    if (top_p > 0.0f && top_p < 1.0f) {
        int n = 0;
        for (int v = 0; v < V; v++)
            if (kept[v]) d->by_p[n++] = (prob_id){w[v], v};
        qsort(d->by_p, (size_t)n, sizeof *d->by_p, prob_id_cmp);
        double need = (double)top_p * total, cum = 0.0;
        int k = 0;
        while (k < n && cum < need) cum += d->by_p[k++].w;
        for (int j = k; j < n; j++) {
            kept[d->by_p[j].id] = 0;
            w[d->by_p[j].id] = 0.0;
        }
        total = 0.0; /* renormalise: the sum of what is left, in id order */
        for (int v = 0; v < V; v++) total += w[v];
    }
    return total;
}

/* One draw from the kept weights: one qkv_pcg32_float u picks the first id,
 * in id order, where the cumulative weight exceeds u * total; the last kept
 * id absorbs rounding. */
static int draw_token(const float *x, int V, float temp, int top_k, float top_p,
                      qkv_pcg32 *rng, draw_scratch *d) {
    double total = draw_weights(x, V, temp, top_k, top_p, d);
    double u = (double)qkv_pcg32_float(rng) * total, cum = 0.0;
    int tok = -1;
    for (int v = 0; v < V; v++) {
        if (!d->kept[v]) continue;
        tok = v;
        cum += d->w[v];
        if (u < cum) break;
    }
    return tok;
}

static void check_draw(int V, float temperature, float top_p) {
    QKV_CHECK(V >= 1, "qkv_sample: V = %d", V);
    QKV_CHECK(temperature > 0.0f, "qkv_sample: temperature = %g must be > 0",
              (double)temperature);
    QKV_CHECK(top_p >= 0.0f, "qkv_sample: top_p = %g must be >= 0",
              (double)top_p);
}

int qkv_sample_probs(const float *x, int V, float temperature, int top_k,
                     float top_p, double *p) {
    check_draw(V, temperature, top_p);
    draw_scratch d;
    scratch_alloc(&d, V);
    double total = draw_weights(x, V, temperature, top_k, top_p, &d);
    int n = 0;
    for (int v = 0; v < V; v++) {
        p[v] = d.w[v] / total;
        n += d.kept[v];
    }
    scratch_free(&d);
    return n;
}

int qkv_sample_token(const float *x, int V, float temperature, int top_k,
                     float top_p, qkv_pcg32 *rng) {
    check_draw(V, temperature, top_p);
    draw_scratch d;
    scratch_alloc(&d, V);
    int tok = draw_token(x, V, temperature, top_k, top_p, rng, &d);
    scratch_free(&d);
    return tok;
}

void qkv_sample(qkv_model *m, qkv_graph *g, const int32_t *prompt, int P,
                int max_out, float temperature, int top_k, float top_p, int eos,
                qkv_pcg32 *rng, int32_t *out) {
    const qkv_model_config *c = &m->cfg;
    int V = c->tgt_vocab;
    QKV_CHECK(
        c->kind == QKV_MODEL_DECODER,
        "qkv_sample: needs the decoder-only model, got the encoder-decoder");
    QKV_CHECK(temperature >= 0.0f, "qkv_sample: temperature = %g must be >= 0",
              (double)temperature);
    QKV_CHECK(top_p >= 0.0f, "qkv_sample: top_p = %g must be >= 0",
              (double)top_p);
    QKV_CHECK(max_out >= 1, "qkv_sample: max_out = %d must be >= 1", max_out);
    QKV_CHECK(P >= 1 && P - 1 + max_out <= c->max_len,
              "qkv_sample: prompt P = %d plus max_out = %d - 1 must be "
              "1..max_len = %d",
              P, max_out, c->max_len);
    QKV_CHECK(rng || temperature == 0.0f,
              "qkv_sample: temperature %g needs an rng", (double)temperature);
    QKV_CHECK(eos < V, "qkv_sample: eos = %d outside the vocabulary (%d)", eos,
              V);
    decode_mode mode = decode_begin(g);
    int32_t *seq =
        qkv_malloc(((size_t)P + max_out) * sizeof *seq, "sample buffer");
    draw_scratch d;
    scratch_alloc(&d, V);
    stepper st;
    stepper_init(&st, m, g, 1, 1, P - 1 + max_out, NULL, 0, NULL);
    memcpy(seq, prompt, (size_t)P * sizeof *seq);
    int k = 0;
    for (; k < max_out; k++) {
        int t = P + k;
        size_t stride;
        const float *x = stepper_logits(&st, seq, (size_t)t, 1, t, &stride);
        int tok = temperature == 0.0f
                      ? argmax(x, V)
                      : draw_token(x, V, temperature, top_k, top_p, rng, &d);
        seq[t] = out[k] = tok;
        if (tok == eos) break;
    }
    for (k++; k < max_out; k++) out[k] = c->pad_id;
    stepper_free(&st);
    free(seq);
    scratch_free(&d);
    decode_end(g, mode);
}

int qkv_generate(qkv_model *m, qkv_graph *g, int32_t *seq, int n, int max_out,
                 float temperature, int top_k, float top_p, int eos,
                 qkv_pcg32 *rng, qkv_token_fn on_token, void *ctx) {
    const qkv_model_config *c = &m->cfg;
    int V = c->tgt_vocab, L = c->max_len, keep = L / 2 > 0 ? L / 2 : 1;
    QKV_CHECK(c->kind == QKV_MODEL_DECODER,
              "qkv_generate: needs the decoder-only model, got the "
              "encoder-decoder");
    QKV_CHECK(n >= 1 && max_out >= 0, "qkv_generate: n = %d, max_out = %d", n,
              max_out);
    QKV_CHECK(temperature >= 0.0f && top_p >= 0.0f,
              "qkv_generate: temperature %g and top_p %g must be >= 0",
              (double)temperature, (double)top_p);
    QKV_CHECK(rng || temperature == 0.0f,
              "qkv_generate: temperature %g needs an rng", (double)temperature);
    QKV_CHECK(eos < V, "qkv_generate: eos = %d outside the vocabulary (%d)",
              eos, V);
    if (max_out == 0) return n;
    decode_mode mode = decode_begin(g);
    draw_scratch d;
    scratch_alloc(&d, V);
    int start = n > L ? n - L : 0; /* the window: seq[start .. n) */
    stepper st;
    stepper_init(&st, m, g, 1, 1, L, NULL, 0, NULL);
    for (int k = 0; k < max_out; k++) {
        if (n - start > L) { /* full: restart from the last `keep` tokens */
            start = n - keep;
            stepper_free(&st);
            stepper_init(&st, m, g, 1, 1, L, NULL, 0, NULL);
        }
        size_t stride;
        int t = n - start;
        const float *x =
            stepper_logits(&st, seq + start, (size_t)t, 1, t, &stride);
        int tok = temperature == 0.0f
                      ? argmax(x, V)
                      : draw_token(x, V, temperature, top_k, top_p, rng, &d);
        seq[n++] = tok;
        if (on_token) on_token(ctx, seq, n);
        if (tok == eos) break;
    }
    stepper_free(&st);
    scratch_free(&d);
    decode_end(g, mode);
    return n;
}

void qkv_greedy(qkv_model *m, qkv_graph *g, const int32_t *src,
                const uint8_t *src_pad, int B, int S, int bos, int eos,
                int max_out, int32_t *out) {
    decode_mode mode = decode_begin(g);
    int encdec = m->cfg.kind == QKV_MODEL_ENCDEC, V = m->cfg.tgt_vocab;
    int prefix = encdec ? 1 : S, L = prefix + max_out;
    int32_t *seq = qkv_malloc((size_t)B * L * sizeof *seq, "decode buffer");
    uint8_t *done = qkv_calloc((size_t)B, 1, "decode state");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < prefix; t++)
            seq[(size_t)b * L + t] = encdec ? bos : src[(size_t)b * S + t];
    /* The encoder memory is kept outside the arena, and the arena is reset
     * at every step, so it holds one step's activations, not a whole
     * decode's (2.7 GB for 200 sentences of 32 tokens at d_model 128). */
    float *mem = NULL;
    qkv_graph_reset(g);
    if (encdec) {
        qkv_tensor *e =
            qkv_model_encoder_forward(m, g, src, src_pad, B, S, NULL);
        mem = qkv_malloc_aligned(e->n * sizeof *mem, "decode memory");
        memcpy(mem, e->data, e->n * sizeof *mem);
    }
    stepper st = {0};
    if (max_out > 0) stepper_init(&st, m, g, B, B, L - 1, mem, S, src_pad);
    for (int t = prefix; t < L; t++) {
        size_t stride;
        const float *x = stepper_logits(&st, seq, (size_t)L, B, t, &stride);
        for (int b = 0; b < B; b++) {
            int tok = done[b] ? m->cfg.pad_id : argmax(x + b * stride, V);
            seq[(size_t)b * L + t] = tok;
            out[(size_t)b * max_out + t - prefix] = tok;
            if (tok == eos) done[b] = 1;
        }
        int all = 1;
        for (int b = 0; b < B; b++) all &= done[b];
        if (all) { /* every row has its eos: the rest is padding */
            for (int b = 0; b < B; b++)
                for (int k = t + 1 - prefix; k < max_out; k++)
                    out[(size_t)b * max_out + k] = m->cfg.pad_id;
            break;
        }
    }
    stepper_free(&st);
    decode_end(g, mode); /* drops the view of mem */
    free(mem);
    free(seq);
    free(done);
}
