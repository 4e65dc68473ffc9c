/* broker_limits.h - the broker's bounds on what clients may make it hold (private to
 * the broker): the size of one Submit, and the jobs and bytes held at once. */
#ifndef FACEMILL_BROKER_LIMITS_H
#define FACEMILL_BROKER_LIMITS_H

#include "facemill/config.h"
#include "facemill/status.h"

#include <stddef.h>
#include <stdint.h>

/* An fm_wire_check_fn for the clients socket (ctx: the fm_config): a Submit of more
 * than broker.max_submit_jobs jobs or broker.max_submit_bytes bytes is refused with
 * FM_ERR_LIMIT before it is decoded, err saying which bound and by how much.
 * Anything else passes (the decoder judges it). */
fm_status fm_broker_check_submit(void *ctx, const void *data, size_t len, fm_error *err);

/* Whether a Submit of n_jobs jobs and bytes bytes must be answered SlowDown: the
 * broker holds held jobs of held_bytes (queued, at workers, awaiting commit), and
 * taking it would pass broker.max_queue or broker.max_queue_bytes. A broker holding
 * nothing takes any Submit within the per-Submit caps. */
int fm_broker_queue_full(const fm_config *c, uint64_t held, uint64_t held_bytes,
                         size_t n_jobs, size_t bytes);

/* Whether the filesystem holding path (a file; its directory is looked at) has at
 * least bytes free for an unprivileged writer. 1 when it cannot be told. */
int fm_broker_disk_has_room(const char *path, uint64_t bytes);

#endif
