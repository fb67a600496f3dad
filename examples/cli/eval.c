/* eval.c - `qkv eval`: a checkpoint's scores on a test set.
 *
 *   qkv eval --ckpt runs/dates/ckpt.safetensors \
 *            --data data/corpora/dates/test.tsv [--beam 4] [--show 5] \
 *            [--hyp runs/dates/test.hyp]
 *   qkv eval --ckpt runs/copy/ckpt.safetensors --size 1000
 *   qkv eval --ckpt torch.safetensors --config model.json --size 1000
 *
 * A corpus model is scored on the pairs of --data, in file order; a task
 * model on --size fresh sequences of its task. The figures come from the
 * library's evaluator (eval.h): loss, perplexity, token accuracy, exact
 * match, BLEU on detokenized text (sacreBLEU's default: 13a tokenizer, 'exp'
 * smoothing; for a corpus, against the reference lines of --data as they
 * are in the file) and BLEU on token ids. --hyp writes the detokenized
 * outputs, one a line in the evaluated order (what BLEU scored; a task's
 * symbols as numbers; pairs dropped for length are absent).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "eval.h"
#include "text.h"

typedef struct eval_opts {
    const char *ckpt, *config, *data, *hyp, *text;
    int beam, batch_tokens, size, seed, threads, show;
    float alpha;
    int precision; /* qkv_precision */
} eval_opts;

/* A checkpoint being scored. */
typedef struct evaluator {
    eval_opts o;
    qkv_model m;
    cli_data d;
    qkv_graph g;
    qkv_eval_opts eo;
    qkv_scores s;
    int shown, dropped;
    char *text;
    size_t text_cap;
    cli_buf hyps; /* --hyp: the outputs, one a line */
    qkv_bleu raw; /* a corpus: the outputs against --data's references */
} evaluator;

static void parse(eval_opts *o, int argc, char **argv) {
    const flag flags[] = {
        {"ckpt", FLAG_STR, &o->ckpt, NULL,
         "checkpoint written by qkv train, or weights (qkv export)", 0, 0},
        {"config", FLAG_STR, &o->config, NULL,
         "model config JSON for weights written elsewhere (PyTorch)", 0, 0},
        {"data", FLAG_STR, &o->data, NULL,
         "test corpus, TSV (a task model draws fresh sequences instead)", 0, 0},
        {"beam", FLAG_INT, &o->beam, NULL,
         "beam width for decoding (1: greedy; encoder-decoder only)", 1, 256},
        {"alpha", FLAG_FLOAT, &o->alpha, NULL, "beam length penalty (GNMT)", 0,
         10},
        {"batch-tokens", FLAG_INT, &o->batch_tokens, NULL, "tokens per batch",
         1, 1 << 24},
        {"size", FLAG_INT, &o->size, NULL, "task models: sequences to draw", 1,
         1 << 20},
        {"seed", FLAG_INT, &o->seed, NULL, "task models: PCG32 seed", 0, 0},
        {"show", FLAG_INT, &o->show, NULL,
         "print the first N pairs with their outputs", 0, INT_MAX},
        {"hyp", FLAG_STR, &o->hyp, NULL,
         "write the detokenized outputs to FILE, one a line", 0, 0},
        {"text", FLAG_STR, &o->text, NULL,
         "a language model (qkv train --text): the text to score, in "
         "consecutive windows of the model's positions",
         0, 0},
        CLI_PRECISION_FLAG(&o->precision),
        {"threads", FLAG_INT, &o->threads, NULL,
         "OpenMP threads (0: the free cores, following the load)", 0,
         cli_max_threads()},
    };
    cli_parse("eval", "--ckpt FILE [--data TEST.tsv] [flags]", flags,
              (int)(sizeof flags / sizeof flags[0]), argc, argv, 2, NULL, 0,
              NULL);
    if (o->threads) qkv_set_threads(o->threads);
}

/* The model, and the flags that must fit it. */
static void open_model(evaluator *e) {
    cli_open_model("eval", e->o.ckpt, e->o.config, &e->m, &e->d);
    if (e->o.beam > 1 && e->d.decoder_only)
        cli_die("eval: --beam needs an encoder-decoder model");
    if (e->d.text != (*e->o.text != 0))
        cli_die(e->d.text ? "eval: --text is required: %s is a language model "
                            "of a text (qkv train --text)"
                          : "eval: --text: %s is not a language model of a "
                            "text (give --data, or nothing for a task)",
                e->o.ckpt);
    if (e->d.text && (*e->o.hyp || e->o.show))
        cli_die("eval: --hyp and --show decode; a language model's text is "
                "scored, not decoded (use qkv generate)");
    if (e->d.corpus && !e->d.text && !*e->o.data)
        cli_die("eval: --data is required: %s was trained on a corpus",
                e->o.ckpt);
    if (!e->d.corpus && *e->o.data)
        cli_die("eval: --data: %s was trained on a generated task, not a "
                "corpus",
                e->o.ckpt);
    qkv_graph_init(&e->g, 0);
    cli_set_precision("eval", &e->g, e->o.precision, 1);
    e->eo = (qkv_eval_opts){.eos = cli_data_eos(&e->d),
                            .beam = e->o.beam,
                            .alpha = e->o.alpha,
                            .unk = cli_data_unk(&e->d),
                            .detok = e->d.corpus ? cli_eval_detok : NULL,
                            .detok_ctx = &e->d};
}

/* --show: the first rows of a task batch, input and output symbols. */
static void show_task_rows(evaluator *e, const qkv_task_batch *tb,
                           const int32_t *hyp, int max_out) {
    for (int r = 0; r < tb->view.B && e->shown < e->o.show; r++, e->shown++) {
        const int32_t *x = e->d.decoder_only
                               ? tb->tgt_in + (size_t)r * tb->view.T
                               : tb->src + (size_t)r * tb->view.S;
        printf("in: ");
        for (int j = 0; j < tb->len[r]; j++) printf(" %d", x[j]);
        printf("\nout:");
        for (int j = 0; j < max_out; j++) {
            int32_t y = hyp[(size_t)r * max_out + j];
            if (y == QKV_PAD || (e->d.task.use_eos && y == QKV_EOS)) break;
            printf(" %d", y);
        }
        printf("\n");
    }
}

/* The text of the n decoded rows of hyp (max_out ids each; what BLEU
 * scores): kept for --hyp, and for a corpus scored against the raw
 * reference lines of --data, refs[0..n). */
static void take_outputs(evaluator *e, const int32_t *hyp, int n, int max_out,
                         const char *const *refs) {
    for (int r = 0; r < n && (*e->o.hyp || refs); r++) {
        qkv_eval_text(&e->eo, hyp + (size_t)r * max_out, max_out, &e->text,
                      &e->text_cap);
        if (*e->o.hyp) cli_bprintf(&e->hyps, "%s\n", e->text);
        if (refs) qkv_bleu_add_text(&e->raw, e->text, refs[r]);
    }
}

/* A task model: --size fresh sequences, 256 a batch. */
static void eval_task(evaluator *e) {
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, (uint64_t)e->o.seed, 3);
    qkv_task_batch tb;
    for (int done = 0; done < e->o.size;) {
        int B = e->o.size - done < 256 ? e->o.size - done : 256;
        qkv_task_batch_init(&tb, &e->d.task, B);
        qkv_task_sample(&e->d.task, &rng, &tb);
        int max_out = qkv_eval_max_out(&e->m, &tb.view, e->eo.eos);
        int32_t *hyp = qkv_malloc((size_t)B * max_out * sizeof *hyp, "hyps");
        qkv_eval_batch(&e->m, &e->g, &tb.view, &e->eo, max_out, &e->s, hyp);
        show_task_rows(e, &tb, hyp, max_out);
        take_outputs(e, hyp, B, max_out, NULL);
        free(hyp);
        qkv_task_batch_free(&tb);
        done += B;
    }
}

/* The pairs of --data that fit the model's positions, encoded. */
static void load_test(evaluator *e, qkv_corpus *c, qkv_pairs *p) {
    char err[512];
    if (qkv_corpus_load(e->o.data, c, err, sizeof err))
        cli_die("eval: --data: %s", err);
    int L = e->m.cfg.max_len, dec = e->d.decoder_only;
    int max_src = dec ? (L - 1) / 2 : L, max_tgt = dec ? (L - 1) / 2 : L - 1;
    qkv_pairs_encode(p, c, e->d.tok, &e->d.sv, &e->d.tv, max_src, max_tgt);
    p->decoder_only = dec;
    e->dropped = p->dropped;
    if (p->n < 1)
        cli_die("eval: --data: %s: no pair fits the model's %d positions",
                e->o.data, L);
}

/* The budget of a batch, after refusing one that would not fit in memory. */
static int batch_budget(evaluator *e, const qkv_pairs *p) {
    int longest = qkv_pairs_cost(p);
    int budget = e->o.batch_tokens > longest ? e->o.batch_tokens : longest;
    int rows = budget / longest, out_len = 2 * longest + 8;
    if (out_len > e->m.cfg.max_len) out_len = e->m.cfg.max_len;
    cli_check_forward_memory("eval", &e->m, rows,
                             e->d.decoder_only ? 0 : p->longest_src, out_len,
                             "--batch-tokens");
    if (e->o.beam > 1)
        cli_check_forward_memory("eval", &e->m, e->o.beam, p->longest_src,
                                 out_len, "--beam");
    return budget;
}

/* How many pairs from i on fit in a batch of budget tokens, in file order
 * (so --show prints the first pairs of the file). */
static int pairs_that_fit(const qkv_pairs *p, int i, int budget) {
    int n = 0, S = 0, T = 0, dec = p->decoder_only;
    while (i + n < p->n) {
        const qkv_pair *q = &p->pair[i + n];
        int s2 = dec ? 0 : q->src_len > S ? q->src_len : S;
        int need = dec ? q->src_len + q->tgt_len + 1 : q->tgt_len + 1;
        int t2 = need > T ? need : T;
        if (n && (size_t)(n + 1) * (size_t)(s2 > t2 ? s2 : t2) > (size_t)budget)
            break;
        S = s2, T = t2, n++;
    }
    return n;
}

/* A corpus model: the pairs of --data. */
static void eval_corpus(evaluator *e) {
    qkv_corpus c;
    qkv_pairs p;
    load_test(e, &c, &p);
    int budget = batch_budget(e, &p);
    qkv_corpus_batch b;
    qkv_corpus_batch_init(&b, budget);
    int *idx = qkv_malloc((size_t)p.n * sizeof *idx, "eval");
    for (int i = 0; i < p.n; i++) idx[i] = i;
    int32_t *hyp = NULL;
    const char **refs = qkv_malloc((size_t)p.n * sizeof *refs, "eval");
    for (int i = 0, n; i < p.n; i += n) {
        n = pairs_that_fit(&p, i, budget);
        qkv_pairs_batch(&p, idx + i, n, &b);
        int max_out = qkv_eval_max_out(&e->m, &b.view, e->eo.eos);
        hyp = qkv_realloc(hyp, (size_t)n * max_out * sizeof *hyp, "hyps");
        qkv_eval_batch(&e->m, &e->g, &b.view, &e->eo, max_out, &e->s, hyp);
        for (int r = 0; r < n; r++) refs[r] = c.tgt[p.pair[i + r].index];
        take_outputs(e, hyp, n, max_out, refs);
        for (int r = 0; r < n && e->shown < e->o.show; r++, e->shown++) {
            const qkv_pair *q = &p.pair[i + r];
            cli_detokenize(&e->d, hyp + (size_t)r * max_out, max_out, &e->text,
                           &e->text_cap);
            printf("src: %s\nref: %s\nout: %s\n\n", c.src[q->index],
                   c.tgt[q->index], e->text);
        }
    }
    /* BLEU against the lines of --data, as sacreBLEU would score --hyp's
     * file, rather than against the detokenized reference ids */
    e->s.bleu = e->raw;
    free(refs);
    free(hyp);
    free(idx);
    qkv_corpus_batch_free(&b);
    qkv_pairs_free(&p);
    qkv_corpus_free(&c);
}

/* A language model of a text: the loss, perplexity and token accuracy of
 * --text in consecutive windows of the model's positions, as training's
 * validation scores its held-out text. */
static void eval_text(evaluator *e) {
    char err[600];
    qkv_text t;
    if (qkv_text_load(e->o.text, &t, err, sizeof err))
        cli_die("eval: --text: %s", err);
    qkv_text_ids x;
    qkv_text_encode(&x, &e->d.sv, e->d.tok, t.s, t.n);
    int block = e->m.cfg.max_len;
    int B = e->o.batch_tokens / block > 0 ? e->o.batch_tokens / block : 1;
    cli_check_forward_memory("eval", &e->m, B, 0, block, "--batch-tokens");
    qkv_source *src = qkv_text_source(&x, B, block, 0, 1, 0, err, sizeof err);
    if (!src) cli_die("eval: --text: %s: %s", e->o.text, err);
    if (x.n_unk)
        cli_warn("eval: --text: %lld tokens of %s are not in the model's "
                 "vocabulary (scored as <unk>)",
                 (long long)x.n_unk, e->o.text);
    const qkv_batch *b;
    long windows = 0;
    while ((b = qkv_source_next(src))) {
        qkv_eval_batch(&e->m, &e->g, b, &e->eo, 0, &e->s, NULL);
        windows += b->B;
    }
    double loss = qkv_scores_loss(&e->s);
    printf("%s: %ld windows of %d tokens\nloss %.6f  perplexity %.4f  token "
           "accuracy %.2f%%\n",
           e->o.text, windows, block, loss, exp(loss),
           100.0 * qkv_scores_accuracy(&e->s));
    qkv_source_free(src);
    qkv_text_ids_free(&x);
    qkv_text_free(&t);
}

/* --hyp: refused before the work if it names an input or its directory
 * cannot be written. */
static void check_hyp(const eval_opts *o) {
    if (strcmp(o->hyp, o->data) == 0 || strcmp(o->hyp, o->ckpt) == 0)
        cli_die("eval: --hyp %s would overwrite the %s", o->hyp,
                strcmp(o->hyp, o->data) == 0 ? "test data" : "checkpoint");
    char dir[4096];
    const char *slash = strrchr(o->hyp, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - o->hyp + 1) : 1,
             slash ? o->hyp : ".");
    if (access(dir, W_OK) != 0)
        cli_die("eval: --hyp %s: cannot write in %s: %s", o->hyp, dir,
                strerror(errno));
}

int cmd_eval(int argc, char **argv) {
    static evaluator ev;
    evaluator *e = &ev;
    memset(e, 0, sizeof *e);
    e->o = (eval_opts){"", "", "", "", "", 1, 4096, 1000, 7, 0, 0, 0.6f, 0};
    parse(&e->o, argc, argv);
    if (*e->o.hyp) check_hyp(&e->o);
    open_model(e);
    if (e->d.text) {
        eval_text(e);
        qkv_graph_free(&e->g);
        cli_data_free(&e->d);
        qkv_model_free(&e->m);
        return 0;
    }
    if (e->d.corpus)
        eval_corpus(e);
    else
        eval_task(e);
    const qkv_scores *s = &e->s;
    double loss = qkv_scores_loss(s);
    printf("%s: %ld sequences", *e->o.data ? e->o.data : "task", s->seqs);
    if (e->dropped)
        printf(" (%d more dropped: longer than the model's %d positions)",
               e->dropped, e->m.cfg.max_len);
    printf("\nloss %.6f  perplexity %.4f  token accuracy %.2f%%  exact match "
           "%.2f%%\nBLEU %.2f (sacreBLEU 13a, detokenized)  token BLEU %.2f\n",
           loss, exp(loss), 100.0 * qkv_scores_accuracy(s),
           100.0 * qkv_scores_exact(s), qkv_scores_bleu(s),
           qkv_scores_token_bleu(s));
    if (*e->o.hyp) {
        cli_write_file("eval", e->o.hyp, e->hyps.s ? e->hyps.s : "");
        printf("outputs in %s\n", e->o.hyp);
    }
    free(e->hyps.s);
    free(e->text);
    qkv_graph_free(&e->g);
    cli_data_free(&e->d);
    qkv_model_free(&e->m);
    return 0;
}
