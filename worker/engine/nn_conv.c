/* nn_conv.c - 2-D convolution, the engine's hot spot: im2col + a matrix product
 * (nn_gemm: the engine's own kernel, or cblas_sgemm) for ordinary convolutions,
 * Winograd's F(2x2, 3x3) for 3x3 stride-1 ones with enough channels (nn_winograd.c),
 * a direct multiply for 1x1 stride-1 unpadded ones, a gathered multiply across images
 * when each image has few output pixels, and a direct loop for depthwise
 * convolutions. Shapes are checked once here; the inner loops trust them. */
#include "nn_impl.h"

#include <string.h>

/* Tuning (see ops/bench/bench_ops.c). Below CONV_GATHER_BELOW output pixels per
 * image, several images are gathered into one multiply: GEMM efficiency falls off
 * quickly for narrow matrices. CONV_IM2COL_FLOATS is the im2col buffer budget: large
 * enough for efficient multiplies, small enough to stay in cache between im2col and
 * sgemm; a multiply gets at least CONV_MIN_COLS columns whatever K is. */
#ifndef CONV_GATHER_BELOW
#define CONV_GATHER_BELOW 256
#endif
#ifndef CONV_IM2COL_FLOATS
#define CONV_IM2COL_FLOATS (256 * 1024)
#endif
#ifndef CONV_MIN_COLS
#define CONV_MIN_COLS 256
#endif

typedef enum conv_mode {
    CONV_DIRECT,    /* stride 1 unpadded, few channels: direct kernel (nn_direct.c) */
    CONV_S2D,       /* stride 2, few input channels: space to depth, then CONV_DIRECT */
    CONV_WINOGRAD,  /* 3x3 stride 1, enough channels: F(2x2, 3x3) (nn_winograd.c) */
    CONV_DEPTHWISE, /* one input channel per group: direct loop */
    CONV_1X1,       /* 1x1 stride 1 unpadded: multiply the input as it is */
    CONV_TILED,     /* im2col over column tiles of one image, results written in place */
    CONV_GATHERED,  /* im2col of several images side by side, result scattered */
} conv_mode;

typedef struct conv_plan {
    conv_mode mode;
    int tile;       /* CONV_TILED: output pixels per im2col tile */
    int imgs;       /* CONV_GATHERED: images per multiply */
    size_t scratch; /* floats */
} conv_plan;

fm_status nn_conv_geometry(const char *op, const fm_tensor *x, const fm_tensor *w,
                           const fm_conv2d_params *p, conv_geom *g, fm_error *err)
{
    nn_shape_text sx, sw;
    if (!p)
        return fm_error_set(err, FM_ERR_INVALID, "%s: parameters are NULL", op);
    if (p->stride_h < 1 || p->stride_w < 1)
        return fm_error_set(err, FM_ERR_INVALID, "%s: stride %dx%d must be >= 1", op,
                            p->stride_h, p->stride_w);
    if (p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 || p->pad_right < 0)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: padding (top %d, left %d, bottom %d, right %d) must be >= 0",
                            op, p->pad_top, p->pad_left, p->pad_bottom, p->pad_right);
    if (p->groups < 1)
        return fm_error_set(err, FM_ERR_INVALID, "%s: groups %d must be >= 1", op, p->groups);
    if (x->c % p->groups || w->n % p->groups)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: groups %d does not divide input channels %d and output "
                            "channels %d", op, p->groups, x->c, w->n);
    if (w->c != x->c / p->groups)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: weights %s need %d input channels per group (input %s, "
                            "groups %d)", op, nn_shape(w, &sw), x->c / p->groups,
                            nn_shape(x, &sx), p->groups);
    long long ph = (long long)x->h + p->pad_top + p->pad_bottom;
    long long pw = (long long)x->w + p->pad_left + p->pad_right;
    if (ph > INT_MAX || pw > INT_MAX)
        return fm_error_set(err, FM_ERR_INVALID, "%s: padded input %lldx%lld is too large",
                            op, ph, pw);
    if (ph < w->h || pw < w->w)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: kernel %dx%d is larger than the padded input %lldx%lld "
                            "(input %s)", op, w->h, w->w, ph, pw, nn_shape(x, &sx));
    long long oh = (ph - w->h) / p->stride_h + 1, ow = (pw - w->w) / p->stride_w + 1;
    if (!nn_dims_fit(x->n, w->n, oh, ow))
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: output [%d, %d, %lld, %lld] has more than %d elements", op,
                            x->n, w->n, oh, ow, INT_MAX);
    g->n = x->n, g->c = x->c, g->h = x->h, g->w = x->w;
    g->co = w->n, g->oh = (int)oh, g->ow = (int)ow;
    g->kh = w->h, g->kw = w->w, g->sh = p->stride_h, g->sw = p->stride_w;
    g->pt = p->pad_top, g->pl = p->pad_left;
    g->groups = p->groups, g->cpg = w->c, g->cog = w->n / p->groups;
    g->k = w->c * w->h * w->w;
    g->p = (int)(oh * ow);
    return FM_OK;
}

fm_status fm_nn_conv2d_shape(const fm_tensor *x, const fm_tensor *w,
                             const fm_conv2d_params *p, fm_tensor *y, fm_error *err)
{
    const char *op = "conv2d";
    fm_status st;
    if ((st = nn_check(op, "input", x, 1, err)) || (st = nn_check(op, "weights", w, 1, err)))
        return st;
    if (!y)
        return fm_error_set(err, FM_ERR_INVALID, "%s: output is NULL", op);
    conv_geom g;
    if ((st = nn_conv_geometry(op, x, w, p, &g, err)))
        return st;
    y->n = g.n, y->c = g.co, y->h = g.oh, y->w = g.ow;
    return FM_OK;
}

/* See nn_impl.h. */
fm_status nn_conv_operands(const char *op, const fm_tensor *x, const fm_tensor *w,
                           const char *name, const fm_tensor *t, const fm_conv2d_params *p,
                           int measuring, conv_geom *g, fm_error *err)
{
    fm_status st;
    if ((st = nn_check(op, "input", x, measuring, err)) ||
        (st = nn_check(op, "weights", w, measuring, err)) ||
        (st = nn_check(op, name, t, measuring, err)))
        return st;
    return nn_conv_geometry(op, x, w, p, g, err);
}

/* See nn_impl.h. */
nn_conv_layout nn_conv_layout_of(const conv_geom *g, int col_floats, int min_cols,
                                 int gather_below, int *tile, int *imgs)
{
    int cols_max = col_floats / g->k;
    if (cols_max < min_cols)
        cols_max = min_cols;
    if (g->p >= gather_below) {
        if (g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->pt == 0 &&
            g->pl == 0 && g->oh == g->h && g->ow == g->w)
            return NN_CONV_1X1;
        *tile = g->p < cols_max ? g->p : cols_max;
        return NN_CONV_TILED;
    }
    int n = cols_max / g->p;
    *imgs = n < 1 ? 1 : n > g->n ? g->n : n;
    return NN_CONV_GATHERED;
}

/* Floor and ceiling of a / b for b > 0 and any sign of a. */
static inline long long floor_div(long long a, long long b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}
static inline long long ceil_div(long long a, long long b)
{
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

/* Output columns [lo, hi) whose input column ox*s - pad + kx lies inside [0, w). */
static inline void valid_cols(int w, int s, int pad, int kx, int ow, int *lo, int *hi)
{
    long long l = ceil_div((long long)pad - kx, s);
    long long h = floor_div((long long)w - 1 + pad - kx, s) + 1;
    if (l < 0)
        l = 0;
    if (h > ow)
        h = ow;
    if (h < l)
        h = l;
    *lo = (int)l;
    *hi = (int)h;
}

/* Space to depth: a stride-2 convolution with a kh x kw kernel on c channels is the
 * stride-1, unpadded convolution with a ceil(kh/2) x ceil(kw/2) kernel on the 4c
 * channels x2[4 ci + 2 py + px][i][j] = x[ci][2i + py - pt][2j + px - pl] (zero outside
 * x), the weights split alike (zero where 2u + py >= kh or 2v + px >= kw). The dlib
 * ResNet's stem (7x7/2 on 3 channels, K 147, 72x72 outputs) ran at 0.36-0.38 of sgemm's
 * speed as im2col + sgemm (im2col writes 147 floats per output, sgemm packs them
 * again); as a 4x4 convolution on 12 channels (K 192) it runs in the direct kernel's
 * column tiles, reading the split input in place. S2D_MAX_C keeps it to such stems
 * (layers with many channels multiply well through sgemm); S2D_MAX_K bounds the
 * split kernel's multiply-adds per output. Tuned with facemill-bench-ops. */
#ifndef S2D_MAX_C
#define S2D_MAX_C 4
#endif
#ifndef S2D_MAX_K
#define S2D_MAX_K 256
#endif
static int s2d_geom(const conv_geom *g, conv_geom *g2)
{
    if (g->groups != 1 || g->sh != 2 || g->sw != 2 || g->c > S2D_MAX_C || g->kh < 3 ||
        g->kw < 3)
        return 0;
    const int kh2 = (g->kh + 1) / 2, kw2 = (g->kw + 1) / 2;
    *g2 = (conv_geom){1,        4 * g->c,        g->oh + kh2 - 1, g->ow + kw2 - 1,
                      g->co,    g->oh,           g->ow,           kh2,
                      kw2,      1,               1,               0,
                      0,        1,               4 * g->c,        g->co,
                      4 * g->c * kh2 * kw2,      g->p};
    return g2->k <= S2D_MAX_K && nn_direct_fits_k(g2, S2D_MAX_K);
}

/* x2 of s2d_geom for one image x. */
static void s2d_input(const conv_geom *g, const conv_geom *g2, const float *x, float *x2)
{
    const size_t plane = (size_t)g->h * g->w;
    for (int ci = 0; ci < g->c; ci++)
        for (int py = 0; py < 2; py++)
            for (int px = 0; px < 2; px++) {
                float *dst = x2 + (size_t)(4 * ci + 2 * py + px) * g2->h * g2->w;
                /* columns j with 0 <= 2j + px - pl < w */
                int lo = 0, hi;
                valid_cols(g->w, 2, g->pl, px, g2->w, &lo, &hi);
                for (int i = 0; i < g2->h; i++, dst += g2->w) {
                    const int yy = 2 * i + py - g->pt;
                    if (yy < 0 || yy >= g->h || hi <= lo) {
                        memset(dst, 0, (size_t)g2->w * sizeof *dst);
                        continue;
                    }
                    const float *src = x + (size_t)ci * plane + (size_t)yy * g->w;
                    for (int j = 0; j < lo; j++)
                        dst[j] = 0.0f;
                    for (int j = lo; j < hi; j++)
                        dst[j] = src[2 * j + px - g->pl];
                    for (int j = hi; j < g2->w; j++)
                        dst[j] = 0.0f;
                }
            }
}

/* w2 of s2d_geom: [co][4 ci + 2 py + px][u][v] = w[co][ci][2u + py][2v + px], or 0. */
static void s2d_weights(const conv_geom *g, const conv_geom *g2, const float *w, float *w2)
{
    for (int o = 0; o < g->co; o++)
        for (int ci = 0; ci < g->c; ci++)
            for (int q = 0; q < 4; q++)
                for (int u = 0; u < g2->kh; u++)
                    for (int v = 0; v < g2->kw; v++) {
                        const int ky = 2 * u + q / 2, kx = 2 * v + q % 2;
                        w2[(((size_t)o * g2->c + 4 * ci + q) * g2->kh + u) * g2->kw + v] =
                            ky < g->kh && kx < g->kw
                                ? w[(((size_t)o * g->c + ci) * g->kh + ky) * g->kw + kx]
                                : 0.0f;
                    }
}

static conv_plan conv_choose(const conv_geom *g)
{
    conv_plan pl = {CONV_TILED, 0, 0, 0};
    conv_geom g2;
    if (nn_direct_fits(g)) {
        pl.mode = CONV_DIRECT;
        pl.scratch = nn_direct_scratch(g);
        return pl;
    }
    if (s2d_geom(g, &g2)) {
        pl.mode = CONV_S2D;
        pl.scratch = (size_t)g2.c * g2.h * g2.w + (size_t)g2.co * g2.k + nn_direct_scratch(&g2);
        return pl;
    }
    /* Winograd beat the direct kernel on O-Net's conv2 and conv3 (6.6 against 7.7 ms,
     * 1.6 against 3.0 for 16 crops), but the rounding it brings moved the sample photos'
     * landmarks and so their attributes by up to 5e-4 relative, beyond tests/golden's
     * 1e-4: the detector keeps its kernels. */
    if (nn_winograd_fits(g)) {
        pl.mode = CONV_WINOGRAD;
        pl.scratch = nn_winograd_scratch(g);
        return pl;
    }
    if (g->groups > 1 && g->cpg == 1) {
        pl.mode = CONV_DEPTHWISE;
        return pl;
    }
    switch (nn_conv_layout_of(g, CONV_IM2COL_FLOATS, CONV_MIN_COLS, CONV_GATHER_BELOW,
                              &pl.tile, &pl.imgs)) {
    case NN_CONV_1X1:
        pl.mode = CONV_1X1;
        break;
    case NN_CONV_TILED:
        pl.scratch = (size_t)g->k * (size_t)pl.tile;
        break;
    case NN_CONV_GATHERED:
        pl.mode = CONV_GATHERED;
        pl.scratch = ((size_t)g->k + (size_t)g->cog) * (size_t)pl.imgs * (size_t)g->p;
        break;
    }
    return pl;
}

/* Small planes: the rows of a whole image's im2col are a few outputs wide (the dlib
 * ResNet's 256-channel layers: 4x4 outputs, 2,304 rows of 16), and the general walk
 * below spends its time per row segment (a division, memcpy and memset calls for 4
 * floats). Here each channel is first copied into a zero-bordered plane (at most
 * I2C_SMALL_FLOATS), from which every tap's row is a plain strided copy. */
#ifndef I2C_SMALL_FLOATS
#define I2C_SMALL_FLOATS 4096
#endif
#ifndef I2C_SMALL_OW
#define I2C_SMALL_OW 16
#endif
static int im2col_small(const conv_geom *g, const float *x, float *col, size_t ld)
{
    const int ph = (g->oh - 1) * g->sh + g->kh, pw = (g->ow - 1) * g->sw + g->kw;
    if (g->ow > I2C_SMALL_OW || (size_t)ph * pw > I2C_SMALL_FLOATS)
        return 0;
    float pad[I2C_SMALL_FLOATS];
    const size_t plane = (size_t)g->h * g->w;
    for (int ci = 0; ci < g->cpg; ci++) {
        const float *xc = x + ci * plane;
        for (int r = 0; r < ph; r++) {
            const int iy = r - g->pt;
            float *pr = pad + (size_t)r * pw;
            for (int q = 0; q < pw; q++) {
                const int ix = q - g->pl;
                pr[q] = iy >= 0 && iy < g->h && ix >= 0 && ix < g->w
                            ? xc[(size_t)iy * g->w + ix]
                            : 0.0f;
            }
        }
        for (int ky = 0; ky < g->kh; ky++)
            for (int kx = 0; kx < g->kw; kx++) {
                float *dst = col + ((size_t)(ci * g->kh + ky) * g->kw + kx) * ld;
                for (int oy = 0; oy < g->oh; oy++) {
                    const float *src = pad + (size_t)(oy * g->sh + ky) * pw + kx;
                    for (int ox = 0; ox < g->ow; ox++)
                        dst[ox] = src[(size_t)ox * g->sw];
                    dst += g->ow;
                }
            }
    }
    return 1;
}

/* See nn_impl.h. */
void nn_im2col(const conv_geom *g, const float *x, int p0, int p1, float *col, size_t ld)
{
    if (p0 == 0 && p1 == g->p && im2col_small(g, x, col, ld))
        return;
    const size_t plane = (size_t)g->h * g->w;
    for (int ci = 0; ci < g->cpg; ci++) {
        const float *xc = x + ci * plane;
        for (int ky = 0; ky < g->kh; ky++) {
            for (int kx = 0; kx < g->kw; kx++) {
                float *dst = col + ((size_t)(ci * g->kh + ky) * g->kw + kx) * ld;
                int lo, hi;
                valid_cols(g->w, g->sw, g->pl, kx, g->ow, &lo, &hi);
                int p = p0;
                while (p < p1) {
                    int oy = p / g->ow, ox0 = p % g->ow;
                    int ox1 = p1 - p < g->ow - ox0 ? ox0 + (p1 - p) : g->ow;
                    int iy = oy * g->sh - g->pt + ky;
                    if (iy < 0 || iy >= g->h) {
                        memset(dst, 0, (size_t)(ox1 - ox0) * sizeof *dst);
                        dst += ox1 - ox0;
                    } else {
                        const float *row = xc + (size_t)iy * g->w;
                        /* [ox0, a) left padding, [a, b) inside, [b, ox1) right */
                        int a = ox0 > lo ? ox0 : lo, b = ox1 < hi ? ox1 : hi;
                        if (b < a)
                            a = b = ox1;
                        for (int ox = ox0; ox < a; ox++)
                            *dst++ = 0.0f;
                        if (b > a) {
                            const float *src = row + (a * g->sw - g->pl + kx);
                            if (g->sw == 1) {
                                memcpy(dst, src, (size_t)(b - a) * sizeof *dst);
                                dst += b - a;
                            } else {
                                for (int ox = a; ox < b; ox++, src += g->sw)
                                    *dst++ = *src;
                            }
                        }
                        for (int ox = b; ox < ox1; ox++)
                            *dst++ = 0.0f;
                    }
                    p += ox1 - ox0;
                }
            }
        }
    }
}

/* See nn_impl.h. The same walk as nn_im2col with the copy reversed into an add, so the
 * two stay each other's adjoint: a tap's valid output columns come from valid_cols and
 * out-of-range rows are skipped instead of zero-filled. */
void nn_col2im_add(const conv_geom *g, const float *col, int p0, int p1, size_t ld,
                   float *dx)
{
    const size_t plane = (size_t)g->h * g->w;
    for (int ci = 0; ci < g->cpg; ci++) {
        float *dxc = dx + ci * plane;
        for (int ky = 0; ky < g->kh; ky++) {
            for (int kx = 0; kx < g->kw; kx++) {
                const float *src = col + ((size_t)(ci * g->kh + ky) * g->kw + kx) * ld;
                int lo, hi;
                valid_cols(g->w, g->sw, g->pl, kx, g->ow, &lo, &hi);
                int p = p0;
                while (p < p1) {
                    int oy = p / g->ow, ox0 = p % g->ow;
                    int ox1 = p1 - p < g->ow - ox0 ? ox0 + (p1 - p) : g->ow;
                    int iy = oy * g->sh - g->pt + ky;
                    if (iy >= 0 && iy < g->h) {
                        int a = ox0 > lo ? ox0 : lo, b = ox1 < hi ? ox1 : hi;
                        if (b > a) {
                            float *restrict dst =
                                dxc + (size_t)iy * g->w + (a * g->sw - g->pl + kx);
                            const float *restrict s = src + (a - ox0);
                            if (g->sw == 1) {
                                for (int i = 0; i < b - a; i++)
                                    dst[i] += s[i];
                            } else {
                                for (int i = 0; i < b - a; i++)
                                    dst[(size_t)i * g->sw] += s[i];
                            }
                        }
                    }
                    src += ox1 - ox0;
                    p += ox1 - ox0;
                }
            }
        }
    }
}

/* Adds bias[r] to rows r of a rows x cols block with leading dimension ld. */
static void add_bias(float *y, size_t ld, int rows, int cols, const float *bias)
{
    if (!bias)
        return;
    for (int r = 0; r < rows; r++) {
        float b = bias[r];
        float *yr = y + (size_t)r * ld;
        for (int j = 0; j < cols; j++)
            yr[j] += b;
    }
}

/* Output columns per block in the depthwise interior: a fixed count, so the compiler
 * keeps the accumulators in vector registers even at -O2. */
#define DW_BLOCK 8

/* One output row of a depthwise convolution of one channel plane xc with kernel wk.
 * Columns where every tap lies inside the input (the interior) accumulate in registers,
 * DW_BLOCK at a time; the border columns add tap by tap, skipping the padding. */
static void dw_row(const conv_geom *g, const float *restrict xc, const float *restrict wk,
                   float b0, int oy, float *restrict yr)
{
    const int base = oy * g->sh - g->pt; /* input row of tap ky is base + ky */
    const int ky0 = base < 0 ? -base : 0;
    const int ky1 = g->h - base < g->kh ? g->h - base : g->kh;
    int ia, ib, unused;
    valid_cols(g->w, g->sw, g->pl, 0, g->ow, &ia, &unused);
    valid_cols(g->w, g->sw, g->pl, g->kw - 1, g->ow, &unused, &ib);
    if (ib < ia)
        ia = ib = 0; /* no column sees every tap: all of the row is border */

    for (int ox = 0; ox < g->ow; ox++)
        yr[ox] = b0;
    for (int ky = ky0; ky < ky1; ky++) {
        const float *row = xc + (size_t)(base + ky) * g->w;
        for (int kx = 0; kx < g->kw; kx++) {
            const float wv = wk[ky * g->kw + kx];
            int lo, hi;
            valid_cols(g->w, g->sw, g->pl, kx, g->ow, &lo, &hi);
            const int left_end = hi < ia ? hi : ia, right_start = lo > ib ? lo : ib;
            for (int ox = lo; ox < left_end; ox++)
                yr[ox] += wv * row[ox * g->sw - g->pl + kx];
            for (int ox = right_start; ox < hi; ox++)
                yr[ox] += wv * row[ox * g->sw - g->pl + kx];
        }
    }

    int ox = ia;
    if (g->sw == 1) {
        for (; ox + DW_BLOCK <= ib; ox += DW_BLOCK) {
            float acc[DW_BLOCK];
            for (int v = 0; v < DW_BLOCK; v++)
                acc[v] = b0;
            for (int ky = ky0; ky < ky1; ky++) {
                const float *row = xc + (size_t)(base + ky) * g->w + ox - g->pl;
                const float *wr = wk + ky * g->kw;
                for (int kx = 0; kx < g->kw; kx++) {
                    const float wv = wr[kx];
                    const float *src = row + kx;
                    for (int v = 0; v < DW_BLOCK; v++)
                        acc[v] += wv * src[v];
                }
            }
            for (int v = 0; v < DW_BLOCK; v++)
                yr[ox + v] = acc[v];
        }
    }
    for (; ox < ib; ox++) {
        float acc = b0;
        for (int ky = ky0; ky < ky1; ky++) {
            const float *row = xc + (size_t)(base + ky) * g->w + ox * g->sw - g->pl;
            const float *wr = wk + ky * g->kw;
            for (int kx = 0; kx < g->kw; kx++)
                acc += wr[kx] * row[kx];
        }
        yr[ox] = acc;
    }
}

/* Depthwise (one input channel per group, any channel multiplier): a direct loop,
 * since each output channel sees only kh*kw*plane multiply-adds and im2col would only
 * copy. */
static void conv_depthwise(const conv_geom *g, const float *x, const float *w,
                           const float *bias, float *y)
{
    const size_t in_plane = (size_t)g->h * g->w, out_plane = (size_t)g->p;
    for (int n = 0; n < g->n; n++) {
        for (int oc = 0; oc < g->co; oc++) {
            const float *xc = x + ((size_t)n * g->c + oc / g->cog) * in_plane;
            const float *wk = w + (size_t)oc * g->kh * g->kw;
            float *yc = y + ((size_t)n * g->co + oc) * out_plane;
            const float b0 = bias ? bias[oc] : 0.0f;
            for (int oy = 0; oy < g->oh; oy++)
                dw_row(g, xc, wk, b0, oy, yc + (size_t)oy * g->ow);
        }
    }
}

/* The output y shares no memory with the convolution's operands (bias and slope may
 * be NULL). */
static fm_status conv_disjoint(const char *op, const fm_tensor *y, const fm_tensor *x,
                               const fm_tensor *w, const fm_tensor *bias,
                               const fm_tensor *slope, fm_error *err)
{
    fm_status st;
    if ((st = nn_check_disjoint(op, "the input", y, x, err)) ||
        (st = nn_check_disjoint(op, "the weights", y, w, err)) ||
        (st = nn_check_disjoint(op, "the bias", y, bias, err)))
        return st;
    return nn_check_disjoint(op, "the slope", y, slope, err);
}

/* 1 when g's input and output are 1x1 planes and one tap, at the padding's offset,
 * meets the input pixel: the others only ever meet padding. */
static int skinny_center(const conv_geom *g)
{
    return g->groups == 1 && g->h == 1 && g->w == 1 && g->oh == 1 && g->ow == 1 &&
           g->pt < g->kh && g->pl < g->kw;
}

/* nn_kept_layout's maker for nn_gemm_skinny: w (co x k) transposed to k x co, or with
 * arg 1 the taps at (pt, pl) alone, c x co. */
static void make_transposed(const conv_geom *g, const float *w, int arg, float *dst)
{
    for (int o = 0; o < g->co; o++) {
        if (arg) {
            for (int ci = 0; ci < g->c; ci++)
                dst[(size_t)ci * g->co + o] =
                    w[(((size_t)o * g->cpg + ci) * g->kh + g->pt) * g->kw + g->pl];
        } else {
            for (int q = 0; q < g->k; q++)
                dst[(size_t)q * g->co + o] = w[(size_t)o * g->k + q];
        }
    }
}

/* fm_nn_conv2d, and fm_nn_conv2d_prelu when slope is not NULL (already checked): the
 * direct kernel applies the slope as it stores; other paths leave it to the caller,
 * and *fused says which happened. */
static fm_status conv_forward(const char *op, fm_arena *a, const fm_tensor *x,
                              const fm_tensor *w, const fm_tensor *bias,
                              const fm_tensor *slope, const fm_conv2d_params *p, fm_tensor *y,
                              int *fused, fm_error *err)
{
    const int measuring = nn_measuring(a);
    fm_status st;
    conv_geom g;
    *fused = 0;
    if ((st = nn_conv_operands(op, x, w, "output", y, p, measuring, &g, err)) ||
        (st = nn_check_vec(op, "bias", bias, (size_t)g.co, measuring, err)) ||
        (st = nn_check_shape(op, "output", y, g.n, g.co, g.oh, g.ow, err)) ||
        (st = conv_disjoint(op, y, x, w, bias, slope, err)))
        return st;

    conv_plan plan = conv_choose(&g);
    size_t mark = fm_arena_mark(a);
    float *scratch = NULL;
    if (plan.scratch && (st = nn_scratch(a, op, plan.scratch, &scratch, err)))
        return st;
    nn_count_flop(a, 2.0 * g.n * g.co * (double)g.p * g.k);
    if (measuring) {
        fm_arena_reset(a, mark);
        return FM_OK;
    }
    nn_blas_ready();

    const float *b = bias ? bias->data : NULL;
    const size_t in_plane = (size_t)g.h * g.w, out_plane = (size_t)g.p;
    const size_t wg_size = (size_t)g.cog * g.k;
    switch (plan.mode) {
    case CONV_DIRECT:
        nn_conv_direct(&g, x->data, w->data, b, slope ? slope->data : NULL,
                       slope ? (int)fm_tensor_count(slope) : 0, y->data, scratch);
        *fused = slope != NULL;
        break;
    case CONV_S2D: {
        conv_geom g2;
        s2d_geom(&g, &g2);
        float *x2 = scratch, *w2 = x2 + (size_t)g2.c * g2.h * g2.w;
        s2d_weights(&g, &g2, w->data, w2);
        for (int n = 0; n < g.n; n++) {
            s2d_input(&g, &g2, x->data + (size_t)n * g.c * in_plane, x2);
            nn_conv_direct(&g2, x2, w2, b, slope ? slope->data : NULL,
                           slope ? (int)fm_tensor_count(slope) : 0,
                           y->data + (size_t)n * g.co * out_plane,
                           w2 + (size_t)g2.co * g2.k);
        }
        *fused = slope != NULL;
        break;
    }
    case CONV_WINOGRAD:
        nn_conv_winograd(&g, x->data, w->data, b, y->data, scratch);
        break;
    case CONV_DEPTHWISE:
        conv_depthwise(&g, x->data, w->data, b, y->data);
        break;
    case CONV_1X1:
        for (int n = 0; n < g.n; n++) {
            for (int gr = 0; gr < g.groups; gr++) {
                const float *xg = x->data + ((size_t)n * g.c + (size_t)gr * g.cpg) * in_plane;
                float *yg = y->data + ((size_t)n * g.co + (size_t)gr * g.cog) * out_plane;
                nn_gemm(g.cog, g.p, g.k, w->data + gr * wg_size, g.k, xg, g.p, yg, g.p);
                add_bias(yg, out_plane, g.cog, g.p, b ? b + (size_t)gr * g.cog : NULL);
            }
        }
        break;
    case CONV_TILED:
        for (int n = 0; n < g.n; n++) {
            for (int gr = 0; gr < g.groups; gr++) {
                const float *xg = x->data + ((size_t)n * g.c + (size_t)gr * g.cpg) * in_plane;
                float *yg = y->data + ((size_t)n * g.co + (size_t)gr * g.cog) * out_plane;
                for (int p0 = 0; p0 < g.p; p0 += plan.tile) {
                    int cols = g.p - p0 < plan.tile ? g.p - p0 : plan.tile;
                    nn_im2col(&g, xg, p0, p0 + cols, scratch, (size_t)cols);
                    nn_gemm(g.cog, cols, g.k, w->data + gr * wg_size, g.k, scratch, cols,
                            yg + p0, g.p);
                    add_bias(yg + p0, out_plane, g.cog, cols,
                             b ? b + (size_t)gr * g.cog : NULL);
                }
            }
        }
        break;
    case CONV_GATHERED: {
        float *col = scratch;
        float *res = scratch + (size_t)g.k * plan.imgs * g.p;
        /* One to four output columns (a layer whose output is one pixel, at one to four
         * faces): the weights kept transposed, multiplied by nn_gemm_skinny; of a 1x1
         * input only the tap at the padding's offset meets a pixel, and only it is read
         * (the other taps' products are zeros: the same sums). */
        const float *wt = NULL;
        const int center = skinny_center(&g);
        if (g.groups == 1 && (size_t)plan.imgs * g.p <= NN_GEMM_SKINNY &&
            fm_nn_own_gemm_active())
            wt = nn_kept_layout(&g, w->data, NN_KEEP_TRANSPOSED, center,
                                (size_t)g.co * (size_t)(center ? g.c : g.k), make_transposed);
        for (int n0 = 0; n0 < g.n; n0 += plan.imgs) {
            int imgs = g.n - n0 < plan.imgs ? g.n - n0 : plan.imgs;
            int cols = imgs * g.p;
            for (int gr = 0; gr < g.groups; gr++) {
                if (wt && center) {
                    for (int j = 0; j < imgs; j++)
                        for (int ci = 0; ci < g.c; ci++)
                            col[(size_t)ci * cols + j] = x->data[(size_t)(n0 + j) * g.c + ci];
                } else {
                    for (int j = 0; j < imgs; j++) {
                        const float *xg =
                            x->data + ((size_t)(n0 + j) * g.c + (size_t)gr * g.cpg) * in_plane;
                        nn_im2col(&g, xg, 0, g.p, col + (size_t)j * g.p, (size_t)cols);
                    }
                }
                if (wt)
                    nn_gemm_skinny(g.co, cols, center ? g.c : g.k, wt, col, cols, res, cols);
                else
                    nn_gemm(g.cog, cols, g.k, w->data + gr * wg_size, g.k, col, cols, res,
                            cols);
                for (int j = 0; j < imgs; j++) {
                    for (int m = 0; m < g.cog; m++) {
                        const float *src = res + (size_t)m * cols + (size_t)j * g.p;
                        float *dst = y->data + ((size_t)(n0 + j) * g.co +
                                                (size_t)gr * g.cog + m) * out_plane;
                        float bv = b ? b[(size_t)gr * g.cog + m] : 0.0f;
                        for (int q = 0; q < g.p; q++)
                            dst[q] = src[q] + bv;
                    }
                }
            }
        }
        break;
    }
    }
    fm_arena_reset(a, mark);
    return FM_OK;
}

fm_status fm_nn_conv2d(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                       const fm_tensor *bias, const fm_conv2d_params *p, fm_tensor *y,
                       fm_error *err)
{
    int fused;
    return conv_forward("conv2d", a, x, w, bias, NULL, p, y, &fused, err);
}

fm_status fm_nn_conv2d_prelu(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                             const fm_tensor *bias, const fm_tensor *slope,
                             const fm_conv2d_params *p, fm_tensor *y, fm_error *err)
{
    const char *op = "conv2d_prelu";
    fm_status st;
    if (slope) {
        /* The slope goes with the output channels: w's first dimension. */
        if ((st = nn_check(op, "weights", w, nn_measuring(a), err)) ||
            (st = nn_check(op, "slope", slope, nn_measuring(a), err)))
            return st;
        const fm_tensor out = fm_tensor_make(1, w->n, 1, 1, NULL);
        if ((st = nn_check_slope(op, slope, &out, err)))
            return st;
    }
    int fused = 0;
    st = conv_forward(op, a, x, w, bias, slope, p, y, &fused, err);
    if (!st && slope && !fused)
        st = fm_nn_prelu(a, y, slope, y, err);
    return st;
}

/* See nn.h. */
fm_status fm_nn_conv2d_prelu_maxpool(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                                     const fm_tensor *bias, const fm_tensor *slope,
                                     const fm_conv2d_params *p, const fm_pool2d_params *pool,
                                     fm_tensor *work, fm_tensor *y, fm_error *err)
{
    const char *op = "conv2d_prelu_maxpool";
    const int measuring = nn_measuring(a);
    fm_status st;
    conv_geom g;
    fm_tensor cs, ps;
    if ((st = nn_conv_operands(op, x, w, "output", y, p, measuring, &g, err)) ||
        (st = nn_check_vec(op, "bias", bias, (size_t)g.co, measuring, err)) ||
        (st = fm_nn_conv2d_shape(x, w, p, &cs, err)) ||
        (st = fm_nn_pool2d_shape(&cs, pool, &ps, err)) ||
        (st = nn_check_shape(op, "output", y, ps.n, ps.c, ps.h, ps.w, err)) ||
        (st = conv_disjoint(op, y, x, w, bias, slope, err)))
        return st;
    if (slope) {
        const fm_tensor out = fm_tensor_make(1, w->n, 1, 1, NULL);
        if ((st = nn_check(op, "slope", slope, measuring, err)) ||
            (st = nn_check_slope(op, slope, &out, err)))
            return st;
    }
    const int fused = pool->kernel_h == 2 && pool->kernel_w == 2 && pool->stride_h == 2 &&
                      pool->stride_w == 2 && !pool->pad_top && !pool->pad_left &&
                      !pool->pad_bottom && !pool->pad_right && nn_conv_pool_fits(&g);
    /* a convolution run as flat runs (R-Net's and O-Net's first) and a stride-2 pool:
     * the pool reads the runs where they lie, instead of their copy */
    const int flat = !fused && pool->kernel_h == pool->kernel_w &&
                     (pool->kernel_h == 2 || pool->kernel_h == 3) && pool->stride_h == 2 &&
                     pool->stride_w == 2 && !pool->pad_top && !pool->pad_left &&
                     !pool->pad_bottom && !pool->pad_right && nn_conv_flat_pool_fits(&g);
    size_t mark = fm_arena_mark(a);
    if (flat && !measuring) {
        float *scratch = NULL;
        if ((st = nn_scratch(a, op, nn_direct_scratch(&g), &scratch, err)))
            return st;
        nn_count_flop(a, 2.0 * g.n * g.co * (double)g.p * g.k);
        nn_conv_flat_pool(&g, pool->kernel_h, ps.h, ps.w, x->data, w->data,
                          bias ? bias->data : NULL, slope ? slope->data : NULL,
                          slope ? (int)fm_tensor_count(slope) : 0, y->data, scratch);
        fm_arena_reset(a, mark);
        return FM_OK;
    }
    if (fused && !measuring) {
        float *scratch = NULL;
        if ((st = nn_scratch(a, op, nn_direct_scratch(&g), &scratch, err)))
            return st;
        nn_count_flop(a, 2.0 * g.n * g.co * (double)g.p * g.k);
        nn_conv_pool_direct(&g, ps.h, ps.w, x->data, w->data, bias ? bias->data : NULL,
                            slope ? slope->data : NULL, slope ? (int)fm_tensor_count(slope) : 0,
                            y->data, scratch);
        fm_arena_reset(a, mark);
        return FM_OK;
    }
    /* the two steps, the convolution's output in work or scratch (measured so always:
     * they need more than the one pass, and another instruction set may run them) */
    fm_tensor c = cs;
    if (work) {
        if ((st = nn_check(op, "work", work, measuring, err)) ||
            (st = nn_check_shape(op, "work", work, cs.n, cs.c, cs.h, cs.w, err)))
            return st;
        c.data = work->data;
    } else if ((st = nn_scratch(a, op, fm_tensor_count(&cs), &c.data, err))) {
        return st;
    }
    st = fm_nn_conv2d_prelu(a, x, w, bias, slope, p, &c, err);
    if (!st)
        st = fm_nn_maxpool2d(a, &c, pool, y, err);
    fm_arena_reset(a, mark);
    return st;
}
