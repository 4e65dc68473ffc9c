/* train-impl.h - what the two trainers of worker/train/ (heads_trainer.c, finetune.c)
 * share privately: the random numbers that make a run a function of its seed.
 *
 * SplitMix64 (Steele, Lea and Flood): portable, seedable, and good enough for
 * shuffles, initial weights, dropout masks and augmentation draws. A keyed use
 * (finetune.c: a draw is a function of seed, epoch and position, so a resumed run
 * draws what the uninterrupted one would) and a stream (heads_trainer.c) both build on
 * the one mixing function.
 */
#ifndef FACEMILL_TRAIN_IMPL_H
#define FACEMILL_TRAIN_IMPL_H

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

#endif
