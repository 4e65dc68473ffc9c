/* modelpath.h - where model files are found: one search path, the same in every
 * program.
 *
 * Why it exists: model settings (models.dir, embed.backbone, heads.model) name files
 * that must be found whatever the current directory is: facemill runs from photo
 * folders, cron and systemd, from its build tree and from an installed or relocated
 * prefix. A relative name resolved against the current directory works only from the
 * root of a checkout.
 *
 * The rule. A model name is
 *  - an absolute path: used as given;
 *  - "./NAME" or "../NAME": relative to the current directory, as written;
 *  - any other relative name (a file name, or a path such as "samples/x.jpg"): looked
 *    up in each directory of the search path, in order, and the first that exists is
 *    used.
 *
 * The search path, in order (directories that do not exist are skipped when looking
 * up, and still named in the error that says a model is missing):
 *  1. models.dir, when it is set (a relative models.dir is itself looked up as a
 *     directory in the rest of the path);
 *  2. each directory of $FACEMILL_MODELS (colon-separated; relative entries are
 *     relative to the current directory);
 *  3. $XDG_DATA_HOME/facemill/models (default ~/.local/share/facemill/models), where
 *     `facemill models fetch` writes when the install's directory is not writable;
 *  4. the install's data directory, BIN/../share/facemill/models, BIN being the
 *     directory of the running executable: a relocated install or an unpacked
 *     package works without configuration;
 *  5. the source tree's models/cache and models/, when the executable runs from this
 *     build tree's bin/ directory;
 *  6. the current directory (last, so that a stray file in a photo folder never
 *     shadows an installed model).
 *
 * Thread safety: the functions read the environment and /proc/self/exe; call them
 * before starting threads (every caller opens its models at start-up).
 */
#ifndef FACEMILL_MODELPATH_H
#define FACEMILL_MODELPATH_H

#include "facemill/config.h"
#include "facemill/status.h"

#include <stddef.h>

#define FM_MODELS_ENV "FACEMILL_MODELS"
#define FM_MODEL_DIRS_MAX 24
#define FM_MODEL_PATH_MAX 4096

/* What `facemill models fetch` is called in messages that say a model is missing. */
#define FM_MODELS_FETCH_HINT "facemill models fetch"

typedef struct fm_model_dir {
    char path[FM_MODEL_PATH_MAX]; /* absolute */
    const char *origin;           /* "models.dir", "FACEMILL_MODELS", "XDG_DATA_HOME",
                                     "install", "source tree" or "current directory" */
} fm_model_dir;

typedef struct fm_model_dirs {
    int n;
    fm_model_dir d[FM_MODEL_DIRS_MAX];
} fm_model_dirs;

/* Builds the search path for models_dir (the models.dir setting; "" or NULL: not
 * set). A relative models_dir that is in none of the other directories is an error
 * (FM_ERR_NOT_FOUND) naming them. */
fm_status fm_model_dirs_init(fm_model_dirs *d, const char *models_dir, fm_error *err);

/* The absolute path of the model file `name` (see the rule above) in out. A name
 * found nowhere is FM_ERR_NOT_FOUND with one message naming every directory searched
 * and the command that fetches models; `what` (e.g. "heads.model") starts it. */
fm_status fm_model_find(const fm_model_dirs *d, const char *what, const char *name,
                        char *out, size_t size, fm_error *err);

/* Splits a comma-separated list of model names (spaces around a name are dropped)
 * into out; the number of names, or -1 for an empty name, a trailing comma, a name
 * too long or more than max names. */
int fm_model_split_list(const char *s, char out[][FM_CONFIG_STRING_MAX], int max);

/* Most names in a list (an ensemble's members). */
#define FM_MODEL_LIST_MAX 8

/* Resolves each comma-separated name of `list` (fm_model_split_list) with
 * fm_model_find and writes the absolute paths, comma-separated, to out. */
fm_status fm_model_find_list(const fm_model_dirs *d, const char *what, const char *list,
                             char *out, size_t size, fm_error *err);

/* Which model settings fm_config_resolve_models resolves. */
enum {
    FM_RESOLVE_DETECTOR = 1, /* models.dir: becomes the directory of mtcnn_pnet.fmm */
    FM_RESOLVE_BACKBONE = 2, /* embed.backbone */
    FM_RESOLVE_HEADS = 4,    /* heads.model (left empty when empty) */
    FM_RESOLVE_ALL = 7,
};

/* Rewrites the chosen model settings of c as absolute paths (see above). On error c
 * is unchanged. */
fm_status fm_config_resolve_models(fm_config *c, unsigned which, fm_error *err);

/* The directory of the running executable (absolute, no trailing slash), or "" when
 * /proc/self/exe cannot be read. */
const char *fm_exe_dir(void);

/* The install's data directory for models, BIN/../share/facemill/models (it need not
 * exist), in out; FM_ERR_NOT_FOUND when the executable's directory is unknown. */
fm_status fm_model_install_dir(char *out, size_t size, fm_error *err);

/* $XDG_DATA_HOME/facemill/models, or $HOME/.local/share/facemill/models, in out;
 * FM_ERR_NOT_FOUND when neither variable gives an absolute path. */
fm_status fm_model_user_dir(char *out, size_t size, fm_error *err);

/* The source tree (absolute) when the executable runs from this build tree's bin/
 * directory, else NULL. */
const char *fm_source_tree(void);

#endif /* FACEMILL_MODELPATH_H */
