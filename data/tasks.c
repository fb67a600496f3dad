#include "tasks.h"

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int first_symbol(const qkv_task *t) {
    return t->use_eos ? 3 : 2;
}

int qkv_task_check(const qkv_task *t, char *err, size_t errlen) {
    if (t->vocab - first_symbol(t) < 2) {
        snprintf(err, errlen, "task vocabulary %d leaves fewer than 2 symbols",
                 t->vocab);
        return -1;
    }
    if (t->min_len < 1 || t->max_len < t->min_len) {
        snprintf(err, errlen,
                 "task lengths %d..%d are not a range of positive "
                 "lengths",
                 t->min_len, t->max_len);
        return -1;
    }
    if (t->min_len != t->max_len && !t->use_eos) {
        snprintf(err, errlen, "lengths that vary (%d..%d) need an eos token",
                 t->min_len, t->max_len);
        return -1;
    }
    return 0;
}

/* Sequence lengths of the two layouts. */
static int src_len(const qkv_task *t) {
    return t->decoder_only ? 0 : t->max_len;
}
static int tgt_len(const qkv_task *t) {
    int y = t->max_len + (t->use_eos ? 1 : 0);
    return t->decoder_only ? t->max_len + y : y;
}

void qkv_task_dims(const qkv_task *t, int *S, int *T) {
    *S = src_len(t);
    *T = tgt_len(t);
}

void qkv_task_batch_init(qkv_task_batch *b, const qkv_task *t, int B) {
    size_t S = (size_t)src_len(t), T = (size_t)tgt_len(t), n = (size_t)B;
    b->src = qkv_calloc(n * (S ? S : 1), sizeof *b->src, "task batch");
    b->src_pad = qkv_calloc(n * (S ? S : 1), 1, "task batch");
    b->tgt_in = qkv_calloc(n * T, sizeof *b->tgt_in, "task batch");
    b->tgt_out = qkv_calloc(n * T, sizeof *b->tgt_out, "task batch");
    b->tgt_pad = qkv_calloc(n * T, 1, "task batch");
    b->len = qkv_calloc(n, sizeof *b->len, "task batch");
    qkv_batch v = {B,
                   (int)S,
                   (int)T,
                   t->decoder_only ? NULL : b->src,
                   t->decoder_only ? NULL : b->src_pad,
                   b->tgt_in,
                   b->tgt_out,
                   b->tgt_pad};
    b->view = v;
}

void qkv_task_batch_free(qkv_task_batch *b) {
    free(b->src);
    free(b->src_pad);
    free(b->tgt_in);
    free(b->tgt_out);
    free(b->tgt_pad);
    free(b->len);
    memset(b, 0, sizeof *b);
}

static int cmp_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void qkv_task_answer(const qkv_task *t, const int32_t *x, int len, int32_t *y) {
    for (int i = 0; i < len; i++)
        y[i] = t->kind == QKV_TASK_REVERSE ? x[len - 1 - i] : x[i];
    if (t->kind == QKV_TASK_SORT) qsort(y, (size_t)len, sizeof *y, cmp_int32);
}

void qkv_task_sample(const qkv_task *t, qkv_pcg32 *rng, qkv_task_batch *b) {
    int B = b->view.B, S = b->view.S, T = b->view.T, sym = first_symbol(t);
    int32_t x[1024], y[1025], seq[2100];
    QKV_CHECK(t->max_len <= 1024, "task: max_len %d > 1024", t->max_len);
    for (int i = 0; i < B; i++) {
        int len =
            t->min_len + (int)qkv_pcg32_bounded(
                             rng, (uint32_t)(t->max_len - t->min_len + 1));
        b->len[i] = len;
        for (int j = 0; j < len; j++)
            x[j] = sym +
                   (int32_t)qkv_pcg32_bounded(rng, (uint32_t)(t->vocab - sym));
        qkv_task_answer(t, x, len, y);
        int ylen = len;
        if (t->use_eos) y[ylen++] = QKV_EOS;
        int32_t *in = b->tgt_in + (size_t)i * T,
                *out = b->tgt_out + (size_t)i * T;
        uint8_t *pad = b->tgt_pad + (size_t)i * T;
        for (int j = 0; j < T; j++) in[j] = out[j] = QKV_PAD, pad[j] = 1;
        if (!t->decoder_only) {
            for (int j = 0; j < S; j++) {
                b->src[(size_t)i * S + j] = j < len ? x[j] : QKV_PAD;
                b->src_pad[(size_t)i * S + j] = j >= len;
            }
            for (int j = 0; j < ylen; j++) {
                in[j] = j == 0 ? QKV_BOS : y[j - 1];
                out[j] = y[j];
                pad[j] = 0;
            }
        } else {
            /* seq = x bos y; read seq[0..n-1), predict seq[1..n) on y only */
            int n = 0;
            for (int j = 0; j < len; j++) seq[n++] = x[j];
            seq[n++] = QKV_BOS;
            for (int j = 0; j < ylen; j++) seq[n++] = y[j];
            for (int j = 0; j + 1 < n; j++) {
                in[j] = seq[j];
                out[j] = j >= len ? seq[j + 1] : QKV_PAD;
                pad[j] = 0;
            }
        }
    }
}
