/* fuzz_flags.c - libFuzzer harness of the command-line parser: the input,
 * split at NUL bytes, is the argv of `qkv train ...` (at most 64 arguments),
 * parsed by cli_parse_args against qkv train's own flag table with up to 4
 * positional arguments: --name value, --name=value, bools, --help, "--",
 * "-", numbers out of range or not numbers, values not among the choices.
 * It must return 0, 1 (--help) or -1 with one line, never crash or exit.
 * Checked too: values it accepts write to config.json and read back the
 * same. Seeds: NUL-separated command lines (corpus/flags/).
 */
#include <stdint.h>

#include "fuzz.h"

enum { MAX_ARGS = 64 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char prog[] = "qkv", cmd[] = "train";
    char *buf = malloc(size + 1), *argv[MAX_ARGS + 2] = {prog, cmd};
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    int argc = 2;
    for (size_t i = 0; i < size && argc < MAX_ARGS + 2;
         i += strlen(buf + i) + 1)
        argv[argc++] = buf + i;

    flag *flags;
    int n = cli_train_flags(&flags), n_pos;
    const char *pos[4];
    char err[512];
    int rc = cli_parse_args("train", flags, n, argc, argv, 2, pos, 4, &n_pos,
                            err, sizeof err);
    if (rc < -1 || rc > 1 || n_pos < 0 || n_pos > 4) abort();
    if (rc == 0) fuzz_flags_round_trip(flags, n);
    free(buf);
    return 0;
}
