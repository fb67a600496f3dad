#include "bleu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Does the n-gram at a equal the one at b? */
static int same(const int32_t *a, const int32_t *b, int n) {
    for (int k = 0; k < n; k++)
        if (a[k] != b[k]) return 0;
    return 1;
}

/* Occurrences of the n-gram g in s (len tokens). */
static int count(const int32_t *s, int len, const int32_t *g, int n) {
    int c = 0;
    for (int i = 0; i + n <= len; i++) c += same(s + i, g, n);
    return c;
}

void qkv_bleu_add(qkv_bleu *b, const int32_t *hyp, int hyp_len,
                  const int32_t *ref, int ref_len) {
    b->hyp_len += hyp_len;
    b->ref_len += ref_len;
    for (int n = 1; n <= 4; n++) {
        if (ref_len >= n) b->ref_total[n - 1] += ref_len - n + 1;
        for (int i = 0; i + n <= hyp_len; i++) {
            b->total[n - 1]++;
            /* Count each distinct n-gram once, at its first occurrence:
             * clipped matches = min(count in hyp, count in ref). Quadratic
             * in the sentence length, which is short here. */
            int first = 1;
            for (int j = 0; j < i && first; j++)
                first = !same(hyp + j, hyp + i, n);
            if (!first) continue;
            int in_hyp = count(hyp, hyp_len, hyp + i, n);
            int in_ref = count(ref, ref_len, hyp + i, n);
            b->match[n - 1] += in_hyp < in_ref ? in_hyp : in_ref;
        }
    }
}

/* N: 4, or the longest order the references have n-grams of. */
static int orders(const qkv_bleu *b) {
    int N = 4;
    while (N > 0 && b->ref_total[N - 1] == 0) N--;
    return N;
}

static double brevity(const qkv_bleu *b) {
    return b->hyp_len > b->ref_len
               ? 1.0
               : exp(1.0 - (double)b->ref_len / (double)b->hyp_len);
}

double qkv_bleu_score(const qkv_bleu *b) {
    int N = orders(b);
    if (b->hyp_len == 0 || N == 0) return 0.0;
    double log_p = 0.0;
    for (int n = 0; n < N; n++) {
        if (b->match[n] == 0 || b->total[n] == 0) return 0.0;
        log_p += log((double)b->match[n] / (double)b->total[n]);
    }
    return brevity(b) * exp(log_p / N);
}

double qkv_bleu_score_smooth(const qkv_bleu *b) {
    int N = orders(b);
    if (b->hyp_len == 0 || N == 0) return 0.0;
    double log_p = 0.0, smooth = 1.0;
    for (int n = 0; n < N; n++) {
        if (b->total[n] == 0) return 0.0;
        if (b->match[n] == 0) { /* 1 / (2^k total), k-th order unmatched */
            smooth *= 2.0;
            log_p -= log(smooth * (double)b->total[n]);
        } else {
            log_p += log((double)b->match[n] / (double)b->total[n]);
        }
    }
    return brevity(b) * exp(log_p / N);
}

/* A growable string, NUL-terminated. */
typedef struct strbuf {
    char *s;
    size_t n, cap;
} strbuf;

static void put(strbuf *t, const char *p, size_t n) {
    if (t->n + n + 1 > t->cap) {
        t->cap = 2 * (t->n + n + 1);
        t->s = qkv_realloc(t->s, t->cap, "BLEU text");
    }
    memcpy(t->s + t->n, p, n);
    t->n += n;
    t->s[t->n] = 0;
}
static void put1(strbuf *t, char c) {
    put(t, &c, 1);
}

/* s with every from replaced by to, left to right (Python's str.replace). */
static strbuf replace_all(const char *s, const char *from, const char *to) {
    strbuf t = {0};
    size_t nf = strlen(from), nt = strlen(to);
    put(&t, "", 0);
    for (const char *hit; (hit = strstr(s, from)); s = hit + nf) {
        put(&t, s, (size_t)(hit - s));
        put(&t, to, nt);
    }
    put(&t, s, strlen(s));
    return t;
}

static int digit(char c) {
    return c >= '0' && c <= '9';
}

/* The punctuation 13a splits off everywhere: the character class
 * [\{-\~\[-\` -\&\(-\+\:-\@\/] of mteval-v13a.pl (the space is in it too,
 * harmlessly). */
static int punct(char c) {
    return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') ||
           (c >= ' ' && c <= '&') || (c >= '(' && c <= '+') ||
           (c >= ':' && c <= '@') || c == '/';
}

/* Bytes of the whitespace character at p (Python's str.split()), or 0. */
static int space_at(const unsigned char *p) {
    if (*p == ' ' || (*p >= '\t' && *p <= '\r') || (*p >= 0x1c && *p <= 0x1f))
        return 1;
    if (p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0)) return 2;
    if (p[0] == 0xe1 && p[1] == 0x9a && p[2] == 0x80) return 3;
    if (p[0] == 0xe2 && p[1] == 0x80 &&
        (p[2] <= 0x8a || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf) &&
        p[2] >= 0x80)
        return 3;
    if (p[0] == 0xe2 && p[1] == 0x81 && p[2] == 0x9f) return 3;
    if (p[0] == 0xe3 && p[1] == 0x80 && p[2] == 0x80) return 3;
    return 0;
}

/* The 13a tokenization of s, words separated by one space (malloc'd). Each
 * regular-expression pass is a left-to-right scan that, like re.sub, resumes
 * after a match: the patterns are two characters long and match only ASCII,
 * so scanning UTF-8 bytes finds the matches Python finds in code points. */
static char *tokenize(const char *s) {
    static const char *const unescape[][2] = {
        {"<skipped>", ""}, {"-\n", ""},   {"\n", " "},  {"&quot;", "\""},
        {"&amp;", "&"},    {"&lt;", "<"}, {"&gt;", ">"}};
    strbuf a = {0}, b;
    put(&a, s, strlen(s));
    for (size_t k = 0; k < sizeof unescape / sizeof unescape[0]; k++) {
        b = replace_all(a.s, unescape[k][0], unescape[k][1]);
        free(a.s);
        a = b;
    }
    for (int pass = 0; pass < 4; pass++) {
        b = (strbuf){0};
        const char *p = a.s;
        if (pass == 0) put1(&b, ' '); /* sacreBLEU pads the line: f' {line} ' */
        while (*p) {
            char c = p[0], d = p[1];
            if (pass == 0 && punct(c)) {
                put(&b, (char[]){' ', c, ' '}, 3), p++;
            } else if (pass == 1 && !digit(c) && (d == '.' || d == ',')) {
                put(&b, (char[]){c, ' ', d, ' '}, 4), p += 2;
            } else if (pass == 2 && (c == '.' || c == ',') && d && !digit(d)) {
                put(&b, (char[]){' ', c, ' ', d}, 4), p += 2;
            } else if (pass == 3 && digit(c) && d == '-') {
                put(&b, (char[]){c, ' ', d, ' '}, 4), p += 2;
            } else {
                put1(&b, c), p++;
            }
        }
        if (pass == 0) put1(&b, ' ');
        free(a.s);
        a = b;
    }
    /* one space between words, none at the ends */
    b = (strbuf){0};
    put(&b, "", 0);
    const unsigned char *p = (const unsigned char *)a.s;
    while (*p) {
        int w = space_at(p);
        if (w) {
            p += w;
            continue;
        }
        if (b.n) put1(&b, ' ');
        while (*p && !space_at(p)) put1(&b, (char)*p++);
    }
    free(a.s);
    return b.s;
}

size_t qkv_bleu_tokenize_13a(const char *text, char *out, size_t cap) {
    char *t = tokenize(text);
    size_t n = strlen(t);
    if (cap) {
        size_t k = n < cap - 1 ? n : cap - 1;
        memcpy(out, t, k);
        out[k] = 0;
    }
    free(t);
    return n;
}

/* Splits the tokenized s in place at its spaces into words (malloc'd array
 * of pointers into s); returns how many. */
static int words(char *s, char ***w) {
    int n = *s != 0;
    for (char *p = s; *p; p++) n += *p == ' ';
    *w = qkv_malloc((size_t)(n ? n : 1) * sizeof **w, "BLEU words");
    int k = 0;
    for (char *p = s; *p;) {
        (*w)[k++] = p;
        while (*p && *p != ' ') p++;
        if (*p) *p++ = 0;
    }
    return n;
}

void qkv_bleu_add_text(qkv_bleu *b, const char *hyp, const char *ref) {
    char *h = tokenize(hyp), *r = tokenize(ref), **wh, **wr;
    int nh = words(h, &wh), nr = words(r, &wr);
    /* Each word's id: the position of its first occurrence in ref then hyp
     * (equal words, equal ids). Quadratic in the words of a pair. */
    int32_t *ids = qkv_malloc((size_t)(nh + nr + 1) * sizeof *ids, "BLEU");
    for (int i = 0; i < nr + nh; i++) {
        const char *w = i < nr ? wr[i] : wh[i - nr];
        ids[i] = i;
        for (int j = 0; j < i; j++)
            if (strcmp(w, j < nr ? wr[j] : wh[j - nr]) == 0) {
                ids[i] = j;
                break;
            }
    }
    qkv_bleu_add(b, ids + nr, nh, ids, nr);
    free(ids);
    free(wh);
    free(wr);
    free(h);
    free(r);
}
