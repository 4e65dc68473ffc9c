/* notify.c - systemd's notification protocol for the service programs (see
 * notify.h): READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 through libsystemd's
 * sd_notify.
 *
 * Why through libsystemd: sd_notify and sd_watchdog_enabled already handle abstract
 * and path sockets, credentials and WATCHDOG_PID; the protocol is small, but not
 * worth a second implementation to keep in step with systemd.
 *
 * A failed send is logged once and otherwise ignored: the service goes on serving,
 * and systemd itself reports a missing READY=1 or watchdog ping.
 */
#define _POSIX_C_SOURCE 200809L
#include "facemill/notify.h"
#include "facemill/clock.h"
#include "facemill/log.h"

#include <systemd/sd-daemon.h>

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* STATUS= lines are for `systemctl status`: one short line, refreshed about once a
 * second (more often only floods the journal of systemd's own bookkeeping). */
#define STATUS_INTERVAL_MS 1000
#define STATUS_MAX 200

static bool enabled;
static bool ready_sent;
static bool warned;
static int64_t watchdog_ms; /* the interval between pings: half systemd's; 0 = none */
static int64_t next_watchdog_ms;
static int64_t next_status_ms;
static char last_status[STATUS_MAX + 1];

static void send_state(const char *state)
{
    /* unset_environment 0: forked children inherit NOTIFY_SOCKET untouched; they are
     * kept quiet by fm_notify_disable instead, and other threads may read environ. */
    int r = sd_notify(0, state);
    if (r < 0 && !warned) {
        warned = true;
        fm_log_warn("systemd notification (%.40s) failed: %s", state, strerror(-r));
    }
}

void fm_notify_init(void)
{
    const char *sock = getenv("NOTIFY_SOCKET");
    enabled = sock && sock[0];
    ready_sent = warned = false;
    watchdog_ms = 0;
    last_status[0] = '\0';
    if (!enabled)
        return;
    uint64_t usec = 0;
    /* > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID, if set, is this process. */
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        watchdog_ms = (int64_t)(usec / 2000);
        if (watchdog_ms < 1)
            watchdog_ms = 1;
    }
    next_watchdog_ms = next_status_ms = fm_now_ms();
    fm_log_debug("systemd notification on (%s), watchdog %s%lld ms", sock,
                 watchdog_ms ? "every " : "off, ", (long long)watchdog_ms);
}

void fm_notify_disable(void)
{
    enabled = false;
}

bool fm_notify_enabled(void)
{
    return enabled;
}

void fm_notify_ready(void)
{
    if (!enabled || ready_sent)
        return;
    ready_sent = true;
    send_state("READY=1");
}

bool fm_notify_tick(void)
{
    if (!enabled)
        return false;
    int64_t now = fm_now_ms();
    if (watchdog_ms > 0 && now >= next_watchdog_ms) {
        send_state("WATCHDOG=1");
        next_watchdog_ms = now + watchdog_ms;
    }
    if (now < next_status_ms)
        return false;
    next_status_ms = now + STATUS_INTERVAL_MS;
    return true;
}

long fm_notify_cap_wait(long wait_ms)
{
    if (!enabled)
        return wait_ms;
    int64_t due = next_status_ms;
    if (watchdog_ms > 0 && next_watchdog_ms < due)
        due = next_watchdog_ms;
    int64_t left = due - fm_now_ms();
    if (left < 0)
        left = 0;
    return wait_ms < left ? wait_ms : (long)left;
}

void fm_notify_status(const char *fmt, ...)
{
    if (!enabled)
        return;
    char text[STATUS_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* One assignment per line in the protocol: a newline would end the status. */
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    if (strcmp(text, last_status) == 0)
        return;
    memcpy(last_status, text, sizeof last_status);
    char msg[sizeof "STATUS=" + STATUS_MAX];
    snprintf(msg, sizeof msg, "STATUS=%s", text);
    send_state(msg);
}

void fm_notify_stopping(void)
{
    if (!enabled)
        return;
    send_state("STOPPING=1");
}

long fm_notify_raise_fd_limit(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0)
        return -1;
    if (r.rlim_cur < r.rlim_max) {
        rlim_t was = r.rlim_cur;
        r.rlim_cur = r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) != 0)
            r.rlim_cur = was;
    }
    return r.rlim_cur == RLIM_INFINITY || r.rlim_cur > (rlim_t)LONG_MAX ? LONG_MAX
                                                                       : (long)r.rlim_cur;
}
