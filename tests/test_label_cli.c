/* test_label_cli.c - `facemill predict` and `facemill eval --json` end to end on a
 * tiny UTKFace-style folder made here: two face crops cut from a sample photo and
 * saved under UTKFace names, a gray image without a face, and a file whose name is
 * not a UTKFace name. Heads with random weights are written for the real backbone.
 * The output must be valid JSON (checked with python3's json module when it exists)
 * with the keys of the result schema (proto/RESULTS.md); eval must count the gray image as not detected.
 * eval refuses a folder of no UTKFace-named image, a saved run of none of the images
 * (--compare) and a second configuration without heads (--compare-set heads.model=).
 * `facemill train` fine-tunes on the same folder: resume, loss weights, and a second
 * fine-tuning of the fine-tuned file, whose lineage must reach back to the npm base.
 * Needs models/cache (models/fetch); skipped otherwise. */
#include "fm_test.h"
#include "fm_test_model.h"

#include "facemill/align.h"
#include "facemill/detect.h"
#include "facemill/heads.h"
#include "facemill/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[512], data[600], heads[600], models[512], bin[512];
static fm_test_rng rng = FM_TEST_RNG(88172645463325252ULL); /* the heads' weights */

/* Runs cmd (a shell command), returns its stdout (caller frees) and exit status. */
static char *run(const char *cmd, int *status)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return NULL;
    char *buf = fm_test_read_stream(f, NULL);
    int s = pclose(f);
    *status = WIFEXITED(s) ? WEXITSTATUS(s) : -1;
    return buf;
}

/* Runs cmd; its exit status must be want and its output must contain needle. */
static void expect_run(const char *cmd, int want, const char *needle)
{
    int status = -1;
    char *out = run(cmd, &status);
    CHECK_MSG(out && status == want && strstr(out, needle), "%s: exit %d, want %d and '%s': %s",
              cmd, status, want, needle, out ? out : "(no output)");
    free(out);
}

/* `facemill predict` of a sample photo with the backbone dir/NAME.fmm and its heads
 * dir/NAME_heads.fmm (as `facemill train` writes them) gives an age and gender. */
static void expect_labels(const char *name)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "'%s' predict --set models.dir='%s' --set embed.backbone='%s/%s.fmm' "
             "--set heads.model='%s/%s_heads.fmm' '%s/samples/sample1.jpg'",
             bin, models, dir, name, dir, name, models);
    int status = -1;
    char *out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && strstr(out, "\"age\"") && strstr(out, "\"gender_probs\""),
              "%s: exit %d: %s", cmd, status, out ? out : "(no output)");
    free(out);
}

/* 1 when python3 parses every line of text as JSON, 0 when not, -1 without python3. */
static int json_valid(const char *text, int lines)
{
    if (access("/usr/bin/python3", X_OK) != 0)
        return -1;
    char path[4300];
    snprintf(path, sizeof path, "%s/out.json", dir);
    if (fm_test_write_file(path, text, strlen(text)) != 0)
        return 0;
    char cmd[9000];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import json,sys; l=[json.loads(x) for x in "
             "open(sys.argv[1]) if x.strip()]; sys.exit(0 if len(l)==%d else 1)' %s",
             lines, path);
    int ok = system(cmd) == 0;
    unlink(path);
    return ok;
}

/* Crops a square of side s around (cx, cy) of img to a 200x200 JPEG at path. */
static int write_crop(const fm_image *img, float cx, float cy, float s, const char *path)
{
    static uint8_t px[200 * 200 * 3];
    float k = s / 200;
    const float m_inv[6] = {k, 0, cx - s / 2, 0, k, cy - s / 2};
    fm_warp_opts wo = {FM_BORDER_REPLICATE, 0};
    fm_align_warp(img->data, img->w, img->h, img->stride, 3, m_inv, px, 200, 200, &wo);
    fm_image out = {200, 200, 600, px, 200, 200, 1, 1, 1};
    return fm_image_write_jpeg(&out, path, 92, NULL) == FM_OK ? 0 : -1;
}

static int make_folder(void)
{
    char sample[4200], path[4400];
    snprintf(sample, sizeof sample, "%s/samples/sample1.jpg", models);
    fm_decoder *d = NULL;
    fm_detector *det = NULL;
    fm_image img;
    fm_face faces[8];
    int n = 0, ok = 0;
    if (fm_decoder_new(&d, NULL, NULL) != FM_OK || fm_decode_file(d, sample, &img, NULL) ||
        fm_detector_open(&det, models, NULL, NULL) != FM_OK ||
        fm_detect(det, &img, faces, 8, &n, NULL, NULL) != FM_OK || n < 2)
        goto done;
    const char *names[2] = {"25_0_0_20170101000000001.jpg.chip.jpg",
                            "41_1_3_20170101000000002.jpg.chip.jpg"};
    for (int i = 0; i < 2; i++) {
        const float *b = faces[i].box;
        snprintf(path, sizeof path, "%s/%s", data, names[i]);
        if (write_crop(&img, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[3] - b[1]) * 1.1f,
                       path))
            goto done;
    }
    /* gray: no face */
    memset(img.data, 128, (size_t)img.h * img.stride);
    snprintf(path, sizeof path, "%s/30_1_2_20170101000000003.jpg.chip.jpg", data);
    if (write_crop(&img, 100, 100, 200, path))
        goto done;
    snprintf(path, sizeof path, "%s/not_a_utk_name.jpg", data);
    if (write_crop(&img, 100, 100, 200, path))
        goto done;
    ok = 1;
done:
    fm_decoder_destroy(&d);
    fm_detector_close(&det);
    return ok;
}

int main(void)
{
    fm_test_source_path(models, sizeof models, "models/cache");
    fm_test_bin_path(bin, sizeof bin, "facemill");
    char bb[4200];
    snprintf(bb, sizeof bb, "%s/dlib_resnet.fmm", models);
    if (access(bb, R_OK) != 0 || access(bin, X_OK) != 0)
        return fm_test_skip("test_label_cli", "%s or %s missing", bb, bin);
    if (fm_test_tmpdir(dir, sizeof dir, "label_cli") != 0)
        return 1;
    snprintf(data, sizeof data, "%s/utk", dir);
    snprintf(heads, sizeof heads, "%s/heads.fmm", dir);
    char identity[1024];
    const int hidden[1] = {16};
    CHECK(mkdir(data, 0700) == 0);
    CHECK(fm_heads_backbone_identity(bb, identity, sizeof identity, NULL) == FM_OK);
    CHECK(fm_test_write_heads(&rng, heads, identity, "pooled", 1, 256, 1, hidden) == 0);
    CHECK(make_folder());

    char cmd[16384];
    int status = -1;
    /* a folder of no UTKFace-named image is refused, not scored as perfect: one line
     * naming it and counting the file names skipped, nothing on stdout */
    char other[700];
    snprintf(other, sizeof other, "%s/other", dir);
    CHECK(mkdir(other, 0700) == 0);
    snprintf(cmd, sizeof cmd, "cp '%s'/not_a_utk_name.jpg '%s'/", data, other);
    CHECK(system(cmd) == 0);
    char *out = NULL;
    for (int json = 0; json < 2; json++) {
        snprintf(cmd, sizeof cmd,
                 "'%s' eval --data '%s' --set models.dir='%s' "
                 "--set embed.backbone=dlib_resnet.fmm --set heads.model='%s'%s 2>&1",
                 bin, other, models, heads, json ? " --json" : "");
        out = run(cmd, &status);
        CHECK_MSG(out && status == 1 && strstr(out, ": no UTKFace-named images") &&
                      strstr(out, "1 other .jpg file name(s) skipped") &&
                      !strstr(out, "MAE") && !strstr(out, "ci95") &&
                      strchr(out, '\n') == out + strlen(out) - 1,
                  "eval of no image: exit %d: %s", status, out ? out : "(no output)");
        free(out);
    }
    /* the other side of --compare-set without heads: a usage error, alone, before
     * anything loads (it crashed) */
    snprintf(cmd, sizeof cmd,
             "'%s' eval --data '%s' --set models.dir='%s' "
             "--set embed.backbone=dlib_resnet.fmm --set heads.model='%s' "
             "--compare-set heads.model= 2>&1",
             bin, data, models, heads);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 2 && strstr(out, "--compare-set: heads.model is empty") &&
                  strchr(out, '\n') == out + strlen(out) - 1,
              "--compare-set heads.model=: exit %d: %s", status, out ? out : "(no output)");
    free(out);
    snprintf(cmd, sizeof cmd,
             "'%s' predict --set models.dir='%s' --set embed.backbone=dlib_resnet.fmm "
             "--set heads.model='%s' --set detect.pad=0.25 "
             "'%s'/25_0_0_*.jpg '%s'/30_1_2_*.jpg '%s/missing.jpg'",
             bin, models, heads, data, data, data);
    out = run(cmd, &status);
    CHECK(out != NULL);
    if (out) {
        fprintf(stderr, "predict:\n%s", out);
        CHECK(status == 1); /* the missing file fails, the others are reported */
        CHECK(json_valid(out, 3) != 0);
        /* the result schema (proto/RESULTS.md); the missing file is an io error */
        const char *keys[] = {"{\"schema\":2,\"source\":", "\"faces\":[{\"box\":{\"x1\":",
                              "\"landmarks\":{\"left_eye\":{\"x\":", "\"age\":",
                              "\"age_std\":", "\"gender\":", "\"gender_probs\":{\"male\":",
                              "\"race\":", "\"race_probs\":{\"White\":", "\"times_ms\":{",
                              "\"error\":null", "\"error\":{\"code\":4,\"name\":\"io\",\"text\":"};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            CHECK_MSG(strstr(out, keys[i]) != NULL, "%s missing", keys[i]);
        free(out);
    }

    snprintf(cmd, sizeof cmd,
             "'%s' eval --json --data '%s' --set models.dir='%s' "
             "--set embed.backbone=dlib_resnet.fmm --set heads.model='%s'",
             bin, data, models, heads);
    out = run(cmd, &status);
    CHECK(out != NULL);
    if (out) {
        fprintf(stderr, "eval --json:\n%s", out);
        CHECK(status == 0);
        CHECK(json_valid(out, 1) != 0);
        CHECK(strchr(out, '\n') == out + strlen(out) - 1); /* one line */
        const char *keys[] = {"\"n\":3",        "\"n_detected\":2", "\"detect_rate\"",
                              "\"age_mae\"",    "\"age_rmse\"",     "\"gender_acc\"",
                              "\"race_acc\"",   "\"groups\"",       "\"age_bands\"",
                              "\"detected_only\"", "\"skipped_names\":1",
                              "\"fallback_age\":33.5",
                              /* an age band of no image: null figures, not zeros */
                              "\"n\":0,\"n_detected\":0,\"n_placed\":0,"
                              "\"detect_rate\":null,\"age_mae\":null"};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            CHECK_MSG(strstr(out, keys[i]) != NULL, "%s missing", keys[i]);
        free(out);
    }
    snprintf(cmd, sizeof cmd,
             "'%s' eval --data '%s' --set models.dir='%s' --set embed.backbone=dlib_resnet.fmm "
             "--set heads.model='%s'",
             bin, data, models, heads);
    out = run(cmd, &status);
    if (out) {
        CHECK(status == 0 && strstr(out, "age MAE") && strstr(out, "White male") &&
              strstr(out, "age 70+"));
        free(out);
    }
    /* intervals, per-image results, a paired comparison of a run with its own saved
     * results (no discordant image: p = 1, differences 0), the damage table */
    char common[4096], saved[700];
    snprintf(common, sizeof common,
             "'%s' eval --data '%s' --set models.dir='%s' --set embed.backbone=dlib_resnet.fmm "
             "--set heads.model='%s' --resamples 200",
             bin, data, models, heads);
    snprintf(saved, sizeof saved, "%s/results.jsonl", dir);
    snprintf(cmd, sizeof cmd, "%s --json --save-results '%s'", common, saved);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && strstr(out, "\"ci95\":{\"detect_rate\":[") &&
                  strstr(out, "\"resamples\":200") && strstr(out, "\"degrade\":null"),
              "%s", out ? out : "");
    free(out);
    size_t len = 0;
    char *lines = fm_test_read_file(saved, &len);
    CHECK_MSG(lines && json_valid(lines, 3) && strstr(lines, "\"face\":false,\"placed\":true,\"age\":") /* the
                  chip the detector misses: detect.fallback, eval's default */ &&
                  strstr(lines, "\"file\":\"25_0_0_") &&
                  strstr(lines, "\"true_gender\":\"female\",\"true_race\":\"Asian\""),
              "%s", lines ? lines : "");
    free(lines);
    snprintf(cmd, sizeof cmd, "%s --json --compare '%s'", common, saved);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && json_valid(out, 1) &&
                  strstr(out, "\"compare\":{\"with\":") && strstr(out, "\"n\":3,") &&
                  strstr(out, "\"gender_acc\":{\"diff\":0,\"ci95\":[0,0]}") &&
                  strstr(out, "\"gender_mcnemar\":{\"this_only_right\":0,"
                              "\"other_only_right\":0,\"p\":1}"),
              "%s", out ? out : "");
    free(out);
    /* a saved run of none of these images: no comparison to make */
    snprintf(cmd, sizeof cmd, "%s/none.jsonl", dir);
    CHECK(fm_test_write_file(cmd, "", 0) == 0);
    snprintf(cmd, sizeof cmd, "%s --compare '%s/none.jsonl' 2>&1", common, dir);
    expect_run(cmd, 1, "none.jsonl: none of the 3 images is in it: nothing to compare");
    snprintf(cmd, sizeof cmd, "%s --json --degrade gray,jpeg15", common);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && json_valid(out, 1) &&
                  strstr(out, "{\"resamples\":200,\"degrade\":[{\"name\":\"none\",\"n\":3,") &&
                  strstr(out, "{\"name\":\"gray\",\"n\":3,") &&
                  strstr(out, "{\"name\":\"jpeg15\",\"n\":3,"),
              "%s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s --degrade blurry 2>&1", common);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 2 && strstr(out, "unknown damage 'blurry'"), "%s",
              out ? out : "");
    free(out);
    /* abstention: with heads.gender_min_prob 1 no gender is sure enough; the
     * probabilities stay, ethnicity is answered */
    snprintf(cmd, sizeof cmd,
             "'%s' predict --set models.dir='%s' --set embed.backbone=dlib_resnet.fmm "
             "--set heads.model='%s' --set detect.pad=0.25 --set heads.gender_min_prob=1 "
             "'%s'/25_0_0_*.jpg",
             bin, models, heads, data);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && strstr(out, "\"gender\":null,\"gender_probs\":{\"male\":") &&
                  strstr(out, "\"race\":\""),
              "%s", out ? out : "");
    free(out);
    /* fine-tuning from the command line: two faces, two epochs of the last block,
     * a checkpoint; the backbone and heads it writes label a photo together, carry
     * their lineage, and a rerun of the same command resumes from the checkpoint */
    char ft[8192];
    snprintf(ft, sizeof ft,
             "'%s' train --set models.dir='%s' --set embed.backbone=dlib_resnet.fmm "
             "--train '%s' --val '%s' -o '%s/ft.fmm' --heads '%s/ft_heads.fmm' "
             "--checkpoint '%s/ft.ckpt' --batch 2 --epochs 2 --from conv256_down_out "
             "--threads 1 --jobs 2",
             bin, models, data, data, dir, dir, dir);
    for (int round = 0; round < 2; round++) {
        snprintf(cmd, sizeof cmd, "%s 2>&1", ft);
        out = run(cmd, &status);
        CHECK_MSG(out && status == 0 && strstr(out, "wrote") &&
                      strstr(out, round ? "resuming from" : "epoch 2/2 done"),
                  "round %d: %s", round, out ? out : "(no output)");
        free(out);
    }
    /* other detector settings find other faces: the checkpoint is not resumed */
    snprintf(cmd, sizeof cmd, "%s --set detect.pad=0.3 2>&1", ft);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && strstr(out, "other options") &&
                  !strstr(out, "resuming from") && strstr(out, "epoch 2/2 done"),
              "%s", out ? out : "(no output)");
    free(out);
    expect_labels("ft");
    snprintf(cmd, sizeof cmd, "'%s' model get '%s/ft.fmm' general.base", bin, dir);
    out = run(cmd, &status);
    CHECK(out && status == 0 && strncmp(out, identity, strlen(identity)) == 0);
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' model get '%s/ft_heads.fmm' heads.backbone", bin, dir);
    out = run(cmd, &status);
    CHECK(out && status == 0 && strstr(out, "dlib_resnet trained:facemill sha256:") == out);
    free(out);
    /* loss weights and label smoothing: a value out of range is a usage error naming
     * the option; the same command with other values is another run, not a resume of
     * the first */
    snprintf(cmd, sizeof cmd, "%s --gender-weight 0 2>&1", ft);
    expect_run(cmd, 2, "--gender-weight '0': expected a number from 0.01 to 100");
    snprintf(cmd, sizeof cmd, "%s --label-smoothing 0.6 2>&1", ft);
    expect_run(cmd, 2, "--label-smoothing '0.6': expected a number from 0 to 0.5");
    snprintf(cmd, sizeof cmd, "%s --lr-decay 1.5 2>&1", ft);
    expect_run(cmd, 2, "--lr-decay '1.5': expected a number from 0.01 to 1");
    snprintf(cmd, sizeof cmd,
             "%s --gender-weight 2 --ethnicity-weight 1.5 --label-smoothing 0.1 2>&1", ft);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && strstr(out, "other options") &&
                  !strstr(out, "resuming from") && strstr(out, "epoch 2/2 done") &&
                  strstr(out, "held-out faces: gender temperature "),
              "%s", out ? out : "(no output)");
    free(out);
    /* the heads are calibrated on the held-out faces: two temperatures, recorded */
    snprintf(cmd, sizeof cmd, "'%s' model get '%s/ft_heads.fmm' heads.train.temperature", bin,
             dir);
    out = run(cmd, &status);
    {
        double tg = 0, tr = 0;
        CHECK_MSG(out && status == 0 && sscanf(out, "%lf %lf", &tg, &tr) == 2 && tg >= 0.05 &&
                      tg <= 20 && tr >= 0.05 && tr <= 20,
                  "%s", out ? out : "(no output)");
    }
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' model get '%s/ft.fmm' train.command", bin, dir);
    out = run(cmd, &status);
    CHECK(out && status == 0 &&
          strstr(out, "--gender-weight 2 --ethnicity-weight 1.5 --label-smoothing 0.1"));
    free(out);
    /* fine-tuning a fine-tuned backbone: its lineage moves one level down (base.*),
     * the new file names it as its base, and the chain still reaches the npm file */
    char ft_identity[1024] = "";
    snprintf(cmd, sizeof cmd, "'%s' model get '%s/ft_heads.fmm' heads.backbone", bin, dir);
    out = run(cmd, &status);
    CHECK(out && status == 0 && strstr(out, "dlib_resnet trained:facemill sha256:") == out);
    if (out) {
        snprintf(ft_identity, sizeof ft_identity, "%s", out);
        ft_identity[strcspn(ft_identity, "\n")] = '\0';
    }
    free(out);
    snprintf(cmd, sizeof cmd,
             "'%s' train --set models.dir='%s' --set embed.backbone='%s/ft.fmm' "
             "--train '%s' --val '%s' -o '%s/ft_again.fmm' --heads '%s/ft_again_heads.fmm' "
             "--batch 2 --epochs 2 --from conv256_down_out --threads 1 --jobs 2 2>&1",
             bin, models, dir, data, data, dir, dir);
    out = run(cmd, &status);
    CHECK_MSG(out && status == 0 && strstr(out, "wrote"), "%s", out ? out : "(no output)");
    free(out);
    const struct {
        const char *key, *want;
        int exact;
    } chain[] = {{"general.base", ft_identity, 1},
                 {"base.general.base", identity, 1},
                 {"base.train.command", "--gender-weight 2 --ethnicity-weight 1.5", 0},
                 {"train.command", "ft_again.fmm", 0}};
    for (size_t i = 0; i < sizeof chain / sizeof chain[0]; i++) {
        snprintf(cmd, sizeof cmd, "'%s' model get '%s/ft_again.fmm' %s", bin, dir,
                 chain[i].key);
        out = run(cmd, &status);
        int ok = out && status == 0 &&
                 (chain[i].exact ? strncmp(out, chain[i].want, strlen(chain[i].want)) == 0 &&
                                       out[strlen(chain[i].want)] == '\n'
                                 : strstr(out, chain[i].want) != NULL);
        CHECK_MSG(ok, "%s: %s", chain[i].key, out ? out : "(no output)");
        free(out);
    }
    expect_labels("ft_again");
    /* --align-zoom: out of range is a usage error; in range, the trained file carries
     * the scaled template the pipeline then aligns with */
    snprintf(cmd, sizeof cmd, "%s --align-zoom 2 2>&1", ft);
    expect_run(cmd, 2, "--align-zoom '2': expected a number from 0.5 to 1.5");
    snprintf(cmd, sizeof cmd, "%s --align-zoom 0.9 2>&1", ft);
    expect_run(cmd, 0, "wrote");
    double got[10] = {0}, base_t[10] = {0};
    int n_got = 0, n_base = 0;
    for (int which = 0; which < 2; which++) {
        if (which)
            snprintf(cmd, sizeof cmd, "'%s' model get '%s/ft.fmm' align.template", bin, dir);
        else
            snprintf(cmd, sizeof cmd, "'%s' model get '%s/dlib_resnet.fmm' align.template",
                     bin, models);
        out = run(cmd, &status);
        int *cnt = which ? &n_got : &n_base;
        double *dst = which ? got : base_t;
        for (char *p = out, *e; p && *cnt < 10; p = e) {
            double v = strtod(p, &e);
            if (e == p)
                break;
            dst[(*cnt)++] = v;
        }
        free(out);
    }
    double worst = 0;
    for (int i = 0; i < 10; i++)
        worst = fmax(worst, fabs(got[i] - (74.5 + 0.9 * (base_t[i] - 74.5))));
    CHECK_MSG(n_got == 10 && n_base == 10 && worst < 1e-4, "%d/%d values, worst %.3g px", n_got,
              n_base, worst);
    expect_labels("ft");

    CHECK(fm_test_remove_tree(dir) == 0);
    return fm_test_done("test_label_cli");
}
