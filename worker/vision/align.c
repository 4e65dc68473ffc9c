/* align.c - similarity fit and bilinear warp (see align.h).
 *
 * The fit is Umeyama's least-squares similarity restricted to rotations, which in
 * two dimensions has a closed form: with centred points p (source) and q (target),
 *   a = sum(p . q) / sum|p|^2,   b = sum(p x q) / sum|p|^2,
 *   M = [a -b tx; b a ty],       t = mean(q) - [a -b; b a] mean(p).
 * Sums are taken in double so the fit does not depend on the image's size. */
#include "facemill/align.h"

#include <math.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <string.h>

fm_status fm_align_similarity(const float *src, const float *dst, int n, float M[6],
                              fm_error *err)
{
    if (n < 2)
        return fm_error_set(err, FM_ERR_INVALID, "similarity fit needs >= 2 points, got %d", n);
    double mpx = 0, mpy = 0, mqx = 0, mqy = 0;
    for (int i = 0; i < n; i++) {
        mpx += src[2 * i];
        mpy += src[2 * i + 1];
        mqx += dst[2 * i];
        mqy += dst[2 * i + 1];
    }
    mpx /= n;
    mpy /= n;
    mqx /= n;
    mqy /= n;
    double spp = 0, dot = 0, cross = 0;
    for (int i = 0; i < n; i++) {
        double px = src[2 * i] - mpx, py = src[2 * i + 1] - mpy;
        double qx = dst[2 * i] - mqx, qy = dst[2 * i + 1] - mqy;
        spp += px * px + py * py;
        dot += px * qx + py * qy;
        cross += px * qy - py * qx;
    }
    if (!(spp > 1e-12))
        return fm_error_set(err, FM_ERR_INVALID, "similarity fit: source points coincide");
    double a = dot / spp, b = cross / spp;
    M[0] = (float)a;
    M[1] = (float)-b;
    M[2] = (float)(mqx - (a * mpx - b * mpy));
    M[3] = (float)b;
    M[4] = (float)a;
    M[5] = (float)(mqy - (b * mpx + a * mpy));
    return FM_OK;
}

fm_status fm_align_invert(const float M[6], float inv[6], fm_error *err)
{
    double det = (double)M[0] * M[4] - (double)M[1] * M[3];
    if (fabs(det) < 1e-12)
        return fm_error_set(err, FM_ERR_INVALID, "transform is singular (det %g)", det);
    double i0 = M[4] / det, i1 = -M[1] / det, i3 = -M[3] / det, i4 = M[0] / det;
    inv[0] = (float)i0;
    inv[1] = (float)i1;
    inv[2] = (float)(-(i0 * M[2] + i1 * M[5]));
    inv[3] = (float)i3;
    inv[4] = (float)i4;
    inv[5] = (float)(-(i3 * M[2] + i4 * M[5]));
    return FM_OK;
}

void fm_align_apply(const float M[6], float x, float y, float *ox, float *oy)
{
    *ox = M[0] * x + M[1] * y + M[2];
    *oy = M[3] * x + M[4] * y + M[5];
}

/* lrint(v) for |v| far inside int's range: the SSE2 conversion inline where there is
 * one (the same instruction glibc's lrint runs, in the same rounding mode), instead of
 * a call per channel and pixel. */
static inline int round_even(double v)
{
#if defined(__SSE2__)
    return _mm_cvtsd_si32(_mm_set_sd(v));
#else
    return (int)lrint(v);
#endif
}

/* Source pixel (x, y) with the border rule applied; returns NULL for a constant
 * border pixel. */
static inline const uint8_t *pixel_at(const uint8_t *src, int w, int h, size_t stride,
                                      int channels, int x, int y, fm_border border)
{
    if (x < 0 || y < 0 || x >= w || y >= h) {
        if (border != FM_BORDER_REPLICATE)
            return NULL;
        x = x < 0 ? 0 : x >= w ? w - 1 : x;
        y = y < 0 ? 0 : y >= h ? h - 1 : y;
    }
    return src + (size_t)y * stride + (size_t)x * (size_t)channels;
}

void fm_align_resample(const fm_image *src, double x0, double y0, double sw, double sh,
                       int w, int h, uint8_t *px, fm_image *out)
{
    double sx = sw / w, sy = sh / h; /* source pixels per output pixel */
    /* output (x, y) -> source ((x + 0.5) * sx - 0.5 + x0, ...) */
    const float m_inv[6] = {(float)sx, 0, (float)(0.5 * sx - 0.5 + x0),
                            0, (float)sy, (float)(0.5 * sy - 0.5 + y0)};
    fm_warp_opts wo = {FM_BORDER_REPLICATE, 0};
    fm_align_warp(src->data, src->w, src->h, src->stride, 3, m_inv, px, w, h, &wo);
    memset(out, 0, sizeof *out);
    out->w = out->orig_w = w;
    out->h = out->orig_h = h;
    out->stride = (size_t)w * 3;
    out->data = px;
    out->scale_num = out->scale_denom = 1;
    out->orientation = 1;
}

void fm_align_warp(const uint8_t *src, int w, int h, size_t stride, int channels,
                   const float M_inv[6], uint8_t *dst, int out_w, int out_h,
                   const fm_warp_opts *opts)
{
    fm_border border = opts ? opts->border : FM_BORDER_CONSTANT;
    uint8_t fill = opts ? opts->fill : 0;
    for (int y = 0; y < out_h; y++) {
        uint8_t *row = dst + (size_t)y * (size_t)out_w * (size_t)channels;
        for (int x = 0; x < out_w; x++) {
            double sx = (double)M_inv[0] * x + (double)M_inv[1] * y + M_inv[2];
            double sy = (double)M_inv[3] * x + (double)M_inv[4] * y + M_inv[5];
            uint8_t *o = row + (size_t)x * (size_t)channels;
            /* Far outside: skip the arithmetic (and keep floor() in int range). */
            if (!(sx > -2.0 && sy > -2.0 && sx < w + 1.0 && sy < h + 1.0) &&
                border != FM_BORDER_REPLICATE) {
                for (int c = 0; c < channels; c++)
                    o[c] = fill;
                continue;
            }
            if (sx < -2.0) sx = -2.0;
            if (sy < -2.0) sy = -2.0;
            if (sx > w + 1.0) sx = w + 1.0;
            if (sy > h + 1.0) sy = h + 1.0;
            int x0 = (int)floor(sx), y0 = (int)floor(sy);
            double fx = sx - x0, fy = sy - y0;
            if (channels == 3 && x0 >= 0 && y0 >= 0 && x0 + 1 < w && y0 + 1 < h) {
                /* all four neighbours inside (nearly every pixel of a face): the same
                 * arithmetic without the border rule's tests */
                const uint8_t *a = src + (size_t)y0 * stride + (size_t)x0 * 3, *b = a + stride;
                const double gx = 1 - fx, gy = 1 - fy;
                for (int c = 0; c < 3; c++) {
                    double v = gy * (gx * a[c] + fx * a[3 + c]) + fy * (gx * b[c] + fx * b[3 + c]);
                    int iv = round_even(v);
                    o[c] = (uint8_t)(iv < 0 ? 0 : iv > 255 ? 255 : iv);
                }
                continue;
            }
            const uint8_t *p00 = pixel_at(src, w, h, stride, channels, x0, y0, border);
            const uint8_t *p01 = pixel_at(src, w, h, stride, channels, x0 + 1, y0, border);
            const uint8_t *p10 = pixel_at(src, w, h, stride, channels, x0, y0 + 1, border);
            const uint8_t *p11 = pixel_at(src, w, h, stride, channels, x0 + 1, y0 + 1, border);
            for (int c = 0; c < channels; c++) {
                double v00 = p00 ? p00[c] : fill, v01 = p01 ? p01[c] : fill;
                double v10 = p10 ? p10[c] : fill, v11 = p11 ? p11[c] : fill;
                double v = (1 - fy) * ((1 - fx) * v00 + fx * v01) +
                           fy * ((1 - fx) * v10 + fx * v11);
                int iv = (int)lrint(v);
                o[c] = (uint8_t)(iv < 0 ? 0 : iv > 255 ? 255 : iv);
            }
        }
    }
}

fm_status fm_align_face(const uint8_t *rgb, int w, int h, size_t stride,
                        const float landmarks[10], const float template_pts[10],
                        uint8_t *dst, int out_w, int out_h, const fm_warp_opts *opts,
                        float M_out[6], fm_error *err)
{
    float M[6] = {0}, inv[6] = {0}; /* set on success only; -O3 cannot tell */
    fm_status st = fm_align_similarity(landmarks, template_pts, 5, M, err);
    if (st != FM_OK)
        return st;
    st = fm_align_invert(M, inv, err);
    if (st != FM_OK)
        return st;
    fm_align_warp(rgb, w, h, stride, 3, inv, dst, out_w, out_h, opts);
    if (M_out)
        for (int i = 0; i < 6; i++)
            M_out[i] = M[i];
    return FM_OK;
}
