/* nn_core.c - what every engine operation shares: operand checks with messages a user
 * can act on, overlap tests, scratch allocation, and the OpenBLAS thread setting.
 * Kept apart so the per-family files (nn_conv.c, nn_pool.c, ...) hold only maths. */
#include "nn_impl.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

const char *nn_shape(const fm_tensor *t, nn_shape_text *buf)
{
    snprintf(buf->s, sizeof buf->s, "[%d, %d, %d, %d]", t->n, t->c, t->h, t->w);
    return buf->s;
}

int nn_dims_fit(long long n, long long c, long long h, long long w)
{
    if (n < 1 || c < 1 || h < 1 || w < 1)
        return 0;
    long long p = n;
    if (c > INT_MAX / p)
        return 0;
    p *= c;
    if (h > INT_MAX / p)
        return 0;
    p *= h;
    if (w > INT_MAX / p)
        return 0;
    return 1;
}

fm_status nn_check(const char *op, const char *name, const fm_tensor *t, int measuring,
                   fm_error *err)
{
    nn_shape_text s;
    if (!t)
        return fm_error_set(err, FM_ERR_INVALID, "%s: %s is NULL", op, name);
    if (t->n < 1 || t->c < 1 || t->h < 1 || t->w < 1)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: %s has shape %s: every dimension must be >= 1", op, name,
                            nn_shape(t, &s));
    if (!nn_dims_fit(t->n, t->c, t->h, t->w))
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: %s has shape %s: more than %d elements", op, name,
                            nn_shape(t, &s), INT_MAX);
    if (!measuring && !t->data)
        return fm_error_set(err, FM_ERR_INVALID, "%s: %s %s has no data", op, name,
                            nn_shape(t, &s));
    return FM_OK;
}

fm_status nn_check_vec(const char *op, const char *name, const fm_tensor *t, size_t count,
                       int measuring, fm_error *err)
{
    if (!t)
        return FM_OK;
    fm_status st = nn_check(op, name, t, measuring, err);
    if (st)
        return st;
    if (fm_tensor_count(t) != count) {
        nn_shape_text s;
        return fm_error_set(err, FM_ERR_INVALID, "%s: %s has shape %s (%zu elements), "
                            "expected %zu elements", op, name, nn_shape(t, &s),
                            fm_tensor_count(t), count);
    }
    return FM_OK;
}

fm_status nn_check_shape(const char *op, const char *name, const fm_tensor *y, int n,
                         int c, int h, int w, fm_error *err)
{
    if (y->n == n && y->c == c && y->h == h && y->w == w)
        return FM_OK;
    nn_shape_text s;
    return fm_error_set(err, FM_ERR_INVALID, "%s: %s has shape %s, expected [%d, %d, %d, %d]",
                        op, name, nn_shape(y, &s), n, c, h, w);
}

int nn_overlap(const fm_tensor *a, const fm_tensor *b)
{
    if (!a || !b || !a->data || !b->data)
        return 0;
    uintptr_t a0 = (uintptr_t)a->data, a1 = a0 + fm_tensor_count(a) * sizeof(float);
    uintptr_t b0 = (uintptr_t)b->data, b1 = b0 + fm_tensor_count(b) * sizeof(float);
    return a0 < b1 && b0 < a1;
}

fm_status nn_check_inplace(const char *op, const char *name, const fm_tensor *y,
                           const fm_tensor *x, fm_error *err)
{
    if (x && y->data && y->data == x->data)
        return FM_OK;
    return nn_check_disjoint(op, name, y, x, err);
}

fm_status nn_check_disjoint(const char *op, const char *name, const fm_tensor *y,
                            const fm_tensor *x, fm_error *err)
{
    if (nn_overlap(y, x))
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: output overlaps %s (outputs need their own memory here)",
                            op, name);
    return FM_OK;
}

fm_status nn_scratch(fm_arena *a, const char *op, size_t floats, float **out, fm_error *err)
{
    *out = NULL;
    if (!a)
        return fm_error_set(err, FM_ERR_ARENA,
                            "%s: needs %zu bytes of scratch and no arena was given", op,
                            floats * sizeof(float));
    void *p = NULL;
    fm_status st = fm_arena_alloc(a, floats * sizeof(float), &p, err);
    if (st) {
        fm_error_prefix(err, "%s: scratch", op);
        return st;
    }
    *out = p;
    return FM_OK;
}

/* 0 until the thread count has been set (by default or explicitly); the mutex keeps
 * an operation from running BLAS between another thread's check and its setting. */
static atomic_int blas_threads_set;
static atomic_int blas_threads_n = 1; /* what fm_nn_set_threads set, else the default */
static pthread_mutex_t blas_threads_lock = PTHREAD_MUTEX_INITIALIZER;

void nn_blas_ready(void)
{
    if (atomic_load_explicit(&blas_threads_set, memory_order_acquire))
        return;
    pthread_mutex_lock(&blas_threads_lock);
    if (!atomic_load_explicit(&blas_threads_set, memory_order_relaxed)) {
        openblas_set_num_threads(1);
        atomic_store_explicit(&blas_threads_set, 1, memory_order_release);
    }
    pthread_mutex_unlock(&blas_threads_lock);
}

fm_status fm_nn_set_threads(int n, fm_error *err)
{
    if (n < 1 || n > 1024)
        return fm_error_set(err, FM_ERR_INVALID,
                            "nn: thread count %d out of range (1..1024)", n);
    pthread_mutex_lock(&blas_threads_lock);
    openblas_set_num_threads(n);
    atomic_store_explicit(&blas_threads_n, n, memory_order_relaxed);
    atomic_store_explicit(&blas_threads_set, 1, memory_order_release);
    pthread_mutex_unlock(&blas_threads_lock);
    return FM_OK;
}

int nn_blas_threads(void)
{
    return atomic_load_explicit(&blas_threads_n, memory_order_relaxed);
}

int fm_nn_threads(void)
{
    nn_blas_ready();
    return openblas_get_num_threads();
}
