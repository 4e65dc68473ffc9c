/* notify.h - tells systemd how a facemill service program is doing (sd_notify(3)):
 * READY=1 once it serves, a short STATUS= line, WATCHDOG=1 keep-alives and
 * STOPPING=1.
 *
 * Why it exists: facemill-broker, facemill-sink and facemill-worker run as
 * Type=notify units (ops/systemd/), so `systemctl start` returns when the program
 * really serves, `systemctl status` shows what it is doing, and a main loop that
 * hangs is restarted by the watchdog. The broker's and the sink's loops live in
 * libraries that `facemill label` also runs in-process, so the loops always call
 * fm_notify_tick() and notification is switched on only by a program's main()
 * calling fm_notify_init(). Until then, and whenever NOTIFY_SOCKET is not set (not
 * started by systemd), every function here does nothing and costs one branch.
 *
 * Global state (one of the few): whether notification is on, the watchdog interval
 * and when the watchdog and the status were last sent. Call everything from the one
 * thread that runs the program's main loop.
 */
#ifndef FACEMILL_NOTIFY_H
#define FACEMILL_NOTIFY_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Switches notification on when the environment names a notification socket
 * (NOTIFY_SOCKET), and reads the watchdog interval (WATCHDOG_USEC, and WATCHDOG_PID
 * when set, which must be this process). Call once from main(), before the loop. */
void fm_notify_init(void);

/* Switches notification off for good. A forked child calls it first thing: it
 * inherits the parent's state, but only the main process speaks for the service
 * (NotifyAccess=main). */
void fm_notify_disable(void);

/* True when fm_notify_init found a notification socket (and it was not disabled). */
bool fm_notify_enabled(void);

/* READY=1: the program serves (sockets bound, database open, pipelines running).
 * Sent once; later calls do nothing. */
void fm_notify_ready(void);

/* To be called on every turn of the main loop (whose waits go through
 * fm_notify_cap_wait). Sends WATCHDOG=1 when half the watchdog interval has passed
 * since the last one. Returns true when a STATUS= line is due (the first call, then
 * about once a second): the caller then formats one and passes it to
 * fm_notify_status. Always false when off. */
bool fm_notify_tick(void);

/* The loop's next wait, wait_ms, shortened so that it wakes when the next watchdog
 * ping or status line is due (0 when one is due now). wait_ms itself when off, so a
 * loop outside systemd keeps its rhythm. */
long fm_notify_cap_wait(long wait_ms);

/* STATUS=text (printf format; one line, truncated to 200 bytes). Not sent when it
 * equals the last status sent. */
void fm_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* STOPPING=1: the program was asked to stop and is finishing its work. */
void fm_notify_stopping(void);

/* Raises this process's soft limit of open files (RLIMIT_NOFILE) to its hard limit
 * and returns the soft limit in force afterwards (-1 when it cannot be read). Why: the
 * broker and the sink hold a descriptor per connected peer, and libzmq, out of
 * descriptors, stops accepting and spins on its listening socket; systemd's default
 * soft limit (1024) is far below its hard limit (524288), which the units raise too
 * (LimitNOFILE). Call from main() of a service program. */
long fm_notify_raise_fd_limit(void);

#ifdef __cplusplus
}
#endif
#endif
