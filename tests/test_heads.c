/* test_heads.c - the attribute heads: a heads file written with random weights is
 * read back and its forward pass equals a naive double-precision computation of the
 * same layers (standardise, dense + LeakyReLU, three softmax heads, expected age and
 * spread); chunking over max_batch changes nothing; bad files are refused with
 * messages that name the problem. */
#include "fm_test.h"
#include "heads_fixture.h"

#include "facemill/heads.h"
#include "facemill/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[4096];

/* Naive forward of the file's layers for one feature vector, in double. */
static void naive(const fm_model *m, const float *x, int dim, fm_attrs *out)
{
    double h[1024], t[1024];
    const float *mean = fm_model_tensor(m, "feat.mean")->data;
    const float *sd = fm_model_tensor(m, "feat.std")->data;
    double alpha = 0;
    fm_model_meta_f64(m, "heads.leaky_alpha", &alpha, NULL);
    int in = dim;
    for (int j = 0; j < dim; j++)
        h[j] = ((double)x[j] - mean[j]) / sd[j];
    char name[64];
    for (int k = 0;; k++) {
        snprintf(name, sizeof name, "shared.%d.weight", k);
        const fm_model_tensor_info *w = fm_model_tensor(m, name);
        if (!w)
            break;
        snprintf(name, sizeof name, "shared.%d.bias", k);
        const float *b = fm_model_tensor(m, name)->data;
        int o = (int)w->dims[0];
        for (int i = 0; i < o; i++) {
            double s = b[i];
            for (int j = 0; j < in; j++)
                s += (double)w->data[(size_t)i * (size_t)in + (size_t)j] * h[j];
            t[i] = s > 0 ? s : alpha * s;
        }
        memcpy(h, t, (size_t)o * sizeof *h);
        in = o;
    }
    const char *hn[3] = {"age", "gender", "race"};
    const int hk[3] = {FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES};
    double p[3][FM_HEADS_AGES];
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s.weight", hn[k]);
        const float *w = fm_model_tensor(m, name)->data;
        snprintf(name, sizeof name, "%s.bias", hn[k]);
        const float *b = fm_model_tensor(m, name)->data;
        double mx = -1e300, s = 0;
        for (int i = 0; i < hk[k]; i++) {
            double z = b[i];
            for (int j = 0; j < in; j++)
                z += (double)w[(size_t)i * (size_t)in + (size_t)j] * h[j];
            p[k][i] = z;
            if (z > mx)
                mx = z;
        }
        for (int i = 0; i < hk[k]; i++)
            s += p[k][i] = exp(p[k][i] - mx);
        for (int i = 0; i < hk[k]; i++)
            p[k][i] /= s;
    }
    double age = 0, var = 0;
    for (int i = 0; i < FM_HEADS_AGES; i++)
        age += i * p[0][i];
    for (int i = 0; i < FM_HEADS_AGES; i++)
        var += p[0][i] * (i - age) * (i - age);
    out->age = (float)age;
    out->age_std = (float)sqrt(var);
    out->gender = p[1][1] > p[1][0];
    for (int i = 0; i < 2; i++)
        out->gender_probs[i] = (float)p[1][i];
    out->race = 0;
    for (int i = 0; i < 5; i++) {
        out->race_probs[i] = (float)p[2][i];
        if (p[2][i] > p[2][out->race])
            out->race = i;
    }
}

static void check_file(const char *path, int dim, int n_hidden, const int *hidden,
                       int max_batch)
{
    CHECK(fixture_write_heads(path, "dlib_resnet npm:x sha512-y", "embedding", 1, dim,
                              n_hidden, hidden) == 0);
    fm_heads *h = NULL;
    fm_error err = {0};
    fm_status st = fm_heads_open(&h, path, max_batch, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    if (st)
        return;
    CHECK(fm_heads_input_dim(h) == dim);
    CHECK(fm_heads_feature(h) == FM_BACKBONE_EMBEDDING);
    CHECK(fm_heads_flip(h) == 1);
    CHECK(strcmp(fm_heads_backbone(h), "dlib_resnet npm:x sha512-y") == 0);
    CHECK(fm_heads_layers(h) == n_hidden);
    CHECK(fm_heads_hidden(h) == (n_hidden ? hidden[n_hidden - 1] : dim));
    CHECK(fabs(fm_heads_fallback_age(h) - 33.5) < 1e-12);
    CHECK(strcmp(fm_heads_gender_label(h, 1), "female") == 0);
    CHECK(strcmp(fm_heads_race_label(h, 3), "Indian") == 0);
    CHECK(fm_heads_race_label(h, 5) == NULL && fm_heads_gender_label(h, -1) == NULL);

    enum { N = 37 };
    float *x = malloc((size_t)N * (size_t)dim * sizeof *x);
    fm_attrs got[N], one;
    for (int i = 0; i < N * dim; i++)
        x[i] = 2.0f * fixture_uniform();
    st = fm_heads_forward(h, x, N, got, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        fm_attrs want;
        naive(fm_heads_model(h), x + (size_t)i * (size_t)dim, dim, &want);
        double d = fabs(got[i].age - want.age) + fabs(got[i].age_std - want.age_std);
        double gs = 0, rs = 0;
        for (int k = 0; k < 2; k++) {
            d += fabs(got[i].gender_probs[k] - want.gender_probs[k]);
            gs += got[i].gender_probs[k];
        }
        for (int k = 0; k < 5; k++) {
            d += fabs(got[i].race_probs[k] - want.race_probs[k]);
            rs += got[i].race_probs[k];
        }
        if (d > worst)
            worst = d;
        CHECK(got[i].gender == want.gender && got[i].race == want.race);
        CHECK(fabs(gs - 1) < 1e-5 && fabs(rs - 1) < 1e-5);
        CHECK(got[i].age >= 0 && got[i].age <= 116 && got[i].age_std >= 0);
        /* one at a time gives the same as the batch */
        CHECK(fm_heads_forward(h, x + (size_t)i * (size_t)dim, 1, &one, NULL) == FM_OK);
        CHECK(fabs(one.age - got[i].age) < 1e-4);
    }
    CHECK_MSG(worst < 1e-3, "largest difference from the naive computation %g", worst);
    fprintf(stderr, "dim %d, %d layers, max_batch %d: largest difference %.3g\n", dim,
            n_hidden, max_batch, worst);
    CHECK(fm_heads_forward(h, x, 0, got, NULL) == FM_OK);
    CHECK(fm_heads_forward(h, x, -1, got, NULL) == FM_ERR_INVALID);
    free(x);
    fm_heads_close(&h);
    CHECK(h == NULL);
    fm_heads_close(&h);
    fm_heads_close(NULL);
}

static void test_errors(const char *path)
{
    fm_heads *h = (fm_heads *)&h;
    fm_error err = {0};
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/missing.fmm", tmpdir);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_IO && h == NULL);
    CHECK(fm_heads_open(&h, path, 0, &err) == FM_ERR_INVALID && h == NULL);

    /* another architecture */
    fm_model_writer *w = fm_model_writer_new();
    fm_model_writer_add_str(w, "general.architecture", "dlib_resnet", NULL);
    snprintf(bad, sizeof bad, "%s/arch.fmm", tmpdir);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    fm_model_writer_destroy(&w);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_INVALID && h == NULL);
    CHECK_MSG(strstr(err.msg, "expected 'heads'") != NULL, "%s", err.msg);
    unlink(bad);

    /* layers that do not chain: write a file and replace one tensor's shape by
     * writing the fixture with a different dim for the heads */
    w = fm_model_writer_new();
    static const char *const g[] = {"male", "female"};
    static const char *const r[] = {"White", "Black", "Asian", "Indian", "Others"};
    fm_model_writer_add_str(w, "general.architecture", "heads", NULL);
    fm_model_writer_add_str(w, "heads.backbone", "b", NULL);
    fm_model_writer_add_str(w, "heads.feature", "pooled", NULL);
    fm_model_writer_add_i64(w, "heads.flip", 0, NULL);
    fm_model_writer_add_f64(w, "heads.leaky_alpha", 0.1, NULL);
    fm_model_writer_add_str_array(w, "labels.gender", g, 2, NULL);
    fm_model_writer_add_str_array(w, "labels.race", r, 5, NULL);
    fixture_tensor(w, "feat.mean", 8, 0, 1, 0);
    fixture_tensor(w, "feat.std", 8, 0, 0.1f, 1);
    fixture_tensor(w, "shared.0.weight", 6, 8, 1, 0);
    fixture_tensor(w, "shared.0.bias", 6, 0, 1, 0);
    fixture_tensor(w, "age.weight", FM_HEADS_AGES, 8, 1, 0); /* should be [117, 6] */
    snprintf(bad, sizeof bad, "%s/chain.fmm", tmpdir);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_FORMAT && h == NULL);
    CHECK_MSG(strstr(err.msg, "age.weight") != NULL, "%s", err.msg);
    fprintf(stderr, "layers that do not chain: %s\n", err.msg);
    /* a missing tensor */
    fm_model_writer_destroy(&w);
    w = fm_model_writer_new();
    fm_model_writer_add_str(w, "general.architecture", "heads", NULL);
    fm_model_writer_add_str(w, "heads.backbone", "b", NULL);
    fm_model_writer_add_str(w, "heads.feature", "pooled", NULL);
    fm_model_writer_add_i64(w, "heads.flip", 0, NULL);
    fm_model_writer_add_f64(w, "heads.leaky_alpha", 0.1, NULL);
    fm_model_writer_add_str_array(w, "labels.gender", g, 2, NULL);
    fm_model_writer_add_str_array(w, "labels.race", r, 5, NULL);
    fixture_tensor(w, "feat.mean", 8, 0, 1, 0);
    fixture_tensor(w, "feat.std", 8, 0, 0.1f, 1);
    fixture_tensor(w, "age.weight", FM_HEADS_AGES, 8, 1, 0);
    fixture_tensor(w, "age.bias", FM_HEADS_AGES, 0, 1, 0);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    fm_model_writer_destroy(&w);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_NOT_FOUND && h == NULL);
    CHECK_MSG(strstr(err.msg, "gender.weight") != NULL, "%s", err.msg);
    unlink(bad);
    /* a bad feature name */
    w = fm_model_writer_new();
    fm_model_writer_add_str(w, "general.architecture", "heads", NULL);
    fm_model_writer_add_str(w, "heads.backbone", "b", NULL);
    fm_model_writer_add_str(w, "heads.feature", "conv3", NULL);
    fm_model_writer_add_i64(w, "heads.flip", 0, NULL);
    fm_model_writer_add_f64(w, "heads.leaky_alpha", 0.1, NULL);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    fm_model_writer_destroy(&w);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_FORMAT && h == NULL);
    CHECK_MSG(strstr(err.msg, "conv3") != NULL, "%s", err.msg);
    unlink(bad);
}

static void test_from_logits(void)
{
    float age[FM_HEADS_AGES], g[2] = {0, 0}, r[5] = {0, 0, 3, 0, 0};
    for (int i = 0; i < FM_HEADS_AGES; i++)
        age[i] = -1e4f;
    age[30] = age[32] = 0; /* two equal peaks: mean 31, spread 1 */
    fm_attrs a;
    fm_attrs_from_logits(age, g, r, &a);
    CHECK(fabs(a.age - 31) < 1e-4 && fabs(a.age_std - 1) < 1e-4);
    CHECK(fabs(a.gender_probs[0] - 0.5) < 1e-6 && a.gender == 0);
    CHECK(a.race == 2);
    double e3 = exp(3.0);
    CHECK(fabs(a.race_probs[2] - e3 / (e3 + 4)) < 1e-6);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/facemill-test-heads-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/heads.fmm", tmpdir);
    test_from_logits();
    const int h1[1] = {24}, h2[2] = {32, 16};
    check_file(path, 20, 0, NULL, 5);
    check_file(path, 20, 1, h1, 64);
    check_file(path, 48, 2, h2, 7);
    test_errors(path);
    unlink(path);
    rmdir(tmpdir);
    return fm_test_done("test_heads");
}
