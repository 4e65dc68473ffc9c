/* heads.c - the attribute heads (include/facemill/heads.h): the network, forward and
 * backward, over the engine's operations (nn.h, grad.h), and the "heads" model file:
 * loads one, checks its metadata and that its layers chain, and runs feature vectors
 * through the network in one arena measured at open.
 *
 * The network is defined here only: inference, the frozen-feature trainer and the
 * fine-tuner all run fm_heads_net_forward, and both trainers fm_heads_net_loss and
 * fm_heads_net_backward, so what is trained is what runs.
 */
#include "facemill/heads.h"
#include "facemill/grad.h"
#include "facemill/nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fm_heads {
    fm_model *model;
    fm_arena *arena;
    int max_batch;
    int dim;                 /* input length */
    int width[FM_HEADS_MAX_LAYERS + 1]; /* width[0] = dim, width[k+1] = layer k */
    fm_heads_net net;        /* views of the mapped weights; scale and shift below */
    float *scale, *shift;    /* dim each, owned: from feat.mean and feat.std */
    int flip;
    fm_backbone_output feature;
    const char *backbone;
    double fallback_age;
    const char *const *gender_labels;
    const char *const *race_labels;
};

const int fm_heads_classes[3] = {FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES};
static const char *const head_name[3] = {"age", "gender", "race"};

const char *fm_backbone_output_name(fm_backbone_output o)
{
    return o == FM_BACKBONE_POOLED ? "pooled" : o == FM_BACKBONE_EMBEDDING ? "embedding" : "?";
}

int fm_backbone_output_parse(const char *name)
{
    if (name && strcmp(name, "pooled") == 0)
        return FM_BACKBONE_POOLED;
    if (name && strcmp(name, "embedding") == 0)
        return FM_BACKBONE_EMBEDDING;
    return -1;
}

void fm_attrs_from_logits(const float *age, const float *gender, const float *race,
                          fm_attrs *out)
{
    /* age: softmax in double, then mean and spread */
    double m = age[0];
    for (int i = 1; i < FM_HEADS_AGES; i++)
        if (age[i] > m)
            m = age[i];
    double p[FM_HEADS_AGES], sum = 0;
    for (int i = 0; i < FM_HEADS_AGES; i++)
        sum += p[i] = exp((double)age[i] - m);
    double mean = 0, var = 0;
    for (int i = 0; i < FM_HEADS_AGES; i++)
        mean += (p[i] /= sum) * i;
    for (int i = 0; i < FM_HEADS_AGES; i++)
        var += p[i] * (i - mean) * (i - mean);
    out->age = (float)mean;
    out->age_std = (float)sqrt(var);

    const float *lg[2] = {gender, race};
    float *probs[2] = {out->gender_probs, out->race_probs};
    int *arg[2] = {&out->gender, &out->race};
    const int k[2] = {FM_HEADS_GENDERS, FM_HEADS_RACES};
    for (int h = 0; h < 2; h++) {
        double mx = lg[h][0], s = 0, q[FM_HEADS_RACES];
        int best = 0;
        for (int i = 1; i < k[h]; i++)
            if (lg[h][i] > mx) {
                mx = lg[h][i];
                best = i;
            }
        for (int i = 0; i < k[h]; i++)
            s += q[i] = exp((double)lg[h][i] - mx);
        for (int i = 0; i < k[h]; i++)
            probs[h][i] = (float)(q[i] / s);
        *arg[h] = best;
    }
}

static fm_status meta_labels(const fm_model *m, const char *key, size_t want,
                             const char *const **out, fm_error *err)
{
    size_t count = 0;
    fm_status st = fm_model_meta_str_array(m, key, out, &count, err);
    if (st) {
        fm_error_prefix(err, "%s", fm_model_path(m));
        return st;
    }
    if (count != want)
        return fm_error_set(err, FM_ERR_FORMAT, "%s: %s has %zu names, expected %zu",
                            fm_model_path(m), key, count, want);
    return FM_OK;
}

/* ---- the network ------------------------------------------------------------------ */

void fm_heads_standardiser(const float *mean, const float *std, int dim, float *scale,
                           float *shift)
{
    for (int j = 0; j < dim; j++) {
        scale[j] = 1.0f / std[j];
        shift[j] = -mean[j] / std[j];
    }
}

fm_status fm_heads_net_forward(fm_arena *a, const fm_heads_net *net, const fm_tensor *features,
                               const float *const *mask, fm_heads_tape *t, fm_error *err)
{
    const int n = features->n, dim = net->scale.n;
    memset(t, 0, sizeof *t);
    if (net->n_layers < 0 || net->n_layers > FM_HEADS_MAX_LAYERS ||
        fm_tensor_count(features) != (size_t)n * (size_t)dim)
        return fm_error_set(err, FM_ERR_INVALID,
                            "heads: %d shared layers, features [%d, %d, %d, %d] for %d inputs",
                            net->n_layers, features->n, features->c, features->h, features->w,
                            dim);
    /* one row of dim values per face, whatever shape the caller gave them */
    const fm_tensor x = fm_tensor_make(n, dim, 1, 1, features->data);
    fm_status st;
    if ((st = fm_tensor_alloc(a, n, dim, 1, 1, &t->x, err)) ||
        (st = fm_nn_scale_shift(a, &x, &net->scale, &net->shift, &t->x, err))) {
        fm_error_prefix(err, "heads: standardisation");
        return st;
    }
    const fm_tensor *in = &t->x;
    for (int k = 0; k < net->n_layers; k++) {
        fm_tensor *h = &t->h[k];
        if ((st = fm_tensor_alloc(a, n, net->w[k].n, 1, 1, h, err)) ||
            (st = fm_nn_dense(a, in, &net->w[k], &net->b[k], h, err)) ||
            (st = fm_nn_leaky_relu(a, h, net->alpha, h, err))) {
            fm_error_prefix(err, "heads: shared.%d", k);
            return st;
        }
        if (mask && mask[k] && h->data) /* inverted dropout */
            for (size_t j = 0; j < fm_tensor_count(h); j++)
                h->data[j] *= mask[k][j];
        in = h;
    }
    for (int o = 0; o < 3; o++)
        if ((st = fm_tensor_alloc(a, n, fm_heads_classes[o], 1, 1, &t->logits[o], err)) ||
            (st = fm_nn_dense(a, in, &net->head_w[o], &net->head_b[o], &t->logits[o], err))) {
            fm_error_prefix(err, "heads: %s", head_name[o]);
            return st;
        }
    return FM_OK;
}

fm_status fm_heads_net_loss(fm_arena *a, const fm_heads_tape *tape,
                            const float *const target[3], const double weight[3],
                            double *loss, fm_tensor *dlogits, fm_error *err)
{
    return fm_heads_net_loss_rows(a, tape, target, weight, NULL, loss, dlogits, err);
}

fm_status fm_heads_net_loss_rows(fm_arena *a, const fm_heads_tape *tape,
                                 const float *const target[3], const double weight[3],
                                 const float *const row_weight[3], double *loss,
                                 fm_tensor *dlogits, fm_error *err)
{
    const int n = tape->logits[0].n;
    double total = 0;
    for (int o = 0; o < 3; o++) {
        double l = 0;
        fm_status st = fm_nn_softmax_xent(a, &tape->logits[o], target[o],
                                          row_weight ? row_weight[o] : NULL,
                                          (float)(weight[o] / n), &l,
                                          dlogits ? &dlogits[o] : NULL, NULL, err);
        if (st) {
            fm_error_prefix(err, "heads: %s loss", head_name[o]);
            return st;
        }
        total += l;
    }
    *loss = total;
    return FM_OK;
}

fm_status fm_heads_hardest_weights(const fm_tensor *logits, const float *target,
                                   double share, double below, float *w, double *losses,
                                   int *dropped, fm_error *err)
{
    const int n = logits->n, k = logits->c;
    float probs[FM_HEADS_AGES];
    if (k > FM_HEADS_AGES)
        return fm_error_set(err, FM_ERR_INVALID, "heads: %d classes, at most %d", k,
                            FM_HEADS_AGES);
    int most = (int)floor(share * n + 0.5), drop = 0;
    if (most > n - 1)
        most = n > 0 ? n - 1 : 0;
    for (int i = 0; i < n; i++) {
        /* the row's loss as the training loss computes it, and its softmax */
        const float *t = target + (size_t)i * k;
        const fm_tensor row = fm_tensor_make(1, k, 1, 1, logits->data + (size_t)i * k);
        fm_status st = fm_nn_softmax_xent(NULL, &row, t, NULL, 1.0f, &losses[i], NULL,
                                          probs, err);
        if (st)
            return st;
        int top = 0;
        for (int j = 1; j < k; j++)
            if (t[j] > t[top])
                top = j;
        /* until the weights are set below, w marks the rows that may go (1: its
         * target's class gets less than below) from those that stay (2) */
        w[i] = below >= 1 || probs[top] < below ? 1.0f : 2.0f;
    }
    /* the most largest of the rows that may go, by repeated selection (batches are
     * small); ties go to the earlier row, so the choice depends on the batch alone */
    for (; drop < most; drop++) {
        int worst = -1;
        for (int i = 0; i < n; i++)
            if (w[i] == 1.0f && (worst < 0 || losses[i] > losses[worst]))
                worst = i;
        if (worst < 0)
            break;
        w[worst] = 0.0f;
    }
    const float keep = drop ? (float)n / (float)(n - drop) : 1.0f;
    for (int i = 0; i < n; i++)
        if (w[i] != 0.0f)
            w[i] = keep;
    *dropped = drop;
    return FM_OK;
}

fm_status fm_heads_net_backward(fm_arena *a, const fm_heads_net *net,
                                const fm_heads_tape *t, const float *const *mask,
                                const fm_tensor *dlogits, fm_heads_net *g,
                                fm_tensor *dfeatures, fm_error *err)
{
    const int L = net->n_layers;
    const fm_tensor *last = L ? &t->h[L - 1] : &t->x;
    fm_tensor din = {0}, dprev = {0};
    fm_status st;
    if (dfeatures && fm_tensor_count(dfeatures) != fm_tensor_count(&t->x))
        return fm_error_set(err, FM_ERR_INVALID,
                            "heads backward: dfeatures [%d, %d, %d, %d] for [%d, %d] features",
                            dfeatures->n, dfeatures->c, dfeatures->h, dfeatures->w, t->x.n,
                            t->x.c);
    const int want_din = L > 0 || dfeatures;
    if (want_din && (st = fm_tensor_alloc_zero(a, last, &din, err)))
        return st;
    for (int o = 0; o < 3; o++)
        if ((st = fm_nn_dense_backward(a, last, &net->head_w[o], &dlogits[o],
                                       want_din ? &din : NULL, &g->head_w[o], &g->head_b[o],
                                       err))) {
            fm_error_prefix(err, "heads backward: %s", head_name[o]);
            return st;
        }
    for (int k = L - 1; k >= 0; k--) {
        /* through the dropout mask and the LeakyReLU, then the dense layer */
        const fm_tensor *in = k ? &t->h[k - 1] : &t->x;
        const int want_dx = k > 0 || dfeatures;
        fm_tensor dz;
        if (mask && mask[k] && din.data)
            for (size_t j = 0; j < fm_tensor_count(&din); j++)
                din.data[j] *= mask[k][j];
        if ((st = fm_tensor_alloc_zero(a, &t->h[k], &dz, err)) ||
            (st = fm_nn_leaky_relu_backward(a, &t->h[k], net->alpha, &din, &dz, err)) ||
            (want_dx && (st = fm_tensor_alloc_zero(a, in, &dprev, err))) ||
            (st = fm_nn_dense_backward(a, in, &net->w[k], &dz, want_dx ? &dprev : NULL,
                                       &g->w[k], &g->b[k], err))) {
            fm_error_prefix(err, "heads backward: shared.%d", k);
            return st;
        }
        din = dprev;
    }
    if (!dfeatures)
        return FM_OK;
    /* the gradient of the standardised features (din) back to the raw ones, in the
     * caller's tensor seen as rows of dim values */
    fm_tensor dx = fm_tensor_make(din.n, din.c, 1, 1, dfeatures->data);
    if ((st = fm_nn_scale_shift_backward(a, NULL, &net->scale, &din, &dx, NULL, NULL, err)))
        fm_error_prefix(err, "heads backward: standardisation");
    return st;
}

static fm_status write_tensor(fm_model_writer *w, const char *name, const fm_tensor *t,
                              int matrix, fm_error *err)
{
    /* weights [out, in], vectors [count] */
    uint64_t dims[2] = {(uint64_t)t->n, (uint64_t)t->c * (uint64_t)t->h * (uint64_t)t->w};
    if (!matrix)
        dims[0] = (uint64_t)fm_tensor_count(t);
    return fm_model_writer_add_tensor(w, name, matrix ? 2 : 1, dims, t->data, err);
}

fm_status fm_heads_write(fm_model_writer *w, const fm_heads_net *net, const float *mean,
                         const float *std, double fallback_age, fm_error *err)
{
    const int dim = net->scale.n;
    const fm_tensor tm = fm_tensor_make(dim, 1, 1, 1, (float *)mean);
    const fm_tensor ts = fm_tensor_make(dim, 1, 1, 1, (float *)std);
    char name[64];
    fm_status st;
    if ((st = write_tensor(w, "feat.mean", &tm, 0, err)) ||
        (st = write_tensor(w, "feat.std", &ts, 0, err)))
        return st;
    for (int k = 0; k < net->n_layers; k++) {
        snprintf(name, sizeof name, "shared.%d.weight", k);
        if ((st = write_tensor(w, name, &net->w[k], 1, err)))
            return st;
        snprintf(name, sizeof name, "shared.%d.bias", k);
        if ((st = write_tensor(w, name, &net->b[k], 0, err)))
            return st;
    }
    for (int o = 0; o < 3; o++) {
        snprintf(name, sizeof name, "%s.weight", head_name[o]);
        if ((st = write_tensor(w, name, &net->head_w[o], 1, err)))
            return st;
        snprintf(name, sizeof name, "%s.bias", head_name[o]);
        if ((st = write_tensor(w, name, &net->head_b[o], 0, err)))
            return st;
    }
    if ((st = fm_model_writer_add_f64(w, "heads.leaky_alpha", net->alpha, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.fallback_age", fallback_age, err)))
        return st;
    return FM_OK;
}

/* ---- the model file ---------------------------------------------------------------- */

/* Runs n <= max_batch rows (measuring when the arena measures: data may be NULL). */
static fm_status run(fm_heads *h, const float *features, int n, fm_attrs *out,
                     fm_error *err)
{
    fm_arena *a = h->arena;
    fm_arena_reset(a, 0);
    const fm_tensor x = fm_tensor_make(n, h->dim, 1, 1, (float *)features);
    fm_heads_tape t;
    fm_status st = fm_heads_net_forward(a, &h->net, &x, NULL, &t, err);
    if (st == FM_OK && !fm_arena_is_measuring(a))
        for (int i = 0; i < n; i++)
            fm_attrs_from_logits(t.logits[0].data + (size_t)i * FM_HEADS_AGES,
                                 t.logits[1].data + (size_t)i * FM_HEADS_GENDERS,
                                 t.logits[2].data + (size_t)i * FM_HEADS_RACES, &out[i]);
    fm_arena_reset(a, 0);
    return st;
}

/* Binds the dense layer PREFIX.weight [out, in] (dims) with its PREFIX.bias [out] as
 * read-only views (the engine never writes inputs, which makes the cast safe). */
static fm_status bind_dense(const fm_model *m, const char *prefix, const uint64_t dims[2],
                            fm_tensor *w, fm_tensor *b, fm_error *err)
{
    const float *wd = NULL, *bd = NULL;
    char name[80];
    snprintf(name, sizeof name, "%s.weight", prefix);
    fm_status st = fm_model_tensor_expect(m, name, 2, dims, &wd, err);
    if (st)
        return st;
    snprintf(name, sizeof name, "%s.bias", prefix);
    if ((st = fm_model_tensor_expect(m, name, 1, dims, &bd, err)))
        return st;
    *w = fm_tensor_make((int)dims[0], (int)dims[1], 1, 1, (float *)wd);
    *b = fm_tensor_make((int)dims[0], 1, 1, 1, (float *)bd);
    return FM_OK;
}

fm_status fm_heads_open(fm_heads **out, const char *path, int max_batch, fm_error *err)
{
    if (!out)
        return fm_error_set(err, FM_ERR_INVALID, "fm_heads_open: NULL argument");
    *out = NULL;
    if (!path || max_batch < 1)
        return fm_error_set(err, FM_ERR_INVALID, "fm_heads_open: %s",
                            path ? "max_batch must be >= 1" : "NULL path");
    fm_heads *h = calloc(1, sizeof *h);
    if (!h)
        return fm_error_set(err, FM_ERR_NOMEM, "fm_heads_open: out of memory");
    fm_status st = fm_model_open(&h->model, path, 0, err);
    if (st)
        goto fail;
    const fm_model *m = h->model;
    const char *arch = NULL, *feature = NULL;
    int64_t flip = 0;
    double alpha = 0;
    if ((st = fm_model_meta_str(m, "general.architecture", &arch, NULL, err)) != FM_OK)
        goto fail_prefix;
    if (strcmp(arch, "heads") != 0) {
        st = fm_error_set(err, FM_ERR_INVALID, "%s: architecture '%s', expected 'heads'",
                          path, arch);
        goto fail;
    }
    if ((st = fm_model_meta_str(m, "heads.backbone", &h->backbone, NULL, err)) != FM_OK ||
        (st = fm_model_meta_str(m, "heads.feature", &feature, NULL, err)) != FM_OK ||
        (st = fm_model_meta_i64(m, "heads.flip", &flip, err)) != FM_OK ||
        (st = fm_model_meta_f64(m, "heads.leaky_alpha", &alpha, err)) != FM_OK)
        goto fail_prefix;
    int f = fm_backbone_output_parse(feature);
    if (f < 0 || (flip != 0 && flip != 1) || !isfinite(alpha)) {
        st = fm_error_set(err, FM_ERR_FORMAT, "%s: heads.feature '%s' / heads.flip %lld / "
                          "heads.leaky_alpha %g not understood", path, feature,
                          (long long)flip, alpha);
        goto fail;
    }
    h->feature = (fm_backbone_output)f;
    h->flip = (int)flip;
    h->net.alpha = (float)alpha;
    h->fallback_age = 30.0;
    if (fm_model_meta_f64(m, "heads.fallback_age", &h->fallback_age, NULL) == FM_OK &&
        !(h->fallback_age >= 0 && h->fallback_age <= FM_HEADS_AGES - 1))
        h->fallback_age = 30.0;
    if ((st = meta_labels(m, "labels.gender", FM_HEADS_GENDERS, &h->gender_labels, err)) ||
        (st = meta_labels(m, "labels.race", FM_HEADS_RACES, &h->race_labels, err)))
        goto fail;

    const fm_model_tensor_info *ti = fm_model_tensor(m, "feat.mean");
    if (!ti || ti->ndim != 1 || ti->count < 1 || ti->count > 1u << 20) {
        st = fm_error_set(err, ti ? FM_ERR_FORMAT : FM_ERR_NOT_FOUND,
                          "%s: tensor 'feat.mean' %s", path,
                          ti ? "must be a vector of 1..1048576 values" : "missing");
        goto fail;
    }
    h->dim = (int)ti->count;
    uint64_t d1[1] = {(uint64_t)h->dim};
    const float *mean = NULL, *sd = NULL;
    if ((st = fm_model_tensor_expect(m, "feat.mean", 1, d1, &mean, err)) ||
        (st = fm_model_tensor_expect(m, "feat.std", 1, d1, &sd, err)))
        goto fail;
    for (int j = 0; j < h->dim; j++)
        if (!(sd[j] > 0) || !isfinite(sd[j]) || !isfinite(mean[j])) {
            st = fm_error_set(err, FM_ERR_FORMAT, "%s: feat.std[%d] = %g must be > 0", path,
                              j, sd[j]);
            goto fail;
        }
    h->scale = malloc((size_t)h->dim * sizeof *h->scale);
    h->shift = malloc((size_t)h->dim * sizeof *h->shift);
    if (!h->scale || !h->shift) {
        st = fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    fm_heads_standardiser(mean, sd, h->dim, h->scale, h->shift);
    h->net.scale = fm_tensor_make(h->dim, 1, 1, 1, h->scale);
    h->net.shift = fm_tensor_make(h->dim, 1, 1, 1, h->shift);
    h->width[0] = h->dim;
    char name[64];
    for (int k = 0;; k++) {
        snprintf(name, sizeof name, "shared.%d.weight", k);
        const fm_model_tensor_info *wi = fm_model_tensor(m, name);
        if (!wi)
            break;
        if (k == FM_HEADS_MAX_LAYERS) {
            st = fm_error_set(err, FM_ERR_FORMAT, "%s: more than %d shared layers", path,
                              FM_HEADS_MAX_LAYERS);
            goto fail;
        }
        if (wi->ndim != 2 || wi->dims[0] < 1 || wi->dims[0] > 1u << 20) {
            st = fm_error_set(err, FM_ERR_FORMAT, "%s: tensor '%s' must be [out, in]", path,
                              name);
            goto fail;
        }
        uint64_t dw[2] = {wi->dims[0], (uint64_t)h->width[k]};
        snprintf(name, sizeof name, "shared.%d", k);
        if ((st = bind_dense(m, name, dw, &h->net.w[k], &h->net.b[k], err)))
            goto fail;
        h->width[k + 1] = (int)wi->dims[0];
        h->net.n_layers = k + 1;
    }
    for (int k = 0; k < 3; k++) {
        uint64_t dw[2] = {(uint64_t)fm_heads_classes[k], (uint64_t)h->width[h->net.n_layers]};
        if ((st = bind_dense(m, head_name[k], dw, &h->net.head_w[k], &h->net.head_b[k], err)))
            goto fail;
    }

    /* measure one full step, then allocate exactly that */
    h->max_batch = max_batch;
    if ((st = fm_arena_new_measuring(&h->arena, err)) != FM_OK ||
        (st = run(h, NULL, max_batch, NULL, err)) != FM_OK)
        goto fail;
    size_t need = fm_arena_high_water(h->arena);
    fm_arena_destroy(&h->arena);
    if ((st = fm_arena_new(need, &h->arena, err)) != FM_OK)
        goto fail;
    *out = h;
    return FM_OK;

fail_prefix:
    fm_error_prefix(err, "%s", path);
fail:
    fm_heads_close(&h);
    return st;
}

void fm_heads_close(fm_heads **ph)
{
    if (!ph || !*ph)
        return;
    fm_heads *h = *ph;
    fm_arena_destroy(&h->arena);
    fm_model_close(&h->model);
    free(h->scale);
    free(h->shift);
    free(h);
    *ph = NULL;
}

int fm_heads_input_dim(const fm_heads *h) { return h->dim; }
fm_backbone_output fm_heads_feature(const fm_heads *h) { return h->feature; }
int fm_heads_flip(const fm_heads *h) { return h->flip; }
const char *fm_heads_backbone(const fm_heads *h) { return h->backbone; }
int fm_heads_layers(const fm_heads *h) { return h->net.n_layers; }
int fm_heads_hidden(const fm_heads *h) { return h->width[h->net.n_layers]; }
double fm_heads_fallback_age(const fm_heads *h) { return h->fallback_age; }
const fm_model *fm_heads_model(const fm_heads *h) { return h->model; }

const char *fm_heads_gender_label(const fm_heads *h, int i)
{
    return i >= 0 && i < FM_HEADS_GENDERS ? h->gender_labels[i] : NULL;
}

const char *fm_heads_race_label(const fm_heads *h, int i)
{
    return i >= 0 && i < FM_HEADS_RACES ? h->race_labels[i] : NULL;
}

fm_status fm_heads_forward(fm_heads *h, const float *features, int n, fm_attrs *out,
                           fm_error *err)
{
    if (!h || n < 0 || (n > 0 && (!features || !out)))
        return fm_error_set(err, FM_ERR_INVALID, "fm_heads_forward: bad argument");
    for (int i = 0; i < n; i += h->max_batch) {
        int k = n - i < h->max_batch ? n - i : h->max_batch;
        fm_status st = run(h, features + (size_t)i * (size_t)h->dim, k, out + i, err);
        if (st)
            return st;
    }
    return FM_OK;
}

fm_status fm_heads_backbone_identity(const char *backbone_path, char *buf, size_t size,
                                     fm_error *err)
{
    fm_model *m = NULL;
    fm_status st = fm_model_open(&m, backbone_path, 0, err);
    if (st)
        return st;
    const char *v[3] = {"-", "-", "-"};
    const char *keys[3] = {"general.architecture", "general.source",
                           "general.source_integrity"};
    for (int i = 0; i < 3; i++)
        fm_model_meta_str(m, keys[i], &v[i], NULL, NULL);
    int n = snprintf(buf, size, "%s %s %s", v[0], v[1], v[2]);
    if (n < 0 || (size_t)n >= size)
        st = fm_error_set(err, FM_ERR_LIMIT, "%s: backbone identity longer than %zu bytes",
                          backbone_path, size);
    fm_model_close(&m);
    return st;
}
