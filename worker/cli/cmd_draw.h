/* cmd_draw.h - the pictures `facemill predict --draw` writes: each face's box and its
 * labels (age with its spread, gender and ethnicity with their probabilities) drawn on
 * the image at its full size. Program code, not part of libfacemill. */
#ifndef FACEMILL_CMD_DRAW_H
#define FACEMILL_CMD_DRAW_H

#include "facemill/image.h"
#include "facemill/pipeline.h"

#include <stddef.h>

/* Decodes the image at path at full size with dec (a decoder without target_side),
 * draws the faces of r on it (box lines and text scaled with the image: draw.h) and
 * writes it to out as a JPEG of the image's displayed size. A gender or ethnicity
 * whose most probable class is below gender_min_prob / race_min_prob
 * (heads.*_min_prob) is drawn as withheld ("gender? female 0.62"). Errors: those of
 * fm_decode_file and fm_image_write_jpeg. */
fm_status fm_cmd_draw_labels(fm_decoder *dec, const char *path, const fm_image_result *r,
                             double gender_min_prob, double race_min_prob, const char *out,
                             fm_error *err);


/* dir/<file name of path> into buf, with ".jpg" added unless the name ends in .jpg or
 * .jpeg (the picture written is a JPEG); FM_ERR_INVALID when it does not fit. */
fm_status fm_cmd_draw_path(char *buf, size_t size, const char *dir, const char *path,
                           fm_error *err);

#endif
