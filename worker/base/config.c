/* config.c - the settings table and everything that reads or writes it: defaults,
 * the YAML loader (libyaml event API), "key=value" assignments, the command-line
 * options, dump and describe.
 *
 * Why a table: every setting's type, default, bounds and help live in one line, so
 * the loader, the --set parser, the dump, the description and the tests cannot
 * disagree, and adding a setting is one line here plus one field in config.h.
 *
 * The loader walks libyaml events with one event held at a time (advance() releases
 * the previous one), so every event is released on every path, errors included.
 */
#define _GNU_SOURCE /* memfd_create */
#include "config-impl.h"
#include "facemill/config.h"
#include "facemill/file.h"
#include "facemill/log.h"

#include <yaml.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the table ---------------------------------------------------------------- */

static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};
/* Indexed by fm_broker_fsync (include/facemill/broker.h). */
static const char *const broker_fsync_names[] = {"always", "batch", "off", NULL};
/* Indexed by fm_detect_mode. */
static const char *const detect_mode_names[] = {"mtcnn", "aligned", "cropped", NULL};
_Static_assert(FM_DETECT_MTCNN == 0 && FM_DETECT_ALIGNED == 1 && FM_DETECT_CROPPED == 2,
               "detect_mode_names is indexed by fm_detect_mode");
/* Indexed by fm_detect_fallback. */
static const char *const detect_fallback_names[] = {"none", "cropped", NULL};
/* In the order of the FM_FORMAT_* bits (config.h). */
static const char *const decode_format_names[] = {"jpeg", "png",  "webp",
                                                  "heic", "avif", "tiff", NULL};
_Static_assert(FM_FORMAT_TIFF == 1 << 5 && FM_FORMAT_ALL == (1 << 6) - 1,
               "decode_format_names follows the FM_FORMAT_* bits");
_Static_assert(FM_FALLBACK_NONE == 0 && FM_FALLBACK_CROPPED == 1,
               "detect_fallback_names is indexed by fm_detect_fallback");
_Static_assert(FM_LOG_ERROR == 0 && FM_LOG_WARN == 1 && FM_LOG_INFO == 2 &&
                   FM_LOG_DEBUG == 3,
               "log_level_names is indexed by fm_log_level");

/* Offset of field f of fm_config, refusing to compile unless f has type ctype. */
typedef char config_string[FM_CONFIG_STRING_MAX];
#define FIELD(f, ctype) _Generic(&((fm_config *)0)->f, ctype *: offsetof(fm_config, f))

#define SET_BOOL(k, f, d, h)                                                            \
    {.key = (k), .type = FM_CONFIG_BOOL, .offset = FIELD(f, bool), .def_int = (d),      \
     .help = (h)}
#define SET_INT(k, f, d, lo, hi, h)                                                     \
    {.key = (k), .type = FM_CONFIG_INT, .offset = FIELD(f, int64_t), .def_int = (d),    \
     .min_int = (lo), .max_int = (hi), .help = (h)}
#define SET_FLOAT(k, f, d, lo, hi, h)                                                   \
    {.key = (k), .type = FM_CONFIG_FLOAT, .offset = FIELD(f, double), .def_float = (d), \
     .min_float = (lo), .max_float = (hi), .help = (h)}
#define SET_STRING(k, f, d, minlen, h)                                                  \
    {.key = (k), .type = FM_CONFIG_STRING,                                              \
     .offset = FIELD(f, config_string), .def_string = (d),                 \
     .min_int = (minlen), .max_int = FM_CONFIG_STRING_MAX - 1, .help = (h)}
#define SET_ENUM(k, f, d, allowed, h)                                                   \
    {.key = (k), .type = FM_CONFIG_ENUM, .offset = FIELD(f, int), .def_int = (d),       \
     .names = (allowed), .help = (h)}
#define SET_SET(k, f, d, allowed, h)                                                    \
    {.key = (k), .type = FM_CONFIG_SET, .offset = FIELD(f, int), .def_int = (d),        \
     .names = (allowed), .help = (h)}

/* Keys sharing a section must be next to each other (dump writes one mapping per
 * section, in this order). */
const fm_config_setting fm_config_settings[] = {
    SET_ENUM("log.level", log.level, FM_LOG_INFO, log_level_names,
             "least severe message logged: error, warn, info or debug"),
    SET_STRING("log.file", log.file, "", 0,
               "file facemill-broker, -sink and -worker append their log to (reopened on "
               "SIGHUP, for logrotate); empty: stderr"),
    SET_INT("engine.threads", engine.threads, 1, 1, 64,
            "OpenBLAS threads per process; keep processes x threads <= cores"),
    SET_STRING("engine.blas_kernels", engine.blas_kernels, "auto", 1,
               "OpenBLAS kernel set: auto (the best for the CPU when OpenBLAS picked one "
               "for an older instruction set, after a self-check), keep (OpenBLAS's own "
               "choice) or a name (Haswell, Zen, SkylakeX, ...); OPENBLAS_CORETYPE in the "
               "environment wins"),
    SET_STRING("models.dir", models.dir, "", 0,
               "a directory searched for model files before the model search path "
               "(FACEMILL_MODELS, the user's and the install's data directories); empty: "
               "the search path alone"),
    SET_INT("decode.max_pixels", decode.max_pixels, 100000000, 1, 1000000000,
            "images with more pixels (width x height) are refused before allocating"),
    SET_INT("decode.max_bytes", decode.max_bytes, 67108864, 1, 1073741824,
            "encoded images larger than this many bytes are refused"),
    SET_SET("decode.formats", decode.formats, FM_FORMAT_ALL, decode_format_names,
            "the image formats decoded, separated by commas; any other is an "
            "'unsupported' error result before its decoder reads a byte (each decoder is "
            "code that reads what strangers sent: leave out what an archive does not hold)"),
    SET_ENUM("detect.mode", detect.mode, FM_DETECT_MTCNN, detect_mode_names,
             "how faces are found: mtcnn (the detector), aligned (each image is one face "
             "aligned as the backbone's chips) or cropped (each image is one upright "
             "face cropped like UTKFace's chips); the last two skip detection"),
    SET_INT("detect.min_face", detect.min_face, 20, 8, 10000,
            "smallest face searched for, in pixels; larger is faster (fewer pyramid "
            "levels)"),
    SET_FLOAT("detect.min_face_frac", detect.min_face_frac, 0.025, 0.0, 0.5,
              "smallest face searched for, as a fraction of the image's long side: the "
              "pyramid levels for smaller faces are skipped, so large photos cost about "
              "what small ones do; 0: min_face alone"),
    SET_INT("detect.max_side", detect.max_side, 1600, 64, 16384,
            "maximum working resolution: the long side of the image the detector sees"),
    SET_FLOAT("detect.scale_factor", detect.scale_factor, 0.709, 0.3, 0.95,
              "ratio between image pyramid levels; closer to 1 finds more, slower"),
    SET_FLOAT("detect.pnet_threshold", detect.pnet_threshold, 0.6, 0.0, 1.0,
              "P-Net score a window needs to go on to R-Net"),
    SET_FLOAT("detect.rnet_threshold", detect.rnet_threshold, 0.7, 0.0, 1.0,
              "R-Net score a candidate needs to go on to O-Net"),
    SET_FLOAT("detect.onet_threshold", detect.onet_threshold, 0.7, 0.0, 1.0,
              "O-Net score a face needs to be reported"),
    SET_INT("detect.max_faces", detect.max_faces, 64, 1, 10000,
            "most faces reported per image (the highest scores are kept)"),
    SET_FLOAT("detect.pad", detect.pad, 0.0, 0.0, 1.0,
              "gray border added around the image before detection, as a fraction of its "
              "long side (for tightly cropped faces)"),
    SET_ENUM("detect.fallback", detect.fallback, FM_FALLBACK_NONE, detect_fallback_names,
             "an image where the detector finds no face: none (no face) or cropped (taken "
             "as one upright face cropped like UTKFace's chips, with score 0; for "
             "archives of face chips, where every image is a face)"),
    SET_BOOL("detect.retry", detect.retry, 1,
             "a second look at an image where no face was found, with the lower retry_* "
             "thresholds (grayscale, over-exposed, turned or partly covered faces); "
             "false: one pass"),
    SET_FLOAT("detect.retry_pnet_threshold", detect.retry_pnet_threshold, 0.5, 0.0, 1.0,
              "the second look's P-Net threshold"),
    SET_FLOAT("detect.retry_rnet_threshold", detect.retry_rnet_threshold, 0.6, 0.0, 1.0,
              "the second look's R-Net threshold"),
    SET_FLOAT("detect.retry_onet_threshold", detect.retry_onet_threshold, 0.6, 0.0, 1.0,
              "the second look's O-Net threshold"),
    SET_STRING("embed.backbone", embed.backbone, "dlib_resnet_ft.fmm", 1,
               "backbone model file: a name found through the model search path, or an "
               "absolute or ./ path; "
               "several separated by commas make an ensemble (one heads file each)"),
    SET_INT("embed.batch", embed.batch, 16, 1, 1024,
            "aligned faces (mirror images included) per backbone call"),
    SET_FLOAT("embed.tta_zoom", embed.tta_zoom, 0.0, 0.0, 0.3,
              "test-time augmentation for the heads: besides the aligned face, views "
              "zoomed out and in by this fraction, features averaged (3x the backbone "
              "work); 0: off"),
    SET_BOOL("embed.mirror", embed.mirror, 1,
             "heads trained on the face and its mirror image read both (the default); "
             "false: the face alone, half the backbone work"),
    SET_FLOAT("embed.mirror_age_std", embed.mirror_age_std, 0.0, 0.0, 1000.0,
              "with embed.mirror, the mirror view only for faces the face alone leaves "
              "unsure: an age spread of at least this many years, or a probability "
              "at most embed.mirror_prob (6: half the backbone work on chips); 0: every "
              "face (the default)"),
    SET_FLOAT("embed.mirror_prob", embed.mirror_prob, 0.6, 0.0, 1.0,
              "a face whose gender or ethnicity probability from the face alone is at "
              "most this gets the mirror view (embed.mirror_age_std)"),
    SET_STRING("heads.model", heads.model, "heads_dlib_ft.fmm", 0,
               "attribute heads model file, found like embed.backbone (for an ensemble, one per backbone, separated "
               "by commas); empty: boxes and landmarks only"),
    SET_FLOAT("heads.gender_min_prob", heads.gender_min_prob, 0.0, 0.0, 1.0,
              "abstain on gender when its most probable class has a lower probability: "
              "gender is null in the results, gender_probs are still given; 0: never "
              "(0.80 recommended for fewer, surer answers, models/EVALUATION.md)"),
    SET_FLOAT("heads.race_min_prob", heads.race_min_prob, 0.0, 0.0, 1.0,
              "abstain on ethnicity when its most probable class has a lower probability: "
              "race is null in the results, race_probs are still given; 0: never"),
    SET_STRING("broker.clients", broker.clients, "tcp://127.0.0.1:5570", 1,
               "broker ROUTER endpoint clients connect to (the broker binds it)"),
    SET_STRING("broker.workers", broker.workers, "tcp://127.0.0.1:5571", 1,
               "broker ROUTER endpoint workers connect to (the broker binds it)"),
    SET_STRING("broker.journal", broker.journal, "facemill-journal.db", 1,
               "SQLite journal of accepted jobs; a restarted broker re-queues from it"),
    SET_ENUM("broker.fsync", broker.fsync, 0, broker_fsync_names,
             "journal durability: always (sync every submit), batch (crash-safe), off"),
    SET_INT("broker.max_attempts", broker.max_attempts, 3, 1, 1000,
            "dispatches (failures, timeouts, lost workers) before a job is quarantined"),
    SET_INT("broker.heartbeat_ms", broker.heartbeat_ms, 1000, 10, 600000,
            "heartbeat interval between broker and workers/sink, milliseconds"),
    SET_INT("broker.worker_expiry_ms", broker.worker_expiry_ms, 5000, 20, 3600000,
            "silence after which a worker (or, for a worker, the broker) is dead"),
    SET_INT("broker.job_timeout_ms", broker.job_timeout_ms, 600000, 10, 86400000,
            "longest a worker may hold a job, and longest a done job waits for commit"),
    SET_INT("broker.max_queue", broker.max_queue, 10000, 1, 100000000,
            "jobs held (queued, at workers, awaiting commit) at which clients are told "
            "to slow down"),
    SET_INT("broker.max_queue_bytes", broker.max_queue_bytes, 4294967296LL, 1024,
            1099511627776LL,
            "bytes of job bodies held (queued, at workers, awaiting commit) at which "
            "clients are told to slow down"),
    SET_INT("broker.max_submit_jobs", broker.max_submit_jobs, 10000, 1, 1000000,
            "most jobs one Submit may carry; a larger Submit is refused whole"),
    SET_INT("broker.max_submit_bytes", broker.max_submit_bytes, 68157440, 1024,
            2147483647, "largest Submit in bytes; a larger one is refused whole"),
    SET_INT("broker.max_credit", broker.max_credit, 64, 1, 4096,
            "most jobs the broker gives one worker process at once, whatever credit it "
            "asks for"),
    SET_STRING("sink.results", sink.results, "tcp://127.0.0.1:5573", 1,
               "sink PULL endpoint workers and the broker push results to (sink binds)"),
    SET_STRING("sink.commits", sink.commits, "tcp://127.0.0.1:5572", 1,
               "broker ROUTER endpoint the sink reports commits to (broker binds)"),
    SET_STRING("sink.db", sink.db, "facemill-results.db", 1,
               "SQLite results database the sink writes (WAL mode)"),
    SET_INT("sink.batch", sink.batch, 256, 1, 100000,
            "most results the sink stores per transaction"),
    SET_INT("sink.batch_ms", sink.batch_ms, 200, 0, 60000,
            "longest a received result waits for its transaction to commit, ms"),
    SET_INT("net.max_msg_size", net.max_msg_size, 68157440, 1024, 2147483647,
            "largest message accepted from the network, bytes (ZMQ_MAXMSGSIZE)"),
    SET_STRING("security.cert", security.cert, "", 0,
               "this program's secret certificate (NAME.key_secret, made by facemill "
               "keygen); set, every socket uses CurveZMQ; empty: none"),
    SET_STRING("security.keys_dir", security.keys_dir, "", 0,
               "directory the other security paths are taken in when relative; empty: the "
               "working directory"),
    SET_STRING("security.broker_key", security.broker_key, "", 0,
               "the broker's public certificate (NAME.key): clients, workers and the sink "
               "connect with it"),
    SET_STRING("security.sink_key", security.sink_key, "", 0,
               "the sink's public certificate (NAME.key): workers and the broker push "
               "results with it"),
    SET_STRING("security.clients_dir", security.clients_dir, "", 0,
               "broker: directory of the public certificates (*.key) of the clients it "
               "admits on broker.clients"),
    SET_STRING("security.workers_dir", security.workers_dir, "", 0,
               "broker and sink: directory of the public certificates (*.key) of the "
               "workers admitted on broker.workers and sink.results"),
    SET_STRING("security.sink_dir", security.sink_dir, "", 0,
               "broker: directory of the public certificates (*.key) of the sinks it admits "
               "on sink.commits"),
    SET_BOOL("security.insecure", security.insecure, false,
             "let the broker and the sink serve an endpoint other machines reach without "
             "keys (warned at every start); false: they refuse to start"),
    SET_INT("worker.processes", worker.processes, 0, 0, 4096,
            "pipeline processes of facemill-worker; 0: one per core"),
    SET_INT("worker.credit", worker.credit, 4, 1, 4096,
            "jobs each worker process holds (and batches) at once"),
    SET_STRING("worker.name", worker.name, "", 0,
               "worker name in status and results (NAME:PID/INDEX; at most 100 bytes of "
               "UTF-8 without control characters); empty: host name"),
    SET_STRING("worker.path_root", worker.path_root, "", 0,
               "directory by-path jobs are confined to (files beneath it only, no link "
               "out of it); empty: by-path jobs fail"),
    SET_INT("client.chunk", client.chunk, 64, 1, 100000,
            "jobs per Submit message of facemill submit/label"),
    SET_INT("client.chunk_bytes", client.chunk_bytes, 16777216, 1024, 2147483647,
            "image bytes per Submit message (a single larger image goes alone)"),
    SET_INT("client.progress_ms", client.progress_ms, 5000, 100, 3600000,
            "interval of the plain progress lines when output is not a terminal, ms"),
    SET_INT("client.retry_ms", client.retry_ms, 10000, 100, 3600000,
            "a Submit the broker has not answered is sent again after this long, ms"),
    SET_STRING("metrics.file", metrics.file, "", 0,
               "file facemill-broker and facemill-sink replace with their metrics in the "
               "Prometheus text format (node_exporter's textfile collector); %n becomes "
               "broker or sink; empty: none"),
    SET_INT("metrics.interval_ms", metrics.interval_ms, 15000, 100, 3600000,
            "how often metrics.file is written, ms"),
};

#define N_SETTINGS (sizeof fm_config_settings / sizeof fm_config_settings[0])
const size_t fm_config_settings_count = N_SETTINGS;

/* Longest dotted key the loader builds; longer keys cannot name a setting. */
#define KEY_MAX 256

/* ---- small helpers ----------------------------------------------------------- */

/* Copies len bytes of text into buf for an error message: at most 48 of them,
 * control characters as '?', "..." when cut. */
static const char *shown(char *buf, size_t size, const char *text, size_t len)
{
    size_t max = 48, n = 0;
    for (size_t i = 0; i < len && i < max && n + 1 < size; i++) {
        unsigned char ch = (unsigned char)text[i];
        buf[n++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (len > max && n + 4 < size) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* "error, warn, info, debug" */
static const char *name_list(char *buf, size_t size, const char *const *names)
{
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; names[i]; i++) {
        int w = snprintf(buf + n, size - n, "%s%s", i ? ", " : "", names[i]);
        if (w < 0 || (size_t)w >= size - n)
            break;
        n += (size_t)w;
    }
    return buf;
}

static bool text_is(const char *text, size_t len, const char *word)
{
    return strlen(word) == len && strncasecmp(text, word, len) == 0;
}

static const fm_config_setting *find_setting(const char *key, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *k = fm_config_settings[i].key;
        if (strncmp(k, key, len) == 0 && k[len] == '\0')
            return &fm_config_settings[i];
    }
    return NULL;
}

/* A setting whose key continues key[0..len) with a '.', i.e. key is a section. */
static const fm_config_setting *find_section(const char *key, size_t len)
{
    if (len == 0)
        return NULL;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *k = fm_config_settings[i].key;
        if (strncmp(k, key, len) == 0 && k[len] == '.')
            return &fm_config_settings[i];
    }
    return NULL;
}

/* ---- values ------------------------------------------------------------------ */

/* 0: ok; -1: not an integer; -2: an integer outside int64_t. */
static int parse_int(const char *text, size_t len, int64_t *out)
{
    size_t i = 0;
    if (i < len && (text[i] == '+' || text[i] == '-'))
        i++;
    if (i == len)
        return -1;
    for (size_t j = i; j < len; j++)
        if (text[j] < '0' || text[j] > '9')
            return -1;
    char buf[32];
    if (len >= sizeof buf)
        return -2;
    memcpy(buf, text, len);
    buf[len] = '\0';
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno == ERANGE)
        return -2;
    *out = (int64_t)v;
    return 0;
}

/* 0: ok; -1: not a number; -2: a number too large for a double. Only decimal and
 * exponent notation: no hex floats, inf or nan. */
static int parse_float(const char *text, size_t len, double *out)
{
    bool digit = false;
    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (ch >= '0' && ch <= '9')
            digit = true;
        else if (!strchr("+-.eE", ch) || ch == '\0')
            return -1;
    }
    char buf[128];
    if (!digit || len >= sizeof buf)
        return -1;
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *end;
    double v = strtod(buf, &end);
    if (end != buf + len)
        return -1;
    if (!isfinite(v))
        return -2;
    *out = v == 0 ? 0.0 : v; /* "-0" (or an underflow to it) is stored and written as 0 */
    return 0;
}

/* 1 true, 0 false, -1 neither. */
static int parse_bool(const char *text, size_t len)
{
    if (text_is(text, len, "true") || text_is(text, len, "yes") || text_is(text, len, "on"))
        return 1;
    if (text_is(text, len, "false") || text_is(text, len, "no") || text_is(text, len, "off"))
        return 0;
    return -1;
}

fm_status fm_config_setting_parse(const fm_config_setting *s, const char *text,
                                  size_t len, void *base, fm_error *err)
{
    char show[64];
    char *field = (char *)base + s->offset;
    if (memchr(text, '\0', len))
        return fm_error_set(err, FM_ERR_CONFIG, "%s: value contains a NUL byte", s->key);
    switch (s->type) {
    case FM_CONFIG_BOOL: {
        int b = parse_bool(text, len);
        if (b < 0)
            return fm_error_set(err, FM_ERR_CONFIG, "%s: expected true or false, got '%s'",
                                s->key, shown(show, sizeof show, text, len));
        *(bool *)(void *)field = b != 0;
        return FM_OK;
    }
    case FM_CONFIG_INT: {
        int64_t v = 0;
        int r = parse_int(text, len, &v);
        if (r == -1)
            return fm_error_set(err, FM_ERR_CONFIG, "%s: expected an integer, got '%s'",
                                s->key, shown(show, sizeof show, text, len));
        if (r == -2 || v < s->min_int || v > s->max_int)
            return fm_error_set(err, FM_ERR_CONFIG,
                                "%s: must be between %" PRId64 " and %" PRId64 ", got '%s'",
                                s->key, s->min_int, s->max_int,
                                shown(show, sizeof show, text, len));
        *(int64_t *)(void *)field = v;
        return FM_OK;
    }
    case FM_CONFIG_FLOAT: {
        double v = 0;
        int r = parse_float(text, len, &v);
        if (r == -1)
            return fm_error_set(err, FM_ERR_CONFIG, "%s: expected a number, got '%s'",
                                s->key, shown(show, sizeof show, text, len));
        if (r == -2 || v < s->min_float || v > s->max_float)
            return fm_error_set(err, FM_ERR_CONFIG, "%s: must be between %g and %g, got '%s'",
                                s->key, s->min_float, s->max_float,
                                shown(show, sizeof show, text, len));
        *(double *)(void *)field = v;
        return FM_OK;
    }
    case FM_CONFIG_STRING:
        if ((int64_t)len < s->min_int)
            return s->min_int == 1
                       ? fm_error_set(err, FM_ERR_CONFIG, "%s: must not be empty", s->key)
                       : fm_error_set(err, FM_ERR_CONFIG,
                                      "%s: must be at least %" PRId64 " bytes long", s->key,
                                      s->min_int);
        if ((int64_t)len > s->max_int)
            return fm_error_set(err, FM_ERR_CONFIG,
                                "%s: must be at most %" PRId64 " bytes long, got %zu", s->key,
                                s->max_int, len);
        memcpy(field, text, len);
        field[len] = '\0';
        return FM_OK;
    case FM_CONFIG_ENUM:
        for (int i = 0; s->names[i]; i++)
            if (text_is(text, len, s->names[i])) {
                *(int *)(void *)field = i;
                return FM_OK;
            }
        char list[256];
        return fm_error_set(err, FM_ERR_CONFIG, "%s: '%s' is not one of: %s", s->key,
                            shown(show, sizeof show, text, len),
                            name_list(list, sizeof list, s->names));
    case FM_CONFIG_SET: {
        /* names separated by commas, spaces around them allowed; at least one */
        int bits = 0;
        size_t i = 0;
        for (;;) {
            while (i < len && (text[i] == ' ' || text[i] == '\t'))
                i++;
            size_t j = i;
            while (j < len && text[j] != ',')
                j++;
            size_t k = j;
            while (k > i && (text[k - 1] == ' ' || text[k - 1] == '\t'))
                k--;
            int found = -1;
            for (int n = 0; s->names[n] && found < 0; n++)
                if (k > i && text_is(text + i, k - i, s->names[n]))
                    found = n;
            if (found < 0) {
                char allowed[256];
                return k > i ? fm_error_set(err, FM_ERR_CONFIG,
                                            "%s: '%s' is not one of: %s", s->key,
                                            shown(show, sizeof show, text + i, k - i),
                                            name_list(allowed, sizeof allowed, s->names))
                             : fm_error_set(err, FM_ERR_CONFIG,
                                            "%s: expected names separated by commas, got '%s'",
                                            s->key, shown(show, sizeof show, text, len));
            }
            bits |= 1 << found;
            if (j >= len)
                break;
            i = j + 1;
        }
        *(int *)(void *)field = bits;
        return FM_OK;
    }
    }
    return fm_error_set(err, FM_ERR_INTERNAL, "%s: unknown setting type %d", s->key,
                        (int)s->type);
}

void fm_config_defaults(fm_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const fm_config_setting *s = &fm_config_settings[i];
        char *field = (char *)c + s->offset;
        switch (s->type) {
        case FM_CONFIG_BOOL:
            *(bool *)(void *)field = s->def_int != 0;
            break;
        case FM_CONFIG_INT:
            *(int64_t *)(void *)field = s->def_int;
            break;
        case FM_CONFIG_FLOAT:
            *(double *)(void *)field = s->def_float;
            break;
        case FM_CONFIG_STRING:
            snprintf(field, FM_CONFIG_STRING_MAX, "%s", s->def_string);
            break;
        case FM_CONFIG_ENUM:
        case FM_CONFIG_SET:
            *(int *)(void *)field = (int)s->def_int;
            break;
        }
    }
}

bool fm_config_equal(const fm_config *a, const fm_config *b)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const fm_config_setting *s = &fm_config_settings[i];
        const void *fa = (const char *)a + s->offset, *fb = (const char *)b + s->offset;
        bool same = true;
        switch (s->type) {
        case FM_CONFIG_BOOL:
            same = *(const bool *)fa == *(const bool *)fb;
            break;
        case FM_CONFIG_INT:
            same = *(const int64_t *)fa == *(const int64_t *)fb;
            break;
        case FM_CONFIG_FLOAT:
            same = *(const double *)fa == *(const double *)fb;
            break;
        case FM_CONFIG_STRING:
            same = strncmp(fa, fb, FM_CONFIG_STRING_MAX) == 0;
            break;
        case FM_CONFIG_ENUM:
        case FM_CONFIG_SET:
            same = *(const int *)fa == *(const int *)fb;
            break;
        }
        if (!same)
            return false;
    }
    return true;
}

/* ---- the YAML loader ----------------------------------------------------------- */

/* A key of an open mapping, for duplicate detection: its full dotted path, which is
 * always a prefix of some table key (path points there; no copies). */
typedef struct key_entry {
    const char *path;
    size_t len;
    size_t line; /* 1-based */
} key_entry;

typedef struct loader {
    const char *name; /* for messages */
    const char *data; /* the whole input */
    size_t size;
    yaml_parser_t parser;
    yaml_event_t event;
    bool have_event;
    fm_config *c;     /* the working copy */
    fm_error *err;
    size_t seen_line[N_SETTINGS]; /* 1-based line where setting i was set, 0: not yet */
    key_entry *keys;  /* keys of the open mappings, outermost first */
    size_t nkeys, cap;
} loader;

/* Sets an FM_ERR_CONFIG "NAME:LINE:COL: message" for a position in the input. */
__attribute__((format(printf, 3, 4))) static fm_status at(loader *L, yaml_mark_t m,
                                                          const char *fmt, ...)
{
    char msg[FM_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fm_error_set(L->err, FM_ERR_CONFIG, "%s:%zu:%zu: %s", L->name, m.line + 1,
                        m.column + 1, msg);
}

static fm_status parser_error(loader *L)
{
    const yaml_parser_t *p = &L->parser;
    const char *problem = p->problem ? p->problem : "unknown problem";
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return fm_error_set(L->err, FM_ERR_NOMEM, "%s: out of memory parsing YAML", L->name);
    case YAML_READER_ERROR: {
        /* Reader errors (bad UTF-8, NUL bytes) carry a byte offset, not a mark. */
        yaml_mark_t m = {0};
        for (size_t i = 0; i < p->problem_offset && i < L->size; i++) {
            if (L->data[i] == '\n') {
                m.line++;
                m.column = 0;
            } else {
                m.column++;
            }
        }
        return at(L, m, "%s", problem);
    }
    case YAML_SCANNER_ERROR:
    case YAML_PARSER_ERROR:
        if (p->context)
            return at(L, p->problem_mark, "YAML syntax error: %s (%s at line %zu column %zu)",
                      problem, p->context, p->context_mark.line + 1,
                      p->context_mark.column + 1);
        return at(L, p->problem_mark, "YAML syntax error: %s", problem);
    default:
        return fm_error_set(L->err, FM_ERR_CONFIG, "%s: YAML error: %s", L->name, problem);
    }
}

/* Releases the event held, if any, and reads the next one. */
static fm_status advance(loader *L)
{
    if (L->have_event) {
        yaml_event_delete(&L->event);
        L->have_event = false;
    }
    if (!yaml_parser_parse(&L->parser, &L->event))
        return parser_error(L);
    L->have_event = true;
    return FM_OK;
}

/* An empty plain scalar, "~" or "null": YAML's null. */
static bool is_null(const yaml_event_t *e)
{
    if (e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)e->data.scalar.value;
    size_t n = e->data.scalar.length;
    return n == 0 || (n == 1 && v[0] == '~') || (n == 4 && (strncmp(v, "null", 4) == 0 ||
                                                            strncmp(v, "Null", 4) == 0 ||
                                                            strncmp(v, "NULL", 4) == 0));
}

static const char *node_kind(yaml_event_type_t t)
{
    switch (t) {
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    case YAML_SEQUENCE_START_EVENT:
        return "a sequence";
    case YAML_ALIAS_EVENT:
        return "an alias";
    default:
        return "a scalar";
    }
}

static const char *expected(const fm_config_setting *s, char *buf, size_t size)
{
    switch (s->type) {
    case FM_CONFIG_BOOL:
        return "true or false";
    case FM_CONFIG_INT:
        return "an integer";
    case FM_CONFIG_FLOAT:
        return "a number";
    case FM_CONFIG_STRING:
        return "a string";
    case FM_CONFIG_ENUM: {
        char list[256];
        snprintf(buf, size, "one of %s", name_list(list, sizeof list, s->names));
        return buf;
    }
    case FM_CONFIG_SET: {
        char list[256];
        snprintf(buf, size, "some of %s, separated by commas",
                 name_list(list, sizeof list, s->names));
        return buf;
    }
    }
    return "a value";
}

/* The current event is the value of setting s. */
static fm_status leaf_value(loader *L, const fm_config_setting *s)
{
    const yaml_event_t *e = &L->event;
    char buf[300];
    if (e->type != YAML_SCALAR_EVENT)
        return at(L, e->start_mark, "%s: expected %s, got %s", s->key,
                  expected(s, buf, sizeof buf), node_kind(e->type));
    if (is_null(e))
        return at(L, e->start_mark, "%s: missing value (expected %s)", s->key,
                  expected(s, buf, sizeof buf));
    fm_status st = fm_config_setting_parse(s, (const char *)e->data.scalar.value,
                                           e->data.scalar.length, L->c, L->err);
    if (st != FM_OK)
        fm_error_prefix(L->err, "%s:%zu:%zu", L->name, e->start_mark.line + 1,
                        e->start_mark.column + 1);
    return st;
}

static fm_status push_key(loader *L, const char *path, size_t len, size_t line)
{
    if (L->nkeys == L->cap) {
        size_t cap = L->cap ? 2 * L->cap : 16;
        key_entry *k = realloc(L->keys, cap * sizeof *k);
        if (!k)
            return fm_error_set(L->err, FM_ERR_NOMEM, "%s: out of memory", L->name);
        L->keys = k;
        L->cap = cap;
    }
    L->keys[L->nkeys++] = (key_entry){path, len, line};
    return FM_OK;
}

/* The current event is MAPPING_START of the mapping whose keys continue prefix
 * (prefix[0..plen), empty at the top). Reads up to and including its MAPPING_END. */
static fm_status parse_mapping(loader *L, const char *prefix, size_t plen, int depth)
{
    size_t first = L->nkeys;
    char full[KEY_MAX], show[64];
    fm_status st;
    for (;;) {
        if ((st = advance(L)) != FM_OK)
            return st;
        const yaml_event_t *e = &L->event;
        if (e->type == YAML_MAPPING_END_EVENT) {
            L->nkeys = first;
            return FM_OK;
        }
        yaml_mark_t kmark = e->start_mark;
        if (e->type != YAML_SCALAR_EVENT)
            return at(L, kmark, "expected a setting name, got %s", node_kind(e->type));

        /* The full dotted key. */
        const char *k = (const char *)e->data.scalar.value;
        size_t klen = e->data.scalar.length;
        size_t flen = plen + (plen ? 1 : 0) + klen;
        if (flen >= sizeof full || klen == 0 || memchr(k, '\0', klen)) {
            char part[64];
            return at(L, kmark, "unknown key '%.*s%s%s'", (int)plen, prefix, plen ? "." : "",
                      shown(part, sizeof part, k, klen));
        }
        memcpy(full, prefix, plen);
        if (plen)
            full[plen] = '.';
        memcpy(full + flen - klen, k, klen);
        full[flen] = '\0';

        const fm_config_setting *s = find_setting(full, flen);
        const fm_config_setting *sec = s ? NULL : find_section(full, flen);
        if (!s && !sec)
            return at(L, kmark, "unknown key '%s'", shown(show, sizeof show, full, flen));
        const char *path = s ? s->key : sec->key;
        for (size_t i = first; i < L->nkeys; i++)
            if (L->keys[i].len == flen && memcmp(L->keys[i].path, path, flen) == 0)
                return at(L, kmark, "duplicate key '%s' (first at line %zu)", full,
                          L->keys[i].line);
        if (s) {
            size_t idx = (size_t)(s - fm_config_settings);
            if (L->seen_line[idx])
                return at(L, kmark, "duplicate key '%s' (first at line %zu)", full,
                          L->seen_line[idx]);
            L->seen_line[idx] = kmark.line + 1;
        }
        if ((st = push_key(L, path, flen, kmark.line + 1)) != FM_OK)
            return st;

        /* Its value. */
        if ((st = advance(L)) != FM_OK)
            return st;
        e = &L->event;
        if (s) {
            if ((st = leaf_value(L, s)) != FM_OK)
                return st;
            continue;
        }
        if (e->type == YAML_MAPPING_START_EVENT && depth + 1 < FM_CONFIG_MAX_DEPTH) {
            if ((st = parse_mapping(L, path, flen, depth + 1)) != FM_OK)
                return st;
        } else if (e->type == YAML_SCALAR_EVENT && is_null(e)) {
            /* "detect:" with every key commented out: nothing to set. */
        } else if (e->type == YAML_SCALAR_EVENT) {
            return at(L, e->start_mark, "%s: expected a mapping of settings, got '%s'", full,
                      shown(show, sizeof show, (const char *)e->data.scalar.value,
                            e->data.scalar.length));
        } else {
            return at(L, e->start_mark, "%s: expected a mapping of settings, got %s", full,
                      node_kind(e->type));
        }
    }
}

static fm_status parse_stream(loader *L)
{
    fm_status st;
    char show[64];
    if ((st = advance(L)) != FM_OK)
        return st;
    if (L->event.type != YAML_STREAM_START_EVENT)
        return at(L, L->event.start_mark, "expected the start of a YAML stream");
    for (int docs = 0;; docs++) {
        if ((st = advance(L)) != FM_OK)
            return st;
        if (L->event.type == YAML_STREAM_END_EVENT)
            return FM_OK;
        if (L->event.type != YAML_DOCUMENT_START_EVENT)
            return at(L, L->event.start_mark, "expected a YAML document");
        if (docs > 0)
            return at(L, L->event.start_mark, "only one YAML document is allowed");
        if ((st = advance(L)) != FM_OK)
            return st;
        const yaml_event_t *e = &L->event;
        if (e->type == YAML_MAPPING_START_EVENT) {
            if ((st = parse_mapping(L, "", 0, 0)) != FM_OK)
                return st;
        } else if (e->type == YAML_SCALAR_EVENT && is_null(e)) {
            /* an empty document */
        } else if (e->type == YAML_SCALAR_EVENT) {
            return at(L, e->start_mark, "expected a mapping of settings, got '%s'",
                      shown(show, sizeof show, (const char *)e->data.scalar.value,
                            e->data.scalar.length));
        } else {
            return at(L, e->start_mark, "expected a mapping of settings, got %s",
                      node_kind(e->type));
        }
        if ((st = advance(L)) != FM_OK)
            return st;
        if (L->event.type != YAML_DOCUMENT_END_EVENT)
            return at(L, L->event.start_mark, "expected the end of the YAML document");
    }
}

/* Config files are small; anything larger than this is not one. */
#define FILE_MAX (16u << 20)

fm_status fm_config_load_buffer(fm_config *c, const char *name, const char *data,
                                size_t size, fm_error *err)
{
    fm_status st;
    loader *L = calloc(1, sizeof *L);
    fm_config *work = malloc(sizeof *work);
    if (!L || !work) {
        st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", name);
        goto fail;
    }
    *work = *c;
    L->name = name;
    L->data = data;
    L->size = size;
    L->c = work;
    L->err = err;
    if (!yaml_parser_initialize(&L->parser)) {
        st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", name);
        goto fail;
    }
    yaml_parser_set_input_string(&L->parser, (const unsigned char *)data, size);
    st = parse_stream(L);
    if (L->have_event)
        yaml_event_delete(&L->event);
    yaml_parser_delete(&L->parser);
    if (st == FM_OK)
        *c = *work;
fail:
    if (L)
        free(L->keys);
    free(L);
    free(work);
    return st;
}

/* The configuration at path opened for reading: standard input as it is for
 * "/dev/stdin", else what fm_file_open_stream takes (a file, a pipe another program
 * writes, /dev/null), a named FIFO refused without waiting for a writer. */
static fm_status open_config(const char *path, FILE **fp, fm_error *err)
{
    const char *why = NULL;
    int fd;
    if (strcmp(path, "/dev/stdin") == 0) {
        /* standard input as it is; a file from its start (keep_piped's copy, read
         * again by a re-executed program, or a redirected file) */
        struct stat sb;
        fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 0);
        if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode))
            lseek(fd, 0, SEEK_SET);
    } else {
        fd = fm_file_open_stream(path, &why);
    }
    if (fd >= 0 && !(*fp = fdopen(fd, "rb"))) {
        int e = errno;
        close(fd);
        fd = -1;
        errno = e;
    }
    if (fd < 0)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, why ? why : strerror(errno));
    return FM_OK;
}

/* A configuration read from a pipe (standard input, a shell's <(...)) can be read only
 * once, and the computing programs read theirs again by the same name when they
 * re-execute themselves for OpenBLAS's kernels (blas_select.c): the second read found
 * the pipe empty and ran on the defaults. So the bytes read are put back where the
 * name leads: the descriptor behind "/dev/stdin", "/dev/fd/N" or "/proc/self/fd/N"
 * becomes a file in memory holding them, which any later read finds whole. Other
 * names of a pipe are left as they are. */
static void keep_piped(const char *path, const char *data, size_t size)
{
    int fd = -1, end = 0;
    if (strcmp(path, "/dev/stdin") == 0)
        fd = STDIN_FILENO;
    else if ((sscanf(path, "/dev/fd/%d%n", &fd, &end) != 1 &&
              sscanf(path, "/proc/self/fd/%d%n", &fd, &end) != 1) ||
             path[end] != '\0' || fd < 0)
        return;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISFIFO(sb.st_mode))
        return;
    int m = memfd_create("facemill-config", 0);
    if (m < 0)
        return;
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(m, data + done, size - done);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    if (done == size && lseek(m, 0, SEEK_SET) == 0)
        dup2(m, fd);
    close(m);
}

fm_status fm_config_load_file(fm_config *c, const char *path, fm_error *err)
{
    fm_status st;
    char *data = NULL;
    size_t size = 0, cap = 0;
    FILE *fp = NULL;
    if ((st = open_config(path, &fp, err)) != FM_OK)
        return st;
    for (;;) {
        if (size == cap) {
            if (cap >= FILE_MAX) {
                st = fm_error_set(err, FM_ERR_LIMIT, "%s: larger than %u bytes", path,
                                  FILE_MAX);
                goto fail;
            }
            cap = cap ? 2 * cap : 4096;
            char *grown = realloc(data, cap);
            if (!grown) {
                st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
                goto fail;
            }
            data = grown;
        }
        size_t n = fread(data + size, 1, cap - size, fp);
        size += n;
        if (n == 0) {
            if (ferror(fp)) {
                st = fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
                goto fail;
            }
            break;
        }
    }
    keep_piped(path, data, size);
    st = fm_config_load_buffer(c, path, data, size, err);
fail:
    free(data);
    fclose(fp);
    return st;
}

/* ---- assignments and the command line ------------------------------------------ */

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

fm_status fm_config_set(fm_config *c, const char *assignment, fm_error *err)
{
    char show[64];
    const char *eq = strchr(assignment, '=');
    if (!eq)
        return fm_error_set(err, FM_ERR_CONFIG, "'%s': expected KEY=VALUE",
                            shown(show, sizeof show, assignment, strlen(assignment)));
    const char *k = assignment, *kend = eq;
    while (k < kend && is_space(*k))
        k++;
    while (kend > k && is_space(kend[-1]))
        kend--;
    const char *v = eq + 1, *vend = eq + strlen(eq);
    while (v < vend && is_space(*v))
        v++;
    while (vend > v && is_space(vend[-1]))
        vend--;
    size_t klen = (size_t)(kend - k);
    const fm_config_setting *s = find_setting(k, klen);
    if (!s) {
        const fm_config_setting *sec = find_section(k, klen);
        if (sec)
            return fm_error_set(err, FM_ERR_CONFIG,
                                "'%s' is a section, not a setting (e.g. %s)",
                                shown(show, sizeof show, k, klen), sec->key);
        return fm_error_set(err, FM_ERR_CONFIG, "unknown key '%s'",
                            shown(show, sizeof show, k, klen));
    }
    return fm_config_setting_parse(s, v, (size_t)(vend - v), c, err);
}

/* One configuration option at argv[i]: sets *value (the option's argument) and
 * *used (how many argv slots it takes: 1 or 2). Returns 'c' for --config, 's' for
 * --set, 0 for anything else, -1 for an option missing its argument. */
static int config_option(int argc, char **argv, int i, const char **value, int *used)
{
    static const struct {
        const char *name;
        int kind;
    } opts[] = {{"--config", 'c'}, {"--set", 's'}};
    for (size_t o = 0; o < sizeof opts / sizeof opts[0]; o++) {
        size_t n = strlen(opts[o].name);
        const char *a = argv[i];
        if (strncmp(a, opts[o].name, n) != 0)
            continue;
        if (a[n] == '=') {
            *value = a + n + 1;
            *used = 1;
        } else if (a[n] == '\0') {
            if (i + 1 >= argc)
                return -1;
            *value = argv[i + 1];
            *used = 2;
        } else {
            continue;
        }
        return **value ? opts[o].kind : -1;
    }
    return 0;
}

fm_status fm_config_apply(fm_config *c, const char *path, const char *const *sets,
                          int n_sets, fm_error *err)
{
    fm_config *work = malloc(sizeof *work);
    if (!work)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    *work = *c;
    fm_status st = FM_OK;
    if (path) {
        st = fm_config_load_file(work, path, err);
    } else {
        const char *env = getenv(FM_CONFIG_ENV);
        if (env && *env && (st = fm_config_load_file(work, env, err)) != FM_OK)
            fm_error_prefix(err, "%s", FM_CONFIG_ENV);
    }
    for (int i = 0; st == FM_OK && i < n_sets; i++)
        if ((st = fm_config_set(work, sets[i], err)) != FM_OK)
            fm_error_prefix(err, "--set");
    if (st == FM_OK)
        *c = *work;
    free(work);
    return st;
}

fm_status fm_config_from_args(fm_config *c, int *argc, char **argv, fm_error *err)
{
    const char *path = NULL, *value;
    int used, n_sets = 0;
    /* argv[0] is never an option: slots enough for every --set */
    const char **sets = malloc((size_t)(*argc > 0 ? *argc : 1) * sizeof *sets);
    if (!sets)
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    /* Pass 1: syntax, the file and the assignments in order. */
    for (int i = 1; i < *argc && strcmp(argv[i], "--") != 0; i++) {
        int kind = config_option(*argc, argv, i, &value, &used);
        fm_status bad = FM_OK;
        if (kind < 0)
            bad = fm_error_set(err, FM_ERR_CONFIG, "%s needs a%s argument", argv[i],
                               strncmp(argv[i], "--config", 8) == 0 ? " FILE" : " KEY=VALUE");
        else if (kind == 'c' && path)
            bad = fm_error_set(err, FM_ERR_CONFIG, "--config given more than once");
        if (bad != FM_OK) {
            free(sets);
            return bad;
        }
        if (kind == 'c')
            path = value;
        else if (kind == 's')
            sets[n_sets++] = value;
        if (kind)
            i += used - 1;
    }
    fm_status st = fm_config_apply(c, path, sets, n_sets, err);
    free(sets);
    if (st != FM_OK)
        return st;

    /* Pass 2: remove the options from argv. */
    int out = 1, i = 1;
    while (i < *argc) {
        if (strcmp(argv[i], "--") == 0)
            break;
        int kind = config_option(*argc, argv, i, &value, &used);
        if (kind) {
            i += used;
            continue;
        }
        argv[out++] = argv[i++];
    }
    while (i < *argc)
        argv[out++] = argv[i++];
    if (*argc > 0)
        argv[out] = NULL;
    *argc = *argc > 0 ? out : *argc;
    return FM_OK;
}

/* ---- writing ------------------------------------------------------------------- */

/* Shortest %g form that reads back to exactly v. */
static void format_double(char *buf, size_t size, double v)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, size, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

static void write_quoted(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(out, "\\x%02x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}

static void write_value(FILE *out, const fm_config_setting *s, const void *base)
{
    const void *field = (const char *)base + s->offset;
    char buf[64];
    switch (s->type) {
    case FM_CONFIG_BOOL:
        fputs(*(const bool *)field ? "true" : "false", out);
        break;
    case FM_CONFIG_INT:
        fprintf(out, "%" PRId64, *(const int64_t *)field);
        break;
    case FM_CONFIG_FLOAT:
        format_double(buf, sizeof buf, *(const double *)field);
        fputs(buf, out);
        break;
    case FM_CONFIG_STRING:
        write_quoted(out, field);
        break;
    case FM_CONFIG_ENUM: {
        int v = *(const int *)field, n = 0;
        while (s->names[n])
            n++;
        if (v >= 0 && v < n)
            fputs(s->names[v], out);
        else
            fprintf(out, "%d", v); /* not a valid value: reloading will say so */
        break;
    }
    case FM_CONFIG_SET: {
        int v = *(const int *)field, any = 0;
        for (int n = 0; s->names[n]; n++)
            if (v & (1 << n)) {
                fprintf(out, "%s%s", any ? "," : "", s->names[n]);
                any = 1;
            }
        if (!any)
            fputs("\"\"", out); /* empty: reloading will say so */
        break;
    }
    }
}

/* Number of leading sections ("a." of "a.b.c") that keys a and b share. */
static size_t common_sections(const char *a, const char *b)
{
    size_t n = 0;
    for (;;) {
        const char *da = strchr(a, '.'), *db = strchr(b, '.');
        if (!da || !db || da - a != db - b || memcmp(a, b, (size_t)(da - a)) != 0)
            return n;
        n++;
        a = da + 1;
        b = db + 1;
    }
}

fm_status fm_config_dump(const fm_config *c, FILE *out)
{
    fputs("# facemill configuration (`facemill config --describe` explains each key)\n",
          out);
    const char *prev = "";
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const fm_config_setting *s = &fm_config_settings[i];
        size_t common = common_sections(prev, s->key), depth = 0;
        const char *part = s->key;
        for (const char *dot; (dot = strchr(part, '.')) != NULL; part = dot + 1, depth++)
            if (depth >= common)
                fprintf(out, "%*s%.*s:\n", (int)(2 * depth), "", (int)(dot - part), part);
        fprintf(out, "%*s%s: ", (int)(2 * depth), "", part);
        write_value(out, s, c);
        fputc('\n', out);
        prev = s->key;
    }
    return ferror(out) ? FM_ERR_IO : FM_OK;
}

fm_status fm_config_describe(FILE *out)
{
    fm_config d;
    fm_config_defaults(&d);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const fm_config_setting *s = &fm_config_settings[i];
        char list[256];
        fprintf(out, "%s (", s->key);
        switch (s->type) {
        case FM_CONFIG_BOOL:
            fputs("bool", out);
            break;
        case FM_CONFIG_INT:
            fputs("int", out);
            break;
        case FM_CONFIG_FLOAT:
            fputs("float", out);
            break;
        case FM_CONFIG_STRING:
            fputs("string", out);
            break;
        case FM_CONFIG_ENUM:
            fprintf(out, "one of: %s", name_list(list, sizeof list, s->names));
            break;
        case FM_CONFIG_SET:
            fprintf(out, "some of: %s", name_list(list, sizeof list, s->names));
            break;
        }
        fputs(", default ", out);
        write_value(out, s, &d);
        if (s->type == FM_CONFIG_INT)
            fprintf(out, ", %" PRId64 "..%" PRId64, s->min_int, s->max_int);
        else if (s->type == FM_CONFIG_FLOAT)
            fprintf(out, ", %g..%g", s->min_float, s->max_float);
        fprintf(out, ")\n    %s\n", s->help);
    }
    return ferror(out) ? FM_ERR_IO : FM_OK;
}
