/* pipeline.c - decode -> detect -> align -> embed -> heads for a batch of images
 * (include/facemill/pipeline.h).
 *
 * One pass over the images decodes, detects and aligns each (the decoder's pixels
 * only live until the next decode, so faces are cut out at once); aligned chips
 * collect in a buffer of embed.batch chips that goes through the backbone whenever
 * it is full, and features land in per-face slots. After the last image the buffer
 * is flushed and every embedded face goes through the heads in one call.
 */
#include "facemill/pipeline.h"
#include "facemill/align.h"
#include "facemill/clock.h"
#include "facemill/image.h"
#include "facemill/log.h"
#include "facemill/modelpath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_IMAGES 16

/* A member of an ensemble after the first: its backbone runs on the same chips, its
 * heads on its own features, and the members' answers are averaged. */
typedef struct member {
    fm_backbone *bb;
    fm_heads *heads;
    fm_backbone_output hf; /* the output its heads read */
    int hd;                /* its length */
    int heads_mirror;      /* its heads average the mirror views */
    size_t off;            /* of that output, view 0, in a slot */
    float *out;            /* batch x hd */
} member;

struct fm_pipeline {
    fm_pipeline_opts opts;
    fm_detect_opts dopts;
    fm_decoder *dec;
    fm_detector *det;
    fm_backbone *bb;
    fm_heads *heads;
    char identity[1024];
    int max_images, max_faces, slots; /* slots = max_images * max_faces */
    int in_h, in_w;
    float tmpl[10];
    int mode;                         /* detect.mode (an fm_detect_mode) */
    float fixed[10];                  /* its landmarks' shares unless mtcnn */
    int fallback;                     /* mtcnn: an image without faces is one cropped
                                         face (detect.fallback) */
    int embed;                        /* run the backbone at all */
    int mirror;                       /* 2: each view also as its mirror image, else 1 */
    int views;                        /* chips per face: zooms x mirror (embed.tta_zoom) */
    float zoom[3];                    /* template scale of each zoom; [0] is 1 */
    int heads_mirror;                 /* the heads' mean includes the mirror views */
    /* the mirror views only where they pay (embed.mirror_age_std > 0): a face's other
     * views go through the backbone and the heads first, and its mirror views follow
     * only when that answer is unsure */
    int adaptive;
    float mirror_age_std, mirror_prob;
    unsigned char *mirrored;          /* slots: adaptive, and the mirror views embedded */
    const uint8_t **pass_ptr;         /* batch: the chips of one backbone pass */
    int *pass_chip;                   /* batch: their indices in the batch */
    int want[FM_BACKBONE_OUTPUT_COUNT]; /* outputs computed */
    int dims[FM_BACKBONE_OUTPUT_COUNT];
    size_t feat_off[FM_BACKBONE_OUTPUT_COUNT]; /* of output k, view 0, in a slot */
    size_t feat_stride;               /* floats per face slot */
    fm_face_result *faces;            /* slots */
    fm_face *stage;                   /* max_faces: fm_detect's output */
    unsigned char *embedded;          /* slots: features present */
    float *feat;                      /* slots x feat_stride */
    /* the chip batch */
    int batch, n_chips;
    uint8_t *chips;                   /* batch x in_h x in_w x 3 */
    const uint8_t **chip_ptr;         /* batch */
    int *chip_slot, *chip_view;       /* batch */
    float *bb_out[FM_BACKBONE_OUTPUT_COUNT]; /* batch x dims[k] */
    /* the heads call */
    float *heads_in;                  /* slots x the largest heads dim */
    fm_attrs *attrs;                  /* slots x members */
    /* members 1.. of an ensemble (lists in embed.backbone and heads.model) */
    int n_extra;
    member extra[FM_PIPELINE_MAX_MEMBERS - 1];
    int *heads_slot;                  /* slots */
};

int fm_pipeline_split_list(const char *s, char out[][FM_CONFIG_STRING_MAX], int max)
{
    return fm_model_split_list(s, out, max);
}

static fm_status member_path(const fm_config *c, const char *name, char *buf, size_t size,
                             fm_error *err)
{
    int n = strchr(name, '/') ? snprintf(buf, size, "%s", name)
                              : snprintf(buf, size, "%s/%s", c->models.dir, name);
    if (n < 0 || (size_t)n >= size)
        return fm_error_set(err, FM_ERR_LIMIT, "embed.backbone: path too long");
    return FM_OK;
}

/* Heads file hname must have been trained on the backbone at path (identity) and
 * read as many values as it gives (dim of the output they read). */
static fm_status check_pair(const fm_heads *h, const char *hname, const char *identity,
                            const char *path, int dim, fm_error *err)
{
    if (strcmp(fm_heads_backbone(h), identity) != 0)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: heads trained on backbone '%s', but embed.backbone %s is "
                            "'%s'", hname, fm_heads_backbone(h), path, identity);
    if (fm_heads_input_dim(h) != dim)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s: heads read %d values of '%s', the backbone gives %d", hname,
                            fm_heads_input_dim(h),
                            fm_backbone_output_name(fm_heads_feature(h)), dim);
    return FM_OK;
}

/* Combines the answers of n members: the mean of the probabilities, and the mean and
 * spread of the mixture of the age distributions. */
static void combine(const fm_attrs *a, int n, size_t stride, fm_attrs *out)
{
    double age = 0, m2 = 0, g[FM_HEADS_GENDERS] = {0}, r[FM_HEADS_RACES] = {0};
    for (int i = 0; i < n; i++) {
        const fm_attrs *x = a + (size_t)i * stride;
        age += x->age;
        m2 += (double)x->age_std * x->age_std + (double)x->age * x->age;
        for (int k = 0; k < FM_HEADS_GENDERS; k++)
            g[k] += x->gender_probs[k];
        for (int k = 0; k < FM_HEADS_RACES; k++)
            r[k] += x->race_probs[k];
    }
    age /= n;
    m2 = m2 / n - age * age;
    out->age = (float)age;
    out->age_std = (float)sqrt(m2 > 0 ? m2 : 0);
    out->gender = out->race = 0;
    for (int k = 0; k < FM_HEADS_GENDERS; k++) {
        out->gender_probs[k] = (float)(g[k] / n);
        if (out->gender_probs[k] > out->gender_probs[out->gender])
            out->gender = k;
    }
    for (int k = 0; k < FM_HEADS_RACES; k++) {
        out->race_probs[k] = (float)(r[k] / n);
        if (out->race_probs[k] > out->race_probs[out->race])
            out->race = k;
    }
}

/* The file names of an ensemble's members: embed.backbone's list, and heads.model's
 * (heads file i for backbone i) when the pipeline loads heads. */
typedef struct member_names {
    char backbone[FM_PIPELINE_MAX_MEMBERS][FM_CONFIG_STRING_MAX];
    char heads[FM_PIPELINE_MAX_MEMBERS][FM_CONFIG_STRING_MAX];
} member_names;

/* Opens the detector (models.dir, detect.*, detect.pad), takes the options in effect
 * from it, counts the face slots (max_images x max_faces) and opens the decoder that
 * feeds the detector. */
static fm_status open_detector(fm_pipeline *p, const fm_config *c, fm_error *err)
{
    fm_detect_opts_from_config(&p->dopts, c);
    p->dopts.pad = c->detect.pad;
    fm_status st = fm_detector_open(&p->det, c->models.dir, &p->dopts, err);
    if (st != FM_OK)
        return st;
    p->dopts = *fm_detector_opts(p->det);
    p->max_faces = p->dopts.max_faces;
    if ((int64_t)p->max_images * p->max_faces > 1 << 20)
        return fm_error_set(err, FM_ERR_LIMIT, "pipeline: %d images x %d faces is too many",
                            p->max_images, p->max_faces);
    p->slots = p->max_images * p->max_faces;

    fm_decode_opts dec = {0};
    dec.max_pixels = (uint64_t)c->decode.max_pixels;
    dec.max_bytes = (size_t)c->decode.max_bytes;
    dec.target_side = p->dopts.max_side;
    dec.formats = (unsigned)c->decode.formats;
    return fm_decoder_new(&p->dec, &dec, err);
}

/* Lists the members into names (embed.backbone; heads.model unless the pipeline loads
 * no heads, one heads file per backbone) and opens every member's heads. */
static fm_status open_heads(fm_pipeline *p, const fm_config *c, member_names *names,
                            fm_error *err)
{
    int nb = fm_pipeline_split_list(c->embed.backbone, names->backbone,
                                    FM_PIPELINE_MAX_MEMBERS);
    if (nb < 1)
        return fm_error_set(err, FM_ERR_INVALID,
                            "embed.backbone '%s': one file name, or up to %d separated by "
                            "commas", c->embed.backbone, FM_PIPELINE_MAX_MEMBERS);
    if (p->opts.no_heads || !c->heads.model[0])
        return FM_OK;
    int nh = fm_pipeline_split_list(c->heads.model, names->heads, FM_PIPELINE_MAX_MEMBERS);
    if (nh != nb)
        return fm_error_set(err, FM_ERR_INVALID,
                            "heads.model '%s': one heads file for each of the %d "
                            "backbone(s) in embed.backbone, in the same order",
                            c->heads.model, nb);
    fm_status st = fm_heads_open(&p->heads, names->heads[0], 256, err);
    if (st != FM_OK)
        return st;
    for (int m = 1; m < nh; m++) {
        if ((st = fm_heads_open(&p->extra[m - 1].heads, names->heads[m], 256, err)) != FM_OK)
            return st;
        p->n_extra++;
    }
    return FM_OK;
}

/* Plans the views of a face (embed.tta_zoom, and mirror images for heads.flip or kept
 * features). Returns the chips of one backbone call: embed.batch, but at least the
 * views of one face. */
static int plan_views(fm_pipeline *p, const fm_config *c)
{
    /* the views of a face go into the same backbone call: view z * mirror + m is zoom
     * z (0: as aligned), mirrored when m is 1 */
    p->mirror = p->opts.keep_features || (p->heads && fm_heads_flip(p->heads)) ? 2 : 1;
    for (int m = 0; m < p->n_extra; m++)
        if (fm_heads_flip(p->extra[m].heads))
            p->mirror = 2;
    if (!c->embed.mirror && !p->opts.keep_features) /* embed.mirror false: no mirror view */
        p->mirror = 1;
    int zooms = p->heads && c->embed.tta_zoom > 0 ? 3 : 1;
    p->zoom[0] = 1.0f;
    p->zoom[1] = (float)(1.0 + c->embed.tta_zoom); /* face smaller: more context */
    p->zoom[2] = (float)(1.0 - c->embed.tta_zoom);
    p->views = zooms * p->mirror;
    /* the heads read the mean over every view, but the mirror images only when they
     * were trained so (heads.flip) */
    p->heads_mirror = p->heads && fm_heads_flip(p->heads) && p->mirror == 2 && c->embed.mirror;
    /* an ensemble's members would each want their own say: every view for them */
    p->adaptive = p->heads_mirror && !p->opts.keep_features && p->n_extra == 0 &&
                  c->embed.mirror_age_std > 0;
    p->mirror_age_std = (float)c->embed.mirror_age_std;
    p->mirror_prob = (float)c->embed.mirror_prob;
    return c->embed.batch < p->views ? p->views : (int)c->embed.batch;
}

/* Opens the first member's backbone (its input size, template and output sizes),
 * checks its heads against it, and lays out a face slot: the outputs computed (the
 * heads' one; both for kept features), every view of each. */
static fm_status open_backbone(fm_pipeline *p, const fm_config *c, const member_names *names,
                               int batch, fm_error *err)
{
    char path[FM_CONFIG_STRING_MAX + 64];
    fm_status st;
    if ((st = member_path(c, names->backbone[0], path, sizeof path, err)) != FM_OK ||
        (st = fm_heads_backbone_identity(path, p->identity, sizeof p->identity, err)) !=
            FM_OK ||
        (st = fm_backbone_open(&p->bb, path, batch, err)) != FM_OK)
        return st;
    fm_backbone_input_size(p->bb, &p->in_h, &p->in_w);
    memcpy(p->tmpl, fm_backbone_template(p->bb), sizeof p->tmpl);
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        p->dims[k] = fm_backbone_dim(p->bb, (fm_backbone_output)k);
    if (p->opts.keep_features)
        p->want[FM_BACKBONE_EMBEDDING] = p->want[FM_BACKBONE_POOLED] = 1;
    if (p->heads) {
        fm_backbone_output f = fm_heads_feature(p->heads);
        if ((st = check_pair(p->heads, names->heads[0], p->identity, path, p->dims[f],
                             err)) != FM_OK)
            return st;
        p->want[f] = 1;
    }
    p->feat_stride = 0;
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++) {
        p->feat_off[k] = p->feat_stride;
        if (p->want[k])
            p->feat_stride += (size_t)p->views * (size_t)p->dims[k];
    }
    return FM_OK;
}

/* Opens the backbone of member m + 1 (extra[m]) and its output buffer: it must give
 * what its heads read and take the same aligned face as the first backbone; its
 * heads' output goes after the others' in a face slot. */
static fm_status open_member_backbone(fm_pipeline *p, const fm_config *c,
                                      const member_names *names, int m, int batch,
                                      fm_error *err)
{
    member *e = &p->extra[m];
    char path[FM_CONFIG_STRING_MAX + 64];
    char id[1024];
    int h = 0, w = 0;
    fm_status st;
    if ((st = member_path(c, names->backbone[m + 1], path, sizeof path, err)) != FM_OK ||
        (st = fm_heads_backbone_identity(path, id, sizeof id, err)) != FM_OK ||
        (st = fm_backbone_open(&e->bb, path, batch, err)) != FM_OK)
        return st;
    e->hf = fm_heads_feature(e->heads);
    e->hd = fm_backbone_dim(e->bb, e->hf);
    if ((st = check_pair(e->heads, names->heads[m + 1], id, path, e->hd, err)) != FM_OK)
        return st;
    fm_backbone_input_size(e->bb, &h, &w);
    const float *t = fm_backbone_template(e->bb);
    int same = h == p->in_h && w == p->in_w;
    for (int k = 0; k < 10 && same; k++)
        same = fabsf(t[k] - p->tmpl[k]) < 1e-4f;
    if (!same)
        return fm_error_set(err, FM_ERR_INVALID,
                            "embed.backbone: %s takes another aligned face (input size "
                            "or template) than %s; an ensemble's backbones must share "
                            "them", path, names->backbone[0]);
    e->heads_mirror = fm_heads_flip(e->heads) && p->mirror == 2 && c->embed.mirror;
    e->off = p->feat_stride;
    p->feat_stride += (size_t)p->views * (size_t)e->hd;
    if (!(e->out = malloc((size_t)batch * (size_t)e->hd * sizeof(float))))
        return fm_error_set(err, FM_ERR_NOMEM, "pipeline: out of memory");
    return FM_OK;
}

/* Opens the members of the ensemble: every heads file and, when faces are embedded at
 * all (heads, or kept features), the backbones, with the views of a face planned. */
static fm_status open_members(fm_pipeline *p, const fm_config *c, fm_error *err)
{
    member_names names;
    fm_status st = open_heads(p, c, &names, err);
    if (st != FM_OK)
        return st;
    p->embed = p->heads || p->opts.keep_features;
    if (!p->embed)
        return FM_OK;
    int batch = plan_views(p, c);
    if ((st = open_backbone(p, c, &names, batch, err)) != FM_OK)
        return st;
    for (int m = 0; m < p->n_extra; m++)
        if ((st = open_member_backbone(p, c, &names, m, batch, err)) != FM_OK)
            return st;
    return FM_OK;
}

/* Sizes the buffers for max_images images of max_faces faces: the face results and
 * fm_detect's output; when faces are embedded, the chip batch, the backbone's
 * outputs, the features of every face slot and the heads' inputs and answers. */
static fm_status size_buffers(fm_pipeline *p, fm_error *err)
{
    p->faces = calloc((size_t)p->slots, sizeof *p->faces);
    p->stage = calloc((size_t)p->max_faces, sizeof *p->stage);
    if (!p->faces || !p->stage)
        return fm_error_set(err, FM_ERR_NOMEM, "pipeline: out of memory");
    if (!p->embed)
        return FM_OK;
    int max_hd = p->heads ? fm_heads_input_dim(p->heads) : 0;
    for (int m = 0; m < p->n_extra; m++)
        if (p->extra[m].hd > max_hd)
            max_hd = p->extra[m].hd;
    p->batch = fm_backbone_max_batch(p->bb);
    size_t chip = (size_t)p->in_h * (size_t)p->in_w * 3;
    p->embedded = calloc((size_t)p->slots, 1);
    p->feat = malloc((size_t)p->slots * p->feat_stride * sizeof *p->feat);
    p->chips = malloc((size_t)p->batch * chip);
    p->chip_ptr = calloc((size_t)p->batch, sizeof *p->chip_ptr);
    p->chip_slot = calloc((size_t)p->batch, sizeof *p->chip_slot);
    p->chip_view = calloc((size_t)p->batch, sizeof *p->chip_view);
    p->mirrored = calloc((size_t)p->slots, 1);
    p->pass_ptr = calloc((size_t)p->batch, sizeof *p->pass_ptr);
    p->pass_chip = calloc((size_t)p->batch, sizeof *p->pass_chip);
    int ok = p->embedded && p->feat && p->chips && p->chip_ptr && p->chip_slot &&
             p->chip_view && p->mirrored && p->pass_ptr && p->pass_chip;
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        if (p->want[k] && ok)
            ok = (p->bb_out[k] = malloc((size_t)p->batch * (size_t)p->dims[k] *
                                        sizeof(float))) != NULL;
    if (ok && p->heads) {
        p->heads_in = malloc((size_t)p->slots * (size_t)max_hd * sizeof *p->heads_in);
        p->attrs = malloc((size_t)p->slots * (size_t)(1 + p->n_extra) * sizeof *p->attrs);
        p->heads_slot = malloc((size_t)p->slots * sizeof *p->heads_slot);
        ok = p->heads_in && p->attrs && p->heads_slot;
    }
    if (!ok)
        return fm_error_set(err, FM_ERR_NOMEM, "pipeline: out of memory");
    for (int i = 0; i < p->batch; i++)
        p->chip_ptr[i] = p->chips + (size_t)i * chip;
    return FM_OK;
}

/* detect.mode: for aligned chips the landmarks are the backbone's template (its chip
 * pixel centres as shares of the chip), for cropped faces the measured UTKFace ones. */
static fm_status plan_mode(fm_pipeline *p, const fm_config *c, fm_error *err)
{
    p->mode = c->detect.mode;
    if (p->mode == FM_DETECT_CROPPED)
        memcpy(p->fixed, fm_detect_cropped_landmarks, sizeof p->fixed);
    else if (p->mode == FM_DETECT_ALIGNED) {
        if (!p->embed)
            return fm_error_set(err, FM_ERR_INVALID,
                                "detect.mode=aligned places the backbone's template; this "
                                "pipeline has no backbone (heads.model is empty)");
        for (int k = 0; k < 5; k++) {
            p->fixed[2 * k] = (p->tmpl[2 * k] + 0.5f) / (float)p->in_w;
            p->fixed[2 * k + 1] = (p->tmpl[2 * k + 1] + 0.5f) / (float)p->in_h;
        }
    } else if (p->mode != FM_DETECT_MTCNN)
        return fm_error_set(err, FM_ERR_INVALID, "detect.mode %d unknown", p->mode);
    if (c->detect.fallback != FM_FALLBACK_NONE && c->detect.fallback != FM_FALLBACK_CROPPED)
        return fm_error_set(err, FM_ERR_INVALID, "detect.fallback %d unknown",
                            c->detect.fallback);
    p->fallback = p->mode == FM_DETECT_MTCNN && c->detect.fallback == FM_FALLBACK_CROPPED;
    if (p->fallback)
        memcpy(p->fixed, fm_detect_cropped_landmarks, sizeof p->fixed);
    return FM_OK;
}

static fm_status pipeline_open(fm_pipeline **out, const fm_config *c,
                               const fm_pipeline_opts *opts, fm_error *err)
{
    fm_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return fm_error_set(err, FM_ERR_NOMEM, "pipeline: out of memory");
    if (opts)
        p->opts = *opts;
    fm_status st = FM_OK;
    if (p->opts.max_images < 0 || p->opts.max_images > 65536) {
        st = fm_error_set(err, FM_ERR_INVALID, "pipeline: max_images %d outside 0..65536",
                          p->opts.max_images);
        goto fail;
    }
    p->max_images = p->opts.max_images ? p->opts.max_images : DEFAULT_MAX_IMAGES;
    if ((st = open_detector(p, c, err)) != FM_OK || (st = open_members(p, c, err)) != FM_OK ||
        (st = size_buffers(p, err)) != FM_OK || (st = plan_mode(p, c, err)) != FM_OK)
        goto fail;
    *out = p;
    return FM_OK;

fail:
    fm_pipeline_close(&p);
    return st;
}

/* The model settings resolved through the search path (include/facemill/modelpath.h)
 * on a copy of the configuration: only the files this pipeline opens must exist. */
fm_status fm_pipeline_open(fm_pipeline **out, const fm_config *c,
                           const fm_pipeline_opts *opts, fm_error *err)
{
    if (!out || !c)
        return fm_error_set(err, FM_ERR_INVALID, "fm_pipeline_open: NULL argument");
    *out = NULL;
    fm_config *rc = malloc(sizeof *rc);
    if (!rc)
        return fm_error_set(err, FM_ERR_NOMEM, "pipeline: out of memory");
    *rc = *c;
    int heads = !(opts && opts->no_heads) && c->heads.model[0];
    unsigned which = FM_RESOLVE_DETECTOR;
    if (heads)
        which |= FM_RESOLVE_HEADS | FM_RESOLVE_BACKBONE;
    if (opts && opts->keep_features)
        which |= FM_RESOLVE_BACKBONE;
    fm_status st = fm_config_resolve_models(rc, which, err);
    if (st == FM_OK)
        st = pipeline_open(out, rc, opts, err);
    free(rc);
    return st;
}

void fm_pipeline_close(fm_pipeline **pp)
{
    if (!pp || !*pp)
        return;
    fm_pipeline *p = *pp;
    fm_decoder_destroy(&p->dec);
    fm_detector_close(&p->det);
    fm_backbone_close(&p->bb);
    fm_heads_close(&p->heads);
    for (int m = 0; m < FM_PIPELINE_MAX_MEMBERS - 1; m++) {
        fm_backbone_close(&p->extra[m].bb);
        fm_heads_close(&p->extra[m].heads);
        free(p->extra[m].out);
    }
    free(p->faces);
    free(p->stage);
    free(p->embedded);
    free(p->feat);
    free(p->chips);
    free(p->chip_ptr);
    free(p->chip_slot);
    free(p->chip_view);
    free(p->mirrored);
    free(p->pass_ptr);
    free(p->pass_chip);
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        free(p->bb_out[k]);
    free(p->heads_in);
    free(p->attrs);
    free(p->heads_slot);
    free(p);
    *pp = NULL;
}

const fm_heads *fm_pipeline_heads(const fm_pipeline *p) { return p->heads; }
const fm_backbone *fm_pipeline_backbone(const fm_pipeline *p) { return p->bb; }
const fm_detect_opts *fm_pipeline_detect_opts(const fm_pipeline *p) { return &p->dopts; }
const char *fm_pipeline_backbone_identity(const fm_pipeline *p) { return p->identity; }
int fm_pipeline_max_images(const fm_pipeline *p) { return p->max_images; }

double fm_pipeline_chip_flop(const fm_pipeline *p)
{
    if (!p->embed)
        return 0.0;
    double flop = fm_backbone_flop(p->bb);
    for (int m = 0; m < p->n_extra; m++)
        flop += fm_backbone_flop(p->extra[m].bb);
    return flop;
}

/* The backbone on the n chips of the batch listed in idx (all of them when idx is
 * NULL), their features filed in their faces' slots. */
static fm_status embed_pass(fm_pipeline *p, const int *idx, int n, fm_image_result *out,
                            fm_error *err)
{
    if (n == 0)
        return FM_OK;
    const uint8_t *const *ptrs = p->chip_ptr;
    if (idx) {
        for (int i = 0; i < n; i++)
            p->pass_ptr[i] = p->chip_ptr[idx[i]];
        ptrs = p->pass_ptr;
    }
    float *outs[FM_BACKBONE_OUTPUT_COUNT];
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        outs[k] = p->want[k] ? p->bb_out[k] : NULL;
    double t0 = fm_now_ms();
    fm_status st = fm_backbone_forward(p->bb, ptrs, n, outs, err);
    if (st)
        return st;
    double share = (fm_now_ms() - t0) / n;
    for (int i = 0; i < n; i++) {
        int c = idx ? idx[i] : i;
        int slot = p->chip_slot[c], v = p->chip_view[c];
        float *dst = p->feat + (size_t)slot * p->feat_stride;
        for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
            if (p->want[k])
                memcpy(dst + p->feat_off[k] + (size_t)v * (size_t)p->dims[k],
                       p->bb_out[k] + (size_t)i * (size_t)p->dims[k],
                       (size_t)p->dims[k] * sizeof(float));
        out[slot / p->max_faces].times.embed_ms += share;
        out[slot / p->max_faces].chips++;
    }
    for (int m = 0; m < p->n_extra; m++) {
        member *e = &p->extra[m];
        float *eo[FM_BACKBONE_OUTPUT_COUNT] = {0};
        eo[e->hf] = e->out;
        t0 = fm_now_ms();
        if ((st = fm_backbone_forward(e->bb, ptrs, n, eo, err)) != FM_OK)
            return st;
        share = (fm_now_ms() - t0) / n;
        for (int i = 0; i < n; i++) {
            int c = idx ? idx[i] : i;
            int slot = p->chip_slot[c], v = p->chip_view[c];
            memcpy(p->feat + (size_t)slot * p->feat_stride + e->off +
                       (size_t)v * (size_t)e->hd,
                   e->out + (size_t)i * (size_t)e->hd, (size_t)e->hd * sizeof(float));
            out[slot / p->max_faces].times.embed_ms += share;
        }
    }
    return FM_OK;
}

/* The heads' input of a face: the mean of its features over the views they read
 * (every step-th view from the first). */
static void heads_mean(const fm_pipeline *p, int slot, size_t off, int hd, int step,
                       float *dst)
{
    const float *a = p->feat + (size_t)slot * p->feat_stride + off;
    int used = p->views / step;
    for (int d = 0; d < hd; d++) {
        float sum = 0;
        for (int v = 0; v < p->views; v += step)
            sum += a[(size_t)v * (size_t)hd + (size_t)d];
        dst[d] = sum / (float)used;
    }
}

/* 1 when the answer from a face's own views is unsure enough to want its mirror
 * views (embed.mirror_age_std, embed.mirror_prob). */
static int wants_mirror(const fm_pipeline *p, const fm_attrs *a)
{
    if (!(a->age_std < p->mirror_age_std))
        return 1;
    float g = 0, r = 0;
    for (int k = 0; k < FM_HEADS_GENDERS; k++)
        g = a->gender_probs[k] > g ? a->gender_probs[k] : g;
    for (int k = 0; k < FM_HEADS_RACES; k++)
        r = a->race_probs[k] > r ? a->race_probs[k] : r;
    return !(g > p->mirror_prob) || !(r > p->mirror_prob);
}

/* Runs the chips collected so far through the backbone and files their features.
 * Adaptive: the views that are not mirror images first, the heads on them, then the
 * mirror views of the faces whose answer is unsure (a face's views are always in the
 * same batch). */
static fm_status flush(fm_pipeline *p, fm_image_result *out, fm_error *err)
{
    fm_status st;
    if (p->n_chips == 0)
        return FM_OK;
    if (!p->adaptive) {
        st = embed_pass(p, NULL, p->n_chips, out, err);
        p->n_chips = 0;
        return st;
    }
    int n = 0, nf = 0;
    for (int i = 0; i < p->n_chips; i++)
        if (p->chip_view[i] % 2 == 0)
            p->pass_chip[n++] = i;
    if ((st = embed_pass(p, p->pass_chip, n, out, err)) != FM_OK)
        return st;
    /* the faces of this batch: their first views (view 0) are in chip order */
    const int hd = fm_heads_input_dim(p->heads);
    const size_t off = p->feat_off[fm_heads_feature(p->heads)];
    for (int i = 0; i < p->n_chips; i++)
        if (p->chip_view[i] == 0) {
            heads_mean(p, p->chip_slot[i], off, hd, 2, p->heads_in + (size_t)nf * hd);
            p->heads_slot[nf++] = p->chip_slot[i];
        }
    double t0 = fm_now_ms();
    if ((st = fm_heads_forward(p->heads, p->heads_in, nf, p->attrs, err)) != FM_OK)
        return st;
    double share = (fm_now_ms() - t0) / nf;
    for (int k = 0; k < nf; k++) {
        int slot = p->heads_slot[k];
        p->mirrored[slot] = (unsigned char)wants_mirror(p, &p->attrs[k]);
        out[slot / p->max_faces].times.heads_ms += share;
    }
    n = 0;
    for (int i = 0; i < p->n_chips; i++)
        if (p->chip_view[i] % 2 == 1 && p->mirrored[p->chip_slot[i]])
            p->pass_chip[n++] = i;
    st = embed_pass(p, p->pass_chip, n, out, err);
    p->n_chips = 0;
    return st;
}

/* A = inv o J, J scaling chip coordinates by s about the chip's centre: s > 1 samples
 * a larger region (the face smaller, more context), as the trainer's jitter does. */
static void zoomed(const float inv[6], double s, int w, int h, float A[6])
{
    double cx = (w - 1) / 2.0, cy = (h - 1) / 2.0;
    double tx = cx - s * cx, ty = cy - s * cy;
    A[0] = (float)(inv[0] * s);
    A[1] = (float)(inv[1] * s);
    A[2] = (float)(inv[0] * tx + inv[1] * ty + inv[2]);
    A[3] = (float)(inv[3] * s);
    A[4] = (float)(inv[4] * s);
    A[5] = (float)(inv[3] * tx + inv[4] * ty + inv[5]);
}

/* Cuts the views of face f (each zoom, and its mirror image when mirror is 2) out of
 * img into the batch. Returns 0, or -1 when the landmarks admit no alignment. */
static int align_face(fm_pipeline *p, const fm_image *img, const fm_face *f, int slot)
{
    double num = img->scale_num > 0 ? img->scale_num : 1;
    double den = img->scale_denom > 0 ? img->scale_denom : 1;
    float lm[10], mir[10], M[6], inv[6];
    for (int k = 0; k < 10; k++) /* original -> decoded pixel coordinates */
        lm[k] = (float)(((double)f->landmarks[k] + 0.5) * num / den - 0.5);
    fm_warp_opts wo = {FM_BORDER_REPLICATE, 0};
    if (fm_align_similarity(lm, p->tmpl, 5, M, NULL) != FM_OK ||
        fm_align_invert(M, inv, NULL) != FM_OK)
        return -1;
    /* mirror: reflect x about the image's vertical centre line, swap left and right */
    static const int swap[5] = {1, 0, 2, 4, 3};
    float minv[6];
    if (p->mirror == 2) {
        float R = (float)(img->w - 1);
        for (int k = 0; k < 5; k++) {
            mir[2 * k] = R - lm[2 * swap[k]];
            mir[2 * k + 1] = lm[2 * swap[k] + 1];
        }
        float Mm[6], im[6];
        if (fm_align_similarity(mir, p->tmpl, 5, Mm, NULL) != FM_OK ||
            fm_align_invert(Mm, im, NULL) != FM_OK)
            return -1;
        /* chip -> mirrored image (im) -> original image (x' = R - x) */
        minv[0] = -im[0];
        minv[1] = -im[1];
        minv[2] = R - im[2];
        minv[3] = im[3];
        minv[4] = im[4];
        minv[5] = im[5];
    }
    for (int v = 0; v < p->views; v++) {
        int i = p->n_chips++;
        float A[6];
        const float *base = v % p->mirror ? minv : inv;
        if (v < p->mirror)
            memcpy(A, base, sizeof A);
        else
            zoomed(base, p->zoom[v / p->mirror], p->in_w, p->in_h, A);
        fm_align_warp(img->data, img->w, img->h, img->stride, 3, A,
                      (uint8_t *)p->chip_ptr[i], p->in_w, p->in_h, &wo);
        p->chip_slot[i] = slot;
        p->chip_view[i] = v;
    }
    return 0;
}

fm_status fm_pipeline_run(fm_pipeline *p, const fm_pipeline_input *in, int n,
                          fm_image_result *out, fm_error *err)
{
    if (!p || !in || !out || n < 1 || n > p->max_images)
        return fm_error_set(err, FM_ERR_INVALID,
                            "fm_pipeline_run: %d images, this pipeline takes 1..%d", n,
                            p ? p->max_images : 0);
    fm_status st;
    p->n_chips = 0;
    if (p->embedded)
        memset(p->embedded, 0, (size_t)p->slots);
    if (p->mirrored)
        memset(p->mirrored, 0, (size_t)p->slots);
    for (int i = 0; i < n; i++) {
        fm_image_result *r = &out[i];
        memset(r, 0, sizeof *r);
        r->faces = p->faces + (size_t)i * (size_t)p->max_faces;
        fm_image img;
        double t0 = fm_now_ms();
        st = in[i].path ? fm_decode_file(p->dec, in[i].path, &img, &r->error)
                        : fm_decode(p->dec, in[i].data, in[i].size, &img, &r->error);
        double t1 = fm_now_ms();
        if (!st && in[i].edit) {
            fm_image edited;
            if ((st = in[i].edit(in[i].edit_arg, &img, &edited, &r->error)) == FM_OK)
                img = edited;
            t1 = fm_now_ms();
        }
        r->times.decode_ms = t1 - t0;
        if (st)
            continue;
        r->width = img.orig_w;
        r->height = img.orig_h;
        r->scale_num = img.scale_num;
        r->scale_denom = img.scale_denom;
        int nf = 0;
        if (p->mode == FM_DETECT_MTCNN) {
            st = fm_detect(p->det, &img, p->stage, p->max_faces, &nf, &r->detect, &r->error);
            if (!st && nf == 0 && p->fallback) { /* a chip the detector missed */
                fm_detect_fixed(&img, p->fixed, &p->stage[0]);
                p->stage[0].score = 0;
                nf = 1;
            }
        } else { /* one face where the mode says it is */
            fm_detect_fixed(&img, p->fixed, &p->stage[0]);
            nf = 1;
        }
        double t2 = fm_now_ms();
        r->times.detect_ms = t2 - t1;
        if (st)
            continue;
        r->n_faces = nf;
        for (int j = 0; j < nf; j++) {
            fm_face_result *fr = &r->faces[j];
            memset(fr, 0, sizeof *fr);
            fr->det = p->stage[j];
            if (!p->embed)
                continue;
            int slot = i * p->max_faces + j;
            if (p->n_chips + p->views > p->batch) {
                double ta = fm_now_ms();
                if ((st = flush(p, out, err)) != FM_OK)
                    return st;
                t2 += fm_now_ms() - ta; /* not alignment time */
            }
            if (align_face(p, &img, &fr->det, slot) == 0)
                p->embedded[slot] = 1;
        }
        r->times.align_ms = fm_now_ms() - t2;
    }
    if ((st = flush(p, out, err)) != FM_OK)
        return st;
    if (!p->embed)
        return FM_OK;

    /* features into the results; heads over every embedded face at once */
    int nh = 0;
    for (int i = 0; i < n; i++) {
        fm_image_result *r = &out[i];
        for (int j = 0; j < r->n_faces; j++) {
            int slot = i * p->max_faces + j;
            if (!p->embedded[slot])
                continue;
            const float *f = p->feat + (size_t)slot * p->feat_stride;
            if (p->opts.keep_features)
                for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
                    for (int v = 0; v < 2; v++)
                        r->faces[j].features[k][v] =
                            f + p->feat_off[k] + (size_t)v * (size_t)p->dims[k];
            if (p->heads)
                p->heads_slot[nh++] = slot;
        }
    }
    if (nh == 0)
        return FM_OK;
    double t0 = fm_now_ms();
    for (int m = 0; m <= p->n_extra; m++) {
        const member *e = m ? &p->extra[m - 1] : NULL;
        fm_heads *h = e ? e->heads : p->heads;
        int hd = fm_heads_input_dim(h);
        size_t off = e ? e->off : p->feat_off[fm_heads_feature(h)];
        int step = (e ? e->heads_mirror : p->heads_mirror) ? 1 : p->mirror;
        for (int k = 0; k < nh; k++) { /* the mean over the views the heads read */
            int slot = p->heads_slot[k];
            heads_mean(p, slot, off, hd, p->adaptive && !p->mirrored[slot] ? 2 : step,
                       p->heads_in + (size_t)k * (size_t)hd);
        }
        if ((st = fm_heads_forward(h, p->heads_in, nh, p->attrs + (size_t)m * (size_t)nh,
                                   err)) != FM_OK)
            return st;
    }
    double share = (fm_now_ms() - t0) / nh;
    for (int k = 0; k < nh; k++) {
        int slot = p->heads_slot[k];
        fm_face_result *fr = &p->faces[slot];
        if (p->n_extra == 0)
            fr->attrs = p->attrs[k];
        else
            combine(p->attrs + k, 1 + p->n_extra, (size_t)nh, &fr->attrs);
        fr->has_attrs = 1;
        out[slot / p->max_faces].times.heads_ms += share;
    }
    return FM_OK;
}

int fm_image_result_attributed(const fm_image_result *r)
{
    for (int i = 0; i < r->n_faces; i++)
        if (r->faces[i].has_attrs)
            return 1;
    return 0;
}
