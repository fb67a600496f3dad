/* qkv attn: attention heatmaps of a checkpoint, driven as a user would from
 * the shell, on tiny models trained here: an encoder-decoder copy task
 * (2 encoder layers, 1 decoder layer, 2 heads), a decoder-only word model
 * (2 layers, 4 heads) and an encoder-decoder one (1 + 1 layers, 2 heads) on a
 * corpus with UTF-8 and quotes. Checks the picture (a PNG gnuplot made), the
 * script and the data file beside it, the weights' shapes, row sums and
 * causality, --layer/--head/--kind, --term dumb against the data file, a
 * missing gnuplot, and bad input. */
#include <sys/stat.h>

#include "test.h"

static char qkv[600], dir[64];
static int have_gnuplot;

enum { MAX_BLOCKS = 64, MAX_ROWS = 64 };

/* One weight matrix, from the data file or a --term dumb table. */
typedef struct block {
    char name[64]; /* "encoder layer 1 head 2" */
    int rows, cols;
    double w[MAX_ROWS][MAX_ROWS];
    char labels[512]; /* the data file's "# rows:" line */
} block;

static block blocks[MAX_BLOCKS], other[MAX_BLOCKS], shorter[MAX_BLOCKS];

static int run(const char *args, char *out, size_t cap) {
    return test_qkv(qkv, args, out, cap);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* The whole file (malloc'd, NUL-terminated), or NULL. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = s ? fread(s, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!s) return NULL;
    s[got] = 0;
    return s;
}

/* Numbers of one line into row (at most MAX_ROWS); returns how many, or -1
 * if something else is on the line. */
static int parse_row(const char *s, double *row) {
    int n = 0;
    for (;;) {
        while (*s == ' ') s++;
        if (!*s || *s == '\n') return n;
        char *end;
        double v = strtod(s, &end);
        if (end == s || n >= MAX_ROWS) return -1;
        row[n++] = v;
        s = end;
    }
}

/* Reads the data file written beside a picture into b: returns the number
 * of blocks, or -1 (with a failed check) if the file is malformed. */
static int read_data(const char *path, block *b) {
    char *text = slurp(path);
    CHECK(text, "no data file %s", path);
    if (!text) return -1;
    int n = -1, blank = 0, bad = 0;
    for (char *line = text, *next; line && *line && !bad; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        int idx;
        if (!*line) {
            blank++;
        } else if (sscanf(line, "# index %d:", &idx) == 1) {
            n++;
            /* gnuplot's `index` counts blocks two blank lines apart */
            CHECK(idx == n && blank == (n ? 2 : 0),
                  "block %d: '%s' after %d "
                  "blank lines",
                  n, line, blank);
            CHECK(n < MAX_BLOCKS, "too many blocks");
            if (n >= MAX_BLOCKS) break;
            char *colon = strchr(line, ':') + 2, *comma = strrchr(line, ',');
            bad = !comma ||
                  sscanf(comma, ", %d x %d", &b[n].rows, &b[n].cols) != 2;
            snprintf(b[n].name, sizeof b[n].name, "%.*s",
                     comma ? (int)(comma - colon) : 0, colon);
            b[n].labels[0] = 0;
            b[n].rows = b[n].rows < MAX_ROWS ? b[n].rows : MAX_ROWS;
            b[n].cols = b[n].cols < MAX_ROWS ? b[n].cols : MAX_ROWS;
            blank = 0;
            for (int r = 0; r < b[n].rows && next && !bad; r++) {
                line = next;
                next = strchr(line, '\n');
                if (next) *next++ = 0;
                if (strncmp(line, "# rows:", 7) == 0)
                    snprintf(b[n].labels, sizeof b[n].labels, "%s", line + 7);
                if (line[0] == '#') {
                    r--;
                    continue;
                }
                bad = parse_row(line, b[n].w[r]) != b[n].cols;
                CHECK(!bad, "%s row %d: '%s' is not %d numbers", b[n].name, r,
                      line, b[n].cols);
            }
        } else if (line[0] != '#') {
            bad = 1;
            CHECK(0, "stray line '%s'", line);
        }
    }
    free(text);
    return bad ? -1 : n + 1;
}

/* Reads the tables of --term dumb (after the output line) into b. */
static int read_tables(const char *out, block *b) {
    int n = 0;
    for (const char *s = out; (s = strstr(s, " layer ")); s++) {
        const char *start = s;
        while (start > out && start[-1] != '\n') start--;
        int layer, head, R, C, k;
        if (sscanf(s, " layer %d head %d (%d x %d)%n", &layer, &head, &R, &C,
                   &k) != 4 ||
            n >= MAX_BLOCKS || R > MAX_ROWS || C > MAX_ROWS)
            continue;
        snprintf(b[n].name, sizeof b[n].name, "%.*s layer %d head %d",
                 (int)(s - start), start, layer, head);
        b[n].rows = R, b[n].cols = C;
        s = strchr(s, '\n');
        s = s ? strchr(s + 1, '\n') : NULL; /* past the column labels */
        for (int r = 0; r < R && s; r++) {
            s++;
            while (*s && *s != ' ') s++; /* the row label */
            double row[MAX_ROWS];
            int got = parse_row(s, row);
            CHECK(got == C, "%s row %d has %d numbers", b[n].name, r, got);
            for (int c = 0; c < C && c < got; c++) b[n].w[r][c] = row[c];
            s = strchr(s, '\n');
        }
        n++;
        if (!s) break;
    }
    return n;
}

/* Rows sum to 1 within tol, weights in [0, 1], and (decoder self) nothing
 * above the diagonal. */
static void check_weights(const block *b, int n, double tol) {
    for (int i = 0; i < n; i++) {
        int causal = strncmp(b[i].name, "decoder self", 12) == 0;
        for (int r = 0; r < b[i].rows; r++) {
            double sum = 0;
            for (int c = 0; c < b[i].cols; c++) {
                double v = b[i].w[r][c];
                sum += v;
                CHECK(v >= 0 && v <= 1, "%s [%d][%d] = %g", b[i].name, r, c, v);
                if (causal && c > r)
                    CHECK(v == 0, "%s is not causal: [%d][%d] = %g", b[i].name,
                          r, c, v);
            }
            CHECK_NEAR(sum, 1.0, tol, b[i].name);
        }
    }
}

/* Words (space-separated) of the first line of s. */
static int count_words(const char *s) {
    int n = 0;
    for (; *s && *s != '\n'; s++)
        n += *s != ' ' && (s[1] == ' ' || s[1] == '\n' || !s[1]);
    return n;
}

static int is_png(const char *path) {
    FILE *f = fopen(path, "rb");
    unsigned char sig[8] = {0};
    size_t n = f ? fread(sig, 1, 8, f) : 0;
    if (f) fclose(f);
    return n == 8 && memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0;
}

/* The copy model: 2 encoder layers, 1 decoder layer, 2 heads; max_len 12. */
static void test_picture_script_and_data(void) {
    char args[1024], out[8192], path[600], dec[256];
    snprintf(args, sizeof args,
             "attn --ckpt %s/task/ckpt.safetensors '3 4 5 6' -o %s/pic/a.png",
             dir, dir);
    int rc = run(args, out, sizeof out);
    CHECK(rc == (have_gnuplot ? 0 : 1), "attn: exit %d: %s", rc, out);
    /* the output line is what `qkv decode` prints */
    snprintf(args, sizeof args,
             "decode --ckpt %s/task/ckpt.safetensors '3 4 5 6'", dir);
    CHECK(run(args, dec, sizeof dec) == 0, "decode failed: %s", dec);
    CHECK(strncmp(out, dec, strlen(dec)) == 0, "attn printed '%s', decode '%s'",
          out, dec);
    int k = count_words(dec), S = 4, T = 1 + k;
    snprintf(path, sizeof path, "%s/pic/a.png", dir);
    if (have_gnuplot) {
        CHECK(is_png(path), "%s is not a PNG", path);
        CHECK(file_size(path) > 5000, "%s: %ld bytes", path, file_size(path));
    } else {
        printf("  (no gnuplot here: the picture is not checked)\n");
    }
    snprintf(path, sizeof path, "%s/pic/a.png.gp", dir);
    char *gp = slurp(path);
    CHECK(gp, "no %s", path);
    if (gp) {
        const char *want[] = {"set output",
                              "a.png",
                              "a.png.dat",
                              "multiplot layout "
                              "4,2",
                              "set cbrange [0:1]",
                              "'encoder layer 2 "
                              "head 2'",
                              "'decoder cross layer 1 head 1'",
                              "set xtics ('3' 0, '4' 1, '5' 2, '6' 3)",
                              "index 7 matrix with image"};
        for (size_t i = 0; i < sizeof want / sizeof *want; i++)
            CHECK(strstr(gp, want[i]), "%s lacks %s", path, want[i]);
        free(gp);
    }
    snprintf(path, sizeof path, "%s/pic/a.png.dat", dir);
    int n = read_data(path, blocks);
    const char *names[] = {
        "encoder layer 1 head 1",       "encoder layer 1 head 2",
        "encoder layer 2 head 1",       "encoder layer 2 head 2",
        "decoder self layer 1 head 1",  "decoder self layer 1 head 2",
        "decoder cross layer 1 head 1", "decoder cross layer 1 head 2"};
    CHECK(n == 8, "%d blocks, want 2x2 encoder + 1x2 self + 1x2 cross", n);
    for (int i = 0; i < n && i < 8; i++) {
        int rows = i < 4 ? S : T, cols = i < 4 || i >= 6 ? S : T;
        CHECK(strcmp(blocks[i].name, names[i]) == 0, "block %d is '%s'", i,
              blocks[i].name);
        CHECK(blocks[i].rows == rows && blocks[i].cols == cols,
              "%s is %d x %d, want %d x %d", names[i], blocks[i].rows,
              blocks[i].cols, rows, cols);
    }
    check_weights(blocks, n, 1e-4);
    for (int i = 0; i < n; i++) /* each panel its own layer and head */
        for (int j = 0; j < i; j++) {
            if (blocks[i].rows != blocks[j].rows ||
                blocks[i].cols != blocks[j].cols)
                continue;
            double diff = 0;
            for (int r = 0; r < blocks[i].rows; r++)
                for (int c = 0; c < blocks[i].cols; c++)
                    diff += fabs(blocks[i].w[r][c] - blocks[j].w[r][c]);
            CHECK(diff > 1e-3, "%s and %s are the same", blocks[i].name,
                  blocks[j].name);
        }
    CHECK(n == 8 && strncmp(blocks[4].labels, " <bos>", 6) == 0,
          "decoder rows: '%s'", n ? blocks[4].labels : "");
    if (have_gnuplot) { /* the script redraws the picture by hand */
        snprintf(path, sizeof path, "%s/pic/a.png", dir);
        remove(path);
        snprintf(args, sizeof args, "cd %s/pic && gnuplot a.png.gp", dir);
        CHECK(test_shell(args, out, sizeof out) == 0, "gnuplot a.png.gp: %s",
              out);
        CHECK(is_png(path) && file_size(path) > 5000,
              "gnuplot a.png.gp drew no "
              "picture");
    }
}

/* --term dumb prints the same weights as the data file (4 decimals). */
static void test_dumb_tables_match_data(void) {
    char args[512], out[32768];
    snprintf(args, sizeof args,
             "attn --ckpt %s/task/ckpt.safetensors '3 4 5 6' --term dumb", dir);
    CHECK(run(args, out, sizeof out) == 0, "attn --term dumb: %s", out);
    int n = read_tables(out, other);
    CHECK(n == 8, "%d tables, want 8", n);
    for (int i = 0; i < n && i < 8; i++) {
        CHECK(strcmp(other[i].name, blocks[i].name) == 0 &&
                  other[i].rows == blocks[i].rows &&
                  other[i].cols == blocks[i].cols,
              "table %d: %s %dx%d, data file: %s %dx%d", i, other[i].name,
              other[i].rows, other[i].cols, blocks[i].name, blocks[i].rows,
              blocks[i].cols);
        for (int r = 0; r < other[i].rows; r++)
            for (int c = 0; c < other[i].cols; c++)
                CHECK_NEAR(other[i].w[r][c], blocks[i].w[r][c], 5.1e-5,
                           other[i].name);
    }
    check_weights(other, n, 1e-3);
}

/* --layer, --head and --kind pick panels: the same weights as in the full
 * data file of test_picture_script_and_data. */
static void test_layer_head_kind_select(void) {
    static const struct {
        const char *flags;
        int n, first; /* panels, and the first's index in the full file */
    } cases[] = {
        {"--layer 2 --head 1", 1, 2}, /* only the encoder has a layer 2 */
        {"--layer 1 --head 2 --kind cross", 1, 7},
        {"--layer 1", 6, 0},
        {"--kind self", 2, 4},
        {"--head 2 --kind enc", 2, 1},
    };
    char args[1024], out[8192], path[600];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(args, sizeof args,
                 "attn --ckpt %s/task/ckpt.safetensors '3 4 5 6' %s -o "
                 "%s/sel%zu.png",
                 dir, cases[i].flags, dir, i);
        int rc = run(args, out, sizeof out);
        CHECK(rc == (have_gnuplot ? 0 : 1), "%s: exit %d: %s", cases[i].flags,
              rc, out);
        snprintf(path, sizeof path, "%s/sel%zu.png.dat", dir, i);
        int n = read_data(path, other);
        CHECK(n == cases[i].n, "%s: %d panels, want %d", cases[i].flags, n,
              cases[i].n);
        const block *want = &blocks[cases[i].first];
        CHECK(n > 0 && strcmp(other[0].name, want->name) == 0 &&
                  other[0].rows == want->rows && other[0].cols == want->cols,
              "%s: first panel %s, want %s", cases[i].flags,
              n > 0 ? other[0].name : "none", want->name);
        for (int r = 0; n > 0 && r < want->rows; r++)
            for (int c = 0; c < want->cols; c++)
                CHECK(other[0].w[r][c] == want->w[r][c], "%s: [%d][%d]",
                      cases[i].flags, r, c);
        if (cases[i].n == 1 && have_gnuplot) {
            snprintf(path, sizeof path, "%s/sel%zu.png", dir, i);
            CHECK(is_png(path), "%s: no picture", cases[i].flags);
        }
    }
}

/* Decoder-only: one sequence x bos y, self-attention only; labels with
 * UTF-8 and quotes reach gnuplot intact. */
static void test_decoder_only_utf8_labels(void) {
    char args[1024], out[8192], path[600];
    snprintf(args, sizeof args,
             "attn --ckpt %s/dec/ckpt.safetensors \"'x' grüß \\\"y\\\"\" -o "
             "%s/dec.png",
             dir, dir);
    int rc = run(args, out, sizeof out);
    CHECK(rc == (have_gnuplot ? 0 : 1), "attn: exit %d: %s", rc, out);
    snprintf(path, sizeof path, "%s/dec.png", dir);
    if (have_gnuplot) CHECK(is_png(path), "no picture: %s", out);
    snprintf(path, sizeof path, "%s/dec.png.dat", dir);
    int n = read_data(path, other);
    CHECK(n == 8, "%d panels, want 2 layers x 4 heads", n);
    for (int i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "decoder self layer %d head %d", i / 4 + 1,
                 i % 4 + 1);
        CHECK(strcmp(other[i].name, want) == 0, "panel %d: %s", i,
              other[i].name);
        CHECK(other[i].rows == other[i].cols && other[i].rows >= 4,
              "%s: %d x %d", want, other[i].rows, other[i].cols);
        const char *lab = " 'x' grüß \"y\" <bos>";
        CHECK(strncmp(other[i].labels, lab, strlen(lab)) == 0, "rows: %s",
              other[i].labels);
    }
    check_weights(other, n, 1e-4);
    snprintf(path, sizeof path, "%s/dec.png.gp", dir);
    char *gp = slurp(path);
    CHECK(gp && strstr(gp, "set ytics (\"'\".'x''' 0, 'grüß' 1, '\"y\"' 2, "
                           "'<bos>' 3"),
          "ytics in %s", path);
    free(gp);
    /* causal and deterministic (no dropout): the rows of a shorter prompt
     * are the first rows of a longer one */
    snprintf(args, sizeof args,
             "attn --ckpt %s/dec/ckpt.safetensors \"'x' grüß\" -o %s/pre.png",
             dir, dir);
    rc = run(args, out, sizeof out);
    CHECK(rc == (have_gnuplot ? 0 : 1), "attn: exit %d: %s", rc, out);
    snprintf(path, sizeof path, "%s/pre.png.dat", dir);
    CHECK(read_data(path, shorter) == n, "prompt 'x' grüß: not %d panels", n);
    for (int i = 0; i < n; i++)
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 2; c++)
                CHECK_NEAR(shorter[i].w[r][c], other[i].w[r][c], 2e-6,
                           other[i].name);
    /* the encoder-decoder on the same corpus: UTF-8 source on x */
    snprintf(args, sizeof args,
             "attn --ckpt %s/ed/ckpt.safetensors \"grüß 'x'\" --kind cross -o "
             "%s/ed.png",
             dir, dir);
    rc = run(args, out, sizeof out);
    CHECK(rc == (have_gnuplot ? 0 : 1), "attn: exit %d: %s", rc, out);
    snprintf(path, sizeof path, "%s/ed.png.gp", dir);
    gp = slurp(path);
    CHECK(gp && strstr(gp, "set xtics ('grüß' 0, \"'\".'x''' 1)"),
          "xtics in %s", path);
    CHECK(gp && strstr(gp, "title 'grüß ''x'' → "), "title in %s", path);
    free(gp);
    snprintf(path, sizeof path, "%s/ed.png.dat", dir);
    n = read_data(path, other);
    CHECK(n == 2 && other[0].cols == 2 && other[1].cols == 2, "%d cross panels",
          n);
}

/* Without gnuplot: one line naming the package, exit 1, files written. */
static void test_missing_gnuplot(void) {
    char cmd[2048], out[4096], path[600];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/empty", dir);
    test_shell(cmd, out, sizeof out);
    snprintf(cmd, sizeof cmd,
             "(PATH=%s/empty '%s' attn --ckpt %s/task/ckpt.safetensors '3 4' "
             "-o %s/nogp/x.png 2>&1 >/dev/null)",
             dir, qkv, dir, dir);
    int rc = test_shell(cmd, out, sizeof out);
    CHECK(rc == 1, "exit %d, want 1: %s", rc, out);
    CHECK(strstr(out, "apt-get install gnuplot-nox"), "message: %s", out);
    char *nl = strchr(out, '\n');
    CHECK(nl && nl[1] == 0, "not one line: %s", out);
    snprintf(path, sizeof path, "%s/nogp/x.png.gp", dir);
    CHECK(file_size(path) > 100, "no script %s", path);
    snprintf(path, sizeof path, "%s/nogp/x.png.dat", dir);
    CHECK(read_data(path, other) == 8, "no data in %s", path);
    snprintf(path, sizeof path, "%s/nogp/x.png", dir);
    CHECK(file_size(path) < 0, "%s exists", path);
}

/* The default picture is attn.png in the current directory; .svg works. */
static void test_default_path_and_svg(void) {
    char cmd[2048], out[4096], path[600];
    snprintf(cmd, sizeof cmd,
             "(cd %s && '%s' attn --ckpt task/ckpt.safetensors '5 4' && '%s' "
             "attn --ckpt task/ckpt.safetensors '5 4' -o b.svg)",
             dir, qkv, qkv);
    int rc = test_shell(cmd, out, sizeof out);
    CHECK(rc == (have_gnuplot ? 0 : 1), "exit %d: %s", rc, out);
    snprintf(path, sizeof path, "%s/attn.png.gp", dir);
    CHECK(file_size(path) > 0, "no %s", path);
    snprintf(path, sizeof path, "%s/attn.png.dat", dir);
    CHECK(file_size(path) > 0, "no %s", path);
    if (!have_gnuplot) return;
    snprintf(path, sizeof path, "%s/attn.png", dir);
    CHECK(is_png(path), "no %s", path);
    snprintf(path, sizeof path, "%s/b.svg", dir);
    char *svg = slurp(path);
    CHECK(svg && strstr(svg, "<svg") && strstr(svg, "encoder layer 2 head 2"),
          "%s is not the SVG", path);
    free(svg);
}

static void test_bad_input_is_one_line_and_exit_2(void) {
    static const struct {
        char ckpt; /* T: the task model, D: the decoder-only one, 0: none */
        const char *args, *want;
    } bad[] = {
        {0, "'3 4'", "--ckpt is required"},
        {0, "--ckpt /nonexistent/ckpt '3 4'", "--ckpt"},
        {'T', "", "give one text"},
        {'T', "'3 4' '5'", "give one text"},
        {'T', "''", "the text is empty"},
        {'T', "'  '", "the text is empty"},
        {'T', "'3 4 5 6 7 3 4 5 6 7 3 4 5'",
         "13 tokens; the model takes at most 12"},
        {'T', "'3 x'", "'x' is not a symbol"},
        {'T', "'3 4' --layer 3", "--layer 3 is out of range"},
        {'T', "'3 4' --layer 2 --kind cross", "--layer 2 is out of range"},
        {'T', "'3 4' --head 3", "--head 3 is out of range"},
        {'T', "'3 4' --layer -1", "--layer must be >= 1"},
        {'T', "'3 4' --kind foo", "--kind must be one of"},
        {'T', "'3 4' --term dumb -o x.png", "drop --out"},
        {'T', "'3 4' --term gif", "--term must be one of"},
        {'D', "'grüß' --kind cross", "decoder-only"},
        {'D', "'grüß' --kind enc", "decoder-only"},
    };
    char args[1024], out[4096];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (bad[i].ckpt)
            snprintf(args, sizeof args, "attn --ckpt %s/%s/ckpt.safetensors %s",
                     dir, bad[i].ckpt == 'T' ? "task" : "dec", bad[i].args);
        else
            snprintf(args, sizeof args, "attn %s", bad[i].args);
        int rc = run(args, out, sizeof out);
        CHECK(rc == 2, "qkv %s: exit %d, want 2", args, rc);
        CHECK(strstr(out, bad[i].want), "qkv %s: %s", args, out);
        char *nl = strchr(out, '\n');
        CHECK(nl && nl[1] == 0, "qkv %s: not one line: %s", args, out);
    }
}

static void test_help_lists_flags(void) {
    char out[8192];
    CHECK(run("attn --help", out, sizeof out) == 0, "attn --help: %s", out);
    const char *want[] = {"--ckpt",  "--out",  "-o",      "--term",  "--kind",
                          "--layer", "--head", "1-based", "attn.png"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(strstr(out, want[i]), "attn --help lacks %s: %s", want[i], out);
}

int main(void) {
    test_prog = "attn";
    test_qkv_path(qkv, sizeof qkv);
    test_tmpdir(dir, sizeof dir, "attn");
    char cmd[2048], out[8192];
    have_gnuplot = test_shell("command -v gnuplot", out, sizeof out) == 0;
    snprintf(cmd, sizeof cmd, "%s/u.tsv", dir);
    FILE *f = fopen(cmd, "w");
    if (f) {
        fputs("'x' grüß \"y\"\tzwölf 'ö' !\ngrüß 'x'\t'ö' zwölf\n"
              "\"y\" 'x'\tzwölf zwölf 'ö'\n",
              f);
        fclose(f);
    }
    static const char *train[] = {
        "--task copy --vocab 8 --min-len 2 --max-len 5 --steps 60 --batch 16 "
        "--eval-every 1000 --eval-size 10 --d-model 32 --d-ff 64 --h 2 "
        "--N-enc 2 --N-dec 1 --out %s/task",
        "--data %s/u.tsv --model decoder --steps 30 --d-model 32 --d-ff 64 "
        "--N 2 --dropout 0.1 --out %s/dec",
        "--data %s/u.tsv --steps 30 --d-model 32 --d-ff 64 --h 2 --N 1 "
        "--out %s/ed",
    };
    for (int i = 0; i < 3; i++) {
        char a[600], args[700];
        snprintf(a, sizeof a, train[i], dir, dir);
        snprintf(args, sizeof args, "train --quiet %s", a);
        if (run(args, out, sizeof out) != 0) {
            printf("FAIL attn/setup: qkv %s: %s\n", args, out);
            return 1;
        }
    }
    RUN(test_picture_script_and_data);
    RUN(test_dumb_tables_match_data);
    RUN(test_layer_head_kind_select);
    RUN(test_decoder_only_utf8_labels);
    RUN(test_missing_gnuplot);
    RUN(test_default_path_and_svg);
    RUN(test_bad_input_is_one_line_and_exit_2);
    RUN(test_help_lists_flags);
    if (test_rmtree(dir)) printf("note: could not remove %s\n", dir);
    return test_summary();
}
