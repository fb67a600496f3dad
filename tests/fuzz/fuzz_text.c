/* fuzz_text.c - libFuzzer harness of the plain-text loader and what follows it
 * in `qkv train --text`: the input, as a file, goes through qkv_text_load
 * (strict UTF-8, NUL bytes, byte-order mark, empty files); a text that loads
 * is cut for validation (qkv_text_split), and for each tokenizer (word,
 * char) gets a vocabulary of its training part, both parts encoded, and
 * batches of windows from each (a few training batches, the whole finite
 * validation pass). Bad files must be refused with one line, never crash,
 * leak or exit. Checked too: the cut lies on a character boundary; every id
 * is below the vocabulary's size; each window's targets are its inputs
 * shifted by one; and the whole text's characters, with a vocabulary of
 * the whole text, detokenize back to its exact bytes. Seeds: pieces of the
 * shipped texts and hand-made bad files (corpus/text/).
 */
#include <stdint.h>

#include "fuzz.h"
#include "text.h"

static void fail(const char *what) {
    fprintf(stderr, "fuzz: %s\n", what);
    abort();
}

/* Aborts unless every window of b is inside the vocabulary and predicts
 * the next token of its own input. */
static void check_batch(const qkv_batch *b, int vocab) {
    if (b->src || b->B < 1 || b->T < 1) fail("a text batch of no windows");
    for (int r = 0; r < b->B; r++)
        for (int i = 0; i < b->T; i++) {
            long at = (long)r * b->T + i;
            int32_t in = b->tgt_in[at], out = b->tgt_out[at];
            if (in < 0 || in >= vocab || out < 0 || out >= vocab)
                fail("an id outside the vocabulary");
            if (b->tgt_pad[at]) fail("padding in a text window");
            if (i + 1 < b->T && b->tgt_in[at + 1] != out)
                fail("a window's targets are not its inputs shifted by one");
        }
}

/* The whole text's characters, with a vocabulary of the whole text, must
 * detokenize to its bytes. */
static void check_chars(const qkv_text *t) {
    qkv_vocab v;
    qkv_text_vocab(&v, t->s, t->n, QKV_TOK_CHAR);
    qkv_text_ids x;
    qkv_text_encode(&x, &v, QKV_TOK_CHAR, t->s, t->n);
    if (x.n_unk != 0) fail("a character of the text unknown to its vocabulary");
    char *back = qkv_malloc(t->n + 1, "text");
    size_t len =
        qkv_detokenize(&v, QKV_TOK_CHAR, x.ids, (int)x.n, back, t->n + 1);
    if (len != t->n || memcmp(back, t->s, t->n) != 0)
        fail("the text's characters do not detokenize to the text");
    free(back);
    qkv_text_ids_free(&x);
    qkv_vocab_free(&v);
}

static void windows(const qkv_text *t, size_t cut, qkv_tok tok) {
    qkv_vocab v;
    qkv_text_vocab(&v, t->s, cut, tok);
    qkv_text_ids train, valid;
    qkv_text_encode(&train, &v, tok, t->s, cut);
    qkv_text_encode(&valid, &v, tok, t->s + cut, t->n - cut);
    for (int64_t i = 0; i < train.n; i++)
        if (train.ids[i] < 0 || train.ids[i] >= v.size)
            fail("an encoded id outside the vocabulary");
    char err[512];
    qkv_source *s = qkv_text_source(&train, 3, 4, 42, 0, 0, err, sizeof err);
    for (int k = 0; s && k < 4; k++) {
        const qkv_batch *b = qkv_source_next(s);
        if (!b) fail("a training text source ran dry");
        check_batch(b, v.size);
    }
    qkv_source_free(s);
    s = qkv_text_source(&valid, 3, 4, 0, 1, 0, err, sizeof err);
    int64_t rows = 0;
    for (const qkv_batch *b; s && (b = qkv_source_next(s));) {
        check_batch(b, v.size);
        rows += b->B;
    }
    if (s && rows != qkv_text_windows(&valid, 4, 0))
        fail("the validation pass did not read every window once");
    qkv_source_free(s);
    qkv_text_ids_free(&train);
    qkv_text_ids_free(&valid);
    qkv_vocab_free(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_FILE) return 0;
    qkv_text t;
    char err[512];
    if (qkv_text_load(fuzz_file(data, size), &t, err, sizeof err)) return 0;
    if (t.n == 0 || strlen(t.s) != t.n) fail("a loaded text of the wrong size");
    size_t cut = qkv_text_split(&t, 0.9);
    if (cut > t.n || (cut < t.n && (t.s[cut] & 0xc0) == 0x80))
        fail("the split cuts inside a character");
    check_chars(&t);
    windows(&t, cut, QKV_TOK_WORD);
    windows(&t, cut, QKV_TOK_CHAR);
    qkv_text_free(&t);
    return 0;
}
