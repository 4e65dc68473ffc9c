/* test_auth.c - CurveZMQ for facemill's sockets (include/facemill/auth.h).
 *
 * Certificates: facemill's own files read back, their modes, no overwrite; files as
 * CZMQ and pyzmq write them read; broken ones refused with a reason. Endpoints: which
 * ones reach only this machine. fm_auth_open: an exposed bind without keys refused
 * (and allowed with security.insecure), a missing key setting named. The ZAP handler
 * end to end in one process, over ipc://: a worker's key is admitted on the workers
 * socket and refused on the clients socket, an unknown key and a client without
 * CURVE are refused, a key file added to the directory is admitted from the next
 * connection on. Every refusal is observed as the client's handshake failing (a
 * socket monitor event), every admission as a message arriving: waits are for
 * events, with a deadline.
 */
#include "facemill/auth.h"
#include "facemill/wire.h"
#include "fm_test.h"

#include <zmq.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WAIT_MS 10000

static char dir[256];

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* ---- certificates --------------------------------------------------------------- */

static void test_certificates(void)
{
    fm_cert made, pub, sec;
    fm_error e = {0};
    CHECK(fm_cert_create(dir, "node-1", &made, &e) == FM_OK);
    char p[512], s[512];
    snprintf(p, sizeof p, "%s/node-1.key", dir);
    snprintf(s, sizeof s, "%s/node-1.key_secret", dir);
    struct stat sb;
    CHECK(stat(s, &sb) == 0 && (sb.st_mode & 0777) == 0600);
    CHECK(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0644);
    CHECK(fm_cert_load(&pub, p, 0, &e) == FM_OK);
    CHECK(strcmp(pub.public_key, made.public_key) == 0 && pub.secret_key[0] == '\0');
    CHECK(fm_cert_load(&sec, s, 1, &e) == FM_OK);
    CHECK(strcmp(sec.public_key, made.public_key) == 0 &&
          strcmp(sec.secret_key, made.secret_key) == 0);
    /* A public certificate is not a secret one. */
    CHECK(fm_cert_load(&sec, p, 1, &e) == FM_ERR_NOT_FOUND);
    /* Never overwritten, whichever file exists. */
    fm_error ow = {0};
    CHECK(fm_cert_create(dir, "node-1", NULL, &ow) == FM_ERR_INVALID);
    CHECK_MSG(strstr(ow.msg, "not overwritten") != NULL, "%s", ow.msg);
    CHECK(fm_cert_load(&sec, s, 1, &e) == FM_OK &&
          strcmp(sec.secret_key, made.secret_key) == 0);
    CHECK(unlink(p) == 0);
    CHECK(fm_cert_create(dir, "node-1", NULL, &ow) == FM_ERR_INVALID);
    CHECK(access(p, F_OK) != 0);
    CHECK(fm_cert_create(dir, "../escape", NULL, &ow) == FM_ERR_INVALID);
    CHECK(fm_cert_create(dir, ".hidden", NULL, &ow) == FM_ERR_INVALID);
    CHECK(fm_cert_create(dir, "", NULL, &ow) == FM_ERR_INVALID);

    /* Written by others: CZMQ's layout, pyzmq's (metadata, unquoted values), CRLF. */
    char pk[41], sk[41];
    CHECK(zmq_curve_keypair(pk, sk) == 0);
    char text[1024], path[512];
    snprintf(path, sizeof path, "%s/czmq.key_secret", dir);
    snprintf(text, sizeof text,
             "#   ****  Generated on 2015-02-16 01:23:56 by CZMQ  ****\n"
             "#   ZeroMQ CURVE **Secret** Certificate\n\n"
             "metadata\n    email = \"a@b.c\"\ncurve\n"
             "    public-key = \"%s\"\n    secret-key = \"%s\"\n", pk, sk);
    write_text(path, text);
    CHECK(fm_cert_load(&sec, path, 1, &e) == FM_OK && strcmp(sec.public_key, pk) == 0 &&
          strcmp(sec.secret_key, sk) == 0);
    snprintf(path, sizeof path, "%s/py.key", dir);
    snprintf(text, sizeof text, "metadata\r\n    public-key = \"not this one\"\r\n"
             "curve\r\n    public-key = %s\r\n", pk);
    write_text(path, text);
    CHECK(fm_cert_load(&pub, path, 0, &e) == FM_OK && strcmp(pub.public_key, pk) == 0);

    /* Broken ones, each with its reason. */
    struct {
        const char *text, *reason;
    } bad[] = {
        {"metadata\n    name = \"x\"\n", "no curve public-key"},
        {"curve\n    public-key = \"tooshort\"\n", "40 characters"},
        {"curve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n", "does not belong"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char other[41], osk[41];
        CHECK(zmq_curve_keypair(other, osk) == 0);
        snprintf(path, sizeof path, "%s/bad%zu.key_secret", dir, i);
        snprintf(text, sizeof text, bad[i].text, pk, osk);
        write_text(path, text);
        fm_error be = {0};
        CHECK(fm_cert_load(&sec, path, 0, &be) == FM_ERR_FORMAT);
        CHECK_MSG(strstr(be.msg, bad[i].reason) != NULL, "%s", be.msg);
    }
    fm_error me = {0};
    snprintf(path, sizeof path, "%s/missing.key", dir);
    CHECK(fm_cert_load(&pub, path, 0, &me) == FM_ERR_IO);
    /* a FIFO (an allowlist's *.key, say) is refused without waiting for a writer */
    snprintf(path, sizeof path, "%s/fifo.key", dir);
    CHECK(mkfifo(path, 0600) == 0);
    fm_test_alarm(5);
    fm_status st = fm_cert_load(&pub, path, 0, &me);
    fm_test_alarm(0);
    CHECK_MSG(st == FM_ERR_IO && strstr(me.msg, "fifo.key: a FIFO, not a regular file"),
              "%s", me.msg);
    unlink(path);
}

/* ---- endpoints ------------------------------------------------------------------ */

static void test_endpoints(void)
{
    const char *local[] = {"ipc:///tmp/x", "inproc://a", "tcp://127.0.0.1:5570",
                           "tcp://127.3.4.5:1", "tcp://localhost:5570", "tcp://[::1]:5570",
                           "tcp://lo:5570", "tcp://[::ffff:127.0.0.1]:9"};
    const char *exposed[] = {"tcp://*:5570", "tcp://0.0.0.0:5570", "tcp://10.0.0.1:5570",
                             "tcp://[::]:5570", "tcp://q.example:5570", "tcp://eth0:5570",
                             "ws://127.0.0.1:5570", "tcp://128.0.0.1:1", "tcp://:5570"};
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        CHECK_MSG(fm_auth_endpoint_is_local(local[i]), "%s is local", local[i]);
    for (size_t i = 0; i < sizeof exposed / sizeof exposed[0]; i++)
        CHECK_MSG(!fm_auth_endpoint_is_local(exposed[i]), "%s is exposed", exposed[i]);
}

/* ---- fm_auth_open --------------------------------------------------------------- */

static void test_open_checks(void)
{
    fm_config c;
    fm_config_defaults(&c);
    fm_auth *a = NULL;
    fm_error e = {0};
    CHECK(fm_auth_open(&a, &c, FM_AUTH_BROKER, NULL, &e) == FM_OK && !fm_auth_curve(a));
    fm_auth_close(&a);
    snprintf(c.broker.workers, sizeof c.broker.workers, "tcp://*:5571");
    CHECK(fm_auth_open(&a, &c, FM_AUTH_BROKER, NULL, &e) == FM_ERR_CONFIG && !a);
    CHECK_MSG(strstr(e.msg, "broker.workers") && strstr(e.msg, "security.insecure"), "%s",
              e.msg);
    /* Workers and clients bind nothing: their endpoints are not checked. */
    CHECK(fm_auth_open(&a, &c, FM_AUTH_WORKER, NULL, &e) == FM_OK);
    fm_auth_close(&a);
    c.security.insecure = true;
    CHECK(fm_auth_open(&a, &c, FM_AUTH_BROKER, NULL, &e) == FM_OK && !fm_auth_curve(a));
    fm_auth_close(&a);
    fm_config_defaults(&c);
    snprintf(c.sink.results, sizeof c.sink.results, "tcp://192.0.2.1:5573");
    CHECK(fm_auth_open(&a, &c, FM_AUTH_SINK, NULL, &e) == FM_ERR_CONFIG);
    /* With a certificate, each role names the setting it misses. */
    fm_config_defaults(&c);
    snprintf(c.security.keys_dir, sizeof c.security.keys_dir, "%s", dir);
    snprintf(c.security.cert, sizeof c.security.cert, "node-1.key_secret");
    CHECK(fm_auth_open(&a, &c, FM_AUTH_CLIENT, NULL, &e) == FM_ERR_CONFIG);
    CHECK_MSG(strstr(e.msg, "security.broker_key") != NULL, "%s", e.msg);
    snprintf(c.security.broker_key, sizeof c.security.broker_key, "py.key");
    CHECK(fm_auth_open(&a, &c, FM_AUTH_CLIENT, NULL, &e) == FM_OK && fm_auth_curve(a));
    fm_auth_close(&a);
    CHECK(fm_auth_open(&a, &c, FM_AUTH_WORKER, NULL, &e) == FM_ERR_CONFIG);
    CHECK_MSG(strstr(e.msg, "security.sink_key") != NULL, "%s", e.msg);
    void *ctx = zmq_ctx_new();
    CHECK(fm_auth_open(&a, &c, FM_AUTH_SINK, ctx, &e) == FM_ERR_CONFIG);
    CHECK_MSG(strstr(e.msg, "security.workers_dir") != NULL, "%s", e.msg);
    snprintf(c.security.workers_dir, sizeof c.security.workers_dir, "no-such-dir");
    CHECK(fm_auth_open(&a, &c, FM_AUTH_SINK, ctx, &e) == FM_ERR_IO);
    CHECK_MSG(strstr(e.msg, "no-such-dir") != NULL, "%s", e.msg);
    zmq_ctx_term(ctx);
}

/* ---- the ZAP handler ------------------------------------------------------------ */

/* A DEALER with key pair (pk, sk) or, with pk NULL, no CURVE, connected to endpoint
 * of the server whose public key is server; its monitor PAIR in *mon. */
static void *dealer(void *ctx, const char *endpoint, const char *server, const char *pk,
                    const char *sk, void **mon)
{
    static int n;
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    fm_wire_setup(s, 1 << 20, 0, NULL);
    if (pk) {
        zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server, 40);
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pk, 40);
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sk, 40);
    }
    char addr[64];
    snprintf(addr, sizeof addr, "inproc://monitor-%d", n++);
    CHECK(zmq_socket_monitor(s, addr, ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                          ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                          ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                          ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0);
    *mon = zmq_socket(ctx, ZMQ_PAIR);
    CHECK(zmq_connect(*mon, addr) == 0);
    CHECK(zmq_connect(s, endpoint) == 0);
    return s;
}

/* The first handshake event of a monitor within WAIT_MS (0: none), and its value. */
static int handshake(void *mon, uint32_t *value)
{
    zmq_pollitem_t it = {mon, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, WAIT_MS) <= 0)
        return 0;
    uint8_t ev[6];
    char ep[256];
    int n = zmq_recv(mon, ev, sizeof ev, 0);
    zmq_recv(mon, ep, sizeof ep, 0);
    if (n != 6)
        return 0;
    uint16_t id;
    memcpy(&id, ev, 2);
    memcpy(value, ev + 2, 4);
    return id;
}

static void close_pair(void *s, void *mon)
{
    zmq_socket_monitor(s, NULL, 0);
    zmq_close(s);
    zmq_close(mon);
}

/* A client with (pk, sk) connects to endpoint: returns 1 when admitted (a message
 * it sends arrives at server), 0 when its handshake failed. */
static int admitted(void *ctx, void *server, const char *endpoint, const char *server_key,
                    const char *pk, const char *sk)
{
    void *mon;
    void *s = dealer(ctx, endpoint, server_key, pk, sk, &mon);
    uint32_t value = 0;
    int ev = handshake(mon, &value);
    int ok = 0;
    if (ev == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
        CHECK(zmq_send(s, "hello", 5, 0) == 5);
        zmq_pollitem_t it = {server, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, WAIT_MS) == 1) {
            zmq_msg_t id, body;
            zmq_msg_init(&id);
            zmq_msg_init(&body);
            zmq_msg_recv(&id, server, 0);
            zmq_msg_recv(&body, server, 0);
            /* The ZAP handler named the key in the user id. */
            const char *user = zmq_msg_gets(&body, "User-Id");
            ok = zmq_msg_size(&body) == 5 && user && user[0];
            zmq_msg_close(&id);
            zmq_msg_close(&body);
        }
    } else {
        CHECK_MSG(ev != 0, "no handshake event within %d ms", WAIT_MS);
        if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            CHECK_MSG(value == 400, "ZAP status %u", value);
    }
    close_pair(s, mon);
    return ok;
}

static void test_zap(void)
{
    char keys[300], sub[3][320];
    snprintf(keys, sizeof keys, "%s/keys", dir);
    CHECK(mkdir(keys, 0700) == 0);
    const char *roles[] = {"clients", "workers", "sink"};
    for (int i = 0; i < 3; i++) {
        snprintf(sub[i], sizeof sub[i], "%s/%s", keys, roles[i]);
        CHECK(mkdir(sub[i], 0700) == 0);
    }
    fm_cert broker, sink, worker, client, stranger, late;
    fm_error e = {0};
    CHECK(fm_cert_create(keys, "broker", &broker, &e) == FM_OK);
    CHECK(fm_cert_create(keys, "sink", &sink, &e) == FM_OK);
    CHECK(fm_cert_create(sub[1], "worker-1", &worker, &e) == FM_OK);
    CHECK(fm_cert_create(sub[0], "client-1", &client, &e) == FM_OK);
    CHECK(fm_cert_create(keys, "stranger", &stranger, &e) == FM_OK);
    CHECK(fm_cert_create(keys, "late", &late, &e) == FM_OK);

    fm_config c;
    fm_config_defaults(&c);
    snprintf(c.security.keys_dir, sizeof c.security.keys_dir, "%s", keys);
    snprintf(c.security.cert, sizeof c.security.cert, "broker.key_secret");
    snprintf(c.security.sink_key, sizeof c.security.sink_key, "sink.key");
    snprintf(c.security.clients_dir, sizeof c.security.clients_dir, "clients");
    snprintf(c.security.workers_dir, sizeof c.security.workers_dir, "workers");
    snprintf(c.security.sink_dir, sizeof c.security.sink_dir, "sink");
    void *ctx = zmq_ctx_new();
    fm_auth *a = NULL;
    CHECK(fm_auth_open(&a, &c, FM_AUTH_BROKER, ctx, &e) == FM_OK && fm_auth_curve(a));
    if (!a) {
        fprintf(stderr, "%s\n", fm_error_text(&e));
        zmq_ctx_term(ctx);
        return;
    }
    char ep_w[320], ep_c[320];
    snprintf(ep_w, sizeof ep_w, "ipc://%s/w", dir);
    snprintf(ep_c, sizeof ep_c, "ipc://%s/c", dir);
    void *workers = zmq_socket(ctx, ZMQ_ROUTER), *clients = zmq_socket(ctx, ZMQ_ROUTER);
    fm_wire_setup(workers, 1 << 20, 0, NULL);
    fm_wire_setup(clients, 1 << 20, 0, NULL);
    CHECK(fm_auth_server(a, workers, FM_AUTH_DOMAIN_WORKERS, &e) == FM_OK);
    CHECK(fm_auth_server(a, clients, FM_AUTH_DOMAIN_CLIENTS, &e) == FM_OK);
    CHECK(zmq_bind(workers, ep_w) == 0 && zmq_bind(clients, ep_c) == 0);

    const char *bk = broker.public_key;
    CHECK_MSG(admitted(ctx, workers, ep_w, bk, worker.public_key, worker.secret_key),
              "the worker's key is admitted on the workers socket");
    CHECK_MSG(admitted(ctx, clients, ep_c, bk, client.public_key, client.secret_key),
              "the client's key is admitted on the clients socket");
    CHECK_MSG(!admitted(ctx, workers, ep_w, bk, client.public_key, client.secret_key),
              "a client's key is refused on the workers socket");
    CHECK_MSG(!admitted(ctx, clients, ep_c, bk, worker.public_key, worker.secret_key),
              "a worker's key is refused on the clients socket");
    CHECK_MSG(!admitted(ctx, workers, ep_w, bk, stranger.public_key, stranger.secret_key),
              "an unknown key is refused");
    CHECK_MSG(!admitted(ctx, workers, ep_w, bk, NULL, NULL),
              "a client without CURVE is refused");
    CHECK_MSG(!admitted(ctx, workers, ep_w, stranger.public_key, worker.public_key,
                        worker.secret_key),
              "a client that takes another key for the broker's is refused");
    /* A key file added to the directory counts from the next connection. */
    CHECK_MSG(!admitted(ctx, workers, ep_w, bk, late.public_key, late.secret_key),
              "the late key before it is added");
    char from[400], to[400];
    snprintf(from, sizeof from, "%s/late.key", keys);
    snprintf(to, sizeof to, "%s/late.key", sub[1]);
    CHECK(rename(from, to) == 0);
    CHECK_MSG(admitted(ctx, workers, ep_w, bk, late.public_key, late.secret_key),
              "the late key once its file is in security.workers_dir");
    CHECK(unlink(to) == 0);
    CHECK_MSG(!admitted(ctx, workers, ep_w, bk, late.public_key, late.secret_key),
              "the late key once its file is removed again");

    zmq_close(workers);
    zmq_close(clients);
    fm_auth_close(&a);
    CHECK(a == NULL);
    zmq_ctx_term(ctx);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/fm_test_auth.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (!zmq_has("curve")) {
        fprintf(stderr, "libzmq without CURVE: skipped\n");
        return FM_TEST_SKIP;
    }
    test_certificates();
    test_endpoints();
    test_open_checks();
    test_zap();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return fm_test_done("test_auth");
}
