/* heads_features.c - the steps of `facemill train --freeze` around the trainer
 * (include/facemill/train.h): the backbone features of every training image from the
 * production pipeline, in several processes writing into one shared mapping, or from
 * a cache file; the sets the trainer reads; the heads file with its lineage.
 *
 * Images without a detected face are left out of training and early stopping (their
 * features would be of no face at all); `facemill eval` counts them as wrong.
 */
#include "facemill/train.h"
#include "train-impl.h"

#include "facemill/clock.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"
#include "facemill/result_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16 /* images per pipeline call */

static const fm_rows_cache feature_cache = {"feature cache", "feature_cache",
                                            "feature_cache.key", "feature_cache.paths",
                                            "features", 0};

/* Everything about how features were made: the cache is valid only for the same. */
static int cache_key(char *buf, size_t size, const fm_pipeline *p, const fm_config *c)
{
    const fm_detect_opts *d = fm_pipeline_detect_opts(p);
    int n = snprintf(buf, size,
                     "facemill-features 1|%s|min_face %.17g|max_side %d|scale %.17g|"
                     "th %.17g %.17g %.17g|max_faces %d|pad %.17g|max_pixels %lld|"
                     "align mirror-refit",
                     fm_pipeline_backbone_identity(p), d->min_face, d->max_side,
                     d->scale_factor, d->pnet_threshold, d->rnet_threshold,
                     d->onet_threshold, d->max_faces, d->pad,
                     (long long)c->decode.max_pixels);
    /* appended only when not mtcnn, so caches made before detect.mode still load */
    if (n > 0 && (size_t)n < size && c->detect.mode != FM_DETECT_MTCNN)
        n += snprintf(buf + n, size - (size_t)n, "|mode %d", c->detect.mode);
    /* the same for the second look and the fallback, appended only when on */
    if (n > 0 && (size_t)n < size && d->retry)
        n += snprintf(buf + n, size - (size_t)n, "|retry %.17g %.17g %.17g",
                      d->retry_pnet_threshold, d->retry_rnet_threshold,
                      d->retry_onet_threshold);
    if (n > 0 && (size_t)n < size && c->detect.mode == FM_DETECT_MTCNN && c->detect.fallback)
        n += snprintf(buf + n, size - (size_t)n, "|fallback %d", c->detect.fallback);
    if (n > 0 && (size_t)n < size && c->detect.mode == FM_DETECT_MTCNN && d->min_face_frac > 0)
        n += snprintf(buf + n, size - (size_t)n, "|min_face_frac %.17g", d->min_face_frac);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

/* Where output (FM_BACKBONE_*) of view (0 face, 1 mirror image) starts in a row. */
static size_t row_off(const fm_heads_features *f, int output, int view)
{
    size_t off = output == FM_BACKBONE_EMBEDDING ? 0 : 2 * (size_t)f->dims[0];
    return off + (size_t)view * (size_t)f->dims[output];
}

/* The key, the dims and the identity of the backbone, from a pipeline opened for
 * them alone. */
static fm_status describe_backbone(fm_heads_features *f, const fm_config *c, fm_error *err)
{
    fm_pipeline *p = NULL;
    fm_pipeline_opts po = {1, 1, 1};
    fm_status st;
    if ((st = fm_nn_set_threads(1, err)) != FM_OK ||
        (st = fm_pipeline_open(&p, c, &po, err)) != FM_OK)
        return st;
    if (cache_key(f->key, sizeof f->key, p, c) != 0)
        st = fm_error_set(err, FM_ERR_INVALID, "settings too long for the cache key");
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        f->dims[k] = fm_backbone_dim(fm_pipeline_backbone(p), (fm_backbone_output)k);
    snprintf(f->backbone, sizeof f->backbone, "%s", fm_pipeline_backbone_identity(p));
    fm_pipeline_close(&p);
    return st;
}

/* Copies the features of result r (its first face) into image i's row. */
static void keep_features(fm_heads_features *f, int i, const char *path,
                          const fm_image_result *r)
{
    float *row = f->rows.x + (size_t)i * (size_t)f->rows.width;
    if (r->error.code != FM_OK) {
        fm_log_warn("%s: %s", path, fm_error_text(&r->error));
        f->rows.found[i] = -1;
        return;
    }
    if (r->n_faces < 1 || !r->faces[0].features[0][0]) {
        f->rows.found[i] = 0;
        return;
    }
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        for (int v = 0; v < 2; v++)
            memcpy(row + row_off(f, k, v), r->faces[0].features[k][v],
                   (size_t)f->dims[k] * sizeof(float));
    f->rows.found[i] = 1;
}

typedef struct extract_ctx {
    const fm_config *c;
    char *const *paths;
    fm_heads_features *f;
} extract_ctx;

/* One process: the pipeline over the chunks c with c % jobs == job. 0 or 1. */
static int extract_part(void *ctx, int job, int jobs)
{
    extract_ctx *x = ctx;
    fm_heads_features *f = x->f;
    const int n_all = f->rows.n;
    fm_error err = {0};
    fm_pipeline *p = NULL;
    fm_pipeline_opts po = {CHUNK, 1, 1};
    fm_pipeline_input in[CHUNK];
    fm_image_result res[CHUNK];
    int rc = 0, mine = 0;
    if (fm_nn_set_threads(1, &err) != FM_OK ||
        fm_pipeline_open(&p, x->c, &po, &err) != FM_OK) {
        fm_log_error("extraction %d: %s", job, fm_error_text(&err));
        return 1;
    }
    for (int c0 = 0; c0 < n_all; c0 += CHUNK)
        if ((c0 / CHUNK) % jobs == job)
            mine += n_all - c0 < CHUNK ? n_all - c0 : CHUNK;
    fm_part_progress pr;
    fm_part_progress_start(&pr, "extracting", job, jobs, mine);
    for (int c0 = 0; c0 < n_all; c0 += CHUNK) {
        if ((c0 / CHUNK) % jobs != job)
            continue;
        int n = n_all - c0 < CHUNK ? n_all - c0 : CHUNK;
        for (int i = 0; i < n; i++) {
            memset(&in[i], 0, sizeof in[i]);
            in[i].path = x->paths[c0 + i];
        }
        if (fm_pipeline_run(p, in, n, res, &err) != FM_OK) {
            fm_log_error("extraction %d: %s", job, fm_error_text(&err));
            rc = 1;
            break;
        }
        for (int i = 0; i < n; i++)
            keep_features(f, c0 + i, x->paths[c0 + i], &res[i]);
        fm_part_progress_step(&pr, n);
    }
    fm_pipeline_close(&p);
    return rc;
}

/* Extracts the features of every image, timed, and writes the cache (when named). */
static fm_status extract(fm_heads_features *f, const fm_config *c, const fm_trainset *s,
                         const char *cache, int jobs, fm_error *err)
{
    extract_ctx x = {c, s->paths, f};
    double t0 = fm_now_ms();
    fm_log_info("extracting features of %d images with %d process(es)", s->n, jobs);
    if (fm_train_fork_parts(jobs, extract_part, &x) != 0)
        return fm_error_set(err, FM_ERR_INTERNAL, "feature extraction failed");
    fm_log_info("extraction took %.1f s", (fm_now_ms() - t0) / 1000);
    if (cache)
        return fm_rows_cache_save(&feature_cache, cache, f->key, s->paths, &f->rows, err);
    return FM_OK;
}

fm_status fm_heads_features_gather(fm_heads_features *f, const fm_config *c,
                                   const fm_trainset *s, const char *cache, int jobs,
                                   fm_error *err)
{
    memset(f, 0, sizeof *f);
    if (strchr(c->embed.backbone, ','))
        return fm_error_set(err, FM_ERR_INVALID,
                            "embed.backbone '%s' is a list; training reads one backbone",
                            c->embed.backbone);
    fm_status st;
    if ((st = describe_backbone(f, c, err)) != FM_OK ||
        (st = fm_image_rows_alloc(&f->rows, s->n, 2 * (f->dims[0] + f->dims[1]), err)) !=
            FM_OK)
        return st;
    if (cache && fm_rows_cache_load(&feature_cache, cache, f->key, s->paths, &f->rows))
        fm_log_info("features of %d images loaded from %s", s->n, cache);
    else if ((st = extract(f, c, s, cache, jobs, err)) != FM_OK)
        return st;
    int no_face = 0, errors = 0;
    for (int i = 0; i < s->n; i++) {
        no_face += f->rows.found[i] == 0;
        errors += f->rows.found[i] < 0;
    }
    fm_log_info("%d images: %d without a face, %d unreadable (left out of training)", s->n,
                no_face, errors);
    return FM_OK;
}

void fm_heads_features_free(fm_heads_features *f)
{
    fm_image_rows_free(&f->rows);
    memset(f, 0, sizeof *f);
}

void fm_train_set_free(fm_train_set *s)
{
    free((void *)s->x);
    free((void *)s->labels);
    memset(s, 0, sizeof *s);
}

fm_status fm_heads_features_sets(const fm_heads_features *f, const fm_trainset *s,
                                 fm_backbone_output feature, int flip, fm_train_set *train,
                                 fm_train_set *val, fm_error *err)
{
    const int D = f->dims[feature], n_all = f->rows.n;
    fm_train_set *sets[2] = {train, val};
    for (int k = 0; k < 2; k++) {
        float *x = malloc((size_t)(n_all ? n_all : 1) * (size_t)D * sizeof *x);
        fm_utk_label *l = malloc((size_t)(n_all ? n_all : 1) * sizeof *l);
        *sets[k] = (fm_train_set){0, D, x, l};
        if (!x || !l)
            return fm_error_set(err, FM_ERR_NOMEM, "training sets: out of memory");
    }
    for (int i = 0; i < n_all; i++) {
        if (f->rows.found[i] != 1)
            continue;
        fm_train_set *t = s->held_out[i] ? val : train;
        float *dst = (float *)t->x + (size_t)t->n * (size_t)D;
        const float *row = f->rows.x + (size_t)i * (size_t)f->rows.width;
        const float *a = row + row_off(f, feature, 0), *b = row + row_off(f, feature, 1);
        for (int d = 0; d < D; d++)
            dst[d] = flip ? 0.5f * (a[d] + b[d]) : a[d];
        ((fm_utk_label *)t->labels)[t->n++] = s->labels[i];
    }
    return FM_OK;
}

/* ---- the heads file ---------------------------------------------------------------- */

/* What heads.h reads besides the weights. */
static fm_status add_heads_keys(fm_model_writer *w, const fm_heads_lineage *lin,
                                fm_error *err)
{
    fm_status st;
    if ((st = fm_model_writer_add_str(w, "heads.backbone", lin->features->backbone, err)) ||
        (st = fm_model_writer_add_str(w, "heads.feature",
                                      fm_backbone_output_name(lin->feature), err)) ||
        (st = fm_model_writer_add_i64(w, "heads.flip", lin->flip ? 1 : 0, err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.gender", fm_result_gender_names,
                                            FM_RESULT_GENDERS, err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.race", fm_result_race_names,
                                            FM_RESULT_RACES, err)))
        return st;
    return FM_OK;
}

/* heads.train.*: where the weights came from and how they were trained. */
static fm_status add_lineage(fm_model_writer *w, const fm_heads_lineage *lin,
                             const fm_train_opts *o, const fm_train_epoch *best, int n_train,
                             int n_val, fm_error *err)
{
    char date[32], data[2048];
    fm_train_date(date, sizeof date);
    fm_trainset_describe(lin->data, n_train, n_val, data, sizeof data);
    int64_t hidden64[FM_HEADS_MAX_LAYERS];
    for (int k = 0; k < o->n_hidden; k++)
        hidden64[k] = o->hidden[k];
    fm_status st;
    if ((st = fm_model_writer_add_str(w, "heads.train.command", lin->command, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.data", data, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.licence", FM_TRAIN_UTK_LICENCE, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.date", date, err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.features", lin->features->key, err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.seed", (int64_t)o->seed, err)) ||
        (st = fm_model_writer_add_i64_array(w, "heads.train.hidden", hidden64,
                                            (size_t)o->n_hidden, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.dropout", o->dropout, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.lr", o->lr, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.weight_decay", o->weight_decay, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.age_sigma", o->age_sigma, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.age_weight", o->age_weight, err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.batch", o->batch, err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.best_epoch", best->epoch, err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.faces", n_train, err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.early_stop_faces", n_val, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_loss", best->val_loss,
                                      err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_age_mae", best->val_age_mae,
                                      err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_age_rmse",
                                      best->val_age_rmse, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_gender_acc",
                                      best->val_gender_acc, err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_race_acc",
                                      best->val_race_acc, err)))
        return st;
    return FM_OK;
}

fm_status fm_heads_train_save(const char *path, const fm_train_set *train,
                              const fm_train_set *val, const fm_train_opts *o,
                              const fm_heads_lineage *lin, fm_train_epoch *best,
                              fm_error *err)
{
    fm_model_writer *w = fm_model_writer_new();
    fm_train_epoch kept;
    fm_status st;
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
    if ((st = fm_model_writer_add_str(w, "general.architecture", "heads", err)) ||
        (st = fm_model_writer_add_str(w, "general.name",
                                      "facemill age/gender/ethnicity heads", err)) ||
        (st = fm_model_writer_add_str(w, "general.source", "trained:facemill", err)) ||
        (st = fm_train_heads(train, val, o, w, &kept, err)))
        return fm_train_save_file(&w, st, path, err);
    fm_log_info("kept epoch %d: val loss %.4f, age MAE %.3f RMSE %.3f, gender %.2f%%, "
                "race %.2f%% (%.1f s)", kept.epoch, kept.val_loss, kept.val_age_mae,
                kept.val_age_rmse, 100 * kept.val_gender_acc, 100 * kept.val_race_acc,
                kept.elapsed_s);
    if (best)
        *best = kept;
    if ((st = add_heads_keys(w, lin, err)) == FM_OK)
        st = add_lineage(w, lin, o, &kept, train->n, val->n, err);
    return fm_train_save_file(&w, st, path, err);
}
