/* fuzz.h - what the libFuzzer harnesses of tests/fuzz/ share: the input as a
 * file, for the loaders that take a path, and the round trip of a flag
 * table (qkv train's own, cli_train_flags) through config.json.
 *
 * Each harness is one LLVMFuzzerTestOneInput that hands its input to a parser
 * of untrusted input (a checkpoint, a corpus, a JSON config, a command line)
 * and frees what it built. ASan, UBSan and the leak checker turn an overflow,
 * undefined behaviour or a leak into a crash; so do exit() and abort(), which
 * a parser must never reach on bad input. libFuzzer saves the input that did
 * it. Where a parse succeeds the harness also checks a round trip (what is
 * written reads back the same) and aborts if it does not.
 *
 *   make fuzz                 builds build-fuzz/fuzz_{ckpt,tsv,json,flags,text,spm}
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
