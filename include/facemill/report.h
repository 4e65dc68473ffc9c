/* report.h - one self-contained HTML page about a results database: what was
 * labelled, how the labels are distributed, and faces to look at.
 *
 * Why it exists: a results database of a million images is a table nobody reads.
 * `facemill report` turns it into a page a person opens from file:// and trusts or
 * distrusts at a glance: the run's counts and failures, the models that labelled it,
 * charts of every attribute and confidence, and a stratified sample of the faces
 * themselves, cut from the original photos, next to their labels.
 *
 * The page (inline CSS, SVG and JavaScript; no request leaves it):
 *   summary       images, faces, images without faces, failures by error kind,
 *                 models (with their counts and time spans), runs (tags), workers,
 *                 time span and images per second when the database knows them
 *   distributions SVG charts drawn here: age, gender, ethnicity, faces per image,
 *                 detection score, face size, gender and ethnicity confidence, age
 *                 spread; a gender x ethnicity table with mean ages
 *   gallery       up to per_cell faces per predicted gender x ethnicity x age band
 *                 (a deterministic uniform sample: the faces with the smallest hash
 *                 of their key), the `extremes` least confident and smallest faces,
 *                 each a thumbnail with its labels and probabilities; filters
 *                 (attribute, confidence below X) in the page
 *   failures      up to max_failures failed images (by source) with their reasons
 *
 * Scale: every count and histogram is an SQL aggregate and every sample a bounded
 * pass (an ORDER BY ... LIMIT, or one streaming scan keeping per_cell keys per cell),
 * so memory does not grow with the database: SQLite's page cache is capped
 * (FM_REPORT_CACHE_KIB), sorts spill to temporary files, and the page holds a bounded
 * number of thumbnails of bounded size (FM_REPORT_THUMB_MAX_BYTES each). Only the
 * originals of the sampled faces are read.
 *
 * Thumbnails are cut from the originals named by the database's source: a file
 * (relative names resolve against opts.root), or ARCHIVE:MEMBER, a member of a tar or
 * zip archive read through libarchive, the way `facemill label` read it. A source
 * that cannot be read or decoded gets a placeholder saying why.
 *
 * Threads: one report at a time per call; nothing global.
 */
#ifndef FACEMILL_REPORT_H
#define FACEMILL_REPORT_H

#include "facemill/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bounds of the page. With the defaults the page holds at most
 * 2 x 5 x 5 x 3 + 3 + 2 x 24 = 201 thumbnails; each is at most
 * FM_REPORT_THUMB_MAX_BYTES of JPEG (4/3 of that in base64), so thumbnails take at
 * most 201 x 16 KiB x 4/3 = 4.2 MiB, typically a tenth of it. */
#define FM_REPORT_DEFAULT_PER_CELL 3
#define FM_REPORT_DEFAULT_EXTREMES 24
#define FM_REPORT_DEFAULT_FAILURES 100
#define FM_REPORT_DEFAULT_THUMB_PX 96
#define FM_REPORT_MAX_PER_CELL 20
#define FM_REPORT_MAX_EXTREMES 200
#define FM_REPORT_MAX_FAILURES 10000
#define FM_REPORT_THUMB_MAX_BYTES (16 << 10) /* larger thumbnails are re-encoded smaller */
#define FM_REPORT_CACHE_KIB 16384            /* SQLite page cache of the report's reads */
#define FM_REPORT_TEXT_MAX 240 /* longest source or reason shown (longer ones are cut) */

typedef struct fm_report_opts {
    const char *db_path;    /* the results database (read only) */
    const char *out_path;   /* the page; replaced (written to a temporary file first) */
    const char *thumbs_dir; /* NULL: thumbnails inline as data: URIs; else written as
                               JPEG files into this directory (created when missing),
                               which the page links relative to itself */
    const char *root;       /* relative sources resolve against it; NULL: the current
                               directory */
    const char *title;      /* NULL: "facemill report: <database file name>" */
    int per_cell;           /* faces per gender x ethnicity x age band; 0: default */
    int extremes;           /* least confident and smallest faces, each; 0: default */
    int max_failures;       /* failed images listed; 0: default */
    int thumb_px;           /* thumbnail side, 32..256; 0: default */
    int64_t max_pixels;     /* originals with more pixels are not decoded; 0: the
                               decoder's default */
} fm_report_opts;

/* What a report holds, for the command's summary line and tests. */
typedef struct fm_report_stats {
    int64_t images, faces, failed; /* in the database */
    int thumbs;                    /* thumbnails cut from originals */
    int placeholders;              /* faces whose original could not be read */
    int failures_listed;
    size_t page_bytes;             /* size of the page written */
    size_t thumb_bytes;            /* JPEG bytes of all thumbnails */
    double query_ms, thumb_ms, page_ms; /* time spent on the SQL, the originals, the page */
} fm_report_stats;

/* Writes the report of opts->db_path to opts->out_path (see the top of this file).
 * stats may be NULL. Errors: FM_ERR_INVALID (bad options), those of
 * fm_results_open (FM_ERR_IO, FM_ERR_FORMAT, FM_ERR_VERSION), FM_ERR_IO (a query
 * failed, the page or a thumbnail could not be written), FM_ERR_NOMEM. An original
 * that cannot be read is not an error: its face gets a placeholder. */
fm_status fm_report_write(const fm_report_opts *opts, fm_report_stats *stats,
                          fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
