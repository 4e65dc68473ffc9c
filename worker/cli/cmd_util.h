/* cmd_util.h - small helpers the labelling subcommands (detect, predict, train, eval)
 * share: option matching, printing a result in the result schema, a monotonic clock
 * (their folders of labelled images: trainset.h). Program code, not part of
 * libfacemill. */
#ifndef FACEMILL_CMD_UTIL_H
#define FACEMILL_CMD_UTIL_H

#include "facemill/eval.h"
#include "facemill/json.h"
#include "facemill/pipeline.h"
#include "facemill/result_json.h"
#include "facemill/trainset.h"

/* Matches "--name VALUE" or "--name=VALUE" at argv[*i]; advances *i past the value.
 * Returns 1 on a match (value in *val), 0 when argv[*i] is another argument, -1 when
 * the value is missing. */
int fm_cmd_take_opt(int argc, char **argv, int *i, const char *name, const char **val);

/* Parses s as a number in [lo, hi] into *out; returns 0, or -1 (out untouched) for
 * anything else (trailing characters, out of range, NaN). */
int fm_cmd_parse_num(const char *s, double lo, double hi, double *out);

/* Runs part(ctx, job, jobs) for job 0..jobs-1 in forked processes (or inline when
 * jobs <= 1) and waits for all. The parts share memory only through what was mapped
 * MAP_SHARED before the call. Returns 0 when every part returned 0, else -1. */
int fm_cmd_fork_parts(int jobs, int (*part)(void *ctx, int job, int jobs), void *ctx);

/* Milliseconds of CLOCK_MONOTONIC. */
double fm_cmd_now_ms(void);

/* The schema's face (result_json.h) of a detection and, when a is not NULL, its
 * attributes. */
void fm_cmd_result_face(fm_result_face *out, const fm_face *det, const fm_attrs *a);

/* Writes one image's pipeline result as an image object of the result schema
 * (proto/RESULTS.md), no newline: source, width, height, error, times_ms (labelled
 * images) and faces with box, score, landmarks and, when the heads ran, age, age_std,
 * gender, gender_probs, race and race_probs. */
void fm_cmd_json_result(fm_json *j, const char *source, const fm_image_result *r);

#endif
