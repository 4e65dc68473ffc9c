/* heads_fixture.h - writes small "heads" model files with random weights for the
 * tests of the heads, the pipeline and the labelling commands, so none of them
 * depends on the trained file's numbers. Header-only: each test includes it once. */
#ifndef FM_HEADS_FIXTURE_H
#define FM_HEADS_FIXTURE_H

#include "facemill/heads.h"
#include "facemill/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t fixture_rng = 88172645463325252ULL;

static float fixture_uniform(void) /* [-1, 1) */
{
    fixture_rng ^= fixture_rng << 13;
    fixture_rng ^= fixture_rng >> 7;
    fixture_rng ^= fixture_rng << 17;
    return (float)((double)(fixture_rng >> 11) / 4503599627370496.0 - 1.0);
}

static int fixture_tensor(fm_model_writer *w, const char *name, uint64_t d0, uint64_t d1,
                          float scale, float offset)
{
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    float *v = malloc(n * sizeof *v);
    if (!v)
        return -1;
    for (size_t i = 0; i < n; i++)
        v[i] = offset + scale * fixture_uniform();
    uint64_t dims[2] = {d0, d1};
    fm_status st = fm_model_writer_add_tensor(w, name, d1 ? 2 : 1, dims, v, NULL);
    free(v);
    return st == FM_OK ? 0 : -1;
}

/* Writes a heads file at path for dim-long features with the given hidden widths
 * (n_hidden of them), feature "pooled"/"embedding", flip 0/1, backbone identity.
 * Returns 0 on success. */
static int fixture_write_heads(const char *path, const char *backbone, const char *feature,
                               int flip, int dim, int n_hidden, const int *hidden)
{
    fm_model_writer *w = fm_model_writer_new();
    static const char *const g[] = {"male", "female"};
    static const char *const r[] = {"White", "Black", "Asian", "Indian", "Others"};
    int ok = w && fm_model_writer_add_str(w, "general.architecture", "heads", NULL) == 0 &&
             fm_model_writer_add_str(w, "heads.backbone", backbone, NULL) == 0 &&
             fm_model_writer_add_str(w, "heads.feature", feature, NULL) == 0 &&
             fm_model_writer_add_i64(w, "heads.flip", flip, NULL) == 0 &&
             fm_model_writer_add_f64(w, "heads.leaky_alpha", 0.1, NULL) == 0 &&
             fm_model_writer_add_f64(w, "heads.fallback_age", 33.5, NULL) == 0 &&
             fm_model_writer_add_str_array(w, "labels.gender", g, 2, NULL) == 0 &&
             fm_model_writer_add_str_array(w, "labels.race", r, 5, NULL) == 0 &&
             fixture_tensor(w, "feat.mean", (uint64_t)dim, 0, 0.5f, 0.0f) == 0 &&
             fixture_tensor(w, "feat.std", (uint64_t)dim, 0, 0.4f, 1.0f) == 0;
    int in = dim;
    char name[64];
    for (int k = 0; ok && k < n_hidden; k++) {
        snprintf(name, sizeof name, "shared.%d.weight", k);
        ok = fixture_tensor(w, name, (uint64_t)hidden[k], (uint64_t)in, 0.3f, 0) == 0;
        snprintf(name, sizeof name, "shared.%d.bias", k);
        ok = ok && fixture_tensor(w, name, (uint64_t)hidden[k], 0, 0.1f, 0) == 0;
        in = hidden[k];
    }
    const char *hn[3] = {"age", "gender", "race"};
    const int hk[3] = {FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES};
    for (int k = 0; ok && k < 3; k++) {
        snprintf(name, sizeof name, "%s.weight", hn[k]);
        ok = fixture_tensor(w, name, (uint64_t)hk[k], (uint64_t)in, 0.3f, 0) == 0;
        snprintf(name, sizeof name, "%s.bias", hn[k]);
        ok = ok && fixture_tensor(w, name, (uint64_t)hk[k], 0, 0.5f, 0) == 0;
    }
    ok = ok && fm_model_writer_save(w, path, NULL) == FM_OK;
    fm_model_writer_destroy(&w);
    return ok ? 0 : -1;
}

#endif
