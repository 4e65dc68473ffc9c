/* degrade.c - controlled damage to an image (include/facemill/degrade.h). */
#include "facemill/degrade.h"

#include "facemill/align.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

const char *const fm_degrade_suite[] = {
    "none",  "down24", "down32", "down48", "jpeg15", "blur1.5", "blur3", "gray",
    "rot25", "dark",   "bright", "occlude", "offcentre", NULL};

/* the number after a prefix: all of the rest must be it */
static int number_after(const char *spec, const char *prefix, double *v)
{
    size_t n = strlen(prefix);
    if (strncmp(spec, prefix, n) != 0 || !spec[n])
        return 0;
    char *end;
    *v = strtod(spec + n, &end);
    return *end == '\0' && isfinite(*v);
}

int fm_degrade_parse(const char *spec, fm_degrade *out)
{
    fm_degrade d = {0};
    double v = 0;
    if (!spec || strlen(spec) >= sizeof d.name)
        return -1;
    if (!strcmp(spec, "none"))
        d.kind = FM_DEGRADE_NONE;
    else if (!strcmp(spec, "gray"))
        d.kind = FM_DEGRADE_GRAY;
    else if (!strcmp(spec, "dark"))
        d.kind = FM_DEGRADE_EXPOSURE, d.param = -1.5;
    else if (!strcmp(spec, "bright"))
        d.kind = FM_DEGRADE_EXPOSURE, d.param = 1.0;
    else if (!strcmp(spec, "occlude"))
        d.kind = FM_DEGRADE_OCCLUDE;
    else if (!strcmp(spec, "offcentre"))
        d.kind = FM_DEGRADE_OFFCENTRE;
    else if (number_after(spec, "down", &v) && v == floor(v) && v >= 4 && v <= 1024)
        d.kind = FM_DEGRADE_DOWN, d.param = v;
    else if (number_after(spec, "jpeg", &v) && v == floor(v) && v >= 1 && v <= 100)
        d.kind = FM_DEGRADE_JPEG, d.param = v;
    else if (number_after(spec, "blur", &v) && v >= 0.1 && v <= 50)
        d.kind = FM_DEGRADE_BLUR, d.param = v;
    else if (number_after(spec, "rot", &v) && v >= -180 && v <= 180) {
        d.kind = FM_DEGRADE_ROTATE;
        d.param = v;
        d.alternate = spec[3] != '+' && spec[3] != '-';
    } else
        return -1;
    snprintf(d.name, sizeof d.name, "%s", spec);
    *out = d;
    return 0;
}

static int alloc_like(fm_image *out, const fm_image *in, int w, int h)
{
    *out = *in;
    out->w = w;
    out->h = h;
    out->stride = (size_t)w * 3;
    out->data = malloc((size_t)w * (size_t)h * 3);
    int num = in->scale_num > 0 ? in->scale_num : 1;
    int den = in->scale_denom > 0 ? in->scale_denom : 1;
    out->orig_w = (int)((long long)w * den / num);
    out->orig_h = (int)((long long)h * den / num);
    return out->data ? 0 : -1;
}

static uint8_t clamp8(double v)
{
    return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)lround(v);
}

/* area-average reduction of in to dst (dw x dh, dw <= w, dh <= h): each output pixel
 * the mean of the input area it covers, partial pixels weighted by their share */
static void reduce_area(const fm_image *in, uint8_t *dst, int dw, int dh)
{
    double sx = (double)in->w / dw, sy = (double)in->h / dh;
    for (int y = 0; y < dh; y++) {
        double y0 = y * sy, y1 = y0 + sy;
        for (int x = 0; x < dw; x++) {
            double x0 = x * sx, x1 = x0 + sx, acc[3] = {0, 0, 0}, wsum = 0;
            for (int yy = (int)y0; yy < in->h && yy < y1; yy++) {
                double wy = fmin(yy + 1, y1) - fmax(yy, y0);
                for (int xx = (int)x0; xx < in->w && xx < x1; xx++) {
                    double wgt = wy * (fmin(xx + 1, x1) - fmax(xx, x0));
                    const uint8_t *p = in->data + (size_t)yy * in->stride + (size_t)xx * 3;
                    for (int c = 0; c < 3; c++)
                        acc[c] += wgt * p[c];
                    wsum += wgt;
                }
            }
            for (int c = 0; c < 3; c++)
                dst[((size_t)y * dw + x) * 3 + c] = clamp8(acc[c] / wsum);
        }
    }
}

static void warp_into(const uint8_t *src, int sw, int sh, size_t stride, const float inv[6],
                      fm_image *out)
{
    fm_warp_opts wo = {FM_BORDER_REPLICATE, 0};
    fm_align_warp(src, sw, sh, stride, 3, inv, out->data, out->w, out->h, &wo);
}

static fm_status down(const fm_degrade *d, const fm_image *in, fm_image *out, fm_error *err)
{
    double s = d->param / (FM_DEGRADE_FACE_SHARE * in->w);
    if (s > 1)
        s = 1;
    int dw = (int)lround(in->w * s), dh = (int)lround(in->h * s);
    dw = dw < 1 ? 1 : dw;
    dh = dh < 1 ? 1 : dh;
    uint8_t *small = malloc((size_t)dw * (size_t)dh * 3);
    if (!small)
        return fm_error_set(err, FM_ERR_NOMEM, "degrade %s: out of memory", d->name);
    reduce_area(in, small, dw, dh);
    /* pixel centres: x_small = (x + 0.5) dw / w - 0.5 */
    double fx = (double)dw / in->w, fy = (double)dh / in->h;
    float inv[6] = {(float)fx, 0, (float)(0.5 * fx - 0.5), 0, (float)fy, (float)(0.5 * fy - 0.5)};
    warp_into(small, dw, dh, (size_t)dw * 3, inv, out);
    free(small);
    return FM_OK;
}

static fm_status jpeg(const fm_degrade *d, const fm_image *in, fm_image *out, fm_error *err)
{
    tjhandle c = tjInitCompress(), x = tjInitDecompress();
    unsigned char *buf = NULL;
    unsigned long len = 0;
    fm_status st = FM_OK;
    if (!c || !x ||
        tjCompress2(c, in->data, in->w, (int)in->stride, in->h, TJPF_RGB, &buf, &len,
                    TJSAMP_420, (int)d->param, TJFLAG_ACCURATEDCT) != 0 ||
        tjDecompress2(x, buf, len, out->data, out->w, (int)out->stride, out->h, TJPF_RGB,
                      TJFLAG_ACCURATEDCT) != 0)
        st = fm_error_set(err, FM_ERR_INTERNAL, "degrade %s: %s", d->name,
                          tjGetErrorStr2(c && x ? x : NULL));
    tjFree(buf);
    if (c)
        tjDestroy(c);
    if (x)
        tjDestroy(x);
    return st;
}

static fm_status blur(const fm_degrade *d, const fm_image *in, fm_image *out, fm_error *err)
{
    double sigma = d->param;
    int r = (int)ceil(3 * sigma), w = in->w, h = in->h;
    float *k = malloc((size_t)(2 * r + 1) * sizeof *k);
    float *tmp = malloc((size_t)w * (size_t)h * 3 * sizeof *tmp);
    if (!k || !tmp) {
        free(k);
        free(tmp);
        return fm_error_set(err, FM_ERR_NOMEM, "degrade %s: out of memory", d->name);
    }
    double sum = 0;
    for (int i = -r; i <= r; i++)
        sum += k[i + r] = (float)exp(-0.5 * i * i / (sigma * sigma));
    for (int i = 0; i <= 2 * r; i++)
        k[i] = (float)(k[i] / sum);
    for (int y = 0; y < h; y++) /* rows into tmp */
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float a = 0;
                for (int i = -r; i <= r; i++) {
                    int xx = x + i < 0 ? 0 : x + i >= w ? w - 1 : x + i;
                    a += k[i + r] * in->data[(size_t)y * in->stride + (size_t)xx * 3 + c];
                }
                tmp[((size_t)y * w + x) * 3 + c] = a;
            }
    for (int y = 0; y < h; y++) /* columns into out */
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float a = 0;
                for (int i = -r; i <= r; i++) {
                    int yy = y + i < 0 ? 0 : y + i >= h ? h - 1 : y + i;
                    a += k[i + r] * tmp[((size_t)yy * w + x) * 3 + c];
                }
                out->data[(size_t)y * out->stride + (size_t)x * 3 + c] = clamp8(a);
            }
    free(k);
    free(tmp);
    return FM_OK;
}

static double to_linear(double v)
{
    v /= 255;
    return v <= 0.04045 ? v / 12.92 : pow((v + 0.055) / 1.055, 2.4);
}

static double to_srgb(double v)
{
    v = v <= 0.0031308 ? 12.92 * v : 1.055 * pow(v, 1 / 2.4) - 0.055;
    return 255 * v;
}

static void exposure(const fm_degrade *d, const fm_image *in, fm_image *out)
{
    uint8_t lut[256];
    double gain = pow(2, d->param);
    for (int v = 0; v < 256; v++)
        lut[v] = clamp8(to_srgb(fmin(1, to_linear(v) * gain)));
    for (int y = 0; y < in->h; y++)
        for (int x = 0; x < 3 * in->w; x++)
            out->data[(size_t)y * out->stride + x] = lut[in->data[(size_t)y * in->stride + x]];
}

static void copy_pixels(const fm_image *in, fm_image *out, int x0, int y0)
{
    for (int y = 0; y < in->h; y++)
        memcpy(out->data + (size_t)(y + y0) * out->stride + (size_t)x0 * 3,
               in->data + (size_t)y * in->stride, (size_t)in->w * 3);
}

static void offcentre(const fm_image *in, unsigned variant, fm_image *out)
{
    /* the mean of the outermost ring */
    double acc[3] = {0, 0, 0};
    long cnt = 0;
    for (int y = 0; y < in->h; y++)
        for (int x = 0; x < in->w; x++) {
            if (y > 0 && y < in->h - 1 && x > 0 && x < in->w - 1)
                continue;
            for (int c = 0; c < 3; c++)
                acc[c] += in->data[(size_t)y * in->stride + (size_t)x * 3 + c];
            cnt++;
        }
    uint8_t fill[3];
    for (int c = 0; c < 3; c++)
        fill[c] = clamp8(acc[c] / (double)cnt);
    for (size_t i = 0; i < (size_t)out->w * (size_t)out->h; i++)
        memcpy(out->data + 3 * i, fill, 3);
    int x0 = variant & 1 ? out->w - in->w : 0, y0 = variant & 2 ? out->h - in->h : 0;
    copy_pixels(in, out, x0, y0);
}

fm_status fm_degrade_apply(const fm_degrade *d, const fm_image *in, unsigned variant,
                           fm_image *out, fm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!d || !in || !in->data || in->w < 1 || in->h < 1)
        return fm_error_set(err, FM_ERR_INVALID, "degrade: no image");
    int w = in->w, h = in->h;
    if (d->kind == FM_DEGRADE_OFFCENTRE) {
        w = (int)lround(1.5 * in->w);
        h = (int)lround(1.5 * in->h);
    }
    if (alloc_like(out, in, w, h) != 0) {
        memset(out, 0, sizeof *out);
        return fm_error_set(err, FM_ERR_NOMEM, "degrade %s: out of memory", d->name);
    }
    fm_status st = FM_OK;
    switch (d->kind) {
    case FM_DEGRADE_NONE:
        copy_pixels(in, out, 0, 0);
        break;
    case FM_DEGRADE_DOWN:
        st = down(d, in, out, err);
        break;
    case FM_DEGRADE_JPEG:
        st = jpeg(d, in, out, err);
        break;
    case FM_DEGRADE_BLUR:
        st = blur(d, in, out, err);
        break;
    case FM_DEGRADE_GRAY:
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                const uint8_t *p = in->data + (size_t)y * in->stride + (size_t)x * 3;
                uint8_t v = clamp8(0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]);
                uint8_t *q = out->data + (size_t)y * out->stride + (size_t)x * 3;
                q[0] = q[1] = q[2] = v;
            }
        break;
    case FM_DEGRADE_ROTATE: {
        double a = d->param * 3.14159265358979323846 / 180;
        if (d->alternate && (variant & 1))
            a = -a;
        /* output (x, y) samples the input at R(-a) about the centre; y points down, so
         * a positive angle turns the picture counter-clockwise as seen */
        double cx = (w - 1) / 2.0, cy = (h - 1) / 2.0, c = cos(a), s = sin(a);
        float inv[6] = {(float)c, (float)s, (float)(cx - c * cx - s * cy),
                        (float)-s, (float)c, (float)(cy + s * cx - c * cy)};
        warp_into(in->data, in->w, in->h, in->stride, inv, out);
        break;
    }
    case FM_DEGRADE_EXPOSURE:
        exposure(d, in, out);
        break;
    case FM_DEGRADE_OCCLUDE: {
        copy_pixels(in, out, 0, 0);
        int y0 = (int)lround(0.60 * h), y1 = (int)lround(0.85 * h);
        for (int y = y0; y < y1; y++)
            memset(out->data + (size_t)y * out->stride, 128, (size_t)w * 3);
        break;
    }
    case FM_DEGRADE_OFFCENTRE:
        offcentre(in, variant, out);
        break;
    }
    if (st != FM_OK) {
        free(out->data);
        memset(out, 0, sizeof *out);
    }
    return st;
}
