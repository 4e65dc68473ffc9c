/* nn_pool.c - max, average and global average pooling, with the output-size rules the
 * models need: floor mode (PyTorch, TF) and ceil mode (Caffe-trained MTCNN), symmetric
 * or asymmetric padding, and both average-pool divisors. */
#include "nn_impl.h"

/* Output size along one axis; see fm_nn_pool2d_shape. */
static long long pool_out(long long in, int k, int s, int pad0, int pad1, int ceil_mode)
{
    long long span = in + pad0 + pad1 - k;
    long long o = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
    if (ceil_mode && (o - 1) * s >= in + pad0)
        o--;
    return o;
}

fm_status nn_pool_geometry(const char *op, const fm_tensor *x, const fm_pool2d_params *p,
                           pool_geom *g, fm_error *err)
{
    nn_shape_text sx;
    if (!p)
        return fm_error_set(err, FM_ERR_INVALID, "%s: parameters are NULL", op);
    if (p->kernel_h < 1 || p->kernel_w < 1 || p->stride_h < 1 || p->stride_w < 1)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: kernel %dx%d and stride %dx%d must be >= 1", op,
                            p->kernel_h, p->kernel_w, p->stride_h, p->stride_w);
    if (p->pad_top < 0 || p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0 ||
        p->pad_top >= p->kernel_h || p->pad_bottom >= p->kernel_h ||
        p->pad_left >= p->kernel_w || p->pad_right >= p->kernel_w)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: padding (top %d, left %d, bottom %d, right %d) must be >= 0 "
                            "and smaller than the kernel %dx%d", op, p->pad_top, p->pad_left,
                            p->pad_bottom, p->pad_right, p->kernel_h, p->kernel_w);
    long long ph = (long long)x->h + p->pad_top + p->pad_bottom;
    long long pw = (long long)x->w + p->pad_left + p->pad_right;
    if (ph > INT_MAX || pw > INT_MAX)
        return fm_error_set(err, FM_ERR_INVALID, "%s: padded input %lldx%lld is too large",
                            op, ph, pw);
    if (ph < p->kernel_h || pw < p->kernel_w)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: kernel %dx%d is larger than the padded input %lldx%lld "
                            "(input %s)", op, p->kernel_h, p->kernel_w, ph, pw,
                            nn_shape(x, &sx));
    g->oh = (int)pool_out(x->h, p->kernel_h, p->stride_h, p->pad_top, p->pad_bottom,
                          p->ceil_mode);
    g->ow = (int)pool_out(x->w, p->kernel_w, p->stride_w, p->pad_left, p->pad_right,
                          p->ceil_mode);
    return FM_OK;
}

fm_status fm_nn_pool2d_shape(const fm_tensor *x, const fm_pool2d_params *p, fm_tensor *y,
                             fm_error *err)
{
    const char *op = "pool2d";
    fm_status st;
    if ((st = nn_check(op, "input", x, 1, err)))
        return st;
    if (!y)
        return fm_error_set(err, FM_ERR_INVALID, "%s: output is NULL", op);
    pool_geom g = {0};
    if ((st = nn_pool_geometry(op, x, p, &g, err)))
        return st;
    y->n = x->n, y->c = x->c, y->h = g.oh, y->w = g.ow;
    return FM_OK;
}

/* Checks operands; FM_OK with *run 0 when the arena measures (nothing to compute). */
static fm_status pool_prepare(const char *op, fm_arena *a, const fm_tensor *x,
                              const fm_pool2d_params *p, fm_tensor *y, int *run,
                              fm_error *err)
{
    const int measuring = nn_measuring(a);
    fm_status st;
    pool_geom g = {0};
    *run = 0;
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "output", y, measuring, err)) ||
        (st = nn_pool_geometry(op, x, p, &g, err)) ||
        (st = nn_check_shape(op, "output", y, x->n, x->c, g.oh, g.ow, err)) ||
        (st = nn_check_disjoint(op, "the input", y, x, err)))
        return st;
    *run = !measuring;
    return FM_OK;
}

fm_status fm_nn_maxpool2d(fm_arena *a, const fm_tensor *x, const fm_pool2d_params *p,
                          fm_tensor *y, fm_error *err)
{
    int run;
    fm_status st = pool_prepare("maxpool2d", a, x, p, y, &run, err);
    if (st || !run)
        return st;
    const size_t in_plane = (size_t)x->h * x->w, out_plane = (size_t)y->h * y->w;
    const size_t planes = (size_t)x->n * x->c;
    /* MTCNN's pools: 2x2 and 3x3, stride 2, unpadded (ceil mode or not). */
    const int s2 = p->kernel_h == p->kernel_w && p->stride_h == 2 && p->stride_w == 2 &&
                   !p->pad_top && !p->pad_left && !p->pad_bottom && !p->pad_right;
    for (size_t pc = 0; pc < planes; pc++) {
        const float *xc = x->data + pc * in_plane;
        float *yc = y->data + pc * out_plane;
        if (s2 && nn_maxpool_s2(xc, x->h, x->w, p->kernel_h, yc, y->h, y->w))
            continue;
        for (int oy = 0; oy < y->h; oy++) {
            int hs, he, hspan;
            nn_pool_window(oy, p->stride_h, p->pad_top, p->pad_bottom, p->kernel_h, x->h, &hs,
                        &he, &hspan);
            for (int ox = 0; ox < y->w; ox++) {
                int ws, we, wspan;
                nn_pool_window(ox, p->stride_w, p->pad_left, p->pad_right, p->kernel_w, x->w,
                            &ws, &we, &wspan);
                /* Every window holds at least one input pixel (pad < kernel and the
                 * ceil-mode rule), so the first pixel is a valid start. */
                float m = xc[(size_t)hs * x->w + ws];
                for (int iy = hs; iy < he; iy++) {
                    const float *row = xc + (size_t)iy * x->w;
                    for (int ix = ws; ix < we; ix++)
                        m = row[ix] > m ? row[ix] : m;
                }
                yc[(size_t)oy * y->w + ox] = m;
            }
        }
    }
    return FM_OK;
}

fm_status fm_nn_avgpool2d(fm_arena *a, const fm_tensor *x, const fm_pool2d_params *p,
                          fm_tensor *y, fm_error *err)
{
    int run;
    fm_status st = pool_prepare("avgpool2d", a, x, p, y, &run, err);
    if (st || !run)
        return st;
    const size_t in_plane = (size_t)x->h * x->w, out_plane = (size_t)y->h * y->w;
    const size_t planes = (size_t)x->n * x->c;
    for (size_t pc = 0; pc < planes; pc++) {
        const float *xc = x->data + pc * in_plane;
        float *yc = y->data + pc * out_plane;
        for (int oy = 0; oy < y->h; oy++) {
            int hs, he, hspan;
            nn_pool_window(oy, p->stride_h, p->pad_top, p->pad_bottom, p->kernel_h, x->h, &hs,
                        &he, &hspan);
            for (int ox = 0; ox < y->w; ox++) {
                int ws, we, wspan;
                nn_pool_window(ox, p->stride_w, p->pad_left, p->pad_right, p->kernel_w, x->w,
                            &ws, &we, &wspan);
                float sum = 0.0f;
                for (int iy = hs; iy < he; iy++) {
                    const float *row = xc + (size_t)iy * x->w;
                    for (int ix = ws; ix < we; ix++)
                        sum += row[ix];
                }
                double count = p->count_include_pad ? (double)hspan * wspan
                                                    : (double)(he - hs) * (we - ws);
                yc[(size_t)oy * y->w + ox] = (float)(sum / count);
            }
        }
    }
    return FM_OK;
}

fm_status fm_nn_global_avgpool(fm_arena *a, const fm_tensor *x, fm_tensor *y, fm_error *err)
{
    const char *op = "global_avgpool";
    const int measuring = nn_measuring(a);
    fm_status st;
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "output", y, measuring, err)) ||
        (st = nn_check_shape(op, "output", y, x->n, x->c, 1, 1, err)) ||
        (st = nn_check_disjoint(op, "the input", y, x, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t plane = (size_t)x->h * x->w, planes = (size_t)x->n * x->c;
    for (size_t pc = 0; pc < planes; pc++) {
        const float *xc = x->data + pc * plane;
        double sum = 0.0;
        for (size_t i = 0; i < plane; i++)
            sum += xc[i];
        y->data[pc] = (float)(sum / (double)plane);
    }
    return FM_OK;
}
