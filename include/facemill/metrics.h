/* metrics.h - the Prometheus text exposition format (version 0.0.4), and files of it
 * for node_exporter's textfile collector.
 *
 * Why it exists: `facemill status --format prometheus` prints the broker's state in
 * this format, and facemill-broker and facemill-sink write it to metrics.file every
 * metrics.interval_ms, where node_exporter's textfile collector picks it up (so a
 * cluster is monitored without a scrape port of its own). One writer keeps the
 * escaping, the number format and the atomic replacement in one place.
 *
 * A family is written as
 *
 *   fm_metrics_family(out, "facemill_jobs_queued", FM_METRICS_GAUGE, "Jobs waiting ...");
 *   fm_metrics_sample(out, "facemill_jobs_queued", NULL, NULL, 12);
 *
 * giving "# HELP", "# TYPE" and one sample line per call. Names follow Prometheus
 * conventions: facemill_ prefix, base units in the name (_seconds, _bytes), _total
 * for counters. Label values are escaped (\\, \", \n); HELP text too (\\, \n).
 * Numbers: integers exactly (up to 2^53), others with 17 significant digits, NaN and
 * infinities as Prometheus spells them.
 */
#ifndef FACEMILL_METRICS_H
#define FACEMILL_METRICS_H

#include "facemill/status.h"

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FM_METRICS_GAUGE "gauge"
#define FM_METRICS_COUNTER "counter"

/* "# HELP name help" and "# TYPE name type" lines. */
void fm_metrics_family(FILE *out, const char *name, const char *type, const char *help);

/* One sample: name{label="value"} v, or name v when label is NULL. */
void fm_metrics_sample(FILE *out, const char *name, const char *label, const char *value,
                       double v);

/* The metrics file of one program: pattern with each "%n" replaced by role ("broker",
 * "sink"), so one configuration serves both programs; "%%" is a '%'. Returns 0, or -1
 * when the result does not fit in size bytes. */
int fm_metrics_path(char *buf, size_t size, const char *pattern, const char *role);

/* A SQLite database on disk: bytes of the file at path and of its -wal companion (0
 * for a file that is missing). */
double fm_metrics_db_bytes(const char *path);

/* The filesystem holding the file at path (its directory; "." for a bare name):
 * bytes available to this user in *avail and its size in *size. Returns 0, or -1
 * when statvfs fails. */
int fm_metrics_filesystem(const char *path, double *avail, double *size);

/* Replaces the file at path with len bytes of text: written to a temporary file in
 * the same directory, flushed to disk and renamed over path, so a reader (the
 * textfile collector) sees the old file or the new one, never half of one. The file
 * is readable by all (0644). Errors: FM_ERR_IO naming the file. */
fm_status fm_metrics_write_file(const char *path, const char *text, size_t len,
                                fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
