#include "checkpoint.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
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

static void *need(void *p) {
    if (!p) QKV_FATAL("out of memory building checkpoint JSON");
    return p;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(qkv_malloc(n, "checkpoint string"), s, n);
}

/* ============================================================ JSON fields */

/* Adds f as the JSON number with the fewest significant digits (up to 9,
 * which always suffice) that reads back as exactly f: cJSON then prints the
 * double nearest that decimal, which parses back to the same double. */
static void add_float(cJSON *o, const char *name, float f) {
    char buf[32];
    double d = f;
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        d = strtod(buf, NULL);
        if ((float)d == f) break;
    }
    need(cJSON_AddNumberToObject(o, name, d));
}

static void add_int(cJSON *o, const char *name, int v) {
    need(cJSON_AddNumberToObject(o, name, v));
}

static void add_bool(cJSON *o, const char *name, int v) {
    need(cJSON_AddBoolToObject(o, name, v != 0));
}

static void add_str(cJSON *o, const char *name, const char *v) {
    need(cJSON_AddStringToObject(o, name, v));
}

static char *print_json(cJSON *o) {
    char *s = need(cJSON_PrintUnformatted(o));
    cJSON_Delete(o);
    char *out = dup_str(s); /* free()-able whatever cJSON's allocator is */
    cJSON_free(s);
    return out;
}

static const char *type_name(const cJSON *v) {
    return cJSON_IsString(v)   ? "a string"
           : cJSON_IsNumber(v) ? "a number"
           : cJSON_IsBool(v)   ? "a boolean"
           : cJSON_IsNull(v)   ? "null"
           : cJSON_IsArray(v)  ? "an array"
                               : "an object";
}

/* The JSON object of json (parsed into *root), whose keys must be exactly
 * the n names, each once. */
static int parse_object(const char *json, const char *const *names, int n,
                        cJSON **root, char *err, size_t len) {
    *root = NULL;
    if (!json) return fail(err, len, NULL, "no JSON text");
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithOpts(json, &end, 1);
    if (!o) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return fail(err, len, NULL, "not valid JSON (error near byte %zu)", at);
    }
    *root = o;
    if (!cJSON_IsObject(o))
        return fail(err, len, NULL, "not a JSON object but %s", type_name(o));
    for (const cJSON *c = o->child; c; c = c->next) {
        int known = 0;
        for (int i = 0; i < n && !known; i++)
            known = !strcmp(c->string, names[i]);
        if (!known)
            return fail(err, len, NULL, "unknown field '%.60s'", c->string);
        for (const cJSON *p = o->child; p != c; p = p->next)
            if (!strcmp(p->string, c->string))
                return fail(err, len, NULL, "field '%s' appears twice",
                            c->string);
    }
    for (int i = 0; i < n; i++)
        if (!cJSON_GetObjectItemCaseSensitive(o, names[i]))
            return fail(err, len, NULL, "field '%s' is missing", names[i]);
    return 0;
}

static int get_int(const cJSON *o, const char *name, int *out, char *err,
                   size_t len) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v))
        return fail(err, len, NULL, "field '%s': expected an integer, got %s",
                    name, type_name(v));
    double d = v->valuedouble;
    if (!(d >= INT_MIN && d <= INT_MAX) || d != floor(d))
        return fail(err, len, NULL, "field '%s': %.17g is not an integer", name,
                    d);
    *out = (int)d;
    return 0;
}

static int get_float(const cJSON *o, const char *name, float *out, char *err,
                     size_t len) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v))
        return fail(err, len, NULL, "field '%s': expected a number, got %s",
                    name, type_name(v));
    float f = (float)v->valuedouble;
    if (!isfinite(f))
        return fail(err, len, NULL, "field '%s': %g is not a finite float",
                    name, v->valuedouble);
    *out = f;
    return 0;
}

static int get_bool(const cJSON *o, const char *name, int *out, char *err,
                    size_t len) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsBool(v))
        return fail(err, len, NULL,
                    "field '%s': expected true or false, got %s", name,
                    type_name(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

/* *out = the index of the field's string in names (n of them). */
static int get_enum(const cJSON *o, const char *name, const char *const *names,
                    int n, int *out, char *err, size_t len) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsString(v))
        return fail(err, len, NULL, "field '%s': expected a string, got %s",
                    name, type_name(v));
    for (int i = 0; i < n; i++)
        if (!strcmp(v->valuestring, names[i])) return *out = i, 0;
    char list[128] = "";
    for (int i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
                 i ? (i == n - 1 ? " or " : ", ") : "", names[i]);
    return fail(err, len, NULL,
                "field '%s': unknown value '%.40s' (expected %s)", name,
                v->valuestring, list);
}

/* ========================================================= model config */

static const char *const model_kinds[] = {"encdec", "decoder"};
static const char *const pos_kinds[] = {"sin", "learned"};
static const char *const norm_kinds[] = {"post", "pre"};
static const char *const acts[] = {"relu", "gelu"};
static const char *const model_fields[] = {
    "kind",  "src_vocab", "tgt_vocab", "d_model",    "heads",  "d_ff",
    "n_enc", "n_dec",     "max_len",   "dropout",    "ln_eps", "pos",
    "norm",  "act",       "scale_emb", "tie_output", "pad_id"};
#define COUNT(a) ((int)(sizeof(a) / sizeof(a)[0]))

/* names[e], or "?" for a value outside the enum (a programmer error caught
 * by qkv_model_init anyway). */
static const char *enum_name(const char *const *names, int n, int e) {
    return e >= 0 && e < n ? names[e] : "?";
}

char *qkv_model_config_to_json(const qkv_model_config *c) {
    cJSON *o = need(cJSON_CreateObject());
    add_str(o, "kind", enum_name(model_kinds, 2, (int)c->kind));
    add_int(o, "src_vocab", c->src_vocab);
    add_int(o, "tgt_vocab", c->tgt_vocab);
    add_int(o, "d_model", c->d_model);
    add_int(o, "heads", c->heads);
    add_int(o, "d_ff", c->d_ff);
    add_int(o, "n_enc", c->n_enc);
    add_int(o, "n_dec", c->n_dec);
    add_int(o, "max_len", c->max_len);
    add_float(o, "dropout", c->dropout);
    add_float(o, "ln_eps", c->ln_eps);
    add_str(o, "pos", enum_name(pos_kinds, 2, (int)c->pos));
    add_str(o, "norm", enum_name(norm_kinds, 2, (int)c->norm));
    add_str(o, "act", enum_name(acts, 2, (int)c->act));
    add_bool(o, "scale_emb", c->scale_emb);
    add_bool(o, "tie_output", c->tie_output);
    add_int(o, "pad_id", c->pad_id);
    return print_json(o);
}

int qkv_model_config_from_json(const char *json, qkv_model_config *out,
                               char *err, size_t len) {
    cJSON *o;
    qkv_model_config c;
    int kind = 0, pos = 0, norm = 0, act = 0;
    int rc =
        parse_object(json, model_fields, COUNT(model_fields), &o, err, len);
    if (!rc)
        rc = get_enum(o, "kind", model_kinds, 2, &kind, err, len) ||
             get_int(o, "src_vocab", &c.src_vocab, err, len) ||
             get_int(o, "tgt_vocab", &c.tgt_vocab, err, len) ||
             get_int(o, "d_model", &c.d_model, err, len) ||
             get_int(o, "heads", &c.heads, err, len) ||
             get_int(o, "d_ff", &c.d_ff, err, len) ||
             get_int(o, "n_enc", &c.n_enc, err, len) ||
             get_int(o, "n_dec", &c.n_dec, err, len) ||
             get_int(o, "max_len", &c.max_len, err, len) ||
             get_float(o, "dropout", &c.dropout, err, len) ||
             get_float(o, "ln_eps", &c.ln_eps, err, len) ||
             get_enum(o, "pos", pos_kinds, 2, &pos, err, len) ||
             get_enum(o, "norm", norm_kinds, 2, &norm, err, len) ||
             get_enum(o, "act", acts, 2, &act, err, len) ||
             get_bool(o, "scale_emb", &c.scale_emb, err, len) ||
             get_bool(o, "tie_output", &c.tie_output, err, len) ||
             get_int(o, "pad_id", &c.pad_id, err, len);
    cJSON_Delete(o);
    if (rc) return -1;
    c.kind = kind ? QKV_MODEL_DECODER : QKV_MODEL_ENCDEC;
    c.pos = pos ? QKV_POS_LEARNED : QKV_POS_SIN;
    c.norm = norm ? QKV_NORM_PRE : QKV_NORM_POST;
    c.act = act ? QKV_ACT_GELU : QKV_ACT_RELU;
    *out = c;
    return 0;
}

/* ========================================================= optim config */

static const char *const optim_kinds[] = {"adam", "adamw", "sgd"};
static const char *const optim_fields[] = {
    "kind",         "beta1",    "beta2",    "eps",
    "weight_decay", "momentum", "nesterov", "decay_all"};

char *qkv_optim_config_to_json(const qkv_optim_config *c) {
    cJSON *o = need(cJSON_CreateObject());
    add_str(o, "kind", enum_name(optim_kinds, 3, (int)c->kind));
    add_float(o, "beta1", c->beta1);
    add_float(o, "beta2", c->beta2);
    add_float(o, "eps", c->eps);
    add_float(o, "weight_decay", c->weight_decay);
    add_float(o, "momentum", c->momentum);
    add_bool(o, "nesterov", c->nesterov);
    add_bool(o, "decay_all", c->decay_all);
    return print_json(o);
}

int qkv_optim_config_from_json(const char *json, qkv_optim_config *out,
                               char *err, size_t len) {
    cJSON *o;
    qkv_optim_config c;
    int kind = 0;
    int rc =
        parse_object(json, optim_fields, COUNT(optim_fields), &o, err, len);
    if (!rc)
        rc = get_enum(o, "kind", optim_kinds, 3, &kind, err, len) ||
             get_float(o, "beta1", &c.beta1, err, len) ||
             get_float(o, "beta2", &c.beta2, err, len) ||
             get_float(o, "eps", &c.eps, err, len) ||
             get_float(o, "weight_decay", &c.weight_decay, err, len) ||
             get_float(o, "momentum", &c.momentum, err, len) ||
             get_bool(o, "nesterov", &c.nesterov, err, len) ||
             get_bool(o, "decay_all", &c.decay_all, err, len);
    cJSON_Delete(o);
    if (rc) return -1;
    c.kind = kind == 0   ? QKV_OPTIM_ADAM
             : kind == 1 ? QKV_OPTIM_ADAMW
                         : QKV_OPTIM_SGD;
    /* qkv_optim_init aborts on these (programmer errors there; user input
     * here). */
    const char *bad = !(c.beta1 >= 0 && c.beta1 < 1)         ? "beta1"
                      : !(c.beta2 >= 0 && c.beta2 < 1)       ? "beta2"
                      : !(c.eps >= 0)                        ? "eps"
                      : !(c.weight_decay >= 0)               ? "weight_decay"
                      : !(c.momentum >= 0 && c.momentum < 1) ? "momentum"
                                                             : NULL;
    if (bad)
        return fail(err, len, NULL,
                    "field '%s' is out of range (betas and momentum in "
                    "[0, 1), eps and weight_decay >= 0)",
                    bad);
    if (c.nesterov && !(c.kind == QKV_OPTIM_SGD && c.momentum > 0))
        return fail(err, len, NULL,
                    "field 'nesterov': needs kind sgd with momentum > 0");
    *out = c;
    return 0;
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

/* {"state": "<u64>", "inc": "<u64>"}, malloc'd. */
static char *rng_to_json(const qkv_pcg32 *r) {
    char s[24], i[24];
    snprintf(s, sizeof s, "%" PRIu64, r->state);
    snprintf(i, sizeof i, "%" PRIu64, r->inc);
    cJSON *o = need(cJSON_CreateObject());
    add_str(o, "state", s);
    add_str(o, "inc", i);
    return print_json(o);
}

static int rng_from_json(const char *json, qkv_pcg32 *r, char *err,
                         size_t len) {
    static const char *const fields[] = {"state", "inc"};
    cJSON *o;
    int rc = parse_object(json, fields, 2, &o, err, len);
    qkv_pcg32 v;
    for (int i = 0; i < 2 && !rc; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, fields[i]);
        if (!cJSON_IsString(x) ||
            parse_u64(x->valuestring, i ? &v.inc : &v.state))
            rc = fail(err, len, NULL,
                      "field '%s' is not a decimal string of a 64-bit "
                      "unsigned integer",
                      fields[i]);
    }
    if (!rc && !(v.inc & 1))
        rc = fail(err, len, NULL, "field 'inc' is even (PCG32 needs it odd)");
    cJSON_Delete(o);
    if (!rc) *r = v;
    return rc;
}

/* ============================================================== saving */

static int reserved_key(const char *k) {
    static const char *const keys[] = {"format", "model", "optim", "optim_step",
                                       "step"};
    for (int i = 0; i < COUNT(keys); i++)
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

/* Fills sm: 4 fixed pairs (format, model, step, rng.model), 2 for the
 * optimiser, one per RNG, then the n_extra pairs as given. */
static void save_meta_build(save_meta *sm, const qkv_model *m,
                            const qkv_optim *opt, int64_t step,
                            const qkv_ckpt_rng *rngs, int n_rngs,
                            const char *const *keys, const char *const *values,
                            int n_extra) {
    int nmeta = 4 + (opt ? 2 : 0) + n_rngs + n_extra, k = 0, nown = 0;
    const char **mk = qkv_malloc((size_t)nmeta * sizeof *mk, "metadata keys");
    const char **mv = qkv_malloc((size_t)nmeta * sizeof *mv, "metadata values");
    char **own = qkv_malloc((size_t)nmeta * 2 * sizeof *own, "metadata text");
    char buf[24];
    mk[k] = "format", mv[k++] = QKV_CKPT_FORMAT;
    mk[k] = "model", mv[k++] = own[nown++] = qkv_model_config_to_json(&m->cfg);
    snprintf(buf, sizeof buf, "%" PRId64, step);
    mk[k] = "step", mv[k++] = own[nown++] = dup_str(buf);
    mk[k] = "rng.model", mv[k++] = own[nown++] = rng_to_json(&m->rng);
    if (opt) {
        mk[k] = "optim";
        mv[k++] = own[nown++] = qkv_optim_config_to_json(&opt->cfg);
        snprintf(buf, sizeof buf, "%" PRId64, opt->step);
        mk[k] = "optim_step", mv[k++] = own[nown++] = dup_str(buf);
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

int qkv_model_config_diff(const qkv_model_config *file,
                          const qkv_model_config *here, int with_dropout,
                          char *msg, size_t len) {
    char *a = qkv_model_config_to_json(file),
         *b = qkv_model_config_to_json(here);
    cJSON *ja = need(cJSON_Parse(a)), *jb = need(cJSON_Parse(b));
    int dec = here->kind == QKV_MODEL_DECODER, differs = 0;
    for (const cJSON *x = ja->child; x && !differs; x = x->next) {
        const char *k = x->string;
        if ((!with_dropout && !strcmp(k, "dropout")) ||
            (dec && (!strcmp(k, "src_vocab") || !strcmp(k, "n_enc"))))
            continue; /* dropout only acts in training; unused fields */
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(jb, k);
        if (cJSON_Compare(x, y, 1)) continue;
        char *xs = need(cJSON_PrintUnformatted(x)),
             *ys = need(cJSON_PrintUnformatted(y));
        snprintf(msg, len, "%s is %.40s in the file but %.40s here", k, xs, ys);
        cJSON_free(xs);
        cJSON_free(ys);
        differs = 1;
    }
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    free(a);
    free(b);
    return differs;
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
