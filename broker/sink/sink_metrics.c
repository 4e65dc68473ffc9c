/* sink_metrics.c - what facemill-sink writes to metrics.file (sink_metrics.h).
 *
 * Disk: the sink has no disk-full state of its own. A transaction that fails (a full
 * disk among other causes) is rolled back and its results are dispatched again, so
 * facemill_sink_transactions_failed_total counts those, and the free bytes of the
 * database's filesystem let an alert fire before it fills.
 */
#define _DEFAULT_SOURCE /* open_memstream */
#include "sink_metrics.h"

#include "facemill/log.h"
#include "facemill/metrics.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void counter(FILE *out, const char *name, const char *help, int64_t v)
{
    fm_metrics_family(out, name, FM_METRICS_COUNTER, help);
    fm_metrics_sample(out, name, NULL, NULL, (double)v);
}

static void gauge(FILE *out, const char *name, const char *help, double v)
{
    fm_metrics_family(out, name, FM_METRICS_GAUGE, help);
    fm_metrics_sample(out, name, NULL, NULL, v);
}

static void filesystem(FILE *out, const char *db_path)
{
    double avail, size;
    if (fm_metrics_filesystem(db_path, &avail, &size) != 0)
        return;
    gauge(out, "facemill_sink_database_filesystem_avail_bytes",
          "Bytes available to the sink on the results database's filesystem.", avail);
    gauge(out, "facemill_sink_database_filesystem_size_bytes",
          "Size of the results database's filesystem.", size);
}

void sink_metrics_write(const char *path, const char *db_path, const fm_sink_stats *st,
                        int64_t pending)
{
    char *text = NULL;
    size_t len = 0;
    fm_error e = {0};
    FILE *out = open_memstream(&text, &len);
    if (!out) {
        fm_log_warn("sink: metrics: out of memory");
        return;
    }
    counter(out, "facemill_sink_results_received_total", "Result messages received.",
            st->received);
    counter(out, "facemill_sink_results_stored_total", "Results stored as new rows.",
            st->stored);
    counter(out, "facemill_sink_results_duplicate_total",
            "Results whose job id was already stored (stored once).", st->duplicates);
    counter(out, "facemill_sink_messages_dropped_total",
            "Messages dropped as unreadable (not a Result, another version, no job id).",
            st->dropped);
    counter(out, "facemill_sink_transactions_total", "Transactions committed.", st->commits);
    counter(out, "facemill_sink_transactions_failed_total",
            "Transactions rolled back (disk full, I/O error); their jobs are dispatched "
            "again.",
            st->failed_transactions);
    gauge(out, "facemill_sink_results_pending", "Results in the open transaction.",
          (double)pending);
    gauge(out, "facemill_sink_database_bytes", "Size of the results database and its WAL.",
          fm_metrics_db_bytes(db_path));
    filesystem(out, db_path);
    if (fclose(out) != 0) {
        free(text);
        fm_log_warn("sink: metrics: out of memory");
        return;
    }
    if (fm_metrics_write_file(path, text, len, &e) != FM_OK)
        fm_log_warn("sink: %s", fm_error_text(&e));
    free(text);
}
