/* eval.c - UTKFace labels and the evaluation metrics (include/facemill/eval.h): pure
 * computation, so tests can compare it with hand-computed numbers. */
#include "facemill/eval.h"
#include "facemill/heads.h"
#include "facemill/result_json.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
    int n, n_det, n_placed;
    double abs_err, sq_err;
    int gender_ok, race_ok;
} acc;

static void add(acc *a, const fm_eval_item *it, double fallback)
{
    int has = it->detected || it->placed; /* predictions */
    double age = has ? it->age : fallback;
    double e = age - it->truth.age;
    a->n++;
    a->abs_err += fabs(e);
    a->sq_err += e * e;
    a->n_det += it->detected != 0;
    a->n_placed += !it->detected && it->placed;
    if (has) {
        a->gender_ok += it->gender == it->truth.gender;
        a->race_ok += it->race == it->truth.race;
    }
}

static fm_eval_metrics finish(const acc *a)
{
    fm_eval_metrics m = {0};
    m.n = a->n;
    m.n_detected = a->n_det;
    m.n_placed = a->n_placed;
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
        if (it->detected)
            add(&det, it, fallback_age);
        if (it->detected || it->placed) {
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

/* ---- statistics ---------------------------------------------------------------- */

/* splitmix64: a small generator whose stream depends only on the seed */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* uniform in 0..n-1 (n < 2^32; the bias of the multiply-shift is below 2^-32 n) */
static int pick(uint64_t *s, int n)
{
    return (int)(((next_u64(s) >> 32) * (uint64_t)n) >> 32);
}

uint64_t fm_utk_name_hash(const char *path, uint64_t seed)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *s = (const unsigned char *)base_of(path); *s; s++) {
        h ^= *s;
        h *= 1099511628211ULL;
    }
    uint64_t st = h ^ (seed * 0xD1B54A32D192ED03ULL);
    return next_u64(&st);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double fm_eval_quantile(double *v, int n, double q)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double pos = q * (n - 1);
    int i = (int)floor(pos);
    if (i >= n - 1)
        return v[n - 1];
    if (i < 0)
        return v[0];
    return v[i] + (pos - i) * (v[i + 1] - v[i]);
}

double fm_eval_mcnemar(int b, int c)
{
    int n = b + c, k = b < c ? b : c;
    if (n <= 0)
        return 1.0;
    /* P(X <= k), X ~ binomial(n, 1/2), term by term in logs */
    double sum = 0, lfn = lgamma(n + 1.0), l2 = n * log(2.0);
    for (int i = 0; i <= k; i++)
        sum += exp(lfn - lgamma(i + 1.0) - lgamma(n - i + 1.0) - l2);
    double p = 2 * sum;
    return p < 1 ? p : 1;
}

/* What one image adds to the sums: age errors with the fallback, and whether gender
 * and ethnicity are right (no face: wrong). */
typedef struct unit {
    double abs_err, sq_err;
    unsigned char det, placed, g_ok, r_ok;
} unit;

static void unit_of(const fm_eval_item *it, double fallback, unit *u)
{
    int has = it->detected || it->placed;
    double e = (has ? it->age : fallback) - it->truth.age;
    u->abs_err = fabs(e);
    u->sq_err = e * e;
    u->det = it->detected != 0;
    u->placed = !it->detected && it->placed;
    u->g_ok = has && it->gender == it->truth.gender;
    u->r_ok = has && it->race == it->truth.race;
}

/* Sums of a sample, and their metrics (all images, detected only). */
typedef struct sums {
    int n, n_det, n_placed, g_ok, r_ok, g_ok_det, r_ok_det;
    double abs_err, sq_err, abs_det, sq_det;
} sums;

static void sums_add(sums *s, const unit *u)
{
    s->n++;
    s->abs_err += u->abs_err;
    s->sq_err += u->sq_err;
    s->g_ok += u->g_ok;
    s->r_ok += u->r_ok;
    s->n_placed += u->placed;
    if (u->det) {
        s->n_det++;
        s->abs_det += u->abs_err;
        s->sq_det += u->sq_err;
        s->g_ok_det += u->g_ok;
        s->r_ok_det += u->r_ok;
    }
}

static void sums_metrics(const sums *s, fm_eval_metrics *all, fm_eval_metrics *det)
{
    memset(all, 0, sizeof *all);
    memset(det, 0, sizeof *det);
    all->n = s->n;
    all->n_detected = det->n = det->n_detected = s->n_det;
    all->n_placed = s->n_placed;
    if (s->n > 0) {
        all->detect_rate = (double)s->n_det / s->n;
        all->age_mae = s->abs_err / s->n;
        all->age_rmse = sqrt(s->sq_err / s->n);
        all->gender_acc = (double)s->g_ok / s->n;
        all->race_acc = (double)s->r_ok / s->n;
    }
    if (s->n_det > 0) {
        det->detect_rate = 1;
        det->age_mae = s->abs_det / s->n_det;
        det->age_rmse = sqrt(s->sq_det / s->n_det);
        det->gender_acc = (double)s->g_ok_det / s->n_det;
        det->race_acc = (double)s->r_ok_det / s->n_det;
    }
}

enum { F_DET, F_MAE, F_RMSE, F_GENDER, F_RACE, F_COUNT };

static double field_of(const fm_eval_metrics *m, int f)
{
    switch (f) {
    case F_DET: return m->detect_rate;
    case F_MAE: return m->age_mae;
    case F_RMSE: return m->age_rmse;
    case F_GENDER: return m->gender_acc;
    default: return m->race_acc;
    }
}

static fm_eval_ci *ci_of(fm_eval_cis *c, int f)
{
    fm_eval_ci *v[F_COUNT] = {&c->detect_rate, &c->age_mae, &c->age_rmse, &c->gender_acc,
                              &c->race_acc};
    return v[f];
}

/* Fills *c from resamples values of each field (vals: F_COUNT rows of resamples). */
static void cis_from(double *vals, int resamples, fm_eval_cis *c)
{
    for (int f = 0; f < F_COUNT; f++) {
        double *v = vals + (size_t)f * (size_t)resamples;
        ci_of(c, f)->lo = fm_eval_quantile(v, resamples, 0.025);
        ci_of(c, f)->hi = fm_eval_quantile(v, resamples, 0.975);
    }
}

int fm_eval_bootstrap(const fm_eval_item *items, int n, double fallback_age, int resamples,
                      uint64_t seed, fm_eval_cis *all, fm_eval_cis *detected)
{
    memset(all, 0, sizeof *all);
    if (detected)
        memset(detected, 0, sizeof *detected);
    if (resamples < 1)
        return -1;
    if (n <= 0)
        return 0;
    unit *u = malloc((size_t)n * sizeof *u);
    double *va = malloc((size_t)F_COUNT * (size_t)resamples * sizeof *va);
    double *vd = malloc((size_t)F_COUNT * (size_t)resamples * sizeof *vd);
    if (!u || !va || !vd) {
        free(u);
        free(va);
        free(vd);
        return -1;
    }
    for (int i = 0; i < n; i++)
        unit_of(&items[i], fallback_age, &u[i]);
    uint64_t s = seed;
    for (int r = 0; r < resamples; r++) {
        sums sm = {0};
        for (int i = 0; i < n; i++)
            sums_add(&sm, &u[pick(&s, n)]);
        fm_eval_metrics ma, md;
        sums_metrics(&sm, &ma, &md);
        for (int f = 0; f < F_COUNT; f++) {
            va[(size_t)f * (size_t)resamples + (size_t)r] = field_of(&ma, f);
            vd[(size_t)f * (size_t)resamples + (size_t)r] = field_of(&md, f);
        }
    }
    cis_from(va, resamples, all);
    if (detected)
        cis_from(vd, resamples, detected);
    free(u);
    free(va);
    free(vd);
    return 0;
}

int fm_eval_compare(const fm_eval_item *a, double fallback_a, const fm_eval_item *b,
                    double fallback_b, int n, int resamples, uint64_t seed,
                    fm_eval_paired *out)
{
    memset(out, 0, sizeof *out);
    if (resamples < 1)
        return -1;
    out->n = n;
    out->gender_p = out->race_p = 1;
    if (n <= 0)
        return 0;
    unit *ua = malloc((size_t)n * sizeof *ua), *ub = malloc((size_t)n * sizeof *ub);
    double *v = malloc((size_t)F_COUNT * (size_t)resamples * sizeof *v);
    if (!ua || !ub || !v) {
        free(ua);
        free(ub);
        free(v);
        return -1;
    }
    sums sa = {0}, sb = {0};
    for (int i = 0; i < n; i++) {
        assert(a[i].truth.age == b[i].truth.age && a[i].truth.gender == b[i].truth.gender &&
               a[i].truth.race == b[i].truth.race);
        unit_of(&a[i], fallback_a, &ua[i]);
        unit_of(&b[i], fallback_b, &ub[i]);
        sums_add(&sa, &ua[i]);
        sums_add(&sb, &ub[i]);
        out->gender_b += ua[i].g_ok && !ub[i].g_ok;
        out->gender_c += !ua[i].g_ok && ub[i].g_ok;
        out->race_b += ua[i].r_ok && !ub[i].r_ok;
        out->race_c += !ua[i].r_ok && ub[i].r_ok;
    }
    fm_eval_metrics unused;
    sums_metrics(&sa, &out->a, &unused);
    sums_metrics(&sb, &out->b, &unused);
    out->gender_p = fm_eval_mcnemar(out->gender_b, out->gender_c);
    out->race_p = fm_eval_mcnemar(out->race_b, out->race_c);
    uint64_t s = seed;
    for (int r = 0; r < resamples; r++) {
        sums ra = {0}, rb = {0};
        for (int i = 0; i < n; i++) {
            int k = pick(&s, n);
            sums_add(&ra, &ua[k]);
            sums_add(&rb, &ub[k]);
        }
        fm_eval_metrics ma, mb;
        sums_metrics(&ra, &ma, &unused);
        sums_metrics(&rb, &mb, &unused);
        for (int f = 0; f < F_COUNT; f++)
            v[(size_t)f * (size_t)resamples + (size_t)r] = field_of(&ma, f) - field_of(&mb, f);
    }
    fm_eval_cis c;
    cis_from(v, resamples, &c);
    fm_eval_diff *d[F_COUNT] = {&out->detect_rate, &out->age_mae, &out->age_rmse,
                                &out->gender_acc, &out->race_acc};
    for (int f = 0; f < F_COUNT; f++) {
        d[f]->diff = field_of(&out->a, f) - field_of(&out->b, f);
        d[f]->ci = *ci_of(&c, f);
    }
    free(ua);
    free(ub);
    free(v);
    return 0;
}

/* ---- per-image results saved by `facemill eval --save-results` ------------------ */

/* The value of key in line: what follows "key", blanks, a colon and blanks (JSON
 * written compactly, as `facemill eval` does, or with spaces, as Python's json module
 * and jq do); NULL when absent. An occurrence that is a string value, not a key (no
 * colon after it), is passed over. */
static const char *after_key(const char *line, const char *key)
{
    const size_t len = strlen(key);
    for (const char *s = line; (s = strchr(s, '"')) != NULL; s++) {
        if (strncmp(s + 1, key, len) != 0 || s[1 + len] != '"')
            continue;
        const char *t = s + len + 2;
        while (*t == ' ' || *t == '\t')
            t++;
        if (*t != ':')
            continue;
        t++;
        while (*t == ' ' || *t == '\t')
            t++;
        return t;
    }
    return NULL;
}

static int read_num(const char *line, const char *key, double *v)
{
    const char *s = after_key(line, key);
    if (!s)
        return -1;
    char *end;
    *v = strtod(s, &end);
    return end == s ? -1 : 0;
}

/* The index of the class name after KEY among names, or -1. */
static int read_class(const char *line, const char *key, const char *const *names, int n)
{
    const char *s = after_key(line, key);
    if (!s || *s != '"')
        return -1;
    for (int k = 0; k < n; k++) {
        size_t len = strlen(names[k]);
        if (!strncmp(s + 1, names[k], len) && s[1 + len] == '"')
            return k;
    }
    return -1;
}

/* One saved line. */
typedef struct saved {
    char *file;
    fm_eval_item item;
} saved;

static int cmp_saved(const void *a, const void *b)
{
    return strcmp(((const saved *)a)->file, ((const saved *)b)->file);
}

/* Parses one line written by save_results; -1 when it is not one. */
static int parse_saved(const char *line, saved *s)
{
    memset(s, 0, sizeof *s);
    const char *f = after_key(line, "file");
    if (!f || *f++ != '"')
        return -1;
    const char *q = strchr(f, '"');
    if (!q)
        return -1;
    double age;
    fm_eval_item *it = &s->item;
    it->truth.gender = read_class(line, "true_gender", fm_result_gender_names, 2);
    it->truth.race = read_class(line, "true_race", fm_result_race_names, 5);
    if (read_num(line, "true_age", &age) || age < 0 || age >= FM_HEADS_AGES ||
        it->truth.gender < 0 || it->truth.race < 0)
        return -1;
    it->truth.age = (int)age;
    const char *face = after_key(line, "face");
    if (!face)
        return -1;
    const char *placed = after_key(line, "placed");
    int is_face = !strncmp(face, "true", 4);
    if (is_face || (placed && !strncmp(placed, "true", 4))) {
        double v;
        it->detected = is_face;
        it->placed = !is_face;
        it->gender = read_class(line, "gender", fm_result_gender_names, 2);
        it->race = read_class(line, "race", fm_result_race_names, 5);
        if (read_num(line, "age", &v) || it->gender < 0 || it->race < 0)
            return -1;
        it->age = (float)v;
        if (read_num(line, "age_std", &v) == 0)
            it->age_std = (float)v;
        char key[32];
        for (int k = 0; k < FM_HEADS_GENDERS; k++) {
            snprintf(key, sizeof key, "%s", fm_result_gender_names[k]);
            if (read_num(line, key, &v) == 0)
                it->gender_probs[k] = (float)v;
        }
        for (int k = 0; k < FM_HEADS_RACES; k++) {
            snprintf(key, sizeof key, "%s", fm_result_race_names[k]);
            if (read_num(line, key, &v) == 0)
                it->race_probs[k] = (float)v;
        }
    } else if (strncmp(face, "false", 5))
        return -1;
    if (!(s->file = strndup(f, (size_t)(q - f))))
        return -1;
    return 0;
}

/* See eval.h. */
int fm_eval_read_saved(const char *path, int n_images, const char *const *paths,
                       fm_eval_item *other, unsigned char *found, fm_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
        return -1;
    }
    saved *v = NULL;
    int n = 0, cap = 0, rc = -1, line_no = 0;
    char *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        line_no++;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            saved *g = realloc(v, (size_t)cap * sizeof *v);
            if (!g) {
                fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
                goto done;
            }
            v = g;
        }
        if (parse_saved(line, &v[n]) != 0) {
            fm_error_set(err, FM_ERR_FORMAT,
                         "%s:%d: not a line of `facemill eval --save-results`", path, line_no);
            goto done;
        }
        n++;
    }
    if (v)
        qsort(v, (size_t)n, sizeof *v, cmp_saved);
    for (int i = 1; i < n; i++) /* a name twice: which line is meant? */
        if (strcmp(v[i - 1].file, v[i].file) == 0) {
            fm_error_set(err, FM_ERR_FORMAT, "%s: the image '%s' is in it twice", path,
                         v[i].file);
            goto done;
        }
    rc = 0;
    for (int i = 0; i < n_images; i++) {
        const char *slash = strrchr(paths[i], '/');
        saved key = {.file = (char *)(slash ? slash + 1 : paths[i])};
        const saved *s = v ? bsearch(&key, v, (size_t)n, sizeof *v, cmp_saved) : NULL;
        found[i] = s != NULL;
        if (!s)
            continue;
        other[i] = s->item;
        rc++;
    }
done:
    for (int i = 0; i < n; i++)
        free(v[i].file);
    free(v);
    free(line);
    fclose(f);
    return rc;
}
