/* log.c - timestamped, role-tagged log lines on stderr or in log.file (see log.h).
 * One write(2) per line so lines of several processes sharing a terminal or a file
 * do not interleave.
 *
 * Why reopen by dup2: logrotate renames the file and sends SIGHUP; the new file is
 * opened and put in place of the old descriptor number in one call, so a thread
 * writing a line at that moment writes it whole to one file or the other, and no
 * thread ever sees a closed descriptor. */
#define _POSIX_C_SOURCE 200809L
#include "facemill/log.h"
#include "facemill/text.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

fm_log_level fm_log_current_level = FM_LOG_INFO;
static char log_role[32] = "facemill";
static FILE *log_stream;
static int log_fd = -1; /* log.file, or -1: lines go to log_stream */
static char log_path[4096];
static volatile sig_atomic_t reopen_requested;

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

static int open_log(const char *path)
{
    int fd;
    do
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    while (fd < 0 && errno == EINTR);
    return fd;
}

fm_status fm_log_open_file(const char *path, fm_error *err)
{
    if (!path || !path[0])
        return FM_OK;
    if (strlen(path) >= sizeof log_path)
        return fm_error_set(err, FM_ERR_INVALID, "log.file: path longer than %zu bytes",
                            sizeof log_path - 1);
    int fd = open_log(path);
    if (fd < 0)
        return fm_error_set(err, FM_ERR_IO, "log.file %s: %s", path, strerror(errno));
    if (log_fd >= 0)
        close(log_fd);
    log_fd = fd;
    strcpy(log_path, path);
    return FM_OK;
}

void fm_log_request_reopen(void)
{
    reopen_requested = 1;
}

int fm_log_reopen_if_requested(void)
{
    if (!reopen_requested)
        return 0;
    reopen_requested = 0;
    if (log_fd < 0)
        return 1; /* stderr: whoever reads it (journald, a terminal) needs nothing */
    int fd = open_log(log_path);
    if (fd < 0) {
        fm_log_error("log.file %s: cannot reopen (%s); logging on to the old file",
                     log_path, strerror(errno));
        return 1;
    }
    int r;
    while ((r = dup2(fd, log_fd)) < 0 && (errno == EINTR || errno == EBUSY))
        ;
    int e = errno;
    close(fd);
    if (r < 0) {
        fm_log_error("log.file %s: cannot reopen (dup2: %s); logging on to the old file",
                     log_path, strerror(e));
        return 1;
    }
    /* dup2 clears close-on-exec on the copy; nothing this process runs should
     * inherit the log file. */
    if (fcntl(log_fd, F_SETFD, FD_CLOEXEC) < 0)
        fm_log_warn("log.file %s: cannot set close-on-exec: %s", log_path, strerror(errno));
    fm_log_info("log file %s reopened", log_path);
    return 1;
}

int fm_log_level_parse(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *fm_log_escape(const char *s, char *buf, size_t size)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)p), o = 0;
    if (size == 0)
        return buf;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = fm_utf8_next(p + i, n - i, &cp);
        char piece[16];
        size_t len;
        if (k == 0 || (k == 1 && (fm_text_is_control(cp) || cp == '\\'))) {
            /* A bad byte, a C0 control or DEL: never written raw. */
            len = cp == '\\' ? (size_t)snprintf(piece, sizeof piece, "\\\\")
                             : (size_t)snprintf(piece, sizeof piece, "\\x%02x", (unsigned)cp);
            k = 1;
        } else if (fm_text_is_control(cp)) {
            len = (size_t)snprintf(piece, sizeof piece, "\\u%04x", (unsigned)cp); /* C1 */
        } else {
            memcpy(piece, p + i, (size_t)k);
            len = (size_t)k;
        }
        if (o + len + 4 > size) { /* no room for this and "...": cut here, say so */
            if (o + 4 <= size)
                memcpy(buf + o, "...", 3), o += 3;
            break;
        }
        memcpy(buf + o, piece, len);
        o += len;
        i += (size_t)k;
    }
    buf[o < size ? o : size - 1] = '\0';
    return buf;
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
    if (log_fd >= 0) {
        ssize_t w = write(log_fd, line, (size_t)n);
        (void)w;
        return;
    }
    FILE *out = log_stream ? log_stream : stderr;
    fflush(out);
    ssize_t w = write(fileno(out), line, (size_t)n);
    (void)w;
}
