/* report-impl.h - the parts of `facemill report` (include/facemill/report.h): what
 * the queries return (report_query.c), the thumbnails cut from the originals
 * (report_thumb.c), the SVG charts (report_svg.c) and the page (report_html.c).
 * report.c runs them in that order.
 *
 * Everything here is bounded by the options, never by the database: histograms have
 * at most REP_MAX_BINS bins, lists (models, tags, error kinds) at most REP_MAX_ROWS
 * rows (the rest summed into one "other" row), and the face lists at most what
 * fm_report_opts allows.
 */
#ifndef FACEMILL_REPORT_IMPL_H
#define FACEMILL_REPORT_IMPL_H

#include "facemill/report.h"
#include "facemill/result_json.h"

#include <sqlite3.h>

#include <stdint.h>
#include <stdio.h>

#define REP_GENDERS FM_RESULT_GENDERS
#define REP_RACES FM_RESULT_RACES
#define REP_BANDS 5
#define REP_CELLS (REP_GENDERS * REP_RACES * REP_BANDS + 1) /* + faces without labels */
#define REP_MAX_BINS 32
#define REP_MAX_ROWS 20
#define REP_LABEL_MAX 32

/* Age bands of the gallery: [0,13), [13,20), [20,40), [40,60), [60,inf). */
extern const char *const rep_band_names[REP_BANDS];
int rep_band_of(double age);

/* A counted value: an error kind, a model, a run tag. */
typedef struct rep_row {
    char *label;               /* owned; NULL: the value was NULL */
    int64_t code;              /* error kinds: the code */
    int64_t n;
    int64_t first_ms, last_ms; /* stored_ms range of its images (0: unknown) */
} rep_row;

typedef struct rep_rows {
    rep_row v[REP_MAX_ROWS + 1]; /* the last one sums whatever did not fit */
    int n;
} rep_rows;

typedef struct rep_summary {
    int64_t images, faces, ok, failed, no_faces;
    int64_t first_ms, last_ms; /* stored_ms of the first and last result; 0: none */
    int64_t timed;             /* images with a worker time */
    double total_ms;           /* their worker time (total_ms) */
    int64_t workers;           /* distinct worker processes */
    int64_t attributed;        /* faces with age, gender and ethnicity */
    rep_rows errors, models, tags;
} rep_summary;

typedef struct rep_hist {
    const char *id, *title, *unit; /* static strings */
    int n;
    char labels[REP_MAX_BINS][REP_LABEL_MAX];
    int64_t count[REP_MAX_BINS];
    int64_t missing; /* rows the quantity is NULL for */
} rep_hist;

enum {
    REP_H_AGE, REP_H_GENDER, REP_H_RACE, REP_H_FACES, REP_H_SCORE, REP_H_SIZE,
    REP_H_GENDER_CONF, REP_H_RACE_CONF, REP_H_AGE_STD, REP_H_COUNT
};

/* Gender x ethnicity (index REP_GENDERS / REP_RACES: not labelled). */
typedef struct rep_cross {
    int64_t n[REP_GENDERS + 1][REP_RACES + 1];
    double age_sum[REP_GENDERS + 1][REP_RACES + 1];
} rep_cross;

/* A face of the gallery with its image and, once cut, its thumbnail. */
typedef struct rep_face {
    int64_t image_id;
    int face;
    char *source; /* owned */
    int width, height;
    float box[4], score;
    int has_attrs;
    float age, age_std, pg[REP_GENDERS], pr[REP_RACES];
    int gender, race, band; /* argmax classes and band; -1 without attributes */
    int gender_withheld;    /* the stored class is null (heads.gender_min_prob) */
    int race_withheld;      /* the same for heads.race_min_prob */
    int cell;               /* gallery cell (REP_CELLS - 1: no attributes) */
    uint8_t *jpeg;          /* the thumbnail (owned), or NULL */
    size_t jpeg_len;
    char *missing;          /* why there is no thumbnail (owned), or NULL */
    char file[64];          /* --thumbs: the thumbnail's file name */
} rep_face;

typedef struct rep_faces {
    rep_face *v;
    size_t n, cap;
} rep_faces;

typedef struct rep_failure {
    char *source, *text; /* owned */
    int64_t code;
} rep_failure;

typedef struct rep_failures {
    rep_failure *v;
    size_t n;
} rep_failures;

typedef struct rep_page {
    const char *title;
    const char *db_name;
    rep_summary sum;
    rep_hist hist[REP_H_COUNT];
    rep_cross cross;
    rep_faces sample, least, smallest;
    rep_failures failures;
    int per_cell, extremes, max_failures, thumb_px;
    const char *thumbs_rel; /* --thumbs: the directory as the page links it */
} rep_page;

/* ---- report_query.c: SQL over the results database -------------------------------- */

/* Caps the connection's memory (page cache, in-memory sorts) and starts one read
 * transaction, so every query sees the same snapshot while a sink writes. */
fm_status rep_query_begin(sqlite3 *db, fm_error *err);
void rep_query_end(sqlite3 *db);

fm_status rep_query_summary(sqlite3 *db, rep_summary *s, fm_error *err);
fm_status rep_query_hists(sqlite3 *db, rep_hist h[REP_H_COUNT], fm_error *err);
fm_status rep_query_cross(sqlite3 *db, rep_cross *c, fm_error *err);
/* per_cell faces per cell, in cell order (the smallest key hashes of each cell). */
fm_status rep_query_sample(sqlite3 *db, int per_cell, rep_faces *out, fm_error *err);
/* The n least confident faces: lowest min(gender, ethnicity confidence) first. */
fm_status rep_query_least(sqlite3 *db, int n, rep_faces *out, fm_error *err);
/* The n smallest faces by box area. */
fm_status rep_query_smallest(sqlite3 *db, int n, rep_faces *out, fm_error *err);
fm_status rep_query_failures(sqlite3 *db, int max, rep_failures *out, fm_error *err);

void rep_summary_free(rep_summary *s);
void rep_faces_free(rep_faces *f);
void rep_failures_free(rep_failures *f);

/* ---- report_thumb.c: thumbnails from the originals ---------------------------------- */

/* Cuts the thumbnail of each of the n faces (square, side px, the face and a margin),
 * reading each original once. A face whose original cannot be read or decoded gets
 * its reason in missing. Errors only for what stops the report (FM_ERR_NOMEM,
 * FM_ERR_INTERNAL from the encoder). */
fm_status rep_thumbs_make(rep_face **faces, size_t n, const char *root, int px,
                          int64_t max_pixels, fm_error *err);

/* Cuts one square thumbnail (side px) centred on box from the RGB image (w x h, stride
 * bytes a row, box in its pixels scaled by r from the original's), area-averaged, the
 * outside gray. out has px * px * 3 bytes. */
void rep_thumb_cut(const uint8_t *rgb, int w, int h, size_t stride, double r,
                   const float box[4], int px, uint8_t *out);

/* ---- report_svg.c: charts ----------------------------------------------------------- */

/* A bar chart of h (one bar per bin, counts on hover and above the bars). */
void rep_svg_bars(FILE *out, const rep_hist *h);

/* Shares of h as one horizontal bar per class, with percentages. */
void rep_svg_shares(FILE *out, const rep_hist *h);

/* ---- report_html.c: the page --------------------------------------------------------- */

/* Text with &, <, >, " and ' escaped, at most FM_REPORT_TEXT_MAX bytes (cut at a
 * UTF-8 boundary, with an ellipsis); NULL as an empty string. */
void rep_html_text(FILE *out, const char *s);

/* base64 of len bytes (RFC 4648, with padding). */
void rep_base64(FILE *out, const uint8_t *data, size_t len);

void rep_html_page(FILE *out, const rep_page *p);

#endif
