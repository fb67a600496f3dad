#include "bleu.h"

#include <math.h>

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

double qkv_bleu_score(const qkv_bleu *b) {
    if (b->hyp_len == 0) return 0.0;
    double log_p = 0.0;
    for (int n = 0; n < 4; n++) {
        if (b->match[n] == 0 || b->total[n] == 0) return 0.0;
        log_p += log((double)b->match[n] / (double)b->total[n]);
    }
    double bp = b->hyp_len > b->ref_len
                    ? 1.0
                    : exp(1.0 - (double)b->ref_len / (double)b->hyp_len);
    return bp * exp(log_p / 4.0);
}
