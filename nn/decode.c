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

    /* Encode once (B = 1), then copy the memory to every beam row: (beam, S,
     * D). */
    qkv_graph_reset(g);
    qkv_tensor *mem1 =
        qkv_model_encoder_forward(m, g, src, src_pad, 1, S, NULL);
    size_t row = (size_t)S * D, L = (size_t)max_out + 1;
    float *mem =
        qkv_malloc_aligned((size_t)beam * row * sizeof *mem, "beam memory");
    uint8_t *pad =
        src_pad ? qkv_malloc((size_t)beam * S, "beam source mask") : NULL;
    for (int i = 0; i < beam; i++) {
        memcpy(mem + i * row, mem1->data, row * sizeof *mem);
        if (pad) memcpy(pad + (size_t)i * S, src_pad, (size_t)S);
    }

    int32_t *hyp_buf =
        qkv_malloc(2 * (size_t)beam * L * sizeof *hyp_buf, "beam hypotheses");
    int32_t *hyp = hyp_buf,
            *next = hyp_buf + (size_t)beam * L; /* (beam, L): bos, tokens */
    int32_t *cur = qkv_malloc((size_t)beam * L * sizeof *cur, "beam input");
    int32_t *fin =
        qkv_malloc((size_t)beam * max_out * sizeof *fin, "beam finished");
    double *score_buf =
        qkv_malloc(2 * (size_t)beam * sizeof *score_buf, "beam scores");
    double *lscore = score_buf,
           *nscore = score_buf + beam; /* live: sum of log p */
    double *fnorm = qkv_malloc((size_t)beam * sizeof *fnorm, "beam finished");
    int *flen = qkv_malloc((size_t)beam * sizeof *flen, "beam finished");
    beam_cand *best =
        qkv_malloc((size_t)beam * sizeof *best, "beam candidates");
    double lp_max = qkv_length_penalty(max_out, length_penalty);

    int live = 1, nfin = 0;
    hyp[0] = bos;
    lscore[0] = 0.0;
    for (int t = 1; t <= max_out && live > 0; t++) {
        /* The live prefixes (live, t) -> logits (live, t, V); row t-1 is next.
         */
        qkv_graph_reset(g);
        for (int i = 0; i < live; i++)
            memcpy(cur + (size_t)i * t, hyp + i * L, (size_t)t * sizeof *cur);
        qkv_tensor *memt = qkv_tensor_wrap(g, mem, 3, (int[]){live, S, D});
        qkv_tensor *logits = qkv_model_decoder_forward(m, g, cur, NULL, live, t,
                                                       memt, pad, NULL, NULL);
        int want = beam - nfin, nbest = 0;
        for (int i = 0; i < live; i++) {
            /* log p = x - logsumexp(x), in double */
            const float *x = logits->data + ((size_t)i * t + t - 1) * V;
            double mx, lse = qkv_log_sum_exp(x, V, &mx);
            lse += mx;
            QKV_CHECK(isfinite(lse),
                      "qkv_beam_search: non-finite logits at step %d", t);
            for (int v = 0; v < V; v++) {
                beam_cand cd = {lscore[i] + ((double)x[v] - lse),
                                (int64_t)i * V + v};
                cand_insert(best, &nbest, want, cd);
            }
        }
        int nlive = 0;
        for (int k = 0; k < nbest; k++) {
            int i = (int)(best[k].idx / V), v = (int)(best[k].idx % V);
            if (v == eos || t == max_out) {
                int32_t *f = fin + (size_t)nfin * max_out;
                memcpy(f, hyp + i * L + 1, (size_t)(t - 1) * sizeof *f);
                f[t - 1] = v;
                flen[nfin] = t;
                fnorm[nfin++] =
                    best[k].score / qkv_length_penalty(t, length_penalty);
            } else {
                memcpy(next + nlive * L, hyp + i * L, (size_t)t * sizeof *next);
                next[nlive * L + t] = v;
                nscore[nlive++] = best[k].score;
            }
        }
        int32_t *th = hyp;
        hyp = next;
        next = th;
        double *ts = lscore;
        lscore = nscore;
        nscore = ts;
        live = nlive;
        /* Early exit: a live score s <= 0 can only fall, and lp grows with the
         * length, so s / lp(max_out) bounds what it can still reach. */
        if (nfin > 0 && live > 0) {
            double top = fnorm[0];
            for (int k = 1; k < nfin; k++)
                top = fnorm[k] > top ? fnorm[k] : top;
            if (lscore[0] / lp_max <= top)
                break; /* lscore[0] is the best live */
        }
    }

    int b = 0; /* the first finished with the best normalised score */
    for (int k = 1; k < nfin; k++)
        if (fnorm[k] > fnorm[b]) b = k;
    for (int k = 0; k < max_out; k++)
        out[k] = k < flen[b] ? fin[(size_t)b * max_out + k] : c->pad_id;
    if (score) *score = (float)fnorm[b];

    free(hyp_buf);
    free(cur);
    free(fin);
    free(score_buf);
    free(fnorm);
    free(flen);
    free(best);
    free(mem);
    free(pad);
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
