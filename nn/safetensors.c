#include "safetensors.h"

#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* JSON numbers are doubles: integers are exact up to 2^53. */
#define MAX_JSON_INT 9007199254740992.0
/* Names in messages are cut to this many bytes, so two names always fit. */
#define NAME_FMT "'%.100s'"

/* err->msg = "PATH: message" on one line: control bytes (from names or a
 * hostile path) are shown as '?'. Returns -1 so callers can `return fail(..)`.
 */
static int fail(qkv_st_error *err, const char *path, const char *fmt, ...)
    QKV_PRINTF(3, 4);
static int fail(qkv_st_error *err, const char *path, const char *fmt, ...) {
    if (!err) return -1;
    int k = snprintf(err->msg, sizeof err->msg, "%s: ", path ? path : "(null)");
    if (k < 0 || (size_t)k >= sizeof err->msg) k = (int)sizeof err->msg - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg + k, sizeof err->msg - (size_t)k, fmt, ap);
    va_end(ap);
    for (char *p = err->msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    return -1;
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static void swap_bytes32(void *p, size_t n) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++, b += 4) {
        unsigned char t0 = b[0], t1 = b[1];
        b[0] = b[3], b[1] = b[2], b[2] = t1, b[3] = t0;
    }
}

/* Byte offset of the first byte that is not well-formed UTF-8
 * (qkv_utf8_check) or is a control byte JSON forbids outside whitespace;
 * len if none. */
static size_t bad_utf8_at(const unsigned char *s, size_t len) {
    size_t bad = qkv_utf8_check((const char *)s, len);
    for (size_t i = 0; i < bad; i++)
        if (s[i] < 0x20 && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            return i;
    return bad;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorts names (an array of n pointers) and returns a name that occurs twice,
 * or NULL. */
static const char *first_duplicate(const char **names, size_t n) {
    if (n < 2) return NULL;
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

/* ================================================================ writing */

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t k = write(fd, p, len < (1u << 30) ? len : (1u << 30));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO;
            return -1;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* n floats as little-endian bytes. */
static int write_floats(int fd, const float *x, size_t n) {
    if (host_is_little_endian()) return write_all(fd, x, n * sizeof *x);
    float chunk[1024];
    for (size_t i = 0; i < n; i += 1024) {
        size_t m = n - i < 1024 ? n - i : 1024;
        memcpy(chunk, x + i, m * sizeof *x);
        swap_bytes32(chunk, m);
        if (write_all(fd, chunk, m * sizeof *x)) return -1;
    }
    return 0;
}

static void *need(void *p) {
    if (!p) QKV_FATAL("out of memory building a safetensors header");
    return p;
}

/* s is well-formed UTF-8 text (see bad_utf8_at). */
static int is_utf8(const char *s) {
    size_t len = strlen(s);
    return bad_utf8_at((const unsigned char *)s, len) == len;
}

/* Adds the mcount metadata pairs to root as "__metadata__", refusing a NULL
 * key or value, text that is not UTF-8, and a key given twice. names is
 * scratch for mcount pointers. */
static int add_metadata(const char *path, cJSON *root, const char *const *keys,
                        const char *const *vals, int mcount, const char **names,
                        qkv_st_error *err) {
    if (!mcount) return 0;
    cJSON *meta = need(cJSON_CreateObject());
    cJSON_AddItemToObject(root, "__metadata__", meta);
    for (int i = 0; i < mcount; i++) {
        if (!keys[i] || !vals[i])
            return fail(err, path, "write: metadata pair %d is NULL", i);
        if (!is_utf8(vals[i]) || !is_utf8(keys[i]))
            return fail(err, path,
                        "write: metadata " NAME_FMT " is not valid UTF-8 text",
                        keys[i]);
        names[i] = keys[i];
        cJSON_AddItemToObject(meta, keys[i], need(cJSON_CreateString(vals[i])));
    }
    const char *dup = first_duplicate(names, (size_t)mcount);
    if (dup)
        return fail(err, path, "write: metadata key " NAME_FMT " appears twice",
                    dup);
    return 0;
}

/* *bytes = the size of tensor e (number i, for messages) as F32, after
 * checking its name, dimensions and shape, that its end offset (from offset)
 * is exact as a JSON number, and that it has data unless it is empty. */
static int check_entry(const char *path, const qkv_st_entry *e, int i,
                       uint64_t offset, size_t *bytes, qkv_st_error *err) {
    const char *name = e->name;
    if (!name || !*name || strcmp(name, "__metadata__") == 0 || !is_utf8(name))
        return fail(err, path, "write: tensor %d has a bad name %s%.100s%s", i,
                    name ? "'" : "", name ? name : "(NULL)", name ? "'" : "");
    if (e->ndim < 0 || e->ndim > QKV_MAX_DIMS)
        return fail(err, path,
                    "write: tensor " NAME_FMT " has %d dimensions (0 to %d)",
                    name, e->ndim, QKV_MAX_DIMS);
    size_t n = 1;
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] < 0 || !qkv_mul_size(n, (size_t)e->shape[d], &n))
            return fail(err, path,
                        "write: tensor " NAME_FMT
                        " has a negative or overflowing shape",
                        name);
    if (!qkv_mul_size(n, sizeof(float), bytes) ||
        (double)offset + (double)*bytes > MAX_JSON_INT)
        return fail(err, path, "write: tensor " NAME_FMT " is too large", name);
    if (n && !e->data)
        return fail(err, path, "write: tensor " NAME_FMT " has no data", name);
    return 0;
}

/* Adds the count tensors' entries to root, each {"dtype": "F32", "shape",
 * "data_offsets": [begin, end]}, laid end to end in entry order; refuses a
 * bad entry (check_entry) or a name given twice. names is scratch for count
 * pointers. */
static int add_tensors(const char *path, cJSON *root, const qkv_st_entry *e,
                       int count, const char **names, qkv_st_error *err) {
    uint64_t offset = 0;
    for (int i = 0; i < count; i++) {
        size_t bytes = 0;
        if (check_entry(path, &e[i], i, offset, &bytes, err)) return -1;
        names[i] = e[i].name;
        cJSON *t = need(cJSON_CreateObject());
        cJSON_AddItemToObject(root, e[i].name, t);
        need(cJSON_AddStringToObject(t, "dtype", "F32"));
        cJSON_AddItemToObject(
            t, "shape", need(cJSON_CreateIntArray(e[i].shape, e[i].ndim)));
        cJSON *off = need(cJSON_CreateArray());
        cJSON_AddItemToArray(off, need(cJSON_CreateNumber((double)offset)));
        offset += bytes;
        cJSON_AddItemToArray(off, need(cJSON_CreateNumber((double)offset)));
        cJSON_AddItemToObject(t, "data_offsets", off);
    }
    const char *dup = first_duplicate(names, (size_t)count);
    if (dup)
        return fail(err, path, "write: tensor name " NAME_FMT " appears twice",
                    dup);
    return 0;
}

/* root as the file's first bytes: the 8-byte little-endian length, then the
 * JSON padded with spaces to a multiple of 8 bytes (malloc'd, *len bytes). */
static unsigned char *frame_header(const cJSON *root, size_t *len) {
    char *json = need(cJSON_PrintUnformatted(root));
    size_t jlen = strlen(json), padded = (jlen + 7) & ~(size_t)7;
    unsigned char *buf = qkv_malloc(8 + padded, "safetensors header");
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, json, jlen);
    memset(buf + 8 + jlen, ' ', padded - jlen);
    *len = 8 + padded;
    cJSON_free(json);
    return buf;
}

/* Checks the entries and metadata, and returns the 8-byte length followed by
 * the JSON header padded with spaces to a multiple of 8 bytes (malloc'd,
 * *len bytes in all), or NULL with err set. */
static unsigned char *build_header(const char *path, const qkv_st_entry *e,
                                   int count, const char *const *keys,
                                   const char *const *vals, int mcount,
                                   size_t *len, qkv_st_error *err) {
    if (count < 0 || mcount < 0 || (count && !e) ||
        (mcount && (!keys || !vals))) {
        fail(err, path, "write: bad arguments (count %d, metadata count %d)",
             count, mcount);
        return NULL;
    }
    size_t nnames = (size_t)(count > mcount ? count : mcount);
    const char **names =
        qkv_malloc((nnames ? nnames : 1) * sizeof *names, "safetensors names");
    cJSON *root = need(cJSON_CreateObject());
    unsigned char *buf = NULL;
    if (add_metadata(path, root, keys, vals, mcount, names, err) == 0 &&
        add_tensors(path, root, e, count, names, err) == 0)
        buf = frame_header(root, len);
    cJSON_Delete(root);
    free(names);
    return buf;
}

/* fsyncs the directory holding path, so the rename itself is durable. */
static int sync_dir(const char *path) {
    size_t len = strlen(path);
    char *dir = qkv_malloc(len + 2, "directory name");
    memcpy(dir, path, len + 1);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY), rc = -1;
    if (fd >= 0) {
        /* EINVAL: this file system cannot sync directories; nothing to do. */
        rc = fsync(fd) == 0 || errno == EINVAL ? 0 : -1;
        int saved = errno;
        close(fd);
        errno = saved;
    }
    free(dir);
    return rc;
}

int qkv_st_write(const char *path, const qkv_st_entry *entries, int count,
                 const char *const *meta_keys, const char *const *meta_values,
                 int meta_count, qkv_st_error *err) {
    if (!path || !*path)
        return fail(err, "(no path)", "write: empty file name");
    size_t hlen;
    unsigned char *head = build_header(path, entries, count, meta_keys,
                                       meta_values, meta_count, &hlen, err);
    if (!head) return -1;
    qkv_remove_stale_tmp(path); /* of saves killed before their rename */
    size_t tlen = strlen(path) + 32;
    char *tmp = qkv_malloc(tlen, "temporary file name");
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    int rc = -1;
    /* O_EXCL: never write through a link or over a file we did not create. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        fail(err, path, "cannot create the temporary file %s: %s", tmp,
             strerror(errno));
        goto out;
    }
    const char *what = "write";
    int ok = write_all(fd, head, hlen) == 0;
    for (int i = 0; ok && i < count; i++) {
        size_t n = 1;
        for (int d = 0; d < entries[i].ndim; d++)
            n *= (size_t)entries[i].shape[d];
        ok = n == 0 || write_floats(fd, entries[i].data, n) == 0;
    }
    if (ok && fsync(fd) != 0) ok = 0, what = "fsync";
    int saved = errno;
    if (close(fd) != 0 && ok) ok = 0, what = "close", saved = errno;
    if (ok && rename(tmp, path) != 0) ok = 0, what = "rename", saved = errno;
    if (!ok) {
        unlink(tmp);
        fail(err, path, "%s of %s failed: %s", what, tmp, strerror(saved));
        goto out;
    }
    if (sync_dir(path) != 0) {
        fail(err, path, "written, but syncing its directory failed: %s",
             strerror(errno));
        goto out;
    }
    rc = 0;
out:
    free(tmp);
    free(head);
    return rc;
}

int qkv_st_write_params(const char *path, const qkv_params *ps,
                        const char *const *meta_keys,
                        const char *const *meta_values, int meta_count,
                        qkv_st_error *err) {
    QKV_CHECK(ps->values || ps->count == 0,
              "st_write_params: parameter store not allocated");
    qkv_st_entry *e = qkv_malloc(
        (size_t)(ps->count ? ps->count : 1) * sizeof *e, "checkpoint entries");
    for (int i = 0; i < ps->count; i++) {
        const qkv_tensor *t = ps->list[i];
        e[i] =
            (qkv_st_entry){.name = t->name, .data = t->data, .ndim = t->ndim};
        memcpy(e[i].shape, t->shape, sizeof e[i].shape);
    }
    int rc = qkv_st_write(path, e, ps->count, meta_keys, meta_values,
                          meta_count, err);
    free(e);
    return rc;
}

/* ================================================================ reading */

/* One tensor's header entry, validated; name points into the cJSON tree. */
typedef struct entry_info {
    const char *name;
    int ndim;
    int shape[QKV_MAX_DIMS];
    size_t n;
    uint64_t begin, end; /* bytes into the data buffer */
} entry_info;

/* *out = v if v is an integer in [0, max]; NaN and infinities fail. */
static int json_uint(const cJSON *v, double max, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= max) || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

/* Finds the three keys of tensor name's entry item, refusing any other key,
 * a key given twice and a missing one. */
static int entry_fields(const char *path, const char *name, const cJSON *item,
                        const cJSON **dtype, const cJSON **shape,
                        const cJSON **offs, qkv_st_error *err) {
    *dtype = *shape = *offs = NULL;
    for (const cJSON *c = item->child; c; c = c->next) {
        const cJSON **slot = strcmp(c->string, "dtype") == 0          ? dtype
                             : strcmp(c->string, "shape") == 0        ? shape
                             : strcmp(c->string, "data_offsets") == 0 ? offs
                                                                      : NULL;
        if (!slot)
            return fail(err, path,
                        "tensor " NAME_FMT ": unexpected key '%.40s'", name,
                        c->string);
        if (*slot)
            return fail(err, path,
                        "tensor " NAME_FMT ": key '%s' appears twice", name,
                        c->string);
        *slot = c;
    }
    if (!*dtype || !*shape || !*offs)
        return fail(err, path, "tensor " NAME_FMT ": missing \"%s\"", name,
                    !*dtype   ? "dtype"
                    : !*shape ? "shape"
                              : "data_offsets");
    return 0;
}

/* t->ndim, t->shape and t->n from the JSON array shape; *bytes = the size of
 * the tensor as F32. Refuses more than QKV_MAX_DIMS dimensions, a dimension
 * that is not an int from 0 up, and sizes that overflow. */
static int parse_shape(const char *path, const cJSON *shape, entry_info *t,
                       size_t *bytes, qkv_st_error *err) {
    const char *name = t->name;
    if (!cJSON_IsArray(shape))
        return fail(err, path, "tensor " NAME_FMT ": shape is not an array",
                    name);
    t->ndim = 0;
    memset(t->shape, 0, sizeof t->shape); /* dimensions past ndim read 0 */
    size_t n = 1;
    for (const cJSON *c = shape->child; c; c = c->next) {
        if (t->ndim == QKV_MAX_DIMS)
            return fail(err, path,
                        "tensor " NAME_FMT ": shape has %d dimensions "
                        "(qkv supports at most %d)",
                        name, cJSON_GetArraySize(shape), QKV_MAX_DIMS);
        uint64_t d;
        if (!json_uint(c, INT_MAX, &d))
            return fail(err, path,
                        "tensor " NAME_FMT ": shape[%d] is not an "
                        "integer from 0 to %d",
                        name, t->ndim, INT_MAX);
        t->shape[t->ndim++] = (int)d;
        if (!qkv_mul_size(n, (size_t)d, &n))
            return fail(err, path, "tensor " NAME_FMT ": shape overflows",
                        name);
    }
    if (!qkv_mul_size(n, sizeof(float), bytes))
        return fail(err, path, "tensor " NAME_FMT ": shape overflows", name);
    t->n = n;
    return 0;
}

/* t->begin and t->end from the JSON array offs: two integers, in order,
 * `bytes` apart (what t's shape needs) and inside the data buffer. */
static int parse_offsets(const char *path, const cJSON *offs, size_t bytes,
                         uint64_t data_size, entry_info *t, qkv_st_error *err) {
    const char *name = t->name;
    char sbuf[64];
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_uint(offs->child, MAX_JSON_INT, &t->begin) ||
        !json_uint(offs->child->next, MAX_JSON_INT, &t->end))
        return fail(err, path,
                    "tensor " NAME_FMT ": data_offsets is not two "
                    "non-negative integers",
                    name);
    if (t->begin > t->end)
        return fail(err, path,
                    "tensor " NAME_FMT ": data_offsets [%llu, %llu] "
                    "end before they begin",
                    name, (unsigned long long)t->begin,
                    (unsigned long long)t->end);
    if (t->end - t->begin != bytes)
        return fail(err, path,
                    "tensor " NAME_FMT ": data_offsets [%llu, %llu] "
                    "hold %llu bytes but shape %s needs %zu bytes of F32",
                    name, (unsigned long long)t->begin,
                    (unsigned long long)t->end,
                    (unsigned long long)(t->end - t->begin),
                    qkv_dims_str(t->ndim, t->shape, sbuf), bytes);
    if (t->end > data_size)
        return fail(err, path,
                    "tensor " NAME_FMT ": data_offsets [%llu, %llu] "
                    "go beyond the data buffer (%llu bytes)",
                    name, (unsigned long long)t->begin,
                    (unsigned long long)t->end, (unsigned long long)data_size);
    return 0;
}

/* *t = the header entry item of one tensor, validated: a non-empty name, an
 * object of exactly dtype F32, shape and data_offsets that agree and lie
 * within the data_size bytes of data. */
static int parse_entry(const char *path, const cJSON *item, uint64_t data_size,
                       entry_info *t, qkv_st_error *err) {
    const char *name = item->string;
    t->name = name;
    if (!*name) return fail(err, path, "a tensor has an empty name");
    if (!cJSON_IsObject(item))
        return fail(err, path,
                    "tensor " NAME_FMT ": entry is not a JSON object", name);
    const cJSON *dtype, *shape, *offs;
    if (entry_fields(path, name, item, &dtype, &shape, &offs, err)) return -1;
    if (!cJSON_IsString(dtype))
        return fail(err, path, "tensor " NAME_FMT ": dtype is not a string",
                    name);
    if (strcmp(dtype->valuestring, "F32") != 0)
        return fail(err, path,
                    "tensor " NAME_FMT ": dtype %.20s not supported; "
                    "qkv stores F32",
                    name, dtype->valuestring);
    size_t bytes = 0;
    if (parse_shape(path, shape, t, &bytes, err)) return -1;
    return parse_offsets(path, offs, bytes, data_size, t, err);
}

static int cmp_info_name(const void *a, const void *b) {
    return strcmp(((const entry_info *)a)->name, ((const entry_info *)b)->name);
}

static int cmp_info_offset(const void *a, const void *b) {
    const entry_info *x = *(const entry_info *const *)a,
                     *y = *(const entry_info *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The tensors must tile [0, data_size) exactly: no holes, no overlaps, no
 * trailing bytes (the reference reader's rule). info is sorted by name. */
static int check_tiling(const char *path, entry_info *info, size_t count,
                        uint64_t data_size, qkv_st_error *err) {
    entry_info **by =
        qkv_malloc((count ? count : 1) * sizeof *by, "tensor order");
    for (size_t i = 0; i < count; i++) by[i] = &info[i];
    qsort(by, count, sizeof *by, cmp_info_offset);
    uint64_t at = 0;
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        if (by[i]->begin < at)
            rc = fail(err, path,
                      "tensors " NAME_FMT " and " NAME_FMT " overlap "
                      "(bytes [%llu, %llu) and [%llu, %llu))",
                      by[i - 1]->name, by[i]->name,
                      (unsigned long long)by[i - 1]->begin,
                      (unsigned long long)by[i - 1]->end,
                      (unsigned long long)by[i]->begin,
                      (unsigned long long)by[i]->end);
        else if (by[i]->begin > at)
            rc = fail(err, path,
                      "hole in the data buffer: bytes [%llu, %llu) "
                      "belong to no tensor",
                      (unsigned long long)at, (unsigned long long)by[i]->begin);
        at = by[i]->end;
    }
    if (rc == 0 && at != data_size)
        rc = fail(err, path,
                  "%llu trailing bytes after the last tensor (data "
                  "buffer %llu bytes, tensors cover %llu)",
                  (unsigned long long)(data_size - at),
                  (unsigned long long)data_size, (unsigned long long)at);
    free(by);
    return rc;
}

/* Validates the whole header; on success *info (count entries, sorted by
 * name, names pointing into root) and *meta (still inside root) are set. */
static int parse_header(const char *path, const cJSON *root, uint64_t data_size,
                        entry_info **info_out, size_t *count_out,
                        cJSON **meta_out, qkv_st_error *err) {
    if (!cJSON_IsObject(root))
        return fail(err, path, "header is not a JSON object");
    size_t count = 0, nmeta = 0;
    cJSON *meta = NULL;
    for (cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") != 0) {
            count++;
            continue;
        }
        if (meta) return fail(err, path, "\"__metadata__\" appears twice");
        meta = c;
        if (!cJSON_IsObject(meta))
            return fail(err, path, "\"__metadata__\" is not a JSON object");
        for (const cJSON *m = meta->child; m; m = m->next, nmeta++)
            if (!cJSON_IsString(m))
                return fail(err, path,
                            "\"__metadata__\" value of '%.100s' is "
                            "not a string",
                            m->string);
    }
    if (count > INT_MAX)
        return fail(err, path, "%zu tensors is too many", count);
    if (nmeta) {
        const char **keys = qkv_malloc(nmeta * sizeof *keys, "metadata keys");
        size_t i = 0;
        for (const cJSON *m = meta->child; m; m = m->next)
            keys[i++] = m->string;
        const char *dup = first_duplicate(keys, nmeta);
        int rc =
            dup ? fail(err, path,
                       "\"__metadata__\" key " NAME_FMT " appears twice", dup)
                : 0;
        free(keys);
        if (rc) return rc;
    }
    entry_info *info =
        qkv_malloc((count ? count : 1) * sizeof *info, "tensor entries");
    size_t i = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (c == meta) continue;
        if (parse_entry(path, c, data_size, &info[i++], err)) goto fail;
    }
    qsort(info, count, sizeof *info, cmp_info_name);
    for (i = 1; i < count; i++)
        if (strcmp(info[i - 1].name, info[i].name) == 0) {
            fail(err, path, "tensor " NAME_FMT " appears twice", info[i].name);
            goto fail;
        }
    if (check_tiling(path, info, count, data_size, err)) goto fail;
    *info_out = info;
    *count_out = count;
    *meta_out = meta;
    return 0;
fail:
    free(info);
    return -1;
}

/* *hlen = the JSON header's length from the file's first 8 bytes (fp at the
 * start of a file of fsize bytes), refused when 0, absurd or beyond the
 * file. */
static int read_header_length(const char *path, FILE *fp, uint64_t fsize,
                              uint64_t *hlen, qkv_st_error *err) {
    unsigned char lenb[8];
    if (fsize < 8)
        return fail(err, path,
                    "file is %llu bytes, too short for the 8-byte header "
                    "length (not a safetensors file, or truncated)",
                    (unsigned long long)fsize);
    if (fread(lenb, 1, 8, fp) != 8)
        return fail(err, path, "read error in the header length");
    *hlen = 0;
    for (int i = 7; i >= 0; i--) *hlen = *hlen << 8 | lenb[i];
    if (*hlen == 0)
        return fail(err, path, "header length is 0 (not a safetensors file)");
    if (*hlen > QKV_ST_MAX_HEADER)
        return fail(err, path,
                    "header length %llu is absurd (over %u bytes): not a "
                    "safetensors file",
                    (unsigned long long)*hlen, QKV_ST_MAX_HEADER);
    if (*hlen > fsize - 8)
        return fail(err, path,
                    "header length %llu exceeds the file size %llu (not a "
                    "safetensors file, or truncated)",
                    (unsigned long long)*hlen, (unsigned long long)fsize);
    return 0;
}

/* Checks the hlen header bytes in hdr (NUL-terminated) as text: an object's
 * '{' first, UTF-8 without control bytes; then *root = their JSON parsed,
 * followed by nothing but whitespace. */
static int parse_header_text(const char *path, const char *hdr, uint64_t hlen,
                             cJSON **root, qkv_st_error *err) {
    if (hdr[0] != '{')
        return fail(err, path,
                    "header does not start with '{' (not a safetensors file)");
    size_t bad = bad_utf8_at((const unsigned char *)hdr, (size_t)hlen);
    if (bad < hlen)
        return fail(err, path,
                    "header byte %zu (0x%02x) is not valid UTF-8 JSON text",
                    bad, (unsigned char)hdr[bad]);
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!*root) {
        size_t at =
            end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;
        return fail(err, path,
                    "header is not valid JSON (error near byte %zu of %llu)",
                    at, (unsigned long long)hlen);
    }
    for (; end < hdr + hlen; end++)
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')
            return fail(err, path,
                        "unexpected bytes after the JSON header (byte %zu)",
                        (size_t)(end - hdr));
    return 0;
}

/* f's count tensors from info (validated by parse_header): names, shapes
 * and data read from fp, whose data buffer starts at byte data_start. */
static int read_tensors(const char *path, FILE *fp, uint64_t data_start,
                        const entry_info *info, size_t count, qkv_st_file *f,
                        qkv_st_error *err) {
    /* Valid: every tensor lies inside the file, so the allocations below add
     * up to less than the file size. */
    f->tensors = qkv_calloc(count ? count : 1, sizeof *f->tensors, "tensors");
    f->count = (int)count;
    for (size_t i = 0; i < count; i++) {
        qkv_st_tensor *t = &f->tensors[i];
        t->name = qkv_strdup(info[i].name, "tensor name");
        t->ndim = info[i].ndim;
        memcpy(t->shape, info[i].shape, sizeof t->shape);
        t->n = info[i].n;
        t->data = qkv_malloc_aligned(t->n * sizeof(float), "tensor data");
        if (t->n == 0) continue;
        if (fseeko(fp, (off_t)(data_start + info[i].begin), SEEK_SET) != 0 ||
            fread(t->data, sizeof(float), t->n, fp) != t->n)
            return fail(err, path,
                        "read error in tensor " NAME_FMT " (file changed "
                        "while reading?)",
                        t->name);
        if (!host_is_little_endian()) swap_bytes32(t->data, t->n);
    }
    return 0;
}

int qkv_st_read(const char *path, qkv_st_file *f, qkv_st_error *err) {
    memset(f, 0, sizeof *f);
    char why[512];
    uint64_t fsize, hlen = 0;
    FILE *fp = qkv_fopen_file(path, 0, &fsize, why, sizeof why);
    if (!fp) { /* why names the path already */
        if (err) snprintf(err->msg, sizeof err->msg, "%s", why);
        return -1;
    }
    char *hdr = NULL;
    cJSON *root = NULL, *meta = NULL;
    entry_info *info = NULL;
    size_t count = 0;
    int rc = -1;
    /* The tensors are read whole: a file larger than the memory this
     * process may use is refused before any of it is allocated. */
    if (fsize > qkv_memory_limit()) {
        char a[32], b[32];
        fail(err, path,
             "the file is %s, more than the %s of memory qkv may use",
             qkv_bytes_str((double)fsize, a),
             qkv_bytes_str((double)qkv_memory_limit(), b));
        goto out;
    }
    if (read_header_length(path, fp, fsize, &hlen, err)) goto out;
    hdr = qkv_malloc((size_t)hlen + 1, "safetensors header");
    if (fread(hdr, 1, (size_t)hlen, fp) != hlen) {
        fail(err, path, "read error in the header");
        goto out;
    }
    hdr[hlen] = '\0';
    const uint64_t data_start = 8 + hlen;
    if (parse_header_text(path, hdr, hlen, &root, err) ||
        parse_header(path, root, fsize - data_start, &info, &count, &meta,
                     err) ||
        read_tensors(path, fp, data_start, info, count, f, err))
        goto out;
    if (meta) f->metadata = cJSON_DetachItemViaPointer(root, meta);
    rc = 0;
out:
    if (rc) qkv_st_free(f);
    cJSON_Delete(root);
    free(info);
    free(hdr);
    fclose(fp);
    return rc;
}

static int cmp_find(const void *key, const void *t) {
    return strcmp(key, ((const qkv_st_tensor *)t)->name);
}

const qkv_st_tensor *qkv_st_find(const qkv_st_file *f, const char *name) {
    if (!f->count) return NULL;
    return bsearch(name, f->tensors, (size_t)f->count, sizeof *f->tensors,
                   cmp_find);
}

const char *qkv_st_meta(const qkv_st_file *f, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(f->metadata, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

void qkv_st_free(qkv_st_file *f) {
    for (int i = 0; i < f->count; i++) {
        free(f->tensors[i].name);
        free(f->tensors[i].data);
    }
    free(f->tensors);
    cJSON_Delete(f->metadata);
    memset(f, 0, sizeof *f);
}

/* Appends to a message being built in buf (cap bytes); ends it with "..." once
 * it no longer fits. */
static void append(char *buf, size_t cap, const char *fmt, ...)
    QKV_PRINTF(3, 4);
static void append(char *buf, size_t cap, const char *fmt, ...) {
    size_t k = strlen(buf);
    if (k + 4 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + k, cap - k, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= cap - k) strcpy(buf + cap - 4, "...");
}

/* The separator before the next item of a list section in a message. */
static const char *lead(int *k, const char *msg, const char *heading,
                        char *buf /* 64 */) {
    if ((*k)++) return ", ";
    snprintf(buf, 64, "%s%s", *msg ? "; " : "", heading);
    return buf;
}

int qkv_st_check_params(const qkv_st_file *f, const qkv_params *ps,
                        const char *path, qkv_st_error *err) {
    char msg[400] = "", h[64], a[64], b[64];
    int k = 0;
    for (int i = 0; i < ps->count; i++)
        if (!qkv_st_find(f, ps->list[i]->name))
            append(msg, sizeof msg, "%s%.80s",
                   lead(&k, msg, "missing from the file: ", h),
                   ps->list[i]->name);
    k = 0;
    for (int i = 0; i < f->count; i++)
        if (!qkv_params_find(ps, f->tensors[i].name))
            append(msg, sizeof msg, "%s%.80s",
                   lead(&k, msg, "not in the model: ", h), f->tensors[i].name);
    k = 0;
    for (int i = 0; i < ps->count; i++) {
        const qkv_tensor *p = ps->list[i];
        const qkv_st_tensor *t = qkv_st_find(f, p->name);
        if (t &&
            (t->ndim != p->ndim ||
             memcmp(t->shape, p->shape, (size_t)p->ndim * sizeof(int)) != 0))
            append(msg, sizeof msg,
                   "%s%.80s is %s in the file but %s in the model",
                   lead(&k, msg, "shape mismatch: ", h), p->name,
                   qkv_dims_str(t->ndim, t->shape, a),
                   qkv_dims_str(p->ndim, p->shape, b));
    }
    if (*msg) return fail(err, path, "does not match the model: %s", msg);
    return 0;
}

int qkv_st_load_params(const qkv_st_file *f, qkv_params *ps, const char *path,
                       qkv_st_error *err) {
    QKV_CHECK(ps->values || ps->count == 0,
              "st_load_params: parameter store not allocated");
    if (qkv_st_check_params(f, ps, path, err)) return -1;
    for (int i = 0; i < ps->count; i++) {
        const qkv_st_tensor *t = qkv_st_find(f, ps->list[i]->name);
        memcpy(ps->list[i]->data, t->data, t->n * sizeof(float));
    }
    qkv_params_touch(ps);
    return 0;
}
