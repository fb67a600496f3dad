/* Parallel corpora: strict UTF-8, tokenizers, vocabularies, the TSV loader's
 * errors (each with a temporary file), length filtering, token-budget batches
 * and the shipped corpora (run from the repository root, as `make test`
 * does). */
#include <sys/stat.h>

#include "corpus.h"
#include "io.h"
#include "model.h"
#include "test.h"

#include <unistd.h>

static char tmpdir[64];

/* Writes n bytes to tmpdir/name and returns the path (static buffer). */
static const char *write_file(const char *name, const char *bytes, size_t n) {
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        CHECK(0, "cannot write %s", path);
        return path;
    }
    fwrite(bytes, 1, n, f);
    fclose(f);
    return path;
}

static int load_str(const char *text, qkv_corpus *c) {
    char err[256];
    int rc = qkv_corpus_load(write_file("t.tsv", text, strlen(text)), c, err,
                             sizeof err);
    CHECK(rc == 0, "load failed: %s", err);
    return rc;
}

/* ------------------------------------------------------------------ UTF-8 */

static void test_utf8_valid(void) {
    const char *good[] = {
        "",
        "plain ascii\t~",
        "\xC2\x80", /* U+0080, smallest 2-byte */
        "\xC3\xA9",
        "\xDF\xBF",         /* U+07FF */
        "\xE0\xA0\x80",     /* U+0800, smallest 3-byte */
        "\xE2\x82\xAC",     /* euro */
        "\xED\x9F\xBF",     /* U+D7FF, just below the surrogates */
        "\xEE\x80\x80",     /* U+E000, just above them */
        "\xEF\xBF\xBF",     /* U+FFFF */
        "\xF0\x90\x80\x80", /* U+10000, smallest 4-byte */
        "\xF0\x9D\x84\x9E", /* musical G clef */
        "\xF4\x8F\xBF\xBF", /* U+10FFFF, the largest */
        "gr\u00f6\u00dfe \u20ac\U0001F600"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        size_t n = strlen(good[i]);
        CHECK(qkv_utf8_check(good[i], n) == n, "good sequence %zu rejected", i);
    }
    CHECK(qkv_utf8_check("a\0b", 3) == 3, "U+0000 is valid UTF-8");
}

static void test_utf8_invalid(void) {
    /* each bad class after "ab", so the bad offset is 2 */
    const char *bad[] = {
        "ab\x80",             /* stray continuation byte */
        "ab\xBF x",           /* another */
        "ab\xC0\x80",         /* overlong NUL */
        "ab\xC1\xBF",         /* overlong 2-byte */
        "ab\xE0\x80\x80",     /* overlong 3-byte */
        "ab\xE0\x9F\xBF",     /* overlong U+07FF */
        "ab\xF0\x80\x80\x80", /* overlong 4-byte */
        "ab\xF0\x8F\xBF\xBF", /* overlong U+FFFF */
        "ab\xED\xA0\x80",     /* surrogate U+D800 */
        "ab\xED\xBF\xBF",     /* surrogate U+DFFF */
        "ab\xF4\x90\x80\x80", /* U+110000 */
        "ab\xF5\x80\x80\x80", /* lead byte F5 */
        "ab\xFF",             /* FF */
        "ab\xFE",             /* FE */
        "ab\xC3",             /* truncated at the end */
        "ab\xE2\x82",         /* truncated 3-byte */
        "ab\xF0\x9D\x84",     /* truncated 4-byte */
        "ab\xE2\x82\x41",     /* non-continuation inside */
        "ab\xC3\xC3\xA9",     /* a lead byte where a continuation belongs */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = strlen(bad[i]), at = qkv_utf8_check(bad[i], n);
        CHECK(at == 2, "bad sequence %zu: reported at %zu, want 2", i, at);
    }
    /* the check stops at n: a valid prefix of an invalid buffer is valid */
    CHECK(qkv_utf8_check("ab\xE2\x82\xAC", 2) == 2, "prefix");
    CHECK(qkv_utf8_check("ab\xE2\x82\xAC", 4) == 2, "cut inside a sequence");
}

/* -------------------------------------------------------------- tokenizers */

/* The tokens of s, "|"-joined, into out. */
static void split(qkv_tok tok, const char *s, char *out, size_t cap) {
    size_t pos = 0, start, len, o = 0;
    out[0] = '\0';
    while (qkv_token_next(tok, s, &pos, &start, &len)) {
        if (o + len + 2 >= cap) break;
        if (o) out[o++] = '|';
        memcpy(out + o, s + start, len);
        o += len;
        out[o] = '\0';
    }
}

static void test_word_tokens(void) {
    char out[256];
    split(QKV_TOK_WORD, "  the\tdog \r\n sees\v\fa cat.  ", out, sizeof out);
    CHECK(strcmp(out, "the|dog|sees|a|cat.") == 0, "words: %s", out);
    split(QKV_TOK_WORD, "gr\u00f6\u00dfe \u00fcber", out, sizeof out);
    CHECK(strcmp(out, "gr\u00f6\u00dfe|\u00fcber") == 0, "multi-byte words: %s",
          out);
    split(QKV_TOK_WORD, " \t ", out, sizeof out);
    CHECK(out[0] == '\0', "only spaces: no tokens, got %s", out);
    /* non-ASCII spaces (U+00A0) are not separators */
    split(QKV_TOK_WORD, "a\u00a0b", out, sizeof out);
    CHECK(strcmp(out, "a\u00a0b") == 0, "nbsp: %s", out);
}

static void test_char_tokens(void) {
    const char *s = "\xC3\xBC\xE2\x82\xAC\xF0\x9D\x84\x9E a";
    size_t pos = 0, start, len, want[] = {2, 3, 4, 1, 1};
    int n = 0;
    while (qkv_token_next(QKV_TOK_CHAR, s, &pos, &start, &len)) {
        CHECK(n < 5 && len == want[n], "char %d has %zu bytes", n, len);
        n++;
    }
    CHECK(n == 5, "%d code points, want 5", n);
    /* unchecked input: bad bytes are single tokens, and a truncated
     * sequence at the end does not read past the NUL */
    pos = 0, n = 0;
    while (
        qkv_token_next(QKV_TOK_CHAR, "\xFF\x61\xE2\x82", &pos, &start, &len)) {
        CHECK(len == 1, "bad byte token of %zu bytes", len);
        n++;
    }
    CHECK(n == 4, "%d tokens from 4 bytes", n);
}

static void test_round_trips(void) {
    qkv_corpus c;
    const char *text = "der  gro\u00dfe Hund\t\u20ac 5 \U0001F600\n"
                       "\u00fcber alles\tx  y\n";
    if (load_str(text, &c)) return;
    qkv_vocab wv, cv;
    qkv_vocab_build(&wv, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    qkv_vocab_build(&cv, &c, QKV_SIDE_BOTH, QKV_TOK_CHAR, 1);
    int32_t ids[64];
    char out[128];
    for (int i = 0; i < c.n; i++)
        for (int side = 0; side < 2; side++) {
            const char *s = side ? c.tgt[i] : c.src[i];
            int n = qkv_encode(&cv, QKV_TOK_CHAR, s, ids, 64);
            qkv_detokenize(&cv, QKV_TOK_CHAR, ids, n, out, sizeof out);
            CHECK(strcmp(out, s) == 0, "char round trip: '%s' -> '%s'", s, out);
        }
    int n = qkv_encode(&wv, QKV_TOK_WORD, c.src[0], ids, 64);
    CHECK(n == 3, "%d words", n);
    size_t need = qkv_detokenize(&wv, QKV_TOK_WORD, ids, n, out, sizeof out);
    CHECK(strcmp(out, "der gro\u00dfe Hund") == 0, "words rejoined: %s", out);
    CHECK(need == strlen(out), "returned length %zu", need);
    /* pad and bos skipped, stop at eos, truncation reports the full length */
    int32_t framed[8] = {QKV_BOS, ids[0], ids[1],  ids[2],
                         QKV_EOS, ids[0], QKV_PAD, QKV_PAD};
    qkv_detokenize(&wv, QKV_TOK_WORD, framed, 8, out, sizeof out);
    CHECK(strcmp(out, "der gro\u00dfe Hund") == 0, "framed: %s", out);
    char small[5];
    need = qkv_detokenize(&wv, QKV_TOK_WORD, ids, n, small, sizeof small);
    CHECK(need == strlen("der gro\u00dfe Hund") && strcmp(small, "der ") == 0,
          "truncated: %zu '%s'", need, small);
    /* unseen tokens are <unk>, and print as such */
    n = qkv_encode(&wv, QKV_TOK_WORD, "der Katze", ids, 64);
    CHECK(n == 2 && ids[1] == QKV_UNK, "unseen word -> id %d", ids[1]);
    qkv_detokenize(&wv, QKV_TOK_WORD, ids, n, out, sizeof out);
    CHECK(strcmp(out, "der <unk>") == 0, "%s", out);
    /* encode reports the full count when ids is too small */
    CHECK(qkv_encode(&cv, QKV_TOK_CHAR, "abcdef", ids, 2) == 6, "count");
    qkv_vocab_free(&wv);
    qkv_vocab_free(&cv);
    qkv_corpus_free(&c);
}

/* ------------------------------------------------------------ vocabulary */

static void test_vocab_order(void) {
    qkv_corpus c;
    if (load_str("c b a c\tq\ny c b x\tq q\n", &c)) return;
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_SRC, QKV_TOK_WORD, 1);
    /* counts: c 3, b 2, a 1, x 1, y 1 -> c b a x y */
    const char *want[] = {"<pad>", "<bos>", "<eos>", "<unk>", "c",
                          "b",     "a",     "x",     "y"};
    CHECK(v.size == 9, "size %d", v.size);
    for (int i = 0; i < v.size && i < 9; i++) {
        CHECK(strcmp(v.tokens[i], want[i]) == 0, "id %d is %s, want %s", i,
              v.tokens[i], want[i]);
        CHECK(qkv_vocab_find(&v, want[i], strlen(want[i])) == i, "find %s",
              want[i]);
    }
    CHECK(qkv_vocab_find(&v, "q", 1) == QKV_UNK, "target word in src vocab");
    CHECK(qkv_vocab_find(&v, "cc", 2) == QKV_UNK, "unseen");
    CHECK(qkv_vocab_find(&v, "c b", 1) == 4, "find by length");
    qkv_vocab_free(&v);

    qkv_vocab_build(&v, &c, QKV_SIDE_SRC, QKV_TOK_WORD, 2);
    CHECK(v.size == 6 && strcmp(v.tokens[5], "b") == 0,
          "min_freq 2 keeps c b: size %d", v.size);
    CHECK(qkv_vocab_find(&v, "a", 1) == QKV_UNK, "rare word is <unk>");
    qkv_vocab_free(&v);

    qkv_vocab_build(&v, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    CHECK(v.size == 10 && strcmp(v.tokens[4], "c") == 0 &&
              strcmp(v.tokens[5], "q") == 0,
          "shared vocab: c 3, q 3 (byte order), ...: size %d", v.size);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);

    /* a word spelled like a special is that special, not a new id */
    if (load_str("<unk> <eos> z\tq\n", &c)) return;
    qkv_vocab_build(&v, &c, QKV_SIDE_SRC, QKV_TOK_WORD, 1);
    CHECK(v.size == 5, "specials not duplicated: size %d", v.size);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
}

static void test_vocab_many_tokens(void) {
    /* enough distinct tokens to grow the hash table several times */
    size_t cap = 300000, o = 0;
    char *text = malloc(cap);
    for (int i = 0; i < 20000; i++)
        o += (size_t)snprintf(text + o, cap - o, "w%d w%d\tt\n", i, i % 7);
    qkv_corpus c;
    if (load_str(text, &c)) {
        free(text);
        return;
    }
    free(text);
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_SRC, QKV_TOK_WORD, 1);
    CHECK(v.size == 4 + 20000, "size %d", v.size);
    /* w0 (2859 times) then w1..w6 (2858 times, in byte order) come first */
    CHECK(strcmp(v.tokens[4], "w0") == 0 && strcmp(v.tokens[10], "w6") == 0,
          "ids 4..10: %s .. %s", v.tokens[4], v.tokens[10]);
    int bad = 0;
    for (int i = 0; i < v.size; i++)
        bad += qkv_vocab_find(&v, v.tokens[i], strlen(v.tokens[i])) != i;
    CHECK(bad == 0, "%d tokens not found at their id", bad);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
}

static void test_vocab_from_list(void) {
    const char *list[] = {"<pad>",    "<bos>", "<eos>", "<unk>",
                          "\xC3\xBC", "a",     "bb"};
    qkv_vocab v;
    char err[256];
    CHECK(qkv_vocab_from_list(&v, list, 7, err, sizeof err) == 0, "%s", err);
    CHECK(v.size == 7, "size %d", v.size);
    for (int i = 0; i < 7; i++)
        CHECK(qkv_vocab_find(&v, list[i], strlen(list[i])) == i, "find %s",
              list[i]);
    qkv_vocab_free(&v);

    const char *swapped[] = {"<pad>", "<eos>", "<bos>", "<unk>"};
    CHECK(qkv_vocab_from_list(&v, swapped, 4, err, sizeof err) == -1 &&
              strstr(err, "token 1"),
          "swapped specials: %s", err);
    const char *dup[] = {"<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "a"};
    CHECK(qkv_vocab_from_list(&v, dup, 7, err, sizeof err) == -1 &&
              strstr(err, "token 6") && strstr(err, "token 4"),
          "duplicate: %s", err);
    const char *empty[] = {"<pad>", "<bos>", "<eos>", "<unk>", ""};
    CHECK(qkv_vocab_from_list(&v, empty, 5, err, sizeof err) == -1 &&
              strstr(err, "empty"),
          "empty token: %s", err);
    const char *bad[] = {"<pad>", "<bos>", "<eos>", "<unk>", "\xC3"};
    CHECK(qkv_vocab_from_list(&v, bad, 5, err, sizeof err) == -1 &&
              strstr(err, "UTF-8"),
          "bad UTF-8: %s", err);
    CHECK(qkv_vocab_from_list(&v, list, 2, err, sizeof err) == -1, "too short");
    CHECK(v.size == 0 && v.tokens == NULL, "failed list leaves v empty");
}

/* -------------------------------------------------------------- TSV loader */

/* Loading `bytes` must fail with a message holding the file name and want. */
static void expect_load_error(const char *name, const char *bytes, size_t n,
                              const char *want) {
    char err[512] = {0};
    const char *path = write_file(name, bytes, n);
    qkv_corpus c;
    int rc = qkv_corpus_load(path, &c, err, sizeof err);
    CHECK(rc == -1, "%s: loaded, want an error '%s'", name, want);
    CHECK(strstr(err, path) && strstr(err, want),
          "%s: message '%s' lacks the path or '%s'", name, err, want);
    CHECK(!strchr(err, '\n'), "%s: message has more than one line", name);
    CHECK(c.n == 0 && c.src == NULL, "%s: corpus not left empty", name);
}

#define BAD(name, lit, want) expect_load_error(name, lit, sizeof lit - 1, want)

static void test_load_errors(void) {
    char err[512];
    qkv_corpus c;
    char missing[128];
    snprintf(missing, sizeof missing, "%s/no-such.tsv", tmpdir);
    CHECK(qkv_corpus_load(missing, &c, err, sizeof err) == -1 &&
              strstr(err, missing) && strstr(err, "cannot open"),
          "missing file: %s", err);
    CHECK(qkv_corpus_load(tmpdir, &c, err, sizeof err) == -1 &&
              strstr(err, tmpdir),
          "a directory: %s", err);
    BAD("empty.tsv", "", "no sentence pairs");
    BAD("blank.tsv", "\n\r\n\n", "no sentence pairs");
    BAD("notab.tsv", "a\tb\n\nc d\ne\tf\n", "line 3 has no tab");
    BAD("tabs.tsv", "a\tb\nc\td\te\n", "line 2 has 2 tabs");
    BAD("nosrc.tsv", "a\tb\n\tb\n", "line 2 has an empty source");
    BAD("notgt.tsv", "a\tb\r\nc\t\r\n", "line 2 has an empty target");
    BAD("utf8.tsv", "ok\tfine\nabc\tg\xC3\xBC\xED\xA0\x80x\n",
        "line 2 is not valid UTF-8 (byte 8)");
    BAD("overlong.tsv", "\xC0\xAF\tx\n", "line 1 is not valid UTF-8 (byte 1)");
    BAD("nul.tsv", "a\tb\nc\0d\te\n", "line 2 has a NUL byte (byte 2)");
    /* a bad line after many good ones still names its own line number */
    size_t cap = 100000, o = 0;
    char *text = malloc(cap);
    for (int i = 0; i < 999; i++)
        o += (size_t)snprintf(text + o, cap - o, "s%d\tt%d\n", i, i);
    o += (size_t)snprintf(text + o, cap - o, "no tab here\n");
    expect_load_error("late.tsv", text, o, "line 1000 has no tab");
    free(text);
    /* a line over QKV_MAX_LINE bytes is refused, not read into memory */
    size_t big = QKV_MAX_LINE + 10;
    text = malloc(big + 16);
    o = (size_t)snprintf(text, 16, "a\tb\n");
    memset(text + o, 'x', big);
    memcpy(text + o + big, "\ty\n", 3);
    expect_load_error("huge-line.tsv", text, o + big + 3,
                      "line 2 is longer than 1048576 bytes");
    free(text);
    /* a FIFO (no writer: open would block) and a device are refused */
    char fifo[160];
    snprintf(fifo, sizeof fifo, "%s/fifo.tsv", tmpdir);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo %s", fifo);
    CHECK(qkv_corpus_load(fifo, &c, err, sizeof err) == -1 &&
              strstr(err, "FIFO") && strstr(err, fifo),
          "a FIFO: %s", err);
    unlink(fifo);
    CHECK(qkv_corpus_load("/dev/zero", &c, err, sizeof err) == -1 &&
              strstr(err, "/dev/zero: is a character device"),
          "/dev/zero: %s", err);
}

static void test_load_good(void) {
    /* CRLF, a BOM, blank lines, the last line without \n */
    const char text[] = "\xEF\xBB\xBFone\teins\r\n\r\n"
                        "two words\tzwei W\u00f6rter\r\n\n"
                        "three\tdrei";
    const char *path = write_file("good.tsv", text, sizeof text - 1);
    qkv_corpus c;
    char err[256];
    if (qkv_corpus_load(path, &c, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    CHECK(c.n == 3, "%d pairs", c.n);
    CHECK(c.n == 3 && strcmp(c.src[0], "one") == 0 &&
              strcmp(c.tgt[0], "eins") == 0 &&
              strcmp(c.tgt[1], "zwei W\u00f6rter") == 0 &&
              strcmp(c.tgt[2], "drei") == 0,
          "texts (BOM and \\r stripped)");
    CHECK(c.n == 3 && c.line[0] == 1 && c.line[1] == 3 && c.line[2] == 5,
          "line numbers");
    qkv_corpus_free(&c);
    /* the file is untouched */
    FILE *f = fopen(path, "rb");
    char back[sizeof text] = {0};
    size_t got = f ? fread(back, 1, sizeof back, f) : 0;
    if (f) fclose(f);
    CHECK(got == sizeof text - 1 && memcmp(back, text, got) == 0,
          "loading changed the file");

    /* a 200000-byte line is read whole */
    size_t n = 200000;
    char *big = malloc(n + 8);
    memset(big, 'x', n);
    memcpy(big + n, "\ty\n", 4);
    if (load_str(big, &c) == 0) {
        CHECK(c.n == 1 && strlen(c.src[0]) == n, "long line cut to %zu",
              strlen(c.src[0]));
        qkv_corpus_free(&c);
    }
    free(big);
}

/* --------------------------------------------------------------- filtering */

static void test_length_filter(void) {
    qkv_corpus c;
    if (load_str("a\tb\n"       /* 1 1 */
                 "a a a\tb b\n" /* 3 2 */
                 "a a a a\tb\n" /* 4 1: source too long */
                 "a\tb b b\n"   /* 1 3: target too long */
                 "  \tb\n"      /* 0 1: no source words */
                 "a a\tb b\n",  /* 2 2 */
                 &c))
        return;
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    qkv_pairs p;
    qkv_pairs_encode(&p, &c, QKV_TOK_WORD, &v, &v, 3, 2);
    CHECK(p.n == 3 && p.dropped == 3, "kept %d dropped %d, want 3 3", p.n,
          p.dropped);
    CHECK(p.n == 3 && p.pair[0].index == 0 && p.pair[1].index == 1 &&
              p.pair[2].index == 5,
          "kept pairs 0 1 5");
    CHECK(p.longest_src == 3 && p.longest_tgt == 2, "longest %d %d",
          p.longest_src, p.longest_tgt);
    CHECK(p.n_tokens == 2 + 5 + 4 && p.n_unk == 0, "tokens %zu unk %zu",
          p.n_tokens, p.n_unk);
    int32_t a = qkv_vocab_find(&v, "a", 1), b = qkv_vocab_find(&v, "b", 1);
    const qkv_pair *q = &p.pair[1];
    CHECK(q->src_len == 3 && q->tgt_len == 2 && p.ids[q->src] == a &&
              p.ids[q->src + 2] == a && p.ids[q->tgt] == b &&
              p.ids[q->tgt + 1] == b,
          "ids of pair 1");
    qkv_pairs_free(&p);
    qkv_pairs_encode(&p, &c, QKV_TOK_WORD, &v, &v, 0, 0);
    CHECK(p.n == 5 && p.dropped == 1, "no limits: kept %d dropped %d", p.n,
          p.dropped);
    qkv_pairs_free(&p);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
}

/* ----------------------------------------------------------------- batches */

/* n pairs of random lengths 1..20 / 1..25 over a 30-word vocabulary. */
static void random_pairs(qkv_corpus *c, int n) {
    size_t cap = (size_t)n * 250, o = 0;
    char *text = malloc(cap);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 5, 6);
    for (int i = 0; i < n; i++)
        for (int side = 0; side < 2; side++) {
            int len = 1 + (int)qkv_pcg32_bounded(&r, side ? 25 : 20);
            for (int j = 0; j < len; j++)
                o += (size_t)snprintf(text + o, cap - o, "%sw%u", j ? " " : "",
                                      qkv_pcg32_bounded(&r, 30));
            text[o++] = side ? '\n' : '\t';
        }
    text[o] = '\0';
    load_str(text, c);
    free(text);
}

/* Wrong ids or masks in row i of the decoder-only batch v for pair q: the
 * row is the sequence x bos y eos less its last token, scored on y eos. */
static int lm_row_errors(const qkv_pairs *p, const qkv_pair *q,
                         const qkv_batch *v, int i) {
    int32_t seq[128];
    int n = 0;
    if (q->src_len + q->tgt_len + 2 > 128) return 1;
    for (int j = 0; j < q->src_len; j++) seq[n++] = p->ids[q->src + (size_t)j];
    seq[n++] = QKV_BOS;
    for (int j = 0; j < q->tgt_len; j++) seq[n++] = p->ids[q->tgt + (size_t)j];
    seq[n++] = QKV_EOS;
    int bad = 0;
    for (int j = 0; j < v->T; j++) {
        int pad = j >= n - 1;
        int32_t in = pad ? QKV_PAD : seq[j];
        int32_t out = pad || j < q->src_len ? QKV_PAD : seq[j + 1];
        bad += v->tgt_in[i * v->T + j] != in;
        bad += v->tgt_out[i * v->T + j] != out;
        bad += v->tgt_pad[i * v->T + j] != pad;
    }
    return bad;
}

/* Serves one epoch; checks every batch against p (in its layout) and the
 * budget; counts how often each pair is seen and appends the row order to
 * trace. */
static void run_epoch(qkv_batcher *it, qkv_pcg32 *rng, qkv_corpus_batch *b,
                      int *seen, int *trace) {
    const qkv_pairs *p = it->pairs;
    qkv_batcher_epoch(it, rng);
    int rows = 0, batches = 0, bad = 0, last = 0, descents = 0;
    while (qkv_batcher_next(it, b)) {
        const qkv_batch *v = &b->view;
        batches++;
        int cost = v->S > v->T ? v->S : v->T;
        descents += cost < last;
        last = cost;
        CHECK((size_t)v->B * (size_t)(v->S > v->T ? v->S : v->T) <=
                  (size_t)it->max_tokens,
              "batch %d x max(%d, %d) over budget %d", v->B, v->S, v->T,
              it->max_tokens);
        CHECK(!p->decoder_only || (v->S == 0 && !v->src && !v->src_pad),
              "decoder-only batch with a source (S %d)", v->S);
        int S = 0, T = 0;
        for (int i = 0; i < v->B; i++) {
            const qkv_pair *q = &p->pair[b->index[i]];
            seen[b->index[i]]++;
            trace[rows++] = b->index[i];
            if (p->decoder_only) {
                if (q->src_len + 1 + q->tgt_len > T)
                    T = q->src_len + 1 + q->tgt_len;
                bad += lm_row_errors(p, q, v, i);
                continue;
            }
            if (q->src_len > S) S = q->src_len;
            if (q->tgt_len + 1 > T) T = q->tgt_len + 1;
            for (int j = 0; j < v->S; j++) {
                int pad = j >= q->src_len;
                int32_t want = pad ? QKV_PAD : p->ids[q->src + (size_t)j];
                bad += v->src[i * v->S + j] != want;
                bad += v->src_pad[i * v->S + j] != pad;
            }
            for (int j = 0; j < v->T; j++) {
                int pad = j > q->tgt_len;
                const int32_t *y = p->ids + q->tgt;
                int32_t in = pad ? QKV_PAD : j == 0 ? QKV_BOS : y[j - 1];
                int32_t out = pad ? QKV_PAD : j == q->tgt_len ? QKV_EOS : y[j];
                bad += v->tgt_in[i * v->T + j] != in;
                bad += v->tgt_out[i * v->T + j] != out;
                bad += v->tgt_pad[i * v->T + j] != pad;
            }
        }
        CHECK(S == v->S && T == v->T, "batch S %d T %d, longest %d %d", v->S,
              v->T, S, T);
    }
    CHECK(bad == 0, "%d wrong ids or masks", bad);
    CHECK(rows == p->n, "epoch served %d rows of %d pairs", rows, p->n);
    CHECK(batches == it->n_batches, "%d batches, n_batches %d", batches,
          it->n_batches);
    CHECK(!qkv_batcher_next(it, b), "epoch does not end");
    CHECK(descents > 0, "batches of a training epoch in length order");
}

static void test_batches(void) {
    qkv_corpus c;
    random_pairs(&c, 1000);
    if (c.n != 1000) return;
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    qkv_pairs p;
    qkv_pairs_encode(&p, &c, QKV_TOK_WORD, &v, &v, 0, 0);
    int budget = 300;
    qkv_batcher it;
    char err[256];
    if (qkv_batcher_init(&it, &p, budget, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    qkv_corpus_batch b;
    qkv_corpus_batch_init(&b, budget);
    int *seen = calloc((size_t)p.n, sizeof *seen);
    int *t1 = calloc((size_t)p.n, sizeof *t1), *t2 = calloc((size_t)p.n, 4),
        *t3 = calloc((size_t)p.n, 4), *t4 = calloc((size_t)p.n, 4);
    qkv_pcg32 r1, r2;
    qkv_pcg32_seed(&r1, 7, 1);
    run_epoch(&it, &r1, &b, seen, t1);
    run_epoch(&it, &r1, &b, seen, t4); /* a second epoch from the same rng */
    int wrong = 0;
    for (int i = 0; i < p.n; i++) wrong += seen[i] != 2;
    CHECK(wrong == 0, "%d pairs not seen exactly once per epoch", wrong);
    CHECK(memcmp(t1, t4, (size_t)p.n * sizeof *t1) != 0,
          "epochs 1 and 2 in the same order");
    qkv_pcg32_seed(&r2, 7, 1);
    run_epoch(&it, &r2, &b, seen, t2);
    CHECK(memcmp(t1, t2, (size_t)p.n * sizeof *t1) == 0,
          "same seed, different batches");
    qkv_pcg32_seed(&r2, 8, 1);
    run_epoch(&it, &r2, &b, seen, t3);
    CHECK(memcmp(t1, t3, (size_t)p.n * sizeof *t1) != 0,
          "different seed, same order");
    /* rng NULL: shortest batches first; sorting keeps padding low (in the
     * longer of S and T, which sets the cost) */
    qkv_batcher_epoch(&it, NULL);
    size_t real = 0, padded = 0;
    int last = 0, sorted = 1;
    while (qkv_batcher_next(&it, &b)) {
        int cost = b.view.S > b.view.T ? b.view.S : b.view.T;
        sorted &= cost >= last;
        last = cost;
        for (int i = 0; i < b.view.B; i++) {
            const qkv_pair *q = &p.pair[b.index[i]];
            real += (size_t)(q->src_len > q->tgt_len + 1 ? q->src_len
                                                         : q->tgt_len + 1);
        }
        padded += (size_t)b.view.B * (size_t)cost;
    }
    CHECK(sorted, "evaluation batches not shortest first");
    CHECK(real * 20 >= padded * 19, "padding %zu of %zu tokens", padded - real,
          padded);
    free(seen);
    free(t1);
    free(t2);
    free(t3);
    free(t4);

    /* explicit rows, in the given order */
    int rows[3] = {5, 0, 999};
    qkv_pairs_batch(&p, rows, 3, &b);
    CHECK(b.view.B == 3 && b.index[0] == 5 && b.index[2] == 999,
          "explicit rows");
    qkv_corpus_batch_free(&b);
    qkv_batcher_free(&it);

    /* a budget below the longest pair is a user error */
    CHECK(qkv_batcher_init(&it, &p, 10, err, sizeof err) == -1 &&
              strstr(err, "longest pair"),
          "small budget: %s", err);
    /* a budget of exactly the longest pair works (some batches of one) */
    int longest =
        p.longest_src > p.longest_tgt + 1 ? p.longest_src : p.longest_tgt + 1;
    CHECK(qkv_batcher_init(&it, &p, longest, err, sizeof err) == 0, "%s", err);
    qkv_corpus_batch_init(&b, longest);
    int total = 0;
    qkv_batcher_epoch(&it, &r1);
    while (qkv_batcher_next(&it, &b)) total += b.view.B;
    CHECK(total == p.n, "tight budget served %d of %d", total, p.n);
    qkv_corpus_batch_free(&b);
    qkv_batcher_free(&it);
    qkv_pairs_free(&p);

    qkv_pairs_encode(&p, &c, QKV_TOK_WORD, &v, &v, 0, 0);
    p.n = 0; /* as if the filter had dropped everything */
    CHECK(qkv_batcher_init(&it, &p, 100, err, sizeof err) == -1 &&
              strstr(err, "no sentence pairs"),
          "no pairs: %s", err);
    qkv_pairs_free(&p);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
}

/* Three pairs of different lengths as one sequence each (word tokens):
 * exact ids and masks, written out token by token. */
static void test_decoder_only_batch(void) {
    qkv_corpus c;
    if (load_str("a b c\tx y\n"   /* 3 2: 6 tokens */
                 "d\tp q r s t\n" /* 1 5: 7 tokens */
                 "b c\tz\n",      /* 2 1: 4 tokens */
                 &c))
        return;
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    qkv_pairs p;
    qkv_pairs_encode(&p, &c, QKV_TOK_WORD, &v, &v, 0, 0);
    CHECK(p.decoder_only == 0, "encode leaves the enc-dec layout");
    p.decoder_only = 1;
    qkv_corpus_batch b;
    qkv_corpus_batch_init(&b, 21);
    int rows[3] = {0, 1, 2};
    qkv_pairs_batch(&p, rows, 3, &b);
    const char *in[3][7] = {
        {"a", "b", "c", "<bos>", "x", "y", "<pad>"},
        {"d", "<bos>", "p", "q", "r", "s", "t"},
        {"b", "c", "<bos>", "z", "<pad>", "<pad>", "<pad>"}};
    const char *out[3][7] = {
        {"<pad>", "<pad>", "<pad>", "x", "y", "<eos>", "<pad>"},
        {"<pad>", "p", "q", "r", "s", "t", "<eos>"},
        {"<pad>", "<pad>", "z", "<eos>", "<pad>", "<pad>", "<pad>"}};
    const int len[3] = {6, 7, 4};
    const qkv_batch *w = &b.view;
    CHECK(w->B == 3 && w->S == 0 && w->T == 7, "B %d S %d T %d, want 3 0 7",
          w->B, w->S, w->T);
    CHECK(!w->src && !w->src_pad, "decoder-only batch has a source");
    if (w->B != 3 || w->T != 7) goto done;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 7; j++) {
            int32_t wi = qkv_vocab_find(&v, in[i][j], strlen(in[i][j]));
            int32_t wo = qkv_vocab_find(&v, out[i][j], strlen(out[i][j]));
            CHECK(w->tgt_in[i * 7 + j] == wi, "tgt_in[%d][%d] %d, want %s", i,
                  j, (int)w->tgt_in[i * 7 + j], in[i][j]);
            CHECK(w->tgt_out[i * 7 + j] == wo, "tgt_out[%d][%d] %d, want %s", i,
                  j, (int)w->tgt_out[i * 7 + j], out[i][j]);
            CHECK(w->tgt_pad[i * 7 + j] == (j >= len[i]), "tgt_pad[%d][%d] %d",
                  i, j, w->tgt_pad[i * 7 + j]);
        }
    /* T follows the longest row of the batch: without pair 1 it is 6 */
    int two[2] = {2, 0};
    qkv_pairs_batch(&p, two, 2, &b);
    CHECK(w->B == 2 && w->T == 6 && b.index[0] == 2 &&
              w->tgt_in[0] == qkv_vocab_find(&v, "b", 1) &&
              w->tgt_in[6 + 3] == QKV_BOS && w->tgt_out[6 + 5] == QKV_EOS &&
              w->tgt_pad[4] && !w->tgt_pad[6 + 5],
          "batch of pairs 2 and 0 (T %d)", w->T);

    /* the budget counts s + 1 + t per row: 7 for pair 1, although its
     * enc-dec cost is max(1, 5 + 1) = 6 and longest_src + longest_tgt + 1
     * is 9 */
    qkv_batcher it;
    char err[256] = "";
    CHECK(qkv_batcher_init(&it, &p, 6, err, sizeof err) == -1 &&
              strstr(err, "longest pair") && strstr(err, "(7 tokens)"),
          "budget 6: %s", err);
    CHECK(qkv_batcher_init(&it, &p, 7, err, sizeof err) == 0, "%s", err);
    int served = 0, batches = 0;
    qkv_batcher_epoch(&it, NULL);
    while (qkv_batcher_next(&it, &b)) {
        served += w->B, batches++;
        CHECK(w->B * w->T <= 7 && w->S == 0, "batch %d x %d over 7", w->B,
              w->T);
    }
    CHECK(served == 3 && batches == 3, "served %d rows in %d batches", served,
          batches);
    qkv_batcher_free(&it);
    p.decoder_only = 0; /* the same pairs enc-dec fit in 6 */
    CHECK(qkv_batcher_init(&it, &p, 6, err, sizeof err) == 0, "%s", err);
    qkv_batcher_free(&it);
done:
    qkv_corpus_batch_free(&b);
    qkv_pairs_free(&p);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
}

/* Decoder-only epochs: every pair once per epoch, every batch within the
 * budget and laid out right, evaluation batches shortest first, and the
 * budget check on the costliest pair. */
static void test_batches_decoder_only(void) {
    qkv_corpus c;
    random_pairs(&c, 1000);
    if (c.n != 1000) return;
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    qkv_pairs p;
    qkv_pairs_encode(&p, &c, QKV_TOK_WORD, &v, &v, 0, 0);
    p.decoder_only = 1;
    int budget = 300;
    qkv_batcher it;
    char err[256];
    if (qkv_batcher_init(&it, &p, budget, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    qkv_corpus_batch b;
    qkv_corpus_batch_init(&b, budget);
    int *seen = calloc((size_t)p.n, sizeof *seen);
    int *t1 = calloc((size_t)p.n, sizeof *t1), *t2 = calloc((size_t)p.n, 4);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 7, 1);
    run_epoch(&it, &r, &b, seen, t1);
    run_epoch(&it, &r, &b, seen, t2);
    int wrong = 0;
    for (int i = 0; i < p.n; i++) wrong += seen[i] != 2;
    CHECK(wrong == 0, "%d pairs not seen exactly once per epoch", wrong);
    qkv_batcher_epoch(&it, NULL);
    size_t real = 0, padded = 0;
    int last = 0, sorted = 1;
    while (qkv_batcher_next(&it, &b)) {
        sorted &= b.view.T >= last;
        last = b.view.T;
        for (int i = 0; i < b.view.B; i++) {
            const qkv_pair *q = &p.pair[b.index[i]];
            real += (size_t)(q->src_len + 1 + q->tgt_len);
        }
        padded += (size_t)b.view.B * (size_t)b.view.T;
    }
    CHECK(sorted, "evaluation batches not shortest first");
    CHECK(real * 20 >= padded * 19, "padding %zu of %zu tokens", padded - real,
          padded);
    free(seen);
    free(t1);
    free(t2);
    qkv_corpus_batch_free(&b);
    qkv_batcher_free(&it);

    int longest = 0;
    for (int i = 0; i < p.n; i++)
        if (p.pair[i].src_len + 1 + p.pair[i].tgt_len > longest)
            longest = p.pair[i].src_len + 1 + p.pair[i].tgt_len;
    CHECK(qkv_batcher_init(&it, &p, longest - 1, err, sizeof err) == -1 &&
              strstr(err, "longest pair"),
          "budget %d below the longest pair %d: %s", longest - 1, longest, err);
    CHECK(qkv_batcher_init(&it, &p, longest, err, sizeof err) == 0, "%s", err);
    qkv_corpus_batch_init(&b, longest);
    int total = 0;
    qkv_batcher_epoch(&it, &r);
    while (qkv_batcher_next(&it, &b)) total += b.view.B;
    CHECK(total == p.n, "tight budget served %d of %d", total, p.n);
    qkv_corpus_batch_free(&b);
    qkv_batcher_free(&it);
    qkv_pairs_free(&p);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
}

/* A decoder-only batch is what qkv_model_loss expects: its loss equals the
 * mean cross-entropy, in double, of y eos after x bos y[..j) computed from
 * the logits of each sequence alone, unpadded (so a target over x, a shift
 * by one or padding that leaked into the scored positions would fail). */
static void test_decoder_only_loss(void) {
    qkv_corpus c;
    if (load_str("a b c\tx y\nd\tp q r s t\nb c\tz\n", &c)) return;
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    qkv_pairs p;
    qkv_pairs_encode(&p, &c, QKV_TOK_WORD, &v, &v, 0, 0);
    p.decoder_only = 1;
    qkv_model_config cfg = test_tiny_config(QKV_MODEL_DECODER, v.size);
    qkv_model m;
    test_tiny_model(&m, &cfg, 3);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    g.training = 0;
    qkv_corpus_batch b;
    qkv_corpus_batch_init(&b, 21);
    int rows[3] = {2, 0, 1};
    qkv_pairs_batch(&p, rows, 3, &b);
    float loss = qkv_model_loss(&m, &g, &b.view, 0.0f)->data[0];
    double sum = 0.0;
    int count = 0, V = v.size;
    for (int r = 0; r < 3; r++) {
        const qkv_pair *q = &p.pair[rows[r]];
        int32_t seq[16];
        int n = 0;
        for (int j = 0; j < q->src_len; j++) seq[n++] = p.ids[q->src + j];
        seq[n++] = QKV_BOS;
        for (int j = 0; j < q->tgt_len; j++) seq[n++] = p.ids[q->tgt + j];
        seq[n++] = QKV_EOS;
        qkv_graph_reset(&g);
        const float *lg = qkv_model_decoder_forward(&m, &g, seq, NULL, 1, n - 1,
                                                    NULL, NULL, NULL, NULL)
                              ->data;
        for (int j = q->src_len; j < n - 1; j++) {
            const float *x = lg + (size_t)j * V;
            double mx = x[0], z = 0.0;
            for (int k = 1; k < V; k++) mx = x[k] > mx ? x[k] : mx;
            for (int k = 0; k < V; k++) z += exp((double)x[k] - mx);
            sum += mx + log(z) - x[seq[j + 1]];
            count++;
        }
    }
    CHECK(count == 3 + 6 + 2, "%d scored tokens", count);
    CHECK(isfinite(loss), "loss %g", (double)loss);
    CHECK_NEAR(loss, sum / count, 1e-5, "batch loss vs by hand");
    qkv_corpus_batch_free(&b);
    qkv_graph_free(&g);
    qkv_model_free(&m);
    qkv_pairs_free(&p);
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
}

/* --------------------------------------------------------- shipped corpora */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void check_corpus(const char *name, qkv_tok tok) {
    const char *split_names[3] = {"train", "valid", "test"};
    const int want[3] = {20000, 1000, 1000};
    qkv_corpus c[3];
    char path[128], err[256];
    for (int s = 0; s < 3; s++) {
        snprintf(path, sizeof path, "data/corpora/%s/%s.tsv", name,
                 split_names[s]);
        if (qkv_corpus_load(path, &c[s], err, sizeof err)) {
            CHECK(0, "%s", err);
            for (int k = 0; k < s; k++) qkv_corpus_free(&c[k]);
            return;
        }
        CHECK(c[s].n == want[s], "%s: %d pairs, want %d", path, c[s].n,
              want[s]);
    }
    /* no valid or test source appears in train */
    char **sorted = malloc((size_t)c[0].n * sizeof *sorted);
    memcpy(sorted, c[0].src, (size_t)c[0].n * sizeof *sorted);
    qsort(sorted, (size_t)c[0].n, sizeof *sorted, cmp_str);
    int leaks = 0;
    for (int s = 1; s < 3; s++)
        for (int i = 0; i < c[s].n; i++)
            leaks += bsearch(&c[s].src[i], sorted, (size_t)c[0].n,
                             sizeof *sorted, cmp_str) != NULL;
    CHECK(leaks == 0, "%s: %d valid/test sources are in train", name, leaks);
    free(sorted);
    /* train vocabularies cover nearly all of test, and round trips hold */
    qkv_vocab sv, tv;
    qkv_vocab_build(&sv, &c[0], QKV_SIDE_SRC, tok, 1);
    qkv_vocab_build(&tv, &c[0], QKV_SIDE_TGT, tok, 1);
    qkv_pairs p;
    qkv_pairs_encode(&p, &c[2], tok, &sv, &tv, 0, 0);
    CHECK(p.n == 1000 && p.dropped == 0, "%s test: %d kept", name, p.n);
    CHECK(p.n_unk * 1000 <= p.n_tokens, "%s test: %zu of %zu tokens unknown",
          name, p.n_unk, p.n_tokens);
    char out[512];
    int bad = 0;
    for (int i = 0; i < p.n; i++) {
        const qkv_pair *q = &p.pair[i];
        qkv_detokenize(&tv, tok, p.ids + q->tgt, q->tgt_len, out, sizeof out);
        bad += strcmp(out, c[2].tgt[q->index]) != 0;
    }
    CHECK(bad == 0, "%s: %d test targets do not round-trip", name, bad);
    qkv_pairs_free(&p);
    qkv_vocab_free(&sv);
    qkv_vocab_free(&tv);
    for (int s = 0; s < 3; s++) qkv_corpus_free(&c[s]);
}

static void test_shipped_dates(void) {
    check_corpus("dates", QKV_TOK_CHAR);
}
static void test_shipped_grammar(void) {
    check_corpus("grammar", QKV_TOK_WORD);
}

int main(void) {
    test_prog = "corpus";
    test_tmpdir(tmpdir, sizeof tmpdir, "corpus");
    RUN(test_utf8_valid);
    RUN(test_utf8_invalid);
    RUN(test_word_tokens);
    RUN(test_char_tokens);
    RUN(test_round_trips);
    RUN(test_vocab_order);
    RUN(test_vocab_many_tokens);
    RUN(test_vocab_from_list);
    RUN(test_load_errors);
    RUN(test_load_good);
    RUN(test_length_filter);
    RUN(test_batches);
    RUN(test_decoder_only_batch);
    RUN(test_batches_decoder_only);
    RUN(test_decoder_only_loss);
    RUN(test_shipped_dates);
    RUN(test_shipped_grammar);
    if (test_rmtree(tmpdir)) printf("note: could not remove %s\n", tmpdir);
    return test_summary();
}
