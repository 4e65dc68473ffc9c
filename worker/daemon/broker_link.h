/* broker_link.h - a pipeline process's link to the service (broker_link.c): the
 * DEALER to the broker, owned by a thread of its own (WorkerReady, credit, heartbeats,
 * reconnects), and the PUSH of results to the sink. The compute thread of the process
 * (pipeline_process.c) uses the functions below and touches no socket itself.
 *
 * Threads: every function here is the compute thread's; the link thread is started by
 * broker_link_open and joined by broker_link_close.
 */
#ifndef FACEMILL_BROKER_LINK_H
#define FACEMILL_BROKER_LINK_H

#include "facemill/auth.h"
#include "facemill/config.h"
#include "facemill/wire.h"

#include <pthread.h>
#include <stdint.h>

/* The link thread's state: the broker's DEALER and its end of the inproc PAIR belong
 * to that thread alone. Private to broker_link.c. */
typedef struct blink {
    const fm_config *cfg;
    const fm_auth *auth; /* the link's keys (only read here) */
    void *ctx, *broker, *pair;
    const char *name, *model;
    int credit;
    int held; /* jobs passed to the compute thread and not yet reported */
    int64_t broker_seen, next_hb;
    void *watch;          /* the broker DEALER's handshakes (fm_auth_watch) */
    int64_t refused_said; /* when a refusal of our key was last logged */
} blink;

/* One process's link. The fields are broker_link.c's; the struct is declared here so
 * the process holds it in place. */
typedef struct broker_link {
    void *ctx;
    fm_auth *auth; /* CURVE keys for both connections, or plain */
    void *sink;   /* PUSH to the sink */
    void *pair;   /* the compute thread's end of the inproc PAIR to the link thread */
    blink thread; /* the link thread's state */
    pthread_t th;
    int running;  /* the link thread was started (and is to be joined) */
    int stuck;    /* it did not answer the stop: not joined, left to the process's exit */
} broker_link;

/* The jobs a process holds: passed on by the link, not yet reported. */
typedef struct held_jobs {
    Facemill__Envelope **env; /* n envelopes (each holding a job), owned; room for max */
    int n, max;               /* max: the credit */
} held_jobs;

/* Connects the sink (sink.results) and the broker (broker.workers), as a CURVE
 * client of each when security.cert is set (include/facemill/auth.h), sends WorkerReady
 * with credit, name and model (both must outlive the link) and starts the link thread
 * with SIGTERM, SIGINT and SIGHUP blocked, so signals interrupt the compute thread's
 * waits. Returns 0, or -1 with the reason logged; either way broker_link_close ends
 * what was opened. */
int broker_link_open(broker_link *k, const fm_config *cfg, const char *name,
                     const char *model, int credit);

/* Waits up to timeout_ms for the link thread. Returns 1 when something arrived (jobs,
 * or its last frame), 0 when nothing did (time out, or a signal), -1 when the wait
 * failed (logged). */
int broker_link_wait(broker_link *k, long timeout_ms);

/* Takes the jobs the link thread passed on into h, up to h->max. Returns 1 when the
 * link thread has stopped (its last frame), else 0. */
int broker_link_take(broker_link *k, held_jobs *h);

/* Pushes r, the result of job job_id, to the sink (blocking while the sink's queue is
 * full) and reports the job to the broker: DONE, or FAILED when the sink did not take
 * it. r is only read during the call. */
void broker_link_deliver(broker_link *k, const char *job_id, Facemill__Result *r);

/* Reports job job_id FAILED (ERROR_INTERNAL, text): the process could not run it, and
 * the broker retries it elsewhere. */
void broker_link_fail(broker_link *k, const char *job_id, const char *text);

/* Stops the link: reports what h holds as handed back, asks the link thread to say
 * goodbye (unless link_stopped: it has stopped already) and frees the jobs still on
 * their way (the broker re-queues them on WorkerBye) until the thread's last frame.
 * Waits at most a few seconds. Leaves h empty; returns how many jobs went back
 * unprocessed. */
int broker_link_stop(broker_link *k, held_jobs *h, int link_stopped);

/* Joins the link thread, closes every socket and the context. Accepts a link whose
 * open failed, or that was never opened (all zero). A link thread that did not answer
 * broker_link_stop is not joined: it and what it holds are left to the process's exit,
 * which follows. */
void broker_link_close(broker_link *k);

/* Frees the envelopes h holds; h->n becomes 0. */
void held_jobs_clear(held_jobs *h);

#endif
