#include "checkpoint.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "path: message" (or just the message when path is NULL) on one line:
 * control bytes from a hostile path or value are shown as '?'. Returns -1. */
static int fail(char *err, size_t len, const char *path, const char *fmt, ...)
    QKV_PRINTF(4, 5);
static int fail(char *err, size_t len, const char *path, const char *fmt, ...) {
    if (!err || !len) return -1;
    int k = path ? snprintf(err, len, "%s: ", path) : 0;
    if (k < 0 || (size_t)k >= len) k = (int)len - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + k, len - (size_t)k, fmt, ap);
    va_end(ap);
    for (char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    return -1;
}

/* ======================================================== integers, RNGs */

/* Strict unsigned decimal: digits only, no sign or spaces, no overflow (never
 * through a double, which is exact only to 2^53). */
static int parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!s || !*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* A generator as JSON: two u64s, as decimal strings. */
typedef struct rng_text {
    const char *state, *inc;
} rng_text;
static const qkv_field rng_fields[] = {
    {"state", NULL, QKV_FIELD_STR, offsetof(rng_text, state), 0, 0, NULL, NULL},
    {"inc", NULL, QKV_FIELD_STR, offsetof(rng_text, inc), 0, 0, NULL, NULL},
};

/* {"state": "<u64>", "inc": "<u64>"}, malloc'd. */
static char *rng_to_json(const qkv_pcg32 *r) {
    char s[24], i[24];
    snprintf(s, sizeof s, "%" PRIu64, r->state);
    snprintf(i, sizeof i, "%" PRIu64, r->inc);
    rng_text t = {s, i};
    return qkv_config_to_json(rng_fields, 2, &t);
}

static int rng_from_json(const char *json, qkv_pcg32 *r, char *err,
                         size_t len) {
    const char *end = NULL;
    cJSON *o = json ? cJSON_ParseWithOpts(json, &end, 1) : NULL;
    if (!o) return fail(err, len, NULL, "not valid JSON");
    rng_text t = {NULL, NULL};
    int rc = qkv_config_from_cjson(rng_fields, 2, &t, o, 1, err, len);
    qkv_pcg32 v;
    for (int i = 0; i < 2 && !rc; i++)
        if (parse_u64(i ? t.inc : t.state, i ? &v.inc : &v.state))
            rc = fail(err, len, NULL,
                      "field '%s' is not a decimal string of a 64-bit "
                      "unsigned integer",
                      rng_fields[i].key);
    if (!rc && !(v.inc & 1))
        rc = fail(err, len, NULL, "field 'inc' is even (PCG32 needs it odd)");
    cJSON_Delete(o);
    if (!rc) *r = v;
    return rc;
}
/* ============================================================== saving */

static int reserved_key(const char *k) {
    static const char *const keys[] = {"format",     "model", "optim",
                                       "optim_step", "step",  "optim.params"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!strcmp(k, keys[i])) return 1;
    return !strncmp(k, "rng.", 4);
}

/* The user-input checks of qkv_ckpt_save: a path, a step >= 0, named RNGs,
 * no reserved metadata key, an optimiser that fits one tensor. */
static int check_save_args(const char *path, const qkv_model *m,
                           const qkv_optim *opt, int64_t step,
                           const qkv_ckpt_rng *rngs, int n_rngs,
                           const char *const *keys, int n_extra, char *err,
                           size_t errlen) {
    if (!path || !*path)
        return fail(err, errlen, "(no path)", "save: empty file name");
    if (step < 0)
        return fail(err, errlen, path, "save: step %" PRId64 " is negative",
                    step);
    for (int i = 0; i < n_rngs; i++)
        if (!rngs[i].name || !*rngs[i].name || !rngs[i].rng ||
            !strcmp(rngs[i].name, "model"))
            return fail(err, errlen, path,
                        "save: RNG %d has no name or state, or is named "
                        "'model' (taken by the model's dropout RNG)",
                        i);
    for (int i = 0; i < n_extra; i++)
        if (keys[i] && reserved_key(keys[i]))
            return fail(err, errlen, path,
                        "save: metadata key '%.60s' is reserved for the "
                        "checkpoint itself",
                        keys[i]);
    if (opt && m->params.n > INT_MAX)
        return fail(err, errlen, path,
                    "save: %zu parameters are too many for one optimiser "
                    "tensor",
                    m->params.n);
    return 0;
}

/* A checkpoint's metadata pairs, with the strings made for them. */
typedef struct save_meta {
    const char **keys, **values; /* (n) */
    char **own;                  /* (nown) malloc'd keys and values */
    int n, nown;
} save_meta;

/* The layout of the optimiser's flat buffers: [[name, numel], ...] of the
 * parameters in buffer order (registration order, which qkv_params_alloc
 * lays out back to back). malloc'd. */
static char *optim_params_json(const qkv_params *ps) {
    cJSON *a = cJSON_CreateArray();
    size_t off = 0;
    for (int i = 0; i < ps->count; i++) {
        const qkv_tensor *t = ps->list[i];
        QKV_CHECK(!ps->values || t->data == ps->values + off,
                  "ckpt_save: parameter %s is not at offset %zu", t->name, off);
        cJSON *e = cJSON_CreateArray();
        cJSON_AddItemToArray(e, cJSON_CreateString(t->name));
        cJSON_AddItemToArray(e, cJSON_CreateNumber((double)t->n));
        cJSON_AddItemToArray(a, e);
        off += t->n;
    }
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    QKV_CHECK(s, "out of memory writing the optimiser's layout");
    return s;
}

/* Fills sm: 4 fixed pairs (format, model, step, rng.model), 3 for the
 * optimiser, one per RNG, then the n_extra pairs as given. */
static void save_meta_build(save_meta *sm, const qkv_model *m,
                            const qkv_optim *opt, int64_t step,
                            const qkv_ckpt_rng *rngs, int n_rngs,
                            const char *const *keys, const char *const *values,
                            int n_extra) {
    int nmeta = 4 + (opt ? 3 : 0) + n_rngs + n_extra, k = 0, nown = 0;
    const char **mk = qkv_malloc((size_t)nmeta * sizeof *mk, "metadata keys");
    const char **mv = qkv_malloc((size_t)nmeta * sizeof *mv, "metadata values");
    char **own = qkv_malloc((size_t)nmeta * 2 * sizeof *own, "metadata text");
    char buf[24];
    mk[k] = "format", mv[k++] = QKV_CKPT_FORMAT;
    mk[k] = "model", mv[k++] = own[nown++] = qkv_model_config_to_json(&m->cfg);
    snprintf(buf, sizeof buf, "%" PRId64, step);
    mk[k] = "step", mv[k++] = own[nown++] = qkv_strdup(buf, "checkpoint");
    mk[k] = "rng.model", mv[k++] = own[nown++] = rng_to_json(&m->rng);
    if (opt) {
        mk[k] = "optim";
        mv[k++] = own[nown++] = qkv_optim_config_to_json(&opt->cfg);
        snprintf(buf, sizeof buf, "%" PRId64, opt->step);
        mk[k] = "optim_step",
        mv[k++] = own[nown++] = qkv_strdup(buf, "checkpoint");
        mk[k] = "optim.params";
        mv[k++] = own[nown++] = optim_params_json(&m->params);
    }
    for (int i = 0; i < n_rngs; i++) {
        size_t n = strlen(rngs[i].name) + 5;
        char *key = own[nown++] = qkv_malloc(n, "metadata key");
        snprintf(key, n, "rng.%s", rngs[i].name);
        mk[k] = key, mv[k++] = own[nown++] = rng_to_json(rngs[i].rng);
    }
    for (int i = 0; i < n_extra; i++) mk[k] = keys[i], mv[k++] = values[i];
    *sm = (save_meta){mk, mv, own, nmeta, nown};
}

static void save_meta_free(save_meta *sm) {
    for (int i = 0; i < sm->nown; i++) free(sm->own[i]);
    free(sm->own);
    free(sm->keys);
    free(sm->values);
}

/* e (room for the parameters and 2) = the tensors to save: the parameters
 * in registration order, then optim.m and optim.v if opt has them; returns
 * how many. */
static int save_entries(const qkv_model *m, const qkv_optim *opt,
                        qkv_st_entry *e) {
    const qkv_params *ps = &m->params;
    int ne = 0;
    for (int i = 0; i < ps->count; i++) {
        const qkv_tensor *t = ps->list[i];
        e[ne] =
            (qkv_st_entry){.name = t->name, .data = t->data, .ndim = t->ndim};
        memcpy(e[ne++].shape, t->shape, sizeof e[0].shape);
    }
    if (opt && opt->m)
        e[ne++] = (qkv_st_entry){"optim.m", opt->m, 1, {(int)opt->n}};
    if (opt && opt->v)
        e[ne++] = (qkv_st_entry){"optim.v", opt->v, 1, {(int)opt->n}};
    return ne;
}

int qkv_ckpt_save(const char *path, const qkv_model *m, const qkv_optim *opt,
                  int64_t step, const qkv_ckpt_rng *rngs, int n_rngs,
                  const char *const *keys, const char *const *values,
                  int n_extra, char *err, size_t errlen) {
    QKV_CHECK(m && m->params.values, "ckpt_save: model not initialised");
    QKV_CHECK(!opt || opt->n == m->params.n,
              "ckpt_save: optimiser of %zu floats for %zu parameters",
              opt ? opt->n : 0, m->params.n);
    QKV_CHECK(n_rngs >= 0 && n_extra >= 0 && (!n_rngs || rngs) &&
                  (!n_extra || (keys && values)),
              "ckpt_save: bad counts or NULL arrays");
    if (check_save_args(path, m, opt, step, rngs, n_rngs, keys, n_extra, err,
                        errlen))
        return -1;
    save_meta sm;
    save_meta_build(&sm, m, opt, step, rngs, n_rngs, keys, values, n_extra);
    qkv_st_entry *e = qkv_malloc((size_t)(m->params.count + 2) * sizeof *e,
                                 "checkpoint entries");
    int ne = save_entries(m, opt, e);
    qkv_st_error se;
    int rc = qkv_st_write(path, e, ne, sm.keys, sm.values, sm.n, &se);
    if (rc) fail(err, errlen, NULL, "%s", se.msg);
    save_meta_free(&sm);
    free(e);
    return rc;
}

/* ============================================================== loading */

static int is_optim_tensor(const char *name) {
    return !strcmp(name, "optim.m") || !strcmp(name, "optim.v");
}

/* Metadata value by key; a missing one is an error naming it. */
static int meta(const qkv_st_file *f, const char *key, const char **out,
                const char *path, char *err, size_t len) {
    *out = qkv_st_meta(f, key);
    if (*out) return 0;
    return fail(err, len, path,
                "no \"%s\" in the metadata (incomplete qkv "
                "checkpoint)",
                key);
}

static int meta_count(const qkv_st_file *f, const char *key, int64_t *out,
                      const char *path, char *err, size_t len) {
    const char *s;
    uint64_t v;
    if (meta(f, key, &s, path, err, len)) return -1;
    if (parse_u64(s, &v) || v > INT64_MAX)
        return fail(err, len, path,
                    "metadata \"%s\" = '%.40s' is not a non-negative decimal "
                    "64-bit integer",
                    key, s);
    *out = (int64_t)v;
    return 0;
}

static int meta_rng(const qkv_st_file *f, const char *name, qkv_pcg32 *r,
                    const char *path, char *err, size_t len) {
    char key[160], why[200];
    const char *s;
    snprintf(key, sizeof key, "rng.%.150s", name);
    if (meta(f, key, &s, path, err, len)) return -1;
    if (rng_from_json(s, r, why, sizeof why))
        return fail(err, len, path, "metadata \"%s\": %s", key, why);
    return 0;
}

/* Reads path, checks it is a qkv checkpoint and parses its model config. On
 * failure *f is left empty. */
static int open_ckpt(const char *path, qkv_st_file *f, qkv_model_config *mc,
                     char *err, size_t len) {
    qkv_st_error se;
    if (!path) path = "(null)";
    if (qkv_st_read(path, f, &se)) return fail(err, len, NULL, "%s", se.msg);
    const char *fmt = qkv_st_meta(f, "format"), *model;
    char why[200];
    int rc = 0;
    if (!fmt)
        rc = fail(err, len, path,
                  "not a qkv checkpoint (no \"format\" key in the metadata; "
                  "written by another program?)");
    else if (strcmp(fmt, QKV_CKPT_FORMAT))
        rc = fail(err, len, path,
                  "not a qkv checkpoint this version reads (format "
                  "'%.40s', expected '" QKV_CKPT_FORMAT "')",
                  fmt);
    else if (!(rc = meta(f, "model", &model, path, err, len)) &&
             qkv_model_config_from_json(model, mc, why, sizeof why))
        rc = fail(err, len, path, "metadata \"model\": %s", why);
    if (rc) qkv_st_free(f);
    return rc;
}

/* ps values = f's tensors of the same names (only the check when copy is
 * 0: ps need not be allocated then); f's optimiser tensors are not
 * parameters and are skipped. On refusal ps is unchanged. */
static int load_tensors(const qkv_st_file *f, qkv_params *ps, int copy,
                        const char *path, char *err, size_t len) {
    qkv_st_file view = {0};
    view.tensors =
        qkv_malloc((size_t)(f->count ? f->count : 1) * sizeof *view.tensors,
                   "tensor list");
    for (int i = 0; i < f->count; i++) /* shallow copies, still sorted */
        if (!is_optim_tensor(f->tensors[i].name))
            view.tensors[view.count++] = f->tensors[i];
    qkv_st_error se;
    int rc = copy ? qkv_st_load_params(&view, ps, path, &se)
                  : qkv_st_check_params(&view, ps, path, &se);
    free(view.tensors);
    return rc ? fail(err, len, NULL, "%s", se.msg) : 0;
}

/* Every weight of f is finite: a NaN or an infinity is the trace of a run
 * that diverged, not a model to use or continue. (Adam's v may hold an
 * infinity, from a squared gradient beyond FLT_MAX: that weight's updates
 * are then 0, not NaN.) */
static int check_finite(const qkv_st_file *f, const char *path, char *err,
                        size_t len) {
    for (int i = 0; i < f->count; i++) {
        const qkv_st_tensor *t = &f->tensors[i];
        if (is_optim_tensor(t->name)) continue;
        for (size_t k = 0; k < t->n; k++)
            if (!isfinite(t->data[k]))
                return fail(err, len, path,
                            "tensor '%.100s' holds %s at index %zu: the run "
                            "diverged (use a checkpoint from before)",
                            t->name, isnan(t->data[k]) ? "NaN" : "infinity", k);
    }
    return 0;
}

/* The optimiser tensor `name` must be present, of n floats, exactly when
 * want is true. */
static int check_optim_tensor(const qkv_st_file *f, const char *name, int want,
                              size_t n, const char *path, char *err,
                              size_t len) {
    const qkv_st_tensor *t = qkv_st_find(f, name);
    if (!want && t)
        return fail(err, len, path,
                    "tensor '%s' present but the stored optimiser has no such "
                    "state",
                    name);
    if (want && !t)
        return fail(err, len, path,
                    "tensor '%s' missing: the stored optimiser needs it", name);
    if (want && (t->ndim != 1 || t->n != n))
        return fail(err, len, path,
                    "tensor '%s' has %zu values in %d dimension(s); the "
                    "model's %zu parameters need a flat (%zu)",
                    name, t->n, t->ndim, n, n);
    return 0;
}

/* The stored optimiser layout ("optim.params", absent in checkpoints from
 * before it was written) must be the model's parameters in buffer order:
 * otherwise m and v would be applied to the wrong weights. */
static int check_optim_params(const qkv_st_file *f, const qkv_params *ps,
                              const char *path, char *err, size_t len) {
    const char *s = qkv_st_meta(f, "optim.params");
    if (!s) return 0;
    cJSON *a = cJSON_Parse(s);
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1, rc = 0;
    if (n < 0)
        rc = fail(err, len, path,
                  "metadata \"optim.params\" is not a JSON array of "
                  "[name, size] pairs");
    for (int i = 0; i < n && !rc; i++) {
        const cJSON *e = cJSON_GetArrayItem(a, i);
        const cJSON *name = cJSON_GetArrayItem(e, 0),
                    *k = cJSON_GetArrayItem(e, 1);
        const qkv_tensor *t = i < ps->count ? ps->list[i] : NULL;
        if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2 ||
            !cJSON_IsString(name) || !cJSON_IsNumber(k))
            rc = fail(err, len, path,
                      "metadata \"optim.params\": entry %d is not a [name, "
                      "size] pair",
                      i);
        else if (!t || strcmp(t->name, name->valuestring) ||
                 k->valuedouble != (double)t->n)
            rc =
                fail(err, len, path,
                     "metadata \"optim.params\": the optimiser state is laid "
                     "out for parameter %d '%.80s' of %.0f floats, the model's "
                     "is %s%.80s%s of %zu: refusing to apply it to the wrong "
                     "weights",
                     i, name->valuestring, k->valuedouble, t ? "'" : "",
                     t ? t->name : "(none)", t ? "'" : "", t ? t->n : 0);
    }
    if (!rc && n != ps->count)
        rc = fail(err, len, path,
                  "metadata \"optim.params\" lists %d parameters, the model "
                  "has %d",
                  n, ps->count);
    cJSON_Delete(a);
    return rc;
}

/* What qkv_ckpt_load reads from the metadata besides the model config. */
typedef struct ckpt_state {
    int64_t step, optim_step;
    qkv_pcg32 model_rng;
    qkv_pcg32 *rngs;        /* (n_rngs) the states of the caller's RNGs */
    const char *optim_json; /* the stored optimiser config, or NULL */
    qkv_optim_config optim; /* parsed from optim_json */
    int want_m, want_v;     /* which buffers qkv_optim_init allocates for it */
} ckpt_state;

/* Fills cs (whose optim_json the caller set) from f's metadata: the step,
 * the model's RNG, the n_rngs RNGs and, when the file has an optimiser, its
 * config and step; each checked. */
static int read_state(const qkv_st_file *f, const qkv_ckpt_rng *rngs,
                      int n_rngs, ckpt_state *cs, const char *path, char *err,
                      size_t errlen) {
    char why[300];
    if (meta_count(f, "step", &cs->step, path, err, errlen) ||
        meta_rng(f, "model", &cs->model_rng, path, err, errlen))
        return -1;
    for (int i = 0; i < n_rngs; i++) {
        QKV_CHECK(rngs[i].name && rngs[i].rng, "ckpt_load: RNG %d is NULL", i);
        if (meta_rng(f, rngs[i].name, &cs->rngs[i], path, err, errlen))
            return -1;
    }
    if (cs->optim_json) {
        if (qkv_optim_config_from_json(cs->optim_json, &cs->optim, why,
                                       sizeof why))
            return fail(err, errlen, path, "metadata \"optim\": %s", why);
        if (meta_count(f, "optim_step", &cs->optim_step, path, err, errlen))
            return -1;
    }
    cs->want_m = cs->optim_json &&
                 (cs->optim.kind != QKV_OPTIM_SGD || cs->optim.momentum > 0);
    cs->want_v = cs->optim_json && cs->optim.kind != QKV_OPTIM_SGD;
    return 0;
}

/* Declares *lm from mc and checks f against it: the tensors match its
 * parameters, the optimiser tensors are the ones cs needs, every weight is
 * finite. *built = 1 once lm is declared (to be freed). The config is
 * checked against the file's tensors before the model's memory is
 * allocated: a small file cannot ask for gigabytes. */
static int check_model(const qkv_st_file *f, const qkv_model_config *mc,
                       const ckpt_state *cs, qkv_model *lm, int *built,
                       const char *path, char *err, size_t errlen) {
    char why[300];
    if (qkv_model_declare(lm, mc, why, sizeof why))
        return fail(err, errlen, path, "metadata \"model\": %s", why);
    *built = 1;
    if (load_tensors(f, &lm->params, 0, path, err, errlen) ||
        check_optim_tensor(f, "optim.m", cs->want_m, lm->params.n, path, err,
                           errlen) ||
        check_optim_tensor(f, "optim.v", cs->want_v, lm->params.n, path, err,
                           errlen) ||
        (cs->optim_json &&
         check_optim_params(f, &lm->params, path, err, errlen)) ||
        check_finite(f, path, err, errlen))
        return -1;
    return 0;
}

/* Everything is valid: allocates lm, loads f's weights into it, and fills
 * the caller's model, optimiser (if opt), RNGs, step (if step) and metadata
 * (if meta_out; f's tensors are freed then). */
static void fill_outputs(qkv_st_file *f, qkv_model *lm, const ckpt_state *cs,
                         qkv_model *m, qkv_optim *opt, int64_t *step,
                         const qkv_ckpt_rng *rngs, int n_rngs,
                         qkv_st_file *meta_out, const char *path, char *err,
                         size_t errlen) {
    qkv_model_alloc(lm, 0);
    load_tensors(f, &lm->params, 1, path, err, errlen); /* checked before */
    if (opt && cs->optim_json) {
        qkv_optim lo = {0};
        qkv_optim_init(&lo, &cs->optim, &lm->params);
        if (cs->want_m)
            memcpy(lo.m, qkv_st_find(f, "optim.m")->data, lo.n * sizeof *lo.m);
        if (cs->want_v)
            memcpy(lo.v, qkv_st_find(f, "optim.v")->data, lo.n * sizeof *lo.v);
        lo.step = cs->optim_step;
        *opt = lo;
    }
    lm->rng = cs->model_rng; /* after qkv_model_init, which seeds it */
    *m = *lm;
    for (int i = 0; i < n_rngs; i++) *rngs[i].rng = cs->rngs[i];
    if (step) *step = cs->step;
    if (meta_out) { /* keep the metadata, drop the tensor copies */
        cJSON *md = f->metadata;
        f->metadata = NULL;
        qkv_st_free(f);
        meta_out->metadata = md;
    }
}

int qkv_ckpt_load(const char *path, qkv_model *m, qkv_optim *opt, int64_t *step,
                  const qkv_ckpt_rng *rngs, int n_rngs, qkv_st_file *meta_out,
                  char *err, size_t errlen) {
    QKV_CHECK(m && n_rngs >= 0 && (!n_rngs || rngs),
              "ckpt_load: NULL model or bad RNG list");
    memset(m, 0, sizeof *m);
    if (opt) memset(opt, 0, sizeof *opt);
    if (meta_out) memset(meta_out, 0, sizeof *meta_out);
    qkv_st_file f;
    qkv_model_config mc;
    if (open_ckpt(path, &f, &mc, err, errlen)) return -1;

    qkv_model lm;
    ckpt_state cs = {
        .rngs = qkv_malloc((size_t)(n_rngs ? n_rngs : 1) * sizeof *cs.rngs,
                           "RNG states"),
        .optim_json = qkv_st_meta(&f, "optim")};
    int built = 0, rc = -1;
    if (read_state(&f, rngs, n_rngs, &cs, path, err, errlen) == 0 &&
        check_model(&f, &mc, &cs, &lm, &built, path, err, errlen) == 0) {
        fill_outputs(&f, &lm, &cs, m, opt, step, rngs, n_rngs, meta_out, path,
                     err, errlen);
        built = 0;
        rc = 0;
    }
    if (built) qkv_model_free(&lm);
    qkv_st_free(&f);
    free(cs.rngs);
    return rc;
}

int qkv_ckpt_load_weights(const char *path, qkv_model *m, char *err,
                          size_t errlen) {
    QKV_CHECK(m && m->params.values, "ckpt_load_weights: model not built");
    qkv_st_file f;
    qkv_model_config mc;
    char why[200];
    if (open_ckpt(path, &f, &mc, err, errlen)) return -1;
    int rc = 0;
    if (qkv_model_config_diff(&mc, &m->cfg, 0, why, sizeof why))
        rc = fail(err, errlen, path,
                  "the checkpoint's model differs from this one: %s", why);
    else
        rc = check_finite(&f, path, err, errlen)
                 ? -1
                 : load_tensors(&f, &m->params, 1, path, err, errlen);
    qkv_st_free(&f);
    return rc;
}

/* ======================================================== weights only */

int qkv_weights_save(const char *path, const qkv_model *m,
                     const char *const *keys, const char *const *values,
                     int n_extra, char *err, size_t errlen) {
    QKV_CHECK(m && m->params.values, "weights_save: model not initialised");
    QKV_CHECK(n_extra >= 0 && (!n_extra || (keys && values)),
              "weights_save: bad count or NULL arrays");
    if (!path || !*path)
        return fail(err, errlen, "(no path)", "save: empty file name");
    for (int i = 0; i < n_extra; i++)
        if (keys[i] &&
            (!strcmp(keys[i], "format") || !strcmp(keys[i], "model")))
            return fail(err, errlen, path,
                        "save: metadata key '%s' is reserved for the file "
                        "itself",
                        keys[i]);
    int nmeta = 2 + n_extra;
    const char **mk = qkv_malloc((size_t)nmeta * sizeof *mk, "metadata keys");
    const char **mv = qkv_malloc((size_t)nmeta * sizeof *mv, "metadata values");
    char *model = qkv_model_config_to_json(&m->cfg);
    mk[0] = "format", mv[0] = QKV_WEIGHTS_FORMAT;
    mk[1] = "model", mv[1] = model;
    for (int i = 0; i < n_extra; i++)
        mk[2 + i] = keys[i], mv[2 + i] = values[i];
    qkv_st_entry *e =
        qkv_malloc((size_t)m->params.count * sizeof *e, "weights entries");
    int ne = save_entries(m, NULL, e);
    qkv_st_error se;
    int rc = qkv_st_write(path, e, ne, mk, mv, nmeta, &se);
    if (rc) fail(err, errlen, NULL, "%s", se.msg);
    free(e);
    free(model);
    free(mk);
    free(mv);
    return rc;
}

/* The config JSON file cpath ({"model": {...}, ...}): *mc from its "model",
 * and *md = its top-level members as metadata strings (strings as they
 * are, anything else as compact JSON text). */
static int read_config_file(const char *cpath, qkv_model_config *mc, cJSON **md,
                            char *err, size_t len) {
    uint64_t size = 0;
    FILE *fp = qkv_fopen_file(cpath, (uint64_t)1 << 30, &size, err, len);
    if (!fp) return -1;
    char *text = qkv_malloc((size_t)size + 1, "config file");
    size_t got = fread(text, 1, (size_t)size, fp);
    fclose(fp);
    text[got] = 0;
    cJSON *j = got == size && strlen(text) == got
                   ? cJSON_ParseWithOpts(text, NULL, 1)
                   : NULL;
    free(text);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    char why[300];
    int rc = 0;
    if (!cJSON_IsObject(j))
        rc = fail(err, len, cpath,
                  "not a JSON object (a model config is "
                  "{\"model\": {...}, \"data\": {...}})");
    else if (!cJSON_IsObject(model))
        rc = fail(err, len, cpath, "no \"model\" object in the config");
    if (!rc) {
        char *s = cJSON_PrintUnformatted(model);
        QKV_CHECK(s, "out of memory reading a config");
        if (qkv_model_config_from_json(s, mc, why, sizeof why))
            rc = fail(err, len, cpath, "\"model\": %s", why);
        free(s);
    }
    if (!rc) {
        *md = cJSON_CreateObject();
        for (const cJSON *c = j->child; c; c = c->next) {
            char *s = cJSON_IsString(c) ? NULL : cJSON_PrintUnformatted(c);
            cJSON_AddItemToObject(*md, c->string,
                                  cJSON_CreateString(s ? s : c->valuestring));
            free(s);
        }
    }
    cJSON_Delete(j);
    return rc;
}

/* *mc from the file's own metadata: a qkv checkpoint's or weights file's
 * "model". */
static int config_from_meta(const qkv_st_file *f, qkv_model_config *mc,
                            const char *path, char *err, size_t len) {
    const char *fmt = qkv_st_meta(f, "format"), *model;
    char why[300];
    if (!fmt)
        return fail(err, len, path,
                    "not a qkv checkpoint or weights file (no \"format\" in "
                    "the metadata: written by another program?); give its "
                    "model config as a JSON file (qkv's --config)");
    if (strcmp(fmt, QKV_CKPT_FORMAT) && strcmp(fmt, QKV_WEIGHTS_FORMAT))
        return fail(err, len, path,
                    "not a qkv checkpoint or weights file this version reads "
                    "(format '%.40s'); give its model config as a JSON file "
                    "(qkv's --config)",
                    fmt);
    if (meta(f, "model", &model, path, err, len)) return -1;
    if (qkv_model_config_from_json(model, mc, why, sizeof why))
        return fail(err, len, path, "metadata \"model\": %s", why);
    return 0;
}

int qkv_weights_load(const char *path, const char *config_path, qkv_model *m,
                     qkv_st_file *meta_out, char *err, size_t errlen) {
    QKV_CHECK(m, "weights_load: NULL model");
    memset(m, 0, sizeof *m);
    if (meta_out) memset(meta_out, 0, sizeof *meta_out);
    if (!path) path = "(null)";
    qkv_st_file f;
    qkv_st_error se;
    if (qkv_st_read(path, &f, &se))
        return fail(err, errlen, NULL, "%s", se.msg);
    qkv_model_config mc;
    cJSON *md = NULL;
    int rc = config_path ? read_config_file(config_path, &mc, &md, err, errlen)
                         : config_from_meta(&f, &mc, path, err, errlen);
    if (!rc && !config_path) md = f.metadata, f.metadata = NULL;
    qkv_model lm;
    char why[300];
    if (!rc && qkv_model_declare(&lm, &mc, why, sizeof why))
        rc = fail(err, errlen, config_path ? config_path : path,
                  "%s\"model\": %s", config_path ? "" : "metadata ", why);
    else if (!rc) {
        if (load_tensors(&f, &lm.params, 0, path, err, errlen) ||
            check_finite(&f, path, err, errlen)) {
            qkv_model_free(&lm);
            rc = -1;
        } else {
            qkv_model_alloc(&lm, 0);
            load_tensors(&f, &lm.params, 1, path, err, errlen); /* checked */
            *m = lm;
        }
    }
    qkv_st_free(&f);
    if (!rc && meta_out)
        meta_out->metadata = md;
    else
        cJSON_Delete(md);
    return rc;
}
