/* finetune.c - fine-tuning of the dlib ResNet with the attribute heads (see
 * include/facemill/finetune.h for what and why).
 *
 * Every parameter lives in one flat vector (and so do its gradient and the two
 * optimiser moments), laid out as: fc (unused by the heads, never trained), stem,
 * the 14 blocks in order, then the heads. Freezing the first blocks is then "train
 * the tail of the vector from trained_from on", and a checkpoint is four vectors and a
 * few counters.
 *
 * The network is the one inference runs: the backbone's forward and backward passes
 * are worker/vision/arch_dlib_resnet.c's (fm_dlib_forward with a tape that keeps the
 * trained blocks' activations, fm_dlib_backward), the heads' are worker/vision/heads.c's
 * (fm_heads_net_*), over views of the flat vectors; the optimiser is the engine's
 * (fm_optim_update). What is here is the training: data, augmentation, targets,
 * schedule, checkpoints and validation.
 */
#include "facemill/finetune.h"
#include "train-impl.h"

#include "facemill/align.h"
#include "facemill/backbone.h"
#include "facemill/clock.h"
#include "facemill/degrade.h"
#include "facemill/dlib_resnet.h"
#include "facemill/grad.h"
#include "facemill/heads.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/sha256.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOLED FM_DLIB_POOLED
#define PI 3.14159265358979323846

/* train_from is handed to the network as its block index */
_Static_assert(FM_FT_STEM == FM_DLIB_STEM && FM_FT_BLOCKS == FM_DLIB_BLOCKS,
               "finetune.h's block numbers are dlib_resnet.h's");

/* parameter tensors: the backbone's in fm_dlib_param's order (FM_DLIB_FC, the stem,
 * four per block), then the heads' */
enum {
    T_HEADS = FM_DLIB_PARAMS,
    T_FEAT_MEAN = T_HEADS,                /* feature standardisation: fixed, not trained */
    T_FEAT_STD,
    T_SH_W,
    T_SH_B,
    T_AGE_W,
    T_AGE_B,
    T_GEN_W,
    T_GEN_B,
    T_RACE_W,
    T_RACE_B,
    T_COUNT
};

typedef struct ptensor {
    char name[64];
    int d[4];      /* n, c, h, w (unused dims 1) */
    int ndim;
    size_t off, count;
    int weight;    /* 1: decayed */
    int heads;     /* 1: heads learning rate */
    int fixed;     /* 1: never trained (the feature statistics) */
    double rms;    /* root mean square of the base's weights of this layer (relative
                      learning rates); biases take their layer's weight figure */
    double decay;  /* lr_decay to the power of the trained blocks after this one's */
} ptensor;

struct fm_finetune {
    fm_ft_opts o;
    const fm_model *base;
    int in_h, in_w;
    float mean[3], scale[3], tmpl[10];
    ptensor t[T_COUNT];
    size_t total, trained_from;
    float *p, *g, *m1, *m2, *best;
    fm_dlib_weights bp, bg;  /* the backbone's parameters and gradients: views of p, g */
    fm_heads_net hp, hg;     /* the heads': views of p (and feat_scale, feat_shift), g */
    int have_best;
    double temp[2];  /* gender and ethnicity temperatures (fm_finetune_calibrate) */
    int calibrated;
    char init_sha[2 * FM_SHA256_BYTES + 1]; /* the digest of o.init_heads, or "" */
    fm_arena *arena;
    float feat_scale[POOLED], feat_shift[POOLED]; /* 1/std, -mean/std */
    float *xbuf;     /* batch x 3 x H x W normalised input */
    float *row_w;    /* 2 x batch: gender and ethnicity rows' loss weights (drop_hardest) */
    double *row_loss; /* batch: their losses */
    uint8_t *chips;  /* batch x H x W x 3 */
    float *target;   /* targets, see target_of */
    float *mask;     /* batch x hidden dropout mask */
    double fallback_age;
    /* run state (checkpointed) */
    long step;
    int validated;   /* epochs validated */
    int best_epoch, bad_epochs;
    double best_val, epoch_loss;
    long epoch_loss_steps;
    long epoch_rows, epoch_dropped[2]; /* drop_hardest's count this epoch (not
                                          checkpointed: from the resume on) */
    fm_ft_progress best_prog;
};

/* ---- names and options ---------------------------------------------------------- */

int fm_ft_block_index(const char *name)
{
    if (!name)
        return -2;
    if (strcmp(name, "stem") == 0 || strcmp(name, "conv32_down") == 0)
        return FM_FT_STEM;
    if (strcmp(name, "heads") == 0)
        return FM_FT_BLOCKS;
    for (int i = 0; i < FM_DLIB_BLOCKS; i++)
        if (strcmp(name, fm_dlib_blocks[i].name) == 0)
            return i;
    return -2;
}

const char *fm_ft_block_name(int i)
{
    if (i == FM_FT_STEM)
        return "stem";
    if (i == FM_FT_BLOCKS)
        return "heads";
    return i >= 0 && i < FM_DLIB_BLOCKS ? fm_dlib_blocks[i].name : "?";
}

void fm_ft_opts_defaults(fm_ft_opts *o)
{
    memset(o, 0, sizeof *o);
    o->train_from = 7; /* conv128_down */
    o->batch = 32;
    o->max_epochs = 6;
    o->patience = 3;
    o->optimizer = FM_FT_ADAMW;
    o->lr_backbone = 1e-4;
    o->lr_heads = 1e-3;
    o->lr_decay = 1;
    o->weight_decay = 1e-4;
    o->momentum = 0.9;
    o->schedule = FM_FT_COSINE;
    o->head_epochs = 1;
    o->warmup_epochs = 0.3;
    o->min_lr_ratio = 0.01;
    o->step_epochs = 2;
    o->step_gamma = 0.1;
    o->hidden = 256;
    o->leaky_alpha = 0.1f;
    o->dropout = 0.3;
    o->age_sigma = 2;
    o->age_weight = 1;
    o->gender_weight = 1;
    o->race_weight = 1;
    o->label_smoothing = 0;
    o->drop_below = 1;
    o->align_zoom = 1;
    o->flip = 1;
    o->shift_px = 4;
    o->scale_jitter = 0.05;
    o->rotate_deg = 5;
    o->brightness = 16;
    o->contrast = 0.15;
    o->seed = 1;
    o->checkpoint_steps = 200;
}

/* ---- random numbers: pure functions of their keys ------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static rng rng_for(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    rng r = {fm_train_mix64(fm_train_mix64(fm_train_mix64(seed ^ 0x5eedull) ^ a) ^
                            (b * 0x100000001b3ull)) ^
             c};
    return r;
}

static double rng_unit(rng *r) /* [0, 1) */
{
    r->s = fm_train_mix64(r->s);
    return fm_train_unit(r->s);
}

static double rng_sym(rng *r, double amp) /* uniform in [-amp, amp) */
{
    return (2 * rng_unit(r) - 1) * amp;
}

/* ---- parameters ------------------------------------------------------------------ */

static void def_tensor(fm_finetune *ft, int k, const char *name, int ndim, int d0, int d1,
                       int d2, int d3, int heads, size_t *off)
{
    ptensor *t = &ft->t[k];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->d[0] = d0;
    t->d[1] = d1;
    t->d[2] = d2;
    t->d[3] = d3;
    t->count = (size_t)d0 * d1 * d2 * d3;
    t->weight = ndim > 1;
    t->heads = heads;
    /* 16-float alignment keeps every tensor on a 64-byte boundary */
    t->off = *off;
    *off += (t->count + 15) & ~(size_t)15;
}

static fm_tensor view(const fm_finetune *ft, float *base, int k)
{
    const ptensor *t = &ft->t[k];
    return fm_tensor_make(t->d[0], t->d[1], t->d[2], t->d[3], base ? base + t->off : NULL);
}

static size_t first_trained(const fm_finetune *ft)
{
    int from = ft->o.train_from;
    if (from >= FM_FT_BLOCKS)
        return ft->t[T_HEADS].off;
    if (from <= FM_FT_STEM)
        return ft->t[FM_DLIB_STEM_W].off;
    return ft->t[FM_DLIB_BLOCK0 + 4 * from].off;
}

static void layout(fm_finetune *ft)
{
    size_t off = 0;
    for (int k = 0; k < FM_DLIB_PARAMS; k++) {
        char name[64];
        int ndim, d[4];
        fm_dlib_param(k, name, &ndim, d);
        def_tensor(ft, k, name, ndim, d[0], d[1], d[2], d[3], 0, &off);
    }
    int hid = ft->o.hidden;
    def_tensor(ft, T_FEAT_MEAN, "feat.mean", 1, POOLED, 1, 1, 1, 1, &off);
    def_tensor(ft, T_FEAT_STD, "feat.std", 1, POOLED, 1, 1, 1, 1, &off);
    ft->t[T_FEAT_MEAN].fixed = ft->t[T_FEAT_STD].fixed = 1;
    def_tensor(ft, T_SH_W, "shared.0.weight", 2, hid, POOLED, 1, 1, 1, &off);
    def_tensor(ft, T_SH_B, "shared.0.bias", 1, hid, 1, 1, 1, 1, &off);
    def_tensor(ft, T_AGE_W, "age.weight", 2, FM_HEADS_AGES, hid, 1, 1, 1, &off);
    def_tensor(ft, T_AGE_B, "age.bias", 1, FM_HEADS_AGES, 1, 1, 1, 1, &off);
    def_tensor(ft, T_GEN_W, "gender.weight", 2, FM_HEADS_GENDERS, hid, 1, 1, 1, &off);
    def_tensor(ft, T_GEN_B, "gender.bias", 1, FM_HEADS_GENDERS, 1, 1, 1, 1, &off);
    def_tensor(ft, T_RACE_W, "race.weight", 2, FM_HEADS_RACES, hid, 1, 1, 1, &off);
    def_tensor(ft, T_RACE_B, "race.bias", 1, FM_HEADS_RACES, 1, 1, 1, 1, &off);
    ft->total = off;
    ft->trained_from = first_trained(ft);
}

/* Derives the standardisation's scale and shift from feat.mean and feat.std. */
static void stats_changed(fm_finetune *ft)
{
    const float *mean = ft->p + ft->t[T_FEAT_MEAN].off, *sd = ft->p + ft->t[T_FEAT_STD].off;
    for (int i = 0; i < POOLED; i++) {
        ft->feat_scale[i] = 1.0f / sd[i];
        ft->feat_shift[i] = -mean[i] / sd[i];
    }
}

/* ---- the network ---------------------------------------------------------------- */

/* The backbone's parameters in base (ft->p or ft->g) as the network's views. */
static void backbone_view(const fm_finetune *ft, float *base, fm_dlib_weights *w)
{
    for (int k = 0; k < FM_DLIB_PARAMS; k++)
        w->t[k] = view(ft, base, k);
}

/* The heads' parameters in base (ft->p, ft->g, the kept vector) as the network's
 * views. The standardisation is always feat_scale and feat_shift (stats_changed): feat.mean
 * and feat.std are fixed once measured and the same in every copy of the vector. */
static void heads_view(const fm_finetune *ft, float *base, fm_heads_net *net)
{
    memset(net, 0, sizeof *net);
    net->n_layers = 1;
    net->alpha = ft->o.leaky_alpha;
    net->scale = fm_tensor_make(POOLED, 1, 1, 1, (float *)ft->feat_scale);
    net->shift = fm_tensor_make(POOLED, 1, 1, 1, (float *)ft->feat_shift);
    net->w[0] = view(ft, base, T_SH_W);
    net->b[0] = view(ft, base, T_SH_B);
    for (int o = 0; o < 3; o++) {
        net->head_w[o] = view(ft, base, T_AGE_W + 2 * o);
        net->head_b[o] = view(ft, base, T_AGE_W + 2 * o + 1);
    }
}

/* The three heads' target rows live one after the other in ft->target: batch x 117
 * age distributions, then batch x 2 and batch x 5 one-hots. */
static float *target_of(const fm_finetune *ft, int head)
{
    const size_t B = (size_t)ft->o.batch;
    return ft->target + (head == 0 ? 0 : head == 1 ? B * FM_HEADS_AGES
                                                   : B * (FM_HEADS_AGES + FM_HEADS_GENDERS));
}

/* A one-hot row of k classes for class c, smoothed: (1 - eps) on c plus eps / k on
 * every class. */
static void smoothed_one_hot(int k, int c, double eps, float *out)
{
    for (int j = 0; j < k; j++)
        out[j] = (float)((j == c ? 1 - eps : 0) + eps / k);
}

/* Fills face i's targets: age distribution, gender and race one-hots (smoothed by
 * label_smoothing). */
static void make_targets_one(fm_finetune *ft, int i, int age, int gender, int race)
{
    fm_nn_gaussian_target(FM_HEADS_AGES, age, ft->o.age_sigma,
                          target_of(ft, 0) + (size_t)i * FM_HEADS_AGES);
    smoothed_one_hot(FM_HEADS_GENDERS, gender, ft->o.label_smoothing,
                     target_of(ft, 1) + (size_t)i * FM_HEADS_GENDERS);
    smoothed_one_hot(FM_HEADS_RACES, race, ft->o.label_smoothing,
                     target_of(ft, 2) + (size_t)i * FM_HEADS_RACES);
}

/* Labels' targets, mixed with the teacher's answers where a face has them
 * (teacher_weight). */
static void make_targets(fm_finetune *ft, const fm_utk_label *labels,
                         const fm_ft_soft *const *soft, int n)
{
    const double w = ft->o.teacher_weight;
    for (int i = 0; i < n; i++) {
        make_targets_one(ft, i, labels[i].age, labels[i].gender, labels[i].race);
        const fm_ft_soft *t = soft ? soft[i] : NULL;
        if (!t || !(w > 0))
            continue;
        float age[FM_HEADS_AGES];
        double sd = t->age_std > ft->o.age_sigma ? t->age_std : ft->o.age_sigma;
        fm_nn_gaussian_target(FM_HEADS_AGES, t->age, sd, age);
        float *ta = target_of(ft, 0) + (size_t)i * FM_HEADS_AGES;
        for (int k = 0; k < FM_HEADS_AGES; k++)
            ta[k] = (float)((1 - w) * ta[k] + w * age[k]);
        float *tg = target_of(ft, 1) + (size_t)i * FM_HEADS_GENDERS;
        double sg = 0, sr = 0;
        for (int k = 0; k < FM_HEADS_GENDERS; k++)
            sg += t->gender[k];
        for (int k = 0; k < FM_HEADS_GENDERS; k++)
            tg[k] = (float)((1 - w) * tg[k] + w * (sg > 0 ? t->gender[k] / sg : 0.5));
        float *tr = target_of(ft, 2) + (size_t)i * FM_HEADS_RACES;
        for (int k = 0; k < FM_HEADS_RACES; k++)
            sr += t->race[k];
        for (int k = 0; k < FM_HEADS_RACES; k++)
            tr[k] = (float)((1 - w) * tr[k] +
                            w * (sr > 0 ? t->race[k] / sr : 1.0 / FM_HEADS_RACES));
    }
}

/* The loss weights of the three outputs. */
static void loss_weights(const fm_finetune *ft, double w[3])
{
    w[0] = ft->o.age_weight;
    w[1] = ft->o.gender_weight;
    w[2] = ft->o.race_weight;
}

/* Forward (and with want_grad backward) of n faces in ft->xbuf. Loss into *loss; the
 * gradients go to ft->g (zeroed here). want_grad 1 stops at the heads, 2 goes on
 * through the trained blocks. mask: the shared layer's dropout multipliers, or NULL. */
static fm_status compute(fm_finetune *ft, fm_arena *a, int n, const float *mask,
                         int want_grad, double *loss, fm_error *err)
{
    fm_dlib_tape bt;
    fm_heads_tape ht;
    fm_tensor pooled, dl[3];
    const float *const masks[1] = {mask};
    const float *const targets[3] = {target_of(ft, 0), target_of(ft, 1), target_of(ft, 2)};
    double weights[3];
    fm_status st;
    loss_weights(ft, weights);
    fm_arena_reset(a, 0);
    const fm_tensor x = fm_tensor_make(n, 3, ft->in_h, ft->in_w,
                                       fm_arena_is_measuring(a) ? NULL : ft->xbuf);
    /* the frozen blocks run as inference runs them; the trained ones keep what their
     * backward pass reads (FM_FT_STEM and FM_FT_BLOCKS are dlib_resnet.h's stem and
     * block count) */
    bt.keep_from = ft->o.train_from;
    if ((st = fm_tensor_alloc(a, n, POOLED, 1, 1, &pooled, err)) ||
        (st = fm_dlib_forward(a, &ft->bp, &x, &pooled, NULL, &bt, err)) ||
        (st = fm_heads_net_forward(a, &ft->hp, &pooled, mask ? masks : NULL, &ht, err)))
        return st;
    if (want_grad)
        for (int h = 0; h < 3; h++)
            if ((st = fm_tensor_alloc_zero(a, &ht.logits[h], &dl[h], err)))
                return st;
    /* training steps leave each batch's hardest gender and ethnicity faces out of those
     * outputs' losses (drop_hardest) */
    const float *row_w[3] = {NULL, NULL, NULL};
    const int step = want_grad && !fm_arena_is_measuring(a);
    for (int h = 1; step && ft->o.drop_hardest > 0 && h < 3; h++) {
        float *w = ft->row_w + (size_t)(h - 1) * ft->o.batch;
        int dropped = 0;
        if ((st = fm_heads_hardest_weights(&ht.logits[h], targets[h], ft->o.drop_hardest,
                                           ft->o.drop_below, w, ft->row_loss, &dropped,
                                           err)))
            return st;
        ft->epoch_dropped[h - 1] += dropped;
        row_w[h] = w;
    }
    if (step)
        ft->epoch_rows += n;
    if ((st = fm_heads_net_loss_rows(a, &ht, targets, weights, row_w, loss,
                                     want_grad ? dl : NULL, err)))
        return st;
    if (!want_grad)
        return FM_OK;

    if (!fm_arena_is_measuring(a))
        memset(ft->g + ft->trained_from, 0, (ft->total - ft->trained_from) * sizeof(float));
    const int bb = ft->o.train_from < FM_FT_BLOCKS && want_grad > 1;
    fm_tensor dpooled;
    if ((bb && (st = fm_tensor_alloc_zero(a, &pooled, &dpooled, err))) ||
        (st = fm_heads_net_backward(a, &ft->hp, &ht, mask ? masks : NULL, dl, &ft->hg,
                                    bb ? &dpooled : NULL, err)))
        return st;
    if (!bb)
        return FM_OK;
    return fm_dlib_backward(a, &ft->bp, &bt, &dpooled, ft->o.train_from, &ft->bg, err);
}

/* Backbone only, for validation: pooled features of n faces in xbuf into out. */
static fm_status pooled_only(fm_finetune *ft, int n, float *out, fm_error *err)
{
    fm_arena_reset(ft->arena, 0);
    const fm_tensor x = fm_tensor_make(n, 3, ft->in_h, ft->in_w, ft->xbuf);
    fm_tensor pooled = fm_tensor_make(n, POOLED, 1, 1, out);
    return fm_dlib_forward(ft->arena, &ft->bp, &x, &pooled, NULL, NULL, err);
}

/* ---- set-up --------------------------------------------------------------------- */

static fm_status check_opts(const fm_ft_opts *o, fm_error *err)
{
    if (o->train_from < FM_FT_STEM || o->train_from > FM_FT_BLOCKS || o->batch < 1 ||
        o->batch > 4096 || o->max_epochs < 1 || o->patience < 1 || o->hidden < 1 ||
        o->hidden > 65536 || !(o->lr_backbone >= 0) || !(o->lr_heads > 0) ||
        !(o->lr_decay > 0 && o->lr_decay <= 1) ||
        !(o->weight_decay >= 0) || !(o->dropout >= 0 && o->dropout <= 0.95) ||
        !(o->age_sigma >= 0) || !(o->age_weight > 0) ||
        !(o->gender_weight > 0) || !(o->race_weight > 0) || !(o->warmup_epochs >= 0) ||
        !(o->align_zoom >= 0.5 && o->align_zoom <= 1.5) ||
        !(o->label_smoothing >= 0 && o->label_smoothing <= 1) ||
        !(o->drop_hardest >= 0 && o->drop_hardest <= 0.5) ||
        !(o->drop_below > 0 && o->drop_below <= 1) ||
        !(o->head_epochs >= 0) || !(o->min_lr_ratio >= 0 && o->min_lr_ratio <= 1) ||
        !(o->momentum >= 0 && o->momentum < 1) ||
        !(o->step_epochs > 0) || !(o->step_gamma > 0 && o->step_gamma <= 1) ||
        !(o->shift_px >= 0) || !(o->scale_jitter >= 0 && o->scale_jitter < 0.5) ||
        !(o->rotate_deg >= 0 && o->rotate_deg <= 45) || !(o->brightness >= 0) ||
        !(o->contrast >= 0 && o->contrast < 1) || !(o->degrade >= 0 && o->degrade <= 1) ||
        o->degrade_kinds >= (1u << FM_FT_DAMAGES) ||
        !(o->teacher_weight >= 0 && o->teacher_weight <= 1) ||
        (o->teacher_weight > 0 && !o->teacher_id) ||
        o->checkpoint_steps < 0 ||
        (o->optimizer != FM_FT_ADAMW && o->optimizer != FM_FT_SGD) ||
        (o->schedule != FM_FT_COSINE && o->schedule != FM_FT_STEP))
        return fm_error_set(err, FM_ERR_INVALID, "fine-tune: an option is out of range");
    /* the trained file's identity is its weights' digest: with the base's weights and
     * another template it would pass for the base, and heads made for one alignment
     * would be taken for the other */
    if (o->align_zoom != 1 && (o->train_from == FM_FT_BLOCKS || o->lr_backbone == 0))
        return fm_error_set(err, FM_ERR_INVALID,
                            "fine-tune: --align-zoom needs a trained backbone (not --from "
                            "heads, not --lr 0)");
    return FM_OK;
}

/* Copies the heads of the file at path (their standardisation included) over the
 * freshly initialised ones: training then continues from a trained model's heads
 * instead of new ones. The file must have this trainer's shape. */
static fm_status load_heads(fm_finetune *ft, const char *path, fm_error *err)
{
    fm_model *m = NULL;
    fm_status st = fm_model_open(&m, path, 0, err);
    if (st)
        return st;
    const char *arch = NULL, *made_for = NULL, *feature = NULL;
    double alpha = 0;
    char identity[1024];
    if ((st = fm_model_meta_str(m, "general.architecture", &arch, NULL, err)) ||
        (st = fm_model_meta_f64(m, "heads.leaky_alpha", &alpha, err)) ||
        (st = fm_model_meta_str(m, "heads.backbone", &made_for, NULL, err)) ||
        (st = fm_model_meta_str(m, "heads.feature", &feature, NULL, err)) ||
        (st = fm_heads_backbone_identity(fm_model_path(ft->base), identity, sizeof identity,
                                         err))) {
        fm_error_prefix(err, "--init-heads %s", path);
        goto out;
    }
    if (strcmp(arch, "heads") != 0 || strcmp(feature, "pooled") != 0 ||
        fm_model_tensor(m, "shared.1.weight") || fabs(alpha - ft->o.leaky_alpha) > 1e-6) {
        st = fm_error_set(err, FM_ERR_INVALID,
                          "--init-heads %s: not heads of this trainer's shape (architecture "
                          "heads on the pooled features, one shared layer, leaky alpha %g)",
                          path, (double)ft->o.leaky_alpha);
        goto out;
    }
    /* heads fitted to another network (and its feature scale) would start wrong */
    if (strcmp(made_for, identity) != 0) {
        st = fm_error_set(err, FM_ERR_INVALID,
                          "--init-heads %s: made for the backbone '%s', not for %s ('%s')",
                          path, made_for, fm_model_path(ft->base), identity);
        goto out;
    }
    for (int k = T_HEADS; k < T_COUNT; k++) {
        const ptensor *t = &ft->t[k];
        uint64_t dims[4];
        for (int d = 0; d < t->ndim; d++)
            dims[d] = (uint64_t)t->d[d];
        const float *data = NULL;
        if ((st = fm_model_tensor_expect(m, t->name, (unsigned)t->ndim, dims, &data, err))) {
            fm_error_prefix(err, "--init-heads %s (with --hidden %d)", path, ft->o.hidden);
            goto out;
        }
        memcpy(ft->p + t->off, data, t->count * sizeof(float));
    }
    st = fm_sha256_file(path, ft->init_sha, err);
out:
    fm_model_close(&m);
    return st;
}

fm_status fm_finetune_new(fm_finetune **out, const fm_model *base, const fm_ft_opts *o,
                          fm_error *err)
{
    if (!out || !base || !o)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_new: NULL argument");
    *out = NULL;
    fm_status st = check_opts(o, err);
    if (st)
        return st;
    const char *arch = NULL;
    if ((st = fm_model_meta_str(base, "general.architecture", &arch, NULL, err)))
        return st;
    if (strcmp(arch, "dlib_resnet") != 0)
        return fm_error_set(err, FM_ERR_UNSUPPORTED,
                            "%s: fine-tuning needs a dlib_resnet backbone, this is '%s'",
                            fm_model_path(base), arch);
    fm_finetune *ft = calloc(1, sizeof *ft);
    if (!ft)
        return fm_error_set(err, FM_ERR_NOMEM, "fine-tune: out of memory");
    ft->o = *o;
    ft->base = base;
    ft->best_val = HUGE_VAL;
    ft->fallback_age = 30;
    fm_backbone_input in;
    if ((st = fm_backbone_read_input(base, &in, err)))
        goto fail;
    if (in.h < 131 || in.h > 1024 || in.w < 131 || in.w > 1024) {
        st = fm_error_set(err, FM_ERR_FORMAT, "%s: input.size does not suit dlib_resnet",
                          fm_model_path(base));
        goto fail;
    }
    ft->in_h = in.h;
    ft->in_w = in.w;
    memcpy(ft->mean, in.mean, sizeof ft->mean);
    memcpy(ft->scale, in.scale, sizeof ft->scale);
    memcpy(ft->tmpl, in.tmpl, sizeof ft->tmpl);
    for (int i = 0; i < 10; i++) { /* about the chip's centre ((0,0) is a pixel's centre) */
        const double c = 0.5 * ((i % 2 ? ft->in_h : ft->in_w) - 1);
        ft->tmpl[i] = (float)(c + o->align_zoom * (ft->tmpl[i] - c));
    }

    layout(ft);
    ft->p = aligned_alloc(64, ft->total * sizeof(float));
    ft->g = aligned_alloc(64, ft->total * sizeof(float));
    ft->m1 = aligned_alloc(64, ft->total * sizeof(float));
    ft->m2 = aligned_alloc(64, ft->total * sizeof(float));
    ft->best = aligned_alloc(64, ft->total * sizeof(float));
    size_t plane = (size_t)ft->in_h * ft->in_w;
    ft->xbuf = malloc((size_t)o->batch * 3 * plane * sizeof(float));
    ft->row_w = malloc((size_t)o->batch * 2 * sizeof(float));
    ft->row_loss = malloc((size_t)o->batch * sizeof(double));
    ft->chips = malloc((size_t)o->batch * 3 * plane);
    ft->target = malloc((size_t)o->batch * FM_HEADS_OUTPUTS * sizeof(float));
    ft->mask = malloc((size_t)o->batch * o->hidden * sizeof(float));
    if (!ft->p || !ft->g || !ft->m1 || !ft->m2 || !ft->best || !ft->xbuf || !ft->chips ||
        !ft->target || !ft->mask || !ft->row_w || !ft->row_loss) {
        st = fm_error_set(err, FM_ERR_NOMEM, "fine-tune: out of memory");
        goto fail;
    }
    memset(ft->p, 0, ft->total * sizeof(float));
    memset(ft->g, 0, ft->total * sizeof(float));
    backbone_view(ft, ft->p, &ft->bp);
    backbone_view(ft, ft->g, &ft->bg);
    heads_view(ft, ft->p, &ft->hp);
    heads_view(ft, ft->g, &ft->hg);
    memset(ft->m1, 0, ft->total * sizeof(float));
    memset(ft->m2, 0, ft->total * sizeof(float));
    for (int k = 0; k < T_HEADS; k++) {
        const ptensor *t = &ft->t[k];
        uint64_t dims[4];
        for (int d = 0; d < t->ndim; d++)
            dims[d] = (uint64_t)t->d[d];
        const float *data = NULL;
        if ((st = fm_model_tensor_expect(base, t->name, (unsigned)t->ndim, dims, &data, err)))
            goto fail;
        memcpy(ft->p + t->off, data, t->count * sizeof(float));
    }
    /* heads: PyTorch's default dense initialisation, uniform in +-1/sqrt(fan_in) for
     * weights (biases 0), from the seed */
    for (int k = T_HEADS; k < T_COUNT; k++) {
        const ptensor *t = &ft->t[k];
        if (!t->weight)
            continue;
        double bound = 1.0 / sqrt((double)t->d[1]);
        rng r = rng_for(o->seed, 0x4ead5, (uint64_t)k, 0);
        for (size_t j = 0; j < t->count; j++)
            ft->p[t->off + j] = (float)rng_sym(&r, bound);
    }
    for (int k = 0; k < T_HEADS; k++) {
        ptensor *t = &ft->t[k];
        double sq = 0;
        for (size_t j = 0; j < t->count; j++)
            sq += (double)ft->p[t->off + j] * ft->p[t->off + j];
        t->rms = t->count ? sqrt(sq / t->count) : 0;
        if (!t->weight && k > 0)
            t->rms = ft->t[k - 1].rms; /* a bias moves at its weights' scale */
        if (!(t->rms > 1e-6))
            t->rms = 1e-6;
        /* fc's (never trained) and the stem's tensors come before block 0's, four per
         * block after them */
        const int block = k < FM_DLIB_BLOCK0 ? FM_DLIB_STEM : (k - FM_DLIB_BLOCK0) / 4;
        t->decay = pow(o->lr_decay, (double)(FM_DLIB_BLOCKS - 1 - block));
    }
    for (int i = 0; i < POOLED; i++) {
        ft->p[ft->t[T_FEAT_MEAN].off + i] = 0;
        ft->p[ft->t[T_FEAT_STD].off + i] = 1;
    }
    if (o->init_heads && (st = load_heads(ft, o->init_heads, err)))
        goto fail;
    stats_changed(ft);
    memcpy(ft->best, ft->p, ft->total * sizeof(float));

    /* one arena for a whole training step of a full batch */
    fm_arena *m = NULL;
    if ((st = fm_arena_new_measuring(&m, err)))
        goto fail;
    double loss;
    fm_arena *keep = ft->arena;
    ft->arena = m;
    for (int i = 0; i < o->batch; i++)
        make_targets_one(ft, i, 30, 0, 0);
    st = compute(ft, m, o->batch, NULL, 2, &loss, err);
    size_t need = fm_arena_high_water(m);
    fm_arena_destroy(&m);
    ft->arena = keep;
    if (st)
        goto fail;
    if ((st = fm_arena_new(need, &ft->arena, err)))
        goto fail;
    fm_log_debug("fine-tune: %zu parameters (%zu trained), arena %.1f MB for batch %d",
                 ft->total, ft->total - ft->trained_from, need / 1048576.0, o->batch);
    *out = ft;
    return FM_OK;
fail:
    fm_finetune_free(&ft);
    return st;
}

void fm_finetune_free(fm_finetune **ftp)
{
    if (!ftp || !*ftp)
        return;
    fm_finetune *ft = *ftp;
    free(ft->p);
    free(ft->g);
    free(ft->m1);
    free(ft->m2);
    free(ft->best);
    free(ft->xbuf);
    free(ft->row_w);
    free(ft->row_loss);
    free(ft->chips);
    free(ft->target);
    free(ft->mask);
    fm_arena_destroy(&ft->arena);
    free(ft);
    *ftp = NULL;
}

/* ---- inputs --------------------------------------------------------------------- */

/* The inverse alignment (output -> image pixels) of img's face, or of its mirror image
 * refitted as the pipeline does (landmarks reflected, left and right swapped). */
static int align_inverse(const fm_finetune *ft, const fm_ft_image *img, int mirror,
                         float inv[6])
{
    float M[6], lm[10];
    memcpy(lm, img->landmarks, sizeof lm);
    if (!mirror)
        return fm_align_similarity(lm, ft->tmpl, 5, M, NULL) == FM_OK &&
                       fm_align_invert(M, inv, NULL) == FM_OK
                   ? 0
                   : -1;
    static const int swap[5] = {1, 0, 2, 4, 3};
    float mir[10], im[6], R = (float)(img->w - 1);
    for (int k = 0; k < 5; k++) {
        mir[2 * k] = R - lm[2 * swap[k]];
        mir[2 * k + 1] = lm[2 * swap[k] + 1];
    }
    if (fm_align_similarity(mir, ft->tmpl, 5, M, NULL) != FM_OK ||
        fm_align_invert(M, im, NULL) != FM_OK)
        return -1;
    inv[0] = -im[0];
    inv[1] = -im[1];
    inv[2] = R - im[2];
    inv[3] = im[3];
    inv[4] = im[4];
    inv[5] = im[5];
    return 0;
}

/* One damage of the robustness suite, its kind and strength drawn with r, applied to
 * the W x H chip in place (o->degrade). Why on the aligned chip and not on the photo:
 * the chip is what the network sees, and every damage drawn here keeps its size; a
 * damage that fails (out of memory) leaves the chip as it was. */
const char *const fm_ft_damage_names[FM_FT_DAMAGES] = {
    "down", "jpeg", "blur", "gray", "rot", "exposure", "occlude", "erase"};

fm_status fm_ft_damage_parse(const char *list, unsigned *set, fm_error *err)
{
    unsigned s = 0;
    const char *p = list ? list : "";
    while (*p) {
        size_t n = strcspn(p, ",");
        int k = 0;
        while (k < FM_FT_DAMAGES &&
               !(strlen(fm_ft_damage_names[k]) == n && strncmp(p, fm_ft_damage_names[k], n) == 0))
            k++;
        if (k == FM_FT_DAMAGES)
            return fm_error_set(err, FM_ERR_INVALID,
                                "damage '%.*s' unknown (down, jpeg, blur, gray, rot, exposure, "
                                "occlude, erase)", (int)n, p);
        s |= 1u << k;
        p += n;
        if (*p == ',')
            p++;
    }
    if (!s)
        return fm_error_set(err, FM_ERR_INVALID, "no damage named");
    *set = s;
    return FM_OK;
}

/* See finetune.h. */
void fm_ft_erase(uint8_t *chip, int W, int H, const double u[6], int box[4])
{
    const double area = 0.05 + 0.25 * u[0];
    const double aspect = exp(log(0.3) + (log(3.3) - log(0.3)) * u[1]);
    /* area x aspect and area / aspect stay below 1, so the rectangle fits */
    int w = (int)lround(sqrt(area * aspect) * W), h = (int)lround(sqrt(area / aspect) * H);
    w = w < 1 ? 1 : w > W ? W : w;
    h = h < 1 ? 1 : h > H ? H : h;
    int x0 = (int)(u[2] * (W - w + 1)), y0 = (int)(u[3] * (H - h + 1));
    x0 = x0 > W - w ? W - w : x0;
    y0 = y0 > H - h ? H - h : y0;
    const int solid = u[4] < 0.5;
    const uint8_t gray = (uint8_t)(u[5] * 256 > 255 ? 255 : u[5] * 256);
    uint64_t z = (uint64_t)(u[5] * 4294967296.0); /* the noise: the trainer's mixer */
    for (int y = y0; y < y0 + h; y++) {
        uint8_t *p = chip + ((size_t)y * W + (size_t)x0) * 3;
        if (solid) {
            memset(p, gray, (size_t)3 * w);
            continue;
        }
        for (int i = 0; i < 3 * w; i++) {
            z = fm_train_mix64(z);
            p[i] = (uint8_t)(z >> 56);
        }
    }
    if (box) {
        box[0] = x0;
        box[1] = y0;
        box[2] = x0 + w;
        box[3] = y0 + h;
    }
}

static void degrade_chip(uint8_t *chip, int W, int H, unsigned kinds, rng *r)
{
    fm_degrade d = {0};
    /* uniform over the kinds in the set (none named: the suite's seven, the index
     * itself, so that recipes written before erase existed draw as they did) */
    int kind_of[FM_FT_DAMAGES], n = 0;
    for (int k = 0; k < FM_FT_DAMAGES; k++)
        if (kinds ? (kinds & (1u << k)) != 0 : k < FM_FT_DAMAGE_ERASE)
            kind_of[n++] = k;
    int pick = (int)(rng_unit(r) * n);
    const int kind = kind_of[pick < n ? pick : n - 1];
    if (kind == FM_FT_DAMAGE_ERASE) {
        double u[6];
        for (int i = 0; i < 6; i++)
            u[i] = rng_unit(r);
        fm_ft_erase(chip, W, H, u, NULL);
        return;
    }
    switch (kind) {
    case 0:
        d.kind = FM_DEGRADE_DOWN;
        d.param = 20 + rng_unit(r) * 44;
        break;
    case 1:
        d.kind = FM_DEGRADE_JPEG;
        d.param = floor(10 + rng_unit(r) * 51);
        break;
    case 2:
        d.kind = FM_DEGRADE_BLUR;
        d.param = 0.6 + rng_unit(r) * 2.4;
        break;
    case 3: d.kind = FM_DEGRADE_GRAY; break;
    case 4:
        d.kind = FM_DEGRADE_ROTATE;
        d.param = (rng_unit(r) < 0.5 ? -1 : 1) * (10 + rng_unit(r) * 15);
        break;
    case 5:
        d.kind = FM_DEGRADE_EXPOSURE;
        d.param = rng_unit(r) < 0.5 ? -1.5 + rng_unit(r) : 0.5 + rng_unit(r) * 0.7;
        break;
    default: d.kind = FM_DEGRADE_OCCLUDE; break;
    }
    fm_image in = {.w = W, .h = H, .stride = (size_t)3 * W, .data = chip, .orig_w = W,
                   .orig_h = H, .scale_num = 1, .scale_denom = 1, .orientation = 1};
    fm_image out = {0};
    fm_error e = {0};
    if (fm_degrade_apply(&d, &in, 0, &out, &e) == FM_OK && out.w == W && out.h == H)
        for (int y = 0; y < H; y++)
            memcpy(chip + (size_t)y * 3 * W, out.data + (size_t)y * out.stride, (size_t)3 * W);
    free(out.data);
}

/* Cuts face slot of the batch out of img; r (NULL: no augmentation) draws the flip,
 * the alignment jitter and the photometric change. */
static void make_input(fm_finetune *ft, const fm_ft_image *img, int slot, int mirror,
                       rng *r)
{
    const fm_ft_opts *o = &ft->o;
    const int W = ft->in_w, H = ft->in_h;
    const size_t plane = (size_t)W * H;
    uint8_t *chip = ft->chips + (size_t)slot * 3 * plane;
    float inv[6], J[6], A[6];
    double gain = 1, offset = 0;
    if (r) {
        mirror = o->flip && rng_unit(r) < 0.5;
        /* output -> jittered output: rotate and scale about the centre, then shift */
        double s = 1 + rng_sym(r, o->scale_jitter);
        double th = rng_sym(r, o->rotate_deg) * PI / 180;
        double tx = rng_sym(r, o->shift_px), ty = rng_sym(r, o->shift_px);
        double cx = (W - 1) / 2.0, cy = (H - 1) / 2.0;
        double c = s * cos(th), sn = s * sin(th);
        J[0] = (float)c;
        J[1] = (float)-sn;
        J[2] = (float)(cx - c * cx + sn * cy + tx);
        J[3] = (float)sn;
        J[4] = (float)c;
        J[5] = (float)(cy - sn * cx - c * cy + ty);
        gain = 1 + rng_sym(r, o->contrast);
        offset = rng_sym(r, o->brightness);
    }
    if (align_inverse(ft, img, mirror, inv) != 0) {
        /* cannot happen for detected landmarks; a gray face keeps the batch valid */
        memset(chip, 128, 3 * plane);
    } else {
        if (r) { /* A = inv o J */
            A[0] = inv[0] * J[0] + inv[1] * J[3];
            A[1] = inv[0] * J[1] + inv[1] * J[4];
            A[2] = inv[0] * J[2] + inv[1] * J[5] + inv[2];
            A[3] = inv[3] * J[0] + inv[4] * J[3];
            A[4] = inv[3] * J[1] + inv[4] * J[4];
            A[5] = inv[3] * J[2] + inv[4] * J[5] + inv[5];
        } else {
            memcpy(A, inv, sizeof A);
        }
        fm_warp_opts wo = {FM_BORDER_REPLICATE, 0};
        fm_align_warp(img->rgb, img->w, img->h, img->stride, 3, A, chip, W, H, &wo);
        if (r && o->degrade > 0 && rng_unit(r) < o->degrade)
            degrade_chip(chip, W, H, o->degrade_kinds, r);
    }
    float *dst = ft->xbuf + (size_t)slot * 3 * plane;
    for (int c = 0; c < 3; c++) {
        const float mean = ft->mean[c], scale = ft->scale[c];
        float *p = dst + c * plane;
        const uint8_t *src = chip + c;
        for (size_t k = 0; k < plane; k++) {
            double v = gain * ((double)src[3 * k] - 128) + 128 + offset;
            v = v < 0 ? 0 : v > 255 ? 255 : v;
            p[k] = ((float)v - mean) * scale;
        }
    }
}

/* ---- optimiser ------------------------------------------------------------------ */

/* The learning-rate factor at step for the heads (group 0) or the backbone (group 1):
 * the backbone waits head_epochs (its factor is 0: the heads learn on the pretrained
 * features first, so their random start does not send noise into the backbone), then
 * both warm up linearly over warmup_epochs and decay (cosine to min_lr_ratio, or by
 * step_gamma every step_epochs) over the rest of the run. */
static double lr_factor(const fm_finetune *ft, int group, long step, long total,
                        long per_epoch)
{
    const fm_ft_opts *o = &ft->o;
    double start = group ? o->head_epochs * per_epoch : 0;
    if (step < start)
        return 0;
    double t = step - start, span = total - start, warm = o->warmup_epochs * per_epoch;
    if (t < warm)
        return (t + 1) / warm;
    if (o->schedule == FM_FT_STEP)
        return pow(o->step_gamma, floor(t / (o->step_epochs * per_epoch)));
    double u = span > warm ? (t - warm) / (span - warm) : 1;
    u = u > 1 ? 1 : u;
    return o->min_lr_ratio + (1 - o->min_lr_ratio) * 0.5 * (1 + cos(PI * u));
}

/* One update of every trained parameter. Adam's bias correction counts the steps each
 * group has taken: the heads from step 0, the backbone from its first step
 * (backbone_start), since its moments start from zero there and not at step 0. */
static void optimiser_step(fm_finetune *ft, double fh, double fb, long backbone_start)
{
    const fm_ft_opts *o = &ft->o;
    const long th = ft->step + 1, tb = ft->step - backbone_start + 1;
    for (int k = 0; k < T_COUNT; k++) {
        const ptensor *pt = &ft->t[k];
        if (pt->off < ft->trained_from || pt->fixed)
            continue;
        /* relative: the step is a share of the layer's weight scale, so layers whose
         * weights are 10x smaller (dlib's conv256_2 has an RMS of 0.0035, conv128's
         * 0.02-0.03) are not overwritten by the same absolute Adam step */
        const fm_optim_step step = {
            .kind = o->optimizer == FM_FT_SGD ? FM_OPTIM_SGD : FM_OPTIM_ADAMW,
            .lr = pt->heads         ? fh * o->lr_heads
                  : o->lr_relative ? fb * o->lr_backbone * pt->decay * pt->rms
                                   : fb * o->lr_backbone * pt->decay,
            .weight_decay = pt->weight ? o->weight_decay : 0,
            .momentum = o->momentum,
            .t = pt->heads ? th : tb > 0 ? tb : 1,
        };
        if (step.lr == 0)
            continue;
        fm_optim_update(&step, ft->p + pt->off, ft->g + pt->off, ft->m1 + pt->off,
                        ft->m2 + pt->off, pt->count);
    }
}

/* ---- checkpoints ---------------------------------------------------------------- */

static void fingerprint(const fm_finetune *ft, const char *data_id, char *buf, size_t size)
{
    const fm_ft_opts *o = &ft->o;
    const char *src = "-", *integ = "-";
    fm_model_meta_str(ft->base, "general.source", &src, NULL, NULL);
    fm_model_meta_str(ft->base, "general.source_integrity", &integ, NULL, NULL);
    snprintf(buf, size,
             "facemill-finetune 2|base %s %s|data %s|from %d|batch %d|epochs %d|patience %d|"
             "opt %d|lr %.17g %.17g|wd %.17g|mom %.17g|sched %d|warm %.17g %.17g|min %.17g|"
             "step %.17g %.17g|hidden %d|alpha %.9g|drop %.17g|age %.17g %.17g|"
             "aug %d %.17g %.17g %.17g %.17g %.17g|seed %llu|rel %d",
             src, integ, data_id ? data_id : "-", o->train_from, o->batch, o->max_epochs,
             o->patience, (int)o->optimizer, o->lr_backbone, o->lr_heads, o->weight_decay,
             o->momentum, (int)o->schedule, o->head_epochs, o->warmup_epochs, o->min_lr_ratio,
             o->step_epochs, o->step_gamma, o->hidden, o->leaky_alpha, o->dropout,
             o->age_sigma, o->age_weight, o->flip, o->shift_px, o->scale_jitter,
             o->rotate_deg, o->brightness, o->contrast, (unsigned long long)o->seed,
             o->lr_relative);
    /* appended only when set, so checkpoints written before these weights existed
     * still resume */
    if (o->gender_weight != 1 || o->race_weight != 1) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|weights %.17g %.17g", o->gender_weight,
                     o->race_weight);
    }
    if (o->lr_decay != 1) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|decay %.17g", o->lr_decay);
    }
    if (o->align_zoom != 1) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|zoom %.17g", o->align_zoom);
    }
    if (o->label_smoothing != 0) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|smooth %.17g", o->label_smoothing);
    }
    if (o->drop_hardest != 0) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|hardest %.17g %.17g", o->drop_hardest,
                     o->drop_below);
    }
    if (o->degrade != 0) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|degrade %.17g", o->degrade);
    }
    /* the suite's seven named draw as none named: the same options */
    if (o->degrade_kinds && o->degrade_kinds != (1u << FM_FT_DAMAGE_ERASE) - 1) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|kinds %u", o->degrade_kinds);
    }
    if (o->teacher_weight > 0) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|teacher %s %.17g",
                     o->teacher_id ? o->teacher_id : "-", o->teacher_weight);
    }
    if (o->init_heads) {
        size_t len = strlen(buf);
        if (len < size)
            snprintf(buf + len, size - len, "|heads %s", ft->init_sha);
    }
}

/* drop_hardest's shares of the epoch's faces so far, into p. */
static void dropped_shares(const fm_finetune *ft, fm_ft_progress *p)
{
    const double rows = ft->epoch_rows > 0 ? (double)ft->epoch_rows : 1;
    p->dropped_gender = (double)ft->epoch_dropped[0] / rows;
    p->dropped_race = (double)ft->epoch_dropped[1] / rows;
}

static fm_status checkpoint_save(const fm_finetune *ft, const char *key, fm_error *err)
{
    fm_model_writer *w = fm_model_writer_new();
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "checkpoint: out of memory");
    const uint64_t dims[1] = {(uint64_t)ft->total};
    const fm_ft_progress *b = &ft->best_prog;
    const double fig[7] = {b->val_loss, b->val_age_mae, b->val_age_rmse, b->val_gender_acc,
                           b->val_race_acc, ft->best_val, ft->epoch_loss};
    fm_status st;
    if ((st = fm_model_writer_add_str(w, "general.architecture", "finetune_checkpoint", err)) ||
        (st = fm_model_writer_add_str(w, "checkpoint.key", key, err)) ||
        (st = fm_model_writer_add_i64(w, "checkpoint.step", ft->step, err)) ||
        (st = fm_model_writer_add_i64(w, "checkpoint.validated", ft->validated, err)) ||
        (st = fm_model_writer_add_i64(w, "checkpoint.best_epoch", ft->best_epoch, err)) ||
        (st = fm_model_writer_add_i64(w, "checkpoint.bad_epochs", ft->bad_epochs, err)) ||
        (st = fm_model_writer_add_i64(w, "checkpoint.have_best", ft->have_best, err)) ||
        (st = fm_model_writer_add_i64(w, "checkpoint.epoch_loss_steps", ft->epoch_loss_steps,
                                      err)) ||
        (st = fm_model_writer_add_f64_array(w, "checkpoint.figures", fig, 7, err)) ||
        (st = fm_model_writer_add_tensor(w, "params", 1, dims, ft->p, err)) ||
        (st = fm_model_writer_add_tensor(w, "moment1", 1, dims, ft->m1, err)) ||
        (st = fm_model_writer_add_tensor(w, "moment2", 1, dims, ft->m2, err)) ||
        (st = fm_model_writer_add_tensor(w, "best", 1, dims, ft->best, err)) ||
        (st = fm_model_writer_save(w, ft->o.checkpoint, err)))
        fm_error_prefix(err, "checkpoint %s", ft->o.checkpoint);
    fm_model_writer_destroy(&w);
    return st;
}

/* 1 when a matching checkpoint was loaded, 0 when there is none (or it does not
 * match: then it is ignored, with a log line), -1 on a damaged file. */
static int checkpoint_load(fm_finetune *ft, const char *key, fm_error *err)
{
    fm_model *m = NULL;
    fm_error e = {0};
    if (fm_model_open(&m, ft->o.checkpoint, FM_MODEL_VERIFY_DATA, &e) != FM_OK) {
        if (e.code == FM_ERR_IO && access(ft->o.checkpoint, F_OK) != 0)
            return 0; /* none yet */
        fm_error_set(err, e.code, "checkpoint: %s", fm_error_text(&e));
        return -1;
    }
    int rc = -1;
    const char *k = NULL;
    const double *fig = NULL;
    size_t nfig = 0;
    int64_t step, val, be, bad, hb, els;
    const float *p, *m1, *m2, *best;
    const uint64_t dims[1] = {(uint64_t)ft->total};
    if (fm_model_meta_str(m, "checkpoint.key", &k, NULL, &e) != FM_OK)
        goto bad;
    if (strcmp(k, key) != 0) {
        fm_log_warn("checkpoint %s was made with other options or data: starting afresh "
                    "(it will be overwritten)", ft->o.checkpoint);
        rc = 0;
        goto done;
    }
    if (fm_model_meta_i64(m, "checkpoint.step", &step, &e) ||
        fm_model_meta_i64(m, "checkpoint.validated", &val, &e) ||
        fm_model_meta_i64(m, "checkpoint.best_epoch", &be, &e) ||
        fm_model_meta_i64(m, "checkpoint.bad_epochs", &bad, &e) ||
        fm_model_meta_i64(m, "checkpoint.have_best", &hb, &e) ||
        fm_model_meta_i64(m, "checkpoint.epoch_loss_steps", &els, &e) ||
        fm_model_meta_f64_array(m, "checkpoint.figures", &fig, &nfig, &e) || nfig != 7 ||
        fm_model_tensor_expect(m, "params", 1, dims, &p, &e) ||
        fm_model_tensor_expect(m, "moment1", 1, dims, &m1, &e) ||
        fm_model_tensor_expect(m, "moment2", 1, dims, &m2, &e) ||
        fm_model_tensor_expect(m, "best", 1, dims, &best, &e))
        goto bad;
    memcpy(ft->p, p, ft->total * sizeof(float));
    memcpy(ft->m1, m1, ft->total * sizeof(float));
    memcpy(ft->m2, m2, ft->total * sizeof(float));
    memcpy(ft->best, best, ft->total * sizeof(float));
    ft->step = (long)step;
    ft->validated = (int)val;
    ft->best_epoch = (int)be;
    ft->bad_epochs = (int)bad;
    ft->have_best = (int)hb;
    ft->epoch_loss_steps = (long)els;
    ft->best_prog.val_loss = fig[0];
    ft->best_prog.val_age_mae = fig[1];
    ft->best_prog.val_age_rmse = fig[2];
    ft->best_prog.val_gender_acc = fig[3];
    ft->best_prog.val_race_acc = fig[4];
    ft->best_prog.epoch = (int)be;
    ft->best_prog.best_epoch = (int)be;
    ft->best_val = fig[5];
    ft->epoch_loss = fig[6];
    stats_changed(ft);
    rc = 1;
    goto done;
bad:
    fm_error_set(err, FM_ERR_FORMAT, "checkpoint %s: %s", ft->o.checkpoint,
                 e.code ? fm_error_text(&e) : "bad figures");
done:
    fm_model_close(&m);
    return rc;
}

/* ---- training ------------------------------------------------------------------- */

/* Scores val (face and mirror averaged) with the current weights into p; glog and
 * rlog (may be NULL) get every face's gender and ethnicity logits. */
static fm_status validate(fm_finetune *ft, const fm_ft_set *val, fm_ft_progress *pr,
                          float *glog, float *rlog, fm_error *err)
{
    const int B = ft->o.batch;
    float *feat = malloc((size_t)B * POOLED * sizeof(float) * 2);
    if (!feat)
        return fm_error_set(err, FM_ERR_NOMEM, "validation: out of memory");
    double loss = 0, ae = 0, se = 0;
    int gok = 0, rok = 0;
    fm_status st = FM_OK;
    fm_utk_label labels[4096];
    const float *const targets[3] = {target_of(ft, 0), target_of(ft, 1), target_of(ft, 2)};
    double weights[3];
    loss_weights(ft, weights);
    for (int i0 = 0; i0 < val->n && st == FM_OK; i0 += B) {
        int n = val->n - i0 < B ? val->n - i0 : B;
        for (int v = 0; v < 2 && st == FM_OK; v++) {
            for (int i = 0; i < n; i++)
                make_input(ft, &val->images[i0 + i], i, v, NULL);
            st = pooled_only(ft, n, feat + (size_t)v * B * POOLED, err);
        }
        if (st)
            break;
        for (size_t j = 0; j < (size_t)n * POOLED; j++)
            feat[j] = 0.5f * (feat[j] + feat[(size_t)B * POOLED + j]);
        for (int i = 0; i < n; i++)
            labels[i] = val->images[i0 + i].label;
        make_targets(ft, labels, NULL, n);
        /* heads on the averaged features */
        fm_heads_tape s;
        fm_arena_reset(ft->arena, 0);
        double l = 0;
        const fm_tensor f = fm_tensor_make(n, POOLED, 1, 1, feat);
        if ((st = fm_heads_net_forward(ft->arena, &ft->hp, &f, NULL, &s, err)) ||
            (st = fm_heads_net_loss(ft->arena, &s, targets, weights, &l, NULL, err)))
            break;
        loss += l * n;
        if (glog)
            memcpy(glog + (size_t)i0 * FM_HEADS_GENDERS, s.logits[1].data,
                   (size_t)n * FM_HEADS_GENDERS * sizeof(float));
        if (rlog)
            memcpy(rlog + (size_t)i0 * FM_HEADS_RACES, s.logits[2].data,
                   (size_t)n * FM_HEADS_RACES * sizeof(float));
        for (int i = 0; i < n; i++) {
            fm_attrs at;
            fm_attrs_from_logits(s.logits[0].data + (size_t)i * FM_HEADS_AGES,
                                 s.logits[1].data + (size_t)i * FM_HEADS_GENDERS,
                                 s.logits[2].data + (size_t)i * FM_HEADS_RACES, &at);
            double d = at.age - labels[i].age;
            ae += fabs(d);
            se += d * d;
            gok += at.gender == labels[i].gender;
            rok += at.race == labels[i].race;
        }
    }
    free(feat);
    if (st)
        return st;
    pr->val_loss = loss / val->n;
    pr->val_age_mae = ae / val->n;
    pr->val_age_rmse = sqrt(se / val->n);
    pr->val_gender_acc = (double)gok / val->n;
    pr->val_race_acc = (double)rok / val->n;
    return FM_OK;
}

/* Sets feat.mean and feat.std to the statistics of the base backbone's pooled
 * features over (up to 2048 of) the training faces and their mirror images, so the
 * heads start from standardised inputs whatever the backbone's scale. */
static fm_status feature_stats(fm_finetune *ft, const fm_ft_set *train, fm_error *err)
{
    const int B = ft->o.batch;
    const int n = train->n < 2048 ? train->n : 2048;
    double sum[POOLED] = {0}, sq[POOLED] = {0};
    float *feat = malloc((size_t)B * POOLED * sizeof(float));
    if (!feat)
        return fm_error_set(err, FM_ERR_NOMEM, "feature statistics: out of memory");
    fm_status st = FM_OK;
    long count = 0;
    for (int v = 0; v < 2 && st == FM_OK; v++)
        for (int i0 = 0; i0 < n && st == FM_OK; i0 += B) {
            int m = n - i0 < B ? n - i0 : B;
            /* spread over the whole set: image (i * stride) rather than the first n */
            for (int i = 0; i < m; i++)
                make_input(ft, &train->images[(size_t)(i0 + i) * train->n / n], i, v, NULL);
            if ((st = pooled_only(ft, m, feat, err)))
                break;
            for (int i = 0; i < m; i++)
                for (int k = 0; k < POOLED; k++) {
                    double x = feat[(size_t)i * POOLED + k];
                    sum[k] += x;
                    sq[k] += x * x;
                }
            count += m;
        }
    free(feat);
    if (st)
        return st;
    float *mean = ft->p + ft->t[T_FEAT_MEAN].off, *sd = ft->p + ft->t[T_FEAT_STD].off;
    for (int k = 0; k < POOLED; k++) {
        double mu = sum[k] / count, var = sq[k] / count - mu * mu;
        mean[k] = (float)mu;
        sd[k] = (float)sqrt(var > 1e-8 ? var : 1e-8);
    }
    memcpy(ft->best + ft->t[T_FEAT_MEAN].off, mean, POOLED * sizeof(float));
    memcpy(ft->best + ft->t[T_FEAT_STD].off, sd, POOLED * sizeof(float));
    stats_changed(ft);
    return FM_OK;
}

/* The order of epoch e: a Fisher-Yates shuffle keyed by (seed, e). */
static void permutation(const fm_finetune *ft, int e, int n, int *perm)
{
    for (int i = 0; i < n; i++)
        perm[i] = i;
    rng r = rng_for(ft->o.seed, 0x5405f1e, (uint64_t)e, 0);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_unit(&r) * (i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

fm_status fm_finetune_run(fm_finetune *ft, const fm_ft_set *train, const fm_ft_set *val,
                          const char *data_id, fm_ft_progress *best, fm_error *err)
{
    if (!ft || !train || !val || !train->images || !val->images)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_run: NULL argument");
    const fm_ft_opts *o = &ft->o;
    const int B = o->batch;
    if (train->n < B || val->n < 1)
        return fm_error_set(err, FM_ERR_INVALID,
                            "fine-tune: %d training faces for batches of %d, %d validation "
                            "faces", train->n, B, val->n);
    double age_sum = 0;
    for (int i = 0; i < train->n; i++)
        age_sum += train->images[i].label.age;
    ft->fallback_age = age_sum / train->n;

    char key[2048];
    fingerprint(ft, data_id, key, sizeof key);
    if (o->checkpoint) {
        int got = checkpoint_load(ft, key, err);
        if (got < 0)
            return err ? err->code : FM_ERR_FORMAT;
        if (got)
            fm_log_info("resuming from %s: step %ld, %d epoch(s) validated",
                        o->checkpoint, ft->step, ft->validated);
    }
    if (ft->step == 0 && ft->validated == 0 && !ft->o.init_heads) {
        fm_status st0 = feature_stats(ft, train, err);
        if (st0)
            return st0;
    }
    const long per_epoch = train->n / B;
    const long total = per_epoch * o->max_epochs;
    /* the first step whose backbone rate is not 0 (lr_factor) */
    const long backbone_start = (long)ceil(o->head_epochs * per_epoch);
    int *perm = malloc((size_t)train->n * sizeof *perm);
    if (!perm)
        return fm_error_set(err, FM_ERR_NOMEM, "fine-tune: out of memory");
    fm_status st = FM_OK;
    const double t0 = fm_now_ms();
    long steps_here = 0;
    fm_ft_progress pr;
    memset(&pr, 0, sizeof pr);
    pr.max_epochs = o->max_epochs;
    pr.total_steps = total;

    while (ft->validated < o->max_epochs && ft->bad_epochs < o->patience) {
        const int e = ft->validated;
        permutation(ft, e, train->n, perm);
        for (long s = ft->step - (long)e * per_epoch; s < per_epoch; s++) {
            if ((o->stop_after_steps > 0 && steps_here >= o->stop_after_steps) ||
                (o->stop && *o->stop)) {
                if (o->checkpoint && (st = checkpoint_save(ft, key, err)))
                    goto out;
                st = fm_error_set(err, FM_ERR_INTERRUPTED,
                                  "fine-tune stopped at step %ld of %ld%s%s", ft->step, total,
                                  o->checkpoint ? "; resume from " : "",
                                  o->checkpoint ? o->checkpoint : "");
                goto out;
            }
            fm_utk_label labels[4096];
            const fm_ft_soft *soft[4096];
            for (int i = 0; i < B; i++) {
                const int idx = perm[s * B + i];
                rng r = rng_for(o->seed, (uint64_t)e + 1, (uint64_t)idx, 0xa09);
                make_input(ft, &train->images[idx], i, 0, &r);
                labels[i] = train->images[idx].label;
                soft[i] = train->images[idx].soft;
            }
            make_targets(ft, labels, soft, B);
            const float *mask = NULL;
            if (o->dropout > 0) {
                rng r = rng_for(o->seed, 0xd209, (uint64_t)ft->step, 0);
                const float keep = (float)(1 / (1 - o->dropout));
                for (size_t j = 0; j < (size_t)B * o->hidden; j++)
                    ft->mask[j] = rng_unit(&r) < o->dropout ? 0.0f : keep;
                mask = ft->mask;
            }
            double loss = 0;
            const double fh = lr_factor(ft, 0, ft->step, total, per_epoch);
            const double fb = lr_factor(ft, 1, ft->step, total, per_epoch);
            if ((st = compute(ft, ft->arena, B, mask, fb > 0 ? 2 : 1, &loss, err)))
                goto out;
            if (!isfinite(loss)) {
                st = fm_error_set(err, FM_ERR_INTERNAL,
                                  "fine-tune: the loss is %g at step %ld: lower the learning "
                                  "rate", loss, ft->step);
                goto out;
            }
            optimiser_step(ft, fh, fb, backbone_start);
            ft->step++;
            steps_here++;
            ft->epoch_loss += loss;
            ft->epoch_loss_steps++;
            if (o->checkpoint && o->checkpoint_steps > 0 && ft->step % o->checkpoint_steps == 0 &&
                (st = checkpoint_save(ft, key, err)))
                goto out;
            if (o->progress && o->progress_steps > 0 && ft->step % o->progress_steps == 0) {
                double el = (fm_now_ms() - t0) / 1e3;
                pr.epoch = e + 1;
                pr.step = ft->step;
                pr.epoch_end = 0;
                pr.lr_backbone = fb * o->lr_backbone;
                pr.lr_heads = fh * o->lr_heads;
                pr.train_loss = ft->epoch_loss / ft->epoch_loss_steps;
                dropped_shares(ft, &pr);
                pr.elapsed_s = el;
                pr.eta_s = el / steps_here * (total - ft->step);
                pr.best_epoch = ft->best_epoch;
                o->progress(o->ctx, &pr);
            }
        }
        /* the epoch is done: validate, keep the best, maybe stop */
        pr.epoch = e + 1;
        pr.step = ft->step;
        pr.epoch_end = 1;
        pr.train_loss = ft->epoch_loss_steps ? ft->epoch_loss / ft->epoch_loss_steps : 0;
        dropped_shares(ft, &pr);
        if ((st = validate(ft, val, &pr, NULL, NULL, err)))
            goto out;
        ft->validated++;
        ft->epoch_loss = 0;
        ft->epoch_loss_steps = 0;
        ft->epoch_rows = ft->epoch_dropped[0] = ft->epoch_dropped[1] = 0;
        if (pr.val_loss < ft->best_val) {
            ft->best_val = pr.val_loss;
            ft->best_epoch = e + 1;
            ft->bad_epochs = 0;
            memcpy(ft->best, ft->p, ft->total * sizeof(float));
            ft->have_best = 1;
            ft->best_prog = pr;
        } else {
            ft->bad_epochs++;
        }
        pr.best_epoch = ft->best_epoch;
        ft->best_prog.best_epoch = ft->best_epoch;
        double el = (fm_now_ms() - t0) / 1e3;
        pr.elapsed_s = el;
        pr.eta_s = steps_here ? el / steps_here * (total - ft->step) : 0;
        if (o->checkpoint && (st = checkpoint_save(ft, key, err)))
            goto out;
        if (o->progress)
            o->progress(o->ctx, &pr);
    }
    if (best)
        *best = ft->best_prog;
out:
    free(perm);
    return st;
}

/* ---- output --------------------------------------------------------------------- */

static const float *kept(const fm_finetune *ft)
{
    return ft->have_best ? ft->best : ft->p;
}

const float *fm_finetune_template(const fm_finetune *ft)
{
    return ft ? ft->tmpl : NULL;
}

/* The data written for tensor ti of the base: the trainer's values (src, the kept
 * vector) for the backbone tensors it holds, the base's own for the others. */
static const float *written_data(const fm_finetune *ft, const float *src,
                                 const fm_model_tensor_info *ti)
{
    for (int k = 0; k < T_HEADS; k++)
        if (strcmp(ft->t[k].name, ti->name) == 0)
            return src + ft->t[k].off;
    return ti->data;
}

fm_status fm_finetune_write_backbone(const fm_finetune *ft, fm_model_writer *w,
                                     fm_error *err)
{
    if (!ft || !w)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_write_backbone: NULL argument");
    const float *src = kept(ft);
    /* every tensor of the base, in its order: the trained ones from our vector */
    for (size_t i = 0; i < fm_model_tensor_count(ft->base); i++) {
        const fm_model_tensor_info *ti = fm_model_tensor_at(ft->base, i);
        const float *data = written_data(ft, src, ti);
        fm_status st = fm_model_writer_add_tensor(w, ti->name, ti->ndim, ti->dims, data, err);
        if (st)
            return st;
    }
    return FM_OK;
}

/* Lineage keys of a base model that a model trained from it moves under base. */
static int is_base_lineage(const char *key)
{
    static const char *const prefix[] = {"general.base", "train.", "base.", "expand."};
    for (size_t i = 0; i < sizeof prefix / sizeof *prefix; i++)
        if (strncmp(key, prefix[i], strlen(prefix[i])) == 0)
            return 1;
    return 0;
}

fm_status fm_finetune_weights_digest(const fm_finetune *ft, char hex[65], fm_error *err)
{
    if (!ft || !hex)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_weights_digest: NULL argument");
    const float *src = kept(ft);
    fm_sha256 s;
    fm_sha256_init(&s);
    /* what fm_finetune_write_backbone writes, in its order: names with their NUL, f32
     * data */
    for (size_t i = 0; i < fm_model_tensor_count(ft->base); i++) {
        const fm_model_tensor_info *ti = fm_model_tensor_at(ft->base, i);
        const float *data = written_data(ft, src, ti);
        fm_sha256_update(&s, ti->name, ti->name_len + 1);
        fm_sha256_update(&s, data, (size_t)ti->nbytes);
    }
    uint8_t d[FM_SHA256_BYTES];
    fm_sha256_final(&s, d);
    fm_sha256_hex(d, hex);
    return FM_OK;
}

fm_status fm_finetune_copy_meta(const fm_model *base, const char *const *skip,
                                fm_model_writer *w, fm_error *err)
{
    for (size_t i = 0; i < fm_model_meta_count(base); i++) {
        const char *key = NULL, *key_out;
        fm_model_meta_type type;
        fm_model_meta_at(base, i, &key, &type);
        int skipped = 0;
        for (size_t s = 0; skip && skip[s]; s++)
            skipped |= strcmp(skip[s], key) == 0;
        if (skipped)
            continue;
        /* a base that was itself trained (or expanded) keeps its lineage, one level
         * down: train.command -> base.train.command, base.X -> base.base.X */
        char moved[8 + 256]; /* keys are at most 255 bytes; the writer checks the result */
        key_out = key;
        if (is_base_lineage(key)) {
            snprintf(moved, sizeof moved, "base.%s", key);
            key_out = moved;
        }
        fm_status st = FM_OK;
        switch (type) {
        case FM_MODEL_META_I64: {
            int64_t v;
            if (!(st = fm_model_meta_i64(base, key, &v, err)))
                st = fm_model_writer_add_i64(w, key_out, v, err);
            break;
        }
        case FM_MODEL_META_F64: {
            double v;
            if (!(st = fm_model_meta_f64(base, key, &v, err)))
                st = fm_model_writer_add_f64(w, key_out, v, err);
            break;
        }
        case FM_MODEL_META_STR: {
            const char *v;
            if (!(st = fm_model_meta_str(base, key, &v, NULL, err)))
                st = fm_model_writer_add_str(w, key_out, v, err);
            break;
        }
        case FM_MODEL_META_I64_ARRAY: {
            const int64_t *v;
            size_t n;
            if (!(st = fm_model_meta_i64_array(base, key, &v, &n, err)))
                st = fm_model_writer_add_i64_array(w, key_out, v, n, err);
            break;
        }
        case FM_MODEL_META_F64_ARRAY: {
            const double *v;
            size_t n;
            if (!(st = fm_model_meta_f64_array(base, key, &v, &n, err)))
                st = fm_model_writer_add_f64_array(w, key_out, v, n, err);
            break;
        }
        case FM_MODEL_META_STR_ARRAY: {
            const char *const *v;
            size_t n;
            if (!(st = fm_model_meta_str_array(base, key, &v, &n, err)))
                st = fm_model_writer_add_str_array(w, key_out, v, n, err);
            break;
        }
        }
        if (st)
            return st;
    }
    return FM_OK;
}

fm_status fm_finetune_write_heads(const fm_finetune *ft, fm_model_writer *w, fm_error *err)
{
    if (!ft || !w)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_write_heads: NULL argument");
    float *src = (float *)kept(ft); /* only read: the views below are written out */
    fm_heads_net net;
    heads_view(ft, src, &net);
    /* a calibrated output layer is written divided by its temperature */
    float *scaled = NULL;
    if (ft->calibrated) {
        size_t count = 0;
        for (int o = 1; o < 3; o++)
            count += fm_tensor_count(&net.head_w[o]) + fm_tensor_count(&net.head_b[o]);
        if (!(scaled = malloc(count * sizeof(float))))
            return fm_error_set(err, FM_ERR_NOMEM, "heads: out of memory");
        float *next = scaled;
        for (int o = 1; o < 3; o++) {
            const double inv = 1 / ft->temp[o - 1];
            fm_tensor *part[2] = {&net.head_w[o], &net.head_b[o]};
            for (int q = 0; q < 2; q++) {
                const size_t n = fm_tensor_count(part[q]);
                for (size_t i = 0; i < n; i++)
                    next[i] = (float)(part[q]->data[i] * inv);
                part[q]->data = next;
                next += n;
            }
        }
    }
    fm_status st = fm_heads_write(w, &net, src + ft->t[T_FEAT_MEAN].off,
                                  src + ft->t[T_FEAT_STD].off, ft->fallback_age, err);
    free(scaled);
    if (st == FM_OK && ft->calibrated)
        st = fm_model_writer_add_f64_array(w, "heads.train.temperature", ft->temp, 2, err);
    return st;
}

/* ---- calibration ---------------------------------------------------------------- */

/* Mean negative log-likelihood of softmax(beta * logits) for labels. */
static double mean_nll(const float *z, const int *labels, int n, int k, double beta)
{
    double sum = 0;
    for (int i = 0; i < n; i++) {
        const float *row = z + (size_t)i * k;
        double mx = row[0];
        for (int j = 1; j < k; j++)
            mx = row[j] > mx ? row[j] : mx;
        double se = 0;
        for (int j = 0; j < k; j++)
            se += exp(beta * (row[j] - mx));
        sum += log(se) - beta * (row[labels[i]] - mx);
    }
    return sum / n;
}

double fm_ft_fit_temperature(const float *logits, const int *labels, int n, int k)
{
    if (!logits || !labels || n < 1 || k < 2)
        return 1;
    /* the NLL is convex in beta = 1/T (a log-sum-exp minus a linear term), so a
     * golden-section search over beta finds its minimum */
    const double gr = 0.6180339887498949;
    double a = 0.05, b = 20;
    double c = b - gr * (b - a), d = a + gr * (b - a);
    double fc = mean_nll(logits, labels, n, k, c), fd = mean_nll(logits, labels, n, k, d);
    for (int it = 0; it < 100 && b - a > 1e-7; it++) {
        if (fc < fd) {
            b = d, d = c, fd = fc;
            c = b - gr * (b - a);
            fc = mean_nll(logits, labels, n, k, c);
        } else {
            a = c, c = d, fc = fd;
            d = a + gr * (b - a);
            fd = mean_nll(logits, labels, n, k, d);
        }
    }
    return 1 / (0.5 * (a + b));
}

fm_status fm_finetune_calibrate(fm_finetune *ft, const fm_ft_set *val, double t[2],
                                double nll[4], fm_error *err)
{
    if (!ft || !val || val->n < 1 || !val->images)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_calibrate: no faces");
    const int n = val->n;
    float *gz = malloc((size_t)n * FM_HEADS_GENDERS * sizeof(float));
    float *rz = malloc((size_t)n * FM_HEADS_RACES * sizeof(float));
    int *gl = malloc((size_t)n * sizeof(int)), *rl = malloc((size_t)n * sizeof(int));
    float *saved = ft->have_best ? malloc(ft->total * sizeof(float)) : NULL;
    fm_status st = FM_OK;
    if (!gz || !rz || !gl || !rl || (ft->have_best && !saved)) {
        st = fm_error_set(err, FM_ERR_NOMEM, "calibration: out of memory");
        goto out;
    }
    /* the kept weights are the ones written: score with them */
    if (saved) {
        memcpy(saved, ft->p, ft->total * sizeof(float));
        memcpy(ft->p, ft->best, ft->total * sizeof(float));
    }
    fm_ft_progress pr;
    st = validate(ft, val, &pr, gz, rz, err);
    if (saved)
        memcpy(ft->p, saved, ft->total * sizeof(float));
    if (st)
        goto out;
    for (int i = 0; i < n; i++) {
        gl[i] = val->images[i].label.gender;
        rl[i] = val->images[i].label.race;
    }
    ft->temp[0] = fm_ft_fit_temperature(gz, gl, n, FM_HEADS_GENDERS);
    ft->temp[1] = fm_ft_fit_temperature(rz, rl, n, FM_HEADS_RACES);
    ft->calibrated = 1;
    if (t)
        t[0] = ft->temp[0], t[1] = ft->temp[1];
    if (nll) {
        nll[0] = mean_nll(gz, gl, n, FM_HEADS_GENDERS, 1);
        nll[1] = mean_nll(gz, gl, n, FM_HEADS_GENDERS, 1 / ft->temp[0]);
        nll[2] = mean_nll(rz, rl, n, FM_HEADS_RACES, 1);
        nll[3] = mean_nll(rz, rl, n, FM_HEADS_RACES, 1 / ft->temp[1]);
    }
out:
    free(gz);
    free(rz);
    free(gl);
    free(rl);
    free(saved);
    return st;
}

/* ---- for tests ------------------------------------------------------------------ */

fm_status fm_finetune_loss(fm_finetune *ft, const float *x, const fm_utk_label *labels,
                           int n, int want_grad, double *loss, fm_error *err)
{
    if (!ft || !x || !labels || !loss || n < 1 || n > ft->o.batch)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_loss: bad arguments");
    memcpy(ft->xbuf, x, (size_t)n * 3 * ft->in_h * ft->in_w * sizeof(float));
    make_targets(ft, labels, NULL, n);
    return compute(ft, ft->arena, n, NULL, want_grad ? 2 : 0, loss, err);
}

fm_status fm_finetune_pooled(fm_finetune *ft, const float *x, int n, float *out,
                             fm_error *err)
{
    if (!ft || !x || !out || n < 1 || n > ft->o.batch)
        return fm_error_set(err, FM_ERR_INVALID, "fm_finetune_pooled: bad arguments");
    memcpy(ft->xbuf, x, (size_t)n * 3 * ft->in_h * ft->in_w * sizeof(float));
    return pooled_only(ft, n, out, err);
}

float *fm_finetune_params(fm_finetune *ft, size_t *count, size_t *trained_from)
{
    if (count)
        *count = ft->total;
    if (trained_from)
        *trained_from = ft->trained_from;
    return ft->p;
}

const float *fm_finetune_grads(const fm_finetune *ft)
{
    return ft->g;
}

void fm_finetune_input_size(const fm_finetune *ft, int *h, int *w)
{
    *h = ft->in_h;
    *w = ft->in_w;
}
