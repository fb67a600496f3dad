/* fuzz.h - what the libFuzzer harnesses of tests/fuzz/ share: the input as a
 * file, for the loaders that take a path, and a flag table shaped like
 * `qkv train`'s.
 *
 * Each harness is one LLVMFuzzerTestOneInput that hands its input to a parser
 * of untrusted input (a checkpoint, a corpus, a JSON config, a command line)
 * and frees what it built. ASan, UBSan and the leak checker turn an overflow,
 * undefined behaviour or a leak into a crash; so do exit() and abort(), which
 * a parser must never reach on bad input. libFuzzer saves the input that did
 * it. Where a parse succeeds the harness also checks a round trip (what is
 * written reads back the same) and aborts if it does not.
 *
 *   make fuzz                 builds build-fuzz/fuzz_{ckpt,tsv,json,flags}
 *   make fuzz FUZZ_S=60       runs each for 60 s on its seeds (corpus/NAME)
 *   build-fuzz/fuzz_tsv crash-...     replays one input
 */
#ifndef QKV_FUZZ_H
#define QKV_FUZZ_H

#include <float.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* Larger inputs are skipped by the harnesses that write files. */
#define FUZZ_MAX_FILE (1 << 20)

/* The path of a file holding data[0..size): one temporary file, made on the
 * first call and rewritten on each, unlinked at once and named through
 * /proc/self/fd, so nothing is left behind even when a run ends in a crash.
 * On tmpfs (/dev/shm) where there is one. */
static inline const char *fuzz_file(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        char shm[] = "/dev/shm/qkv-fuzz-XXXXXX", tmp[] = "/tmp/qkv-fuzz-XXXXXX";
        char *name = shm;
        if ((fd = mkstemp(shm)) < 0) fd = mkstemp(name = tmp);
        if (fd < 0 || unlink(name) != 0) {
            perror("fuzz: temporary file");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) {
        perror("fuzz: writing the temporary file");
        abort();
    }
    return path;
}

/* Where the flags of fuzz_flag_table go, and its room. */
typedef struct fuzz_opts {
    const char *task, *data, *tok, *model, *pos, *optim, *schedule, *out;
    int vocab, min_freq, filter_len, batch_tokens, N, n_enc, h, d_model, warmup,
        batch, seed, force, quiet;
    float dropout, label_smoothing, lr, weight_decay, clip;
} fuzz_opts;
#define FUZZ_MAX_FLAGS 32

/* Fills flags (room for FUZZ_MAX_FLAGS) with a table in the style of qkv
 * train's, every kind of flag and range it uses (ints bounded, from 0 or 1, or
 * any; floats in [0, x], > 0 or any finite; strings free or from a list;
 * bools), with *o at qkv train's defaults. Returns the number of flags. */
static inline int fuzz_flag_table(flag *flags, fuzz_opts *o) {
    *o = (fuzz_opts){.task = "copy",
                     .data = "",
                     .tok = "word",
                     .model = "encdec",
                     .pos = "sin",
                     .optim = "adam",
                     .schedule = "cosine",
                     .out = "",
                     .vocab = 11,
                     .min_freq = 1,
                     .N = 2,
                     .h = 4,
                     .d_model = 64,
                     .warmup = 100,
                     .batch = 64,
                     .seed = 42,
                     .dropout = 0.1f,
                     .label_smoothing = 0.1f,
                     .lr = 2e-3f,
                     .weight_decay = 0.01f,
                     .clip = 1};
    const flag table[] = {
        {"task", FLAG_STR, &o->task, "copy|reverse|sort", "task", 0, 0},
        {"data", FLAG_STR, &o->data, NULL, "training corpus", 0, 0},
        {"tok", FLAG_STR, &o->tok, "word|char", "tokenizer", 0, 0},
        {"model", FLAG_STR, &o->model, "encdec|decoder", "model", 0, 0},
        {"pos", FLAG_STR, &o->pos, "sin|learned", "positions", 0, 0},
        {"optim", FLAG_STR, &o->optim, "adam|adamw|sgd", "optimiser", 0, 0},
        {"schedule", FLAG_STR, &o->schedule, "const|noam|cosine", "schedule", 0,
         0},
        {"out", FLAG_STR, &o->out, NULL, "run directory", 0, 0},
        {"vocab", FLAG_INT, &o->vocab, NULL, "vocabulary", 1, QKV_MAX_VOCAB},
        {"min-freq", FLAG_INT, &o->min_freq, NULL, "min count", 0, INT_MAX},
        {"filter-len", FLAG_INT, &o->filter_len, NULL, "length limit", 0,
         QKV_MAX_POSITIONS},
        {"batch-tokens", FLAG_INT, &o->batch_tokens, NULL, "tokens", 0,
         1 << 24},
        {"N", FLAG_INT, &o->N, NULL, "layers", 1, 64},
        {"N-enc", FLAG_INT, &o->n_enc, NULL, "encoder layers", 0, 64},
        {"h", FLAG_INT, &o->h, NULL, "heads", 1, QKV_MAX_WIDTH},
        {"d-model", FLAG_INT, &o->d_model, NULL, "width", 1, QKV_MAX_WIDTH},
        {"warmup", FLAG_INT, &o->warmup, NULL, "warm-up", 0, INT_MAX},
        {"batch", FLAG_INT, &o->batch, NULL, "batch", 1, 1 << 20},
        {"seed", FLAG_INT, &o->seed, NULL, "seed", 0, 0},
        {"dropout", FLAG_FLOAT, &o->dropout, NULL, "dropout", 0, 0.99},
        {"label-smoothing", FLAG_FLOAT, &o->label_smoothing, NULL, "smoothing",
         0, 1},
        {"lr", FLAG_FLOAT, &o->lr, NULL, "learning rate", CLI_POSITIVE,
         FLT_MAX},
        {"weight-decay", FLAG_FLOAT, &o->weight_decay, NULL, "decay", 0,
         FLT_MAX},
        {"clip", FLAG_FLOAT, &o->clip, NULL, "any finite float", 0, 0},
        {"force", FLAG_BOOL, &o->force, NULL, "force", 0, 0},
        {"quiet", FLAG_BOOL, &o->quiet, NULL, "quiet", 0, 0},
    };
    _Static_assert(sizeof table / sizeof *table <= FUZZ_MAX_FLAGS, "room");
    memcpy(flags, table, sizeof table);
    return (int)(sizeof table / sizeof *table);
}

/* Round trip of a table whose values were just set: config.json written from
 * it (cli_flags_json) must read back without error and write the same text.
 * Aborts if not. */
static inline void fuzz_flags_round_trip(const flag *flags, int n) {
    char *a = cli_flags_json(flags, n), err[600];
    cJSON *j = cJSON_Parse(a);
    if (!j || cli_flags_from_json_err("train", flags, n, j, err, sizeof err)) {
        fprintf(stderr, "fuzz: config.json does not read back: %s\n%s\n",
                j ? err : "not JSON", a);
        abort();
    }
    char *b = cli_flags_json(flags, n);
    if (strcmp(a, b) != 0) {
        fprintf(stderr, "fuzz: config.json changed:\n%s\n%s\n", a, b);
        abort();
    }
    cJSON_Delete(j);
    free(a);
    free(b);
}

#endif
