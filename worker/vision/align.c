/* align.c - similarity fit and bilinear warp (see align.h).
 *
 * The fit is Umeyama's least-squares similarity restricted to rotations, which in
 * two dimensions has a closed form: with centred points p (source) and q (target),
 *   a = sum(p . q) / sum|p|^2,   b = sum(p x q) / sum|p|^2,
 *   M = [a -b tx; b a ty],       t = mean(q) - [a -b; b a] mean(p).
 * Sums are taken in double so the fit does not depend on the image's size. */
#include "facemill/align.h"
#include "facemill/nn.h"

#include <limits.h>
#include <math.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ALIGN_HAVE_AVX2 1
#else
#define ALIGN_HAVE_AVX2 0
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

void fm_align_shrink_box(const fm_image *src, int k, int w, int h, uint8_t *px,
                         fm_image *out)
{
    memset(px, 128, (size_t)w * (size_t)h * 3);
    const int sw = src->w / k, sh = src->h / k;
    for (int y = 0; y < sh && y < h; y++)
        for (int x = 0; x < sw && x < w; x++)
            for (int c = 0; c < 3; c++) {
                int sum = 0;
                for (int dy = 0; dy < k; dy++)
                    for (int dx = 0; dx < k; dx++)
                        sum += src->data[(size_t)(y * k + dy) * src->stride +
                                         (size_t)(x * k + dx) * 3 + (size_t)c];
                px[((size_t)y * (size_t)w + (size_t)x) * 3 + (size_t)c] =
                    (uint8_t)((sum + k * k / 2) / (k * k));
            }
    memset(out, 0, sizeof *out);
    out->w = out->orig_w = w;
    out->h = out->orig_h = h;
    out->stride = (size_t)w * 3;
    out->data = px;
    out->scale_num = out->scale_denom = out->orientation = 1;
}

/* Output pixel (x, y) of fm_align_warp into o. */
static inline void warp_pixel(const uint8_t *src, int w, int h, size_t stride, int channels,
                              const float M_inv[6], int x, int y, fm_border border,
                              uint8_t fill, uint8_t *o)
{
    double sx = (double)M_inv[0] * x + (double)M_inv[1] * y + M_inv[2];
    double sy = (double)M_inv[3] * x + (double)M_inv[4] * y + M_inv[5];
    /* Far outside: skip the arithmetic (and keep floor() in int range). */
    if (!(sx > -2.0 && sy > -2.0 && sx < w + 1.0 && sy < h + 1.0) &&
        border != FM_BORDER_REPLICATE) {
        for (int c = 0; c < channels; c++)
            o[c] = fill;
        return;
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
        return;
    }
    const uint8_t *p00 = pixel_at(src, w, h, stride, channels, x0, y0, border);
    const uint8_t *p01 = pixel_at(src, w, h, stride, channels, x0 + 1, y0, border);
    const uint8_t *p10 = pixel_at(src, w, h, stride, channels, x0, y0 + 1, border);
    const uint8_t *p11 = pixel_at(src, w, h, stride, channels, x0 + 1, y0 + 1, border);
    for (int c = 0; c < channels; c++) {
        double v00 = p00 ? p00[c] : fill, v01 = p01 ? p01[c] : fill;
        double v10 = p10 ? p10[c] : fill, v11 = p11 ? p11[c] : fill;
        double v = (1 - fy) * ((1 - fx) * v00 + fx * v01) + fy * ((1 - fx) * v10 + fx * v11);
        int iv = (int)lrint(v);
        o[c] = (uint8_t)(iv < 0 ? 0 : iv > 255 ? 255 : iv);
    }
}

#if ALIGN_HAVE_AVX2
/* For each of n pixels at byte offsets off[k] of src, the four bytes from each of its
 * four neighbours (the pixel, the one to its right, and the two below them): wd[0..3]
 * [k]. Scalar loads, not gathers, which are slow on AMD's cores; the same bytes. */
static inline void neighbour_words(const uint8_t *src, size_t stride, const int *off, int n,
                                   int wd[4][8])
{
    for (int k = 0; k < n; k++) {
        const uint8_t *p = src + off[k];
        memcpy(&wd[0][k], p, 4);
        memcpy(&wd[1][k], p + 3, 4);
        memcpy(&wd[2][k], p + stride, 4);
        memcpy(&wd[3][k], p + stride + 3, 4);
    }
}

/* A row of a 3-channel warp, four output pixels at a time where all four have their
 * four neighbours inside (warp_pixel's fast case), warp_pixel elsewhere. The same
 * double operations in the same order as warp_pixel, lane by lane (multiplies and
 * adds, no fused multiply-add: "avx2" alone), and the conversion rounds to nearest
 * even as round_even does, so the bytes are the same. Four bytes are read at each
 * neighbour (three used): a lane is taken only when the byte after its last
 * neighbour is still in the image (another pixel of the row below, or a row below
 * it). Needs every offset y * stride + 3 * x + 3 within INT_MAX. */
__attribute__((target("avx2"))) static void warp_row3_avx2(const uint8_t *src, int w, int h,
                                                           size_t stride, const float M_inv[6],
                                                           int y, uint8_t *row, int out_w,
                                                           fm_border border, uint8_t fill,
                                                           int from)
{
    const __m256d m0 = _mm256_set1_pd((double)M_inv[0]), m3 = _mm256_set1_pd((double)M_inv[3]);
    const __m256d cx = _mm256_set1_pd((double)M_inv[1] * y), cy = _mm256_set1_pd(
                                                                   (double)M_inv[4] * y);
    const __m256d m2 = _mm256_set1_pd((double)M_inv[2]), m5 = _mm256_set1_pd((double)M_inv[5]);
    const __m256d one = _mm256_set1_pd(1.0);
    const __m128i wlim = _mm_set1_epi32(w - 1), hlim = _mm_set1_epi32(h - 1);
    const __m128i w2 = _mm_set1_epi32(w - 2), h2 = _mm_set1_epi32(h - 2);
    const __m128i zero = _mm_setzero_si128(), byte = _mm_set1_epi32(0xff);
    const __m128i s3 = _mm_set1_epi32(3), sstride = _mm_set1_epi32((int)stride);
    int x = from;
    for (; x + 4 <= out_w; x += 4) {
        const __m256d xs = _mm256_set_pd(x + 3, x + 2, x + 1, x);
        /* (M0 x + M1 y) + M2, as warp_pixel */
        const __m256d sx = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(m0, xs), cx), m2);
        const __m256d sy = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(m3, xs), cy), m5);
        const __m256d flx = _mm256_floor_pd(sx), fly = _mm256_floor_pd(sy);
        /* the lanes' floors as int32 (a NaN or one out of int's range gives INT_MIN,
         * which the test below refuses) */
        const __m128i x0 = _mm256_cvttpd_epi32(flx), y0 = _mm256_cvttpd_epi32(fly);
        /* inside: 0 <= x0 < w - 1, 0 <= y0 < h - 1, and x0 < w - 2 or y0 < h - 2 */
        __m128i ok = _mm_and_si128(
            _mm_and_si128(_mm_cmpgt_epi32(x0, _mm_set1_epi32(-1)),
                          _mm_cmpgt_epi32(wlim, x0)),
            _mm_and_si128(_mm_cmpgt_epi32(y0, _mm_set1_epi32(-1)), _mm_cmpgt_epi32(hlim, y0)));
        ok = _mm_and_si128(ok, _mm_or_si128(_mm_cmpgt_epi32(w2, x0), _mm_cmpgt_epi32(h2, y0)));
        if (_mm_movemask_epi8(ok) != 0xffff) {
            for (int k = 0; k < 4; k++)
                warp_pixel(src, w, h, stride, 3, M_inv, x + k, y, border, fill,
                           row + (size_t)(x + k) * 3);
            continue;
        }
        const __m256d fx = _mm256_sub_pd(sx, flx), fy = _mm256_sub_pd(sy, fly);
        const __m256d gx = _mm256_sub_pd(one, fx), gy = _mm256_sub_pd(one, fy);
        const __m128i ia = _mm_add_epi32(_mm_mullo_epi32(y0, sstride), _mm_mullo_epi32(x0, s3));
        int off[4], wd[4][8];
        _mm_storeu_si128((__m128i *)off, ia);
        neighbour_words(src, stride, off, 4, wd);
        const __m128i pa = _mm_loadu_si128((const __m128i *)wd[0]);
        const __m128i pa3 = _mm_loadu_si128((const __m128i *)wd[1]);
        const __m128i pb = _mm_loadu_si128((const __m128i *)wd[2]);
        const __m128i pb3 = _mm_loadu_si128((const __m128i *)wd[3]);
        __m128i out[3];
        for (int c = 0; c < 3; c++) {
            const __m128i sh = _mm_cvtsi32_si128(8 * c);
            const __m256d a = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srl_epi32(pa, sh), byte));
            const __m256d a3 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srl_epi32(pa3, sh), byte));
            const __m256d b = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srl_epi32(pb, sh), byte));
            const __m256d b3 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srl_epi32(pb3, sh), byte));
            /* gy (gx a + fx a3) + fy (gx b + fx b3), as warp_pixel */
            const __m256d top = _mm256_add_pd(_mm256_mul_pd(gx, a), _mm256_mul_pd(fx, a3));
            const __m256d bot = _mm256_add_pd(_mm256_mul_pd(gx, b), _mm256_mul_pd(fx, b3));
            const __m256d v = _mm256_add_pd(_mm256_mul_pd(gy, top), _mm256_mul_pd(fy, bot));
            __m128i iv = _mm256_cvtpd_epi32(v); /* nearest even, as round_even */
            iv = _mm_min_epi32(_mm_max_epi32(iv, zero), byte);
            out[c] = iv;
        }
        int r[3][4];
        for (int c = 0; c < 3; c++)
            _mm_storeu_si128((__m128i *)(void *)r[c], out[c]);
        uint8_t *o = row + (size_t)x * 3;
        for (int k = 0; k < 4; k++)
            for (int c = 0; c < 3; c++)
                o[3 * k + c] = (uint8_t)r[c][k];
    }
    for (; x < out_w; x++)
        warp_pixel(src, w, h, stride, 3, M_inv, x, y, border, fill, row + (size_t)x * 3);
}

/* warp_row3_avx2 eight output pixels at a time (the same double operations lane by
 * lane, the same loads, the same rule for the fast case): the same bytes. */
__attribute__((target("avx512f"))) static void warp_row3_avx512(const uint8_t *src, int w,
                                                             int h, size_t stride,
                                                             const float M_inv[6], int y,
                                                             uint8_t *row, int out_w,
                                                             fm_border border, uint8_t fill)
{
    const __m512d m0 = _mm512_set1_pd((double)M_inv[0]), m3 = _mm512_set1_pd((double)M_inv[3]);
    const __m512d cx = _mm512_set1_pd((double)M_inv[1] * y);
    const __m512d cy = _mm512_set1_pd((double)M_inv[4] * y);
    const __m512d m2 = _mm512_set1_pd((double)M_inv[2]), m5 = _mm512_set1_pd((double)M_inv[5]);
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d lanes = _mm512_set_pd(7, 6, 5, 4, 3, 2, 1, 0);
    const __m256i wlim = _mm256_set1_epi32(w - 1), hlim = _mm256_set1_epi32(h - 1);
    const __m256i w2 = _mm256_set1_epi32(w - 2), h2 = _mm256_set1_epi32(h - 2);
    const __m256i neg = _mm256_set1_epi32(-1);
    const __m256i zero = _mm256_setzero_si256(), byte = _mm256_set1_epi32(0xff);
    const __m256i s3 = _mm256_set1_epi32(3), sstride = _mm256_set1_epi32((int)stride);
    int x = 0;
    for (; x + 8 <= out_w; x += 8) {
        const __m512d xs = _mm512_add_pd(_mm512_set1_pd((double)x), lanes);
        /* (M0 x + M1 y) + M2, as warp_pixel */
        const __m512d sx = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(m0, xs), cx), m2);
        const __m512d sy = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(m3, xs), cy), m5);
        const __m512d flx = _mm512_floor_pd(sx), fly = _mm512_floor_pd(sy);
        const __m256i x0 = _mm512_cvttpd_epi32(flx), y0 = _mm512_cvttpd_epi32(fly);
        __m256i ok = _mm256_and_si256(
            _mm256_and_si256(_mm256_cmpgt_epi32(x0, neg), _mm256_cmpgt_epi32(wlim, x0)),
            _mm256_and_si256(_mm256_cmpgt_epi32(y0, neg), _mm256_cmpgt_epi32(hlim, y0)));
        ok = _mm256_and_si256(ok, _mm256_or_si256(_mm256_cmpgt_epi32(w2, x0),
                                                  _mm256_cmpgt_epi32(h2, y0)));
        if ((unsigned)_mm256_movemask_epi8(ok) != 0xffffffffu) {
            for (int k = 0; k < 8; k++)
                warp_pixel(src, w, h, stride, 3, M_inv, x + k, y, border, fill,
                           row + (size_t)(x + k) * 3);
            continue;
        }
        const __m512d fx = _mm512_sub_pd(sx, flx), fy = _mm512_sub_pd(sy, fly);
        const __m512d gx = _mm512_sub_pd(one, fx), gy = _mm512_sub_pd(one, fy);
        const __m256i ia = _mm256_add_epi32(_mm256_mullo_epi32(y0, sstride),
                                            _mm256_mullo_epi32(x0, s3));
        int off[8], wd[4][8];
        _mm256_storeu_si256((__m256i *)off, ia);
        neighbour_words(src, stride, off, 8, wd);
        const __m256i pa = _mm256_loadu_si256((const __m256i *)wd[0]);
        const __m256i pa3 = _mm256_loadu_si256((const __m256i *)wd[1]);
        const __m256i pb = _mm256_loadu_si256((const __m256i *)wd[2]);
        const __m256i pb3 = _mm256_loadu_si256((const __m256i *)wd[3]);
        int r[3][8];
        for (int c = 0; c < 3; c++) {
            const __m128i sh = _mm_cvtsi32_si128(8 * c);
            const __m512d a = _mm512_cvtepi32_pd(_mm256_and_si256(_mm256_srl_epi32(pa, sh), byte));
            const __m512d a3 =
                _mm512_cvtepi32_pd(_mm256_and_si256(_mm256_srl_epi32(pa3, sh), byte));
            const __m512d b = _mm512_cvtepi32_pd(_mm256_and_si256(_mm256_srl_epi32(pb, sh), byte));
            const __m512d b3 =
                _mm512_cvtepi32_pd(_mm256_and_si256(_mm256_srl_epi32(pb3, sh), byte));
            /* gy (gx a + fx a3) + fy (gx b + fx b3), as warp_pixel */
            const __m512d top = _mm512_add_pd(_mm512_mul_pd(gx, a), _mm512_mul_pd(fx, a3));
            const __m512d bot = _mm512_add_pd(_mm512_mul_pd(gx, b), _mm512_mul_pd(fx, b3));
            const __m512d v = _mm512_add_pd(_mm512_mul_pd(gy, top), _mm512_mul_pd(fy, bot));
            __m256i iv = _mm512_cvtpd_epi32(v); /* nearest even, as round_even */
            iv = _mm256_min_epi32(_mm256_max_epi32(iv, zero), byte);
            _mm256_storeu_si256((__m256i *)(void *)r[c], iv);
        }
        uint8_t *o = row + (size_t)x * 3;
        for (int k = 0; k < 8; k++)
            for (int c = 0; c < 3; c++)
                o[3 * k + c] = (uint8_t)r[c][k];
    }
    if (x < out_w)
        warp_row3_avx2(src, w, h, stride, M_inv, y, row, out_w, border, fill, x);
}
#endif

void fm_align_warp(const uint8_t *src, int w, int h, size_t stride, int channels,
                   const float M_inv[6], uint8_t *dst, int out_w, int out_h,
                   const fm_warp_opts *opts)
{
    fm_border border = opts ? opts->border : FM_BORDER_CONSTANT;
    uint8_t fill = opts ? opts->fill : 0;
#if ALIGN_HAVE_AVX2
    /* the gathers' offsets must fit in int32 (a 12 MP image uses 36 MB) */
    if (channels == 3 && w >= 2 && h >= 2 && fm_nn_isa_now() >= FM_NN_ISA_AVX2 &&
        stride <= (size_t)INT_MAX && (size_t)(h - 1) * stride + (size_t)w * 3 < (size_t)INT_MAX) {
        const int wide = fm_nn_isa_now() >= FM_NN_ISA_AVX512;
        for (int y = 0; y < out_h; y++) {
            uint8_t *row = dst + (size_t)y * (size_t)out_w * 3;
            if (wide)
                warp_row3_avx512(src, w, h, stride, M_inv, y, row, out_w, border, fill);
            else
                warp_row3_avx2(src, w, h, stride, M_inv, y, row, out_w, border, fill, 0);
        }
        return;
    }
#endif
    for (int y = 0; y < out_h; y++) {
        uint8_t *row = dst + (size_t)y * (size_t)out_w * (size_t)channels;
        for (int x = 0; x < out_w; x++)
            warp_pixel(src, w, h, stride, channels, M_inv, x, y, border, fill,
                       row + (size_t)x * (size_t)channels);
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
