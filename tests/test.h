/* test.h - a minimal test harness: each case prints one line,
 * "PASS prog/case" or "FAIL prog/case: why", and main returns non-zero if any
 * case failed. tests/run.sh totals the lines.
 *
 *   static void test_add(void) { CHECK(1 + 1 == 2, "arithmetic"); }
 *   int main(void) { RUN(test_add); return test_summary(); }
 */
#ifndef QKV_TEST_H
#define QKV_TEST_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* QUICK is 1 in the builds that run ~50x slower, the sanitizers' (make SAN=1)
 * and valgrind's (make valgrind: -DQKV_TEST_QUICK): learning cases there
 * train a few steps, a memory-safety pass over the same code paths, and
 * assert no accuracy; the normal build's `make test` asserts it. */
#if defined(__SANITIZE_ADDRESS__) || defined(QKV_TEST_QUICK)
#define QUICK 1
#else
#define QUICK 0
#endif

static const char *test_prog = "test";
static int test_failures_case; /* failed checks in the running case */
static int test_cases_failed;
static char test_skip_why[200]; /* set by SKIP in the running case */

/* Ends the running case as skipped (neither passed nor failed): the machine
 * lacks what it needs. Prints "SKIP prog/case: skipped: <reason>". */
#define SKIP(...)                                                              \
    do {                                                                       \
        snprintf(test_skip_why, sizeof test_skip_why, __VA_ARGS__);            \
        return;                                                                \
    } while (0)

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

/* QKV_TEST=TEXT in the environment runs only the cases whose name holds
 * TEXT (`QKV_TEST=amx build/tests/test_bf16`); the others print nothing and
 * count as neither passed nor failed. */
static void test_run(const char *name, void (*fn)(void)) {
    const char *only = getenv("QKV_TEST");
    if (only && *only && !strstr(name, only)) return;
    test_failures_case = 0;
    test_skip_why[0] = 0;
    fn();
    if (strncmp(name, "test_", 5) == 0) name += 5;
    if (test_skip_why[0] && !test_failures_case) {
        printf("SKIP %s/%s: skipped: %s\n", test_prog, name, test_skip_why);
    } else if (test_failures_case) {
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

/* ---- misuse tests: a fatal error must be one clear line and exit != 0 ----
 *
 *   static const test_misuse misuse[] = {
 *       {"matmul", bad_matmul, {"matmul", "(2,3)"}}};
 *   int main(int argc, char **argv) {
 *       if (test_die(argc, argv, misuse, 1)) return 0;   // the child's side
 *       ...  RUN(...);  test_misuse_all(misuse, 1);  ...
 *   }
 * Each case runs in a fresh process (`PROG --die NAME`, re-executed, so no
 * threads or state are inherited). */
typedef struct test_misuse {
    const char *name;
    void (*fn)(void);    /* must end the process with an error */
    const char *want[4]; /* strings the message must contain */
} test_misuse;

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define TEST_LEAKS_ARE_FINE() __lsan_disable()
#else
#define TEST_LEAKS_ARE_FINE() ((void)0)
#endif

/* The child's side: runs case NAME if argv is `--die NAME`; returns 1 if it
 * did (the misuse went unnoticed), 0 if argv asked for nothing. */
static inline int test_die(int argc, char **argv, const test_misuse *cases,
                           int n) {
    if (argc != 3 || strcmp(argv[1], "--die") != 0) return 0;
    for (int i = 0; i < n; i++)
        if (strcmp(argv[2], cases[i].name) == 0) {
            TEST_LEAKS_ARE_FINE(); /* it dies holding memory, on purpose */
            cases[i].fn();
        }
    return 1;
}

/* The parent's side: one check per case. */
static inline void test_expect_error(const char *name,
                                     const char *const *want) {
    char self[512] = {0}, cmd[1100], buf[1024] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0) {
        CHECK(0, "cannot find this program");
        return;
    }
    snprintf(cmd, sizeof cmd, "'%s' --die %s 2>&1 >/dev/null", self, name);
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) {
        CHECK(0, "popen %s", cmd);
        return;
    }
    size_t len = fread(buf, 1, sizeof buf - 1, p);
    buf[len] = 0;
    int status = pclose(p);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 0,
          "%s: expected a clean error exit, got status 0x%x", name, status);
    for (int i = 0; i < 4 && want[i]; i++)
        CHECK(strstr(buf, want[i]), "%s: message lacks \"%s\": %s", name,
              want[i], buf);
    char *nl = strchr(buf, '\n');
    CHECK(nl && nl[1] == 0, "%s: message is not exactly one line: %s", name,
          buf);
}

static inline void test_misuse_all(const test_misuse *cases, int n) {
    for (int i = 0; i < n; i++) test_expect_error(cases[i].name, cases[i].want);
}

/* ---- driving the qkv program, as a user would from the shell ---- */

/* Path of build/examples/qkv, next to this test's build directory. */
static inline void test_qkv_path(char *path, size_t cap) {
    char self[512] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) > 0) {
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
        snprintf(path, cap, "%s/../examples/qkv", self);
    }
}

/* Runs the shell command cmd, capturing stdout and stderr into out (cap
 * bytes, NUL-terminated); returns the exit status (-1 if it did not exit). */
static inline int test_shell(const char *cmd, char *out, size_t cap) {
    char full[8192];
    if (snprintf(full, sizeof full, "%s 2>&1", cmd) >= (int)sizeof full)
        return -1;
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    while (fgetc(p) != EOF) {
    } /* drain what did not fit */
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Runs `QKV ARGS` (QKV: the program's path, ARGS: shell words), capturing
 * stdout and stderr into out; returns the exit status. */
static inline int test_qkv(const char *qkv, const char *args, char *out,
                           size_t cap) {
    char cmd[3000];
    if (snprintf(cmd, sizeof cmd, "'%s' %s", qkv, args) >= (int)sizeof cmd)
        return -1;
    return test_shell(cmd, out, cap);
}

/* ---- running a program with limits, its output kept apart ---- */

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

/* BSD's wait4 (in glibc; hidden by _POSIX_C_SOURCE): waitpid plus the
 * child's own resource usage, peak memory included. */
pid_t wait4(pid_t pid, int *status, int options, struct rusage *usage);

typedef struct test_proc {
    int status;      /* exit status; 128 + N if killed by signal N */
    int timed_out;   /* killed (SIGKILL) after the time limit */
    double seconds;  /* wall clock */
    long max_rss_mb; /* peak resident memory */
    char out[16384]; /* stdout (the first 16 KB), NUL-terminated */
    char err[16384]; /* stderr (the first 16 KB), NUL-terminated */
} test_proc;

/* The first cap - 1 bytes of the file fd (rewound) into buf. */
static inline void test_read_fd(int fd, char *buf, size_t cap) {
    size_t n = 0;
    lseek(fd, 0, SEEK_SET);
    for (ssize_t k; n < cap - 1 && (k = read(fd, buf + n, cap - 1 - n)) > 0;)
        n += (size_t)k;
    buf[n] = 0;
}

/* Runs argv (argv[0] a path; no shell) with stdin from in_path (NULL:
 * /dev/null), its address space limited to as_mb MB (0: none; not under
 * AddressSanitizer, whose shadow memory needs terabytes of it) and its wall
 * time to secs seconds (then SIGKILL). Fills *r; returns r->status. */
static inline int test_exec(char *const argv[], const char *in_path, long as_mb,
                            double secs, test_proc *r) {
    memset(r, 0, sizeof *r);
    char names[2][32] = {"/tmp/qkv-out-XXXXXX", "/tmp/qkv-err-XXXXXX"};
    int fd[2] = {mkstemp(names[0]), mkstemp(names[1])};
    if (fd[0] < 0 || fd[1] < 0) return r->status = -1;
    unlink(names[0]);
    unlink(names[1]);
    fflush(stdout);
    double t0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t0 = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    pid_t pid = fork();
    if (pid == 0) {
        int in = open(in_path ? in_path : "/dev/null", O_RDONLY | O_NONBLOCK);
        if (in >= 0) {
            fcntl(in, F_SETFL, fcntl(in, F_GETFL) & ~O_NONBLOCK);
            dup2(in, 0);
        }
        dup2(fd[0], 1);
        dup2(fd[1], 2);
#ifndef TEST_ASAN
        if (as_mb > 0) {
            struct rlimit rl = {(rlim_t)as_mb << 20, (rlim_t)as_mb << 20};
            setrlimit(RLIMIT_AS, &rl);
        }
#else
        (void)as_mb;
#endif
        execv(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    for (;;) {
        pid_t w = wait4(pid, &st, WNOHANG, &ru);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        r->seconds = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec - t0;
        if (w == pid || w < 0) break;
        if (r->seconds > secs && !r->timed_out) {
            kill(pid, SIGKILL);
            r->timed_out = 1;
        }
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    }
    r->status = WIFEXITED(st)     ? WEXITSTATUS(st)
                : WIFSIGNALED(st) ? 128 + WTERMSIG(st)
                                  : -1;
    r->max_rss_mb = ru.ru_maxrss / 1024;
    test_read_fd(fd[0], r->out, sizeof r->out);
    test_read_fd(fd[1], r->err, sizeof r->err);
    close(fd[0]);
    close(fd[1]);
    return r->status;
}

/* 1 if text is exactly one line (one newline, at the end). */
static inline int test_one_line(const char *text) {
    const char *nl = strchr(text, '\n');
    return nl && nl[1] == 0 && nl > text;
}

/* ---- scratch directories for tests that write files ----
 *
 *   char dir[64];
 *   test_tmpdir(dir, sizeof dir, "plot");   // /tmp/qkv-plot-XXXXXX
 *   ...
 *   CHECK(test_rmtree(dir) == 0, "cannot remove %s", dir);
 * or, with one directory a program: test_dir_make("ckpt"), test_path("x"),
 * test_dir_remove(). */

/* Makes a fresh directory /tmp/qkv-TAG-XXXXXX (mkdtemp) in buf, of cap
 * bytes, or ends the program with a FAIL line; returns buf. */
static inline char *test_tmpdir(char *buf, size_t cap, const char *tag) {
    snprintf(buf, cap, "/tmp/qkv-%.20s-XXXXXX", tag);
    if (!mkdtemp(buf)) {
        printf("FAIL %s/setup: cannot make the directory %s: %s\n", test_prog,
               buf, strerror(errno));
        exit(1);
    }
    return buf;
}

/* Removes path and everything under it (rm -rf, without following links or
 * a shell); 0 on success. */
static inline int test_rmtree(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    chmod(path, 0700); /* a test may have left it read-only */
    DIR *d = opendir(path);
    int rc = d ? 0 : -1;
    for (struct dirent *e; d && (e = readdir(d));) {
        char sub[4096];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >=
            (int)sizeof sub)
            rc = -1;
        else if (test_rmtree(sub))
            rc = -1;
    }
    if (d) closedir(d);
    return rmdir(path) == 0 && rc == 0 ? 0 : -1;
}

static char test_dir[64]; /* "/tmp/qkv-NAME-XXXXXX" once made */

/* Makes test_dir (test_tmpdir) or exits. */
static inline void test_dir_make(const char *name) {
    test_tmpdir(test_dir, sizeof test_dir, name);
}

/* test_dir/name; the four most recent results stay valid. */
static inline const char *test_path(const char *name) {
    static char buf[4][400];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%.300s", test_dir, name);
    return p;
}

/* Files in test_dir whose name contains `part`. */
static inline int test_dir_count(const char *part) {
    DIR *d = opendir(test_dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += strstr(e->d_name, part) != NULL;
    if (d) closedir(d);
    return n;
}

/* Removes test_dir and everything in it; 0 on success. */
static inline int test_dir_remove(void) {
    return test_rmtree(test_dir);
}

/* ---- the tests' tiny model ----
 *
 * Defined where model.h is included before test.h (directly or through
 * checkpoint.h, decode.h, eval.h ...): tests of core/ and data/ alone do
 * not see nn/.
 *
 *   qkv_model_config c = test_tiny_config(QKV_MODEL_ENCDEC, 11);
 *   c.dropout = 0.1f;                 // what this test studies
 *   qkv_model m;
 *   test_tiny_model(&m, &c, 42);
 */
#ifdef QKV_MODEL_H
/* vocab tokens on both sides, D 32, H 2, F 64, one encoder layer (none for
 * a decoder-only model) and one decoder layer, 32 positions, no dropout; the
 * rest as qkv_model_defaults. */
static inline qkv_model_config test_tiny_config(qkv_model_kind kind,
                                                int vocab) {
    qkv_model_config c = qkv_model_defaults(kind);
    c.src_vocab = c.tgt_vocab = vocab;
    c.d_model = 32;
    c.heads = 2;
    c.d_ff = 64;
    c.n_enc = kind == QKV_MODEL_ENCDEC ? 1 : 0;
    c.n_dec = 1;
    c.max_len = 32;
    c.dropout = 0.0f;
    return c;
}

/* Initialises m from c (test_tiny_config's, as the test changed it) with
 * seed; a config qkv_model_init refuses is a bug in the test: a FAIL line,
 * and the program ends. */
static inline void test_tiny_model(qkv_model *m, const qkv_model_config *c,
                                   uint64_t seed) {
    char err[300];
    if (qkv_model_init(m, c, seed, err, sizeof err)) {
        printf("FAIL %s/model: %s\n", test_prog, err);
        exit(1);
    }
}
#endif

#endif
