/* client.h - the submitting side of facemill: turn inputs (directories, file lists,
 * tar and zip archives) into jobs, submit them to a broker with flow control, follow
 * their commits with a progress display, and ask a broker for its status.
 *
 * Why it exists: `facemill submit` and `facemill label` run exactly the same loop; only
 * where the broker lives differs.
 *
 * Job ids are stable, so a run that is repeated after a crash resubmits the same ids
 * (the broker answers COMMITTED or DUPLICATE for the ones it has): the id is the hex
 * SHA-256 of "TAG\0NAME\0" followed by the SHA-256 of the image bytes (bytes jobs),
 * of "TAG\0NAME\0PATH" (--by-path jobs, whose bytes the client never reads), or of
 * "TAG\0NAME\0unreadable" (unreadable jobs, below). NAME is what results call the
 * image: the path as found for files, "ARCHIVE:MEMBER" for archive members.
 *
 * What is taken: explicit files (arguments, lines of a list on stdin) always; in
 * directories (walked depth first, sorted; symbolic links to directories are not
 * followed) and archives only files whose name ends in an image extension (.jpg .jpeg
 * .jpe .jfif .png .gif .bmp .webp .tif .tiff .heic .heif .hif .avif), unless
 * all_files; the archives a directory holds are opened as archive arguments are. A
 * file is an archive when libarchive recognises it as tar (plain or compressed) or zip
 * by its name (.tar .tar.gz .tgz .tar.bz2 .tar.xz .tar.zst .zip).
 *
 * What cannot be read still ends as one result row, an error row, so exports and
 * reports count it: an image the client cannot open or read, a listed path (stdin)
 * that is missing, a dangling symbolic link with an image's name in a folder, an
 * archive member too large for a message or cut short, and an archive that cannot be
 * opened or is damaged (a row named by the archive, once per fault) become unreadable
 * jobs (Job.unreadable: the reason, one line), which workers answer with an ERROR_IO
 * result without decoding anything. A folder that cannot be listed, or lies more than
 * FM_CLIENT_MAX_DEPTH levels down, is skipped with a warning line and counted
 * (fm_client_summary.folders_skipped); the rest of the inputs are taken.
 *
 * Threads: everything runs on the calling thread; it owns its socket.
 */
#ifndef FACEMILL_CLIENT_H
#define FACEMILL_CLIENT_H

/* The deepest a directory input is walked: a directory nested deeper is skipped with
 * a warning (an archive of photos is nowhere near it; a hostile or broken tree of
 * thousands of levels is). */
#define FM_CLIENT_MAX_DEPTH 256

#include "facemill/auth.h"
#include "facemill/config.h"
#include "facemill/sink.h"
#include "facemill/status.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How progress is shown on the progress stream. */
typedef enum fm_progress_mode {
    FM_PROGRESS_AUTO = 0,  /* a bar when the stream is a terminal, else plain lines */
    FM_PROGRESS_BAR = 1,   /* a bar redrawn in place */
    FM_PROGRESS_LINES = 2, /* one line every progress_ms */
    FM_PROGRESS_NONE = 3,
} fm_progress_mode;

typedef struct fm_client_opts {
    const char *endpoint;   /* the broker's clients endpoint */
    const fm_auth *auth;    /* CURVE keys to connect with (not owned); NULL: plain */
    void *zctx;             /* ZeroMQ context to use (not owned); NULL: a private one */
    const char *tag;        /* run name: part of every job id; status counts by it */
    int by_path;            /* jobs carry absolute paths instead of bytes (files only;
                               archive members always travel as bytes) */
    int all_files;          /* take every file of directories and archives */
    int64_t chunk;          /* jobs per Submit */
    int64_t chunk_bytes;    /* image bytes per Submit (one larger image goes alone) */
    int64_t retry_ms;       /* resend an unanswered Submit after this long */
    int64_t progress_ms;    /* interval of plain progress lines */
    int64_t max_msg_size;   /* largest message the broker takes (net.max_msg_size) */
    fm_progress_mode progress;
    FILE *progress_out;     /* not owned; NULL: stderr */
    fm_results *skip;       /* optional: jobs whose id this database holds are not
                               submitted, and count as done (not owned) */
    int retry_failed;       /* with skip: a job whose stored row is a failure is
                               submitted again (its new result replaces the row) */
    const char *skip_db;    /* optional: the results database being written (path);
                               found in a folder, it and its -wal, -shm and -journal
                               are not inputs */
    volatile sig_atomic_t *stop; /* optional: nonzero stops the run (FM_ERR_INTERRUPTED) */
    /* optional: called about every 100 ms; a nonzero return stops the run with
     * FM_ERR_INTERNAL and the message the callback wrote to err */
    int (*tick)(void *arg, fm_error *err);
    void *tick_arg;
} fm_client_opts;

/* Counts of one run. done = committed + skipped; failed counts error results among
 * them (unreadable images included) and jobs the broker rejected. */
typedef struct fm_client_summary {
    int64_t total;     /* images found in the inputs */
    int64_t skipped;   /* already stored: in opts.skip, or answered COMMITTED by the
                          broker (their failures counted in failed, from its status) */
    int64_t committed; /* jobs this run saw committed */
    int64_t failed;    /* error results, rejected or unsendable images */
    int64_t rejected;  /* of failed: refused by the broker */
    int64_t slow_downs; /* SlowDown answers honoured */
    int64_t folders_skipped; /* folders not walked: unreadable, or nested too deep */
    int64_t archive_links;   /* image members of archives that are hard or symbolic
                                links: their targets are labelled, not they */
    int64_t repeated;        /* images named again by the inputs (the same path twice:
                                an INPUT repeated, a file besides its folder): sent
                                once, and not in total */
    int broker_heard;        /* 1 once a message from the broker arrived */
} fm_client_summary;

/* Sets the client fields of opts from c (chunk, chunk_bytes, retry_ms, progress_ms,
 * max_msg_size, the endpoint broker.clients); other fields are zeroed. */
void fm_client_opts_from_config(fm_client_opts *opts, const fm_config *c);

/* Checks the n inputs of a command line before anything starts: each (but "-") must
 * exist and be a file or a directory. FM_ERR_NOT_FOUND, FM_ERR_IO (cannot be looked
 * at) or FM_ERR_INVALID (neither), one line naming the input (escaped) in err. */
fm_status fm_client_check_inputs(char *const *inputs, int n, fm_error *err);

/* Submits every image of the n inputs (paths; "-" reads a list of paths, one per
 * line, from stdin) and waits until each is committed. *sum (required) is filled as
 * far as the run got. Returns FM_OK when every job is committed (failed images
 * included: see sum->failed; skipped folders: sum->folders_skipped);
 * FM_ERR_NOT_FOUND / FM_ERR_IO / FM_ERR_INVALID for an input that is missing or not a
 * file or directory (before anything is sent: fm_client_check_inputs);
 * FM_ERR_INTERRUPTED when *stop was set; FM_ERR_PROTOCOL when the broker speaks another
 * major version; FM_ERR_NOMEM; FM_ERR_INTERNAL from the tick callback. */
fm_status fm_client_submit(const fm_client_opts *opts, char *const *inputs, int n,
                           fm_client_summary *sum, fm_error *err);

/* Asks the broker at endpoint for its status (counting tag when not NULL) and writes
 * it readably to out, connecting with auth's keys (NULL: plain). Waits at most
 * timeout_ms. FM_ERR_TIMEOUT when no reply came (also when the broker did not admit
 * auth's key: CURVE refusals are silent). */
fm_status fm_client_status(const char *endpoint, const fm_auth *auth, const char *tag,
                           int64_t timeout_ms, int64_t max_msg_size, FILE *out,
                           fm_error *err);

/* How fm_client_status_as writes the status. */
typedef enum fm_status_format {
    FM_STATUS_TEXT = 0,       /* for people: what fm_client_status writes */
    FM_STATUS_PROMETHEUS = 1, /* the Prometheus text format (status_metrics.h) */
} fm_status_format;

/* fm_client_status in the given format. */
fm_status fm_client_status_as(const char *endpoint, const fm_auth *auth, const char *tag,
                              int64_t timeout_ms, int64_t max_msg_size,
                              fm_status_format format, FILE *out, fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
