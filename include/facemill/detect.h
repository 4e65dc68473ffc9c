/* detect.h - face detection: MTCNN (P-Net over an image pyramid, R-Net, O-Net) with
 * box regression, non-maximum suppression and five landmarks per face.
 *
 * Why it exists: detection is the first compute stage of the worker pipeline and, on
 * large photos, its most expensive one. The detector owns the three mapped model
 * files and ONE scratch arena sized when it opens, so detecting faces in an image
 * allocates nothing from the heap.
 *
 * What fm_detect computes is specified, number for number, by the numpy reference
 * tests/reference/mtcnn_ref.py (coordinates, bilinear sampling of pyramid levels and
 * face crops, pyramid scales, NMS and its tie-breaking, stage order, regression,
 * squaring, landmarks); tests/test_mtcnn_ref.py checks the two agree. Documented
 * below: two deliberate differences (min_face is in pixels of the ORIGINAL image, see
 * fm_image's DCT scale; candidate buffers have a fixed capacity) and one option the
 * reference lacks (pad, off by default); the reference skips levels as
 * min_face_frac does when given the smallest face searched.
 *
 * How the work is bounded. The largest pyramid level is at most max_side (+1 for
 * rounding) pixels on its long side. P-Net runs over each level in horizontal strips
 * of FM_DETECT_PNET_STRIP_ROWS output rows (each strip recomputes a 10-row margin, so
 * the maps equal a whole-level run up to float rounding), R-Net and O-Net in chunks of
 * FM_DETECT_RNET_BATCH and FM_DETECT_ONET_BATCH crops. The arena is measured at open
 * for the worst case of each: a full strip of the widest level, a full chunk.
 *
 * Candidate caps. P-Net candidates (cells above pnet_threshold) of one level are kept
 * in a buffer of max_level_candidates entries before that level's NMS; the survivors
 * of all levels in one of max_candidates entries. When a buffer is full, the lowest
 * scores are dropped (ties: the later candidate goes first) and the times record says
 * so (truncated = 1). The defaults are far above what photos produce (a busy
 * 1920x1400 photo yields at most ~600 candidates on a level at the default
 * threshold), so a cap is reached only with pathological settings such as
 * pnet_threshold 0.
 *
 * Tight face crops. MTCNN needs some context around a face: on archives of aligned
 * face crops that fill the frame (UTKFace's 200x200 chips) it misses faces cut by the
 * image border. opts.pad detects on the image inside a mid-gray border (nothing is
 * copied: the samplers read the border value outside the image); coordinates stay
 * those of the image. The border counts as image for every rule above (pyramid sizes,
 * max_side, crops: zero only outside the border), exactly as if the caller had padded
 * the pixels. On UTKFace val, pad 0.25 raises the share of images with a face from
 * 98.7% to 99.9% (ops/bench/bench_detect.c); it stays 0 by default (config key
 * detect.pad) because it enlarges every pyramid level of ordinary photos for no gain.
 *
 * Smallest face. The pyramid's first level scales the image by 12 / min_face, so the
 * faces of min_face pixels cost the most: the first two levels hold three quarters of
 * the pyramid's pixels. opts.min_face_frac also bounds the smallest face by the
 * image's size: with M = max(min_face, min_face_frac x the long side), both in pixels
 * of the original image, a level is skipped when the next one still finds faces of M
 * pixels (its window, 12 / s, is at most M), so the first level run is the last whose
 * window is at most M (with pad, the border counts as image, as for the rules above).
 * The levels that run are exactly min_face's, so a face larger than M is searched at
 * the same scales as with min_face_frac 0. Small images are untouched (at 0.025 and
 * min_face 20, every level runs up to 1,128 pixels on the long side, where M reaches
 * the second level's window of 28.2 pixels), and a larger photo costs about what a
 * 640x480 image does (its first level run is 480 to 680 pixels on
 * its long side), as with a detector of fixed input size. Faces under M are not
 * searched for, but P-Net's window also fires on faces somewhat smaller than itself:
 * of sample1's three faces shrunk to 17-19 pixels in a 1920x1280 frame, 1 is still
 * found (all 3 at 21-23 pixels), with lower scores and looser boxes than every level
 * gives (tests/test_mtcnn_ref.py; README, "Choosing detect.min_face").
 *
 * Second look. Grayscale, over-exposed, rotated or partly covered faces often score
 * just under the thresholds. When the first pass finds no face at all and opts.retry
 * is set, the detector runs once more with the lower retry thresholds and reports
 * what that finds. Images where the first pass found a face get exactly its answer;
 * an image without faces costs a second, somewhat busier pass. The thresholds were
 * chosen on damaged images of the training hold-out and checked against images
 * without faces (README, Accuracy).
 *
 * Threads: a detector is used by one thread at a time (it owns one arena). Open one
 * per worker thread; the model files' pages are shared by the operating system.
 */
#ifndef FACEMILL_DETECT_H
#define FACEMILL_DETECT_H

#include "facemill/config.h"
#include "facemill/image.h"
#include "facemill/status.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Model file names inside the models directory (written by models/fetch). */
#define FM_DETECT_PNET_FILE "mtcnn_pnet.fmm"
#define FM_DETECT_RNET_FILE "mtcnn_rnet.fmm"
#define FM_DETECT_ONET_FILE "mtcnn_onet.fmm"

/* Work unit sizes (they change memory and speed; results only by float rounding). */
#define FM_DETECT_PNET_STRIP_ROWS 40 /* P-Net output rows per strip */
#define FM_DETECT_RNET_BATCH 64      /* 24x24 crops per R-Net forward */
#define FM_DETECT_ONET_BATCH 16      /* 48x48 crops per O-Net forward */

/* Candidate caps used when the options leave them 0 (see "Candidate caps"). */
#define FM_DETECT_DEFAULT_LEVEL_CANDIDATES 32768
#define FM_DETECT_DEFAULT_CANDIDATES 8192
#define FM_DETECT_MAX_CAP 1048576 /* largest cap accepted */

/* Gray level of the border opts.pad adds (all three channels). */
#define FM_DETECT_PAD_VALUE 128

/* Most pyramid levels an image can have (bounds min_face, max_side, scale_factor). */
#define FM_DETECT_MAX_LEVELS 1024

/* Detector settings. Fill with fm_detect_opts_defaults or fm_detect_opts_from_config
 * and change what you need; fm_detector_open copies them. */
typedef struct fm_detect_opts {
    double min_face;       /* smallest face searched for, in pixels of the ORIGINAL
                              image (before DCT scaling); > 0. The first pyramid level
                              scales the image by 12 / min_face. */
    double min_face_frac;  /* 0..0.5: faces smaller than this fraction of the image's
                              long side (ORIGINAL pixels) are not searched either: the
                              pyramid levels that would find only such faces are
                              skipped, the others are min_face's (see "Smallest
                              face"); 0 = min_face alone */
    int max_side;          /* long side of the largest pyramid level, 12..16384: the
                              first level's scale is also <= max_side / long side */
    double scale_factor;   /* ratio between pyramid levels, 0 < f <= 0.99 */
    double pnet_threshold; /* 0..1: a P-Net cell goes on when its score is > this */
    double rnet_threshold; /* 0..1: an R-Net candidate goes on when its score is > this */
    double onet_threshold; /* 0..1: an O-Net candidate is a face when its score is > this */
    int max_faces;         /* most faces reported, the highest scores; >= 1 */
    double pad;            /* 0..1: border added on every side before detection, as a
                              fraction of the image's long side, filled with
                              FM_DETECT_PAD_VALUE (see "Tight face crops"); 0 = none */
    int max_level_candidates; /* 0 = FM_DETECT_DEFAULT_LEVEL_CANDIDATES, else 1..MAX_CAP */
    int max_candidates;       /* 0 = FM_DETECT_DEFAULT_CANDIDATES, else 1..MAX_CAP */
    int retry;                /* 1: a second look at images without a face (see
                                 "Second look"); 0: one pass */
    double retry_pnet_threshold; /* 0..1: the second look's thresholds */
    double retry_rnet_threshold;
    double retry_onet_threshold;
} fm_detect_opts;

/* The built-in defaults: min_face 20, min_face_frac 0.025, max_side 1600, scale_factor
 * 0.709, thresholds 0.6 / 0.7 / 0.7, max_faces 64, pad 0, default caps, the second look
 * on with thresholds 0.5 / 0.6 / 0.6 (equal to the config defaults). */
void fm_detect_opts_defaults(fm_detect_opts *o);

/* The detect.* settings of c (min_face, min_face_frac, max_side, scale_factor, the
 * thresholds, max_faces, pad, the second look); the caps stay 0 (defaults). */
void fm_detect_opts_from_config(fm_detect_opts *o, const fm_config *c);

/* One detected face, in the coordinates of the ORIGINAL image: pixel centres at
 * integers, (0, 0) the centre of the top-left pixel, a box the continuous rectangle
 * between its corners (width x2 - x1). Boxes are not clipped to the image. */
typedef struct fm_face {
    float box[4];       /* x1, y1, x2, y2 */
    float score;        /* O-Net face probability, > onet_threshold */
    float landmarks[10];/* x, y of: left eye, right eye, nose, left and right mouth
                           corner (left/right as seen in the image) */
} fm_face;

/* Where a tightly cropped, upright face's landmarks are, as shares of the image's
 * width and height (x, y of left eye, right eye, nose, left and right mouth corner;
 * 0 and 1 are the image's edges): the medians of the detector's landmarks on 598
 * UTKFace "aligned and cropped" chips (every 32nd image of the training set; their
 * quartiles are within 0.02 of these). detect.mode=cropped places them on every
 * image instead of running the detector. */
extern const float fm_detect_cropped_landmarks[10];

/* One face filling the image: box the whole image, score 1, the landmarks at the
 * shares frac (as fm_detect_cropped_landmarks) of the image's full-resolution size,
 * in the full-resolution pixel coordinates fm_detect reports. */
void fm_detect_fixed(const fm_image *img, const float frac[10], fm_face *face);

/* What one fm_detect call did. */
typedef struct fm_detect_times {
    double pnet_ms;  /* pyramid sampling, P-Net, stage-1 NMS and regression */
    double rnet_ms;  /* crops, R-Net, NMS, regression */
    double onet_ms;  /* crops, O-Net, landmarks, regression, NMS */
    int levels;      /* pyramid levels run */
    int levels_skipped; /* levels skipped for min_face_frac (smaller faces than it) */
    int pnet_boxes;  /* candidates entering R-Net */
    int rnet_boxes;  /* candidates entering O-Net */
    int onet_boxes;  /* faces found, before the max_faces / capacity cut */
    int truncated;   /* 1 when a candidate buffer was full and dropped candidates */
    int retried;     /* 1 when the first pass found nothing and the second look ran
                        (on the same P-Net maps): the R-Net and O-Net times, work and
                        counts above are then those of both looks together */
    /* The networks' work: 2 FLOP per multiply-add of their convolutions and dense
     * layers, counted from the layer shapes as they ran (fm_arena_flop). P-Net is about
     * 3,660 FLOP per pixel of the pyramid levels (plus the strips' overlap rows), R-Net
     * 3,061,536 FLOP per 24x24 crop, O-Net 25,819,904 per 48x48 crop. */
    double pnet_flop, rnet_flop, onet_flop;
    double pnet_pixels; /* pixels of the pyramid levels P-Net ran on */
} fm_detect_times;

typedef struct fm_detector fm_detector;

/* Opens a detector on the three model files in models_dir (FM_DETECT_*_FILE): maps
 * them, checks general.architecture ("mtcnn.pnet", "mtcnn.rnet", "mtcnn.onet"),
 * input.mean / input.scale (three values each) and the name and shape of every tensor
 * the networks use, checks opts (NULL = defaults), measures the worst case and
 * allocates the one arena. On success *out is a new detector the caller owns
 * (fm_detector_close). On failure *out is NULL, nothing is leaked, and the status is
 * FM_ERR_IO / FM_ERR_FORMAT / FM_ERR_VERSION (a model file is missing, unreadable or
 * malformed; the message names the file), FM_ERR_NOT_FOUND (a tensor is missing),
 * FM_ERR_INVALID (a bad option or NULL argument, message names it) or FM_ERR_NOMEM. */
fm_status fm_detector_open(fm_detector **out, const char *models_dir,
                           const fm_detect_opts *opts, fm_error *err);

/* Closes *d (unmaps the models, frees the arena) and sets *d to NULL. Accepts NULL and
 * *d == NULL. */
void fm_detector_close(fm_detector **d);

/* The options the detector runs with (defaults filled in). Owned by d. */
const fm_detect_opts *fm_detector_opts(const fm_detector *d);

/* Bytes of the detector's arena (networks' activations and scratch, candidate
 * buffers). */
size_t fm_detector_arena_bytes(const fm_detector *d);

/* Finds the faces in img (RGB, any size; img and its pixels are only read and stay
 * the caller's). A zero scale_num or scale_denom is taken as 1/1. Writes up to
 * min(cap, max_faces) faces to faces[] sorted by score, highest first, in original
 * image coordinates: a coordinate u of img's pixels maps to
 * (u + 0.5) * scale_denom / scale_num - 0.5 (pixel centres to pixel centres), and
 * min_face is converted the other way before the pyramid is built. *n_faces receives
 * the count (0 for an image without faces, or one too small for a 12x12 window at
 * the first scale). t (may be NULL) receives times and counts. faces may be NULL when
 * cap is 0. Returns FM_OK; FM_ERR_INVALID for NULL arguments or an image without
 * pixels; FM_ERR_INTERNAL / FM_ERR_ARENA only on a bug (the arena is sized for the
 * worst case). On error *n_faces is 0. Allocates nothing. */
fm_status fm_detect(fm_detector *d, const fm_image *img, fm_face *faces, int cap,
                    int *n_faces, fm_detect_times *t, fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
