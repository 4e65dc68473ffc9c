/* nn_winograd.c - 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3)
 * (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
 *
 * Why it exists: the dlib ResNet is 3x3 stride-1 convolutions almost throughout, and
 * as im2col + sgemm they spend a third of their time outside the multiply (im2col
 * copies every input pixel nine times, sgemm packs that copy again). F(2x2, 3x3)
 * computes each 2x2 block of output from a 4x4 block of input with 16 multiplies per
 * input and output channel instead of 36, and its transformed input is 4 floats per
 * input pixel instead of 9. The multiplies become 16 matrix products (nn_gemm), one
 * per position e of the 4x4 transformed block:
 *
 *     M[e] (co x T) = U[e] (co x c) * V[e] (c x T)
 *
 * U = G w G^T is the transformed weights (computed per call into scratch, a few
 * percent of the convolution's work at the shapes chosen below, or, for a model's
 * smaller layers, once and kept: WINO_KEEP_BYTES), V = B^T d B the
 * transformed input blocks (T blocks at a time, across the images of the batch, so
 * small images still make wide multiplies) and each 2x2 output block is A^T M A + bias.
 * Rounding differs from the direct sum by a few units in the last place of the
 * largest terms; the tests hold it to the same tolerance as the other paths.
 *
 * The transforms run as vector kernels with AVX2 or AVX-512 (nn_direct_tiles.h,
 * through nn_wg_kernels), which give the portable loops below the same bits.
 *
 * Used for ordinary (one group) 3x3 stride-1 convolutions, any padding, with enough
 * channels and blocks for the multiplies to be efficient (nn_winograd_fits; tuned with
 * ops/bench/bench_ops.c). fm_nn_set_winograd turns it off for comparisons. */
#include "nn_impl.h"

#include <string.h>

/* Tuning (ops/bench/bench_ops.c). Below these, im2col + sgemm is as fast or faster:
 * the multiplies are 16 times narrower than im2col's, and the transformed weights
 * (16/9 of the weights) must be used by enough blocks: at least as many as there are
 * input channels (128 channels on 25 blocks, one 9x9 face, ran at half im2col's
 * speed; on 200 blocks, eight faces, 1.2 times faster). */
#ifndef WINO_MIN_CHANNELS
#define WINO_MIN_CHANNELS 16
#endif
#ifndef WINO_MIN_BLOCKS
#define WINO_MIN_BLOCKS 64 /* 2x2 output blocks in one call, all images together */
#endif
#ifndef WINO_MAX_CHANNELS
#define WINO_MAX_CHANNELS 128 /* wider layers lose: their images are 5x5 and smaller */
#endif
/* Transformed input and products for one pass: about 1 MB, to stay in cache. */
#ifndef WINO_PASS_FLOATS
#define WINO_PASS_FLOATS (256 * 1024)
#endif

static int winograd_on = 1;

int fm_nn_set_winograd(int on)
{
    int was = winograd_on;
    winograd_on = on != 0;
    return was;
}

static long long blocks_of(const conv_geom *g)
{
    return (long long)g->n * ((g->oh + 1) / 2) * ((g->ow + 1) / 2);
}

int nn_winograd_enabled(void)
{
    return winograd_on;
}

int nn_winograd_fits(const conv_geom *g)
{
    return winograd_on && g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 &&
           g->groups == 1 && g->c >= WINO_MIN_CHANNELS && g->co >= WINO_MIN_CHANNELS &&
           g->c <= WINO_MAX_CHANNELS && g->co <= WINO_MAX_CHANNELS &&
           blocks_of(g) >= WINO_MIN_BLOCKS && blocks_of(g) >= g->c;
}

/* Blocks per pass: enough for wide multiplies, few enough to stay in cache. */
static int pass_blocks(const conv_geom *g)
{
    int wide = g->c > g->co ? g->c : g->co;
    long long t = WINO_PASS_FLOATS / (16LL * wide);
    if (t < 64)
        t = 64;
    long long all = blocks_of(g);
    return (int)(t < all ? t : all);
}

/* The 16 planes of V and of M lie this many floats apart beyond their size, so that
 * the 16 streams a transform reads or writes do not share cache sets. */
#define PLANE_GAP 16

/* One row of blocks as wide as the widest image row, for the input transform: four
 * padded input rows, then their four vertical transforms. */
static size_t row_floats(const conv_geom *g)
{
    return 8 * (size_t)(2 * ((g->ow + 1) / 2) + 2);
}

size_t nn_winograd_scratch(const conv_geom *g)
{
    size_t t = (size_t)pass_blocks(g);
    return 16 * ((size_t)g->co * g->c + ((size_t)g->c + (size_t)g->co) * t + 3 * PLANE_GAP) +
           row_floats(g);
}

/* U[e][o][i] = (G w[o][i] G^T)[e] (planes plane floats apart; with group > 1, outputs
 * in groups of that many, interleaved: U[e][o / group][i][o % group]),
 * G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. */
void nn_winograd_weights(const conv_geom *g, const float *w, float *u, size_t plane,
                         int group)
{
    for (int o = 0; o < g->co; o++) {
        for (int i = 0; i < g->c; i++) {
            const float *k = w + ((size_t)o * g->c + i) * 9;
            float t[4][3];
            for (int j = 0; j < 3; j++) {
                t[0][j] = k[j];
                t[1][j] = 0.5f * (k[j] + k[3 + j] + k[6 + j]);
                t[2][j] = 0.5f * (k[j] - k[3 + j] + k[6 + j]);
                t[3][j] = k[6 + j];
            }
            float *dst = u + ((size_t)(o / group) * g->c + i) * group + o % group;
            for (int r = 0; r < 4; r++) {
                dst[(r * 4 + 0) * plane] = t[r][0];
                dst[(r * 4 + 1) * plane] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
                dst[(r * 4 + 2) * plane] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
                dst[(r * 4 + 3) * plane] = t[r][2];
            }
        }
    }
}

/* A run of blocks in one row of blocks of one image: from block b (numbered across
 * images, row by row) to the row's end, at most left blocks. */
typedef struct block_run {
    int img, by, bx, len;
} block_run;

static block_run run_at(const conv_geom *g, long long b, int left)
{
    const int bh = (g->oh + 1) / 2, bw = (g->ow + 1) / 2;
    const int rest = (int)(b % ((long long)bh * bw));
    block_run r = {(int)(b / ((long long)bh * bw)), rest / bw, rest % bw, 0};
    r.len = bw - r.bx < left ? bw - r.bx : left;
    return r;
}

/* V[e][ci][j] (planes es floats apart, rows nb long) for blocks b0 .. b0 + nb - 1,
 * numbered across images, row by row. B^T d B per 4x4 input block d, with
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], computed a run of blocks of one row at
 * a time: first down the four input rows (contiguous, so it vectorises), then across. */
static void transform_input(const conv_geom *g, const float *x, long long b0, int nb,
                            float *v, size_t es, float *rows, nn_wg_input_fn vec)
{
    const int bw = (g->ow + 1) / 2;
    const size_t plane = (size_t)g->h * g->w;
    const int width = 2 * bw + 2; /* input columns a whole row of blocks reads */
    float *in = rows, *t = rows + 4 * (size_t)width;
    for (int j0 = 0; j0 < nb;) {
        block_run run_ = run_at(g, b0 + j0, nb - j0);
        const int img = run_.img, by = run_.by, bx0 = run_.bx, run = run_.len;
        const int y0 = 2 * by - g->pt, x0 = 2 * bx0 - g->pl, cols = 2 * run + 2;
        /* the input columns [x0, x0 + cols) that exist */
        const int lo = x0 >= 0 ? 0 : -x0 < cols ? -x0 : cols;
        const int hi = x0 + cols > g->w ? g->w - x0 : cols;
        const float *xi = x + (size_t)img * g->c * plane;
        for (int ci = 0; ci < g->c; ci++) {
            const float *xc = xi + (size_t)ci * plane;
            for (int r = 0; r < 4; r++) {
                float *dst = in + (size_t)r * width;
                const int yy = y0 + r;
                if (yy < 0 || yy >= g->h || hi <= lo) {
                    memset(dst, 0, (size_t)cols * sizeof *dst);
                    continue;
                }
                for (int q = 0; q < lo; q++)
                    dst[q] = 0.0f;
                memcpy(dst + lo, xc + (size_t)yy * g->w + x0 + lo,
                       (size_t)(hi - lo) * sizeof *dst);
                for (int q = hi; q < cols; q++)
                    dst[q] = 0.0f;
            }
            if (vec) {
                vec(in, width, run, v + (size_t)ci * nb + j0, es);
                continue;
            }
            const float *d0 = in, *d1 = in + width, *d2 = in + 2 * width, *d3 = in + 3 * width;
            float *t0 = t, *t1 = t + width, *t2 = t + 2 * width, *t3 = t + 3 * width;
            for (int q = 0; q < cols; q++) {
                t0[q] = d0[q] - d2[q];
                t1[q] = d1[q] + d2[q];
                t2[q] = d2[q] - d1[q];
                t3[q] = d1[q] - d3[q];
            }
            for (int r = 0; r < 4; r++) {
                const float *tr = t + (size_t)r * width;
                float *v0 = v + (size_t)(r * 4) * es + (size_t)ci * nb + j0;
                float *v1 = v0 + es, *v2 = v1 + es, *v3 = v2 + es;
                for (int j = 0; j < run; j++) {
                    const float a = tr[2 * j], bb = tr[2 * j + 1];
                    const float c = tr[2 * j + 2], dd = tr[2 * j + 3];
                    v0[j] = a - c;
                    v1[j] = bb + c;
                    v2[j] = c - bb;
                    v3[j] = bb - dd;
                }
            }
        }
        j0 += run;
    }
}

/* y for blocks b0 .. b0 + nb - 1 from M[e][o][j] (planes es floats apart): A^T M A +
 * bias, A^T = [1 1 1 0; 0 1 -1 -1]; the row and column past an odd output size are
 * dropped. */
static void transform_output(const conv_geom *g, const float *m, long long b0, int nb,
                             size_t es, const float *bias, float *y, nn_wg_output_fn vec)
{
    const size_t plane = (size_t)g->p;
    for (int j0 = 0; j0 < nb;) {
        block_run run_ = run_at(g, b0 + j0, nb - j0);
        const int img = run_.img, by = run_.by, bx0 = run_.bx, run = run_.len;
        const int oy = 2 * by, two_rows = oy + 1 < g->oh;
        /* blocks whose both columns exist; the last may have one */
        const int full = 2 * (bx0 + run) <= g->ow ? run : run - 1;
        if (vec) {
            vec(m + j0, es, (size_t)nb, g->co, bias, run, 2 * run - (full < run), two_rows,
                y + (size_t)img * g->co * plane + (size_t)oy * g->ow + 2 * bx0, plane, g->ow);
            j0 += run;
            continue;
        }
        for (int o = 0; o < g->co; o++) {
            const float *s = m + (size_t)o * nb + j0;
            const float bv = bias ? bias[o] : 0.0f;
            float *y0 = y + ((size_t)img * g->co + o) * plane + (size_t)oy * g->ow + 2 * bx0;
            float *y1 = y0 + g->ow;
            for (int j = 0; j < run; j++) {
                float r0[4], r1[4];
                for (int q = 0; q < 4; q++) {
                    const float m0 = s[(size_t)q * es + j], m1 = s[(size_t)(4 + q) * es + j];
                    const float m2 = s[(size_t)(8 + q) * es + j];
                    const float m3 = s[(size_t)(12 + q) * es + j];
                    r0[q] = m0 + m1 + m2;
                    r1[q] = m1 - m2 - m3;
                }
                y0[2 * j] = r0[0] + r0[1] + r0[2] + bv;
                if (j < full)
                    y0[2 * j + 1] = r0[1] - r0[2] - r0[3] + bv;
                if (two_rows) {
                    y1[2 * j] = r1[0] + r1[1] + r1[2] + bv;
                    if (j < full)
                        y1[2 * j + 1] = r1[1] - r1[2] - r1[3] + bv;
                }
            }
        }
        j0 += run;
    }
}

/* Transformed weights of at most WINO_KEEP_BYTES are kept for a model's weights
 * (nn_keep.c): the dlib ResNet's 32- and 64-channel layers, 2.2 MB in all, whose
 * transform was 4% of a face at batch 1. Larger ones (its 128-channel layers, which
 * take this path at batch 8 and more: 1 MB each) are transformed per call, where the
 * batch pays for it. */
#ifndef WINO_KEEP_BYTES
#define WINO_KEEP_BYTES (256 * 1024)
#endif

/* nn_kept_layout's maker: U with its planes PLANE_GAP apart, as nn_conv_winograd
 * reads it. */
static void make_u(const conv_geom *g, const float *w, int arg, float *u)
{
    (void)arg;
    nn_winograd_weights(g, w, u, (size_t)g->co * g->c + PLANE_GAP, 1);
}

void nn_conv_winograd(const conv_geom *g, const float *x, const float *w, const float *bias,
                      float *y, float *scratch)
{
    const int tmax = pass_blocks(g);
    const size_t eu = (size_t)g->co * g->c + PLANE_GAP;
    const size_t ev = (size_t)g->c * tmax + PLANE_GAP, em = (size_t)g->co * tmax + PLANE_GAP;
    float *uf = scratch;
    float *v = uf + 16 * eu;
    float *m = v + 16 * ev;
    float *rows = m + 16 * em;
    const float *u = NULL;
    if (16 * (size_t)g->co * g->c * sizeof *uf <= WINO_KEEP_BYTES)
        u = nn_kept_layout(g, w, NN_KEEP_WINOGRAD, 0, 16 * eu, make_u);
    if (!u) {
        nn_winograd_weights(g, w, uf, eu, 1);
        u = uf;
    }
    nn_wg_input_fn vin = NULL; /* the vector transforms, where the CPU has them */
    nn_wg_output_fn vout = NULL;
    nn_wg_kernels(&vin, &vout);
    const long long all = blocks_of(g);
    for (long long b0 = 0; b0 < all; b0 += tmax) {
        const int nb = (int)(all - b0 < tmax ? all - b0 : tmax);
        transform_input(g, x, b0, nb, v, ev, rows, vin);
        for (int e = 0; e < 16; e++)
            nn_gemm(g->co, nb, g->c, u + (size_t)e * eu, g->c, v + (size_t)e * ev, nb,
                    m + (size_t)e * em, nb);
        transform_output(g, m, b0, nb, em, bias, y, vout);
    }
}
