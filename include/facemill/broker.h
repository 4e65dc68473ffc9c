/* broker.h - the facemill broker: takes jobs from clients, journals them, hands them
 * to workers by free credit, and follows them until the sink commits their results.
 *
 * Why it exists: it is the one stable address of a facemill cluster and the place
 * that guarantees every accepted job ends as exactly one stored result (journal,
 * re-dispatch of lost or timed-out jobs, quarantine after broker.max_attempts). The
 * protocol it speaks is proto/README.md; `facemill-broker` runs one, and `facemill
 * label` embeds one (run it in its own thread or process: it owns its sockets).
 *
 * Ownership: fm_broker_open returns a broker the caller owns (fm_broker_close). The
 * ZeroMQ context may be the caller's (shared with inproc peers) or the broker's own.
 */
#ifndef FACEMILL_BROKER_H
#define FACEMILL_BROKER_H

#include "facemill/config.h"
#include "facemill/status.h"

#include <signal.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* broker.fsync values (names "always", "batch", "off" in the config). */
typedef enum fm_broker_fsync {
    FM_BROKER_FSYNC_ALWAYS = 0, /* SQLite synchronous=FULL: every Submit on disk */
    FM_BROKER_FSYNC_BATCH = 1,  /* synchronous=NORMAL (WAL): crash-safe, not power-safe */
    FM_BROKER_FSYNC_OFF = 2,    /* synchronous=OFF */
} fm_broker_fsync;

typedef struct fm_broker fm_broker;

/* Counters, for status replies and tests. */
typedef struct fm_broker_stats {
    uint64_t queued, in_flight, awaiting_commit; /* jobs in each state now */
    uint64_t committed, quarantined;             /* since the journal was created */
    uint64_t accepted, dispatched, requeued;     /* since this broker started */
    uint32_t workers, credit_total, credit_free;
} fm_broker_stats;

/* Reads the keys (security.*, include/facemill/auth.h: with security.cert every
 * socket uses CurveZMQ and a ZAP handler admits each role's keys; without it, an
 * endpoint other machines reach is refused unless security.insecure), opens the
 * journal (broker.journal: created when missing, every uncommitted job in it
 * re-queued), binds broker.clients, broker.workers and sink.commits, and connects a
 * PUSH socket to sink.results (for quarantined jobs). zmq_ctx may be NULL: the broker
 * creates and owns a context; a shared one must not hold another ZAP handler. c is
 * copied. On success *out is the caller's (fm_broker_close); on failure *out is NULL
 * and err names the setting, endpoint or file. */
fm_status fm_broker_open(fm_broker **out, const fm_config *c, void *zmq_ctx,
                         fm_error *err);

/* Serves until *stop becomes nonzero (set it from a signal handler; zmq_poll is woken
 * by the signal, or notices within broker.heartbeat_ms). Returns FM_OK on a stop,
 * or an error (journal write failed, socket failure) after which the broker should
 * be closed. */
fm_status fm_broker_run(fm_broker *b, volatile sig_atomic_t *stop, fm_error *err);

/* Copies the current counters into *s. */
void fm_broker_get_stats(const fm_broker *b, fm_broker_stats *s);

/* Closes sockets (linger 0 for unsent messages: the journal has every job), the
 * journal and the context if the broker owns it; sets *b to NULL. Accepts NULL. */
void fm_broker_close(fm_broker **b);

#ifdef __cplusplus
}
#endif
#endif
