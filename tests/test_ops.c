/* Known values, masks, tape semantics, memory and misuse of the core ops. */

#include "qkv.h"
#include "test.h"
#include "vec.h"

static qkv_tensor *from(qkv_graph *g, int ndim, const int *shape,
                        const float *v) {
    qkv_tensor *t = qkv_tensor_new(g, ndim, shape);
    memcpy(t->data, v, t->n * sizeof(float));
    return t;
}

/* ---------------------------------------------------------- known values */

static void test_softmax_known(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *y = qkv_softmax(&g, from(&g, 1, (int[]){2}, (float[]){6, 4}));
    CHECK_NEAR(y->data[0], 0.8808, 5e-5, "softmax([6,4])[0]");
    CHECK_NEAR(y->data[1], 0.1192, 5e-5, "softmax([6,4])[1]");
    /* stable for huge logits */
    y = qkv_softmax(&g, from(&g, 1, (int[]){3}, (float[]){1000, 1000, -1000}));
    CHECK_NEAR(y->data[0], 0.5, 1e-7, "softmax of large logits");
    CHECK(y->data[2] == 0.0f, "exp(-2000) underflows to 0");
    qkv_graph_free(&g);
}

/* Single-head attention over The=[1,0,1,0], cat=[0,1,0,1], sat=[1,1,1,1]
 * with identity W_Q, W_K, W_V: Q = K = V = X, scores scaled by 1/sqrt(4). */
static void test_attention_known(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    const float X[12] = {1, 0, 1, 0, 0, 1, 0, 1, 1, 1, 1, 1};
    float I[16] = {0};
    for (int i = 0; i < 4; i++) I[i * 4 + i] = 1;
    qkv_tensor *x = from(&g, 2, (int[]){3, 4}, X),
               *w = from(&g, 2, (int[]){4, 4}, I);
    qkv_tensor *q = qkv_matmul(&g, x, w, 0, 1), *k = qkv_matmul(&g, x, w, 0, 1),
               *v = qkv_matmul(&g, x, w, 0, 1);
    int s4[4] = {1, 1, 3, 4};
    float weights[9];
    qkv_attn_opts o = {.scale = 0.5f, .weights = weights};
    qkv_tensor *y =
        qkv_attention(&g, qkv_reshape(&g, q, 4, s4), qkv_reshape(&g, k, 4, s4),
                      qkv_reshape(&g, v, 4, s4), &o);
    const float wthe[3] = {0.4223f, 0.1554f, 0.4223f};
    const float ythe[4] = {0.8446f, 0.5777f, 0.8446f, 0.5777f};
    for (int j = 0; j < 3; j++)
        CHECK_NEAR(weights[j], wthe[j], 5e-5, "weight of The");
    for (int j = 0; j < 4; j++)
        CHECK_NEAR(y->data[j], ythe[j], 5e-5, "output for The");
    for (int i = 0; i < 3; i++) {
        double s = 0;
        for (int j = 0; j < 3; j++) s += weights[i * 3 + j];
        CHECK_NEAR(s, 1.0, 1e-6, "row sums to 1");
    }
    /* opts->scale 0 means 1/sqrt(d_k): same numbers */
    qkv_attn_opts o2 = {.weights = weights};
    qkv_attention(&g, qkv_reshape(&g, q, 4, s4), qkv_reshape(&g, k, 4, s4),
                  qkv_reshape(&g, v, 4, s4), &o2);
    CHECK_NEAR(weights[1], 0.1554, 5e-5, "default scale is 1/sqrt(d_k)");
    qkv_graph_free(&g);
}

static void test_layernorm_known(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *x = from(&g, 1, (int[]){4}, (float[]){1, 2, 3, 4});
    qkv_tensor *ga = from(&g, 1, (int[]){4}, (float[]){1, 1, 2, 1});
    qkv_tensor *be = from(&g, 1, (int[]){4}, (float[]){0, 0, 0, 1});
    qkv_tensor *y = qkv_layernorm(&g, x, ga, be, 1e-5f);
    /* mean 2.5, biased var 1.25:
     * xhat = (-1.5, -.5, .5, 1.5) / sqrt(1.25 + 1e-5) */
    double r = 1 / sqrt(1.25 + 1e-5);
    CHECK_NEAR(y->data[0], -1.5 * r, 1e-6, "y0");
    CHECK_NEAR(y->data[2], 2 * 0.5 * r, 1e-6, "y2 (gamma 2)");
    CHECK_NEAR(y->data[3], 1.5 * r + 1, 1e-6, "y3 (beta 1)");
    qkv_graph_free(&g);
}

static void test_gelu_and_xent_known(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    /* torch.nn.functional.gelu(torch.tensor([-1., 0.5, 2.])) */
    qkv_tensor *y =
        qkv_gelu(&g, from(&g, 1, (int[]){3}, (float[]){-1, 0.5f, 2}));
    CHECK_NEAR(y->data[0], -0.158655, 1e-6, "gelu(-1)");
    CHECK_NEAR(y->data[1], 0.345731, 1e-6, "gelu(0.5)");
    CHECK_NEAR(y->data[2], 1.954500, 1e-6, "gelu(2)");
    /* F.cross_entropy([[1,2,3],[1,1,1]], [2,0]) by hand: row 0 is
     * log(e + e^2 + e^3) - 3 = 0.407606, row 1 log 3 = 1.098612; with
     * label_smoothing 0.1 each row adds 0.1 * (mean_j -log p_j - nll). */
    qkv_tensor *l = from(&g, 2, (int[]){2, 3}, (float[]){1, 2, 3, 1, 1, 1});
    int32_t t[2] = {2, 0};
    CHECK_NEAR(qkv_cross_entropy(&g, l, t, -100, 0.0f)->data[0], 0.753109, 1e-5,
               "cross entropy");
    CHECK_NEAR(qkv_cross_entropy(&g, l, t, -100, 0.1f)->data[0], 0.803109, 1e-5,
               "cross entropy, smoothing 0.1");
    int32_t t2[2] = {2, -100}; /* second row ignored: only row 0 counts */
    CHECK_NEAR(qkv_cross_entropy(&g, l, t2, -100, 0.0f)->data[0], 0.407606,
               1e-5, "ignore_index");
    int32_t t3[2] = {-100, -100};
    CHECK(qkv_cross_entropy(&g, l, t3, -100, 0.0f)->data[0] == 0.0f,
          "all rows ignored gives 0, not NaN");
    qkv_graph_free(&g);
}

/* ------------------------------------------------- vectorised helpers */

static void test_vec_helpers(void) {
    /* qkv_expf against libm's expf: within 2 ulp over [-87, 88] */
    double worst = 0;
    for (int i = 0; i <= 2000000; i++) {
        float x = -87.0f + 175.0f * (float)i / 2000000.0f;
        float a = qkv_expf(x), b = expf(x);
        double ulp = fabs((double)a - b) / (nextafterf(b, INFINITY) - b);
        worst = fmax(worst, ulp);
    }
    printf("  qkv_expf: max %.2f ulp from expf on [-87, 88]\n", worst);
    CHECK(worst <= 2.0, "qkv_expf is %.2f ulp from expf", worst);
    CHECK(qkv_expf(-INFINITY) == 0.0f && qkv_expf(-100.0f) == 0.0f,
          "exp of a masked score is exactly 0");
    CHECK(qkv_expf(0.0f) == 1.0f, "exp(0) = %.9g", (double)qkv_expf(0.0f));
    CHECK(isinf(qkv_expf(100.0f)) && isnan(qkv_expf(NAN)), "inf and nan");
    /* the 16-lane vexpf gives qkv_expf's bits (both softmax paths rely on
     * it), including the clamps, -inf, +inf and NaN */
    int differ = 0;
    for (int i = 0; i < 200000; i += VW) {
        vf v;
        for (int l = 0; l < VW; l++)
            v[l] = -100.0f + 200.0f * (float)(i + l) / 200000.0f;
        if (i == 0) v[0] = -INFINITY, v[1] = INFINITY, v[2] = NAN;
        vf e = vexpf(v);
        float got[VW];
        memcpy(got, &e, sizeof got);
        for (int l = 0; l < VW; l++) {
            float want = qkv_expf(v[l]);
            differ += memcmp(&got[l], &want, sizeof want) != 0;
        }
    }
    CHECK(differ == 0, "vexpf differs from qkv_expf in %d lanes", differ);
    /* lane sums against double sums, on odd lengths */
    static const int lens[] = {0, 1, 7, 16, 17, 33, 127, 256};
    float x[256], y[256], z[256];
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 8, 8);
    for (int i = 0; i < 256; i++) {
        x[i] = qkv_pcg32_normal(&r);
        y[i] = qkv_pcg32_normal(&r);
        z[i] = qkv_pcg32_normal(&r);
    }
    for (size_t c = 0; c < sizeof lens / sizeof lens[0]; c++) {
        int n = lens[c];
        /* the order is fixed: lane l = j mod 16 sums in j order, then the
         * lanes pairwise (l + 8 into l, then 4, 2, 1): bit for bit */
        float p[16] = {0}, dp[16] = {0};
        for (int i = 0; i < n; i++)
            p[i % 16] += x[i], dp[i % 16] += x[i] * y[i];
        for (int w = 8; w >= 1; w /= 2)
            for (int l = 0; l < w; l++) p[l] += p[l + w], dp[l] += dp[l + w];
        CHECK(qkv_vsum(x, n) == p[0] && qkv_vdot(x, y, n) == dp[0],
              "lane order, n %d", n);
        double s = 0, d = 0, q = 0, t = 0, mx = -INFINITY, mag = 1e-30;
        for (int i = 0; i < n; i++) {
            s += x[i];
            d += (double)x[i] * y[i];
            q += ((double)x[i] - 0.5) * ((double)x[i] - 0.5);
            t += (double)x[i] * y[i] * ((double)z[i] - 0.5);
            mx = fmax(mx, x[i]);
            mag += fabs(x[i]) * (1 + fabs(y[i]) * (1 + fabs(z[i])));
        }
        double tol = 1e-6 * mag;
        CHECK(fabs(qkv_vsum(x, n) - s) <= tol, "vsum n %d", n);
        CHECK(fabs(qkv_vdot(x, y, n) - d) <= tol, "vdot n %d", n);
        CHECK(fabs(qkv_vsqdev(x, 0.5f, n) - q) <= tol * 4, "vsqdev n %d", n);
        CHECK(fabs(qkv_vdot3(x, y, z, 0.5f, n) - t) <= tol, "vdot3 n %d", n);
        CHECK(qkv_vmax(x, n) == (float)mx, "vmax n %d", n);
    }
}

/* ------------------------------------------------------------------ masks */

static void test_causal_and_padding_masks(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 5, 5);
    int B = 2, H = 2, T = 5, K = 3, sh[4] = {B, H, T, K};
    qkv_tensor *x[3];
    for (int i = 0; i < 3; i++) {
        x[i] = qkv_tensor_new(&g, 4, sh);
        for (size_t j = 0; j < x[i]->n; j++)
            x[i]->data[j] = 3 * qkv_pcg32_normal(&r);
    }
    uint8_t pad[10] = {0, 0, 0, 1, 1, /* batch 1: all keys padded */ 1,
                       1, 1, 1, 1};
    float w[2 * 2 * 5 * 5];
    qkv_attn_opts o = {.causal = 1, .key_pad = pad, .weights = w};
    qkv_tensor *y = qkv_attention(&g, x[0], x[1], x[2], &o);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < T; i++) {
            const float *row = w + ((size_t)(0 * H + h) * T + i) * T;
            double s = 0;
            for (int j = 0; j < T; j++) {
                if (j > i)
                    CHECK(row[j] == 0.0f, "causal: query %d sees key %d", i, j);
                if (pad[j])
                    CHECK(row[j] == 0.0f, "padded key %d has weight %g", j,
                          (double)row[j]);
                s += row[j];
            }
            CHECK_NEAR(s, 1.0, 1e-6, "visible weights sum to 1");
        }
    /* batch 1 sees no key at all: weights 0 and output 0, never NaN */
    for (size_t j = (size_t)H * T * T; j < 2 * (size_t)H * T * T; j++)
        CHECK(w[j] == 0.0f, "fully masked weight %g", (double)w[j]);
    for (size_t j = y->n / 2; j < y->n; j++)
        CHECK(y->data[j] == 0.0f, "fully masked output %g", (double)y->data[j]);
    /* Causal changes nothing in the past: outputs at t depend only on keys
     * <= t. Perturb the last key/value; outputs before the last query are
     * unchanged. */
    float before[2 * 5 * 3];
    memcpy(before, y->data, sizeof before);
    for (int h = 0; h < H; h++)
        for (int k = 0; k < K; k++) {
            x[1]->data[((size_t)h * T + T - 1) * K + k] += 5;
            x[2]->data[((size_t)h * T + T - 1) * K + k] -= 5;
        }
    uint8_t nopad[10] = {0};
    o.key_pad = nopad;
    qkv_tensor *y1 = qkv_attention(&g, x[0], x[1], x[2], &o);
    o.key_pad = NULL;
    qkv_tensor *y2 = qkv_attention(&g, x[0], x[1], x[2], &o);
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T - 1; t++)
            for (int k = 0; k < K; k++) {
                size_t i = ((size_t)h * T + t) * K + k;
                CHECK(y1->data[i] == y2->data[i],
                      "all-zero padding mask changes y");
                (void)before;
            }
    qkv_graph_free(&g);
}

static void test_causal_cross_offset(void) {
    /* Incremental decoding: 1 query against 4 keys sees all 4 (the query is
     * the last position); 2 queries against 4 keys: the first sees 3. */
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *q = qkv_tensor_zeros(&g, 4, (int[]){1, 1, 2, 2});
    qkv_tensor *k = qkv_tensor_zeros(&g, 4, (int[]){1, 1, 4, 2});
    float w[8];
    qkv_attn_opts o = {.causal = 1, .weights = w};
    qkv_attention(&g, q, k, k, &o);
    CHECK_NEAR(w[0], 1 / 3.0, 1e-6, "first query: 3 keys");
    CHECK(w[3] == 0.0f, "first query: not the 4th key");
    CHECK_NEAR(w[7], 0.25, 1e-6, "second query: 4 keys");
    qkv_graph_free(&g);
}

/* One attention forward + backward on (B,H,T,K) inputs; copies y and the
 * three input gradients to out (y, dq, dk, dv one after another). */
static void attention_run(int B, int H, int T, int S, int K, int causal,
                          float *out) {
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_tensor *x[3] = {
        qkv_params_add(&ps, "q", 4, (int[]){B, H, T, K}),
        qkv_params_add(&ps, "k", 4, (int[]){B, H, S, K}),
        qkv_params_add(&ps, "v", 4, (int[]){B, H, S, K}),
    };
    qkv_params_alloc(&ps);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, (uint64_t)(T * 1000 + S * 10 + K), 3);
    for (size_t i = 0; i < ps.n; i++) ps.values[i] = qkv_pcg32_normal(&r);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    uint8_t *pad = qkv_arena_alloc(&g.arena, (size_t)B * S);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S; j++) pad[b * S + j] = j > 0 && j >= S - b;
    qkv_attn_opts o = {.causal = causal, .key_pad = pad};
    qkv_tensor *y = qkv_attention(&g, x[0], x[1], x[2], &o);
    qkv_tensor *R = qkv_tensor_new(&g, 4, y->shape);
    for (size_t i = 0; i < R->n; i++) R->data[i] = qkv_pcg32_normal(&r);
    qkv_backward(&g, qkv_sum(&g, qkv_mul(&g, y, R)));
    memcpy(out, y->data, y->n * sizeof(float));
    memcpy(out + y->n, ps.grads, ps.n * sizeof(float));
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

static void test_attention_kernels_agree(void) {
    /* The small-heads kernel (T, S, K <= 64) against the blocked sgemm it
     * replaces, on odd shapes: forward and all three gradients. */
    static const int dims[][3] = {{1, 1, 1},    {7, 7, 3},   {16, 16, 16},
                                  {5, 33, 7},   {33, 5, 17}, {64, 64, 32},
                                  {63, 64, 64}, {2, 17, 33}};
    static float a[2 * 3 * 64 * 64 * 4 + 4 * 3 * 64 * 64],
        b[sizeof a / sizeof a[0]];
    double worst = 0;
    for (size_t c = 0; c < sizeof dims / sizeof dims[0]; c++)
        for (int causal = 0; causal < 2; causal++) {
            int B = 2, H = 3, T = dims[c][0], S = dims[c][1], K = dims[c][2];
            size_t n = (size_t)B * H * (2 * T * K + 2 * S * K);
            qkv_attention_small_max = 64;
            attention_run(B, H, T, S, K, causal, a);
            qkv_attention_small_max = 0;
            attention_run(B, H, T, S, K, causal, b);
            double scale = 0, err = 0;
            for (size_t i = 0; i < n; i++) {
                scale = fmax(scale, fabs(b[i]));
                err = fmax(err, fabs(a[i] - b[i]));
            }
            err /= scale + 1e-30;
            worst = fmax(worst, err);
            CHECK(err < 1e-5, "T %d S %d K %d causal %d: max error %.2e", T, S,
                  K, causal, err);
        }
    qkv_attention_small_max = 64;
    printf("  small-heads kernel vs sgemm: max relative error %.2e\n", worst);
}

static void test_attention_packed_is_split_merge(void) {
    /* One (B,T,3D) tensor read in place as q, k, v gives the same bits as
     * split_heads of its three column blocks, attention, merge_heads. */
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int B = 3, T = 9, H = 4, K = 8, D = H * K;
    qkv_tensor *qkv = qkv_tensor_new(&g, 3, (int[]){B, T, 3 * D});
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 11, 2);
    for (size_t i = 0; i < qkv->n; i++) qkv->data[i] = qkv_pcg32_normal(&r);
    qkv_tensor *part[3];
    for (int p = 0; p < 3; p++) {
        qkv_tensor *t = qkv_tensor_new(&g, 3, (int[]){B, T, D});
        for (int row = 0; row < B * T; row++)
            memcpy(t->data + (size_t)row * D,
                   qkv->data + (size_t)row * 3 * D + p * D, D * sizeof(float));
        part[p] = qkv_split_heads(&g, t, H);
    }
    qkv_attn_opts o = {.causal = 1};
    qkv_tensor *want =
        qkv_merge_heads(&g, qkv_attention(&g, part[0], part[1], part[2], &o));
    qkv_tensor *got =
        qkv_attention_packed(&g, qkv, 0, qkv, D, qkv, 2 * D, D, H, &o);
    CHECK(qkv_same_shape(got, want), "shape");
    CHECK(memcmp(got->data, want->data, got->n * sizeof(float)) == 0,
          "packed attention differs from split/attention/merge");
    qkv_graph_free(&g);
}

/* ----------------------------------------------------------- tape, memory */

/* add_layernorm == layernorm(add(...)) bit for bit, forward and backward,
 * with a's gradient fresh or accumulating and with a == b. */
static void ln_grads(int fused, int same, float *out, size_t n) {
    qkv_params ps;
    qkv_params_init(&ps);
    int B = 3, T = 70, D = 48; /* rows * D > the parallel threshold */
    qkv_tensor *a = qkv_params_add(&ps, "a", 3, (int[]){B, T, D});
    qkv_tensor *b = qkv_params_add(&ps, "b", 3, (int[]){B, T, D});
    qkv_tensor *ga = qkv_params_add(&ps, "g", 1, (int[]){D});
    qkv_tensor *be = qkv_params_add(&ps, "be", 1, (int[]){D});
    qkv_params_alloc(&ps);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 5, 6);
    for (size_t i = 0; i < ps.n; i++) ps.values[i] = qkv_pcg32_normal(&r);
    if (same) b = a;
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_params_zero_grad(&ps);
    qkv_tensor *y = fused ? qkv_add_layernorm(&g, a, b, ga, be, 1e-5f)
                          : qkv_layernorm(&g, qkv_add(&g, a, b), ga, be, 1e-5f);
    /* a also feeds a second branch, so its gradient accumulates */
    qkv_tensor *s = qkv_sum(&g, qkv_mul(&g, qkv_add(&g, y, a), y));
    qkv_backward(&g, s);
    CHECK(ps.n + y->n == n, "size");
    memcpy(out, ps.grads, ps.n * sizeof(float));
    memcpy(out + ps.n, y->data, y->n * sizeof(float));
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

static void test_add_layernorm_is_add_then_layernorm(void) {
    size_t n = 3 * 3 * 70 * 48 + 2 * 48;
    float *f = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
    for (int same = 0; same < 2; same++) {
        for (int t = 1; t <= 2; t++) {
            qkv_set_threads(t);
            ln_grads(1, same, f, n);
            ln_grads(0, same, u, n);
            CHECK(memcmp(f, u, n * sizeof(float)) == 0,
                  "fused and unfused differ (a == b: %d, %d threads)", same, t);
        }
        double m = 0;
        for (size_t i = 0; i < n; i++) m += fabs(f[i]);
        CHECK(m > 0 && isfinite(m), "values nonzero and finite (%g)", m);
    }
    qkv_set_threads(2);
    free(f);
    free(u);
}

/* loss = sum(relu(x W1^T) W2^T * c) with the relu fused into the product
 * or not: the loss, x's and the weights' gradients, for 1 and 2 threads
 * (test_grad checks the fused op by finite differences). */
static void mm_relu_grads(int fused, float *out, size_t n) {
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_tensor *x = qkv_params_add(&ps, "x", 3, (int[]){3, 70, 48});
    qkv_tensor *w1 = qkv_params_add(&ps, "w1", 2, (int[]){96, 48});
    qkv_tensor *w2 = qkv_params_add(&ps, "w2", 2, (int[]){16, 96});
    qkv_params_alloc(&ps);
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 5, 1);
    for (size_t i = 0; i < ps.n; i++)
        ps.values[i] = 2.0f * qkv_pcg32_float(&rng) - 1.0f;
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *h = fused ? qkv_matmul_relu(&g, x, w1, 0, 1)
                          : qkv_relu_inplace(&g, qkv_matmul(&g, x, w1, 0, 1));
    qkv_tensor *loss =
        qkv_sum(&g, qkv_scale(&g, qkv_matmul(&g, h, w2, 0, 1), 0.37f));
    qkv_backward(&g, loss);
    CHECK(ps.n + 1 == n, "sizes");
    memcpy(out, ps.grads, ps.n * sizeof(float));
    out[ps.n] = loss->data[0];
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

static void test_matmul_relu_is_matmul_then_relu(void) {
    size_t n = 3 * 70 * 48 + 96 * 48 + 16 * 96 + 1;
    float *f = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
    for (int t = 1; t <= 2; t++) {
        qkv_set_threads(t);
        mm_relu_grads(1, f, n);
        mm_relu_grads(0, u, n);
        CHECK(memcmp(f, u, n * sizeof(float)) == 0,
              "fused and unfused differ (%d threads)", t);
    }
    double m = 0;
    size_t zeros = 0;
    for (size_t i = 0; i < n; i++) m += fabs(f[i]), zeros += f[i] == 0.0f;
    CHECK(m > 0 && isfinite(m) && zeros < n / 2,
          "gradients nonzero and finite (%g, %zu zeros)", m, zeros);
    qkv_set_threads(2);
    free(f);
    free(u);
}

static void test_tape_accumulates(void) {
    /* y = sum(x * x + x): dy/dx = 2x + 1, x reaches the loss three ways */
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_tensor *x = qkv_params_add(&ps, "x", 1, (int[]){3});
    qkv_params_alloc(&ps);
    float xv[3] = {-1, 0.5f, 2};
    memcpy(x->data, xv, sizeof xv);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_backward(&g, qkv_sum(&g, qkv_add(&g, qkv_mul(&g, x, x), x)));
    for (int i = 0; i < 3; i++)
        CHECK_NEAR(x->grad[i], 2 * xv[i] + 1, 1e-6, "dx");
    /* backward again without zeroing accumulates, as in PyTorch */
    qkv_graph_reset(&g);
    qkv_backward(&g, qkv_sum(&g, qkv_scale(&g, x, 3)));
    for (int i = 0; i < 3; i++)
        CHECK_NEAR(x->grad[i], 2 * xv[i] + 4, 1e-6, "accumulated");
    qkv_params_zero_grad(&ps);
    for (int i = 0; i < 3; i++) CHECK(x->grad[i] == 0.0f, "zero_grad");
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

static void test_backward_reuses_gradients(void) {
    /* A chain of 16 scales of a (1024) vector: an intermediate's gradient is
     * dead once its op's backward ran, so the backward holds about two
     * gradient buffers at a time, not 16; afterwards only the leaf keeps
     * one (PyTorch's .grad rule). */
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_tensor *x = qkv_params_add(&ps, "x", 1, (int[]){1024});
    qkv_params_alloc(&ps);
    for (int i = 0; i < 1024; i++) x->data[i] = (float)i;
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *h[16], *y = x;
    for (int i = 0; i < 16; i++) h[i] = y = qkv_scale(&g, y, 0.5f);
    size_t forward = g.arena.total;
    qkv_backward(&g, qkv_sum(&g, y));
    size_t backward = g.arena.total - forward, buf = 1024 * sizeof(float);
    printf("  backward of 16 ops took %zu KiB of gradients (%zu KiB each)\n",
           backward / 1024, buf / 1024);
    CHECK(backward <= 3 * buf, "backward allocated %zu bytes", backward);
    for (int i = 0; i < 16; i++)
        CHECK(h[i]->grad == NULL, "intermediate %d kept its gradient", i);
    CHECK(x->grad[5] == 1.0f / 65536.0f, "dx = 2^-16, got %g",
          (double)x->grad[5]);
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

static void test_no_grad_records_nothing(void) {
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_tensor *w = qkv_params_add(&ps, "w", 2, (int[]){4, 4});
    qkv_params_alloc(&ps);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *x = qkv_tensor_zeros(&g, 2, (int[]){2, 4});
    qkv_relu(&g, qkv_matmul(&g, x, w, 0, 1));
    CHECK(g.n_nodes == 2, "recording: %d nodes, want 2", g.n_nodes);
    qkv_graph_reset(&g); /* x went with the arena: make it anew */
    x = qkv_tensor_zeros(&g, 2, (int[]){2, 4});
    int was = qkv_graph_set_grad(&g, 0);
    CHECK(was == 1, "recording was on");
    qkv_tensor *y = qkv_relu(&g, qkv_matmul(&g, x, w, 0, 1));
    CHECK(g.n_nodes == 0, "no_grad: %d nodes", g.n_nodes);
    CHECK(!y->requires_grad, "no_grad output requires grad");
    /* ops on inputs that need no gradient record nothing either */
    qkv_graph_set_grad(&g, 1);
    qkv_relu(&g, x);
    CHECK(g.n_nodes == 0, "op on a constant recorded %d nodes", g.n_nodes);
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

static void test_params_layout(void) {
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_tensor *a = qkv_params_add(&ps, "enc.w", 2, (int[]){3, 5});
    qkv_tensor *b = qkv_params_add(&ps, "enc.gamma", 1, (int[]){7});
    qkv_params_alloc(&ps);
    CHECK(ps.n == 22, "total %zu", ps.n);
    CHECK(a->data == ps.values && b->data == ps.values + 15,
          "values are one buffer");
    CHECK(a->grad == ps.grads && b->grad == ps.grads + 15,
          "grads mirror values");
    CHECK(qkv_params_find(&ps, "enc.gamma") == b, "find by name");
    CHECK(qkv_params_find(&ps, "nope") == NULL, "missing name");
    CHECK(((uintptr_t)ps.values & 63) == 0, "values 64-byte aligned");
    CHECK(qkv_params_finite(&ps), "zeros are finite");
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int k = 0; k < 3; k++) {
        b->data[6] = bad[k]; /* the last value */
        CHECK(!qkv_params_finite(&ps), "%g taken for finite", (double)bad[k]);
        b->data[6] = 1e38f;
        CHECK(qkv_params_finite(&ps), "1e38 is finite");
    }
    qkv_params_free(&ps);
}

/* Zeroing a store big enough for the threads to share (pieces of n / 64):
 * every gradient, the last pieces' included, for 1-3 threads. */
static void test_zero_grad_all(void) {
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_params_add(&ps, "w", 2, (int[]){1031, 1021}); /* 1,052,651 > 2^20 */
    qkv_params_add(&ps, "b", 1, (int[]){3});
    qkv_params_alloc(&ps);
    for (int t = 1; t <= 3; t++) {
        qkv_set_threads(t);
        for (size_t i = 0; i < ps.n; i++) ps.grads[i] = 1.0f + (float)(i % 5);
        qkv_params_zero_grad(&ps);
        size_t left = 0;
        for (size_t i = 0; i < ps.n; i++) left += ps.grads[i] != 0.0f;
        CHECK(left == 0, "zero_grad, %d thread(s): %zu of %zu not zeroed", t,
              left, ps.n);
    }
    qkv_set_threads(0);
    qkv_params_free(&ps);
}

/* A steady-state step (same shapes as the one before) calls no malloc. */
static void test_arena_steady_state(void) {
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_tensor *w = qkv_params_add(&ps, "w", 2, (int[]){32, 16});
    qkv_tensor *ga = qkv_params_add(&ps, "g", 1, (int[]){32});
    qkv_tensor *be = qkv_params_add(&ps, "b", 1, (int[]){32});
    qkv_params_alloc(&ps);
    for (size_t i = 0; i < ps.n; i++) ps.values[i] = 0.01f * (float)(i % 17);
    qkv_graph g;
    qkv_graph_init(&g, 1024); /* deliberately too small: it must grow */
    size_t mallocs = 0, reallocs = 0;
    for (int step = 0; step < 4; step++) {
        qkv_graph_reset(&g);
        if (step == 2) {
            mallocs = g.arena.n_mallocs;
            reallocs = g.n_reallocs;
        }
        qkv_tensor *x = qkv_tensor_zeros(&g, 3, (int[]){4, 8, 16});
        for (size_t i = 0; i < x->n; i++) x->data[i] = (float)(i % 5);
        qkv_tensor *h =
            qkv_layernorm(&g, qkv_matmul(&g, x, w, 0, 1), ga, be, 1e-5f);
        qkv_tensor *q = qkv_split_heads(&g, h, 4);
        qkv_tensor *a = qkv_merge_heads(&g, qkv_attention(&g, q, q, q, NULL));
        int32_t tgt[32] = {0};
        qkv_tensor *loss = qkv_cross_entropy(&g, a, tgt, -1, 0.1f);
        qkv_params_zero_grad(&ps);
        qkv_backward(&g, loss);
    }
    CHECK(g.arena.n_mallocs == mallocs, "steps 3-4 called malloc %zu times",
          g.arena.n_mallocs - mallocs);
    CHECK(g.n_reallocs == reallocs, "tape grew after step 2");
    CHECK(g.arena.cap >= g.arena.peak, "arena holds a whole step");
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

/* ----------------------------------------------------------- determinism */

/* Forward + backward of a small attention block; returns a checksum of all
 * parameter gradients and copies them to out. */
static void block_grads(int threads, float *out, size_t n) {
    qkv_set_threads(threads);
    qkv_params ps;
    qkv_params_init(&ps);
    int D = 64, T = 32, B = 8, V = 50;
    qkv_tensor *emb = qkv_params_add(&ps, "emb", 2, (int[]){V, D});
    qkv_tensor *wq = qkv_params_add(&ps, "wq", 2, (int[]){D, D});
    qkv_tensor *w1 = qkv_params_add(&ps, "w1", 2, (int[]){4 * D, D});
    qkv_tensor *w2 = qkv_params_add(&ps, "w2", 2, (int[]){V, 4 * D});
    qkv_tensor *ga = qkv_params_add(&ps, "ga", 1, (int[]){D});
    qkv_tensor *be = qkv_params_add(&ps, "be", 1, (int[]){D});
    qkv_params_alloc(&ps);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 11, 12);
    for (size_t i = 0; i < ps.n; i++)
        ps.values[i] = 0.2f * qkv_pcg32_normal(&r);
    int32_t ids[8 * 32];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)qkv_pcg32_bounded(&r, V);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *x = qkv_embedding(&g, emb, ids, 2, (int[]){B, T});
    qkv_tensor *q = qkv_split_heads(&g, qkv_matmul(&g, x, wq, 0, 1), 4);
    qkv_attn_opts o = {.causal = 1};
    qkv_tensor *a = qkv_merge_heads(&g, qkv_attention(&g, q, q, q, &o));
    qkv_tensor *h = qkv_layernorm(&g, qkv_add(&g, x, a), ga, be, 1e-5f);
    h = qkv_add_layernorm(&g, h, x, ga, be, 1e-5f);
    qkv_tensor *f = qkv_gelu(&g, qkv_matmul(&g, h, w1, 0, 1));
    qkv_pcg32 dr;
    qkv_pcg32_seed(&dr, 1, 1);
    f = qkv_dropout(&g, f, 0.1f, &dr);
    qkv_tensor *logits = qkv_matmul(&g, f, w2, 0, 1);
    qkv_backward(&g, qkv_cross_entropy(&g, logits, ids, 0, 0.1f));
    CHECK(ps.n == n, "size");
    memcpy(out, ps.grads, n * sizeof(float));
    qkv_graph_free(&g);
    qkv_params_free(&ps);
}

static void test_threads_bitwise_identical(void) {
    size_t n = 50 * 64 + 64 * 64 + 256 * 64 + 50 * 256 + 128;
    float *g1 = malloc(n * sizeof(float)), *g2 = malloc(n * sizeof(float));
    block_grads(1, g1, n);
    block_grads(2, g2, n);
    qkv_set_threads(2);
    CHECK(memcmp(g1, g2, n * sizeof(float)) == 0,
          "gradients differ between 1 and 2 threads");
    /* and the threads' shares of the work (threads.h) do not matter */
    for (int k = 0; k < 2; k++) {
        qkv_share_fix(2, k ? (double[]){0.8, 0.2} : (double[]){0.15, 0.85});
        block_grads(2, g2, n);
        CHECK(memcmp(g1, g2, n * sizeof(float)) == 0,
              "gradients differ with shares %s",
              k ? "0.8 : 0.2" : "0.15 : 0.85");
    }
    qkv_share_fix(2, NULL);
    qkv_set_threads(2);
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs(g1[i]);
    CHECK(s > 0 && isfinite(s), "gradients are nonzero and finite (%g)", s);
    free(g1);
    free(g2);
}

/* ------------------------------------------------------------------ misuse */

static void bad_matmul(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_matmul(&g, qkv_tensor_zeros(&g, 2, (int[]){2, 3}),
               qkv_tensor_zeros(&g, 2, (int[]){4, 5}), 0, 0);
}
static void bad_add(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_add(&g, qkv_tensor_zeros(&g, 2, (int[]){2, 3}),
            qkv_tensor_zeros(&g, 1, (int[]){2}));
}
static void bad_heads(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_split_heads(&g, qkv_tensor_zeros(&g, 3, (int[]){2, 3, 10}), 4);
}
static void bad_attention(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *q = qkv_tensor_zeros(&g, 4, (int[]){1, 2, 3, 4});
    qkv_tensor *k = qkv_tensor_zeros(&g, 4, (int[]){1, 2, 5, 8});
    qkv_attention(&g, q, k, k, NULL);
}
static void bad_embedding(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int32_t ids[2] = {1, 7};
    qkv_embedding(&g, qkv_tensor_zeros(&g, 2, (int[]){5, 3}), ids, 1,
                  (int[]){2});
}
static void bad_target(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int32_t t[1] = {9};
    qkv_cross_entropy(&g, qkv_tensor_zeros(&g, 2, (int[]){1, 4}), t, -100, 0);
}
static void bad_overflow(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor_new(&g, 4, (int[]){1 << 30, 1 << 30, 1 << 30, 1 << 30});
}
static void bad_backward(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_backward(&g, qkv_tensor_zeros(&g, 1, (int[]){3}));
}
static void bad_reshape(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_reshape(&g, qkv_tensor_zeros(&g, 2, (int[]){2, 3}), 1, (int[]){5});
}

static const test_misuse misuse[] = {
    {"matmul", bad_matmul, {"matmul", "(2,3)", "(4,5)"}},
    {"add", bad_add, {"add", "(2,3)", "(2)"}},
    {"heads", bad_heads, {"split_heads", "(2,3,10)", "4"}},
    {"attention", bad_attention, {"attention", "(1,2,3,4)", "(1,2,5,8)"}},
    {"embedding", bad_embedding, {"embedding", "id 7", "(5,3)"}},
    {"target", bad_target, {"cross_entropy", "target 9"}},
    {"overflow", bad_overflow, {"overflow"}},
    {"backward", bad_backward, {"backward", "scalar", "(3)"}},
    {"reshape", bad_reshape, {"reshape", "(2,3)"}},
};
#define N_MISUSE (int)(sizeof misuse / sizeof misuse[0])

static void test_misuse_is_a_clear_error(void) {
    test_misuse_all(misuse, N_MISUSE);
}

int main(int argc, char **argv) {
    if (test_die(argc, argv, misuse, N_MISUSE)) return 0;
    test_prog = "ops";
    RUN(test_softmax_known);
    RUN(test_attention_known);
    RUN(test_layernorm_known);
    RUN(test_gelu_and_xent_known);
    RUN(test_vec_helpers);
    RUN(test_causal_and_padding_masks);
    RUN(test_causal_cross_offset);
    RUN(test_attention_kernels_agree);
    RUN(test_attention_packed_is_split_merge);
    RUN(test_add_layernorm_is_add_then_layernorm);
    RUN(test_matmul_relu_is_matmul_then_relu);
    RUN(test_tape_accumulates);
    RUN(test_backward_reuses_gradients);
    RUN(test_no_grad_records_nothing);
    RUN(test_params_layout);
    RUN(test_zero_grad_all);
    RUN(test_arena_steady_state);
    RUN(test_threads_bitwise_identical);
    RUN(test_misuse_is_a_clear_error);
    return test_summary();
}
