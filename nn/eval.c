#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "corpus.h"
#include "decode.h"

int qkv_eval_max_out(const qkv_model *m, const qkv_batch *b, int eos) {
    int longest = 0; /* the longest reference: y, and eos if any */
    for (int r = 0; r < b->B; r++) {
        int n = 0;
        for (int j = 0; j < b->T; j++)
            n += b->tgt_out[(size_t)r * b->T + j] != QKV_PAD;
        if (n > longest) longest = n;
    }
    if (eos < 0) return longest;
    int n = 2 * longest + 8;
    return n < m->cfg.max_len ? n : m->cfg.max_len;
}

/* The non-pad tokens of row r of tgt_out: y, and eos if there is one. */
static int reference(const qkv_batch *b, int r, int32_t *ref) {
    int n = 0;
    for (int j = 0; j < b->T; j++) {
        int32_t y = b->tgt_out[(size_t)r * b->T + j];
        if (y != QKV_PAD) ref[n++] = y;
    }
    return n;
}

/* Length of a decoded row up to and including its eos (eos < 0: none, and
 * id 2 is an ordinary symbol). */
static int hyp_length(const int32_t *h, int max_out, int eos) {
    for (int j = 0; j < max_out; j++)
        if (h[j] == eos || h[j] == QKV_PAD) return j + (h[j] == eos);
    return max_out;
}

/* Teacher forcing on b: adds the cross-entropy of every target token (in
 * double) and whether its argmax is right to s. */
static void score_forced(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                         qkv_scores *s) {
    int B = b->B, T = b->T, V = m->cfg.tgt_vocab;
    const float *logits = qkv_model_forward(m, g, b)->data;
    for (size_t i = 0; i < (size_t)B * T; i++) {
        int32_t y = b->tgt_out[i];
        if (y == QKV_PAD) continue;
        const float *z = logits + i * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (z[v] > z[best]) best = v;
        double mx, lsum = qkv_log_sum_exp(z, V, &mx);
        s->loss_sum += lsum - ((double)z[y] - mx);
        s->right += best == y;
        s->tokens++;
    }
}

/* Greedy decoding with the decoder-only model into out (B, max_out): the
 * prompt of row r is x bos, up to the first scored target; rows with prompts
 * of one length decode together. */
static void decode_prompts(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                           int eos, int max_out, int32_t *out) {
    int B = b->B, T = b->T;
    int *plen = qkv_malloc((size_t)B * sizeof *plen, "prompts");
    int *rows = qkv_malloc((size_t)B * sizeof *rows, "prompts");
    for (int r = 0; r < B; r++) {
        int j = 0;
        while (j < T && b->tgt_out[(size_t)r * T + j] == QKV_PAD) j++;
        plen[r] = j + 1;
    }
    for (size_t i = 0; i < (size_t)B * max_out; i++) out[i] = QKV_PAD;
    int32_t *prompt = qkv_malloc((size_t)B * T * sizeof *prompt, "prompts");
    int32_t *gen = qkv_malloc((size_t)B * max_out * sizeof *gen, "prompts");
    for (int r = 0; r < B; r++) {
        if (plen[r] < 0) continue; /* decoded with an earlier group */
        int P = plen[r], n = 0;
        for (int q = r; q < B; q++)
            if (plen[q] == P) {
                rows[n] = q;
                memcpy(prompt + (size_t)n * P, b->tgt_in + (size_t)q * T,
                       (size_t)P * sizeof *prompt);
                n++;
            }
        int room = m->cfg.max_len - P;
        int L = max_out < room ? max_out : room;
        if (L > 0) qkv_greedy(m, g, prompt, NULL, n, P, QKV_BOS, eos, L, gen);
        for (int k = 0; k < n; k++) {
            memcpy(out + (size_t)rows[k] * max_out, gen + (size_t)k * L,
                   (size_t)(L > 0 ? L : 0) * sizeof *out);
            plen[rows[k]] = -1;
        }
    }
    free(gen);
    free(prompt);
    free(rows);
    free(plen);
}

/* Decodes every row of b into out (B, max_out): greedy or beam search with
 * the encoder-decoder, greedy from the prompts with the decoder-only
 * model. */
static void decode_batch(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                         const qkv_eval_opts *o, int max_out, int32_t *out) {
    if (m->cfg.kind == QKV_MODEL_DECODER) {
        decode_prompts(m, g, b, o->eos, max_out, out);
    } else if (o->beam <= 1) {
        qkv_greedy(m, g, b->src, b->src_pad, b->B, b->S, QKV_BOS, o->eos,
                   max_out, out);
    } else {
        for (int r = 0; r < b->B; r++)
            qkv_beam_search(m, g, b->src + (size_t)r * b->S,
                            b->src_pad + (size_t)r * b->S, b->S, o->beam,
                            o->alpha, QKV_BOS, o->eos, max_out,
                            out + (size_t)r * max_out, NULL);
    }
}

/* Adds the exact matches and BLEU statistics of the decoded rows out
 * (B, max_out) against b's references to s. */
static void score_decoded(const qkv_batch *b, const int32_t *out, int max_out,
                          int eos, int unk, qkv_scores *s) {
    int32_t *ref = qkv_malloc((size_t)b->T * sizeof *ref, "reference");
    for (int r = 0; r < b->B; r++) {
        const int32_t *h = out + (size_t)r * max_out;
        int nr = reference(b, r, ref), nh = hyp_length(h, max_out, eos);
        s->seqs++;
        s->exact += nh == nr && memcmp(h, ref, (size_t)nr * sizeof *ref) == 0;
        /* BLEU on the tokens without eos; an unknown reference token of a
         * corpus matches nothing (not even a predicted <unk>). */
        if (eos >= 0 && nr && ref[nr - 1] == eos) nr--;
        if (eos >= 0 && nh && h[nh - 1] == eos) nh--;
        for (int j = 0; j < nr; j++)
            if (unk && ref[j] == unk) ref[j] = -1;
        qkv_bleu_add(&s->bleu, h, nh, ref, nr);
    }
    free(ref);
}

void qkv_eval_batch(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                    const qkv_eval_opts *o, int max_out, qkv_scores *s,
                    int32_t *hyps) {
    int was = qkv_graph_set_grad(g, 0), train = g->training;
    g->training = 0;
    qkv_graph_reset(g);
    score_forced(m, g, b, s);
    int32_t *out =
        hyps ? hyps : qkv_malloc((size_t)b->B * max_out * sizeof *out, "hyps");
    decode_batch(m, g, b, o, max_out, out);
    score_decoded(b, out, max_out, o->eos, o->unk, s);
    if (!hyps) free(out);
    qkv_graph_reset(g);
    g->training = train;
    qkv_graph_set_grad(g, was);
}

void qkv_evaluate(qkv_model *m, qkv_graph *g, qkv_source *data,
                  const qkv_eval_opts *o, qkv_scores *s) {
    memset(s, 0, sizeof *s);
    const qkv_batch *b;
    for (qkv_source_rewind(data); (b = qkv_source_next(data));)
        qkv_eval_batch(m, g, b, o, qkv_eval_max_out(m, b, o->eos), s, NULL);
}

double qkv_scores_loss(const qkv_scores *s) {
    return s->loss_sum / (double)s->tokens;
}
double qkv_scores_accuracy(const qkv_scores *s) {
    return (double)s->right / (double)s->tokens;
}
double qkv_scores_exact(const qkv_scores *s) {
    return (double)s->exact / (double)s->seqs;
}
double qkv_scores_bleu(const qkv_scores *s) {
    return 100.0 * qkv_bleu_score(&s->bleu);
}
