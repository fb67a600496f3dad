/* plot.c - `qkv plot`: loss curves of training runs, drawn by gnuplot.
 *
 *   qkv plot runs/copy                -> runs/copy/loss.png, loss.png.gp,
 *                                        loss.png.dat
 *   qkv plot runs/a runs/b -o cmp.svg -> cmp.svg, cmp.svg.gp, cmp.svg.dat
 *   qkv plot runs/copy --term dumb    -> the terminal; runs/copy/loss-dumb.gp
 *   qkv plot --watch runs/copy        -> the terminal, redrawn as the run
 *                                        writes its log
 *
 * Each run's log.csv (step,tokens,seconds,lr,train_loss,val_loss,val_acc
 * [,val_bleu]) gives: the train loss raw (faint) and smoothed, the validation
 * loss, and on a second axis the validation exact match and BLEU in percent.
 * Runs are overlaid, one colour each, named by their directory in the key.
 *
 * The picture comes with two files beside it, named after the whole picture
 * file (so a loss.png and a loss.svg keep their own): NAME.gp, the gnuplot
 * script that drew it (gnuplot NAME.gp draws it again, from any directory:
 * files are named by absolute path), and NAME.dat, the train loss
 * smoothed in C (centred moving average, moving_average below). The script
 * reads the log.csv files themselves for everything else.
 */
/* realpath(3) is XSI */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define PLOT_PATH 4096

/* One run's log: the columns the C side needs, row by row. */
typedef struct plot_run {
    char log[PLOT_PATH]; /* absolute path of log.csv */
    char label[256];     /* key entry: the run's directory name */
    int rows;
    double *x;    /* (rows, 3): step, tokens, seconds (log.csv columns 1-3) */
    double *loss; /* (rows): train loss, NAN where the log says nan */
    int has_val, has_bleu; /* any validation row; any with BLEU */
    int token_acc;         /* val_acc is token accuracy (a language model of a
                    * text, config.json's "text"), not exact match */
} plot_run;

static void plot_run_free(plot_run *r) {
    free(r->x);
    free(r->loss);
    memset(r, 0, sizeof *r);
}

static const char log_header[] =
    "step,tokens,seconds,lr,train_loss,val_loss,val_acc";

/* Parses one data row into r (grown as needed). 0, or -1 if it is not a
 * row of numbers: five numbers, then up to three fields that may be empty. */
static int parse_row(plot_run *r, const char *line, int *cap) {
    double v[8];
    int n = 0;
    for (const char *f = line;; n++) {
        if (n >= 8) return -1;
        char *end;
        v[n] = strtod(f, &end);
        if (end == f) {
            if (n < 5) return -1;
            v[n] = NAN; /* an empty validation field */
        }
        if (*end != ',' && *end) return -1;
        if (!*end) break;
        f = end + 1;
    }
    if (++n < 5) return -1;
    if (r->rows == *cap) {
        *cap = *cap ? 2 * *cap : 1024;
        r->x = qkv_realloc(r->x, (size_t)*cap * 3 * sizeof *r->x, "log");
        r->loss = qkv_realloc(r->loss, (size_t)*cap * sizeof *r->loss, "log");
    }
    for (int k = 0; k < 3; k++) r->x[(size_t)r->rows * 3 + k] = v[k];
    r->loss[r->rows++] = isfinite(v[4]) ? v[4] : NAN;
    r->has_val |= n > 5 && !isnan(v[5]);
    r->has_bleu |= n > 7 && !isnan(v[7]);
    return 0;
}

enum { ROW_MAX = 4096 }; /* longest log line read; a log row is some 60 bytes */

/* Opens the log of a run (arg: its directory, or the log itself): path is
 * its name as given, r->log its absolute path, r->label the name of its
 * directory. The file, or NULL with one line in err naming it. */
static FILE *plot_run_open(plot_run *r, const char *arg, char *path, char *err,
                           size_t errlen) {
    struct stat st;
    int is_dir = stat(arg, &st) == 0 && S_ISDIR(st.st_mode);
    size_t len = strlen(arg);
    while (is_dir && len > 1 && arg[len - 1] == '/') len--;
    if (snprintf(path, PLOT_PATH, "%.*s%s", (int)len, arg,
                 is_dir ? "/log.csv" : "") >= PLOT_PATH) {
        snprintf(err, errlen, "path %s is too long", arg);
        return NULL;
    }
    char why[PLOT_PATH + 200];
    FILE *f = qkv_fopen_file(path, QKV_MAX_TEXT_FILE, NULL, why, sizeof why);
    if (!f) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    if (!realpath(path, r->log)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        fclose(f);
        return NULL;
    }
    if (cli_has_control(r->log)) {
        snprintf(err, errlen,
                 "a run whose path has a control character (a newline or a "
                 "tab?) cannot go into a gnuplot script; rename it");
        fclose(f);
        return NULL;
    }
    /* label: the name of the directory holding the log */
    char dir[PLOT_PATH];
    snprintf(dir, sizeof dir, "%s", r->log);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) *slash = 0;
    slash = strrchr(dir, '/');
    snprintf(r->label, sizeof r->label, "%.200s", slash ? slash + 1 : dir);
    /* a text run (qkv train --text) logs token accuracy as val_acc */
    char cfg[PLOT_PATH + 16], buf[8192];
    snprintf(cfg, sizeof cfg, "%.*s/config.json",
             (int)(strrchr(r->log, '/') - r->log), r->log);
    FILE *c = fopen(cfg, "r");
    if (c) {
        size_t n = fread(buf, 1, sizeof buf - 1, c);
        buf[n] = 0;
        r->token_acc = strstr(buf, "\"text\":") != NULL;
        fclose(c);
    }
    return f;
}

/* Reads the first line of the log f (named path) and checks that it is
 * log.csv's header. 0, or -1 with one line in err. */
static int read_header(FILE *f, const char *path, char *err, size_t errlen) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t got = qkv_getline_max(&line, &cap, f, ROW_MAX);
    int rc = 0;
    if (got == QKV_LINE_TOO_LONG || (got > 0 && (size_t)got != strlen(line))) {
        snprintf(err, errlen,
                 "%s is not a qkv training log (its first line "
                 "is binary or over %d bytes)",
                 path, ROW_MAX);
        rc = -1;
    } else if (got <= 0) {
        snprintf(err, errlen, "%s is empty: not a qkv training log", path);
        rc = -1;
    } else {
        line[strcspn(line, "\r\n")] = 0;
        size_t h = sizeof log_header - 1;
        if (strncmp(line, log_header, h) != 0 ||
            (line[h] && strcmp(line + h, ",val_bleu") != 0)) {
            snprintf(err, errlen,
                     "%s is not a qkv training log: its header is '%.60s', "
                     "not '%s,val_bleu'",
                     path, line, log_header);
            rc = -1;
        }
    }
    free(line);
    return rc;
}

/* Reads the rows of the log f (named path) after its header into r: at
 * least one. 0, or -1 with one line in err. */
static int read_rows(plot_run *r, FILE *f, const char *path, char *err,
                     size_t errlen) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0, rows_cap = 0;
    for (int lineno = 2;
         rc == 0 && (got = qkv_getline_max(&line, &cap, f, ROW_MAX)) != -1;
         lineno++) {
        if (got == QKV_LINE_TOO_LONG || (size_t)got != strlen(line)) {
            snprintf(err, errlen,
                     "%s line %d: not a row of numbers (binary, or over %d "
                     "bytes)",
                     path, lineno, ROW_MAX);
            rc = -1;
            break;
        }
        int whole = line[got - 1] == '\n';
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        /* a last line without its newline is a row still being written */
        if (parse_row(r, line, &rows_cap) && whole) {
            snprintf(err, errlen, "%s line %d: not a row of numbers: '%.60s'",
                     path, lineno, line);
            rc = -1;
        }
    }
    if (rc == 0 && r->rows == 0) {
        snprintf(err, errlen, "%s has no rows yet: an empty log", path);
        rc = -1;
    }
    free(line);
    return rc;
}

/* Reads a run: arg is its directory (holding log.csv) or the log itself.
 * 0, or -1 with one line in err naming the file. */
static int plot_run_load(plot_run *r, const char *arg, char *err,
                         size_t errlen) {
    memset(r, 0, sizeof *r);
    char path[PLOT_PATH];
    FILE *f = plot_run_open(r, arg, path, err, errlen);
    if (!f) return -1;
    int rc = read_header(f, path, err, errlen);
    if (rc == 0) rc = read_rows(r, f, path, err, errlen);
    fclose(f);
    if (rc) plot_run_free(r);
    return rc;
}

/* out[i] = the mean of the finite y[j] for j in [i - (w-1)/2, i + w/2]
 * (a window of w rows centred on i, shrinking at the ends; NAN if it holds
 * no finite value). Centred, it does not lag behind the curve as an
 * exponential average does. O(n) with prefix sums in double. */
static void moving_average(const double *y, int n, int w, double *out) {
    double *sum = qkv_malloc((size_t)(n + 1) * sizeof *sum, "smoothing");
    int *cnt = qkv_malloc((size_t)(n + 1) * sizeof *cnt, "smoothing");
    sum[0] = 0, cnt[0] = 0;
    for (int i = 0; i < n; i++) {
        int ok = isfinite(y[i]);
        sum[i + 1] = sum[i] + (ok ? y[i] : 0);
        cnt[i + 1] = cnt[i] + ok;
    }
    for (int i = 0; i < n; i++) {
        int lo = i - (w - 1) / 2, hi = i + w / 2 + 1; /* [lo, hi) */
        if (lo < 0) lo = 0;
        if (hi > n) hi = n;
        int c = cnt[hi] - cnt[lo];
        out[i] = c ? (sum[hi] - sum[lo]) / c : NAN;
    }
    free(cnt);
    free(sum);
}

/* ------------------------------------------------------- script building */

/* A gnuplot single-quoted string, in one of four rotating buffers (so a
 * printf can take several). */
static const char *gp_str(const char *s) {
    static char buf[4][2 * PLOT_PATH + 8];
    static int k;
    k = (k + 1) % 4;
    cli_gp_string(buf[k], sizeof buf[k], s);
    return buf[k];
}

/* Colours of runs 1, 2, ... (Tableau 10), cycled. */
static const char *const run_colour[] = {"1f77b4", "d62728", "2ca02c", "ff7f0e",
                                         "9467bd", "8c564b", "e377c2", "7f7f7f",
                                         "bcbd22", "17becf"};
#define N_COLOURS (int)(sizeof run_colour / sizeof *run_colour)

static int write_text(const char *cmd, const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    int ok = f && fputs(text, f) >= 0;
    if (f) ok = fclose(f) == 0 && ok;
    if (!ok) cli_warn("%s: cannot write %s: %s", cmd, path, strerror(errno));
    return ok ? 0 : -1;
}

/* "title 't'" where every curve is named (dumb), else "notitle". */
static const char *key_title(int named, const char *t) {
    static char buf[2 * 400 + 16];
    snprintf(buf, sizeof buf, "notitle");
    if (named) snprintf(buf, sizeof buf, "title %s", gp_str(t));
    return buf;
}

/* 1 if path ends in ext (".svg"), ignoring case. */
static int has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), m = strlen(ext);
    return n > m && strcasecmp(path + n - m, ext) == 0;
}

/* What the pieces of plot_runs share: the runs, the terminal and the files. */
typedef struct plot_job {
    const char *cmd;
    const plot_run *runs; /* (n) */
    int n, smooth; /* smooth: rows of the moving average (0: a 25th of each) */
    const cli_plot_opts *o;
    const char *out, *term; /* out: NULL for the terminal only */
    int dumb, svg, xcol;    /* xcol: log.csv column of the x axis, 1..3 */
    int any_val, any_bleu;  /* a run has validation rows; one has BLEU */
    /* absolute paths of the picture, the script and the data ("": none) */
    char pic[PLOT_PATH], gp[PLOT_PATH + 8], dat[PLOT_PATH + 8];
} plot_job;

/* Picks the terminal and x column of j from j->o. 0, or -1 after a
 * warning when the terminal is unknown or needs a file. */
static int plot_job_term(plot_job *j) {
    const cli_plot_opts *o = j->o;
    j->out = o->out && *o->out ? o->out : NULL;
    j->term = o->term && *o->term       ? o->term
              : !j->out                 ? "dumb"
              : has_ext(j->out, ".svg") ? "svg"
                                        : "png";
    j->dumb = strcmp(j->term, "dumb") == 0;
    j->svg = strcmp(j->term, "svg") == 0;
    if (!j->dumb && !j->svg && strcmp(j->term, "png") != 0) {
        cli_warn("%s: unknown terminal '%s' (png, svg or dumb)", j->cmd,
                 j->term);
        return -1;
    }
    if (!j->dumb && !j->out) {
        cli_warn("%s: a %s picture needs a file name", j->cmd, j->term);
        return -1;
    }
    const char *x = o->x && *o->x ? o->x : "step";
    j->xcol = strcmp(x, "tokens") == 0 ? 2 : strcmp(x, "seconds") == 0 ? 3 : 1;
    return 0;
}

/* Sets j's absolute paths of the picture, the script and the data from
 * j->out (left "" with no out). 0, or -1 after a warning. */
static int plot_job_paths(plot_job *j) {
    const char *out = j->out;
    if (!out) return 0;
    char dir[PLOT_PATH], real[PLOT_PATH];
    snprintf(dir, sizeof dir, "%s", out);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : out;
    if (slash == dir)
        dir[1] = 0;
    else if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    if (!realpath(dir, real)) {
        cli_warn("%s: cannot write %s: %s", j->cmd, out, strerror(errno));
        return -1;
    }
    if (snprintf(j->pic, sizeof j->pic, "%s/%s", strcmp(real, "/") ? real : "",
                 base) >= (int)sizeof j->pic) {
        cli_warn("%s: path %s is too long", j->cmd, out);
        return -1;
    }
    if (cli_has_control(j->pic)) {
        cli_warn("%s: the picture's path has a control character (a "
                 "newline or a tab?): it cannot go into a gnuplot script",
                 j->cmd);
        return -1;
    }
    /* named after the whole file: loss.png.gp and loss.svg.gp both live */
    snprintf(j->gp, sizeof j->gp, "%s.gp", j->pic);
    snprintf(j->dat, sizeof j->dat, "%s.dat", j->pic);
    return 0;
}

/* The smoothed train loss into d, one block per run (gnuplot's index);
 * notes in j whether any run has validation rows and BLEU. */
static void smooth_data(plot_job *j, cli_buf *d) {
    cli_bprintf(d,
                "# qkv plot: train loss smoothed by a centred moving average, "
                "one block per run\n");
    for (int r = 0; r < j->n; r++) {
        const plot_run *u = &j->runs[r];
        int w = j->smooth > 0 ? j->smooth : u->rows / 25 > 1 ? u->rows / 25 : 1;
        double *m = qkv_malloc((size_t)u->rows * sizeof *m, "smoothing");
        moving_average(u->loss, u->rows, w, m);
        cli_bprintf(d, "%s# run %d: %s, window %d rows\n", r ? "\n\n" : "", r,
                    u->log, w);
        cli_bprintf(d, "step,tokens,seconds,train_loss_smooth\n");
        for (int i = 0; i < u->rows; i++) {
            const double *v = u->x + (size_t)i * 3;
            cli_bprintf(d, "%.10g,%.10g,%.10g,", v[0], v[1], v[2]);
            if (isfinite(m[i])) cli_bprintf(d, "%.6g", m[i]);
            cli_bprintf(d, "\n");
        }
        free(m);
        j->any_val |= u->has_val;
        j->any_bleu |= u->has_bleu;
    }
}

/* The script's opening: what it draws, the terminal and the output. */
static void script_setup(const plot_job *j, cli_buf *s) {
    int n = j->n;
    cli_bprintf(
        s,
        "# qkv plot: loss curves of %d run%s.%s%s\n"
        "# log.csv columns: 1 step, 2 tokens, 3 seconds, 4 lr, "
        "5 train_loss,\n"
        "#   6 val_loss, 7 val_acc (exact match, 0..100), 8 val_bleu "
        "(0..100)\n"
        "# %s: the train loss smoothed by qkv (centred moving average "
        "over %s rows),\n"
        "#   one block (index) per run: columns 1-3 as in log.csv, 4 the "
        "loss\n",
        n, n > 1 ? "s" : "", *j->gp ? " Draw again: gnuplot " : "", j->gp,
        *j->dat ? j->dat : "$smooth",
        j->smooth > 0 ? "--smooth" : "a 25th of the");
    cli_bprintf(s, "xcol = %d  # x axis: 1 step, 2 tokens, 3 seconds\n",
                j->xcol);
    if (j->dumb) {
        cli_bprintf(s, "set terminal dumb size 110,34\n");
    } else if (j->svg) {
        cli_bprintf(s, "set terminal svg size 1100,600 dynamic font 'sans,12' "
                       "background rgb 'white'\n");
    } else {
        cli_bprintf(s,
                    "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
                    "    set terminal pngcairo size 1100,600 font 'sans,10'\n"
                    "} else {\n"
                    "    set terminal png size 1100,600\n"
                    "}\n");
    }
    if (!j->dumb) cli_bprintf(s, "set output %s\n", gp_str(j->pic));
    cli_bprintf(s, "set termoption noenhanced\n"
                   "set datafile separator ','\n"
                   "set datafile columnheaders\n");
}

/* What the runs' val_acc is: exact match, token accuracy (texts), or both. */
static const char *acc_name(const plot_job *j) {
    int text = 0, other = 0;
    for (int r = 0; r < j->n; r++) {
        text |= j->runs[r].token_acc;
        other |= !j->runs[r].token_acc;
    }
    return text && other ? "exact match / token accuracy"
           : text        ? "token accuracy"
                         : "exact match";
}

/* The script's title, axes and key, then its data: the logs' paths and
 * the smoothed loss d (inline when there is no data file). */
static void script_axes(const plot_job *j, cli_buf *s, const char *d) {
    int dumb = j->dumb, xcol = j->xcol;
    /* dumb cannot turn the y labels, so they go in the title */
    char t[400];
    snprintf(t, sizeof t, "%s", j->o->title ? j->o->title : "");
    if (dumb && !*t)
        snprintf(t, sizeof t, "cross-entropy loss (left axis)%s%s%s",
                 j->any_val ? ", " : "", j->any_val ? acc_name(j) : "",
                 !j->any_val   ? ""
                 : j->any_bleu ? " and BLEU in % (right axis)"
                               : " in % (right axis)");
    if (*t) cli_bprintf(s, "set title %s\n", gp_str(t));
    cli_bprintf(s, "set xlabel %s\n",
                gp_str(xcol == 1   ? "step"
                       : xcol == 2 ? "tokens"
                                   : "seconds (wall clock)"));
    if (xcol == 2) cli_bprintf(s, "set format x '%%.1s%%c'\n");
    if (!dumb) cli_bprintf(s, "set ylabel 'cross-entropy loss'\n");
    if (j->o->logy) /* ticks 1e-06, not 0.0000010 */
        cli_bprintf(s, "set logscale y\nset format y '%%g'\n");
    if (j->any_val)
        cli_bprintf(s, "set ytics nomirror\n"
                       "set y2range [0:100]\n"
                       "set y2tics 0, 20, 100\n");
    if (j->any_val && !dumb)
        cli_bprintf(s, "set y2label 'validation %s%s (%%)'\n", acc_name(j),
                    j->any_bleu ? " / BLEU" : "");
    cli_bprintf(s, "%sset key %s\n", dumb ? "" : "set grid\n",
                dumb ? "outside below" : "outside right top Left reverse");
    for (int r = 0; r < j->n; r++)
        cli_bprintf(s, "log%d = %s\n", r + 1, gp_str(j->runs[r].log));
    if (*j->dat) {
        cli_bprintf(s, "smooth = %s\n", gp_str(j->dat));
    } else {
        cli_bprintf(s, "$smooth << EOD\n%sEOD\nsmooth = '$smooth'\n", d);
    }
}

/* The script's plot command: graphic terminals show the runs' colours in
 * the key, the kinds of curve in grey after them; dumb draws every curve
 * with its own character, so each is named. */
static void script_plot(const plot_job *j, cli_buf *s) {
    int dumb = j->dumb;
    char t[400];
    cli_bprintf(s, "plot \\\n");
    for (int r = 0; r < j->n; r++) {
        const plot_run *u = &j->runs[r];
        const char *c = run_colour[r % N_COLOURS];
        /* past the colours, the train curves cycle dash types too: runs
         * N_COLOURS apart share a colour, not a line */
        char dt[16] = "";
        if (r >= N_COLOURS)
            snprintf(dt, sizeof dt, " dt %d", 1 + r / N_COLOURS);
        if (!dumb)
            cli_bprintf(s,
                        "    log%d using xcol:5 with lines lw 1 lc rgb '#b0%s' "
                        "notitle, \\\n",
                        r + 1, c);
        snprintf(t, sizeof t, "%s%s", u->label, dumb ? " train" : "");
        cli_bprintf(s,
                    "    smooth index %d using xcol:4 with lines lw 2%s lc rgb "
                    "'#%s' title %s, \\\n",
                    r, dt, c, gp_str(t));
        if (!u->has_val) continue;
        snprintf(t, sizeof t, "%s val loss", u->label);
        cli_bprintf(s,
                    "    log%d using xcol:6 with linespoints pt 7 ps 0.8 lw 1 "
                    "lc rgb '#%s' %s, \\\n",
                    r + 1, c, key_title(dumb, t));
        snprintf(t, sizeof t, "%s %s %%", u->label,
                 u->token_acc ? "acc" : "exact");
        cli_bprintf(s,
                    "    log%d using xcol:7 axes x1y2 with linespoints "
                    "pt 5 ps 0.8 lw 1 dt 2 lc rgb '#%s' %s, \\\n",
                    r + 1, c, key_title(dumb, t));
        if (!u->has_bleu) continue;
        snprintf(t, sizeof t, "%s BLEU", u->label);
        cli_bprintf(s,
                    "    log%d using xcol:8 axes x1y2 with linespoints pt 9 ps "
                    "0.9 lw 1 dt 3 lc rgb '#%s' %s, \\\n",
                    r + 1, c, key_title(dumb, t));
    }
    if (!dumb) {
        cli_bprintf(s, "    keyentry with lines lw 1 lc rgb '#b0404040' title "
                       "'train loss', \\\n"
                       "    keyentry with lines lw 2 lc rgb '#404040' title "
                       "'train loss, smoothed', \\\n");
        if (j->any_val)
            cli_bprintf(s,
                        "    keyentry with linespoints pt 7 ps 0.8 lc rgb "
                        "'#404040' title 'validation loss', \\\n"
                        "    keyentry with linespoints pt 5 ps 0.8 dt 2 lc "
                        "rgb '#404040' title '%s %% (right)', \\\n",
                        acc_name(j));
        if (j->any_bleu)
            cli_bprintf(s, "    keyentry with linespoints pt 9 ps 0.9 dt 3 lc "
                           "rgb '#404040' title 'BLEU (right)', \\\n");
    }
    s->len -= 4; /* the last ", \\\n" */
    cli_bprintf(s, "\n");
    if (!dumb) cli_bprintf(s, "set output\n");
}

/* Draws the runs as o says, smoothing the train loss over `smooth` rows (0:
 * a 25th of each run). Writes OUT.gp and OUT.dat beside OUT = o->out
 * (loss.png.gp, loss.png.dat); with no out (the terminal only), the smoothed
 * series goes inline into the script and no file is written. */
static int plot_runs(const char *cmd, const plot_run *runs, int n,
                     const cli_plot_opts *o, int smooth) {
    plot_job j = {.cmd = cmd, .runs = runs, .n = n, .smooth = smooth, .o = o};
    if (plot_job_term(&j) || plot_job_paths(&j)) return -1;
    cli_buf d = {0}, s = {0};
    smooth_data(&j, &d);
    script_setup(&j, &s);
    script_axes(&j, &s, d.s);
    script_plot(&j, &s);
    int rc = *j.dat ? write_text(cmd, j.dat, d.s) : 0;
    if (rc == 0) rc = cli_gnuplot(cmd, *j.gp ? j.gp : NULL, s.s);
    free(d.s);
    free(s.s);
    return rc;
}

/* If two runs share a directory name, every run is named by its path. */
static void unique_labels(plot_run *runs, int n, const char *const *args) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(runs[i].label, runs[j].label) == 0) {
                for (int k = 0; k < n; k++)
                    snprintf(runs[k].label, sizeof runs[k].label, "%s",
                             args[k]);
                return;
            }
}

int cli_plot_logs(const char *cmd, const char *const *logs,
                  const char *const *labels, int n, const cli_plot_opts *o) {
    plot_run *runs = qkv_calloc((size_t)n, sizeof *runs, "runs");
    char err[PLOT_PATH + 256];
    int rc = 0, loaded = 0;
    for (; loaded < n && rc == 0; loaded++)
        if (plot_run_load(&runs[loaded], logs[loaded], err, sizeof err)) {
            cli_warn("%s: %s", cmd, err);
            rc = -1;
        }
    if (rc == 0) {
        unique_labels(runs, n, logs);
        for (int i = 0; labels && i < n; i++)
            if (labels[i])
                snprintf(runs[i].label, sizeof runs[i].label, "%s", labels[i]);
        rc = plot_runs(cmd, runs, n, o, 0);
    }
    for (int i = 0; i < loaded; i++) plot_run_free(&runs[i]);
    free(runs);
    return rc;
}

/* ------------------------------------------------------------ qkv plot */

/* qkv plot's flags and runs. */
typedef struct plot_cmd {
    const char *out, *term, *x, *title; /* out, term: "" when not given */
    int logy, smooth, watch;
    float interval;   /* --watch: seconds between looks at the logs */
    const char **pos; /* (n) the runs: directories or log.csv files */
    int n;
} plot_cmd;

/* Parses qkv plot's arguments into c (c->pos malloc'd) and checks them;
 * a bad one ends the program. */
static void plot_parse(plot_cmd *c, int argc, char **argv) {
    *c = (plot_cmd){
        .out = "", .term = "", .x = "step", .title = "", .interval = 2.0f};
    const flag flags[] = {
        {"out", FLAG_STR, &c->out, NULL,
         "picture, .png or .svg (-o works too); none: loss.png as above", 0, 0},
        {"term", FLAG_STR, &c->term, "png|svg|dumb",
         "format; dumb draws in the terminal (script: loss-dumb.gp); none: "
         "from --out",
         0, 0},
        {"x", FLAG_STR, &c->x, "step|tokens|seconds", "x axis", 0, 0},
        {"logy", FLAG_BOOL, &c->logy, NULL, "log-scale loss axis", 0, 0},
        {"smooth", FLAG_INT, &c->smooth, NULL,
         "train loss smoothed over N steps (centred moving average; 0: a "
         "25th of the run, 1: none)",
         0, INT_MAX},
        {"title", FLAG_STR, &c->title, NULL, "title above the plot", 0, 0},
        {"watch", FLAG_BOOL, &c->watch, NULL,
         "draw in the terminal, again whenever a log grows, until the runs "
         "writing them end (or Ctrl-C)",
         0, 0},
        {"interval", FLAG_FLOAT, &c->interval, NULL,
         "--watch: seconds between looks at the logs", 0.05f, 3600},
    };
    int nf = (int)(sizeof flags / sizeof *flags);
    const char *usage =
        "RUN_DIR|log.csv ... [-o loss.png] [flags]\n\n"
        "Train loss (raw and smoothed) and validation loss, with validation\n"
        "exact match and BLEU in % on the right axis; one colour per run.\n"
        "The picture goes to RUN_DIR/loss.png, or for several runs to\n"
        "loss.png in their common parent directory (else the current one).\n"
        "Beside it, named after the whole picture file: loss.png.gp\n"
        "(gnuplot loss.png.gp draws it again) and loss.png.dat (the\n"
        "smoothed train loss).";
    /* -o is --out: cli_parse knows long flags only */
    char **args = qkv_malloc((size_t)argc * sizeof *args, "arguments");
    for (int i = 0; i < argc; i++)
        args[i] = strcmp(argv[i], "-o") == 0 ? "--out" : argv[i];
    c->pos = qkv_malloc((size_t)argc * sizeof *c->pos, "arguments");
    cli_parse("plot", usage, flags, nf, argc, args, 2, c->pos, argc, &c->n);
    free(args);
    const char *out = c->out, *term = c->term;
    if (c->n == 0)
        cli_die("plot: give one or more run directories or log.csv files "
                "(see qkv plot --help)");
    if (c->smooth < 0)
        cli_die("plot: --smooth must be >= 0, got %d", c->smooth);
    cli_check_name("plot", "--out", out);
    if (*out && *term && strcmp(term, "dumb") &&
        !has_ext(out, strcmp(term, "svg") ? ".png" : ".svg"))
        cli_die("plot: --out %s does not end in .%s (--term %s)", out, term,
                term);
    if (*out && !*term && !has_ext(out, ".png") && !has_ext(out, ".svg"))
        cli_die("plot: --out %s must end in .png or .svg (or give --term)",
                out);
    if (c->watch && (*out || (*term && strcmp(term, "dumb"))))
        cli_die("plot: --watch draws in the terminal; drop --out and --term");
}

/* ------------------------------------------------------------ --watch */

static volatile sig_atomic_t watch_stop;
static void on_watch_sigint(int sig) {
    (void)sig;
    watch_stop = 1;
}

/* 1 if a process holds a lock on the directory of the run arg (a qkv train
 * writing it holds one, cli_run_lock), 0 if none does, -1 if this cannot
 * be known. Read from /proc/locks (Linux), so that looking takes no lock:
 * a shared lock taken here, however briefly, could make a qkv train that is
 * starting in the directory fail as "in use". */
static int run_is_live(const char *arg) {
    char dir[PLOT_PATH];
    struct stat st;
    snprintf(dir, sizeof dir, "%s", arg);
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) { /* a log.csv */
        char *slash = strrchr(dir, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - arg) : 1,
                 slash ? arg : ".");
    }
    if (stat(dir, &st) != 0) return 0;
    FILE *f = fopen("/proc/locks", "r");
    if (!f) return -1;
    char line[512];
    int live = 0;
    while (!live && fgets(line, sizeof line, f)) {
        /* "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" */
        unsigned maj, min;
        unsigned long long ino;
        char *p = line;
        for (int field = 0; field < 5 && p; field++) {
            p = strchr(p, ' ');
            while (p && *p == ' ') p++;
        }
        if (p && sscanf(p, "%x:%x:%llu", &maj, &min, &ino) == 3)
            live = maj == major(st.st_dev) && min == minor(st.st_dev) &&
                   ino == (unsigned long long)st.st_ino;
    }
    fclose(f);
    return live;
}

/* The logs' sizes and modification times, to see when one grows. */
static unsigned long long logs_stamp(plot_run *runs, int n) {
    unsigned long long h = 0;
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (stat(runs[i].log, &st) == 0)
            h = h * 1000003u + (unsigned long long)st.st_size * 31u +
                (unsigned long long)st.st_mtime;
    }
    return h;
}

/* qkv plot --watch: draws the runs in the terminal whenever a log changes,
 * until no process writes any of them (having seen one that did, or at
 * once if none did: a finished run is drawn once) or Ctrl-C. */
static int plot_watch(const plot_cmd *c) {
    signal(SIGINT, on_watch_sigint);
    int n = c->n, tty = isatty(1), seen_live = 0, frames = 0;
    unsigned long long last = 0;
    struct timespec nap = {(time_t)c->interval,
                           (long)((c->interval - (int)c->interval) * 1e9)};
    for (;;) {
        int live = 0;
        for (int i = 0; i < n; i++) live |= run_is_live(c->pos[i]) == 1;
        seen_live |= live;
        plot_run *runs = qkv_calloc((size_t)n, sizeof *runs, "runs");
        char err[PLOT_PATH + 256];
        int loaded = 0, rc = 0;
        for (; loaded < n && rc == 0; loaded++)
            rc = plot_run_load(&runs[loaded], c->pos[loaded], err, sizeof err);
        if (rc) loaded--;
        unsigned long long stamp = rc ? 0 : logs_stamp(runs, n);
        if (rc == 0 && (frames == 0 || stamp != last)) {
            unique_labels(runs, n, c->pos);
            if (tty) printf("\033[H\033[2J"); /* home, clear */
            printf("qkv plot --watch: step %.0f of %s%s\n",
                   runs[0].x[(size_t)(runs[0].rows - 1) * 3], runs[0].label,
                   live ? " (Ctrl-C to stop)" : "");
            fflush(stdout);
            cli_plot_opts o = {NULL, "dumb", c->x, c->logy,
                               *c->title ? c->title : NULL};
            if (plot_runs("plot", runs, n, &o, c->smooth))
                cli_die("plot: --watch cannot draw (see above)");
            fflush(stdout);
            frames++;
            last = stamp;
        } else if (rc && !live && !seen_live && frames == 0) {
            cli_die("plot: %s", err); /* nothing there, nothing coming */
        }
        for (int i = 0; i < loaded; i++) plot_run_free(&runs[i]);
        free(runs);
        if (watch_stop || (!live && frames > 0)) break;
        nanosleep(&nap, NULL);
        if (watch_stop) break;
    }
    printf("qkv plot --watch: %s (%d drawing%s)\n",
           watch_stop ? "stopped" : "no run is writing the log", frames,
           frames == 1 ? "" : "s");
    return 0;
}

/* The picture's path: c->out, its directory made if need be; none given,
 * beside the run or in the runs' common parent, written into path. */
static const char *plot_out(const plot_cmd *c, const plot_run *runs, char *path,
                            size_t cap) {
    if (*c->out) {
        char dir[PLOT_PATH];
        snprintf(dir, sizeof dir, "%s", c->out);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            cli_make_dirs("plot", dir);
        }
        return c->out;
    }
    int n = c->n;
    char dir[PLOT_PATH];
    for (int i = 0; i < n; i++) {
        char d[PLOT_PATH];
        snprintf(d, sizeof d, "%s", runs[i].log);
        *strrchr(d, '/') = 0; /* the run's directory */
        char *slash = strrchr(d, '/');
        if (n > 1 && slash) *slash = 0; /* its parent */
        if (i == 0)
            snprintf(dir, sizeof dir, "%s", d);
        else if (strcmp(dir, d) != 0)
            snprintf(dir, sizeof dir, ".");
    }
    snprintf(path, cap, "%s/%s", *dir ? dir : "",
             strcmp(c->term, "dumb") == 0  ? "loss-dumb"
             : strcmp(c->term, "svg") == 0 ? "loss.svg"
                                           : "loss.png");
    return path;
}

/* qkv plot: parse, load the runs, draw them, say where the picture went. */
int cmd_plot(int argc, char **argv) {
    plot_cmd c;
    plot_parse(&c, argc, argv);
    if (c.watch) {
        int rc = plot_watch(&c);
        free(c.pos);
        return rc;
    }
    int n = c.n;
    plot_run *runs = qkv_calloc((size_t)n, sizeof *runs, "runs");
    char err[PLOT_PATH + 256];
    for (int i = 0; i < n; i++)
        if (plot_run_load(&runs[i], c.pos[i], err, sizeof err))
            cli_die("plot: %s", err);
    unique_labels(runs, n, c.pos);

    char path[PLOT_PATH + 32];
    const char *out = plot_out(&c, runs, path, sizeof path);
    cli_plot_opts o = {out, *c.term ? c.term : NULL, c.x, c.logy, c.title};
    int rc = plot_runs("plot", runs, n, &o, c.smooth);
    if (rc == 0 && strcmp(c.term, "dumb") != 0) {
        printf("wrote %s (draw again: gnuplot %s.gp)\n", out, out);
    }
    for (int i = 0; i < n; i++) plot_run_free(&runs[i]);
    free(runs);
    free(c.pos);
    return rc ? 1 : 0;
}
