/* qkv - train transformers from the terminal.
 *
 *   qkv train --task copy --steps 800 --out runs/copy
 *   qkv eval --ckpt runs/copy/ckpt.safetensors
 *   qkv decode --ckpt runs/copy/ckpt.safetensors "3 4 5 6 7 8 9 10 3 4"
 *   qkv --help | qkv COMMAND --help
 *
 * Exit status: 0 done; 1 an internal error (a bug: "qkv: file.c:LINE: ...");
 * 2 bad input or a request this machine cannot hold, one line "qkv: CMD:
 * ..."; 3 training diverged (qkv train); 130 interrupted (Ctrl-C).
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_decode(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_attn(int argc, char **argv);
int cmd_explain(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_export(int argc, char **argv);

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *help;
} commands[] = {
    {"train", cmd_train, "train a model on a generated task or a TSV corpus"},
    {"eval", cmd_eval,
     "loss, perplexity, token accuracy, exact match and BLEU of a checkpoint"},
    {"decode", cmd_decode,
     "translate text (or continue it, decoder-only) with a checkpoint"},
    {"plot", cmd_plot, "loss curves of one or more runs (gnuplot)"},
    {"sweep", cmd_sweep, "train a grid of N x h and compare the runs"},
    {"attn", cmd_attn, "heatmaps of every attention layer and head"},
    {"explain", cmd_explain, "attention step by step on a tiny example"},
    {"generate", cmd_generate, "sample text from a language model (--text)"},
    {"export", cmd_export,
     "a checkpoint's weights and config only, for PyTorch and other tools"},
};

static void usage(FILE *f) {
    fputs("usage: qkv COMMAND [flags]\n\ncommands:\n", f);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
    fputs("\nqkv COMMAND --help lists the command's flags with their "
          "defaults.\n",
          f);
}

int main(int argc, char **argv) {
    qkv_comm_init(&argc, &argv); /* an MPI build under mpirun: the job */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) {
            qkv_set_program(commands[i].name);
            return commands[i].run(argc, argv);
        }
    cli_die("unknown command '%s' (see qkv --help)", argv[1]);
}
