/* nn_impl.h - private helpers shared by the engine's source files (worker/nn_*.c):
 * operand checks that produce readable messages, overlap tests, scratch from the
 * arena, and the OpenBLAS thread default. Not part of the public API. */
#ifndef FACEMILL_NN_IMPL_H
#define FACEMILL_NN_IMPL_H

#include "facemill/nn.h"

#include <limits.h>
#include <stddef.h>

/* Room for "[2147483647, 2147483647, 2147483647, 2147483647]". */
typedef struct nn_shape_text {
    char s[64];
} nn_shape_text;

/* Formats t's shape as "[n, c, h, w]" into buf and returns buf->s. */
const char *nn_shape(const fm_tensor *t, nn_shape_text *buf);

/* 1 when every value is >= 1 and their product is <= INT_MAX. */
int nn_dims_fit(long long n, long long c, long long h, long long w);

/* Checks one operand of op: not NULL, every dimension >= 1, at most INT_MAX elements,
 * and data present unless measuring. FM_ERR_INVALID naming op and name otherwise. */
fm_status nn_check(const char *op, const char *name, const fm_tensor *t, int measuring,
                   fm_error *err);

/* Checks an optional per-channel operand (bias, scale, ...): NULL passes; otherwise as
 * nn_check and with exactly count elements. */
fm_status nn_check_vec(const char *op, const char *name, const fm_tensor *t, size_t count,
                       int measuring, fm_error *err);

/* Checks that y has exactly the shape [n, c, h, w]. */
fm_status nn_check_shape(const char *op, const char *name, const fm_tensor *y, int n,
                         int c, int h, int w, fm_error *err);

/* 1 when the data of a and b share at least one byte (0 when either is NULL/absent). */
int nn_overlap(const fm_tensor *a, const fm_tensor *b);

/* For an output y that may run in place over input x: FM_ERR_INVALID when they overlap
 * without being exactly the same data. */
fm_status nn_check_inplace(const char *op, const char *name, const fm_tensor *y,
                           const fm_tensor *x, fm_error *err);

/* For an output y that must not overlap input x (x may be NULL). */
fm_status nn_check_disjoint(const char *op, const char *name, const fm_tensor *y,
                            const fm_tensor *x, fm_error *err);

/* 1 when ops on a only validate and count (a measuring arena). */
static inline int nn_measuring(const fm_arena *a)
{
    return a && fm_arena_is_measuring(a);
}

/* Takes floats * sizeof(float) bytes of scratch from a for op; *out is NULL on a
 * measuring arena. FM_ERR_ARENA (message prefixed with op) when a is NULL or full. */
fm_status nn_scratch(fm_arena *a, const char *op, size_t floats, float **out, fm_error *err);

/* Applies the default of one OpenBLAS thread unless fm_nn_set_threads was called.
 * Every operation that calls BLAS calls this first. */
void nn_blas_ready(void);

#endif
