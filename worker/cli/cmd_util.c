/* cmd_util.c - helpers shared by `facemill detect`, `predict`, `train` and `eval`
 * (see cmd_util.h). */
#include "cmd_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int fm_cmd_take_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *val = argv[++*i];
    return 1;
}

int fm_cmd_parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

int fm_cmd_fork_parts(int jobs, int (*part)(void *ctx, int job, int jobs), void *ctx)
{
    if (jobs <= 1)
        return part(ctx, 0, 1) ? -1 : 0;
    pid_t pids[64];
    int started = 0, failed = 0;
    fflush(NULL); /* buffered output must not be written twice by the children */
    for (int j = 0; j < jobs && j < 64; j++) {
        pid_t pid = fork();
        if (pid < 0) {
            failed = 1;
            break;
        }
        if (pid == 0)
            _exit(part(ctx, j, jobs));
        pids[started++] = pid;
    }
    for (int j = 0; j < started; j++) {
        int status = 0;
        while (waitpid(pids[j], &status, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed = 1;
    }
    return failed || started < jobs ? -1 : 0;
}

double fm_cmd_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* The heads' classes are the protocol's, in its order (heads.h, result_json.h). */
_Static_assert(FM_HEADS_GENDERS == FM_RESULT_GENDERS && FM_HEADS_RACES == FM_RESULT_RACES,
               "the heads' classes are the result schema's");

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

void fm_cmd_json_result(fm_json *j, const char *source, const fm_image_result *r)
{
    int ok = r->error.code == FM_OK;
    fm_result_image im = {source, ok ? r->width : -1, ok ? r->height : -1,
                          fm_result_error_code(r->error.code),
                          ok ? NULL : fm_error_text(&r->error)};
    fm_result_json_begin(j, &im);
    if (ok) {
        static const char *const stages[5] = {"decode", "detect", "align", "embed", "heads"};
        const double ms[5] = {r->times.decode_ms, r->times.detect_ms, r->times.align_ms,
                              r->times.embed_ms, r->times.heads_ms};
        fm_result_json_times(j, stages, ms, 5);
    }
    fm_result_json_faces(j);
    for (int i = 0; ok && i < r->n_faces; i++) {
        const fm_face_result *f = &r->faces[i];
        fm_result_face rf;
        fm_cmd_result_face(&rf, &f->det, f->has_attrs ? &f->attrs : NULL);
        fm_result_json_face(j, &rf);
    }
    fm_result_json_end(j);
}
