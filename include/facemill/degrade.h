/* degrade.h - controlled damage to an image, for measuring how the labels hold up
 * (`facemill eval --degrade SPEC`).
 *
 * Why it exists: UTKFace chips are sharp, frontal, well-lit faces filling the frame;
 * archives hold small, blurred, recompressed, tilted, dark and partly hidden faces.
 * Each damage below is deterministic (the same image and variant give the same
 * pixels), applied to the decoded pixels before detection.
 *
 * The damages (SPEC, what it does to a w x h image):
 *   downN     the face made N pixels wide, then brought back to w x h: the image is
 *             reduced by N / (0.84 w) with area averaging (0.84 w: the median MTCNN
 *             box width on UTKFace chips, 168 of 200 pixels) and enlarged back
 *             bilinearly. down24, down32, down48 in the suite.
 *   jpegQ     compressed as JPEG at quality Q (4:2:0) and decoded. jpeg15.
 *   blurS     Gaussian blur of standard deviation S pixels (kernel radius ceil(3 S),
 *             edges replicated). blur1.5, blur3.
 *   gray      R = G = B = the Rec. 601 luma (0.299 R + 0.587 G + 0.114 B).
 *   rotA      rotation by A degrees about the image's centre (bilinear; corners
 *             filled with the nearest edge pixel). rot25 alternates +25 and -25 by
 *             the variant's parity (half the images each way); rot+25 and rot-25
 *             turn every image one way (positive: counter-clockwise as seen).
 *   dark      exposure -1.5 stops: linear light (sRGB decoded) times 2^-1.5.
 *   bright    exposure +1 stop: linear light times 2, clipped.
 *   occlude   a mid-gray (128) band across the whole width over rows 0.60 h to 0.85 h
 *             (on UTKFace chips: the mouth and chin, as a face mask covers them).
 *   offcentre the face off-centre in a larger frame: a crop window 1.5 times the
 *             image's size is shifted so that the image sits in one of its corners
 *             (the variant modulo 4 picks which); the part of the window beyond the
 *             image is filled with one flat colour, the mean of the image's outermost
 *             pixel ring. The image's own border (hair, background) is the only real
 *             surrounding; nothing is mirrored or invented. Output 1.5 w x 1.5 h.
 *   none      the image as it is (the clean baseline of the suite).
 *
 * Threads: no shared state.
 */
#ifndef FACEMILL_DEGRADE_H
#define FACEMILL_DEGRADE_H

#include "facemill/image.h"
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fm_degrade_kind {
    FM_DEGRADE_NONE = 0,
    FM_DEGRADE_DOWN,
    FM_DEGRADE_JPEG,
    FM_DEGRADE_BLUR,
    FM_DEGRADE_GRAY,
    FM_DEGRADE_ROTATE,     /* param degrees; alternate: the sign follows the variant */
    FM_DEGRADE_EXPOSURE,   /* param stops */
    FM_DEGRADE_OCCLUDE,
    FM_DEGRADE_OFFCENTRE,
} fm_degrade_kind;

typedef struct fm_degrade {
    fm_degrade_kind kind;
    double param;
    int alternate;   /* rotation: +param for even variants, -param for odd ones */
    char name[24];   /* the spec as parsed ("blur1.5") */
} fm_degrade;

/* The face width downN assumes, as a share of the image's width. */
#define FM_DEGRADE_FACE_SHARE 0.84

/* The suite `--degrade all` runs, in order, NULL-ended (the first is "none"). */
extern const char *const fm_degrade_suite[];

/* Parses a SPEC (see above). Returns 0, or -1 for a spec it does not know (or a
 * parameter out of range: downN 4..1024, jpegQ 1..100, blurS 0.1..50, rotA -180..180). */
int fm_degrade_parse(const char *spec, fm_degrade *out);

/* Applies d to in (RGB) and writes the result to *out, whose pixels are allocated
 * with malloc (out->data, out->stride = 3 out->w; the caller frees them). out keeps
 * in's scale and orientation; its orig_w and orig_h are its own size at that scale.
 * variant picks the rotation's sign and the off-centre corner. Returns FM_OK,
 * FM_ERR_INVALID (no image), FM_ERR_NOMEM, or FM_ERR_INTERNAL (JPEG round trip). */
fm_status fm_degrade_apply(const fm_degrade *d, const fm_image *in, unsigned variant,
                           fm_image *out, fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
