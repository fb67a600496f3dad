/* explain.c - `qkv explain`: scaled dot-product attention step by step on a
 * tiny sentence, printed as labelled matrices (rows labelled with the
 * tokens, 4 decimals), as in the worked example of the notes people learn
 * attention from:
 *
 *   Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V   (Vaswani et al. 2017)
 *
 *   qkv explain                              "The cat sat", d = 4, W = I
 *   qkv explain --causal --no-scale
 *   qkv explain "the dog saw the cat" --d 6 --heads 2 --seed 3
 *
 * Every number is computed by the library's ops (qkv_matmul, qkv_scale,
 * qkv_softmax, qkv_split_heads, qkv_merge_heads) on one graph, and the end
 * checks them against the fused kernel qkv_attention (core/attention.c).
 * Words are split at white space, case kept; a word's vector depends only on
 * the word, d and --seed (its own PCG32 stream), so it is the same in every
 * sentence.
 */
#include <math.h>
#include <string.h>

#include "cli.h"

enum {
    MAX_WORDS = 8, /* T: the T x T matrices must fit on a screen */
    MAX_WORD = 16, /* bytes of one word (the row labels) */
    MAX_D = 16,    /* d: columns of the embeddings */
};

/* The classic worked example: "The cat sat", d = 4, identity weights. */
static const struct {
    const char *word;
    float v[4];
} classic[] = {
    {"The", {1, 0, 1, 0}}, {"cat", {0, 1, 0, 1}}, {"sat", {1, 1, 1, 1}}};

static const float *classic_vector(const char *w) {
    for (size_t i = 0; i < sizeof classic / sizeof *classic; i++)
        if (strcmp(w, classic[i].word) == 0) return classic[i].v;
    return NULL;
}

/* PCG32 stream of a named thing: FNV-1a of "kind:name". */
static uint64_t stream_of(const char *kind, const char *name) {
    uint64_t h = 14695981039346656037ull;
    for (const char *s = kind; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h = (h ^ ':') * 1099511628211ull;
    for (const char *s = name; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* x[0..n) uniform over -1.0, -0.9, ..., 1.0: random, yet easy to read. */
static void draw(float *x, int n, int seed, const char *kind,
                 const char *name) {
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, (uint64_t)(int64_t)seed, stream_of(kind, name));
    for (int i = 0; i < n; i++)
        x[i] = (float)((int)qkv_pcg32_bounded(&rng, 21) - 10) / 10.0f;
}

/* "%.4f" (0.0000 for a negative zero) or "-inf". */
static void fmt4(char *buf, size_t cap, float x) {
    if (isinf(x))
        snprintf(buf, cap, "%s", x < 0 ? "-inf" : "inf");
    else
        snprintf(buf, cap, "%.4f", (double)x);
    if (strcmp(buf, "-0.0000") == 0) snprintf(buf, cap, "0.0000");
}

/* fmt4 without trailing zeros (1, 0.3, 0.4223), negatives in parentheses:
 * for the worked sums. */
static const char *fmt_short(char *buf, size_t cap, float x) {
    char b[32];
    fmt4(b, sizeof b, x);
    char *dot = strchr(b, '.');
    if (dot) {
        char *e = b + strlen(b);
        while (e[-1] == '0') *--e = 0;
        if (e[-1] == '.') e[-1] = 0;
    }
    if (strcmp(b, "-0") == 0) snprintf(b, sizeof b, "0");
    snprintf(buf, cap, b[0] == '-' && b[1] != 'i' ? "(%s)" : "%s", b);
    return buf;
}

/* Prints title, then the R x C matrix m (row-major) with row i labelled
 * rows[i] (NULL: none), columns headed by cols (NULL: no header) and, with
 * sums, each row's sum after a bar; then a blank line. */
static void print_matrix(const char *title, const float *m, int R, int C,
                         const char *const *rows, const char *const *cols,
                         int sums) {
    char b[32];
    int lw = 0, w = 6;
    for (int i = 0; rows && i < R; i++)
        if ((int)strlen(rows[i]) > lw) lw = (int)strlen(rows[i]);
    for (int i = 0; i < R * C; i++) {
        fmt4(b, sizeof b, m[i]);
        if ((int)strlen(b) > w) w = (int)strlen(b);
    }
    for (int j = 0; cols && j < C; j++)
        if ((int)strlen(cols[j]) > w) w = (int)strlen(cols[j]);
    printf("%s\n", title);
    if (cols) {
        printf("  %*s", lw, "");
        for (int j = 0; j < C; j++) printf("  %*s", w, cols[j]);
        if (sums) printf("  |  %*s", w, "sum");
        printf("\n");
    }
    for (int i = 0; i < R; i++) {
        printf("  %-*s", lw, rows ? rows[i] : "");
        double s = 0;
        for (int j = 0; j < C; j++) {
            fmt4(b, sizeof b, m[(size_t)i * C + j]);
            printf("  %*s", w, b);
            s += m[(size_t)i * C + j];
        }
        if (sums) {
            fmt4(b, sizeof b, (float)s);
            printf("  |  %*s", w, b);
        }
        printf("\n");
    }
    printf("\n");
}

/* Splits the n strings s at white space into words (at most MAX_WORDS of
 * at most MAX_WORD bytes); returns how many. */
static int split_words(const char *const *s, int n,
                       char words[MAX_WORDS][MAX_WORD + 1]) {
    int T = 0, over = 0;
    for (int k = 0; k < n; k++)
        for (const char *p = s[k];;) {
            while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
            if (!*p) break;
            size_t len = strcspn(p, " \t\n\r");
            if (len > MAX_WORD)
                cli_die("explain: the word '%.*s' is longer than %d bytes",
                        (int)len, p, MAX_WORD);
            if (T < MAX_WORDS)
                snprintf(words[T], MAX_WORD + 1, "%.*s", (int)len, p);
            else
                over = 1;
            T++;
            p += len;
        }
    if (over)
        cli_die("explain: %d words; at most %d fit (write a shorter sentence)",
                T, MAX_WORDS);
    if (T == 0)
        cli_die("explain: the sentence is empty (write some words, e.g. "
                "\"The cat sat\")");
    return T;
}

/* Steps 3-7 for head h (of H; H = 1: the plain single-head attention):
 * q, k, v (T, K) slices, z the raw scores, zs scaled, zm masked, a the
 * weights and y the output, each (T, T) or (T, K). */
typedef struct head_view {
    const float *q, *k, *v, *z, *zs, *zm, *a, *y;
} head_view;

static void print_head(int h, int H, int T, int K, int scaled, int causal,
                       const char *const *tok, const head_view *hv) {
    char s[16] = "", t[256], b1[32], b2[32];
    if (H > 1) {
        snprintf(s, sizeof s, "_%d", h + 1);
        printf("--- head %d of %d: columns %d-%d of Q, K and V ---\n\n", h + 1,
               H, h * K + 1, (h + 1) * K);
        snprintf(t, sizeof t, "Q%s (%d x %d):", s, T, K);
        print_matrix(t, hv->q, T, K, tok, NULL, 0);
        snprintf(t, sizeof t, "K%s (%d x %d):", s, T, K);
        print_matrix(t, hv->k, T, K, tok, NULL, 0);
        snprintf(t, sizeof t, "V%s (%d x %d):", s, T, K);
        print_matrix(t, hv->v, T, K, tok, NULL, 0);
    }
    snprintf(t, sizeof t,
             "3. Scores Q%s K%s^T (%d x %d): row = query, column = key, "
             "entry = dot product",
             s, s, T, T);
    print_matrix(t, hv->z, T, T, tok, tok, 0);
    int j = T > 1 ? 1 : 0;
    if (K <= 8) {
        printf("   e.g. score(%s, %s) =", tok[0], tok[j]);
        for (int c = 0; c < K; c++)
            printf("%s%s*%s", c ? " + " : " ",
                   fmt_short(b1, sizeof b1, hv->q[c]),
                   fmt_short(b2, sizeof b2, hv->k[(size_t)j * K + c]));
        printf(" = %s\n\n", fmt_short(b1, sizeof b1, hv->z[j]));
    }
    if (scaled) {
        snprintf(t, sizeof t,
                 "4. Scaled scores Q%s K%s^T / sqrt(d_k), sqrt(%d) = %.4f "
                 "(%d x %d):",
                 s, s, K, sqrt((double)K), T, T);
        print_matrix(t, hv->zs, T, T, tok, tok, 0);
    } else {
        printf("4. Scaling: skipped (--no-scale); the softmax gets the raw "
               "scores Q%s K%s^T.\n\n",
               s, s);
    }
    if (causal) {
        snprintf(t, sizeof t,
                 "5. Causal mask (%d x %d): entries above the diagonal (later "
                 "tokens) set to -inf, so e^-inf = 0:",
                 T, T);
        print_matrix(t, hv->zm, T, T, tok, tok, 0);
    } else {
        printf("5. Mask: none; every token sees every token (--causal hides "
               "later ones).\n\n");
    }
    snprintf(t, sizeof t,
             "6. Softmax weights A%s (%d x %d), row by row: A[i,j] = e^s[i,j] "
             "/ sum_k e^s[i,k]; each row sums to 1:",
             s, T, T);
    print_matrix(t, hv->a, T, T, tok, tok, 1);
    printf("   e.g. A%s[%s, %s] = e^%s / (", s, tok[0], tok[0],
           fmt_short(b1, sizeof b1, hv->zm[0]));
    for (int c = 0; c < T; c++)
        printf("%se^%s", c ? " + " : "", fmt_short(b1, sizeof b1, hv->zm[c]));
    fmt4(b1, sizeof b1, hv->a[0]);
    printf(") = %s\n\n", b1);
    if (H > 1)
        snprintf(t, sizeof t,
                 "7. Output of head %d = A%s V%s (%d x %d):", h + 1, s, s, T,
                 K);
    else
        snprintf(t, sizeof t,
                 "7. Output rows = A V (%d x %d): each row is a weighted mix "
                 "of the rows of V:",
                 T, K);
    print_matrix(t, hv->y, T, K, tok, NULL, 0);
    printf("   e.g. out%s[%s] =", s, tok[0]);
    for (int c = 0; c < T; c++) {
        fmt4(b1, sizeof b1, hv->a[c]);
        printf("%s%s V%s[%s]", c ? " + " : " ", b1, s, tok[c]);
    }
    printf("\n\n");
}

int cmd_explain(int argc, char **argv) {
    int D = 4, H = 1, scale_flag = 0, no_scale = 0, causal = 0, seed = 1;
    const char *weights = "auto";
    const flag flags[] = {
        {"d", FLAG_INT, &D, NULL, "width d: columns of the embeddings (1..16)",
         1, 16},
        {"heads", FLAG_INT, &H, NULL,
         "attention heads H; must divide d (d_k = d / H)", 1, INT_MAX},
        {"scale", FLAG_BOOL, &scale_flag, NULL,
         "divide the scores by sqrt(d_k); done anyway unless --no-scale", 0, 0},
        {"no-scale", FLAG_BOOL, &no_scale, NULL,
         "skip the scaling, to see what it changes", 0, 0},
        {"causal", FLAG_BOOL, &causal, NULL,
         "mask later tokens with -inf (decoder self-attention)", 0, 0},
        {"weights", FLAG_STR, &weights, "auto|identity|random",
         "W_Q, W_K, W_V, W_O; auto: identity for the classic example (d 4, "
         "words among The cat sat), else random",
         0, 0},
        {"seed", FLAG_INT, &seed, NULL,
         "PCG32 seed of the random vectors and weights", 0, 0},
    };
    int nf = (int)(sizeof flags / sizeof flags[0]);
    char usage[1024];
    snprintf(usage, sizeof usage,
             "[\"The cat sat\"] [flags]\n\n"
             "Attention step by step on a tiny sentence: embeddings X, Q K V, "
             "scores,\nscaling, mask, softmax weights and outputs (per head, "
             "then concat W_O).\nWords are split at spaces, case kept: at "
             "most %d words of at most %d bytes,\nd at most %d. With d = 4 "
             "the words The, cat, sat keep the classic vectors\n[1,0,1,0], "
             "[0,1,0,1], [1,1,1,1]. Every other vector, and random weights,\n"
             "come from PCG32 (--seed): uniform over -1.0, -0.9, ..., 1.0, "
             "one stream\nper word, so a word keeps its vector in any "
             "sentence.",
             MAX_WORDS, MAX_WORD, MAX_D);
    enum { MAX_POS = 64 };
    const char *pos[MAX_POS];
    int n_pos = 0;
    cli_parse("explain", usage, flags, nf, argc, argv, 2, pos, MAX_POS, &n_pos);
    if (D < 1 || D > MAX_D)
        cli_die("explain: --d must be between 1 and %d, got %d", MAX_D, D);
    if (H < 1) cli_die("explain: --heads must be positive, got %d", H);
    if (D % H)
        cli_die("explain: --heads %d does not divide --d %d (each head gets "
                "d / heads columns)",
                H, D);
    if (scale_flag && no_scale)
        cli_die("explain: --scale and --no-scale contradict each other");
    int K = D / H;

    static const char *const dflt[] = {"The cat sat"};
    char words[MAX_WORDS][MAX_WORD + 1];
    int T =
        n_pos ? split_words(pos, n_pos, words) : split_words(dflt, 1, words);
    const char *tok[MAX_WORDS];
    int all_classic = D == 4, any_classic = 0;
    float X[MAX_WORDS * MAX_D], W[4][MAX_D * MAX_D]; /* (T,D); W_Q,K,V,O */
    for (int i = 0; i < T; i++) {
        tok[i] = words[i];
        const float *c = D == 4 ? classic_vector(words[i]) : NULL;
        if (c) {
            memcpy(X + (size_t)i * D, c, 4 * sizeof *c);
            any_classic = 1;
        } else {
            draw(X + (size_t)i * D, D, seed, "word", words[i]);
            all_classic = 0;
        }
    }
    int identity = strcmp(weights, "identity") == 0 ||
                   (strcmp(weights, "auto") == 0 && all_classic);
    static const char *const wname[4] = {"W_Q", "W_K", "W_V", "W_O"};
    for (int m = 0; m < 4; m++) {
        if (identity) {
            memset(W[m], 0, sizeof W[m]);
            for (int i = 0; i < D; i++) W[m][i * D + i] = 1;
        } else {
            draw(W[m], D * D, seed, "weight", wname[m]);
        }
    }

    /* The forward pass, with the library's ops. */
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_graph_set_grad(&g, 0);
    qkv_tensor *x = qkv_tensor_wrap(&g, X, 3, (int[]){1, T, D});
    qkv_tensor *w[4];
    for (int m = 0; m < 4; m++)
        w[m] = qkv_tensor_wrap(&g, W[m], 2, (int[]){D, D});
    qkv_tensor *q = qkv_matmul(&g, x, w[0], 0, 0); /* (1,T,D) = X W_Q */
    qkv_tensor *k = qkv_matmul(&g, x, w[1], 0, 0);
    qkv_tensor *v = qkv_matmul(&g, x, w[2], 0, 0);
    qkv_tensor *qh = qkv_split_heads(&g, q, H); /* (1,H,T,K) */
    qkv_tensor *kh = qkv_split_heads(&g, k, H);
    qkv_tensor *vh = qkv_split_heads(&g, v, H);
    qkv_tensor *z = qkv_matmul(&g, qh, kh, 0, 1); /* (1,H,T,T) */
    qkv_tensor *zs = no_scale ? z : qkv_scale(&g, z, 1.0f / sqrtf((float)K));
    qkv_tensor *zm = zs;
    if (causal) { /* key j hidden from query i when j > i */
        zm = qkv_tensor_new(&g, 4, zs->shape);
        memcpy(zm->data, zs->data, zs->n * sizeof *zs->data);
        for (int hh = 0; hh < H; hh++)
            for (int i = 0; i < T; i++)
                for (int j = i + 1; j < T; j++)
                    zm->data[((size_t)hh * T + i) * T + j] = -INFINITY;
    }
    qkv_tensor *a = qkv_softmax(&g, zm);
    qkv_tensor *y = qkv_matmul(&g, a, vh, 0, 0); /* (1,H,T,K) */
    qkv_tensor *cat = qkv_merge_heads(&g, y);    /* (1,T,D) */
    qkv_tensor *out = H > 1 ? qkv_matmul(&g, cat, w[3], 0, 0) : cat;

    /* The same attention by the fused kernel, for the check at the end. */
    float Af[MAX_D * MAX_WORDS * MAX_WORDS]; /* (H,T,T) */
    qkv_attn_opts o = {
        .causal = causal, .scale = no_scale ? 1.0f : 0.0f, .weights = Af};
    qkv_tensor *yf = qkv_attention(&g, qh, kh, vh, &o);
    /* Weights are at most 1; outputs are compared relative to their size,
     * which random weights can make large. */
    double diff = 0;
    for (size_t i = 0; i < a->n; i++)
        diff = fmax(diff, fabs((double)Af[i] - a->data[i]));
    for (size_t i = 0; i < y->n; i++)
        diff = fmax(diff, fabs((double)yf->data[i] - y->data[i]) /
                              fmax(1.0, fabs((double)y->data[i])));
    /* The printout. */
    char t[256], sent[MAX_WORDS * (MAX_WORD + 1) + 1] = "";
    for (int i = 0; i < T; i++) {
        if (i) strcat(sent, " ");
        strcat(sent, tok[i]);
    }
    printf("Attention step by step: softmax(Q K^T / sqrt(d_k)) V (Vaswani et "
           "al. 2017, eq. 1)\n");
    printf("sentence \"%s\": %d token%s (split at spaces), d = %d, %d head%s "
           "of d_k = %d\n",
           sent, T, T > 1 ? "s" : "", D, H, H > 1 ? "s" : "", K);
    if (all_classic)
        printf("vectors: the classic example's (The = [1,0,1,0], cat = "
               "[0,1,0,1], sat = [1,1,1,1])\n");
    else
        printf("vectors: %sPCG32 with --seed %d, uniform over -1.0, -0.9, "
               "..., 1.0, one stream per word\n",
               any_classic ? "The, cat, sat classic; the others "
                             "from "
                           : "",
               seed);
    printf("weights W_Q, W_K, W_V%s: %s (--weights %s)\n\n",
           H > 1 ? ", W_O" : "",
           identity ? "identity" : "PCG32, as the vectors", weights);

    snprintf(t, sizeof t, "1. Token embeddings X (%d x %d): one row per token",
             T, D);
    print_matrix(t, X, T, D, tok, NULL, 0);
    printf("2. Queries, keys and values: Q = X W_Q, K = X W_K, V = X W_V%s\n\n",
           identity ? " (identity weights: Q = K = V = X)" : "");
    static const char *const qkv_name[3] = {"Q = X W_Q", "K = X W_K",
                                            "V = X W_V"};
    const qkv_tensor *proj[3] = {q, k, v};
    for (int m = 0; m < 3; m++) {
        snprintf(t, sizeof t, "%s (%d x %d):", wname[m], D, D);
        print_matrix(t, W[m], D, D, NULL, NULL, 0);
    }
    for (int m = 0; m < 3; m++) {
        snprintf(t, sizeof t, "%s (%d x %d):", qkv_name[m], T, D);
        print_matrix(t, proj[m]->data, T, D, tok, NULL, 0);
    }
    size_t tk = (size_t)T * K, tt = (size_t)T * T;
    for (int hh = 0; hh < H; hh++) {
        head_view hv = {qh->data + hh * tk, kh->data + hh * tk,
                        vh->data + hh * tk, z->data + hh * tt,
                        zs->data + hh * tt, zm->data + hh * tt,
                        a->data + hh * tt,  y->data + hh * tk};
        print_head(hh, H, T, K, !no_scale, causal, tok, &hv);
    }
    if (H > 1) {
        char heads[128] = "", one[32];
        for (int hh = 0; hh < H; hh++) {
            if (H > 4 && hh >= 2 && hh < H - 1) { /* out_1 | out_2 | ... */
                if (hh == 2) strcat(heads, " | ...");
                continue;
            }
            snprintf(one, sizeof one, "%sout_%d", hh ? " | " : "", hh + 1);
            strcat(heads, one);
        }
        snprintf(t, sizeof t,
                 "8. Concatenation of the heads [%s] (%d x %d):", heads, T, D);
        print_matrix(t, cat->data, T, D, tok, NULL, 0);
        printf("9. Output projection: output = concat W_O, mixing the "
               "heads\n\n");
        snprintf(t, sizeof t, "W_O (%d x %d):", D, D);
        print_matrix(t, W[3], D, D, NULL, NULL, 0);
        snprintf(t, sizeof t, "Output = concat W_O (%d x %d):", T, D);
        print_matrix(t, out->data, T, D, tok, NULL, 0);
    }
    printf("check: the fused kernel qkv_attention (core/attention.c) gives "
           "%s weights and outputs (largest relative difference %.1e)\n",
           diff <= 1e-5 ? "the same" : "DIFFERENT", diff);
    qkv_graph_free(&g);
    return diff <= 1e-5 ? 0 : 1;
}
