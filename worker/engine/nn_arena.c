/* nn_arena.c - the worker's scratch arena: one buffer sized when a model loads, bump
 * allocation with 64-byte alignment, mark/reset for scratch, and a measuring mode that
 * counts allocations without memory so a builder learns the exact size it needs.
 * Nothing is allocated per image: the buffer is the only heap allocation. The arena
 * also counts the floating-point work of the operations run on it (fm_arena_flop). */
#include "nn_impl.h"

#include <assert.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct fm_arena {
    unsigned char *base; /* FM_ARENA_ALIGN-aligned buffer; NULL when measuring or size 0 */
    size_t size;         /* bytes in base */
    size_t used;         /* fill level: end of the last live allocation */
    size_t high;         /* largest fill level reached */
    int measuring;
    double flop;         /* counted by the operations run on the arena (nn_count_flop) */
};

fm_status fm_arena_new(size_t size, fm_arena **out, fm_error *err)
{
    if (!out)
        return fm_error_set(err, FM_ERR_INVALID, "arena: out is NULL");
    *out = NULL;
    fm_arena *a = calloc(1, sizeof *a);
    if (!a)
        return fm_error_set(err, FM_ERR_NOMEM, "arena: cannot allocate the arena record");
    if (size > 0) {
        void *p = NULL;
        /* Exactly size bytes, so a write past the end is a heap overflow that
         * AddressSanitizer reports rather than a silent write into slack. */
        if (posix_memalign(&p, FM_ARENA_ALIGN, size) != 0) {
            free(a);
            return fm_error_set(err, FM_ERR_NOMEM, "arena: cannot allocate %zu bytes", size);
        }
        a->base = p;
    }
    a->size = size;
    *out = a;
    return FM_OK;
}

fm_status fm_arena_new_measuring(fm_arena **out, fm_error *err)
{
    fm_status st = fm_arena_new(0, out, err);
    if (st)
        return st;
    (*out)->measuring = 1;
    return FM_OK;
}

void fm_arena_destroy(fm_arena **a)
{
    if (!a || !*a)
        return;
    free((*a)->base);
    free(*a);
    *a = NULL;
}

int fm_arena_is_measuring(const fm_arena *a)
{
    return a ? a->measuring : 0;
}

fm_status fm_arena_alloc(fm_arena *a, size_t bytes, void **out, fm_error *err)
{
    if (!a || !out)
        return fm_error_set(err, FM_ERR_INVALID, "arena: %s is NULL", a ? "out" : "arena");
    /* Offsets are aligned relative to an aligned base, so a measuring arena sees the
     * same padding as a real one. */
    size_t start = a->used;
    size_t rem = start % FM_ARENA_ALIGN;
    if (rem && start > SIZE_MAX - (FM_ARENA_ALIGN - rem))
        goto full;
    if (rem)
        start += FM_ARENA_ALIGN - rem;
    if (bytes > SIZE_MAX - start)
        goto full;
    size_t end = start + bytes;
    if (!a->measuring && end > a->size)
        goto full;
    a->used = end;
    if (end > a->high)
        a->high = end;
    *out = a->measuring ? NULL : a->base + start;
    return FM_OK;
full:
    return fm_error_set(err, FM_ERR_ARENA,
                        "arena: allocation of %zu bytes at offset %zu exceeds the arena size "
                        "of %zu bytes (measure the graph for this batch shape and size the "
                        "arena from it)",
                        bytes, a->used, a->size);
}

fm_status fm_tensor_alloc(fm_arena *a, int n, int c, int h, int w, fm_tensor *t,
                          fm_error *err)
{
    if (!t)
        return fm_error_set(err, FM_ERR_INVALID, "tensor: out is NULL");
    long long p = 1;
    const int d[4] = {n, c, h, w};
    for (int i = 0; i < 4; i++) {
        if (d[i] < 1 || d[i] > INT_MAX / p)
            return fm_error_set(err, FM_ERR_INVALID,
                                "tensor: shape [%d, %d, %d, %d] is empty or has more than "
                                "%d elements", n, c, h, w, INT_MAX);
        p *= d[i];
    }
    void *data = NULL;
    fm_status st = fm_arena_alloc(a, (size_t)p * sizeof(float), &data, err);
    if (st) {
        fm_error_prefix(err, "tensor [%d, %d, %d, %d]", n, c, h, w);
        return st;
    }
    t->n = n;
    t->c = c;
    t->h = h;
    t->w = w;
    t->data = data;
    return FM_OK;
}

fm_status fm_tensor_alloc_zero(fm_arena *a, const fm_tensor *shape, fm_tensor *t,
                               fm_error *err)
{
    if (!shape)
        return fm_error_set(err, FM_ERR_INVALID, "tensor: shape is NULL");
    fm_status st = fm_tensor_alloc(a, shape->n, shape->c, shape->h, shape->w, t, err);
    if (st == FM_OK && t->data)
        memset(t->data, 0, fm_tensor_count(t) * sizeof(float));
    return st;
}

size_t fm_arena_mark(const fm_arena *a)
{
    return a ? a->used : 0;
}

void fm_arena_reset(fm_arena *a, size_t mark)
{
    if (!a)
        return;
    /* A mark above the fill level did not come from fm_arena_mark: a bug. Without
     * assertions, clamp rather than move the fill level over memory nobody allocated. */
    assert(mark <= a->used);
    if (mark < a->used)
        a->used = mark;
}

size_t fm_arena_used(const fm_arena *a)
{
    return a ? a->used : 0;
}

size_t fm_arena_high_water(const fm_arena *a)
{
    return a ? a->high : 0;
}

double fm_arena_flop(const fm_arena *a)
{
    return a ? a->flop : 0.0;
}

void nn_count_flop(fm_arena *a, double flop)
{
    if (a)
        a->flop += flop;
}

size_t fm_arena_size(const fm_arena *a)
{
    return a && !a->measuring ? a->size : 0;
}
