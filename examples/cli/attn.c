/* attn.c - `qkv attn` (being written). */
#include "cli.h"

int cmd_attn(int argc, char **argv) {
    (void)argc;
    (void)argv;
    cli_die("attn: not built yet");
}
