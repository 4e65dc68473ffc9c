/* log.c - timestamped, role-tagged log lines on stderr (see log.h). One write(2)
 * per line so lines of several processes sharing a terminal do not interleave. */
#define _POSIX_C_SOURCE 200809L
#include "facemill/log.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

fm_log_level fm_log_current_level = FM_LOG_INFO;
static char log_role[32] = "facemill";
static FILE *log_stream;

static const char *const level_names[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};

void fm_log_init(const char *role, int level)
{
    if (role) {
        strncpy(log_role, role, sizeof log_role - 1);
        log_role[sizeof log_role - 1] = '\0';
    }
    if (level >= FM_LOG_ERROR && level <= FM_LOG_DEBUG)
        fm_log_current_level = (fm_log_level)level;
}

void fm_log_set_stream(FILE *stream)
{
    log_stream = stream;
}

int fm_log_level_parse(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

void fm_log_write(fm_log_level level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    int lv = level < FM_LOG_ERROR ? 0 : level > FM_LOG_DEBUG ? 3 : (int)level;
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03ldZ %s[%ld] %s ",
                  ts.tv_nsec / 1000000L, log_role, (long)getpid(), level_names[lv]);
    if (n < 0 || (size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n >= sizeof line - 1)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    FILE *out = log_stream ? log_stream : stderr;
    fflush(out);
    ssize_t w = write(fileno(out), line, (size_t)n);
    (void)w;
}
