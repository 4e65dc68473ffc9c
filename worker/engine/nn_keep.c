/* nn_keep.c - weights that do not change, and the engine's own layouts of them.
 *
 * Why it exists: the engine's kernels want weights in layouts of their own (the
 * position tiles' packed panels, Winograd's transformed weights), which cost a pass
 * over the weights to make. Made on every call, that pass cost more than the
 * convolution where the weights are large and the planes small: at one face the dlib
 * ResNet's 256-channel layers have 16 outputs a channel and 2.4 MB of weights. A
 * model's weights are bound in place in its read-only mapping (model.c), which
 * declares the mapping here while it lasts (fm_nn_const_declare); the layouts of
 * weights in declared memory are made once per process, kept, and shared by every
 * thread, and freed when the declaration is withdrawn (fm_nn_const_forget, before the
 * mapping goes). Weights anywhere else (training's, which change every step; those a
 * caller computes) get no kept layouts: their callers make them per call, as before.
 *
 * One mutex guards the regions and the list; a layout is made under it (once), and is
 * never changed after, so readers use it without the lock. */
#include "nn_impl.h"

#include <pthread.h>
#include <stdlib.h>

#define CONST_REGIONS 64

typedef struct kept {
    const float *w;
    int co, c, k, kind, arg;
    size_t floats;
    float *data;
    struct kept *next;
} kept;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const char *lo, *hi;
} regions[CONST_REGIONS];
static int n_regions;
static kept *list;

int fm_nn_const_declare(const void *p, size_t bytes)
{
    if (!p || !bytes)
        return -1;
    pthread_mutex_lock(&mu);
    const int ok = n_regions < CONST_REGIONS;
    if (ok) {
        regions[n_regions].lo = p;
        regions[n_regions].hi = (const char *)p + bytes;
        n_regions++;
    }
    pthread_mutex_unlock(&mu);
    return ok ? 0 : -1;
}

void fm_nn_const_forget(const void *p)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n_regions; i++) {
        if (regions[i].lo != p)
            continue;
        const char *lo = regions[i].lo, *hi = regions[i].hi;
        regions[i] = regions[--n_regions];
        for (kept **e = &list; *e;) {
            const char *w = (const char *)(*e)->w;
            if (w >= lo && w < hi) {
                kept *dead = *e;
                *e = dead->next;
                free(dead->data);
                free(dead);
            } else {
                e = &(*e)->next;
            }
        }
        break;
    }
    pthread_mutex_unlock(&mu);
}

size_t fm_nn_const_kept_bytes(void)
{
    size_t bytes = 0;
    pthread_mutex_lock(&mu);
    for (const kept *e = list; e; e = e->next)
        bytes += e->floats * sizeof(float);
    pthread_mutex_unlock(&mu);
    return bytes;
}

/* 1 when [p, p + bytes) lies inside one declared region (mu held). */
static int covered(const void *p, size_t bytes)
{
    const char *lo = p, *hi = lo + bytes;
    for (int i = 0; i < n_regions; i++)
        if (lo >= regions[i].lo && hi <= regions[i].hi)
            return 1;
    return 0;
}

/* See nn_impl.h. */
const float *nn_kept_layout(const conv_geom *g, const float *w, int kind, int arg,
                            size_t floats, nn_layout_fn make)
{
    const size_t count = (size_t)g->co * (size_t)g->k;
    const float *data = NULL;
    pthread_mutex_lock(&mu);
    if (n_regions && covered(w, count * sizeof *w)) {
        for (const kept *e = list; e && !data; e = e->next)
            if (e->w == w && e->co == g->co && e->c == g->c && e->k == g->k &&
                e->kind == kind && e->arg == arg && e->floats == floats)
                data = e->data;
        if (!data) {
            kept *e = malloc(sizeof *e);
            float *buf = malloc(floats * sizeof *buf);
            if (e && buf) {
                make(g, w, arg, buf);
                *e = (kept){w, g->co, g->c, g->k, kind, arg, floats, buf, list};
                list = e;
                data = buf;
            } else {
                free(e);
                free(buf);
            }
        }
    }
    pthread_mutex_unlock(&mu);
    return data;
}
