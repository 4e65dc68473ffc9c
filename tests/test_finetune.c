/* test_finetune.c - the backbone fine-tuner (worker/train/finetune.c) on the real dlib
 * ResNet weights (models/cache/dlib_resnet.fmm, made by models/fetch):
 *   - the trainer's forward pass gives the production backbone's pooled features, to
 *     the bit (both run arch_dlib_resnet.c's fm_dlib_forward);
 *   - gradients of the whole graph (heads and every kind of block, down to the stem)
 *     agree with central finite differences of the loss;
 *   - fine-tuning on a generated problem (synthetic faces whose "gender" is a stripe
 *     pattern and whose "ethnicity" is a tint) converges: the loss falls and the
 *     classes are learnt;
 *   - a run interrupted after a few steps and resumed from its checkpoint ends with the
 *     same weights, to the bit, as the uninterrupted run; a checkpoint made with other
 *     options is not resumed; a damaged one is an error;
 *   - the temperature fit finds the temperature labels were drawn with, and the
 *     calibrated heads are the kept heads with their gender and ethnicity output
 *     layers divided by the fitted temperatures, the held-out loss no higher.
 */
#include "facemill/backbone.h"
#include "facemill/clock.h"
#include "facemill/dlib_resnet.h"
#include "facemill/finetune.h"
#include "facemill/model.h"
#include "facemill/nn.h"
#include "facemill/sha256.h"
#include "fm_test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char model_path[4200], tmpdir[4200];

static fm_test_rng rng = FM_TEST_RNG(88172645463325252ull);

/* ---- synthetic faces ------------------------------------------------------------- */

enum { IMG = 200, NIMG = 48 };

typedef struct synth {
    uint8_t px[NIMG][IMG * IMG * 3];
    fm_ft_image img[NIMG];
} synth;

/* A face-like picture: a skin ellipse tinted by race, dark eyes and mouth at the
 * landmarks, and for gender 1 horizontal stripes across the forehead. Age follows
 * gender and race so it is learnable too. */
static void make_face(synth *s, int i)
{
    static const uint8_t tint[5][3] = {
        {230, 190, 170}, {120, 80, 60}, {220, 200, 140}, {170, 120, 90}, {200, 160, 200}};
    int gender = i % 2, race = (i / 2) % 5;
    uint8_t *p = s->px[i];
    double cx = 100 + (fm_test_rng_uniform(&rng) - 0.5) * 10;
    double cy = 105 + (fm_test_rng_uniform(&rng) - 0.5) * 10;
    double rx = 55 + fm_test_rng_uniform(&rng) * 8, ry = 70 + fm_test_rng_uniform(&rng) * 8;
    for (int y = 0; y < IMG; y++)
        for (int x = 0; x < IMG; x++) {
            uint8_t *q = p + ((size_t)y * IMG + x) * 3;
            double dx = (x - cx) / rx, dy = (y - cy) / ry;
            int in = dx * dx + dy * dy < 1;
            for (int c = 0; c < 3; c++) {
                double v = in ? tint[race][c] : 90 + 20 * ((x / 16 + y / 16) % 2);
                if (in && gender && y < cy - 0.45 * ry && (y / 5) % 2 == 0)
                    v *= 0.35;
                v += (fm_test_rng_uniform(&rng) - 0.5) * 20;
                q[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    float lm[10] = {(float)(cx - 22), (float)(cy - 12), (float)(cx + 22), (float)(cy - 12),
                    (float)cx,        (float)(cy + 8),  (float)(cx - 17), (float)(cy + 32),
                    (float)(cx + 17), (float)(cy + 32)};
    for (int k = 0; k < 5; k++) /* dark spots at eyes and mouth corners */
        for (int y = -3; y <= 3; y++)
            for (int x = -3; x <= 3; x++) {
                int X = (int)lm[2 * k] + x, Y = (int)lm[2 * k + 1] + y;
                if (k != 2 && X >= 0 && X < IMG && Y >= 0 && Y < IMG)
                    memset(p + ((size_t)Y * IMG + X) * 3, 30, 3);
            }
    fm_ft_image *im = &s->img[i];
    im->rgb = p;
    im->w = im->h = IMG;
    im->stride = IMG * 3;
    memcpy(im->landmarks, lm, sizeof lm);
    im->label.gender = gender;
    im->label.race = race;
    im->label.age = 20 + 30 * gender + 6 * race;
    im->source = i;
    im->soft = NULL;
}

/* ---- forward agrees with the production backbone --------------------------------- */

static void test_forward(void)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_backbone *bb = NULL;
    fm_ft_opts o;
    fm_ft_opts_defaults(&o);
    o.batch = 2;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    CHECK(fm_backbone_open(&bb, model_path, 2, &err) == FM_OK);
    if (!ft || !bb)
        goto out;
    int H, W;
    fm_finetune_input_size(ft, &H, &W);
    CHECK(H == 150 && W == 150);
    const double *mean = NULL, *scale = NULL;
    size_t nm = 0, ns = 0;
    fm_model_meta_f64_array(m, "input.mean", &mean, &nm, NULL);
    fm_model_meta_f64_array(m, "input.scale", &scale, &ns, NULL);
    uint8_t *faces = malloc((size_t)2 * H * W * 3);
    float *x = malloc((size_t)2 * 3 * H * W * sizeof(float));
    float a[2 * 256], b[2 * 256];
    for (size_t i = 0; i < (size_t)2 * H * W * 3; i++)
        faces[i] = (uint8_t)(fm_test_rng_uniform(&rng) * 256);
    /* normalised in float, as the backbone normalises its faces */
    for (int n = 0; n < 2; n++)
        for (int c = 0; c < 3; c++)
            for (int k = 0; k < H * W; k++)
                x[((size_t)n * 3 + c) * H * W + k] =
                    ((float)faces[((size_t)n * H * W + k) * 3 + c] - (float)mean[c]) *
                    (float)scale[c];
    const uint8_t *fp[2] = {faces, faces + (size_t)H * W * 3};
    float *outs[FM_BACKBONE_OUTPUT_COUNT] = {NULL, b};
    CHECK(fm_finetune_pooled(ft, x, 2, a, &err) == FM_OK);
    CHECK(fm_backbone_forward(bb, fp, 2, outs, &err) == FM_OK);
    double worst = 0;
    for (int i = 0; i < 2 * 256; i++) {
        double d = fabs(a[i] - b[i]) / (fabs(b[i]) + 1e-3);
        worst = d > worst ? d : worst;
    }
    CHECK_MSG(memcmp(a, b, sizeof a) == 0, "pooled features differ: worst relative %.3g",
              worst);
    fprintf(stderr, "forward: trainer vs backbone pooled, worst relative difference %.2g\n",
            worst);
    free(faces);
    free(x);
out:
    fm_backbone_close(&bb);
    fm_finetune_free(&ft);
    fm_model_close(&m);
}

/* ---- whole-graph gradient ------------------------------------------------------------ */

static void test_gradients(void)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_ft_opts o;
    fm_ft_opts_defaults(&o);
    o.batch = 2;
    o.train_from = FM_FT_STEM;
    o.hidden = 32;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    if (!ft) {
        fm_model_close(&m);
        return;
    }
    int H, W;
    fm_finetune_input_size(ft, &H, &W);
    float *x = malloc((size_t)2 * 3 * H * W * sizeof(float));
    for (size_t i = 0; i < (size_t)2 * 3 * H * W; i++)
        x[i] = (float)(fm_test_rng_uniform(&rng) * 2 - 1);
    fm_utk_label lab[2] = {{25, 1, 2}, {61, 0, 4}};
    size_t count = 0, from = 0;
    float *p = fm_finetune_params(ft, &count, &from);
    double loss = 0;
    CHECK(fm_finetune_loss(ft, x, lab, 2, 1, &loss, &err) == FM_OK);
    float *g = malloc(count * sizeof(float));
    memcpy(g, fm_finetune_grads(ft), count * sizeof(float));
    CHECK(isfinite(loss) && loss > 0);

    /* probe the parameters with the largest gradients in slices spread over the
     * whole trained vector (stem .. heads), the first slice being the stem's weights:
     * a wrong backward anywhere shows. The step moves the loss by about 3e-5: small
     * enough to cross few ReLU kinks, large enough for float's resolution. */
    const int probes = 24;
    int ok = 0, tried = 0;
    double worst = 0;
    for (int k = 0; k <= probes; k++) {
        size_t lo = k == 0 ? from : from + (count - from) * (size_t)(k - 1) / probes;
        size_t hi = k == 0 ? from + 32 * 3 * 7 * 7 : from + (count - from) * (size_t)k / probes;
        size_t best = lo;
        for (size_t j = lo; j < hi; j++)
            if (fabsf(g[j]) > fabsf(g[best]))
                best = j;
        if (fabsf(g[best]) < 1e-6f)
            continue;
        float keep = p[best];
        double h = 3e-5 / fabs(g[best]);
        double lp = 0, lm = 0;
        p[best] = (float)(keep + h);
        fm_finetune_loss(ft, x, lab, 2, 0, &lp, &err);
        p[best] = (float)(keep - h);
        fm_finetune_loss(ft, x, lab, 2, 0, &lm, &err);
        p[best] = keep;
        double num = (lp - lm) / (2 * ((double)(float)(keep + h) - (float)(keep - h)) / 2),
               rel = fabs(num - g[best]) / fabs(g[best]);
        tried++;
        ok += rel < 0.05;
        worst = rel > worst ? rel : worst;
        if (rel >= 0.05)
            fprintf(stderr, "  parameter %zu: analytic %.6g numeric %.6g\n", best, g[best], num);
    }
    /* ReLU kinks and max-pool ties can spoil a difference quotient now and then;
     * a wrong gradient spoils most of them */
    CHECK_MSG(tried >= 22 && ok >= tried - 2, "%d of %d probes agree within 5%%", ok, tried);
    fprintf(stderr, "gradients: %d of %d probes agree within 5%% (worst %.3g)\n", ok, tried,
            worst);
    free(g);
    free(x);
    fm_finetune_free(&ft);
    fm_model_close(&m);
}

/* ---- convergence and resume ------------------------------------------------------ */

typedef struct track {
    double first_loss, last_loss;
    int epochs;
} track;

static void on_progress(void *ctx, const fm_ft_progress *p)
{
    track *t = ctx;
    if (!p->epoch_end)
        return;
    if (!t->epochs++)
        t->first_loss = p->train_loss;
    t->last_loss = p->train_loss;
    fprintf(stderr, "  epoch %d: train loss %.4f val loss %.4f gender %.3f race %.3f\n",
            p->epoch, p->train_loss, p->val_loss, p->val_gender_acc, p->val_race_acc);
}

static void small_opts(fm_ft_opts *o)
{
    fm_ft_opts_defaults(o);
    o->batch = 8;
    o->train_from = fm_ft_block_index("conv256_2");
    o->hidden = 64;
    o->dropout = 0;
    o->lr_backbone = 3e-5;
    o->lr_heads = 3e-3;
    o->head_epochs = 2;
    o->warmup_epochs = 0.5;
    o->rotate_deg = 3;
}

/* Writes the trainer's heads to path (architecture "heads", made for the test's
 * backbone on its pooled features, plus what the trainer adds). */
static int write_heads(const fm_finetune *ft, const char *path)
{
    fm_error err = {0};
    char identity[1024];
    fm_model_writer *w = fm_model_writer_new();
    int ok = w && fm_model_writer_add_str(w, "general.architecture", "heads", &err) == FM_OK &&
             fm_heads_backbone_identity(model_path, identity, sizeof identity, &err) ==
                 FM_OK &&
             fm_model_writer_add_str(w, "heads.backbone", identity, &err) == FM_OK &&
             fm_model_writer_add_str(w, "heads.feature", "pooled", &err) == FM_OK &&
             fm_finetune_write_heads(ft, w, &err) == FM_OK &&
             fm_model_writer_save(w, path, &err) == FM_OK;
    if (!ok)
        fprintf(stderr, "write heads: %s\n", fm_error_text(&err));
    fm_model_writer_destroy(&w);
    return ok;
}

/* Calibrates a trained trainer on val and compares the heads written before and
 * after: gender.* divided by the gender temperature, race.* by the ethnicity one,
 * every other tensor the same bytes, heads.train.temperature only after. */
static void check_calibration(fm_finetune *ft, const fm_ft_set *val)
{
    fm_error err = {0};
    char pa[4300], pb[4300];
    snprintf(pa, sizeof pa, "%s/heads_a.fmm", tmpdir);
    snprintf(pb, sizeof pb, "%s/heads_b.fmm", tmpdir);
    fm_model *a = NULL, *b = NULL;
    double t[2] = {0, 0}, nll[4] = {0, 0, 0, 0};
    CHECK(write_heads(ft, pa));
    CHECK_MSG(fm_finetune_calibrate(ft, val, t, nll, &err) == FM_OK, "%s", fm_error_text(&err));
    CHECK(write_heads(ft, pb));
    fprintf(stderr, "calibration: gender T %.4f (loss %.5f -> %.5f), ethnicity T %.4f "
            "(%.5f -> %.5f)\n", t[0], nll[0], nll[1], t[1], nll[2], nll[3]);
    CHECK(t[0] >= 0.05 && t[0] <= 20 && t[1] >= 0.05 && t[1] <= 20);
    CHECK_MSG(nll[1] <= nll[0] && nll[3] <= nll[2] && nll[1] < nll[0] - 1e-6,
              "gender %.6f -> %.6f, ethnicity %.6f -> %.6f", nll[0], nll[1], nll[2], nll[3]);
    CHECK(fm_model_open(&a, pa, 0, &err) == FM_OK && fm_model_open(&b, pb, 0, &err) == FM_OK);
    if (!a || !b)
        goto out;
    const double *tv = NULL;
    size_t tn = 0;
    CHECK(fm_model_meta_f64_array(a, "heads.train.temperature", &tv, &tn, &err) != FM_OK);
    CHECK(fm_model_meta_f64_array(b, "heads.train.temperature", &tv, &tn, &err) == FM_OK &&
          tn == 2 && tv[0] == t[0] && tv[1] == t[1]);
    CHECK(fm_model_tensor_count(a) == fm_model_tensor_count(b));
    int scaled = 0, same = 0;
    double worst = 0;
    for (size_t i = 0; i < fm_model_tensor_count(a); i++) {
        const fm_model_tensor_info *x = fm_model_tensor_at(a, i);
        const fm_model_tensor_info *y = fm_model_tensor(b, x->name);
        CHECK(y && y->nbytes == x->nbytes);
        if (!y || y->nbytes != x->nbytes)
            continue;
        const int g = strncmp(x->name, "gender.", 7) == 0, r = strncmp(x->name, "race.", 5) == 0;
        if (!g && !r) {
            CHECK_MSG(memcmp(x->data, y->data, (size_t)x->nbytes) == 0, "%s changed", x->name);
            same++;
            continue;
        }
        for (size_t j = 0; j < (size_t)x->nbytes / sizeof(float); j++) {
            double want = x->data[j] / t[g ? 0 : 1];
            double e = fabs(y->data[j] - want) / (fabs(want) + 1e-30);
            worst = e > worst ? e : worst;
        }
        scaled++;
    }
    CHECK_MSG(scaled == 4 && same >= 6 && worst < 1e-6, "%d scaled, %d same, worst %.3g",
              scaled, same, worst);
out:
    fm_model_close(&a);
    fm_model_close(&b);
    unlink(pa);
    unlink(pb);
}

/* fm_ft_fit_temperature recovers the temperature that labels were drawn with. */
static void test_fit_temperature(void)
{
    enum { N = 20000, K = 5 };
    float *z = malloc((size_t)N * K * sizeof *z);
    int *y = malloc((size_t)N * sizeof *y);
    if (!z || !y) {
        CHECK(0);
        free(z);
        free(y);
        return;
    }
    static const double t0s[3] = {0.5, 1.0, 2.5};
    for (int c = 0; c < 3; c++) {
        for (int i = 0; i < N; i++) {
            double p[K], sum = 0;
            for (int j = 0; j < K; j++) {
                z[i * K + j] = (float)(8 * (fm_test_rng_uniform(&rng) - 0.5));
                sum += p[j] = exp(z[i * K + j] / t0s[c]);
            }
            double u = fm_test_rng_uniform(&rng) * sum;
            y[i] = K - 1;
            for (int j = 0; j < K; j++)
                if ((u -= p[j]) < 0) {
                    y[i] = j;
                    break;
                }
        }
        double t = fm_ft_fit_temperature(z, y, N, K);
        CHECK_MSG(fabs(t / t0s[c] - 1) < 0.05, "drawn with T %.2f, fitted %.4f", t0s[c], t);
        fprintf(stderr, "temperature: drawn with %.2f, fitted %.4f\n", t0s[c], t);
    }
    /* every answer right by a wide margin: as sharp as the search allows */
    for (int i = 0; i < N; i++) {
        y[i] = i % K;
        for (int j = 0; j < K; j++)
            z[i * K + j] = j == y[i] ? 10.0f : 0.0f;
    }
    CHECK(fm_ft_fit_temperature(z, y, N, K) < 0.051);
    CHECK(fm_ft_fit_temperature(z, y, 0, K) == 1 && fm_ft_fit_temperature(z, y, N, 1) == 1);
    free(z);
    free(y);
}

static void test_converges(synth *s)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_ft_opts o;
    small_opts(&o);
    o.max_epochs = 8;
    o.patience = 8;
    track t = {0};
    o.progress = on_progress;
    o.ctx = &t;
    fm_ft_set set = {NIMG, s->img};
    fm_ft_progress best;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    if (ft)
        CHECK_MSG(fm_finetune_run(ft, &set, &set, "synthetic", &best, &err) == FM_OK, "%s",
                  fm_error_text(&err));
    CHECK(t.epochs == 8);
    CHECK_MSG(t.last_loss < 0.6 * t.first_loss, "train loss %.4f -> %.4f", t.first_loss,
              t.last_loss);
    CHECK_MSG(best.val_gender_acc >= 0.95 && best.val_race_acc >= 0.8,
              "gender %.3f race %.3f", best.val_gender_acc, best.val_race_acc);
    fprintf(stderr, "converges: loss %.3f -> %.3f, kept epoch %d: gender %.3f race %.3f "
            "age MAE %.2f\n", t.first_loss, t.last_loss, best.best_epoch,
            best.val_gender_acc, best.val_race_acc, best.val_age_mae);
    if (ft)
        check_calibration(ft, &set);
    fm_finetune_free(&ft);
    fm_model_close(&m);
}

/* Runs 2 epochs with the given checkpoint (NULL: none), stopping after stop_after
 * steps first when > 0 and resuming in a fresh trainer. Returns the final parameters
 * (malloc'd) and their count. */
static float *run_two_epochs(synth *s, const char *ckpt, long stop_after, size_t *count,
                             fm_status *first)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_ft_opts o;
    small_opts(&o);
    o.max_epochs = 2;
    o.checkpoint = ckpt;
    o.checkpoint_steps = 2;
    fm_ft_set set = {24, s->img};
    fm_ft_set val = {8, s->img + 24};
    float *out = NULL;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    for (int round = 0; round < 2; round++) {
        fm_finetune *ft = NULL;
        o.stop_after_steps = round == 0 ? stop_after : 0;
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        if (!ft)
            break;
        fm_status st = fm_finetune_run(ft, &set, &val, "resume", NULL, &err);
        if (round == 0 && first)
            *first = st;
        if (st == FM_OK) {
            size_t n = 0;
            float *p = fm_finetune_params(ft, &n, NULL);
            out = malloc(n * sizeof(float));
            memcpy(out, p, n * sizeof(float));
            *count = n;
            fm_finetune_free(&ft);
            break;
        }
        fm_finetune_free(&ft);
    }
    fm_model_close(&m);
    return out;
}

static void test_resume(synth *s)
{
    char ck1[4300], ck2[4300];
    snprintf(ck1, sizeof ck1, "%s/a.ckpt", tmpdir);
    snprintf(ck2, sizeof ck2, "%s/b.ckpt", tmpdir);
    size_t n1 = 0, n2 = 0;
    fm_status first = FM_OK;
    float *whole = run_two_epochs(s, ck1, 0, &n1, NULL);
    float *resumed = run_two_epochs(s, ck2, 4, &n2, &first);
    CHECK(first == FM_ERR_INTERRUPTED);
    CHECK(whole && resumed && n1 == n2 && n1 > 0);
    if (whole && resumed && n1 == n2) {
        size_t diff = 0;
        for (size_t i = 0; i < n1; i++)
            diff += memcmp(&whole[i], &resumed[i], sizeof(float)) != 0;
        CHECK_MSG(diff == 0, "%zu of %zu parameters differ after resuming", diff, n1);
        fprintf(stderr, "resume: interrupted after 4 steps and resumed: %zu of %zu parameters "
                "differ from the uninterrupted run\n", diff, n1);
    }
    free(whole);
    free(resumed);

    /* a checkpoint of other options is not resumed: the run starts afresh and
     * finishes (same result as a run without checkpoint) */
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_ft_opts o;
    small_opts(&o);
    o.max_epochs = 1;
    o.seed = 99;
    o.checkpoint = ck1;
    fm_ft_set set = {24, s->img}, val = {8, s->img + 24};
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    CHECK(ft && fm_finetune_run(ft, &set, &val, "resume", NULL, &err) == FM_OK);
    fm_finetune_free(&ft);
    /* damaged checkpoint: a clear error, not a silent fresh start */
    FILE *f = fopen(ck1, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, -100, SEEK_END);
        fputc(0x5a, f);
        fputc(0xa5, f);
        fclose(f);
    }
    o.seed = 99;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    memset(&err, 0, sizeof err);
    CHECK(ft && fm_finetune_run(ft, &set, &val, "resume", NULL, &err) == FM_ERR_FORMAT);
    CHECK(strstr(fm_error_text(&err), "checkpoint") != NULL);
    fm_finetune_free(&ft);
    fm_model_close(&m);
    unlink(ck1);
    unlink(ck2);
}

/* The learning-rate schedule, seen through the progress callback at every step. */
typedef struct lrs {
    int n;
    double head[64], backbone[64], loss[64];
} lrs;

static void on_step(void *ctx, const fm_ft_progress *p)
{
    lrs *l = ctx;
    if (!p->epoch_end && l->n < 64) {
        l->head[l->n] = p->lr_heads;
        l->backbone[l->n] = p->lr_backbone;
        l->loss[l->n++] = p->train_loss;
    }
}

static void test_schedules(synth *s)
{
    fm_error err = {0};
    fm_model *m = NULL;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    fm_ft_set set = {24, s->img}, val = {8, s->img + 24};
    for (int variant = 0; variant < 2; variant++) {
        fm_ft_opts o;
        small_opts(&o);
        o.train_from = fm_ft_block_index("conv256_down_out");
        o.max_epochs = 4; /* 3 steps per epoch: 12 steps */
        o.patience = 4;
        o.head_epochs = 1;
        o.warmup_epochs = 1;
        o.progress_steps = 1;
        if (variant == 1) {
            o.optimizer = FM_FT_SGD;
            o.schedule = FM_FT_STEP;
            o.step_epochs = 1;
            o.step_gamma = 0.5;
            o.lr_heads = 0.05;
            o.lr_backbone = 0.001;
        }
        lrs l = {0};
        o.progress = on_step;
        o.ctx = &l;
        fm_finetune *ft = NULL;
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        CHECK(ft && fm_finetune_run(ft, &set, &val, "schedule", NULL, &err) == FM_OK);
        fm_finetune_free(&ft);
        CHECK(l.n == 12);
        if (l.n != 12)
            continue;
        /* the heads warm up over the first epoch (3 steps: 1/3, 2/3, 1 of the peak) */
        CHECK(fabs(l.head[0] - o.lr_heads / 3) < 1e-9 * o.lr_heads &&
              fabs(l.head[2] - o.lr_heads) < 1e-9 * o.lr_heads);
        /* the backbone waits one epoch, then warms up over the next */
        CHECK(l.backbone[0] == 0 && l.backbone[2] == 0);
        CHECK(fabs(l.backbone[3] - o.lr_backbone / 3) < 1e-9 * o.lr_backbone &&
              fabs(l.backbone[5] - o.lr_backbone) < 1e-9 * o.lr_backbone);
        if (variant == 0) { /* cosine: falls every step after the warm-up, towards the floor */
            int falls = 1;
            for (int i = 4; i < 12; i++)
                falls &= l.head[i] < l.head[i - 1];
            CHECK(falls && fabs(l.head[3] - o.lr_heads) < 1e-9 * o.lr_heads);
            CHECK(l.head[11] > o.lr_heads * o.min_lr_ratio && l.head[11] < 0.05 * o.lr_heads);
        } else { /* step: halves every epoch after the warm-up */
            CHECK(fabs(l.head[5] - 0.5 * o.lr_heads) < 1e-9 * o.lr_heads &&
                  fabs(l.head[8] - 0.25 * o.lr_heads) < 1e-9 * o.lr_heads &&
                  fabs(l.head[11] - 0.125 * o.lr_heads) < 1e-9 * o.lr_heads);
            CHECK(fabs(l.backbone[8] - 0.5 * o.lr_backbone) < 1e-9 * o.lr_backbone);
        }
        /* both optimisers learn: the running loss of the last epoch is below the first */
        CHECK_MSG(l.loss[11] < l.loss[2], "%s: loss %.4f -> %.4f",
                  variant ? "SGD" : "AdamW", l.loss[2], l.loss[11]);
        fprintf(stderr, "schedule (%s): heads lr %.2g %.2g %.2g ... %.2g, loss %.3f -> %.3f\n",
                variant ? "SGD, step" : "AdamW, cosine", l.head[0], l.head[1], l.head[2],
                l.head[11], l.loss[2], l.loss[11]);
    }
    fm_model_close(&m);
}

/* drop_hardest's count, seen through the progress callback: at share 0.25 of a batch
 * of 8 every training step leaves 2 faces out of each loss (any face may go), so the
 * shares are 0.25 after each step; with drop_below 0.01 (fresh heads give every label
 * about 1/2 and 1/5) none goes. The counts start again with each epoch. */
typedef struct drops {
    int n, ends;
    double gender[16], race[16];
} drops;

static void on_drop_step(void *ctx, const fm_ft_progress *p)
{
    drops *d = ctx;
    if (p->epoch_end)
        d->ends++;
    else if (d->n < 16) {
        d->gender[d->n] = p->dropped_gender;
        d->race[d->n++] = p->dropped_race;
    }
}

static void test_drop_counts(synth *s)
{
    fm_error err = {0};
    fm_model *m = NULL;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    fm_ft_set set = {24, s->img}, val = {8, s->img + 24};
    const double below[2] = {1, 0.01}, want[2] = {0.25, 0};
    for (int v = 0; v < 2; v++) {
        fm_ft_opts o;
        small_opts(&o);
        o.train_from = FM_FT_BLOCKS; /* heads only */
        o.max_epochs = 2;            /* 3 steps per epoch */
        o.patience = 2;
        o.progress_steps = 1;
        o.drop_hardest = 0.25;
        o.drop_below = below[v];
        drops d = {0};
        o.progress = on_drop_step;
        o.ctx = &d;
        fm_finetune *ft = NULL;
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        CHECK(ft && fm_finetune_run(ft, &set, &val, "drops", NULL, &err) == FM_OK);
        fm_finetune_free(&ft);
        CHECK(d.n == 6 && d.ends == 2);
        for (int i = 0; i < d.n; i++)
            CHECK_MSG(fabs(d.gender[i] - want[v]) < 1e-12 && fabs(d.race[i] - want[v]) < 1e-12,
                      "drop_below %g, step %d: left out gender %.4f, ethnicity %.4f, want %.2f",
                      below[v], i + 1, d.gender[i], d.race[i], want[v]);
    }
    fm_model_close(&m);
}

/* AdamW's first step moves every parameter by the learning rate (m and v hold one
 * gradient, bias-corrected: |m / sqrt(v)| = 1). The backbone's first step comes after
 * the heads' epoch; its bias correction must count from there, not from step 0 (at
 * step 4 that gave 0.58 of the rate, after the 540-step heads epoch of a real run
 * twice the rate). */
typedef struct adam_probe {
    fm_finetune *ft;
    float *prev;
    int n;
    double moved[8];
} adam_probe;

static void on_adam_step(void *ctx, const fm_ft_progress *p)
{
    adam_probe *a = ctx;
    if (p->epoch_end || a->n >= 8)
        return;
    size_t count = 0, from = 0;
    const float *q = fm_finetune_params(a->ft, &count, &from);
    double most = 0;
    for (size_t i = from; i < count; i++)
        most = fmax(most, fabs((double)q[i] - a->prev[i]));
    memcpy(a->prev, q, count * sizeof(float));
    a->moved[a->n++] = most;
}

/* Options for watching the backbone's first step: the blocks from `from` train, the
 * heads alone for the first epoch, then the backbone at its full rate 1e-3 at once. */
static void first_step_opts(fm_ft_opts *o, const char *from)
{
    small_opts(o);
    o->train_from = fm_ft_block_index(from);
    o->max_epochs = 2; /* 3 steps per epoch: the backbone's first step is step 3 */
    o->patience = 2;
    o->head_epochs = 1;
    o->warmup_epochs = 0; /* the full rate from the backbone's first step */
    o->weight_decay = 0;
    o->lr_backbone = 1e-3;
    o->lr_heads = 1e-9; /* the heads hold still: what moves is the backbone */
    o->progress_steps = 1;
}

static void test_adam_first_step(synth *s)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_ft_opts o;
    first_step_opts(&o, "conv256_down_out");
    adam_probe a = {0};
    o.progress = on_adam_step;
    o.ctx = &a;
    fm_ft_set set = {24, s->img}, val = {8, s->img + 24};
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    CHECK(m && fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    if (!ft)
        goto out;
    size_t count = 0;
    const float *p = fm_finetune_params(ft, &count, NULL);
    a.ft = ft;
    a.prev = malloc(count * sizeof(float));
    memcpy(a.prev, p, count * sizeof(float));
    CHECK(fm_finetune_run(ft, &set, &val, "adam", NULL, &err) == FM_OK);
    CHECK(a.n == 6);
    CHECK_MSG(a.moved[1] < 1e-6 && a.moved[2] < 1e-6, "heads epoch moved %.3g %.3g",
              a.moved[1], a.moved[2]);
    CHECK_MSG(a.moved[3] > 0.99 * o.lr_backbone && a.moved[3] < 1.0001 * o.lr_backbone,
              "the backbone's first step moved a weight by at most %.6g, rate %.6g",
              a.moved[3], o.lr_backbone);
    fprintf(stderr, "adam: the backbone's first step moved weights by up to %.6g (rate %g)\n",
            a.moved[3], o.lr_backbone);
    free(a.prev);
out:
    fm_finetune_free(&ft);
    fm_model_close(&m);
}

/* Layer-wise rates: with lr_decay F each block trains at the next one's rate times F.
 * AdamW's first backbone step moves each parameter by its rate (above), so the largest
 * move within each of the three trained blocks is the rate, F and F^2 of it; with F = 1
 * all three move alike, and the option is refused outside (0, 1]. (Within 0.2%: the
 * moves are read back from float32 weights, which near 1 lie 1.2e-7 apart, 0.05% of
 * the smallest move.) */
typedef struct decay_probe {
    fm_finetune *ft;
    float *prev;
    int n;
    double moved[3][8]; /* conv256_1, conv256_2, conv256_down_out; per step */
    size_t off[4];      /* the three blocks' parameters in the flat vector */
} decay_probe;

static void on_decay_step(void *ctx, const fm_ft_progress *p)
{
    decay_probe *a = ctx;
    if (p->epoch_end || a->n >= 8)
        return;
    size_t count = 0;
    const float *q = fm_finetune_params(a->ft, &count, NULL);
    for (int b = 0; b < 3; b++) {
        double most = 0;
        for (size_t i = a->off[b]; i < a->off[b + 1]; i++)
            most = fmax(most, fabs((double)q[i] - a->prev[i]));
        a->moved[b][a->n] = most;
    }
    memcpy(a->prev, q, count * sizeof(float));
    a->n++;
}

static void test_lr_decay(synth *s)
{
    /* where blocks 11..13 lie: every tensor in fm_dlib_param's order, 16-float aligned */
    size_t off = 0, bounds[4] = {0};
    const int first = FM_DLIB_BLOCK0 + 4 * fm_ft_block_index("conv256_1");
    for (int k = 0; k < FM_DLIB_PARAMS; k++) {
        char name[64];
        int nd = 0, d[4];
        fm_dlib_param(k, name, &nd, d);
        if (k >= first && (k - first) % 4 == 0)
            bounds[(k - first) / 4] = off;
        off += ((size_t)d[0] * d[1] * d[2] * d[3] + 15) & ~(size_t)15;
    }
    bounds[3] = off;
    const double decays[2] = {0.5, 1.0};
    for (int v = 0; v < 2; v++) {
        fm_error err = {0};
        fm_model *m = NULL;
        fm_finetune *ft = NULL;
        fm_ft_opts o;
        first_step_opts(&o, "conv256_1");
        o.lr_decay = decays[v];
        decay_probe a = {0};
        memcpy(a.off, bounds, sizeof a.off);
        o.progress = on_decay_step;
        o.ctx = &a;
        fm_ft_set set = {24, s->img}, val = {8, s->img + 24};
        CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
        CHECK(m && fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        if (!ft) {
            fm_model_close(&m);
            continue;
        }
        size_t count = 0;
        const float *p = fm_finetune_params(ft, &count, NULL);
        a.ft = ft;
        a.prev = malloc(count * sizeof(float));
        memcpy(a.prev, p, count * sizeof(float));
        CHECK(fm_finetune_run(ft, &set, &val, v ? "decay1" : "decay", NULL, &err) == FM_OK);
        CHECK(a.n == 6);
        for (int b = 0; b < 3; b++) {
            const double rate = o.lr_backbone * pow(o.lr_decay, 2 - b);
            CHECK_MSG(a.moved[b][3] > 0.99 * rate && a.moved[b][3] < 1.002 * rate,
                      "lr_decay %g: block %d's first step moved a weight by at most %.6g, "
                      "rate %.6g", o.lr_decay, 11 + b, a.moved[b][3], rate);
        }
        fprintf(stderr, "lr_decay %g: first backbone step, most moved in conv256_1 / "
                "conv256_2 / conv256_down_out %.3g / %.3g / %.3g\n", o.lr_decay,
                a.moved[0][3], a.moved[1][3], a.moved[2][3]);
        free(a.prev);
        fm_finetune_free(&ft);
        fm_model_close(&m);
    }
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_ft_opts o;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    const double bad[3] = {0.0, -0.5, 1.5};
    for (int i = 0; i < 3; i++) {
        fm_ft_opts_defaults(&o);
        o.lr_decay = bad[i];
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    }
    fm_model_close(&m);
}

/* ---- loss weights ------------------------------------------------------------------ */

/* Loss and gradients of a batch of n faces with the given loss weights (age, gender,
 * ethnicity) and label smoothing; *g is malloc'd (g NULL: loss only). Every call
 * starts from the same parameters (the heads' initial values are a function of the
 * seed). */
static int batch_loss_drop(const double w[3], double smoothing, double drop, double below,
                           const float *x, const fm_utk_label *lab, int n, double *loss,
                           float **g, size_t *count);
static int batch_loss(const double w[3], double smoothing, const float *x,
                      const fm_utk_label *lab, int n, double *loss, float **g, size_t *count)
{
    return batch_loss_drop(w, smoothing, 0, 1, x, lab, n, loss, g, count);
}

/* batch_loss with drop_hardest set to drop and drop_below to below. */
static int batch_loss_drop(const double w[3], double smoothing, double drop, double below,
                           const float *x, const fm_utk_label *lab, int n, double *loss,
                           float **g, size_t *count)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_ft_opts o;
    fm_ft_opts_defaults(&o);
    o.batch = n;
    o.train_from = fm_ft_block_index("conv256_down_out");
    o.hidden = 32;
    o.dropout = 0;
    o.age_weight = w[0];
    o.gender_weight = w[1];
    o.race_weight = w[2];
    o.label_smoothing = smoothing;
    o.drop_hardest = drop;
    o.drop_below = below;
    int ok = fm_model_open(&m, model_path, 0, &err) == FM_OK &&
             fm_finetune_new(&ft, m, &o, &err) == FM_OK;
    int H = 0, W = 0;
    if (ok)
        fm_finetune_input_size(ft, &H, &W);
    ok = ok && H == 150 && W == 150 && /* the size of x */
         fm_finetune_loss(ft, x, lab, n, g != NULL, loss, &err) == FM_OK;
    if (ok && g) {
        size_t from = 0;
        fm_finetune_params(ft, count, &from);
        *g = malloc(*count * sizeof(float));
        memcpy(*g, fm_finetune_grads(ft), *count * sizeof(float));
    } else if (!ok) {
        fprintf(stderr, "  weights %g %g %g, smoothing %g: %s\n", w[0], w[1], w[2],
                smoothing, err.msg);
    }
    fm_finetune_free(&ft);
    fm_model_close(&m);
    return ok;
}

/* The loss is age_weight x age + gender_weight x gender + race_weight x ethnicity, and
 * so are the gradients: the three parts are measured by raising one weight at a time,
 * then a mixed setting must equal their weighted sum. */
static void test_loss_weights(void)
{
    const double w[5][3] = {{1, 1, 1}, {2, 1, 1}, {1, 2, 1}, {1, 1, 2}, {0.5, 3, 1.5}};
    int H = 150, W = 150;
    float *x = malloc((size_t)2 * 3 * H * W * sizeof(float));
    for (size_t i = 0; i < (size_t)2 * 3 * H * W; i++)
        x[i] = (float)(fm_test_rng_uniform(&rng) * 2 - 1);
    fm_utk_label lab[2] = {{33, 0, 1}, {8, 1, 3}};
    double loss[5] = {0};
    float *g[5] = {NULL};
    size_t count[5] = {0};
    int ok = 1;
    for (int k = 0; k < 5; k++)
        ok &= batch_loss(w[k], 0, x, lab, 2, &loss[k], &g[k], &count[k]);
    CHECK(ok);
    if (!ok)
        goto out;
    CHECK(count[0] > 0 && count[1] == count[0] && count[2] == count[0] &&
          count[3] == count[0] && count[4] == count[0]);
    double part[3], want = 0;
    for (int h = 0; h < 3; h++) {
        part[h] = loss[1 + h] - loss[0];
        want += w[4][h] * part[h];
    }
    /* fresh heads answer almost uniformly: about log 117, log 5 and log 2 per face */
    CHECK_MSG(part[0] > part[2] && part[2] > part[1] && part[1] > 0.2 && part[1] < 2,
              "loss parts age %.4f gender %.4f ethnicity %.4f", part[0], part[1], part[2]);
    CHECK_MSG(fabs(loss[0] - (part[0] + part[1] + part[2])) < 1e-4 * loss[0],
              "loss %.6f, parts sum to %.6f", loss[0], part[0] + part[1] + part[2]);
    CHECK_MSG(fabs(loss[4] - want) < 1e-4 * want, "weighted loss %.6f, want %.6f", loss[4],
              want);
    double worst = 0, scale = 0;
    for (size_t j = 0; j < count[0]; j++) {
        double gw = 0;
        for (int h = 0; h < 3; h++)
            gw += w[4][h] * ((double)g[1 + h][j] - g[0][j]);
        worst = fmax(worst, fabs(gw - g[4][j]));
        scale = fmax(scale, fabs(g[4][j]));
    }
    CHECK_MSG(scale > 0 && worst < 1e-3 * scale,
              "weighted gradients: worst difference %.3g of largest %.3g", worst, scale);
    fprintf(stderr, "loss weights: parts %.4f %.4f %.4f, gradients worst %.2g of %.2g\n",
            part[0], part[1], part[2], worst, scale);
out:
    for (int k = 0; k < 5; k++)
        free(g[k]);
    free(x);
}

/* Label smoothing moves the gender and ethnicity targets towards uniform and leaves
 * the age target alone. The loss is linear in the targets, so for one face of labels
 * (g, r): L_eps(g, r) = (1 - eps) L_0(g, r) + eps x the mean of L_0 over all ten
 * (gender, ethnicity) labels, with the age term unchanged (smoothing it too, or only
 * one of the two heads, breaks the equation). */
static void test_label_smoothing(void)
{
    const double w[3] = {1, 1, 1};
    float *x = malloc((size_t)3 * 150 * 150 * sizeof(float));
    for (size_t i = 0; i < (size_t)3 * 150 * 150; i++)
        x[i] = (float)(fm_test_rng_uniform(&rng) * 2 - 1);
    double l0[2][5], mean = 0;
    int ok = 1;
    for (int g = 0; g < 2; g++)
        for (int r = 0; r < 5; r++) {
            fm_utk_label lab = {33, g, r};
            ok &= batch_loss(w, 0, x, &lab, 1, &l0[g][r], NULL, NULL);
            mean += l0[g][r] / 10;
        }
    const double eps[2] = {0.1, 0.5};
    const int cases[3][2] = {{0, 0}, {1, 3}, {0, 4}};
    double worst = 0, moved = 0;
    for (int e = 0; e < 2 && ok; e++)
        for (int c = 0; c < 3; c++) {
            const int g = cases[c][0], r = cases[c][1];
            fm_utk_label lab = {33, g, r};
            double l = 0;
            ok &= batch_loss(w, eps[e], x, &lab, 1, &l, NULL, NULL);
            const double want = (1 - eps[e]) * l0[g][r] + eps[e] * mean;
            worst = fmax(worst, fabs(l - want) / want);
            moved = fmax(moved, fabs(l - l0[g][r]));
        }
    CHECK(ok);
    CHECK_MSG(worst < 1e-5, "smoothed loss off by %.3g (relative)", worst);
    CHECK_MSG(moved > 1e-3, "smoothing moved the loss by %.3g only", moved);
    fprintf(stderr, "label smoothing: worst relative error %.2g, loss moved up to %.4f\n",
            worst, moved);
    free(x);
}

/* drop_hardest leaves a training batch's hardest gender face out of the gender loss and
 * its hardest ethnicity face out of the ethnicity loss, and scales the rest by
 * n / (n - 1): with each face's three loss parts measured alone (as in
 * test_loss_weights), a batch of four at share 0.25 must give the mean age part plus
 * the mean gender part of the three faces other than the one of highest gender part,
 * and likewise for ethnicity. The loss without gradients (the hold-out's) keeps every
 * face. */
static void test_drop_hardest(void)
{
    enum { N = 4 };
    const size_t img = (size_t)3 * 150 * 150;
    float *x = malloc(N * img * sizeof(float));
    for (size_t i = 0; i < N * img; i++)
        x[i] = (float)(fm_test_rng_uniform(&rng) * 2 - 1);
    const fm_utk_label lab[N] = {{33, 0, 1}, {8, 1, 3}, {61, 1, 0}, {25, 0, 4}};
    const double w1[3] = {1, 1, 1}, wg[3] = {1, 2, 1}, wr[3] = {1, 1, 2};
    double part[3][N];
    int ok = 1;
    for (int i = 0; i < N && ok; i++) {
        double l1 = 0, lg = 0, lr = 0;
        ok &= batch_loss(w1, 0.1, x + i * img, &lab[i], 1, &l1, NULL, NULL) &&
              batch_loss(wg, 0.1, x + i * img, &lab[i], 1, &lg, NULL, NULL) &&
              batch_loss(wr, 0.1, x + i * img, &lab[i], 1, &lr, NULL, NULL);
        part[1][i] = lg - l1;
        part[2][i] = lr - l1;
        part[0][i] = l1 - part[1][i] - part[2][i];
    }
    double want = 0, all = 0;
    int hard[3] = {-1, -1, -1};
    for (int h = 0; h < 3 && ok; h++) {
        for (int i = 0; i < N; i++)
            if (h && (hard[h] < 0 || part[h][i] > part[h][hard[h]]))
                hard[h] = i;
        for (int i = 0; i < N; i++) {
            all += part[h][i] / N;
            if (i != hard[h])
                want += part[h][i] / (h ? N - 1 : N);
        }
    }
    double dropped = 0, kept = 0, plain = 0, none = 0;
    float *g = NULL, *g2 = NULL;
    size_t count = 0;
    /* fresh heads give every label about 1/2 (gender) and 1/5 (ethnicity): with
     * drop_below 0.01 no face may go */
    ok = ok && batch_loss_drop(w1, 0.1, 0.25, 1, x, lab, N, &dropped, &g, &count) &&
         batch_loss_drop(w1, 0.1, 0.25, 1, x, lab, N, &kept, NULL, NULL) &&
         batch_loss_drop(w1, 0.1, 0, 1, x, lab, N, &plain, NULL, NULL) &&
         batch_loss_drop(w1, 0.1, 0.25, 0.01, x, lab, N, &none, &g2, &count);
    CHECK(ok);
    if (ok) {
        CHECK_MSG(fabs(dropped - want) < 1e-4 * want,
                  "batch loss with the hardest left out %.6f, want %.6f (all faces %.6f)",
                  dropped, want, all);
        CHECK_MSG(fabs(dropped - all) > 1e-3, "leaving out the hardest changed nothing");
        CHECK_MSG(fabs(kept - all) < 1e-4 * all && fabs(plain - all) < 1e-4 * all,
                  "loss alone %.6f / without drop %.6f, want every face %.6f", kept, plain,
                  all);
        CHECK_MSG(fabs(none - all) < 1e-4 * all,
                  "drop_below 0.01 left a face out: loss %.6f, every face %.6f", none, all);
        fprintf(stderr,
                "drop hardest: gender drops face %d, ethnicity face %d; loss %.5f "
                "(every face %.5f)\n",
                hard[1], hard[2], dropped, all);
    }
    free(g);
    free(g2);
    free(x);
}

/* SHA-256 over a model file's tensors as models/FORMAT.md defines the identity of
 * trained weights: every name with its NUL, then its data, in directory order. */
static void file_weights_digest(const fm_model *m, char hex[65])
{
    fm_sha256 s;
    fm_sha256_init(&s);
    for (size_t i = 0; i < fm_model_tensor_count(m); i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        fm_sha256_update(&s, t->name, t->name_len + 1);
        fm_sha256_update(&s, t->data, (size_t)t->nbytes);
    }
    uint8_t d[FM_SHA256_BYTES];
    fm_sha256_final(&s, d);
    fm_sha256_hex(d, hex);
}

/* The written backbone: every tensor of the base, the trained ones with the trainer's
 * values, and the identity computed in memory equals the digest of the file. */
static void test_write_backbone(void)
{
    fm_error err = {0};
    fm_model *m = NULL, *out = NULL;
    fm_finetune *ft = NULL;
    fm_model_writer *w = NULL;
    fm_ft_opts o;
    fm_ft_opts_defaults(&o);
    o.train_from = fm_ft_block_index("conv256_down_out");
    char path[4300], base_hex[65], mem_hex[65], file_hex[65];
    snprintf(path, sizeof path, "%s/written.fmm", tmpdir);
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    CHECK(m && fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    if (!ft)
        goto out;
    file_weights_digest(m, base_hex);
    CHECK(fm_finetune_weights_digest(ft, mem_hex, &err) == FM_OK);
    CHECK_MSG(strcmp(mem_hex, base_hex) == 0, "untrained: %s, base %s", mem_hex, base_hex);
    /* move every trained backbone weight a little, as training would */
    size_t count = 0, from = 0;
    float *p = fm_finetune_params(ft, &count, &from);
    CHECK(p && from > 0 && from < count);
    for (size_t i = from; i < count; i++)
        p[i] += 1e-3f * (float)((i % 7) + 1);
    CHECK(fm_finetune_weights_digest(ft, mem_hex, &err) == FM_OK);
    CHECK(strcmp(mem_hex, base_hex) != 0);
    CHECK((w = fm_model_writer_new()) != NULL);
    CHECK(w && fm_finetune_copy_meta(m, NULL, w, &err) == FM_OK &&
          fm_finetune_write_backbone(ft, w, &err) == FM_OK &&
          fm_model_writer_save(w, path, &err) == FM_OK);
    CHECK(fm_model_open(&out, path, 0, &err) == FM_OK);
    if (!out)
        goto out;
    file_weights_digest(out, file_hex);
    CHECK_MSG(strcmp(mem_hex, file_hex) == 0, "in memory %s, file %s", mem_hex, file_hex);
    size_t same = 0, changed = 0;
    CHECK(fm_model_tensor_count(out) == fm_model_tensor_count(m));
    for (size_t i = 0; i < fm_model_tensor_count(out) && i < fm_model_tensor_count(m); i++) {
        const fm_model_tensor_info *a = fm_model_tensor_at(m, i), *b = fm_model_tensor_at(out, i);
        CHECK(strcmp(a->name, b->name) == 0 && a->nbytes == b->nbytes);
        if (strcmp(a->name, b->name) == 0 && a->nbytes == b->nbytes)
            *(memcmp(a->data, b->data, (size_t)a->nbytes) ? &changed : &same) += 1;
    }
    /* conv256_down_out (two convolutions with their scale/bias) changed, the rest not */
    CHECK_MSG(changed > 0 && same > changed, "%zu tensors changed, %zu kept", changed, same);
    fprintf(stderr, "write backbone: %zu tensors changed, %zu kept, identity %.16s...\n",
            changed, same, file_hex);
out:
    fm_model_writer_destroy(&w);
    fm_model_close(&out);
    fm_finetune_free(&ft);
    fm_model_close(&m);
    unlink(path);
}

/* align_zoom scales the base's template about the chip's centre: 1 keeps it, 0.8
 * brings every landmark 20% closer to the centre (the face smaller in the chip). */
static void test_align_zoom(void)
{
    fm_error err = {0};
    fm_model *m = NULL;
    const double *base = NULL;
    size_t n = 0;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    CHECK(m && fm_model_meta_f64_array(m, "align.template", &base, &n, &err) == FM_OK &&
          n == 10);
    if (!base || n != 10) {
        fm_model_close(&m);
        return;
    }
    const double zooms[3] = {1, 0.8, 1.25};
    for (int z = 0; z < 3; z++) {
        fm_finetune *ft = NULL;
        fm_ft_opts o;
        fm_ft_opts_defaults(&o);
        o.batch = 2;
        o.align_zoom = zooms[z];
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        const float *t = fm_finetune_template(ft);
        double worst = 0;
        for (int i = 0; t && i < 10; i++) {
            /* about the centre of 150 x 150 chips, 74.5 in pixel-centre coordinates */
            double want = 74.5 + zooms[z] * (base[i] - 74.5);
            worst = fmax(worst, fabs(t[i] - want));
        }
        CHECK_MSG(t && worst < 1e-4, "zoom %g: worst %.3g px", zooms[z], worst);
        /* eye distance scales with the zoom */
        if (t)
            CHECK(fabs((t[2] - t[0]) - zooms[z] * (base[2] - base[0])) < 1e-4);
        fm_finetune_free(&ft);
    }
    fm_model_close(&m);
}

/* --degrade: with every training face damaged the trained weights differ from the
 * same run undamaged (same seed, so only the damage differs) and stay finite; the
 * evaluation faces are never damaged. */
static void test_degrade_augment(synth *s)
{
    fm_error err = {0};
    fm_model *m = NULL;
    /* 0: no damage; 1: every face damaged, any kind; 2: the same with the seven kinds
     * named (the same draws: erase is not among the default's); 3: grayscale only;
     * 4: erase only */
    float *params[5] = {NULL, NULL, NULL, NULL, NULL};
    size_t count[5] = {0, 0, 0, 0, 0};
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    for (int k = 0; k < 5 && m; k++) {
        fm_ft_opts o;
        small_opts(&o);
        o.max_epochs = 1;
        o.degrade = k > 0;
        if (k == 2)
            CHECK(fm_ft_damage_parse("down,jpeg,blur,gray,rot,exposure,occlude",
                                     &o.degrade_kinds, &err) == FM_OK);
        if (k == 3)
            CHECK(fm_ft_damage_parse("gray", &o.degrade_kinds, &err) == FM_OK &&
                  o.degrade_kinds == 1u << FM_FT_DAMAGE_GRAY);
        if (k == 4)
            CHECK(fm_ft_damage_parse("erase", &o.degrade_kinds, &err) == FM_OK &&
                  o.degrade_kinds == 1u << FM_FT_DAMAGE_ERASE);
        fm_ft_set set = {24, s->img};
        fm_ft_set val = {8, s->img + 24};
        fm_finetune *ft = NULL;
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        if (!ft)
            break;
        CHECK_MSG(fm_finetune_run(ft, &set, &val, "degrade", NULL, &err) == FM_OK, "%s",
                  fm_error_text(&err));
        float *p = fm_finetune_params(ft, &count[k], NULL);
        params[k] = malloc(count[k] * sizeof(float));
        memcpy(params[k], p, count[k] * sizeof(float));
        fm_finetune_free(&ft);
    }
    if (params[0] && params[1] && count[0] == count[1]) {
        size_t differ = 0, finite = 0;
        for (size_t i = 0; i < count[0]; i++) {
            differ += params[0][i] != params[1][i];
            finite += isfinite(params[1][i]);
        }
        /* a deterministic trainer (test_resume): any difference is the damage's */
        CHECK_MSG(differ > 0, "%zu of %zu weights differ", differ, count[0]);
        fprintf(stderr, "degrade: %zu of %zu trained weights differ\n", differ, count[0]);
        CHECK(finite == count[1]);
    } else {
        CHECK(0);
    }
    size_t same = 0, differ3 = 0, differ4 = 0, differ40 = 0;
    for (size_t i = 0; params[0] && params[1] && params[2] && params[3] && params[4] &&
                       i < count[1] && count[1] == count[0] && count[1] == count[2] &&
                       count[1] == count[3] && count[1] == count[4];
         i++) {
        same += params[1][i] == params[2][i];
        differ3 += params[1][i] != params[3][i];
        differ4 += params[1][i] != params[4][i];
        differ40 += params[0][i] != params[4][i];
    }
    CHECK_MSG(count[1] > 0 && same == count[1], "all seven kinds named: %zu of %zu weights as "
              "with the default set", same, count[1]);
    CHECK_MSG(differ3 > 0, "grayscale only: %zu weights differ from any kind", differ3);
    CHECK_MSG(differ4 > 0 && differ40 > 0, "erase only: %zu weights differ from any kind, "
              "%zu from no damage", differ4, differ40);
    unsigned set = 0;
    CHECK(fm_ft_damage_parse("gray,nope", &set, &err) == FM_ERR_INVALID &&
          strstr(err.msg, "nope") && set == 0);
    CHECK(fm_ft_damage_parse("", &set, &err) == FM_ERR_INVALID);
    CHECK(fm_ft_damage_parse("occlude,down", &set, &err) == FM_OK &&
          set == ((1u << FM_FT_DAMAGE_OCCLUDE) | (1u << FM_FT_DAMAGE_DOWN)));
    CHECK(fm_ft_damage_parse("erase,rot", &set, &err) == FM_OK &&
          set == ((1u << FM_FT_DAMAGE_ERASE) | (1u << FM_FT_DAMAGE_ROT)));
    CHECK(fm_ft_damage_parse("erased", &set, &err) == FM_ERR_INVALID && strstr(err.msg, "erase"));
    for (int k = 0; k < 5; k++)
        free(params[k]);
    fm_model_close(&m);
}

/* fm_ft_erase: one rectangle of 5-30% of the chip, 0.3-3.3 times as wide as high,
 * inside the chip, everything outside it untouched; a solid fill is one gray level,
 * noise is not; the draws at their ends put it at the chip's corners. */
static void test_erase(void)
{
    enum { W = 150, H = 120 };
    static uint8_t chip[W * H * 3], orig[W * H * 3];
    for (size_t i = 0; i < sizeof orig; i++)
        orig[i] = (uint8_t)(i * 7 % 251);
    const double ends[4] = {0.0, 0.25, 0.6, 0.999999};
    int checked = 0;
    for (int a = 0; a < 4; a++)
        for (int s = 0; s < 4; s++)
            for (int px = 0; px < 4; px++)
                for (int fill = 0; fill < 2; fill++) {
                    const double u[6] = {ends[a], ends[s], ends[px], ends[3 - px],
                                         fill ? 0.75 : 0.25, 0.3 + 0.1 * a};
                    int box[4] = {-1, -1, -1, -1};
                    memcpy(chip, orig, sizeof chip);
                    fm_ft_erase(chip, W, H, u, box);
                    const int w = box[2] - box[0], h = box[3] - box[1];
                    CHECK(box[0] >= 0 && box[1] >= 0 && box[2] <= W && box[3] <= H && w > 0 &&
                          h > 0);
                    const double area = (double)w * h / (W * H), aspect = (double)w / W * H / h;
                    CHECK_MSG(area > 0.045 && area < 0.31, "area %.4f", area);
                    CHECK_MSG(aspect > 0.29 && aspect < 3.4, "aspect %.3f", aspect);
                    if (px == 0)
                        CHECK(box[0] == 0 && box[3] == H);
                    if (px == 3)
                        CHECK(box[2] == W && box[1] == 0);
                    size_t outside = 0, first = 0, varied = 0;
                    const uint8_t v0 = chip[((size_t)box[1] * W + box[0]) * 3];
                    for (int y = 0; y < H; y++)
                        for (int x = 0; x < W; x++)
                            for (int c = 0; c < 3; c++) {
                                const size_t i = ((size_t)y * W + x) * 3 + c;
                                const int in = x >= box[0] && x < box[2] && y >= box[1] &&
                                               y < box[3];
                                if (!in) {
                                    outside += chip[i] != orig[i];
                                    continue;
                                }
                                first++;
                                varied += chip[i] != v0;
                            }
                    CHECK_MSG(outside == 0, "%zu bytes outside the rectangle changed", outside);
                    CHECK(first == (size_t)w * h * 3);
                    if (fill == 0)
                        CHECK_MSG(varied == 0 && v0 == (uint8_t)(u[5] * 256),
                                  "solid fill: %zu bytes differ", varied);
                    else
                        CHECK_MSG(varied > first / 2, "noise: %zu of %zu bytes differ", varied,
                                  first);
                    checked++;
                }
    CHECK(checked == 128);
}

/* --init-heads: a trainer started from a heads file holds exactly that file's heads
 * (standardisation included) and starts its training from them: its first epoch's
 * loss is below a trainer's with new heads; a file of another shape is refused. */
static void test_init_heads(synth *s)
{
    fm_error err = {0};
    fm_model *m = NULL;
    char path[4300];
    snprintf(path, sizeof path, "%s/init_heads.fmm", tmpdir);
    fm_ft_set set = {24, s->img};
    fm_ft_set val = {8, s->img + 24};
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    if (!m)
        return;
    /* A: two epochs from new heads, written out */
    fm_ft_opts o;
    small_opts(&o);
    o.max_epochs = 2;
    o.patience = 2;
    track ta = {0};
    o.progress = on_progress;
    o.ctx = &ta;
    fm_finetune *ft = NULL;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    if (ft) {
        CHECK_MSG(fm_finetune_run(ft, &set, &val, "init", NULL, &err) == FM_OK, "%s",
                  fm_error_text(&err));
        CHECK(write_heads(ft, path));
    }
    fm_finetune_free(&ft);

    /* B holds the file's heads, tensor by tensor, at the end of its parameters */
    o.init_heads = path;
    CHECK_MSG(fm_finetune_new(&ft, m, &o, &err) == FM_OK, "%s", fm_error_text(&err));
    fm_model *h = NULL;
    CHECK(fm_model_open(&h, path, 0, &err) == FM_OK);
    if (ft && h) {
        static const char *const names[] = {"feat.mean",   "feat.std",      "shared.0.weight",
                                            "shared.0.bias", "age.weight",  "age.bias",
                                            "gender.weight", "gender.bias", "race.weight",
                                            "race.bias"};
        const int n_names = (int)(sizeof names / sizeof names[0]);
        size_t total = 0, heads = 0, differ = 0;
        float *p = fm_finetune_params(ft, &total, NULL);
        for (int k = 0; k < n_names; k++)
            if (fm_model_tensor(h, names[k])) /* each on a 16-float boundary */
                heads += (fm_model_tensor(h, names[k])->count + 15) & ~(size_t)15;
        CHECK(heads > 0 && heads < total);
        size_t at = total - heads;
        for (int k = 0; k < n_names && heads < total; k++) {
            const fm_model_tensor_info *ti = fm_model_tensor(h, names[k]);
            const float *d = ti ? ti->data : NULL;
            for (size_t j = 0; ti && d && j < ti->count; j++)
                differ += p[at + j] != d[j];
            at += ti ? (ti->count + 15) & ~(size_t)15 : 0;
        }
        CHECK_MSG(differ == 0, "%zu of %zu heads values differ from the file", differ, heads);
    }
    fm_model_close(&h);
    fm_finetune_free(&ft);

    /* one epoch with the backbone from the first step: from the file's heads the loss
     * is lower than from new ones */
    double first[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        small_opts(&o);
        o.max_epochs = 1;
        o.head_epochs = 0;
        o.init_heads = k ? path : NULL;
        track t = {0};
        o.progress = on_progress;
        o.ctx = &t;
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        if (ft)
            CHECK_MSG(fm_finetune_run(ft, &set, &val, "init", NULL, &err) == FM_OK, "%s",
                      fm_error_text(&err));
        first[k] = t.first_loss;
        fm_finetune_free(&ft);
    }
    CHECK_MSG(first[1] > 0 && first[1] < 0.9 * first[0] && first[1] < 1.05 * ta.last_loss,
              "first-epoch loss %.4f from the file's heads, %.4f from new ones, %.4f in the "
              "last epoch of the heads' own run", first[1], first[0], ta.last_loss);
    fprintf(stderr, "init heads: first-epoch loss %.4f (new heads %.4f; the file's run ended "
            "at %.4f)\n", first[1], first[0], ta.last_loss);

    /* another shape: refused, naming the option */
    small_opts(&o);
    o.hidden = 32;
    o.init_heads = path;
    CHECK(fm_finetune_new(&ft, m, &o, &err) != FM_OK && !ft &&
          strstr(err.msg, "--init-heads"));
    fm_model_close(&m);
}

/* Distillation: with teacher_weight 1 and a teacher that calls every face the other
 * gender (probability 1), the trainer learns the teacher's gender, not the labels':
 * held-out gender accuracy against the labels ends below 30% where the labels alone
 * give over 90% (test_converges); with teacher_weight 0 the answers are ignored (the
 * same weights as without them). */
static void test_teacher(synth *s)
{
    fm_error err = {0};
    fm_model *m = NULL;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    if (!m)
        return;
    static fm_ft_soft soft[NIMG];
    static fm_ft_image img[NIMG];
    for (int i = 0; i < NIMG; i++) {
        img[i] = s->img[i];
        soft[i].age = (float)s->img[i].label.age;
        soft[i].age_std = 2;
        soft[i].gender[s->img[i].label.gender] = 0;
        soft[i].gender[1 - s->img[i].label.gender] = 1;
        soft[i].race[s->img[i].label.race] = 1;
        img[i].soft = &soft[i];
    }
    fm_ft_set set = {NIMG, img};
    fm_ft_progress best;
    fm_ft_opts o;
    small_opts(&o);
    o.max_epochs = 4;
    o.patience = 4;
    o.teacher_weight = 1;
    o.teacher_id = "flipped";
    fm_finetune *ft = NULL;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
    if (ft) {
        CHECK_MSG(fm_finetune_run(ft, &set, &set, "teacher", &best, &err) == FM_OK, "%s",
                  fm_error_text(&err));
        CHECK_MSG(best.val_gender_acc < 0.3, "gender against the labels %.3f after learning "
                  "a teacher that flips it", best.val_gender_acc);
        fprintf(stderr, "teacher: gender against the labels %.3f (flipped teacher), "
                "ethnicity %.3f\n", best.val_gender_acc, best.val_race_acc);
    }
    fm_finetune_free(&ft);

    /* weight 0: the answers change nothing */
    float *params[2] = {NULL, NULL};
    size_t count[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        small_opts(&o);
        o.max_epochs = 1;
        fm_ft_set sub = {24, k ? img : s->img};
        fm_ft_set val = {8, s->img + 24};
        CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_OK);
        if (!ft)
            break;
        CHECK(fm_finetune_run(ft, &sub, &val, "teacher0", NULL, &err) == FM_OK);
        float *p = fm_finetune_params(ft, &count[k], NULL);
        params[k] = malloc(count[k] * sizeof(float));
        memcpy(params[k], p, count[k] * sizeof(float));
        fm_finetune_free(&ft);
    }
    CHECK(params[0] && params[1] && count[0] == count[1] &&
          memcmp(params[0], params[1], count[0] * sizeof(float)) == 0);
    free(params[0]);
    free(params[1]);
    small_opts(&o);
    o.teacher_weight = 1.5;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_model_close(&m);
}

static void test_bad_options(void)
{
    fm_error err = {0};
    fm_model *m = NULL;
    fm_finetune *ft = NULL;
    fm_ft_opts o;
    CHECK(fm_model_open(&m, model_path, 0, &err) == FM_OK);
    fm_ft_opts_defaults(&o);
    o.batch = 0;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    o.train_from = 15;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    o.gender_weight = 0;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    o.race_weight = -1;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    o.align_zoom = 0.4;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    o.align_zoom = 1.6;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    /* another template needs other weights: the file's identity is their digest */
    o.align_zoom = 0.9;
    o.train_from = FM_FT_BLOCKS;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft &&
          strstr(err.msg, "--align-zoom"));
    fm_ft_opts_defaults(&o);
    o.align_zoom = 0.9;
    o.lr_backbone = 0;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    o.label_smoothing = -0.1;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    o.label_smoothing = 1.5;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    CHECK(o.drop_hardest == 0);
    o.drop_hardest = -0.01;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    o.drop_hardest = 0.51;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    CHECK(o.drop_below == 1);
    o.drop_below = 0;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    o.drop_below = 1.01;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    fm_ft_opts_defaults(&o);
    CHECK(o.degrade == 0);
    o.degrade = 1.5;
    CHECK(fm_finetune_new(&ft, m, &o, &err) == FM_ERR_INVALID && !ft);
    CHECK(fm_ft_block_index("conv128_down") == 7 && fm_ft_block_index("stem") == FM_FT_STEM &&
          fm_ft_block_index("heads") == FM_FT_BLOCKS && fm_ft_block_index("nope") == -2);
    CHECK(strcmp(fm_ft_block_name(13), "conv256_down_out") == 0);
    fm_model_close(&m);
}

/* Runs one part and says how long it took (the parts' costs, for keeping CI short). */
#define TIMED(call)                                                                    \
    do {                                                                               \
        double t0_ = fm_now_ms();                                                      \
        call;                                                                          \
        printf("test_finetune: %-32s %6.1f s\n", #call, (fm_now_ms() - t0_) / 1e3);     \
    } while (0)

/* The parts, each a ctest test of its own so that they run side by side (the whole
 * takes minutes under the sanitizers): "basics" (forward, gradients, losses,
 * calibration, file writing, schedules), "train" (convergence, damages) and "resume"
 * (init heads, distillation, checkpoints). No argument runs all three. */
int main(int argc, char **argv)
{
    const char *part = argc > 1 ? argv[1] : "all";
    const int all = strcmp(part, "all") == 0, basics = all || strcmp(part, "basics") == 0;
    const int train = all || strcmp(part, "train") == 0, resume = all || strcmp(part, "resume") == 0;
    if (argc > 2 || !(basics || train || resume)) {
        fprintf(stderr, "usage: test_finetune [basics|train|resume]\n");
        return 2;
    }
    fm_test_source_path(model_path, sizeof model_path, "models/cache/dlib_resnet.fmm");
    if (access(model_path, R_OK) != 0)
        return fm_test_skip("test_finetune", "%s missing (run models/fetch)", model_path);
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "finetune") != 0)
        return 1;
    fm_nn_set_threads(1, NULL);
    synth *s = malloc(sizeof *s);
    for (int i = 0; i < NIMG; i++)
        make_face(s, i);
    if (basics) {
        TIMED(test_bad_options());
        TIMED(test_forward());
        TIMED(test_gradients());
        TIMED(test_loss_weights());
        TIMED(test_label_smoothing());
        TIMED(test_drop_hardest());
        TIMED(test_erase());
        TIMED(test_fit_temperature());
        TIMED(test_write_backbone());
        TIMED(test_align_zoom());
        TIMED(test_schedules(s));
        TIMED(test_drop_counts(s));
        TIMED(test_adam_first_step(s));
        TIMED(test_lr_decay(s));
    }
    if (train) {
        TIMED(test_converges(s));
        TIMED(test_degrade_augment(s));
    }
    if (resume) {
        TIMED(test_init_heads(s));
        TIMED(test_teacher(s));
        TIMED(test_resume(s));
    }
    free(s);
    fm_test_remove_tree(tmpdir);
    return fm_test_done("test_finetune");
}
