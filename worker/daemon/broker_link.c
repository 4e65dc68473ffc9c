/* broker_link.c - a pipeline process's link to the service (broker_link.h): the
 * broker's DEALER in a thread of its own, and the sink's PUSH (protocol:
 * proto/README.md, "Worker <-> broker" and "Worker/broker -> sink").
 *
 * Why a thread: the broker takes a worker for dead after broker.worker_expiry_ms of
 * silence, and one batch (a few large photos with dozens of faces each, on a busy
 * machine) can take longer than that. Heartbeats therefore come from a thread that
 * never computes. A ZeroMQ socket belongs to one thread, so this thread owns the
 * DEALER to the broker outright: it sends WorkerReady and heartbeats, reconnects
 * when the broker falls silent, passes jobs to the compute thread and forwards its
 * reports. It counts the jobs passed on and not yet reported: a heartbeat's busy,
 * from which the broker corrects its own count. A job beyond the credit (a broker
 * whose count lags) is queued for the compute thread too, not handed back: a
 * hand-back would only bounce the job between the two.
 *
 * Between the two threads, an inproc PAIR (this process only):
 *   link -> compute  a frame holding a Facemill__Envelope * (a job; the compute
 *                    thread now owns it), or an empty frame: the link has stopped
 *                    (after the WorkerBye went out, or on a fatal error)
 *   compute -> link  a packed Envelope to forward to the broker (JobDone), or an
 *                    empty frame: send WorkerBye and stop
 *
 * The results go to the sink from the compute thread, on a PUSH of its own.
 */
#include "broker_link.h"
#include "facemill/clock.h"
#include "facemill/log.h"

#include <zmq.h>

#include <errno.h>
#include <signal.h>
#include <string.h>

/* Receives the next frame waiting on an end of the inproc PAIR into m, without
 * waiting. Returns 1 (the caller closes m), or 0 when none is waiting. */
static int pair_recv(void *pair, zmq_msg_t *m)
{
    zmq_msg_init(m);
    if (zmq_msg_recv(m, pair, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(m);
        return 0;
    }
    return 1;
}

/* ---- the link thread ----------------------------------------------------------- */

static fm_status connect_broker(blink *l, fm_error *err)
{
    fm_auth_watch_close(l->broker, l->watch);
    l->watch = NULL;
    if (l->broker)
        zmq_close(l->broker);
    l->broker = zmq_socket(l->ctx, ZMQ_DEALER);
    if (!l->broker)
        return fm_error_set(err, FM_ERR_IO, "socket: %s", zmq_strerror(errno));
    l->watch = fm_auth_watch(l->ctx, l->broker);
    fm_status st = fm_wire_setup(l->broker, l->cfg->net.max_msg_size, 2000, err);
    if (st == FM_OK)
        st = fm_auth_client(l->auth, l->broker, FM_AUTH_TO_BROKER, err);
    if (st != FM_OK)
        return st;
    if (zmq_connect(l->broker, l->cfg->broker.workers) != 0)
        return fm_error_set(err, FM_ERR_IO, "cannot connect to %s: %s",
                            l->cfg->broker.workers, zmq_strerror(errno));
    Facemill__Envelope env;
    Facemill__WorkerReady r;
    fm_wire_envelope_init(&env);
    facemill__worker_ready__init(&r);
    r.has_credit = 1;
    r.credit = (uint32_t)l->credit;
    r.name = (char *)l->name;
    r.model = (char *)l->model;
    env.body_case = FACEMILL__ENVELOPE__BODY_WORKER_READY;
    env.worker_ready = &r;
    l->broker_seen = fm_now_ms();
    return fm_wire_send(l->broker, NULL, &env, ZMQ_DONTWAIT, err);
}

/* Sends JobDone on sock: the broker's DEALER (link thread) or the PAIR to the link
 * (compute thread). Never blocks for long: a report that cannot go out is logged and
 * the broker's timers recover the job. */
/* Longest a result waits to be taken by the sink (its queue towards the sink full). */
#define SINK_SEND_TIMEOUT_MS 10000

static void send_done(void *sock, const char *id, int outcome, uint32_t code,
                      const char *text)
{
    Facemill__Envelope env;
    Facemill__JobDone d;
    fm_wire_envelope_init(&env);
    facemill__job_done__init(&d);
    d.job_id = (char *)id;
    d.has_outcome = 1;
    d.outcome = (Facemill__JobDone__Outcome)outcome;
    if (code) {
        d.has_error_code = 1;
        d.error_code = code;
        d.error_text = (char *)text;
    }
    env.body_case = FACEMILL__ENVELOPE__BODY_JOB_DONE;
    env.job_done = &d;
    fm_error e = {0};
    if (fm_wire_send(sock, NULL, &env, ZMQ_DONTWAIT, &e) != FM_OK)
        fm_log_warn("job %s: report to the broker failed: %s", id ? id : "?",
                    fm_error_text(&e));
}

static void send_heartbeat(blink *l)
{
    Facemill__Envelope env;
    Facemill__Heartbeat h;
    fm_wire_envelope_init(&env);
    facemill__heartbeat__init(&h);
    h.has_interval_ms = h.has_credit = h.has_busy = 1;
    h.interval_ms = (uint32_t)l->cfg->broker.heartbeat_ms;
    h.credit = (uint32_t)l->credit;
    h.busy = (uint32_t)l->held;
    h.name = (char *)l->name;
    env.body_case = FACEMILL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &h;
    fm_wire_send(l->broker, NULL, &env, ZMQ_DONTWAIT, NULL);
}

/* Takes what the broker sent: jobs go on to the compute thread. */
static void link_from_broker(blink *l)
{
    for (;;) {
        Facemill__Envelope *e = NULL;
        fm_error re = {0};
        fm_status st = fm_wire_recv(l->broker, NULL, &e, ZMQ_DONTWAIT, &re);
        if (st == FM_ERR_TIMEOUT || st == FM_ERR_INTERRUPTED)
            return;
        if (st != FM_OK) {
            fm_log_warn("refusing message from the broker: %s", fm_error_text(&re));
            continue;
        }
        l->broker_seen = fm_now_ms();
        if (e->body_case == FACEMILL__ENVELOPE__BODY_JOB) {
            if (l->held >= l->credit)
                fm_log_debug("job %s beyond credit (%d held): queued",
                             e->job->id ? e->job->id : "?", l->held);
            if (zmq_send(l->pair, &e, sizeof e, ZMQ_DONTWAIT) == (int)sizeof e) {
                l->held++;
                continue; /* the compute thread owns e now */
            }
            send_done(l->broker, e->job->id, FACEMILL__JOB_DONE__OUTCOME__HANDED_BACK, 0,
                      NULL);
        } else if (e->body_case == FACEMILL__ENVELOPE__BODY_ERROR) {
            uint32_t code = e->error->code;
            fm_log_warn("broker: %s", e->error->text ? e->error->text : "error");
            if (code == FACEMILL__ERROR_CODE__ERROR_UNKNOWN_PEER) {
                fm_error ce = {0};
                if (connect_broker(l, &ce) != FM_OK)
                    fm_log_error("%s", fm_error_text(&ce));
            }
        }
        fm_wire_free(&e);
    }
}

/* Forwards the compute thread's reports. Returns 1 when it asked to stop. */
static int link_from_compute(blink *l)
{
    for (;;) {
        zmq_msg_t m;
        if (!pair_recv(l->pair, &m))
            return 0;
        size_t n = zmq_msg_size(&m);
        if (n == 0) {
            zmq_msg_close(&m);
            return 1;
        }
        Facemill__Envelope *e = facemill__envelope__unpack(NULL, n, zmq_msg_data(&m));
        if (e && e->body_case == FACEMILL__ENVELOPE__BODY_JOB_DONE && l->held > 0)
            l->held--;
        if (e)
            facemill__envelope__free_unpacked(e, NULL);
        if (zmq_msg_send(&m, l->broker, ZMQ_DONTWAIT) < 0) {
            fm_log_warn("report to the broker not sent: %s", zmq_strerror(errno));
            zmq_msg_close(&m);
        }
    }
}

static void *link_main(void *arg)
{
    blink *l = arg;
    const fm_config *cfg = l->cfg;
    l->next_hb = fm_now_ms();
    for (;;) {
        int64_t now = fm_now_ms();
        char why[FM_ERROR_MSG_MAX];
        if (fm_auth_watch_failed(l->watch, "the broker", why, sizeof why) &&
            (!l->refused_said || now - l->refused_said >= 60000)) {
            /* said, not only waited out: the operator may admit the key (the broker
             * reads its allowlist again), so the worker goes on trying */
            fm_log_error("%s; trying again (said once a minute)", why);
            l->refused_said = now;
        }
        if (now >= l->next_hb) {
            send_heartbeat(l);
            l->next_hb = now + cfg->broker.heartbeat_ms;
        }
        if (now - l->broker_seen > cfg->broker.worker_expiry_ms) {
            fm_log_warn("broker silent for %lld ms: reconnecting",
                        (long long)(now - l->broker_seen));
            fm_error e = {0};
            if (connect_broker(l, &e) != FM_OK) {
                fm_log_error("%s", fm_error_text(&e));
                break;
            }
        }
        zmq_pollitem_t it[2] = {{l->pair, 0, ZMQ_POLLIN, 0}, {l->broker, 0, ZMQ_POLLIN, 0}};
        int64_t wait = l->next_hb - fm_now_ms();
        int rc = zmq_poll(it, 2, (long)(wait > 0 ? wait : 0));
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            fm_log_error("zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if ((it[0].revents & ZMQ_POLLIN) && link_from_compute(l)) {
            Facemill__Envelope env;
            Facemill__WorkerBye bye;
            fm_wire_envelope_init(&env);
            facemill__worker_bye__init(&bye);
            env.body_case = FACEMILL__ENVELOPE__BODY_WORKER_BYE;
            env.worker_bye = &bye;
            fm_wire_send(l->broker, NULL, &env, ZMQ_DONTWAIT, NULL);
            break;
        }
        if (it[1].revents & ZMQ_POLLIN)
            link_from_broker(l);
    }
    /* The last frame on the pair: the compute thread reads it as "stopped". */
    while (zmq_send(l->pair, "", 0, 0) < 0 && errno == EINTR)
        ;
    return NULL;
}

/* ---- the compute thread's side ------------------------------------------------- */

int broker_link_open(broker_link *k, const fm_config *cfg, const char *name,
                     const char *model, int credit)
{
    blink *l = &k->thread;
    fm_error err = {0};
    memset(k, 0, sizeof *k);
    if (fm_auth_open(&k->auth, cfg, FM_AUTH_WORKER, NULL, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return -1;
    }
    l->auth = k->auth;
    k->ctx = zmq_ctx_new();
    k->sink = k->ctx ? zmq_socket(k->ctx, ZMQ_PUSH) : NULL;
    /* A send timeout: a sink that stopped reading (gone, or stalled on a full disk)
     * must not block the compute thread for ever; the job is handed back instead. */
    int sndtimeo = SINK_SEND_TIMEOUT_MS;
    if (!k->sink || fm_wire_setup(k->sink, cfg->net.max_msg_size, 10000, &err) != FM_OK ||
        zmq_setsockopt(k->sink, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) != 0 ||
        fm_auth_client(k->auth, k->sink, FM_AUTH_TO_SINK, &err) != FM_OK ||
        zmq_connect(k->sink, cfg->sink.results) != 0) {
        fm_log_error("sink %s: %s", cfg->sink.results,
                     err.msg[0] ? err.msg : zmq_strerror(errno));
        return -1;
    }
    k->pair = zmq_socket(k->ctx, ZMQ_PAIR);
    l->pair = zmq_socket(k->ctx, ZMQ_PAIR);
    if (!k->pair || !l->pair || fm_wire_setup(k->pair, 0, 0, &err) != FM_OK ||
        fm_wire_setup(l->pair, 0, 0, &err) != FM_OK ||
        zmq_bind(k->pair, "inproc://link") != 0 ||
        zmq_connect(l->pair, "inproc://link") != 0) {
        fm_log_error("inproc link: %s", err.msg[0] ? err.msg : zmq_strerror(errno));
        return -1;
    }
    l->cfg = cfg;
    l->ctx = k->ctx;
    l->name = name;
    l->model = model;
    l->credit = credit;
    if (connect_broker(l, &err) != FM_OK) {
        fm_log_error("broker %s: %s", cfg->broker.workers, fm_error_text(&err));
        return -1;
    }
    /* Signals go to the compute thread, whose waits they interrupt. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int prc = pthread_create(&k->th, NULL, link_main, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0) {
        fm_log_error("cannot start the broker link thread: %s", strerror(prc));
        return -1;
    }
    k->running = 1;
    return 0;
}

int broker_link_wait(broker_link *k, long timeout_ms)
{
    zmq_pollitem_t it = {k->pair, 0, ZMQ_POLLIN, 0};
    int n = zmq_poll(&it, 1, timeout_ms);
    if (n < 0 && errno != EINTR) {
        fm_log_error("zmq_poll: %s", zmq_strerror(errno));
        return -1;
    }
    return n > 0;
}

int broker_link_take(broker_link *k, held_jobs *h)
{
    while (h->n < h->max) {
        zmq_msg_t m;
        if (!pair_recv(k->pair, &m))
            return 0;
        size_t n = zmq_msg_size(&m);
        Facemill__Envelope *e = NULL;
        if (n == sizeof e)
            memcpy(&e, zmq_msg_data(&m), sizeof e);
        zmq_msg_close(&m);
        if (n == 0)
            return 1;
        if (e)
            h->env[h->n++] = e;
    }
    return 0;
}

void broker_link_deliver(broker_link *k, const char *job_id, Facemill__Result *r)
{
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_RESULT;
    env.result = r;
    fm_error se = {0};
    fm_status st = fm_wire_send(k->sink, NULL, &env, 0, &se);
    if (st == FM_ERR_TIMEOUT) {
        /* Not the job's fault: the broker gives it again later, no attempt counted. */
        fm_log_warn("job %s: the sink took no result for %d ms: handed back", job_id,
                    SINK_SEND_TIMEOUT_MS);
        send_done(k->pair, job_id, FACEMILL__JOB_DONE__OUTCOME__HANDED_BACK, 0, NULL);
        return;
    }
    if (st != FM_OK) {
        broker_link_fail(k, job_id, fm_error_text(&se));
        return;
    }
    send_done(k->pair, job_id, FACEMILL__JOB_DONE__OUTCOME__DONE, 0, NULL);
}

void broker_link_fail(broker_link *k, const char *job_id, const char *text)
{
    send_done(k->pair, job_id, FACEMILL__JOB_DONE__OUTCOME__FAILED,
              FACEMILL__ERROR_CODE__ERROR_INTERNAL, text);
}

void held_jobs_clear(held_jobs *h)
{
    for (int i = 0; i < h->n; i++)
        fm_wire_free(&h->env[i]);
    h->n = 0;
}

int broker_link_stop(broker_link *k, held_jobs *h, int link_stopped)
{
    int back = h->n;
    for (int i = 0; i < h->n; i++)
        send_done(k->pair, h->env[i]->job->id, FACEMILL__JOB_DONE__OUTCOME__HANDED_BACK, 0,
                  NULL);
    held_jobs_clear(h);
    if (link_stopped)
        return back;
    zmq_send(k->pair, "", 0, ZMQ_DONTWAIT);
    int64_t deadline = fm_now_ms() + 5000;
    while (fm_now_ms() < deadline) {
        zmq_pollitem_t it = {k->pair, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        int stopped = broker_link_take(k, h);
        back += h->n;
        held_jobs_clear(h);
        if (stopped)
            return back;
    }
    fm_log_warn("the broker link did not stop in time");
    k->stuck = 1;
    return back;
}

void broker_link_close(broker_link *k)
{
    if (k->running && k->stuck) {
        /* Joining a thread that did not answer could wait for ever, and its sockets,
         * context and keys are still its own: all of it goes with the process, which
         * is stopping, rather than a worker asked to stop that never does. */
        fm_log_warn("the broker link thread left to the process's exit");
        return;
    }
    if (k->running)
        pthread_join(k->th, NULL);
    fm_auth_watch_close(k->thread.broker, k->thread.watch);
    void *socks[] = {k->thread.broker, k->thread.pair, k->pair, k->sink};
    for (size_t i = 0; i < sizeof socks / sizeof socks[0]; i++)
        if (socks[i])
            zmq_close(socks[i]);
    if (k->ctx)
        zmq_ctx_term(k->ctx);
    fm_auth_close(&k->auth);
    memset(k, 0, sizeof *k);
}
