/* heads.h - the attribute heads: backbone features in, age, gender and ethnicity out.
 *
 * Why it exists: the backbone describes a face as a feature vector; the heads turn
 * that vector into the attributes facemill reports. They are small (a few hundred
 * thousand weights), trained by facemill's own trainer (`facemill train --freeze`,
 * worker/train/heads_trainer.c) on features of one particular backbone, and stored in a
 * model file with general.architecture "heads".
 *
 * The network, all dense layers (W stored [out, in]):
 *   x' = (x - feat.mean) / feat.std                       standardised features
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
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FM_HEADS_AGES 117   /* age classes 0..116 */
#define FM_HEADS_GENDERS 2  /* male, female (UTKFace order) */
#define FM_HEADS_RACES 5    /* White, Black, Asian, Indian, Others (UTKFace order) */
#define FM_HEADS_OUTPUTS (FM_HEADS_AGES + FM_HEADS_GENDERS + FM_HEADS_RACES)
#define FM_HEADS_MAX_LAYERS 8 /* shared layers a file may have */

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

#ifdef __cplusplus
}
#endif
#endif
