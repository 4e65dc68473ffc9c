/* cmd_util.c - helpers shared by subcommands (see cmd_util.h). */
#include "cmd_util.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

void fm_cmd_result_face(fm_result_face *out, const fm_face *det, const fm_attrs *a)
{
    memset(out, 0, sizeof *out);
    out->has = FM_RESULT_HAS_DETECTION;
    memcpy(out->box, det->box, sizeof out->box);
    out->score = det->score;
    memcpy(out->landmarks, det->landmarks, sizeof out->landmarks);
    if (!a)
        return;
    out->has |= FM_RESULT_HAS_ATTRS;
    out->age = a->age;
    out->age_std = a->age_std;
    memcpy(out->gender_probs, a->gender_probs, sizeof out->gender_probs);
    memcpy(out->race_probs, a->race_probs, sizeof out->race_probs);
}

void fm_cmd_json_result(fm_json *j, const char *source, const fm_image_result *r,
                        const fm_config *c)
{
    int ok = r->error.code == FM_OK;
    fm_result_image im = {source, ok ? r->width : -1, ok ? r->height : -1,
                          fm_result_error_code(r->error.code),
                          ok ? NULL : fm_error_text(&r->error)};
    fm_result_json_begin(j, &im);
    if (ok) {
        static const char *const stages[5] = {"decode", "detect", "align", "embed", "heads"};
        int attrs = fm_image_result_attributed(r); /* the stages that ran */
        const double ms[5] = {r->times.decode_ms, r->times.detect_ms,
                              attrs ? r->times.align_ms : NAN,
                              attrs ? r->times.embed_ms : NAN, attrs ? r->times.heads_ms : NAN};
        fm_result_json_times(j, stages, ms, 5);
    }
    fm_result_json_faces(j);
    for (int i = 0; ok && i < r->n_faces; i++) {
        const fm_face_result *f = &r->faces[i];
        fm_result_face rf;
        fm_cmd_result_face(&rf, &f->det, f->has_attrs ? &f->attrs : NULL);
        fm_result_face_abstain(&rf, c->heads.gender_min_prob, c->heads.race_min_prob);
        fm_result_json_face(j, &rf);
    }
    fm_result_json_end(j);
}

fm_status fm_cmd_make_dirs(const char *dir, fm_error *err)
{
    char buf[PATH_MAX];
    if (!dir[0] || strlen(dir) >= sizeof buf)
        return fm_error_set(err, FM_ERR_INVALID, "%s: not a usable directory name", dir);
    strcpy(buf, dir);
    /* Each prefix ending before a '/', then the whole name. */
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        struct stat st;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return fm_error_set(err, FM_ERR_IO, "%s: %s", buf, strerror(errno));
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
            return fm_error_set(err, FM_ERR_IO, "%s: not a directory", buf);
        if (c == '\0')
            return FM_OK;
        *p = c;
    }
}
