/* draw.h - text on images: a built-in 5x7 bitmap font, scaled by whole pixels, for
 * labelling faces on the pictures `facemill predict --draw` writes.
 *
 * Why a bitmap font: the labels must be readable on a 200-pixel face chip and on a
 * 50-megapixel scan alike, without a font library or a font file to find. Each glyph
 * pixel becomes a scale x scale block (fm_draw_scale_for picks the scale from the
 * image size), so the text keeps its proportion to the picture. Printable ASCII only;
 * other bytes draw as '?'.
 *
 * Like fm_image_draw_rect (image.h), everything is clipped to the image and never
 * reads or writes outside img->data. No state; any thread.
 */
#ifndef FACEMILL_DRAW_H
#define FACEMILL_DRAW_H

#include "facemill/image.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FM_DRAW_GLYPH_W 5 /* font pixels of a glyph */
#define FM_DRAW_GLYPH_H 7
#define FM_DRAW_CELL_W 6  /* with the space after it */
#define FM_DRAW_CELL_H 9  /* with the space between lines */

/* The 7 rows of the glyph of character c into rows, bit 0 of each row its leftmost
 * pixel ('?' for characters outside printable ASCII). */
void fm_draw_glyph(char c, unsigned char rows[FM_DRAW_GLYPH_H]);

/* The text scale for an image whose longer side is long_side pixels: one font pixel
 * per 400 image pixels (rounded), at least 1, so a line of text is about 2% of the
 * long side. */
int fm_draw_scale_for(int long_side);

/* Size in image pixels of n_lines lines of text, the longest max_chars characters,
 * at scale, with a margin of one font pixel on every side. */
void fm_draw_text_size(int max_chars, int n_lines, int scale, int *w, int *h);

/* Fills the rectangle with corners (x0, y0) and (x1, y1), both inclusive, clipped. */
void fm_draw_fill(fm_image *img, int x0, int y0, int x1, int y1, fm_rgb color);

/* Draws s with its first glyph's top-left font pixel at (x, y), each font pixel a
 * scale x scale block (scale < 1 means 1) in color; the background is left as it
 * is. A '\n' starts a new line FM_DRAW_CELL_H * scale lower. */
void fm_draw_text(fm_image *img, int x, int y, const char *s, int scale, fm_rgb color);

/* A label: n lines of text in fg on a box of bg (fm_draw_text_size big), placed
 * above the rectangle (bx0, by0)-(bx1, by1) when it fits there, else below it, else
 * inside its top; its left edge at bx0, moved left as far as needed to stay inside
 * the image. */
void fm_draw_label(fm_image *img, int bx0, int by0, int bx1, int by1,
                   const char *const *lines, int n, int scale, fm_rgb bg, fm_rgb fg);

#ifdef __cplusplus
}
#endif
#endif
