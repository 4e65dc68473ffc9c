/* cmd_finetune.c - `facemill train` without --freeze: fine-tunes the backbone jointly
 * with the attribute heads on a folder of UTKFace-named images
 * (include/facemill/finetune.h says how).
 *
 * This file reads the options and takes the steps of finetune.h in order: list and
 * split the images; find each image's face with the production detector (or load the
 * landmarks from --landmarks); decode every image with a face into memory; train,
 * checkpointing to --checkpoint; calibrate; write the backbone (-o) and the heads
 * (--heads) with their lineage.
 *
 * Ctrl-C or SIGTERM writes a checkpoint and exits; the same command resumes.
 */
#include "cli_opts.h"
#include "cmd_blas.h"
#include "cmd_train.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/finetune.h"
#include "facemill/log.h"
#include "facemill/model.h"
#include "facemill/modelpath.h"
#include "facemill/nn.h"
#include "facemill/sha256.h"
#include "facemill/trainset.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cli_cmd cmd = {
    "train", "--train DIR -o BACKBONE.fmm --heads HEADS.fmm [options]", 0, 0,
    "Fine-tunes the backbone (embed.backbone, a dlib_resnet model) together with\n"
    "new age, gender and ethnicity heads on UTKFace-named JPEGs\n"
    "(AGE_GENDER_RACE_*.jpg). Faces are found with the detector (detect.pad\n"
    "defaults to 0.25 here: UTKFace crops are tight) and aligned as the pipeline\n"
    "aligns them. (`facemill train --freeze --help`: heads on a frozen backbone.)\n"
    "The kept heads' gender and ethnicity probabilities are calibrated on the\n"
    "held-out faces (a temperature each, written into the heads file). Progress\n"
    "(step, loss, learning rate, ETA; validation figures per epoch) goes to stderr.\n",
    "exit status: 0 success, 1 failure or interruption (the checkpoint then holds the "
    "state), 2 usage error",
    fm_utk_config_defaults};

/* set by SIGINT/SIGTERM; the trainer reads it between steps (an int is what the
 * options take; sig_atomic_t is int on every platform facemill builds on) */
static volatile int stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static const char *const optimizer_names[] = {"adamw", "sgd", NULL};
static const char *const schedule_names[] = {"cosine", "step", NULL};
static const char *const lr_mode_names[] = {"absolute", "relative", NULL};
_Static_assert(FM_FT_ADAMW == 0 && FM_FT_SGD == 1 && FM_FT_COSINE == 0 && FM_FT_STEP == 1,
               "the names are indexed by the enums");

static int take_block(void *target, const char *value)
{
    int b = fm_ft_block_index(value);
    if (b < FM_FT_STEM)
        return -1;
    *(int *)target = b;
    return 0;
}

static int take_damages(void *target, const char *value)
{
    return fm_ft_damage_parse(value, (unsigned *)target, NULL) == FM_OK ? 0 : -1;
}

static void on_progress(void *ctx, const fm_ft_progress *p)
{
    const fm_ft_opts *o = ctx;
    char left[96] = "";
    if (o && o->drop_hardest > 0)
        snprintf(left, sizeof left, "  left out: gender %.2f%%, ethnicity %.2f%%",
                 100 * p->dropped_gender, 100 * p->dropped_race);
    if (!p->epoch_end) {
        fm_log_info("epoch %d/%d step %ld/%ld  loss %.4f  lr %.2e/%.2e  %.0f s, ETA %.0f min%s",
                    p->epoch, p->max_epochs, p->step, p->total_steps, p->train_loss,
                    p->lr_backbone, p->lr_heads, p->elapsed_s, p->eta_s / 60, left);
        return;
    }
    fm_log_info("epoch %d/%d done: train loss %.4f  val loss %.4f  age MAE %.3f RMSE %.3f  "
                "gender %.2f%%  race %.2f%%  (best epoch %d; %.0f s, ETA %.0f min)%s",
                p->epoch, p->max_epochs, p->train_loss, p->val_loss, p->val_age_mae,
                p->val_age_rmse, 100 * p->val_gender_acc, 100 * p->val_race_acc,
                p->best_epoch, p->elapsed_s, p->eta_s / 60, left);
}

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

/* What the command line asks for besides the trainer's options. */
typedef struct ft_args {
    train_data_opts data;
    const char *out_path, *heads_path, *landmarks, *teacher;
    int jobs, threads, limit;
    int optimizer, schedule; /* fm_ft_optimizer, fm_ft_schedule */
} ft_args;

/* Everything one run holds. */
typedef struct ft_run {
    fm_trainset set;
    fm_ft_faces faces;
    fm_ft_data data;
    fm_model *base;
    fm_finetune *ft;
    fm_ft_soft *soft; /* the teacher's answers for the training faces (--teacher) */
} ft_run;

static void run_free(ft_run *r)
{
    fm_finetune_free(&r->ft);
    fm_model_close(&r->base);
    fm_ft_data_free(&r->data);
    fm_ft_faces_free(&r->faces);
    fm_trainset_free(&r->set);
    free(r->soft);
}

/* --teacher: the answers of `facemill eval --save-results` for the training faces,
 * found by file name; faces it has no face for train on their labels alone. */
static fm_status attach_teacher(ft_run *r, const char *path, double weight, fm_error *err)
{
    const int n = r->set.n, nt = r->data.train.n;
    fm_eval_item *items = calloc((size_t)n + 1, sizeof *items);
    unsigned char *found = calloc((size_t)n + 1, 1);
    r->soft = calloc((size_t)nt + 1, sizeof *r->soft);
    if (!items || !found || !r->soft) {
        free(items);
        free(found);
        return fm_error_set(err, FM_ERR_NOMEM, "--teacher: out of memory");
    }
    int got = fm_eval_read_saved(path, n, (const char *const *)r->set.paths, items, found, err);
    int used = 0, mismatch = 0;
    for (int i = 0; got >= 0 && i < n; i++) /* any image of the set, held out or not */
        if (found[i] && (items[i].truth.age != r->set.labels[i].age ||
                         items[i].truth.gender != r->set.labels[i].gender ||
                         items[i].truth.race != r->set.labels[i].race))
            mismatch++;
    for (int k = 0; got >= 0 && !mismatch && k < nt; k++) {
        fm_ft_image *im = &r->data.images[k]; /* the training faces come first */
        const int i = im->source;
        if (!found[i] || !items[i].detected)
            continue;
        const fm_eval_item *t = &items[i];
        fm_ft_soft *s = &r->soft[k];
        s->age = t->age;
        s->age_std = t->age_std;
        memcpy(s->gender, t->gender_probs, sizeof s->gender);
        memcpy(s->race, t->race_probs, sizeof s->race);
        im->soft = s;
        used++;
    }
    free(items);
    free(found);
    if (got < 0)
        return err ? err->code : FM_ERR_FORMAT;
    if (mismatch)
        return fm_error_set(err, FM_ERR_INVALID,
                            "--teacher %s: %d image(s) carry other labels than the training "
                            "set's: not this data's results", path, mismatch);
    if (used == 0)
        return fm_error_set(err, FM_ERR_INVALID,
                            "--teacher %s: no answers for any of the %d training faces", path,
                            nt);
    fm_log_info("teacher %s: answers for %d of the %d training faces (weight %g; the others "
                "train on their labels alone)", path, used, nt, weight);
    return FM_OK;
}

/* The base backbone and the trainer first, so bad options fail before the long part;
 * then the images and their faces. */
static fm_status prepare(ft_run *r, const fm_config *c, const ft_args *x,
                         const fm_ft_opts *o, fm_error *err)
{
    fm_status st;
    const train_data_opts *d = &x->data;
    if ((st = fm_trainset_open(&r->set, d->train_dir, d->val_dir, d->holdout, x->limit,
                               err)) ||
        (st = fm_trainset_check(&r->set, err)))
        return st;
    if (strchr(c->embed.backbone, ','))
        return fm_error_set(err, FM_ERR_INVALID,
                            "embed.backbone '%s' is a list; fine-tuning starts from one "
                            "backbone", c->embed.backbone);
    if ((st = fm_nn_set_threads(x->threads, err)) ||
        (st = fm_model_open(&r->base, c->embed.backbone, 0, err)) ||
        (st = fm_finetune_new(&r->ft, r->base, o, err)) ||
        (st = fm_ft_faces_find(&r->faces, c, &r->set, x->landmarks, x->jobs, err)) ||
        (st = fm_ft_data_load(&r->data, c, &r->set, &r->faces, err)))
        return st;
    fm_log_info("%d images: %d without a face; training on %d faces, early stopping on %d "
                "(%s); blocks from %s train", r->set.n, r->data.no_face, r->data.train.n,
                r->data.val.n, d->val_dir ? d->val_dir : "held-out share of --train",
                fm_ft_block_name(o->train_from));
    return FM_OK;
}

/* Trains (Ctrl-C or SIGTERM checkpoints and stops) and calibrates the kept heads. */
static fm_status train(ft_run *r, fm_ft_progress *best, fm_error *err)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fm_status st = fm_finetune_run(r->ft, &r->data.train, &r->data.val, r->data.id, best, err);
    if (st)
        return st;
    fm_log_info("kept epoch %d: val loss %.4f, age MAE %.3f RMSE %.3f, gender %.2f%%, "
                "race %.2f%%", best->best_epoch, best->val_loss, best->val_age_mae,
                best->val_age_rmse, 100 * best->val_gender_acc, 100 * best->val_race_acc);
    double temp[2], nll[4];
    if ((st = fm_finetune_calibrate(r->ft, &r->data.val, temp, nll, err)))
        return st;
    fm_log_info("calibrated on the %d held-out faces: gender temperature %.3f (loss %.4f -> "
                "%.4f), ethnicity %.3f (%.4f -> %.4f)", r->data.val.n, temp[0], nll[0],
                nll[1], temp[1], nll[2], nll[3]);
    return FM_OK;
}

int fm_cmd_finetune(int argc, char **argv)
{
    char command[4096];
    cli_command_line(command, sizeof command, argc, argv);
    ft_args x = {.data.holdout = 0.1, .jobs = 2, .threads = 2};
    fm_ft_opts o;
    fm_ft_opts_defaults(&o);
    const fm_ft_opts dflt = o;
    o.teacher_weight = -1; /* given or not: see below */
    /* likewise the options of one optimizer, schedule or selection */
    o.momentum = o.step_epochs = o.step_gamma = o.drop_below = -1;
    x.optimizer = (int)o.optimizer;
    x.schedule = (int)o.schedule;
    const cli_opt opts[] = {
        TRAIN_DATA_OPTS(x.data, "early-stopping and calibration images (default: a share "
                                "of --train)"),
        CLI_PATH("--output", 'o', "FILE", &x.out_path,
                 "the fine-tuned backbone to write (required)"),
        CLI_PATH("--heads", 0, "FILE", &x.heads_path,
                 "the heads to write, read with that backbone (required)"),
        CLI_PATH("--checkpoint", 0, "FILE", &o.checkpoint,
                 "resumable state, written every --checkpoint-steps steps and after each "
                 "epoch; a rerun of the same command resumes from it"),
        CLI_INT("--checkpoint-steps", 0, "N", 0, 1e9, &o.checkpoint_steps,
                "steps between checkpoints (default 200; 0: after each epoch only)"),
        CLI_PATH("--landmarks", 0, "FILE", &x.landmarks,
                 "cache of the detected landmarks (reused when the images and detector "
                 "settings match)"),
        CLI_INT("--jobs", 0, "N", 1, 64, &x.jobs, "detection processes (default 2)"),
        CLI_INT("--threads", 0, "N", 1, 1024, &x.threads,
                "OpenBLAS threads while training (default 2)"),
        CLI_CALL("--from", 0, "BLOCK",
                 "a block name: stem, conv32_1 .. conv256_down_out, or heads", take_block,
                 &o.train_from,
                 "first trained block: stem, conv32_1 .. conv256_down_out, heads (default "
                 "conv128_down; earlier blocks frozen)"),
        CLI_INT("--epochs", 0, "N", 1, 10000, &o.max_epochs, "most epochs (default 6)"),
        CLI_INT("--patience", 0, "N", 1, 10000, &o.patience,
                "epochs without improvement before stopping (default 3)"),
        CLI_INT("--batch", 0, "N", 1, 1024, &o.batch, "faces per step (default 32)"),
        CLI_ENUM("--optimizer", 0, optimizer_names, &x.optimizer,
                 "adamw (default) or sgd (with --momentum)"),
        CLI_NUM("--momentum", 0, "F", 0, 0.999, &o.momentum,
                "SGD momentum (default 0.9; with --optimizer sgd)"),
        CLI_NUM("--lr", 0, "F", 0, 1, &o.lr_backbone,
                "backbone learning rate (default 0.0001)"),
        CLI_ENUM("--lr-mode", 0, lr_mode_names, &o.lr_relative,
                 "absolute (default) or relative: each backbone layer's rate is --lr times "
                 "the RMS of its pretrained weights"),
        CLI_NUM("--lr-decay", 0, "F", 0.01, 1, &o.lr_decay,
                "layer-wise rates: each backbone block's rate is the next block's times F, "
                "so earlier blocks (generic features) move less; the last block trains at "
                "--lr (default 1: one rate)"),
        CLI_NUM("--lr-heads", 0, "F", 1e-7, 1, &o.lr_heads,
                "heads learning rate (default 0.001)"),
        CLI_NUM("--wd", 0, "F", 0, 1, &o.weight_decay, "decoupled weight decay (default 0.0001)"),
        CLI_ENUM("--schedule", 0, schedule_names, &x.schedule,
                 "cosine (default) or step (--step-epochs, --step-gamma)"),
        CLI_NUM("--step-epochs", 0, "E", 0.01, 1e4, &o.step_epochs,
                "step schedule: epochs between decays (default 2; with --schedule step)"),
        CLI_NUM("--step-gamma", 0, "F", 1e-4, 1, &o.step_gamma,
                "step schedule: the factor of each decay (default 0.1; with --schedule "
                "step)"),
        CLI_NUM("--warmup", 0, "E", 0, 1e4, &o.warmup_epochs, "warm-up epochs (default 0.3)"),
        CLI_INT("--hidden", 0, "N", 1, 65536, &o.hidden, "shared layer width (default 256)"),
        CLI_NUM("--dropout", 0, "F", 0, 0.95, &o.dropout, "on the shared layer (default 0.3)"),
        CLI_NUM("--age-sigma", 0, "F", 0, 30, &o.age_sigma,
                "Gaussian age target spread, years (default 2)"),
        CLI_NUM("--age-weight", 0, "F", 0.01, 100, &o.age_weight,
                "weight of the age loss (default 1)"),
        CLI_NUM("--gender-weight", 0, "F", 0.01, 100, &o.gender_weight,
                "weight of the gender loss (default 1)"),
        CLI_NUM("--ethnicity-weight", 0, "F", 0.01, 100, &o.race_weight,
                "weight of the ethnicity loss (default 1)"),
        CLI_NUM("--label-smoothing", 0, "F", 0, 0.5, &o.label_smoothing,
                "gender and ethnicity targets 1 - F on the label plus F / classes on each "
                "class (default 0)"),
        CLI_NUM("--drop-hardest", 0, "F", 0, 0.5, &o.drop_hardest,
                "in each batch, up to the share F of faces with the highest gender loss "
                "left out of it, and likewise for ethnicity: against mislabelled faces "
                "(default 0)"),
        CLI_NUM("--drop-below", 0, "P", 0.001, 1, &o.drop_below,
                "with --drop-hardest, only faces whose label the network gives less than "
                "P may be left out (default 1: any)"),
        CLI_NUM("--align-zoom", 0, "F", 0.5, 1.5, &o.align_zoom,
                "the base's alignment template scaled by F about the chip's centre "
                "(default 1; below 1 the face is smaller and the chip holds more hair and "
                "surroundings); the trained backbone keeps it"),
        CLI_ENUM("--flip", 0, cli_off_on, &o.flip, "random mirror images (default on)"),
        CLI_NUM("--shift", 0, "PX", 0, 64, &o.shift_px, "alignment jitter, pixels (default 4)"),
        CLI_NUM("--scale", 0, "F", 0, 0.49, &o.scale_jitter,
                "alignment jitter, scale (default 0.05)"),
        CLI_NUM("--rotate", 0, "DEG", 0, 45, &o.rotate_deg,
                "alignment jitter, degrees (default 5)"),
        CLI_NUM("--brightness", 0, "V", 0, 255, &o.brightness,
                "photometric jitter, pixel offset (default 16)"),
        CLI_NUM("--contrast", 0, "F", 0, 0.99, &o.contrast,
                "photometric jitter, gain (default 0.15)"),
        CLI_NUM("--degrade", 0, "P", 0, 1, &o.degrade,
                "share of training faces given one damage of the robustness suite "
                "(small, recompressed, blurred, gray, turned, dark or bright, mouth and "
                "chin hidden), drawn at random (default 0)"),
        CLI_CALL("--degrade-kinds", 0, "LIST",
                 "a comma-separated list of down, jpeg, blur, gray, rot, exposure, occlude, "
                 "erase",
                 take_damages, &o.degrade_kinds,
                 "the damages --degrade draws from, comma-separated: down, jpeg, blur, "
                 "gray, rot, exposure, occlude, and erase (a random rectangle, only when "
                 "named; default the seven of the suite; needs --degrade)"),
        CLI_PATH("--teacher", 0, "RESULTS.jsonl", &x.teacher,
                 "distil: train towards a teacher's answers too, as `facemill eval --data "
                 "DIR --save-results RESULTS.jsonl` wrote them for the training images "
                 "(e.g. with an ensemble in embed.backbone and heads.model)"),
        CLI_NUM("--teacher-weight", 0, "W", 0, 1, &o.teacher_weight,
                "share of the teacher's answers in the targets, the labels' the rest "
                "(default 0.5 with --teacher)"),
        CLI_PATH("--init-heads", 0, "FILE", &o.init_heads,
                 "start from these heads (a trained heads file, e.g. the default model's) "
                 "instead of new ones; usually with --head-epochs 0"),
        CLI_NUM("--head-epochs", 0, "E", 0, 1e4, &o.head_epochs,
                "epochs the heads train alone before the backbone joins (default 1)"),
        CLI_INT("--seed", 0, "N", 0, 9007199254740992.0, &o.seed, "random seed (default 1)"),
        CLI_INT("--limit", 0, "N", 1, 1e9, &x.limit,
                "use only the first N training images (by name)"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    if (!x.data.train_dir || !x.out_path || !x.heads_path)
        return cli_usage_error(&cmd, "%s", !x.data.train_dir ? "--train DIR is required"
                                           : !x.out_path ? "-o BACKBONE.fmm is required"
                                                         : "--heads HEADS.fmm is required");
    /* the two files are written one after the other: the same file would hold only
     * the heads, and a checkpoint written over either would be lost with it */
    if (cli_same_file(x.out_path, x.heads_path))
        return cli_usage_error(&cmd, "-o %s and --heads %s are the same file", x.out_path,
                               x.heads_path);
    if (o.checkpoint && (cli_same_file(o.checkpoint, x.out_path) ||
                         cli_same_file(o.checkpoint, x.heads_path)))
        return cli_usage_error(&cmd, "--checkpoint %s is the same file as %s", o.checkpoint,
                               cli_same_file(o.checkpoint, x.out_path) ? "-o" : "--heads");
    if (!x.teacher && o.teacher_weight >= 0)
        return cli_usage_error(&cmd, "--teacher-weight needs --teacher");
    if (o.momentum >= 0 && x.optimizer != FM_FT_SGD)
        return cli_usage_error(&cmd, "--momentum needs --optimizer sgd");
    if ((o.step_epochs >= 0 || o.step_gamma >= 0) && x.schedule != FM_FT_STEP)
        return cli_usage_error(&cmd, "%s needs --schedule step",
                               o.step_epochs >= 0 ? "--step-epochs" : "--step-gamma");
    if (o.drop_below >= 0 && !(o.drop_hardest > 0))
        return cli_usage_error(&cmd, "--drop-below needs --drop-hardest F above 0");
    if (o.momentum < 0) /* not given */
        o.momentum = dflt.momentum;
    if (o.step_epochs < 0)
        o.step_epochs = dflt.step_epochs;
    if (o.step_gamma < 0)
        o.step_gamma = dflt.step_gamma;
    if (o.drop_below < 0)
        o.drop_below = dflt.drop_below;
    if (o.degrade_kinds && !(o.degrade > 0))
        return cli_usage_error(&cmd, "--degrade-kinds needs --degrade P above 0 (the share "
                                     "of faces damaged)");
    if (fm_cmd_blas_apply(cmd.name, &c) != 0)
        return CLI_EXIT_FAILURE;
    char teacher_sha[65];
    if (!x.teacher)
        o.teacher_weight = 0;
    else {
        fm_error e = {0};
        if (fm_sha256_file(x.teacher, teacher_sha, &e) != FM_OK)
            return cli_fail(&cmd, "--teacher: %s", fm_error_text(&e));
        if (o.teacher_weight < 0) /* not given */
            o.teacher_weight = 0.5;
        o.teacher_id = teacher_sha;
    }
    /* --init-heads: a model name like the others, through the search path */
    char init_heads[4096];
    if (o.init_heads) {
        fm_model_dirs dirs;
        fm_error e = {0};
        if (fm_model_dirs_init(&dirs, c.models.dir, &e) != FM_OK ||
            fm_model_find(&dirs, "--init-heads", o.init_heads, init_heads, sizeof init_heads,
                          &e) != FM_OK)
            return cli_fail(&cmd, "%s", fm_error_text(&e));
        o.init_heads = init_heads;
    }
    o.optimizer = (fm_ft_optimizer)x.optimizer;
    o.schedule = (fm_ft_schedule)x.schedule;
    o.progress = on_progress;
    o.ctx = &o;
    o.progress_steps = 50;
    o.stop = &stop_requested;
    fm_error err = {0};
    /* the detector and the base backbone through the model search path */
    if (fm_config_resolve_models(&c, FM_RESOLVE_DETECTOR | FM_RESOLVE_BACKBONE, &err) != FM_OK)
        return cli_fail(&cmd, "%s", fm_error_text(&err));
    char commit[256]; /* the code that trains, as it is now (the tree may change later) */
    source_commit(commit, sizeof commit);

    ft_run r;
    fm_ft_progress best;
    memset(&r, 0, sizeof r);
    fm_status st = prepare(&r, &c, &x, &o, &err);
    if (st == FM_OK && x.teacher)
        st = attach_teacher(&r, x.teacher, o.teacher_weight, &err);
    if (st == FM_OK)
        st = train(&r, &best, &err);
    if (st == FM_OK) {
        fm_ft_lineage lin = {r.base, c.embed.backbone, &o, &r.set, command, commit};
        st = fm_finetune_save(r.ft, &best, &r.data, &lin, x.out_path, x.heads_path, &err);
    }
    run_free(&r);
    if (st == FM_ERR_INTERRUPTED)
        return cli_fail(&cmd, "%s%s", fm_error_text(&err),
                        o.checkpoint ? "; run the same command again to resume"
                                     : " (without --checkpoint there is nothing to resume from)");
    return st == FM_OK ? CLI_EXIT_OK : cli_fail(&cmd, "%s", fm_error_text(&err));
}
