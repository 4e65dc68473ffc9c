/* log.h - one logger for every facemill process.
 *
 * Lines go to stderr as
 *   2026-11-28T10:00:00.123Z worker[1234] INFO  message
 * The macros check the level before any argument is formatted, so a debug line in a
 * hot loop costs one comparison when debug logging is off.
 *
 * Global state (one of the few): the level, the process role and the output stream.
 * Set them once at start-up, before threads start.
 */
#ifndef FACEMILL_LOG_H
#define FACEMILL_LOG_H

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

/* Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int fm_log_level_parse(const char *name);

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
