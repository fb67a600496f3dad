/* Finite-difference gradient checks for every op.
 *
 * For an op f with inputs x_1..x_m we take the scalar L = sum_i f(x)_i R_i with
 * a fixed random R (so every output element matters, with a different weight)
 * and compare the tape's dL/dx with central differences
 *     (L(x + h e_j) - L(x - h e_j)) / (2h),
 * L accumulated in double from the float32 outputs. The error of one entry is
 *     err_j = |fd_j - an_j| / (|an_j| + s),   s = mean_j |an_j|,
 * i.e. relative to the entry, but never to less than the typical gradient size
 * (so entries near zero do not blow up the ratio). Each op is checked on
 * several random shapes; the tolerance of each op is stated beside it.
 *
 * Why the tolerances are what they are: the forward runs in float32, so L
 * carries a rounding error of about 6e-8 * sqrt(n) * |f|, which the difference
 * divides by 2h = 2e-2: up to a few 1e-5 for our sizes (measured: <= 1.4e-5).
 * Ops that are linear in the checked input (matmul, add, mul, scale,
 * embedding, sum, mean, dropout with a fixed mask, relu away from 0) have no
 * truncation error, so their bound is 2e-4, >= 10x the measured error. Smooth
 * nonlinear ops (gelu, softmax, layernorm, attention, cross-entropy, and
 * reshape/heads, which are checked through a softmax) add the O(h^2 f''')
 * truncation error of central differences, ~1e-4 relative for h = 1e-2, and
 * float32 cancellation inside the op (layernorm's x - mean, softmax's exp):
 * their bound is 2e-3 (measured: <= 1.7e-4, attention). A wrong backward is
 * off by far more: the self-test at the end shows a 1% error is caught.
 */
#include "qkv.h"
#include "test.h"

#define H_STEP 1e-2

typedef struct case_ctx case_ctx;
typedef qkv_tensor *(*fwd_fn)(qkv_graph *g, qkv_tensor **x, case_ctx *c);

struct case_ctx {
    int ta, tb;      /* matmul */
    int heads;       /* split_heads */
    int32_t ids[64]; /* embedding ids / cross-entropy targets */
    int id_shape[2];
    uint8_t pad[64]; /* attention key padding */
    qkv_attn_opts attn;
    float p; /* dropout */
    uint64_t seed;
    float smoothing;
    int ignore;
    int new_shape[4], new_ndim;
    float tamper; /* self-test: value written into a scale node */
};

static qkv_pcg32 rng;

static int rnd(int lo, int hi) {
    return lo + (int)qkv_pcg32_bounded(&rng, (uint32_t)(hi - lo + 1));
}

/* L = sum_i y_i R_i in double; R is drawn from a fixed stream per call. */
static double weigh(const qkv_tensor *y) {
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 99, 1);
    double L = 0;
    for (size_t i = 0; i < y->n; i++)
        L += (double)y->data[i] * qkv_pcg32_normal(&r);
    return L;
}

static double worst_error; /* largest err over all cases of the current op */

/* Checks every input of f; returns 1 if all entries are within tol. */
static int gradcheck(fwd_fn f, case_ctx *c, qkv_params *ps, double tol) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor **x = ps->list;

    /* analytic: backward of L = sum(y * R) */
    qkv_params_zero_grad(ps);
    qkv_tensor *y = f(&g, x, c);
    qkv_tensor *R = qkv_tensor_new(&g, y->ndim, y->shape);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 99, 1);
    for (size_t i = 0; i < R->n; i++) R->data[i] = qkv_pcg32_normal(&r);
    qkv_backward(&g, qkv_sum(&g, qkv_mul(&g, y, R)));

    int ok = 1;
    qkv_graph_set_grad(&g, 0);
    for (int t = 0; t < ps->count; t++) {
        qkv_tensor *xt = x[t];
        if (!xt->requires_grad) continue;
        double s = 0;
        for (size_t j = 0; j < xt->n; j++) s += fabs(xt->grad[j]);
        s = s / (double)xt->n + 1e-6;
        for (size_t j = 0; j < xt->n; j++) {
            float keep = xt->data[j];
            float xp = (float)(keep + H_STEP), xm = (float)(keep - H_STEP);
            qkv_graph_reset(&g);
            xt->data[j] = xp;
            double Lp = weigh(f(&g, x, c));
            qkv_graph_reset(&g);
            xt->data[j] = xm;
            double Lm = weigh(f(&g, x, c));
            xt->data[j] = keep;
            double fd = (Lp - Lm) / ((double)xp - (double)xm);
            double an = xt->grad[j];
            double err = fabs(fd - an) / (fabs(an) + s);
            if (err > worst_error) worst_error = err;
            if (err > tol) {
                if (ok)
                    printf("  %s[%zu]: analytic %.7g, numeric %.7g (err %.2e > "
                           "%.0e)\n",
                           xt->name, j, an, fd, err, tol);
                ok = 0;
            }
        }
    }
    qkv_graph_free(&g);
    return ok;
}

/* A parameter store holding the inputs, filled with N(0, 1) values. */
static void inputs(qkv_params *ps, int count, const int ndims[],
                   const int shapes[][4]) {
    qkv_params_init(ps);
    for (int i = 0; i < count; i++) {
        char name[16];
        snprintf(name, sizeof name, "x%d", i);
        qkv_params_add(ps, name, ndims[i], shapes[i]);
    }
    qkv_params_alloc(ps);
    for (size_t i = 0; i < ps->n; i++) ps->values[i] = qkv_pcg32_normal(&rng);
}

static void report(const char *op, double tol) {
    printf("  %-14s max err %.2e  (tol %.0e)\n", op, worst_error, tol);
    worst_error = 0;
}

/* ------------------------------------------------------------- the ops */

static qkv_tensor *f_matmul(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    return qkv_matmul(g, x[0], x[1], c->ta, c->tb);
}

static qkv_tensor *f_matmul_relu(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    return qkv_matmul_relu(g, x[0], x[1], c->ta, c->tb);
}

/* min |element| of the product of the two inputs */
static double min_abs_product(qkv_params *ps, case_ctx *c) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *z = qkv_matmul(&g, ps->list[0], ps->list[1], c->ta, c->tb);
    double m = INFINITY;
    for (size_t i = 0; i < z->n; i++) m = fmin(m, fabs(z->data[i]));
    qkv_graph_free(&g);
    return m;
}

static void test_matmul(void) {
    const double tol = 2e-4;
    /* trials 12..23: the same cases with the relu fused into the product,
     * inputs redrawn until every element of the product is >= 3h from the
     * kink at 0 (one input moved by h moves it by h |other input| <= h) */
    for (int trial = 0; trial < 24; trial++) {
        case_ctx c = {.ta = trial & 1, .tb = (trial >> 1) & 1};
        int M = rnd(1, 5), N = rnd(1, 5), K = rnd(1, 5), Bt = rnd(2, 3);
        int mode = trial % 12 /
                   4; /* 0: 2-D, 1: batched a with shared b, 2: both batched */
        int ar = c.ta ? K : M, ac = c.ta ? M : K, br = c.tb ? N : K,
            bc = c.tb ? K : N;
        qkv_params ps;
        for (int draw = 0;; draw++) {
            if (mode == 0)
                inputs(&ps, 2, (int[]){2, 2}, (int[][4]){{ar, ac}, {br, bc}});
            else if (mode == 1)
                inputs(&ps, 2, (int[]){3, 2},
                       (int[][4]){{Bt, ar, ac}, {br, bc}});
            else
                inputs(&ps, 2, (int[]){4, 4},
                       (int[][4]){{2, Bt, ar, ac}, {2, Bt, br, bc}});
            if (trial < 12 || min_abs_product(&ps, &c) >= 3 * H_STEP) break;
            CHECK(draw < 1000, "no inputs clear of the kink");
            qkv_params_free(&ps);
        }
        CHECK(gradcheck(trial < 12 ? f_matmul : f_matmul_relu, &c, &ps, tol),
              "ta %d tb %d mode %d relu %d", c.ta, c.tb, mode, trial >= 12);
        qkv_params_free(&ps);
    }
    report("matmul", tol);
}

static qkv_tensor *f_add(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_add(g, x[0], x[1]);
}
static qkv_tensor *f_mul(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_mul(g, x[0], x[1]);
}

static void check_binary(fwd_fn f, const char *name) {
    const double tol = 2e-4;
    for (int trial = 0; trial < 4; trial++) {
        int A = rnd(1, 3), B = rnd(1, 4), C = rnd(1, 5);
        qkv_params ps;
        if (trial == 0) /* same shape */
            inputs(&ps, 2, (int[]){3, 3}, (int[][4]){{A, B, C}, {A, B, C}});
        else if (trial == 1) /* a row */
            inputs(&ps, 2, (int[]){3, 1}, (int[][4]){{A, B, C}, {C}});
        else /* trailing matrix, e.g. positions added to every batch */
            inputs(&ps, 2, (int[]){3, 2}, (int[][4]){{A, B, C}, {B, C}});
        case_ctx c = {0};
        CHECK(gradcheck(f, &c, &ps, tol), "%s trial %d", name, trial);
        qkv_params_free(&ps);
    }
    report(name, tol);
}

static void test_add(void) {
    check_binary(f_add, "add");
}
static void test_mul(void) {
    check_binary(f_mul, "mul");
}

static qkv_tensor *f_scale(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    qkv_tensor *y = qkv_scale(g, x[0], -1.75f);
    if (c->tamper != 0.0f && g->recording) /* self-test: corrupt the backward */
        g->nodes[g->n_nodes - 1].s.scale.s = c->tamper;
    return y;
}
static qkv_tensor *f_relu(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_relu(g, x[0]);
}
static qkv_tensor *f_relu_inplace(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    /* over an op's output (x2 then relu in place: the doubled values go) */
    (void)c;
    return qkv_relu_inplace(g, qkv_scale(g, x[0], 2.0f));
}
static qkv_tensor *f_gelu(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_gelu(g, x[0]);
}
static qkv_tensor *f_softmax(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_softmax(g, x[0]);
}
static qkv_tensor *f_dropout(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    qkv_pcg32 r; /* same seed on every call: the same mask */
    qkv_pcg32_seed(&r, c->seed, 3);
    return qkv_dropout(g, x[0], c->p, &r);
}
static qkv_tensor *f_sum(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_sum(g, x[0]);
}
static qkv_tensor *f_mean(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_mean(g, x[0]);
}
static qkv_tensor *f_reshape(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    /* reshape, then something nonuniform so the layout matters */
    return qkv_softmax(g, qkv_reshape(g, x[0], c->new_ndim, c->new_shape));
}

/* Unary op on a random (A, B, C) input. */
static void check_unary(fwd_fn f, const char *name, double tol, case_ctx *c,
                        int away_from_zero) {
    for (int trial = 0; trial < 3; trial++) {
        int A = rnd(1, 3), B = rnd(1, 4), C = rnd(1, 6);
        qkv_params ps;
        inputs(&ps, 1, (int[]){3}, (int[][4]){{A, B, C}});
        if (away_from_zero) /* keep clear of the kink: |x| >= 3h */
            for (size_t i = 0; i < ps.n; i++)
                if (fabsf(ps.values[i]) < 3 * H_STEP)
                    ps.values[i] = ps.values[i] < 0 ? -0.1f : 0.1f;
        if (c) {
            c->new_ndim = 2;
            c->new_shape[0] = A * B;
            c->new_shape[1] = C;
        }
        case_ctx c0 = {0};
        CHECK(gradcheck(f, c ? c : &c0, &ps, tol), "%s trial %d", name, trial);
        qkv_params_free(&ps);
    }
    report(name, tol);
}

static void test_scale(void) {
    check_unary(f_scale, "scale", 2e-4, NULL, 0);
}
static void test_relu(void) {
    check_unary(f_relu, "relu", 2e-4, NULL, 1);
    check_unary(f_relu_inplace, "relu in place", 2e-4, NULL, 1);
}
static void test_gelu(void) {
    check_unary(f_gelu, "gelu", 2e-3, NULL, 0);
}
static void test_softmax(void) {
    check_unary(f_softmax, "softmax", 2e-3, NULL, 0);
}
static void test_sum(void) {
    check_unary(f_sum, "sum", 2e-4, NULL, 0);
}
static void test_mean(void) {
    check_unary(f_mean, "mean", 2e-4, NULL, 0);
}
static void test_reshape(void) {
    case_ctx c = {0};
    check_unary(f_reshape, "reshape", 2e-3, &c, 0);
}
static void test_dropout(void) {
    case_ctx c = {.p = 0.3f, .seed = 17};
    check_unary(f_dropout, "dropout", 2e-4, &c, 0);
}

static qkv_tensor *f_layernorm(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    (void)c;
    return qkv_layernorm(g, x[0], x[1], x[2], 1e-5f);
}

static void test_layernorm(void) {
    const double tol = 2e-3;
    for (int trial = 0; trial < 3; trial++) {
        /* D >= 3: with D = 2 the normalised row is (-1, 1) or (1, -1)
         * whatever x is, dL/dx is ~0 (eps only) and float differences are
         * all noise */
        int A = rnd(1, 3), B = rnd(1, 4), D = rnd(3, 8);
        qkv_params ps;
        inputs(&ps, 3, (int[]){3, 1, 1}, (int[][4]){{A, B, D}, {D}, {D}});
        case_ctx c = {0};
        CHECK(gradcheck(f_layernorm, &c, &ps, tol), "trial %d", trial);
        qkv_params_free(&ps);
    }
    report("layernorm", tol);
}

static qkv_tensor *f_add_layernorm(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    qkv_tensor *b = c->heads ? x[0] : x[3]; /* heads = 1: LN(a + a) */
    return qkv_add_layernorm(g, x[0], b, x[1], x[2], 1e-5f);
}

static void test_add_layernorm(void) {
    const double tol = 2e-3;
    for (int trial = 0; trial < 4; trial++) {
        int A = rnd(1, 3), B = rnd(1, 4), D = rnd(3, 8);
        qkv_params ps;
        inputs(&ps, 4, (int[]){3, 1, 1, 3},
               (int[][4]){{A, B, D}, {D}, {D}, {A, B, D}});
        case_ctx c = {.heads = trial == 3};
        CHECK(gradcheck(f_add_layernorm, &c, &ps, tol), "trial %d", trial);
        qkv_params_free(&ps);
    }
    report("add_layernorm", tol);
}

static qkv_tensor *f_embedding(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    return qkv_embedding(g, x[0], c->ids, 2, c->id_shape);
}

static void test_embedding(void) {
    const double tol = 2e-4;
    for (int trial = 0; trial < 3; trial++) {
        int V = rnd(2, 6), D = rnd(1, 5);
        case_ctx c = {.id_shape = {rnd(1, 3), rnd(1, 5)}};
        for (int i = 0; i < c.id_shape[0] * c.id_shape[1]; i++)
            c.ids[i] = rnd(0, V - 1); /* repeats: the scatter must add */
        qkv_params ps;
        inputs(&ps, 1, (int[]){2}, (int[][4]){{V, D}});
        CHECK(gradcheck(f_embedding, &c, &ps, tol), "trial %d", trial);
        qkv_params_free(&ps);
    }
    report("embedding", tol);
}

static qkv_tensor *f_heads(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    /* split, weight each head differently, merge back */
    qkv_tensor *s = qkv_split_heads(g, x[0], c->heads);
    return qkv_merge_heads(g, qkv_softmax(g, s));
}

static void test_split_merge_heads(void) {
    const double tol = 2e-3;
    for (int trial = 0; trial < 3; trial++) {
        case_ctx c = {.heads = rnd(1, 3)};
        int B = rnd(1, 2), T = rnd(1, 4), K = rnd(1, 3);
        qkv_params ps;
        inputs(&ps, 1, (int[]){3}, (int[][4]){{B, T, c.heads * K}});
        CHECK(gradcheck(f_heads, &c, &ps, tol), "trial %d", trial);
        qkv_params_free(&ps);
    }
    report("split/merge", tol);
}

static qkv_tensor *f_attention(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    return qkv_attention(g, x[0], x[1], x[2], &c->attn);
}

static void test_attention(void) {
    const double tol = 2e-3;
    /* trials 0-5 on the small-heads kernel, 6-11 on the blocked sgemm */
    for (int trial = 0; trial < 12; trial++) {
        qkv_attention_small_max = trial < 6 ? 64 : 0;
        int B = rnd(1, 3), H = rnd(1, 2), K = rnd(1, 4), S = rnd(2, 5);
        int self = trial % 2 == 0, T = self ? S : rnd(1, 5);
        case_ctx c = {0};
        c.attn.causal = self && trial != 4;
        if (trial >= 2) { /* key padding; trial 3 masks one batch entirely */
            for (int b = 0; b < B; b++)
                for (int s = 0; s < S; s++)
                    c.pad[b * S + s] = (trial == 3 && b == 0) || s >= S - 1 - b;
            c.attn.key_pad = c.pad;
        }
        qkv_params ps;
        inputs(&ps, 3, (int[]){4, 4, 4},
               (int[][4]){{B, H, T, K}, {B, H, S, K}, {B, H, S, K}});
        CHECK(gradcheck(f_attention, &c, &ps, tol), "trial %d (T %d S %d)",
              trial % 6, T, S);
        qkv_params_free(&ps);
    }
    qkv_attention_small_max = 64;
    report("attention", tol);
}

/* Packed attention, its inputs made by an op (scale by 1) so that their
 * gradients start unallocated: mode 0, one (B,T,3D) tensor is q, k and v
 * (stored once each, no zeroing); 1, q (B,T,D) and one (B,S,2D) for k and
 * v; 2, q and k share columns 1..D of a (B,T,2D+1) tensor and column 0 is
 * unused (zeroed, accumulated). */
static qkv_tensor *f_attention_packed(qkv_graph *g, qkv_tensor **x,
                                      case_ctx *c) {
    int D = c->new_shape[0], H = c->heads;
    qkv_tensor *a = qkv_scale(g, x[0], 1.0f);
    if (c->new_ndim == 0)
        return qkv_attention_packed(g, a, 0, a, D, a, 2 * D, D, H, &c->attn);
    if (c->new_ndim == 1) {
        qkv_tensor *kv = qkv_scale(g, x[1], 1.0f);
        return qkv_attention_packed(g, a, 0, kv, 0, kv, D, D, H, &c->attn);
    }
    return qkv_attention_packed(g, a, 1, a, 1, a, D + 1, D, H, &c->attn);
}

static void test_attention_packed(void) {
    const double tol = 2e-3;
    for (int trial = 0; trial < 12; trial++) {
        qkv_attention_small_max = trial < 6 ? 64 : 0;
        int mode = trial % 3, H = rnd(1, 2), K = rnd(1, 3), D = H * K;
        int B = rnd(1, 2), S = rnd(2, 5), T = mode == 1 ? rnd(1, 5) : S;
        case_ctx c = {.heads = H, .new_shape = {D}, .new_ndim = mode};
        c.attn.causal = mode != 1;
        if (trial % 2) {
            for (int b = 0; b < B; b++)
                for (int j = 0; j < S; j++) c.pad[b * S + j] = j >= S - 1 - b;
            c.attn.key_pad = c.pad;
        }
        int w0 = mode == 0 ? 3 * D : mode == 1 ? D : 2 * D + 1;
        qkv_params ps;
        inputs(&ps, mode == 1 ? 2 : 1, (int[]){3, 3},
               (int[][4]){{B, T, w0}, {B, S, 2 * D}});
        CHECK(gradcheck(f_attention_packed, &c, &ps, tol),
              "trial %d (mode %d T %d S %d K %d)", trial, mode, T, S, K);
        qkv_params_free(&ps);
    }
    qkv_attention_small_max = 64;
    report("attn packed", tol);
}

static qkv_tensor *f_xent(qkv_graph *g, qkv_tensor **x, case_ctx *c) {
    return qkv_cross_entropy(g, x[0], c->ids, c->ignore, c->smoothing);
}

static void test_cross_entropy(void) {
    const double tol = 2e-3;
    for (int trial = 0; trial < 4; trial++) {
        int B = rnd(1, 3), T = rnd(1, 4), V = rnd(2, 7);
        case_ctx c = {.ignore = 0, .smoothing = trial >= 2 ? 0.1f : 0.0f};
        for (int i = 0; i < B * T; i++) c.ids[i] = rnd(0, V - 1);
        c.ids[0] = (trial & 1) ? 0 : 1; /* odd trials ignore at least row 0 */
        c.ids[B * T - 1] = 1;           /* and keep at least one row */
        qkv_params ps;
        inputs(&ps, 1, (int[]){3}, (int[][4]){{B, T, V}});
        CHECK(gradcheck(f_xent, &c, &ps, tol), "trial %d", trial);
        qkv_params_free(&ps);
    }
    report("cross_entropy", tol);
}

/* The checker itself: a backward that is 1% wrong must be flagged. */
static void test_checker_catches_wrong_gradient(void) {
    qkv_params ps;
    inputs(&ps, 1, (int[]){2}, (int[][4]){{3, 4}});
    case_ctx right = {0}, wrong = {.tamper = -1.75f * 1.01f};
    CHECK(gradcheck(f_scale, &right, &ps, 2e-4), "the true gradient fails");
    printf("  (the next mismatch is expected)\n");
    CHECK(!gradcheck(f_scale, &wrong, &ps, 2e-4),
          "a gradient 1%% off passed the check");
    worst_error = 0;
    qkv_params_free(&ps);
}

int main(void) {
    test_prog = "grad";
    qkv_pcg32_seed(&rng, 2024, 7);
    RUN(test_matmul);
    RUN(test_add);
    RUN(test_mul);
    RUN(test_scale);
    RUN(test_relu);
    RUN(test_gelu);
    RUN(test_dropout);
    RUN(test_softmax);
    RUN(test_layernorm);
    RUN(test_add_layernorm);
    RUN(test_embedding);
    RUN(test_reshape);
    RUN(test_split_merge_heads);
    RUN(test_attention);
    RUN(test_attention_packed);
    RUN(test_cross_entropy);
    RUN(test_sum);
    RUN(test_mean);
    RUN(test_checker_catches_wrong_gradient);
    return test_summary();
}
