/* log.h - one logger for every facemill process.
 *
 * Lines go to stderr (or the file log.file names, see fm_log_open_file) as
 *   2026-11-28T10:00:00.123Z worker[1234] INFO  message
 * The macros check the level before any argument is formatted, so a debug line in a
 * hot loop costs one comparison when debug logging is off.
 *
 * Global state (one of the few): the level, the process role, the output stream or
 * log file, and a reopen request. Set them once at start-up, before threads start.
 */
#ifndef FACEMILL_LOG_H
#define FACEMILL_LOG_H

#include "facemill/status.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fm_log_level {
    FM_LOG_ERROR = 0,
    FM_LOG_WARN = 1,
    FM_LOG_INFO = 2,
    FM_LOG_DEBUG = 3,
} fm_log_level;

extern fm_log_level fm_log_current_level;

/* Sets the role printed in every line ("broker", "worker", ...; copied, at most 31
 * bytes) and the level. Either may be NULL/-1 to keep the current value. */
void fm_log_init(const char *role, int level);

/* Sends lines to stream (default stderr). The stream stays owned by the caller. */
void fm_log_set_stream(FILE *stream);

/* Sends lines to the file at path instead (log.file): appended to, created with mode
 * 0640 when missing, opened O_APPEND so the processes of a worker sharing it write
 * whole lines, and O_CLOEXEC. The path is copied for fm_log_reopen_if_requested.
 * NULL or "" keeps the current output. Call at start-up, before threads start.
 * Returns FM_OK, FM_ERR_INVALID (path longer than 4095 bytes) or FM_ERR_IO (err
 * names the path); on error the output is unchanged. */
fm_status fm_log_open_file(const char *path, fm_error *err);

/* Asks for the log file to be reopened: logrotate renamed it and sent SIGHUP.
 * Async-signal-safe (it sets a flag), so a SIGHUP handler calls it; the reopen
 * itself happens in fm_log_reopen_if_requested, from the main loop. */
void fm_log_request_reopen(void);

/* When a reopen was asked for since the last call: opens the log file's path again
 * and makes every thread's following lines go there (the descriptor is replaced in
 * place), then logs that it did. Without a log file nothing changes (lines stay on
 * stderr). A reopen that fails is logged to the old file, which stays in use.
 * Returns 1 when a reopen was asked for (a worker parent then passes it on to its
 * processes), else 0. Call from the main loop, not from a signal handler. */
int fm_log_reopen_if_requested(void);

/* Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int fm_log_level_parse(const char *name);

/* Makes s (a string a peer or a file chose: a worker name, a job id, an error text
 * from a worker) safe to print in a log line: control characters and bytes that are
 * not valid UTF-8 become \xNN (C1 controls \u00NN), a backslash \\, so no string
 * can end a line, forge another or drive a terminal. Cut with "..." to fit size.
 * Returns buf. */
const char *fm_log_escape(const char *s, char *buf, size_t size);

/* Room for an escaped identifier (a 256-byte id escaped in full is 1024 bytes; the
 * rest is cut). */
#define FM_LOG_ESCAPED_MAX 320

/* Writes one line. Use the macros below instead. */
void fm_log_write(fm_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define FM_LOG(level, ...)                                                              \
    do {                                                                                \
        if ((level) <= fm_log_current_level)                                            \
            fm_log_write((level), __VA_ARGS__);                                         \
    } while (0)
#define fm_log_error(...) FM_LOG(FM_LOG_ERROR, __VA_ARGS__)
#define fm_log_warn(...) FM_LOG(FM_LOG_WARN, __VA_ARGS__)
#define fm_log_info(...) FM_LOG(FM_LOG_INFO, __VA_ARGS__)
#define fm_log_debug(...) FM_LOG(FM_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
