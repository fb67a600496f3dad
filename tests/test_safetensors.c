/* safetensors checkpoints: round trips, the exact bytes written, every
 * validation failure on crafted files, truncation, byte-flip fuzzing, and
 * atomic writes. Files live in a mkdtemp directory removed at the end. */
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcg.h"
#include "safetensors.h"
#include "test.h"

static void write_bytes(const char *path, const void *bytes, size_t len) {
    FILE *fp = fopen(path, "wb");
    QKV_CHECK(fp, "cannot create %s", path);
    QKV_CHECK(fwrite(bytes, 1, len, fp) == len && fclose(fp) == 0,
              "cannot write %s", path);
}

static unsigned char *read_bytes(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    QKV_CHECK(fp, "cannot open %s", path);
    unsigned char *b = qkv_malloc(1 << 20, "file copy");
    *len = fread(b, 1, 1 << 20, fp);
    fclose(fp);
    return b;
}

/* An 8-byte little-endian header length, the JSON, then dlen data bytes. */
static void write_crafted(const char *path, const char *json, size_t dlen) {
    size_t jlen = strlen(json);
    unsigned char *b = qkv_calloc(8 + jlen + dlen, 1, "crafted file");
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)jlen >> (8 * i));
    memcpy(b + 8, json, jlen);
    write_bytes(path, b, 8 + jlen + dlen);
    free(b);
}

/* qkv_st_read refuses path with a one-line message naming it and containing
 * `words`; the file struct is left empty. */
static void expect_refused(const char *path, const char *words) {
    qkv_st_file f;
    qkv_st_error err = {{0}};
    int rc = qkv_st_read(path, &f, &err);
    CHECK(rc == -1, "%s accepted (want \"%s\")", path, words);
    if (rc == 0) {
        qkv_st_free(&f);
        return;
    }
    CHECK(strstr(err.msg, words), "message \"%s\" lacks \"%s\"", err.msg,
          words);
    CHECK(strncmp(err.msg, path, strlen(path)) == 0,
          "message \"%s\" does not name the file", err.msg);
    CHECK(!strchr(err.msg, '\n'), "message spans lines: %s", err.msg);
    CHECK(f.count == 0 && !f.tensors && !f.metadata,
          "file struct not left empty");
}

static void expect_crafted_refused(const char *json, size_t dlen,
                                   const char *words) {
    const char *p = test_path("crafted.safetensors");
    write_crafted(p, json, dlen);
    expect_refused(p, words);
}

static int same_bits(const float *a, const float *b, size_t n) {
    return n == 0 || memcmp(a, b, n * sizeof *a) == 0;
}

/* ------------------------------------------------------------ round trips */

static void test_round_trip(void) {
    float a[6] = {1, -2, 3.5f, 0, -0.0f, 1e-30f}, s = 42.25f, v[7], w[12];
    a[3] = NAN;
    v[0] = INFINITY;
    for (int i = 1; i < 7; i++) v[i] = (float)i / 7;
    for (int i = 0; i < 12; i++) w[i] = (float)(i * i) - 20;
    const qkv_st_entry e[5] = {
        {"a", a, 2, {2, 3}},
        {"scalar", &s, 0, {0}},
        {"enc.layers.0.w", w, 4, {2, 1, 3, 2}},
        {"empty", NULL, 2, {0, 5}},
        {"v", v, 1, {7}},
    };
    const char *keys[3] = {"step", "config", "note"};
    const char *vals[3] = {"12", "{\"N\": 2, \"h\": 4}",
                           "h\xc3\xa9llo \xe2\x9c\x93"};
    const char *p = test_path("round.safetensors");
    qkv_st_error err = {{0}};
    int rc = qkv_st_write(p, e, 5, keys, vals, 3, &err);
    CHECK(rc == 0, "write: %s", err.msg);

    size_t len;
    unsigned char *b = read_bytes(p, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    CHECK(hlen % 8 == 0, "header length %llu not a multiple of 8",
          (unsigned long long)hlen);
    CHECK(len == 8 + hlen + (6 + 1 + 12 + 0 + 7) * 4, "file size %zu", len);
    free(b);

    qkv_st_file f;
    rc = qkv_st_read(p, &f, &err);
    CHECK(rc == 0, "read: %s", err.msg);
    if (rc) return;
    CHECK(f.count == 5, "%d tensors", f.count);
    for (int i = 0; i < 5; i++) {
        const qkv_st_tensor *t = qkv_st_find(&f, e[i].name);
        CHECK(t, "tensor %s missing", e[i].name);
        if (!t) continue;
        size_t n = 1;
        for (int d = 0; d < e[i].ndim; d++) n *= (size_t)e[i].shape[d];
        CHECK(t->ndim == e[i].ndim && t->n == n, "%s: ndim %d n %zu", e[i].name,
              t->ndim, t->n);
        for (int d = 0; d < e[i].ndim; d++)
            CHECK(t->shape[d] == e[i].shape[d], "%s: shape[%d] = %d", e[i].name,
                  d, t->shape[d]);
        CHECK(same_bits(t->data, e[i].data, n), "%s: values differ", e[i].name);
        CHECK(((uintptr_t)t->data & 63) == 0, "%s: data not 64-byte aligned",
              e[i].name);
    }
    CHECK(!qkv_st_find(&f, "nope"), "found a tensor that is not there");
    for (int i = 0; i < 3; i++) {
        const char *m = qkv_st_meta(&f, keys[i]);
        CHECK(m && strcmp(m, vals[i]) == 0, "metadata %s = %s", keys[i],
              m ? m : "(NULL)");
    }
    CHECK(!qkv_st_meta(&f, "absent") && !qkv_st_meta(&f, "STEP"),
          "absent metadata found");
    qkv_st_free(&f);
    qkv_st_free(&f); /* idempotent */

    /* No tensors, no metadata: "{}" padded to 8 bytes. */
    p = test_path("empty.safetensors");
    rc = qkv_st_write(p, NULL, 0, NULL, NULL, 0, &err);
    CHECK(rc == 0, "write empty: %s", err.msg);
    rc = qkv_st_read(p, &f, &err);
    CHECK(rc == 0 && f.count == 0 && !f.metadata, "read empty: %s", err.msg);
    CHECK(!qkv_st_meta(&f, "step") && !qkv_st_find(&f, "a"),
          "empty file has content");
    qkv_st_free(&f);
}

/* The exact bytes: readers elsewhere (numpy, PyTorch) see the same thing on
 * any host. */
static void test_exact_bytes(void) {
    const float one = 1.0f, two[2] = {-2.0f, 0.5f};
    const qkv_st_entry e[2] = {{"x", &one, 0, {0}}, {"y", two, 1, {2}}};
    const char *k[1] = {"k"}, *v[1] = {"v"};
    const char *p = test_path("exact.safetensors");
    qkv_st_error err;
    CHECK(qkv_st_write(p, e, 2, k, v, 1, &err) == 0, "write: %s", err.msg);
    const char *json =
        "{\"__metadata__\":{\"k\":\"v\"},"
        "\"x\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
    size_t jlen = strlen(json), padded = (jlen + 7) / 8 * 8, len;
    unsigned char want[256] = {(unsigned char)padded};
    memcpy(want + 8, json, jlen);
    memset(want + 8 + jlen, ' ', padded - jlen);
    const unsigned char data[12] = {0, 0,    0x80, 0x3f, 0, 0,
                                    0, 0xc0, 0,    0,    0, 0x3f};
    memcpy(want + 8 + padded, data, 12);
    unsigned char *got = read_bytes(p, &len);
    CHECK(len == 8 + padded + 12 && memcmp(got, want, len) == 0,
          "bytes differ (%zu vs %zu): %.*s", len, 8 + padded + 12,
          (int)(len > 8 ? len - 8 : 0), got + 8);
    free(got);
}

/* Files from other writers: unpadded header, whitespace, any key order,
 * metadata last, zero-size tensors anywhere. */
static void test_other_writers(void) {
    const char *p = test_path("other.safetensors");
    write_crafted(p,
                  "{ \"b\" : {\"data_offsets\": [4, 12], \"shape\": [1, 2], "
                  "\"dtype\": \"F32\"},\n"
                  "\t\"z\": {\"dtype\": \"F32\", \"shape\": [3, 0], "
                  "\"data_offsets\": [12, 12]},\r\n"
                  "  \"a\": {\"shape\": [], \"dtype\": \"F32\", "
                  "\"data_offsets\": [0, 4]},"
                  "  \"__metadata__\": {\"format\": \"pt\"}}  \n ",
                  12);
    qkv_st_file f;
    qkv_st_error err;
    int rc = qkv_st_read(p, &f, &err);
    CHECK(rc == 0, "read: %s", err.msg);
    if (rc) return;
    CHECK(f.count == 3 && strcmp(f.tensors[0].name, "a") == 0 &&
              strcmp(f.tensors[2].name, "z") == 0,
          "tensors not sorted by name");
    const qkv_st_tensor *b = qkv_st_find(&f, "b"), *z = qkv_st_find(&f, "z");
    CHECK(b && b->ndim == 2 && b->n == 2 && b->data[0] == 0, "tensor b");
    CHECK(z && z->ndim == 2 && z->n == 0 && z->shape[0] == 3, "tensor z");
    const char *m = qkv_st_meta(&f, "format");
    CHECK(m && strcmp(m, "pt") == 0, "metadata format");
    qkv_st_free(&f);
}

/* A store with names, shapes and PCG-random values. */
static void make_params(qkv_params *ps, int variant) {
    qkv_params_init(ps);
    qkv_params_add(ps, "embed.weight", 2, (int[]){10, 8});
    qkv_params_add(ps, variant ? "dec.w_q" : "enc.w_q", 2,
                   (int[]){8, variant ? 4 : 8});
    qkv_params_add(ps, "norm.gamma", 1, (int[]){8});
    qkv_params_add(ps, "scale", 0, NULL);
    qkv_params_alloc(ps);
}

static void fill(qkv_params *ps, uint64_t seed) {
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, seed, 1);
    for (size_t i = 0; i < ps->n; i++) ps->values[i] = qkv_pcg32_normal(&r);
}

static void test_params_round_trip(void) {
    qkv_params a, b;
    make_params(&a, 0);
    make_params(&b, 0);
    fill(&a, 1);
    const char *keys[2] = {"step", "seed"}, *vals[2] = {"100", "1"};
    const char *p = test_path("params.safetensors");
    qkv_st_error err;
    /* Twice: the second write replaces the first atomically. */
    CHECK(qkv_st_write_params(p, &b, keys, vals, 2, &err) == 0, "write: %s",
          err.msg);
    CHECK(qkv_st_write_params(p, &a, keys, vals, 2, &err) == 0, "rewrite: %s",
          err.msg);
    CHECK(test_dir_count(".tmp.") == 0, "temporary files left behind");
    qkv_st_file f;
    int rc = qkv_st_read(p, &f, &err);
    CHECK(rc == 0, "read: %s", err.msg);
    if (rc == 0) {
        rc = qkv_st_load_params(&f, &b, p, &err);
        CHECK(rc == 0, "load: %s", err.msg);
        CHECK(memcmp(a.values, b.values, a.n * sizeof(float)) == 0,
              "values differ");
        CHECK(qkv_st_meta(&f, "step") &&
                  strcmp(qkv_st_meta(&f, "step"), "100") == 0,
              "step");
        qkv_st_free(&f);
    }
    qkv_params_free(&a);
    qkv_params_free(&b);
}

static void test_params_mismatch(void) {
    qkv_params a, b;
    make_params(&a, 0);
    make_params(&b, 1); /* enc.w_q (8,8) replaced by dec.w_q (8,4) */
    fill(&a, 2);
    const char *p = test_path("mismatch.safetensors");
    qkv_st_error err;
    qkv_st_file f;
    CHECK(qkv_st_write_params(p, &a, NULL, NULL, 0, &err) == 0, "write: %s",
          err.msg);
    CHECK(qkv_st_read(p, &f, &err) == 0, "read: %s", err.msg);
    CHECK(qkv_st_load_params(&f, &b, p, &err) == -1, "mismatched store loaded");
    CHECK(strstr(err.msg, p) &&
              strstr(err.msg, "missing from the file: dec.w_q") &&
              strstr(err.msg, "not in the model: enc.w_q"),
          "message: %s", err.msg);
    for (size_t i = 0; i < b.n; i++)
        CHECK(b.values[i] == 0, "store changed by a refused load");
    qkv_params_free(&b);

    /* Same names, one shape differs. */
    qkv_params_init(&b);
    qkv_params_add(&b, "embed.weight", 2, (int[]){8, 10});
    qkv_params_add(&b, "enc.w_q", 2, (int[]){8, 8});
    qkv_params_add(&b, "norm.gamma", 1, (int[]){8});
    qkv_params_add(&b, "scale", 1, (int[]){1});
    qkv_params_alloc(&b);
    CHECK(qkv_st_load_params(&f, &b, p, &err) == -1, "wrong shapes loaded");
    CHECK(strstr(err.msg, "shape mismatch: embed.weight is (10,8) in the file "
                          "but (8,10) in the model") &&
              strstr(err.msg, "scale is () in the file but (1) in the model") &&
              !strstr(err.msg, "missing"),
          "message: %s", err.msg);
    qkv_params_free(&b);
    qkv_st_free(&f);
    qkv_params_free(&a);
}

/* ------------------------------------------------------------ bad files */

#define T(shape, offs)                                                         \
    "{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":" offs "}"

static void test_bad_files(void) {
    expect_refused(test_path("does-not-exist"), "cannot open: No such file");
    expect_refused(test_dir, "not a regular file");

    const char *p = test_path("raw.safetensors");
    write_bytes(p, "", 0);
    expect_refused(p, "too short for the 8-byte header length");
    write_bytes(p, "\x05\0\0\0", 4);
    expect_refused(p, "file is 4 bytes");
    write_bytes(p, "\0\0\0\0\0\0\0\0{}", 10);
    expect_refused(p, "header length is 0");
    write_bytes(p, "\0\0\0\0\0\1\0\0{}", 10);
    expect_refused(p, "header length 1099511627776 is absurd");
    write_bytes(p, "\xe8\x03\0\0\0\0\0\0{}", 10);
    expect_refused(p, "header length 1000 exceeds the file size 10");
    /* Files from other programs. */
    write_bytes(
        p, "\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\1\0\0\0\1\x08\x06\0\0\0", 29);
    expect_refused(p, "not a safetensors file");
    write_bytes(p, "hello, world\n", 13);
    expect_refused(p, "not a safetensors file");
    write_bytes(p, "\x04\0\0\0\0\0\0\0abcd", 12);
    expect_refused(p, "does not start with '{' (not a safetensors file)");
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 5, 6);
    unsigned char junk[4096];
    for (int trial = 0; trial < 20; trial++) {
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (unsigned char)qkv_pcg32_next(&r);
        write_bytes(p, junk, sizeof junk);
        expect_refused(p, "not a safetensors file");
    }

    /* The header text. */
    expect_crafted_refused("[1, 2]", 0, "does not start with '{'");
    expect_crafted_refused("{\"a\": {\"dtype\": \"F32\",", 0,
                           "header is not valid JSON");
    expect_crafted_refused("{\"a\": 1,}", 0, "header is not valid JSON");
    expect_crafted_refused("{} x", 0, "unexpected bytes after the JSON header");
    write_bytes(p, "\3\0\0\0\0\0\0\0{}\0", 11);
    expect_refused(p, "header byte 2 (0x00) is not valid UTF-8");
    expect_crafted_refused("{\"a\xff\": 1}", 0,
                           "header byte 3 (0xff) is not valid UTF-8");
    expect_crafted_refused("{\"\xc0\xaf\": 1}", 0,
                           "not valid UTF-8"); /* overlong '/' */
    expect_crafted_refused("{\"\xed\xa0\x80\": 1}", 0,
                           "not valid UTF-8"); /* surrogate */
    char deep[4200] = "{\"a\":";
    for (int i = 0; i < 2000; i++) strcat(deep, "[");
    expect_crafted_refused(deep, 0, "header is not valid JSON");

    /* Tensor entries. */
    expect_crafted_refused("{\"a\": 5}", 0,
                           "tensor 'a': entry is not a JSON object");
    expect_crafted_refused("{\"a\": [\"F32\"]}", 0,
                           "tensor 'a': entry is not a JSON object");
    expect_crafted_refused("{\"\": " T("[1]", "[0,4]") "}", 4,
                           "a tensor has an empty name");
    expect_crafted_refused(
        "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
        "tensor 'a': missing \"dtype\"");
    expect_crafted_refused(
        "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4,
        "tensor 'a': missing \"shape\"");
    expect_crafted_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4,
                           "tensor 'a': missing \"data_offsets\"");
    expect_crafted_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], "
                           "\"data_offsets\": [0, 4], \"x\": 1}}",
                           4, "tensor 'a': unexpected key 'x'");
    expect_crafted_refused("{\"a\": {\"dtype\": \"F32\", \"dtype\": \"F16\", "
                           "\"shape\": [1], \"data_offsets\": [0, 4]}}",
                           4, "tensor 'a': key 'dtype' appears twice");
    expect_crafted_refused(
        "{\"a\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, "
        "4]}}",
        4, "tensor 'a': dtype F16 not supported; qkv stores F32");
    expect_crafted_refused("{\"a\": {\"dtype\": \"BF16\", \"shape\": [2], "
                           "\"data_offsets\": [0, 4]}}",
                           4, "dtype BF16 not supported");
    expect_crafted_refused(
        "{\"a\": {\"dtype\": 32, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
        "tensor 'a': dtype is not a string");

    /* Shapes. */
    expect_crafted_refused("{\"a\": " T("4", "[0,16]") "}", 16,
                           "tensor 'a': shape is not an array");
    expect_crafted_refused(
        "{\"a\": " T("[2,-1]", "[0,0]") "}", 0,
        "tensor 'a': shape[1] is not an integer from 0 to 2147483647");
    expect_crafted_refused("{\"a\": " T("[1.5]", "[0,4]") "}", 4,
                           "shape[0] is not an integer");
    expect_crafted_refused("{\"a\": " T("[\"2\"]", "[0,8]") "}", 8,
                           "shape[0] is not an integer");
    expect_crafted_refused("{\"a\": " T("[2147483648]", "[0,4]") "}", 4,
                           "shape[0] is not an integer");
    expect_crafted_refused(
        "{\"a\": " T("[1,1,1,1,1]", "[0,4]") "}", 4,
        "tensor 'a': shape has 5 dimensions (qkv supports at most 4)");
    expect_crafted_refused(
        "{\"a\": " T("[2147483647,2147483647,2147483647,2147483647]",
                     "[0,4]") "}",
        4, "tensor 'a': shape overflows");
    expect_crafted_refused(
        "{\"a\": " T("[2147483647,2147483647,2]", "[0,4]") "}", 4,
        "tensor 'a': shape overflows"); /* numel fits, bytes do not */

    /* Offsets. */
    expect_crafted_refused(
        "{\"a\": " T("[1]", "[4]") "}", 4,
        "tensor 'a': data_offsets is not two non-negative integers");
    expect_crafted_refused("{\"a\": " T("[1]", "[0,4,8]") "}", 4,
                           "is not two non-negative integers");
    expect_crafted_refused("{\"a\": " T("[1]", "[-4,0]") "}", 4,
                           "is not two non-negative integers");
    expect_crafted_refused("{\"a\": " T("[1]", "[0,4.5]") "}", 4,
                           "is not two non-negative integers");
    expect_crafted_refused("{\"a\": " T("[1]", "[0,\"4\"]") "}", 4,
                           "is not two non-negative integers");
    expect_crafted_refused("{\"a\": " T("[1]", "{\"0\":4}") "}", 4,
                           "is not two non-negative integers");
    expect_crafted_refused("{\"a\": " T("[1]", "[0,1e300]") "}", 4,
                           "is not two non-negative integers");
    expect_crafted_refused(
        "{\"a\": " T("[1]", "[8,4]") "}", 8,
        "tensor 'a': data_offsets [8, 4] end before they begin");
    expect_crafted_refused("{\"a\": " T("[1]", "[0,8]") "}", 8,
                           "tensor 'a': data_offsets [0, 8] hold 8 bytes but "
                           "shape (1) needs 4 bytes of F32");
    expect_crafted_refused(
        "{\"a\": " T("[4]", "[0,16]") "}", 8,
        "tensor 'a': data_offsets [0, 16] go beyond the data buffer (8 bytes)");
    expect_crafted_refused(
        "{\"a\": " T("[1]", "[9007199254740988,9007199254740992]") "}", 4,
        "go beyond the data buffer");

    /* Tiling of the data buffer. */
    expect_crafted_refused(
        "{\"a\": " T("[2]", "[0,8]") ", \"b\": " T("[2]", "[4,12]") "}", 12,
        "tensors 'a' and 'b' overlap (bytes [0, 8) and [4, 12))");
    expect_crafted_refused(
        "{\"a\": " T("[2]", "[0,8]") ", \"b\": " T("[2]", "[0,8]") "}", 8,
        "tensors 'a' and 'b' overlap");
    expect_crafted_refused(
        "{\"a\": " T("[1]", "[0,4]") ", \"b\": " T("[1]", "[8,12]") "}", 12,
        "hole in the data buffer: bytes [4, 8) belong to no tensor");
    expect_crafted_refused("{\"a\": " T("[1]", "[4,8]") "}", 8,
                           "hole in the data buffer: bytes [0, 4)");
    expect_crafted_refused("{\"a\": " T("[1]", "[0,4]") "}", 8,
                           "4 trailing bytes after the last tensor (data "
                           "buffer 8 bytes, tensors cover 4)");
    expect_crafted_refused("{}", 4, "4 trailing bytes");
    expect_crafted_refused(
        "{\"a\": " T("[1]", "[0,4]") ", \"a\": " T("[1]", "[4,8]") "}", 8,
        "tensor 'a' appears twice");

    /* Metadata. */
    expect_crafted_refused("{\"__metadata__\": 5}", 0,
                           "\"__metadata__\" is not a JSON object");
    expect_crafted_refused("{\"__metadata__\": [\"a\"]}", 0,
                           "\"__metadata__\" is not a JSON object");
    expect_crafted_refused("{\"__metadata__\": {\"step\": 12}}", 0,
                           "\"__metadata__\" value of 'step' is not a string");
    expect_crafted_refused("{\"__metadata__\": {\"a\": null}}", 0,
                           "value of 'a' is not a string");
    expect_crafted_refused("{\"__metadata__\": {}, \"__metadata__\": {}}", 0,
                           "\"__metadata__\" appears twice");
    expect_crafted_refused("{\"__metadata__\": {\"k\": \"1\", \"k\": \"2\"}}",
                           0, "\"__metadata__\" key 'k' appears twice");

    /* Control bytes in names are not echoed into the one-line message. */
    expect_crafted_refused("{\"a\\nb\": 5}", 0,
                           "tensor 'a?b': entry is not a JSON object");
}

/* Every proper prefix of a valid file is refused. */
static void test_truncated(void) {
    const float a[3] = {1, 2, 3}, s = 4;
    const qkv_st_entry e[2] = {{"a", a, 1, {3}}, {"s", &s, 0, {0}}};
    const char *k[1] = {"step"}, *v[1] = {"7"};
    const char *good = test_path("trunc-src.safetensors"),
               *p = test_path("trunc.safetensors");
    qkv_st_error err;
    CHECK(qkv_st_write(good, e, 2, k, v, 1, &err) == 0, "write: %s", err.msg);
    size_t len;
    unsigned char *b = read_bytes(good, &len);
    CHECK(len > 100, "file of %zu bytes", len);
    int accepted = 0;
    for (size_t n = 0; n < len; n++) {
        write_bytes(p, b, n);
        qkv_st_file f;
        if (qkv_st_read(p, &f, &err) == 0) {
            accepted++;
            qkv_st_free(&f);
        }
    }
    CHECK(accepted == 0, "%d truncated copies accepted", accepted);
    expect_refused(p,
                   "go beyond the data buffer"); /* the last: one byte short */
    free(b);
}

/* Random byte flips never crash; a file that still loads is self-consistent. */
static void test_fuzz_flips(void) {
    const float a[6] = {1, 2, 3, 4, 5, 6}, s = 7;
    const qkv_st_entry e[3] = {
        {"w.a", a, 2, {2, 3}}, {"s", &s, 0, {0}}, {"z", NULL, 1, {0}}};
    const char *k[2] = {"step", "lr"}, *v[2] = {"7", "0.001"};
    const char *good = test_path("fuzz-src.safetensors"),
               *p = test_path("fuzz.safetensors");
    qkv_st_error err;
    CHECK(qkv_st_write(good, e, 3, k, v, 2, &err) == 0, "write: %s", err.msg);
    size_t len;
    unsigned char *b = read_bytes(good, &len),
                  *c = qkv_malloc(len, "fuzz copy");
    qkv_pcg32 r;
    qkv_pcg32_seed(&r, 2024, 7);
    int loaded = 0, refused = 0;
    const size_t json =
        len - 8 - 7 * sizeof(float); /* header bytes after the length */
    for (int it = 0; it < 3000; it++) {
        memcpy(c, b, len);
        int flips = 1 + (int)qkv_pcg32_bounded(&r, 3);
        for (int j = 0; j < flips; j++) {
            size_t at = qkv_pcg32_bounded(&r, (uint32_t)len);
            unsigned x = qkv_pcg32_bounded(&r, 255) + 1;
            switch (qkv_pcg32_bounded(&r, 4)) {
            case 0:
                c[at] ^= (unsigned char)x;
                break; /* anywhere */
            case 1:    /* a header byte becomes JSON punctuation */
                c[8 + at % json] = (unsigned char)"[]{}\",:-.e0 "[x % 12];
                break;
            default: /* a digit in the header becomes another: deep checks */
                for (size_t i = 0; i < json; i++) {
                    unsigned char *d = &c[8 + (at + i) % json];
                    if (*d >= '0' && *d <= '9') {
                        *d = (unsigned char)('0' + x % 10);
                        break;
                    }
                }
            }
        }
        write_bytes(p, c, len);
        qkv_st_file f;
        memset(err.msg, 0, sizeof err.msg);
        if (qkv_st_read(p, &f, &err) == 0) {
            loaded++;
            for (int i = 0; i < f.count; i++) {
                size_t n = 1;
                for (int d = 0; d < f.tensors[i].ndim; d++)
                    n *= (size_t)f.tensors[i].shape[d];
                CHECK(n == f.tensors[i].n && n <= len / 4,
                      "inconsistent tensor after flips");
            }
            qkv_st_free(&f);
        } else {
            refused++;
            CHECK(strncmp(err.msg, p, strlen(p)) == 0 &&
                      !strchr(err.msg, '\n') && strlen(err.msg) > strlen(p) + 2,
                  "bad message: %s", err.msg);
        }
    }
    CHECK(loaded > 0 && refused > 2000, "%d loaded, %d refused", loaded,
          refused);
    free(b);
    free(c);
}

/* ------------------------------------------------------------ atomic writes */

static void test_atomic_writes(void) {
    const float a[4] = {1, 2, 3, 4}, other[4] = {9, 9, 9, 9};
    qkv_st_entry e[2] = {{"a", a, 1, {4}}, {"b", other, 1, {4}}};
    qkv_st_error err;

    /* Into a directory that does not exist: fails cleanly, creates nothing. */
    const char *p = test_path("no-such-dir/x.safetensors");
    CHECK(qkv_st_write(p, e, 1, NULL, NULL, 0, &err) == -1,
          "wrote into a missing directory");
    CHECK(strstr(err.msg, p) && strstr(err.msg, "No such file or directory"),
          "message: %s", err.msg);
    struct stat st;
    CHECK(stat(test_path("no-such-dir"), &st) != 0, "directory created");

    const char *good = test_path("good.safetensors");
    CHECK(qkv_st_write(good, e, 1, NULL, NULL, 0, &err) == 0, "write: %s",
          err.msg);
    size_t len0, len1;
    unsigned char *before = read_bytes(good, &len0);

    /* The temporary file cannot be created (its name is taken by a directory).
     */
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", good, (long)getpid());
    CHECK(mkdir(tmp, 0700) == 0, "mkdir %s", tmp);
    e[0].data = other;
    CHECK(qkv_st_write(good, e, 1, NULL, NULL, 0, &err) == -1,
          "write succeeded");
    CHECK(strstr(err.msg, "cannot create the temporary file"), "message: %s",
          err.msg);
    CHECK(stat(tmp, &st) == 0 && S_ISDIR(st.st_mode),
          "someone else's temp path removed");
    rmdir(tmp);

    /* The disk fills mid-write (RLIMIT_FSIZE, EFBIG): temp removed, file
     * intact. */
    size_t big_n = 1 << 20;
    float *big = qkv_calloc(big_n, sizeof *big, "big tensor");
    qkv_st_entry be = {"big", big, 1, {(int)big_n}};
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1 << 16;
    fflush(stdout);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    int rc = qkv_st_write(good, &be, 1, NULL, NULL, 0, &err);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);
    CHECK(rc == -1 && strstr(err.msg, "write of") &&
              strstr(err.msg, "File too large"),
          "rc %d, message: %s", rc, err.msg);
    free(big);

    /* Bad entries are refused before anything is written. */
    e[1].name = "a";
    CHECK(qkv_st_write(good, e, 2, NULL, NULL, 0, &err) == -1 &&
              strstr(err.msg, "tensor name 'a' appears twice"),
          "duplicate: %s", err.msg);
    e[1].name = "__metadata__";
    CHECK(qkv_st_write(good, e, 2, NULL, NULL, 0, &err) == -1 &&
              strstr(err.msg, "bad name '__metadata__'"),
          "reserved name: %s", err.msg);
    e[1] = (qkv_st_entry){"c", other, 5, {1, 1, 1, 1}};
    CHECK(qkv_st_write(good, e, 2, NULL, NULL, 0, &err) == -1 &&
              strstr(err.msg, "tensor 'c' has 5 dimensions"),
          "ndim: %s", err.msg);
    e[1] = (qkv_st_entry){"c", NULL, 1, {4}};
    CHECK(qkv_st_write(good, e, 2, NULL, NULL, 0, &err) == -1 &&
              strstr(err.msg, "tensor 'c' has no data"),
          "NULL data: %s", err.msg);
    const char *k2[2] = {"k", "k"}, *v2[2] = {"1", "2"};
    CHECK(qkv_st_write(good, e, 1, k2, v2, 2, &err) == -1 &&
              strstr(err.msg, "metadata key 'k' appears twice"),
          "duplicate key: %s", err.msg);

    unsigned char *after = read_bytes(good, &len1);
    CHECK(len0 == len1 && memcmp(before, after, len0) == 0,
          "good file changed by failed writes");
    CHECK(test_dir_count(".tmp.") == 0, "temporary files left behind");
    free(before);
    free(after);
}

/* A save killed before its rename leaves PATH.tmp.<pid>: the next save
 * removes those of dead processes, and only those. */
static void test_stale_temporaries_removed(void) {
    const float a[4] = {1, 2, 3, 4};
    qkv_st_entry e = {"a", a, 1, {4}};
    qkv_st_error err;
    const char *path = test_path("stale.safetensors");
    pid_t dead = fork(); /* a process that has exited: its pid is free */
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char p_dead[400], p_live[400], p_other[400];
    snprintf(p_dead, sizeof p_dead, "%s.tmp.%ld", path, (long)dead);
    snprintf(p_live, sizeof p_live, "%s.tmp.1", path); /* init: alive */
    snprintf(p_other, sizeof p_other, "%s.tmpx.%ld", path, (long)dead);
    const char *made[3] = {p_dead, p_live, p_other};
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen(made[i], "w");
        if (f) fclose(f);
    }
    CHECK(qkv_st_write(path, &e, 1, NULL, NULL, 0, &err) == 0, "write: %s",
          err.msg);
    CHECK(access(p_dead, F_OK) != 0, "the dead writer's %s is still there",
          p_dead);
    CHECK(access(p_live, F_OK) == 0, "a live writer's %s was removed", p_live);
    CHECK(access(p_other, F_OK) == 0, "%s (not a temporary) was removed",
          p_other);
    unlink(p_live);
    unlink(p_other);
}

static void test_cleanup(void) {
    CHECK(test_dir_remove() == 0, "cannot remove %s", test_dir);
}

int main(void) {
    test_prog = "safetensors";
    test_dir_make("st");
    RUN(test_round_trip);
    RUN(test_exact_bytes);
    RUN(test_other_writers);
    RUN(test_params_round_trip);
    RUN(test_params_mismatch);
    RUN(test_bad_files);
    RUN(test_truncated);
    RUN(test_fuzz_flips);
    RUN(test_atomic_writes);
    RUN(test_stale_temporaries_removed);
    RUN(test_cleanup);
    return test_summary();
}
