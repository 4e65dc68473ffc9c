/* test_backbone_f16.c - what rounding the dlib ResNet's weights to f16 does to its
 * output: the backbone expanded from a compact file against the original, on every
 * face of the sample photos, through the production pipeline with the committed
 * heads.
 *
 * Why it exists: trained weights are committed as f16 and expanded to f32 on each
 * machine, so the network that labels faces is the f16-rounded one. This measures
 * (and bounds) the difference that makes: cosine of the 128-d descriptors and of the
 * 256-d pooled features the heads read, the descriptor distance against dlib's
 * same-person threshold of 0.6, and the change in age, gender and ethnicity.
 * It also checks that the compact file itself is refused by the backbone with the
 * message that says to expand it, and that the expanded file keeps the identity the
 * heads are paired with. Needs models/fetch (skips without models/cache) and the
 * facemill program (FACEMILL_BIN_DIR) for `model compact` / `model expand`.
 */
#include "fm_test.h"

#include "facemill/backbone.h"
#include "facemill/config.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_IMAGES 6

/* Bounds, each about 10-40x what f16 rounding gives on the sample photos (printed on
 * every run): 1 - cosine of the descriptors 3.1e-7 and of the pooled features 5.9e-8;
 * descriptor distance 0.0011 (it grows as the square root of 1 - cosine: 9x here is
 * implied by the cosine bound); age 0.047 years; probabilities 0.0018. Weights rounded
 * to 8 fraction bits instead of f16's 10 (4x the rounding error) fail the descriptor
 * cosine. Both pipelines run on this machine's kernels, so kernel differences barely
 * move these figures. */
#define MAX_COS_DEFICIT_EMBEDDING 5e-6
#define MAX_COS_DEFICIT_POOLED 2e-6
#define MAX_DISTANCE 0.01
#define MAX_AGE_CHANGE 0.5
#define MAX_PROB_CHANGE 0.02

static char tmpdir[512];

static double cosine(const float *a, const float *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int k = 0; k < n; k++) {
        ab += (double)a[k] * b[k];
        aa += (double)a[k] * a[k];
        bb += (double)b[k] * b[k];
    }
    return ab / sqrt(aa * bb);
}

static double distance(const float *a, const float *b, int n)
{
    double s = 0;
    for (int k = 0; k < n; k++)
        s += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
    return sqrt(s);
}

static fm_pipeline *open_pipeline(const char *models, const char *backbone,
                                  const char *heads)
{
    fm_config c;
    fm_config_defaults(&c);
    snprintf(c.models.dir, sizeof c.models.dir, "%s", models);
    snprintf(c.embed.backbone, sizeof c.embed.backbone, "%s", backbone);
    snprintf(c.heads.model, sizeof c.heads.model, "%s", heads);
    fm_pipeline_opts po = {N_IMAGES, 0, 1};
    fm_pipeline *p = NULL;
    fm_error err = {0};
    fm_status st = fm_pipeline_open(&p, &c, &po, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    return p;
}

int main(void)
{
    char models[600], dlib[700], heads[700], cli[700], sample[N_IMAGES][700];
    fm_test_source_path(models, sizeof models, "models/cache");
    snprintf(dlib, sizeof dlib, "%s/dlib_resnet.fmm", models);
    fm_test_source_path(heads, sizeof heads, "models/heads_dlib.fmm");
    fm_test_bin_path(cli, sizeof cli, "facemill");
    for (int i = 0; i < N_IMAGES; i++)
        snprintf(sample[i], sizeof sample[i], "%s/samples/sample%d.jpg", models, i + 1);
    if (access(dlib, R_OK) != 0 || access(sample[N_IMAGES - 1], R_OK) != 0 ||
        access(heads, R_OK) != 0 || access(cli, X_OK) != 0)
        return fm_test_skip("test_backbone_f16",
                            "needs %s, the samples, %s and %s (models/fetch, build)", dlib,
                            heads, cli);
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "backbone_f16") != 0)
        return 1;
    fm_error err = {0};
    fm_nn_set_threads(1, &err);
    char compact[700], expanded[700];
    snprintf(compact, sizeof compact, "%s/dlib_resnet.f16.fmm", tmpdir);
    snprintf(expanded, sizeof expanded, "%s/dlib_resnet.fmm", tmpdir);
    char *do_compact[] = {cli, "model", "compact", dlib, compact, NULL};
    char *do_expand[] = {cli, "model", "expand", compact, expanded, NULL};
    int rc = fm_test_run(do_compact, 1);
    CHECK_MSG(rc == 0, "facemill model compact exited %d", rc);
    rc = fm_test_run(do_expand, 1);
    CHECK_MSG(rc == 0, "facemill model expand exited %d", rc);

    /* The compact file is refused with the way out in the message. */
    fm_backbone *b = NULL;
    CHECK(fm_backbone_open(&b, compact, 1, &err) == FM_ERR_FORMAT && b == NULL);
    CHECK_MSG(strstr(err.msg, "is f16: expand the file first (facemill model expand ") !=
                  NULL, "%s", err.msg);
    fprintf(stderr, "compact file refused: %s\n", err.msg);

    fm_pipeline *pa = open_pipeline(models, "dlib_resnet.fmm", heads);
    fm_pipeline *pb = open_pipeline(models, expanded, heads);
    if (!pa || !pb)
        goto done;
    CHECK(strcmp(fm_pipeline_backbone_identity(pa), fm_pipeline_backbone_identity(pb)) == 0);

    fm_pipeline_input in[N_IMAGES];
    memset(in, 0, sizeof in);
    for (int i = 0; i < N_IMAGES; i++)
        in[i].path = sample[i];
    fm_image_result ra[N_IMAGES], rb[N_IMAGES];
    CHECK_MSG(fm_pipeline_run(pa, in, N_IMAGES, ra, &err) == FM_OK, "%s", err.msg);
    CHECK_MSG(fm_pipeline_run(pb, in, N_IMAGES, rb, &err) == FM_OK, "%s", err.msg);

    const fm_backbone *bb = fm_pipeline_backbone(pa);
    const int de = fm_backbone_dim(bb, FM_BACKBONE_EMBEDDING),
              dp = fm_backbone_dim(bb, FM_BACKBONE_POOLED);
    int faces = 0, attr_faces = 0, gender_flips = 0, race_flips = 0, bad_flips = 0;
    double min_cos_e = 1, min_cos_p = 1, sum_cos_e = 0, max_dist = 0, max_age = 0,
           max_prob = 0, min_margin_g = 1, min_margin_r = 1;
    for (int i = 0; i < N_IMAGES; i++) {
        CHECK(ra[i].error.code == FM_OK && rb[i].error.code == FM_OK);
        CHECK(ra[i].n_faces == rb[i].n_faces); /* detection does not use the backbone */
        for (int j = 0; j < ra[i].n_faces && j < rb[i].n_faces; j++) {
            const fm_face_result *fa = &ra[i].faces[j], *fb = &rb[i].faces[j];
            for (int v = 0; v < 2; v++) { /* the face and its mirror image */
                const float *ea = fa->features[FM_BACKBONE_EMBEDDING][v],
                            *eb = fb->features[FM_BACKBONE_EMBEDDING][v],
                            *qa = fa->features[FM_BACKBONE_POOLED][v],
                            *qb = fb->features[FM_BACKBONE_POOLED][v];
                CHECK(ea && eb && qa && qb);
                if (!ea || !eb || !qa || !qb)
                    continue;
                double ce = cosine(ea, eb, de), cp = cosine(qa, qb, dp),
                       d = distance(ea, eb, de);
                min_cos_e = fmin(min_cos_e, ce);
                min_cos_p = fmin(min_cos_p, cp);
                max_dist = fmax(max_dist, d);
                sum_cos_e += ce;
                faces++;
            }
            CHECK(fa->has_attrs && fb->has_attrs);
            if (fa->has_attrs && fb->has_attrs) {
                const fm_attrs *aa = &fa->attrs, *ab = &fb->attrs;
                attr_faces++;
                max_age = fmax(max_age, fabs(aa->age - ab->age));
                for (int k = 0; k < 2; k++)
                    max_prob = fmax(max_prob, fabs(aa->gender_probs[k] - ab->gender_probs[k]));
                for (int k = 0; k < 5; k++)
                    max_prob = fmax(max_prob, fabs(aa->race_probs[k] - ab->race_probs[k]));
                /* The original's margin between its choice and the runner-up. */
                double mg = fabs((double)aa->gender_probs[0] - aa->gender_probs[1]);
                double second = 0;
                for (int k = 0; k < 5; k++)
                    if (k != aa->race)
                        second = fmax(second, aa->race_probs[k]);
                double mr = aa->race_probs[aa->race] - second;
                min_margin_g = fmin(min_margin_g, mg);
                min_margin_r = fmin(min_margin_r, mr);
                /* A decision flips only when two probabilities cross, each moving at
                 * most MAX_PROB_CHANGE: a flip is a failure unless the original was
                 * within 2 * MAX_PROB_CHANGE of a tie (one sample face is, for
                 * ethnicity: margin 0.019). */
                if (aa->gender != ab->gender) {
                    gender_flips++;
                    bad_flips += mg >= 2 * MAX_PROB_CHANGE;
                    fprintf(stderr, "  photo %d face %d: gender %d -> %d (margin %.4f)\n",
                            i + 1, j, aa->gender, ab->gender, mg);
                }
                if (aa->race != ab->race) {
                    race_flips++;
                    bad_flips += mr >= 2 * MAX_PROB_CHANGE;
                    fprintf(stderr, "  photo %d face %d: ethnicity %d -> %d (margin %.4f)\n",
                            i + 1, j, aa->race, ab->race, mr);
                }
            }
        }
    }
    fprintf(stderr,
            "f16-rounded vs original dlib ResNet, %d face views (faces and mirror images) "
            "in %d photos (bound in brackets):\n"
            "  embedding cosine  min %.9f, mean %.9f; 1 - min %.2e (%g); largest "
            "distance %.5f (%g; same person below 0.6)\n"
            "  pooled cosine     min %.9f; 1 - min %.2e (%g)\n"
            "  heads, %d faces   largest age change %.4f years (%g), largest probability "
            "change %.5f (%g)\n"
            "                    %d gender and %d ethnicity decisions changed (none "
            "allowed unless within %g of a tie; smallest margins: gender %.4f, ethnicity "
            "%.4f)\n",
            faces, N_IMAGES, min_cos_e, faces ? sum_cos_e / faces : 0, 1 - min_cos_e,
            MAX_COS_DEFICIT_EMBEDDING, max_dist, MAX_DISTANCE, min_cos_p, 1 - min_cos_p,
            MAX_COS_DEFICIT_POOLED, attr_faces, max_age, MAX_AGE_CHANGE, max_prob,
            MAX_PROB_CHANGE, gender_flips, race_flips, 2 * MAX_PROB_CHANGE, min_margin_g,
            min_margin_r);
    CHECK(faces >= 20 && attr_faces * 2 == faces);
    CHECK_MSG(1 - min_cos_e <= MAX_COS_DEFICIT_EMBEDDING, "embedding cosine %.9f",
              min_cos_e);
    CHECK_MSG(1 - min_cos_p <= MAX_COS_DEFICIT_POOLED, "pooled cosine %.9f", min_cos_p);
    CHECK_MSG(max_dist < MAX_DISTANCE, "descriptor moved by %.5f", max_dist);
    CHECK_MSG(max_age < MAX_AGE_CHANGE, "age moved by %.4f", max_age);
    CHECK_MSG(max_prob < MAX_PROB_CHANGE, "a probability moved by %.5f", max_prob);
    CHECK_MSG(bad_flips == 0, "%d gender or ethnicity decisions changed away from a tie",
              bad_flips);
done:
    fm_pipeline_close(&pa);
    fm_pipeline_close(&pb);
    fm_test_remove_tree(tmpdir);
    return fm_test_done("test_backbone_f16");
}
