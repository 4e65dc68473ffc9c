/* status.h - the one status enum of facemill, and the error record that carries
 * a readable message next to it.
 *
 * Every function that can fail returns an fm_status (0 is success) and, when the
 * caller passes a non-NULL fm_error, fills it with the code and a message a user can
 * act on ("model.fmm: tensor 'conv1.w' offset 4096 + 512 exceeds file size 4200").
 * Library code never prints errors itself and never calls exit().
 */
#ifndef FACEMILL_STATUS_H
#define FACEMILL_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fm_status {
    FM_OK = 0,
    FM_ERR_NOMEM,       /* an allocation failed */
    FM_ERR_IO,          /* open/read/write/mmap/rename failed (errno text in message) */
    FM_ERR_FORMAT,      /* input is malformed: corrupt file, truncated data, bad field */
    FM_ERR_VERSION,     /* a file or message of a version this build does not read */
    FM_ERR_NOT_FOUND,   /* a named thing (tensor, key, file) does not exist */
    FM_ERR_INVALID,     /* a bad argument or value */
    FM_ERR_CONFIG,      /* a configuration error (file, line and column in message) */
    FM_ERR_UNSUPPORTED, /* valid input facemill does not handle (e.g. PNG) */
    FM_ERR_DECODE,      /* image data could not be decoded */
    FM_ERR_LIMIT,       /* a size limit was exceeded (pixels, message size, ...) */
    FM_ERR_ARENA,       /* an arena allocation would exceed the arena's size */
    FM_ERR_PROTOCOL,    /* a peer sent something the protocol does not allow */
    FM_ERR_TIMEOUT,     /* something did not happen in time */
    FM_ERR_INTERRUPTED, /* stopped on request (signal) */
    FM_ERR_INTERNAL,    /* a bug: an invariant did not hold */
    FM_STATUS_COUNT
} fm_status;

/* Short stable name of a status ("FM_ERR_FORMAT" -> "format error"). Never NULL;
 * unknown values give "unknown status". Returned string is static. */
const char *fm_status_to_string(fm_status s);

#define FM_ERROR_MSG_MAX 512

/* An error record. Zero-initialise it (fm_error e = {0};) before use. */
typedef struct fm_error {
    fm_status code;
    char msg[FM_ERROR_MSG_MAX];
} fm_error;

/* Fills *err (when err is not NULL) with code and a printf-formatted message and
 * returns code, so a failing path can say: return fm_error_set(err, FM_ERR_IO, ...);
 * The message is truncated to FM_ERROR_MSG_MAX - 1 bytes. */
fm_status fm_error_set(fm_error *err, fm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to err's message (when err is not NULL) and returns err->code,
 * or FM_OK when err is NULL. Used to add context ("config/facemill.yaml: ..."). */
fm_status fm_error_prefix(fm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The message of err, or the status text when the message is empty. */
const char *fm_error_text(const fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
