#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void qkv_fatal_at(const char *file, int line, const char *fmt, ...) {
    const char *base = strrchr(file, '/');
    fprintf(stderr, "qkv: %s:%d: ", base ? base + 1 : file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    exit(1);
}

static const char *program = ""; /* "train: " once the CLI says so */

void qkv_set_program(const char *name) {
    static char buf[64];
    snprintf(buf, sizeof buf, "%.50s: ", name ? name : "");
    program = name && *name ? buf : "";
}

static QKV_NORETURN void oom(size_t bytes, const char *what) {
    fprintf(stderr,
            "qkv: %sout of memory allocating %zu bytes for %s (more than "
            "this machine or its limits give)\n",
            program, bytes, what);
    exit(2);
}

void *qkv_malloc(size_t bytes, const char *what) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) oom(bytes, what);
    return p;
}

void *qkv_calloc(size_t count, size_t size, const char *what) {
    size_t bytes;
    if (!qkv_mul_size(count, size, &bytes)) oom(SIZE_MAX, what);
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) oom(bytes, what);
    return p;
}

void *qkv_malloc_aligned(size_t bytes, const char *what) {
    size_t rounded;
    if (!qkv_add_size(bytes, 63, &rounded)) oom(SIZE_MAX, what);
    rounded &= ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) oom(bytes, what);
    return p;
}

void *qkv_realloc(void *p, size_t bytes, const char *what) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) oom(bytes, what);
    return q;
}

double qkv_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

char *qkv_strdup(const char *s, const char *what) {
    size_t n = strlen(s) + 1;
    return memcpy(qkv_malloc(n, what), s, n);
}

int qkv_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Length (1..4) of the valid UTF-8 sequence at s[0..n), or 0 if s does not
 * start one. The second-byte ranges are Unicode's table 3-7 (well-formed
 * byte sequences); they exclude overlongs, surrogates and > U+10FFFF. */
size_t qkv_utf8_seq(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0; /* below: overlong */
        if (c == 0xED) hi = 0x9F; /* above: surrogates D800..DFFF */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90; /* below: overlong */
        if (c == 0xF4) hi = 0x8F; /* above: > U+10FFFF */
    } else {
        return 0; /* continuation byte, C0/C1 (overlong), F5..FF */
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

size_t qkv_utf8_check(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t len = qkv_utf8_seq((const char *)u + i, n - i);
        if (!len) return i;
        i += len;
    }
    return n;
}
