/* wire.c - the C side of the facemill protocol: version stamping and checking,
 * socket options, EINTR handling and framing (see include/facemill/wire.h).
 *
 * Packing goes straight into a zmq_msg_t of the packed size, so a job carrying a
 * 60 MB image is copied once (into the message), not twice.
 */
#include "facemill/wire.h"

#include <zmq.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

fm_status fm_wire_setup(void *sock, int64_t max_msg_size, int linger_ms, fm_error *err)
{
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger_ms, sizeof linger_ms) != 0)
        return fm_error_set(err, FM_ERR_IO, "ZMQ_LINGER: %s", zmq_strerror(errno));
    if (max_msg_size > 0 &&
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max_msg_size, sizeof max_msg_size) != 0)
        return fm_error_set(err, FM_ERR_IO, "ZMQ_MAXMSGSIZE: %s", zmq_strerror(errno));
    /* ZMTP heartbeats: a peer that vanished without closing (a machine gone, a
     * half-open TCP connection, a peer that stopped reading) is disconnected and
     * its queues freed, instead of holding a descriptor and buffers for ever. A
     * small receive high-water mark bounds what one peer can queue in us. Sockets
     * facing the network only (max_msg_size set): inproc pairs pass pointers. */
    static const struct {
        int opt, value;
        const char *name;
    } guards[] = {
        {ZMQ_HEARTBEAT_IVL, FM_WIRE_HEARTBEAT_IVL_MS, "ZMQ_HEARTBEAT_IVL"},
        {ZMQ_HEARTBEAT_TIMEOUT, FM_WIRE_HEARTBEAT_TIMEOUT_MS, "ZMQ_HEARTBEAT_TIMEOUT"},
        {ZMQ_HEARTBEAT_TTL, FM_WIRE_HEARTBEAT_TIMEOUT_MS, "ZMQ_HEARTBEAT_TTL"},
        {ZMQ_RCVHWM, FM_WIRE_RCVHWM, "ZMQ_RCVHWM"},
    };
    for (size_t i = 0; max_msg_size > 0 && i < sizeof guards / sizeof guards[0]; i++)
        if (zmq_setsockopt(sock, guards[i].opt, &guards[i].value, sizeof(int)) != 0)
            return fm_error_set(err, FM_ERR_IO, "%s: %s", guards[i].name,
                                zmq_strerror(errno));
    int type = 0;
    size_t tlen = sizeof type;
    if (zmq_getsockopt(sock, ZMQ_TYPE, &type, &tlen) != 0)
        return fm_error_set(err, FM_ERR_IO, "ZMQ_TYPE: %s", zmq_strerror(errno));
    if (type == ZMQ_ROUTER) {
        int one = 1;
        if (zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0)
            return fm_error_set(err, FM_ERR_IO, "ZMQ_ROUTER_MANDATORY: %s",
                                zmq_strerror(errno));
    }
    return FM_OK;
}

void fm_wire_envelope_init(Facemill__Envelope *e)
{
    facemill__envelope__init(e);
    e->has_version_major = 1;
    e->version_major = FM_PROTOCOL_MAJOR;
    e->has_version_minor = 1;
    e->version_minor = FM_PROTOCOL_MINOR;
}

static fm_status send_error(int e, fm_error *err)
{
    if (e == EAGAIN)
        return fm_error_set(err, FM_ERR_TIMEOUT, "send would block");
    if (e == EHOSTUNREACH)
        return fm_error_set(err, FM_ERR_NOT_FOUND, "peer is gone");
    return fm_error_set(err, FM_ERR_IO, "zmq send: %s", zmq_strerror(e));
}

fm_status fm_wire_send(void *sock, const fm_wire_peer *to, const Facemill__Envelope *e,
                       int flags, fm_error *err)
{
    size_t n = facemill__envelope__get_packed_size(e);
    if (to) {
        /* With ZMQ_ROUTER_MANDATORY the routing frame fails at once for a gone
         * peer, before anything is queued. */
        for (;;) {
            if (zmq_send(sock, to->id, to->len, ZMQ_SNDMORE | flags) >= 0)
                break;
            if (errno != EINTR)
                return send_error(errno, err);
        }
    }
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, n) != 0)
        return fm_error_set(err, FM_ERR_NOMEM, "zmq message of %zu bytes", n);
    size_t packed = facemill__envelope__pack(e, zmq_msg_data(&msg));
    if (packed != n) {
        zmq_msg_close(&msg);
        return fm_error_set(err, FM_ERR_INTERNAL, "packed %zu bytes, expected %zu", packed,
                            n);
    }
    for (;;) {
        if (zmq_msg_send(&msg, sock, flags) >= 0)
            return FM_OK;
        if (errno != EINTR) {
            int e2 = errno;
            zmq_msg_close(&msg);
            return send_error(e2, err);
        }
    }
}

/* Receives one frame into msg, retrying nothing: EINTR is reported. */
static fm_status recv_frame(void *sock, zmq_msg_t *msg, int flags, fm_error *err)
{
    if (zmq_msg_recv(msg, sock, flags) >= 0)
        return FM_OK;
    if (errno == EAGAIN)
        return fm_error_set(err, FM_ERR_TIMEOUT, "nothing to receive");
    if (errno == EINTR)
        return fm_error_set(err, FM_ERR_INTERRUPTED, "interrupted");
    return fm_error_set(err, FM_ERR_IO, "zmq receive: %s", zmq_strerror(errno));
}

static int more(void *sock)
{
    int m = 0;
    size_t len = sizeof m;
    if (zmq_getsockopt(sock, ZMQ_RCVMORE, &m, &len) != 0)
        return 0;
    return m;
}

/* Discards the remaining frames of a message. */
static void drain(void *sock)
{
    while (more(sock)) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        while (zmq_msg_recv(&m, sock, 0) < 0 && errno == EINTR)
            ;
        zmq_msg_close(&m);
    }
}

fm_status fm_wire_recv(void *sock, fm_wire_peer *from, Facemill__Envelope **out,
                       int flags, fm_error *err)
{
    return fm_wire_recv_checked(sock, from, out, flags, NULL, NULL, err);
}

fm_status fm_wire_recv_checked(void *sock, fm_wire_peer *from, Facemill__Envelope **out,
                               int flags, fm_wire_check_fn check, void *ctx, fm_error *err)
{
    *out = NULL;
    fm_status st;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    int type = 0;
    size_t type_len = sizeof type;
    if (from) {
        from->len = 0;
        from->user[0] = '\0';
    }
    const int routed =
        from && zmq_getsockopt(sock, ZMQ_TYPE, &type, &type_len) == 0 && type == ZMQ_ROUTER;
    if (routed) {
        if ((st = recv_frame(sock, &msg, flags, err)) != FM_OK)
            goto fail;
        size_t n = zmq_msg_size(&msg);
        if (n > FM_WIRE_PEER_MAX)
            n = FM_WIRE_PEER_MAX;
        memcpy(from->id, zmq_msg_data(&msg), n);
        from->len = n;
        if (!more(sock)) {
            st = fm_error_set(err, FM_ERR_PROTOCOL, "message without a body frame");
            goto fail;
        }
        /* The rest of a message that has started is there: no EINTR/EAGAIN wait. */
        flags = 0;
    }
    for (;;) {
        st = recv_frame(sock, &msg, flags, err);
        if (st != FM_ERR_INTERRUPTED || !routed)
            break;
    }
    if (st != FM_OK)
        goto fail;
    if (from) {
        const char *user = zmq_msg_gets(&msg, "User-Id");
        if (user)
            snprintf(from->user, sizeof from->user, "%s", user);
    }
    if (more(sock)) {
        drain(sock);
        st = fm_error_set(err, FM_ERR_PROTOCOL,
                          "message of more than one body frame (REQ sockets are not "
                          "supported; use DEALER)");
        goto fail;
    }
    if (check && (st = check(ctx, zmq_msg_data(&msg), zmq_msg_size(&msg), err)) != FM_OK)
        goto fail;
    if ((st = fm_wire_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), out, err)) != FM_OK)
        goto fail;
    zmq_msg_close(&msg);
    return FM_OK;
fail:
    zmq_msg_close(&msg);
    if (st != FM_ERR_TIMEOUT && st != FM_ERR_INTERRUPTED)
        drain(sock);
    return st;
}

/* True when m or a message inside it holds an unknown field numbered 0. protobuf-c
 * 1.4 takes field number 0 written as a multi-byte varint as an unknown field, keeps
 * it, and packs it back as one byte, which its own reader then refuses: such a
 * message would be accepted here and become unreadable wherever it is stored and read
 * back (the broker journals the jobs of a Submit). Field 0 is not valid protobuf, so
 * it is refused up front. The recursion follows the schema, which has no cycles. */
static int has_field_zero(const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return 1;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n;
            ProtobufCMessage *const *v;
            memcpy(&n, base + f->quantifier_offset, sizeof n);
            memcpy(&v, base + f->offset, sizeof v);
            for (size_t k = 0; k < n; k++)
                if (v[k] && has_field_zero(v[k]))
                    return 1;
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + f->quantifier_offset, sizeof which);
            if (which != f->id)
                continue;
        }
        const ProtobufCMessage *sub;
        memcpy(&sub, base + f->offset, sizeof sub);
        if (sub && has_field_zero(sub))
            return 1;
    }
    return 0;
}

/* Reads a varint at *p (before end); returns 0 when it does not end in time. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 1;
    }
    return 0;
}

/* The first string field of message d in the wire bytes [p, end) (fields inside
 * messages included) whose bytes hold a NUL: its field descriptor, with *in its
 * message's descriptor; NULL when there is none. protobuf-c hands strings out as C
 * strings, so "a\0X" and "a\0Y" would both be read as "a": two different ids made
 * one. The bytes were unpacked already, so they are well formed; a walk that finds
 * them otherwise stops. The recursion follows the schema, which has no cycles. */
static const ProtobufCFieldDescriptor *nul_string(const ProtobufCMessageDescriptor *d,
                                                  const uint8_t *p, const uint8_t *end,
                                                  const ProtobufCMessageDescriptor **in)
{
    while (p < end) {
        uint64_t key, v;
        if (!read_varint(&p, end, &key))
            return NULL;
        switch (key & 7) {
        case 0:
            if (!read_varint(&p, end, &v))
                return NULL;
            break;
        case 1:
        case 5: {
            size_t w = (key & 7) == 1 ? 8 : 4;
            if ((size_t)(end - p) < w)
                return NULL;
            p += w;
            break;
        }
        case 2: {
            if (!read_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return NULL;
            const ProtobufCFieldDescriptor *f =
                key >> 3 <= UINT32_MAX
                    ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3))
                    : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(p, 0, (size_t)v)) {
                *in = d;
                return f;
            }
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                const ProtobufCFieldDescriptor *bad = nul_string(f->descriptor, p, p + v, in);
                if (bad)
                    return bad;
            }
            p += v;
            break;
        }
        default:
            return NULL;
        }
    }
    return NULL;
}

fm_status fm_wire_decode(const void *data, size_t len, Facemill__Envelope **out,
                         fm_error *err)
{
    *out = NULL;
    Facemill__Envelope *e = facemill__envelope__unpack(NULL, len, data);
    if (!e)
        return fm_error_set(err, FM_ERR_PROTOCOL, "%zu bytes that are not a facemill "
                            "Envelope", len);
    if (!e->has_version_major || e->version_major != FM_PROTOCOL_MAJOR) {
        char theirs[32] = "no version";
        if (e->has_version_major)
            snprintf(theirs, sizeof theirs, "protocol %u.%u", (unsigned)e->version_major,
                     (unsigned)e->version_minor);
        facemill__envelope__free_unpacked(e, NULL);
        return fm_error_set(err, FM_ERR_VERSION, "%s, this build speaks %d.x (%d.%d)",
                            theirs, FM_PROTOCOL_MAJOR, FM_PROTOCOL_MAJOR,
                            FM_PROTOCOL_MINOR);
    }
    if (e->body_case == FACEMILL__ENVELOPE__BODY__NOT_SET) {
        facemill__envelope__free_unpacked(e, NULL);
        return fm_error_set(err, FM_ERR_PROTOCOL, "envelope without a body (or a body "
                            "this build does not know)");
    }
    if (has_field_zero(&e->base)) {
        facemill__envelope__free_unpacked(e, NULL);
        return fm_error_set(err, FM_ERR_PROTOCOL, "%zu bytes with a field numbered 0 "
                            "(not valid protobuf)", len);
    }
    const ProtobufCMessageDescriptor *in = NULL;
    const ProtobufCFieldDescriptor *nul =
        nul_string(&facemill__envelope__descriptor, data, (const uint8_t *)data + len, &in);
    if (nul) {
        facemill__envelope__free_unpacked(e, NULL);
        return fm_error_set(err, FM_ERR_PROTOCOL, "string %s.%s holds a NUL byte (text "
                            "fields are UTF-8 without NUL)", in->short_name, nul->name);
    }
    *out = e;
    return FM_OK;
}

void fm_wire_free(Facemill__Envelope **e)
{
    if (e && *e) {
        facemill__envelope__free_unpacked(*e, NULL);
        *e = NULL;
    }
}

void fm_wire_refuse(void *router, const fm_wire_peer *to, uint32_t code, const char *text)
{
    Facemill__Envelope env;
    Facemill__Error er;
    fm_wire_envelope_init(&env);
    facemill__error__init(&er);
    er.has_code = 1;
    er.code = code;
    er.text = (char *)text;
    env.body_case = FACEMILL__ENVELOPE__BODY_ERROR;
    env.error = &er;
    fm_wire_send(router, to, &env, ZMQ_DONTWAIT, NULL);
}

const char *fm_wire_body_name(const Facemill__Envelope *e)
{
    switch (e->body_case) {
    case FACEMILL__ENVELOPE__BODY_SUBMIT: return "submit";
    case FACEMILL__ENVELOPE__BODY_SUBMIT_ACK: return "submit_ack";
    case FACEMILL__ENVELOPE__BODY_SLOW_DOWN: return "slow_down";
    case FACEMILL__ENVELOPE__BODY_STATUS_REQUEST: return "status_request";
    case FACEMILL__ENVELOPE__BODY_STATUS_REPLY: return "status_reply";
    case FACEMILL__ENVELOPE__BODY_WORKER_READY: return "worker_ready";
    case FACEMILL__ENVELOPE__BODY_JOB: return "job";
    case FACEMILL__ENVELOPE__BODY_JOB_DONE: return "job_done";
    case FACEMILL__ENVELOPE__BODY_WORKER_BYE: return "worker_bye";
    case FACEMILL__ENVELOPE__BODY_RESULT: return "result";
    case FACEMILL__ENVELOPE__BODY_COMMIT: return "commit";
    case FACEMILL__ENVELOPE__BODY_COMMIT_REPLY: return "commit_reply";
    case FACEMILL__ENVELOPE__BODY_HEARTBEAT: return "heartbeat";
    case FACEMILL__ENVELOPE__BODY_ERROR: return "error";
    default: return "none";
    }
}

const char *fm_wire_peer_text(const fm_wire_peer *p, char *buf, size_t size)
{
    int printable = p->len > 0;
    for (size_t i = 0; i < p->len; i++)
        if (p->id[i] < 0x21 || p->id[i] > 0x7e)
            printable = 0;
    size_t n = 0;
    if (size == 0)
        return buf;
    buf[0] = '\0';
    for (size_t i = 0; i < p->len && n + 3 < size; i++) {
        if (printable)
            buf[n++] = (char)p->id[i];
        else
            n += (size_t)snprintf(buf + n, size - n, "%02x", p->id[i]);
    }
    buf[n < size ? n : size - 1] = '\0';
    return buf;
}

int fm_wire_peer_equal(const fm_wire_peer *a, const fm_wire_peer *b)
{
    return a->len == b->len && memcmp(a->id, b->id, a->len) == 0;
}
