/* test_modelpath.c - the model search path (include/facemill/modelpath.h):
 *  - the order: models.dir, FACEMILL_MODELS (in its order), XDG_DATA_HOME (or
 *    HOME/.local/share), the install's BIN/../share/facemill/models, the current
 *    directory last; the source tree only for programs in the build tree's bin/;
 *  - absolute and ./ names as given; a relative models.dir looked up as a directory;
 *  - a missing model: FM_ERR_NOT_FOUND, one message naming every directory and the
 *    fetch command;
 *  - fm_config_resolve_models: models.dir becomes the MTCNN files' directory, lists
 *    resolve member by member, an error leaves the configuration unchanged.
 * Works in a scratch directory of its own; needs no model weights. */
#define _POSIX_C_SOURCE 200809L
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/modelpath.h"
#include "fm_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

static void touch(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *f = fopen(path, "w");
    CHECK_MSG(f != NULL, "create %s", path);
    if (f)
        fclose(f);
}

static void mk(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    CHECK_MSG(mkdir(path, 0755) == 0, "mkdir %s", path);
}

static const char *at(const char *rel)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", root, rel);
    return buf[k];
}

static int index_of(const fm_model_dirs *d, const char *path)
{
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->d[i].path, path) == 0)
            return i;
    return -1;
}

static void test_order(void)
{
    fm_model_dirs d;
    fm_error err = {0};
    char env[1024];
    snprintf(env, sizeof env, "%s:%s::relative", at("a"), at("b"));
    setenv(FM_MODELS_ENV, env, 1);
    setenv("XDG_DATA_HOME", at("xdg"), 1);
    CHECK(fm_model_dirs_init(&d, NULL, &err) == FM_OK);
    int ia = index_of(&d, at("a")), ib = index_of(&d, at("b"));
    int irel = index_of(&d, at("work/relative"));
    int ixdg = index_of(&d, at("xdg/facemill/models"));
    int icwd = index_of(&d, at("work"));
    char install[FM_MODEL_PATH_MAX];
    CHECK(fm_model_install_dir(install, sizeof install, &err) == FM_OK);
    int iinst = index_of(&d, install);
    CHECK_MSG(ia == 0 && ib == 1 && irel == 2 && ixdg == 3 && iinst == 4 && icwd == d.n - 1,
              "a %d b %d rel %d xdg %d install %d cwd %d of %d", ia, ib, irel, ixdg, iinst,
              icwd, d.n);
    CHECK(strcmp(d.d[0].origin, FM_MODELS_ENV) == 0 &&
          strcmp(d.d[3].origin, "XDG_DATA_HOME") == 0 &&
          strcmp(d.d[4].origin, "install") == 0 &&
          strcmp(d.d[d.n - 1].origin, "current directory") == 0);
    /* the install's directory is BIN/../share/facemill/models of this program */
    char want[FM_MODEL_PATH_MAX];
    snprintf(want, sizeof want, "%s", fm_exe_dir());
    char *slash = strrchr(want, '/');
    CHECK(slash != NULL);
    if (slash)
        snprintf(slash, sizeof want - (size_t)(slash - want), "/share/facemill/models");
    CHECK_MSG(strcmp(install, want) == 0, "install dir %s, want %s", install, want);
    /* this program lives in the build tree's tests/, not bin/: no source tree */
    CHECK(fm_source_tree() == NULL);
    for (int i = 0; i < d.n; i++)
        CHECK(strcmp(d.d[i].origin, "source tree") != 0);

    /* without XDG_DATA_HOME: HOME/.local/share */
    unsetenv("XDG_DATA_HOME");
    setenv("HOME", at("home"), 1);
    CHECK(fm_model_dirs_init(&d, NULL, &err) == FM_OK);
    CHECK(index_of(&d, at("home/.local/share/facemill/models")) == 3);
    /* neither: that entry is left out */
    unsetenv("HOME");
    CHECK(fm_model_dirs_init(&d, NULL, &err) == FM_OK);
    CHECK(index_of(&d, install) == 3);
    setenv("XDG_DATA_HOME", at("xdg"), 1);
}

static void test_find(void)
{
    fm_model_dirs d;
    fm_error err = {0};
    char path[FM_MODEL_PATH_MAX];
    CHECK(fm_model_dirs_init(&d, NULL, &err) == FM_OK);

    touch("b/m.fmm");
    CHECK(fm_model_find(&d, "embed.backbone", "m.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("b/m.fmm")) == 0);
    touch("a/m.fmm"); /* an earlier directory wins */
    CHECK(fm_model_find(&d, "embed.backbone", "m.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("a/m.fmm")) == 0);
    /* the current directory comes last: a stray copy shadows nothing */
    touch("work/m.fmm");
    CHECK(fm_model_find(&d, "embed.backbone", "m.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("a/m.fmm")) == 0);
    touch("work/only_here.fmm");
    CHECK(fm_model_find(&d, "x", "only_here.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("work/only_here.fmm")) == 0);
    /* ./ and ../ are relative to the current directory, as written */
    CHECK(fm_model_find(&d, "x", "./m.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("work/m.fmm")) == 0);
    CHECK(fm_model_find(&d, "x", "../b/m.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("b/m.fmm")) == 0);
    /* an absolute name is used as given, existing or not */
    CHECK(fm_model_find(&d, "x", "/nonexistent/x.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, "/nonexistent/x.fmm") == 0);
    /* sub-paths are looked up like names */
    mk("b/samples");
    touch("b/samples/s.jpg");
    CHECK(fm_model_find(&d, "x", "samples/s.jpg", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("b/samples/s.jpg")) == 0);

    /* missing: one message naming every directory and the fetch command */
    fm_status st = fm_model_find(&d, "heads.model", "nope.fmm", path, sizeof path, &err);
    CHECK(st == FM_ERR_NOT_FOUND);
    const char *m = fm_error_text(&err);
    CHECK_MSG(strstr(m, "heads.model") && strstr(m, "'nope.fmm'") && strstr(m, at("a")) &&
                  strstr(m, at("b")) && strstr(m, at("xdg/facemill/models")) &&
                  strstr(m, at("work")) && strstr(m, FM_MODELS_FETCH_HINT) &&
                  !strchr(m, '\n'),
              "message: %s", m);
    CHECK(fm_model_find(&d, "x", "", path, sizeof path, &err) == FM_ERR_INVALID);
    char small[8];
    CHECK(fm_model_find(&d, "x", "m.fmm", small, sizeof small, &err) == FM_ERR_NOT_FOUND);

    /* lists */
    touch("b/n.fmm");
    char want[3 * 1024];
    snprintf(want, sizeof want, "%s,%s", at("a/m.fmm"), at("b/n.fmm"));
    CHECK(fm_model_find_list(&d, "embed.backbone", "m.fmm,n.fmm", path, sizeof path,
                             &err) == FM_OK &&
          strcmp(path, want) == 0);
    CHECK(fm_model_find_list(&d, "embed.backbone", "m.fmm,gone.fmm", path, sizeof path,
                             &err) == FM_ERR_NOT_FOUND &&
          strstr(fm_error_text(&err), "'gone.fmm'"));
}

static void test_models_dir(void)
{
    fm_model_dirs d;
    fm_error err = {0};
    char path[FM_MODEL_PATH_MAX];
    /* absolute: searched first */
    mk("mine");
    touch("mine/m.fmm");
    CHECK(fm_model_dirs_init(&d, at("mine"), &err) == FM_OK && d.n > 1 &&
          strcmp(d.d[0].path, at("mine")) == 0 && strcmp(d.d[0].origin, "models.dir") == 0);
    CHECK(fm_model_find(&d, "x", "m.fmm", path, sizeof path, &err) == FM_OK &&
          strcmp(path, at("mine/m.fmm")) == 0);
    /* relative: looked up as a directory in the search path */
    mk("b/sub");
    CHECK(fm_model_dirs_init(&d, "sub", &err) == FM_OK && strcmp(d.d[0].path, at("b/sub")) == 0);
    /* ./ relative to the current directory */
    mk("work/here");
    CHECK(fm_model_dirs_init(&d, "./here", &err) == FM_OK &&
          strcmp(d.d[0].path, at("work/here")) == 0);
    /* a relative one found nowhere */
    CHECK(fm_model_dirs_init(&d, "nowhere", &err) == FM_ERR_NOT_FOUND &&
          strstr(fm_error_text(&err), "models.dir 'nowhere'") &&
          strstr(fm_error_text(&err), at("a")));
    /* a directory named twice appears once */
    CHECK(fm_model_dirs_init(&d, at("a"), &err) == FM_OK && index_of(&d, at("a")) == 0);
    int count = 0;
    for (int i = 0; i < d.n; i++)
        count += strcmp(d.d[i].path, at("a")) == 0;
    CHECK(count == 1);
}

static void test_resolve_config(void)
{
    fm_config c;
    fm_error err = {0};
    fm_config_defaults(&c);
    CHECK(c.models.dir[0] == '\0');
    CHECK(strcmp(c.heads.model, "heads_dlib_ft.fmm") == 0);
    mk("mt");
    touch("mt/" FM_DETECT_PNET_FILE);
    touch("b/bb.fmm");
    touch("a/h1.fmm");
    touch("b/h2.fmm");
    snprintf(c.models.dir, sizeof c.models.dir, "%s", at("mt"));
    snprintf(c.embed.backbone, sizeof c.embed.backbone, "bb.fmm,m.fmm");
    snprintf(c.heads.model, sizeof c.heads.model, "h1.fmm,./../b/h2.fmm");
    fm_config before = c;
    CHECK(fm_config_resolve_models(&c, FM_RESOLVE_ALL, &err) == FM_OK);
    CHECK_MSG(strcmp(c.models.dir, at("mt")) == 0, "%s", c.models.dir);
    char want[2048];
    snprintf(want, sizeof want, "%s,%s", at("b/bb.fmm"), at("mt/m.fmm"));
    touch("mt/m.fmm"); /* models.dir is searched first: not there yet above */
    c = before;
    CHECK(fm_config_resolve_models(&c, FM_RESOLVE_ALL, &err) == FM_OK);
    CHECK_MSG(strcmp(c.embed.backbone, want) == 0, "%s", c.embed.backbone);
    snprintf(want, sizeof want, "%s,%s", at("a/h1.fmm"), at("b/h2.fmm"));
    CHECK_MSG(strcmp(c.heads.model, want) == 0, "%s", c.heads.model);

    /* only what is asked for: a missing heads file does not stop the detector */
    c = before;
    snprintf(c.heads.model, sizeof c.heads.model, "missing.fmm");
    CHECK(fm_config_resolve_models(&c, FM_RESOLVE_DETECTOR, &err) == FM_OK &&
          strcmp(c.heads.model, "missing.fmm") == 0);
    /* an error leaves every setting as it was */
    fm_config keep = before;
    snprintf(keep.heads.model, sizeof keep.heads.model, "missing.fmm");
    c = keep;
    CHECK(fm_config_resolve_models(&c, FM_RESOLVE_ALL, &err) == FM_ERR_NOT_FOUND);
    CHECK(memcmp(&c, &keep, sizeof c) == 0);
    /* empty heads stay empty */
    c = before;
    c.heads.model[0] = '\0';
    CHECK(fm_config_resolve_models(&c, FM_RESOLVE_HEADS, &err) == FM_OK &&
          c.heads.model[0] == '\0');
    /* the detector's files found through the search path (no models.dir) */
    c = before;
    c.models.dir[0] = '\0';
    touch("b/" FM_DETECT_PNET_FILE);
    CHECK(fm_config_resolve_models(&c, FM_RESOLVE_DETECTOR, &err) == FM_OK &&
          strcmp(c.models.dir, at("b")) == 0);
}

int main(void)
{
    if (fm_test_tmpdir(root, sizeof root, "modelpath") != 0)
        return 1;
    mk("a");
    mk("b");
    mk("xdg");
    mk("home");
    mk("work");
    mk("work/relative");
    if (chdir(at("work")) != 0) {
        perror("chdir");
        return 1;
    }
    test_order();
    test_find();
    test_models_dir();
    test_resolve_config();
    fm_test_remove_tree(root);
    return fm_test_done("test_modelpath");
}
