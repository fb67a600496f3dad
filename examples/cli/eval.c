/* eval.c - `qkv eval` (scores on a test set) and `qkv decode` (translate or
 * continue text), both from one checkpoint file.
 *
 *   qkv eval --ckpt runs/dates/ckpt.safetensors \
 *            --data data/corpora/dates/test.tsv
 *   qkv decode --ckpt runs/dates/ckpt.safetensors "3 March 2001"
 *   echo "we see a dog ." | qkv decode --ckpt runs/grammar/ckpt.safetensors
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "eval.h"

/* Longest source and target (in tokens) whose layout fits the model's
 * positions. */
static void side_limits(const qkv_model *m, int *max_src, int *max_tgt) {
    int L = m->cfg.max_len;
    if (m->cfg.kind == QKV_MODEL_DECODER)
        *max_src = *max_tgt = (L - 1) / 2;
    else
        *max_src = L, *max_tgt = L - 1;
}

int cmd_eval(int argc, char **argv) {
    const char *ckpt = "", *data = "";
    int beam = 1, batch_tokens = 4096, size = 1000, seed = 7, threads = 0,
        show = 0;
    float alpha = 0.6f;
    const flag flags[] = {
        {"ckpt", FLAG_STR, &ckpt, NULL, "checkpoint written by qkv train", 0,
         0},
        {"data", FLAG_STR, &data, NULL,
         "test corpus, TSV (a task model draws fresh sequences instead)", 0, 0},
        {"beam", FLAG_INT, &beam, NULL,
         "beam width for decoding (1: greedy; encoder-decoder only)", 1, 256},
        {"alpha", FLAG_FLOAT, &alpha, NULL, "beam length penalty (GNMT)", 0,
         10},
        {"batch-tokens", FLAG_INT, &batch_tokens, NULL, "tokens per batch", 1,
         1 << 24},
        {"size", FLAG_INT, &size, NULL, "task models: sequences to draw", 1,
         1 << 20},
        {"seed", FLAG_INT, &seed, NULL, "task models: PCG32 seed", 0, 0},
        {"show", FLAG_INT, &show, NULL,
         "print the first N pairs with their outputs", 0, INT_MAX},
        {"threads", FLAG_INT, &threads, NULL,
         "OpenMP threads (0: the free cores, following the load)", 0,
         cli_max_threads()},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    cli_parse("eval", "--ckpt FILE [--data TEST.tsv] [flags]", flags, nf, argc,
              argv, 2, NULL, 0, NULL);
    if (beam < 1) cli_die("eval: --beam must be positive, got %d", beam);
    if (size < 1) cli_die("eval: --size must be positive, got %d", size);
    if (batch_tokens < 1)
        cli_die("eval: --batch-tokens must be positive, got %d", batch_tokens);
    if (threads < 0) cli_die("eval: --threads must be >= 0, got %d", threads);
    if (alpha < 0) cli_die("eval: --alpha must be >= 0, got %g", (double)alpha);
    if (threads) qkv_set_threads(threads);
    qkv_model m;
    cli_data d;
    cli_load_model("eval", ckpt, &m, &d);
    if (beam > 1 && d.decoder_only)
        cli_die("eval: --beam needs an encoder-decoder model");
    if (d.corpus && !*data)
        cli_die("eval: --data is required: %s was trained on a corpus", ckpt);
    if (!d.corpus && *data)
        cli_die("eval: --data: %s was trained on a generated task, not a "
                "corpus",
                ckpt);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_scores s;
    memset(&s, 0, sizeof s);
    qkv_eval_opts eo = {cli_data_eos(&d), beam, alpha};
    char err[512];
    int shown = 0, dropped = 0;
    char *text = NULL;
    size_t text_cap = 0;
    if (!d.corpus) {
        qkv_pcg32 rng;
        qkv_pcg32_seed(&rng, (uint64_t)seed, 3);
        qkv_task_batch tb;
        for (int done = 0; done < size;) {
            int B = size - done < 256 ? size - done : 256;
            qkv_task_batch_init(&tb, &d.task, B);
            qkv_task_sample(&d.task, &rng, &tb);
            int max_out = qkv_eval_max_out(&m, &tb.view, eo.eos);
            int32_t *hyp =
                qkv_malloc((size_t)B * max_out * sizeof *hyp, "hyps");
            qkv_eval_batch(&m, &g, &tb.view, &eo, max_out, &s, hyp);
            for (int r = 0; r < B && shown < show; r++, shown++) {
                const int32_t *x = d.decoder_only
                                       ? tb.tgt_in + (size_t)r * tb.view.T
                                       : tb.src + (size_t)r * tb.view.S;
                printf("in: ");
                for (int j = 0; j < tb.len[r]; j++) printf(" %d", x[j]);
                printf("\nout:");
                for (int j = 0; j < max_out; j++) {
                    int32_t y = hyp[(size_t)r * max_out + j];
                    if (y == QKV_PAD || (d.task.use_eos && y == QKV_EOS)) break;
                    printf(" %d", y);
                }
                printf("\n");
            }
            free(hyp);
            qkv_task_batch_free(&tb);
            done += B;
        }
    } else {
        qkv_corpus c;
        if (qkv_corpus_load(data, &c, err, sizeof err))
            cli_die("eval: --data: %s", err);
        qkv_pairs p;
        int max_src, max_tgt;
        side_limits(&m, &max_src, &max_tgt);
        qkv_pairs_encode(&p, &c, d.tok, &d.sv, &d.tv, max_src, max_tgt);
        p.decoder_only = d.decoder_only;
        dropped = p.dropped;
        if (p.n < 1)
            cli_die("eval: --data: %s: no pair fits the model's %d positions",
                    data, m.cfg.max_len);
        qkv_batcher it;
        int longest = qkv_pairs_cost(&p);
        int budget = batch_tokens > longest ? batch_tokens : longest;
        {
            int rows = budget / longest, out_len = 2 * longest + 8;
            if (out_len > m.cfg.max_len) out_len = m.cfg.max_len;
            cli_check_forward_memory("eval", &m, rows,
                                     d.decoder_only ? 0 : p.longest_src,
                                     out_len, "--batch-tokens");
            if (beam > 1)
                cli_check_forward_memory("eval", &m, beam, p.longest_src,
                                         out_len, "--beam");
        }
        if (qkv_batcher_init(&it, &p, budget, err, sizeof err))
            cli_die("eval: %s", err);
        qkv_corpus_batch b;
        qkv_corpus_batch_init(&b, budget);
        /* file order, so --show prints the first pairs of the file */
        int *idx = qkv_malloc((size_t)p.n * sizeof *idx, "eval");
        for (int i = 0; i < p.n; i++) idx[i] = i;
        int32_t *hyp = NULL;
        for (int i = 0; i < p.n;) {
            int n = 0, S = 0, T = 0;
            while (i + n < p.n) { /* as many as fit in the budget */
                const qkv_pair *q = &p.pair[i + n];
                int s2 = d.decoder_only ? 0 : q->src_len > S ? q->src_len : S;
                int need = d.decoder_only ? q->src_len + q->tgt_len + 1
                                          : q->tgt_len + 1;
                int t2 = need > T ? need : T;
                if (n && (size_t)(n + 1) * (size_t)(s2 > t2 ? s2 : t2) >
                             (size_t)budget)
                    break;
                S = s2, T = t2, n++;
            }
            qkv_pairs_batch(&p, idx + i, n, &b);
            int max_out = qkv_eval_max_out(&m, &b.view, eo.eos);
            hyp = qkv_realloc(hyp, (size_t)n * max_out * sizeof *hyp, "hyps");
            qkv_eval_batch(&m, &g, &b.view, &eo, max_out, &s, hyp);
            for (int r = 0; r < n && shown < show; r++, shown++) {
                const qkv_pair *q = &p.pair[i + r];
                cli_detokenize(&d, hyp + (size_t)r * max_out, max_out, &text,
                               &text_cap);
                printf("src: %s\nref: %s\nout: %s\n\n", c.src[q->index],
                       c.tgt[q->index], text);
            }
            i += n;
        }
        free(hyp);
        free(idx);
        qkv_corpus_batch_free(&b);
        qkv_batcher_free(&it);
        qkv_pairs_free(&p);
        qkv_corpus_free(&c);
    }
    double loss = qkv_scores_loss(&s);
    printf("%s: %ld sequences", *data ? data : "task", s.seqs);
    if (dropped)
        printf(" (%d more dropped: longer than the model's %d positions)",
               dropped, m.cfg.max_len);
    printf("\nloss %.6f  perplexity %.4f  token accuracy %.2f%%  exact match "
           "%.2f%%  BLEU %.2f\n",
           loss, exp(loss), 100.0 * qkv_scores_accuracy(&s),
           100.0 * qkv_scores_exact(&s), qkv_scores_bleu(&s));
    free(text);
    qkv_graph_free(&g);
    cli_data_free(&d);
    qkv_model_free(&m);
    return 0;
}

int cmd_decode(int argc, char **argv) {
    const char *ckpt = "";
    int beam = 1, max_out = 0, top_k = 0, seed = 1, threads = 0;
    float alpha = 0.6f, temp = 0.0f;
    const flag flags[] = {
        {"ckpt", FLAG_STR, &ckpt, NULL, "checkpoint written by qkv train", 0,
         0},
        {"beam", FLAG_INT, &beam, NULL,
         "beam width (1: greedy; encoder-decoder only)", 1, 256},
        {"alpha", FLAG_FLOAT, &alpha, NULL, "beam length penalty (GNMT)", 0,
         10},
        {"max-out", FLAG_INT, &max_out, NULL,
         "longest output in tokens (0: twice the input + 8)", 0,
         QKV_MAX_POSITIONS},
        {"temp", FLAG_FLOAT, &temp, NULL,
         "decoder-only: sampling temperature (0: greedy)", 0, 100},
        {"top-k", FLAG_INT, &top_k, NULL,
         "decoder-only: sample among the k likeliest (0: all)", 0,
         QKV_MAX_VOCAB},
        {"seed", FLAG_INT, &seed, NULL, "decoder-only: PCG32 seed", 0, 0},
        {"threads", FLAG_INT, &threads, NULL,
         "OpenMP threads (0: the free cores, following the load)", 0,
         cli_max_threads()},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    enum { MAX_POS = 64 };
    const char *inputs[MAX_POS];
    int n_in = 0;
    cli_parse("decode",
              "--ckpt FILE [flags] [\"text\" ...]  (or lines on "
              "stdin)",
              flags, nf, argc, argv, 2, inputs, MAX_POS, &n_in);
    if (beam < 1) cli_die("decode: --beam must be positive, got %d", beam);
    if (max_out < 0) cli_die("decode: --max-out must be >= 0, got %d", max_out);
    if (!(temp >= 0))
        cli_die("decode: --temp must be >= 0, got %g", (double)temp);
    if (threads < 0) cli_die("decode: --threads must be >= 0, got %d", threads);
    if (threads) qkv_set_threads(threads);
    qkv_model m;
    cli_data d;
    cli_load_model("decode", ckpt, &m, &d);
    if (beam > 1 && d.decoder_only)
        cli_die("decode: --beam needs an encoder-decoder model (use --temp "
                "and --top-k to sample)");
    if (!d.decoder_only && (temp > 0 || top_k))
        cli_die("decode: --temp and --top-k are for decoder-only models (use "
                "--beam)");
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, (uint64_t)seed, 4);
    int eos = d.corpus || d.task.use_eos ? QKV_EOS : -1;
    int32_t *ids = NULL, *out = NULL;
    int cap = 0;
    char *line = NULL, *text = NULL, err[512];
    size_t line_cap = 0, text_cap = 0;
    for (int k = 0;; k++) {
        const char *s;
        if (n_in) {
            if (k >= n_in) break;
            s = inputs[k];
        } else {
            ssize_t len =
                qkv_getline_max(&line, &line_cap, stdin, QKV_MAX_LINE);
            if (len == -1) break;
            if (len == QKV_LINE_TOO_LONG)
                cli_die("decode: input %d: a line longer than %u bytes", k + 1,
                        QKV_MAX_LINE);
            if ((size_t)len != strlen(line))
                cli_die("decode: input %d: a NUL byte in the line (binary "
                        "input?)",
                        k + 1);
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = 0;
            s = line;
        }
        int n = 0;
        if (cli_encode_input(&d, s, &ids, &cap, &n, err, sizeof err))
            cli_die("decode: input %d: %s", k + 1, err);
        if (n == 0) { /* nothing to translate */
            printf("\n");
            continue;
        }
        int P = d.decoder_only ? n + 1 : n;
        int room = d.decoder_only ? m.cfg.max_len - P : m.cfg.max_len;
        if (room < 1 || (!d.decoder_only && n > m.cfg.max_len))
            cli_die("decode: input %d has %d tokens; the model takes at most "
                    "%d",
                    k + 1, n,
                    d.decoder_only ? m.cfg.max_len - 2 : m.cfg.max_len);
        int L = max_out ? max_out : eos < 0 ? n : 2 * n + 8;
        if (L > room) L = room;
        out = qkv_realloc(out, (size_t)L * sizeof *out, "output");
        if (d.decoder_only) {
            if (P > cap) {
                cap = P;
                ids = qkv_realloc(ids, (size_t)cap * sizeof *ids, "input");
            }
            ids[n] = QKV_BOS;
            qkv_sample(&m, &g, ids, P, L, temp, top_k, eos, &rng, out);
        } else {
            if (beam > 1)
                cli_check_forward_memory("decode", &m, beam, n, L,
                                         "--beam or --max-out");
            qkv_beam_search(&m, &g, ids, NULL, n, beam, alpha, QKV_BOS, eos, L,
                            out, NULL);
        }
        if (!d.corpus) {
            const char *sep = "";
            for (int j = 0; j < L && out[j] != QKV_PAD && out[j] != eos;
                 j++, sep = " ")
                printf("%s%d", sep, out[j]);
            printf("\n");
        } else {
            cli_detokenize(&d, out, L, &text, &text_cap);
            printf("%s\n", text);
        }
        fflush(stdout);
    }
    free(line);
    free(text);
    free(ids);
    free(out);
    qkv_graph_free(&g);
    cli_data_free(&d);
    qkv_model_free(&m);
    return 0;
}
