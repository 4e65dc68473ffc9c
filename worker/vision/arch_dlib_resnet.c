/* arch_dlib_resnet.c - dlib's ResNet face descriptor (150x150 RGB in, 128-d out) as
 * face-api.js runs it, built over the engine's operations (include/facemill/nn.h).
 *
 * Why it exists: this is facemill's default backbone. The weights come from npm
 * @vladmandic/face-api@1.7.15, converted by models/tools/faceapi2fmm.py, which also
 * describes the network layer by layer and folds every scale layer into the
 * convolution before it; models/DLIB_RESNET.md is the model card. The layer geometry
 * here is the library's (it is what the weights were checked against), not dlib's own
 * C++ geometry: the 7x7 stem and the strided convolutions use no padding, the stem's
 * max pool is 3x3/2 without padding, and a down-sampling block whose convolution
 * branch comes out one pixel smaller than its pooled shortcut pads that branch with a
 * zero row at the bottom and a zero column at the right.
 *
 * Shapes for a 150x150 input: stem 72x72x32, pool 35x35x32, then 17x17x64, 8x8x128,
 * 4x4x256 and 2x2x256; the 2x2 map is averaged to "pooled" (256) and multiplied by
 * fc.weight [128, 256] to "embedding" (128, not normalised, as the library returns
 * it).
 *
 * Memory: every block's result is moved down to the start of this network's part of
 * the arena before the next block runs, so the arena holds the input, one block's
 * input, its temporaries and its output at a time.
 */
#include "backbone-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEM_CHANNELS 32
#define STEM_KERNEL 7
#define EMBED_DIM 128
#define POOLED_DIM 256

/* The residual blocks in order (shared with the fine-tuner, worker/train/finetune.c). */
const fm_dlib_block fm_dlib_blocks[FM_DLIB_BLOCKS] = {
    {"conv32_1", 32, 32, 0},        {"conv32_2", 32, 32, 0},
    {"conv32_3", 32, 32, 0},        {"conv64_down", 32, 64, 1},
    {"conv64_1", 64, 64, 0},        {"conv64_2", 64, 64, 0},
    {"conv64_3", 64, 64, 0},        {"conv128_down", 64, 128, 1},
    {"conv128_1", 128, 128, 0},     {"conv128_2", 128, 128, 0},
    {"conv256_down", 128, 256, 1},  {"conv256_1", 256, 256, 0},
    {"conv256_2", 256, 256, 0},     {"conv256_down_out", 256, 256, 1},
};

#define N_BLOCKS FM_DLIB_BLOCKS

typedef struct conv_layer {
    fm_tensor w; /* [O, I, K, K], mapped from the model (read only) */
    fm_tensor b; /* [O] */
} conv_layer;

typedef struct dlib_state {
    conv_layer stem;
    conv_layer conv1[N_BLOCKS], conv2[N_BLOCKS];
    fm_tensor fc; /* [128, 256] */
} dlib_state;

/* Looks up name with the given shape and wraps it as a tensor (read only: the engine
 * never writes inputs, so the cast is safe). */
static fm_status bind_tensor(const fm_model *m, const char *name, unsigned ndim,
                             const uint64_t *dims, fm_tensor *t, fm_error *err)
{
    const float *data = NULL;
    fm_status st = fm_model_tensor_expect(m, name, ndim, dims, &data, err);
    if (st)
        return st;
    int d[4] = {1, 1, 1, 1};
    for (unsigned i = 0; i < ndim; i++)
        d[i] = (int)dims[i];
    *t = fm_tensor_make(d[0], d[1], d[2], d[3], (float *)data);
    return FM_OK;
}

static fm_status bind_conv(const fm_model *m, const char *prefix, int cout, int cin, int k,
                           conv_layer *c, fm_error *err)
{
    char name[128];
    const uint64_t wdims[4] = {(uint64_t)cout, (uint64_t)cin, (uint64_t)k, (uint64_t)k};
    const uint64_t bdims[1] = {(uint64_t)cout};
    fm_status st;
    snprintf(name, sizeof name, "%s.weight", prefix);
    if ((st = bind_tensor(m, name, 4, wdims, &c->w, err)))
        return st;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return bind_tensor(m, name, 1, bdims, &c->b, err);
}

static fm_status dlib_bind(const fm_model *m, void **state, int dims[FM_BACKBONE_OUTPUT_COUNT],
                           fm_error *err)
{
    fm_status st;
    dlib_state *s = calloc(1, sizeof *s);
    if (!s)
        return fm_error_set(err, FM_ERR_NOMEM, "dlib_resnet: out of memory");
    if ((st = bind_conv(m, "conv32_down", STEM_CHANNELS, 3, STEM_KERNEL, &s->stem, err)))
        goto fail;
    for (int i = 0; i < N_BLOCKS; i++) {
        char prefix[96];
        const fm_dlib_block *b = &fm_dlib_blocks[i];
        snprintf(prefix, sizeof prefix, "%s.conv1", b->name);
        if ((st = bind_conv(m, prefix, b->cout, b->cin, 3, &s->conv1[i], err)))
            goto fail;
        snprintf(prefix, sizeof prefix, "%s.conv2", b->name);
        if ((st = bind_conv(m, prefix, b->cout, b->cout, 3, &s->conv2[i], err)))
            goto fail;
    }
    const uint64_t fc_dims[2] = {EMBED_DIM, POOLED_DIM};
    if ((st = bind_tensor(m, "fc.weight", 2, fc_dims, &s->fc, err)))
        goto fail;
    dims[FM_BACKBONE_EMBEDDING] = EMBED_DIM;
    dims[FM_BACKBONE_POOLED] = POOLED_DIM;
    *state = s;
    return FM_OK;
fail:
    free(s);
    return st;
}

static void dlib_unbind(void *state)
{
    free(state);
}

/* Allocates y for conv(x, c) under p and runs it. */
static fm_status run_conv(fm_arena *a, const fm_tensor *x, const conv_layer *c,
                          const fm_conv2d_params *p, fm_tensor *y, fm_error *err)
{
    fm_status st;
    fm_tensor shape;
    if ((st = fm_nn_conv2d_shape(x, &c->w, p, &shape, err)) ||
        (st = fm_tensor_alloc(a, shape.n, shape.c, shape.h, shape.w, y, err)))
        return st;
    return fm_nn_conv2d(a, x, &c->w, &c->b, p, y, err);
}

/* Moves t, allocated after arena position base, down to base and releases everything
 * else allocated after base. The new place never lies above the old one and memmove
 * copes with the overlap. On a measuring arena only the counts move. */
static fm_status settle(fm_arena *a, size_t base, fm_tensor *t, fm_error *err)
{
    const float *old = t->data;
    fm_tensor moved;
    fm_arena_reset(a, base);
    fm_status st = fm_tensor_alloc(a, t->n, t->c, t->h, t->w, &moved, err);
    if (st)
        return st;
    if (moved.data && moved.data != old)
        memmove(moved.data, old, fm_tensor_count(t) * sizeof(float));
    *t = moved;
    return FM_OK;
}

/* y[:, :, :r.h, :r.w] += r: the library's zero row/column padding of a down-sampling
 * block's convolution branch, added to the shortcut in place. r may be at most one
 * row and one column smaller than y (that is all the library pads). */
static fm_status add_padded(fm_arena *a, fm_tensor *y, const fm_tensor *r, fm_error *err)
{
    if (r->n != y->n || r->c != y->c || r->h > y->h || r->w > y->w || y->h - r->h > 1 ||
        y->w - r->w > 1)
        return fm_error_set(err, FM_ERR_INVALID,
                            "branch [%d, %d, %d, %d] does not fit shortcut [%d, %d, %d, %d] "
                            "(at most one row and column of padding)",
                            r->n, r->c, r->h, r->w, y->n, y->c, y->h, y->w);
    if (fm_arena_is_measuring(a))
        return FM_OK;
    for (int n = 0; n < y->n; n++)
        for (int c = 0; c < y->c; c++) {
            float *yp = y->data + ((size_t)n * y->c + c) * y->h * y->w;
            const float *rp = r->data + ((size_t)n * r->c + c) * r->h * r->w;
            for (int i = 0; i < r->h; i++)
                for (int j = 0; j < r->w; j++)
                    yp[(size_t)i * y->w + j] += rp[(size_t)i * r->w + j];
        }
    return FM_OK;
}

/* One residual block on x; *y receives its output (allocated after x). */
static fm_status run_block(fm_arena *a, const dlib_state *s, int i, const fm_tensor *x,
                           fm_tensor *y, fm_error *err)
{
    const fm_dlib_block *b = &fm_dlib_blocks[i];
    const fm_conv2d_params same = fm_conv2d_sym(1, 1);
    const fm_conv2d_params down = fm_conv2d_sym(2, 0);
    fm_tensor t1, t2;
    fm_status st;
    if ((st = run_conv(a, x, &s->conv1[i], b->down ? &down : &same, &t1, err)) ||
        (st = fm_nn_relu(a, &t1, &t1, err)) ||
        (st = run_conv(a, &t1, &s->conv2[i], &same, &t2, err)))
        return st;
    if (!b->down) {
        if ((st = fm_nn_add(a, &t2, x, 1.0f, &t2, err)) || (st = fm_nn_relu(a, &t2, &t2, err)))
            return st;
        *y = t2;
        return FM_OK;
    }
    /* shortcut: 2x2/2 average pool, then zero channels up to the block's width */
    const fm_pool2d_params avg = fm_pool2d_sym(2, 2, 0, 0, 0);
    fm_tensor shape, pooled, wide;
    if ((st = fm_nn_pool2d_shape(x, &avg, &shape, err)) ||
        (st = fm_tensor_alloc(a, shape.n, shape.c, shape.h, shape.w, &pooled, err)) ||
        (st = fm_nn_avgpool2d(a, x, &avg, &pooled, err)))
        return st;
    wide = pooled;
    if (b->cout != b->cin) {
        if ((st = fm_tensor_alloc(a, pooled.n, b->cout, pooled.h, pooled.w, &wide, err)) ||
            (st = fm_nn_channel_pad(a, &pooled, &wide, err)))
            return st;
    }
    if ((st = add_padded(a, &wide, &t2, err)) ||
        (st = fm_nn_relu(a, &wide, &wide, err)))
        return st;
    *y = wide;
    return FM_OK;
}

static fm_status dlib_forward(void *state, fm_arena *a, const fm_tensor *x,
                              fm_tensor *out[FM_BACKBONE_OUTPUT_COUNT], fm_error *err)
{
    const dlib_state *s = state;
    const size_t base = fm_arena_mark(a);
    const fm_conv2d_params stem = fm_conv2d_sym(2, 0);
    const fm_pool2d_params maxp = fm_pool2d_sym(3, 2, 0, 0, 0);
    fm_tensor cur, next, shape, pooled;
    fm_status st;

    if ((st = run_conv(a, x, &s->stem, &stem, &cur, err)) ||
        (st = fm_nn_relu(a, &cur, &cur, err)) ||
        (st = fm_nn_pool2d_shape(&cur, &maxp, &shape, err)) ||
        (st = fm_tensor_alloc(a, shape.n, shape.c, shape.h, shape.w, &next, err)) ||
        (st = fm_nn_maxpool2d(a, &cur, &maxp, &next, err)) ||
        (st = settle(a, base, &next, err))) {
        fm_error_prefix(err, "dlib_resnet: conv32_down");
        return st;
    }
    cur = next;
    for (int i = 0; i < N_BLOCKS; i++) {
        if ((st = run_block(a, s, i, &cur, &next, err)) || (st = settle(a, base, &next, err))) {
            fm_error_prefix(err, "dlib_resnet: %s", fm_dlib_blocks[i].name);
            return st;
        }
        cur = next;
    }

    fm_tensor *want_pooled = out ? out[FM_BACKBONE_POOLED] : NULL;
    fm_tensor *want_embed = out ? out[FM_BACKBONE_EMBEDDING] : NULL;
    if (want_pooled) {
        pooled = *want_pooled;
    } else if ((st = fm_tensor_alloc(a, cur.n, cur.c, 1, 1, &pooled, err))) {
        fm_error_prefix(err, "dlib_resnet: pooled");
        return st;
    }
    if ((st = fm_nn_global_avgpool(a, &cur, &pooled, err))) {
        fm_error_prefix(err, "dlib_resnet: global average pool");
        return st;
    }
    if (want_embed && (st = fm_nn_dense(a, &pooled, &s->fc, NULL, want_embed, err))) {
        fm_error_prefix(err, "dlib_resnet: fc");
        return st;
    }
    return FM_OK;
}

const fm_arch_ops fm_arch_dlib_resnet = {
    .name = "dlib_resnet",
    .bind = dlib_bind,
    .unbind = dlib_unbind,
    .forward = dlib_forward,
};
