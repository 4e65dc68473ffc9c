/* cmd_train.c - `facemill train --freeze`: trains the attribute heads on frozen
 * backbone features of a folder of UTKFace-named images (`facemill train` without
 * --freeze fine-tunes the backbone: cmd_finetune.c).
 *
 * This file reads the options and takes the steps of train.h in order: list and
 * split the images (--val DIR, or a fixed share of --train chosen by a hash of the
 * file name); the production pipeline's features of every image in --jobs processes,
 * or those of --cache when it was made with the same backbone, settings and image
 * list; the sets of faces; training and the heads file with its lineage.
 */
#include "cli_opts.h"
#include "cmd_blas.h"
#include "cmd_train.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "facemill/train.h"
#include "facemill/trainset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cli_cmd cmd = {
    "train", "--freeze --train DIR -o OUT.fmm [options]", 0, 0,
    "Trains the age, gender and ethnicity heads on frozen backbone features of the\n"
    "UTKFace-named images (AGE_GENDER_RACE_*.jpg) in DIR, and writes a heads model.\n"
    "Detection, alignment and the backbone are the production pipeline's (detect.*,\n"
    "embed.*, models.dir); detect.pad defaults to 0.25 here (tight face crops).\n"
    "Progress goes to stderr.\n",
    NULL, fm_utk_config_defaults};

/* Indexed by fm_backbone_output. */
static const char *const feature_names[] = {"embedding", "pooled", NULL};
_Static_assert(FM_BACKBONE_EMBEDDING == 0 && FM_BACKBONE_POOLED == 1,
               "feature_names is indexed by fm_backbone_output");

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

/* --hidden W[,W...] into o: "0" for none. */
static int take_hidden(void *target, const char *s)
{
    fm_train_opts *o = target;
    int hidden[FM_HEADS_MAX_LAYERS], n = 0;
    if (strcmp(s, "0") != 0)
        while (*s) {
            char *end;
            long v = strtol(s, &end, 10);
            if (end == s || *s == '-' || *s == '+' || *s == ' ' || v < 1 || v > 65536 ||
                n == FM_HEADS_MAX_LAYERS)
                return -1;
            hidden[n++] = (int)v;
            s = end;
            if (*s == ',' && s[1])
                s++;
            else if (*s)
                return -1;
        }
    o->n_hidden = n;
    memcpy(o->hidden, hidden, (size_t)n * sizeof *hidden);
    return 0;
}

/* What the command line asks for besides the trainer's options. */
typedef struct heads_args {
    train_data_opts data;
    int freeze, extract_only, jobs, flip, feature;
    const char *out_path, *cache;
} heads_args;

/* Everything one run holds. */
typedef struct heads_run {
    fm_trainset set;
    fm_heads_features features;
    fm_train_set train, val;
} heads_run;

/* The features, then (unless only they were asked for) the sets and the heads. */
static fm_status run(heads_run *r, const fm_config *c, const heads_args *x,
                     const fm_train_opts *o, const char *command, fm_error *err)
{
    fm_status st;
    const train_data_opts *d = &x->data;
    if ((st = fm_trainset_open(&r->set, d->train_dir, d->val_dir, d->holdout, 0, err)))
        return st;
    if ((st = fm_trainset_check(&r->set, err)) ||
        (st = fm_heads_features_gather(&r->features, c, &r->set, x->cache, x->jobs, err)) ||
        x->extract_only)
        return st;
    const fm_backbone_output feature = (fm_backbone_output)x->feature;
    if ((st = fm_heads_features_sets(&r->features, &r->set, feature, x->flip, &r->train,
                                     &r->val, err)))
        return st;
    fm_log_info("training on %d faces, early stopping on %d (%s), feature %s (%d), flip %s",
                r->train.n, r->val.n, d->val_dir ? d->val_dir : "held-out share of --train",
                fm_backbone_output_name(feature), r->train.dim, x->flip ? "on" : "off");
    if (r->train.n < 1 || r->val.n < 1)
        return fm_error_set(err, FM_ERR_INVALID, "no faces to %s",
                            r->train.n < 1 ? "train on" : "validate on");
    fm_heads_lineage lin = {&r->features, feature, x->flip, &r->set, command};
    return fm_heads_train_save(x->out_path, &r->train, &r->val, o, &lin, NULL, err);
}

int fm_cmd_train(int argc, char **argv)
{
    int frozen = 0;
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        frozen |= strcmp(argv[i], "--freeze") == 0;
    if (!frozen)
        return fm_cmd_finetune(argc, argv); /* cmd_finetune.c */
    char command[4096];
    cli_command_line(command, sizeof command, argc, argv);
    heads_args x = {.data.holdout = 0.1, .jobs = 2, .flip = 1, .feature = FM_BACKBONE_POOLED};
    fm_train_opts o;
    fm_train_opts_defaults(&o);
    o.progress = on_epoch;
    const cli_opt opts[] = {
        CLI_FLAG("--freeze", 0, &x.freeze, "train the heads only, backbone frozen (required)"),
        TRAIN_DATA_OPTS(x.data, "early-stopping images (default: a share of --train)"),
        CLI_PATH("--output", 'o', "FILE",  &x.out_path,
                 "the heads model to write (atomically; required unless --extract-only)"),
        CLI_PATH("--cache", 0, "FILE", &x.cache,
                 "feature cache: reused when backbone, settings and image list match, "
                 "written otherwise"),
        CLI_INT("--jobs", 0, "N", 1, 64, &x.jobs, "feature extraction processes (default 2)"),
        CLI_FLAG("--extract-only", 0, &x.extract_only, "stop after extraction (with --cache)"),
        CLI_ENUM("--feature", 0, feature_names, &x.feature,
                 "backbone output the heads read (default pooled)"),
        CLI_ENUM("--flip", 0, cli_off_on, &x.flip,
                 "average features over face and mirror image (default on)"),
        CLI_CALL("--hidden", 0, "W[,W...]",
                 "0, or up to 8 widths from 1 to 65536 separated by commas", take_hidden, &o,
                 "shared layer widths (default 512; 0 = none)"),
        CLI_NUM("--dropout", 0, "F", 0, 0.95, &o.dropout,
                "dropout on shared layers while training (default 0.5)"),
        CLI_NUM("--lr", 0, "F", 1e-7, 1, &o.lr, "Adam learning rate (default 0.001)"),
        CLI_NUM("--wd", 0, "F", 0, 1, &o.weight_decay, "decoupled weight decay (default 0.0001)"),
        CLI_NUM("--age-sigma", 0, "F", 0, 30, &o.age_sigma,
                "Gaussian age target spread in years; 0 = one-hot (default 2)"),
        CLI_NUM("--age-weight", 0, "F", 0.01, 100, &o.age_weight,
                "weight of the age loss against gender and ethnicity (default 1)"),
        CLI_INT("--batch", 0, "N", 1, 65536, &o.batch, "mini-batch size (default 128)"),
        CLI_INT("--epochs", 0, "N", 1, 100000, &o.max_epochs, "most epochs (default 100)"),
        CLI_INT("--patience", 0, "N", 1, 100000, &o.patience,
                "epochs without improvement before stopping (default 10)"),
        CLI_INT("--seed", 0, "N", 0, 9007199254740992.0, &o.seed, "random seed (default 1)"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    if (!x.data.train_dir || (!x.out_path && !x.extract_only) || (x.extract_only && !x.cache))
        return cli_usage_error(&cmd, "%s",
                               !x.data.train_dir ? "--train DIR is required"
                               : !x.extract_only ? "-o OUT.fmm is required"
                                                 : "--extract-only needs --cache");
    if (fm_cmd_blas_apply(cmd.name, &c) != 0)
        return CLI_EXIT_FAILURE;
    heads_run r;
    fm_error err = {0};
    memset(&r, 0, sizeof r);
    fm_status st = run(&r, &c, &x, &o, command, &err);
    fm_train_set_free(&r.train);
    fm_train_set_free(&r.val);
    fm_heads_features_free(&r.features);
    fm_trainset_free(&r.set);
    return st == FM_OK ? CLI_EXIT_OK : cli_fail(&cmd, "%s", fm_error_text(&err));
}
