/* result_json.c - the result schema's writer (see result_json.h, proto/RESULTS.md). */
#include "facemill/result_json.h"
#include "facemill/text.h"

#include <math.h>
#include <string.h>

const char *const fm_result_gender_names[FM_RESULT_GENDERS] = {"male", "female"};
const char *const fm_result_race_names[FM_RESULT_RACES] = {"White", "Black", "Asian",
                                                           "Indian", "Others"};
const char *const fm_result_landmark_names[FM_RESULT_LANDMARKS] = {
    "left_eye", "right_eye", "nose", "mouth_left", "mouth_right"};

static const char *const box_names[4] = {"x1", "y1", "x2", "y2"};

uint32_t fm_result_error_code(fm_status s)
{
    switch (s) {
    case FM_OK: return FM_RESULT_ERROR_NONE;
    case FM_ERR_DECODE:
    case FM_ERR_FORMAT: return FM_RESULT_ERROR_DECODE;
    case FM_ERR_UNSUPPORTED: return FM_RESULT_ERROR_UNSUPPORTED;
    case FM_ERR_LIMIT: return FM_RESULT_ERROR_LIMIT;
    case FM_ERR_IO:
    case FM_ERR_NOT_FOUND: return FM_RESULT_ERROR_IO;
    case FM_ERR_INVALID: return FM_RESULT_ERROR_INVALID;
    default: return FM_RESULT_ERROR_INTERNAL;
    }
}

const char *fm_result_error_name(uint32_t code)
{
    static const char *const names[] = {
        "none",    "decode",   "unsupported", "limit",   "io",        "invalid",
        "internal", "quarantined", "timeout", "version", "malformed", "unknown_peer",
    };
    return code < sizeof names / sizeof names[0] ? names[code] : "error";
}

int fm_result_argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

int fm_result_abstains(const float *probs, int n, double min_prob)
{
    /* compared as floats, the precision the probabilities have: 0.9f is not below 0.9 */
    return min_prob > 0 && probs[fm_result_argmax(probs, n)] < (float)min_prob;
}

void fm_result_face_abstain(fm_result_face *f, double gender_min_prob, double race_min_prob)
{
    if ((f->has & FM_RESULT_HAS_GENDER) &&
        fm_result_abstains(f->gender_probs, FM_RESULT_GENDERS, gender_min_prob))
        f->has |= FM_RESULT_GENDER_ABSTAINED;
    if ((f->has & FM_RESULT_HAS_RACE) &&
        fm_result_abstains(f->race_probs, FM_RESULT_RACES, race_min_prob))
        f->has |= FM_RESULT_RACE_ABSTAINED;
}

/* The error text without a leading "SOURCE: " (source already names the image). */
static const char *error_text(const fm_result_image *im)
{
    const char *t = im->error_text ? im->error_text : "";
    size_t n = im->source ? strlen(im->source) : 0;
    if (n && strncmp(t, im->source, n) == 0 && t[n] == ':' && t[n + 1] == ' ')
        t += n + 2;
    return t;
}

/* ---- JSON -------------------------------------------------------------------------- */

static void json_size(fm_json *j, const char *key, int v)
{
    fm_json_key(j, key);
    if (v < 0)
        fm_json_null(j);
    else
        fm_json_int(j, v);
}

void fm_result_json_begin(fm_json *j, const fm_result_image *im)
{
    fm_json_obj_begin(j);
    fm_json_key(j, "schema");
    fm_json_int(j, FM_RESULT_SCHEMA);
    fm_json_key(j, "source");
    if (im->source)
        fm_json_str(j, im->source);
    else
        fm_json_null(j);
    json_size(j, "width", im->width);
    json_size(j, "height", im->height);
    fm_json_key(j, "error");
    if (im->error_code == FM_RESULT_ERROR_NONE) {
        fm_json_null(j);
        return;
    }
    fm_json_obj_begin(j);
    fm_json_key(j, "code");
    fm_json_int(j, im->error_code);
    fm_json_key(j, "name");
    fm_json_str(j, fm_result_error_name(im->error_code));
    fm_json_key(j, "text");
    fm_json_str(j, error_text(im));
    fm_json_obj_end(j);
}

void fm_result_json_times(fm_json *j, const char *const *stages, const double *ms, int n)
{
    fm_json_key(j, "times_ms");
    fm_json_obj_begin(j);
    for (int k = 0; k < n; k++) {
        if (!isfinite(ms[k]))
            continue;
        fm_json_key(j, stages[k]);
        fm_json_f32(j, (float)ms[k]);
    }
    fm_json_obj_end(j);
}

void fm_result_json_faces(fm_json *j)
{
    fm_json_key(j, "faces");
    fm_json_arr_begin(j);
}

void fm_result_json_named(fm_json *j, const char *key, const char *const *names,
                          const float *v, int n)
{
    fm_json_key(j, key);
    fm_json_obj_begin(j);
    for (int k = 0; k < n; k++) {
        fm_json_key(j, names[k]);
        fm_json_f32(j, v[k]);
    }
    fm_json_obj_end(j);
}

void fm_result_json_face(fm_json *j, const fm_result_face *f)
{
    static const char *const xy[2] = {"x", "y"};
    fm_json_obj_begin(j);
    if (f->has & FM_RESULT_HAS_BOX)
        fm_result_json_named(j, "box", box_names, f->box, 4);
    if (f->has & FM_RESULT_HAS_SCORE) {
        fm_json_key(j, "score");
        fm_json_f32(j, f->score);
    }
    if (f->has & FM_RESULT_HAS_LANDMARKS) {
        fm_json_key(j, "landmarks");
        fm_json_obj_begin(j);
        for (int k = 0; k < FM_RESULT_LANDMARKS; k++)
            fm_result_json_named(j, fm_result_landmark_names[k], xy, f->landmarks + 2 * k, 2);
        fm_json_obj_end(j);
    }
    if (f->has & FM_RESULT_HAS_AGE) {
        fm_json_key(j, "age");
        fm_json_f32(j, f->age);
        fm_json_key(j, "age_std");
        fm_json_f32(j, f->age_std);
    }
    if (f->has & FM_RESULT_HAS_GENDER) {
        fm_json_key(j, "gender");
        if (f->has & FM_RESULT_GENDER_ABSTAINED)
            fm_json_null(j);
        else
            fm_json_str(j, fm_result_gender_names[fm_result_argmax(f->gender_probs,
                                                                   FM_RESULT_GENDERS)]);
        fm_result_json_named(j, "gender_probs", fm_result_gender_names, f->gender_probs,
                   FM_RESULT_GENDERS);
    }
    if (f->has & FM_RESULT_HAS_RACE) {
        fm_json_key(j, "race");
        if (f->has & FM_RESULT_RACE_ABSTAINED)
            fm_json_null(j);
        else
            fm_json_str(j, fm_result_race_names[fm_result_argmax(f->race_probs,
                                                                 FM_RESULT_RACES)]);
        fm_result_json_named(j, "race_probs", fm_result_race_names, f->race_probs, FM_RESULT_RACES);
    }
    fm_json_obj_end(j);
}

void fm_result_json_end(fm_json *j)
{
    fm_json_arr_end(j);
    fm_json_obj_end(j);
}

/* ---- CSV --------------------------------------------------------------------------- */

/* Writes the text s of a cell: valid UTF-8 as it is, every other byte as
 * U+FFFD, as the JSON writer does (json.c), so a CSV column and its JSON field hold
 * the same text and the file decodes as UTF-8 whatever the file names held. A '"'
 * is doubled when quoted. */
static void csv_utf8(FILE *out, const char *s, int quoted)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = fm_utf8_next(p + i, n - i, &cp);
        if (k == 0) {
            fputs("\xef\xbf\xbd", out);
            i++;
            continue;
        }
        if (quoted && cp == '"')
            fputc('"', out);
        fwrite(p + i, 1, (size_t)k, out);
        i += (size_t)k;
    }
}

void fm_result_csv_text(FILE *out, const char *s)
{
    if (!s)
        return;
    /* A text cell a spreadsheet would take for a formula (=, +, -, @, or a tab or CR
     * before one) gets a leading single quote, as spreadsheet-safe exporters do: an
     * image named =HYPERLINK(...) stays text. Numbers are written by
     * fm_result_csv_f32, never here, so a negative number keeps its sign. */
    int formula = s[0] && strchr("=+-@\t\r", s[0]);
    int quoted = strpbrk(s, ",\"\r\n") != NULL;
    if (quoted)
        fputc('"', out);
    if (formula)
        fputc('\'', out);
    csv_utf8(out, s, quoted);
    if (quoted)
        fputc('"', out);
}

void fm_result_csv_f32(FILE *out, float v)
{
    char buf[FM_JSON_F32_MAX];
    fm_json_format_f32(buf, v);
    fputs(buf, out);
}

void fm_result_csv_image_header(FILE *out)
{
    fputs("schema,source,width,height,error.code,error.name,error.text", out);
}

void fm_result_csv_image(FILE *out, const fm_result_image *im)
{
    fprintf(out, "%d,", FM_RESULT_SCHEMA);
    fm_result_csv_text(out, im->source);
    fputc(',', out);
    if (im->width >= 0)
        fprintf(out, "%d", im->width);
    fputc(',', out);
    if (im->height >= 0)
        fprintf(out, "%d", im->height);
    fputc(',', out);
    if (im->error_code != FM_RESULT_ERROR_NONE) {
        fprintf(out, "%u,%s,", (unsigned)im->error_code, fm_result_error_name(im->error_code));
        fm_result_csv_text(out, error_text(im));
    } else {
        fputs(",,", out);
    }
}

void fm_result_csv_face_header(FILE *out)
{
    fputs("face", out);
    for (int k = 0; k < 4; k++)
        fprintf(out, ",box.%s", box_names[k]);
    fputs(",score", out);
    for (int k = 0; k < FM_RESULT_LANDMARKS; k++)
        fprintf(out, ",landmarks.%s.x,landmarks.%s.y", fm_result_landmark_names[k],
                fm_result_landmark_names[k]);
    fputs(",age,age_std,gender", out);
    for (int k = 0; k < FM_RESULT_GENDERS; k++)
        fprintf(out, ",gender_probs.%s", fm_result_gender_names[k]);
    fputs(",race", out);
    for (int k = 0; k < FM_RESULT_RACES; k++)
        fprintf(out, ",race_probs.%s", fm_result_race_names[k]);
}

/* n float fields, each preceded by a comma; empty when absent. */
static void csv_floats(FILE *out, int present, const float *v, int n)
{
    for (int k = 0; k < n; k++) {
        fputc(',', out);
        if (present)
            fm_result_csv_f32(out, v[k]);
    }
}

void fm_result_csv_face(FILE *out, int index, const fm_result_face *f)
{
    static const fm_result_face none;
    if (!f)
        f = &none;
    else
        fprintf(out, "%d", index);
    unsigned has = f->has;
    csv_floats(out, has & FM_RESULT_HAS_BOX, f->box, 4);
    csv_floats(out, has & FM_RESULT_HAS_SCORE, &f->score, 1);
    csv_floats(out, has & FM_RESULT_HAS_LANDMARKS, f->landmarks, 2 * FM_RESULT_LANDMARKS);
    csv_floats(out, has & FM_RESULT_HAS_AGE, &f->age, 1);
    csv_floats(out, has & FM_RESULT_HAS_AGE, &f->age_std, 1);
    fputc(',', out);
    if ((has & FM_RESULT_HAS_GENDER) && !(has & FM_RESULT_GENDER_ABSTAINED))
        fputs(fm_result_gender_names[fm_result_argmax(f->gender_probs, FM_RESULT_GENDERS)],
              out);
    csv_floats(out, has & FM_RESULT_HAS_GENDER, f->gender_probs, FM_RESULT_GENDERS);
    fputc(',', out);
    if ((has & FM_RESULT_HAS_RACE) && !(has & FM_RESULT_RACE_ABSTAINED))
        fputs(fm_result_race_names[fm_result_argmax(f->race_probs, FM_RESULT_RACES)], out);
    csv_floats(out, has & FM_RESULT_HAS_RACE, f->race_probs, FM_RESULT_RACES);
}
