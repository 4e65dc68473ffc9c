/* status.c - texts of the status enum and the error record helpers.
 * Kept apart so every module (broker side and worker side) can report errors the
 * same way without pulling in anything else. */
#include "facemill/status.h"

#include <stdio.h>
#include <string.h>

static const char *const status_names[FM_STATUS_COUNT] = {
    [FM_OK] = "ok",
    [FM_ERR_NOMEM] = "out of memory",
    [FM_ERR_IO] = "i/o error",
    [FM_ERR_FORMAT] = "format error",
    [FM_ERR_VERSION] = "unsupported version",
    [FM_ERR_NOT_FOUND] = "not found",
    [FM_ERR_INVALID] = "invalid argument",
    [FM_ERR_CONFIG] = "configuration error",
    [FM_ERR_UNSUPPORTED] = "unsupported",
    [FM_ERR_DECODE] = "decode error",
    [FM_ERR_LIMIT] = "limit exceeded",
    [FM_ERR_ARENA] = "arena exhausted",
    [FM_ERR_PROTOCOL] = "protocol error",
    [FM_ERR_TIMEOUT] = "timeout",
    [FM_ERR_INTERRUPTED] = "interrupted",
    [FM_ERR_INTERNAL] = "internal error",
};

const char *fm_status_to_string(fm_status s)
{
    if ((int)s < 0 || s >= FM_STATUS_COUNT || !status_names[s])
        return "unknown status";
    return status_names[s];
}

fm_status fm_error_set(fm_error *err, fm_status code, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

fm_status fm_error_prefix(fm_error *err, const char *fmt, ...)
{
    if (!err)
        return FM_OK;
    char prefix[FM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t cap = sizeof err->msg - 1;
    size_t plen = strnlen(prefix, cap);
    size_t head = plen + 2 < cap ? plen + 2 : cap;
    size_t olen = strnlen(err->msg, cap);
    if (olen > cap - head)
        olen = cap - head;
    memmove(err->msg + head, err->msg, olen);
    memcpy(err->msg, prefix, head < plen ? head : plen);
    if (head > plen)
        memcpy(err->msg + plen, ": ", head - plen);
    err->msg[head + olen] = '\0';
    return err->code;
}

const char *fm_error_text(const fm_error *err)
{
    if (!err)
        return "";
    return err->msg[0] ? err->msg : fm_status_to_string(err->code);
}
