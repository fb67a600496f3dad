/* The models: parameter names and counts, config errors, and finite-difference
 * gradients of the whole loss with respect to every parameter, in each
 * variant (post/pre-norm, sinusoidal/learned positions, tied output, GELU,
 * decoder-only), with real padding in the batch. */
#include "decode.h"
#include "model.h"
#include "test.h"

/* A batch of 2 with padding: source lengths 5 and 3, target lengths 4 and 2. */
enum { B = 2, S = 5, T = 4 };
static const int32_t src[B * S] = {3, 4, 5, 6, 2, 4, 4, 6, 0, 0};
static const uint8_t src_pad[B * S] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
static const int32_t tgt_in[B * T] = {1, 5, 2, 6, 1, 3, 0, 0};
static const int32_t tgt_out[B * T] = {5, 2, 6, 3, 3, 4, 0, 0};
static const uint8_t tgt_pad[B * T] = {0, 0, 0, 0, 0, 0, 1, 1};

static qkv_batch batch(int decoder_only) {
    qkv_batch b = {B, S, T, src, src_pad, tgt_in, tgt_out, tgt_pad};
    if (decoder_only) b.src = NULL, b.src_pad = NULL, b.S = 0;
    return b;
}

/* The tiny model, narrower still (D 8, F 12, 8 positions) for the gradient
 * checks, with two encoder layers so that one layer feeds another. */
static qkv_model_config tiny(qkv_model_kind kind) {
    qkv_model_config c = test_tiny_config(kind, 7);
    c.d_model = 8;
    c.d_ff = 12;
    c.n_enc = kind == QKV_MODEL_ENCDEC ? 2 : 0;
    c.max_len = 8;
    return c;
}

static void test_names_and_counts(void) {
    qkv_model m;
    char err[200];
    qkv_model_config c = tiny(QKV_MODEL_ENCDEC);
    CHECK(qkv_model_init(&m, &c, 1, err, sizeof err) == 0, "init: %s", err);
    const char *want[] = {"src_embed.weight",
                          "tgt_embed.weight",
                          "encoder.layers.0.self_attn.w_q",
                          "encoder.layers.1.ffn.w2",
                          "encoder.layers.1.norm2.gamma",
                          "decoder.layers.0.self_attn.w_o",
                          "decoder.layers.0.cross_attn.w_k",
                          "decoder.layers.0.norm3.beta",
                          "generator.weight"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK(qkv_params_find(&m.params, want[i]), "no parameter %s", want[i]);
    /* embeddings 2*7*8, encoder 2*(4*64 + 2*96 + 4*8), decoder 8*64 + 2*96 +
     * 6*8, generator 7*8 */
    size_t n = 2 * 56 + 2 * (256 + 192 + 32) + (512 + 192 + 48) + 56;
    CHECK(m.params.n == n, "parameters: %zu, want %zu", m.params.n, n);
    qkv_tensor *g = qkv_params_find(&m.params, "decoder.layers.0.norm1.gamma");
    CHECK(g && g->data[0] == 1.0f, "gamma starts at 1");
    qkv_tensor *w = qkv_params_find(&m.params, "encoder.layers.0.ffn.w1");
    float a = sqrtf(6.0f / (8 + 12)), mx = 0;
    for (size_t i = 0; w && i < w->n; i++) mx = fmaxf(mx, fabsf(w->data[i]));
    CHECK(mx <= a && mx > 0.8f * a, "xavier bound %g, max |w| %g", (double)a,
          (double)mx);
    qkv_model_free(&m);

    c.norm = QKV_NORM_PRE;
    c.pos = QKV_POS_LEARNED;
    c.tie_output = 1;
    CHECK(qkv_model_init(&m, &c, 1, err, sizeof err) == 0, "init: %s", err);
    CHECK(qkv_params_find(&m.params, "encoder.norm.gamma") &&
              qkv_params_find(&m.params, "decoder.norm.beta"),
          "pre-norm has final norms");
    CHECK(qkv_params_find(&m.params, "src_pos.weight"), "learned positions");
    CHECK(!qkv_params_find(&m.params, "generator.weight") &&
              m.generator == m.tgt_embed,
          "tied generator");
    qkv_model_free(&m);

    qkv_model_config d = tiny(QKV_MODEL_DECODER);
    CHECK(qkv_model_init(&m, &d, 1, err, sizeof err) == 0, "init: %s", err);
    CHECK(!qkv_params_find(&m.params, "decoder.layers.0.cross_attn.w_q"),
          "decoder-only has no cross-attention");
    CHECK(m.params.n == 56 + 256 + 192 + 32 + 56, "decoder-only count %zu",
          m.params.n);
    qkv_model_free(&m);
}

static void test_bad_config(void) {
    qkv_model m;
    char err[200] = "";
    qkv_model_config c = tiny(QKV_MODEL_ENCDEC);
    c.heads = 3;
    CHECK(qkv_model_init(&m, &c, 1, err, sizeof err) == -1,
          "h = 3, d = 8 accepted");
    CHECK(strstr(err, "h = 3 does not divide d_model = 8"), "message: %s", err);
    c = tiny(QKV_MODEL_ENCDEC);
    c.dropout = 1.0f;
    CHECK(qkv_model_init(&m, &c, 1, err, sizeof err) == -1,
          "dropout 1 accepted");
    CHECK(strstr(err, "dropout"), "message: %s", err);
}

/* A fingerprint of which ReLU inputs are positive, read off the tape. */
static uint64_t relu_pattern(const qkv_graph *g) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i].op == QKV_OP_RELU) {
            const qkv_tensor *x = g->nodes[i].in[0];
            for (size_t j = 0; j < x->n; j++)
                h = (h ^ (uint64_t)(x->data[j] > 0)) * 1099511628211ull;
        }
    return h;
}

/* L(params) in double; the tape records so relu_pattern can read it. */
static double loss_of(qkv_model *m, qkv_graph *g, const qkv_batch *b,
                      uint64_t *pattern) {
    qkv_graph_reset(g);
    double l = qkv_model_loss(m, g, b, 0.1f)->data[0];
    *pattern = relu_pattern(g);
    return l;
}

/* Central differences over every parameter; returns the worst error.
 * With ReLU the loss has kinks: where a step flips the sign of any ReLU
 * input, the difference straddles a kink and the entry is skipped (and
 * counted), as docs/STYLE.md asks. */
static double model_gradcheck(const qkv_model_config *c, double *skipped) {
    qkv_model m;
    char err[200];
    if (qkv_model_init(&m, c, 7, err, sizeof err)) {
        CHECK(0, "init: %s", err);
        return 1;
    }
    qkv_batch b = batch(c->kind == QKV_MODEL_DECODER);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_params_zero_grad(&m.params);
    qkv_tensor *loss = qkv_model_loss(&m, &g, &b, 0.1f);
    uint64_t base = relu_pattern(&g), pp, pm;
    qkv_backward(&g, loss);
    double s = 0, worst = 0;
    for (size_t i = 0; i < m.params.n; i++) s += fabs(m.params.grads[i]);
    s /= (double)m.params.n;
    const double h = 1e-2;
    size_t skip = 0;
    for (size_t i = 0; i < m.params.n; i++) {
        float keep = m.params.values[i];
        float xp = (float)(keep + h), xm = (float)(keep - h);
        m.params.values[i] = xp;
        double lp = loss_of(&m, &g, &b, &pp);
        m.params.values[i] = xm;
        double lm = loss_of(&m, &g, &b, &pm);
        m.params.values[i] = keep;
        if (pp != base || pm != base) {
            skip++;
            continue;
        }
        double fd = (lp - lm) / ((double)xp - (double)xm),
               an = m.params.grads[i];
        double e = fabs(fd - an) / (fabs(an) + s);
        if (e > worst) worst = e;
    }
    *skipped = (double)skip / (double)m.params.n;
    qkv_graph_free(&g);
    qkv_model_free(&m);
    return worst;
}

/* Tolerance 5e-3: the loss of a whole model in float32 has rounding noise of
 * ~1e-7 relative, magnified by 1/(2h) = 50, and the stacked nonlinearities
 * have larger third derivatives than one op (truncation ~ h^2 f'''/6).
 * Measured worst errors (~1e-3) are printed; a wrong backward anywhere (a
 * dropped residual, a mask applied on one side only) gives errors of order 1.
 */
static void check_variant(const char *name, qkv_model_config c) {
    double skipped = 0, e = model_gradcheck(&c, &skipped);
    printf("  %-30s max err %.2e (%.1f%% skipped at ReLU kinks)\n", name, e,
           100 * skipped);
    CHECK(e < 5e-3, "%s: gradient error %.3e", name, e);
    CHECK(skipped < 0.05, "%s: %.1f%% of entries at kinks", name,
          100 * skipped);
}

static void test_gradients_post_norm_sinusoidal(void) {
    check_variant("post-norm, sinusoidal", tiny(QKV_MODEL_ENCDEC));
}
static void test_gradients_pre_norm_learned_tied_gelu(void) {
    qkv_model_config c = tiny(QKV_MODEL_ENCDEC);
    c.norm = QKV_NORM_PRE;
    c.pos = QKV_POS_LEARNED;
    c.tie_output = 1;
    c.act = QKV_ACT_GELU;
    c.scale_emb = 0;
    check_variant("pre-norm, learned, tied, gelu", c);
}
static void test_gradients_decoder_only(void) {
    check_variant("decoder-only", tiny(QKV_MODEL_DECODER));
}
static void test_gradients_post_norm_gelu(void) {
    qkv_model_config c = tiny(QKV_MODEL_ENCDEC);
    c.act = QKV_ACT_GELU;
    check_variant("post-norm, sinusoidal, gelu", c);
}

static void test_padding_is_invisible(void) {
    /* Changing the ids under the padding changes neither the logits of the
     * real positions nor the loss. */
    qkv_model m;
    char err[200];
    qkv_model_config c = tiny(QKV_MODEL_ENCDEC);
    CHECK(qkv_model_init(&m, &c, 3, err, sizeof err) == 0, "%s", err);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_batch b = batch(0);
    qkv_tensor *l1 = qkv_model_forward(&m, &g, &b);
    float loss1 = qkv_model_loss(&m, &g, &b, 0.0f)->data[0];
    int32_t src2[B * S], tgt2[B * T];
    memcpy(src2, src, sizeof src2);
    memcpy(tgt2, tgt_in, sizeof tgt2);
    src2[8] = src2[9] = 5; /* under src padding */
    tgt2[6] = tgt2[7] = 4; /* under tgt padding */
    qkv_batch b2 = b;
    b2.src = src2;
    b2.tgt_in = tgt2;
    qkv_tensor *l2 = qkv_model_forward(&m, &g, &b2);
    float loss2 = qkv_model_loss(&m, &g, &b2, 0.0f)->data[0];
    int V = c.tgt_vocab;
    for (int bb = 0; bb < B; bb++)
        for (int t = 0; t < T; t++)
            if (!tgt_pad[bb * T + t])
                for (int v = 0; v < V; v++) {
                    size_t i = ((size_t)bb * T + t) * V + v;
                    CHECK(l1->data[i] == l2->data[i], "logit (%d,%d,%d) moved",
                          bb, t, v);
                }
    CHECK(loss1 == loss2, "loss %g vs %g", (double)loss1, (double)loss2);
    qkv_graph_free(&g);
    qkv_model_free(&m);
}

/* Greedy decoding holds one step in the arena, not the whole decode: its
 * peak stays below that of one no-grad forward over the full length. (It
 * kept every step's activations once: 2.7 GB for 200 validation sentences
 * of 32 tokens at d_model 128.) */
static void test_greedy_arena_holds_one_step(void) {
    qkv_model m;
    char err[200];
    qkv_model_config c = tiny(QKV_MODEL_ENCDEC);
    c.max_len = 24;
    CHECK(qkv_model_init(&m, &c, 3, err, sizeof err) == 0, "%s", err);
    enum { GB = 16, GS = 20 };
    int32_t in[GB * GS], out[GB * (GS + 1)];
    for (int i = 0; i < GB * GS; i++) in[i] = 3 + i % 4;
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_greedy(&m, &g, in, NULL, GB, GS, 1, -1, GS, out); /* bos 1 */
    size_t greedy = g.arena.peak;
    qkv_graph_free(&g);
    qkv_graph_init(&g, 0);
    qkv_graph_set_grad(&g, 0);
    g.training = 0;
    qkv_batch b = {GB, GS, GS, in, NULL, in, in, NULL};
    qkv_model_forward(&m, &g, &b);
    size_t full = g.arena.peak;
    CHECK(greedy <= full, "greedy's arena peak %zu > one full forward's %zu",
          greedy, full);
    qkv_graph_free(&g);
    qkv_model_free(&m);
}

/* The activation estimate bounds the arena's real peak from above, within
 * a factor of 3, for training steps and forwards of models of every kind. */
static void test_activation_estimate_bounds_the_arena(void) {
    double lo = 1e9, hi = 0;
    static const struct {
        int dec, pre, B, S, T, D, H, F, V, N;
        float drop;
    } c[] = {
        {0, 0, 32, 16, 16, 64, 4, 256, 16, 2, 0},     /* bench tiny */
        {0, 0, 32, 64, 64, 256, 8, 1024, 1000, 2, 0}, /* base's shapes */
        {0, 0, 8, 200, 201, 64, 4, 128, 50, 2, 0.1f}, /* long, dropout */
        {1, 1, 16, 0, 201, 128, 8, 512, 300, 3, 0.1f},
        {0, 1, 64, 10, 11, 32, 2, 64, 11, 1, 0},
        {1, 0, 4, 0, 500, 64, 16, 128, 100, 2, 0}, /* attention dominates */
        {0, 0, 2, 30, 5, 16, 1, 32, 4000, 1, 0},   /* the vocabulary does */
        {0, 1, 3, 7, 40, 48, 3, 40, 9, 3, 0.3f},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        qkv_model_config mc =
            qkv_model_defaults(c[i].dec ? QKV_MODEL_DECODER : QKV_MODEL_ENCDEC);
        mc.src_vocab = mc.tgt_vocab = c[i].V;
        mc.d_model = c[i].D, mc.heads = c[i].H, mc.d_ff = c[i].F;
        mc.n_enc = c[i].dec ? 0 : c[i].N, mc.n_dec = c[i].N;
        mc.max_len = c[i].S > c[i].T ? c[i].S : c[i].T;
        mc.dropout = c[i].drop;
        mc.norm = c[i].pre ? QKV_NORM_PRE : QKV_NORM_POST;
        qkv_model m;
        char err[200];
        if (qkv_model_init(&m, &mc, 1, err, sizeof err)) {
            CHECK(0, "%s", err);
            continue;
        }
        int nb = c[i].B, ls = c[i].S, lt = c[i].T;
        size_t ns = (size_t)nb * (ls ? ls : 1), nt = (size_t)nb * lt;
        int32_t *xs = calloc(ns, sizeof *xs), *tin = calloc(nt, 4),
                *tout = calloc(nt, 4);
        uint8_t *sp = calloc(ns, 1), *tp = calloc(nt, 1);
        for (size_t k = 0; k < ns; k++) xs[k] = 3 + (int32_t)(k % 5);
        for (size_t k = 0; k < nt; k++)
            tin[k] = 3 + (int32_t)(k % 5), tout[k] = 3 + (int32_t)(k % 3);
        qkv_batch b = {
            nb,  ls,   lt, c[i].dec ? NULL : xs, c[i].dec ? NULL : sp,
            tin, tout, tp};
        qkv_graph g;
        qkv_graph_init(&g, 0);
        qkv_tensor *loss = qkv_model_loss(&m, &g, &b, 0.0f);
        qkv_params_zero_grad(&m.params);
        qkv_backward(&g, loss);
        qkv_graph_reset(&g);
        double train = (double)g.arena.peak;
        qkv_graph_free(&g);
        qkv_graph_init(&g, 0);
        qkv_graph_set_grad(&g, 0);
        g.training = 0;
        qkv_model_forward(&m, &g, &b);
        double fwd = (double)g.arena.total;
        qkv_graph_free(&g);
        double et = qkv_model_activation_bytes(&mc, nb, ls, lt, 1),
               ef = qkv_model_activation_bytes(&mc, nb, ls, lt, 0);
        CHECK(et >= train && et <= 3 * train,
              "case %zu: training estimate %.0f for a peak of %.0f bytes", i,
              et, train);
        CHECK(ef >= fwd && ef <= 3 * fwd,
              "case %zu: forward estimate %.0f for %.0f bytes", i, ef, fwd);
        double r[2] = {et / train, ef / fwd};
        for (int k = 0; k < 2; k++) {
            if (r[k] < lo) lo = r[k];
            if (r[k] > hi) hi = r[k];
        }
        free(xs), free(tin), free(tout), free(sp), free(tp);
        qkv_model_free(&m);
    }
    printf("  activation estimate / arena peak: %.2f .. %.2f over %zu models\n",
           lo, hi, 2 * (sizeof c / sizeof *c));
}

int main(void) {
    test_prog = "model";
    RUN(test_names_and_counts);
    RUN(test_bad_config);
    RUN(test_gradients_post_norm_sinusoidal);
    RUN(test_gradients_pre_norm_learned_tied_gelu);
    RUN(test_gradients_post_norm_gelu);
    RUN(test_gradients_decoder_only);
    RUN(test_padding_is_invisible);
    RUN(test_greedy_arena_holds_one_step);
    RUN(test_activation_estimate_bounds_the_arena);
    return test_summary();
}
