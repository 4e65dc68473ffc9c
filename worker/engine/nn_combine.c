/* nn_combine.c - operations that combine or reshape whole tensors: residual add,
 * concatenation along channels (Inception blocks), channel zero-padding (dlib's ResNet
 * down-sampling shortcut) and per-image L2 normalisation (embeddings). */
#include "nn_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

fm_status fm_nn_add(fm_arena *a, const fm_tensor *x, const fm_tensor *r, float s,
                    fm_tensor *y, fm_error *err)
{
    const char *op = "add";
    const int measuring = nn_measuring(a);
    fm_status st;
    if (!isfinite(s))
        return fm_error_set(err, FM_ERR_INVALID, "%s: scale %g is not finite", op, (double)s);
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "residual", r, measuring, err)) ||
        (st = nn_check(op, "output", y, measuring, err)) ||
        (st = nn_check_shape(op, "residual", r, x->n, x->c, x->h, x->w, err)) ||
        (st = nn_check_shape(op, "output", y, x->n, x->c, x->h, x->w, err)) ||
        (st = nn_check_inplace(op, "the input", y, x, err)) ||
        (st = nn_check_inplace(op, "the residual", y, r, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t count = fm_tensor_count(x);
    const float *xd = x->data, *rd = r->data;
    float *yd = y->data;
    if (s == 1.0f) {
        for (size_t i = 0; i < count; i++)
            yd[i] = xd[i] + rd[i];
    } else {
        for (size_t i = 0; i < count; i++)
            yd[i] = xd[i] + s * rd[i];
    }
    return FM_OK;
}

fm_status fm_nn_concat(fm_arena *a, const fm_tensor *const *xs, int count, fm_tensor *y,
                       fm_error *err)
{
    const char *op = "concat";
    const int measuring = nn_measuring(a);
    fm_status st;
    if (!xs || count < 1)
        return fm_error_set(err, FM_ERR_INVALID, "%s: needs at least one input (count %d)", op,
                            count);
    if ((st = nn_check(op, "output", y, measuring, err)))
        return st;
    long long channels = 0;
    for (int i = 0; i < count; i++) {
        char name[32];
        snprintf(name, sizeof name, "input %d", i);
        if ((st = nn_check(op, name, xs[i], measuring, err)))
            return st;
        if (xs[i]->n != y->n || xs[i]->h != y->h || xs[i]->w != y->w) {
            nn_shape_text sx, sy;
            return fm_error_set(err, FM_ERR_INVALID,
                                "%s: input %d has shape %s, output %s: n, h and w must match",
                                op, i, nn_shape(xs[i], &sx), nn_shape(y, &sy));
        }
        if ((st = nn_check_disjoint(op, name, y, xs[i], err)))
            return st;
        channels += xs[i]->c;
    }
    if (channels != y->c)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: inputs have %lld channels in total, the output %d", op,
                            channels, y->c);
    if (measuring)
        return FM_OK;
    const size_t plane = (size_t)y->h * y->w;
    for (int n = 0; n < y->n; n++) {
        float *dst = y->data + (size_t)n * y->c * plane;
        for (int i = 0; i < count; i++) {
            const size_t block = (size_t)xs[i]->c * plane;
            memcpy(dst, xs[i]->data + (size_t)n * block, block * sizeof *dst);
            dst += block;
        }
    }
    return FM_OK;
}

fm_status fm_nn_channel_pad(fm_arena *a, const fm_tensor *x, fm_tensor *y, fm_error *err)
{
    const char *op = "channel_pad";
    const int measuring = nn_measuring(a);
    fm_status st;
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "output", y, measuring, err)))
        return st;
    if (y->n != x->n || y->h != x->h || y->w != x->w || y->c < x->c) {
        nn_shape_text sx, sy;
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: output %s must have the input's n, h, w and at least its "
                            "channels (input %s)", op, nn_shape(y, &sy), nn_shape(x, &sx));
    }
    if ((st = nn_check_disjoint(op, "the input", y, x, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t plane = (size_t)x->h * x->w;
    const size_t in_block = (size_t)x->c * plane, out_block = (size_t)y->c * plane;
    for (int n = 0; n < x->n; n++) {
        float *dst = y->data + (size_t)n * out_block;
        memcpy(dst, x->data + (size_t)n * in_block, in_block * sizeof *dst);
        memset(dst + in_block, 0, (out_block - in_block) * sizeof *dst);
    }
    return FM_OK;
}

fm_status fm_nn_l2_normalize(fm_arena *a, const fm_tensor *x, float eps, fm_tensor *y,
                             fm_error *err)
{
    const char *op = "l2_normalize";
    const int measuring = nn_measuring(a);
    fm_status st;
    if (!(eps >= 0.0f) || !isfinite(eps))
        return fm_error_set(err, FM_ERR_INVALID, "%s: eps %g must be finite and >= 0", op,
                            (double)eps);
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "output", y, measuring, err)) ||
        (st = nn_check_shape(op, "output", y, x->n, x->c, x->h, x->w, err)) ||
        (st = nn_check_inplace(op, "the input", y, x, err)))
        return st;
    if (measuring)
        return FM_OK;
    const size_t len = (size_t)x->c * x->h * x->w;
    for (int n = 0; n < x->n; n++) {
        const float *xn = x->data + (size_t)n * len;
        float *yn = y->data + (size_t)n * len;
        double ss = 0.0;
        for (size_t i = 0; i < len; i++)
            ss += (double)xn[i] * xn[i];
        if (ss < (double)eps)
            ss = (double)eps;
        /* A zero vector with eps 0 stays zero rather than becoming NaN. */
        const float inv = ss > 0.0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
        for (size_t i = 0; i < len; i++)
            yn[i] = xn[i] * inv;
    }
    return FM_OK;
}
