/* status_metrics.c - a StatusReply as Prometheus metrics
 * (include/facemill/status_metrics.h). */
#include "facemill/status_metrics.h"
#include "facemill/metrics.h"

#include <math.h>

/* A family with one unlabelled sample. */
static void one(FILE *out, const char *name, const char *type, const char *help, double v)
{
    fm_metrics_family(out, name, type, help);
    fm_metrics_sample(out, name, NULL, NULL, v);
}

/* Which field of WorkerInfo a per-worker family reports. */
enum { W_CREDIT, W_BUSY, W_HEARD };

static double worker_value(const Facemill__WorkerInfo *w, int which)
{
    switch (which) {
    case W_CREDIT: return w->credit;
    case W_BUSY: return w->busy;
    default: return (double)w->last_seen_ms / 1000.0;
    }
}

static void per_worker(FILE *out, const Facemill__StatusReply *s, const char *name,
                       const char *help, int which)
{
    fm_metrics_family(out, name, FM_METRICS_GAUGE, help);
    for (size_t i = 0; i < s->n_worker; i++)
        fm_metrics_sample(out, name, "worker", s->worker[i]->name ? s->worker[i]->name : "",
                          worker_value(s->worker[i], which));
}

static void per_tag(FILE *out, const Facemill__StatusReply *s, const char *name,
                    const char *help, double v)
{
    fm_metrics_family(out, name, FM_METRICS_GAUGE, help);
    fm_metrics_sample(out, name, "tag", s->tag ? s->tag : "", v);
}

void fm_status_metrics_write(FILE *out, const Facemill__StatusReply *s)
{
    one(out, "facemill_jobs_queued", FM_METRICS_GAUGE, "Jobs waiting for a worker.",
        (double)s->queued);
    one(out, "facemill_jobs_in_flight", FM_METRICS_GAUGE,
        "Jobs dispatched to a worker and not yet reported done.", (double)s->in_flight);
    one(out, "facemill_jobs_awaiting_commit", FM_METRICS_GAUGE,
        "Jobs done by a worker (or quarantined) whose result the sink has not committed.",
        (double)s->awaiting_commit);
    one(out, "facemill_jobs_committed_total", FM_METRICS_COUNTER,
        "Jobs whose result the sink committed, since the journal was created.",
        (double)s->committed);
    one(out, "facemill_jobs_quarantined_total", FM_METRICS_COUNTER,
        "Jobs committed as failed after broker.max_attempts, since the journal was created.",
        (double)s->quarantined);
    one(out, "facemill_jobs_committed_per_second", FM_METRICS_GAUGE,
        "Commits per second over the last minute.", s->jobs_per_s);
    one(out, "facemill_queue_max_jobs", FM_METRICS_GAUGE,
        "Queued jobs at which clients are told to slow down (broker.max_queue).",
        (double)s->max_queue);
    one(out, "facemill_workers", FM_METRICS_GAUGE, "Worker processes the broker knows.",
        s->workers);
    one(out, "facemill_workers_credit", FM_METRICS_GAUGE,
        "Jobs all worker processes hold at once (their credit, summed).", s->credit_total);
    one(out, "facemill_workers_credit_free", FM_METRICS_GAUGE,
        "Credit not taken by dispatched jobs, summed over worker processes.", s->credit_free);
    one(out, "facemill_broker_uptime_seconds", FM_METRICS_GAUGE,
        "Seconds since the broker started.", (double)s->uptime_ms / 1000.0);
    one(out, "facemill_broker_disk_full", FM_METRICS_GAUGE,
        "1 while the broker's journal is on a full disk (submits wait), else 0.",
        s->journal_disk_full ? 1.0 : 0.0);
    one(out, "facemill_sink_disk_full", FM_METRICS_GAUGE,
        "1 while the sink's results database is on a full disk, as the sink last said.",
        s->sink_disk_full ? 1.0 : 0.0);
    if (s->has_sink_silent) /* not from an older broker, which does not know */
        one(out, "facemill_sink_last_heard_seconds", FM_METRICS_GAUGE,
            "Seconds since the broker last heard from the sink (+Inf: not since it started).",
            s->has_sink_last_seen_ms ? (double)s->sink_last_seen_ms / 1000.0 : INFINITY);
    per_worker(out, s, "facemill_worker_credit", "Jobs a worker process holds at once.",
               W_CREDIT);
    per_worker(out, s, "facemill_worker_jobs", "Jobs dispatched to a worker process now.",
               W_BUSY);
    per_worker(out, s, "facemill_worker_last_heard_seconds",
               "Seconds since the broker last heard from a worker process.", W_HEARD);
    if (!s->has_tag_total)
        return;
    per_tag(out, s, "facemill_tag_jobs", "Jobs of the run (tag) the status was asked for.",
            (double)s->tag_total);
    per_tag(out, s, "facemill_tag_jobs_committed", "Committed jobs of the run, failed included.",
            (double)s->tag_committed);
    per_tag(out, s, "facemill_tag_jobs_failed", "Jobs of the run committed with an error result.",
            (double)s->tag_failed);
}
