/* sink.h - the results database and the sink service that fills it.
 *
 * Why it exists: every labelled image ends as exactly one row in one SQLite database,
 * whatever process crashed on the way. Workers (and the broker, for quarantined jobs)
 * PUSH Result messages to the sink; the sink stages them in batched transactions,
 * keyed by job id and dispatch token, and asks the broker about each; a result the
 * broker confirms becomes the job's row (keyed by job id, so a result that arrives
 * twice, a re-dispatched job, is stored once), one it refuses (nobody was sent that
 * job with that token) is dropped. Only after a transaction has committed does the
 * sink report what it staged or stored (proto/README.md, "Sink -> broker"). `facemill export`, `facemill label` and the tests
 * read the same database through the fm_results functions below.
 *
 * The database (schema version 1; WAL journal, synchronous=FULL so a commit reported
 * to the broker survives a power loss):
 *
 *   meta(key TEXT PRIMARY KEY, value TEXT)         -- schema_version = 1
 *   images(id INTEGER PRIMARY KEY,
 *          job_id TEXT NOT NULL UNIQUE,            -- the idempotency key
 *          tag, source TEXT, sha256 TEXT (64 hex digits or NULL),
 *          width, height INTEGER,
 *          error_code INTEGER NOT NULL (0: success; ErrorCode values), error_text TEXT,
 *          model, worker TEXT, attempt INTEGER, n_faces INTEGER NOT NULL,
 *          read_ms, decode_ms, detect_ms, align_ms, embed_ms, heads_ms, total_ms REAL,
 *          stored_ms INTEGER NOT NULL)            -- Unix time of the insert, ms
 *   staged(job_id TEXT, token BLOB, tag TEXT, failed INTEGER, result BLOB (the packed
 *          Result), staged_ms INTEGER, PRIMARY KEY (job_id, token))
 *                                                 -- received, not yet confirmed
 *   faces(image_id INTEGER REFERENCES images(id), face INTEGER (0-based, by score),
 *         x1, y1, x2, y2, score REAL,
 *         le_x, le_y, re_x, re_y, nose_x, nose_y, lm_x, lm_y, rm_x, rm_y REAL,
 *         age, age_std REAL, gender TEXT, p_male, p_female REAL,
 *         race TEXT, p_white, p_black, p_asian, p_indian, p_others REAL,
 *         PRIMARY KEY (image_id, face))
 *
 * Attributes a result does not carry (no heads ran) are NULL. gender and race are the
 * most probable class names ("male"/"female"; "White", "Black", "Asian", "Indian",
 * "Others").
 *
 * Threads: an fm_results handle or an fm_sink is used by one thread at a time. Several
 * processes may read a database while one sink writes it (WAL).
 */
#ifndef FACEMILL_SINK_H
#define FACEMILL_SINK_H

#include "facemill/status.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The protobuf-c message type (facemill.pb-c.h); declared here so this header does
 * not pull in generated code. */
struct Facemill__Result;
/* CURVE keys of the service (include/facemill/auth.h, a layer below). */
struct fm_auth;

#define FM_RESULTS_SCHEMA_VERSION 1

/* ---- the database --------------------------------------------------------------- */

typedef struct fm_results fm_results;

enum {
    FM_RESULTS_READONLY = 1, /* open an existing database for reading only */
    /* with READONLY: a database in a folder this user cannot write (SQLite cannot make
     * its DB-shm there) is read as an immutable file when nothing writes it (no DB-wal
     * beside it, or an empty one): for export and report, not for a writer's checks */
    FM_RESULTS_AS_IS = 2,
};

/* Opens (and, unless FM_RESULTS_READONLY, creates and migrates) the results database
 * at path. On success *out is a new handle the caller owns (fm_results_close).
 * Errors: FM_ERR_IO (cannot open or create; SQLite's text in err), FM_ERR_VERSION
 * (a schema version this build does not know), FM_ERR_FORMAT (not a facemill results
 * database), FM_ERR_NOMEM. */
fm_status fm_results_open(fm_results **out, const char *path, int flags, fm_error *err);

/* Closes the handle (rolling back an open transaction) and sets *r to NULL. Accepts
 * NULL and a NULL *r. */
void fm_results_close(fm_results **r);

/* Starts a write transaction (BEGIN IMMEDIATE). FM_ERR_IO on failure. */
fm_status fm_results_begin(fm_results *r, fm_error *err);

/* Commits the open transaction; when it returns FM_OK the rows are durable. On failure
 * the transaction is rolled back and FM_ERR_IO returned. */
fm_status fm_results_commit(fm_results *r, fm_error *err);

/* Rolls back the open transaction, if any. */
void fm_results_rollback(fm_results *r);

/* True when the last failure of r was a full disk (SQLITE_FULL), until a commit. */
int fm_results_full(const fm_results *r);

/* Stores one result inside the open transaction, unless a row with its job id exists
 * that is not a failure (a failed row is replaced: a job tried again takes its new
 * outcome). A new row replaces the rows of the same source and tag under other job ids
 * (the image's older content), except that a failure that says nothing of the image
 * (ERROR_IO, a timeout, an internal or quarantined one: not decode, unsupported or
 * limit) never replaces a labelled row: when the source and tag have one under another
 * job id, it is not stored (*inserted 0, *failed 1) and the labels stay. stored_ms is
 * the time to record. *inserted (may be NULL) becomes 1 for a new row, 0 for a
 * duplicate; *failed (may be NULL) says whether the row now stored for that job id is
 * an error result.
 * Face fields with the wrong number of values (a box that is not 4 numbers, ...) are
 * stored as NULL. The message stays the caller's.
 * Errors: FM_ERR_INVALID (no job id), FM_ERR_IO (SQLite). */
fm_status fm_results_put(fm_results *r, const struct Facemill__Result *res, int64_t stored_ms,
                         int *inserted, int *failed, fm_error *err);

/* Stages res (inside the open transaction) under its job id and token, to become the
 * job's row once the broker confirms the token (fm_results_confirm); staging the
 * same (job id, token) twice keeps one. The message stays the caller's.
 * Errors: FM_ERR_INVALID (no job id, no token, read-only handle), FM_ERR_NOMEM,
 * FM_ERR_IO. */
fm_status fm_results_stage(fm_results *r, const struct Facemill__Result *res,
                           int64_t staged_ms, fm_error *err);

/* The broker confirmed (job_id, token): unless the job has a row already that is not
 * a failure, the result staged under that token becomes it (as fm_results_put, stored_ms its time); then
 * every staged result of the job is dropped. *stored becomes 1 when the job has a
 * row now, 0 when it has none and nothing was staged under that token; *inserted
 * (may be NULL) 1 when this call stored the row; *failed (may be NULL) whether the
 * row is an error result. Inside the open transaction. Errors: FM_ERR_IO,
 * FM_ERR_FORMAT (a staged result that does not unpack; it is dropped),
 * FM_ERR_INVALID (read-only handle). */
fm_status fm_results_confirm(fm_results *r, const char *job_id, const void *token,
                             size_t token_len, int64_t stored_ms, int *stored, int *inserted,
                             int *failed, fm_error *err);

/* The broker refused (job_id, token): drops that staged result, if any. */
fm_status fm_results_unstage(fm_results *r, const char *job_id, const void *token,
                             size_t token_len, fm_error *err);

/* Called by fm_results_each_staged with one staged result; nonzero stops the walk.
 * The arguments are valid during the call only. */
typedef int (*fm_staged_fn)(void *arg, const char *job_id, const char *tag,
                            const void *token, size_t token_len, int failed);

/* Calls fn for at most max staged results staged at or before before_ms, oldest
 * first. FM_ERR_IO on SQLite errors. */
fm_status fm_results_each_staged(fm_results *r, int64_t before_ms, int64_t max,
                                 fm_staged_fn fn, void *arg, fm_error *err);

/* Looks a job id up: *found becomes 1 when a row exists, and then *failed (may be
 * NULL) whether it is an error result. FM_ERR_IO on SQLite errors. */
fm_status fm_results_lookup(fm_results *r, const char *job_id, int *found, int *failed,
                            fm_error *err);

/* Counts images, faces and failed images (any pointer may be NULL). */
fm_status fm_results_count(fm_results *r, int64_t *images, int64_t *faces, int64_t *failed,
                           fm_error *err);

typedef enum fm_export_format {
    FM_EXPORT_JSONL = 0, /* one object per image */
    FM_EXPORT_CSV = 1,   /* one row per face, one per faceless or failed image */
} fm_export_format;

enum {
    FM_EXPORT_TIMES = 1, /* add worker, attempt and stage times (they differ per run):
                            JSONL "worker", "attempt", "times_ms"; CSV trailing
                            columns */
};

/* Writes every image, ordered by source then job id, to out (not owned), in the result
 * schema of proto/RESULTS.md (include/facemill/result_json.h writes it): JSONL, one
 * object per image, or CSV with a header line, one row per face (or per faceless or
 * failed image) and RFC 4180 quoting. Errors: FM_ERR_IO (SQLite or writing out). */
fm_status fm_results_export(fm_results *r, FILE *out, fm_export_format format, int flags,
                            fm_error *err);

/* Short lower-case name of a result error code ("decode", "quarantined"); "error" for
 * codes this build does not know. Static string. */
const char *fm_results_error_name(uint32_t code);

/* The SQLite connection of r, for read-only queries the functions above do not cover
 * (`facemill report` aggregates with GROUP BY instead of reading every row). Owned by
 * r: valid until fm_results_close; do not close it or change the schema through it. */
struct sqlite3;
struct sqlite3 *fm_results_db(fm_results *r);

/* ---- the service ------------------------------------------------------------------ */

typedef struct fm_sink fm_sink;

typedef struct fm_sink_opts {
    const char *db_path;  /* results database (created when missing) */
    const char *results;  /* endpoint the sink binds its PULL socket to */
    const char *commits;  /* broker endpoint the sink connects its DEALER to; NULL or ""
                             = no broker (tests): results are stored at once, with no
                             token check, and reported nowhere */
    int64_t batch;        /* most results per transaction (>= 1) */
    int64_t batch_ms;     /* longest a received result waits for its commit */
    int64_t heartbeat_ms; /* heartbeat interval towards the broker */
    int64_t max_msg_size; /* ZMQ_MAXMSGSIZE of both sockets */
    int64_t max_faces;    /* a result listing more faces is refused (detect.max_faces);
                             0: no limit */
    const char *name;     /* sent in heartbeats (host:pid); NULL = none */
    const struct fm_auth *auth; /* keys (not owned; must outlive the sink): results is
                                   bound as a CURVE server admitting workers and the
                                   broker, commits connected as a client; NULL or
                                   without CURVE: plain sockets */
    const char *metrics_file;    /* replaced with the sink's metrics in the Prometheus
                                    text format every metrics_interval_ms (the
                                    counters below, pending results, database and
                                    filesystem bytes); NULL or "" = none */
    int64_t metrics_interval_ms;
} fm_sink_opts;

typedef struct fm_sink_stats {
    int64_t received;   /* Result messages read */
    int64_t stored;     /* new rows */
    int64_t duplicates; /* results whose job id was already stored */
    int64_t dropped;    /* unreadable or refused messages (not an Envelope, other
                           version, no token, too many faces, ...) */
    int64_t refused;    /* staged results the broker did not dispatch: dropped */
    int64_t commits;    /* transactions committed */
    int64_t failed_transactions; /* rolled back (disk full, I/O error): their results
                                    were not stored and are dispatched again */
} fm_sink_stats;

/* Opens the database and the sockets (binds results, connects commits) in the ZeroMQ
 * context zctx (not owned; it must outlive the sink). Strings in opts are copied.
 * On success *out is owned by the caller (fm_sink_close). Errors: those of
 * fm_results_open, FM_ERR_IO (bind/connect failed), FM_ERR_INVALID, FM_ERR_NOMEM. */
fm_status fm_sink_open(fm_sink **out, void *zctx, const fm_sink_opts *opts, fm_error *err);

/* Serves until *stop becomes nonzero (checked at least every 100 ms), then commits what
 * it holds and returns FM_OK. A transaction that fails is rolled back and logged, its
 * jobs are not reported (the broker dispatches them again) and serving goes on; only
 * a broken socket returns an error (FM_ERR_IO). */
fm_status fm_sink_run(fm_sink *s, volatile sig_atomic_t *stop, fm_error *err);

/* Counters since open. */
void fm_sink_get_stats(const fm_sink *s, fm_sink_stats *out);

/* Commits nothing further, closes the sockets and the database, sets *s to NULL.
 * Accepts NULL and a NULL *s. */
void fm_sink_close(fm_sink **s);

#ifdef __cplusplus
}
#endif
#endif
