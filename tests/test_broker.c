/* test_broker.c - the wire and the broker, with real processes on ipc:// endpoints in
 * a temporary directory: protocol round trips and version refusal, dispatch by
 * credit, re-queueing from a silent worker, quarantine after max_attempts, a kill -9
 * and restart of the broker, backpressure, ZMQ_MAXMSGSIZE, and facemill-worker
 * (--decode-only) end to end. This program plays the clients, fake workers and a
 * small sink (a PULL socket and a commits DEALER). Every wait is for a condition (a
 * job arriving, the broker's status saying so) with a deadline of WAIT_MS, never a
 * fixed sleep; where a check needs time to have passed (an expiry, a backoff), the
 * time is measured. The only fixed windows are the ones that check that nothing
 * arrives, which a slow machine cannot make fail. */
#include "facemill/clock.h"
#include "facemill/image.h"
#include "facemill/sha256.h"
#include "facemill/wire.h"
#include "fm_test.h"

#include <zmq.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* How long any wait for something that must happen may take: generous, since a
 * loaded machine under the sanitizers is slow; a passing run never waits this long. */
#define WAIT_MS 10000

static char dir[256];
static void *ctx;

typedef struct ep {
    char clients[300], workers[300], commits[300], results[300], journal[300];
} ep;

static void endpoints(ep *e, const char *name)
{
    snprintf(e->clients, sizeof e->clients, "ipc://%s/%s-c", dir, name);
    snprintf(e->workers, sizeof e->workers, "ipc://%s/%s-w", dir, name);
    snprintf(e->commits, sizeof e->commits, "ipc://%s/%s-k", dir, name);
    snprintf(e->results, sizeof e->results, "ipc://%s/%s-r", dir, name);
    snprintf(e->journal, sizeof e->journal, "%s/%s.db", dir, name);
}

/* Starts program (of the build's bin directory) with the endpoints of e, the extra
 * "key=value" settings sets and then the plain arguments args (both NULL-terminated,
 * either NULL). Returns its pid, or -1. */
static pid_t start(const char *program, const ep *e, const char *const *sets,
                   const char *const *args)
{
    char path[512], buf[5][400];
    const char *argv[64];
    int n = 0;
    argv[n++] = fm_test_bin_path(path, sizeof path, program);
    snprintf(buf[0], sizeof buf[0], "broker.clients=%s", e->clients);
    snprintf(buf[1], sizeof buf[1], "broker.workers=%s", e->workers);
    snprintf(buf[2], sizeof buf[2], "sink.commits=%s", e->commits);
    snprintf(buf[3], sizeof buf[3], "sink.results=%s", e->results);
    snprintf(buf[4], sizeof buf[4], "broker.journal=%s", e->journal);
    for (int i = 0; i < 5; i++) {
        argv[n++] = "--set";
        argv[n++] = buf[i];
    }
    for (int i = 0; sets && sets[i] && n < 56; i++) {
        argv[n++] = "--set";
        argv[n++] = sets[i];
    }
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return fm_test_start((char *const *)argv, 0);
}

static void *sock(int type, const char *endpoint, int bind)
{
    void *s = zmq_socket(ctx, type);
    fm_wire_setup(s, 1 << 20, 0, NULL);
    int rc = bind ? zmq_bind(s, endpoint) : zmq_connect(s, endpoint);
    if (rc != 0) {
        fprintf(stderr, "%s %s: %s\n", bind ? "bind" : "connect", endpoint,
                zmq_strerror(errno));
        exit(1);
    }
    return s;
}

/* The next envelope on s within ms, or NULL. Heartbeats are skipped unless wanted. */
static Facemill__Envelope *next(void *s, int ms, int want_heartbeat)
{
    const double t0 = fm_now_ms();
    for (;;) {
        long left = ms - (long)(fm_now_ms() - t0);
        if (left <= 0)
            return NULL;
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, left) <= 0)
            continue;
        Facemill__Envelope *e = NULL;
        if (fm_wire_recv(s, NULL, &e, ZMQ_DONTWAIT, NULL) != FM_OK)
            continue;
        if (e->body_case == FACEMILL__ENVELOPE__BODY_HEARTBEAT && !want_heartbeat) {
            fm_wire_free(&e);
            continue;
        }
        return e;
    }
}

static void send_env(void *s, Facemill__Envelope *e)
{
    fm_error err = {0};
    fm_status st = fm_wire_send(s, NULL, e, 0, &err);
    CHECK_MSG(st == FM_OK, "send: %s", err.msg);
}

/* Submits jobs id prefix0..prefix{n-1} with data of size bytes; returns the reply
 * that arrives within ms, or NULL. */
static Facemill__Envelope *submit_wait(void *client, const char *prefix, int first, int n,
                                       size_t size, uint64_t rid, int ms)
{
    Facemill__Job jobs[64], *jp[64];
    char ids[64][64];
    uint8_t *data = calloc(size ? size : 1, 1);
    for (int i = 0; i < n; i++) {
        facemill__job__init(&jobs[i]);
        snprintf(ids[i], sizeof ids[i], "%s%d", prefix, first + i);
        jobs[i].id = ids[i];
        jobs[i].tag = "t";
        jobs[i].source_case = FACEMILL__JOB__SOURCE_DATA;
        jobs[i].data.data = data;
        jobs[i].data.len = size;
        jp[i] = &jobs[i];
    }
    Facemill__Submit s;
    facemill__submit__init(&s);
    s.n_jobs = (size_t)n;
    s.jobs = jp;
    s.has_request_id = 1;
    s.request_id = rid;
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_SUBMIT;
    env.submit = &s;
    send_env(client, &env);
    free(data);
    return next(client, ms, 0);
}

/* submit_wait for a reply that must come. */
static Facemill__Envelope *submit(void *client, const char *prefix, int first, int n,
                                  size_t size, uint64_t rid)
{
    return submit_wait(client, prefix, first, n, size, rid, WAIT_MS);
}

static void *fake_worker(const ep *e, uint32_t credit)
{
    void *w = sock(ZMQ_DEALER, e->workers, 0);
    Facemill__Envelope env;
    Facemill__WorkerReady r;
    fm_wire_envelope_init(&env);
    facemill__worker_ready__init(&r);
    r.has_credit = 1;
    r.credit = credit;
    r.name = "fake";
    env.body_case = FACEMILL__ENVELOPE__BODY_WORKER_READY;
    env.worker_ready = &r;
    send_env(w, &env);
    return w;
}

static void heartbeat(void *w)
{
    Facemill__Envelope env;
    Facemill__Heartbeat h;
    fm_wire_envelope_init(&env);
    facemill__heartbeat__init(&h);
    env.body_case = FACEMILL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &h;
    send_env(w, &env);
}

/* A heartbeat that says how many jobs the worker holds. */
static void heartbeat_busy(void *w, uint32_t credit, uint32_t busy)
{
    Facemill__Envelope env;
    Facemill__Heartbeat h;
    fm_wire_envelope_init(&env);
    facemill__heartbeat__init(&h);
    h.has_credit = h.has_busy = 1;
    h.credit = credit;
    h.busy = busy;
    env.body_case = FACEMILL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &h;
    send_env(w, &env);
}

static void job_done(void *w, const char *id, int outcome, const char *text)
{
    Facemill__Envelope env;
    Facemill__JobDone d;
    fm_wire_envelope_init(&env);
    facemill__job_done__init(&d);
    d.job_id = (char *)id;
    d.has_outcome = 1;
    d.outcome = (Facemill__JobDone__Outcome)outcome;
    d.error_text = (char *)text;
    env.body_case = FACEMILL__ENVELOPE__BODY_JOB_DONE;
    env.job_done = &d;
    send_env(w, &env);
}

/* The sink's report of job id's result with token (16 bytes): stored, or only staged
 * (waiting for the broker's verdict). */
static void commit(void *sinkc, const char *id, const uint8_t *token, int failed, int stored)
{
    Facemill__Envelope env;
    Facemill__Commit c;
    Facemill__CommitEntry ce, *cp = &ce;
    fm_wire_envelope_init(&env);
    facemill__commit__init(&c);
    facemill__commit_entry__init(&ce);
    ce.job_id = (char *)id;
    ce.has_failed = 1;
    ce.failed = failed;
    ce.has_stored = 1;
    ce.stored = stored;
    ce.has_token = 1;
    ce.token.data = (uint8_t *)token;
    ce.token.len = FM_WIRE_TOKEN_BYTES;
    c.n_entries = 1;
    c.entries = &cp;
    env.body_case = FACEMILL__ENVELOPE__BODY_COMMIT;
    env.commit = &c;
    send_env(sinkc, &env);
}

/* Collects jobs arriving at w until it has want of them (want < 0: until ms have
 * passed) or ms have passed; ids appended to ids (count returned). With beat, w sends
 * a heartbeat at least every 50 ms; *last_beat (when not NULL) gets the time of the
 * last one. */
static int collect(void *w, int want, int ms, char ids[][64], int max, int beat,
                   double *last_beat)
{
    int n = 0;
    const double t0 = fm_now_ms();
    while ((want < 0 || n < want) && fm_now_ms() - t0 < ms) {
        if (beat) {
            heartbeat(w);
            if (last_beat)
                *last_beat = fm_now_ms();
        }
        Facemill__Envelope *e = next(w, 50, 0);
        if (!e)
            continue;
        if (e->body_case == FACEMILL__ENVELOPE__BODY_JOB && n < max)
            snprintf(ids[n++], 64, "%s", e->job->id);
        fm_wire_free(&e);
    }
    return n;
}

/* Collects want jobs arriving at w (heartbeating meanwhile) within WAIT_MS, with
 * their dispatch tokens; returns how many came. */
static int collect_tokens(void *w, int want, char ids[][64], uint8_t tokens[][16], int max)
{
    int n = 0;
    const double t0 = fm_now_ms();
    while (n < want && n < max && fm_now_ms() - t0 < WAIT_MS) {
        heartbeat(w);
        Facemill__Envelope *e = next(w, 50, 0);
        if (e && e->body_case == FACEMILL__ENVELOPE__BODY_JOB) {
            snprintf(ids[n], 64, "%s", e->job->id);
            CHECK(e->job->has_token && e->job->token.len == FM_WIRE_TOKEN_BYTES);
            if (e->job->token.len == FM_WIRE_TOKEN_BYTES)
                memcpy(tokens[n], e->job->token.data, FM_WIRE_TOKEN_BYTES);
            n++;
        }
        fm_wire_free(&e);
    }
    return n;
}

/* The broker's CommitReply on the sink's socket within WAIT_MS (heartbeats and other
 * messages skipped), or NULL. */
static Facemill__Envelope *verdict(void *sinkc)
{
    const double t0 = fm_now_ms();
    for (;;) {
        int left = WAIT_MS - (int)(fm_now_ms() - t0);
        Facemill__Envelope *r = left > 0 ? next(sinkc, left, 0) : NULL;
        if (!r || r->body_case == FACEMILL__ENVELOPE__BODY_COMMIT_REPLY)
            return r;
        fm_wire_free(&r);
    }
}

/* Jobs arriving at w for ms (nothing more is expected). */
static int collect_jobs(void *w, int ms, char ids[][64], int max, int beat)
{
    return collect(w, -1, ms, ids, max, beat, NULL);
}

/* The broker's status, asked on client c (other messages arriving there are
 * dropped); NULL when no reply came within WAIT_MS. */
static Facemill__Envelope *status(void *c)
{
    Facemill__Envelope env;
    Facemill__StatusRequest q;
    fm_wire_envelope_init(&env);
    facemill__status_request__init(&q);
    env.body_case = FACEMILL__ENVELOPE__BODY_STATUS_REQUEST;
    env.status_request = &q;
    send_env(c, &env);
    const double t0 = fm_now_ms();
    for (;;) {
        int left = WAIT_MS - (int)(fm_now_ms() - t0);
        Facemill__Envelope *r = left > 0 ? next(c, left, 0) : NULL;
        if (!r || r->body_case == FACEMILL__ENVELOPE__BODY_STATUS_REPLY)
            return r;
        fm_wire_free(&r);
    }
}

typedef struct status_wait {
    void *c;
    int (*cond)(const Facemill__StatusReply *, long);
    long arg;
    void **beat;
    int n_beat;
} status_wait;

/* One look at the broker's status for wait_status, the heartbeats first. */
static int status_holds(void *arg)
{
    const status_wait *w = arg;
    for (int i = 0; i < w->n_beat; i++)
        heartbeat(w->beat[i]);
    Facemill__Envelope *r = status(w->c);
    int ok = r && w->cond(r->status_reply, w->arg);
    fm_wire_free(&r);
    return ok;
}

/* Waits until the broker's status (asked on c) satisfies cond, at most WAIT_MS; the
 * n_beat worker sockets in beat send heartbeats meanwhile (what arrives there stays
 * unread). Returns 1 when it did. */
static int wait_status(void *c, int (*cond)(const Facemill__StatusReply *, long),
                       long arg, void **beat, int n_beat, const char *what)
{
    status_wait w = {c, cond, arg, beat, n_beat};
    if (fm_test_wait_for(status_holds, &w, WAIT_MS))
        return 1;
    CHECK_MSG(0, "broker status: %s not seen within %d ms", what, WAIT_MS);
    return 0;
}

static int has_workers(const Facemill__StatusReply *s, long n)
{
    return s->workers == (uint32_t)n;
}

/* arg = queued * 1000 + in_flight */
static int has_queued_in_flight(const Facemill__StatusReply *s, long arg)
{
    return s->queued == (uint64_t)(arg / 1000) && s->in_flight == (uint64_t)(arg % 1000);
}

/* Fast heartbeats; an expiry no worker that beats misses on a loaded machine (the
 * silent-worker scenario sets a short one of its own). */
static const char *fast[] = {"broker.heartbeat_ms=50", "broker.worker_expiry_ms=5000",
                             "broker.fsync=off", NULL};

/* ---- scenarios ----------------------------------------------------------------- */

static void test_round_trip(void)
{
    /* Pack and unpack a Result with every kind of field. */
    Facemill__Envelope env, *back = NULL;
    Facemill__Result r;
    Facemill__Face f, *fp = &f;
    float box[4] = {1, 2, 3, 4}, lm[10] = {0}, g[2] = {0.25f, 0.75f};
    uint8_t sha[32];
    fm_sha256_digest("abc", 3, sha);
    char hex[65];
    fm_sha256_hex(sha, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    fm_wire_envelope_init(&env);
    facemill__result__init(&r);
    facemill__face__init(&f);
    f.n_box = 4;
    f.box = box;
    f.n_landmarks = 10;
    f.landmarks = lm;
    f.has_age = 1;
    f.age = 31.5f;
    f.n_gender_probs = 2;
    f.gender_probs = g;
    r.job_id = "j1";
    r.has_sha256 = 1;
    r.sha256.data = sha;
    r.sha256.len = 32;
    r.n_faces = 1;
    r.faces = &fp;
    env.body_case = FACEMILL__ENVELOPE__BODY_RESULT;
    env.result = &r;
    void *a = sock(ZMQ_PAIR, "inproc://rt", 1), *b = sock(ZMQ_PAIR, "inproc://rt", 0);
    send_env(a, &env);
    CHECK(fm_wire_recv(b, NULL, &back, 0, NULL) == FM_OK);
    if (back) {
        CHECK(back->version_major == FM_PROTOCOL_MAJOR);
        CHECK(back->body_case == FACEMILL__ENVELOPE__BODY_RESULT);
        CHECK(strcmp(back->result->job_id, "j1") == 0);
        CHECK(back->result->n_faces == 1 && back->result->faces[0]->n_box == 4);
        CHECK(back->result->faces[0]->box[2] == 3.0f);
        CHECK(back->result->faces[0]->age == 31.5f);
        CHECK(back->result->faces[0]->gender_probs[1] == 0.75f);
        CHECK(back->result->sha256.len == 32 && memcmp(back->result->sha256.data, sha, 32) == 0);
        fm_wire_free(&back);
    }
    /* Another major version is refused with a message naming both. */
    env.version_major = 2;
    env.version_minor = 0;
    send_env(a, &env);
    fm_error err = {0};
    CHECK(fm_wire_recv(b, NULL, &back, 0, &err) == FM_ERR_VERSION);
    CHECK_MSG(strstr(err.msg, "protocol 2.0") && strstr(err.msg, "1.x"), "%s", err.msg);
    CHECK(back == NULL);
    /* Garbage is refused. */
    zmq_send(a, "\xff\xff\xff", 3, 0);
    CHECK(fm_wire_recv(b, NULL, &back, 0, &err) == FM_ERR_PROTOCOL);
    zmq_close(a);
    zmq_close(b);
}

static void test_version_refusal(void)
{
    ep e;
    endpoints(&e, "ver");
    pid_t bp = start("facemill-broker", &e, fast, NULL);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    Facemill__Envelope env;
    Facemill__StatusRequest q;
    fm_wire_envelope_init(&env);
    facemill__status_request__init(&q);
    env.body_case = FACEMILL__ENVELOPE__BODY_STATUS_REQUEST;
    env.status_request = &q;
    env.version_major = 7;
    send_env(c, &env);
    Facemill__Envelope *r = next(c, WAIT_MS, 0);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_ERROR &&
          r->error->code == FACEMILL__ERROR_CODE__ERROR_VERSION);
    fm_wire_free(&r);
    env.version_major = FM_PROTOCOL_MAJOR;
    send_env(c, &env);
    r = next(c, WAIT_MS, 0);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_STATUS_REPLY);
    fm_wire_free(&r);
    zmq_close(c);
    kill(bp, SIGTERM);
    int st = fm_test_reap(bp, WAIT_MS);
    CHECK_MSG(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "broker exit %d", st);
}

static void test_credit_dispatch(void)
{
    ep e;
    endpoints(&e, "credit");
    const char *sets[] = {"broker.heartbeat_ms=50", "broker.worker_expiry_ms=5000",
                          "broker.fsync=off", NULL};
    pid_t bp = start("facemill-broker", &e, sets, NULL);
    void *a = fake_worker(&e, 3), *b = fake_worker(&e, 1);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    void *both[2] = {a, b};
    wait_status(c, has_workers, 2, both, 2, "2 workers");
    Facemill__Envelope *r = submit(c, "cj", 0, 6, 10, 1);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT_ACK && r->submit_ack->n_jobs == 6);
    if (r && r->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT_ACK)
        for (size_t i = 0; i < r->submit_ack->n_jobs; i++)
            CHECK(r->submit_ack->jobs[i]->state == FACEMILL__JOB_ACK__STATE__ACCEPTED);
    fm_wire_free(&r);
    /* Each gets what its credit allows; the broker then holds 2 queued, 4 in flight,
     * and nothing more arrives. */
    char ia[16][64], ib[16][64];
    int na = collect(a, 3, WAIT_MS, ia, 16, 1, NULL);
    int nb = collect(b, 1, WAIT_MS, ib, 16, 1, NULL);
    wait_status(c, has_queued_in_flight, 2 * 1000 + 4, both, 2, "2 queued, 4 in flight");
    na += collect_jobs(a, 100, ia + na, 16 - na, 1);
    nb += collect_jobs(b, 100, ib + nb, 16 - nb, 1);
    CHECK_MSG(na == 3 && nb == 1, "worker a got %d (credit 3), b got %d (credit 1)", na, nb);
    /* Freeing one slot at b brings exactly one more job to b. */
    if (nb == 1)
        job_done(b, ib[0], FACEMILL__JOB_DONE__OUTCOME__DONE, NULL);
    nb = collect(b, 1, WAIT_MS, ib, 16, 1, NULL);
    wait_status(c, has_queued_in_flight, 1 * 1000 + 4, both, 2, "1 queued, 4 in flight");
    nb += collect_jobs(b, 100, ib + nb, 16 - nb, 1);
    na = collect_jobs(a, 100, ia, 16, 1);
    CHECK_MSG(nb == 1 && na == 0, "after freeing one slot at b: b got %d, a got %d", nb, na);
    zmq_close(a);
    zmq_close(b);
    zmq_close(c);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);
}

/* A worker that goes silent is expired after broker.worker_expiry_ms, not before: its
 * jobs go to another worker, and the time from its last heartbeat to their arrival
 * there is measured. */
static void test_silent_worker(void)
{
    ep e;
    endpoints(&e, "silent");
    const int expiry = 1000;
    const char *sets[] = {"broker.heartbeat_ms=50", "broker.worker_expiry_ms=1000",
                          "broker.fsync=off", NULL};
    pid_t bp = start("facemill-broker", &e, sets, NULL);
    void *a = fake_worker(&e, 2);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    wait_status(c, has_workers, 1, &a, 1, "1 worker");
    Facemill__Envelope *r = submit(c, "sj", 0, 2, 10, 1);
    fm_wire_free(&r);
    char ia[8][64], ib[8][64];
    double last_beat = fm_now_ms();
    int na = collect(a, 2, WAIT_MS, ia, 8, 1, &last_beat);
    CHECK_MSG(na == 2, "a got %d", na);
    /* a now stays silent; b joins and keeps beating. */
    void *b = fake_worker(&e, 4);
    int nb = collect(b, 1, WAIT_MS + expiry, ib, 8, 1, NULL);
    const double silent = fm_now_ms() - last_beat;
    nb += collect(b, 2 - nb, WAIT_MS, ib + nb, 8 - nb, 1, NULL);
    nb += collect_jobs(b, 100, ib + nb, 8 - nb, 1);
    fprintf(stderr, "silent worker: its jobs re-sent %.0f ms after its last heartbeat "
            "(expiry %d ms)\n", silent, expiry);
    CHECK_MSG(nb == 2, "b got %d of the silent worker's jobs", nb);
    /* The broker expires a worker when now - last_seen > expiry, both in whole
     * milliseconds of CLOCK_MONOTONIC, and last_seen is after the heartbeat left. */
    CHECK_MSG(nb == 0 || silent > expiry, "jobs re-sent %.1f ms after the last heartbeat, "
              "before the expiry of %d ms", silent, expiry);
    if (nb == 2 && na == 2)
        CHECK((strcmp(ib[0], ia[0]) == 0 || strcmp(ib[0], ia[1]) == 0));
    zmq_close(a);
    zmq_close(b);
    zmq_close(c);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);
}

/* Jobs arriving at w within ms while it beats every 50 ms saying it holds busy. */
static int jobs_while_busy(void *w, int ms, uint32_t credit, uint32_t busy, char ids[][64],
                           int max)
{
    int n = 0;
    for (int t = 0; t < ms; t += 50) {
        heartbeat_busy(w, credit, busy);
        Facemill__Envelope *j = next(w, 50, 0);
        if (j && j->body_case == FACEMILL__ENVELOPE__BODY_JOB && n < max)
            snprintf(ids[n++], 64, "%s", j->job->id);
        fm_wire_free(&j);
    }
    return n;
}

/* Until w holds want jobs (at most WAIT_MS), beating that it holds what it got so far. */
static int jobs_until(void *w, int want, uint32_t credit, char ids[][64], int max)
{
    int n = 0;
    const double t0 = fm_now_ms();
    while (n < want && fm_now_ms() - t0 < WAIT_MS)
        n += jobs_while_busy(w, 50, credit, (uint32_t)n, ids + n, max - n);
    return n;
}

/* A worker still computing jobs the broker took back on timeout says so in its
 * heartbeats: their slots are not refilled until it reports them. A worker that hands
 * a job back is not sent it again at once (that would bounce it back and forth). */
static void test_held_and_handed_back(void)
{
    ep e;
    endpoints(&e, "held");
    const char *sets[] = {"broker.heartbeat_ms=50", "broker.worker_expiry_ms=5000",
                          "broker.job_timeout_ms=300", "broker.max_attempts=100",
                          "broker.fsync=off", NULL};
    pid_t bp = start("facemill-broker", &e, sets, NULL);
    void *w = fake_worker(&e, 2);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    wait_status(c, has_workers, 1, &w, 1, "1 worker");
    Facemill__Envelope *r = submit(c, "hj", 0, 3, 10, 1);
    fm_wire_free(&r);
    char ids[16][64];
    int n = jobs_until(w, 2, 2, ids, 16); /* the first two, as they come */
    CHECK_MSG(n == 2, "worker with credit 2 got %d jobs", n);
    /* Both time out after 300 ms (the broker's status shows all 3 queued, none in
     * flight); the worker keeps saying it holds 2, and gets nothing meanwhile nor in
     * the 20 heartbeats after. */
    char more[16][64];
    int extra = 0;
    const double t0 = fm_now_ms();
    for (;;) {
        extra += jobs_while_busy(w, 50, 2, 2, more + extra, 16 - extra);
        Facemill__Envelope *s = status(c);
        int timed_out = s && s->status_reply->queued == 3 && s->status_reply->in_flight == 0;
        fm_wire_free(&s);
        if (timed_out || fm_now_ms() - t0 > WAIT_MS) {
            CHECK_MSG(timed_out, "the broker did not take the jobs back within %d ms",
                      WAIT_MS);
            break;
        }
    }
    extra += jobs_while_busy(w, 1000, 2, 2, more + extra, 16 - extra);
    CHECK_MSG(extra == 0, "%d jobs sent to a worker whose heartbeats say it is full",
              extra);
    /* Now it reports them (late) and is free again: it gets work. */
    for (int i = 0; i < n; i++)
        job_done(w, ids[i], FACEMILL__JOB_DONE__OUTCOME__DONE, NULL);
    extra = jobs_until(w, 2, 2, more, 16);
    CHECK_MSG(extra == 2, "after reporting, the worker got %d jobs", extra);
    zmq_close(w);
    zmq_close(c);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);

    /* Hand-back backoff: one heartbeat interval (1 s here) before the next job,
     * measured from the hand-back leaving. */
    const int backoff = 1000;
    endpoints(&e, "handback");
    const char *slow[] = {"broker.heartbeat_ms=1000", "broker.fsync=off", NULL};
    bp = start("facemill-broker", &e, slow, NULL);
    w = fake_worker(&e, 1);
    c = sock(ZMQ_DEALER, e.clients, 0);
    wait_status(c, has_workers, 1, &w, 1, "1 worker");
    r = submit(c, "hb", 0, 1, 10, 1);
    fm_wire_free(&r);
    Facemill__Envelope *j = next(w, WAIT_MS, 0);
    CHECK(j && j->body_case == FACEMILL__ENVELOPE__BODY_JOB);
    if (j && j->body_case == FACEMILL__ENVELOPE__BODY_JOB) {
        const double handed = fm_now_ms();
        job_done(w, j->job->id, FACEMILL__JOB_DONE__OUTCOME__HANDED_BACK, NULL);
        Facemill__Envelope *again = next(w, WAIT_MS + backoff, 0);
        const double after = fm_now_ms() - handed;
        CHECK_MSG(again && again->body_case == FACEMILL__ENVELOPE__BODY_JOB,
                  "the handed-back job came back after the backoff");
        fprintf(stderr, "hand-back: the job came back after %.0f ms (backoff %d ms)\n",
                after, backoff);
        /* backoff_until = now + backoff, in whole milliseconds taken after the
         * hand-back arrived: the job cannot leave before backoff - 1 ms has passed. */
        CHECK_MSG(!again || after > backoff - 1, "a handed-back job came back after %.1f "
                  "ms, within the backoff of %d ms", after, backoff);
        fm_wire_free(&again);
    }
    fm_wire_free(&j);
    zmq_close(w);
    zmq_close(c);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);
}

static void test_quarantine(void)
{
    ep e;
    endpoints(&e, "quar");
    const char *sets[] = {"broker.heartbeat_ms=50", "broker.worker_expiry_ms=5000",
                          "broker.max_attempts=3", "broker.fsync=off", NULL};
    void *pull = sock(ZMQ_PULL, e.results, 1);
    pid_t bp = start("facemill-broker", &e, sets, NULL);
    void *w = fake_worker(&e, 1);
    void *sinkc = sock(ZMQ_DEALER, e.commits, 0);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    wait_status(c, has_workers, 1, &w, 1, "1 worker");
    Facemill__Envelope *r = submit(c, "bad", 0, 1, 10, 1);
    fm_wire_free(&r);
    /* Each attempt fails at once; after the third the job is quarantined (its result
     * goes to the sink) and no fourth attempt comes, then or in the 200 ms after. */
    int attempts = 0;
    Facemill__Envelope *res = NULL;
    const double t0 = fm_now_ms();
    while (!res && fm_now_ms() - t0 < WAIT_MS) {
        heartbeat(w);
        Facemill__Envelope *j = next(w, 50, 0);
        if (j && j->body_case == FACEMILL__ENVELOPE__BODY_JOB) {
            attempts++;
            CHECK(j->job->attempt == (uint32_t)attempts);
            job_done(w, j->job->id, FACEMILL__JOB_DONE__OUTCOME__FAILED, "model exploded");
        }
        fm_wire_free(&j);
        res = next(pull, 1, 0);
    }
    for (int k = 0; k < 4; k++) {
        heartbeat(w);
        Facemill__Envelope *j = next(w, 50, 0);
        attempts += j && j->body_case == FACEMILL__ENVELOPE__BODY_JOB;
        fm_wire_free(&j);
    }
    CHECK_MSG(attempts == 3, "%d attempts before quarantine (max 3)", attempts);
    CHECK(res && res->body_case == FACEMILL__ENVELOPE__BODY_RESULT);
    uint8_t token[FM_WIRE_TOKEN_BYTES] = {0}, forged[FM_WIRE_TOKEN_BYTES];
    if (res && res->body_case == FACEMILL__ENVELOPE__BODY_RESULT) {
        CHECK(strcmp(res->result->job_id, "bad0") == 0);
        CHECK(res->result->error_code == FACEMILL__ERROR_CODE__ERROR_QUARANTINED);
        CHECK_MSG(strstr(res->result->error_text, "model exploded"), "%s",
                  res->result->error_text);
        CHECK(res->result->has_token && res->result->token.len == sizeof token);
        if (res->result->token.len == sizeof token)
            memcpy(token, res->result->token.data, sizeof token);
    }
    fm_wire_free(&res);
    /* The sink stages it and asks: the broker's token is confirmed, another refused. */
    memcpy(forged, token, sizeof forged);
    forged[0] ^= 1;
    commit(sinkc, "bad0", forged, 1, 0);
    Facemill__Envelope *v = verdict(sinkc);
    CHECK(v && v->commit_reply->n_refused == 1 && v->commit_reply->n_confirmed == 0 &&
          strcmp(v->commit_reply->refused[0]->job_id, "bad0") == 0);
    fm_wire_free(&v);
    commit(sinkc, "bad0", token, 1, 0);
    v = verdict(sinkc);
    CHECK(v && v->commit_reply->n_confirmed == 1 && v->commit_reply->n_refused == 0 &&
          v->commit_reply->confirmed[0]->token.len == sizeof token &&
          memcmp(v->commit_reply->confirmed[0]->token.data, token, sizeof token) == 0);
    fm_wire_free(&v);
    /* A report of it stored under the forged token is not counted; under the real one
     * the client hears of it and status counts it. */
    commit(sinkc, "bad0", forged, 1, 1);
    commit(sinkc, "bad0", token, 1, 1);
    Facemill__Envelope *cm = next(c, WAIT_MS, 0);
    CHECK(cm && cm->body_case == FACEMILL__ENVELOPE__BODY_COMMIT && cm->commit->n_entries == 1 &&
          cm->commit->entries[0]->failed);
    fm_wire_free(&cm);
    Facemill__Envelope env;
    Facemill__StatusRequest q;
    fm_wire_envelope_init(&env);
    facemill__status_request__init(&q);
    q.tag = "t";
    env.body_case = FACEMILL__ENVELOPE__BODY_STATUS_REQUEST;
    env.status_request = &q;
    send_env(c, &env);
    Facemill__Envelope *s = next(c, WAIT_MS, 0);
    CHECK(s && s->body_case == FACEMILL__ENVELOPE__BODY_STATUS_REPLY);
    if (s && s->body_case == FACEMILL__ENVELOPE__BODY_STATUS_REPLY) {
        CHECK_MSG(s->status_reply->quarantined == 1, "quarantined %llu",
                  (unsigned long long)s->status_reply->quarantined);
        CHECK(s->status_reply->tag_total == 1 && s->status_reply->tag_failed == 1);
        CHECK(s->status_reply->queued == 0 && s->status_reply->awaiting_commit == 0);
    }
    fm_wire_free(&s);
    zmq_close(w);
    zmq_close(c);
    zmq_close(sinkc);
    zmq_close(pull);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);
}

static void test_restart(void)
{
    ep e;
    endpoints(&e, "restart");
    const char *sets[] = {"broker.heartbeat_ms=50", "broker.worker_expiry_ms=5000",
                          "broker.fsync=always", NULL};
    pid_t bp = start("facemill-broker", &e, sets, NULL);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    Facemill__Envelope *r = submit(c, "rj", 0, 5, 100, 1);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT_ACK);
    fm_wire_free(&r);
    /* The five jobs go to a worker, each with its token. */
    void *w0 = fake_worker(&e, 5);
    char got[5][64];
    uint8_t tok[5][16];
    CHECK(collect_tokens(w0, 5, got, tok, 5) == 5);
    const uint8_t *tok_of[5] = {0};
    for (int i = 0; i < 5; i++) {
        int k = -1;
        if (sscanf(got[i], "rj%d", &k) == 1 && k >= 0 && k < 5)
            tok_of[k] = tok[i];
    }
    CHECK(tok_of[0] && tok_of[1] && tok_of[2]);
    zmq_close(w0);
    /* rj2 reported stored under a token it was never sent with: not counted (it is
     * dispatched again after the restart). rj0 and rj1 are committed by the sink;
     * then the broker dies. */
    void *sinkc = sock(ZMQ_DEALER, e.commits, 0);
    uint8_t bogus[16] = "not a dispatch!";
    commit(sinkc, "rj2", bogus, 0, 1);
    if (tok_of[0] && tok_of[1]) {
        commit(sinkc, "rj0", tok_of[0], 0, 1);
        commit(sinkc, "rj1", tok_of[1], 0, 1);
    }
    /* Both commits have reached the broker when the client has heard of both. */
    int heard = 0;
    for (int k = 0; k < 2; k++) {
        Facemill__Envelope *cm = next(c, WAIT_MS, 0);
        heard += cm && cm->body_case == FACEMILL__ENVELOPE__BODY_COMMIT;
        fm_wire_free(&cm);
    }
    CHECK_MSG(heard == 2, "the client heard of %d of 2 commits", heard);
    kill(bp, SIGKILL);
    waitpid(bp, NULL, 0);
    bp = start("facemill-broker", &e, sets, NULL);
    void *w = fake_worker(&e, 10);
    void *c2 = sock(ZMQ_DEALER, e.clients, 0);
    /* The 3 uncommitted jobs reach w (credit 10), the broker then holds none queued
     * and 3 in flight, and nothing more arrives. */
    char ids[16][64];
    int n = collect(w, 3, WAIT_MS, ids, 16, 1, NULL);
    wait_status(c2, has_queued_in_flight, 0 * 1000 + 3, &w, 1, "0 queued, 3 in flight");
    n += collect_jobs(w, 100, ids + n, 16 - n, 1);
    CHECK_MSG(n == 3, "restarted broker dispatched %d jobs, want the 3 uncommitted", n);
    for (int i = 0; i < n; i++)
        CHECK(strcmp(ids[i], "rj0") != 0 && strcmp(ids[i], "rj1") != 0);
    /* Resubmitting answers committed / duplicate, and queues nothing new. */
    r = submit(c2, "rj", 0, 3, 100, 2);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT_ACK);
    if (r && r->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT_ACK) {
        CHECK(r->submit_ack->jobs[0]->state == FACEMILL__JOB_ACK__STATE__COMMITTED);
        CHECK(r->submit_ack->jobs[1]->state == FACEMILL__JOB_ACK__STATE__COMMITTED);
        CHECK(r->submit_ack->jobs[2]->state == FACEMILL__JOB_ACK__STATE__DUPLICATE);
    }
    fm_wire_free(&r);
    zmq_close(w);
    zmq_close(c);
    zmq_close(c2);
    zmq_close(sinkc);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);
}

static void test_backpressure_and_size(void)
{
    ep e;
    endpoints(&e, "bp");
    const char *sets[] = {"broker.max_queue=3", "net.max_msg_size=4096", "broker.fsync=off",
                          "broker.max_submit_jobs=5", "broker.max_submit_bytes=2000", NULL};
    pid_t bp = start("facemill-broker", &e, sets, NULL);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    Facemill__Envelope *r = submit(c, "q", 0, 3, 10, 1);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT_ACK);
    fm_wire_free(&r);
    r = submit(c, "q", 3, 1, 10, 2);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_SLOW_DOWN &&
          r->slow_down->queue_depth == 3 && r->slow_down->request_id == 2);
    fm_wire_free(&r);
    /* Over broker.max_submit_jobs, or max_submit_bytes: refused whole with the bound
     * named, before the queue is looked at. */
    r = submit(c, "q", 10, 6, 10, 3);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_ERROR &&
          r->error->code == FACEMILL__ERROR_CODE__ERROR_LIMIT && r->error->text &&
          strstr(r->error->text, "6 jobs: more than broker.max_submit_jobs 5"));
    fm_wire_free(&r);
    r = submit(c, "q", 20, 1, 2500, 4);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_ERROR &&
          r->error->code == FACEMILL__ERROR_CODE__ERROR_LIMIT && r->error->text &&
          strstr(r->error->text, "more than broker.max_submit_bytes 2000"));
    fm_wire_free(&r);
    /* Over net.max_msg_size: never delivered, no answer (within 3 s). */
    void *big = sock(ZMQ_DEALER, e.clients, 0);
    r = submit_wait(big, "big", 0, 1, 8000, 3, 3000);
    CHECK(r == NULL);
    fm_wire_free(&r);
    /* The broker still serves others. */
    Facemill__Envelope env;
    Facemill__StatusRequest q;
    fm_wire_envelope_init(&env);
    facemill__status_request__init(&q);
    env.body_case = FACEMILL__ENVELOPE__BODY_STATUS_REQUEST;
    env.status_request = &q;
    send_env(c, &env);
    r = next(c, WAIT_MS, 0);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_STATUS_REPLY &&
          r->status_reply->queued == 3);
    fm_wire_free(&r);
    zmq_close(c);
    zmq_close(big);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);
}

static void test_worker_daemon(void)
{
    ep e;
    endpoints(&e, "wd");
    /* A small JPEG and a corrupt one. */
    uint8_t px[32 * 24 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 7);
    fm_image img = {.w = 32, .h = 24, .stride = 96, .data = px, .orig_w = 32, .orig_h = 24,
                    .scale_num = 1, .scale_denom = 1, .orientation = 1};
    char jpg[300];
    snprintf(jpg, sizeof jpg, "%s/a.jpg", dir);
    CHECK(fm_image_write_jpeg(&img, jpg, 90, NULL) == FM_OK);
    void *pull = sock(ZMQ_PULL, e.results, 1);
    pid_t bp = start("facemill-broker", &e, fast, NULL);
    const char *args[] = {"--processes", "2", "--decode-only", NULL};
    char root[400]; /* the by-path job's file is beneath it */
    snprintf(root, sizeof root, "worker.path_root=%s", dir);
    const char *wsets[] = {fast[0], fast[1], fast[2], root, NULL};
    pid_t wp = start("facemill-worker", &e, wsets, args);
    void *c = sock(ZMQ_DEALER, e.clients, 0);
    Facemill__Job j[2], *jp[2] = {&j[0], &j[1]};
    facemill__job__init(&j[0]);
    facemill__job__init(&j[1]);
    j[0].id = "good";
    j[0].source_case = FACEMILL__JOB__SOURCE_PATH;
    j[0].path = jpg;
    j[1].id = "corrupt";
    j[1].name = "corrupt.jpg";
    j[1].source_case = FACEMILL__JOB__SOURCE_DATA;
    j[1].data.data = (uint8_t *)"\xff\xd8\xff\xe0garbage";
    j[1].data.len = 11;
    Facemill__Submit s;
    facemill__submit__init(&s);
    s.n_jobs = 2;
    s.jobs = jp;
    Facemill__Envelope env;
    fm_wire_envelope_init(&env);
    env.body_case = FACEMILL__ENVELOPE__BODY_SUBMIT;
    env.submit = &s;
    send_env(c, &env);
    Facemill__Envelope *r = next(c, WAIT_MS, 0);
    CHECK(r && r->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT_ACK);
    fm_wire_free(&r);
    int good = 0, bad = 0;
    for (int k = 0; k < 2; k++) {
        Facemill__Envelope *res = next(pull, 3 * WAIT_MS, 0);
        if (!res)
            break;
        Facemill__Result *rr = res->result;
        if (rr && strcmp(rr->job_id, "good") == 0) {
            good++;
            CHECK(rr->error_code == 0 && rr->width == 32 && rr->height == 24);
            CHECK(rr->has_sha256 && rr->sha256.len == 32);
        } else if (rr && strcmp(rr->job_id, "corrupt") == 0) {
            bad++;
            CHECK(rr->error_code == FACEMILL__ERROR_CODE__ERROR_DECODE ||
                  rr->error_code == FACEMILL__ERROR_CODE__ERROR_UNSUPPORTED);
            CHECK(rr->error_text && rr->error_text[0]);
            CHECK(strcmp(rr->source, "corrupt.jpg") == 0);
        }
        fm_wire_free(&res);
    }
    CHECK_MSG(good == 1 && bad == 1, "good %d bad %d", good, bad);
    kill(wp, SIGTERM);
    int st = fm_test_reap(wp, WAIT_MS);
    CHECK_MSG(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker exit %d", st);
    zmq_close(c);
    zmq_close(pull);
    kill(bp, SIGTERM);
    CHECK(fm_test_reap(bp, WAIT_MS) != -1);
}

int main(void)
{
    if (fm_test_tmpdir(dir, sizeof dir, "broker") != 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    ctx = zmq_ctx_new();
    test_round_trip();
    test_version_refusal();
    test_credit_dispatch();
    test_silent_worker();
    test_held_and_handed_back();
    test_quarantine();
    test_restart();
    test_backpressure_and_size();
    test_worker_daemon();
    zmq_ctx_term(ctx);
    fm_test_remove_tree(dir);
    return fm_test_done("test_broker");
}
