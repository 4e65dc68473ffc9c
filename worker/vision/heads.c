/* heads.c - the attribute heads (include/facemill/heads.h): loads a "heads" model
 * file, checks its metadata and that its layers chain, and runs feature vectors
 * through the shared layers and the three softmax heads on the engine's dense and
 * LeakyReLU operations, in one arena measured at open.
 */
#include "facemill/heads.h"
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
    int n_layers;
    int width[FM_HEADS_MAX_LAYERS + 1]; /* width[0] = dim, width[k+1] = layer k */
    const float *w[FM_HEADS_MAX_LAYERS], *b[FM_HEADS_MAX_LAYERS];
    const float *head_w[3], *head_b[3];
    const float *mean, *std;
    float alpha;
    int flip;
    fm_backbone_output feature;
    const char *backbone;
    double fallback_age;
    const char *const *gender_labels;
    const char *const *race_labels;
};

static const int head_size[3] = {FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES};
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
    if (st)
        return fm_error_prefix(err, "%s", fm_model_path(m));
    if (count != want)
        return fm_error_set(err, FM_ERR_FORMAT, "%s: %s has %zu names, expected %zu",
                            fm_model_path(m), key, count, want);
    return FM_OK;
}

/* Runs n <= max_batch rows (measuring when the arena measures: data may be NULL). */
static fm_status run(fm_heads *h, const float *features, int n, fm_attrs *out,
                     fm_error *err)
{
    fm_arena *a = h->arena;
    int measuring = fm_arena_is_measuring(a);
    fm_arena_reset(a, 0);
    fm_tensor x, y, logits[3];
    fm_status st = fm_tensor_alloc(a, n, h->dim, 1, 1, &x, err);
    if (st)
        return st;
    if (!measuring) {
        for (int i = 0; i < n; i++) {
            const float *src = features + (size_t)i * (size_t)h->dim;
            float *dst = x.data + (size_t)i * (size_t)h->dim;
            for (int j = 0; j < h->dim; j++)
                dst[j] = (src[j] - h->mean[j]) / h->std[j];
        }
    }
    for (int k = 0; k < h->n_layers; k++) {
        int in = h->width[k], o = h->width[k + 1];
        fm_tensor w = fm_tensor_make(o, in, 1, 1, (float *)h->w[k]);
        fm_tensor b = fm_tensor_make(o, 1, 1, 1, (float *)h->b[k]);
        if ((st = fm_tensor_alloc(a, n, o, 1, 1, &y, err)) != FM_OK ||
            (st = fm_nn_dense(a, &x, &w, &b, &y, err)) != FM_OK ||
            (st = fm_nn_leaky_relu(a, &y, h->alpha, &y, err)) != FM_OK)
            return st;
        x = y;
    }
    for (int k = 0; k < 3; k++) {
        int in = h->width[h->n_layers];
        fm_tensor w = fm_tensor_make(head_size[k], in, 1, 1, (float *)h->head_w[k]);
        fm_tensor b = fm_tensor_make(head_size[k], 1, 1, 1, (float *)h->head_b[k]);
        if ((st = fm_tensor_alloc(a, n, head_size[k], 1, 1, &logits[k], err)) != FM_OK ||
            (st = fm_nn_dense(a, &x, &w, &b, &logits[k], err)) != FM_OK)
            return st;
    }
    if (!measuring)
        for (int i = 0; i < n; i++)
            fm_attrs_from_logits(logits[0].data + (size_t)i * FM_HEADS_AGES,
                                 logits[1].data + (size_t)i * FM_HEADS_GENDERS,
                                 logits[2].data + (size_t)i * FM_HEADS_RACES, &out[i]);
    fm_arena_reset(a, 0);
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
    h->alpha = (float)alpha;
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
    if ((st = fm_model_tensor_expect(m, "feat.mean", 1, d1, &h->mean, err)) ||
        (st = fm_model_tensor_expect(m, "feat.std", 1, d1, &h->std, err)))
        goto fail;
    for (int j = 0; j < h->dim; j++)
        if (!(h->std[j] > 0) || !isfinite(h->std[j]) || !isfinite(h->mean[j])) {
            st = fm_error_set(err, FM_ERR_FORMAT, "%s: feat.std[%d] = %g must be > 0", path,
                              j, h->std[j]);
            goto fail;
        }
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
        if ((st = fm_model_tensor_expect(m, name, 2, dw, &h->w[k], err)))
            goto fail;
        snprintf(name, sizeof name, "shared.%d.bias", k);
        if ((st = fm_model_tensor_expect(m, name, 1, dw, &h->b[k], err)))
            goto fail;
        h->width[k + 1] = (int)wi->dims[0];
        h->n_layers = k + 1;
    }
    for (int k = 0; k < 3; k++) {
        uint64_t dw[2] = {(uint64_t)head_size[k], (uint64_t)h->width[h->n_layers]};
        snprintf(name, sizeof name, "%s.weight", head_name[k]);
        if ((st = fm_model_tensor_expect(m, name, 2, dw, &h->head_w[k], err)))
            goto fail;
        snprintf(name, sizeof name, "%s.bias", head_name[k]);
        if ((st = fm_model_tensor_expect(m, name, 1, dw, &h->head_b[k], err)))
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
    free(h);
    *ph = NULL;
}

int fm_heads_input_dim(const fm_heads *h) { return h->dim; }
fm_backbone_output fm_heads_feature(const fm_heads *h) { return h->feature; }
int fm_heads_flip(const fm_heads *h) { return h->flip; }
const char *fm_heads_backbone(const fm_heads *h) { return h->backbone; }
int fm_heads_layers(const fm_heads *h) { return h->n_layers; }
int fm_heads_hidden(const fm_heads *h) { return h->width[h->n_layers]; }
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
