/* finetune.h - fine-tuning the dlib ResNet backbone jointly with the attribute heads,
 * in C over the networks inference runs (dlib_resnet.h's forward and backward passes,
 * heads.h's) and the engine's optimiser (grad.h).
 *
 * Why it exists: heads trained on frozen features stop short of what the task allows
 * (the backbone was trained to tell people apart, not to see age, gender and
 * ethnicity); the backbone has to learn the task. `facemill train` without --freeze
 * (worker/cli/cmd_finetune.c) takes the steps at the end of this header in order:
 * fm_trainset_open (trainset.h), fm_ft_faces_find (the landmarks of every image, or
 * a cache of them), fm_ft_data_load (the photos with a face, decoded), then
 * fm_finetune_new, fm_finetune_run and fm_finetune_calibrate, and fm_finetune_save
 * (the backbone and heads files with their lineage).
 *
 * The network: the backbone of the base model (architecture dlib_resnet) up to its
 * globally pooled 256-d features, then one shared dense layer with LeakyReLU (and
 * dropout while training), then age (117-way), gender (2) and ethnicity (5) dense
 * heads: the layout heads.h reads, so the result runs in the production pipeline as a
 * backbone file plus a heads file. Blocks before train_from stay frozen (they run
 * forward only, nothing is kept for them); the rest keep their activations for the
 * backward pass. Loss per face: cross-entropy of the age head against a Gaussian
 * target centred on the true age (label distribution learning) times age_weight, plus
 * the cross-entropies of gender and ethnicity times gender_weight and race_weight
 * (their targets optionally smoothed towards uniform by label_smoothing, so the heads
 * are never pushed to certainty, a guard against wrongly labelled faces).
 *
 * Inputs are aligned on the fly from the decoded photo and its five landmarks, the way
 * the pipeline aligns (the mirror view is the mirror-refitted alignment, as at
 * prediction time), with a random flip, a small jitter of the alignment (shift, scale,
 * rotation) and brightness/contrast changes.
 *
 * Optimiser: AdamW (decoupled weight decay on weights, not biases) or SGD with
 * momentum, separate learning rates for backbone and heads, linear warm-up then
 * cosine decay or step decay, per step. The heads train alone for the first
 * head_epochs (on the pretrained features, standardised by their training-set mean
 * and spread, which the heads file keeps as feat.mean and feat.std), so their random
 * start does not wreck the backbone's features; then the backbone joins with its own
 * warm-up. After each epoch the validation set is scored
 * (face and mirror image averaged, as heads.flip does); the best epoch by validation
 * loss is kept, and training stops after `patience` epochs without improvement.
 *
 * Deterministic for a seed with one OpenBLAS thread: the epoch's order and every
 * augmentation are functions of (seed, epoch, position), so a run resumed from a
 * checkpoint continues exactly as the uninterrupted run would have.
 *
 * Memory: one arena sized once (by a measuring run) for a training step of `batch`
 * faces holds the input, every kept activation and every activation gradient.
 */
#ifndef FACEMILL_FINETUNE_H
#define FACEMILL_FINETUNE_H

#include "facemill/config.h"
#include "facemill/eval.h"
#include "facemill/model.h"
#include "facemill/status.h"
#include "facemill/trainset.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One training or validation photo: decoded RGB pixels (not owned), the five
 * landmarks of its face in those pixels' coordinates, and its labels. */
/* A teacher's answers for one training face (distillation): its expected age and
 * spread, and its gender and ethnicity probabilities. */
typedef struct fm_ft_soft {
    float age, age_std;
    float gender[FM_HEADS_GENDERS];
    float race[FM_HEADS_RACES];
} fm_ft_soft;

/* Zero what a caller does not set (soft NULL: labels alone). */
typedef struct fm_ft_image {
    const uint8_t *rgb;
    int w, h;
    size_t stride;
    float landmarks[10];
    fm_utk_label label;
    int source;             /* the image's index in its fm_trainset */
    const fm_ft_soft *soft; /* the teacher's answers, or NULL (labels alone) */
} fm_ft_image;

typedef struct fm_ft_set {
    int n;
    const fm_ft_image *images;
} fm_ft_set;

typedef enum fm_ft_optimizer { FM_FT_ADAMW = 0, FM_FT_SGD = 1 } fm_ft_optimizer;
typedef enum fm_ft_schedule { FM_FT_COSINE = 0, FM_FT_STEP = 1 } fm_ft_schedule;

/* The backbone's blocks, in order: -1 is the stem (7x7 convolution), 0..13 the
 * residual blocks conv32_1 .. conv256_down_out; 14 means the heads only. */
#define FM_FT_STEM (-1)
#define FM_FT_BLOCKS 14

/* Index of a block by name ("stem", "conv32_1", ..., "conv256_down_out", "heads"),
 * or -2 for an unknown name. */
int fm_ft_block_index(const char *name);
/* Name of block i (-1..14); "?" out of range. */
const char *fm_ft_block_name(int i);

/* What happened; passed to the progress callback during an epoch (every
 * progress_steps steps, epoch_end 0) and after each epoch's validation (epoch_end 1). */
typedef struct fm_ft_progress {
    int epoch, max_epochs;       /* 1-based */
    long step, total_steps;      /* optimiser steps done, planned */
    int epoch_end;
    double lr_backbone, lr_heads;
    double train_loss;           /* mean over the epoch's steps so far */
    double dropped_gender, dropped_race; /* with drop_hardest: the share of the faces of
                                    the epoch's steps so far (since the start or the
                                    resume) left out of the gender, the ethnicity loss */
    double val_loss, val_age_mae, val_age_rmse, val_gender_acc, val_race_acc;
    int best_epoch;              /* 0 until an epoch was validated */
    double elapsed_s, eta_s;     /* since this call started; remaining estimate */
} fm_ft_progress;

/* The kinds of damage --degrade draws from (degrade_kinds is a set of 1u << these). */
typedef enum fm_ft_damage {
    FM_FT_DAMAGE_DOWN = 0, /* the face shrunk to 20-64 px and enlarged back */
    FM_FT_DAMAGE_JPEG,     /* recompressed at quality 10-60 */
    FM_FT_DAMAGE_BLUR,     /* Gaussian blur, sigma 0.6-3 px */
    FM_FT_DAMAGE_GRAY,     /* grayscale */
    FM_FT_DAMAGE_ROT,      /* turned 10-25 degrees either way */
    FM_FT_DAMAGE_EXPOSURE, /* -1.5..-0.5 or +0.5..+1.2 stops */
    FM_FT_DAMAGE_OCCLUDE,  /* a band over the mouth and chin */
    FM_FT_DAMAGE_ERASE,    /* a rectangle anywhere (fm_ft_erase); not in the suite, so
                            * only when named: the default set is the seven above */
    FM_FT_DAMAGES
} fm_ft_damage;

/* The names of the kinds (down, jpeg, blur, gray, rot, exposure, occlude, erase),
 * indexed by fm_ft_damage, and a comma-separated list of them parsed into a set:
 * FM_OK, or FM_ERR_INVALID naming the unknown word. */
extern const char *const fm_ft_damage_names[FM_FT_DAMAGES];
fm_status fm_ft_damage_parse(const char *list, unsigned *set, fm_error *err);

/* Random erasing on a W x H RGB chip (rows 3 W bytes apart), in place: a rectangle of
 * 5-30% of the chip's area, of width:height 0.3-3.3 (log-uniform), at a uniform place
 * inside the chip, filled with one gray level (u[4] < 0.5) or with noise, every byte
 * its own. u: six uniforms in [0, 1) that draw area, shape, place (two), fill and the
 * gray level or the noise's seed. The rectangle, [x0, y0, x1, y1) in pixels, goes to
 * box when it is not NULL. An occlusion of any part of the face, where `occlude` is
 * the suite's one band. */
void fm_ft_erase(uint8_t *chip, int W, int H, const double u[6], int box[4]);

typedef struct fm_ft_opts {
    int train_from;              /* first trained block, FM_FT_STEM..FM_FT_BLOCKS */
    int batch;                   /* faces per step, >= 1 */
    int max_epochs, patience;
    fm_ft_optimizer optimizer;
    double lr_backbone, lr_heads;
    int lr_relative;             /* 1: a backbone layer's rate is lr_backbone times the
                                    RMS of its base weights (a relative step) */
    double lr_decay;             /* 0 < F <= 1, layer-wise: a backbone block's rate is
                                    the next block's times F (the last block,
                                    conv256_down_out, at the full rate; the stem at
                                    F^14); 1: one rate for every block */
    double weight_decay;         /* decoupled, on weights only */
    double momentum;             /* SGD */
    fm_ft_schedule schedule;
    double head_epochs;          /* epochs the heads train alone before the backbone does */
    double warmup_epochs;        /* linear warm-up from 0, in epochs (fractions allowed) */
    double min_lr_ratio;         /* cosine floor as a share of the peak */
    double step_epochs, step_gamma; /* step schedule: times gamma every step_epochs */
    int hidden;                  /* width of the shared layer, >= 1 */
    float leaky_alpha;
    double dropout;              /* on the shared layer's output, 0..0.95 */
    double age_sigma;
    double age_weight, gender_weight, race_weight; /* loss weights of the heads, > 0 */
    double label_smoothing;      /* gender and ethnicity targets: 1 - eps on the label
                                    plus eps / classes on every class (0..1; 0: one-hot) */
    double drop_hardest;         /* 0..0.5, against mislabelled faces: in each training
                                    batch up to round(share x batch) faces with the
                                    highest gender loss are left out of the gender
                                    loss, and those with the highest ethnicity loss out
                                    of the ethnicity loss (fm_heads_hardest_weights);
                                    age and the hold-out loss keep every face; 0: none */
    double drop_below;           /* 0..1: only faces whose label the network gives less
                                    than this may be left out (1: any face) */
    double align_zoom;           /* the base's alignment template scaled by this about
                                    the chip's centre (0.5..1.5; < 1: the face fills less
                                    of the chip, more hair and surroundings); the trained
                                    backbone records the template it was trained with;
                                    not 1 needs a trained backbone (train_from before the
                                    heads, lr_backbone > 0) */
    /* augmentation */
    int flip;                    /* 1: half the faces are the mirror view */
    double shift_px, scale_jitter, rotate_deg; /* uniform in +-value */
    double brightness, contrast; /* pixel offset +-brightness, gain 1 +- contrast */
    double degrade;              /* share of training faces (0..1) given one damage of
                                    the robustness suite (degrade.h), kind and strength
                                    drawn at random: a face down to 20-64 px, JPEG
                                    quality 10-60, blur 0.6-3 px, grayscale, a 10-25
                                    degree turn, exposure -1.5..-0.5 or +0.5..+1.2
                                    stops, the mouth-and-chin band; 0: none */
    double teacher_weight;       /* 0..1: a face with a teacher's answers (soft) trains
                                    towards (1 - w) x its label's targets + w x the
                                    teacher's (age: a Gaussian at its age with its
                                    spread, at least age_sigma); 0: labels alone */
    const char *teacher_id;      /* names the teacher in the checkpoint's fingerprint
                                    (e.g. its file's digest); with teacher_weight > 0 */
    unsigned degrade_kinds;      /* the damages drawn, a set of 1u << fm_ft_damage (0:
                                    all seven) */
    uint64_t seed;
    /* heads to start from (a heads file of this shape: one shared layer of hidden
     * units, the same leaky alpha), their feature standardisation included; NULL:
     * new heads, initialised from the seed, the standardisation measured on the base.
     * The file's digest is part of the checkpoint's fingerprint. */
    const char *init_heads;
    /* checkpoints: a file written atomically every checkpoint_steps steps (0: only
     * after each epoch) and read at the start of fm_finetune_run when it exists and
     * was made with the same options and data; NULL: none */
    const char *checkpoint;
    int checkpoint_steps;
    long stop_after_steps;       /* > 0: return FM_ERR_INTERRUPTED after this many steps
                                    of this call, a checkpoint written (tests, budgets) */
    volatile const int *stop;    /* not NULL and *stop != 0: checkpoint and return
                                    FM_ERR_INTERRUPTED at the next step (signals) */
    int progress_steps;          /* 0: callback at epoch ends only */
    void (*progress)(void *ctx, const fm_ft_progress *p);
    void *ctx;
} fm_ft_opts;

/* Defaults: train_from conv128_down, batch 32, 6 epochs, patience 3, AdamW, lr 1e-4
 * (backbone, absolute) and 1e-3 (heads), weight decay 1e-4 (momentum 0.9 for SGD),
 * 1 epoch of heads alone, cosine with 0.3 epochs of warm-up to a floor of 1%, step
 * 2 epochs x 0.1, hidden 256, alpha 0.1, dropout 0.3, age sigma 2 and weight 1 (all
 * loss weights 1), align zoom 1, flip
 * on, shift 4 px, scale 0.05, rotation 5 degrees, brightness 16, contrast 0.15,
 * no damage (degrade 0), seed 1, checkpoints every 200 steps. */
void fm_ft_opts_defaults(fm_ft_opts *o);

typedef struct fm_finetune fm_finetune;

/* Starts from base (architecture dlib_resnet; it must stay open while ft lives):
 * copies its weights, reads its input size, normalisation and alignment template,
 * and initialises the heads (He-uniform weights, zero biases, from the seed). Sizes
 * the arena for o->batch faces. *out is owned by the caller (fm_finetune_free). */
fm_status fm_finetune_new(fm_finetune **out, const fm_model *base, const fm_ft_opts *o,
                          fm_error *err);
void fm_finetune_free(fm_finetune **ft);

/* Trains on train (n >= batch) and validates on val (n >= 1), resuming from the
 * checkpoint when there is a matching one. On success the best epoch's weights are
 * the ones the writers below write, and best (may be NULL) holds its figures.
 * FM_ERR_INTERRUPTED when stopped early (stop_after_steps, *stop): the checkpoint
 * holds the state, a later call resumes. data_id names the data (e.g. a hash of the
 * file names) so a checkpoint of other data is not resumed. */
fm_status fm_finetune_run(fm_finetune *ft, const fm_ft_set *train, const fm_ft_set *val,
                          const char *data_id, fm_ft_progress *best, fm_error *err);

/* The temperature T that minimises the mean negative log-likelihood of
 * softmax(logits / T) for labels (n rows of k logits, labels 0..k-1), searched over
 * 0.05..20: below 1 it sharpens answers that are less sure than they are right (as
 * label smoothing trains them), above 1 it softens over-confident ones. 1 for bad
 * arguments (n < 1, k < 2, NULL). */
double fm_ft_fit_temperature(const float *logits, const int *labels, int n, int k);

/* Calibrates the kept heads on val (n >= 1; face and mirror averaged, as the epochs
 * are scored): fits a gender and an ethnicity temperature (fm_ft_fit_temperature),
 * and fm_finetune_write_heads then writes those two output layers divided by them
 * (and heads.train.temperature), so the written heads' probabilities match how often
 * they are right while their answers stay the same. The age output is left alone.
 * t (may be NULL) gets {gender T, ethnicity T}; nll (may be NULL) the mean held-out
 * negative log-likelihoods {gender before, after, ethnicity before, after}. */
fm_status fm_finetune_calibrate(fm_finetune *ft, const fm_ft_set *val, double t[2],
                                double nll[4], fm_error *err);

/* Adds the backbone's tensors (the kept weights, every tensor the base has) to w.
 * The caller adds the metadata (see fm_finetune_copy_meta and the lineage keys in
 * models/DLIB_RESNET.md). */
fm_status fm_finetune_write_backbone(const fm_finetune *ft, fm_model_writer *w,
                                     fm_error *err);

/* The identity of the weights fm_finetune_write_backbone writes (hex SHA-256 over
 * every tensor's name with its NUL and f32 data, in the base's order: the
 * general.source_integrity of models/FORMAT.md), computed without writing them. */
fm_status fm_finetune_weights_digest(const fm_finetune *ft, char hex[65], fm_error *err);

/* The alignment template the trainer aligns with (x0,y0,...,x4,y4 in input pixels):
 * the base's, scaled by align_zoom. The trained backbone must carry it as its
 * align.template (the pipeline aligns with the backbone's template). */
const float *fm_finetune_template(const fm_finetune *ft);

/* Adds the base model's metadata to w except the keys listed in skip (NULL-ended).
 * The base's own lineage (general.base*, train.*, expand.*, base.*: a base that was
 * itself trained, or expanded from a compact file) moves one level down, under base.
 * (train.command -> base.train.command, base.train.command -> base.base.train.command),
 * so a model fine-tuned from a fine-tuned model keeps the whole chain and the caller
 * can write its own general.base and train.* keys. */
fm_status fm_finetune_copy_meta(const fm_model *base, const char *const *skip,
                                fm_model_writer *w, fm_error *err);

/* Adds the heads' tensors (feat.mean, feat.std, shared.0, age, gender, race) and
 * heads.leaky_alpha, heads.fallback_age (mean training age) to w. The caller adds
 * general.*, heads.backbone, heads.feature ("pooled"), heads.flip and labels.*. */
fm_status fm_finetune_write_heads(const fm_finetune *ft, fm_model_writer *w,
                                  fm_error *err);

/* For tests: the loss of n (1..batch) normalised inputs x [n, 3, H, W] with labels,
 * and with want_grad the gradient of every trained parameter (dropout off). params
 * and grads point at the flat parameter and gradient vectors (count floats) and
 * trained_from is the first trained element (parameters before it are frozen). */
fm_status fm_finetune_loss(fm_finetune *ft, const float *x, const fm_utk_label *labels,
                           int n, int want_grad, double *loss, fm_error *err);
float *fm_finetune_params(fm_finetune *ft, size_t *count, size_t *trained_from);
const float *fm_finetune_grads(const fm_finetune *ft);
/* For tests: the pooled backbone features (n x 256) of n (1..batch) normalised inputs
 * x [n, 3, H, W] with the current weights. */
fm_status fm_finetune_pooled(fm_finetune *ft, const float *x, int n, float *out,
                             fm_error *err);
/* The input size the backbone takes. */
void fm_finetune_input_size(const fm_finetune *ft, int *h, int *w);

/* ---- the steps of `facemill train` ----------------------------------------------- */

/* The five landmarks of the highest-scoring face of every image of a training set. */
typedef struct fm_ft_faces {
    fm_image_rows rows; /* width 10: x0,y0,...,x4,y4 in the original image's pixels */
    char key[4096];     /* how they were found: detector and decoder settings */
} fm_ft_faces;

/* Fills *f for the images of s: the production detector of c (one thread each) in
 * jobs processes, or the cache file when it holds these images found the same way;
 * writes the cache otherwise (cache may be NULL: none). Logs progress. *f belongs to
 * the caller (fm_ft_faces_free), on error too. Returns FM_OK, FM_ERR_NOMEM,
 * FM_ERR_INTERNAL when a detection process failed, or the cache writer's errors. */
fm_status fm_ft_faces_find(fm_ft_faces *f, const fm_config *c, const fm_trainset *s,
                           const char *cache, int jobs, fm_error *err);
void fm_ft_faces_free(fm_ft_faces *f);

/* The photos of a training set with a face, decoded at full size, split as the set
 * holds them out. */
typedef struct fm_ft_data {
    fm_ft_set train, val; /* views into images */
    fm_ft_image *images;  /* train.n + val.n, training faces first; pixels owned */
    int no_face;          /* images without a face (or unreadable) */
    char id[128];         /* names the data for checkpoints: the face counts and a hash
                             of the names, the split and the detector's settings */
} fm_ft_data;

/* Decodes (decode.* of c) every image of s that f found a face in, landmarks moved
 * into the decoded pixels' coordinates; an image that does not decode now is logged
 * and left out. *d belongs to the caller (fm_ft_data_free), on error too. Returns
 * FM_OK, FM_ERR_NOMEM or the decoder's errors. */
fm_status fm_ft_data_load(fm_ft_data *d, const fm_config *c, const fm_trainset *s,
                          const fm_ft_faces *f, fm_error *err);
void fm_ft_data_free(fm_ft_data *d);

/* What a fine-tuned backbone and its heads record besides their weights. */
typedef struct fm_ft_lineage {
    const fm_model *base;    /* the base backbone (its metadata is carried over) */
    const char *base_path;   /* its file (general.base, general.base_sha256) */
    const fm_ft_opts *opts;  /* train.from, train.seed */
    const fm_trainset *data; /* train.data */
    const char *command;     /* train.command: the command line */
    const char *commit;      /* train.commit: the source tree's `git describe` */
} fm_ft_lineage;

/* Writes the kept weights of ft, atomically: the backbone to backbone_path (the
 * base's metadata, a new identity and the lineage) and the heads to heads_path (read
 * with that backbone), each with the kept epoch's figures from best and the lineage.
 * d gives the face counts. Returns the writer's errors or those of reading the base
 * and the written backbone. */
fm_status fm_finetune_save(const fm_finetune *ft, const fm_ft_progress *best,
                           const fm_ft_data *d, const fm_ft_lineage *lin,
                           const char *backbone_path, const char *heads_path, fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
