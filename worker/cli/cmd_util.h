/* cmd_util.h - what subcommands share: printing a result in the result schema (detect,
 * predict), making output directories. Program code, not part of libfacemill. */
#ifndef FACEMILL_CMD_UTIL_H
#define FACEMILL_CMD_UTIL_H

#include "facemill/json.h"
#include "facemill/pipeline.h"
#include "facemill/result_json.h"

/* The schema's face (result_json.h) of a detection and, when a is not NULL, its
 * attributes. */
void fm_cmd_result_face(fm_result_face *out, const fm_face *det, const fm_attrs *a);

/* Writes one image's pipeline result as an image object of the result schema
 * (proto/RESULTS.md), no newline: source, width, height, error, times_ms (labelled
 * images) and faces with box, score, landmarks and, when the heads ran, age, age_std,
 * gender, gender_probs, race and race_probs (gender and race null where c's
 * heads.gender_min_prob and heads.race_min_prob abstain). */
void fm_cmd_json_result(fm_json *j, const char *source, const fm_image_result *r,
                        const fm_config *c);

/* Makes the directory dir and its missing parents (mode 0777 less the umask), for
 * --draw-dir, --ppm-dir, --chips-dir and keygen's --dir. FM_OK when it exists
 * already; FM_ERR_IO naming the part that could not be made, or dir when it is not a
 * directory. */
fm_status fm_cmd_make_dirs(const char *dir, fm_error *err);

#endif
