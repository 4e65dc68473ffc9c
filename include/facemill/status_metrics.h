/* status_metrics.h - the broker's status (the protocol's StatusReply) as Prometheus
 * metrics (metrics.h writes the format).
 *
 * Why in the wire layer: `facemill status --format prometheus` (the client) and the
 * broker's own metrics.file print the same families from the same message, so the
 * two can never disagree on a name or a unit. The families (all facemill_ prefixed):
 *
 *   jobs_queued, jobs_in_flight (at workers), jobs_awaiting_commit      gauges
 *   jobs_committed_total, jobs_quarantined_total (since the journal
 *     was created)                                                      counters
 *   jobs_committed_per_second (commits over the last minute)            gauge
 *   queue_max_jobs (broker.max_queue), workers, workers_credit,
 *     workers_credit_free, broker_uptime_seconds                        gauges
 *   worker_credit, worker_jobs, worker_last_heard_seconds
 *     {worker="NAME:PID/INDEX"}, one sample per worker process          gauges
 *   tag_jobs, tag_jobs_committed, tag_jobs_failed {tag="..."}, when
 *     the status was asked for a tag                                    gauges
 *
 * The broker's file adds what only the broker's machine knows (broker_metrics.c).
 */
#ifndef FACEMILL_STATUS_METRICS_H
#define FACEMILL_STATUS_METRICS_H

#include "facemill.pb-c.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the families above for s to out. */
void fm_status_metrics_write(FILE *out, const Facemill__StatusReply *s);

#ifdef __cplusplus
}
#endif
#endif
