/* test_detect.c - the detector's box arithmetic against hand-computed answers, its
 * error paths, and a few whole-detector properties.
 *
 *  - overlap (union and min), the stable score sort, greedy NMS with its tie rules,
 *    regression, squaring, pyramid scales, P-Net map sizes, the bounded best-
 *    candidates buffer: expected values worked out by hand in the comments;
 *  - fm_detector_open on a missing directory, a corrupt file, a file of the wrong
 *    architecture and a P-Net file without one tensor (made with the model writer),
 *    and with bad options: each a clear error naming the problem;
 *  - with the real models (models/cache, made by models/fetch): a blank image has no
 *    faces, odd image shapes all run within the arena measured at open, tiny
 *    candidate caps degrade gracefully, detection allocates nothing from the heap
 *    once warm, opts.pad equals padding the pixels (to float rounding: 3e-5 px
 *    at worst, bound 1e-3), and the second look (opts.retry) runs only after a pass
 *    that found nothing and then gives exactly one pass at its thresholds. Without the models the test exits 77 (skipped) once
 *    everything else has passed.
 * The agreement with the numpy reference is tests/test_mtcnn_ref.py's job.
 */
#include "facemill/detect.h"
#include "facemill/nn.h"
#include "facemill/image.h"
#include "facemill/model.h"
#include "fm_test.h"
#include "detect-impl.h"

#include <malloc.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static fm_mtcnn_cand cand(double x1, double y1, double x2, double y2, float score)
{
    fm_mtcnn_cand c;
    memset(&c, 0, sizeof c);
    c.box[0] = x1;
    c.box[1] = y1;
    c.box[2] = x2;
    c.box[3] = y2;
    c.score = score;
    return c;
}

static void test_overlap(void)
{
    const double a[4] = {0, 0, 10, 10}, b[4] = {5, 5, 15, 15};
    /* inter 5 x 5 = 25, union 100 + 100 - 25 = 175 */
    CHECK(fabs(fm_mtcnn_overlap(a, b, FM_MTCNN_NMS_UNION) - 25.0 / 175.0) < 1e-15);
    /* min: 25 / 100 */
    CHECK(fm_mtcnn_overlap(a, b, FM_MTCNN_NMS_MIN) == 0.25);
    const double c[4] = {10, 0, 20, 10}; /* touches a along x = 10: no overlap */
    CHECK(fm_mtcnn_overlap(a, c, FM_MTCNN_NMS_UNION) == 0.0);
    const double d[4] = {30, 30, 40, 40};
    CHECK(fm_mtcnn_overlap(a, d, FM_MTCNN_NMS_MIN) == 0.0);
    const double z[4] = {3, 3, 3, 3}; /* zero area: min denominator 0 -> 0 */
    CHECK(fm_mtcnn_overlap(a, z, FM_MTCNN_NMS_MIN) == 0.0);
    CHECK(fm_mtcnn_overlap(z, z, FM_MTCNN_NMS_UNION) == 0.0);
    const double e[4] = {2, 2, 4, 4}; /* inside a: union 4/100, min 4/4 */
    CHECK(fm_mtcnn_overlap(a, e, FM_MTCNN_NMS_UNION) == 0.04);
    CHECK(fm_mtcnn_overlap(e, a, FM_MTCNN_NMS_MIN) == 1.0);
}

static void test_sort(void)
{
    fm_mtcnn_cand c[5] = {cand(0, 0, 1, 1, 0.5f), cand(0, 0, 1, 1, 0.9f),
                          cand(0, 0, 1, 1, 0.5f), cand(0, 0, 1, 1, 0.9f),
                          cand(0, 0, 1, 1, 0.1f)};
    int order[5], tmp[5];
    fm_mtcnn_sort_by_score(c, 5, order, tmp);
    const int want[5] = {1, 3, 0, 2, 4}; /* ties keep index order */
    CHECK(memcmp(order, want, sizeof want) == 0);
    /* A longer run exercises every merge width: 37 equal scores stay in order. */
    fm_mtcnn_cand many[37];
    int o2[37], t2[37];
    for (int i = 0; i < 37; i++)
        many[i] = cand(0, 0, 1, 1, i % 3 == 0 ? 0.75f : 0.25f);
    fm_mtcnn_sort_by_score(many, 37, o2, t2);
    int ok = 1;
    for (int i = 0; i < 13; i++) /* 0, 3, ..., 36 first */
        ok &= o2[i] == 3 * i;
    for (int i = 13, prev = -1; i < 37; i++) {
        ok &= o2[i] % 3 != 0 && o2[i] > prev;
        prev = o2[i];
    }
    CHECK(ok);
}

static void test_nms(void)
{
    int keep[8], order[8], tmp[8];
    unsigned char flag[8];
    /* A; B = A shifted by 1 (IoU 81 / 119 = 0.68); C far away; D identical to A and
     * of equal score but later (suppressed by A: ties go by index). */
    fm_mtcnn_cand c[4] = {cand(0, 0, 10, 10, 0.9f), cand(1, 1, 11, 11, 0.8f),
                          cand(20, 20, 30, 30, 0.85f), cand(0, 0, 10, 10, 0.9f)};
    int n = fm_mtcnn_nms(c, 4, 0.5, FM_MTCNN_NMS_UNION, keep, order, tmp, flag);
    CHECK(n == 2 && keep[0] == 0 && keep[1] == 2);
    n = fm_mtcnn_nms(c, 4, 0.7, FM_MTCNN_NMS_UNION, keep, order, tmp, flag);
    CHECK(n == 3 && keep[0] == 0 && keep[1] == 2 && keep[2] == 1); /* 0.68 <= 0.7 */
    /* keep may alias order. */
    n = fm_mtcnn_nms(c, 4, 0.7, FM_MTCNN_NMS_UNION, order, order, tmp, flag);
    CHECK(n == 3 && order[0] == 0 && order[1] == 2 && order[2] == 1);
    /* Exactly 0.5 is not > 0.5: inter 2, union 3 + 3 - 2 = 4. */
    fm_mtcnn_cand h[2] = {cand(0, 0, 3, 1, 0.9f), cand(1, 0, 4, 1, 0.8f)};
    n = fm_mtcnn_nms(h, 2, 0.5, FM_MTCNN_NMS_UNION, keep, order, tmp, flag);
    CHECK(n == 2);
    /* Min mode: a small box inside a big one overlaps it by 1; the higher score wins. */
    fm_mtcnn_cand m[2] = {cand(0, 0, 10, 10, 0.9f), cand(2, 2, 4, 4, 0.95f)};
    n = fm_mtcnn_nms(m, 2, 0.7, FM_MTCNN_NMS_MIN, keep, order, tmp, flag);
    CHECK(n == 1 && keep[0] == 1);
    n = fm_mtcnn_nms(m, 2, 0.7, FM_MTCNN_NMS_UNION, keep, order, tmp, flag); /* 0.04 */
    CHECK(n == 2 && keep[0] == 1 && keep[1] == 0);
    /* Suppression only by kept boxes: A > B > C in score, A-B and B-C overlap (0.68),
     * A-C do not (IoU 64 / 136 = 0.47 with C shifted by 2). B goes, so C stays. */
    fm_mtcnn_cand k[3] = {cand(0, 0, 10, 10, 0.9f), cand(1, 1, 11, 11, 0.8f),
                          cand(2, 2, 12, 12, 0.7f)};
    n = fm_mtcnn_nms(k, 3, 0.5, FM_MTCNN_NMS_UNION, keep, order, tmp, flag);
    CHECK(n == 2 && keep[0] == 0 && keep[1] == 2);
    CHECK(fm_mtcnn_nms(k, 0, 0.5, FM_MTCNN_NMS_UNION, keep, order, tmp, flag) == 0);
}

static void test_regress_square(void)
{
    double b[4] = {10, 20, 30, 60}; /* w 20, h 40 */
    const float reg[4] = {0.1f, -0.25f, 0.5f, 0.0f};
    fm_mtcnn_regress(b, reg);
    /* 10 + 0.1*20 (0.1f is not 0.1: compare loosely), 20 - 10, 30 + 10, 60 */
    CHECK(fabs(b[0] - 12) < 1e-6 && b[1] == 10 && b[2] == 40 && b[3] == 60);
    double s[4] = {12, 10, 40, 60}; /* w 28, h 50 -> side 50 about (26, 35) */
    CHECK(fm_mtcnn_square(s) == 1);
    CHECK(s[0] == 1 && s[1] == 10 && s[2] == 51 && s[3] == 60);
    double t[4] = {0, 0, 30, 10}; /* wide: side 30 about (15, 5) */
    CHECK(fm_mtcnn_square(t) == 1 && t[0] == 0 && t[1] == -10 && t[2] == 30 && t[3] == 20);
    double z[4] = {5, 5, 5, 5}; /* side 0: dropped */
    CHECK(fm_mtcnn_square(z) == 0);
    double neg[4] = {10, 10, 0, 0}; /* inverted: side -10, dropped */
    CHECK(fm_mtcnn_square(neg) == 0);
    double inf[4] = {0, 0, INFINITY, 10};
    CHECK(fm_mtcnn_square(inf) == 0);
    double nan_[4] = {0, 0, 10, NAN};
    CHECK(fm_mtcnn_square(nan_) == 0);
}

static void test_scales(void)
{
    double s[8];
    /* 100x50, min_face 20: 0.6 (short side 30), 0.3 (15), then 0.15 gives 7.5 < 12. */
    CHECK(fm_mtcnn_scales(100, 50, 20, 0.5, 0, s, 8) == 2 && s[0] == 0.6 && s[1] == 0.3);
    /* max_side 40: min(0.6, 40 / 100) = 0.4 (20), then 0.2 (10 < 12). */
    CHECK(fm_mtcnn_scales(100, 50, 20, 0.5, 40, s, 8) == 1 && s[0] == 0.4);
    /* Repeated multiplication, no pow: 0.709 twice. */
    CHECK(fm_mtcnn_scales(1000, 1000, 12, 0.709, 0, s, 8) > 3 && s[2] == 1.0 * 0.709 * 0.709);
    /* Too small for one level; more levels than room: the count is still returned. */
    CHECK(fm_mtcnn_scales(11, 500, 12, 0.709, 0, s, 8) == 0);
    CHECK(fm_mtcnn_scales(4000, 4000, 12, 0.9, 0, s, 2) > 2);
    CHECK(fm_mtcnn_scales(100, 100, 0, 0.5, 0, s, 8) == -1);
    CHECK(fm_mtcnn_scales(100, 100, 20, 1.0, 0, s, 8) == -1);
    /* The first level for a smallest face searched: windows 12 / s of 20, 28.2, 39.9,
     * 56.3: 48 skips the first two (39.9 still finds faces of 48), 39.9 the first
     * two as well (with the margin for rounding), 28 only the first, 20 or 0 none. */
    double w4[4] = {0.6, 0.6 * 0.709, 0.6 * 0.709 * 0.709, 0.6 * 0.709 * 0.709 * 0.709};
    CHECK(fm_mtcnn_first_level(w4, 4, 48) == 2);
    CHECK(fm_mtcnn_first_level(w4, 4, 12 / w4[2]) == 2);
    CHECK(fm_mtcnn_first_level(w4, 4, 12 / w4[2] * (1 - 1e-6)) == 1);
    CHECK(fm_mtcnn_first_level(w4, 4, 28) == 0 + (12 / w4[1] <= 28));
    CHECK(fm_mtcnn_first_level(w4, 4, 20) == 0);
    CHECK(fm_mtcnn_first_level(w4, 4, 0) == 0);
    /* never past the last level, however large the face */
    CHECK(fm_mtcnn_first_level(w4, 4, 1e6) == 3);
    CHECK(fm_mtcnn_first_level(w4, 1, 1e6) == 0);
    /* P-Net map: ceil((h - 2) / 2) - 4. */
    CHECK(fm_mtcnn_pnet_out(11) == 0);
    CHECK(fm_mtcnn_pnet_out(12) == 1);
    CHECK(fm_mtcnn_pnet_out(13) == 2);
    CHECK(fm_mtcnn_pnet_out(14) == 2);
    CHECK(fm_mtcnn_pnet_out(1601) == 796);
}

static void test_topk(void)
{
    fm_mtcnn_cand buf[3];
    fm_mtcnn_topk k;
    fm_mtcnn_topk_init(&k, buf, 3);
    const float scores[6] = {0.5f, 0.9f, 0.5f, 0.7f, 0.5f, 0.95f};
    for (int i = 0; i < 6; i++) {
        fm_mtcnn_cand c = cand(i, 0, i + 1, 1, scores[i]);
        c.seq = i;
        fm_mtcnn_topk_push(&k, &c);
    }
    fm_mtcnn_topk_finish(&k);
    /* The best three are 0.95 (5), 0.9 (1), 0.7 (3); back in arrival order. */
    CHECK(k.n == 3 && k.dropped == 3);
    CHECK(buf[0].seq == 1 && buf[1].seq == 3 && buf[2].seq == 5);
    CHECK(buf[0].box[0] == 1 && buf[2].score == 0.95f);
    /* Equal scores: the later arrivals are dropped first. */
    fm_mtcnn_topk_init(&k, buf, 2);
    for (int i = 0; i < 4; i++) {
        fm_mtcnn_cand c = cand(0, 0, 1, 1, 0.5f);
        c.seq = i;
        fm_mtcnn_topk_push(&k, &c);
    }
    fm_mtcnn_topk_finish(&k);
    CHECK(k.n == 2 && buf[0].seq == 0 && buf[1].seq == 1);
    /* Under capacity nothing moves. */
    fm_mtcnn_topk_init(&k, buf, 3);
    for (int i = 0; i < 2; i++) {
        fm_mtcnn_cand c = cand(0, 0, 1, 1, i ? 0.1f : 0.2f);
        c.seq = 10 + i;
        fm_mtcnn_topk_push(&k, &c);
    }
    fm_mtcnn_topk_finish(&k);
    CHECK(k.n == 2 && k.dropped == 0 && buf[0].seq == 10 && buf[1].seq == 11);
}

/* ---- open errors ----------------------------------------------------------------- */

static char tmpdir[4096];

static void write_file(const char *name, const void *data, size_t n)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        CHECK(fwrite(data, 1, n, f) == n);
        fclose(f);
    }
}

/* A P-Net file with every tensor except conv4_2.bias (random-ish weights). */
static void write_pnet_missing_tensor(void)
{
    static const struct {
        const char *name;
        unsigned ndim;
        uint64_t dims[4];
    } t[] = {
        {"conv1.weight", 4, {10, 3, 3, 3}}, {"conv1.bias", 1, {10}},
        {"prelu1.alpha", 1, {10}},          {"conv2.weight", 4, {16, 10, 3, 3}},
        {"conv2.bias", 1, {16}},            {"prelu2.alpha", 1, {16}},
        {"conv3.weight", 4, {32, 16, 3, 3}}, {"conv3.bias", 1, {32}},
        {"prelu3.alpha", 1, {32}},          {"conv4_1.weight", 4, {2, 32, 1, 1}},
        {"conv4_1.bias", 1, {2}},           {"conv4_2.weight", 4, {4, 32, 1, 1}},
    };
    static float data[32 * 16 * 9];
    for (size_t i = 0; i < sizeof data / sizeof *data; i++)
        data[i] = (float)((i * 7919) % 200) / 1000.0f - 0.1f;
    const double mean[3] = {127.5, 127.5, 127.5}, scale[3] = {0.0078125, 0.0078125, 0.0078125};
    fm_model_writer *w = fm_model_writer_new();
    fm_error err = {0};
    CHECK(w != NULL);
    if (!w)
        return;
    CHECK(fm_model_writer_add_str(w, "general.architecture", "mtcnn.pnet", &err) == FM_OK);
    CHECK(fm_model_writer_add_f64_array(w, "input.mean", mean, 3, &err) == FM_OK);
    CHECK(fm_model_writer_add_f64_array(w, "input.scale", scale, 3, &err) == FM_OK);
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        CHECK(fm_model_writer_add_tensor(w, t[i].name, t[i].ndim, t[i].dims, data, &err) ==
              FM_OK);
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", tmpdir, FM_DETECT_PNET_FILE);
    CHECK(fm_model_writer_save(w, path, &err) == FM_OK);
    fm_model_writer_destroy(&w);
}

/* Copies the file from to tmpdir/name; 0 when from cannot be read. */
static int copy_file(const char *from, const char *name)
{
    size_t n = 0;
    void *buf = fm_test_read_file(from, &n);
    if (!buf)
        return 0;
    write_file(name, buf, n);
    free(buf);
    return 1;
}

static void test_open_errors(const char *models)
{
    fm_detector *d = (fm_detector *)&d; /* must be cleared on failure */
    fm_error err = {0};
    fm_status st = fm_detector_open(&d, "/nonexistent/facemill-models", NULL, &err);
    CHECK(st == FM_ERR_IO && d == NULL);
    CHECK_MSG(strstr(err.msg, "mtcnn_pnet.fmm") && strstr(err.msg, "models/fetch"), "%s",
              err.msg);
    fprintf(stderr, "absent dir: %s\n", err.msg);

    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "detect") != 0) {
        CHECK(!"mkdtemp");
        return;
    }
    /* Corrupt file. */
    write_file(FM_DETECT_PNET_FILE, "this is not a model file, just some bytes........", 50);
    memset(&err, 0, sizeof err);
    st = fm_detector_open(&d, tmpdir, NULL, &err);
    CHECK(st == FM_ERR_FORMAT && d == NULL);
    CHECK_MSG(strstr(err.msg, "mtcnn_pnet.fmm") != NULL, "%s", err.msg);
    fprintf(stderr, "corrupt file: %s\n", err.msg);

    /* A P-Net without conv4_2.bias. */
    write_pnet_missing_tensor();
    memset(&err, 0, sizeof err);
    st = fm_detector_open(&d, tmpdir, NULL, &err);
    CHECK(st == FM_ERR_NOT_FOUND && d == NULL);
    CHECK_MSG(strstr(err.msg, "conv4_2.bias") && strstr(err.msg, "mtcnn_pnet.fmm"), "%s",
              err.msg);
    fprintf(stderr, "missing tensor: %s\n", err.msg);

    if (models) {
        /* The R-Net file where the P-Net should be. */
        char from[4200];
        snprintf(from, sizeof from, "%s/%s", models, FM_DETECT_RNET_FILE);
        CHECK(copy_file(from, FM_DETECT_PNET_FILE));
        memset(&err, 0, sizeof err);
        st = fm_detector_open(&d, tmpdir, NULL, &err);
        CHECK(st == FM_ERR_FORMAT && d == NULL);
        CHECK_MSG(strstr(err.msg, "'mtcnn.rnet', expected 'mtcnn.pnet'") != NULL, "%s",
                  err.msg);
        fprintf(stderr, "wrong architecture: %s\n", err.msg);
        /* P-Net right, R-Net absent. */
        snprintf(from, sizeof from, "%s/%s", models, FM_DETECT_PNET_FILE);
        CHECK(copy_file(from, FM_DETECT_PNET_FILE));
        memset(&err, 0, sizeof err);
        st = fm_detector_open(&d, tmpdir, NULL, &err);
        CHECK(st == FM_ERR_IO && d == NULL && strstr(err.msg, "mtcnn_rnet.fmm"));
    }
    fm_test_remove_tree(tmpdir);

    /* Options are checked before any file is opened. */
    fm_detect_opts o;
    fm_detect_opts_defaults(&o);
    o.max_side = 5;
    memset(&err, 0, sizeof err);
    CHECK(fm_detector_open(&d, "/nonexistent", &o, &err) == FM_ERR_INVALID &&
          strstr(err.msg, "max_side"));
    fm_detect_opts_defaults(&o);
    o.scale_factor = 1.0;
    CHECK(fm_detector_open(&d, "/nonexistent", &o, &err) == FM_ERR_INVALID &&
          strstr(err.msg, "scale_factor"));
    fm_detect_opts_defaults(&o);
    o.onet_threshold = 1.5;
    CHECK(fm_detector_open(&d, "/nonexistent", &o, &err) == FM_ERR_INVALID &&
          strstr(err.msg, "onet_threshold"));
    fm_detect_opts_defaults(&o);
    o.min_face = 0;
    CHECK(fm_detector_open(&d, "/nonexistent", &o, &err) == FM_ERR_INVALID);
    fm_detect_opts_defaults(&o);
    o.min_face_frac = 0.6;
    CHECK(fm_detector_open(&d, "/nonexistent", &o, &err) == FM_ERR_INVALID &&
          strstr(err.msg, "min_face_frac"));
    o.min_face_frac = -0.1;
    CHECK(fm_detector_open(&d, "/nonexistent", &o, &err) == FM_ERR_INVALID);
    fm_detect_opts_defaults(&o);
    o.max_candidates = -1;
    CHECK(fm_detector_open(&d, "/nonexistent", &o, &err) == FM_ERR_INVALID);
    CHECK(fm_detector_open(NULL, "/nonexistent", NULL, &err) == FM_ERR_INVALID);
    CHECK(fm_detector_open(&d, NULL, NULL, &err) == FM_ERR_INVALID && d == NULL);
    fm_detector_close(NULL);
    fm_detector_close(&d);
}

/* The crop and pyramid sampling's vector paths (AVX2 gathers, masked where a row
 * reaches into the border or past the picture) against the portable loops, bit for
 * bit, on every instruction set the CPU has: random boxes inside, across and outside
 * a picture with a border, both crop sizes, pyramid levels of the padded picture at
 * five scales (the smallest steps over more than seven pixels), images whose stride
 * leaves no byte after the last row's pixels and images whose stride does, a wide
 * one; and the values in the border (FM_DETECT_PAD_VALUE) and past it (zero),
 * normalised. */
static void test_crop_sampling(void)
{
    fm_test_rng rng = FM_TEST_RNG(0x5eed5eedull);
    const float mean[3] = {127.5f, 120.0f, 100.0f}, scale[3] = {0.0078125f, 0.01f, 0.02f};
    const fm_nn_isa best = fm_nn_isa_best();
    static const int dims[][3] = {{61, 47, 0}, {40, 40, 1}, {9, 13, 0}, {100, 3, 5},
                                  {403, 31, 0}};
    int crops = 0, levels = 0, differ = 0;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const int w = dims[d][0], h = dims[d][1], extra = dims[d][2];
        fm_image img;
        memset(&img, 0, sizeof img);
        img.w = img.orig_w = w;
        img.h = img.orig_h = h;
        img.stride = (size_t)w * 3 + (size_t)extra;
        uint8_t *px = malloc(img.stride * (size_t)h);
        for (size_t i = 0; i < img.stride * (size_t)h; i++)
            px[i] = (uint8_t)fm_test_rng_int(&rng, 256);
        img.data = px;
        img.scale_num = img.scale_denom = img.orientation = 1;
        const int pad = d == 2 ? 0 : 2 + (int)d * 5;
        for (int k = 0; k < 60; k++) {
            const double side = fm_test_rng_range(&rng, 3.0, 1.5 * (w > h ? w : h) + 20);
            const double x1 = fm_test_rng_range(&rng, -side - 10, w + 2 * pad + 10);
            const double y1 = fm_test_rng_range(&rng, -side - 10, h + 2 * pad + 10);
            const double box[4] = {x1, y1, x1 + side, y1 + side * fm_test_rng_range(&rng, 0.8, 1.2)};
            for (int size = 24; size <= 48; size += 24) {
                float a[3 * 48 * 48], b[3 * 48 * 48];
                fm_nn_set_isa(FM_NN_ISA_BASE);
                fm_mtcnn_sample_crop(&img, pad, box, size, mean, scale, a);
                for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
                    fm_nn_set_isa((fm_nn_isa)isa);
                    fm_mtcnn_sample_crop(&img, pad, box, size, mean, scale, b);
                    crops++;
                    if (memcmp(a, b, sizeof(float) * 3 * (size_t)size * size) != 0)
                        differ++;
                }
            }
        }
        /* pyramid levels of the padded picture (border columns and rows) */
        for (int lv = 0; lv < 5; lv++) {
            const double sc = lv == 4 ? 0.13 : 0.25 + 0.3 * lv;
            const size_t n = 3 * (size_t)ceil((w + 2.0 * pad) * sc) * (size_t)ceil((h + 2.0 * pad) * sc);
            float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
            fm_nn_set_isa(FM_NN_ISA_BASE);
            CHECK(fm_mtcnn_sample_level(&img, pad, sc, mean, scale, a) > 0);
            for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
                fm_nn_set_isa((fm_nn_isa)isa);
                CHECK(fm_mtcnn_sample_level(&img, pad, sc, mean, scale, b) > 0);
                levels++;
                if (memcmp(a, b, n * sizeof *a) != 0)
                    differ++;
            }
            free(a);
            free(b);
        }
        /* a box in the border only, and one past the padded picture */
        if (pad >= 4) {
            float x[3 * 24 * 24];
            const double in_border[4] = {0.5, 0.5, 2.5, 2.5}, outside[4] = {-40, -40, -20, -20};
            fm_mtcnn_sample_crop(&img, pad, in_border, 24, mean, scale, x);
            CHECK(x[0] == (FM_DETECT_PAD_VALUE - mean[0]) * scale[0] &&
                  x[2 * 24 * 24 + 100] == (FM_DETECT_PAD_VALUE - mean[2]) * scale[2]);
            fm_mtcnn_sample_crop(&img, pad, outside, 24, mean, scale, x);
            CHECK(x[5] == (0.0f - mean[0]) * scale[0] && x[24 * 24 + 7] == (0.0f - mean[1]) * scale[1]);
        }
        free(px);
    }
    fm_nn_set_isa(best);
    CHECK_MSG(differ == 0, "sampling: %d of %d crops and levels differ from base's (sets up "
              "to %s)", differ, crops + levels, fm_nn_isa_name(best));
    fprintf(stderr, "sampling: %d crops and %d pyramid levels, base's bits on every set up "
            "to %s\n", crops, levels, fm_nn_isa_name(best));
}

/* ---- with the real models --------------------------------------------------------- */

static fm_image gray_image(uint8_t *px, int w, int h, uint8_t v)
{
    fm_image img;
    memset(&img, 0, sizeof img);
    memset(px, v, (size_t)w * (size_t)h * 3);
    img.w = img.orig_w = w;
    img.h = img.orig_h = h;
    img.stride = (size_t)w * 3;
    img.data = px;
    img.scale_num = img.scale_denom = img.orientation = 1;
    return img;
}

/* Deterministic texture with some large-scale structure (so P-Net sees a variety of
 * scores), no faces intended. */
static void texture(fm_image *img, unsigned seed)
{
    fm_test_rng rng = FM_TEST_RNG(0x9e3779b97f4a7c15ull + seed);
    for (int y = 0; y < img->h; y++)
        for (int x = 0; x < img->w; x++)
            for (int c = 0; c < 3; c++) {
                int v = 128 + (int)(60 * sin(x * 0.05 + c) * cos(y * 0.07)) +
                        fm_test_rng_int(&rng, 40) - 20;
                img->data[(size_t)y * img->stride + 3 * (size_t)x + c] =
                    (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
}

/* Odd shapes (widest level, thin strips, single-level images, images below one
 * window): each must run within the arena measured at open. */
static void run_shapes(fm_detector *d, uint8_t *px, const char *label)
{
    static const int shapes[][2] = {{1, 1},       {11, 400},    {12, 12},   {13, 1700},
                                    {1700, 13},   {1700, 1700}, {1601, 31}, {37, 1699},
                                    {333, 777},   {1024, 1},    {200, 200}, {1700, 1200}};
    fm_face faces[64];
    fm_detect_times t;
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        fm_image img = gray_image(px, shapes[i][0], shapes[i][1], 0);
        texture(&img, (unsigned)i);
        int n = -1;
        fm_error err = {0};
        fm_status st = fm_detect(d, &img, faces, 64, &n, &t, &err);
        CHECK_MSG(st == FM_OK && n >= 0, "%s, %dx%d: %s", label, shapes[i][0], shapes[i][1],
                  err.msg);
    }
}

static void test_with_models(const char *models)
{
    fm_detector *d = NULL;
    fm_error err = {0};
    fm_status st = fm_detector_open(&d, models, NULL, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    if (st)
        return;
    fprintf(stderr, "detector arena: %zu bytes\n", fm_detector_arena_bytes(d));
    CHECK(fm_detector_arena_bytes(d) > 0);
    CHECK(fm_detector_opts(d)->max_side == 1600 &&
          fm_detector_opts(d)->max_level_candidates == FM_DETECT_DEFAULT_LEVEL_CANDIDATES);

    const int maxw = 1700, maxh = 1700;
    uint8_t *px = malloc((size_t)maxw * maxh * 3);
    CHECK(px != NULL);
    if (!px) {
        fm_detector_close(&d);
        return;
    }
    fm_face faces[64];
    int n = -1;
    fm_detect_times t;

    /* Blank: no faces, all three stage counts small. */
    fm_image img = gray_image(px, 640, 480, 128);
    st = fm_detect(d, &img, faces, 64, &n, &t, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    CHECK(n == 0 && t.onet_boxes == 0 && t.levels == 10 && !t.truncated);
    CHECK(t.levels_skipped == 0); /* 2.5% of 640 is under min_face */

    /* min_face_frac: 2.5% of 1700 is 42.5 pixels, so of min_face's windows 20, 28.2,
     * 39.9 and 56.3 the first two are skipped; the same image DCT-scaled to 1/2 (the
     * sizes in decoded pixels halved) skips the same two, whether or not it gives its
     * original size. */
    double all[FM_DETECT_MAX_LEVELS];
    int full = fm_mtcnn_scales(1700, 1200, 20, 0.709, 1600, all, FM_DETECT_MAX_LEVELS);
    img = gray_image(px, 1700, 1200, 128);
    CHECK(fm_detect(d, &img, faces, 64, &n, &t, &err) == FM_OK);
    CHECK_MSG(t.levels_skipped == 2 && t.levels == full - 2, "1700x1200: %d run, %d skipped",
              t.levels, t.levels_skipped);
    img = gray_image(px, 850, 600, 128);
    img.orig_w = 1700;
    img.orig_h = 1200;
    img.scale_denom = 2;
    full = fm_mtcnn_scales(850, 600, 10, 0.709, 1600, all, FM_DETECT_MAX_LEVELS);
    CHECK(fm_detect(d, &img, faces, 64, &n, &t, &err) == FM_OK);
    CHECK_MSG(t.levels_skipped == 2 && t.levels == full - 2, "1/2 of 1700x1200: %d run, %d "
              "skipped", t.levels, t.levels_skipped);
    img.orig_w = img.orig_h = 0;
    CHECK(fm_detect(d, &img, faces, 64, &n, &t, &err) == FM_OK && t.levels_skipped == 2);

    /* Odd shapes run within the arena measured at open. */
    run_shapes(d, px, "defaults");

    /* Bad arguments. */
    CHECK(fm_detect(d, NULL, faces, 64, &n, &t, &err) == FM_ERR_INVALID && n == 0);
    CHECK(fm_detect(d, &img, NULL, 3, &n, &t, &err) == FM_ERR_INVALID);
    CHECK(fm_detect(d, &img, faces, 64, NULL, &t, &err) == FM_ERR_INVALID);
    fm_image bad = img;
    bad.data = NULL;
    CHECK(fm_detect(d, &bad, faces, 64, &n, &t, &err) == FM_ERR_INVALID);
    bad = img;
    bad.stride = 1;
    CHECK(fm_detect(d, &bad, faces, 64, &n, &t, &err) == FM_ERR_INVALID);
    /* cap 0 with faces NULL and t NULL is allowed. */
    CHECK(fm_detect(d, &img, NULL, 0, &n, NULL, &err) == FM_OK && n == 0);

    /* Warm: nothing from the heap (glibc's counters; sanitizers' allocators report 0,
     * which makes the check vacuous there). */
    img = gray_image(px, 800, 600, 0);
    texture(&img, 99);
    CHECK(fm_detect(d, &img, faces, 64, &n, &t, &err) == FM_OK);
    struct mallinfo2 before = mallinfo2();
    for (int r = 0; r < 3; r++)
        CHECK(fm_detect(d, &img, faces, 64, &n, &t, &err) == FM_OK);
    struct mallinfo2 after = mallinfo2();
    CHECK_MSG(before.uordblks == after.uordblks && before.hblkhd == after.hblkhd,
              "heap in use %zu -> %zu bytes, mmapped %zu -> %zu", before.uordblks,
              after.uordblks, before.hblkhd, after.hblkhd);
    fm_detector_close(&d);
    CHECK(d == NULL);

    /* Levels as wide as max_side allows (min_face 8 asks for 1.5x upsampling, capped
     * by max_side), and the smallest max_side. */
    fm_detect_opts o;
    const int max_sides[2] = {1600, 12};
    for (int k = 0; k < 2; k++) {
        fm_detect_opts_defaults(&o);
        o.min_face = 8;
        o.max_side = max_sides[k];
        st = fm_detector_open(&d, models, &o, &err);
        CHECK_MSG(st == FM_OK, "%s", err.msg);
        if (!st)
            run_shapes(d, px, max_sides[k] == 12 ? "max_side 12" : "min_face 8");
        fm_detector_close(&d);
    }

    /* Tiny caps and every P-Net cell a candidate: buffers overflow, lowest scores are
     * dropped, the result says so, and nothing breaks. */
    fm_detect_opts_defaults(&o);
    o.pnet_threshold = 0;
    o.rnet_threshold = 0;
    o.max_level_candidates = 16;
    o.max_candidates = 8;
    o.max_faces = 2;
    st = fm_detector_open(&d, models, &o, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    if (!st) {
        img = gray_image(px, 300, 200, 0);
        texture(&img, 7);
        st = fm_detect(d, &img, faces, 64, &n, &t, &err);
        CHECK_MSG(st == FM_OK, "%s", err.msg);
        /* (with the second look, the counts are those of both looks) */
        int looks = t.retried ? 2 : 1;
        CHECK(t.truncated == 1 && t.pnet_boxes <= 8 * looks && t.rnet_boxes <= 8 * looks &&
              n <= 2);
        for (int i = 1; i < n; i++)
            CHECK(faces[i - 1].score >= faces[i].score);
        fm_detector_close(&d);
    }
    free(px);
}

/* Parts of the test that could not run (the test then exits 77, not 0). */
static int skipped;

/* The second look (opts.retry): a first pass that cannot find anything (threshold 1:
 * no score is above it) falls back to the retry thresholds and gives exactly what one
 * pass with those thresholds gives, from the same P-Net maps (P-Net runs once);
 * without retry it gives nothing; an image where the first pass finds faces never
 * looks twice. */
static void test_retry(const char *models, const fm_image *img)
{
    fm_error err = {0};
    fm_detect_opts o;
    fm_detect_opts_defaults(&o);
    CHECK(o.retry == 1 && o.retry_pnet_threshold < o.pnet_threshold &&
          o.retry_rnet_threshold < o.rnet_threshold &&
          o.retry_onet_threshold < o.onet_threshold);
    fm_detector *one = NULL, *twice = NULL, *never = NULL;
    o.retry = 0;
    o.pnet_threshold = o.retry_pnet_threshold;
    o.rnet_threshold = o.retry_rnet_threshold;
    o.onet_threshold = o.retry_onet_threshold;
    CHECK(fm_detector_open(&one, models, &o, &err) == FM_OK); /* the retry's pass alone */
    o.pnet_threshold = 1;
    CHECK(fm_detector_open(&never, models, &o, &err) == FM_OK); /* finds nothing */
    o.retry = 1;
    CHECK(fm_detector_open(&twice, models, &o, &err) == FM_OK); /* nothing, then retry */
    if (!one || !never || !twice) {
        fm_detector_close(&one);
        fm_detector_close(&never);
        fm_detector_close(&twice);
        return;
    }
    fm_face a[64], b[64];
    int na = -1, nb = -2, nn = -3;
    fm_detect_times ta, tb, tn;
    CHECK(fm_detect(one, img, a, 64, &na, &ta, &err) == FM_OK);
    CHECK(fm_detect(never, img, b, 64, &nn, &tn, &err) == FM_OK);
    CHECK(nn == 0 && !tn.retried && tn.pnet_boxes == 0);
    CHECK(fm_detect(twice, img, b, 64, &nb, &tb, &err) == FM_OK);
    CHECK_MSG(na >= 2 && nb == na && !ta.retried && tb.retried, "%d and %d faces", na, nb);
    CHECK(memcmp(a, b, (size_t)(na < nb ? na : nb) * sizeof *a) == 0);
    CHECK(tb.pnet_boxes == ta.pnet_boxes && tb.rnet_boxes == ta.rnet_boxes &&
          tb.onet_boxes == ta.onet_boxes && tb.levels == ta.levels);
    /* One P-Net pass serves both looks; R-Net ran on nothing the first time. */
    CHECK(tb.pnet_pixels == ta.pnet_pixels && tb.pnet_flop == ta.pnet_flop &&
          tb.rnet_flop == ta.rnet_flop && tb.onet_flop == ta.onet_flop);
    fm_detector_close(&twice);

    /* Faces at the first pass: one pass, the same answer as without retry. */
    fm_detect_opts_defaults(&o);
    CHECK(fm_detector_open(&twice, models, &o, &err) == FM_OK);
    o.retry = 0;
    fm_detector_close(&never);
    CHECK(fm_detector_open(&never, models, &o, &err) == FM_OK);
    if (twice && never) {
        CHECK(fm_detect(twice, img, a, 64, &na, &ta, &err) == FM_OK);
        CHECK(fm_detect(never, img, b, 64, &nb, &tb, &err) == FM_OK);
        CHECK(na >= 2 && na == nb && !ta.retried && !tb.retried &&
              memcmp(a, b, (size_t)na * sizeof *a) == 0);
    }
    fprintf(stderr, "retry: %d faces at the retry thresholds, the same after a first pass "
            "that found none\n", nb);
    fm_detector_close(&one);
    fm_detector_close(&never);
    fm_detector_close(&twice);

    /* Retry thresholds are checked like the others. */
    fm_detect_opts_defaults(&o);
    o.retry_onet_threshold = -0.1;
    CHECK(fm_detector_open(&one, "/nonexistent", &o, &err) == FM_ERR_INVALID &&
          strstr(err.msg, "retry_onet_threshold"));
    fm_detect_opts_defaults(&o);
    o.retry = 2;
    CHECK(fm_detector_open(&one, "/nonexistent", &o, &err) == FM_ERR_INVALID && !one);
}

/* The sample photo decoded for a long side of about target_side (0: full size) into
 * img, by the returned decoder (the caller destroys it); NULL, counted as skipped, when
 * it cannot be read. */
static fm_decoder *decode_sample(const char *models, int target_side, const char *who,
                                 fm_image *img)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/samples/sample1.jpg", models);
    fm_decode_opts dopt = {0};
    dopt.target_side = target_side;
    fm_decoder *dec = NULL;
    fm_error err = {0};
    if (fm_decoder_new(&dec, &dopt, &err) != FM_OK ||
        fm_decode_file(dec, path, img, &err) != FM_OK) {
        fprintf(stderr, "%s: %s: skipped\n", who, err.msg);
        skipped++;
        fm_decoder_destroy(&dec);
        return NULL;
    }
    return dec;
}

/* The cross-level NMS of P-Net's candidates, skipped where it cannot remove any (the
 * default scale_factor), gives what running it gives: on the sample photo at 960 px
 * and at full size, the same faces to the bit and the same counts with
 * fm_mtcnn_cross_nms_always; at scale_factor 0.9 (where it runs) too. */
static void test_cross_nms(const char *models)
{
    for (int side = 0; side < 2; side++) {
        fm_error err = {0};
        fm_image img;
        fm_decoder *dec = decode_sample(models, side ? 0 : 960, "test_cross_nms", &img);
        if (!dec)
            return;
        for (int factor = 0; factor < 2; factor++) {
            fm_detect_opts o;
            fm_detect_opts_defaults(&o);
            if (factor)
                o.scale_factor = 0.9;
            fm_detector *d = NULL;
            CHECK(fm_detector_open(&d, models, &o, &err) == FM_OK);
            if (!d)
                continue;
            fm_face a[64], b[64];
            int na = -1, nb = -2;
            fm_detect_times ta, tb;
            fm_mtcnn_cross_nms_always = 0;
            CHECK(fm_detect(d, &img, a, 64, &na, &ta, &err) == FM_OK);
            fm_mtcnn_cross_nms_always = 1;
            CHECK(fm_detect(d, &img, b, 64, &nb, &tb, &err) == FM_OK);
            fm_mtcnn_cross_nms_always = 0;
            CHECK_MSG(na == nb && na >= 3 && ta.pnet_boxes == tb.pnet_boxes &&
                          ta.rnet_boxes == tb.rnet_boxes && ta.onet_boxes == tb.onet_boxes,
                      "side %d factor %d: %d and %d faces, %d and %d R-Net crops", side, factor,
                      na, nb, ta.pnet_boxes, tb.pnet_boxes);
            CHECK_MSG(na == nb && memcmp(a, b, (size_t)(na > 0 ? na : 0) * sizeof *a) == 0,
                      "side %d factor %d: the faces differ", side, factor);
            fm_detector_close(&d);
        }
        fm_decoder_destroy(&dec);
    }
}

/* opts.pad must give what padding the pixels gives (same pyramid, same samples),
 * shifted back by the border. */
static void test_pad(const char *models)
{
    fm_error err = {0};
    fm_image img;
    /* 1920x1280 decodes at 1/4: 480x320 */
    fm_decoder *dec = decode_sample(models, 480, "test_pad", &img);
    if (!dec)
        return;
    img.scale_num = img.scale_denom = 1; /* compare in decoded pixels */
    img.orig_w = img.w;
    img.orig_h = img.h;
    const double pad = 0.25;
    int p = (int)lround(pad * (img.w > img.h ? img.w : img.h));
    int pw = img.w + 2 * p, ph = img.h + 2 * p;
    uint8_t *px = malloc((size_t)pw * ph * 3);
    CHECK(px != NULL);
    fm_image padded = gray_image(px, pw, ph, FM_DETECT_PAD_VALUE);
    for (int y = 0; y < img.h; y++)
        memcpy(px + ((size_t)(y + p) * pw + p) * 3, img.data + (size_t)y * img.stride,
               (size_t)img.w * 3);

    fm_detect_opts o;
    fm_detect_opts_defaults(&o);
    fm_detector *plain = NULL, *with_pad = NULL;
    CHECK(fm_detector_open(&plain, models, &o, &err) == FM_OK);
    o.pad = pad;
    CHECK(fm_detector_open(&with_pad, models, &o, &err) == FM_OK);
    fm_face a[64], b[64];
    int na = -1, nb = -2;
    fm_detect_times ta, tb;
    CHECK(fm_detect(plain, &padded, a, 64, &na, &ta, &err) == FM_OK);
    CHECK(fm_detect(with_pad, &img, b, 64, &nb, &tb, &err) == FM_OK);
    CHECK(na == nb && na >= 2 && ta.levels == tb.levels && ta.pnet_boxes == tb.pnet_boxes &&
          ta.rnet_boxes == tb.rnet_boxes);
    double worst = 0;
    for (int i = 0; i < na && i < nb; i++) {
        double e = fabs((double)a[i].score - b[i].score);
        for (int k = 0; k < 4; k++)
            e = fmax(e, fabs((double)a[i].box[k] - p - b[i].box[k]));
        for (int k = 0; k < 10; k++)
            e = fmax(e, fabs((double)a[i].landmarks[k] - p - b[i].landmarks[k]));
        worst = fmax(worst, e);
        CHECK_MSG(e < 1e-3, "face %d differs by %g", i, e);
    }
    fprintf(stderr, "pad %d px: %d faces (physically padded: %d), largest difference %.3g\n",
            p, nb, na, worst);

    /* The portable kernels (im2col + sgemm, scalar sampling, PReLU and pooling) and
     * the vector ones (direct convolution, gathered sampling) find the same faces, to
     * float rounding. */
    fm_nn_isa best = fm_nn_isa_best();
    fm_face c[2][64];
    int nc[2] = {-3, -4};
    fm_detect_times tc[2];
    o.pad = 0;
    for (int k = 0; k < 2; k++) {
        /* Scratch sizes depend on the kernels: a detector per kernel set. */
        fm_nn_set_isa(k ? best : FM_NN_ISA_BASE);
        fm_detector *d = NULL;
        CHECK(fm_detector_open(&d, models, &o, &err) == FM_OK);
        CHECK_MSG(d && fm_detect(d, &img, c[k], 64, &nc[k], &tc[k], &err) == FM_OK, "%s",
                  err.msg);
        fm_detector_close(&d);
    }
    fm_nn_set_isa(best);
    CHECK(nc[0] == nc[1] && nc[0] >= 2 && tc[0].pnet_boxes == tc[1].pnet_boxes &&
          tc[0].rnet_boxes == tc[1].rnet_boxes);
    worst = 0;
    for (int i = 0; i < nc[0] && i < nc[1]; i++) {
        const fm_face *f = &c[0][i], *g = &c[1][i];
        double e = fabs((double)f->score - g->score);
        for (int k = 0; k < 4; k++)
            e = fmax(e, fabs((double)f->box[k] - g->box[k]));
        for (int k = 0; k < 10; k++)
            e = fmax(e, fabs((double)f->landmarks[k] - g->landmarks[k]));
        worst = fmax(worst, e);
        CHECK_MSG(e < 1e-2, "face %d differs by %g between kernel sets", i, e);
    }
    fprintf(stderr, "kernels base and %s: %d faces, largest difference %.3g\n",
            fm_nn_isa_name(best), nc[1], worst);

    test_retry(models, &img);
    test_cross_nms(models);

    fm_detector_close(&plain);
    fm_detector_close(&with_pad);
    o.pad = 1.5;
    CHECK(fm_detector_open(&plain, models, &o, &err) == FM_ERR_INVALID && plain == NULL);
    fm_decoder_destroy(&dec);
    free(px);
}

int main(void)
{
    test_overlap();
    test_sort();
    test_nms();
    test_regress_square();
    test_scales();
    test_topk();
    test_crop_sampling();

    char models[4096];
    fm_test_source_path(models, sizeof models, "models/cache");
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/%s", models, FM_DETECT_ONET_FILE);
    struct stat sb;
    int have = stat(probe, &sb) == 0;
    test_open_errors(have ? models : NULL);
    if (have) {
        test_with_models(models);
        test_pad(models);
    }
    else {
        fprintf(stderr, "test_detect: %s not found (run models/fetch): model tests skipped\n",
                probe);
        skipped++;
    }
    int rc = fm_test_done("test_detect");
    if (rc == 0 && skipped)
        return fm_test_skip("test_detect", "not every check could run");
    return rc;
}
