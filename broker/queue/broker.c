/* broker.c - the facemill broker (include/facemill/broker.h; protocol in
 * proto/README.md).
 *
 * Why it is built this way: the reliable-queue pattern (workers announce readiness,
 * the broker picks who gets the next job, heartbeats both ways, silent peers expire),
 * extended with credit (a worker takes several jobs at once), a journal (accepted
 * jobs survive a broker crash) and commit tracking (a job is finished only when the
 * sink says its result is stored, so results lost with a worker or a sink are
 * recomputed).
 *
 * Job life: QUEUED -> IN_FLIGHT (at a worker, with a deadline) -> DONE (result sent
 * to the sink, waiting for its commit, with a deadline) -> committed: forgotten
 * (the journal keeps the id). A failure, a timeout or a lost worker counts an attempt
 * and re-queues; at broker.max_attempts the job is QUARANTINED: the broker sends the
 * sink a failed result itself and waits for that commit like any other. A commit can
 * arrive in any state (duplicates, late results): it always finishes the job.
 *
 * Dispatch tokens (protocol 1.1): every dispatch, and every failed result the broker
 * sends for a quarantined job, carries 16 random bytes that the result must carry
 * back. The sink stages each result and asks; the broker confirms only a token it
 * sent for that job (the job remembers its last TOKENS), so a result pushed by
 * anyone the job was not sent to is dropped, never stored in place of the real one;
 * and it counts a job committed only when the sink reports a result with such a
 * token stored. A restarted broker knows none of its predecessor's tokens: the
 * results of those dispatches are refused and the job dispatched again.
 *
 * One thread, one zmq_poll loop over three ROUTER sockets; timers are checked once
 * per broker.heartbeat_ms tick.
 */
#include "facemill/broker.h"
#include "facemill/clock.h"
#include "facemill/auth.h"
#include "facemill/log.h"
#include "facemill/notify.h"
#include "facemill/text.h"
#include "facemill/wire.h"
#include "broker_limits.h"
#include "broker_metrics.h"
#include "journal-impl.h"

#include <zmq.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef enum job_state { JOB_QUEUED, JOB_IN_FLIGHT, JOB_DONE, JOB_QUARANTINED } job_state;

typedef struct worker worker;

/* Dispatch tokens a job remembers: a result of an older dispatch than the last
 * TOKENS is refused (and the job, if still open, dispatched again). */
#define TOKENS 4

typedef struct bjob {
    char *id, *tag;
    size_t len;    /* of the packed facemill.Job, which stays in the journal only */
    job_state state;
    int committed; /* the sink committed it while it was still at a worker */
    int seen;      /* a mark while one Commit is handled: its ids once each */
    int failures;
    char *last_error;
    worker *w;        /* IN_FLIGHT: the worker holding it */
    int64_t deadline; /* IN_FLIGHT, DONE, QUARANTINED: when to act */
    fm_wire_peer *client; /* who submitted it (this broker run only), or NULL */
    uint8_t tokens[TOKENS][FM_WIRE_TOKEN_BYTES]; /* of its last dispatches, a ring */
    unsigned n_tokens; /* tokens made so far (the ring holds the last TOKENS) */
    struct bjob *prev, *next; /* the queue */
    struct bjob *hnext;       /* hash chain */
} bjob;

struct worker {
    fm_wire_peer peer;
    char name[128];
    uint32_t credit;
    uint32_t busy;    /* jobs of ours it holds */
    uint32_t phantom; /* jobs it holds that busy does not count: a previous broker's,
                         or ones taken back on timeout that it still works on (its
                         heartbeats say how many it holds) */
    int64_t last_seen, last_dispatch, blocked_until;
    int64_t backoff_until; /* after a hand-back: no new jobs before this */
};

#define RATE_SAMPLES 64

/* Commits held in memory while the journal's disk is full (packed facemill.Commit
 * messages, up to COMMIT_BACKLOG; beyond that the jobs wait for their commit
 * timeout, and the sink reports them stored again after their next dispatch). */
#define COMMIT_BACKLOG 64

/* Free space the journal's filesystem needs before submits are taken again after a
 * full disk (when no held commit proved it by being written). */
#define DISK_ROOM_BYTES (8u << 20)

struct fm_broker {
    fm_config cfg;
    void *ctx;
    int own_ctx;
    void *clients, *workers, *commits, *sink;
    fm_auth_refusals *refused[3]; /* handshakes the three server sockets refuse */
    fm_auth *auth; /* CURVE keys and the ZAP handler, or plain sockets */
    fm_journal *journal;
    bjob **buckets;
    size_t nbuckets, njobs;
    uint64_t held_bytes; /* bodies of the jobs in the hash (all of them held) */
    bjob *qhead, *qtail;
    worker **wk;
    size_t nworkers, capworkers;
    fm_broker_stats st;
    int64_t started, next_tick, sink_seen;
    int64_t next_metrics; /* when metrics.file is written next */
    int64_t rate_t[RATE_SAMPLES];
    uint64_t rate_c[RATE_SAMPLES];
    size_t rate_n;
    int disk_full;      /* the journal met a full disk: submits wait, commits are held */
    int disk_full_said; /* "disk full" was logged and "space again" not yet */
    int64_t disk_full_logged; /* when "disk full" was last logged */
    uint64_t disk_full_written; /* fm_journal_written then */
    int sink_disk_full; /* the sink's last heartbeat said its disk is full */
    int64_t sink_interval_ms; /* the heartbeat interval the sink announced (0: none) */
    struct {
        uint8_t *data;
        size_t len;
    } backlog[COMMIT_BACKLOG]; /* commits not journaled yet, oldest first */
    size_t n_backlog;
};

/* ---- jobs: hash and queue ------------------------------------------------------ */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static bjob *job_find(fm_broker *b, const char *id)
{
    for (bjob *j = b->buckets[hash_str(id) & (b->nbuckets - 1)]; j; j = j->hnext)
        if (strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

static int job_insert(fm_broker *b, bjob *j)
{
    if (b->njobs + 1 > b->nbuckets) {
        size_t n = b->nbuckets * 2;
        bjob **nb = calloc(n, sizeof *nb);
        if (!nb)
            return -1;
        for (size_t i = 0; i < b->nbuckets; i++)
            for (bjob *x = b->buckets[i], *next; x; x = next) {
                next = x->hnext;
                size_t k = hash_str(x->id) & (n - 1);
                x->hnext = nb[k];
                nb[k] = x;
            }
        free(b->buckets);
        b->buckets = nb;
        b->nbuckets = n;
    }
    size_t k = hash_str(j->id) & (b->nbuckets - 1);
    j->hnext = b->buckets[k];
    b->buckets[k] = j;
    b->njobs++;
    b->held_bytes += j->len;
    return 0;
}

static void job_free(bjob *j)
{
    if (!j)
        return;
    free(j->id);
    free(j->tag);
    free(j->last_error);
    free(j->client);
    free(j);
}

static void queue_push(fm_broker *b, bjob *j, int front)
{
    j->state = JOB_QUEUED;
    j->w = NULL;
    j->prev = j->next = NULL;
    if (!b->qhead) {
        b->qhead = b->qtail = j;
    } else if (front) {
        j->next = b->qhead;
        b->qhead->prev = j;
        b->qhead = j;
    } else {
        j->prev = b->qtail;
        b->qtail->next = j;
        b->qtail = j;
    }
    b->st.queued++;
}

static void queue_unlink(fm_broker *b, bjob *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        b->qhead = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        b->qtail = j->prev;
    j->prev = j->next = NULL;
    b->st.queued--;
}

/* Takes j out of its state's counters (and the queue). */
static void job_leave_state(fm_broker *b, bjob *j)
{
    switch (j->state) {
    case JOB_QUEUED: queue_unlink(b, j); break;
    case JOB_IN_FLIGHT:
        b->st.in_flight--;
        if (j->w && j->w->busy > 0)
            j->w->busy--;
        j->w = NULL;
        break;
    case JOB_DONE:
    case JOB_QUARANTINED: b->st.awaiting_commit--; break;
    }
}

/* Removes j from the hash and frees it (j must have left its state). */
static void job_forget(fm_broker *b, bjob *j)
{
    bjob **pp = &b->buckets[hash_str(j->id) & (b->nbuckets - 1)];
    while (*pp && *pp != j)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = j->hnext;
    b->njobs--;
    b->held_bytes -= j->len;
    job_free(j);
}

static char *dup_str(const char *s)
{
    return strdup(s ? s : "");
}

/* ---- dispatch tokens ----------------------------------------------------------- */

/* Makes j's next token (from the kernel's random source) into out and remembers it. */
static fm_status token_new(bjob *j, uint8_t out[FM_WIRE_TOKEN_BYTES], fm_error *err)
{
    size_t got = 0;
    while (got < FM_WIRE_TOKEN_BYTES) {
        ssize_t n = getrandom(out + got, FM_WIRE_TOKEN_BYTES - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fm_error_set(err, FM_ERR_IO, "getrandom: %s", strerror(errno));
        got += (size_t)n;
    }
    memcpy(j->tokens[j->n_tokens++ % TOKENS], out, FM_WIRE_TOKEN_BYTES);
    return FM_OK;
}

/* True when t is one of the tokens j was last dispatched (or quarantined) with. */
static int token_known(const bjob *j, const ProtobufCBinaryData *t)
{
    if (t->len != FM_WIRE_TOKEN_BYTES)
        return 0;
    unsigned n = j->n_tokens < TOKENS ? j->n_tokens : TOKENS;
    for (unsigned i = 0; i < n; i++)
        if (memcmp(j->tokens[i], t->data, FM_WIRE_TOKEN_BYTES) == 0)
            return 1;
    return 0;
}

/* ---- sending ------------------------------------------------------------------- */

/* j's facemill.Job, read from the journal (bodies are not kept in memory), or NULL
 * when it cannot be read (logged: a full or damaged disk, or out of memory). */
static Facemill__Job *job_read(fm_broker *b, const bjob *j)
{
    uint8_t *body = NULL;
    size_t len = 0;
    fm_error e = {0};
    if (fm_journal_body(b->journal, j->id, &body, &len, &e) != FM_OK) {
        fm_log_error("job %s: %s", j->id, fm_error_text(&e));
        return NULL;
    }
    Facemill__Job *jm = facemill__job__unpack(NULL, len, body);
    free(body);
    return jm;
}

/* Sends the failed result of a quarantined job to the sink, with a new token. */
static fm_status send_quarantine_result(fm_broker *b, bjob *j, fm_error *err)
{
    uint8_t token[FM_WIRE_TOKEN_BYTES];
    fm_status st = token_new(j, token, err);
    if (st != FM_OK)
        return st;
    Facemill__Job *jm = job_read(b, j);
    Facemill__Envelope env;
    Facemill__Result r;
    fm_wire_envelope_init(&env);
    facemill__result__init(&r);
    r.job_id = j->id;
    r.tag = j->tag;
    r.source = jm && jm->name && jm->name[0] ? jm->name
               : jm && jm->source_case == FACEMILL__JOB__SOURCE_PATH ? jm->path
                                                                      : j->id;
    r.has_error_code = 1;
    r.error_code = FACEMILL__ERROR_CODE__ERROR_QUARANTINED;
    char text[FM_ERROR_MSG_MAX + 64];
    snprintf(text, sizeof text, "quarantined after %d attempt%s: %s", j->failures,
             j->failures == 1 ? "" : "s", j->last_error ? j->last_error : "?");
    r.error_text = text;
    r.worker = "broker";
    r.has_attempt = 1;
    r.attempt = (uint32_t)j->failures;
    r.has_token = 1;
    r.token.data = token;
    r.token.len = sizeof token;
    env.body_case = FACEMILL__ENVELOPE__BODY_RESULT;
    env.result = &r;
    fm_error e = {0};
    if (fm_wire_send(b->sink, NULL, &env, ZMQ_DONTWAIT, &e) != FM_OK)
        fm_log_warn("job %s: failed result not sent to the sink yet: %s", j->id,
                    fm_error_text(&e));
    if (jm)
        facemill__job__free_unpacked(jm, NULL);
    return FM_OK;
}

/* A journal write failed (err). A full disk is a state the broker waits out: logged
 * when it begins, submits answered SlowDown meanwhile, commits held (disk_retry ends
 * it). Returns FM_OK then; any other failure stays an error of the broker. */
static fm_status journal_failed(fm_broker *b, fm_error *err)
{
    if (!fm_journal_full(b->journal))
        return err->code;
    /* Logged when an episode begins: the first full disk, or one after the journal took
     * a write since the last line. Without a write in between it is the same episode
     * (submits were taken again on free space alone, and a big one failed again):
     * logged once a minute at most. */
    int64_t now = fm_now_ms();
    uint64_t written = fm_journal_written(b->journal);
    if (!b->disk_full && (!b->disk_full_logged || written != b->disk_full_written ||
                          now - b->disk_full_logged >= 60000)) {
        b->disk_full_said = 1;
        b->disk_full_logged = now;
        b->disk_full_written = written;
        fm_log_error("journal %s: disk full (%s): submits are answered SlowDown and "
                     "commits kept in memory until space returns",
                     b->cfg.broker.journal, fm_error_text(err));
    }
    b->disk_full = 1;
    memset(err, 0, sizeof *err);
    return FM_OK;
}

/* Counts a failed attempt of j (which has left its state): re-queues it, or
 * quarantines it after max_attempts. Journal errors are fatal for the broker, but
 * for a full disk (journal_failed): the counts stay in memory meanwhile. */
static fm_status job_fail(fm_broker *b, bjob *j, const char *why, fm_error *err)
{
    if (j->committed) {
        job_forget(b, j);
        return FM_OK;
    }
    j->failures++;
    free(j->last_error);
    j->last_error = dup_str(why);
    fm_status st = fm_journal_set_attempts(b->journal, j->id, j->failures, why, err);
    if (st != FM_OK && (st = journal_failed(b, err)) != FM_OK)
        return st;
    if (j->failures >= b->cfg.broker.max_attempts) {
        if ((st = fm_journal_quarantine(b->journal, j->id, err)) != FM_OK &&
            (st = journal_failed(b, err)) != FM_OK)
            return st;
        fm_log_warn("job %s quarantined after %d attempt%s: %s", j->id, j->failures,
                    j->failures == 1 ? "" : "s", why);
        j->state = JOB_QUARANTINED;
        j->deadline = fm_now_ms() + b->cfg.broker.job_timeout_ms;
        b->st.awaiting_commit++;
        return send_quarantine_result(b, j, err);
    } else {
        fm_log_info("job %s: attempt %d failed (%s); re-queued", j->id, j->failures, why);
        queue_push(b, j, 1);
        b->st.requeued++;
    }
    return FM_OK;
}

/* ---- workers ------------------------------------------------------------------- */

static worker *worker_find(fm_broker *b, const fm_wire_peer *p)
{
    for (size_t i = 0; i < b->nworkers; i++)
        if (fm_wire_peer_equal(&b->wk[i]->peer, p))
            return b->wk[i];
    return NULL;
}

static worker *worker_add(fm_broker *b, const fm_wire_peer *p)
{
    if (b->nworkers == b->capworkers) {
        size_t n = b->capworkers ? b->capworkers * 2 : 16;
        worker **nw = realloc(b->wk, n * sizeof *nw);
        if (!nw)
            return NULL;
        b->wk = nw;
        b->capworkers = n;
    }
    worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->peer = *p;
    fm_wire_peer_text(p, w->name, sizeof w->name);
    w->last_seen = w->last_dispatch = fm_now_ms();
    b->wk[b->nworkers++] = w;
    return w;
}

/* Refuses a worker's message whose name (when it has one) breaks the identifier rules
 * (text.h): names reach logs and every client's status. Returns 1 when it did. */
static int refuse_name(fm_broker *b, const fm_wire_peer *from, const char *name)
{
    char why[FM_TEXT_WHY_MAX], text[FM_TEXT_WHY_MAX + 32], shown[FM_LOG_ESCAPED_MAX], id[80];
    if (!name || !name[0] || !fm_text_check(name, FM_TEXT_NAME_MAX, why, sizeof why))
        return 0;
    snprintf(text, sizeof text, "worker name %s", why);
    fm_log_warn("worker %s refused: name \"%s\" %s", fm_wire_peer_text(from, id, sizeof id),
                fm_log_escape(name, shown, sizeof shown), why);
    fm_wire_refuse(b->workers, from, FACEMILL__ERROR_CODE__ERROR_INVALID, text);
    return 1;
}

static void set_name(worker *w, const char *name)
{
    if (name && name[0])
        snprintf(w->name, sizeof w->name, "%s", name);
}

/* Sets w's credit to what it asked for (at least 1), but never above
 * broker.max_credit: dispatch favours the most free credit, so a peer announcing a
 * huge credit would otherwise be sent every queued job. */
static void set_credit(fm_broker *b, worker *w, uint32_t asked)
{
    uint32_t cap = (uint32_t)b->cfg.broker.max_credit;
    w->credit = asked > 0 ? asked : 1;
    if (w->credit > cap) {
        fm_log_warn("worker %s asked for credit %u: given %u (broker.max_credit)", w->name,
                    (unsigned)asked, (unsigned)cap);
        w->credit = cap;
    }
}

/* Drops w; its in-flight jobs fail with why (counted) or, when handed_back, are
 * re-queued without counting. */
static fm_status worker_remove(fm_broker *b, worker *w, const char *why, int counted,
                               fm_error *err)
{
    fm_status st = FM_OK;
    size_t k = 0;
    while (k < b->nworkers && b->wk[k] != w)
        k++;
    if (k == b->nworkers)
        return FM_OK;
    b->wk[k] = b->wk[--b->nworkers];
    for (size_t i = 0; i < b->nbuckets && st == FM_OK; i++) {
        bjob *j = b->buckets[i];
        while (j && st == FM_OK) {
            bjob *next = j->hnext;
            if (j->state == JOB_IN_FLIGHT && j->w == w) {
                job_leave_state(b, j);
                if (j->committed)
                    job_forget(b, j);
                else if (counted)
                    st = job_fail(b, j, why, err);
                else {
                    queue_push(b, j, 1);
                    b->st.requeued++;
                }
            }
            j = next;
        }
    }
    free(w);
    return st;
}

static uint32_t worker_free(const worker *w)
{
    uint64_t used = (uint64_t)w->busy + w->phantom; /* a heartbeat's busy is any uint32 */
    return w->credit > used ? (uint32_t)(w->credit - used) : 0;
}

static fm_status drain_socket(fm_broker *b, void *sock,
                              fm_status (*fn)(fm_broker *, const fm_wire_peer *,
                                              Facemill__Envelope *, fm_error *),
                              const char *what, int until_tick, fm_error *err);
static fm_status on_worker(fm_broker *b, const fm_wire_peer *from, Facemill__Envelope *e,
                           fm_error *err);

/* A send to w failed because its connection is gone. A worker that stopped cleanly
 * said goodbye first, in a message that may still wait unread behind the broken
 * connection: read the workers socket before judging, so its hand-backs and WorkerBye
 * count (no attempts charged); a worker that left no goodbye (a crash) is dropped and
 * its jobs count an attempt. w may be freed. */
static fm_status worker_gone(fm_broker *b, worker *w, const char *how, fm_error *err)
{
    fm_wire_peer peer = w->peer;
    /* Called from the tick, when the next tick is due: read regardless (up to the
     * usual 256 messages), or the goodbye would wait behind the verdict. */
    fm_status st = drain_socket(b, b->workers, on_worker, "worker", 0, err);
    if (st != FM_OK)
        return st;
    if (!(w = worker_find(b, &peer)))
        return FM_OK;
    char why[256];
    snprintf(why, sizeof why, "worker %s %s", w->name, how);
    fm_log_warn("%s: dropped, its %u jobs re-queued", why, (unsigned)w->busy);
    return worker_remove(b, w, why, 1, err);
}

/* w's key was removed from the workers' allowlist: it gets nothing more, and the
 * jobs it holds go back to the queue for the others (not counted as attempts). */
static fm_status worker_revoked(fm_broker *b, worker *w, fm_error *err)
{
    fm_log_warn("worker %s: its key is no longer admitted: dropped, its %u jobs re-queued",
                w->name, (unsigned)w->busy);
    return worker_remove(b, w, "worker's key revoked", 0, err);
}

/* Sends queued jobs to the workers with the most free credit (never to a worker whose
 * key has been removed since it connected: it is dropped instead). */
static fm_status dispatch(fm_broker *b, fm_error *err)
{
    int64_t now = fm_now_ms();
    while (b->qhead) {
        worker *best = NULL;
        for (size_t i = 0; i < b->nworkers; i++) {
            worker *w = b->wk[i];
            uint32_t f = worker_free(w);
            if (f == 0 || w->blocked_until > now || w->backoff_until > now)
                continue;
            if (!best || f > worker_free(best) ||
                (f == worker_free(best) && w->last_dispatch < best->last_dispatch))
                best = w;
        }
        if (!best)
            return FM_OK;
        if (!fm_auth_admits(b->auth, FM_AUTH_DOMAIN_WORKERS, best->peer.user, best->name)) {
            fm_status st = worker_revoked(b, best, err);
            if (st != FM_OK)
                return st;
            continue;
        }
        bjob *j = b->qhead;
        queue_unlink(b, j);
        Facemill__Job *jm = job_read(b, j);
        if (!jm) {
            /* Only a damaged journal gets here: never lose the job silently. */
            j->state = JOB_DONE; /* transient; job_fail re-files it */
            fm_status st = job_fail(b, j, "journaled job cannot be read", err);
            if (st != FM_OK)
                return st;
            continue;
        }
        uint8_t token[FM_WIRE_TOKEN_BYTES];
        fm_status st = token_new(j, token, err);
        if (st != FM_OK) {
            facemill__job__free_unpacked(jm, NULL);
            queue_push(b, j, 1);
            return st;
        }
        jm->has_attempt = 1;
        jm->attempt = (uint32_t)j->failures + 1;
        /* The token is ours, on the stack: what free_unpacked frees is put back. */
        ProtobufCBinaryData unpacked = jm->token;
        jm->has_token = 1;
        jm->token.data = token;
        jm->token.len = sizeof token;
        Facemill__Envelope env;
        fm_wire_envelope_init(&env);
        env.body_case = FACEMILL__ENVELOPE__BODY_JOB;
        env.job = jm;
        fm_error e = {0};
        st = fm_wire_send(b->workers, &best->peer, &env, ZMQ_DONTWAIT, &e);
        jm->token = unpacked;
        facemill__job__free_unpacked(jm, NULL);
        if (st != FM_OK) {
            queue_push(b, j, 1);
            if (st == FM_ERR_TIMEOUT) {
                best->blocked_until = now + b->cfg.broker.heartbeat_ms;
                continue;
            }
            if ((st = worker_gone(b, best, "unreachable", err)) != FM_OK)
                return st;
            continue;
        }
        j->state = JOB_IN_FLIGHT;
        j->w = best;
        j->deadline = now + b->cfg.broker.job_timeout_ms;
        best->busy++;
        best->last_dispatch = now;
        b->st.in_flight++;
        b->st.dispatched++;
        fm_log_debug("job %s -> %s (attempt %d)", j->id, best->name, j->failures + 1);
    }
    return FM_OK;
}

/* ---- messages from workers ----------------------------------------------------- */

/* Workers and sinks must speak 1.1: a 1.0 worker does not copy dispatch tokens into
 * its results, and a 1.0 sink stores results without asking, so neither would ever
 * finish a job. Refuses e (logged once per peer's first message, at warn) when it
 * comes from an older minor. Returns 1 when it was refused. */
static int refuse_old_minor(void *sock, const fm_wire_peer *from, const Facemill__Envelope *e,
                            const char *role, int loud)
{
    if (e->has_version_minor && e->version_minor >= 1)
        return 0;
    char id[80], text[160];
    snprintf(text, sizeof text, "this broker needs %ss of protocol 1.1 or later (dispatch "
             "tokens); you speak %u.%u", role, (unsigned)e->version_major,
             (unsigned)e->version_minor);
    if (loud)
        fm_log_warn("%s %s: %s: refused", role, fm_wire_peer_text(from, id, sizeof id), text);
    fm_wire_refuse(sock, from, FACEMILL__ERROR_CODE__ERROR_VERSION, text);
    return 1;
}

static fm_status on_worker(fm_broker *b, const fm_wire_peer *from, Facemill__Envelope *e,
                           fm_error *err)
{
    if (refuse_old_minor(b->workers, from, e, "worker",
                         e->body_case == FACEMILL__ENVELOPE__BODY_WORKER_READY))
        return FM_OK;
    worker *w = worker_find(b, from);
    int64_t now = fm_now_ms();
    if (w)
        w->last_seen = now;
    switch (e->body_case) {
    case FACEMILL__ENVELOPE__BODY_WORKER_READY: {
        Facemill__WorkerReady *r = e->worker_ready;
        if (refuse_name(b, from, r->name))
            return FM_OK;
        if (!w && !(w = worker_add(b, from)))
            return fm_error_set(err, FM_ERR_NOMEM, "worker table");
        set_name(w, r->name);
        set_credit(b, w, r->has_credit ? r->credit : 1);
        w->blocked_until = 0;
        char model[FM_LOG_ESCAPED_MAX];
        fm_log_info("worker %s ready, credit %u%s%s", w->name, (unsigned)w->credit,
                    r->model ? ", model " : "",
                    r->model ? fm_log_escape(r->model, model, sizeof model) : "");
        return FM_OK;
    }
    case FACEMILL__ENVELOPE__BODY_HEARTBEAT: {
        Facemill__Heartbeat *h = e->heartbeat;
        if (!w) {
            if (!h->has_credit || h->credit == 0) {
                fm_wire_refuse(b->workers, from, FACEMILL__ERROR_CODE__ERROR_UNKNOWN_PEER,
                               "unknown worker: send WorkerReady");
                return FM_OK;
            }
            if (refuse_name(b, from, h->name))
                return FM_OK;
            if (!(w = worker_add(b, from)))
                return fm_error_set(err, FM_ERR_NOMEM, "worker table");
            set_name(w, h->name);
            set_credit(b, w, h->credit);
            w->phantom = h->has_busy ? h->busy : 0;
            fm_log_info("worker %s joined by heartbeat, credit %u, holding %u",
                        w->name, (unsigned)w->credit, (unsigned)w->phantom);
        } else if (h->has_busy) {
            /* What the worker holds beyond what we count for it: jobs taken back on
             * timeout (it still works on them) or given by a previous broker. Without
             * this, their slots would be refilled and the worker overcommitted. */
            w->phantom = h->busy > w->busy ? h->busy - w->busy : 0;
        }
        w->blocked_until = 0;
        return FM_OK;
    }
    case FACEMILL__ENVELOPE__BODY_JOB_DONE: {
        Facemill__JobDone *d = e->job_done;
        if (!w) {
            fm_wire_refuse(b->workers, from, FACEMILL__ERROR_CODE__ERROR_UNKNOWN_PEER,
                           "unknown worker: send WorkerReady");
            return FM_OK;
        }
        w->blocked_until = 0;
        bjob *j = d->job_id ? job_find(b, d->job_id) : NULL;
        if (!j || j->state != JOB_IN_FLIGHT || j->w != w) {
            if (w->phantom > 0)
                w->phantom--;
            char id[FM_LOG_ESCAPED_MAX];
            fm_log_debug("worker %s: done with %s, which it no longer holds", w->name,
                         fm_log_escape(d->job_id ? d->job_id : "?", id, sizeof id));
            return FM_OK;
        }
        job_leave_state(b, j);
        int outcome = d->has_outcome ? (int)d->outcome : FACEMILL__JOB_DONE__OUTCOME__DONE;
        if (j->committed) {
            job_forget(b, j);
        } else if (outcome == FACEMILL__JOB_DONE__OUTCOME__DONE) {
            j->state = JOB_DONE;
            j->deadline = now + b->cfg.broker.job_timeout_ms;
            b->st.awaiting_commit++;
        } else if (outcome == FACEMILL__JOB_DONE__OUTCOME__HANDED_BACK) {
            queue_push(b, j, 1);
            b->st.requeued++;
            /* A worker hands back when stopping or full: sending it the job again at
             * once would bounce it back and forth as fast as the sockets go. */
            w->backoff_until = now + b->cfg.broker.heartbeat_ms;
        } else {
            /* The worker's text is logged and becomes the result's error text. */
            char why[FM_ERROR_MSG_MAX], text[FM_ERROR_MSG_MAX];
            snprintf(why, sizeof why, "worker %s: %s", w->name,
                     d->error_text && d->error_text[0]
                         ? fm_log_escape(d->error_text, text, sizeof text)
                         : "failed");
            return job_fail(b, j, why, err);
        }
        return FM_OK;
    }
    case FACEMILL__ENVELOPE__BODY_WORKER_BYE:
        if (w) {
            fm_log_info("worker %s left", w->name);
            return worker_remove(b, w, "worker left", 0, err);
        }
        return FM_OK;
    default: {
        char id[80];
        fm_log_warn("worker %s sent %s, not a worker message: refused",
                    fm_wire_peer_text(from, id, sizeof id), fm_wire_body_name(e));
        fm_wire_refuse(b->workers, from, FACEMILL__ERROR_CODE__ERROR_MALFORMED,
                       "not a worker message");
        return FM_OK;
    }
    }
}

/* ---- messages from clients ----------------------------------------------------- */

/* Why jm cannot be taken, or NULL. Ids and tags are what clients, logs, status and
 * exports show and match: valid UTF-8 without control characters, bounded (a NUL
 * inside never gets here: fm_wire_decode refuses the message). Names and paths are
 * any bytes a file system allows; they are escaped wherever they are printed. */
static const char *job_invalid(const Facemill__Job *jm)
{
    static const char *const id_why[] = {
        NULL, "job without an id", "job id longer than 256 bytes",
        "job id is not valid UTF-8", "job id holds a control character"};
    static const char *const tag_why[] = {
        NULL, NULL, "tag longer than 256 bytes", "tag is not valid UTF-8",
        "tag holds a control character"};
    _Static_assert(FM_WIRE_JOB_ID_MAX == FM_TEXT_ID_MAX && FM_TEXT_TAG_MAX == 256,
                   "the reasons name the bounds");
    const char *why = id_why[fm_text_fault(jm->id, FM_TEXT_ID_MAX)];
    if (why || (why = tag_why[fm_text_fault(jm->tag, FM_TEXT_TAG_MAX)]))
        return why;
    if (jm->source_case == FACEMILL__JOB__SOURCE_PATH && (!jm->path || !jm->path[0]))
        return "empty path";
    /* The reason becomes the result's error text, which exports and reports print:
     * held to the rules of ids, at the length of any error text. */
    static const char *const unreadable_why[] = {
        NULL, "unreadable job without a reason", "unreadable reason longer than 511 bytes",
        "unreadable reason is not valid UTF-8",
        "unreadable reason holds a control character"};
    _Static_assert(FM_ERROR_MSG_MAX == 512, "the reason names the bound");
    if (jm->source_case == FACEMILL__JOB__SOURCE_UNREADABLE)
        return unreadable_why[fm_text_fault(jm->unreadable, FM_ERROR_MSG_MAX - 1)];
    if (jm->source_case != FACEMILL__JOB__SOURCE_PATH &&
        jm->source_case != FACEMILL__JOB__SOURCE_DATA)
        return "job without data or path";
    return NULL;
}

/* Answers a Submit that came while the queue is full: none of its jobs is taken. */
static void send_slow_down(fm_broker *b, const fm_wire_peer *from, const Facemill__Submit *s)
{
    Facemill__Envelope env;
    Facemill__SlowDown sd;
    fm_wire_envelope_init(&env);
    facemill__slow_down__init(&sd);
    sd.has_request_id = s->has_request_id;
    sd.request_id = s->request_id;
    sd.has_queue_depth = sd.has_max_queue = sd.has_retry_after_ms = 1;
    sd.queue_depth = b->njobs; /* held: queued, at workers, awaiting commit */
    sd.max_queue = (uint64_t)b->cfg.broker.max_queue;
    int64_t retry = b->cfg.broker.heartbeat_ms < 1000 ? b->cfg.broker.heartbeat_ms : 1000;
    sd.retry_after_ms = (uint32_t)retry;
    env.body_case = FACEMILL__ENVELOPE__BODY_SLOW_DOWN;
    env.slow_down = &sd;
    fm_wire_send(b->clients, from, &env, ZMQ_DONTWAIT, NULL);
}

/* One Submit on its way to its SubmitAck. */
typedef struct submit {
    Facemill__Submit *msg;
    Facemill__JobAck *acks;  /* one per job, in order; ACCEPTED until decided otherwise */
    Facemill__JobAck **ackp; /* &acks[i], for the SubmitAck */
    int disk_full;           /* the journal's disk is full: answer SlowDown, not acks */
    bjob **fresh;            /* the new jobs taken so far, in the hash, not yet queued */
    size_t nfresh;
    char journal_error[FM_ERROR_MSG_MAX]; /* the reason new jobs are rejected with */
} submit;

static void submit_free(submit *sub)
{
    free(sub->acks);
    free(sub->ackp);
    free(sub->fresh);
}

/* Allocates what s needs and starts one ack per job. */
static fm_status submit_init(submit *sub, Facemill__Submit *s, fm_error *err)
{
    size_t n = s->n_jobs;
    memset(sub, 0, sizeof *sub);
    sub->msg = s;
    sub->acks = calloc(n ? n : 1, sizeof *sub->acks);
    sub->ackp = calloc(n ? n : 1, sizeof *sub->ackp);
    sub->fresh = calloc(n ? n : 1, sizeof *sub->fresh);
    if (!sub->acks || !sub->ackp || !sub->fresh)
        return fm_error_set(err, FM_ERR_NOMEM, "submit of %zu jobs", n);
    for (size_t i = 0; i < n; i++) {
        Facemill__JobAck *a = &sub->acks[i];
        facemill__job_ack__init(a);
        a->job_id = s->jobs[i]->id;
        a->has_state = 1;
        sub->ackp[i] = a;
    }
    return FM_OK;
}

/* Decides the ack of a job the journal need not be asked about: REJECTED when it is
 * invalid, DUPLICATE when it is queued or running. Returns 1 when it did. */
static int ack_without_journal(fm_broker *b, const Facemill__Job *jm, Facemill__JobAck *a)
{
    const char *bad = job_invalid(jm);
    if (bad) {
        a->state = FACEMILL__JOB_ACK__STATE__REJECTED;
        a->reason = (char *)bad;
        return 1;
    }
    if (job_find(b, jm->id)) {
        a->state = FACEMILL__JOB_ACK__STATE__DUPLICATE;
        return 1;
    }
    return 0;
}

/* A new job for jm (in the hash, not queued), submitted by from; *body (the caller
 * frees it) is what the journal keeps of it. */
static fm_status job_new(fm_broker *b, Facemill__Job *jm, const fm_wire_peer *from,
                         bjob **out, uint8_t **body, fm_error *err)
{
    bjob *j = calloc(1, sizeof *j);
    if (!j)
        return fm_error_set(err, FM_ERR_NOMEM, "job");
    jm->has_attempt = 0;
    jm->has_token = 0; /* the broker's to set, per dispatch */
    j->len = facemill__job__get_packed_size(jm);
    *body = malloc(j->len ? j->len : 1);
    j->id = dup_str(jm->id);
    j->tag = dup_str(jm->tag);
    j->client = malloc(sizeof *j->client);
    if (!*body || !j->id || !j->tag || !j->client || job_insert(b, j) != 0) {
        job_free(j);
        free(*body);
        *body = NULL;
        return fm_error_set(err, FM_ERR_NOMEM, "job");
    }
    *j->client = *from;
    facemill__job__pack(jm, *body);
    *out = j;
    return FM_OK;
}

/* Job i of sub, neither invalid nor in memory, in the open journal transaction:
 * COMMITTED or DUPLICATE when the journal knows it, else journaled and taken as a
 * fresh job (ACCEPTED). Returns FM_OK, FM_ERR_NOMEM (err), or the journal's error
 * (je). */
static fm_status journal_job(fm_broker *b, submit *sub, size_t i, const fm_wire_peer *from,
                             fm_error *je, fm_error *err)
{
    Facemill__Job *jm = sub->msg->jobs[i];
    Facemill__JobAck *a = &sub->acks[i];
    int known = -1;
    fm_status st = fm_journal_lookup(b->journal, jm->id, &known, je);
    if (st != FM_OK)
        return st;
    if (known == 1) {
        a->state = FACEMILL__JOB_ACK__STATE__COMMITTED;
        return FM_OK;
    }
    if (known == 0) { /* pending yet not in memory: cannot happen; be safe */
        a->state = FACEMILL__JOB_ACK__STATE__DUPLICATE;
        return FM_OK;
    }
    bjob *j = NULL;
    uint8_t *body = NULL;
    if ((st = job_new(b, jm, from, &j, &body, err)) != FM_OK)
        return st;
    sub->fresh[sub->nfresh++] = j;
    st = fm_journal_add(b->journal, j->id, j->tag, body, j->len, je);
    free(body);
    if (st != FM_OK)
        return st;
    a->state = FACEMILL__JOB_ACK__STATE__ACCEPTED;
    return FM_OK;
}

/* Decides every ack of sub and takes its new jobs: journaled in one transaction, then
 * queued. When the journal fails (logged), nothing of the Submit is kept and every
 * new job is rejected with the journal's error, which the SubmitAck carries; that is
 * not an error of the broker. Returns FM_OK, or FM_ERR_NOMEM (nothing kept, no
 * answer). */
static fm_status take_jobs(fm_broker *b, submit *sub, const fm_wire_peer *from,
                           fm_error *err)
{
    fm_error je = {0};
    fm_status st = FM_OK;
    int in_tx = fm_journal_begin(b->journal, &je) == FM_OK;
    if (!in_tx && journal_failed(b, &je) == FM_OK) {
        sub->disk_full = 1;
        return FM_OK;
    }
    if (!in_tx)
        snprintf(sub->journal_error, sizeof sub->journal_error, "%s", fm_error_text(&je));
    for (size_t i = 0; i < sub->msg->n_jobs; i++) {
        Facemill__JobAck *a = &sub->acks[i];
        if (ack_without_journal(b, sub->msg->jobs[i], a))
            continue;
        if (!in_tx) {
            a->state = FACEMILL__JOB_ACK__STATE__REJECTED;
            a->reason = sub->journal_error;
            continue;
        }
        if ((st = journal_job(b, sub, i, from, &je, err)) != FM_OK)
            goto fail;
    }
    if (in_tx && (st = fm_journal_commit(b->journal, &je)) != FM_OK)
        goto fail;
    for (size_t i = 0; i < sub->nfresh; i++)
        queue_push(b, sub->fresh[i], 0);
    b->st.accepted += sub->nfresh;
    return FM_OK;

fail:
    /* Nothing of this Submit is kept: every new job is reported rejected, or, on a
     * full disk, the whole Submit is answered SlowDown (the client sends it again). */
    if (je.code != FM_OK && fm_journal_full(b->journal)) {
        sub->disk_full = 1;
        journal_failed(b, &je);
        st = FM_OK;
    } else if (je.code != FM_OK) { /* the journal failed: the Submit is still answered */
        fm_log_error("journal: %s", fm_error_text(&je));
        snprintf(sub->journal_error, sizeof sub->journal_error, "journal: %s",
                 fm_error_text(&je));
        st = FM_OK;
    }
    fm_journal_rollback(b->journal);
    for (size_t i = 0; i < sub->nfresh; i++)
        job_forget(b, sub->fresh[i]);
    sub->nfresh = 0;
    /* Still ACCEPTED: the jobs taken, the one that failed, and those past it (never
     * looked at). */
    for (size_t i = 0; i < sub->msg->n_jobs; i++)
        if (sub->acks[i].state == FACEMILL__JOB_ACK__STATE__ACCEPTED) {
            sub->acks[i].state = FACEMILL__JOB_ACK__STATE__REJECTED;
            sub->acks[i].reason = sub->journal_error;
        }
    return st;
}

static void send_submit_ack(fm_broker *b, const fm_wire_peer *from, const submit *sub)
{
    Facemill__Envelope env;
    Facemill__SubmitAck ack;
    fm_wire_envelope_init(&env);
    facemill__submit_ack__init(&ack);
    ack.has_request_id = sub->msg->has_request_id;
    ack.request_id = sub->msg->request_id;
    ack.n_jobs = sub->msg->n_jobs;
    ack.jobs = sub->ackp;
    ack.has_queue_depth = ack.has_max_queue = 1;
    ack.queue_depth = b->njobs;
    ack.max_queue = (uint64_t)b->cfg.broker.max_queue;
    env.body_case = FACEMILL__ENVELOPE__BODY_SUBMIT_ACK;
    env.submit_ack = &ack;
    fm_error se = {0};
    if (fm_wire_send(b->clients, from, &env, ZMQ_DONTWAIT, &se) != FM_OK)
        fm_log_warn("submit ack not delivered: %s", fm_error_text(&se));
}

/* A Submit: SlowDown when the queue is full, else every job journaled or refused and
 * one SubmitAck (proto/README.md, "Client <-> broker"). Returns FM_OK, or
 * FM_ERR_NOMEM (the Submit is not answered). */
static fm_status on_submit(fm_broker *b, const fm_wire_peer *from, Facemill__Submit *s,
                           fm_error *err)
{
    size_t bytes = facemill__submit__get_packed_size(s);
    if (b->disk_full ||
        fm_broker_queue_full(&b->cfg, b->njobs, b->held_bytes, s->n_jobs, bytes)) {
        send_slow_down(b, from, s);
        return FM_OK;
    }
    submit sub;
    fm_status st = submit_init(&sub, s, err);
    if (st == FM_OK)
        st = take_jobs(b, &sub, from, err);
    if (st == FM_OK && sub.disk_full)
        send_slow_down(b, from, s);
    else if (st == FM_OK)
        send_submit_ack(b, from, &sub);
    submit_free(&sub);
    return st;
}

static double commit_rate(const fm_broker *b)
{
    if (b->rate_n < 2)
        return 0.0;
    size_t newest = (b->rate_n - 1) % RATE_SAMPLES;
    size_t count = b->rate_n < RATE_SAMPLES ? b->rate_n : RATE_SAMPLES;
    size_t oldest = (b->rate_n - count) % RATE_SAMPLES;
    for (size_t k = 0; k < count; k++) {
        size_t i = (b->rate_n - count + k) % RATE_SAMPLES;
        if (b->rate_t[newest] - b->rate_t[i] <= 60000) {
            oldest = i;
            break;
        }
    }
    int64_t dt = b->rate_t[newest] - b->rate_t[oldest];
    if (dt <= 0)
        return 0.0;
    return (double)(b->rate_c[newest] - b->rate_c[oldest]) * 1000.0 / (double)dt;
}

/* Fills r with the broker's state (the tag's counts when tag is not NULL). r->worker
 * points into *wi and *wp, which the caller frees. */
static fm_status status_fill(fm_broker *b, const char *tag, Facemill__StatusReply *r_out,
                             Facemill__WorkerInfo **wi_out, Facemill__WorkerInfo ***wp_out,
                             fm_error *err)
{
    Facemill__StatusReply r;
    facemill__status_reply__init(&r);
    fm_broker_stats s;
    fm_broker_get_stats(b, &s);
    r.has_queued = r.has_in_flight = r.has_awaiting_commit = r.has_committed = 1;
    r.has_quarantined = r.has_max_queue = r.has_workers = r.has_credit_total = 1;
    r.has_credit_free = r.has_jobs_per_s = r.has_uptime_ms = 1;
    r.queued = s.queued;
    r.in_flight = s.in_flight;
    r.awaiting_commit = s.awaiting_commit;
    r.committed = s.committed;
    r.quarantined = s.quarantined;
    r.max_queue = (uint64_t)b->cfg.broker.max_queue;
    r.workers = s.workers;
    r.credit_total = s.credit_total;
    r.credit_free = s.credit_free;
    r.jobs_per_s = commit_rate(b);
    r.has_journal_disk_full = r.journal_disk_full = b->disk_full;
    r.has_sink_disk_full = r.sink_disk_full = b->sink_disk_full;
    int64_t now = fm_now_ms();
    r.uptime_ms = (uint64_t)(now - b->started);
    if (b->sink_seen > 0) {
        r.has_sink_last_seen_ms = 1;
        r.sink_last_seen_ms = (uint64_t)(now > b->sink_seen ? now - b->sink_seen : 0);
    }
    /* ten of the sink's heartbeats: the interval it announced, else this broker's
     * broker.heartbeat_ms (the sink's default) */
    const int64_t beat = b->sink_interval_ms > 0 ? b->sink_interval_ms
                                                 : (int64_t)b->cfg.broker.heartbeat_ms;
    const int64_t silent_ms = 10 * beat;
    r.has_sink_silent = 1;
    r.sink_silent = (b->sink_seen > 0 ? now - b->sink_seen : now - b->started) > silent_ms;
    Facemill__WorkerInfo *wi = calloc(b->nworkers ? b->nworkers : 1, sizeof *wi);
    Facemill__WorkerInfo **wp = calloc(b->nworkers ? b->nworkers : 1, sizeof *wp);
    if (!wi || !wp) {
        free(wi);
        free(wp);
        return fm_error_set(err, FM_ERR_NOMEM, "status reply");
    }
    for (size_t i = 0; i < b->nworkers; i++) {
        facemill__worker_info__init(&wi[i]);
        wp[i] = &wi[i];
        wi[i].name = b->wk[i]->name;
        wi[i].has_credit = wi[i].has_busy = wi[i].has_last_seen_ms = 1;
        wi[i].credit = b->wk[i]->credit;
        wi[i].busy = b->wk[i]->busy + b->wk[i]->phantom;
        wi[i].last_seen_ms = (uint64_t)(now - b->wk[i]->last_seen);
    }
    r.n_worker = b->nworkers;
    r.worker = wp;
    if (tag) {
        uint64_t total = 0, committed = 0, failed = 0, quarantined = 0;
        fm_error je = {0};
        if (fm_journal_counts(b->journal, tag, &total, &committed, &failed,
                              &quarantined, &je) == FM_OK) {
            r.tag = (char *)tag;
            r.has_tag_total = r.has_tag_committed = r.has_tag_failed = 1;
            r.tag_total = total;
            r.tag_committed = committed;
            r.tag_failed = failed;
        } else {
            fm_log_error("status: %s", fm_error_text(&je));
        }
    }
    *r_out = r;
    *wi_out = wi;
    *wp_out = wp;
    return FM_OK;
}

static fm_status on_status(fm_broker *b, const fm_wire_peer *from,
                           Facemill__StatusRequest *q, fm_error *err)
{
    Facemill__Envelope env;
    Facemill__StatusReply r;
    Facemill__WorkerInfo *wi = NULL, **wp = NULL;
    fm_status st = status_fill(b, q->tag, &r, &wi, &wp, err);
    if (st != FM_OK)
        return st;
    fm_wire_envelope_init(&env);
    r.has_request_id = q->has_request_id;
    r.request_id = q->request_id;
    env.body_case = FACEMILL__ENVELOPE__BODY_STATUS_REPLY;
    env.status_reply = &r;
    fm_wire_send(b->clients, from, &env, ZMQ_DONTWAIT, NULL);
    free(wi);
    free(wp);
    return FM_OK;
}

/* metrics.file: the status as Prometheus metrics, every metrics.interval_ms. A file
 * that cannot be written is logged, never a reason to stop serving. */
static void write_metrics(fm_broker *b)
{
    Facemill__StatusReply r;
    Facemill__WorkerInfo *wi = NULL, **wp = NULL;
    fm_error e = {0};
    if (status_fill(b, NULL, &r, &wi, &wp, &e) != FM_OK ||
        fm_broker_metrics_write(&b->cfg, &r, &e) != FM_OK)
        fm_log_warn("%s", fm_error_text(&e));
    free(wi);
    free(wp);
}

static fm_status on_client(fm_broker *b, const fm_wire_peer *from, Facemill__Envelope *e,
                           fm_error *err)
{
    switch (e->body_case) {
    case FACEMILL__ENVELOPE__BODY_SUBMIT: return on_submit(b, from, e->submit, err);
    case FACEMILL__ENVELOPE__BODY_STATUS_REQUEST:
        return on_status(b, from, e->status_request, err);
    case FACEMILL__ENVELOPE__BODY_HEARTBEAT: return FM_OK;
    default: {
        char id[80];
        fm_log_warn("client %s sent %s, not a client message: refused",
                    fm_wire_peer_text(from, id, sizeof id), fm_wire_body_name(e));
        fm_wire_refuse(b->clients, from, FACEMILL__ERROR_CODE__ERROR_MALFORMED,
                       "not a client message");
        return FM_OK;
    }
    }
}

/* ---- commits from the sink ----------------------------------------------------- */

/* The open job a sink's entry is about, when its token is one the job was sent with;
 * NULL otherwise (no such job, committed already, or a token never dispatched). */
static bjob *entry_job(fm_broker *b, const Facemill__CommitEntry *ce)
{
    if (!ce->job_id || !ce->has_token)
        return NULL;
    bjob *j = job_find(b, ce->job_id);
    return j && !j->committed && token_known(j, &ce->token) ? j : NULL;
}

/* Answers the entries of c the sink has only staged (stored false): confirmed when
 * their token is one the job was dispatched with, refused otherwise. */
static fm_status commit_verdicts(fm_broker *b, const fm_wire_peer *from,
                                 const Facemill__Commit *c, fm_error *err)
{
    size_t n = c->n_entries ? c->n_entries : 1, nc = 0, nr = 0;
    Facemill__CommitEntry *ent = calloc(n, sizeof *ent);
    Facemill__CommitEntry **conf = calloc(n, sizeof *conf), **ref = calloc(n, sizeof *ref);
    if (!ent || !conf || !ref) {
        free(ent), free(conf), free(ref);
        return fm_error_set(err, FM_ERR_NOMEM, "commit reply");
    }
    for (size_t i = 0; i < c->n_entries; i++) {
        const Facemill__CommitEntry *ce = c->entries[i];
        if (ce->stored || !ce->job_id)
            continue;
        Facemill__CommitEntry *out = &ent[nc + nr];
        facemill__commit_entry__init(out);
        out->job_id = ce->job_id;
        out->has_token = ce->has_token;
        out->token = ce->token;
        if (entry_job(b, ce)) {
            conf[nc++] = out;
        } else {
            char id[FM_LOG_ESCAPED_MAX]; /* any pusher of results chose it */
            ref[nr++] = out;
            fm_log_info("job %s: a result the broker did not dispatch (or no longer "
                        "waits for): refused", fm_log_escape(ce->job_id, id, sizeof id));
        }
    }
    if (nc + nr) {
        Facemill__Envelope env;
        Facemill__CommitReply r;
        fm_wire_envelope_init(&env);
        facemill__commit_reply__init(&r);
        r.n_confirmed = nc;
        r.confirmed = conf;
        r.n_refused = nr;
        r.refused = ref;
        env.body_case = FACEMILL__ENVELOPE__BODY_COMMIT_REPLY;
        env.commit_reply = &r;
        fm_error se = {0};
        if (fm_wire_send(b->commits, from, &env, ZMQ_DONTWAIT, &se) != FM_OK)
            fm_log_warn("commit reply to the sink not sent (it asks again): %s",
                        fm_error_text(&se));
    }
    free(ent), free(conf), free(ref);
    return FM_OK;
}

/* Marks the jobs of c's stored entries committed in the journal (one transaction);
 * done[i] becomes the job of entry i when it was committed by it. An entry whose
 * token the job was never sent with is not counted. */
static fm_status commit_journal(fm_broker *b, const Facemill__Commit *c, bjob **done,
                                fm_error *err)
{
    size_t forged = 0;
    uint64_t n_committed = 0, n_quarantined = 0;
    fm_status st = fm_journal_begin(b->journal, err);
    if (st != FM_OK)
        return st;
    for (size_t i = 0; i < c->n_entries; i++) {
        Facemill__CommitEntry *ce = c->entries[i];
        if (!ce->stored || !ce->job_id)
            continue;
        bjob *j = entry_job(b, ce);
        if (!j) {
            bjob *open = job_find(b, ce->job_id);
            /* One line per Commit beyond the first few: a flood of forged entries
             * must not become a flood of log lines. */
            if (open && !open->committed) { /* a known job: its id passed job_invalid */
                if (++forged <= 3)
                    fm_log_warn("sink reported job %s stored with a token it was never "
                                "dispatched with: not counted", ce->job_id);
            } else {
                char id[FM_LOG_ESCAPED_MAX];
                fm_log_debug("sink reported job %s stored again",
                             fm_log_escape(ce->job_id, id, sizeof id));
            }
            continue;
        }
        int changed = 0;
        if ((st = fm_journal_mark_committed(b->journal, ce->job_id, ce->failed, &changed,
                                            err)) != FM_OK) {
            fm_journal_rollback(b->journal);
            return st;
        }
        if (changed) { /* counted once the transaction is on disk */
            n_committed++;
            if (j->state == JOB_QUARANTINED)
                n_quarantined++;
        }
        done[i] = j;
    }
    if (forged > 3)
        fm_log_warn("sink reported %zu more jobs stored with tokens they were never "
                    "dispatched with: not counted", forged - 3);
    if ((st = fm_journal_commit(b->journal, err)) != FM_OK) {
        fm_journal_rollback(b->journal);
        return st;
    }
    b->st.committed += n_committed;
    b->st.quarantined += n_quarantined;
    return FM_OK;
}

/* Tells each submitting client which of its jobs in done are committed: one Commit
 * per client. */
static fm_status commit_forward(fm_broker *b, const Facemill__Commit *c, bjob **done,
                                fm_error *err)
{
    size_t n = c->n_entries ? c->n_entries : 1;
    int *sent = calloc(n, sizeof *sent);
    Facemill__CommitEntry **fw = calloc(n, sizeof *fw);
    Facemill__CommitEntry *fe = calloc(n, sizeof *fe);
    if (!sent || !fw || !fe) {
        free(sent), free(fw), free(fe);
        return fm_error_set(err, FM_ERR_NOMEM, "commit");
    }
    for (size_t i = 0; i < c->n_entries; i++) {
        if (!done[i] || !done[i]->client || sent[i])
            continue;
        size_t m = 0;
        for (size_t k = i; k < c->n_entries; k++)
            if (done[k] && done[k]->client && !sent[k] &&
                fm_wire_peer_equal(done[k]->client, done[i]->client)) {
                facemill__commit_entry__init(&fe[m]);
                fe[m].job_id = done[k]->id;
                fe[m].tag = done[k]->tag;
                fe[m].has_failed = 1;
                fe[m].failed = c->entries[k]->failed;
                fw[m] = &fe[m];
                m++;
                sent[k] = 1;
            }
        Facemill__Envelope env;
        Facemill__Commit out;
        fm_wire_envelope_init(&env);
        facemill__commit__init(&out);
        out.n_entries = m;
        out.entries = fw;
        env.body_case = FACEMILL__ENVELOPE__BODY_COMMIT;
        env.commit = &out;
        fm_wire_send(b->clients, done[i]->client, &env, ZMQ_DONTWAIT, NULL);
    }
    free(sent), free(fw), free(fe);
    return FM_OK;
}

/* Finishes the jobs in done. One still at a worker is finished when it reports. */
static void commit_finish(fm_broker *b, const Facemill__Commit *c, bjob **done)
{
    /* The same id twice in one Commit: each job once, found by a mark on the job
     * itself (a Commit of 60,000 ids must not compare every pair). */
    for (size_t i = 0; i < c->n_entries; i++) {
        if (!done[i])
            continue;
        if (done[i]->seen)
            done[i] = NULL;
        else
            done[i]->seen = 1;
    }
    for (size_t i = 0; i < c->n_entries; i++) {
        bjob *j = done[i];
        if (!j)
            continue;
        j->seen = 0;
        if (j->state == JOB_IN_FLIGHT) {
            j->committed = 1;
            continue;
        }
        job_leave_state(b, j);
        job_forget(b, j);
    }
}

static fm_status commit_apply(fm_broker *b, const Facemill__Commit *c, fm_error *err);
static fm_status commit_hold(fm_broker *b, const Facemill__Commit *c, fm_error *err);

/* A Commit from the sink (proto/README.md, "Sink -> broker"): staged results get a
 * verdict, stored ones with a known token finish their jobs and are forwarded to
 * the clients that submitted them. */
static fm_status on_commit(fm_broker *b, const fm_wire_peer *from, Facemill__Envelope *e,
                           fm_error *err)
{
    b->sink_seen = (int64_t)fm_now_ms();
    if (refuse_old_minor(b->commits, from, e, "sink",
                         e->body_case != FACEMILL__ENVELOPE__BODY_HEARTBEAT))
        return FM_OK;
    if (e->body_case == FACEMILL__ENVELOPE__BODY_HEARTBEAT) {
        int full = e->heartbeat->has_disk_full && e->heartbeat->disk_full;
        /* its own interval (its broker.heartbeat_ms), for the silence status reports */
        if (e->heartbeat->has_interval_ms && e->heartbeat->interval_ms > 0)
            b->sink_interval_ms = e->heartbeat->interval_ms;
        if (full != b->sink_disk_full)
            fm_log_warn(full ? "the sink says its results database is on a full disk"
                             : "the sink's results database has space again");
        b->sink_disk_full = full;
        return FM_OK;
    }
    if (e->body_case != FACEMILL__ENVELOPE__BODY_COMMIT) {
        fm_log_warn("sink sent %s on the commits socket: refused", fm_wire_body_name(e));
        fm_wire_refuse(b->commits, from, FACEMILL__ERROR_CODE__ERROR_MALFORMED,
                       "only Commit and Heartbeat are taken here");
        return FM_OK;
    }
    const Facemill__Commit *c = e->commit;
    fm_status st = commit_verdicts(b, from, c, err);
    if (st != FM_OK)
        return st;
    if (b->disk_full) /* after the ones held already, in order */
        return commit_hold(b, c, err);
    return commit_apply(b, c, err);
}

/* Journals the stored entries of c, tells the clients, finishes the jobs. Nothing
 * changes when the journal fails (err). */
static fm_status commit_write(fm_broker *b, const Facemill__Commit *c, fm_error *err)
{
    bjob **done = calloc(c->n_entries ? c->n_entries : 1, sizeof *done);
    if (!done)
        return fm_error_set(err, FM_ERR_NOMEM, "commit");
    fm_status st = commit_journal(b, c, done, err);
    if (st == FM_OK && (st = commit_forward(b, c, done, err)) == FM_OK)
        commit_finish(b, c, done);
    free(done);
    return st;
}

/* commit_write; on a full disk, c is held for later (commit_hold). */
static fm_status commit_apply(fm_broker *b, const Facemill__Commit *c, fm_error *err)
{
    fm_status st = commit_write(b, c, err);
    if (st != FM_OK && st != FM_ERR_NOMEM && (st = journal_failed(b, err)) == FM_OK)
        return commit_hold(b, c, err);
    return st;
}

/* Keeps c (packed) until the journal can take it: the sink reported those results
 * stored, and it says so only once. */
static fm_status commit_hold(fm_broker *b, const Facemill__Commit *c, fm_error *err)
{
    (void)err;
    int stored = 0;
    for (size_t i = 0; i < c->n_entries && !stored; i++)
        stored = c->entries[i]->stored;
    if (!stored)
        return FM_OK;
    size_t len = facemill__commit__get_packed_size(c);
    uint8_t *data = b->n_backlog < COMMIT_BACKLOG ? malloc(len ? len : 1) : NULL;
    if (!data) {
        fm_log_warn("journal disk full: a commit of %zu entries not kept (%zu held "
                    "already); its jobs are dispatched again after broker.job_timeout_ms",
                    c->n_entries, b->n_backlog);
        return FM_OK;
    }
    facemill__commit__pack(c, data);
    b->backlog[b->n_backlog].data = data;
    b->backlog[b->n_backlog].len = len;
    b->n_backlog++;
    return FM_OK;
}

/* While the disk is full, at every tick: writes the held commits, oldest first;
 * with none held, looks for free space. Submits are taken again once one of those
 * shows that space has returned. */
static fm_status disk_retry(fm_broker *b, fm_error *err)
{
    int wrote = 0;
    while (b->n_backlog) {
        Facemill__Commit *c =
            facemill__commit__unpack(NULL, b->backlog[0].len, b->backlog[0].data);
        if (!c)
            return fm_error_set(err, FM_ERR_NOMEM, "held commit");
        fm_status st = commit_write(b, c, err);
        facemill__commit__free_unpacked(c, NULL);
        if (st != FM_OK && fm_journal_full(b->journal)) {
            memset(err, 0, sizeof *err);
            return FM_OK; /* still full: it stays held */
        }
        if (st != FM_OK)
            return st;
        free(b->backlog[0].data);
        memmove(&b->backlog[0], &b->backlog[1], (b->n_backlog - 1) * sizeof b->backlog[0]);
        b->n_backlog--;
        wrote = 1;
    }
    if (!wrote && !fm_broker_disk_has_room(b->cfg.broker.journal, DISK_ROOM_BYTES)) {
        b->disk_full = 1;
        return FM_OK;
    }
    b->disk_full = 0;
    if (b->disk_full_said)
        fm_log_info("journal %s: space again: taking submits", b->cfg.broker.journal);
    b->disk_full_said = 0;
    return FM_OK;
}

/* ---- timers -------------------------------------------------------------------- */

static fm_status tick(fm_broker *b, fm_error *err)
{
    int64_t now = fm_now_ms();
    fm_status st;
    for (size_t i = 0; i < 3; i++)
        fm_auth_refusals_poll(b->refused[i]);
    /* Heartbeats out; silent workers expire. */
    Facemill__Envelope env;
    Facemill__Heartbeat hb;
    fm_wire_envelope_init(&env);
    facemill__heartbeat__init(&hb);
    hb.has_interval_ms = 1;
    hb.interval_ms = (uint32_t)b->cfg.broker.heartbeat_ms;
    env.body_case = FACEMILL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    for (size_t i = 0; i < b->nworkers;) {
        worker *w = b->wk[i];
        char why[256];
        fm_error e = {0};
        if (now - w->last_seen > b->cfg.broker.worker_expiry_ms) {
            snprintf(why, sizeof why, "worker %s silent for %" PRId64 " ms", w->name,
                     now - w->last_seen);
            fm_log_warn("%s: dropped, its %u jobs re-queued", why, (unsigned)w->busy);
        } else if (fm_wire_send(b->workers, &w->peer, &env, ZMQ_DONTWAIT, &e) ==
                   FM_ERR_NOT_FOUND) {
            /* The table may change under worker_gone: start over (each round
             * removes w, so this ends; earlier workers get one more heartbeat). */
            if ((st = worker_gone(b, w, "disconnected", err)) != FM_OK)
                return st;
            i = 0;
            continue;
        } else {
            i++;
            continue;
        }
        if ((st = worker_remove(b, w, why, 1, err)) != FM_OK)
            return st;
    }
    /* Deadlines of jobs. */
    for (size_t i = 0; i < b->nbuckets; i++) {
        bjob *j = b->buckets[i];
        while (j) {
            bjob *next = j->hnext;
            if (j->state != JOB_QUEUED && now >= j->deadline) {
                if (j->state == JOB_IN_FLIGHT) {
                    char why[256];
                    snprintf(why, sizeof why, "worker %s held it longer than %" PRId64
                             " ms", j->w ? j->w->name : "?",
                             b->cfg.broker.job_timeout_ms);
                    /* The worker is most likely still on it: its slot stays taken
                     * until it reports the job or its heartbeats say otherwise. */
                    if (j->w)
                        j->w->phantom++;
                    job_leave_state(b, j);
                    if ((st = job_fail(b, j, why, err)) != FM_OK)
                        return st;
                } else if (j->state == JOB_DONE) {
                    fm_log_info("job %s: no commit from the sink in time; re-queued",
                                j->id);
                    job_leave_state(b, j);
                    queue_push(b, j, 1);
                    b->st.requeued++;
                } else {
                    if ((st = send_quarantine_result(b, j, err)) != FM_OK)
                        return st;
                    j->deadline = now + b->cfg.broker.job_timeout_ms;
                }
            }
            j = next;
        }
    }
    if (b->disk_full && (st = disk_retry(b, err)) != FM_OK)
        return st;
    size_t k = b->rate_n % RATE_SAMPLES;
    b->rate_t[k] = now;
    b->rate_c[k] = b->st.committed;
    b->rate_n++;
    return FM_OK;
}

/* ---- open / run / close -------------------------------------------------------- */

static int load_job(void *ctx, const char *id, const char *tag, size_t len, int attempts,
                    int quarantined, const char *error)
{
    fm_broker *b = ctx;
    bjob *j = calloc(1, sizeof *j);
    if (!j)
        return 1;
    j->id = dup_str(id);
    j->tag = dup_str(tag);
    j->len = len;
    j->last_error = dup_str(error);
    if (!j->id || !j->tag || !j->last_error || job_insert(b, j) != 0) {
        job_free(j);
        return 1;
    }
    j->failures = attempts;
    if (quarantined || attempts >= b->cfg.broker.max_attempts) {
        j->state = JOB_QUARANTINED;
        j->deadline = 0; /* resend the failed result at the first tick */
        b->st.awaiting_commit++;
    } else {
        queue_push(b, j, 0);
    }
    return 0;
}

/* Opens one socket: a ROUTER bound as a CURVE server of ZAP domain domain, or (domain
 * NULL) the PUSH connected to the sink as its client. */
static fm_status open_socket(fm_broker *b, void **s, int type, const char *endpoint,
                             const char *domain, const char *what, fm_error *err)
{
    *s = zmq_socket(b->ctx, type);
    if (!*s)
        return fm_error_set(err, FM_ERR_IO, "%s socket: %s", what, zmq_strerror(errno));
    fm_status st = fm_wire_setup(*s, b->cfg.net.max_msg_size, 0, err);
    if (st == FM_OK)
        st = domain ? fm_auth_server(b->auth, *s, domain, err)
                    : fm_auth_client(b->auth, *s, FM_AUTH_TO_SINK, err);
    if (st != FM_OK) {
        fm_error_prefix(err, "%s", what);
        return st;
    }
    int rc = domain ? zmq_bind(*s, endpoint) : zmq_connect(*s, endpoint);
    if (rc != 0)
        return fm_error_set(err, FM_ERR_IO, "%s: cannot %s %s: %s", what,
                            domain ? "bind" : "connect to", endpoint, zmq_strerror(errno));
    return FM_OK;
}

fm_status fm_broker_open(fm_broker **out, const fm_config *c, void *zmq_ctx,
                         fm_error *err)
{
    fm_status st;
    *out = NULL;
    fm_broker *b = calloc(1, sizeof *b);
    if (!b)
        return fm_error_set(err, FM_ERR_NOMEM, "broker");
    b->cfg = *c;
    b->nbuckets = 1024;
    b->buckets = calloc(b->nbuckets, sizeof *b->buckets);
    if (!b->buckets) {
        st = fm_error_set(err, FM_ERR_NOMEM, "broker");
        goto fail;
    }
    b->started = (int64_t)fm_now_ms();
    if (zmq_ctx) {
        b->ctx = zmq_ctx;
    } else {
        b->ctx = zmq_ctx_new();
        b->own_ctx = 1;
        if (!b->ctx) {
            st = fm_error_set(err, FM_ERR_IO, "zmq context: %s", zmq_strerror(errno));
            goto fail;
        }
    }
    /* Keys first: an exposed endpoint without them stops the broker before it
     * creates anything, and the ZAP handler must be bound before any socket. */
    if ((st = fm_auth_open(&b->auth, c, FM_AUTH_BROKER, b->ctx, err)) != FM_OK)
        goto fail;
    if ((st = fm_journal_open(&b->journal, c->broker.journal, c->broker.fsync, err)) !=
        FM_OK)
        goto fail;
    uint64_t total = 0, failed = 0;
    if ((st = fm_journal_counts(b->journal, NULL, &total, &b->st.committed, &failed,
                                &b->st.quarantined, err)) != FM_OK ||
        (st = fm_journal_each_pending(b->journal, load_job, b, err)) != FM_OK)
        goto fail;
    if (b->njobs)
        fm_log_info("journal %s: %zu jobs not committed, re-queued", c->broker.journal,
                    b->njobs);
    if ((st = open_socket(b, &b->clients, ZMQ_ROUTER, c->broker.clients,
                          FM_AUTH_DOMAIN_CLIENTS, "broker.clients", err)) != FM_OK ||
        (st = open_socket(b, &b->workers, ZMQ_ROUTER, c->broker.workers,
                          FM_AUTH_DOMAIN_WORKERS, "broker.workers", err)) != FM_OK ||
        (st = open_socket(b, &b->commits, ZMQ_ROUTER, c->sink.commits, FM_AUTH_DOMAIN_SINK,
                          "sink.commits", err)) != FM_OK ||
        (st = open_socket(b, &b->sink, ZMQ_PUSH, c->sink.results, NULL, "sink.results",
                          err)) != FM_OK)
        goto fail;
    if (fm_auth_curve(b->auth))
        fm_log_info("CurveZMQ on every socket: each admits the keys of its own allowlist "
                    "(security.clients_dir, workers_dir, sink_dir)");
    b->refused[0] = fm_auth_refusals_open(b->auth, b->ctx, b->clients, "broker.clients");
    b->refused[1] = fm_auth_refusals_open(b->auth, b->ctx, b->workers, "broker.workers");
    b->refused[2] = fm_auth_refusals_open(b->auth, b->ctx, b->commits, "sink.commits");
    *out = b;
    return FM_OK;
fail:
    fm_broker_close(&b);
    return st;
}

/* Whether the peer of a message on sock is still admitted: under CURVE, a key removed
 * from its allowlist since the handshake cuts off the connection's messages too
 * (fm_auth_admits logs the refusal). A revoked worker is dropped. */
static fm_status peer_admitted(fm_broker *b, void *sock, const fm_wire_peer *from,
                               const char *what, int *admitted, fm_error *err)
{
    *admitted = 1;
    if (!fm_auth_curve(b->auth))
        return FM_OK;
    const char *domain = sock == b->workers   ? FM_AUTH_DOMAIN_WORKERS
                         : sock == b->clients ? FM_AUTH_DOMAIN_CLIENTS
                                              : FM_AUTH_DOMAIN_SINK;
    worker *w = sock == b->workers ? worker_find(b, from) : NULL;
    *admitted = fm_auth_admits(b->auth, domain, from->user, w ? w->name : what);
    return !*admitted && w ? worker_revoked(b, w, err) : FM_OK;
}

/* Receives what a socket has: at most 256 messages, to stay fair to the others, and
 * with until_tick none after the first once the next tick is due, so heartbeats go
 * out on time whatever floods in (what is left is read at the next turn). Submits
 * over broker.max_submit_jobs or max_submit_bytes are refused before they are
 * decoded. */
static fm_status drain_socket(fm_broker *b, void *sock,
                              fm_status (*fn)(fm_broker *, const fm_wire_peer *,
                                              Facemill__Envelope *, fm_error *),
                              const char *what, int until_tick, fm_error *err)
{
    for (int i = 0; i < 256; i++) {
        if (until_tick && i > 0 && fm_now_ms() >= b->next_tick)
            return FM_OK;
        fm_wire_peer from;
        Facemill__Envelope *e = NULL;
        fm_error re = {0};
        fm_status st = fm_wire_recv_checked(sock, &from, &e, ZMQ_DONTWAIT,
                                            sock == b->clients ? fm_broker_check_submit
                                                               : NULL,
                                            &b->cfg, &re);
        if (st == FM_ERR_TIMEOUT || st == FM_ERR_INTERRUPTED)
            return FM_OK;
        if (st == FM_ERR_LIMIT) {
            char id[80];
            fm_log_warn("%s %s: %s", what, fm_wire_peer_text(&from, id, sizeof id),
                        fm_error_text(&re));
            fm_wire_refuse(sock, &from, FACEMILL__ERROR_CODE__ERROR_LIMIT, re.msg);
            continue;
        }
        if (st == FM_ERR_VERSION || st == FM_ERR_PROTOCOL) {
            char id[80];
            fm_log_warn("refusing message from %s %s: %s", what,
                        fm_wire_peer_text(&from, id, sizeof id), fm_error_text(&re));
            if (from.len)
                fm_wire_refuse(sock, &from,
                               st == FM_ERR_VERSION ? FACEMILL__ERROR_CODE__ERROR_VERSION
                                                    : FACEMILL__ERROR_CODE__ERROR_MALFORMED,
                               re.msg);
            continue;
        }
        if (st != FM_OK) {
            *err = re;
            return st;
        }
        int admitted;
        if ((st = peer_admitted(b, sock, &from, what, &admitted, err)) != FM_OK || !admitted) {
            fm_wire_free(&e);
            if (st != FM_OK)
                return st;
            continue;
        }
        st = fn(b, &from, e, err);
        fm_wire_free(&e);
        if (st != FM_OK)
            return st;
    }
    return FM_OK;
}

fm_status fm_broker_run(fm_broker *b, volatile sig_atomic_t *stop, fm_error *err)
{
    fm_status st = FM_OK;
    b->next_tick = fm_now_ms();
    fm_log_info("broker: clients %s, workers %s, commits %s, results to %s",
                b->cfg.broker.clients, b->cfg.broker.workers, b->cfg.sink.commits,
                b->cfg.sink.results);
    while (!*stop) {
        /* Both no-ops unless facemill-broker's main() asked for them (SIGHUP handler,
         * fm_notify_init): `facemill label` runs this loop in-process. */
        fm_log_reopen_if_requested();
        if (fm_notify_tick())
            fm_notify_status("%" PRIu64 " queued, %" PRIu64 " at %zu workers, %" PRIu64
                             " awaiting commit; %" PRIu64 " committed, %.1f/s",
                             b->st.queued, b->st.in_flight, b->nworkers,
                             b->st.awaiting_commit, b->st.committed, commit_rate(b));
        zmq_pollitem_t items[] = {
            {b->clients, 0, ZMQ_POLLIN, 0},
            {b->workers, 0, ZMQ_POLLIN, 0},
            {b->commits, 0, ZMQ_POLLIN, 0},
        };
        int64_t wait = b->next_tick - fm_now_ms();
        if (wait < 0)
            wait = 0;
        /* Under systemd, wake for the watchdog whatever broker.heartbeat_ms is. */
        int rc = zmq_poll(items, 3, fm_notify_cap_wait((long)wait));
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return fm_error_set(err, FM_ERR_IO, "zmq_poll: %s", zmq_strerror(errno));
        }
        /* Workers first: done jobs free credit before new ones are queued. */
        if ((items[1].revents & ZMQ_POLLIN) &&
            (st = drain_socket(b, b->workers, on_worker, "worker", 1, err)) != FM_OK)
            break;
        if ((items[2].revents & ZMQ_POLLIN) &&
            (st = drain_socket(b, b->commits, on_commit, "sink", 1, err)) != FM_OK)
            break;
        if ((items[0].revents & ZMQ_POLLIN) &&
            (st = drain_socket(b, b->clients, on_client, "client", 1, err)) != FM_OK)
            break;
        if (fm_now_ms() >= b->next_tick) {
            if ((st = tick(b, err)) != FM_OK)
                break;
            b->next_tick = fm_now_ms() + b->cfg.broker.heartbeat_ms;
        }
        if ((st = dispatch(b, err)) != FM_OK)
            break;
        if (b->cfg.metrics.file[0] && (int64_t)fm_now_ms() >= b->next_metrics) {
            write_metrics(b);
            b->next_metrics = (int64_t)fm_now_ms() + b->cfg.metrics.interval_ms;
        }
    }
    if (st == FM_OK)
        fm_log_info("broker stopping: %" PRIu64 " queued, %" PRIu64 " at workers, %" PRIu64
                    " awaiting commit stay in the journal",
                    b->st.queued, b->st.in_flight, b->st.awaiting_commit);
    return st;
}

void fm_broker_get_stats(const fm_broker *b, fm_broker_stats *s)
{
    *s = b->st;
    s->workers = (uint32_t)b->nworkers;
    s->credit_total = s->credit_free = 0;
    for (size_t i = 0; i < b->nworkers; i++) {
        s->credit_total += b->wk[i]->credit;
        s->credit_free += worker_free(b->wk[i]);
    }
}

void fm_broker_close(fm_broker **bp)
{
    if (!bp || !*bp)
        return;
    fm_broker *b = *bp;
    void *socks[] = {b->clients, b->workers, b->commits, b->sink};
    for (size_t i = 0; i < 3; i++)
        fm_auth_refusals_close(&b->refused[i], socks[i]);
    for (size_t i = 0; i < 4; i++)
        if (socks[i])
            zmq_close(socks[i]);
    fm_auth_close(&b->auth); /* the ZAP handler outlives the server sockets */
    if (b->own_ctx && b->ctx)
        zmq_ctx_term(b->ctx);
    for (size_t i = 0; b->buckets && i < b->nbuckets; i++)
        for (bjob *j = b->buckets[i], *next; j; j = next) {
            next = j->hnext;
            job_free(j);
        }
    free(b->buckets);
    for (size_t i = 0; i < b->nworkers; i++)
        free(b->wk[i]);
    free(b->wk);
    for (size_t i = 0; i < b->n_backlog; i++)
        free(b->backlog[i].data);
    fm_journal_close(&b->journal);
    free(b);
    *bp = NULL;
}
