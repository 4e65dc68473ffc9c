/* broker_metrics.c - what facemill-broker writes to metrics.file: the status every
 * client can ask for (status_metrics.h), plus what only the broker's machine knows,
 * the journal's size and the free space of its filesystem.
 *
 * Why free space and not a disk-full state: the broker has no such state. A journal
 * write that fails (a full disk among other causes) ends fm_broker_run with the error
 * and facemill-broker exits; the free bytes let an alert fire before that happens.
 */
#define _DEFAULT_SOURCE /* open_memstream */
#include "broker_metrics.h"

#include "facemill/metrics.h"
#include "facemill/status_metrics.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

fm_status fm_broker_metrics_write(const fm_config *c, const Facemill__StatusReply *r,
                                  fm_error *err)
{
    char path[PATH_MAX];
    if (fm_metrics_path(path, sizeof path, c->metrics.file, "broker") != 0)
        return fm_error_set(err, FM_ERR_INVALID, "metrics.file: path too long");
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out)
        return fm_error_set(err, FM_ERR_NOMEM, "metrics: %s", strerror(errno));
    fm_status_metrics_write(out, r);
    fm_metrics_family(out, "facemill_broker_journal_bytes", FM_METRICS_GAUGE,
                      "Size of the broker's journal (broker.journal and its WAL).");
    fm_metrics_sample(out, "facemill_broker_journal_bytes", NULL, NULL,
                      fm_metrics_db_bytes(c->broker.journal));
    double avail, size;
    if (fm_metrics_filesystem(c->broker.journal, &avail, &size) == 0) {
        fm_metrics_family(out, "facemill_broker_journal_filesystem_avail_bytes",
                          FM_METRICS_GAUGE,
                          "Bytes available to the broker on the journal's filesystem.");
        fm_metrics_sample(out, "facemill_broker_journal_filesystem_avail_bytes", NULL, NULL,
                          avail);
        fm_metrics_family(out, "facemill_broker_journal_filesystem_size_bytes",
                          FM_METRICS_GAUGE, "Size of the journal's filesystem.");
        fm_metrics_sample(out, "facemill_broker_journal_filesystem_size_bytes", NULL, NULL,
                          size);
    }
    if (fclose(out) != 0) {
        free(text);
        return fm_error_set(err, FM_ERR_NOMEM, "metrics: out of memory");
    }
    fm_status st = fm_metrics_write_file(path, text, len, err);
    free(text);
    return st;
}
