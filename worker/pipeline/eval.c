/* eval.c - UTKFace labels and the evaluation metrics (include/facemill/eval.h): pure
 * computation, so tests can compare it with hand-computed numbers. */
#include "facemill/eval.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static const char *base_of(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Reads a decimal number of 1..3 digits ending at '_'; -1 otherwise. */
static int field(const char **s)
{
    int v = 0, digits = 0;
    while (**s >= '0' && **s <= '9') {
        if (++digits > 3)
            return -1;
        v = v * 10 + (**s - '0');
        (*s)++;
    }
    if (digits == 0 || **s != '_')
        return -1;
    (*s)++;
    return v;
}

int fm_utk_parse_name(const char *name, fm_utk_label *out)
{
    if (!name)
        return -1;
    const char *s = base_of(name);
    int age = field(&s), gender = field(&s), race = field(&s);
    if (age < 0 || age >= FM_HEADS_AGES || gender < 0 || gender >= FM_HEADS_GENDERS ||
        race < 0 || race >= FM_HEADS_RACES)
        return -1;
    out->age = age;
    out->gender = gender;
    out->race = race;
    return 0;
}

int fm_utk_in_holdout(const char *path, double share)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *s = (const unsigned char *)base_of(path); *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    /* top 53 bits as a fraction in [0, 1) */
    double u = (double)(h >> 11) / 9007199254740992.0;
    return u < share;
}

int fm_eval_age_band(int age)
{
    int b = age / 10;
    return b < 0 ? 0 : b >= FM_EVAL_AGE_BANDS ? FM_EVAL_AGE_BANDS - 1 : b;
}

const char *fm_eval_age_band_name(int band)
{
    static const char *const names[FM_EVAL_AGE_BANDS] = {"0-9",   "10-19", "20-29",
                                                         "30-39", "40-49", "50-59",
                                                         "60-69", "70+"};
    return band >= 0 && band < FM_EVAL_AGE_BANDS ? names[band] : NULL;
}

/* Running sums behind one fm_eval_metrics. */
typedef struct acc {
    int n, n_det;
    double abs_err, sq_err;
    int gender_ok, race_ok;
} acc;

static void add(acc *a, const fm_eval_item *it, double fallback)
{
    double age = it->detected ? it->age : fallback;
    double e = age - it->truth.age;
    a->n++;
    a->abs_err += fabs(e);
    a->sq_err += e * e;
    if (it->detected) {
        a->n_det++;
        a->gender_ok += it->gender == it->truth.gender;
        a->race_ok += it->race == it->truth.race;
    }
}

static fm_eval_metrics finish(const acc *a)
{
    fm_eval_metrics m = {0};
    m.n = a->n;
    m.n_detected = a->n_det;
    if (a->n > 0) {
        m.detect_rate = (double)a->n_det / a->n;
        m.age_mae = a->abs_err / a->n;
        m.age_rmse = sqrt(a->sq_err / a->n);
        m.gender_acc = (double)a->gender_ok / a->n;
        m.race_acc = (double)a->race_ok / a->n;
    }
    return m;
}

void fm_eval_compute(const fm_eval_item *items, int n, double fallback_age,
                     fm_eval_report *r)
{
    memset(r, 0, sizeof *r);
    r->fallback_age = fallback_age;
    acc all = {0}, det = {0}, rg[FM_HEADS_RACES][FM_HEADS_GENDERS], band[FM_EVAL_AGE_BANDS];
    memset(rg, 0, sizeof rg);
    memset(band, 0, sizeof band);
    for (int i = 0; i < n; i++) {
        const fm_eval_item *it = &items[i];
        const fm_utk_label *t = &it->truth;
        assert(t->age >= 0 && t->age < FM_HEADS_AGES);
        assert(t->gender >= 0 && t->gender < FM_HEADS_GENDERS);
        assert(t->race >= 0 && t->race < FM_HEADS_RACES);
        add(&all, it, fallback_age);
        add(&rg[t->race][t->gender], it, fallback_age);
        add(&band[fm_eval_age_band(t->age)], it, fallback_age);
        if (it->detected) {
            add(&det, it, fallback_age);
            assert(it->gender >= 0 && it->gender < FM_HEADS_GENDERS);
            assert(it->race >= 0 && it->race < FM_HEADS_RACES);
            r->gender_confusion[t->gender][it->gender]++;
            r->race_confusion[t->race][it->race]++;
        } else {
            r->gender_confusion[t->gender][FM_HEADS_GENDERS]++;
            r->race_confusion[t->race][FM_HEADS_RACES]++;
        }
    }
    r->all = finish(&all);
    r->detected = finish(&det);
    for (int a = 0; a < FM_HEADS_RACES; a++)
        for (int g = 0; g < FM_HEADS_GENDERS; g++)
            r->by_race_gender[a][g] = finish(&rg[a][g]);
    for (int b = 0; b < FM_EVAL_AGE_BANDS; b++)
        r->by_age_band[b] = finish(&band[b]);
}
