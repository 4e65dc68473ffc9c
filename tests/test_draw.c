/* test_draw.c - text on images (include/facemill/draw.h) against a naive reference:
 * every glyph at scales 1..4 drawn pixel for pixel as its rows say, nothing outside
 * the text's cells touched, clipping at every edge (ASan catches a stray write: the
 * image has no slack around it), the size of a label and where it goes (above a box
 * when it fits, below when not), and the scale chosen for small and large images. */
#include "facemill/draw.h"
#include "fm_test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static fm_image blank(int w, int h)
{
    fm_image img = {0};
    img.w = w;
    img.h = h;
    img.stride = (size_t)w * 3;
    img.data = calloc((size_t)w * (size_t)h * 3, 1);
    return img;
}

static int lit(const fm_image *img, int x, int y)
{
    return img->data[(size_t)y * img->stride + (size_t)x * 3] != 0;
}

/* Every printable character at several scales and positions: a pixel is lit exactly
 * when its font pixel is set. */
static void test_glyphs(void)
{
    const fm_rgb white = {255, 255, 255};
    for (int scale = 1; scale <= 4; scale++)
        for (int ch = 32; ch <= 126; ch++) {
            int ox = 3 + ch % 5, oy = 2 + ch % 3, w = 40, h = 40;
            fm_image img = blank(w, h);
            char s[2] = {(char)ch, 0};
            unsigned char rows[FM_DRAW_GLYPH_H];
            fm_draw_glyph((char)ch, rows);
            fm_draw_text(&img, ox, oy, s, scale, white);
            int bad = 0;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    int fx = (x - ox) / scale, fy = (y - oy) / scale, want = 0;
                    if (x >= ox && y >= oy && fx < FM_DRAW_GLYPH_W && fy < FM_DRAW_GLYPH_H)
                        want = rows[fy] >> fx & 1;
                    bad += lit(&img, x, y) != want;
                }
            CHECK_MSG(bad == 0, "'%c' at scale %d: %d pixels differ", ch, scale, bad);
            free(img.data);
        }
    /* the glyphs differ from each other and are not empty (but for the space) */
    unsigned char a[FM_DRAW_GLYPH_H], b[FM_DRAW_GLYPH_H], q[FM_DRAW_GLYPH_H];
    fm_draw_glyph('A', a);
    fm_draw_glyph('B', b);
    CHECK(memcmp(a, b, sizeof a) != 0);
    fm_draw_glyph('?', q);
    fm_draw_glyph('\x01', a);
    CHECK(memcmp(a, q, sizeof a) == 0); /* unprintable draws as '?' */
    int empty = 0;
    for (int ch = 33; ch <= 126; ch++) {
        fm_draw_glyph((char)ch, a);
        int any = 0;
        for (int r = 0; r < FM_DRAW_GLYPH_H; r++)
            any |= a[r];
        empty += !any;
    }
    CHECK_MSG(empty == 0, "%d printable glyphs are empty", empty);
}

/* Lines advance by cells; text partly or wholly outside is clipped without a stray
 * write (the buffer is exactly w x h: ASan reports any overrun). */
static void test_lines_and_clipping(void)
{
    const fm_rgb c = {9, 9, 9};
    fm_image img = blank(30, 20);
    fm_draw_text(&img, 0, 0, "I\nI", 1, c);
    unsigned char rows[FM_DRAW_GLYPH_H];
    fm_draw_glyph('I', rows);
    int first = -1;
    for (int k = 0; k < FM_DRAW_GLYPH_W; k++)
        if (rows[0] >> k & 1 && first < 0)
            first = k;
    CHECK(first >= 0 && lit(&img, first, 0) && lit(&img, first, FM_DRAW_CELL_H));
    free(img.data);
    static const int at[][2] = {{-50, -50}, {-3, -4}, {25, 15}, {29, 19}, {100, 100},
                                {-20, 10}, {10, -20}};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        img = blank(30, 20);
        fm_draw_text(&img, at[i][0], at[i][1], "Wg@#%", 3, c);
        fm_draw_fill(&img, at[i][0], at[i][1], at[i][0] + 40, at[i][1] + 40, c);
        free(img.data);
    }
    int w, h;
    fm_draw_text_size(10, 3, 2, &w, &h);
    CHECK(w == (10 * FM_DRAW_CELL_W + 1) * 2 && h == 3 * FM_DRAW_CELL_H * 2);
}

/* Bounding box of the pixels equal to color, in rows [y0, y1). */
static void extent(const fm_image *img, fm_rgb color, int *x0, int *y0, int *x1, int *y1)
{
    *x0 = *y0 = 1 << 30;
    *x1 = *y1 = -1;
    for (int y = 0; y < img->h; y++)
        for (int x = 0; x < img->w; x++) {
            const uint8_t *p = img->data + (size_t)y * img->stride + (size_t)x * 3;
            if (p[0] == color.r && p[1] == color.g && p[2] == color.b) {
                *x0 = x < *x0 ? x : *x0;
                *y0 = y < *y0 ? y : *y0;
                *x1 = x > *x1 ? x : *x1;
                *y1 = y > *y1 ? y : *y1;
            }
        }
}

static void test_label(void)
{
    const fm_rgb bg = {0, 110, 0}, fg = {255, 255, 255};
    const char *lines[3] = {"age 26 +/-5", "female 0.99", "White 0.99"};
    int w, h, x0, y0, x1, y1;
    fm_draw_text_size(11, 3, 2, &w, &h);
    /* room above the box: the label ends right above it */
    fm_image img = blank(400, 300);
    fm_draw_label(&img, 100, 150, 180, 250, lines, 3, 2, bg, fg);
    extent(&img, bg, &x0, &y0, &x1, &y1);
    CHECK_MSG(x0 == 100 && y1 == 149 && x1 - x0 + 1 == w && y1 - y0 + 1 == h,
              "label above: %d,%d - %d,%d (size %dx%d)", x0, y0, x1, y1, w, h);
    extent(&img, fg, &x0, &y0, &x1, &y1);
    CHECK(x0 > 100 && y0 >= 150 - h && y1 < 150); /* text inside the label */
    free(img.data);
    /* no room above: below the box; at the right edge: moved left */
    img = blank(400, 300);
    fm_draw_label(&img, 390, 10, 399, 60, lines, 3, 2, bg, fg);
    extent(&img, bg, &x0, &y0, &x1, &y1);
    CHECK_MSG(y0 == 61 && x1 == 399 && x1 - x0 + 1 == w, "label below: %d,%d - %d,%d", x0,
              y0, x1, y1);
    free(img.data);
}

static void test_scale(void)
{
    CHECK(fm_draw_scale_for(0) == 1);
    CHECK(fm_draw_scale_for(200) == 1);
    CHECK(fm_draw_scale_for(1920) == 5);
    CHECK(fm_draw_scale_for(8000) == 20);
    /* a line of text stays about 2% of the long side */
    for (int side = 400; side <= 20000; side += 400) {
        double frac = (double)FM_DRAW_CELL_H * fm_draw_scale_for(side) / side;
        CHECK_MSG(frac > 0.015 && frac < 0.035, "side %d: text %.3f of it", side, frac);
    }
}

int main(void)
{
    test_glyphs();
    test_lines_and_clipping();
    test_label();
    test_scale();
    return fm_test_done("test_draw");
}
