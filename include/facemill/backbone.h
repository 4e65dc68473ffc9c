/* backbone.h - face embedding networks: an aligned face in, feature vectors out.
 *
 * A backbone is one model file whose general.architecture names a C builder
 * (worker/arch_*.c) registered in worker/vision/backbone.c. The file's metadata gives the
 * input size (input.size), normalisation (input.mean, input.scale: value =
 * (pixel - mean[c]) * scale[c] on RGB 0..255) and the alignment template
 * (align.template: five landmarks in input pixels). Weights stay in the mapped file;
 * a backbone owns one arena, sized at open for max_batch faces, so embedding a batch
 * allocates nothing.
 *
 * Outputs, by name:
 *   "embedding"  the network's final descriptor (dlib: 128-d, FaceNet: 512-d), as the
 *                original model defines it (normalised or not, per architecture);
 *   "pooled"     the globally pooled activations before the last projection (richer
 *                features for the heads; dlib: 256-d, FaceNet: 1792-d).
 * Not thread-safe: one backbone per worker thread/process.
 */
#ifndef FACEMILL_BACKBONE_H
#define FACEMILL_BACKBONE_H

#include <stdint.h>

#include "facemill/model.h"
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_backbone fm_backbone;

typedef enum fm_backbone_output {
    FM_BACKBONE_EMBEDDING = 0,
    FM_BACKBONE_POOLED = 1,
    FM_BACKBONE_OUTPUT_COUNT
} fm_backbone_output;

/* A backbone's input convention, from its model file's metadata. */
typedef struct fm_backbone_input {
    int h, w;                /* input.size: height, width in pixels */
    float mean[3], scale[3]; /* input.mean, input.scale: value = (pixel - mean) * scale */
    float tmpl[10];          /* align.template: x0,y0,...,x4,y4 in input pixels */
} fm_backbone_input;

/* Reads the input convention of the backbone model m: input.size (2 values, each
 * 1..4096), input.mean and input.scale (3 finite values each, no scale 0) and
 * align.template (10 finite values). What the backbone and the fine-tuner both run
 * with. FM_ERR_NOT_FOUND for a missing key, FM_ERR_FORMAT (the path and key in the
 * message) for a bad one. */
fm_status fm_backbone_read_input(const fm_model *m, fm_backbone_input *out, fm_error *err);

/* Opens the model file at path, checks its architecture is registered and every
 * tensor it needs is present with the right shape, and sizes the arena for batches
 * of up to max_batch faces (>= 1). On success *out is owned by the caller
 * (fm_backbone_close). */
fm_status fm_backbone_open(fm_backbone **out, const char *path, int max_batch,
                           fm_error *err);

/* Closes b and sets *b to NULL; accepts NULL and *b == NULL. */
void fm_backbone_close(fm_backbone **b);

/* general.architecture of the model ("dlib_resnet", "facenet_irv1"). */
const char *fm_backbone_arch(const fm_backbone *b);

/* Input height and width in pixels. */
void fm_backbone_input_size(const fm_backbone *b, int *h, int *w);

/* The five-point alignment template in input pixels (x0,y0,...,x4,y4). */
const float *fm_backbone_template(const fm_backbone *b);

/* Length of output `which` per face. */
int fm_backbone_dim(const fm_backbone *b, fm_backbone_output which);

/* A batch runs through the network in passes of at most this many faces. A pass of
 * 16 is slower per face than one: the early layers' activations of 16 faces (35x35x32
 * floats, 157 KB per face and tensor) no longer stay in the core's cache from one
 * layer to the next (facemill-bench-embed on a Zen 3 core: 11.8, 10.6, 10.3, 10.2 and
 * 13.2 ms per face at 1, 2, 4, 8 and 16). Since the wide late layers run in position
 * tiles with their weights packed once, one face is about as fast per face as several,
 * and two the fastest (on a Xeon with AVX-512, in one run: 3.77-3.82, 3.67-3.69 and
 * 3.89 ms per face at 1, 2 and 8); with passes of 8 or 4 a batch of 16 took 2-8%
 * longer per face than one face, with passes of 2 it takes no longer (3.78-3.90
 * against 3.80-4.10), and the arena is 5 MB smaller than with passes of 8. The arena
 * is sized for one pass. */
#define FM_BACKBONE_CHUNK 2

/* Largest batch fm_backbone_forward takes. */
int fm_backbone_max_batch(const fm_backbone *b);

/* Floating-point operations of one face through the network, counted from its layer
 * shapes when it was opened (2 per multiply-add of its convolutions and dense layers,
 * fm_arena_flop): dlib_resnet 0.542 GFLOP, facenet_irv1 about 2.8. */
double fm_backbone_flop(const fm_backbone *b);

/* Runs n faces (1 <= n <= max_batch) through the network. faces[i] is an aligned
 * face, RGB interleaved, input h x w x 3 bytes, rows of w*3 bytes (not owned).
 * For each non-NULL out[k] (k an fm_backbone_output), writes n x dim(k) floats,
 * face-major. FM_ERR_INVALID for a bad n. */
fm_status fm_backbone_forward(fm_backbone *b, const uint8_t *const *faces, int n,
                              float *out[FM_BACKBONE_OUTPUT_COUNT], fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
