/* The example programs of examples/, which use only the public API: they
 * build with `make`, run, and learn; and the first one builds again from an
 * installed copy of the library (make install PREFIX=tmp) through
 * `pkg-config --cflags --libs qkv`, as a program of the user's own would. */

#include <limits.h>
#include <unistd.h>

#include "test.h"

/* QUICK (test.h: sanitizers, valgrind): a few steps, no accuracy asserted.
 * SAN_FLAGS: make install's flags for the library as this test was built. */
#if defined(__SANITIZE_ADDRESS__)
#define SAN_FLAGS " SAN=1"
#else
#define SAN_FLAGS ""
#endif

static char build[PATH_MAX]; /* this test's build directory, e.g. build */
static char out[1 << 16];

static void find_build(void) {
    char self[PATH_MAX] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0) return;
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
    }
    snprintf(build, sizeof build, "%s", self);
}

static void test_copy_learns_and_decodes(void) {
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "%s/examples/copy %d", build, QUICK ? 10 : 600);
    int rc = test_shell(cmd, out, sizeof out);
    CHECK(rc == 0, "copy: exit %d: %s", rc, out);
    CHECK(strstr(out, "out:") != NULL, "copy: no decoded line: %s", out);
    if (QUICK) return;
    CHECK(strstr(out, "step  600") && strstr(out, "exact match 100.0%"),
          "copy: not 100%% exact match after 600 steps: %s", out);
    CHECK(strstr(out, "in:  3 9 4 4 10 2 7 5 8 6\nout: 3 9 4 4 10 2 7 5 8 6"),
          "copy: the decoded sequence is not a copy: %s", out);
}

static void test_corpus_learns(void) {
    char cmd[PATH_MAX + 160];
    snprintf(cmd, sizeof cmd,
             "%s/examples/corpus data/corpora/dates/train.tsv "
             "data/corpora/dates/test.tsv %d",
             build, QUICK ? 5 : 300);
    int rc = test_shell(cmd, out, sizeof out);
    CHECK(rc == 0, "corpus: exit %d: %s", rc, out);
    const char *m = strstr(out, "exact match");
    double exact = -1;
    CHECK(m && sscanf(m, "exact match %lf", &exact) == 1,
          "corpus: no exact match printed: %s", out);
    CHECK(strstr(out, "1000 pairs"), "corpus: not the 1000 test pairs: %s",
          out);
    if (!QUICK)
        CHECK(exact >= 30.0, "corpus: %.1f%% exact match after 300 steps",
              exact);
}

static void test_installed_copy_builds_with_pkg_config(void) {
    if (test_shell("pkg-config --version", out, sizeof out) != 0)
        SKIP("no pkg-config (apt-get install pkg-config)");
    char dir[64], cmd[3 * PATH_MAX];
    test_tmpdir(dir, sizeof dir, "install");
    /* the library as built (its flags: SAN=1 links the sanitizers) */
    snprintf(cmd, sizeof cmd,
             "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s BUILD=%s%s "
             "install PREFIX=%s",
             build, SAN_FLAGS, dir);
    int rc = test_shell(cmd, out, sizeof out);
    CHECK(rc == 0, "make install: exit %d: %s", rc, out);
    snprintf(cmd, sizeof cmd,
             "test -f %s/lib/libqkv.a && test -f %s/include/qkv/trainer.h && "
             "PKG_CONFIG_PATH=%s/lib/pkgconfig; export PKG_CONFIG_PATH; "
             "cc -std=c11 examples/copy.c $(pkg-config --cflags --libs qkv) "
             "-o %s/copy && %s/copy 200",
             dir, dir, dir, dir, dir);
    rc = test_shell(cmd, out, sizeof out);
    CHECK(rc == 0, "the installed copy: exit %d: %s", rc, out);
    CHECK(strstr(out, "step  200"), "the installed copy did not train: %s",
          out);
    CHECK(test_rmtree(dir) == 0, "cannot remove %s", dir);
}

int main(void) {
    test_prog = "examples";
    find_build();
    RUN(test_copy_learns_and_decodes);
    RUN(test_corpus_learns);
    RUN(test_installed_copy_builds_with_pkg_config);
    return test_summary();
}
