/* generate.c - `qkv generate`: sample text from a language model of a text.
 *
 *   qkv generate --ckpt runs/text/ckpt.safetensors --max-tokens 500
 *   qkv generate --ckpt runs/text/ckpt.safetensors --prompt "This License" \
 *                --temp 0.8 --top-k 20 --seed 7
 *
 * For a model trained with `qkv train --text`. Prints the prompt, then its
 * continuation as each token is drawn (qkv_generate: softmax of the logits
 * over --temp, among the --top-k likeliest and the smallest set reaching
 * --top-p), --max-tokens of them whatever the model's positions (the window
 * restarts from its last half when the sequence outgrows them; the
 * key/value cache makes each token one step). It does not stop at an end
 * token unless --stop-at-eos. The same --seed gives the same text.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct gen_opts {
    const char *ckpt, *config, *prompt;
    int max_tokens, top_k, seed, stop_at_eos, threads;
    float temp, top_p;
    int precision; /* qkv_precision */
} gen_opts;

static void parse(gen_opts *o, int argc, char **argv) {
    const flag flags[] = {
        {"ckpt", FLAG_STR, &o->ckpt, NULL,
         "checkpoint written by qkv train --text, or its export", 0, 0},
        {"config", FLAG_STR, &o->config, NULL,
         "model config JSON for weights written elsewhere (qkv export --json)",
         0, 0},
        {"prompt", FLAG_STR, &o->prompt, NULL,
         "text to continue (default: from the start of a line)", 0, 0},
        {"max-tokens", FLAG_INT, &o->max_tokens, NULL, "tokens to generate", 1,
         1 << 24},
        {"temp", FLAG_FLOAT, &o->temp, NULL, "sampling temperature (0: greedy)",
         0, 100},
        {"top-k", FLAG_INT, &o->top_k, NULL,
         "sample among the k likeliest tokens (0: all)", 0, QKV_MAX_VOCAB},
        {"top-p", FLAG_FLOAT, &o->top_p, NULL,
         "sample among the likeliest tokens whose probability reaches p "
         "(nucleus sampling; 0 or 1: all)",
         0, 1},
        {"seed", FLAG_INT, &o->seed, NULL, "PCG32 seed", 0, 0},
        {"stop-at-eos", FLAG_BOOL, &o->stop_at_eos, NULL,
         "stop early if the model draws its end token", 0, 0},
        CLI_PRECISION_FLAG(&o->precision),
        {"threads", FLAG_INT, &o->threads, NULL,
         "OpenMP threads (0: the free cores, following the load)", 0,
         cli_max_threads()},
    };
    cli_parse("generate", "--ckpt FILE [--prompt TEXT] [flags]", flags,
              (int)(sizeof flags / sizeof flags[0]), argc, argv, 2, NULL, 0,
              NULL);
    if (o->threads) qkv_set_threads(o->threads);
}

/* The prompt's ids into a buffer with room for the continuation; with no
 * prompt, one hidden token: a newline (or the text's commonest token). */
static int32_t *encode_prompt(const gen_opts *o, const qkv_model *m,
                              const cli_data *d, int *n, int *hidden) {
    char err[512];
    int32_t *ids = NULL;
    int cap = 0;
    if (cli_encode_input(d, o->prompt, &ids, &cap, n, err, sizeof err))
        cli_die("generate: --prompt: %s", err);
    ids =
        qkv_realloc(ids, ((size_t)*n + (size_t)o->max_tokens + 1) * sizeof *ids,
                    "generated tokens");
    int unk = 0;
    for (int i = 0; i < *n; i++) unk += ids[i] == QKV_UNK;
    if (unk)
        cli_warn("generate: --prompt: %d of its %d tokens are not in the "
                 "model's vocabulary (<unk>)",
                 unk, *n);
    if (*n > m->cfg.max_len - 1)
        cli_warn("generate: --prompt has %d tokens; the model sees the last "
                 "%d of them (its positions)",
                 *n, m->cfg.max_len - 1);
    *hidden = *n == 0;
    if (*hidden) {
        int32_t nl = qkv_vocab_find(&d->sv, "\n", 1);
        ids[(*n)++] = nl != QKV_UNK ? nl : QKV_N_SPECIAL;
    }
    return ids;
}

int cmd_generate(int argc, char **argv) {
    gen_opts o = {"", "", "", 200, 0, 1, 0, 0, 1.0f, 0.0f, 0};
    parse(&o, argc, argv);
    qkv_model m;
    cli_data d;
    cli_open_model("generate", o.ckpt, o.config, &m, &d);
    if (m.cfg.kind != QKV_MODEL_DECODER)
        cli_die("generate: --ckpt: %s is an encoder-decoder model; qkv "
                "generate continues text models (qkv train --text); use qkv "
                "decode",
                o.ckpt);
    if (!d.text)
        cli_die("generate: --ckpt: %s was trained on %s, not on a text (qkv "
                "train --text); use qkv decode",
                o.ckpt, d.corpus ? "a TSV corpus" : "a generated task");
    int n, hidden;
    int32_t *ids = encode_prompt(&o, &m, &d, &n, &hidden);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    cli_set_precision("generate", &g, o.precision, 1);
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, (uint64_t)o.seed, 4);
    if (!hidden) fputs(o.prompt, stdout);
    cli_generate(&m, &g, &d, ids, n, o.max_tokens, o.temp, o.top_k, o.top_p,
                 o.stop_at_eos, &rng, stdout);
    printf("\n");
    free(ids);
    qkv_graph_free(&g);
    cli_data_free(&d);
    qkv_model_free(&m);
    return 0;
}
