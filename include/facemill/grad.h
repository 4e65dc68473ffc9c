/* grad.h - backward passes of the engine's operations (include/facemill/nn.h), for
 * training: given an operation's inputs and the gradient of a loss with respect to
 * its output (dy), they compute the gradients with respect to its inputs and
 * parameters; and the optimiser step that applies the gradients.
 *
 * Why it exists: facemill fine-tunes its backbone and trains its heads in C over
 * OpenBLAS, with the same tensors and arena as inference. A network's forward pass
 * (worker/vision/heads.c, arch_dlib_resnet.c) keeps the activations its backward pass
 * needs, which calls these in reverse order; both trainers (worker/train/) update
 * their parameters with fm_optim_update.
 *
 * Conventions (in addition to nn.h's):
 *  - Every gradient output is ACCUMULATED: dx += ..., dw += .... The caller zeroes a
 *    gradient once before the first contribution. This makes residual connections
 *    (two paths into one tensor) and mini-batches split into steps free.
 *  - A gradient output may be NULL when it is not wanted (the first layer needs no
 *    dx; a frozen layer needs no dw): the work for it is skipped.
 *  - A gradient has the shape of what it is the gradient of; every shape is checked
 *    (FM_ERR_INVALID with a message naming the operation and operands).
 *  - Gradient outputs must not overlap any input (x, w, dy) nor each other.
 *  - Scratch comes from the arena as in nn.h (mark/reset inside the call); a measuring
 *    arena validates shapes, counts scratch and touches no data.
 * Each operation is checked against central finite differences in tests/test_grad.c.
 */
#ifndef FACEMILL_GRAD_H
#define FACEMILL_GRAD_H

#include "facemill/nn.h"
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Convolution y = conv(x, w) + bias under p (fm_nn_conv2d), groups == 1 only
 * (FM_ERR_UNSUPPORTED otherwise).
 *   x   [N, C, H, W] the forward input;  w [CO, C, KH, KW] the forward weights.
 *   dy  [N, CO, OH, OW] gradient of the output.
 *   dx  NULL or [N, C, H, W]:       dx += conv_transpose(dy, w)
 *   dw  NULL or w's shape:          dw += sum over images of dy (x) im2col(x)
 *   db  NULL or CO floats:          db += sum of dy over N, OH, OW
 * Scratch, as the forward pass: one im2col buffer of about 1 MiB (at least 256
 * columns of C*KH*KW floats) that also holds the column gradient, plus, for small
 * outputs (several images per multiply), a gathered copy of their dy; none for 1x1
 * stride-1 unpadded convolutions or when only db is wanted. The exact amount is what
 * measuring reports. */
fm_status fm_nn_conv2d_backward(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                                const fm_conv2d_params *p, const fm_tensor *dy,
                                fm_tensor *dx, fm_tensor *dw, fm_tensor *db,
                                fm_error *err);

/* Max pooling (fm_nn_maxpool2d): each dy element is added to the input pixel that was
 * the window's maximum (the first one in row-major window order on ties, as the
 * forward pass finds it). x is the forward input, dx has its shape. No scratch. */
fm_status fm_nn_maxpool2d_backward(fm_arena *a, const fm_tensor *x,
                                   const fm_pool2d_params *p, const fm_tensor *dy,
                                   fm_tensor *dx, fm_error *err);

/* Average pooling (fm_nn_avgpool2d, same divisor rules): each dy element is spread
 * evenly over the input pixels of its window. dx [N, C, H, W] is the forward input's
 * shape (its data is accumulated into; x itself is not needed). No scratch. */
fm_status fm_nn_avgpool2d_backward(fm_arena *a, const fm_pool2d_params *p,
                                   const fm_tensor *dy, fm_tensor *dx, fm_error *err);

/* Global average pooling: dx[n, c, :, :] += dy[n, c] / (H * W). dy is [N, C, 1, 1]. */
fm_status fm_nn_global_avgpool_backward(fm_arena *a, const fm_tensor *dy, fm_tensor *dx,
                                        fm_error *err);

/* Dense y = x W^T + b (fm_nn_dense).
 *   x [N, ...] (IN values per row), w [OUT, ...], dy [N, OUT, 1, 1].
 *   dx NULL or x's shape:  dx += dy W;   dw NULL or w's shape: dw += dy^T x;
 *   db NULL or OUT floats: db += column sums of dy. No scratch. */
fm_status fm_nn_dense_backward(fm_arena *a, const fm_tensor *x, const fm_tensor *w,
                               const fm_tensor *dy, fm_tensor *dx, fm_tensor *dw,
                               fm_tensor *db, fm_error *err);

/* Per-channel affine y = x * scale[c] + shift[c] (fm_nn_scale_shift; scale NULL = 1).
 *   dx NULL or x's shape: dx += dy * scale[c];
 *   dscale NULL or C floats: dscale[c] += sum dy * x over channel c (x needed);
 *   dshift NULL or C floats: dshift[c] += sum dy over channel c.
 * x may be NULL when dscale is; shapes then come from dy. */
fm_status fm_nn_scale_shift_backward(fm_arena *a, const fm_tensor *x,
                                     const fm_tensor *scale, const fm_tensor *dy,
                                     fm_tensor *dx, fm_tensor *dscale, fm_tensor *dshift,
                                     fm_error *err);

/* ReLU: dx += dy where y > 0. y is the forward OUTPUT (or its input: the sign test is
 * the same), which lets the forward pass run in place. */
fm_status fm_nn_relu_backward(fm_arena *a, const fm_tensor *y, const fm_tensor *dy,
                              fm_tensor *dx, fm_error *err);

/* LeakyReLU with slope alpha >= 0: dx += dy where y > 0, alpha * dy elsewhere. y is
 * the forward output or input (same sign for alpha > 0; for alpha == 0 as ReLU). */
fm_status fm_nn_leaky_relu_backward(fm_arena *a, const fm_tensor *y, float alpha,
                                    const fm_tensor *dy, fm_tensor *dx, fm_error *err);

/* PReLU (fm_nn_prelu) with slope of C or 1 elements. x is the forward INPUT.
 *   dx NULL or x's shape: dx += dy where x > 0, slope * dy elsewhere;
 *   dslope NULL or slope's shape: dslope += sum of dy * x where x <= 0 (per channel, or
 *   over everything for a shared slope). */
fm_status fm_nn_prelu_backward(fm_arena *a, const fm_tensor *x, const fm_tensor *slope,
                               const fm_tensor *dy, fm_tensor *dx, fm_tensor *dslope,
                               fm_error *err);

/* Residual add y = x + s * r: dx += dy (NULL to skip), dr += s * dy (NULL to skip).
 * dx, dr and dy have one shape. */
fm_status fm_nn_add_backward(fm_arena *a, const fm_tensor *dy, float s, fm_tensor *dx,
                             fm_tensor *dr, fm_error *err);

/* Channel zero-padding (fm_nn_channel_pad): dx += dy[:, :dx.c]. */
fm_status fm_nn_channel_pad_backward(fm_arena *a, const fm_tensor *dy, fm_tensor *dx,
                                     fm_error *err);

/* Softmax cross-entropy of logits [N, K, 1, 1] against target distributions
 * (N x K floats, each row non-negative and summing to 1: a one-hot label or a smoothed
 * one, see fm_nn_gaussian_target), weighted per image by weight[n] (NULL = 1):
 *   loss = scale * sum_n weight[n] * (-sum_k target[n,k] * log softmax(logits[n])_k)
 *   dlogits (NULL or logits' shape) += scale * weight[n] * (softmax(logits[n]) - target[n])
 * Stable for any finite logits (log-sum-exp). *loss (when loss is not NULL) is set,
 * not accumulated. probs (NULL or N x K floats) receives the softmax. No scratch.
 * FM_ERR_INVALID, before anything is written, for a logit that is not finite, a target
 * value that is negative or not finite, a target row whose sum is off 1 by more than
 * 1e-3, a weight that is negative or not finite, or a scale that is not finite. */
fm_status fm_nn_softmax_xent(fm_arena *a, const fm_tensor *logits, const float *target,
                             const float *weight, float scale, double *loss,
                             fm_tensor *dlogits, float *probs, fm_error *err);

/* Writes the label distribution of a discrete target centred on mu over k classes
 * 0..k-1: p_i proportional to exp(-(i - mu)^2 / (2 sigma^2)), normalised to sum 1.
 * sigma <= 0 gives a one-hot at round(mu) (clamped to 0..k-1). k >= 1. */
void fm_nn_gaussian_target(int k, double mu, double sigma, float *out);

/* ---- optimiser ------------------------------------------------------------------ */

/* AdamW's moment decay rates and its guard against division by zero (Kingma & Ba's
 * defaults, which both trainers use). */
#define FM_ADAM_BETA1 0.9
#define FM_ADAM_BETA2 0.999
#define FM_ADAM_EPS 1e-8

typedef enum fm_optim_kind {
    FM_OPTIM_ADAMW = 0, /* Adam with decoupled weight decay (Loshchilov & Hutter) */
    FM_OPTIM_SGD = 1    /* stochastic gradient descent with momentum */
} fm_optim_kind;

/* One update of a group of parameters that share their settings. */
typedef struct fm_optim_step {
    fm_optim_kind kind;
    double lr;           /* step size, >= 0 */
    double weight_decay; /* decoupled: the step also shrinks p by lr * weight_decay * p;
                            0 for biases */
    double momentum;     /* SGD: the velocity's decay, 0 <= momentum < 1 */
    long t;              /* AdamW: the steps these moments have taken, this one
                            included (>= 1): the bias correction 1 - beta^t */
} fm_optim_step;

/* Applies one step to count parameters p with their gradient g and the optimiser's
 * state m and v (count floats each, zero before the first step; v is unused by SGD
 * and may then be NULL). In double, stored as float:
 *   AdamW: m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *          p -= lr ((m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p)
 *   SGD:   m = momentum m + g;     p -= lr (m + wd p)
 * Deterministic: the same inputs give the same bits. No errors: the arguments are the
 * caller's (asserted). */
void fm_optim_update(const fm_optim_step *s, float *p, const float *g, float *m, float *v,
                     size_t count);

#ifdef __cplusplus
}
#endif
#endif
