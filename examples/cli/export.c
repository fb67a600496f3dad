/* export.c - `qkv export`: a checkpoint's weights and config, nothing else.
 *
 *   qkv export --ckpt runs/dates/ckpt.safetensors -o dates.safetensors
 *   qkv export --ckpt runs/dates/ckpt.safetensors -o w.safetensors \
 *              --json w.json
 *
 * The output is a safetensors file of the model's parameters under their
 * dotted names (no optimiser state, no RNGs, no command line) whose
 * metadata holds "format" ("qkv-weights-1"), "model" (the config JSON) and
 * "data" (what encodes and decodes text: the task, or the tokenizer and
 * vocabularies), so qkv eval and decode read it alone and PyTorch reads it
 * with safetensors' load_file. --json also writes {"model": ..., "data":
 * ...} as a JSON file: the config a file written by PyTorch needs beside
 * it (--config).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

typedef struct export_opts {
    const char *ckpt, *config, *out, *json;
} export_opts;

/* 1 if a and b name the same existing file. */
static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

static void parse(export_opts *o, int argc, char **argv) {
    const flag flags[] = {
        {"ckpt", FLAG_STR, &o->ckpt, NULL,
         "checkpoint written by qkv train (or weights)", 0, 0},
        {"config", FLAG_STR, &o->config, NULL,
         "model config JSON, for weights written elsewhere", 0, 0},
        {"out", FLAG_STR, &o->out, NULL, "the weights file to write (-o)", 0,
         0},
        {"json", FLAG_STR, &o->json, NULL,
         "also write the model and data config as JSON here", 0, 0},
    };
    for (int i = 2; i < argc; i++) /* -o is --out, as in qkv attn */
        if (strcmp(argv[i], "-o") == 0) argv[i] = "--out";
    cli_parse("export", "--ckpt FILE -o OUT.safetensors [--json OUT.json]",
              flags, (int)(sizeof flags / sizeof flags[0]), argc, argv, 2, NULL,
              0, NULL);
    if (!*o->out) cli_die("export: -o is required (the file to write)");
    if (!strcmp(o->out, o->ckpt) || same_file(o->out, o->ckpt) ||
        (*o->config && same_file(o->out, o->config)))
        cli_die("export: -o %s would overwrite the input", o->out);
    if (*o->json && (same_file(o->json, o->ckpt) || !strcmp(o->json, o->out) ||
                     (*o->config && same_file(o->json, o->config))))
        cli_die("export: --json %s would overwrite an input or the output",
                o->json);
}

int cmd_export(int argc, char **argv) {
    export_opts o = {"", "", "", ""};
    parse(&o, argc, argv);
    qkv_model m;
    cli_data d;
    cli_open_model("export", o.ckpt, o.config, &m, &d);
    char *data = cli_data_json(&d), err[512];
    const char *keys[1] = {"data"}, *vals[1] = {data};
    if (qkv_weights_save(o.out, &m, keys, vals, 1, err, sizeof err))
        cli_die("export: -o: %s", err);
    if (*o.json) {
        char *model = qkv_model_config_to_json(&m.cfg);
        cli_buf b = {0};
        cli_bprintf(&b, "{\"model\": %s,\n \"data\": %s}\n", model, data);
        cli_write_file("export", o.json, b.s);
        free(b.s);
        free(model);
    }
    printf("%s: %zu parameters in %d tensors (%s model)\n", o.out, m.params.n,
           m.params.count,
           m.cfg.kind == QKV_MODEL_DECODER ? "decoder-only"
                                           : "encoder-decoder");
    free(data);
    cli_data_free(&d);
    qkv_model_free(&m);
    return 0;
}
