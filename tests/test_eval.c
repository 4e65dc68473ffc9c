/* test_eval.c - the evaluation metrics against values computed by hand on a tiny
 * set (one image without a face, counted wrong with the fallback age), UTKFace name
 * parsing, and the fixed hold-out split. */
#include "fm_test.h"

#include "facemill/eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
        {{20, 0, 0}, 1, 22.0f, 0, 0, 0, {0}, {0}, 0},  /* age err +2, right, right */
        {{40, 1, 1}, 1, 35.0f, 0, 1, 0, {0}, {0}, 0},  /* age err -5, gender wrong, race right */
        {{5, 1, 2}, 1, 5.0f, 1, 3, 0, {0}, {0}, 0},    /* age err 0, right, race wrong */
        {{70, 0, 3}, 0, 0.0f, 0, 0, 0, {0}, {0}, 0},   /* no face: fallback 30, err -40, wrong */
        {{31, 0, 0}, 1, 30.0f, 0, 0, 0, {0}, {0}, 0},  /* age err -1, right, right */
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

/* McNemar's exact p against values computed with exact integer binomial sums
 * (min(1, 2 sum_{i <= min(b,c)} C(b+c, i) / 2^(b+c))), by hand for the small ones. */
/* A face detect.fallback placed (the detector found none): its predictions count in
 * "all images" like any face's, but it is not detected: the detection rate, "detected
 * only" and the confusion's no-face column are the detector's. */
static void test_placed(void)
{
    const fm_eval_item items[4] = {
        {{20, 0, 0}, 1, 22.0f, 0, 0, 0, {0}, {0}, 0}, /* detected: err +2, right, right */
        {{40, 1, 1}, 0, 38.0f, 1, 2, 0, {0}, {0}, 1}, /* placed: err -2, right, wrong */
        {{60, 0, 3}, 0, 0.0f, 0, 0, 0, {0}, {0}, 0},  /* no face: fallback 30, err -30 */
        {{10, 1, 2}, 1, 14.0f, 0, 2, 0, {0}, {0}, 0}, /* detected: err +4, wrong, right */
    };
    fm_eval_report r;
    fm_eval_compute(items, 4, 30.0, &r);
    const fm_eval_metrics *a = &r.all, *d = &r.detected;
    CHECK(a->n == 4 && a->n_detected == 2 && a->n_placed == 1 &&
          fabs(a->detect_rate - 0.5) < 1e-12);
    CHECK(fabs(a->age_mae - 38.0 / 4) < 1e-9);             /* 2 + 2 + 30 + 4 */
    CHECK(fabs(a->gender_acc - 2.0 / 4) < 1e-12);          /* images 1 and 2 */
    CHECK(fabs(a->race_acc - 2.0 / 4) < 1e-12);            /* images 1 and 4 */
    CHECK(d->n == 2 && d->n_placed == 0 && fabs(d->age_mae - 3.0) < 1e-9 &&
          fabs(d->gender_acc - 0.5) < 1e-12 && fabs(d->race_acc - 1.0) < 1e-12);
    CHECK(r.gender_confusion[1][1] == 1 && r.race_confusion[1][2] == 1 &&
          r.gender_confusion[0][2] == 1 && r.race_confusion[3][5] == 1);
    /* The bootstrap and the paired comparison count the same way. */
    fm_eval_cis all, det;
    CHECK(fm_eval_bootstrap(items, 4, 30.0, 200, 19, &all, &det) == 0);
    CHECK(all.gender_acc.lo <= 0.5 && 0.5 <= all.gender_acc.hi && det.race_acc.hi == 1);
    fm_eval_item none[4];
    memcpy(none, items, sizeof none);
    none[1].placed = 0; /* the same run without the fallback */
    fm_eval_paired c;
    CHECK(fm_eval_compare(items, 30.0, none, 30.0, 4, 200, 19, &c) == 0);
    CHECK(fabs(c.gender_acc.diff - 0.25) < 1e-12 && c.gender_b == 1 && c.gender_c == 0 &&
          c.race_b == 0 && c.detect_rate.diff == 0 && c.a.n_placed == 1 &&
          fabs(c.age_mae.diff - (2.0 - 10.0) / 4) < 1e-9);
}

static void test_mcnemar(void)
{
    CHECK(fabs(fm_eval_mcnemar(10, 2) - 79.0 / 2048) < 1e-12); /* 2 (1+12+66) / 4096 */
    CHECK(fabs(fm_eval_mcnemar(2, 10) - 79.0 / 2048) < 1e-12);
    CHECK(fabs(fm_eval_mcnemar(0, 5) - 0.0625) < 1e-12);
    CHECK(fabs(fm_eval_mcnemar(30, 15) - 0.035697803555194696) < 1e-10);
    CHECK(fabs(fm_eval_mcnemar(120, 90) - 0.04511408786484073) < 1e-10);
    CHECK(fm_eval_mcnemar(1, 0) == 1 && fm_eval_mcnemar(7, 7) == 1 && fm_eval_mcnemar(0, 0) == 1);
    CHECK(fm_eval_mcnemar(0, 200) < 1e-59 && fm_eval_mcnemar(0, 200) > 0);
}

static void test_quantile(void)
{
    double v[5] = {5, 1, 4, 2, 3};
    CHECK(fabs(fm_eval_quantile(v, 5, 0.5) - 3) < 1e-12);
    CHECK(fabs(fm_eval_quantile(v, 5, 0.25) - 2) < 1e-12);
    CHECK(fabs(fm_eval_quantile(v, 5, 0.1) - 1.4) < 1e-12);
    CHECK(fm_eval_quantile(v, 5, 0) == 1 && fm_eval_quantile(v, 5, 1) == 5);
    double one = 7;
    CHECK(fm_eval_quantile(&one, 1, 0.975) == 7);
}

/* a small generator of its own, so the samples do not come from the code under test */
static double unif(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0;
}

static void test_bootstrap(void)
{
    /* every image the same: every interval is the one value */
    fm_eval_item same[50];
    for (int i = 0; i < 50; i++)
        same[i] = (fm_eval_item){{30, 1, 2}, 1, 33.0f, 1, 0, 0, {0}, {0}, 0};
    fm_eval_cis all, det;
    CHECK(fm_eval_bootstrap(same, 50, 30, 500, 19, &all, &det) == 0);
    CHECK(fabs(all.age_mae.lo - 3) < 1e-6 && fabs(all.age_mae.hi - 3) < 1e-6);
    CHECK(fabs(all.age_rmse.lo - 3) < 1e-6 && fabs(all.age_rmse.hi - 3) < 1e-6);
    CHECK(all.gender_acc.lo == 1 && all.gender_acc.hi == 1);
    CHECK(all.race_acc.lo == 0 && all.race_acc.hi == 0);
    CHECK(all.detect_rate.lo == 1 && det.gender_acc.hi == 1);
    CHECK(fm_eval_bootstrap(same, 50, 30, 0, 19, &all, &det) == -1);
    CHECK(fm_eval_bootstrap(NULL, 0, 30, 100, 19, &all, NULL) == 0 && all.age_mae.hi == 0);

    /* coverage: 200 samples of 300 images from a population with gender accuracy 0.8,
     * ethnicity 0.6, detection 0.95 and age errors uniform on -10..10 (MAE of the
     * detected 5.0 + 0.5 / 21 ... computed exactly below); the 95% intervals should
     * hold the population's values about 95% of the time */
    enum { N = 300, TRIALS = 200 };
    static fm_eval_item it[N];
    unsigned long long s = 12345;
    int cover_g = 0, cover_r = 0, cover_mae = 0, cover_det = 0;
    double fallback = 30;
    /* population MAE: detected (0.95) |e| with e uniform on -10..10: 110 / 21; no
     * face (0.05) the fallback's error: truth 30 -> 0 */
    double mae = 0.95 * 110.0 / 21;
    for (int t = 0; t < TRIALS; t++) {
        for (int i = 0; i < N; i++) {
            int det_ok = unif(&s) < 0.95;
            int e = (int)(unif(&s) * 21) - 10;
            it[i] = (fm_eval_item){{30, 0, 0}, det_ok, (float)(30 + e),
                                   unif(&s) < 0.8 ? 0 : 1, unif(&s) < 0.6 ? 0 : 1, 0, {0}, {0}, 0};
        }
        /* the population's accuracies count no face as wrong */
        CHECK(fm_eval_bootstrap(it, N, fallback, 1000, 19 + (unsigned)t, &all, NULL) == 0);
        cover_g += all.gender_acc.lo <= 0.8 * 0.95 && 0.8 * 0.95 <= all.gender_acc.hi;
        cover_r += all.race_acc.lo <= 0.6 * 0.95 && 0.6 * 0.95 <= all.race_acc.hi;
        cover_mae += all.age_mae.lo <= mae && mae <= all.age_mae.hi;
        cover_det += all.detect_rate.lo <= 0.95 && 0.95 <= all.detect_rate.hi;
    }
    CHECK_MSG(cover_g >= 180 && cover_g <= 198, "gender covered %d of %d", cover_g, TRIALS);
    CHECK_MSG(cover_r >= 180 && cover_r <= 198, "ethnicity covered %d of %d", cover_r, TRIALS);
    CHECK_MSG(cover_mae >= 180 && cover_mae <= 198, "MAE covered %d of %d", cover_mae, TRIALS);
    CHECK_MSG(cover_det >= 180 && cover_det <= 198, "detection covered %d", cover_det);

    /* the same seed gives the same interval; the width shrinks like 1 / sqrt(n) */
    fm_eval_cis again;
    CHECK(fm_eval_bootstrap(it, N, fallback, 1000, 19 + TRIALS - 1, &again, NULL) == 0);
    CHECK(memcmp(&again, &all, sizeof all) == 0);
    double w300 = all.gender_acc.hi - all.gender_acc.lo; /* ~ 4 sigma = 4 sqrt(.76 .24 / 300) */
    CHECK_MSG(w300 > 0.07 && w300 < 0.12, "width %g", w300);
}

static void test_compare(void)
{
    enum { N = 100 };
    fm_eval_item a[N], b[N];
    for (int i = 0; i < N; i++) {
        a[i] = (fm_eval_item){{20 + i % 50, i % 2, i % 5}, 1, (float)(20 + i % 50), i % 2,
                              i % 5, 0, {0}, {0}, 0};
        b[i] = a[i];
    }
    fm_eval_paired c;
    CHECK(fm_eval_compare(a, 30, b, 30, N, 500, 19, &c) == 0);
    CHECK(c.n == N && c.gender_acc.diff == 0 && c.gender_acc.ci.lo == 0 &&
          c.gender_acc.ci.hi == 0 && c.gender_p == 1 && c.race_p == 1 && c.gender_b == 0);
    /* b wrong on gender for images 0..9, a wrong for 10..11; b wrong on ethnicity for
     * 20..49; b's ages one year off everywhere; b misses image 99's face */
    for (int i = 0; i < 10; i++)
        b[i].gender = 1 - b[i].gender;
    for (int i = 10; i < 12; i++)
        a[i].gender = 1 - a[i].gender;
    for (int i = 20; i < 50; i++)
        b[i].race = (b[i].race + 1) % 5;
    for (int i = 0; i < N; i++)
        b[i].age += 1;
    b[99].detected = 0;
    CHECK(fm_eval_compare(a, 30, b, 30, N, 1000, 19, &c) == 0);
    CHECK(c.gender_b == 11 && c.gender_c == 2);       /* + 99: a right, b no face -> wrong */
    CHECK(c.race_b == 31 && c.race_c == 0);          /* 30 + image 99 */
    CHECK(fabs(c.gender_p - 2 * (1 + 13 + 78) / 8192.0) < 1e-12);
    CHECK(fabs(c.gender_acc.diff - 0.09) < 1e-12);     /* 98/100 - 89/100 */
    CHECK(c.gender_acc.ci.lo > 0.02 && c.gender_acc.ci.hi < 0.18);
    CHECK(c.race_acc.diff > 0.3 && c.race_acc.ci.lo > 0.2);
    /* ages: a exact, b 1 off (image 99: fallback 30 against truth 69 -> 39) */
    CHECK(fabs(c.age_mae.diff - -(99 * 1.0 + 39) / N) < 1e-9);
    CHECK(c.age_mae.ci.hi < 0 && c.age_mae.ci.lo <= c.age_mae.diff);
    CHECK(fabs(c.detect_rate.diff - 0.01) < 1e-12);
}

static void test_name_hash(void)
{
    CHECK(fm_utk_name_hash("/a/b/1_0_0_x.jpg", 1) == fm_utk_name_hash("1_0_0_x.jpg", 1));
    CHECK(fm_utk_name_hash("1_0_0_x.jpg", 1) != fm_utk_name_hash("1_0_0_x.jpg", 2));
    CHECK(fm_utk_name_hash("1_0_0_x.jpg", 1) != fm_utk_name_hash("1_0_0_y.jpg", 1));
}

/* A file of `facemill eval --save-results` lines is read whether its JSON is compact
 * (as facemill writes it) or spaced (as Python's json module and jq write it), in any
 * key order; a line that is not one is refused with its number. */
static void test_read_saved(void)
{
    char path[] = "/tmp/fm_test_saved.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    CHECK(f != NULL);
    if (!f)
        return;
    fputs("{\"file\":\"26_1_2_a.jpg\",\"true_age\":26,\"true_gender\":\"female\","
          "\"true_race\":\"Asian\",\"face\":true,\"placed\":false,\"age\":24.5,"
          "\"age_std\":3.25,\"gender\":\"female\",\"race\":\"Asian\","
          "\"gender_probs\":{\"male\":0.125,\"female\":0.875},\"race_probs\":{\"White\":0.0625,"
          "\"Black\":0.0625,\"Asian\":0.75,\"Indian\":0.0625,\"Others\":0.0625}}\n", f);
    /* spaced, keys in another order, a file name that is also a key's name */
    fputs("{\"face\": true, \"placed\": false, \"true_race\": \"White\", "
          "\"true_gender\": \"male\", \"true_age\": 60, \"file\": \"60_0_0_age.jpg\", "
          "\"gender_probs\": {\"male\": 0.5625, \"female\": 0.4375}, "
          "\"race_probs\": {\"White\": 0.5, \"Black\": 0.125, \"Asian\": 0.125, "
          "\"Indian\": 0.125, \"Others\": 0.125}, \"age\" :  58.0, \"age_std\":\t7.5, "
          "\"gender\": \"male\", \"race\": \"White\"}\n", f);
    fputs("{\"file\": \"3_0_4_b.jpg\", \"true_age\": 3, \"true_gender\": \"male\", "
          "\"true_race\": \"Others\", \"face\": false, \"placed\": false}\n", f);
    fclose(f);
    const char *paths[4] = {"/x/26_1_2_a.jpg", "60_0_0_age.jpg", "/y/3_0_4_b.jpg",
                            "1_0_0_missing.jpg"};
    fm_eval_item it[4];
    unsigned char found[4];
    memset(it, 0, sizeof it);
    fm_error e;
    CHECK(fm_eval_read_saved(path, 4, paths, it, found, &e) == 3);
    CHECK(found[0] && found[1] && found[2] && !found[3]);
    CHECK(it[0].truth.age == 26 && it[0].truth.gender == 1 && it[0].truth.race == 2);
    CHECK(it[0].detected && it[0].age == 24.5f && it[0].age_std == 3.25f &&
          it[0].gender == 1 && it[0].race == 2);
    CHECK(it[0].gender_probs[0] == 0.125f && it[0].gender_probs[1] == 0.875f &&
          it[0].race_probs[2] == 0.75f && it[0].race_probs[4] == 0.0625f);
    CHECK(it[1].truth.age == 60 && it[1].truth.gender == 0 && it[1].truth.race == 0);
    CHECK(it[1].detected && it[1].age == 58.0f && it[1].age_std == 7.5f &&
          it[1].gender == 0 && it[1].race == 0);
    CHECK(it[1].gender_probs[0] == 0.5625f && it[1].race_probs[0] == 0.5f &&
          it[1].race_probs[3] == 0.125f);
    CHECK(it[2].truth.age == 3 && it[2].truth.race == 4 && !it[2].detected && !it[2].placed);
    /* a line of something else: refused, naming its line */
    f = fopen(path, "a");
    CHECK(f != NULL);
    if (f) {
        fputs("{\"file\": \"5_0_0_c.jpg\", \"true_age\": 5}\n", f);
        fclose(f);
        CHECK(fm_eval_read_saved(path, 4, paths, it, found, &e) == -1);
        CHECK(e.code == FM_ERR_FORMAT && strstr(fm_error_text(&e), ":4:") != NULL);
    }
    unlink(path);
}

int main(void)
{
    test_names();
    test_holdout();
    test_metrics();
    test_placed();
    test_mcnemar();
    test_quantile();
    test_bootstrap();
    test_compare();
    test_name_hash();
    test_read_saved();
    return fm_test_done("test_eval");
}
