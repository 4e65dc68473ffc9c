/* journal.c - the broker's SQLite journal of accepted jobs (broker/queue/journal-impl.h).
 *
 * Why SQLite rather than an append-only log: lookups by id (duplicates, commits),
 * per-tag counts for status and compaction of committed jobs come for free, and its
 * WAL mode gives exactly the fsync policies broker.fsync offers.
 */
#include "journal-impl.h"

#include <sqlite3.h>

#include <stdlib.h>
#include <string.h>

struct fm_journal {
    sqlite3 *db;
    sqlite3_stmt *lookup, *add, *attempts, *quarantine, *commit;
};

static fm_status db_error(fm_journal *j, fm_error *err, const char *what)
{
    return fm_error_set(err, FM_ERR_IO, "journal %s: %s", what,
                        j && j->db ? sqlite3_errmsg(j->db) : "no database");
}

static fm_status exec(fm_journal *j, const char *sql, fm_error *err)
{
    char *msg = NULL;
    if (sqlite3_exec(j->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fm_status st = fm_error_set(err, FM_ERR_IO, "journal: %s: %s", sql,
                                    msg ? msg : "?");
        sqlite3_free(msg);
        return st;
    }
    return FM_OK;
}

fm_status fm_journal_open(fm_journal **out, const char *path, int fsync_mode,
                          fm_error *err)
{
    fm_status st;
    *out = NULL;
    fm_journal *j = calloc(1, sizeof *j);
    if (!j)
        return fm_error_set(err, FM_ERR_NOMEM, "journal");
    if (sqlite3_open_v2(path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        st = fm_error_set(err, FM_ERR_IO, "journal %s: %s", path,
                          j->db ? sqlite3_errmsg(j->db) : "cannot open");
        goto fail;
    }
    sqlite3_busy_timeout(j->db, 5000);
    static const char *const sync_sql[] = {"PRAGMA synchronous=FULL",
                                           "PRAGMA synchronous=NORMAL",
                                           "PRAGMA synchronous=OFF"};
    if (fsync_mode < 0 || fsync_mode > 2)
        fsync_mode = 0;
    if ((st = exec(j, "PRAGMA journal_mode=WAL", err)) != FM_OK ||
        (st = exec(j, sync_sql[fsync_mode], err)) != FM_OK ||
        (st = exec(j,
                   "CREATE TABLE IF NOT EXISTS jobs(id TEXT PRIMARY KEY, tag TEXT,"
                   " committed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL"
                   " DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0, attempts INTEGER"
                   " NOT NULL DEFAULT 0, error TEXT, body BLOB);"
                   "CREATE INDEX IF NOT EXISTS jobs_tag ON jobs(tag);"
                   "CREATE INDEX IF NOT EXISTS jobs_pending ON jobs(committed);",
                   err)) != FM_OK)
        goto fail;
    struct {
        sqlite3_stmt **s;
        const char *sql;
    } stmts[] = {
        {&j->lookup, "SELECT committed FROM jobs WHERE id=?1"},
        {&j->add, "INSERT INTO jobs(id, tag, body) VALUES(?1, ?2, ?3)"},
        {&j->attempts, "UPDATE jobs SET attempts=?2, error=?3 WHERE id=?1"},
        {&j->quarantine, "UPDATE jobs SET quarantined=1 WHERE id=?1"},
        {&j->commit, "UPDATE jobs SET committed=1, failed=?2, body=NULL"
                     " WHERE id=?1 AND committed=0"},
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        if (sqlite3_prepare_v2(j->db, stmts[i].sql, -1, stmts[i].s, NULL) != SQLITE_OK) {
            st = db_error(j, err, "prepare");
            goto fail;
        }
    *out = j;
    return FM_OK;
fail:
    fm_journal_close(&j);
    return st;
}

void fm_journal_close(fm_journal **jp)
{
    if (!jp || !*jp)
        return;
    fm_journal *j = *jp;
    sqlite3_finalize(j->lookup);
    sqlite3_finalize(j->add);
    sqlite3_finalize(j->attempts);
    sqlite3_finalize(j->quarantine);
    sqlite3_finalize(j->commit);
    sqlite3_close(j->db);
    free(j);
    *jp = NULL;
}

fm_status fm_journal_begin(fm_journal *j, fm_error *err)
{
    return exec(j, "BEGIN", err);
}

fm_status fm_journal_commit(fm_journal *j, fm_error *err)
{
    return exec(j, "COMMIT", err);
}

void fm_journal_rollback(fm_journal *j)
{
    sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Runs a prepared write statement to completion and resets it. */
static fm_status step_done(fm_journal *j, sqlite3_stmt *s, fm_error *err)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? FM_OK : db_error(j, err, "write");
}

fm_status fm_journal_lookup(fm_journal *j, const char *id, int *state, fm_error *err)
{
    sqlite3_bind_text(j->lookup, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(j->lookup);
    fm_status st = FM_OK;
    if (rc == SQLITE_ROW)
        *state = sqlite3_column_int(j->lookup, 0) ? 1 : 0;
    else if (rc == SQLITE_DONE)
        *state = -1;
    else
        st = db_error(j, err, "lookup");
    sqlite3_reset(j->lookup);
    sqlite3_clear_bindings(j->lookup);
    return st;
}

fm_status fm_journal_add(fm_journal *j, const char *id, const char *tag,
                         const void *body, size_t len, fm_error *err)
{
    sqlite3_bind_text(j->add, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(j->add, 2, tag ? tag : "", -1, SQLITE_STATIC);
    sqlite3_bind_blob64(j->add, 3, body, (sqlite3_uint64)len, SQLITE_STATIC);
    return step_done(j, j->add, err);
}

fm_status fm_journal_set_attempts(fm_journal *j, const char *id, int attempts,
                                  const char *error, fm_error *err)
{
    sqlite3_bind_text(j->attempts, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(j->attempts, 2, attempts);
    sqlite3_bind_text(j->attempts, 3, error ? error : "", -1, SQLITE_STATIC);
    return step_done(j, j->attempts, err);
}

fm_status fm_journal_quarantine(fm_journal *j, const char *id, fm_error *err)
{
    sqlite3_bind_text(j->quarantine, 1, id, -1, SQLITE_STATIC);
    return step_done(j, j->quarantine, err);
}

fm_status fm_journal_mark_committed(fm_journal *j, const char *id, int failed,
                                    int *changed, fm_error *err)
{
    sqlite3_bind_text(j->commit, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(j->commit, 2, failed ? 1 : 0);
    fm_status st = step_done(j, j->commit, err);
    if (changed)
        *changed = st == FM_OK && sqlite3_changes(j->db) > 0;
    return st;
}

fm_status fm_journal_each_pending(fm_journal *j, fm_journal_each_fn fn, void *ctx,
                                  fm_error *err)
{
    sqlite3_stmt *s = NULL;
    fm_status st = FM_OK;
    if (sqlite3_prepare_v2(j->db,
                           "SELECT id, tag, body, attempts, quarantined, error FROM jobs"
                           " WHERE committed=0 ORDER BY rowid",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(j, err, "load");
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 0);
        const char *tag = (const char *)sqlite3_column_text(s, 1);
        const void *body = sqlite3_column_blob(s, 2);
        size_t len = (size_t)sqlite3_column_bytes(s, 2);
        const char *error = (const char *)sqlite3_column_text(s, 5);
        if (fn(ctx, id ? id : "", tag ? tag : "", body, len, sqlite3_column_int(s, 3),
               sqlite3_column_int(s, 4), error ? error : "")) {
            st = fm_error_set(err, FM_ERR_NOMEM, "journal: loading pending jobs");
            goto done;
        }
    }
    if (rc != SQLITE_DONE)
        st = db_error(j, err, "load");
done:
    sqlite3_finalize(s);
    return st;
}

fm_status fm_journal_counts(fm_journal *j, const char *tag, uint64_t *total,
                            uint64_t *committed, uint64_t *failed, uint64_t *quarantined,
                            fm_error *err)
{
    sqlite3_stmt *s = NULL;
    const char *sql = tag ? "SELECT count(*), total(committed), total(committed AND failed),"
                            " total(committed AND quarantined) FROM jobs WHERE tag=?1"
                          : "SELECT count(*), total(committed), total(committed AND failed),"
                            " total(committed AND quarantined) FROM jobs";
    if (sqlite3_prepare_v2(j->db, sql, -1, &s, NULL) != SQLITE_OK)
        return db_error(j, err, "count");
    if (tag)
        sqlite3_bind_text(s, 1, tag, -1, SQLITE_STATIC);
    fm_status st = FM_OK;
    if (sqlite3_step(s) == SQLITE_ROW) {
        *total = (uint64_t)sqlite3_column_int64(s, 0);
        *committed = (uint64_t)sqlite3_column_double(s, 1);
        *failed = (uint64_t)sqlite3_column_double(s, 2);
        *quarantined = (uint64_t)sqlite3_column_double(s, 3);
    } else {
        st = db_error(j, err, "count");
    }
    sqlite3_finalize(s);
    return st;
}
