/* heif_tool.c - writes a HEIC or AVIF copy of an image for the end-to-end tests, the
 * way a phone stores a photo: optionally turned on its side in the file with a HEIF
 * rotation (irot) that turns it back, so a reader that ignores the rotation sees it
 * sideways.
 *
 *   heif_tool IN OUT [--turn K] [--av1] [--quality Q]
 *
 * IN is decoded by facemill's own decoder (full size, upright); the pixels are turned
 * K x 90 degrees clockwise (K 0..3), encoded with libheif (HEVC, or AV1 with --av1;
 * quality Q, default 90) and given irot K (K x 90 degrees anticlockwise) on the
 * primary image. Exit 0 on success, 1 on failure, 2 on usage. */
#include "facemill/image.h"
#include "fm_test.h"
#include "fm_test_heif.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: heif_tool IN OUT [--turn K] [--av1] [--quality Q]\n");
        return 2;
    }
    int turn = 0, av1 = 0, quality = 90;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--turn") == 0 && i + 1 < argc)
            turn = atoi(argv[++i]);
        else if (strcmp(argv[i], "--av1") == 0)
            av1 = 1;
        else if (strcmp(argv[i], "--quality") == 0 && i + 1 < argc)
            quality = atoi(argv[++i]);
        else
            return 2;
    }
    if (turn < 0 || turn > 3 || quality < 0 || quality > 100)
        return 2;
    fm_decoder *d = NULL;
    fm_image img;
    fm_error e = {0};
    if (fm_decoder_new(&d, NULL, &e) != FM_OK ||
        fm_decode_file(d, argv[1], &img, &e) != FM_OK) {
        fprintf(stderr, "heif_tool: %s\n", fm_error_text(&e));
        return 1;
    }
    /* turned clockwise: output (x, y) of the W x H result comes from the source */
    const int w = img.w, h = img.h, W = turn & 1 ? h : w, H = turn & 1 ? w : h;
    uint8_t *px = malloc((size_t)W * H * 3);
    if (!px)
        return 1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int sx = x, sy = y;
            if (turn == 1) { /* 90 clockwise */
                sx = y;
                sy = h - 1 - x;
            } else if (turn == 2) {
                sx = w - 1 - x;
                sy = h - 1 - y;
            } else if (turn == 3) { /* 270 clockwise */
                sx = w - 1 - y;
                sy = x;
            }
            memcpy(px + ((size_t)y * W + x) * 3,
                   img.data + (size_t)sy * img.stride + (size_t)sx * 3, 3);
        }
    fm_decoder_destroy(&d);
    uint8_t *f = NULL, *g = NULL;
    size_t n = 0, gn = 0;
    int rc = fm_test_heif_encode(px, W, H, av1, quality, &f, &n);
    free(px);
    if (rc == 0 && turn)
        rc = fm_test_heif_add_irot(f, n, turn, &g, &gn);
    if (rc == 0)
        rc = turn ? fm_test_write_file(argv[2], g, gn) : fm_test_write_file(argv[2], f, n);
    free(f);
    free(g);
    return rc == 0 ? 0 : 1;
}
