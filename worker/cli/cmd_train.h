/* cmd_train.h - what the two forms of `facemill train` share (cmd_train.c: heads on a
 * frozen backbone; cmd_finetune.c: fine-tuning the backbone): the options that name
 * the data, so both read them alike. Program code, not part of libfacemill. */
#ifndef FACEMILL_CMD_TRAIN_H
#define FACEMILL_CMD_TRAIN_H

#include "cli_opts.h"

/* The data of a run as the options give it (fm_trainset_open's arguments). */
typedef struct train_data_opts {
    const char *train_dir, *val_dir;
    double holdout;
} train_data_opts;

/* The option lines of --train, --val (val_help: what the held-out images are for)
 * and --holdout, into d. */
#define TRAIN_DATA_OPTS(d, val_help)                                                    \
    CLI_PATH("--train", 0, "DIR", &(d).train_dir, "training images (required)"),        \
    CLI_PATH("--val", 0, "DIR", &(d).val_dir, (val_help)),                              \
    CLI_NUM("--holdout", 0, "F", 0.001, 0.9, &(d).holdout,                              \
            "share of --train held out when no --val is given (default 0.1, chosen by " \
            "file-name hash)")

#endif
