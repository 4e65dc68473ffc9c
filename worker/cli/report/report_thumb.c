/* report_thumb.c - thumbnails of the gallery's faces, cut from the original photos
 * (report-impl.h).
 *
 * Why it reads the originals itself: the database keeps labels, not pixels. Each face
 * names its image by the source the client gave it: a file path (relative paths as
 * the labelling run saw them, resolved here against opts.root), or ARCHIVE:MEMBER for
 * a member of a tar or zip archive, which is read through libarchive the way the
 * client read it (every compression filter, tar and zip formats).
 *
 * Cost: faces are sorted by where their image lives, so each file is decoded once
 * whatever number of its faces is shown, and each archive is read once, front to
 * back, picking out the members that are wanted. Decoding uses the decoder of the
 * pipeline (image.h: EXIF orientation applied, so boxes match) at the strongest DCT
 * scale that still leaves the smallest wanted face at least px pixels wide, so a
 * face from a 24-megapixel photo does not cost a full-size decode. One decoder buffer
 * at a time: memory is one (scaled) image, not the sample.
 */
#define _XOPEN_SOURCE 700
#include "report-impl.h"

#include "facemill/image.h"

#include <archive.h>
#include <archive_entry.h>
#include <turbojpeg.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MARGIN 0.25 /* of the face's longer side, on each side of the box */
#define GRAY 128

/* Where a face's image lives. */
typedef struct located {
    rep_face *f;
    char *path;         /* the file, or the archive (owned); NULL: not found */
    const char *member; /* inside the archive (points into f->source), or NULL */
} located;

static int is_file(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

/* root/name for a relative name (root NULL or "": name as it is). Owned result. */
static char *joined(const char *root, const char *name, size_t len)
{
    int rel = root && root[0] && name[0] != '/';
    size_t rlen = rel ? strlen(root) : 0;
    char *p = malloc(rlen + 1 + len + 1);
    if (!p)
        return NULL;
    if (rel)
        memcpy(p, root, rlen);
    if (rel && root[rlen - 1] != '/')
        p[rlen++] = '/';
    memcpy(p + rlen, name, len);
    p[rlen + len] = '\0';
    return p;
}

/* A source is a file when such a file exists; otherwise ARCHIVE:MEMBER at the first
 * colon whose left part is an existing file (paths may hold colons themselves).
 * Returns 0, or -1 when out of memory. */
static int locate(located *l, const char *root)
{
    const char *s = l->f->source;
    l->path = NULL;
    l->member = NULL;
    if (!s || !s[0])
        return 0;
    if (!(l->path = joined(root, s, strlen(s))))
        return -1;
    if (is_file(l->path))
        return 0;
    free(l->path);
    l->path = NULL;
    for (const char *c = strchr(s, ':'); c; c = strchr(c + 1, ':')) {
        char *p = joined(root, s, (size_t)(c - s));
        if (!p)
            return -1;
        if (c[1] && is_file(p)) {
            l->path = p;
            l->member = c + 1;
            return 0;
        }
        free(p);
    }
    return 0;
}

static int cmp_str(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "");
}

/* By file or archive, then member, then image (so faces of one image are adjacent). */
static int cmp_located(const void *pa, const void *pb)
{
    const located *a = pa, *b = pb;
    int c = cmp_str(a->path, b->path);
    if (!c)
        c = cmp_str(a->member, b->member);
    if (!c)
        c = (a->f->image_id > b->f->image_id) - (a->f->image_id < b->f->image_id);
    return c;
}

static void set_missing(rep_face *f, const char *why)
{
    if (!f->missing && !f->jpeg)
        f->missing = strdup(why);
}

/* ---- cutting and encoding ----------------------------------------------------------- */

/* Bilinear sample of channel c at (x, y), gray outside. */
static double bilinear(const uint8_t *rgb, int w, int h, size_t stride, double x, double y,
                       int c)
{
    int x0 = (int)floor(x), y0 = (int)floor(y);
    double fx = x - x0, fy = y - y0, v = 0;
    for (int dy = 0; dy < 2; dy++)
        for (int dx = 0; dx < 2; dx++) {
            int px = x0 + dx, py = y0 + dy;
            double wgt = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy);
            int p = px >= 0 && px < w && py >= 0 && py < h
                        ? rgb[(size_t)py * stride + (size_t)px * 3 + (size_t)c]
                        : GRAY;
            v += wgt * p;
        }
    return v;
}

void rep_thumb_cut(const uint8_t *rgb, int w, int h, size_t stride, double r,
                   const float box[4], int px, uint8_t *out)
{
    double side = fmax(box[2] - box[0], box[3] - box[1]) * (1 + 2 * MARGIN);
    if (!(side > 1))
        side = 1;
    /* original pixel centres u map to (u + 0.5) * r - 0.5 in the decoded image */
    double cx = ((box[0] + box[2]) / 2 + 0.5) * r - 0.5;
    double cy = ((box[1] + box[3]) / 2 + 0.5) * r - 0.5;
    double s = side * r, step = s / px;
    double x0 = cx - s / 2, y0 = cy - s / 2;
    for (int oy = 0; oy < px; oy++)
        for (int ox = 0; ox < px; ox++) {
            uint8_t *o = out + ((size_t)oy * (size_t)px + (size_t)ox) * 3;
            double sx = x0 + (ox + 0.5) * step, sy = y0 + (oy + 0.5) * step;
            if (step <= 1.5) {
                for (int c = 0; c < 3; c++)
                    o[c] = (uint8_t)lround(fmin(255, fmax(0, bilinear(rgb, w, h, stride,
                                                                      sx, sy, c))));
                continue;
            }
            /* area average over the pixels whose centres fall in this output pixel */
            long ix0 = lround(sx - step / 2), ix1 = lround(sx + step / 2);
            long iy0 = lround(sy - step / 2), iy1 = lround(sy + step / 2);
            double sum[3] = {0, 0, 0};
            long n = (ix1 - ix0) * (iy1 - iy0);
            for (long y = iy0; y < iy1; y++)
                for (long x = ix0; x < ix1; x++) {
                    int in = x >= 0 && x < w && y >= 0 && y < h;
                    const uint8_t *p = in ? rgb + (size_t)y * stride + (size_t)x * 3 : NULL;
                    for (int c = 0; c < 3; c++)
                        sum[c] += p ? p[c] : GRAY;
                }
            for (int c = 0; c < 3; c++)
                o[c] = (uint8_t)lround(sum[c] / (double)(n > 0 ? n : 1));
        }
}

/* JPEG of the px x px RGB pixels, at the best of a few qualities that stays within
 * FM_REPORT_THUMB_MAX_BYTES. Returns 1 with f->jpeg set, 0 when even the lowest is
 * too large (reason set), -1 on an encoder failure (err set). */
static int encode(tjhandle tj, const uint8_t *pix, int px, rep_face *f, fm_error *err)
{
    static const int quality[] = {82, 60, 40};
    for (size_t q = 0; q < sizeof quality / sizeof quality[0]; q++) {
        unsigned char *buf = NULL;
        unsigned long len = 0;
        if (tjCompress2(tj, pix, px, 0, px, TJPF_RGB, &buf, &len, TJSAMP_420, quality[q],
                        0) != 0) {
            tjFree(buf);
            fm_error_set(err, FM_ERR_INTERNAL, "thumbnail: %s", tjGetErrorStr2(tj));
            return -1;
        }
        if (len <= FM_REPORT_THUMB_MAX_BYTES) {
            f->jpeg = malloc(len);
            if (f->jpeg) {
                memcpy(f->jpeg, buf, len);
                f->jpeg_len = len;
            }
            tjFree(buf);
            if (!f->jpeg) {
                fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
                return -1;
            }
            return 1;
        }
        tjFree(buf);
    }
    set_missing(f, "thumbnail larger than the page allows");
    return 0;
}

/* ---- decoding -------------------------------------------------------------------- */

typedef struct cutter {
    fm_decoder *dec;
    int dec_side;       /* the target_side dec was made for (-1: none yet) */
    int64_t max_pixels;
    tjhandle tj;
    uint8_t *pix;       /* px * px * 3 */
    int px;
} cutter;

/* The detector-style target side that leaves the smallest of faces l[0..n) at least
 * px pixels across, rounded up to a power of two (0: full size). */
static int wanted_side(const located *l, size_t n, int px)
{
    double need = 0;
    for (size_t i = 0; i < n; i++) {
        const rep_face *f = l[i].f;
        double side = fmax(f->box[2] - f->box[0], f->box[3] - f->box[1]) * (1 + 2 * MARGIN);
        int lng = f->width > f->height ? f->width : f->height;
        if (lng <= 0 || !(side > 0))
            return 0;
        need = fmax(need, lng * (double)px / side);
    }
    int t = 64;
    while (t < need && t < (1 << 20))
        t *= 2;
    return t;
}

static fm_status use_decoder(cutter *c, int side, fm_error *err)
{
    if (c->dec && c->dec_side == side)
        return FM_OK;
    fm_decoder_destroy(&c->dec);
    fm_decode_opts o = {0};
    o.max_pixels = c->max_pixels > 0 ? (uint64_t)c->max_pixels : 0;
    o.target_side = side;
    c->dec_side = side;
    return fm_decoder_new(&c->dec, &o, err);
}

/* Decodes one image (the file l->path, or data) and cuts the faces l[0..n). */
static fm_status cut_image(cutter *c, located *l, size_t n, const uint8_t *data, size_t len,
                           fm_error *err)
{
    fm_status st = use_decoder(c, wanted_side(l, n, c->px), err);
    if (st != FM_OK)
        return st;
    fm_image img;
    fm_error e = {0};
    st = data ? fm_decode(c->dec, data, len, &img, &e) : fm_decode_file(c->dec, l->path, &img, &e);
    if (st == FM_ERR_NOMEM)
        return fm_error_set(err, st, "%s", fm_error_text(&e));
    if (st != FM_OK) {
        char why[FM_ERROR_MSG_MAX + 32];
        snprintf(why, sizeof why, "original not decodable: %s", fm_error_text(&e));
        for (size_t i = 0; i < n; i++)
            set_missing(l[i].f, why);
        return FM_OK;
    }
    double r = (double)img.scale_num / (double)(img.scale_denom > 0 ? img.scale_denom : 1);
    for (size_t i = 0; i < n; i++) {
        if (l[i].f->jpeg)
            continue;
        rep_thumb_cut(img.data, img.w, img.h, img.stride, r, l[i].f->box, c->px, c->pix);
        if (encode(c->tj, c->pix, c->px, l[i].f, err) < 0)
            return err ? err->code : FM_ERR_INTERNAL;
    }
    return FM_OK;
}

/* Number of entries from l[0] on with the same path and member. */
static size_t same_image(const located *l, size_t n)
{
    size_t k = 1;
    while (k < n && cmp_str(l[k].path, l[0].path) == 0 &&
           cmp_str(l[k].member, l[0].member) == 0)
        k++;
    return k;
}

static struct archive *archive_open(const char *path)
{
    struct archive *a = archive_read_new();
    if (!a)
        return NULL;
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_zip(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        archive_read_free(a);
        return NULL;
    }
    return a;
}

/* Finds the member of l[0..n) (sorted by member) named name; returns its first index
 * or n. */
static size_t find_member(const located *l, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(l[mid].member, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strcmp(l[lo].member, name) == 0 ? lo : n;
}

/* The faces l[0..n) are members of one archive: read it once, front to back. */
static fm_status cut_archive(cutter *c, located *l, size_t n, fm_error *err)
{
    struct archive *a = archive_open(l[0].path);
    fm_status st = FM_OK;
    uint8_t *buf = NULL;
    size_t left = n;
    if (!a) {
        for (size_t i = 0; i < n; i++)
            set_missing(l[i].f, "archive cannot be read");
        return FM_OK;
    }
    struct archive_entry *e;
    int r;
    while (left && st == FM_OK &&
           ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN)) {
        const char *name = archive_entry_pathname(e);
        size_t at = name && archive_entry_filetype(e) == AE_IFREG ? find_member(l, n, name) : n;
        int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
        if (at == n || l[at].f->jpeg || l[at].f->missing)
            continue; /* not wanted, or a second entry of that name */
        size_t k = same_image(l + at, n - at);
        left -= k;
        if (size < 0 || size > FM_DECODE_DEFAULT_MAX_BYTES) {
            for (size_t i = at; i < at + k; i++)
                set_missing(l[i].f, "archive member too large or of unknown size");
            continue;
        }
        uint8_t *nb = realloc(buf, size ? (size_t)size : 1);
        if (!nb) {
            st = fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
            break;
        }
        buf = nb;
        la_ssize_t got = 0, m;
        while (got < size && (m = archive_read_data(a, buf + got, (size_t)(size - got))) > 0)
            got += m;
        if (got != size) {
            for (size_t i = at; i < at + k; i++)
                set_missing(l[i].f, "archive member cannot be read");
            continue;
        }
        st = cut_image(c, l + at, k, buf, (size_t)size, err);
    }
    for (size_t i = 0; i < n; i++)
        set_missing(l[i].f, "original not found in its archive");
    free(buf);
    archive_read_free(a);
    return st;
}

/* Sorts the archive group l[0..n) by member and cuts it. */
static int cmp_member(const void *pa, const void *pb)
{
    const located *a = pa, *b = pb;
    return strcmp(a->member, b->member);
}

fm_status rep_thumbs_make(rep_face **faces, size_t n, const char *root, int px,
                          int64_t max_pixels, fm_error *err)
{
    fm_status st = FM_OK;
    cutter c = {NULL, -1, max_pixels, NULL, NULL, px};
    located *l = calloc(n ? n : 1, sizeof *l);
    c.pix = malloc((size_t)px * (size_t)px * 3);
    c.tj = tjInitCompress();
    if (!l || !c.pix || !c.tj) {
        st = fm_error_set(err, FM_ERR_NOMEM, "report: out of memory for thumbnails");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        l[i].f = faces[i];
        if (locate(&l[i], root) != 0) {
            st = fm_error_set(err, FM_ERR_NOMEM, "report: out of memory");
            goto done;
        }
    }
    qsort(l, n, sizeof *l, cmp_located);
    for (size_t i = 0; i < n && st == FM_OK;) {
        if (!l[i].path) {
            set_missing(l[i].f, "original not found");
            i++;
            continue;
        }
        size_t k = 1;
        if (l[i].member) { /* every member of this archive */
            while (i + k < n && l[i + k].member && cmp_str(l[i + k].path, l[i].path) == 0)
                k++;
            qsort(l + i, k, sizeof *l, cmp_member);
            st = cut_archive(&c, l + i, k, err);
        } else {
            k = same_image(l + i, n - i);
            st = cut_image(&c, l + i, k, NULL, 0, err);
        }
        i += k;
    }
done:
    for (size_t i = 0; l && i < n; i++)
        free(l[i].path);
    free(l);
    free(c.pix);
    if (c.tj)
        tjDestroy(c.tj);
    fm_decoder_destroy(&c.dec);
    return st;
}
