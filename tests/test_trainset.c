/* test_trainset.c - the steps the trainers take before training, called directly
 * (include/facemill/trainset.h, train.h, finetune.h; worker/train/train-impl.h) on
 * folders made here:
 *   - a UTKFace folder is listed in name order with its labels, other names skipped;
 *     the held-out split is the hash's (or the validation folder); --limit keeps the
 *     first names; the lineage text of both forms, to the letter;
 *   - rows written by forked processes are what the parent reads; a cache of rows
 *     comes back exactly for the same key and paths, and not for others;
 *   - the frozen trainer's sets: only images with a face, split as held out, the
 *     chosen output, face and mirror averaged with flip;
 *   - the fine-tuner's photos: decoded, landmarks kept, split, counted, and a data id
 *     that changes with the split.
 * No models needed. */
#include "fm_test.h"

#include "facemill/finetune.h"
#include "facemill/image.h"
#include "facemill/train.h"
#include "facemill/trainset.h"
#include "train-impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

static void touch(const char *dir, const char *name)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    if (f)
        fclose(f);
}

/* A small gray JPEG of w x h pixels at dir/name. */
static void write_jpeg(const char *dir, const char *name, int w, int h)
{
    char p[1024];
    uint8_t *px = malloc((size_t)w * h * 3);
    memset(px, 100, (size_t)w * h * 3);
    fm_image img = {w, h, (size_t)w * 3, px, w, h, 1, 1, 1};
    snprintf(p, sizeof p, "%s/%s", dir, name);
    CHECK(fm_image_write_jpeg(&img, p, 90, NULL) == FM_OK);
    free(px);
}

static const char *base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void test_listing(const char *train, const char *val)
{
    /* 30 training names, written out of order; two that are not UTKFace names */
    char name[128];
    for (int i = 29; i >= 0; i--) {
        snprintf(name, sizeof name, "%d_%d_%d_2017%04d.jpg.chip.jpg", 20 + i, i % 2, i % 5, i);
        touch(train, name);
    }
    touch(train, "not_a_utk_name.jpg");
    touch(train, "readme.txt");
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "%d_1_2_2018%04d.JPG", 50 + i, i);
        touch(val, name);
    }
    fm_trainset s;
    fm_error err = {0};
    CHECK(fm_trainset_open(&s, train, NULL, 0.3, 0, &err) == FM_OK);
    CHECK(s.n == 30 && s.n_train_dir == 30 && s.train.skipped == 1);
    int held = 0;
    for (int i = 0; i < s.n; i++) {
        fm_utk_label lb;
        CHECK(i == 0 || strcmp(s.paths[i - 1], s.paths[i]) < 0);
        CHECK(strncmp(s.paths[i], train, strlen(train)) == 0);
        CHECK(fm_utk_parse_name(base(s.paths[i]), &lb) == 0 && lb.age == s.labels[i].age &&
              lb.gender == s.labels[i].gender && lb.race == s.labels[i].race);
        CHECK(s.held_out[i] == fm_utk_in_holdout(s.paths[i], 0.3));
        held += s.held_out[i];
    }
    CHECK_MSG(held > 0 && held < 30, "%d of 30 held out at 0.3", held);
    char d[2048];
    fm_trainset_describe(&s, 21, 9, d, sizeof d);
    char want[2048];
    snprintf(want, sizeof want,
             "UTKFace: %s (30 images); 21 faces trained on, 9 held out for early stopping "
             "(share 0.3 by file-name hash)", train);
    CHECK_MSG(strcmp(d, want) == 0, "%s", d);
    fm_trainset_free(&s);

    /* the first 10 by name; the validation folder is held out whole */
    CHECK(fm_trainset_open(&s, train, val, 0.3, 10, &err) == FM_OK);
    CHECK(s.n == 15 && s.n_train_dir == 10);
    CHECK(strstr(s.paths[0], "20_0_0_20170000") != NULL);
    CHECK(strstr(s.paths[9], "29_1_4_20170009") != NULL);
    for (int i = 0; i < s.n; i++)
        CHECK(s.held_out[i] == (i >= 10));
    CHECK(s.labels[10].age == 50 && s.labels[14].age == 54 && s.labels[12].race == 2);
    fm_trainset_describe(&s, 10, 5, d, sizeof d);
    snprintf(want, sizeof want,
             "UTKFace: train %s (10 images, 10 faces used), early stopping on %s (5 faces)",
             train, val);
    CHECK_MSG(strcmp(d, want) == 0, "%s", d);
    fm_trainset_free(&s);

    char missing[600];
    snprintf(missing, sizeof missing, "%s/none", tmp);
    CHECK(fm_trainset_open(&s, missing, NULL, 0.1, 0, &err) == FM_ERR_IO);
    CHECK(strstr(fm_error_text(&err), "none") != NULL);
    fm_trainset_free(&s);
}

/* Each part writes its job number into the rows it owns. */
static int write_part(void *ctx, int job, int jobs)
{
    fm_image_rows *r = ctx;
    for (int i = job; i < r->n; i += jobs) {
        for (int k = 0; k < r->width; k++)
            r->x[(size_t)i * r->width + k] = (float)(100 * job + k);
        r->found[i] = 1;
    }
    return 0;
}

static int failing_part(void *ctx, int job, int jobs)
{
    (void)ctx;
    (void)jobs;
    return job == 1;
}

static void test_rows(void)
{
    fm_image_rows r;
    fm_error err = {0};
    CHECK(fm_image_rows_alloc(&r, 7, 3, &err) == FM_OK);
    CHECK(r.found[6] == 0 && r.x[20] == 0);
    CHECK(fm_train_fork_parts(3, write_part, &r) == 0);
    int ok = 1;
    for (int i = 0; i < 7; i++)
        ok &= r.found[i] == 1 && r.x[(size_t)i * 3 + 2] == (float)(100 * (i % 3) + 2);
    CHECK_MSG(ok, "the parent reads what the processes wrote");
    CHECK(fm_train_fork_parts(3, failing_part, NULL) == -1);

    static const fm_rows_cache k = {"test cache", "test_cache", "test.key", "test.paths",
                                    "rows", FM_MODEL_VERIFY_DATA};
    char *paths[7] = {"a", "b", "c", "d", "e", "f", "g"};
    char file[600];
    snprintf(file, sizeof file, "%s/rows.fmm", tmp);
    CHECK(fm_rows_cache_save(&k, file, "key 1", paths, &r, &err) == FM_OK);
    fm_image_rows back;
    CHECK(fm_image_rows_alloc(&back, 7, 3, &err) == FM_OK);
    CHECK(fm_rows_cache_load(&k, file, "key 2", paths, &back) == 0);
    paths[3] = "x";
    CHECK(fm_rows_cache_load(&k, file, "key 1", paths, &back) == 0);
    CHECK(back.found[0] == 0);
    paths[3] = "d";
    CHECK(fm_rows_cache_load(&k, file, "key 1", paths, &back) == 1);
    CHECK(memcmp(back.x, r.x, 21 * sizeof(float)) == 0 &&
          memcmp(back.found, r.found, 7 * sizeof(float)) == 0);
    fm_image_rows_free(&back);
    fm_image_rows_free(&r);
    CHECK(r.bytes == 0 && r.x == NULL);
}

static void test_heads_sets(void)
{
    /* five images; dims 3 (embedding) and 2 (pooled): rows of 2 x (3 + 2) floats */
    fm_heads_features f;
    fm_error err = {0};
    memset(&f, 0, sizeof f);
    f.dims[FM_BACKBONE_EMBEDDING] = 3;
    f.dims[FM_BACKBONE_POOLED] = 2;
    CHECK(fm_image_rows_alloc(&f.rows, 5, 10, &err) == FM_OK);
    for (int i = 0; i < 5; i++)
        for (int k = 0; k < 10; k++)
            f.rows.x[i * 10 + k] = (float)(10 * i + k);
    const float found[5] = {1, 0, 1, -1, 1};
    memcpy(f.rows.found, found, sizeof found);
    fm_trainset s;
    char *paths[5] = {"p0", "p1", "p2", "p3", "p4"};
    fm_utk_label labels[5] = {{10, 0, 0}, {11, 1, 1}, {12, 0, 2}, {13, 1, 3}, {14, 0, 4}};
    unsigned char held[5] = {0, 0, 1, 0, 0};
    memset(&s, 0, sizeof s);
    s.n = s.n_train_dir = 5;
    s.paths = paths;
    s.labels = labels;
    s.held_out = held;
    fm_train_set t, v;
    /* pooled of face and mirror image averaged: floats 6..7 and 8..9 of a row */
    CHECK(fm_heads_features_sets(&f, &s, FM_BACKBONE_POOLED, 1, &t, &v, &err) == FM_OK);
    CHECK(t.n == 2 && v.n == 1 && t.dim == 2 && v.dim == 2);
    CHECK(t.labels[0].age == 10 && t.labels[1].age == 14 && v.labels[0].age == 12);
    CHECK(t.x[0] == 7 && t.x[1] == 8 && t.x[2] == 47 && t.x[3] == 48);
    CHECK(v.x[0] == 27 && v.x[1] == 28);
    fm_train_set_free(&t);
    fm_train_set_free(&v);
    CHECK(t.x == NULL && v.labels == NULL);
    /* the embedding of the face alone: floats 0..2 */
    CHECK(fm_heads_features_sets(&f, &s, FM_BACKBONE_EMBEDDING, 0, &t, &v, &err) == FM_OK);
    CHECK(t.n == 2 && t.dim == 3 && t.x[3] == 40 && t.x[5] == 42 && v.x[0] == 20);
    fm_train_set_free(&t);
    fm_train_set_free(&v);
    fm_heads_features_free(&f);
}

static void test_ft_data(const char *dir)
{
    write_jpeg(dir, "30_0_1_a.jpg", 40, 30);
    write_jpeg(dir, "31_1_2_b.jpg", 36, 24);
    write_jpeg(dir, "32_0_3_c.jpg", 20, 20);
    write_jpeg(dir, "33_1_4_d.jpg", 20, 20);
    fm_trainset s;
    fm_error err = {0};
    CHECK(fm_trainset_open(&s, dir, NULL, 0.5, 0, &err) == FM_OK);
    CHECK(s.n == 4);
    for (int i = 0; i < 4; i++) /* a fixed split for the test: the second image held out */
        s.held_out[i] = i == 1;
    fm_ft_faces f;
    memset(&f, 0, sizeof f);
    snprintf(f.key, sizeof f.key, "test key");
    CHECK(fm_image_rows_alloc(&f.rows, 4, 10, &err) == FM_OK);
    const float found[4] = {1, 1, 0, -1};
    memcpy(f.rows.found, found, sizeof found);
    for (int k = 0; k < 40; k++)
        f.rows.x[k] = (float)k;
    fm_config c;
    fm_config_defaults(&c);
    fm_ft_data d;
    CHECK(fm_ft_data_load(&d, &c, &s, &f, &err) == FM_OK);
    CHECK(d.train.n == 1 && d.val.n == 1 && d.no_face == 2);
    CHECK(d.train.images == d.images && d.val.images == d.images + 1);
    const fm_ft_image *a = &d.train.images[0], *b = &d.val.images[0];
    CHECK(a->w == 40 && a->h == 30 && a->stride == 120 && a->label.age == 30);
    CHECK(b->w == 36 && b->h == 24 && b->label.race == 2);
    CHECK(a->landmarks[0] == 0 && a->landmarks[9] == 9 && b->landmarks[0] == 10);
    int gray = 1;
    for (int q = 0; q < 40 * 30 * 3; q++)
        gray &= abs((int)a->rgb[q] - 100) <= 2;
    CHECK_MSG(gray, "the decoded pixels are the gray written");
    CHECK_MSG(strncmp(d.id, "1/1 faces, names ", 17) == 0 && strlen(d.id) == 17 + 16, "%s",
              d.id);
    char id[128];
    snprintf(id, sizeof id, "%s", d.id);
    fm_ft_data_free(&d);
    s.holdout = 0.25; /* another split of the same images is other data */
    CHECK(fm_ft_data_load(&d, &c, &s, &f, &err) == FM_OK);
    CHECK(strcmp(d.id, id) != 0);
    fm_ft_data_free(&d);
    fm_ft_faces_free(&f);
    fm_trainset_free(&s);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/facemill-test-trainset-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    char train[400], val[400], photos[400];
    snprintf(train, sizeof train, "%s/train", tmp);
    snprintf(val, sizeof val, "%s/val", tmp);
    snprintf(photos, sizeof photos, "%s/photos", tmp);
    CHECK(mkdir(train, 0700) == 0 && mkdir(val, 0700) == 0 && mkdir(photos, 0700) == 0);
    test_listing(train, val);
    test_rows();
    test_heads_sets();
    test_ft_data(photos);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(system(cmd) == 0);
    return fm_test_done("test_trainset");
}
