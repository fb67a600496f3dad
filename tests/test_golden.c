/* qkv against PyTorch: the same encoder-decoder with the same weights and
 * batch (written by tests/golden/make_golden.py, `make golden`) must give the
 * same logits, loss, parameter gradients and 10 Adam losses.
 *
 * Bounds: tensors are compared by max |qkv - torch| / max |torch| (the error
 * relative to the tensor's scale, so entries near zero do not dominate),
 * which must be <= 1e-4; losses within 1e-4 absolute and relative. Both
 * sides compute in float32 with different summation orders (blocked SIMD
 * here, MKL-DNN/ATen there), so agreement is expected to ~1e-6; the
 * measured errors are printed. */
#include "model.h"
#include "safetensors.h"
#include "test.h"
#include "trainer.h"

static const char *dir = "tests/golden";

static int meta_int(const qkv_st_file *f, const char *key) {
    const char *v = qkv_st_meta(f, key);
    CHECK(v, "metadata %s missing", key);
    return v ? atoi(v) : 0;
}

static const char *meta_str(const qkv_st_file *f, const char *key) {
    const char *v = qkv_st_meta(f, key);
    CHECK(v, "metadata %s missing", key);
    return v ? v : "";
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, s = 1e-30;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / s;
}

static const qkv_st_tensor *need(const qkv_st_file *f, const char *name,
                                 size_t n) {
    const qkv_st_tensor *t = qkv_st_find(f, name);
    CHECK(t && t->n == n, "golden file lacks %s of %zu values", name, n);
    return t && t->n == n ? t : NULL;
}

/* --precision bf16 against PyTorch's autocast (NAME_bf16.safetensors):
 * both round the linear layers' operands to bf16 and sum in fp32, but
 * autocast also rounds each product's output to bf16 and computes the
 * attention products in bf16, where qkv keeps fp32. Each such rounding is
 * off by up to 2^-9 relative, a few layers deep: the logits agree to about
 * 1e-2 of their largest, and qkv's bf16 must be nearer autocast than its
 * fp32 logits are (it computes what autocast computes, not fp32). */
static void check_autocast(const char *name, qkv_model *m, const qkv_batch *b,
                           const qkv_tensor *fp32) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s_bf16.safetensors", dir, name);
    qkv_st_file f;
    qkv_st_error se;
    if (qkv_st_read(path, &f, &se)) {
        CHECK(0, "%s", se.msg);
        return;
    }
    const qkv_st_tensor *ac = need(&f, "expect.logits_autocast", fp32->n);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    g.precision = QKV_BF16;
    qkv_tensor *lg = qkv_model_forward(m, &g, b);
    if (ac) {
        double e16 = rel_err(lg->data, ac->data, lg->n),
               e32 = rel_err(fp32->data, ac->data, lg->n),
               ef = rel_err(lg->data, fp32->data, lg->n);
        printf("  %-12s bf16 vs autocast %.1e, fp32 vs autocast %.1e, bf16 vs "
               "fp32 %.1e\n",
               name, e16, e32, ef);
        CHECK(e16 <= 2e-2, "%s: bf16 logits differ from autocast's by %.2e",
              name, e16);
        CHECK(e16 < e32,
              "%s: bf16 logits (%.2e) no nearer autocast's than "
              "fp32's (%.2e)",
              name, e16, e32);
    }
    qkv_graph_free(&g);
    qkv_st_free(&f);
}

static void check_file(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, name);
    qkv_st_file f;
    qkv_st_error err;
    if (qkv_st_read(path, &f, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    qkv_model_config c = qkv_model_defaults(QKV_MODEL_ENCDEC);
    c.src_vocab = meta_int(&f, "src_vocab");
    c.tgt_vocab = meta_int(&f, "tgt_vocab");
    c.d_model = meta_int(&f, "d_model");
    c.heads = meta_int(&f, "heads");
    c.d_ff = meta_int(&f, "d_ff");
    c.n_enc = meta_int(&f, "n_enc");
    c.n_dec = meta_int(&f, "n_dec");
    c.max_len = meta_int(&f, "max_len");
    c.ln_eps = (float)atof(meta_str(&f, "ln_eps"));
    c.scale_emb = meta_int(&f, "scale_emb");
    c.tie_output = meta_int(&f, "tie_output");
    c.norm =
        strcmp(meta_str(&f, "norm"), "pre") == 0 ? QKV_NORM_PRE : QKV_NORM_POST;
    c.pos = strcmp(meta_str(&f, "pos"), "learned") == 0 ? QKV_POS_LEARNED
                                                        : QKV_POS_SIN;
    c.act =
        strcmp(meta_str(&f, "act"), "gelu") == 0 ? QKV_ACT_GELU : QKV_ACT_RELU;
    c.dropout = 0.0f;
    float smoothing = (float)atof(meta_str(&f, "smoothing"));
    float lr = (float)atof(meta_str(&f, "adam_lr"));
    int B = meta_int(&f, "batch"), S = meta_int(&f, "src_len"),
        T = meta_int(&f, "tgt_len");

    qkv_model m;
    char merr[200];
    if (qkv_model_init(&m, &c, 1, merr, sizeof merr)) {
        CHECK(0, "%s: %s", name, merr);
        qkv_st_free(&f);
        return;
    }
    /* weights: every qkv parameter from param.<name>, and no torch extra */
    int n_param_files = 0;
    for (int i = 0; i < f.count; i++)
        n_param_files += strncmp(f.tensors[i].name, "param.", 6) == 0;
    CHECK(n_param_files == m.params.count,
          "%s: %d weights in the file, %d in qkv", name, n_param_files,
          m.params.count);
    for (int i = 0; i < m.params.count; i++) {
        qkv_tensor *p = m.params.list[i];
        char key[160];
        snprintf(key, sizeof key, "param.%s", p->name);
        const qkv_st_tensor *t = need(&f, key, p->n);
        if (t) memcpy(p->data, t->data, p->n * sizeof(float));
    }
    /* the batch */
    size_t bs = (size_t)B * S, bt = (size_t)B * T;
    int32_t *src = malloc(bs * 4), *tin = malloc(bt * 4),
            *tout = malloc(bt * 4);
    uint8_t *spad = malloc(bs), *tpad = malloc(bt);
    const qkv_st_tensor *t_src = need(&f, "batch.src", bs),
                        *t_spad = need(&f, "batch.src_pad", bs),
                        *t_tin = need(&f, "batch.tgt_in", bt),
                        *t_tout = need(&f, "batch.tgt_out", bt),
                        *t_tpad = need(&f, "batch.tgt_pad", bt);
    if (!(t_src && t_spad && t_tin && t_tout && t_tpad)) goto done;
    for (size_t i = 0; i < bs; i++)
        src[i] = (int32_t)t_src->data[i], spad[i] = t_spad->data[i] != 0;
    for (size_t i = 0; i < bt; i++) {
        tin[i] = (int32_t)t_tin->data[i];
        tout[i] = (int32_t)t_tout->data[i];
        tpad[i] = t_tpad->data[i] != 0;
    }
    int padded = 0;
    for (size_t i = 0; i < bs; i++) padded += spad[i];
    CHECK(padded > 0, "%s: the batch has no padding", name);
    qkv_batch b = {B, S, T, src, spad, tin, tout, tpad};

    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *logits = qkv_model_forward(&m, &g, &b);
    qkv_tensor *loss = qkv_cross_entropy(&g, logits, tout, c.pad_id, smoothing);
    const qkv_st_tensor *e_logits = need(&f, "expect.logits", logits->n),
                        *e_loss = need(&f, "expect.loss", 1);
    double err_logits =
        e_logits ? rel_err(logits->data, e_logits->data, logits->n) : 1;
    double err_loss = e_loss ? fabs(loss->data[0] - e_loss->data[0]) : 1;
    check_autocast(name, &m, &b, logits);
    qkv_params_zero_grad(&m.params);
    qkv_backward(&g, loss);
    double err_grad = 0;
    const char *worst = "";
    for (int i = 0; i < m.params.count; i++) {
        qkv_tensor *p = m.params.list[i];
        char key[160];
        snprintf(key, sizeof key, "grad.%s", p->name);
        const qkv_st_tensor *t = need(&f, key, p->n);
        double e = t ? rel_err(p->grad, t->data, p->n) : 1;
        if (e >= err_grad) err_grad = e, worst = p->name;
    }
    /* 10 training steps on the same batch, as the script does: Adam at a
     * constant lr, no clipping, the file's label smoothing */
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, lr);
    tc.clip = 0.0f;
    tc.label_smoothing = smoothing;
    qkv_trainer t;
    qkv_trainer_init(&t, &m, &tc); /* t owns the model now */
    const qkv_st_tensor *e_adam = need(&f, "expect.adam_losses", 10);
    double err_adam = 0;
    for (int s = 0; s < 10 && e_adam; s++) {
        qkv_trainer_step(&t, &b);
        err_adam = fmax(err_adam, fabs(t.loss - e_adam->data[s]));
    }
    printf("  %-12s logits %.1e  loss %.1e  grads %.1e (worst %s)  adam losses "
           "%.1e\n",
           name, err_logits, err_loss, err_grad, worst, err_adam);
    CHECK(err_logits <= 1e-4, "%s: logits differ by %.2e", name, err_logits);
    CHECK(err_loss <= 1e-4, "%s: loss differs by %.2e", name, err_loss);
    CHECK(err_grad <= 1e-4, "%s: gradient of %s differs by %.2e", name, worst,
          err_grad);
    CHECK(err_adam <= 1e-4, "%s: Adam losses differ by %.2e", name, err_adam);
    qkv_trainer_free(&t);
    qkv_graph_free(&g);
done:
    free(src), free(tin), free(tout), free(spad), free(tpad);
    qkv_model_free(&m);
    qkv_st_free(&f);
}

static void test_post_norm_sinusoidal_relu(void) {
    check_file("post_sin");
}
static void test_pre_norm_learned_gelu_tied(void) {
    check_file("pre_learned");
}

int main(void) {
    test_prog = "golden";
    const char *d = getenv("QKV_GOLDEN_DIR");
    if (d) dir = d;
    RUN(test_post_norm_sinusoidal_relu);
    RUN(test_pre_norm_learned_gelu_tied);
    return test_summary();
}
