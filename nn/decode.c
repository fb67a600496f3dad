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
    int32_t *cur;      /* (beam, L) the live prefixes packed as (live, t) */
    double *score_buf; /* holds lscore and nscore */
    double *lscore;    /* (beam) live: sum of log p */
    double *nscore;    /* (beam) the next step's */
    int32_t *fin;      /* (beam, max_out) finished hypotheses, without bos */
    double *fnorm;     /* (beam) their scores over the length penalty */
    int *flen;         /* (beam) their lengths */
    beam_cand *best;   /* (beam) this step's best candidates */
    int live, nfin;
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
    bs->hyp_buf = qkv_malloc(2 * (size_t)beam * L * sizeof *bs->hyp_buf,
                             "beam hypotheses");
    bs->hyp = bs->hyp_buf;
    bs->next = bs->hyp_buf + (size_t)beam * L;
    bs->cur = qkv_malloc((size_t)beam * L * sizeof *bs->cur, "beam input");
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
    free(bs->hyp_buf);
    free(bs->cur);
    free(bs->fin);
    free(bs->score_buf);
    free(bs->fnorm);
    free(bs->flen);
    free(bs->best);
    free(bs->mem);
    free(bs->pad);
}

/* Fills bs->best with the best extensions of the live hypotheses, as many as
 * beams are not finished yet, from logits (live, t, V); returns how many. */
static int beam_expand(beam_state *bs, const float *logits, int t) {
    int V = bs->V, want = bs->beam - bs->nfin, nbest = 0;
    for (int i = 0; i < bs->live; i++) {
        /* log p = x - logsumexp(x), in double */
        const float *x = logits + ((size_t)i * t + t - 1) * V;
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
        /* The live prefixes (live, t) -> logits (live, t, V); row t-1 is next.
         */
        qkv_graph_reset(g);
        for (int i = 0; i < bs.live; i++)
            memcpy(bs.cur + (size_t)i * t, bs.hyp + i * bs.L,
                   (size_t)t * sizeof *bs.cur);
        qkv_tensor *memt =
            qkv_tensor_wrap(g, bs.mem, 3, (int[]){bs.live, S, D});
        qkv_tensor *logits = qkv_model_decoder_forward(
            m, g, bs.cur, NULL, bs.live, t, memt, bs.pad, NULL, NULL);
        beam_advance(&bs, t, beam_expand(&bs, logits->data, t));
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

static int argmax(const float *x, int n) {
    int best = 0;
    for (int j = 1; j < n; j++)
        if (x[j] > x[best]) best = j;
    return best;
}

/* One draw from softmax(x / temp) over the top_k largest of x (V). Scratch:
 * kept (V), w (V), order (V). */
static int draw_token(const float *x, int V, float temp, int top_k,
                      qkv_pcg32 *rng, uint8_t *kept, double *w,
                      logit_id *order) {
    if (top_k <= 0 || top_k >= V) {
        memset(kept, 1, (size_t)V);
    } else {
        for (int v = 0; v < V; v++) order[v] = (logit_id){x[v], v};
        qsort(order, (size_t)V, sizeof *order, logit_id_cmp);
        memset(kept, 0, (size_t)V);
        for (int k = 0; k < top_k; k++) kept[order[k].id] = 1;
    }
    double mx = -INFINITY, total = 0.0;
    for (int v = 0; v < V; v++)
        if (kept[v] && x[v] > mx) mx = x[v];
    QKV_CHECK(isfinite(mx), "qkv_sample: non-finite logits");
    for (int v = 0; v < V; v++) {
        w[v] = kept[v] ? exp(((double)x[v] - mx) / temp) : 0.0;
        total += w[v];
    }
    /* inverse CDF in id order; the last kept id absorbs rounding */
    double u = (double)qkv_pcg32_float(rng) * total, cum = 0.0;
    int tok = -1;
    for (int v = 0; v < V; v++) {
        if (!kept[v]) continue;
        tok = v;
        cum += w[v];
        if (u < cum) break;
    }
    return tok;
}

void qkv_sample(qkv_model *m, qkv_graph *g, const int32_t *prompt, int P,
                int max_out, float temperature, int top_k, int eos,
                qkv_pcg32 *rng, int32_t *out) {
    const qkv_model_config *c = &m->cfg;
    int V = c->tgt_vocab;
    QKV_CHECK(
        c->kind == QKV_MODEL_DECODER,
        "qkv_sample: needs the decoder-only model, got the encoder-decoder");
    QKV_CHECK(temperature >= 0.0f, "qkv_sample: temperature = %g must be >= 0",
              (double)temperature);
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
    uint8_t *kept = qkv_malloc((size_t)V, "sample scratch");
    double *w = qkv_malloc((size_t)V * sizeof *w, "sample scratch");
    logit_id *order = qkv_malloc((size_t)V * sizeof *order, "sample scratch");
    memcpy(seq, prompt, (size_t)P * sizeof *seq);
    int k = 0;
    for (; k < max_out; k++) {
        int t = P + k;
        qkv_graph_reset(g);
        qkv_tensor *logits = qkv_model_decoder_forward(m, g, seq, NULL, 1, t,
                                                       NULL, NULL, NULL, NULL);
        const float *x = logits->data + (size_t)(t - 1) * V;
        int tok = temperature == 0.0f ? argmax(x, V)
                                      : draw_token(x, V, temperature, top_k,
                                                   rng, kept, w, order);
        seq[t] = out[k] = tok;
        if (tok == eos) break;
    }
    for (k++; k < max_out; k++) out[k] = c->pad_id;
    free(seq);
    free(kept);
    free(w);
    free(order);
    decode_end(g, mode);
}

void qkv_greedy(qkv_model *m, qkv_graph *g, const int32_t *src,
                const uint8_t *src_pad, int B, int S, int bos, int eos,
                int max_out, int32_t *out) {
    int was_rec = qkv_graph_set_grad(g, 0), was_train = g->training;
    g->training = 0;
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
    int D = m->cfg.d_model;
    qkv_graph_reset(g);
    if (encdec) {
        qkv_tensor *e =
            qkv_model_encoder_forward(m, g, src, src_pad, B, S, NULL);
        mem = qkv_malloc_aligned(e->n * sizeof *mem, "decode memory");
        memcpy(mem, e->data, e->n * sizeof *mem);
    }
    int32_t *cur = qkv_malloc((size_t)B * L * sizeof *cur, "decode buffer");
    for (int t = prefix; t < L; t++) {
        /* the whole prefix again: simple, and cheap at these lengths */
        for (int b = 0; b < B; b++)
            memcpy(cur + (size_t)b * t, seq + (size_t)b * L,
                   (size_t)t * sizeof *cur);
        qkv_graph_reset(g);
        qkv_tensor *memt =
            encdec ? qkv_tensor_wrap(g, mem, 3, (int[]){B, S, D}) : NULL;
        qkv_tensor *logits = qkv_model_decoder_forward(
            m, g, cur, NULL, B, t, memt, src_pad, NULL, NULL);
        for (int b = 0; b < B; b++) {
            int tok =
                done[b] ? m->cfg.pad_id
                        : argmax(logits->data + ((size_t)b * t + t - 1) * V, V);
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
    qkv_graph_reset(g); /* drops the view of mem */
    free(mem);
    free(cur);
    free(seq);
    free(done);
    g->training = was_train;
    qkv_graph_set_grad(g, was_rec);
}
