/* finetune_data.c - the steps of `facemill train` around the fine-tuner
 * (include/facemill/finetune.h): the landmarks of every training image from the
 * production detector, in several processes writing into one shared mapping, or from
 * a cache file; the photos with a face decoded into memory; the two files written
 * with their lineage.
 */
#include "facemill/finetune.h"
#include "train-impl.h"

#include "facemill/clock.h"
#include "facemill/detect.h"
#include "facemill/heads.h"
#include "facemill/image.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/result_json.h"
#include "facemill/sha256.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const fm_rows_cache landmark_cache = {"landmark cache", "landmark_cache",
                                             "landmarks.key", "landmarks.paths",
                                             "landmarks", FM_MODEL_VERIFY_DATA};

/* ---- landmarks ------------------------------------------------------------------- */

/* Everything about how the faces were found: the cache is valid only for the same. */
static void faces_key(char *buf, size_t size, const fm_config *c)
{
    fm_detect_opts d;
    fm_detect_opts_from_config(&d, c);
    int n = snprintf(buf, size,
                     "facemill-landmarks 1|models %s|min_face %.17g|max_side %d|scale %.17g|"
                     "th %.17g %.17g %.17g|pad %.17g|max_pixels %lld",
                     c->models.dir, d.min_face, d.max_side, d.scale_factor, d.pnet_threshold,
                     d.rnet_threshold, d.onet_threshold, d.pad,
                     (long long)c->decode.max_pixels);
    /* appended only when on, so caches made before the second look still load */
    if (n > 0 && (size_t)n < size && d.retry)
        n += snprintf(buf + n, size - (size_t)n, "|retry %.17g %.17g %.17g",
                      d.retry_pnet_threshold, d.retry_rnet_threshold, d.retry_onet_threshold);
    /* appended only when on, as the second look */
    if (n > 0 && (size_t)n < size && d.min_face_frac > 0)
        snprintf(buf + n, size - (size_t)n, "|min_face_frac %.17g", d.min_face_frac);
}

typedef struct detect_ctx {
    const fm_config *c;
    char *const *paths;
    fm_image_rows *rows;
} detect_ctx;

/* Finds the face of image i into its row. */
static void find_one(fm_detector *d, fm_decoder *dec, const char *path, fm_image_rows *r,
                     int i)
{
    fm_error err = {0};
    fm_image img;
    fm_face faces[4];
    int nf = 0;
    if (fm_decode_file(dec, path, &img, &err) != FM_OK) {
        fm_log_warn("%s", fm_error_text(&err));
        r->found[i] = -1;
    } else if (fm_detect(d, &img, faces, 4, &nf, NULL, &err) != FM_OK) {
        fm_log_warn("%s: %s", path, fm_error_text(&err));
        r->found[i] = -1;
    } else {
        r->found[i] = nf > 0;
        if (nf > 0)
            memcpy(r->x + (size_t)i * 10, faces[0].landmarks, 10 * sizeof(float));
    }
}

/* One process: the images i with i % jobs == job. 0 or 1. */
static int detect_part(void *ctx, int job, int jobs)
{
    detect_ctx *x = ctx;
    fm_error err = {0};
    fm_detector *d = NULL;
    fm_decoder *dec = NULL;
    fm_detect_opts o;
    fm_detect_opts_from_config(&o, x->c);
    fm_decode_opts dopt = {(uint64_t)x->c->decode.max_pixels,
                           (size_t)x->c->decode.max_bytes, o.max_side,
                           (unsigned)x->c->decode.formats};
    if (fm_nn_set_threads(1, &err) || fm_detector_open(&d, x->c->models.dir, &o, &err) ||
        fm_decoder_new(&dec, &dopt, &err)) {
        fm_log_error("detection %d: %s", job, fm_error_text(&err));
        fm_detector_close(&d);
        return 1;
    }
    fm_part_progress pr;
    fm_part_progress_start(&pr, "finding faces", job, jobs,
                           (x->rows->n - job + jobs - 1) / jobs);
    for (int i = job; i < x->rows->n; i += jobs) {
        find_one(d, dec, x->paths[i], x->rows, i);
        fm_part_progress_step(&pr, 1);
    }
    fm_decoder_destroy(&dec);
    fm_detector_close(&d);
    return 0;
}

fm_status fm_ft_faces_find(fm_ft_faces *f, const fm_config *c, const fm_trainset *s,
                           const char *cache, int jobs, fm_error *err)
{
    memset(f, 0, sizeof *f);
    if (c->detect.mode != FM_DETECT_MTCNN)
        return fm_error_set(err, FM_ERR_INVALID,
                            "fine-tuning finds its faces with the detector: detect.mode must "
                            "be mtcnn");
    faces_key(f->key, sizeof f->key, c);
    fm_status st = fm_image_rows_alloc(&f->rows, s->n, 10, err);
    if (st != FM_OK)
        return st;
    if (cache && fm_rows_cache_load(&landmark_cache, cache, f->key, s->paths, &f->rows)) {
        fm_log_info("landmarks of %d images loaded from %s", s->n, cache);
        return FM_OK;
    }
    double t0 = fm_now_ms();
    fm_log_info("finding the faces of %d images with %d process(es)", s->n, jobs);
    detect_ctx x = {c, s->paths, &f->rows};
    if (fm_train_fork_parts(jobs, detect_part, &x) != 0)
        return fm_error_set(err, FM_ERR_INTERNAL, "face detection failed");
    if (cache &&
        (st = fm_rows_cache_save(&landmark_cache, cache, f->key, s->paths, &f->rows, err)))
        return st;
    fm_log_info("detection took %.1f s", (fm_now_ms() - t0) / 1000);
    return FM_OK;
}

void fm_ft_faces_free(fm_ft_faces *f)
{
    fm_image_rows_free(&f->rows);
    memset(f, 0, sizeof *f);
}

/* ---- the photos ------------------------------------------------------------------ */

/* Copies the decoded pixels of image i of s into *d with its landmarks, moved from
 * original to decoded pixel coordinates (1:1 unless the decoder scaled). */
static fm_status keep_photo(fm_ft_image *d, const fm_image *im, const fm_trainset *s,
                            const fm_ft_faces *f, int i, fm_error *err)
{
    uint8_t *px = malloc((size_t)im->w * im->h * 3);
    if (!px)
        return fm_error_set(err, FM_ERR_NOMEM, "training photos: out of memory");
    for (int y = 0; y < im->h; y++)
        memcpy(px + (size_t)y * im->w * 3, im->data + (size_t)y * im->stride,
               (size_t)im->w * 3);
    d->rgb = px;
    d->w = im->w;
    d->h = im->h;
    d->stride = (size_t)im->w * 3;
    double sc = im->scale_num > 0 ? (double)im->scale_num / im->scale_denom : 1;
    for (int k = 0; k < 10; k++)
        d->landmarks[k] = (float)((f->rows.x[(size_t)i * 10 + k] + 0.5) * sc - 0.5);
    d->label = s->labels[i];
    d->source = i;
    d->soft = NULL;
    return FM_OK;
}

/* Decodes the images of s with a face whose held_out is pass into d->images from
 * d->train.n + d->val.n on, counting them in the pass's set. */
static fm_status load_pass(fm_ft_data *d, fm_decoder *dec, const fm_trainset *s,
                           const fm_ft_faces *f, int pass, fm_error *err)
{
    fm_ft_set *set = pass ? &d->val : &d->train;
    set->images = d->images + d->train.n;
    for (int i = 0; i < s->n; i++) {
        if (s->held_out[i] != pass)
            continue;
        if (f->rows.found[i] != 1) {
            d->no_face++;
            continue;
        }
        fm_image im;
        fm_error e = {0};
        if (fm_decode_file(dec, s->paths[i], &im, &e) != FM_OK) {
            fm_log_warn("%s", fm_error_text(&e));
            continue;
        }
        fm_status st = keep_photo(&d->images[d->train.n + d->val.n], &im, s, f, i, err);
        if (st != FM_OK)
            return st;
        set->n++;
    }
    return FM_OK;
}

/* The checkpoint's name for the data: other images, split or detector settings are
 * other data. */
static void data_id(fm_ft_data *d, const fm_trainset *s, const fm_ft_faces *f)
{
    fm_sha256 h;
    uint8_t dg[FM_SHA256_BYTES];
    char hex[65];
    fm_sha256_init(&h);
    for (int i = 0; i < s->n; i++)
        fm_sha256_update(&h, s->paths[i], strlen(s->paths[i]) + 1);
    fm_sha256_update(&h, &s->holdout, sizeof s->holdout);
    fm_sha256_update(&h, f->key, strlen(f->key) + 1);
    fm_sha256_final(&h, dg);
    fm_sha256_hex(dg, hex);
    snprintf(d->id, sizeof d->id, "%d/%d faces, names %.16s", d->train.n, d->val.n, hex);
}

fm_status fm_ft_data_load(fm_ft_data *d, const fm_config *c, const fm_trainset *s,
                          const fm_ft_faces *f, fm_error *err)
{
    memset(d, 0, sizeof *d);
    fm_decoder *dec = NULL;
    fm_decode_opts dopt = {(uint64_t)c->decode.max_pixels, (size_t)c->decode.max_bytes, 0,
                           (unsigned)c->decode.formats};
    fm_status st;
    if (!(d->images = calloc((size_t)s->n + 1, sizeof *d->images)))
        return fm_error_set(err, FM_ERR_NOMEM, "training photos: out of memory");
    if ((st = fm_decoder_new(&dec, &dopt, err)) == FM_OK &&
        (st = load_pass(d, dec, s, f, 0, err)) == FM_OK)
        st = load_pass(d, dec, s, f, 1, err);
    fm_decoder_destroy(&dec);
    if (st == FM_OK)
        data_id(d, s, f);
    return st;
}

void fm_ft_data_free(fm_ft_data *d)
{
    if (d->images)
        for (int i = 0; i < d->train.n + d->val.n; i++)
            free((void *)d->images[i].rgb);
    free(d->images);
    memset(d, 0, sizeof *d);
}

/* ---- the files ------------------------------------------------------------------- */

/* What both files record: the date and the data. */
typedef struct shared_lineage {
    char date[32], data[2048];
    double figs[5]; /* the kept epoch's val loss, age MAE and RMSE, gender, race */
} shared_lineage;

/* The base's metadata (its lineage one level down), a new name and identity, the
 * lineage and the kept weights. */
static fm_status save_backbone(const fm_finetune *ft, const fm_ft_progress *best,
                               const fm_ft_lineage *lin, const shared_lineage *sh,
                               const char *path, fm_error *err)
{
    static const char *const skip[] = {"general.name", "general.source",
                                       "general.source_integrity", "align.template", NULL};
    char base_id[1024], base_sha[65], hex[65], integrity[80];
    double tmpl[10];
    fm_status st;
    /* the identity heads files check: a digest of the trained weights */
    if ((st = fm_heads_backbone_identity(lin->base_path, base_id, sizeof base_id, err)) ||
        (st = fm_sha256_file(lin->base_path, base_sha, err)) ||
        (st = fm_finetune_weights_digest(ft, hex, err)))
        return st;
    snprintf(integrity, sizeof integrity, "sha256:%s", hex);
    for (int i = 0; i < 10; i++)
        tmpl[i] = fm_finetune_template(ft)[i];
    fm_model_writer *w = fm_model_writer_new();
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
    if ((st = fm_model_writer_add_str(w, "general.name",
                                      "dlib ResNet fine-tuned for age, gender and ethnicity",
                                      err)) ||
        (st = fm_model_writer_add_str(w, "general.source", "trained:facemill", err)) ||
        (st = fm_finetune_copy_meta(lin->base, skip, w, err)) ||
        (st = fm_model_writer_add_f64_array(w, "align.template", tmpl, 10, err)) ||
        (st = fm_model_writer_add_str(w, "general.base", base_id, err)) ||
        (st = fm_model_writer_add_str(w, "general.base_sha256", base_sha, err)) ||
        (st = fm_model_writer_add_str(w, "train.commit", lin->commit, err)) ||
        (st = fm_model_writer_add_str(w, "train.command", lin->command, err)) ||
        (st = fm_model_writer_add_str(w, "train.data", sh->data, err)) ||
        (st = fm_model_writer_add_str(w, "train.licence", FM_TRAIN_UTK_LICENCE, err)) ||
        (st = fm_model_writer_add_str(w, "train.date", sh->date, err)) ||
        (st = fm_model_writer_add_str(w, "train.from", fm_ft_block_name(lin->opts->train_from),
                                      err)) ||
        (st = fm_model_writer_add_i64(w, "train.best_epoch", best->best_epoch, err)) ||
        (st = fm_model_writer_add_i64(w, "train.seed", (int64_t)lin->opts->seed, err)) ||
        (st = fm_model_writer_add_f64_array(w, "train.early_stop", sh->figs, 5, err)) ||
        (st = fm_finetune_write_backbone(ft, w, err)) ||
        (st = fm_model_writer_add_str(w, "general.source_integrity", integrity, err))) {
        /* st and err say what failed */
    }
    return fm_train_save_file(&w, st, path, err);
}

/* The kept heads, read with the backbone at backbone_path, and the lineage. */
static fm_status save_heads(const fm_finetune *ft, const fm_ft_progress *best,
                            const fm_ft_lineage *lin, const shared_lineage *sh,
                            const char *backbone_path, const char *path, fm_error *err)
{
    char identity[1024];
    fm_status st = fm_heads_backbone_identity(backbone_path, identity, sizeof identity, err);
    if (st)
        return st;
    fm_model_writer *w = fm_model_writer_new();
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
    if ((st = fm_model_writer_add_str(w, "general.architecture", "heads", err)) ||
        (st = fm_model_writer_add_str(
             w, "general.name", "facemill age/gender/ethnicity heads (fine-tuned backbone)",
             err)) ||
        (st = fm_model_writer_add_str(w, "general.source", "trained:facemill", err)) ||
        (st = fm_finetune_write_heads(ft, w, err)) ||
        (st = fm_model_writer_add_str(w, "heads.backbone", identity, err)) ||
        (st = fm_model_writer_add_str(w, "heads.feature", "pooled", err)) ||
        (st = fm_model_writer_add_i64(w, "heads.flip", 1, err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.gender", fm_result_gender_names,
                                            FM_RESULT_GENDERS, err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.race", fm_result_race_names,
                                            FM_RESULT_RACES, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.command", lin->command, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.data", sh->data, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.licence", FM_TRAIN_UTK_LICENCE, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.date", sh->date, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.commit", lin->commit, err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.seed", (int64_t)lin->opts->seed, err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.best_epoch", best->best_epoch, err)) ||
        (st = fm_model_writer_add_f64_array(w, "heads.train.early_stop", sh->figs, 5, err))) {
        /* st and err say what failed */
    }
    return fm_train_save_file(&w, st, path, err);
}

fm_status fm_finetune_save(const fm_finetune *ft, const fm_ft_progress *best,
                           const fm_ft_data *d, const fm_ft_lineage *lin,
                           const char *backbone_path, const char *heads_path, fm_error *err)
{
    shared_lineage sh = {.figs = {best->val_loss, best->val_age_mae, best->val_age_rmse,
                                  best->val_gender_acc, best->val_race_acc}};
    fm_train_date(sh.date, sizeof sh.date);
    fm_trainset_describe(lin->data, d->train.n, d->val.n, sh.data, sizeof sh.data);
    fm_status st = save_backbone(ft, best, lin, &sh, backbone_path, err);
    return st ? st : save_heads(ft, best, lin, &sh, backbone_path, heads_path, err);
}
