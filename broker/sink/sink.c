/* sink.c - the sink service: PULL results, store them in batched transactions, tell
 * the broker what is stored (include/facemill/sink.h; the protocol is proto/README.md).
 *
 * Why batching: one fsync per transaction, not per image. A batch is committed when it
 * holds sink.batch results or its first result has waited sink.batch_ms, whichever
 * comes first, and at shutdown. Only after COMMIT returns are the batch's job ids sent
 * to the broker (duplicates too, since an earlier commit notice may have been lost with
 * a broker restart). A failed transaction is rolled back and its jobs are not reported:
 * the broker dispatches them again after its commit timeout, so nothing is lost.
 *
 * One thread, two sockets: the PULL socket (bound) and a DEALER connected to the
 * broker's sink.commits ROUTER. Both have ZMQ_MAXMSGSIZE and a finite linger.
 */
#include "facemill/sink.h"
#include "facemill/log.h"
#include "facemill/notify.h"
#include "facemill/wire.h"
#include "sink_metrics.h"

#include <zmq.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Entries per Commit message: keeps each message far below any size limit. */
#define COMMIT_CHUNK 512

typedef struct pending {
    char *job_id;
    char *tag;
    int failed;
} pending;

struct fm_sink {
    void *pull;
    void *dealer; /* NULL when commits go nowhere */
    fm_results *db;
    int64_t batch;
    int64_t batch_ms;
    int64_t heartbeat_ms;
    char *name;
    pending *pend; /* results of the open transaction, batch entries */
    int64_t n_pend;
    int64_t batch_start_ms; /* when the open transaction got its first result */
    int in_tx;
    int64_t next_heartbeat_ms;
    fm_sink_stats stats;
    char *db_path, *metrics_file; /* metrics_file NULL: no metrics */
    int64_t metrics_ms, next_metrics_ms;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void clear_pending(fm_sink *s)
{
    for (int64_t i = 0; i < s->n_pend; i++) {
        free(s->pend[i].job_id);
        free(s->pend[i].tag);
    }
    s->n_pend = 0;
}

fm_status fm_sink_open(fm_sink **out, void *zctx, const fm_sink_opts *o, fm_error *err)
{
    fm_status rc = FM_OK;
    if (!out || !zctx || !o || !o->db_path || !o->results || o->batch < 1 ||
        o->batch_ms < 0 || o->heartbeat_ms < 1)
        return fm_error_set(err, FM_ERR_INVALID, "fm_sink_open: bad arguments");
    *out = NULL;
    fm_sink *s = calloc(1, sizeof *s);
    if (!s)
        return fm_error_set(err, FM_ERR_NOMEM, "sink: out of memory");
    s->batch = o->batch;
    s->batch_ms = o->batch_ms;
    s->heartbeat_ms = o->heartbeat_ms;
    s->name = o->name ? strdup(o->name) : NULL;
    s->pend = calloc((size_t)o->batch, sizeof *s->pend);
    s->db_path = strdup(o->db_path);
    s->metrics_file = o->metrics_file && o->metrics_file[0] ? strdup(o->metrics_file) : NULL;
    s->metrics_ms = o->metrics_interval_ms > 0 ? o->metrics_interval_ms : 15000;
    if (!s->pend || (o->name && !s->name) || !s->db_path ||
        (o->metrics_file && o->metrics_file[0] && !s->metrics_file)) {
        rc = fm_error_set(err, FM_ERR_NOMEM, "sink: out of memory");
        goto fail;
    }
    rc = fm_results_open(&s->db, o->db_path, 0, err);
    if (rc != FM_OK)
        goto fail;
    s->pull = zmq_socket(zctx, ZMQ_PULL);
    if (!s->pull || fm_wire_setup(s->pull, o->max_msg_size, 0, err) != FM_OK ||
        zmq_bind(s->pull, o->results) != 0) {
        rc = fm_error_set(err, FM_ERR_IO, "sink: cannot bind %s: %s", o->results,
                          zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (o->commits && o->commits[0]) {
        s->dealer = zmq_socket(zctx, ZMQ_DEALER);
        if (!s->dealer || fm_wire_setup(s->dealer, o->max_msg_size, 2000, err) != FM_OK ||
            zmq_connect(s->dealer, o->commits) != 0) {
            rc = fm_error_set(err, FM_ERR_IO, "sink: cannot connect to %s: %s", o->commits,
                              zmq_strerror(zmq_errno()));
            goto fail;
        }
    }
    *out = s;
    return FM_OK;
fail:
    fm_sink_close(&s);
    return rc;
}

void fm_sink_close(fm_sink **sp)
{
    if (!sp || !*sp)
        return;
    fm_sink *s = *sp;
    if (s->in_tx)
        fm_results_rollback(s->db);
    clear_pending(s);
    free(s->pend);
    if (s->pull)
        zmq_close(s->pull);
    if (s->dealer)
        zmq_close(s->dealer);
    fm_results_close(&s->db);
    free(s->name);
    free(s->db_path);
    free(s->metrics_file);
    free(s);
    *sp = NULL;
}

void fm_sink_get_stats(const fm_sink *s, fm_sink_stats *out)
{
    *out = s->stats;
}

/* Sends env to the broker without blocking. A message that cannot be queued (the
 * broker has been away long enough to fill the queue) is dropped: commit notices are
 * best effort by protocol, the broker re-dispatches what it never hears about. */
static void send_to_broker(fm_sink *s, Facemill__Envelope *env)
{
    fm_error e = {0};
    if (!s->dealer || fm_wire_send(s->dealer, NULL, env, ZMQ_DONTWAIT, &e) == FM_OK)
        return;
    if (env->body_case == FACEMILL__ENVELOPE__BODY_HEARTBEAT)
        fm_log_debug("sink: heartbeat to the broker dropped: %s", fm_error_text(&e));
    else
        fm_log_warn("sink: %s to the broker dropped: %s", fm_wire_body_name(env),
                    fm_error_text(&e));
}

static void send_commits(fm_sink *s)
{
    for (int64_t first = 0; first < s->n_pend; first += COMMIT_CHUNK) {
        int64_t n = s->n_pend - first < COMMIT_CHUNK ? s->n_pend - first : COMMIT_CHUNK;
        Facemill__CommitEntry entries[COMMIT_CHUNK];
        Facemill__CommitEntry *ptrs[COMMIT_CHUNK];
        for (int64_t i = 0; i < n; i++) {
            const pending *p = &s->pend[first + i];
            facemill__commit_entry__init(&entries[i]);
            entries[i].job_id = p->job_id;
            entries[i].tag = p->tag;
            entries[i].has_failed = 1;
            entries[i].failed = p->failed;
            ptrs[i] = &entries[i];
        }
        Facemill__Commit commit = FACEMILL__COMMIT__INIT;
        commit.n_entries = (size_t)n;
        commit.entries = ptrs;
        Facemill__Envelope env;
        fm_wire_envelope_init(&env);
        env.body_case = FACEMILL__ENVELOPE__BODY_COMMIT;
        env.commit = &commit;
        send_to_broker(s, &env);
    }
}

/* Ends the open transaction: commit, then report. On failure nothing is reported. */
static void finish_batch(fm_sink *s)
{
    if (!s->in_tx)
        return;
    fm_error e = {0};
    s->in_tx = 0;
    if (fm_results_commit(s->db, &e) != FM_OK) {
        fm_log_error("sink: %s; %lld results not stored (they will be dispatched again)",
                     fm_error_text(&e), (long long)s->n_pend);
        s->stats.failed_transactions++;
        clear_pending(s);
        return;
    }
    s->stats.commits++;
    fm_log_debug("sink: committed %lld results", (long long)s->n_pend);
    send_commits(s);
    clear_pending(s);
}

static void heartbeat(fm_sink *s)
{
    Facemill__Heartbeat hb = FACEMILL__HEARTBEAT__INIT;
    hb.has_interval_ms = 1;
    hb.interval_ms = (uint32_t)s->heartbeat_ms;
    hb.name = s->name;
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    send_to_broker(s, &env);
}

/* Stores one result in the open transaction (opening one when needed). */
static void store(fm_sink *s, const Facemill__Result *res)
{
    fm_error e = {0};
    if (!s->in_tx) {
        if (fm_results_begin(s->db, &e) != FM_OK) {
            fm_log_error("sink: %s; result for %s dropped", fm_error_text(&e),
                         res->job_id ? res->job_id : "?");
            return;
        }
        s->in_tx = 1;
        s->batch_start_ms = fm_wire_now_ms();
    }
    int inserted = 0, failed = 0;
    fm_status rc = fm_results_put(s->db, res, wall_ms(), &inserted, &failed, &e);
    if (rc == FM_ERR_INVALID) {
        s->stats.dropped++;
        fm_log_warn("sink: %s: dropped", fm_error_text(&e));
        return;
    }
    if (rc != FM_OK) {
        /* The statement failed inside the transaction: give the whole batch up. */
        fm_log_error("sink: %s; %lld results not stored (they will be dispatched again)",
                     fm_error_text(&e), (long long)s->n_pend + 1);
        fm_results_rollback(s->db);
        s->in_tx = 0;
        s->stats.failed_transactions++;
        clear_pending(s);
        return;
    }
    pending *p = &s->pend[s->n_pend];
    p->job_id = strdup(res->job_id);
    p->tag = dup_or_null(res->tag);
    p->failed = failed;
    if (!p->job_id || (res->tag && !p->tag)) {
        free(p->job_id);
        free(p->tag);
        fm_log_error("sink: out of memory; commit of %s not reported", res->job_id);
    } else {
        s->n_pend++;
    }
    if (inserted)
        s->stats.stored++;
    else
        s->stats.duplicates++;
    if (s->n_pend >= s->batch)
        finish_batch(s);
}

/* Reads one message from sock without waiting. Returns 1 with *env set (caller frees
 * with fm_wire_free), 0 when nothing is waiting or the message was dropped (logged),
 * -1 on a socket error (err set). */
static int receive(fm_sink *s, void *sock, Facemill__Envelope **env, fm_error *err)
{
    fm_error e = {0};
    fm_status st = fm_wire_recv(sock, NULL, env, ZMQ_DONTWAIT, &e);
    switch (st) {
    case FM_OK:
        return 1;
    case FM_ERR_TIMEOUT:
    case FM_ERR_INTERRUPTED:
        return 0;
    case FM_ERR_VERSION:
    case FM_ERR_PROTOCOL:
    case FM_ERR_NOMEM:
        s->stats.dropped++;
        fm_log_warn("sink: dropped a message: %s", fm_error_text(&e));
        return 0;
    default:
        fm_error_set(err, st, "sink: receive: %s", fm_error_text(&e));
        return -1;
    }
}

fm_status fm_sink_run(fm_sink *s, volatile sig_atomic_t *stop, fm_error *err)
{
    zmq_pollitem_t items[2] = {{s->pull, 0, ZMQ_POLLIN, 0}, {s->dealer, 0, ZMQ_POLLIN, 0}};
    int n_items = s->dealer ? 2 : 1;
    s->next_heartbeat_ms = fm_wire_now_ms();
    while (!*stop) {
        /* Both no-ops unless facemill-sink's main() asked for them (SIGHUP handler,
         * fm_notify_init): `facemill label` runs this loop in-process. */
        fm_log_reopen_if_requested();
        if (fm_notify_tick())
            fm_notify_status("%lld results stored, %lld duplicates, %lld transactions",
                             (long long)s->stats.stored, (long long)s->stats.duplicates,
                             (long long)s->stats.commits);
        int64_t now = fm_wire_now_ms();
        if (now >= s->next_heartbeat_ms) {
            heartbeat(s);
            s->next_heartbeat_ms = now + s->heartbeat_ms;
        }
        if (s->in_tx && now - s->batch_start_ms >= s->batch_ms)
            finish_batch(s);
        if (s->metrics_file && now >= s->next_metrics_ms) {
            sink_metrics_write(s->metrics_file, s->db_path, &s->stats, s->n_pend);
            s->next_metrics_ms = now + s->metrics_ms;
        }
        int64_t wait = s->next_heartbeat_ms - now;
        if (s->in_tx && s->batch_start_ms + s->batch_ms - now < wait)
            wait = s->batch_start_ms + s->batch_ms - now;
        if (wait > 100)
            wait = 100;
        if (wait < 0)
            wait = 0;
        int n = zmq_poll(items, n_items, fm_notify_cap_wait((long)wait));
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            finish_batch(s);
            return fm_error_set(err, FM_ERR_IO, "sink: poll: %s", zmq_strerror(zmq_errno()));
        }
        if (items[0].revents & ZMQ_POLLIN) {
            /* Drain up to one batch, then look at the clock again. */
            for (int64_t k = 0; k < s->batch && !*stop; k++) {
                Facemill__Envelope *env = NULL;
                int r = receive(s, s->pull, &env, err);
                if (r < 0) {
                    finish_batch(s);
                    return err ? err->code : FM_ERR_IO;
                }
                if (r == 0)
                    break;
                if (env->body_case == FACEMILL__ENVELOPE__BODY_RESULT && env->result) {
                    s->stats.received++;
                    store(s, env->result);
                } else {
                    s->stats.dropped++;
                    fm_log_warn("sink: dropped a message that is not a Result (body %d)",
                                (int)env->body_case);
                }
                fm_wire_free(&env);
            }
        }
        if (n_items > 1 && (items[1].revents & ZMQ_POLLIN)) {
            Facemill__Envelope *env = NULL;
            while (receive(s, s->dealer, &env, err) > 0) {
                if (env->body_case == FACEMILL__ENVELOPE__BODY_ERROR && env->error)
                    fm_log_warn("sink: broker refused a message: %s",
                                env->error->text ? env->error->text : "(no text)");
                fm_wire_free(&env);
            }
        }
    }
    finish_batch(s);
    return FM_OK;
}
