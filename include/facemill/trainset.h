/* trainset.h - the data facemill's trainers read: folders of UTKFace-named JPEGs,
 * split into the images trained on and those held out (early stopping, calibration),
 * the per-image results worker processes compute before training, and what a trained
 * file records about its data.
 *
 * Why it exists: heads on frozen features (train.h) and backbone fine-tuning
 * (finetune.h) list, split and describe their data the same way, and both run the
 * production detector over every image in several processes first. One copy keeps
 * the split and the lineage text of the two the same, and lets tests check them
 * without a command line.
 *
 * The split: every image of the validation folder is held out; without one, the
 * images of the training folder whose names fm_utk_in_holdout picks (a hash of the
 * name: the same split on every machine, whatever the listing's order).
 */
#ifndef FACEMILL_TRAINSET_H
#define FACEMILL_TRAINSET_H

#include "facemill/config.h"
#include "facemill/eval.h"
#include "facemill/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A folder of UTKFace-named images: paths (DIR/NAME, sorted by name) and labels. */
typedef struct fm_utk_list {
    int n;
    char **paths;         /* n, owned */
    fm_utk_label *labels; /* n, owned */
    int skipped;          /* entries whose names do not parse (not listed) */
} fm_utk_list;

/* Lists the regular files of dir whose names end in .jpg or .jpeg (any case) and
 * parse as UTKFace names; others ending so are counted in skipped. On success the
 * caller owns *out (fm_utk_list_free). FM_ERR_IO when dir cannot be read. */
fm_status fm_utk_list_dir(const char *dir, fm_utk_list *out, fm_error *err);
void fm_utk_list_free(fm_utk_list *l);

/* The images of one training run. */
typedef struct fm_trainset {
    const char *train_dir;  /* as given (not owned) */
    const char *val_dir;    /* as given, or NULL: a share of train_dir is held out */
    double holdout;         /* that share */
    int n;                  /* images: train_dir's first, then val_dir's */
    int n_train_dir;        /* of them, from train_dir */
    char **paths;           /* n (the strings belong to the lists below) */
    fm_utk_label *labels;   /* n */
    unsigned char *held_out; /* n: 1 for early stopping and calibration */
    fm_utk_list train, val; /* the listings */
} fm_trainset;

/* Lists train_dir (only its first `limit` images by name when limit > 0) and val_dir
 * (may be NULL) into *s and marks the held-out images; logs a warning when names were
 * skipped. *s belongs to the caller (fm_trainset_free), on error too. Returns FM_OK,
 * FM_ERR_IO when a folder cannot be read, FM_ERR_NOMEM. */
fm_status fm_trainset_open(fm_trainset *s, const char *train_dir, const char *val_dir,
                           double holdout, int limit, fm_error *err);
void fm_trainset_free(fm_trainset *s);

/* FM_ERR_INVALID naming the folder when s has too few images to train on: fewer than
 * 2 UTKFace-named ones in train_dir, or none in val_dir (when given). The message
 * counts the file names skipped there. */
fm_status fm_trainset_check(const fm_trainset *s, fm_error *err);

/* The lineage's account of the data, for train_faces faces trained on and val_faces
 * held out: "UTKFace: train DIR (N images, F faces used), early stopping on VAL (V
 * faces)", or without a validation folder "UTKFace: DIR (N images); F faces trained
 * on, V held out for early stopping (share S by file-name hash)". */
void fm_trainset_describe(const fm_trainset *s, int train_faces, int val_faces, char *buf,
                          size_t size);

/* The time of a lineage: now, UTC, "2026-12-03T05:48:21Z". */
void fm_train_date(char *buf, size_t size);

/* The configuration for UTKFace chips: the defaults, with detect.pad 0.25, since the
 * chips are tightly cropped faces and a gray border lets MTCNN see faces that touch
 * the image's edge. What `facemill train` and `facemill eval` start from. */
void fm_utk_config_defaults(fm_config *c);

/* The licence a file trained on UTKFace carries. */
#define FM_TRAIN_UTK_LICENCE "UTKFace: non-commercial research only"

/* Rows of floats, one per image of a set, and whether the image had a face: what the
 * trainers compute in worker processes before training (features, landmarks). They
 * live in one shared anonymous mapping made before the processes fork, so what each
 * process writes is what the parent reads, without temporary files. */
typedef struct fm_image_rows {
    int n, width;
    float *x;      /* n x width */
    float *found;  /* n: 1 a face, 0 none, -1 the image could not be read */
    size_t bytes;  /* of the mapping; 0 when there is none */
} fm_image_rows;

/* Maps rows for n images of width floats, zeroed. FM_ERR_NOMEM when it cannot. */
fm_status fm_image_rows_alloc(fm_image_rows *r, int n, int width, fm_error *err);
/* Unmaps the rows and zeroes *r; accepts zeroed rows. */
void fm_image_rows_free(fm_image_rows *r);

#ifdef __cplusplus
}
#endif
#endif
