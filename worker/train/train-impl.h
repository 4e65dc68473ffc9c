/* train-impl.h - the trainer's network with its backward pass, visible to
 * heads_trainer.c and its tests (the gradient check) only.
 *
 * All parameters live in one float vector theta (layout below) so Adam, the
 * weight snapshot and the finite-difference check treat them alike. The three heads
 * are one dense layer of FM_HEADS_OUTPUTS rows (age rows first, then gender, then
 * race) over the last hidden layer.
 */
#ifndef FACEMILL_TRAIN_IMPL_H
#define FACEMILL_TRAIN_IMPL_H

#include "facemill/heads.h"
#include "facemill/status.h"

#include <stddef.h>

typedef struct fm_mlp {
    int n_hidden;
    int width[FM_HEADS_MAX_LAYERS + 2];  /* [0] input, [1..n_hidden] hidden,
                                            [n_hidden + 1] FM_HEADS_OUTPUTS */
    size_t w_off[FM_HEADS_MAX_LAYERS + 1]; /* layer l: weights [width[l+1], width[l]] */
    size_t b_off[FM_HEADS_MAX_LAYERS + 1]; /* layer l: bias [width[l+1]] */
    size_t n_params;
    float alpha;
    int max_batch;
    /* work buffers for max_batch rows, owned (fm_mlp_free) */
    float *z[FM_HEADS_MAX_LAYERS + 2];   /* pre-activations of layer l (1-based) */
    float *a[FM_HEADS_MAX_LAYERS + 2];   /* activations after LeakyReLU and dropout */
    float *d0, *d1;                      /* gradient buffers, max width */
} fm_mlp;

/* Sets the layout for dim inputs and the hidden widths and allocates the work
 * buffers for max_batch rows. FM_ERR_INVALID / FM_ERR_NOMEM. */
fm_status fm_mlp_init(fm_mlp *m, int dim, int n_hidden, const int *hidden, float alpha,
                      int max_batch, fm_error *err);
void fm_mlp_free(fm_mlp *m);

/* Targets of n rows: age_target n x FM_HEADS_AGES (each row a distribution), gender
 * and race classes. */
typedef struct fm_mlp_targets {
    const float *age;
    const int *gender, *race;
    float age_weight;
} fm_mlp_targets;

/* Forward pass over n <= max_batch rows of x (standardised). mask (NULL: none) holds
 * one multiplier per hidden unit and row for each hidden layer, concatenated
 * (dropout: 0 or 1/(1-p)). Leaves the logits in m->z[n_hidden + 1] (n x
 * FM_HEADS_OUTPUTS). */
void fm_mlp_forward(fm_mlp *m, const float *theta, const float *x, int n,
                    const float *mask);

/* Mean loss over the n rows of the last forward pass; when grad is not NULL, also
 * its gradient with respect to theta (overwritten, n_params floats). x and mask must
 * be those of the forward pass. */
double fm_mlp_backward(fm_mlp *m, const float *theta, const float *x, int n,
                       const float *mask, const fm_mlp_targets *t, float *grad);

/* The pieces, exposed for the gradient check:
 * dense backward: given dy [n, out], x [n, in], W [out, in]: dW += dy^T x,
 * db += colsum(dy), dx = dy W (dx may be NULL). */
void fm_dense_backward(const float *dy, const float *x, const float *W, int n, int in,
                       int out, float *dW, float *db, float *dx);
/* LeakyReLU backward in place: dz[i] *= z[i] > 0 ? 1 : alpha. */
void fm_leaky_backward(const float *z, float alpha, size_t count, float *dz);
/* Softmax cross-entropy of one row of k logits against target distribution t:
 * returns -sum t log softmax(z) and writes dz = scale * (softmax(z) - t). */
double fm_softmax_xent(const float *z, const float *t, int k, float scale, float *dz);

#endif
