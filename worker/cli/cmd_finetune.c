/* cmd_finetune.c - `facemill train` without --freeze: fine-tunes the backbone jointly
 * with the attribute heads on a folder of UTKFace-named images
 * (include/facemill/finetune.h says how).
 *
 * Steps: list and label the images; find each image's face with the production
 * detector (the highest-scoring face; --jobs processes writing into one shared
 * anonymous mapping) or load the landmarks from --landmarks when they were found with
 * the same detector settings; decode every image with a face into memory; split off
 * the early-stopping set (--val DIR, or a fixed share of --train chosen by a hash of
 * the file name); train, checkpointing to --checkpoint; write the backbone (-o) and
 * the heads (--heads) atomically, each with its lineage.
 *
 * Ctrl-C or SIGTERM writes a checkpoint and exits; the same command resumes.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "cmd_util.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/finetune.h"
#include "facemill/heads.h"
#include "facemill/image.h"
#include "facemill/log.h"
#include "facemill/model.h"
#include "facemill/modelpath.h"
#include "facemill/nn.h"
#include "facemill/sha256.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TRAIN_PAD 0.25

/* set by SIGINT/SIGTERM; the trainer reads it between steps (an int is what the
 * options take; sig_atomic_t is int on every platform facemill builds on) */
static volatile int stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill train --train DIR -o BACKBONE.fmm --heads HEADS.fmm [options]\n"
            "                      [--config FILE] [--set KEY=VALUE]...\n"
            "\n"
            "Fine-tunes the backbone (embed.backbone, a dlib_resnet model) together with\n"
            "new age, gender and ethnicity heads on UTKFace-named JPEGs\n"
            "(AGE_GENDER_RACE_*.jpg). Faces are found with the detector (detect.pad\n"
            "defaults to 0.25 here: UTKFace crops are tight) and aligned as the pipeline\n"
            "aligns them. (`facemill train --freeze --help`: heads on a frozen backbone.)\n"
            "\n"
            "  --train DIR          training images\n"
            "  --val DIR            early-stopping and calibration images (default: a\n"
            "                       share of --train)\n"
            "  --holdout F          share of --train held out when no --val (default 0.1,\n"
            "                       chosen by file-name hash)\n"
            "  -o, --output FILE    the fine-tuned backbone to write\n"
            "  --heads FILE         the heads to write (read with that backbone)\n"
            "  --checkpoint FILE    resumable state, written every --checkpoint-steps\n"
            "                       steps (default 200) and after each epoch; a rerun of\n"
            "                       the same command resumes from it\n"
            "  --landmarks FILE     cache of the detected landmarks (reused when the\n"
            "                       images and detector settings match)\n"
            "  --jobs N             detection processes (default 2)\n"
            "  --threads N          OpenBLAS threads while training (default 2)\n"
            "  --from BLOCK         first trained block: stem, conv32_1 .. conv256_down_out,\n"
            "                       heads (default conv128_down; earlier blocks frozen)\n"
            "  --epochs N           most epochs (default 6); --patience N (default 3)\n"
            "  --batch N            faces per step (default 32)\n"
            "  --optimizer NAME     adamw (default) or sgd (with --momentum, default 0.9)\n"
            "  --lr F               backbone learning rate (default 0.0001)\n"
            "  --lr-mode MODE       absolute (default) or relative: each backbone layer's\n"
            "                       rate is --lr times the RMS of its pretrained weights\n"
            "  --lr-heads F         heads learning rate (default 0.001)\n"
            "  --wd F               decoupled weight decay (default 0.0001)\n"
            "  --schedule NAME      cosine (default) or step (--step-epochs, --step-gamma)\n"
            "  --warmup E           warm-up epochs (default 0.3)\n"
            "  --hidden N           shared layer width (default 256)\n"
            "  --dropout F          on the shared layer (default 0.3)\n"
            "  --age-sigma F        Gaussian age target spread, years (default 2)\n"
            "  --age-weight F, --gender-weight F, --ethnicity-weight F\n"
            "                       weights of the three losses (default 1 each)\n"
            "  --label-smoothing F  gender and ethnicity targets 1 - F on the label plus\n"
            "                       F / classes on each class (0..0.5, default 0)\n"
            "  --align-zoom F       the base's alignment template scaled by F about the\n"
            "                       chip's centre (0.5..1.5, default 1; below 1 the face\n"
            "                       is smaller and the chip holds more hair and\n"
            "                       surroundings); the trained backbone keeps it\n"
            "  --flip on|off        random mirror images (default on)\n"
            "  --shift PX, --scale F, --rotate DEG   alignment jitter (default 4, 0.05, 5)\n"
            "  --brightness V, --contrast F          photometric jitter (default 16, 0.15)\n"
            "  --seed N             random seed (default 1)\n"
            "  --limit N            use only the first N training images (by name)\n"
            "\n"
            "The kept heads' gender and ethnicity probabilities are calibrated on the\n"
            "held-out faces (a temperature each, written into the heads file).\n"
            "\n"
            "Progress (step, loss, learning rate, ETA; validation figures per epoch) goes\n"
            "to stderr. Exit code 0 on success, 1 on failure or interruption (the\n"
            "checkpoint then holds the state), 2 on a usage error.\n");
}

/* ---- landmarks -------------------------------------------------------------------- */

typedef struct marks {
    int n;
    float *lm;     /* n x 10, original image coordinates */
    float *found;  /* n: 1 face, 0 none, -1 unreadable */
    size_t bytes;
} marks;

static fm_status marks_alloc(marks *m, int n, fm_error *err)
{
    m->n = n;
    m->bytes = (size_t)n * 11 * sizeof(float);
    void *p = mmap(NULL, m->bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        m->bytes = 0;
        return fm_error_set(err, FM_ERR_NOMEM, "landmarks: %s", strerror(errno));
    }
    m->lm = p;
    m->found = m->lm + (size_t)n * 10;
    return FM_OK;
}

static void marks_free(marks *m)
{
    if (m->bytes)
        munmap(m->lm, m->bytes);
    memset(m, 0, sizeof *m);
}

static int detect_part(const fm_config *c, char **paths, marks *m, int job, int jobs)
{
    fm_error err = {0};
    fm_detector *d = NULL;
    fm_decoder *dec = NULL;
    fm_detect_opts o;
    fm_detect_opts_from_config(&o, c);
    fm_decode_opts dopt = {(uint64_t)c->decode.max_pixels, (size_t)c->decode.max_bytes,
                           o.max_side};
    if (fm_nn_set_threads(1, &err) || fm_detector_open(&d, c->models.dir, &o, &err) ||
        fm_decoder_new(&dec, &dopt, &err)) {
        fm_log_error("detection %d: %s", job, fm_error_text(&err));
        fm_detector_close(&d);
        return 1;
    }
    double t0 = fm_cmd_now_ms(), last = t0;
    int done = 0, mine = (m->n - job + jobs - 1) / jobs;
    for (int i = job; i < m->n; i += jobs) {
        fm_image img;
        fm_face faces[4];
        int nf = 0;
        if (fm_decode_file(dec, paths[i], &img, &err) != FM_OK) {
            fm_log_warn("%s", fm_error_text(&err));
            m->found[i] = -1;
        } else if (fm_detect(d, &img, faces, 4, &nf, NULL, &err) != FM_OK) {
            fm_log_warn("%s: %s", paths[i], fm_error_text(&err));
            m->found[i] = -1;
        } else {
            m->found[i] = nf > 0;
            if (nf > 0)
                memcpy(m->lm + (size_t)i * 10, faces[0].landmarks, 10 * sizeof(float));
        }
        done++;
        double now = fm_cmd_now_ms();
        if (job == 0 && (now - last > 15000 || done == mine)) {
            double rate = done / ((now - t0) / 1000);
            fm_log_info("finding faces: %d/%d images (process 1 of %d), %.1f images/s, "
                        "ETA %.0f s", done, mine, jobs, rate, (mine - done) / rate);
            last = now;
        }
    }
    fm_decoder_destroy(&dec);
    fm_detector_close(&d);
    return 0;
}

typedef struct detect_ctx {
    const fm_config *c;
    char **paths;
    marks *m;
} detect_ctx;

static int detect_job(void *ctx, int job, int jobs)
{
    detect_ctx *x = ctx;
    return detect_part(x->c, x->paths, x->m, job, jobs);
}

static fm_status detect_all(const fm_config *c, char **paths, marks *m, int jobs,
                            fm_error *err)
{
    detect_ctx x = {c, paths, m};
    return fm_cmd_fork_parts(jobs, detect_job, &x)
               ? fm_error_set(err, FM_ERR_INTERNAL, "face detection failed")
               : FM_OK;
}

static void marks_key(char *buf, size_t size, const fm_config *c)
{
    fm_detect_opts d;
    fm_detect_opts_from_config(&d, c);
    snprintf(buf, size,
             "facemill-landmarks 1|models %s|min_face %.17g|max_side %d|scale %.17g|"
             "th %.17g %.17g %.17g|pad %.17g|max_pixels %lld",
             c->models.dir, d.min_face, d.max_side, d.scale_factor, d.pnet_threshold,
             d.rnet_threshold, d.onet_threshold, d.pad, (long long)c->decode.max_pixels);
}

static int marks_load(const char *path, const char *key, char **paths, marks *m)
{
    fm_model *f = NULL;
    fm_error err = {0};
    int ok = 0;
    if (fm_model_open(&f, path, FM_MODEL_VERIFY_DATA, &err) != FM_OK)
        return 0;
    const char *k = NULL;
    const char *const *names = NULL;
    size_t count = 0;
    const float *lm = NULL, *found = NULL;
    uint64_t dl[2] = {(uint64_t)m->n, 10}, df[1] = {(uint64_t)m->n};
    if (fm_model_meta_str(f, "landmarks.key", &k, NULL, NULL) != FM_OK || strcmp(k, key) ||
        fm_model_meta_str_array(f, "landmarks.paths", &names, &count, NULL) != FM_OK ||
        count != (size_t)m->n ||
        fm_model_tensor_expect(f, "landmarks", 2, dl, &lm, NULL) != FM_OK ||
        fm_model_tensor_expect(f, "found", 1, df, &found, NULL) != FM_OK) {
        fm_log_info("landmark cache %s not used: other images or settings", path);
        goto done;
    }
    for (int i = 0; i < m->n; i++)
        if (strcmp(names[i], paths[i]) != 0) {
            fm_log_info("landmark cache %s not used: other images", path);
            goto done;
        }
    memcpy(m->lm, lm, (size_t)m->n * 10 * sizeof(float));
    memcpy(m->found, found, (size_t)m->n * sizeof(float));
    ok = 1;
done:
    fm_model_close(&f);
    return ok;
}

static fm_status marks_save(const char *path, const char *key, char **paths,
                            const marks *m, fm_error *err)
{
    fm_model_writer *w = fm_model_writer_new();
    if (!w)
        return fm_error_set(err, FM_ERR_NOMEM, "landmark cache: out of memory");
    uint64_t dl[2] = {(uint64_t)m->n, 10}, df[1] = {(uint64_t)m->n};
    fm_status st;
    if ((st = fm_model_writer_add_str(w, "general.architecture", "landmark_cache", err)) ||
        (st = fm_model_writer_add_str(w, "landmarks.key", key, err)) ||
        (st = fm_model_writer_add_str_array(w, "landmarks.paths", (const char *const *)paths,
                                            (size_t)m->n, err)) ||
        (st = fm_model_writer_add_tensor(w, "landmarks", 2, dl, m->lm, err)) ||
        (st = fm_model_writer_add_tensor(w, "found", 1, df, m->found, err)))
        goto out;
    st = fm_model_writer_save(w, path, err);
out:
    fm_model_writer_destroy(&w);
    return st;
}

/* ---- progress --------------------------------------------------------------------- */

static void on_progress(void *ctx, const fm_ft_progress *p)
{
    (void)ctx;
    if (!p->epoch_end) {
        fm_log_info("epoch %d/%d step %ld/%ld  loss %.4f  lr %.2e/%.2e  %.0f s, ETA %.0f min",
                    p->epoch, p->max_epochs, p->step, p->total_steps, p->train_loss,
                    p->lr_backbone, p->lr_heads, p->elapsed_s, p->eta_s / 60);
        return;
    }
    fm_log_info("epoch %d/%d done: train loss %.4f  val loss %.4f  age MAE %.3f RMSE %.3f  "
                "gender %.2f%%  race %.2f%%  (best epoch %d; %.0f s, ETA %.0f min)",
                p->epoch, p->max_epochs, p->train_loss, p->val_loss, p->val_age_mae,
                p->val_age_rmse, 100 * p->val_gender_acc, 100 * p->val_race_acc,
                p->best_epoch, p->elapsed_s, p->eta_s / 60);
}

/* ---- the command -------------------------------------------------------------------- */

/* `git describe --always --dirty` of the source tree this binary was built from, or
 * "unknown" (no git, or not built from a checkout). */
static void source_commit(char *buf, size_t size)
{
    snprintf(buf, size, "unknown");
#ifdef FACEMILL_SOURCE_DIR
    FILE *f = popen("git -C '" FACEMILL_SOURCE_DIR "' describe --always --dirty 2>/dev/null",
                    "r");
    if (!f)
        return;
    char line[256];
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0])
            snprintf(buf, size, "%s", line);
    }
    pclose(f);
#endif
}

int fm_cmd_finetune(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
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
    /* the detector and the base backbone through the model search path */
    if (fm_config_resolve_models(&c, FM_RESOLVE_DETECTOR | FM_RESOLVE_BACKBONE, &err) !=
        FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        return 1;
    }
    char commit[256]; /* the code that trains, as it is now (the tree may change later) */
    source_commit(commit, sizeof commit);

    const char *train_dir = NULL, *val_dir = NULL, *out_path = NULL, *heads_path = NULL;
    const char *landmarks = NULL;
    double holdout = 0.1, jobs = 2, threads = 2, limit = 0, num;
    fm_ft_opts o;
    fm_ft_opts_defaults(&o);
    o.progress = on_progress;
    o.progress_steps = 50;
    o.stop = &stop_requested;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL, *a = argv[i];
        int m = 0, bad = 0;
#define OPT(name) (m == 0 && (m = fm_cmd_take_opt(argc, argv, &i, (name), &v)) > 0)
        if (OPT("--train"))
            train_dir = v;
        else if (OPT("--val"))
            val_dir = v;
        else if (OPT("-o") || OPT("--output"))
            out_path = v;
        else if (OPT("--heads"))
            heads_path = v;
        else if (OPT("--checkpoint"))
            o.checkpoint = v;
        else if (OPT("--landmarks"))
            landmarks = v;
        else if (OPT("--holdout"))
            bad = fm_cmd_parse_num(v, 0.001, 0.9, &holdout);
        else if (OPT("--jobs"))
            bad = fm_cmd_parse_num(v, 1, 64, &jobs);
        else if (OPT("--threads"))
            bad = fm_cmd_parse_num(v, 1, 1024, &threads);
        else if (OPT("--limit"))
            bad = fm_cmd_parse_num(v, 1, 1e9, &limit);
        else if (OPT("--from")) {
            int b = fm_ft_block_index(v);
            bad = b < FM_FT_STEM;
            o.train_from = bad ? o.train_from : b;
        } else if (OPT("--epochs")) {
            bad = fm_cmd_parse_num(v, 1, 10000, &num);
            o.max_epochs = (int)num;
        } else if (OPT("--patience")) {
            bad = fm_cmd_parse_num(v, 1, 10000, &num);
            o.patience = (int)num;
        } else if (OPT("--batch")) {
            bad = fm_cmd_parse_num(v, 1, 1024, &num);
            o.batch = (int)num;
        } else if (OPT("--optimizer")) {
            bad = strcmp(v, "adamw") != 0 && strcmp(v, "sgd") != 0;
            o.optimizer = strcmp(v, "sgd") == 0 ? FM_FT_SGD : FM_FT_ADAMW;
        } else if (OPT("--momentum"))
            bad = fm_cmd_parse_num(v, 0, 0.999, &o.momentum);
        else if (OPT("--lr"))
            bad = fm_cmd_parse_num(v, 0, 1, &o.lr_backbone);
        else if (OPT("--lr-mode")) {
            bad = strcmp(v, "absolute") != 0 && strcmp(v, "relative") != 0;
            o.lr_relative = strcmp(v, "relative") == 0;
        } else if (OPT("--lr-heads"))
            bad = fm_cmd_parse_num(v, 1e-7, 1, &o.lr_heads);
        else if (OPT("--wd"))
            bad = fm_cmd_parse_num(v, 0, 1, &o.weight_decay);
        else if (OPT("--schedule")) {
            bad = strcmp(v, "cosine") != 0 && strcmp(v, "step") != 0;
            o.schedule = strcmp(v, "step") == 0 ? FM_FT_STEP : FM_FT_COSINE;
        } else if (OPT("--step-epochs"))
            bad = fm_cmd_parse_num(v, 0.01, 1e4, &o.step_epochs);
        else if (OPT("--step-gamma"))
            bad = fm_cmd_parse_num(v, 1e-4, 1, &o.step_gamma);
        else if (OPT("--warmup"))
            bad = fm_cmd_parse_num(v, 0, 1e4, &o.warmup_epochs);
        else if (OPT("--hidden")) {
            bad = fm_cmd_parse_num(v, 1, 65536, &num);
            o.hidden = (int)num;
        } else if (OPT("--dropout"))
            bad = fm_cmd_parse_num(v, 0, 0.95, &o.dropout);
        else if (OPT("--age-sigma"))
            bad = fm_cmd_parse_num(v, 0, 30, &o.age_sigma);
        else if (OPT("--age-weight"))
            bad = fm_cmd_parse_num(v, 0.01, 100, &o.age_weight);
        else if (OPT("--gender-weight"))
            bad = fm_cmd_parse_num(v, 0.01, 100, &o.gender_weight);
        else if (OPT("--ethnicity-weight"))
            bad = fm_cmd_parse_num(v, 0.01, 100, &o.race_weight);
        else if (OPT("--label-smoothing"))
            bad = fm_cmd_parse_num(v, 0, 0.5, &o.label_smoothing);
        else if (OPT("--align-zoom"))
            bad = fm_cmd_parse_num(v, 0.5, 1.5, &o.align_zoom);
        else if (OPT("--flip")) {
            bad = strcmp(v, "on") != 0 && strcmp(v, "off") != 0;
            o.flip = strcmp(v, "on") == 0;
        } else if (OPT("--shift"))
            bad = fm_cmd_parse_num(v, 0, 64, &o.shift_px);
        else if (OPT("--scale"))
            bad = fm_cmd_parse_num(v, 0, 0.49, &o.scale_jitter);
        else if (OPT("--rotate"))
            bad = fm_cmd_parse_num(v, 0, 45, &o.rotate_deg);
        else if (OPT("--brightness"))
            bad = fm_cmd_parse_num(v, 0, 255, &o.brightness);
        else if (OPT("--contrast"))
            bad = fm_cmd_parse_num(v, 0, 0.99, &o.contrast);
        else if (OPT("--checkpoint-steps")) {
            bad = fm_cmd_parse_num(v, 0, 1e9, &num);
            o.checkpoint_steps = (int)num;
        } else if (OPT("--seed")) {
            bad = fm_cmd_parse_num(v, 0, 9007199254740992.0, &num);
            o.seed = (uint64_t)num;
        } else if (m == 0) {
            fprintf(stderr, "facemill train: unknown argument '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
#undef OPT
        if (m < 0 || bad) {
            fprintf(stderr, "facemill train: %s: %s\n", a, m < 0 ? "needs a value" : "bad value");
            return 2;
        }
    }
    if (!train_dir || !out_path || !heads_path) {
        fprintf(stderr, "facemill train: %s\n\n",
                !train_dir ? "--train DIR is required"
                : !out_path ? "-o BACKBONE.fmm is required"
                            : "--heads HEADS.fmm is required");
        usage(stderr);
        return 2;
    }

    int rc = 1;
    fm_utk_list tl = {0}, vl = {0};
    char **paths = NULL;
    marks mk = {0};
    fm_model *base = NULL;
    fm_finetune *ft = NULL;
    fm_ft_image *imgs = NULL;
    fm_decoder *dec = NULL;
    fm_model_writer *w = NULL;
    int n_all = 0;
    if (fm_utk_list_dir(train_dir, &tl, &err) != FM_OK ||
        (val_dir && fm_utk_list_dir(val_dir, &vl, &err) != FM_OK)) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    if (limit > 0 && tl.n > (int)limit) { /* the list is sorted by name: the first N */
        for (int i = (int)limit; i < tl.n; i++)
            free(tl.paths[i]);
        tl.n = (int)limit;
    }
    if (tl.skipped || vl.skipped)
        fm_log_warn("skipped %d file(s) whose names are not AGE_GENDER_RACE_*.jpg",
                    tl.skipped + vl.skipped);
    n_all = tl.n + vl.n;
    paths = calloc((size_t)n_all + 1, sizeof *paths);
    imgs = calloc((size_t)n_all + 1, sizeof *imgs);
    if (!paths || !imgs)
        goto nomem;
    for (int i = 0; i < tl.n; i++)
        paths[i] = tl.paths[i];
    for (int i = 0; i < vl.n; i++)
        paths[tl.n + i] = vl.paths[i];

    /* the base backbone and the trainer first: bad options fail before the long part */
    char base_path[2 * FM_CONFIG_STRING_MAX + 2];
    if (strchr(c.embed.backbone, ',')) {
        fprintf(stderr, "facemill train: embed.backbone '%s' is a list; fine-tuning starts "
                        "from one backbone\n", c.embed.backbone);
        goto done;
    }
    snprintf(base_path, sizeof base_path, "%s", c.embed.backbone); /* resolved above */
    if (fm_nn_set_threads((int)threads, &err) != FM_OK ||
        fm_model_open(&base, base_path, 0, &err) != FM_OK ||
        fm_finetune_new(&ft, base, &o, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }

    /* faces */
    char key[4096];
    marks_key(key, sizeof key, &c);
    if (marks_alloc(&mk, n_all, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    if (!landmarks || !marks_load(landmarks, key, paths, &mk)) {
        double t0 = fm_cmd_now_ms();
        fm_log_info("finding the faces of %d images with %d process(es)", n_all, (int)jobs);
        if (detect_all(&c, paths, &mk, (int)jobs, &err) != FM_OK ||
            (landmarks && marks_save(landmarks, key, paths, &mk, &err) != FM_OK)) {
            fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
            goto done;
        }
        fm_log_info("detection took %.1f s", (fm_cmd_now_ms() - t0) / 1000);
    } else {
        fm_log_info("landmarks of %d images loaded from %s", n_all, landmarks);
    }

    /* decode every image with a face, at full size, into memory */
    fm_decode_opts dopt = {(uint64_t)c.decode.max_pixels, (size_t)c.decode.max_bytes, 0};
    if (fm_decoder_new(&dec, &dopt, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_ft_image *tr = imgs, *va = NULL;
    int ntr = 0, nva = 0, no_face = 0;
    /* training images first, then validation images, in one array */
    int *is_val = calloc((size_t)n_all + 1, sizeof *is_val);
    if (!is_val)
        goto nomem;
    for (int i = 0; i < n_all; i++)
        is_val[i] = i >= tl.n || (!val_dir && fm_utk_in_holdout(paths[i], holdout));
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            va = imgs + ntr;
        for (int i = 0; i < n_all; i++) {
            if (is_val[i] != pass)
                continue;
            if (mk.found[i] != 1) {
                no_face += pass == 0 || i >= tl.n || !val_dir;
                continue;
            }
            fm_image im;
            if (fm_decode_file(dec, paths[i], &im, &err) != FM_OK) {
                fm_log_warn("%s", fm_error_text(&err));
                continue;
            }
            uint8_t *px = malloc((size_t)im.w * im.h * 3);
            if (!px) {
                free(is_val);
                goto nomem;
            }
            for (int y = 0; y < im.h; y++)
                memcpy(px + (size_t)y * im.w * 3, im.data + (size_t)y * im.stride,
                       (size_t)im.w * 3);
            fm_ft_image *d = pass ? &va[nva++] : &tr[ntr++];
            d->rgb = px;
            d->w = im.w;
            d->h = im.h;
            d->stride = (size_t)im.w * 3;
            /* original -> decoded pixel coordinates (1:1 unless the decoder scaled) */
            double s = im.scale_num > 0 ? (double)im.scale_num / im.scale_denom : 1;
            for (int k = 0; k < 10; k++)
                d->landmarks[k] = (float)((mk.lm[(size_t)i * 10 + k] + 0.5) * s - 0.5);
            d->label = i < tl.n ? tl.labels[i] : vl.labels[i - tl.n];
        }
    }
    free(is_val);
    fm_decoder_destroy(&dec);
    fm_log_info("%d images: %d without a face; training on %d faces, early stopping on %d "
                "(%s); blocks from %s train", n_all, no_face, ntr, nva,
                val_dir ? val_dir : "held-out share of --train", fm_ft_block_name(o.train_from));

    /* train */
    char data_id[128];
    {
        fm_sha256 s;
        uint8_t dg[FM_SHA256_BYTES];
        char hex[65];
        fm_sha256_init(&s);
        for (int i = 0; i < n_all; i++)
            fm_sha256_update(&s, paths[i], strlen(paths[i]) + 1);
        fm_sha256_update(&s, &holdout, sizeof holdout);
        /* the detector's and decoder's settings: other settings, other faces */
        fm_sha256_update(&s, key, strlen(key) + 1);
        fm_sha256_final(&s, dg);
        fm_sha256_hex(dg, hex);
        snprintf(data_id, sizeof data_id, "%d/%d faces, names %.16s", ntr, nva, hex);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fm_ft_set ts = {ntr, tr}, vs = {nva, va};
    fm_ft_progress best;
    fm_status st = fm_finetune_run(ft, &ts, &vs, data_id, &best, &err);
    if (st == FM_ERR_INTERRUPTED) {
        fprintf(stderr, "facemill train: %s%s\n", fm_error_text(&err),
                o.checkpoint ? "; run the same command again to resume"
                             : " (without --checkpoint there is nothing to resume from)");
        goto done;
    }
    if (st != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_log_info("kept epoch %d: val loss %.4f, age MAE %.3f RMSE %.3f, gender %.2f%%, "
                "race %.2f%%", best.best_epoch, best.val_loss, best.val_age_mae,
                best.val_age_rmse, 100 * best.val_gender_acc, 100 * best.val_race_acc);
    double temp[2], nll[4];
    if (fm_finetune_calibrate(ft, &vs, temp, nll, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_log_info("calibrated on the %d held-out faces: gender temperature %.3f (loss %.4f -> "
                "%.4f), ethnicity %.3f (%.4f -> %.4f)", nva, temp[0], nll[0], nll[1], temp[1],
                nll[2], nll[3]);

    /* lineage shared by both files */
    char date[32], data[2048], base_id[1024];
    time_t now = time(NULL);
    struct tm tmv;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
    if (val_dir)
        snprintf(data, sizeof data,
                 "UTKFace: train %s (%d images, %d faces used), early stopping on %s "
                 "(%d faces)", train_dir, tl.n, ntr, val_dir, nva);
    else
        snprintf(data, sizeof data,
                 "UTKFace: %s (%d images); %d faces trained on, %d held out for early "
                 "stopping (share %g by file-name hash)", train_dir, tl.n, ntr, nva, holdout);
    char base_sha[65];
    if (fm_heads_backbone_identity(base_path, base_id, sizeof base_id, &err) != FM_OK ||
        fm_sha256_file(base_path, base_sha, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    const double figs[5] = {best.val_loss, best.val_age_mae, best.val_age_rmse,
                            best.val_gender_acc, best.val_race_acc};

    /* the backbone: the base's metadata, a new identity, the lineage */
    static const char *const skip[] = {"general.name", "general.source",
                                       "general.source_integrity", "align.template", NULL};
    double tmpl[10];
    for (int i = 0; i < 10; i++)
        tmpl[i] = fm_finetune_template(ft)[i];
    if (!(w = fm_model_writer_new()))
        goto nomem;
    if (fm_model_writer_add_str(w, "general.name",
                                "dlib ResNet fine-tuned for age, gender and ethnicity",
                                &err) ||
        fm_model_writer_add_str(w, "general.source", "trained:facemill", &err) ||
        fm_finetune_copy_meta(base, skip, w, &err) ||
        fm_model_writer_add_f64_array(w, "align.template", tmpl, 10, &err) ||
        fm_model_writer_add_str(w, "general.base", base_id, &err) ||
        fm_model_writer_add_str(w, "general.base_sha256", base_sha, &err) ||
        fm_model_writer_add_str(w, "train.commit", commit, &err) ||
        fm_model_writer_add_str(w, "train.command", command, &err) ||
        fm_model_writer_add_str(w, "train.data", data, &err) ||
        fm_model_writer_add_str(w, "train.licence", "UTKFace: non-commercial research only",
                                &err) ||
        fm_model_writer_add_str(w, "train.date", date, &err) ||
        fm_model_writer_add_str(w, "train.from", fm_ft_block_name(o.train_from), &err) ||
        fm_model_writer_add_i64(w, "train.best_epoch", best.best_epoch, &err) ||
        fm_model_writer_add_i64(w, "train.seed", (int64_t)o.seed, &err) ||
        fm_model_writer_add_f64_array(w, "train.early_stop", figs, 5, &err) ||
        fm_finetune_write_backbone(ft, w, &err)) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    /* the identity heads files check: a digest of the trained weights */
    char hex[65], integrity[80];
    if (fm_finetune_weights_digest(ft, hex, &err) != FM_OK) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    snprintf(integrity, sizeof integrity, "sha256:%s", hex);
    if (fm_model_writer_add_str(w, "general.source_integrity", integrity, &err) ||
        fm_model_writer_save(w, out_path, &err)) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_model_writer_destroy(&w);
    fm_log_info("wrote %s", out_path);

    /* the heads */
    char identity[1024];
    static const char *const genders[] = {"male", "female"};
    static const char *const races[] = {"White", "Black", "Asian", "Indian", "Others"};
    if (fm_heads_backbone_identity(out_path, identity, sizeof identity, &err) != FM_OK ||
        !(w = fm_model_writer_new())) {
        fprintf(stderr, "facemill train: %s\n", w ? fm_error_text(&err) : "out of memory");
        goto done;
    }
    if (fm_model_writer_add_str(w, "general.architecture", "heads", &err) ||
        fm_model_writer_add_str(w, "general.name",
                                "facemill age/gender/ethnicity heads (fine-tuned backbone)",
                                &err) ||
        fm_model_writer_add_str(w, "general.source", "trained:facemill", &err) ||
        fm_finetune_write_heads(ft, w, &err) ||
        fm_model_writer_add_str(w, "heads.backbone", identity, &err) ||
        fm_model_writer_add_str(w, "heads.feature", "pooled", &err) ||
        fm_model_writer_add_i64(w, "heads.flip", 1, &err) ||
        fm_model_writer_add_str_array(w, "labels.gender", genders, 2, &err) ||
        fm_model_writer_add_str_array(w, "labels.race", races, 5, &err) ||
        fm_model_writer_add_str(w, "heads.train.command", command, &err) ||
        fm_model_writer_add_str(w, "heads.train.data", data, &err) ||
        fm_model_writer_add_str(w, "heads.train.licence",
                                "UTKFace: non-commercial research only", &err) ||
        fm_model_writer_add_str(w, "heads.train.date", date, &err) ||
        fm_model_writer_add_str(w, "heads.train.commit", commit, &err) ||
        fm_model_writer_add_i64(w, "heads.train.seed", (int64_t)o.seed, &err) ||
        fm_model_writer_add_i64(w, "heads.train.best_epoch", best.best_epoch, &err) ||
        fm_model_writer_add_f64_array(w, "heads.train.early_stop", figs, 5, &err) ||
        fm_model_writer_save(w, heads_path, &err)) {
        fprintf(stderr, "facemill train: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_log_info("wrote %s", heads_path);
    rc = 0;
    goto done;
nomem:
    fprintf(stderr, "facemill train: out of memory\n");
done:
    fm_model_writer_destroy(&w);
    fm_decoder_destroy(&dec);
    fm_finetune_free(&ft);
    fm_model_close(&base);
    marks_free(&mk);
    if (imgs)
        for (int i = 0; i < n_all; i++)
            free((void *)imgs[i].rgb);
    free(imgs);
    free(paths);
    fm_utk_list_free(&tl);
    fm_utk_list_free(&vl);
    return rc;
}
