/* test_harness.c - test.h itself: QKV_TEST=TEXT runs only the cases whose
 * name holds TEXT. The program runs itself (/proc/self/exe) with the
 * variable set and reads what the child printed. */
#include "test.h"

static void test_one_and_two(void) {
    CHECK(1 + 1 == 2, "arithmetic");
}

static void test_one_and_three(void) {
    CHECK(1 + 2 == 3, "arithmetic");
}

/* Runs this program with QKV_TEST=only (NULL: unset) into *r. */
static void run_self(const char *only, test_proc *r) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    char *argv[] = {self, "--child", NULL};
    if (only)
        setenv("QKV_TEST", only, 1);
    else
        unsetenv("QKV_TEST");
    test_exec(argv, NULL, 0, 60, r);
    unsetenv("QKV_TEST");
}

static void test_filter(void) {
    static test_proc r;
    run_self("and_three", &r);
    CHECK(r.status == 0, "QKV_TEST=and_three: exit %d", r.status);
    CHECK(strcmp(r.out, "PASS harness/one_and_three\n") == 0,
          "QKV_TEST=and_three printed '%s'", r.out);
    run_self("one_and", &r);
    CHECK(strcmp(r.out, "PASS harness/one_and_two\n"
                        "PASS harness/one_and_three\n") == 0,
          "QKV_TEST=one_and printed '%s'", r.out);
    run_self("no such case", &r);
    CHECK(r.status == 0 && r.out[0] == 0,
          "QKV_TEST matching nothing: exit %d, printed '%s'", r.status, r.out);
    run_self(NULL, &r); /* unset, and empty below: every case */
    CHECK(strcmp(r.out, "PASS harness/one_and_two\n"
                        "PASS harness/one_and_three\n") == 0,
          "QKV_TEST unset printed '%s'", r.out);
    run_self("", &r);
    CHECK(strcmp(r.out, "PASS harness/one_and_two\n"
                        "PASS harness/one_and_three\n") == 0,
          "QKV_TEST empty printed '%s'", r.out);
}

int main(int argc, char **argv) {
    test_prog = "harness";
    RUN(test_one_and_two);
    RUN(test_one_and_three);
    if (argc == 2 && strcmp(argv[1], "--child") == 0) return test_summary();
    RUN(test_filter);
    return test_summary();
}
