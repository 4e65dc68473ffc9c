/* result_json.h - the result schema: how facemill describes an image and its faces to
 * people and programs, as JSON lines and as CSV. proto/RESULTS.md documents every
 * field; FM_RESULT_SCHEMA is the version each image object carries.
 *
 * Why it exists: `facemill detect`, `facemill predict` and `facemill export` (the
 * results of `facemill label` and of a cluster) must print the same photo the same
 * way, so a script written against one reads the others. All three write through
 * these functions, and nothing else writes a face.
 *
 * An image object is written in steps, so a command adds its own fields (export:
 * job_id, sha256, model; predict: times_ms) between the common ones and the faces:
 *
 *   fm_result_json_begin(&j, &image);     {"schema":2,"source":..,"width":..,
 *                                           "height":..,"error":null
 *   fm_json_key(&j, "model"); ...          the command's own fields
 *   fm_result_json_faces(&j);             ,"faces":[
 *   fm_result_json_face(&j, &face); ...   one object per face
 *   fm_result_json_end(&j);               ]}
 *   fm_json_newline(&j);
 *
 * Numbers are float32 values written with fm_json_f32 (the shortest decimal that
 * reads back as the same float), so equal values print as equal text in every
 * command. Class names and their order are the protocol's (proto/facemill.proto:
 * gender male, female; race White, Black, Asian, Indian, Others), whatever a heads
 * file calls its classes; "gender" and "race" are the most probable class (the
 * first on a tie).
 *
 * CSV (export --format csv): one row per face; columns are named the way
 * pandas.json_normalize names the flattened JSON fields ("box.x1",
 * "landmarks.left_eye.x", "gender_probs.male", "error.code"), with the same values.
 */
#ifndef FACEMILL_RESULT_JSON_H
#define FACEMILL_RESULT_JSON_H

#include "facemill/json.h"
#include "facemill/status.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FM_RESULT_SCHEMA 2 /* "schema" of every image object (1: exports before it) */

#define FM_RESULT_GENDERS 2
#define FM_RESULT_RACES 5
#define FM_RESULT_LANDMARKS 5

/* The ErrorCode values of proto/facemill.proto: what an image's error.code says. */
enum {
    FM_RESULT_ERROR_NONE = 0,
    FM_RESULT_ERROR_DECODE = 1,
    FM_RESULT_ERROR_UNSUPPORTED = 2,
    FM_RESULT_ERROR_LIMIT = 3,
    FM_RESULT_ERROR_IO = 4,
    FM_RESULT_ERROR_INVALID = 5,
    FM_RESULT_ERROR_INTERNAL = 6,
    FM_RESULT_ERROR_QUARANTINED = 7,
    FM_RESULT_ERROR_TIMEOUT = 8,
    FM_RESULT_ERROR_VERSION = 9,
    FM_RESULT_ERROR_MALFORMED = 10,
    FM_RESULT_ERROR_UNKNOWN_PEER = 11,
};

/* The error code of an image that failed with status s, as a worker reports it:
 * decode and format errors DECODE, UNSUPPORTED, LIMIT, I/O and not-found IO, INVALID,
 * anything else INTERNAL; FM_OK gives NONE. */
uint32_t fm_result_error_code(fm_status s);

/* Short lower-case name of an error code ("decode", "quarantined"), "none" for 0,
 * "error" for codes this build does not know. Static string. */
const char *fm_result_error_name(uint32_t code);

/* Index of the largest of n probabilities, the first on a tie: a face's gender or
 * race from its gender_probs or race_probs. */
int fm_result_argmax(const float *v, int n);

/* 1 when a class should be withheld: min_prob > 0 and the largest of the n
 * probabilities is below it (compared in float: 0.9f is not below 0.9). */
int fm_result_abstains(const float *probs, int n, double min_prob);

/* Class and landmark names, in the protocol's order (static strings). */
extern const char *const fm_result_gender_names[FM_RESULT_GENDERS];
extern const char *const fm_result_race_names[FM_RESULT_RACES];
extern const char *const fm_result_landmark_names[FM_RESULT_LANDMARKS];

/* Which groups of an fm_result_face are filled (bits of fm_result_face.has). */
enum {
    FM_RESULT_HAS_BOX = 1,
    FM_RESULT_HAS_SCORE = 2,
    FM_RESULT_HAS_LANDMARKS = 4,
    FM_RESULT_HAS_AGE = 8,          /* age and age_std */
    FM_RESULT_HAS_GENDER = 16,      /* gender_probs (and so gender) */
    FM_RESULT_HAS_RACE = 32,        /* race_probs (and so race) */
    /* the class is withheld (null) although its probabilities are given: its most
     * probable class is less probable than heads.gender_min_prob / race_min_prob */
    FM_RESULT_GENDER_ABSTAINED = 64,
    FM_RESULT_RACE_ABSTAINED = 128,
    FM_RESULT_HAS_DETECTION = FM_RESULT_HAS_BOX | FM_RESULT_HAS_SCORE | FM_RESULT_HAS_LANDMARKS,
    FM_RESULT_HAS_ATTRS = FM_RESULT_HAS_AGE | FM_RESULT_HAS_GENDER | FM_RESULT_HAS_RACE,
};

/* One face. Coordinates are pixels of the original image after EXIF orientation,
 * (0, 0) the centre of the top-left pixel. A group whose bit is not set in has is
 * left out of the JSON (empty in CSV). */
typedef struct fm_result_face {
    unsigned has;
    float box[4];                           /* x1, y1, x2, y2 */
    float score;                            /* detection probability */
    float landmarks[2 * FM_RESULT_LANDMARKS]; /* x, y of each fm_result_landmark_names */
    float age, age_std;                     /* years */
    float gender_probs[FM_RESULT_GENDERS];
    float race_probs[FM_RESULT_RACES];
} fm_result_face;

/* Sets FM_RESULT_GENDER_ABSTAINED / FM_RESULT_RACE_ABSTAINED in f->has where
 * fm_result_abstains says so for the probabilities f has (heads.gender_min_prob,
 * heads.race_min_prob). */
void fm_result_face_abstain(fm_result_face *f, double gender_min_prob, double race_min_prob);

/* One image. */
typedef struct fm_result_image {
    const char *source;     /* what the image is called (path, ARCHIVE:MEMBER); NULL: null */
    int width, height;      /* displayed size in pixels; < 0: unknown (null) */
    uint32_t error_code;    /* FM_RESULT_ERROR_*; 0: the image was labelled */
    const char *error_text; /* the reason (error_code != 0); a leading "SOURCE: " is
                               dropped, since source names the image */
} fm_result_image;

/* Opens an image object and writes schema, source, width, height and error (null,
 * or {code, name, text}). */
void fm_result_json_begin(fm_json *j, const fm_result_image *im);

/* Writes "times_ms": {stage: ms, ...} for the n stages; a stage whose time is not
 * finite (NaN: not measured) is left out. */
void fm_result_json_times(fm_json *j, const char *const *stages, const double *ms, int n);

/* Opens the faces array (every image object has one; empty for an error). */
void fm_result_json_faces(fm_json *j);

/* Writes one face object inside the faces array. */
void fm_result_json_face(fm_json *j, const fm_result_face *f);

/* Writes "key": {names[0]: v[0], ...} for n floats (a face's probabilities, its box). */
void fm_result_json_named(fm_json *j, const char *key, const char *const *names,
                          const float *v, int n);

/* Closes the faces array and the image object (no newline: fm_json_newline). */
void fm_result_json_end(fm_json *j);

/* ---- CSV --------------------------------------------------------------------------- */

/* One CSV text field per RFC 4180: quoted when it holds a comma, quote or line
 * break; nothing for NULL. A field beginning with =, +, -, @, a tab or a CR gets a
 * leading ' (a spreadsheet takes it as text, not a formula). */
void fm_result_csv_text(FILE *out, const char *s);

/* One float field as fm_json_format_f32 writes it (nothing when not finite). */
void fm_result_csv_f32(FILE *out, float v);

/* The image columns "schema,source,width,height,error.code,error.name,error.text"
 * (no line break), and one image's values for them. */
void fm_result_csv_image_header(FILE *out);
void fm_result_csv_image(FILE *out, const fm_result_image *im);

/* The face columns "face,box.x1,...,race_probs.Others" (face: the index in the
 * image's faces), and one face's values; f NULL (an image without faces) writes the
 * commas only. */
void fm_result_csv_face_header(FILE *out);
void fm_result_csv_face(FILE *out, int index, const fm_result_face *f);

#ifdef __cplusplus
}
#endif
#endif
