/* sink_metrics.h - the sink's metrics.file (sink_metrics.c). */
#ifndef FACEMILL_SINK_METRICS_H
#define FACEMILL_SINK_METRICS_H

#include "facemill/sink.h"

/* Replaces the file path (%n already replaced) with the sink's counters, the results
 * not yet committed (pending), the database's size and its filesystem's free space,
 * in the Prometheus text format. A failure is logged, never returned: metrics must
 * not stop the sink. */
void sink_metrics_write(const char *path, const char *db_path, const fm_sink_stats *st,
                        int64_t pending);

#endif
