/* nn_grad.c - backward passes of the engine's operations (include/facemill/grad.h),
 * for the trainers: the same tensors, arena and checks as the forward passes, with
 * every gradient accumulated into its output so residual paths and split batches need
 * no extra buffers.
 *
 * Convolution is the hot spot of training a ResNet, as it is of inference: both of its
 * gradients are multiplies over the same im2col matrix the forward pass builds
 * (nn_im2col in nn_conv.c), and the input gradient goes back through its adjoint
 * (nn_col2im_add). Pooling reuses the forward's geometry (nn_pool_geometry,
 * nn_pool_window) so a window, its divisor and its argmax are the ones the forward
 * pass used. Everything else is a loop over the data. */
#include "facemill/grad.h"
#include "nn_impl.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- shared checks -------------------------------------------------------------- */

typedef struct grad_operand {
    const char *name;
    const fm_tensor *t; /* NULL when absent */
} grad_operand;

/* Operands [first_out, count) are gradient outputs: each must not share memory with
 * any operand before it (the inputs and the other outputs). */
static fm_status grad_disjoint(const char *op, const grad_operand *ops, int count,
                               int first_out, fm_error *err)
{
    for (int i = first_out; i < count; i++)
        for (int j = 0; j < i; j++)
            if (nn_overlap(ops[i].t, ops[j].t))
                return fm_error_set(err, FM_ERR_INVALID,
                                    "%s: %s overlaps %s (gradient outputs need their own "
                                    "memory)", op, ops[i].name, ops[j].name);
    return FM_OK;
}

/* An optional gradient output that must have exactly the shape of ref. */
static fm_status grad_check_like(const char *op, const char *name, const fm_tensor *g,
                                 const fm_tensor *ref, int measuring, fm_error *err)
{
    fm_status st;
    if (!g)
        return FM_OK;
    if ((st = nn_check(op, name, g, measuring, err)))
        return st;
    return nn_check_shape(op, name, g, ref->n, ref->c, ref->h, ref->w, err);
}

/* A flat view of count floats at p, for overlap tests on raw pointers. */
static fm_tensor grad_flat(const float *p, size_t count)
{
    fm_tensor t = fm_tensor_make(1, count > INT_MAX ? INT_MAX : (int)count, 1, 1,
                                 (float *)p);
    if (!p || !count)
        t.data = NULL;
    return t;
}

/* ---- convolution ---------------------------------------------------------------- */

/* Tuning, as in nn_conv.c (see ops/bench/bench_ops.c): below GRAD_GATHER_BELOW output
 * pixels per image several images share one multiply, because both gradients of a
 * small image are multiplies with a short inner or outer dimension; GRAD_COL_FLOATS is
 * the im2col buffer budget, at least GRAD_MIN_COLS columns. */
#ifndef GRAD_GATHER_BELOW
#define GRAD_GATHER_BELOW 256
#endif
#ifndef GRAD_COL_FLOATS
#define GRAD_COL_FLOATS (256 * 1024)
#endif
#ifndef GRAD_MIN_COLS
#define GRAD_MIN_COLS 256
#endif

typedef struct convb_plan {
    nn_conv_layout mode; /* NN_CONV_GATHERED: dy gathered to match the columns */
    int tile;            /* NN_CONV_TILED: output pixels per tile */
    int imgs;            /* NN_CONV_GATHERED: images per multiply */
    size_t scratch;      /* floats */
} convb_plan;

static convb_plan convb_choose(const conv_geom *g, int want_dx, int want_dw)
{
    convb_plan pl = {NN_CONV_TILED, 0, 0, 0};
    if (!want_dx && !want_dw)
        return pl; /* only the bias gradient: no multiply */
    pl.mode = nn_conv_layout_of(g, GRAD_COL_FLOATS, GRAD_MIN_COLS, GRAD_GATHER_BELOW, &pl.tile,
                                &pl.imgs);
    if (pl.mode == NN_CONV_TILED)
        /* One buffer serves both gradients: the weight gradient reads the im2col
         * columns, then the column gradient overwrites them. */
        pl.scratch = (size_t)g->k * (size_t)pl.tile;
    else if (pl.mode == NN_CONV_GATHERED)
        pl.scratch = ((size_t)g->k + (size_t)g->co) * (size_t)pl.imgs * (size_t)g->p;
    return pl;
}

fm_status fm_nn_conv2d_backward(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                                const fm_conv2d_params *p, const fm_tensor *dy,
                                fm_tensor *dx, fm_tensor *dw, fm_tensor *db,
                                fm_error *err)
{
    const char *op = "conv2d_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    conv_geom g;
    if ((st = nn_conv_operands(op, x, w, "dy", dy, p, measuring, &g, err)))
        return st;
    if (p->groups != 1)
        return fm_error_set(err, FM_ERR_UNSUPPORTED,
                            "%s: groups %d: only ungrouped convolutions (groups 1) have a "
                            "backward pass", op, p->groups);
    const grad_operand ops[] = {{"the input", x}, {"the weights", w}, {"dy", dy},
                                {"dx", dx},       {"dw", dw},         {"db", db}};
    if ((st = nn_check_shape(op, "dy", dy, g.n, g.co, g.oh, g.ow, err)) ||
        (st = grad_check_like(op, "dx", dx, x, measuring, err)) ||
        (st = grad_check_like(op, "dw", dw, w, measuring, err)) ||
        (st = nn_check_vec(op, "db", db, (size_t)g.co, measuring, err)) ||
        (st = grad_disjoint(op, ops, 6, 3, err)))
        return st;

    const convb_plan plan = convb_choose(&g, dx != NULL, dw != NULL);
    const size_t mark = fm_arena_mark(a);
    float *scratch = NULL;
    if (plan.scratch && (st = nn_scratch(a, op, plan.scratch, &scratch, err)))
        return st;
    if (measuring) {
        fm_arena_reset(a, mark);
        return FM_OK;
    }

    const size_t in_plane = (size_t)g.h * g.w, out_plane = (size_t)g.p;
    const float *dyd = dy->data;
    if (db) {
        for (int oc = 0; oc < g.co; oc++) {
            double sum = 0.0;
            for (int n = 0; n < g.n; n++) {
                const float *src = dyd + ((size_t)n * g.co + oc) * out_plane;
                float part = 0.0f; /* one plane in float, planes summed in double */
                for (size_t q = 0; q < out_plane; q++)
                    part += src[q];
                sum += part;
            }
            db->data[oc] += (float)sum;
        }
    }
    if (!dx && !dw) {
        fm_arena_reset(a, mark);
        return FM_OK;
    }
    nn_blas_ready();

    /* Per multiply, with cols the im2col matrix [K, P] and dY the output gradient
     * [CO, P] of the pixels at hand:
     *   dW [CO, K] += dY cols^T        (beta 1: accumulates across images and calls)
     *   dcols [K, P] = W^T dY          (beta 0, then added back into dx by col2im) */
    const float *wd = w->data;
    switch (plan.mode) {
    case NN_CONV_1X1:
        for (int n = 0; n < g.n; n++) {
            const float *dyn = dyd + (size_t)n * g.co * out_plane;
            const float *xn = x->data + (size_t)n * g.c * in_plane;
            if (dw)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g.co, g.k, g.p, 1.0f,
                            dyn, g.p, xn, g.p, 1.0f, dw->data, g.k);
            if (dx)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g.k, g.p, g.co, 1.0f,
                            wd, g.k, dyn, g.p, 1.0f, dx->data + (size_t)n * g.c * in_plane,
                            g.p);
        }
        break;
    case NN_CONV_TILED:
        for (int n = 0; n < g.n; n++) {
            const float *dyn = dyd + (size_t)n * g.co * out_plane;
            const float *xn = x->data + (size_t)n * g.c * in_plane;
            for (int p0 = 0; p0 < g.p; p0 += plan.tile) {
                const int cols = g.p - p0 < plan.tile ? g.p - p0 : plan.tile;
                if (dw) {
                    nn_im2col(&g, xn, p0, p0 + cols, scratch, (size_t)cols);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g.co, g.k, cols,
                                1.0f, dyn + p0, g.p, scratch, cols, 1.0f, dw->data, g.k);
                }
                if (dx) {
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g.k, cols, g.co,
                                1.0f, wd, g.k, dyn + p0, g.p, 0.0f, scratch, cols);
                    nn_col2im_add(&g, scratch, p0, p0 + cols, (size_t)cols,
                                  dx->data + (size_t)n * g.c * in_plane);
                }
            }
        }
        break;
    case NN_CONV_GATHERED: {
        float *col = scratch;
        float *dyg = scratch + (size_t)g.k * plan.imgs * g.p;
        for (int n0 = 0; n0 < g.n; n0 += plan.imgs) {
            const int imgs = g.n - n0 < plan.imgs ? g.n - n0 : plan.imgs;
            const int cols = imgs * g.p;
            for (int j = 0; j < imgs; j++)
                for (int oc = 0; oc < g.co; oc++)
                    memcpy(dyg + (size_t)oc * cols + (size_t)j * g.p,
                           dyd + ((size_t)(n0 + j) * g.co + oc) * out_plane,
                           out_plane * sizeof *dyg);
            if (dw) {
                for (int j = 0; j < imgs; j++)
                    nn_im2col(&g, x->data + (size_t)(n0 + j) * g.c * in_plane, 0, g.p,
                              col + (size_t)j * g.p, (size_t)cols);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g.co, g.k, cols, 1.0f,
                            dyg, cols, col, cols, 1.0f, dw->data, g.k);
            }
            if (dx) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g.k, cols, g.co, 1.0f,
                            wd, g.k, dyg, cols, 0.0f, col, cols);
                for (int j = 0; j < imgs; j++)
                    nn_col2im_add(&g, col + (size_t)j * g.p, 0, g.p, (size_t)cols,
                                  dx->data + (size_t)(n0 + j) * g.c * in_plane);
            }
        }
        break;
    }
    }
    fm_arena_reset(a, mark);
    return FM_OK;
}

/* ---- pooling -------------------------------------------------------------------- */

/* Checks a pooling backward pass over an input of shape in (x or dx): dy must have the
 * forward output's shape, dx (optional) the input's. */
static fm_status pool_back_prepare(const char *op, int measuring, const fm_tensor *in,
                                   const fm_pool2d_params *p, const fm_tensor *dy,
                                   const fm_tensor *dx, fm_error *err)
{
    fm_status st;
    pool_geom g = {0};
    if ((st = nn_check(op, "dy", dy, measuring, err)) ||
        (st = nn_pool_geometry(op, in, p, &g, err)) ||
        (st = nn_check_shape(op, "dy", dy, in->n, in->c, g.oh, g.ow, err)))
        return st;
    return grad_check_like(op, "dx", dx, in, measuring, err);
}

fm_status fm_nn_maxpool2d_backward(fm_arena *a, const fm_tensor *x,
                                   const fm_pool2d_params *p, const fm_tensor *dy,
                                   fm_tensor *dx, fm_error *err)
{
    const char *op = "maxpool2d_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    const grad_operand ops[] = {{"the input", x}, {"dy", dy}, {"dx", dx}};
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = pool_back_prepare(op, measuring, x, p, dy, dx, err)) ||
        (st = grad_disjoint(op, ops, 3, 2, err)))
        return st;
    if (measuring || !dx)
        return FM_OK;
    const size_t in_plane = (size_t)x->h * x->w, out_plane = (size_t)dy->h * dy->w;
    const size_t planes = (size_t)x->n * x->c;
    for (size_t pc = 0; pc < planes; pc++) {
        const float *xc = x->data + pc * in_plane;
        const float *dyc = dy->data + pc * out_plane;
        float *dxc = dx->data + pc * in_plane;
        for (int oy = 0; oy < dy->h; oy++) {
            int hs, he, hspan;
            nn_pool_window(oy, p->stride_h, p->pad_top, p->pad_bottom, p->kernel_h, x->h,
                           &hs, &he, &hspan);
            for (int ox = 0; ox < dy->w; ox++) {
                int ws, we, wspan;
                nn_pool_window(ox, p->stride_w, p->pad_left, p->pad_right, p->kernel_w,
                               x->w, &ws, &we, &wspan);
                /* The forward pass's scan exactly: start at the window's first pixel
                 * and move only on a strictly greater value, so ties (and NaN) resolve
                 * to the pixel whose value the forward pass returned. */
                size_t best = (size_t)hs * x->w + ws;
                float m = xc[best];
                for (int iy = hs; iy < he; iy++) {
                    const float *row = xc + (size_t)iy * x->w;
                    for (int ix = ws; ix < we; ix++)
                        if (row[ix] > m) {
                            m = row[ix];
                            best = (size_t)iy * x->w + ix;
                        }
                }
                dxc[best] += dyc[(size_t)oy * dy->w + ox];
            }
        }
    }
    return FM_OK;
}

fm_status fm_nn_avgpool2d_backward(fm_arena *a, const fm_pool2d_params *p,
                                   const fm_tensor *dy, fm_tensor *dx, fm_error *err)
{
    const char *op = "avgpool2d_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    const grad_operand ops[] = {{"dy", dy}, {"dx", dx}};
    /* dx gives the input's shape, so it is required even though its gradient could be
     * skipped: without it the geometry is unknown. */
    if ((st = nn_check(op, "dx", dx, measuring, err)) ||
        (st = pool_back_prepare(op, measuring, dx, p, dy, dx, err)) ||
        (st = grad_disjoint(op, ops, 2, 1, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t in_plane = (size_t)dx->h * dx->w, out_plane = (size_t)dy->h * dy->w;
    const size_t planes = (size_t)dx->n * dx->c;
    for (size_t pc = 0; pc < planes; pc++) {
        const float *dyc = dy->data + pc * out_plane;
        float *dxc = dx->data + pc * in_plane;
        for (int oy = 0; oy < dy->h; oy++) {
            int hs, he, hspan;
            nn_pool_window(oy, p->stride_h, p->pad_top, p->pad_bottom, p->kernel_h, dx->h,
                           &hs, &he, &hspan);
            for (int ox = 0; ox < dy->w; ox++) {
                int ws, we, wspan;
                nn_pool_window(ox, p->stride_w, p->pad_left, p->pad_right, p->kernel_w,
                               dx->w, &ws, &we, &wspan);
                /* The forward divisor, computed the same way. */
                double count = p->count_include_pad ? (double)hspan * wspan
                                                    : (double)(he - hs) * (we - ws);
                const float v = (float)(dyc[(size_t)oy * dy->w + ox] / count);
                for (int iy = hs; iy < he; iy++) {
                    float *row = dxc + (size_t)iy * dx->w;
                    for (int ix = ws; ix < we; ix++)
                        row[ix] += v;
                }
            }
        }
    }
    return FM_OK;
}

fm_status fm_nn_global_avgpool_backward(fm_arena *a, const fm_tensor *dy, fm_tensor *dx,
                                        fm_error *err)
{
    const char *op = "global_avgpool_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    const grad_operand ops[] = {{"dy", dy}, {"dx", dx}};
    if ((st = nn_check(op, "dy", dy, measuring, err)) ||
        (st = nn_check(op, "dx", dx, measuring, err)) ||
        (st = nn_check_shape(op, "dy", dy, dx->n, dx->c, 1, 1, err)) ||
        (st = grad_disjoint(op, ops, 2, 1, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t plane = (size_t)dx->h * dx->w, planes = (size_t)dx->n * dx->c;
    for (size_t pc = 0; pc < planes; pc++) {
        const float v = (float)(dy->data[pc] / (double)plane);
        float *dxc = dx->data + pc * plane;
        for (size_t i = 0; i < plane; i++)
            dxc[i] += v;
    }
    return FM_OK;
}

/* ---- dense ---------------------------------------------------------------------- */

fm_status fm_nn_dense_backward(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                               const fm_tensor *dy, fm_tensor *dx, fm_tensor *dw,
                               fm_tensor *db, fm_error *err)
{
    const char *op = "dense_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    size_t in;
    if ((st = nn_dense_operands(op, x, w, "dy", dy, measuring, &in, err)))
        return st;
    const int out = w->n, n = x->n;
    const grad_operand ops[] = {{"the input", x}, {"the weights", w}, {"dy", dy},
                                {"dx", dx},       {"dw", dw},         {"db", db}};
    if ((st = nn_check_shape(op, "dy", dy, n, out, 1, 1, err)) ||
        (st = grad_check_like(op, "dx", dx, x, measuring, err)) ||
        (st = grad_check_like(op, "dw", dw, w, measuring, err)) ||
        (st = nn_check_vec(op, "db", db, (size_t)out, measuring, err)) ||
        (st = grad_disjoint(op, ops, 6, 3, err)))
        return st;
    if (measuring)
        return FM_OK;
    if (dx || dw)
        nn_blas_ready();
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, (int)in, out, 1.0f,
                    dy->data, out, w->data, (int)in, 1.0f, dx->data, (int)in);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, (int)in, n, 1.0f, dy->data,
                    out, x->data, (int)in, 1.0f, dw->data, (int)in);
    if (db) {
        for (int o = 0; o < out; o++) {
            double sum = 0.0;
            for (int i = 0; i < n; i++)
                sum += dy->data[(size_t)i * out + o];
            db->data[o] += (float)sum;
        }
    }
    return FM_OK;
}

/* ---- per-channel and element-wise ----------------------------------------------- */

fm_status fm_nn_scale_shift_backward(fm_arena *a, const fm_tensor *x,
                                     const fm_tensor *scale, const fm_tensor *dy,
                                     fm_tensor *dx, fm_tensor *dscale, fm_tensor *dshift,
                                     fm_error *err)
{
    const char *op = "scale_shift_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    if ((st = nn_check(op, "dy", dy, measuring, err)))
        return st;
    const size_t C = (size_t)dy->c;
    if (x || dscale) {
        if ((st = nn_check(op, "input", x, measuring, err)) ||
            (st = nn_check_shape(op, "dy", dy, x->n, x->c, x->h, x->w, err)))
            return st;
    }
    const grad_operand ops[] = {{"the input", x}, {"the scale", scale}, {"dy", dy},
                                {"dx", dx},       {"dscale", dscale},   {"dshift", dshift}};
    if ((st = nn_check_vec(op, "scale", scale, C, measuring, err)) ||
        (st = grad_check_like(op, "dx", dx, dy, measuring, err)) ||
        (st = nn_check_vec(op, "dscale", dscale, C, measuring, err)) ||
        (st = nn_check_vec(op, "dshift", dshift, C, measuring, err)) ||
        (st = grad_disjoint(op, ops, 6, 3, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t plane = (size_t)dy->h * dy->w;
    for (size_t c = 0; c < C; c++) {
        const float s = scale ? scale->data[c] : 1.0f;
        double ds = 0.0, dt = 0.0;
        for (int n = 0; n < dy->n; n++) {
            const size_t off = ((size_t)n * C + c) * plane;
            const float *dyc = dy->data + off;
            if (dx) {
                float *dxc = dx->data + off;
                for (size_t i = 0; i < plane; i++)
                    dxc[i] += dyc[i] * s;
            }
            if (dscale) {
                const float *xc = x->data + off;
                float part = 0.0f;
                for (size_t i = 0; i < plane; i++)
                    part += dyc[i] * xc[i];
                ds += part;
            }
            if (dshift) {
                float part = 0.0f;
                for (size_t i = 0; i < plane; i++)
                    part += dyc[i];
                dt += part;
            }
        }
        if (dscale)
            dscale->data[c] += (float)ds;
        if (dshift)
            dshift->data[c] += (float)dt;
    }
    return FM_OK;
}

/* Checks an element-wise backward pass: t (y or x of the forward) and dy of one shape,
 * dx optional of that shape and disjoint from both. */
static fm_status eltwise_back_prepare(const char *op, int measuring, const char *tname,
                                      const fm_tensor *t, const fm_tensor *dy,
                                      const fm_tensor *dx, fm_error *err)
{
    fm_status st;
    const grad_operand ops[] = {{tname, t}, {"dy", dy}, {"dx", dx}};
    if ((st = nn_check(op, tname, t, measuring, err)) ||
        (st = nn_check(op, "dy", dy, measuring, err)) ||
        (st = nn_check_shape(op, "dy", dy, t->n, t->c, t->h, t->w, err)) ||
        (st = grad_check_like(op, "dx", dx, t, measuring, err)) ||
        (st = grad_disjoint(op, ops, 3, 2, err)))
        return st;
    return FM_OK;
}

fm_status fm_nn_relu_backward(fm_arena *a, const fm_tensor *y, const fm_tensor *dy,
                              fm_tensor *dx, fm_error *err)
{
    const int measuring = nn_measuring(a);
    fm_status st = eltwise_back_prepare("relu_backward", measuring, "y", y, dy, dx, err);
    if (st || measuring || !dx)
        return st;
    const size_t count = fm_tensor_count(y);
    const float *yd = y->data, *g = dy->data;
    float *d = dx->data;
    for (size_t i = 0; i < count; i++)
        d[i] += yd[i] > 0.0f ? g[i] : 0.0f;
    return FM_OK;
}

fm_status fm_nn_leaky_relu_backward(fm_arena *a, const fm_tensor *y, float alpha,
                                    const fm_tensor *dy, fm_tensor *dx, fm_error *err)
{
    const char *op = "leaky_relu_backward";
    if (!(alpha >= 0.0f) || !isfinite(alpha))
        return fm_error_set(err, FM_ERR_INVALID, "%s: alpha %g must be finite and >= 0", op,
                            (double)alpha);
    const int measuring = nn_measuring(a);
    fm_status st = eltwise_back_prepare(op, measuring, "y", y, dy, dx, err);
    if (st || measuring || !dx)
        return st;
    const size_t count = fm_tensor_count(y);
    const float *yd = y->data, *g = dy->data;
    float *d = dx->data;
    for (size_t i = 0; i < count; i++)
        d[i] += yd[i] > 0.0f ? g[i] : alpha * g[i];
    return FM_OK;
}

fm_status fm_nn_prelu_backward(fm_arena *a, const fm_tensor *x, const fm_tensor *slope,
                               const fm_tensor *dy, fm_tensor *dx, fm_tensor *dslope,
                               fm_error *err)
{
    const char *op = "prelu_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "slope", slope, measuring, err)) ||
        (st = nn_check(op, "dy", dy, measuring, err)) ||
        (st = nn_check_shape(op, "dy", dy, x->n, x->c, x->h, x->w, err)) ||
        (st = nn_check_slope(op, slope, x, err)))
        return st;
    const size_t ns = fm_tensor_count(slope);
    const grad_operand ops[] = {{"the input", x}, {"the slope", slope}, {"dy", dy},
                                {"dx", dx},       {"dslope", dslope}};
    if ((st = grad_check_like(op, "dx", dx, x, measuring, err)) ||
        (st = grad_check_like(op, "dslope", dslope, slope, measuring, err)) ||
        (st = grad_disjoint(op, ops, 5, 3, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t plane = (size_t)x->h * x->w;
    double shared = 0.0;
    for (int c = 0; c < x->c; c++) {
        const float s = slope->data[ns == 1 ? 0 : c];
        double ds = 0.0;
        for (int n = 0; n < x->n; n++) {
            const size_t off = ((size_t)n * x->c + c) * plane;
            const float *xc = x->data + off, *dyc = dy->data + off;
            if (dx) {
                float *dxc = dx->data + off;
                for (size_t i = 0; i < plane; i++)
                    dxc[i] += xc[i] > 0.0f ? dyc[i] : s * dyc[i];
            }
            if (dslope) {
                float part = 0.0f;
                for (size_t i = 0; i < plane; i++)
                    part += xc[i] > 0.0f ? 0.0f : dyc[i] * xc[i];
                ds += part;
            }
        }
        if (dslope && ns == 1)
            shared += ds;
        else if (dslope)
            dslope->data[c] += (float)ds;
    }
    if (dslope && ns == 1)
        dslope->data[0] += (float)shared;
    return FM_OK;
}

fm_status fm_nn_add_backward(fm_arena *a, const fm_tensor *dy, float s, fm_tensor *dx,
                             fm_tensor *dr, fm_error *err)
{
    const char *op = "add_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    if (!isfinite(s))
        return fm_error_set(err, FM_ERR_INVALID, "%s: scale %g is not finite", op, (double)s);
    const grad_operand ops[] = {{"dy", dy}, {"dx", dx}, {"dr", dr}};
    if ((st = nn_check(op, "dy", dy, measuring, err)) ||
        (st = grad_check_like(op, "dx", dx, dy, measuring, err)) ||
        (st = grad_check_like(op, "dr", dr, dy, measuring, err)) ||
        (st = grad_disjoint(op, ops, 3, 1, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t count = fm_tensor_count(dy);
    const float *g = dy->data;
    if (dx) {
        float *d = dx->data;
        for (size_t i = 0; i < count; i++)
            d[i] += g[i];
    }
    if (dr) {
        float *d = dr->data;
        for (size_t i = 0; i < count; i++)
            d[i] += s * g[i];
    }
    return FM_OK;
}

fm_status fm_nn_channel_pad_backward(fm_arena *a, const fm_tensor *dy, fm_tensor *dx,
                                     fm_error *err)
{
    const char *op = "channel_pad_backward";
    const int measuring = nn_measuring(a);
    fm_status st;
    const grad_operand ops[] = {{"dy", dy}, {"dx", dx}};
    /* dx carries the input's channel count, so it is required. */
    if ((st = nn_check(op, "dy", dy, measuring, err)) ||
        (st = nn_check(op, "dx", dx, measuring, err)))
        return st;
    if (dy->n != dx->n || dy->h != dx->h || dy->w != dx->w || dy->c < dx->c) {
        nn_shape_text sx, sy;
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: dy %s must have dx's n, h, w and at least its channels "
                            "(dx %s)", op, nn_shape(dy, &sy), nn_shape(dx, &sx));
    }
    if ((st = grad_disjoint(op, ops, 2, 1, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t plane = (size_t)dx->h * dx->w;
    const size_t in_block = (size_t)dx->c * plane, out_block = (size_t)dy->c * plane;
    for (int n = 0; n < dx->n; n++) {
        const float *src = dy->data + (size_t)n * out_block;
        float *dst = dx->data + (size_t)n * in_block;
        for (size_t i = 0; i < in_block; i++)
            dst[i] += src[i];
    }
    return FM_OK;
}

/* ---- loss ----------------------------------------------------------------------- */

/* How far a target row's sum may be from 1: float rounding of a smoothed label of a
 * few hundred classes stays orders of magnitude below this; a bug (an unnormalised
 * or all-zero row) does not. */
#define XENT_SUM_TOL 1e-3

fm_status fm_nn_softmax_xent(fm_arena *a, const fm_tensor *logits, const float *target,
                             const float *weight, float scale, double *loss,
                             fm_tensor *dlogits, float *probs, fm_error *err)
{
    const char *op = "softmax_xent";
    const int measuring = nn_measuring(a);
    fm_status st;
    if (!isfinite(scale))
        return fm_error_set(err, FM_ERR_INVALID, "%s: scale %g is not finite", op,
                            (double)scale);
    if ((st = nn_check(op, "logits", logits, measuring, err)))
        return st;
    if (logits->h != 1 || logits->w != 1) {
        nn_shape_text s;
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: logits have shape %s, expected [N, K, 1, 1]", op,
                            nn_shape(logits, &s));
    }
    if (!target && !measuring)
        return fm_error_set(err, FM_ERR_INVALID, "%s: target is NULL", op);
    const int N = logits->n, K = logits->c;
    const size_t count = (size_t)N * K;
    const fm_tensor tt = grad_flat(target, count), tw = grad_flat(weight, (size_t)N);
    const fm_tensor tp = grad_flat(probs, count);
    const grad_operand ops[] = {{"the logits", logits}, {"the target", &tt},
                                {"the weights", &tw},   {"dlogits", dlogits},
                                {"probs", &tp}};
    if ((st = grad_check_like(op, "dlogits", dlogits, logits, measuring, err)) ||
        (st = grad_disjoint(op, ops, 5, 3, err)))
        return st;
    if (measuring)
        return FM_OK;

    /* Everything is checked before anything is written, so a rejected call leaves the
     * outputs as they were. */
    for (int n = 0; n < N; n++) {
        const float *t = target + (size_t)n * K, *l = logits->data + (size_t)n * K;
        double sum = 0.0;
        for (int k = 0; k < K; k++) {
            if (!(t[k] >= 0.0f) || !isfinite(t[k]))
                return fm_error_set(err, FM_ERR_INVALID,
                                    "%s: target[%d, %d] = %g is negative or not finite", op,
                                    n, k, (double)t[k]);
            if (!isfinite(l[k]))
                return fm_error_set(err, FM_ERR_INVALID,
                                    "%s: logits[%d, %d] = %g is not finite", op, n, k,
                                    (double)l[k]);
            sum += t[k];
        }
        if (fabs(sum - 1.0) > XENT_SUM_TOL)
            return fm_error_set(err, FM_ERR_INVALID,
                                "%s: target row %d sums to %g, not 1", op, n, sum);
        if (weight && (!(weight[n] >= 0.0f) || !isfinite(weight[n])))
            return fm_error_set(err, FM_ERR_INVALID,
                                "%s: weight[%d] = %g is negative or not finite", op, n,
                                (double)weight[n]);
    }

    double total = 0.0;
    for (int n = 0; n < N; n++) {
        const float *t = target + (size_t)n * K, *l = logits->data + (size_t)n * K;
        /* log-sum-exp around the maximum: every exponent is <= 0, the largest is 0. */
        double m = l[0];
        for (int k = 1; k < K; k++)
            m = l[k] > m ? l[k] : m;
        double se = 0.0;
        for (int k = 0; k < K; k++)
            se += exp((double)l[k] - m);
        const double lse = m + log(se);
        double row = 0.0;
        for (int k = 0; k < K; k++)
            if (t[k] > 0.0f)
                row += (double)t[k] * (lse - l[k]);
        const double wn = weight ? (double)weight[n] : 1.0;
        total += wn * row;
        const double gs = (double)scale * wn;
        for (int k = 0; k < K; k++) {
            const double pk = exp((double)l[k] - lse);
            if (probs)
                probs[(size_t)n * K + k] = (float)pk;
            if (dlogits)
                dlogits->data[(size_t)n * K + k] += (float)(gs * (pk - t[k]));
        }
    }
    if (loss)
        *loss = (double)scale * total;
    return FM_OK;
}

void fm_nn_gaussian_target(int k, double mu, double sigma, float *out)
{
    if (k < 1 || !out)
        return;
    if (!(sigma > 0.0) || !isfinite(mu)) {
        /* One-hot; NaN mu falls to class 0 rather than indexing with garbage. */
        double r = round(mu);
        int idx = !(r >= 0.0) ? 0 : r > (double)(k - 1) ? k - 1 : (int)r;
        for (int i = 0; i < k; i++)
            out[i] = i == idx ? 1.0f : 0.0f;
        return;
    }
    /* Exponents relative to the class nearest mu, so a mu far outside 0..k-1 or a
     * tiny sigma cannot underflow every class to 0. */
    double near = round(mu);
    near = near < 0.0 ? 0.0 : near > (double)(k - 1) ? (double)(k - 1) : near;
    const double d0 = (near - mu) * (near - mu), inv = 1.0 / (2.0 * sigma * sigma);
    double sum = 0.0;
    for (int i = 0; i < k; i++)
        sum += exp(-(((double)i - mu) * ((double)i - mu) - d0) * inv);
    for (int i = 0; i < k; i++)
        out[i] = (float)(exp(-(((double)i - mu) * ((double)i - mu) - d0) * inv) / sum);
}
