/* train.h - the frozen-feature trainer of the attribute heads: backbone features
 * with UTKFace labels in, a "heads" model (see heads.h) out.
 *
 * Why it exists: facemill trains its own heads, in C over OpenBLAS, in minutes on
 * a CPU, deterministically for a seed, so the committed heads file can be rebuilt
 * and its lineage stated. `facemill train --freeze` (worker/cli/cmd_train.c) takes
 * the steps below in order: fm_trainset_open (trainset.h), fm_heads_features_gather
 * (the production pipeline's features of every image, or a cache of them),
 * fm_heads_features_sets (the faces trained on and held out), fm_heads_train_save
 * (fm_train_heads, then the file with its lineage).
 *
 * The model is heads.h's network (worker/vision/heads.c runs it forward and backward,
 * for inference as for training): standardised features (mean and standard deviation
 * of the training set), n_hidden dense layers with LeakyReLU (dropout on their outputs
 * while training), then age (117-way), gender (2) and ethnicity (5) softmax heads. Loss per
 * face: age_weight x cross-entropy of the age head against a Gaussian-smoothed
 * target centred on the true age (standard deviation age_sigma years; 0 = one-hot),
 * plus the cross-entropies of gender and ethnicity (fm_heads_net_loss). Mini-batch
 * AdamW (grad.h's fm_optim_update; weight decay on weights, not biases); after every
 * epoch the validation loss is
 * computed; the learning rate halves after lr_patience epochs without improvement,
 * and training stops after patience epochs without one, keeping the best epoch.
 * Deterministic: the same data, options and seed give the same bytes (one OpenBLAS
 * thread).
 */
#ifndef FACEMILL_TRAIN_H
#define FACEMILL_TRAIN_H

#include "facemill/backbone.h"
#include "facemill/config.h"
#include "facemill/eval.h"
#include "facemill/heads.h"
#include "facemill/model.h"
#include "facemill/status.h"
#include "facemill/trainset.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Labelled feature vectors (not owned, except those fm_heads_features_sets makes). */
typedef struct fm_train_set {
    int n, dim;
    const float *x;              /* n x dim raw features, row-major */
    const fm_utk_label *labels;  /* n */
} fm_train_set;

/* What one epoch did; passed to the progress callback and returned for the best. */
typedef struct fm_train_epoch {
    int epoch, max_epochs;  /* 1-based */
    int best_epoch;         /* the epoch whose weights are kept so far */
    double lr;
    double train_loss;      /* mean over the epoch's batches */
    double val_loss;        /* mean over the validation set */
    double val_age_mae, val_age_rmse, val_gender_acc, val_race_acc;
    double elapsed_s;       /* since training started */
} fm_train_epoch;

typedef struct fm_train_opts {
    int n_hidden;                        /* shared layers, 0..FM_HEADS_MAX_LAYERS */
    int hidden[FM_HEADS_MAX_LAYERS];     /* their widths */
    float leaky_alpha;
    double lr, weight_decay, dropout;
    double age_sigma, age_weight;
    int batch, max_epochs, patience, lr_patience;
    uint64_t seed;
    /* Called after every epoch when not NULL. */
    void (*progress)(void *ctx, const fm_train_epoch *e);
    void *ctx;
} fm_train_opts;

/* Defaults: one hidden layer of 512, alpha 0.1 (>= 0: the backward pass tells a
 * LeakyReLU's sides apart by its output's sign), lr 1e-3, weight decay 1e-4,
 * dropout 0.5, age_sigma 2, age_weight 1, batch 128, 100 epochs, patience 10,
 * lr_patience 4, seed 1. */
void fm_train_opts_defaults(fm_train_opts *o);

/* Trains on train, selecting the epoch on val (both need n >= 1 and the same dim),
 * and adds to w (which the caller owns and saves) the tensors feat.mean, feat.std,
 * shared.K.weight/bias, age/gender/race.weight/bias and the metadata
 * heads.leaky_alpha and heads.fallback_age (mean training age). The caller adds
 * general.*, heads.backbone, heads.feature, heads.flip and labels.*. best (may be
 * NULL) receives the kept epoch's figures. Returns FM_ERR_INVALID for bad options or
 * sets (a label out of range included), FM_ERR_NOMEM, the network's errors (a loss that
 * is no longer finite: lower the learning rate) or a writer error. */
fm_status fm_train_heads(const fm_train_set *train, const fm_train_set *val,
                         const fm_train_opts *o, fm_model_writer *w, fm_train_epoch *best,
                         fm_error *err);

/* ---- the steps of `facemill train --freeze` ------------------------------------- */

/* The backbone features of the highest-scoring face of every image of a training set:
 * both outputs, each of the face and of its mirror image. */
typedef struct fm_heads_features {
    fm_image_rows rows; /* width 2 x (dims[0] + dims[1]): embedding of the face, of the
                           mirror image, then pooled of the face, of the mirror image */
    int dims[FM_BACKBONE_OUTPUT_COUNT];
    char key[4096];      /* how they were made: backbone, detector and decoder settings */
    char backbone[1024]; /* the backbone's identity (heads.backbone) */
} fm_heads_features;

/* Fills *f for the images of s: runs the production pipeline of c (decode, detect,
 * align, backbone; one backbone, not a list) in jobs processes, or reads the cache
 * file when it holds these images made the same way, and writes the cache otherwise
 * (cache may be NULL: none). Logs progress and how many images had no face or could
 * not be read. *f belongs to the caller (fm_heads_features_free), on error too.
 * Returns FM_OK, FM_ERR_INVALID (a list of backbones, settings too long for the
 * key), the pipeline's errors, FM_ERR_INTERNAL when an extraction process failed, or
 * the cache writer's. */
fm_status fm_heads_features_gather(fm_heads_features *f, const fm_config *c,
                                   const fm_trainset *s, const char *cache, int jobs,
                                   fm_error *err);
void fm_heads_features_free(fm_heads_features *f);

/* The faces of s with their features, split as s holds them out: each row the
 * feature output of the face, or with flip the mean of face and mirror image. Images
 * without a face (or unreadable) are left out. The sets own their arrays
 * (fm_train_set_free), on error too. FM_ERR_NOMEM. */
fm_status fm_heads_features_sets(const fm_heads_features *f, const fm_trainset *s,
                                 fm_backbone_output feature, int flip, fm_train_set *train,
                                 fm_train_set *val, fm_error *err);
/* Frees the arrays of a set made by fm_heads_features_sets and zeroes it. */
void fm_train_set_free(fm_train_set *s);

/* What a heads file trained on frozen features records besides its weights. */
typedef struct fm_heads_lineage {
    const fm_heads_features *features; /* heads.backbone, heads.train.features */
    fm_backbone_output feature;        /* heads.feature */
    int flip;                          /* heads.flip */
    const fm_trainset *data;           /* heads.train.data */
    const char *command;               /* heads.train.command: the command line */
} fm_heads_lineage;

/* Trains the heads (fm_train_heads) and writes them to path, atomically, with the
 * keys heads.h reads and the lineage: the data, command, date, options and the kept
 * epoch's figures (heads.train.*). best (may be NULL) gets the kept epoch. Returns
 * fm_train_heads's errors or the writer's. */
fm_status fm_heads_train_save(const char *path, const fm_train_set *train,
                              const fm_train_set *val, const fm_train_opts *o,
                              const fm_heads_lineage *lin, fm_train_epoch *best,
                              fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
