/* report_query.c - what `facemill report` asks the results database (report-impl.h).
 *
 * Why SQL aggregates: a database of a million images holds a million rows in images
 * and more in faces; the page needs a few hundred numbers and a few hundred faces.
 * Counts and histograms are GROUP BY queries (the bin is computed in SQL), the least
 * confident and smallest faces ORDER BY ... LIMIT (SQLite keeps only the LIMIT rows
 * while it scans), and the stratified sample is one streaming scan of four columns
 * that keeps per_cell keys per cell. Nothing here holds more than that; SQLite's own
 * memory is capped in rep_query_begin, and its sorts spill to temporary files.
 */
#include "report-impl.h"

#include "facemill/result_json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const rep_band_names[REP_BANDS] = {"0-12", "13-19", "20-39", "40-59", "60+"};

int rep_band_of(double age)
{
    static const double upper[REP_BANDS - 1] = {13, 20, 40, 60};
    int b = 0;
    while (b < REP_BANDS - 1 && !(age < upper[b]))
        b++;
    return b;
}

static fm_status db_error(fm_error *err, sqlite3 *db, const char *what)
{
    return fm_error_set(err, FM_ERR_IO, "results database: %s: %s", what, sqlite3_errmsg(db));
}

static char *dup_text(const unsigned char *s)
{
    return s ? strdup((const char *)s) : NULL;
}

fm_status rep_query_begin(sqlite3 *db, fm_error *err)
{
    /* A negative cache_size is KiB; temp_store=FILE keeps large sorts on disk. */
    char sql[160];
    snprintf(sql, sizeof sql,
             "PRAGMA cache_size=-%d; PRAGMA temp_store=FILE; PRAGMA mmap_size=0; BEGIN",
             FM_REPORT_CACHE_KIB);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return db_error(err, db, "starting the read");
    return FM_OK;
}

void rep_query_end(sqlite3 *db)
{
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
}

/* ---- summary -------------------------------------------------------------------- */

/* Reads (label, n, first_ms, last_ms[, code]) rows into r: the first REP_MAX_ROWS as
 * they come (the queries order by count), the rest summed into one more row. */
static fm_status read_rows(sqlite3 *db, const char *sql, int with_code, rep_rows *r,
                           fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    memset(r, 0, sizeof *r);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_error(err, db, "preparing a summary");
    int s;
    int64_t others = 0;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        rep_row *row = &r->v[r->n < REP_MAX_ROWS ? r->n : REP_MAX_ROWS];
        int64_t n = sqlite3_column_int64(st, 1);
        int64_t first = sqlite3_column_int64(st, 2), last = sqlite3_column_int64(st, 3);
        if (r->n < REP_MAX_ROWS) {
            if (sqlite3_column_type(st, 0) != SQLITE_NULL &&
                !(row->label = dup_text(sqlite3_column_text(st, 0)))) {
                rc = fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
                goto done;
            }
            row->code = with_code ? sqlite3_column_int64(st, 4) : 0;
            row->n = n;
            row->first_ms = first;
            row->last_ms = last;
            r->n++;
            continue;
        }
        /* one more row than fits: the sum of the rest, labelled by the caller */
        if (others++ == 0) {
            row->first_ms = first;
            row->last_ms = last;
            row->code = -1;
        }
        row->n += n;
        if (first < row->first_ms)
            row->first_ms = first;
        if (last > row->last_ms)
            row->last_ms = last;
    }
    if (s != SQLITE_DONE) {
        rc = db_error(err, db, "reading a summary");
        goto done;
    }
    if (others) {
        char label[64];
        snprintf(label, sizeof label, "(%lld more)", (long long)others);
        r->v[REP_MAX_ROWS].label = strdup(label);
        r->n = REP_MAX_ROWS + 1;
    }
done:
    sqlite3_finalize(st);
    return rc;
}

/* One row of integers (or doubles) into v[0..n). */
static fm_status one_row(sqlite3 *db, const char *sql, double *v, int n, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        rc = db_error(err, db, "counting");
    for (int i = 0; rc == FM_OK && i < n; i++)
        v[i] = sqlite3_column_type(st, i) == SQLITE_NULL ? 0 : sqlite3_column_double(st, i);
    sqlite3_finalize(st);
    return rc;
}

fm_status rep_query_summary(sqlite3 *db, rep_summary *s, fm_error *err)
{
    memset(s, 0, sizeof *s);
    double v[9];
    fm_status rc = one_row(db,
                           "SELECT count(*), sum(n_faces), sum(error_code = 0),"
                           " sum(error_code != 0), sum(error_code = 0 AND n_faces = 0),"
                           " min(stored_ms), max(stored_ms), count(total_ms), sum(total_ms)"
                           " FROM images",
                           v, 9, err);
    if (rc != FM_OK)
        return rc;
    s->images = (int64_t)v[0];
    s->faces = (int64_t)v[1];
    s->ok = (int64_t)v[2];
    s->failed = (int64_t)v[3];
    s->no_faces = (int64_t)v[4];
    s->first_ms = (int64_t)v[5];
    s->last_ms = (int64_t)v[6];
    s->timed = (int64_t)v[7];
    s->total_ms = v[8];
    if ((rc = one_row(db, "SELECT count(DISTINCT worker) FROM images", v, 1, err)) != FM_OK)
        return rc;
    s->workers = (int64_t)v[0];
    if ((rc = one_row(db,
                      "SELECT count(*) FROM faces WHERE age IS NOT NULL AND gender IS NOT NULL"
                      " AND race IS NOT NULL",
                      v, 1, err)) != FM_OK)
        return rc;
    s->attributed = (int64_t)v[0];
    if ((rc = read_rows(db,
                        "SELECT NULL, count(*), min(stored_ms), max(stored_ms), error_code"
                        " FROM images WHERE error_code != 0 GROUP BY error_code"
                        " ORDER BY 2 DESC, 5",
                        1, &s->errors, err)) != FM_OK)
        return rc;
    for (int i = 0; i < s->errors.n; i++)
        if (!s->errors.v[i].label && s->errors.v[i].code >= 0 &&
            !(s->errors.v[i].label =
                  strdup(fm_result_error_name((uint32_t)s->errors.v[i].code))))
            return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
    if ((rc = read_rows(db,
                        "SELECT model, count(*), min(stored_ms), max(stored_ms) FROM images"
                        " WHERE error_code = 0 GROUP BY model ORDER BY 2 DESC, 1",
                        0, &s->models, err)) != FM_OK)
        return rc;
    return read_rows(db,
                     "SELECT tag, count(*), min(stored_ms), max(stored_ms) FROM images"
                     " GROUP BY tag ORDER BY 2 DESC, 1",
                     0, &s->tags, err);
}

static void rows_free(rep_rows *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->v[i].label);
    r->n = 0;
}

void rep_summary_free(rep_summary *s)
{
    rows_free(&s->errors);
    rows_free(&s->models);
    rows_free(&s->tags);
}

/* ---- histograms ------------------------------------------------------------------ */

/* Runs "SELECT bin, count(*) ... GROUP BY 1": bins 0..h->n-1 are counted, NULL bins
 * are missing values. */
static fm_status hist_query(sqlite3 *db, rep_hist *h, const char *sql, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_error(err, db, "preparing a histogram");
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t n = sqlite3_column_int64(st, 1);
        if (sqlite3_column_type(st, 0) == SQLITE_NULL) {
            h->missing += n;
            continue;
        }
        int64_t b = sqlite3_column_int64(st, 0);
        if (b >= 0 && b < h->n)
            h->count[b] += n;
    }
    if (s != SQLITE_DONE)
        rc = db_error(err, db, "reading a histogram");
    sqlite3_finalize(st);
    return rc;
}

/* Bins of edges[0..n): "<e0", "e0", "e1", ..., "e(n-1)+" (n + 1 bins), and the SQL
 * CASE expression that puts expr into them (NULL stays NULL). */
static void edge_bins(rep_hist *h, const double *edges, int n, const char *expr, char *sql,
                      size_t size)
{
    h->n = n + 1;
    snprintf(h->labels[0], REP_LABEL_MAX, "<%g", edges[0]);
    for (int i = 0; i < n; i++)
        snprintf(h->labels[i + 1], REP_LABEL_MAX, i == n - 1 ? "%g+" : "%g", edges[i]);
    size_t len = (size_t)snprintf(sql, size, "CASE WHEN (%s) IS NULL THEN NULL", expr);
    for (int i = 0; i < n && len < size; i++)
        len += (size_t)snprintf(sql + len, size - len, " WHEN (%s) < %.17g THEN %d", expr,
                                edges[i], i);
    if (len < size)
        snprintf(sql + len, size - len, " ELSE %d END", n);
}

/* Bins of width w from lo: labels lo, lo + w, ..., the last one "+". */
static void step_bins(rep_hist *h, double lo, double w, int n, const char *fmt)
{
    h->n = n;
    for (int i = 0; i < n; i++) {
        snprintf(h->labels[i], REP_LABEL_MAX, fmt, lo + i * w);
        if (i == n - 1)
            strncat(h->labels[i], "+", REP_LABEL_MAX - strlen(h->labels[i]) - 1);
    }
}

/* The classes' bins and, after them, "withheld": faces whose class is null although
 * their probabilities are there (heads.gender_min_prob, heads.race_min_prob). */
static void names_bins(rep_hist *h, const char *const *names, int n)
{
    h->n = n + 1;
    for (int i = 0; i < n; i++)
        snprintf(h->labels[i], REP_LABEL_MAX, "%s", names[i]);
    snprintf(h->labels[n], REP_LABEL_MAX, "withheld");
}

#define GENDER_CONF "max(p_male, p_female)"
#define RACE_CONF "max(p_white, p_black, p_asian, p_indian, p_others)"

fm_status rep_query_hists(sqlite3 *db, rep_hist h[REP_H_COUNT], fm_error *err)
{
    static const double score_edges[] = {0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999};
    static const double size_edges[] = {16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                                        768, 1024};
    char expr[2048], sql[2560];
    fm_status rc;
    memset(h, 0, sizeof(rep_hist) * REP_H_COUNT);
    /* Age: 5-year bins, 95+ the last. */
    h[REP_H_AGE] = (rep_hist){.id = "age", .title = "Age", .unit = "years"};
    step_bins(&h[REP_H_AGE], 0, 5, 20, "%.0f");
    if ((rc = hist_query(db, &h[REP_H_AGE],
                         "SELECT min(max(CAST(age / 5 AS INTEGER), 0), 19), count(*)"
                         " FROM faces GROUP BY 1", err)) != FM_OK)
        return rc;
    h[REP_H_GENDER] = (rep_hist){.id = "gender", .title = "Gender", .unit = "faces"};
    names_bins(&h[REP_H_GENDER], fm_result_gender_names, REP_GENDERS);
    if ((rc = hist_query(db, &h[REP_H_GENDER],
                         "SELECT CASE gender WHEN 'male' THEN 0 WHEN 'female' THEN 1 ELSE"
                         " CASE WHEN p_male IS NOT NULL THEN 2 END END,"
                         " count(*) FROM faces GROUP BY 1", err)) != FM_OK)
        return rc;
    h[REP_H_RACE] = (rep_hist){.id = "race", .title = "Ethnicity", .unit = "faces"};
    names_bins(&h[REP_H_RACE], fm_result_race_names, REP_RACES);
    if ((rc = hist_query(db, &h[REP_H_RACE],
                         "SELECT CASE race WHEN 'White' THEN 0 WHEN 'Black' THEN 1"
                         " WHEN 'Asian' THEN 2 WHEN 'Indian' THEN 3 WHEN 'Others' THEN 4 ELSE"
                         " CASE WHEN p_white IS NOT NULL THEN 5 END END,"
                         " count(*) FROM faces GROUP BY 1", err)) != FM_OK)
        return rc;
    h[REP_H_FACES] = (rep_hist){.id = "faces", .title = "Faces per labelled image",
                                .unit = "images"};
    step_bins(&h[REP_H_FACES], 0, 1, 11, "%.0f");
    if ((rc = hist_query(db, &h[REP_H_FACES],
                         "SELECT min(n_faces, 10), count(*) FROM images WHERE error_code = 0"
                         " GROUP BY 1", err)) != FM_OK)
        return rc;
    h[REP_H_SCORE] = (rep_hist){.id = "score", .title = "Detection score", .unit = "faces"};
    edge_bins(&h[REP_H_SCORE], score_edges, 8, "score", expr, sizeof expr);
    snprintf(sql, sizeof sql, "SELECT %s, count(*) FROM faces GROUP BY 1", expr);
    if ((rc = hist_query(db, &h[REP_H_SCORE], sql, err)) != FM_OK)
        return rc;
    h[REP_H_SIZE] = (rep_hist){.id = "size", .title = "Face width (pixels of the original)",
                               .unit = "faces"};
    edge_bins(&h[REP_H_SIZE], size_edges, 13, "x2 - x1", expr, sizeof expr);
    snprintf(sql, sizeof sql, "SELECT %s, count(*) FROM faces GROUP BY 1", expr);
    if ((rc = hist_query(db, &h[REP_H_SIZE], sql, err)) != FM_OK)
        return rc;
    h[REP_H_GENDER_CONF] = (rep_hist){.id = "gender-conf",
                                      .title = "Gender confidence (probability of the class)",
                                      .unit = "faces"};
    step_bins(&h[REP_H_GENDER_CONF], 0.5, 0.05, 10, "%.2f");
    if ((rc = hist_query(db, &h[REP_H_GENDER_CONF],
                         "SELECT min(max(CAST((" GENDER_CONF " - 0.5) / 0.05 AS INTEGER), 0),"
                         " 9), count(*) FROM faces GROUP BY 1", err)) != FM_OK)
        return rc;
    h[REP_H_RACE_CONF] = (rep_hist){.id = "race-conf",
                                    .title = "Ethnicity confidence (probability of the class)",
                                    .unit = "faces"};
    step_bins(&h[REP_H_RACE_CONF], 0.2, 0.05, 16, "%.2f");
    if ((rc = hist_query(db, &h[REP_H_RACE_CONF],
                         "SELECT min(max(CAST((" RACE_CONF " - 0.2) / 0.05 AS INTEGER), 0),"
                         " 15), count(*) FROM faces GROUP BY 1", err)) != FM_OK)
        return rc;
    h[REP_H_AGE_STD] = (rep_hist){.id = "age-std", .title = "Age spread (standard deviation)",
                                  .unit = "years"};
    step_bins(&h[REP_H_AGE_STD], 0, 1, 16, "%.0f");
    return hist_query(db, &h[REP_H_AGE_STD],
                      "SELECT min(max(CAST(age_std AS INTEGER), 0), 15), count(*) FROM faces"
                      " GROUP BY 1", err);
}

static int gender_index(const unsigned char *s)
{
    for (int i = 0; s && i < REP_GENDERS; i++)
        if (strcmp((const char *)s, fm_result_gender_names[i]) == 0)
            return i;
    return -1;
}

static int race_index(const unsigned char *s)
{
    for (int i = 0; s && i < REP_RACES; i++)
        if (strcmp((const char *)s, fm_result_race_names[i]) == 0)
            return i;
    return -1;
}

fm_status rep_query_cross(sqlite3 *db, rep_cross *c, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    memset(c, 0, sizeof *c);
    if (sqlite3_prepare_v2(db,
                           "SELECT gender, race, count(*), sum(age) FROM faces"
                           " GROUP BY gender, race",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(err, db, "preparing the gender x ethnicity table");
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        int g = gender_index(sqlite3_column_text(st, 0));
        int r = race_index(sqlite3_column_text(st, 1));
        g = g < 0 ? REP_GENDERS : g;
        r = r < 0 ? REP_RACES : r;
        c->n[g][r] += sqlite3_column_int64(st, 2);
        c->age_sum[g][r] += sqlite3_column_double(st, 3);
    }
    if (s != SQLITE_DONE)
        rc = db_error(err, db, "reading the gender x ethnicity table");
    sqlite3_finalize(st);
    return rc;
}

/* ---- faces ------------------------------------------------------------------------ */

static fm_status faces_push(rep_faces *f, int64_t image_id, int face, fm_error *err)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 64;
        rep_face *v = realloc(f->v, cap * sizeof *v);
        if (!v)
            return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
        f->v = v;
        f->cap = cap;
    }
    rep_face *x = &f->v[f->n++];
    memset(x, 0, sizeof *x);
    x->image_id = image_id;
    x->face = face;
    x->gender = x->race = x->band = -1;
    x->cell = REP_CELLS - 1;
    return FM_OK;
}

void rep_faces_free(rep_faces *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].source);
        free(f->v[i].jpeg);
        free(f->v[i].missing);
    }
    free(f->v);
    memset(f, 0, sizeof *f);
}

enum {
    D_SOURCE, D_W, D_H, D_BOX, D_SCORE = D_BOX + 4, D_AGE, D_AGE_STD, D_PG, D_PR = D_PG + 2,
    D_GENDER_NULL = D_PR + 5, D_RACE_NULL
};

static const char *const detail_sql =
    "SELECT i.source, i.width, i.height, f.x1, f.y1, f.x2, f.y2, f.score, f.age, f.age_std,"
    " f.p_male, f.p_female, f.p_white, f.p_black, f.p_asian, f.p_indian, f.p_others,"
    " f.gender IS NULL, f.race IS NULL"
    " FROM faces f JOIN images i ON i.id = f.image_id WHERE f.image_id = ?1 AND f.face = ?2";

static int cols_set(sqlite3_stmt *st, int first, int n)
{
    for (int i = first; i < first + n; i++)
        if (sqlite3_column_type(st, i) == SQLITE_NULL)
            return 0;
    return 1;
}

/* Fills the source, size, box and labels of every face in f (by primary key). */
static fm_status fetch_details(sqlite3 *db, rep_faces *f, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    if (sqlite3_prepare_v2(db, detail_sql, -1, &st, NULL) != SQLITE_OK)
        return db_error(err, db, "preparing a face look-up");
    for (size_t k = 0; k < f->n && rc == FM_OK; k++) {
        rep_face *x = &f->v[k];
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, x->image_id);
        sqlite3_bind_int(st, 2, x->face);
        int s = sqlite3_step(st);
        if (s != SQLITE_ROW) {
            rc = db_error(err, db, "looking a face up");
            break;
        }
        if (sqlite3_column_type(st, D_SOURCE) != SQLITE_NULL &&
            !(x->source = dup_text(sqlite3_column_text(st, D_SOURCE)))) {
            rc = fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
            break;
        }
        x->width = sqlite3_column_int(st, D_W);
        x->height = sqlite3_column_int(st, D_H);
        for (int i = 0; i < 4; i++)
            x->box[i] = (float)sqlite3_column_double(st, D_BOX + i);
        x->score = (float)sqlite3_column_double(st, D_SCORE);
        x->has_attrs = cols_set(st, D_AGE, 2 + 2 + REP_RACES);
        if (!x->has_attrs)
            continue;
        x->age = (float)sqlite3_column_double(st, D_AGE);
        x->age_std = (float)sqlite3_column_double(st, D_AGE_STD);
        for (int i = 0; i < REP_GENDERS; i++)
            x->pg[i] = (float)sqlite3_column_double(st, D_PG + i);
        for (int i = 0; i < REP_RACES; i++)
            x->pr[i] = (float)sqlite3_column_double(st, D_PR + i);
        x->gender = (int)fm_result_argmax(x->pg, REP_GENDERS);
        x->race = (int)fm_result_argmax(x->pr, REP_RACES);
        x->gender_withheld = sqlite3_column_int(st, D_GENDER_NULL);
        x->race_withheld = sqlite3_column_int(st, D_RACE_NULL);
        x->band = rep_band_of(x->age);
        x->cell = (x->gender * REP_RACES + x->race) * REP_BANDS + x->band;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Keys (image_id, face) of the rows of sql, then their details. */
static fm_status keyed_faces(sqlite3 *db, const char *sql, int limit, rep_faces *out,
                             fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    memset(out, 0, sizeof *out);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_error(err, db, "preparing a face list");
    sqlite3_bind_int(st, 1, limit);
    int s;
    while (rc == FM_OK && (s = sqlite3_step(st)) == SQLITE_ROW)
        rc = faces_push(out, sqlite3_column_int64(st, 0), sqlite3_column_int(st, 1), err);
    if (rc == FM_OK && s != SQLITE_DONE)
        rc = db_error(err, db, "reading a face list");
    sqlite3_finalize(st);
    return rc == FM_OK ? fetch_details(db, out, err) : rc;
}

fm_status rep_query_least(sqlite3 *db, int n, rep_faces *out, fm_error *err)
{
    return keyed_faces(db,
                       "SELECT image_id, face FROM faces WHERE p_male IS NOT NULL"
                       " AND p_white IS NOT NULL"
                       " ORDER BY min(" GENDER_CONF ", " RACE_CONF "), image_id, face"
                       " LIMIT ?1",
                       n, out, err);
}

fm_status rep_query_smallest(sqlite3 *db, int n, rep_faces *out, fm_error *err)
{
    return keyed_faces(db,
                       "SELECT image_id, face FROM faces WHERE x1 IS NOT NULL"
                       " AND y1 IS NOT NULL AND x2 IS NOT NULL AND y2 IS NOT NULL"
                       " ORDER BY (x2 - x1) * (y2 - y1), image_id, face LIMIT ?1",
                       n, out, err);
}

/* A well-mixed 64-bit hash of a face's key (splitmix64's finaliser): the sample takes
 * the faces with the smallest hashes, a uniform sample that is the same every run. */
static uint64_t key_hash(int64_t image_id, int face)
{
    uint64_t z = ((uint64_t)image_id << 16) ^ (uint64_t)(uint32_t)face;
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct cell_key {
    uint64_t hash;
    int64_t image_id;
    int face;
} cell_key;

/* Keeps the k smallest hashes of a cell, sorted (k is small: insertion). */
static void cell_offer(cell_key *keys, int *n, int k, cell_key c)
{
    if (*n == k && c.hash >= keys[k - 1].hash)
        return;
    int i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && keys[i - 1].hash > c.hash) {
        keys[i] = keys[i - 1];
        i--;
    }
    keys[i] = c;
}

static int cell_of(sqlite3_stmt *st)
{
    int g = gender_index(sqlite3_column_text(st, 2));
    int r = race_index(sqlite3_column_text(st, 3));
    if (g < 0 || r < 0 || sqlite3_column_type(st, 4) == SQLITE_NULL)
        return REP_CELLS - 1;
    return (g * REP_RACES + r) * REP_BANDS + rep_band_of(sqlite3_column_double(st, 4));
}

fm_status rep_query_sample(sqlite3 *db, int per_cell, rep_faces *out, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    memset(out, 0, sizeof *out);
    cell_key *keys = calloc((size_t)REP_CELLS * (size_t)per_cell, sizeof *keys);
    int count[REP_CELLS] = {0};
    if (!keys)
        return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
    if (sqlite3_prepare_v2(db, "SELECT image_id, face, gender, race, age FROM faces", -1,
                           &st, NULL) != SQLITE_OK) {
        rc = db_error(err, db, "preparing the sample");
        goto done;
    }
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        cell_key c = {0, sqlite3_column_int64(st, 0), sqlite3_column_int(st, 1)};
        c.hash = key_hash(c.image_id, c.face);
        int cell = cell_of(st);
        cell_offer(keys + (size_t)cell * (size_t)per_cell, &count[cell], per_cell, c);
    }
    if (s != SQLITE_DONE) {
        rc = db_error(err, db, "reading the sample");
        goto done;
    }
    for (int cell = 0; cell < REP_CELLS && rc == FM_OK; cell++)
        for (int i = 0; i < count[cell] && rc == FM_OK; i++) {
            const cell_key *c = &keys[(size_t)cell * (size_t)per_cell + (size_t)i];
            rc = faces_push(out, c->image_id, c->face, err);
        }
    if (rc == FM_OK)
        rc = fetch_details(db, out, err);
done:
    sqlite3_finalize(st);
    free(keys);
    return rc;
}

/* ---- failures ----------------------------------------------------------------------- */

fm_status rep_query_failures(sqlite3 *db, int max, rep_failures *out, fm_error *err)
{
    sqlite3_stmt *st = NULL;
    fm_status rc = FM_OK;
    memset(out, 0, sizeof *out);
    if (!(out->v = calloc((size_t)max + 1, sizeof *out->v)))
        return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
    /* The (source, job_id) index gives the order: no sort, and the scan stops at max. */
    if (sqlite3_prepare_v2(db,
                           "SELECT source, error_code, error_text FROM images"
                           " WHERE error_code != 0 ORDER BY source, job_id LIMIT ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(err, db, "preparing the failures");
    sqlite3_bind_int(st, 1, max);
    int s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW && out->n < (size_t)max) {
        rep_failure *f = &out->v[out->n++];
        f->source = dup_text(sqlite3_column_text(st, 0));
        f->code = sqlite3_column_int64(st, 1);
        f->text = dup_text(sqlite3_column_text(st, 2));
    }
    if (s != SQLITE_DONE && s != SQLITE_ROW)
        rc = db_error(err, db, "reading the failures");
    sqlite3_finalize(st);
    return rc;
}

void rep_failures_free(rep_failures *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].source);
        free(f->v[i].text);
    }
    free(f->v);
    memset(f, 0, sizeof *f);
}
