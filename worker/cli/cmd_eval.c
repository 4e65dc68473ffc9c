/* cmd_eval.c - `facemill eval --data DIR [options]`: runs the production pipeline over
 * a folder of UTKFace-named images and reports how right the attributes are, with
 * bootstrap intervals; compares with another run on the same images (a saved
 * per-image file or a second configuration); scores under controlled damage.
 *
 * The metric and statistics code is in worker/pipeline/eval.c and the damage in
 * worker/vision/degrade.c (no I/O, unit-tested); this file lists the folder, runs the
 * pipeline, takes the highest-scoring face of each image and prints.
 * Images without a detected face stay in the "all images" figures as wrong (age:
 * the heads' fallback age, the training-set mean).
 */
#include "cli_opts.h"
#include "cmd_blas.h"
#include "commands.h"
#include "facemill/clock.h"
#include "facemill/config.h"
#include "facemill/degrade.h"
#include "facemill/eval.h"
#include "facemill/json.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"
#include "facemill/result_json.h"
#include "facemill/trainset.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 16

/* The trainers' defaults for UTKFace chips, and the fallback for chips the detector
 * misses: every image evaluated is a face. */
static void eval_defaults(fm_config *c)
{
    fm_utk_config_defaults(c);
    c->detect.fallback = FM_FALLBACK_CROPPED;
}

static const cli_cmd cmd = {
    "eval", "--data DIR [options]", 0, 0,
    "Labels every UTKFace-named image (AGE_GENDER_RACE_*.jpg) in DIR with the\n"
    "production pipeline and compares with the labels in the names: detection rate,\n"
    "age MAE and RMSE, gender and ethnicity accuracy, confusion matrices, and a\n"
    "table per ethnicity x gender and per age band. Each image counts once, with\n"
    "its highest-scoring face. Images without a detected face count as wrong for\n"
    "every attribute (age: the heads' fallback age, the training-set mean) in \"all\n"
    "images\"; \"detected only\" leaves them out. Defaults here are for face chips:\n"
    "detect.pad 0.25 (tight face crops, as in `facemill train`) and detect.fallback\n"
    "cropped: an image where the detector finds no face is taken as one cropped face\n"
    "(\"placed\"); its predictions count in \"all images\", but not as detected.\n",
    "exit status: 0 success (unreadable images are reported and counted as wrong), "
    "1 failure (also: no UTKFace-named image in DIR), 2 usage error",
    eval_defaults};

static void json_metrics(fm_json *j, const fm_eval_metrics *m)
{
    fm_json_key(j, "n");
    fm_json_int(j, m->n);
    fm_json_key(j, "n_detected");
    fm_json_int(j, m->n_detected);
    fm_json_key(j, "n_placed");
    fm_json_int(j, m->n_placed);
    /* of no image there is no figure: null, not a 0 that reads as perfect or hopeless */
    const char *keys[] = {"detect_rate", "age_mae", "age_rmse", "gender_acc", "race_acc"};
    const double v[] = {m->detect_rate, m->age_mae, m->age_rmse, m->gender_acc,
                        m->race_acc};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        fm_json_key(j, keys[i]);
        if (m->n > 0)
            fm_json_num(j, v[i], 6);
        else
            fm_json_null(j);
    }
}

static void json_ci(fm_json *j, const char *key, fm_eval_ci c)
{
    fm_json_key(j, key);
    fm_json_arr_begin(j);
    fm_json_num(j, c.lo, 6);
    fm_json_num(j, c.hi, 6);
    fm_json_arr_end(j);
}

/* "ci95": {"detect_rate": [lo, hi], ...} */
static void json_cis(fm_json *j, const fm_eval_cis *c)
{
    fm_json_key(j, "ci95");
    fm_json_obj_begin(j);
    json_ci(j, "detect_rate", c->detect_rate);
    json_ci(j, "age_mae", c->age_mae);
    json_ci(j, "age_rmse", c->age_rmse);
    json_ci(j, "gender_acc", c->gender_acc);
    json_ci(j, "race_acc", c->race_acc);
    fm_json_obj_end(j);
}

/* What a report is printed with besides the report. */
typedef struct extras {
    int skipped, resamples;
    fm_eval_cis ci_all, ci_det;
    const char *degrade;        /* the damage applied, or NULL */
    const fm_eval_paired *cmp;  /* the comparison, or NULL */
    const char *cmp_what;       /* what was compared with */
} extras;

static void json_diff(fm_json *j, const char *key, const fm_eval_diff *d)
{
    fm_json_key(j, key);
    fm_json_obj_begin(j);
    fm_json_key(j, "diff");
    fm_json_num(j, d->diff, 6);
    json_ci(j, "ci95", d->ci);
    fm_json_obj_end(j);
}

static void json_compare(fm_json *j, const fm_eval_paired *c, const char *what)
{
    fm_json_key(j, "compare");
    fm_json_obj_begin(j);
    fm_json_key(j, "with");
    fm_json_str(j, what);
    fm_json_key(j, "n");
    fm_json_int(j, c->n);
    fm_json_key(j, "this");
    fm_json_obj_begin(j);
    json_metrics(j, &c->a);
    fm_json_obj_end(j);
    fm_json_key(j, "other");
    fm_json_obj_begin(j);
    json_metrics(j, &c->b);
    fm_json_obj_end(j);
    json_diff(j, "detect_rate", &c->detect_rate);
    json_diff(j, "age_mae", &c->age_mae);
    json_diff(j, "age_rmse", &c->age_rmse);
    json_diff(j, "gender_acc", &c->gender_acc);
    json_diff(j, "race_acc", &c->race_acc);
    const char *names[2] = {"gender_mcnemar", "race_mcnemar"};
    int b[2] = {c->gender_b, c->race_b}, cc[2] = {c->gender_c, c->race_c};
    double pv[2] = {c->gender_p, c->race_p};
    for (int k = 0; k < 2; k++) {
        fm_json_key(j, names[k]);
        fm_json_obj_begin(j);
        fm_json_key(j, "this_only_right");
        fm_json_int(j, b[k]);
        fm_json_key(j, "other_only_right");
        fm_json_int(j, cc[k]);
        fm_json_key(j, "p");
        fm_json_num(j, pv[k], 6);
        fm_json_obj_end(j);
    }
    fm_json_obj_end(j);
}

static void print_json(const fm_eval_report *r, const extras *x)
{
    fm_json j;
    fm_json_init(&j, stdout);
    fm_json_obj_begin(&j);
    json_metrics(&j, &r->all);
    json_cis(&j, &x->ci_all);
    fm_json_key(&j, "resamples");
    fm_json_int(&j, x->resamples);
    fm_json_key(&j, "degrade");
    if (x->degrade)
        fm_json_str(&j, x->degrade);
    else
        fm_json_null(&j);
    fm_json_key(&j, "skipped_names");
    fm_json_int(&j, x->skipped);
    fm_json_key(&j, "fallback_age");
    fm_json_num(&j, r->fallback_age, 5);
    fm_json_key(&j, "detected_only");
    fm_json_obj_begin(&j);
    json_metrics(&j, &r->detected);
    json_cis(&j, &x->ci_det);
    fm_json_obj_end(&j);
    if (x->cmp)
        json_compare(&j, x->cmp, x->cmp_what);
    fm_json_key(&j, "gender_confusion");
    fm_json_arr_begin(&j);
    for (int t = 0; t < FM_HEADS_GENDERS; t++) {
        fm_json_arr_begin(&j);
        for (int p = 0; p <= FM_HEADS_GENDERS; p++)
            fm_json_int(&j, r->gender_confusion[t][p]);
        fm_json_arr_end(&j);
    }
    fm_json_arr_end(&j);
    fm_json_key(&j, "race_confusion");
    fm_json_arr_begin(&j);
    for (int t = 0; t < FM_HEADS_RACES; t++) {
        fm_json_arr_begin(&j);
        for (int p = 0; p <= FM_HEADS_RACES; p++)
            fm_json_int(&j, r->race_confusion[t][p]);
        fm_json_arr_end(&j);
    }
    fm_json_arr_end(&j);
    fm_json_key(&j, "groups");
    fm_json_arr_begin(&j);
    for (int a = 0; a < FM_HEADS_RACES; a++)
        for (int g = 0; g < FM_HEADS_GENDERS; g++) {
            fm_json_obj_begin(&j);
            fm_json_key(&j, "race");
            fm_json_str(&j, fm_result_race_names[a]);
            fm_json_key(&j, "gender");
            fm_json_str(&j, fm_result_gender_names[g]);
            json_metrics(&j, &r->by_race_gender[a][g]);
            fm_json_obj_end(&j);
        }
    fm_json_arr_end(&j);
    fm_json_key(&j, "age_bands");
    fm_json_arr_begin(&j);
    for (int b = 0; b < FM_EVAL_AGE_BANDS; b++) {
        fm_json_obj_begin(&j);
        fm_json_key(&j, "band");
        fm_json_str(&j, fm_eval_age_band_name(b));
        json_metrics(&j, &r->by_age_band[b]);
        fm_json_obj_end(&j);
    }
    fm_json_arr_end(&j);
    fm_json_obj_end(&j);
    fm_json_newline(&j);
}

static void group_row(const char *name, const fm_eval_metrics *m)
{
    if (m->n == 0) { /* no image of it: no figures ("-"), not zeros */
        printf("| %-16s | %5d | %7s | %7s | %8s | %7s | %10s |\n", name, 0, "-", "-", "-",
               "-", "-");
        return;
    }
    printf("| %-16s | %5d | %6.2f%% | %7.2f | %8.2f | %6.2f%% | %9.2f%% |\n", name, m->n,
           100 * m->detect_rate, m->age_mae, m->age_rmse, 100 * m->gender_acc,
           100 * m->race_acc);
}

/* "4.530 [4.381, 4.690]"; for a fraction (pct 1) "93.86% [92.82, 94.85]"; for a
 * difference of fractions (pct 2) in points, "+1.20 pts [-0.30, +2.70]"; for a
 * difference of values (pct 3) "-0.120 [-0.300, +0.050]" */
static const char *with_ci(char *buf, size_t size, double v, fm_eval_ci c, int pct)
{
    double f = pct == 1 || pct == 2 ? 100 : 1;
    /* rounding noise of a zero difference prints as 0, not -0 */
    v = fabs(v) < 1e-12 ? 0 : v * f;
    double lo = fabs(c.lo) < 1e-12 ? 0 : c.lo * f, hi = fabs(c.hi) < 1e-12 ? 0 : c.hi * f;
    if (pct == 2)
        snprintf(buf, size, "%+.2f pts [%+.2f, %+.2f]", v, lo, hi);
    else if (pct == 1)
        snprintf(buf, size, "%.2f%% [%.2f, %.2f]", v, lo, hi);
    else if (pct == 3) /* a difference of years */
        snprintf(buf, size, "%+.3f [%+.3f, %+.3f]", v, lo, hi);
    else
        snprintf(buf, size, "%.3f [%.3f, %.3f]", v, lo, hi);
    return buf;
}

static void print_compare_text(const fm_eval_paired *c, const char *what)
{
    printf("paired comparison with %s on the same %d images (this minus other; 95%% "
           "paired bootstrap interval)\n\n",
           what, c->n);
    printf("| metric | this | other | difference |\n|---|---:|---:|---:|\n");
    char b[64];
    printf("| detection rate | %.2f%% | %.2f%% | %s |\n", 100 * c->a.detect_rate,
           100 * c->b.detect_rate, with_ci(b, sizeof b, c->detect_rate.diff, c->detect_rate.ci, 2));
    printf("| age MAE | %.3f | %.3f | %s |\n", c->a.age_mae, c->b.age_mae,
           with_ci(b, sizeof b, c->age_mae.diff, c->age_mae.ci, 3));
    printf("| age RMSE | %.3f | %.3f | %s |\n", c->a.age_rmse, c->b.age_rmse,
           with_ci(b, sizeof b, c->age_rmse.diff, c->age_rmse.ci, 3));
    printf("| gender accuracy | %.2f%% | %.2f%% | %s |\n", 100 * c->a.gender_acc,
           100 * c->b.gender_acc, with_ci(b, sizeof b, c->gender_acc.diff, c->gender_acc.ci, 2));
    printf("| ethnicity accuracy | %.2f%% | %.2f%% | %s |\n\n", 100 * c->a.race_acc,
           100 * c->b.race_acc, with_ci(b, sizeof b, c->race_acc.diff, c->race_acc.ci, 2));
    printf("McNemar's exact test (images only one of the two gets right)\n\n");
    printf("| attribute | only this right | only other right | p |\n|---|---:|---:|---:|\n");
    printf("| gender | %d | %d | %.4g |\n", c->gender_b, c->gender_c, c->gender_p);
    printf("| ethnicity | %d | %d | %.4g |\n\n", c->race_b, c->race_c, c->race_p);
}

static void print_text(const fm_eval_report *r, const char *dir, const extras *x)
{
    const fm_eval_metrics *a = &r->all, *d = &r->detected;
    printf("data        %s%s%s\n", dir, x->degrade ? ", damaged: " : "",
           x->degrade ? x->degrade : "");
    printf("images      %d (%d file name(s) skipped: not AGE_GENDER_RACE_*.jpg)\n", a->n,
           x->skipped);
    printf("detected    %d (%.2f%%); placed by detect.fallback: %d; without a face: age "
           "counts as %.1f (training mean), gender and ethnicity as wrong\n",
           a->n_detected, 100 * a->detect_rate, a->n_placed, r->fallback_age);
    printf("intervals   95%% percentile bootstrap over images, %d resamples, seed %u\n\n",
           x->resamples, FM_EVAL_SEED);
    char b1[64], b2[64];
    const fm_eval_cis *ca = &x->ci_all, *cd = &x->ci_det;
    printf("| metric | all images | detected only |\n|---|---:|---:|\n");
    printf("| n | %d | %d |\n", a->n, d->n);
    printf("| detection rate | %s | |\n",
           with_ci(b1, sizeof b1, a->detect_rate, ca->detect_rate, 1));
    printf("| age MAE | %s | %s |\n", with_ci(b1, sizeof b1, a->age_mae, ca->age_mae, 0),
           with_ci(b2, sizeof b2, d->age_mae, cd->age_mae, 0));
    printf("| age RMSE | %s | %s |\n", with_ci(b1, sizeof b1, a->age_rmse, ca->age_rmse, 0),
           with_ci(b2, sizeof b2, d->age_rmse, cd->age_rmse, 0));
    printf("| gender accuracy | %s | %s |\n",
           with_ci(b1, sizeof b1, a->gender_acc, ca->gender_acc, 1),
           with_ci(b2, sizeof b2, d->gender_acc, cd->gender_acc, 1));
    printf("| ethnicity accuracy | %s | %s |\n\n",
           with_ci(b1, sizeof b1, a->race_acc, ca->race_acc, 1),
           with_ci(b2, sizeof b2, d->race_acc, cd->race_acc, 1));
    if (x->cmp)
        print_compare_text(x->cmp, x->cmp_what);

    printf("gender confusion (rows: true, columns: predicted)\n\n| | male | female | no face |\n"
           "|---|---:|---:|---:|\n");
    for (int t = 0; t < FM_HEADS_GENDERS; t++) {
        printf("| %s |", fm_result_gender_names[t]);
        for (int p = 0; p <= FM_HEADS_GENDERS; p++)
            printf(" %d |", r->gender_confusion[t][p]);
        printf("\n");
    }
    printf("\nethnicity confusion (rows: true, columns: predicted)\n\n|");
    printf(" | White | Black | Asian | Indian | Others | no face |\n"
           "|---|---:|---:|---:|---:|---:|---:|\n");
    for (int t = 0; t < FM_HEADS_RACES; t++) {
        printf("| %s |", fm_result_race_names[t]);
        for (int p = 0; p <= FM_HEADS_RACES; p++)
            printf(" %d |", r->race_confusion[t][p]);
        printf("\n");
    }
    printf("\nper group (all images; no face counts as wrong)\n\n");
    printf("| %-16s | %5s | %7s | %7s | %8s | %7s | %10s |\n", "group", "n", "detect",
           "age MAE", "age RMSE", "gender", "ethnicity");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    char name[64];
    for (int g = 0; g < FM_HEADS_RACES; g++)
        for (int s = 0; s < FM_HEADS_GENDERS; s++) {
            snprintf(name, sizeof name, "%s %s", fm_result_race_names[g],
                     fm_result_gender_names[s]);
            group_row(name, &r->by_race_gender[g][s]);
        }
    for (int b = 0; b < FM_EVAL_AGE_BANDS; b++) {
        snprintf(name, sizeof name, "age %s", fm_eval_age_band_name(b));
        group_row(name, &r->by_age_band[b]);
    }
}


/* The images evaluated: the folder's, or the chosen part of them. */
typedef struct eval_set {
    int n;
    char **paths;         /* into the listing */
    fm_utk_label *labels; /* n, owned */
} eval_set;

/* One image's damage: the editor fm_pipeline_run calls, and the pixels it made last. */
typedef struct damage {
    const fm_degrade *d;
    unsigned variant;
    uint8_t *pixels;
} damage;

static fm_status damage_image(void *arg, const fm_image *in, fm_image *out, fm_error *err)
{
    damage *g = arg;
    free(g->pixels);
    g->pixels = NULL;
    fm_status st = fm_degrade_apply(g->d, in, g->variant, out, err);
    if (st == FM_OK)
        g->pixels = out->data;
    return st;
}

/* Runs the pipeline over the images, each damaged by d first when d is not NULL (the
 * variant: the image's index): one item per image (its highest-scoring face). */
static fm_status label_all(fm_pipeline *p, const eval_set *l, const fm_degrade *d,
                           fm_eval_item *items, fm_error *err)
{
    fm_pipeline_input in[BATCH];
    fm_image_result res[BATCH];
    damage dm[BATCH];
    memset(dm, 0, sizeof dm);
    fm_status st = FM_OK;
    double t0 = fm_now_ms(), last = t0;
    for (int i0 = 0; i0 < l->n && st == FM_OK; i0 += BATCH) {
        int n = l->n - i0 < BATCH ? l->n - i0 : BATCH;
        for (int i = 0; i < n; i++) {
            memset(&in[i], 0, sizeof in[i]);
            in[i].path = l->paths[i0 + i];
            if (d) {
                dm[i].d = d;
                dm[i].variant = (unsigned)(i0 + i);
                in[i].edit = damage_image;
                in[i].edit_arg = &dm[i];
            }
        }
        if ((st = fm_pipeline_run(p, in, n, res, err)) != FM_OK)
            break;
        for (int i = 0; i < n; i++) {
            fm_eval_item *it = &items[i0 + i];
            memset(it, 0, sizeof *it);
            it->truth = l->labels[i0 + i];
            if (res[i].error.code != FM_OK) {
                fm_log_warn("%s", fm_error_text(&res[i].error));
                continue;
            }
            if (res[i].n_faces > 0 && res[i].faces[0].has_attrs) {
                const fm_attrs *at = &res[i].faces[0].attrs;
                /* score 0: the face detect.fallback placed, not one the detector found */
                it->detected = res[i].faces[0].det.score > 0;
                it->placed = !it->detected;
                it->age = at->age;
                it->age_std = at->age_std;
                it->gender = at->gender;
                it->race = at->race;
                memcpy(it->gender_probs, at->gender_probs, sizeof it->gender_probs);
                memcpy(it->race_probs, at->race_probs, sizeof it->race_probs);
            }
        }
        double now = fm_now_ms();
        if (now - last > 15000) {
            double rate = (i0 + n) / ((now - t0) / 1000);
            fm_log_info("%s%s%d/%d images, %.1f images/s, ETA %.0f s", d ? d->name : "",
                        d ? " " : "", i0 + n, l->n, rate, (l->n - i0 - n) / rate);
            last = now;
        }
    }
    for (int i = 0; i < BATCH; i++)
        free(dm[i].pixels);
    return st;
}

/* ---- per-image results ----------------------------------------------------------- */

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* One JSON line per image: file, true_age, true_gender, true_race, face, age,
 * age_std, gender, race, gender_probs {male, female}, race_probs {White, ...}; the
 * predictions null for an image without a face. */
static int save_results(const char *path, const eval_set *l, const fm_eval_item *items)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fm_json j;
    fm_json_init(&j, f);
    for (int i = 0; i < l->n; i++) {
        const fm_eval_item *it = &items[i];
        fm_json_obj_begin(&j);
        fm_json_key(&j, "file");
        fm_json_str(&j, base_name(l->paths[i]));
        fm_json_key(&j, "true_age");
        fm_json_int(&j, it->truth.age);
        fm_json_key(&j, "true_gender");
        fm_json_str(&j, fm_result_gender_names[it->truth.gender]);
        fm_json_key(&j, "true_race");
        fm_json_str(&j, fm_result_race_names[it->truth.race]);
        fm_json_key(&j, "face");
        fm_json_bool(&j, it->detected);
        fm_json_key(&j, "placed");
        fm_json_bool(&j, !it->detected && it->placed);
        const char *keys[6] = {"age", "age_std", "gender", "race", "gender_probs",
                               "race_probs"};
        if (!it->detected && !it->placed) {
            for (int k = 0; k < 6; k++) {
                fm_json_key(&j, keys[k]);
                fm_json_null(&j);
            }
        } else {
            fm_json_key(&j, "age");
            fm_json_f32(&j, it->age);
            fm_json_key(&j, "age_std");
            fm_json_f32(&j, it->age_std);
            fm_json_key(&j, "gender");
            fm_json_str(&j, fm_result_gender_names[it->gender]);
            fm_json_key(&j, "race");
            fm_json_str(&j, fm_result_race_names[it->race]);
            fm_result_json_named(&j, "gender_probs", fm_result_gender_names, it->gender_probs,
                                 FM_HEADS_GENDERS);
            fm_result_json_named(&j, "race_probs", fm_result_race_names, it->race_probs,
                                 FM_HEADS_RACES);
        }
        fm_json_obj_end(&j);
        fm_json_newline(&j);
    }
    int bad = ferror(f);
    return fclose(f) == 0 && !bad ? 0 : -1;
}

/* Reads a file of save_results and finds each image of l in it (fm_eval_read_saved). */
static int read_saved(const char *path, const eval_set *l, fm_eval_item *other,
                      unsigned char *found, fm_error *err)
{
    return fm_eval_read_saved(path, l->n, (const char *const *)l->paths, other, found, err);
}

/* ---- the robustness table ---------------------------------------------------------- */

typedef struct degrade_row {
    const char *name;
    fm_eval_report r;
    fm_eval_paired vs_clean; /* this damage minus clean */
} degrade_row;

static void print_degrade_table(const degrade_row *rows, int n, int json, int resamples)
{
    if (json) {
        fm_json j;
        fm_json_init(&j, stdout);
        fm_json_obj_begin(&j);
        fm_json_key(&j, "resamples");
        fm_json_int(&j, resamples);
        fm_json_key(&j, "degrade");
        fm_json_arr_begin(&j);
        for (int k = 0; k < n; k++) {
            fm_json_obj_begin(&j);
            fm_json_key(&j, "name");
            fm_json_str(&j, rows[k].name);
            json_metrics(&j, &rows[k].r.all);
            json_diff(&j, "vs_clean_detect_rate", &rows[k].vs_clean.detect_rate);
            json_diff(&j, "vs_clean_age_mae", &rows[k].vs_clean.age_mae);
            json_diff(&j, "vs_clean_gender_acc", &rows[k].vs_clean.gender_acc);
            json_diff(&j, "vs_clean_race_acc", &rows[k].vs_clean.race_acc);
            fm_json_key(&j, "gender_mcnemar_p");
            fm_json_num(&j, rows[k].vs_clean.gender_p, 6);
            fm_json_key(&j, "race_mcnemar_p");
            fm_json_num(&j, rows[k].vs_clean.race_p, 6);
            fm_json_obj_end(&j);
        }
        fm_json_arr_end(&j);
        fm_json_obj_end(&j);
        fm_json_newline(&j);
        return;
    }
    printf("robustness: all images (no face counts as wrong); differences are damaged "
           "minus clean on the same images, with 95%% paired bootstrap intervals (%d "
           "resamples, seed %u)\n\n",
           resamples, FM_EVAL_SEED);
    printf("| damage | n | detected | placed | age MAE | gender | ethnicity | MAE vs clean | "
           "gender vs clean | ethnicity vs clean |\n"
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int k = 0; k < n; k++) {
        const fm_eval_metrics *m = &rows[k].r.all;
        const fm_eval_paired *c = &rows[k].vs_clean;
        printf("| %s | %d | %.2f%% | %d | %.3f | %.2f%% | %.2f%% | %+.3f [%+.3f, %+.3f] | "
               "%+.2f [%+.2f, %+.2f] | %+.2f [%+.2f, %+.2f] |\n",
               rows[k].name, m->n, 100 * m->detect_rate, m->n_placed, m->age_mae,
               100 * m->gender_acc,
               100 * m->race_acc, c->age_mae.diff, c->age_mae.ci.lo, c->age_mae.ci.hi,
               100 * c->gender_acc.diff, 100 * c->gender_acc.ci.lo, 100 * c->gender_acc.ci.hi,
               100 * c->race_acc.diff, 100 * c->race_acc.ci.lo, 100 * c->race_acc.ci.hi);
    }
}

/* ---- the command ------------------------------------------------------------------- */

#define MAX_COMPARE_SETS 16
#define MAX_DEGRADE 32

typedef struct eval_opts {
    const char *sets[MAX_COMPARE_SETS];
    int n_sets;
} eval_opts;

static int take_compare_set(void *target, const char *value)
{
    eval_opts *o = target;
    if (!strchr(value, '=') || o->n_sets >= MAX_COMPARE_SETS)
        return -1;
    o->sets[o->n_sets++] = value;
    return 0;
}

/* Splits SPEC[,SPEC...] or "all" into specs (the clean run "none" first). Returns the
 * count, or -1 naming the bad spec in bad. */
static int parse_degrade_list(const char *arg, fm_degrade *out, char *bad, size_t size)
{
    int n = 0;
    if (!strcmp(arg, "all")) {
        for (int k = 0; fm_degrade_suite[k]; k++)
            fm_degrade_parse(fm_degrade_suite[k], &out[n++]);
        return n;
    }
    fm_degrade_parse("none", &out[n++]);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", arg);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == MAX_DEGRADE || fm_degrade_parse(t, &out[n]) != 0) {
            snprintf(bad, size, "%s", t);
            return -1;
        }
        if (out[n].kind != FM_DEGRADE_NONE)
            n++;
    }
    return n;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Chooses the images: the hold-out share of the folder (holdout > 0), then sample of
 * them (sample > 0: those with the smallest fm_utk_name_hash(name, seed)), in name
 * order. */
static int choose(const fm_utk_list *l, double holdout, int sample, unsigned seed,
                  eval_set *s)
{
    s->paths = malloc((size_t)(l->n ? l->n : 1) * sizeof *s->paths);
    s->labels = malloc((size_t)(l->n ? l->n : 1) * sizeof *s->labels);
    uint64_t *keys = malloc((size_t)(l->n ? l->n : 1) * sizeof *keys);
    if (!s->paths || !s->labels || !keys) {
        free(keys);
        return -1;
    }
    s->n = 0;
    for (int i = 0; i < l->n; i++)
        if (holdout <= 0 || fm_utk_in_holdout(l->paths[i], holdout)) {
            s->paths[s->n] = l->paths[i];
            s->labels[s->n++] = l->labels[i];
        }
    if (sample > 0 && sample < s->n) {
        /* the sample-th smallest key is the threshold (64-bit keys of distinct names
         * collide with a negligible chance, which would only add an image) */
        for (int i = 0; i < s->n; i++)
            keys[i] = fm_utk_name_hash(s->paths[i], seed);
        uint64_t *sorted = malloc((size_t)s->n * sizeof *sorted);
        if (!sorted) {
            free(keys);
            return -1;
        }
        memcpy(sorted, keys, (size_t)s->n * sizeof *sorted);
        qsort(sorted, (size_t)s->n, sizeof *sorted, cmp_u64);
        uint64_t cut = sorted[sample - 1];
        free(sorted);
        int m = 0;
        for (int i = 0; i < s->n; i++)
            if (keys[i] <= cut) {
                s->paths[m] = s->paths[i];
                s->labels[m++] = s->labels[i];
            }
        s->n = m;
    }
    free(keys);
    return 0;
}

int fm_cmd_eval(int argc, char **argv)
{
    const char *dir = NULL, *save = NULL, *compare = NULL, *degrade = NULL;
    int json = 0, sample = 0, resamples = FM_EVAL_RESAMPLES, sample_seed = 1;
    double holdout = 0;
    eval_opts eo = {{0}, 0};
    const cli_opt opts[] = {
        CLI_PATH("--data", 0, "DIR", &dir, "the labelled images (required)"),
        CLI_FLAG("--json", 0, &json,
                 "print one JSON object on one line instead of tables: n, n_detected, "
                 "detect_rate, age_mae, age_rmse, gender_acc, race_acc (fractions 0..1, "
                 "all images), ci95 {detect_rate: [lo, hi], ...}, resamples, degrade, "
                 "fallback_age, detected_only {..., ci95}, compare {...} (with --compare "
                 "or --compare-set), gender_confusion, race_confusion (rows true, columns "
                 "predicted, last column no face), groups [{race, gender, ...}], "
                 "age_bands [{band, ...}]"),
        CLI_INT("--resamples", 0, "N", 1, 100000, &resamples,
                "bootstrap resamples of the images for the 95% intervals (default 1000; "
                "the seed is fixed, so the intervals are the same on every run)"),
        CLI_NUM("--holdout", 0, "SHARE", 0, 1, &holdout,
                "only the images of DIR the trainers hold out of a training folder with "
                "this share (a hash of the file name; 0.1 is the shipped models' "
                "hold-out of ../shared/data/utkface/train)"),
        CLI_INT("--sample", 0, "N", 0, 100000000, &sample,
                "only a fixed sample of N of the images: those first in the order of a "
                "seeded hash of the file name (the same images on every machine)"),
        CLI_INT("--sample-seed", 0, "S", 0, 1000000000, &sample_seed,
                "the seed of --sample (default 1)"),
        CLI_PATH("--save-results", 0, "FILE", &save,
                 "write one JSON line per image to FILE: file, true_age, true_gender, "
                 "true_race, face (true/false: the detector's), placed (true: taken as a "
                 "cropped face, detect.fallback), age, age_std, gender, race, gender_probs "
                 "{male, female}, race_probs {White, ...} (predictions null when the "
                 "image has neither)"),
        CLI_PATH("--compare", 0, "FILE", &compare,
                 "compare with another run saved by --save-results on the same images "
                 "(matched by file name): this run minus it for each figure with a 95% "
                 "paired bootstrap interval, and McNemar's exact test for gender and "
                 "ethnicity"),
        CLI_CALL("--compare-set", 0, "KEY=VALUE", "KEY=VALUE", take_compare_set, &eo,
                 "compare with a second pipeline run on the same images, configured as "
                 "this one plus KEY=VALUE (any number, e.g. heads.model=X and "
                 "embed.backbone=Y): the comparison of --compare"),
        CLI_STR("--degrade", 0, "SPEC", &degrade,
                "damage every image before the pipeline: down24, down32, down48 (face "
                "N px wide), jpeg15, blur1.5, blur3, gray, rot25 (+25 and -25 degrees on "
                "alternate images; rot+25, rot-25 one way), dark, bright, occlude, "
                "offcentre (see facemill(1)); a comma-separated list or all (the suite) "
                "prints one table instead: a line per damage with the difference from "
                "the clean images"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    if (!dir)
        return cli_usage_error(&cmd, "--data DIR is required");
    if (!c.heads.model[0])
        return cli_fail(&cmd, "heads.model is empty: nothing to evaluate");
    if (compare && eo.n_sets)
        return cli_usage_error(&cmd, "--compare and --compare-set exclude each other");
    fm_degrade specs[MAX_DEGRADE];
    int n_specs = 0, table = 0;
    if (degrade) {
        char bad[128] = "";
        n_specs = parse_degrade_list(degrade, specs, bad, sizeof bad);
        if (n_specs < 0)
            return cli_usage_error(&cmd, "--degrade: unknown damage '%s'", bad);
        table = !!strchr(degrade, ',') || !strcmp(degrade, "all");
        if (table && (save || compare || eo.n_sets))
            return cli_usage_error(&cmd, "--degrade with a list or all prints the robustness "
                                         "table; it takes no --save-results or --compare");
    }
    fm_config c2 = c;
    fm_error err = {0};
    for (int k = 0; k < eo.n_sets; k++)
        if (fm_config_set(&c2, eo.sets[k], &err) != FM_OK)
            return cli_usage_error(&cmd, "--compare-set: %s", fm_error_text(&err));
    /* the second run is scored like the first: it needs heads too */
    if (eo.n_sets && !c2.heads.model[0])
        return cli_usage_error(&cmd, "--compare-set: heads.model is empty: nothing to "
                                     "compare with");

    rc = CLI_EXIT_FAILURE;
    fm_utk_list l = {0};
    eval_set s = {0};
    fm_pipeline *p = NULL, *p2 = NULL;
    fm_eval_item *items = NULL, *other = NULL;
    unsigned char *found = NULL;
    degrade_row *rows = NULL;
    fm_pipeline_opts po = {BATCH, 0, 0};
    /* the images first: a folder of none is refused before any model loads */
    if (fm_utk_list_dir(dir, &l, &err) != FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&err));
        goto done;
    }
    if (choose(&l, holdout, sample, (unsigned)sample_seed, &s) != 0 ||
        !(items = calloc((size_t)(s.n ? s.n : 1), sizeof *items)) ||
        !(other = calloc((size_t)(s.n ? s.n : 1), sizeof *other)) ||
        !(found = calloc((size_t)(s.n ? s.n : 1), 1)) ||
        !(rows = calloc((size_t)(n_specs ? n_specs : 1), sizeof *rows))) {
        cli_fail(&cmd, "out of memory");
        goto done;
    }
    /* no image is most likely the wrong folder, and its figures would read as perfect */
    if (l.n == 0) {
        cli_fail(&cmd, "%s: no UTKFace-named images (AGE_GENDER_RACE_*.jpg) found, %d "
                 "other .jpg file name(s) skipped: nothing to evaluate", dir, l.skipped);
        goto done;
    }
    if (s.n == 0) {
        cli_fail(&cmd, "%s: none of the %d UTKFace-named images is in the --holdout %g "
                 "share: nothing to evaluate", dir, l.n, holdout);
        goto done;
    }
    if (fm_cmd_blas_apply(cmd.name, &c) != 0)
        goto done;
    if (fm_nn_set_threads((int)c.engine.threads, &err) != FM_OK ||
        fm_pipeline_open(&p, &c, &po, &err) != FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&err));
        goto done;
    }
    if (eo.n_sets && fm_pipeline_open(&p2, &c2, &po, &err) != FM_OK) {
        cli_fail(&cmd, "--compare-set: %s", fm_error_text(&err));
        goto done;
    }
    if (l.skipped)
        fm_log_warn("%s: skipped %d file(s) whose names are not AGE_GENDER_RACE_*.jpg", dir,
                    l.skipped);
    double fallback = fm_heads_fallback_age(fm_pipeline_heads(p));
    if (table) {
        fm_eval_item *clean = other;
        for (int k = 0; k < n_specs; k++) {
            fm_eval_item *cur = k == 0 ? clean : items;
            if (label_all(p, &s, k == 0 ? NULL : &specs[k], cur, &err) != FM_OK) {
                cli_fail(&cmd, "%s", fm_error_text(&err));
                goto done;
            }
            rows[k].name = specs[k].name;
            fm_eval_compute(cur, s.n, fallback, &rows[k].r);
            if (fm_eval_compare(cur, fallback, clean, fallback, s.n, resamples, FM_EVAL_SEED,
                                &rows[k].vs_clean) != 0) {
                cli_fail(&cmd, "out of memory");
                goto done;
            }
            fm_log_info("%s: detected %.2f%%, age MAE %.3f, gender %.2f%%, ethnicity %.2f%%",
                        specs[k].name, 100 * rows[k].r.all.detect_rate, rows[k].r.all.age_mae,
                        100 * rows[k].r.all.gender_acc, 100 * rows[k].r.all.race_acc);
        }
        print_degrade_table(rows, n_specs, json, resamples);
        rc = fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
        goto done;
    }
    const fm_degrade *dg = n_specs > 1 ? &specs[1] : NULL;
    if (label_all(p, &s, dg, items, &err) != FM_OK ||
        (p2 && label_all(p2, &s, dg, other, &err) != FM_OK)) {
        cli_fail(&cmd, "%s", fm_error_text(&err));
        goto done;
    }
    if (save && save_results(save, &s, items) != 0) {
        cli_fail(&cmd, "%s: %s", save, strerror(errno));
        goto done;
    }
    extras x = {0};
    x.skipped = l.skipped;
    x.resamples = resamples;
    x.degrade = dg ? dg->name : NULL;
    fm_eval_paired cmp;
    char what[2 * FM_CONFIG_STRING_MAX];
    if (p2 || compare) {
        double fallback2 = fallback;
        int n2 = s.n;
        if (p2) {
            fallback2 = fm_heads_fallback_age(fm_pipeline_heads(p2));
            size_t used = 0;
            for (int k = 0; k < eo.n_sets && used < sizeof what; k++)
                used += (size_t)snprintf(what + used, sizeof what - used, "%s%s",
                                         k ? " " : "", eo.sets[k]);
        } else {
            snprintf(what, sizeof what, "%s", compare);
            if ((n2 = read_saved(compare, &s, other, found, &err)) < 0) {
                cli_fail(&cmd, "%s", fm_error_text(&err));
                goto done;
            }
            if (n2 == 0) { /* no image to compare on: no difference to report */
                cli_fail(&cmd, "%s: none of the %d images is in it: nothing to compare",
                         compare, s.n);
                goto done;
            }
            if (n2 < s.n)
                fm_log_warn("%s: %d of the %d images are not in it; compared on the other %d",
                            compare, s.n - n2, s.n, n2);
            /* the matched images to the front of both arrays, in order */
            int m = 0;
            for (int i = 0; i < s.n; i++)
                if (found[i]) {
                    if (memcmp(&items[i].truth, &other[i].truth, sizeof items[i].truth)) {
                        cli_fail(&cmd, "%s: %s has other labels in it", compare,
                                 base_name(s.paths[i]));
                        goto done;
                    }
                    fm_eval_item t = items[i];
                    items[i] = items[m];
                    items[m] = t;
                    other[m++] = other[i];
                }
        }
        /* fallback2: a saved run's images without a face are charged this run's */
        if (fm_eval_compare(items, fallback, other, fallback2, n2, resamples, FM_EVAL_SEED,
                            &cmp) != 0) {
            cli_fail(&cmd, "out of memory");
            goto done;
        }
        x.cmp = &cmp;
        x.cmp_what = what;
    }
    fm_eval_report r;
    fm_eval_compute(items, s.n, fallback, &r);
    if (fm_eval_bootstrap(items, s.n, fallback, resamples, FM_EVAL_SEED, &x.ci_all,
                          &x.ci_det) != 0) {
        cli_fail(&cmd, "out of memory");
        goto done;
    }
    if (json)
        print_json(&r, &x);
    else
        print_text(&r, dir, &x);
    rc = fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
done:
    free(rows);
    free(found);
    free(other);
    free(items);
    free(s.paths);
    free(s.labels);
    fm_pipeline_close(&p);
    fm_pipeline_close(&p2);
    fm_utk_list_free(&l);
    return rc;
}
