/* json.h - the little JSON facemill writes: one object per line for `detect`,
 * `predict`, `eval --json` and `export`. A writer appends to a caller-owned FILE and tracks
 * commas, so call sites read like the document they produce:
 *
 *   fm_json j; fm_json_init(&j, stdout);
 *   fm_json_obj_begin(&j);
 *   fm_json_key(&j, "width"); fm_json_int(&j, 640);
 *   fm_json_obj_end(&j); fm_json_newline(&j);
 *
 * Strings are escaped per RFC 8259 (control characters as \u00XX; UTF-8 passed
 * through as it is; each byte that is not part of valid UTF-8 written as \ufffd, so
 * the output is always valid JSON). Non-finite numbers are written as null.
 */
#ifndef FACEMILL_JSON_H
#define FACEMILL_JSON_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FM_JSON_MAX_DEPTH 32

typedef struct fm_json {
    FILE *out;                       /* not owned */
    int depth;
    unsigned char need_comma[FM_JSON_MAX_DEPTH];
    int after_key;
} fm_json;

void fm_json_init(fm_json *j, FILE *out);
void fm_json_obj_begin(fm_json *j);
void fm_json_obj_end(fm_json *j);
void fm_json_arr_begin(fm_json *j);
void fm_json_arr_end(fm_json *j);
void fm_json_key(fm_json *j, const char *key);
void fm_json_str(fm_json *j, const char *s);
void fm_json_int(fm_json *j, int64_t v);
/* Writes v with up to `digits` significant digits (%.*g). */
void fm_json_num(fm_json *j, double v, int digits);
/* Writes v (a float32 value: what facemill computes and stores) as the shortest
 * decimal that reads back as the same float, see fm_json_format_f32. */
void fm_json_f32(fm_json *j, float v);
void fm_json_bool(fm_json *j, int v);
void fm_json_null(fm_json *j);
/* Room for the text of fm_json_format_f32 and its NUL (15 characters at most: a
 * sign, 9 digits, a point and an exponent such as e-38). */
#define FM_JSON_F32_MAX 24

/* Formats v as the shortest decimal (%g style, at most 9 significant digits) that
 * strtof reads back as v exactly: "0.993", "406.508", "1e-05". The same float always
 * gives the same text, so two programs that print the same value agree to the last
 * digit, and nothing is lost (%.7g is not enough for every float; %.9g prints
 * 0.99299997 for 0.993f). Writes "" for a value that is not finite. Returns the
 * length written. */
int fm_json_format_f32(char buf[FM_JSON_F32_MAX], float v);

/* Ends a top-level value with '\n' and flushes, so each line is a whole record. */
void fm_json_newline(fm_json *j);

#ifdef __cplusplus
}
#endif
#endif
