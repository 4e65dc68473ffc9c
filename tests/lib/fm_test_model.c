/* fm_test_model.c - the fixtures of fm_test_model.h. */
#include "fm_test_model.h"

#include "facemill/heads.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- model file bytes ---------------------------------------------------------------- */

uint32_t fm_test_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t fm_test_get64(const uint8_t *p)
{
    return (uint64_t)fm_test_get32(p) | (uint64_t)fm_test_get32(p + 4) << 32;
}

void fm_test_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void fm_test_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void fm_test_fix_index_crc(uint8_t *b, size_t len)
{
    if (len < 128)
        return;
    uint64_t dir_offset = fm_test_get64(b + 40), dir_size = fm_test_get64(b + 48);
    if (dir_offset > len || dir_size > len - dir_offset || dir_offset + dir_size < 128)
        return;
    fm_test_put32(b + 72, 0);
    fm_test_put32(b + 72, fm_model_crc32(0, b, (size_t)(dir_offset + dir_size)));
}

/* ---- random tensors ------------------------------------------------------------------ */

fm_tensor fm_test_tensor(fm_test_rng *r, int n, int c, int h, int w)
{
    fm_tensor t = fm_tensor_make(n, c, h, w, NULL);
    size_t count = fm_tensor_count(&t);
    t.data = fm_test_alloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++)
        t.data[i] = fm_test_rng_signed(r);
    return t;
}

void fm_test_tensor_free(fm_tensor *t)
{
    free(t->data);
    t->data = NULL;
}

/* ---- heads files --------------------------------------------------------------------- */

int fm_test_heads_tensor(fm_test_rng *r, fm_model_writer *w, const char *name, uint64_t d0,
                         uint64_t d1, float scale, float offset)
{
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    float *v = malloc(n * sizeof *v);
    if (!v)
        return -1;
    for (size_t i = 0; i < n; i++)
        v[i] = offset + scale * (float)fm_test_rng_range(r, -1, 1);
    uint64_t dims[2] = {d0, d1};
    fm_status st = fm_model_writer_add_tensor(w, name, d1 ? 2 : 1, dims, v, NULL);
    free(v);
    return st == FM_OK ? 0 : -1;
}

int fm_test_write_heads(fm_test_rng *r, const char *path, const char *backbone,
                        const char *feature, int flip, int dim, int n_hidden,
                        const int *hidden)
{
    fm_model_writer *w = fm_model_writer_new();
    static const char *const g[] = {"male", "female"};
    static const char *const races[] = {"White", "Black", "Asian", "Indian", "Others"};
    int ok = w && fm_model_writer_add_str(w, "general.architecture", "heads", NULL) == 0 &&
             fm_model_writer_add_str(w, "heads.backbone", backbone, NULL) == 0 &&
             fm_model_writer_add_str(w, "heads.feature", feature, NULL) == 0 &&
             fm_model_writer_add_i64(w, "heads.flip", flip, NULL) == 0 &&
             fm_model_writer_add_f64(w, "heads.leaky_alpha", 0.1, NULL) == 0 &&
             fm_model_writer_add_f64(w, "heads.fallback_age", 33.5, NULL) == 0 &&
             fm_model_writer_add_str_array(w, "labels.gender", g, 2, NULL) == 0 &&
             fm_model_writer_add_str_array(w, "labels.race", races, 5, NULL) == 0 &&
             fm_test_heads_tensor(r, w, "feat.mean", (uint64_t)dim, 0, 0.5f, 0.0f) == 0 &&
             fm_test_heads_tensor(r, w, "feat.std", (uint64_t)dim, 0, 0.4f, 1.0f) == 0;
    int in = dim;
    char name[64];
    for (int k = 0; ok && k < n_hidden; k++) {
        snprintf(name, sizeof name, "shared.%d.weight", k);
        ok = fm_test_heads_tensor(r, w, name, (uint64_t)hidden[k], (uint64_t)in, 0.3f, 0) == 0;
        snprintf(name, sizeof name, "shared.%d.bias", k);
        ok = ok && fm_test_heads_tensor(r, w, name, (uint64_t)hidden[k], 0, 0.1f, 0) == 0;
        in = hidden[k];
    }
    const char *hn[3] = {"age", "gender", "race"};
    const int hk[3] = {FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES};
    for (int k = 0; ok && k < 3; k++) {
        snprintf(name, sizeof name, "%s.weight", hn[k]);
        ok = fm_test_heads_tensor(r, w, name, (uint64_t)hk[k], (uint64_t)in, 0.3f, 0) == 0;
        snprintf(name, sizeof name, "%s.bias", hn[k]);
        ok = ok && fm_test_heads_tensor(r, w, name, (uint64_t)hk[k], 0, 0.5f, 0) == 0;
    }
    ok = ok && fm_model_writer_save(w, path, NULL) == FM_OK;
    fm_model_writer_destroy(&w);
    return ok ? 0 : -1;
}
