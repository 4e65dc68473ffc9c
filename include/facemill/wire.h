/* wire.h - sending and receiving facemill protocol messages over ZeroMQ sockets.
 *
 * Why it exists: every process (broker, worker, sink, client) needs the same few
 * things around the generated protobuf-c code of proto/facemill.proto: stamp the
 * protocol version on outgoing envelopes, refuse another major version with a clear
 * message, set the socket options every network-facing socket must have (linger,
 * ZMQ_MAXMSGSIZE, ZMQ_ROUTER_MANDATORY), and handle EINTR. proto/README.md is the
 * protocol itself; this header is its C binding.
 *
 * Frames: one envelope per message; a ROUTER prefixes the peer's routing id.
 * Ownership: outgoing envelopes stay the caller's (build them on the stack);
 * fm_wire_recv hands out an unpacked envelope the caller frees with fm_wire_free.
 * Threads: like the sockets themselves, one thread per socket.
 */
#ifndef FACEMILL_WIRE_H
#define FACEMILL_WIRE_H

#include "facemill.pb-c.h"
#include "facemill/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What fm_wire_setup sets on every socket: ZMTP heartbeats every IVL, a peer
 * silent for TIMEOUT (and told to drop us after as long: ZMQ_HEARTBEAT_TTL) is
 * disconnected; at most RCVHWM messages queued per peer. */
#define FM_WIRE_HEARTBEAT_IVL_MS 2000
#define FM_WIRE_HEARTBEAT_TIMEOUT_MS 20000
#define FM_WIRE_RCVHWM 100

/* The protocol version this build speaks (see the changelog in proto/README.md). */
#define FM_PROTOCOL_MAJOR 1
#define FM_PROTOCOL_MINOR 1

/* Bytes of a dispatch token (Job.token, Result.token, CommitEntry.token). */
#define FM_WIRE_TOKEN_BYTES 16
/* Longest job id accepted (bytes). */
#define FM_WIRE_JOB_ID_MAX 256
/* Longest ZeroMQ routing id (ZeroMQ's own limit). */
#define FM_WIRE_PEER_MAX 255

/* Longest user id a ZAP handler gives a connection, kept with its messages. */
#define FM_WIRE_USER_MAX 63

/* A peer's routing id as a ROUTER sees it, and the user id the ZAP handler gave its
 * connection (facemill's: the CURVE public key in Z85; "" on plain sockets). Peers
 * are the same peer when their routing ids are (fm_wire_peer_equal). */
typedef struct fm_wire_peer {
    size_t len;
    unsigned char id[FM_WIRE_PEER_MAX];
    char user[FM_WIRE_USER_MAX + 1];
} fm_wire_peer;

/* Sets on sock: ZMQ_LINGER = linger_ms, ZMQ_MAXMSGSIZE = max_msg_size (when > 0; it
 * bounds what the socket accepts from peers; then also ZMTP heartbeats and
 * ZMQ_RCVHWM, FM_WIRE_HEARTBEAT_* and FM_WIRE_RCVHWM) and, for ROUTER sockets,
 * ZMQ_ROUTER_MANDATORY = 1 (sending to a gone peer fails with EHOSTUNREACH instead of
 * vanishing). Returns FM_OK or FM_ERR_IO with zmq's text. */
fm_status fm_wire_setup(void *sock, int64_t max_msg_size, int linger_ms, fm_error *err);

/* Initialises *e as an empty envelope carrying this build's protocol version. */
void fm_wire_envelope_init(Facemill__Envelope *e);

/* Packs e and sends it on sock; to (may be NULL for DEALER/PUSH sockets) is the
 * routing id frame a ROUTER needs. flags: 0 or ZMQ_DONTWAIT. e stays the caller's.
 * EINTR is retried. Returns FM_OK; FM_ERR_TIMEOUT when ZMQ_DONTWAIT and the message
 * cannot be queued now (EAGAIN); FM_ERR_NOT_FOUND when a ROUTER's peer is gone
 * (EHOSTUNREACH); FM_ERR_NOMEM; FM_ERR_IO for other zmq errors. */
fm_status fm_wire_send(void *sock, const fm_wire_peer *to, const Facemill__Envelope *e,
                       int flags, fm_error *err);

/* Receives one message from sock. from: NULL, or where the sender goes: the routing
 * id frame on a ROUTER socket (len 0 on other sockets) and the connection's user id
 * (its ZAP "User-Id", "" without one). flags: 0 or ZMQ_DONTWAIT. On FM_OK, *out
 * is an envelope the caller owns (fm_wire_free) with a matching major version and
 * exactly one body. Errors (*out NULL; the message is consumed whole):
 *   FM_ERR_TIMEOUT     nothing to receive (ZMQ_DONTWAIT, or a receive timeout)
 *   FM_ERR_INTERRUPTED a signal interrupted the wait (EINTR): check your stop flag
 *   FM_ERR_VERSION     another major version, or none: err names both versions
 *   FM_ERR_PROTOCOL    not an envelope, no body, a string field whose bytes hold a NUL
 *                      (protobuf-c would cut it there), or an unexpected number of
 *                      frames
 *   FM_ERR_IO          another zmq error */
fm_status fm_wire_recv(void *sock, fm_wire_peer *from, Facemill__Envelope **out,
                       int flags, fm_error *err);

/* A check of a body frame before it is decoded: returns FM_OK to decode it, or an
 * error (err set; FM_ERR_LIMIT for a message too large to unpack) that
 * fm_wire_recv_checked returns instead, the message consumed. Decoding a message
 * can cost many times its size in memory (a Submit of 600,000 tiny jobs), so a
 * receiver with limits looks at the bytes first. */
typedef fm_status (*fm_wire_check_fn)(void *ctx, const void *data, size_t len,
                                      fm_error *err);

/* fm_wire_recv with check (which may be NULL) run on the body frame first. *from is
 * set whatever the outcome, so a refusal can be answered. */
fm_status fm_wire_recv_checked(void *sock, fm_wire_peer *from, Facemill__Envelope **out,
                               int flags, fm_wire_check_fn check, void *ctx, fm_error *err);

/* Decodes one message body (the bytes of the body frame) as fm_wire_recv does: on
 * FM_OK *out is an envelope the caller owns (fm_wire_free) with a matching major
 * version and exactly one body; otherwise *out is NULL and the error is FM_ERR_VERSION
 * or FM_ERR_PROTOCOL as for fm_wire_recv. data is only read. */
fm_status fm_wire_decode(const void *data, size_t len, Facemill__Envelope **out,
                         fm_error *err);

/* Frees an envelope from fm_wire_recv or fm_wire_decode and sets *e to NULL. Accepts
 * NULL. */
void fm_wire_free(Facemill__Envelope **e);

/* Sends Error{code, text} to peer to on a ROUTER (best effort, ZMQ_DONTWAIT). */
void fm_wire_refuse(void *router, const fm_wire_peer *to, uint32_t code, const char *text);

/* Name of the envelope's body ("submit", "job", ...), "none" when unset. Static. */
const char *fm_wire_body_name(const Facemill__Envelope *e);

/* The routing id as printable text (hex when not printable) in buf; returns buf. */
const char *fm_wire_peer_text(const fm_wire_peer *p, char *buf, size_t size);

/* True when a and b are the same routing id. */
int fm_wire_peer_equal(const fm_wire_peer *a, const fm_wire_peer *b);

#ifdef __cplusplus
}
#endif
#endif
