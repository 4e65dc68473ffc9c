/* heads.h - the attribute heads: backbone features in, age, gender and ethnicity out.
 *
 * Why it exists: the backbone describes a face as a feature vector; the heads turn
 * that vector into the attributes facemill reports. They are small (a few hundred
 * thousand weights), trained by facemill's own trainers (`facemill train --freeze`,
 * worker/train/heads_trainer.c, on features of one particular backbone; `facemill
 * train`, worker/train/finetune.c, jointly with the backbone), and stored in a model
 * file with general.architecture "heads". worker/vision/heads.c is the network's only
 * definition: its forward pass (fm_heads_net_forward) serves inference and both
 * trainers, its backward pass and loss serve both trainers.
 *
 * The network, all dense layers (W stored [out, in]):
 *   x' = x * (1 / feat.std) - feat.mean / feat.std        standardised features
 *   h  = LeakyReLU(shared.K.weight h + shared.K.bias)      K = 0, 1, ... (>= 0 layers)
 *   age    = softmax(age.weight h + age.bias)              117 classes: ages 0..116
 *   gender = softmax(gender.weight h + gender.bias)        2: labels.gender
 *   race   = softmax(race.weight h + race.bias)            5: labels.race
 * The age is the expected value of its distribution, age_std its standard deviation.
 *
 * Metadata the reader requires (see models/HEADS.md for the lineage keys heads.train.*):
 *   general.architecture  "heads"
 *   heads.backbone        identity of the backbone the features came from:
 *                         "ARCH SOURCE INTEGRITY" (fm_heads_backbone_identity)
 *   heads.feature         "pooled" or "embedding": which backbone output is read
 *   heads.flip            1: features are the mean over the face and its mirror image
 *   heads.leaky_alpha     LeakyReLU slope for negative inputs
 *   labels.gender         2 names; labels.race  5 names
 * Optional: heads.fallback_age (f64, the training-set mean age; what evaluation
 * predicts for an image without a detected face; default 30).
 *
 * Threads: an fm_heads owns one arena; use it from one thread at a time.
 */
#ifndef FACEMILL_HEADS_H
#define FACEMILL_HEADS_H

#include "facemill/backbone.h"
#include "facemill/model.h"
#include "facemill/nn.h"
#include "facemill/result_json.h"
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FM_HEADS_AGES 117   /* age classes 0..116 */
#define FM_HEADS_GENDERS 2  /* male, female (UTKFace order) */
#define FM_HEADS_RACES 5    /* White, Black, Asian, Indian, Others (UTKFace order) */
#define FM_HEADS_OUTPUTS (FM_HEADS_AGES + FM_HEADS_GENDERS + FM_HEADS_RACES)
#define FM_HEADS_MAX_LAYERS 8 /* shared layers a file may have */
/* The heads' classes are the result schema's, in its order: their names are
 * fm_result_gender_names and fm_result_race_names (result_json.h). */
_Static_assert(FM_HEADS_GENDERS == FM_RESULT_GENDERS && FM_HEADS_RACES == FM_RESULT_RACES,
               "the heads' classes are the result schema's");

/* The attributes of one face. */
typedef struct fm_attrs {
    float age;                           /* expected age, years */
    float age_std;                       /* standard deviation of the age distribution */
    float gender_probs[FM_HEADS_GENDERS];/* sums to 1 */
    float race_probs[FM_HEADS_RACES];    /* sums to 1 */
    int gender;                          /* argmax of gender_probs */
    int race;                            /* argmax of race_probs */
} fm_attrs;

typedef struct fm_heads fm_heads;

/* Opens the heads file at path and sizes the arena for max_batch (>= 1) feature
 * vectors per internal step. Checks the architecture, the metadata above and every
 * tensor's shape (the layers must chain). On success *out is owned by the caller
 * (fm_heads_close). On failure *out is NULL and the status is FM_ERR_IO /
 * FM_ERR_FORMAT / FM_ERR_VERSION (file), FM_ERR_NOT_FOUND (a tensor or key is
 * missing), FM_ERR_INVALID (bad argument, wrong architecture) or FM_ERR_NOMEM. */
fm_status fm_heads_open(fm_heads **out, const char *path, int max_batch, fm_error *err);

/* Closes *h and sets it to NULL; accepts NULL and *h == NULL. */
void fm_heads_close(fm_heads **h);

/* Length of the feature vector the heads read. */
int fm_heads_input_dim(const fm_heads *h);
/* Which backbone output the heads read. */
fm_backbone_output fm_heads_feature(const fm_heads *h);
/* 1 when features are averaged over the face and its mirror image. */
int fm_heads_flip(const fm_heads *h);
/* heads.backbone (owned by h). */
const char *fm_heads_backbone(const fm_heads *h);
/* Number of shared layers, and the width of the last one (the input dim when 0). */
int fm_heads_layers(const fm_heads *h);
int fm_heads_hidden(const fm_heads *h);
/* heads.fallback_age, or 30 when the file has none. */
double fm_heads_fallback_age(const fm_heads *h);
/* Class names (owned by h); NULL for an index out of range. */
const char *fm_heads_gender_label(const fm_heads *h, int i);
const char *fm_heads_race_label(const fm_heads *h, int i);
/* The open model (owned by h), for metadata such as the heads.train.* lineage. */
const fm_model *fm_heads_model(const fm_heads *h);

/* Runs n >= 0 feature vectors (features: n x input_dim floats, face-major, raw
 * backbone outputs; not owned) through the heads, in steps of max_batch, and writes
 * out[0..n). Allocates nothing. FM_ERR_INVALID for NULL arguments or n < 0. */
fm_status fm_heads_forward(fm_heads *h, const float *features, int n, fm_attrs *out,
                           fm_error *err);

/* The attributes of one face from its logits (FM_HEADS_AGES, FM_HEADS_GENDERS and
 * FM_HEADS_RACES values): softmax per head, expected age and spread, argmaxes. */
void fm_attrs_from_logits(const float *age, const float *gender, const float *race,
                          fm_attrs *out);

/* Writes the identity string of the backbone model file at path, as heads.backbone
 * stores it: "ARCH SOURCE INTEGRITY" from general.architecture, general.source and
 * general.source_integrity (an absent key gives "-"). Returns FM_ERR_LIMIT when it
 * does not fit in size bytes, or the errors of fm_model_open. */
fm_status fm_heads_backbone_identity(const char *backbone_path, char *buf, size_t size,
                                     fm_error *err);

/* "pooled" / "embedding" <-> fm_backbone_output; parse returns -1 for other names. */
const char *fm_backbone_output_name(fm_backbone_output o);
int fm_backbone_output_parse(const char *name);

/* ---- the network, for inference and training ----------------------------------- */

/* Every array of three below holds the outputs in the order age, gender, ethnicity.
 * Their class counts: FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES. */
extern const int fm_heads_classes[3];

/* The parameters of a heads network, as tensor views (never owned: a mapped file, a
 * trainer's parameter vector, or its gradient, which uses the same layout).
 *   scale, shift   [dim]: the standardisation x * scale + shift (fm_heads_standardiser)
 *   w[k], b[k]     shared layer k < n_layers: [width_k, in_k], [width_k]; in_0 = dim,
 *                  in_k = width_{k-1}
 *   head_w, head_b per output: [classes, in], [classes]; in = the last width, or dim */
typedef struct fm_heads_net {
    int n_layers;  /* 0..FM_HEADS_MAX_LAYERS */
    float alpha;   /* LeakyReLU slope for negative inputs; >= 0 for the backward pass */
    fm_tensor scale, shift;
    fm_tensor w[FM_HEADS_MAX_LAYERS], b[FM_HEADS_MAX_LAYERS];
    fm_tensor head_w[3], head_b[3];
} fm_heads_net;

/* What a forward pass keeps: every activation the backward pass reads. Tensors live in
 * the arena the forward pass ran on. */
typedef struct fm_heads_tape {
    fm_tensor x;                      /* standardised features [n, dim, 1, 1] */
    fm_tensor h[FM_HEADS_MAX_LAYERS]; /* shared layers' outputs, after LeakyReLU and the
                                         dropout mask */
    fm_tensor logits[3];              /* [n, classes, 1, 1] per output */
} fm_heads_tape;

/* scale[j] = 1 / std[j], shift[j] = -mean[j] / std[j] (in float) for j < dim: how the
 * standardisation a heads file stores (feat.mean, feat.std) becomes the network's. */
void fm_heads_standardiser(const float *mean, const float *std, int dim, float *scale,
                           float *shift);

/* Runs net on features [n, dim, ...] (raw backbone features, n rows of dim values; not
 * written). mask: NULL, or one pointer per shared layer to n x width_k multipliers of
 * that layer's output (inverted dropout: 0 or 1 / (1 - p)). Every activation is
 * allocated from a in order and recorded in tape (a measuring arena: shapes only).
 * Errors name the layer ("heads: shared.0: ..."). */
fm_status fm_heads_net_forward(fm_arena *a, const fm_heads_net *net, const fm_tensor *features,
                               const float *const *mask, fm_heads_tape *tape, fm_error *err);

/* The training loss of the logits of tape (n rows):
 *   loss = sum over the outputs o of weight[o] / n x sum over rows of
 *          -sum_c target[o][row, c] log softmax(logits[o][row])_c
 * target[o] holds n x classes(o) floats, each row a distribution (a one-hot label, a
 * smoothed one, fm_nn_gaussian_target's age distribution). With dlogits (3 tensors
 * shaped like the logits, zeroed by the caller) the loss's gradients are ACCUMULATED
 * there. fm_nn_softmax_xent's errors. */
fm_status fm_heads_net_loss(fm_arena *a, const fm_heads_tape *tape,
                            const float *const target[3], const double weight[3],
                            double *loss, fm_tensor *dlogits, fm_error *err);

/* fm_heads_net_loss with each row of output o weighted by row_weight[o][row] (row_weight
 * NULL, or one of its pointers NULL: every row of that output 1): the loss and the
 * gradients of row r of output o are multiplied by row_weight[o][r] (>= 0, finite). */
fm_status fm_heads_net_loss_rows(fm_arena *a, const fm_heads_tape *tape,
                                 const float *const target[3], const double weight[3],
                                 const float *const row_weight[3], double *loss,
                                 fm_tensor *dlogits, fm_error *err);

/* Small-loss selection against mislabelled faces: of the n rows of logits ([n, k])
 * against target (n x k, rows of distributions), those whose softmax gives the
 * target's largest class less than below may be dropped, and of them the
 * round(share x n) (at most n - 1) with the highest cross-entropy are: weight 0 in w
 * (n floats), the others n / (n - dropped), so the kept rows' mean loss keeps the
 * scale of the whole batch's. Of equal losses the earlier row is dropped first.
 * below >= 1 lets any row go. losses (n doubles) receives each row's cross-entropy
 * (fm_nn_softmax_xent's), *dropped the rows dropped. fm_nn_softmax_xent's errors (a
 * logit not finite, a target row not a distribution); FM_ERR_INVALID for more than
 * FM_HEADS_AGES classes. */
fm_status fm_heads_hardest_weights(const fm_tensor *logits, const float *target,
                                   double share, double below, float *w, double *losses,
                                   int *dropped, fm_error *err);

/* The backward pass of the forward pass recorded in tape (same net and mask): given
 * dlogits (3 tensors, the loss's gradient with respect to the logits), ACCUMULATES the
 * gradients of the shared layers' and the outputs' weights and biases into g (views
 * shaped like net's; g->scale and g->shift are not touched: the standardisation is not
 * trained) and, when dfeatures is not NULL, the gradient with respect to the raw
 * features into dfeatures ([n, dim, ...]). Activation gradients come from a. */
fm_status fm_heads_net_backward(fm_arena *a, const fm_heads_net *net,
                                const fm_heads_tape *tape, const float *const *mask,
                                const fm_tensor *dlogits, fm_heads_net *g,
                                fm_tensor *dfeatures, fm_error *err);

/* Adds what a trainer knows of a heads file to w: the tensors feat.mean and feat.std
 * (dim values each, those net's standardisation was derived from), shared.K.weight
 * and .bias, age/gender/race.weight and .bias (net's data), and the metadata
 * heads.leaky_alpha (net->alpha) and heads.fallback_age. The caller adds general.*,
 * heads.backbone, heads.feature, heads.flip and labels.* (fm_result_gender_names,
 * fm_result_race_names). The writer's errors. */
fm_status fm_heads_write(fm_model_writer *w, const fm_heads_net *net, const float *mean,
                         const float *std, double fallback_age, fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
