#include "config.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define AT(obj, f, T)   ((T *)((char *)(obj) + (f)->offset))
#define AT_C(obj, f, T) ((const T *)((const char *)(obj) + (f)->offset))

static void *need(void *p) {
    if (!p) QKV_FATAL("out of memory building JSON");
    return p;
}

/* The name of enum value v in "a|b|c" into buf; "?" if there is none. */
static void choice_name(const char *choices, int v, char *buf, size_t cap) {
    const char *p = choices;
    for (int i = 0; i < v && p; i++) {
        p = strchr(p, '|');
        if (p) p++;
    }
    if (!p || v < 0) {
        snprintf(buf, cap, "?");
        return;
    }
    size_t n = strcspn(p, "|");
    snprintf(buf, cap, "%.*s", (int)n, p);
}

/* The index of name in "a|b|c", or -1. */
static int choice_index(const char *choices, const char *name) {
    size_t len = strlen(name);
    int i = 0;
    for (const char *p = choices; p; i++) {
        size_t n = strcspn(p, "|");
        if (n == len && strncmp(p, name, n) == 0) return i;
        p = strchr(p, '|');
        if (p) p++;
    }
    return -1;
}

/* "a|b|c" as "a, b or c" into buf. */
static void choice_list(const char *choices, char *buf, size_t cap) {
    size_t at = 0;
    buf[0] = 0;
    for (const char *p = choices; p && at < cap;) {
        size_t n = strcspn(p, "|");
        const char *next = p[n] ? p + n + 1 : NULL;
        at += (size_t)snprintf(buf + at, cap - at, "%s%.*s",
                               at == 0 ? ""
                               : next  ? ", "
                                       : " or ",
                               (int)n, p);
        p = next;
    }
}

/* The fewest significant digits (up to 9, which always suffice) that read
 * back as exactly f: cJSON then prints the double nearest that decimal. */
double qkv_float_shortest(float f) {
    char buf[32];
    double d = f;
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        d = strtod(buf, NULL);
        if ((float)d == f) break;
    }
    return d;
}

void qkv_config_add_json(void *o, const qkv_field *f, int n, const void *obj) {
    char name[64];
    for (int i = 0; i < n; i++, f++) {
        switch (f->type) {
        case QKV_FIELD_INT:
            need(cJSON_AddNumberToObject(o, f->key, *AT_C(obj, f, int)));
            break;
        case QKV_FIELD_FLOAT:
            need(cJSON_AddNumberToObject(
                o, f->key, qkv_float_shortest(*AT_C(obj, f, float))));
            break;
        case QKV_FIELD_BOOL:
            need(cJSON_AddBoolToObject(o, f->key, *AT_C(obj, f, int) != 0));
            break;
        case QKV_FIELD_ENUM:
            choice_name(f->choices, *AT_C(obj, f, int), name, sizeof name);
            need(cJSON_AddStringToObject(o, f->key, name));
            break;
        case QKV_FIELD_STR:
            need(cJSON_AddStringToObject(o, f->key, *AT_C(obj, f, char *)));
            break;
        }
    }
}

char *qkv_config_to_json(const qkv_field *f, int n, const void *obj) {
    cJSON *o = need(cJSON_CreateObject());
    qkv_config_add_json(o, f, n, obj);
    char *s = need(cJSON_PrintUnformatted(o));
    cJSON_Delete(o);
    char *out = qkv_strdup(s, "JSON"); /* free()-able whatever cJSON uses */
    cJSON_free(s);
    return out;
}

static const char *type_name(const cJSON *v) {
    return !v                  ? "nothing"
           : cJSON_IsString(v) ? "a string"
           : cJSON_IsNumber(v) ? "a number"
           : cJSON_IsBool(v)   ? "a boolean"
           : cJSON_IsNull(v)   ? "null"
           : cJSON_IsArray(v)  ? "an array"
                               : "an object";
}

/* Strict: the keys of o are exactly the n fields', each once. */
static int check_keys(const qkv_field *f, int n, const cJSON *o, char *err,
                      size_t len) {
    for (const cJSON *c = o->child; c; c = c->next) {
        if (!qkv_config_find(f, n, c->string))
            return qkv_errf(err, len, "unknown field '%.60s'", c->string);
        for (const cJSON *p = o->child; p != c; p = p->next)
            if (!strcmp(p->string, c->string))
                return qkv_errf(err, len, "field '%s' appears twice",
                                c->string);
    }
    for (int i = 0; i < n; i++)
        if (!cJSON_GetObjectItemCaseSensitive(o, f[i].key))
            return qkv_errf(err, len, "field '%s' is missing", f[i].key);
    return 0;
}

/* One field's JSON value v into obj (checked for its type). */
static int read_field(const qkv_field *f, void *obj, const cJSON *v, char *err,
                      size_t len) {
    const char *want = f->type == QKV_FIELD_INT     ? "an integer"
                       : f->type == QKV_FIELD_FLOAT ? "a number"
                       : f->type == QKV_FIELD_BOOL  ? "true or false"
                                                    : "a string";
    int ok = f->type == QKV_FIELD_BOOL    ? cJSON_IsBool(v)
             : f->type == QKV_FIELD_INT   ? cJSON_IsNumber(v)
             : f->type == QKV_FIELD_FLOAT ? cJSON_IsNumber(v)
                                          : cJSON_IsString(v);
    if (!ok)
        return qkv_errf(err, len, "field '%s': expected %s, got %s", f->key,
                        want, type_name(v));
    double d = v->valuedouble;
    int e;
    char list[160];
    switch (f->type) {
    case QKV_FIELD_INT:
        if (!(d >= INT_MIN && d <= INT_MAX) || d != floor(d))
            return qkv_errf(err, len, "field '%s': %.17g is not an integer",
                            f->key, d);
        *AT(obj, f, int) = (int)d;
        break;
    case QKV_FIELD_FLOAT:
        if (!isfinite((float)d))
            return qkv_errf(err, len, "field '%s': %g is not a finite float",
                            f->key, d);
        *AT(obj, f, float) = (float)d;
        break;
    case QKV_FIELD_BOOL:
        *AT(obj, f, int) = cJSON_IsTrue(v);
        break;
    case QKV_FIELD_ENUM:
        if ((e = choice_index(f->choices, v->valuestring)) < 0) {
            choice_list(f->choices, list, sizeof list);
            return qkv_errf(err, len,
                            "field '%s': unknown value '%.40s' (expected %s)",
                            f->key, v->valuestring, list);
        }
        *AT(obj, f, int) = e;
        break;
    case QKV_FIELD_STR:
        *AT(obj, f, const char *) = v->valuestring;
        break;
    }
    return 0;
}

int qkv_config_from_cjson(const qkv_field *f, int n, void *obj, const void *j,
                          int strict, char *err, size_t errlen) {
    const cJSON *o = j;
    if (!cJSON_IsObject(o))
        return qkv_errf(err, errlen, "not a JSON object but %s", type_name(o));
    if (strict && check_keys(f, n, o, err, errlen)) return -1;
    /* into a copy first: on error obj is unchanged */
    size_t size = 0;
    for (int i = 0; i < n; i++) {
        size_t end =
            f[i].offset +
            (f[i].type == QKV_FIELD_STR ? sizeof(const char *) : sizeof(int));
        if (end > size) size = end;
    }
    char *copy = qkv_malloc(size, "config");
    memcpy(copy, obj, size);
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, f[i].key);
        if (v && read_field(&f[i], copy, v, err, errlen)) {
            free(copy);
            return -1;
        }
    }
    memcpy(obj, copy, size);
    free(copy);
    return 0;
}

int qkv_config_from_json(const qkv_field *f, int n, void *obj, const char *json,
                         int strict, char *err, size_t errlen) {
    if (!json) return qkv_errf(err, errlen, "no JSON text");
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithOpts(json, &end, 1);
    if (!o) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return qkv_errf(err, errlen, "not valid JSON (error near byte %zu)",
                        at);
    }
    int rc = qkv_config_from_cjson(f, n, obj, o, strict, err, errlen);
    cJSON_Delete(o);
    return rc;
}

void qkv_field_format(const qkv_field *f, const void *obj, char *buf,
                      size_t cap) {
    switch (f->type) {
    case QKV_FIELD_INT:
        snprintf(buf, cap, "%d", *AT_C(obj, f, int));
        break;
    case QKV_FIELD_FLOAT:
        snprintf(buf, cap, "%.9g", qkv_float_shortest(*AT_C(obj, f, float)));
        break;
    case QKV_FIELD_BOOL:
        snprintf(buf, cap, "%s", *AT_C(obj, f, int) ? "true" : "false");
        break;
    case QKV_FIELD_ENUM:
        choice_name(f->choices, *AT_C(obj, f, int), buf, cap);
        break;
    case QKV_FIELD_STR:
        snprintf(buf, cap, "%s", *AT_C(obj, f, char *));
        break;
    }
}

static int same(const qkv_field *f, const void *a, const void *b) {
    if (f->type == QKV_FIELD_FLOAT)
        return *AT_C(a, f, float) == *AT_C(b, f, float);
    if (f->type == QKV_FIELD_STR)
        return strcmp(*AT_C(a, f, char *), *AT_C(b, f, char *)) == 0;
    return *AT_C(a, f, int) == *AT_C(b, f, int);
}

int qkv_config_diff(const qkv_field *f, int n, const void *a, const void *b,
                    const char *const *skip, char *msg, size_t len) {
    for (int i = 0; i < n; i++) {
        int skipped = 0;
        for (const char *const *s = skip; s && *s; s++)
            skipped |= strcmp(*s, f[i].key) == 0;
        if (skipped || same(&f[i], a, b)) continue;
        char va[64], vb[64];
        qkv_field_format(&f[i], a, va, sizeof va);
        qkv_field_format(&f[i], b, vb, sizeof vb);
        snprintf(msg, len, "%s is %s in the file but %s here", f[i].key, va,
                 vb);
        return 1;
    }
    return 0;
}

const qkv_field *qkv_config_find(const qkv_field *f, int n, const char *key) {
    for (int i = 0; i < n; i++)
        if (strcmp(f[i].key, key) == 0) return &f[i];
    return NULL;
}
