/* config.h - the settings of every facemill process, in one plain struct.
 *
 * Every setting is one line of a table in worker/base/config.c (key, type, default,
 * bounds, target field, help) plus one field of fm_config below: adding a setting
 * touches nothing else. Keys are dotted paths ("detect.min_face"); in a YAML file they
 * are nested mappings:
 *
 *   detect:
 *     min_face: 40
 *
 * (a flat "detect.min_face: 40" line is accepted too). Values come, later overriding
 * earlier, from: the defaults in the table, one YAML file (--config FILE, or the file
 * named by the environment variable FACEMILL_CONFIG), then --set key=value options in
 * the order given. config/facemill.yaml documents every key with its default.
 *
 * Value syntax, in files and in --set alike:
 *   bool    true/false, yes/no, on/off (any case)
 *   int     decimal, optional sign, 64 bits
 *   float   decimal or exponent notation ("0.709", "7e-1"); no inf/nan
 *   string  any text; in YAML quote it when it looks like something else ("yes", "~")
 *   enum    one of the names the setting lists (any case)
 * Out-of-bounds values, unknown keys, duplicate keys and wrong types are errors
 * (FM_ERR_CONFIG) whose message starts with "FILE:LINE:COLUMN: " for file input.
 *
 * fm_config is a plain value: copy it with =, no resources, nothing to free.
 * Strings are stored in fixed buffers of FM_CONFIG_STRING_MAX bytes (NUL included).
 * Not thread-safe only in the obvious way: do not write one fm_config from two
 * threads; the functions keep no global state.
 */
#ifndef FACEMILL_CONFIG_H
#define FACEMILL_CONFIG_H

#include "facemill/status.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest string value + 1. */
#define FM_CONFIG_STRING_MAX 1024

/* Environment variable naming a config file used when no --config is given. */
#define FM_CONFIG_ENV "FACEMILL_CONFIG"

/* The effective configuration. Fields are grouped by the first part of their key;
 * the table in worker/base/config.c holds type, default, bounds and help of each. */
/* detect.mode: how the pipeline finds the faces of an image (detect.h) */
typedef enum fm_detect_mode {
    FM_DETECT_MTCNN = 0, /* the detector: every face, anywhere */
    FM_DETECT_ALIGNED,   /* the image is one face aligned with the backbone's template */
    FM_DETECT_CROPPED    /* the image is one upright face cropped as UTKFace's chips */
} fm_detect_mode;

/* The formats a decoder reads (fm_decode_opts.formats, the setting decode.formats):
 * bit i is the i-th of the names jpeg, png, webp, heic, avif, tiff. */
enum {
    FM_FORMAT_JPEG = 1 << 0,
    FM_FORMAT_PNG = 1 << 1,
    FM_FORMAT_WEBP = 1 << 2,
    FM_FORMAT_HEIC = 1 << 3,
    FM_FORMAT_AVIF = 1 << 4,
    FM_FORMAT_TIFF = 1 << 5,
    FM_FORMAT_ALL = (1 << 6) - 1,
};

/* detect.fallback: what the pipeline does with an image where the detector found no
 * face (detect.mode mtcnn only) */
typedef enum fm_detect_fallback {
    FM_FALLBACK_NONE = 0, /* no face: the image's result has none */
    FM_FALLBACK_CROPPED   /* the image is taken as one face placed as mode cropped does,
                             with score 0 (face chip archives) */
} fm_detect_fallback;

typedef struct fm_config {
    struct {
        int level; /* an fm_log_level: FM_LOG_ERROR .. FM_LOG_DEBUG */
        char file[FM_CONFIG_STRING_MAX]; /* service programs log here; "" = stderr */
    } log;
    struct {
        int64_t threads; /* OpenBLAS threads per process */
        char blas_kernels[FM_CONFIG_STRING_MAX]; /* auto, keep or a kernel set (blas.h) */
    } engine;
    struct {
        char dir[FM_CONFIG_STRING_MAX]; /* directory of the model files */
    } models;
    struct {
        int64_t max_pixels; /* width x height above this is refused before allocation */
        int64_t max_bytes;  /* encoded images larger than this are refused */
        int formats;        /* FM_FORMAT_* bits (above) of the formats decoded */
    } decode;
    struct {
        int64_t min_face;      /* smallest face searched for, pixels */
        double min_face_frac;  /* ... and fraction of the image's long side */
        int64_t max_side;      /* long side of the image the detector works on */
        double scale_factor;   /* ratio between pyramid levels */
        double pnet_threshold; /* stage scores a candidate needs to go on */
        double rnet_threshold;
        double onet_threshold;
        int64_t max_faces; /* most faces reported per image */
        double pad;        /* border added around the image, fraction of its long side */
        int mode;          /* an fm_detect_mode: mtcnn, aligned or cropped */
        int fallback;      /* an fm_detect_fallback: none or cropped */
        bool retry;        /* a second look, lower thresholds, when nothing was found */
        double retry_pnet_threshold;
        double retry_rnet_threshold;
        double retry_onet_threshold;
    } detect;
    struct {
        char backbone[FM_CONFIG_STRING_MAX]; /* backbone model file (modelpath.h) */
        int64_t batch;                       /* aligned faces per backbone call */
        double tta_zoom; /* > 0: also views zoomed out and in by this fraction */
        bool mirror;     /* the heads read the mirror view too (when trained so) */
        double mirror_age_std; /* > 0: the mirror view only for a face whose answer from
                                  the face alone has at least this age spread, */
        double mirror_prob;    /* or a gender or ethnicity probability at most this */
    } embed;
    struct {
        char model[FM_CONFIG_STRING_MAX]; /* heads model file; "" = no heads */
        double gender_min_prob; /* gender null (probabilities kept) below this; 0: never */
        double race_min_prob;   /* the same for ethnicity */
    } heads;
    struct {
        char clients[FM_CONFIG_STRING_MAX]; /* ROUTER endpoint for clients */
        char workers[FM_CONFIG_STRING_MAX]; /* ROUTER endpoint for workers */
        char journal[FM_CONFIG_STRING_MAX]; /* SQLite journal of accepted jobs */
        int fsync;                          /* an fm_broker_fsync: always/batch/off */
        int64_t max_attempts;     /* dispatches before a job is quarantined */
        int64_t heartbeat_ms;     /* heartbeat interval, both ways */
        int64_t worker_expiry_ms; /* silence after which a peer is taken for dead */
        int64_t job_timeout_ms;   /* longest a worker may hold a job */
        int64_t max_queue;        /* jobs held (queued, at workers, awaiting commit)
                                     at which clients are slowed down */
        int64_t max_queue_bytes;  /* the same bound in bytes of job bodies */
        int64_t max_submit_jobs;  /* most jobs in one Submit */
        int64_t max_submit_bytes; /* largest Submit, bytes */
        int64_t max_credit;       /* most credit a worker is given, whatever it asks */
    } broker;
    struct {
        char results[FM_CONFIG_STRING_MAX]; /* the sink's PULL endpoint for results */
        char commits[FM_CONFIG_STRING_MAX]; /* the broker's ROUTER endpoint for commits */
        char db[FM_CONFIG_STRING_MAX];      /* the results database (SQLite) */
        int64_t batch;    /* most results per transaction */
        int64_t batch_ms; /* longest a result waits for its transaction to commit */
    } sink;
    struct {
        int64_t chunk;       /* jobs per Submit message */
        int64_t chunk_bytes; /* image bytes per Submit message (one image may exceed it) */
        int64_t progress_ms; /* interval of plain progress lines (not a terminal) */
        int64_t retry_ms;    /* an unanswered Submit is sent again after this long */
    } client;
    struct {
        int64_t max_msg_size; /* ZMQ_MAXMSGSIZE of every socket facing the network */
    } net;
    /* CurveZMQ (include/facemill/auth.h); paths are taken in keys_dir when relative */
    struct fm_config_security {
        char cert[FM_CONFIG_STRING_MAX];        /* own secret certificate; "" = no CURVE */
        char keys_dir[FM_CONFIG_STRING_MAX];    /* where relative key paths are */
        char broker_key[FM_CONFIG_STRING_MAX];  /* the broker's public certificate */
        char sink_key[FM_CONFIG_STRING_MAX];    /* the sink's public certificate */
        char clients_dir[FM_CONFIG_STRING_MAX]; /* broker: public keys of clients */
        char workers_dir[FM_CONFIG_STRING_MAX]; /* broker, sink: public keys of workers */
        char sink_dir[FM_CONFIG_STRING_MAX];    /* broker: public keys of the sink */
        bool insecure; /* serve a non-local TCP endpoint without CURVE (warned) */
    } security;
    struct {
        int64_t processes; /* pipeline processes of facemill-worker; 0 = one per core */
        int64_t credit;    /* jobs each worker process holds at once */
        char name[FM_CONFIG_STRING_MAX]; /* names this machine's workers; "" = host */
        char path_root[FM_CONFIG_STRING_MAX]; /* by-path jobs open files only under
                                                  this directory; "" = refused */
    } worker;
    struct {
        char file[FM_CONFIG_STRING_MAX]; /* Prometheus textfile; %n: broker/sink; "" off */
        int64_t interval_ms;             /* how often it is written */
    } metrics;
} fm_config;

/* Sets every field of *c to its default from the table. Cannot fail. */
void fm_config_defaults(fm_config *c);

/* Applies the YAML file at path on top of *c: only the keys the file names change.
 * path names a regular file, a pipe another program writes (`<(...)`), a character
 * device (/dev/null), or is "/dev/stdin" for standard input (whatever it is); a named
 * FIFO, a directory or a socket is refused without blocking.
 * Returns FM_OK, FM_ERR_IO (file cannot be opened or read, or is not regular),
 * FM_ERR_LIMIT (file over
 * 16 MiB), FM_ERR_NOMEM, or FM_ERR_CONFIG with "PATH:LINE:COLUMN: ..." in err (YAML
 * syntax errors carry libyaml's text and position). On any error *c is unchanged.
 * An empty file (or one holding only comments) changes nothing. */
fm_status fm_config_load_file(fm_config *c, const char *path, fm_error *err);

/* As fm_config_load_file, from size bytes of YAML at data (no NUL needed); name is
 * what messages call the input ("<stdin>", a path). data stays the caller's. */
fm_status fm_config_load_buffer(fm_config *c, const char *name, const char *data,
                                size_t size, fm_error *err);

/* Applies one "key=value" (what --set takes) to *c, with the same value syntax and
 * bounds as a file; spaces around key and value are ignored and the value is taken
 * literally (no YAML quoting). Returns FM_OK or FM_ERR_CONFIG with a message that
 * names the key; on error *c is unchanged. */
fm_status fm_config_set(fm_config *c, const char *assignment, fm_error *err);

/* Applies what a command line asks for on top of *c: the YAML file at path (NULL:
 * the file named by the environment variable FACEMILL_CONFIG, if set), then each of
 * sets[0..n_sets) ("key=value", as fm_config_set takes it) in order. Returns FM_OK,
 * or the first error of the file (prefixed FACEMILL_CONFIG when it came from there)
 * or of a --set (prefixed "--set"); on error *c is unchanged. sets stay the
 * caller's. */
fm_status fm_config_apply(fm_config *c, const char *path, const char *const *sets,
                          int n_sets, fm_error *err);

/* Reads the configuration options out of a command line, on top of *c (call
 * fm_config_defaults first):
 *   --config FILE, --config=FILE   at most once; else the file named by the
 *                                  environment variable FACEMILL_CONFIG, if set
 *   --set KEY=VALUE, --set=KEY=VALUE   any number, applied after the file, in order
 * Scanning starts at argv[1] and stops at "--". The options are removed from argv
 * (*argc shrinks, other arguments keep their order, argv[*argc] becomes NULL).
 * Returns FM_OK, or an error from the file or a --set (FM_ERR_CONFIG, FM_ERR_IO)
 * or a missing option argument (FM_ERR_CONFIG); on error *c, *argc and argv are
 * unchanged. */
fm_status fm_config_from_args(fm_config *c, int *argc, char **argv, fm_error *err);

/* Writes *c as a YAML document that fm_config_load_file reads back to an equal
 * configuration (strings must be valid UTF-8, as any read from YAML are).
 * Returns FM_OK or FM_ERR_IO when writing to out failed. */
fm_status fm_config_dump(const fm_config *c, FILE *out);

/* Writes every setting: key, type, default, bounds (or allowed names) and help.
 * Returns FM_OK or FM_ERR_IO when writing to out failed. */
fm_status fm_config_describe(FILE *out);

/* True when every setting of a equals that of b (strings compared as strings). */
bool fm_config_equal(const fm_config *a, const fm_config *b);

#ifdef __cplusplus
}
#endif
#endif
