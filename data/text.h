/* text.h - plain text for language models: a UTF-8 file, its vocabulary,
 * one stream of token ids, and batches of windows cut from it.
 *
 * What nanoGPT's char-level Shakespeare does, in the layout of core/batch.h:
 * the whole text is one id stream (no bos, no eos, no padding); a training
 * batch is B windows of block + 1 tokens at random offsets, the model reads
 * the first block and predicts the last block (tgt_in = ids[o .. o+block),
 * tgt_out = ids[o+1 .. o+block]), every position scored. Validation reads
 * consecutive windows of the validation text in order. Without a separate
 * validation file, the last tenth of the text is held out (qkv_text_split).
 *
 * Ownership: qkv_text and qkv_text_ids own their buffers (_free releases
 * them); a source points to (does not own) the ids it cuts, which must
 * outlive it.
 *
 *   qkv_text t; qkv_vocab v; qkv_text_ids train, valid;
 *   if (qkv_text_load("data/text/gnu-licenses.txt", &t, err, sizeof err))
 *       die(err);
 *   size_t cut = qkv_text_split(&t, 0.9);         // train t[0..cut)
 *   qkv_text_vocab(&v, t.s, cut, QKV_TOK_CHAR);
 *   qkv_text_encode(&train, &v, QKV_TOK_CHAR, t.s, cut);
 *   qkv_text_encode(&valid, &v, QKV_TOK_CHAR, t.s + cut, t.n - cut);
 *   qkv_source *s = qkv_text_source(&train, 32, 128, seed, 0, 0, err, n);
 *   qkv_source *vs = qkv_text_source(&valid, 32, 128, 0, 1, 100, err, n);
 */
#ifndef QKV_TEXT_H
#define QKV_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "corpus.h"
#include "source.h"

/* The largest text: token counts are ints (qkv_encode), and a text of
 * characters has at most as many tokens as bytes. */
#define QKV_MAX_TEXT_BYTES ((size_t)INT32_MAX - 1)

typedef struct qkv_text {
    char *s;  /* (n + 1) the file's bytes, NUL-terminated, no BOM */
    size_t n; /* bytes, without the NUL */
} qkv_text;

/* Reads the text file at path into t. On error returns -1, leaves t empty
 * and writes one line to err naming the file and what was wrong:
 *   "x.txt: not valid UTF-8 at byte 1207 (line 31)"
 *   "x.txt: a NUL byte at byte 9 (line 1): a binary file, not text"
 *   "x.txt: empty (no text to learn from)"
 * The file must be a regular file (a FIFO or a device is refused without
 * blocking) of at most QKV_MAX_TEXT_BYTES bytes, strict UTF-8 (common.h)
 * without NUL bytes; a leading byte-order mark is dropped, \r\n is kept as
 * it is (two characters). Only read. */
int qkv_text_load(const char *path, qkv_text *t, char *err, size_t errlen);
void qkv_text_free(qkv_text *t);

/* Where to cut t for a held-out split: the start of the first line that
 * begins at or after frac * t->n bytes, or, with no such line, the first
 * character boundary there (never inside a UTF-8 sequence). 0 < frac < 1.
 * Train on t[0..cut), validate on t[cut..n) (cut may equal n for a text of
 * one line: the caller checks that both parts are long enough). */
size_t qkv_text_split(const qkv_text *t, double frac);

/* The vocabulary of s[0..n) (which holds no NUL): the 4 specials of
 * corpus.h, then every token of s by descending count, ties in byte order,
 * as qkv_vocab_build. */
void qkv_text_vocab(qkv_vocab *v, const char *s, size_t n, qkv_tok tok);

/* A SentencePiece vocabulary (corpus.h, QKV_TOK_SPM) trained on the lines
 * of s[0..n) (each with its newline, which spm.h keeps as a piece of its
 * own, so a text's lines survive encoding), of type "unigram" or "bpe" and
 * size pieces. -1 and SentencePiece's reason in err if it cannot. */
int qkv_text_vocab_spm(qkv_vocab *v, const char *s, size_t n, const char *type,
                       int size, char *err, size_t errlen);

/* The token ids of a text, one stream. */
typedef struct qkv_text_ids {
    int32_t *ids; /* (n) */
    int64_t n;
    int64_t n_unk; /* tokens the vocabulary did not know (<unk>) */
} qkv_text_ids;

/* Encodes s[0..n) (no NUL in it, n <= QKV_MAX_TEXT_BYTES) with v. */
void qkv_text_encode(qkv_text_ids *x, const qkv_vocab *v, qkv_tok tok,
                     const char *s, size_t n);
void qkv_text_ids_free(qkv_text_ids *x);

/* Batches of windows of x (not owned), B rows of block tokens, in the
 * decoder-only layout (src NULL, no padding, every target scored).
 * finite 0: training, forever; each window's offset o is drawn uniformly
 * from 0 .. x->n - block - 1 by PCG32 (seed, stream 1), row after row
 * (qkv_pcg32_bounded), so a seed repeats its batches exactly; the state is
 * the generator. finite 1: validation, one pass over the consecutive
 * windows at offsets 0, block, 2 block, ... (the first max_windows of them,
 * max_windows <= 0: all), B a batch, the last batch maybe smaller.
 * NULL and one line in err if x has fewer than block + 1 tokens. */
qkv_source *qkv_text_source(const qkv_text_ids *x, int B, int block,
                            uint64_t seed, int finite, int max_windows,
                            char *err, size_t errlen);

/* The windows a finite text source of x holds: min(max_windows,
 * (x->n - 1) / block), max_windows <= 0 meaning no limit. */
int64_t qkv_text_windows(const qkv_text_ids *x, int block, int max_windows);

#endif
