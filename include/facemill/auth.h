/* auth.h - CurveZMQ for facemill's sockets: certificate files, allowlists of public
 * keys per role, the ZAP handler that admits only those keys, and the check that
 * keeps a service from listening on the network without encryption.
 *
 * Why it exists: every facemill port would otherwise accept anyone. With keys
 * configured (security.cert), every socket of a process runs the CURVE mechanism:
 * the traffic is encrypted and every peer proves it holds the secret key of a public
 * key the server admits. The broker admits clients, workers and the sink on their
 * own sockets (security.clients_dir, security.workers_dir, security.sink_dir), the
 * sink admits workers and the broker on sink.results; a key admitted for one role is
 * refused on the sockets of the others. ops/README.md ("Security") has the threat
 * model and how keys are distributed.
 *
 * Certificates are the ZPL files CZMQ's zcert and pyzmq's zmq.auth read and write:
 * NAME.key holds the public key (give it to the peers that must admit NAME),
 * NAME.key_secret the public and the secret key (keep it on its machine, mode 0600):
 *
 *   metadata
 *       name = "worker-01"
 *   curve
 *       public-key = "<40 characters of Z85>"
 *       secret-key = "<40 characters of Z85>"      (NAME.key_secret only)
 *
 * An allowlist is a directory of NAME.key files; every file ending in ".key" is
 * read. The directory is read again when its modification time changes: a key file
 * added admits at the next connection; a key file removed refuses the next
 * connection and, through fm_auth_admits, the next message of the connections made
 * with it (the broker and the sink drop them, and the broker takes back the jobs of a
 * worker whose key went).
 *
 * Without security.cert nothing here changes a socket: endpoints on this machine
 * (ipc://, inproc://, tcp:// on 127.0.0.0/8, ::1 or localhost) reach only local
 * users. A process that binds a TCP endpoint any other machine can reach refuses to
 * start without keys, unless security.insecure is set, and then warns at every start.
 *
 * Ownership: fm_auth_open returns an object the caller owns (fm_auth_close). The ZAP
 * handler is a thread of its own with one socket bound to inproc://zeromq.zap.01 in
 * the process's ZeroMQ context, started before any server socket binds (libzmq lets
 * every CURVE client in when no handler is bound). Close server sockets before
 * fm_auth_close, and fm_auth_close before zmq_ctx_term.
 */
#ifndef FACEMILL_AUTH_H
#define FACEMILL_AUTH_H

#include "facemill/config.h"
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A CURVE key in Z85 text is 40 characters (32 bytes). */
#define FM_AUTH_KEY_TEXT 40

/* A key pair read from a certificate file. secret_key is "" for a public one. */
typedef struct fm_cert {
    char public_key[FM_AUTH_KEY_TEXT + 1];
    char secret_key[FM_AUTH_KEY_TEXT + 1];
} fm_cert;

/* Reads the certificate at path (NAME.key or NAME.key_secret, written by facemill
 * keygen, CZMQ or pyzmq). need_secret: the file must hold a secret key that belongs
 * to its public key. Errors: FM_ERR_IO (cannot read), FM_ERR_FORMAT (no curve
 * public-key, a key that is not 40 characters of Z85, a secret key that does not
 * match), FM_ERR_NOT_FOUND (need_secret and no secret-key: a public certificate). */
fm_status fm_cert_load(fm_cert *out, const char *path, int need_secret, fm_error *err);

/* Makes a new key pair (zmq_curve_keypair) and writes DIR/NAME.key (mode 0644) and
 * DIR/NAME.key_secret (mode 0600). NAME is a file name: not empty, no '/', not
 * starting with '.'. Never overwrites: FM_ERR_INVALID when either file exists (then
 * neither is written). *out (may be NULL) gets the pair. Errors: FM_ERR_INVALID,
 * FM_ERR_IO, FM_ERR_UNSUPPORTED (libzmq built without CURVE). */
fm_status fm_cert_create(const char *dir, const char *name, fm_cert *out, fm_error *err);

/* True when endpoint reaches only this machine: ipc://, inproc://, and tcp:// bound
 * to 127.0.0.0/8, ::1, localhost or the interface lo. Every interface (the host
 * "*" or 0.0.0.0), another address or host name, and every other transport can be
 * reached from elsewhere. */
int fm_auth_endpoint_is_local(const char *endpoint);

/* What a process is; it decides which keys fm_auth_open needs and which sockets
 * must not be exposed without them:
 *   BROKER  binds broker.clients, broker.workers, sink.commits (ZAP domains
 *           "clients", "workers", "sink"), connects to sink.results: needs
 *           security.clients_dir, workers_dir, sink_dir and sink_key
 *   SINK    binds sink.results (domain "results": workers and the broker),
 *           connects to sink.commits: needs security.workers_dir and broker_key
 *   WORKER  connects to broker.workers and sink.results: needs broker_key, sink_key
 *   CLIENT  connects to broker.clients: needs broker_key */
typedef enum fm_auth_role {
    FM_AUTH_BROKER = 0,
    FM_AUTH_SINK = 1,
    FM_AUTH_WORKER = 2,
    FM_AUTH_CLIENT = 3,
} fm_auth_role;

/* The server a client socket connects to. */
typedef enum fm_auth_server_id {
    FM_AUTH_TO_BROKER = 0, /* broker.clients, broker.workers, sink.commits */
    FM_AUTH_TO_SINK = 1,   /* sink.results */
} fm_auth_server_id;

/* ZAP domains of the server sockets. */
#define FM_AUTH_DOMAIN_CLIENTS "clients"
#define FM_AUTH_DOMAIN_WORKERS "workers"
#define FM_AUTH_DOMAIN_SINK "sink"
#define FM_AUTH_DOMAIN_RESULTS "results"

typedef struct fm_auth fm_auth;

/* Reads the security.* settings of c for role. Without security.cert: no CURVE; a
 * BROKER or SINK whose endpoints are not all local (fm_auth_endpoint_is_local) is
 * refused (FM_ERR_CONFIG naming the endpoint) unless security.insecure, which logs a
 * warning instead. With security.cert: loads this process's secret certificate, the
 * servers' public keys and the allowlists the role needs (relative paths are taken
 * in security.keys_dir) and, for BROKER and SINK, starts the ZAP handler in zmq_ctx
 * (required then; otherwise unused). On success *out is the caller's (fm_auth_close).
 * Errors: FM_ERR_CONFIG (a needed key not set, an exposed endpoint), those of
 * fm_cert_load, FM_ERR_IO (an allowlist directory cannot be read, or the ZAP endpoint
 * is taken: one handler per context), FM_ERR_UNSUPPORTED (libzmq without CURVE),
 * FM_ERR_NOMEM. */
fm_status fm_auth_open(fm_auth **out, const fm_config *c, fm_auth_role role, void *zmq_ctx,
                       fm_error *err);

/* True when a uses CURVE. a may be NULL (no CURVE). */
int fm_auth_curve(const fm_auth *a);

/* 1 when the connection whose messages carry user (fm_wire_peer.user: the key the
 * ZAP handler admitted it with) is still admitted on the server sockets of domain:
 * its key is still in the allowlist directory as it is now. 0 when the key file was
 * removed since the handshake; the caller drops the message, and the refusal is
 * logged (naming who, once a minute per key). 1 without CURVE. Thread-safe. */
int fm_auth_admits(const fm_auth *a, const char *domain, const char *user, const char *who);

/* Makes sock (not yet bound) a CURVE server of ZAP domain domain (an FM_AUTH_DOMAIN_*
 * of a's role). No-op when a is NULL or without CURVE. FM_ERR_IO on zmq errors. */
fm_status fm_auth_server(const fm_auth *a, void *sock, const char *domain, fm_error *err);

/* Makes sock (not yet connected) a CURVE client of server to, with a's own key pair.
 * No-op when a is NULL or without CURVE. FM_ERR_IO on zmq errors. */
fm_status fm_auth_client(const fm_auth *a, void *sock, fm_auth_server_id to, fm_error *err);

/* A watch on sock's handshakes (a PAIR of ctx receiving its handshake events), so
 * that a peer refusing this program's key is said, not waited out in silence; NULL
 * when it cannot be set up (nothing is then watched). */
void *fm_auth_watch(void *ctx, void *sock);

/* Reads what the watch (may be NULL) saw since the last call, without waiting: 1 when
 * a handshake with peer (a name for the message: "the broker") failed, or several in
 * a row were cut short (the peer hung up on it), with why in why (the last one seen),
 * else 0. */
int fm_auth_watch_failed(void *watch, const char *peer, char *why, size_t size);

/* Stops the watch on sock and frees it (either may be NULL). */
void fm_auth_watch_close(void *sock, void *watch);

/* A server's watch of the handshakes its CURVE server socket sock refuses before the
 * ZAP handler is asked (which logs the keys it refuses): peers without keys, or with
 * another server key. NULL without CURVE (a NULL or plain a), or when it cannot be set
 * up. what names the socket in the log ("workers"). */
typedef struct fm_auth_refusals fm_auth_refusals;
fm_auth_refusals *fm_auth_refusals_open(const fm_auth *a, void *ctx, void *sock,
                                        const char *what);

/* Reads the refusals seen since the last call, without waiting, and logs their counts
 * (a warning: the first at once, then at most one line a minute). r may be NULL. */
void fm_auth_refusals_poll(fm_auth_refusals *r);

/* Stops the watch on sock, frees *r and sets it to NULL. Accepts NULL. */
void fm_auth_refusals_close(fm_auth_refusals **r, void *sock);

/* Stops the ZAP handler (after the server sockets are closed), wipes the secret key
 * and frees a; sets *a to NULL. Accepts NULL and a NULL *a. */
void fm_auth_close(fm_auth **a);

#ifdef __cplusplus
}
#endif
#endif
