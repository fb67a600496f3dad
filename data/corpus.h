/* corpus.h - parallel corpora from TSV files: strict UTF-8, word,
 * character and SentencePiece tokenizers, vocabularies, length filtering,
 * token-budget batches.
 *
 * A corpus file has one pair per line, `source<TAB>target`, UTF-8, the format
 * Tatoeba and OPUS exports use. Blank lines are skipped, a trailing \r
 * (CRLF files) and a UTF-8 byte-order mark on the first line are stripped;
 * anything else that is wrong (no tab, two tabs, an empty side, invalid UTF-8,
 * a NUL byte, no pairs at all) fails the load with one line naming the file
 * and the line. The pipeline is
 *
 *   text (qkv_corpus) -> ids (qkv_pairs, with the vocabularies of the
 *   training split) -> batches (qkv_batcher -> qkv_corpus_batch.view)
 *
 * Ownership: each struct owns its buffers and its _free releases them.
 * qkv_pairs does not point into the corpus; qkv_batcher points to (does not
 * own) its qkv_pairs, which must outlive it.
 *
 *   qkv_corpus c; qkv_vocab sv, tv; qkv_pairs p; qkv_batcher it;
 *   if (qkv_corpus_load("data/corpora/dates/train.tsv", &c, err, sizeof err))
 *       { fprintf(stderr, "qkv: %s\n", err); exit(1); }
 *   qkv_vocab_build(&sv, &c, QKV_SIDE_SRC, QKV_TOK_CHAR, 1);  // and tv
 *   qkv_pairs_encode(&p, &c, QKV_TOK_CHAR, &sv, &tv, 64, 64);  // p.dropped
 *   qkv_corpus_batch b; qkv_corpus_batch_init(&b, 4096);
 *   qkv_batcher_init(&it, &p, 4096, err, sizeof err);
 *   qkv_batcher_epoch(&it, &rng);
 *   while (qkv_batcher_next(&it, &b)) train_step(&b.view);
 *
 * SentencePiece: the vocabulary carries the model, and the same calls take
 * QKV_TOK_SPM:
 *   qkv_vocab_train_spm(&sv, &c, QKV_SIDE_BOTH, "unigram", 200, err, errlen);
 *   qkv_pairs_encode(&p, &c, QKV_TOK_SPM, &sv, &sv, 64, 64);
 */
#ifndef QKV_CORPUS_H
#define QKV_CORPUS_H

#include "pcg.h"
#include "spm.h"
#include "tasks.h"

#include <stddef.h>
#include <stdint.h>

/* Special ids, shared with tasks.h: pad 0, bos 1, eos 2, and unk 3 for a
 * token the vocabulary does not know. Their strings are below. */
enum { QKV_UNK = 3, QKV_N_SPECIAL = 4 };
extern const char *const qkv_special_tokens[QKV_N_SPECIAL]; /* <pad> ... */

/* ------------------------------------------------------------------ UTF-8 */

/* -------------------------------------------------------------- tokenizers */

typedef enum qkv_tok {
    /* Words: maximal runs of non-whitespace, split on ASCII whitespace
     * (space \t \n \v \f \r). Punctuation stays attached ("dog." is one
     * token), so corpora that want it separate write it separately, as the
     * shipped grammar corpus does. Detokenized words are joined by one space.
     */
    QKV_TOK_WORD,
    /* Characters: one token per UTF-8 code point, spaces included, so
     * detokenization gives back the exact text. A byte that does not start a
     * valid sequence is a token of its own (it can only come from unchecked
     * input, e.g. a command-line argument, and maps to <unk>). */
    QKV_TOK_CHAR,
    /* SentencePiece subwords (spm.h): the vocabulary's model (qkv_vocab.spm,
     * from qkv_vocab_train_spm or qkv_vocab_from_spm) splits and joins the
     * text, so detokenization gives back the text with its spaces (runs of
     * spaces made one). */
    QKV_TOK_SPM
} qkv_tok;

/* Finds the next token of s (NUL-terminated) at or after s[*pos]: returns 1
 * with the token at s[*start .. *start + *len) and *pos past it, or 0 at the
 * end of s. Start with *pos = 0. Word and character tokenizers only
 * (SentencePiece tokens are not substrings of the text). */
int qkv_token_next(qkv_tok tok, const char *s, size_t *pos, size_t *start,
                   size_t *len);

/* ----------------------------------------------------------------- corpus */

/* The pairs of one TSV file, as text. */
typedef struct qkv_corpus {
    int n;      /* pairs */
    char **src; /* (n) NUL-terminated UTF-8 source sentences */
    char **tgt; /* (n) NUL-terminated UTF-8 target sentences */
    int *line;  /* (n) 1-based line number of each pair in the file */
} qkv_corpus;

/* Reads the TSV file at path into c. On error returns -1, leaves c empty
 * (safe to free) and writes one line to err, e.g.
 *   "data/x.tsv: line 7 has no tab (want source<TAB>target)"
 *   "data/x.tsv: line 7 is not valid UTF-8 (byte 12)"   (1-based, in the line)
 * The file must be a regular file of at most QKV_MAX_TEXT_FILE bytes (a
 * FIFO or a device is refused without blocking) with lines of at most
 * QKV_MAX_LINE bytes (io.h). The file is only read. */
int qkv_corpus_load(const char *path, qkv_corpus *c, char *err, size_t errlen);
void qkv_corpus_free(qkv_corpus *c);

/* ------------------------------------------------------------ vocabulary */

/* id <-> token. Ids 0..3 are <pad> <bos> <eos> <unk>; the rest follow by
 * descending count in the training text, ties in byte order (strcmp), so the
 * same text always gives the same ids. A SentencePiece vocabulary's tokens
 * are its model's pieces, in the model's id order. */
typedef struct qkv_vocab {
    int size;       /* ids 0 .. size-1 */
    char **tokens;  /* (size) id -> NUL-terminated UTF-8 token (owned) */
    int32_t *slots; /* (n_slots) open-addressing hash table: id, or -1 */
    size_t n_slots; /* a power of two > 2 * size */
    int cap;        /* room in tokens */
    qkv_spm *spm;   /* QKV_TOK_SPM: the model (owned), else NULL */
} qkv_vocab;

/* Which sides of a corpus a vocabulary is built from (BOTH: one shared
 * vocabulary, e.g. for a model with tied embeddings). */
enum { QKV_SIDE_SRC = 1, QKV_SIDE_TGT = 2, QKV_SIDE_BOTH = 3 };

/* Builds v from the tokens of c's chosen sides: the 4 special ids, then every
 * token seen at least min_freq times (min_freq < 1 counts as 1). A word-level
 * token spelled like a special ("<unk>") is not added twice: it is that id. */
void qkv_vocab_build(qkv_vocab *v, const qkv_corpus *c, int sides, qkv_tok tok,
                     int min_freq);
/* Rebuilds a vocabulary from its id-ordered token list (as a checkpoint
 * stores it). -1 and a message if the list does not start with the 4
 * specials, has an empty or a duplicate token, or is not valid UTF-8. */
int qkv_vocab_from_list(qkv_vocab *v, const char *const *tokens, int n,
                        char *err, size_t errlen);
/* A SentencePiece vocabulary: trains a model of type "unigram" or "bpe"
 * with size pieces on the sentences of c's chosen sides (spm.h: the specials
 * have qkv's ids, training is deterministic) and builds v from it. -1 and a
 * message ("SentencePiece: Vocabulary size too high (5000). Please set it
 * to a value <= 416.") if the text cannot make that many pieces or needs
 * more. */
int qkv_vocab_train_spm(qkv_vocab *v, const qkv_corpus *c, int sides,
                        const char *type, int size, char *err, size_t errlen);
/* A SentencePiece vocabulary from a serialized model (a .model file's
 * bytes, as a checkpoint keeps them; name for messages), or from the model
 * file at path (at most QKV_MAX_SPM_FILE bytes). -1 and a message if it is
 * not a model, its pad/bos/eos/unk ids are not 0..3, or it has a piece that
 * is empty, holds a NUL, is not UTF-8 or is spelt like a qkv special. */
#define QKV_MAX_SPM_FILE ((uint64_t)1 << 30) /* 1 GiB */
int qkv_vocab_from_spm(qkv_vocab *v, const void *bytes, size_t len,
                       const char *name, char *err, size_t errlen);
int qkv_vocab_load_spm(qkv_vocab *v, const char *path, char *err,
                       size_t errlen);
/* The id of token s[0..len), or QKV_UNK if v does not have it. */
int32_t qkv_vocab_find(const qkv_vocab *v, const char *s, size_t len);
void qkv_vocab_free(qkv_vocab *v);

/* Token ids of the text s: returns how many tokens s has and writes the
 * first min(that, max) of them to ids (call again with more room if needed).
 * No bos or eos is added. QKV_TOK_SPM needs v->spm. */
int qkv_encode(const qkv_vocab *v, qkv_tok tok, const char *s, int32_t *ids,
               int max);
/* Text of ids[0..n): skips pad and bos, stops at the first eos; words are
 * joined by one space, characters concatenated, SentencePiece pieces decoded
 * by v->spm ("▁" is a space, none leading). Writes at most cap bytes
 * (NUL included, cap > 0) to out and returns the length the whole text
 * needs, as snprintf does. Ids must be < v->size. */
size_t qkv_detokenize(const qkv_vocab *v, qkv_tok tok, const int32_t *ids,
                      int n, char *out, size_t cap);

/* ------------------------------------------------- encoded, filtered pairs */

typedef struct qkv_pair {
    size_t src, tgt;      /* offsets of the two sequences in qkv_pairs.ids */
    int src_len, tgt_len; /* in tokens, no bos/eos */
    int index;            /* the pair's index in the corpus */
} qkv_pair;

typedef struct qkv_pairs {
    int n;           /* pairs kept */
    int dropped;     /* pairs the length filter dropped */
    int longest_src; /* longest kept source, in tokens */
    int longest_tgt; /* longest kept target, in tokens (eos not counted) */
    size_t n_unk;    /* kept tokens that became <unk> (both sides) */
    size_t n_tokens; /* kept tokens (both sides) */
    qkv_pair *pair;  /* (n) */
    int32_t *ids;    /* every kept sequence back to back */
    /* Batch layout: 0 (as qkv_pairs_encode leaves it) encoder-decoder; set it
     * to 1 before batching (before qkv_batcher_init) to lay each pair out as
     * one sequence x bos y eos for a decoder-only model. qkv_pairs_batch and
     * the batcher both read it. */
    int decoder_only;
} qkv_pairs;

/* Encodes c with the source and target vocabularies (may be the same one)
 * and keeps the pairs with 1..max_src source and 1..max_tgt target tokens
 * (a limit <= 0 means none); p->dropped counts the others, including pairs
 * with a side that has no tokens (e.g. only spaces, word-level). */
void qkv_pairs_encode(qkv_pairs *p, const qkv_corpus *c, qkv_tok tok,
                      const qkv_vocab *sv, const qkv_vocab *tv, int max_src,
                      int max_tgt);
void qkv_pairs_free(qkv_pairs *p);
/* Tokens a batch row of the longest pair of p needs in p's layout (an upper
 * bound): max(s, t + 1) for encoder-decoder, s + 1 + t for decoder-only. */
int qkv_pairs_cost(const qkv_pairs *p);

/* ----------------------------------------------------------------- batches */

/* Buffers for batches of at most max_tokens = B * max(S, T) tokens, and the
 * qkv_batch view over them, in one of the two layouts of tasks.h. For a pair
 * of x (s tokens) and y (t tokens), encoder-decoder (p->decoder_only 0):
 *   src     (B, S) = x, then pad            src_pad = 1 on the padding
 *   tgt_in  (B, T) = bos y, then pad        tgt_pad = 1 on the padding
 *   tgt_out (B, T) = y eos, then pad (no loss there)
 * S is the longest s of the batch and T the longest t + 1. The source gets no
 * bos or eos, as in tasks.h. Decoder-only (p->decoder_only 1), the sequence
 * x bos y eos, of which the model reads all but the last token:
 *   src, src_pad NULL, S = 0
 *   tgt_in  (B, T) = x bos y, then pad      tgt_pad = 1 on the padding
 *   tgt_out (B, T) = pad*s y eos, then pad  (no loss over x or the padding)
 * T is the longest s + 1 + t of the batch, which is also its cost per row. */
typedef struct qkv_corpus_batch {
    int max_tokens;
    int32_t *src, *tgt_in, *tgt_out; /* (max_tokens) each */
    uint8_t *src_pad, *tgt_pad;      /* (max_tokens) each */
    int *index;                      /* (B) index in qkv_pairs of each row */
    qkv_batch view;
} qkv_corpus_batch;

void qkv_corpus_batch_init(qkv_corpus_batch *b, int max_tokens);
void qkv_corpus_batch_free(qkv_corpus_batch *b);
/* Fills b with the pairs idx[0..B) of p, in that order (e.g. a whole test set
 * in file order, for decoding), in p's layout. B * max(S, T) must fit in
 * b->max_tokens. */
void qkv_pairs_batch(const qkv_pairs *p, const int *idx, int B,
                     qkv_corpus_batch *b);

/* Epochs of batches by token budget, in p's layout. Each epoch visits every
 * pair exactly once: pairs are sorted by length (cost max(s, t + 1), or
 * s + 1 + t for decoder-only, then s, then t; pairs of equal lengths in a
 * random order), cut greedily into batches of at most max_tokens =
 * B * max(S, T), and the batches are visited in a random order.
 * Sorting keeps the padding small; shuffling keeps the gradient unbiased.
 * Deterministic for a given rng state. */
typedef struct qkv_batcher {
    const qkv_pairs *pairs; /* not owned */
    int max_tokens;
    int n_batches; /* per epoch (the same every epoch) */
    int *order;    /* (n) pair indices, batch after batch */
    int *start;    /* (n + 1) batch i is order[start[i] .. start[i+1]) */
    int *visit;    /* (n_batches) order of the batches this epoch */
    int next;      /* batches served this epoch */
} qkv_batcher;

/* -1 and a message if max_tokens cannot hold the costliest pair (the largest
 * max(s, t + 1), or s + 1 + t for decoder-only) or p has no pairs. The layout
 * must not change while the batcher is in use. */
int qkv_batcher_init(qkv_batcher *it, const qkv_pairs *p, int max_tokens,
                     char *err, size_t errlen);
/* Starts an epoch. rng NULL: no shuffling (pairs of equal lengths in corpus
 * order, batches shortest first), for evaluation. */
void qkv_batcher_epoch(qkv_batcher *it, qkv_pcg32 *rng);
/* Fills b (made with at least it->max_tokens) with the next batch of the
 * epoch and returns 1, or returns 0 when the epoch is over. */
int qkv_batcher_next(qkv_batcher *it, qkv_corpus_batch *b);
void qkv_batcher_free(qkv_batcher *it);

#endif
