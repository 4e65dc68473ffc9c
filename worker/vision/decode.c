/* decode.c - JPEG, PNG, WebP, HEIC, AVIF and TIFF bytes to RGB pixels for the
 * detector, and the small write/draw helpers behind `facemill detect --draw`.
 *
 * It exists so the rest of the worker sees one clean contract (RGB, upright, scaled
 * to what detection needs, bounded in size) whatever the archive holds: CMYK files
 * from print workflows, grayscale scans, progressive web images, phone photos stored
 * sideways with an EXIF orientation, PNG screenshots and scans (any colour type and
 * bit depth, interlaced or not), WebP downloads, phones' HEIC photos (tiled, turned by
 * the file's own rotation), AVIF, scans kept as TIFF, truncated files and formats it
 * does not read.
 *
 * libjpeg's own error handler calls exit(), so only the TurboJPEG API is used (2.1:
 * the tj* calls, not tj3*); PNG goes through libspng (errors are return codes, no
 * setjmp), WebP through libwebp's one-call decoder, HEIC and AVIF through libheif's
 * C API (strict decoding), TIFF through libtiff's RGBA reader (its messages caught
 * per file, never printed). Every input byte is untrusted: the EXIF, marker, RIFF and
 * ISO box parsers check each length and offset against the buffer before reading,
 * and every format's size is checked against max_pixels from its header before a
 * pixel buffer is allocated.
 */
#include "facemill/image.h"

#include <errno.h>
#include <fcntl.h>
#include <libheif/heif.h>
#include <limits.h>
#include <spng.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <tiffio.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <webp/decode.h>

struct fm_decoder {
    tjhandle tj;
    fm_decode_opts opts;
    tjscalingfactor *factors; /* static table owned by TurboJPEG */
    int nfactors;
    uint8_t *out; /* the pixels handed out in fm_image */
    size_t out_cap;
    uint8_t *tmp; /* decode target when the pixels still need turning */
    size_t tmp_cap;
    uint8_t *in; /* file contents for fm_decode_file */
    size_t in_cap;
    fm_decoder_stats stats;
};

/* What the markers before the first scan say beyond what TurboJPEG reports. */
typedef struct jpeg_meta {
    int orientation; /* EXIF orientation 1..8; 1 when absent or unreadable */
    int adobe;       /* an APP14 "Adobe" segment was present */
} jpeg_meta;

/* ---- buffers -------------------------------------------------------------------- */

/* Makes *buf hold at least need bytes. keep says whether the current contents must
 * survive (file reading) or may be dropped (pixel buffers, rewritten every decode). */
static fm_status buf_reserve(fm_decoder *d, uint8_t **buf, size_t *cap, size_t need,
                             int keep, fm_error *err)
{
    if (need <= *cap)
        return FM_OK;
    size_t newcap = need;
    const size_t page = 4096;
    if (newcap <= SIZE_MAX - page)
        newcap = (newcap + page - 1) / page * page;
    uint8_t *p;
    if (keep) {
        p = realloc(*buf, newcap);
    } else {
        free(*buf);
        *buf = NULL;
        *cap = 0;
        p = malloc(newcap);
    }
    if (!p)
        return fm_error_set(err, FM_ERR_NOMEM, "cannot allocate %zu bytes for image data",
                            newcap);
    *buf = p;
    *cap = newcap;
    d->stats.grows++;
    return FM_OK;
}

/* ---- format sniffing ------------------------------------------------------------ */

static int has_prefix(const uint8_t *b, size_t n, const void *magic, size_t m)
{
    return n >= m && memcmp(b, magic, m) == 0;
}

static int is_jpeg(const uint8_t *b, size_t n)
{
    return n >= 2 && b[0] == 0xFF && b[1] == 0xD8;
}

/* What a HEIF brand says of the coding: 1 HEVC, 2 AV1, 4 HEIF of either, 0 neither. */
static int brand_kind(const uint8_t *br)
{
    static const char *const hevc[] = {"heic", "heix", "hevc", "hevx", "heim", "heis"};
    for (size_t i = 0; i < sizeof hevc / sizeof hevc[0]; i++)
        if (memcmp(br, hevc[i], 4) == 0)
            return 1;
    if (memcmp(br, "avif", 4) == 0 || memcmp(br, "avis", 4) == 0)
        return 2;
    if (memcmp(br, "mif1", 4) == 0 || memcmp(br, "msf1", 4) == 0)
        return 4;
    return 0;
}

/* Names a non-JPEG image format from its magic bytes, or returns NULL. */
static const char *sniff_other(const uint8_t *b, size_t n)
{
    if (has_prefix(b, n, "\x89PNG\r\n\x1a\n", 8))
        return "PNG";
    if (has_prefix(b, n, "GIF87a", 6) || has_prefix(b, n, "GIF89a", 6))
        return "GIF";
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return "WebP";
    if (has_prefix(b, n, "II*\0", 4) || has_prefix(b, n, "MM\0*", 4) ||
        has_prefix(b, n, "II+\0", 4) || has_prefix(b, n, "MM\0+", 4)) /* and BigTIFF */
        return "TIFF";
    /* BMP: "BM" alone is weak; the two reserved 16-bit fields are zero in practice. */
    if (n >= 14 && b[0] == 'B' && b[1] == 'M' && b[6] == 0 && b[7] == 0 && b[8] == 0 &&
        b[9] == 0)
        return "BMP";
    if (n >= 12 && memcmp(b + 4, "ftyp", 4) == 0) {
        /* The major brand, then the compatible ones up to the box's end: an HEVC brand
         * makes it HEIC, else an AV1 brand AVIF, else the generic HEIF brands HEIC. */
        size_t box = (size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3];
        if (box > n)
            box = n;
        int kinds = brand_kind(b + 8); /* major brand; minor version at 12 */
        for (size_t p = 16; p + 4 <= box; p += 4)
            kinds |= brand_kind(b + p);
        const int is_hevc = kinds & 1, is_av1 = kinds & 2, is_heif = kinds & 4;
        if (is_hevc || (is_heif && !is_av1))
            return "HEIC";
        if (is_av1)
            return "AVIF";
    }
    if (has_prefix(b, n, "\0\0\0\x0cjP  \r\n\x87\n", 12) ||
        has_prefix(b, n, "\xff\x4f\xff\x51", 4))
        return "JPEG 2000";
    if (has_prefix(b, n, "\0\0\0\x0cJXL \r\n\x87\n", 12) || has_prefix(b, n, "\xff\x0a", 2))
        return "JPEG XL";
    if (has_prefix(b, n, "8BPS", 4))
        return "PSD";
    if (has_prefix(b, n, "%PDF-", 5))
        return "PDF";
    return NULL;
}

/* ---- EXIF and marker parsing ---------------------------------------------------- */

static uint32_t rd16(const uint8_t *p, int big_endian)
{
    return big_endian ? ((uint32_t)p[0] << 8) | p[1] : ((uint32_t)p[1] << 8) | p[0];
}

static uint32_t rd32(const uint8_t *p, int big_endian)
{
    return big_endian ? ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                            ((uint32_t)p[2] << 8) | p[3]
                      : ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) |
                            ((uint32_t)p[1] << 8) | p[0];
}

/* Orientation (tag 0x0112 in IFD0) from a TIFF structure of n bytes at t. Anything
 * malformed gives 1, the "as stored" orientation. */
static int exif_orientation(const uint8_t *t, size_t n)
{
    if (n < 8)
        return 1;
    int be;
    if (t[0] == 'I' && t[1] == 'I')
        be = 0;
    else if (t[0] == 'M' && t[1] == 'M')
        be = 1;
    else
        return 1;
    if (rd16(t + 2, be) != 42)
        return 1;
    uint32_t ifd = rd32(t + 4, be);
    if (ifd < 8 || ifd > n - 2)
        return 1;
    size_t count = rd16(t + ifd, be);
    size_t room = (n - ifd - 2) / 12; /* entries that fit before the end */
    if (count > room)
        count = room;
    for (size_t i = 0; i < count; i++) {
        const uint8_t *e = t + ifd + 2 + 12 * i;
        if (rd16(e, be) != 0x0112)
            continue;
        uint32_t type = rd16(e + 2, be);
        uint32_t cnt = rd32(e + 4, be);
        uint32_t v;
        if (cnt < 1)
            return 1;
        if (type == 3) /* SHORT, the value sits in the first two bytes of the field */
            v = rd16(e + 8, be);
        else if (type == 4) /* LONG, written by a few broken tools */
            v = rd32(e + 8, be);
        else
            return 1;
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

/* Walks the marker segments from SOI to the first SOS and collects the EXIF
 * orientation (first "Exif" APP1 only) and the presence of an Adobe APP14. Stops
 * quietly at anything it does not understand; libjpeg judges validity. */
static void scan_markers(const uint8_t *b, size_t n, jpeg_meta *m)
{
    m->orientation = 1;
    m->adobe = 0;
    int seen_exif = 0;
    size_t p = 2; /* after SOI */
    while (p + 4 <= n) {
        if (b[p] != 0xFF)
            return;
        uint8_t code = b[p + 1];
        if (code == 0xFF) { /* fill byte */
            p++;
            continue;
        }
        if (code == 0x01 || code == 0xD8 || (code >= 0xD0 && code <= 0xD7)) {
            p += 2; /* markers without a length */
            continue;
        }
        if (code == 0xDA || code == 0xD9) /* SOS, EOI: the header is over */
            return;
        size_t seglen = rd16(b + p + 2, 1); /* counts its own two bytes */
        if (seglen < 2 || seglen > n - p - 2)
            return;
        const uint8_t *pl = b + p + 4;
        size_t pn = seglen - 2;
        if (code == 0xE1 && !seen_exif && pn >= 6 && memcmp(pl, "Exif\0\0", 6) == 0) {
            seen_exif = 1;
            m->orientation = exif_orientation(pl + 6, pn - 6);
        } else if (code == 0xEE && pn >= 12 && memcmp(pl, "Adobe", 5) == 0) {
            m->adobe = 1; /* same test as libjpeg's saw_Adobe_marker */
        }
        p += 2 + seglen;
    }
}

/* ---- pixel work ----------------------------------------------------------------- */

/* round(v / 255) for v in 0..65025 */
static uint8_t div255(uint32_t v)
{
    v += 128;
    return (uint8_t)((v + (v >> 8)) >> 8);
}

/* Converts npix CMYK pixels to RGB in place (4 bytes in, 3 out: the write position
 * never passes the read position). Adobe files store inverted CMYK (0 = full ink),
 * others store ink amounts. */
static void cmyk_to_rgb(uint8_t *p, size_t npix, int inverted)
{
    const uint8_t *s = p;
    uint8_t *o = p;
    for (size_t i = 0; i < npix; i++, s += 4, o += 3) {
        uint32_t c = s[0], m = s[1], y = s[2], k = s[3];
        if (!inverted) {
            c = 255 - c;
            m = 255 - m;
            y = 255 - y;
            k = 255 - k;
        }
        o[0] = div255(c * k);
        o[1] = div255(m * k);
        o[2] = div255(y * k);
    }
}

/* Writes the upright view of the sw x sh RGB image src into dst (packed rows) for
 * EXIF orientation o in 2..8; dst is sh x sw for o >= 5, sw x sh otherwise.
 * Destination pixel (x, y) comes from src byte offset base + x * step_x + y * step_y. */
static void apply_orientation(const uint8_t *src, int sw, int sh, uint8_t *dst, int o)
{
    const ptrdiff_t px = 3, row = (ptrdiff_t)sw * 3;
    const ptrdiff_t last_col = (ptrdiff_t)(sw - 1) * px, last_row = (ptrdiff_t)(sh - 1) * row;
    ptrdiff_t base = 0, step_x = px, step_y = row;
    switch (o) {
    case 2: base = last_col; step_x = -px; step_y = row; break;              /* mirror */
    case 3: base = last_col + last_row; step_x = -px; step_y = -row; break;  /* 180 */
    case 4: base = last_row; step_x = px; step_y = -row; break;              /* flip */
    case 5: base = 0; step_x = row; step_y = px; break;                      /* transpose */
    case 6: base = last_row; step_x = -row; step_y = px; break;              /* 90 cw */
    case 7: base = last_col + last_row; step_x = -row; step_y = -px; break;  /* transverse */
    case 8: base = last_col; step_x = row; step_y = -px; break;              /* 90 ccw */
    default: break;
    }
    int dw = o >= 5 ? sh : sw, dh = o >= 5 ? sw : sh;
    for (int y = 0; y < dh; y++) {
        uint8_t *d = dst + (size_t)y * (size_t)dw * 3;
        ptrdiff_t off = base + (ptrdiff_t)y * step_y;
        for (int x = 0; x < dw; x++, d += 3, off += step_x) {
            const uint8_t *s = src + off;
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
}

/* The strongest of 1/8, 1/4, 1/2 keeping the long side >= target, else 1/1. */
static tjscalingfactor choose_scale(const fm_decoder *d, int w, int h)
{
    tjscalingfactor one = {1, 1};
    int target = d->opts.target_side;
    if (target <= 0)
        return one;
    int long_side = w > h ? w : h;
    static const int denoms[] = {8, 4, 2};
    for (size_t i = 0; i < sizeof denoms / sizeof denoms[0]; i++) {
        tjscalingfactor sf = {1, denoms[i]};
        int offered = 0;
        for (int j = 0; j < d->nfactors; j++)
            if (d->factors[j].num == sf.num && d->factors[j].denom == sf.denom)
                offered = 1;
        if (offered && TJSCALED(long_side, sf) >= target)
            return sf;
    }
    return one;
}

/* ---- library messages ----------------------------------------------------------- */

/* The room for one library message: what fits in an fm_error after a path and a
 * prefix such as "corrupt TIFF: ". */
#define TEXT_MAX 320

/* s (a message from libtiff, libheif, libspng, libwebp or TurboJPEG) as one line in
 * buf, cap bytes: error texts go into database rows and CSV cells, where a line break
 * or a tab would split the record (libtiff writes some messages over three lines).
 * Each run of control characters, with the blanks next to it, becomes one space, and
 * blanks at either end go; other text is kept as it is. Returns buf. */
static const char *one_line(const char *s, char *buf, size_t cap)
{
    size_t n = 0;
    while (s && *s && n + 1 < cap) {
        size_t run = 0;
        int ctl = 0;
        while (s[run] && ((unsigned char)s[run] <= ' ' || s[run] == 0x7f)) {
            ctl |= s[run] != ' ';
            run++;
        }
        if (run == 0) {
            buf[n++] = *s++;
            continue;
        }
        if (n > 0 && s[run]) { /* not at either end */
            const size_t keep = ctl ? 1 : run;
            for (size_t k = 0; k < keep && n + 1 < cap; k++)
                buf[n++] = ' ';
        }
        s += run;
    }
    if (cap)
        buf[n] = '\0';
    return buf;
}

/* libjpeg's message for the last failure on tj, as one line in buf. */
static const char *tj_text(tjhandle tj, char *buf, size_t cap)
{
    one_line(tjGetErrorStr2(tj), buf, cap);
    return buf[0] ? buf : "unknown libjpeg error";
}

/* Replaces the TurboJPEG handle after a failure. TurboJPEG 2.1 does not reset the
 * libjpeg state when jpeg_read_header fails part-way (a file cut inside a marker
 * segment): the handle then fails every later image ("Bogus DQT index 15"). A new
 * handle costs one small allocation, on error paths only. If it cannot be made,
 * the next fm_decode tries again. */
static void reset_handle(fm_decoder *d)
{
    if (d->tj)
        tjDestroy(d->tj);
    d->tj = tjInitDecompress();
}

/* Records a TurboJPEG failure as FM_ERR_DECODE with libjpeg's text, then resets. */
static fm_status tj_fail(fm_decoder *d, const char *text, fm_error *err)
{
    fm_status st = fm_error_set(err, FM_ERR_DECODE, "corrupt JPEG: %s", text);
    reset_handle(d);
    return st;
}

/* Warnings that leave the pixels complete (see the policy in image.h). */
static int warning_is_harmless(const char *text)
{
    return strstr(text, "extraneous bytes before marker 0xd9") != NULL;
}

/* ---- decoder -------------------------------------------------------------------- */

fm_status fm_decoder_new(fm_decoder **out, const fm_decode_opts *opts, fm_error *err)
{
    fm_status st = FM_OK;
    fm_decoder *d = NULL;
    if (!out)
        return fm_error_set(err, FM_ERR_INVALID, "fm_decoder_new: out is NULL");
    *out = NULL;
    fm_decode_opts o = {0};
    if (opts)
        o = *opts;
    if (o.target_side < 0)
        return fm_error_set(err, FM_ERR_INVALID, "decoder: target_side %d is negative",
                            o.target_side);
    if (o.max_pixels == 0)
        o.max_pixels = FM_DECODE_DEFAULT_MAX_PIXELS;
    if (o.max_bytes == 0)
        o.max_bytes = FM_DECODE_DEFAULT_MAX_BYTES;
    if (o.max_bytes == SIZE_MAX)
        o.max_bytes = SIZE_MAX - 1; /* fm_decode_file reads one byte past the limit */
    if (o.formats == 0)
        o.formats = FM_FORMAT_ALL;

    d = calloc(1, sizeof *d);
    if (!d) {
        st = fm_error_set(err, FM_ERR_NOMEM, "decoder: out of memory");
        goto fail;
    }
    d->opts = o;
    d->tj = tjInitDecompress();
    if (!d->tj) {
        char t[TEXT_MAX];
        st = fm_error_set(err, FM_ERR_INTERNAL, "decoder: TurboJPEG init failed: %s",
                          tj_text(NULL, t, sizeof t));
        goto fail;
    }
    d->factors = tjGetScalingFactors(&d->nfactors);
    if (!d->factors || d->nfactors <= 0) {
        st = fm_error_set(err, FM_ERR_INTERNAL, "decoder: TurboJPEG has no scaling factors");
        goto fail;
    }
    *out = d;
    return FM_OK;

fail:
    fm_decoder_destroy(&d);
    return st;
}

void fm_decoder_destroy(fm_decoder **pd)
{
    if (!pd || !*pd)
        return;
    fm_decoder *d = *pd;
    if (d->tj)
        tjDestroy(d->tj);
    free(d->out);
    free(d->tmp);
    free(d->in);
    free(d);
    *pd = NULL;
}

void fm_decoder_get_stats(const fm_decoder *d, fm_decoder_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!d)
        return;
    *out = d->stats;
    out->buffer_bytes = d->out_cap + d->tmp_cap + d->in_cap;
}

/* ---- shared by the formats ------------------------------------------------------- */

/* The pixel limit, from a header's size, before anything is allocated. JPEG's sizes
 * are at most 65535 by format; PNG's may be up to 2^31 - 1, and the rest of the
 * worker counts a side in an int and a row of 3 bytes a pixel in an int too, so the
 * same 65535 bounds every format's side. */
#define MAX_SIDE 65535
static fm_status check_size(const fm_decoder *d, uint64_t w, uint64_t h, fm_error *err)
{
    uint64_t pixels = w * h; /* both < 2^32 */
    if (pixels > d->opts.max_pixels)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "image is %llux%llu = %llu pixels, over the limit of %llu pixels "
                            "(max_pixels)",
                            (unsigned long long)w, (unsigned long long)h,
                            (unsigned long long)pixels,
                            (unsigned long long)d->opts.max_pixels);
    if (w > MAX_SIDE || h > MAX_SIDE)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "image is %llux%llu, over the largest side of %d pixels",
                            (unsigned long long)w, (unsigned long long)h, MAX_SIDE);
    return FM_OK;
}

/* The buffer a w x h RGB decode writes into: d->out when the pixels stay as they
 * are (orientation 1), else d->tmp, which finish() turns into d->out. */
static fm_status decode_target(fm_decoder *d, int w, int h, int bpp, int orient,
                               uint8_t **target, fm_error *err)
{
    const size_t npix = (size_t)w * (size_t)h; /* sides <= 65535 */
    fm_status st;
    if (npix > SIZE_MAX / 4)
        return fm_error_set(err, FM_ERR_LIMIT, "image is %dx%d, too large for this system",
                            w, h);
    if (orient == 1) {
        st = buf_reserve(d, &d->out, &d->out_cap, npix * (size_t)bpp, 0, err);
        *target = d->out;
        return st;
    }
    st = buf_reserve(d, &d->tmp, &d->tmp_cap, npix * (size_t)bpp, 0, err);
    if (!st)
        st = buf_reserve(d, &d->out, &d->out_cap, npix * 3, 0, err);
    *target = d->tmp;
    return st;
}

/* Turns the sw x sh pixels decode_target gave upright and describes them in out: w x h
 * is the full size in the file, sf the scale decoded at. */
static void finish(fm_decoder *d, int w, int h, int sw, int sh, tjscalingfactor sf,
                   int orient, fm_image *out)
{
    if (orient != 1)
        apply_orientation(d->tmp, sw, sh, d->out, orient);
    int swap = orient >= 5;
    out->w = swap ? sh : sw;
    out->h = swap ? sw : sh;
    out->stride = (size_t)out->w * 3;
    out->data = d->out;
    out->orig_w = swap ? h : w;
    out->orig_h = swap ? w : h;
    out->scale_num = sf.num;
    out->scale_denom = sf.denom;
    out->orientation = orient;
}

/* The orientation in an EXIF block from a PNG eXIf or a WebP EXIF chunk: a TIFF
 * structure, which some writers put behind JPEG's "Exif\0\0". */
static int exif_block_orientation(const uint8_t *t, size_t n)
{
    if (n >= 6 && memcmp(t, "Exif\0\0", 6) == 0) {
        t += 6;
        n -= 6;
    }
    return exif_orientation(t, n);
}

/* ---- PNG ------------------------------------------------------------------------ */

/* The orientation in a PNG's eXIf chunk before the image data, or 1. libspng takes
 * only a bare TIFF structure there (II or MM first) and drops a chunk with JPEG's
 * "Exif\0\0" in front, which some writers put there, and the photo would be analysed
 * sideways; so the chunks are walked here, as for WebP: after the signature, length
 * (big-endian), type, data and CRC, up to the first IDAT or IEND. */
static int png_orientation(const uint8_t *b, size_t n)
{
    size_t p = 8;
    while (n >= p && n - p >= 12) {
        const uint32_t size = rd32(b + p, 1);
        const uint8_t *type = b + p + 4;
        if (size > n - p - 12 || memcmp(type, "IDAT", 4) == 0 ||
            memcmp(type, "IEND", 4) == 0)
            return 1;
        if (memcmp(type, "eXIf", 4) == 0)
            return exif_block_orientation(b + p + 8, size);
        p += 12 + (size_t)size;
    }
    return 1;
}

/* Every colour type and bit depth comes out as 8-bit RGB (libspng's SPNG_FMT_RGB8:
 * palettes expanded, gray copied to R, G and B, 16 bits to their high byte, alpha and
 * tRNS dropped; gamma and ICC profiles are not applied, as for JPEG). Interlaced
 * files are deinterlaced. An eXIf chunk before the image data sets the orientation.
 * Any error, including data cut short, fails the image: no partial pixels. */
static fm_status decode_png(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                            fm_error *err)
{
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx)
        return fm_error_set(err, FM_ERR_NOMEM, "decoder: cannot allocate a PNG context");
    fm_status st = FM_OK;
    /* No chunk is taken larger than the file itself, so a forged length costs nothing. */
    int r = spng_set_chunk_limits(ctx, len, len);
    if (!r)
        r = spng_set_png_buffer(ctx, buf, len);
    struct spng_ihdr ih;
    if (!r)
        r = spng_get_ihdr(ctx, &ih);
    char t[TEXT_MAX];
    if (r) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt PNG: %s",
                          one_line(spng_strerror(r), t, sizeof t));
        goto done;
    }
    st = check_size(d, ih.width, ih.height, err);
    if (st)
        goto done;
    const int orient = png_orientation(buf, len);
    size_t size = 0;
    r = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size);
    const int w = (int)ih.width, h = (int)ih.height;
    if (r || size != (size_t)w * (size_t)h * 3) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt PNG: %s",
                          r ? one_line(spng_strerror(r), t, sizeof t)
                            : "unexpected decoded size");
        goto done;
    }
    uint8_t *target;
    st = decode_target(d, w, h, 3, orient, &target, err);
    if (st)
        goto done;
    r = spng_decode_image(ctx, target, size, SPNG_FMT_RGB8, 0);
    if (r) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt PNG: %s",
                          one_line(spng_strerror(r), t, sizeof t));
        goto done;
    }
    finish(d, w, h, w, h, (tjscalingfactor){1, 1}, orient, out);
done:
    spng_ctx_free(ctx);
    return st;
}

/* ---- WebP ----------------------------------------------------------------------- */

/* The orientation in the EXIF chunk of an extended (VP8X) WebP file, or 1. Walks the
 * RIFF chunks after "RIFF" size "WEBP": fourcc, little-endian size, data padded to
 * an even length. */
static int webp_orientation(const uint8_t *b, size_t n)
{
    size_t p = 12;
    if (n < 12)
        return 1;
    const uint32_t riff = rd32(b + 4, 0); /* little-endian: the bytes after the first 8 */
    if ((uint64_t)riff + 8 < n)
        n = (size_t)riff + 8;
    while (n - p >= 8) {
        const uint8_t *c = b + p;
        const uint32_t size = rd32(c + 4, 0);
        if (size > n - p - 8)
            return 1;
        if (memcmp(c, "EXIF", 4) == 0)
            return exif_block_orientation(c + 8, size);
        p += 8 + (size_t)size + (size & 1);
        if (p > n)
            return 1;
    }
    return 1;
}

/* The names of libwebp's failures. */
static const char *webp_status_name(VP8StatusCode s)
{
    switch (s) {
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "not enough data (file cut short?)";
    default: return "unknown error";
    }
}

/* libwebp's failure as one line in buf, for the error text. */
static const char *webp_status_text(VP8StatusCode s, char *buf, size_t cap)
{
    return one_line(webp_status_name(s), buf, cap);
}

/* Lossy and lossless, with or without alpha (dropped), as 8-bit RGB. An animated file
 * is refused (which frame would be the photo?). An EXIF chunk sets the orientation. */
static fm_status decode_webp(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                             fm_error *err)
{
    WebPDecoderConfig cfg;
    char t[TEXT_MAX];
    if (!WebPInitDecoderConfig(&cfg))
        return fm_error_set(err, FM_ERR_INTERNAL, "decoder: libwebp version mismatch");
    VP8StatusCode s = WebPGetFeatures(buf, len, &cfg.input);
    if (s != VP8_STATUS_OK)
        return fm_error_set(err, FM_ERR_DECODE, "corrupt WebP: %s",
                            webp_status_text(s, t, sizeof t));
    if (cfg.input.has_animation)
        return fm_error_set(err, FM_ERR_UNSUPPORTED, "unsupported format: animated WebP");
    const int w = cfg.input.width, h = cfg.input.height;
    if (w <= 0 || h <= 0)
        return fm_error_set(err, FM_ERR_DECODE, "corrupt WebP: size %dx%d", w, h);
    fm_status st = check_size(d, (uint64_t)w, (uint64_t)h, err);
    if (st)
        return st;
    const int orient = webp_orientation(buf, len);
    uint8_t *target;
    st = decode_target(d, w, h, 3, orient, &target, err);
    if (st)
        return st;
    cfg.output.colorspace = MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = target;
    cfg.output.u.RGBA.stride = w * 3;
    cfg.output.u.RGBA.size = (size_t)w * (size_t)h * 3;
    s = WebPDecode(buf, len, &cfg);
    WebPFreeDecBuffer(&cfg.output); /* external memory: frees nothing of ours */
    if (s != VP8_STATUS_OK)
        return fm_error_set(err, FM_ERR_DECODE, "corrupt WebP: %s",
                            webp_status_text(s, t, sizeof t));
    finish(d, w, h, w, h, (tjscalingfactor){1, 1}, orient, out);
    return FM_OK;
}

/* ---- HEIC and AVIF -------------------------------------------------------------- */

/* The box of type t among the ISO base media boxes in [p, end): its start, and in
 * *body and *bend its contents (after the header; a full box's version and flags
 * included). A size of 1 reads the 64-bit size, 0 runs to end. NULL when absent or
 * when a size does not fit. */
static const uint8_t *isobmff_box(const uint8_t *p, const uint8_t *end, const char *t,
                                  const uint8_t **body, const uint8_t **bend)
{
    while (end - p >= 8) {
        uint64_t size = rd32(p, 1);
        size_t head = 8;
        if (size == 1) {
            if (end - p < 16)
                return NULL;
            size = (uint64_t)rd32(p + 8, 1) << 32 | rd32(p + 12, 1);
            head = 16;
        } else if (size == 0) {
            size = (uint64_t)(end - p);
        }
        if (size < head || size > (uint64_t)(end - p))
            return NULL;
        if (memcmp(p + 4, t, 4) == 0) {
            *body = p + head;
            *bend = p + size;
            return p;
        }
        p += size;
    }
    return NULL;
}

/* An unsigned big-endian field of n bytes (0..8) at p. */
static uint64_t rd_be_n(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The first bytes (at most want) of item id's data: the first extent that iloc gives
 * it, in the file (construction method 0) or in idat (1). NULL when iloc says
 * nothing usable; *got gets how many bytes there are. */
static const uint8_t *heif_item_data(const uint8_t *b, size_t n, const uint8_t *m,
                                     const uint8_t *mend, uint32_t id, size_t *got)
{
    const uint8_t *x, *xend, *idat = NULL, *idat_end = NULL;
    if (!isobmff_box(m, mend, "iloc", &x, &xend) || xend - x < 8)
        return NULL;
    isobmff_box(m, mend, "idat", &idat, &idat_end);
    const int v = x[0];
    const int off_sz = x[4] >> 4, len_sz = x[4] & 15, base_sz = x[5] >> 4;
    const int idx_sz = v >= 1 ? (x[5] & 15) : 0;
    if (v > 2 || off_sz > 8 || len_sz > 8 || base_sz > 8 || idx_sz > 8)
        return NULL;
    const int id_sz = v < 2 ? 2 : 4;
    const uint8_t *r = x + 6;
    if (xend - r < id_sz)
        return NULL;
    uint64_t items = rd_be_n(r, id_sz);
    r += id_sz;
    for (uint64_t i = 0; i < items; i++) {
        const ptrdiff_t fixed = id_sz + (v >= 1 ? 2 : 0) + 2 + base_sz + 2;
        if (xend - r < fixed)
            return NULL;
        const uint64_t item = rd_be_n(r, id_sz);
        r += id_sz;
        int method = 0;
        if (v >= 1) {
            method = r[1] & 15;
            r += 2;
        }
        r += 2; /* data reference index */
        const uint64_t base = rd_be_n(r, base_sz);
        r += base_sz;
        const uint64_t extents = rd_be_n(r, 2);
        r += 2;
        const ptrdiff_t each = idx_sz + off_sz + len_sz;
        if ((uint64_t)(xend - r) < extents * (uint64_t)each)
            return NULL;
        if (item == id && extents >= 1) {
            const uint64_t off = base + rd_be_n(r + idx_sz, off_sz);
            const uint8_t *start = method == 0 ? b : method == 1 ? idat : NULL;
            const uint8_t *stop = method == 0 ? b + n : idat_end;
            if (!start || off >= (uint64_t)(stop - start))
                return NULL;
            *got = (size_t)(stop - start - (ptrdiff_t)off);
            return start + off;
        }
        r += extents * (uint64_t)each;
    }
    return NULL;
}

/* The first tile of grid item id: the first item its 'dimg' reference in iref names,
 * or 0 (no item has id 0). */
static uint32_t heif_first_tile(const uint8_t *m, const uint8_t *mend, uint32_t id)
{
    const uint8_t *x, *xend, *body, *bend;
    if (!isobmff_box(m, mend, "iref", &x, &xend) || xend - x < 4)
        return 0;
    const ptrdiff_t idn = x[0] == 0 ? 2 : 4; /* item ids of 16 bits in version 0 */
    const uint8_t *r = x + 4;
    while (r < xend && isobmff_box(r, xend, "dimg", &body, &bend)) {
        r = bend;
        if (bend - body < idn + 2 + idn)
            continue;
        const uint32_t from = idn == 2 ? rd16(body, 1) : rd32(body, 1);
        const uint8_t *to = body + idn + 2; /* after the reference count */
        if (from == id && rd16(body + idn, 1) >= 1)
            return idn == 2 ? rd16(to, 1) : rd32(to, 1);
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* 1 when a 'dimg' reference names, among the images a derived image is made of, an
 * item that is itself made of others (a grid of grids); 0 when not or when iref does
 * not read; -1 when out of memory. Every item with 'dimg' references is a derived
 * image, so the check is that no reference's target is any reference's source. */
static int heif_nested_grids(const uint8_t *m, const uint8_t *mend)
{
    const uint8_t *x, *xend, *body, *bend;
    if (!isobmff_box(m, mend, "iref", &x, &xend) || xend - x < 4)
        return 0;
    const ptrdiff_t idn = x[0] == 0 ? 2 : 4; /* item ids of 16 bits in version 0 */
    size_t n = 0, cap = 0;
    uint32_t *from = NULL;
    for (const uint8_t *r = x + 4; r < xend && isobmff_box(r, xend, "dimg", &body, &bend);
         r = bend) {
        if (bend - body < idn)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            uint32_t *v = realloc(from, cap * sizeof *v);
            if (!v) {
                free(from);
                return -1;
            }
            from = v;
        }
        from[n++] = idn == 2 ? rd16(body, 1) : rd32(body, 1);
    }
    int nested = 0;
    if (n)
        qsort(from, n, sizeof *from, cmp_u32);
    for (const uint8_t *r = x + 4;
         n && !nested && r < xend && isobmff_box(r, xend, "dimg", &body, &bend); r = bend) {
        if (bend - body < idn + 2)
            continue;
        const uint32_t count = rd16(body + idn, 1);
        const uint8_t *to = body + idn + 2;
        for (uint32_t k = 0; k < count && bend - to >= idn && !nested; k++, to += idn) {
            const uint32_t t = idn == 2 ? rd16(to, 1) : rd32(to, 1);
            nested = bsearch(&t, from, n, sizeof *from, cmp_u32) != NULL;
        }
    }
    free(from);
    return nested;
}

/* Checks the items of a HEIF file before libheif decodes it: the primary image (pitm)
 * must be a coded image (hvc1, av01) or a grid, no item may be a derived image of
 * another kind (an overlay, iovl; an identity transform, iden), and a grid's tiles may
 * not be grids, so every grid is made of coded images. libheif 1.15 has no limits of
 * its own on derived images: a 3 KB file whose grid had an overlay for a tile (the
 * fuzzer's) made it allocate gigabytes. More grids than the primary are allowed, as
 * files hold them (libheif's own encoder writes an image with alpha as a grid and an
 * alpha grid beside it; phones store gain maps beside the photo). The largest output
 * size of any grid goes to grid[0], grid[1] (left as they are when none can be read),
 * for the pixel limit: libheif checks a side against its limit but not the area, and
 * decodes an alpha grid with the primary. Returns 0 when the file passes or its boxes are missing or malformed
 * (libheif then says what is wrong), else -1 with the offending item's type in type
 * and its role in *what. The coding is told by the coded items, not by the brands in
 * ftyp (one word anyone can change): *held gets FM_FORMAT_HEIC for each HEVC item
 * (hvc1) and FM_FORMAT_AVIF for each AV1 item (av01) the file holds, *primary_kind
 * the same for the primary image or a grid's first tile (0 when not known). */
static int heif_items_check(const uint8_t *b, size_t n, char type[5], const char **what,
                            uint64_t grid[2], unsigned *held, unsigned *primary_kind)
{
    const uint8_t *m, *mend, *x, *xend;
    *held = *primary_kind = 0;
    if (!isobmff_box(b, b + n, "meta", &m, &mend) || mend - m < 4)
        return 0;
    m += 4; /* version, flags */
    if (!isobmff_box(m, mend, "pitm", &x, &xend) || xend - x < 6)
        return 0;
    const uint32_t primary = x[0] == 0 ? rd16(x + 4, 1) : xend - x >= 8 ? rd32(x + 4, 1) : 0;
    const uint32_t tile = heif_first_tile(m, mend, primary);
    if (!isobmff_box(m, mend, "iinf", &x, &xend) || xend - x < 6)
        return 0;
    const uint8_t *e = x + (x[0] == 0 ? 6 : 8); /* after the entry count */
    const uint8_t *body, *bend;
    while (e < xend && isobmff_box(e, xend, "infe", &body, &bend)) {
        e = bend;
        if (bend - body < 12 || body[0] < 2) /* versions 2, 3: id, protection, type */
            continue;
        const int wide = body[0] >= 3;
        const uint32_t id = wide ? rd32(body + 4, 1) : rd16(body + 4, 1);
        const uint8_t *ty = body + (wide ? 10 : 8);
        if (bend - ty < 4)
            continue;
        memcpy(type, ty, 4);
        type[4] = '\0';
        const unsigned kind = !strcmp(type, "hvc1")   ? FM_FORMAT_HEIC
                              : !strcmp(type, "av01") ? FM_FORMAT_AVIF
                                                      : 0;
        const int coded = kind != 0;
        *held |= kind;
        if (coded && (id == primary || id == tile))
            *primary_kind = kind;
        if (id == primary && !coded && strcmp(type, "grid") != 0) {
            *what = "the primary image is";
            return -1;
        }
        if (!strcmp(type, "grid")) { /* its output size, for the limits */
            size_t got = 0;
            const uint8_t *g = heif_item_data(b, n, m, mend, id, &got);
            const size_t need = g && got >= 2 && (g[1] & 1) ? 12 : 8;
            if (g && got >= need) {
                const uint64_t gw = need == 12 ? rd32(g + 4, 1) : rd16(g + 4, 1);
                const uint64_t gh = need == 12 ? rd32(g + 8, 1) : rd16(g + 6, 1);
                if (gw * gh >= grid[0] * grid[1]) {
                    grid[0] = gw;
                    grid[1] = gh;
                }
            }
        }
        if (!strcmp(type, "iovl") || !strcmp(type, "iden")) {
            *what = "the file holds";
            return -1;
        }
    }
    const int nested = heif_nested_grids(m, mend);
    if (nested) { /* out of memory (-1) refuses too: the file is not checked */
        memcpy(type, "grid", 5);
        *what = nested > 0 ? "a grid holds" : "out of memory checking";
        return -1;
    }
    return 0;
}

/* libheif's id of its aom AV1 decoder when it has one, else NULL (its default). AVIF
 * goes to aom rather than dav1d, libheif's first choice: aom decodes on the calling
 * thread (dav1d starts threads of its own, one worker process being one core's work),
 * and libheif 1.15 with dav1d leaks a small block on some malformed files. */
static const char *av1_decoder_id(void)
{
    const struct heif_decoder_descriptor *ds[16];
    const int n = heif_get_decoder_descriptors(heif_compression_AV1, ds, 16);
    for (int i = 0; i < n && i < 16; i++) {
        const char *id = heif_decoder_descriptor_get_id_name(ds[i]);
        if (id && strcmp(id, "aom") == 0)
            return "aom";
    }
    return NULL;
}

/* The primary image of a HEIF file (HEVC: HEIC, as phones write them; AV1: AVIF),
 * through libheif, as 8-bit RGB: grids of tiles put together, the file's own rotation,
 * mirroring and crop applied (irot, imir, clap: how HEIF stores a portrait photo, so
 * the pixels come out upright and orientation stays 1), HDR narrowed to 8 bits, alpha
 * dropped. Strict decoding: a file libheif can only partly decode fails. Tiles are
 * decoded on this thread (a worker process is one core's work). A primary image that
 * is neither coded nor a grid (an overlay, ...) is refused before libheif sees it. */
static fm_status decode_heif(fm_decoder *d, const char *name, const uint8_t *buf, size_t len,
                             fm_image *out, fm_error *err)
{
    if (len > INT_MAX)
        return fm_error_set(err, FM_ERR_LIMIT, "input is %zu bytes, too large for libheif",
                            len);
    /* Only a coded image (HEVC, AV1) or a grid of them, as cameras and phones write
     * (heif_items_check) */
    char type[5];
    const char *what = "";
    uint64_t grid[2] = {0, 0};
    unsigned held = 0, primary = 0;
    const int refused = heif_items_check(buf, len, type, &what, grid, &held, &primary);
    if (primary) /* named by its coding, whatever the brand says */
        name = primary == FM_FORMAT_AVIF ? "AVIF" : "HEIC";
    if (refused) {
        for (int i = 0; i < 4; i++)
            if (type[i] < 0x20 || type[i] > 0x7e)
                type[i] = '?';
        return fm_error_set(err, FM_ERR_UNSUPPORTED, "unsupported %s: %s an item of type '%s'",
                            name, what, type);
    }
    /* decode.formats by the coded items, so that HEVC data reaches libde265 only with
     * HEIC enabled and AV1 data libheif's AV1 decoder only with AVIF, however the file
     * is branded; a file whose items do not read goes by its brand */
    if (!held)
        held = strcmp(name, "AVIF") == 0 ? FM_FORMAT_AVIF : FM_FORMAT_HEIC;
    if (held & ~d->opts.formats)
        return fm_error_set(err, FM_ERR_UNSUPPORTED,
                            "format not enabled (decode.formats): %s",
                            held & FM_FORMAT_HEIC & ~d->opts.formats ? "HEIC" : "AVIF");
    if (grid[0] || grid[1]) {
        fm_status gs = check_size(d, grid[0], grid[1], err);
        if (gs)
            return gs;
    }
    struct heif_context *ctx = heif_context_alloc();
    if (!ctx)
        return fm_error_set(err, FM_ERR_NOMEM, "decoder: cannot allocate a HEIF context");
    struct heif_image_handle *h = NULL;
    struct heif_image *img = NULL;
    struct heif_decoding_options *opts = NULL;
    fm_status st = FM_OK;
    heif_context_set_maximum_image_size_limit(ctx, MAX_SIDE);
    heif_context_set_max_decoding_threads(ctx, 0);
    struct heif_error he = heif_context_read_from_memory_without_copy(ctx, buf, len, NULL);
    if (he.code == heif_error_Ok)
        he = heif_context_get_primary_image_handle(ctx, &h);
    if (he.code != heif_error_Ok)
        goto heif_fail;
    st = check_size(d, (uint64_t)heif_image_handle_get_width(h),
                    (uint64_t)heif_image_handle_get_height(h), err);
    if (st)
        goto done;
    opts = heif_decoding_options_alloc();
    if (!opts) {
        st = fm_error_set(err, FM_ERR_NOMEM, "decoder: cannot allocate HEIF options");
        goto done;
    }
    opts->ignore_transformations = 0;
    if (opts->version >= 2)
        opts->convert_hdr_to_8bit = 1;
    if (opts->version >= 3)
        opts->strict_decoding = 1;
    if (opts->version >= 4 && (primary ? primary : held) == FM_FORMAT_AVIF)
        opts->decoder_id = av1_decoder_id(); /* AV1 data, whatever the brand */
    he = heif_decode_image(h, &img, heif_colorspace_RGB, heif_chroma_interleaved_RGB, opts);
    if (he.code != heif_error_Ok)
        goto heif_fail;
    const int w = heif_image_get_width(img, heif_channel_interleaved);
    const int hh = heif_image_get_height(img, heif_channel_interleaved);
    int stride = 0;
    const uint8_t *p = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
    if (!p || w <= 0 || hh <= 0 || stride < w * 3 ||
        heif_image_get_bits_per_pixel_range(img, heif_channel_interleaved) != 8) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt %s: no 8-bit RGB image decoded", name);
        goto done;
    }
    st = check_size(d, (uint64_t)w, (uint64_t)hh, err);
    if (st)
        goto done;
    uint8_t *target;
    st = decode_target(d, w, hh, 3, 1, &target, err);
    if (st)
        goto done;
    for (int y = 0; y < hh; y++)
        memcpy(target + (size_t)y * (size_t)w * 3, p + (size_t)y * (size_t)stride,
               (size_t)w * 3);
    finish(d, w, hh, w, hh, (tjscalingfactor){1, 1}, 1, out);
    goto done;
heif_fail: {
    /* libheif's text, without the line break some of its messages end in */
    char t[TEXT_MAX];
    one_line(he.message, t, sizeof t);
    st = fm_error_set(err, FM_ERR_DECODE, "corrupt %s: %s", name,
                      t[0] ? t : "libheif error");
}
done:
    heif_image_release(img);
    heif_decoding_options_free(opts);
    heif_image_handle_release(h);
    heif_context_free(ctx);
    return st;
}

static fm_status decode_heic(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                             fm_error *err)
{
    return decode_heif(d, "HEIC", buf, len, out, err);
}

static fm_status decode_avif(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                             fm_error *err)
{
    return decode_heif(d, "AVIF", buf, len, out, err);
}

/* ---- TIFF ----------------------------------------------------------------------- */

/* The bytes libtiff reads, as a file. */
typedef struct tiff_src {
    const uint8_t *p;
    size_t n, pos;
    char msg[TEXT_MAX]; /* libtiff's first error message, one line */
    int errors;
    int pixels; /* reading the image data: a warning now means damaged data */
} tiff_src;

static tmsize_t tiff_read(thandle_t h, void *buf, tmsize_t size)
{
    tiff_src *s = h;
    if (size <= 0 || s->pos >= s->n)
        return 0;
    size_t k = s->n - s->pos < (size_t)size ? s->n - s->pos : (size_t)size;
    memcpy(buf, s->p + s->pos, k);
    s->pos += k;
    return (tmsize_t)k;
}

static tmsize_t tiff_write(thandle_t h, void *buf, tmsize_t size)
{
    (void)h, (void)buf, (void)size;
    return -1;
}

static toff_t tiff_seek(thandle_t h, toff_t off, int whence)
{
    tiff_src *s = h;
    uint64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? s->pos : s->n;
    if (off > UINT64_MAX - base)
        return (toff_t)-1;
    s->pos = base + off > s->n ? s->n : (size_t)(base + off);
    return (toff_t)(base + off);
}

static int tiff_close(thandle_t h)
{
    (void)h;
    return 0;
}

static toff_t tiff_size(thandle_t h)
{
    return ((tiff_src *)h)->n;
}

/* The bytes as a mapped file: libtiff reads them in place (it never writes to a file
 * opened for reading). Also needed: libtiff 4.5.0 refuses uncompressed tiles read
 * through the read procedure ("Invalid tile byte count").  */
static int tiff_map(thandle_t h, void **base, toff_t *size)
{
    tiff_src *s = h;
    *base = (void *)(uintptr_t)s->p;
    *size = s->n;
    return 1;
}

static void tiff_unmap(thandle_t h, void *base, toff_t size)
{
    (void)h, (void)base, (void)size;
}

/* libtiff's messages go to the image's error text, never to stderr. */
static int tiff_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
{
    (void)tif, (void)module;
    tiff_src *s = user;
    if (s->errors++ == 0) {
        char text[FM_ERROR_MSG_MAX];
        vsnprintf(text, sizeof text, fmt, ap);
        one_line(text, s->msg, sizeof s->msg);
    }
    return 1;
}

/* Warnings while reading image data that leave the pixels complete: libjpeg's one
 * (as for JPEG files); LZW data in the pre-1990 bit order, which libtiff reads in its
 * compatibility mode; a JPEG strip coded taller than the rows left in the image (the
 * last strip at full height), of which libtiff takes the rows it needs. */
static int tiff_warning_is_harmless(const char *text)
{
    return warning_is_harmless(text) || strstr(text, "Old-style LZW codes") != NULL ||
           strstr(text, "JPEG strip size exceeds expected dimensions") != NULL;
}

/* A warning while libtiff reads the directory is about a tag it has worked around (an
 * unknown tag, an ASCII value without its NUL, a byte count it computed itself) and
 * the pixels are still right, so it is ignored. A warning while it reads the image
 * data is, but for the few above, a codec's complaint about that data: libjpeg's
 * "Premature end of JPEG file" (the rest of the strip gray), PackBits' "Discarding N
 * bytes" (runs lost); the pixels are wrong, so it fails the image as an error does. */
static int tiff_warning(TIFF *tif, void *user, const char *module, const char *fmt,
                        va_list ap)
{
    (void)tif, (void)module;
    tiff_src *s = user;
    if (!s->pixels)
        return 1;
    char text[FM_ERROR_MSG_MAX];
    vsnprintf(text, sizeof text, fmt, ap);
    if (tiff_warning_is_harmless(text))
        return 1;
    if (s->errors++ == 0)
        one_line(text, s->msg, sizeof s->msg);
    return 1;
}

/* Has TIFFRGBAImage keep the colours an alpha channel comes with. It multiplies
 * unassociated alpha into them (a pixel of alpha 0 turns black), while the decoder
 * drops alpha and keeps the colour as stored. Marked unspecified, the extra sample is
 * read as associated alpha, whose colours it copies unchanged (contiguous and
 * separate planes, 8 and 16 bits). Associated alpha is left as it is. 0, or -1 when
 * out of memory. */
static int tiff_keep_colours(TIFF *tif)
{
    uint16_t count = 0, *info = NULL;
    if (!TIFFGetField(tif, TIFFTAG_EXTRASAMPLES, &count, &info) || count == 0 || !info ||
        info[0] != EXTRASAMPLE_UNASSALPHA)
        return 0;
    /* a copy: setting the tag frees the array info points into */
    uint16_t *copy = malloc(count * sizeof *copy);
    if (!copy)
        return -1;
    memcpy(copy, info, count * sizeof *copy);
    copy[0] = EXTRASAMPLE_UNSPECIFIED;
    TIFFSetField(tif, TIFFTAG_EXTRASAMPLES, count, copy);
    free(copy);
    return 0;
}

/* The first page of a TIFF (scanners' and archives' format) through libtiff's RGBA
 * interface: 1 to 16 bits, gray, palette, RGB, CMYK, YCbCr, any compression libtiff
 * has (LZW, Deflate, JPEG, PackBits, ...), strips or tiles; alpha dropped. The pixels
 * are read in file order and turned by the Orientation tag (the values EXIF took from
 * TIFF) as for JPEG. A read error anywhere, or a warning about the image data, fails
 * the image. */
static fm_status decode_tiff(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                             fm_error *err)
{
    tiff_src src = {buf, len, 0, "", 0, 0};
    TIFFOpenOptions *o = TIFFOpenOptionsAlloc();
    if (!o)
        return fm_error_set(err, FM_ERR_NOMEM, "decoder: cannot allocate TIFF options");
    TIFFOpenOptionsSetErrorHandlerExtR(o, tiff_error, &src);
    TIFFOpenOptionsSetWarningHandlerExtR(o, tiff_warning, &src);
    /* libtiff's own buffers (a strip, a tile, its tables) stay within what max_pixels
     * allows an image of 16-bit RGBA, plus room for the tables */
    const uint64_t mp = d->opts.max_pixels;
    const uint64_t cap = mp > (UINT64_MAX >> 4) ? UINT64_MAX : mp * 8 + (16u << 20);
    TIFFOpenOptionsSetMaxSingleMemAlloc(o, cap > INT64_MAX ? INT64_MAX : (tmsize_t)cap);
    TIFF *tif = TIFFClientOpenExt("image", "r", &src, tiff_read, tiff_write, tiff_seek,
                                  tiff_close, tiff_size, tiff_map, tiff_unmap, o);
    TIFFOpenOptionsFree(o);
    fm_status st = FM_OK;
    TIFFRGBAImage ri;
    int begun = 0;
    char emsg[1024] = "";
    if (!tif) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt TIFF: %s",
                          src.msg[0] ? src.msg : "cannot read the header");
        goto done;
    }
    uint32_t w = 0, h = 0;
    if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) ||
        !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h) || w == 0 || h == 0) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt TIFF: no image size");
        goto done;
    }
    st = check_size(d, w, h, err);
    if (st)
        goto done;
    char t[TEXT_MAX];
    if (!TIFFRGBAImageOK(tif, emsg)) {
        st = src.errors ? fm_error_set(err, FM_ERR_DECODE, "corrupt TIFF: %s", src.msg)
                        : fm_error_set(err, FM_ERR_UNSUPPORTED, "unsupported TIFF: %s",
                                       one_line(emsg, t, sizeof t));
        goto done;
    }
    if (tiff_keep_colours(tif) != 0) {
        st = fm_error_set(err, FM_ERR_NOMEM, "decoder: cannot allocate TIFF extra samples");
        goto done;
    }
    if (!TIFFRGBAImageBegin(&ri, tif, 1, emsg)) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt TIFF: %s",
                          src.msg[0] ? src.msg : one_line(emsg, t, sizeof t));
        goto done;
    }
    begun = 1;
    const int orient = ri.orientation >= 1 && ri.orientation <= 8 ? ri.orientation : 1;
    ri.req_orientation = ri.orientation; /* rows as stored, turned below */
    /* the RGBA raster in tmp, RGB into out (or tmp's front for finish() to turn) */
    const size_t npix = (size_t)w * h;
    st = buf_reserve(d, &d->tmp, &d->tmp_cap, npix * 4, 0, err);
    if (!st)
        st = buf_reserve(d, &d->out, &d->out_cap, npix * 3, 0, err);
    if (st)
        goto done;
    uint32_t *raster = (uint32_t *)(void *)d->tmp;
    src.pixels = 1;
    const int got = TIFFRGBAImageGet(&ri, raster, w, h);
    src.pixels = 0;
    if (!got || src.errors) {
        st = fm_error_set(err, FM_ERR_DECODE, "corrupt TIFF: %s",
                          src.msg[0] ? src.msg : "the image data does not read");
        goto done;
    }
    /* ABGR words (R in the low byte) to RGB; in place into tmp when it must turn */
    uint8_t *dst = orient == 1 ? d->out : d->tmp;
    for (size_t i = 0; i < npix; i++) {
        const uint32_t px = raster[i];
        dst[3 * i] = (uint8_t)TIFFGetR(px);
        dst[3 * i + 1] = (uint8_t)TIFFGetG(px);
        dst[3 * i + 2] = (uint8_t)TIFFGetB(px);
    }
    finish(d, (int)w, (int)h, (int)w, (int)h, (tjscalingfactor){1, 1}, orient, out);
done:
    if (begun)
        TIFFRGBAImageEnd(&ri);
    if (tif)
        TIFFClose(tif);
    return st;
}

/* ---- JPEG ----------------------------------------------------------------------- */

/* A JPEG: the header, the DCT scale for target_side, the decode (CMYK narrowed in
 * place), the EXIF orientation. */
static fm_status decode_jpeg(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                             fm_error *err)
{
#if SIZE_MAX > ULONG_MAX
    if (len > ULONG_MAX)
        return fm_error_set(err, FM_ERR_LIMIT, "input is %zu bytes, too large for libjpeg",
                            len);
#endif
    unsigned long jlen = (unsigned long)len;
    char t[TEXT_MAX];

    if (!d->tj) {
        reset_handle(d);
        if (!d->tj)
            return fm_error_set(err, FM_ERR_NOMEM, "decoder: TurboJPEG init failed: %s",
                                tj_text(NULL, t, sizeof t));
    }

    jpeg_meta meta;
    scan_markers(buf, len, &meta);

    /* Header. TurboJPEG 2.1 can fail after filling the size and colour space (an
     * unusual subsampling it cannot name), and reports a tables-only or cut-off
     * header as success with width 0: go on whenever the fields are usable and let
     * the full decode give the verdict. */
    int w = 0, h = 0, subsamp = -1, cs = -1;
    int r = tjDecompressHeader3(d->tj, buf, jlen, &w, &h, &subsamp, &cs);
    if (w <= 0 || h <= 0 || cs < TJCS_RGB || cs > TJCS_YCCK) {
        const char *why = r != 0 || tjGetErrorCode(d->tj) == TJERR_WARNING
                              ? tj_text(d->tj, t, sizeof t)
                              : "no image in the data (header only or cut short)";
        return tj_fail(d, why, err);
    }
    fm_status st = check_size(d, (uint64_t)w, (uint64_t)h, err);
    if (st)
        return st;

    tjscalingfactor sf = choose_scale(d, w, h);
    int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
    int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    int bpp = cmyk ? 4 : 3;
    int orient = meta.orientation;

    /* Decode straight into the output buffer when nothing has to move afterwards
     * (CMYK is narrowed in place); otherwise into tmp and turn it into out. */
    uint8_t *target;
    st = decode_target(d, sw, sh, bpp, orient, &target, err);
    if (st)
        return st;
    r = tjDecompress2(d->tj, buf, jlen, target, sw, sw * bpp, sh,
                      cmyk ? TJPF_CMYK : TJPF_RGB, TJFLAG_LIMITSCANS);
    if (r != 0) {
        const char *text = tj_text(d->tj, t, sizeof t);
        if (tjGetErrorCode(d->tj) != TJERR_WARNING || !warning_is_harmless(text))
            return tj_fail(d, text, err);
    }
    if (cmyk)
        cmyk_to_rgb(target, (size_t)sw * (size_t)sh, meta.adobe);
    finish(d, w, h, sw, sh, sf, orient, out);
    return FM_OK;
}

/* The body of fm_decode once the arguments are known to be usable. */
static fm_status decode(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                        fm_error *err)
{
    if (len == 0)
        return fm_error_set(err, FM_ERR_FORMAT, "empty input (0 bytes)");
    if (len > d->opts.max_bytes)
        return fm_error_set(err, FM_ERR_LIMIT,
                            "input is %zu bytes, over the limit of %zu bytes (max_bytes)",
                            len, d->opts.max_bytes);
    const char *name = is_jpeg(buf, len) ? "JPEG" : sniff_other(buf, len);
    if (!name)
        return fm_error_set(err, FM_ERR_FORMAT, "not an image (unrecognised data)");
    /* the formats read: sniff_other's name, decode.formats' bits, the decoder. A HEIF
     * file passes here when HEIC or AVIF is enabled; decode_heif then checks the bits
     * of the codings its items hold, which its brand need not name. */
    enum { HEIF = FM_FORMAT_HEIC | FM_FORMAT_AVIF };
    static const struct {
        const char *name;
        unsigned bit;
        fm_status (*decode)(fm_decoder *, const uint8_t *, size_t, fm_image *, fm_error *);
    } read[] = {{"JPEG", FM_FORMAT_JPEG, decode_jpeg}, {"PNG", FM_FORMAT_PNG, decode_png},
                {"WebP", FM_FORMAT_WEBP, decode_webp}, {"HEIC", HEIF, decode_heic},
                {"AVIF", HEIF, decode_avif}, {"TIFF", FM_FORMAT_TIFF, decode_tiff}};
    for (size_t i = 0; i < sizeof read / sizeof read[0]; i++) {
        if (strcmp(name, read[i].name) != 0)
            continue;
        if (!(d->opts.formats & read[i].bit))
            return fm_error_set(err, FM_ERR_UNSUPPORTED,
                                "format not enabled (decode.formats): %s", name);
        return read[i].decode(d, buf, len, out, err);
    }
    return fm_error_set(err, FM_ERR_UNSUPPORTED, "unsupported format: %s", name);
}

fm_status fm_decode(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                    fm_error *err)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!d || !out || (!buf && len > 0))
        return fm_error_set(err, FM_ERR_INVALID, "fm_decode: NULL decoder, image or data");
    fm_status st = decode(d, buf, len, out, err);
    if (st == FM_OK) {
        d->stats.images++;
    } else {
        d->stats.failures++;
        memset(out, 0, sizeof *out);
    }
    return st;
}

fm_status fm_decode_file(fm_decoder *d, const char *path, fm_image *out, fm_error *err)
{
    fm_status st = FM_OK;
    int fd = -1;
    if (out)
        memset(out, 0, sizeof *out);
    if (!d || !path || !out)
        return fm_error_set(err, FM_ERR_INVALID, "fm_decode_file: NULL argument");
    const size_t limit = d->opts.max_bytes; /* < SIZE_MAX, see fm_decoder_new */

    /* Without blocking: opening a FIFO for reading waits for a writer, and reading a
     * device may never end. Only a regular file is read (as the worker daemon does). */
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        st = fm_error_set(err, FM_ERR_IO, "%s: is a directory", path);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = fm_error_set(err, FM_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    const int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if ((uint64_t)sb.st_size > (uint64_t)limit) {
        st = fm_error_set(err, FM_ERR_LIMIT,
                          "%s: file is %lld bytes, over the limit of %zu bytes (max_bytes)",
                          path, (long long)sb.st_size, limit);
        goto fail;
    }
    /* One spare byte sees the end of file (or a file that grew) in one read. */
    st = buf_reserve(d, &d->in, &d->in_cap, (size_t)sb.st_size + 1, 0, err);
    if (st)
        goto fail;

    size_t len = 0;
    for (;;) {
        if (len == d->in_cap) {
            if (len > limit)
                break;
            size_t want = d->in_cap ? d->in_cap * 2 : 65536;
            if (want < d->in_cap || want > limit + 1)
                want = limit + 1;
            st = buf_reserve(d, &d->in, &d->in_cap, want, 1, err);
            if (st)
                goto fail;
        }
        ssize_t n = read(fd, d->in + len, d->in_cap - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            st = fm_error_set(err, FM_ERR_IO, "%s: read: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > limit)
            break;
    }
    if (len > limit) {
        st = fm_error_set(err, FM_ERR_LIMIT,
                          "%s: more than %zu bytes, over the limit (max_bytes)", path, limit);
        goto fail;
    }
    close(fd);
    fd = -1;

    st = fm_decode(d, d->in, len, out, err);
    if (st)
        fm_error_prefix(err, "%s", path);
    return st;

fail:
    if (fd >= 0)
        close(fd);
    d->stats.failures++;
    return st;
}

/* ---- output --------------------------------------------------------------------- */

static int image_ok(const fm_image *img)
{
    return img && img->data && img->w > 0 && img->h > 0 &&
           img->stride >= (size_t)img->w * 3;
}

fm_status fm_image_write_jpeg(const fm_image *img, const char *path, int quality,
                              fm_error *err)
{
    fm_status st = FM_OK;
    tjhandle tj = NULL;
    unsigned char *jpg = NULL;
    unsigned long jlen = 0;
    FILE *f = NULL;

    if (!image_ok(img) || !path)
        return fm_error_set(err, FM_ERR_INVALID, "write JPEG: no image or path");
    if (quality < 1 || quality > 100)
        return fm_error_set(err, FM_ERR_INVALID, "write JPEG: quality %d not in 1..100",
                            quality);
    if (img->stride > INT_MAX || img->w > 65535 || img->h > 65535)
        return fm_error_set(err, FM_ERR_INVALID, "write JPEG: image %dx%d too large",
                            img->w, img->h);

    char t[TEXT_MAX];
    tj = tjInitCompress();
    if (!tj) {
        st = fm_error_set(err, FM_ERR_INTERNAL, "write JPEG: TurboJPEG init failed: %s",
                          tj_text(NULL, t, sizeof t));
        goto fail;
    }
    int subsamp = quality >= 90 ? TJSAMP_444 : TJSAMP_420;
    if (tjCompress2(tj, img->data, img->w, (int)img->stride, img->h, TJPF_RGB, &jpg, &jlen,
                    subsamp, quality, TJFLAG_ACCURATEDCT) != 0) {
        st = fm_error_set(err, FM_ERR_INTERNAL, "write JPEG %s: %s", path,
                          tj_text(tj, t, sizeof t));
        goto fail;
    }
    f = fopen(path, "wb");
    if (!f) {
        st = fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (fwrite(jpg, 1, jlen, f) != jlen) {
        st = fm_error_set(err, FM_ERR_IO, "%s: write: %s", path, strerror(errno));
        goto fail;
    }
    int rc = fclose(f);
    f = NULL;
    if (rc != 0) {
        st = fm_error_set(err, FM_ERR_IO, "%s: close: %s", path, strerror(errno));
        goto fail;
    }
    tjFree(jpg);
    tjDestroy(tj);
    return FM_OK;

fail:
    if (f) {
        fclose(f);
        remove(path); /* no half-written file left behind */
    }
    tjFree(jpg);
    if (tj)
        tjDestroy(tj);
    return st;
}

/* Fills the inclusive rectangle [x0,x1] x [y0,y1] after clipping it to the image. */
static void fill_clipped(fm_image *img, long long x0, long long y0, long long x1,
                         long long y1, fm_rgb c)
{
    if (x0 < 0)
        x0 = 0;
    if (y0 < 0)
        y0 = 0;
    if (x1 > img->w - 1)
        x1 = img->w - 1;
    if (y1 > img->h - 1)
        y1 = img->h - 1;
    if (x0 > x1 || y0 > y1)
        return;
    for (long long y = y0; y <= y1; y++) {
        uint8_t *p = img->data + (size_t)y * img->stride + (size_t)x0 * 3;
        for (long long x = x0; x <= x1; x++, p += 3) {
            p[0] = c.r;
            p[1] = c.g;
            p[2] = c.b;
        }
    }
}

void fm_image_draw_rect(fm_image *img, int x0, int y0, int x1, int y1, int thickness,
                        fm_rgb color)
{
    if (!image_ok(img))
        return;
    long long ax0 = x0 < x1 ? x0 : x1, ax1 = x0 < x1 ? x1 : x0;
    long long ay0 = y0 < y1 ? y0 : y1, ay1 = y0 < y1 ? y1 : y0;
    long long t = thickness < 1 ? 1 : thickness;
    /* bands never leave the rectangle: a thickness past half its size fills it */
    long long ty = t < ay1 - ay0 + 1 ? t : ay1 - ay0 + 1;
    long long tx = t < ax1 - ax0 + 1 ? t : ax1 - ax0 + 1;
    fill_clipped(img, ax0, ay0, ax1, ay0 + ty - 1, color); /* top */
    fill_clipped(img, ax0, ay1 - ty + 1, ax1, ay1, color); /* bottom */
    fill_clipped(img, ax0, ay0, ax0 + tx - 1, ay1, color); /* left */
    fill_clipped(img, ax1 - tx + 1, ay0, ax1, ay1, color); /* right */
}

void fm_image_draw_point(fm_image *img, int x, int y, int radius, fm_rgb color)
{
    if (!image_ok(img))
        return;
    long long r = radius < 0 ? 0 : radius > 4096 ? 4096 : radius;
    long long rr = r * r + r; /* a little past r*r gives rounder small discs */
    for (long long dy = -r; dy <= r; dy++) {
        long long py = (long long)y + dy;
        if (py < 0 || py >= img->h)
            continue;
        /* widest dx with dx*dx + dy*dy <= rr */
        long long span = r;
        while (span > 0 && span * span + dy * dy > rr)
            span--;
        fill_clipped(img, (long long)x - span, py, (long long)x + span, py, color);
    }
}
