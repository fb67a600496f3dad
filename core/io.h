/* io.h - files treated as hostile input: opening without hanging, reading
 * within limits, the memory a request may take, and the temporaries that
 * atomic writes leave behind when killed.
 *
 * A path given by a user may name a FIFO (open(2) blocks until a writer
 * comes), a device (/dev/zero never ends), a directory or a file far larger
 * than memory. qkv_open_file refuses all of these with one line before
 * reading a byte; qkv_getline_max reads a line but stops at a limit instead
 * of growing a buffer until memory runs out.
 *
 *   char err[512];
 *   FILE *f = qkv_fopen_file("data/train.tsv", QKV_MAX_TEXT_FILE, NULL, err,
 *                            sizeof err);
 *   if (!f) die(err);
 *   char *line = NULL; size_t cap = 0; ssize_t n;
 *   while ((n = qkv_getline_max(&line, &cap, f, QKV_MAX_LINE)) >= 0) ...
 *   if (n == QKV_LINE_TOO_LONG) die("line too long");
 */
#ifndef QKV_IO_H
#define QKV_IO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* Limits on text input: a line (a sentence pair, a log row, an input to
 * decode) and a whole text file (a corpus). */
#define QKV_MAX_LINE      (1u << 20)          /* 1 MiB */
#define QKV_MAX_TEXT_FILE ((uint64_t)4 << 30) /* 4 GiB */

/* Opens path read-only. Refuses, with -1 and one line in err naming path:
 * a path that does not open; anything but a regular file (a FIFO or a
 * device is opened with O_NONBLOCK and checked with fstat, so nothing
 * blocks); a file over max_bytes (0: no limit). On success returns the
 * descriptor (blocking, close-on-exec) and *size (if non-NULL) = the file's
 * size. */
int qkv_open_file(const char *path, uint64_t max_bytes, uint64_t *size,
                  char *err, size_t errlen);
/* The same as a stdio stream ("rb"); NULL on refusal. */
FILE *qkv_fopen_file(const char *path, uint64_t max_bytes, uint64_t *size,
                     char *err, size_t errlen);

/* Reads the next line of f (with its newline, if any) into *buf, grown as
 * needed (start with NULL, 0; free() it), NUL-terminated. Returns its length
 * in bytes, -1 at the end of the file (or on a read error: see ferror), or
 * QKV_LINE_TOO_LONG when the line has more than max bytes (the rest of that
 * line is left unread; *buf holds its first max bytes). NUL bytes are kept:
 * use the length, not strlen. */
#define QKV_LINE_TOO_LONG ((ssize_t)-2)
ssize_t qkv_getline_max(char **buf, size_t *cap, FILE *f, size_t max);

/* Bytes of memory this process may use: the smallest of physical memory,
 * RLIMIT_AS, RLIMIT_DATA and the cgroup's memory.max (SIZE_MAX if none can
 * be read). Requests larger than this are refused up front rather than
 * ending in an allocation failure or the kernel's OOM killer. */
size_t qkv_memory_limit(void);
/* "1.2 GB" / "340 MB" / "12 KB" for messages, into buf (at least 32 bytes). */
const char *qkv_bytes_str(double bytes, char *buf);

/* Removes the files "<path>.tmp.<pid>" (temporaries of an atomic write of
 * path: qkv_st_write, the CLI's files) whose process no longer runs: a save
 * killed before its rename. Live writers' files are left alone. Returns how
 * many were removed. */
int qkv_remove_stale_tmp(const char *path);

#endif
