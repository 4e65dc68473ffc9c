/* results_db.c - the results database: schema, idempotent inserts, look-ups and the
 * JSONL/CSV export (include/facemill/sink.h has the schema and the contracts; the
 * export writes the result schema of proto/RESULTS.md through result_json.h).
 *
 * Why a module of its own: the sink writes the database, `facemill export` and
 * `facemill label` read it, and tests check it; all of them go through these
 * functions so the schema lives in one place.
 *
 * Idempotency: images.job_id is UNIQUE and rows are inserted with INSERT OR IGNORE; a
 * duplicate result changes nothing, unless the stored row is a failure: a failure is
 * never final, so a job tried again takes its new outcome. Faces are inserted only for
 * a new image row, in the same transaction, so an image is never half stored.
 *
 * One row per image name in a run: a job's id covers its content (client.c), so a
 * file that changed between two runs of `facemill label` is a new job. Its new row
 * replaces the rows of the same source and tag, in the same transaction, so the
 * database, its export and its report hold what the archive holds now, not the old
 * picture's faces beside the new one's. Rows of other tags (other runs of `facemill
 * submit`, whose sources may name other machines' files) are left alone.
 *
 * Staging (protocol 1.1): the sink keeps a received result in staged, keyed by job id
 * and dispatch token, until the broker confirms the token; only then does the result
 * become the job's row. A result nobody dispatched thus never takes the place of the
 * real one (whichever arrives first), and its staged row is dropped when the broker
 * refuses it.
 */
#include "facemill/sink.h"
#include "facemill/json.h"
#include "facemill/result_json.h"

#include "facemill.pb-c.h"

#include <sqlite3.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct fm_results {
    sqlite3 *db;
    sqlite3_stmt *insert_image;
    sqlite3_stmt *insert_face;
    sqlite3_stmt *lookup;
    sqlite3_stmt *replace_older; /* rows of the same source and tag under other ids */
    sqlite3_stmt *delete_job;    /* a failed row, for its job's new result */
    sqlite3_stmt *labelled_other; /* a labelled row of the same source, other id */
    sqlite3_stmt *stage;        /* the staging statements: writable handles only */
    sqlite3_stmt *staged_get;
    sqlite3_stmt *unstage_job;
    sqlite3_stmt *unstage_one;
    int in_tx;
    int full; /* the last failure was SQLITE_FULL; cleared by a commit */
};

static const char *const schema_sql =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS images("
    " id INTEGER PRIMARY KEY,"
    " job_id TEXT NOT NULL UNIQUE,"
    " tag TEXT, source TEXT, sha256 TEXT,"
    " width INTEGER, height INTEGER,"
    " error_code INTEGER NOT NULL DEFAULT 0, error_text TEXT,"
    " model TEXT, worker TEXT, attempt INTEGER,"
    " n_faces INTEGER NOT NULL DEFAULT 0,"
    " read_ms REAL, decode_ms REAL, detect_ms REAL, align_ms REAL, embed_ms REAL,"
    " heads_ms REAL, total_ms REAL,"
    " stored_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);"
    "CREATE INDEX IF NOT EXISTS images_source ON images(source, job_id);"
    "CREATE TABLE IF NOT EXISTS faces("
    " image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,"
    " face INTEGER NOT NULL,"
    " x1 REAL, y1 REAL, x2 REAL, y2 REAL, score REAL,"
    " le_x REAL, le_y REAL, re_x REAL, re_y REAL, nose_x REAL, nose_y REAL,"
    " lm_x REAL, lm_y REAL, rm_x REAL, rm_y REAL,"
    " age REAL, age_std REAL,"
    " gender TEXT, p_male REAL, p_female REAL,"
    " race TEXT, p_white REAL, p_black REAL, p_asian REAL, p_indian REAL, p_others REAL,"
    " PRIMARY KEY(image_id, face)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS staged("
    " job_id TEXT NOT NULL, token BLOB NOT NULL, tag TEXT,"
    " failed INTEGER NOT NULL, result BLOB NOT NULL, staged_ms INTEGER NOT NULL,"
    " PRIMARY KEY(job_id, token)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS staged_age ON staged(staged_ms);"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', '1');";

static fm_status db_error(fm_error *err, sqlite3 *db, const char *what)
{
    return fm_error_set(err, FM_ERR_IO, "results database: %s: %s", what,
                        db ? sqlite3_errmsg(db) : "out of memory");
}

const char *fm_results_error_name(uint32_t code)
{
    return fm_result_error_name(code);
}

sqlite3 *fm_results_db(fm_results *r)
{
    return r->db;
}

/* ---- open / close ---------------------------------------------------------------- */

static fm_status check_schema(fm_results *r, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    if (sqlite3_prepare_v2(r->db, "SELECT value FROM meta WHERE key = 'schema_version'",
                           -1, &st, NULL) != SQLITE_OK) {
        int code = sqlite3_errcode(r->db) & 0xff;
        if (code == SQLITE_ERROR || code == SQLITE_NOTADB || code == SQLITE_CORRUPT)
            rc = fm_error_set(err, FM_ERR_FORMAT, "not a facemill results database: %s",
                              sqlite3_errmsg(r->db));
        else /* it may well be one: what stops the reading is not the file's content */
            rc = fm_error_set(err, FM_ERR_IO, "cannot read it: %s%s", sqlite3_errmsg(r->db),
                              code == SQLITE_READONLY || code == SQLITE_CANTOPEN
                                  ? " (SQLite keeps DB-wal and DB-shm files beside the "
                                    "database: its folder must be writable)"
                                  : "");
        goto done;
    }
    int s = sqlite3_step(st);
    if (s != SQLITE_ROW) {
        rc = s == SQLITE_DONE ? fm_error_set(err, FM_ERR_FORMAT,
                                             "not a facemill results database (no schema "
                                             "version)")
                              : db_error(err, r->db, "reading the schema version");
        goto done;
    }
    const char *v = (const char *)sqlite3_column_text(st, 0);
    if (!v || strcmp(v, "1") != 0)
        rc = fm_error_set(err, FM_ERR_VERSION,
                          "results database has schema version %s; this build reads 1",
                          v ? v : "(null)");
done:
    sqlite3_finalize(st);
    return rc;
}

/* The statements with which a writer replaces rows (one row per name and tag). */
static fm_status prepare_replacing(fm_results *r, fm_error *err)
{
    static const char *const sql[] = {
        "DELETE FROM images WHERE source = ? AND tag IS ? AND job_id <> ?",
        "DELETE FROM images WHERE job_id = ?",
        "SELECT 1 FROM images WHERE source = ? AND tag IS ? AND job_id <> ? AND"
        " error_code = 0 LIMIT 1",
    };
    static const char *const what[] = {"preparing the replacement of older rows",
                                       "preparing the replacement of failed rows",
                                       "preparing the look-up of labelled rows"};
    sqlite3_stmt **out[] = {&r->replace_older, &r->delete_job, &r->labelled_other};
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++)
        if (sqlite3_prepare_v3(r->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, out[i], NULL) !=
            SQLITE_OK)
            return db_error(err, r->db, what[i]);
    return FM_OK;
}

static fm_status prepare_staging(fm_results *r, fm_error *err)
{
    static const char *const sql[] = {
        "INSERT OR IGNORE INTO staged(job_id, token, tag, failed, result, staged_ms)"
        " VALUES(?,?,?,?,?,?)",
        "SELECT result FROM staged WHERE job_id = ? AND token = ?",
        "DELETE FROM staged WHERE job_id = ?",
        "DELETE FROM staged WHERE job_id = ? AND token = ?",
    };
    sqlite3_stmt **out[] = {&r->stage, &r->staged_get, &r->unstage_job, &r->unstage_one};
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++)
        if (sqlite3_prepare_v3(r->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, out[i], NULL) !=
            SQLITE_OK)
            return db_error(err, r->db, "preparing the staging statements");
    return FM_OK;
}

/* A read-only open that failed for want of the -shm file SQLite makes beside the
 * database (a folder this user cannot write: another user's, a read-only share) is
 * made again as an immutable file, which needs no -shm, when nothing writes it: no
 * -wal file is there, or an empty one (a writer in WAL mode keeps its transactions
 * there until they are copied into the database; an empty one holds none). Returns 1
 * when r->db is open again so. */
static int reopen_immutable(fm_results *r, const char *path)
{
    char wal[PATH_MAX];
    struct stat st;
    if (snprintf(wal, sizeof wal, "%s-wal", path) >= (int)sizeof wal)
        return 0;
    if (lstat(wal, &st) == 0 ? !S_ISREG(st.st_mode) || st.st_size != 0 : errno != ENOENT)
        return 0;
    /* file: URI: every byte but unreserved ones and '/' percent-encoded; an absolute
     * path after "file://" (an empty authority), so that "//x" is no host name */
    size_t n = strlen(path);
    char *uri = malloc(3 * n + 32);
    if (!uri)
        return 0;
    char *q = uri + sprintf(uri, path[0] == '/' ? "file://" : "file:");
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (isalnum(*p) || strchr("/-._~", *p))
            *q++ = (char)*p;
        else
            q += sprintf(q, "%%%02X", *p);
    }
    strcpy(q, "?immutable=1");
    sqlite3_close(r->db);
    r->db = NULL;
    int ok = sqlite3_open_v2(uri, &r->db,
                             SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                             NULL) == SQLITE_OK;
    free(uri);
    if (ok)
        sqlite3_busy_timeout(r->db, 10000);
    return ok;
}

fm_status fm_results_open(fm_results **out, const char *path, int flags, fm_error *err)
{
    fm_status rc = FM_OK;
    if (!out || !path)
        return fm_error_set(err, FM_ERR_INVALID, "fm_results_open: out and path are required");
    *out = NULL;
    fm_results *r = calloc(1, sizeof *r);
    if (!r)
        return fm_error_set(err, FM_ERR_NOMEM, "results database: out of memory");
    int ro = (flags & FM_RESULTS_READONLY) != 0;
    int oflags = ro ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (sqlite3_open_v2(path, &r->db, oflags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        rc = fm_error_set(err, FM_ERR_IO, "%s: %s", path,
                          r->db ? sqlite3_errmsg(r->db) : "cannot open");
        goto fail;
    }
    sqlite3_busy_timeout(r->db, 10000);
    if (!ro) {
        /* WAL: readers (export, label) never block the sink. synchronous=FULL: a
         * commit the broker is told about is on disk, power loss included. */
        char *msg = NULL;
        if (sqlite3_exec(r->db,
                         "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                         "PRAGMA foreign_keys=ON;",
                         NULL, NULL, &msg) != SQLITE_OK ||
            sqlite3_exec(r->db, schema_sql, NULL, NULL, &msg) != SQLITE_OK) {
            rc = fm_error_set(err, FM_ERR_IO, "%s: %s", path, msg ? msg : "schema failed");
            sqlite3_free(msg);
            goto fail;
        }
    }
    rc = check_schema(r, err);
    if (ro && (flags & FM_RESULTS_AS_IS) && rc == FM_ERR_IO && reopen_immutable(r, path))
        rc = check_schema(r, err);
    if (rc != FM_OK) {
        fm_error_prefix(err, "%s", path);
        goto fail;
    }
    if (!ro &&
        (sqlite3_prepare_v3(r->db,
                            "INSERT OR IGNORE INTO images(job_id, tag, source, sha256, width,"
                            " height, error_code, error_text, model, worker, attempt, n_faces,"
                            " read_ms, decode_ms, detect_ms, align_ms, embed_ms, heads_ms,"
                            " total_ms, stored_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                            "?,?)",
                            -1, SQLITE_PREPARE_PERSISTENT, &r->insert_image, NULL) != SQLITE_OK ||
         sqlite3_prepare_v3(r->db,
                            "INSERT INTO faces VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                            "?,?,?,?,?,?,?,?)",
                            -1, SQLITE_PREPARE_PERSISTENT, &r->insert_face, NULL) != SQLITE_OK)) {
        rc = db_error(err, r->db, "preparing inserts");
        goto fail;
    }
    if (!ro && (rc = prepare_replacing(r, err)) != FM_OK)
        goto fail;
    if (sqlite3_prepare_v3(r->db, "SELECT error_code FROM images WHERE job_id = ?", -1,
                           SQLITE_PREPARE_PERSISTENT, &r->lookup, NULL) != SQLITE_OK) {
        rc = db_error(err, r->db, "preparing look-up");
        goto fail;
    }
    if (!ro && (rc = prepare_staging(r, err)) != FM_OK)
        goto fail;
    *out = r;
    return FM_OK;
fail:
    fm_results_close(&r);
    return rc;
}

void fm_results_close(fm_results **rp)
{
    if (!rp || !*rp)
        return;
    fm_results *r = *rp;
    if (r->in_tx)
        fm_results_rollback(r);
    sqlite3_finalize(r->insert_image);
    sqlite3_finalize(r->insert_face);
    sqlite3_finalize(r->lookup);
    sqlite3_finalize(r->replace_older);
    sqlite3_finalize(r->delete_job);
    sqlite3_finalize(r->labelled_other);
    sqlite3_finalize(r->stage);
    sqlite3_finalize(r->staged_get);
    sqlite3_finalize(r->unstage_job);
    sqlite3_finalize(r->unstage_one);
    sqlite3_close(r->db);
    free(r);
    *rp = NULL;
}

/* ---- transactions ---------------------------------------------------------------- */

fm_status fm_results_begin(fm_results *r, fm_error *err)
{
    if (r->in_tx)
        return fm_error_set(err, FM_ERR_INVALID, "results database: transaction already open");
    if (sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        r->full = sqlite3_errcode(r->db) == SQLITE_FULL;
        return db_error(err, r->db, "BEGIN");
    }
    r->in_tx = 1;
    return FM_OK;
}

fm_status fm_results_commit(fm_results *r, fm_error *err)
{
    if (!r->in_tx)
        return fm_error_set(err, FM_ERR_INVALID, "results database: no open transaction");
    if (sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        r->full = sqlite3_errcode(r->db) == SQLITE_FULL;
        fm_status rc = db_error(err, r->db, "COMMIT");
        fm_results_rollback(r);
        return rc;
    }
    r->in_tx = 0;
    r->full = 0;
    return FM_OK;
}

int fm_results_full(const fm_results *r)
{
    return r && r->full;
}

void fm_results_rollback(fm_results *r)
{
    if (!r)
        return;
    if (sqlite3_get_autocommit(r->db) == 0)
        sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    r->in_tx = 0;
}

/* ---- inserts --------------------------------------------------------------------- */

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s)
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static void bind_opt_float(sqlite3_stmt *st, int i, int has, float v)
{
    if (has && isfinite(v))
        sqlite3_bind_double(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

static fm_status insert_faces(fm_results *r, const Facemill__Result *res, int64_t image_id,
                              fm_error *err)
{
    sqlite3_stmt *st = r->insert_face;
    for (size_t f = 0; f < res->n_faces; f++) {
        const Facemill__Face *face = res->faces[f];
        int c = 1;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        sqlite3_bind_int64(st, c++, image_id);
        sqlite3_bind_int64(st, c++, (int64_t)f);
        for (size_t k = 0; k < 4; k++, c++)
            bind_opt_float(st, c, face->n_box == 4, face->n_box == 4 ? face->box[k] : 0);
        bind_opt_float(st, c++, face->has_score, face->score);
        for (size_t k = 0; k < 10; k++, c++)
            bind_opt_float(st, c, face->n_landmarks == 10,
                           face->n_landmarks == 10 ? face->landmarks[k] : 0);
        bind_opt_float(st, c++, face->has_age, face->age);
        bind_opt_float(st, c++, face->has_age_std, face->age_std);
        /* the class name is NULL when the worker abstained; its probabilities stay */
        int g = face->n_gender_probs == 2;
        bind_text_or_null(st, c++,
                          g && !face->gender_abstained
                              ? fm_result_gender_names[fm_result_argmax(face->gender_probs, 2)]
                              : NULL);
        for (size_t k = 0; k < 2; k++, c++)
            bind_opt_float(st, c, g, g ? face->gender_probs[k] : 0);
        int rc5 = face->n_race_probs == 5;
        bind_text_or_null(st, c++,
                          rc5 && !face->race_abstained
                              ? fm_result_race_names[fm_result_argmax(face->race_probs, 5)]
                              : NULL);
        for (size_t k = 0; k < 5; k++, c++)
            bind_opt_float(st, c, rc5, rc5 ? face->race_probs[k] : 0);
        if (sqlite3_step(st) != SQLITE_DONE) {
            fm_status rc = db_error(err, r->db, "inserting a face");
            sqlite3_reset(st);
            return rc;
        }
    }
    sqlite3_reset(st);
    return FM_OK;
}

fm_status fm_results_put(fm_results *r, const struct Facemill__Result *res, int64_t stored_ms,
                         int *inserted, int *failed, fm_error *err)
{
    if (!r->insert_image)
        return fm_error_set(err, FM_ERR_INVALID, "results database opened read-only");
    if (!res->job_id || !res->job_id[0])
        return fm_error_set(err, FM_ERR_INVALID, "result without a job id");
    uint32_t code = res->has_error_code ? res->error_code : 0;
    if (code && code != FACEMILL__ERROR_CODE__ERROR_DECODE &&
        code != FACEMILL__ERROR_CODE__ERROR_UNSUPPORTED &&
        code != FACEMILL__ERROR_CODE__ERROR_LIMIT && res->source) {
        /* A failure that says nothing of the image (a file unreadable for now or
         * moved, a timeout, a worker's own failure) never replaces labels: when the
         * name has a labelled row under another job id, that row stays and the
         * failure gets none. The job counts as failed in its run and, having no row,
         * is tried again by the next. (Bytes that do not decode, or too large, are
         * what the name holds now: their row replaces the older content's.) */
        sqlite3_stmt *q = r->labelled_other;
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, res->source, -1, SQLITE_TRANSIENT);
        bind_text_or_null(q, 2, res->tag);
        sqlite3_bind_text(q, 3, res->job_id, -1, SQLITE_TRANSIENT);
        int s = sqlite3_step(q);
        sqlite3_reset(q);
        if (s != SQLITE_ROW && s != SQLITE_DONE)
            return db_error(err, r->db, "looking up an image's labelled row");
        if (s == SQLITE_ROW) {
            if (inserted)
                *inserted = 0;
            if (failed)
                *failed = 1;
            return FM_OK;
        }
    }
    char hex[65];
    int have_sha = res->has_sha256 && res->sha256.len == 32;
    if (have_sha)
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", res->sha256.data[i]);

    sqlite3_stmt *st = r->insert_image;
    int c = 1;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    sqlite3_bind_text(st, c++, res->job_id, -1, SQLITE_TRANSIENT);
    bind_text_or_null(st, c++, res->tag);
    bind_text_or_null(st, c++, res->source);
    bind_text_or_null(st, c++, have_sha ? hex : NULL);
    if (res->has_width)
        sqlite3_bind_int64(st, c, res->width);
    c++;
    if (res->has_height)
        sqlite3_bind_int64(st, c, res->height);
    c++;
    sqlite3_bind_int64(st, c++, code);
    bind_text_or_null(st, c++, code ? (res->error_text ? res->error_text : "") : NULL);
    bind_text_or_null(st, c++, res->model);
    bind_text_or_null(st, c++, res->worker);
    if (res->has_attempt)
        sqlite3_bind_int64(st, c, res->attempt);
    c++;
    sqlite3_bind_int64(st, c++, code ? 0 : (int64_t)res->n_faces);
    const Facemill__StageTimes *t = res->times;
    bind_opt_float(st, c++, t && t->has_read_ms, t ? t->read_ms : 0);
    bind_opt_float(st, c++, t && t->has_decode_ms, t ? t->decode_ms : 0);
    bind_opt_float(st, c++, t && t->has_detect_ms, t ? t->detect_ms : 0);
    bind_opt_float(st, c++, t && t->has_align_ms, t ? t->align_ms : 0);
    bind_opt_float(st, c++, t && t->has_embed_ms, t ? t->embed_ms : 0);
    bind_opt_float(st, c++, t && t->has_heads_ms, t ? t->heads_ms : 0);
    bind_opt_float(st, c++, t && t->has_total_ms, t ? t->total_ms : 0);
    sqlite3_bind_int64(st, c++, stored_ms);
    if (sqlite3_step(st) != SQLITE_DONE) {
        fm_status rc = db_error(err, r->db, "inserting an image");
        sqlite3_reset(st);
        return rc;
    }
    sqlite3_reset(st);
    if (sqlite3_changes(r->db) == 0) {
        /* A duplicate: report what the stored row says, not this message; unless that
         * row is a failure, which is never final: a job tried again (`facemill label
         * --retry-failed`, a result that arrives after its job was given up) takes
         * its new outcome. A labelled row is never replaced. */
        int found = 0, was_failed = 0;
        fm_status rc = fm_results_lookup(r, res->job_id, &found, &was_failed, err);
        if (rc != FM_OK || !found || !was_failed) {
            if (inserted)
                *inserted = 0;
            if (failed)
                *failed = was_failed;
            return rc;
        }
        sqlite3_stmt *d = r->delete_job;
        sqlite3_reset(d);
        sqlite3_bind_text(d, 1, res->job_id, -1, SQLITE_TRANSIENT);
        int s = sqlite3_step(d);
        sqlite3_reset(d);
        if (s != SQLITE_DONE || sqlite3_step(st) != SQLITE_DONE) {
            rc = db_error(err, r->db, "replacing a failed row");
            sqlite3_reset(st);
            return rc;
        }
        sqlite3_reset(st);
    }
    const sqlite3_int64 row = sqlite3_last_insert_rowid(r->db);
    if (res->source) { /* the older content's rows go (their faces by the cascade) */
        sqlite3_stmt *d = r->replace_older;
        sqlite3_reset(d);
        sqlite3_bind_text(d, 1, res->source, -1, SQLITE_TRANSIENT);
        bind_text_or_null(d, 2, res->tag);
        sqlite3_bind_text(d, 3, res->job_id, -1, SQLITE_TRANSIENT);
        int s = sqlite3_step(d);
        sqlite3_reset(d);
        if (s != SQLITE_DONE)
            return db_error(err, r->db, "replacing an image's older rows");
    }
    if (inserted)
        *inserted = 1;
    if (failed)
        *failed = code != 0;
    if (code == 0)
        return insert_faces(r, res, row, err);
    return FM_OK;
}

fm_status fm_results_lookup(fm_results *r, const char *job_id, int *found, int *failed,
                            fm_error *err)
{
    sqlite3_stmt *st = r->lookup;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_TRANSIENT);
    int s = sqlite3_step(st);
    *found = s == SQLITE_ROW;
    if (s == SQLITE_ROW && failed)
        *failed = sqlite3_column_int64(st, 0) != 0;
    sqlite3_reset(st);
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        return db_error(err, r->db, "looking up a job");
    return FM_OK;
}

/* ---- staging --------------------------------------------------------------------- */

/* Runs st (its parameters bound) to completion and resets it. */
static fm_status step_done(fm_results *r, sqlite3_stmt *st, const char *what, fm_error *err)
{
    int s = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (s == SQLITE_DONE)
        return FM_OK;
    r->full = (s & 0xff) == SQLITE_FULL;
    return db_error(err, r->db, what);
}

fm_status fm_results_stage(fm_results *r, const struct Facemill__Result *res,
                           int64_t staged_ms, fm_error *err)
{
    if (!r->stage)
        return fm_error_set(err, FM_ERR_INVALID, "results database opened read-only");
    if (!res->job_id || !res->job_id[0])
        return fm_error_set(err, FM_ERR_INVALID, "result without a job id");
    if (!res->has_token || res->token.len == 0)
        return fm_error_set(err, FM_ERR_INVALID, "result for %.256s without a dispatch "
                            "token", res->job_id);
    size_t n = facemill__result__get_packed_size(res);
    uint8_t *blob = malloc(n ? n : 1);
    if (!blob)
        return fm_error_set(err, FM_ERR_NOMEM, "staging a result of %zu bytes", n);
    facemill__result__pack(res, blob);
    sqlite3_stmt *st = r->stage;
    sqlite3_bind_text(st, 1, res->job_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, res->token.data, (int)res->token.len, SQLITE_TRANSIENT);
    bind_text_or_null(st, 3, res->tag);
    sqlite3_bind_int(st, 4, res->has_error_code && res->error_code != 0);
    sqlite3_bind_blob64(st, 5, blob, n, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, staged_ms);
    fm_status rc = step_done(r, st, "staging a result", err);
    free(blob);
    return rc;
}

/* Deletes the staged results of job_id (all of them with token NULL). */
static fm_status unstage(fm_results *r, const char *job_id, const void *token, size_t len,
                         fm_error *err)
{
    sqlite3_stmt *st = token ? r->unstage_one : r->unstage_job;
    if (!st)
        return fm_error_set(err, FM_ERR_INVALID, "results database opened read-only");
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_TRANSIENT);
    if (token)
        sqlite3_bind_blob(st, 2, token, (int)len, SQLITE_TRANSIENT);
    return step_done(r, st, "dropping a staged result", err);
}

fm_status fm_results_unstage(fm_results *r, const char *job_id, const void *token,
                             size_t token_len, fm_error *err)
{
    return unstage(r, job_id, token ? token : "", token_len, err);
}

/* The staged result (job_id, token), unpacked into *out (NULL when there is none).
 * A blob that does not unpack is dropped (FM_ERR_FORMAT). */
static fm_status staged_result(fm_results *r, const char *job_id, const void *token,
                               size_t len, Facemill__Result **out, fm_error *err)
{
    *out = NULL;
    sqlite3_stmt *st = r->staged_get;
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, token, (int)len, SQLITE_TRANSIENT);
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW)
        *out = facemill__result__unpack(NULL, (size_t)sqlite3_column_bytes(st, 0),
                                        sqlite3_column_blob(st, 0));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        return db_error(err, r->db, "reading a staged result");
    if (s == SQLITE_ROW && !*out) {
        unstage(r, job_id, token, len, NULL);
        return fm_error_set(err, FM_ERR_FORMAT, "staged result of %.256s does not unpack: "
                            "dropped", job_id);
    }
    return FM_OK;
}

fm_status fm_results_confirm(fm_results *r, const char *job_id, const void *token,
                             size_t token_len, int64_t stored_ms, int *stored, int *inserted,
                             int *failed, fm_error *err)
{
    *stored = 0;
    if (inserted)
        *inserted = 0;
    if (!r->staged_get)
        return fm_error_set(err, FM_ERR_INVALID, "results database opened read-only");
    int found = 0, f = 0;
    fm_status rc = fm_results_lookup(r, job_id, &found, &f, err);
    if (rc != FM_OK)
        return rc;
    if (!found || f) { /* no row, or a failed one (see fm_results_put) */
        Facemill__Result *res = NULL;
        if ((rc = staged_result(r, job_id, token, token_len, &res, err)) != FM_OK)
            return rc;
        if (!res && !found)
            return FM_OK;
        if (res) {
            rc = fm_results_put(r, res, stored_ms, inserted, &f, err);
            facemill__result__free_unpacked(res, NULL);
            if (rc != FM_OK)
                return rc;
        }
    }
    /* The job has its row: whatever else was staged for it is no longer needed. */
    if ((rc = unstage(r, job_id, NULL, 0, err)) != FM_OK)
        return rc;
    *stored = 1;
    if (failed)
        *failed = f;
    return FM_OK;
}

fm_status fm_results_each_staged(fm_results *r, int64_t before_ms, int64_t max,
                                 fm_staged_fn fn, void *arg, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT job_id, tag, token, failed FROM staged WHERE staged_ms <= ?"
                           " ORDER BY staged_ms LIMIT ?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(err, r->db, "listing staged results");
    sqlite3_bind_int64(st, 1, before_ms);
    sqlite3_bind_int64(st, 2, max);
    fm_status rc = FM_OK;
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW)
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1), sqlite3_column_blob(st, 2),
               (size_t)sqlite3_column_bytes(st, 2), sqlite3_column_int(st, 3)) != 0)
            break;
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        rc = db_error(err, r->db, "listing staged results");
    sqlite3_finalize(st);
    return rc;
}

fm_status fm_results_count(fm_results *r, int64_t *images, int64_t *faces, int64_t *failed,
                           fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT count(*), coalesce(sum(n_faces), 0),"
                           " coalesce(sum(error_code != 0), 0) FROM images",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        rc = db_error(err, r->db, "counting");
        goto done;
    }
    if (images)
        *images = sqlite3_column_int64(st, 0);
    if (faces)
        *faces = sqlite3_column_int64(st, 1);
    if (failed)
        *failed = sqlite3_column_int64(st, 2);
done:
    sqlite3_finalize(st);
    return rc;
}

/* ---- export ---------------------------------------------------------------------- */

/* Columns of the export query, in order. */
enum {
    X_ID, X_JOB, X_SOURCE, X_SHA, X_W, X_H, X_CODE, X_TEXT, X_MODEL, X_WORKER, X_ATTEMPT,
    X_READ, X_DECODE, X_DETECT, X_ALIGN, X_EMBED, X_HEADS, X_IMAGE_COLS
};
/* Face columns follow the image columns: face, x1..y2, score, 10 landmarks, age,
 * age_std, p_male, p_female, 5 race probabilities, the gender and race names. The
 * names are only read for being NULL beside probabilities (the worker abstained): the
 * result writer names the most probable class itself. */
enum {
    F_FACE = X_IMAGE_COLS, F_BOX, F_SCORE = F_BOX + 4, F_LM, F_AGE = F_LM + 10, F_AGE_STD,
    F_PG, F_PR = F_PG + 2, F_GENDER = F_PR + 5, F_RACE, F_END
};

static const char *const export_sql =
    "SELECT i.id, i.job_id, i.source, i.sha256, i.width, i.height, i.error_code,"
    " i.error_text, i.model, i.worker, i.attempt, i.read_ms, i.decode_ms, i.detect_ms,"
    " i.align_ms, i.embed_ms, i.heads_ms,"
    " f.face, f.x1, f.y1, f.x2, f.y2, f.score, f.le_x, f.le_y, f.re_x, f.re_y,"
    " f.nose_x, f.nose_y, f.lm_x, f.lm_y, f.rm_x, f.rm_y, f.age, f.age_std,"
    " f.p_male, f.p_female, f.p_white, f.p_black, f.p_asian, f.p_indian, f.p_others,"
    " f.gender, f.race"
    " FROM images i LEFT JOIN faces f ON f.image_id = i.id"
    " ORDER BY i.source, i.job_id, f.face";

/* --times: the stages of the worker (total_ms, their sum, is not repeated). */
static const char *const stage_names[] = {"read", "decode", "detect", "align", "embed",
                                          "heads"};
#define N_STAGES (int)(sizeof stage_names / sizeof stage_names[0])

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static int col_null(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL;
}

static int col_size(sqlite3_stmt *st, int i)
{
    int64_t v = sqlite3_column_int64(st, i);
    return col_null(st, i) || v < 0 || v > INT32_MAX ? -1 : (int)v;
}

/* n float columns from first into v; 1 when none of them is NULL. Floats were stored
 * from 32-bit values, so they come back exactly. */
static int col_floats(sqlite3_stmt *st, int first, int n, float *v)
{
    for (int k = 0; k < n; k++) {
        if (col_null(st, first + k))
            return 0;
        v[k] = (float)sqlite3_column_double(st, first + k);
    }
    return 1;
}

static void image_of_row(sqlite3_stmt *st, fm_result_image *im)
{
    im->source = col_text(st, X_SOURCE);
    im->width = col_size(st, X_W);
    im->height = col_size(st, X_H);
    im->error_code = (uint32_t)sqlite3_column_int64(st, X_CODE);
    im->error_text = col_text(st, X_TEXT);
}

static void face_of_row(sqlite3_stmt *st, fm_result_face *f)
{
    memset(f, 0, sizeof *f);
    float age[2];
    if (col_floats(st, F_BOX, 4, f->box))
        f->has |= FM_RESULT_HAS_BOX;
    if (col_floats(st, F_SCORE, 1, &f->score))
        f->has |= FM_RESULT_HAS_SCORE;
    if (col_floats(st, F_LM, 10, f->landmarks))
        f->has |= FM_RESULT_HAS_LANDMARKS;
    if (col_floats(st, F_AGE, 2, age)) {
        f->has |= FM_RESULT_HAS_AGE;
        f->age = age[0];
        f->age_std = age[1];
    }
    if (col_floats(st, F_PG, FM_RESULT_GENDERS, f->gender_probs))
        f->has |= FM_RESULT_HAS_GENDER | (col_null(st, F_GENDER) ? FM_RESULT_GENDER_ABSTAINED : 0);
    if (col_floats(st, F_PR, FM_RESULT_RACES, f->race_probs))
        f->has |= FM_RESULT_HAS_RACE | (col_null(st, F_RACE) ? FM_RESULT_RACE_ABSTAINED : 0);
}

static void json_str_col(fm_json *j, sqlite3_stmt *st, int i)
{
    const char *s = col_text(st, i);
    if (s)
        fm_json_str(j, s);
    else
        fm_json_null(j);
}

/* Opens an image's object: the schema's fields, then the database's own (job_id,
 * sha256, model; with --times worker, attempt, times_ms), then the faces array. */
static void jsonl_image_begin(fm_json *j, sqlite3_stmt *st, int flags)
{
    fm_result_image im;
    image_of_row(st, &im);
    fm_result_json_begin(j, &im);
    fm_json_key(j, "job_id");
    json_str_col(j, st, X_JOB);
    fm_json_key(j, "sha256");
    json_str_col(j, st, X_SHA);
    fm_json_key(j, "model");
    json_str_col(j, st, X_MODEL);
    if (flags & FM_EXPORT_TIMES) {
        fm_json_key(j, "worker");
        json_str_col(j, st, X_WORKER);
        fm_json_key(j, "attempt");
        if (col_null(st, X_ATTEMPT))
            fm_json_null(j);
        else
            fm_json_int(j, sqlite3_column_int64(st, X_ATTEMPT));
        double ms[N_STAGES];
        for (int k = 0; k < N_STAGES; k++)
            ms[k] = col_null(st, X_READ + k) ? NAN : sqlite3_column_double(st, X_READ + k);
        fm_result_json_times(j, stage_names, ms, N_STAGES);
    }
    fm_result_json_faces(j);
}

/* One CSV field from a column: text quoted as needed, floats as the JSON writes them,
 * nothing for NULL. */
static void csv_col(FILE *out, sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_NULL:
        break;
    case SQLITE_INTEGER:
        fprintf(out, "%" PRId64, (int64_t)sqlite3_column_int64(st, i));
        break;
    case SQLITE_FLOAT:
        fm_result_csv_f32(out, (float)sqlite3_column_double(st, i));
        break;
    default:
        fm_result_csv_text(out, col_text(st, i));
    }
}

/* The header: the schema's image columns, the database's, the face columns, and with
 * --times (values that differ from run to run) worker, attempt and the stage times. */
static void csv_header(FILE *out, int flags)
{
    fm_result_csv_image_header(out);
    fputs(",job_id,sha256,model,", out);
    fm_result_csv_face_header(out);
    if (flags & FM_EXPORT_TIMES) {
        fputs(",worker,attempt", out);
        for (int k = 0; k < N_STAGES; k++)
            fprintf(out, ",times_ms.%s", stage_names[k]);
    }
    fputc('\n', out);
}

static void csv_row(FILE *out, sqlite3_stmt *st, int flags)
{
    fm_result_image im;
    image_of_row(st, &im);
    fm_result_csv_image(out, &im);
    static const int db_cols[] = {X_JOB, X_SHA, X_MODEL};
    for (size_t k = 0; k < sizeof db_cols / sizeof db_cols[0]; k++) {
        fputc(',', out);
        csv_col(out, st, db_cols[k]);
    }
    fputc(',', out);
    if (col_null(st, F_FACE)) {
        fm_result_csv_face(out, -1, NULL);
    } else {
        fm_result_face f;
        face_of_row(st, &f);
        fm_result_csv_face(out, (int)sqlite3_column_int64(st, F_FACE), &f);
    }
    if (flags & FM_EXPORT_TIMES)
        for (int i = X_WORKER; i < X_WORKER + 2 + N_STAGES; i++) {
            fputc(',', out);
            csv_col(out, st, i);
        }
    fputc('\n', out);
}

fm_status fm_results_export(fm_results *r, FILE *out, fm_export_format format, int flags,
                            fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    fm_json j;
    fm_json_init(&j, out);
    /* One read transaction: the export is a consistent snapshot while a sink writes. */
    if (sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return db_error(err, r->db, "BEGIN");
    if (sqlite3_prepare_v2(r->db, export_sql, -1, &st, NULL) != SQLITE_OK) {
        rc = db_error(err, r->db, "preparing the export");
        goto done;
    }
    if (format == FM_EXPORT_CSV)
        csv_header(out, flags);
    int64_t open_image = -1; /* JSONL: id of the image whose object is open */
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (format == FM_EXPORT_CSV) {
            csv_row(out, st, flags);
            continue;
        }
        int64_t id = sqlite3_column_int64(st, X_ID);
        if (id != open_image) {
            if (open_image >= 0) {
                fm_result_json_end(&j);
                fm_json_newline(&j);
            }
            jsonl_image_begin(&j, st, flags);
            open_image = id;
        }
        if (!col_null(st, F_FACE)) {
            fm_result_face f;
            face_of_row(st, &f);
            fm_result_json_face(&j, &f);
        }
    }
    if (s != SQLITE_DONE) {
        rc = db_error(err, r->db, "reading results");
        goto done;
    }
    if (open_image >= 0) {
        fm_result_json_end(&j);
        fm_json_newline(&j);
    }
    if (fflush(out) != 0 || ferror(out))
        rc = fm_error_set(err, FM_ERR_IO, "writing the export: %s", strerror(errno));
done:
    sqlite3_finalize(st);
    sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    return rc;
}
