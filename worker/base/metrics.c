/* metrics.c - Prometheus text exposition and atomic metrics files
 * (include/facemill/metrics.h). */
#define _DEFAULT_SOURCE /* mkstemps */
#include "facemill/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Escapes for HELP text (label 0) or a label value (label 1). */
static void escaped(FILE *out, const char *s, int label)
{
    for (; s && *s; s++) {
        if (*s == '\\')
            fputs("\\\\", out);
        else if (*s == '\n')
            fputs("\\n", out);
        else if (*s == '"' && label)
            fputs("\\\"", out);
        else
            fputc(*s, out);
    }
}

void fm_metrics_family(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s ", name);
    escaped(out, help, 0);
    fprintf(out, "\n# TYPE %s %s\n", name, type);
}

void fm_metrics_sample(FILE *out, const char *name, const char *label, const char *value,
                       double v)
{
    fputs(name, out);
    if (label) {
        fprintf(out, "{%s=\"", label);
        escaped(out, value ? value : "", 1);
        fputs("\"}", out);
    }
    if (isnan(v))
        fputs(" NaN\n", out);
    else if (isinf(v))
        fputs(v > 0 ? " +Inf\n" : " -Inf\n", out);
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        fprintf(out, " %.0f\n", v);
    else {
        /* The shortest form that reads back as v: 0.6, not 0.59999999999999998. */
        char buf[32];
        for (int digits = 15; digits <= 17; digits++) {
            snprintf(buf, sizeof buf, "%.*g", digits, v);
            if (strtod(buf, NULL) == v)
                break;
        }
        fprintf(out, " %s\n", buf);
    }
}

int fm_metrics_path(char *buf, size_t size, const char *pattern, const char *role)
{
    size_t n = 0;
    for (const char *p = pattern; *p; p++) {
        const char *add = NULL;
        char one[2] = {*p, '\0'};
        if (p[0] == '%' && p[1] == 'n') {
            add = role;
            p++;
        } else if (p[0] == '%' && p[1] == '%') {
            add = "%";
            p++;
        } else {
            add = one;
        }
        size_t len = strlen(add);
        if (n + len + 1 > size)
            return -1;
        memcpy(buf + n, add, len);
        n += len;
    }
    if (n + 1 > size)
        return -1;
    buf[n] = '\0';
    return 0;
}

double fm_metrics_db_bytes(const char *path)
{
    struct stat s;
    char wal[PATH_MAX];
    double n = stat(path, &s) == 0 ? (double)s.st_size : 0;
    if ((size_t)snprintf(wal, sizeof wal, "%s-wal", path) < sizeof wal && stat(wal, &s) == 0)
        n += (double)s.st_size;
    return n;
}

int fm_metrics_filesystem(const char *path, double *avail, double *size)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    struct statvfs v;
    if (statvfs(dir, &v) != 0)
        return -1;
    *avail = (double)v.f_bavail * (double)v.f_frsize;
    *size = (double)v.f_blocks * (double)v.f_frsize;
    return 0;
}

fm_status fm_metrics_write_file(const char *path, const char *text, size_t len,
                                fm_error *err)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp)
        return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
    /* the textfile collector reads only *.prom: a .tmp name is never half read */
    snprintf(tmp, plen + 16, "%s.XXXXXX.tmp", path);
    int fd = mkstemps(tmp, 4);
    fm_status st = FM_OK;
    if (fd < 0) {
        st = fm_error_set(err, FM_ERR_IO, "metrics file %s: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    int ok = done == len && fchmod(fd, 0644) == 0 && fsync(fd) == 0;
    int saved = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        saved = errno;
    }
    if (!ok) {
        unlink(tmp);
        st = fm_error_set(err, FM_ERR_IO, "metrics file %s: %s", path, strerror(saved));
    }
    free(tmp);
    return st;
}
