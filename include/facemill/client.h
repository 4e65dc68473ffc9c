/* client.h - the submitting side of facemill: turn inputs (directories, file lists,
 * tar and zip archives) into jobs, submit them to a broker with flow control, follow
 * their commits with a progress display, and ask a broker for its status.
 *
 * Why it exists: `facemill submit` and `facemill label` run exactly the same loop; only
 * where the broker lives differs.
 *
 * Job ids are stable, so a run that is repeated after a crash resubmits the same ids
 * (the broker answers COMMITTED or DUPLICATE for the ones it has): the id is the hex
 * SHA-256 of "TAG\0NAME\0" followed by the SHA-256 of the image bytes (bytes jobs), or
 * of "TAG\0NAME\0PATH" (--by-path jobs, whose bytes the client never reads). NAME is
 * what results call the image: the path as found for files, "ARCHIVE:MEMBER" for
 * archive members.
 *
 * What is taken: explicit files (arguments, lines of a list on stdin) always; in
 * directories (walked depth first, sorted, at most FM_CLIENT_MAX_DEPTH levels deep:
 * deeper is an error that stops the run before anything is sent; symbolic links to
 * directories are not followed) and archives only files whose name ends in
 * an image extension (.jpg .jpeg .jpe .jfif .png .gif .bmp .webp .tif .tiff .heic),
 * unless all_files. A file is an archive when libarchive recognises it as tar (plain
 * or compressed) or zip by its name (.tar .tar.gz .tgz .tar.bz2 .tar.xz .tar.zst .zip).
 *
 * Threads: everything runs on the calling thread; it owns its socket.
 */
#ifndef FACEMILL_CLIENT_H
#define FACEMILL_CLIENT_H

/* The deepest a directory input is walked: directories nested deeper make the run
 * fail with a clear error (an archive of photos is nowhere near it; a hostile or
 * broken tree of thousands of levels is). */
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
    volatile sig_atomic_t *stop; /* optional: nonzero stops the run (FM_ERR_INTERRUPTED) */
    /* optional: called about every 100 ms; a nonzero return stops the run with
     * FM_ERR_INTERNAL and the message the callback wrote to err */
    int (*tick)(void *arg, fm_error *err);
    void *tick_arg;
} fm_client_opts;

/* Counts of one run. done = committed + skipped; failed counts error results among
 * them (and images that could not be sent or were rejected). */
typedef struct fm_client_summary {
    int64_t total;     /* images found in the inputs */
    int64_t skipped;   /* already in opts.skip */
    int64_t committed; /* jobs this run saw committed (including COMMITTED acks) */
    int64_t failed;    /* error results, rejected or unsendable images */
    int64_t rejected;  /* of failed: refused by the broker or too large to send */
    int64_t slow_downs; /* SlowDown answers honoured */
} fm_client_summary;

/* Sets the client fields of opts from c (chunk, chunk_bytes, retry_ms, progress_ms,
 * max_msg_size, the endpoint broker.clients); other fields are zeroed. */
void fm_client_opts_from_config(fm_client_opts *opts, const fm_config *c);

/* Submits every image of the n inputs (paths; "-" reads a list of paths, one per
 * line, from stdin) and waits until each is committed. *sum (required) is filled as
 * far as the run got. Returns FM_OK when every job is committed (failed images
 * included: see sum->failed); FM_ERR_NOT_FOUND / FM_ERR_IO for unreadable inputs
 * (before anything is sent); FM_ERR_INTERRUPTED when *stop was set; FM_ERR_PROTOCOL
 * when the broker speaks another major version; FM_ERR_NOMEM; FM_ERR_INTERNAL from
 * the tick callback. */
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
