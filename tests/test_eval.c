/* test_eval.c - the evaluation metrics against values computed by hand on a tiny
 * set (one image without a face, counted wrong with the fallback age), UTKFace name
 * parsing, and the fixed hold-out split. */
#include "fm_test.h"

#include "facemill/eval.h"

#include <math.h>
#include <string.h>

static void test_names(void)
{
    fm_utk_label l = {-1, -1, -1};
    CHECK(fm_utk_parse_name("26_1_2_20170116174525125.jpg.chip.jpg", &l) == 0);
    CHECK(l.age == 26 && l.gender == 1 && l.race == 2);
    CHECK(fm_utk_parse_name("/data/utk/train/116_0_4_2017.jpg", &l) == 0 && l.age == 116 &&
          l.race == 4);
    fm_utk_label k = l;
    const char *bad[] = {"117_0_0_x.jpg", "26_2_0_x.jpg", "26_0_5_x.jpg", "26_0_0.jpg",
                         "26_0_x.jpg",    "a_0_0_x.jpg",  "_0_0_x.jpg",   "1234_0_0_x.jpg",
                         "26__0_x.jpg",   "",             "-1_0_0_x.jpg"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_MSG(fm_utk_parse_name(bad[i], &l) == -1, "%s", bad[i]);
        CHECK(memcmp(&l, &k, sizeof l) == 0);
    }
    CHECK(fm_utk_parse_name(NULL, &l) == -1);
}

static void test_holdout(void)
{
    char name[64];
    int in = 0;
    for (int i = 0; i < 10000; i++) {
        snprintf(name, sizeof name, "%d_%d_%d_2017%09d.jpg.chip.jpg", i % 90, i % 2, i % 5, i);
        int a = fm_utk_in_holdout(name, 0.1);
        char path[128];
        snprintf(path, sizeof path, "/some/dir/%s", name);
        CHECK(a == fm_utk_in_holdout(path, 0.1)); /* the directory does not matter */
        CHECK(fm_utk_in_holdout(name, 0.0) == 0 && fm_utk_in_holdout(name, 1.0) == 1);
        in += a;
    }
    CHECK_MSG(in > 900 && in < 1100, "%d of 10000 held out", in);
}

static void test_metrics(void)
{
    /* true (age, gender, race) -> predicted; the fourth image has no face */
    const fm_eval_item items[5] = {
        {{20, 0, 0}, 1, 22.0f, 0, 0},  /* age err +2, right, right */
        {{40, 1, 1}, 1, 35.0f, 0, 1},  /* age err -5, gender wrong, race right */
        {{5, 1, 2}, 1, 5.0f, 1, 3},    /* age err 0, right, race wrong */
        {{70, 0, 3}, 0, 0.0f, 0, 0},   /* no face: fallback 30 -> err -40, both wrong */
        {{31, 0, 0}, 1, 30.0f, 0, 0},  /* age err -1, right, right */
    };
    fm_eval_report r;
    fm_eval_compute(items, 5, 30.0, &r);
    const fm_eval_metrics *a = &r.all, *d = &r.detected;
    CHECK(a->n == 5 && a->n_detected == 4 && fabs(a->detect_rate - 0.8) < 1e-12);
    /* |e| = 2, 5, 0, 40, 1 -> 48 / 5; e^2 = 4, 25, 0, 1600, 1 -> 1630 / 5 */
    CHECK(fabs(a->age_mae - 9.6) < 1e-9);
    CHECK(fabs(a->age_rmse - sqrt(326.0)) < 1e-9);
    CHECK(fabs(a->gender_acc - 3.0 / 5) < 1e-12); /* 1, 3, 5 right */
    CHECK(fabs(a->race_acc - 3.0 / 5) < 1e-12);   /* 1, 2, 5 right */
    CHECK(d->n == 4 && d->n_detected == 4 && fabs(d->detect_rate - 1) < 1e-12);
    CHECK(fabs(d->age_mae - 2.0) < 1e-9);            /* 8 / 4 */
    CHECK(fabs(d->age_rmse - sqrt(30.0 / 4)) < 1e-9); /* 30 / 4 */
    CHECK(fabs(d->gender_acc - 0.75) < 1e-12 && fabs(d->race_acc - 0.75) < 1e-12);
    /* confusion: rows true, columns predicted, last column no face */
    CHECK(r.gender_confusion[0][0] == 2 && r.gender_confusion[0][1] == 0 &&
          r.gender_confusion[0][2] == 1);
    CHECK(r.gender_confusion[1][0] == 1 && r.gender_confusion[1][1] == 1 &&
          r.gender_confusion[1][2] == 0);
    CHECK(r.race_confusion[0][0] == 2 && r.race_confusion[1][1] == 1 &&
          r.race_confusion[2][3] == 1 && r.race_confusion[3][5] == 1);
    int total = 0;
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 6; j++)
            total += r.race_confusion[i][j];
    CHECK(total == 5);
    /* groups: White male = images 1 and 5 */
    const fm_eval_metrics *wm = &r.by_race_gender[0][0];
    CHECK(wm->n == 2 && fabs(wm->age_mae - 1.5) < 1e-9 && wm->gender_acc == 1.0);
    /* Indian male = image 4 only: no face */
    const fm_eval_metrics *im = &r.by_race_gender[3][0];
    CHECK(im->n == 1 && im->n_detected == 0 && im->detect_rate == 0 && im->gender_acc == 0 &&
          fabs(im->age_mae - 40) < 1e-9);
    CHECK(r.by_race_gender[4][1].n == 0 && r.by_race_gender[4][1].age_mae == 0);
    /* age bands: 0-9 {5}, 20-29 {20}, 30-39 {31}, 40-49 {40}, 70+ {70} */
    CHECK(r.by_age_band[0].n == 1 && r.by_age_band[2].n == 1 && r.by_age_band[3].n == 1 &&
          r.by_age_band[4].n == 1 && r.by_age_band[7].n == 1 && r.by_age_band[1].n == 0);
    CHECK(fabs(r.by_age_band[4].age_mae - 5) < 1e-9 && r.by_age_band[4].gender_acc == 0);
    CHECK(fm_eval_age_band(0) == 0 && fm_eval_age_band(69) == 6 && fm_eval_age_band(116) == 7);
    CHECK(strcmp(fm_eval_age_band_name(7), "70+") == 0 && fm_eval_age_band_name(8) == NULL);
    CHECK(r.fallback_age == 30.0);

    fm_eval_compute(NULL, 0, 30.0, &r);
    CHECK(r.all.n == 0 && r.all.age_mae == 0 && r.detected.gender_acc == 0);
}

int main(void)
{
    test_names();
    test_holdout();
    test_metrics();
    return fm_test_done("test_eval");
}
