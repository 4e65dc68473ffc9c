/* make_results.c - writes a results database of N generated images through the real
 * schema (fm_results_put, the sink's own insert), for `facemill report` at scale and
 * for pages with every kind of failure.
 *
 *   make_results DB N [--fail-every K] [--photo FILE]... [--photo-every K] [--seed S]
 *
 * Image i (0-based) is, deterministically from the seed:
 *   - a failure when K > 0 and i % K == 1: error codes cycle through decode,
 *     unsupported, limit, io, quarantined and timeout, each with a reason;
 *   - else a labelled image with 0..8 faces (about 1.3 on average): boxes of
 *     log-uniform size inside the image, scores skewed towards 1, ages from a mixture,
 *     random but normalised gender and ethnicity probabilities;
 *   - its source a missing file "gen/dNNN/imgNNNNNNN.jpg" (so the report shows
 *     placeholders), or, every --photo-every'th image, one of the --photo files (real
 *     originals the report cuts thumbnails from; their real size is used);
 *   - labelled by one of two model identities (the first 70% by one), one of eight
 *     workers, stored 2 ms after the previous one from a fixed start time.
 * Rows are committed every 10,000 images. Prints "make_results: N images, F faces,
 * E failed" on success (exit 0); 1 on errors, 2 on usage errors.
 */
#include "facemill.pb-c.h"
#include "facemill/image.h"
#include "facemill/sink.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FACES 8
#define MAX_PHOTOS 16
#define BATCH 10000
#define START_MS 1767225600000LL /* 2026-01-01 00:00:00 UTC */

static uint64_t rng_state;

static uint64_t rnd(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static double unif(void)
{
    return (double)(rnd() >> 11) / 9007199254740992.0;
}

typedef struct photo {
    const char *path;
    int w, h;
} photo;

static int faces_for_image(void)
{
    static const double cum[] = {0.2, 0.65, 0.85, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0};
    double u = unif();
    int n = 0;
    while (n < MAX_FACES && u > cum[n])
        n++;
    return n;
}

/* Probabilities from random logits (a sharper or flatter softmax per face). */
static void probs(float *p, int n)
{
    double sharp = 1 + 6 * unif(), sum = 0, z[8];
    int top = (int)(rnd() % (uint64_t)n);
    for (int i = 0; i < n; i++) {
        z[i] = exp(sharp * ((i == top) + 0.8 * unif()));
        sum += z[i];
    }
    for (int i = 0; i < n; i++)
        p[i] = (float)(z[i] / sum);
}

static void make_face(Facemill__Face *f, float *buf, int w, int h)
{
    float *box = buf, *lm = buf + 4, *pg = buf + 14, *pr = buf + 16;
    double side = exp(log(20) + unif() * (log(600) - log(20)));
    if (side > 0.9 * w)
        side = 0.9 * w;
    if (side > 0.9 * h)
        side = 0.9 * h;
    double x = unif() * (w - side), y = unif() * (h - side);
    box[0] = (float)x;
    box[1] = (float)y;
    box[2] = (float)(x + side);
    box[3] = (float)(y + side * 1.2 < h ? y + side * 1.2 : h - 1);
    static const double lmx[5] = {0.3, 0.7, 0.5, 0.35, 0.65}, lmy[5] = {0.4, 0.4, 0.6, 0.8, 0.8};
    for (int k = 0; k < 5; k++) {
        lm[2 * k] = (float)(x + lmx[k] * side);
        lm[2 * k + 1] = (float)(y + lmy[k] * side);
    }
    facemill__face__init(f);
    f->n_box = 4;
    f->box = box;
    f->n_landmarks = 10;
    f->landmarks = lm;
    f->has_score = 1;
    f->score = (float)(1 - 0.3 * pow(unif(), 6));
    f->has_age = f->has_age_std = 1;
    double u = unif();
    f->age = (float)(u < 0.1 ? unif() * 12 : u < 0.85 ? 18 + unif() * 40 : 58 + unif() * 35);
    f->age_std = (float)(2 + 10 * unif());
    f->n_gender_probs = 2;
    f->gender_probs = pg;
    probs(pg, 2);
    f->n_race_probs = 5;
    f->race_probs = pr;
    probs(pr, 5);
}

static const struct {
    uint32_t code;
    const char *text;
} failures[] = {
    {1, "corrupt JPEG: Premature end of JPEG file"},
    {2, "unsupported format: PNG"},
    {3, "image of 20000 x 20000 pixels exceeds decode.max_pixels (100000000)"},
    {4, "No such file or directory"},
    {7, "quarantined after 3 attempts: worker vm:1234/0 held it longer than 600000 ms"},
    {8, "worker held the job too long"},
};
#define N_FAILURES (sizeof failures / sizeof failures[0])

static int usage(void)
{
    fprintf(stderr, "usage: make_results DB N [--fail-every K] [--photo FILE]... "
                    "[--photo-every K] [--seed S]\n");
    return 2;
}

static int load_photo(photo *p)
{
    fm_decoder *d = NULL;
    fm_error e = {0};
    fm_image img;
    if (fm_decoder_new(&d, NULL, &e) != FM_OK || fm_decode_file(d, p->path, &img, &e) != FM_OK) {
        fprintf(stderr, "make_results: %s\n", fm_error_text(&e));
        fm_decoder_destroy(&d);
        return -1;
    }
    p->w = img.orig_w;
    p->h = img.orig_h;
    fm_decoder_destroy(&d);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *db_path = argv[1];
    long long n = strtoll(argv[2], NULL, 10);
    long long fail_every = 0, photo_every = 0;
    photo photos[MAX_PHOTOS];
    int n_photos = 0;
    rng_state = 88172645463325252ull;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--fail-every") == 0 && i + 1 < argc)
            fail_every = strtoll(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--photo-every") == 0 && i + 1 < argc)
            photo_every = strtoll(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            rng_state ^= strtoull(argv[++i], NULL, 10) * 0x9e3779b97f4a7c15ull;
        else if (strcmp(argv[i], "--photo") == 0 && i + 1 < argc && n_photos < MAX_PHOTOS)
            photos[n_photos++].path = argv[++i];
        else
            return usage();
    }
    if (n < 0 || fail_every < 0 || photo_every < 0)
        return usage();
    for (int i = 0; i < n_photos; i++)
        if (load_photo(&photos[i]) != 0)
            return 1;

    fm_results *r = NULL;
    fm_error err = {0};
    if (fm_results_open(&r, db_path, 0, &err) != FM_OK) {
        fprintf(stderr, "make_results: %s\n", fm_error_text(&err));
        return 1;
    }
    static const char *const models[2] = {
        "mtcnn + dlib_resnet trained:facemill sha256:"
        "c8b05d4932f0921610c6c73562d546ff01e5866bcd288b5d153346e763f1253b + heads",
        "mtcnn + dlib_resnet sha256:"
        "0d9a5f4ad0a2a1f1e3c4b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80912 + heads"};
    long long faces = 0, failed = 0;
    int rc = 0;
    for (long long i = 0; i < n && rc == 0; i++) {
        if (i % BATCH == 0 && fm_results_begin(r, &err) != FM_OK) {
            rc = 1;
            break;
        }
        char job[40], source[64], worker[32];
        snprintf(job, sizeof job, "gen%016llx", i);
        snprintf(worker, sizeof worker, "gen:%lld/0", 1000 + i % 8);
        Facemill__Result res = FACEMILL__RESULT__INIT;
        Facemill__StageTimes t = FACEMILL__STAGE_TIMES__INIT;
        Facemill__Face fv[MAX_FACES], *fp[MAX_FACES];
        float fbuf[MAX_FACES][21];
        int w = i % 3 ? 1920 : 640, h = i % 3 ? 1280 : 480;
        res.job_id = job;
        res.tag = i < n / 2 ? "gen-a" : "gen-b";
        res.source = source;
        res.worker = worker;
        res.has_attempt = 1;
        res.attempt = 1;
        if (photo_every > 0 && n_photos > 0 && i % photo_every == 0) {
            const photo *p = &photos[(i / photo_every) % n_photos];
            snprintf(source, sizeof source, "%.63s", p->path);
            w = p->w;
            h = p->h;
        } else {
            snprintf(source, sizeof source, "gen/d%03lld/img%07lld.jpg", i / 1000 % 1000, i);
        }
        if (fail_every > 0 && i % fail_every == 1) {
            size_t k = (size_t)(i / fail_every) % N_FAILURES;
            res.has_error_code = 1;
            res.error_code = failures[k].code;
            res.error_text = (char *)failures[k].text;
            if (failures[k].code == 7)
                res.worker = "broker";
            failed++;
        } else {
            res.has_width = res.has_height = 1;
            res.width = (uint32_t)w;
            res.height = (uint32_t)h;
            res.model = (char *)models[i < n * 7 / 10 ? 0 : 1];
            int nf = faces_for_image();
            for (int k = 0; k < nf; k++) {
                make_face(&fv[k], fbuf[k], w, h);
                fp[k] = &fv[k];
            }
            res.n_faces = (size_t)nf;
            res.faces = fp;
            faces += nf;
            t.has_total_ms = 1;
            t.total_ms = (float)(80 + 40 * nf + 20 * unif());
            res.times = &t;
        }
        if (fm_results_put(r, &res, START_MS + 2 * i, NULL, NULL, &err) != FM_OK)
            rc = 1;
        if (rc == 0 && (i % BATCH == BATCH - 1 || i == n - 1) &&
            fm_results_commit(r, &err) != FM_OK)
            rc = 1;
    }
    if (rc)
        fprintf(stderr, "make_results: %s\n", fm_error_text(&err));
    else
        printf("make_results: %lld images, %lld faces, %lld failed\n", n, faces, failed);
    fm_results_close(&r);
    return rc;
}
