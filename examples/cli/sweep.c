/* sweep.c - `qkv sweep`: train a grid of N (layers) x h (heads) and compare.
 *
 *   qkv sweep --N 1,2,4 --h 1,2,4,8 --task reverse --steps 600
 *   qkv sweep --N 1,2 --h 1,4,16 --data data/corpora/grammar/train.tsv \
 *             --valid data/corpora/grammar/valid.tsv --metric val_bleu
 *
 * Every cell is one `qkv train` run (the same command, called in this
 * process: the library's trainer) in OUT/N<n>-h<h>/, with the same data,
 * seed and budget; only N and h change. Under mpirun (an MPI build) the
 * ranks share the cells out, each training whole cells alone, and rank 0
 * writes the results. By default d_model stays fixed, so d_k = d_model / h shrinks as h
 * grows and the cost of attention stays the same: the paper's Table 3 row A
 * (Vaswani et al. 2017). --d-k K instead fixes d_k and sets d_model = h K.
 *
 * Results go to OUT/sweep.csv (rewritten after every cell), an aligned table
 * sorted by --metric, OUT/loss.png (every cell's curves overlaid) and
 * OUT/heatmap.png (the metric over N x h), each with its gnuplot script.
 * Run the same command again after an interruption: finished cells are
 * skipped and an interrupted one resumes from its checkpoint.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

enum { MAX_VALUES = 16, MAX_PASS = 128 };

/* The final figures of one cell. */
typedef struct cell {
    int N, h, d_model, done;
    long params;
    double train_loss, val_loss, val_acc, val_bleu, seconds, tok_per_s;
    /* --seeds: the runs averaged, and the sample standard deviation of
     * train_loss, val_loss, val_acc, val_bleu over them */
    int runs;
    double sd[4];
} cell;

/* "1,2,4" -> values; one line and exit 2 if it is not a list of positive
 * integers. */
static int parse_list(const char *flag_name, const char *s, int *v) {
    int n = 0;
    for (const char *p = s;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 1 || x > 4096 || (*end && *end != ','))
            cli_die("sweep: --%s wants a list of positive integers like "
                    "1,2,4, got '%s'",
                    flag_name, s);
        if (n == MAX_VALUES)
            cli_die("sweep: --%s has more than %d values", flag_name,
                    MAX_VALUES);
        for (int i = 0; i < n; i++)
            if (v[i] == x) cli_die("sweep: --%s repeats %ld", flag_name, x);
        v[n++] = (int)x;
        if (!*end) break;
        p = end + 1;
    }
    return n;
}

/* The last rows of a cell's log.csv: train loss averaged over the last
 * (up to) 50 steps, the last validation figures, seconds and tokens/s. */
static int read_results(const char *path, cell *c) {
    char err[600];
    FILE *f = qkv_fopen_file(path, QKV_MAX_TEXT_FILE, NULL, err, sizeof err);
    if (!f) return -1;
    char line[1024];
    enum { TAIL = 50 };
    double tail[TAIL];
    int rows = 0;
    double tokens = 0, secs = 0;
    c->val_loss = c->val_acc = c->val_bleu = NAN;
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        double col[8];
        char *s = line;
        for (int i = 0; i < 8; i++) {
            col[i] = *s && *s != ',' && *s != '\n' ? atof(s) : NAN;
            s = strchr(s, ',');
            if (!s) {
                for (int k = i + 1; k < 8; k++) col[k] = NAN;
                break;
            }
            s++;
        }
        tokens = col[1], secs = col[2];
        tail[rows++ % TAIL] = col[4];
        if (!isnan(col[5])) c->val_loss = col[5], c->val_acc = col[6];
        if (!isnan(col[7])) c->val_bleu = col[7];
    }
    fclose(f);
    if (rows == 0) return -1;
    int k = rows < TAIL ? rows : TAIL;
    double sum = 0;
    for (int i = 0; i < k; i++) sum += tail[i];
    c->train_loss = sum / k;
    c->seconds = secs;
    c->tok_per_s = secs > 0 ? tokens / secs : NAN;
    return 0;
}

static const char *metric_names[] = {"val_loss", "val_acc", "val_bleu",
                                     "train_loss"};

static double metric_of(const cell *c, int metric) {
    switch (metric) {
    case 0:
        return c->val_loss;
    case 1:
        return c->val_acc;
    case 2:
        return c->val_bleu;
    default:
        return c->train_loss;
    }
}

static int sort_metric; /* for cmp_cells */
static int cmp_cells(const void *a, const void *b) {
    double x = metric_of(a, sort_metric), y = metric_of(b, sort_metric);
    int lower = sort_metric == 0 || sort_metric == 3; /* losses */
    if (isnan(x) || isnan(y)) return isnan(x) - isnan(y);
    if (x == y) return 0;
    return (x < y) == lower ? -1 : 1;
}

/* A number for a CSV or table: empty / "-" when there is none. */
static void fmt(char *buf, size_t cap, double v, const char *f, int csv) {
    if (isnan(v))
        snprintf(buf, cap, "%s", csv ? "" : "-");
    else
        snprintf(buf, cap, f, v);
}

/* sweep.csv: a row per finished cell; with --seeds the figures are means,
 * and the last five columns give the seeds and the standard deviations. */
static void write_csv(const char *path, const cell *cells, int n, int seeds) {
    size_t cap = 256 + (size_t)n * 384, len = 0;
    char *text = qkv_malloc(cap, "sweep.csv");
    len += (size_t)snprintf(text + len, cap - len,
                            "N,h,d_model,d_k,params,train_loss,val_loss,"
                            "val_acc,val_bleu,seconds,tokens_per_s%s\n",
                            seeds ? ",seeds,train_loss_sd,val_loss_sd,"
                                    "val_acc_sd,val_bleu_sd"
                                  : "");
    for (int i = 0; i < n; i++) {
        const cell *c = &cells[i];
        if (!c->done) continue;
        char v[6][32];
        fmt(v[0], 32, c->train_loss, "%.6f", 1);
        fmt(v[1], 32, c->val_loss, "%.6f", 1);
        fmt(v[2], 32, c->val_acc, "%.2f", 1);
        fmt(v[3], 32, c->val_bleu, "%.2f", 1);
        fmt(v[4], 32, c->seconds, "%.3f", 1);
        fmt(v[5], 32, c->tok_per_s, "%.0f", 1);
        len += (size_t)snprintf(text + len, cap - len,
                                "%d,%d,%d,%d,%ld,%s,%s,%s,%s,%s,%s", c->N, c->h,
                                c->d_model, c->d_model / c->h, c->params, v[0],
                                v[1], v[2], v[3], v[4], v[5]);
        if (seeds) {
            char d[4][32];
            fmt(d[0], 32, c->sd[0], "%.6f", 1);
            fmt(d[1], 32, c->sd[1], "%.6f", 1);
            fmt(d[2], 32, c->sd[2], "%.4f", 1);
            fmt(d[3], 32, c->sd[3], "%.2f", 1);
            len += (size_t)snprintf(text + len, cap - len, ",%d,%s,%s,%s,%s",
                                    c->runs, d[0], d[1], d[2], d[3]);
        }
        len += (size_t)snprintf(text + len, cap - len, "\n");
    }
    cli_write_file("sweep", path, text);
    free(text);
}

/* A mean and its standard deviation ("1.2345±0.0123"), or just the value. */
static void fmt_sd(char *buf, size_t cap, double v, double sd, const char *f,
                   int seeds) {
    fmt(buf, cap, v, f, 0);
    if (seeds && !isnan(v) && !isnan(sd)) {
        size_t k = strlen(buf);
        snprintf(buf + k, cap - k, "±");
        k = strlen(buf);
        snprintf(buf + k, cap - k, f, sd);
    }
}

static void print_table(const cell *cells, int n, int metric, int seeds) {
    cell *s = qkv_malloc((size_t)n * sizeof *s, "table");
    int k = 0;
    for (int i = 0; i < n; i++)
        if (cells[i].done) s[k++] = cells[i];
    sort_metric = metric;
    qsort(s, (size_t)k, sizeof *s, cmp_cells);
    /* with --seeds a figure is "mean±sd": wider columns (± is 2 bytes) */
    int w1 = seeds ? 16 : 10, w2 = seeds ? 16 : 9, w3 = seeds ? 14 : 8;
    int u = seeds != 0; /* the extra byte of a "±" */
    printf("\n%3s %3s %7s %4s %9s %*s %*s %*s %*s %8s %9s   (sorted by %s%s)\n",
           "N", "h", "d_model", "d_k", "params", w1, "train_loss", w2,
           "val_loss", w3, seeds ? "val_acc %" : "val_acc", w3, "val_bleu",
           "seconds", "tokens/s", metric_names[metric],
           seeds ? "; mean±sd over the seeds" : "");
    for (int i = 0; i < k; i++) {
        const cell *c = &s[i];
        char v[6][32];
        fmt_sd(v[0], 32, c->train_loss, c->sd[0], "%.4f", seeds);
        fmt_sd(v[1], 32, c->val_loss, c->sd[1], "%.4f", seeds);
        fmt_sd(v[2], 32, c->val_acc, c->sd[2], "%.1f", seeds);
        if (!seeds && !isnan(c->val_acc)) strcat(v[2], "%");
        fmt_sd(v[3], 32, c->val_bleu, c->sd[3], "%.2f", seeds);
        fmt(v[4], 32, c->seconds, "%.1f", 0);
        fmt(v[5], 32, c->tok_per_s, "%.0f", 0);
        printf("%3d %3d %7d %4d %9ld %*s %*s %*s %*s %8s %9s\n", c->N, c->h,
               c->d_model, c->d_model / c->h, c->params, w1 + u, v[0], w2 + u,
               v[1], w3 + u, v[2], w3 + u, v[3], v[4], v[5]);
    }
    free(s);
}

/* The heatmap of the metric over N (rows) x h (columns), with the values
 * written in the cells. */
static int draw_heatmap(const char *out, const cell *cells, const int *Ns,
                        int nN, const int *hs, int nh, int metric,
                        const char *term, int seeds) {
    /* the script and data are named after the whole picture file
     * (heatmap.png.gp), as qkv plot's are */
    const char *pic = strcmp(term, "dumb") == 0  ? "heatmap-dumb"
                      : strcmp(term, "svg") == 0 ? "heatmap.svg"
                                                 : "heatmap.png";
    char dat[4200], gp[4200], png[4200], gp_name[64], dat_name[64];
    snprintf(gp_name, sizeof gp_name, "%s.gp", pic);
    snprintf(dat_name, sizeof dat_name, "%s.dat", pic);
    snprintf(dat, sizeof dat, "%s/%s", out, dat_name);
    snprintf(gp, sizeof gp, "%s/%s", out, gp_name);
    snprintf(png, sizeof png, "%s/%s", out, pic);
    FILE *f = fopen(dat, "w");
    if (!f) {
        cli_warn("sweep: cannot write %s: %s", dat, strerror(errno));
        return -1;
    }
    fprintf(f, "# h_index N_index %s h N sd\n", metric_names[metric]);
    for (int i = 0; i < nN; i++) {
        for (int j = 0; j < nh; j++) {
            const cell *c = &cells[i * nh + j];
            double v = c->done ? metric_of(c, metric) : NAN;
            double sd = c->done ? c->sd[metric == 3 ? 0 : metric + 1] : NAN;
            if (isnan(v))
                fprintf(f, "%d %d NaN %d %d NaN\n", j, i, hs[j], Ns[i]);
            else
                fprintf(f, "%d %d %.6g %d %d %.6g\n", j, i, v, hs[j], Ns[i],
                        sd);
        }
        fputc('\n', f);
    }
    if (fclose(f)) return -1;
    char xt[1024] = "", yt[1024] = "", q_dat[4300], q_png[4300];
    size_t n = 0;
    for (int j = 0; j < nh && n < sizeof xt - 32; j++)
        n += (size_t)snprintf(xt + n, sizeof xt - n, "%s\"%d\" %d",
                              j ? ", " : "", hs[j], j);
    n = 0;
    for (int i = 0; i < nN && n < sizeof yt - 32; i++)
        n += (size_t)snprintf(yt + n, sizeof yt - n, "%s\"%d\" %d",
                              i ? ", " : "", Ns[i], i);
    cli_gp_string(q_dat, sizeof q_dat, dat_name);
    cli_gp_string(q_png, sizeof q_png, strrchr(png, '/') + 1);
    const char *f1 = metric == 1 || metric == 2 ? "%.1f" : "%.3f";
    char label[64]; /* the value, and with --seeds its sd: 1.740±0.012 */
    if (seeds)
        snprintf(label, sizeof label, "sprintf('%s±%s', $3, $6)", f1, f1);
    else
        snprintf(label, sizeof label, "sprintf('%s', $3)", f1);
    char script[20000];
    const char *terminal =
        strcmp(term, "dumb") == 0 ? "set terminal dumb size 80,25\n"
        : strcmp(term, "svg") == 0
            ? "set terminal svg size 640,480 noenhanced\n"
            : "set terminal pngcairo size 640,480 noenhanced\n";
    snprintf(script, sizeof script,
             "# qkv sweep: %s over N x h (run: gnuplot %s in this "
             "directory)\n"
             "%s%s%s%s"
             "set title 'final %s over layers N and heads h'\n"
             "set xlabel 'heads h'\nset ylabel 'layers N'\n"
             "set xtics (%s)\nset ytics (%s)\n"
             "set xrange [-0.5:%d.5]\nset yrange [-0.5:%d.5]\n"
             "set palette defined (0 '#f7fbff', 1 '#c6dbef', 2 '#6baed6')\n"
             "set cblabel '%s'\nunset key\n"
             "set style fill solid noborder\n"
             "plot %s using 1:2:(0.5):(0.5):3 with boxxyerror fc palette, "
             "\\\n"
             "     %s using 1:2:(%s) with labels\n",
             metric_names[metric], gp_name, terminal,
             strcmp(term, "dumb") == 0 ? "" : "set output ",
             strcmp(term, "dumb") == 0 ? "" : q_png,
             strcmp(term, "dumb") == 0 ? "" : "\n", metric_names[metric], xt,
             yt, nh - 1, nN - 1,
             metric == 1 ? "val_acc (%)" : metric_names[metric], q_dat, q_dat,
             label);
    /* gnuplot reads the .dat relative to its working directory: run it
     * in OUT, as a user re-running the script would. */
    char cwd[4200];
    if (!getcwd(cwd, sizeof cwd) || chdir(out)) return -1;
    int rc = cli_gnuplot("sweep", gp_name, script);
    if (chdir(cwd)) cli_die("sweep: cannot return to %s", cwd);
    if (rc == 0 && strcmp(term, "dumb") != 0)
        printf("heatmap: %s (script %s)\n", png, gp);
    return rc;
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* Runs `qkv train ARGS` in this process and returns its exit status (130:
 * interrupted; a bad flag ends the program as qkv train's own message).
 * silent: its stdout goes to /dev/null meanwhile. */
static int run_train(char **args, int silent) {
    int na = 0;
    while (args[na]) na++;
    fflush(stdout);
    int saved = silent ? dup(1) : -1, null = -1;
    if (silent && saved >= 0 && (null = open("/dev/null", O_WRONLY)) >= 0)
        dup2(null, 1);
    int rc = cmd_train(na, args); /* takes SIGINT over while it runs */
    fflush(stdout);
    if (saved >= 0) dup2(saved, 1), close(saved);
    if (null >= 0) close(null);
    if (rc == 130) interrupted = 1;
    signal(SIGINT, on_sigint);
    return rc;
}

/* A sweep: its flags, the qkv train flags it passes on, and its cells. */
typedef struct sweep {
    const char *Nlist, *hlist, *metric_s, *out, *term, *seedlist;
    int seeds[MAX_VALUES], ns; /* --seeds; ns 0: one run a cell, no suffix */
    int d_k, keep_dk, fixed_compute, metric, d_model;
    int Ns[MAX_VALUES], hs[MAX_VALUES], nN, nh;
    char *own[64], *pass[MAX_PASS];
    int n_own, n_pass;
    char *argv0;
    cell *cells;
    char **logs, **labels;
} sweep;

/* Sorts argv into the sweep's own flags and qkv train's (which train's
 * flag table says take a value or not). */
static void split_args(sweep *w, const flag *flags, int nf, int argc,
                       char **argv) {
    w->own[w->n_own++] = argv[0];
    w->own[w->n_own++] = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const flag *f = NULL;
        size_t len = strcspn(a, "="); /* --name value, or --name=value */
        for (int k = 0; k < nf && !f; k++)
            if (strncmp(a, "--", 2) == 0 && strlen(flags[k].name) == len - 2 &&
                strncmp(a + 2, flags[k].name, len - 2) == 0)
                f = &flags[k];
        int is_help = strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
        if (!f && !is_help && strncmp(a, "--", 2) != 0)
            cli_die("sweep: unexpected argument '%s'", a);
        int has_eq = a[len] == '=';
        int train_value = has_eq ? 0 : cli_train_flag_takes_value(a + 2);
        int takes_value =
            f ? f->type != FLAG_BOOL && !has_eq : !is_help && train_value;
        char **dst = f || is_help ? w->own : w->pass;
        int *nd = f || is_help ? &w->n_own : &w->n_pass;
        static const char *const per_cell[] = {"--resume", "--N-enc",
                                               "--N-dec"};
        for (int k = 0; k < 3 && !f && !is_help; k++)
            if (strlen(per_cell[k]) == len && !strncmp(a, per_cell[k], len))
                cli_die("sweep: %s cannot be given to a sweep (it sets it "
                        "per cell)",
                        per_cell[k]);
        if (*nd >= (dst == w->own ? 60 : MAX_PASS - 8))
            cli_die("sweep: too many arguments");
        dst[(*nd)++] = argv[i];
        if (takes_value) {
            if (i + 1 >= argc) cli_die("sweep: %s needs a value", a);
            dst[(*nd)++] = argv[++i];
        }
    }
}

static void parse(sweep *w, int argc, char **argv) {
    const flag flags[] = {
        {"N", FLAG_STR, &w->Nlist, NULL, "layer counts, comma-separated", 0, 0},
        {"h", FLAG_STR, &w->hlist, NULL, "head counts, comma-separated", 0, 0},
        {"fixed-compute", FLAG_BOOL, &w->fixed_compute, NULL,
         "keep d_model, so d_k = d_model/h (Table 3 row A; the default)", 0, 0},
        {"keep-dk", FLAG_BOOL, &w->keep_dk, NULL, "the same as --fixed-compute",
         0, 0},
        {"d-k", FLAG_INT, &w->d_k, NULL,
         "instead fix d_k and set d_model = h x d_k (0: off)", 0,
         QKV_MAX_WIDTH},
        {"metric", FLAG_STR, &w->metric_s,
         "val_loss|val_acc|val_bleu|train_loss",
         "what the table is sorted by and the heatmap shows", 0, 0},
        {"out", FLAG_STR, &w->out, NULL,
         "sweep directory (a run per cell, sweep.csv, pictures)", 0, 0},
        {"term", FLAG_STR, &w->term, "png|svg|dumb", "picture format", 0, 0},
        {"seeds", FLAG_STR, &w->seedlist, NULL,
         "repeat each cell with these --seed values, comma-separated, and "
         "report means and standard deviations (none: one run a cell)",
         0, 0},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    /* Our flags are parsed here; every other flag goes to qkv train. */
    split_args(w, flags, nf, argc, argv);
    cli_parse("sweep",
              "--N 1,2,4 --h 1,2,4,8 [--metric M] [--out DIR] [any qkv train "
              "flag]",
              flags, nf, w->n_own, w->own, 2, NULL, 0, NULL);
    w->nN = parse_list("N", w->Nlist, w->Ns);
    w->nh = parse_list("h", w->hlist, w->hs);
    w->ns = *w->seedlist ? parse_list("seeds", w->seedlist, w->seeds) : 0;
    while (strcmp(metric_names[w->metric], w->metric_s)) w->metric++;
    if (w->d_k && (w->keep_dk || w->fixed_compute))
        cli_die("sweep: --d-k and --fixed-compute contradict each other");
    /* the d_model the cells share: qkv train's default or --d-model */
    w->d_model = 64;
    for (int i = 0; i < w->n_pass; i++)
        if (strcmp(w->pass[i], "--d-model") == 0 && i + 1 < w->n_pass)
            w->d_model = atoi(w->pass[i + 1]);
        else if (strncmp(w->pass[i], "--d-model=", 10) == 0)
            w->d_model = atoi(w->pass[i] + 10);
    for (int j = 0; j < w->nh && !w->d_k; j++)
        if (w->d_model % w->hs[j])
            cli_die("sweep: h = %d does not divide d_model = %d (pick heads "
                    "that divide it, or fix d_k with --d-k)",
                    w->hs[j], w->d_model);
}

/* Every cell's flags are checked (qkv train --dry-run) before anything is
 * written, so a typo costs nothing. */
static void check_cells(sweep *w) {
    for (int i = 0; i < w->nN; i++)
        for (int j = 0; j < w->nh; j++) {
            char N[16], h[16], dm[16], *args[MAX_PASS + 16];
            snprintf(N, sizeof N, "%d", w->Ns[i]);
            snprintf(h, sizeof h, "%d", w->hs[j]);
            snprintf(dm, sizeof dm, "%d",
                     w->d_k ? w->hs[j] * w->d_k : w->d_model);
            int na = 0;
            args[na++] = w->argv0;
            args[na++] = "train";
            for (int q = 0; q < w->n_pass; q++) args[na++] = w->pass[q];
            char *more[] = {"--N", N, "--h", h, "--d-model", dm, "--dry-run"};
            for (int q = 0; q < 7; q++) args[na++] = more[q];
            args[na] = NULL;
            if (run_train(args, 1) != 0)
                cli_die("sweep: the cell N=%d h=%d cannot run", w->Ns[i],
                        w->hs[j]);
        }
}

/* The sweep's settings as JSON: a re-run must match them to continue. */
static char *settings_json(const sweep *w) {
    cJSON *js = cJSON_CreateObject();
    cJSON_AddStringToObject(js, "N", w->Nlist);
    cJSON_AddStringToObject(js, "h", w->hlist);
    cJSON_AddNumberToObject(js, "d_k", w->d_k);
    if (w->ns) cJSON_AddStringToObject(js, "seeds", w->seedlist);
    cJSON *pa = cJSON_AddArrayToObject(js, "train");
    for (int i = 0; i < w->n_pass; i++)
        if (strcmp(w->pass[i], "--threads") && strcmp(w->pass[i], "--quiet") &&
            (i == 0 || strcmp(w->pass[i - 1], "--threads")))
            cJSON_AddItemToArray(pa, cJSON_CreateString(w->pass[i]));
    char *settings = cJSON_Print(js);
    cJSON_Delete(js);
    return settings;
}

/* OUT made and locked, holding these settings (or refused, holding others). */
static void open_sweep(const sweep *w, const char *settings) {
    if (strlen(w->out) > 4000) cli_die("sweep: --out path is too long");
    cli_check_name("sweep", "--out", w->out);
    char path[4400], why[4600];
    snprintf(path, sizeof path, "%s/sweep.json", w->out);
    FILE *f = access(path, F_OK) == 0
                  ? qkv_fopen_file(path, 1 << 20, NULL, why, sizeof why)
                  : NULL;
    if (!f && access(path, F_OK) == 0) cli_die("sweep: %s", why);
    if (f) {
        char buf[65536];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        if (strcmp(buf, settings) != 0)
            cli_die("sweep: %s holds a sweep with other settings (see %s); "
                    "use another --out",
                    w->out, path);
    }
    cli_make_dirs("sweep", w->out);
    cli_run_lock("sweep", w->out); /* one sweep writes a directory at a time */
    if (qkv_comm_world_rank() == 0) cli_write_file("sweep", path, settings);
    qkv_comm_world_barrier(); /* an MPI job's ranks start on a made OUT */
}

/* Trains cell c in dir (or resumes it, if cut short), unless it is done. */
static int train_cell(const sweep *w, const cell *c, const char *dir,
                      int seed) {
    char done[4300], ckpt[4300], N[16], h[16], dm[16], sd[16];
    char *args[MAX_PASS + 16];
    snprintf(done, sizeof done, "%s/done", dir);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", dir);
    struct stat st;
    if (stat(done, &st) == 0) {
        printf(": done before\n");
        return 0;
    }
    int na = 0;
    args[na++] = w->argv0;
    args[na++] = "train";
    if (stat(ckpt, &st) == 0) { /* interrupted: continue it */
        printf(": resuming\n");
        args[na++] = "--resume";
        args[na++] = (char *)dir;
        for (int q = 0; q + 1 < w->n_pass; q++)
            if (strcmp(w->pass[q], "--threads") == 0)
                args[na++] = w->pass[q], args[na++] = w->pass[q + 1];
    } else {
        printf("\n");
        snprintf(N, sizeof N, "%d", c->N);
        snprintf(h, sizeof h, "%d", c->h);
        snprintf(dm, sizeof dm, "%d", c->d_model);
        for (int q = 0; q < w->n_pass; q++) args[na++] = w->pass[q];
        char *more[] = {"--N", N, "--h", h, "--d-model", dm, "--out",
                        (char *)dir,
                        /* no checkpoint: a cell cut before its first
                         * save, whose log and config start over */
                        "--force"};
        for (int q = 0; q < 9; q++) args[na++] = more[q];
        if (seed >= 0) { /* --seeds: after --seed, so it wins */
            snprintf(sd, sizeof sd, "%d", seed);
            args[na++] = "--seed";
            args[na++] = sd;
        }
    }
    if (!isatty(1)) args[na++] = "--quiet";
    args[na] = NULL;
    int rc = run_train(args, 0);
    if (rc == 0) cli_write_file("sweep", done, "");
    return rc;
}

/* Cell k's figures from its log and checkpoint, and its line of output. */
/* The directory of run r (0 .. runs - 1) of cell c. */
static void cell_dir(const sweep *w, const cell *c, int r, char *dir,
                     size_t cap) {
    if (w->ns)
        snprintf(dir, cap, "%s/N%d-h%d-s%d", w->out, c->N, c->h, w->seeds[r]);
    else
        snprintf(dir, cap, "%s/N%d-h%d", w->out, c->N, c->h);
}

/* Cell k's figures from its runs' logs (the mean over --seeds, with their
 * standard deviations) and its first checkpoint, and its line of output. */
static void read_cell(sweep *w, int k) {
    cell *c = &w->cells[k];
    int runs = w->ns ? w->ns : 1;
    double sum[6] = {0}, sq[4] = {0};
    char dir[4200], path[4400], ckpt[4300];
    for (int r = 0; r < runs; r++) {
        cell one = *c;
        cell_dir(w, c, r, dir, sizeof dir);
        snprintf(path, sizeof path, "%s/log.csv", dir);
        if (read_results(path, &one))
            cli_die("sweep: cannot read the results in %s", path);
        double v[6] = {one.train_loss, one.val_loss, one.val_acc,
                       one.val_bleu,   one.seconds,  one.tok_per_s};
        for (int i = 0; i < 6; i++) sum[i] += v[i];
        for (int i = 0; i < 4; i++) sq[i] += v[i] * v[i];
        if (r == 0) w->logs[k] = qkv_strdup(path, "sweep");
    }
    double *mean[6] = {&c->train_loss, &c->val_loss, &c->val_acc,
                       &c->val_bleu,   &c->seconds,  &c->tok_per_s};
    for (int i = 0; i < 6; i++) *mean[i] = sum[i] / runs;
    for (int i = 0; i < 4; i++) /* sample standard deviation */
        c->sd[i] =
            isnan(*mean[i]) ? NAN
            : runs > 1
                ? sqrt(fmax(0, (sq[i] - sum[i] * sum[i] / runs) / (runs - 1)))
                : 0;
    c->runs = runs;
    cell_dir(w, c, 0, dir, sizeof dir);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", dir);
    qkv_model m;
    cli_data d;
    cli_load_model("sweep", ckpt, &m, &d);
    c->params = (long)m.params.n;
    qkv_model_free(&m);
    cli_data_free(&d);
    c->done = 1;
    w->labels[k] = qkv_malloc(32, "sweep");
    snprintf(w->labels[k], 32, "N=%d h=%d", c->N, c->h);
    printf("      train loss %.4f  val loss %.4f  exact %.1f%%", c->train_loss,
           c->val_loss, c->val_acc);
    if (!isnan(c->val_bleu)) printf("  BLEU %.2f", c->val_bleu);
    printf("  %.1f s", c->seconds);
    if (runs > 1) printf("  (mean of %d seeds)", runs);
    printf("\n");
}

/* Every cell in turn, sweep.csv rewritten after each; stops at Ctrl-C. */
/* Every cell in turn, sweep.csv rewritten after each; stops at Ctrl-C. In
 * an MPI job (mpirun -np K qkv sweep) rank r trains cells r, r + K, ...,
 * each alone (a job of one: qkv_comm_set_local), and rank 0 gathers the
 * results from the cells' directories once every rank is done. */
static void run_cells(sweep *w) {
    int n = w->nN * w->nh, rank = qkv_comm_world_rank();
    int ranks = qkv_comm_world_size(), runs = w->ns ? w->ns : 1;
    char path[4400], dir[4200];
    snprintf(path, sizeof path, "%s/sweep.csv", w->out);
    for (int k = 0; k < n; k++) {
        cell *c = &w->cells[k];
        c->N = w->Ns[k / w->nh], c->h = w->hs[k % w->nh];
        c->d_model = w->d_k ? c->h * w->d_k : w->d_model;
    }
    qkv_comm_set_local(1);
    /* run i is cell i / runs with seed i % runs; rank r has runs r, r + K.. */
    for (int i = rank; i < n * runs && !interrupted; i += ranks) {
        int k = i / runs, r = i % runs;
        cell *c = &w->cells[k];
        cell_dir(w, c, r, dir, sizeof dir);
        printf("[%d/%d] N=%d h=%d d_model=%d d_k=%d", i + 1, n * runs, c->N,
               c->h, c->d_model, c->d_model / c->h);
        if (w->ns) printf(" seed=%d", w->seeds[r]);
        int rc = train_cell(w, c, dir, w->ns ? w->seeds[r] : -1);
        if (rc == 130 || interrupted) {
            interrupted = 1;
            break;
        }
        if (rc != 0)
            cli_die("sweep: the run in %s failed (exit %d); fix the flags "
                    "and run the sweep again",
                    dir, rc);
        if (ranks > 1 || r != runs - 1) continue; /* the cell's last run */
        read_cell(w, k);
        write_csv(path, w->cells, n, w->ns);
    }
    qkv_comm_set_local(0);
    if (ranks == 1) return;
    qkv_comm_world_barrier(); /* rank 0 reads them all */
    for (int k = 0; k < n && rank == 0; k++) {
        printf("[%d/%d] N=%d h=%d\n", k + 1, n, w->cells[k].N, w->cells[k].h);
        read_cell(w, k);
    }
    if (rank == 0) write_csv(path, w->cells, n, w->ns);
}

/* The loss curves of every cell and the heatmap of the metric. */
static void draw(const sweep *w) {
    int n = w->nN * w->nh;
    const char *ls[MAX_VALUES * MAX_VALUES], *lb[MAX_VALUES * MAX_VALUES];
    for (int k = 0; k < n; k++) ls[k] = w->logs[k], lb[k] = w->labels[k];
    char png[4200];
    snprintf(png, sizeof png, "%s/loss.%s", w->out,
             strcmp(w->term, "svg") == 0 ? "svg" : "png");
    cli_plot_opts po = {strcmp(w->term, "dumb") == 0 ? "" : png, w->term,
                        "step", 0, "qkv sweep: N x h"};
    int p1 = cli_plot_logs("sweep", ls, lb, n, &po);
    draw_heatmap(w->out, w->cells, w->Ns, w->nN, w->hs, w->nh, w->metric,
                 w->term, w->ns);
    if (p1 == 0 && strcmp(w->term, "dumb") != 0)
        printf("loss curves: %s\n", png);
}

int cmd_sweep(int argc, char **argv) {
    static sweep sw;
    sweep *w = &sw;
    memset(w, 0, sizeof *w);
    w->Nlist = "1,2", w->hlist = "1,2,4", w->metric_s = "val_loss";
    w->out = "runs/sweep", w->term = "png", w->argv0 = argv[0];
    w->seedlist = "";
    /* in an MPI job rank 0 speaks for the sweep */
    if (qkv_comm_world_rank() != 0 && !freopen("/dev/null", "w", stdout))
        cli_die("sweep: cannot silence rank %d", qkv_comm_world_rank());
    parse(w, argc, argv);
    check_cells(w);
    char *settings = settings_json(w);
    open_sweep(w, settings);
    int n = w->nN * w->nh;
    w->cells = qkv_calloc((size_t)n, sizeof *w->cells, "sweep");
    w->logs = qkv_calloc((size_t)n, sizeof *w->logs, "sweep");
    w->labels = qkv_calloc((size_t)n, sizeof *w->labels, "sweep");
    signal(SIGINT, on_sigint);
    run_cells(w);
    if (qkv_comm_world_rank() != 0) {
        free(w->cells), free(w->logs), free(w->labels), free(settings);
        return 0;
    }
    char path[4400];
    snprintf(path, sizeof path, "%s/sweep.csv", w->out);
    write_csv(path, w->cells, n, w->ns);
    print_table(w->cells, n, w->metric, w->ns);
    printf("results: %s\n", path);
    if (interrupted)
        cli_warn("sweep interrupted; run the same command again to continue "
                 "(finished cells are kept)");
    else
        draw(w);
    for (int k = 0; k < n; k++) free(w->logs[k]), free(w->labels[k]);
    free(w->logs);
    free(w->labels);
    free(w->cells);
    free(settings);
    return interrupted ? 130 : 0;
}
