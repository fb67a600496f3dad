/* optim.h - optimisers, learning-rate schedules and gradient clipping, all on
 * the flat buffers of a qkv_params store (core/tensor.h).
 *
 * An optimiser owns its state: m and v, two buffers of n floats laid out like
 * the parameters (so checkpointing them is two sequential writes), a byte mask
 * saying where weight decay applies, and the step count. A step is one loop
 * over the n parameters. It reads ps->grads and never zeroes them; the caller
 * does that (qkv_params_zero_grad) before the next backward. The update
 * formulas are PyTorch's (torch.optim.Adam / AdamW / SGD, single-tensor, in
 * float32), so a model trained here can be checked against one trained there.
 *
 *   qkv_optim opt;
 *   qkv_optim_config cfg = qkv_optim_defaults(QKV_OPTIM_ADAMW);
 *   qkv_optim_init(&opt, &cfg, &ps);                 // after qkv_params_alloc
 *   qkv_schedule sched = {QKV_SCHEDULE_NOAM, .lr = 1, .warmup = 4000,
 *                         .d_model = 512};
 *   for (int64_t step = 1; ...; step++) {
 *       qkv_params_zero_grad(&ps);  ...forward, backward...
 *       qkv_clip_grad_norm(&ps, 1.0f);
 *       qkv_optim_step(&opt, &ps, qkv_schedule_lr(&sched, step));
 *   }
 *   qkv_optim_free(&opt);
 */
#ifndef QKV_OPTIM_H
#define QKV_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tensor.h"

typedef enum qkv_optim_kind {
    QKV_OPTIM_ADAM,  /* Kingma & Ba 2015, "Adam: A Method for Stochastic
                        Optimization" */
    QKV_OPTIM_ADAMW, /* Loshchilov & Hutter 2019, "Decoupled Weight Decay
                        Regularization" */
    QKV_OPTIM_SGD    /* with optional (Nesterov) momentum, as torch.optim.SGD */
} qkv_optim_kind;

typedef struct qkv_optim_config {
    qkv_optim_kind kind;
    /* Adam/AdamW: betas in [0, 1), eps >= 0. Defaults 0.9, 0.98, 1e-9: the
     * Transformer paper's (Vaswani et al. 2017, sec. 5.3), not torch's
     * 0.9, 0.999, 1e-8. */
    float beta1, beta2, eps;
    /* >= 0. AdamW: decoupled decay, p *= 1 - lr*wd before the Adam update.
     * Adam and SGD: L2, g += wd*p before the update (as torch). */
    float weight_decay;
    float momentum; /* SGD, in [0, 1); 0 = plain SGD (no buffer kept) */
    int nesterov;   /* SGD: 1 = Nesterov momentum (needs momentum > 0) */
    /* 0: weight decay applies only to parameters with ndim >= 2 (weight
     * matrices, embeddings), never to 1-D ones (layer-norm gamma and beta,
     * biases). 1: to every parameter, as a single torch param group does. */
    int decay_all;
} qkv_optim_config;

/* The defaults for a kind: betas 0.9, 0.98, eps 1e-9; weight decay 0 except
 * AdamW 0.01; SGD momentum 0.9 without Nesterov; decay_all 0. */
/* The config's fields (config.h): JSON keys as checkpoints store them, and
 * the one command-line flag, --optim (the rest follow the kind's defaults). */
extern const qkv_field qkv_optim_fields[];
extern const int qkv_optim_n_fields;

qkv_optim_config qkv_optim_defaults(qkv_optim_kind kind);

/* As JSON (qkv_optim_fields): "kind" adam/adamw/sgd, beta1, beta2, eps,
 * weight_decay, momentum, nesterov, decay_all. malloc'd; free() it. */
char *qkv_optim_config_to_json(const qkv_optim_config *c);
/* Strict inverse, as the model's (model.h), and it also checks the ranges qkv_optim_init requires
 * (which aborts on a bad config), so a loaded config is safe to use. */
int qkv_optim_config_from_json(const char *json, qkv_optim_config *c, char *err,
                               size_t errlen);

typedef struct qkv_optim {
    qkv_optim_config cfg;
    size_t n; /* floats, equal to the params' n */
    float *
        m; /* (n) Adam first moment / SGD momentum buffer; NULL for plain SGD */
    float *v;             /* (n) Adam second moment; NULL for SGD */
    unsigned char *decay; /* (n) 1 where weight decay applies; NULL: everywhere
                             (or no decay) */
    int64_t step;         /* updates taken; Adam's bias correction uses it, so
                           * a checkpoint saves it with m and v */
} qkv_optim;

/* Allocates zeroed state for the parameters of ps (already allocated) and
 * builds the decay mask from the views' ndim. Checks the config. */
void qkv_optim_init(qkv_optim *o, const qkv_optim_config *cfg,
                    const qkv_params *ps);
/* One update of ps->values from ps->grads with learning rate lr (finite,
 * >= 0); step += 1 first, so the first call uses t = 1. Elementwise, so the
 * result does not depend on the number of threads. */
void qkv_optim_step(qkv_optim *o, qkv_params *ps, float lr);
void qkv_optim_free(qkv_optim *o);

/* ---- learning-rate schedules ---- */

typedef enum qkv_schedule_kind {
    QKV_SCHEDULE_CONSTANT, /* lr */
    QKV_SCHEDULE_NOAM,     /* lr * d_model^-0.5 * min(t^-0.5, t * warmup^-1.5)
                            * (Vaswani et al. 2017, eq. 3 in sec. 5.3; lr is the
                            * "factor", 1 in the paper); rises linearly for
                            * warmup steps, then decays as t^-0.5 */
    QKV_SCHEDULE_COSINE    /* lr * t/warmup for t <= warmup, then
                            * min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2
                            * with p = (t - warmup) / (total - warmup),
                            * and min_lr from t = total on */
} qkv_schedule_kind;

typedef struct qkv_schedule {
    qkv_schedule_kind kind;
    float lr;       /* constant: the rate; noam: the factor; cosine: the peak */
    int64_t warmup; /* noam and cosine: steps of linear warm-up (0: none) */
    int64_t total;  /* cosine: reaches min_lr at this step, > 0 and >= warmup */
    float min_lr;   /* cosine: the floor, >= 0 */
    int d_model;    /* noam: > 0 */
} qkv_schedule;

/* The learning rate for update number t, counted from 1 (the first update),
 * as in the paper's formula. */
float qkv_schedule_lr(const qkv_schedule *s, int64_t t);

/* ---- gradient clipping ---- */

/* sqrt(sum of grads^2) over all n gradients: summed in double, in fixed
 * chunks added in a fixed order, so bitwise the same for any thread count. */
float qkv_grad_norm(const qkv_params *ps);
/* Scales all gradients by c = max_norm / (norm + 1e-6) when c < 1, as
 * torch.nn.utils.clip_grad_norm_ does, so their global L2 norm is at most
 * max_norm (> 0). Returns the norm before clipping. A non-finite norm leaves
 * the gradients untouched: the caller should skip that step. */
float qkv_clip_grad_norm(qkv_params *ps, float max_norm);

#endif
