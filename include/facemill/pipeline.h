/* pipeline.h - the whole labelling path of one worker: decode -> detect -> align ->
 * embed -> heads, for a batch of images at a time.
 *
 * Why it exists: the worker daemon, `facemill predict`, `facemill eval` and the
 * trainer's feature extraction must run exactly the same steps with the same
 * settings; this object owns them (a decoder, the detector, the backbone and the
 * optional heads) and is built from fm_config alone. Faces of all the images of one
 * fm_pipeline_run call are gathered into backbone calls of embed.batch aligned faces
 * (at least 2 when mirror images are embedded, so a face and its mirror stay together),
 * and all of them go through the heads in one call, so the matrix multiplies stay
 * large. Nothing is allocated per image: every buffer is sized at open for
 * max_images images of up to detect.max_faces faces.
 *
 * The only I/O is reading image files when inputs are given as paths.
 *
 * Alignment: landmarks are mapped onto the backbone's template (align.template) by a
 * similarity transform, and the face is warped to the backbone's input size (border
 * pixels replicated). When the heads average over the mirror image (heads.flip) or
 * features are kept (fm_pipeline_opts.keep_features), a second chip is cut: the
 * mirror image of the face, aligned by mirroring the landmarks (left and right eye
 * and mouth corners swapped) and fitting again, so it sits on the template exactly
 * as the face does.
 * With embed.tta_zoom z > 0 (and heads), each face is also cut from a region 1 + z
 * and 1 - z times the aligned one (about the chip's centre), each with its mirror
 * image when those are cut; the heads read the mean features of the views.
 *
 * Threads: one pipeline per thread (it owns a decoder and arenas).
 */
#ifndef FACEMILL_PIPELINE_H
#define FACEMILL_PIPELINE_H

#include "facemill/backbone.h"
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/heads.h"
#include "facemill/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fm_pipeline fm_pipeline;

typedef struct fm_pipeline_opts {
    int max_images;    /* most images per fm_pipeline_run; 0 = 16 */
    int no_heads;      /* 1: do not load heads.model (results carry no attributes,
                          and nothing is embedded unless keep_features) */
    int keep_features; /* 1: embed every face and its mirror image and keep both
                          backbone outputs of both in the results (the trainer) */
} fm_pipeline_opts;

/* One image: a file to read (path non-NULL), or size encoded bytes at data (not
 * owned, only read during the call). */
typedef struct fm_pipeline_input {
    const char *path;
    const uint8_t *data;
    size_t size;
    /* Optional (NULL: none): called with the decoded pixels before detection; the
     * image it writes to *out is what the image's faces are found and cut from. Its
     * pixels are the editor's and must stay valid until the editor's next call or the
     * end of fm_pipeline_run. A failure is that image's error. Coordinates in the
     * results are the edited image's (at the decoded scale's factor). */
    fm_status (*edit)(void *arg, const fm_image *in, fm_image *out, fm_error *err);
    void *edit_arg;
} fm_pipeline_input;

typedef struct fm_face_result {
    fm_face det;       /* box, score, landmarks in original image coordinates; score 0:
                          no face was detected, detect.fallback placed this one */
    int has_attrs;     /* 1 when attrs is filled (heads loaded, face aligned) */
    fm_attrs attrs;
    /* keep_features only (else NULL): features[output][view], view 0 the face, 1 its
     * mirror image; fm_backbone_dim(output) floats each, owned by the pipeline. */
    const float *features[FM_BACKBONE_OUTPUT_COUNT][2];
} fm_face_result;

/* Milliseconds spent on one image. Embedding and heads run on batches that mix
 * images: each image is charged the share of its faces. */
typedef struct fm_pipeline_times {
    double decode_ms, detect_ms, align_ms, embed_ms, heads_ms;
} fm_pipeline_times;

typedef struct fm_image_result {
    fm_error error;        /* error.code FM_OK, or why this image failed */
    int width, height;     /* displayed size of the original image */
    int scale_num, scale_denom; /* DCT scale it was decoded at */
    int n_faces;
    fm_face_result *faces; /* n_faces faces, highest score first; owned by the
                              pipeline, valid until the next run or close */
    fm_pipeline_times times;
    fm_detect_times detect; /* the detector's record: its three stages' times (parts
                               of times.detect_ms), candidates and work */
    int chips;             /* aligned views of its faces run through the backbone(s)
                              (times fm_pipeline_chip_flop: its embedding work) */
} fm_image_result;

/* 1 when a face of r has attributes: alignment, the backbone and the heads ran for
 * this image (their times then count; results show only the stages that ran). */
int fm_image_result_attributed(const fm_image_result *r);

/* Opens everything the configuration names: the detector (models.dir, detect.*,
 * detect.pad), the backbone (embed.backbone, embed.batch), the heads (heads.model,
 * unless empty or opts->no_heads) and a decoder (decode.*). Checks that the heads
 * were trained on this backbone (heads.backbone equals the backbone's identity) and
 * read a vector of the right length.
 *
 * Ensembles: embed.backbone and heads.model may each list up to
 * FM_PIPELINE_MAX_MEMBERS files separated by commas, heads file i for backbone i.
 * Every backbone runs on the same aligned chips (they must share input size and
 * template), each heads file on its own backbone's features, and the answers are
 * averaged: the probabilities, and the age distributions as a mixture (its mean and
 * spread). fm_pipeline_heads, fm_pipeline_backbone, fm_pipeline_backbone_identity
 * and kept features are the first member's. opts may be NULL (defaults). Does not set
 * OpenBLAS threads (fm_nn_set_threads is the program's choice). On success *out is
 * owned by the caller (fm_pipeline_close); on failure *out is NULL and err says which
 * file or setting is wrong. */
fm_status fm_pipeline_open(fm_pipeline **out, const fm_config *c,
                           const fm_pipeline_opts *opts, fm_error *err);

/* Closes *p and everything it owns and sets *p to NULL; accepts NULL. */
void fm_pipeline_close(fm_pipeline **p);

/* Runs n images (1 <= n <= max_images) and fills out[0..n). A bad image (unreadable,
 * a format not read, corrupt, too large) gets its error in out[i].error and the others go
 * on. Returns FM_OK when the batch ran, FM_ERR_INVALID for bad arguments, or the
 * error of a backbone/heads call (a bug or resource failure: results are then
 * invalid). */
fm_status fm_pipeline_run(fm_pipeline *p, const fm_pipeline_input *in, int n,
                          fm_image_result *out, fm_error *err);

/* Parts, owned by the pipeline: the heads (NULL without), the backbone, the
 * detector options in effect, and the backbone's identity string (see heads.h). */
const fm_heads *fm_pipeline_heads(const fm_pipeline *p);
const fm_backbone *fm_pipeline_backbone(const fm_pipeline *p);
const fm_detect_opts *fm_pipeline_detect_opts(const fm_pipeline *p);
const char *fm_pipeline_backbone_identity(const fm_pipeline *p);
int fm_pipeline_max_images(const fm_pipeline *p);

/* Floating-point operations of one aligned chip through the backbone, of every
 * member of an ensemble together (fm_backbone_flop); 0 when nothing is embedded. */
double fm_pipeline_chip_flop(const fm_pipeline *p);

/* Most backbones in an ensemble. */
#define FM_PIPELINE_MAX_MEMBERS 4

/* Splits a comma-separated list (spaces around items ignored) into out. Returns the
 * number of items, or -1 for an empty item, an item too long, or more than max. */
int fm_pipeline_split_list(const char *s, char out[][FM_CONFIG_STRING_MAX], int max);

#ifdef __cplusplus
}
#endif
#endif
