/* `qkv explain`, driven as a user would from the shell: the classic worked
 * example's exact numbers, and every printed matrix of several runs checked
 * against attention computed here directly, in double, from the embeddings
 * and weights the run printed. */
#include <math.h>

#include "test.h"

enum { MT = 8, MD = 16 }; /* the program's limits: words, d */

static char qkv[600];
static char out[1 << 18];

/* Runs `qkv explain ARGS` into out; returns the exit status. */
static int run(const char *args) {
    char cmd[1200];
    if (snprintf(cmd, sizeof cmd, "'%s' explain %s", qkv, args) >=
        (int)sizeof cmd)
        return -1;
    return test_shell(cmd, out, sizeof out);
}

/* The matrix printed under the first line containing title at or after
 * *from, read row by row into m (row stride MD): the numbers of each line up to
 * the blank line that ends it ("-inf" included; row labels and column headers
 * skipped), a number after "|" going to sums[row] (if sums). Returns the rows
 * and sets *cols, or -1 if the title is missing; *from moves past the matrix.
 */
static int matrix(const char **from, const char *title, double *m, int *cols,
                  double *sums) {
    const char *s = strstr(*from, title);
    if (!s) return -1;
    s = strchr(s + 1, '\n'); /* end of the title line */
    int rows = 0;
    *cols = 0;
    while (s && s[1] && s[1] != '\n') {
        const char *line = s + 1, *end = strchr(line, '\n');
        if (!end) end = line + strlen(line);
        int n = 0, bar = 0;
        for (const char *p = line; p < end;) {
            while (p < end && *p == ' ') p++;
            if (p >= end) break;
            size_t len = strcspn(p, " \n");
            char tokbuf[64];
            snprintf(tokbuf, sizeof tokbuf, "%.*s", (int)len, p);
            p += len;
            if (strcmp(tokbuf, "|") == 0) {
                bar = 1;
                continue;
            }
            char *e;
            double v = strtod(tokbuf, &e);
            if (e == tokbuf || *e) continue; /* a label */
            if (bar) {
                if (sums) sums[rows] = v;
            } else if (rows < MT * 2 && n < MD) {
                m[rows * MD + n++] = v;
            }
        }
        if (n) {
            if (!*cols) *cols = n;
            rows++;
        }
        s = *end ? end : NULL;
    }
    *from = s ? s : *from + strlen(*from);
    return rows;
}

/* |printed - want| within the 4 printed decimals (float vs double may differ
 * by one in the last one); -inf must be -inf. */
static int same4(double printed, double want) {
    if (isinf(want)) return isinf(printed) && printed < 0;
    return fabs(printed - want) <= 1.01e-4;
}

/* Reads the matrix titled title at *from and compares it with want (R x C,
 * row stride ws); reports the first difference. */
static void expect(const char **from, const char *title, const double *want,
                   int R, int C, int ws) {
    double m[MT * 2 * MD] = {0};
    int cols, rows = matrix(from, title, m, &cols, NULL);
    CHECK(rows == R && cols == C, "%s: %d x %d printed, want %d x %d", title,
          rows, cols, R, C);
    if (rows != R || cols != C) return;
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++)
            if (!same4(m[i * MD + j], want[i * ws + j])) {
                CHECK(0, "%s[%d][%d]: printed %.4f, want %.6f", title, i, j,
                      m[i * MD + j], want[i * ws + j]);
                return;
            }
}

/* Attention in double: the reference every run is compared with. */
typedef struct ref {
    int T, D, H, K;
    double X[MT * MD], W[4][MD * MD]; /* as printed: W_Q, W_K, W_V, W_O */
    double Q[MT * MD], Kx[MT * MD], V[MT * MD]; /* (T, D) */
    double Z[MD][MT * MT], ZS[MD][MT * MT];     /* per head (T, T) */
    double ZM[MD][MT * MT], A[MD][MT * MT];     /* per head (T, T) */
    double Y[MD][MT * MD];                      /* per head (T, K) */
    double cat[MT * MD], out[MT * MD];          /* (T, D) */
} ref;

static void ref_attend(ref *r, int scale, int causal) {
    int T = r->T, D = r->D, H = r->H, K = r->K;
    for (int i = 0; i < T; i++)
        for (int j = 0; j < D; j++) {
            double q = 0, k = 0, v = 0;
            for (int c = 0; c < D; c++) {
                q += r->X[i * MD + c] * r->W[0][c * D + j];
                k += r->X[i * MD + c] * r->W[1][c * D + j];
                v += r->X[i * MD + c] * r->W[2][c * D + j];
            }
            r->Q[i * MD + j] = q, r->Kx[i * MD + j] = k, r->V[i * MD + j] = v;
        }
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < T; i++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < T; j++) {
                double z = 0;
                for (int c = h * K; c < (h + 1) * K; c++)
                    z += r->Q[i * MD + c] * r->Kx[j * MD + c];
                r->Z[h][i * MT + j] = z;
                r->ZS[h][i * MT + j] = scale ? z / sqrt((double)K) : z;
                r->ZM[h][i * MT + j] =
                    causal && j > i ? -INFINITY : r->ZS[h][i * MT + j];
                mx = fmax(mx, r->ZM[h][i * MT + j]);
            }
            for (int j = 0; j < T; j++)
                sum += r->A[h][i * MT + j] = exp(r->ZM[h][i * MT + j] - mx);
            for (int j = 0; j < T; j++) r->A[h][i * MT + j] /= sum;
            for (int c = 0; c < K; c++) {
                double y = 0;
                for (int j = 0; j < T; j++)
                    y += r->A[h][i * MT + j] * r->V[j * MD + h * K + c];
                r->Y[h][i * MD + c] = y;
                r->cat[i * MD + h * K + c] = y;
            }
        }
    }
    for (int i = 0; i < T; i++)
        for (int j = 0; j < D; j++) {
            double o = 0;
            for (int c = 0; c < D; c++)
                o += r->cat[i * MD + c] * r->W[3][c * D + j];
            r->out[i * MD + j] = H > 1 ? o : r->cat[i * MD + j];
        }
}

/* Runs `qkv explain args` (a sentence of T words, width D, H heads) and
 * checks every printed matrix against ref_attend on the printed X and W's.
 * Leaves the output in out and the reference in *r. */
static void check_run(const char *args, int T, int D, int H, int scale,
                      int causal, ref *r) {
    memset(r, 0, sizeof *r);
    r->T = T, r->D = D, r->H = H, r->K = D / H;
    int rc = run(args);
    CHECK(rc == 0, "explain %s: exit %d: %.300s", args, rc, out);
    if (rc) return;
    const char *p = out;
    double m[MT * 2 * MD] = {0};
    int cols, rows = matrix(&p, "1. Token embeddings X", m, &cols, NULL);
    CHECK(rows == T && cols == D, "%s: X is %d x %d", args, rows, cols);
    for (int i = 0; i < T * MD; i++) r->X[i] = m[i];
    static const char *const wt[4] = {"\nW_Q (", "\nW_K (", "\nW_V (",
                                      "\nW_O ("};
    for (int w = 0; w < 4; w++) {
        const char *q = out;
        rows = matrix(&q, wt[w], m, &cols, NULL);
        if (w == 3 && H == 1) {
            CHECK(rows == -1, "%s: W_O printed for one head", args);
            for (int i = 0; i < D; i++) r->W[3][i * D + i] = 1;
            continue;
        }
        CHECK(rows == D && cols == D, "%s: %s is %d x %d", args, wt[w], rows,
              cols);
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) r->W[w][i * D + j] = m[i * MD + j];
    }
    ref_attend(r, scale, causal);
    expect(&p, "Q = X W_Q (", r->Q, T, D, MD);
    expect(&p, "K = X W_K (", r->Kx, T, D, MD);
    expect(&p, "V = X W_V (", r->V, T, D, MD);
    int K = r->K;
    for (int h = 0; h < H; h++) {
        char t[64];
        if (H > 1) {
            snprintf(t, sizeof t, "--- head %d of %d", h + 1, H);
            CHECK(strstr(p, t), "%s: no '%s'", args, t);
            snprintf(t, sizeof t, "Q_%d (", h + 1);
            expect(&p, t, r->Q + h * K, T, K, MD);
            snprintf(t, sizeof t, "K_%d (", h + 1);
            expect(&p, t, r->Kx + h * K, T, K, MD);
            snprintf(t, sizeof t, "V_%d (", h + 1);
            expect(&p, t, r->V + h * K, T, K, MD);
        }
        expect(&p, "3. Scores", r->Z[h], T, T, MT);
        if (scale) {
            expect(&p, "4. Scaled scores", r->ZS[h], T, T, MT);
        } else {
            const char *s = strstr(p, "4. Scaling: skipped (--no-scale)");
            CHECK(s, "%s: head %d: no skipped scaling step", args, h + 1);
            CHECK(!strstr(out, "4. Scaled"), "%s: scaled anyway", args);
        }
        if (causal)
            expect(&p, "5. Causal mask", r->ZM[h], T, T, MT);
        else
            CHECK(strstr(p, "5. Mask: none"), "%s: no mask step", args);
        const char *q = p;
        double sums[2 * MT];
        rows = matrix(&q, "6. Softmax weights", m, &cols, sums);
        for (int i = 0; i < rows && i < T; i++)
            CHECK(sums[i] == 1.0, "%s: weights row %d sums to %.4f", args, i,
                  sums[i]);
        expect(&p, "6. Softmax weights", r->A[h], T, T, MT);
        expect(&p, "7. Output", r->Y[h], T, K, MD);
    }
    if (H > 1) {
        expect(&p, "8. Concatenation", r->cat, T, D, MD);
        CHECK(strstr(p, "9. Output projection"), "%s: no W_O step", args);
        expect(&p, "Output = concat W_O (", r->out, T, D, MD);
    }
    CHECK(strstr(p, "gives the same weights and outputs"),
          "%s: fused kernel disagrees: %.200s", args, p);
}

/* printed row of the matrix titled title (from the start of out) */
static int row_of(const char *title, int row, double *v, int *cols) {
    const char *p = out;
    double m[MT * 2 * MD] = {0};
    int rows = matrix(&p, title, m, cols, NULL);
    if (row >= rows) return -1;
    for (int j = 0; j < *cols; j++) v[j] = m[row * MD + j];
    return 0;
}

/* v == want rounded to 4 decimals, exactly as printed */
static void expect_row4(const char *what, const double *v, int cols,
                        const double *want, int n) {
    CHECK(cols == n, "%s: %d values, want %d", what, cols, n);
    for (int j = 0; j < n && j < cols; j++) {
        char b[32];
        snprintf(b, sizeof b, "%.4f", want[j]);
        CHECK(v[j] == strtod(b, NULL), "%s[%d]: printed %.4f, want %s", what, j,
              v[j], b);
    }
}

static void test_default_is_the_classic_worked_example(void) {
    static ref r;
    check_run("", 3, 4, 1, 1, 0, &r);
    /* the exact lines of the notes */
    CHECK(strstr(out, "  The  0.4223  0.1554  0.4223  |  1.0000\n"),
          "weights of The: %.2000s", out);
    CHECK(strstr(out, "  The  0.8446  0.5777  0.8446  0.5777\n"),
          "output of The: %.2000s", out);
    double v[MD], e = exp(1.0);
    int cols;
    CHECK(row_of("1. Token embeddings", 2, v, &cols) == 0, "no X");
    expect_row4("X[sat]", v, cols, (double[]){1, 1, 1, 1}, 4);
    CHECK(row_of("3. Scores", 0, v, &cols) == 0, "no scores");
    expect_row4("scores[The]", v, cols, (double[]){2, 0, 2}, 3);
    CHECK(row_of("4. Scaled", 0, v, &cols) == 0, "no scaled scores");
    expect_row4("scaled[The]", v, cols, (double[]){1, 0, 1}, 3);
    CHECK(row_of("6. Softmax", 0, v, &cols) == 0, "no weights");
    double w = e / (2 * e + 1), w0 = 1 / (2 * e + 1);
    expect_row4("weights[The]", v, cols, (double[]){w, w0, w}, 3);
    CHECK(row_of("7. Output", 0, v, &cols) == 0, "no output");
    expect_row4("out[The]", v, cols, (double[]){2 * w, w0 + w, 2 * w, w0 + w},
                4);
    CHECK(strstr(out, "sqrt(4) = 2.0000"), "scale not shown");
    CHECK(strstr(out, "identity"), "identity weights not said");
    CHECK(strstr(out, "5. Mask: none"), "mask step missing");
    CHECK(!strstr(out, "W_O"), "one head needs no W_O");
}

static void test_no_scale_gives_the_unscaled_softmax(void) {
    static ref r;
    check_run("--no-scale", 3, 4, 1, 0, 0, &r);
    double v[MD], e2 = exp(2.0);
    int cols;
    /* The: scores 2, 0, 2 -> e^2 / (2 e^2 + 1), 1 / (2 e^2 + 1) */
    double w = e2 / (2 * e2 + 1), w0 = 1 / (2 * e2 + 1);
    CHECK(row_of("6. Softmax", 0, v, &cols) == 0, "no weights");
    expect_row4("weights[The]", v, cols, (double[]){w, w0, w}, 3);
    CHECK(row_of("7. Output", 0, v, &cols) == 0, "no output");
    expect_row4("out[The]", v, cols, (double[]){2 * w, w0 + w, 2 * w, w0 + w},
                4);
    CHECK(strstr(out, "  The  0.4683  0.0634  0.4683  |  1.0000\n"),
          "weights of The: %.3000s", out);
    CHECK(run("--scale") == 0 && strstr(out, "0.4223"), "--scale: %.200s", out);
}

static void test_causal_masks_the_future(void) {
    static ref r;
    check_run("--causal", 3, 4, 1, 1, 1, &r);
    CHECK(strstr(out, "  The  1.0000    -inf    -inf\n"),
          "mask row of The: %.3000s", out);
    double v[MD];
    int cols;
    CHECK(row_of("6. Softmax", 0, v, &cols) == 0, "no weights");
    expect_row4("weights[The]", v, cols, (double[]){1, 0, 0}, 3);
    /* cat sees The (scaled score 0) and itself (1) */
    double e = exp(1.0);
    CHECK(row_of("6. Softmax", 1, v, &cols) == 0, "no weights");
    expect_row4("weights[cat]", v, cols,
                (double[]){1 / (1 + e), e / (1 + e), 0}, 3);
    CHECK(row_of("7. Output", 0, v, &cols) == 0, "no output");
    expect_row4("out[The] = V[The]", v, cols, (double[]){1, 0, 1, 0}, 4);
}

static void test_two_heads_show_each_head_and_w_o(void) {
    static ref r;
    check_run("--heads 2", 3, 4, 2, 1, 0, &r);
    double v[MD];
    int cols;
    /* head 1 has columns 1-2: The = [1,0], cat = [0,1], sat = [1,1];
     * scores of The 1, 0, 1, scaled by sqrt(2) */
    double s = exp(1 / sqrt(2.0)), w = s / (2 * s + 1), w0 = 1 / (2 * s + 1);
    CHECK(row_of("6. Softmax weights A_1", 0, v, &cols) == 0, "no A_1");
    expect_row4("A_1[The]", v, cols, (double[]){w, w0, w}, 3);
    CHECK(row_of("6. Softmax weights A_2", 0, v, &cols) == 0, "no A_2");
    expect_row4("A_2[The]", v, cols, (double[]){w, w0, w}, 3);
    CHECK(row_of("7. Output of head 1", 0, v, &cols) == 0, "no out_1");
    expect_row4("out_1[The]", v, cols, (double[]){2 * w, w0 + w}, 2);
    CHECK(strstr(out, "sqrt(2) = 1.4142"), "d_k = 2 not used");
    /* identity W_O: the output is the concatenation, row by row */
    for (int i = 0; i < 3; i++) {
        double c[MD];
        int cc;
        CHECK(row_of("8. Concatenation of the heads [out_1 | out_2]", i, c,
                     &cc) == 0,
              "no concat row %d", i);
        CHECK(row_of("Output = concat W_O", i, v, &cols) == 0,
              "no output row %d", i);
        CHECK(cc == 4 && cols == 4 && memcmp(c, v, 4 * sizeof *v) == 0,
              "row %d: output differs from the concat", i);
    }
    CHECK(row_of("8. Concatenation", 0, v, &cols) == 0, "no concat");
    expect_row4("concat[The]", v, cols,
                (double[]){2 * w, w0 + w, 2 * w, w0 + w}, 4);
    static ref r4;
    check_run("--heads 4 --causal --no-scale", 3, 4, 4, 0, 1, &r4);
    CHECK(strstr(out, "[out_1 | out_2 | out_3 | out_4]"), "4 heads' concat");
}

static void test_random_sentences_match_a_direct_computation(void) {
    static ref r;
    check_run("'the dog saw the cat' --d 6 --heads 3 --causal --seed 5", 5, 6,
              3, 1, 1, &r);
    for (int j = 0; j < 6; j++) {
        CHECK(r.X[0 * MD + j] == r.X[3 * MD + j], "the twice: %g vs %g", r.X[j],
              r.X[3 * MD + j]);
        for (int i = 0; i < 5; i++) {
            double x = r.X[i * MD + j] * 10;
            CHECK(fabs(x - round(x)) < 1e-9 && fabs(x) <= 10,
                  "X[%d][%d] = %g is not in -1, -0.9, ..., 1", i, j,
                  r.X[i * MD + j]);
        }
    }
    int identity = 1;
    for (int i = 0; i < 36; i++)
        identity &= r.W[0][i] == (i % 7 == 0 ? 1.0 : 0.0);
    CHECK(!identity, "random sentence got identity weights");
    char first[sizeof out];
    memcpy(first, out, sizeof out);
    CHECK(run("'the dog saw the cat' --d 6 --heads 3 --causal --seed 5") == 0 &&
              strcmp(first, out) == 0,
          "same seed, different output");
    CHECK(run("'the dog saw the cat' --d 6 --heads 3 --causal --seed 6") == 0 &&
              strcmp(first, out) != 0,
          "another seed, same output");
    /* a word keeps its vector in another sentence */
    static ref r2;
    check_run("cat the --d 6 --seed 5", 2, 6, 1, 1, 0, &r2);
    for (int j = 0; j < 6; j++)
        CHECK(r2.X[1 * MD + j] == r.X[0 * MD + j], "the moved: %g vs %g",
              r2.X[MD + j], r.X[j]);
    /* the classic words keep their vectors at d = 4, with random weights */
    check_run("'The dog sat' --causal", 3, 4, 1, 1, 1, &r2);
    for (int j = 0; j < 4; j++) {
        CHECK(r2.X[j] == (j % 2 == 0), "X[The][%d] = %g", j, r2.X[j]);
        CHECK(r2.X[2 * MD + j] == 1, "X[sat][%d] = %g", j, r2.X[2 * MD + j]);
    }
    CHECK(r2.W[0][1] != 0 || r2.W[0][0] != 1, "W_Q still identity");
    check_run("--weights random --heads 2", 3, 4, 2, 1, 0, &r2);
    CHECK(r2.X[0] == 1 && r2.X[1] == 0, "X[The] is classic");
    check_run("'The cat sat' --d 8 --weights identity", 3, 8, 1, 1, 0, &r2);
    CHECK(r2.W[0][0] == 1 && r2.W[0][1] == 0 && r2.W[0][9] == 1,
          "--weights identity");
    CHECK(!(r2.X[0] == 1 && r2.X[1] == 0 && r2.X[2] == 1 && r2.X[3] == 0 &&
            r2.X[4] == 0),
          "d = 8 drew no new vector for The");
    check_run("a b c d e f g h --d 16 --heads 4 --causal", 8, 16, 4, 1, 1, &r2);
    check_run("x --d 1", 1, 1, 1, 1, 0, &r2);
}

static void test_help_documents_every_flag(void) {
    CHECK(run("--help") == 0, "--help failed");
    const char *want[] = {
        "--d ",         "--heads",         "--scale",
        "--no-scale",   "--causal",        "--seed",
        "--weights",    "split at spaces", "at most 8 words",
        "d at most 16", "PCG32",           "-1.0, -0.9, ..., 1.0"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(strstr(out, want[i]), "help lacks %s", want[i]);
    int lines = 0, defaults = 0;
    for (char *s = out; (s = strstr(s, "\n  --")); s++) lines++;
    for (char *s = out; (s = strstr(s, "(default ")); s++) defaults++;
    CHECK(lines == defaults && lines == 7, "%d flags, %d defaults", lines,
          defaults);
}

static void test_bad_input_is_one_line_and_exit_2(void) {
    static const struct {
        const char *args, *want;
    } bad[] = {
        {"--d 0", "--d must be positive, got 0"},
        {"--d 17", "--d must be at most 16, got 17"},
        {"--heads 3", "--heads 3 does not divide --d 4"},
        {"--heads 0", "--heads must be positive"},
        {"''", "the sentence is empty"},
        {"'   '", "the sentence is empty"},
        {"'a b c d e f g h i'", "9 words; at most 8"},
        {"a b c d e f g h i j", "10 words; at most 8"},
        {"abcdefghijklmnopq", "longer than 16 bytes"},
        {"--scale --no-scale", "contradict"},
        {"--weights eye", "--weights must be one of auto|identity|random"},
        {"--seed x", "--seed wants an integer"},
        {"--d", "--d needs a value"},
        {"--bogus", "unknown flag --bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = run(bad[i].args);
        CHECK(rc == 2, "%s: exit %d", bad[i].args, rc);
        CHECK(strncmp(out, "qkv: explain: ", 14) == 0 &&
                  strstr(out, bad[i].want),
              "%s: %s", bad[i].args, out);
        char *nl = strchr(out, '\n');
        CHECK(nl && nl[1] == 0, "%s: not one line: %s", bad[i].args, out);
    }
}

int main(void) {
    test_prog = "explain";
    test_qkv_path(qkv, sizeof qkv);
    RUN(test_default_is_the_classic_worked_example);
    RUN(test_no_scale_gives_the_unscaled_softmax);
    RUN(test_causal_masks_the_future);
    RUN(test_two_heads_show_each_head_and_w_o);
    RUN(test_random_sentences_match_a_direct_computation);
    RUN(test_help_documents_every_flag);
    RUN(test_bad_input_is_one_line_and_exit_2);
    return test_summary();
}
