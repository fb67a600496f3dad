#include "eval.h"

#include <math.h>
#include <stdio.h>
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

/* The text of ids[0..n): through o->detok, or the ids as decimal numbers
 * separated by spaces. Returns its length, as snprintf does. */
static size_t render(const qkv_eval_opts *o, const int32_t *ids, int n,
                     char *out, size_t cap) {
    if (o->detok) return o->detok(o->detok_ctx, ids, n, out, cap);
    size_t len = 0;
    if (cap) *out = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(len < cap ? out + len : NULL,
                                len < cap ? cap - len : 0, "%s%d", i ? " " : "",
                                (int)ids[i]);
    return len;
}

/* render into *text (malloc'd, *cap bytes), grown to fit. */
static size_t text_of(const qkv_eval_opts *o, const int32_t *ids, int n,
                      char **text, size_t *cap) {
    if (*cap == 0) {
        *cap = 256;
        *text = qkv_malloc(*cap, "text");
    }
    size_t need = render(o, ids, n, *text, *cap);
    if (need + 1 > *cap) {
        *cap = need + 1;
        *text = qkv_realloc(*text, *cap, "text");
        render(o, ids, n, *text, *cap);
    }
    return need;
}

/* The hypothesis h[0..n) (no eos) without its <unk>s, as text. */
static size_t hyp_text(const qkv_eval_opts *o, const int32_t *h, int n,
                       char **text, size_t *cap) {
    int32_t *ids = qkv_malloc((size_t)(n + 1) * sizeof *ids, "hypothesis");
    int k = 0;
    for (int j = 0; j < n; j++)
        if (!o->unk || h[j] != o->unk) ids[k++] = h[j];
    size_t len = text_of(o, ids, k, text, cap);
    free(ids);
    return len;
}

size_t qkv_eval_text(const qkv_eval_opts *o, const int32_t *h, int max_out,
                     char **text, size_t *cap) {
    int n = hyp_length(h, max_out, o->eos);
    if (o->eos >= 0 && n && h[n - 1] == o->eos) n--;
    return hyp_text(o, h, n, text, cap);
}

void qkv_eval_score(const qkv_batch *b, const int32_t *hyps, int max_out,
                    const qkv_eval_opts *o, qkv_scores *s) {
    int eos = o->eos, unk = o->unk;
    int32_t *ref = qkv_malloc((size_t)b->T * sizeof *ref, "reference");
    char *ht = NULL, *rt = NULL;
    size_t hc = 0, rc = 0;
    for (int r = 0; r < b->B; r++) {
        const int32_t *h = hyps + (size_t)r * max_out;
        int nr = reference(b, r, ref), nh = hyp_length(h, max_out, eos);
        s->seqs++;
        s->exact += nh == nr && memcmp(h, ref, (size_t)nr * sizeof *ref) == 0;
        /* BLEU on the tokens without eos */
        if (eos >= 0 && nr && ref[nr - 1] == eos) nr--;
        if (eos >= 0 && nh && h[nh - 1] == eos) nh--;
        text_of(o, ref, nr, &rt, &rc);
        hyp_text(o, h, nh, &ht, &hc);
        qkv_bleu_add_text(&s->bleu, ht, rt);
        /* an unknown reference token of a corpus matches nothing (not even a
         * predicted <unk>) */
        for (int j = 0; j < nr; j++)
            if (unk && ref[j] == unk) ref[j] = -1;
        qkv_bleu_add(&s->token_bleu, h, nh, ref, nr);
    }
    free(ht);
    free(rt);
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
    qkv_eval_score(b, out, max_out, o, s);
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
    return 100.0 * qkv_bleu_score_smooth(&s->bleu);
}
double qkv_scores_token_bleu(const qkv_scores *s) {
    return 100.0 * qkv_bleu_score(&s->token_bleu);
}
