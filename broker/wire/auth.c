/* auth.c - CurveZMQ for facemill's sockets (include/facemill/auth.h): certificate
 * files, allowlists, the ZAP handler, and the exposure check of bound endpoints.
 *
 * The ZAP handler (ZeroMQ RFC 27) is a thread with a REP socket on
 * inproc://zeromq.zap.01. libzmq asks it about every CURVE handshake on a server
 * socket of the same context, naming the socket's ZAP domain and the client's public
 * key; the handler answers 200 (admitted, with the key's name as user id) or 400.
 * Each domain admits the keys of one allowlist directory (and, for sink.results, the
 * broker's own key). The thread owns the allowlists, so they need no lock; it reads
 * a directory again when its modification time changes.
 *
 * Certificates are read with a small reader of the ZeroMQ Property Language (the
 * subset certificates use: sections, "name = value" with optional quotes, comments,
 * four-space indents), written so the files CZMQ and pyzmq write read back, and the
 * files written here read in pyzmq's zmq.auth.load_certificate.
 */
#define _GNU_SOURCE /* struct stat's st_mtim, O_CLOEXEC */
#include "facemill/auth.h"
#include "facemill/clock.h"
#include "facemill/file.h"
#include "facemill/log.h"
#include "facemill/wire.h"

#include <zmq.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
/* Largest certificate file read: real ones are a few hundred bytes. */
#define CERT_FILE_MAX 65536

/* ---- certificates --------------------------------------------------------------- */

/* True when text is a 40-character Z85 key (decodes to 32 bytes). */
static int z85_key_ok(const char *text)
{
    uint8_t bin[32];
    return strlen(text) == FM_AUTH_KEY_TEXT && zmq_z85_decode(bin, text) != NULL;
}

/* Reads the whole file at path (at most CERT_FILE_MAX bytes) into a new buffer. Only a
 * regular file: a FIFO named *.key in an allowlist's directory would otherwise stop
 * the ZAP handler in its open. */
static fm_status read_small_file(const char *path, char **out, fm_error *err)
{
    *out = NULL;
    const char *why = NULL;
    FILE *f = fm_file_fopen_regular(path, &why);
    if (!f)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, why);
    char *buf = malloc(CERT_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, CERT_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > CERT_FILE_MAX) {
        free(buf);
        return fm_error_set(err, bad ? FM_ERR_IO : FM_ERR_FORMAT, "%s: %s", path,
                            bad ? "read error" : "larger than a certificate");
    }
    buf[n] = '\0';
    *out = buf;
    return FM_OK;
}

/* The value of a ZPL "name = value" line after the '=': quoted ('...' or "...") up to
 * the closing quote, else up to a space (Z85 keys hold '#', so only a '#' after a
 * space starts a comment). Written into val. */
static void zpl_value(const char *p, char *val, size_t size)
{
    size_t n = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '"' || *p == '\'') {
        char q = *p++;
        while (*p && *p != q && n + 1 < size)
            val[n++] = *p++;
    } else {
        while (*p && *p != ' ' && *p != '\t' && n + 1 < size)
            val[n++] = *p++;
    }
    val[n] = '\0';
}

/* Takes the curve section's public-key and secret-key out of ZPL text. A line
 * indented under a top-level name belongs to that section. */
static void zpl_curve_keys(char *text, char *pub, char *sec, size_t size)
{
    char section[64] = "";
    pub[0] = sec[0] = '\0';
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r')
            line[--len] = '\0';
        size_t indent = strspn(line, " \t");
        char *p = line + indent;
        if (!*p || *p == '#')
            continue;
        size_t name_len = strcspn(p, " \t=");
        if (indent == 0) {
            snprintf(section, sizeof section, "%.*s", (int)name_len, p);
            continue;
        }
        if (strcmp(section, "curve") != 0)
            continue;
        char *eq = strchr(p + name_len, '=');
        if (!eq)
            continue;
        if (name_len == 10 && strncmp(p, "public-key", 10) == 0)
            zpl_value(eq + 1, pub, size);
        else if (name_len == 10 && strncmp(p, "secret-key", 10) == 0)
            zpl_value(eq + 1, sec, size);
    }
}

fm_status fm_cert_load(fm_cert *out, const char *path, int need_secret, fm_error *err)
{
    memset(out, 0, sizeof *out);
    char *text = NULL;
    fm_status st = read_small_file(path, &text, err);
    if (st != FM_OK)
        return st;
    char pub[128], sec[128];
    zpl_curve_keys(text, pub, sec, sizeof pub);
    free(text);
    if (!pub[0])
        st = fm_error_set(err, FM_ERR_FORMAT, "%s: not a CURVE certificate (no curve "
                          "public-key)", path);
    else if (!z85_key_ok(pub))
        st = fm_error_set(err, FM_ERR_FORMAT, "%s: public-key is not 40 characters of "
                          "Z85", path);
    else if (sec[0] && !z85_key_ok(sec))
        st = fm_error_set(err, FM_ERR_FORMAT, "%s: secret-key is not 40 characters of "
                          "Z85", path);
    else if (need_secret && !sec[0])
        st = fm_error_set(err, FM_ERR_NOT_FOUND, "%s: a public certificate; this needs the "
                          "secret one (NAME.key_secret)", path);
    if (st == FM_OK && sec[0]) {
        char derived[FM_AUTH_KEY_TEXT + 1];
        if (zmq_curve_public(derived, sec) != 0 || strcmp(derived, pub) != 0)
            st = fm_error_set(err, FM_ERR_FORMAT, "%s: secret-key does not belong to "
                              "public-key", path);
    }
    if (st == FM_OK) {
        memcpy(out->public_key, pub, FM_AUTH_KEY_TEXT + 1);
        if (sec[0])
            memcpy(out->secret_key, sec, FM_AUTH_KEY_TEXT + 1);
    }
    memset(sec, 0, sizeof sec);
    return st;
}

/* Creates path exclusively with mode and writes text to it. */
static fm_status write_new_file(const char *path, int mode, const char *text, fm_error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return fm_error_set(err, errno == EEXIST ? FM_ERR_INVALID : FM_ERR_IO,
                            "%s: %s", path, errno == EEXIST ? "exists, not overwritten"
                                                            : strerror(errno));
    /* The umask may have taken bits off; a secret file gets exactly its mode. */
    size_t len = strlen(text), done = 0;
    int ok = fchmod(fd, (mode_t)mode) == 0;
    while (ok && done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        done += w > 0 ? (size_t)w : 0;
    }
    ok = ok && fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0)
        ok = 0;
    if (!ok) {
        unlink(path);
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(e));
    }
    return FM_OK;
}

static int cert_name_ok(const char *name)
{
    return name[0] && name[0] != '.' && !strchr(name, '/') && strlen(name) <= NAME_MAX - 11;
}

fm_status fm_cert_create(const char *dir, const char *name, fm_cert *out, fm_error *err)
{
    if (!cert_name_ok(name))
        return fm_error_set(err, FM_ERR_INVALID, "certificate name '%s': a file name "
                            "(not empty, no '/', not starting with '.')", name);
    if (!zmq_has("curve"))
        return fm_error_set(err, FM_ERR_UNSUPPORTED, "this libzmq has no CURVE support");
    char pub_path[PATH_MAX], sec_path[PATH_MAX];
    if (snprintf(pub_path, sizeof pub_path, "%s/%s.key", dir, name) >= (int)sizeof pub_path ||
        snprintf(sec_path, sizeof sec_path, "%s/%s.key_secret", dir, name) >=
            (int)sizeof sec_path)
        return fm_error_set(err, FM_ERR_INVALID, "%s/%s: path too long", dir, name);
    struct stat sb;
    if (stat(pub_path, &sb) == 0 || stat(sec_path, &sb) == 0)
        return fm_error_set(err, FM_ERR_INVALID, "%s exists, not overwritten",
                            stat(pub_path, &sb) == 0 ? pub_path : sec_path);
    fm_cert c;
    if (zmq_curve_keypair(c.public_key, c.secret_key) != 0)
        return fm_error_set(err, FM_ERR_IO, "zmq_curve_keypair: %s", zmq_strerror(errno));
    char when[64] = "";
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm))
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
    char pub_text[1024], sec_text[1024];
    snprintf(pub_text, sizeof pub_text,
             "#   ZeroMQ CURVE public certificate of %s, made by facemill keygen %s\n"
             "#   Copy it to the allowlist directory of every process that admits %s.\n"
             "\n"
             "metadata\n"
             "    name = \"%s\"\n"
             "curve\n"
             "    public-key = \"%s\"\n",
             name, when, name, name, c.public_key);
    snprintf(sec_text, sizeof sec_text,
             "#   ZeroMQ CURVE **secret** certificate of %s, made by facemill keygen %s\n"
             "#   Keep it on the machine that uses it, readable by that program only.\n"
             "\n"
             "metadata\n"
             "    name = \"%s\"\n"
             "curve\n"
             "    public-key = \"%s\"\n"
             "    secret-key = \"%s\"\n",
             name, when, name, c.public_key, c.secret_key);
    fm_status st = write_new_file(sec_path, 0600, sec_text, err);
    if (st == FM_OK && (st = write_new_file(pub_path, 0644, pub_text, err)) != FM_OK)
        unlink(sec_path);
    memset(sec_text, 0, sizeof sec_text);
    if (st == FM_OK && out)
        *out = c;
    memset(&c, 0, sizeof c);
    return st;
}

/* ---- endpoints ------------------------------------------------------------------ */

static int host_is_local(const char *host)
{
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "lo") == 0)
        return 1;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        static const uint8_t loop[16] = {[15] = 1};
        static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};
        return memcmp(a6.s6_addr, loop, 16) == 0 ||
               (memcmp(a6.s6_addr, mapped, 12) == 0 && a6.s6_addr[12] == 127);
    }
    return 0;
}

int fm_auth_endpoint_is_local(const char *endpoint)
{
    if (strncmp(endpoint, "ipc://", 6) == 0 || strncmp(endpoint, "inproc://", 9) == 0)
        return 1;
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return 0;
    const char *h = endpoint + 6;
    const char *semi = strchr(h, ';'); /* "source;destination": what is bound is after */
    if (semi)
        h = semi + 1;
    char host[256];
    size_t n;
    if (*h == '[') {
        const char *end = strchr(h, ']');
        if (!end)
            return 0;
        n = (size_t)(end - h - 1);
        h++;
    } else {
        const char *colon = strrchr(h, ':');
        n = colon ? (size_t)(colon - h) : strlen(h);
    }
    if (n == 0 || n >= sizeof host)
        return 0;
    memcpy(host, h, n);
    host[n] = '\0';
    return host_is_local(host);
}

/* ---- allowlists ----------------------------------------------------------------- */

typedef struct allowed_key {
    uint8_t key[32];
    char name[64]; /* the certificate's file name without ".key", for messages */
} allowed_key;

/* The keys of one directory, as last read. */
typedef struct allowlist {
    char dir[PATH_MAX];
    const char *setting; /* "security.workers_dir", for messages */
    struct timespec mtime;
    int read_once;
    allowed_key *keys;
    size_t n;
} allowlist;

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && strcmp(s + a - b, suffix) == 0;
}

/* Reads every NAME.key of l->dir into l (replacing what it held). A file that is not
 * a certificate is logged and skipped. */
static fm_status allowlist_read(allowlist *l, fm_error *err)
{
    DIR *d = opendir(l->dir);
    if (!d)
        return fm_error_set(err, FM_ERR_IO, "%s %s: %s", l->setting, l->dir, strerror(errno));
    allowed_key *keys = NULL;
    size_t n = 0, cap = 0;
    fm_status st = FM_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, ".key"))
            continue;
        char path[PATH_MAX + 256];
        snprintf(path, sizeof path, "%s/%s", l->dir, de->d_name);
        fm_cert c;
        fm_error ce = {0};
        if (fm_cert_load(&c, path, 0, &ce) != FM_OK) {
            fm_log_warn("%s: %s: skipped", l->setting, fm_error_text(&ce));
            continue;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            allowed_key *nk = realloc(keys, nc * sizeof *nk);
            if (!nk) {
                st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", l->dir);
                break;
            }
            keys = nk;
            cap = nc;
        }
        zmq_z85_decode(keys[n].key, c.public_key);
        snprintf(keys[n].name, sizeof keys[n].name, "%.*s",
                 (int)(strlen(de->d_name) - 4), de->d_name);
        n++;
    }
    closedir(d);
    if (st != FM_OK) {
        free(keys);
        return st;
    }
    free(l->keys);
    l->keys = keys;
    l->n = n;
    return FM_OK;
}

static int same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* Reads l's directory again when it changed since the last read. A directory that
 * cannot be read admits nobody (logged once per change). */
static void allowlist_refresh(allowlist *l)
{
    struct stat sb;
    if (stat(l->dir, &sb) != 0) {
        if (l->read_once || l->n) {
            fm_log_warn("%s %s: %s: admitting nobody", l->setting, l->dir, strerror(errno));
            l->read_once = 0;
            free(l->keys);
            l->keys = NULL;
            l->n = 0;
        }
        return;
    }
    if (l->read_once && same_time(&sb.st_mtim, &l->mtime))
        return;
    fm_error e = {0};
    if (allowlist_read(l, &e) != FM_OK) {
        fm_log_warn("%s: admitting nobody", fm_error_text(&e));
        free(l->keys);
        l->keys = NULL;
        l->n = 0;
    } else if (l->read_once) {
        fm_log_info("%s %s changed: %zu keys", l->setting, l->dir, l->n);
    }
    l->mtime = sb.st_mtim;
    l->read_once = 1;
}

static const allowed_key *allowlist_find(const allowlist *l, const uint8_t *key)
{
    for (size_t i = 0; i < l->n; i++)
        if (memcmp(l->keys[i].key, key, 32) == 0)
            return &l->keys[i];
    return NULL;
}

/* ---- the ZAP handler ------------------------------------------------------------ */

#define MAX_DOMAINS 3
/* A refused peer reconnects every few hundred milliseconds: each key and socket is
 * logged once a minute (with the count of refusals in between), not every time.
 * The last REFUSALS keys refused are remembered. */
#define REFUSALS 32
#define REFUSAL_LOG_MS 60000

typedef struct refusal {
    uint8_t key[32];
    const char *domain;
    int64_t logged_ms;
    unsigned quiet; /* refusals since the line logged at logged_ms */
} refusal;

/* What one ZAP domain admits: an allowlist directory, and maybe one more key. */
typedef struct zap_domain {
    const char *name;
    allowlist list;
    int has_extra;
    allowed_key extra;
} zap_domain;

typedef struct zap {
    pthread_t th;
    int running;
    /* Held around the allowlists and the refusals: the handler thread reads them for
     * handshakes, the process's own thread for the messages of live connections
     * (fm_auth_admits). */
    pthread_mutex_t lock;
    void *rep;       /* bound to ZAP_ENDPOINT; the thread's once started */
    void *ctl_main;  /* PAIR: the opener's end, to stop the thread */
    void *ctl_th;    /* PAIR: the thread's end */
    zap_domain dom[MAX_DOMAINS];
    size_t n_dom;
    refusal refused[REFUSALS];
} zap;

/* Up to max frames of one ZAP request; returns how many, or -1 (an error; the rest
 * of the message is drained). */
static int zap_recv(void *rep, zmq_msg_t *f, int max)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, rep, 0) < 0) {
            zmq_msg_close(&m);
            if (errno == EINTR && n == 0)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        more = zmq_msg_more(&m);
        if (n < max)
            f[n++] = m;
        else
            zmq_msg_close(&m);
    }
    return n;
}

static int frame_is(zmq_msg_t *m, const char *text)
{
    size_t n = strlen(text);
    return zmq_msg_size(m) == n && memcmp(zmq_msg_data(m), text, n) == 0;
}

static void zap_reply(void *rep, zmq_msg_t *request_id, const char *code, const char *text,
                      const char *user)
{
    zmq_send(rep, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(rep, zmq_msg_data(request_id), zmq_msg_size(request_id), ZMQ_SNDMORE);
    zmq_send(rep, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(rep, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(rep, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(rep, "", 0, 0);
}

/* Whether the refusal of key on domain is to be logged now; *quiet gets the number of
 * refusals of it that were not logged since its last line. */
static int refusal_quiet(zap *z, const uint8_t *key, const char *domain, unsigned *quiet)
{
    int64_t now = (int64_t)fm_now_ms();
    refusal *slot = &z->refused[0];
    for (size_t i = 0; i < REFUSALS; i++) {
        refusal *r = &z->refused[i];
        if (r->domain && strcmp(r->domain, domain) == 0 && memcmp(r->key, key, 32) == 0) {
            if (now - r->logged_ms < REFUSAL_LOG_MS) {
                r->quiet++;
                return 0;
            }
            *quiet = r->quiet;
            r->quiet = 0;
            r->logged_ms = now;
            return 1;
        }
        if (r->logged_ms < slot->logged_ms)
            slot = r; /* the least recently logged: replaced by a new key */
    }
    memcpy(slot->key, key, 32);
    slot->domain = domain;
    slot->logged_ms = now;
    slot->quiet = 0;
    return 1;
}

/* What a refusal's log line adds for the refusals refusal_quiet kept quiet. */
static void quiet_note(unsigned quiet, char more[64])
{
    more[0] = '\0';
    if (quiet)
        snprintf(more, 64, " (and %u times in the last minute)", quiet);
}

/* The domain called name, or NULL. */
static zap_domain *zap_domain_of(zap *z, const char *name)
{
    for (size_t i = 0; i < z->n_dom; i++)
        if (strcmp(z->dom[i].name, name) == 0)
            return &z->dom[i];
    return NULL;
}

/* The entry admitting key in d as its directory is now, or NULL. Under z->lock. */
static const allowed_key *domain_admits(zap_domain *d, const uint8_t *key)
{
    allowlist_refresh(&d->list);
    const allowed_key *k = allowlist_find(&d->list, key);
    if (!k && d->has_extra && memcmp(d->extra.key, key, 32) == 0)
        k = &d->extra;
    return k;
}

/* Decides one request: frames version, request id, domain, address, routing id,
 * mechanism, credentials (the CURVE client's 32-byte public key). */
static void zap_answer(zap *z, zmq_msg_t *f, int n)
{
    char domain[64] = "", address[64] = "";
    if (n >= 3)
        snprintf(domain, sizeof domain, "%.*s", (int)zmq_msg_size(&f[2]),
                 (const char *)zmq_msg_data(&f[2]));
    if (n >= 4)
        snprintf(address, sizeof address, "%.*s", (int)zmq_msg_size(&f[3]),
                 (const char *)zmq_msg_data(&f[3]));
    if (n < 7 || !frame_is(&f[0], "1.0") || !frame_is(&f[5], "CURVE") ||
        zmq_msg_size(&f[6]) != 32) {
        fm_log_warn("refusing a %s connection from %s: not a CURVE handshake", domain,
                    address);
        if (n >= 2)
            zap_reply(z->rep, &f[1], "400", "CURVE only", "");
        return;
    }
    const uint8_t *key = zmq_msg_data(&f[6]);
    pthread_mutex_lock(&z->lock);
    zap_domain *d = zap_domain_of(z, domain);
    const allowed_key *k = d ? domain_admits(d, key) : NULL;
    if (k) {
        /* The user id is the key itself, so that the messages of this connection
         * can be checked against the allowlist later (fm_auth_admits). */
        char z85[FM_AUTH_KEY_TEXT + 1];
        zmq_z85_encode(z85, key, 32);
        fm_log_debug("admitted %s on %s from %s", k->name, domain, address);
        pthread_mutex_unlock(&z->lock);
        zap_reply(z->rep, &f[1], "200", "OK", z85);
        return;
    }
    unsigned quiet = 0;
    int loud = refusal_quiet(z, key, d ? d->name : "", &quiet);
    pthread_mutex_unlock(&z->lock);
    if (loud) {
        char z85[FM_AUTH_KEY_TEXT + 1], more[64];
        zmq_z85_encode(z85, key, 32);
        quiet_note(quiet, more);
        fm_log_warn("refusing a connection to the %s socket from %s: key %s is not in %s "
                    "%s%s", domain[0] ? domain : "(no domain)", address, z85,
                    d ? d->list.setting : "any allowlist", d ? d->list.dir : "", more);
    }
    zap_reply(z->rep, &f[1], "400", "key not admitted", "");
}

static void *zap_main(void *arg)
{
    zap *z = arg;
    for (;;) {
        zmq_pollitem_t it[2] = {{z->rep, 0, ZMQ_POLLIN, 0}, {z->ctl_th, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            fm_log_error("ZAP handler: %s", zmq_strerror(errno));
            break;
        }
        if (it[1].revents & ZMQ_POLLIN)
            break;
        if (!(it[0].revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t f[8];
        int n = zap_recv(z->rep, f, 8);
        if (n < 0) {
            fm_log_error("ZAP handler: %s", zmq_strerror(errno));
            break;
        }
        if (n > 0)
            zap_answer(z, f, n);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
    /* Every server socket is closed by now (fm_auth_close's contract). */
    zmq_close(z->rep);
    zmq_close(z->ctl_th);
    z->rep = z->ctl_th = NULL;
    return NULL;
}

static void zap_free(zap *z)
{
    if (!z)
        return;
    if (z->running) {
        zmq_send(z->ctl_main, "", 0, 0);
        pthread_join(z->th, NULL);
    }
    void *socks[] = {z->rep, z->ctl_th, z->ctl_main};
    for (size_t i = 0; i < 3; i++)
        if (socks[i])
            zmq_close(socks[i]);
    for (size_t i = 0; i < z->n_dom; i++)
        free(z->dom[i].list.keys);
    pthread_mutex_destroy(&z->lock);
    free(z);
}

/* Adds a domain admitting the keys in dir (setting names it in messages). */
static fm_status zap_add(zap *z, const char *name, const char *setting, const char *dir,
                         fm_error *err)
{
    zap_domain *d = &z->dom[z->n_dom++];
    d->name = name;
    d->list.setting = setting;
    snprintf(d->list.dir, sizeof d->list.dir, "%s", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return fm_error_set(err, FM_ERR_IO, "%s %s: %s", setting, dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return fm_error_set(err, FM_ERR_IO, "%s %s: not a directory", setting, dir);
    fm_status st = allowlist_read(&d->list, err);
    if (st != FM_OK)
        return st;
    d->list.mtime = sb.st_mtim;
    d->list.read_once = 1;
    if (d->list.n == 0)
        fm_log_warn("%s %s holds no NAME.key file: nobody is admitted on the %s socket "
                    "until one is added", setting, dir, name);
    return FM_OK;
}

/* Binds the handler's socket and starts its thread: from its return on, every CURVE
 * handshake in ctx is decided by it. */
static fm_status zap_start(zap *z, void *ctx, fm_error *err)
{
    char ctl[64];
    snprintf(ctl, sizeof ctl, "inproc://facemill-zap-%p", (void *)z);
    z->rep = zmq_socket(ctx, ZMQ_REP);
    z->ctl_main = zmq_socket(ctx, ZMQ_PAIR);
    z->ctl_th = zmq_socket(ctx, ZMQ_PAIR);
    int zero = 0;
    if (!z->rep || !z->ctl_main || !z->ctl_th ||
        zmq_setsockopt(z->rep, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(z->ctl_main, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(z->ctl_th, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_bind(z->ctl_th, ctl) != 0 || zmq_connect(z->ctl_main, ctl) != 0)
        return fm_error_set(err, FM_ERR_IO, "ZAP handler: %s", zmq_strerror(errno));
    if (zmq_bind(z->rep, ZAP_ENDPOINT) != 0)
        return fm_error_set(err, FM_ERR_IO, "ZAP handler: cannot bind %s: %s (one handler "
                            "per ZeroMQ context)", ZAP_ENDPOINT, zmq_strerror(errno));
    int rc = pthread_create(&z->th, NULL, zap_main, z);
    if (rc != 0)
        return fm_error_set(err, FM_ERR_IO, "ZAP handler thread: %s", strerror(rc));
    z->running = 1;
    return FM_OK;
}

/* ---- the process's security ----------------------------------------------------- */

struct fm_auth {
    int curve;
    fm_cert own;
    char broker_key[FM_AUTH_KEY_TEXT + 1];
    char sink_key[FM_AUTH_KEY_TEXT + 1];
    zap *zap;
};

/* path, taken in keys_dir when relative, into out. */
static void resolve(const fm_config *c, const char *path, char *out, size_t size)
{
    if (path[0] == '/' || !c->security.keys_dir[0])
        snprintf(out, size, "%s", path);
    else
        snprintf(out, size, "%s/%s", c->security.keys_dir, path);
}

static fm_status need(const char *value, const char *setting, const char *what,
                      fm_error *err)
{
    if (value[0])
        return FM_OK;
    return fm_error_set(err, FM_ERR_CONFIG, "security.cert is set but %s is empty: %s",
                        setting, what);
}

/* Loads the public key of the certificate setting names into key. */
static fm_status load_public(const fm_config *c, const char *value, const char *setting,
                             const char *what, char *key, fm_error *err)
{
    fm_status st = need(value, setting, what, err);
    if (st != FM_OK)
        return st;
    char path[PATH_MAX];
    fm_cert cert;
    resolve(c, value, path, sizeof path);
    if ((st = fm_cert_load(&cert, path, 0, err)) != FM_OK) {
        fm_error_prefix(err, "%s", setting);
        return st;
    }
    memcpy(key, cert.public_key, sizeof cert.public_key);
    return FM_OK;
}

/* An endpoint a role binds: the setting, its value, and who connects to it. */
typedef struct bound {
    const char *key, *endpoint, *peers;
} bound;

/* The endpoints role binds, into b; returns how many. */
static size_t bound_endpoints(const fm_config *c, fm_auth_role role, bound b[3])
{
    if (role == FM_AUTH_BROKER) {
        b[0] = (bound){"broker.clients", c->broker.clients, "client"};
        b[1] = (bound){"broker.workers", c->broker.workers, "worker"};
        b[2] = (bound){"sink.commits", c->sink.commits, "sink"};
        return 3;
    }
    if (role == FM_AUTH_SINK) {
        b[0] = (bound){"sink.results", c->sink.results, "worker"};
        return 1;
    }
    return 0;
}

/* Without CURVE: refuses an endpoint other machines reach, or warns under
 * security.insecure. */
static fm_status check_exposure(const fm_config *c, fm_auth_role role, fm_error *err)
{
    bound b[3];
    size_t n = bound_endpoints(c, role, b);
    for (size_t i = 0; i < n; i++) {
        if (fm_auth_endpoint_is_local(b[i].endpoint))
            continue;
        const char *e = b[i].endpoint;
        if (strncmp(e, "tcp://", 6) && strncmp(e, "ipc://", 6) &&
            strncmp(e, "inproc://", 9))
            return fm_error_set(err, FM_ERR_CONFIG,
                                "%s %s is not an endpoint facemill binds: tcp://HOST:PORT "
                                "(tcp://*:PORT for every interface) or ipc://PATH",
                                b[i].key, e);
        if (!c->security.insecure)
            return fm_error_set(err, FM_ERR_CONFIG,
                                "%s %s can be reached from other machines and no keys are "
                                "set (security.cert): refusing to serve it unencrypted to "
                                "anyone. Set up keys (ops/README.md, \"Security\"), bind a "
                                "local address, or set security.insecure: true",
                                b[i].key, b[i].endpoint);
        fm_log_warn("security.insecure: %s %s is open to the network without CURVE: anyone "
                    "who reaches it is taken for a %s", b[i].key, b[i].endpoint, b[i].peers);
    }
    return FM_OK;
}

static fm_status start_zap(fm_auth *a, const fm_config *c, fm_auth_role role, void *ctx,
                           fm_error *err)
{
    if (!ctx)
        return fm_error_set(err, FM_ERR_INVALID, "fm_auth_open: a server needs a context");
    a->zap = calloc(1, sizeof *a->zap);
    if (!a->zap)
        return fm_error_set(err, FM_ERR_NOMEM, "ZAP handler: out of memory");
    pthread_mutex_init(&a->zap->lock, NULL);
    const struct fm_config_security *s = &c->security;
    char dir[PATH_MAX];
    fm_status st = FM_OK;
    if (role == FM_AUTH_BROKER) {
        const char *names[] = {FM_AUTH_DOMAIN_CLIENTS, FM_AUTH_DOMAIN_WORKERS,
                               FM_AUTH_DOMAIN_SINK};
        const char *settings[] = {"security.clients_dir", "security.workers_dir",
                                  "security.sink_dir"};
        const char *values[] = {s->clients_dir, s->workers_dir, s->sink_dir};
        const char *what[] = {"the directory of the clients' public certificates",
                              "the directory of the workers' public certificates",
                              "the directory of the sink's public certificate"};
        for (size_t i = 0; i < 3 && st == FM_OK; i++) {
            if ((st = need(values[i], settings[i], what[i], err)) != FM_OK)
                break;
            resolve(c, values[i], dir, sizeof dir);
            st = zap_add(a->zap, names[i], settings[i], dir, err);
        }
    } else {
        st = need(s->workers_dir, "security.workers_dir",
                  "the directory of the workers' public certificates", err);
        if (st == FM_OK) {
            resolve(c, s->workers_dir, dir, sizeof dir);
            st = zap_add(a->zap, FM_AUTH_DOMAIN_RESULTS, "security.workers_dir", dir, err);
        }
        if (st == FM_OK) { /* the broker pushes the results of quarantined jobs */
            zap_domain *d = &a->zap->dom[0];
            d->has_extra = 1;
            zmq_z85_decode(d->extra.key, a->broker_key);
            snprintf(d->extra.name, sizeof d->extra.name, "broker");
        }
    }
    if (st == FM_OK)
        st = zap_start(a->zap, ctx, err);
    return st;
}

static fm_status load_keys(fm_auth *a, const fm_config *c, fm_auth_role role, fm_error *err)
{
    const struct fm_config_security *s = &c->security;
    char path[PATH_MAX];
    resolve(c, s->cert, path, sizeof path);
    fm_status st = fm_cert_load(&a->own, path, 1, err);
    if (st != FM_OK) {
        fm_error_prefix(err, "security.cert");
        return st;
    }
    struct stat sb;
    if (stat(path, &sb) == 0 && (sb.st_mode & 0077))
        fm_log_warn("security.cert %s is readable by other users (mode %03o): chmod 600 it",
                    path, (unsigned)(sb.st_mode & 0777));
    if (role != FM_AUTH_BROKER &&
        (st = load_public(c, s->broker_key, "security.broker_key",
                          "the broker's public certificate (NAME.key)", a->broker_key,
                          err)) != FM_OK)
        return st;
    if ((role == FM_AUTH_BROKER || role == FM_AUTH_WORKER) &&
        (st = load_public(c, s->sink_key, "security.sink_key",
                          "the sink's public certificate (NAME.key)", a->sink_key, err)) !=
            FM_OK)
        return st;
    return FM_OK;
}

fm_status fm_auth_open(fm_auth **out, const fm_config *c, fm_auth_role role, void *zmq_ctx,
                       fm_error *err)
{
    *out = NULL;
    fm_auth *a = calloc(1, sizeof *a);
    if (!a)
        return fm_error_set(err, FM_ERR_NOMEM, "security: out of memory");
    fm_status st = FM_OK;
    if (!c->security.cert[0]) {
        if ((st = check_exposure(c, role, err)) != FM_OK)
            goto fail;
        *out = a;
        return FM_OK;
    }
    if (!zmq_has("curve")) {
        st = fm_error_set(err, FM_ERR_UNSUPPORTED, "security.cert is set but this libzmq "
                          "has no CURVE support");
        goto fail;
    }
    a->curve = 1;
    if ((st = load_keys(a, c, role, err)) != FM_OK)
        goto fail;
    if ((role == FM_AUTH_BROKER || role == FM_AUTH_SINK) &&
        (st = start_zap(a, c, role, zmq_ctx, err)) != FM_OK)
        goto fail;
    *out = a;
    return FM_OK;
fail:
    fm_auth_close(&a);
    return st;
}

int fm_auth_curve(const fm_auth *a)
{
    return a && a->curve;
}

int fm_auth_admits(const fm_auth *a, const char *domain, const char *user, const char *who)
{
    if (!a || !a->curve || !a->zap)
        return 1;
    uint8_t key[32];
    if (strlen(user) != FM_AUTH_KEY_TEXT || !zmq_z85_decode(key, user))
        return 0; /* CURVE messages carry the key the handler gave them */
    zap *z = a->zap;
    pthread_mutex_lock(&z->lock);
    zap_domain *d = zap_domain_of(z, domain);
    const allowed_key *k = d ? domain_admits(d, key) : NULL;
    unsigned quiet = 0;
    int loud = !k && refusal_quiet(z, key, d ? d->name : "", &quiet);
    if (loud) {
        char more[64];
        quiet_note(quiet, more);
        fm_log_warn("refusing the messages of %s on the %s socket: key %s is no longer in %s "
                    "%s%s", who && who[0] ? who : "a peer", domain, user,
                    d ? d->list.setting : "any allowlist", d ? d->list.dir : "", more);
    }
    pthread_mutex_unlock(&z->lock);
    return k != NULL;
}

static fm_status sockopt(void *sock, int opt, const void *v, size_t len, const char *what,
                         fm_error *err)
{
    if (zmq_setsockopt(sock, opt, v, len) == 0)
        return FM_OK;
    return fm_error_set(err, FM_ERR_IO, "%s: %s", what, zmq_strerror(errno));
}

fm_status fm_auth_server(const fm_auth *a, void *sock, const char *domain, fm_error *err)
{
    if (!fm_auth_curve(a))
        return FM_OK;
    int one = 1;
    fm_status st;
    if ((st = sockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one, "ZMQ_CURVE_SERVER", err)) !=
            FM_OK ||
        (st = sockopt(sock, ZMQ_CURVE_SECRETKEY, a->own.secret_key, FM_AUTH_KEY_TEXT,
                      "ZMQ_CURVE_SECRETKEY", err)) != FM_OK ||
        (st = sockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain), "ZMQ_ZAP_DOMAIN",
                      err)) != FM_OK)
        return st;
    return FM_OK;
}

fm_status fm_auth_client(const fm_auth *a, void *sock, fm_auth_server_id to, fm_error *err)
{
    if (!fm_auth_curve(a))
        return FM_OK;
    const char *server = to == FM_AUTH_TO_SINK ? a->sink_key : a->broker_key;
    if (!server[0]) /* fm_auth_open loads the keys of the servers a role connects to */
        return fm_error_set(err, FM_ERR_INVALID, "no public key of the %s for this role",
                            to == FM_AUTH_TO_SINK ? "sink" : "broker");
    fm_status st;
    if ((st = sockopt(sock, ZMQ_CURVE_SERVERKEY, server, FM_AUTH_KEY_TEXT,
                      "ZMQ_CURVE_SERVERKEY", err)) != FM_OK ||
        (st = sockopt(sock, ZMQ_CURVE_PUBLICKEY, a->own.public_key, FM_AUTH_KEY_TEXT,
                      "ZMQ_CURVE_PUBLICKEY", err)) != FM_OK ||
        (st = sockopt(sock, ZMQ_CURVE_SECRETKEY, a->own.secret_key, FM_AUTH_KEY_TEXT,
                      "ZMQ_CURVE_SECRETKEY", err)) != FM_OK)
        return st;
    return FM_OK;
}

void fm_auth_close(fm_auth **ap)
{
    if (!ap || !*ap)
        return;
    fm_auth *a = *ap;
    zap_free(a->zap);
    memset(a, 0, sizeof *a); /* the secret key */
    free(a);
    *ap = NULL;
}

/* ---- handshake watch -------------------------------------------------------------- */

/* A PAIR of ctx receiving sock's monitor events of mask (name: the inproc address's
 * stem), or NULL (nothing watched then). */
static void *watch_events(void *ctx, void *sock, int mask, const char *name)
{
    static unsigned long serial;
    char addr[96];
    snprintf(addr, sizeof addr, "inproc://fm-%s-%ld-%lu", name, (long)getpid(),
             __atomic_add_fetch(&serial, 1, __ATOMIC_RELAXED));
    if (zmq_socket_monitor(sock, addr, mask) != 0)
        return NULL;
    void *mon = zmq_socket(ctx, ZMQ_PAIR);
    if (mon && zmq_connect(mon, addr) == 0)
        return mon;
    if (mon)
        zmq_close(mon);
    zmq_socket_monitor(sock, NULL, 0);
    return NULL;
}

/* The next event a watch received, without waiting: 1 with its id and value, 0 when
 * none is there. */
/* Stops the monitor of sock (may be NULL) and closes its PAIR mon. */
static void close_monitor(void *sock, void *mon)
{
    if (!mon)
        return;
    if (sock)
        zmq_socket_monitor(sock, NULL, 0);
    zmq_close(mon);
}

static int next_event(void *mon, uint16_t *id, uint32_t *value)
{
    for (;;) {
        uint8_t ev[6];
        char ep[256];
        int n = zmq_recv(mon, ev, sizeof ev, ZMQ_DONTWAIT);
        if (n < 0)
            return 0;
        zmq_recv(mon, ep, sizeof ep, ZMQ_DONTWAIT); /* the endpoint: a second frame */
        if (n != 6)
            continue;
        memcpy(id, ev, 2);
        memcpy(value, ev + 2, 4);
        return 1;
    }
}

/* A client's watch: the monitor, and the handshakes cut short since the last one
 * that succeeded. */
typedef struct auth_watch {
    void *mon;
    int cut;
} auth_watch;

/* Handshakes cut short in a row before a watch calls it a refusal: a peer that drops
 * this side's handshake without a word (a broker with CurveZMQ keys often closes on
 * a client without them before that client has read the mechanism it offers, and a
 * run of such attempts ends in a timeout instead of the reason). One cut, a broker
 * restarting mid-handshake, is no refusal: ZeroMQ tries again by itself. */
#define WATCH_CUTS 3

void *fm_auth_watch(void *ctx, void *sock)
{
    auth_watch *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->mon = watch_events(ctx, sock,
                          ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                              ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                              ZMQ_EVENT_HANDSHAKE_SUCCEEDED,
                          "handshake");
    if (!w->mon) {
        free(w);
        return NULL;
    }
    return w;
}

int fm_auth_watch_failed(void *watch, const char *peer, char *why, size_t size)
{
    auth_watch *w = watch;
    int failed = 0;
    uint16_t id;
    uint32_t value;
    while (w && next_event(w->mon, &id, &value)) {
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
            w->cut = 0;
            continue;
        }
        if (id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
            if (++w->cut < WATCH_CUTS)
                continue;
            snprintf(why, size, "the handshake with %s was cut short %d times in a row: one "
                     "side has CurveZMQ keys and the other none, most likely "
                     "(security.cert, security.broker_key)", peer, w->cut);
            failed = 1;
            continue;
        }
        failed = 1;
        if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
            snprintf(why, size, "%s refused this program's key (security.cert): the key is "
                     "not in its allowlist for this role (ZAP status %u)", peer, value);
        else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
                 value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
            snprintf(why, size, "the handshake with %s failed: one side has CurveZMQ keys "
                     "and the other none (security.cert, security.broker_key)", peer);
        else if (id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
                 value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
            snprintf(why, size, "the CurveZMQ handshake with %s failed: its key is not the "
                     "one this program expects (security.broker_key or security.sink_key)",
                     peer);
        else
            snprintf(why, size, "the handshake with %s failed (protocol error 0x%x)", peer,
                     value);
    }
    return failed;
}

/* ---- refused handshakes on a server socket ------------------------------------ */

struct fm_auth_refusals {
    void *mon;             /* a monitor PAIR of the server socket */
    char what[48];         /* "broker.workers": the socket, for the log */
    int64_t next_log;      /* fm_now_ms() from which the counts are logged again */
    long plain, crypto, other, cut; /* handshakes since the last log line: see poll */
};

fm_auth_refusals *fm_auth_refusals_open(const fm_auth *a, void *ctx, void *sock,
                                        const char *what)
{
    if (!fm_auth_curve(a))
        return NULL;
    fm_auth_refusals *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    /* with NO_DETAIL: a peer without keys is often cut off by its own side, which
     * sees the mismatch first, before this side has read its mechanism */
    if (!(r->mon = watch_events(ctx, sock,
                                ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                    ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                                "refusals"))) {
        free(r);
        return NULL;
    }
    snprintf(r->what, sizeof r->what, "%s", what);
    return r;
}

void fm_auth_refusals_poll(fm_auth_refusals *r)
{
    if (!r)
        return;
    uint16_t id;
    uint32_t value;
    while (next_event(r->mon, &id, &value)) {
        if (id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            r->cut++;
        else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
            r->plain++;
        else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
            r->crypto++;
        else
            r->other++;
    }
    const long refused = r->plain + r->crypto + r->other;
    const int64_t now = (int64_t)fm_now_ms();
    if (!refused && !r->cut)
        return;
    if (now < r->next_log)
        return;
    /* The first at once, then at most one line a minute: a scanner or a peer retrying
     * every second must not flood the log. Connections cut during the handshake alone
     * (health checks and port scans look the same) are information, not a warning. */
    FM_LOG(refused ? FM_LOG_WARN : FM_LOG_INFO,
                 "handshakes refused on the %s socket%s: %ld without CurveZMQ keys (a peer "
                 "without security.cert), %ld with another server key, %ld other protocol "
                 "errors, %ld cut short (a peer without keys that saw the mismatch first, a "
                 "scanner, a health check); ZeroMQ does not report their addresses",
                 r->what, r->next_log ? " in the last minute" : "", r->plain, r->crypto,
                 r->other, r->cut);
    r->plain = r->crypto = r->other = r->cut = 0;
    r->next_log = now + 60000;
}

void fm_auth_refusals_close(fm_auth_refusals **r, void *sock)
{
    if (!r || !*r)
        return;
    close_monitor(sock, (*r)->mon);
    free(*r);
    *r = NULL;
}

void fm_auth_watch_close(void *sock, void *watch)
{
    auth_watch *w = watch;
    if (!w)
        return;
    close_monitor(sock, w->mon);
    free(w);
}
