/* plot.c - `qkv plot` (being written). */
#include "cli.h"

int cmd_plot(int argc, char **argv) {
    (void)argc;
    (void)argv;
    cli_die("plot: not built yet");
}

int cli_plot_logs(const char *cmd, const char *const *logs,
                  const char *const *labels, int n, const cli_plot_opts *o) {
    (void)logs, (void)labels, (void)n, (void)o;
    fprintf(stderr, "qkv: %s: plotting is not built yet\n", cmd);
    return -1;
}
