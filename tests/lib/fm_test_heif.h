/* fm_test_heif.h - HEIF files for the tests: the decoder's (test_image) and the
 * photos the end-to-end tests label (heif_tool). */
#ifndef FM_TEST_HEIF_H
#define FM_TEST_HEIF_H

#include <stddef.h>
#include <stdint.h>

/* Encodes the w x h packed RGB pixels as a HEIF file through libheif's own encoders:
 * HEVC (HEIC, x265) or, with av1, AV1 (AVIF, aom), at quality 0..100. *out (malloc'd,
 * the caller frees it) gets the file, *n its size. 0, or -1 with a message on stderr. */
int fm_test_heif_encode(const uint8_t *rgb, int w, int h, int av1, int quality,
                        uint8_t **out, size_t *n);

/* The same for w x h packed RGBA pixels as HEIC: libheif 1.15 writes the colour as a
 * grid of HEVC tiles and the alpha as a second grid, an auxiliary image of the first
 * (as some converters' files hold them). */
int fm_test_heif_encode_rgba(const uint8_t *rgba, int w, int h, int quality, uint8_t **out,
                             size_t *n);

/* A copy of the HEIF file f (as fm_test_heif_encode writes them: ftyp, meta, mdat)
 * with an irot property, angle x 90 degrees anticlockwise, on its primary image: the
 * way phones store a portrait photo. *out is malloc'd. 0, or -1 with a message. */
int fm_test_heif_add_irot(const uint8_t *f, size_t n, int angle, uint8_t **out,
                          size_t *outn);

#endif
