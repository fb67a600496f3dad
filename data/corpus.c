#include "corpus.h"

#include "common.h"

#include "io.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const qkv_special_tokens[QKV_N_SPECIAL] = {"<pad>", "<bos>",
                                                       "<eos>", "<unk>"};

/* -------------------------------------------------------------- tokenizers */

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
}

int qkv_token_next(qkv_tok tok, const char *s, size_t *pos, size_t *start,
                   size_t *len) {
    QKV_CHECK(tok != QKV_TOK_SPM,
              "token_next: SentencePiece tokens are not substrings");
    size_t i = *pos;
    if (tok == QKV_TOK_WORD) {
        while (s[i] && is_space(s[i])) i++;
        if (!s[i]) return *pos = i, 0;
        size_t j = i;
        while (s[j] && !is_space(s[j])) j++;
        *start = i, *len = j - i, *pos = j;
        return 1;
    }
    if (!s[i]) return 0;
    /* avail: bytes before the NUL, at most 4, so a sequence truncated by
     * the end of s is rejected without reading past it */
    size_t avail = 1;
    while (avail < 4 && s[i + avail]) avail++;
    size_t n = qkv_utf8_seq(s + i, avail);
    if (!n) n = 1;
    *start = i, *len = n, *pos = i + n;
    return 1;
}

/* ----------------------------------------------------------------- corpus */

static void corpus_push(qkv_corpus *c, int *cap, char *buf, size_t tab,
                        int line) {
    if (c->n == *cap) {
        *cap = *cap ? 2 * *cap : 1024;
        c->src = qkv_realloc(c->src, (size_t)*cap * sizeof *c->src, "corpus");
        c->tgt = qkv_realloc(c->tgt, (size_t)*cap * sizeof *c->tgt, "corpus");
        c->line =
            qkv_realloc(c->line, (size_t)*cap * sizeof *c->line, "corpus");
    }
    buf[tab] = '\0'; /* one allocation per pair: "source\0target\0" */
    c->src[c->n] = buf;
    c->tgt[c->n] = buf + tab + 1;
    c->line[c->n] = line;
    c->n++;
}

/* Checks one line (\n and \r stripped, len > 0): 0 and the tab's offset in
 * *tab, or -1 and the reason in err. */
static int check_line(const char *path, int lineno, const char *s, size_t len,
                      size_t *tab, char *err, size_t errlen) {
    const char *nul = memchr(s, '\0', len);
    if (nul) {
        snprintf(err, errlen, "%s: line %d has a NUL byte (byte %zu)", path,
                 lineno, (size_t)(nul - s) + 1);
        return -1;
    }
    size_t bad = qkv_utf8_check(s, len);
    if (bad < len) {
        snprintf(err, errlen, "%s: line %d is not valid UTF-8 (byte %zu)", path,
                 lineno, bad + 1);
        return -1;
    }
    size_t tabs = 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\t') {
            if (!tabs) *tab = i;
            tabs++;
        }
    if (tabs != 1) {
        if (tabs == 0)
            snprintf(err, errlen,
                     "%s: line %d has no tab (want source<TAB>target)", path,
                     lineno);
        else
            snprintf(err, errlen,
                     "%s: line %d has %zu tabs (want exactly one, "
                     "source<TAB>target)",
                     path, lineno, tabs);
        return -1;
    }
    if (*tab == 0 || *tab == len - 1) {
        snprintf(err, errlen, "%s: line %d has an empty %s", path, lineno,
                 *tab == 0 ? "source" : "target");
        return -1;
    }
    return 0;
}

int qkv_corpus_load(const char *path, qkv_corpus *c, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    FILE *f = qkv_fopen_file(path, QKV_MAX_TEXT_FILE, NULL, err, errlen);
    if (!f) return -1;
    char *line = NULL;
    size_t linecap = 0;
    int cap = 0, lineno = 0, rc = 0;
    ssize_t got;
    while (errno = 0,
           (got = qkv_getline_max(&line, &linecap, f, QKV_MAX_LINE)) != -1) {
        if (lineno == INT_MAX || c->n == INT_MAX) {
            snprintf(err, errlen, "%s: more than %d lines", path, INT_MAX);
            rc = -1;
            break;
        }
        lineno++;
        if (got == QKV_LINE_TOO_LONG) {
            snprintf(err, errlen,
                     "%s: line %d is longer than %u bytes (not a sentence "
                     "pair)",
                     path, lineno, QKV_MAX_LINE);
            rc = -1;
            break;
        }
        size_t len = (size_t)got;
        char *s = line;
        if (len && s[len - 1] == '\n') len--;
        if (len && s[len - 1] == '\r') len--;
        if (lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
            s += 3, len -= 3; /* byte-order mark some Windows tools write */
        if (!len) continue;
        size_t tab;
        if (check_line(path, lineno, s, len, &tab, err, errlen)) {
            rc = -1;
            break;
        }
        char *buf = qkv_malloc(len + 1, "corpus line");
        memcpy(buf, s, len);
        buf[len] = '\0';
        corpus_push(c, &cap, buf, tab, lineno);
    }
    if (!rc && ferror(f)) {
        snprintf(err, errlen, "%s: cannot read: %s", path,
                 strerror(errno ? errno : EIO));
        rc = -1;
    }
    free(line);
    fclose(f);
    if (!rc && c->n == 0) {
        snprintf(err, errlen,
                 "%s: no sentence pairs (the file is empty or has only "
                 "blank lines)",
                 path);
        rc = -1;
    }
    if (rc) qkv_corpus_free(c);
    return rc;
}

void qkv_corpus_free(qkv_corpus *c) {
    for (int i = 0; i < c->n; i++) free(c->src[i]);
    free(c->src);
    free(c->tgt);
    free(c->line);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------ vocabulary */

/* FNV-1a, 64-bit */
static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* The slot of s[0..len) in v's table: where its id is, or the empty slot
 * where it would go. The table is never full (n_slots > 2 * size). */
static size_t vocab_slot(const qkv_vocab *v, const char *s, size_t len) {
    size_t mask = v->n_slots - 1, i = (size_t)hash_bytes(s, len) & mask;
    for (;;) {
        int32_t id = v->slots[i];
        if (id < 0) return i;
        const char *t = v->tokens[id];
        if (strncmp(t, s, len) == 0 && t[len] == '\0') return i;
        i = (i + 1) & mask; /* linear probing */
    }
}

static void vocab_init(qkv_vocab *v) {
    memset(v, 0, sizeof *v);
    v->n_slots = 64;
    v->slots = qkv_malloc(v->n_slots * sizeof *v->slots, "vocabulary");
    memset(v->slots, 0xff, v->n_slots * sizeof *v->slots); /* all -1 */
}

/* The id of s[0..len), adding it if new. */
static int32_t vocab_add(qkv_vocab *v, const char *s, size_t len) {
    size_t slot = vocab_slot(v, s, len);
    if (v->slots[slot] >= 0) return v->slots[slot];
    QKV_CHECK(v->size < INT32_MAX, "vocabulary: more than %d tokens",
              INT32_MAX);
    if (v->size == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        v->tokens = qkv_realloc(v->tokens, (size_t)v->cap * sizeof *v->tokens,
                                "vocabulary");
    }
    int32_t id = v->size++;
    v->tokens[id] = qkv_malloc(len + 1, "vocabulary token");
    memcpy(v->tokens[id], s, len);
    v->tokens[id][len] = '\0';
    v->slots[slot] = id;
    if ((size_t)v->size * 2 >= v->n_slots) { /* grow and rehash */
        QKV_CHECK(v->n_slots <= SIZE_MAX / 2 / sizeof *v->slots,
                  "vocabulary: hash table overflows");
        free(v->slots);
        v->n_slots *= 2;
        v->slots = qkv_malloc(v->n_slots * sizeof *v->slots, "vocabulary");
        memset(v->slots, 0xff, v->n_slots * sizeof *v->slots);
        for (int32_t i = 0; i < v->size; i++)
            v->slots[vocab_slot(v, v->tokens[i], strlen(v->tokens[i]))] = i;
    }
    return id;
}

int32_t qkv_vocab_find(const qkv_vocab *v, const char *s, size_t len) {
    int32_t id = v->slots[vocab_slot(v, s, len)];
    return id < 0 ? QKV_UNK : id;
}

void qkv_vocab_free(qkv_vocab *v) {
    qkv_spm_free(v->spm);
    for (int i = 0; i < v->size; i++) free(v->tokens[i]);
    free(v->tokens);
    free(v->slots);
    memset(v, 0, sizeof *v);
}

typedef struct token_count {
    const char *token;
    int count;
} token_count;

/* descending count, then byte order */
static int cmp_by_count(const void *a, const void *b) {
    const token_count *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return strcmp(x->token, y->token);
}

void qkv_vocab_build(qkv_vocab *v, const qkv_corpus *c, int sides, qkv_tok tok,
                     int min_freq) {
    QKV_CHECK(sides >= QKV_SIDE_SRC && sides <= QKV_SIDE_BOTH,
              "vocab_build: sides %d is not QKV_SIDE_SRC/TGT/BOTH", sides);
    QKV_CHECK(tok != QKV_TOK_SPM, "vocab_build: SentencePiece vocabularies "
                                  "come from qkv_vocab_train_spm");
    qkv_vocab seen; /* every distinct token, specials first */
    vocab_init(&seen);
    for (int i = 0; i < QKV_N_SPECIAL; i++)
        vocab_add(&seen, qkv_special_tokens[i], strlen(qkv_special_tokens[i]));
    int *count = NULL, count_cap = 0; /* (seen.size) occurrences of each */
    for (int i = 0; i < c->n; i++)
        for (int side = 0; side < 2; side++) {
            if (!(sides & (1 << side))) continue;
            const char *s = side ? c->tgt[i] : c->src[i];
            size_t pos = 0, start, len;
            while (qkv_token_next(tok, s, &pos, &start, &len)) {
                int32_t id = vocab_add(&seen, s + start, len);
                if (id >= count_cap) {
                    int old = count_cap;
                    count_cap = seen.cap;
                    count =
                        qkv_realloc(count, (size_t)count_cap * sizeof *count,
                                    "vocabulary counts");
                    memset(count + old, 0,
                           (size_t)(count_cap - old) * sizeof *count);
                }
                count[id]++;
            }
        }
    token_count *keep =
        qkv_malloc((size_t)seen.size * sizeof *keep, "vocabulary");
    int n_keep = 0;
    for (int id = QKV_N_SPECIAL; id < seen.size; id++)
        if (count[id] >= (min_freq < 1 ? 1 : min_freq))
            keep[n_keep++] = (token_count){seen.tokens[id], count[id]};
    qsort(keep, (size_t)n_keep, sizeof *keep, cmp_by_count);
    vocab_init(v);
    for (int i = 0; i < QKV_N_SPECIAL; i++)
        vocab_add(v, qkv_special_tokens[i], strlen(qkv_special_tokens[i]));
    for (int i = 0; i < n_keep; i++)
        vocab_add(v, keep[i].token, strlen(keep[i].token));
    free(keep);
    free(count);
    qkv_vocab_free(&seen);
}

int qkv_vocab_from_list(qkv_vocab *v, const char *const *tokens, int n,
                        char *err, size_t errlen) {
    vocab_init(v);
    if (n < QKV_N_SPECIAL) {
        snprintf(err, errlen,
                 "vocabulary has %d tokens, fewer than the %d "
                 "specials",
                 n, QKV_N_SPECIAL);
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        size_t len = strlen(tokens[i]);
        if (i < QKV_N_SPECIAL && strcmp(tokens[i], qkv_special_tokens[i])) {
            snprintf(err, errlen, "vocabulary token %d is \"%.40s\", want %s",
                     i, tokens[i], qkv_special_tokens[i]);
            goto fail;
        }
        if (!len || qkv_utf8_check(tokens[i], len) != len) {
            snprintf(err, errlen, "vocabulary token %d is %s", i,
                     len ? "not valid UTF-8" : "empty");
            goto fail;
        }
        if (vocab_add(v, tokens[i], len) != i) {
            snprintf(err, errlen,
                     "vocabulary token %d (\"%.40s\") repeats "
                     "token %d",
                     i, tokens[i], qkv_vocab_find(v, tokens[i], len));
            goto fail;
        }
    }
    return 0;
fail:
    qkv_vocab_free(v);
    return -1;
}

/* v from the pieces of m (which v then owns, freed with it); on error m is
 * freed and v left empty. The specials keep qkv's names (a model given by a
 * user may call them <s> and </s>). */
static int vocab_of_spm(qkv_vocab *v, qkv_spm *m, const char *name, char *err,
                        size_t errlen) {
    vocab_init(v);
    int n = qkv_spm_size(m);
    for (int i = 0; i < n; i++) {
        const char *t =
            i < QKV_N_SPECIAL ? qkv_special_tokens[i] : qkv_spm_piece(m, i);
        size_t len = strlen(t);
        if (!len || qkv_utf8_check(t, len) != len) {
            qkv_errf(err, errlen, "%s: SentencePiece piece %d is %s", name, i,
                     len ? "not valid UTF-8" : "empty");
            goto fail;
        }
        if (vocab_add(v, t, len) != i) {
            qkv_errf(err, errlen,
                     "%s: SentencePiece piece %d (\"%.40s\") repeats token "
                     "%d",
                     name, i, t, qkv_vocab_find(v, t, len));
            goto fail;
        }
    }
    v->spm = m;
    return 0;
fail:
    qkv_spm_free(m);
    qkv_vocab_free(v);
    return -1;
}

int qkv_vocab_train_spm(qkv_vocab *v, const qkv_corpus *c, int sides,
                        const char *type, int size, char *err, size_t errlen) {
    QKV_CHECK(sides >= QKV_SIDE_SRC && sides <= QKV_SIDE_BOTH,
              "vocab_train_spm: sides %d is not QKV_SIDE_SRC/TGT/BOTH", sides);
    memset(v, 0, sizeof *v);
    const char **s =
        qkv_malloc(2 * (size_t)(c->n ? c->n : 1) * sizeof *s, "sentences");
    size_t n = 0;
    for (int i = 0; i < c->n; i++) {
        if (sides & QKV_SIDE_SRC) s[n++] = c->src[i];
        if (sides & QKV_SIDE_TGT) s[n++] = c->tgt[i];
    }
    qkv_spm *m;
    int rc = qkv_spm_train(&m, s, n, type, size, err, errlen);
    free(s);
    return rc ? rc : vocab_of_spm(v, m, "SentencePiece", err, errlen);
}

int qkv_vocab_from_spm(qkv_vocab *v, const void *bytes, size_t len,
                       const char *name, char *err, size_t errlen) {
    memset(v, 0, sizeof *v);
    qkv_spm *m;
    if (qkv_spm_load(&m, bytes, len, name, err, errlen)) return -1;
    return vocab_of_spm(v, m, name, err, errlen);
}

int qkv_vocab_load_spm(qkv_vocab *v, const char *path, char *err,
                       size_t errlen) {
    memset(v, 0, sizeof *v);
    uint64_t size;
    FILE *f = qkv_fopen_file(path, QKV_MAX_SPM_FILE, &size, err, errlen);
    if (!f) return -1;
    char *buf = qkv_malloc(size ? (size_t)size : 1, "SentencePiece model");
    size_t got = fread(buf, 1, (size_t)size, f);
    int rc = got == size && !ferror(f)
                 ? qkv_vocab_from_spm(v, buf, got, path, err, errlen)
                 : qkv_errf(err, errlen, "%s: cannot read: %s", path,
                            strerror(errno ? errno : EIO));
    fclose(f);
    free(buf);
    return rc;
}

int qkv_encode(const qkv_vocab *v, qkv_tok tok, const char *s, int32_t *ids,
               int max) {
    if (tok == QKV_TOK_SPM) {
        QKV_CHECK(v->spm, "encode: QKV_TOK_SPM with a vocabulary that has no "
                          "SentencePiece model");
        return qkv_spm_encode(v->spm, s, ids, max);
    }
    size_t pos = 0, start, len;
    int n = 0;
    while (qkv_token_next(tok, s, &pos, &start, &len)) {
        QKV_CHECK(n < INT_MAX, "encode: more than %d tokens", INT_MAX);
        if (n < max) ids[n] = qkv_vocab_find(v, s + start, len);
        n++;
    }
    return n;
}

size_t qkv_detokenize(const qkv_vocab *v, qkv_tok tok, const int32_t *ids,
                      int n, char *out, size_t cap) {
    QKV_CHECK(cap > 0, "detokenize: no room for the NUL");
    if (tok == QKV_TOK_SPM) {
        QKV_CHECK(v->spm, "detokenize: QKV_TOK_SPM with a vocabulary that has "
                          "no SentencePiece model");
        int k = 0; /* up to the first eos; pad and bos decode to nothing */
        while (k < n && ids[k] != QKV_EOS) {
            QKV_CHECK(ids[k] >= 0 && ids[k] < v->size,
                      "detokenize: id %d outside the vocabulary (size %d)",
                      (int)ids[k], v->size);
            k++;
        }
        return qkv_spm_decode(v->spm, ids, k, out, cap);
    }
    size_t need = 0;
    int words = 0;
    for (int i = 0; i < n && ids[i] != QKV_EOS; i++) {
        QKV_CHECK(ids[i] >= 0 && ids[i] < v->size,
                  "detokenize: id %d outside the vocabulary (size %d)",
                  (int)ids[i], v->size);
        if (ids[i] == QKV_PAD || ids[i] == QKV_BOS) continue;
        const char *t = v->tokens[ids[i]];
        if (tok == QKV_TOK_WORD && words++) {
            if (need + 1 < cap) out[need] = ' ';
            need++;
        }
        for (size_t k = 0; t[k]; k++, need++)
            if (need + 1 < cap) out[need] = t[k];
    }
    out[need < cap ? need : cap - 1] = '\0';
    return need;
}

/* ------------------------------------------------- encoded, filtered pairs */

void qkv_pairs_encode(qkv_pairs *p, const qkv_corpus *c, qkv_tok tok,
                      const qkv_vocab *sv, const qkv_vocab *tv, int max_src,
                      int max_tgt) {
    memset(p, 0, sizeof *p);
    p->pair = qkv_malloc((size_t)(c->n ? c->n : 1) * sizeof *p->pair, "pairs");
    size_t used = 0, cap = 4096;
    p->ids = qkv_malloc(cap * sizeof *p->ids, "pair ids");
    for (int i = 0; i < c->n; i++) {
        int ls = qkv_encode(sv, tok, c->src[i], NULL, 0);
        int lt = qkv_encode(tv, tok, c->tgt[i], NULL, 0);
        if (ls < 1 || lt < 1 || (max_src > 0 && ls > max_src) ||
            (max_tgt > 0 && lt > max_tgt)) {
            p->dropped++;
            continue;
        }
        size_t need = used + (size_t)ls + (size_t)lt;
        QKV_CHECK(need > used, "pairs: token count overflows");
        if (need > cap) {
            while (cap < need) cap *= 2;
            p->ids = qkv_realloc(p->ids, cap * sizeof *p->ids, "pair ids");
        }
        qkv_pair *q = &p->pair[p->n++];
        q->src = used, q->src_len = ls;
        q->tgt = used + (size_t)ls, q->tgt_len = lt;
        q->index = i;
        qkv_encode(sv, tok, c->src[i], p->ids + q->src, ls);
        qkv_encode(tv, tok, c->tgt[i], p->ids + q->tgt, lt);
        for (size_t k = used; k < need; k++) p->n_unk += p->ids[k] == QKV_UNK;
        used = need;
        if (ls > p->longest_src) p->longest_src = ls;
        if (lt > p->longest_tgt) p->longest_tgt = lt;
    }
    p->n_tokens = used;
}

int qkv_pairs_cost(const qkv_pairs *p) {
    int s = p->longest_src, t = p->longest_tgt;
    return p->decoder_only ? s + 1 + t : s > t + 1 ? s : t + 1;
}

void qkv_pairs_free(qkv_pairs *p) {
    free(p->pair);
    free(p->ids);
    memset(p, 0, sizeof *p);
}

/* ----------------------------------------------------------------- batches */

void qkv_corpus_batch_init(qkv_corpus_batch *b, int max_tokens) {
    QKV_CHECK(max_tokens > 0, "corpus batch: max_tokens %d", max_tokens);
    size_t n = (size_t)max_tokens;
    memset(b, 0, sizeof *b);
    b->max_tokens = max_tokens;
    b->src = qkv_calloc(n, sizeof *b->src, "corpus batch");
    b->tgt_in = qkv_calloc(n, sizeof *b->tgt_in, "corpus batch");
    b->tgt_out = qkv_calloc(n, sizeof *b->tgt_out, "corpus batch");
    b->src_pad = qkv_calloc(n, 1, "corpus batch");
    b->tgt_pad = qkv_calloc(n, 1, "corpus batch");
    b->index = qkv_calloc(n, sizeof *b->index, "corpus batch");
}

void qkv_corpus_batch_free(qkv_corpus_batch *b) {
    free(b->src);
    free(b->tgt_in);
    free(b->tgt_out);
    free(b->src_pad);
    free(b->tgt_pad);
    free(b->index);
    memset(b, 0, sizeof *b);
}

/* Tokens a batch of B pairs needs: B * max(S, T) (S = 0 for decoder-only). */
static size_t batch_cost(int B, int S, int T) {
    return (size_t)B * (size_t)(S > T ? S : T);
}

/* The S and T that pair q alone needs in p's layout: enc-dec S = x, T = y + 1
 * (bos y / y eos); decoder-only S = 0, T = x + 1 + y (x bos y / .. y eos). */
static void pair_dims(const qkv_pairs *p, const qkv_pair *q, int *S, int *T) {
    if (!p->decoder_only) {
        *S = q->src_len, *T = q->tgt_len + 1;
        return;
    }
    QKV_CHECK(q->src_len < INT_MAX - q->tgt_len,
              "pairs: a pair of %d + %d tokens is too long", q->src_len,
              q->tgt_len);
    *S = 0, *T = q->src_len + 1 + q->tgt_len;
}

/* Token j of the sequence a row is cut from: x bos y eos in the decoder-only
 * layout (a = |x|), bos y eos in the enc-dec one (a = 0; x is the source). */
static int32_t seq_at(const int32_t *x, int a, const int32_t *y, int t, int j) {
    return j < a        ? x[j]
           : j == a     ? QKV_BOS
           : j <= a + t ? y[j - a - 1]
                        : QKV_EOS;
}

void qkv_pairs_batch(const qkv_pairs *p, const int *idx, int B,
                     qkv_corpus_batch *b) {
    QKV_CHECK(B > 0, "pairs_batch: B = %d", B);
    int S = 0, T = 0;
    for (int i = 0; i < B; i++) {
        QKV_CHECK(idx[i] >= 0 && idx[i] < p->n,
                  "pairs_batch: pair %d of %d pairs", idx[i], p->n);
        int s, t;
        pair_dims(p, &p->pair[idx[i]], &s, &t);
        if (s > S) S = s;
        if (t > T) T = t;
    }
    QKV_CHECK(batch_cost(B, S, T) <= (size_t)b->max_tokens,
              "pairs_batch: %d pairs of (S %d, T %d) need %zu tokens, the "
              "batch has %d",
              B, S, T, batch_cost(B, S, T), b->max_tokens);
    for (int i = 0; i < B; i++) {
        const qkv_pair *q = &p->pair[idx[i]];
        const int32_t *x = p->ids + q->src, *y = p->ids + q->tgt;
        int32_t *src = b->src + (size_t)i * S;
        uint8_t *sp = b->src_pad + (size_t)i * S;
        for (int j = 0; j < S; j++) {
            src[j] = j < q->src_len ? x[j] : QKV_PAD;
            sp[j] = j >= q->src_len;
        }
        /* the row reads seq[0 .. a + t] and predicts seq[1 .. a + t + 1],
         * scored from position a on (pad over x) */
        int a = p->decoder_only ? q->src_len : 0, n = a + q->tgt_len + 1;
        int32_t *in = b->tgt_in + (size_t)i * T,
                *out = b->tgt_out + (size_t)i * T;
        uint8_t *tp = b->tgt_pad + (size_t)i * T;
        for (int j = 0; j < T; j++) {
            in[j] = j < n ? seq_at(x, a, y, q->tgt_len, j) : QKV_PAD;
            out[j] =
                j < n && j >= a ? seq_at(x, a, y, q->tgt_len, j + 1) : QKV_PAD;
            tp[j] = j >= n;
        }
        b->index[i] = idx[i];
    }
    int dec = p->decoder_only;
    qkv_batch v = {B,
                   S,
                   T,
                   dec ? NULL : b->src,
                   dec ? NULL : b->src_pad,
                   b->tgt_in,
                   b->tgt_out,
                   b->tgt_pad};
    b->view = v;
}

int qkv_batcher_init(qkv_batcher *it, const qkv_pairs *p, int max_tokens,
                     char *err, size_t errlen) {
    memset(it, 0, sizeof *it);
    if (p->n < 1) {
        snprintf(err, errlen,
                 "no sentence pairs to batch (all %d dropped by "
                 "the length filter?)",
                 p->dropped);
        return -1;
    }
    size_t longest = 0; /* exact: the costliest single pair */
    for (int i = 0; i < p->n; i++) {
        int s, t;
        pair_dims(p, &p->pair[i], &s, &t);
        if (batch_cost(1, s, t) > longest) longest = batch_cost(1, s, t);
    }
    if ((size_t)max_tokens < longest) {
        snprintf(err, errlen,
                 "a batch of %d tokens cannot hold the longest pair (%zu "
                 "tokens); raise the batch size or lower the length limits",
                 max_tokens, longest);
        return -1;
    }
    size_t n = (size_t)p->n;
    it->pairs = p;
    it->max_tokens = max_tokens;
    it->order = qkv_malloc(n * sizeof *it->order, "batcher");
    it->start = qkv_malloc((n + 1) * sizeof *it->start, "batcher");
    it->visit = qkv_malloc(n * sizeof *it->visit, "batcher");
    qkv_batcher_epoch(it, NULL);
    return 0;
}

/* Sort key of a pair for an epoch; rank (a random permutation, or the pair's
 * index) makes every key distinct, so qsort's result is deterministic. */
typedef struct pair_key {
    int cost, src_len, tgt_len, rank, pair;
} pair_key;

static int cmp_key(const void *a, const void *b) {
    const pair_key *x = a, *y = b;
    if (x->cost != y->cost) return x->cost < y->cost ? -1 : 1;
    if (x->src_len != y->src_len) return x->src_len < y->src_len ? -1 : 1;
    if (x->tgt_len != y->tgt_len) return x->tgt_len < y->tgt_len ? -1 : 1;
    return (x->rank > y->rank) - (x->rank < y->rank);
}

void qkv_batcher_epoch(qkv_batcher *it, qkv_pcg32 *rng) {
    const qkv_pairs *p = it->pairs;
    int n = p->n;
    int *rank = it->order; /* scratch: order is rewritten below */
    for (int i = 0; i < n; i++) rank[i] = i;
    if (rng) qkv_pcg32_shuffle(rng, rank, (size_t)n, sizeof *rank);
    pair_key *k = qkv_malloc((size_t)n * sizeof *k, "batcher");
    for (int i = 0; i < n; i++) {
        const qkv_pair *q = &p->pair[i];
        int s, t;
        pair_dims(p, q, &s, &t);
        pair_key ki = {s > t ? s : t, q->src_len, q->tgt_len, rank[i], i};
        k[i] = ki;
    }
    qsort(k, (size_t)n, sizeof *k, cmp_key);
    /* greedy cut: add pairs while B * max(S, T) stays within the budget */
    int nb = 0, B = 0, S = 0, T = 0;
    for (int i = 0; i < n; i++) {
        int ps, pt;
        pair_dims(p, &p->pair[k[i].pair], &ps, &pt);
        int s = ps > S ? ps : S, t = pt > T ? pt : T;
        if (B && batch_cost(B + 1, s, t) > (size_t)it->max_tokens) {
            it->start[nb++] = i - B;
            B = 0;
            s = ps, t = pt;
        }
        B++, S = s, T = t;
        it->order[i] = k[i].pair;
    }
    it->start[nb++] = n - B;
    it->start[nb] = n;
    free(k);
    it->n_batches = nb;
    for (int i = 0; i < nb; i++) it->visit[i] = i;
    if (rng) qkv_pcg32_shuffle(rng, it->visit, (size_t)nb, sizeof *it->visit);
    it->next = 0;
}

int qkv_batcher_next(qkv_batcher *it, qkv_corpus_batch *b) {
    if (it->next >= it->n_batches) return 0;
    int i = it->visit[it->next++];
    qkv_pairs_batch(it->pairs, it->order + it->start[i],
                    it->start[i + 1] - it->start[i], b);
    return 1;
}

void qkv_batcher_free(qkv_batcher *it) {
    free(it->order);
    free(it->start);
    free(it->visit);
    memset(it, 0, sizeof *it);
}
