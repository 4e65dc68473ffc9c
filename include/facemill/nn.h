/* nn.h - the inference engine: NCHW float tensors, one scratch arena per worker, and
 * the operations facemill's networks are built from (convolution, pooling, dense,
 * activations, softmax, residual add, concat, normalisation).
 *
 * Model builders (small C functions, one per architecture) compose these operations
 * the way llama.cpp composes ggml operations; the engine itself knows nothing about
 * models or files.
 *
 * Conventions shared by every operation:
 *  - Tensors are dense NCHW float32 (n images, c channels, h rows, w columns, w
 *    fastest). Vectors and matrices are [n, c, 1, 1]. An fm_tensor never owns its data:
 *    data lives in an arena, a mapped model file or the caller's memory.
 *  - The first argument of every operation is the worker's arena. Operations that need
 *    scratch (convolution's im2col) take it from the arena and give it back before they
 *    return (mark/reset), so scratch never accumulates. When the arena is measuring, an
 *    operation validates every shape, counts its scratch and touches no data (data
 *    pointers may be NULL): a builder runs its graph once on a measuring arena to learn
 *    the exact size for a batch shape, then allocates one arena of that size. A NULL
 *    arena is allowed and means "compute, no scratch available": operations that need
 *    scratch then fail with FM_ERR_ARENA.
 *  - Outputs are tensors the caller has allocated with the shape the operation
 *    documents (the *_shape helpers compute it). Every shape is checked; a mismatch
 *    returns FM_ERR_INVALID with a message naming the operation, the operand and the
 *    shapes.
 *  - Inputs are never written, so an input tensor may wrap read-only memory (mapped
 *    weights) through a cast. Operations marked "in place allowed" accept an output
 *    whose data is exactly an input's data; any other overlap between an output and an
 *    input is rejected with FM_ERR_INVALID.
 *  - Nothing here allocates from the heap on the compute path, prints or exits. The
 *    operations are reentrant: threads may run them concurrently, each with its own
 *    arena and tensors. A tensor holds at most INT_MAX elements.
 */
#ifndef FACEMILL_NN_H
#define FACEMILL_NN_H

#include "facemill/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- tensors ------------------------------------------------------------------- */

typedef struct fm_tensor {
    int n, c, h, w; /* every dimension >= 1 for a valid tensor */
    float *data;    /* n*c*h*w floats, NCHW; not owned; NULL on a measuring arena */
} fm_tensor;

/* A tensor view over data (not copied, not owned). */
static inline fm_tensor fm_tensor_make(int n, int c, int h, int w, float *data)
{
    fm_tensor t = {n, c, h, w, data};
    return t;
}

/* Number of elements n*c*h*w (0 when any dimension is < 1). */
static inline size_t fm_tensor_count(const fm_tensor *t)
{
    if (t->n < 1 || t->c < 1 || t->h < 1 || t->w < 1)
        return 0;
    return (size_t)t->n * (size_t)t->c * (size_t)t->h * (size_t)t->w;
}

/* ---- arena --------------------------------------------------------------------- */

/* Alignment of every arena allocation (a cache line; enough for AVX-512 loads). */
#define FM_ARENA_ALIGN 64

/* A bump allocator over one buffer, sized once when a model loads. Allocations are
 * FM_ARENA_ALIGN-aligned and never freed one by one: fm_arena_mark() remembers the
 * fill level and fm_arena_reset() returns to it. A measuring arena has no buffer: it
 * only counts, with the same alignment rules, so its high-water mark is exactly the
 * size a real arena needs for the same sequence of allocations. Not thread-safe: one
 * arena per thread. */
typedef struct fm_arena fm_arena;

/* Creates an arena of exactly size bytes (size 0 is allowed: every non-empty
 * allocation then fails). On success *out owns a new arena (caller destroys it with
 * fm_arena_destroy). FM_ERR_INVALID when out is NULL, FM_ERR_NOMEM when the buffer
 * cannot be allocated; *out is then NULL. */
fm_status fm_arena_new(size_t size, fm_arena **out, fm_error *err);

/* Creates a measuring arena: allocations succeed without memory (they return NULL
 * pointers) and are only counted. *out is owned by the caller (fm_arena_destroy). */
fm_status fm_arena_new_measuring(fm_arena **out, fm_error *err);

/* Frees the arena and its buffer and sets *a to NULL. Accepts NULL and *a == NULL.
 * Every pointer and tensor handed out by the arena becomes invalid. */
void fm_arena_destroy(fm_arena **a);

/* 1 when a measures (see fm_arena_new_measuring), 0 otherwise (and for NULL). */
int fm_arena_is_measuring(const fm_arena *a);

/* Takes bytes from the arena at the next FM_ARENA_ALIGN boundary. On success *out is
 * the memory (uninitialised, valid until the arena is reset below this allocation or
 * destroyed; NULL on a measuring arena). When the allocation would end past the
 * arena's size, returns FM_ERR_ARENA with a message giving the request, the fill level
 * and the size; the arena and *out are left unchanged. FM_ERR_INVALID when a or out is
 * NULL. */
fm_status fm_arena_alloc(fm_arena *a, size_t bytes, void **out, fm_error *err);

/* Allocates t->data for an [n, c, h, w] tensor and sets t's shape. FM_ERR_INVALID for
 * a dimension < 1 or more than INT_MAX elements; FM_ERR_ARENA as fm_arena_alloc. The
 * tensor is uninitialised and owned by the arena. */
fm_status fm_tensor_alloc(fm_arena *a, int n, int c, int h, int w, fm_tensor *t,
                          fm_error *err);

/* Allocates t with shape's shape (shape->data is not looked at) and sets every element
 * to 0 (on a measuring arena: only counted): where a gradient starts, since grad.h's
 * backward passes accumulate. Errors as fm_tensor_alloc. */
fm_status fm_tensor_alloc_zero(fm_arena *a, const fm_tensor *shape, fm_tensor *t,
                               fm_error *err);

/* The current fill level, to pass to fm_arena_reset later. */
size_t fm_arena_mark(const fm_arena *a);

/* Returns the fill level to mark (a value fm_arena_mark gave, not above the current
 * level; a larger one is a bug, asserted): everything allocated after the mark is
 * released at once. reset(a, 0) empties the arena. The high-water mark is kept. */
void fm_arena_reset(fm_arena *a, size_t mark);

/* Bytes in use now (including alignment padding). */
size_t fm_arena_used(const fm_arena *a);

/* The largest fill level the arena has reached since it was created: on a measuring
 * arena, the exact size a real arena needs for what was run on it. */
size_t fm_arena_high_water(const fm_arena *a);

/* The arena's size in bytes (0 for a measuring arena). */
size_t fm_arena_size(const fm_arena *a);

/* Floating-point operations of the convolutions (fm_nn_conv2d) and dense layers
 * (fm_nn_dense) run on this arena since it was created, 2 per multiply-add of the
 * layer's shape (bias, activations and pooling are not counted). Measuring arenas
 * count too, so running a graph once on one gives its work per call; the difference
 * of two readings is the work done in between. 0 for NULL. */
double fm_arena_flop(const fm_arena *a);

/* ---- threads ------------------------------------------------------------------- */

/* Sets the number of OpenBLAS threads for the whole process (openblas_set_num_threads).
 * Until it is called the engine uses 1 thread, whatever OpenBLAS's own default is:
 * facemill runs one worker process per core, so processes x threads must stay <= cores.
 * Call at start-up, before threads run operations. FM_ERR_INVALID unless 1 <= n <= 1024. */
fm_status fm_nn_set_threads(int n, fm_error *err);

/* The number of threads OpenBLAS uses now (applying the default of 1 first when
 * fm_nn_set_threads has not been called). */
int fm_nn_threads(void);

/* ---- instruction sets ------------------------------------------------------------ */

/* The instruction sets of the engine's own kernels (direct convolution, PReLU, max
 * pooling; BLAS chooses its own, see blas.h). Every operation gives the same results
 * within rounding whichever runs (AVX2 and AVX-512: the same bits); the portable C
 * paths are always there. */
typedef enum fm_nn_isa {
    FM_NN_ISA_BASE = 0, /* portable C (whatever the compiler targets) */
    FM_NN_ISA_AVX2 = 1, /* x86-64 AVX2 and FMA, chosen at run time */
    FM_NN_ISA_AVX512 = 2, /* and AVX-512 F (convolution and pooling; PReLU as AVX2) */
} fm_nn_isa;

/* The best set this CPU supports. */
fm_nn_isa fm_nn_isa_best(void);

/* Caps the set the kernels use (for tests and comparisons; the default is the best)
 * and returns the one in effect: min(isa, fm_nn_isa_best()). Process-wide; call
 * before threads run operations and before arenas are measured: the scratch an
 * operation needs depends on its kernel. */
fm_nn_isa fm_nn_set_isa(fm_nn_isa isa);

/* The set in effect. */
fm_nn_isa fm_nn_isa_now(void);

/* "base", "avx2+fma" or "avx512". */
const char *fm_nn_isa_name(fm_nn_isa isa);

/* The set named name (as fm_nn_isa_name gives it), or -1. */
int fm_nn_isa_from_name(const char *name);

/* 3x3 stride-1 convolutions with enough channels and output run by Winograd's
 * F(2x2, 3x3) (fewer multiplies; results equal within rounding). fm_nn_set_winograd(0)
 * runs them as im2col + sgemm instead (for tests and comparisons), 1 turns it back on;
 * returns the previous setting. Process-wide, like fm_nn_set_isa, and with the same
 * caveats. */
int fm_nn_set_winograd(int on);

/* The direct kernel's wide 3x3 layers (P-Net's conv2 and conv3 on wide pyramid
 * levels) run as Winograd F(4x4, 3x3), 36 multiplies per 4x4 output block against
 * F(2x2, 3x3)'s 64 (results equal within rounding). fm_nn_set_winograd4(0) keeps
 * them on F(2x2, 3x3), for comparisons. Returns the previous setting. Process-wide. */
int fm_nn_set_winograd4(int on);

/* The forward convolutions' matrix products (Winograd's, im2col's, 1x1) run in the
 * engine's own kernel when the set in effect is AVX2 or better and BLAS runs one
 * thread: the CPU's widest vectors whatever kernels OpenBLAS chose, and each output
 * summed in the order of its products, so AVX2 and AVX-512 give the same bits.
 * fm_nn_set_own_gemm(0) sends them to cblas_sgemm instead (for tests and
 * comparisons), 1 back; returns the previous setting. Process-wide. */
int fm_nn_set_own_gemm(int on);

/* 1 when those products run in the engine's own kernel now (the setting on, AVX2 or
 * better in effect, one BLAS thread), 0 when they go to cblas_sgemm. */
int fm_nn_own_gemm_active(void);

/* The direct convolution (stride 1, unpadded, few channels: MTCNN's layers) runs small
 * output planes with at least 16 output channels in tiles of positions x channels,
 * which waste no vector lanes on narrow rows. Both of its kernels sum each output in
 * the same order, so the results are the same bits either way.
 * fm_nn_set_position_tiles(0) runs every plane in tiles of consecutive outputs instead
 * (16 in AVX2, 32 in AVX-512; for tests and comparisons); returns the previous
 * setting. Process-wide, like fm_nn_set_winograd. */
int fm_nn_set_position_tiles(int on);

/* Declares [p, p + bytes) unchanging until fm_nn_const_forget(p): convolution weights
 * there may be kept in the engine's own layouts, prepared once instead of on every
 * call (the position tiles' packed weights; a copy as large as the weights). The model
 * loader declares its read-only mappings. Returns 0, or -1 when p is NULL, bytes 0 or
 * the table of regions full (then nothing is kept: the results are the same, slower).
 * Thread-safe; the memory must not change while declared, and no convolution may run
 * on it during or after fm_nn_const_forget, which frees what was kept. */
int fm_nn_const_declare(const void *p, size_t bytes);
void fm_nn_const_forget(const void *p);

/* Bytes the engine keeps now in its own layouts of declared weights (for reports of
 * memory use, and tests). */
size_t fm_nn_const_kept_bytes(void);

/* ---- convolution --------------------------------------------------------------- */

/* Convolution geometry. The kernel size comes from the weight tensor. Dilation is 1. */
typedef struct fm_conv2d_params {
    int stride_h, stride_w;         /* >= 1 */
    int pad_top, pad_left;          /* >= 0, zeros */
    int pad_bottom, pad_right;      /* >= 0, zeros (TF "SAME" pads bottom/right more) */
    int groups;                     /* >= 1; divides in and out channels */
} fm_conv2d_params;

/* Symmetric geometry: the same stride and padding on every side, one group. */
static inline fm_conv2d_params fm_conv2d_sym(int stride, int pad)
{
    fm_conv2d_params p = {stride, stride, pad, pad, pad, pad, 1};
    return p;
}

/* Sets y's shape (n, c, h, w; y->data untouched) to the output of convolving x with w
 * under p: [x.n, w.n, (x.h + top + bottom - w.h) / stride_h + 1, same for width].
 * FM_ERR_INVALID with a message when the shapes or parameters do not fit. Data
 * pointers are not looked at. */
fm_status fm_nn_conv2d_shape(const fm_tensor *x, const fm_tensor *w,
                             const fm_conv2d_params *p, fm_tensor *y, fm_error *err);

/* y = conv(x, w) + bias, cross-correlation as in Caffe, PyTorch and TF.
 *   x     [N, C, H, W] input.
 *   w     [CO, C / groups, KH, KW] weights (PyTorch OIHW order; any KH, KW).
 *   bias  NULL, or CO floats (any shape with CO elements), added to each out channel.
 *   y     [N, CO, OH, OW] as fm_nn_conv2d_shape; must not overlap x, w or bias.
 * groups == 1: im2col + cblas_sgemm; 1x1 stride-1 unpadded convolutions multiply the
 * input directly; on AVX2+FMA CPUs, the convolutions fm_nn_conv2d_prelu runs directly
 * run directly here too (scratch: the weights repacked). Small outputs (few pixels per image) gather several images into one
 * multiply so the matrices stay large. groups > 1 with one input channel per group
 * (depthwise, with or without a channel multiplier) runs a direct loop; other grouped
 * convolutions multiply per group. Scratch: an im2col buffer of about 1 MiB (at least
 * 256 columns of C/groups*KH*KW floats) plus, for small outputs, the gathered result;
 * none for 1x1 direct and depthwise. The exact amount is what measuring reports. */
fm_status fm_nn_conv2d(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                       const fm_tensor *bias, const fm_conv2d_params *p, fm_tensor *y,
                       fm_error *err);

/* Convolution, bias and PReLU in one operation: y = prelu(conv(x, w) + bias, slope),
 * slope as fm_nn_prelu (C or 1 elements; NULL: no activation, as fm_nn_conv2d).
 * Operands and scratch as fm_nn_conv2d. Stride-1 unpadded single-group convolutions
 * run as a direct kernel that applies the bias and the slope as it stores each output
 * (on AVX2+FMA CPUs) when their outputs are at least 16 columns wide with at most 160
 * multiply-adds each, or their output planes are small (at most 64 Ki floats over all
 * channels when as wide as the input, at least 16 outputs, at most 600 multiply-adds
 * each); everything else runs fm_nn_conv2d, then fm_nn_prelu in place. */
fm_status fm_nn_conv2d_prelu(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                             const fm_tensor *bias, const fm_tensor *slope,
                             const fm_conv2d_params *p, fm_tensor *y, fm_error *err);

/* ---- pooling ------------------------------------------------------------------- */

typedef struct fm_pool2d_params {
    int kernel_h, kernel_w;         /* >= 1 */
    int stride_h, stride_w;         /* >= 1 */
    int pad_top, pad_left;          /* 0 <= pad < kernel on that axis */
    int pad_bottom, pad_right;      /* 0 <= pad < kernel on that axis */
    int ceil_mode;                  /* 0: floor output size (PyTorch, TF); 1: ceil (Caffe) */
    int count_include_pad;          /* avg pool only: 1 divides by the window size
                                       including padding (PyTorch default, Caffe);
                                       0 by the number of input pixels (TF) */
} fm_pool2d_params;

/* Symmetric geometry: square kernel k, stride s, padding pad on every side. */
static inline fm_pool2d_params fm_pool2d_sym(int k, int s, int pad, int ceil_mode,
                                             int count_include_pad)
{
    fm_pool2d_params p = {k, k, s, s, pad, pad, pad, pad, ceil_mode, count_include_pad};
    return p;
}

/* Sets y's shape to the pooling output of x: [x.n, x.c, OH, OW] with, per axis,
 *   floor mode: OH = (H + top + bottom - k) / s + 1
 *   ceil mode:  OH = ceil((H + top + bottom - k) / s) + 1, minus one when the last
 *               window would start at or past H + top (PyTorch's rule; equal to
 *               Caffe's whenever k >= s, as in every model facemill runs).
 * FM_ERR_INVALID when the parameters or shapes do not fit. */
fm_status fm_nn_pool2d_shape(const fm_tensor *x, const fm_pool2d_params *p, fm_tensor *y,
                             fm_error *err);

/* Max pooling: each output is the maximum of the input pixels in its window (padding
 * and the ceil-mode overhang are ignored, i.e. padded with -infinity). y as
 * fm_nn_pool2d_shape; must not overlap x. No scratch. */
fm_status fm_nn_maxpool2d(fm_arena *a, const fm_tensor *x, const fm_pool2d_params *p,
                          fm_tensor *y, fm_error *err);

/* Convolution, bias, PReLU and max pooling in one operation: y = maxpool(prelu(conv(x,
 * w) + bias, slope)), operands as fm_nn_conv2d_prelu and fm_nn_maxpool2d, y shaped as
 * the pool's output of the convolution's. A 3x3 convolution the direct kernel runs in
 * column tiles followed by an unpadded 2x2 stride-2 pool (MTCNN's P-Net) runs in one
 * pass on AVX-512 CPUs, never storing the convolution's output; everything else runs
 * the two operations, the convolution's output in work (shaped like it; disjoint from
 * the others) or, when work is NULL, in scratch. The same results either way.
 * Scratch: fm_nn_conv2d's, and the convolution's output without work. */
fm_status fm_nn_conv2d_prelu_maxpool(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                                     const fm_tensor *bias, const fm_tensor *slope,
                                     const fm_conv2d_params *p, const fm_pool2d_params *pool,
                                     fm_tensor *work, fm_tensor *y, fm_error *err);

/* Average pooling: sum of the input pixels in the window divided by, with
 * count_include_pad, the window clipped to the padded input (Caffe and PyTorch: the
 * ceil-mode overhang is never counted), otherwise the number of input pixels in it.
 * y as fm_nn_pool2d_shape; must not overlap x. No scratch. */
fm_status fm_nn_avgpool2d(fm_arena *a, const fm_tensor *x, const fm_pool2d_params *p,
                          fm_tensor *y, fm_error *err);

/* Global average pooling: y [N, C, 1, 1] = mean of each channel plane of x.
 * y must not overlap x. */
fm_status fm_nn_global_avgpool(fm_arena *a, const fm_tensor *x, fm_tensor *y,
                               fm_error *err);

/* ---- dense --------------------------------------------------------------------- */

/* Fully connected layer, y = x W^T + b, one cblas_sgemm for the whole batch.
 *   x     [N, C, H, W], read as N rows of IN = C*H*W values (NCHW flatten).
 *   w     OUT rows of IN: shape [OUT, ...] with w.c*w.h*w.w == IN (W stored [out, in]).
 *   bias  NULL, or OUT floats (any shape with OUT elements).
 *   y     [N, OUT, 1, 1]; must not overlap x, w or bias. No scratch. */
fm_status fm_nn_dense(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                      const fm_tensor *bias, fm_tensor *y, fm_error *err);

/* ---- per-channel and element-wise ---------------------------------------------- */

/* y = x * scale[c] + shift[c] per channel (batch norm folded into an affine, dlib's
 * affine layer). scale and shift: NULL (1 and 0) or C floats (any shape). y has x's
 * shape. In place allowed. */
fm_status fm_nn_scale_shift(fm_arena *a, const fm_tensor *x, const fm_tensor *scale,
                            const fm_tensor *shift, fm_tensor *y, fm_error *err);

/* PReLU: y = x for x > 0, slope[c] * x otherwise. slope has C elements (one per
 * channel) or 1 (shared). y has x's shape. In place allowed. */
fm_status fm_nn_prelu(fm_arena *a, const fm_tensor *x, const fm_tensor *slope,
                      fm_tensor *y, fm_error *err);

/* ReLU: y = max(x, 0). y has x's shape. In place allowed. */
fm_status fm_nn_relu(fm_arena *a, const fm_tensor *x, fm_tensor *y, fm_error *err);

/* LeakyReLU: y = x for x > 0, alpha * x otherwise (alpha finite). y has x's shape.
 * In place allowed. */
fm_status fm_nn_leaky_relu(fm_arena *a, const fm_tensor *x, float alpha, fm_tensor *y,
                           fm_error *err);

/* Softmax over the channels at every (image, row, column): y[n,:,h,w] sums to 1.
 * Numerically stable (the maximum is subtracted first). y has x's shape. In place
 * allowed. */
fm_status fm_nn_softmax(fm_arena *a, const fm_tensor *x, fm_tensor *y, fm_error *err);

/* Residual add: y = x + s * r, element-wise; x, r and y have the same shape. y may be
 * x or r (in place allowed). */
fm_status fm_nn_add(fm_arena *a, const fm_tensor *x, const fm_tensor *r, float s,
                    fm_tensor *y, fm_error *err);

/* Concatenation along channels: y[:, offset_i : offset_i + x_i.c] = x_i, in order.
 * Every x_i has y's n, h and w; their channels sum to y.c. count >= 1. y must not
 * overlap any input. */
fm_status fm_nn_concat(fm_arena *a, const fm_tensor *const *xs, int count, fm_tensor *y,
                       fm_error *err);

/* Channel zero-padding (dlib's ResNet down-sampling shortcut): y[:, :C] = x and the
 * remaining y.c - C channels are 0. y has x's n, h, w and y.c >= x.c; must not overlap
 * x. */
fm_status fm_nn_channel_pad(fm_arena *a, const fm_tensor *x, fm_tensor *y, fm_error *err);

/* L2 normalisation of each image: y[n] = x[n] / sqrt(max(sum(x[n]^2), eps)) over all
 * C*H*W values of image n. eps >= 0 guards a zero vector (TF's l2_normalize uses
 * 1e-10 on the sum of squares; PyTorch's F.normalize(eps=e) equals eps = e*e).
 * y has x's shape. In place allowed. */
fm_status fm_nn_l2_normalize(fm_arena *a, const fm_tensor *x, float eps, fm_tensor *y,
                             fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
