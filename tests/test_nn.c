/* test_nn.c - the inference engine against plain reference loops.
 *
 * Every operation runs on random inputs of odd sizes and is compared with a naive
 * double-precision loop written here from the operation's definition; the error must
 * stay within 1e-4 of the largest reference value. Convolution and pooling run over a
 * few hundred random geometries (kernels 1..7, strides 1..3, symmetric and asymmetric
 * padding, ceil and floor pooling, groups) plus cases aimed at each convolution path.
 * The arena tests check alignment, mark/reset, that measuring gives exactly the size a
 * real arena needs, and that an arena one byte too small fails cleanly (ASan checks
 * that nothing is written past the end: test buffers are allocated to exact size). */
#include "facemill/nn.h"
#include "fm_test.h"
#include "fm_test_model.h"

#include <float.h>
#include <stdint.h>
#include <string.h>

#define TOL 1e-4

/* Cases run and geometries rejected, printed at the end so a reader sees coverage. */
static int conv_run, conv_rejected, pool_run, pool_rejected;

/* ---- helpers ------------------------------------------------------------------- */

static fm_test_rng rng = FM_TEST_RNG(0x9e3779b97f4a7c15ull);

static int rnd_pick(const int *v, int count)
{
    return v[fm_test_rng_int(&rng, count)];
}

/* count zeros, malloc'd to exactly their size. */
static double *ref_new(size_t count)
{
    double *r = fm_test_alloc(count * sizeof *r);
    memset(r, 0, count * sizeof *r);
    return r;
}

static float at(const fm_tensor *t, int n, int c, int h, int w)
{
    return t->data[(((size_t)n * t->c + c) * t->h + h) * t->w + w];
}

/* Largest |got - ref| relative to the largest |ref| (absolute when ref is all ~0). */
static double rel_err(const float *got, const double *ref, size_t count)
{
    double max_ref = 0.0, max_err = 0.0;
    for (size_t i = 0; i < count; i++) {
        double r = fabs(ref[i]), e = fabs((double)got[i] - ref[i]);
        if (r > max_ref)
            max_ref = r;
        if (e > max_err || e != e)
            max_err = e != e ? INFINITY : e;
    }
    return max_err / (max_ref > 1e-6 ? max_ref : 1.0);
}

/* ---- convolution ---------------------------------------------------------------- */

typedef struct conv_case {
    int n, c, h, w, co, kh, kw;
    fm_conv2d_params p;
    int bias;
} conv_case;

static void ref_conv(const fm_tensor *x, const fm_tensor *w, const fm_tensor *b,
                     const fm_conv2d_params *p, int oh, int ow, double *y)
{
    int cpg = x->c / p->groups, cog = w->n / p->groups;
    for (int n = 0; n < x->n; n++)
        for (int oc = 0; oc < w->n; oc++) {
            int g = oc / cog;
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    double s = b ? b->data[oc] : 0.0;
                    for (int ci = 0; ci < cpg; ci++)
                        for (int ky = 0; ky < w->h; ky++)
                            for (int kx = 0; kx < w->w; kx++) {
                                int iy = oy * p->stride_h - p->pad_top + ky;
                                int ix = ox * p->stride_w - p->pad_left + kx;
                                if (iy < 0 || iy >= x->h || ix < 0 || ix >= x->w)
                                    continue;
                                s += (double)at(x, n, g * cpg + ci, iy, ix) *
                                     at(w, oc, ci, ky, kx);
                            }
                    y[(((size_t)n * w->n + oc) * oh + oy) * ow + ox] = s;
                }
        }
}

static void run_conv_case(const conv_case *k)
{
    fm_error e = {0};
    fm_tensor x = fm_test_tensor(&rng, k->n, k->c, k->h, k->w);
    fm_tensor w = fm_test_tensor(&rng, k->co, k->c / k->p.groups, k->kh, k->kw);
    fm_tensor b = fm_test_tensor(&rng, 1, k->co, 1, 1);
    const fm_tensor *bias = k->bias ? &b : NULL;
    int ph = k->h + k->p.pad_top + k->p.pad_bottom;
    int pw = k->w + k->p.pad_left + k->p.pad_right;
    fm_tensor shape = {0};
    fm_status st = fm_nn_conv2d_shape(&x, &w, &k->p, &shape, &e);
    if (ph < k->kh || pw < k->kw) {
        CHECK_MSG(st == FM_ERR_INVALID, "conv %dx%d on %dx%d padded: status %d", k->kh, k->kw,
                  ph, pw, st);
        CHECK(strstr(e.msg, "conv2d") != NULL);
        conv_rejected++;
        goto done;
    }
    int oh = (ph - k->kh) / k->p.stride_h + 1, ow = (pw - k->kw) / k->p.stride_w + 1;
    CHECK_MSG(st == FM_OK && shape.n == k->n && shape.c == k->co && shape.h == oh &&
                  shape.w == ow,
              "conv shape: %s", e.msg);
    if (st)
        goto done;

    /* Measure, then run on an arena of exactly the measured size. */
    fm_arena *m = NULL, *a = NULL;
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    fm_tensor ym = fm_tensor_make(k->n, k->co, oh, ow, NULL);
    fm_tensor xm = x, wm = w;
    xm.data = wm.data = NULL;
    st = fm_nn_conv2d(m, &xm, &wm, NULL, &k->p, &ym, &e);
    CHECK_MSG(st == FM_OK, "measure: %s", e.msg);
    size_t need = fm_arena_high_water(m);
    CHECK(fm_arena_used(m) == 0);
    fm_arena_destroy(&m);

    conv_run++;
    fm_tensor y = fm_test_tensor(&rng, k->n, k->co, oh, ow);
    CHECK(fm_arena_new(need, &a, &e) == FM_OK);
    st = fm_nn_conv2d(a, &x, &w, bias, &k->p, &y, &e);
    CHECK_MSG(st == FM_OK, "conv: %s", e.msg);
    CHECK(fm_arena_high_water(a) == need);
    CHECK(fm_arena_used(a) == 0);
    fm_arena_destroy(&a);

    double *r = ref_new(fm_tensor_count(&y));
    ref_conv(&x, &w, bias, &k->p, oh, ow, r);
    double err = rel_err(y.data, r, fm_tensor_count(&y));
    CHECK_MSG(err <= TOL,
              "conv n%d c%d %dx%d -> co%d k%dx%d s%dx%d pad t%d l%d b%d r%d g%d: rel err %g",
              k->n, k->c, k->h, k->w, k->co, k->kh, k->kw, k->p.stride_h, k->p.stride_w,
              k->p.pad_top, k->p.pad_left, k->p.pad_bottom, k->p.pad_right, k->p.groups, err);
    free(r);

    /* One byte less must fail cleanly (when any scratch is needed at all). */
    if (need > 0) {
        CHECK(fm_arena_new(need - 1, &a, &e) == FM_OK);
        st = fm_nn_conv2d(a, &x, &w, bias, &k->p, &y, &e);
        CHECK_MSG(st == FM_ERR_ARENA, "short arena: status %d", st);
        CHECK(strstr(e.msg, "arena") != NULL);
        CHECK(fm_arena_used(a) == 0);
        fm_arena_destroy(&a);
    }
    fm_test_tensor_free(&y);
done:
    fm_test_tensor_free(&x);
    fm_test_tensor_free(&w);
    fm_test_tensor_free(&b);
}

static void test_conv_random(int cases)
{
    static const int hs[] = {1, 2, 5, 7, 9, 12}, ws[] = {1, 3, 5, 7, 8, 13};
    static const int cs[] = {1, 3, 13}, outs[] = {1, 3, 13, 16};
    static const int ks[] = {1, 2, 3, 5, 7}, ss[] = {1, 2, 3};
    for (int i = 0; i < cases; i++) {
        conv_case k = {0};
        k.n = fm_test_rng_int(&rng, 2) ? 3 : 1;
        k.h = rnd_pick(hs, 6);
        k.w = rnd_pick(ws, 6);
        k.kh = rnd_pick(ks, 5);
        k.kw = fm_test_rng_int(&rng, 2) ? k.kh : rnd_pick(ks, 5);
        k.p.stride_h = rnd_pick(ss, 3);
        k.p.stride_w = fm_test_rng_int(&rng, 2) ? k.p.stride_h : rnd_pick(ss, 3);
        if (fm_test_rng_int(&rng, 2)) {
            int pad = fm_test_rng_int(&rng, 3);
            k.p.pad_top = k.p.pad_left = k.p.pad_bottom = k.p.pad_right = pad;
        } else {
            k.p.pad_top = fm_test_rng_int(&rng, 3), k.p.pad_left = fm_test_rng_int(&rng, 3);
            k.p.pad_bottom = fm_test_rng_int(&rng, 3), k.p.pad_right = fm_test_rng_int(&rng, 3);
        }
        k.bias = fm_test_rng_int(&rng, 2);
        switch (fm_test_rng_int(&rng, 4)) {
        case 0: /* depthwise, channel multiplier 1 or 2 */
            k.c = rnd_pick(cs, 3);
            k.co = k.c * (1 + fm_test_rng_int(&rng, 2));
            k.p.groups = k.c;
            break;
        case 1: /* two groups of several channels */
            k.c = 2 * (1 + fm_test_rng_int(&rng, 3));
            k.co = 2 * (1 + fm_test_rng_int(&rng, 3));
            k.p.groups = 2;
            break;
        default:
            k.c = rnd_pick(cs, 3);
            k.co = rnd_pick(outs, 4);
            k.p.groups = 1;
        }
        run_conv_case(&k);
    }
}

static void test_conv_paths(void)
{
    const fm_conv2d_params s1 = fm_conv2d_sym(1, 0), s1p1 = fm_conv2d_sym(1, 1);
    const conv_case cases[] = {
        /* 1x1 stride 1 unpadded, enough pixels: direct multiply, no scratch */
        {3, 13, 17, 17, 16, 1, 1, s1, 1},
        {1, 6, 16, 17, 4, 1, 1, {1, 1, 0, 0, 0, 0, 2}, 1},
        /* 1x1 on few pixels: gathered across images */
        {3, 13, 3, 5, 16, 1, 1, s1, 1},
        /* 1x1 stride 2, and 1x1 padded: im2col */
        {3, 5, 9, 7, 7, 1, 1, fm_conv2d_sym(2, 0), 1},
        {1, 5, 16, 17, 7, 1, 1, s1p1, 0},
        /* many pixels, large K: im2col in several tiles, the last one partial */
        {2, 13, 45, 45, 5, 7, 7, fm_conv2d_sym(1, 3), 1},
        {1, 13, 47, 41, 3, 7, 7, {1, 1, 3, 2, 1, 0, 1}, 1},
        {1, 13, 90, 91, 4, 7, 7, {2, 3, 0, 3, 2, 1, 1}, 0},
        /* gathered with a partial last group of images */
        {3, 64, 15, 15, 8, 3, 3, s1p1, 1},
        {5, 64, 9, 9, 3, 3, 3, {2, 2, 1, 0, 0, 1, 1}, 1},
        /* P-Net-like first layer, one tile */
        {1, 3, 40, 31, 10, 3, 3, s1, 1},
        /* grouped with several channels per group, many pixels */
        {2, 6, 20, 21, 9, 3, 3, {1, 1, 1, 1, 1, 1, 3}, 1},
        /* depthwise on many pixels, stride 2, asymmetric (TF SAME) padding */
        {2, 7, 20, 21, 14, 3, 3, {2, 2, 0, 0, 1, 1, 7}, 1},
        /* depthwise stride 1: interior in register blocks, borders tap by tap */
        {2, 5, 19, 37, 5, 3, 3, {1, 1, 1, 1, 1, 1, 5}, 1},
        {1, 4, 11, 30, 8, 5, 5, {1, 1, 2, 0, 1, 3, 4}, 0},
        {1, 3, 6, 9, 3, 5, 7, {1, 1, 0, 0, 0, 0, 3}, 1},
        /* kernel exactly the padded input */
        {3, 3, 5, 7, 4, 7, 7, {1, 1, 1, 0, 1, 0, 1}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_conv_case(&cases[i]);
}

/* y = conv(x, wt) + bias, then PReLU with slope (slope may be NULL) under p
 * (fm_nn_conv2d_prelu), on an arena of exactly the size a measuring run asked for. */
static void conv_measured(const fm_tensor *x, const fm_tensor *wt, const fm_tensor *bias,
                          const fm_tensor *slope, const fm_conv2d_params *p, fm_tensor *y)
{
    fm_error e = {0};
    fm_arena *m = NULL, *a = NULL;
    fm_tensor xm = *x, wm = *wt, ym = *y;
    xm.data = wm.data = ym.data = NULL;
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    CHECK(fm_nn_conv2d_prelu(m, &xm, &wm, NULL, NULL, p, &ym, &e) == FM_OK);
    CHECK(fm_arena_new(fm_arena_high_water(m), &a, &e) == FM_OK);
    fm_arena_destroy(&m);
    fm_status st = fm_nn_conv2d_prelu(a, x, wt, bias, slope, p, y, &e);
    CHECK_MSG(st == FM_OK, "conv2d_prelu: %s", e.msg);
    fm_arena_destroy(&a);
}

/* Winograd's F(2x2, 3x3) (3x3 stride 1, one group, 16..128 channels, at least 64 2x2
 * output blocks) against the double reference, and the same shapes as im2col + sgemm:
 * odd output sizes (a last block row and column cut off), every kind of padding, blocks
 * of one pass spanning images, several passes, widths where a pass ends mid-row. */
static void test_conv_winograd(void)
{
    const conv_case cases[] = {
        {1, 16, 16, 16, 16, 3, 3, fm_conv2d_sym(1, 1), 1},  /* exactly 64 blocks */
        {3, 17, 9, 13, 20, 3, 3, fm_conv2d_sym(1, 1), 1},   /* odd both ways, 3 images */
        {3, 32, 11, 11, 24, 3, 3, fm_conv2d_sym(1, 0), 0},  /* unpadded, 9x9 out */
        {1, 16, 20, 15, 16, 3, 3, {1, 1, 1, 0, 2, 1, 1}, 1}, /* asymmetric padding */
        {1, 19, 18, 18, 21, 3, 3, {1, 1, 2, 2, 0, 0, 1}, 1}, /* top-left only */
        {2, 128, 20, 20, 128, 3, 3, fm_conv2d_sym(1, 1), 1}, /* passes of 128 blocks */
        {3, 64, 37, 37, 64, 3, 3, fm_conv2d_sym(1, 1), 1},  /* dlib-like, passes mid-row */
        {8, 32, 5, 7, 40, 3, 3, fm_conv2d_sym(1, 1), 1},    /* 1 block row per image */
    };
    for (int on = 1; on >= 0; on--) {
        fm_nn_set_winograd(on);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_conv_case(&cases[i]);
    }
    fm_nn_set_winograd(1);

    /* The two paths ran: same inputs, results equal within rounding but not bit for bit
     * (a Winograd that fell back to im2col would give the same bits). */
    fm_error e = {0};
    const fm_conv2d_params p = fm_conv2d_sym(1, 1);
    fm_tensor x = fm_test_tensor(&rng, 2, 32, 12, 12), w = fm_test_tensor(&rng, 32, 32, 3, 3);
    fm_tensor y[2] = {fm_test_tensor(&rng, 2, 32, 12, 12), fm_test_tensor(&rng, 2, 32, 12, 12)};
    for (int on = 1; on >= 0; on--) {
        fm_nn_set_winograd(on);
        fm_arena *m = NULL, *a = NULL;
        fm_tensor xm = x, wm = w, ym = y[on];
        xm.data = wm.data = ym.data = NULL;
        CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
        CHECK(fm_nn_conv2d(m, &xm, &wm, NULL, &p, &ym, &e) == FM_OK);
        CHECK(fm_arena_new(fm_arena_high_water(m), &a, &e) == FM_OK);
        CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &y[on], &e) == FM_OK);
        fm_arena_destroy(&m);
        fm_arena_destroy(&a);
    }
    fm_nn_set_winograd(1);
    size_t count = fm_tensor_count(&y[0]), differ = 0;
    double max_abs = 0.0, max_diff = 0.0;
    for (size_t i = 0; i < count; i++) {
        differ += y[0].data[i] != y[1].data[i];
        max_abs = fmax(max_abs, fabs(y[0].data[i]));
        max_diff = fmax(max_diff, fabs(y[0].data[i] - y[1].data[i]));
    }
    CHECK_MSG(differ > 0, "Winograd and im2col gave the same bits: one path did not run");
    CHECK_MSG(max_diff <= TOL * max_abs, "Winograd vs im2col: %g of %g", max_diff, max_abs);
    fm_test_tensor_free(&x);
    fm_test_tensor_free(&w);
    fm_test_tensor_free(&y[0]);
    fm_test_tensor_free(&y[1]);

    /* The transforms' vector kernels (AVX2, AVX-512) give the portable loops' bits on
     * every padded shape above (each was checked against the reference with the best
     * set; unpadded ones go to the direct kernel where there is one). The products
     * through cblas_sgemm on every set here, so that only the transforms differ. */
    const fm_nn_isa best = fm_nn_isa_best();
    int sets = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conv_case *k = &cases[i];
        if (!k->p.pad_top && !k->p.pad_left && !k->p.pad_bottom && !k->p.pad_right)
            continue;
        fm_tensor xi = fm_test_tensor(&rng, k->n, k->c, k->h, k->w);
        fm_tensor wi = fm_test_tensor(&rng, k->co, k->c, 3, 3);
        fm_tensor bi = fm_test_tensor(&rng, 1, k->co, 1, 1), shape = {0};
        CHECK(fm_nn_conv2d_shape(&xi, &wi, &k->p, &shape, &e) == FM_OK);
        fm_tensor yi[FM_NN_ISA_AVX512 + 1];
        sets = 0;
        fm_nn_set_own_gemm(0);
        for (int isa = FM_NN_ISA_BASE; isa <= (int)best; isa++, sets++) {
            fm_nn_set_isa((fm_nn_isa)isa);
            yi[isa] = fm_test_tensor(&rng, shape.n, shape.c, shape.h, shape.w);
            conv_measured(&xi, &wi, k->bias ? &bi : NULL, NULL, &k->p, &yi[isa]);
            CHECK_MSG(memcmp(yi[isa].data, yi[0].data,
                             fm_tensor_count(&yi[0]) * sizeof(float)) == 0,
                      "Winograd case %zu: %s does not give the portable path's bits", i,
                      fm_nn_isa_name((fm_nn_isa)isa));
        }
        fm_nn_set_isa(best);
        fm_nn_set_own_gemm(1);
        for (int j = 0; j < sets; j++)
            fm_test_tensor_free(&yi[j]);
        fm_test_tensor_free(&xi);
        fm_test_tensor_free(&wi);
        fm_test_tensor_free(&bi);
    }
    fprintf(stderr, "test_nn: Winograd F(2x2, 3x3) through sgemm, %d instruction sets: the "
            "same bits\n", sets);
}

/* One image of x (n images) as its own tensor, sharing x's data. */
static fm_tensor image_of(const fm_tensor *x, int img)
{
    fm_tensor t = fm_tensor_make(1, x->c, x->h, x->w, NULL);
    t.data = x->data + (size_t)img * x->c * x->h * x->w;
    return t;
}

/* The engine's own matrix product (fm_nn_set_own_gemm), through every convolution
 * path that multiplies: Winograd, 1x1, im2col in tiles (k above one block of 256, so
 * the sums continue across blocks), gathered across images; row and column counts
 * that leave partial tiles of both instruction sets (8 x 32 and 6 x 16). Each against
 * the double reference on each set; AVX2 and AVX-512 the same bits; cblas_sgemm
 * (fm_nn_set_own_gemm(0)) within rounding; and each image's output the same bits
 * whether it is multiplied alone or with others (every column is summed alone). */
static void test_conv_own_gemm(void)
{
    const conv_case cases[] = {
        {3, 17, 17, 21, 20, 3, 3, fm_conv2d_sym(1, 1), 1},  /* Winograd, m 20 */
        {2, 64, 21, 19, 37, 3, 3, fm_conv2d_sym(1, 1), 1},  /* Winograd, wide passes */
        {3, 13, 17, 17, 11, 1, 1, fm_conv2d_sym(1, 0), 1},  /* 1x1 direct, n 289 */
        {2, 40, 23, 21, 9, 3, 3, fm_conv2d_sym(2, 1), 1},   /* im2col, k 360 */
        {1, 64, 30, 29, 5, 3, 3, {1, 2, 1, 0, 1, 2, 1}, 0}, /* im2col, k 576 */
        {5, 64, 9, 9, 13, 3, 3, {2, 2, 1, 0, 0, 1, 1}, 1},  /* gathered */
        {3, 3, 45, 45, 7, 7, 7, fm_conv2d_sym(2, 3), 1},    /* a stem, k 147 */
    };
    const fm_nn_isa best = fm_nn_isa_best();
    CHECK(fm_nn_set_own_gemm(1) == 1); /* on by default */
    CHECK(fm_nn_own_gemm_active() == (best >= FM_NN_ISA_AVX2));
    fm_nn_set_own_gemm(0);
    CHECK(fm_nn_own_gemm_active() == 0);
    fm_nn_set_own_gemm(1);
    fm_nn_set_isa(FM_NN_ISA_BASE);
    CHECK(fm_nn_own_gemm_active() == 0);
    fm_nn_set_isa(best);
    for (int isa = FM_NN_ISA_BASE; isa <= (int)best; isa++) {
        fm_nn_set_isa((fm_nn_isa)isa);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_conv_case(&cases[i]);
    }
    fm_nn_set_isa(best);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conv_case *k = &cases[i];
        fm_tensor x = fm_test_tensor(&rng, k->n, k->c, k->h, k->w);
        fm_tensor w = fm_test_tensor(&rng, k->co, k->c / k->p.groups, k->kh, k->kw);
        fm_tensor b = fm_test_tensor(&rng, 1, 1, 1, k->co);
        fm_tensor shape = {0};
        fm_error e = {0};
        CHECK(fm_nn_conv2d_shape(&x, &w, &k->p, &shape, &e) == FM_OK);
        /* [0] own on the best set, [1] own on AVX2, [2] cblas_sgemm, [3] image by image */
        fm_tensor y[4];
        for (int r = 0; r < 4; r++)
            y[r] = fm_test_tensor(&rng, shape.n, shape.c, shape.h, shape.w);
        conv_measured(&x, &w, &b, NULL, &k->p, &y[0]);
        if (best >= FM_NN_ISA_AVX2) {
            fm_nn_set_isa(FM_NN_ISA_AVX2);
            conv_measured(&x, &w, &b, NULL, &k->p, &y[1]);
            fm_nn_set_isa(best);
        } else {
            memcpy(y[1].data, y[0].data, sizeof(float) * fm_tensor_count(&y[0]));
        }
        fm_nn_set_own_gemm(0);
        conv_measured(&x, &w, &b, NULL, &k->p, &y[2]);
        fm_nn_set_own_gemm(1);
        for (int img = 0; img < k->n; img++) {
            fm_tensor xi = image_of(&x, img), yi = image_of(&y[3], img);
            conv_measured(&xi, &w, &b, NULL, &k->p, &yi);
        }
        const size_t count = fm_tensor_count(&y[0]);
        size_t sets = 0, alone = 0;
        double max_abs = 0.0, max_diff = 0.0;
        for (size_t q = 0; q < count; q++) {
            sets += memcmp(&y[0].data[q], &y[1].data[q], sizeof(float)) != 0;
            alone += memcmp(&y[0].data[q], &y[3].data[q], sizeof(float)) != 0;
            max_abs = fmax(max_abs, fabs(y[2].data[q]));
            max_diff = fmax(max_diff, fabs(y[0].data[q] - y[2].data[q]));
        }
        CHECK_MSG(sets == 0, "own gemm case %zu: AVX2 and AVX-512 differ in %zu of %zu", i,
                  sets, count);
        CHECK_MSG(alone == 0, "own gemm case %zu: %zu of %zu outputs change when the images "
                  "are multiplied one by one", i, alone, count);
        CHECK_MSG(max_diff <= 1e-5 * fmax(max_abs, 1.0),
                  "own gemm case %zu: %g from cblas_sgemm's (largest %g)", i, max_diff,
                  max_abs);
        for (int r = 0; r < 4; r++)
            fm_test_tensor_free(&y[r]);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&w);
        fm_test_tensor_free(&b);
    }
    fprintf(stderr, "test_nn: the engine's own matrix product (%zu shapes), up to %s: within "
            "rounding of the reference and of cblas_sgemm, the same bits on avx2+fma and "
            "avx512 and for an image alone\n", sizeof cases / sizeof cases[0],
            fm_nn_isa_name(best));
}

/* Stride-2 convolutions on few channels through space to depth and the direct kernel
 * (the dlib ResNet's 7x7/2 stem): against the double reference (run_conv_case: every
 * output, the arena measured exactly), and with the portable set (im2col + sgemm)
 * within rounding but not the same bits, so the split path is what ran; fused with
 * PReLU, against the reference too. Shapes: the stem with and without padding, odd
 * sizes, asymmetric padding, even and odd kernels, 1 to 4 channels, several images. */
static void test_conv_s2d(void)
{
    const conv_case cases[] = {
        {1, 3, 150, 150, 32, 7, 7, fm_conv2d_sym(2, 0), 1}, /* the stem: 72x72 */
        {2, 3, 61, 47, 32, 7, 7, fm_conv2d_sym(2, 3), 1},   /* padded, odd, 2 images */
        {1, 3, 52, 57, 16, 7, 7, {2, 2, 3, 2, 1, 0, 1}, 0}, /* asymmetric padding */
        {1, 4, 40, 70, 8, 5, 5, {2, 2, 1, 2, 2, 1, 1}, 1},  /* 5x5 on 4 channels */
        {1, 1, 36, 66, 10, 4, 4, fm_conv2d_sym(2, 1), 1},   /* an even kernel, 1 channel */
        {3, 2, 34, 35, 24, 3, 3, fm_conv2d_sym(2, 1), 0},   /* 3x3/2, 3 images */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_conv_case(&cases[i]);
    const fm_nn_isa best = fm_nn_isa_best();
    if (best < FM_NN_ISA_AVX2)
        return; /* no direct kernel: im2col ran, checked above */
    fm_error e = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conv_case *k = &cases[i];
        fm_tensor x = fm_test_tensor(&rng, k->n, k->c, k->h, k->w);
        fm_tensor w = fm_test_tensor(&rng, k->co, k->c, k->kh, k->kw);
        fm_tensor b = fm_test_tensor(&rng, 1, k->co, 1, 1);
        fm_tensor sl = fm_test_tensor(&rng, 1, k->co, 1, 1), shape = {0};
        CHECK(fm_nn_conv2d_shape(&x, &w, &k->p, &shape, &e) == FM_OK);
        fm_tensor y[3];
        /* 0: portable, 1: best, 2: best fused with PReLU */
        for (int run = 0; run < 3; run++) {
            fm_nn_set_isa(run ? best : FM_NN_ISA_BASE);
            const fm_tensor *slope = run == 2 ? &sl : NULL;
            y[run] = fm_test_tensor(&rng, shape.n, shape.c, shape.h, shape.w);
            conv_measured(&x, &w, &b, slope, &k->p, &y[run]);
        }
        fm_nn_set_isa(best);
        const size_t count = fm_tensor_count(&y[0]), plane = (size_t)shape.h * shape.w;
        double *r = ref_new(count);
        ref_conv(&x, &w, &b, &k->p, shape.h, shape.w, r);
        CHECK_MSG(rel_err(y[1].data, r, count) <= TOL, "s2d case %zu: %g", i,
                  rel_err(y[1].data, r, count));
        size_t differ = 0;
        for (size_t j = 0; j < count; j++) {
            differ += y[0].data[j] != y[1].data[j];
            if (!(r[j] > 0))
                r[j] *= sl.data[(j / plane) % (size_t)k->co];
        }
        CHECK_MSG(differ > 0, "s2d case %zu: the same bits as im2col + sgemm (did it run?)", i);
        CHECK_MSG(rel_err(y[2].data, r, count) <= TOL, "s2d case %zu with PReLU: %g", i,
                  rel_err(y[2].data, r, count));
        free(r);
        for (int run = 0; run < 3; run++)
            fm_test_tensor_free(&y[run]);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&w);
        fm_test_tensor_free(&b);
        fm_test_tensor_free(&sl);
    }
    fprintf(stderr, "test_nn: stride-2 convolutions through space to depth, %s: within %g "
            "of the reference\n", fm_nn_isa_name(best), TOL);
}

/* The operands of a conv + bias + PReLU case: input x [n, c, h, w], weights [co, c, k,
 * k], bias and slope (variant 0: per-channel slope and bias; 1: one shared slope, no
 * bias; 2: no slope; *bias and *slope point at b and sl or are NULL). */
static void prelu_operands(int n, int c, int h, int w, int co, int k, int variant,
                           fm_tensor *x, fm_tensor *wt, fm_tensor *b, fm_tensor *sl,
                           const fm_tensor **bias, const fm_tensor **slope)
{
    *x = fm_test_tensor(&rng, n, c, h, w);
    *wt = fm_test_tensor(&rng, co, c, k, k);
    *b = fm_test_tensor(&rng, 1, co, 1, 1);
    *sl = fm_test_tensor(&rng, variant == 1 ? 1 : co, 1, 1, 1);
    *bias = variant == 1 ? NULL : b;
    *slope = variant == 2 ? NULL : sl;
}

/* The double reference of conv (valid, stride 1) + bias + PReLU (slope may be NULL:
 * none; one element: shared), oh x ow outputs per channel; free() the result. */
static double *ref_conv_prelu(const fm_tensor *x, const fm_tensor *wt, const fm_tensor *bias,
                              const fm_tensor *slope, int oh, int ow)
{
    const fm_conv2d_params p = fm_conv2d_sym(1, 0);
    const int co = wt->n;
    const size_t plane = (size_t)oh * ow, count = (size_t)x->n * co * plane;
    double *r = ref_new(count);
    ref_conv(x, wt, bias, &p, oh, ow, r);
    for (size_t j = 0; slope && j < count; j++) {
        int ch = (int)((j / plane) % (size_t)co);
        if (!(r[j] > 0))
            r[j] *= slope->data[fm_tensor_count(slope) == 1 ? 0 : ch];
    }
    return r;
}

/* fm_nn_conv2d_prelu(x, wt, bias, slope) into y (valid, stride 1) in an arena of the
 * size a measuring pass asks for, as the detector runs it. */
static void conv_prelu_measured(const fm_tensor *x, const fm_tensor *wt,
                                const fm_tensor *bias, const fm_tensor *slope, fm_tensor *y)
{
    const fm_conv2d_params p = fm_conv2d_sym(1, 0);
    conv_measured(x, wt, bias, slope, &p, y);
}

/* Frees what prelu_operands made, the reference r and the outputs y[0..runs). */
static void prelu_case_free(fm_tensor *x, fm_tensor *wt, fm_tensor *b, fm_tensor *sl,
                            double *r, fm_tensor *y, int runs)
{
    free(r);
    fm_test_tensor_free(x);
    fm_test_tensor_free(wt);
    fm_test_tensor_free(b);
    fm_test_tensor_free(sl);
    for (int j = 0; j < runs; j++)
        fm_test_tensor_free(&y[j]);
}

/* conv + bias + PReLU (fm_nn_conv2d_prelu) and plain conv2d against the double
 * reference, under every instruction set this CPU has: the direct kernel's shapes
 * (P-Net's layers, R-Net's and O-Net's first, odd widths and channel counts, tails of
 * 1..15 columns and 1..3 channels), and shapes it leaves to im2col + sgemm. */
static void test_conv_prelu(void)
{
    static const struct {
        int n, c, h, w, co, k;
    } cases[] = {
        {1, 3, 22, 40, 10, 3},  /* P-Net conv1 strip */
        {1, 10, 19, 31, 16, 3}, /* P-Net conv2 */
        {1, 16, 17, 29, 32, 3}, /* P-Net conv3 */
        {1, 32, 15, 27, 2, 1},  /* P-Net heads */
        {3, 3, 24, 24, 28, 3},  /* R-Net conv1 */
        {2, 3, 48, 48, 32, 3},  /* O-Net conv1 */
        {2, 5, 9, 18, 7, 3},    /* one column past a tile, 3 channels in the last tile */
        {1, 7, 5, 33, 5, 2},    /* 2x2, a 1-channel last tile */
        {1, 3, 6, 47, 9, 5},    /* generic kernel width */
        {1, 17, 6, 21, 13, 1},
        {1, 2, 3, 16, 3, 1},    /* exactly one tile */
        {1, 3, 50, 150, 10, 3}, /* a plane too large to run flat: row by row, tails */
        {2, 28, 11, 11, 48, 3}, /* R-Net conv2: narrow, sgemm */
        {1, 32, 23, 23, 64, 3}, /* O-Net conv2: K 288, sgemm */
    };
    fm_nn_isa best = fm_nn_isa_best();
    for (int isa = 0; isa <= (int)best; isa++) {
        CHECK(fm_nn_set_isa((fm_nn_isa)isa) == (fm_nn_isa)isa);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            for (int variant = 0; variant < 3; variant++) {
                /* 0: per-channel slope and bias; 1: shared slope, no bias; 2: no slope */
                fm_error e = {0};
                const int n = cases[i].n, c = cases[i].c, h = cases[i].h, w = cases[i].w;
                const int co = cases[i].co, k = cases[i].k;
                const int oh = h - k + 1, ow = w - k + 1;
                fm_tensor x, wt, b, sl;
                const fm_tensor *bias, *slope;
                prelu_operands(n, c, h, w, co, k, variant, &x, &wt, &b, &sl, &bias, &slope);
                fm_tensor y = fm_test_tensor(&rng, n, co, oh, ow);
                fm_conv2d_params p = fm_conv2d_sym(1, 0);

                fm_arena *m = NULL, *a = NULL;
                CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
                fm_tensor xm = x, wm = wt, ym = y;
                xm.data = wm.data = ym.data = NULL;
                CHECK(fm_nn_conv2d_prelu(m, &xm, &wm, NULL, NULL, &p, &ym, &e) == FM_OK);
                size_t need = fm_arena_high_water(m);
                fm_arena_destroy(&m);
                CHECK(fm_arena_new(need, &a, &e) == FM_OK);
                fm_status st = fm_nn_conv2d_prelu(a, &x, &wt, bias, slope, &p, &y, &e);
                CHECK_MSG(st == FM_OK, "conv2d_prelu: %s", e.msg);

                size_t count = fm_tensor_count(&y);
                double *r = ref_conv_prelu(&x, &wt, bias, slope, oh, ow);
                double err = rel_err(y.data, r, count);
                CHECK_MSG(err <= TOL, "conv2d_prelu %s n%d c%d %dx%d -> co%d k%d v%d: %g",
                          fm_nn_isa_name((fm_nn_isa)isa), n, c, h, w, co, k, variant, err);
                if (variant == 2) { /* plain conv2d takes the same paths */
                    CHECK(fm_nn_conv2d(a, &x, &wt, bias, &p, &y, &e) == FM_OK);
                    CHECK(rel_err(y.data, r, count) <= TOL);
                }
                CHECK(fm_arena_used(a) == 0);
                fm_arena_destroy(&a);
                free(r);
                fm_test_tensor_free(&x);
                fm_test_tensor_free(&wt);
                fm_test_tensor_free(&b);
                fm_test_tensor_free(&sl);
                fm_test_tensor_free(&y);
            }
        }
    }
    fm_nn_set_isa(best);

    /* a slope that fits neither one nor every output channel */
    fm_error e = {0};
    fm_tensor x = fm_test_tensor(&rng, 1, 3, 5, 20), wt = fm_test_tensor(&rng, 4, 3, 3, 3);
    fm_tensor sl = fm_test_tensor(&rng, 3, 1, 1, 1), y = fm_test_tensor(&rng, 1, 4, 3, 18);
    fm_conv2d_params p = fm_conv2d_sym(1, 0);
    CHECK(fm_nn_conv2d_prelu(NULL, &x, &wt, NULL, &sl, &p, &y, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d_prelu: slope") != NULL);
    fm_test_tensor_free(&x);
    fm_test_tensor_free(&wt);
    fm_test_tensor_free(&sl);
    fm_test_tensor_free(&y);
}

/* The direct kernel's position tiles (small planes, at least 16 output channels and 64
 * multiply-adds per output) against its column tiles, and each instruction set's
 * kernels (AVX2, AVX-512) against the others: the same bits, and all against the
 * double reference. Shapes: R-Net's conv2 and conv3, O-Net's conv2, conv3 and conv4
 * (the last of each: 2x2 kernels, 3x3 outputs, which without position tiles go to
 * im2col + sgemm: there the position tiles' runs are compared with each other), small
 * P-Net levels, chunks of several images with a last tile cut short, channel counts
 * that are not a multiple of 16 or 32 (17, 20, 36, 40, 48, 80: partly empty tiles),
 * 1x1 and 2x2 kernels; and planes that only column tiles run (too few channels or
 * multiply-adds), with tails of every length against 16- and 32-column tiles. */
static void test_conv_positions(void)
{
    static const struct {
        int n, c, h, w, co, k;
    } cases[] = {
        {5, 28, 11, 11, 48, 3}, /* R-Net conv2: a chunk per image */
        {3, 32, 23, 23, 64, 3}, /* O-Net conv2 */
        {4, 64, 10, 10, 64, 3}, /* O-Net conv3 */
        {1, 10, 9, 30, 16, 3},  /* a small P-Net level's conv2 */
        {1, 16, 7, 28, 32, 3},  /* ... and conv3 */
        {7, 16, 6, 7, 20, 3},   /* chunks of many tiny images, 20 channels */
        {3, 70, 3, 19, 17, 1},  /* 1x1, 17 channels: one in the second tile */
        {2, 24, 4, 20, 40, 3},  /* 40 channels: a half tile */
        {3, 16, 7, 7, 36, 3},   /* 36 channels: 3 vectors of 16, 12 empty */
        {2, 20, 8, 8, 80, 3},   /* 80 channels: a tile of 64, then 16 in a tile */
        {7, 48, 4, 4, 64, 2},   /* R-Net conv3: 3x3 outputs (im2col + sgemm when off) */
        {3, 64, 4, 4, 128, 2},  /* O-Net conv4 */
        {1, 3, 22, 40, 10, 3},  /* P-Net conv1 strip */
        {1, 3, 50, 150, 10, 3}, /* row by row: 148 columns, tails of 4 and 20 */
        {2, 5, 9, 18, 7, 3},    /* flat, 3 channels in the last tile */
        {1, 7, 5, 33, 5, 2},    /* 2x2, a 1-channel last tile */
        {1, 3, 6, 47, 9, 5},    /* generic kernel width */
        {3, 3, 24, 24, 28, 3},  /* R-Net conv1 */
        {1, 5, 13, 45, 24, 3},  /* 24 channels, K 45: 8-channel column tiles */
    };
    const fm_nn_isa best = fm_nn_isa_best();
    if (best < FM_NN_ISA_AVX2)
        return; /* no direct kernel: nothing to compare */
    enum { RUNS = 2 * (FM_NN_ISA_AVX512 - FM_NN_ISA_AVX2 + 1) };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int variant = 0; variant < 3; variant++) {
            /* 0: per-channel slope and bias; 1: shared slope, no bias; 2: no slope */
            const int n = cases[i].n, c = cases[i].c, h = cases[i].h, w = cases[i].w;
            const int co = cases[i].co, k = cases[i].k;
            const int oh = h - k + 1, ow = w - k + 1;
            fm_tensor x, wt, b, sl;
            const fm_tensor *bias, *slope;
            prelu_operands(n, c, h, w, co, k, variant, &x, &wt, &b, &sl, &bias, &slope);
            fm_tensor y[RUNS];
            double *r = ref_conv_prelu(&x, &wt, bias, slope, oh, ow);
            int runs = 0; /* run 2 i + on: ISA AVX2 + i, position tiles on or off */
            for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
                fm_nn_set_isa((fm_nn_isa)isa);
                for (int on = 0; on < 2; on++, runs++) {
                    fm_nn_set_position_tiles(on);
                    y[runs] = fm_test_tensor(&rng, n, co, oh, ow);
                    conv_prelu_measured(&x, &wt, bias, slope, &y[runs]);
                    size_t count = fm_tensor_count(&y[runs]);
                    /* Planes too narrow for column tiles go to im2col + sgemm with the
                     * position tiles off, whose order of sums is OpenBLAS's: then the
                     * position tiles' runs are compared with each other only. */
                    const int sgemm_off = ow < 16 && (oh - 1) * w + ow < 16;
                    const int base = sgemm_off ? on : 0;
                    CHECK_MSG(memcmp(y[base].data, y[runs].data, count * sizeof(float)) == 0,
                              "%s, position tiles %s, n%d c%d %dx%d -> co%d k%d v%d: not the "
                              "same bits as avx2+fma %s", fm_nn_isa_name((fm_nn_isa)isa),
                              on ? "on" : "off", n, c, h, w, co, k, variant,
                              base ? "in position tiles" : "in column tiles");
                    double err = rel_err(y[runs].data, r, count);
                    CHECK_MSG(err <= TOL, "%s, position tiles %s, n%d c%d %dx%d -> co%d k%d "
                              "v%d: %g", fm_nn_isa_name((fm_nn_isa)isa), on ? "on" : "off",
                              n, c, h, w, co, k, variant, err);
                }
            }
            fm_nn_set_position_tiles(1);
            fm_nn_set_isa(best);
            prelu_case_free(&x, &wt, &b, &sl, r, y, runs);
        }
    }
    fprintf(stderr, "test_nn: direct convolution, column and position tiles, %s%s: the same "
            "bits\n", fm_nn_isa_name(FM_NN_ISA_AVX2),
            best >= FM_NN_ISA_AVX512 ? " and avx512" : " (this CPU has no AVX-512)");
}

/* Position tiles over a zero-bordered copy of the input: padded and stride-2
 * convolutions with small output planes and no Winograd (the dlib ResNet's 128- and
 * 256-channel layers and its stride-2 layers), each against the double reference, with
 * a shared PReLU slope and without. AVX2 and AVX-512 give the same bits; so do weights
 * declared unchanging (fm_nn_const_declare: packed once and kept where the panels take
 * 256 KB or more, which the count of kept bytes shows happened, and only there) and
 * weights packed on every call; weights changed between a fm_nn_const_forget and a new
 * declaration are used as they are then (nothing stale is kept); im2col + sgemm
 * (position tiles off) agrees within rounding. Shapes: the network's, at one face and
 * at several (the chunk of a batch with large weights, its last tile short), a 2x1
 * input whose border most taps read, stride 2 with unread last rows and
 * columns, asymmetric padding, stride 2 with padding, 17, 40 and 48 output channels
 * (partly empty tiles); layers with one output a channel at one to three faces, whose
 * weights are kept transposed for the few-column product (a 1x1 input: its centre
 * taps alone), the same bits as the product of every tap. */
static void test_conv_bordered(void)
{
    static const struct {
        int n, c, h, w, co, s, pt, pl, pb, pr;
    } cases[] = {
        {1, 128, 8, 8, 128, 1, 1, 1, 1, 1}, /* 128@8 */
        {1, 256, 4, 4, 256, 1, 1, 1, 1, 1}, /* 256@4 */
        {1, 256, 3, 3, 256, 1, 1, 1, 1, 1}, /* 256@3 */
        {1, 256, 2, 1, 256, 1, 1, 1, 1, 1}, /* 2x1: most taps read the border */
        {1, 128, 8, 8, 256, 2, 0, 0, 0, 0}, /* stride 2: row and column 7 unread */
        {1, 256, 5, 4, 256, 2, 0, 0, 0, 0}, /* two outputs, row 4 and column 3 unread */
        {1, 256, 1, 1, 256, 1, 1, 1, 1, 1}, /* one output: its centre taps kept transposed */
        {3, 64, 1, 1, 40, 1, 1, 1, 1, 1},   /* three faces of one output, 40 channels */
        {2, 96, 3, 3, 72, 2, 0, 0, 0, 0},   /* one output of nine taps, two faces */
        {2, 32, 35, 35, 64, 2, 0, 0, 0, 0}, /* the 32 -> 64 stride-2 layer, 289 outputs */
        {5, 256, 4, 4, 48, 1, 1, 1, 1, 1},  /* five faces in one chunk, 48 channels */
        {3, 20, 9, 7, 40, 1, 0, 2, 1, 0},   /* asymmetric padding, 40 channels */
        {2, 24, 9, 9, 17, 2, 1, 1, 1, 1},   /* stride 2 and padding, 17 channels */
    };
    const fm_nn_isa best = fm_nn_isa_best();
    if (best < FM_NN_ISA_AVX2)
        return; /* no direct kernel */
    const size_t kept0 = fm_nn_const_kept_bytes();
    int kept_runs = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int variant = 0; variant < 2; variant++) {
            const int n = cases[i].n, c = cases[i].c, co = cases[i].co;
            fm_conv2d_params p = {cases[i].s, cases[i].s, cases[i].pt, cases[i].pl,
                                  cases[i].pb, cases[i].pr, 1};
            const int oh = (cases[i].h + p.pad_top + p.pad_bottom - 3) / p.stride_h + 1;
            const int ow = (cases[i].w + p.pad_left + p.pad_right - 3) / p.stride_w + 1;
            fm_tensor x = fm_test_tensor(&rng, n, c, cases[i].h, cases[i].w);
            fm_tensor wt = fm_test_tensor(&rng, co, c, 3, 3);
            fm_tensor b = fm_test_tensor(&rng, 1, co, 1, 1);
            fm_tensor sl = fm_test_tensor(&rng, 1, 1, 1, 1);
            const fm_tensor *slope = variant ? &sl : NULL;
            const size_t count = (size_t)n * co * oh * ow;
            const size_t wbytes = fm_tensor_count(&wt) * sizeof(float);
            double *r = ref_new(count);
            ref_conv(&x, &wt, &b, &p, oh, ow, r);
            for (size_t j = 0; j < count && slope; j++)
                r[j] = r[j] > 0 ? r[j] : r[j] * sl.data[0];
            char what[96];
            snprintf(what, sizeof what, "n%d c%d %dx%d -> co%d s%d pad t%d l%d b%d r%d v%d", n,
                     c, cases[i].h, cases[i].w, co, p.stride_h, p.pad_top, p.pad_left,
                     p.pad_bottom, p.pad_right, variant);
            fm_tensor first = {0};
            for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
                fm_nn_set_isa((fm_nn_isa)isa);
                for (int keep = 0; keep < 2; keep++) {
                    fm_tensor y = fm_test_tensor(&rng, n, co, oh, ow);
                    if (keep)
                        CHECK(fm_nn_const_declare(wt.data, wbytes) == 0);
                    const size_t before = fm_nn_const_kept_bytes();
                    conv_measured(&x, &wt, &b, slope, &p, &y);
                    if (keep) {
                        /* packed panels of 256 KB and more are kept (nn_direct.c,
                         * PT_KEEP_MIN_BYTES); smaller ones are packed per call */
                        const int tile = isa >= FM_NN_ISA_AVX512 ? 32 : 16;
                        const size_t panels = (size_t)(co + tile - 1) / tile * tile * c * 9 *
                                              sizeof(float);
                        const int kept = fm_nn_const_kept_bytes() > before;
                        /* one output pixel for at most four faces: the weights kept
                         * transposed for the few-column product (nn_gemm_skinny) */
                        const int skinny = oh * ow == 1 && n <= 4;
                        CHECK_MSG(kept == (skinny || (panels >= 256 * 1024 && oh * ow > 1)),
                                  "%s, %s: %zu bytes of panels %s", what,
                                  fm_nn_isa_name((fm_nn_isa)isa), panels,
                                  kept ? "kept" : "not kept");
                        kept_runs += kept;
                        fm_nn_const_forget(wt.data);
                        CHECK(fm_nn_const_kept_bytes() == kept0);
                    } else {
                        CHECK(fm_nn_const_kept_bytes() == before);
                    }
                    double err = rel_err(y.data, r, count);
                    CHECK_MSG(err <= TOL, "%s, %s, kept %d: %g", what,
                              fm_nn_isa_name((fm_nn_isa)isa), keep, err);
                    if (!first.data) {
                        first = y;
                        continue;
                    }
                    CHECK_MSG(memcmp(first.data, y.data, count * sizeof(float)) == 0,
                              "%s, %s, kept %d: not the same bits as avx2+fma packed per call",
                              what, fm_nn_isa_name((fm_nn_isa)isa), keep);
                    fm_test_tensor_free(&y);
                }
            }
            /* one declaration across the instruction sets, which pack differently */
            CHECK(fm_nn_const_declare(wt.data, wbytes) == 0);
            for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
                fm_nn_set_isa((fm_nn_isa)isa);
                fm_tensor y = fm_test_tensor(&rng, n, co, oh, ow);
                conv_measured(&x, &wt, &b, slope, &p, &y);
                CHECK_MSG(memcmp(first.data, y.data, count * sizeof(float)) == 0,
                          "%s, %s after another set under one declaration: not the same "
                          "bits", what, fm_nn_isa_name((fm_nn_isa)isa));
                fm_test_tensor_free(&y);
            }
            fm_nn_const_forget(wt.data);
            fm_nn_set_isa(best);
            /* sgemm: within rounding */
            fm_nn_set_position_tiles(0);
            fm_tensor y = fm_test_tensor(&rng, n, co, oh, ow);
            conv_measured(&x, &wt, &b, slope, &p, &y);
            fm_nn_set_position_tiles(1);
            double err = rel_err(y.data, r, count);
            CHECK_MSG(err <= TOL, "%s, position tiles off: %g", what, err);
            fm_test_tensor_free(&y);
            /* new weights at the same address after a new declaration */
            if (variant == 0 && i == 0) {
                CHECK(fm_nn_const_declare(wt.data, wbytes) == 0);
                y = fm_test_tensor(&rng, n, co, oh, ow);
                conv_measured(&x, &wt, &b, NULL, &p, &y);
                fm_nn_const_forget(wt.data);
                for (size_t j = 0; j < fm_tensor_count(&wt); j++)
                    wt.data[j] = -wt.data[j];
                CHECK(fm_nn_const_declare(wt.data, wbytes) == 0);
                conv_measured(&x, &wt, &b, NULL, &p, &y);
                fm_nn_const_forget(wt.data);
                ref_conv(&x, &wt, &b, &p, oh, ow, r);
                err = rel_err(y.data, r, count);
                CHECK_MSG(err <= TOL, "%s: weights changed between declarations: %g", what,
                          err);
                fm_test_tensor_free(&y);
            }
            fm_test_tensor_free(&first);
            fm_test_tensor_free(&x);
            fm_test_tensor_free(&wt);
            fm_test_tensor_free(&b);
            fm_test_tensor_free(&sl);
            free(r);
        }
    }
    CHECK(fm_nn_const_kept_bytes() == kept0);
    CHECK(kept_runs >= 8); /* the dlib ResNet's shapes, both sets */
    CHECK(fm_nn_const_declare(NULL, 16) == -1);
    fm_nn_const_forget(NULL); /* nothing declared there: nothing happens */
    fprintf(stderr, "test_nn: padded and strided convolutions in position tiles, %s%s, "
            "weights kept and packed per call: the same bits\n",
            fm_nn_isa_name(FM_NN_ISA_AVX2),
            best >= FM_NN_ISA_AVX512 ? " and avx512" : " (this CPU has no AVX-512)");
}

/* Winograd's transformed weights kept for weights declared unchanging
 * (fm_nn_const_declare): F(2x2, 3x3) through sgemm (the dlib ResNet's 32- and
 * 64-channel layers; not for 128 channels, 1 MB of them) and the direct kernel's F(2x2,
 * 3x3) and F(4x4, 3x3) (P-Net's wide layers): the same bits as transformed per call,
 * made once (the kept bytes grow on the first call, not on the second) and freed with
 * the declaration. */
static void test_conv_kept_winograd(void)
{
    static const struct {
        int n, c, h, w, co, pad;
        const char *what;
    } cases[] = {
        {2, 32, 35, 35, 32, 1, "F(2x2) through sgemm"},
        {1, 64, 17, 17, 64, 1, "F(2x2) through sgemm, 64 channels"},
        {8, 128, 8, 8, 128, 1, "F(2x2) through sgemm, 128 channels (not kept)"},
        {1, 16, 20, 40, 32, 0, "direct F(2x2)"},
        {1, 16, 20, 80, 32, 0, "direct F(4x4)"},
    };
    const size_t kept0 = fm_nn_const_kept_bytes();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (i >= 3 && fm_nn_isa_best() < FM_NN_ISA_AVX2)
            break; /* no direct kernel on this CPU */
        const int n = cases[i].n, c = cases[i].c, co = cases[i].co;
        const fm_conv2d_params p = fm_conv2d_sym(1, cases[i].pad);
        const int oh = cases[i].h + 2 * cases[i].pad - 2, ow = cases[i].w + 2 * cases[i].pad - 2;
        fm_tensor x = fm_test_tensor(&rng, n, c, cases[i].h, cases[i].w);
        fm_tensor wt = fm_test_tensor(&rng, co, c, 3, 3);
        fm_tensor b = fm_test_tensor(&rng, 1, co, 1, 1);
        fm_tensor y[3];
        const size_t count = (size_t)n * co * oh * ow;
        size_t grew[3];
        for (int run = 0; run < 3; run++) {
            /* run 0: not declared; 1 and 2: declared */
            if (run == 1)
                CHECK(fm_nn_const_declare(wt.data, fm_tensor_count(&wt) * sizeof(float)) == 0);
            const size_t before = fm_nn_const_kept_bytes();
            y[run] = fm_test_tensor(&rng, n, co, oh, ow);
            conv_measured(&x, &wt, &b, NULL, &p, &y[run]);
            grew[run] = fm_nn_const_kept_bytes() - before;
            CHECK_MSG(memcmp(y[0].data, y[run].data, count * sizeof(float)) == 0,
                      "%s, run %d: not the same bits as transformed per call",
                      cases[i].what, run);
        }
        const int keeps = i != 2; /* all but 128 channels through sgemm */
        CHECK_MSG(grew[0] == 0 && (grew[1] > 0) == keeps && grew[2] == 0,
                  "%s: kept bytes grew by %zu, %zu, %zu", cases[i].what, grew[0], grew[1],
                  grew[2]);
        fm_nn_const_forget(wt.data);
        CHECK(fm_nn_const_kept_bytes() == kept0);
        for (int run = 0; run < 3; run++)
            fm_test_tensor_free(&y[run]);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&wt);
        fm_test_tensor_free(&b);
    }
}

/* The direct kernel's Winograd (wide 3x3 layers: P-Net's conv2 and conv3, 8 to 32
 * input channels, output channels a multiple of 8, at least 32 output columns), as
 * F(4x4, 3x3) (at least 64 output columns and 4 rows) and as F(2x2, 3x3)
 * (fm_nn_set_winograd4(0)), each against the double reference, each instruction set
 * against the others (the same bits), F(4x4) against F(2x2) (other bits where F(4x4)
 * applies, so it ran; the same where it does not) and both against the column tiles
 * they replace (fm_nn_set_winograd(0): within rounding, not the same bits). Shapes: a
 * last block row and column cut off (odd output sizes, rows and columns not a multiple
 * of 4), a single output row, rows that end mid-pass and exactly at a pass's end (64
 * columns: AVX2's F(4x4) pass and AVX-512's F(2x2) pass; 128: AVX-512's F(4x4) pass),
 * 8 to 32 input channels, 8 to 32 output channels, several images. */
static void test_conv_wino_direct(void)
{
    static const struct {
        int n, c, h, w, co;
    } cases[] = {
        {1, 16, 4, 34, 32},   /* 2 x 32 outputs: one block row of 16 blocks */
        {1, 16, 5, 35, 32},   /* 3 x 33: the last block row and column cut off */
        {1, 10, 13, 321, 16}, /* a P-Net conv2 strip: 319 columns, passes and a tail */
        {1, 16, 12, 319, 32}, /* a P-Net conv3 strip */
        {2, 16, 7, 66, 8},    /* two images, 64 columns: a pass ends with the row */
        {1, 8, 6, 99, 24},    /* 8 input channels, 97 columns, 4 rows */
        {1, 32, 3, 40, 16},   /* a single output row */
        {1, 16, 9, 97, 32},   /* 95 columns: a partly filled last vector */
        {1, 16, 11, 130, 16}, /* 128 columns, 9 rows: whole passes, a 1-row block row */
        {1, 8, 42, 131, 8},   /* 129 columns, a P-Net strip's 40 rows */
        {2, 32, 8, 200, 32},  /* 32 channels in and out, 198 columns, 6 rows */
    };
    const fm_nn_isa best = fm_nn_isa_best();
    if (best < FM_NN_ISA_AVX2)
        return; /* no direct kernel */
    /* runs: for F(4x4) then F(2x2), each set from AVX2 on; the last: column tiles */
    enum { SETS = FM_NN_ISA_AVX512 - FM_NN_ISA_AVX2 + 1, RUNS = 2 * SETS + 1 };
    int checked4 = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int variant = 0; variant < 3; variant++) {
            const int n = cases[i].n, c = cases[i].c, h = cases[i].h, w = cases[i].w;
            const int co = cases[i].co, oh = h - 2, ow = w - 2;
            const int four = ow >= 64 && oh >= 4; /* F(4x4) applies */
            fm_tensor x, wt, b, sl;
            const fm_tensor *bias, *slope;
            prelu_operands(n, c, h, w, co, 3, variant, &x, &wt, &b, &sl, &bias, &slope);
            fm_tensor y[RUNS];
            int first[2] = {-1, -1}; /* each algorithm's first run */
            double *r = ref_conv_prelu(&x, &wt, bias, slope, oh, ow);
            int runs = 0;
            for (int alg = 0; alg <= 2; alg++) {          /* F(4x4), F(2x2), tiles */
                for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
                    if (alg == 2 && isa != (int)best)
                        continue;
                    fm_nn_set_isa((fm_nn_isa)isa);
                    fm_nn_set_winograd(alg < 2);
                    fm_nn_set_winograd4(alg == 0);
                    y[runs] = fm_test_tensor(&rng, n, co, oh, ow);
                    conv_prelu_measured(&x, &wt, bias, slope, &y[runs]);
                    const size_t count = fm_tensor_count(&y[runs]);
                    const char *what = alg == 2 ? "column tiles"
                                                : alg == 0 ? "F(4x4)" : "F(2x2)";
                    double err = rel_err(y[runs].data, r, count);
                    CHECK_MSG(err <= TOL, "winograd %s %s, n%d c%d %dx%d -> co%d v%d: %g", what,
                              fm_nn_isa_name((fm_nn_isa)isa), n, c, h, w, co, variant, err);
                    if (alg < 2 && first[alg] < 0)
                        first[alg] = runs;
                    else if (alg < 2)
                        CHECK_MSG(memcmp(y[first[alg]].data, y[runs].data,
                                         count * sizeof(float)) == 0,
                                  "winograd %s %s, n%d c%d %dx%d -> co%d v%d: not the same bits "
                                  "as avx2+fma", what, fm_nn_isa_name((fm_nn_isa)isa), n, c, h,
                                  w, co, variant);
                    size_t differ = 0;
                    if (alg >= 1)
                        for (size_t j = 0; j < count; j++)
                            differ += y[alg == 2 ? first[1] : first[0]].data[j] !=
                                      y[runs].data[j];
                    if (alg == 1 && runs == first[1]) {
                        CHECK_MSG(four ? differ > 0 : differ == 0,
                                  "winograd n%d c%d %dx%d -> co%d v%d: F(4x4) and F(2x2) give "
                                  "%zu different outputs (F(4x4) %s)", n, c, h, w, co, variant,
                                  differ, four ? "applies" : "does not apply");
                        checked4 += four;
                    }
                    if (alg == 2)
                        CHECK_MSG(differ > 0, "winograd n%d c%d %dx%d -> co%d v%d: the same "
                                  "bits as the column tiles (did it run?)", n, c, h, w, co,
                                  variant);
                    runs++;
                }
            }
            fm_nn_set_winograd(1);
            fm_nn_set_winograd4(1);
            fm_nn_set_isa(best);
            prelu_case_free(&x, &wt, &b, &sl, r, y, runs);
        }
    }
    CHECK(checked4 >= 15);
    fprintf(stderr, "test_nn: direct Winograd F(4x4, 3x3) (%d cases) and F(2x2, 3x3), %s%s: "
            "the same bits, within %g of the reference\n", checked4,
            fm_nn_isa_name(FM_NN_ISA_AVX2),
            best >= FM_NN_ISA_AVX512 ? " and avx512" : " (this CPU has no AVX-512)", TOL);
}

/* fm_nn_conv2d_prelu_maxpool: x through conv, bias, PReLU and pool into y in an arena
 * of the measured size (work: the two steps' convolution output, or NULL). */
static fm_status conv_pool_measured(const fm_tensor *x, const fm_tensor *wt,
                                    const fm_tensor *bias, const fm_tensor *slope,
                                    const fm_pool2d_params *pp, fm_tensor *work, fm_tensor *y)
{
    const fm_conv2d_params p = fm_conv2d_sym(1, 0);
    fm_error e = {0};
    fm_arena *m = NULL, *a = NULL;
    fm_tensor xm = *x, wm = *wt, ym = *y, km;
    xm.data = wm.data = ym.data = NULL;
    if (work) {
        km = *work;
        km.data = NULL;
    }
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    CHECK(fm_nn_conv2d_prelu_maxpool(m, &xm, &wm, NULL, NULL, &p, pp, work ? &km : NULL, &ym,
                                     &e) == FM_OK);
    CHECK(fm_arena_new(fm_arena_high_water(m), &a, &e) == FM_OK);
    fm_arena_destroy(&m);
    fm_status st = fm_nn_conv2d_prelu_maxpool(a, x, wt, bias, slope, &p, pp, work, y, &e);
    CHECK_MSG(st == FM_OK, "conv2d_prelu_maxpool: %s", e.msg);
    fm_arena_destroy(&a);
    return st;
}

/* P-Net's first layer and its pool in one pass (fm_nn_conv2d_prelu_maxpool) against
 * the two operations, bit for bit, under every instruction set (AVX-512 runs the one
 * pass: the work tensor, filled with NaN, stays untouched; the others run the two
 * steps into it), with and without work, in ceil and floor mode, on odd and even
 * output sizes, tails of 1..31 columns, 5, 8 and 10 channels, with and without bias
 * and slope, several images; planes the direct kernel runs flat (R-Net's first layer
 * with its 3x3 pool, O-Net's, a 5x5 convolution, a 3x3 pool), pooled where the flat
 * runs lie on AVX2 and AVX-512 (work untouched too); and a shape neither takes (a
 * plane too large to run flat) gives the two steps' results too. */
static void test_conv_pool(void)
{
    static const struct {
        int n, c, h, w, co, k, pk, ceil, one; /* one: the one pass applies (1 on
                                                   AVX-512, 2 flat: on AVX2 and up) */
    } cases[] = {
        {1, 3, 42, 322, 10, 3, 2, 1, 1},  /* a P-Net strip: 40 x 320 outputs */
        {1, 3, 41, 323, 10, 3, 2, 1, 1},  /* 39 x 321: the last pool row and column half */
        {1, 3, 41, 323, 10, 3, 2, 0, 1},  /* the same, floor mode */
        {2, 3, 200, 35, 10, 3, 2, 1, 1},  /* 33 columns: a tile of 1, two images */
        {1, 3, 161, 65, 5, 3, 2, 1, 1},   /* 63 columns, 5 channels */
        {1, 4, 200, 50, 8, 3, 2, 1, 1},   /* 48 columns, 8 channels */
        {1, 3, 20, 35, 10, 3, 2, 1, 2},   /* a small plane (run flat): pooled flat */
        {1, 2, 7, 18, 4, 3, 2, 1, 2},     /* the same, 4 channels */
        {3, 3, 24, 24, 28, 3, 3, 1, 2},   /* R-Net's first layer and pool, 3 crops */
        {2, 3, 48, 48, 32, 3, 3, 1, 2},   /* O-Net's first layer and pool, 2 crops */
        {1, 3, 50, 52, 32, 3, 3, 1, 0},   /* too large to run flat: the two steps */
        {1, 3, 23, 24, 28, 3, 3, 0, 2},   /* an odd height, floor mode */
        {1, 3, 30, 100, 10, 5, 2, 1, 2},  /* 5x5, run flat: pooled flat */
        {1, 3, 30, 100, 10, 3, 3, 1, 2},  /* a 3x3 pool, run flat: pooled flat */
    };
    const fm_nn_isa best = fm_nn_isa_best();
    int fused_runs = 0, flat_runs = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int variant = 0; variant < 3; variant++) {
            const int n = cases[i].n, c = cases[i].c, h = cases[i].h, w = cases[i].w;
            const int co = cases[i].co, k = cases[i].k, oh = h - k + 1, ow = w - k + 1;
            const fm_pool2d_params pp = fm_pool2d_sym(cases[i].pk, 2, 0, cases[i].ceil, 0);
            fm_tensor x, wt, b, sl, cs, ps;
            const fm_tensor *bias, *slope;
            prelu_operands(n, c, h, w, co, k, variant, &x, &wt, &b, &sl, &bias, &slope);
            fm_error e = {0};
            fm_tensor conv = fm_test_tensor(&rng, n, co, oh, ow);
            CHECK(fm_nn_pool2d_shape(&conv, &pp, &ps, &e) == FM_OK);
            fm_tensor want = fm_test_tensor(&rng, ps.n, ps.c, ps.h, ps.w);
            const size_t count = fm_tensor_count(&want), ccount = fm_tensor_count(&conv);
            for (int isa = FM_NN_ISA_BASE; isa <= (int)best; isa++) {
                fm_nn_set_isa((fm_nn_isa)isa);
                /* The two steps under the same instruction set: the portable
                 * convolution goes through im2col and sgemm, whose sums follow
                 * OpenBLAS's kernel set (SkylakeX's match the direct kernels' order,
                 * Haswell's do not), so only the same set's two steps are its bits. */
                conv_prelu_measured(&x, &wt, bias, slope, &conv);
                CHECK(fm_nn_maxpool2d(NULL, &conv, &pp, &want, &e) == FM_OK);
                for (int with_work = 0; with_work < 2; with_work++) {
                    cs = fm_test_tensor(&rng, n, co, oh, ow);
                    for (size_t j = 0; j < ccount; j++)
                        cs.data[j] = NAN;
                    fm_tensor y = fm_test_tensor(&rng, ps.n, ps.c, ps.h, ps.w);
                    conv_pool_measured(&x, &wt, bias, slope, &pp, with_work ? &cs : NULL, &y);
                    CHECK_MSG(memcmp(y.data, want.data, count * sizeof(float)) == 0,
                              "conv+pool %s, n%d c%d %dx%d -> co%d k%d pool %d%s v%d work %d: "
                              "not the two steps' bits", fm_nn_isa_name((fm_nn_isa)isa), n, c,
                              h, w, co, k, cases[i].pk, cases[i].ceil ? " ceil" : "", variant,
                              with_work);
                    if (with_work) {
                        size_t nan = 0;
                        for (size_t j = 0; j < ccount; j++)
                            nan += isnan(cs.data[j]);
                        const int one_pass =
                            (isa >= FM_NN_ISA_AVX512 && cases[i].one == 1) ||
                            (isa >= FM_NN_ISA_AVX2 && cases[i].one == 2);
                        CHECK_MSG(one_pass ? nan == ccount : nan < ccount,
                                  "conv+pool %s, n%d c%d %dx%d k%d pool %d: %zu of %zu work "
                                  "values untouched", fm_nn_isa_name((fm_nn_isa)isa), n, c, h,
                                  w, k, cases[i].pk, nan, ccount);
                        fused_runs += one_pass && cases[i].one == 1;
                        flat_runs += one_pass && cases[i].one == 2;
                    }
                    fm_test_tensor_free(&y);
                    fm_test_tensor_free(&cs);
                }
            }
            fm_nn_set_isa(best);
            fm_test_tensor_free(&conv);
            fm_test_tensor_free(&want);
            prelu_case_free(&x, &wt, &b, &sl, NULL, NULL, 0);
        }
    }
    if (best >= FM_NN_ISA_AVX512)
        CHECK(fused_runs == 18);
    if (best >= FM_NN_ISA_AVX2) /* 7 cases x 3 variants on each set from AVX2 */
        CHECK(flat_runs == 21 * ((int)best - (int)FM_NN_ISA_AVX2 + 1));
    fprintf(stderr, "test_nn: conv + PReLU + 2x2 pool in one pass (%d runs), flat runs "
            "pooled in place (%d runs): the two steps' bits%s\n", fused_runs, flat_runs,
            best >= FM_NN_ISA_AVX512 ? "" : " (this CPU has no AVX-512: the two steps only)");
}

/* The vector max pooling (2x2 and 3x3, stride 2) and PReLU against the portable
 * paths, on widths with and without tails (up to 32 columns: AVX-512's whole-plane
 * kernel; wider: its row kernel). */
static void test_vector_kernels(void)
{
    fm_nn_isa best = fm_nn_isa_best();
    static const int hs[] = {2, 5, 9, 22};
    static const int ws[] = {3, 9, 16, 17, 18, 21, 22, 31, 32, 33, 46, 63, 638};
    for (size_t hi = 0; hi < sizeof hs / sizeof hs[0]; hi++) {
        for (size_t wi = 0; wi < sizeof ws / sizeof ws[0]; wi++) {
            for (int k = 2; k <= 3; k++) {
                for (int ceil_mode = 0; ceil_mode < 2; ceil_mode++) {
                    fm_error e = {0};
                    fm_tensor x = fm_test_tensor(&rng, 1, 2, hs[hi], ws[wi]), sh = {0};
                    fm_pool2d_params p = fm_pool2d_sym(k, 2, 0, ceil_mode, 0);
                    if (fm_nn_pool2d_shape(&x, &p, &sh, &e) != FM_OK) {
                        fm_test_tensor_free(&x);
                        continue;
                    }
                    fm_tensor y0 = fm_test_tensor(&rng, 1, 2, sh.h, sh.w);
                    fm_tensor y1 = fm_test_tensor(&rng, 1, 2, sh.h, sh.w);
                    fm_nn_set_isa(FM_NN_ISA_BASE);
                    CHECK(fm_nn_maxpool2d(NULL, &x, &p, &y0, &e) == FM_OK);
                    for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
                        fm_nn_set_isa((fm_nn_isa)isa);
                        CHECK(fm_nn_maxpool2d(NULL, &x, &p, &y1, &e) == FM_OK);
                        CHECK_MSG(memcmp(y0.data, y1.data,
                                         fm_tensor_count(&y0) * sizeof(float)) == 0,
                                  "maxpool %s %dx%d k%d ceil %d: vector and portable paths "
                                  "differ", fm_nn_isa_name((fm_nn_isa)isa), hs[hi], ws[wi], k,
                                  ceil_mode);
                    }
                    fm_nn_set_isa(best);
                    fm_test_tensor_free(&x);
                    fm_test_tensor_free(&y0);
                    fm_test_tensor_free(&y1);
                }
            }
        }
    }
    for (int W = 1; W <= 19; W += 3) {
        fm_error e = {0};
        fm_tensor x = fm_test_tensor(&rng, 2, 3, 3, W), sl = fm_test_tensor(&rng, 3, 1, 1, 1);
        fm_tensor y0 = fm_test_tensor(&rng, 2, 3, 3, W), y1 = fm_test_tensor(&rng, 2, 3, 3, W);
        fm_nn_set_isa(FM_NN_ISA_BASE);
        CHECK(fm_nn_prelu(NULL, &x, &sl, &y0, &e) == FM_OK);
        fm_nn_set_isa(best);
        CHECK(fm_nn_prelu(NULL, &x, &sl, &y1, &e) == FM_OK);
        CHECK(memcmp(y0.data, y1.data, fm_tensor_count(&y0) * sizeof(float)) == 0);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&sl);
        fm_test_tensor_free(&y0);
        fm_test_tensor_free(&y1);
    }
    fprintf(stderr, "test_nn: vector kernels %s checked against the portable paths\n",
            fm_nn_isa_name(best));
}

static void test_conv_invalid(void)
{
    fm_error e = {0};
    fm_arena *a = NULL;
    CHECK(fm_arena_new(1 << 20, &a, &e) == FM_OK);
    fm_tensor x = fm_test_tensor(&rng, 2, 3, 7, 5), w = fm_test_tensor(&rng, 4, 3, 3, 3);
    fm_tensor y = fm_test_tensor(&rng, 2, 4, 5, 3), b = fm_test_tensor(&rng, 1, 5, 1, 1);
    fm_conv2d_params p = fm_conv2d_sym(1, 0);
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &y, &e) == FM_OK);

    /* wrong output shape */
    fm_tensor bad = y;
    bad.h = 4;
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &bad, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "conv2d: output has shape [2, 4, 4, 3], expected [2, 4, 5, 3]"));
    /* wrong bias length */
    CHECK(fm_nn_conv2d(a, &x, &w, &b, &p, &y, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "bias"));
    /* channel mismatch */
    fm_tensor w2 = w;
    w2.c = 2;
    CHECK(fm_nn_conv2d(a, &x, &w2, NULL, &p, &y, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "input channels"));
    /* groups not dividing */
    p.groups = 2;
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &y, &e) == FM_ERR_INVALID);
    p = fm_conv2d_sym(0, 0);
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &y, &e) == FM_ERR_INVALID);
    p = fm_conv2d_sym(1, -1);
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &y, &e) == FM_ERR_INVALID);
    p = fm_conv2d_sym(1, 0);
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, NULL, &y, &e) == FM_ERR_INVALID);
    CHECK(fm_nn_conv2d(a, NULL, &w, NULL, &p, &y, &e) == FM_ERR_INVALID);
    /* kernel larger than the input */
    fm_tensor w3 = fm_test_tensor(&rng, 4, 3, 7, 7), y3 = fm_test_tensor(&rng, 2, 4, 1, 1);
    CHECK(fm_nn_conv2d(a, &x, &w3, NULL, &p, &y3, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "larger than the padded input"));
    /* output overlapping the input */
    fm_tensor alias = fm_tensor_make(2, 4, 5, 3, x.data + 1);
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &alias, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "overlaps"));
    /* missing data on a real arena */
    fm_tensor nodata = y;
    nodata.data = NULL;
    CHECK(fm_nn_conv2d(a, &x, &w, NULL, &p, &nodata, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "no data"));
    /* no arena for a convolution that needs scratch; depthwise needs none */
    CHECK(fm_nn_conv2d(NULL, &x, &w, NULL, &p, &y, &e) == FM_ERR_ARENA);
    fm_tensor wd = fm_test_tensor(&rng, 3, 1, 3, 3), yd = fm_test_tensor(&rng, 2, 3, 5, 3);
    p.groups = 3;
    CHECK(fm_nn_conv2d(NULL, &x, &wd, NULL, &p, &yd, &e) == FM_OK);
    CHECK(fm_arena_used(a) == 0);
    fm_test_tensor_free(&wd);
    fm_test_tensor_free(&yd);
    fm_test_tensor_free(&w3);
    fm_test_tensor_free(&y3);
    fm_test_tensor_free(&x);
    fm_test_tensor_free(&w);
    fm_test_tensor_free(&y);
    fm_test_tensor_free(&b);
    fm_arena_destroy(&a);
}

/* ---- pooling ------------------------------------------------------------------- */

/* Output size from the definition: count the windows whose start lies inside the
 * (padded) range, floor: those that fit entirely in the padded input; ceil: those that
 * start before its end and before input end + leading pad. */
static int ref_pool_out(int in, int k, int s, int p0, int p1, int ceil_mode)
{
    int count = 0;
    for (int start = -p0;; start += s) {
        int fits = start + k <= in + p1;
        int ceil_ok = start < in + p1 - k + s && start < in; /* partial last window */
        if (ceil_mode ? !(fits || ceil_ok) : !fits)
            break;
        count++;
    }
    return count;
}

static void ref_pool(const fm_tensor *x, const fm_pool2d_params *p, int is_max, int oh,
                     int ow, double *y)
{
    for (int n = 0; n < x->n; n++)
        for (int c = 0; c < x->c; c++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    double m = -INFINITY, sum = 0.0;
                    int inside = 0, padded = 0;
                    for (int ky = 0; ky < p->kernel_h; ky++)
                        for (int kx = 0; kx < p->kernel_w; kx++) {
                            int iy = oy * p->stride_h - p->pad_top + ky;
                            int ix = ox * p->stride_w - p->pad_left + kx;
                            if (iy < x->h + p->pad_bottom && ix < x->w + p->pad_right)
                                padded++;
                            if (iy < 0 || iy >= x->h || ix < 0 || ix >= x->w)
                                continue;
                            double v = at(x, n, c, iy, ix);
                            inside++;
                            sum += v;
                            if (v > m)
                                m = v;
                        }
                    double out = is_max ? m
                                        : sum / (p->count_include_pad ? padded : inside);
                    y[(((size_t)n * x->c + c) * oh + oy) * ow + ox] = out;
                }
}

static void run_pool_case(int n, int c, int h, int w, const fm_pool2d_params *p)
{
    fm_error e = {0};
    fm_tensor x = fm_test_tensor(&rng, n, c, h, w);
    fm_tensor shape = {0};
    fm_status st = fm_nn_pool2d_shape(&x, p, &shape, &e);
    if (h + p->pad_top + p->pad_bottom < p->kernel_h ||
        w + p->pad_left + p->pad_right < p->kernel_w) {
        CHECK(st == FM_ERR_INVALID);
        pool_rejected++;
        fm_test_tensor_free(&x);
        return;
    }
    int oh = ref_pool_out(h, p->kernel_h, p->stride_h, p->pad_top, p->pad_bottom, p->ceil_mode);
    int ow = ref_pool_out(w, p->kernel_w, p->stride_w, p->pad_left, p->pad_right, p->ceil_mode);
    CHECK_MSG(st == FM_OK && shape.h == oh && shape.w == ow && shape.n == n && shape.c == c,
              "pool shape %dx%d k%dx%d s%dx%d pad t%d l%d b%d r%d ceil %d: got %dx%d want "
              "%dx%d (%s)", h, w, p->kernel_h, p->kernel_w, p->stride_h, p->stride_w,
              p->pad_top, p->pad_left, p->pad_bottom, p->pad_right, p->ceil_mode, shape.h,
              shape.w, oh, ow, e.msg);
    if (st || shape.h != oh || shape.w != ow) {
        fm_test_tensor_free(&x);
        return;
    }
    pool_run++;
    fm_tensor y = fm_test_tensor(&rng, n, c, oh, ow);
    double *r = ref_new(fm_tensor_count(&y));
    for (int is_max = 0; is_max < 2; is_max++) {
        st = is_max ? fm_nn_maxpool2d(NULL, &x, p, &y, &e) : fm_nn_avgpool2d(NULL, &x, p, &y, &e);
        CHECK_MSG(st == FM_OK, "pool: %s", e.msg);
        ref_pool(&x, p, is_max, oh, ow, r);
        double err = rel_err(y.data, r, fm_tensor_count(&y));
        CHECK_MSG(err <= TOL,
                  "%s pool %dx%d k%dx%d s%dx%d pad t%d l%d b%d r%d ceil %d incl %d: err %g",
                  is_max ? "max" : "avg", h, w, p->kernel_h, p->kernel_w, p->stride_h,
                  p->stride_w, p->pad_top, p->pad_left, p->pad_bottom, p->pad_right,
                  p->ceil_mode, p->count_include_pad, err);
    }
    free(r);
    fm_test_tensor_free(&y);
    fm_test_tensor_free(&x);
}

static void test_pool(int cases)
{
    /* Output sizes the models depend on. */
    struct {
        int in, k, s, pad, ceil_mode, out;
    } sizes[] = {
        {22, 3, 2, 0, 1, 11}, /* R-Net pool1 (Caffe, ceil) */
        {22, 3, 2, 0, 0, 10}, /* the same in floor mode */
        {9, 3, 2, 0, 1, 4},   /* R-Net pool2 */
        {46, 3, 2, 0, 1, 23}, /* O-Net pool1 */
        {21, 3, 2, 0, 1, 10}, /* O-Net pool2 */
        {8, 2, 2, 0, 1, 4},   /* O-Net pool3 */
        {5, 2, 2, 0, 1, 3},   /* partial last window kept in ceil mode */
        {5, 2, 2, 0, 0, 2},
        {5, 3, 2, 1, 1, 3},   /* PyTorch drops a window starting in the bottom padding */
        {72, 3, 2, 0, 0, 35}, /* dlib ResNet max pool */
        {75, 3, 2, 0, 0, 37},
        {638, 2, 2, 0, 1, 319}, /* P-Net on a 640-wide level */
        {7, 7, 1, 0, 0, 1},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        fm_tensor x = fm_tensor_make(1, 1, sizes[i].in, 3, NULL), y = {0};
        fm_pool2d_params p = {sizes[i].k, 1, sizes[i].s, 1, sizes[i].pad, 0, sizes[i].pad, 0,
                              sizes[i].ceil_mode, 0};
        fm_error e = {0};
        CHECK(fm_nn_pool2d_shape(&x, &p, &y, &e) == FM_OK);
        CHECK_MSG(y.h == sizes[i].out, "pool size %d k%d s%d pad %d ceil %d: %d, want %d",
                  sizes[i].in, sizes[i].k, sizes[i].s, sizes[i].pad, sizes[i].ceil_mode, y.h,
                  sizes[i].out);
    }

    static const int hs[] = {1, 2, 5, 7, 9, 12}, ws[] = {1, 3, 5, 7, 8, 13};
    static const int ks[] = {1, 2, 3, 5}, ss[] = {1, 2, 3};
    for (int i = 0; i < cases; i++) {
        fm_pool2d_params p = {0};
        p.kernel_h = rnd_pick(ks, 4);
        p.kernel_w = fm_test_rng_int(&rng, 2) ? p.kernel_h : rnd_pick(ks, 4);
        p.stride_h = rnd_pick(ss, 3);
        p.stride_w = fm_test_rng_int(&rng, 2) ? p.stride_h : rnd_pick(ss, 3);
        int mh = p.kernel_h < 3 ? p.kernel_h : 3, mw = p.kernel_w < 3 ? p.kernel_w : 3;
        p.pad_top = fm_test_rng_int(&rng, mh), p.pad_bottom = fm_test_rng_int(&rng, mh);
        p.pad_left = fm_test_rng_int(&rng, mw), p.pad_right = fm_test_rng_int(&rng, mw);
        p.ceil_mode = fm_test_rng_int(&rng, 2);
        p.count_include_pad = fm_test_rng_int(&rng, 2);
        run_pool_case(fm_test_rng_int(&rng, 2) ? 3 : 1, fm_test_rng_int(&rng, 2) ? 13 : 3,
                      rnd_pick(hs, 6), rnd_pick(ws, 6), &p);
    }

    /* invalid: padding not smaller than the kernel, zero stride, wrong output */
    fm_error e = {0};
    fm_tensor x = fm_test_tensor(&rng, 1, 3, 7, 5), y = fm_test_tensor(&rng, 1, 3, 3, 2);
    fm_pool2d_params p = fm_pool2d_sym(2, 2, 2, 0, 0);
    CHECK(fm_nn_maxpool2d(NULL, &x, &p, &y, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "smaller than the kernel"));
    p = fm_pool2d_sym(2, 0, 0, 0, 0);
    CHECK(fm_nn_avgpool2d(NULL, &x, &p, &y, &e) == FM_ERR_INVALID);
    p = fm_pool2d_sym(2, 2, 0, 1, 0); /* 7x5 -> 4x3 in ceil mode */
    CHECK(fm_nn_maxpool2d(NULL, &x, &p, &y, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "maxpool2d: output has shape [1, 3, 3, 2], expected [1, 3, 4, 3]"));
    p.ceil_mode = 0;
    CHECK(fm_nn_maxpool2d(NULL, &x, &p, &y, &e) == FM_OK);
    fm_tensor alias = fm_tensor_make(1, 3, 3, 2, x.data + 5);
    CHECK(fm_nn_maxpool2d(NULL, &x, &p, &alias, &e) == FM_ERR_INVALID);
    fm_test_tensor_free(&x);
    fm_test_tensor_free(&y);
}

static void test_global_avgpool(void)
{
    fm_error e = {0};
    const int dims[][4] = {{1, 3, 7, 5}, {3, 13, 5, 7}, {2, 4, 1, 1}, {1, 256, 3, 3}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        fm_tensor x = fm_test_tensor(&rng, dims[i][0], dims[i][1], dims[i][2], dims[i][3]);
        fm_tensor y = fm_test_tensor(&rng, x.n, x.c, 1, 1);
        CHECK(fm_nn_global_avgpool(NULL, &x, &y, &e) == FM_OK);
        double *r = ref_new(fm_tensor_count(&y));
        for (int n = 0; n < x.n; n++)
            for (int c = 0; c < x.c; c++) {
                double s = 0;
                for (int h = 0; h < x.h; h++)
                    for (int w = 0; w < x.w; w++)
                        s += at(&x, n, c, h, w);
                r[n * x.c + c] = s / (x.h * x.w);
            }
        CHECK(rel_err(y.data, r, fm_tensor_count(&y)) <= TOL);
        y.h = 2;
        CHECK(fm_nn_global_avgpool(NULL, &x, &y, &e) == FM_ERR_INVALID);
        free(r);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&y);
    }
}

/* ---- dense --------------------------------------------------------------------- */

static void test_dense(void)
{
    fm_error e = {0};
    const int shapes[][6] = {
        /* n, c, h, w of x; out; bias */
        {1, 13, 1, 1, 7, 1}, {3, 13, 1, 1, 117, 1}, {3, 3, 5, 7, 5, 0},
        {1, 1, 1, 1, 1, 1},  {5, 128, 1, 1, 2, 1},  {3, 64, 3, 3, 128, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int *s = shapes[i];
        int in = s[1] * s[2] * s[3], out = s[4];
        fm_tensor x = fm_test_tensor(&rng, s[0], s[1], s[2], s[3]);
        fm_tensor w = fm_test_tensor(&rng, out, in, 1, 1), b = fm_test_tensor(&rng, 1, out, 1, 1);
        fm_tensor y = fm_test_tensor(&rng, s[0], out, 1, 1);
        const fm_tensor *bias = s[5] ? &b : NULL;
        CHECK_MSG(fm_nn_dense(NULL, &x, &w, bias, &y, &e) == FM_OK, "dense: %s", e.msg);
        double *r = ref_new(fm_tensor_count(&y));
        for (int n = 0; n < s[0]; n++)
            for (int o = 0; o < out; o++) {
                double acc = bias ? b.data[o] : 0.0;
                for (int k = 0; k < in; k++)
                    acc += (double)x.data[(size_t)n * in + k] * w.data[(size_t)o * in + k];
                r[n * out + o] = acc;
            }
        double err = rel_err(y.data, r, fm_tensor_count(&y));
        CHECK_MSG(err <= TOL, "dense case %zu: err %g", i, err);
        free(r);
        /* weights as [out, c, h, w] are accepted too */
        fm_tensor w4 = fm_tensor_make(out, s[1], s[2], s[3], w.data);
        CHECK(fm_nn_dense(NULL, &x, &w4, bias, &y, &e) == FM_OK);
        /* mismatches */
        fm_tensor wbad = fm_tensor_make(out, in + 1, 1, 1, NULL);
        CHECK(fm_nn_dense(NULL, &x, &wbad, bias, &y, &e) == FM_ERR_INVALID);
        fm_tensor ybad = fm_tensor_make(s[0], out + 1, 1, 1, y.data);
        CHECK(fm_nn_dense(NULL, &x, &w, NULL, &ybad, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "dense: output"));
        fm_tensor bbad = fm_tensor_make(1, out + 1, 1, 1, b.data);
        CHECK(fm_nn_dense(NULL, &x, &w, &bbad, &y, &e) == FM_ERR_INVALID);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&w);
        fm_test_tensor_free(&b);
        fm_test_tensor_free(&y);
    }
}

/* ---- element-wise and per-channel ------------------------------------------------ */

static void test_eltwise(void)
{
    fm_error e = {0};
    const int dims[][4] = {{1, 3, 7, 5}, {3, 13, 5, 7}, {2, 1, 1, 1}, {3, 117, 1, 1}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        const int N = dims[i][0], C = dims[i][1], H = dims[i][2], W = dims[i][3];
        fm_tensor x = fm_test_tensor(&rng, N, C, H, W), y = fm_test_tensor(&rng, N, C, H, W);
        fm_tensor scale = fm_test_tensor(&rng, C, 1, 1, 1);
        fm_tensor shift = fm_test_tensor(&rng, 1, C, 1, 1);
        fm_tensor slope = fm_test_tensor(&rng, 1, C, 1, 1);
        fm_tensor slope1 = fm_test_tensor(&rng, 1, 1, 1, 1);
        size_t count = fm_tensor_count(&x), plane = (size_t)H * W;
        double *r = ref_new(count);
#define CHANNEL(idx) ((int)(((idx) / plane) % (size_t)C))

        CHECK(fm_nn_scale_shift(NULL, &x, &scale, &shift, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = (double)x.data[j] * scale.data[CHANNEL(j)] + shift.data[CHANNEL(j)];
        CHECK(rel_err(y.data, r, count) <= TOL);
        CHECK(fm_nn_scale_shift(NULL, &x, NULL, &shift, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = (double)x.data[j] + shift.data[CHANNEL(j)];
        CHECK(rel_err(y.data, r, count) <= TOL);
        CHECK(fm_nn_scale_shift(NULL, &x, &scale, NULL, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = (double)x.data[j] * scale.data[CHANNEL(j)];
        CHECK(rel_err(y.data, r, count) <= TOL);

        CHECK(fm_nn_prelu(NULL, &x, &slope, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = x.data[j] > 0 ? x.data[j] : (double)x.data[j] * slope.data[CHANNEL(j)];
        CHECK(rel_err(y.data, r, count) <= TOL);
        CHECK(fm_nn_prelu(NULL, &x, &slope1, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = x.data[j] > 0 ? x.data[j] : (double)x.data[j] * slope1.data[0];
        CHECK(rel_err(y.data, r, count) <= TOL);

        CHECK(fm_nn_relu(NULL, &x, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = x.data[j] > 0 ? x.data[j] : 0.0;
        CHECK(rel_err(y.data, r, count) <= TOL);

        CHECK(fm_nn_leaky_relu(NULL, &x, 0.2f, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = x.data[j] > 0 ? x.data[j] : 0.2 * x.data[j];
        CHECK(rel_err(y.data, r, count) <= TOL);

        /* softmax on large logits: stable, sums to one */
        fm_tensor big = fm_test_tensor(&rng, N, C, H, W);
        for (size_t j = 0; j < count; j++)
            big.data[j] *= 200.0f;
        CHECK(fm_nn_softmax(NULL, &big, &y, &e) == FM_OK);
        for (int n = 0; n < N; n++)
            for (size_t s = 0; s < plane; s++) {
                double m = -INFINITY, sum = 0;
                for (int c = 0; c < C; c++) {
                    double v = big.data[((size_t)n * C + c) * plane + s];
                    m = v > m ? v : m;
                }
                for (int c = 0; c < C; c++)
                    sum += exp(big.data[((size_t)n * C + c) * plane + s] - m);
                for (int c = 0; c < C; c++) {
                    size_t j = ((size_t)n * C + c) * plane + s;
                    r[j] = exp(big.data[j] - m) / sum;
                }
            }
        CHECK(rel_err(y.data, r, count) <= TOL);

        /* in place */
        memcpy(y.data, x.data, count * sizeof(float));
        CHECK(fm_nn_relu(NULL, &y, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = x.data[j] > 0 ? x.data[j] : 0.0;
        CHECK(rel_err(y.data, r, count) <= TOL);
        memcpy(y.data, x.data, count * sizeof(float));
        CHECK(fm_nn_softmax(NULL, &y, &y, &e) == FM_OK);
        memcpy(y.data, x.data, count * sizeof(float));
        CHECK(fm_nn_scale_shift(NULL, &y, &scale, &shift, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = (double)x.data[j] * scale.data[CHANNEL(j)] + shift.data[CHANNEL(j)];
        CHECK(rel_err(y.data, r, count) <= TOL);

        /* mismatches and partial overlap */
        fm_tensor sbad = fm_tensor_make(1, C + 1, 1, 1, NULL);
        CHECK(fm_nn_scale_shift(NULL, &x, &sbad, NULL, &y, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "scale_shift: scale"));
        CHECK(fm_nn_prelu(NULL, &x, &sbad, &y, &e) == FM_ERR_INVALID);
        CHECK(fm_nn_prelu(NULL, &x, NULL, &y, &e) == FM_ERR_INVALID);
        fm_tensor ybad = fm_tensor_make(N, C, H, W + 1, NULL);
        CHECK(fm_nn_relu(NULL, &x, &ybad, &e) == FM_ERR_INVALID);
        CHECK(fm_nn_leaky_relu(NULL, &x, NAN, &y, &e) == FM_ERR_INVALID);
        if (count > 1) {
            fm_tensor xs1 = fm_tensor_make(1, 1, 1, 1, x.data);
            CHECK(fm_nn_relu(NULL, &xs1, &xs1, &e) == FM_OK);
            fm_tensor x2 = fm_tensor_make(1, 1, 1, 2, x.data);
            fm_tensor y2 = fm_tensor_make(1, 1, 1, 2, x.data + 1);
            CHECK(fm_nn_relu(NULL, &x2, &y2, &e) == FM_ERR_INVALID);
            CHECK(strstr(e.msg, "overlaps"));
        }
#undef CHANNEL
        free(r);
        fm_test_tensor_free(&big);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&y);
        fm_test_tensor_free(&scale);
        fm_test_tensor_free(&shift);
        fm_test_tensor_free(&slope);
        fm_test_tensor_free(&slope1);
    }
}

/* ---- combining -------------------------------------------------------------------- */

static void test_combine(void)
{
    fm_error e = {0};
    const int dims[][4] = {{1, 3, 7, 5}, {3, 13, 5, 7}, {3, 128, 1, 1}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        const int N = dims[i][0], C = dims[i][1], H = dims[i][2], W = dims[i][3];
        fm_tensor x = fm_test_tensor(&rng, N, C, H, W), res = fm_test_tensor(&rng, N, C, H, W);
        fm_tensor y = fm_test_tensor(&rng, N, C, H, W);
        size_t count = fm_tensor_count(&x), plane = (size_t)H * W;
        double *r = ref_new(count);

        /* add with scale, out of place and in place over either operand */
        CHECK(fm_nn_add(NULL, &x, &res, 0.17f, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = (double)x.data[j] + 0.17 * res.data[j];
        CHECK(rel_err(y.data, r, count) <= TOL);
        memcpy(y.data, x.data, count * sizeof(float));
        CHECK(fm_nn_add(NULL, &y, &res, 1.0f, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = (double)x.data[j] + res.data[j];
        CHECK(rel_err(y.data, r, count) <= TOL);
        memcpy(y.data, res.data, count * sizeof(float));
        CHECK(fm_nn_add(NULL, &x, &y, -2.0f, &y, &e) == FM_OK);
        for (size_t j = 0; j < count; j++)
            r[j] = (double)x.data[j] - 2.0 * res.data[j];
        CHECK(rel_err(y.data, r, count) <= TOL);
        fm_tensor rbad = fm_tensor_make(N, C + 1, H, W, NULL);
        CHECK(fm_nn_add(NULL, &x, &rbad, 1.0f, &y, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "add: residual"));

        /* concat of three */
        fm_tensor a = fm_test_tensor(&rng, N, 1, H, W), b = fm_test_tensor(&rng, N, C, H, W);
        fm_tensor c = fm_test_tensor(&rng, N, 2, H, W), cat = fm_test_tensor(&rng, N, C + 3, H, W);
        const fm_tensor *parts[] = {&a, &b, &c};
        CHECK(fm_nn_concat(NULL, parts, 3, &cat, &e) == FM_OK);
        double *rc = ref_new(fm_tensor_count(&cat));
        for (int n = 0; n < N; n++)
            for (int ch = 0; ch < C + 3; ch++)
                for (size_t s = 0; s < plane; s++) {
                    const fm_tensor *src = ch < 1 ? &a : ch < 1 + C ? &b : &c;
                    int sc = ch < 1 ? ch : ch < 1 + C ? ch - 1 : ch - 1 - C;
                    rc[((size_t)n * (C + 3) + ch) * plane + s] =
                        src->data[((size_t)n * src->c + sc) * plane + s];
                }
        CHECK(rel_err(cat.data, rc, fm_tensor_count(&cat)) == 0.0);
        free(rc);
        cat.c--;
        CHECK(fm_nn_concat(NULL, parts, 3, &cat, &e) == FM_ERR_INVALID);
        CHECK(strstr(e.msg, "channels in total"));
        cat.c++;
        fm_tensor cbad = fm_tensor_make(N, 2, H + 1, W, c.data);
        const fm_tensor *bad_parts[] = {&a, &b, &cbad};
        CHECK(fm_nn_concat(NULL, bad_parts, 3, &cat, &e) == FM_ERR_INVALID);
        CHECK(fm_nn_concat(NULL, parts, 0, &cat, &e) == FM_ERR_INVALID);
        const fm_tensor *self[] = {&cat};
        CHECK(fm_nn_concat(NULL, self, 1, &cat, &e) == FM_ERR_INVALID);

        /* channel zero-padding, 3 -> 3 + 5 */
        fm_tensor padded = fm_test_tensor(&rng, N, C + 5, H, W);
        CHECK(fm_nn_channel_pad(NULL, &x, &padded, &e) == FM_OK);
        double *rp = ref_new(fm_tensor_count(&padded));
        for (int n = 0; n < N; n++)
            for (int ch = 0; ch < C; ch++)
                for (size_t s = 0; s < plane; s++)
                    rp[((size_t)n * (C + 5) + ch) * plane + s] =
                        x.data[((size_t)n * C + ch) * plane + s];
        CHECK(rel_err(padded.data, rp, fm_tensor_count(&padded)) == 0.0);
        free(rp);
        fm_tensor narrow = fm_tensor_make(N, C - 1 > 0 ? C - 1 : 1, H, W, padded.data);
        if (C > 1)
            CHECK(fm_nn_channel_pad(NULL, &x, &narrow, &e) == FM_ERR_INVALID);
        CHECK(fm_nn_channel_pad(NULL, &x, &x, &e) == FM_ERR_INVALID);

        /* L2 normalisation per image, in place too */
        CHECK(fm_nn_l2_normalize(NULL, &x, 1e-10f, &y, &e) == FM_OK);
        size_t len = (size_t)C * plane;
        for (int n = 0; n < N; n++) {
            double ss = 0;
            for (size_t j = 0; j < len; j++)
                ss += (double)x.data[n * len + j] * x.data[n * len + j];
            for (size_t j = 0; j < len; j++)
                r[n * len + j] = x.data[n * len + j] / sqrt(ss > 1e-10 ? ss : 1e-10);
        }
        CHECK(rel_err(y.data, r, count) <= TOL);
        memcpy(y.data, x.data, count * sizeof(float));
        CHECK(fm_nn_l2_normalize(NULL, &y, 1e-10f, &y, &e) == FM_OK);
        CHECK(rel_err(y.data, r, count) <= TOL);
        memset(y.data, 0, count * sizeof(float));
        CHECK(fm_nn_l2_normalize(NULL, &y, 0.0f, &y, &e) == FM_OK);
        int finite_zero = 1;
        for (size_t j = 0; j < count; j++)
            finite_zero &= y.data[j] == 0.0f;
        CHECK(finite_zero);
        CHECK(fm_nn_l2_normalize(NULL, &x, -1.0f, &y, &e) == FM_ERR_INVALID);

        free(r);
        fm_test_tensor_free(&a);
        fm_test_tensor_free(&b);
        fm_test_tensor_free(&c);
        fm_test_tensor_free(&cat);
        fm_test_tensor_free(&padded);
        fm_test_tensor_free(&x);
        fm_test_tensor_free(&res);
        fm_test_tensor_free(&y);
    }
}

/* ---- arena ------------------------------------------------------------------------ */

static void test_arena_basics(void)
{
    fm_error e = {0};
    fm_arena *a = NULL;
    CHECK(fm_arena_new(1000, &a, &e) == FM_OK);
    CHECK(fm_arena_size(a) == 1000 && !fm_arena_is_measuring(a));
    void *p1 = NULL, *p2 = NULL, *p3 = NULL;
    CHECK(fm_arena_alloc(a, 10, &p1, &e) == FM_OK);
    CHECK(fm_arena_alloc(a, 100, &p2, &e) == FM_OK);
    CHECK((uintptr_t)p1 % FM_ARENA_ALIGN == 0 && (uintptr_t)p2 % FM_ARENA_ALIGN == 0);
    CHECK((char *)p2 - (char *)p1 == 64);
    CHECK(fm_arena_used(a) == 164);
    size_t mark = fm_arena_mark(a);
    CHECK(fm_arena_alloc(a, 500, &p3, &e) == FM_OK);
    CHECK((char *)p3 - (char *)p1 == 192);
    memset(p3, 0xab, 500);
    CHECK(fm_arena_high_water(a) == 692);
    fm_arena_reset(a, mark);
    CHECK(fm_arena_used(a) == 164 && fm_arena_high_water(a) == 692);
    /* 192 + 808 = 1000 fits exactly; one more byte does not */
    void *q = (void *)1;
    CHECK(fm_arena_alloc(a, 809, &q, &e) == FM_ERR_ARENA);
    CHECK(q == (void *)1 && fm_arena_used(a) == 164);
    CHECK(strstr(e.msg, "809 bytes") && strstr(e.msg, "1000"));
    CHECK(fm_arena_alloc(a, SIZE_MAX, &q, &e) == FM_ERR_ARENA);
    CHECK(fm_arena_alloc(a, SIZE_MAX - 100, &q, &e) == FM_ERR_ARENA);
    CHECK(fm_arena_alloc(a, 808, &q, &e) == FM_OK);
    memset(q, 0xcd, 808);
    CHECK(fm_arena_used(a) == 1000);
    CHECK(fm_arena_alloc(a, 1, &q, &e) == FM_ERR_ARENA);
    fm_arena_reset(a, 0);
    CHECK(fm_arena_used(a) == 0);
    fm_tensor t;
    CHECK(fm_tensor_alloc(a, 2, 3, 5, 7, &t, &e) == FM_OK);
    CHECK(t.n == 2 && t.c == 3 && t.h == 5 && t.w == 7 && t.data == p1);
    CHECK(fm_tensor_alloc(a, 2, 3, 5, 8, &t, &e) == FM_ERR_ARENA);
    CHECK(strstr(e.msg, "tensor [2, 3, 5, 8]"));
    CHECK(fm_tensor_alloc(a, 0, 3, 5, 8, &t, &e) == FM_ERR_INVALID);
    CHECK(fm_tensor_alloc(a, 65536, 65536, 1, 1, &t, &e) == FM_ERR_INVALID);
    CHECK(fm_arena_alloc(NULL, 1, &q, &e) == FM_ERR_INVALID);
    fm_arena_destroy(&a);
    CHECK(a == NULL);
    fm_arena_destroy(&a);
    fm_arena_destroy(NULL);

    /* size 0: empty allocations only */
    CHECK(fm_arena_new(0, &a, &e) == FM_OK);
    CHECK(fm_arena_alloc(a, 1, &q, &e) == FM_ERR_ARENA);
    fm_arena_destroy(&a);

    /* measuring: same offsets, no memory */
    CHECK(fm_arena_new_measuring(&a, &e) == FM_OK);
    CHECK(fm_arena_is_measuring(a) && fm_arena_size(a) == 0);
    CHECK(fm_arena_alloc(a, 10, &q, &e) == FM_OK && q == NULL);
    CHECK(fm_arena_alloc(a, 100, &q, &e) == FM_OK);
    mark = fm_arena_mark(a);
    CHECK(fm_arena_alloc(a, 500, &q, &e) == FM_OK);
    fm_arena_reset(a, mark);
    CHECK(fm_arena_used(a) == 164 && fm_arena_high_water(a) == 692);
    CHECK(fm_arena_alloc(a, SIZE_MAX, &q, &e) == FM_ERR_ARENA);
    fm_arena_destroy(&a);
}

/* A small network in the shape of the real ones: conv (im2col scratch), PReLU, ceil
 * max pool, a gathered 1x1 conv, depthwise conv, concat, dense, softmax. Tensors come
 * from the arena; the input and weights from the caller. */
typedef struct graph_weights {
    fm_tensor w1, b1, slope, w2, wd, wf, bf;
} graph_weights;

static fm_status run_graph(fm_arena *a, const fm_tensor *x, const graph_weights *gw,
                           fm_tensor *out, fm_error *err)
{
    fm_status st;
    fm_tensor c1, p1, c2, d1, cat, fc;
    fm_conv2d_params s1 = fm_conv2d_sym(1, 1), one = fm_conv2d_sym(1, 0);
    fm_conv2d_params dw = fm_conv2d_sym(1, 1);
    dw.groups = gw->wd.n;
    fm_pool2d_params pool = fm_pool2d_sym(3, 2, 0, 1, 0);
    if ((st = fm_nn_conv2d_shape(x, &gw->w1, &s1, &c1, err)) ||
        (st = fm_tensor_alloc(a, c1.n, c1.c, c1.h, c1.w, &c1, err)) ||
        (st = fm_nn_conv2d(a, x, &gw->w1, &gw->b1, &s1, &c1, err)) ||
        (st = fm_nn_prelu(a, &c1, &gw->slope, &c1, err)) ||
        (st = fm_nn_pool2d_shape(&c1, &pool, &p1, err)) ||
        (st = fm_tensor_alloc(a, p1.n, p1.c, p1.h, p1.w, &p1, err)) ||
        (st = fm_nn_maxpool2d(a, &c1, &pool, &p1, err)))
        return st;
    size_t mark = fm_arena_mark(a);
    if ((st = fm_nn_conv2d_shape(&p1, &gw->w2, &one, &c2, err)) ||
        (st = fm_tensor_alloc(a, c2.n, c2.c, c2.h, c2.w, &c2, err)) ||
        (st = fm_nn_conv2d(a, &p1, &gw->w2, NULL, &one, &c2, err)) ||
        (st = fm_nn_relu(a, &c2, &c2, err)) ||
        (st = fm_tensor_alloc(a, p1.n, p1.c, p1.h, p1.w, &d1, err)) ||
        (st = fm_nn_conv2d(a, &p1, &gw->wd, NULL, &dw, &d1, err)) ||
        (st = fm_tensor_alloc(a, p1.n, c2.c + d1.c, p1.h, p1.w, &cat, err)))
        return st;
    const fm_tensor *parts[] = {&c2, &d1};
    if ((st = fm_nn_concat(a, parts, 2, &cat, err)) ||
        (st = fm_tensor_alloc(a, cat.n, gw->wf.n, 1, 1, &fc, err)) ||
        (st = fm_nn_dense(a, &cat, &gw->wf, &gw->bf, &fc, err)) ||
        (st = fm_nn_softmax(a, &fc, out, err)))
        return st;
    fm_arena_reset(a, mark);
    return FM_OK;
}

static void test_arena_measure(void)
{
    fm_error e = {0};
    const int N = 3, C = 3, H = 24, W = 23, C1 = 10, C2 = 16, OUT = 7;
    fm_tensor x = fm_test_tensor(&rng, N, C, H, W);
    graph_weights gw = {
        fm_test_tensor(&rng, C1, C, 3, 3),
        fm_test_tensor(&rng, 1, C1, 1, 1),
        fm_test_tensor(&rng, 1, C1, 1, 1),
        fm_test_tensor(&rng, C2, C1, 1, 1),
        fm_test_tensor(&rng, C1, 1, 3, 3),
        fm_test_tensor(&rng, OUT, (C1 + C2) * 12 * 11, 1, 1),
        fm_test_tensor(&rng, 1, OUT, 1, 1),
    };
    fm_tensor out = fm_test_tensor(&rng, N, OUT, 1, 1), out2 = fm_test_tensor(&rng, N, OUT, 1, 1);

    /* Measure with data-less copies of everything. */
    fm_arena *m = NULL, *a = NULL;
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    graph_weights gm = gw;
    fm_tensor xm = x, om = out;
    xm.data = om.data = NULL;
    gm.w1.data = gm.b1.data = gm.slope.data = gm.w2.data = gm.wd.data = NULL;
    gm.wf.data = gm.bf.data = NULL;
    CHECK_MSG(run_graph(m, &xm, &gm, &om, &e) == FM_OK, "measure: %s", e.msg);
    size_t need = fm_arena_high_water(m), used = fm_arena_used(m);
    /* The work, 2 FLOP per multiply-add of the layers' shapes: conv 3x3 (24x23 out),
     * 1x1 and depthwise 3x3 on the 12x11 pooled map, dense; nothing else counts. */
    const double flop = 2.0 * N * C1 * (24 * 23) * (C * 9) + 2.0 * N * C2 * (12 * 11) * C1 +
                        2.0 * N * C1 * (12 * 11) * 9 + 2.0 * N * OUT * ((C1 + C2) * 12 * 11);
    CHECK_MSG(fm_arena_flop(m) == flop, "measured %.0f FLOP, expected %.0f", fm_arena_flop(m),
              flop);
    fm_arena_destroy(&m);
    CHECK(need > 0);
    CHECK(fm_arena_flop(NULL) == 0.0);

    /* An arena of exactly that size runs the graph and reaches exactly that size. */
    CHECK(fm_arena_new(need, &a, &e) == FM_OK);
    CHECK(fm_arena_flop(a) == 0.0);
    CHECK_MSG(run_graph(a, &x, &gw, &out, &e) == FM_OK, "run: %s", e.msg);
    CHECK(fm_arena_high_water(a) == need && fm_arena_used(a) == used);
    CHECK(fm_arena_flop(a) == flop);
    fm_arena_destroy(&a);

    /* The same on a roomy arena gives the same answer; the count adds up. */
    CHECK(fm_arena_new(need * 2, &a, &e) == FM_OK);
    CHECK(run_graph(a, &x, &gw, &out2, &e) == FM_OK);
    CHECK(memcmp(out.data, out2.data, fm_tensor_count(&out) * sizeof(float)) == 0);
    CHECK(fm_arena_high_water(a) == need);
    CHECK(run_graph(a, &x, &gw, &out2, &e) == FM_OK);
    CHECK(fm_arena_flop(a) == 2 * flop);
    fm_arena_destroy(&a);

    /* Any smaller arena fails with FM_ERR_ARENA and writes nothing past its end. */
    size_t sizes[24];
    int ns = 0;
    sizes[ns++] = need - 1;
    sizes[ns++] = 0;
    for (int i = 1; i < 22; i++)
        sizes[ns++] = need * (size_t)i / 22 + (size_t)i * 7;
    for (int i = 0; i < ns; i++) {
        if (sizes[i] >= need)
            continue;
        CHECK(fm_arena_new(sizes[i], &a, &e) == FM_OK);
        e.msg[0] = 0;
        fm_status st = run_graph(a, &x, &gw, &out2, &e);
        CHECK_MSG(st == FM_ERR_ARENA, "arena of %zu (need %zu): status %d %s", sizes[i], need,
                  st, e.msg);
        CHECK(strstr(e.msg, "exceeds the arena size"));
        CHECK(fm_arena_high_water(a) <= sizes[i]);
        fm_arena_destroy(&a);
    }

    /* A mismatched shape is caught while measuring, before any memory is sized. */
    CHECK(fm_arena_new_measuring(&m, &e) == FM_OK);
    gm.wf.c += 1;
    CHECK(run_graph(m, &xm, &gm, &om, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "dense"));
    fm_arena_destroy(&m);

    fm_test_tensor_free(&x);
    fm_test_tensor_free(&gw.w1);
    fm_test_tensor_free(&gw.b1);
    fm_test_tensor_free(&gw.slope);
    fm_test_tensor_free(&gw.w2);
    fm_test_tensor_free(&gw.wd);
    fm_test_tensor_free(&gw.wf);
    fm_test_tensor_free(&gw.bf);
    fm_test_tensor_free(&out);
    fm_test_tensor_free(&out2);
}

static void test_threads(void)
{
    fm_error e = {0};
    CHECK(fm_nn_threads() == 1); /* the engine's default, whatever OpenBLAS would pick */
    CHECK(fm_nn_set_threads(0, &e) == FM_ERR_INVALID);
    CHECK(fm_nn_set_threads(2, &e) == FM_OK);
    CHECK(fm_nn_threads() >= 1);
    CHECK(fm_nn_set_threads(1, &e) == FM_OK);
    CHECK(fm_nn_threads() == 1);
}

int main(void)
{
    test_threads();
    test_arena_basics();
    test_conv_paths();
    test_conv_winograd();
    test_conv_own_gemm();
    test_conv_s2d();
    test_conv_random(1500);
    test_conv_prelu();
    test_conv_positions();
    test_conv_bordered();
    test_conv_kept_winograd();
    test_conv_wino_direct();
    test_conv_pool();
    test_conv_invalid();
    test_pool(1500);
    test_vector_kernels();
    test_global_avgpool();
    test_dense();
    test_eltwise();
    test_combine();
    test_arena_measure();
    fprintf(stderr, "test_nn: %d convolutions and %d poolings compared (%d and %d "
            "geometries correctly rejected)\n", conv_run, pool_run, conv_rejected,
            pool_rejected);
    return fm_test_done("test_nn");
}
