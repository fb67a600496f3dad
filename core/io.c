/* io.c - opening, reading and sizing hostile input. */
#define _GNU_SOURCE /* O_CLOEXEC with the old feature macros, dirent d_type */
#include "io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

const char *qkv_bytes_str(double bytes, char *buf) {
    if (bytes >= 1e9)
        snprintf(buf, 32, "%.1f GB", bytes / 1e9);
    else if (bytes >= 1e6)
        snprintf(buf, 32, "%.0f MB", bytes / 1e6);
    else
        snprintf(buf, 32, "%.0f KB", bytes / 1e3);
    return buf;
}

int qkv_open_file(const char *path, uint64_t max_bytes, uint64_t *size,
                  char *err, size_t errlen) {
    if (!path || !*path) {
        snprintf(err, errlen, "(no path): empty file name");
        return -1;
    }
    /* O_NONBLOCK: opening a FIFO with no writer would block for ever. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    const char *what = NULL;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    what = S_ISREG(st.st_mode)    ? NULL
           : S_ISDIR(st.st_mode)  ? "a directory"
           : S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)"
           : S_ISCHR(st.st_mode)  ? "a character device"
           : S_ISBLK(st.st_mode)  ? "a block device"
           : S_ISSOCK(st.st_mode) ? "a socket"
                                  : "not a regular file";
    if (what) {
        snprintf(err, errlen, "%s: is %s, not a regular file", path, what);
        close(fd);
        return -1;
    }
    uint64_t bytes = (uint64_t)st.st_size;
    if (max_bytes && bytes > max_bytes) {
        char a[32], b[32];
        snprintf(err, errlen, "%s: the file is %s, more than the %s qkv reads",
                 path, qkv_bytes_str((double)bytes, a),
                 qkv_bytes_str((double)max_bytes, b));
        close(fd);
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        snprintf(err, errlen, "%s: fcntl: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (size) *size = bytes;
    return fd;
}

FILE *qkv_fopen_file(const char *path, uint64_t max_bytes, uint64_t *size,
                     char *err, size_t errlen) {
    int fd = qkv_open_file(path, max_bytes, size, err, errlen);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: fdopen: %s", path, strerror(errno));
        close(fd);
    }
    return f;
}

ssize_t qkv_getline_max(char **buf, size_t *cap, FILE *f, size_t max) {
    size_t n = 0;
    ssize_t rc;
    flockfile(f); /* one lock for the line, not one per byte */
    for (;;) {
        int c = getc_unlocked(f);
        if (c == EOF) {
            rc = n ? (ssize_t)n : -1;
            break;
        }
        if (n == max) {
            ungetc(c, f);
            rc = QKV_LINE_TOO_LONG;
            break;
        }
        if (n + 2 > *cap) {
            size_t want = *cap ? 2 * *cap : 256;
            if (want > max + 2) want = max + 2;
            if (want < n + 2) want = n + 2;
            *buf = qkv_realloc(*buf, want, "line");
            *cap = want;
        }
        (*buf)[n++] = (char)c;
        if (c == '\n') {
            rc = (ssize_t)n;
            break;
        }
    }
    funlockfile(f);
    if (*buf) (*buf)[n] = 0;
    return rc;
}

/* The number in a one-line file (cgroup v2 memory.max), or SIZE_MAX. */
static size_t read_limit(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return SIZE_MAX;
    unsigned long long v;
    int ok = fscanf(f, "%llu", &v) == 1; /* "max" does not parse: none */
    fclose(f);
    return ok && v < SIZE_MAX ? (size_t)v : SIZE_MAX;
}

size_t qkv_memory_limit(void) {
    size_t lim = SIZE_MAX;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0 &&
        (unsigned long long)pages < SIZE_MAX / (unsigned long long)page)
        lim = (size_t)pages * (size_t)page;
    int res[2] = {RLIMIT_AS, RLIMIT_DATA};
    for (int i = 0; i < 2; i++) {
        struct rlimit rl;
        if (getrlimit(res[i], &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            rl.rlim_cur < lim)
            lim = (size_t)rl.rlim_cur;
    }
    size_t cg = read_limit("/sys/fs/cgroup/memory.max");
    return cg < lim ? cg : lim;
}

int qkv_remove_stale_tmp(const char *path) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t dlen = slash ? (size_t)(slash - path) : 0, blen = strlen(base);
    char *dir = qkv_malloc(dlen + 2, "directory name");
    if (slash)
        memcpy(dir, path, dlen ? dlen : 1), dir[dlen ? dlen : 1] = 0;
    else
        strcpy(dir, ".");
    DIR *d = opendir(dir);
    int removed = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        const char *name = e->d_name;
        if (strncmp(name, base, blen) != 0 || strncmp(name + blen, ".tmp.", 5))
            continue;
        char *end;
        errno = 0;
        long pid = strtol(name + blen + 5, &end, 10);
        if (*end || errno || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive */
        size_t n = strlen(dir) + strlen(name) + 2;
        char *full = qkv_malloc(n, "temporary file name");
        snprintf(full, n, "%s/%s", dir, name);
        removed += unlink(full) == 0;
        free(full);
    }
    if (d) closedir(d);
    free(dir);
    return removed;
}
