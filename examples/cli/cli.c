/* cli.c - flags, errors, files, run data and scoring for the qkv commands. */
#include "cli.h"
#include "bf16.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ flags */

/* "qkv: MESSAGE" on one line, whatever a hostile name or file put in it. */
static void vwarn(const char *fmt, va_list ap) {
    if (qkv_comm_rank() != 0) return; /* said once, by rank 0 */
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    fflush(stdout);
    fprintf(stderr, "qkv: %s\n", msg);
}

void cli_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vwarn(fmt, ap);
    va_end(ap);
}

void cli_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vwarn(fmt, ap);
    va_end(ap);
    exit(2);
}

void cli_bprintf(cli_buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->len : NULL,
                          b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        QKV_CHECK(k >= 0, "cli_bprintf: bad format %s", fmt);
        if (b->s && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return;
        }
        b->cap = 2 * (b->len + (size_t)k + 1) + 256;
        b->s = qkv_realloc(b->s, b->cap, "text buffer");
        b->s[b->len] = 0;
    }
}

/* The index of s among the '|'-separated words of choices, or -1. */
static int choice_index(const char *s, const char *choices) {
    size_t n = strlen(s);
    int i = 0;
    for (const char *c = choices; *c; i++) {
        const char *end = strchr(c, '|');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == n && strncmp(c, s, n) == 0) return i;
        if (!end) break;
        c = end + 1;
    }
    return -1;
}

/* The name of value v of an enum flag ("?" if it has none). */
static void choice_name(const flag *f, char *buf, size_t cap) {
    const char *c = f->choices;
    for (int i = 0; i < *(int *)f->dst && c; i++)
        if ((c = strchr(c, '|'))) c++;
    if (!c || *(int *)f->dst < 0)
        snprintf(buf, cap, "?");
    else
        snprintf(buf, cap, "%.*s", (int)strcspn(c, "|"), c);
}

/* 0 if x (already of f's type) is in f's range, else -1 and err naming the
 * bound it crosses. */
static int check_range(const char *cmd, const flag *f, double x,
                       const char *text, char *err, size_t errlen) {
    if (f->lo == 0 && f->hi == 0) return 0; /* any value */
    if (x >= f->lo && x <= f->hi) return 0;
    char bound[64];
    if (x > f->hi)
        snprintf(bound, sizeof bound, "at most %.10g", f->hi);
    else if (f->lo == 1 || f->lo == CLI_POSITIVE)
        snprintf(bound, sizeof bound, "positive");
    else if (f->lo == 0)
        snprintf(bound, sizeof bound, ">= 0");
    else
        snprintf(bound, sizeof bound, "at least %.10g", f->lo);
    snprintf(err, errlen, "%s: --%s must be %s, got %.60s", cmd, f->name, bound,
             text);
    return -1;
}

int cli_flag_set(const char *cmd, const flag *f, const char *v, char *err,
                 size_t errlen) {
    char *end;
    errno = 0;
    switch (f->type) {
    case FLAG_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < INT_MIN || x > INT_MAX) {
            snprintf(err, errlen, "%s: --%s wants an integer, got '%.60s'", cmd,
                     f->name, v);
            return -1;
        }
        if (check_range(cmd, f, (double)x, v, err, errlen)) return -1;
        *(int *)f->dst = (int)x;
        return 0;
    }
    case FLAG_FLOAT: {
        /* parsed as the float it is used as: 1e39 is not a finite float */
        float x = strtof(v, &end);
        if (end == v || *end || isnan(x)) {
            snprintf(err, errlen, "%s: --%s wants a number, got '%.60s'", cmd,
                     f->name, v);
            return -1;
        }
        if (!isfinite(x)) { /* 1e39 overflows the float it is used as */
            snprintf(err, errlen,
                     "%s: --%s must be a finite float (at most 3.4e38), got "
                     "'%.60s'",
                     cmd, f->name, v);
            return -1;
        }
        if (check_range(cmd, f, (double)x, v, err, errlen)) return -1;
        *(float *)f->dst = x;
        return 0;
    }
    case FLAG_STR:
    case FLAG_ENUM: {
        int k = f->choices ? choice_index(v, f->choices) : 0;
        if (k < 0) {
            snprintf(err, errlen, "%s: --%s must be one of %s, got '%.60s'",
                     cmd, f->name, f->choices, v);
            return -1;
        }
        if (f->type == FLAG_ENUM)
            *(int *)f->dst = k;
        else
            *(const char **)f->dst = v;
        return 0;
    }
    case FLAG_BOOL:
        *(int *)f->dst = 1;
        return 0;
    }
    return 0;
}

static void print_help(const char *cmd, const char *usage, const flag *flags,
                       int n) {
    printf("usage: qkv %s %s\n\n", cmd, usage);
    for (int i = 0; i < n; i++) {
        const flag *f = &flags[i];
        char def[64] = "";
        switch (f->type) {
        case FLAG_INT:
            snprintf(def, sizeof def, "%d", *(int *)f->dst);
            break;
        case FLAG_FLOAT:
            snprintf(def, sizeof def, "%g", (double)*(float *)f->dst);
            break;
        case FLAG_STR:
            snprintf(def, sizeof def, "%s",
                     **(const char **)f->dst ? *(const char **)f->dst : "none");
            break;
        case FLAG_BOOL:
            snprintf(def, sizeof def, "off");
            break;
        case FLAG_ENUM:
            choice_name(f, def, sizeof def);
            break;
        }
        /* what the value looks like: the choices, a number, a list, a
         * file or directory, or free text */
        static const char *const paths[] = {
            "ckpt", "data", "valid", "out",        "resume",   "config",
            "text", "hyp",  "json",  "valid-text", "spm-model"};
        const char *what = f->type == FLAG_BOOL                 ? ""
                           : f->choices                         ? f->choices
                           : f->type != FLAG_STR                ? "N"
                           : strstr(f->help, "comma-separated") ? "LIST"
                                                                : "TEXT";
        for (size_t k = 0; k < sizeof paths / sizeof *paths; k++)
            if (f->type == FLAG_STR && !f->choices &&
                strcmp(f->name, paths[k]) == 0)
                what = "PATH";
        char name[96];
        snprintf(name, sizeof name, "--%s%s%s", f->name, *what ? " " : "",
                 what);
        if (strlen(name) > 22)
            printf("  %s\n  %-22s %s (default %s)\n", name, "", f->help, def);
        else
            printf("  %-22s %s (default %s)\n", name, f->help, def);
    }
}

int cli_parse_args(const char *cmd, const flag *flags, int n, int argc,
                   char **argv, int first, const char **positional, int max_pos,
                   int *n_pos, char *err, size_t errlen) {
    if (n_pos) *n_pos = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return 1;
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            if (!positional || *n_pos >= max_pos) {
                snprintf(err, errlen, "%s: unexpected argument '%.60s'", cmd,
                         a);
                return -1;
            }
            positional[(*n_pos)++] = a;
            continue;
        }
        /* --name value, or --name=value */
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        const flag *f = NULL;
        for (int k = 0; k < n && !f; k++)
            if (strlen(flags[k].name) == len &&
                strncmp(a + 2, flags[k].name, len) == 0)
                f = &flags[k];
        if (!f) {
            snprintf(err, errlen, "%s: unknown flag --%.*s (see qkv %s --help)",
                     cmd, (int)(len < 60 ? len : 60), a + 2, cmd);
            return -1;
        }
        if (f->type == FLAG_BOOL) {
            if (eq) {
                snprintf(err, errlen, "%s: --%s takes no value", cmd, f->name);
                return -1;
            }
            *(int *)f->dst = 1;
            continue;
        }
        if (!eq && i + 1 >= argc) {
            snprintf(err, errlen, "%s: --%s needs a value", cmd, f->name);
            return -1;
        }
        if (cli_flag_set(cmd, f, eq ? eq + 1 : argv[++i], err, errlen))
            return -1;
    }
    return 0;
}

void cli_parse(const char *cmd, const char *usage, const flag *flags, int n,
               int argc, char **argv, int first, const char **positional,
               int max_pos, int *n_pos) {
    char err[512];
    int rc = cli_parse_args(cmd, flags, n, argc, argv, first, positional,
                            max_pos, n_pos, err, sizeof err);
    if (rc < 0) cli_die("%s", err);
    if (rc > 0) {
        print_help(cmd, usage, flags, n);
        exit(0);
    }
}

char *cli_flags_json(const flag *flags, int n) {
    cJSON *o = cJSON_CreateObject();
    char name[64];
    for (int i = 0; i < n; i++) {
        const flag *f = &flags[i];
        switch (f->type) {
        case FLAG_INT:
            cJSON_AddNumberToObject(o, f->name, *(int *)f->dst);
            break;
        case FLAG_FLOAT: /* 0.002, not 0.0020000000949949026 */
            cJSON_AddNumberToObject(o, f->name,
                                    qkv_float_shortest(*(float *)f->dst));
            break;
        case FLAG_STR:
            cJSON_AddStringToObject(o, f->name, *(const char **)f->dst);
            break;
        case FLAG_BOOL:
            cJSON_AddBoolToObject(o, f->name, *(int *)f->dst);
            break;
        case FLAG_ENUM:
            choice_name(f, name, sizeof name);
            cJSON_AddStringToObject(o, f->name, name);
            break;
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

int cli_flags_from_json_err(const char *cmd, const flag *flags, int n,
                            const void *json, char *err, size_t errlen) {
    const cJSON *j = json;
    if (!cJSON_IsObject(j)) {
        snprintf(err, errlen, "%s: the saved settings are not a JSON object",
                 cmd);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const flag *f = &flags[i];
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, f->name);
        if (!v) continue;
        int ok = f->type == FLAG_STR || f->type == FLAG_ENUM ? cJSON_IsString(v)
                 : f->type == FLAG_BOOL                      ? cJSON_IsBool(v)
                                        : cJSON_IsNumber(v);
        if (!ok) {
            snprintf(err, errlen, "%s: the saved setting %s has the wrong type",
                     cmd, f->name);
            return -1;
        }
        char text[64], why[512];
        int rc = 0;
        switch (f->type) {
        case FLAG_INT:
        case FLAG_FLOAT:
            /* through the flag's own parser: the same type and range */
            snprintf(text, sizeof text, "%.17g", v->valuedouble);
            if (f->type == FLAG_INT && v->valuedouble != floor(v->valuedouble))
                snprintf(text, sizeof text, "%.17g (not whole)",
                         v->valuedouble);
            rc = cli_flag_set(cmd, f, text, why, sizeof why);
            break;
        case FLAG_STR:
        case FLAG_ENUM:
            rc = cli_flag_set(cmd, f, v->valuestring, why, sizeof why);
            break;
        case FLAG_BOOL:
            *(int *)f->dst = cJSON_IsTrue(v);
            break;
        }
        if (rc) {
            /* "CMD: --x must ..." -> "CMD: the saved setting --x must ..." */
            size_t k = strlen(cmd) + 2;
            snprintf(err, errlen, "%s: the saved setting %s", cmd,
                     strlen(why) > k ? why + k : why);
            return -1;
        }
    }
    return 0;
}

int cli_flags_from_fields(flag *out, int max, const qkv_field *fields, int n,
                          void *obj) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        const qkv_field *f = &fields[i];
        if (!f->flag) continue;
        QKV_CHECK(k < max, "cli_flags_from_fields: more than %d flags", max);
        static const flag_type types[] = {[QKV_FIELD_INT] = FLAG_INT,
                                          [QKV_FIELD_FLOAT] = FLAG_FLOAT,
                                          [QKV_FIELD_BOOL] = FLAG_BOOL,
                                          [QKV_FIELD_ENUM] = FLAG_ENUM,
                                          [QKV_FIELD_STR] = FLAG_STR};
        flag g = {f->flag,    types[f->type], (char *)obj + f->offset,
                  f->choices, f->help,        f->lo,
                  f->hi};
        out[k++] = g;
    }
    return k;
}

int cli_max_threads(void) {
    return 4 * qkv_cpu_count();
}

/* ------------------------------------------------------------------ files */

void cli_make_dirs(const char *cmd, const char *dir) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        cli_die("%s: path %s is too long", cmd, dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || !*s) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0777) && errno != EEXIST)
                cli_die("%s: cannot create %s: %s", cmd, p, strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
}

void cli_write_file(const char *cmd, const char *path, const char *text) {
    cli_write_bytes(cmd, path, text, strlen(text));
}

void cli_write_bytes(const char *cmd, const char *path, const void *data,
                     size_t len) {
    char tmp[4300];
    qkv_remove_stale_tmp(path);
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >=
        (int)sizeof tmp)
        cli_die("%s: path %s is too long", cmd, path);
    FILE *f = fopen(tmp, "wb");
    if (!f) cli_die("%s: cannot write %s: %s", cmd, tmp, strerror(errno));
    int ok = fwrite(data, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path)) {
        remove(tmp);
        cli_die("%s: cannot write %s: %s", cmd, path, strerror(errno));
    }
}

void cli_check_forward_memory(const char *cmd, const qkv_model *m, int B, int S,
                              int T, const char *fix) {
    double need = qkv_model_activation_bytes(&m->cfg, B, S, T, 0),
           have = (double)qkv_memory_limit() - 8.0 * (double)m->params.n;
    if (need <= have) return;
    char a[32], b[32];
    cli_die("%s: decoding %d sequences of %d+%d tokens needs about %s of "
            "memory and qkv may use %s more; lower %s",
            cmd, B, S, T, qkv_bytes_str(need, a),
            qkv_bytes_str(have > 0 ? have : 0, b), fix);
}

/* ----------------------------------------------------------- run folders */

/* The files a run writes in its directory (qkv train, sweep's marker). */
static const char *const run_files[] = {
    "ckpt.safetensors", "log.csv",          "config.json",  "loss.png",
    "loss.svg",         "loss.png.gp",      "loss.png.dat", "loss.svg.gp",
    "loss.svg.dat",     "best.safetensors", "done",         "spm.model",
    "loss.gp",          "loss.dat" /* as older qkv named them */};

int cli_run_lock(const char *cmd, const char *dir) {
    if (qkv_comm_rank() != 0) return -1; /* rank 0 writes for the job */
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) cli_die("%s: %s: cannot open: %s", cmd, dir, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            cli_die("%s: %s is in use: another qkv process is writing a run "
                    "there (wait for it to end, or use another directory)",
                    cmd, dir);
        cli_die("%s: %s: cannot lock: %s", cmd, dir, strerror(errno));
    }
    return fd; /* held until the process ends */
}

int cli_run_exists(const char *dir) {
    for (int i = 0; i < 3; i++) { /* ckpt.safetensors, log.csv, config.json */
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, run_files[i]);
        if (access(p, F_OK) == 0) return 1;
    }
    return 0;
}

void cli_run_clear(const char *cmd, const char *dir) {
    for (size_t i = 0; i < sizeof run_files / sizeof *run_files; i++) {
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, run_files[i]);
        if (unlink(p) != 0 && errno != ENOENT)
            cli_die("%s: --force: cannot remove %s: %s", cmd, p,
                    strerror(errno));
        qkv_remove_stale_tmp(p);
    }
}

/* ---------------------------------------------------------------- gnuplot */

int cli_have_gnuplot(void) {
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/bin:/bin";
    for (const char *p = path; *p;) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char exe[4200];
        if (len && len < 4000) {
            snprintf(exe, sizeof exe, "%.*s/gnuplot", (int)len, p);
            if (access(exe, X_OK) == 0) return 1;
        }
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

int cli_has_control(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
    return 0;
}

void cli_check_name(const char *cmd, const char *what, const char *s) {
    if (cli_has_control(s))
        cli_die("%s: %s: a name with a control character (a newline or a "
                "tab?) is refused: it could not go into a gnuplot script, a "
                "log or one line of a message",
                cmd, what);
}

void cli_gp_string(char *dst, size_t cap, const char *s) {
    /* gnuplot 5.4 misreads a single-quoted string that starts with a quote
     * (x), so leading quotes go in a double-quoted piece joined with
     * the . operator. Double quotes are not used for the rest: gnuplot runs
     * `backquoted` commands inside them. A newline would end the command
     * and start another one (`system "..."`), so every control byte becomes
     * a space: no string can leave its quotes. */
    size_t n = 0, lead = strspn(s, "'");
    QKV_CHECK(cap >= 2 * strlen(s) + 8, "gp_string: cap %zu for %zu bytes", cap,
              strlen(s));
    if (lead) {
        dst[n++] = '"';
        memcpy(dst + n, s, lead);
        n += lead;
        dst[n++] = '"';
        s += lead;
        if (!*s) {
            dst[n] = 0;
            return;
        }
        dst[n++] = '.';
    }
    dst[n++] = '\'';
    for (; *s; s++) {
        if (*s == '\'') dst[n++] = '\'';
        dst[n++] = (unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s;
    }
    dst[n++] = '\'';
    dst[n] = 0;
}

int cli_gnuplot(const char *cmd, const char *gp_path, const char *script) {
    if (gp_path) {
        FILE *f = fopen(gp_path, "w");
        int ok = f && fputs(script, f) >= 0;
        if (f) ok = fclose(f) == 0 && ok;
        if (!ok) {
            cli_warn("%s: cannot write %s: %s", cmd, gp_path, strerror(errno));
            return -1;
        }
    }
    if (!cli_have_gnuplot()) {
        cli_warn("%s: gnuplot is not installed (apt-get install "
                 "gnuplot-nox)%s%s",
                 cmd, gp_path ? "; its script is in " : "",
                 gp_path ? gp_path : "");
        return -1;
    }
    fflush(stdout);
    FILE *p = popen("gnuplot", "w");
    if (!p) {
        cli_warn("%s: cannot run gnuplot: %s", cmd, strerror(errno));
        return -1;
    }
    int ok = fputs(script, p) >= 0;
    int st = pclose(p);
    if (!ok || st != 0) {
        cli_warn("%s: gnuplot failed%s%s", cmd, gp_path ? " on " : "",
                 gp_path ? gp_path : "");
        return -1;
    }
    return 0;
}

/* -------------------------------------------------------------- run data */

int cli_data_unk(const cli_data *d) {
    return d->corpus ? QKV_UNK : 0;
}

int cli_data_eos(const cli_data *d) {
    return d->corpus || d->task.use_eos ? QKV_EOS : -1;
}

void cli_data_free(cli_data *d) {
    if (d->corpus) {
        qkv_vocab_free(&d->sv);
        qkv_vocab_free(&d->tv);
    }
    memset(d, 0, sizeof *d);
}

static char *vocab_json(const qkv_vocab *v) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < v->size; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(v->tokens[i]));
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    if (!s) QKV_CHECK(0, "out of memory writing a vocabulary");
    return s;
}

/* Base64 (RFC 4648, section 4, with padding): how "spm.model" keeps the
 * model's bytes in a metadata string. */
static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *base64_encode(const unsigned char *p, size_t n) {
    char *out = qkv_malloc((n + 2) / 3 * 4 + 1, "base64"), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        *o++ = b64[v >> 18];
        *o++ = b64[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* The bytes of the base64 text s (malloc'd, *n of them), or NULL if s is
 * not base64 with padding. */
static unsigned char *base64_decode(const char *s, size_t *n) {
    size_t len = strlen(s);
    if (len % 4) return NULL;
    unsigned char *out = qkv_malloc(len / 4 * 3 + 1, "base64");
    size_t k = 0;
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            const char *c = s[i + j] ? strchr(b64, s[i + j]) : NULL;
            if (s[i + j] == '=' && i + 4 == len && j >= 2 &&
                (j == 3 || s[i + 3] == '='))
                pad++;
            else if (!c || pad) {
                free(out);
                return NULL;
            }
            v = v << 6 | (uint32_t)(c ? c - b64 : 0);
        }
        out[k++] = (unsigned char)(v >> 16);
        if (pad < 2) out[k++] = (unsigned char)(v >> 8);
        if (pad < 1) out[k++] = (unsigned char)v;
    }
    *n = k;
    return out;
}

static const char *const tok_names[] = {"word", "char", "spm"};

int cli_data_meta(const cli_data *d, const char **keys, char **vals) {
    if (!d->corpus) return 0;
    keys[0] = "tok", vals[0] = qkv_strdup(tok_names[d->tok], "metadata");
    keys[1] = "vocab.src", vals[1] = vocab_json(&d->sv);
    keys[2] = "vocab.tgt", vals[2] = vocab_json(&d->tv);
    int n = 3;
    if (d->text) /* its kind */
        keys[n] = "data", vals[n++] = qkv_strdup("text", "metadata");
    if (d->tok == QKV_TOK_SPM) {
        size_t len;
        const void *bytes = qkv_spm_bytes(d->sv.spm, &len);
        keys[n] = "spm.model", vals[n++] = base64_encode(bytes, len);
    }
    return n;
}

static int vocab_from_meta(qkv_vocab *v, const qkv_st_file *meta,
                           const char *key, char *err, size_t errlen) {
    const char *s = qkv_st_meta(meta, key);
    if (!s) {
        snprintf(err, errlen, "no \"%s\" in the metadata", key);
        return -1;
    }
    cJSON *a = cJSON_Parse(s);
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1, rc = -1;
    const char **tokens =
        n > 0 ? qkv_malloc((size_t)n * sizeof *tokens, "vocabulary") : NULL;
    for (int i = 0; i < n; i++) {
        const cJSON *t = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsString(t)) {
            n = -1;
            break;
        }
        tokens[i] = t->valuestring;
    }
    if (n < 1)
        snprintf(err, errlen, "\"%s\" is not a JSON array of strings", key);
    else if (qkv_vocab_from_list(v, tokens, n, err, errlen) == 0)
        rc = 0;
    free(tokens);
    cJSON_Delete(a);
    return rc;
}

/* --tok spm: both vocabularies from the model in "spm.model" (the one
 * SentencePiece model of both sides), which must give the stored pieces. */
static int spm_from_meta(cli_data *d, const qkv_st_file *meta, char *err,
                         size_t errlen) {
    const char *s = qkv_st_meta(meta, "spm.model");
    size_t n;
    unsigned char *bytes = s ? base64_decode(s, &n) : NULL;
    if (!bytes)
        return qkv_errf(err, errlen,
                        "%s \"spm.model\" in the metadata (want the "
                        "SentencePiece model, base64)",
                        s ? "a bad" : "no");
    int rc = qkv_vocab_from_spm(&d->sv, bytes, n, "spm.model", err, errlen);
    if (!rc &&
        (rc = qkv_vocab_from_spm(&d->tv, bytes, n, "spm.model", err, errlen)))
        qkv_vocab_free(&d->sv);
    free(bytes);
    const char *keys[] = {"vocab.src", "vocab.tgt"};
    for (int k = 0; k < 2 && !rc; k++) {
        qkv_vocab stored;
        if ((rc = vocab_from_meta(&stored, meta, keys[k], err, errlen))) break;
        const qkv_vocab *v = k ? &d->tv : &d->sv;
        int same = stored.size == v->size;
        for (int i = 0; same && i < v->size; i++)
            same = strcmp(stored.tokens[i], v->tokens[i]) == 0;
        qkv_vocab_free(&stored);
        if (!same)
            rc = qkv_errf(err, errlen,
                          "\"%s\" is not the pieces of \"spm.model\"", keys[k]);
    }
    if (rc) qkv_vocab_free(&d->sv), qkv_vocab_free(&d->tv);
    return rc;
}

int cli_data_from_meta(cli_data *d, const qkv_st_file *meta, char *err,
                       size_t errlen) {
    memset(d, 0, sizeof *d);
    const char *cli = qkv_st_meta(meta, "cli");
    cJSON *j = cli ? cJSON_Parse(cli) : NULL;
    if (!j) {
        snprintf(err, errlen,
                 "no training settings (\"cli\") in the metadata: "
                 "not written by qkv train");
        return -1;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    d->decoder_only =
        cJSON_IsString(model) && strcmp(model->valuestring, "decoder") == 0;
    d->corpus = cJSON_IsString(data) && data->valuestring[0];
    const char *dkind = qkv_st_meta(meta, "data"); /* qkv train --text */
    d->text = dkind && strcmp(dkind, "text") == 0;
    d->corpus |= d->text;
    int rc = 0;
    if (d->corpus) {
        const char *tok = qkv_st_meta(meta, "tok");
        d->tok = tok && strcmp(tok, "char") == 0 ? QKV_TOK_CHAR : QKV_TOK_WORD;
        if (tok && strcmp(tok, "spm") == 0) {
            d->tok = QKV_TOK_SPM;
            rc = spm_from_meta(d, meta, err, errlen);
        } else if (!tok || (strcmp(tok, "char") && strcmp(tok, "word"))) {
            snprintf(err, errlen, "\"tok\" must be word, char or spm");
            rc = -1;
        } else if (vocab_from_meta(&d->sv, meta, "vocab.src", err, errlen)) {
            rc = -1;
        } else if (vocab_from_meta(&d->tv, meta, "vocab.tgt", err, errlen)) {
            qkv_vocab_free(&d->sv);
            rc = -1;
        }
    } else {
        const char *names[] = {"vocab", "min-len", "max-len"};
        int v[3];
        for (int i = 0; i < 3 && rc == 0; i++) {
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, names[i]);
            if (!cJSON_IsNumber(x)) {
                snprintf(err, errlen, "the saved setting %s is missing",
                         names[i]);
                rc = -1;
            }
            v[i] = rc ? 0 : x->valueint;
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "task");
        const char *kind = cJSON_IsString(t) ? t->valuestring : "copy";
        qkv_task task = {strcmp(kind, "reverse") == 0 ? QKV_TASK_REVERSE
                         : strcmp(kind, "sort") == 0  ? QKV_TASK_SORT
                                                      : QKV_TASK_COPY,
                         v[0],
                         v[1],
                         v[2],
                         v[1] != v[2],
                         d->decoder_only};
        d->task = task;
        if (rc == 0) rc = qkv_task_check(&d->task, err, errlen);
    }
    cJSON_Delete(j);
    if (rc) memset(d, 0, sizeof *d);
    return rc;
}

void cli_detokenize(const cli_data *d, const int32_t *ids, int n, char **text,
                    size_t *cap) {
    if (*cap == 0) {
        *cap = 256;
        *text = qkv_malloc(*cap, "text");
    }
    size_t need = qkv_detokenize(&d->tv, d->tok, ids, n, *text, *cap);
    if (need + 1 > *cap) {
        *cap = need + 1;
        *text = qkv_realloc(*text, *cap, "text");
        qkv_detokenize(&d->tv, d->tok, ids, n, *text, *cap);
    }
}

char *cli_data_json(const cli_data *d) {
    cJSON *o = cJSON_CreateObject();
    if (!d->corpus) {
        static const char *const kinds[] = {"copy", "reverse", "sort"};
        QKV_CHECK((unsigned)d->task.kind < 3, "cli_data_json: task kind %d",
                  (int)d->task.kind);
        cJSON_AddStringToObject(o, "task", kinds[d->task.kind]);
        cJSON_AddNumberToObject(o, "vocab", d->task.vocab);
        cJSON_AddNumberToObject(o, "min-len", d->task.min_len);
        cJSON_AddNumberToObject(o, "max-len", d->task.max_len);
    }
    const char *keys[8];
    char *vals[8];
    int n = cli_data_meta(d, keys, vals);
    for (int i = 0; i < n; i++) { /* a vocabulary as an array, not text */
        cJSON *v = cJSON_Parse(vals[i]);
        if (!cJSON_IsArray(v) && !cJSON_IsObject(v)) {
            cJSON_Delete(v);
            v = cJSON_CreateString(vals[i]);
        }
        cJSON_AddItemToObject(o, keys[i], v);
        free(vals[i]);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    QKV_CHECK(s, "out of memory writing the data description");
    return s;
}

/* The metadata a checkpoint holds for its data, from a "data" description
 * (cli_data_json): "cli" with the settings cli_data_from_meta reads, and
 * the data's other members as strings. So one reader serves both. */
static cJSON *data_meta_from_json(const char *json, int decoder_only) {
    cJSON *dj = cJSON_Parse(json), *md = cJSON_CreateObject();
    cJSON *cli = cJSON_AddObjectToObject(md, "cli");
    cJSON_AddStringToObject(cli, "model", decoder_only ? "decoder" : "encdec");
    int corpus = cJSON_GetObjectItemCaseSensitive(dj, "tok") != NULL;
    cJSON_AddStringToObject(cli, "data", corpus ? "(exported)" : "");
    for (const cJSON *c = cJSON_IsObject(dj) ? dj->child : NULL; c;
         c = c->next) {
        int setting =
            !strcmp(c->string, "task") || !strcmp(c->string, "vocab") ||
            !strcmp(c->string, "min-len") || !strcmp(c->string, "max-len");
        if (setting) {
            cJSON_AddItemToObject(cli, c->string, cJSON_Duplicate(c, 1));
            continue;
        }
        char *t = cJSON_IsString(c) ? NULL : cJSON_PrintUnformatted(c);
        cJSON_AddStringToObject(md, c->string, t ? t : c->valuestring);
        free(t);
    }
    char *t = cJSON_PrintUnformatted(cli); /* metadata values are strings */
    cJSON_ReplaceItemInObjectCaseSensitive(md, "cli", cJSON_CreateString(t));
    free(t);
    cJSON_Delete(dj);
    return md;
}

/* d from the metadata a model file or --config gave: a checkpoint's
 * settings and vocabularies, or an export's (or a config's) "data". */
static int data_from_any_meta(cli_data *d, const qkv_st_file *meta,
                              int decoder_only, char *err, size_t errlen) {
    const char *data = qkv_st_meta(meta, "data"),
               *fmt = qkv_st_meta(meta, "format");
    if (qkv_st_meta(meta, "cli") || (fmt && !strcmp(fmt, QKV_CKPT_FORMAT)))
        return cli_data_from_meta(d, meta, err, errlen);
    cJSON *j = data ? cJSON_Parse(data) : NULL;
    int ok = cJSON_IsObject(j);
    cJSON_Delete(j);
    if (!ok) {
        memset(d, 0, sizeof *d);
        snprintf(err, errlen,
                 "\"data\" is %s: it holds the task (\"task\", \"vocab\", "
                 "\"min-len\", \"max-len\") or the tokenizer (\"tok\", "
                 "\"vocab.src\", \"vocab.tgt\"), as qkv export --json writes "
                 "it",
                 data ? "not a JSON object" : "missing");
        return -1;
    }
    qkv_st_file dm = {0};
    dm.metadata = data_meta_from_json(data, decoder_only);
    int rc = cli_data_from_meta(d, &dm, err, errlen);
    qkv_st_free(&dm);
    return rc;
}

void cli_open_model(const char *cmd, const char *path, const char *config,
                    qkv_model *m, cli_data *d) {
    char err[512];
    qkv_st_file meta;
    int cfg = config && *config;
    if (!*path)
        cli_die("%s: --ckpt is required (a checkpoint qkv train wrote, a file "
                "qkv export wrote, or weights with --config)",
                cmd);
    /* the library's line names the file at fault: the weights or config */
    if (qkv_weights_load(path, cfg ? config : NULL, m, &meta, err, sizeof err))
        cli_die("%s: %s%s", cmd, cfg ? "" : "--ckpt: ", err);
    int decoder = m->cfg.kind == QKV_MODEL_DECODER;
    if (data_from_any_meta(d, &meta, decoder, err, sizeof err))
        cli_die("%s: %s: %s: %s", cmd, cfg ? "--config" : "--ckpt",
                cfg ? config : path, err);
    qkv_st_free(&meta);
    int sv = d->corpus ? d->sv.size : d->task.vocab;
    int tv = d->corpus ? d->tv.size : d->task.vocab;
    if ((!decoder && m->cfg.src_vocab != sv) || m->cfg.tgt_vocab != tv ||
        decoder != d->decoder_only)
        cli_die("%s: %s: %s: the stored vocabularies (%d, %d) do not fit "
                "the model (%d, %d)",
                cmd, cfg ? "--config" : "--ckpt", cfg ? config : path, sv, tv,
                m->cfg.src_vocab, m->cfg.tgt_vocab);
}

void cli_load_model(const char *cmd, const char *path, qkv_model *m,
                    cli_data *d) {
    cli_open_model(cmd, path, NULL, m, d);
}

int cli_unknown_tokens(const cli_data *d, const char *s, char *names,
                       size_t cap) {
    int n = 0;
    size_t pos = 0, start, len, used = 0;
    if (cap) names[0] = 0;
    if (!d->corpus || (d->tok != QKV_TOK_WORD && d->tok != QKV_TOK_CHAR))
        return 0;
    while (qkv_token_next(d->tok, s, &pos, &start, &len)) {
        if (qkv_vocab_find(&d->sv, s + start, len) != QKV_UNK ||
            (len == 5 && !strncmp(s + start, "<unk>", 5)))
            continue;
        if (n++ < 3 && used < cap) {
            int k = snprintf(names + used, cap - used, "%s'%.*s'",
                             n > 1 ? ", " : "", (int)(len < 40 ? len : 40),
                             s + start);
            used += k > 0 ? (size_t)k : 0;
        }
    }
    if (n > 3 && used < cap) snprintf(names + used, cap - used, ", ...");
    return n;
}

int cli_encode_input(const cli_data *d, const char *s, int32_t **ids, int *cap,
                     int *n, char *err, size_t errlen) {
    if (!d->corpus) {
        int k = 0;
        const char *p = s;
        for (;;) {
            while (*p == ' ' || *p == '\t') p++;
            if (!*p) break;
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            int first = d->task.use_eos ? 3 : 2; /* ids below are specials */
            if (end == p || errno || (*end && *end != ' ' && *end != '\t') ||
                v < first || v >= d->task.vocab) {
                int w = 0;
                while (p[w] && p[w] != ' ' && p[w] != '\t') w++;
                snprintf(err, errlen,
                         "'%.*s' is not a symbol of the task (whole numbers "
                         "%d..%d separated by spaces)",
                         w, p, first, d->task.vocab - 1);
                return -1;
            }
            if (k + 1 >= *cap) {
                *cap = 2 * *cap + 16;
                *ids = qkv_realloc(*ids, (size_t)*cap * sizeof **ids, "input");
            }
            (*ids)[k++] = (int32_t)v;
            p = end;
        }
        if (*cap < 1) {
            *cap = 16;
            *ids = qkv_realloc(*ids, (size_t)*cap * sizeof **ids, "input");
        }
        *n = k;
        return 0;
    }
    size_t len = strlen(s), bad = qkv_utf8_check(s, len);
    if (bad < len) {
        snprintf(err, errlen, "not valid UTF-8 (byte %zu)", bad + 1);
        return -1;
    }
    int k = qkv_encode(&d->sv, d->tok, s, NULL, 0);
    if (k + 1 > *cap) {
        *cap = k + 1;
        *ids = qkv_realloc(*ids, (size_t)*cap * sizeof **ids, "input");
    }
    qkv_encode(&d->sv, d->tok, s, *ids, k);
    *n = k;
    return 0;
}

size_t cli_eval_detok(const void *ctx, const int32_t *ids, int n, char *out,
                      size_t cap) {
    char *t = NULL;
    size_t c = 0;
    cli_detokenize(ctx, ids, n, &t, &c);
    size_t len = strlen(t);
    if (cap) {
        size_t k = len < cap - 1 ? len : cap - 1;
        memcpy(out, t, k);
        out[k] = 0;
    }
    free(t);
    return len;
}

void cli_check_precision(const char *cmd, int precision) {
    qkv_bf16_kernel k;
    char why[200];
    if (precision == QKV_BF16 && qkv_bf16_kernel_env(&k, why, sizeof why))
        cli_die("%s: --precision bf16: %s", cmd, why);
}

void cli_set_precision(const char *cmd, qkv_graph *g, int precision,
                       int quiet) {
    cli_check_precision(cmd, precision);
    g->precision = (qkv_precision)precision;
    if (precision != QKV_BF16 || qkv_comm_rank() != 0) return;
    char why[128];
    qkv_bf16_kernel k = qkv_bf16_get_kernel(); /* QKV_BF16_KERNEL's, or best */
    if (k == QKV_BF16_PORTABLE && qkv_bf16_kernel_best() == k &&
        !qkv_bf16_kernel_usable(QKV_BF16_AVX512, why, sizeof why))
        cli_warn("%s: --precision bf16: %s, so the portable kernel computes "
                 "it (the same numbers, slower than fp32)",
                 cmd, why);
    else if (!quiet)
        printf("bf16 matrix products on the %s kernel%s\n",
               qkv_bf16_kernel_name(k),
               k == qkv_bf16_kernel_best() ? "" : " (QKV_BF16_KERNEL)");
}

/* qkv_generate's token callback: the new token's text to the stream. */
typedef struct gen_print {
    const cli_data *d;
    FILE *out;
    char *text;
    size_t cap, shown; /* spm: bytes of the decoded sequence printed */
} gen_print;

static void print_token(void *ctx, const int32_t *seq, int n) {
    gen_print *p = ctx;
    if (p->d->tok == QKV_TOK_SPM) {
        /* a piece's leading space depends on what precedes it: decode the
         * whole sequence and print what is new */
        cli_detokenize(p->d, seq, n, &p->text, &p->cap);
        size_t len = strlen(p->text);
        if (len > p->shown) fputs(p->text + p->shown, p->out);
        p->shown = len > p->shown ? len : p->shown;
    } else {
        cli_detokenize(p->d, seq + n - 1, 1, &p->text, &p->cap);
        /* words are joined by one space (qkv_detokenize) */
        if (p->d->tok == QKV_TOK_WORD && *p->text) fputc(' ', p->out);
        fputs(p->text, p->out);
    }
    fflush(p->out);
}

int cli_generate(qkv_model *m, qkv_graph *g, const cli_data *d, int32_t *seq,
                 int n, int max_out, float temperature, int top_k, float top_p,
                 int stop_at_eos, qkv_pcg32 *rng, FILE *out) {
    gen_print p = {d, out, NULL, 0, 0};
    if (out && d->tok == QKV_TOK_SPM) { /* what the prompt decodes to */
        cli_detokenize(d, seq, n, &p.text, &p.cap);
        p.shown = strlen(p.text);
    }
    n = qkv_generate(m, g, seq, n, max_out, temperature, top_k, top_p,
                     stop_at_eos ? QKV_EOS : -1, rng, out ? print_token : NULL,
                     &p);
    free(p.text);
    return n;
}
