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
#include "facemill/image.h"
#include "facemill/log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MAX_IMAGES 16

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
    int embed;                        /* run the backbone at all */
    int views;                        /* chips per face: 1, or 2 with the mirror */
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
    float *heads_in;                  /* slots x heads dim */
    fm_attrs *attrs;                  /* slots */
    int *heads_slot;                  /* slots */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

fm_status fm_pipeline_backbone_path(const fm_config *c, char *buf, size_t size,
                                    fm_error *err)
{
    int n = strchr(c->embed.backbone, '/')
                ? snprintf(buf, size, "%s", c->embed.backbone)
                : snprintf(buf, size, "%s/%s", c->models.dir, c->embed.backbone);
    if (n < 0 || (size_t)n >= size)
        return fm_error_set(err, FM_ERR_LIMIT, "embed.backbone: path too long");
    return FM_OK;
}

fm_status fm_pipeline_open(fm_pipeline **out, const fm_config *c,
                           const fm_pipeline_opts *opts, fm_error *err)
{
    if (!out || !c)
        return fm_error_set(err, FM_ERR_INVALID, "fm_pipeline_open: NULL argument");
    *out = NULL;
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

    fm_detect_opts_from_config(&p->dopts, c);
    p->dopts.pad = c->detect.pad;
    if ((st = fm_detector_open(&p->det, c->models.dir, &p->dopts, err)) != FM_OK)
        goto fail;
    p->dopts = *fm_detector_opts(p->det);
    p->max_faces = p->dopts.max_faces;
    if ((int64_t)p->max_images * p->max_faces > 1 << 20) {
        st = fm_error_set(err, FM_ERR_LIMIT, "pipeline: %d images x %d faces is too many",
                          p->max_images, p->max_faces);
        goto fail;
    }
    p->slots = p->max_images * p->max_faces;

    fm_decode_opts dec = {0};
    dec.max_pixels = (uint64_t)c->decode.max_pixels;
    dec.max_bytes = (size_t)c->decode.max_bytes;
    dec.target_side = p->dopts.max_side;
    if ((st = fm_decoder_new(&p->dec, &dec, err)) != FM_OK)
        goto fail;

    if (!p->opts.no_heads && c->heads.model[0]) {
        if ((st = fm_heads_open(&p->heads, c->heads.model, 256, err)) != FM_OK)
            goto fail;
    }
    p->embed = p->heads || p->opts.keep_features;
    p->faces = calloc((size_t)p->slots, sizeof *p->faces);
    p->stage = calloc((size_t)p->max_faces, sizeof *p->stage);
    if (!p->faces || !p->stage) {
        st = fm_error_set(err, FM_ERR_NOMEM, "pipeline: out of memory");
        goto fail;
    }
    if (!p->embed) {
        *out = p;
        return FM_OK;
    }

    char path[FM_CONFIG_STRING_MAX + 64];
    /* a face and its mirror image go into the same backbone call */
    int two = p->opts.keep_features || (p->heads && fm_heads_flip(p->heads));
    int batch = c->embed.batch < 2 && two ? 2 : (int)c->embed.batch;
    if ((st = fm_pipeline_backbone_path(c, path, sizeof path, err)) != FM_OK ||
        (st = fm_heads_backbone_identity(path, p->identity, sizeof p->identity, err)) !=
            FM_OK ||
        (st = fm_backbone_open(&p->bb, path, batch, err)) != FM_OK)
        goto fail;
    fm_backbone_input_size(p->bb, &p->in_h, &p->in_w);
    memcpy(p->tmpl, fm_backbone_template(p->bb), sizeof p->tmpl);
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        p->dims[k] = fm_backbone_dim(p->bb, (fm_backbone_output)k);
    p->views = 1;
    if (p->opts.keep_features) {
        p->views = 2;
        p->want[FM_BACKBONE_EMBEDDING] = p->want[FM_BACKBONE_POOLED] = 1;
    }
    if (p->heads) {
        fm_backbone_output f = fm_heads_feature(p->heads);
        if (strcmp(fm_heads_backbone(p->heads), p->identity) != 0) {
            st = fm_error_set(err, FM_ERR_INVALID,
                              "%s: heads trained on backbone '%s', but embed.backbone %s is "
                              "'%s'", c->heads.model, fm_heads_backbone(p->heads), path,
                              p->identity);
            goto fail;
        }
        if (fm_heads_input_dim(p->heads) != p->dims[f]) {
            st = fm_error_set(err, FM_ERR_INVALID,
                              "%s: heads read %d values of '%s', the backbone gives %d",
                              c->heads.model, fm_heads_input_dim(p->heads),
                              fm_backbone_output_name(f), p->dims[f]);
            goto fail;
        }
        p->want[f] = 1;
        if (fm_heads_flip(p->heads))
            p->views = 2;
    }
    p->feat_stride = 0;
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++) {
        p->feat_off[k] = p->feat_stride;
        if (p->want[k])
            p->feat_stride += 2 * (size_t)p->dims[k];
    }
    p->batch = fm_backbone_max_batch(p->bb);
    size_t chip = (size_t)p->in_h * (size_t)p->in_w * 3;
    p->embedded = calloc((size_t)p->slots, 1);
    p->feat = malloc((size_t)p->slots * p->feat_stride * sizeof *p->feat);
    p->chips = malloc((size_t)p->batch * chip);
    p->chip_ptr = calloc((size_t)p->batch, sizeof *p->chip_ptr);
    p->chip_slot = calloc((size_t)p->batch, sizeof *p->chip_slot);
    p->chip_view = calloc((size_t)p->batch, sizeof *p->chip_view);
    int ok = p->embedded && p->feat && p->chips && p->chip_ptr && p->chip_slot &&
             p->chip_view;
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        if (p->want[k] && ok)
            ok = (p->bb_out[k] = malloc((size_t)p->batch * (size_t)p->dims[k] *
                                        sizeof(float))) != NULL;
    if (ok && p->heads) {
        p->heads_in = malloc((size_t)p->slots * (size_t)fm_heads_input_dim(p->heads) *
                             sizeof *p->heads_in);
        p->attrs = malloc((size_t)p->slots * sizeof *p->attrs);
        p->heads_slot = malloc((size_t)p->slots * sizeof *p->heads_slot);
        ok = p->heads_in && p->attrs && p->heads_slot;
    }
    if (!ok) {
        st = fm_error_set(err, FM_ERR_NOMEM, "pipeline: out of memory");
        goto fail;
    }
    for (int i = 0; i < p->batch; i++)
        p->chip_ptr[i] = p->chips + (size_t)i * chip;
    *out = p;
    return FM_OK;

fail:
    fm_pipeline_close(&p);
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
    free(p->faces);
    free(p->stage);
    free(p->embedded);
    free(p->feat);
    free(p->chips);
    free(p->chip_ptr);
    free(p->chip_slot);
    free(p->chip_view);
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

/* Runs the chips collected so far through the backbone and files their features. */
static fm_status flush(fm_pipeline *p, fm_image_result *out, fm_error *err)
{
    if (p->n_chips == 0)
        return FM_OK;
    float *outs[FM_BACKBONE_OUTPUT_COUNT];
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        outs[k] = p->want[k] ? p->bb_out[k] : NULL;
    double t0 = now_ms();
    fm_status st = fm_backbone_forward(p->bb, p->chip_ptr, p->n_chips, outs, err);
    if (st)
        return st;
    double share = (now_ms() - t0) / p->n_chips;
    for (int i = 0; i < p->n_chips; i++) {
        int slot = p->chip_slot[i], v = p->chip_view[i];
        float *dst = p->feat + (size_t)slot * p->feat_stride;
        for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
            if (p->want[k])
                memcpy(dst + p->feat_off[k] + (size_t)v * (size_t)p->dims[k],
                       p->bb_out[k] + (size_t)i * (size_t)p->dims[k],
                       (size_t)p->dims[k] * sizeof(float));
        out[slot / p->max_faces].times.embed_ms += share;
    }
    p->n_chips = 0;
    return FM_OK;
}

/* Cuts the chip of face f (and its mirror image when views is 2) out of img into the
 * batch. Returns 0, or -1 when the landmarks admit no alignment. */
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
    if (p->views == 2) {
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
        fm_align_warp(img->data, img->w, img->h, img->stride, 3, v ? minv : inv,
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
    for (int i = 0; i < n; i++) {
        fm_image_result *r = &out[i];
        memset(r, 0, sizeof *r);
        r->faces = p->faces + (size_t)i * (size_t)p->max_faces;
        fm_image img;
        double t0 = now_ms();
        st = in[i].path ? fm_decode_file(p->dec, in[i].path, &img, &r->error)
                        : fm_decode(p->dec, in[i].data, in[i].size, &img, &r->error);
        double t1 = now_ms();
        r->times.decode_ms = t1 - t0;
        if (st)
            continue;
        r->width = img.orig_w;
        r->height = img.orig_h;
        r->scale_num = img.scale_num;
        r->scale_denom = img.scale_denom;
        int nf = 0;
        st = fm_detect(p->det, &img, p->stage, p->max_faces, &nf, NULL, &r->error);
        double t2 = now_ms();
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
                double ta = now_ms();
                if ((st = flush(p, out, err)) != FM_OK)
                    return st;
                t2 += now_ms() - ta; /* not alignment time */
            }
            if (align_face(p, &img, &fr->det, slot) == 0)
                p->embedded[slot] = 1;
        }
        r->times.align_ms = now_ms() - t2;
    }
    if ((st = flush(p, out, err)) != FM_OK)
        return st;
    if (!p->embed)
        return FM_OK;

    /* features into the results; heads over every embedded face at once */
    int nh = 0, hd = p->heads ? fm_heads_input_dim(p->heads) : 0;
    fm_backbone_output hf = p->heads ? fm_heads_feature(p->heads) : FM_BACKBONE_POOLED;
    int flip = p->heads ? fm_heads_flip(p->heads) : 0;
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
            if (!p->heads)
                continue;
            const float *a = f + p->feat_off[hf], *b = a + hd;
            float *dst = p->heads_in + (size_t)nh * (size_t)hd;
            for (int d = 0; d < hd; d++)
                dst[d] = flip ? 0.5f * (a[d] + b[d]) : a[d];
            p->heads_slot[nh++] = slot;
        }
    }
    if (nh > 0) {
        double t0 = now_ms();
        if ((st = fm_heads_forward(p->heads, p->heads_in, nh, p->attrs, err)) != FM_OK)
            return st;
        double share = (now_ms() - t0) / nh;
        for (int k = 0; k < nh; k++) {
            int slot = p->heads_slot[k];
            fm_face_result *fr = &p->faces[slot];
            fr->attrs = p->attrs[k];
            fr->has_attrs = 1;
            out[slot / p->max_faces].times.heads_ms += share;
        }
    }
    return FM_OK;
}
