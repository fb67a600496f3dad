/* test.h - a minimal test harness: each case prints one line,
 * "PASS prog/case" or "FAIL prog/case: why", and main returns non-zero if any
 * case failed. tests/run.sh totals the lines.
 *
 *   static void test_add(void) { CHECK(1 + 1 == 2, "arithmetic"); }
 *   int main(void) { RUN(test_add); return test_summary(); }
 */
#ifndef QKV_TEST_H
#define QKV_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *test_prog = "test";
static int test_failures_case; /* failed checks in the running case */
static int test_cases_failed;

/* Records a failed check (first few per case are printed). */
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            if (test_failures_case++ < 5) {                                    \
                fprintf(stdout, "  check failed at %s:%d: ", __FILE__,         \
                        __LINE__);                                             \
                fprintf(stdout, __VA_ARGS__);                                  \
                fputc('\n', stdout);                                           \
            }                                                                  \
        }                                                                      \
    } while (0)

/* |a - b| <= tol, with a message showing both values. */
#define CHECK_NEAR(a, b, tol, what)                                            \
    CHECK(fabs((double)(a) - (double)(b)) <= (tol),                            \
          "%s: %.9g vs %.9g (tol %g)", what, (double)(a), (double)(b),         \
          (double)(tol))

#define RUN(fn) test_run(#fn, fn)

static void test_run(const char *name, void (*fn)(void)) {
    test_failures_case = 0;
    fn();
    if (strncmp(name, "test_", 5) == 0) name += 5;
    if (test_failures_case) {
        printf("FAIL %s/%s: %d check(s) failed\n", test_prog, name,
               test_failures_case);
        test_cases_failed++;
    } else {
        printf("PASS %s/%s\n", test_prog, name);
    }
    fflush(stdout);
}

static int test_summary(void) {
    return test_cases_failed ? 1 : 0;
}

#endif
