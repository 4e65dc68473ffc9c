/* test_train.c - the heads trainer: its backward passes against finite differences
 * (dense, LeakyReLU and softmax cross-entropy, alone and through the whole network,
 * with and without dropout masks); it learns a small synthetic problem (features
 * generated from known labels) to near-zero error, deterministically for a seed; and
 * the file it writes, opened by fm_heads_open, predicts what it learnt. */
#include "fm_test.h"
#include "train-impl.h"

#include "facemill/heads.h"
#include "facemill/train.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rs = 0x1234567887654321ULL;
static double uni(void) /* [0, 1) */
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) / 9007199254740992.0;
}
static double gauss(void)
{
    double u = uni(), v = uni();
    return sqrt(-2 * log(1 - u)) * cos(6.283185307179586 * v);
}

/* Finite differences of the mean loss against fm_mlp_backward, on a random network. */
static void test_gradient(int n_hidden, const int *hidden, int use_mask)
{
    enum { N = 6, D = 7 };
    fm_mlp m;
    fm_error err = {0};
    CHECK(fm_mlp_init(&m, D, n_hidden, hidden, 0.2f, N, &err) == FM_OK);
    float *theta = malloc(m.n_params * sizeof *theta), *grad = malloc(m.n_params * sizeof *grad);
    float x[N * D], age[N * FM_HEADS_AGES];
    int gender[N], race[N];
    for (size_t i = 0; i < m.n_params; i++)
        theta[i] = (float)(0.4 * gauss());
    for (int i = 0; i < N * D; i++)
        x[i] = (float)gauss();
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int k = 0; k < FM_HEADS_AGES; k++)
            s += age[i * FM_HEADS_AGES + k] = (float)uni();
        for (int k = 0; k < FM_HEADS_AGES; k++)
            age[i * FM_HEADS_AGES + k] = (float)(age[i * FM_HEADS_AGES + k] / s);
        gender[i] = i % 2;
        race[i] = i % 5;
    }
    size_t mask_len = 0;
    for (int l = 1; l <= n_hidden; l++)
        mask_len += (size_t)N * (size_t)m.width[l];
    float *mask = NULL;
    if (use_mask && mask_len) {
        mask = malloc(mask_len * sizeof *mask);
        for (size_t i = 0; i < mask_len; i++)
            mask[i] = uni() < 0.3 ? 0.0f : 1.0f / 0.7f;
    }
    fm_mlp_targets t = {age, gender, race, 0.7f};
    fm_mlp_forward(&m, theta, x, N, mask);
    fm_mlp_backward(&m, theta, x, N, mask, &t, grad);
    double worst = 0;
    int checked = 0, skipped = 0;
    for (size_t i = 0; i < m.n_params; i += 1 + m.n_params / 150) {
        const float h = 1e-2f;
        float keep = theta[i];
        theta[i] = keep + h;
        fm_mlp_forward(&m, theta, x, N, mask);
        double lp = fm_mlp_backward(&m, theta, x, N, mask, &t, NULL);
        unsigned char sign[N * 16 * 2];
        int ns = 0;
        for (int l = 1; l <= n_hidden; l++)
            for (int q = 0; q < N * m.width[l]; q++)
                sign[ns++] = m.z[l][q] > 0;
        theta[i] = keep - h;
        fm_mlp_forward(&m, theta, x, N, mask);
        double lm = fm_mlp_backward(&m, theta, x, N, mask, &t, NULL);
        theta[i] = keep;
        /* a LeakyReLU kink inside [x - h, x + h] makes the difference meaningless */
        int kink = 0;
        ns = 0;
        for (int l = 1; l <= n_hidden; l++)
            for (int q = 0; q < N * m.width[l]; q++)
                kink |= sign[ns++] != (m.z[l][q] > 0);
        if (kink) {
            skipped++;
            continue;
        }
        double num = (lp - lm) / (2 * h);
        double d = fabs(num - grad[i]) / fmax(1e-3, fabs(num) + fabs(grad[i]));
        if (d > worst)
            worst = d;
        checked++;
    }
    fprintf(stderr, "gradient check, %d hidden layer(s)%s: %d parameters, largest "
            "relative difference %.2g (%d skipped: a LeakyReLU kink in reach)\n", n_hidden,
            mask ? ", dropout mask" : "", checked, worst, skipped);
    CHECK(checked > 100);
    CHECK_MSG(worst < 2e-2, "relative difference %g", worst);
    free(theta);
    free(grad);
    free(mask);
    fm_mlp_free(&m);
}

/* The pieces alone against hand-computed values. */
static void test_pieces(void)
{
    /* softmax cross-entropy: z = (0, ln 3) -> p = (1/4, 3/4); t = (0, 1) */
    float z[2] = {0, (float)log(3.0)}, t[2] = {0, 1}, dz[2];
    double l = fm_softmax_xent(z, t, 2, 0.5f, dz);
    CHECK(fabs(l - log(4.0 / 3.0)) < 1e-6);
    CHECK(fabs(dz[0] - 0.125) < 1e-6 && fabs(dz[1] + 0.125) < 1e-6);
    /* LeakyReLU backward */
    float zz[3] = {1, -1, 0}, g[3] = {2, 2, 2};
    fm_leaky_backward(zz, 0.1f, 3, g);
    CHECK(g[0] == 2 && fabs(g[1] - 0.2f) < 1e-7 && fabs(g[2] - 0.2f) < 1e-7);
    /* dense backward: y = x W^T, x [2,3], W [2,3] */
    float x[6] = {1, 2, 3, 4, 5, 6}, W[6] = {1, 0, -1, 2, 1, 0}, dy[4] = {1, 0, 0.5f, 2};
    float dW[6] = {0}, db[2] = {0}, dx[6];
    fm_dense_backward(dy, x, W, 2, 3, 2, dW, db, dx);
    /* dW = dy^T x: row0 = 1*x0 + 0.5*x1 = (3, 4.5, 6); row1 = 0*x0 + 2*x1 = (8, 10, 12) */
    const float wantW[6] = {3, 4.5f, 6, 8, 10, 12};
    for (int i = 0; i < 6; i++)
        CHECK(fabs(dW[i] - wantW[i]) < 1e-5);
    CHECK(fabs(db[0] - 1.5f) < 1e-6 && fabs(db[1] - 2) < 1e-6);
    /* dx = dy W: row0 = 1*W0 + 0*W1 = (1, 0, -1); row1 = 0.5*W0 + 2*W1 = (4.5, 2, -0.5) */
    const float wantx[6] = {1, 0, -1, 4.5f, 2, -0.5f};
    for (int i = 0; i < 6; i++)
        CHECK(fabs(dx[i] - wantx[i]) < 1e-5);
}

/* Features generated from labels: each class and age leaves a trace, plus noise. */
static void make_set(int n, int dim, float *x, fm_utk_label *lb)
{
    for (int i = 0; i < n; i++) {
        lb[i].age = (int)(uni() * 80);
        lb[i].gender = uni() < 0.5;
        lb[i].race = (int)(uni() * 5);
        float *r = x + (size_t)i * (size_t)dim;
        for (int j = 0; j < dim; j++)
            r[j] = (float)(0.02 * gauss());
        r[lb[i].gender] += 1.0f;
        r[2 + lb[i].race] += 1.0f;
        r[7] += (float)(lb[i].age / 40.0);
        r[8] += (float)((lb[i].age / 40.0) * (lb[i].age / 40.0));
        r[9] += 3.0f; /* an offset standardisation must remove */
    }
}

static void test_learns(const char *dir)
{
    enum { NT = 3000, NV = 400, DIM = 12 };
    float *xt = malloc(sizeof(float) * NT * DIM), *xv = malloc(sizeof(float) * NV * DIM);
    fm_utk_label *lt = malloc(sizeof *lt * NT), *lv = malloc(sizeof *lv * NV);
    make_set(NT, DIM, xt, lt);
    make_set(NV, DIM, xv, lv);
    fm_train_set ts = {NT, DIM, xt, lt}, vs = {NV, DIM, xv, lv};
    fm_train_opts o;
    fm_train_opts_defaults(&o);
    o.hidden[0] = 64;
    o.dropout = 0;
    o.age_sigma = 1.0;
    o.max_epochs = 60;
    o.lr = 3e-3;
    o.seed = 7;
    char path[4200], path2[4200];
    snprintf(path, sizeof path, "%s/synthetic.fmm", dir);
    snprintf(path2, sizeof path2, "%s/synthetic2.fmm", dir);
    fm_train_epoch best = {0};
    fm_error err = {0};
    for (int run = 0; run < 2; run++) {
        fm_model_writer *w = fm_model_writer_new();
        CHECK(fm_model_writer_add_str(w, "general.architecture", "heads", NULL) == FM_OK);
        fm_model_writer_add_str(w, "heads.backbone", "synthetic", NULL);
        fm_model_writer_add_str(w, "heads.feature", "embedding", NULL);
        fm_model_writer_add_i64(w, "heads.flip", 0, NULL);
        static const char *const g[] = {"male", "female"};
        static const char *const r[] = {"White", "Black", "Asian", "Indian", "Others"};
        fm_model_writer_add_str_array(w, "labels.gender", g, 2, NULL);
        fm_model_writer_add_str_array(w, "labels.race", r, 5, NULL);
        fm_status st = fm_train_heads(&ts, &vs, &o, w, &best, &err);
        CHECK_MSG(st == FM_OK, "%s", err.msg);
        CHECK(fm_model_writer_save(w, run ? path2 : path, &err) == FM_OK);
        fm_model_writer_destroy(&w);
    }
    fprintf(stderr, "synthetic: epoch %d, val age MAE %.3f, gender %.4f, race %.4f\n",
            best.epoch, best.val_age_mae, best.val_gender_acc, best.val_race_acc);
    CHECK(best.val_gender_acc > 0.995 && best.val_race_acc > 0.995);
    CHECK_MSG(best.val_age_mae < 1.0, "age MAE %g", best.val_age_mae);

    /* deterministic: the two runs wrote the same tensors */
    fm_model *a = NULL, *b = NULL;
    CHECK(fm_model_open(&a, path, 0, NULL) == FM_OK && fm_model_open(&b, path2, 0, NULL) == FM_OK);
    if (a && b) {
        CHECK(fm_model_tensor_count(a) == fm_model_tensor_count(b));
        for (size_t i = 0; i < fm_model_tensor_count(a); i++) {
            const fm_model_tensor_info *ta = fm_model_tensor_at(a, i);
            const fm_model_tensor_info *tb = fm_model_tensor(b, ta->name);
            CHECK(tb && tb->count == ta->count &&
                  memcmp(ta->data, tb->data, (size_t)ta->nbytes) == 0);
        }
    }
    fm_model_close(&a);
    fm_model_close(&b);

    /* the file, through fm_heads, predicts the validation set as well */
    fm_heads *h = NULL;
    CHECK_MSG(fm_heads_open(&h, path, 32, &err) == FM_OK, "%s", err.msg);
    if (h) {
        fm_attrs *at = malloc(sizeof *at * NV);
        CHECK(fm_heads_forward(h, xv, NV, at, &err) == FM_OK);
        double ae = 0;
        int gok = 0, rok = 0;
        for (int i = 0; i < NV; i++) {
            ae += fabs(at[i].age - lv[i].age);
            gok += at[i].gender == lv[i].gender;
            rok += at[i].race == lv[i].race;
        }
        CHECK_MSG(fabs(ae / NV - best.val_age_mae) < 1e-3, "MAE %g vs %g", ae / NV,
                  best.val_age_mae);
        CHECK(fabs((double)gok / NV - best.val_gender_acc) < 1e-9);
        CHECK(fabs((double)rok / NV - best.val_race_acc) < 1e-9);
        double fb = fm_heads_fallback_age(h), mean = 0;
        for (int i = 0; i < NT; i++)
            mean += lt[i].age;
        CHECK(fabs(fb - mean / NT) < 1e-9);
        free(at);
    }
    fm_heads_close(&h);
    unlink(path);
    unlink(path2);

    /* bad options and sets are refused */
    fm_model_writer *w = fm_model_writer_new();
    o.dropout = 1.0;
    CHECK(fm_train_heads(&ts, &vs, &o, w, NULL, NULL) == FM_ERR_INVALID);
    o.dropout = 0;
    fm_train_set empty = {0, DIM, xv, lv};
    CHECK(fm_train_heads(&ts, &empty, &o, w, NULL, NULL) == FM_ERR_INVALID);
    fm_model_writer_destroy(&w);
    free(xt);
    free(xv);
    free(lt);
    free(lv);
}

int main(void)
{
    char dir[4096];
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/facemill-test-train-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_pieces();
    const int h1[1] = {9}, h2[2] = {8, 5};
    test_gradient(0, NULL, 0);
    test_gradient(1, h1, 0);
    test_gradient(2, h2, 0);
    test_gradient(2, h2, 1);
    test_learns(dir);
    rmdir(dir);
    return fm_test_done("test_train");
}
