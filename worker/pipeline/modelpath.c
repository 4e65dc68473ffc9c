/* modelpath.c - the model search path (see include/facemill/modelpath.h). */
#include "facemill/modelpath.h"
#include "facemill/detect.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Where this build tree is: its bin/ directory identifies a program running from it,
 * and then the source tree's models are searched too. */
#ifndef FACEMILL_SOURCE_DIR
#define FACEMILL_SOURCE_DIR ""
#endif
#ifndef FACEMILL_BINARY_DIR
#define FACEMILL_BINARY_DIR ""
#endif

static char exe_dir[FM_MODEL_PATH_MAX];
static int exe_dir_done;

const char *fm_exe_dir(void)
{
    if (!exe_dir_done) {
        exe_dir_done = 1;
        char buf[FM_MODEL_PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
        if (n > 0 && (size_t)n < sizeof buf - 1) {
            buf[n] = '\0';
            char *slash = strrchr(buf, '/');
            if (slash && slash != buf) {
                *slash = '\0';
                snprintf(exe_dir, sizeof exe_dir, "%s", buf);
            } else if (slash) {
                snprintf(exe_dir, sizeof exe_dir, "/");
            }
        }
    }
    return exe_dir;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Two paths name the same existing directory (by device and inode: symlinks, "..",
 * bind mounts). */
static int same_dir(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

const char *fm_source_tree(void)
{
    static int done;
    static const char *tree;
    if (!done) {
        done = 1;
        const char *dir = fm_exe_dir();
        char bin[FM_MODEL_PATH_MAX];
        if (dir[0] && FACEMILL_SOURCE_DIR[0] && FACEMILL_BINARY_DIR[0] &&
            snprintf(bin, sizeof bin, "%s/bin", FACEMILL_BINARY_DIR) < (int)sizeof bin &&
            same_dir(dir, bin) && is_dir(FACEMILL_SOURCE_DIR "/models"))
            tree = FACEMILL_SOURCE_DIR;
    }
    return tree;
}

/* Removes "/./", "//", a trailing "/" and "DIR/.." from an absolute path, lexically:
 * the path shown to users reads as the directory they would type. */
static void tidy(char *path)
{
    char out[FM_MODEL_PATH_MAX];
    size_t n = 0;
    const char *s = path;
    while (*s) {
        while (*s == '/')
            s++;
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 0)
            break;
        if (len == 1 && s[0] == '.') {
            /* nothing */
        } else if (len == 2 && s[0] == '.' && s[1] == '.') {
            while (n > 0 && out[n - 1] != '/')
                n--;
            if (n > 0)
                n--; /* the slash before the dropped component */
        } else if (n + 1 + len < sizeof out) {
            out[n++] = '/';
            memcpy(out + n, s, len);
            n += len;
        }
        s += len;
    }
    if (n == 0)
        out[n++] = '/';
    out[n] = '\0';
    memcpy(path, out, n + 1);
}

/* dir/name made absolute (against the current directory when dir is NULL and name is
 * relative) and tidied into out; 0, or -1 when it does not fit. */
static int join(char *out, size_t size, const char *dir, const char *name)
{
    char cwd[FM_MODEL_PATH_MAX];
    int n;
    if (name[0] == '/') {
        n = snprintf(out, size, "%s", name);
    } else if (dir) {
        n = snprintf(out, size, "%s/%s", dir, name);
    } else {
        if (!getcwd(cwd, sizeof cwd))
            return -1;
        n = snprintf(out, size, "%s/%s", cwd, name);
    }
    if (n < 0 || (size_t)n >= size)
        return -1;
    tidy(out);
    return 0;
}

static int explicit_relative(const char *name)
{
    return strncmp(name, "./", 2) == 0 || strncmp(name, "../", 3) == 0 ||
           strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
}

static void add(fm_model_dirs *d, const char *path, const char *origin)
{
    if (d->n >= FM_MODEL_DIRS_MAX || !path[0])
        return;
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->d[i].path, path) == 0 || same_dir(d->d[i].path, path))
            return;
    snprintf(d->d[d->n].path, sizeof d->d[d->n].path, "%s", path);
    d->d[d->n].origin = origin;
    d->n++;
}

fm_status fm_model_user_dir(char *out, size_t size, fm_error *err)
{
    const char *xdg = getenv("XDG_DATA_HOME");
    const char *home = getenv("HOME");
    int n = -1;
    if (xdg && xdg[0] == '/')
        n = snprintf(out, size, "%s/facemill/models", xdg);
    else if (home && home[0] == '/')
        n = snprintf(out, size, "%s/.local/share/facemill/models", home);
    if (n < 0 || (size_t)n >= size)
        return fm_error_set(err, FM_ERR_NOT_FOUND,
                            "no user data directory: neither XDG_DATA_HOME nor HOME is an "
                            "absolute path");
    tidy(out);
    return FM_OK;
}

fm_status fm_model_install_dir(char *out, size_t size, fm_error *err)
{
    const char *bin = fm_exe_dir();
    if (!bin[0] || join(out, size, bin, "../share/facemill/models") != 0)
        return fm_error_set(err, FM_ERR_NOT_FOUND,
                            "the running program's directory is unknown (/proc/self/exe)");
    return FM_OK;
}

/* Every directory but models.dir, in order. */
static void add_defaults(fm_model_dirs *d)
{
    char buf[FM_MODEL_PATH_MAX];
    const char *env = getenv(FM_MODELS_ENV);
    if (env) {
        const char *s = env;
        while (*s) {
            const char *e = strchr(s, ':');
            size_t len = e ? (size_t)(e - s) : strlen(s);
            if (len > 0 && len < sizeof buf) {
                char entry[FM_MODEL_PATH_MAX];
                memcpy(entry, s, len);
                entry[len] = '\0';
                if (join(buf, sizeof buf, NULL, entry) == 0)
                    add(d, buf, FM_MODELS_ENV);
            }
            if (!e)
                break;
            s = e + 1;
        }
    }
    if (fm_model_user_dir(buf, sizeof buf, NULL) == FM_OK)
        add(d, buf, "XDG_DATA_HOME");
    if (fm_model_install_dir(buf, sizeof buf, NULL) == FM_OK)
        add(d, buf, "install");
    const char *tree = fm_source_tree();
    if (tree) {
        if (join(buf, sizeof buf, tree, "models/cache") == 0)
            add(d, buf, "source tree");
        if (join(buf, sizeof buf, tree, "models") == 0)
            add(d, buf, "source tree");
    }
    if (getcwd(buf, sizeof buf))
        add(d, buf, "current directory");
}

/* "A, B, C" of the directories of d into out (cut with "..." when long). */
static void list_dirs(const fm_model_dirs *d, char *out, size_t size)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < d->n && n + 4 < size; i++) {
        int m = snprintf(out + n, size - n, "%s%s", i ? ", " : "", d->d[i].path);
        if (m < 0 || (size_t)m >= size - n) {
            snprintf(out + (size > 4 ? size - 4 : 0), 4, "...");
            return;
        }
        n += (size_t)m;
    }
}

fm_status fm_model_dirs_init(fm_model_dirs *d, const char *models_dir, fm_error *err)
{
    if (!d)
        return fm_error_set(err, FM_ERR_INVALID, "fm_model_dirs_init: NULL argument");
    fm_model_dirs rest = {0};
    add_defaults(&rest);
    d->n = 0;
    if (models_dir && models_dir[0]) {
        char buf[FM_MODEL_PATH_MAX];
        int found = 0;
        if (models_dir[0] == '/' || explicit_relative(models_dir)) {
            if (join(buf, sizeof buf, NULL, models_dir) != 0)
                return fm_error_set(err, FM_ERR_LIMIT, "models.dir: path too long");
            found = 1;
        } else {
            for (int i = 0; i < rest.n && !found; i++)
                if (join(buf, sizeof buf, rest.d[i].path, models_dir) == 0 && is_dir(buf))
                    found = 1;
        }
        if (!found) {
            char dirs[FM_ERROR_MSG_MAX];
            list_dirs(&rest, dirs, sizeof dirs);
            return fm_error_set(err, FM_ERR_NOT_FOUND,
                                "models.dir '%s' is not a directory in any of: %s",
                                models_dir, dirs);
        }
        add(d, buf, "models.dir");
    }
    for (int i = 0; i < rest.n; i++)
        add(d, rest.d[i].path, rest.d[i].origin);
    return FM_OK;
}

fm_status fm_model_find(const fm_model_dirs *d, const char *what, const char *name,
                        char *out, size_t size, fm_error *err)
{
    if (!d || !name || !out || size == 0)
        return fm_error_set(err, FM_ERR_INVALID, "fm_model_find: NULL argument");
    if (!what)
        what = "model";
    if (!name[0])
        return fm_error_set(err, FM_ERR_INVALID, "%s: empty model name", what);
    if (name[0] == '/' || explicit_relative(name)) {
        if (join(out, size, NULL, name) != 0)
            return fm_error_set(err, FM_ERR_LIMIT, "%s: path too long: %s", what, name);
        return FM_OK;
    }
    for (int i = 0; i < d->n; i++) {
        if (join(out, size, d->d[i].path, name) == 0 && exists(out))
            return FM_OK;
    }
    out[0] = '\0';
    char dirs[FM_ERROR_MSG_MAX];
    list_dirs(d, dirs, sizeof dirs);
    return fm_error_set(err, FM_ERR_NOT_FOUND,
                        "%s: model file '%s' not found in %s (fetch the models with `%s`, "
                        "or name a directory in %s)",
                        what, name, dirs, FM_MODELS_FETCH_HINT, FM_MODELS_ENV);
}

int fm_model_split_list(const char *s, char out[][FM_CONFIG_STRING_MAX], int max)
{
    int n = 0;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        while (len > 0 && (*s == ' ' || *s == '\t')) {
            s++;
            len--;
        }
        while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
            len--;
        if (len == 0 || len >= FM_CONFIG_STRING_MAX || n == max)
            return -1;
        memcpy(out[n], s, len);
        out[n++][len] = '\0';
        if (!e)
            break;
        s = e + 1;
        if (!*s)
            return -1; /* a trailing comma */
    }
    return n;
}

fm_status fm_model_find_list(const fm_model_dirs *d, const char *what, const char *list,
                             char *out, size_t size, fm_error *err)
{
    if (!list || !out || size == 0)
        return fm_error_set(err, FM_ERR_INVALID, "fm_model_find_list: NULL argument");
    char names[FM_MODEL_LIST_MAX][FM_CONFIG_STRING_MAX];
    int n = fm_model_split_list(list, names, FM_MODEL_LIST_MAX);
    if (n < 1)
        return fm_error_set(err, FM_ERR_INVALID,
                            "%s '%s': one file name, or up to %d separated by commas", what,
                            list, FM_MODEL_LIST_MAX);
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        char path[FM_MODEL_PATH_MAX];
        fm_status st = fm_model_find(d, what, names[i], path, sizeof path, err);
        if (st != FM_OK)
            return st;
        int m = snprintf(out + used, size - used, "%s%s", i ? "," : "", path);
        if (m < 0 || (size_t)m >= size - used)
            return fm_error_set(err, FM_ERR_LIMIT,
                                "%s: the resolved paths are longer than %zu bytes", what,
                                size - 1);
        used += (size_t)m;
    }
    return FM_OK;
}

fm_status fm_config_resolve_models(fm_config *c, unsigned which, fm_error *err)
{
    if (!c)
        return fm_error_set(err, FM_ERR_INVALID, "fm_config_resolve_models: NULL argument");
    fm_model_dirs *d = malloc(sizeof *d);
    if (!d)
        return fm_error_set(err, FM_ERR_NOMEM, "model search path: out of memory");
    char dir[FM_CONFIG_STRING_MAX] = "", backbone[FM_CONFIG_STRING_MAX] = "",
         heads[FM_CONFIG_STRING_MAX] = "";
    char path[FM_MODEL_PATH_MAX];
    fm_status st = fm_model_dirs_init(d, c->models.dir, err);
    if (st == FM_OK && (which & FM_RESOLVE_DETECTOR)) {
        st = fm_model_find(d, "MTCNN model (models.dir)", FM_DETECT_PNET_FILE, path,
                           sizeof path, err);
        if (st == FM_OK) {
            char *slash = strrchr(path, '/');
            if (slash)
                *slash = '\0';
            if (snprintf(dir, sizeof dir, "%s", path[0] ? path : "/") >= (int)sizeof dir)
                st = fm_error_set(err, FM_ERR_LIMIT, "models.dir: path too long");
        }
    }
    if (st == FM_OK && (which & FM_RESOLVE_BACKBONE))
        st = fm_model_find_list(d, "embed.backbone", c->embed.backbone, backbone,
                                sizeof backbone, err);
    if (st == FM_OK && (which & FM_RESOLVE_HEADS) && c->heads.model[0])
        st = fm_model_find_list(d, "heads.model", c->heads.model, heads, sizeof heads, err);
    free(d);
    if (st != FM_OK)
        return st;
    if (which & FM_RESOLVE_DETECTOR)
        memcpy(c->models.dir, dir, sizeof dir);
    if (which & FM_RESOLVE_BACKBONE)
        memcpy(c->embed.backbone, backbone, sizeof backbone);
    if ((which & FM_RESOLVE_HEADS) && c->heads.model[0])
        memcpy(c->heads.model, heads, sizeof heads);
    return FM_OK;
}
