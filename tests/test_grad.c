/* test_grad.c - the backward passes (include/facemill/grad.h) against central finite
 * differences of the engine's own forward passes.
 *
 * For an operation y = f(inputs) the test takes the scalar L = sum(y * R) with a fixed
 * random R, so dL/dy = R is the dy handed to the backward pass, and compares each
 * analytic gradient with (L(v + h) - L(v - h)) / (2h) per input element, L summed in
 * double. Linear operations (convolution, dense, average pooling, ...) are exact under
 * central differences whatever h, so a large h keeps float rounding small; non-linear
 * ones get inputs moved away from their kinks (ReLU at 0, max-pool ties) by more than
 * h. Convolution runs over hand-picked geometries aimed at each of its paths (1x1
 * direct, tiled im2col with several tiles, images gathered per multiply) and random
 * ones. Beyond the values: gradients accumulate, NULL outputs are skipped, bad shapes
 * and overlapping outputs are rejected with a message, measuring gives the exact
 * scratch size (one byte less fails cleanly) and grouped convolutions are refused.
 * The optimiser step (AdamW, SGD with momentum) against its formulas evaluated
 * independently, step by step, and against what its first steps must do. */
#include "facemill/grad.h"
#include "facemill/nn.h"
#include "fm_test.h"
#include "fm_test_model.h"

#include <stdint.h>
#include <string.h>

/* Finite-difference tolerance on max |analytic - numeric| / max(1, |numeric|). */
#define TOL_LINEAR 2e-3
#define TOL_SMOOTH 1e-2
/* Elements checked per tensor: all of them up to this, a random sample beyond. */
#define FD_SAMPLES 160

static int fd_tensors, fd_elements, conv_cases;

/* ---- helpers -------------------------------------------------------------------- */

static fm_test_rng rng = FM_TEST_RNG(0x2545f4914f6cdd1dull);

static fm_tensor tensor_zero(int n, int c, int h, int w)
{
    fm_tensor t = fm_test_tensor(&rng, n, c, h, w);
    memset(t.data, 0, fm_tensor_count(&t) * sizeof(float));
    return t;
}

static fm_tensor tensor_like(const fm_tensor *r)
{
    return tensor_zero(r->n, r->c, r->h, r->w);
}

static fm_tensor tensor_copy(const fm_tensor *r)
{
    fm_tensor t = tensor_like(r);
    memcpy(t.data, r->data, fm_tensor_count(r) * sizeof(float));
    return t;
}

static void tensor_clear(fm_tensor *t)
{
    memset(t->data, 0, fm_tensor_count(t) * sizeof(float));
}

/* Moves every value at least margin away from 0 (ReLU-type kinks). */
static void nudge_from_zero(fm_tensor *t, float margin)
{
    size_t count = fm_tensor_count(t);
    for (size_t i = 0; i < count; i++)
        if (fabsf(t->data[i]) < margin)
            t->data[i] = t->data[i] < 0.0f
                             ? -margin - 0.5f * (float)fm_test_rng_u32(&rng) / 4294967296.0f
                             : margin + 0.5f * (float)fm_test_rng_u32(&rng) / 4294967296.0f;
}

/* Largest |a - b| relative to max(1, |b|) over count elements. */
static double max_rel(const float *a, const float *b, size_t count)
{
    double worst = 0.0;
    for (size_t i = 0; i < count; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)b[i]));
        if (d > worst || d != d)
            worst = d != d ? INFINITY : d;
    }
    return worst;
}

/* 1 when the two tensors' data are identical. */
static int same(const fm_tensor *a, const fm_tensor *b)
{
    return memcmp(a->data, b->data, fm_tensor_count(a) * sizeof(float)) == 0;
}

static double dot(const fm_tensor *y, const fm_tensor *r)
{
    double s = 0.0;
    size_t count = fm_tensor_count(y);
    for (size_t i = 0; i < count; i++)
        s += (double)y->data[i] * r->data[i];
    return s;
}

/* The loss as a function of the current input values (the test perturbs them in
 * place between calls). */
typedef double (*loss_fn)(void *ctx);

/* Compares analytic[i] with the central difference of f at param[i] for every i (or
 * FD_SAMPLES random ones plus the first and last), stepping by h. Returns the worst
 * relative error and checks it against tol. */
static double fd_check(const char *what, float *param, size_t count, const float *analytic,
                       loss_fn f, void *ctx, double h, double tol)
{
    double worst = 0.0;
    size_t worst_i = 0;
    double worst_num = 0.0;
    size_t samples = count <= FD_SAMPLES ? count : FD_SAMPLES;
    for (size_t s = 0; s < samples; s++) {
        size_t i = count <= FD_SAMPLES ? s
                   : s == 0            ? 0
                   : s == 1            ? count - 1
                                       : (size_t)fm_test_rng_u32(&rng) % count;
        const float v = param[i];
        param[i] = (float)(v + h);
        const double vp = param[i], lp = f(ctx);
        param[i] = (float)(v - h);
        const double vm = param[i], lm = f(ctx);
        param[i] = v;
        const double num = (lp - lm) / (vp - vm);
        const double err = fabs((double)analytic[i] - num) / fmax(1.0, fabs(num));
        if (err > worst || err != err) {
            worst = err != err ? INFINITY : err;
            worst_i = i;
            worst_num = num;
        }
        fd_elements++;
    }
    fd_tensors++;
    CHECK_MSG(worst <= tol, "%s: element %zu analytic %.6g numeric %.6g (rel err %.3g)", what,
              worst_i, (double)analytic[worst_i], worst_num, worst);
    return worst;
}

/* An arena for the forward passes the losses run (their scratch is not under test). */
static fm_arena *fwd_arena;

/* ---- convolution ---------------------------------------------------------------- */

typedef struct conv_case {
    int n, c, h, w, co, kh, kw;
    fm_conv2d_params p;
} conv_case;

typedef struct conv_ctx {
    fm_tensor x, w, b, y, r;
    fm_conv2d_params p;
} conv_ctx;

static double conv_loss(void *vctx)
{
    conv_ctx *k = vctx;
    fm_error e = {0};
    fm_status st = fm_nn_conv2d(fwd_arena, &k->x, &k->w, &k->b, &k->p, &k->y, &e);
    if (st) {
        fprintf(stderr, "conv forward: %s\n", e.msg);
        exit(1);
    }
    return dot(&k->y, &k->r);
}

static void run_conv_case(const conv_case *cc)
{
    fm_error e = {0};
    conv_ctx k;
    char what[160];
    k.p = cc->p;
    k.x = fm_test_tensor(&rng, cc->n, cc->c, cc->h, cc->w);
    k.w = fm_test_tensor(&rng, cc->co, cc->c, cc->kh, cc->kw);
    k.b = fm_test_tensor(&rng, 1, cc->co, 1, 1);
    fm_tensor ys = {0};
    if (fm_nn_conv2d_shape(&k.x, &k.w, &k.p, &ys, &e)) {
        CHECK_MSG(0, "conv case shape: %s", e.msg);
        fm_test_tensor_free(&k.x), fm_test_tensor_free(&k.w), fm_test_tensor_free(&k.b);
        return;
    }
    conv_cases++;
    k.y = tensor_like(&ys);
    k.r = fm_test_tensor(&rng, ys.n, ys.c, ys.h, ys.w);
    snprintf(what, sizeof what, "conv n%d c%d %dx%d -> co%d k%dx%d s%dx%d pad t%d l%d b%d r%d",
             cc->n, cc->c, cc->h, cc->w, cc->co, cc->kh, cc->kw, cc->p.stride_h,
             cc->p.stride_w, cc->p.pad_top, cc->p.pad_left, cc->p.pad_bottom,
             cc->p.pad_right);

    /* Measure, then run on an arena of exactly that size. */
    fm_arena *m = NULL, *a = NULL;
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    fm_tensor xm = k.x, wm = k.w, dym = k.r, dxm = k.x, dwm = k.w, dbm = k.b;
    xm.data = wm.data = dym.data = dxm.data = dwm.data = dbm.data = NULL;
    fm_status st = fm_nn_conv2d_backward(m, &xm, &wm, &k.p, &dym, &dxm, &dwm, &dbm, &e);
    CHECK_MSG(st == FM_OK, "%s: measure: %s", what, e.msg);
    const size_t need = fm_arena_high_water(m);
    CHECK(fm_arena_used(m) == 0);
    fm_arena_destroy(&m);
    CHECK(fm_arena_new(need, &a, &e) == FM_OK);

    fm_tensor dx = tensor_like(&k.x), dw = tensor_like(&k.w), db = tensor_like(&k.b);
    st = fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, &dx, &dw, &db, &e);
    CHECK_MSG(st == FM_OK, "%s: backward: %s", what, e.msg);
    CHECK(fm_arena_used(a) == 0);
    CHECK(fm_arena_high_water(a) == need);

    char name[200];
    snprintf(name, sizeof name, "%s: dx", what);
    fd_check(name, k.x.data, fm_tensor_count(&k.x), dx.data, conv_loss, &k, 0.25, TOL_LINEAR);
    snprintf(name, sizeof name, "%s: dw", what);
    fd_check(name, k.w.data, fm_tensor_count(&k.w), dw.data, conv_loss, &k, 0.25, TOL_LINEAR);
    snprintf(name, sizeof name, "%s: db", what);
    fd_check(name, k.b.data, fm_tensor_count(&k.b), db.data, conv_loss, &k, 0.25, TOL_LINEAR);

    /* Accumulation: into random contents, the result is contents + gradient. */
    fm_tensor ax = fm_test_tensor(&rng, k.x.n, k.x.c, k.x.h, k.x.w);
    fm_tensor aw = fm_test_tensor(&rng, k.w.n, k.w.c, k.w.h, k.w.w);
    fm_tensor ab = fm_test_tensor(&rng, 1, cc->co, 1, 1);
    fm_tensor ax0 = tensor_copy(&ax), aw0 = tensor_copy(&aw), ab0 = tensor_copy(&ab);
    st = fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, &ax, &aw, &ab, &e);
    CHECK(st == FM_OK);
    fm_tensor *acc[3] = {&ax, &aw, &ab}, *base[3] = {&ax0, &aw0, &ab0}, *g[3] = {&dx, &dw, &db};
    for (int t = 0; t < 3; t++) {
        size_t count = fm_tensor_count(g[t]);
        for (size_t i = 0; i < count; i++)
            base[t]->data[i] += g[t]->data[i];
        CHECK_MSG(max_rel(acc[t]->data, base[t]->data, count) < 1e-5, "%s: accumulate %d",
                  what, t);
    }
    /* Twice from zero doubles; then each output alone equals the full call's. */
    for (int t = 0; t < 3; t++)
        tensor_clear(acc[t]);
    CHECK(fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, &ax, &aw, &ab, &e) == FM_OK);
    CHECK(fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, &ax, &aw, &ab, &e) == FM_OK);
    for (int t = 0; t < 3; t++) {
        size_t count = fm_tensor_count(g[t]);
        for (size_t i = 0; i < count; i++)
            base[t]->data[i] = 2.0f * g[t]->data[i];
        CHECK_MSG(max_rel(acc[t]->data, base[t]->data, count) < 1e-5, "%s: twice %d", what,
                  t);
        tensor_clear(acc[t]);
    }
    CHECK(fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, &ax, NULL, NULL, &e) == FM_OK);
    CHECK(fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, NULL, &aw, NULL, &e) == FM_OK);
    CHECK(fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, NULL, NULL, &ab, &e) == FM_OK);
    CHECK(fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, NULL, NULL, NULL, &e) == FM_OK);
    for (int t = 0; t < 3; t++)
        CHECK_MSG(max_rel(acc[t]->data, g[t]->data, fm_tensor_count(g[t])) < 1e-6,
                  "%s: alone %d", what, t);
    CHECK(fm_arena_used(a) == 0);
    fm_arena_destroy(&a);

    /* One byte less fails cleanly and writes nothing. */
    if (need > 0) {
        CHECK(fm_arena_new(need - 1, &a, &e) == FM_OK);
        fm_tensor before = tensor_copy(&ax);
        st = fm_nn_conv2d_backward(a, &k.x, &k.w, &k.p, &k.r, &ax, &aw, &ab, &e);
        CHECK_MSG(st == FM_ERR_ARENA, "%s: short arena: status %d", what, st);
        CHECK(strstr(e.msg, "conv2d_backward") && strstr(e.msg, "arena"));
        CHECK(fm_arena_used(a) == 0);
        CHECK(same(&ax, &before));
        fm_test_tensor_free(&before);
        fm_arena_destroy(&a);
    }
    fm_tensor *all[] = {&k.x, &k.w, &k.b, &k.y, &k.r, &dx, &dw, &db,
                        &ax,  &aw,  &ab,  &ax0, &aw0, &ab0};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        fm_test_tensor_free(all[i]);
}

static void test_conv(void)
{
    const fm_conv2d_params s1 = fm_conv2d_sym(1, 0), s1p1 = fm_conv2d_sym(1, 1);
    const conv_case cases[] = {
        /* 1x1 stride 1 unpadded, many pixels: the input is its own im2col matrix */
        {2, 5, 17, 17, 6, 1, 1, s1},
        {1, 1, 16, 16, 1, 1, 1, s1},
        /* 1x1 on few pixels (gathered), 1x1 stride 2, 1x1 padded */
        {3, 4, 3, 5, 7, 1, 1, s1},
        {2, 3, 9, 7, 4, 1, 1, fm_conv2d_sym(2, 0)},
        {1, 3, 5, 6, 2, 1, 1, s1p1},
        /* 3x3 same padding: gathered (small), tiled (one tile) */
        {3, 8, 9, 9, 8, 3, 3, s1p1},
        {2, 4, 20, 17, 5, 3, 3, s1p1},
        /* 7x7 / 8 channels on 27x27: K = 392, several tiles, the last partial */
        {1, 8, 27, 27, 3, 7, 7, fm_conv2d_sym(1, 3)},
        /* the ResNet stem: 7x7 stride 2 pad 3 */
        {2, 3, 15, 15, 4, 7, 7, fm_conv2d_sym(2, 3)},
        /* 3x3 stride 2 unpadded (down-sampling), stride 2 with TF SAME padding */
        {2, 6, 11, 10, 5, 3, 3, fm_conv2d_sym(2, 0)},
        {3, 2, 8, 9, 3, 3, 3, {2, 2, 0, 0, 1, 1, 1}},
        /* non-square kernels, different strides per axis, asymmetric padding */
        {2, 3, 9, 8, 4, 5, 3, {2, 1, 1, 0, 2, 1, 1}},
        {1, 2, 7, 12, 3, 3, 5, {1, 2, 0, 2, 1, 0, 1}},
        /* kernel exactly the padded input, 1x1 output */
        {3, 3, 5, 7, 4, 7, 7, {1, 1, 1, 0, 1, 0, 1}},
        /* gathered with a partial last group of images (K large) */
        {3, 64, 6, 6, 3, 3, 3, s1p1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_conv_case(&cases[i]);

    static const int ks[] = {1, 3, 5, 7};
    for (int i = 0; i < 24; i++) {
        conv_case k = {0};
        k.n = 1 + fm_test_rng_int(&rng, 3);
        k.c = 1 + fm_test_rng_int(&rng, 8);
        k.co = 1 + fm_test_rng_int(&rng, 8);
        k.kh = ks[fm_test_rng_int(&rng, 4)];
        k.kw = fm_test_rng_int(&rng, 2) ? k.kh : ks[fm_test_rng_int(&rng, 4)];
        k.h = 1 + fm_test_rng_int(&rng, 12);
        k.w = 1 + fm_test_rng_int(&rng, 12);
        k.p.stride_h = 1 + fm_test_rng_int(&rng, 2);
        k.p.stride_w = fm_test_rng_int(&rng, 2) ? k.p.stride_h : 1 + fm_test_rng_int(&rng, 2);
        k.p.pad_top = fm_test_rng_int(&rng, 3), k.p.pad_left = fm_test_rng_int(&rng, 3);
        if (fm_test_rng_int(&rng, 2))
            k.p.pad_bottom = k.p.pad_top, k.p.pad_right = k.p.pad_left;
        else
            k.p.pad_bottom = fm_test_rng_int(&rng, 3), k.p.pad_right = fm_test_rng_int(&rng, 3);
        k.p.groups = 1;
        if (k.h + k.p.pad_top + k.p.pad_bottom < k.kh ||
            k.w + k.p.pad_left + k.p.pad_right < k.kw) {
            i--; /* draw again: the forward pass rejects it */
            continue;
        }
        run_conv_case(&k);
    }
}

static void test_conv_errors(void)
{
    fm_error e = {0};
    fm_arena *a = NULL;
    CHECK(fm_arena_new(1 << 20, &a, &e) == FM_OK);
    fm_tensor x = fm_test_tensor(&rng, 2, 3, 7, 5), w = fm_test_tensor(&rng, 4, 3, 3, 3);
    fm_tensor dy = fm_test_tensor(&rng, 2, 4, 5, 3);
    fm_tensor dx = tensor_zero(2, 3, 7, 5), dw = tensor_zero(4, 3, 3, 3);
    fm_tensor db = tensor_zero(1, 4, 1, 1);
    fm_conv2d_params p = fm_conv2d_sym(1, 0);
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, &dx, &dw, &db, &e) == FM_OK);

    fm_tensor bad = dy;
    bad.h = 4;
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &bad, &dx, &dw, &db, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d_backward: dy has shape [2, 4, 4, 3], expected [2, 4, 5, 3]"));
    bad = dx;
    bad.c = 2;
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, &bad, &dw, &db, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d_backward: dx has shape"));
    bad = dw;
    bad.h = 1;
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, &dx, &bad, &db, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d_backward: dw has shape"));
    bad = db;
    bad.c = 3;
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, &dx, &dw, &bad, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d_backward: db"));
    bad = w;
    bad.c = 2;
    CHECK(fm_nn_conv2d_backward(a, &x, &bad, &p, &dy, &dx, NULL, &db, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d_backward") && strstr(e.msg, "input channels"));
    CHECK(fm_nn_conv2d_backward(a, &x, &w, NULL, &dy, &dx, &dw, &db, &e) == FM_ERR_INVALID);
    CHECK(fm_nn_conv2d_backward(a, NULL, &w, &p, &dy, &dx, &dw, &db, &e) == FM_ERR_INVALID);
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, NULL, &dx, &dw, &db, &e) == FM_ERR_INVALID);
    fm_tensor nodata = dx;
    nodata.data = NULL;
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, &nodata, &dw, &db, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "no data"));

    /* Overlaps: an output over an input, and two outputs over each other. */
    fm_tensor dx_big = tensor_zero(2, 3, 7, 5);
    fm_tensor ov = dx;
    ov.data = x.data;
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, &ov, NULL, NULL, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d_backward: dx overlaps the input"));
    fm_tensor dw_in_dx = fm_tensor_make(4, 3, 3, 3, dx_big.data + 5);
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, &dx_big, &dw_in_dx, NULL, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "dw overlaps dx"));
    fm_tensor db_in_dy = fm_tensor_make(1, 4, 1, 1, dy.data + 3);
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, NULL, NULL, &db_in_dy, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "db overlaps dy"));
    fm_tensor dw_is_w = w;
    CHECK(fm_nn_conv2d_backward(a, &x, &w, &p, &dy, NULL, &dw_is_w, NULL, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "dw overlaps the weights"));

    /* Grouped convolutions have no backward pass. */
    fm_tensor xg = fm_test_tensor(&rng, 2, 4, 7, 5), wg = fm_test_tensor(&rng, 4, 2, 3, 3);
    fm_conv2d_params pg = p;
    pg.groups = 2;
    CHECK(fm_nn_conv2d_backward(a, &xg, &wg, &pg, &dy, NULL, NULL, NULL, &e) ==
          FM_ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "conv2d_backward") && strstr(e.msg, "groups 2"));

    /* No arena: fails when scratch is needed, works for 1x1 direct and db alone. */
    CHECK(fm_nn_conv2d_backward(NULL, &x, &w, &p, &dy, &dx, NULL, NULL, &e) == FM_ERR_ARENA);
    CHECK(strstr(e.msg, "conv2d_backward"));
    CHECK(fm_nn_conv2d_backward(NULL, &x, &w, &p, &dy, NULL, NULL, &db, &e) == FM_OK);
    fm_tensor x1 = fm_test_tensor(&rng, 1, 3, 16, 16), w1 = fm_test_tensor(&rng, 4, 3, 1, 1);
    fm_tensor dy1 = fm_test_tensor(&rng, 1, 4, 16, 16);
    fm_tensor dx1 = tensor_like(&x1), dw1 = tensor_like(&w1);
    CHECK(fm_nn_conv2d_backward(NULL, &x1, &w1, &p, &dy1, &dx1, &dw1, NULL, &e) == FM_OK);
    CHECK(fm_arena_used(a) == 0);

    fm_tensor *all[] = {&x, &w, &dy, &dx, &dw, &db, &dx_big, &xg, &wg, &x1, &w1, &dy1,
                        &dx1, &dw1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        fm_test_tensor_free(all[i]);
    fm_arena_destroy(&a);
}

/* ---- pooling -------------------------------------------------------------------- */

typedef struct pool_ctx {
    fm_tensor x, y, r;
    fm_pool2d_params p;
    int is_max;
} pool_ctx;

static double pool_loss(void *vctx)
{
    pool_ctx *k = vctx;
    fm_error e = {0};
    fm_status st = k->is_max ? fm_nn_maxpool2d(NULL, &k->x, &k->p, &k->y, &e)
                             : fm_nn_avgpool2d(NULL, &k->x, &k->p, &k->y, &e);
    if (st) {
        fprintf(stderr, "pool forward: %s\n", e.msg);
        exit(1);
    }
    return dot(&k->y, &k->r);
}

/* Distinct values per plane, at least 0.06 apart, in random order: no ties in any
 * window, and a step of 0.01 cannot change a window's maximum. */
static void fill_distinct(fm_tensor *t)
{
    const size_t plane = (size_t)t->h * t->w, planes = (size_t)t->n * t->c;
    for (size_t pc = 0; pc < planes; pc++) {
        float *d = t->data + pc * plane;
        for (size_t i = 0; i < plane; i++)
            d[i] = (float)i * 0.06f - (float)plane * 0.03f;
        for (size_t i = plane; i > 1; i--) {
            size_t j = (size_t)fm_test_rng_u32(&rng) % i;
            float tmp = d[i - 1];
            d[i - 1] = d[j];
            d[j] = tmp;
        }
    }
}

static void run_pool_case(int n, int c, int h, int w, const fm_pool2d_params *p, int is_max)
{
    fm_error e = {0};
    pool_ctx k;
    k.p = *p;
    k.is_max = is_max;
    k.x = fm_test_tensor(&rng, n, c, h, w);
    fm_tensor ys = {0};
    if (fm_nn_pool2d_shape(&k.x, p, &ys, &e)) {
        fm_test_tensor_free(&k.x);
        return; /* geometry the forward pass rejects */
    }
    if (is_max)
        fill_distinct(&k.x);
    k.y = tensor_like(&ys);
    k.r = fm_test_tensor(&rng, ys.n, ys.c, ys.h, ys.w);
    fm_tensor dx = tensor_like(&k.x);
    fm_status st = is_max ? fm_nn_maxpool2d_backward(NULL, &k.x, p, &k.r, &dx, &e)
                          : fm_nn_avgpool2d_backward(NULL, p, &k.r, &dx, &e);
    char what[200];
    snprintf(what, sizeof what,
             "%s n%d c%d %dx%d k%dx%d s%dx%d pad t%d l%d b%d r%d ceil %d incl %d",
             is_max ? "maxpool" : "avgpool", n, c, h, w, p->kernel_h, p->kernel_w,
             p->stride_h, p->stride_w, p->pad_top, p->pad_left, p->pad_bottom, p->pad_right,
             p->ceil_mode, p->count_include_pad);
    CHECK_MSG(st == FM_OK, "%s: %s", what, e.msg);
    fd_check(what, k.x.data, fm_tensor_count(&k.x), dx.data, pool_loss, &k,
             is_max ? 0.01 : 0.25, is_max ? TOL_SMOOTH : TOL_LINEAR);
    /* The gradient is spread exactly: its total is dy's (max), or dy's weighted by
     * the share of each window that lies inside the input (average). */
    if (is_max) {
        double sx = 0.0, sy = 0.0;
        for (size_t i = 0; i < fm_tensor_count(&dx); i++)
            sx += dx.data[i];
        for (size_t i = 0; i < fm_tensor_count(&k.r); i++)
            sy += k.r.data[i];
        CHECK_MSG(fabs(sx - sy) < 1e-4 * fmax(1.0, fabs(sy)), "%s: sum", what);
    }
    /* Measuring touches nothing and needs no scratch. */
    fm_arena *m = NULL;
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    fm_tensor xm = k.x, dym = k.r, dxm = dx;
    xm.data = dym.data = dxm.data = NULL;
    st = is_max ? fm_nn_maxpool2d_backward(m, &xm, p, &dym, &dxm, &e)
                : fm_nn_avgpool2d_backward(m, p, &dym, &dxm, &e);
    CHECK_MSG(st == FM_OK && fm_arena_high_water(m) == 0, "%s: measure: %s", what, e.msg);
    fm_arena_destroy(&m);
    fm_test_tensor_free(&k.x), fm_test_tensor_free(&k.y), fm_test_tensor_free(&k.r);
    fm_test_tensor_free(&dx);
}

static void test_pool(void)
{
    /* Hand-picked: the MTCNN pools (3x3/2 and 2x2/2 ceil), ResNet-style 3x3/2 pad 1,
     * asymmetric padding, a ceil-mode overhang, both divisors. */
    const fm_pool2d_params fixed[] = {
        fm_pool2d_sym(3, 2, 0, 1, 1), fm_pool2d_sym(2, 2, 0, 1, 1),
        fm_pool2d_sym(3, 2, 1, 0, 1), fm_pool2d_sym(3, 2, 1, 0, 0),
        fm_pool2d_sym(3, 1, 1, 0, 0), {3, 2, 2, 1, 0, 1, 2, 0, 1, 1},
        {2, 3, 2, 2, 1, 0, 0, 2, 1, 0}, fm_pool2d_sym(5, 3, 2, 1, 1),
    };
    static const int sizes[][2] = {{7, 7}, {8, 9}, {5, 11}, {12, 6}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        for (int s = 0; s < 4; s++)
            for (int is_max = 0; is_max < 2; is_max++)
                run_pool_case(1 + (int)(i % 3), 1 + s, sizes[s][0], sizes[s][1], &fixed[i],
                              is_max);
    for (int i = 0; i < 40; i++) {
        fm_pool2d_params p = {0};
        p.kernel_h = 1 + fm_test_rng_int(&rng, 4);
        p.kernel_w = fm_test_rng_int(&rng, 2) ? p.kernel_h : 1 + fm_test_rng_int(&rng, 4);
        p.stride_h = 1 + fm_test_rng_int(&rng, 3);
        p.stride_w = 1 + fm_test_rng_int(&rng, 3);
        p.pad_top = fm_test_rng_int(&rng, p.kernel_h);
        p.pad_bottom = fm_test_rng_int(&rng, p.kernel_h);
        p.pad_left = fm_test_rng_int(&rng, p.kernel_w);
        p.pad_right = fm_test_rng_int(&rng, p.kernel_w);
        p.ceil_mode = fm_test_rng_int(&rng, 2);
        p.count_include_pad = fm_test_rng_int(&rng, 2);
        run_pool_case(1 + fm_test_rng_int(&rng, 2), 1 + fm_test_rng_int(&rng, 3),
                      1 + fm_test_rng_int(&rng, 10), 1 + fm_test_rng_int(&rng, 10), &p, i % 2);
    }

    /* Ties: every gradient goes to the first pixel of its window in row-major order,
     * the one the forward pass returns. 4x4 of zeros, 2x2 stride 1: window (oy, ox)
     * sends its dy to pixel (oy, ox). */
    fm_error e = {0};
    fm_tensor x = tensor_zero(1, 1, 4, 4), dy = fm_test_tensor(&rng, 1, 1, 3, 3);
    fm_tensor dx = tensor_zero(1, 1, 4, 4);
    fm_pool2d_params p = fm_pool2d_sym(2, 1, 0, 0, 0);
    CHECK(fm_nn_maxpool2d_backward(NULL, &x, &p, &dy, &dx, &e) == FM_OK);
    int ok = 1;
    for (int iy = 0; iy < 4; iy++)
        for (int ix = 0; ix < 4; ix++) {
            float want = iy < 3 && ix < 3 ? dy.data[iy * 3 + ix] : 0.0f;
            ok &= dx.data[iy * 4 + ix] == want;
        }
    CHECK_MSG(ok, "maxpool ties go to the first pixel of the window");
    /* A tie inside the window after a smaller first pixel: the earlier maximum wins. */
    fm_tensor x2 = tensor_zero(1, 1, 2, 2), dy2 = tensor_zero(1, 1, 1, 1);
    fm_tensor dx2 = tensor_zero(1, 1, 2, 2);
    x2.data[0] = -1.0f, x2.data[1] = 2.0f, x2.data[2] = 2.0f, x2.data[3] = 1.0f;
    dy2.data[0] = 1.0f;
    p = fm_pool2d_sym(2, 2, 0, 0, 0);
    CHECK(fm_nn_maxpool2d_backward(NULL, &x2, &p, &dy2, &dx2, &e) == FM_OK);
    CHECK(dx2.data[0] == 0.0f && dx2.data[1] == 1.0f && dx2.data[2] == 0.0f &&
          dx2.data[3] == 0.0f);

    /* Errors. */
    p = fm_pool2d_sym(2, 2, 0, 0, 0);
    fm_tensor bad = dy;
    CHECK(fm_nn_maxpool2d_backward(NULL, &x, &p, &bad, &dx, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "maxpool2d_backward: dy has shape [1, 1, 3, 3], expected [1, 1, 2, 2]"));
    CHECK(fm_nn_avgpool2d_backward(NULL, &p, &bad, &dx, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "avgpool2d_backward: dy has shape"));
    fm_tensor dy22 = fm_test_tensor(&rng, 1, 1, 2, 2), dxs = tensor_zero(1, 1, 4, 3);
    CHECK(fm_nn_maxpool2d_backward(NULL, &x, &p, &dy22, &dxs, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "maxpool2d_backward: dx has shape [1, 1, 4, 3], expected"));
    fm_tensor ov = fm_tensor_make(1, 1, 4, 4, x.data);
    CHECK(fm_nn_maxpool2d_backward(NULL, &x, &p, &dy22, &ov, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "maxpool2d_backward: dx overlaps the input"));
    fm_tensor dy_in_dx = fm_tensor_make(1, 1, 2, 2, dx.data + 3);
    CHECK(fm_nn_avgpool2d_backward(NULL, &p, &dy_in_dx, &dx, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "avgpool2d_backward: dx overlaps dy"));
    CHECK(fm_nn_maxpool2d_backward(NULL, &x, &p, &dy22, NULL, &e) == FM_OK);
    CHECK(fm_nn_avgpool2d_backward(NULL, &p, &dy22, NULL, &e) == FM_ERR_INVALID);
    p.pad_top = 2;
    CHECK(fm_nn_maxpool2d_backward(NULL, &x, &p, &dy22, &dx, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "maxpool2d_backward") && strstr(e.msg, "padding"));
    fm_tensor *all[] = {&x, &dy, &dx, &x2, &dy2, &dx2, &dy22, &dxs};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        fm_test_tensor_free(all[i]);
}

typedef struct gap_ctx {
    fm_tensor x, y, r;
} gap_ctx;

static double gap_loss(void *vctx)
{
    gap_ctx *k = vctx;
    fm_error e = {0};
    if (fm_nn_global_avgpool(NULL, &k->x, &k->y, &e)) {
        fprintf(stderr, "global_avgpool: %s\n", e.msg);
        exit(1);
    }
    return dot(&k->y, &k->r);
}

static void test_global_avgpool(void)
{
    fm_error e = {0};
    static const int shapes[][4] = {{2, 3, 5, 7}, {1, 1, 1, 1}, {3, 4, 9, 9}};
    for (int s = 0; s < 3; s++) {
        gap_ctx k;
        k.x = fm_test_tensor(&rng, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3]);
        k.y = tensor_zero(shapes[s][0], shapes[s][1], 1, 1);
        k.r = fm_test_tensor(&rng, shapes[s][0], shapes[s][1], 1, 1);
        fm_tensor dx = tensor_like(&k.x);
        CHECK(fm_nn_global_avgpool_backward(NULL, &k.r, &dx, &e) == FM_OK);
        fd_check("global_avgpool dx", k.x.data, fm_tensor_count(&k.x), dx.data, gap_loss, &k,
                 0.25, TOL_LINEAR);
        if (s == 0) {
            fm_tensor bad = k.r;
            bad.c = 2;
            CHECK(fm_nn_global_avgpool_backward(NULL, &bad, &dx, &e) == FM_ERR_INVALID);
            CHECK(strstr(e.msg, "global_avgpool_backward: dy has shape [2, 2, 1, 1], "
                                "expected [2, 3, 1, 1]"));
            fm_tensor ov = fm_tensor_make(2, 3, 1, 1, dx.data + 4);
            CHECK(fm_nn_global_avgpool_backward(NULL, &ov, &dx, &e) == FM_ERR_INVALID);
            CHECK(strstr(e.msg, "overlaps"));
        }
        fm_test_tensor_free(&k.x), fm_test_tensor_free(&k.y), fm_test_tensor_free(&k.r);
        fm_test_tensor_free(&dx);
    }
}

/* ---- dense ---------------------------------------------------------------------- */

typedef struct dense_ctx {
    fm_tensor x, w, b, y, r;
} dense_ctx;

static double dense_loss(void *vctx)
{
    dense_ctx *k = vctx;
    fm_error e = {0};
    if (fm_nn_dense(NULL, &k->x, &k->w, &k->b, &k->y, &e)) {
        fprintf(stderr, "dense: %s\n", e.msg);
        exit(1);
    }
    return dot(&k->y, &k->r);
}

static void test_dense(void)
{
    fm_error e = {0};
    static const int shapes[][6] = {/* n, c, h, w of x; out; w shaped [out, c, h, w] */
                                    {3, 2, 3, 2, 5, 1},
                                    {1, 7, 1, 1, 1, 0},
                                    {4, 16, 1, 1, 9, 0}};
    for (int s = 0; s < 3; s++) {
        dense_ctx k;
        const int *d = shapes[s];
        k.x = fm_test_tensor(&rng, d[0], d[1], d[2], d[3]);
        const int in = d[1] * d[2] * d[3];
        k.w = d[5] ? fm_test_tensor(&rng, d[4], d[1], d[2], d[3])
                   : fm_test_tensor(&rng, d[4], in, 1, 1);
        k.b = fm_test_tensor(&rng, 1, d[4], 1, 1);
        k.y = tensor_zero(d[0], d[4], 1, 1);
        k.r = fm_test_tensor(&rng, d[0], d[4], 1, 1);
        fm_tensor dx = tensor_like(&k.x), dw = tensor_like(&k.w), db = tensor_like(&k.b);
        CHECK(fm_nn_dense_backward(NULL, &k.x, &k.w, &k.r, &dx, &dw, &db, &e) == FM_OK);
        fd_check("dense dx", k.x.data, fm_tensor_count(&k.x), dx.data, dense_loss, &k, 0.25,
                 TOL_LINEAR);
        fd_check("dense dw", k.w.data, fm_tensor_count(&k.w), dw.data, dense_loss, &k, 0.25,
                 TOL_LINEAR);
        fd_check("dense db", k.b.data, fm_tensor_count(&k.b), db.data, dense_loss, &k, 0.25,
                 TOL_LINEAR);
        /* Accumulates; outputs skipped one at a time. */
        fm_tensor ax = tensor_copy(&dx), aw = tensor_copy(&dw), ab = tensor_copy(&db);
        CHECK(fm_nn_dense_backward(NULL, &k.x, &k.w, &k.r, &ax, NULL, NULL, &e) == FM_OK);
        CHECK(fm_nn_dense_backward(NULL, &k.x, &k.w, &k.r, NULL, &aw, NULL, &e) == FM_OK);
        CHECK(fm_nn_dense_backward(NULL, &k.x, &k.w, &k.r, NULL, NULL, &ab, &e) == FM_OK);
        fm_tensor *acc[3] = {&ax, &aw, &ab}, *g[3] = {&dx, &dw, &db};
        for (int t = 0; t < 3; t++) {
            size_t count = fm_tensor_count(g[t]);
            for (size_t i = 0; i < count; i++)
                g[t]->data[i] *= 2.0f;
            CHECK_MSG(max_rel(acc[t]->data, g[t]->data, count) < 1e-5, "dense twice %d", t);
        }
        if (s == 0) {
            fm_tensor bad = k.r;
            bad.c = 4;
            CHECK(fm_nn_dense_backward(NULL, &k.x, &k.w, &bad, &dx, &dw, &db, &e) ==
                  FM_ERR_INVALID);
            CHECK(strstr(e.msg, "dense_backward: dy has shape [3, 4, 1, 1], expected "
                                "[3, 5, 1, 1]"));
            bad = dw;
            bad.n = 4;
            CHECK(fm_nn_dense_backward(NULL, &k.x, &k.w, &k.r, &dx, &bad, &db, &e) ==
                  FM_ERR_INVALID);
            CHECK(strstr(e.msg, "dense_backward: dw has shape"));
            bad = k.w;
            bad.c = 1;
            CHECK(fm_nn_dense_backward(NULL, &k.x, &bad, &k.r, &dx, NULL, &db, &e) ==
                  FM_ERR_INVALID);
            CHECK(strstr(e.msg, "dense_backward: weights"));
            fm_tensor ov = fm_tensor_make(1, 5, 1, 1, dw.data + 1);
            CHECK(fm_nn_dense_backward(NULL, &k.x, &k.w, &k.r, &dx, &dw, &ov, &e) ==
                  FM_ERR_INVALID);
            CHECK(strstr(e.msg, "dense_backward: db overlaps dw"));
        }
        fm_tensor *all[] = {&k.x, &k.w, &k.b, &k.y, &k.r, &dx, &dw, &db, &ax, &aw, &ab};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            fm_test_tensor_free(all[i]);
    }
}

/* ---- per-channel and element-wise ----------------------------------------------- */

typedef struct elt_ctx {
    fm_tensor x, x2, p1, p2, y, r;
    float s;
    int which; /* 0 scale_shift, 1 prelu, 2 relu, 3 leaky, 4 add, 5 channel_pad */
} elt_ctx;

static double elt_loss(void *vctx)
{
    elt_ctx *k = vctx;
    fm_error e = {0};
    fm_status st = FM_OK;
    switch (k->which) {
    case 0:
        st = fm_nn_scale_shift(NULL, &k->x, k->p1.data ? &k->p1 : NULL, &k->p2, &k->y, &e);
        break;
    case 1:
        st = fm_nn_prelu(NULL, &k->x, &k->p1, &k->y, &e);
        break;
    case 2:
        st = fm_nn_relu(NULL, &k->x, &k->y, &e);
        break;
    case 3:
        st = fm_nn_leaky_relu(NULL, &k->x, k->s, &k->y, &e);
        break;
    case 4:
        st = fm_nn_add(NULL, &k->x, &k->x2, k->s, &k->y, &e);
        break;
    case 5:
        st = fm_nn_channel_pad(NULL, &k->x, &k->y, &e);
        break;
    }
    if (st) {
        fprintf(stderr, "forward %d: %s\n", k->which, e.msg);
        exit(1);
    }
    return dot(&k->y, &k->r);
}

static void elt_free(elt_ctx *k)
{
    fm_test_tensor_free(&k->x), fm_test_tensor_free(&k->x2), fm_test_tensor_free(&k->p1);
    fm_test_tensor_free(&k->p2);
    fm_test_tensor_free(&k->y), fm_test_tensor_free(&k->r);
}

static void test_scale_shift(void)
{
    fm_error e = {0};
    for (int with_scale = 0; with_scale < 2; with_scale++) {
        elt_ctx k = {0};
        k.which = 0;
        k.x = fm_test_tensor(&rng, 2, 3, 4, 5);
        if (with_scale)
            k.p1 = fm_test_tensor(&rng, 1, 3, 1, 1);
        k.p2 = fm_test_tensor(&rng, 3, 1, 1, 1);
        k.y = tensor_like(&k.x);
        k.r = fm_test_tensor(&rng, 2, 3, 4, 5);
        const fm_tensor *scale = with_scale ? &k.p1 : NULL;
        fm_tensor dx = tensor_like(&k.x), ds = tensor_zero(1, 3, 1, 1);
        fm_tensor dt = tensor_zero(1, 3, 1, 1);
        CHECK(fm_nn_scale_shift_backward(NULL, &k.x, scale, &k.r, &dx, &ds, &dt, &e) ==
              FM_OK);
        fd_check("scale_shift dx", k.x.data, fm_tensor_count(&k.x), dx.data, elt_loss, &k,
                 0.25, TOL_LINEAR);
        if (with_scale)
            fd_check("scale_shift dscale", k.p1.data, 3, ds.data, elt_loss, &k, 0.25,
                     TOL_LINEAR);
        fd_check("scale_shift dshift", k.p2.data, 3, dt.data, elt_loss, &k, 0.25, TOL_LINEAR);
        /* x may be NULL when dscale is not wanted. */
        fm_tensor dx2 = tensor_like(&k.x), dt2 = tensor_zero(1, 3, 1, 1);
        CHECK(fm_nn_scale_shift_backward(NULL, NULL, scale, &k.r, &dx2, NULL, &dt2, &e) ==
              FM_OK);
        CHECK(same(&dx2, &dx) && same(&dt2, &dt));
        CHECK(fm_nn_scale_shift_backward(NULL, NULL, scale, &k.r, NULL, &ds, NULL, &e) ==
              FM_ERR_INVALID);
        CHECK(strstr(e.msg, "scale_shift_backward: input is NULL"));
        fm_tensor bad = tensor_zero(1, 4, 1, 1);
        CHECK(fm_nn_scale_shift_backward(NULL, &k.x, scale, &k.r, &dx, &bad, &dt, &e) ==
              FM_ERR_INVALID);
        CHECK(strstr(e.msg, "scale_shift_backward: dscale"));
        fm_tensor ov = fm_tensor_make(1, 3, 1, 1, dx.data + 2);
        CHECK(fm_nn_scale_shift_backward(NULL, &k.x, scale, &k.r, &dx, &ds, &ov, &e) ==
              FM_ERR_INVALID);
        CHECK(strstr(e.msg, "scale_shift_backward: dshift overlaps dx"));
        fm_test_tensor_free(&dx), fm_test_tensor_free(&ds), fm_test_tensor_free(&dt);
        fm_test_tensor_free(&dx2);
        fm_test_tensor_free(&dt2), fm_test_tensor_free(&bad);
        elt_free(&k);
    }
}

static void test_prelu(void)
{
    fm_error e = {0};
    for (int shared = 0; shared < 2; shared++) {
        elt_ctx k = {0};
        k.which = 1;
        k.x = fm_test_tensor(&rng, 2, 4, 3, 5);
        nudge_from_zero(&k.x, 0.05f);
        k.p1 = shared ? fm_test_tensor(&rng, 1, 1, 1, 1) : fm_test_tensor(&rng, 1, 4, 1, 1);
        k.y = tensor_like(&k.x);
        k.r = fm_test_tensor(&rng, 2, 4, 3, 5);
        fm_tensor dx = tensor_like(&k.x), ds = tensor_like(&k.p1);
        CHECK(fm_nn_prelu_backward(NULL, &k.x, &k.p1, &k.r, &dx, &ds, &e) == FM_OK);
        fd_check(shared ? "prelu (shared) dx" : "prelu dx", k.x.data, fm_tensor_count(&k.x),
                 dx.data, elt_loss, &k, 0.01, TOL_SMOOTH);
        fd_check(shared ? "prelu (shared) dslope" : "prelu dslope", k.p1.data,
                 fm_tensor_count(&k.p1), ds.data, elt_loss, &k, 0.25, TOL_LINEAR);
        fm_tensor bad = tensor_zero(1, 3, 1, 1);
        CHECK(fm_nn_prelu_backward(NULL, &k.x, &bad, &k.r, &dx, NULL, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "prelu_backward: slope"));
        CHECK(fm_nn_prelu_backward(NULL, &k.x, &k.p1, &k.r, &dx, &dx, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "prelu_backward: dslope"));
        fm_test_tensor_free(&dx), fm_test_tensor_free(&ds), fm_test_tensor_free(&bad);
        elt_free(&k);
    }
}

static void test_relu_family(void)
{
    fm_error e = {0};
    static const float alphas[] = {0.0f, 0.1f, 0.01f};
    for (int kind = 0; kind < 4; kind++) {
        /* kind 0: relu; 1..3: leaky with alphas[kind - 1] */
        elt_ctx k = {0};
        k.which = kind ? 3 : 2;
        k.s = kind ? alphas[kind - 1] : 0.0f;
        k.x = fm_test_tensor(&rng, 3, 2, 4, 3);
        nudge_from_zero(&k.x, 0.05f);
        k.y = tensor_like(&k.x);
        k.r = fm_test_tensor(&rng, 3, 2, 4, 3);
        elt_loss(&k); /* y = forward output, which the backward pass takes */
        fm_tensor dx = tensor_like(&k.x), dx_in = tensor_like(&k.x);
        fm_status st = kind ? fm_nn_leaky_relu_backward(NULL, &k.y, k.s, &k.r, &dx, &e)
                            : fm_nn_relu_backward(NULL, &k.y, &k.r, &dx, &e);
        CHECK_MSG(st == FM_OK, "%s", e.msg);
        /* The input gives the same answer (same signs). */
        st = kind ? fm_nn_leaky_relu_backward(NULL, &k.x, k.s, &k.r, &dx_in, &e)
                  : fm_nn_relu_backward(NULL, &k.x, &k.r, &dx_in, &e);
        CHECK(st == FM_OK && same(&dx, &dx_in));
        char what[64];
        snprintf(what, sizeof what, "%s alpha %g dx", kind ? "leaky_relu" : "relu",
                 (double)k.s);
        fd_check(what, k.x.data, fm_tensor_count(&k.x), dx.data, elt_loss, &k, 0.01,
                 TOL_SMOOTH);
        const char *op = kind ? "leaky_relu_backward" : "relu_backward";
        fm_tensor bad = tensor_zero(3, 2, 4, 4);
        st = kind ? fm_nn_leaky_relu_backward(NULL, &k.y, k.s, &k.r, &bad, &e)
                  : fm_nn_relu_backward(NULL, &k.y, &k.r, &bad, &e);
        CHECK(st == FM_ERR_INVALID && strstr(e.msg, op) && strstr(e.msg, "dx has shape"));
        fm_tensor ov = k.r;
        st = kind ? fm_nn_leaky_relu_backward(NULL, &k.y, k.s, &k.r, &ov, &e)
                  : fm_nn_relu_backward(NULL, &k.y, &k.r, &ov, &e);
        CHECK(st == FM_ERR_INVALID && strstr(e.msg, "dx overlaps dy"));
        st = kind ? fm_nn_leaky_relu_backward(NULL, &k.y, k.s, &k.r, NULL, &e)
                  : fm_nn_relu_backward(NULL, &k.y, &k.r, NULL, &e);
        CHECK(st == FM_OK);
        fm_test_tensor_free(&dx), fm_test_tensor_free(&dx_in), fm_test_tensor_free(&bad);
        elt_free(&k);
    }
    fm_tensor y = fm_test_tensor(&rng, 1, 2, 1, 1), dy = fm_test_tensor(&rng, 1, 2, 1, 1);
    fm_tensor dx = tensor_zero(1, 2, 1, 1);
    CHECK(fm_nn_leaky_relu_backward(NULL, &y, -0.1f, &dy, &dx, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "leaky_relu_backward: alpha"));
    CHECK(fm_nn_leaky_relu_backward(NULL, &y, NAN, &dy, &dx, &e) == FM_ERR_INVALID);
    fm_test_tensor_free(&y), fm_test_tensor_free(&dy), fm_test_tensor_free(&dx);
}

static void test_add_and_pad(void)
{
    fm_error e = {0};
    {
        elt_ctx k = {0};
        k.which = 4;
        k.s = 0.7f;
        k.x = fm_test_tensor(&rng, 2, 3, 4, 5);
        k.x2 = fm_test_tensor(&rng, 2, 3, 4, 5);
        k.y = tensor_like(&k.x);
        k.r = fm_test_tensor(&rng, 2, 3, 4, 5);
        fm_tensor dx = tensor_like(&k.x), dr = tensor_like(&k.x);
        CHECK(fm_nn_add_backward(NULL, &k.r, k.s, &dx, &dr, &e) == FM_OK);
        fd_check("add dx", k.x.data, fm_tensor_count(&k.x), dx.data, elt_loss, &k, 0.25,
                 TOL_LINEAR);
        fd_check("add dr", k.x2.data, fm_tensor_count(&k.x2), dr.data, elt_loss, &k, 0.25,
                 TOL_LINEAR);
        /* Both paths of a residual block into one gradient: two calls accumulate. */
        fm_tensor both = tensor_like(&k.x);
        CHECK(fm_nn_add_backward(NULL, &k.r, k.s, &both, NULL, &e) == FM_OK);
        CHECK(fm_nn_add_backward(NULL, &k.r, k.s, NULL, &both, &e) == FM_OK);
        int ok = 1;
        for (size_t i = 0; i < fm_tensor_count(&both); i++)
            ok &= fabsf(both.data[i] - (dx.data[i] + dr.data[i])) <= 1e-6f;
        CHECK(ok);
        CHECK(fm_nn_add_backward(NULL, &k.r, k.s, &dx, &dx, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "add_backward: dr overlaps dx"));
        CHECK(fm_nn_add_backward(NULL, &k.r, INFINITY, &dx, &dr, &e) == FM_ERR_INVALID);
        fm_tensor bad = tensor_zero(2, 3, 4, 4);
        CHECK(fm_nn_add_backward(NULL, &k.r, k.s, &dx, &bad, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "add_backward: dr has shape [2, 3, 4, 4], expected [2, 3, 4, 5]"));
        fm_test_tensor_free(&dx), fm_test_tensor_free(&dr), fm_test_tensor_free(&both);
        fm_test_tensor_free(&bad);
        elt_free(&k);
    }
    {
        elt_ctx k = {0};
        k.which = 5;
        k.x = fm_test_tensor(&rng, 2, 3, 4, 5);
        k.y = tensor_zero(2, 7, 4, 5);
        k.r = fm_test_tensor(&rng, 2, 7, 4, 5);
        fm_tensor dx = tensor_like(&k.x);
        CHECK(fm_nn_channel_pad_backward(NULL, &k.r, &dx, &e) == FM_OK);
        fd_check("channel_pad dx", k.x.data, fm_tensor_count(&k.x), dx.data, elt_loss, &k,
                 0.25, TOL_LINEAR);
        fm_tensor bad = tensor_zero(2, 8, 4, 5);
        CHECK(fm_nn_channel_pad_backward(NULL, &k.r, &bad, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "channel_pad_backward"));
        fm_tensor ov = fm_tensor_make(2, 3, 4, 5, k.r.data + 1);
        CHECK(fm_nn_channel_pad_backward(NULL, &k.r, &ov, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "channel_pad_backward: dx overlaps dy"));
        fm_test_tensor_free(&dx), fm_test_tensor_free(&bad);
        elt_free(&k);
    }
}

/* ---- loss ----------------------------------------------------------------------- */

typedef struct xent_ctx {
    fm_tensor logits;
    const float *target, *weight;
    float scale;
} xent_ctx;

static double xent_loss(void *vctx)
{
    xent_ctx *k = vctx;
    fm_error e = {0};
    double loss = 0.0;
    if (fm_nn_softmax_xent(NULL, &k->logits, k->target, k->weight, k->scale, &loss, NULL,
                           NULL, &e)) {
        fprintf(stderr, "softmax_xent: %s\n", e.msg);
        exit(1);
    }
    return loss;
}

/* The loss from its definition, in double. */
static double ref_xent(const fm_tensor *l, const float *t, const float *w, float scale)
{
    double total = 0.0;
    const int K = l->c;
    for (int n = 0; n < l->n; n++) {
        double se = 0.0;
        for (int k = 0; k < K; k++)
            se += exp((double)l->data[n * K + k]);
        double row = 0.0;
        for (int k = 0; k < K; k++)
            row -= t[n * K + k] * ((double)l->data[n * K + k] - log(se));
        total += (w ? w[n] : 1.0) * row;
    }
    return scale * total;
}

static void test_softmax_xent(void)
{
    fm_error e = {0};
    const int N = 4, K = 7;
    float *target = fm_test_alloc((size_t)N * K * sizeof(float));
    float weight[4] = {1.0f, 0.5f, 2.0f, 0.0f};
    float *probs = fm_test_alloc((size_t)N * K * sizeof(float));
    for (int variant = 0; variant < 4; variant++) {
        /* 0: one-hot, no weights, scale 1; 1: Gaussian, weights, scale 0.25;
         * 2: one-hot with weights and scale 3; 3: Gaussian with sigma 0.3, scale 1 */
        for (int n = 0; n < N; n++) {
            if (variant % 2 == 0)
                fm_nn_gaussian_target(K, (double)fm_test_rng_int(&rng, K), 0.0, target + n * K);
            else
                fm_nn_gaussian_target(K, 6.0 * (double)fm_test_rng_u32(&rng) / 4294967296.0,
                                      variant == 1 ? 1.5 : 0.3, target + n * K);
        }
        xent_ctx k;
        k.logits = fm_test_tensor(&rng, N, K, 1, 1);
        for (size_t i = 0; i < (size_t)N * K; i++)
            k.logits.data[i] *= 3.0f;
        k.target = target;
        k.weight = variant == 1 || variant == 2 ? weight : NULL;
        k.scale = variant == 1 ? 0.25f : variant == 2 ? 3.0f : 1.0f;
        fm_tensor dl = tensor_like(&k.logits);
        double loss = -1.0;
        CHECK(fm_nn_softmax_xent(NULL, &k.logits, k.target, k.weight, k.scale, &loss, &dl,
                                 probs, &e) == FM_OK);
        double ref = ref_xent(&k.logits, target, k.weight, k.scale);
        CHECK_MSG(fabs(loss - ref) <= 1e-9 * fmax(1.0, fabs(ref)), "xent loss %g, want %g",
                  loss, ref);
        char what[64];
        snprintf(what, sizeof what, "softmax_xent variant %d dlogits", variant);
        fd_check(what, k.logits.data, (size_t)N * K, dl.data, xent_loss, &k, 1e-3,
                 TOL_LINEAR);
        /* probs is the engine's softmax. */
        fm_tensor sm = tensor_like(&k.logits);
        CHECK(fm_nn_softmax(NULL, &k.logits, &sm, &e) == FM_OK);
        CHECK(max_rel(probs, sm.data, (size_t)N * K) < 1e-6);
        /* Accumulates; loss is set, not accumulated. */
        CHECK(fm_nn_softmax_xent(NULL, &k.logits, k.target, k.weight, k.scale, &loss, &dl,
                                 NULL, &e) == FM_OK);
        CHECK(fabs(loss - ref) <= 1e-9 * fmax(1.0, fabs(ref)));
        fm_tensor once = tensor_like(&k.logits);
        CHECK(fm_nn_softmax_xent(NULL, &k.logits, k.target, k.weight, k.scale, NULL, &once,
                                 NULL, &e) == FM_OK);
        for (size_t i = 0; i < (size_t)N * K; i++)
            once.data[i] *= 2.0f;
        CHECK(max_rel(dl.data, once.data, (size_t)N * K) < 1e-6);
        fm_test_tensor_free(&k.logits), fm_test_tensor_free(&dl), fm_test_tensor_free(&sm);
        fm_test_tensor_free(&once);
    }

    /* Stable for huge logits: finite loss, exact-looking probabilities. */
    fm_tensor big = tensor_zero(1, 3, 1, 1), dl = tensor_zero(1, 3, 1, 1);
    big.data[0] = 1e4f, big.data[1] = -1e4f, big.data[2] = 1e4f - 2.0f;
    float t3[3] = {0.0f, 0.0f, 1.0f};
    double loss = 0.0;
    CHECK(fm_nn_softmax_xent(NULL, &big, t3, NULL, 1.0f, &loss, &dl, probs, &e) == FM_OK);
    double want = 2.0 + log1p(exp(-2.0));
    CHECK_MSG(fabs(loss - want) < 1e-9, "huge logits: loss %g want %g", loss, want);
    CHECK(isfinite(dl.data[0]) && probs[1] == 0.0f && fabsf(dl.data[2] + 0.880797f) < 1e-5f);

    /* Errors: bad target rows and weights are refused before anything is written. */
    fm_tensor before = tensor_copy(&dl);
    float bad_t[3] = {0.5f, 0.2f, 0.2f};
    CHECK(fm_nn_softmax_xent(NULL, &big, bad_t, NULL, 1.0f, &loss, &dl, probs, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "softmax_xent: target row 0 sums to"));
    bad_t[0] = -0.1f, bad_t[1] = 1.1f, bad_t[2] = 0.0f;
    CHECK(fm_nn_softmax_xent(NULL, &big, bad_t, NULL, 1.0f, &loss, &dl, probs, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "target[0, 0]"));
    float neg_w = -1.0f;
    CHECK(fm_nn_softmax_xent(NULL, &big, t3, &neg_w, 1.0f, &loss, &dl, probs, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "weight[0]"));
    big.data[1] = NAN;
    CHECK(fm_nn_softmax_xent(NULL, &big, t3, NULL, 1.0f, &loss, &dl, probs, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "logits[0, 1]"));
    big.data[1] = 0.0f;
    CHECK(same(&dl, &before));
    CHECK(fm_nn_softmax_xent(NULL, &big, NULL, NULL, 1.0f, &loss, &dl, probs, &e) ==
          FM_ERR_INVALID);
    fm_tensor spatial = tensor_zero(1, 3, 2, 1);
    CHECK(fm_nn_softmax_xent(NULL, &spatial, t3, NULL, 1.0f, &loss, NULL, NULL, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "softmax_xent: logits have shape [1, 3, 2, 1]"));
    CHECK(fm_nn_softmax_xent(NULL, &big, t3, NULL, 1.0f, &loss, &dl, dl.data, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "softmax_xent: probs overlaps dlogits"));
    CHECK(fm_nn_softmax_xent(NULL, &big, dl.data, NULL, 1.0f, &loss, &dl, NULL, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "softmax_xent: dlogits overlaps the target"));
    fm_tensor wrong = tensor_zero(1, 4, 1, 1);
    CHECK(fm_nn_softmax_xent(NULL, &big, t3, NULL, 1.0f, &loss, &wrong, NULL, &e) ==
          FM_ERR_INVALID);
    CHECK(strstr(e.msg, "softmax_xent: dlogits has shape"));
    /* Measuring: NULL data everywhere is fine. */
    fm_arena *m = NULL;
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    fm_tensor lm = fm_tensor_make(5, 9, 1, 1, NULL), dm = lm;
    CHECK(fm_nn_softmax_xent(m, &lm, NULL, NULL, 1.0f, NULL, &dm, NULL, &e) == FM_OK);
    CHECK(fm_arena_high_water(m) == 0);
    fm_arena_destroy(&m);
    fm_test_tensor_free(&big), fm_test_tensor_free(&dl), fm_test_tensor_free(&before);
    fm_test_tensor_free(&spatial);
    fm_test_tensor_free(&wrong);
    free(target);
    free(probs);
}

static void test_gaussian_target(void)
{
    float t[9];
    /* sigma <= 0: one-hot at round(mu), clamped. */
    fm_nn_gaussian_target(5, 2.4, 0.0, t);
    CHECK(t[0] == 0.0f && t[1] == 0.0f && t[2] == 1.0f && t[3] == 0.0f && t[4] == 0.0f);
    fm_nn_gaussian_target(5, 2.6, -1.0, t);
    CHECK(t[3] == 1.0f && t[2] == 0.0f);
    fm_nn_gaussian_target(5, -3.0, 0.0, t);
    CHECK(t[0] == 1.0f && t[1] == 0.0f);
    fm_nn_gaussian_target(5, 17.0, 0.0, t);
    CHECK(t[4] == 1.0f && t[3] == 0.0f);
    fm_nn_gaussian_target(1, 0.3, 2.0, t);
    CHECK(t[0] == 1.0f);
    /* sigma > 0: normalised, peaked at mu, ratios exp(-((i-mu)^2 - (j-mu)^2) / 2s^2). */
    fm_nn_gaussian_target(9, 3.0, 1.5, t);
    double sum = 0.0;
    for (int i = 0; i < 9; i++)
        sum += t[i];
    CHECK(fabs(sum - 1.0) < 1e-6);
    CHECK(t[3] > t[2] && t[2] == t[4] && t[1] == t[5]);
    CHECK(fabs(t[4] / t[3] - exp(-1.0 / (2 * 1.5 * 1.5))) < 1e-6);
    fm_nn_gaussian_target(9, 4.5, 1.0, t);
    CHECK(fabs(t[4] - t[5]) < 1e-7 && t[4] > t[3]);
    /* mu far away with a small sigma: no underflow to 0/0. */
    fm_nn_gaussian_target(9, 1000.0, 0.5, t);
    sum = 0.0;
    for (int i = 0; i < 9; i++)
        sum += t[i];
    CHECK(isfinite(t[8]) && fabs(sum - 1.0) < 1e-6 && t[8] > 0.99f);
    fm_nn_gaussian_target(9, -50.0, 1e-3, t);
    CHECK(t[0] == 1.0f && t[1] == 0.0f);
}

/* ---- optimiser ------------------------------------------------------------------ */

/* Several steps of fm_optim_update against the formulas of grad.h run here in double
 * on separate state (rounded to float where the optimiser stores), with changing
 * gradients; then the properties that do not need a reference. */
static void test_optim(void)
{
    enum { N = 257, STEPS = 12 };
    float p[N], g[N], m[N], v[N];
    double rp[N], rm[N], rv[N];
    for (int kind = 0; kind < 2; kind++) {
        const double lr = kind ? 0.05 : 1e-3, wd = 0.01, mom = 0.9;
        for (int i = 0; i < N; i++) {
            p[i] = fm_test_rng_signed(&rng);
            rp[i] = p[i];
            m[i] = v[i] = 0;
            rm[i] = rv[i] = 0;
        }
        double worst = 0;
        for (int t = 1; t <= STEPS; t++) {
            for (int i = 0; i < N; i++)
                g[i] = fm_test_rng_signed(&rng) * (i % 7 == 0 ? 1e-4f : 1.0f);
            const fm_optim_step st = {kind ? FM_OPTIM_SGD : FM_OPTIM_ADAMW, lr, wd, mom, t};
            fm_optim_update(&st, p, g, m, kind ? NULL : v, N);
            for (int i = 0; i < N; i++) {
                if (kind) {
                    rm[i] = (float)(mom * rm[i] + g[i]);
                    rp[i] = (float)(rp[i] - lr * (rm[i] + wd * rp[i]));
                } else {
                    rm[i] = (float)(0.9 * rm[i] + 0.1 * g[i]);
                    rv[i] = (float)(0.999 * rv[i] + 0.001 * (double)g[i] * g[i]);
                    const double mh = rm[i] / (1 - pow(0.9, t)), vh = rv[i] / (1 - pow(0.999, t));
                    rp[i] = (float)(rp[i] - lr * (mh / (sqrt(vh) + 1e-8) + wd * rp[i]));
                }
                worst = fmax(worst, fabs(p[i] - rp[i]) / fmax(1e-6, fabs(rp[i])));
            }
        }
        CHECK_MSG(worst < 1e-6, "%s: %d steps off the formula by %.3g (relative)",
                  kind ? "SGD" : "AdamW", STEPS, worst);
    }
    /* AdamW's first step from zero moments moves every parameter by lr, whatever the
     * gradient's scale (the bias correction makes m / sqrt(v) = sign(g)) */
    for (int i = 0; i < N; i++) {
        p[i] = 1.0f;
        g[i] = (i % 2 ? 1 : -1) * (float)pow(10.0, (double)(i % 9) - 4);
        m[i] = v[i] = 0;
    }
    const fm_optim_step first = {FM_OPTIM_ADAMW, 1e-3, 0, 0, 1};
    fm_optim_update(&first, p, g, m, v, N);
    int ok = 1;
    for (int i = 0; i < N; i++)
        ok &= fabs((1.0 - p[i]) - (i % 2 ? 1e-3 : -1e-3)) < 1e-6;
    CHECK_MSG(ok, "AdamW's first step is not lr x sign(g)");
    /* weight decay alone (no gradient, SGD from rest): p shrinks by lr * wd * p */
    for (int i = 0; i < N; i++) {
        p[i] = 2.0f;
        g[i] = m[i] = 0;
    }
    const fm_optim_step decay = {FM_OPTIM_SGD, 0.1, 0.5, 0.9, 0};
    fm_optim_update(&decay, p, g, m, NULL, N);
    CHECK(p[0] == 1.9f && p[N - 1] == 1.9f && m[0] == 0);
    /* nothing to do for no parameters */
    fm_optim_update(&first, NULL, NULL, NULL, NULL, 0);
}

/* ---- measuring for the whole family --------------------------------------------- */

/* Every operation on a measuring arena with NULL data: validates, counts no scratch
 * (except convolution), touches nothing. */
static void test_measuring(void)
{
    fm_error e = {0};
    fm_arena *m = NULL;
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    fm_tensor x = fm_tensor_make(2, 3, 6, 6, NULL), y = x, dy = x, dx = x;
    fm_tensor vec = fm_tensor_make(1, 3, 1, 1, NULL), dv = vec;
    CHECK(fm_nn_scale_shift_backward(m, &x, &vec, &dy, &dx, &dv, &dv, &e) == FM_OK);
    CHECK(fm_nn_prelu_backward(m, &x, &vec, &dy, &dx, &dv, &e) == FM_OK);
    CHECK(fm_nn_relu_backward(m, &y, &dy, &dx, &e) == FM_OK);
    CHECK(fm_nn_leaky_relu_backward(m, &y, 0.1f, &dy, &dx, &e) == FM_OK);
    CHECK(fm_nn_add_backward(m, &dy, 1.0f, &dx, &dx, &e) == FM_OK);
    fm_tensor padded = fm_tensor_make(2, 5, 6, 6, NULL);
    CHECK(fm_nn_channel_pad_backward(m, &padded, &dx, &e) == FM_OK);
    fm_tensor g = fm_tensor_make(2, 3, 1, 1, NULL);
    CHECK(fm_nn_global_avgpool_backward(m, &g, &dx, &e) == FM_OK);
    fm_tensor w = fm_tensor_make(4, 108, 1, 1, NULL), dyd = fm_tensor_make(2, 4, 1, 1, NULL);
    fm_tensor b = fm_tensor_make(4, 1, 1, 1, NULL);
    CHECK(fm_nn_dense_backward(m, &x, &w, &dyd, &dx, &w, &b, &e) == FM_OK);
    CHECK(fm_arena_high_water(m) == 0);
    /* Shapes are still checked. */
    fm_tensor wrong = fm_tensor_make(2, 3, 6, 5, NULL);
    CHECK(fm_nn_relu_backward(m, &y, &wrong, &dx, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "relu_backward: dy has shape"));
    /* And without a measuring arena, missing data is an error. */
    CHECK(fm_nn_relu_backward(NULL, &y, &dy, &dx, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "no data"));
    fm_arena_destroy(&m);
}

int main(void)
{
    fm_error e = {0};
    if (fm_arena_new(64u << 20, &fwd_arena, &e)) {
        fprintf(stderr, "arena: %s\n", e.msg);
        return 1;
    }
    test_conv();
    test_conv_errors();
    test_pool();
    test_global_avgpool();
    test_dense();
    test_scale_shift();
    test_prelu();
    test_relu_family();
    test_add_and_pad();
    test_softmax_xent();
    test_gaussian_target();
    test_optim();
    test_measuring();
    fm_arena_destroy(&fwd_arena);
    fprintf(stderr, "test_grad: %d convolution geometries; %d gradients, %d elements "
                    "checked against finite differences\n",
            conv_cases, fd_tensors, fd_elements);
    return fm_test_done("test_grad");
}
