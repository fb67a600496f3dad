/* fuzz_tsv.c - libFuzzer harness of the TSV corpus loader and what follows it
 * in qkv train: the input, as a file, goes through qkv_corpus_load (strict
 * UTF-8, tabs, CRLF, byte-order mark, NUL bytes, line limits); a corpus that
 * loads gets, for each tokenizer (word, char) and each layout (enc-dec with
 * a vocabulary per side, decoder-only with one shared), its vocabularies,
 * its pairs encoded within 64 + 64 tokens and one epoch of batches of 4096
 * tokens. Bad files must be refused with one line, never crash, leak or exit.
 * Checked too: characters detokenize back to the exact target text. Seeds:
 * a few lines of the shipped corpora and hand-made bad files (corpus/tsv/).
 */
#include <stdint.h>

#include "fuzz.h"

/* Aborts unless every target of c reads back from its character ids. */
static void check_chars(const qkv_corpus *c, const qkv_vocab *tv) {
    for (int i = 0; i < c->n; i++) {
        int n = qkv_encode(tv, QKV_TOK_CHAR, c->tgt[i], NULL, 0);
        int32_t *ids = qkv_malloc(((size_t)n + 1) * sizeof *ids, "ids");
        size_t len = strlen(c->tgt[i]) + 1;
        char *text = qkv_malloc(len, "text");
        qkv_encode(tv, QKV_TOK_CHAR, c->tgt[i], ids, n);
        if (qkv_detokenize(tv, QKV_TOK_CHAR, ids, n, text, len) != len - 1 ||
            strcmp(text, c->tgt[i]) != 0) {
            fprintf(stderr, "fuzz: line %d: '%s' detokenizes as '%s'\n",
                    c->line[i], c->tgt[i], text);
            abort();
        }
        free(ids);
        free(text);
    }
}

static void batch_all(const qkv_corpus *c, qkv_tok tok, int decoder_only) {
    qkv_vocab sv, tv;
    int sides = decoder_only ? QKV_SIDE_BOTH : QKV_SIDE_SRC;
    qkv_vocab_build(&sv, c, sides, tok, 1);
    qkv_vocab_build(&tv, c, decoder_only ? QKV_SIDE_BOTH : QKV_SIDE_TGT, tok,
                    1);
    if (tok == QKV_TOK_CHAR) check_chars(c, &tv);
    qkv_pairs p;
    qkv_pairs_encode(&p, c, tok, &sv, &tv, 64, 64);
    p.decoder_only = decoder_only;
    qkv_batcher it;
    char err[512];
    if (p.n > 0 && qkv_batcher_init(&it, &p, 4096, err, sizeof err) == 0) {
        qkv_corpus_batch b;
        qkv_corpus_batch_init(&b, 4096);
        qkv_pcg32 rng;
        qkv_pcg32_seed(&rng, 42, 54);
        qkv_batcher_epoch(&it, &rng);
        while (qkv_batcher_next(&it, &b)) continue;
        qkv_corpus_batch_free(&b);
        qkv_batcher_free(&it);
    }
    qkv_pairs_free(&p);
    qkv_vocab_free(&sv);
    qkv_vocab_free(&tv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_FILE) return 0;
    qkv_corpus c;
    char err[512];
    if (qkv_corpus_load(fuzz_file(data, size), &c, err, sizeof err)) return 0;
    for (int k = 0; k < 4; k++)
        batch_all(&c, k & 1 ? QKV_TOK_CHAR : QKV_TOK_WORD, k >> 1);
    qkv_corpus_free(&c);
    return 0;
}
