/* cli.h - what the qkv subcommands share: the flag table, errors, files, and
 * a run's data (a generated task or a TSV corpus with its vocabularies).
 *
 * Every flag of a command lives in one table (name, type, where it goes,
 * help), which the parser, --help and config.json all read, so they cannot
 * disagree. User errors end the program through cli_die: one line on stderr,
 * "qkv: CMD: what was wrong", exit status 2.
 *
 *   flag flags[] = {{"steps", FLAG_INT, &steps, NULL, "training steps"}};
 *   cli_parse("train", "[flags]", flags, 1, argc, argv, 2, NULL, 0, NULL);
 */
#ifndef QKV_CLI_H
#define QKV_CLI_H

#include <float.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "bleu.h"
#include "checkpoint.h"
#include "config.h"
#include "corpus.h"
#include "decode.h"
#include "tasks.h"

/* ------------------------------------------------------------------ flags */

typedef enum flag_type {
    FLAG_INT,
    FLAG_FLOAT,
    FLAG_STR,
    FLAG_BOOL,
    FLAG_ENUM /* int*: the index of the value among choices */
} flag_type;

typedef struct flag {
    const char *name; /* without the leading "--" */
    flag_type type;
    void *dst;           /* int*, float*, const char**, int*, int* */
    const char *choices; /* FLAG_STR: "a|b|c", or NULL for any string;
                          * FLAG_ENUM: "a|b|c" */
    const char *help;
    /* FLAG_INT, FLAG_FLOAT: the range a value must lie in (inclusive),
     * checked in the type the value is used in (a float flag is parsed as a
     * float: 1e39 is refused, not turned into inf). lo = CLI_POSITIVE: > 0.
     * lo == hi == 0: any int, or any finite float. */
    double lo, hi;
} flag;
#define CLI_POSITIVE 1.1754943508222875e-38 /* FLT_MIN: "> 0" for floats */

/* One line "qkv: ..." on stderr (control bytes shown as '?', so it stays one
 * line whatever a name holds) and exit(2). In an MPI job only rank 0 prints;
 * every rank exits. */
void cli_die(const char *fmt, ...) QKV_PRINTF(1, 2) __attribute__((noreturn));
/* The same line, without exiting. */
void cli_warn(const char *fmt, ...) QKV_PRINTF(1, 2);

/* Parses argv[first..] against flags (--name value, or --name=value).
 * Arguments that do not start with "--" are collected into positional (at
 * most max_pos of them, *n_pos counts them); with positional NULL any such
 * argument is an error. Returns 0; 1 if --help was asked for; -1 with one
 * line in err ("CMD: --lr wants a number ...") for a bad argument. Exits
 * nowhere: the fuzz harness calls it. */
int cli_parse_args(const char *cmd, const flag *flags, int n, int argc,
                   char **argv, int first, const char **positional, int max_pos,
                   int *n_pos, char *err, size_t errlen);
/* cli_parse_args for a command: a bad argument ends the program (one line,
 * exit 2); --help prints the flags with their defaults and exits 0. */
void cli_parse(const char *cmd, const char *usage, const flag *flags, int n,
               int argc, char **argv, int first, const char **positional,
               int max_pos, int *n_pos);
/* Sets flag f from the text v: its type and range checked. 0, or -1 and
 * one line in err. */
int cli_flag_set(const char *cmd, const flag *f, const char *v, char *err,
                 size_t errlen);
/* config.json: every flag's value, as a JSON object (malloc'd). */
char *cli_flags_json(const flag *flags, int n);
/* Sets every flag found in the JSON object j (strings point into j), each
 * checked as the flag itself would be (type, choices, range): saved settings
 * are input too. 0, or -1 and one line in err naming the setting. */
int cli_flags_from_json_err(const char *cmd, const flag *flags, int n,
                            const void *j /* const cJSON * */, char *err,
                            size_t errlen);
/* The flags of a library config table (config.h): one per field that has
 * a flag name, pointing into obj, written to out (at most max). Returns how
 * many. */
int cli_flags_from_fields(flag *out, int max, const qkv_field *fields, int n,
                          void *obj);
/* qkv train, which qkv sweep calls for each cell (train.c). */
int cmd_train(int argc, char **argv);
/* qkv train's flag table at its defaults (the fuzz harness parses with
 * it): *out points at it; returns its length. */
int cli_train_flags(flag **out);
/* 1 if qkv train's flag --name (text after a '=' ignored) takes a value, 0
 * if it is a switch; 1 for a flag qkv train does not have. */
int cli_train_flag_takes_value(const char *name);
/* The most threads --threads takes: 4 per CPU this process may use (more
 * only cost memory: libgomp gives each its stack). */
int cli_max_threads(void);

/* ------------------------------------------------------------------ files */

/* Text built with printf-style appends (gnuplot scripts, data blocks);
 * start from {0}, free(b.s) when done. s is always NUL-terminated. */
typedef struct cli_buf {
    char *s;
    size_t len, cap;
} cli_buf;
void cli_bprintf(cli_buf *b, const char *fmt, ...) QKV_PRINTF(2, 3);

void cli_make_dirs(const char *cmd, const char *dir); /* mkdir -p */
/* Writes path atomically (temp file + rename): never half a file; stale
 * temporaries of killed writers are removed first. */
void cli_write_file(const char *cmd, const char *path, const char *text);
/* The same for len bytes of data (a binary file). */
void cli_write_bytes(const char *cmd, const char *path, const void *data,
                     size_t len);

/* Ends the program (one line, exit 2) if a forward without a tape of B
 * rows of S + T tokens (evaluation, a step of decoding: the beam's rows)
 * would not fit beside m in the memory qkv may use; fix names the flags to
 * lower. */
void cli_check_forward_memory(const char *cmd, const qkv_model *m, int B, int S,
                              int T, const char *fix);

/* ----------------------------------------------------------- run folders */

/* A run directory (qkv train's --out, a sweep's): one writer at a time.
 * cli_run_lock takes an exclusive flock on the directory, held until the
 * process ends (the descriptor is returned and never closed); a second
 * writer is refused with one line (exit 2). The directory must exist. In an
 * MPI job only rank 0 locks (and writes); the others get -1. */
int cli_run_lock(const char *cmd, const char *dir);
/* 1 if dir holds a run: its ckpt.safetensors, log.csv or config.json. */
int cli_run_exists(const char *dir);
/* --force: removes the files a run writes in dir (checkpoint, log, config,
 * loss pictures and scripts, sweep's marker, stale temporaries); nothing
 * else in dir is touched. */
void cli_run_clear(const char *cmd, const char *dir);

/* ---------------------------------------------------------------- gnuplot */

/* Pictures are drawn by gnuplot (Debian gnuplot-nox), fed a script through a
 * pipe; the script is also written to gp_path, beside the picture, so users
 * can restyle and re-run it (gnuplot FILE.gp). Returns 0, or -1 after one
 * line on stderr: gnuplot missing ("... apt-get install gnuplot-nox"; the
 * script is still written) or failing. Output to the terminal (set terminal
 * dumb) goes to stdout. */
int cli_gnuplot(const char *cmd, const char *gp_path, const char *script);
/* 1 if a gnuplot program is on the PATH. */
int cli_have_gnuplot(void);
/* s as a gnuplot string expression ('it''s'; leading quotes as "'".'x'),
 * into dst of cap >= 2 strlen(s) + 8 bytes. Control bytes (a newline would
 * end the command and start one of the string's choosing) become spaces. */
void cli_gp_string(char *dst, size_t cap, const char *s);
/* 1 if s has a control byte (< 0x20 or DEL). */
int cli_has_control(const char *s);
/* Ends the program (exit 2) if the file or directory name s, given as
 * `what` ("--out"), has a control byte: such a name cannot go into a
 * gnuplot script (as a path, changing it would name another file) nor into
 * a one-line message. */
void cli_check_name(const char *cmd, const char *what, const char *s);

/* Loss-curve plots of training logs (plot.c): train loss raw (faint) and
 * smoothed, validation loss, and validation exact match on a second axis,
 * one colour per run, labelled. */
typedef struct cli_plot_opts {
    const char *out;   /* picture path (.png or .svg); NULL or "": terminal */
    const char *term;  /* "png", "svg", "dumb", or NULL: from out */
    const char *x;     /* "step", "tokens" or "seconds" */
    int logy;          /* log-scale loss axis */
    const char *title; /* NULL: none */
} cli_plot_opts;

/* Plots the n log.csv files logs (labels: one per run, NULL: the run's
 * directory name) and writes the script and the smoothed series beside the
 * picture (OUT.gp, OUT.dat: loss.png.gp). With out NULL or "" it draws in the terminal
 * and writes no file; with term "dumb" and an out path, it draws in the
 * terminal and writes the script beside out. Returns 0 or -1 (one line
 * printed). */
int cli_plot_logs(const char *cmd, const char *const *logs,
                  const char *const *labels, int n, const cli_plot_opts *o);

/* ------------------------------------------------------------- run data */

/* What a model was trained on, enough to encode inputs and score outputs:
 * a generated task, or a corpus tokenizer with its two vocabularies
 * (decoder-only models share one vocabulary: tv is a copy of sv). A plain
 * text (qkv train --text) is a corpus of one stream: corpus and text 1. */
typedef struct cli_data {
    int corpus;       /* 0: task, 1: TSV corpus or text */
    int text;         /* 1: a language model of a plain text (data/text.h) */
    int decoder_only; /* sequences x bos y eos in one decoder */
    qkv_task task;    /* task only */
    qkv_tok tok;      /* corpus only */
    qkv_vocab sv, tv; /* corpus only: source and target vocabularies (spm:
                       * each with its copy of the one shared model) */
} cli_data;

void cli_data_free(cli_data *d);
/* The end token of d's sequences (QKV_EOS), or -1 for a task of one length,
 * whose sequences have none: what the evaluator needs (eval.h). */
int cli_data_eos(const cli_data *d);
/* The <unk> id of d's vocabulary (QKV_UNK), or 0 for a task, which has
 * none (eval.h). */
int cli_data_unk(const cli_data *d);
/* Metadata pairs a checkpoint stores for d ("tok": word, char or spm;
 * "vocab.src", "vocab.tgt": JSON arrays of the tokens in id order; "data":
 * "text" for a text model; for spm, "spm.model": the SentencePiece model's
 * bytes in base64, RFC 4648, from which both vocabularies are rebuilt):
 * appends up to CLI_DATA_META pairs to keys/vals (values malloc'd; free them
 * with free()) and returns how many.
 */
#define CLI_DATA_META 5
int cli_data_meta(const cli_data *d, const char **keys, char **vals);
/* Rebuilds d from a checkpoint's metadata (the "cli" settings, and the
 * vocabularies for a corpus model). -1 and one line in err if it is bad. */
int cli_data_from_meta(cli_data *d, const qkv_st_file *meta, char *err,
                       size_t errlen);

/* eval.h's detokenizer (qkv_eval_opts.detok) for a corpus model, ctx its
 * cli_data: the text cli_detokenize gives, as snprintf returns it. */
size_t cli_eval_detok(const void *ctx, const int32_t *ids, int n, char *out,
                      size_t cap);

/* Text of the target ids[0..n) (up to eos) into *text, a malloc'd buffer
 * of *cap bytes that grows as needed (start with NULL, 0). */
void cli_detokenize(const cli_data *d, const int32_t *ids, int n, char **text,
                    size_t *cap);

/* Loads the model at path: a checkpoint qkv train wrote, a weights file
 * qkv export wrote, or (with config, a JSON file {"model": {...}, "data":
 * {...}}: see nn/checkpoint.h and cli_data_json) a safetensors file of
 * qkv's parameter names from anywhere (PyTorch). Builds *m and *d (free
 * with qkv_model_free and cli_data_free). config NULL or "": the file's own
 * metadata. Any problem ends the program with one line naming the file
 * ("qkv: CMD: --ckpt: ..." or "qkv: CMD: --config: ..."). */
void cli_open_model(const char *cmd, const char *path, const char *config,
                    qkv_model *m, cli_data *d);
/* cli_open_model without a config. */
void cli_load_model(const char *cmd, const char *path, qkv_model *m,
                    cli_data *d);
/* What an export or a config stores as "data": d's task settings ("task",
 * "vocab", "min-len", "max-len") or its tokenizer pairs (cli_data_meta:
 * "tok", "vocab.src", "vocab.tgt", vocabularies as JSON arrays), as one
 * JSON object (malloc'd). */
char *cli_data_json(const cli_data *d);
/* How many tokens of the input s the source vocabulary lacks (they encode
 * as <unk>); names (cap bytes) gets the first three, quoted and
 * comma-separated ("'Dog', 'zebra'", ", ..." when there are more). 0 for a
 * task model. */
int cli_unknown_tokens(const cli_data *d, const char *s, char *names,
                       size_t cap);

/* Token ids of one input line: text through the source vocabulary, or, for
 * a task model, symbols written as numbers ("3 4 5"). *ids (malloc'd, *cap
 * entries; start with NULL, 0) grows to hold the n ids plus one more (room
 * for a bos). -1 and a one-line reason in err if the input is bad. */
int cli_encode_input(const cli_data *d, const char *s, int32_t **ids, int *cap,
                     int *n, char *err, size_t errlen);

/* --precision: the linear layers' products in fp32 or bf16 (tape.h). */
#define CLI_PRECISION_FLAG(dst)                                                \
    {                                                                          \
        "precision", FLAG_ENUM, (dst), "fp32|bf16",                            \
            "the linear layers' matrix products: fp32, or bf16 operands with " \
            "fp32 "                                                            \
            "sums (as PyTorch's autocast)",                                    \
            0, 0                                                               \
    }
/* Dies (one line, exit 2) if precision is bf16 and QKV_BF16_KERNEL names
 * no kernel this CPU can run: called before a command writes anything. */
void cli_check_precision(const char *cmd, int precision);
/* Sets g's precision (a qkv_precision) after cli_check_precision; for bf16
 * on a CPU without a bf16 kernel, says once on stderr that the portable one
 * computes it (slower than fp32, the same numbers), else (unless quiet)
 * which kernel runs, and "(QKV_BF16_KERNEL)" when that chose it. */
void cli_set_precision(const char *cmd, qkv_graph *g, int precision, int quiet);

/* Continues the text model m (decoder-only) from the n ids of seq, which
 * has room for n + max_out, by max_out tokens (qkv_generate: temperature,
 * top_k, top_p, rng), past the model's positions if need be. Stops after an
 * eos only with stop_at_eos. Each new token's text goes to out (if
 * non-NULL) as it comes; returns the new length of seq. */
int cli_generate(qkv_model *m, qkv_graph *g, const cli_data *d, int32_t *seq,
                 int n, int max_out, float temperature, int top_k, float top_p,
                 int stop_at_eos, qkv_pcg32 *rng, FILE *out);

#endif
