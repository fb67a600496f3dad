/* common.h - error checks and checked allocation shared by all of qkv.
 *
 * Three kinds of error (docs/STYLE.md, rule 5):
 *   - programmer errors (bad shapes, misuse): QKV_CHECK(cond, fmt, ...)
 *     stays on in release builds, prints "qkv: file:line: message" and exits
 *     with 1;
 *   - user input errors: functions return an error code and a message;
 *   - out of memory: qkv_malloc prints what it could not allocate and exits
 *     with 2, as for input too large for the machine (requests are sized
 *     up front where they can be: io.h, qkv_model_declare).
 *
 *   size_t n;
 *   QKV_CHECK(qkv_mul_size(rows, cols, &n), "matrix %zu x %zu overflows",
 *             rows, cols);
 *   float *x = qkv_malloc(n * sizeof *x, "activations");
 */
#ifndef QKV_COMMON_H
#define QKV_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define QKV_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define QKV_NORETURN     __attribute__((noreturn))
#else
#define QKV_PRINTF(f, a)
#define QKV_NORETURN
#endif

/* Prints "qkv: FILE:LINE: message" to stderr and exits with status 1. */
QKV_NORETURN void qkv_fatal_at(const char *file, int line, const char *fmt, ...)
    QKV_PRINTF(3, 4);

#define QKV_CHECK(cond, ...)                                                   \
    do {                                                                       \
        if (!(cond)) qkv_fatal_at(__FILE__, __LINE__, __VA_ARGS__);            \
    } while (0)

#define QKV_FATAL(...) qkv_fatal_at(__FILE__, __LINE__, __VA_ARGS__)

/* *out = a * b; returns 0 on size_t overflow (and leaves *out undefined). */
static inline int qkv_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
/* *out = a + b; returns 0 on overflow. */
static inline int qkv_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* malloc / calloc that never return NULL: on failure they print
 * "qkv: [PROGRAM: ]out of memory allocating N bytes for WHAT ..." and exit
 * with status 2. */
void *qkv_malloc(size_t bytes, const char *what);
void *qkv_calloc(size_t count, size_t size, const char *what);
/* Aligned to 64 bytes (one cache line, one AVX-512 register); free with free().
 */
void *qkv_malloc_aligned(size_t bytes, const char *what);
void *qkv_realloc(void *p, size_t bytes, const char *what);

/* A malloc'd copy of s (free() it); out of memory exits as qkv_malloc. */
char *qkv_strdup(const char *s, const char *what);

/* The library's one error convention for bad input: a function returns 0,
 * or -1 with one line (no newline) in err[errlen]. qkv_errf formats that
 * line and returns -1, so `return qkv_errf(err, errlen, "...", ...);`. */
int qkv_errf(char *err, size_t errlen, const char *fmt, ...) QKV_PRINTF(3, 4);

/* Returns n if s[0..n) is valid UTF-8, else the offset of the first byte of
 * the first invalid sequence. Strict (RFC 3629, Unicode table 3-7): rejects
 * stray continuation bytes, truncated sequences, overlong forms (C0, C1,
 * E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and code points above
 * U+10FFFF (F4 90.., F5..FF). U+0000 is valid UTF-8 (the loader rejects it
 * separately). */
size_t qkv_utf8_check(const char *s, size_t n);
/* Length (1..4) of the valid UTF-8 sequence at s[0..n), n > 0, or 0 if s
 * does not start one. */
size_t qkv_utf8_seq(const char *s, size_t n);

/* Names the command in the out-of-memory message ("train": "qkv: train:
 * out of memory ..."), as the CLI's own messages do. */
void qkv_set_program(const char *name);

/* Seconds on the monotonic clock (for timing; the origin is arbitrary). */
double qkv_seconds(void);

/* QKV_OMP(omp parallel for if (n > 4096)) - an OpenMP pragma that vanishes in
 * builds without OpenMP (so -Wunknown-pragmas stays quiet). */
#ifdef _OPENMP
#define QKV_OMP(x) _Pragma(#x)
#else
#define QKV_OMP(x)
#endif

#endif
