/* fuzz_wire.c - libFuzzer entry for the wire decoder (fm_wire_decode, broker/wire/wire.c).
 *
 * Every socket that faces the network hands its bytes to fm_wire_decode, so it sees
 * whatever anyone sends. For any input it must return FM_OK or an error: no crash,
 * over-read, leak or hang. What it accepts is then used the way its receivers use it:
 *   - every field of every body is read (strings to their end, repeated fields to
 *     their counts), so a count that does not match its array shows up as a
 *     sanitizer report;
 *   - packing the decoded envelope and decoding that again must succeed and pack to
 *     the same bytes (what the broker journals and forwards stays readable);
 *   - each job of a Submit and a Job body is packed and read back with
 *     facemill__job__unpack, as the broker's journal does;
 *   - a Result is stored in an in-memory results database (fm_results_put, the
 *     sink's path), inside a transaction rolled back after each input.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DFACEMILL_FUZZ=ON ...; seed corpus (one
 * message per body type): tests/test_wire --corpus DIR.
 */
#include "facemill/sink.h"
#include "facemill/wire.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile size_t sink_sum; /* keeps the reads below from being optimised away */

static void touch_str(const char *s)
{
    if (s)
        sink_sum += strlen(s);
}

static void touch_bytes(ProtobufCBinaryData b)
{
    for (size_t i = 0; i < b.len; i++)
        sink_sum += b.data[i];
}

static void touch_floats(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sink_sum += (v[i] > 0);
}

static void touch_job(const Facemill__Job *j)
{
    touch_str(j->id);
    touch_str(j->tag);
    touch_str(j->name);
    if (j->source_case == FACEMILL__JOB__SOURCE_DATA)
        touch_bytes(j->data);
    else if (j->source_case == FACEMILL__JOB__SOURCE_PATH)
        touch_str(j->path);
    if (j->options)
        sink_sum += j->options->has_max_faces ? j->options->max_faces : 0;
    /* the broker journals the packed job and unpacks it at dispatch */
    size_t n = facemill__job__get_packed_size(j);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return;
    if (facemill__job__pack(j, buf) != n)
        abort();
    Facemill__Job *back = facemill__job__unpack(NULL, n, buf);
    if (!back)
        abort();
    if ((j->id == NULL) != (back->id == NULL) || (j->id && strcmp(j->id, back->id) != 0))
        abort();
    facemill__job__free_unpacked(back, NULL);
    free(buf);
}

static void touch_result(const Facemill__Result *r)
{
    touch_str(r->job_id);
    touch_str(r->tag);
    touch_str(r->source);
    touch_str(r->model);
    touch_str(r->worker);
    touch_str(r->error_text);
    if (r->has_sha256)
        touch_bytes(r->sha256);
    for (size_t i = 0; i < r->n_faces; i++) {
        const Facemill__Face *f = r->faces[i];
        touch_floats(f->box, f->n_box);
        touch_floats(f->landmarks, f->n_landmarks);
        touch_floats(f->gender_probs, f->n_gender_probs);
        touch_floats(f->race_probs, f->n_race_probs);
    }
    if (r->times)
        sink_sum += r->times->has_total_ms;
}

static void touch(const Facemill__Envelope *e)
{
    switch (e->body_case) {
    case FACEMILL__ENVELOPE__BODY_SUBMIT:
        for (size_t i = 0; i < e->submit->n_jobs; i++)
            touch_job(e->submit->jobs[i]);
        break;
    case FACEMILL__ENVELOPE__BODY_SUBMIT_ACK:
        for (size_t i = 0; i < e->submit_ack->n_jobs; i++) {
            touch_str(e->submit_ack->jobs[i]->job_id);
            touch_str(e->submit_ack->jobs[i]->reason);
        }
        break;
    case FACEMILL__ENVELOPE__BODY_SLOW_DOWN:
        sink_sum += e->slow_down->retry_after_ms;
        break;
    case FACEMILL__ENVELOPE__BODY_STATUS_REQUEST:
        touch_str(e->status_request->tag);
        break;
    case FACEMILL__ENVELOPE__BODY_STATUS_REPLY:
        touch_str(e->status_reply->tag);
        for (size_t i = 0; i < e->status_reply->n_worker; i++)
            touch_str(e->status_reply->worker[i]->name);
        break;
    case FACEMILL__ENVELOPE__BODY_WORKER_READY:
        touch_str(e->worker_ready->name);
        touch_str(e->worker_ready->model);
        break;
    case FACEMILL__ENVELOPE__BODY_JOB:
        touch_job(e->job);
        break;
    case FACEMILL__ENVELOPE__BODY_JOB_DONE:
        touch_str(e->job_done->job_id);
        touch_str(e->job_done->error_text);
        break;
    case FACEMILL__ENVELOPE__BODY_RESULT:
        touch_result(e->result);
        break;
    case FACEMILL__ENVELOPE__BODY_COMMIT:
        for (size_t i = 0; i < e->commit->n_entries; i++) {
            touch_str(e->commit->entries[i]->job_id);
            touch_str(e->commit->entries[i]->tag);
        }
        break;
    case FACEMILL__ENVELOPE__BODY_HEARTBEAT:
        touch_str(e->heartbeat->name);
        break;
    case FACEMILL__ENVELOPE__BODY_ERROR:
        touch_str(e->error->text);
        break;
    default:
        break;
    }
    touch_str(fm_wire_body_name(e));
}

/* Packs e into a new buffer (caller frees). */
static uint8_t *pack(const Facemill__Envelope *e, size_t *n)
{
    *n = facemill__envelope__get_packed_size(e);
    uint8_t *buf = malloc(*n ? *n : 1);
    if (buf && facemill__envelope__pack(e, buf) != *n)
        abort();
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fm_results *db;
    if (!db && fm_results_open(&db, ":memory:", 0, NULL) != FM_OK)
        abort();
    Facemill__Envelope *e = NULL;
    fm_error err = {0};
    if (fm_wire_decode(data, size, &e, &err) != FM_OK) {
        if (e || !err.msg[0])
            abort(); /* a refusal clears *out and says why */
        return 0;
    }
    touch(e);

    /* What was accepted packs to bytes that decode and pack the same again. */
    size_t n1, n2;
    uint8_t *p1 = pack(e, &n1);
    Facemill__Envelope *again = NULL;
    if (!p1 || fm_wire_decode(p1, n1, &again, &err) != FM_OK)
        abort();
    uint8_t *p2 = pack(again, &n2);
    if (!p2 || n1 != n2 || memcmp(p1, p2, n1) != 0 || again->body_case != e->body_case)
        abort();
    free(p1);
    free(p2);
    fm_wire_free(&again);

    if (e->body_case == FACEMILL__ENVELOPE__BODY_RESULT) {
        if (fm_results_begin(db, NULL) == FM_OK) {
            int inserted = 0, failed = 0;
            fm_results_put(db, e->result, 0, &inserted, &failed, NULL);
            fm_results_rollback(db);
        }
    }
    fm_wire_free(&e);
    return 0;
}
