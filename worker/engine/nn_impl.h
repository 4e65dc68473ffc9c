/* nn_impl.h - private helpers shared by the engine's source files (worker/nn_*.c):
 * operand checks that produce readable messages, overlap tests, scratch from the
 * arena, and the OpenBLAS thread default. Not part of the public API. */
#ifndef FACEMILL_NN_IMPL_H
#define FACEMILL_NN_IMPL_H

#include "facemill/nn.h"

#include <limits.h>
#include <stddef.h>

/* Room for "[2147483647, 2147483647, 2147483647, 2147483647]". */
typedef struct nn_shape_text {
    char s[64];
} nn_shape_text;

/* Formats t's shape as "[n, c, h, w]" into buf and returns buf->s. */
const char *nn_shape(const fm_tensor *t, nn_shape_text *buf);

/* 1 when every value is >= 1 and their product is <= INT_MAX. */
int nn_dims_fit(long long n, long long c, long long h, long long w);

/* Checks one operand of op: not NULL, every dimension >= 1, at most INT_MAX elements,
 * and data present unless measuring. FM_ERR_INVALID naming op and name otherwise. */
fm_status nn_check(const char *op, const char *name, const fm_tensor *t, int measuring,
                   fm_error *err);

/* Checks an optional per-channel operand (bias, scale, ...): NULL passes; otherwise as
 * nn_check and with exactly count elements. */
fm_status nn_check_vec(const char *op, const char *name, const fm_tensor *t, size_t count,
                       int measuring, fm_error *err);

/* Checks that y has exactly the shape [n, c, h, w]. */
fm_status nn_check_shape(const char *op, const char *name, const fm_tensor *y, int n,
                         int c, int h, int w, fm_error *err);

/* 1 when the data of a and b share at least one byte (0 when either is NULL/absent). */
int nn_overlap(const fm_tensor *a, const fm_tensor *b);

/* For an output y that may run in place over input x: FM_ERR_INVALID when they overlap
 * without being exactly the same data. */
fm_status nn_check_inplace(const char *op, const char *name, const fm_tensor *y,
                           const fm_tensor *x, fm_error *err);

/* For an output y that must not overlap input x (x may be NULL). */
fm_status nn_check_disjoint(const char *op, const char *name, const fm_tensor *y,
                            const fm_tensor *x, fm_error *err);

/* 1 when ops on a only validate and count (a measuring arena). */
static inline int nn_measuring(const fm_arena *a)
{
    return a && fm_arena_is_measuring(a);
}

/* Takes floats * sizeof(float) bytes of scratch from a for op; *out is NULL on a
 * measuring arena. FM_ERR_ARENA (message prefixed with op) when a is NULL or full. */
fm_status nn_scratch(fm_arena *a, const char *op, size_t floats, float **out, fm_error *err);

/* Adds flop to a's count (fm_arena_flop); nothing when a is NULL. */
void nn_count_flop(fm_arena *a, double flop);

/* Applies the default of one OpenBLAS thread unless fm_nn_set_threads was called.
 * Every operation that calls BLAS calls this first. */
void nn_blas_ready(void);

/* The BLAS thread count fm_nn_set_threads asked for (1 until it is called), without
 * asking OpenBLAS. */
int nn_blas_threads(void);

/* c (m x n, row stride ldc) = a (m x k, lda) b (k x n, ldb), all row-major: the
 * engine's own kernel with AVX2 or AVX-512 and one BLAS thread (nn_gemm.c: each
 * element summed in the order of k, the same bits on both sets), cblas_sgemm
 * otherwise. m, n, k >= 1. */
void nn_gemm(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
             int ldc);

/* Most columns nn_gemm_skinny takes. */
#define NN_GEMM_SKINNY 4

/* c (m x n, ldc) = at^T b for 1 <= n <= NN_GEMM_SKINNY columns, at being a (m x k)
 * transposed (k x m, row-major: a kept layout of weights), b k x n (ldb): the lanes
 * run along c's rows. Each element summed as nn_gemm's own kernel sums it (the same
 * bits). Only while fm_nn_own_gemm_active(); the caller checks both. */
void nn_gemm_skinny(int m, int n, int k, const float *at, const float *b, int ldb, float *c,
                    int ldc);

/* ---- shared by the forward and backward passes (nn_conv.c, nn_pool.c, nn_grad.c) -- */

/* Convolution geometry, validated once by nn_conv_geometry. */
typedef struct conv_geom {
    int n, c, h, w;        /* input */
    int co, oh, ow;        /* output channels and size */
    int kh, kw, sh, sw, pt, pl;
    int groups, cpg, cog;  /* groups, input and output channels per group */
    int k;                 /* rows of the im2col matrix: cpg * kh * kw */
    int p;                 /* output pixels per image: oh * ow */
} conv_geom;

/* Checks x, w and p for a convolution (op names the operation in messages) and fills
 * g. x and w must already have passed nn_check. */
fm_status nn_conv_geometry(const char *op, const fm_tensor *x, const fm_tensor *w,
                           const fm_conv2d_params *p, conv_geom *g, fm_error *err);

/* Checks the operands a convolution's forward and backward passes share (op names
 * the operation): x, w and the third operand t (name: "output" or "dy") pass
 * nn_check, in that order, then nn_conv_geometry fills g. */
fm_status nn_conv_operands(const char *op, const fm_tensor *x, const fm_tensor *w,
                           const char *name, const fm_tensor *t, const fm_conv2d_params *p,
                           int measuring, conv_geom *g, fm_error *err);

/* How an im2col convolution, forward or backward, lays out its multiplies. */
typedef enum nn_conv_layout {
    NN_CONV_1X1,      /* 1x1 stride 1 unpadded: the input is its own im2col matrix */
    NN_CONV_TILED,    /* one image at a time, im2col over tiles of output pixels */
    NN_CONV_GATHERED, /* several images side by side in one multiply */
} nn_conv_layout;

/* The layout for g: images of at least gather_below output pixels one at a time (1x1
 * when g allows it, else in tiles of *tile pixels), smaller ones *imgs at a time. A
 * multiply takes col_floats / g->k columns of im2col, at least min_cols, and at most
 * every image; the other output is left as it is. */
nn_conv_layout nn_conv_layout_of(const conv_geom *g, int col_floats, int min_cols,
                                 int gather_below, int *tile, int *imgs);

/* Writes output pixels [p0, p1) of the im2col matrix of one image's channel group:
 * row r = (ci * kh + ky) * kw + kx holds, for each pixel, the input under tap (ky, kx)
 * of channel ci (0 in the padding), at col + r * ld. x points at the group's first
 * channel. */
void nn_im2col(const conv_geom *g, const float *x, int p0, int p1, float *col, size_t ld);

/* The adjoint of nn_im2col: adds every element of columns [p0, p1) of col (same
 * layout and ld) to the input pixel it was copied from; padding taps are dropped.
 * dx points at the group's first channel of one image's input gradient. */
void nn_col2im_add(const conv_geom *g, const float *col, int p0, int p1, size_t ld,
                   float *dx);

/* Checks a PReLU slope (already through nn_check) against the input x of op: one
 * element, or one per channel of x. */
fm_status nn_check_slope(const char *op, const fm_tensor *slope, const fm_tensor *x,
                         fm_error *err);

/* Checks the operands a dense layer's forward and backward passes share (op names
 * the operation): x, w and the third operand t (name: "output" or "dy") pass
 * nn_check, in that order, and w takes as many inputs as x has per image. *in gets
 * that count. */
fm_status nn_dense_operands(const char *op, const fm_tensor *x, const fm_tensor *w,
                            const char *name, const fm_tensor *t, int measuring, size_t *in,
                            fm_error *err);

/* Pooling output size, validated once by nn_pool_geometry. */
typedef struct pool_geom {
    int oh, ow;
} pool_geom;

/* Checks p against an input of x's shape (op names the operation) and fills g with
 * the output size of fm_nn_pool2d_shape. x must already have passed nn_check. */
fm_status nn_pool_geometry(const char *op, const fm_tensor *x, const fm_pool2d_params *p,
                           pool_geom *g, fm_error *err);

/* Window of output index o along one axis: [*s, *e) clipped to the input, and the
 * size *span of the window clipped to the padded input (for count_include_pad). */
static inline void nn_pool_window(int o, int stride, int pad0, int pad1, int k, int in,
                                  int *s, int *e, int *span)
{
    int start = o * stride - pad0;
    int end = start + k;
    int end_pad = end < in + pad1 ? end : in + pad1;
    *span = end_pad - start;
    *s = start < 0 ? 0 : start;
    *e = end < in ? end : in;
}

/* ---- the engine's own vector kernels (nn_direct.c) ------------------------------ */

/* 1 when the direct convolution applies to g on this CPU and ISA setting: stride 1,
 * unpadded, one group, outputs wide enough for its tiles. */
int nn_direct_fits(const conv_geom *g);

/* nn_direct_fits with max_k multiply-adds per output allowed in column tiles instead
 * of the tuned limit (the space-to-depth stride-2 path, nn_conv.c). */
int nn_direct_fits_k(const conv_geom *g, int max_k);

/* Floats of scratch nn_conv_direct needs for g (packed weights, bias and slope). */
size_t nn_direct_scratch(const conv_geom *g);

/* y = conv(x, w) + bias, then PReLU with slope (n_slope elements: 1 or g->co) when
 * slope is not NULL, for every image of g; only when nn_direct_fits(g). bias may be
 * NULL. scratch: nn_direct_scratch(g) floats. */
void nn_conv_direct(const conv_geom *g, const float *x, const float *w, const float *bias,
                    const float *slope, int n_slope, float *y, float *scratch);

/* 1 when g (a 3x3 convolution nn_conv_direct runs in column tiles, row by row) can
 * run with a 2x2 stride-2 unpadded max pool after it in one pass: on AVX-512 (whose
 * 32 registers hold two rows' tiles). */
int nn_conv_pool_fits(const conv_geom *g);

/* The 2x2 stride-2 max pool (output ph x pw per channel, ceil mode or not) of
 * nn_conv_direct's output, for every image of g, without storing that output: the
 * same bits as the two steps. Only when nn_conv_pool_fits(g); scratch as
 * nn_conv_direct. */
void nn_conv_pool_direct(const conv_geom *g, int ph, int pw, const float *x, const float *w,
                         const float *bias, const float *slope, int n_slope, float *y,
                         float *scratch);

/* 1 when nn_conv_direct runs g as flat runs (rows of g->w outputs, the last
 * g->w - g->ow of each not kept: R-Net's and O-Net's first convolutions), whose copy
 * into rows of g->ow nn_conv_flat_pool can leave out. */
int nn_conv_flat_pool_fits(const conv_geom *g);

/* nn_conv_direct followed by the k x k stride-2 unpadded max pool (k = 2 or 3; output
 * ph x pw per channel, ceil mode or not), the pool reading the flat runs where they
 * lie: the same bits as the two steps. Only when nn_conv_flat_pool_fits(g); scratch as
 * nn_conv_direct. */
void nn_conv_flat_pool(const conv_geom *g, int k, int ph, int pw, const float *x,
                       const float *w, const float *bias, const float *slope, int n_slope,
                       float *y, float *scratch);

/* ---- kept layouts of unchanging weights (nn_keep.c) ------------------------------ */

/* The layouts kept: the position tiles' packed panels (arg: the tile's channels),
 * Winograd F(2x2, 3x3) through sgemm's transformed weights, the direct kernel's
 * F(2x2, 3x3) and F(4x4, 3x3) transformed weights (arg: the set's product group), and
 * the weights transposed for nn_gemm_skinny (arg 1: only the tap at the padding's
 * offset, for a 1x1 input plane; 0: every tap). */
enum { NN_KEEP_POSITIONS, NN_KEEP_WINOGRAD, NN_KEEP_WT2, NN_KEEP_WT4, NN_KEEP_TRANSPOSED };

/* Makes the layout of g's weights w into dst. */
typedef void (*nn_layout_fn)(const conv_geom *g, const float *w, int arg, float *dst);

/* The layout `kind` of g's weights w (floats floats, made by make(g, w, arg, dst)):
 * kept from an earlier call when w lies in memory declared unchanging
 * (fm_nn_const_declare), made now and kept when not yet made; NULL when w lies
 * elsewhere or memory ran out, and then the caller makes it itself. A kept layout is
 * never written again and serves every thread. */
const float *nn_kept_layout(const conv_geom *g, const float *w, int kind, int arg,
                            size_t floats, nn_layout_fn make);

/* ---- Winograd F(2x2, 3x3) (nn_winograd.c) ---------------------------------------- */

/* 1 when g is a 3x3 stride-1 one-group convolution the Winograd path runs faster than
 * im2col + sgemm (and fm_nn_set_winograd has not turned it off). */
int nn_winograd_fits(const conv_geom *g);

/* 0 after fm_nn_set_winograd(0): neither Winograd path runs (nn_direct.c has the
 * other, for P-Net's wide layers). */
int nn_winograd_enabled(void);

/* U = G w G^T for every output and input channel of g's 3x3 weights w: the 16 values
 * of output o, input i at u[e * plane + o * g->c + i] (group 1), e = 4 * row + column,
 * or with outputs in groups of `group` interleaved (group divides g->co), at
 * u[e * plane + ((o / group) * g->c + i) * group + o % group];
 * G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. */
void nn_winograd_weights(const conv_geom *g, const float *w, float *u, size_t plane,
                         int group);

/* Floats of scratch nn_conv_winograd needs for g. */
size_t nn_winograd_scratch(const conv_geom *g);

/* y = conv(x, w) + bias (bias may be NULL) for every image of g; only when
 * nn_winograd_fits(g). */
void nn_conv_winograd(const conv_geom *g, const float *x, const float *w, const float *bias,
                      float *y, float *scratch);

/* The vector input and output transforms of nn_conv_winograd for the instruction set
 * in effect (nn_direct_tiles.h, "Winograd F(2x2, 3x3) through sgemm", has their
 * contracts): 1 and both set with AVX2 and FMA or better; 0, neither touched, when the
 * portable loops run. Both give the portable loops' bits. */
typedef void (*nn_wg_input_fn)(const float *in, int width, int run, float *v, size_t es);
typedef void (*nn_wg_output_fn)(const float *m, size_t es, size_t ld, int co,
                                const float *bias, int run, int ncols, int two_rows,
                                float *y0, size_t plane, int ow);
int nn_wg_kernels(nn_wg_input_fn *in, nn_wg_output_fn *out);

/* y[i] = x[i] > 0 ? x[i] : s * x[i] for count floats (y may be x). */
void nn_prelu_plane(const float *x, float s, float *y, size_t count);

/* Max pooling of one h x w plane with a k x k window (k = 2 or 3), stride 2, no
 * padding, ceil mode, into oh x ow. 0 (nothing done) when no vector kernel applies. */
int nn_maxpool_s2(const float *xc, int h, int w, int k, float *yc, int oh, int ow);

/* nn_maxpool_s2 of a plane whose rows lie stride >= w floats apart (the floats past w
 * in a row are not read into any maximum). */
int nn_maxpool_s2_strided(const float *xc, int h, int w, size_t stride, int k, float *yc,
                          int oh, int ow);

#endif
