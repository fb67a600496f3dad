/* Decoding: beam search (beam 1 is greedy exactly; beam 4 is at least as
 * accurate; on hand-made models whose probabilities we set, beam search finds
 * the sequence greedy misses and the length penalty flips a ranking; scores
 * are recomputed), and sampling (seeds repeat, temperature 0 and top-k 1 are
 * greedy, top-k 2 never leaves the top two, frequencies match the softmax). */

#include "decode.h"
#include "tasks.h"
#include "test.h"
#include "trainer.h"

/* Sanitizer builds run ~50x slower: there the model trains 5 steps and the
 * accuracy comparison is dropped; every exactness check stays. */
#if defined(__SANITIZE_ADDRESS__)
#define QUICK 1
#else
#define QUICK 0
#endif

/* log p(y | src) = sum_t log softmax(logits)[y_t] of bos y (n tokens),
 * recomputed in one batch-1 forward pass, in double. */
static double seq_logp(qkv_model *m, qkv_graph *g, const int32_t *src,
                       const uint8_t *src_pad, int S, int bos, const int32_t *y,
                       int n) {
    int V = m->cfg.tgt_vocab;
    int32_t in[64];
    in[0] = bos;
    memcpy(in + 1, y, (size_t)(n - 1) * sizeof *in);
    int rec = qkv_graph_set_grad(g, 0);
    qkv_graph_reset(g);
    qkv_tensor *mem = qkv_model_encoder_forward(m, g, src, src_pad, 1, S, NULL);
    qkv_tensor *lg = qkv_model_decoder_forward(m, g, in, NULL, 1, n, mem,
                                               src_pad, NULL, NULL);
    double total = 0;
    for (int t = 0; t < n; t++) {
        const float *x = lg->data + (size_t)t * V;
        double mx = x[0], sum = 0;
        for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
        for (int v = 0; v < V; v++) sum += exp((double)x[v] - mx);
        total += (double)x[y[t]] - mx - log(sum);
    }
    qkv_graph_set_grad(g, rec);
    return total;
}

/* Tokens up to and including eos (or all max_out). */
static int out_len(const int32_t *out, int max_out) {
    for (int k = 0; k < max_out; k++)
        if (out[k] == QKV_EOS) return k + 1;
    return max_out;
}

/* ------------------------------------------------- a trained encoder-decoder
 */

static qkv_model trained;
static const qkv_task rev_task = {QKV_TASK_REVERSE, 11, 3, 8, 1, 0};

/* The tiny model at test_learn's size (D 64, H 4, F 128, 2 + 2 layers),
 * trained as qkv train trains: Adam, warmup and cosine decay, clipping at 1. */
static void train_reverse(void) {
    qkv_model_config c = test_tiny_config(QKV_MODEL_ENCDEC, rev_task.vocab);
    c.d_model = 64;
    c.heads = 4;
    c.d_ff = 128;
    c.n_enc = c.n_dec = 2;
    qkv_model m;
    test_tiny_model(&m, &c, 7);
    int steps = QUICK ? 5 : 300, batch = QUICK ? 8 : 32;
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, 2e-3f);
    tc.schedule =
        (qkv_schedule){QKV_SCHEDULE_COSINE, 2e-3f, steps / 4, steps, 1e-4f, 0};
    qkv_trainer t;
    qkv_trainer_init(&t, &m, &tc);
    qkv_source *data = qkv_task_source(&rev_task, batch, 42, 0);
    double t0 = qkv_seconds();
    for (int step = 1; step <= steps; step++)
        qkv_trainer_step(&t, qkv_source_next(data));
    printf("  reverse (lengths 3-8, eos): %d steps, loss %.3f, %.2f s\n", steps,
           (double)t.loss, qkv_seconds() - t0);
    trained = t.model; /* the tests' now; the trainer frees the rest */
    memset(&t.model, 0, sizeof t.model);
    qkv_trainer_free(&t);
    qkv_source_free(data);
}

/* n fresh sources from a stream the training never saw. */
static void fresh(qkv_task_batch *b, int n, uint64_t seed) {
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, seed, 99);
    qkv_task_batch_init(b, &rev_task, n);
    qkv_task_sample(&rev_task, &rng, b);
}

static void test_beam1_is_greedy(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_task_batch b;
    int n = 50, S, max_out = rev_task.max_len + 1, same = 0;
    fresh(&b, n, 1001);
    S = b.view.S;
    const float alphas[2] = {0.0f, 0.6f};
    for (int i = 0; i < n; i++) {
        const int32_t *src = b.src + (size_t)i * S;
        const uint8_t *pad = b.src_pad + (size_t)i * S;
        int32_t greedy[16], beam[16];
        qkv_greedy(&trained, &g, src, pad, 1, S, QKV_BOS, QKV_EOS, max_out,
                   greedy);
        for (int a = 0; a < 2; a++) {
            float score;
            qkv_beam_search(&trained, &g, src, pad, S, 1, alphas[a], QKV_BOS,
                            QKV_EOS, max_out, beam, &score);
            int ok = memcmp(beam, greedy, (size_t)max_out * sizeof *beam) == 0;
            same += ok;
            CHECK(ok, "source %d, alpha %g: beam 1 differs from greedy", i,
                  (double)alphas[a]);
            /* the score, recomputed: sum log p / lp(len) */
            int len = out_len(beam, max_out);
            double want =
                seq_logp(&trained, &g, src, pad, S, QKV_BOS, beam, len) /
                qkv_length_penalty(len, alphas[a]);
            CHECK(fabs(score - want) <= 1e-4 + 1e-5 * fabs(want),
                  "source %d: score %.7g, recomputed %.7g", i, (double)score,
                  want);
        }
    }
    printf("  beam 1 == greedy on %d/%d (source, alpha) pairs\n", same, 2 * n);
    qkv_task_batch_free(&b);
    qkv_graph_free(&g);
}

static void test_beam4_at_least_greedy(void) {
    if (QUICK) return; /* needs a trained model */
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_task_batch b;
    int n = 100, max_out = rev_task.max_len + 1, S, right_g = 0, right_b = 0;
    int better = 0, worse = 0;
    fresh(&b, n, 2002);
    S = b.view.S;
    double tg = 0, tb = 0;
    for (int i = 0; i < n; i++) {
        const int32_t *src = b.src + (size_t)i * S;
        const uint8_t *pad = b.src_pad + (size_t)i * S;
        int32_t y[16], greedy[16], beam[16];
        float score;
        qkv_task_answer(&rev_task, src, b.len[i], y);
        int len = b.len[i];
        y[len++] = QKV_EOS;
        double t0 = qkv_seconds();
        qkv_greedy(&trained, &g, src, pad, 1, S, QKV_BOS, QKV_EOS, max_out,
                   greedy);
        double t1 = qkv_seconds();
        qkv_beam_search(&trained, &g, src, pad, S, 4, 0.6f, QKV_BOS, QKV_EOS,
                        max_out, beam, &score);
        tg += t1 - t0;
        tb += qkv_seconds() - t1;
        right_g += memcmp(greedy, y, (size_t)len * sizeof *y) == 0;
        right_b += memcmp(beam, y, (size_t)len * sizeof *y) == 0;
        /* beam search usually, not always, scores at least greedy's path */
        int lg = out_len(greedy, max_out);
        double sg = seq_logp(&trained, &g, src, pad, S, QKV_BOS, greedy, lg) /
                    qkv_length_penalty(lg, 0.6f);
        better += score > sg + 1e-5;
        worse += score < sg - 1e-5;
    }
    printf("  exact match on %d fresh: greedy %d%%, beam 4 %d%% "
           "(%.2f ms vs %.2f ms a sentence); beam scores higher %d, lower %d\n",
           n, right_g, right_b, 1e3 * tg / n, 1e3 * tb / n, better, worse);
    /* Beam search maximises the model's score, not exact match: a likelier
     * wrong answer can cost a sentence that greedy got right (seen: 92 vs
     * 93 after a change in rounding). What it must do is find sequences
     * the model scores at least as high, and not lose accuracy by more
     * than such an accident. */
    CHECK(worse <= n / 20, "beam scored below greedy on %d of %d", worse, n);
    CHECK(right_b >= right_g - 2, "beam 4 %d < greedy %d - 2", right_b,
          right_g);
    CHECK(right_g >= 50, "the model did not learn: greedy %d%%", right_g);
    qkv_task_batch_free(&b);
    qkv_graph_free(&g);
}

/* ----------------------------------------------- hand-made bigram models */

enum { TOK_A = 3, TOK_B, TOK_C, TOK_D, TOK_E, TOK_F, NV };

typedef struct bigram {
    int from, to;
    double p;
} bigram;

/* An encoder-decoder whose next token depends only on the last one, with
 * p(to | from) as given (the rest of each row spread evenly): every weight 0
 * but the norms' gammas (1), the target embedding and the generator, and
 * learned positions (0), so the decoder output is LN(embed(u)). embed(u) =
 * e_2u - e_2u+1 has mean 0 and variance 2/D = 1/16, so LN gives ~4 times it,
 * and the generator row v, (log p(v|u) / 8) (e_2u - e_2u+1), reads the log p.
 */
static void bigram_model(qkv_model *m, const bigram *rows, int n) {
    qkv_model_config c = test_tiny_config(QKV_MODEL_ENCDEC, NV);
    c.d_ff = 8;
    c.max_len = 16;
    c.pos = QKV_POS_LEARNED;
    c.scale_emb = 0;
    test_tiny_model(m, &c, 1);
    memset(m->params.values, 0, m->params.n * sizeof(float));
    for (int i = 0; i < m->params.count; i++) {
        qkv_tensor *t = m->params.list[i];
        size_t len = strlen(t->name);
        if (len > 6 && strcmp(t->name + len - 6, ".gamma") == 0)
            for (size_t j = 0; j < t->n; j++) t->data[j] = 1.0f;
    }
    double p[NV][NV] = {{0}};
    for (int k = 0; k < n; k++) p[rows[k].from][rows[k].to] = rows[k].p;
    int D = c.d_model;
    for (int u = 0; u < NV; u++) {
        double rest = 1.0;
        for (int v = 0; v < NV; v++) rest -= p[u][v];
        int free_n = 0;
        for (int v = 0; v < NV; v++) free_n += p[u][v] == 0;
        for (int v = 0; v < NV; v++) {
            double q = p[u][v] > 0 ? p[u][v] : rest / free_n;
            m->generator->data[(size_t)v * D + 2 * u] = (float)(log(q) / 8);
            m->generator->data[(size_t)v * D + 2 * u + 1] =
                (float)(-log(q) / 8);
        }
        m->tgt_embed->data[(size_t)u * D + 2 * u] = 1.0f;
        m->tgt_embed->data[(size_t)u * D + 2 * u + 1] = -1.0f;
    }
}

static const int32_t any_src[3] = {TOK_C, TOK_D, TOK_E};

static void test_beam_finds_likelier_sequence(void) {
    /* greedy takes A (0.5) but then meets four 0.24 tokens: A C eos = 0.108;
     * B (0.4) then eos (0.9) = 0.36 */
    const bigram rows[] = {
        {QKV_BOS, TOK_A, 0.5}, {QKV_BOS, TOK_B, 0.4}, {TOK_A, TOK_C, 0.24},
        {TOK_A, TOK_D, 0.24},  {TOK_A, TOK_E, 0.24},  {TOK_A, TOK_F, 0.24},
        {TOK_B, QKV_EOS, 0.9}, {TOK_C, QKV_EOS, 0.9}, {TOK_D, QKV_EOS, 0.9},
        {TOK_E, QKV_EOS, 0.9}, {TOK_F, QKV_EOS, 0.9}};
    qkv_model m;
    bigram_model(&m, rows, (int)(sizeof rows / sizeof *rows));
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int32_t greedy[6], b1[6], b2[6];
    float s1, s2;
    qkv_greedy(&m, &g, any_src, NULL, 1, 3, QKV_BOS, QKV_EOS, 6, greedy);
    qkv_beam_search(&m, &g, any_src, NULL, 3, 1, 0.0f, QKV_BOS, QKV_EOS, 6, b1,
                    &s1);
    qkv_beam_search(&m, &g, any_src, NULL, 3, 2, 0.0f, QKV_BOS, QKV_EOS, 6, b2,
                    &s2);
    const int32_t want_g[6] = {TOK_A, TOK_C, QKV_EOS, 0, 0, 0};
    const int32_t want_b[6] = {TOK_B, QKV_EOS, 0, 0, 0, 0};
    CHECK(memcmp(greedy, want_g, sizeof want_g) == 0, "greedy: %d %d %d",
          greedy[0], greedy[1], greedy[2]);
    CHECK(memcmp(b1, want_g, sizeof want_g) == 0, "beam 1: %d %d %d", b1[0],
          b1[1], b1[2]);
    CHECK(memcmp(b2, want_b, sizeof want_b) == 0, "beam 2: %d %d %d", b2[0],
          b2[1], b2[2]);
    CHECK_NEAR(s1, log(0.5 * 0.24 * 0.9), 1e-3, "beam 1 score");
    CHECK_NEAR(s2, log(0.4 * 0.9), 1e-3, "beam 2 score");
    CHECK_NEAR(s2, seq_logp(&m, &g, any_src, NULL, 3, QKV_BOS, b2, 2), 1e-5,
               "beam 2 score recomputed");
    qkv_graph_free(&g);
    qkv_model_free(&m);
}

static void test_length_penalty_flips_ranking(void) {
    /* short: B eos = 0.5 * 0.7 = 0.35; long: A C D E eos = 0.45 * 0.85^4 =
     * 0.235. alpha 0 keeps the short one; alpha 1 divides by lp(2) = 7/6 and
     * lp(5) = 10/6: -0.900 vs -0.869, the long one wins. */
    const bigram rows[] = {{QKV_BOS, TOK_B, 0.5}, {QKV_BOS, TOK_A, 0.45},
                           {TOK_B, QKV_EOS, 0.7}, {TOK_A, TOK_C, 0.85},
                           {TOK_C, TOK_D, 0.85},  {TOK_D, TOK_E, 0.85},
                           {TOK_E, QKV_EOS, 0.85}};
    qkv_model m;
    bigram_model(&m, rows, (int)(sizeof rows / sizeof *rows));
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int32_t o0[8], o1[8];
    float s0, s1;
    qkv_beam_search(&m, &g, any_src, NULL, 3, 2, 0.0f, QKV_BOS, QKV_EOS, 8, o0,
                    &s0);
    qkv_beam_search(&m, &g, any_src, NULL, 3, 2, 1.0f, QKV_BOS, QKV_EOS, 8, o1,
                    &s1);
    const int32_t want0[8] = {TOK_B, QKV_EOS, 0, 0, 0, 0, 0, 0};
    const int32_t want1[8] = {TOK_A, TOK_C, TOK_D, TOK_E, QKV_EOS, 0, 0, 0};
    CHECK(memcmp(o0, want0, sizeof want0) == 0, "alpha 0: %d %d %d", o0[0],
          o0[1], o0[2]);
    CHECK(memcmp(o1, want1, sizeof want1) == 0, "alpha 1: %d %d %d", o1[0],
          o1[1], o1[2]);
    CHECK_NEAR(s0, log(0.35), 1e-3, "alpha 0 score");
    CHECK_NEAR(s1, log(0.45 * pow(0.85, 4)) / (10.0 / 6.0), 1e-3,
               "alpha 1 score");
    CHECK_NEAR(qkv_length_penalty(5, 1.0f), 10.0 / 6.0, 1e-12,
               "lp(5), alpha 1");
    CHECK_NEAR(qkv_length_penalty(7, 0.5f), sqrt(2.0), 1e-12,
               "lp(7), alpha 0.5");
    CHECK(qkv_length_penalty(9, 0.0f) == 1.0, "alpha 0: no normalisation");
    /* no eos: every hypothesis runs to max_out; the best bigram chain wins */
    int32_t o2[3];
    float s2;
    qkv_beam_search(&m, &g, any_src, NULL, 3, 3, 0.0f, QKV_BOS, -1, 3, o2, &s2);
    CHECK(o2[0] == TOK_A && o2[1] == TOK_C && o2[2] == TOK_D,
          "no eos: %d %d %d", o2[0], o2[1], o2[2]);
    CHECK_NEAR(s2, log(0.45 * 0.85 * 0.85), 1e-3, "no eos score");
    qkv_graph_free(&g);
    qkv_model_free(&m);
}

/* Decoding leaves the graph's modes as it found them, and its arena holds
 * one step at a time, not the sum over the steps. */
static void test_graph_state_and_arena(void) {
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int32_t src[8] = {3, 4, 5, 6, 7, 8, 9, 10}, out[24];
    float score;
    qkv_beam_search(&trained, &g, src, NULL, 8, 4, 0.6f, QKV_BOS, -1, 24, out,
                    &score);
    size_t peak = g.arena.peak;
    CHECK(g.recording == 1 && g.training == 1, "modes not restored: %d %d",
          g.recording, g.training);
    /* one forward of the last step, (4, 24) over a (4, 8) memory */
    qkv_graph h;
    qkv_graph_init(&h, 0);
    qkv_graph_set_grad(&h, 0);
    h.training = 0;
    int32_t tgt[4 * 24] = {0};
    uint8_t pad[4 * 8] = {0};
    qkv_tensor *mem = qkv_tensor_zeros(&h, 3, (int[]){4, 8, 64});
    qkv_model_decoder_forward(&trained, &h, tgt, NULL, 4, 24, mem, pad, NULL,
                              NULL);
    CHECK(peak < 2 * h.arena.peak, "arena peak %zu bytes, one step needs %zu",
          peak, h.arena.peak);
    printf("  arena peak %zu KiB for 24 steps of beam 4 (one step: %zu KiB)\n",
           peak >> 10, h.arena.peak >> 10);
    qkv_graph_free(&h);
    qkv_graph_free(&g);
}

/* ----------------------------------------------------------------- sampling */

/* A decoder-only model of two layers, as initialised (seed 11). */
static void lm_model(qkv_model *m) {
    qkv_model_config c = test_tiny_config(QKV_MODEL_DECODER, 11);
    c.n_dec = 2;
    test_tiny_model(m, &c, 11);
}

static const int32_t prompt[4] = {3, 7, 5, QKV_BOS};

/* logits (V) after the t tokens of seq, exactly as qkv_sample computes them */
static void next_logits(qkv_model *m, qkv_graph *g, const int32_t *seq, int t,
                        float *x) {
    int rec = qkv_graph_set_grad(g, 0), train = g->training;
    g->training = 0;
    qkv_graph_reset(g);
    qkv_tensor *lg = qkv_model_decoder_forward(m, g, seq, NULL, 1, t, NULL,
                                               NULL, NULL, NULL);
    memcpy(x, lg->data + (size_t)(t - 1) * m->cfg.tgt_vocab,
           (size_t)m->cfg.tgt_vocab * sizeof *x);
    g->training = train;
    qkv_graph_set_grad(g, rec);
}

static void test_sample_repeats_and_greedy(void) {
    qkv_model m;
    lm_model(&m);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    enum { N = 20 };
    int32_t a[N], b[N], c[N], greedy[N], t0[N], k1[N];
    qkv_pcg32 r1, r2, r3;
    qkv_pcg32_seed(&r1, 5, 6);
    qkv_pcg32_seed(&r2, 5, 6);
    qkv_pcg32_seed(&r3, 6, 6);
    int differ = 0;
    for (int rep = 0; rep < 5; rep++) {
        qkv_sample(&m, &g, prompt, 4, N, 1.0f, 0, 0.0f, -1, &r1, a);
        qkv_sample(&m, &g, prompt, 4, N, 1.0f, 0, 0.0f, -1, &r2, b);
        qkv_sample(&m, &g, prompt, 4, N, 1.0f, 0, 0.0f, -1, &r3, c);
        CHECK(memcmp(a, b, sizeof a) == 0,
              "same seed, different samples (rep %d)", rep);
        differ += memcmp(a, c, sizeof a) != 0;
    }
    CHECK(differ > 0, "another seed gave the same samples 5 times");
    CHECK(r1.state == r2.state, "the two streams drew different amounts");

    qkv_greedy(&m, &g, prompt, NULL, 1, 4, QKV_BOS, QKV_EOS, N, greedy);
    qkv_pcg32 before = r1;
    qkv_sample(&m, &g, prompt, 4, N, 0.0f, 5, 0.0f, QKV_EOS, &r1, t0);
    CHECK(memcmp(t0, greedy, sizeof t0) == 0,
          "temperature 0 differs from greedy");
    CHECK(r1.state == before.state, "temperature 0 drew random numbers");
    qkv_sample(&m, &g, prompt, 4, N, 0.0f, 0, 0.0f, QKV_EOS, NULL, t0);
    CHECK(memcmp(t0, greedy, sizeof t0) == 0,
          "temperature 0 without rng differs");
    const float temps[3] = {0.5f, 1.0f, 3.0f};
    for (int i = 0; i < 3; i++) {
        qkv_sample(&m, &g, prompt, 4, N, temps[i], 1, 0.0f, QKV_EOS, &r1, k1);
        CHECK(memcmp(k1, greedy, sizeof k1) == 0,
              "top_k 1 at T %g differs from greedy", (double)temps[i]);
    }
    /* eos stops the sample and pads the rest */
    int32_t e[N];
    int found = 0;
    for (int rep = 0; rep < 50 && !found; rep++) {
        qkv_sample(&m, &g, prompt, 4, N, 2.0f, 0, 0.0f, QKV_EOS, &r1, e);
        int k = 0;
        while (k < N && e[k] != QKV_EOS) k++;
        if (k < N - 1) {
            found = 1;
            for (int j = k + 1; j < N; j++)
                CHECK(e[j] == m.cfg.pad_id, "token %d after eos at %d: %d", j,
                      k, e[j]);
        }
    }
    CHECK(found, "no sample produced eos early");
    CHECK(g.recording == 1 && g.training == 1, "modes not restored");
    qkv_graph_free(&g);
    qkv_model_free(&m);
}

static void test_top_k_2_stays_in_top_two(void) {
    qkv_model m;
    lm_model(&m);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    enum { N = 5 };
    int V = m.cfg.tgt_vocab, n = 200, seen[2] = {0, 0};
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 77, 3);
    for (int s = 0; s < n; s++) {
        int32_t out[N], seq[4 + N];
        qkv_sample(&m, &g, prompt, 4, N, 2.0f, 2, 0.0f, -1, &rng, out);
        memcpy(seq, prompt, sizeof prompt);
        memcpy(seq + 4, out, sizeof out);
        for (int k = 0; k < N; k++) {
            float x[16];
            next_logits(&m, &g, seq, 4 + k, x);
            int above = 0; /* logits larger than the chosen one's, or equal with
                              lower id */
            for (int v = 0; v < V; v++)
                above += x[v] > x[out[k]] || (x[v] == x[out[k]] && v < out[k]);
            CHECK(above < 2, "sample %d step %d: token %d is rank %d", s, k,
                  out[k], above + 1);
            if (k == 0 && above < 2) seen[above]++;
        }
    }
    CHECK(seen[0] > 0 && seen[1] > 0,
          "first token: top-1 %d times, top-2 %d times", seen[0], seen[1]);
    qkv_graph_free(&g);
    qkv_model_free(&m);
}

/* 2000 first tokens at T 0.7 against softmax(logits / 0.7): Pearson's
 * chi-square, cells with fewer than 5 expected draws pooled into one, must
 * stay below 40 (at most 10 degrees of freedom: a 1e-4 tail is 33.7). */
static void test_sample_frequencies(void) {
    qkv_model m;
    lm_model(&m);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    int V = m.cfg.tgt_vocab, n = 2000, count[16] = {0};
    const float T = 0.7f;
    float x[16];
    next_logits(&m, &g, prompt, 4, x);
    double p[16], mx = x[0], z = 0;
    for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    for (int v = 0; v < V; v++) z += p[v] = exp(((double)x[v] - mx) / T);
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 2024, 1);
    double t0 = qkv_seconds();
    for (int i = 0; i < n; i++) {
        int32_t tok;
        qkv_sample(&m, &g, prompt, 4, 1, T, 0, 0.0f, -1, &rng, &tok);
        count[tok]++;
    }
    double secs = qkv_seconds() - t0, chi2 = 0, e_pool = 0;
    int o_pool = 0, cells = 0;
    for (int v = 0; v < V; v++) {
        double e = n * p[v] / z;
        if (e < 5) {
            e_pool += e;
            o_pool += count[v];
            continue;
        }
        chi2 += (count[v] - e) * (count[v] - e) / e;
        cells++;
    }
    if (e_pool > 0) {
        chi2 += (o_pool - e_pool) * (o_pool - e_pool) / e_pool;
        cells++;
    }
    printf("  %d draws: chi-square %.1f over %d cells, %.0f us a draw\n", n,
           chi2, cells, 1e6 * secs / n);
    CHECK(cells >= 4, "only %d cells", cells);
    CHECK(chi2 < 40, "chi-square %.1f >= 40", chi2);
    qkv_graph_free(&g);
    qkv_model_free(&m);
}

int main(void) {
    test_prog = "decode";
    qkv_set_threads(1);
    train_reverse();
    RUN(test_beam1_is_greedy);
    RUN(test_beam4_at_least_greedy);
    RUN(test_beam_finds_likelier_sequence);
    RUN(test_length_penalty_flips_ranking);
    RUN(test_graph_state_and_arena);
    RUN(test_sample_repeats_and_greedy);
    RUN(test_top_k_2_stays_in_top_two);
    RUN(test_sample_frequencies);
    qkv_model_free(&trained);
    return test_summary();
}
