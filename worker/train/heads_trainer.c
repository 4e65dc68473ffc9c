/* heads_trainer.c - the frozen-feature trainer of the attribute heads
 * (include/facemill/train.h): mini-batch AdamW over the heads network of
 * worker/vision/heads.c (fm_heads_net_forward, _loss and _backward, the network
 * inference runs), with the engine's optimiser step, written out with fm_heads_write.
 * What is here is the training: standardisation, targets, initialisation, dropout
 * masks, the epoch loop and the choice of the epoch kept.
 */
#include "facemill/train.h"
#include "train-impl.h"

#include "facemill/clock.h"
#include "facemill/grad.h"
#include "facemill/nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the parameters -------------------------------------------------------------- */

/* Every parameter lives in one float vector (and so do its gradient, the optimiser's
 * moments and the kept epoch's snapshot). Layer l <= n_hidden: weights [width[l+1],
 * width[l]] at w_off[l], bias [width[l+1]] at b_off[l]; layer n_hidden is the three
 * outputs as one block of FM_HEADS_OUTPUTS rows (age rows first, then gender, then
 * ethnicity), which the network sees as three layers (contiguous rows). */
typedef struct layout {
    int n_hidden;
    int width[FM_HEADS_MAX_LAYERS + 2]; /* [0] input, [n_hidden + 1] FM_HEADS_OUTPUTS */
    size_t w_off[FM_HEADS_MAX_LAYERS + 1], b_off[FM_HEADS_MAX_LAYERS + 1];
    size_t n_params;
} layout;

static void make_layout(int dim, int n_hidden, const int *hidden, layout *l)
{
    memset(l, 0, sizeof *l);
    l->n_hidden = n_hidden;
    l->width[0] = dim;
    for (int k = 0; k < n_hidden; k++)
        l->width[k + 1] = hidden[k];
    l->width[n_hidden + 1] = FM_HEADS_OUTPUTS;
    size_t off = 0;
    for (int k = 0; k <= n_hidden; k++) {
        l->w_off[k] = off;
        off += (size_t)l->width[k + 1] * (size_t)l->width[k];
        l->b_off[k] = off;
        off += (size_t)l->width[k + 1];
    }
    l->n_params = off;
}

/* The network's views of the parameters in base (theta, its gradient, a snapshot). */
static void net_view(const layout *l, float *base, const float *scale, const float *shift,
                     float alpha, fm_heads_net *net)
{
    memset(net, 0, sizeof *net);
    net->n_layers = l->n_hidden;
    net->alpha = alpha;
    net->scale = fm_tensor_make(l->width[0], 1, 1, 1, (float *)scale);
    net->shift = fm_tensor_make(l->width[0], 1, 1, 1, (float *)shift);
    for (int k = 0; k < l->n_hidden; k++) {
        net->w[k] = fm_tensor_make(l->width[k + 1], l->width[k], 1, 1, base + l->w_off[k]);
        net->b[k] = fm_tensor_make(l->width[k + 1], 1, 1, 1, base + l->b_off[k]);
    }
    const int L = l->n_hidden, H = l->width[L];
    int row = 0;
    for (int o = 0; o < 3; o++) {
        const int k = fm_heads_classes[o];
        net->head_w[o] = fm_tensor_make(k, H, 1, 1, base + l->w_off[L] + (size_t)row * H);
        net->head_b[o] = fm_tensor_make(k, 1, 1, 1, base + l->b_off[L] + row);
        row += k;
    }
}

/* ---- random numbers: one stream from the seed ------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    const uint64_t r = fm_train_mix64(*s);
    *s += FM_TRAIN_GOLDEN;
    return r;
}

static double rng_uniform(uint64_t *s) /* [0, 1) */
{
    return fm_train_unit(rng_next(s));
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

/* What one step needs besides the parameters: the arena, the batch's rows, targets
 * and dropout masks. */
typedef struct step_ctx {
    const layout *l;
    fm_arena *arena;
    int dim;
    double weights[3];       /* loss weights: age_weight, 1, 1 */
    const float *age_table;  /* FM_HEADS_AGES rows: the age target of each true age */
    float *x;                /* batch x dim raw features */
    float *target[3];        /* batch rows of each output's target */
    const float *mask[FM_HEADS_MAX_LAYERS]; /* layer k: batch x width rows, or NULL */
} step_ctx;

/* Fills row i of the batch with face r of s. */
static void load_row(step_ctx *c, const fm_train_set *s, int r, int i)
{
    const fm_utk_label *lb = &s->labels[r];
    memcpy(c->x + (size_t)i * (size_t)c->dim, s->x + (size_t)r * (size_t)c->dim,
           (size_t)c->dim * sizeof(float));
    memcpy(c->target[0] + (size_t)i * FM_HEADS_AGES,
           c->age_table + (size_t)lb->age * FM_HEADS_AGES, FM_HEADS_AGES * sizeof(float));
    float *g = c->target[1] + (size_t)i * FM_HEADS_GENDERS;
    float *e = c->target[2] + (size_t)i * FM_HEADS_RACES;
    for (int k = 0; k < FM_HEADS_GENDERS; k++)
        g[k] = k == lb->gender;
    for (int k = 0; k < FM_HEADS_RACES; k++)
        e[k] = k == lb->race;
}

/* The mean loss of the n rows loaded in c under net (tape gets the activations); with
 * g (views of the gradient vector grad, which is zeroed first) the loss's gradient. */
static fm_status step(step_ctx *c, const fm_heads_net *net, int n, int masked,
                      fm_heads_net *g, float *grad, fm_heads_tape *tape, double *loss,
                      fm_error *err)
{
    fm_arena *a = c->arena;
    fm_arena_reset(a, 0);
    const int measuring = fm_arena_is_measuring(a);
    const fm_tensor x = fm_tensor_make(n, c->dim, 1, 1, measuring ? NULL : c->x);
    const float *const *mask = masked ? c->mask : NULL;
    const float *const *target = (const float *const *)c->target;
    fm_tensor dl[3];
    fm_status st;
    if ((st = fm_heads_net_forward(a, net, &x, mask, tape, err)))
        return st;
    for (int o = 0; g && o < 3; o++)
        if ((st = fm_tensor_alloc_zero(a, &tape->logits[o], &dl[o], err)))
            return st;
    if ((st = fm_heads_net_loss(a, tape, target, c->weights, loss, g ? dl : NULL, err)) ||
        !g)
        return st;
    if (!measuring)
        memset(grad, 0, c->l->n_params * sizeof *grad);
    return fm_heads_net_backward(a, net, tape, mask, dl, g, NULL, err);
}

/* Loss and metrics over a whole set (detected faces only: every row has a face). */
static fm_status evaluate(step_ctx *c, const fm_heads_net *net, const fm_train_set *s,
                          int max_batch, fm_train_epoch *e, fm_error *err)
{
    double loss = 0, ae = 0, se = 0;
    int gok = 0, rok = 0;
    for (int i0 = 0; i0 < s->n; i0 += max_batch) {
        const int n = s->n - i0 < max_batch ? s->n - i0 : max_batch;
        for (int i = 0; i < n; i++)
            load_row(c, s, i0 + i, i);
        fm_heads_tape t;
        double l = 0;
        fm_status st = step(c, net, n, 0, NULL, NULL, &t, &l, err);
        if (st)
            return st;
        loss += l * n;
        for (int i = 0; i < n; i++) {
            fm_attrs at;
            fm_attrs_from_logits(t.logits[0].data + (size_t)i * FM_HEADS_AGES,
                                 t.logits[1].data + (size_t)i * FM_HEADS_GENDERS,
                                 t.logits[2].data + (size_t)i * FM_HEADS_RACES, &at);
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
    return FM_OK;
}

/* Checks the options and the sets. */
static fm_status check(const fm_train_set *train, const fm_train_set *val,
                       const fm_train_opts *o, fm_error *err)
{
    if (!train || !val || train->n < 1 || val->n < 1 || train->dim < 1 ||
        train->dim != val->dim || !train->x || !val->x || !train->labels || !val->labels)
        return fm_error_set(err, FM_ERR_INVALID, "trainer: empty or mismatched data sets");
    if (o->batch < 1 || o->max_epochs < 1 || o->patience < 1 || !(o->lr > 0) ||
        !(o->weight_decay >= 0) || !(o->dropout >= 0 && o->dropout < 1) ||
        !(o->age_sigma >= 0) || !(o->age_weight > 0) ||
        /* the backward pass tells a LeakyReLU's sides apart by the output's sign */
        !(o->leaky_alpha >= 0) || !isfinite(o->leaky_alpha) || o->n_hidden < 0 ||
        o->n_hidden > FM_HEADS_MAX_LAYERS)
        return fm_error_set(err, FM_ERR_INVALID, "trainer: bad options");
    for (int k = 0; k < o->n_hidden; k++)
        if (o->hidden[k] < 1 || o->hidden[k] > 65536)
            return fm_error_set(err, FM_ERR_INVALID, "trainer: hidden width %d", o->hidden[k]);
    for (int k = 0; k < 2; k++) {
        const fm_train_set *s = k ? val : train;
        for (int i = 0; i < s->n; i++) {
            const fm_utk_label *lb = &s->labels[i];
            if (lb->age < 0 || lb->age >= FM_HEADS_AGES || lb->gender < 0 ||
                lb->gender >= FM_HEADS_GENDERS || lb->race < 0 || lb->race >= FM_HEADS_RACES)
                return fm_error_set(err, FM_ERR_INVALID,
                                    "trainer: %s face %d has labels %d, %d, %d out of range",
                                    k ? "validation" : "training", i, lb->age, lb->gender,
                                    lb->race);
        }
    }
    return FM_OK;
}

/* Everything one training holds besides the data. Every parameter vector (theta,
 * its gradient, the optimiser's moments, the kept epoch's copy) has lay.n_params
 * floats. */
typedef struct trainer {
    layout lay;
    step_ctx c;
    float *mean, *sd;       /* dim: the training set's feature statistics */
    float *scale, *shift;   /* dim: standardisation as the network applies it */
    float *theta, *grad, *am, *av, *keep;
    float *mask;            /* batch rows of every hidden layer's dropout mask, or NULL */
    size_t mask_len;
    float *age_table;       /* FM_HEADS_AGES rows of age targets */
    int *order;             /* the training set's order this epoch */
    double age_sum;         /* of the training set's ages: the fallback age */
    fm_heads_net net, gnet; /* views of theta and grad */
    uint64_t rng;
} trainer;

static void trainer_free(trainer *t)
{
    fm_arena_destroy(&t->c.arena);
    free(t->mean);
    free(t->sd);
    free(t->scale);
    free(t->shift);
    free(t->theta);
    free(t->keep);
    free(t->grad);
    free(t->am);
    free(t->av);
    free(t->mask);
    free(t->age_table);
    free(t->order);
    free(t->c.x);
    for (int k = 0; k < 3; k++)
        free(t->c.target[k]);
}

/* The layout and every buffer, for batches of o->batch rows of dim features. */
static fm_status trainer_alloc(trainer *t, int dim, int n_train, const fm_train_opts *o,
                               fm_error *err)
{
    const int B = o->batch;
    make_layout(dim, o->n_hidden, o->hidden, &t->lay);
    const size_t P = t->lay.n_params;
    for (int l = 1; l <= o->n_hidden; l++)
        t->mask_len += (size_t)B * (size_t)t->lay.width[l];
    t->c = (step_ctx){.l = &t->lay, .dim = dim, .weights = {o->age_weight, 1, 1}};
    t->mean = calloc((size_t)dim, sizeof *t->mean);
    t->sd = calloc((size_t)dim, sizeof *t->sd);
    t->scale = malloc((size_t)dim * sizeof *t->scale);
    t->shift = malloc((size_t)dim * sizeof *t->shift);
    t->theta = malloc(P * sizeof *t->theta);
    t->keep = malloc(P * sizeof *t->keep);
    t->grad = malloc(P * sizeof *t->grad);
    t->am = calloc(P, sizeof *t->am);
    t->av = calloc(P, sizeof *t->av);
    t->mask = t->mask_len ? malloc(t->mask_len * sizeof *t->mask) : NULL;
    t->age_table = malloc((size_t)FM_HEADS_AGES * FM_HEADS_AGES * sizeof *t->age_table);
    t->order = malloc((size_t)n_train * sizeof *t->order);
    t->c.x = malloc((size_t)B * (size_t)dim * sizeof *t->c.x);
    for (int k = 0; k < 3; k++)
        t->c.target[k] = malloc((size_t)B * (size_t)fm_heads_classes[k] * sizeof(float));
    if (!t->mean || !t->sd || !t->scale || !t->shift || !t->theta || !t->keep || !t->grad ||
        !t->am || !t->av || (t->mask_len && !t->mask) || !t->age_table || !t->order ||
        !t->c.x || !t->c.target[0] || !t->c.target[1] || !t->c.target[2])
        return fm_error_set(err, FM_ERR_NOMEM, "trainer: out of memory");
    t->c.age_table = t->age_table;
    size_t moff = 0;
    for (int l = 0; l < o->n_hidden; l++) {
        t->c.mask[l] = t->mask + moff;
        moff += (size_t)B * (size_t)t->lay.width[l + 1];
    }
    net_view(&t->lay, t->theta, t->scale, t->shift, o->leaky_alpha, &t->net);
    net_view(&t->lay, t->grad, t->scale, t->shift, o->leaky_alpha, &t->gnet);
    return FM_OK;
}

/* Standardisation and fallback age from the training set; the age targets. */
static void standardise(trainer *t, const fm_train_set *train, const fm_train_opts *o)
{
    const int D = train->dim;
    for (int j = 0; j < D; j++) {
        double s = 0, s2 = 0;
        for (int i = 0; i < train->n; i++) {
            double v = train->x[(size_t)i * (size_t)D + (size_t)j];
            s += v;
            s2 += v * v;
        }
        double mu = s / train->n, var = s2 / train->n - mu * mu;
        t->mean[j] = (float)mu;
        t->sd[j] = (float)sqrt(var > 1e-12 ? var : 1e-12);
        if (!(t->sd[j] > 1e-6f))
            t->sd[j] = 1e-6f;
    }
    fm_heads_standardiser(t->mean, t->sd, D, t->scale, t->shift);
    for (int i = 0; i < train->n; i++)
        t->age_sum += train->labels[i].age;
    for (int a = 0; a < FM_HEADS_AGES; a++)
        fm_nn_gaussian_target(FM_HEADS_AGES, a, o->age_sigma,
                              t->age_table + (size_t)a * FM_HEADS_AGES);
}

/* One arena for a whole step of a full batch, sized by a measuring run. */
static fm_status size_arena(trainer *t, const fm_train_opts *o, fm_error *err)
{
    fm_arena *measuring = NULL;
    fm_heads_tape tape;
    double l;
    fm_status st;
    if ((st = fm_arena_new_measuring(&measuring, err)))
        return st;
    t->c.arena = measuring;
    st = step(&t->c, &t->net, o->batch, t->mask != NULL, &t->gnet, t->grad, &tape, &l, err);
    t->c.arena = NULL;
    size_t need = fm_arena_high_water(measuring);
    fm_arena_destroy(&measuring);
    return st ? st : fm_arena_new(need, &t->c.arena, err);
}

/* He initialisation for hidden layers, 1/sqrt(fan_in) for the heads, zero biases; the
 * random stream starts from the seed here. */
static void init_weights(trainer *t, int n_train, const fm_train_opts *o)
{
    const layout *lay = &t->lay;
    t->rng = o->seed * 0x2545F4914F6CDD1DULL + 12345;
    for (int l = 0; l <= lay->n_hidden; l++) {
        int wi = lay->width[l], wo = lay->width[l + 1];
        double sc = l < lay->n_hidden ? sqrt(2.0 / wi) : sqrt(1.0 / wi);
        for (size_t q = 0; q < (size_t)wi * (size_t)wo; q++)
            t->theta[lay->w_off[l] + q] = (float)(sc * rng_normal(&t->rng));
        memset(t->theta + lay->b_off[l], 0, (size_t)wo * sizeof(float));
    }
    memcpy(t->keep, t->theta, lay->n_params * sizeof *t->theta);
    for (int i = 0; i < n_train; i++)
        t->order[i] = i;
}

/* AdamW on every layer: decoupled weight decay on weights, not biases. */
static void optimise(trainer *t, const fm_train_opts *o, double lr, long steps)
{
    const layout *lay = &t->lay;
    for (int k = 0; k <= lay->n_hidden; k++) {
        const size_t nw = lay->b_off[k] - lay->w_off[k], nb = (size_t)lay->width[k + 1];
        fm_optim_step sw = {.kind = FM_OPTIM_ADAMW, .lr = lr,
                            .weight_decay = o->weight_decay, .t = steps};
        fm_optim_step sb = sw;
        sb.weight_decay = 0;
        fm_optim_update(&sw, t->theta + lay->w_off[k], t->grad + lay->w_off[k],
                        t->am + lay->w_off[k], t->av + lay->w_off[k], nw);
        fm_optim_update(&sb, t->theta + lay->b_off[k], t->grad + lay->b_off[k],
                        t->am + lay->b_off[k], t->av + lay->b_off[k], nb);
    }
}

/* One epoch over train in a new order (Fisher-Yates), with fresh dropout masks per
 * batch; *steps counts optimiser steps over the run. The mean batch loss in *loss. */
static fm_status train_epoch(trainer *t, const fm_train_set *train, const fm_train_opts *o,
                             double lr, long *steps, double *loss, fm_error *err)
{
    const int B = o->batch;
    const float keep_scale = (float)(1.0 / (1.0 - o->dropout));
    const int masked = t->mask && o->dropout > 0;
    for (int i = train->n - 1; i > 0; i--) {
        int j = (int)(rng_next(&t->rng) % (uint64_t)(i + 1));
        int tmp = t->order[i];
        t->order[i] = t->order[j];
        t->order[j] = tmp;
    }
    double loss_sum = 0;
    int batches = 0;
    for (int i0 = 0; i0 < train->n; i0 += B) {
        const int n = train->n - i0 < B ? train->n - i0 : B;
        for (int i = 0; i < n; i++)
            load_row(&t->c, train, t->order[i0 + i], i);
        if (masked)
            for (size_t q = 0; q < t->mask_len; q++)
                t->mask[q] = rng_uniform(&t->rng) < o->dropout ? 0.0f : keep_scale;
        fm_heads_tape tape;
        double l = 0;
        fm_status st = step(&t->c, &t->net, n, masked, &t->gnet, t->grad, &tape, &l, err);
        if (st)
            return st;
        loss_sum += l;
        batches++;
        optimise(t, o, lr, ++*steps);
    }
    *loss = loss_sum / batches;
    return FM_OK;
}

/* Early stopping after epoch e: keeps theta when it beat *kept, halves *lr after
 * lr_patience epochs without improvement. Returns 1 when patience ran out. */
static int keep_best(trainer *t, const fm_train_opts *o, const fm_train_epoch *e,
                     fm_train_epoch *kept, double *lr, int *bad, int *bad_lr)
{
    if (e->val_loss < kept->val_loss) {
        *kept = *e;
        memcpy(t->keep, t->theta, t->lay.n_params * sizeof *t->theta);
        *bad = *bad_lr = 0;
    } else {
        (*bad)++;
        if (++*bad_lr >= o->lr_patience) {
            *lr *= 0.5;
            *bad_lr = 0;
        }
    }
    return *bad >= o->patience;
}

fm_status fm_train_heads(const fm_train_set *train, const fm_train_set *val,
                         const fm_train_opts *o, fm_model_writer *w, fm_train_epoch *best,
                         fm_error *err)
{
    if (!o || !w)
        return fm_error_set(err, FM_ERR_INVALID, "trainer: NULL argument");
    fm_status st = check(train, val, o, err);
    if (st)
        return st;
    trainer t;
    memset(&t, 0, sizeof t);
    if ((st = trainer_alloc(&t, train->dim, train->n, o, err)))
        goto done;
    standardise(&t, train, o);
    if ((st = size_arena(&t, o, err)))
        goto done;
    init_weights(&t, train->n, o);

    fm_train_epoch e = {0}, kept = {0};
    kept.val_loss = INFINITY;
    double lr = o->lr;
    const double t_start = fm_now_ms();
    long steps = 0;
    int bad = 0, bad_lr = 0, stop = 0;
    for (int epoch = 1; epoch <= o->max_epochs && !stop; epoch++) {
        e.epoch = epoch;
        e.max_epochs = o->max_epochs;
        e.lr = lr;
        if ((st = train_epoch(&t, train, o, lr, &steps, &e.train_loss, err)) ||
            (st = evaluate(&t.c, &t.net, val, o->batch, &e, err)))
            goto done;
        e.elapsed_s = (fm_now_ms() - t_start) / 1e3;
        stop = keep_best(&t, o, &e, &kept, &lr, &bad, &bad_lr);
        e.best_epoch = kept.epoch;
        if (o->progress)
            o->progress(o->ctx, &e);
    }
    kept.best_epoch = kept.epoch;
    kept.elapsed_s = (fm_now_ms() - t_start) / 1e3;
    if (best)
        *best = kept;

    /* the kept epoch's weights, in the layout heads.c reads */
    fm_heads_net out;
    net_view(&t.lay, t.keep, t.scale, t.shift, o->leaky_alpha, &out);
    st = fm_heads_write(w, &out, t.mean, t.sd, t.age_sum / train->n, err);
done:
    trainer_free(&t);
    return st;
}
