/* test_wire.c - fm_wire_decode on every message type of proto/facemill.proto: each
 * body, filled the way its sender fills it, packs and decodes back to the same
 * fields; another major version, no version, no body, truncated and foreign bytes are
 * refused with the right status.
 *
 * Run with `--corpus DIR` it writes one packed Envelope per body type (and a few
 * edge cases) into DIR: the seed corpus of tests/fuzz/fuzz_wire.c.
 */
#include "fm_test.h"

#include "facemill/wire.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

/* ---- one envelope per body ----------------------------------------------------- */

/* Storage for the sample messages (outgoing messages live on the stack or in
 * statics, as the processes build them). */
static uint8_t image[64] = {0xff, 0xd8, 0xff, 0xe0, 0, 16, 'J', 'F', 'I', 'F', 0};
static uint8_t sha[32];
static float box[4] = {10, 20, 110, 140};
static float landmarks[10] = {40, 60, 80, 60, 60, 90, 45, 115, 75, 115};
static float gender[2] = {0.25f, 0.75f};
static float race[5] = {0.5f, 0.1f, 0.2f, 0.1f, 0.1f};

typedef struct sample {
    const char *name;
    Facemill__Envelope env;
    /* bodies */
    Facemill__Submit submit;
    Facemill__Job jobs[2], *jobp[2];
    Facemill__JobOptions opts;
    Facemill__SubmitAck ack;
    Facemill__JobAck acks[2], *ackp[2];
    Facemill__SlowDown slow;
    Facemill__StatusRequest sreq;
    Facemill__StatusReply srep;
    Facemill__WorkerInfo winfo, *winfop;
    Facemill__WorkerReady ready;
    Facemill__JobDone done;
    Facemill__WorkerBye bye;
    Facemill__Result result;
    Facemill__Face face, *facep;
    Facemill__StageTimes times;
    Facemill__Commit commit;
    Facemill__CommitEntry entries[2], *entryp[2];
    Facemill__CommitReply reply;
    Facemill__Heartbeat hb;
    Facemill__Error error;
} sample;

static void make_job(Facemill__Job *j, const char *id, int by_path, Facemill__JobOptions *o)
{
    facemill__job__init(j);
    j->id = (char *)id;
    j->tag = "run-1";
    j->name = "album/photo.jpg";
    if (by_path) {
        j->source_case = FACEMILL__JOB__SOURCE_PATH;
        j->path = "/srv/photos/album/photo.jpg";
    } else {
        j->source_case = FACEMILL__JOB__SOURCE_DATA;
        j->data.data = image;
        j->data.len = sizeof image;
    }
    j->options = o;
    j->has_attempt = 1;
    j->attempt = 2;
    static uint8_t token[FM_WIRE_TOKEN_BYTES] = "0123456789abcdef";
    j->has_token = 1;
    j->token.data = token;
    j->token.len = sizeof token;
}

/* Fills s with the sample message of body case k; returns 0 when k is past the last. */
static int make_sample(sample *s, int k)
{
    memset(s, 0, sizeof *s);
    fm_wire_envelope_init(&s->env);
    Facemill__Envelope *e = &s->env;
    switch (k) {
    case 0:
        s->name = "submit";
        facemill__submit__init(&s->submit);
        facemill__job_options__init(&s->opts);
        s->opts.has_max_faces = 1;
        s->opts.max_faces = 8;
        make_job(&s->jobs[0], "job-0", 0, &s->opts);
        make_job(&s->jobs[1], "job-1", 1, NULL);
        s->jobp[0] = &s->jobs[0];
        s->jobp[1] = &s->jobs[1];
        s->submit.n_jobs = 2;
        s->submit.jobs = s->jobp;
        s->submit.has_request_id = 1;
        s->submit.request_id = 7;
        e->body_case = FACEMILL__ENVELOPE__BODY_SUBMIT;
        e->submit = &s->submit;
        return 1;
    case 1:
        s->name = "submit_ack";
        facemill__submit_ack__init(&s->ack);
        for (int i = 0; i < 2; i++) {
            facemill__job_ack__init(&s->acks[i]);
            s->acks[i].job_id = i ? "job-1" : "job-0";
            s->acks[i].has_state = 1;
            s->acks[i].state = i ? FACEMILL__JOB_ACK__STATE__REJECTED
                                 : FACEMILL__JOB_ACK__STATE__ACCEPTED;
            s->acks[i].reason = i ? "empty path" : NULL;
            s->ackp[i] = &s->acks[i];
        }
        s->ack.has_request_id = s->ack.has_queue_depth = s->ack.has_max_queue = 1;
        s->ack.request_id = 7;
        s->ack.queue_depth = 100;
        s->ack.max_queue = 10000;
        s->ack.n_jobs = 2;
        s->ack.jobs = s->ackp;
        e->body_case = FACEMILL__ENVELOPE__BODY_SUBMIT_ACK;
        e->submit_ack = &s->ack;
        return 1;
    case 2:
        s->name = "slow_down";
        facemill__slow_down__init(&s->slow);
        s->slow.has_request_id = s->slow.has_queue_depth = s->slow.has_max_queue = 1;
        s->slow.has_retry_after_ms = 1;
        s->slow.request_id = 8;
        s->slow.queue_depth = s->slow.max_queue = 10000;
        s->slow.retry_after_ms = 1000;
        e->body_case = FACEMILL__ENVELOPE__BODY_SLOW_DOWN;
        e->slow_down = &s->slow;
        return 1;
    case 3:
        s->name = "status_request";
        facemill__status_request__init(&s->sreq);
        s->sreq.tag = "run-1";
        s->sreq.has_request_id = 1;
        s->sreq.request_id = 9;
        e->body_case = FACEMILL__ENVELOPE__BODY_STATUS_REQUEST;
        e->status_request = &s->sreq;
        return 1;
    case 4:
        s->name = "status_reply";
        facemill__status_reply__init(&s->srep);
        facemill__worker_info__init(&s->winfo);
        s->winfo.name = "host:123/0";
        s->winfo.has_credit = s->winfo.has_busy = s->winfo.has_last_seen_ms = 1;
        s->winfo.credit = 4;
        s->winfo.busy = 3;
        s->winfo.last_seen_ms = 250;
        s->winfop = &s->winfo;
        s->srep.has_request_id = s->srep.has_queued = s->srep.has_committed = 1;
        s->srep.request_id = 9;
        s->srep.queued = 12;
        s->srep.committed = 3000;
        s->srep.has_jobs_per_s = 1;
        s->srep.jobs_per_s = 41.5;
        s->srep.has_workers = 1;
        s->srep.workers = 1;
        s->srep.n_worker = 1;
        s->srep.worker = &s->winfop;
        s->srep.tag = "run-1";
        s->srep.has_tag_total = s->srep.has_tag_committed = s->srep.has_tag_failed = 1;
        s->srep.tag_total = 50;
        s->srep.tag_committed = 40;
        s->srep.tag_failed = 2;
        e->body_case = FACEMILL__ENVELOPE__BODY_STATUS_REPLY;
        e->status_reply = &s->srep;
        return 1;
    case 5:
        s->name = "worker_ready";
        facemill__worker_ready__init(&s->ready);
        s->ready.has_credit = 1;
        s->ready.credit = 4;
        s->ready.name = "host:123/0";
        s->ready.model = "mtcnn + dlib_resnet + heads";
        e->body_case = FACEMILL__ENVELOPE__BODY_WORKER_READY;
        e->worker_ready = &s->ready;
        return 1;
    case 6:
        s->name = "job";
        facemill__job_options__init(&s->opts);
        s->opts.has_max_faces = 1;
        s->opts.max_faces = 3;
        make_job(&s->jobs[0], "job-2", 0, &s->opts);
        e->body_case = FACEMILL__ENVELOPE__BODY_JOB;
        e->job = &s->jobs[0];
        return 1;
    case 7:
        s->name = "job_done";
        facemill__job_done__init(&s->done);
        s->done.job_id = "job-2";
        s->done.has_outcome = s->done.has_error_code = 1;
        s->done.outcome = FACEMILL__JOB_DONE__OUTCOME__FAILED;
        s->done.error_code = FACEMILL__ERROR_CODE__ERROR_INTERNAL;
        s->done.error_text = "out of memory";
        e->body_case = FACEMILL__ENVELOPE__BODY_JOB_DONE;
        e->job_done = &s->done;
        return 1;
    case 8:
        s->name = "worker_bye";
        facemill__worker_bye__init(&s->bye);
        e->body_case = FACEMILL__ENVELOPE__BODY_WORKER_BYE;
        e->worker_bye = &s->bye;
        return 1;
    case 9:
        s->name = "result";
        facemill__result__init(&s->result);
        facemill__face__init(&s->face);
        facemill__stage_times__init(&s->times);
        s->face.n_box = 4;
        s->face.box = box;
        s->face.has_score = 1;
        s->face.score = 0.99f;
        s->face.n_landmarks = 10;
        s->face.landmarks = landmarks;
        s->face.has_age = s->face.has_age_std = 1;
        s->face.age = 31.5f;
        s->face.age_std = 4.25f;
        s->face.n_gender_probs = 2;
        s->face.gender_probs = gender;
        s->face.n_race_probs = 5;
        s->face.race_probs = race;
        s->facep = &s->face;
        s->times.has_decode_ms = s->times.has_total_ms = 1;
        s->times.decode_ms = 3.5f;
        s->times.total_ms = 120;
        for (int i = 0; i < 32; i++)
            sha[i] = (uint8_t)(i * 9);
        s->result.job_id = "job-2";
        s->result.tag = "run-1";
        s->result.source = "album/photo.jpg";
        s->result.has_width = s->result.has_height = s->result.has_sha256 = 1;
        s->result.width = 640;
        s->result.height = 480;
        s->result.sha256.data = sha;
        s->result.sha256.len = sizeof sha;
        s->result.n_faces = 1;
        s->result.faces = &s->facep;
        s->result.model = "mtcnn + dlib_resnet + heads";
        s->result.times = &s->times;
        s->result.worker = "host:123/0";
        s->result.has_attempt = 1;
        s->result.attempt = 1;
        s->result.has_token = 1;
        s->result.token.data = (uint8_t *)"0123456789abcdef";
        s->result.token.len = FM_WIRE_TOKEN_BYTES;
        e->body_case = FACEMILL__ENVELOPE__BODY_RESULT;
        e->result = &s->result;
        return 1;
    case 10:
        s->name = "commit";
        facemill__commit__init(&s->commit);
        for (int i = 0; i < 2; i++) {
            facemill__commit_entry__init(&s->entries[i]);
            s->entries[i].job_id = i ? "job-1" : "job-0";
            s->entries[i].tag = "run-1";
            s->entries[i].has_failed = 1;
            s->entries[i].failed = i;
            s->entries[i].has_stored = 1;
            s->entries[i].stored = i;
            s->entries[i].has_token = 1;
            s->entries[i].token.data = (uint8_t *)"fedcba9876543210";
            s->entries[i].token.len = FM_WIRE_TOKEN_BYTES;
            s->entryp[i] = &s->entries[i];
        }
        s->commit.n_entries = 2;
        s->commit.entries = s->entryp;
        e->body_case = FACEMILL__ENVELOPE__BODY_COMMIT;
        e->commit = &s->commit;
        return 1;
    case 11:
        s->name = "heartbeat";
        facemill__heartbeat__init(&s->hb);
        s->hb.has_interval_ms = s->hb.has_credit = s->hb.has_busy = 1;
        s->hb.interval_ms = 1000;
        s->hb.credit = 4;
        s->hb.busy = 2;
        s->hb.name = "host:123/0";
        e->body_case = FACEMILL__ENVELOPE__BODY_HEARTBEAT;
        e->heartbeat = &s->hb;
        return 1;
    case 13:
        s->name = "commit_reply";
        facemill__commit_reply__init(&s->reply);
        for (int i = 0; i < 2; i++) {
            facemill__commit_entry__init(&s->entries[i]);
            s->entries[i].job_id = i ? "job-1" : "job-0";
            s->entries[i].has_token = 1;
            s->entries[i].token.data = (uint8_t *)"fedcba9876543210";
            s->entries[i].token.len = FM_WIRE_TOKEN_BYTES;
            s->entryp[i] = &s->entries[i];
        }
        s->reply.n_confirmed = s->reply.n_refused = 1;
        s->reply.confirmed = &s->entryp[0];
        s->reply.refused = &s->entryp[1];
        e->body_case = FACEMILL__ENVELOPE__BODY_COMMIT_REPLY;
        e->commit_reply = &s->reply;
        return 1;
    case 12:
        s->name = "error";
        facemill__error__init(&s->error);
        s->error.has_code = 1;
        s->error.code = FACEMILL__ERROR_CODE__ERROR_UNKNOWN_PEER;
        s->error.text = "unknown worker: send WorkerReady";
        e->body_case = FACEMILL__ENVELOPE__BODY_ERROR;
        e->error = &s->error;
        return 1;
    default:
        return 0;
    }
}

/* Packs e into a new buffer (caller frees); *n its size. */
static uint8_t *pack(const Facemill__Envelope *e, size_t *n)
{
    *n = facemill__envelope__get_packed_size(e);
    uint8_t *buf = malloc(*n ? *n : 1);
    if (buf)
        CHECK(facemill__envelope__pack(e, buf) == *n);
    return buf;
}

/* ---- the tests ------------------------------------------------------------------ */

static void test_every_body(void)
{
    sample s;
    int k;
    for (k = 0; make_sample(&s, k); k++) {
        size_t n;
        uint8_t *buf = pack(&s.env, &n);
        Facemill__Envelope *d = NULL;
        fm_error err = {0};
        fm_status st = fm_wire_decode(buf, n, &d, &err);
        CHECK_MSG(st == FM_OK, "%s: %s", s.name, err.msg);
        if (st == FM_OK) {
            CHECK_MSG(d->body_case == s.env.body_case, "%s: body %d", s.name, d->body_case);
            CHECK(strcmp(fm_wire_body_name(d), s.name) == 0);
            CHECK(d->version_minor == FM_PROTOCOL_MINOR);
            /* packing what was decoded gives the same bytes */
            size_t n2;
            uint8_t *again = pack(d, &n2);
            CHECK_MSG(again && n2 == n && memcmp(again, buf, n) == 0, "%s: repacked",
                      s.name);
            free(again);
        }
        if (st == FM_OK && d->body_case == FACEMILL__ENVELOPE__BODY_RESULT) {
            const Facemill__Result *r = d->result;
            CHECK(r->n_faces == 1 && r->faces[0]->n_landmarks == 10 &&
                  r->faces[0]->landmarks[9] == 115 && r->faces[0]->race_probs[2] == 0.2f);
            CHECK(r->sha256.len == 32 && r->sha256.data[31] == (uint8_t)(31 * 9));
            CHECK(strcmp(r->worker, "host:123/0") == 0 && r->times->total_ms == 120);
        }
        if (st == FM_OK && d->body_case == FACEMILL__ENVELOPE__BODY_SUBMIT) {
            const Facemill__Submit *sb = d->submit;
            CHECK(sb->n_jobs == 2 && sb->jobs[0]->data.len == sizeof image &&
                  sb->jobs[0]->options->max_faces == 8 &&
                  sb->jobs[1]->source_case == FACEMILL__JOB__SOURCE_PATH);
        }
        fm_wire_free(&d);
        CHECK(d == NULL);
        free(buf);
    }
    CHECK_MSG(k == 14, "%d sample bodies", k);
}

static void test_refusals(void)
{
    sample s;
    make_sample(&s, 11);
    fm_error err = {0};
    Facemill__Envelope sentinel, *d = &sentinel; /* must be cleared on failure */

    /* another major version: refused, both versions named */
    s.env.version_major = FM_PROTOCOL_MAJOR + 1;
    s.env.version_minor = 0;
    size_t n;
    uint8_t *buf = pack(&s.env, &n);
    CHECK(fm_wire_decode(buf, n, &d, &err) == FM_ERR_VERSION && d == NULL);
    CHECK_MSG(strstr(err.msg, "protocol 2.0") && strstr(err.msg, "1.x"), "%s", err.msg);
    free(buf);

    /* no version at all */
    s.env.has_version_major = 0;
    buf = pack(&s.env, &n);
    CHECK(fm_wire_decode(buf, n, &d, &err) == FM_ERR_VERSION && d == NULL);
    CHECK_MSG(strstr(err.msg, "no version"), "%s", err.msg);
    free(buf);

    /* a newer minor version is fine */
    s.env.has_version_major = 1;
    s.env.version_major = FM_PROTOCOL_MAJOR;
    s.env.version_minor = FM_PROTOCOL_MINOR + 5;
    buf = pack(&s.env, &n);
    CHECK(fm_wire_decode(buf, n, &d, &err) == FM_OK && d);
    fm_wire_free(&d);

    /* truncated in the middle of the heartbeat: not an envelope */
    CHECK(fm_wire_decode(buf, n - 1, &d, &err) == FM_ERR_PROTOCOL && d == NULL);
    free(buf);

    /* no body (an envelope from a newer build with an unknown body looks the same) */
    Facemill__Envelope empty;
    fm_wire_envelope_init(&empty);
    buf = pack(&empty, &n);
    CHECK(fm_wire_decode(buf, n, &d, &err) == FM_ERR_PROTOCOL && d == NULL);
    CHECK_MSG(strstr(err.msg, "without a body"), "%s", err.msg);
    free(buf);
    uint8_t unknown_body[] = {0x08, 0x01, 0x10, 0x00, 0xfa, 0x06, 0x00}; /* field 111 */
    CHECK(fm_wire_decode(unknown_body, sizeof unknown_body, &d, &err) == FM_ERR_PROTOCOL);

    /* Field number 0 written as a two-byte varint, at the top and inside a body:
     * protobuf-c keeps it as an unknown field but packs it back in a form it then
     * cannot read (found by fuzz_wire), so it is refused. */
    uint8_t zero_top[] = {0x08, 0x01, 0x10, 0x00, 0x92, 0x03, 0x00, 0x80, 0x00, 0x00};
    uint8_t zero_body[] = {0x08, 0x01, 0x10, 0x00, 0x92, 0x03, 0x03, 0x80, 0x00, 0x00};
    CHECK(fm_wire_decode(zero_top, sizeof zero_top, &d, &err) == FM_ERR_PROTOCOL && !d);
    CHECK_MSG(strstr(err.msg, "numbered 0"), "%s", err.msg);
    CHECK(fm_wire_decode(zero_body, sizeof zero_body, &d, &err) == FM_ERR_PROTOCOL && !d);
    /* ... and a field number 0 deeper down: Submit > Job */
    uint8_t zero_job[] = {0x08, 0x01, 0x10, 0x00, 0x52, 0x08, 0x0a, 0x06,
                          0x0a, 0x01, 'j', 0x80, 0x00, 0x00};
    CHECK(fm_wire_decode(zero_job, sizeof zero_job, &d, &err) == FM_ERR_PROTOCOL && !d);
    zero_job[11] = 0xb8; /* field 7 (attempt) as a two-byte tag: valid */
    CHECK_MSG(fm_wire_decode(zero_job, sizeof zero_job, &d, &err) == FM_OK && d &&
              d->submit->n_jobs == 1, "%s", err.msg);
    fm_wire_free(&d);

    /* a NUL inside a string (protobuf-c would cut it there: "a\0X" and "a\0Y" would
     * be one id), in Submit > Job > id and > path; NULs in bytes are bytes */
    uint8_t nul_id[] = {0x08, 0x01, 0x10, 0x00, 0x52, 0x0a, 0x0a, 0x08,
                        0x0a, 0x03, 'a', 0x00, 'X', 0x22, 0x01, 0x00};
    CHECK(fm_wire_decode(nul_id, sizeof nul_id, &d, &err) == FM_ERR_PROTOCOL && !d);
    CHECK_MSG(strstr(err.msg, "string Job.id holds a NUL byte"), "%s", err.msg);
    nul_id[11] = 'Y'; /* a valid id, and data holding a NUL: taken */
    CHECK_MSG(fm_wire_decode(nul_id, sizeof nul_id, &d, &err) == FM_OK && d &&
                  strcmp(d->submit->jobs[0]->id, "aYX") == 0 &&
                  d->submit->jobs[0]->data.len == 1,
              "%s", err.msg);
    fm_wire_free(&d);
    nul_id[13] = 0x2a; /* the one byte as a path: a NUL in a string again */
    CHECK(fm_wire_decode(nul_id, sizeof nul_id, &d, &err) == FM_ERR_PROTOCOL && !d);
    CHECK_MSG(strstr(err.msg, "string Job.path holds a NUL byte"), "%s", err.msg);

    /* foreign bytes and nothing */
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(fm_wire_decode(http, strlen(http), &d, &err) != FM_OK && d == NULL);
    CHECK(fm_wire_decode("", 0, &d, &err) == FM_ERR_VERSION && d == NULL);
    fm_wire_free(NULL);
}

/* ---- seed corpus ---------------------------------------------------------------- */

static int write_seed(const char *dir, const char *name, const void *data, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.pb", dir, name);
    return fm_test_write_file(path, data, n) != 0;
}

static int write_corpus(const char *dir)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: %s\n", dir, strerror(errno));
        return 1;
    }
    int bad = 0;
    sample s;
    for (int k = 0; make_sample(&s, k); k++) {
        size_t n;
        uint8_t *buf = pack(&s.env, &n);
        bad |= !buf || write_seed(dir, s.name, buf, n);
        free(buf);
    }
    /* edge cases: another major, a result with every count wrong */
    make_sample(&s, 5);
    s.env.version_major = 2;
    size_t n;
    uint8_t *buf = pack(&s.env, &n);
    bad |= !buf || write_seed(dir, "major2", buf, n);
    free(buf);
    make_sample(&s, 9);
    s.face.n_box = 3;
    s.face.n_landmarks = 9;
    s.face.n_gender_probs = 1;
    s.face.n_race_probs = 4;
    s.result.sha256.len = 31;
    buf = pack(&s.env, &n);
    bad |= !buf || write_seed(dir, "result_short", buf, n);
    free(buf);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--corpus") == 0)
        return write_corpus(argv[2]);
    test_every_body();
    test_refusals();
    return fm_test_done("test_wire");
}
