/* explain.c - `qkv explain` (being written). */
#include "cli.h"

int cmd_explain(int argc, char **argv) {
    (void)argc;
    (void)argv;
    cli_die("explain: not built yet");
}
