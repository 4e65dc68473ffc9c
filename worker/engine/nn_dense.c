/* nn_dense.c - fully connected layers (the embedding's last layer and the
 * age/gender/ethnicity heads): one cblas_sgemm over the whole batch, y = x W^T + b. */
#include "nn_impl.h"

#include <cblas.h>

fm_status nn_dense_operands(const char *op, const fm_tensor *x, const fm_tensor *w,
                            const char *name, const fm_tensor *t, int measuring, size_t *in,
                            fm_error *err)
{
    fm_status st;
    nn_shape_text sx, sw;
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "weights", w, measuring, err)) ||
        (st = nn_check(op, name, t, measuring, err)))
        return st;
    *in = (size_t)x->c * x->h * x->w;
    const size_t w_in = (size_t)w->c * w->h * w->w;
    if (w_in != *in)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: weights %s take %zu inputs, the input %s has %zu per image",
                            op, nn_shape(w, &sw), w_in, nn_shape(x, &sx), *in);
    return FM_OK;
}

fm_status fm_nn_dense(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                      const fm_tensor *bias, fm_tensor *y, fm_error *err)
{
    const char *op = "dense";
    const int measuring = nn_measuring(a);
    fm_status st;
    size_t in;
    if ((st = nn_dense_operands(op, x, w, "output", y, measuring, &in, err)))
        return st;
    const int out = w->n;
    if ((st = nn_check_vec(op, "bias", bias, (size_t)out, measuring, err)) ||
        (st = nn_check_shape(op, "output", y, x->n, out, 1, 1, err)) ||
        (st = nn_check_disjoint(op, "the input", y, x, err)) ||
        (st = nn_check_disjoint(op, "the weights", y, w, err)) ||
        (st = nn_check_disjoint(op, "the bias", y, bias, err)))
        return st;
    nn_count_flop(a, 2.0 * x->n * out * (double)in);
    if (measuring)
        return FM_OK;
    nn_blas_ready();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, x->n, out, (int)in, 1.0f, x->data,
                (int)in, w->data, (int)in, 0.0f, y->data, out);
    if (bias) {
        for (int n = 0; n < x->n; n++) {
            float *yr = y->data + (size_t)n * out;
            for (int o = 0; o < out; o++)
                yr[o] += bias->data[o];
        }
    }
    return FM_OK;
}
