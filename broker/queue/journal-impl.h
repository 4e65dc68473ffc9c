/* journal-impl.h - the broker's durable record of accepted jobs (private to the
 * broker and its tests).
 *
 * One SQLite database (WAL mode), one row per job id ever accepted:
 *   jobs(id TEXT PRIMARY KEY, tag TEXT, committed INT, failed INT, quarantined INT,
 *        attempts INT, error TEXT, body BLOB)
 * body is the packed facemill.Job while the job is pending and NULL once committed
 * (the broker keeps no body in memory: it reads one when it dispatches the job);
 * the id stays so a resubmitted job is answered "committed". tags(tag, total,
 * committed, failed, quarantined) is kept by triggers. fsync policy: see
 * fm_broker_fsync. All functions return FM_OK or FM_ERR_IO with SQLite's text.
 */
#ifndef FACEMILL_JOURNAL_IMPL_H
#define FACEMILL_JOURNAL_IMPL_H

#include "facemill/status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct fm_journal fm_journal;

/* Opens or creates the journal at path. Caller owns *out (fm_journal_close). */
fm_status fm_journal_open(fm_journal **out, const char *path, int fsync_mode,
                          fm_error *err);
void fm_journal_close(fm_journal **j);

/* Transactions group many writes into one sync. */
fm_status fm_journal_begin(fm_journal *j, fm_error *err);
fm_status fm_journal_commit(fm_journal *j, fm_error *err);
void fm_journal_rollback(fm_journal *j);

/* *state: -1 unknown id, 0 pending, 1 committed. */
fm_status fm_journal_lookup(fm_journal *j, const char *id, int *state, fm_error *err);

/* Adds a pending job; body (len bytes) stays the caller's. */
fm_status fm_journal_add(fm_journal *j, const char *id, const char *tag,
                         const void *body, size_t len, fm_error *err);

/* Records the failures so far and the last error of a pending job. */
fm_status fm_journal_set_attempts(fm_journal *j, const char *id, int attempts,
                                  const char *error, fm_error *err);

/* Marks a job quarantined (still pending until the sink commits its failed result). */
fm_status fm_journal_quarantine(fm_journal *j, const char *id, fm_error *err);

/* Marks a job committed and drops its body. Unknown ids are ignored; *changed is 1
 * when the job was pending before. */
fm_status fm_journal_mark_committed(fm_journal *j, const char *id, int failed,
                                    int *changed, fm_error *err);

/* Calls fn for every pending job, oldest first, with the size of its body (bodies
 * stay on disk: fm_journal_body). Pointers are valid during the call only. fn
 * returns 0 to go on, nonzero to stop with FM_ERR_NOMEM. */
typedef int (*fm_journal_each_fn)(void *ctx, const char *id, const char *tag, size_t len,
                                  int attempts, int quarantined, const char *error);
fm_status fm_journal_each_pending(fm_journal *j, fm_journal_each_fn fn, void *ctx,
                                  fm_error *err);

/* The body of job id, read from disk into *body (malloc'd, the caller frees it).
 * FM_ERR_NOT_FOUND when the job is unknown or committed. */
fm_status fm_journal_body(fm_journal *j, const char *id, uint8_t **body, size_t *len,
                          fm_error *err);

/* True when the journal's last failure was a full disk (SQLITE_FULL), until a
 * transaction commits. */
int fm_journal_full(const fm_journal *j);

/* How many write transactions have committed since the journal was opened (a write
 * statement outside fm_journal_begin counts as one): a change between two failures
 * shows that the disk took a write in between. */
uint64_t fm_journal_written(const fm_journal *j);

/* Copies every job of the damaged journal at path that can be read into a new
 * journal at path; the damaged file (and its -wal, -shm) is renamed
 * PATH.damaged-SECONDS, named in *aside once it has moved (empty until then: a
 * failure before the move leaves the file where it was). Counts what was kept. */
fm_status fm_journal_recover(const char *path, int fsync_mode, char *aside,
                             size_t aside_size, uint64_t *pending, uint64_t *committed,
                             fm_error *err);

/* path as an absolute path, for messages: a relative one joined to the current
 * directory (the broker's journal is relative to where it runs). */
void fm_journal_abs_path(const char *path, char *buf, size_t size);

/* Counts, kept per tag as jobs change. tag may be NULL for the whole journal. */
fm_status fm_journal_counts(fm_journal *j, const char *tag, uint64_t *total,
                            uint64_t *committed, uint64_t *failed, uint64_t *quarantined,
                            fm_error *err);

#endif
