/* train-impl.h - what the trainers of worker/train/ share privately: the random
 * numbers that make a run a function of its seed, and the work on the images before
 * training (worker processes, their progress, the cache files of their results).
 *
 * SplitMix64 (Steele, Lea and Flood): portable, seedable, and good enough for
 * shuffles, initial weights, dropout masks and augmentation draws. A keyed use
 * (finetune.c: a draw is a function of seed, epoch and position, so a resumed run
 * draws what the uninterrupted one would) and a stream (heads_trainer.c) both build on
 * the one mixing function.
 */
#ifndef FACEMILL_TRAIN_IMPL_H
#define FACEMILL_TRAIN_IMPL_H

#include "facemill/model.h"
#include "facemill/trainset.h"

#include <stdint.h>

#define FM_TRAIN_GOLDEN 0x9e3779b97f4a7c15ull /* SplitMix64's increment */

/* SplitMix64's output for state z: a bijective mix of z + the increment. */
static inline uint64_t fm_train_mix64(uint64_t z)
{
    z += FM_TRAIN_GOLDEN;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The top 53 bits of a draw as a double in [0, 1). */
static inline double fm_train_unit(uint64_t bits)
{
    return (double)(bits >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- the work before and after training (trainset.c) ------------------------- */

/* The end of writing a trained file: when st is FM_OK, saves *w to path (atomically)
 * and logs "wrote PATH"; destroys *w either way. Returns st, or the writer's error. */
fm_status fm_train_save_file(fm_model_writer **w, fm_status st, const char *path,
                             fm_error *err);

/* Runs part(ctx, job, jobs) for job 0..jobs-1 (at most 64) in forked processes, or
 * inline when jobs <= 1, and waits for all. The parts share memory only through what
 * was mapped MAP_SHARED before the call (fm_image_rows). Returns 0 when every part
 * returned 0, else -1. */
int fm_train_fork_parts(int jobs, int (*part)(void *ctx, int job, int jobs), void *ctx);

/* The progress of one part over its images, logged by the first process only: every
 * 15 s and at the end, "WHAT: DONE/MINE images (process 1 of JOBS), RATE images/s,
 * ETA S s". */
typedef struct fm_part_progress {
    const char *what;
    int job, jobs, mine, done;
    double t0, last; /* fm_now_ms */
} fm_part_progress;

void fm_part_progress_start(fm_part_progress *p, const char *what, int job, int jobs,
                            int mine);
/* n more images are done. */
void fm_part_progress_step(fm_part_progress *p, int n);

/* A cache file of image rows (a model file): its names. The key says how the rows
 * were made; rows are reused only for the same key and the same paths in order. */
typedef struct fm_rows_cache {
    const char *what;         /* "feature cache", for messages */
    const char *architecture; /* general.architecture */
    const char *key_key;      /* metadata: the key */
    const char *paths_key;    /* metadata: the image paths, in order */
    const char *tensor;       /* the rows' tensor; "found" holds r->found */
    unsigned open_flags;      /* fm_model_open's flags when reading */
} fm_rows_cache;

/* 1 when the file at path holds rows of exactly these r->n paths made with key (they
 * are copied into r), else 0 with the reason logged. */
int fm_rows_cache_load(const fm_rows_cache *k, const char *path, const char *key,
                       char *const *paths, fm_image_rows *r);
/* Writes r to path (atomically). The writer's errors. */
fm_status fm_rows_cache_save(const fm_rows_cache *k, const char *path, const char *key,
                             char *const *paths, const fm_image_rows *r, fm_error *err);

#endif
