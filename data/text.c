#include "text.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "io.h"

/* ------------------------------------------------------------------ text */

/* The 1-based line of byte i of s. */
static size_t line_of(const char *s, size_t i) {
    size_t line = 1;
    for (size_t k = 0; k < i; k++) line += s[k] == '\n';
    return line;
}

/* 0, or -1 and err if s[0..n) is not text: a NUL byte, invalid UTF-8. */
static int check_text(const char *path, const char *s, size_t n, char *err,
                      size_t errlen) {
    const char *nul = memchr(s, '\0', n);
    size_t bad = qkv_utf8_check(s, nul ? (size_t)(nul - s) : n);
    if (nul && bad == (size_t)(nul - s))
        return qkv_errf(err, errlen,
                        "%s: a NUL byte at byte %zu (line %zu): a binary "
                        "file, not text",
                        path, bad + 1, line_of(s, bad));
    if (bad < n)
        return qkv_errf(err, errlen,
                        "%s: not valid UTF-8 at byte %zu (line %zu): a text "
                        "file must be UTF-8",
                        path, bad + 1, line_of(s, bad));
    return 0;
}

int qkv_text_load(const char *path, qkv_text *t, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    uint64_t size;
    FILE *f = qkv_fopen_file(path, QKV_MAX_TEXT_BYTES, &size, err, errlen);
    if (!f) return -1;
    char mem[32];
    if (size + 1 > qkv_memory_limit()) {
        fclose(f);
        return qkv_errf(err, errlen, "%s: %s does not fit in memory", path,
                        qkv_bytes_str((double)size, mem));
    }
    char *s = qkv_malloc((size_t)size + 1, "text");
    size_t n = fread(s, 1, (size_t)size, f);
    int failed = ferror(f), more = fgetc(f) != EOF;
    fclose(f);
    if (failed || more) { /* a read error, or a file that grew meanwhile */
        free(s);
        return qkv_errf(err, errlen, "%s: cannot read: %s", path,
                        failed ? strerror(errno ? errno : EIO)
                               : "the file changed while being read");
    }
    s[n] = '\0';
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) /* a byte-order mark */
        memmove(s, s + 3, n - 2), n -= 3;
    if (n == 0) {
        free(s);
        return qkv_errf(err, errlen, "%s: empty (no text to learn from)", path);
    }
    if (check_text(path, s, n, err, errlen)) {
        free(s);
        return -1;
    }
    t->s = s;
    t->n = n;
    return 0;
}

void qkv_text_free(qkv_text *t) {
    free(t->s);
    memset(t, 0, sizeof *t);
}

size_t qkv_text_split(const qkv_text *t, double frac) {
    QKV_CHECK(frac > 0 && frac < 1, "text_split: frac %g is not in (0, 1)",
              frac);
    size_t at = (size_t)(frac * (double)t->n);
    if (at > t->n) at = t->n;
    for (size_t i = at; i < t->n; i++) /* the next line's start */
        if (i > 0 && t->s[i - 1] == '\n') return i;
    while (at < t->n && ((unsigned char)t->s[at] & 0xC0) == 0x80) at++;
    return at;
}

/* A NUL-terminated copy of s[0..n): the tokenizers read C strings. */
static char *copy_text(const char *s, size_t n) {
    char *c = qkv_malloc(n + 1, "text");
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

void qkv_text_vocab(qkv_vocab *v, const char *s, size_t n, qkv_tok tok) {
    char *copy = copy_text(s, n), *empty = "";
    int line = 1;
    /* one "pair" whose source is the whole text: qkv_vocab_build counts */
    qkv_corpus c = {1, &copy, &empty, &line};
    qkv_vocab_build(v, &c, QKV_SIDE_SRC, tok, 1);
    free(copy);
}

int qkv_text_vocab_spm(qkv_vocab *v, const char *s, size_t n, const char *type,
                       int size, char *err, size_t errlen) {
    char *copy = copy_text(s, n), *empty = "";
    size_t lines = 1;
    for (size_t i = 0; i < n; i++) lines += copy[i] == '\n';
    /* the lines, newline kept, as the sources of a corpus: cut a copy */
    char **src = qkv_malloc(lines * sizeof *src, "text lines");
    char **tgt = qkv_malloc(lines * sizeof *tgt, "text lines");
    char *buf = qkv_malloc(n + lines + 1, "text lines");
    int *line = qkv_malloc(lines * sizeof *line, "text lines");
    size_t k = 0, at = 0;
    for (size_t i = 0; i < n;) {
        size_t end = i;
        while (end < n && copy[end] != '\n') end++;
        if (end < n) end++; /* the newline */
        memcpy(buf + at, copy + i, end - i);
        buf[at + end - i] = 0;
        src[k] = buf + at, tgt[k] = empty, line[k] = (int)k + 1, k++;
        at += end - i + 1;
        i = end;
    }
    qkv_corpus c = {(int)k, src, tgt, line};
    int rc = qkv_vocab_train_spm(v, &c, QKV_SIDE_SRC, type, size, err, errlen);
    free(line);
    free(buf);
    free(tgt);
    free(src);
    free(copy);
    return rc;
}

void qkv_text_encode(qkv_text_ids *x, const qkv_vocab *v, qkv_tok tok,
                     const char *s, size_t n) {
    QKV_CHECK(n <= QKV_MAX_TEXT_BYTES, "text_encode: %zu bytes, at most %zu", n,
              QKV_MAX_TEXT_BYTES);
    char *copy = copy_text(s, n);
    memset(x, 0, sizeof *x);
    int k = qkv_encode(v, tok, copy, NULL, 0);
    x->ids = qkv_malloc((size_t)k * sizeof *x->ids, "text ids");
    qkv_encode(v, tok, copy, x->ids, k);
    x->n = k;
    for (int i = 0; i < k; i++) x->n_unk += x->ids[i] == QKV_UNK;
    free(copy);
}

void qkv_text_ids_free(qkv_text_ids *x) {
    free(x->ids);
    memset(x, 0, sizeof *x);
}

int64_t qkv_text_windows(const qkv_text_ids *x, int block, int max_windows) {
    int64_t w = x->n > 0 ? (x->n - 1) / block : 0;
    return max_windows > 0 && w > max_windows ? max_windows : w;
}

/* --------------------------------------------------------------- source */

typedef struct text_source {
    qkv_source base;
    const qkv_text_ids *x; /* not owned */
    int B, block;
    qkv_pcg32 rng;             /* training: draws the offsets */
    int64_t served;            /* batches handed out (validation: this pass) */
    int64_t windows;           /* validation: the windows of a pass */
    int32_t *tgt_in, *tgt_out; /* (B, block) each */
    uint8_t *pad;              /* (B, block) zeros */
    qkv_batch view;
} text_source;

/* Row r of the batch: the window at offset o. */
static void put_window(text_source *t, int r, int64_t o) {
    size_t at = (size_t)r * (size_t)t->block;
    memcpy(t->tgt_in + at, t->x->ids + o, (size_t)t->block * sizeof(int32_t));
    memcpy(t->tgt_out + at, t->x->ids + o + 1,
           (size_t)t->block * sizeof(int32_t));
}

static const qkv_batch *text_next(qkv_source *s) {
    text_source *t = (text_source *)s;
    int B = t->B;
    if (s->finite) {
        int64_t first = t->served * t->B;
        if (first >= t->windows) return NULL;
        if (t->windows - first < B) B = (int)(t->windows - first);
        for (int r = 0; r < B; r++) put_window(t, r, (first + r) * t->block);
    } else {
        /* offsets 0 .. n - block - 1: the window's block + 1 tokens fit */
        uint32_t room = (uint32_t)(t->x->n - t->block);
        for (int r = 0; r < B; r++)
            put_window(t, r, qkv_pcg32_bounded(&t->rng, room));
    }
    t->served++;
    t->view.B = B;
    return &t->view;
}

static void text_rewind(qkv_source *s) {
    ((text_source *)s)->served = 0;
}

static void text_get_state(const qkv_source *s, qkv_source_state *st) {
    const text_source *t = (const text_source *)s;
    st->rng = t->rng;
    st->epoch = 0;
    st->batch = t->served;
}

static int text_set_state(qkv_source *s, const qkv_source_state *st, char *err,
                          size_t errlen) {
    text_source *t = (text_source *)s;
    if (st->epoch != 0 || st->batch < 0)
        return qkv_errf(err, errlen,
                        "epoch %lld, batch %lld is no position of a text "
                        "source",
                        (long long)st->epoch, (long long)st->batch);
    t->rng = st->rng;
    t->served = st->batch;
    return 0;
}

static void text_free(qkv_source *s) {
    text_source *t = (text_source *)s;
    free(t->tgt_in);
    free(t->tgt_out);
    free(t->pad);
    free(t);
}

static const qkv_source_ops text_ops = {
    "text", text_next, text_rewind, text_get_state, text_set_state, text_free,
};

qkv_source *qkv_text_source(const qkv_text_ids *x, int B, int block,
                            uint64_t seed, int finite, int max_windows,
                            char *err, size_t errlen) {
    QKV_CHECK(B >= 1 && block >= 1, "text_source: B %d, block %d", B, block);
    if (x->n < (int64_t)block + 1) {
        qkv_errf(err, errlen,
                 "%lld tokens, fewer than a window of --block %d + 1",
                 (long long)x->n, block);
        return NULL;
    }
    QKV_CHECK(x->n - block <= UINT32_MAX, "text_source: %lld tokens",
              (long long)x->n);
    text_source *t = qkv_calloc(1, sizeof *t, "text source");
    t->base.ops = &text_ops;
    t->base.finite = finite;
    t->x = x;
    t->block = block;
    t->windows = qkv_text_windows(x, block, max_windows);
    t->B = finite && t->windows < B ? (int)t->windows : B;
    size_t cells = (size_t)t->B * (size_t)block;
    t->tgt_in = qkv_malloc(cells * sizeof *t->tgt_in, "text batch");
    t->tgt_out = qkv_malloc(cells * sizeof *t->tgt_out, "text batch");
    t->pad = qkv_calloc(cells, 1, "text batch");
    t->view =
        (qkv_batch){t->B, 0, block, NULL, NULL, t->tgt_in, t->tgt_out, t->pad};
    qkv_pcg32_seed(&t->rng, seed, 1);
    t->base.max_B = t->B;
    t->base.max_S = 0;
    t->base.max_T = block;
    return &t->base;
}
