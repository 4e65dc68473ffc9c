/* eval.h - measuring the attribute predictions against labelled faces: UTKFace
 * file names, and the metrics `facemill eval` reports.
 *
 * Why it exists: the figures in the model card must be computed one way, by code a
 * test can check against hand-computed values. Nothing here reads files or prints:
 * the caller gathers one fm_eval_item per image and gets an fm_eval_report back.
 *
 * Honest counting: an image where no face was detected stays in "all images" and is
 * wrong for gender and ethnicity; for age it is charged the error of a fallback
 * prediction (the training-set mean age, heads.fallback_age). "Detected only"
 * figures leave those images out. An image the detector missed but the pipeline took
 * as one face anyway (detect.fallback cropped: a "placed" face) is scored on its
 * predictions in "all images", yet counts as not detected: the detection rate is the
 * detector's, and "detected only" leaves it out.
 */
#ifndef FACEMILL_EVAL_H
#define FACEMILL_EVAL_H

#include "facemill/heads.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Labels of one UTKFace image. */
typedef struct fm_utk_label {
    int age;    /* 0..116 */
    int gender; /* 0 male, 1 female */
    int race;   /* 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others */
} fm_utk_label;

/* Parses a UTKFace file name (a path's directory part is ignored):
 * AGE_GENDER_RACE_DATE... where AGE is 0..116, GENDER 0..1 and RACE 0..4, each a
 * plain decimal number; whatever follows the third '_' is not checked (it must be
 * there). Returns 0 and fills *out, or -1 for a name that does not follow the
 * pattern (*out untouched). */
int fm_utk_parse_name(const char *name, fm_utk_label *out);

/* 1 when the base name of path falls in the held-out share (0..1) of a data set:
 * a fixed hash of the name (FNV-1a, 64 bits) decides, so the split is the same on
 * every machine and does not depend on the order of the listing. */
int fm_utk_in_holdout(const char *path, double share);

/* One evaluated image. */
typedef struct fm_eval_item {
    fm_utk_label truth;
    int detected;    /* 1: a face was found and predictions below are filled */
    float age;       /* predicted age (expected value) */
    int gender;      /* predicted class */
    int race;        /* predicted class */
    /* what the metrics do not read, kept for per-image results (0 when unknown) */
    float age_std;
    float gender_probs[FM_HEADS_GENDERS];
    float race_probs[FM_HEADS_RACES];
    int placed;      /* 1: no face was found, but the image was taken as one face
                        (detect.fallback) and the predictions above are filled */
} fm_eval_item;

/* Metrics over a set of images. Fractions are 0..1; with n == 0 every metric is 0. */
typedef struct fm_eval_metrics {
    int n;             /* images */
    int n_detected;    /* of them, with a face found by the detector */
    int n_placed;      /* of them, without one but taken as one face (fallback) */
    double detect_rate;
    double age_mae, age_rmse;
    double gender_acc, race_acc;
} fm_eval_metrics;

#define FM_EVAL_AGE_BANDS 8 /* 0-9, 10-19, ..., 60-69, 70+ */

typedef struct fm_eval_report {
    double fallback_age;          /* age charged for images without a face */
    fm_eval_metrics all;          /* every image; no face = wrong, fallback age */
    fm_eval_metrics detected;     /* images with a face only */
    /* confusion[true][predicted]; the last column counts images with no face */
    int gender_confusion[FM_HEADS_GENDERS][FM_HEADS_GENDERS + 1];
    int race_confusion[FM_HEADS_RACES][FM_HEADS_RACES + 1];
    /* per group, all images (no face = wrong) */
    fm_eval_metrics by_race_gender[FM_HEADS_RACES][FM_HEADS_GENDERS];
    fm_eval_metrics by_age_band[FM_EVAL_AGE_BANDS];
} fm_eval_report;

/* Band index of a true age: age / 10, 7 for 70 and above. */
int fm_eval_age_band(int age);
/* "0-9", ..., "60-69", "70+" (static); NULL out of range. */
const char *fm_eval_age_band_name(int band);

/* Computes the report over items[0..n) (n >= 0; items may be NULL when n is 0).
 * Labels outside their ranges are a programmer error (asserted). */
void fm_eval_compute(const fm_eval_item *items, int n, double fallback_age,
                     fm_eval_report *r);

/* ---- statistics ------------------------------------------------------------------
 *
 * Intervals are 95% percentile bootstrap intervals: `resamples` samples of n images
 * drawn with replacement from the n images (a fixed seed, so the same items give the
 * same interval on every run and machine), the metric computed on each, and the 2.5th
 * and 97.5th percentiles of those values (linear interpolation between order
 * statistics). Images, not faces, are resampled: an image without a face stays in the
 * sample. "Detected only" intervals come from the same samples, over the images of each
 * sample that had a face. */

#define FM_EVAL_RESAMPLES 1000 /* what `facemill eval` uses */
#define FM_EVAL_SEED 19u

typedef struct fm_eval_ci {
    double lo, hi;
} fm_eval_ci;

/* An interval for each figure of an fm_eval_metrics. */
typedef struct fm_eval_cis {
    fm_eval_ci detect_rate, age_mae, age_rmse, gender_acc, race_acc;
} fm_eval_cis;

/* The 95% intervals of the metrics over all images (*all) and over detected images
 * (*detected; may be NULL). n == 0 gives zero intervals. Returns 0, or -1 when memory
 * ran out or resamples < 1. */
int fm_eval_bootstrap(const fm_eval_item *items, int n, double fallback_age, int resamples,
                      uint64_t seed, fm_eval_cis *all, fm_eval_cis *detected);

/* The q-quantile (0..1) of v[0..n) (n >= 1), sorting v in place: linear interpolation
 * between the order statistics at positions q (n - 1) (R's type 7). */
double fm_eval_quantile(double *v, int n, double q);

/* McNemar's exact test: the two-sided p-value of b and c discordant pairs (b: the first
 * right and the second wrong; c the reverse) under the binomial(b + c, 1/2) of no
 * difference: min(1, 2 P(X <= min(b, c))). 1 when b + c is 0. */
double fm_eval_mcnemar(int b, int c);

/* A difference between two runs on the same images: first minus second. */
typedef struct fm_eval_diff {
    double diff;
    fm_eval_ci ci; /* paired bootstrap: the same resampled images for both runs */
} fm_eval_diff;

typedef struct fm_eval_paired {
    int n;
    fm_eval_metrics a, b; /* all images, each run */
    fm_eval_diff detect_rate, age_mae, age_rmse, gender_acc, race_acc;
    /* discordant pairs (b: a right and b wrong; c: a wrong and b right) and McNemar's
     * exact p-value, for gender and ethnicity (no face counts as wrong) */
    int gender_b, gender_c, race_b, race_c;
    double gender_p, race_p;
} fm_eval_paired;

/* Reads a file written by `facemill eval --save-results` (one JSON object per image:
 * file, true_age, true_gender, true_race, face, and for a face age, age_std, gender,
 * race and their probabilities) and finds each of the n images named by paths in it,
 * by file name: other[i] holds image i's line, found[i] is 1 when it is there.
 * Returns the number found, or -1 with the reason in err (FM_ERR_IO, FM_ERR_NOMEM, or
 * FM_ERR_FORMAT naming the line that is not one of that command's). */
int fm_eval_read_saved(const char *path, int n, const char *const *paths,
                       fm_eval_item *other, unsigned char *found, fm_error *err);

/* Compares runs a and b over the same n images (a[i] and b[i] are one image; their
 * truths must agree, asserted). Returns 0, or -1 when memory ran out or resamples < 1. */
int fm_eval_compare(const fm_eval_item *a, double fallback_a, const fm_eval_item *b,
                    double fallback_b, int n, int resamples, uint64_t seed,
                    fm_eval_paired *out);

/* A 64-bit hash of path's base name and seed (FNV-1a, then mixed): the order a fixed,
 * seeded subsample takes images in (`facemill eval --sample`). */
uint64_t fm_utk_name_hash(const char *path, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
