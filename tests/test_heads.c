/* test_heads.c - the attribute heads: a heads file written with random weights is
 * read back and its forward pass equals a naive double-precision computation of the
 * same layers (standardise, dense + LeakyReLU, three softmax heads, expected age and
 * spread); chunking over max_batch changes nothing; bad files are refused with
 * messages that name the problem. The network the trainers run: its backward pass
 * (0, 1 and 2 shared layers, with and without dropout masks, down to the raw
 * features) agrees with central finite differences of its loss, and a network written
 * with fm_heads_write opens as a file whose forward pass gives the same bits. */
#include "fm_test.h"
#include "fm_test_model.h"

#include "facemill/grad.h"
#include "facemill/heads.h"
#include "facemill/model.h"
#include "facemill/nn.h"
#include "facemill/result_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[4096];
/* the random weights of the heads files and the inputs */
static fm_test_rng rng = FM_TEST_RNG(88172645463325252ULL);

/* Naive forward of the file's layers for one feature vector, in double. */
static void naive(const fm_model *m, const float *x, int dim, fm_attrs *out)
{
    double h[1024], t[1024];
    const float *mean = fm_model_tensor(m, "feat.mean")->data;
    const float *sd = fm_model_tensor(m, "feat.std")->data;
    double alpha = 0;
    fm_model_meta_f64(m, "heads.leaky_alpha", &alpha, NULL);
    int in = dim;
    for (int j = 0; j < dim; j++)
        h[j] = ((double)x[j] - mean[j]) / sd[j];
    char name[64];
    for (int k = 0;; k++) {
        snprintf(name, sizeof name, "shared.%d.weight", k);
        const fm_model_tensor_info *w = fm_model_tensor(m, name);
        if (!w)
            break;
        snprintf(name, sizeof name, "shared.%d.bias", k);
        const float *b = fm_model_tensor(m, name)->data;
        int o = (int)w->dims[0];
        for (int i = 0; i < o; i++) {
            double s = b[i];
            for (int j = 0; j < in; j++)
                s += (double)w->data[(size_t)i * (size_t)in + (size_t)j] * h[j];
            t[i] = s > 0 ? s : alpha * s;
        }
        memcpy(h, t, (size_t)o * sizeof *h);
        in = o;
    }
    const char *hn[3] = {"age", "gender", "race"};
    const int hk[3] = {FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES};
    double p[3][FM_HEADS_AGES];
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s.weight", hn[k]);
        const float *w = fm_model_tensor(m, name)->data;
        snprintf(name, sizeof name, "%s.bias", hn[k]);
        const float *b = fm_model_tensor(m, name)->data;
        double mx = -1e300, s = 0;
        for (int i = 0; i < hk[k]; i++) {
            double z = b[i];
            for (int j = 0; j < in; j++)
                z += (double)w[(size_t)i * (size_t)in + (size_t)j] * h[j];
            p[k][i] = z;
            if (z > mx)
                mx = z;
        }
        for (int i = 0; i < hk[k]; i++)
            s += p[k][i] = exp(p[k][i] - mx);
        for (int i = 0; i < hk[k]; i++)
            p[k][i] /= s;
    }
    double age = 0, var = 0;
    for (int i = 0; i < FM_HEADS_AGES; i++)
        age += i * p[0][i];
    for (int i = 0; i < FM_HEADS_AGES; i++)
        var += p[0][i] * (i - age) * (i - age);
    out->age = (float)age;
    out->age_std = (float)sqrt(var);
    out->gender = p[1][1] > p[1][0];
    for (int i = 0; i < 2; i++)
        out->gender_probs[i] = (float)p[1][i];
    out->race = 0;
    for (int i = 0; i < 5; i++) {
        out->race_probs[i] = (float)p[2][i];
        if (p[2][i] > p[2][out->race])
            out->race = i;
    }
}

static void check_file(const char *path, int dim, int n_hidden, const int *hidden,
                       int max_batch)
{
    CHECK(fm_test_write_heads(&rng, path, "dlib_resnet npm:x sha512-y", "embedding", 1, dim,
                              n_hidden, hidden) == 0);
    fm_heads *h = NULL;
    fm_error err = {0};
    fm_status st = fm_heads_open(&h, path, max_batch, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    if (st)
        return;
    CHECK(fm_heads_input_dim(h) == dim);
    CHECK(fm_heads_feature(h) == FM_BACKBONE_EMBEDDING);
    CHECK(fm_heads_flip(h) == 1);
    CHECK(strcmp(fm_heads_backbone(h), "dlib_resnet npm:x sha512-y") == 0);
    CHECK(fm_heads_layers(h) == n_hidden);
    CHECK(fm_heads_hidden(h) == (n_hidden ? hidden[n_hidden - 1] : dim));
    CHECK(fabs(fm_heads_fallback_age(h) - 33.5) < 1e-12);
    CHECK(strcmp(fm_heads_gender_label(h, 1), "female") == 0);
    CHECK(strcmp(fm_heads_race_label(h, 3), "Indian") == 0);
    CHECK(fm_heads_race_label(h, 5) == NULL && fm_heads_gender_label(h, -1) == NULL);

    enum { N = 37 };
    float *x = malloc((size_t)N * (size_t)dim * sizeof *x);
    fm_attrs got[N], one;
    for (int i = 0; i < N * dim; i++)
        x[i] = 2.0f * (float)fm_test_rng_range(&rng, -1, 1);
    st = fm_heads_forward(h, x, N, got, &err);
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        fm_attrs want;
        naive(fm_heads_model(h), x + (size_t)i * (size_t)dim, dim, &want);
        double d = fabs(got[i].age - want.age) + fabs(got[i].age_std - want.age_std);
        double gs = 0, rs = 0;
        for (int k = 0; k < 2; k++) {
            d += fabs(got[i].gender_probs[k] - want.gender_probs[k]);
            gs += got[i].gender_probs[k];
        }
        for (int k = 0; k < 5; k++) {
            d += fabs(got[i].race_probs[k] - want.race_probs[k]);
            rs += got[i].race_probs[k];
        }
        if (d > worst)
            worst = d;
        CHECK(got[i].gender == want.gender && got[i].race == want.race);
        CHECK(fabs(gs - 1) < 1e-5 && fabs(rs - 1) < 1e-5);
        CHECK(got[i].age >= 0 && got[i].age <= 116 && got[i].age_std >= 0);
        /* one at a time gives the same as the batch */
        CHECK(fm_heads_forward(h, x + (size_t)i * (size_t)dim, 1, &one, NULL) == FM_OK);
        CHECK(fabs(one.age - got[i].age) < 1e-4);
    }
    CHECK_MSG(worst < 1e-3, "largest difference from the naive computation %g", worst);
    fprintf(stderr, "dim %d, %d layers, max_batch %d: largest difference %.3g\n", dim,
            n_hidden, max_batch, worst);
    CHECK(fm_heads_forward(h, x, 0, got, NULL) == FM_OK);
    CHECK(fm_heads_forward(h, x, -1, got, NULL) == FM_ERR_INVALID);
    free(x);
    fm_heads_close(&h);
    CHECK(h == NULL);
    fm_heads_close(&h);
    fm_heads_close(NULL);
}

/* A new writer holding the heads metadata (backbone "b", the feature given, no flip),
 * with the class labels when labels is set, and no tensor. */
static fm_model_writer *heads_writer(const char *feature, int labels)
{
    fm_model_writer *w = fm_model_writer_new();
    fm_model_writer_add_str(w, "general.architecture", "heads", NULL);
    fm_model_writer_add_str(w, "heads.backbone", "b", NULL);
    fm_model_writer_add_str(w, "heads.feature", feature, NULL);
    fm_model_writer_add_i64(w, "heads.flip", 0, NULL);
    fm_model_writer_add_f64(w, "heads.leaky_alpha", 0.1, NULL);
    if (labels) {
        fm_model_writer_add_str_array(w, "labels.gender", fm_result_gender_names, 2, NULL);
        fm_model_writer_add_str_array(w, "labels.race", fm_result_race_names, 5, NULL);
    }
    return w;
}

static void test_errors(const char *path)
{
    fm_heads *h = (fm_heads *)&h;
    fm_error err = {0};
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/missing.fmm", tmpdir);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_IO && h == NULL);
    CHECK(fm_heads_open(&h, path, 0, &err) == FM_ERR_INVALID && h == NULL);

    /* another architecture */
    fm_model_writer *w = fm_model_writer_new();
    fm_model_writer_add_str(w, "general.architecture", "dlib_resnet", NULL);
    snprintf(bad, sizeof bad, "%s/arch.fmm", tmpdir);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    fm_model_writer_destroy(&w);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_INVALID && h == NULL);
    CHECK_MSG(strstr(err.msg, "expected 'heads'") != NULL, "%s", err.msg);
    unlink(bad);

    /* layers that do not chain: write a file and replace one tensor's shape by
     * writing the fixture with a different dim for the heads */
    w = heads_writer("pooled", 1);
    fm_test_heads_tensor(&rng, w, "feat.mean", 8, 0, 1, 0);
    fm_test_heads_tensor(&rng, w, "feat.std", 8, 0, 0.1f, 1);
    fm_test_heads_tensor(&rng, w, "shared.0.weight", 6, 8, 1, 0);
    fm_test_heads_tensor(&rng, w, "shared.0.bias", 6, 0, 1, 0);
    fm_test_heads_tensor(&rng, w, "age.weight", FM_HEADS_AGES, 8, 1, 0); /* should be [117, 6] */
    snprintf(bad, sizeof bad, "%s/chain.fmm", tmpdir);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_FORMAT && h == NULL);
    CHECK_MSG(strstr(err.msg, "age.weight") != NULL, "%s", err.msg);
    fprintf(stderr, "layers that do not chain: %s\n", err.msg);
    /* a missing tensor */
    fm_model_writer_destroy(&w);
    w = heads_writer("pooled", 1);
    fm_test_heads_tensor(&rng, w, "feat.mean", 8, 0, 1, 0);
    fm_test_heads_tensor(&rng, w, "feat.std", 8, 0, 0.1f, 1);
    fm_test_heads_tensor(&rng, w, "age.weight", FM_HEADS_AGES, 8, 1, 0);
    fm_test_heads_tensor(&rng, w, "age.bias", FM_HEADS_AGES, 0, 1, 0);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    fm_model_writer_destroy(&w);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_NOT_FOUND && h == NULL);
    CHECK_MSG(strstr(err.msg, "gender.weight") != NULL, "%s", err.msg);
    unlink(bad);
    /* a bad feature name */
    w = heads_writer("conv3", 0);
    CHECK(fm_model_writer_save(w, bad, NULL) == FM_OK);
    fm_model_writer_destroy(&w);
    memset(&err, 0, sizeof err);
    CHECK(fm_heads_open(&h, bad, 4, &err) == FM_ERR_FORMAT && h == NULL);
    CHECK_MSG(strstr(err.msg, "conv3") != NULL, "%s", err.msg);
    unlink(bad);
}

static void test_from_logits(void)
{
    float age[FM_HEADS_AGES], g[2] = {0, 0}, r[5] = {0, 0, 3, 0, 0};
    for (int i = 0; i < FM_HEADS_AGES; i++)
        age[i] = -1e4f;
    age[30] = age[32] = 0; /* two equal peaks: mean 31, spread 1 */
    fm_attrs a;
    fm_attrs_from_logits(age, g, r, &a);
    CHECK(fabs(a.age - 31) < 1e-4 && fabs(a.age_std - 1) < 1e-4);
    CHECK(fabs(a.gender_probs[0] - 0.5) < 1e-6 && a.gender == 0);
    CHECK(a.race == 2);
    double e3 = exp(3.0);
    CHECK(fabs(a.race_probs[2] - e3 / (e3 + 4)) < 1e-6);
}

/* ---- the network, for training ----------------------------------------------------- */

/* A random network of dim inputs and the given shared widths, its parameters in one
 * malloc'd vector (*params, count *n) with a same-shaped gradient vector (*grads). */
typedef struct rnet {
    fm_heads_net net, grad;
    float *params, *grads, *scale, *shift, *mean, *std;
    size_t n;
} rnet;

static void rnet_new(rnet *r, int dim, int n_layers, const int *width, float alpha)
{
    memset(r, 0, sizeof *r);
    size_t n = 0;
    int in = dim;
    for (int k = 0; k <= n_layers; k++) {
        const int out = k < n_layers ? width[k] : FM_HEADS_OUTPUTS;
        n += (size_t)out * (size_t)(in + 1);
        in = out;
    }
    r->n = n;
    r->params = malloc(n * sizeof(float));
    r->grads = calloc(n, sizeof(float));
    r->scale = malloc((size_t)dim * sizeof(float));
    r->shift = malloc((size_t)dim * sizeof(float));
    r->mean = malloc((size_t)dim * sizeof(float));
    r->std = malloc((size_t)dim * sizeof(float));
    for (size_t i = 0; i < n; i++)
        r->params[i] = 0.5f * (float)fm_test_rng_range(&rng, -1, 1);
    for (int j = 0; j < dim; j++) {
        r->mean[j] = (float)fm_test_rng_range(&rng, -1, 1);
        r->std[j] = 0.8f + 0.5f * (float)fm_test_rng_range(&rng, -1, 1);
    }
    fm_heads_standardiser(r->mean, r->std, dim, r->scale, r->shift);
    fm_heads_net *nets[2] = {&r->net, &r->grad};
    float *base[2] = {r->params, r->grads};
    for (int v = 0; v < 2; v++) {
        fm_heads_net *t = nets[v];
        float *p = base[v];
        t->n_layers = n_layers;
        t->alpha = alpha;
        t->scale = fm_tensor_make(dim, 1, 1, 1, r->scale);
        t->shift = fm_tensor_make(dim, 1, 1, 1, r->shift);
        in = dim;
        for (int k = 0; k <= n_layers + 2; k++) {
            const int out = k < n_layers ? width[k] : fm_heads_classes[k - n_layers];
            fm_tensor *w = k < n_layers ? &t->w[k] : &t->head_w[k - n_layers];
            fm_tensor *b = k < n_layers ? &t->b[k] : &t->head_b[k - n_layers];
            *w = fm_tensor_make(out, in, 1, 1, p);
            p += (size_t)out * (size_t)in;
            *b = fm_tensor_make(out, 1, 1, 1, p);
            p += out;
            if (k < n_layers)
                in = out;
        }
    }
}

static void rnet_free(rnet *r)
{
    free(r->params);
    free(r->grads);
    free(r->scale);
    free(r->shift);
    free(r->mean);
    free(r->std);
}

/* Forward and loss of the batch, and with dfeat the backward pass into r->grads (zeroed
 * here) and dfeat. signs (NULL or one byte per shared unit and row) gets which side of
 * the LeakyReLU kink every unit is on. */
static double net_loss(fm_arena *a, rnet *r, const fm_tensor *x, const float *const *mask,
                       const float *const target[3], const double weight[3], int grad,
                       fm_tensor *dfeat, unsigned char *signs)
{
    fm_heads_tape t;
    fm_tensor dl[3];
    double loss = -1;
    fm_error err = {0};
    fm_arena_reset(a, 0);
    fm_status st = fm_heads_net_forward(a, &r->net, x, mask, &t, &err);
    for (int o = 0; st == FM_OK && grad && o < 3; o++)
        st = fm_tensor_alloc_zero(a, &t.logits[o], &dl[o], &err);
    if (st == FM_OK)
        st = fm_heads_net_loss(a, &t, target, weight, &loss, grad ? dl : NULL, &err);
    if (st == FM_OK && grad) {
        memset(r->grads, 0, r->n * sizeof(float));
        st = fm_heads_net_backward(a, &r->net, &t, mask, dl, &r->grad, dfeat, &err);
    }
    CHECK_MSG(st == FM_OK, "%s", err.msg);
    size_t q = 0;
    for (int k = 0; signs && st == FM_OK && k < r->net.n_layers; k++)
        for (size_t j = 0; t.h[k].data && j < fm_tensor_count(&t.h[k]); j++)
            signs[q++] = t.h[k].data[j] > 0;
    return loss;
}

/* Central differences of the loss against the backward pass, for every parameter (a
 * sample of them beyond 150) and every raw feature. */
static void test_net_gradients(int n_layers, const int *width, int use_mask)
{
    enum { N = 5, D = 7, MAXU = N * 2 * 16 };
    rnet r;
    rnet_new(&r, D, n_layers, width, 0.2f);
    float xs[N * D], dxs[N * D], age[N * FM_HEADS_AGES], gen[N * 2], race[N * 5];
    for (int i = 0; i < N * D; i++)
        xs[i] = 2 * (float)fm_test_rng_range(&rng, -1, 1);
    for (int i = 0; i < N; i++) {
        fm_nn_gaussian_target(FM_HEADS_AGES, 10 + 17 * i, 2.5, age + i * FM_HEADS_AGES);
        gen[2 * i] = i % 2 ? 0.9f : 0.1f; /* smoothed one-hots */
        gen[2 * i + 1] = 1 - gen[2 * i];
        for (int k = 0; k < 5; k++)
            race[5 * i + k] = k == i % 5 ? 0.8f : 0.05f;
    }
    const float *const target[3] = {age, gen, race};
    const double weight[3] = {0.7, 1.3, 1.0};
    float masks[2][N * 16];
    const float *mk[2] = {masks[0], masks[1]};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < N * 16; i++)
            masks[k][i] = (float)fm_test_rng_range(&rng, -1, 1) < -0.4f ? 0.0f : 1.0f / 0.7f;
    const float *const *mask = use_mask ? mk : NULL;
    fm_tensor x = fm_tensor_make(N, D, 1, 1, xs), dx = fm_tensor_make(N, D, 1, 1, dxs);

    /* one arena measured for the whole step, then exactly that */
    fm_arena *a = NULL;
    fm_error err = {0};
    CHECK(fm_arena_new_measuring(&a, &err) == FM_OK);
    fm_tensor xm = fm_tensor_make(N, D, 1, 1, NULL), dxm = xm;
    net_loss(a, &r, &xm, mask, target, weight, 1, &dxm, NULL);
    size_t need = fm_arena_high_water(a);
    fm_arena_destroy(&a);
    CHECK(fm_arena_new(need, &a, &err) == FM_OK);
    if (!a) {
        rnet_free(&r);
        return;
    }
    memset(dxs, 0, sizeof dxs);
    net_loss(a, &r, &x, mask, target, weight, 1, &dx, NULL);
    float *g = malloc(r.n * sizeof(float));
    memcpy(g, r.grads, r.n * sizeof(float));

    double worst = 0;
    int checked = 0, skipped = 0;
    const size_t nparams = r.n, total = nparams + N * D;
    for (size_t i = 0; i < total; i += i < nparams ? 1 + nparams / 150 : 1) {
        float *v = i < nparams ? &r.params[i] : &xs[i - nparams];
        const double analytic = i < nparams ? g[i] : dxs[i - nparams];
        const float h = 1e-2f, keep = *v;
        unsigned char sp[MAXU], sm[MAXU];
        memset(sp, 0, sizeof sp);
        memset(sm, 0, sizeof sm);
        *v = keep + h;
        double lp = net_loss(a, &r, &x, mask, target, weight, 0, NULL, sp);
        *v = keep - h;
        double lm = net_loss(a, &r, &x, mask, target, weight, 0, NULL, sm);
        *v = keep;
        /* a LeakyReLU kink inside [v - h, v + h] makes the difference meaningless */
        if (memcmp(sp, sm, sizeof sp) != 0) {
            skipped++;
            continue;
        }
        double num = (lp - lm) / ((double)(keep + h) - (double)(keep - h));
        double d = fabs(num - analytic) / fmax(1e-3, fabs(num) + fabs(analytic));
        worst = d > worst ? d : worst;
        checked++;
    }
    fprintf(stderr, "network gradients, %d shared layer(s)%s: %d values, largest relative "
            "difference %.2g (%d skipped: a LeakyReLU kink in reach)\n", n_layers,
            use_mask ? ", dropout mask" : "", checked, worst, skipped);
    CHECK(checked > 100 || (n_layers == 0 && checked > 50));
    CHECK_MSG(worst < 2e-2, "relative difference %g", worst);
    /* a negative slope is refused by the backward pass, not mistaken */
    r.net.alpha = -0.1f;
    fm_heads_tape t;
    fm_tensor dl[3];
    fm_arena_reset(a, 0);
    if (n_layers > 0 && fm_heads_net_forward(a, &r.net, &x, NULL, &t, &err) == FM_OK) {
        for (int o = 0; o < 3; o++)
            CHECK(fm_tensor_alloc_zero(a, &t.logits[o], &dl[o], &err) == FM_OK);
        CHECK(fm_heads_net_backward(a, &r.net, &t, NULL, dl, &r.grad, NULL, &err) ==
              FM_ERR_INVALID);
    }
    free(g);
    fm_arena_destroy(&a);
    rnet_free(&r);
}

/* A network written with fm_heads_write (what the trainers write) opens as a heads
 * file whose forward pass gives the network's answers to the bit. */
static void test_net_written(const char *dir)
{
    enum { N = 9, D = 11 };
    const int width[2] = {13, 6};
    rnet r;
    rnet_new(&r, D, 2, width, 0.15f);
    char path[4200];
    snprintf(path, sizeof path, "%s/written.fmm", dir);
    fm_error err = {0};
    fm_model_writer *w = fm_model_writer_new();
    int ok = w && fm_model_writer_add_str(w, "general.architecture", "heads", &err) == FM_OK &&
             fm_model_writer_add_str(w, "heads.backbone", "b", &err) == FM_OK &&
             fm_model_writer_add_str(w, "heads.feature", "pooled", &err) == FM_OK &&
             fm_model_writer_add_i64(w, "heads.flip", 0, &err) == FM_OK &&
             fm_model_writer_add_str_array(w, "labels.gender", fm_result_gender_names,
                                           FM_HEADS_GENDERS, &err) == FM_OK &&
             fm_model_writer_add_str_array(w, "labels.race", fm_result_race_names,
                                           FM_HEADS_RACES, &err) == FM_OK &&
             fm_heads_write(w, &r.net, r.mean, r.std, 41.5, &err) == FM_OK &&
             fm_model_writer_save(w, path, &err) == FM_OK;
    CHECK_MSG(ok, "%s", err.msg);
    fm_model_writer_destroy(&w);
    fm_heads *h = NULL;
    CHECK_MSG(fm_heads_open(&h, path, N, &err) == FM_OK, "%s", err.msg);
    float xs[N * D];
    for (int i = 0; i < N * D; i++)
        xs[i] = 3 * (float)fm_test_rng_range(&rng, -1, 1);
    fm_arena *a = NULL;
    CHECK(fm_arena_new(1 << 20, &a, &err) == FM_OK);
    fm_heads_tape t;
    const fm_tensor x = fm_tensor_make(N, D, 1, 1, xs);
    if (h && a && fm_heads_net_forward(a, &r.net, &x, NULL, &t, &err) == FM_OK) {
        fm_attrs got[N];
        CHECK(fm_heads_forward(h, xs, N, got, &err) == FM_OK);
        int same = 0;
        for (int i = 0; i < N; i++) {
            fm_attrs want;
            fm_attrs_from_logits(t.logits[0].data + i * FM_HEADS_AGES,
                                 t.logits[1].data + i * FM_HEADS_GENDERS,
                                 t.logits[2].data + i * FM_HEADS_RACES, &want);
            same += memcmp(&want, &got[i], sizeof want) == 0;
        }
        CHECK_MSG(same == N, "%d of %d faces answered alike", same, N);
        CHECK(fm_heads_layers(h) == 2 && fm_heads_hidden(h) == 6);
        CHECK(fabs(fm_heads_fallback_age(h) - 41.5) < 1e-12);
        CHECK(strcmp(fm_heads_race_label(h, 3), fm_result_race_names[3]) == 0);
    }
    fm_arena_destroy(&a);
    fm_heads_close(&h);
    unlink(path);
    rnet_free(&r);
}

/* fm_heads_hardest_weights' rows dropped, -1 (and a failed check) on an error. */
static int hardest(const fm_tensor *l, const float *t, double share, double below, float *w,
                   double *loss)
{
    fm_error err = {0};
    int d = -1;
    fm_status st = fm_heads_hardest_weights(l, t, share, below, w, loss, &d, &err);
    CHECK_MSG(st == FM_OK, "fm_heads_hardest_weights: %s", err.msg);
    return st == FM_OK ? d : -1;
}

/* Small-loss selection (fm_heads_hardest_weights): the round(share x n) rows of highest
 * cross-entropy get weight 0, the others n / (n - dropped); equal losses drop the
 * earlier row; at most n - 1 rows go; and the weights it gives scale each row's loss
 * and gradient in fm_heads_net_loss_rows (a dropped row's gradient is zero, a kept
 * row's is the unweighted one times its weight). */
static void test_hardest_weights(void)
{
    /* 6 rows of 3 classes; targets one-hot; losses known from the logits */
    float logit[6 * 3], target[6 * 3];
    const int label[6] = {0, 1, 2, 0, 1, 2};
    const float margin[6] = {2.0f, -1.0f, 0.5f, -3.0f, 1.0f, -1.0f}; /* label logit */
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 3; j++) {
            logit[i * 3 + j] = j == label[i] ? margin[i] : 0.0f;
            target[i * 3 + j] = j == label[i] ? 1.0f : 0.0f;
        }
    fm_tensor l = fm_tensor_make(6, 3, 1, 1, logit);
    float w[6];
    double loss[6];
    /* share 1/3: 2 rows; the highest losses are rows 3 (margin -3), then rows 1 and 5
     * (margin -1, equal): row 1, the earlier, goes */
    int d = hardest(&l, target, 1.0 / 3.0, 1.0, w, loss);
    CHECK(d == 2);
    for (int i = 0; i < 6; i++) {
        const double want = log(2.0 + exp((double)margin[i])) - margin[i];
        CHECK_MSG(fabs(loss[i] - want) < 1e-9, "row %d loss %.9f, want %.9f", i, loss[i], want);
        const float ww = i == 3 || i == 1 ? 0.0f : 6.0f / 4.0f;
        CHECK_MSG(w[i] == ww, "share 1/3: row %d weight %g, want %g", i, w[i], ww);
    }
    /* share 0: nothing dropped, every weight 1 */
    CHECK(hardest(&l, target, 0.0, 1.0, w, loss) == 0);
    for (int i = 0; i < 6; i++)
        CHECK(w[i] == 1.0f);
    /* rounding: 0.1 x 6 = 0.6 drops one row (row 3); 0.05 x 6 = 0.3 none */
    CHECK(hardest(&l, target, 0.1, 1.0, w, loss) == 1 && w[3] == 0.0f &&
          w[0] == 1.2f);
    CHECK(hardest(&l, target, 0.05, 1.0, w, loss) == 0);
    /* below: only rows whose label gets less than it may go. The labels' probabilities
     * are e^m / (e^m + 2): rows 0-5 0.787, 0.155, 0.452, 0.024, 0.576, 0.155. Below
     * 0.1 only row 3 may go, so share 1/3 drops one row (weights 6/5); below 0.5 and
     * share 1/2 drop rows 3, 1 and 5 of the four that may go (2 kept: the smallest
     * loss of the four) */
    CHECK(hardest(&l, target, 1.0 / 3.0, 0.1, w, loss) == 1 &&
          w[3] == 0.0f && w[1] == 1.2f && w[5] == 1.2f);
    CHECK(hardest(&l, target, 0.5, 0.5, w, loss) == 3 && w[3] == 0.0f &&
          w[1] == 0.0f && w[5] == 0.0f && w[2] == 2.0f && w[0] == 2.0f && w[4] == 2.0f);
    /* below 0.02: no row may go */
    CHECK(hardest(&l, target, 0.5, 0.02, w, loss) == 0 && w[3] == 1.0f);
    /* below 1 lets any row go, even one whose label's probability is 1 in double */
    float sure[2 * 3] = {800.0f, 0.0f, 0.0f, 0.0f, 800.0f, 0.0f}; /* rows 0, 1 labels 0, 1 */
    fm_tensor st = fm_tensor_make(2, 3, 1, 1, sure);
    CHECK(hardest(&st, target, 0.5, 1.0, w, loss) == 1 && w[0] == 0.0f);
    CHECK(hardest(&st, target, 0.5, 0.999, w, loss) == 0);
    /* a logit that is not finite is refused, as the training loss refuses it */
    {
        float bad[3] = {0.0f, NAN, 0.0f};
        fm_tensor bt = fm_tensor_make(1, 3, 1, 1, bad);
        fm_error err = {0};
        int nd = -1;
        CHECK(fm_heads_hardest_weights(&bt, target, 0.5, 1.0, w, loss, &nd, &err) ==
                  FM_ERR_INVALID &&
              strstr(err.msg, "not finite"));
    }
    /* one row is never dropped */
    fm_tensor one = fm_tensor_make(1, 3, 1, 1, logit + 9);
    CHECK(hardest(&one, target + 9, 0.5, 1.0, w, loss) == 0 && w[0] == 1.0f);

    /* the weights in the loss: rows of output 1 and 2 weighted, output 0 not */
    fm_heads_tape t;
    memset(&t, 0, sizeof t);
    float l0[6 * 4], l2[6 * 5], t0[6 * 4], t2[6 * 5];
    for (int i = 0; i < 6 * 4; i++) {
        l0[i] = (float)(fm_test_rng_uniform(&rng) * 4 - 2);
        t0[i] = (i % 4) == (i / 4) % 4 ? 1.0f : 0.0f;
    }
    for (int i = 0; i < 6 * 5; i++) {
        l2[i] = (float)(fm_test_rng_uniform(&rng) * 4 - 2);
        t2[i] = (i % 5) == (i / 5) % 5 ? 1.0f : 0.0f;
    }
    t.logits[0] = fm_tensor_make(6, 4, 1, 1, l0);
    t.logits[1] = fm_tensor_make(6, 3, 1, 1, logit);
    t.logits[2] = fm_tensor_make(6, 5, 1, 1, l2);
    const float *const tg[3] = {t0, target, t2};
    const double weight[3] = {1.0, 3.0, 1.5};
    float wg[6], wr[6];
    double tmp[6];
    hardest(&t.logits[1], target, 1.0 / 3.0, 1.0, wg, tmp);
    hardest(&t.logits[2], t2, 1.0 / 3.0, 1.0, wr, tmp);
    const float *const rw[3] = {NULL, wg, wr};
    fm_arena *a = NULL;
    fm_error err = {0};
    CHECK(fm_arena_new(1 << 20, &a, &err) == FM_OK);
    float g0[3][6 * 5], g1[3][6 * 5];
    fm_tensor d0[3], d1[3];
    for (int o = 0; o < 3; o++) {
        memset(g0[o], 0, sizeof g0[o]);
        memset(g1[o], 0, sizeof g1[o]);
        d0[o] = fm_tensor_make(6, t.logits[o].c, 1, 1, g0[o]);
        d1[o] = fm_tensor_make(6, t.logits[o].c, 1, 1, g1[o]);
    }
    double plain = 0, rows = 0;
    CHECK(fm_heads_net_loss(a, &t, tg, weight, &plain, d0, &err) == FM_OK);
    CHECK(fm_heads_net_loss_rows(a, &t, tg, weight, rw, &rows, d1, &err) == FM_OK);
    /* the loss: each output's per-row cross-entropies, weighted */
    double want = 0;
    for (int o = 0; o < 3; o++) {
        const int k = t.logits[o].c;
        for (int i = 0; i < 6; i++) {
            double mx = -1e30, se = 0, tl = 0;
            for (int j = 0; j < k; j++)
                mx = fmax(mx, t.logits[o].data[i * k + j]);
            for (int j = 0; j < k; j++) {
                se += exp(t.logits[o].data[i * k + j] - mx);
                tl += tg[o][i * k + j] * t.logits[o].data[i * k + j];
            }
            want += weight[o] / 6 * (o ? rw[o][i] : 1.0) * (mx + log(se) - tl);
        }
    }
    CHECK_MSG(fabs(rows - want) < 1e-5 * want, "weighted loss %.7f, want %.7f", rows, want);
    CHECK(fabs(rows - plain) > 1e-3);
    for (int o = 0; o < 3; o++) {
        const int k = t.logits[o].c;
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < k; j++) {
                const float r = o ? rw[o][i] : 1.0f;
                CHECK_MSG(fabsf(g1[o][i * k + j] - r * g0[o][i * k + j]) <=
                              1e-6f * (1 + fabsf(g0[o][i * k + j])),
                          "output %d row %d class %d: gradient %g, want %g x %g", o, i, j,
                          g1[o][i * k + j], r, g0[o][i * k + j]);
            }
    }
    fm_arena_destroy(&a);
}

int main(void)
{
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "heads") != 0)
        return 1;
    char path[4200];
    snprintf(path, sizeof path, "%s/heads.fmm", tmpdir);
    test_from_logits();
    const int h1[1] = {24}, h2[2] = {32, 16};
    check_file(path, 20, 0, NULL, 5);
    check_file(path, 20, 1, h1, 64);
    check_file(path, 48, 2, h2, 7);
    test_errors(path);
    const int w1[1] = {9}, w2[2] = {8, 5};
    test_net_gradients(0, NULL, 0);
    test_net_gradients(1, w1, 0);
    test_net_gradients(2, w2, 0);
    test_net_gradients(2, w2, 1);
    test_net_written(tmpdir);
    test_hardest_weights();
    fm_test_remove_tree(tmpdir);
    return fm_test_done("test_heads");
}
