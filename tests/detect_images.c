/* detect_images.c - makes the extra test images of test_mtcnn_ref.py from the sample
 * photos, with facemill's own decoder, warp and JPEG writer (so the test needs
 * nothing beyond Python and numpy):
 *
 *   detect_images SAMPLE_DIR OUT_DIR
 *
 * writes into OUT_DIR:
 *   down50.jpg   sample1 at half size (960x640)
 *   rot15.jpg    sample3 rotated by 15 degrees about its centre (black corners)
 *   crop.jpg     a 517x403 crop of sample4 (odd sizes)
 *   tight.jpg    a 140x150 crop of sample4 inside one face (cut by the border)
 *   up2.jpg      sample5 at twice its size (3840x2796): decoded at 1/2 under the
 *                default max_side, so it checks the mapping back to original pixels
 *   narrow.jpg   a 250x1400 column of sample6 holding one face (tall and narrow)
 *   small.jpg    sample1 at 1/SMALL_DIV (box filter; faces of 17 to 19 pixels) in the
 *                top-left corner of a 1920x1280 gray image: faces under 2.5% of the
 *                long side (detect.min_face_frac)
 *   blank.jpg    640x480 flat gray (no faces)
 *   tiny.jpg     11x9 gray (too small for any pyramid level)
 * Exit 0 on success, 1 with a message on stderr otherwise.
 */
#include "facemill/align.h"
#include "facemill/image.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write(const char *dir, const char *name, const uint8_t *px, int w, int h)
{
    char path[4096];
    fm_image img = {0};
    fm_error err = {0};
    img.w = img.orig_w = w;
    img.h = img.orig_h = h;
    img.stride = (size_t)w * 3;
    img.data = (uint8_t *)px;
    img.scale_num = img.scale_denom = img.orientation = 1;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (fm_image_write_jpeg(&img, path, 95, &err) != FM_OK) {
        fprintf(stderr, "detect_images: %s\n", fm_error_text(&err));
        return 1;
    }
    return 0;
}

/* Box-filtered 1/SMALL_DIV of sample1 inside a gray 1920x1280 image. */
#define SMALL_DIV 11
#define SMALL_W 1920
#define SMALL_H 1280

static int small_write(const fm_image *src, const char *dir)
{
    uint8_t *px = malloc((size_t)SMALL_W * SMALL_H * 3);
    if (!px) {
        fprintf(stderr, "detect_images: out of memory\n");
        return 1;
    }
    fm_image frame;
    fm_align_shrink_box(src, SMALL_DIV, SMALL_W, SMALL_H, px, &frame);
    int rc = write(dir, "small.jpg", px, SMALL_W, SMALL_H);
    free(px);
    return rc;
}

/* Warps src with m_inv (output -> source) into a new w x h image and writes it. */
static int warp_write(const fm_image *src, const float m_inv[6], int w, int h,
                      fm_border border, const char *dir, const char *name)
{
    uint8_t *px = malloc((size_t)w * (size_t)h * 3);
    if (!px) {
        fprintf(stderr, "detect_images: out of memory\n");
        return 1;
    }
    fm_warp_opts o = {border, 0};
    fm_align_warp(src->data, src->w, src->h, src->stride, 3, m_inv, px, w, h, &o);
    int rc = write(dir, name, px, w, h);
    free(px);
    return rc;
}

static int load(fm_decoder *d, const char *dir, const char *name, fm_image *img)
{
    char path[4096];
    fm_error err = {0};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (fm_decode_file(d, path, img, &err) != FM_OK) {
        fprintf(stderr, "detect_images: %s\n", fm_error_text(&err));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: detect_images SAMPLE_DIR OUT_DIR\n");
        return 2;
    }
    const char *in = argv[1], *out = argv[2];
    fm_decoder *d = NULL;
    fm_error err = {0};
    fm_image img;
    int rc = 1;
    if (fm_decoder_new(&d, NULL, &err) != FM_OK) {
        fprintf(stderr, "detect_images: %s\n", fm_error_text(&err));
        return 1;
    }
    /* Half size: output pixel centre (x + 0.5) * 2 - 0.5 in the source. */
    if (load(d, in, "sample1.jpg", &img))
        goto done;
    {
        const float m[6] = {2, 0, 0.5f, 0, 2, 0.5f};
        if (warp_write(&img, m, img.w / 2, img.h / 2, FM_BORDER_REPLICATE, out, "down50.jpg"))
            goto done;
    }
    /* Small faces in a large image. */
    if (small_write(&img, out))
        goto done;
    /* 15 degrees about the centre. */
    if (load(d, in, "sample3.jpg", &img))
        goto done;
    {
        double a = 15.0 * 3.14159265358979323846 / 180.0, c = cos(a), s = sin(a);
        double cx = (img.w - 1) / 2.0, cy = (img.h - 1) / 2.0;
        const float m[6] = {(float)c, (float)-s, (float)(cx - c * cx + s * cy),
                            (float)s, (float)c, (float)(cy - s * cx - c * cy)};
        if (warp_write(&img, m, img.w, img.h, FM_BORDER_CONSTANT, out, "rot15.jpg"))
            goto done;
    }
    /* A crop with odd sizes. */
    if (load(d, in, "sample4.jpg", &img))
        goto done;
    {
        const float m[6] = {1, 0, 700, 0, 1, 150};
        if (warp_write(&img, m, 517, 403, FM_BORDER_REPLICATE, out, "crop.jpg"))
            goto done;
    }
    /* A crop tighter than the face, as in face-chip archives (for detect.pad). */
    {
        const float m[6] = {1, 0, 1000, 0, 1, 215};
        if (warp_write(&img, m, 140, 150, FM_BORDER_REPLICATE, out, "tight.jpg"))
            goto done;
    }
    /* Twice the size: output (x + 0.5) / 2 - 0.5 in the source. */
    if (load(d, in, "sample5.jpg", &img))
        goto done;
    {
        const float m[6] = {0.5f, 0, -0.25f, 0, 0.5f, -0.25f};
        if (warp_write(&img, m, img.w * 2, img.h * 2, FM_BORDER_REPLICATE, out, "up2.jpg"))
            goto done;
    }
    /* Tall and narrow. */
    if (load(d, in, "sample6.jpg", &img))
        goto done;
    {
        int h = img.h < 1400 ? img.h : 1400;
        const float m[6] = {1, 0, 230, 0, 1, 0};
        if (warp_write(&img, m, 250, h, FM_BORDER_REPLICATE, out, "narrow.jpg"))
            goto done;
    }
    {
        static uint8_t gray[640 * 480 * 3];
        memset(gray, 128, sizeof gray);
        if (write(out, "blank.jpg", gray, 640, 480) || write(out, "tiny.jpg", gray, 11, 9))
            goto done;
    }
    rc = 0;
done:
    fm_decoder_destroy(&d);
    return rc;
}
