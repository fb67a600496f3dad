/* corpus.c - qkv from C: train on a TSV corpus, evaluate on its test split.
 *
 *   corpus TRAIN.tsv TEST.tsv [STEPS]
 *   corpus data/corpora/dates/train.tsv data/corpora/dates/test.tsv 300
 *
 * Character tokens, vocabularies from the training split, batches of about
 * 4096 tokens in shuffled epochs, an encoder-decoder of 2 + 2 layers; then
 * loss, token accuracy, exact match and BLEU of greedy decoding on the test
 * pairs. Uses only the installed library (pkg-config --cflags --libs qkv).
 */
#include <stdio.h>
#include <stdlib.h>

#include <qkv/eval.h>
#include <qkv/source.h>
#include <qkv/trainer.h>

/* The pairs of path with sides of at most max tokens. */
static qkv_pairs load(const char *path, const qkv_vocab *sv,
                      const qkv_vocab *tv, int max) {
    qkv_corpus c;
    char err[512];
    if (qkv_corpus_load(path, &c, err, sizeof err)) {
        fprintf(stderr, "corpus: %s\n", err);
        exit(2);
    }
    qkv_pairs p;
    qkv_pairs_encode(&p, &c, QKV_TOK_CHAR, sv, tv, max, max);
    qkv_corpus_free(&c);
    return p;
}

/* eval.h's detokenizer: the text of target ids, characters joined. */
static size_t detok(const void *tv, const int32_t *ids, int n, char *out,
                    size_t cap) {
    return qkv_detokenize(tv, QKV_TOK_CHAR, ids, n, out, cap);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: corpus TRAIN.tsv TEST.tsv [STEPS]\n");
        return 2;
    }
    int steps = argc > 3 ? atoi(argv[3]) : 300;
    char err[512];

    /* vocabularies from the training split, then both splits encoded */
    qkv_corpus c;
    if (qkv_corpus_load(argv[1], &c, err, sizeof err)) {
        fprintf(stderr, "corpus: %s\n", err);
        return 2;
    }
    qkv_vocab sv, tv;
    qkv_vocab_build(&sv, &c, QKV_SIDE_SRC, QKV_TOK_CHAR, 1);
    qkv_vocab_build(&tv, &c, QKV_SIDE_TGT, QKV_TOK_CHAR, 1);
    qkv_corpus_free(&c);
    qkv_pairs train = load(argv[1], &sv, &tv, 100);
    qkv_source *data = qkv_corpus_source(&train, 4096, 42, 0, err, sizeof err);
    if (!data) {
        fprintf(stderr, "corpus: %s\n", err);
        return 2;
    }

    qkv_model_config cfg = qkv_model_defaults(QKV_MODEL_ENCDEC);
    cfg.src_vocab = sv.size, cfg.tgt_vocab = tv.size;
    cfg.d_model = 64, cfg.heads = 4, cfg.d_ff = 128, cfg.dropout = 0.0f;
    cfg.max_len = 2 * qkv_pairs_cost(&train) + 8;
    qkv_model m;
    if (qkv_model_init(&m, &cfg, 42, err, sizeof err)) {
        fprintf(stderr, "corpus: %s\n", err);
        return 2;
    }
    /* test pairs that fit the positions, in file order */
    qkv_pairs test = load(argv[2], &sv, &tv, cfg.max_len - 1);
    qkv_source *eval = qkv_corpus_source(&test, 4096, 0, 1, err, sizeof err);
    if (!eval) {
        fprintf(stderr, "corpus: %s\n", err);
        return 2;
    }
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, 2e-3f);
    int warm = steps < 100 ? steps : 100;
    tc.schedule =
        (qkv_schedule){QKV_SCHEDULE_COSINE, 2e-3f, warm, steps, 1e-4f, 0};
    qkv_trainer t;
    qkv_trainer_init(&t, &m, &tc);
    for (int step = 1; step <= steps; step++) {
        qkv_trainer_step(&t, qkv_source_next(data));
        if (step % 100 == 0 || step == steps)
            printf("step %4d  loss %.4f\n", step, (double)t.loss);
    }

    qkv_eval_opts eo = {QKV_EOS, 1, 0.0f, QKV_UNK, detok, &tv};
    qkv_scores s;
    qkv_evaluate(&t.model, &t.graph, eval, &eo, &s);
    printf("%s: %ld pairs  loss %.4f  token accuracy %.1f%%  exact match "
           "%.1f%%  BLEU %.1f\n",
           argv[2], s.seqs, qkv_scores_loss(&s), 100 * qkv_scores_accuracy(&s),
           100 * qkv_scores_exact(&s), qkv_scores_bleu(&s));

    qkv_source_free(data);
    qkv_source_free(eval);
    qkv_pairs_free(&train);
    qkv_pairs_free(&test);
    qkv_vocab_free(&sv);
    qkv_vocab_free(&tv);
    qkv_trainer_free(&t);
    return 0;
}
