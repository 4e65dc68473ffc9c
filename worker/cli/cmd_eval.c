/* cmd_eval.c - `facemill eval --data DIR [--json]`: runs the production pipeline over
 * a folder of UTKFace-named images and reports how right the attributes are.
 *
 * The metric code is in worker/pipeline/eval.c (no I/O, unit-tested); this file lists the
 * folder, runs the pipeline, takes the highest-scoring face of each image and prints.
 * Images without a detected face stay in the "all images" figures as wrong (age:
 * the heads' fallback age, the training-set mean).
 */
#include "cli_opts.h"
#include "commands.h"
#include "facemill/clock.h"
#include "facemill/config.h"
#include "facemill/eval.h"
#include "facemill/json.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"
#include "facemill/result_json.h"
#include "facemill/trainset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 16

static const cli_cmd cmd = {
    "eval", "--data DIR [options]", 0, 0,
    "Labels every UTKFace-named image (AGE_GENDER_RACE_*.jpg) in DIR with the\n"
    "production pipeline and compares with the labels in the names: detection rate,\n"
    "age MAE and RMSE, gender and ethnicity accuracy, confusion matrices, and a\n"
    "table per ethnicity x gender and per age band. Each image counts once, with\n"
    "its highest-scoring face. Images without a detected face count as wrong for\n"
    "every attribute (age: the heads' fallback age, the training-set mean) in \"all\n"
    "images\"; \"detected only\" leaves them out. detect.pad defaults to 0.25 here\n"
    "(tight face crops), as in `facemill train`.\n",
    "exit status: 0 success (unreadable images are reported and counted as wrong), "
    "1 failure, 2 usage error",
    fm_utk_config_defaults};

static void json_metrics(fm_json *j, const fm_eval_metrics *m)
{
    fm_json_key(j, "n");
    fm_json_int(j, m->n);
    fm_json_key(j, "n_detected");
    fm_json_int(j, m->n_detected);
    fm_json_key(j, "detect_rate");
    fm_json_num(j, m->detect_rate, 6);
    fm_json_key(j, "age_mae");
    fm_json_num(j, m->age_mae, 6);
    fm_json_key(j, "age_rmse");
    fm_json_num(j, m->age_rmse, 6);
    fm_json_key(j, "gender_acc");
    fm_json_num(j, m->gender_acc, 6);
    fm_json_key(j, "race_acc");
    fm_json_num(j, m->race_acc, 6);
}

static void print_json(const fm_eval_report *r, int skipped)
{
    fm_json j;
    fm_json_init(&j, stdout);
    fm_json_obj_begin(&j);
    json_metrics(&j, &r->all);
    fm_json_key(&j, "skipped_names");
    fm_json_int(&j, skipped);
    fm_json_key(&j, "fallback_age");
    fm_json_num(&j, r->fallback_age, 5);
    fm_json_key(&j, "detected_only");
    fm_json_obj_begin(&j);
    json_metrics(&j, &r->detected);
    fm_json_obj_end(&j);
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
    printf("| %-16s | %5d | %6.2f%% | %7.2f | %8.2f | %6.2f%% | %9.2f%% |\n", name, m->n,
           100 * m->detect_rate, m->age_mae, m->age_rmse, 100 * m->gender_acc,
           100 * m->race_acc);
}

static void print_text(const fm_eval_report *r, const char *dir, int skipped)
{
    const fm_eval_metrics *a = &r->all, *d = &r->detected;
    printf("data        %s\n", dir);
    printf("images      %d (%d file name(s) skipped: not AGE_GENDER_RACE_*.jpg)\n", a->n,
           skipped);
    printf("detected    %d (%.2f%%); without a face: age counts as %.1f (training mean), "
           "gender and ethnicity as wrong\n\n",
           a->n_detected, 100 * a->detect_rate, r->fallback_age);
    printf("| metric | all images | detected only |\n|---|---:|---:|\n");
    printf("| n | %d | %d |\n", a->n, d->n);
    printf("| age MAE | %.3f | %.3f |\n", a->age_mae, d->age_mae);
    printf("| age RMSE | %.3f | %.3f |\n", a->age_rmse, d->age_rmse);
    printf("| gender accuracy | %.2f%% | %.2f%% |\n", 100 * a->gender_acc, 100 * d->gender_acc);
    printf("| ethnicity accuracy | %.2f%% | %.2f%% |\n\n", 100 * a->race_acc,
           100 * d->race_acc);

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

/* Runs the pipeline over the listed images: one item per image (its highest-scoring
 * face). */
static fm_status label_all(fm_pipeline *p, const fm_utk_list *l, fm_eval_item *items,
                           fm_error *err)
{
    fm_pipeline_input in[BATCH];
    fm_image_result res[BATCH];
    double t0 = fm_now_ms(), last = t0;
    for (int i0 = 0; i0 < l->n; i0 += BATCH) {
        int n = l->n - i0 < BATCH ? l->n - i0 : BATCH;
        for (int i = 0; i < n; i++) {
            memset(&in[i], 0, sizeof in[i]);
            in[i].path = l->paths[i0 + i];
        }
        fm_status st = fm_pipeline_run(p, in, n, res, err);
        if (st != FM_OK)
            return st;
        for (int i = 0; i < n; i++) {
            fm_eval_item *it = &items[i0 + i];
            it->truth = l->labels[i0 + i];
            if (res[i].error.code != FM_OK) {
                fm_log_warn("%s", fm_error_text(&res[i].error));
                continue;
            }
            if (res[i].n_faces > 0 && res[i].faces[0].has_attrs) {
                const fm_attrs *at = &res[i].faces[0].attrs;
                it->detected = 1;
                it->age = at->age;
                it->gender = at->gender;
                it->race = at->race;
            }
        }
        double now = fm_now_ms();
        if (now - last > 15000) {
            double rate = (i0 + n) / ((now - t0) / 1000);
            fm_log_info("%d/%d images, %.1f images/s, ETA %.0f s", i0 + n, l->n, rate,
                        (l->n - i0 - n) / rate);
            last = now;
        }
    }
    return FM_OK;
}

int fm_cmd_eval(int argc, char **argv)
{
    const char *dir = NULL;
    int json = 0;
    const cli_opt opts[] = {
        CLI_PATH("--data", 0, "DIR", &dir, "the labelled images (required)"),
        CLI_FLAG("--json", 0, &json,
                 "print one JSON object on one line instead of tables: n, n_detected, "
                 "detect_rate, age_mae, age_rmse, gender_acc, race_acc (fractions 0..1, "
                 "all images), fallback_age, detected_only {...}, gender_confusion, "
                 "race_confusion (rows true, columns predicted, last column no face), "
                 "groups [{race, gender, ...}], age_bands [{band, ...}]"),
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

    rc = CLI_EXIT_FAILURE;
    fm_error err = {0};
    fm_utk_list l = {0};
    fm_pipeline *p = NULL;
    fm_eval_item *items = NULL;
    fm_pipeline_opts po = {BATCH, 0, 0};
    if (fm_utk_list_dir(dir, &l, &err) != FM_OK ||
        fm_nn_set_threads((int)c.engine.threads, &err) != FM_OK ||
        fm_pipeline_open(&p, &c, &po, &err) != FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&err));
        goto done;
    }
    if (l.skipped)
        fm_log_warn("%s: skipped %d file(s) whose names are not AGE_GENDER_RACE_*.jpg", dir,
                    l.skipped);
    if (!(items = calloc((size_t)(l.n ? l.n : 1), sizeof *items))) {
        cli_fail(&cmd, "out of memory");
        goto done;
    }
    if (label_all(p, &l, items, &err) != FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&err));
        goto done;
    }
    fm_eval_report r;
    fm_eval_compute(items, l.n, fm_heads_fallback_age(fm_pipeline_heads(p)), &r);
    if (json)
        print_json(&r, l.skipped);
    else
        print_text(&r, dir, l.skipped);
    rc = fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
done:
    free(items);
    fm_pipeline_close(&p);
    fm_utk_list_free(&l);
    return rc;
}
