/* broker_limits.c - bounds on what clients may make the broker hold
 * (broker/queue/broker_limits.h).
 *
 * Why a Submit is measured before it is decoded: protobuf-c unpacks a whole message
 * at once, and a Job costs its struct and a few strings, some 200 bytes, however
 * small it is on the wire: 600,000 jobs of 14 bytes each (8 MB) became 450 MB of
 * broker memory. Counting the jobs field of the packed Submit costs nothing.
 */
#include "broker_limits.h"

#include <libgen.h>
#include <stdio.h>
#include <sys/statvfs.h>

/* Protocol buffers wire format: field numbers of facemill.Envelope.submit and
 * facemill.Submit.jobs (proto/facemill.proto). */
#define ENVELOPE_SUBMIT 10
#define SUBMIT_JOBS 1

/* Reads a varint at *p (below end). Returns 0 at a truncated or overlong one. */
static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 1;
    }
    return 0;
}

/* Calls fn for each length-delimited field numbered field in [p, end), with its
 * bytes. Returns 0 when the bytes are not a well-formed message (the decoder will
 * say so). */
static int each_field(const uint8_t *p, const uint8_t *end, uint64_t field,
                      void (*fn)(void *, const uint8_t *, size_t), void *ctx)
{
    while (p < end) {
        uint64_t key, v;
        if (!varint(&p, end, &key))
            return 0;
        switch (key & 7) {
        case 0:
            if (!varint(&p, end, &v))
                return 0;
            break;
        case 1:
            if (end - p < 8)
                return 0;
            p += 8;
            break;
        case 5:
            if (end - p < 4)
                return 0;
            p += 4;
            break;
        case 2:
            if (!varint(&p, end, &v) || v > (uint64_t)(end - p))
                return 0;
            if ((key >> 3) == field)
                fn(ctx, p, (size_t)v);
            p += v;
            break;
        default:
            return 0;
        }
    }
    return 1;
}

typedef struct measure {
    uint64_t jobs, bytes;
} measure;

static void count_job(void *ctx, const uint8_t *p, size_t n)
{
    (void)p, (void)n;
    ((measure *)ctx)->jobs++;
}

static void count_submit(void *ctx, const uint8_t *p, size_t n)
{
    measure *m = ctx;
    m->bytes += n;
    each_field(p, p + n, SUBMIT_JOBS, count_job, m);
}

fm_status fm_broker_check_submit(void *ctx, const void *data, size_t len, fm_error *err)
{
    const fm_config *c = ctx;
    measure m = {0, 0};
    const uint8_t *p = data;
    each_field(p, p + len, ENVELOPE_SUBMIT, count_submit, &m);
    if (m.jobs > (uint64_t)c->broker.max_submit_jobs)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "a Submit of %llu jobs: more than broker.max_submit_jobs %lld; "
                            "nothing of it taken, send smaller Submits (client.chunk)",
                            (unsigned long long)m.jobs, (long long)c->broker.max_submit_jobs);
    if (m.bytes > (uint64_t)c->broker.max_submit_bytes)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "a Submit of %llu bytes: more than broker.max_submit_bytes %lld; "
                            "nothing of it taken, send smaller Submits (client.chunk_bytes)",
                            (unsigned long long)m.bytes,
                            (long long)c->broker.max_submit_bytes);
    return FM_OK;
}

int fm_broker_queue_full(const fm_config *c, uint64_t held, uint64_t held_bytes,
                         size_t n_jobs, size_t bytes)
{
    if (held == 0)
        return 0;
    return held + n_jobs > (uint64_t)c->broker.max_queue ||
           held_bytes + bytes > (uint64_t)c->broker.max_queue_bytes;
}

int fm_broker_disk_has_room(const char *path, uint64_t bytes)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    struct statvfs v;
    if (statvfs(dirname(buf), &v) != 0)
        return 1;
    return (uint64_t)v.f_bavail * v.f_frsize >= bytes;
}
