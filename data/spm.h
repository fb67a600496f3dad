/* spm.h - SentencePiece subword models (Kudo and Richardson 2018,
 * arXiv:1808.06226): unigram (Kudo 2018, arXiv:1804.10959) or BPE (Sennrich
 * et al. 2016), trained and run by libsentencepiece through a small C shim
 * (spm.cc, the one C++ file of qkv).
 *
 * A model trained here has qkv's special ids, <pad> 0 <bos> 1 <eos> 2 <unk> 3
 * (corpus.h), so its piece ids are qkv's token ids. Training is
 * deterministic (one thread, a fixed seed, every sentence used, none
 * shuffled): the same sentences give the same model bytes. Text is not
 * normalised (normalization_rule_name=identity) and every character of the
 * training text is covered (character_coverage=1), so decode(encode(s)) == s
 * for any s made of training characters, except that runs of spaces become
 * one and leading and trailing spaces go (SentencePiece's
 * remove_extra_whitespaces); a character never seen is <unk>, decoded as
 * "<unk>". A newline is a piece of its own (user_defined_symbols), id 4,
 * so a plain text's lines survive encoding (text.h). libsentencepiece logs
 * nothing: its log level is raised.
 *
 * Errors follow qkv's convention (common.h): 0, or -1 with one line in err;
 * nothing throws across this interface. A qkv_spm owns its processor and its
 * serialized model; qkv_spm_free releases both.
 *
 *   const char *text[] = {"we see a dog .", "wir sehen einen hund ."};
 *   qkv_spm *m;
 *   if (qkv_spm_train(&m, text, 2, "unigram", 40, err, sizeof err)) die(err);
 *   int n = qkv_spm_encode(m, "we see", ids, 64);  // ids[0..n)
 *   qkv_spm_decode(m, ids, n, out, sizeof out);    // "we see"
 *   qkv_spm_free(m);
 */
#ifndef QKV_SPM_H
#define QKV_SPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qkv_spm qkv_spm;

/* Trains a model of type "unigram" or "bpe" with vocab_size pieces (the 4
 * specials included) on sentences[0..n) (NUL-terminated UTF-8). A vocab_size
 * the text cannot fill, or one too small for its characters, fails with
 * SentencePiece's reason, e.g. "SentencePiece: Vocabulary size is too high
 * (5000). Please set it to a value <= 613." */
int qkv_spm_train(qkv_spm **out, const char *const *sentences, size_t n,
                  const char *type, int vocab_size, char *err, size_t errlen);
/* A model from its serialized bytes (a .model file's contents, or
 * qkv_spm_bytes of another); name says where they came from in messages.
 * Refuses bytes that are not a model, a model whose pad, bos, eos and
 * unk ids are not 0, 1, 2, 3 (spm_train --pad_id=0 --bos_id=1 --eos_id=2
 * --unk_id=3), and one with a NUL byte inside a piece. */
int qkv_spm_load(qkv_spm **out, const void *bytes, size_t len, const char *name,
                 char *err, size_t errlen);
void qkv_spm_free(qkv_spm *m);

/* The serialized model (owned by m): what a .model file holds. */
const void *qkv_spm_bytes(const qkv_spm *m, size_t *len);
/* Pieces, ids 0 .. size-1 ("▁dog": U+2581 marks a word start). */
int qkv_spm_size(const qkv_spm *m);
const char *qkv_spm_piece(const qkv_spm *m, int id);

/* Ids of the text s (no bos or eos): returns how many and writes the first
 * min(that, max) to ids, as qkv_encode does. */
int qkv_spm_encode(const qkv_spm *m, const char *s, int32_t *ids, int max);
/* Text of ids[0..n) (each < qkv_spm_size): writes at most cap bytes (NUL
 * included, cap > 0) to out and returns the length the whole text needs, as
 * snprintf does. Control ids (pad, bos, eos) decode to nothing. */
size_t qkv_spm_decode(const qkv_spm *m, const int32_t *ids, int n, char *out,
                      size_t cap);

#ifdef __cplusplus
}
#endif

#endif
