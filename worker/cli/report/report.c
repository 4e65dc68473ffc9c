/* report.c - fm_report_write (include/facemill/report.h): the queries, the
 * thumbnails, the page, in that order.
 *
 * Why this order: every query runs inside one read transaction (a consistent
 * snapshot while a sink may still be writing) and is over before any original is
 * read, so the database is held only as long as the SQL takes. The page is written to
 * a temporary file beside its destination and renamed over it, so a reader never
 * opens half a page and a failed report leaves the previous one in place.
 */
#define _XOPEN_SOURCE 700
#include "report-impl.h"

#include "facemill/clock.h"
#include "facemill/sink.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int or_default(int v, int def)
{
    return v > 0 ? v : def;
}

static fm_status check_opts(const fm_report_opts *o, fm_error *err)
{
    if (!o || !o->db_path || !o->out_path)
        return fm_error_set(err, FM_ERR_INVALID, "report: a database and an output are needed");
    if (o->per_cell < 0 || o->per_cell > FM_REPORT_MAX_PER_CELL)
        return fm_error_set(err, FM_ERR_INVALID, "report: faces per cell must be 1..%d",
                            FM_REPORT_MAX_PER_CELL);
    if (o->extremes < 0 || o->extremes > FM_REPORT_MAX_EXTREMES)
        return fm_error_set(err, FM_ERR_INVALID, "report: extremes must be 1..%d",
                            FM_REPORT_MAX_EXTREMES);
    if (o->max_failures < 0 || o->max_failures > FM_REPORT_MAX_FAILURES)
        return fm_error_set(err, FM_ERR_INVALID, "report: failures listed must be 1..%d",
                            FM_REPORT_MAX_FAILURES);
    if (o->thumb_px != 0 && (o->thumb_px < 32 || o->thumb_px > 256))
        return fm_error_set(err, FM_ERR_INVALID, "report: thumbnail size must be 32..256");
    return FM_OK;
}

static fm_status run_queries(sqlite3 *db, rep_page *p, fm_error *err)
{
    fm_status st = rep_query_begin(db, err);
    if (st != FM_OK)
        return st;
    if ((st = rep_query_summary(db, &p->sum, err)) == FM_OK &&
        (st = rep_query_hists(db, p->hist, err)) == FM_OK &&
        (st = rep_query_cross(db, &p->cross, err)) == FM_OK &&
        (st = rep_query_sample(db, p->per_cell, &p->sample, err)) == FM_OK &&
        (st = rep_query_least(db, p->extremes, &p->least, err)) == FM_OK &&
        (st = rep_query_smallest(db, p->extremes, &p->smallest, err)) == FM_OK)
        st = rep_query_failures(db, p->max_failures, &p->failures, err);
    rep_query_end(db);
    return st;
}

/* Every face of the gallery, for the thumbnail pass. */
static rep_face **gallery(rep_page *p, size_t *n)
{
    rep_faces *lists[] = {&p->sample, &p->least, &p->smallest};
    size_t total = 0, k = 0;
    for (size_t i = 0; i < 3; i++)
        total += lists[i]->n;
    rep_face **v = malloc((total ? total : 1) * sizeof *v);
    if (!v)
        return NULL;
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < lists[i]->n; j++)
            v[k++] = &lists[i]->v[j];
    *n = total;
    return v;
}

/* The directory part of path ("." for a bare name). Owned result. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Length of the first component of s (after any '/'s), and where it starts. */
static size_t component(const char **s)
{
    while (**s == '/')
        (*s)++;
    size_t n = 0;
    while ((*s)[n] && (*s)[n] != '/')
        n++;
    return n;
}

/* The path of directory to relative to directory from (both absolute and canonical,
 * as realpath gives them): "thumbs", "../x/thumbs", ".". Owned result. */
static char *relative(const char *from, const char *to)
{
    const char *f = from, *t = to;
    for (;;) { /* skip the components both share */
        const char *f2 = f, *t2 = t;
        size_t nf = component(&f2), nt = component(&t2);
        if (nf == 0 || nf != nt || memcmp(f2, t2, nf) != 0)
            break;
        f = f2 + nf;
        t = t2 + nt;
    }
    size_t ups = 0;
    for (const char *c = f; component(&c) > 0; c += component(&c))
        ups++;
    while (*t == '/')
        t++;
    char *out = malloc(3 * ups + strlen(t) + 2);
    if (!out)
        return NULL;
    out[0] = '\0';
    for (size_t u = 0; u < ups; u++)
        strcat(out, "../");
    strcat(out, t);
    size_t len = strlen(out);
    if (len == 0)
        strcpy(out, ".");
    else if (out[len - 1] == '/')
        out[len - 1] = '\0';
    return out;
}

/* --thumbs: writes each thumbnail as DIR/f<image>-<face>.jpg and sets the page's link
 * to DIR, relative to the page. */
static fm_status write_thumbs(const fm_report_opts *o, rep_face **v, size_t n, rep_page *p,
                              char **rel, fm_error *err)
{
    char page_dir[PATH_MAX], thumbs[PATH_MAX];
    char *pd = dir_of(o->out_path);
    if (!pd)
        return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
    if (mkdir(o->thumbs_dir, 0777) != 0 && errno != EEXIST) {
        free(pd);
        return fm_error_set(err, FM_ERR_IO, "%s: %s", o->thumbs_dir, strerror(errno));
    }
    int ok = realpath(pd, page_dir) && realpath(o->thumbs_dir, thumbs);
    free(pd);
    if (!ok)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", o->thumbs_dir, strerror(errno));
    if (!(*rel = relative(page_dir, thumbs)))
        return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
    p->thumbs_rel = *rel;
    for (size_t i = 0; i < n; i++) {
        rep_face *f = v[i];
        if (!f->jpeg)
            continue;
        snprintf(f->file, sizeof f->file, "f%lld-%d.jpg", (long long)f->image_id, f->face);
        char path[PATH_MAX + sizeof f->file];
        snprintf(path, sizeof path, "%s/%s", thumbs, f->file);
        FILE *out = fopen(path, "wb");
        int w = out && fwrite(f->jpeg, 1, f->jpeg_len, out) == f->jpeg_len;
        if (out && fclose(out) != 0)
            w = 0;
        if (!w)
            return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
    }
    return FM_OK;
}

/* The page written into path as it is (a device, a FIFO, where a dangling link
 * points). */
static fm_status write_direct(const char *path, const rep_page *p, size_t *bytes,
                              fm_error *err)
{
    FILE *out = fopen(path, "w");
    if (!out)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
    rep_html_page(out, p);
    long end = ftell(out);
    int ok = fflush(out) == 0 && !ferror(out);
    int saved = errno;
    if (fclose(out) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    if (!ok)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(saved));
    *bytes = end > 0 ? (size_t)end : 0;
    return FM_OK;
}

/* The page into a temporary file beside out_path, renamed over it when complete; a
 * symbolic link is followed (the file it names is replaced, not the link), and a
 * device or FIFO (/dev/stdout, /dev/null) is written, never replaced. */
static fm_status write_page(const char *out_path, const rep_page *p, size_t *bytes,
                            fm_error *err)
{
    struct stat ls, sb;
    if (lstat(out_path, &ls) == 0 && S_ISLNK(ls.st_mode)) {
        char *real = realpath(out_path, NULL);
        if (!real) /* a dangling link: fopen makes the file it names */
            return write_direct(out_path, p, bytes, err);
        fm_status st = write_page(real, p, bytes, err);
        free(real);
        return st;
    }
    if (stat(out_path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        if (S_ISDIR(sb.st_mode))
            return fm_error_set(err, FM_ERR_IO, "%s: is a directory", out_path);
        return write_direct(out_path, p, bytes, err);
    }
    size_t len = strlen(out_path);
    char *tmp = malloc(len + 16);
    if (!tmp)
        return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
    snprintf(tmp, len + 16, "%s.tmp.XXXXXX", out_path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fm_status st = fm_error_set(err, FM_ERR_IO, "%s: %s", out_path, strerror(errno));
        free(tmp);
        return st;
    }
    fchmod(fd, 0644);
    FILE *out = fdopen(fd, "w");
    if (!out) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return fm_error_set(err, FM_ERR_IO, "%s: %s", out_path, strerror(errno));
    }
    rep_html_page(out, p);
    long end = ftell(out);
    int ok = fflush(out) == 0 && !ferror(out);
    if (fclose(out) != 0)
        ok = 0;
    if (ok && rename(tmp, out_path) != 0)
        ok = 0;
    fm_status st = FM_OK;
    if (!ok) {
        st = fm_error_set(err, FM_ERR_IO, "%s: %s", out_path, strerror(errno));
        unlink(tmp);
    }
    *bytes = end > 0 ? (size_t)end : 0;
    free(tmp);
    return st;
}

static void count_thumbs(rep_face **v, size_t n, fm_report_stats *s)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i]->jpeg) {
            s->thumbs++;
            s->thumb_bytes += v[i]->jpeg_len;
        } else {
            s->placeholders++;
        }
    }
}

fm_status fm_report_write(const fm_report_opts *o, fm_report_stats *stats, fm_error *err)
{
    fm_report_stats s = {0};
    rep_page p;
    fm_results *r = NULL;
    rep_face **v = NULL;
    size_t n = 0;
    char *rel = NULL, *title = NULL;
    memset(&p, 0, sizeof p);
    fm_status st = check_opts(o, err);
    if (st != FM_OK)
        return st;
    p.per_cell = or_default(o->per_cell, FM_REPORT_DEFAULT_PER_CELL);
    p.extremes = or_default(o->extremes, FM_REPORT_DEFAULT_EXTREMES);
    p.max_failures = or_default(o->max_failures, FM_REPORT_DEFAULT_FAILURES);
    p.thumb_px = or_default(o->thumb_px, FM_REPORT_DEFAULT_THUMB_PX);
    const char *base = strrchr(o->db_path, '/');
    p.db_name = base ? base + 1 : o->db_path;
    if (o->title) {
        p.title = o->title;
    } else {
        size_t len = strlen(p.db_name) + 32;
        if (!(title = malloc(len)))
            return fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
        snprintf(title, len, "facemill report: %s", p.db_name);
        p.title = title;
    }
    if ((st = fm_results_open(&r, o->db_path, FM_RESULTS_READONLY | FM_RESULTS_AS_IS, err)) !=
        FM_OK)
        goto done;
    double t0 = fm_now_ms();
    if ((st = run_queries(fm_results_db(r), &p, err)) != FM_OK)
        goto done;
    double t1 = fm_now_ms();
    s.query_ms = t1 - t0;
    fm_results_close(&r); /* the originals are read without holding the database */
    if (!(v = gallery(&p, &n))) {
        st = fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
        goto done;
    }
    if ((st = rep_thumbs_make(v, n, o->root, p.thumb_px, o->max_pixels, err)) != FM_OK)
        goto done;
    double t2 = fm_now_ms();
    s.thumb_ms = t2 - t1;
    if (o->thumbs_dir && (st = write_thumbs(o, v, n, &p, &rel, err)) != FM_OK)
        goto done;
    count_thumbs(v, n, &s);
    st = write_page(o->out_path, &p, &s.page_bytes, err);
    s.page_ms = fm_now_ms() - t2;
    s.images = p.sum.images;
    s.faces = p.sum.faces;
    s.failed = p.sum.failed;
    s.failures_listed = (int)p.failures.n;
done:
    fm_results_close(&r);
    rep_summary_free(&p.sum);
    rep_faces_free(&p.sample);
    rep_faces_free(&p.least);
    rep_faces_free(&p.smallest);
    rep_failures_free(&p.failures);
    free(v);
    free(rel);
    free(title);
    if (stats)
        *stats = s;
    return st;
}
