/* cmd_draw.c - boxes and labels on the pictures of `facemill predict --draw`
 * (cmd_draw.h).
 *
 * Why the image is decoded again: the pipeline decodes at the detector's working size
 * (a DCT-scaled image for large photos) and keeps no pixels after a batch; the picture
 * a person looks at should be the original, at its own size. The line width and the
 * text grow with the image (one font pixel per 400 image pixels: draw.h), so the
 * labels read the same on a small chip and on a large scan.
 */
#include "cmd_draw.h"

#include "facemill/draw.h"
#include "facemill/result_json.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static const fm_rgb box_color = {0, 220, 0}, label_bg = {0, 110, 0}, label_fg = {255, 255, 255};

/* One face's label lines into buf (3 lines of up to 32 characters); returns how many.
 * A class withheld under heads.*_min_prob reads "gender? female 0.62". */
static int face_lines(const fm_face_result *f, double gender_min, double race_min,
                      char buf[3][32])
{
    if (!f->has_attrs) {
        snprintf(buf[0], 32, "score %.2f", f->det.score);
        return 1;
    }
    const fm_attrs *a = &f->attrs;
    int g = a->gender, r = a->race;
    snprintf(buf[0], 32, "age %.0f +/-%.0f", a->age, a->age_std);
    int gw = fm_result_abstains(a->gender_probs, FM_RESULT_GENDERS, gender_min);
    int rw = fm_result_abstains(a->race_probs, FM_RESULT_RACES, race_min);
    snprintf(buf[1], 32, "%s%s %.2f", gw ? "gender? " : "", fm_result_gender_names[g],
             a->gender_probs[g]);
    snprintf(buf[2], 32, "%s%s %.2f", rw ? "race? " : "", fm_result_race_names[r],
             a->race_probs[r]);
    return 3;
}

fm_status fm_cmd_draw_labels(fm_decoder *dec, const char *path, const fm_image_result *r,
                             double gender_min_prob, double race_min_prob, const char *out,
                             fm_error *err)
{
    fm_image img;
    fm_status st = fm_decode_file(dec, path, &img, err);
    if (st != FM_OK)
        return st;
    double s = (double)img.scale_num / (double)(img.scale_denom > 0 ? img.scale_denom : 1);
    int lng = img.w > img.h ? img.w : img.h;
    int t = (int)lround(lng / 500.0), scale = fm_draw_scale_for(lng);
    if (t < 1)
        t = 1;
#define TO_IMG(u) ((int)lround(((double)(u) + 0.5) * s - 0.5))
    for (int i = 0; i < r->n_faces; i++) {
        const fm_face *d = &r->faces[i].det;
        fm_image_draw_rect(&img, TO_IMG(d->box[0]), TO_IMG(d->box[1]), TO_IMG(d->box[2]),
                           TO_IMG(d->box[3]), t, box_color);
    }
    /* labels after every box, so no box line crosses a label */
    for (int i = 0; i < r->n_faces; i++) {
        const fm_face *d = &r->faces[i].det;
        char buf[3][32];
        const char *lines[3] = {buf[0], buf[1], buf[2]};
        int n = face_lines(&r->faces[i], gender_min_prob, race_min_prob, buf);
        fm_draw_label(&img, TO_IMG(d->box[0]), TO_IMG(d->box[1]), TO_IMG(d->box[2]),
                      TO_IMG(d->box[3]), lines, n, scale, label_bg, label_fg);
    }
#undef TO_IMG
    return fm_image_write_jpeg(&img, out, 90, err);
}

fm_status fm_cmd_draw_path(char *buf, size_t size, const char *dir, const char *path,
                           fm_error *err)
{
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    /* The picture is a JPEG whatever it was drawn from: photo.heic becomes
     * photo.heic.jpg (not photo.jpg, which photo.jpg beside it would also write). */
    size_t n = strlen(name);
    int jpeg = (n > 4 && strcasecmp(name + n - 4, ".jpg") == 0) ||
               (n > 5 && strcasecmp(name + n - 5, ".jpeg") == 0);
    int len = snprintf(buf, size, "%s/%s%s", dir, name, jpeg ? "" : ".jpg");
    if (len < 0 || (size_t)len >= size)
        return fm_error_set(err, FM_ERR_INVALID, "%s: output path too long", path);
    return FM_OK;
}
