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

/* What the steps of qkv explain share: the flags, the sentence, the inputs
 * and every tensor of the forward pass. */
typedef struct explain_run {
    int D, H, K, T, no_scale, causal, seed; /* K = D / H */
    const char *weights;                    /* --weights */
    char words[MAX_WORDS][MAX_WORD + 1];
    const char *tok[MAX_WORDS]; /* (T) the words, as row labels */
    int all_classic, any_classic, identity;
    float X[MAX_WORDS * MAX_D];  /* (T, D) embeddings */
    float W[4][MAX_D * MAX_D];   /* (D, D) each: W_Q, W_K, W_V, W_O */
    qkv_tensor *q, *k, *v;       /* (1, T, D) */
    qkv_tensor *qh, *kh, *vh;    /* (1, H, T, K) */
    qkv_tensor *z, *zs, *zm, *a; /* (1, H, T, T) raw, scaled, masked, weights */
    qkv_tensor *y;               /* (1, H, T, K) */
    qkv_tensor *cat, *out;       /* (1, T, D) */
    double diff;                 /* largest difference from the fused kernel */
} explain_run;

/* Names of the weights W[0..4). */
static const char *const wname[4] = {"W_Q", "W_K", "W_V", "W_O"};

/* Parses qkv explain's flags and sentence into e and checks them; a bad
 * one ends the program. */
static void explain_parse(explain_run *e, int argc, char **argv) {
    int scale_flag = 0;
    e->D = 4, e->H = 1, e->seed = 1, e->weights = "auto";
    const flag flags[] = {
        {"d", FLAG_INT, &e->D, NULL,
         "width d: columns of the embeddings (1..16)", 1, 16},
        {"heads", FLAG_INT, &e->H, NULL,
         "attention heads H; must divide d (d_k = d / H)", 1, INT_MAX},
        {"scale", FLAG_BOOL, &scale_flag, NULL,
         "divide the scores by sqrt(d_k); done anyway unless --no-scale", 0, 0},
        {"no-scale", FLAG_BOOL, &e->no_scale, NULL,
         "skip the scaling, to see what it changes", 0, 0},
        {"causal", FLAG_BOOL, &e->causal, NULL,
         "mask later tokens with -inf (decoder self-attention)", 0, 0},
        {"weights", FLAG_STR, &e->weights, "auto|identity|random",
         "W_Q, W_K, W_V, W_O; auto: identity for the classic example (d 4, "
         "words among The cat sat), else random",
         0, 0},
        {"seed", FLAG_INT, &e->seed, NULL,
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
    int D = e->D, H = e->H;
    if (D < 1 || D > MAX_D)
        cli_die("explain: --d must be between 1 and %d, got %d", MAX_D, D);
    if (H < 1) cli_die("explain: --heads must be positive, got %d", H);
    if (D % H)
        cli_die("explain: --heads %d does not divide --d %d (each head gets "
                "d / heads columns)",
                H, D);
    if (scale_flag && e->no_scale)
        cli_die("explain: --scale and --no-scale contradict each other");
    e->K = D / H;
    static const char *const dflt[] = {"The cat sat"};
    e->T = n_pos ? split_words(pos, n_pos, e->words)
                 : split_words(dflt, 1, e->words);
}

/* The inputs: a vector per word (the classic one, else drawn), and the
 * weights W_Q, W_K, W_V, W_O (identity, else drawn). */
static void explain_inputs(explain_run *e) {
    int D = e->D;
    e->all_classic = D == 4, e->any_classic = 0;
    for (int i = 0; i < e->T; i++) {
        e->tok[i] = e->words[i];
        const float *c = D == 4 ? classic_vector(e->words[i]) : NULL;
        if (c) {
            memcpy(e->X + (size_t)i * D, c, 4 * sizeof *c);
            e->any_classic = 1;
        } else {
            draw(e->X + (size_t)i * D, D, e->seed, "word", e->words[i]);
            e->all_classic = 0;
        }
    }
    e->identity = strcmp(e->weights, "identity") == 0 ||
                  (strcmp(e->weights, "auto") == 0 && e->all_classic);
    for (int m = 0; m < 4; m++) {
        if (e->identity) {
            memset(e->W[m], 0, sizeof e->W[m]);
            for (int i = 0; i < D; i++) e->W[m][i * D + i] = 1;
        } else {
            draw(e->W[m], D * D, e->seed, "weight", wname[m]);
        }
    }
}

/* The forward pass with the library's ops on g, then the same attention
 * by the fused kernel, its largest difference kept in e->diff. */
static void explain_forward(explain_run *e, qkv_graph *g) {
    int D = e->D, H = e->H, T = e->T, K = e->K;
    qkv_tensor *x = qkv_tensor_wrap(g, e->X, 3, (int[]){1, T, D});
    qkv_tensor *w[4];
    for (int m = 0; m < 4; m++)
        w[m] = qkv_tensor_wrap(g, e->W[m], 2, (int[]){D, D});
    e->q = qkv_matmul(g, x, w[0], 0, 0); /* (1,T,D) = X W_Q */
    e->k = qkv_matmul(g, x, w[1], 0, 0);
    e->v = qkv_matmul(g, x, w[2], 0, 0);
    e->qh = qkv_split_heads(g, e->q, H); /* (1,H,T,K) */
    e->kh = qkv_split_heads(g, e->k, H);
    e->vh = qkv_split_heads(g, e->v, H);
    e->z = qkv_matmul(g, e->qh, e->kh, 0, 1); /* (1,H,T,T) */
    e->zs = e->no_scale ? e->z : qkv_scale(g, e->z, 1.0f / sqrtf((float)K));
    e->zm = e->zs;
    if (e->causal) { /* key j hidden from query i when j > i */
        e->zm = qkv_tensor_new(g, 4, e->zs->shape);
        memcpy(e->zm->data, e->zs->data, e->zs->n * sizeof *e->zs->data);
        for (int hh = 0; hh < H; hh++)
            for (int i = 0; i < T; i++)
                for (int j = i + 1; j < T; j++)
                    e->zm->data[((size_t)hh * T + i) * T + j] = -INFINITY;
    }
    e->a = qkv_softmax(g, e->zm);
    e->y = qkv_matmul(g, e->a, e->vh, 0, 0); /* (1,H,T,K) */
    e->cat = qkv_merge_heads(g, e->y);       /* (1,T,D) */
    e->out = H > 1 ? qkv_matmul(g, e->cat, w[3], 0, 0) : e->cat;

    /* The same attention by the fused kernel, for the check at the end. */
    float Af[MAX_D * MAX_WORDS * MAX_WORDS]; /* (H,T,T) */
    qkv_attn_opts o = {
        .causal = e->causal, .scale = e->no_scale ? 1.0f : 0.0f, .weights = Af};
    qkv_tensor *yf = qkv_attention(g, e->qh, e->kh, e->vh, &o);
    /* Weights are at most 1; outputs are compared relative to their size,
     * which random weights can make large. */
    const qkv_tensor *a = e->a, *y = e->y;
    double diff = 0;
    for (size_t i = 0; i < a->n; i++)
        diff = fmax(diff, fabs((double)Af[i] - a->data[i]));
    for (size_t i = 0; i < y->n; i++)
        diff = fmax(diff, fabs((double)yf->data[i] - y->data[i]) /
                              fmax(1.0, fabs((double)y->data[i])));
    e->diff = diff;
}

/* Prints what is explained (sentence, sizes, vectors, weights), then
 * steps 1 and 2: the embeddings and the projections Q, K, V. */
static void print_inputs(const explain_run *e) {
    int D = e->D, H = e->H, T = e->T;
    char t[256], sent[MAX_WORDS * (MAX_WORD + 1) + 1] = "";
    for (int i = 0; i < T; i++) {
        if (i) strcat(sent, " ");
        strcat(sent, e->tok[i]);
    }
    printf("Attention step by step: softmax(Q K^T / sqrt(d_k)) V (Vaswani et "
           "al. 2017, eq. 1)\n");
    printf("sentence \"%s\": %d token%s (split at spaces), d = %d, %d head%s "
           "of d_k = %d\n",
           sent, T, T > 1 ? "s" : "", D, H, H > 1 ? "s" : "", e->K);
    if (e->all_classic)
        printf("vectors: the classic example's (The = [1,0,1,0], cat = "
               "[0,1,0,1], sat = [1,1,1,1])\n");
    else
        printf("vectors: %sPCG32 with --seed %d, uniform over -1.0, -0.9, "
               "..., 1.0, one stream per word\n",
               e->any_classic ? "The, cat, sat classic; the others "
                                "from "
                              : "",
               e->seed);
    printf("weights W_Q, W_K, W_V%s: %s (--weights %s)\n\n",
           H > 1 ? ", W_O" : "",
           e->identity ? "identity" : "PCG32, as the vectors", e->weights);

    snprintf(t, sizeof t, "1. Token embeddings X (%d x %d): one row per token",
             T, D);
    print_matrix(t, e->X, T, D, e->tok, NULL, 0);
    printf("2. Queries, keys and values: Q = X W_Q, K = X W_K, V = X W_V%s\n\n",
           e->identity ? " (identity weights: Q = K = V = X)" : "");
    static const char *const qkv_name[3] = {"Q = X W_Q", "K = X W_K",
                                            "V = X W_V"};
    const qkv_tensor *proj[3] = {e->q, e->k, e->v};
    for (int m = 0; m < 3; m++) {
        snprintf(t, sizeof t, "%s (%d x %d):", wname[m], D, D);
        print_matrix(t, e->W[m], D, D, NULL, NULL, 0);
    }
    for (int m = 0; m < 3; m++) {
        snprintf(t, sizeof t, "%s (%d x %d):", qkv_name[m], T, D);
        print_matrix(t, proj[m]->data, T, D, e->tok, NULL, 0);
    }
}

/* Steps 8 and 9, with several heads: their concatenation and the output
 * projection W_O. */
static void print_concat(const explain_run *e) {
    int D = e->D, H = e->H, T = e->T;
    char t[256], heads[128] = "", one[32];
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
    print_matrix(t, e->cat->data, T, D, e->tok, NULL, 0);
    printf("9. Output projection: output = concat W_O, mixing the "
           "heads\n\n");
    snprintf(t, sizeof t, "W_O (%d x %d):", D, D);
    print_matrix(t, e->W[3], D, D, NULL, NULL, 0);
    snprintf(t, sizeof t, "Output = concat W_O (%d x %d):", T, D);
    print_matrix(t, e->out->data, T, D, e->tok, NULL, 0);
}

/* qkv explain: parse, build the inputs, run, print every step and the check. */
int cmd_explain(int argc, char **argv) {
    explain_run e = {0};
    explain_parse(&e, argc, argv);
    explain_inputs(&e);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_graph_set_grad(&g, 0);
    explain_forward(&e, &g);
    print_inputs(&e);
    int H = e.H, T = e.T, K = e.K;
    size_t tk = (size_t)T * K, tt = (size_t)T * T;
    for (int hh = 0; hh < H; hh++) {
        head_view hv = {e.qh->data + hh * tk, e.kh->data + hh * tk,
                        e.vh->data + hh * tk, e.z->data + hh * tt,
                        e.zs->data + hh * tt, e.zm->data + hh * tt,
                        e.a->data + hh * tt,  e.y->data + hh * tk};
        print_head(hh, H, T, K, !e.no_scale, e.causal, e.tok, &hv);
    }
    if (H > 1) print_concat(&e);
    printf("check: the fused kernel qkv_attention (core/attention.c) gives "
           "%s weights and outputs (largest relative difference %.1e)\n",
           e.diff <= 1e-5 ? "the same" : "DIFFERENT", e.diff);
    qkv_graph_free(&g);
    return e.diff <= 1e-5 ? 0 : 1;
}
