/* align.h - five-point face alignment: a similarity transform (rotation, uniform
 * scale, translation; no reflection, no shear) fitted by least squares (Umeyama)
 * from detected landmarks onto a backbone's template, and a bilinear warp that cuts
 * the aligned face out of the image at the backbone's input size.
 *
 * Coordinates are pixel coordinates where (0,0) is the centre of the top-left pixel.
 * Transforms are 2x3 row-major matrices M: [x', y'] = M * [x, y, 1].
 */
#ifndef FACEMILL_ALIGN_H
#define FACEMILL_ALIGN_H

#include <stddef.h>
#include <stdint.h>

#include "facemill/image.h"
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the warp fills output pixels whose source lies outside the image. */
typedef enum fm_border {
    FM_BORDER_CONSTANT = 0,  /* a constant value (fm_warp_opts.fill) */
    FM_BORDER_REPLICATE = 1, /* the nearest edge pixel */
} fm_border;

/* Fits M minimising sum_i |M*src_i - dst_i|^2 over similarity transforms.
 * src and dst hold n points as x0,y0,x1,y1,...; n >= 2. Returns FM_ERR_INVALID when
 * n < 2 or the source points coincide (no scale can be fitted). Writes M only on
 * success. */
fm_status fm_align_similarity(const float *src, const float *dst, int n, float M[6],
                              fm_error *err);

/* Inverts a 2x3 affine transform. Returns FM_ERR_INVALID when it is singular. */
fm_status fm_align_invert(const float M[6], float inv[6], fm_error *err);

/* Applies M to a point. */
void fm_align_apply(const float M[6], float x, float y, float *ox, float *oy);

typedef struct fm_warp_opts {
    fm_border border;
    uint8_t fill; /* value of every channel for FM_BORDER_CONSTANT */
} fm_warp_opts;

/* Warps an interleaved 8-bit image (channels 1..4, row stride in bytes) so that
 * output pixel (x, y) takes the bilinear sample of the source at M_inv * (x, y):
 * M_inv maps OUTPUT coordinates to SOURCE coordinates (the inverse of the fitted
 * alignment). dst is out_w x out_h with the same channel count, rows of
 * out_w * channels bytes, owned by the caller. No allocation. */
void fm_align_warp(const uint8_t *src, int w, int h, size_t stride, int channels,
                   const float M_inv[6], uint8_t *dst, int out_w, int out_h,
                   const fm_warp_opts *opts);

/* The w x h RGB image sampled bilinearly (edges replicated) from the window of src
 * with corner (x0, y0) and size sw x sh, written to px (3 w h bytes, owned by the
 * caller) and described by *out (data = px, not owned; scale 1/1, orientation 1):
 * a scaled or cropped copy, as the benchmarks make their test images. */
void fm_align_resample(const fm_image *src, double x0, double y0, double sw, double sh,
                       int w, int h, uint8_t *px, fm_image *out);

/* src (RGB) shrunk by a k x k box filter (each output pixel the rounded mean of k x k
 * source pixels; k >= 1) into the top-left corner of px, a w x h RGB image filled with
 * gray 128 elsewhere (3 w h bytes, owned by the caller), described by *out as
 * fm_align_resample does: a photo's faces made small inside a large frame, as the
 * detector's tests and benchmarks use them. */
void fm_align_shrink_box(const fm_image *src, int k, int w, int h, uint8_t *px,
                         fm_image *out);

/* Convenience for the pipeline: fits the transform from five detected landmarks
 * (image coordinates) onto template (five points in output pixels), then warps the
 * RGB image into dst (out_w x out_h x 3). Returns the fitted M (image -> output)
 * in M_out when it is not NULL. */
fm_status fm_align_face(const uint8_t *rgb, int w, int h, size_t stride,
                        const float landmarks[10], const float template_pts[10],
                        uint8_t *dst, int out_w, int out_h, const fm_warp_opts *opts,
                        float M_out[6], fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
