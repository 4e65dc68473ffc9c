/* cmd_util.c - helpers shared by `facemill predict`, `train` and `eval` (see
 * cmd_util.h). */
#include "cmd_util.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
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

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_jpeg_name(const char *s)
{
    size_t n = strlen(s);
    return (n > 4 && strcasecmp(s + n - 4, ".jpg") == 0) ||
           (n > 5 && strcasecmp(s + n - 5, ".jpeg") == 0);
}

void fm_utk_list_free(fm_utk_list *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->n; i++)
        free(l->paths[i]);
    free(l->paths);
    free(l->labels);
    memset(l, 0, sizeof *l);
}

fm_status fm_utk_list_dir(const char *dir, fm_utk_list *out, fm_error *err)
{
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", dir, strerror(errno));
    size_t cap = 0, n = 0;
    char **names = NULL;
    fm_status st = FM_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !is_jpeg_name(de->d_name))
            continue;
        fm_utk_label lb;
        if (fm_utk_parse_name(de->d_name, &lb) != 0) {
            out->skipped++;
            continue;
        }
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 1024;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn)
                goto nomem;
            names = nn;
            cap = nc;
        }
        if (!(names[n] = strdup(de->d_name)))
            goto nomem;
        n++;
    }
    closedir(d);
    d = NULL;
    if (n > 0)
        qsort(names, n, sizeof *names, cmp_str);
    out->paths = calloc(n ? n : 1, sizeof *out->paths);
    out->labels = calloc(n ? n : 1, sizeof *out->labels);
    if (!out->paths || !out->labels)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(dir) + strlen(names[i]) + 2;
        if (!(out->paths[i] = malloc(len)))
            goto nomem;
        snprintf(out->paths[i], len, "%s/%s", dir, names[i]);
        fm_utk_parse_name(names[i], &out->labels[i]);
        out->n = (int)i + 1;
    }
    goto done;
nomem:
    st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory listing the folder", dir);
    fm_utk_list_free(out);
done:
    if (d)
        closedir(d);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return st;
}

void fm_cmd_json_result(fm_json *j, const char *path, const fm_image_result *r,
                        const fm_heads *h)
{
    fm_json_obj_begin(j);
    fm_json_key(j, "path");
    fm_json_str(j, path);
    if (r->error.code != FM_OK) {
        fm_json_key(j, "error");
        fm_json_obj_begin(j);
        fm_json_key(j, "code");
        fm_json_str(j, fm_status_to_string(r->error.code));
        fm_json_key(j, "message");
        fm_json_str(j, fm_error_text(&r->error));
        fm_json_obj_end(j);
        fm_json_obj_end(j);
        return;
    }
    fm_json_key(j, "width");
    fm_json_int(j, r->width);
    fm_json_key(j, "height");
    fm_json_int(j, r->height);
    fm_json_key(j, "faces");
    fm_json_arr_begin(j);
    for (int i = 0; i < r->n_faces; i++) {
        const fm_face_result *f = &r->faces[i];
        fm_json_obj_begin(j);
        fm_json_key(j, "box");
        fm_json_arr_begin(j);
        for (int k = 0; k < 4; k++)
            fm_json_num(j, f->det.box[k], 7);
        fm_json_arr_end(j);
        fm_json_key(j, "score");
        fm_json_num(j, f->det.score, 6);
        fm_json_key(j, "landmarks");
        fm_json_arr_begin(j);
        for (int k = 0; k < 5; k++) {
            fm_json_arr_begin(j);
            fm_json_num(j, f->det.landmarks[2 * k], 7);
            fm_json_num(j, f->det.landmarks[2 * k + 1], 7);
            fm_json_arr_end(j);
        }
        fm_json_arr_end(j);
        if (f->has_attrs && h) {
            const fm_attrs *a = &f->attrs;
            fm_json_key(j, "age");
            fm_json_num(j, a->age, 4);
            fm_json_key(j, "age_std");
            fm_json_num(j, a->age_std, 4);
            fm_json_key(j, "gender");
            fm_json_str(j, fm_heads_gender_label(h, a->gender));
            fm_json_key(j, "gender_probs");
            fm_json_obj_begin(j);
            for (int k = 0; k < FM_HEADS_GENDERS; k++) {
                fm_json_key(j, fm_heads_gender_label(h, k));
                fm_json_num(j, a->gender_probs[k], 4);
            }
            fm_json_obj_end(j);
            fm_json_key(j, "race");
            fm_json_str(j, fm_heads_race_label(h, a->race));
            fm_json_key(j, "race_probs");
            fm_json_obj_begin(j);
            for (int k = 0; k < FM_HEADS_RACES; k++) {
                fm_json_key(j, fm_heads_race_label(h, k));
                fm_json_num(j, a->race_probs[k], 4);
            }
            fm_json_obj_end(j);
        }
        fm_json_obj_end(j);
    }
    fm_json_arr_end(j);
    fm_json_key(j, "times_ms");
    fm_json_obj_begin(j);
    const char *names[5] = {"decode", "detect", "align", "embed", "heads"};
    const double v[5] = {r->times.decode_ms, r->times.detect_ms, r->times.align_ms,
                         r->times.embed_ms, r->times.heads_ms};
    for (int k = 0; k < 5; k++) {
        fm_json_key(j, names[k]);
        fm_json_num(j, v[k], 4);
    }
    fm_json_obj_end(j);
    fm_json_obj_end(j);
}
