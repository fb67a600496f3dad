/* Optimisers against double-precision references of torch's formulas, the
 * schedules at known points, clipping, thread determinism and misuse. */
#ifdef _OPENMP
#include <omp.h>
#endif

#include "optim.h"
#include "pcg.h"
#include "test.h"

/* A store with a (2,3) weight and a (4) layer-norm gain: n = 10, values
 * 0.5 - 0.1*i so that some are negative. */
#define N_SMALL 10
static void small_params(qkv_params *ps) {
    qkv_params_init(ps);
    qkv_params_add(ps, "w", 2, (int[]){2, 3});
    qkv_params_add(ps, "ln.gamma", 1, (int[]){4});
    qkv_params_alloc(ps);
    for (int i = 0; i < N_SMALL; i++) ps->values[i] = 0.5f - 0.1f * (float)i;
}

/* Gradients of mixed scales (10 and 0.1) that change sign over the steps. */
static void set_grads(qkv_params *ps, int t) {
    for (size_t i = 0; i < ps->n; i++)
        ps->grads[i] =
            (float)(sin(1.3 * (double)i + 0.7 * t) * (i % 3 == 0 ? 10 : 0.1));
}

/* torch.optim.Adam/AdamW step t in double; decay[i]: weight decay applies. */
static void ref_adam(const qkv_optim_config *c, double lr, int t,
                     const float *g, const int *decay, double *p, double *m,
                     double *v) {
    double b1 = c->beta1, b2 = c->beta2, wd = c->weight_decay;
    for (int i = 0; i < N_SMALL; i++) {
        double gi = g[i];
        if (decay[i] && c->kind == QKV_OPTIM_ADAMW) p[i] *= 1 - lr * wd;
        if (decay[i] && c->kind == QKV_OPTIM_ADAM) gi += wd * p[i];
        m[i] = b1 * m[i] + (1 - b1) * gi;
        v[i] = b2 * v[i] + (1 - b2) * gi * gi;
        double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
        p[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + c->eps);
    }
}

/* Runs 6 steps of cfg and of the reference side by side. */
static void adam_vs_reference(const qkv_optim_config *cfg, const char *what) {
    qkv_params ps;
    small_params(&ps);
    qkv_optim o;
    qkv_optim_init(&o, cfg, &ps);
    double p[N_SMALL], m[N_SMALL] = {0}, v[N_SMALL] = {0};
    int decay[N_SMALL];
    for (int i = 0; i < N_SMALL; i++) {
        p[i] = ps.values[i];
        decay[i] = cfg->weight_decay > 0 && (cfg->decay_all || i < 6);
    }
    const float lr = 0.01f;
    for (int t = 1; t <= 6; t++) {
        set_grads(&ps, t);
        qkv_optim_step(&o, &ps, lr);
        ref_adam(cfg, lr, t, ps.grads, decay, p, m, v);
        for (int i = 0; i < N_SMALL; i++)
            CHECK(fabs(ps.values[i] - p[i]) <= 3e-7,
                  "%s: step %d p[%d] = %.9g, reference %.9g", what, t, i,
                  (double)ps.values[i], p[i]);
    }
    CHECK(o.step == 6, "%s: step count %lld", what, (long long)o.step);
    qkv_optim_free(&o);
    qkv_params_free(&ps);
}

static void test_adam_matches_reference(void) {
    qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_ADAM);
    CHECK(c.beta1 == 0.9f && c.beta2 == 0.98f && c.eps == 1e-9f &&
              c.weight_decay == 0,
          "Adam defaults (%g, %g, %g, wd %g)", (double)c.beta1, (double)c.beta2,
          (double)c.eps, (double)c.weight_decay);
    adam_vs_reference(&c, "adam defaults");
    c.beta1 = 0.8f, c.beta2 = 0.999f, c.eps = 1e-3f;
    adam_vs_reference(&c, "adam betas (0.8, 0.999), eps 1e-3");
    c.weight_decay = 0.1f; /* L2 into the gradient, weights only */
    adam_vs_reference(&c, "adam L2 0.1");
    c.decay_all = 1;
    adam_vs_reference(&c, "adam L2 0.1 on all");
    c = qkv_optim_defaults(QKV_OPTIM_ADAMW);
    CHECK(c.weight_decay == 0.01f, "AdamW default decay %g",
          (double)c.weight_decay);
    c.weight_decay = 0.5f;
    adam_vs_reference(&c, "adamw 0.5");
    c.decay_all = 1;
    adam_vs_reference(&c, "adamw 0.5 on all");
}

static void test_adam_first_step_is_lr(void) {
    /* t = 1: m/bc1 = g, sqrt(v/bc2) = |g|, so the step is lr*g/(|g| + eps). */
    const double scales[4] = {1e-4, 1, 1e4, -3e7};
    for (int s = 0; s < 4; s++) {
        qkv_params ps;
        small_params(&ps);
        qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_ADAM);
        qkv_optim o;
        qkv_optim_init(&o, &c, &ps);
        float before[N_SMALL];
        memcpy(before, ps.values, sizeof before);
        for (int i = 0; i < N_SMALL; i++)
            ps.grads[i] = (float)(scales[s] * (1 + i));
        qkv_optim_step(&o, &ps, 0.001f);
        for (int i = 0; i < N_SMALL; i++) {
            double moved = (double)before[i] - ps.values[i];
            CHECK(fabs(fabs(moved) - 0.001) <= 1e-7 && moved * scales[s] > 0,
                  "grad scale %g: p[%d] moved %.9g, want 0.001 against the "
                  "gradient",
                  scales[s], i, moved);
        }
        qkv_optim_free(&o);
        qkv_params_free(&ps);
    }
}

static void test_adam_minimises_quadratic(void) {
    /* f(x) = sum (x - c)^2, df/dx = 2(x - c), with a cosine schedule. */
    qkv_params ps;
    small_params(&ps);
    qkv_optim_config cfg = qkv_optim_defaults(QKV_OPTIM_ADAM);
    qkv_optim o;
    qkv_optim_init(&o, &cfg, &ps);
    qkv_schedule s = {QKV_SCHEDULE_COSINE, .lr = 0.05f, .warmup = 50,
                      .total = 2000};
    float target[N_SMALL];
    for (int i = 0; i < N_SMALL; i++) target[i] = 3.0f * (float)cos(i) - 1.0f;
    for (int t = 1; t <= 2000; t++) {
        for (int i = 0; i < N_SMALL; i++)
            ps.grads[i] = 2 * (ps.values[i] - target[i]);
        qkv_optim_step(&o, &ps, qkv_schedule_lr(&s, t));
    }
    for (int i = 0; i < N_SMALL; i++)
        CHECK_NEAR(ps.values[i], target[i], 1e-3, "x converges to c");
    qkv_optim_free(&o);
    qkv_params_free(&ps);
}

static void test_adamw_decay_mask(void) {
    /* Zero gradients: the Adam part is 0/(0 + eps) = 0, only decay moves p. */
    for (int all = 0; all <= 1; all++) {
        qkv_params ps;
        small_params(&ps);
        for (int i = 0; i < N_SMALL; i++) ps.values[i] = 1.0f;
        qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_ADAMW);
        c.weight_decay = 0.1f;
        c.decay_all = all;
        qkv_optim o;
        qkv_optim_init(&o, &c, &ps);
        const float lr = 0.5f;
        for (int t = 1; t <= 3; t++) {
            qkv_optim_step(&o, &ps, lr);
            double w = pow(1 - 0.5 * 0.1, t); /* 0.95^t */
            for (int i = 0; i < 6; i++)
                CHECK_NEAR(ps.values[i], w, 2e-7,
                           "2-D weight shrinks by 1 - lr*wd");
            for (int i = 6; i < N_SMALL; i++) {
                if (all)
                    CHECK_NEAR(ps.values[i], w, 2e-7,
                               "decay_all: gamma shrinks too");
                else
                    CHECK(ps.values[i] == 1.0f, "gamma decayed to %.9g",
                          (double)ps.values[i]);
            }
        }
        qkv_optim_free(&o);
        qkv_params_free(&ps);
    }
}

/* torch.optim.SGD step in double (dampening 0). */
static void ref_sgd(const qkv_optim_config *c, double lr, int t, const float *g,
                    double *p, double *buf) {
    for (int i = 0; i < N_SMALL; i++) {
        double gi = g[i] + (i < 6 ? c->weight_decay * p[i] : 0);
        if (c->momentum > 0) {
            buf[i] = t == 1 ? gi : c->momentum * buf[i] + gi;
            gi = c->nesterov ? gi + c->momentum * buf[i] : buf[i];
        }
        p[i] -= lr * gi;
    }
}

static void test_sgd(void) {
    /* By hand, p = 1, g = 0.5, lr = 0.1, momentum 0.9:
     *   plain:    0.95, 0.9
     *   momentum: buf 0.5 -> p 0.95; buf 0.95 -> p 0.855
     *   nesterov: g 0.5+0.45 -> p 0.905; g 0.5+0.855 -> p 0.7695 */
    const float want[3][2] = {
        {0.95f, 0.9f}, {0.95f, 0.855f}, {0.905f, 0.7695f}};
    for (int k = 0; k < 3; k++) {
        qkv_params ps;
        qkv_params_init(&ps);
        qkv_params_add(&ps, "p", 1, (int[]){1});
        qkv_params_alloc(&ps);
        ps.values[0] = 1;
        qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_SGD);
        c.momentum = k == 0 ? 0.0f : 0.9f;
        c.nesterov = k == 2;
        qkv_optim o;
        qkv_optim_init(&o, &c, &ps);
        CHECK((o.m == NULL) == (k == 0) && o.v == NULL,
              "SGD keeps a buffer only with momentum");
        for (int t = 0; t < 2; t++) {
            ps.grads[0] = 0.5f;
            qkv_optim_step(&o, &ps, 0.1f);
            CHECK_NEAR(ps.values[0], want[k][t], 1e-6, "SGD by hand");
        }
        qkv_optim_free(&o);
        qkv_params_free(&ps);
    }
    /* Varying gradients, L2 decay on the weight only. */
    for (int k = 0; k < 3; k++) {
        qkv_params ps;
        small_params(&ps);
        qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_SGD);
        c.momentum = k == 0 ? 0.0f : 0.8f;
        c.nesterov = k == 2;
        c.weight_decay = 0.05f;
        qkv_optim o;
        qkv_optim_init(&o, &c, &ps);
        double p[N_SMALL], buf[N_SMALL] = {0};
        for (int i = 0; i < N_SMALL; i++) p[i] = ps.values[i];
        for (int t = 1; t <= 5; t++) {
            set_grads(&ps, t);
            qkv_optim_step(&o, &ps, 0.02f);
            ref_sgd(&c, 0.02f, t, ps.grads, p, buf);
            for (int i = 0; i < N_SMALL; i++)
                CHECK(fabs(ps.values[i] - p[i]) <= 1e-6,
                      "SGD momentum %g nesterov %d: step %d p[%d] %.9g, "
                      "reference %.9g",
                      (double)c.momentum, c.nesterov, t, i,
                      (double)ps.values[i], p[i]);
        }
        qkv_optim_free(&o);
        qkv_params_free(&ps);
    }
}

static void test_schedules(void) {
    qkv_schedule c = {QKV_SCHEDULE_CONSTANT, .lr = 3e-4f};
    CHECK(qkv_schedule_lr(&c, 1) == 3e-4f &&
              qkv_schedule_lr(&c, 1000000) == 3e-4f,
          "constant");

    /* Noam, the paper's setting: peak 512^-0.5 * 4000^-0.5 at step 4000. */
    qkv_schedule n = {QKV_SCHEDULE_NOAM, .lr = 1, .warmup = 4000,
                      .d_model = 512};
    const double peak = 1 / sqrt(512.0 * 4000.0);
    CHECK_NEAR(peak, 6.9877e-4, 1e-8, "peak by hand");
    CHECK_NEAR(qkv_schedule_lr(&n, 4000), peak, 1e-10, "noam peak");
    CHECK_NEAR(qkv_schedule_lr(&n, 1), peak / 4000, 1e-12, "noam step 1");
    CHECK_NEAR(qkv_schedule_lr(&n, 1000), peak / 4, 1e-10,
               "noam linear warm-up");
    CHECK_NEAR(qkv_schedule_lr(&n, 2000), peak / 2, 1e-10,
               "noam linear warm-up");
    CHECK_NEAR(qkv_schedule_lr(&n, 16000), peak / 2, 1e-10,
               "noam decays as t^-0.5");
    CHECK_NEAR(qkv_schedule_lr(&n, 400000), peak / 10, 1e-10,
               "noam decays as t^-0.5");
    CHECK(qkv_schedule_lr(&n, 3999) < qkv_schedule_lr(&n, 4000) &&
              qkv_schedule_lr(&n, 4001) < qkv_schedule_lr(&n, 4000),
          "noam peaks at the warm-up's end");
    n.lr = 2;
    CHECK_NEAR(qkv_schedule_lr(&n, 4000), 2 * peak, 1e-10,
               "noam factor scales");

    qkv_schedule s = {QKV_SCHEDULE_COSINE, .lr = 1e-3f, .warmup = 100,
                      .total = 1100, .min_lr = 1e-5f};
    CHECK_NEAR(qkv_schedule_lr(&s, 1), 1e-5, 1e-12,
               "cosine warm-up starts near 0");
    CHECK_NEAR(qkv_schedule_lr(&s, 50), 5e-4, 1e-10,
               "cosine half-way through warm-up");
    CHECK_NEAR(qkv_schedule_lr(&s, 100), 1e-3, 1e-10, "cosine peak at warmup");
    CHECK_NEAR(qkv_schedule_lr(&s, 600), (1e-3 + 1e-5) / 2, 1e-10,
               "cosine half-way");
    CHECK_NEAR(qkv_schedule_lr(&s, 350),
               1e-5 + (1e-3 - 1e-5) * (1 + sqrt(0.5)) / 2, 1e-10,
               "cosine quarter-way");
    CHECK(qkv_schedule_lr(&s, 1100) == 1e-5f, "cosine at total");
    CHECK(qkv_schedule_lr(&s, 100000) == 1e-5f, "cosine after total");
    for (int t = 101; t < 1100; t++)
        CHECK(qkv_schedule_lr(&s, t + 1) <= qkv_schedule_lr(&s, t),
              "cosine decays at %d", t);
}

static void test_clip(void) {
    qkv_params ps;
    small_params(&ps);
    memset(ps.grads, 0, ps.n * sizeof(float));
    ps.grads[0] = 3, ps.grads[9] = 4;
    CHECK(qkv_grad_norm(&ps) == 5.0f, "norm of (3, 4) is %.9g",
          (double)qkv_grad_norm(&ps));

    set_grads(&ps, 1);
    double sq = 0;
    for (int i = 0; i < N_SMALL; i++) sq += (double)ps.grads[i] * ps.grads[i];
    for (int i = 0; i < N_SMALL; i++)
        ps.grads[i] *= (float)(10 / sqrt(sq)); /* norm 10 */
    float before[N_SMALL];
    memcpy(before, ps.grads, sizeof before);
    float pre = qkv_clip_grad_norm(&ps, 1.0f);
    CHECK_NEAR(pre, 10, 1e-5, "returns the norm before clipping");
    CHECK_NEAR(qkv_grad_norm(&ps), 1, 1e-6, "clipped norm");
    for (int i = 0; i < N_SMALL; i++)
        CHECK_NEAR(ps.grads[i] / before[i], 1 / (10 + 1e-6), 1e-7,
                   "direction kept");

    memcpy(ps.grads, before, sizeof before);
    pre = qkv_clip_grad_norm(&ps, 20.0f);
    CHECK_NEAR(pre, 10, 1e-5, "returned norm below the threshold");
    CHECK(memcmp(ps.grads, before, sizeof before) == 0,
          "below the threshold: untouched");

    ps.grads[3] =
        INFINITY; /* an overflowed backward: left for the caller to skip */
    memcpy(before, ps.grads, sizeof before);
    CHECK(isinf(qkv_clip_grad_norm(&ps, 1.0f)),
          "an infinite gradient gives an infinite norm");
    CHECK(memcmp(ps.grads, before, sizeof before) == 0,
          "non-finite norm: untouched");
    qkv_params_free(&ps);
}

static void test_threads_bitwise(void) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    qkv_params ps;
    qkv_params_init(&ps);
    qkv_params_add(&ps, "emb", 2, (int[]){1000, 999});
    qkv_params_add(&ps, "ln.beta", 1, (int[]){1001});
    qkv_params_alloc(&ps);
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 5, 6);
    for (size_t i = 0; i < ps.n; i++) {
        ps.values[i] = qkv_pcg32_normal(&r);
        ps.grads[i] = qkv_pcg32_normal(&r) * (i % 7 == 0 ? 100.0f : 0.01f);
    }
    double sq = 0;
    for (size_t i = 0; i < ps.n; i++) sq += (double)ps.grads[i] * ps.grads[i];
    float norm[3];
    float *vals[3];
    const size_t bytes = ps.n * sizeof(float);
    float *p0 = malloc(bytes);
    memcpy(p0, ps.values, bytes);
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(k + 1);
        norm[k] = qkv_grad_norm(&ps);
        /* two AdamW steps from the same start */
        memcpy(ps.values, p0, bytes);
        qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_ADAMW);
        qkv_optim o;
        qkv_optim_init(&o, &c, &ps);
        qkv_optim_step(&o, &ps, 1e-3f);
        qkv_optim_step(&o, &ps, 1e-3f);
        vals[k] = malloc(bytes);
        memcpy(vals[k], ps.values, bytes);
        qkv_optim_free(&o);
    }
    omp_set_num_threads(saved);
    CHECK(fabs(norm[0] - sqrt(sq)) <= 1e-6 * sqrt(sq), "norm %.9g vs %.9g",
          (double)norm[0], sqrt(sq));
    for (int k = 1; k < 3; k++) {
        CHECK(memcmp(&norm[0], &norm[k], sizeof(float)) == 0,
              "grad norm with 1 thread %.9g, with %d %.9g", (double)norm[0],
              k + 1, (double)norm[k]);
        CHECK(memcmp(vals[0], vals[k], bytes) == 0,
              "AdamW differs with %d threads", k + 1);
    }
    for (int k = 0; k < 3; k++) free(vals[k]);
    free(p0);
    qkv_params_free(&ps);
#endif
}

/* ------------------------------------------------------------------ misuse */

static void bad_lr(void) {
    qkv_params ps;
    small_params(&ps);
    qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_ADAM);
    qkv_optim o;
    qkv_optim_init(&o, &c, &ps);
    qkv_optim_step(&o, &ps, -0.5f);
}
static void bad_beta(void) {
    qkv_params ps;
    small_params(&ps);
    qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_ADAMW);
    c.beta2 = 1;
    qkv_optim o;
    qkv_optim_init(&o, &c, &ps);
}
static void bad_size(void) {
    qkv_params a, b;
    small_params(&a);
    qkv_params_init(&b);
    qkv_params_add(&b, "x", 2, (int[]){3, 4});
    qkv_params_alloc(&b);
    qkv_optim_config c = qkv_optim_defaults(QKV_OPTIM_SGD);
    qkv_optim o;
    qkv_optim_init(&o, &c, &a);
    qkv_optim_step(&o, &b, 0.1f);
}
static void bad_step(void) {
    qkv_schedule s = {QKV_SCHEDULE_NOAM, .lr = 1, .warmup = 4000,
                      .d_model = 512};
    qkv_schedule_lr(&s, 0);
}
static void bad_total(void) {
    qkv_schedule s = {QKV_SCHEDULE_COSINE, .lr = 1, .warmup = 10, .total = 5};
    qkv_schedule_lr(&s, 1);
}

static const test_misuse misuse[] = {
    {"lr", bad_lr, {"optim_step", "learning rate -0.5"}},
    {"beta", bad_beta, {"optim_init", "betas (0.9, 1)", "[0, 1)"}},
    {"size", bad_size, {"optim_step", "10 floats", "have 12"}},
    {"step", bad_step, {"schedule_lr", "step 0", "from 1"}},
    {"total", bad_total, {"schedule_lr", "total 5", "warmup 10"}},
};
#define N_MISUSE (int)(sizeof misuse / sizeof misuse[0])

static void test_misuse_is_a_clear_error(void) {
    test_misuse_all(misuse, N_MISUSE);
}

int main(int argc, char **argv) {
    if (test_die(argc, argv, misuse, N_MISUSE)) return 0;
    test_prog = "optim";
    RUN(test_adam_matches_reference);
    RUN(test_adam_first_step_is_lr);
    RUN(test_adam_minimises_quadratic);
    RUN(test_adamw_decay_mask);
    RUN(test_sgd);
    RUN(test_schedules);
    RUN(test_clip);
    RUN(test_threads_bitwise);
    RUN(test_misuse_is_a_clear_error);
    return test_summary();
}
