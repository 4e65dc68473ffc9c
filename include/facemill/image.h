/* image.h - turning archive bytes into RGB pixels the detector can use, and the
 * little a "draw the boxes" debug output needs.
 *
 * JPEG (TurboJPEG 2 API, libjpeg-turbo 2.1), PNG (libspng), WebP (libwebp), HEIC and
 * AVIF (libheif 1.15: libde265, aom) and TIFF (libtiff 4.5, the first page) are
 * decoded, told apart by their first bytes, not the file name. Other formats are
 * recognised by their magic bytes so the error says what the file was ("unsupported
 * format: GIF") instead of a decoder's complaint.
 *
 * What a decode does, in order:
 *   1. sniff the format; enforce max_bytes;
 *   2. read the header; enforce max_pixels on the full header size, in 64 bits, and a
 *      largest side of 65535, before anything is allocated;
 *   3. JPEG: pick a DCT scale (1/1, 1/2, 1/4 or 1/8) so the long side stays >=
 *      target_side (the other formats decode at full size);
 *   4. decode: grayscale becomes R=G=B; CMYK/YCCK becomes RGB (Adobe APP14 files are
 *      read as inverted CMYK, the way Photoshop writes them and libjpeg-based readers
 *      take them; files without that marker as plain CMYK); PNG palettes are looked
 *      up and 16-bit samples read as their high byte; alpha is dropped (the colour
 *      stored with it kept as it is, whatever the alpha); an animated WebP is refused
 *      (FM_ERR_UNSUPPORTED, "unsupported format: animated WebP");
 *   5. apply the EXIF orientation (all 8 values: JPEG's APP1, PNG's eXIf before the
 *      image data and WebP's EXIF chunk, with or without JPEG's "Exif\0\0" in front,
 *      TIFF's Orientation tag) by rotating/flipping the pixels. HEIC and AVIF
 *      come out of libheif with the file's own rotation, mirroring and crop (irot,
 *      imir, clap) applied, tiles put together and HDR narrowed to 8 bits; their
 *      orientation is reported as 1. A HEIF file whose primary image is neither a
 *      coded image nor a grid of them, or that holds an overlay, an identity
 *      transform or a grid made of grids, is refused before libheif decodes it
 *      (FM_ERR_UNSUPPORTED: libheif 1.15 puts no limits on such derived images);
 *      other grids beside the primary (an alpha grid, a gain map) are allowed, and
 *      every grid's output size meets max_pixels first (libheif checks a side only).
 *
 * Corrupt data policy. PNG, WebP, HEIC, AVIF and TIFF fail on any decoder error (a
 * bad CRC, data cut short; libheif decodes strictly, libtiff stops at the first
 * error): "corrupt PNG: <libspng text>", "corrupt WebP: <libwebp status>", "corrupt
 * HEIC: <libheif text>", "corrupt TIFF: <libtiff's first error>". libtiff only warns
 * about some damaged image data (a JPEG strip cut short, PackBits runs longer than
 * the strip): such a warning fails the image too, "corrupt TIFF: Premature end of
 * JPEG file"; its warnings about tags (an unknown tag, ...) do not. A TIFF libtiff's
 * RGBA reader does not take (floating-point samples, ...) is FM_ERR_UNSUPPORTED,
 * "unsupported TIFF: <libtiff's reason>". A library's text is made one line: control
 * characters (line breaks, tabs) become a space, blanks at the ends go.
 * libjpeg recovers from many errors with only a warning and
 * fills what it could not decode with gray (a truncated file decodes "fine" with its
 * bottom half gray). Faces labelled from such pixels are wrong, so every libjpeg
 * warning is an FM_ERR_DECODE carrying libjpeg's text ("corrupt JPEG: Premature end
 * of JPEG file"). That includes a file whose only defect is a missing EOI marker.
 * One exception: "extraneous bytes before marker 0xd9" (junk between the last scan
 * and the end-of-image marker, common in camera files) is accepted, because libjpeg
 * reports it only after every scan has been decoded, so the pixels are complete.
 *
 * Threads: an fm_decoder is used by one thread at a time (one per worker thread).
 * fm_image_write_jpeg and the drawing helpers hold no shared state.
 */
#ifndef FACEMILL_IMAGE_H
#define FACEMILL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "facemill/config.h" /* FM_FORMAT_*, the formats decoded */
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Defaults used when an fm_decode_opts field is 0 (or the options pointer is NULL). */
#define FM_DECODE_DEFAULT_MAX_PIXELS 100000000ULL   /* 100 megapixels */
#define FM_DECODE_DEFAULT_MAX_BYTES (64u << 20)     /* 64 MiB of compressed input */

/* An 8-bit RGB image, pixels interleaved R,G,B, rows `stride` bytes apart.
 *
 * The struct never owns `data`: whoever fills it says how long the pixels live.
 * Images from fm_decode point into the decoder's buffer (see fm_decode).
 *
 * Coordinates map back to the original image as
 *     x_orig = x * scale_denom / scale_num,  y_orig = y * scale_denom / scale_num
 * (exact up to one scaled pixel: libjpeg rounds scaled sizes up). orig_w/orig_h are
 * the size after orientation and before scaling, i.e. the size a viewer shows. */
typedef struct fm_image {
    int w, h;                   /* size of `data` in pixels */
    size_t stride;              /* bytes from one row to the next, >= 3 * w */
    uint8_t *data;              /* w x h RGB pixels; not owned */
    int orig_w, orig_h;         /* displayed size at full resolution */
    int scale_num, scale_denom; /* JPEG's DCT scale: 1/1, 1/2, 1/4 or 1/8 (else 1/1) */
    int orientation;            /* EXIF orientation that was applied, 1..8 */
} fm_image;

/* Decoder settings. Zero-initialise and set what you need: 0 means the default. */
typedef struct fm_decode_opts {
    uint64_t max_pixels; /* largest width x height accepted from a header */
    size_t max_bytes;    /* largest compressed input accepted (bytes or file size) */
    int target_side;     /* JPEG: the long side detection works at (the detector's max_side);
                          * 0 decodes at full size. Otherwise the strongest reduction
                          * among 1/2, 1/4, 1/8 that keeps the long side >= target_side
                          * is used, and 1/1 when none does. */
    unsigned formats;    /* FM_FORMAT_* bits (config.h) of the formats decoded; 0: all.
                          * A format left out is FM_ERR_UNSUPPORTED ("format not
                          * enabled (decode.formats): HEIC") before its decoder sees a
                          * byte. A HEIF file is HEIC or AVIF by its coded images
                          * (HEVC, AV1), not by its brands; one holding both needs
                          * both. */
} fm_decode_opts;

/* Opaque: a TurboJPEG handle plus reusable buffers (the PNG, WebP, HEIF and TIFF
 * decoders are made per call). Not shared between threads. */
typedef struct fm_decoder fm_decoder;

/* Counters, for tests and the worker's stats line. */
typedef struct fm_decoder_stats {
    uint64_t images;      /* successful decodes */
    uint64_t failures;    /* decodes that returned an error */
    uint64_t grows;       /* times a buffer had to be (re)allocated */
    size_t buffer_bytes;  /* bytes currently held in pixel and file buffers */
} fm_decoder_stats;

/* Creates a decoder in *out. opts may be NULL (all defaults); it is copied.
 * Returns FM_OK, FM_ERR_INVALID (out NULL, negative target_side) or FM_ERR_NOMEM /
 * FM_ERR_INTERNAL (TurboJPEG init failed). On error *out is NULL.
 * Caller owns *out and releases it with fm_decoder_destroy. */
fm_status fm_decoder_new(fm_decoder **out, const fm_decode_opts *opts, fm_error *err);

/* Frees the decoder and its buffers and sets *d to NULL. Accepts NULL and a pointer
 * to NULL. Images returned by fm_decode become invalid. */
void fm_decoder_destroy(fm_decoder **d);

/* Copies the decoder's counters into *out. */
void fm_decoder_get_stats(const fm_decoder *d, fm_decoder_stats *out);

/* Decodes len bytes of buf (a whole JPEG, PNG, WebP, HEIC, AVIF or TIFF file) into
 * *out.
 *
 * On FM_OK, out->data points into d's buffer: valid until the next fm_decode /
 * fm_decode_file on d or fm_decoder_destroy, and writable (drawing on it is fine).
 * The buffer grows only when an image needs more than any before it, so steady state
 * allocates nothing. buf is only read and may be freed once the call returns.
 *
 * Errors (out is zeroed, err says why):
 *   FM_ERR_INVALID      d or out NULL, or buf NULL with len > 0
 *   FM_ERR_FORMAT       0 bytes, or data that is no known image ("not an image
 *                       (unrecognised data)")
 *   FM_ERR_UNSUPPORTED  another image format ("unsupported format: GIF"; also
 *                       animated WebP, BMP, JPEG 2000, JPEG XL, PSD), a TIFF of a
 *                       kind libtiff's RGBA reader does not take, or a HEIF file
 *                       built of derived images other than a grid
 *   FM_ERR_LIMIT        len > max_bytes, or the header declares more than max_pixels
 *                       or a side over 65535 (checked before any pixel buffer is
 *                       allocated; the message gives the sizes)
 *   FM_ERR_DECODE       the decoder failed, or libjpeg warned ("corrupt JPEG:
 *                       <libjpeg text>", "corrupt PNG: ...", "corrupt WebP: ...",
 *                       "corrupt HEIC: ...", "corrupt AVIF: ..."),
 *                       see the corrupt data policy at the top of this file
 *   FM_ERR_NOMEM        the pixel buffer, or a TurboJPEG handle to replace one that
 *                       failed, could not be allocated */
fm_status fm_decode(fm_decoder *d, const uint8_t *buf, size_t len, fm_image *out,
                    fm_error *err);

/* Reads the file at path (into a buffer d keeps and reuses) and decodes it as
 * fm_decode does; same ownership of out->data. A file larger than max_bytes is
 * refused with FM_ERR_LIMIT before it is read; open/read failures are FM_ERR_IO, and
 * so is anything but a regular file ("PATH: not a regular file": a FIFO or a device
 * is refused at once, never waited on). Every message starts with the path. */
fm_status fm_decode_file(fm_decoder *d, const char *path, fm_image *out, fm_error *err);

/* Writes img as a baseline JPEG at quality 1..100 (4:4:4 at 90 and above, 4:2:0
 * below) to path, replacing it. img and its pixels stay the caller's. Returns FM_OK,
 * FM_ERR_INVALID (bad image or quality), FM_ERR_IO, FM_ERR_NOMEM or FM_ERR_INTERNAL
 * (compression failed, with TurboJPEG's text). Not for the hot path: it creates and
 * frees a TurboJPEG compressor per call. */
fm_status fm_image_write_jpeg(const fm_image *img, const char *path, int quality,
                              fm_error *err);

typedef struct fm_rgb {
    uint8_t r, g, b;
} fm_rgb;

/* Draws the outline of the rectangle with corners (x0,y0) and (x1,y1), both
 * inclusive, in any order, `thickness` pixels wide measured inwards (values < 1 mean
 * 1). Anything outside the image is clipped; a rectangle wholly outside draws
 * nothing. Never reads or writes outside img->data. */
void fm_image_draw_rect(fm_image *img, int x0, int y0, int x1, int y1, int thickness,
                        fm_rgb color);

/* Fills a disc of the given radius (0 = one pixel; capped at 4096) centred on (x, y),
 * clipped to the image. */
void fm_image_draw_point(fm_image *img, int x, int y, int radius, fm_rgb color);

#ifdef __cplusplus
}
#endif
#endif
