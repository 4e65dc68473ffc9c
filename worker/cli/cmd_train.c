/* cmd_train.c - `facemill train --freeze`: trains the attribute heads on frozen
 * backbone features of a folder of UTKFace-named images.
 *
 * Steps: list and label the images (malformed names are skipped and counted); run
 * the production pipeline (decode, detect, align, backbone) over every image in
 * --jobs processes, keeping the highest-scoring face's features (both backbone
 * outputs, face and mirror image) - or load them from --cache when it was made with
 * the same backbone, settings and image list; split off the early-stopping set
 * (--val DIR, or a fixed share of --train chosen by a hash of the file name); train
 * (worker/train/heads_trainer.c); write the heads file atomically with its lineage.
 *
 * Images without a detected face are left out of training and early stopping
 * (their features would be of no face at all); `facemill eval` counts them as wrong.
 * Feature extraction processes write into one shared anonymous mapping made before
 * fork, so no temporary files are involved.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "cmd_util.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/model.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"
#include "facemill/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 16 /* images per pipeline call */
#define DEFAULT_TRAIN_PAD 0.25

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill train --freeze --train DIR -o OUT.fmm [options]\n"
            "                      [--config FILE] [--set KEY=VALUE]...\n"
            "\n"
            "Trains the age, gender and ethnicity heads on frozen backbone features of the\n"
            "UTKFace-named images (AGE_GENDER_RACE_*.jpg) in DIR, and writes a heads model.\n"
            "Detection, alignment and the backbone are the production pipeline's (detect.*,\n"
            "embed.*, models.dir); detect.pad defaults to 0.25 here (tight face crops).\n"
            "\n"
            "  --freeze           train the heads only, backbone frozen (required)\n"
            "  --train DIR        training images\n"
            "  --val DIR          early-stopping images (default: a fixed share of DIR)\n"
            "  --holdout F        share of --train held out for early stopping when no\n"
            "                     --val is given (default 0.1; chosen by file-name hash)\n"
            "  -o, --output FILE  the heads model to write (atomically)\n"
            "  --cache FILE       feature cache: reused when backbone, settings and image\n"
            "                     list match, written otherwise\n"
            "  --jobs N           feature extraction processes (default 2)\n"
            "  --extract-only     stop after extraction (with --cache)\n"
            "  --feature NAME     backbone output the heads read: pooled (default) or\n"
            "                     embedding\n"
            "  --flip on|off      average features over face and mirror image (default on)\n"
            "  --hidden W[,W...]  shared layer widths (default 512; 0 = none)\n"
            "  --dropout F        dropout on shared layers while training (default 0.5)\n"
            "  --lr F             Adam learning rate (default 0.001)\n"
            "  --wd F             decoupled weight decay (default 0.0001)\n"
            "  --age-sigma F      Gaussian age target spread in years; 0 = one-hot\n"
            "                     (default 2)\n"
            "  --age-weight F     weight of the age loss against gender and ethnicity\n"
            "                     (default 1)\n"
            "  --batch N          mini-batch size (default 128)\n"
            "  --epochs N         most epochs (default 100); --patience N (default 10)\n"
            "  --seed N           random seed (default 1)\n"
            "\n"
            "Progress goes to stderr. Exit code 0 on success, 1 on failure, 2 on a usage\n"
            "error.\n");
}

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
    return n > 0 && (size_t)n < size ? 0 : -1;
}

typedef struct features {
    int n;            /* images */
    int row;          /* floats per image */
    int dims[FM_BACKBONE_OUTPUT_COUNT];
    float *x;         /* n x row: [emb face][emb mirror][pooled face][pooled mirror] */
    float *found;     /* n: 1 face, 0 none, -1 image error */
    size_t map_bytes; /* > 0 when x and found live in one mapping */
} features;

static size_t row_off(const features *f, int output, int view)
{
    size_t off = output == FM_BACKBONE_EMBEDDING ? 0 : 2 * (size_t)f->dims[0];
    return off + (size_t)view * (size_t)f->dims[output];
}

/* Runs the pipeline over the chunks c with c % jobs == job. Returns 0 or 1. */
static int extract_part(const fm_config *c, char **paths, features *f, int job, int jobs)
{
    fm_error err = {0};
    fm_pipeline *p = NULL;
    fm_pipeline_opts po = {CHUNK, 1, 1};
    fm_pipeline_input in[CHUNK];
    fm_image_result res[CHUNK];
    int rc = 0;
    if (fm_nn_set_threads(1, &err) != FM_OK ||
        fm_pipeline_open(&p, c, &po, &err) != FM_OK) {
        fm_log_error("extraction %d: %s", job, fm_error_text(&err));
        return 1;
    }
    double t0 = fm_cmd_now_ms(), last = t0;
    int done = 0, mine = 0;
    for (int c0 = 0; c0 < f->n; c0 += CHUNK)
        if ((c0 / CHUNK) % jobs == job)
            mine += f->n - c0 < CHUNK ? f->n - c0 : CHUNK;
    for (int c0 = 0; c0 < f->n; c0 += CHUNK) {
        if ((c0 / CHUNK) % jobs != job)
            continue;
        int n = f->n - c0 < CHUNK ? f->n - c0 : CHUNK;
        for (int i = 0; i < n; i++) {
            memset(&in[i], 0, sizeof in[i]);
            in[i].path = paths[c0 + i];
        }
        if (fm_pipeline_run(p, in, n, res, &err) != FM_OK) {
            fm_log_error("extraction %d: %s", job, fm_error_text(&err));
            rc = 1;
            break;
        }
        for (int i = 0; i < n; i++) {
            float *row = f->x + (size_t)(c0 + i) * (size_t)f->row;
            const fm_image_result *r = &res[i];
            if (r->error.code != FM_OK) {
                fm_log_warn("%s: %s", paths[c0 + i], fm_error_text(&r->error));
                f->found[c0 + i] = -1;
                continue;
            }
            if (r->n_faces < 1 || !r->faces[0].features[0][0]) {
                f->found[c0 + i] = 0;
                continue;
            }
            for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
                for (int v = 0; v < 2; v++)
                    memcpy(row + row_off(f, k, v), r->faces[0].features[k][v],
                           (size_t)f->dims[k] * sizeof(float));
            f->found[c0 + i] = 1;
        }
        done += n;
        double now = fm_cmd_now_ms();
        if (job == 0 && (now - last > 15000 || done == mine)) {
            double rate = done / ((now - t0) / 1000);
            fm_log_info("extracting: %d/%d images (process 1 of %d), %.1f images/s, "
                        "ETA %.0f s", done, mine, jobs, rate, (mine - done) / rate);
            last = now;
        }
    }
    fm_pipeline_close(&p);
    return rc;
}

typedef struct extract_ctx {
    const fm_config *c;
    char **paths;
    features *f;
} extract_ctx;

static int extract_job(void *ctx, int job, int jobs)
{
    extract_ctx *x = ctx;
    return extract_part(x->c, x->paths, x->f, job, jobs);
}

static fm_status extract(const fm_config *c, char **paths, features *f, int jobs,
                         fm_error *err)
{
    extract_ctx x = {c, paths, f};
    return fm_cmd_fork_parts(jobs, extract_job, &x)
               ? fm_error_set(err, FM_ERR_INTERNAL, "feature extraction failed")
               : FM_OK;
}

static fm_status features_alloc(features *f, int n, int row, fm_error *err)
{
    f->n = n;
    f->row = row;
    size_t xb = (size_t)n * (size_t)row * sizeof(float);
    xb = (xb + 63) & ~(size_t)63;
    f->map_bytes = xb + (size_t)n * sizeof(float);
    void *m = mmap(NULL, f->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED) {
        f->map_bytes = 0;
        return fm_error_set(err, FM_ERR_NOMEM, "feature buffer: %s", strerror(errno));
    }
    f->x = m;
    f->found = (float *)((char *)m + xb);
    return FM_OK;
}

static void features_free(features *f)
{
    if (f->map_bytes)
        munmap(f->x, f->map_bytes);
    memset(f, 0, sizeof *f);
}

/* 1 when the cache at path holds exactly these images made with key. */
static int cache_load(const char *path, const char *key, char **paths, features *f)
{
    fm_model *m = NULL;
    fm_error err = {0};
    int ok = 0;
    if (fm_model_open(&m, path, 0, &err) != FM_OK) {
        fm_log_info("cache %s not used: %s", path, fm_error_text(&err));
        return 0;
    }
    const char *k = NULL;
    const char *const *names = NULL;
    size_t count = 0;
    const float *x = NULL, *found = NULL;
    uint64_t dx[2] = {(uint64_t)f->n, (uint64_t)f->row}, df[1] = {(uint64_t)f->n};
    if (fm_model_meta_str(m, "feature_cache.key", &k, NULL, NULL) != FM_OK ||
        strcmp(k, key) != 0) {
        fm_log_info("cache %s not used: made with other settings or backbone", path);
        goto done;
    }
    if (fm_model_meta_str_array(m, "feature_cache.paths", &names, &count, NULL) != FM_OK ||
        count != (size_t)f->n) {
        fm_log_info("cache %s not used: other images", path);
        goto done;
    }
    for (int i = 0; i < f->n; i++)
        if (strcmp(names[i], paths[i]) != 0) {
            fm_log_info("cache %s not used: other images", path);
            goto done;
        }
    if (fm_model_tensor_expect(m, "features", 2, dx, &x, &err) != FM_OK ||
        fm_model_tensor_expect(m, "found", 1, df, &found, &err) != FM_OK) {
        fm_log_info("cache %s not used: %s", path, fm_error_text(&err));
        goto done;
    }
    memcpy(f->x, x, (size_t)f->n * (size_t)f->row * sizeof(float));
    memcpy(f->found, found, (size_t)f->n * sizeof(float));
    ok = 1;
done:
    fm_model_close(&m);
    return ok;
}

static fm_status cache_save(const char *path, const char *key, char **paths,
                            const features *f, fm_error *err)
{
    fm_model_writer *w = fm_model_writer_new();
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "cache: out of memory");
    uint64_t dx[2] = {(uint64_t)f->n, (uint64_t)f->row}, df[1] = {(uint64_t)f->n};
    fm_status st;
    if ((st = fm_model_writer_add_str(w, "general.architecture", "feature_cache", err)) ||
        (st = fm_model_writer_add_str(w, "feature_cache.key", key, err)) ||
        (st = fm_model_writer_add_str_array(w, "feature_cache.paths",
                                            (const char *const *)paths, (size_t)f->n,
                                            err)) ||
        (st = fm_model_writer_add_tensor(w, "features", 2, dx, f->x, err)) ||
        (st = fm_model_writer_add_tensor(w, "found", 1, df, f->found, err)) ||
        (st = fm_model_writer_save(w, path, err))) {
        /* st and err say what failed */
    }
    fm_model_writer_destroy(&w);
    return st;
}

typedef struct progress_ctx {
    double t0;
} progress_ctx;

static void on_epoch(void *ctx, const fm_train_epoch *e)
{
    (void)ctx;
    double per = e->elapsed_s / e->epoch;
    fm_log_info("epoch %3d/%d  loss %.4f  val loss %.4f  age MAE %.3f RMSE %.3f  "
                "gender %.2f%%  race %.2f%%  lr %.2g  best %d  ETA <= %.0f s",
                e->epoch, e->max_epochs, e->train_loss, e->val_loss, e->val_age_mae,
                e->val_age_rmse, 100 * e->val_gender_acc, 100 * e->val_race_acc, e->lr,
                e->best_epoch, per * (e->max_epochs - e->epoch));
}

static int parse_hidden(const char *s, fm_train_opts *o)
{
    o->n_hidden = 0;
    if (strcmp(s, "0") == 0)
        return 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 65536 || o->n_hidden == FM_HEADS_MAX_LAYERS)
            return -1;
        o->hidden[o->n_hidden++] = (int)v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return o->n_hidden > 0 ? 0 : -1;
}

int fm_cmd_train(int argc, char **argv)
{
    int frozen = 0;
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        frozen |= strcmp(argv[i], "--freeze") == 0;
    if (!frozen)
        return fm_cmd_finetune(argc, argv); /* cmd_finetune.c */
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    /* the command line as given, for the lineage */
    char command[4096] = "facemill";
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(command);
        snprintf(command + l, sizeof command - l, " %s", argv[i]);
    }
    fm_config c;
    fm_error err = {0};
    fm_config_defaults(&c);
    c.detect.pad = DEFAULT_TRAIN_PAD;
    if (fm_config_from_args(&c, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        return 1;
    }
    fm_log_init("train", c.log.level);
    if (strchr(c.embed.backbone, ',')) {
        fprintf(stderr, "facemill train: embed.backbone '%s' is a list; training reads "
                        "one backbone\n", c.embed.backbone);
        return 1;
    }

    const char *train_dir = NULL, *val_dir = NULL, *out_path = NULL, *cache = NULL;
    double holdout = 0.1, jobs = 2, flip = 1, num;
    int freeze = 0, extract_only = 0;
    fm_backbone_output feature = FM_BACKBONE_POOLED;
    fm_train_opts o;
    fm_train_opts_defaults(&o);
    for (int i = 1; i < argc; i++) {
        const char *v = NULL, *a = argv[i];
        int m = 0, bad = 0;
        if (strcmp(a, "--freeze") == 0)
            freeze = 1;
        else if (strcmp(a, "--extract-only") == 0)
            extract_only = 1;
        else if ((m = fm_cmd_take_opt(argc, argv, &i, "--train", &v)) > 0)
            train_dir = v;
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--val", &v)) > 0)
            val_dir = v;
        else if (m == 0 && ((m = fm_cmd_take_opt(argc, argv, &i, "-o", &v)) > 0 ||
                            (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--output",
                                                            &v)) > 0)))
            out_path = v;
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--cache", &v)) > 0)
            cache = v;
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--holdout", &v)) > 0)
            bad = fm_cmd_parse_num(v, 0.001, 0.9, &holdout);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--jobs", &v)) > 0)
            bad = fm_cmd_parse_num(v, 1, 64, &jobs);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--feature", &v)) > 0) {
            int f = fm_backbone_output_parse(v);
            bad = f < 0;
            feature = f < 0 ? feature : (fm_backbone_output)f;
        } else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--flip", &v)) > 0) {
            bad = strcmp(v, "on") != 0 && strcmp(v, "off") != 0;
            flip = strcmp(v, "on") == 0;
        } else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--hidden", &v)) > 0)
            bad = parse_hidden(v, &o);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--dropout", &v)) > 0)
            bad = fm_cmd_parse_num(v, 0, 0.95, &o.dropout);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--lr", &v)) > 0)
            bad = fm_cmd_parse_num(v, 1e-7, 1, &o.lr);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--wd", &v)) > 0)
            bad = fm_cmd_parse_num(v, 0, 1, &o.weight_decay);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--age-sigma", &v)) > 0)
            bad = fm_cmd_parse_num(v, 0, 30, &o.age_sigma);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--age-weight", &v)) > 0)
            bad = fm_cmd_parse_num(v, 0.01, 100, &o.age_weight);
        else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--batch", &v)) > 0) {
            bad = fm_cmd_parse_num(v, 1, 65536, &num);
            o.batch = (int)num;
        } else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--epochs", &v)) > 0) {
            bad = fm_cmd_parse_num(v, 1, 100000, &num);
            o.max_epochs = (int)num;
        } else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--patience", &v)) > 0) {
            bad = fm_cmd_parse_num(v, 1, 100000, &num);
            o.patience = (int)num;
        } else if (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, "--seed", &v)) > 0) {
            bad = fm_cmd_parse_num(v, 0, 9007199254740992.0, &num);
            o.seed = (uint64_t)num;
        } else if (m == 0) {
            fprintf(stderr, "facemill train: unknown argument '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
        if (m < 0 || bad) {
            fprintf(stderr, "facemill train: %s: %s\n", a,
                    m < 0 ? "needs a value" : "bad value");
            return 2;
        }
    }
    if (!freeze || !train_dir || (!out_path && !extract_only) || (extract_only && !cache)) {
        fprintf(stderr, "facemill train: %s\n\n",
                !freeze       ? "only --freeze training exists: pass --freeze"
                : !train_dir  ? "--train DIR is required"
                : !out_path   ? "-o OUT.fmm is required"
                              : "--extract-only needs --cache");
        usage(stderr);
        return 2;
    }

    int rc = 1;
    fm_utk_list tl = {0}, vl = {0};
    char **paths = NULL;
    features f = {0};
    fm_pipeline *p = NULL;
    float *xtr = NULL, *xva = NULL;
    fm_utk_label *ltr = NULL, *lva = NULL;
    fm_model_writer *w = NULL;
    char key[4096];
    if (fm_utk_list_dir(train_dir, &tl, &err) != FM_OK ||
        (val_dir && fm_utk_list_dir(val_dir, &vl, &err) != FM_OK)) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    if (tl.skipped || vl.skipped)
        fm_log_warn("skipped %d file(s) whose names are not AGE_GENDER_RACE_*.jpg",
                    tl.skipped + vl.skipped);
    int n_all = tl.n + vl.n;
    if (tl.n < 2) {
        fprintf(stderr, "facemill train: %s: fewer than 2 labelled images\n", train_dir);
        goto done;
    }
    paths = calloc((size_t)n_all, sizeof *paths);
    if (!paths)
        goto nomem;
    for (int i = 0; i < tl.n; i++)
        paths[i] = tl.paths[i];
    for (int i = 0; i < vl.n; i++)
        paths[tl.n + i] = vl.paths[i];

    /* the pipeline here only gives the backbone's identity and dims for the key */
    fm_pipeline_opts po = {1, 1, 1};
    if (fm_nn_set_threads(1, &err) != FM_OK || fm_pipeline_open(&p, &c, &po, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    if (cache_key(key, sizeof key, p, &c) != 0) {
        fprintf(stderr, "facemill train: settings too long for the cache key\n");
        goto done;
    }
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        f.dims[k] = fm_backbone_dim(fm_pipeline_backbone(p), (fm_backbone_output)k);
    char identity[1024];
    snprintf(identity, sizeof identity, "%s", fm_pipeline_backbone_identity(p));
    fm_pipeline_close(&p);
    if (features_alloc(&f, n_all, 2 * (f.dims[0] + f.dims[1]), &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    if (!cache || !cache_load(cache, key, paths, &f)) {
        double t0 = fm_cmd_now_ms();
        fm_log_info("extracting features of %d images with %d process(es)", n_all, (int)jobs);
        if (extract(&c, paths, &f, (int)jobs, &err) != FM_OK) {
            fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
            goto done;
        }
        fm_log_info("extraction took %.1f s", (fm_cmd_now_ms() - t0) / 1000);
        if (cache && cache_save(cache, key, paths, &f, &err) != FM_OK) {
            fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
            goto done;
        }
    } else {
        fm_log_info("features of %d images loaded from %s", n_all, cache);
    }
    int no_face = 0, errors = 0;
    for (int i = 0; i < n_all; i++) {
        no_face += f.found[i] == 0;
        errors += f.found[i] < 0;
    }
    fm_log_info("%d images: %d without a face, %d unreadable (left out of training)", n_all,
                no_face, errors);
    if (extract_only) {
        rc = 0;
        goto done;
    }

    /* the sets */
    const int D = f.dims[feature];
    xtr = malloc((size_t)n_all * (size_t)D * sizeof *xtr);
    xva = malloc((size_t)n_all * (size_t)D * sizeof *xva);
    ltr = malloc((size_t)n_all * sizeof *ltr);
    lva = malloc((size_t)n_all * sizeof *lva);
    if (!xtr || !xva || !ltr || !lva)
        goto nomem;
    fm_train_set ts = {0, D, xtr, ltr}, vs = {0, D, xva, lva};
    for (int i = 0; i < n_all; i++) {
        if (f.found[i] != 1)
            continue;
        int is_val = i >= tl.n || (!val_dir && fm_utk_in_holdout(paths[i], holdout));
        fm_train_set *s = is_val ? &vs : &ts;
        float *dst = (float *)s->x + (size_t)s->n * (size_t)D;
        const float *row = f.x + (size_t)i * (size_t)f.row;
        const float *a = row + row_off(&f, feature, 0), *b = row + row_off(&f, feature, 1);
        for (int d = 0; d < D; d++)
            dst[d] = flip ? 0.5f * (a[d] + b[d]) : a[d];
        ((fm_utk_label *)s->labels)[s->n++] = i < tl.n ? tl.labels[i] : vl.labels[i - tl.n];
    }
    fm_log_info("training on %d faces, early stopping on %d (%s), feature %s (%d), flip %s",
                ts.n, vs.n, val_dir ? val_dir : "held-out share of --train",
                fm_backbone_output_name(feature), D, flip ? "on" : "off");
    if (ts.n < 1 || vs.n < 1) {
        fprintf(stderr, "facemill train: no faces to %s\n", ts.n < 1 ? "train on" : "validate on");
        goto done;
    }
    o.progress = on_epoch;
    if (!(w = fm_model_writer_new()))
        goto nomem;
    fm_train_epoch best;
    if (fm_model_writer_add_str(w, "general.architecture", "heads", &err) ||
        fm_model_writer_add_str(w, "general.name", "facemill age/gender/ethnicity heads",
                                &err) ||
        fm_model_writer_add_str(w, "general.source", "trained:facemill", &err) ||
        fm_train_heads(&ts, &vs, &o, w, &best, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_log_info("kept epoch %d: val loss %.4f, age MAE %.3f RMSE %.3f, gender %.2f%%, "
                "race %.2f%% (%.1f s)", best.epoch, best.val_loss, best.val_age_mae,
                best.val_age_rmse, 100 * best.val_gender_acc, 100 * best.val_race_acc,
                best.elapsed_s);

    /* metadata and lineage */
    char date[32], data[2048];
    time_t now = time(NULL);
    struct tm tmv;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
    if (val_dir)
        snprintf(data, sizeof data,
                 "UTKFace: train %s (%d images, %d faces used), early stopping on %s "
                 "(%d faces)", train_dir, tl.n, ts.n, val_dir, vs.n);
    else
        snprintf(data, sizeof data,
                 "UTKFace: %s (%d images); %d faces trained on, %d held out for early "
                 "stopping (share %g by file-name hash)", train_dir, tl.n, ts.n, vs.n,
                 holdout);
    static const char *const genders[] = {"male", "female"};
    static const char *const races[] = {"White", "Black", "Asian", "Indian", "Others"};
    int64_t hidden64[FM_HEADS_MAX_LAYERS];
    for (int k = 0; k < o.n_hidden; k++)
        hidden64[k] = o.hidden[k];
    fm_status st;
    if ((st = fm_model_writer_add_str(w, "heads.backbone", identity, &err)) ||
        (st = fm_model_writer_add_str(w, "heads.feature", fm_backbone_output_name(feature),
                                      &err)) ||
        (st = fm_model_writer_add_i64(w, "heads.flip", flip ? 1 : 0, &err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.gender", genders, 2, &err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.race", races, 5, &err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.command", command, &err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.data", data, &err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.licence",
                                      "UTKFace: non-commercial research only", &err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.date", date, &err)) ||
        (st = fm_model_writer_add_str(w, "heads.train.features", key, &err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.seed", (int64_t)o.seed, &err)) ||
        (st = fm_model_writer_add_i64_array(w, "heads.train.hidden", hidden64,
                                            (size_t)o.n_hidden, &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.dropout", o.dropout, &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.lr", o.lr, &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.weight_decay", o.weight_decay,
                                      &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.age_sigma", o.age_sigma, &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.age_weight", o.age_weight, &err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.batch", o.batch, &err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.best_epoch", best.epoch, &err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.faces", ts.n, &err)) ||
        (st = fm_model_writer_add_i64(w, "heads.train.early_stop_faces", vs.n, &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_loss", best.val_loss,
                                      &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_age_mae", best.val_age_mae,
                                      &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_age_rmse",
                                      best.val_age_rmse, &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_gender_acc",
                                      best.val_gender_acc, &err)) ||
        (st = fm_model_writer_add_f64(w, "heads.train.early_stop_race_acc", best.val_race_acc,
                                      &err)) ||
        (st = fm_model_writer_save(w, out_path, &err))) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_log_info("wrote %s", out_path);
    rc = 0;
    goto done;
nomem:
    fprintf(stderr, "facemill train: out of memory\n");
done:
    fm_model_writer_destroy(&w);
    fm_pipeline_close(&p);
    features_free(&f);
    free(xtr);
    free(xva);
    free(ltr);
    free(lva);
    free(paths);
    fm_utk_list_free(&tl);
    fm_utk_list_free(&vl);
    return rc;
}
