/* trainset.c - the trainers' data (include/facemill/trainset.h): UTKFace folders,
 * the held-out split, the lineage's account of them, and the shared pieces of the
 * work done on every image before training (train-impl.h): worker processes, their
 * progress, and the cache files of what they computed. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "facemill/trainset.h"
#include "train-impl.h"

#include "facemill/clock.h"
#include "facemill/log.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- folders --------------------------------------------------------------------- */

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

/* ---- the training set ------------------------------------------------------------ */

void fm_trainset_free(fm_trainset *s)
{
    if (!s)
        return;
    free(s->paths);
    free(s->labels);
    free(s->held_out);
    fm_utk_list_free(&s->train);
    fm_utk_list_free(&s->val);
    memset(s, 0, sizeof *s);
}

/* Keeps the first limit images of l (it is sorted by name). */
static void keep_first(fm_utk_list *l, int limit)
{
    if (limit <= 0 || l->n <= limit)
        return;
    for (int i = limit; i < l->n; i++)
        free(l->paths[i]);
    l->n = limit;
}

fm_status fm_trainset_open(fm_trainset *s, const char *train_dir, const char *val_dir,
                           double holdout, int limit, fm_error *err)
{
    memset(s, 0, sizeof *s);
    s->train_dir = train_dir;
    s->val_dir = val_dir;
    s->holdout = holdout;
    fm_status st;
    if ((st = fm_utk_list_dir(train_dir, &s->train, err)) != FM_OK ||
        (val_dir && (st = fm_utk_list_dir(val_dir, &s->val, err)) != FM_OK))
        return st;
    keep_first(&s->train, limit);
    if (s->train.skipped || s->val.skipped)
        fm_log_warn("skipped %d file(s) whose names are not AGE_GENDER_RACE_*.jpg",
                    s->train.skipped + s->val.skipped);
    s->n_train_dir = s->train.n;
    s->n = s->train.n + s->val.n;
    s->paths = calloc((size_t)s->n + 1, sizeof *s->paths);
    s->labels = calloc((size_t)s->n + 1, sizeof *s->labels);
    s->held_out = calloc((size_t)s->n + 1, sizeof *s->held_out);
    if (!s->paths || !s->labels || !s->held_out)
        return fm_error_set(err, FM_ERR_NOMEM, "training set: out of memory");
    for (int i = 0; i < s->n; i++) {
        const fm_utk_list *l = i < s->n_train_dir ? &s->train : &s->val;
        const int k = i < s->n_train_dir ? i : i - s->n_train_dir;
        s->paths[i] = l->paths[k];
        s->labels[i] = l->labels[k];
        s->held_out[i] = i >= s->n_train_dir || (!val_dir && fm_utk_in_holdout(s->paths[i],
                                                                                holdout));
    }
    return FM_OK;
}

fm_status fm_trainset_check(const fm_trainset *s, fm_error *err)
{
    if (s->n_train_dir < 2)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: fewer than 2 labelled images: %d UTKFace-named "
                            "(AGE_GENDER_RACE_*.jpg), %d other .jpg file name(s) skipped",
                            s->train_dir, s->n_train_dir, s->train.skipped);
    if (s->val_dir && s->val.n < 1)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: no labelled images: none UTKFace-named "
                            "(AGE_GENDER_RACE_*.jpg), %d other .jpg file name(s) skipped",
                            s->val_dir, s->val.skipped);
    return FM_OK;
}

void fm_trainset_describe(const fm_trainset *s, int train_faces, int val_faces, char *buf,
                          size_t size)
{
    if (s->val_dir)
        snprintf(buf, size,
                 "UTKFace: train %s (%d images, %d faces used), early stopping on %s "
                 "(%d faces)", s->train_dir, s->n_train_dir, train_faces, s->val_dir,
                 val_faces);
    else
        snprintf(buf, size,
                 "UTKFace: %s (%d images); %d faces trained on, %d held out for early "
                 "stopping (share %g by file-name hash)", s->train_dir, s->n_train_dir,
                 train_faces, val_faces, s->holdout);
}

void fm_utk_config_defaults(fm_config *c)
{
    fm_config_defaults(c);
    c->detect.pad = 0.25;
}

void fm_train_date(char *buf, size_t size)
{
    time_t now = time(NULL);
    struct tm tmv;
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
}

fm_status fm_train_save_file(fm_model_writer **w, fm_status st, const char *path,
                             fm_error *err)
{
    if (st == FM_OK && (st = fm_model_writer_save(*w, path, err)) == FM_OK)
        fm_log_info("wrote %s", path);
    fm_model_writer_destroy(w);
    return st;
}

/* ---- work on every image, in processes ------------------------------------------- */

fm_status fm_image_rows_alloc(fm_image_rows *r, int n, int width, fm_error *err)
{
    r->n = n;
    r->width = width;
    size_t xb = (size_t)n * (size_t)width * sizeof(float);
    xb = (xb + 63) & ~(size_t)63;
    r->bytes = xb + (size_t)n * sizeof(float);
    void *m = mmap(NULL, r->bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                   0);
    if (m == MAP_FAILED) {
        r->bytes = 0;
        return fm_error_set(err, FM_ERR_NOMEM, "image rows: %s", strerror(errno));
    }
    r->x = m;
    r->found = (float *)((char *)m + xb);
    return FM_OK;
}

void fm_image_rows_free(fm_image_rows *r)
{
    if (r->bytes)
        munmap(r->x, r->bytes);
    memset(r, 0, sizeof *r);
}

int fm_train_fork_parts(int jobs, int (*part)(void *ctx, int job, int jobs), void *ctx)
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

void fm_part_progress_start(fm_part_progress *p, const char *what, int job, int jobs,
                            int mine)
{
    memset(p, 0, sizeof *p);
    p->what = what;
    p->job = job;
    p->jobs = jobs;
    p->mine = mine;
    p->t0 = p->last = fm_now_ms();
}

void fm_part_progress_step(fm_part_progress *p, int n)
{
    p->done += n;
    double now = fm_now_ms();
    if (p->job != 0 || (now - p->last <= 15000 && p->done != p->mine))
        return;
    double rate = p->done / ((now - p->t0) / 1000);
    fm_log_info("%s: %d/%d images (process 1 of %d), %.1f images/s, ETA %.0f s", p->what,
                p->done, p->mine, p->jobs, rate, (p->mine - p->done) / rate);
    p->last = now;
}

/* ---- cache files of rows --------------------------------------------------------- */

/* 1 when the file's key and paths are key and paths[0..r->n). */
static int cache_matches(const fm_rows_cache *k, const fm_model *m, const char *path,
                         const char *key, char *const *paths, const fm_image_rows *r)
{
    const char *got = NULL;
    const char *const *names = NULL;
    size_t count = 0;
    if (fm_model_meta_str(m, k->key_key, &got, NULL, NULL) != FM_OK || strcmp(got, key)) {
        fm_log_info("%s %s not used: made with other settings", k->what, path);
        return 0;
    }
    if (fm_model_meta_str_array(m, k->paths_key, &names, &count, NULL) != FM_OK ||
        count != (size_t)r->n) {
        fm_log_info("%s %s not used: other images", k->what, path);
        return 0;
    }
    for (int i = 0; i < r->n; i++)
        if (strcmp(names[i], paths[i]) != 0) {
            fm_log_info("%s %s not used: other images", k->what, path);
            return 0;
        }
    return 1;
}

int fm_rows_cache_load(const fm_rows_cache *k, const char *path, const char *key,
                       char *const *paths, fm_image_rows *r)
{
    fm_model *m = NULL;
    fm_error err = {0};
    const float *x = NULL, *found = NULL;
    uint64_t dx[2] = {(uint64_t)r->n, (uint64_t)r->width}, df[1] = {(uint64_t)r->n};
    int ok = 0;
    if (fm_model_open(&m, path, k->open_flags, &err) != FM_OK) {
        fm_log_info("%s %s not used: %s", k->what, path, fm_error_text(&err));
        return 0;
    }
    if (!cache_matches(k, m, path, key, paths, r))
        goto done;
    if (fm_model_tensor_expect(m, k->tensor, 2, dx, &x, &err) != FM_OK ||
        fm_model_tensor_expect(m, "found", 1, df, &found, &err) != FM_OK) {
        fm_log_info("%s %s not used: %s", k->what, path, fm_error_text(&err));
        goto done;
    }
    memcpy(r->x, x, (size_t)r->n * (size_t)r->width * sizeof(float));
    memcpy(r->found, found, (size_t)r->n * sizeof(float));
    ok = 1;
done:
    fm_model_close(&m);
    return ok;
}

fm_status fm_rows_cache_save(const fm_rows_cache *k, const char *path, const char *key,
                             char *const *paths, const fm_image_rows *r, fm_error *err)
{
    fm_model_writer *w = fm_model_writer_new();
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", k->what);
    uint64_t dx[2] = {(uint64_t)r->n, (uint64_t)r->width}, df[1] = {(uint64_t)r->n};
    fm_status st;
    if ((st = fm_model_writer_add_str(w, "general.architecture", k->architecture, err)) ||
        (st = fm_model_writer_add_str(w, k->key_key, key, err)) ||
        (st = fm_model_writer_add_str_array(w, k->paths_key, (const char *const *)paths,
                                            (size_t)r->n, err)) ||
        (st = fm_model_writer_add_tensor(w, k->tensor, 2, dx, r->x, err)) ||
        (st = fm_model_writer_add_tensor(w, "found", 1, df, r->found, err)) ||
        (st = fm_model_writer_save(w, path, err))) {
        /* st and err say what failed */
    }
    fm_model_writer_destroy(&w);
    return st;
}
