/* test_image.c - the image decoder against images this test makes itself.
 *
 * Every input is generated here from a known RGB pattern (coloured quadrants plus a
 * gradient, so any wrong rotation or flip shows) with TurboJPEG, libspng's, libwebp's
 * or libheif's encoders (x265, aom) or libtiff, then altered by hand: EXIF segments in
 * both byte orders (JPEG APP1, PNG eXIf, WebP EXIF; the last two also behind
 * "Exif\0\0"), a HEIF rotation (irot) added to the file's boxes, HEIF brands that do
 * not match the coding, CMYK with and without the Adobe marker, every PNG colour type
 * and depth, interlaced, WebP lossy and lossless, extended and animated, TIFF of every
 * photometric kind in strips and tiles with each orientation tag, alpha interleaved
 * or in a plane of its own, damaged strips and tags, truncation at every length,
 * forged headers, other formats' signatures, random bytes, a FIFO. Expected results
 * come from the pattern and from the EXIF specification's table, not from the
 * decoder.
 *
 * Run with `--corpus DIR` it also writes the generated images into DIR as a seed
 * corpus for tests/fuzz/fuzz_jpeg.c.
 */
#include "facemill/image.h"
#include "fm_test.h"
#include "fm_test_heif.h"

#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spng.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <webp/decode.h>
#include <webp/encode.h>

/* ---- generated inputs ----------------------------------------------------------- */

typedef struct blob {
    uint8_t *p;
    size_t n;
} blob;

static void blob_free(blob *b)
{
    free(b->p);
    b->p = NULL;
    b->n = 0;
}

static blob blob_copy(const uint8_t *p, size_t n)
{
    blob b = {malloc(n ? n : 1), n};
    if (!b.p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    if (n)
        memcpy(b.p, p, n);
    return b;
}

static uint8_t clamp255(int v)
{
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Top-left red, top-right green, bottom-left blue, bottom-right yellow, each with a
 * gentle gradient; packed RGB rows. */
static uint8_t *make_pattern(int w, int h)
{
    static const int quad[4][3] = {{200, 40, 40}, {40, 200, 40}, {40, 40, 200}, {200, 200, 40}};
    uint8_t *p = malloc((size_t)w * h * 3);
    if (!p)
        exit(1);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const int *q = quad[(y >= h / 2) * 2 + (x >= w / 2)];
            int gx = x * 40 / w - 20, gy = y * 30 / h - 15;
            uint8_t *o = p + ((size_t)y * w + x) * 3;
            o[0] = clamp255(q[0] + gx);
            o[1] = clamp255(q[1] + gy);
            o[2] = clamp255(q[2] + gx / 2 + gy / 2);
        }
    return p;
}

static blob compress(const uint8_t *pix, int w, int h, int pf, int subsamp, int quality,
                     int flags)
{
    tjhandle c = tjInitCompress();
    unsigned char *j = NULL;
    unsigned long n = 0;
    if (!c || tjCompress2(c, pix, w, 0, h, pf, &j, &n, subsamp, quality, flags) != 0) {
        fprintf(stderr, "tjCompress2: %s\n", tjGetErrorStr2(c));
        exit(1);
    }
    blob b = blob_copy(j, n);
    tjFree(j);
    tjDestroy(c);
    return b;
}

static blob rgb_jpeg(int w, int h, int flags)
{
    uint8_t *pix = make_pattern(w, h);
    blob b = compress(pix, w, h, TJPF_RGB, TJSAMP_444, 100, flags);
    free(pix);
    return b;
}

/* Inserts a segment (marker + payload, length field computed) right after SOI. */
static blob insert_segment(const blob *j, uint8_t marker, const uint8_t *payload, size_t pn)
{
    blob b = {malloc(j->n + 4 + pn), j->n + 4 + pn};
    if (!b.p)
        exit(1);
    memcpy(b.p, j->p, 2);
    b.p[2] = 0xFF;
    b.p[3] = marker;
    b.p[4] = (uint8_t)((pn + 2) >> 8);
    b.p[5] = (uint8_t)(pn + 2);
    memcpy(b.p + 6, payload, pn);
    memcpy(b.p + 6 + pn, j->p + 2, j->n - 2);
    return b;
}

static void put16(uint8_t *p, unsigned v, int be)
{
    p[be ? 0 : 1] = (uint8_t)(v >> 8);
    p[be ? 1 : 0] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v, int be)
{
    for (int i = 0; i < 4; i++)
        p[be ? i : 3 - i] = (uint8_t)(v >> (24 - 8 * i));
}

/* An "Exif\0\0" APP1 payload: TIFF header, IFD0 with ImageWidth then Orientation.
 * Returns its length; buf needs 64 bytes. */
static size_t exif_payload(uint8_t *buf, int orientation, int be)
{
    memset(buf, 0, 64);
    memcpy(buf, "Exif\0\0", 6);
    uint8_t *t = buf + 6;
    t[0] = t[1] = be ? 'M' : 'I';
    put16(t + 2, 42, be);
    put32(t + 4, 8, be);          /* IFD0 right after the header */
    put16(t + 8, 2, be);          /* two entries */
    uint8_t *e = t + 10;
    put16(e, 0x0100, be);         /* ImageWidth, LONG, 1, 1234 */
    put16(e + 2, 4, be);
    put32(e + 4, 1, be);
    put32(e + 8, 1234, be);
    e += 12;
    put16(e, 0x0112, be);         /* Orientation, SHORT, 1 */
    put16(e + 2, 3, be);
    put32(e + 4, 1, be);
    put16(e + 8, (unsigned)orientation, be);
    put32(t + 10 + 24, 0, be);    /* no next IFD */
    return 6 + 10 + 24 + 4;
}

static blob with_orientation(const blob *j, int orientation, int be)
{
    uint8_t pl[64];
    size_t n = exif_payload(pl, orientation, be);
    return insert_segment(j, 0xE1, pl, n);
}

/* ---- expectations --------------------------------------------------------------- */

/* The upright view of a stored image for EXIF orientation o, from the specification's
 * wording: where the stored 0th row and 0th column are shown.
 *   1 row0 top,    col0 left     5 row0 left,  col0 top
 *   2 row0 top,    col0 right    6 row0 right, col0 top
 *   3 row0 bottom, col0 right    7 row0 right, col0 bottom
 *   4 row0 bottom, col0 left     8 row0 left,  col0 bottom */
static uint8_t *upright(const uint8_t *s, int sw, int sh, size_t sstride, int o, int *dw,
                        int *dh)
{
    static const char row0[9] = {0, 'T', 'T', 'B', 'B', 'L', 'R', 'R', 'L'};
    static const char col0[9] = {0, 'L', 'R', 'R', 'L', 'T', 'T', 'B', 'B'};
    int side = row0[o] == 'L' || row0[o] == 'R';
    *dw = side ? sh : sw;
    *dh = side ? sw : sh;
    uint8_t *d = malloc((size_t)sw * sh * 3);
    if (!d)
        exit(1);
    for (int sy = 0; sy < sh; sy++)
        for (int sx = 0; sx < sw; sx++) {
            int dx, dy;
            if (!side) {
                dy = row0[o] == 'T' ? sy : sh - 1 - sy;
                dx = col0[o] == 'L' ? sx : sw - 1 - sx;
            } else { /* stored rows become columns, stored columns become rows */
                dx = row0[o] == 'L' ? sy : sh - 1 - sy;
                dy = col0[o] == 'T' ? sx : sw - 1 - sx;
            }
            memcpy(d + ((size_t)dy * *dw + dx) * 3, s + (size_t)sy * sstride + (size_t)sx * 3, 3);
        }
    return d;
}

typedef struct diff {
    double mean;
    int max;
} diff;

/* Compares img with a packed w x h RGB image. */
static diff compare(const fm_image *img, const uint8_t *ref, int w, int h)
{
    diff r = {1e9, 999};
    if (!img->data || img->w != w || img->h != h)
        return r;
    double sum = 0;
    r.max = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w * 3; x++) {
            int d = abs((int)img->data[(size_t)y * img->stride + x] - ref[((size_t)y * w) * 3 + x]);
            sum += d;
            if (d > r.max)
                r.max = d;
        }
    r.mean = sum / ((double)w * h * 3);
    return r;
}

/* A packed copy of an image's pixels. */
static uint8_t *pack(const fm_image *img)
{
    uint8_t *p = malloc((size_t)img->w * img->h * 3 + 1);
    if (!p)
        exit(1);
    for (int y = 0; y < img->h; y++)
        memcpy(p + (size_t)y * img->w * 3, img->data + (size_t)y * img->stride, (size_t)img->w * 3);
    return p;
}

static int contains(const char *s, const char *needle)
{
    return strstr(s, needle) != NULL;
}

static fm_decoder *new_decoder(uint64_t max_pixels, size_t max_bytes, int target_side)
{
    fm_decode_opts o = {.max_pixels = max_pixels, .max_bytes = max_bytes,
                        .target_side = target_side};
    fm_decoder *d = NULL;
    fm_error e = {0};
    if (fm_decoder_new(&d, &o, &e) != FM_OK) {
        fprintf(stderr, "fm_decoder_new: %s\n", fm_error_text(&e));
        exit(1);
    }
    return d;
}

/* ---- tests ---------------------------------------------------------------------- */

/* A plain baseline JPEG of a size that is not a multiple of the MCU. */
static void test_plain(fm_decoder *d)
{
    const int w = 75, h = 50;
    uint8_t *src = make_pattern(w, h);
    blob j = compress(src, w, h, TJPF_RGB, TJSAMP_444, 100, 0);
    fm_image img;
    fm_error e = {0};
    CHECK_MSG(fm_decode(d, j.p, j.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    CHECK(img.w == w && img.h == h && img.stride == (size_t)w * 3);
    CHECK(img.orig_w == w && img.orig_h == h);
    CHECK(img.scale_num == 1 && img.scale_denom == 1 && img.orientation == 1);
    diff df = compare(&img, src, w, h);
    CHECK_MSG(df.mean < 1.5 && df.max <= 24, "plain: mean %.2f max %d", df.mean, df.max);
    blob_free(&j);
    free(src);
}

/* All eight orientations in both byte orders: the result must be exactly the upright
 * view of the unrotated decode, and close to the upright view of the source. */
static void test_orientations(fm_decoder *d, int flags, int pf_cmyk)
{
    const int w = 48, h = 32;
    uint8_t *src = make_pattern(w, h);
    blob j;
    if (pf_cmyk) { /* stored as inverted CMYK, the libjpeg-turbo/Adobe convention */
        uint8_t *cm = malloc((size_t)w * h * 4);
        for (int i = 0; i < w * h; i++) {
            double c = 1 - src[i * 3] / 255.0, m = 1 - src[i * 3 + 1] / 255.0,
                   y = 1 - src[i * 3 + 2] / 255.0;
            double k = c < m ? (c < y ? c : y) : (m < y ? m : y);
            c = (c - k) / (1 - k);
            m = (m - k) / (1 - k);
            y = (y - k) / (1 - k);
            cm[i * 4] = (uint8_t)(255 - c * 255 + 0.5);
            cm[i * 4 + 1] = (uint8_t)(255 - m * 255 + 0.5);
            cm[i * 4 + 2] = (uint8_t)(255 - y * 255 + 0.5);
            cm[i * 4 + 3] = (uint8_t)(255 - k * 255 + 0.5);
        }
        j = compress(cm, w, h, TJPF_CMYK, TJSAMP_444, 100, flags);
        free(cm);
    } else {
        j = compress(src, w, h, TJPF_RGB, TJSAMP_444, 100, flags);
    }
    fm_image img;
    fm_error e = {0};
    CHECK_MSG(fm_decode(d, j.p, j.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    uint8_t *plain = pack(&img);
    diff df0 = compare(&img, src, w, h);
    CHECK_MSG(df0.mean < (pf_cmyk ? 2.5 : 1.5), "stored: mean %.2f max %d", df0.mean, df0.max);

    for (int be = 0; be <= 1; be++)
        for (int o = 1; o <= 8; o++) {
            blob jo = with_orientation(&j, o, be);
            int ew, eh;
            uint8_t *want = upright(plain, w, h, (size_t)w * 3, o, &ew, &eh);
            uint8_t *want_src = upright(src, w, h, (size_t)w * 3, o, &ew, &eh);
            e.msg[0] = '\0';
            fm_status st = fm_decode(d, jo.p, jo.n, &img, &e);
            CHECK_MSG(st == FM_OK, "orientation %d %s: %s", o, be ? "MM" : "II",
                      fm_error_text(&e));
            CHECK_MSG(img.orientation == o, "orientation %d reported %d", o, img.orientation);
            CHECK_MSG(img.w == (o >= 5 ? h : w) && img.h == (o >= 5 ? w : h),
                      "orientation %d: %dx%d", o, img.w, img.h);
            CHECK(img.orig_w == img.w && img.orig_h == img.h);
            diff exact = compare(&img, want, ew, eh);
            CHECK_MSG(exact.max == 0, "orientation %d %s: differs from the upright plain "
                      "decode by up to %d", o, be ? "MM" : "II", exact.max);
            diff df = compare(&img, want_src, ew, eh);
            CHECK_MSG(df.mean < (pf_cmyk ? 2.5 : 1.5), "orientation %d: mean %.2f", o, df.mean);
            free(want);
            free(want_src);
            blob_free(&jo);
        }
    free(plain);
    blob_free(&j);
    free(src);
}

static void test_gray(fm_decoder *d)
{
    const int w = 40, h = 30;
    uint8_t *src = make_pattern(w, h);
    blob j = compress(src, w, h, TJPF_RGB, TJSAMP_GRAY, 100, 0);
    fm_image img;
    fm_error e = {0};
    CHECK_MSG(fm_decode(d, j.p, j.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    CHECK(img.w == w && img.h == h);
    int equal = 1;
    double sum = 0;
    for (int y = 0; y < img.h; y++)
        for (int x = 0; x < img.w; x++) {
            const uint8_t *p = img.data + (size_t)y * img.stride + (size_t)x * 3;
            const uint8_t *s = src + ((size_t)y * w + x) * 3;
            if (p[0] != p[1] || p[1] != p[2])
                equal = 0;
            double luma = 0.299 * s[0] + 0.587 * s[1] + 0.114 * s[2];
            sum += fabs(p[0] - luma);
        }
    CHECK_MSG(equal, "grayscale: R, G, B differ");
    CHECK_MSG(sum / (w * h) < 2.0, "grayscale: mean luma error %.2f", sum / (w * h));
    blob_free(&j);
    free(src);
}

/* Offset of the first segment with this marker before SOS, or 0. */
static size_t find_segment(const blob *j, uint8_t marker)
{
    size_t p = 2;
    while (p + 4 <= j->n && j->p[p] == 0xFF && j->p[p + 1] != 0xDA) {
        if (j->p[p + 1] == marker)
            return p;
        p += 2 + ((size_t)j->p[p + 2] << 8 | j->p[p + 3]);
    }
    return 0;
}

/* CMYK the way libjpeg-based readers take it: with an Adobe APP14 the stored values
 * are inverted (Photoshop), without one they are ink amounts. One set of stored
 * values, read raw through TurboJPEG, decides the expected RGB in both cases. */
static void test_cmyk_adobe(fm_decoder *d)
{
    const int w = 32, h = 24;
    uint8_t *cm = malloc((size_t)w * h * 4);
    for (int i = 0; i < w * h * 4; i++)
        cm[i] = (uint8_t)((i * 37) ^ (i >> 3));
    blob ycck = compress(cm, w, h, TJPF_CMYK, TJSAMP_444, 95, 0);
    size_t a = find_segment(&ycck, 0xEE);
    CHECK_MSG(a > 0 && memcmp(ycck.p + a + 4, "Adobe", 5) == 0, "no Adobe APP14 in CMYK output");
    if (!a) {
        free(cm);
        blob_free(&ycck);
        return;
    }
    /* transform 0: the components are CMYK as stored, no YCC conversion */
    blob adobe = blob_copy(ycck.p, ycck.n);
    adobe.p[a + 4 + 11] = 0;
    size_t seglen = 2 + ((size_t)adobe.p[a + 2] << 8 | adobe.p[a + 3]);
    blob plain = {malloc(adobe.n - seglen), adobe.n - seglen};
    memcpy(plain.p, adobe.p, a);
    memcpy(plain.p + a, adobe.p + a + seglen, adobe.n - a - seglen);

    tjhandle t = tjInitDecompress();
    uint8_t *raw = malloc((size_t)w * h * 4), *raw2 = malloc((size_t)w * h * 4);
    CHECK(tjDecompress2(t, adobe.p, adobe.n, raw, w, 0, h, TJPF_CMYK, 0) == 0);
    CHECK(tjDecompress2(t, plain.p, plain.n, raw2, w, 0, h, TJPF_CMYK, 0) == 0);
    CHECK(memcmp(raw, raw2, (size_t)w * h * 4) == 0);
    tjDestroy(t);

    uint8_t *want_inv = malloc((size_t)w * h * 3), *want_ink = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h; i++) {
        const uint8_t *s = raw + i * 4;
        for (int c = 0; c < 3; c++) {
            want_inv[i * 3 + c] = (uint8_t)floor(s[c] * s[3] / 255.0 + 0.5);
            want_ink[i * 3 + c] = (uint8_t)floor((255 - s[c]) * (255 - s[3]) / 255.0 + 0.5);
        }
    }
    fm_image img;
    fm_error e = {0};
    CHECK_MSG(fm_decode(d, adobe.p, adobe.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    diff di = compare(&img, want_inv, w, h);
    CHECK_MSG(di.max == 0, "Adobe CMYK: differs by up to %d", di.max);
    CHECK_MSG(fm_decode(d, plain.p, plain.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    diff dp = compare(&img, want_ink, w, h);
    CHECK_MSG(dp.max == 0, "plain CMYK: differs by up to %d", dp.max);

    free(want_inv);
    free(want_ink);
    free(raw);
    free(raw2);
    blob_free(&plain);
    blob_free(&adobe);
    blob_free(&ycck);
    free(cm);
}

/* DCT scaling on a large image: the strongest of 1/8, 1/4, 1/2 keeping the long side
 * >= target, sizes rounded up the way libjpeg does, original size reported. */
static void test_scaling(void)
{
    const int w = 2400, h = 1600;
    uint8_t *src = make_pattern(w, h);
    blob j = compress(src, w, h, TJPF_RGB, TJSAMP_420, 90, 0);
    static const struct {
        int target, denom;
    } cases[] = {{0, 1},   {1, 8},    {300, 8},  {301, 4},  {600, 4},
                 {601, 2}, {1200, 2}, {1201, 1}, {2400, 1}, {5000, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fm_decoder *d = new_decoder(0, 0, cases[i].target);
        fm_image img;
        fm_error e = {0};
        CHECK_MSG(fm_decode(d, j.p, j.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
        int dn = cases[i].denom;
        CHECK_MSG(img.scale_num == 1 && img.scale_denom == dn, "target %d: scale %d/%d, want 1/%d",
                  cases[i].target, img.scale_num, img.scale_denom, dn);
        CHECK_MSG(img.w == w / dn && img.h == h / dn, "target %d: %dx%d", cases[i].target,
                  img.w, img.h);
        CHECK(img.orig_w == w && img.orig_h == h);
        CHECK(img.w >= cases[i].target || dn == 1);
        /* quadrant centres keep their colours */
        for (int q = 0; q < 4 && img.data; q++) {
            int x = (q & 1 ? 3 : 1) * img.w / 4, y = (q & 2 ? 3 : 1) * img.h / 4;
            int sx = x * dn, sy = y * dn;
            for (int c = 0; c < 3; c++) {
                int got = img.data[(size_t)y * img.stride + (size_t)x * 3 + c];
                int want = src[((size_t)sy * w + sx) * 3 + c];
                CHECK_MSG(abs(got - want) <= 12, "target %d quadrant %d channel %d: %d vs %d",
                          cases[i].target, q, c, got, want);
            }
        }
        /* the same image again allocates nothing */
        fm_decoder_stats before, after;
        fm_decoder_get_stats(d, &before);
        CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_OK);
        fm_decoder_get_stats(d, &after);
        CHECK(after.grows == before.grows && after.images == before.images + 1);
        fm_decoder_destroy(&d);
        CHECK(d == NULL);
    }

    /* Sideways: scale from the long side, orientation after scaling. */
    blob j6 = with_orientation(&j, 6, 1);
    fm_decoder *d = new_decoder(0, 0, 300);
    fm_image img;
    fm_error e = {0};
    CHECK_MSG(fm_decode(d, j6.p, j6.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    CHECK(img.w == 200 && img.h == 300 && img.orig_w == 1600 && img.orig_h == 2400);
    CHECK(img.scale_denom == 8 && img.orientation == 6);
    fm_decoder_destroy(&d);
    blob_free(&j6);
    blob_free(&j);
    free(src);

    /* Sizes that do not divide: libjpeg rounds up. */
    uint8_t *odd = make_pattern(2401, 1599);
    blob jo = compress(odd, 2401, 1599, TJPF_RGB, TJSAMP_420, 80, 0);
    d = new_decoder(0, 0, 301);
    CHECK(fm_decode(d, jo.p, jo.n, &img, &e) == FM_OK);
    CHECK_MSG(img.scale_denom == 8 && img.w == 301 && img.h == 200, "odd: 1/%d %dx%d",
              img.scale_denom, img.w, img.h);
    fm_decoder_destroy(&d);
    blob_free(&jo);
    free(odd);
}

/* Every prefix of a JPEG (with an EXIF segment, so the marker parser is cut too)
 * is an error, never a crash and never a half-gray image. */
static void test_truncated(fm_decoder *d)
{
    blob j0 = rgb_jpeg(32, 24, 0);
    blob j = with_orientation(&j0, 6, 0);
    fm_image img;
    fm_error e = {0};
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_OK);
    int bad = 0;
    for (size_t n = 2; n < j.n; n++) {
        blob cut = blob_copy(j.p, n); /* exact-size copy: ASan sees any over-read */
        e.msg[0] = '\0';
        fm_status st = fm_decode(d, cut.p, cut.n, &img, &e);
        if (st != FM_ERR_DECODE || strncmp(e.msg, "corrupt JPEG: ", 14) != 0 || img.data) {
            if (bad++ < 5)
                fprintf(stderr, "cut at %zu: %s: %s\n", n, fm_status_to_string(st), e.msg);
        }
        blob_free(&cut);
    }
    CHECK_MSG(bad == 0, "%d truncations not reported as corrupt JPEG", bad);

    blob half = blob_copy(j.p, j.n - 20); /* inside the scan data */
    CHECK(fm_decode(d, half.p, half.n, &img, &e) == FM_ERR_DECODE);
    CHECK_MSG(strcmp(e.msg, "corrupt JPEG: Premature end of JPEG file") == 0, "%s", e.msg);
    blob_free(&half);

    /* the same cut on the progressive encoding */
    blob p = rgb_jpeg(32, 24, TJFLAG_PROGRESSIVE);
    for (size_t n = 2; n < p.n; n += 7) {
        blob cut = blob_copy(p.p, n);
        fm_status st = fm_decode(d, cut.p, cut.n, &img, &e);
        CHECK_MSG(st == FM_ERR_DECODE, "progressive cut at %zu: %s", n, fm_error_text(&e));
        blob_free(&cut);
    }
    /* a good decode after all those failures works */
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_OK);
    blob_free(&p);
    blob_free(&j);
    blob_free(&j0);
}

/* Junk between the last scan and EOI: pixels complete, accepted. Junk inside the
 * scan data: not accepted. */
static void test_trailing_junk(fm_decoder *d)
{
    blob j = rgb_jpeg(32, 24, 0);
    fm_image img;
    fm_error e = {0};
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_OK);
    uint8_t *plain = pack(&img);
    blob junk = {malloc(j.n + 10), j.n + 10};
    memcpy(junk.p, j.p, j.n - 2);
    memset(junk.p + j.n - 2, 0x11, 10);
    junk.p[j.n + 8] = 0xFF;
    junk.p[j.n + 9] = 0xD9;
    CHECK_MSG(fm_decode(d, junk.p, junk.n, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    CHECK(compare(&img, plain, 32, 24).max == 0);

    /* A missing EOI marker is reported like any other truncation. */
    CHECK(fm_decode(d, j.p, j.n - 2, &img, &e) == FM_ERR_DECODE);
    CHECK_MSG(contains(e.msg, "Premature end"), "%s", e.msg);
    free(plain);
    blob_free(&junk);
    blob_free(&j);
}

static void test_not_jpeg(fm_decoder *d)
{
    fm_image img;
    fm_error e = {0};
    CHECK(fm_decode(d, (const uint8_t *)"", 0, &img, &e) == FM_ERR_FORMAT);
    CHECK(contains(e.msg, "0 bytes"));
    CHECK(fm_decode(d, NULL, 0, &img, &e) == FM_ERR_FORMAT);
    CHECK(fm_decode(d, NULL, 5, &img, &e) == FM_ERR_INVALID);
    CHECK(fm_decode(NULL, (const uint8_t *)"x", 1, &img, &e) == FM_ERR_INVALID);
    CHECK(fm_decode(d, (const uint8_t *)"x", 1, NULL, &e) == FM_ERR_INVALID);

    static const struct {
        const char *name;
        const char *bytes;
        size_t n;
    } sigs[] = {
        {"GIF", "GIF89a\x10\0\x10\0\0\0\0", 13},
        {"BMP", "BM\x36\x03\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0", 18},
        {"JPEG 2000", "\0\0\0\x0cjP  \r\n\x87\n\0\0\0\x14", 16},
        {"PSD", "8BPS\0\x01\0\0\0\0\0\0", 12},
    };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "unsupported format: %s", sigs[i].name);
        fm_status st = fm_decode(d, (const uint8_t *)sigs[i].bytes, sigs[i].n, &img, &e);
        CHECK_MSG(st == FM_ERR_UNSUPPORTED && strcmp(e.msg, want) == 0, "%s: %s (%s)",
                  sigs[i].name, fm_status_to_string(st), e.msg);
        CHECK(img.data == NULL && img.w == 0);
    }

    /* PNG, WebP, HEIC and AVIF are read: their signatures with nothing usable behind
     * them are corrupt files of that format, not unknown data */
    static const struct {
        const char *bytes;
        size_t n;
        const char *want;
    } cut[] = {
        {"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0", 29,
         "corrupt PNG: "},
        {"\x89PNG\r\n\x1a\n", 8, "corrupt PNG: "},
        {"RIFF\x24\0\0\0WEBPVP8 ", 16, "corrupt WebP: "},
        {"RIFF\0\0\0\0WEBP", 12, "corrupt WebP: "},
        {"\0\0\0\x18" "ftypheic\0\0\0\0mif1heic", 24, "corrupt HEIC: "},
        {"\0\0\0\x1c" "ftypavif\0\0\0\0avifmif1miaf", 28, "corrupt AVIF: "},
        {"\0\0\0\x1c" "ftypmif1\0\0\0\0mif1miafavif", 28, "corrupt AVIF: "},
        {"\0\0\0\x18" "ftypmif1\0\0\0\0mif1heic", 24, "corrupt HEIC: "},
        {"II*\0\x08\0\0\0", 8, "corrupt TIFF: "},
        {"MM\0*\0\0\0\x08", 8, "corrupt TIFF: "},
    };
    for (size_t i = 0; i < sizeof cut / sizeof cut[0]; i++) {
        fm_status st = fm_decode(d, (const uint8_t *)cut[i].bytes, cut[i].n, &img, &e);
        CHECK_MSG(st == FM_ERR_DECODE && strncmp(e.msg, cut[i].want, strlen(cut[i].want)) == 0,
                  "%zu: %s (%s)", i, fm_status_to_string(st), e.msg);
        CHECK(img.data == NULL && img.w == 0);
    }

    /* random bytes: a fixed sequence, so the outcome is known */
    uint32_t s = 12345;
    for (int round = 0; round < 200; round++) {
        size_t n = 1 + (size_t)round * 37 % 5000;
        uint8_t *b = malloc(n);
        for (size_t i = 0; i < n; i++) {
            s = s * 1103515245u + 12345u;
            b[i] = (uint8_t)(s >> 16);
        }
        if (b[0] == 0xFF)
            b[0] = 0x00;
        fm_status st = fm_decode(d, b, n, &img, &e);
        CHECK_MSG(st == FM_ERR_FORMAT && strcmp(e.msg, "not an image (unrecognised data)") == 0,
                  "random %d: %s %s", round, fm_status_to_string(st), e.msg);
        /* the same bytes behind a JPEG start: a decode error, never success */
        if (n >= 3) {
            b[0] = 0xFF;
            b[1] = 0xD8;
            b[2] = 0xFF;
            st = fm_decode(d, b, n, &img, &e);
            CHECK_MSG(st == FM_ERR_DECODE, "random JPEG %d: %s %s", round,
                      fm_status_to_string(st), e.msg);
        }
        free(b);
    }
}

static void test_limits(void)
{
    /* A forged header declaring 30000x30000: refused from the header alone. */
    static const uint8_t big[] = {
        0xFF, 0xD8,                                                 /* SOI */
        0xFF, 0xC0, 0x00, 0x11, 0x08, 0x75, 0x30, 0x75, 0x30, 0x03, /* SOF0 30000x30000 */
        0x01, 0x22, 0x00, 0x02, 0x11, 0x00, 0x03, 0x11, 0x00,
        0xFF, 0xDA, 0x00, 0x0C, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, /* SOS */
        0x00, 0x3F, 0x00, 0x00, 0x00, 0xFF, 0xD9};
    fm_decoder *d = new_decoder(0, 0, 0); /* default max_pixels: 100,000,000 */
    fm_image img;
    fm_error e = {0};
    CHECK(fm_decode(d, big, sizeof big, &img, &e) == FM_ERR_LIMIT);
    CHECK_MSG(contains(e.msg, "30000x30000") && contains(e.msg, "900000000") &&
                  contains(e.msg, "100000000"), "%s", e.msg);
    fm_decoder_stats st;
    fm_decoder_get_stats(d, &st);
    CHECK_MSG(st.buffer_bytes == 0 && st.grows == 0, "allocated %zu bytes", st.buffer_bytes);
    CHECK(st.failures == 1 && st.images == 0);
    fm_decoder_destroy(&d);
    fm_decoder_destroy(&d); /* NULL is fine */
    fm_decoder_destroy(NULL);

    /* Exactly at the pixel limit passes, one below fails. */
    blob j = rgb_jpeg(64, 48, 0);
    d = new_decoder(64 * 48, 0, 0);
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_OK);
    fm_decoder_destroy(&d);
    d = new_decoder(64 * 48 - 1, 0, 0);
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_ERR_LIMIT);
    CHECK_MSG(contains(e.msg, "64x48") && contains(e.msg, "3071"), "%s", e.msg);
    fm_decoder_destroy(&d);

    /* max_bytes */
    d = new_decoder(0, j.n, 0);
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_OK);
    fm_decoder_destroy(&d);
    d = new_decoder(0, j.n - 1, 0);
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_ERR_LIMIT);
    CHECK_MSG(contains(e.msg, "max_bytes"), "%s", e.msg);
    fm_decoder_destroy(&d);
    blob_free(&j);

    /* bad options */
    fm_decode_opts o = {.target_side = -1};
    CHECK(fm_decoder_new(&d, &o, &e) == FM_ERR_INVALID && d == NULL);
    CHECK(fm_decoder_new(NULL, NULL, &e) == FM_ERR_INVALID);
    CHECK(fm_decoder_new(&d, NULL, &e) == FM_OK && d != NULL);
    fm_decoder_destroy(&d);
}

/* EXIF with lies in it: ignored (orientation 1), never read out of bounds. */
static void test_bogus_exif(fm_decoder *d)
{
    blob j = rgb_jpeg(32, 24, 0);
    fm_image img;
    fm_error e = {0};
    CHECK(fm_decode(d, j.p, j.n, &img, &e) == FM_OK);
    uint8_t *plain = pack(&img);
    for (int variant = 0; variant < 14; variant++) {
        int be = variant & 1;
        uint8_t pl[64];
        size_t n = exif_payload(pl, 6, be);
        uint8_t *t = pl + 6;
        switch (variant / 2) {
        case 0: put32(t + 4, 0xFFFFFFF0u, be); break; /* IFD0 far past the end */
        case 1: put32(t + 4, (uint32_t)(n - 6 - 1), be); break; /* IFD0 at the last byte */
        case 2: put16(t + 8, 0xFFFF, be); n = 6 + 10 + 12 + 6; break; /* count lies, cut */
        case 3: put16(t + 10 + 12 + 8, 9, be); break; /* orientation 9 */
        case 4: put16(t + 10 + 12 + 2, 2, be); break; /* orientation as ASCII */
        case 5: t[0] = 'I'; t[1] = 'M'; break; /* no byte order */
        case 6: n = 6 + 5; break; /* TIFF header cut short */
        }
        blob jb = insert_segment(&j, 0xE1, pl, n);
        CHECK_MSG(fm_decode(d, jb.p, jb.n, &img, &e) == FM_OK, "variant %d: %s", variant,
                  fm_error_text(&e));
        CHECK_MSG(img.orientation == 1 && img.w == 32, "variant %d: orientation %d", variant,
                  img.orientation);
        CHECK(compare(&img, plain, 32, 24).max == 0);
        blob_free(&jb);
    }
    /* an XMP APP1 before the EXIF one does not hide it */
    static const char xmp[] = "http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>";
    blob j6 = with_orientation(&j, 6, 0);
    blob jx = insert_segment(&j6, 0xE1, (const uint8_t *)xmp, sizeof xmp);
    CHECK(fm_decode(d, jx.p, jx.n, &img, &e) == FM_OK && img.orientation == 6);
    blob_free(&jx);
    blob_free(&j6);
    free(plain);
    blob_free(&j);
}

static void test_steady_state(fm_decoder *d)
{
    blob a = rgb_jpeg(64, 48, 0), b = rgb_jpeg(32, 24, TJFLAG_PROGRESSIVE);
    blob c = with_orientation(&a, 8, 1);
    fm_image img;
    fm_error e = {0};
    for (int pass = 0; pass < 3; pass++) {
        fm_decoder_stats before, after;
        fm_decoder_get_stats(d, &before);
        CHECK(fm_decode(d, a.p, a.n, &img, &e) == FM_OK);
        CHECK(fm_decode(d, b.p, b.n, &img, &e) == FM_OK);
        CHECK(fm_decode(d, c.p, c.n, &img, &e) == FM_OK);
        fm_decoder_get_stats(d, &after);
        if (pass > 0)
            CHECK_MSG(after.grows == before.grows, "pass %d grew buffers", pass);
    }
    blob_free(&a);
    blob_free(&b);
    blob_free(&c);
}

static void on_alarm(int sig)
{
    (void)sig;
}

/* fm_decode_file on path, given at most 5 seconds: the alarm's signal (no restart)
 * ends an open or read that waits, so a decoder that would hang fails instead. */
static fm_status decode_file_in_time(fm_decoder *d, const char *path, fm_image *img,
                                     fm_error *e)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &old);
    alarm(5);
    fm_status st = fm_decode_file(d, path, img, e);
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    return st;
}

static void test_files(fm_decoder *d, const char *dir)
{
    char path[600];
    fm_image img, img2;
    fm_error e = {0};
    const int w = 60, h = 40;
    uint8_t *src = make_pattern(w, h);
    fm_image s = {.w = w, .h = h, .stride = (size_t)w * 3, .data = src};

    snprintf(path, sizeof path, "%s/pattern.jpg", dir);
    CHECK_MSG(fm_image_write_jpeg(&s, path, 95, &e) == FM_OK, "%s", fm_error_text(&e));
    CHECK_MSG(fm_decode_file(d, path, &img, &e) == FM_OK, "%s", fm_error_text(&e));
    diff df = compare(&img, src, w, h);
    CHECK_MSG(df.mean < 2.0, "write/read: mean %.2f max %d", df.mean, df.max);

    /* the file reader gives what fm_decode gives */
    uint8_t *viafile = pack(&img);
    size_t n = 0;
    uint8_t *buf = fm_test_read_file(path, &n);
    CHECK(fm_decode(d, buf, n, &img2, &e) == FM_OK);
    CHECK(compare(&img2, viafile, w, h).max == 0);
    free(viafile);

    fm_decoder *small = new_decoder(0, n - 1, 0);
    CHECK(fm_decode_file(small, path, &img, &e) == FM_ERR_LIMIT);
    CHECK_MSG(strncmp(e.msg, path, strlen(path)) == 0 && contains(e.msg, "max_bytes"), "%s",
              e.msg);
    fm_decoder_destroy(&small);

    CHECK(fm_image_write_jpeg(&s, path, 0, &e) == FM_ERR_INVALID);
    CHECK(fm_image_write_jpeg(&s, path, 101, &e) == FM_ERR_INVALID);
    CHECK(fm_image_write_jpeg(NULL, path, 90, &e) == FM_ERR_INVALID);
    snprintf(path, sizeof path, "%s/no/such/dir/x.jpg", dir);
    CHECK(fm_image_write_jpeg(&s, path, 90, &e) == FM_ERR_IO);
    CHECK(fm_decode_file(d, path, &img, &e) == FM_ERR_IO);
    CHECK_MSG(strncmp(e.msg, path, strlen(path)) == 0, "%s", e.msg);
    CHECK(fm_decode_file(d, dir, &img, &e) == FM_ERR_IO);

    /* a FIFO (opening it waits for a writer) and a device: refused by their type */
    snprintf(path, sizeof path, "%s/fifo.jpg", dir);
    CHECK(mkfifo(path, 0600) == 0);
    const char *others[] = {path, "/dev/null"};
    for (int k = 0; k < 2; k++) {
        char want[700];
        snprintf(want, sizeof want, "%s: not a regular file", others[k]);
        fm_status st = decode_file_in_time(d, others[k], &img, &e);
        CHECK_MSG(st == FM_ERR_IO && strcmp(e.msg, want) == 0, "%s: %s %s", others[k],
                  fm_status_to_string(st), e.msg);
    }

    /* a corrupt file: the path, then libjpeg's text */
    snprintf(path, sizeof path, "%s/cut.jpg", dir);
    if (buf)
        fm_test_write_file(path, buf, n / 2);
    CHECK(fm_decode_file(d, path, &img, &e) == FM_ERR_DECODE);
    CHECK_MSG(strncmp(e.msg, path, strlen(path)) == 0 && contains(e.msg, ": corrupt JPEG: "),
              "%s", e.msg);
    free(buf);
    free(src);
}

static int px_is(const fm_image *img, int x, int y, fm_rgb c)
{
    const uint8_t *p = img->data + (size_t)y * img->stride + (size_t)x * 3;
    return p[0] == c.r && p[1] == c.g && p[2] == c.b;
}

static void test_draw(void)
{
    const int w = 20, h = 12;
    const size_t stride = (size_t)w * 3 + 5; /* padding must stay untouched */
    uint8_t *buf = malloc(stride * h);
    fm_image img = {.w = w, .h = h, .stride = stride, .data = buf};
    const fm_rgb red = {255, 0, 0}, black = {0, 0, 0}, blue = {0, 0, 255};
    memset(buf, 0xAB, stride * h);
    for (int y = 0; y < h; y++)
        memset(buf + (size_t)y * stride, 0, (size_t)w * 3);

    fm_image_draw_rect(&img, 8, 6, 2, 2, 1, red); /* corners in any order */
    int ok = 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int inside = x >= 2 && x <= 8 && y >= 2 && y <= 6;
            int edge = inside && (x == 2 || x == 8 || y == 2 || y == 6);
            if (!px_is(&img, x, y, edge ? red : black))
                ok = 0;
        }
    CHECK_MSG(ok, "rectangle outline wrong");

    fm_image_draw_rect(&img, 10, 1, 14, 4, 100, blue); /* thicker than the box: filled */
    CHECK(px_is(&img, 12, 2, blue) && px_is(&img, 10, 1, blue) && px_is(&img, 14, 4, blue));
    CHECK(px_is(&img, 15, 2, black) && px_is(&img, 12, 5, black));

    fm_image_draw_rect(&img, -5, -5, 3, 3, 1, blue); /* clipped */
    CHECK(px_is(&img, 3, 0, blue) && px_is(&img, 0, 3, blue) && px_is(&img, 3, 3, blue));
    fm_image_draw_rect(&img, INT_MIN, INT_MIN, INT_MAX, INT_MAX, INT_MAX, red);
    fm_image_draw_rect(&img, 100, 100, 200, 200, 3, red);
    fm_image_draw_rect(&img, INT_MIN, 5, INT_MAX, 5, 1, red);
    CHECK(px_is(&img, 0, 5, red) && px_is(&img, w - 1, 5, red));

    memset(buf, 0xAB, stride * h);
    for (int y = 0; y < h; y++)
        memset(buf + (size_t)y * stride, 0, (size_t)w * 3);
    fm_image_draw_point(&img, 10, 6, 2, red);
    int count = 0, want = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            count += px_is(&img, x, y, red);
            int dx = x - 10, dy = y - 6;
            if (dx * dx + dy * dy <= 2 * 2 + 2) {
                want++;
                CHECK(px_is(&img, x, y, red));
            }
        }
    CHECK_MSG(count == want && want == 21, "disc: %d pixels, want %d", count, want);
    fm_image_draw_point(&img, 0, 0, 0, blue);
    CHECK(px_is(&img, 0, 0, blue) && px_is(&img, 1, 0, black));
    fm_image_draw_point(&img, w - 1, h - 1, 3, blue);
    fm_image_draw_point(&img, INT_MAX, INT_MIN, INT_MAX, blue);
    fm_image_draw_point(&img, -3, -3, -1, blue);
    fm_image_draw_point(NULL, 1, 1, 1, blue);
    fm_image_draw_rect(NULL, 1, 1, 2, 2, 1, blue);

    int pad_ok = 1;
    for (int y = 0; y < h; y++)
        for (size_t i = (size_t)w * 3; i < stride; i++)
            if (buf[(size_t)y * stride + i] != 0xAB)
                pad_ok = 0;
    CHECK_MSG(pad_ok, "drawing wrote into row padding");
    free(buf);
}

/* ---- PNG and WebP --------------------------------------------------------------- */

/* CRC-32 of PNG chunks (ISO 3309), for headers forged below. */
static uint32_t png_crc(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

/* A PNG of the w x h pattern made with libspng's encoder. ct: colour type (0 gray, 2
 * RGB, 3 palette, 4 gray + alpha, 6 RGBA); bd: 8 or 16 (palette 8); Adam7 when
 * interlaced; with an eXIf chunk of orientation o (byte order be) when o > 0.
 * *expect gets the RGB pixels the decoder must give before any orientation (16-bit
 * samples are v * 257, the usual widening of v, whose 8-bit reading is v). */
static blob make_png(int w, int h, int ct, int bd, int interlaced, int o, int be,
                     uint8_t **expect)
{
    uint8_t *src = make_pattern(w, h);
    const int ch = ct == 0 ? 1 : ct == 2 ? 3 : ct == 3 ? 1 : ct == 4 ? 2 : 4;
    const int bytes = bd / 8;
    const size_t npix = (size_t)w * h;
    uint8_t *raw = calloc(npix * ch * bytes, 1);
    uint8_t *want = malloc(npix * 3);
    struct spng_plte plte = {.n_entries = 16};
    for (int i = 0; i < 16; i++)
        plte.entries[i] = (struct spng_plte_entry){(uint8_t)(i * 16), (uint8_t)(255 - i * 9),
                                                   (uint8_t)(i * i), 0};
    if (!raw || !want)
        exit(1);
    for (size_t i = 0; i < npix; i++) {
        const uint8_t *s = src + i * 3;
        uint8_t v[4] = {s[0], s[1], s[2], (uint8_t)(1 + i % 255)}; /* alpha never 0 */
        if (ct == 0 || ct == 4)
            v[1] = v[2] = v[0];
        if (ct == 3) {
            const int k = (int)(i % 7 + i / (size_t)w % 9) % 16;
            want[i * 3] = plte.entries[k].red;
            want[i * 3 + 1] = plte.entries[k].green;
            want[i * 3 + 2] = plte.entries[k].blue;
            raw[i] = (uint8_t)k;
            continue;
        }
        memcpy(want + i * 3, v, 3);
        const uint8_t in[4] = {v[0], ct == 4 ? v[3] : v[1], v[2], v[3]};
        for (int c = 0; c < ch; c++) {
            if (bytes == 1) {
                raw[i * ch + c] = in[c];
            } else { /* host order; v * 257 is v to 8 bits by any rounding */
                const uint16_t x = (uint16_t)(in[c] * 257);
                memcpy(raw + (i * ch + c) * 2, &x, 2);
            }
        }
    }
    spng_ctx *c = spng_ctx_new(SPNG_CTX_ENCODER);
    struct spng_ihdr ih = {(uint32_t)w, (uint32_t)h, (uint8_t)bd, (uint8_t)ct, 0, 0,
                           (uint8_t)(interlaced ? SPNG_INTERLACE_ADAM7 : SPNG_INTERLACE_NONE)};
    int r = c ? spng_set_option(c, SPNG_ENCODE_TO_BUFFER, 1) : -1;
    if (!r)
        r = spng_set_ihdr(c, &ih);
    if (!r && ct == 3)
        r = spng_set_plte(c, &plte);
    uint8_t ex[64];
    if (!r && o > 0) {
        size_t n = exif_payload(ex, o, be);
        struct spng_exif e = {n - 6, (char *)ex + 6}; /* the TIFF structure alone */
        r = spng_set_exif(c, &e);
    }
    if (!r)
        r = spng_encode_image(c, raw, npix * ch * bytes, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    size_t n = 0;
    void *png = r ? NULL : spng_get_png_buffer(c, &n, &r);
    if (!png) {
        fprintf(stderr, "spng encode (type %d, depth %d): %s\n", ct, bd, spng_strerror(r));
        exit(1);
    }
    blob b = blob_copy(png, n);
    free(png);
    spng_ctx_free(c);
    free(raw);
    free(src);
    *expect = want;
    return b;
}

/* png with a chunk of type and data after IHDR, its length and CRC computed. */
static blob png_with_chunk(const blob *png, const char *type, const uint8_t *data, size_t n)
{
    const size_t at = 8 + 12 + 13; /* the signature, IHDR */
    blob b = {malloc(png->n + 12 + n), png->n + 12 + n};
    if (!b.p)
        exit(1);
    memcpy(b.p, png->p, at);
    uint8_t *c = b.p + at;
    put32(c, (uint32_t)n, 1);
    memcpy(c + 4, type, 4);
    memcpy(c + 8, data, n);
    put32(c + 8 + n, png_crc(c + 4, n + 4), 1);
    memcpy(c + 12 + n, png->p + at, png->n - at);
    return b;
}

/* Lossless (exact) or lossy WebP of the pattern; with alpha when alpha. */
static blob make_webp(int w, int h, int lossless, int alpha, uint8_t **expect)
{
    uint8_t *src = make_pattern(w, h);
    uint8_t *out = NULL;
    size_t n;
    if (alpha) {
        uint8_t *rgba = malloc((size_t)w * h * 4);
        if (!rgba)
            exit(1);
        for (size_t i = 0; i < (size_t)w * h; i++) {
            memcpy(rgba + i * 4, src + i * 3, 3);
            rgba[i * 4 + 3] = (uint8_t)(1 + i % 255); /* never 0: the RGB is kept */
        }
        n = lossless ? WebPEncodeLosslessRGBA(rgba, w, h, w * 4, &out)
                     : WebPEncodeRGBA(rgba, w, h, w * 4, 90, &out);
        free(rgba);
    } else {
        n = lossless ? WebPEncodeLosslessRGB(src, w, h, w * 3, &out)
                     : WebPEncodeRGB(src, w, h, w * 3, 90, &out);
    }
    if (!n) {
        fprintf(stderr, "WebP encode failed\n");
        exit(1);
    }
    blob b = blob_copy(out, n);
    WebPFree(out);
    *expect = src;
    return b;
}

static void le24(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
}

/* A simple (VP8 or VP8L) WebP file w x h rewritten as an extended one: a VP8X chunk
 * with flags, the image chunk, then extra chunk bytes (already framed) and, with
 * exif_n > 0, an EXIF chunk. */
static blob webp_extended(const blob *simple, int w, int h, uint8_t flags,
                          const uint8_t *exif, size_t exif_n)
{
    const size_t img = simple->n - 12, pad = exif_n & 1;
    const size_t n = 12 + 18 + img + (exif_n ? 8 + exif_n + pad : 0);
    blob b = {calloc(n, 1), n};
    if (!b.p)
        exit(1);
    memcpy(b.p, "RIFF", 4);
    put32(b.p + 4, (uint32_t)(n - 8), 0);
    memcpy(b.p + 8, "WEBP", 4);
    uint8_t *v = b.p + 12;
    memcpy(v, "VP8X", 4);
    put32(v + 4, 10, 0);
    v[8] = flags;
    le24(v + 12, (uint32_t)(w - 1));
    le24(v + 15, (uint32_t)(h - 1));
    memcpy(b.p + 30, simple->p + 12, img);
    if (exif_n) {
        uint8_t *e = b.p + 30 + img;
        memcpy(e, "EXIF", 4);
        put32(e + 4, (uint32_t)exif_n, 0);
        memcpy(e + 8, exif, exif_n);
    }
    return b;
}

/* Decodes b and checks it against the packed w x h RGB want: exact, or within a mean
 * of tol when tol > 0. */
static void check_decode(fm_decoder *d, const blob *b, const uint8_t *want, int w, int h,
                         double tol, const char *what)
{
    fm_image img;
    fm_error e = {0};
    fm_status st = fm_decode(d, b->p, b->n, &img, &e);
    CHECK_MSG(st == FM_OK, "%s: %s", what, fm_error_text(&e));
    if (st)
        return;
    CHECK_MSG(img.w == w && img.h == h && img.stride == (size_t)w * 3 && img.orig_w == w &&
                  img.orig_h == h && img.scale_num == 1 && img.scale_denom == 1 &&
                  img.orientation == 1,
              "%s: %dx%d stride %zu, orig %dx%d, scale %d/%d, orientation %d", what, img.w,
              img.h, img.stride, img.orig_w, img.orig_h, img.scale_num, img.scale_denom,
              img.orientation);
    diff df = compare(&img, want, w, h);
    if (tol > 0)
        CHECK_MSG(df.mean < tol, "%s: mean difference %.2f (max %d)", what, df.mean, df.max);
    else
        CHECK_MSG(df.max == 0, "%s: differs by up to %d", what, df.max);
}

/* Every colour type, both depths, interlaced or not: the same RGB as the pixels put
 * in (16 bits read as their high byte, alpha dropped, palettes looked up). */
static void test_png(fm_decoder *d)
{
    static const struct {
        int ct, bd;
        const char *name;
    } kinds[] = {{2, 8, "RGB"},       {2, 16, "RGB 16-bit"}, {6, 8, "RGBA"},
                 {6, 16, "RGBA 16-bit"}, {0, 8, "gray"},     {0, 16, "gray 16-bit"},
                 {4, 8, "gray + alpha"}, {3, 8, "palette"}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        for (int il = 0; il <= 1; il++) {
            uint8_t *want;
            const int w = 37, h = 23; /* odd sizes: every Adam7 pass partly filled */
            blob b = make_png(w, h, kinds[k].ct, kinds[k].bd, il, 0, 0, &want);
            char what[64];
            snprintf(what, sizeof what, "PNG %s%s", kinds[k].name, il ? ", interlaced" : "");
            check_decode(d, &b, want, w, h, 0, what);
            free(want);
            blob_free(&b);
        }
}

/* PNG eXIf and WebP EXIF orientations, all eight in both byte orders, as for JPEG; each
 * also behind JPEG's "Exif\0\0", which some writers put in both. */
static void test_png_webp_orientation(fm_decoder *d)
{
    const int w = 30, h = 20;
    uint8_t *want;
    blob simple = make_webp(w, h, 1, 0, &want);
    for (int be = 0; be <= 1; be++)
        for (int o = 1; o <= 8; o++) {
            for (int fmt = 0; fmt < 4; fmt++) {
                blob b;
                uint8_t *pix = NULL;
                if (fmt == 0) {
                    b = make_png(w, h, 2, 8, 0, o, be, &pix);
                } else if (fmt == 3) { /* libspng's encoder takes no "Exif\0\0" */
                    uint8_t ex[64];
                    size_t n = exif_payload(ex, o, be);
                    blob plain = make_png(w, h, 2, 8, 0, 0, be, &pix);
                    b = png_with_chunk(&plain, "eXIf", ex, n);
                    blob_free(&plain);
                } else { /* WebP's EXIF with and without JPEG's "Exif\0\0" in front */
                    uint8_t ex[64];
                    size_t n = exif_payload(ex, o, be);
                    const int skip = fmt == 1 ? 6 : 0;
                    b = webp_extended(&simple, w, h, 0x08, ex + skip, n - (size_t)skip);
                }
                int ew, eh;
                uint8_t *up = upright(pix ? pix : want, w, h, (size_t)w * 3, o, &ew, &eh);
                fm_image img;
                fm_error e = {0};
                fm_status st = fm_decode(d, b.p, b.n, &img, &e);
                static const char *const names[] = {"PNG", "WebP", "WebP (Exif\\0\\0)",
                                                    "PNG (Exif\\0\\0)"};
                const char *name = names[fmt];
                CHECK_MSG(st == FM_OK && img.orientation == o && img.w == ew && img.h == eh &&
                              img.orig_w == ew && img.orig_h == eh,
                          "%s orientation %d %s: %s, reported %d, %dx%d", name, o,
                          be ? "MM" : "II", fm_error_text(&e), img.orientation, img.w, img.h);
                diff df = compare(&img, up, ew, eh);
                CHECK_MSG(df.max == 0, "%s orientation %d %s: differs by up to %d", name, o,
                          be ? "MM" : "II", df.max);
                free(up);
                free(pix);
                blob_free(&b);
            }
        }
    free(want);
    blob_free(&simple);
}

static void test_webp(fm_decoder *d)
{
    const int w = 41, h = 27;
    for (int alpha = 0; alpha <= 1; alpha++) {
        uint8_t *want;
        blob b = make_webp(w, h, 1, alpha, &want);
        check_decode(d, &b, want, w, h, 0, alpha ? "WebP lossless RGBA" : "WebP lossless");
        blob_free(&b);
        free(want);
        /* larger, so the quadrants' hard colour edges (4:2:0 chroma) weigh less */
        b = make_webp(4 * w, 4 * h, 0, alpha, &want);
        check_decode(d, &b, want, 4 * w, 4 * h, 3.0, alpha ? "WebP lossy RGBA" : "WebP lossy");
        blob_free(&b);
        free(want);
    }
    /* extended, without metadata: the same pixels */
    uint8_t *want;
    blob simple = make_webp(w, h, 1, 0, &want);
    blob b = webp_extended(&simple, w, h, 0, NULL, 0);
    check_decode(d, &b, want, w, h, 0, "WebP extended");
    blob_free(&b);
    /* animated: refused by name, whatever frames follow */
    b = webp_extended(&simple, w, h, 0x02, NULL, 0);
    fm_image img;
    fm_error e = {0};
    fm_status st = fm_decode(d, b.p, b.n, &img, &e);
    CHECK_MSG(st == FM_ERR_UNSUPPORTED &&
                  strcmp(e.msg, "unsupported format: animated WebP") == 0,
              "animated WebP: %s %s", fm_status_to_string(st), e.msg);
    CHECK(img.data == NULL);
    blob_free(&b);
    /* an EXIF chunk whose size runs past the file: orientation 1, pixels as stored */
    uint8_t ex[64];
    size_t n = exif_payload(ex, 6, 0);
    b = webp_extended(&simple, w, h, 0x08, ex + 6, n - 6);
    put32(b.p + b.n - (n - 6) - 4, 0x7FFFFFF0u, 0);
    st = fm_decode(d, b.p, b.n, &img, &e);
    CHECK_MSG(st != FM_OK || (img.orientation == 1 && img.w == w),
              "EXIF past the end: %s, orientation %d", fm_status_to_string(st),
              img.orientation);
    blob_free(&b);
    blob_free(&simple);
    free(want);
}

/* Cut at every length and with bytes changed: an error, or (cut after the image data)
 * the very pixels of the whole file. Never partial pixels. */
static void test_png_webp_damage(fm_decoder *d)
{
    const int w = 33, h = 21;
    for (int fmt = 0; fmt < 3; fmt++) {
        uint8_t *want;
        blob b = fmt == 0 ? make_png(w, h, 2, 8, 1, 0, 0, &want)
                          : make_webp(w, h, fmt == 1, 0, &want);
        fm_image img;
        fm_error e = {0};
        CHECK(fm_decode(d, b.p, b.n, &img, &e) == FM_OK);
        uint8_t *full = pack(&img);
        int bad = 0, ok = 0;
        const char *prefix = fmt == 0 ? "corrupt PNG: " : "corrupt WebP: ";
        for (size_t n = 1; n < b.n; n++) {
            /* the decoder's buffer scribbled over first, so rows a cut decode did not
             * write cannot pass for the whole file's */
            if (fm_decode(d, b.p, b.n, &img, &e) == FM_OK)
                memset(img.data, 0x55, img.stride * (size_t)img.h);
            fm_status st = fm_decode(d, b.p, n, &img, &e);
            if (st == FM_OK) {
                ok++;
                if (compare(&img, full, w, h).max != 0)
                    bad++;
            } else if (n >= 16 &&
                       (st != FM_ERR_DECODE || strncmp(e.msg, prefix, strlen(prefix)))) {
                bad++;
                fprintf(stderr, "cut at %zu: %s %s\n", n, fm_status_to_string(st), e.msg);
            }
        }
        CHECK_MSG(bad == 0, "%s cut short: %d wrong outcomes (%d decoded)",
                  fmt == 0 ? "PNG" : "WebP", bad, ok);
        /* the full size still decodes after all those failures */
        CHECK(fm_decode(d, b.p, b.n, &img, &e) == FM_OK && compare(&img, full, w, h).max == 0);
        if (fmt == 0) { /* a changed byte in the image data: the CRC says so */
            uint8_t *idat = NULL;
            for (size_t i = 0; !idat && i + 16 < b.n; i++)
                if (memcmp(b.p + i, "IDAT", 4) == 0)
                    idat = b.p + i;
            CHECK(idat != NULL);
            if (idat) {
                idat[10] ^= 0x20;
                fm_status st = fm_decode(d, b.p, b.n, &img, &e);
                CHECK_MSG(st == FM_ERR_DECODE && contains(e.msg, "corrupt PNG"), "%s %s",
                          fm_status_to_string(st), e.msg);
            }
        }
        free(full);
        free(want);
        blob_free(&b);
    }
}

/* max_pixels and the largest side from the header, before any pixel buffer. */
static void test_png_webp_limits(void)
{
    /* a PNG whose IHDR declares 30000x30000 (with a correct CRC), then nothing */
    uint8_t png[33] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13,
                       'I',  'H', 'D', 'R'};
    const struct {
        uint32_t w, h;
        const char *want[3];
    } forged[] = {{30000, 30000, {"30000x30000", "900000000", "100000000"}},
                  {70000, 2, {"70000x2", "largest side", "65535"}}};
    for (size_t i = 0; i < 2; i++) {
        put32(png + 16, forged[i].w, 1);
        put32(png + 20, forged[i].h, 1);
        png[24] = 8;
        png[25] = 2;
        put32(png + 29, png_crc(png + 12, 17), 1);
        fm_decoder *d = new_decoder(0, 0, 0);
        fm_image img;
        fm_error e = {0};
        fm_status st = fm_decode(d, png, sizeof png, &img, &e);
        CHECK_MSG(st == FM_ERR_LIMIT && contains(e.msg, forged[i].want[0]) &&
                      contains(e.msg, forged[i].want[1]) && contains(e.msg, forged[i].want[2]),
                  "forged PNG %ux%u: %s %s", forged[i].w, forged[i].h,
                  fm_status_to_string(st), e.msg);
        fm_decoder_stats s;
        fm_decoder_get_stats(d, &s);
        CHECK_MSG(s.buffer_bytes == 0, "allocated %zu bytes", s.buffer_bytes);
        fm_decoder_destroy(&d);
    }
    /* exactly at the pixel limit passes, one below fails; the same for WebP */
    for (int fmt = 0; fmt < 2; fmt++) {
        uint8_t *want;
        blob b = fmt ? make_webp(64, 48, 1, 0, &want) : make_png(64, 48, 2, 8, 0, 0, 0, &want);
        fm_decoder *d = new_decoder(64 * 48, 0, 0);
        fm_image img;
        fm_error e = {0};
        CHECK(fm_decode(d, b.p, b.n, &img, &e) == FM_OK);
        fm_decoder_destroy(&d);
        d = new_decoder(64 * 48 - 1, 0, 0);
        CHECK_MSG(fm_decode(d, b.p, b.n, &img, &e) == FM_ERR_LIMIT &&
                      contains(e.msg, "64x48") && contains(e.msg, "3071"),
                  "%s: %s", fmt ? "WebP" : "PNG", e.msg);
        fm_decoder_stats s;
        fm_decoder_get_stats(d, &s);
        CHECK(s.buffer_bytes == 0);
        fm_decoder_destroy(&d);
        free(want);
        blob_free(&b);
    }
}

/* ---- HEIC and AVIF -------------------------------------------------------------- */

/* The w x h pattern as a HEIF file, HEVC (HEIC) or AV1 (AVIF), quality 95, through
 * libheif's own encoders (x265, aom). *expect gets the pattern. */
static blob make_heif(int w, int h, int av1, uint8_t **expect)
{
    uint8_t *src = make_pattern(w, h);
    blob b = {NULL, 0};
    if (fm_test_heif_encode(src, w, h, av1, 95, &b.p, &b.n) != 0)
        exit(1);
    *expect = src;
    return b;
}

/* f with an irot property of angle (x 90 degrees anticlockwise) on its primary image. */
static blob heif_with_irot(const blob *f, int angle)
{
    blob b = {NULL, 0};
    if (fm_test_heif_add_irot(f->p, f->n, angle, &b.p, &b.n) != 0)
        exit(1);
    return b;
}

/* A copy of HEIC f with its grid record number record (0: the first in idat; each is
 * version 0 with 16-bit fields, 8 bytes) declaring 65534 x 65534: refused by the pixel
 * limit before any pixel buffer (libheif checks a side, not the area, and spent over
 * 30 s filling 12.9 GB on such a grid). */
static void check_forged_grid(const blob *f, int record, const char *what)
{
    blob g = blob_copy(f->p, f->n);
    const size_t at = 8 + 8 * (size_t)record; /* the record, from "idat" */
    int forged = 0;
    for (size_t i = 4; i + at + 8 <= g.n && !forged; i++)
        if (memcmp(g.p + i, "idat", 4) == 0 && g.p[i + at - 4] == 0 &&
            g.p[i + at - 3] == 0) { /* version 0, flags 0 */
            g.p[i + at] = g.p[i + at + 2] = 0xff; /* width, height */
            g.p[i + at + 1] = g.p[i + at + 3] = 0xfe;
            forged = 1;
        }
    CHECK_MSG(forged, "%s: no grid record %d in idat", what, record);
    fm_decoder *fresh = new_decoder(0, 0, 0);
    fm_image img;
    fm_error e = {0};
    fm_status st = fm_decode(fresh, g.p, g.n, &img, &e);
    fm_decoder_stats gs;
    fm_decoder_get_stats(fresh, &gs);
    CHECK_MSG(st == FM_ERR_LIMIT && contains(e.msg, "65534x65534") && gs.buffer_bytes == 0,
              "%s of 65534x65534: %s %s", what, fm_status_to_string(st), e.msg);
    fm_decoder_destroy(&fresh);
    blob_free(&g);
}

/* Offsets of the bodies of the 'dimg' references in a HEIF file's iref (version 0:
 * 16-bit ids; body: from, count, to...), up to max; returns how many. */
static int dimg_bodies(const blob *b, size_t *at, int max)
{
    int k = 0;
    for (size_t i = 4; i + 10 <= b->n && k < max; i++)
        if (memcmp(b->p + i, "dimg", 4) == 0 && b->p[i - 4] == 0 && b->p[i - 3] == 0)
            at[k++] = i + 4;
    return k;
}

/* A HEIC with more grids than the primary: libheif writes an image with alpha as a
 * grid of HEVC tiles and its alpha as a second grid. It decodes (the colour, alpha
 * dropped); the second grid's output size meets the pixel limit before libheif
 * decodes anything; a grid made of a grid (the first grid's tile pointed at the
 * second grid) is refused by the items. */
static void test_heif_second_grid(fm_decoder *d)
{
    const int w = 64, h = 48;
    uint8_t *want = make_pattern(w, h);
    uint8_t *rgba = malloc((size_t)w * h * 4);
    for (int i = 0; i < w * h; i++) {
        memcpy(rgba + 4 * (size_t)i, want + 3 * (size_t)i, 3);
        rgba[4 * (size_t)i + 3] = (uint8_t)(i % 256); /* alpha of every value */
    }
    blob b = {NULL, 0};
    if (fm_test_heif_encode_rgba(rgba, w, h, 95, &b.p, &b.n) != 0)
        exit(1);
    free(rgba);
    size_t at[4];
    const int refs = dimg_bodies(&b, at, 4);
    int grids = 0;
    for (size_t i = 12; i + 4 <= b.n; i++)
        grids += memcmp(b.p + i, "grid", 4) == 0 && memcmp(b.p + i - 12, "infe", 4) == 0;
    CHECK_MSG(grids == 2 && refs == 2, "RGBA HEIC: %d grids, %d dimg references (2, 2: "
              "the colour's and the alpha's)", grids, refs);
    fm_image img;
    fm_error e = {0};
    fm_status st = fm_decode(d, b.p, b.n, &img, &e);
    CHECK_MSG(st == FM_OK && img.w == w && img.h == h, "RGBA HEIC (two grids): %s %s",
              fm_status_to_string(st), e.msg);
    if (st == FM_OK) {
        diff df = compare(&img, want, w, h);
        CHECK_MSG(df.mean < 3.0, "RGBA HEIC: mean difference %.2f from the colours (max %d)",
                  df.mean, df.max);
    }
    /* the alpha grid (the second record in idat) made 65534 x 65534 */
    check_forged_grid(&b, 1, "RGBA HEIC, alpha grid");
    /* the colour grid's first tile pointed at the alpha grid: a grid of a grid */
    if (refs == 2) {
        blob nest = blob_copy(b.p, b.n);
        memcpy(nest.p + at[0] + 4, nest.p + at[1], 2); /* first target := second source */
        st = fm_decode(d, nest.p, nest.n, &img, &e);
        CHECK_MSG(st == FM_ERR_UNSUPPORTED &&
                      strcmp(e.msg, "unsupported HEIC: a grid holds an item of type 'grid'") ==
                          0,
                  "grid of a grid: %s %s", fm_status_to_string(st), e.msg);
        blob_free(&nest);
    }
    blob_free(&b);
    free(want);
}

/* HEIC and AVIF through libheif: close to the pattern; the file's rotation applied
 * (each irot angle gives the upright view EXIF orientations 8, 3 and 6 name); cut
 * short at many lengths: an error, never pixels; the pixel limit from the header. */
static void test_heif(fm_decoder *d)
{
    /* The fuzzer's: a grid whose tile is an overlay, 3 KB that made libheif 1.15
     * allocate gigabytes. Refused by its items, before libheif decodes it. */
    char path[1024];
    size_t bomb_n = 0;
    char *bomb = fm_test_read_file(
        fm_test_source_path(path, sizeof path, "tests/fuzz/regress/heic-grid-of-overlay.heic"),
        &bomb_n);
    CHECK_MSG(bomb != NULL, "%s: cannot read", path);
    if (bomb) {
        fm_image img;
        fm_error e = {0};
        fm_status st = fm_decode(d, (const uint8_t *)bomb, bomb_n, &img, &e);
        CHECK_MSG(st == FM_ERR_UNSUPPORTED &&
                      strcmp(e.msg,
                             "unsupported HEIC: the file holds an item of type 'iovl'") == 0,
                  "grid of an overlay: %s %s", fm_status_to_string(st), e.msg);
        free(bomb);
    }

    const int w = 64, h = 48;
    for (int av1 = 0; av1 <= 1; av1++) {
        const char *name = av1 ? "AVIF" : "HEIC";
        uint8_t *want;
        blob b = make_heif(w, h, av1, &want);
        fm_image img;
        fm_error e = {0};
        fm_status st = fm_decode(d, b.p, b.n, &img, &e);
        CHECK_MSG(st == FM_OK && img.w == w && img.h == h && img.orientation == 1 &&
                      img.orig_w == w && img.orig_h == h && img.scale_num == 1,
                  "%s: %s %s, %dx%d", name, fm_status_to_string(st), e.msg, img.w, img.h);
        diff df = compare(&img, want, w, h);
        CHECK_MSG(df.mean < 3.0, "%s: mean difference %.2f (max %d)", name, df.mean, df.max);
        uint8_t *plain = st == FM_OK ? pack(&img) : NULL;

        static const int exif_of_irot[4] = {1, 8, 3, 6};
        for (int angle = 0; angle < 4 && plain; angle++) {
            blob r = heif_with_irot(&b, angle);
            int ew, eh;
            uint8_t *up = upright(plain, w, h, (size_t)w * 3, exif_of_irot[angle], &ew, &eh);
            st = fm_decode(d, r.p, r.n, &img, &e);
            CHECK_MSG(st == FM_OK && img.w == ew && img.h == eh && img.orig_w == ew &&
                          img.orientation == 1,
                      "%s irot %d: %s %s, %dx%d", name, angle, fm_status_to_string(st),
                      e.msg, img.w, img.h);
            diff dr = compare(&img, up, ew, eh);
            CHECK_MSG(dr.max == 0,
                      "%s irot %d: differs from the turned plain decode by up to %d", name,
                      angle, dr.max);
            free(up);
            blob_free(&r);
        }

        int bad = 0, ok = 0;
        const size_t step = b.n / 97 + 1;
        for (size_t n = 1; n < b.n; n += (n + 64 < b.n ? step : 1)) {
            if (fm_decode(d, b.p, b.n, &img, &e) == FM_OK)
                memset(img.data, 0x55, img.stride * (size_t)img.h);
            st = fm_decode(d, b.p, n, &img, &e);
            if (st == FM_OK) {
                ok++;
                if (!plain || compare(&img, plain, w, h).max != 0)
                    bad++;
            } else if (n >= 12 && (st != FM_ERR_DECODE || !contains(e.msg, name) ||
                                   strchr(e.msg, '\n'))) { /* one line, libheif's text */
                bad++;
                fprintf(stderr, "%s cut at %zu: %s %s\n", name, n, fm_status_to_string(st),
                        e.msg);
            }
        }
        CHECK_MSG(bad == 0, "%s cut short: %d wrong outcomes (%d decoded)", name, bad, ok);

        /* libheif writes HEIC as a grid (the primary item) of HEVC tiles, AVIF as one
         * AV1 item. A tile renamed an overlay or an identity transform, and the
         * primary item renamed so: refused by the items, before libheif decodes */
        static const char *const renames[][2] = {{"hvc1", "the file holds"},
                                                 {"grid", "the primary image is"},
                                                 {"av01", "the primary image is"}};
        for (size_t r = 0; r < 3; r++) {
            if ((r < 2) == av1)
                continue;
            for (int k = 0; k < 2; k++) {
                blob rn = blob_copy(b.p, b.n);
                int renamed = 0;
                for (size_t i = 12; i + 4 <= rn.n && !renamed; i++)
                    if (memcmp(rn.p + i, renames[r][0], 4) == 0 &&
                        memcmp(rn.p + i - 12, "infe", 4) == 0) { /* infe version 2 */
                        memcpy(rn.p + i, k ? "iden" : "iovl", 4);
                        renamed = 1;
                    }
                CHECK_MSG(renamed, "%s: no '%s' item", name, renames[r][0]);
                st = fm_decode(d, rn.p, rn.n, &img, &e);
                char want_msg[96];
                snprintf(want_msg, sizeof want_msg, "unsupported %s: %s an item of type '%s'",
                         name, renames[r][1], k ? "iden" : "iovl");
                CHECK_MSG(st == FM_ERR_UNSUPPORTED && strcmp(e.msg, want_msg) == 0,
                          "%s '%s' renamed: %s %s", name, renames[r][0],
                          fm_status_to_string(st), e.msg);
                blob_free(&rn);
            }
        }

        /* the grid's output size made 65534 x 65534 (libheif checks a side, not the
         * area, and spent over 30 s filling 12.9 GB on it): the pixel limit, first */
        if (!av1)
            check_forged_grid(&b, 0, "HEIC grid");

        fm_decoder *lim = new_decoder((uint64_t)w * h - 1, 0, 0);
        st = fm_decode(lim, b.p, b.n, &img, &e);
        fm_decoder_stats s;
        fm_decoder_get_stats(lim, &s);
        CHECK_MSG(st == FM_ERR_LIMIT && contains(e.msg, "64x48") && s.buffer_bytes == 0,
                  "%s over max_pixels: %s %s, %zu bytes", name, fm_status_to_string(st), e.msg,
                  s.buffer_bytes);
        fm_decoder_destroy(&lim);
        free(plain);
        free(want);
        blob_free(&b);
    }
}

/* ---- TIFF ----------------------------------------------------------------------- */

enum {
    TIF_RGB, TIF_RGB16, TIF_GRAY, TIF_PALETTE, TIF_CMYK, TIF_RGBA, TIF_FLOAT,
    TIF_RGBA_ASSOC,  /* associated (premultiplied) alpha */
    TIF_RGBA_PLANES, /* unassociated alpha, each sample in a plane of its own */
    TIF_RGBA16       /* unassociated alpha, 16 bits */
};

/* A TIFF of the w x h pattern written by libtiff (through a scratch file): kind, the
 * compression, orientation tag o (0: none), in tiles of 16 x 16 when tiled, else strips
 * of 7 rows (JPEG: one strip of up to 32). *expect gets the RGB the decoder must give
 * before orientation. Every file has a Software tag, CMYK ones InkNames. Alpha is 0,
 * 85, 170, 255 in turn: the colour stored with it must come out as it is. */
static blob make_tiff(int w, int h, int kind, int compression, int o, int tiled,
                      uint8_t **expect)
{
    char path[512];
    if (fm_test_tmpdir(path, sizeof path - 16, "tiff") != 0)
        exit(1);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", path);
    strcat(path, "/t.tif");
    uint8_t *src = make_pattern(w, h), *want = malloc((size_t)w * h * 3);
    const int alpha = kind == TIF_RGBA || kind == TIF_RGBA_ASSOC ||
                      kind == TIF_RGBA_PLANES || kind == TIF_RGBA16;
    const int spp = kind == TIF_CMYK || alpha ? 4
                    : kind == TIF_GRAY || kind == TIF_PALETTE || kind == TIF_FLOAT ? 1 : 3;
    const int bps = kind == TIF_RGB16 || kind == TIF_RGBA16 ? 16
                    : kind == TIF_FLOAT                     ? 32
                                                            : 8;
    const int planes = kind == TIF_RGBA_PLANES ? spp : 1;
    const size_t row_bytes = (size_t)w * spp * bps / 8;
    uint8_t *pix = calloc((size_t)h, row_bytes);
    uint16_t cmap[3][256];
    for (int i = 0; i < 256; i++) {
        cmap[0][i] = (uint16_t)((i * 37 % 256) * 257);
        cmap[1][i] = (uint16_t)((255 - i) * 257);
        cmap[2][i] = (uint16_t)((i * i % 256) * 257);
    }
    if (!want || !pix)
        exit(1);
    for (size_t i = 0; i < (size_t)w * h; i++) {
        const uint8_t *s = src + 3 * i;
        uint8_t *e = want + 3 * i;
        switch (kind) {
        case TIF_RGB:
        case TIF_RGBA:
        case TIF_RGBA_ASSOC:
        case TIF_RGBA_PLANES:
            memcpy(pix + i * spp, s, 3);
            if (alpha)
                pix[i * spp + 3] = (uint8_t)(i % 4 * 85);
            memcpy(e, s, 3);
            break;
        case TIF_RGB16:
        case TIF_RGBA16:
            for (int c = 0; c < spp; c++) {
                const uint16_t v = (uint16_t)((c < 3 ? s[c] : i % 4 * 85) * 257);
                memcpy(pix + (i * spp + c) * 2, &v, 2);
            }
            memcpy(e, s, 3);
            break;
        case TIF_GRAY:
            pix[i] = s[0];
            e[0] = e[1] = e[2] = s[0];
            break;
        case TIF_PALETTE:
            pix[i] = (uint8_t)(s[0] ^ s[1]);
            for (int c = 0; c < 3; c++)
                e[c] = (uint8_t)(cmap[c][pix[i]] >> 8);
            break;
        case TIF_CMYK: /* K 0: R = 255 - C, exactly, in libtiff's conversion */
            for (int c = 0; c < 3; c++) {
                pix[i * 4 + c] = (uint8_t)(255 - s[c]);
                e[c] = s[c];
            }
            pix[i * 4 + 3] = 0;
            break;
        default: {
            const float v = s[0] / 255.0f;
            memcpy(pix + i * 4, &v, 4);
            memcpy(e, s, 3);
        }
        }
    }
    TIFF *t = TIFFOpen(path, "w");
    if (!t)
        exit(1);
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)h);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)spp);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)bps);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG,
                 planes > 1 ? PLANARCONFIG_SEPARATE : PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_COMPRESSION, (uint16_t)compression);
    TIFFSetField(t, TIFFTAG_SOFTWARE, "facemill test");
    const uint16_t photo = kind == TIF_GRAY || kind == TIF_FLOAT ? PHOTOMETRIC_MINISBLACK
                           : kind == TIF_PALETTE ? PHOTOMETRIC_PALETTE
                           : kind == TIF_CMYK    ? PHOTOMETRIC_SEPARATED
                                                 : PHOTOMETRIC_RGB;
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, photo);
    if (kind == TIF_PALETTE)
        TIFFSetField(t, TIFFTAG_COLORMAP, cmap[0], cmap[1], cmap[2]);
    if (kind == TIF_CMYK) {
        static const char inks[] = "cyan\0magenta\0yellow\0black\0";
        TIFFSetField(t, TIFFTAG_INKSET, INKSET_CMYK);
        TIFFSetField(t, TIFFTAG_INKNAMES, (int)sizeof inks - 1, inks);
    }
    if (alpha) {
        const uint16_t extra =
            kind == TIF_RGBA_ASSOC ? EXTRASAMPLE_ASSOCALPHA : EXTRASAMPLE_UNASSALPHA;
        TIFFSetField(t, TIFFTAG_EXTRASAMPLES, 1, &extra);
    }
    if (kind == TIF_FLOAT)
        TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_IEEEFP);
    if (o)
        TIFFSetField(t, TIFFTAG_ORIENTATION, (uint16_t)o);
    int ok = 1;
    /* a pixel's bytes in one plane (px) and in the interleaved rows of pix (all) */
    const size_t px = (size_t)spp * bps / 8 / (size_t)planes, all = (size_t)spp * bps / 8;
    if (tiled) {
        const int T = 16;
        TIFFSetField(t, TIFFTAG_TILEWIDTH, (uint32_t)T);
        TIFFSetField(t, TIFFTAG_TILELENGTH, (uint32_t)T);
        uint8_t *tile = malloc((size_t)T * T * px);
        for (int pl = 0; pl < planes && ok; pl++)
            for (int ty = 0; ty < h && ok; ty += T)
                for (int tx = 0; tx < w && ok; tx += T) {
                    memset(tile, 0, (size_t)T * T * px);
                    for (int y = 0; y < T && ty + y < h; y++)
                        for (int x = 0; x < T && tx + x < w; x++)
                            memcpy(tile + ((size_t)y * T + x) * px,
                                   pix + (size_t)(ty + y) * row_bytes +
                                       (size_t)(tx + x) * all + (size_t)pl * px,
                                   px);
                    ok = TIFFWriteTile(t, tile, (uint32_t)tx, (uint32_t)ty, 0,
                                       (uint16_t)pl) >= 0;
                }
        free(tile);
    } else {
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP,
                     (uint32_t)(compression == COMPRESSION_JPEG ? 32 : 7));
        uint8_t *row = malloc((size_t)w * px);
        for (int pl = 0; pl < planes && ok; pl++)
            for (int y = 0; y < h && ok; y++) {
                for (int x = 0; x < w; x++)
                    memcpy(row + (size_t)x * px,
                           pix + (size_t)y * row_bytes + (size_t)x * all + (size_t)pl * px,
                           px);
                ok = TIFFWriteScanline(t, row, (uint32_t)y, (uint16_t)pl) >= 0;
            }
        free(row);
    }
    TIFFClose(t);
    if (!ok)
        exit(1);
    size_t n = 0;
    uint8_t *data = fm_test_read_file(path, &n);
    if (!data)
        exit(1);
    fm_test_remove_tree(dir);
    free(pix);
    free(src);
    *expect = want;
    return (blob){data, n};
}

/* Every kind and compression, strips and tiles, against the pixels written; the eight
 * orientations against the upright views; a float TIFF refused by name; cut short:
 * errors, never pixels; forged sizes refused before a buffer. */
static void test_tiff(fm_decoder *d)
{
    const int w = 37, h = 29;
    static const struct {
        int kind, comp;
        const char *name;
    } cases[] = {{TIF_RGB, COMPRESSION_NONE, "RGB"},
                 {TIF_RGB, COMPRESSION_LZW, "RGB LZW"},
                 {TIF_RGB, COMPRESSION_ADOBE_DEFLATE, "RGB Deflate"},
                 {TIF_RGB, COMPRESSION_PACKBITS, "RGB PackBits"},
                 {TIF_RGB16, COMPRESSION_LZW, "RGB 16-bit"},
                 {TIF_GRAY, COMPRESSION_ADOBE_DEFLATE, "gray"},
                 {TIF_PALETTE, COMPRESSION_NONE, "palette"},
                 {TIF_CMYK, COMPRESSION_LZW, "CMYK"},
                 {TIF_RGBA, COMPRESSION_NONE, "RGBA"},
                 {TIF_RGBA_ASSOC, COMPRESSION_NONE, "RGBA associated"},
                 {TIF_RGBA_PLANES, COMPRESSION_LZW, "RGBA planes"},
                 {TIF_RGBA16, COMPRESSION_ADOBE_DEFLATE, "RGBA 16-bit"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int tiled = 0; tiled <= 1; tiled++) {
            uint8_t *want;
            blob b = make_tiff(w, h, cases[i].kind, cases[i].comp, 0, tiled, &want);
            char what[64];
            snprintf(what, sizeof what, "TIFF %s%s", cases[i].name, tiled ? ", tiled" : "");
            check_decode(d, &b, want, w, h, 0, what);
            free(want);
            blob_free(&b);
        }
    uint8_t *plain;
    blob b = make_tiff(w, h, TIF_RGB, COMPRESSION_LZW, 0, 0, &plain);
    for (int o = 1; o <= 8; o++) {
        uint8_t *want;
        blob bo = make_tiff(w, h, TIF_RGB, COMPRESSION_LZW, o, o & 1, &want);
        int ew, eh;
        uint8_t *up = upright(plain, w, h, (size_t)w * 3, o, &ew, &eh);
        fm_image img;
        fm_error e = {0};
        fm_status st = fm_decode(d, bo.p, bo.n, &img, &e);
        CHECK_MSG(st == FM_OK && img.orientation == o && img.w == ew && img.h == eh &&
                      img.orig_w == ew && img.orig_h == eh,
                  "TIFF orientation %d: %s %s, reported %d, %dx%d", o,
                  fm_status_to_string(st), e.msg, img.orientation, img.w, img.h);
        diff df = compare(&img, up, ew, eh);
        CHECK_MSG(df.max == 0, "TIFF orientation %d: differs by up to %d", o, df.max);
        free(up);
        free(want);
        blob_free(&bo);
    }
    /* floating-point samples: libtiff's RGBA reader does not take them */
    uint8_t *want;
    blob fl = make_tiff(w, h, TIF_FLOAT, COMPRESSION_NONE, 0, 0, &want);
    fm_image img;
    fm_error e = {0};
    fm_status st = fm_decode(d, fl.p, fl.n, &img, &e);
    CHECK_MSG(st == FM_ERR_UNSUPPORTED && strncmp(e.msg, "unsupported TIFF: ", 18) == 0,
              "float TIFF: %s %s", fm_status_to_string(st), e.msg);
    free(want);
    blob_free(&fl);

    /* cut short at every length */
    int bad = 0, ok = 0;
    for (size_t n = 1; n < b.n; n++) {
        if (fm_decode(d, b.p, b.n, &img, &e) == FM_OK)
            memset(img.data, 0x55, img.stride * (size_t)img.h);
        st = fm_decode(d, b.p, n, &img, &e);
        if (st == FM_OK) {
            ok++;
            if (compare(&img, plain, w, h).max != 0)
                bad++;
        } else if (n >= 4 && (st != FM_ERR_DECODE || strncmp(e.msg, "corrupt TIFF: ", 14))) {
            bad++;
            fprintf(stderr, "TIFF cut at %zu: %s %s\n", n, fm_status_to_string(st), e.msg);
        }
    }
    CHECK_MSG(bad == 0, "TIFF cut short: %d wrong outcomes (%d decoded)", bad, ok);

    /* the pixel limit at and one under, and a header claiming 30000 x 30000 */
    fm_decoder *lim = new_decoder((uint64_t)w * h, 0, 0);
    CHECK(fm_decode(lim, b.p, b.n, &img, &e) == FM_OK);
    fm_decoder_destroy(&lim);
    lim = new_decoder((uint64_t)w * h - 1, 0, 0);
    st = fm_decode(lim, b.p, b.n, &img, &e);
    fm_decoder_stats s;
    fm_decoder_get_stats(lim, &s);
    CHECK_MSG(st == FM_ERR_LIMIT && contains(e.msg, "37x29") && s.buffer_bytes == 0,
              "TIFF over max_pixels: %s %s", fm_status_to_string(st), e.msg);
    fm_decoder_destroy(&lim);
    blob big = blob_copy(b.p, b.n);
    int found = 0;
    const uint32_t ifd = (uint32_t)big.p[4] | (uint32_t)big.p[5] << 8 |
                         (uint32_t)big.p[6] << 16 | (uint32_t)big.p[7] << 24;
    if (big.p[0] == 'I' && ifd + 2 < big.n) { /* little-endian, as libtiff writes here */
        const unsigned count = big.p[ifd] | big.p[ifd + 1] << 8;
        for (unsigned k = 0; k < count && ifd + 2 + 12 * (k + 1) <= big.n; k++) {
            uint8_t *en = big.p + ifd + 2 + 12 * k;
            const unsigned tag = en[0] | en[1] << 8, type = en[2] | en[3] << 8;
            if (tag == 256 || tag == 257) { /* width, length: SHORT or LONG */
                en[8] = 0x30;
                en[9] = 0x75; /* 30000 */
                if (type == 4)
                    en[10] = en[11] = 0;
                found++;
            }
        }
    }
    CHECK(found == 2);
    lim = new_decoder(0, 0, 0);
    st = fm_decode(lim, big.p, big.n, &img, &e);
    fm_decoder_get_stats(lim, &s);
    CHECK_MSG(st == FM_ERR_LIMIT && contains(e.msg, "30000x30000") && s.buffer_bytes == 0,
              "forged TIFF: %s %s (%zu bytes)", fm_status_to_string(st), e.msg, s.buffer_bytes);
    fm_decoder_destroy(&lim);
    blob_free(&big);
    free(plain);
    blob_free(&b);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* The 12-byte entry of tag in the first directory of a little-endian TIFF (libtiff
 * writes the host's order), or NULL. */
static uint8_t *tiff_entry(blob *b, unsigned tag)
{
    if (b->n < 8 || b->p[0] != 'I')
        return NULL;
    const uint32_t ifd = le32(b->p + 4);
    if (ifd > b->n - 2)
        return NULL;
    const unsigned count = b->p[ifd] | b->p[ifd + 1] << 8;
    for (unsigned k = 0; k < count && ifd + 2 + 12 * (k + 1) <= b->n; k++) {
        uint8_t *en = b->p + ifd + 2 + 12 * k;
        if ((unsigned)(en[0] | en[1] << 8) == tag)
            return en;
    }
    return NULL;
}

/* Where value i of a SHORT or LONG entry sits (in the entry when they fit, else at
 * its offset), and in *size its width. */
static uint8_t *tiff_value(blob *b, uint8_t *en, uint32_t i, int *size)
{
    *size = (en[2] | en[3] << 8) == 3 ? 2 : 4;
    const uint32_t count = le32(en + 4);
    uint8_t *v = (uint64_t)count * (uint32_t)*size <= 4 ? en + 8 : b->p + le32(en + 8);
    return v + (size_t)i * (size_t)*size;
}

static uint32_t tiff_get(blob *b, uint8_t *en, uint32_t i)
{
    int size;
    const uint8_t *v = tiff_value(b, en, i, &size);
    return size == 2 ? (uint32_t)(v[0] | v[1] << 8) : le32(v);
}

/* Damaged image data fails the image even when libtiff only warns: a JPEG strip cut
 * short (libjpeg's "Premature end of JPEG file"), PackBits runs longer than the strip
 * ("Discarding N bytes"). Warnings about tags (an unknown tag, an ASCII value without
 * its NUL) leave the pixels right and still decode. libtiff's three-line message on
 * NumberOfInks comes out as one line. */
static void test_tiff_damage(fm_decoder *d)
{
    const int w = 37, h = 29;
    fm_image img;
    fm_error e = {0};
    fm_status st;
    int size;

    uint8_t *want;
    blob jp = make_tiff(w, h, TIF_RGB, COMPRESSION_JPEG, 0, 0, &want);
    check_decode(d, &jp, want, w, h, 4.0, "TIFF JPEG");
    uint8_t *en = tiff_entry(&jp, TIFFTAG_STRIPBYTECOUNTS);
    CHECK_MSG(en && le32(en + 4) == 1, "TIFF JPEG: not one strip");
    if (en && le32(en + 4) == 1) {
        uint8_t *v = tiff_value(&jp, en, 0, &size);
        const uint32_t half = tiff_get(&jp, en, 0) / 2;
        v[0] = (uint8_t)half;
        v[1] = (uint8_t)(half >> 8);
        st = fm_decode(d, jp.p, jp.n, &img, &e);
        CHECK_MSG(st == FM_ERR_DECODE &&
                      strcmp(e.msg, "corrupt TIFF: Premature end of JPEG file") == 0,
                  "TIFF JPEG strip cut in half: %s %s", fm_status_to_string(st), e.msg);
    }
    free(want);
    blob_free(&jp);

    /* each run of the first strip made 128 repeats: more than the strip holds */
    blob pb = make_tiff(w, h, TIF_GRAY, COMPRESSION_PACKBITS, 0, 0, &want);
    check_decode(d, &pb, want, w, h, 0, "TIFF PackBits");
    uint8_t *offs = tiff_entry(&pb, TIFFTAG_STRIPOFFSETS);
    en = tiff_entry(&pb, TIFFTAG_STRIPBYTECOUNTS);
    CHECK(offs && en);
    if (offs && en) {
        const uint32_t at = tiff_get(&pb, offs, 0), n = tiff_get(&pb, en, 0);
        CHECK(n >= 6 && at <= pb.n && n <= pb.n - at);
        for (uint32_t k = 0; k + 1 < n && at + n <= pb.n; k += 2) {
            pb.p[at + k] = 0x81; /* -127: the next byte 128 times */
            pb.p[at + k + 1] = 0xaa;
        }
        st = fm_decode(d, pb.p, pb.n, &img, &e);
        CHECK_MSG(st == FM_ERR_DECODE &&
                      strncmp(e.msg, "corrupt TIFF: Discarding ", 25) == 0,
                  "TIFF PackBits overrun: %s %s", fm_status_to_string(st), e.msg);
    }
    free(want);
    blob_free(&pb);

    /* harmless warnings: Software's NUL overwritten; then the tag renumbered unknown */
    blob tg = make_tiff(w, h, TIF_RGB, COMPRESSION_LZW, 0, 0, &want);
    en = tiff_entry(&tg, TIFFTAG_SOFTWARE);
    CHECK_MSG(en && le32(en + 4) > 4, "TIFF: no Software tag");
    if (en && le32(en + 4) > 4) {
        tg.p[le32(en + 8) + le32(en + 4) - 1] = 'x';
        check_decode(d, &tg, want, w, h, 0, "TIFF ASCII tag without NUL");
        en[0] = 0xe8; /* 65000, a tag libtiff does not know */
        en[1] = 0xfd;
        check_decode(d, &tg, want, w, h, 0, "TIFF unknown tag");
    }
    free(want);
    blob_free(&tg);

    /* NumberOfInks 7 for InkNames of 4: libtiff's error runs over three lines */
    blob ink = make_tiff(w, h, TIF_CMYK, COMPRESSION_NONE, 0, 0, &want);
    en = tiff_entry(&ink, TIFFTAG_NUMBEROFINKS);
    CHECK_MSG(en && tiff_get(&ink, en, 0) == 4, "TIFF: no NumberOfInks of 4");
    if (en) {
        *tiff_value(&ink, en, 0, &size) = 7;
        st = fm_decode(d, ink.p, ink.n, &img, &e);
        int ctl = 0;
        for (const char *c = e.msg; *c; c++)
            ctl |= (unsigned char)*c < 0x20 || *c == 0x7f;
        const size_t len = strlen(e.msg);
        CHECK_MSG(st == FM_ERR_DECODE && !ctl && len > 0 && e.msg[len - 1] != ' ' &&
                      contains(e.msg, "Tag NumberOfInks: It is not possible to set the "
                                      "value 7 for NumberOfInks which is different"),
                  "TIFF NumberOfInks 7: %s [%s]", fm_status_to_string(st), e.msg);
    }
    free(want);
    blob_free(&ink);
}

/* ---- decode.formats -------------------------------------------------------------- */

/* f with every brand in its ftyp box (major and compatible) made brand; the coded
 * items stay what they are. */
static blob heif_rebranded(const blob *f, const char *brand)
{
    blob b = blob_copy(f->p, f->n);
    CHECK(b.n >= 16 && memcmp(b.p + 4, "ftyp", 4) == 0);
    const size_t box = b.n >= 16 ? (size_t)b.p[0] << 24 | (size_t)b.p[1] << 16 |
                                       (size_t)b.p[2] << 8 | b.p[3]
                                 : 0;
    for (size_t p = 8; p + 4 <= box && p + 4 <= b.n; p += 4)
        if (p != 12) /* the minor version */
            memcpy(b.p + p, brand, 4);
    return b;
}

/* decode.formats goes by a HEIF file's coded items, not its brands: HEVC branded
 * "avif" is HEIC, AV1 branded only "mif1" (which names no coding, and so was taken
 * for HEIC) is AVIF. */
static void test_formats_heif_brands(void)
{
    uint8_t *want;
    blob hevc = make_heif(32, 24, 0, &want);
    free(want);
    blob av1 = make_heif(32, 24, 1, &want);
    blob f[2] = {heif_rebranded(&hevc, "avif"), heif_rebranded(&av1, "mif1")};
    static const char *const what[2] = {"HEVC branded avif", "AV1 branded mif1"};
    static const unsigned coding[2] = {FM_FORMAT_HEIC, FM_FORMAT_AVIF};
    for (int k = 0; k < 2; k++)
        for (int only = 0; only < 3; only++) {
            fm_decode_opts o = {.formats = only == 0   ? FM_FORMAT_HEIC
                                           : only == 1 ? FM_FORMAT_AVIF
                                                       : 0};
            fm_decoder *d = NULL;
            fm_error e = {0};
            CHECK(fm_decoder_new(&d, &o, &e) == FM_OK);
            if (!d)
                continue;
            fm_image img;
            fm_decoder_stats before, after;
            fm_decoder_get_stats(d, &before);
            fm_status st = fm_decode(d, f[k].p, f[k].n, &img, &e);
            fm_decoder_get_stats(d, &after);
            const char *with = only == 0 ? "HEIC" : only == 1 ? "AVIF" : "all";
            if (o.formats == 0 || o.formats == coding[k]) {
                CHECK_MSG(st == FM_OK && img.w == 32 && img.h == 24, "%s with %s: %s %s",
                          what[k], with, fm_status_to_string(st), e.msg);
                if (st == FM_OK && k == 1) {
                    diff df = compare(&img, want, 32, 24);
                    CHECK_MSG(df.mean < 3.0, "%s: mean difference %.2f", what[k], df.mean);
                }
            } else {
                char want_msg[64];
                snprintf(want_msg, sizeof want_msg,
                         "format not enabled (decode.formats): %s", k ? "AVIF" : "HEIC");
                CHECK_MSG(st == FM_ERR_UNSUPPORTED && strcmp(e.msg, want_msg) == 0 &&
                              after.grows == before.grows,
                          "%s with only %s: %s %s", what[k], with, fm_status_to_string(st),
                          e.msg);
            }
            fm_decoder_destroy(&d);
        }
    free(want);
    blob_free(&f[0]);
    blob_free(&f[1]);
    blob_free(&hevc);
    blob_free(&av1);
}

/* A decoder that reads one format takes it and refuses each of the others by name,
 * before allocating anything; 0 reads all six. */
static void test_formats(void)
{
    static const struct {
        unsigned bit;
        const char *name;
    } f[] = {{FM_FORMAT_JPEG, "JPEG"}, {FM_FORMAT_PNG, "PNG"},   {FM_FORMAT_WEBP, "WebP"},
             {FM_FORMAT_HEIC, "HEIC"}, {FM_FORMAT_AVIF, "AVIF"}, {FM_FORMAT_TIFF, "TIFF"}};
    blob b[6];
    uint8_t *want;
    b[0] = rgb_jpeg(32, 24, 0);
    b[1] = make_png(32, 24, 2, 8, 0, 0, 0, &want);
    free(want);
    b[2] = make_webp(32, 24, 1, 0, &want);
    free(want);
    b[3] = make_heif(32, 24, 0, &want);
    free(want);
    b[4] = make_heif(32, 24, 1, &want);
    free(want);
    b[5] = make_tiff(32, 24, TIF_RGB, COMPRESSION_NONE, 0, 0, &want);
    free(want);
    for (int only = -1; only < 6; only++) {
        fm_decode_opts o = {.formats = only < 0 ? 0 : f[only].bit};
        fm_decoder *d = NULL;
        fm_error e = {0};
        CHECK(fm_decoder_new(&d, &o, &e) == FM_OK);
        for (int k = 0; k < 6 && d; k++) {
            fm_image img;
            fm_decoder_stats before, after;
            fm_decoder_get_stats(d, &before);
            fm_status st = fm_decode(d, b[k].p, b[k].n, &img, &e);
            fm_decoder_get_stats(d, &after);
            char want_msg[64];
            snprintf(want_msg, sizeof want_msg, "format not enabled (decode.formats): %s",
                     f[k].name);
            if (only < 0 || only == k)
                CHECK_MSG(st == FM_OK && img.w == 32 && img.h == 24, "%s with %s: %s %s",
                          f[k].name, only < 0 ? "all" : f[only].name, fm_status_to_string(st),
                          e.msg);
            else
                CHECK_MSG(st == FM_ERR_UNSUPPORTED && strcmp(e.msg, want_msg) == 0 &&
                              after.grows == before.grows,
                          "%s with only %s: %s %s", f[k].name, f[only].name,
                          fm_status_to_string(st), e.msg);
        }
        fm_decoder_destroy(&d);
    }
    for (int k = 0; k < 6; k++)
        blob_free(&b[k]);
}

/* ---- seed corpus ---------------------------------------------------------------- */

static void write_blob(const char *dir, const char *name, const blob *b)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s%s", dir, name, strchr(name, '.') ? "" : ".jpg");
    fm_test_write_file(path, b->p, b->n);
}

/* PNG, WebP, HEIC, AVIF and TIFF seeds: each PNG colour type, interlaced, with eXIf;
 * WebP lossless, lossy, with alpha, extended with EXIF; HEIF plain and turned (irot);
 * TIFF in strips and tiles, RGB, CMYK, palette, 16-bit, turned. */
static void write_png_webp_corpus(const char *dir)
{
    static const int kinds[][2] = {{2, 8}, {6, 16}, {0, 8}, {4, 8}, {3, 8}, {0, 16}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        uint8_t *want;
        blob b = make_png(24, 16, kinds[k][0], kinds[k][1], (int)(k & 1), k == 0 ? 6 : 0, 1,
                          &want);
        char name[32];
        snprintf(name, sizeof name, "png_%d_%d.png", kinds[k][0], kinds[k][1]);
        write_blob(dir, name, &b);
        blob_free(&b);
        free(want);
    }
    for (int k = 0; k < 4; k++) {
        uint8_t *want;
        blob b = make_webp(24, 16, k & 1, k >> 1, &want);
        char name[32];
        snprintf(name, sizeof name, "webp_%s_%d.webp", k & 1 ? "lossless" : "lossy", k >> 1);
        write_blob(dir, name, &b);
        if (k == 1) {
            uint8_t ex[64];
            size_t n = exif_payload(ex, 8, 0);
            blob x = webp_extended(&b, 24, 16, 0x08, ex + 6, n - 6);
            write_blob(dir, "webp_exif.webp", &x);
            blob_free(&x);
        }
        blob_free(&b);
        free(want);
    }
    for (int av1 = 0; av1 <= 1; av1++) {
        uint8_t *want;
        blob b = make_heif(32, 24, av1, &want);
        write_blob(dir, av1 ? "plain.avif" : "plain.heic", &b);
        blob r = heif_with_irot(&b, 3);
        write_blob(dir, av1 ? "irot3.avif" : "irot3.heic", &r);
        blob_free(&r);
        blob_free(&b);
        free(want);
    }
    static const int tiffs[][3] = {{TIF_RGB, COMPRESSION_LZW, 6},
                                   {TIF_CMYK, COMPRESSION_NONE, 0},
                                   {TIF_PALETTE, COMPRESSION_PACKBITS, 0},
                                   {TIF_RGB16, COMPRESSION_ADOBE_DEFLATE, 3}};
    for (size_t k = 0; k < sizeof tiffs / sizeof tiffs[0]; k++) {
        uint8_t *want;
        blob b = make_tiff(24, 16, tiffs[k][0], tiffs[k][1], tiffs[k][2], (int)(k & 1), &want);
        char name[32];
        snprintf(name, sizeof name, "tiff_%zu.tif", k);
        write_blob(dir, name, &b);
        blob_free(&b);
        free(want);
    }
}

static int write_corpus(const char *dir)
{
    mkdir(dir, 0777);
    blob plain = rgb_jpeg(32, 24, 0);
    write_blob(dir, "plain", &plain);
    for (int be = 0; be <= 1; be++)
        for (int o = 2; o <= 8; o++) {
            char name[32];
            snprintf(name, sizeof name, "orient%d_%s", o, be ? "mm" : "ii");
            blob b = with_orientation(&plain, o, be);
            write_blob(dir, name, &b);
            blob_free(&b);
        }
    uint8_t *src = make_pattern(32, 24);
    blob b = compress(src, 32, 24, TJPF_RGB, TJSAMP_GRAY, 90, 0);
    write_blob(dir, "gray", &b);
    blob_free(&b);
    b = compress(src, 32, 24, TJPF_RGB, TJSAMP_420, 75, TJFLAG_PROGRESSIVE);
    write_blob(dir, "progressive", &b);
    blob_free(&b);
    uint8_t cm[32 * 24 * 4];
    for (size_t i = 0; i < sizeof cm; i++)
        cm[i] = (uint8_t)(i * 7);
    b = compress(cm, 32, 24, TJPF_CMYK, TJSAMP_420, 90, 0);
    write_blob(dir, "ycck", &b);
    blob_free(&b);
    free(src);
    src = make_pattern(160, 120);
    b = compress(src, 160, 120, TJPF_RGB, TJSAMP_422, 60, 0);
    write_blob(dir, "larger", &b);
    blob_free(&b);
    free(src);
    blob_free(&plain);
    write_png_webp_corpus(dir);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--corpus") == 0)
        return write_corpus(argv[2]);

    fm_decoder *d = new_decoder(0, 0, 0);
    test_plain(d);
    test_orientations(d, 0, 0);                  /* baseline RGB */
    test_orientations(d, TJFLAG_PROGRESSIVE, 0); /* progressive */
    test_orientations(d, 0, 1);                  /* YCCK with Adobe marker */
    test_gray(d);
    test_cmyk_adobe(d);
    test_scaling();
    test_truncated(d);
    test_trailing_junk(d);
    test_not_jpeg(d);
    test_limits();
    test_bogus_exif(d);
    test_steady_state(d);
    test_draw();
    test_png(d);
    test_webp(d);
    test_png_webp_orientation(d);
    test_png_webp_damage(d);
    test_png_webp_limits();
    test_heif(d);
    test_heif_second_grid(d);
    test_tiff(d);
    test_tiff_damage(d);
    test_formats();
    test_formats_heif_brands();

    char dir[512];
    if (fm_test_tmpdir(dir, sizeof dir, "image") == 0) {
        test_files(d, dir);
        fm_test_remove_tree(dir);
    } else {
        CHECK_MSG(0, "mkdtemp %s failed", dir);
    }

    fm_decoder_stats st;
    fm_decoder_get_stats(d, &st);
    fprintf(stderr, "decoder: %llu images, %llu failures, %llu grows, %zu bytes held\n",
            (unsigned long long)st.images, (unsigned long long)st.failures,
            (unsigned long long)st.grows, st.buffer_bytes);
    fm_decoder_destroy(&d);
    return fm_test_done("test_image");
}
