/* test_train.c - the heads trainer: it learns a small synthetic problem (features
 * generated from known labels) to near-zero error, deterministically for a seed; the
 * file it writes, opened by fm_heads_open, predicts what the trainer measured (both
 * run the one network of worker/vision/heads.c, whose backward pass test_heads checks
 * against finite differences); more hidden layers and dropout train too; bad options
 * and sets are refused. */
#include "fm_test.h"

#include "facemill/heads.h"
#include "facemill/result_json.h"
#include "facemill/train.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static fm_test_rng rng = FM_TEST_RNG(0x1234567887654321ULL);
static double gauss(void)
{
    double u = fm_test_rng_uniform(&rng), v = fm_test_rng_uniform(&rng);
    return sqrt(-2 * log(1 - u)) * cos(6.283185307179586 * v);
}

/* Features generated from labels: each class and age leaves a trace, plus noise. */
static void make_set(int n, int dim, float *x, fm_utk_label *lb)
{
    for (int i = 0; i < n; i++) {
        lb[i].age = (int)(fm_test_rng_uniform(&rng) * 80);
        lb[i].gender = fm_test_rng_uniform(&rng) < 0.5;
        lb[i].race = (int)(fm_test_rng_uniform(&rng) * 5);
        float *r = x + (size_t)i * (size_t)dim;
        for (int j = 0; j < dim; j++)
            r[j] = (float)(0.02 * gauss());
        r[lb[i].gender] += 1.0f;
        r[2 + lb[i].race] += 1.0f;
        r[7] += (float)(lb[i].age / 40.0);
        r[8] += (float)((lb[i].age / 40.0) * (lb[i].age / 40.0));
        r[9] += 3.0f; /* an offset standardisation must remove */
    }
}

static void test_learns(const char *dir)
{
    enum { NT = 3000, NV = 400, DIM = 12 };
    float *xt = malloc(sizeof(float) * NT * DIM), *xv = malloc(sizeof(float) * NV * DIM);
    fm_utk_label *lt = malloc(sizeof *lt * NT), *lv = malloc(sizeof *lv * NV);
    make_set(NT, DIM, xt, lt);
    make_set(NV, DIM, xv, lv);
    fm_train_set ts = {NT, DIM, xt, lt}, vs = {NV, DIM, xv, lv};
    fm_train_opts o;
    fm_train_opts_defaults(&o);
    o.hidden[0] = 64;
    o.dropout = 0;
    o.age_sigma = 1.0;
    o.max_epochs = 60;
    o.lr = 3e-3;
    o.seed = 7;
    char path[4200], path2[4200];
    snprintf(path, sizeof path, "%s/synthetic.fmm", dir);
    snprintf(path2, sizeof path2, "%s/synthetic2.fmm", dir);
    fm_train_epoch best = {0};
    fm_error err = {0};
    for (int run = 0; run < 2; run++) {
        fm_model_writer *w = fm_model_writer_new();
        CHECK(fm_model_writer_add_str(w, "general.architecture", "heads", NULL) == FM_OK);
        fm_model_writer_add_str(w, "heads.backbone", "synthetic", NULL);
        fm_model_writer_add_str(w, "heads.feature", "embedding", NULL);
        fm_model_writer_add_i64(w, "heads.flip", 0, NULL);
        fm_model_writer_add_str_array(w, "labels.gender", fm_result_gender_names, 2, NULL);
        fm_model_writer_add_str_array(w, "labels.race", fm_result_race_names, 5, NULL);
        fm_status st = fm_train_heads(&ts, &vs, &o, w, &best, &err);
        CHECK_MSG(st == FM_OK, "%s", err.msg);
        CHECK(fm_model_writer_save(w, run ? path2 : path, &err) == FM_OK);
        fm_model_writer_destroy(&w);
    }
    fprintf(stderr, "synthetic: epoch %d, val age MAE %.3f, gender %.4f, race %.4f\n",
            best.epoch, best.val_age_mae, best.val_gender_acc, best.val_race_acc);
    CHECK(best.val_gender_acc > 0.995 && best.val_race_acc > 0.995);
    CHECK_MSG(best.val_age_mae < 1.0, "age MAE %g", best.val_age_mae);

    /* deterministic: the two runs wrote the same tensors */
    fm_model *a = NULL, *b = NULL;
    CHECK(fm_model_open(&a, path, 0, NULL) == FM_OK && fm_model_open(&b, path2, 0, NULL) == FM_OK);
    if (a && b) {
        CHECK(fm_model_tensor_count(a) == fm_model_tensor_count(b));
        for (size_t i = 0; i < fm_model_tensor_count(a); i++) {
            const fm_model_tensor_info *ta = fm_model_tensor_at(a, i);
            const fm_model_tensor_info *tb = fm_model_tensor(b, ta->name);
            CHECK(tb && tb->count == ta->count &&
                  memcmp(ta->data, tb->data, (size_t)ta->nbytes) == 0);
        }
    }
    fm_model_close(&a);
    fm_model_close(&b);

    /* the file, through fm_heads, predicts the validation set as the trainer scored it:
     * the same network on the same weights, in batches of the trainer's size (OpenBLAS
     * may group a product's sums differently for another batch), gives the same bits */
    fm_heads *h = NULL;
    CHECK_MSG(fm_heads_open(&h, path, o.batch, &err) == FM_OK, "%s", err.msg);
    if (h) {
        fm_attrs *at = malloc(sizeof *at * NV);
        CHECK(fm_heads_forward(h, xv, NV, at, &err) == FM_OK);
        double ae = 0;
        int gok = 0, rok = 0;
        for (int i = 0; i < NV; i++) {
            ae += fabs(at[i].age - lv[i].age);
            gok += at[i].gender == lv[i].gender;
            rok += at[i].race == lv[i].race;
        }
        CHECK_MSG(ae / NV == best.val_age_mae, "MAE %.9g vs %.9g", ae / NV, best.val_age_mae);
        CHECK((double)gok / NV == best.val_gender_acc);
        CHECK((double)rok / NV == best.val_race_acc);
        double fb = fm_heads_fallback_age(h), mean = 0;
        for (int i = 0; i < NT; i++)
            mean += lt[i].age;
        CHECK(fabs(fb - mean / NT) < 1e-9);
        free(at);
    }
    fm_heads_close(&h);
    unlink(path);
    unlink(path2);

    /* two hidden layers with dropout learn the classes too */
    fm_train_opts o2;
    fm_train_opts_defaults(&o2);
    o2.n_hidden = 2;
    o2.hidden[0] = 48;
    o2.hidden[1] = 24;
    o2.dropout = 0.2;
    o2.max_epochs = 15;
    o2.lr = 3e-3;
    fm_model_writer *w = fm_model_writer_new();
    fm_train_epoch best2 = {0};
    CHECK_MSG(fm_train_heads(&ts, &vs, &o2, w, &best2, &err) == FM_OK, "%s", err.msg);
    fprintf(stderr, "two hidden layers, dropout 0.2: epoch %d, val age MAE %.3f, gender "
            "%.4f, race %.4f\n", best2.epoch, best2.val_age_mae, best2.val_gender_acc,
            best2.val_race_acc);
    CHECK(best2.val_gender_acc > 0.99 && best2.val_race_acc > 0.99);
    fm_model_writer_destroy(&w);

    /* bad options and sets are refused */
    w = fm_model_writer_new();
    o.dropout = 1.0;
    CHECK(fm_train_heads(&ts, &vs, &o, w, NULL, NULL) == FM_ERR_INVALID);
    o.dropout = 0;
    fm_train_set empty = {0, DIM, xv, lv};
    CHECK(fm_train_heads(&ts, &empty, &o, w, NULL, NULL) == FM_ERR_INVALID);
    o.leaky_alpha = -0.1f; /* the backward pass needs the output's sign to tell the sides */
    CHECK(fm_train_heads(&ts, &vs, &o, w, NULL, NULL) == FM_ERR_INVALID);
    o.leaky_alpha = 0.1f;
    o.hidden[0] = 0;
    CHECK(fm_train_heads(&ts, &vs, &o, w, NULL, NULL) == FM_ERR_INVALID);
    o.hidden[0] = 64;
    lv[3].race = 5; /* no such class */
    memset(&err, 0, sizeof err);
    CHECK(fm_train_heads(&ts, &vs, &o, w, NULL, &err) == FM_ERR_INVALID &&
          strstr(err.msg, "validation face 3") != NULL);
    fm_model_writer_destroy(&w);
    free(xt);
    free(xv);
    free(lt);
    free(lv);
}

int main(void)
{
    char dir[4096];
    if (fm_test_tmpdir(dir, sizeof dir, "train") != 0)
        return 1;
    test_learns(dir);
    fm_test_remove_tree(dir);
    return fm_test_done("test_train");
}
