/* sink.c - the sink service: PULL results, stage them in batched transactions, ask
 * the broker about them, store the ones it confirms and tell it what is stored
 * (include/facemill/sink.h; the protocol is proto/README.md).
 *
 * Why staging: anyone who can push to sink.results could otherwise store a result for
 * any job id before the real one arrives (job ids are predictable), and the real one
 * would be dropped as a duplicate. So a result first waits in the staged table under
 * its dispatch token, the sink reports it staged, and only when the broker confirms
 * that it sent the job with that token does it become the job's row; a refused one is
 * dropped. Staged results the broker has not answered are reported again every
 * restage interval (and at start), so a lost message or a restart of either side
 * delays a result but never loses it. Without a broker (commits "", tests) results
 * are stored at once.
 *
 * Why batching: one fsync per transaction, not per image. A batch is committed when it
 * holds sink.batch results or its first result has waited sink.batch_ms, whichever
 * comes first, at shutdown, and right after the broker's verdicts are applied. Only
 * after COMMIT returns are the batch's reports sent to the broker (duplicates too,
 * since an earlier notice may have been lost with a broker restart). A failed
 * transaction is rolled back and its jobs are not reported: the broker dispatches
 * them again after its commit timeout, so nothing is lost.
 *
 * A full disk is retried, not fought: the sink logs it once, stops reading results
 * for a backoff (doubling to FULL_BACKOFF_MAX_MS, so workers hand their results back
 * instead of the broker re-sending jobs as fast as they fail), tries again, says in
 * its heartbeats that its disk is full (`facemill status` shows it), and logs when
 * space has returned.
 *
 * One thread, two sockets: the PULL socket (bound) and a DEALER connected to the
 * broker's sink.commits ROUTER. Both have ZMQ_MAXMSGSIZE and a finite linger.
 */
#include "facemill/sink.h"
#include "facemill/clock.h"
#include "facemill/auth.h"
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

/* One report for the broker, waiting for its transaction to commit. */
typedef struct pending {
    char *job_id;
    char *tag;
    int failed;
    int stored; /* 1: the job's row is stored; 0: staged, waiting for a verdict */
    uint8_t token[FM_WIRE_TOKEN_BYTES];
} pending;

struct fm_sink {
    void *pull;
    fm_auth_refusals *refused; /* handshakes pull refuses before the ZAP handler */
    void *dealer; /* NULL when commits go nowhere */
    const struct fm_auth *auth; /* keys, for the messages of live connections */
    fm_results *db;
    int64_t batch;
    int64_t batch_ms;
    int64_t heartbeat_ms;
    int64_t max_faces;  /* a result listing more is refused; 0: no limit */
    int64_t restage_ms; /* staged results unanswered this long are reported again */
    int64_t next_restage_ms;
    int restaged_once;
    char *name;
    pending *pend; /* results of the open transaction, batch entries */
    int64_t n_pend;
    int64_t batch_start_ms; /* when the open transaction got its first result */
    int in_tx;
    int64_t next_heartbeat_ms;
    fm_sink_stats stats;
    char *db_path, *metrics_file; /* metrics_file NULL: no metrics */
    int64_t metrics_ms, next_metrics_ms;
    int disk_full;             /* the database met a full disk: results wait */
    int64_t full_backoff_ms;   /* how long results are not read, doubling */
    int64_t full_retry_ms;     /* when they are read (and stored) again */
};

/* Longest pause in reading results while the database's disk is full. */
#define FULL_BACKOFF_MAX_MS 30000

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
    s->max_faces = o->max_faces;
    s->restage_ms = 5 * o->heartbeat_ms > 1000 ? 5 * o->heartbeat_ms : 1000;
    s->name = o->name ? strdup(o->name) : NULL;
    s->pend = calloc((size_t)o->batch, sizeof *s->pend);
    s->db_path = strdup(o->db_path);
    s->auth = o->auth;
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
        fm_auth_server(o->auth, s->pull, FM_AUTH_DOMAIN_RESULTS, err) != FM_OK ||
        zmq_bind(s->pull, o->results) != 0) {
        rc = fm_error_set(err, FM_ERR_IO, "sink: cannot bind %s: %s", o->results,
                          zmq_strerror(zmq_errno()));
        goto fail;
    }
    s->refused = fm_auth_refusals_open(o->auth, zctx, s->pull, "sink.results");
    if (o->commits && o->commits[0]) {
        s->dealer = zmq_socket(zctx, ZMQ_DEALER);
        if (!s->dealer || fm_wire_setup(s->dealer, o->max_msg_size, 2000, err) != FM_OK ||
            fm_auth_client(o->auth, s->dealer, FM_AUTH_TO_BROKER, err) != FM_OK ||
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
    fm_auth_refusals_close(&s->refused, s->pull);
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
            entries[i].has_stored = 1;
            entries[i].stored = p->stored;
            entries[i].has_token = 1;
            entries[i].token.data = (uint8_t *)p->token;
            entries[i].token.len = sizeof p->token;
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

/* A write failed (e). On a full disk: one log line when it begins, then results
 * are not read until the backoff ends. Returns 1 when the disk is full (the caller
 * logs nothing more). */
static int disk_full(fm_sink *s, const fm_error *e)
{
    if (!fm_results_full(s->db))
        return 0;
    if (!s->disk_full)
        fm_log_error("sink: results database %s: disk full (%s): results are not stored, "
                     "their jobs are dispatched again; retrying with backoff up to %d s",
                     s->db_path, fm_error_text(e), FULL_BACKOFF_MAX_MS / 1000);
    s->disk_full = 1;
    s->full_backoff_ms = s->full_backoff_ms ? s->full_backoff_ms * 2 : 250;
    if (s->full_backoff_ms > FULL_BACKOFF_MAX_MS)
        s->full_backoff_ms = FULL_BACKOFF_MAX_MS;
    s->full_retry_ms = (int64_t)fm_now_ms() + s->full_backoff_ms;
    return 1;
}

/* Ends the open transaction: commit, then report. On failure nothing is reported. */
static void finish_batch(fm_sink *s)
{
    if (!s->in_tx)
        return;
    fm_error e = {0};
    s->in_tx = 0;
    if (fm_results_commit(s->db, &e) != FM_OK) {
        if (!disk_full(s, &e))
            fm_log_error("sink: %s; %lld results not stored (they will be dispatched "
                         "again)", fm_error_text(&e), (long long)s->n_pend);
        s->stats.failed_transactions++;
        clear_pending(s);
        return;
    }
    s->stats.commits++;
    if (s->disk_full)
        fm_log_info("sink: results database %s: space again, storing", s->db_path);
    s->disk_full = 0;
    s->full_backoff_ms = 0;
    fm_log_debug("sink: committed %lld results", (long long)s->n_pend);
    send_commits(s);
    clear_pending(s);
}

static void heartbeat(fm_sink *s)
{
    fm_auth_refusals_poll(s->refused);
    Facemill__Heartbeat hb = FACEMILL__HEARTBEAT__INIT;
    hb.has_interval_ms = 1;
    hb.interval_ms = (uint32_t)s->heartbeat_ms;
    hb.name = s->name;
    hb.has_disk_full = hb.disk_full = s->disk_full;
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    send_to_broker(s, &env);
}

/* Opens the batch's transaction when none is open. Returns 0 when it cannot (logged,
 * what (a job id) named). */
static int ensure_tx(fm_sink *s, const char *what)
{
    if (s->in_tx)
        return 1;
    fm_error e = {0};
    if (fm_results_begin(s->db, &e) != FM_OK) {
        if (!disk_full(s, &e))
            fm_log_error("sink: %s; %s dropped", fm_error_text(&e), what);
        return 0;
    }
    s->in_tx = 1;
    s->batch_start_ms = (int64_t)fm_now_ms();
    return 1;
}

/* A statement failed inside the transaction: gives the whole batch up. */
static void give_up_batch(fm_sink *s, const fm_error *e)
{
    if (!disk_full(s, e))
        fm_log_error("sink: %s; %lld results not stored (they will be dispatched again)",
                     fm_error_text(e), (long long)s->n_pend + 1);
    fm_results_rollback(s->db);
    s->in_tx = 0;
    s->stats.failed_transactions++;
    clear_pending(s);
}

/* Adds a report to the batch; commits the batch when it is full. */
static void pend_add(fm_sink *s, const char *job_id, const char *tag, const void *token,
                     size_t token_len, int failed, int stored)
{
    pending *p = &s->pend[s->n_pend];
    memset(p, 0, sizeof *p);
    p->job_id = strdup(job_id);
    p->tag = dup_or_null(tag);
    p->failed = failed;
    p->stored = stored;
    if (token && token_len) /* none without a broker */
        memcpy(p->token, token, token_len < sizeof p->token ? token_len : sizeof p->token);
    if (!p->job_id || (tag && !p->tag)) {
        free(p->job_id);
        free(p->tag);
        fm_log_error("sink: out of memory; report of %s not sent", job_id);
    } else {
        s->n_pend++;
    }
    if (s->n_pend >= s->batch)
        finish_batch(s);
}

/* Why res may not be taken: NULL when it may. */
static const char *refusal(const fm_sink *s, const Facemill__Result *res, char *buf,
                           size_t size)
{
    if (s->dealer && (!res->has_token || res->token.len != FM_WIRE_TOKEN_BYTES))
        return "no dispatch token (a worker of protocol 1.0?)";
    if (s->max_faces > 0 && res->n_faces > (size_t)s->max_faces) {
        snprintf(buf, size, "%zu faces, more than detect.max_faces %lld", res->n_faces,
                 (long long)s->max_faces);
        return buf;
    }
    return NULL;
}

/* Takes one result into the open transaction (opening one when needed): staged for
 * the broker's verdict, or, when the job has its row already (a labelled one: a
 * failed row takes the new result), reported stored. */
static void store(fm_sink *s, const Facemill__Result *res)
{
    char why_buf[128];
    const char *why = res->job_id ? refusal(s, res, why_buf, sizeof why_buf) : NULL;
    if (why) {
        char id[FM_LOG_ESCAPED_MAX];
        s->stats.dropped++;
        fm_log_warn("sink: result for %s refused: %s", fm_log_escape(res->job_id, id, sizeof id),
                    why);
        return;
    }
    if (!ensure_tx(s, res->job_id ? res->job_id : "a result"))
        return;
    fm_error e = {0};
    int found = 0, failed = 0, inserted = 0;
    fm_status rc;
    if (!s->dealer) /* nobody to ask: stored at once */
        rc = fm_results_put(s->db, res, wall_ms(), &inserted, &failed, &e);
    else if ((rc = res->job_id ? fm_results_lookup(s->db, res->job_id, &found, &failed, &e)
                               : fm_error_set(&e, FM_ERR_INVALID, "result without a job "
                                              "id")) == FM_OK &&
             (!found || failed)) /* a failed row is never final (results_db.c) */
        rc = fm_results_stage(s->db, res, wall_ms(), &e);
    if (rc == FM_ERR_INVALID) {
        s->stats.dropped++;
        fm_log_warn("sink: %s: dropped", fm_error_text(&e));
        return;
    }
    if (rc != FM_OK) {
        give_up_batch(s, &e);
        return;
    }
    int stored = !s->dealer || (found && !failed);
    if (stored && !inserted)
        s->stats.duplicates++;
    else if (stored)
        s->stats.stored++;
    else
        failed = res->has_error_code && res->error_code != 0;
    pend_add(s, res->job_id, res->tag, res->token.data, res->token.len, failed, stored);
}

/* The broker's verdicts: confirmed results become their jobs' rows (and are reported
 * stored), refused ones are dropped; then the batch is committed at once. */
static void on_verdicts(fm_sink *s, const Facemill__CommitReply *r)
{
    fm_error e = {0};
    for (size_t i = 0; i < r->n_confirmed; i++) {
        const Facemill__CommitEntry *ce = r->confirmed[i];
        if (!ce->job_id || !ensure_tx(s, ce->job_id))
            continue;
        int stored = 0, inserted = 0, failed = 0;
        fm_status rc = fm_results_confirm(s->db, ce->job_id, ce->token.data, ce->token.len,
                                          wall_ms(), &stored, &inserted, &failed, &e);
        if (rc == FM_ERR_FORMAT) {
            fm_log_warn("sink: %s", fm_error_text(&e));
            continue;
        }
        if (rc != FM_OK) {
            give_up_batch(s, &e);
            return;
        }
        s->stats.stored += inserted;
        if (stored)
            pend_add(s, ce->job_id, NULL, ce->token.data, ce->token.len, failed, 1);
    }
    for (size_t i = 0; i < r->n_refused; i++) {
        const Facemill__CommitEntry *ce = r->refused[i];
        if (!ce->job_id || !ensure_tx(s, ce->job_id))
            continue;
        char id[FM_LOG_ESCAPED_MAX];
        fm_log_info("sink: result for %s refused by the broker (not its dispatch): "
                    "dropped", fm_log_escape(ce->job_id, id, sizeof id));
        if (fm_results_unstage(s->db, ce->job_id, ce->token.data, ce->token.len, &e) !=
            FM_OK) {
            give_up_batch(s, &e);
            return;
        }
        s->stats.refused++;
    }
    finish_batch(s);
}

/* Collects staged results into one Commit of stored-false entries. */
typedef struct restage {
    Facemill__CommitEntry entries[COMMIT_CHUNK];
    Facemill__CommitEntry *ptrs[COMMIT_CHUNK];
    char *ids[COMMIT_CHUNK];
    uint8_t tokens[COMMIT_CHUNK][FM_WIRE_TOKEN_BYTES];
    size_t n;
} restage;

static int restage_one(void *arg, const char *job_id, const char *tag, const void *token,
                       size_t token_len, int failed)
{
    (void)tag;
    restage *r = arg;
    Facemill__CommitEntry *ce = &r->entries[r->n];
    if (!job_id || !(r->ids[r->n] = strdup(job_id)))
        return 0;
    facemill__commit_entry__init(ce);
    if (token && token_len)
        memcpy(r->tokens[r->n], token,
               token_len < FM_WIRE_TOKEN_BYTES ? token_len : FM_WIRE_TOKEN_BYTES);
    ce->job_id = r->ids[r->n];
    ce->has_failed = ce->has_stored = ce->has_token = 1;
    ce->failed = failed;
    ce->stored = 0;
    ce->token.data = r->tokens[r->n];
    ce->token.len = token_len < FM_WIRE_TOKEN_BYTES ? token_len : FM_WIRE_TOKEN_BYTES;
    r->ptrs[r->n] = ce;
    return ++r->n == COMMIT_CHUNK;
}

/* Asks the broker again about results staged and not answered for a restage
 * interval (at the first call: every staged result, a previous run's included). */
static void report_staged(fm_sink *s)
{
    restage *r = calloc(1, sizeof *r);
    if (!r)
        return;
    int64_t before = s->restaged_once ? wall_ms() - s->restage_ms : wall_ms();
    fm_error e = {0};
    if (fm_results_each_staged(s->db, before, COMMIT_CHUNK, restage_one, r, &e) != FM_OK)
        fm_log_warn("sink: %s", fm_error_text(&e));
    if (r->n) {
        fm_log_info("sink: asking the broker again about %zu staged results", r->n);
        Facemill__Commit commit = FACEMILL__COMMIT__INIT;
        commit.n_entries = r->n;
        commit.entries = r->ptrs;
        Facemill__Envelope env;
        fm_wire_envelope_init(&env);
        env.body_case = FACEMILL__ENVELOPE__BODY_COMMIT;
        env.commit = &commit;
        send_to_broker(s, &env);
    }
    for (size_t i = 0; i < r->n; i++)
        free(r->ids[i]);
    free(r);
    s->restaged_once = 1;
}

/* Reads one message from sock without waiting. Returns 1 with *env set (caller frees
 * with fm_wire_free), 0 when nothing is waiting or the message was dropped (logged),
 * -1 on a socket error (err set). */
static int receive(fm_sink *s, void *sock, Facemill__Envelope **env, fm_error *err)
{
    fm_error e = {0};
    fm_wire_peer from;
    fm_status st = fm_wire_recv(sock, &from, env, ZMQ_DONTWAIT, &e);
    switch (st) {
    case FM_OK:
        /* a worker's key removed since it connected: its results are dropped */
        if (sock == s->pull && !fm_auth_admits(s->auth, FM_AUTH_DOMAIN_RESULTS, from.user,
                                               "a worker")) {
            s->stats.dropped++;
            fm_wire_free(env);
            return 0;
        }
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
    s->next_heartbeat_ms = s->next_restage_ms = (int64_t)fm_now_ms();
    while (!*stop) {
        /* Both no-ops unless facemill-sink's main() asked for them (SIGHUP handler,
         * fm_notify_init): `facemill label` runs this loop in-process. */
        fm_log_reopen_if_requested();
        if (fm_notify_tick())
            fm_notify_status("%lld results stored, %lld duplicates, %lld transactions",
                             (long long)s->stats.stored, (long long)s->stats.duplicates,
                             (long long)s->stats.commits);
        int64_t now = fm_now_ms();
        if (now >= s->next_heartbeat_ms) {
            heartbeat(s);
            s->next_heartbeat_ms = now + s->heartbeat_ms;
        }
        if (s->in_tx && now - s->batch_start_ms >= s->batch_ms)
            finish_batch(s);
        /* Outside a transaction: what is reported staged must be on disk. */
        if (s->dealer && !s->in_tx && now >= s->next_restage_ms) {
            report_staged(s);
            s->next_restage_ms = now + s->restage_ms;
        }
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
        /* A full disk: results wait in their senders' queues until the backoff ends. */
        items[0].events = s->disk_full && now < s->full_retry_ms ? 0 : ZMQ_POLLIN;
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
                if (env->body_case == FACEMILL__ENVELOPE__BODY_COMMIT_REPLY)
                    on_verdicts(s, env->commit_reply);
                else if (env->body_case == FACEMILL__ENVELOPE__BODY_ERROR && env->error)
                    fm_log_warn("sink: broker refused a message: %s",
                                env->error->text ? env->error->text : "(no text)");
                fm_wire_free(&env);
            }
        }
    }
    finish_batch(s);
    return FM_OK;
}
