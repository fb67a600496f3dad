/* decode.c - `qkv decode`: translate, or continue, text with a checkpoint.
 *
 *   qkv decode --ckpt runs/dates/ckpt.safetensors "3 March 2001"
 *   echo "we see a dog ." | qkv decode --ckpt runs/grammar/ckpt.safetensors
 *   qkv decode --ckpt runs/copy/ckpt.safetensors --beam 4 "3 9 4 4 10"
 *   qkv decode --ckpt torch.safetensors --config model.json "3 9 4 4 10"
 *
 * Each argument (or, with none, each line of stdin) is one input: an
 * encoder-decoder translates it (greedy, or beam search with --beam), a
 * decoder-only model continues it (greedy, or sampling with --temp and
 * --top-k). One output line per input. Input tokens the vocabulary lacks
 * become <unk>, and a warning on stderr names them, once per input.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct decode_opts {
    const char *ckpt, *config;
    int beam, max_out, top_k, seed, threads;
    float alpha, temp;
    int precision; /* qkv_precision */
} decode_opts;

/* What decoding one input needs, kept from one input to the next. */
typedef struct decoder {
    decode_opts o;
    qkv_model m;
    cli_data d;
    qkv_graph g;
    qkv_pcg32 rng; /* sampling */
    int eos;
    int32_t *ids, *out;
    int cap;
    char *text;
    size_t text_cap;
} decoder;

enum { MAX_INPUTS = 64 };

static void parse(decode_opts *o, int argc, char **argv, const char **inputs,
                  int *n_in) {
    const flag flags[] = {
        {"ckpt", FLAG_STR, &o->ckpt, NULL,
         "checkpoint written by qkv train, or weights (qkv export)", 0, 0},
        {"config", FLAG_STR, &o->config, NULL,
         "model config JSON for weights written elsewhere (PyTorch)", 0, 0},
        {"beam", FLAG_INT, &o->beam, NULL,
         "beam width (1: greedy; encoder-decoder only)", 1, 256},
        {"alpha", FLAG_FLOAT, &o->alpha, NULL, "beam length penalty (GNMT)", 0,
         10},
        {"max-out", FLAG_INT, &o->max_out, NULL,
         "longest output in tokens (0: twice the input + 8)", 0,
         QKV_MAX_POSITIONS},
        {"temp", FLAG_FLOAT, &o->temp, NULL,
         "decoder-only: sampling temperature (0: greedy)", 0, 100},
        {"top-k", FLAG_INT, &o->top_k, NULL,
         "decoder-only: sample among the k likeliest (0: all)", 0,
         QKV_MAX_VOCAB},
        {"seed", FLAG_INT, &o->seed, NULL, "decoder-only: PCG32 seed", 0, 0},
        CLI_PRECISION_FLAG(&o->precision),
        {"threads", FLAG_INT, &o->threads, NULL,
         "OpenMP threads (0: the free cores, following the load)", 0,
         cli_max_threads()},
    };
    cli_parse("decode",
              "--ckpt FILE [flags] [\"text\" ...]  (or lines on stdin)", flags,
              (int)(sizeof flags / sizeof flags[0]), argc, argv, 2, inputs,
              MAX_INPUTS, n_in);
    if (o->threads) qkv_set_threads(o->threads);
}

/* The model and what goes with it; flags that do not fit it are refused. */
static void open_decoder(decoder *x) {
    cli_open_model("decode", x->o.ckpt, x->o.config, &x->m, &x->d);
    if (x->d.text)
        cli_die("decode: %s is a language model of a text: continue a prompt "
                "with qkv generate --ckpt %s --prompt TEXT",
                x->o.ckpt, x->o.ckpt);
    if (x->o.beam > 1 && x->d.decoder_only)
        cli_die("decode: --beam needs an encoder-decoder model (use --temp "
                "and --top-k to sample)");
    if (!x->d.decoder_only && (x->o.temp > 0 || x->o.top_k))
        cli_die("decode: --temp and --top-k are for decoder-only models (use "
                "--beam)");
    qkv_graph_init(&x->g, 0);
    cli_set_precision("decode", &x->g, x->o.precision, 1);
    qkv_pcg32_seed(&x->rng, (uint64_t)x->o.seed, 4);
    x->eos = cli_data_eos(&x->d);
}

/* Input k: argument k, or the next line of stdin (its newline dropped);
 * NULL when there are no more. */
static const char *next_input(const char **inputs, int n_in, int k, char **line,
                              size_t *cap) {
    if (n_in) return k < n_in ? inputs[k] : NULL;
    ssize_t len = qkv_getline_max(line, cap, stdin, QKV_MAX_LINE);
    if (len == -1) return NULL;
    if (len == QKV_LINE_TOO_LONG)
        cli_die("decode: input %d: a line longer than %u bytes", k + 1,
                QKV_MAX_LINE);
    if ((size_t)len != strlen(*line))
        cli_die("decode: input %d: a NUL byte in the line (binary input?)",
                k + 1);
    while (len > 0 && ((*line)[len - 1] == '\n' || (*line)[len - 1] == '\r'))
        (*line)[--len] = 0;
    return *line;
}

/* One line on stderr when input k has tokens the vocabulary lacks: they
 * are decoded as <unk>, which a user should not have to guess. */
static void warn_unknown(const decoder *x, int k, const char *s) {
    char names[256];
    int n = cli_unknown_tokens(&x->d, s, names, sizeof names);
    if (n)
        cli_warn("decode: input %d: %d token%s not in the vocabulary became "
                 "<unk>: %s",
                 k + 1, n, n > 1 ? "s" : "", names);
}

/* Decodes the n ids of input k into x->out; returns the output's room L. */
static int decode_ids(decoder *x, int k, int n) {
    const qkv_model_config *c = &x->m.cfg;
    int dec = x->d.decoder_only;
    int P = dec ? n + 1 : n, room = dec ? c->max_len - P : c->max_len;
    if (room < 1 || (!dec && n > c->max_len))
        cli_die("decode: input %d has %d tokens; the model takes at most %d",
                k + 1, n, dec ? c->max_len - 2 : c->max_len);
    int L = x->o.max_out ? x->o.max_out : x->eos < 0 ? n : 2 * n + 8;
    if (L > room) L = room;
    x->out = qkv_realloc(x->out, (size_t)L * sizeof *x->out, "output");
    if (dec) {
        if (P > x->cap) {
            x->cap = P;
            x->ids = qkv_realloc(x->ids, (size_t)P * sizeof *x->ids, "input");
        }
        x->ids[n] = QKV_BOS;
        qkv_sample(&x->m, &x->g, x->ids, P, L, x->o.temp, x->o.top_k, 0.0f,
                   x->eos, &x->rng, x->out);
        return L;
    }
    if (x->o.beam > 1)
        cli_check_forward_memory("decode", &x->m, x->o.beam, n, L,
                                 "--beam or --max-out");
    qkv_beam_search(&x->m, &x->g, x->ids, NULL, n, x->o.beam, x->o.alpha,
                    QKV_BOS, x->eos, L, x->out, NULL);
    return L;
}

/* One output line: symbols for a task model, text for a corpus one. */
static void print_output(decoder *x, int L) {
    if (!x->d.corpus) {
        const char *sep = "";
        for (int j = 0; j < L && x->out[j] != QKV_PAD && x->out[j] != x->eos;
             j++, sep = " ")
            printf("%s%d", sep, x->out[j]);
        printf("\n");
    } else {
        cli_detokenize(&x->d, x->out, L, &x->text, &x->text_cap);
        printf("%s\n", x->text);
    }
    fflush(stdout);
}

int cmd_decode(int argc, char **argv) {
    static decoder dx;
    decoder *x = &dx;
    memset(x, 0, sizeof *x);
    x->o = (decode_opts){"", "", 1, 0, 0, 1, 0, 0.6f, 0.0f, 0};
    const char *inputs[MAX_INPUTS], *s;
    int n_in = 0;
    parse(&x->o, argc, argv, inputs, &n_in);
    open_decoder(x);
    char *line = NULL, err[512];
    size_t line_cap = 0;
    for (int k = 0; (s = next_input(inputs, n_in, k, &line, &line_cap)); k++) {
        int n = 0;
        if (cli_encode_input(&x->d, s, &x->ids, &x->cap, &n, err, sizeof err))
            cli_die("decode: input %d: %s", k + 1, err);
        warn_unknown(x, k, s);
        if (n == 0) { /* nothing to translate */
            printf("\n");
            continue;
        }
        print_output(x, decode_ids(x, k, n));
    }
    free(line);
    free(x->text);
    free(x->ids);
    free(x->out);
    qkv_graph_free(&x->g);
    cli_data_free(&x->d);
    qkv_model_free(&x->m);
    return 0;
}
