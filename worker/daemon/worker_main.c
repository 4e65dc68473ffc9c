/* worker_main.c - the facemill-worker program: N pipeline processes that take jobs from
 * the broker by credit and push results to the sink (protocol: proto/README.md).
 *
 * Why processes, not threads: each process owns one pipeline (decoder, detector,
 * backbone, arenas) and the OS shares the read-only model pages between them, so a
 * crash on one image takes down one process, which the parent restarts; the broker
 * re-queues its jobs.
 *
 * Inside a process, two threads: the compute thread runs batches and pushes results
 * to the sink; the link thread owns the broker socket, so heartbeats keep their
 * rhythm however long a batch takes (see "the broker link" below).
 *
 * The compute is one function, run_batch(): it turns the jobs a process holds into
 * results with the full pipeline (include/facemill/pipeline.h); --decode-only (tests,
 * wire benchmarks) decodes and hashes without models.
 *
 * Lifetimes: a pipeline process gets SIGTERM when its parent dies (PR_SET_PDEATHSIG),
 * so killing the parent never leaves orphans working. With --die-with-parent (what
 * `facemill label` starts) the parent also dies with whoever started it, and both
 * levels die by SIGKILL: the broker and sink they served died with that process, so
 * there is nothing to finish or hand back.
 *
 * Under systemd (include/facemill/notify.h) only the parent speaks for the service:
 * READY=1 once every pipeline process has opened its pipeline and connected, a
 * STATUS= line and the watchdog from its loop. SIGHUP reopens log.file in the parent,
 * which passes it on to every pipeline process, each reopening the file for itself.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "facemill/config.h"
#include "facemill/image.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/notify.h"
#include "facemill/sha256.h"
#include "facemill/wire.h"
#include "facemill/pipeline.h"

#include <zmq.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;

/* What each pipeline process tells its parent, in memory shared across fork: whether
 * it serves, and how many jobs it finished. The parent reads it for READY=1 and its
 * STATUS= line. One slot per process index; a restarted process takes over its
 * predecessor's slot (done keeps counting). */
typedef struct proc_slot {
    atomic_int ready;          /* 1 once the pipeline is open and the broker link runs */
    atomic_uint_least64_t done; /* jobs finished, results sent */
} proc_slot;

static proc_slot *slots;   /* the parent's mapping, inherited by every process */
static proc_slot *my_slot; /* in a pipeline process: its own slot */

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        fm_log_request_reopen(); /* the loop reopens the file; never a reason to stop */
    else
        stop_flag = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static double now_ms_f(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- the compute --------------------------------------------------------------- */

#define FACE_FLOATS (4 + 10 + 2 + 5)

/* Everything one process needs to turn jobs into results, sized at start. */
typedef struct compute {
    int decode_only;
    int cap;        /* most jobs per batch (the credit) */
    int max_faces;
    fm_decoder *decoder; /* decode-only, and detection without the pipeline */
    fm_pipeline *pipeline;
    fm_pipeline_input *in;
    fm_image_result *res;
    size_t max_bytes;
    uint8_t **files;     /* per slot: bytes of path jobs, reused */
    size_t *file_caps;
    char model[256];
    const char *worker;   /* this process's name, stamped on every result */
    /* Outgoing results, per slot. */
    Facemill__Result *out;
    Facemill__StageTimes *times;
    Facemill__Face *pf;   /* cap * max_faces */
    Facemill__Face **pfp;
    float *pfloats;       /* cap * max_faces * FACE_FLOATS */
    uint8_t (*sha)[FM_SHA256_BYTES];
    char (*errtext)[FM_ERROR_MSG_MAX];
} compute;

static void compute_close(compute *c)
{
    fm_decoder_destroy(&c->decoder);
    fm_pipeline_close(&c->pipeline);
    free(c->in);
    free(c->res);
    for (int i = 0; c->files && i < c->cap; i++)
        free(c->files[i]);
    free(c->files);
    free(c->file_caps);
    free(c->out);
    free(c->times);
    free(c->pf);
    free(c->pfp);
    free(c->pfloats);
    free(c->sha);
    free(c->errtext);
}

static fm_status compute_open(compute *c, const fm_config *cfg, int cap, int decode_only,
                              fm_error *err)
{
    fm_status st;
    memset(c, 0, sizeof *c);
    c->cap = cap;
    c->decode_only = decode_only;
    c->max_faces = (int)cfg->detect.max_faces;
    c->max_bytes = (size_t)cfg->decode.max_bytes;
    size_t nf = (size_t)cap * (size_t)c->max_faces;
    c->files = calloc((size_t)cap, sizeof *c->files);
    c->file_caps = calloc((size_t)cap, sizeof *c->file_caps);
    c->out = calloc((size_t)cap, sizeof *c->out);
    c->times = calloc((size_t)cap, sizeof *c->times);
    c->pf = calloc(nf, sizeof *c->pf);
    c->pfp = calloc(nf, sizeof *c->pfp);
    c->pfloats = calloc(nf * FACE_FLOATS, sizeof *c->pfloats);
    c->sha = calloc((size_t)cap, sizeof *c->sha);
    c->errtext = calloc((size_t)cap, sizeof *c->errtext);
    if (!c->files || !c->file_caps || !c->out || !c->times || !c->pf || !c->pfp ||
        !c->pfloats || !c->sha || !c->errtext) {
        st = fm_error_set(err, FM_ERR_NOMEM, "worker buffers");
        goto fail;
    }
    fm_decode_opts dopts = {.max_pixels = (uint64_t)cfg->decode.max_pixels,
                            .max_bytes = (size_t)cfg->decode.max_bytes};
    if (decode_only) {
        if ((st = fm_decoder_new(&c->decoder, &dopts, err)) != FM_OK)
            goto fail;
        snprintf(c->model, sizeof c->model, "decode-only");
        return FM_OK;
    }
    if ((st = fm_nn_set_threads((int)cfg->engine.threads, err)) != FM_OK)
        goto fail;
    fm_pipeline_opts popts = {.max_images = cap};
    c->in = calloc((size_t)cap, sizeof *c->in);
    c->res = calloc((size_t)cap, sizeof *c->res);
    if (!c->in || !c->res) {
        st = fm_error_set(err, FM_ERR_NOMEM, "worker buffers");
        goto fail;
    }
    if ((st = fm_pipeline_open(&c->pipeline, cfg, &popts, err)) != FM_OK)
        goto fail;
    snprintf(c->model, sizeof c->model, "mtcnn + %s%s",
             fm_pipeline_backbone_identity(c->pipeline),
             fm_pipeline_heads(c->pipeline) ? " + heads" : "");
    return FM_OK;
fail:
    compute_close(c);
    return st;
}

static uint32_t error_code_of(fm_status s)
{
    switch (s) {
    case FM_OK: return FACEMILL__ERROR_CODE__ERROR_NONE;
    case FM_ERR_DECODE:
    case FM_ERR_FORMAT: return FACEMILL__ERROR_CODE__ERROR_DECODE;
    case FM_ERR_UNSUPPORTED: return FACEMILL__ERROR_CODE__ERROR_UNSUPPORTED;
    case FM_ERR_LIMIT: return FACEMILL__ERROR_CODE__ERROR_LIMIT;
    case FM_ERR_IO:
    case FM_ERR_NOT_FOUND: return FACEMILL__ERROR_CODE__ERROR_IO;
    case FM_ERR_INVALID: return FACEMILL__ERROR_CODE__ERROR_INVALID;
    default: return FACEMILL__ERROR_CODE__ERROR_INTERNAL;
    }
}

/* Reads a path job's file into slot i's buffer (grown only when a larger file comes). */
static fm_status read_file(compute *c, int i, const char *path, size_t *len, fm_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
    fm_status st = FM_OK;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = fm_error_set(err, FM_ERR_IO, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)sb.st_size > c->max_bytes) {
        st = fm_error_set(err, FM_ERR_LIMIT, "%s: %lld bytes, more than decode.max_bytes",
                          path, (long long)sb.st_size);
        goto out;
    }
    size_t n = (size_t)sb.st_size;
    if (n + 1 > c->file_caps[i]) {
        uint8_t *nb = realloc(c->files[i], n + 1);
        if (!nb) {
            st = fm_error_set(err, FM_ERR_NOMEM, "%s: %zu bytes", path, n);
            goto out;
        }
        c->files[i] = nb;
        c->file_caps[i] = n + 1;
    }
    if (fread(c->files[i], 1, n, f) != n) {
        st = fm_error_set(err, FM_ERR_IO, "%s: short read", path);
        goto out;
    }
    *len = n;
out:
    fclose(f);
    return st;
}

/* Fills face slot k of c from a detection (and attributes when present). */
static Facemill__Face *put_face(compute *c, size_t k, const fm_face *d, const float *age,
                                const float *age_std, const float *gender,
                                const float *race)
{
    Facemill__Face *f = &c->pf[k];
    float *fl = &c->pfloats[k * FACE_FLOATS];
    facemill__face__init(f);
    memcpy(fl, d->box, 4 * sizeof(float));
    memcpy(fl + 4, d->landmarks, 10 * sizeof(float));
    f->n_box = 4;
    f->box = fl;
    f->n_landmarks = 10;
    f->landmarks = fl + 4;
    f->has_score = 1;
    f->score = d->score;
    if (age) {
        f->has_age = f->has_age_std = 1;
        f->age = *age;
        f->age_std = *age_std;
        memcpy(fl + 14, gender, 2 * sizeof(float));
        memcpy(fl + 16, race, 5 * sizeof(float));
        f->n_gender_probs = 2;
        f->gender_probs = fl + 14;
        f->n_race_probs = 5;
        f->race_probs = fl + 16;
    }
    c->pfp[k] = f;
    return f;
}

/* Turns n jobs into results c->out[0..n). Returns FM_OK (each result carries its own
 * error), or an error that is nobody's image's fault (the batch is then retried
 * elsewhere). Allocates nothing once buffers have grown to the largest file. */
static fm_status run_batch(compute *c, Facemill__Job **jobs, int n, fm_error *err)
{
    const uint8_t *data[n > 0 ? n : 1];
    size_t len[n > 0 ? n : 1];
    fm_status pre[n > 0 ? n : 1];
    double read_ms[n > 0 ? n : 1];
    for (int i = 0; i < n; i++) {
        Facemill__Result *r = &c->out[i];
        Facemill__StageTimes *t = &c->times[i];
        facemill__result__init(r);
        facemill__stage_times__init(t);
        r->times = t;
        r->job_id = jobs[i]->id;
        r->tag = jobs[i]->tag;
        r->source = jobs[i]->name && jobs[i]->name[0] ? jobs[i]->name
                    : jobs[i]->source_case == FACEMILL__JOB__SOURCE_PATH ? jobs[i]->path
                                                                          : jobs[i]->id;
        r->model = c->model;
        r->worker = (char *)c->worker;
        r->has_attempt = jobs[i]->has_attempt;
        r->attempt = jobs[i]->attempt;
        fm_error e = {0};
        double t0 = now_ms_f();
        pre[i] = FM_OK;
        data[i] = NULL;
        len[i] = 0;
        if (jobs[i]->source_case == FACEMILL__JOB__SOURCE_DATA) {
            data[i] = jobs[i]->data.data;
            len[i] = jobs[i]->data.len;
        } else if (jobs[i]->source_case == FACEMILL__JOB__SOURCE_PATH && jobs[i]->path) {
            pre[i] = read_file(c, i, jobs[i]->path, &len[i], &e);
            data[i] = c->files[i];
        } else {
            pre[i] = fm_error_set(&e, FM_ERR_INVALID, "job without data or path");
        }
        read_ms[i] = now_ms_f() - t0;
        if (pre[i] != FM_OK) {
            snprintf(c->errtext[i], FM_ERROR_MSG_MAX, "%s", fm_error_text(&e));
            continue;
        }
        fm_sha256_digest(data[i], len[i], c->sha[i]);
        r->has_sha256 = 1;
        r->sha256.data = c->sha[i];
        r->sha256.len = FM_SHA256_BYTES;
        t->has_read_ms = 1;
        t->read_ms = (float)read_ms[i];
    }
    size_t used = 0; /* face slots */
    if (!c->decode_only) {
        int m = 0, map[n > 0 ? n : 1];
        for (int i = 0; i < n; i++)
            if (pre[i] == FM_OK) {
                c->in[m] = (fm_pipeline_input){.data = data[i], .size = len[i]};
                map[m++] = i;
            }
        if (m > 0) {
            fm_status st = fm_pipeline_run(c->pipeline, c->in, m, c->res, err);
            if (st != FM_OK)
                return st;
        }
        for (int k = 0; k < m; k++) {
            int i = map[k];
            fm_image_result *ir = &c->res[k];
            Facemill__Result *r = &c->out[i];
            if (ir->error.code != FM_OK) {
                pre[i] = ir->error.code;
                snprintf(c->errtext[i], FM_ERROR_MSG_MAX, "%s", fm_error_text(&ir->error));
                continue;
            }
            r->has_width = r->has_height = 1;
            r->width = (uint32_t)ir->width;
            r->height = (uint32_t)ir->height;
            int nf = ir->n_faces;
            if (jobs[i]->options && jobs[i]->options->has_max_faces &&
                (int)jobs[i]->options->max_faces < nf)
                nf = (int)jobs[i]->options->max_faces;
            if (nf > c->max_faces)
                nf = c->max_faces;
            r->faces = &c->pfp[used];
            r->n_faces = (size_t)nf;
            for (int f = 0; f < nf; f++) {
                const fm_face_result *fr = &ir->faces[f];
                const fm_attrs *a = fr->has_attrs ? &fr->attrs : NULL;
                put_face(c, used++, &fr->det, a ? &a->age : NULL, a ? &a->age_std : NULL,
                         a ? a->gender_probs : NULL, a ? a->race_probs : NULL);
            }
            Facemill__StageTimes *t = r->times;
            t->has_decode_ms = t->has_detect_ms = t->has_align_ms = 1;
            t->decode_ms = (float)ir->times.decode_ms;
            t->detect_ms = (float)ir->times.detect_ms;
            t->align_ms = (float)ir->times.align_ms;
            t->has_embed_ms = t->has_heads_ms = 1;
            t->embed_ms = (float)ir->times.embed_ms;
            t->heads_ms = (float)ir->times.heads_ms;
        }
    }
    for (int i = 0; i < n; i++) {
        Facemill__Result *r = &c->out[i];
        if (pre[i] == FM_OK && (c->decode_only
                                )) {
            fm_image img;
            fm_error e = {0};
            double t0 = now_ms_f();
            fm_status st = fm_decode(c->decoder, data[i], len[i], &img, &e);
            r->times->has_decode_ms = 1;
            r->times->decode_ms = (float)(now_ms_f() - t0);
            if (st != FM_OK) {
                pre[i] = st;
                snprintf(c->errtext[i], FM_ERROR_MSG_MAX, "%s", fm_error_text(&e));
            } else {
                r->has_width = r->has_height = 1;
                r->width = (uint32_t)img.orig_w;
                r->height = (uint32_t)img.orig_h;
            }
        }
        if (pre[i] != FM_OK) {
            r->has_error_code = 1;
            r->error_code = error_code_of(pre[i]);
            r->error_text = c->errtext[i];
            r->n_faces = 0;
            r->faces = NULL;
        }
        double total = 0;
        Facemill__StageTimes *t = r->times;
        total = t->read_ms + t->decode_ms + t->detect_ms + t->align_ms + t->embed_ms +
                t->heads_ms;
        t->has_total_ms = 1;
        t->total_ms = (float)total;
    }
    (void)used;
    return FM_OK;
}

/* ---- the broker link ----------------------------------------------------------- */

/* Why a thread: the broker takes a worker for dead after broker.worker_expiry_ms of
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
 *                    empty frame: send WorkerBye and stop */

typedef struct blink {
    const fm_config *cfg;
    void *ctx, *broker, *pair;
    const char *name, *model;
    int credit;
    int held; /* jobs passed to the compute thread and not yet reported */
    int64_t broker_seen, next_hb;
} blink;

static fm_status connect_broker(blink *l, fm_error *err)
{
    if (l->broker)
        zmq_close(l->broker);
    l->broker = zmq_socket(l->ctx, ZMQ_DEALER);
    if (!l->broker)
        return fm_error_set(err, FM_ERR_IO, "socket: %s", zmq_strerror(errno));
    fm_status st = fm_wire_setup(l->broker, l->cfg->net.max_msg_size, 2000, err);
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
    l->broker_seen = fm_wire_now_ms();
    return fm_wire_send(l->broker, NULL, &env, ZMQ_DONTWAIT, err);
}

/* Sends JobDone on sock: the broker's DEALER (link thread) or the PAIR to the link
 * (compute thread). Never blocks for long: a report that cannot go out is logged and
 * the broker's timers recover the job. */
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
        l->broker_seen = fm_wire_now_ms();
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
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, l->pair, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return 0;
        }
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
    l->next_hb = fm_wire_now_ms();
    for (;;) {
        int64_t now = fm_wire_now_ms();
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
        int64_t wait = l->next_hb - fm_wire_now_ms();
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

/* ---- one worker process -------------------------------------------------------- */

typedef struct wproc {
    const fm_config *cfg;
    void *ctx, *sink, *pair;
    char name[192];
    int credit;
    compute comp;
    Facemill__Envelope **held; /* jobs held (their envelopes), up to credit */
    int nheld;
} wproc;

/* Runs the held jobs, pushes their results, reports them. */
static void process_held(wproc *w)
{
    int n = w->nheld;
    Facemill__Job *jobs[n > 0 ? n : 1];
    for (int i = 0; i < n; i++)
        jobs[i] = w->held[i]->job;
    fm_error e = {0};
    int64_t t0 = fm_wire_now_ms();
    fm_status st = run_batch(&w->comp, jobs, n, &e);
    fm_log_debug("batch of %d: %lld ms", n, (long long)(fm_wire_now_ms() - t0));
    for (int i = 0; i < n; i++) {
        if (st != FM_OK) {
            send_done(w->pair, jobs[i]->id, FACEMILL__JOB_DONE__OUTCOME__FAILED,
                      FACEMILL__ERROR_CODE__ERROR_INTERNAL, fm_error_text(&e));
            continue;
        }
        Facemill__Envelope env;
        fm_wire_envelope_init(&env);
        env.body_case = FACEMILL__ENVELOPE__BODY_RESULT;
        env.result = &w->comp.out[i];
        fm_error se = {0};
        if (fm_wire_send(w->sink, NULL, &env, 0, &se) != FM_OK) {
            send_done(w->pair, jobs[i]->id, FACEMILL__JOB_DONE__OUTCOME__FAILED,
                      FACEMILL__ERROR_CODE__ERROR_INTERNAL, fm_error_text(&se));
            continue;
        }
        send_done(w->pair, jobs[i]->id, FACEMILL__JOB_DONE__OUTCOME__DONE, 0, NULL);
    }
    if (st != FM_OK)
        fm_log_error("batch of %d failed: %s", n, fm_error_text(&e));
    for (int i = 0; i < n; i++)
        fm_wire_free(&w->held[i]);
    w->nheld = 0;
}

/* Takes the jobs the link passed on (up to credit). Returns 1 when the link has
 * stopped (an empty frame). */
static int take_jobs(wproc *w)
{
    while (w->nheld < w->credit) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, w->pair, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return 0;
        }
        size_t n = zmq_msg_size(&m);
        Facemill__Envelope *e = NULL;
        if (n == sizeof e)
            memcpy(&e, zmq_msg_data(&m), sizeof e);
        zmq_msg_close(&m);
        if (n == 0)
            return 1;
        if (e)
            w->held[w->nheld++] = e;
    }
    return 0;
}

/* Stops the link: reports what is held as handed back, asks the link to say goodbye,
 * and frees jobs still on their way (the broker re-queues them on WorkerBye) until
 * the link's last frame. Waits at most a few seconds. Returns how many jobs went
 * back unprocessed. */
static int stop_link(wproc *w, int link_stopped)
{
    int back = w->nheld;
    for (int i = 0; i < w->nheld; i++) {
        send_done(w->pair, w->held[i]->job->id, FACEMILL__JOB_DONE__OUTCOME__HANDED_BACK, 0,
                  NULL);
        fm_wire_free(&w->held[i]);
    }
    w->nheld = 0;
    if (link_stopped)
        return back;
    zmq_send(w->pair, "", 0, ZMQ_DONTWAIT);
    int64_t deadline = fm_wire_now_ms() + 5000;
    while (fm_wire_now_ms() < deadline) {
        zmq_pollitem_t it = {w->pair, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        int stopped = take_jobs(w);
        back += w->nheld;
        for (int i = 0; i < w->nheld; i++)
            fm_wire_free(&w->held[i]);
        w->nheld = 0;
        if (stopped)
            return back;
    }
    fm_log_warn("the broker link did not stop in time");
    return back;
}

static int worker_process(const fm_config *cfg, int index, int decode_only)
{
    wproc w;
    blink l;
    memset(&w, 0, sizeof w);
    memset(&l, 0, sizeof l);
    w.cfg = cfg;
    w.credit = (int)cfg->worker.credit;
    fm_error err = {0};
    int rc = 1, link_running = 0, link_stopped = 0;
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(w.name, sizeof w.name, "%.120s:%d/%d",
             cfg->worker.name[0] ? cfg->worker.name : host, (int)getpid(), index);
    char role[32];
    snprintf(role, sizeof role, "worker%d", index);
    fm_log_init(role, -1);
    w.held = calloc((size_t)w.credit, sizeof *w.held);
    if (!w.held) {
        fm_log_error("out of memory");
        return 1;
    }
    if (compute_open(&w.comp, cfg, w.credit, decode_only, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        free(w.held);
        return 1;
    }
    w.comp.worker = w.name;
    w.ctx = zmq_ctx_new();
    w.sink = w.ctx ? zmq_socket(w.ctx, ZMQ_PUSH) : NULL;
    if (!w.sink || fm_wire_setup(w.sink, cfg->net.max_msg_size, 10000, &err) != FM_OK ||
        zmq_connect(w.sink, cfg->sink.results) != 0) {
        fm_log_error("sink %s: %s", cfg->sink.results,
                     err.msg[0] ? err.msg : zmq_strerror(errno));
        goto done;
    }
    w.pair = zmq_socket(w.ctx, ZMQ_PAIR);
    l.pair = zmq_socket(w.ctx, ZMQ_PAIR);
    if (!w.pair || !l.pair || fm_wire_setup(w.pair, 0, 0, &err) != FM_OK ||
        fm_wire_setup(l.pair, 0, 0, &err) != FM_OK ||
        zmq_bind(w.pair, "inproc://link") != 0 ||
        zmq_connect(l.pair, "inproc://link") != 0) {
        fm_log_error("inproc link: %s", err.msg[0] ? err.msg : zmq_strerror(errno));
        goto done;
    }
    l.cfg = cfg;
    l.ctx = w.ctx;
    l.name = w.name;
    l.model = w.comp.model;
    l.credit = w.credit;
    if (connect_broker(&l, &err) != FM_OK) {
        fm_log_error("broker %s: %s", cfg->broker.workers, fm_error_text(&err));
        goto done;
    }
    /* Signals go to the compute thread, whose waits they interrupt. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    pthread_t link_th;
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int prc = pthread_create(&link_th, NULL, link_main, &l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0) {
        fm_log_error("cannot start the broker link thread: %s", strerror(prc));
        goto done;
    }
    link_running = 1;
    fm_log_info("worker %s: credit %d, model %s", w.name, w.credit, w.comp.model);
    if (my_slot)
        atomic_store(&my_slot->ready, 1);
    rc = 0;
    while (!stop_flag) {
        fm_log_reopen_if_requested(); /* SIGHUP, passed on by the parent */
        zmq_pollitem_t it = {w.pair, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, 500);
        if (n < 0 && errno != EINTR) {
            fm_log_error("zmq_poll: %s", zmq_strerror(errno));
            rc = 1;
            break;
        }
        if (n > 0 && take_jobs(&w)) {
            fm_log_error("the broker link stopped");
            link_stopped = 1;
            rc = 1;
            break;
        }
        if (w.nheld > 0 && !stop_flag) {
            int batch = w.nheld;
            process_held(&w);
            if (my_slot)
                atomic_fetch_add(&my_slot->done, (uint_least64_t)batch);
        }
    }
    /* Stopping: whatever is held and not started goes back. */
    int back = stop_link(&w, link_stopped);
    fm_log_info("worker %s stopped, %d jobs handed back", w.name, back);
done:
    if (link_running)
        pthread_join(link_th, NULL);
    for (int i = 0; i < w.nheld; i++)
        fm_wire_free(&w.held[i]);
    void *socks[] = {l.broker, l.pair, w.pair, w.sink};
    for (size_t i = 0; i < sizeof socks / sizeof socks[0]; i++)
        if (socks[i])
            zmq_close(socks[i]);
    if (w.ctx)
        zmq_ctx_term(w.ctx);
    compute_close(&w.comp);
    free(w.held);
    return rc;
}

/* ---- the parent ---------------------------------------------------------------- */

/* Forks pipeline process index. It gets death_sig when this process dies; the getppid
 * check covers a parent that died before prctl took effect. */
static pid_t spawn(const fm_config *cfg, int index, int decode_only, int death_sig)
{
    pid_t parent = getpid();
    if (slots)
        atomic_store(&slots[index].ready, 0);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, death_sig);
        if (getppid() != parent)
            _exit(0);
        /* The parent keeps SIGCHLD blocked for its wait (main); a pipeline process
         * has no children to wait for, and only the parent notifies systemd. */
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_UNBLOCK, &chld, NULL);
        fm_notify_disable();
        my_slot = slots ? &slots[index] : NULL;
        _exit(worker_process(cfg, index, decode_only));
    }
    if (pid < 0)
        fm_log_error("fork: %s", strerror(errno));
    return pid;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: facemill-worker [--processes N] [--decode-only] [--die-with-parent]\n"
            "                       [--config FILE] [--set KEY=VALUE]...\n"
            "Forks N pipeline processes (worker.processes; 0 = one per core) that take\n"
            "jobs from the broker (broker.workers) and push results to the sink\n"
            "(sink.results). A process that dies is restarted. SIGTERM: every process\n"
            "finishes its batch, hands back what it has not started, and exits.\n"
            "--decode-only: decode and hash, no models (tests, wire benchmarks).\n"
            "--die-with-parent: every process is killed at once when the program that\n"
            "started facemill-worker dies (facemill label, whose broker and sink die\n"
            "with it).\n"
            "SIGHUP reopens log.file (for logrotate) in every process.\n");
}

/* Under systemd, the parent's loop takes a turn at least this often: pipeline
 * processes become ready without a signal, and READY=1 should follow soon after
 * (fm_notify_cap_wait shortens the turn for the watchdog and the status). */
#define PARENT_TURN_MS 250

/* One turn of systemd notification in the parent: READY=1 once every living
 * pipeline process serves, the watchdog, and "N processes running, M images done". */
static void parent_notify(const pid_t *pids, long procs)
{
    if (!fm_notify_enabled())
        return;
    long running = 0, serving = 0;
    uint_least64_t done = 0;
    for (long i = 0; i < procs; i++) {
        if (pids[i] > 0) {
            running++;
            serving += atomic_load(&slots[i].ready) != 0;
        }
        done += atomic_load(&slots[i].done);
    }
    if (running > 0 && serving == running)
        fm_notify_ready();
    if (fm_notify_tick())
        fm_notify_status("%ld of %ld processes running, %ld serving; %llu images done",
                         running, procs, serving, (unsigned long long)done);
}

int main(int argc, char **argv)
{
    fm_config cfg;
    fm_error err = {0};
    fm_config_defaults(&cfg);
    fm_log_init("worker", -1);
    if (fm_config_from_args(&cfg, &argc, argv, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 2;
    }
    int decode_only = 0, die_with_parent = 0;
    long procs = (long)cfg.worker.processes;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--processes") == 0 && i + 1 < argc) {
            char *end;
            procs = strtol(argv[++i], &end, 10);
            if (*end || procs < 0 || procs > 4096) {
                fprintf(stderr, "--processes: 0..4096\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--decode-only") == 0) {
            decode_only = 1;
        } else if (strcmp(argv[i], "--die-with-parent") == 0) {
            die_with_parent = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    fm_log_init(NULL, cfg.log.level);
    if (fm_log_open_file(cfg.log.file, &err) != FM_OK) {
        fm_log_error("%s", fm_error_text(&err));
        return 1;
    }
    /* Started by `facemill label` (--die-with-parent), this is not the service's
     * main process, whatever NOTIFY_SOCKET the environment carries. */
    if (!die_with_parent)
        fm_notify_init();
    if (procs == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        procs = n > 0 ? n : 1;
    }
    /* The starter set a death signal before exec (it survives exec); make it
     * SIGKILL, which also tells the children to use SIGKILL. */
    if (die_with_parent)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    int death_sig = die_with_parent ? SIGKILL : SIGTERM;
    install_signals();
    pid_t *pids = calloc((size_t)procs, sizeof *pids);
    int64_t *started = calloc((size_t)procs, sizeof *started);
    if (!pids || !started) {
        fm_log_error("out of memory");
        free(pids);
        free(started);
        return 1;
    }
    size_t slots_bytes = (size_t)procs * sizeof *slots;
    void *map = mmap(NULL, slots_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (map == MAP_FAILED) {
        fm_log_error("shared memory for %ld processes: %s", procs, strerror(errno));
        free(pids);
        free(started);
        return 1;
    }
    slots = map; /* zero-filled: nobody ready, nothing done */
    /* SIGCHLD stays blocked here so the loop can wait for a child, a signal or its
     * next turn without missing a child that dies in between (sigtimedwait below);
     * spawn unblocks it in every pipeline process. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    fm_log_info("starting %ld worker processes", procs);
    for (long i = 0; i < procs; i++) {
        pids[i] = spawn(&cfg, (int)i, decode_only, death_sig);
        started[i] = fm_wire_now_ms();
    }
    int failures = 0;
    while (!stop_flag) {
        if (fm_log_reopen_if_requested())
            for (long i = 0; i < procs; i++)
                if (pids[i] > 0)
                    kill(pids[i], SIGHUP); /* each reopens the file for itself */
        parent_notify(pids, procs);
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0) {
            /* Nobody exited yet. Returns on a child's SIGCHLD, a handled signal
             * (EINTR) or, under systemd, the end of the turn (EAGAIN); the loop looks
             * again either way. Outside systemd it sleeps until something happens,
             * as a blocking waitpid did. */
            long ms = fm_notify_cap_wait(PARENT_TURN_MS);
            struct timespec turn = {ms / 1000, (ms % 1000) * 1000000L};
            sigtimedwait(&chld, NULL, fm_notify_enabled() ? &turn : NULL);
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ECHILD) { /* every child failed to start */
                failures = 1;
                break;
            }
        }
        for (long i = 0; i < procs; i++) {
            if (pids[i] != pid)
                continue;
            pids[i] = 0;
            if (stop_flag)
                break;
            if (WIFEXITED(status) && WEXITSTATUS(status) == 1 &&
                fm_wire_now_ms() - started[i] < 2000) {
                fm_log_error("worker process %ld failed at start; not restarted", i);
                failures = 1;
                break;
            }
            fm_log_warn("worker process %ld (pid %d) died (%s %d): restarting", i, (int)pid,
                        WIFSIGNALED(status) ? "signal" : "exit",
                        WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            sleep(WIFSIGNALED(status) ? 0 : 1);
            pids[i] = spawn(&cfg, (int)i, decode_only, death_sig);
            started[i] = fm_wire_now_ms();
        }
        int alive = 0;
        for (long i = 0; i < procs; i++)
            alive += pids[i] > 0;
        if (!alive)
            break;
    }
    fm_notify_stopping();
    for (long i = 0; i < procs; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGTERM);
    for (long i = 0; i < procs; i++)
        while (pids[i] > 0 && waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
            ;
    munmap(map, slots_bytes);
    slots = NULL;
    free(pids);
    free(started);
    return failures ? 1 : 0;
}
