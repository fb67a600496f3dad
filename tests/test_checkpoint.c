/* Checkpoints: config JSON round trips and refusals, save -> load of weights
 * and logits bit for bit, a resumed run equal to an uninterrupted one bit for
 * bit (dropout on, Adam with a schedule), refusal of truncated, foreign,
 * garbage and mismatched files with one line and no change on disk, and
 * atomic saves. Files live in a mkdtemp directory removed at the end. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sys/resource.h>

#include "checkpoint.h"
#include "tasks.h"
#include "test.h"
#include "trainer.h"

/* QUICK (test.h: sanitizers, valgrind): train and time less. */

static void write_bytes(const char *path, const void *bytes, size_t len) {
    FILE *fp = fopen(path, "wb");
    QKV_CHECK(fp, "cannot create %s", path);
    QKV_CHECK(fwrite(bytes, 1, len, fp) == len && fclose(fp) == 0,
              "cannot write %s", path);
}

/* The whole file (malloc'd), or NULL if it is not a regular file. */
static unsigned char *read_bytes(const char *path, size_t *len) {
    struct stat st;
    FILE *fp =
        stat(path, &st) == 0 && S_ISREG(st.st_mode) ? fopen(path, "rb") : NULL;
    if (!fp) return *len = 0, NULL;
    unsigned char *b = qkv_malloc((size_t)st.st_size + 1, "file copy");
    *len = fread(b, 1, (size_t)st.st_size, fp);
    fclose(fp);
    return b;
}

static int same_file(const char *path, const unsigned char *bytes, size_t len) {
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    int same = b && n == len && memcmp(b, bytes, len) == 0;
    free(b);
    return same;
}

static int same_params(const qkv_model *a, const qkv_model *b) {
    if (a->params.n != b->params.n || a->params.count != b->params.count)
        return 0;
    for (int i = 0; i < a->params.count; i++) {
        const qkv_tensor *x = a->params.list[i], *y = b->params.list[i];
        if (strcmp(x->name, y->name) || x->ndim != y->ndim ||
            memcmp(x->shape, y->shape, sizeof x->shape) ||
            memcmp(x->data, y->data, x->n * sizeof *x->data))
            return 0;
    }
    return 1;
}

static int is_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

/* Fills the gradients with a pattern and takes `steps` optimiser steps. */
static void fake_steps(qkv_model *m, qkv_optim *o, int steps) {
    for (int s = 0; s < steps; s++) {
        for (size_t i = 0; i < m->params.n; i++)
            m->params.grads[i] = (float)((i * 7 + (size_t)s) % 13) / 13 - 0.5f;
        qkv_optim_step(o, &m->params, 1e-3f);
    }
}

/* ------------------------------------------------------- config JSON */

static void test_config_json_round_trip(void) {
    qkv_model_config cs[3] = {test_tiny_config(QKV_MODEL_ENCDEC, 11),
                              qkv_model_defaults(QKV_MODEL_DECODER),
                              test_tiny_config(QKV_MODEL_DECODER, 11)};
    cs[0].dropout = 0.1f;
    cs[1].tgt_vocab = 50000;
    cs[1].pos = QKV_POS_LEARNED;
    cs[1].norm = QKV_NORM_PRE;
    cs[1].act = QKV_ACT_GELU;
    cs[1].tie_output = 1;
    cs[1].scale_emb = 0;
    cs[1].pad_id = 3;
    cs[1].dropout = 0.3f;
    cs[1].ln_eps = 1e-6f;
    cs[2].dropout = 0.0f;
    cs[2].ln_eps = 1.17549435e-38f; /* FLT_MIN */
    char err[200];
    for (int i = 0; i < 3; i++) {
        char *json = qkv_model_config_to_json(&cs[i]);
        qkv_model_config back;
        memset(&back, 0xab, sizeof back);
        CHECK(qkv_model_config_from_json(json, &back, err, sizeof err) == 0,
              "config %d: %s", i, err);
        CHECK(memcmp(&back, &cs[i], sizeof back) == 0, "config %d: %s", i,
              json);
        free(json);
    }
    char *json = qkv_model_config_to_json(&cs[1]);
    CHECK(strstr(json, "\"kind\":\"decoder\"") &&
              strstr(json, "\"pos\":\"learned\"") &&
              strstr(json, "\"norm\":\"pre\"") &&
              strstr(json, "\"act\":\"gelu\"") &&
              strstr(json, "\"dropout\":0.3,") &&
              strstr(json, "\"tie_output\":true"),
          "readable JSON: %s", json);
    free(json);
    json = qkv_model_config_to_json(&cs[0]);
    CHECK(strstr(json, "\"kind\":\"encdec\"") &&
              strstr(json, "\"pos\":\"sin\"") &&
              strstr(json, "\"norm\":\"post\"") &&
              strstr(json, "\"act\":\"relu\"") &&
              strstr(json, "\"dropout\":0.1,"),
          "readable JSON: %s", json);
    free(json);

    /* Any finite float round-trips exactly, in the fewest digits. */
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 5, 6);
    int bad = 0;
    for (int i = 0; i < (QUICK ? 2000 : 20000); i++) {
        uint32_t bits = qkv_pcg32_next(&rng);
        float f;
        memcpy(&f, &bits, sizeof f);
        if (!isfinite(f)) continue;
        qkv_model_config c = cs[0], back;
        c.dropout = f;
        c.ln_eps = -f;
        json = qkv_model_config_to_json(&c);
        bad += qkv_model_config_from_json(json, &back, err, sizeof err) != 0 ||
               memcmp(&back, &c, sizeof c) != 0;
        free(json);
    }
    CHECK(bad == 0, "%d floats did not round-trip", bad);

    qkv_optim_config os[4] = {
        qkv_optim_defaults(QKV_OPTIM_ADAM), qkv_optim_defaults(QKV_OPTIM_ADAMW),
        qkv_optim_defaults(QKV_OPTIM_SGD), qkv_optim_defaults(QKV_OPTIM_SGD)};
    os[0].beta2 = 0.999f;
    os[0].eps = 1e-8f;
    os[1].decay_all = 1;
    os[1].weight_decay = 0.05f;
    os[3].nesterov = 1;
    os[3].momentum = 0.95f;
    for (int i = 0; i < 4; i++) {
        json = qkv_optim_config_to_json(&os[i]);
        qkv_optim_config back;
        memset(&back, 0xab, sizeof back);
        CHECK(qkv_optim_config_from_json(json, &back, err, sizeof err) == 0,
              "optim %d: %s", i, err);
        CHECK(memcmp(&back, &os[i], sizeof back) == 0, "optim %d: %s", i, json);
        free(json);
    }
    json = qkv_optim_config_to_json(&os[3]);
    CHECK(strstr(json, "\"kind\":\"sgd\"") && strstr(json, "\"nesterov\":true"),
          "readable JSON: %s", json);
    free(json);
}

/* The JSON of `base` with field `key` replaced by the JSON value `val` (NULL:
 * removed); malloc'd. */
static char *edit_json(const char *base, const char *key, const char *val) {
    cJSON *o = cJSON_Parse(base);
    QKV_CHECK(o, "bad base JSON");
    if (val) {
        cJSON *v = cJSON_Parse(val);
        QKV_CHECK(v, "bad value JSON %s", val);
        if (cJSON_GetObjectItemCaseSensitive(o, key))
            cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
        else
            cJSON_AddItemToObject(o, key, v);
    } else {
        cJSON_DeleteItemFromObjectCaseSensitive(o, key);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char *out = malloc(strlen(s) + 1);
    strcpy(out, s);
    cJSON_free(s);
    return out;
}

typedef struct bad_json {
    const char *key, *val; /* field edit; key NULL: val is the whole text */
    const char *words;     /* expected in the message */
} bad_json;

static void check_model_refusal(const char *json, const char *words) {
    char err[200] = "";
    qkv_model_config c, sentinel;
    memset(&c, 0x5a, sizeof c);
    sentinel = c;
    CHECK(qkv_model_config_from_json(json, &c, err, sizeof err) == -1,
          "accepted %s", json ? json : "NULL");
    CHECK(strstr(err, words), "message \"%s\" lacks \"%s\"", err, words);
    CHECK(!strchr(err, '\n'), "message spans lines: %s", err);
    CHECK(memcmp(&c, &sentinel, sizeof c) == 0, "config changed on refusal");
}

static void check_optim_refusal(const char *json, const char *words) {
    char err[200] = "";
    qkv_optim_config c, sentinel;
    memset(&c, 0x5a, sizeof c);
    sentinel = c;
    CHECK(qkv_optim_config_from_json(json, &c, err, sizeof err) == -1,
          "accepted %s", json ? json : "NULL");
    CHECK(strstr(err, words), "message \"%s\" lacks \"%s\"", err, words);
    CHECK(memcmp(&c, &sentinel, sizeof c) == 0, "config changed on refusal");
}

static void test_config_json_refusals(void) {
    qkv_model_config mc = test_tiny_config(QKV_MODEL_ENCDEC, 11);
    char *good = qkv_model_config_to_json(&mc);
    const bad_json model_cases[] = {
        {"d_ff", NULL, "field 'd_ff' is missing"},
        {"d_model", "\"64\"",
         "field 'd_model': expected an integer, got a "
         "string"},
        {"heads", "2.5", "field 'heads': 2.5 is not an integer"},
        {"n_dec", "1e10", "field 'n_dec'"},
        {"max_len", "-3000000000", "field 'max_len'"},
        {"kind", "\"transformer\"",
         "field 'kind': unknown value "
         "'transformer' (expected encdec or "
         "decoder)"},
        {"pos", "1", "field 'pos': expected a string"},
        {"norm", "\"Post\"", "field 'norm': unknown value 'Post'"},
        {"act", "null", "field 'act': expected a string, got null"},
        {"scale_emb", "1", "field 'scale_emb': expected true or false"},
        {"dropout", "\"0.1\"", "field 'dropout': expected a number"},
        {"ln_eps", "1e300", "field 'ln_eps': 1e+300 is not a finite float"},
        {"pad_id", "[0]", "field 'pad_id': expected an integer, got an array"},
        {"layers", "2", "unknown field 'layers'"},
        {NULL, "[1, 2]", "not a JSON object"},
        {NULL, "{\"kind\": \"encdec\"", "not valid JSON"},
        {NULL, "", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof model_cases / sizeof *model_cases; i++) {
        const bad_json *b = &model_cases[i];
        char *json = b->key ? edit_json(good, b->key, b->val) : NULL;
        check_model_refusal(json ? json : b->val, b->words);
        free(json);
    }
    check_model_refusal(NULL, "no JSON text");
    /* trailing bytes, and a field given twice */
    size_t n = strlen(good);
    char *twice = malloc(n + 40);
    memcpy(twice, good, n - 1);
    strcpy(twice + n - 1, ",\"d_model\":32}");
    check_model_refusal(twice, "field 'd_model' appears twice");
    strcpy(twice, good);
    strcat(twice, " x");
    check_model_refusal(twice, "not valid JSON");
    free(twice);
    free(good);

    qkv_optim_config oc = qkv_optim_defaults(QKV_OPTIM_ADAM);
    good = qkv_optim_config_to_json(&oc);
    const bad_json optim_cases[] = {
        {"kind", "\"rmsprop\"",
         "field 'kind': unknown value 'rmsprop' "
         "(expected adam, adamw or sgd)"},
        {"beta1", "1", "field 'beta1' is out of range"},
        {"beta2", "-0.5", "field 'beta2' is out of range"},
        {"eps", "-1e-9", "field 'eps' is out of range"},
        {"weight_decay", "-1", "field 'weight_decay' is out of range"},
        {"momentum", "\"0.9\"", "field 'momentum': expected a number"},
        {"nesterov", "true", "field 'nesterov': needs kind sgd"},
        {"decay_all", NULL, "field 'decay_all' is missing"},
        {"lr", "0.1", "unknown field 'lr'"},
    };
    for (size_t i = 0; i < sizeof optim_cases / sizeof *optim_cases; i++) {
        char *json = edit_json(good, optim_cases[i].key, optim_cases[i].val);
        check_optim_refusal(json, optim_cases[i].words);
        free(json);
    }
    free(good);
}

/* ------------------------------------------------------- save -> load */

/* Logits (B, T, V) of one task batch, dropout off, copied out (malloc'd). */
static float *logits_of(qkv_model *m, const qkv_task *t, size_t *n) {
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 11, 12);
    qkv_task_batch b;
    qkv_task_batch_init(&b, t, 3);
    qkv_task_sample(t, &rng, &b);
    qkv_graph g;
    qkv_graph_init(&g, 0);
    g.training = 0;
    qkv_tensor *y = qkv_model_forward(m, &g, &b.view);
    *n = y->n;
    float *out = qkv_malloc(y->n * sizeof *out, "logits");
    memcpy(out, y->data, y->n * sizeof *out);
    qkv_graph_free(&g);
    qkv_task_batch_free(&b);
    return out;
}

static void test_save_load_model(void) {
    qkv_model_config cs[2] = {test_tiny_config(QKV_MODEL_ENCDEC, 11),
                              test_tiny_config(QKV_MODEL_DECODER, 11)};
    cs[1].pos = QKV_POS_LEARNED;
    cs[1].norm = QKV_NORM_PRE;
    cs[1].act = QKV_ACT_GELU;
    cs[1].tie_output = 1;
    const qkv_task tasks[2] = {{QKV_TASK_COPY, 11, 3, 8, 1, 0},
                               {QKV_TASK_REVERSE, 11, 3, 8, 1, 1}};
    const char *p = test_path("model.safetensors");
    char err[300];
    for (int k = 0; k < 2; k++) {
        qkv_model a, b;
        test_tiny_model(&a, &cs[k], 100 + (uint64_t)k);
        for (int i = 0; i < 5; i++) qkv_pcg32_next(&a.rng);
        qkv_pcg32 data = {UINT64_MAX, 1}, data_back = {3, 5};
        qkv_ckpt_rng rng = {"data", &data}, rng_back = {"data", &data_back};
        const char *keys[2] = {"vocab.src", "cmdline"};
        const char *vals[2] = {"<pad> <bos> a b c \xc3\xa9",
                               "qkv train --task copy"};
        CHECK(qkv_ckpt_save(p, &a, NULL, INT64_MAX, &rng, 1, keys, vals, 2, err,
                            sizeof err) == 0,
              "save: %s", err);

        /* What torch/numpy see: the parameters by name, no optimiser. */
        qkv_st_file f;
        qkv_st_error se;
        CHECK(qkv_st_read(p, &f, &se) == 0, "read: %s", se.msg);
        CHECK(f.count == a.params.count, "%d tensors for %d parameters",
              f.count, a.params.count);
        const qkv_st_tensor *t = qkv_st_find(&f, a.params.list[0]->name);
        CHECK(t && t->n == a.params.list[0]->n, "first parameter by name");
        CHECK(!qkv_st_find(&f, "optim.m"), "optimiser state without one");
        const char *fmt = qkv_st_meta(&f, "format");
        CHECK(fmt && !strcmp(fmt, "qkv-checkpoint-1"), "format key");
        const char *rs = qkv_st_meta(&f, "rng.data");
        CHECK(rs && !strcmp(rs, "{\"state\":\"18446744073709551615\","
                                "\"inc\":\"1\"}"),
              "rng.data = %s", rs ? rs : "NULL");
        CHECK(qkv_st_meta(&f, "step") &&
                  !strcmp(qkv_st_meta(&f, "step"), "9223372036854775807"),
              "step");
        qkv_st_free(&f);

        qkv_optim opt;
        memset(&opt, 0x77, sizeof opt);
        int64_t step = 0;
        qkv_st_file meta;
        CHECK(qkv_ckpt_load(p, &b, &opt, &step, &rng_back, 1, &meta, err,
                            sizeof err) == 0,
              "load: %s", err);
        CHECK(memcmp(&a.cfg, &b.cfg, sizeof a.cfg) == 0, "config differs");
        CHECK(same_params(&a, &b), "weights differ");
        CHECK(a.rng.state == b.rng.state && a.rng.inc == b.rng.inc,
              "dropout RNG differs");
        CHECK(data_back.state == data.state && data_back.inc == data.inc,
              "data RNG differs");
        CHECK(step == INT64_MAX, "step %lld", (long long)step);
        CHECK(is_zero(&opt, sizeof opt), "optimiser not zeroed");
        CHECK(meta.count == 0 && qkv_st_meta(&meta, "vocab.src") &&
                  !strcmp(qkv_st_meta(&meta, "vocab.src"), vals[0]) &&
                  !strcmp(qkv_st_meta(&meta, "cmdline"), vals[1]),
              "extra metadata");
        qkv_st_free(&meta);
        CHECK(b.generator == (k ? b.tgt_embed : b.generator),
              "tied output not rebuilt");

        size_t na, nb;
        float *la = logits_of(&a, &tasks[k], &na),
              *lb = logits_of(&b, &tasks[k], &nb);
        CHECK(na == nb && memcmp(la, lb, na * sizeof *la) == 0,
              "logits differ (model %d)", k);
        free(la);
        free(lb);
        qkv_model_free(&a);
        qkv_model_free(&b);
    }
}

static void test_optimiser_state(void) {
    qkv_optim_config ocs[4] = {
        qkv_optim_defaults(QKV_OPTIM_ADAMW), qkv_optim_defaults(QKV_OPTIM_ADAM),
        qkv_optim_defaults(QKV_OPTIM_SGD), qkv_optim_defaults(QKV_OPTIM_SGD)};
    ocs[2].nesterov = 1;
    ocs[3].momentum = 0; /* plain SGD: no state tensors at all */
    const int has_m[4] = {1, 1, 1, 0}, has_v[4] = {1, 1, 0, 0};
    qkv_model_config mc = test_tiny_config(QKV_MODEL_ENCDEC, 11);
    const char *p = test_path("optim.safetensors");
    char err[300];
    for (int k = 0; k < 4; k++) {
        qkv_model a, b;
        qkv_optim oa, ob;
        test_tiny_model(&a, &mc, 1);
        qkv_optim_init(&oa, &ocs[k], &a.params);
        fake_steps(&a, &oa, 3);
        CHECK(qkv_ckpt_save(p, &a, &oa, 3, NULL, 0, NULL, NULL, 0, err,
                            sizeof err) == 0,
              "save: %s", err);
        qkv_st_file f;
        qkv_st_error se;
        CHECK(qkv_st_read(p, &f, &se) == 0, "read: %s", se.msg);
        const qkv_st_tensor *tm = qkv_st_find(&f, "optim.m"),
                            *tv = qkv_st_find(&f, "optim.v");
        CHECK(!!tm == has_m[k] && !!tv == has_v[k], "optimiser %d tensors", k);
        CHECK(!tm || (tm->ndim == 1 && tm->n == a.params.n), "optim.m shape");
        qkv_st_free(&f);
        CHECK(qkv_ckpt_load(p, &b, &ob, NULL, NULL, 0, NULL, err, sizeof err) ==
                  0,
              "load: %s", err);
        CHECK(memcmp(&oa.cfg, &ob.cfg, sizeof oa.cfg) == 0, "config %d", k);
        CHECK(ob.n == oa.n && ob.step == 3, "n or step");
        CHECK(!!ob.m == has_m[k] && !!ob.v == has_v[k], "buffers %d", k);
        CHECK(!oa.m || memcmp(oa.m, ob.m, oa.n * sizeof *oa.m) == 0, "m");
        CHECK(!oa.v || memcmp(oa.v, ob.v, oa.n * sizeof *oa.v) == 0, "v");
        CHECK(!oa.decay == !ob.decay &&
                  (!oa.decay || memcmp(oa.decay, ob.decay, oa.n) == 0),
              "decay mask");
        /* One more step from each: still identical. */
        fake_steps(&a, &oa, 1);
        fake_steps(&b, &ob, 1);
        CHECK(same_params(&a, &b), "step after load differs (%d)", k);
        qkv_optim_free(&oa);
        qkv_optim_free(&ob);
        qkv_model_free(&a);
        qkv_model_free(&b);
    }
}

/* ------------------------------------------------- resume = uninterrupted */

/* The runs go through the trainer and a batch source, as qkv train does:
 * one run of 2N steps, and one stopped after N steps, saved with
 * qkv_trainer_save, forgotten, resumed with qkv_trainer_resume on a fresh
 * source and run to 2N. */

#define RESUME_N (QUICK ? 3 : 25) /* steps before and after the stop */

static const qkv_task resume_task = {QKV_TASK_COPY, 11, 10, 10, 0, 0};
static qkv_pairs resume_pairs; /* the corpus runs' pairs (resume_corpus) */
enum { RESUME_TOKENS = 64 };   /* the corpus runs' token budget a batch */

/* The tiny model, two layers a side (one in sanitizer builds), dropout on
 * so that the dropout generator matters. */
static qkv_model_config resume_config(int vocab) {
    qkv_model_config c = test_tiny_config(QKV_MODEL_ENCDEC, vocab);
    c.n_enc = c.n_dec = QUICK ? 1 : 2;
    c.dropout = 0.1f;
    return c;
}

/* Adam, warmup and cosine decay over the 2N steps, clipping at 1. */
static qkv_trainer_config resume_trainer(void) {
    qkv_trainer_config tc = qkv_trainer_defaults(QKV_OPTIM_ADAM, 3e-3f);
    tc.schedule =
        (qkv_schedule){QKV_SCHEDULE_COSINE, 3e-3f, 5, 2 * RESUME_N, 1e-4f, 0};
    return tc;
}

/* resume_pairs: 40 pairs "x<TAB>x reversed" of 2 to 6 words a..g, written
 * to a TSV file and loaded as qkv train loads one (a shared word
 * vocabulary). Returns the vocabulary's size. */
static int resume_corpus(void) {
    char text[2048];
    size_t len = 0;
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 3, 4);
    for (int i = 0; i < 40; i++) {
        int n = 2 + (int)qkv_pcg32_bounded(&rng, 5);
        char w[6];
        for (int j = 0; j < n; j++)
            w[j] = (char)('a' + qkv_pcg32_bounded(&rng, 7));
        for (int j = 0; j < n; j++) {
            text[len++] = w[j];
            text[len++] = j + 1 < n ? ' ' : '\t';
        }
        for (int j = n - 1; j >= 0; j--) {
            text[len++] = w[j];
            text[len++] = j ? ' ' : '\n';
        }
    }
    const char *path = test_path("resume.tsv");
    write_bytes(path, text, len);
    qkv_corpus c;
    char err[300];
    QKV_CHECK(qkv_corpus_load(path, &c, err, sizeof err) == 0, "%s", err);
    qkv_vocab v;
    qkv_vocab_build(&v, &c, QKV_SIDE_BOTH, QKV_TOK_WORD, 1);
    qkv_pairs_encode(&resume_pairs, &c, QKV_TOK_WORD, &v, &v, 0, 0);
    int size = v.size;
    qkv_vocab_free(&v);
    qkv_corpus_free(&c);
    return size;
}

/* A training source at its start: fresh copy-task batches, or shuffled
 * epochs of resume_pairs. */
static qkv_source *resume_source(int corpus) {
    char err[300] = "";
    qkv_source *s = corpus
                        ? qkv_corpus_source(&resume_pairs, RESUME_TOKENS, 42, 0,
                                            err, sizeof err)
                        : qkv_task_source(&resume_task, QUICK ? 4 : 16, 42, 0);
    QKV_CHECK(s, "%s", err);
    return s;
}

static void start_run(qkv_trainer *t, int vocab) {
    qkv_model m;
    qkv_model_config c = resume_config(vocab);
    test_tiny_model(&m, &c, 42);
    qkv_trainer_config tc = resume_trainer();
    qkv_trainer_init(t, &m, &tc);
}

/* Steps until step `to` (counted from 1); losses[s - 1] gets step s's. */
static void train_until(qkv_trainer *t, qkv_source *data, int64_t to,
                        float *losses) {
    while (t->step < to) {
        qkv_step_result r = qkv_trainer_step(t, qkv_source_next(data));
        losses[t->step - 1] = t->loss;
        CHECK(r == QKV_STEP_OK, "step %lld: loss %g", (long long)t->step,
              (double)t->loss);
    }
}

static int same_position(const qkv_source *s, const qkv_source_state *want) {
    qkv_source_state st;
    qkv_source_get_state(s, &st);
    return st.rng.state == want->rng.state && st.rng.inc == want->rng.inc &&
           st.epoch == want->epoch && st.batch == want->batch;
}

static float *copy_floats(const float *x, size_t n) {
    float *y = qkv_malloc(n * sizeof *y, "copy");
    memcpy(y, x, n * sizeof *y);
    return y;
}

/* Resumes t from path on a fresh source (*data); 0, or -1 after a failed
 * check (nothing to free). */
static int resume_run(qkv_trainer *t, const char *path, int corpus,
                      qkv_source **data) {
    char err[300];
    qkv_trainer_config tc = resume_trainer();
    memset(t, 0xee, sizeof *t);
    *data = resume_source(corpus);
    if (qkv_trainer_resume(t, path, &tc, *data, NULL, err, sizeof err) == 0)
        return 0;
    CHECK(0, "resume: %s", err);
    qkv_source_free(*data);
    return -1;
}

static void check_resume(int corpus) {
    enum { N = RESUME_N };
    float straight[2 * N], resumed[2 * N], reseeded[2 * N];
    const char *kind = corpus ? "corpus" : "task";
    int vocab = corpus ? resume_corpus() : resume_task.vocab;
    char err[300];

    qkv_trainer t;
    qkv_source *data = resume_source(corpus);
    start_run(&t, vocab);
    train_until(&t, data, 2 * N, straight);
    size_t n = t.model.params.n;
    float *w = copy_floats(t.model.params.values, n),
          *om = copy_floats(t.opt.m, n);
    int64_t tokens = t.tokens;
    qkv_source_state end;
    qkv_source_get_state(data, &end);
    qkv_trainer_free(&t);
    qkv_source_free(data);

    /* Stop after N steps, save, forget everything, resume, go on. */
    const char *p = test_path(corpus ? "resume-corpus.safetensors"
                                     : "resume-task.safetensors");
    data = resume_source(corpus);
    start_run(&t, vocab);
    train_until(&t, data, N, resumed);
    qkv_source_state cut;
    qkv_source_get_state(data, &cut);
    if (corpus) /* the stop falls inside an epoch, the run crosses one */
        CHECK(cut.batch > 0 && cut.batch < data->epoch_batches &&
                  end.epoch > cut.epoch,
              "stop at epoch %lld batch %lld of %d, end in epoch %lld",
              (long long)cut.epoch, (long long)cut.batch, data->epoch_batches,
              (long long)end.epoch);
    double t0 = qkv_seconds();
    CHECK(qkv_trainer_save(&t, p, data, NULL, NULL, 0, err, sizeof err) == 0,
          "save: %s", err);
    double t_save = qkv_seconds() - t0;
    qkv_trainer_free(&t);
    qkv_source_free(data);

    t0 = qkv_seconds();
    if (resume_run(&t, p, corpus, &data)) goto done;
    double t_load = qkv_seconds() - t0;
    CHECK(t.step == N, "restored step %lld", (long long)t.step);
    CHECK(same_position(data, &cut), "the source resumed elsewhere");
    qkv_pcg32 drop_at_stop = t.model.rng;
    train_until(&t, data, 2 * N, resumed);
    CHECK(memcmp(straight + N, resumed + N, N * sizeof *straight) == 0,
          "losses after the resume differ from the straight run");
    CHECK(memcmp(straight, resumed, N * sizeof *straight) == 0,
          "losses before the stop differ");
    CHECK(t.model.params.n == n &&
              memcmp(w, t.model.params.values, n * sizeof *w) == 0,
          "final weights differ");
    CHECK(memcmp(om, t.opt.m, n * sizeof *om) == 0 && t.opt.step == 2 * N,
          "final optimiser state differs");
    CHECK(t.tokens == tokens && same_position(data, &end),
          "tokens (%lld vs %lld) or the source's end position differ",
          (long long)t.tokens, (long long)tokens);
    for (int s = N; s < 2 * N; s++)
        if (memcmp(&straight[s], &resumed[s], sizeof *straight)) {
            CHECK(0, "step %d: loss %.9g straight, %.9g resumed", s + 1,
                  (double)straight[s], (double)resumed[s]);
            break;
        }
    qkv_trainer_free(&t);
    qkv_source_free(data);

    /* The test can tell: a different dropout RNG after the resume changes
     * the losses. */
    if (resume_run(&t, p, corpus, &data)) goto done;
    CHECK(same_position(data, &cut) && t.model.rng.state == drop_at_stop.state,
          "RNGs restored differently twice");
    qkv_pcg32_seed(&t.model.rng, 1, 2);
    train_until(&t, data, 2 * N, reseeded);
    CHECK(memcmp(straight + N, reseeded + N, N * sizeof *straight) != 0,
          "losses do not depend on the dropout RNG: the test proves nothing");
    qkv_trainer_free(&t);
    qkv_source_free(data);

    size_t bytes;
    unsigned char *file = read_bytes(p, &bytes);
    free(file);
    printf("  resume (%s): %d + %d steps bit for bit; %zu parameters, "
           "checkpoint %zu bytes (weights + Adam m, v), save %.1f ms, load "
           "%.1f ms\n",
           kind, N, N, n, bytes, 1e3 * t_save, 1e3 * t_load);
done:
    free(w);
    free(om);
}

static void test_resume_equals_uninterrupted(void) {
    check_resume(0);
}

/* A corpus run, stopped inside an epoch; and a task run's checkpoint is
 * refused as a corpus run's. */
static void test_resume_corpus_equals_uninterrupted(void) {
    check_resume(1);
    qkv_trainer t;
    qkv_trainer_config tc = resume_trainer();
    qkv_source *data = resume_source(1);
    char err[300] = "";
    const char *p = test_path("resume-task.safetensors");
    CHECK(qkv_trainer_resume(&t, p, &tc, data, NULL, err, sizeof err) == -1,
          "a task run resumed on a corpus");
    CHECK(strstr(err, "its data position is not of a corpus") &&
              !strncmp(err, p, strlen(p)),
          "message: %s", err);
    CHECK(is_zero(&t, sizeof t), "trainer not zeroed on refusal");
    qkv_source_free(data);
    qkv_pairs_free(&resume_pairs);
}

/* ------------------------------------------------------------ refusals */

/* A copy of checkpoint src at dst with one edit: metadata key set to val
 * (val NULL: removed), tensor `drop` left out, tensor `shrink` one row (or
 * value) shorter, tensor `add` added. */
typedef struct ckpt_edit {
    const char *key, *val, *drop, *shrink, *add;
} ckpt_edit;

static void rewrite(const char *src, const char *dst, ckpt_edit ed) {
    qkv_st_file f;
    qkv_st_error se;
    QKV_CHECK(qkv_st_read(src, &f, &se) == 0, "%s", se.msg);
    qkv_st_entry *e = qkv_malloc((size_t)(f.count + 1) * sizeof *e, "entries");
    int ne = 0;
    for (int i = 0; i < f.count; i++) {
        const qkv_st_tensor *t = &f.tensors[i];
        if (ed.drop && !strcmp(t->name, ed.drop)) continue;
        e[ne] =
            (qkv_st_entry){.name = t->name, .data = t->data, .ndim = t->ndim};
        memcpy(e[ne].shape, t->shape, sizeof t->shape);
        if (ed.shrink && !strcmp(t->name, ed.shrink)) e[ne].shape[0]--;
        ne++;
    }
    static const float one = 1;
    if (ed.add) e[ne++] = (qkv_st_entry){ed.add, &one, 1, {1}};
    const char *keys[64], *vals[64];
    int nm = 0, found = 0;
    for (const cJSON *c = f.metadata ? f.metadata->child : NULL; c;
         c = c->next) {
        if (ed.key && !strcmp(c->string, ed.key)) {
            found = 1;
            if (!ed.val) continue;
            keys[nm] = c->string, vals[nm++] = ed.val;
        } else {
            keys[nm] = c->string, vals[nm++] = c->valuestring;
        }
    }
    if (ed.key && ed.val && !found) keys[nm] = ed.key, vals[nm++] = ed.val;
    QKV_CHECK(qkv_st_write(dst, e, ne, keys, vals, nm, &se) == 0, "%s", se.msg);
    free(e);
    qkv_st_free(&f);
}

/* A good checkpoint (small enc-dec, Adam, rng "data") at path. */
static void write_good(const char *path, qkv_model *m_out) {
    qkv_model m;
    qkv_optim o;
    qkv_model_config c = test_tiny_config(QKV_MODEL_ENCDEC, 11);
    test_tiny_model(&m, &c, 9);
    qkv_optim_config oc = qkv_optim_defaults(QKV_OPTIM_ADAM);
    qkv_optim_init(&o, &oc, &m.params);
    fake_steps(&m, &o, 2);
    qkv_pcg32 data;
    qkv_pcg32_seed(&data, 1, 2);
    qkv_ckpt_rng r = {"data", &data};
    char err[300];
    QKV_CHECK(qkv_ckpt_save(path, &m, &o, 2, &r, 1, NULL, NULL, 0, err,
                            sizeof err) == 0,
              "%s", err);
    qkv_optim_free(&o);
    if (m_out)
        *m_out = m;
    else
        qkv_model_free(&m);
}

/* qkv_ckpt_load refuses path with one line naming it and containing words;
 * the structs come back zeroed, the RNG untouched, the file unchanged. */
static void expect_load_refused(const char *path, const char *words) {
    size_t len;
    unsigned char *before = read_bytes(path, &len);
    qkv_model m;
    qkv_optim o;
    qkv_st_file meta;
    memset(&m, 0x33, sizeof m);
    memset(&o, 0x33, sizeof o);
    qkv_pcg32 data = {123, 457};
    qkv_ckpt_rng r = {"data", &data};
    int64_t step = -7;
    char err[512] = "";
    int rc = qkv_ckpt_load(path, &m, &o, &step, &r, 1, &meta, err, sizeof err);
    CHECK(rc == -1, "%s accepted (want \"%s\")", path, words);
    if (rc == 0) {
        qkv_model_free(&m);
        qkv_optim_free(&o);
        qkv_st_free(&meta);
        free(before);
        return;
    }
    CHECK(strstr(err, words), "message \"%s\" lacks \"%s\"", err, words);
    CHECK(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':',
          "message \"%s\" does not name the file", err);
    CHECK(!strchr(err, '\n'), "message spans lines: %s", err);
    CHECK(is_zero(&m, sizeof m) && is_zero(&o, sizeof o) &&
              is_zero(&meta, sizeof meta),
          "structs not zeroed on refusal");
    CHECK(data.state == 123 && data.inc == 457 && step == -7,
          "RNG or step touched on refusal");
    CHECK(!before || same_file(path, before, len), "file changed");
    free(before);
}

static void test_refuse_truncated(void) {
    const char *good = test_path("trunc-src.safetensors"),
               *p = test_path("trunc.safetensors");
    qkv_model m;
    write_good(good, &m);
    size_t len;
    unsigned char *b = read_bytes(good, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    const size_t cuts[] = {0,
                           1,
                           7,
                           8,
                           9,
                           8 + hlen / 2,
                           8 + hlen - 1,
                           8 + hlen,
                           8 + hlen + 1,
                           8 + hlen + 4,
                           len / 2,
                           len - 4,
                           len - 1};
    char err[512];
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        write_bytes(p, b, cuts[i]);
        expect_load_refused(p, "");
        float *before = qkv_malloc(m.params.n * sizeof *before, "copy");
        memcpy(before, m.params.values, m.params.n * sizeof *before);
        CHECK(qkv_ckpt_load_weights(p, &m, err, sizeof err) == -1,
              "load_weights accepted a cut at %zu", cuts[i]);
        CHECK(memcmp(before, m.params.values, m.params.n * sizeof *before) == 0,
              "weights changed by a refused file");
        free(before);
    }
    /* The reader's words for the common cuts. */
    write_bytes(p, b, 4);
    expect_load_refused(p, "too short for the 8-byte header length");
    write_bytes(p, b, 8 + hlen / 2);
    expect_load_refused(p, "truncated");
    write_bytes(p, b, len - 1);
    expect_load_refused(p, "beyond the data buffer");
    free(b);
    qkv_model_free(&m);
}

static void test_refuse_foreign_and_garbage(void) {
    const char *p = test_path("foreign.safetensors");
    qkv_st_error se;
    const float w[6] = {1, 2, 3, 4, 5, 6};
    const qkv_st_entry e[1] = {{"weight", w, 2, {2, 3}}};
    const char *k[1] = {"format"}, *v[1] = {"pt"};
    /* valid safetensors, as torch's save_file writes them */
    QKV_CHECK(qkv_st_write(p, e, 1, NULL, NULL, 0, &se) == 0, "%s", se.msg);
    expect_load_refused(p, "not a qkv checkpoint (no \"format\" key in the "
                           "metadata; written by another program?)");
    QKV_CHECK(qkv_st_write(p, e, 1, k, v, 1, &se) == 0, "%s", se.msg);
    expect_load_refused(p, "not a qkv checkpoint this version reads (format "
                           "'pt'");

    expect_load_refused(test_path("no-such-file"), "cannot open");
    expect_load_refused(test_dir, "not a regular file");
    write_bytes(p, "", 0);
    expect_load_refused(p, "too short");
    write_bytes(p, "hello, world\n", 13);
    expect_load_refused(p, "not a safetensors file");
    qkv_pcg32 rng;
    qkv_pcg32_seed(&rng, 99, 100);
    unsigned char junk[4096];
    for (int trial = 0; trial < 20; trial++) {
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (unsigned char)qkv_pcg32_next(&rng);
        if (trial % 2) { /* a plausible header length */
            memset(junk, 0, 8);
            junk[0] = (unsigned char)(trial * 37);
            junk[8] = '{';
        }
        write_bytes(p, junk, sizeof junk);
        expect_load_refused(p, "");
    }
}

static void test_refuse_bad_contents(void) {
    const char *good = test_path("bad-src.safetensors"),
               *p = test_path("bad.safetensors");
    write_good(good, NULL);
    qkv_model_config mc = test_tiny_config(QKV_MODEL_ENCDEC, 11);
    char *cfg = qkv_model_config_to_json(&mc);
    char *no_dff = edit_json(cfg, "d_ff", NULL),
         *narrow = edit_json(cfg, "d_model", "16"),
         *heads3 = edit_json(cfg, "heads", "3"),
         *vocab10m = edit_json(cfg, "src_vocab", "10000000"),
         *vocab4m = edit_json(cfg, "src_vocab", "4000000"),
         *len10m = edit_json(cfg, "max_len", "10000000"),
         *wide = edit_json(cfg, "d_ff", "65536");
    qkv_optim_config oc = qkv_optim_defaults(QKV_OPTIM_ADAM);
    char *ocfg = qkv_optim_config_to_json(&oc),
         *bad_kind = edit_json(ocfg, "kind", "\"lion\"");
    const struct {
        ckpt_edit ed;
        const char *words;
    } cases[] = {
        {{"format", "qkv-checkpoint-2", 0, 0, 0}, "format 'qkv-checkpoint-2'"},
        {{"model", NULL, 0, 0, 0}, "no \"model\" in the metadata"},
        {{"model", "{", 0, 0, 0}, "metadata \"model\": not valid JSON"},
        {{"model", no_dff, 0, 0, 0},
         "metadata \"model\": field 'd_ff' is missing"},
        {{"model", heads3, 0, 0, 0},
         "metadata \"model\": h = 3 does not divide d_model = 32"},
        {{"model", narrow, 0, 0, 0},
         "shape mismatch: src_embed.weight is "
         "(11,32) in the file but (11,16) in the "
         "model"},
        /* sizes from the metadata are checked against the tensors (and
         * caps) before the model is allocated: see the memory check below */
        {{"model", vocab4m, 0, 0, 0},
         "shape mismatch: src_embed.weight is (11,32) in the file but "
         "(4000000,32) in the model"},
        {{"model", vocab10m, 0, 0, 0},
         "vocabularies of 10000000 and 11 tokens: at most 4194304"},
        {{"model", len10m, 0, 0, 0}, "max_len 10000000"},
        {{"model", wide, 0, 0, 0}, "shape mismatch"},
        {{"step", NULL, 0, 0, 0}, "no \"step\" in the metadata"},
        {{"step", "-1", 0, 0, 0},
         "metadata \"step\" = '-1' is not a "
         "non-negative decimal 64-bit integer"},
        {{"step", "12a", 0, 0, 0}, "metadata \"step\" = '12a'"},
        {{"step", " 12", 0, 0, 0}, "metadata \"step\" = ' 12'"},
        {{"step", "9223372036854775808", 0, 0, 0}, "metadata \"step\""},
        {{"rng.model", NULL, 0, 0, 0}, "no \"rng.model\" in the metadata"},
        {{"rng.model", "{\"state\":\"18446744073709551616\",\"inc\":\"1\"}", 0,
          0, 0},
         "metadata \"rng.model\": field 'state' is not a decimal string of a "
         "64-bit unsigned integer"},
        {{"rng.model", "{\"state\":1,\"inc\":\"1\"}", 0, 0, 0},
         "metadata \"rng.model\": field 'state': expected a string, got a "
         "number"},
        {{"rng.model", "{\"state\":\"1\",\"inc\":\"2\"}", 0, 0, 0},
         "field 'inc' is even"},
        {{"rng.model", "{\"state\":\"1\"}", 0, 0, 0},
         "metadata \"rng.model\": field 'inc' is missing"},
        {{"rng.data", NULL, 0, 0, 0}, "no \"rng.data\" in the metadata"},
        {{"optim", "{\"kind\":\"lion\"}", 0, 0, 0},
         "metadata \"optim\": field 'beta1' is missing"},
        {{"optim", bad_kind, 0, 0, 0},
         "metadata \"optim\": field 'kind': unknown value 'lion'"},
        {{"optim_step", NULL, 0, 0, 0}, "no \"optim_step\" in the metadata"},
        {{"optim", NULL, 0, 0, 0},
         "tensor 'optim.m' present but the stored "
         "optimiser has no such state"},
        {{0, 0, "optim.v", 0, 0}, "tensor 'optim.v' missing"},
        {{0, 0, 0, "optim.m", 0}, "tensor 'optim.m' has"},
        {{0, 0, "generator.weight", 0, 0},
         "missing from the file: generator.weight"},
        {{0, 0, 0, "tgt_embed.weight", 0},
         "shape mismatch: tgt_embed.weight is (10,32) in the file but "
         "(11,32) in the model"},
        {{0, 0, 0, 0, "optim.extra"}, "not in the model: optim.extra"},
    };
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long rss0 = ru.ru_maxrss;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rewrite(good, p, cases[i].ed);
        expect_load_refused(p, cases[i].words);
    }
    getrusage(RUSAGE_SELF, &ru);
    CHECK(ru.ru_maxrss - rss0 < 64 * 1024,
          "refusing the files took %ld MB more memory (10M-token "
          "vocabularies allocated?)",
          (ru.ru_maxrss - rss0) / 1024);
    /* A NaN or an infinity among the weights (a diverged run): refused. */
    {
        qkv_st_file f;
        qkv_st_error se;
        CHECK(qkv_st_read(good, &f, &se) == 0, "%s", se.msg);
        const float bad[2] = {NAN, INFINITY};
        for (int k = 0; k < 2; k++) {
            qkv_st_entry e[64];
            const char *keys[64], *vals[64];
            int nm = 0;
            for (int i = 0; i < f.count && i < 64; i++) {
                const qkv_st_tensor *t = &f.tensors[i];
                e[i] = (qkv_st_entry){t->name, t->data, t->ndim, {0}};
                memcpy(e[i].shape, t->shape, sizeof t->shape);
            }
            for (const cJSON *c = f.metadata->child; c && nm < 64; c = c->next)
                keys[nm] = c->string, vals[nm++] = c->valuestring;
            float *w = f.tensors[f.count - 1].data; /* a weight, by name */
            float keep = w[3];
            w[3] = bad[k];
            CHECK(qkv_st_write(p, e, f.count, keys, vals, nm, &se) == 0, "%s",
                  se.msg);
            w[3] = keep;
            expect_load_refused(p, k ? "holds infinity at index 3"
                                     : "holds NaN at index 3");
        }
        qkv_st_free(&f);
    }
    /* Untouched, the same file loads. */
    rewrite(good, p, (ckpt_edit){0});
    qkv_model m;
    qkv_optim o;
    qkv_pcg32 data;
    qkv_ckpt_rng r = {"data", &data};
    char err[300];
    CHECK(qkv_ckpt_load(p, &m, &o, NULL, &r, 1, NULL, err, sizeof err) == 0,
          "%s", err);
    qkv_optim_free(&o);
    qkv_model_free(&m);
    /* Without an optimiser asked for, its state is still checked. */
    rewrite(good, p, (ckpt_edit){0, 0, 0, "optim.v", 0});
    CHECK(qkv_ckpt_load(p, &m, NULL, NULL, NULL, 0, NULL, err, sizeof err) ==
              -1,
          "bad optimiser state accepted when not restored");
    CHECK(is_zero(&m, sizeof m), "model not zeroed");
    free(cfg);
    free(no_dff);
    free(narrow);
    free(heads3);
    free(vocab10m);
    free(vocab4m);
    free(len10m);
    free(wide);
    free(ocfg);
    free(bad_kind);
}

static void test_load_weights_shape_checks(void) {
    const char *p = test_path("weights.safetensors"),
               *q = test_path("weights-bad.safetensors");
    qkv_model a;
    write_good(p, &a);
    char err[400];
    const struct {
        const char *field;
        int value;
        const char *words;
    } cases[] = {
        {"d_model", 16,
         "the checkpoint's model differs from this one: "
         "d_model is 32 in the file but 16 here"},
        {"heads", 4, "heads is 2 in the file but 4 here"},
        {"n_dec", 2, "n_dec is 1 in the file but 2 here"},
        {"act", QKV_ACT_GELU, "act is relu in the file but gelu here"},
        {"tgt_vocab", 12, "tgt_vocab is 11 in the file but 12 here"},
        {"kind", QKV_MODEL_DECODER,
         "kind is encdec in the file but decoder here"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        qkv_model_config c = a.cfg;
        if (!strcmp(cases[i].field, "d_model")) c.d_model = cases[i].value;
        if (!strcmp(cases[i].field, "heads")) c.heads = cases[i].value;
        if (!strcmp(cases[i].field, "n_dec")) c.n_dec = cases[i].value;
        if (!strcmp(cases[i].field, "act")) c.act = (qkv_act)cases[i].value;
        if (!strcmp(cases[i].field, "tgt_vocab")) c.tgt_vocab = cases[i].value;
        if (!strcmp(cases[i].field, "kind"))
            c.kind = (qkv_model_kind)cases[i].value;
        qkv_model b, fresh;
        test_tiny_model(&b, &c, 5);
        test_tiny_model(&fresh, &c, 5);
        CHECK(qkv_ckpt_load_weights(p, &b, err, sizeof err) == -1,
              "%s accepted", cases[i].field);
        CHECK(strstr(err, cases[i].words) && !strncmp(err, p, strlen(p)),
              "message \"%s\" lacks \"%s\"", err, cases[i].words);
        CHECK(same_params(&b, &fresh), "model changed on refusal");
        qkv_model_free(&b);
        qkv_model_free(&fresh);
    }
    /* Same architecture, other dropout: the weights load. */
    qkv_model_config c = a.cfg;
    c.dropout = 0.3f;
    qkv_model b;
    test_tiny_model(&b, &c, 5);
    CHECK(qkv_ckpt_load_weights(p, &b, err, sizeof err) == 0, "%s", err);
    memcpy(&b.cfg.dropout, &a.cfg.dropout, sizeof b.cfg.dropout);
    CHECK(same_params(&a, &b), "weights differ");
    CHECK(b.cfg.dropout == a.cfg.dropout, "dropout");
    /* Same config but a tensor of another shape: refused, model unchanged. */
    const char *victim = b.params.list[3]->name;
    rewrite(p, q, (ckpt_edit){0, 0, 0, victim, 0});
    qkv_model_free(&a);
    test_tiny_model(&a, &c, 77); /* a: a reference copy of b's weights */
    memcpy(a.params.values, b.params.values, a.params.n * sizeof(float));
    CHECK(qkv_ckpt_load_weights(q, &b, err, sizeof err) == -1,
          "another shape accepted");
    CHECK(strstr(err, "shape mismatch") && strstr(err, victim), "message: %s",
          err);
    CHECK(same_params(&a, &b), "model changed on refusal");
    qkv_model_free(&a);
    qkv_model_free(&b);
}

/* ------------------------------------------------------------ atomic saves */

/* ------------------------------------------ optimiser layout, weights */

/* dst = src with metadata key set to value (NULL: removed); the tensors
 * as they are. */
static void rewrite_meta(const char *src, const char *dst, const char *key,
                         const char *value) {
    qkv_st_file f;
    qkv_st_error se;
    QKV_CHECK(qkv_st_read(src, &f, &se) == 0, "%s", se.msg);
    qkv_st_entry *e = qkv_malloc((size_t)f.count * sizeof *e, "entries");
    for (int i = 0; i < f.count; i++) {
        e[i] = (qkv_st_entry){
            f.tensors[i].name, f.tensors[i].data, f.tensors[i].ndim, {0}};
        memcpy(e[i].shape, f.tensors[i].shape, sizeof e[i].shape);
    }
    const char *k[64], *v[64];
    int n = 0;
    for (const cJSON *c = f.metadata ? f.metadata->child : NULL; c && n < 63;
         c = c->next)
        if (strcmp(c->string, key)) k[n] = c->string, v[n++] = c->valuestring;
    if (value) k[n] = key, v[n++] = value;
    QKV_CHECK(qkv_st_write(dst, e, f.count, k, v, n, &se) == 0, "%s", se.msg);
    free(e);
    qkv_st_free(&f);
}

/* The optimiser's buffers are laid out like the parameter buffer: the
 * checkpoint names that layout ("optim.params", [name, numel] in buffer
 * order) and load refuses state laid out for other parameters; a file from
 * before the key existed still loads. */
static void test_optimiser_layout(void) {
    qkv_model_config mc = test_tiny_config(QKV_MODEL_ENCDEC, 11);
    qkv_optim_config oc = qkv_optim_defaults(QKV_OPTIM_ADAM);
    const char *p = test_path("layout.safetensors"),
               *q = test_path("layout2.safetensors");
    char err[400];
    qkv_model a, b;
    qkv_optim oa, ob;
    test_tiny_model(&a, &mc, 1);
    qkv_optim_init(&oa, &oc, &a.params);
    fake_steps(&a, &oa, 2);
    CHECK(qkv_ckpt_save(p, &a, &oa, 2, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == 0,
          "save: %s", err);
    qkv_st_file f;
    qkv_st_error se;
    CHECK(qkv_st_read(p, &f, &se) == 0, "read: %s", se.msg);
    cJSON *j = cJSON_Parse(qkv_st_meta(&f, "optim.params"));
    CHECK(cJSON_GetArraySize(j) == a.params.count, "optim.params: %d entries",
          cJSON_GetArraySize(j));
    size_t off = 0;
    for (int i = 0; i < a.params.count && i < cJSON_GetArraySize(j); i++) {
        const qkv_tensor *t = a.params.list[i];
        const cJSON *e = cJSON_GetArrayItem(j, i);
        CHECK(!strcmp(cJSON_GetArrayItem(e, 0)->valuestring, t->name) &&
                  cJSON_GetArrayItem(e, 1)->valuedouble == (double)t->n &&
                  t->data == a.params.values + off,
              "optim.params[%d] is not %s of %zu at offset %zu", i, t->name,
              t->n, off);
        off += t->n;
    }
    /* the same layout with two entries swapped: refused, one line */
    cJSON *sw = cJSON_CreateArray(); /* entries 1, 0, 2, 3, ... */
    for (int i = 0; i < cJSON_GetArraySize(j); i++)
        cJSON_AddItemToArray(
            sw, cJSON_Duplicate(cJSON_GetArrayItem(j, i < 2 ? 1 - i : i), 1));
    char *swapped = cJSON_PrintUnformatted(sw);
    cJSON_Delete(sw);
    rewrite_meta(p, q, "optim.params", swapped);
    int rc = qkv_ckpt_load(q, &b, &ob, NULL, NULL, 0, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "optim.params") &&
              strstr(err, a.params.list[1]->name) && !strchr(err, '\n'),
          "swapped layout: rc %d, %s", rc, err);
    CHECK(b.params.values == NULL && ob.m == NULL, "refusal left a model");
    rewrite_meta(p, q, "optim.params", "[[\"x\", 3]]");
    rc = qkv_ckpt_load(q, &b, &ob, NULL, NULL, 0, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "optim.params"), "short layout: %s", err);
    rewrite_meta(p, q, "optim.params", "{}");
    rc = qkv_ckpt_load(q, &b, &ob, NULL, NULL, 0, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "not a JSON array"), "not an array: %s", err);
    /* a checkpoint from before the key: loads, state intact */
    rewrite_meta(p, q, "optim.params", NULL);
    rc = qkv_ckpt_load(q, &b, &ob, NULL, NULL, 0, NULL, err, sizeof err);
    CHECK(rc == 0, "old checkpoint refused: %s", err);
    if (rc == 0) {
        CHECK(same_params(&a, &b) &&
                  memcmp(oa.m, ob.m, oa.n * sizeof *oa.m) == 0 &&
                  memcmp(oa.v, ob.v, oa.n * sizeof *oa.v) == 0,
              "old checkpoint: state differs");
        qkv_optim_free(&ob);
        qkv_model_free(&b);
    }
    /* the key is the checkpoint's own */
    const char *k = "optim.params", *v = "[]";
    CHECK(qkv_ckpt_save(q, &a, &oa, 2, NULL, 0, &k, &v, 1, err, sizeof err) ==
                  -1 &&
              strstr(err, "reserved"),
          "extra key optim.params accepted: %s", err);
    free(swapped);
    cJSON_Delete(j);
    qkv_st_free(&f);
    qkv_optim_free(&oa);
    qkv_model_free(&a);
}

/* Weights-only files: qkv_weights_save writes the parameters and config
 * only; qkv_weights_load reads them, a checkpoint, or a file with no
 * metadata plus a config JSON, bit for bit; bad configs and tensors are
 * refused with one line. */
static void test_weights_only(void) {
    qkv_model_config mc = test_tiny_config(QKV_MODEL_DECODER, 13);
    mc.norm = QKV_NORM_PRE, mc.pos = QKV_POS_LEARNED;
    qkv_model a, b;
    test_tiny_model(&a, &mc, 3);
    char err[400];
    const char *w = test_path("w.safetensors"), *bare = test_path("bare.st");
    const char *k = "data", *v = "{\"task\": \"copy\"}";
    CHECK(qkv_weights_save(w, &a, &k, &v, 1, err, sizeof err) == 0, "save: %s",
          err);
    qkv_st_file f, meta;
    qkv_st_error se;
    CHECK(qkv_st_read(w, &f, &se) == 0, "read: %s", se.msg);
    CHECK(f.count == a.params.count && !qkv_st_find(&f, "optim.m") &&
              !qkv_st_meta(&f, "rng.model") && !qkv_st_meta(&f, "step") &&
              !strcmp(qkv_st_meta(&f, "format"), QKV_WEIGHTS_FORMAT) &&
              !strcmp(qkv_st_meta(&f, "data"), v),
          "weights file holds more or less than weights, config and data");
    qkv_st_free(&f);
    CHECK(qkv_weights_load(w, NULL, &b, &meta, err, sizeof err) == 0,
          "load: %s", err);
    CHECK(same_params(&a, &b) &&
              !qkv_model_config_diff(&a.cfg, &b.cfg, 1, err, sizeof err),
          "weights file: model differs");
    CHECK(qkv_st_meta(&meta, "data") && !strcmp(qkv_st_meta(&meta, "data"), v),
          "meta_out lacks data");
    qkv_st_free(&meta);
    qkv_model_free(&b);
    /* a checkpoint reads the same way */
    const char *ck = test_path("ck.safetensors");
    CHECK(qkv_ckpt_save(ck, &a, NULL, 5, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == 0 &&
              qkv_weights_load(ck, NULL, &b, NULL, err, sizeof err) == 0 &&
              same_params(&a, &b),
          "checkpoint through weights_load: %s", err);
    qkv_model_free(&b);
    /* no metadata (as PyTorch's save_file) + a config JSON */
    CHECK(qkv_st_write_params(bare, &a.params, NULL, NULL, 0, &se) == 0, "%s",
          se.msg);
    char *model = qkv_model_config_to_json(&a.cfg), text[4096];
    snprintf(text, sizeof text, "{\"model\": %s, \"data\": {\"x\": [1, 2]}}",
             model);
    const char *cj = test_path("config.json");
    write_bytes(cj, text, strlen(text));
    CHECK(qkv_weights_load(bare, cj, &b, &meta, err, sizeof err) == 0,
          "bare + config: %s", err);
    CHECK(same_params(&a, &b), "bare + config: weights differ");
    CHECK(qkv_st_meta(&meta, "data") &&
              !strcmp(qkv_st_meta(&meta, "data"), "{\"x\":[1,2]}"),
          "config's data: %s", qkv_st_meta(&meta, "data"));
    qkv_st_free(&meta);
    qkv_model_free(&b);
    int rc = qkv_weights_load(bare, NULL, &b, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "bare.st") && strstr(err, "--config"),
          "bare without a config: %s", err);
    /* bad configs: each refused with one line naming the file and fault */
    static const struct {
        const char *json, *want;
    } bad[] = {
        {"{\"model\": ", "not a JSON object"},
        {"[1, 2]", "not a JSON object"},
        {"{\"data\": {}}", "no \"model\""},
        {"{\"model\": {\"kind\": \"decoder\"}}", "\"model\":"},
        {NULL, "shape mismatch"}, /* d_model 34: the tensors' shapes differ */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (bad[i].json)
            snprintf(text, sizeof text, "%s", bad[i].json);
        else {
            char *edited = qkv_strdup(model, "config");
            char *d = strstr(edited, "\"d_model\":") + 10;
            d[0] = '3', d[1] = '4'; /* 32 -> 34: heads 2 still divide it */
            snprintf(text, sizeof text, "{\"model\": %s}", edited);
            free(edited);
        }
        write_bytes(cj, text, strlen(text));
        rc = qkv_weights_load(bare, cj, &b, NULL, err, sizeof err);
        CHECK(rc == -1 && strstr(err, bad[i].want) && !strchr(err, '\n') &&
                  b.params.values == NULL,
              "bad config %zu: rc %d, %s", i, rc, err);
    }
    /* tensors: one missing, one extra, one of another shape */
    snprintf(text, sizeof text, "{\"model\": %s}", model);
    write_bytes(cj, text, strlen(text));
    qkv_st_entry e[64];
    int n = a.params.count < 63 ? a.params.count : 63;
    for (int i = 0; i < n; i++) {
        const qkv_tensor *t = a.params.list[i];
        e[i] = (qkv_st_entry){t->name, t->data, t->ndim, {0}};
        memcpy(e[i].shape, t->shape, sizeof e[i].shape);
    }
    const char *shape_name = e[1].name;
    const struct {
        int drop, extra, reshape;
        const char *want;
    } cases[] = {
        {1, 0, 0, e[0].name}, {0, 1, 0, "surplus"}, {0, 0, 1, shape_name}};
    for (int c = 0; c < 3; c++) {
        qkv_st_entry g[64];
        memcpy(g, e, sizeof g);
        int m = n;
        if (cases[c].drop) g[0] = g[--m];
        if (cases[c].extra)
            g[m++] = (qkv_st_entry){"surplus", a.params.values, 1, {2}};
        if (cases[c].reshape) g[1].shape[0] -= 1; /* fewer rows, same data */
        QKV_CHECK(qkv_st_write(bare, g, m, NULL, NULL, 0, &se) == 0, "%s",
                  se.msg);
        rc = qkv_weights_load(bare, cj, &b, NULL, err, sizeof err);
        CHECK(rc == -1 && strstr(err, cases[c].want) && !strchr(err, '\n') &&
                  b.params.values == NULL,
              "tensor case %d: rc %d, %s", c, rc, err);
    }
    free(model);
    qkv_model_free(&a);
}

static void test_atomic_save(void) {
    const char *p = test_path("atomic.safetensors");
    char err[400];
    qkv_model a, b;
    qkv_model_config c = test_tiny_config(QKV_MODEL_ENCDEC, 11);
    test_tiny_model(&a, &c, 1);
    test_tiny_model(&b, &c, 2);
    CHECK(qkv_ckpt_save(p, &a, NULL, 1, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == 0,
          "%s", err);
    size_t len;
    unsigned char *before = read_bytes(p, &len);

    /* The temporary file cannot be created (its name is taken). */
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    CHECK(mkdir(tmp, 0700) == 0, "mkdir %s", tmp);
    CHECK(qkv_ckpt_save(p, &b, NULL, 2, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == -1,
          "save succeeded");
    CHECK(strncmp(err, p, strlen(p)) == 0 &&
              strstr(err, "cannot create the temporary file"),
          "message: %s", err);
    CHECK(same_file(p, before, len), "old checkpoint changed");
    rmdir(tmp);

    /* A read-only directory (root ignores permissions: then skipped). */
    const char *ro = test_path("ro");
    CHECK(mkdir(ro, 0700) == 0, "mkdir");
    char rop[400];
    snprintf(rop, sizeof rop, "%s/ckpt.safetensors", ro);
    CHECK(qkv_ckpt_save(rop, &a, NULL, 1, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == 0,
          "%s", err);
    if (geteuid() != 0) {
        chmod(ro, 0555);
        CHECK(qkv_ckpt_save(rop, &b, NULL, 2, NULL, 0, NULL, NULL, 0, err,
                            sizeof err) == -1,
              "saved into a read-only directory");
        CHECK(strstr(err, "Permission denied"), "message: %s", err);
        CHECK(same_file(rop, before, len), "old checkpoint changed");
        chmod(ro, 0700);
    } else {
        printf("  (running as root: the read-only directory case is "
               "skipped)\n");
    }
    unlink(rop);
    rmdir(ro);

    /* A missing directory: fails, creates nothing. */
    const char *missing = test_path("no-such-dir/ckpt.safetensors");
    CHECK(qkv_ckpt_save(missing, &b, NULL, 2, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == -1,
          "saved into a missing directory");
    CHECK(strncmp(err, missing, strlen(missing)) == 0 &&
              strstr(err, "No such file or directory"),
          "message: %s", err);
    struct stat st;
    CHECK(stat(test_path("no-such-dir"), &st) != 0, "directory created");

    /* Refused arguments write nothing. */
    const char *rk[1] = {"step"}, *rv[1] = {"5"};
    CHECK(qkv_ckpt_save(p, &b, NULL, 2, NULL, 0, rk, rv, 1, err, sizeof err) ==
                  -1 &&
              strstr(err, "metadata key 'step' is reserved"),
          "reserved key: %s", err);
    rk[0] = "rng.data";
    CHECK(qkv_ckpt_save(p, &b, NULL, 2, NULL, 0, rk, rv, 1, err, sizeof err) ==
              -1,
          "reserved rng. key accepted");
    qkv_pcg32 r = {1, 3};
    qkv_ckpt_rng named_model = {"model", &r};
    CHECK(qkv_ckpt_save(p, &b, NULL, 2, &named_model, 1, NULL, NULL, 0, err,
                        sizeof err) == -1 &&
              strstr(err, "'model'"),
          "rng named model: %s", err);
    CHECK(qkv_ckpt_save(p, &b, NULL, -1, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == -1 &&
              strstr(err, "step -1 is negative"),
          "negative step: %s", err);
    rk[0] = "note", rv[0] = "bad \xff utf-8";
    CHECK(qkv_ckpt_save(p, &b, NULL, 2, NULL, 0, rk, rv, 1, err, sizeof err) ==
                  -1 &&
              strstr(err, "not valid UTF-8"),
          "bad UTF-8: %s", err);
    CHECK(same_file(p, before, len), "old checkpoint changed");
    CHECK(test_dir_count(".tmp.") == 0, "temporary files left behind");

    /* A good save replaces it whole. */
    CHECK(qkv_ckpt_save(p, &b, NULL, 2, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == 0,
          "%s", err);
    CHECK(!same_file(p, before, len), "not replaced");
    qkv_model back;
    CHECK(qkv_ckpt_load(p, &back, NULL, NULL, NULL, 0, NULL, err, sizeof err) ==
              0,
          "%s", err);
    CHECK(same_params(&back, &b), "new checkpoint differs");
    CHECK(test_dir_count(".tmp.") == 0, "temporary files left behind");
    qkv_model_free(&back);
    free(before);
    qkv_model_free(&a);
    qkv_model_free(&b);
}

/* Save and load of the default (paper-shaped, scaled down) model with Adam. */
static void test_timing(void) {
    if (QUICK) return;
    qkv_model_config c = qkv_model_defaults(QKV_MODEL_ENCDEC);
    c.src_vocab = c.tgt_vocab = 8000;
    qkv_model m, back;
    test_tiny_model(&m, &c, 1);
    qkv_optim o, ob;
    qkv_optim_config oc = qkv_optim_defaults(QKV_OPTIM_ADAM);
    qkv_optim_init(&o, &oc, &m.params);
    const char *p = test_path("timing.safetensors");
    char err[300];
    double t0 = qkv_seconds();
    CHECK(qkv_ckpt_save(p, &m, &o, 1, NULL, 0, NULL, NULL, 0, err,
                        sizeof err) == 0,
          "%s", err);
    double t1 = qkv_seconds();
    CHECK(qkv_ckpt_load(p, &back, &ob, NULL, NULL, 0, NULL, err, sizeof err) ==
              0,
          "%s", err);
    double t2 = qkv_seconds();
    size_t bytes;
    free(read_bytes(p, &bytes));
    printf("  default model, V 8000: %zu parameters, checkpoint %.1f MB, "
           "save %.0f ms (with fsync), load %.0f ms\n",
           m.params.n, (double)bytes / 1e6, 1e3 * (t1 - t0), 1e3 * (t2 - t1));
    CHECK(same_params(&m, &back), "weights differ");
    unlink(p);
    qkv_optim_free(&o);
    qkv_optim_free(&ob);
    qkv_model_free(&m);
    qkv_model_free(&back);
}

static void test_cleanup(void) {
    CHECK(test_dir_remove() == 0, "cannot remove %s", test_dir);
}

int main(void) {
    test_prog = "checkpoint";
    test_dir_make("ckpt");
    RUN(test_config_json_round_trip);
    RUN(test_config_json_refusals);
    RUN(test_save_load_model);
    RUN(test_optimiser_state);
    RUN(test_resume_equals_uninterrupted);
    RUN(test_resume_corpus_equals_uninterrupted);
    RUN(test_refuse_truncated);
    RUN(test_refuse_foreign_and_garbage);
    RUN(test_refuse_bad_contents);
    RUN(test_load_weights_shape_checks);
    RUN(test_optimiser_layout);
    RUN(test_weights_only);
    RUN(test_atomic_save);
    RUN(test_timing);
    RUN(test_cleanup);
    return test_summary();
}
