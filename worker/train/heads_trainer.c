/* heads_trainer.c - the frozen-feature trainer of the attribute heads
 * (include/facemill/train.h): a small MLP with hand-written backward passes for
 * dense layers, LeakyReLU and softmax cross-entropy, trained with mini-batch Adam on
 * cblas_sgemm, and written out in the layout heads.c reads.
 */
#include "train-impl.h"
#include "facemill/train.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the network ------------------------------------------------------------- */

fm_status fm_mlp_init(fm_mlp *m, int dim, int n_hidden, const int *hidden, float alpha,
                      int max_batch, fm_error *err)
{
    memset(m, 0, sizeof *m);
    if (dim < 1 || n_hidden < 0 || n_hidden > FM_HEADS_MAX_LAYERS || max_batch < 1)
        return fm_error_set(err, FM_ERR_INVALID, "trainer: bad network shape");
    m->n_hidden = n_hidden;
    m->alpha = alpha;
    m->max_batch = max_batch;
    m->width[0] = dim;
    for (int l = 0; l < n_hidden; l++) {
        if (hidden[l] < 1 || hidden[l] > 65536)
            return fm_error_set(err, FM_ERR_INVALID, "trainer: hidden width %d", hidden[l]);
        m->width[l + 1] = hidden[l];
    }
    m->width[n_hidden + 1] = FM_HEADS_OUTPUTS;
    size_t off = 0;
    int maxw = 0;
    for (int l = 0; l <= n_hidden; l++) {
        m->w_off[l] = off;
        off += (size_t)m->width[l + 1] * (size_t)m->width[l];
        m->b_off[l] = off;
        off += (size_t)m->width[l + 1];
    }
    m->n_params = off;
    for (int l = 0; l <= n_hidden + 1; l++)
        if (m->width[l] > maxw)
            maxw = m->width[l];
    int ok = 1;
    for (int l = 1; l <= n_hidden + 1 && ok; l++) {
        m->z[l] = malloc((size_t)max_batch * (size_t)m->width[l] * sizeof(float));
        m->a[l] = malloc((size_t)max_batch * (size_t)m->width[l] * sizeof(float));
        ok = m->z[l] && m->a[l];
    }
    m->d0 = malloc((size_t)max_batch * (size_t)maxw * sizeof(float));
    m->d1 = malloc((size_t)max_batch * (size_t)maxw * sizeof(float));
    if (!ok || !m->d0 || !m->d1) {
        fm_mlp_free(m);
        return fm_error_set(err, FM_ERR_NOMEM, "trainer: out of memory");
    }
    return FM_OK;
}

void fm_mlp_free(fm_mlp *m)
{
    for (int l = 0; l < FM_HEADS_MAX_LAYERS + 2; l++) {
        free(m->z[l]);
        free(m->a[l]);
        m->z[l] = m->a[l] = NULL;
    }
    free(m->d0);
    free(m->d1);
    m->d0 = m->d1 = NULL;
}

/* y [n, out] = x [n, in] W^T + b */
static void dense(const float *x, const float *W, const float *b, int n, int in, int out,
                  float *y)
{
    for (int i = 0; i < n; i++)
        memcpy(y + (size_t)i * (size_t)out, b, (size_t)out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, W, in,
                1.0f, y, out);
}

void fm_mlp_forward(fm_mlp *m, const float *theta, const float *x, int n,
                    const float *mask)
{
    const float *in = x;
    size_t moff = 0;
    for (int l = 0; l <= m->n_hidden; l++) {
        int wi = m->width[l], wo = m->width[l + 1];
        float *z = m->z[l + 1];
        dense(in, theta + m->w_off[l], theta + m->b_off[l], n, wi, wo, z);
        if (l == m->n_hidden)
            break;
        float *a = m->a[l + 1];
        size_t cnt = (size_t)n * (size_t)wo;
        for (size_t i = 0; i < cnt; i++) {
            float v = z[i] > 0 ? z[i] : m->alpha * z[i];
            a[i] = mask ? v * mask[moff + i] : v;
        }
        moff += (size_t)m->max_batch * (size_t)wo;
        in = a;
    }
}

void fm_dense_backward(const float *dy, const float *x, const float *W, int n, int in,
                       int out, float *dW, float *db, float *dx)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in,
                1.0f, dW, in);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < out; j++)
            db[j] += dy[(size_t)i * (size_t)out + (size_t)j];
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out,
                    W, in, 0.0f, dx, in);
}

void fm_leaky_backward(const float *z, float alpha, size_t count, float *dz)
{
    for (size_t i = 0; i < count; i++)
        if (!(z[i] > 0))
            dz[i] *= alpha;
}

double fm_softmax_xent(const float *z, const float *t, int k, float scale, float *dz)
{
    double mx = z[0], s = 0;
    for (int i = 1; i < k; i++)
        if (z[i] > mx)
            mx = z[i];
    for (int i = 0; i < k; i++)
        s += exp((double)z[i] - mx);
    double lse = mx + log(s), loss = 0;
    for (int i = 0; i < k; i++) {
        double lp = (double)z[i] - lse;
        if (t[i] != 0)
            loss -= (double)t[i] * lp;
        dz[i] = (float)(scale * (exp(lp) - (double)t[i]));
    }
    return loss;
}

double fm_mlp_backward(fm_mlp *m, const float *theta, const float *x, int n,
                       const float *mask, const fm_mlp_targets *t, float *grad)
{
    const int K = FM_HEADS_OUTPUTS, L = m->n_hidden;
    const float *logits = m->z[L + 1];
    float *dz = m->d0;
    double loss = 0;
    float inv = 1.0f / (float)n;
    for (int i = 0; i < n; i++) {
        const float *zi = logits + (size_t)i * K;
        float *di = dz + (size_t)i * K;
        float tg[FM_HEADS_GENDERS] = {0}, tr[FM_HEADS_RACES] = {0};
        tg[t->gender[i]] = 1;
        tr[t->race[i]] = 1;
        loss += t->age_weight * fm_softmax_xent(zi, t->age + (size_t)i * FM_HEADS_AGES,
                                                FM_HEADS_AGES, inv * t->age_weight, di);
        loss += fm_softmax_xent(zi + FM_HEADS_AGES, tg, FM_HEADS_GENDERS, inv,
                                di + FM_HEADS_AGES);
        loss += fm_softmax_xent(zi + FM_HEADS_AGES + FM_HEADS_GENDERS, tr, FM_HEADS_RACES,
                                inv, di + FM_HEADS_AGES + FM_HEADS_GENDERS);
    }
    loss /= n;
    if (!grad)
        return loss;
    memset(grad, 0, m->n_params * sizeof *grad);
    /* mask offsets of each hidden layer */
    size_t moff[FM_HEADS_MAX_LAYERS + 1] = {0};
    for (int l = 1; l < L; l++)
        moff[l] = moff[l - 1] + (size_t)m->max_batch * (size_t)m->width[l];
    for (int l = L; l >= 0; l--) {
        int wi = m->width[l], wo = m->width[l + 1];
        const float *in = l == 0 ? x : m->a[l];
        float *dx = l == 0 ? NULL : m->d1;
        fm_dense_backward(dz, in, theta + m->w_off[l], n, wi, wo, grad + m->w_off[l],
                          grad + m->b_off[l], dx);
        if (l == 0)
            break;
        /* through dropout and LeakyReLU of hidden layer l (1-based) */
        size_t cnt = (size_t)n * (size_t)wi;
        if (mask) {
            const float *mk = mask + moff[l - 1];
            for (size_t i = 0; i < cnt; i++)
                dx[i] *= mk[i];
        }
        fm_leaky_backward(m->z[l], m->alpha, cnt, dx);
        float *tmp = m->d0;
        m->d0 = m->d1;
        m->d1 = tmp;
        dz = m->d0;
    }
    return loss;
}

/* ---- random numbers (splitmix64: portable, seedable) ------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s) /* [0, 1) */
{
    return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

static double rng_normal(uint64_t *s)
{
    double u = rng_uniform(s), v = rng_uniform(s);
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

/* ---- training ---------------------------------------------------------------- */

void fm_train_opts_defaults(fm_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->n_hidden = 1;
    o->hidden[0] = 512;
    o->leaky_alpha = 0.1f;
    o->lr = 1e-3;
    o->weight_decay = 1e-4;
    o->dropout = 0.5;
    o->age_sigma = 2.0;
    o->age_weight = 1.0;
    o->batch = 128;
    o->max_epochs = 100;
    o->patience = 10;
    o->lr_patience = 4;
    o->seed = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Loss and metrics (detected faces only: every row has a face) over a whole set. */
static void evaluate(fm_mlp *m, const float *theta, const float *xs, const fm_train_set *s,
                     const float *age_table, float age_weight, int *gbuf, int *rbuf,
                     float *abuf, fm_train_epoch *e)
{
    double loss = 0, ae = 0, se = 0;
    int gok = 0, rok = 0;
    for (int i0 = 0; i0 < s->n; i0 += m->max_batch) {
        int n = s->n - i0 < m->max_batch ? s->n - i0 : m->max_batch;
        const float *x = xs + (size_t)i0 * (size_t)s->dim;
        for (int i = 0; i < n; i++) {
            const fm_utk_label *lb = &s->labels[i0 + i];
            gbuf[i] = lb->gender;
            rbuf[i] = lb->race;
            memcpy(abuf + (size_t)i * FM_HEADS_AGES,
                   age_table + (size_t)lb->age * FM_HEADS_AGES,
                   FM_HEADS_AGES * sizeof(float));
        }
        fm_mlp_targets t = {abuf, gbuf, rbuf, age_weight};
        fm_mlp_forward(m, theta, x, n, NULL);
        loss += fm_mlp_backward(m, theta, x, n, NULL, &t, NULL) * n;
        const float *lg = m->z[m->n_hidden + 1];
        for (int i = 0; i < n; i++) {
            const float *z = lg + (size_t)i * FM_HEADS_OUTPUTS;
            fm_attrs at;
            fm_attrs_from_logits(z, z + FM_HEADS_AGES, z + FM_HEADS_AGES + FM_HEADS_GENDERS,
                                 &at);
            const fm_utk_label *lb = &s->labels[i0 + i];
            double d = at.age - lb->age;
            ae += fabs(d);
            se += d * d;
            gok += at.gender == lb->gender;
            rok += at.race == lb->race;
        }
    }
    e->val_loss = loss / s->n;
    e->val_age_mae = ae / s->n;
    e->val_age_rmse = sqrt(se / s->n);
    e->val_gender_acc = (double)gok / s->n;
    e->val_race_acc = (double)rok / s->n;
}

static fm_status add_tensor(fm_model_writer *w, const char *name, const float *data,
                            uint64_t d0, uint64_t d1, fm_error *err)
{
    uint64_t dims[2] = {d0, d1};
    return fm_model_writer_add_tensor(w, name, d1 ? 2 : 1, dims, data, err);
}

fm_status fm_train_heads(const fm_train_set *train, const fm_train_set *val,
                         const fm_train_opts *o, fm_model_writer *w, fm_train_epoch *best,
                         fm_error *err)
{
    if (!train || !val || !o || !w || train->n < 1 || val->n < 1 || train->dim < 1 ||
        train->dim != val->dim || !train->x || !val->x || !train->labels || !val->labels)
        return fm_error_set(err, FM_ERR_INVALID, "trainer: empty or mismatched data sets");
    if (o->batch < 1 || o->max_epochs < 1 || o->patience < 1 || !(o->lr > 0) ||
        !(o->weight_decay >= 0) || !(o->dropout >= 0 && o->dropout < 1) ||
        !(o->age_sigma >= 0) || !(o->age_weight > 0) || !isfinite(o->leaky_alpha))
        return fm_error_set(err, FM_ERR_INVALID, "trainer: bad options");
    const int D = train->dim, B = o->batch;
    fm_status st;
    fm_mlp m;
    if ((st = fm_mlp_init(&m, D, o->n_hidden, o->hidden, o->leaky_alpha, B, err)) != FM_OK)
        return st;
    const size_t P = m.n_params;
    size_t mask_len = 0;
    for (int l = 1; l <= o->n_hidden; l++)
        mask_len += (size_t)B * (size_t)m.width[l];
    float *mean = calloc((size_t)D, sizeof *mean), *sd = calloc((size_t)D, sizeof *sd);
    float *xt = malloc((size_t)train->n * (size_t)D * sizeof *xt);
    float *xv = malloc((size_t)val->n * (size_t)D * sizeof *xv);
    float *theta = malloc(P * sizeof *theta), *keep = malloc(P * sizeof *keep);
    float *grad = malloc(P * sizeof *grad);
    float *am = calloc(P, sizeof *am), *av = calloc(P, sizeof *av);
    float *xb = malloc((size_t)B * (size_t)D * sizeof *xb);
    float *ab = malloc((size_t)B * FM_HEADS_AGES * sizeof *ab);
    float *mask = mask_len ? malloc(mask_len * sizeof *mask) : NULL;
    float *age_table = malloc((size_t)FM_HEADS_AGES * FM_HEADS_AGES * sizeof *age_table);
    int *gb = malloc((size_t)B * sizeof *gb), *rb = malloc((size_t)B * sizeof *rb);
    int *order = malloc((size_t)train->n * sizeof *order);
    if (!mean || !sd || !xt || !xv || !theta || !keep || !grad || !am || !av || !xb ||
        !ab || (mask_len && !mask) || !age_table || !gb || !rb || !order) {
        st = fm_error_set(err, FM_ERR_NOMEM, "trainer: out of memory");
        goto done;
    }

    /* standardisation from the training set */
    double age_sum = 0;
    for (int j = 0; j < D; j++) {
        double s = 0, s2 = 0;
        for (int i = 0; i < train->n; i++) {
            double v = train->x[(size_t)i * (size_t)D + (size_t)j];
            s += v;
            s2 += v * v;
        }
        double mu = s / train->n, var = s2 / train->n - mu * mu;
        mean[j] = (float)mu;
        sd[j] = (float)sqrt(var > 1e-12 ? var : 1e-12);
        if (!(sd[j] > 1e-6f))
            sd[j] = 1e-6f;
    }
    for (int i = 0; i < train->n; i++)
        age_sum += train->labels[i].age;
    const fm_train_set *sets[2] = {train, val};
    float *xs[2] = {xt, xv};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < sets[k]->n; i++)
            for (int j = 0; j < D; j++) {
                size_t q = (size_t)i * (size_t)D + (size_t)j;
                xs[k][q] = (sets[k]->x[q] - mean[j]) / sd[j];
            }
    /* age targets: one row per true age */
    for (int a = 0; a < FM_HEADS_AGES; a++) {
        float *row = age_table + (size_t)a * FM_HEADS_AGES;
        double s = 0;
        for (int k = 0; k < FM_HEADS_AGES; k++) {
            double d = k - a;
            row[k] = o->age_sigma > 0
                         ? (float)exp(-d * d / (2 * o->age_sigma * o->age_sigma))
                         : (float)(k == a);
            s += row[k];
        }
        for (int k = 0; k < FM_HEADS_AGES; k++)
            row[k] = (float)(row[k] / s);
    }

    /* He initialisation for hidden layers, 1/sqrt(fan_in) for the heads */
    uint64_t rng = o->seed * 0x2545F4914F6CDD1DULL + 12345;
    for (int l = 0; l <= m.n_hidden; l++) {
        int wi = m.width[l], wo = m.width[l + 1];
        double sc = l < m.n_hidden ? sqrt(2.0 / wi) : sqrt(1.0 / wi);
        for (size_t q = 0; q < (size_t)wi * (size_t)wo; q++)
            theta[m.w_off[l] + q] = (float)(sc * rng_normal(&rng));
        memset(theta + m.b_off[l], 0, (size_t)wo * sizeof(float));
    }
    memcpy(keep, theta, P * sizeof *theta);
    for (int i = 0; i < train->n; i++)
        order[i] = i;

    fm_train_epoch e = {0}, kept = {0};
    kept.val_loss = INFINITY;
    double lr = o->lr, t_start = now_s();
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    long step = 0;
    int bad = 0, bad_lr = 0;
    const float keep_scale = (float)(1.0 / (1.0 - o->dropout));
    for (int epoch = 1; epoch <= o->max_epochs; epoch++) {
        for (int i = train->n - 1; i > 0; i--) { /* Fisher-Yates */
            int j = (int)(rng_next(&rng) % (uint64_t)(i + 1));
            int tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        double loss_sum = 0;
        int batches = 0;
        for (int i0 = 0; i0 < train->n; i0 += B) {
            int n = train->n - i0 < B ? train->n - i0 : B;
            for (int i = 0; i < n; i++) {
                int r = order[i0 + i];
                const fm_utk_label *lb = &train->labels[r];
                memcpy(xb + (size_t)i * (size_t)D, xt + (size_t)r * (size_t)D,
                       (size_t)D * sizeof(float));
                memcpy(ab + (size_t)i * FM_HEADS_AGES,
                       age_table + (size_t)lb->age * FM_HEADS_AGES,
                       FM_HEADS_AGES * sizeof(float));
                gb[i] = lb->gender;
                rb[i] = lb->race;
            }
            if (mask && o->dropout > 0) {
                for (size_t q = 0; q < mask_len; q++)
                    mask[q] = rng_uniform(&rng) < o->dropout ? 0.0f : keep_scale;
            }
            const float *mk = o->dropout > 0 ? mask : NULL;
            fm_mlp_targets t = {ab, gb, rb, (float)o->age_weight};
            fm_mlp_forward(&m, theta, xb, n, mk);
            loss_sum += fm_mlp_backward(&m, theta, xb, n, mk, &t, grad);
            batches++;
            step++;
            double c1 = 1 - pow(b1, (double)step), c2 = 1 - pow(b2, (double)step);
            for (int l = 0; l <= m.n_hidden; l++) {
                size_t w0 = m.w_off[l], w1 = m.b_off[l], b1e = w1 + (size_t)m.width[l + 1];
                for (size_t q = w0; q < b1e; q++) {
                    float g = grad[q];
                    am[q] = (float)(b1 * am[q] + (1 - b1) * g);
                    av[q] = (float)(b2 * av[q] + (1 - b2) * g * g);
                    double upd = (am[q] / c1) / (sqrt(av[q] / c2) + eps);
                    if (q < w1) /* decoupled weight decay on weights only */
                        upd += o->weight_decay * theta[q];
                    theta[q] -= (float)(lr * upd);
                }
            }
        }
        e.epoch = epoch;
        e.max_epochs = o->max_epochs;
        e.lr = lr;
        e.train_loss = loss_sum / batches;
        evaluate(&m, theta, xv, val, age_table, (float)o->age_weight, gb, rb, ab, &e);
        e.elapsed_s = now_s() - t_start;
        if (e.val_loss < kept.val_loss) {
            kept = e;
            memcpy(keep, theta, P * sizeof *theta);
            bad = bad_lr = 0;
        } else {
            bad++;
            if (++bad_lr >= o->lr_patience) {
                lr *= 0.5;
                bad_lr = 0;
            }
        }
        e.best_epoch = kept.epoch;
        if (o->progress)
            o->progress(o->ctx, &e);
        if (bad >= o->patience)
            break;
    }
    kept.best_epoch = kept.epoch;
    kept.elapsed_s = now_s() - t_start;
    if (best)
        *best = kept;

    /* write: the shared layers, then the three heads split out of the last layer */
    char name[64];
    const int L = m.n_hidden, H = m.width[L];
    if ((st = fm_model_writer_add_f64(w, "heads.leaky_alpha", o->leaky_alpha, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.fallback_age", age_sum / train->n, err)) ||
        (st = add_tensor(w, "feat.mean", mean, (uint64_t)D, 0, err)) ||
        (st = add_tensor(w, "feat.std", sd, (uint64_t)D, 0, err)))
        goto done;
    for (int l = 0; l < L; l++) {
        snprintf(name, sizeof name, "shared.%d.weight", l);
        if ((st = add_tensor(w, name, keep + m.w_off[l], (uint64_t)m.width[l + 1],
                             (uint64_t)m.width[l], err)))
            goto done;
        snprintf(name, sizeof name, "shared.%d.bias", l);
        if ((st = add_tensor(w, name, keep + m.b_off[l], (uint64_t)m.width[l + 1], 0, err)))
            goto done;
    }
    static const char *const hn[3] = {"age", "gender", "race"};
    const int hk[3] = {FM_HEADS_AGES, FM_HEADS_GENDERS, FM_HEADS_RACES};
    int row = 0;
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s.weight", hn[k]);
        if ((st = add_tensor(w, name, keep + m.w_off[L] + (size_t)row * (size_t)H,
                             (uint64_t)hk[k], (uint64_t)H, err)))
            goto done;
        snprintf(name, sizeof name, "%s.bias", hn[k]);
        if ((st = add_tensor(w, name, keep + m.b_off[L] + row, (uint64_t)hk[k], 0, err)))
            goto done;
        row += hk[k];
    }
    st = FM_OK;
done:
    free(mean);
    free(sd);
    free(xt);
    free(xv);
    free(theta);
    free(keep);
    free(grad);
    free(am);
    free(av);
    free(xb);
    free(ab);
    free(mask);
    free(age_table);
    free(gb);
    free(rb);
    free(order);
    fm_mlp_free(&m);
    return st;
}
