/* sweep.c - `qkv sweep` (being written). */
#include "cli.h"

int cmd_sweep(int argc, char **argv) {
    (void)argc;
    (void)argv;
    cli_die("sweep: not built yet");
}
