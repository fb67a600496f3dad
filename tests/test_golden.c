/* qkv against PyTorch: the same encoder-decoder with the same weights and
 * batch (written by tests/golden/make_golden.py, `make golden`) must give the
 * same logits, loss, parameter gradients and 10 Adam losses.
 *
 * Bounds: tensors are compared by max |qkv - torch| / max |torch| (the error
 * relative to the tensor's scale, so entries near zero do not dominate),
 * which must be <= 1e-4; losses within 1e-4 absolute and relative. Both
 * sides compute in float32 with different summation orders (blocked SIMD
 * here, MKL-DNN/ATen there), so agreement is expected to ~1e-6; the
 * measured errors are printed.
 *
 * The bf16_grads cases check --precision bf16's gradients against float64
 * gradients and finite differences (NAME_bf16.safetensors) with bf16
 * bounds; see check_bf16_grads. */
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

/* NAME_bf16.safetensors into f; a failed check (and -1) if it cannot be
 * read. */
static int read_bf16_file(const char *name, qkv_st_file *f) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s_bf16.safetensors", dir, name);
    qkv_st_error se;
    if (qkv_st_read(path, f, &se)) {
        CHECK(0, "%s", se.msg);
        return -1;
    }
    return 0;
}

/* --precision bf16 against PyTorch's autocast (NAME_bf16.safetensors):
 * both round the linear layers' operands to bf16 and sum in fp32, but
 * autocast also rounds each product's output to bf16 and computes the
 * attention products in bf16, where qkv keeps fp32 on heads this small
 * (ops.h: qkv_attention_bf16_min). Each such rounding is
 * off by up to 2^-8 relative, a few layers deep: the logits agree to about
 * 1e-2 of their largest, and qkv's bf16 must be nearer autocast than its
 * fp32 logits are (it computes what autocast computes, not fp32). */
static void check_autocast(const char *name, qkv_model *m, const qkv_batch *b,
                           const qkv_tensor *fp32) {
    qkv_st_file f;
    if (read_bf16_file(name, &f)) return;
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

/* A golden model loaded: its file, qkv's model with the file's weights and
 * the file's batch. */
typedef struct golden {
    qkv_st_file f;
    qkv_model_config c;
    qkv_model m;
    float smoothing, lr;
    int32_t *src, *tin, *tout;
    uint8_t *spad, *tpad;
    qkv_batch b;
} golden;

static void golden_free(golden *gm) {
    free(gm->src), free(gm->tin), free(gm->tout), free(gm->spad),
        free(gm->tpad);
    qkv_model_free(&gm->m);
    qkv_st_free(&gm->f);
}

/* 0, or -1 after a failed CHECK (gm freed). */
static int golden_load(const char *name, golden *gm) {
    memset(gm, 0, sizeof *gm);
    char path[256];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, name);
    qkv_st_file *f = &gm->f;
    qkv_st_error err;
    if (qkv_st_read(path, f, &err)) {
        CHECK(0, "%s", err.msg);
        return -1;
    }
    qkv_model_config c = qkv_model_defaults(QKV_MODEL_ENCDEC);
    c.src_vocab = meta_int(f, "src_vocab");
    c.tgt_vocab = meta_int(f, "tgt_vocab");
    c.d_model = meta_int(f, "d_model");
    c.heads = meta_int(f, "heads");
    c.d_ff = meta_int(f, "d_ff");
    c.n_enc = meta_int(f, "n_enc");
    c.n_dec = meta_int(f, "n_dec");
    c.max_len = meta_int(f, "max_len");
    c.ln_eps = (float)atof(meta_str(f, "ln_eps"));
    c.scale_emb = meta_int(f, "scale_emb");
    c.tie_output = meta_int(f, "tie_output");
    c.norm =
        strcmp(meta_str(f, "norm"), "pre") == 0 ? QKV_NORM_PRE : QKV_NORM_POST;
    c.pos = strcmp(meta_str(f, "pos"), "learned") == 0 ? QKV_POS_LEARNED
                                                       : QKV_POS_SIN;
    c.act =
        strcmp(meta_str(f, "act"), "gelu") == 0 ? QKV_ACT_GELU : QKV_ACT_RELU;
    c.dropout = 0.0f;
    gm->c = c;
    gm->smoothing = (float)atof(meta_str(f, "smoothing"));
    gm->lr = (float)atof(meta_str(f, "adam_lr"));
    int B = meta_int(f, "batch"), S = meta_int(f, "src_len"),
        T = meta_int(f, "tgt_len");

    qkv_model *m = &gm->m;
    char merr[200];
    if (qkv_model_init(m, &c, 1, merr, sizeof merr)) {
        CHECK(0, "%s: %s", name, merr);
        qkv_st_free(f);
        return -1;
    }
    /* weights: every qkv parameter from param.<name>, and no torch extra */
    int n_param_files = 0;
    for (int i = 0; i < f->count; i++)
        n_param_files += strncmp(f->tensors[i].name, "param.", 6) == 0;
    CHECK(n_param_files == m->params.count,
          "%s: %d weights in the file, %d in qkv", name, n_param_files,
          m->params.count);
    for (int i = 0; i < m->params.count; i++) {
        qkv_tensor *p = m->params.list[i];
        char key[160];
        snprintf(key, sizeof key, "param.%s", p->name);
        const qkv_st_tensor *t = need(f, key, p->n);
        if (t) memcpy(p->data, t->data, p->n * sizeof(float));
    }
    /* the batch */
    size_t bs = (size_t)B * S, bt = (size_t)B * T;
    gm->src = malloc(bs * 4), gm->tin = malloc(bt * 4),
    gm->tout = malloc(bt * 4);
    gm->spad = malloc(bs), gm->tpad = malloc(bt);
    const qkv_st_tensor *t_src = need(f, "batch.src", bs),
                        *t_spad = need(f, "batch.src_pad", bs),
                        *t_tin = need(f, "batch.tgt_in", bt),
                        *t_tout = need(f, "batch.tgt_out", bt),
                        *t_tpad = need(f, "batch.tgt_pad", bt);
    if (!(t_src && t_spad && t_tin && t_tout && t_tpad)) {
        golden_free(gm);
        return -1;
    }
    for (size_t i = 0; i < bs; i++)
        gm->src[i] = (int32_t)t_src->data[i],
        gm->spad[i] = t_spad->data[i] != 0;
    for (size_t i = 0; i < bt; i++) {
        gm->tin[i] = (int32_t)t_tin->data[i];
        gm->tout[i] = (int32_t)t_tout->data[i];
        gm->tpad[i] = t_tpad->data[i] != 0;
    }
    int padded = 0;
    for (size_t i = 0; i < bs; i++) padded += gm->spad[i];
    CHECK(padded > 0, "%s: the batch has no padding", name);
    gm->b =
        (qkv_batch){B, S, T, gm->src, gm->spad, gm->tin, gm->tout, gm->tpad};
    return 0;
}

static void check_file(const char *name) {
    golden gm;
    if (golden_load(name, &gm)) return;
    qkv_model_config c = gm.c;
    qkv_model m = gm.m; /* the trainer below takes it */
    memset(&gm.m, 0, sizeof gm.m);
    qkv_batch b = gm.b;
    int32_t *tout = gm.tout;
    float smoothing = gm.smoothing, lr = gm.lr;
    qkv_graph g;
    qkv_graph_init(&g, 0);
    qkv_tensor *logits = qkv_model_forward(&m, &g, &b);
    qkv_tensor *loss = qkv_cross_entropy(&g, logits, tout, c.pad_id, smoothing);
    const qkv_st_tensor *e_logits = need(&gm.f, "expect.logits", logits->n),
                        *e_loss = need(&gm.f, "expect.loss", 1);
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
        const qkv_st_tensor *t = need(&gm.f, key, p->n);
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
    const qkv_st_tensor *e_adam = need(&gm.f, "expect.adam_losses", 10);
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
    golden_free(&gm);
}

/* The loss's parameter gradients of gm's model and batch, computed with the
 * graph in precision pr, copied into out[i] (one malloc'd array per
 * parameter). */
static void grads_in(golden *gm, qkv_precision pr, float **out) {
    qkv_model *m = &gm->m;
    qkv_graph g;
    qkv_graph_init(&g, 0);
    g.precision = pr;
    qkv_tensor *logits = qkv_model_forward(m, &g, &gm->b);
    qkv_tensor *loss =
        qkv_cross_entropy(&g, logits, gm->tout, gm->c.pad_id, gm->smoothing);
    qkv_params_zero_grad(&m->params);
    qkv_backward(&g, loss);
    for (int i = 0; i < m->params.count; i++) {
        qkv_tensor *p = m->params.list[i];
        out[i] = malloc(p->n * sizeof(float));
        memcpy(out[i], p->grad, p->n * sizeof(float));
    }
    qkv_graph_free(&g);
}

/* ||a - b|| / ||b|| */
static double norm_err(const float *a, const float *b, size_t n) {
    double d = 0, s = 1e-300;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - b[i];
        d += e * e, s += (double)b[i] * b[i];
    }
    return sqrt(d / s);
}

/* --precision bf16's gradients against float64 (NAME_bf16.safetensors:
 * grad64.<name>, torch's gradient with everything in float64, and fd.*,
 * central differences of the float64 loss, which the script checked
 * against grad64 to 1e-7 of each tensor's largest).
 *
 * bf16 keeps 8 significant bits: rounding an operand is off by at most
 * u = 2^-8 relative (half the spacing 2^-7 of [1, 2)), a product of two
 * rounded operands by 2u. A gradient here is the end of a chain of such
 * products: the forward's (the deepest path from the embeddings: 2 encoder
 * layers of 4 products, 2 decoder layers of 6, the generator: 21) and the
 * backward's (as many again), each with two operands rounded, so about
 * R = 2 * 21 * 2 = 84 roundings of relative size <= u reach a gradient.
 * Added linearly that is 84u (a worst case that needs every rounding to
 * push the same way and the layers not to amplify); as a random walk of
 * independent roundings (each uniform in [-u, u], rms u/sqrt(3)) it is
 * sqrt(84/3) u = 5.3u. The layers do amplify (layer norm, softmax, and a
 * ReLU whose input bf16 moves across zero switches a gradient entry on or
 * off): measured, the worst entry of a tensor is off by 19u of the tensor's
 * largest, ||g_bf16 - grad64|| / ||grad64|| reaches 5.5e-2 (14u), both in
 * post_sin's ReLU FFNs (pre_learned, GELU: 5.7u, 1.8e-2). Bounds, between
 * the random walk and the linear worst case, about 1.7 times the measured:
 *
 *   every entry: |g_bf16 - grad64| <= FD_C u max |grad64 of the tensor|,
 *     FD_C = 32 (0.125); at the FD coordinates also |g_bf16 - fd|;
 *   each tensor: ||g_bf16 - grad64|| / ||grad64|| <= 0.1 (26u);
 *   fp32 (u = 2^-24) at the FD coordinates: |g_fp32 - fd| <= 1e-5 of the
 *     tensor's largest (measured 4e-7), and norm-wise against grad64 within
 *     1e-5 (measured 7e-7), so the float64 reference is right to far
 *     better than the bf16 bound, and the bf16 errors are not the
 *     reference's: they are some 5e4 times fp32's;
 *   and every bf16 gradient tensor differs from fp32's (the bf16 path ran).
 *
 * The measured worst figures are printed. */
#define FD_C 32.0

static void check_bf16_grads(const char *name) {
    golden gm;
    if (golden_load(name, &gm)) return;
    qkv_st_file f;
    if (read_bf16_file(name, &f)) {
        golden_free(&gm);
        return;
    }
    qkv_params *ps = &gm.m.params;
    int np = ps->count;
    float **g32 = calloc((size_t)np, sizeof *g32),
          **g16 = calloc((size_t)np, sizeof *g16);
    const qkv_st_tensor **g64 = calloc((size_t)np, sizeof *g64);
    /* fd_params: the sorted names fd.param_index counts in */
    const char *names = qkv_st_meta(&f, "fd_params");
    cJSON *list = names ? cJSON_Parse(names) : NULL;
    int nl = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
    CHECK(nl == np, "%s: fd_params lists %d names, qkv has %d parameters", name,
          nl, np);
    int *param_of = calloc(nl > 0 ? (size_t)nl : 1, sizeof *param_of);
    for (int j = 0; j < nl; j++) {
        const char *nj = cJSON_GetStringValue(cJSON_GetArrayItem(list, j));
        param_of[j] = -1;
        for (int i = 0; nj && i < np; i++)
            if (strcmp(ps->list[i]->name, nj) == 0) param_of[j] = i;
        CHECK(param_of[j] >= 0, "%s: fd_params[%d] (%s) is no parameter", name,
              j, nj ? nj : "?");
    }
    const qkv_st_tensor *fd_i = qkv_st_find(&f, "fd.param_index"),
                        *fd_o = qkv_st_find(&f, "fd.offset"),
                        *fd_v = qkv_st_find(&f, "fd.value");
    CHECK(fd_i && fd_o && fd_v && fd_o->n == fd_i->n && fd_v->n == fd_i->n &&
              fd_i->n > 0,
          "%s: no fd.param_index, fd.offset, fd.value of one length", name);
    int ok = !test_failures_case;
    for (int i = 0; i < np; i++) {
        char key[160];
        snprintf(key, sizeof key, "grad64.%s", ps->list[i]->name);
        g64[i] = need(&f, key, ps->list[i]->n);
        ok = ok && g64[i];
    }
    if (!ok) goto done;

    grads_in(&gm, QKV_FP32, g32);
    grads_in(&gm, QKV_BF16, g16);

    const double u = 0x1p-8;
    /* the FD coordinates; every tensor must have one */
    double fd16 = 0, fd32 = 0; /* worst |g - fd| / max |grad64| */
    const char *w16 = "", *w32 = "";
    int *seen = calloc((size_t)np, sizeof *seen);
    for (size_t k = 0; k < fd_i->n; k++) {
        int j = (int)fd_i->data[k];
        int i = j >= 0 && j < nl ? param_of[j] : -1;
        size_t off = (size_t)fd_o->data[k];
        if (i < 0 || off >= ps->list[i]->n) {
            CHECK(0, "%s: fd coordinate %zu (%d, %zu) is out of range", name, k,
                  j, off);
            continue;
        }
        size_t n = ps->list[i]->n;
        double scale = 1e-30;
        for (size_t e = 0; e < n; e++)
            scale = fmax(scale, fabs((double)g64[i]->data[e]));
        double fd = fd_v->data[k];
        double e16 = fabs(g16[i][off] - fd) / scale,
               e32 = fabs(g32[i][off] - fd) / scale;
        if (e16 >= fd16) fd16 = e16, w16 = ps->list[i]->name;
        if (e32 >= fd32) fd32 = e32, w32 = ps->list[i]->name;
        seen[i] = 1;
    }
    for (int i = 0; i < np; i++)
        CHECK(seen[i], "%s: no fd coordinate in %s", name, ps->list[i]->name);
    free(seen);
    /* the whole gradients against grad64, and bf16 against fp32 */
    double n16 = 0, n32 = 0, m16 = 0; /* norm-wise, entry-wise (rel_err) */
    const char *wn16 = "", *wm16 = "";
    int differ = 0;
    for (int i = 0; i < np; i++) {
        size_t n = ps->list[i]->n;
        double e16 = norm_err(g16[i], g64[i]->data, n),
               e32 = norm_err(g32[i], g64[i]->data, n),
               x16 = rel_err(g16[i], g64[i]->data, n);
        if (e16 >= n16) n16 = e16, wn16 = ps->list[i]->name;
        if (x16 >= m16) m16 = x16, wm16 = ps->list[i]->name;
        n32 = fmax(n32, e32);
        differ += memcmp(g16[i], g32[i], n * sizeof(float)) != 0;
    }
    printf("  %-12s bf16 grads: %zu fd %.1f u (worst %s), all entries %.1f u "
           "(%s), norm-wise %.1e (%s); fp32: fd %.1e u, norm-wise %.1e; "
           "%d of %d differ\n",
           name, fd_i->n, fd16 / u, w16, m16 / u, wm16, n16, wn16, fd32 / u,
           n32, differ, np);
    CHECK(fd16 <= FD_C * u,
          "%s: bf16 gradient of %s off its finite difference by %.1f u "
          "(bound %.0f u)",
          name, w16, fd16 / u, FD_C);
    CHECK(m16 <= FD_C * u, "%s: bf16 gradient of %s off grad64 by %.1f u", name,
          wm16, m16 / u);
    CHECK(n16 <= 0.1, "%s: bf16 gradient of %s off grad64 by %.2e", name, wn16,
          n16);
    CHECK(fd32 <= 1e-5,
          "%s: fp32 gradient of %s off its finite difference by %.2e", name,
          w32, fd32);
    CHECK(n32 <= 1e-5, "%s: fp32 gradients off grad64 by %.2e", name, n32);
    CHECK(differ == np, "%s: only %d of %d bf16 gradients differ from fp32",
          name, differ, np);
done:
    for (int i = 0; i < np; i++) free(g32[i]), free(g16[i]);
    free(g32), free(g16), free(g64), free(param_of);
    cJSON_Delete(list);
    qkv_st_free(&f);
    golden_free(&gm);
}

static void test_post_norm_sinusoidal_relu(void) {
    check_file("post_sin");
}
static void test_pre_norm_learned_gelu_tied(void) {
    check_file("pre_learned");
}

static void test_bf16_grads_post_sin(void) {
    check_bf16_grads("post_sin");
}
static void test_bf16_grads_pre_learned(void) {
    check_bf16_grads("pre_learned");
}

int main(void) {
    test_prog = "golden";
    const char *d = getenv("QKV_GOLDEN_DIR");
    if (d) dir = d;
    RUN(test_post_norm_sinusoidal_relu);
    RUN(test_pre_norm_learned_gelu_tied);
    RUN(test_bf16_grads_post_sin);
    RUN(test_bf16_grads_pre_learned);
    return test_summary();
}
