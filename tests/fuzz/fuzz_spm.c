/* fuzz_spm.c - libFuzzer harness of the SentencePiece model loader (qkv train
 * --tok spm --spm-model FILE, and the model a checkpoint carries): the input,
 * as a file, goes through qkv_vocab_load_spm (libsentencepiece's parse, the
 * special ids, every piece non-empty, UTF-8 and not spelt like a qkv
 * special); a model that loads encodes and decodes a few texts. Bad models
 * must be refused with one line, never crash, leak or exit, and a model
 * that loads must not fail later on ordinary text. Checked too: a refusal's
 * message is one non-empty line, and every id encoded lies inside the
 * vocabulary. Seeds: unigram and BPE models made by spm_train with qkv's
 * ids, one with SentencePiece's default ids, a cut model and a text file
 * (corpus/spm/). libsentencepiece is not instrumented, so the fuzzer is
 * guided by qkv's side of the parse only.
 */
#include <stdint.h>

#include "fuzz.h"

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz: %s: %s\n", what, detail);
    abort();
}

/* Encodes s with v and decodes the ids; aborts on an id outside v. */
static void enc_dec(const qkv_vocab *v, const char *s) {
    int n = qkv_encode(v, QKV_TOK_SPM, s, NULL, 0);
    int32_t *ids = qkv_malloc(((size_t)n + 1) * sizeof *ids, "ids");
    if (qkv_encode(v, QKV_TOK_SPM, s, ids, n) != n)
        fail("encoding twice gave two lengths", s);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= v->size) fail("an id outside", s);
    char out[256];
    size_t need = qkv_detokenize(v, QKV_TOK_SPM, ids, n, out, sizeof out);
    if (strlen(out) != (need < sizeof out ? need : sizeof out - 1))
        fail("decoding wrote a length other than it said", s);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_FILE) return 0;
    qkv_vocab v;
    char err[512] = "";
    if (qkv_vocab_load_spm(&v, fuzz_file(data, size), err, sizeof err)) {
        if (!err[0] || strchr(err, '\n')) fail("not one line", err);
        return 0;
    }
    static const char *const texts[] = {
        "",
        "we see a dog .",
        "  two  spaces  ",
        "üñí ©ode 日本語 🙂",
        "line\n",
        "<unk> <pad> <s>",
        "\t\r\x7f",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        enc_dec(&v, texts[i]);
    qkv_vocab_free(&v);
    return 0;
}
