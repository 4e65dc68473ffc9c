/* arch_facenet.c - FaceNet's Inception-ResNet-v1 (the facenet-pytorch network,
 * 160x160 RGB in, 512-d L2-normalised embedding out) built over the nn.h operations.
 *
 * Why it exists: facemill runs the FaceNet backbone as one of its face-embedding
 * networks. Model files come from models/tools/facenet2fmm.py, which folds every
 * batch norm into the convolution before it, so each BasicConv2d here is a
 * convolution with bias followed by ReLU. Tensor names keep the facenet-pytorch module
 * paths ("repeat_1.0.branch1.1.conv.weight"); the residual scales come from the
 * metadata (facenet_irv1.scale.*). tests/reference/facenet_ref.py is the independent
 * PyTorch definition this file is checked against (tests/reference/check_facenet.py).
 *
 * Network (shapes for a 160x160 input, per image):
 *   conv2d_1a 3x3/2 32 [32,79,79], conv2d_2a 3x3 32 [32,77,77], conv2d_2b 3x3 pad 1
 *   64 [64,77,77], maxpool_3a 3x3/2 [64,38,38], conv2d_3b 1x1 80 [80,38,38],
 *   conv2d_4a 3x3 192 [192,36,36], conv2d_4b 3x3/2 256 [256,17,17],
 *   repeat_1 5 x Block35 [256,17,17], mixed_6a [896,8,8], repeat_2 10 x Block17
 *   [896,8,8], mixed_7a [1792,3,3], repeat_3 5 x Block8 + block8 (no ReLU)
 *   [1792,3,3], global average pool -> "pooled" [1792], last_linear (last_bn
 *   folded) [512], L2 normalisation -> "embedding" [512].
 * Every unit (Block35/17/8, Mixed_6a/7a) is a set of convolution chains run on the
 * same input and concatenated along channels; residual blocks then add
 * scale * up_projection(concat) to their input (and apply ReLU, except the last
 * block8), mixed units add a 3x3/2 max-pool branch and change the map size.
 *
 * Memory: two ping-pong activation buffers, each the size of the largest map
 * (conv2d_2b's output), plus per-unit scratch above them that is released after each
 * unit, all from the worker's arena.
 */
#include "backbone-impl.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FN_EMBED_DIM 512
#define FN_POOLED_DIM 1792
#define FN_MAX_CHAINS 3
#define FN_MAX_DEPTH 3
#define FN_N_BLOCK35 5
#define FN_N_BLOCK17 10
#define FN_N_BLOCK8 5 /* plus the final block8 */

/* One convolution (batch norm folded) and its geometry. Tensors wrap the model's
 * read-only mapping. */
typedef struct fn_conv {
    char name[48]; /* module path, for messages ("repeat_2.9.branch1.2.conv") */
    fm_tensor w; /* [cout, cin, kh, kw] */
    fm_tensor b; /* [cout, 1, 1, 1] */
    fm_conv2d_params p;
} fn_conv;

/* What a convolution must be: its path under the unit, channels, kernel, stride and
 * padding (height, width; the same on both sides). */
typedef struct fn_conv_spec {
    const char *path;
    int cin, cout, kh, kw, stride, pad_h, pad_w;
} fn_conv_spec;

/* What a unit must be: chains of convolutions on the unit's input, then either a
 * residual up-projection (up_cin -> up_cout, 1x1 with bias) or a max-pool branch. */
typedef struct fn_unit_spec {
    int nchains;
    int depth[FN_MAX_CHAINS];
    fn_conv_spec conv[FN_MAX_CHAINS][FN_MAX_DEPTH];
    int pool;          /* 1: mixed unit with a 3x3/2 max-pool branch */
    int up_cin, up_cout; /* residual units */
} fn_unit_spec;

typedef struct fn_unit {
    char name[16]; /* module path, for messages ("repeat_2.9") */
    const fn_unit_spec *spec;
    fn_conv conv[FN_MAX_CHAINS][FN_MAX_DEPTH];
    fn_conv up;  /* residual units only */
    float scale; /* residual units only */
    int relu;    /* residual units: ReLU after the add */
} fn_unit;

#define FN_N_UNITS (FN_N_BLOCK35 + 1 + FN_N_BLOCK17 + 1 + FN_N_BLOCK8 + 1)
#define FN_N_STEM 6

typedef struct fn_state {
    fn_conv stem[FN_N_STEM]; /* conv2d_1a, 2a, 2b, (maxpool_3a), 3b, 4a, 4b */
    fn_unit unit[FN_N_UNITS];
    fm_tensor fc_w; /* [512, 1792, 1, 1] */
    fm_tensor fc_b; /* [512, 1, 1, 1] */
} fn_state;

static const fn_conv_spec fn_stem_spec[FN_N_STEM] = {
    {"conv2d_1a", 3, 32, 3, 3, 2, 0, 0},    {"conv2d_2a", 32, 32, 3, 3, 1, 0, 0},
    {"conv2d_2b", 32, 64, 3, 3, 1, 1, 1},   {"conv2d_3b", 64, 80, 1, 1, 1, 0, 0},
    {"conv2d_4a", 80, 192, 3, 3, 1, 0, 0},  {"conv2d_4b", 192, 256, 3, 3, 2, 0, 0},
};

static const fn_unit_spec fn_block35 = {
    3, {1, 2, 3},
    {{{"branch0", 256, 32, 1, 1, 1, 0, 0}},
     {{"branch1.0", 256, 32, 1, 1, 1, 0, 0}, {"branch1.1", 32, 32, 3, 3, 1, 1, 1}},
     {{"branch2.0", 256, 32, 1, 1, 1, 0, 0}, {"branch2.1", 32, 32, 3, 3, 1, 1, 1},
      {"branch2.2", 32, 32, 3, 3, 1, 1, 1}}},
    0, 96, 256};

static const fn_unit_spec fn_mixed_6a = {
    2, {1, 3, 0},
    {{{"branch0", 256, 384, 3, 3, 2, 0, 0}},
     {{"branch1.0", 256, 192, 1, 1, 1, 0, 0}, {"branch1.1", 192, 192, 3, 3, 1, 1, 1},
      {"branch1.2", 192, 256, 3, 3, 2, 0, 0}}},
    1, 0, 0};

static const fn_unit_spec fn_block17 = {
    2, {1, 3, 0},
    {{{"branch0", 896, 128, 1, 1, 1, 0, 0}},
     {{"branch1.0", 896, 128, 1, 1, 1, 0, 0}, {"branch1.1", 128, 128, 1, 7, 1, 0, 3},
      {"branch1.2", 128, 128, 7, 1, 1, 3, 0}}},
    0, 256, 896};

static const fn_unit_spec fn_mixed_7a = {
    3, {2, 2, 3},
    {{{"branch0.0", 896, 256, 1, 1, 1, 0, 0}, {"branch0.1", 256, 384, 3, 3, 2, 0, 0}},
     {{"branch1.0", 896, 256, 1, 1, 1, 0, 0}, {"branch1.1", 256, 256, 3, 3, 2, 0, 0}},
     {{"branch2.0", 896, 256, 1, 1, 1, 0, 0}, {"branch2.1", 256, 256, 3, 3, 1, 1, 1},
      {"branch2.2", 256, 256, 3, 3, 2, 0, 0}}},
    1, 0, 0};

static const fn_unit_spec fn_block8 = {
    2, {1, 3, 0},
    {{{"branch0", 1792, 192, 1, 1, 1, 0, 0}},
     {{"branch1.0", 1792, 192, 1, 1, 1, 0, 0}, {"branch1.1", 192, 192, 1, 3, 1, 0, 1},
      {"branch1.2", 192, 192, 3, 1, 1, 1, 0}}},
    0, 384, 1792};

/* ---- binding ------------------------------------------------------------------- */

/* Looks up prefix.weight [cout, cin, kh, kw] and prefix.bias [cout] in m and fills c
 * with views of them and s's geometry. FM_ERR_NOT_FOUND / FM_ERR_FORMAT naming the
 * tensor otherwise. */
static fm_status fn_bind_conv(const fm_model *m, fn_conv *c, const char *prefix,
                              const fn_conv_spec *s, fm_error *err)
{
    char name[FM_MODEL_MAX_NAME + 1];
    const float *w = NULL, *b = NULL;
    const uint64_t wd[4] = {(uint64_t)s->cout, (uint64_t)s->cin, (uint64_t)s->kh,
                            (uint64_t)s->kw};
    const uint64_t bd[1] = {(uint64_t)s->cout};
    fm_status st;

    size_t plen = strlen(prefix);
    if (plen + sizeof ".weight" > sizeof name || plen >= sizeof c->name)
        return fm_error_set(err, FM_ERR_INTERNAL, "facenet_irv1: name %s too long", prefix);
    memcpy(name, prefix, plen);
    memcpy(name + plen, ".weight", sizeof ".weight");
    if ((st = fm_model_tensor_expect(m, name, 4, wd, &w, err)))
        return st;
    memcpy(name + plen, ".bias", sizeof ".bias");
    if ((st = fm_model_tensor_expect(m, name, 1, bd, &b, err)))
        return st;
    memcpy(c->name, prefix, plen + 1);
    /* The engine never writes inputs, so read-only mapped weights are safe here. */
    c->w = fm_tensor_make(s->cout, s->cin, s->kh, s->kw, (float *)w);
    c->b = fm_tensor_make(s->cout, 1, 1, 1, (float *)b);
    c->p = (fm_conv2d_params){s->stride, s->stride, s->pad_h, s->pad_w,
                              s->pad_h, s->pad_w, 1};
    return FM_OK;
}

/* Reads the finite metadata value key into *out. */
static fm_status fn_bind_scale(const fm_model *m, const char *key, float *out,
                               fm_error *err)
{
    double v = 0;
    fm_status st = fm_model_meta_f64(m, key, &v, err);
    if (st == FM_ERR_NOT_FOUND)
        return fm_error_set(err, FM_ERR_FORMAT, "%s: metadata %s is missing",
                            fm_model_path(m), key);
    if (st) {
        fm_error_prefix(err, "%s", fm_model_path(m));
        return st;
    }
    if (!isfinite(v) || fabs(v) > 1e6)
        return fm_error_set(err, FM_ERR_FORMAT, "%s: metadata %s = %g is not a usable scale",
                            fm_model_path(m), key, v);
    *out = (float)v;
    return FM_OK;
}

/* Binds every convolution of unit u at module path `path` against spec. */
static fm_status fn_bind_unit(const fm_model *m, fn_unit *u, const char *path,
                              const fn_unit_spec *spec, float scale, int relu,
                              fm_error *err)
{
    char prefix[FM_MODEL_MAX_NAME + 1];
    fm_status st;
    snprintf(u->name, sizeof u->name, "%s", path);
    u->spec = spec;
    u->scale = scale;
    u->relu = relu;
    for (int c = 0; c < spec->nchains; c++) {
        for (int d = 0; d < spec->depth[c]; d++) {
            snprintf(prefix, sizeof prefix, "%s.%s.conv", path, spec->conv[c][d].path);
            if ((st = fn_bind_conv(m, &u->conv[c][d], prefix, &spec->conv[c][d], err)))
                return st;
        }
    }
    if (!spec->pool) {
        const fn_conv_spec up = {"conv2d", spec->up_cin, spec->up_cout, 1, 1, 1, 0, 0};
        snprintf(prefix, sizeof prefix, "%s.conv2d", path);
        if ((st = fn_bind_conv(m, &u->up, prefix, &up, err)))
            return st;
    }
    return FM_OK;
}

/* fm_arch_ops.bind: looks up and checks every tensor and the residual scales;
 * *state receives an fn_state (fn_unbind frees it). */
static fm_status fn_bind(const fm_model *m, void **state, int dims[FM_BACKBONE_OUTPUT_COUNT],
                         fm_error *err)
{
    fn_state *s = calloc(1, sizeof *s);
    float sc35 = 0, sc17 = 0, sc8 = 0, sc8_final = 0;
    char path[32];
    int k = 0;
    fm_status st;
    const float *w = NULL, *b = NULL;
    const uint64_t fcw[2] = {FN_EMBED_DIM, FN_POOLED_DIM}, fcb[1] = {FN_EMBED_DIM};

    *state = NULL;
    if (!s)
        return fm_error_set(err, FM_ERR_NOMEM, "facenet_irv1: out of memory");
    if ((st = fn_bind_scale(m, "facenet_irv1.scale.block35", &sc35, err)) ||
        (st = fn_bind_scale(m, "facenet_irv1.scale.block17", &sc17, err)) ||
        (st = fn_bind_scale(m, "facenet_irv1.scale.block8", &sc8, err)) ||
        (st = fn_bind_scale(m, "facenet_irv1.scale.block8_final", &sc8_final, err)))
        goto fail;
    for (int i = 0; i < FN_N_STEM; i++) {
        snprintf(path, sizeof path, "%s.conv", fn_stem_spec[i].path);
        if ((st = fn_bind_conv(m, &s->stem[i], path, &fn_stem_spec[i], err)))
            goto fail;
    }
    for (int i = 0; i < FN_N_BLOCK35; i++) {
        snprintf(path, sizeof path, "repeat_1.%d", i);
        if ((st = fn_bind_unit(m, &s->unit[k++], path, &fn_block35, sc35, 1, err)))
            goto fail;
    }
    if ((st = fn_bind_unit(m, &s->unit[k++], "mixed_6a", &fn_mixed_6a, 0, 0, err)))
        goto fail;
    for (int i = 0; i < FN_N_BLOCK17; i++) {
        snprintf(path, sizeof path, "repeat_2.%d", i);
        if ((st = fn_bind_unit(m, &s->unit[k++], path, &fn_block17, sc17, 1, err)))
            goto fail;
    }
    if ((st = fn_bind_unit(m, &s->unit[k++], "mixed_7a", &fn_mixed_7a, 0, 0, err)))
        goto fail;
    for (int i = 0; i < FN_N_BLOCK8; i++) {
        snprintf(path, sizeof path, "repeat_3.%d", i);
        if ((st = fn_bind_unit(m, &s->unit[k++], path, &fn_block8, sc8, 1, err)))
            goto fail;
    }
    if ((st = fn_bind_unit(m, &s->unit[k++], "block8", &fn_block8, sc8_final, 0, err)))
        goto fail;
    if ((st = fm_model_tensor_expect(m, "last_linear.weight", 2, fcw, &w, err)) ||
        (st = fm_model_tensor_expect(m, "last_linear.bias", 1, fcb, &b, err)))
        goto fail;
    s->fc_w = fm_tensor_make(FN_EMBED_DIM, FN_POOLED_DIM, 1, 1, (float *)w);
    s->fc_b = fm_tensor_make(FN_EMBED_DIM, 1, 1, 1, (float *)b);

    dims[FM_BACKBONE_EMBEDDING] = FN_EMBED_DIM;
    dims[FM_BACKBONE_POOLED] = FN_POOLED_DIM;
    *state = s;
    return FM_OK;
fail:
    free(s);
    return st;
}

/* fm_arch_ops.unbind: frees what fn_bind returned (NULL allowed). */
static void fn_unbind(void *state)
{
    free(state);
}

/* ---- forward ------------------------------------------------------------------- */

/* y = relu(conv(x)) into a new arena tensor; errors name the layer. */
static fm_status fn_conv_relu_alloc(fm_arena *a, const fn_conv *c, const fm_tensor *x,
                                    fm_tensor *y, fm_error *err)
{
    fm_status st;
    fm_tensor shape;
    if ((st = fm_nn_conv2d_shape(x, &c->w, &c->p, &shape, err)) ||
        (st = fm_tensor_alloc(a, shape.n, shape.c, shape.h, shape.w, y, err)) ||
        (st = fm_nn_conv2d(a, x, &c->w, &c->b, &c->p, y, err)) ||
        (st = fm_nn_relu(a, y, y, err)))
        fm_error_prefix(err, "%s", c->name);
    return st;
}

/* y = relu(conv(x)) into buf (at least as large as the output), y's shape set;
 * errors name the layer. */
static fm_status fn_conv_relu_into(fm_arena *a, const fn_conv *c, const fm_tensor *x,
                                   float *buf, fm_tensor *y, fm_error *err)
{
    fm_status st = fm_nn_conv2d_shape(x, &c->w, &c->p, y, err);
    if (st == FM_OK) {
        y->data = buf;
        if ((st = fm_nn_conv2d(a, x, &c->w, &c->b, &c->p, y, err)) == FM_OK)
            st = fm_nn_relu(a, y, y, err);
    }
    if (st)
        fm_error_prefix(err, "%s", c->name);
    return st;
}

static const fm_pool2d_params fn_pool = {3, 3, 2, 2, 0, 0, 0, 0, 0, 0};

/* Runs unit u on x. A residual unit updates x in place (and sets *y = *x); a mixed
 * unit writes its output into buf (the other ping-pong buffer, large enough) and sets
 * *y. Scratch is released before returning; errors name the unit. */
static fm_status fn_unit_forward(fm_arena *a, const fn_unit *u, fm_tensor *x, float *buf,
                                 fm_tensor *y, fm_error *err)
{
    const fn_unit_spec *sp = u->spec;
    const size_t mark = fm_arena_mark(a);
    fm_tensor outs[FN_MAX_CHAINS + 1];
    const fm_tensor *parts[FN_MAX_CHAINS + 1];
    fm_tensor cat, up, t;
    int nparts = 0, channels = 0, named = 0; /* named: the error names its layer */
    fm_status st = FM_OK;

    for (int c = 0; c < sp->nchains; c++) {
        fm_tensor in = *x;
        for (int d = 0; d < sp->depth[c]; d++) {
            if ((st = fn_conv_relu_alloc(a, &u->conv[c][d], &in, &outs[c], err))) {
                named = 1;
                goto done;
            }
            in = outs[c];
        }
        parts[nparts++] = &outs[c];
        channels += outs[c].c;
    }
    if (sp->pool) {
        fm_tensor *p = &outs[nparts];
        if ((st = fm_nn_pool2d_shape(x, &fn_pool, &t, err)) ||
            (st = fm_tensor_alloc(a, t.n, t.c, t.h, t.w, p, err)) ||
            (st = fm_nn_maxpool2d(a, x, &fn_pool, p, err)))
            goto done;
        parts[nparts++] = p;
        channels += p->c;
        *y = fm_tensor_make(x->n, channels, p->h, p->w, buf);
        st = fm_nn_concat(a, parts, nparts, y, err);
        goto done;
    }
    if ((st = fm_tensor_alloc(a, x->n, channels, x->h, x->w, &cat, err)) ||
        (st = fm_nn_concat(a, parts, nparts, &cat, err)) ||
        (st = fm_tensor_alloc(a, x->n, u->up.w.n, x->h, x->w, &up, err)) ||
        (st = fm_nn_conv2d(a, &cat, &u->up.w, &u->up.b, &u->up.p, &up, err)) ||
        (st = fm_nn_add(a, x, &up, u->scale, x, err)))
        goto done;
    if (u->relu)
        st = fm_nn_relu(a, x, x, err);
    *y = *x;
done:
    fm_arena_reset(a, mark);
    if (st && !named)
        fm_error_prefix(err, "%s", u->name);
    return st;
}

/* Floats of the largest activation the stem produces for an h x w input (the
 * ping-pong buffer size per image); 0 when the input is too small for the network. */
static size_t fn_max_activation(int h, int w)
{
    /* Output size of a k x k window with stride s and total padding p. */
#define FN_OUT(n, k, s, p) ((n) + (p) < (k) ? -1 : ((n) + (p) - (k)) / (s) + 1)
    int h1 = FN_OUT(h, 3, 2, 0), w1 = FN_OUT(w, 3, 2, 0);     /* conv2d_1a */
    int h2 = FN_OUT(h1, 3, 1, 0), w2 = FN_OUT(w1, 3, 1, 0);   /* conv2d_2a, 2b */
    int h3 = FN_OUT(h2, 3, 2, 0), w3 = FN_OUT(w2, 3, 2, 0);   /* maxpool_3a, 3b */
    int h4 = FN_OUT(h3, 3, 1, 0), w4 = FN_OUT(w3, 3, 1, 0);   /* conv2d_4a */
    int h5 = FN_OUT(h4, 3, 2, 0), w5 = FN_OUT(w4, 3, 2, 0);   /* conv2d_4b, repeat_1 */
    int h6 = FN_OUT(h5, 3, 2, 0), w6 = FN_OUT(w5, 3, 2, 0);   /* mixed_6a */
    int h7 = FN_OUT(h6, 3, 2, 0), w7 = FN_OUT(w6, 3, 2, 0);   /* mixed_7a */
#undef FN_OUT
    if (h1 < 1 || w1 < 1 || h2 < 1 || w2 < 1 || h3 < 1 || w3 < 1 || h4 < 1 || w4 < 1 ||
        h5 < 1 || w5 < 1 || h6 < 1 || w6 < 1 || h7 < 1 || w7 < 1)
        return 0;
    const size_t sizes[] = {
        (size_t)32 * h1 * w1, (size_t)64 * h2 * w2, (size_t)80 * h3 * w3,
        (size_t)192 * h4 * w4, (size_t)256 * h5 * w5, (size_t)896 * h6 * w6,
        (size_t)1792 * h7 * w7,
    };
    size_t best = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i] > best)
            best = sizes[i];
    return best;
}

/* fm_arch_ops.forward: x [n, 3, H, W] normalised input (160x160 for the published
 * weights; any size >= 75x75 runs). Writes out[FM_BACKBONE_POOLED] ([n, 1792, 1, 1],
 * the global average pool) and out[FM_BACKBONE_EMBEDDING] ([n, 512, 1, 1], last_linear
 * with last_bn, L2-normalised as facenet-pytorch's eval output) when not NULL. */
static fm_status fn_forward(void *state, fm_arena *a, const fm_tensor *x,
                            fm_tensor *out[FM_BACKBONE_OUTPUT_COUNT], fm_error *err)
{
    const fn_state *s = state;
    const size_t per = x ? fn_max_activation(x->h, x->w) : 0;
    fm_tensor bufa, bufb, cur, nxt, pooled;
    float *pa, *pb;
    fm_status st;

    if (!s || !a || !x || !out || x->n < 1 || x->c != 3 || per == 0)
        return fm_error_set(err, FM_ERR_INVALID,
                            "facenet_irv1: input must be [n >= 1, 3, >= 75, >= 75], got "
                            "[%d, %d, %d, %d]", x ? x->n : 0, x ? x->c : 0,
                            x ? x->h : 0, x ? x->w : 0);
    if (per > (size_t)INT_MAX / (size_t)x->n)
        return fm_error_set(err, FM_ERR_LIMIT, "facenet_irv1: batch of %d too large for "
                            "%dx%d inputs", x->n, x->h, x->w);
    /* Two buffers of per * n floats each, viewed with whatever shape a stage needs. */
    if ((st = fm_tensor_alloc(a, x->n, (int)per, 1, 1, &bufa, err)) ||
        (st = fm_tensor_alloc(a, x->n, (int)per, 1, 1, &bufb, err)))
        goto fail;
    pa = bufa.data;
    pb = bufb.data;

    /* Stem: A and B alternate. */
    if ((st = fn_conv_relu_into(a, &s->stem[0], x, pa, &cur, err)) ||     /* 1a -> A */
        (st = fn_conv_relu_into(a, &s->stem[1], &cur, pb, &nxt, err)) ||  /* 2a -> B */
        (st = fn_conv_relu_into(a, &s->stem[2], &nxt, pa, &cur, err)))    /* 2b -> A */
        goto fail;
    if ((st = fm_nn_pool2d_shape(&cur, &fn_pool, &nxt, err)))
        goto fail;
    nxt.data = pb;
    if ((st = fm_nn_maxpool2d(a, &cur, &fn_pool, &nxt, err)) ||           /* 3a -> B */
        (st = fn_conv_relu_into(a, &s->stem[3], &nxt, pa, &cur, err)) ||  /* 3b -> A */
        (st = fn_conv_relu_into(a, &s->stem[4], &cur, pb, &nxt, err)) ||  /* 4a -> B */
        (st = fn_conv_relu_into(a, &s->stem[5], &nxt, pa, &cur, err)))    /* 4b -> A */
        goto fail;

    /* Units: residual ones in place, mixed ones into the other buffer. */
    for (int i = 0; i < FN_N_UNITS; i++) {
        float *other = cur.data == pa ? pb : pa;
        if ((st = fn_unit_forward(a, &s->unit[i], &cur, other, &nxt, err)))
            goto fail;
        cur = nxt;
    }

    if (out[FM_BACKBONE_POOLED])
        pooled = *out[FM_BACKBONE_POOLED];
    else if ((st = fm_tensor_alloc(a, x->n, FN_POOLED_DIM, 1, 1, &pooled, err)))
        goto fail;
    if ((st = fm_nn_global_avgpool(a, &cur, &pooled, err)))
        goto fail;
    if (out[FM_BACKBONE_EMBEDDING]) {
        fm_tensor *e = out[FM_BACKBONE_EMBEDDING];
        /* F.normalize(eps=1e-12) clamps the norm: 1e-24 on the sum of squares. */
        if ((st = fm_nn_dense(a, &pooled, &s->fc_w, &s->fc_b, e, err)) ||
            (st = fm_nn_l2_normalize(a, e, 1e-24f, e, err)))
            goto fail;
    }
    return FM_OK;
fail:
    fm_error_prefix(err, "facenet_irv1");
    return st;
}

const fm_arch_ops fm_arch_facenet_irv1 = {
    "facenet_irv1",
    fn_bind,
    fn_unbind,
    fn_forward,
};
