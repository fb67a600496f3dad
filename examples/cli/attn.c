/* attn.c - `qkv attn`: heatmaps of every attention layer and head of a
 * checkpoint on one input.
 *
 * The input is decoded greedily, then run once more through the model
 * teacher-forced (decoder input: bos and the output, without its eos; for a
 * decoder-only model the one sequence x bos y) to collect the weights:
 *   encoder self-attention   (n_enc, H, S, S)  rows and columns: the source
 *   decoder self-attention   (n_dec, H, T, T)  rows and columns: bos + output
 *   decoder cross-attention  (n_dec, H, T, S)  rows: bos + output, columns:
 *                                              the source
 * Row t of a decoder map is the step that read token t and predicted token
 * t + 1. One panel per layer and head, in one picture (gnuplot multiplot):
 * a row of panels per layer (encoder layers, then decoder self, then
 * decoder cross), a column per head, one shared colour scale 0..1. Beside
 * OUT.png go OUT.png.gp (the script; `gnuplot OUT.png.gp` redraws it) and
 * OUT.png.dat (the weights, one `matrix` block per panel: `index i` is panel i).
 *
 *   qkv attn --ckpt runs/grammar/ckpt.safetensors "we see a dog ." -o a.png
 *   qkv attn --ckpt runs/copy/ckpt.safetensors "3 4 5" --term dumb --layer 1
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum { K_ENC, K_SELF, K_CROSS, K_N };
static const char *const kind_name[K_N] = {"encoder", "decoder self",
                                           "decoder cross"};
static const char *const kind_flag[K_N] = {"enc", "self", "cross"};

/* One heatmap: the weights of one head of one attention layer. */
typedef struct panel {
    int kind, layer, head; /* 0-based */
    int rows, cols;
    const float *w;      /* (rows, cols): rows are queries, columns keys */
    char **ylab, **xlab; /* (rows), (cols) token labels */
} panel;

/* A gnuplot string expression for s (malloc'd): single-quoted, where no
 * backquote substitution happens. gnuplot 5.4 reads a string that starts
 * with '' as the empty string, so leading quotes go first in a
 * double-quoted string of their own: "'".'x''' is 'x'. */
static char *gp_quote(const char *s) {
    size_t cap = 2 * strlen(s) + 8;
    char *q = qkv_malloc(cap, "attn label");
    cli_gp_string(q, cap, s);
    return q;
}

/* Columns s takes on a terminal: its UTF-8 code points. */
static int text_width(const char *s) {
    int w = 0;
    for (; *s; s++) w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

/* A token as a tick label (malloc'd): a space becomes "␣" (character
 * models) and a control byte "\xNN", so every label is visible and has no
 * whitespace (the printed tables split on it). */
static char *token_label(const char *tok) {
    cli_buf b = {0};
    cli_bprintf(&b, "%s", "");
    for (const unsigned char *p = (const unsigned char *)tok; *p; p++) {
        if (*p == ' ')
            cli_bprintf(&b, "\xE2\x90\xA3");
        else if (*p < 0x20 || *p == 0x7F)
            cli_bprintf(&b, "\\x%02X", *p);
        else
            cli_bprintf(&b, "%c", *p);
    }
    return b.s;
}

/* Label of token id on the source (tgt 0) or target side. */
static char *id_label(const cli_data *d, int tgt, int32_t id) {
    if (d->corpus) return token_label((tgt ? &d->tv : &d->sv)->tokens[id]);
    char s[32];
    if (id == QKV_PAD || id == QKV_BOS || (id == QKV_EOS && d->task.use_eos))
        snprintf(s, sizeof s, "%s", qkv_special_tokens[id]);
    else
        snprintf(s, sizeof s, "%d", (int)id);
    return token_label(s);
}

/* ----------------------------------------------------------------- input */

/* ---------------------------------------------------------------- output */

/* The weights as aligned numbers, one table per panel, on stdout. */
static void print_tables(const panel *p, int n) {
    for (int i = 0; i < n; i++, p++) {
        int lw = 1, cw = 6;
        for (int r = 0; r < p->rows; r++)
            if (text_width(p->ylab[r]) > lw) lw = text_width(p->ylab[r]);
        for (int c = 0; c < p->cols; c++)
            if (text_width(p->xlab[c]) > cw) cw = text_width(p->xlab[c]);
        printf("\n%s layer %d head %d (%d x %d)\n%*s", kind_name[p->kind],
               p->layer + 1, p->head + 1, p->rows, p->cols, lw, "");
        for (int c = 0; c < p->cols; c++) /* pad by columns, not bytes */
            printf(" %*s%s", cw - text_width(p->xlab[c]), "", p->xlab[c]);
        printf("\n");
        for (int r = 0; r < p->rows; r++) {
            printf("%s%*s", p->ylab[r], lw - text_width(p->ylab[r]), "");
            for (int c = 0; c < p->cols; c++)
                printf(" %*.4f", cw, (double)p->w[(size_t)r * p->cols + c]);
            printf("\n");
        }
    }
}

/* The data file: one gnuplot `matrix` block per panel, two blank lines
 * apart, each after a comment naming it. */
static void write_data(cli_buf *b, const panel *p, int n) {
    cli_bprintf(b, "# qkv attn: attention weights, one block per panel "
                   "(gnuplot: index I matrix);\n"
                   "# rows are queries, columns keys; each row sums to 1\n");
    for (int i = 0; i < n; i++, p++) {
        cli_bprintf(b, "%s# index %d: %s layer %d head %d, %d x %d\n",
                    i ? "\n\n" : "", i, kind_name[p->kind], p->layer + 1,
                    p->head + 1, p->rows, p->cols);
        cli_bprintf(b, "# rows:");
        for (int r = 0; r < p->rows; r++) cli_bprintf(b, " %s", p->ylab[r]);
        cli_bprintf(b, "\n# columns:");
        for (int c = 0; c < p->cols; c++) cli_bprintf(b, " %s", p->xlab[c]);
        cli_bprintf(b, "\n");
        for (int r = 0; r < p->rows; r++)
            for (int c = 0; c < p->cols; c++)
                cli_bprintf(b, "%.6f%c", (double)p->w[(size_t)r * p->cols + c],
                            c + 1 < p->cols ? ' ' : '\n');
    }
}

/* "set xtics ('we' 0, 'see' 1, ...)" for labels lab[0..n). */
static void gp_tics(cli_buf *b, const char *axis, char **lab, int n) {
    cli_bprintf(b, "set %stics (", axis);
    for (int i = 0; i < n; i++) {
        char *q = gp_quote(lab[i]);
        cli_bprintf(b, "%s%s %d", i ? ", " : "", q, i);
        free(q);
    }
    cli_bprintf(b, ")\n");
}

/* The picture's layout in pixels: n panels in R rows and C columns, each
 * plot area `area` square, with room for tick labels and titles. */
typedef struct script_layout {
    int R, C, W, H, area;
    int left, right, bottom, top, gap_x, gap_y;
} script_layout;

/* The layout of n panels in C columns under title: 18 pixels per token
 * (less for long inputs), 7 per label character. */
static script_layout layout_of(const panel *p, int n, int C,
                               const char *title) {
    script_layout L = {.R = n / C, .C = C};
    int most = 1, ylw = 1, xlw = 1;
    for (int i = 0; i < n; i++) {
        if (p[i].rows > most) most = p[i].rows;
        if (p[i].cols > most) most = p[i].cols;
        for (int r = 0; r < p[i].rows; r++)
            if (text_width(p[i].ylab[r]) > ylw) ylw = text_width(p[i].ylab[r]);
        for (int c = 0; c < p[i].cols; c++)
            if (text_width(p[i].xlab[c]) > xlw) xlw = text_width(p[i].xlab[c]);
    }
    int cell = 600 / most < 18 ? (600 / most > 3 ? 600 / most : 3) : 18;
    L.area = most * cell > 150 ? most * cell : 150;
    int ylab = 7 * ylw + 14, xlab = 7 * xlw + 14, ttl = 28;
    L.gap_x = ylab + 16, L.gap_y = xlab + ttl + 6;
    L.left = ylab + 10, L.right = 90, L.bottom = xlab + 10, L.top = ttl + 36;
    L.W = L.left + C * L.area + (C - 1) * L.gap_x + L.right;
    if (L.W < 7 * text_width(title) + 40) L.W = 7 * text_width(title) + 40;
    L.H = L.bottom + L.R * L.area + (L.R - 1) * L.gap_y + L.top;
    return L;
}

/* The gnuplot script: n panels in a grid of n / C rows and C columns, each
 * plot area the same size; tick labels hang into the gaps between them. */
static void write_script(cli_buf *b, const panel *p, int n, int C,
                         const char *term, const char *pic, const char *dat,
                         const char *gp, const char *title) {
    script_layout L = layout_of(p, n, C, title);
    int W = L.W, H = L.H;
    char *qpic = gp_quote(pic), *qdat = gp_quote(dat),
         *qtitle = gp_quote(title);
    cli_bprintf(b,
                "# qkv attn: attention heatmaps. Redraw with: gnuplot %s\n"
                "# (from the directory qkv attn ran in, if the paths below are "
                "relative).\n"
                "# A row of panels per layer (encoder, then decoder self, then "
                "decoder cross),\n"
                "# a column per head; panel i plots `index i` of the data file "
                "(rows: queries,\n"
                "# columns: keys). Decoder row t read token t and predicted "
                "token t + 1.\n"
                "set encoding utf8\n",
                gp);
    if (strcmp(term, "svg") == 0)
        cli_bprintf(b,
                    "set terminal svg size %d,%d font 'sans,9' noenhanced "
                    "background '#ffffff'\n",
                    W, H);
    else
        cli_bprintf(b,
                    "set terminal pngcairo size %d,%d font 'sans,9' "
                    "noenhanced\n",
                    W, H);
    cli_bprintf(
        b,
        "set output %s\n"
        "data = %s\n"
        "set palette defined (0 '#ffffff', 0.5 '#6baed6', 1 '#08306b')\n"
        "set cbrange [0:1]\nset cbtics 0.25\n"
        "set tics scale 0 nomirror\nset xtics rotate by 90 right\n"
        "set colorbox user origin screen %.4f, screen %.4f size screen "
        "%.4f, screen %.4f\n"
        "set multiplot layout %d,%d margins %.4f,%.4f,%.4f,%.4f spacing "
        "%.4f,%.4f title %s\n",
        qpic, qdat, 1.0 - (L.right - 22.0) / W, (double)L.bottom / H, 16.0 / W,
        (double)(H - L.top - L.bottom) / H, L.R, C, (double)L.left / W,
        1.0 - (double)L.right / W, (double)L.bottom / H,
        1.0 - (double)L.top / H, (double)L.gap_x / W, (double)L.gap_y / H,
        qtitle);
    for (int i = 0; i < n; i++) {
        if (!i || p[i].kind != p[i - 1].kind) { /* axes change with the kind */
            cli_bprintf(b, "set xrange [-0.5:%d.5]\nset yrange [%d.5:-0.5]\n",
                        p[i].cols - 1, p[i].rows - 1);
            gp_tics(b, "x", p[i].xlab, p[i].cols);
            gp_tics(b, "y", p[i].ylab, p[i].rows);
        }
        cli_bprintf(b,
                    "set title '%s layer %d head %d'\n"
                    "plot data index %d matrix with image notitle\n%s",
                    kind_name[p[i].kind], p[i].layer + 1, p[i].head + 1, i,
                    i ? "" : "unset colorbox\n");
    }
    cli_bprintf(b, "unset multiplot\n");
    free(qpic);
    free(qdat);
    free(qtitle);
}

/* path followed by suffix (malloc'd). */
static char *with_suffix(const char *path, const char *suffix) {
    cli_buf b = {0};
    cli_bprintf(&b, "%s%s", path, suffix);
    return b.s;
}

/* ---------------------------------------------------------------- command */

/* What the steps of qkv attn share: its flags, the model, the input and
 * output tokens, the weights collected and the panels cut from them. */
typedef struct attn_job {
    const char *ckpt, *out, *term, *kind, *text; /* text: the input */
    int layer, head, threads, dumb; /* layer, head: 1-based (0: all) */
    char *gp, *dat;                 /* beside out: its script and data */
    qkv_model m;
    cli_data d;
    qkv_graph g;
    int H, dec_only, most; /* most: layers of the deepest kind wanted */
    int n_layers[K_N], want[K_N];
    int32_t *src;  /* (n + 1): x, and bos for a decoder-only prompt */
    int n, P;      /* P: tokens of src the model reads */
    int32_t *y;    /* (max_out + 1): the greedy output */
    int k_out;     /* output tokens before eos */
    cli_buf said;  /* the output as text */
    int S, T;      /* source and decoder lengths, teacher-forced */
    int32_t *tgt;  /* (T): bos y (enc-dec) or x bos y */
    float *w[K_N]; /* (n_layers[k], H, rows, cols) */
    size_t per_layer[K_N];
    char **xlab, **ylab; /* (S), (T) token labels */
    panel *p;            /* (np) */
    int np;
} attn_job;

/* Parses qkv attn's flags and text into a and checks them (a bad one ends
 * the program); sets the threads. */
static void attn_parse(attn_job *a, int argc, char **argv) {
    a->ckpt = "", a->out = "", a->term = "", a->kind = "all";
    const flag flags[] = {
        {"ckpt", FLAG_STR, &a->ckpt, NULL, "checkpoint written by qkv train", 0,
         0},
        {"out", FLAG_STR, &a->out, NULL,
         "picture, also -o (none: attn.png, or attn.svg with --term svg); "
         "its gnuplot script and data go beside it (OUT.png.gp, OUT.png.dat)",
         0, 0},
        {"term", FLAG_STR, &a->term, "png|svg|dumb",
         "picture format (none: from --out's extension, else png); dumb: "
         "the weights as numbers on stdout, no files",
         0, 0},
        {"kind", FLAG_STR, &a->kind, "enc|self|cross|all",
         "encoder self-, decoder self- or cross-attention, or all", 0, 0},
        {"layer", FLAG_INT, &a->layer, NULL,
         "only this layer, 1-based (0: all)", 0, 0},
        {"head", FLAG_INT, &a->head, NULL, "only this head, 1-based (0: all)",
         0, 0},
        {"threads", FLAG_INT, &a->threads, NULL,
         "OpenMP threads (0: the free cores, following the load)", 0,
         cli_max_threads()},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    /* -o is --out: the one short flag, as in cc -o */
    char **args = qkv_malloc((size_t)argc * sizeof *args, "attn args");
    for (int i = 0; i < argc; i++)
        args[i] = strcmp(argv[i], "-o") == 0 ? "--out" : argv[i];
    const char *text[2];
    int n_text = 0;
    cli_parse("attn",
              "--ckpt FILE \"text\" [-o attn.png] [--term png|svg|dumb] "
              "[--kind enc|self|cross|all] [--layer L] [--head H]",
              flags, nf, argc, args, 2, text, 2, &n_text);
    free(args);
    if (n_text != 1)
        cli_die("attn: give one text to look at, e.g. qkv attn --ckpt FILE "
                "\"we see a dog .\"%s",
                n_text ? " (quote it)" : "");
    a->text = text[0];
    if (a->layer < 0)
        cli_die("attn: --layer must be >= 1 (0: all), got %d", a->layer);
    if (a->head < 0)
        cli_die("attn: --head must be >= 1 (0: all), got %d", a->head);
    if (a->threads < 0)
        cli_die("attn: --threads must be >= 0, got %d", a->threads);
    if (!*a->term) {
        size_t n = strlen(a->out);
        a->term = n > 4 && strcmp(a->out + n - 4, ".svg") == 0 ? "svg" : "png";
    }
    a->dumb = strcmp(a->term, "dumb") == 0;
    if (a->dumb && *a->out)
        cli_die("attn: --term dumb prints the weights and writes no picture; "
                "drop --out");
    cli_check_name("attn", "--out", a->out);
    if (!*a->out)
        a->out = strcmp(a->term, "svg") == 0 ? "attn.svg" : "attn.png";
    /* named after the whole file: attn.png.gp and attn.svg.gp both live */
    a->gp = with_suffix(a->out, ".gp"), a->dat = with_suffix(a->out, ".dat");
    if (a->threads) qkv_set_threads(a->threads);
}

/* Loads the model of a->ckpt and checks --kind, --layer and --head
 * against it (a bad one ends the program). */
static void attn_model(attn_job *a) {
    cli_load_model("attn", a->ckpt, &a->m, &a->d);
    const qkv_model_config *cfg = &a->m.cfg;
    int dec_only = a->d.decoder_only;
    a->H = cfg->heads, a->dec_only = dec_only;
    a->n_layers[K_ENC] = dec_only ? 0 : cfg->n_enc;
    a->n_layers[K_SELF] = cfg->n_dec;
    a->n_layers[K_CROSS] = dec_only ? 0 : cfg->n_dec;
    for (int k = 0; k < K_N; k++) a->want[k] = 1;
    if (strcmp(a->kind, "all") != 0)
        for (int k = 0; k < K_N; k++)
            a->want[k] = strcmp(a->kind, kind_flag[k]) == 0;
    if (dec_only && !a->want[K_SELF])
        cli_die("attn: --kind %s: %s is a decoder-only model (no encoder, no "
                "cross-attention); use --kind self",
                a->kind, a->ckpt);
    a->most = 0;
    for (int k = 0; k < K_N; k++)
        if (a->want[k] && a->n_layers[k] > a->most) a->most = a->n_layers[k];
    if (a->layer > a->most) {
        if (dec_only)
            cli_die("attn: --layer %d is out of range: the model has %d "
                    "layers",
                    a->layer, a->most);
        cli_die("attn: --layer %d is out of range: the model has %d encoder "
                "and %d decoder layers",
                a->layer, cfg->n_enc, cfg->n_dec);
    }
    if (a->head > a->H)
        cli_die("attn: --head %d is out of range: the model has %d heads",
                a->head, a->H);
}

/* Encodes the text into a->src (a bad text ends the program), decodes it
 * greedily into a->y and prints the output on stdout. */
static void attn_decode(attn_job *a) {
    const cli_data *d = &a->d;
    int cap = 0, dec_only = a->dec_only;
    char err[512];
    if (cli_encode_input(&a->d, a->text, &a->src, &cap, &a->n, err, sizeof err))
        cli_die("attn: the text: %s", err);
    int n = a->n;
    if (n == 0) cli_die("attn: the text is empty (no tokens)");
    int L = a->m.cfg.max_len, most_in = dec_only ? L - 2 : L;
    if (n > most_in)
        cli_die("attn: the text has %d tokens; the model takes at most %d", n,
                most_in);
    int eos = d->corpus || d->task.use_eos ? QKV_EOS : -1;
    /* room for the output: the teacher-forced decoder input, bos y or
     * x bos y, must fit the model's positions */
    int room = dec_only ? L - n - 1 : L - 1, max_out = eos < 0 ? n : 2 * n + 8;
    if (max_out > room) max_out = room;
    a->P = dec_only ? n + 1 : n;
    a->src[n] = QKV_BOS;
    a->y = qkv_malloc(((size_t)max_out + 1) * sizeof *a->y, "attn output");
    qkv_graph_init(&a->g, 0);
    qkv_greedy(&a->m, &a->g, a->src, NULL, 1, a->P, QKV_BOS, eos, max_out,
               a->y);
    int k_out = 0;
    while (k_out < max_out && a->y[k_out] != eos && a->y[k_out] != QKV_PAD)
        k_out++;
    a->k_out = k_out;
    if (d->corpus) {
        cli_detokenize(d, a->y, k_out, &a->said.s, &a->said.cap);
    } else {
        cli_bprintf(&a->said, "%s", "");
        for (int j = 0; j < k_out; j++)
            cli_bprintf(&a->said, "%s%d", j ? " " : "", a->y[j]);
    }
    printf("%s\n", a->said.s);
    fflush(stdout);
}

/* Runs the input and output once more, teacher-forced, collecting every
 * layer's attention weights into a->w, and labels their rows and columns. */
static void attn_weights(attn_job *a) {
    int dec_only = a->dec_only, n = a->n, k_out = a->k_out, H = a->H;
    int S = dec_only ? 0 : n, T = (dec_only ? a->P : 1) + k_out;
    a->S = S, a->T = T;
    int32_t *tgt = a->tgt = qkv_malloc((size_t)T * sizeof *tgt, "attn input");
    if (dec_only) memcpy(tgt, a->src, (size_t)a->P * sizeof *tgt);
    tgt[T - k_out - 1] = QKV_BOS;
    memcpy(tgt + T - k_out, a->y, (size_t)k_out * sizeof *tgt);
    a->per_layer[K_ENC] = (size_t)H * S * S;
    a->per_layer[K_SELF] = (size_t)H * T * T;
    a->per_layer[K_CROSS] = (size_t)H * T * S;
    for (int k = 0; k < K_N; k++) /* + 1: never 0 bytes */
        a->w[k] = qkv_malloc(
            a->per_layer[k] * (size_t)a->n_layers[k] * sizeof(float) + 1,
            "attn weights");
    qkv_graph *g = &a->g;
    qkv_graph_set_grad(g, 0);
    g->training = 0;
    qkv_graph_reset(g);
    qkv_tensor *mem = dec_only ? NULL
                               : qkv_model_encoder_forward(
                                     &a->m, g, a->src, NULL, 1, S, a->w[K_ENC]);
    qkv_model_decoder_forward(&a->m, g, tgt, NULL, 1, T, mem, NULL,
                              a->w[K_SELF], dec_only ? NULL : a->w[K_CROSS]);
    a->xlab = qkv_malloc(((size_t)S + 1) * sizeof *a->xlab, "attn labels");
    a->ylab = qkv_malloc((size_t)T * sizeof *a->ylab, "attn labels");
    for (int i = 0; i < S; i++) a->xlab[i] = id_label(&a->d, 0, a->src[i]);
    for (int t = 0; t < T; t++) /* a decoder-only prompt is source text */
        a->ylab[t] = id_label(&a->d, !(dec_only && t < n), tgt[t]);
}

/* Cuts a panel for each layer and head of each kind the flags ask for. */
static void attn_panels(attn_job *a) {
    int H = a->H, S = a->S, T = a->T;
    a->p = qkv_malloc((size_t)(3 * (a->most ? a->most : 1)) * H * sizeof *a->p,
                      "attn panels");
    a->np = 0;
    for (int k = 0; k < K_N; k++)
        for (int l = 0; l < a->n_layers[k]; l++)
            for (int h = 0; h < H; h++) {
                if (!a->want[k] || (a->layer && l != a->layer - 1) ||
                    (a->head && h != a->head - 1))
                    continue;
                panel *q = &a->p[a->np++];
                q->kind = k, q->layer = l, q->head = h;
                q->rows = k == K_ENC ? S : T;
                q->cols = k == K_SELF ? T : S;
                q->w = a->w[k] + a->per_layer[k] * l +
                       (size_t)h * q->rows * q->cols;
                q->ylab = k == K_ENC ? a->xlab : a->ylab;
                q->xlab = k == K_SELF ? a->ylab : a->xlab;
            }
}

/* Writes the data and the script beside a->out and runs gnuplot on it.
 * 0, or 1 when gnuplot failed. */
static int attn_draw(const attn_job *a) {
    const char *out = a->out, *slash = strrchr(out, '/');
    if (slash && slash > out) {
        char *dir = strndup(out, (size_t)(slash - out));
        QKV_CHECK(dir, "out of memory");
        cli_make_dirs("attn", dir);
        free(dir);
    }
    cli_buf data = {0}, script = {0}, title = {0};
    write_data(&data, a->p, a->np);
    cli_write_file("attn", a->dat, data.s);
    cli_bprintf(&title, "%s \xE2\x86\x92 %s", a->text, a->said.s);
    for (char *c = title.s; *c; c++) /* one line, for gnuplot */
        if ((unsigned char)*c < 0x20) *c = ' ';
    write_script(&script, a->p, a->np, a->head ? 1 : a->H, a->term, out, a->dat,
                 a->gp, title.s);
    int rc = cli_gnuplot("attn", a->gp, script.s) ? 1 : 0;
    if (!rc)
        fprintf(stderr, "qkv attn: wrote %s (script %s, data %s)\n", out, a->gp,
                a->dat);
    free(data.s);
    free(script.s);
    free(title.s);
    return rc;
}

/* Frees what the steps of qkv attn allocated. */
static void attn_job_free(attn_job *a) {
    free(a->gp);
    free(a->dat);
    free(a->p);
    for (int i = 0; i < a->S; i++) free(a->xlab[i]);
    for (int t = 0; t < a->T; t++) free(a->ylab[t]);
    free(a->xlab);
    free(a->ylab);
    for (int k = 0; k < K_N; k++) free(a->w[k]);
    free(a->tgt);
    free(a->y);
    free(a->said.s);
    free(a->src);
    qkv_graph_free(&a->g);
    cli_data_free(&a->d);
    qkv_model_free(&a->m);
}

/* qkv attn: parse, load, decode, collect the weights, then print or draw. */
int cmd_attn(int argc, char **argv) {
    attn_job a = {0};
    attn_parse(&a, argc, argv);
    attn_model(&a);
    attn_decode(&a);
    attn_weights(&a);
    attn_panels(&a);
    int rc = 0;
    if (a.dumb)
        print_tables(a.p, a.np);
    else
        rc = attn_draw(&a);
    attn_job_free(&a);
    return rc;
}
