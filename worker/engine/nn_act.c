/* nn_act.c - per-channel and element-wise layers: scale+shift (folded batch norm,
 * dlib's affine), PReLU (MTCNN), ReLU, LeakyReLU (the heads) and softmax over channels.
 * All may run in place. */
#include "nn_impl.h"

#include <math.h>

/* Checks x and y for an element-wise op: same shape, y in place over x or disjoint.
 * *run is 0 when the arena measures. */
static fm_status eltwise_prepare(const char *op, fm_arena *a, const fm_tensor *x,
                                 fm_tensor *y, int *run, fm_error *err)
{
    const int measuring = nn_measuring(a);
    fm_status st;
    *run = 0;
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "output", y, measuring, err)) ||
        (st = nn_check_shape(op, "output", y, x->n, x->c, x->h, x->w, err)) ||
        (st = nn_check_inplace(op, "the input", y, x, err)))
        return st;
    *run = !measuring;
    return FM_OK;
}

fm_status fm_nn_scale_shift(fm_arena *a, const fm_tensor *x, const fm_tensor *scale,
                            const fm_tensor *shift, fm_tensor *y, fm_error *err)
{
    const char *op = "scale_shift";
    int run;
    fm_status st = eltwise_prepare(op, a, x, y, &run, err);
    if (st)
        return st;
    const int measuring = !run;
    if ((st = nn_check_vec(op, "scale", scale, (size_t)x->c, measuring, err)) ||
        (st = nn_check_vec(op, "shift", shift, (size_t)x->c, measuring, err)) ||
        (st = nn_check_disjoint(op, "the scale", y, scale, err)) ||
        (st = nn_check_disjoint(op, "the shift", y, shift, err)))
        return st;
    if (!run)
        return FM_OK;
    const size_t plane = (size_t)x->h * x->w;
    for (int n = 0; n < x->n; n++) {
        for (int c = 0; c < x->c; c++) {
            const size_t off = ((size_t)n * x->c + c) * plane;
            const float *xc = x->data + off;
            float *yc = y->data + off;
            const float s = scale ? scale->data[c] : 1.0f;
            const float t = shift ? shift->data[c] : 0.0f;
            for (size_t i = 0; i < plane; i++)
                yc[i] = xc[i] * s + t;
        }
    }
    return FM_OK;
}

/* See nn_impl.h. */
fm_status nn_check_slope(const char *op, const fm_tensor *slope, const fm_tensor *x,
                         fm_error *err)
{
    const size_t ns = fm_tensor_count(slope);
    if (ns == 1 || ns == (size_t)x->c)
        return FM_OK;
    nn_shape_text s;
    return fm_error_set(err, FM_ERR_INVALID,
                        "%s: slope has shape %s; expected %d elements (one per channel) or 1",
                        op, nn_shape(slope, &s), x->c);
}

fm_status fm_nn_prelu(fm_arena *a, const fm_tensor *x, const fm_tensor *slope, fm_tensor *y,
                      fm_error *err)
{
    const char *op = "prelu";
    int run;
    fm_status st = eltwise_prepare(op, a, x, y, &run, err);
    if (st)
        return st;
    if ((st = nn_check(op, "slope", slope, !run, err)) ||
        (st = nn_check_slope(op, slope, x, err)) ||
        (st = nn_check_disjoint(op, "the slope", y, slope, err)))
        return st;
    const size_t ns = fm_tensor_count(slope);
    if (!run)
        return FM_OK;
    const size_t plane = (size_t)x->h * x->w;
    for (int n = 0; n < x->n; n++) {
        for (int c = 0; c < x->c; c++) {
            const size_t off = ((size_t)n * x->c + c) * plane;
            const float *xc = x->data + off;
            float *yc = y->data + off;
            nn_prelu_plane(xc, slope->data[ns == 1 ? 0 : c], yc, plane);
        }
    }
    return FM_OK;
}

fm_status fm_nn_relu(fm_arena *a, const fm_tensor *x, fm_tensor *y, fm_error *err)
{
    int run;
    fm_status st = eltwise_prepare("relu", a, x, y, &run, err);
    if (st || !run)
        return st;
    const size_t count = fm_tensor_count(x);
    for (size_t i = 0; i < count; i++)
        y->data[i] = x->data[i] > 0.0f ? x->data[i] : 0.0f;
    return FM_OK;
}

fm_status fm_nn_leaky_relu(fm_arena *a, const fm_tensor *x, float alpha, fm_tensor *y,
                           fm_error *err)
{
    const char *op = "leaky_relu";
    if (!isfinite(alpha))
        return fm_error_set(err, FM_ERR_INVALID, "%s: alpha %g is not finite", op,
                            (double)alpha);
    int run;
    fm_status st = eltwise_prepare(op, a, x, y, &run, err);
    if (st || !run)
        return st;
    const size_t count = fm_tensor_count(x);
    for (size_t i = 0; i < count; i++)
        y->data[i] = x->data[i] > 0.0f ? x->data[i] : alpha * x->data[i];
    return FM_OK;
}

fm_status fm_nn_softmax(fm_arena *a, const fm_tensor *x, fm_tensor *y, fm_error *err)
{
    int run;
    fm_status st = eltwise_prepare("softmax", a, x, y, &run, err);
    if (st || !run)
        return st;
    /* Channels of one position are plane floats apart; for the heads ([N, K, 1, 1])
     * they are contiguous. */
    const size_t plane = (size_t)x->h * x->w, C = (size_t)x->c;
    for (int n = 0; n < x->n; n++) {
        const float *xn = x->data + (size_t)n * C * plane;
        float *yn = y->data + (size_t)n * C * plane;
        for (size_t s = 0; s < plane; s++) {
            float m = xn[s];
            for (size_t c = 1; c < C; c++)
                m = xn[c * plane + s] > m ? xn[c * plane + s] : m;
            float sum = 0.0f;
            for (size_t c = 0; c < C; c++) {
                float e = expf(xn[c * plane + s] - m);
                yn[c * plane + s] = e;
                sum += e;
            }
            const float inv = 1.0f / sum; /* sum >= 1: the maximum contributes exp(0) */
            for (size_t c = 0; c < C; c++)
                yn[c * plane + s] *= inv;
        }
    }
    return FM_OK;
}
