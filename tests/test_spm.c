/* SentencePiece tokens (data/spm.h, QKV_TOK_SPM in data/corpus.h): training
 * is deterministic, the specials have qkv's ids, text round-trips, the
 * pipeline (pairs, detokenization) works on a shipped corpus, bad models are
 * refused with one line, and qkv train / eval / decode run with --tok spm
 * from the checkpoint alone. */
#include "corpus.h"
#include "spm.h"

#include "test.h"
#include "text.h"

/* The first 2000 pairs of the shipped training splits (all 20000 take
 * minutes under the sanitizers); views of all_grammar and all_dates. */
static qkv_corpus all_grammar, all_dates, grammar, dates;
#define N_PAIRS 2000
static char qkv[600];

static int load(const char *name, qkv_corpus *c) {
    char path[128], err[300];
    snprintf(path, sizeof path, "data/corpora/%s/train.tsv", name);
    if (qkv_corpus_load(path, c, err, sizeof err) == 0) return 0;
    printf("FAIL spm/setup: %s\n", err);
    return -1;
}

/* Same sentences, same model bytes; the two model types differ. */
static void test_training_is_deterministic(void) {
    char err[300];
    qkv_vocab a, b, c;
    CHECK(qkv_vocab_train_spm(&a, &grammar, QKV_SIDE_BOTH, "unigram", 200, err,
                              sizeof err) == 0,
          "%s", err);
    CHECK(qkv_vocab_train_spm(&b, &grammar, QKV_SIDE_BOTH, "unigram", 200, err,
                              sizeof err) == 0,
          "%s", err);
    CHECK(qkv_vocab_train_spm(&c, &grammar, QKV_SIDE_BOTH, "bpe", 200, err,
                              sizeof err) == 0,
          "%s", err);
    if (!a.spm || !b.spm || !c.spm) return;
    size_t na, nb, nc;
    const void *pa = qkv_spm_bytes(a.spm, &na), *pb = qkv_spm_bytes(b.spm, &nb),
               *pc = qkv_spm_bytes(c.spm, &nc);
    CHECK(na == nb && memcmp(pa, pb, na) == 0,
          "two trainings: %zu and %zu bytes, not the same", na, nb);
    CHECK(na != nc || memcmp(pa, pc, na) != 0, "unigram and bpe are the same");
    CHECK(a.size == 200 && c.size == 200, "sizes %d %d, want 200", a.size,
          c.size);
    /* the model's bytes give the same vocabulary back */
    qkv_vocab d;
    CHECK(qkv_vocab_from_spm(&d, pa, na, "bytes", err, sizeof err) == 0, "%s",
          err);
    for (int i = 0; i < a.size && i < d.size; i++)
        CHECK(strcmp(a.tokens[i], d.tokens[i]) == 0, "token %d: %s vs %s", i,
              a.tokens[i], d.tokens[i]);
    qkv_vocab_free(&a);
    qkv_vocab_free(&b);
    qkv_vocab_free(&c);
    qkv_vocab_free(&d);
}

/* pad 0 bos 1 eos 2 unk 3, as corpus.h's; ordinary text never gets them
 * but an unseen character is <unk>. */
static void test_special_ids(void) {
    char err[300];
    qkv_vocab v;
    if (qkv_vocab_train_spm(&v, &grammar, QKV_SIDE_BOTH, "bpe", 150, err,
                            sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    for (int i = 0; i < QKV_N_SPECIAL; i++) {
        CHECK(strcmp(v.tokens[i], qkv_special_tokens[i]) == 0,
              "token %d is %s, want %s", i, v.tokens[i], qkv_special_tokens[i]);
        CHECK(strcmp(qkv_spm_piece(v.spm, i), qkv_special_tokens[i]) == 0,
              "piece %d is %s", i, qkv_spm_piece(v.spm, i));
    }
    int32_t ids[256];
    int specials = 0;
    for (int i = 0; i < grammar.n; i++) {
        int n = qkv_encode(&v, QKV_TOK_SPM, grammar.tgt[i], ids, 256);
        for (int k = 0; k < n && k < 256; k++)
            specials += ids[k] < QKV_N_SPECIAL;
    }
    CHECK(specials == 0, "%d special ids in the training targets", specials);
    int n = qkv_encode(&v, QKV_TOK_SPM, "a \xE2\x82\xAC dog", ids, 256);
    int unk = 0;
    for (int k = 0; k < n; k++) unk += ids[k] == QKV_UNK;
    CHECK(unk == 1, "'a EURO dog': %d <unk> of %d ids", unk, n);
    char out[64];
    qkv_detokenize(&v, QKV_TOK_SPM, ids, n, out, sizeof out);
    CHECK(strcmp(out, "a <unk> dog") == 0, "'a EURO dog' decodes to '%s'", out);
    qkv_vocab_free(&v);
}

/* Every training sentence, both sides, of both shipped corpora comes back
 * byte for byte (they have single spaces and no leading or trailing ones);
 * extra spaces are the one thing SentencePiece does not keep. */
static void round_trip(const qkv_corpus *c, const char *type, int size) {
    char err[300], out[1024];
    qkv_vocab v;
    if (qkv_vocab_train_spm(&v, c, QKV_SIDE_BOTH, type, size, err,
                            sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    int32_t ids[512];
    int bad = 0;
    long tokens = 0, chars = 0;
    for (int i = 0; i < c->n; i++)
        for (int side = 0; side < 2; side++) {
            const char *s = side ? c->tgt[i] : c->src[i];
            int n = qkv_encode(&v, QKV_TOK_SPM, s, ids, 512);
            size_t need =
                qkv_detokenize(&v, QKV_TOK_SPM, ids, n, out, sizeof out);
            bad += n > 512 || need != strlen(s) || strcmp(out, s) != 0;
            tokens += n, chars += (long)strlen(s);
        }
    CHECK(bad == 0, "%s %d: %d of %d sentences do not round-trip", type, size,
          bad, 2 * c->n);
    /* subwords: fewer tokens than characters */
    CHECK(tokens < chars, "%s %d: %ld tokens for %ld characters", type, size,
          tokens, chars);
    char spaced[1024] = "  "; /* the first source, its spaces tripled */
    size_t k = 2;
    for (const char *t = c->src[0]; *t && k < sizeof spaced - 8; t++)
        if (*t == ' ')
            memcpy(spaced + k, "   ", 3), k += 3;
        else
            spaced[k++] = *t;
    memcpy(spaced + k, " \0", 2);
    int n = qkv_encode(&v, QKV_TOK_SPM, spaced, ids, 512);
    qkv_detokenize(&v, QKV_TOK_SPM, ids, n, out, sizeof out);
    CHECK(strcmp(out, c->src[0]) == 0, "spaces: '%s' gives '%s'", spaced, out);
    qkv_vocab_free(&v);
}

static void test_round_trip(void) {
    round_trip(&grammar, "unigram", 200);
    round_trip(&grammar, "bpe", 300);
    round_trip(&dates, "unigram", 150);
}

/* A grammar model through the pipeline: pairs of the validation split
 * (no <unk>: every character is seen in training), and the detokenized
 * targets are the references; bos/pad are skipped and eos ends the text. */
static void test_pairs_and_detokenize(void) {
    char err[300], out[512];
    qkv_vocab v;
    qkv_corpus c;
    if (qkv_vocab_train_spm(&v, &grammar, QKV_SIDE_BOTH, "unigram", 200, err,
                            sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    if (qkv_corpus_load("data/corpora/grammar/valid.tsv", &c, err,
                        sizeof err)) {
        CHECK(0, "%s", err);
        qkv_vocab_free(&v);
        return;
    }
    qkv_pairs p;
    qkv_pairs_encode(&p, &c, QKV_TOK_SPM, &v, &v, 0, 0);
    CHECK(p.n == 1000 && p.dropped == 0, "%d kept, %d dropped", p.n, p.dropped);
    CHECK(p.n_unk == 0, "%zu <unk> of %zu tokens", p.n_unk, p.n_tokens);
    int bad = 0;
    for (int i = 0; i < p.n; i++) {
        const qkv_pair *q = &p.pair[i];
        qkv_detokenize(&v, QKV_TOK_SPM, p.ids + q->tgt, q->tgt_len, out,
                       sizeof out);
        bad += strcmp(out, c.tgt[q->index]) != 0;
    }
    CHECK(bad == 0, "%d targets differ from the references", bad);
    /* as a decoder writes it: bos y eos, then junk after the eos */
    const qkv_pair *q = &p.pair[0];
    int32_t framed[256];
    int n = q->tgt_len < 200 ? q->tgt_len : 200;
    framed[0] = QKV_BOS;
    memcpy(framed + 1, p.ids + q->tgt, (size_t)n * sizeof *framed);
    framed[n + 1] = QKV_EOS;
    framed[n + 2] = p.ids[q->tgt];
    framed[n + 3] = QKV_PAD;
    qkv_detokenize(&v, QKV_TOK_SPM, framed, n + 4, out, sizeof out);
    CHECK(strcmp(out, c.tgt[q->index]) == 0, "framed: '%s' vs '%s'", out,
          c.tgt[q->index]);
    /* a small buffer: truncated, NUL-terminated, the full length returned */
    char small[6];
    size_t need = qkv_detokenize(&v, QKV_TOK_SPM, p.ids + q->tgt, q->tgt_len,
                                 small, sizeof small);
    CHECK(need == strlen(c.tgt[q->index]) &&
              strncmp(small, c.tgt[q->index], 5) == 0 && small[5] == 0,
          "truncated: %zu '%s'", need, small);
    qkv_pairs_free(&p);
    qkv_corpus_free(&c);
    qkv_vocab_free(&v);
}

static void expect_error(int rc, const char *err, const char *want) {
    CHECK(rc == -1, "accepted (want '%s')", want);
    CHECK(strstr(err, want) && !strchr(err, '\n'), "message '%s', want '%s'",
          err, want);
}

/* Bytes that are not a model, a file that is not one, a vocabulary the
 * text cannot fill or that cannot hold its characters, an unknown type. */
static void test_bad_models_refused(void) {
    char err[400];
    qkv_vocab v;
    const char junk[] = "hello, this is not a model";
    expect_error(
        qkv_vocab_from_spm(&v, junk, sizeof junk, "junk", err, sizeof err), err,
        "junk: not a SentencePiece model");
    expect_error(qkv_vocab_from_spm(&v, junk, 0, "empty", err, sizeof err), err,
                 "empty: not a SentencePiece model");
    expect_error(qkv_vocab_load_spm(&v, "data/corpora/grammar/valid.tsv", err,
                                    sizeof err),
                 err, "data/corpora/grammar/valid.tsv: not a SentencePiece");
    expect_error(
        qkv_vocab_load_spm(&v, "/nonexistent/x.model", err, sizeof err), err,
        "/nonexistent/x.model");
    expect_error(qkv_vocab_train_spm(&v, &grammar, QKV_SIDE_BOTH, "unigram",
                                     5000, err, sizeof err),
                 err, "Vocabulary size too high (5000)");
    expect_error(qkv_vocab_train_spm(&v, &grammar, QKV_SIDE_BOTH, "bpe", 10,
                                     err, sizeof err),
                 err, "10 pieces cannot hold the 31 characters");
    expect_error(qkv_vocab_train_spm(&v, &grammar, QKV_SIDE_BOTH, "word", 100,
                                     err, sizeof err),
                 err, "want unigram or bpe");
    /* a model with SentencePiece's default ids (unk 0, bos 1, eos 2, no pad)
     * made by spm_train, when it is on the machine */
    char dir[64], cmd[600], out[4096];
    if (test_shell("command -v spm_train", out, sizeof out) != 0)
        SKIP("spm_train is not installed (apt-get install sentencepiece)");
    test_tmpdir(dir, sizeof dir, "spm");
    snprintf(cmd, sizeof cmd,
             "spm_train --input=data/corpora/grammar/valid.tsv "
             "--model_prefix=%s/m --vocab_size=100 --minloglevel=3",
             dir);
    CHECK(test_shell(cmd, out, sizeof out) == 0, "spm_train: %s", out);
    snprintf(cmd, sizeof cmd, "%s/m.model", dir);
    expect_error(qkv_vocab_load_spm(&v, cmd, err, sizeof err), err,
                 "the SentencePiece model has pad -1 bos 1 eos 2 unk 0, qkv "
                 "needs 0 1 2 3");
    CHECK(test_rmtree(dir) == 0, "cannot remove %s", dir);
}

/* The figure after key in text ("BLEU 12.3"), or -1. */
static double figure(const char *text, const char *key) {
    const char *p = strstr(text, key);
    return p ? atof(p + strlen(key)) : -1;
}

/* A model whose piece holds a NUL byte (found by fuzz_spm): the vocabulary
 * would keep the piece's bytes up to the NUL, the model's decoding all of
 * them. Made from a trained model by setting the last byte of a piece of
 * two or more bytes (its serialized form: tag 0x0a, length, bytes) to 0. */
static void test_nul_in_a_piece_refused(void) {
    char err[400], want[120];
    qkv_vocab v, w;
    CHECK(qkv_vocab_train_spm(&v, &grammar, QKV_SIDE_BOTH, "unigram", 60, err,
                              sizeof err) == 0,
          "%s", err);
    size_t len;
    const uint8_t *bytes = qkv_spm_bytes(v.spm, &len);
    uint8_t *patched = malloc(len);
    memcpy(patched, bytes, len);
    int k = 5, hit = -1;
    for (; k < v.size && hit < 0; k++) {
        const char *t = qkv_spm_piece(v.spm, k);
        size_t n = strlen(t);
        for (size_t i = 0; n >= 2 && n < 128 && i + 2 + n <= len; i++)
            if (patched[i] == 0x0a && patched[i + 1] == n &&
                memcmp(patched + i + 2, t, n) == 0) {
                patched[i + 1 + n] = 0;
                hit = k;
                break;
            }
    }
    CHECK(hit >= 0, "no piece of two bytes or more found in the model");
    snprintf(want, sizeof want, "patched: SentencePiece piece %d holds a NUL",
             hit);
    expect_error(
        qkv_vocab_from_spm(&w, patched, len, "patched", err, sizeof err), err,
        want);
    /* the unpatched bytes still load */
    CHECK(qkv_vocab_from_spm(&w, bytes, len, "model", err, sizeof err) == 0,
          "%s", err);
    qkv_vocab_free(&w);
    free(patched);
    qkv_vocab_free(&v);
}

/* qkv train --tok spm; eval and decode from a copy of the checkpoint
 * alone print detokenized text; the run's spm.model is the model;
 * --resume continues; spm flags without --tok spm are refused. */
static void test_cli_train_eval_decode(void) {
    char dir[64], cmd[2400], out[16384];
    test_tmpdir(dir, sizeof dir, "spm-cli");
    const char *g = "data/corpora/grammar";
    snprintf(cmd, sizeof cmd, "head -n %d %s/train.tsv > %s/train.tsv", N_PAIRS,
             g, dir);
    CHECK(test_shell(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
    /* 20 steps, then --resume to 40, against 40 straight (a constant rate:
     * the schedule does not depend on --steps) */
    const char *flags =
        "--tok spm --spm-vocab 120 --spm-type bpe --eval-every 20 "
        "--eval-size 100 --d-model 32 --d-ff 64 --h 2 --N 1 --schedule const "
        "--warmup 0 --dropout 0.1 --quiet";
    snprintf(cmd, sizeof cmd,
             "train --data %s/train.tsv --valid %s/valid.tsv %s --steps 40 "
             "--out %s/straight",
             dir, g, flags, dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0, "train: %s", out);
    snprintf(cmd, sizeof cmd,
             "train --data %s/train.tsv --valid %s/valid.tsv %s --steps 20 "
             "--out %s/run",
             dir, g, flags, dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0, "train: %s", out);
    snprintf(cmd, sizeof cmd,
             "mkdir %s/only && cp %s/run/ckpt.safetensors %s/only/", dir, dir,
             dir);
    CHECK(test_shell(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
    snprintf(cmd, sizeof cmd,
             "eval --ckpt %s/only/ckpt.safetensors --data %s/valid.tsv "
             "--show 3",
             dir, g);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0, "eval: %s", out);
    CHECK(strstr(out, "out: ") && !strstr(out, "\xE2\x96\x81") &&
              !strstr(out, "<eos>") && figure(out, "BLEU ") >= 0,
          "eval output: %s", out);
    snprintf(cmd, sizeof cmd,
             "decode --ckpt %s/only/ckpt.safetensors 'we see a dog .'", dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0, "decode: %s", out);
    CHECK(test_one_line(out) && !strstr(out, "\xE2\x96\x81") && out[0] != ' ',
          "decode output is not one line of text: '%s'", out);
    /* DIR/spm.model: the model, usable by itself */
    char path[200], err[300];
    qkv_vocab v;
    snprintf(path, sizeof path, "%s/run/spm.model", dir);
    CHECK(qkv_vocab_load_spm(&v, path, err, sizeof err) == 0 && v.size == 120,
          "%s: %s", path, err);
    qkv_vocab_free(&v);
    snprintf(cmd, sizeof cmd, "train --resume %s/run --steps 40", dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0, "resume: %s", out);
    snprintf(cmd, sizeof cmd,
             "bash -c 'cmp -s <(cut -d, -f1,2,4- %s/straight/log.csv) "
             "<(cut -d, -f1,2,4- %s/run/log.csv)'",
             dir, dir);
    CHECK(test_shell(cmd, out, sizeof out) == 0,
          "the resumed log differs from the straight run's");
    snprintf(cmd, sizeof cmd, "train --data %s/train.tsv --spm-vocab 100", dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 2 && test_one_line(out) &&
              strstr(out, "--spm-vocab needs --tok spm"),
          "spm flag without --tok spm: %s", out);
    snprintf(cmd, sizeof cmd,
             "train --data %s/train.tsv --tok spm --spm-model %s/valid.tsv "
             "--out %s/bad",
             dir, g, dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 2 && test_one_line(out) &&
              strstr(out, "--spm-model: data/corpora/grammar/valid.tsv: not "
                          "a SentencePiece model"),
          "a TSV as --spm-model: %s", out);
    CHECK(test_rmtree(dir) == 0, "cannot remove %s", dir);
}

/* Misuse: QKV_TOK_SPM with a word vocabulary (no model), and asking
 * qkv_token_next for SentencePiece tokens, which are not substrings. */
static void spm_without_model(void) {
    qkv_vocab v;
    qkv_vocab_build(&v, &grammar, QKV_SIDE_SRC, QKV_TOK_WORD, 1);
    qkv_encode(&v, QKV_TOK_SPM, "we see", NULL, 0);
}
static void spm_token_next(void) {
    size_t pos = 0, start, len;
    qkv_token_next(QKV_TOK_SPM, "we see", &pos, &start, &len);
}
static void spm_vocab_build(void) {
    qkv_vocab v;
    qkv_vocab_build(&v, &grammar, QKV_SIDE_SRC, QKV_TOK_SPM, 1);
}
static const test_misuse misuse[] = {
    {"spm_without_model", spm_without_model, {"no SentencePiece model"}},
    {"spm_token_next", spm_token_next, {"not substrings"}},
    {"spm_vocab_build", spm_vocab_build, {"qkv_vocab_train_spm"}},
};
#define N_MISUSE ((int)(sizeof misuse / sizeof *misuse))

/* A language model of a text with SentencePiece tokens: the newline is a
 * piece of its own (lines survive), qkv_text_vocab_spm trains on the lines,
 * and qkv generate prints pieces with their spaces. */
static void test_text_language_model(void) {
    const char *text = "the dog sees the cat .\nthe cat sees a dog .\n\n"
                       "a cat and a dog .\n";
    qkv_vocab v;
    char err[300];
    CHECK(qkv_text_vocab_spm(&v, text, strlen(text), "bpe", 30, err,
                             sizeof err) == 0,
          "%s", err);
    qkv_text_ids x;
    qkv_text_encode(&x, &v, QKV_TOK_SPM, text, strlen(text));
    char back[200];
    qkv_detokenize(&v, QKV_TOK_SPM, x.ids, (int)x.n, back, sizeof back);
    CHECK(strcmp(back, text) == 0 && x.n_unk == 0, "round trip: [%s]", back);
    int32_t nl = qkv_vocab_find(&v, "\n", 1);
    CHECK(nl > QKV_UNK, "no newline piece");
    qkv_text_ids_free(&x);
    qkv_vocab_free(&v);
    char dir[64], cmd[1600], out[16384];
    test_tmpdir(dir, sizeof dir, "spm-text");
    snprintf(
        cmd, sizeof cmd,
        "train --model decoder --text data/text/gnu-licenses.txt --tok spm "
        "--spm-vocab 300 --block 32 --N 1 --d-model 32 --d-ff 64 --steps "
        "30 --eval-every 30 --eval-size 8 --quiet --out %s/lm",
        dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0, "train: %s", out);
    snprintf(cmd, sizeof cmd,
             "generate --ckpt %s/lm/ckpt.safetensors --prompt 'This License' "
             "--max-tokens 80 --seed 3",
             dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0 &&
              strncmp(out, "This License", 12) == 0 && strchr(out + 12, ' ') &&
              !strstr(out, "\xE2\x96\x81"),
          "generate: %s", out);
    snprintf(
        cmd, sizeof cmd,
        "eval --ckpt %s/lm/ckpt.safetensors --text data/text/gnu-licenses.txt",
        dir);
    CHECK(test_qkv(qkv, cmd, out, sizeof out) == 0 && strstr(out, "perplexity"),
          "eval --text: %s", out);
    test_rmtree(dir);
}

static void test_misuse_is_one_line(void) {
    test_misuse_all(misuse, N_MISUSE);
}

int main(int argc, char **argv) {
    test_prog = "spm";
    test_qkv_path(qkv, sizeof qkv);
    if (load("grammar", &all_grammar) || load("dates", &all_dates)) return 1;
    grammar = all_grammar, dates = all_dates;
    grammar.n = dates.n = N_PAIRS;
    if (test_die(argc, argv, misuse, N_MISUSE)) return 0;
    RUN(test_training_is_deterministic);
    RUN(test_special_ids);
    RUN(test_round_trip);
    RUN(test_pairs_and_detokenize);
    RUN(test_bad_models_refused);
    RUN(test_nul_in_a_piece_refused);
    RUN(test_cli_train_eval_decode);
    RUN(test_text_language_model);
    RUN(test_misuse_is_one_line);
    qkv_corpus_free(&all_grammar);
    qkv_corpus_free(&all_dates);
    return test_summary();
}
