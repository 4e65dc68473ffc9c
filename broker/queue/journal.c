/* journal.c - the broker's SQLite journal of accepted jobs (broker/queue/journal-impl.h).
 *
 * Why SQLite rather than an append-only log: lookups by id (duplicates, commits),
 * per-tag counts for status and compaction of committed jobs come for free, and its
 * WAL mode gives exactly the fsync policies broker.fsync offers.
 */
#include "journal-impl.h"

#include <sqlite3.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct fm_journal {
    sqlite3 *db;
    sqlite3_stmt *lookup, *add, *attempts, *quarantine, *commit, *body;
    int full; /* the last failure was SQLITE_FULL; cleared by a transaction committed */
    uint64_t written; /* transactions committed (fm_journal_written) */
};

static fm_status db_error(fm_journal *j, fm_error *err, const char *what)
{
    if (j && j->db)
        j->full = sqlite3_errcode(j->db) == SQLITE_FULL;
    return fm_error_set(err, FM_ERR_IO, "journal %s: %s", what,
                        j && j->db ? sqlite3_errmsg(j->db) : "no database");
}

static fm_status exec(fm_journal *j, const char *sql, fm_error *err)
{
    char *msg = NULL;
    if (sqlite3_exec(j->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        j->full = sqlite3_errcode(j->db) == SQLITE_FULL;
        fm_status st = fm_error_set(err, FM_ERR_IO, "journal: %s: %s", sql,
                                    msg ? msg : "?");
        sqlite3_free(msg);
        return st;
    }
    return FM_OK;
}

/* The schema. tags holds each tag's counts, kept by triggers in the transaction
 * that changes a job: a status request for a tag of a million jobs reads one row
 * instead of counting them. A journal from before the table gets it filled once. */
static fm_status create_schema(fm_journal *j, fm_error *err)
{
    sqlite3_stmt *s = NULL;
    int had_tags = 0;
    if (sqlite3_prepare_v2(j->db, "SELECT 1 FROM sqlite_master WHERE name='tags'", -1, &s,
                           NULL) != SQLITE_OK)
        return db_error(j, err, "schema");
    had_tags = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_finalize(s);
    fm_status st = exec(j, "BEGIN", err);
    if (st != FM_OK)
        return st;
    st = exec(j,
              "CREATE TABLE IF NOT EXISTS jobs(id TEXT PRIMARY KEY, tag TEXT,"
              " committed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL"
              " DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0, attempts INTEGER"
              " NOT NULL DEFAULT 0, error TEXT, body BLOB);"
              "CREATE INDEX IF NOT EXISTS jobs_tag ON jobs(tag);"
              "CREATE INDEX IF NOT EXISTS jobs_pending ON jobs(committed);"
              "CREATE TABLE IF NOT EXISTS tags(tag TEXT PRIMARY KEY,"
              " total INTEGER NOT NULL DEFAULT 0, committed INTEGER NOT NULL DEFAULT 0,"
              " failed INTEGER NOT NULL DEFAULT 0, quarantined INTEGER NOT NULL DEFAULT 0);"
              "CREATE TRIGGER IF NOT EXISTS jobs_tag_add AFTER INSERT ON jobs BEGIN"
              " INSERT OR IGNORE INTO tags(tag) VALUES(new.tag);"
              " UPDATE tags SET total=total+1, committed=committed+(new.committed<>0),"
              " failed=failed+(new.committed<>0 AND new.failed<>0),"
              " quarantined=quarantined+(new.committed<>0 AND new.quarantined<>0)"
              " WHERE tag=new.tag; END;"
              "CREATE TRIGGER IF NOT EXISTS jobs_tag_commit AFTER UPDATE OF committed ON"
              " jobs WHEN new.committed<>0 AND old.committed=0 BEGIN"
              " UPDATE tags SET committed=committed+1, failed=failed+(new.failed<>0),"
              " quarantined=quarantined+(new.quarantined<>0) WHERE tag=new.tag; END;",
              err);
    if (st == FM_OK && !had_tags)
        st = exec(j,
                  "INSERT OR REPLACE INTO tags SELECT tag, count(*), total(committed<>0),"
                  " total(committed<>0 AND failed<>0), total(committed<>0 AND"
                  " quarantined<>0) FROM jobs GROUP BY tag",
                  err);
    if (st != FM_OK) {
        sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
        return st;
    }
    return exec(j, "COMMIT", err);
}

/* PRAGMA quick_check: a damaged journal (a file truncated mid-page, a disk error)
 * stops the broker with the way out, instead of failing at some later write. */
static fm_status check_pages(fm_journal *j, const char *path, fm_error *err)
{
    sqlite3_stmt *s = NULL;
    char first[256] = "";
    int ok = 0, rc = SQLITE_OK;
    if ((rc = sqlite3_prepare_v2(j->db, "PRAGMA quick_check(1)", -1, &s, NULL)) ==
            SQLITE_OK &&
        (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(s, 0);
        snprintf(first, sizeof first, "%s", t ? t : "?");
        ok = strcmp(first, "ok") == 0;
        rc = SQLITE_CORRUPT; /* a report of damage, unless ok */
    } else {
        snprintf(first, sizeof first, "%s", sqlite3_errmsg(j->db));
    }
    sqlite3_finalize(s);
    if (ok)
        return FM_OK;
    if ((rc & 0xff) != SQLITE_CORRUPT && (rc & 0xff) != SQLITE_NOTADB)
        /* a full disk, an I/O error, a lock: nothing says the file is damaged, and
         * --recover would only move it aside */
        return fm_error_set(err, FM_ERR_IO,
                            "journal %s cannot be checked: %s (a full disk or an I/O "
                            "error, not damage: free space or mend the disk, then start "
                            "facemill-broker again)",
                            path, first);
    for (char *c = first; *c; c++) /* SQLite's report runs over lines: one log line */
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    char abs[4096];
    fm_journal_abs_path(path, abs, sizeof abs);
    return fm_error_set(err, FM_ERR_FORMAT,
                        "journal %s is damaged (%s): stop here and run `facemill-broker "
                        "--recover --set broker.journal=%s` (with the same --config, if "
                        "any); it copies every job it can read into a new journal and "
                        "keeps the damaged file aside",
                        abs, first, abs);
}

void fm_journal_abs_path(const char *path, char *buf, size_t size)
{
    char cwd[4096];
    int n = -1;
    if (path[0] != '/' && getcwd(cwd, sizeof cwd))
        n = snprintf(buf, size, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", path);
    if (n < 0 || (size_t)n >= size) /* absolute, or too long to join: as given */
        snprintf(buf, size, "%s", path);
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
    if ((st = check_pages(j, path, err)) != FM_OK ||
        (st = exec(j, "PRAGMA journal_mode=WAL", err)) != FM_OK ||
        (st = exec(j, sync_sql[fsync_mode], err)) != FM_OK ||
        (st = create_schema(j, err)) != FM_OK)
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
        {&j->body, "SELECT body FROM jobs WHERE id=?1"},
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
    sqlite3_finalize(j->body);
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
    fm_status st = exec(j, "COMMIT", err);
    if (st == FM_OK) {
        j->full = 0;
        j->written++;
    }
    return st;
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
    if (rc != SQLITE_DONE)
        return db_error(j, err, "write");
    if (sqlite3_get_autocommit(j->db)) /* outside BEGIN: a transaction of its own */
        j->written++;
    return FM_OK;
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
                           "SELECT id, tag, length(body), attempts, quarantined, error"
                           " FROM jobs WHERE committed=0 ORDER BY rowid",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(j, err, "load");
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 0);
        const char *tag = (const char *)sqlite3_column_text(s, 1);
        size_t len = (size_t)sqlite3_column_int64(s, 2);
        const char *error = (const char *)sqlite3_column_text(s, 5);
        if (fn(ctx, id ? id : "", tag ? tag : "", len, sqlite3_column_int(s, 3),
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
    const char *sql = tag ? "SELECT total, committed, failed, quarantined FROM tags"
                            " WHERE tag=?1"
                          : "SELECT total(total), total(committed), total(failed),"
                            " total(quarantined) FROM tags";
    if (sqlite3_prepare_v2(j->db, sql, -1, &s, NULL) != SQLITE_OK)
        return db_error(j, err, "count");
    if (tag)
        sqlite3_bind_text(s, 1, tag, -1, SQLITE_STATIC);
    fm_status st = FM_OK;
    *total = *committed = *failed = *quarantined = 0;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *total = (uint64_t)sqlite3_column_double(s, 0);
        *committed = (uint64_t)sqlite3_column_double(s, 1);
        *failed = (uint64_t)sqlite3_column_double(s, 2);
        *quarantined = (uint64_t)sqlite3_column_double(s, 3);
    } else if (rc != SQLITE_DONE) { /* no row: a tag never submitted */
        st = db_error(j, err, "count");
    }
    sqlite3_finalize(s);
    return st;
}

fm_status fm_journal_body(fm_journal *j, const char *id, uint8_t **body, size_t *len,
                          fm_error *err)
{
    *body = NULL;
    *len = 0;
    sqlite3_bind_text(j->body, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(j->body);
    fm_status st = FM_OK;
    if (rc == SQLITE_ROW && sqlite3_column_type(j->body, 0) == SQLITE_BLOB) {
        size_t n = (size_t)sqlite3_column_bytes(j->body, 0);
        const void *p = sqlite3_column_blob(j->body, 0);
        *body = malloc(n ? n : 1);
        if (!*body)
            st = fm_error_set(err, FM_ERR_NOMEM, "job body of %zu bytes", n);
        else {
            if (n)
                memcpy(*body, p, n);
            *len = n;
        }
    } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        st = fm_error_set(err, FM_ERR_NOT_FOUND, "journal: job %s has no body", id);
    } else {
        st = db_error(j, err, "read");
    }
    sqlite3_reset(j->body);
    sqlite3_clear_bindings(j->body);
    return st;
}

int fm_journal_full(const fm_journal *j)
{
    return j && j->full;
}

uint64_t fm_journal_written(const fm_journal *j)
{
    return j ? j->written : 0;
}

/* ---- recovery of a damaged journal --------------------------------------------- */

/* Copies the rows of old that s (a scan over them) reaches into the new journal,
 * until the scan ends or meets a page it cannot read. *last becomes the rowid of the
 * last row read. Rows copied already are kept once (INSERT OR IGNORE). Returns the
 * scan's last result: SQLITE_DONE at its end. */
static int recover_scan(sqlite3_stmt *s, sqlite3_stmt *ins, int64_t *last, uint64_t *rows,
                        int *write_rc)
{
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        *last = sqlite3_column_int64(s, 0);
        for (int c = 1; c <= 8; c++)
            sqlite3_bind_value(ins, c, sqlite3_column_value(s, c));
        int w = sqlite3_step(ins);
        if (w == SQLITE_DONE && sqlite3_changes(sqlite3_db_handle(ins)) > 0)
            (*rows)++;
        sqlite3_reset(ins);
        sqlite3_clear_bindings(ins);
        if (w != SQLITE_DONE && (w & 0xff) != SQLITE_CONSTRAINT) {
            *write_rc = w; /* the new journal cannot be written (a full disk): stop */
            return w;
        }
    }
    return rc;
}

fm_status fm_journal_recover(const char *path, int fsync_mode, char *aside,
                             size_t aside_size, uint64_t *pending, uint64_t *committed,
                             fm_error *err)
{
    static const char *const suffix[] = {"", "-wal", "-shm"};
    *pending = *committed = 0;
    if (aside_size)
        aside[0] = '\0'; /* named once the damaged file has moved */
    if (access(path, F_OK) != 0)
        return fm_error_set(err, FM_ERR_NOT_FOUND, "journal %s: %s", path, strerror(errno));
    char moved[4096];
    snprintf(moved, sizeof moved, "%s.damaged-%lld", path, (long long)time(NULL));
    /* The damaged file and its WAL move aside together: what the WAL holds is read
     * with it, and the new journal starts without them. */
    for (size_t i = 0; i < 3; i++) {
        char from[4096], to[4200];
        snprintf(from, sizeof from, "%s%s", path, suffix[i]);
        snprintf(to, sizeof to, "%s%s", moved, suffix[i]);
        if (rename(from, to) != 0 && errno != ENOENT) {
            fm_status st = fm_error_set(err, FM_ERR_IO, "cannot move %s to %s: %s", from,
                                        to, strerror(errno));
            for (size_t k = 0; k < i; k++) { /* what moved goes back: as it was */
                snprintf(from, sizeof from, "%s%s", path, suffix[k]);
                snprintf(to, sizeof to, "%s%s", moved, suffix[k]);
                if (rename(to, from) != 0 && errno != ENOENT)
                    return st; /* aside names where the journal is now */
            }
            if (aside_size)
                aside[0] = '\0';
            return st;
        }
        if (i == 0)
            snprintf(aside, aside_size, "%s", moved);
    }
    sqlite3 *old = NULL;
    fm_journal *nj = NULL;
    sqlite3_stmt *ins = NULL, *fwd = NULL, *back = NULL, *one = NULL;
    fm_status st = FM_OK;
    if (sqlite3_open_v2(aside, &old, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        st = fm_error_set(err, FM_ERR_IO, "journal %s: %s", aside,
                          old ? sqlite3_errmsg(old) : "cannot open");
        goto done;
    }
    /* A file shorter than its header says is refused whole unless the schema is
     * "writable" (SQLite's own rule); this connection only reads it. */
    sqlite3_exec(old, "PRAGMA writable_schema=ON", NULL, NULL, NULL);
    if ((st = fm_journal_open(&nj, path, fsync_mode, err)) != FM_OK)
        goto done;
    static const char cols[] = "rowid, id, tag, committed, failed, quarantined, attempts,"
                               " error, CASE WHEN committed THEN NULL ELSE body END";
    char fsql[256], bsql[256], osql[256];
    snprintf(osql, sizeof osql, "SELECT %s FROM jobs WHERE rowid = ?1", cols);
    snprintf(fsql, sizeof fsql, "SELECT %s FROM jobs WHERE rowid > ?1 ORDER BY rowid", cols);
    snprintf(bsql, sizeof bsql, "SELECT %s FROM jobs WHERE rowid < ?1 ORDER BY rowid DESC",
             cols);
    if (sqlite3_prepare_v2(nj->db,
                           "INSERT OR IGNORE INTO jobs(id, tag, committed, failed,"
                           " quarantined, attempts, error, body)"
                           " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                           -1, &ins, NULL) != SQLITE_OK) {
        st = db_error(nj, err, "recover");
        goto done;
    }
    if (sqlite3_prepare_v2(old, fsql, -1, &fwd, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(old, bsql, -1, &back, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(old, osql, -1, &one, NULL) != SQLITE_OK) {
        st = fm_error_set(err, FM_ERR_FORMAT, "journal %s: nothing readable: %s", aside,
                          sqlite3_errmsg(old));
        goto done;
    }
    /* Forwards from the start until a damaged page stops the scan; then row by row
     * (each looked up from the root: the b-tree's inner pages may still lead past the
     * damage) until one reads, and a scan again from there; and backwards from the
     * end: every row some path reaches is kept. Rows are numbered without gaps (jobs
     * are never deleted), so RECOVER_MISSES unreadable numbers in a row are the end
     * (a file cut short). */
    enum { RECOVER_MISSES = 65536 };
    uint64_t rows = 0;
    int64_t last = -1;
    int write_rc = SQLITE_OK, misses = 0;
    sqlite3_exec(nj->db, "BEGIN", NULL, NULL, NULL);
    while (write_rc == SQLITE_OK && misses < RECOVER_MISSES) {
        sqlite3_reset(fwd);
        sqlite3_bind_int64(fwd, 1, last);
        if (recover_scan(fwd, ins, &last, &rows, &write_rc) == SQLITE_DONE)
            break;
        for (int found = 0; !found && misses < RECOVER_MISSES && write_rc == SQLITE_OK;) {
            int64_t at = ++last;
            sqlite3_reset(one);
            sqlite3_bind_int64(one, 1, at);
            int64_t got = INT64_MIN;
            recover_scan(one, ins, &got, &rows, &write_rc);
            found = got == at;
            misses = found ? 0 : misses + 1;
        }
    }
    sqlite3_reset(back);
    sqlite3_bind_int64(back, 1, INT64_MAX);
    int64_t first = INT64_MAX;
    if (write_rc == SQLITE_OK)
        recover_scan(back, ins, &first, &rows, &write_rc);
    if (write_rc != SQLITE_OK) {
        st = fm_error_set(err, FM_ERR_IO, "writing the new journal: %s",
                          sqlite3_errstr(write_rc));
        goto done;
    }
    if (sqlite3_exec(nj->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        st = db_error(nj, err, "recover");
        goto done;
    }
    uint64_t total = 0, failed = 0, quarantined = 0;
    if ((st = fm_journal_counts(nj, NULL, &total, committed, &failed, &quarantined, err)) ==
        FM_OK)
        *pending = total - *committed;
done:
    sqlite3_finalize(ins);
    sqlite3_finalize(fwd);
    sqlite3_finalize(back);
    sqlite3_finalize(one);
    fm_journal_close(&nj);
    sqlite3_close(old);
    if (st != FM_OK && aside_size && aside[0]) {
        /* Failed after the move: the half-made journal goes and the damaged one comes
         * back, so that nothing starts on a part of the queue and a second --recover
         * (with space, say) begins from all there was. */
        int back_ok = 1;
        for (size_t i = 0; i < 3; i++) {
            char at[4096], from[4200];
            snprintf(at, sizeof at, "%s%s", path, suffix[i]);
            snprintf(from, sizeof from, "%s%s", aside, suffix[i]);
            if ((unlink(at) != 0 && errno != ENOENT) ||
                (rename(from, at) != 0 && errno != ENOENT))
                back_ok = 0;
        }
        if (back_ok)
            aside[0] = '\0';
    }
    return st;
}
