/* test_config.c - the settings table, the YAML loader, --set and the command-line
 * options, dump and describe. Error messages are checked down to file:line:column,
 * since pointing at the right spot is the loader's job. Runs under ASan/UBSan: every
 * error path must release what it took. */
#include "config-impl.h"
#include "facemill/config.h"
#include "facemill/log.h"
#include "fm_test.h"

#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

/* Writes text to tmpdir/name (path, size bytes, gets its path); returns path. A file
 * that cannot be written ends the test. */
static const char *write_file(char *path, size_t size, const char *name, const char *text)
{
    snprintf(path, size, "%s/%s", tmpdir, name);
    if (fm_test_write_file(path, text, strlen(text)) != 0)
        exit(1);
    return path;
}

static fm_status load_text(fm_config *c, const char *yaml, fm_error *e)
{
    return fm_config_load_buffer(c, "t.yaml", yaml, strlen(yaml), e);
}

/* Loading yaml over the defaults fails with FM_ERR_CONFIG, a message containing
 * want, and the configuration untouched. */
#define CHECK_LOAD_ERROR(yaml, want)                                                    \
    do {                                                                                \
        fm_config c_, d_;                                                               \
        fm_config_defaults(&c_);                                                        \
        fm_config_defaults(&d_);                                                        \
        fm_error e_ = {0};                                                              \
        fm_status st_ = load_text(&c_, (yaml), &e_);                                    \
        CHECK_MSG(st_ == FM_ERR_CONFIG, "status %d: %s", st_, e_.msg);                  \
        CHECK_MSG(strstr(e_.msg, (want)) != NULL, "message '%s' lacks '%s'", e_.msg,    \
                  (want));                                                              \
        CHECK(fm_config_equal(&c_, &d_));                                               \
    } while (0)

#define CHECK_SET_ERROR(assignment, want)                                               \
    do {                                                                                \
        fm_config c_, d_;                                                               \
        fm_config_defaults(&c_);                                                        \
        fm_config_defaults(&d_);                                                        \
        fm_error e_ = {0};                                                              \
        fm_status st_ = fm_config_set(&c_, (assignment), &e_);                          \
        CHECK_MSG(st_ == FM_ERR_CONFIG, "status %d: %s", st_, e_.msg);                  \
        CHECK_MSG(strstr(e_.msg, (want)) != NULL, "message '%s' lacks '%s'", e_.msg,    \
                  (want));                                                              \
        CHECK(fm_config_equal(&c_, &d_));                                               \
    } while (0)

static int key_depth(const char *key)
{
    int d = 1;
    for (; *key; key++)
        d += *key == '.';
    return d;
}

static void test_table(void)
{
    const fm_config_setting *t = fm_config_settings;
    size_t n = fm_config_settings_count;
    CHECK(n >= 12);
    for (size_t i = 0; i < n; i++) {
        const fm_config_setting *s = &t[i];
        CHECK_MSG(s->help && s->help[0], "%s: no help", s->key);
        CHECK_MSG(key_depth(s->key) >= 2 && key_depth(s->key) <= FM_CONFIG_MAX_DEPTH,
                  "%s: depth", s->key);
        CHECK(s->offset < sizeof(fm_config));
        for (size_t j = 0; j < n; j++) {
            if (i == j)
                continue;
            size_t li = strlen(s->key);
            CHECK_MSG(strcmp(s->key, t[j].key) != 0, "%s: twice", s->key);
            /* A key is never also a section of another key. */
            CHECK_MSG(!(strncmp(s->key, t[j].key, li) == 0 && t[j].key[li] == '.'),
                      "%s is a setting and a section", s->key);
            CHECK_MSG(s->offset != t[j].offset, "%s and %s share a field", s->key, t[j].key);
        }
        /* Settings of one section are contiguous: once a section is left, it does not
         * come back. */
        const char *dot = strrchr(s->key, '.');
        size_t sec = (size_t)(dot - s->key);
        bool left = false;
        for (size_t j = i + 1; j < n; j++) {
            bool same = strncmp(t[j].key, s->key, sec + 1) == 0;
            CHECK_MSG(!(left && same), "%s: section split at %s", s->key, t[j].key);
            left = left || !same;
        }
        switch (s->type) {
        case FM_CONFIG_INT:
            CHECK_MSG(s->min_int <= s->def_int && s->def_int <= s->max_int, "%s", s->key);
            break;
        case FM_CONFIG_FLOAT:
            CHECK_MSG(s->min_float <= s->def_float && s->def_float <= s->max_float, "%s",
                      s->key);
            break;
        case FM_CONFIG_STRING:
            CHECK_MSG(s->def_string && (int64_t)strlen(s->def_string) >= s->min_int &&
                          (int64_t)strlen(s->def_string) <= s->max_int,
                      "%s", s->key);
            CHECK(s->max_int == FM_CONFIG_STRING_MAX - 1);
            break;
        case FM_CONFIG_ENUM: {
            int count = 0;
            while (s->names && s->names[count])
                count++;
            CHECK_MSG(count >= 2 && s->def_int >= 0 && s->def_int < count, "%s", s->key);
            break;
        }
        case FM_CONFIG_SET: { /* a non-empty default within the names' bits */
            int count = 0;
            while (s->names && s->names[count])
                count++;
            CHECK_MSG(count >= 2 && count < 31 && s->def_int > 0 && s->def_int < (1 << count),
                      "%s", s->key);
            break;
        }
        case FM_CONFIG_BOOL:
            CHECK(s->def_int == 0 || s->def_int == 1);
            break;
        }
    }
}

static void test_defaults(void)
{
    fm_config c;
    memset(&c, 0x5a, sizeof c);
    fm_config_defaults(&c);
    CHECK(c.log.level == FM_LOG_INFO);
    CHECK(c.engine.threads == 1);
    CHECK(strcmp(c.models.dir, "") == 0); /* the model search path alone */
    CHECK(strcmp(c.heads.model, "heads_dlib_ft.fmm") == 0);
    CHECK(c.decode.max_pixels == 100000000);
    CHECK(c.decode.max_bytes == 67108864);
    CHECK(c.detect.min_face == 20);
    CHECK(c.detect.max_side == 1600);
    CHECK(c.detect.scale_factor == 0.709);
    CHECK(c.detect.pnet_threshold == 0.6);
    CHECK(c.detect.rnet_threshold == 0.7);
    CHECK(c.detect.onet_threshold == 0.7);
    CHECK(c.detect.max_faces == 64);
    CHECK(c.detect.retry && c.detect.retry_pnet_threshold == 0.5 &&
          c.detect.retry_rnet_threshold == 0.6 && c.detect.retry_onet_threshold == 0.6);
    CHECK(c.detect.fallback == FM_FALLBACK_NONE);
    fm_config d;
    fm_config_defaults(&d);
    CHECK(fm_config_equal(&c, &d));
    d.detect.scale_factor = 0.71;
    CHECK(!fm_config_equal(&c, &d));
}

/* Sets setting s of c to a valid value different from its default. */
static void perturb(fm_config *c, const fm_config_setting *s)
{
    char *f = (char *)c + s->offset;
    switch (s->type) {
    case FM_CONFIG_BOOL:
        *(bool *)(void *)f = !s->def_int;
        break;
    case FM_CONFIG_INT:
        *(int64_t *)(void *)f = s->def_int == s->min_int ? s->max_int : s->min_int;
        break;
    case FM_CONFIG_FLOAT:
        *(double *)(void *)f = s->def_float == s->min_float ? s->max_float : s->min_float;
        break;
    case FM_CONFIG_STRING:
        snprintf(f, FM_CONFIG_STRING_MAX, "%s-changed", s->def_string);
        break;
    case FM_CONFIG_ENUM:
        *(int *)(void *)f = s->def_int == 0 ? 1 : 0;
        break;
    case FM_CONFIG_SET:
        *(int *)(void *)f = s->def_int == 1 ? 3 : 1;
        break;
    }
}

static void test_default_file(void)
{
    char path[1024];
    fm_test_source_path(path, sizeof path, "config/facemill.yaml");
    fm_config c, d;
    fm_error e = {0};
    memset(&c, 0, sizeof c);
    fm_config_defaults(&d);
    fm_config_defaults(&c);
    fm_status st = fm_config_load_file(&c, path, &e);
    CHECK_MSG(st == FM_OK, "%s", e.msg);
    if (st != FM_OK)
        return;
    CHECK(fm_config_equal(&c, &d));
    /* The file names every key: whatever one setting held, loading puts the default
     * back. */
    for (size_t i = 0; i < fm_config_settings_count; i++) {
        fm_config_defaults(&c);
        perturb(&c, &fm_config_settings[i]);
        CHECK(!fm_config_equal(&c, &d));
        CHECK_MSG(fm_config_load_file(&c, path, &e) == FM_OK, "%s", e.msg);
        CHECK_MSG(fm_config_equal(&c, &d), "config/facemill.yaml lacks %s",
                  fm_config_settings[i].key);
    }
}

static void test_nested_file(void)
{
    char path[512];
    write_file(path, sizeof path, "nested.yaml",
               "# overrides\n"
               "log:\n"
               "  level: debug\n"
               "models:\n"
               "  dir: '/srv/facemill/models'\n"
               "detect:\n"
               "  min_face: 40      # bigger faces only\n"
               "  scale_factor: 0.8\n"
               "  onet_threshold: 1\n"
               "decode: {max_pixels: 50000000}\n"
               "engine.threads: 4\n");
    fm_config c, d;
    fm_error e = {0};
    fm_config_defaults(&c);
    fm_config_defaults(&d);
    CHECK_MSG(fm_config_load_file(&c, path, &e) == FM_OK, "%s", e.msg);
    CHECK(c.log.level == FM_LOG_DEBUG);
    CHECK(strcmp(c.models.dir, "/srv/facemill/models") == 0);
    CHECK(c.detect.min_face == 40);
    CHECK(c.detect.scale_factor == 0.8);
    CHECK(c.detect.onet_threshold == 1.0);
    CHECK(c.decode.max_pixels == 50000000);
    CHECK(c.engine.threads == 4);
    /* Untouched keys keep what they had. */
    CHECK(c.detect.max_side == d.detect.max_side);
    CHECK(c.detect.pnet_threshold == d.detect.pnet_threshold);
    CHECK(c.decode.max_bytes == d.decode.max_bytes);

    /* Empty inputs, comments only, empty sections: nothing changes. */
    const char *empty[] = {"", "# nothing\n", "---\n", "~\n", "detect:\n", "{}\n",
                           "detect: {}\nlog:\n  # level: debug\n"};
    for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
        fm_config_defaults(&c);
        CHECK_MSG(load_text(&c, empty[i], &e) == FM_OK, "'%s': %s", empty[i], e.msg);
        CHECK(fm_config_equal(&c, &d));
    }

    /* Values are case-insensitive where they are names; quoted numbers are numbers. */
    fm_config_defaults(&c);
    CHECK_MSG(load_text(&c, "log: {level: WARN}\ndetect: {min_face: \"32\"}\n", &e) == FM_OK,
              "%s", e.msg);
    CHECK(c.log.level == FM_LOG_WARN && c.detect.min_face == 32);

    /* The file's name is in its messages; a missing file is an i/o error. */
    write_file(path, sizeof path, "bad.yaml", "detect:\n  max_side: 20\n");
    fm_config_defaults(&c);
    CHECK(fm_config_load_file(&c, path, &e) == FM_ERR_CONFIG);
    char want[600];
    snprintf(want, sizeof want, "%s:2:13: detect.max_side: must be between 64 and 16384",
             path);
    CHECK_MSG(strstr(e.msg, want) == e.msg, "%s", e.msg);
    CHECK(fm_config_equal(&c, &d));
    snprintf(path, sizeof path, "%s/missing.yaml", tmpdir);
    CHECK(fm_config_load_file(&c, path, &e) == FM_ERR_IO);
    CHECK_MSG(strstr(e.msg, "missing.yaml: No such file") != NULL, "%s", e.msg);
}

static void test_load_errors(void)
{
    /* unknown keys */
    CHECK_LOAD_ERROR("detect:\n  min_face: 30\n  min_fcae: 40\n",
                     "t.yaml:3:3: unknown key 'detect.min_fcae'");
    CHECK_LOAD_ERROR("log:\n  level: info\ndetct:\n  min_face: 30\n",
                     "t.yaml:3:1: unknown key 'detct'");
    CHECK_LOAD_ERROR("detect.min_face.x: 1\n", "t.yaml:1:1: unknown key 'detect.min_face.x'");
    CHECK_LOAD_ERROR("\"\": 1\n", "t.yaml:1:1: unknown key ''");
    /* wrong types */
    CHECK_LOAD_ERROR("detect:\n  min_face: abc\n",
                     "t.yaml:2:13: detect.min_face: expected an integer, got 'abc'");
    CHECK_LOAD_ERROR("detect:\n  min_face: 20.5\n",
                     "t.yaml:2:13: detect.min_face: expected an integer, got '20.5'");
    CHECK_LOAD_ERROR("detect:\n  scale_factor: fast\n",
                     "t.yaml:2:17: detect.scale_factor: expected a number, got 'fast'");
    CHECK_LOAD_ERROR("detect:\n  scale_factor: .nan\n",
                     "t.yaml:2:17: detect.scale_factor: expected a number, got '.nan'");
    CHECK_LOAD_ERROR("detect:\n  min_face:\n",
                     "t.yaml:2:12: detect.min_face: missing value");
    CHECK_LOAD_ERROR("embed:\n  backbone: ''\n",
                     "t.yaml:2:13: embed.backbone: must not be empty");
    /* out of bounds */
    CHECK_LOAD_ERROR("detect:\n  min_face: 5\n",
                     "t.yaml:2:13: detect.min_face: must be between 8 and 10000");
    CHECK_LOAD_ERROR("detect:\n  min_face: 99999999999999999999999\n",
                     "t.yaml:2:13: detect.min_face: must be between 8 and 10000");
    CHECK_LOAD_ERROR("detect:\n  scale_factor: 0.99\n",
                     "t.yaml:2:17: detect.scale_factor: must be between 0.3 and 0.95");
    CHECK_LOAD_ERROR("detect:\n  pnet_threshold: -0.1\n",
                     "t.yaml:2:19: detect.pnet_threshold: must be between 0 and 1");
    CHECK_LOAD_ERROR("detect:\n  rnet_threshold: 1e999\n",
                     "t.yaml:2:19: detect.rnet_threshold: must be between 0 and 1");
    /* bad enum value */
    CHECK_LOAD_ERROR("log:\n  level: loud\n",
                     "t.yaml:2:10: log.level: 'loud' is not one of: error, warn, info, debug");
    /* duplicates: a setting, a section, a setting named flat and nested */
    CHECK_LOAD_ERROR("detect:\n  min_face: 30\n  min_face: 40\n",
                     "t.yaml:3:3: duplicate key 'detect.min_face' (first at line 2)");
    CHECK_LOAD_ERROR("detect:\n  min_face: 30\nlog:\n  level: info\ndetect:\n  max_side: 800\n",
                     "t.yaml:5:1: duplicate key 'detect' (first at line 1)");
    CHECK_LOAD_ERROR("detect.min_face: 30\ndetect:\n  min_face: 40\n",
                     "t.yaml:3:3: duplicate key 'detect.min_face' (first at line 1)");
    /* YAML syntax errors: libyaml's text and position */
    CHECK_LOAD_ERROR("detect:\n  min_face: 30\n max_side: 5\n",
                     "t.yaml:3:2: YAML syntax error: did not find expected key (while "
                     "parsing a block mapping at line 1 column 1)");
    CHECK_LOAD_ERROR("detect:\n  min_face: \"30\n",
                     "t.yaml:3:1: YAML syntax error: found unexpected end of stream "
                     "(while scanning a quoted scalar at line 2 column 13)");
    CHECK_LOAD_ERROR("log:\n  level: info: debug\n",
                     "t.yaml:2:14: YAML syntax error: mapping values are not allowed");
    CHECK_LOAD_ERROR("log:\n  level: \xff\n", "t.yaml:2:10: invalid leading UTF-8 octet");
    /* a sequence or mapping where a scalar is expected, and the reverse */
    CHECK_LOAD_ERROR("detect:\n  min_face: [20, 30]\n",
                     "t.yaml:2:13: detect.min_face: expected an integer, got a sequence");
    CHECK_LOAD_ERROR("detect:\n  min_face:\n    px: 20\n",
                     "t.yaml:3:5: detect.min_face: expected an integer, got a mapping");
    CHECK_LOAD_ERROR("log:\n  level:\n    - info\n",
                     "t.yaml:3:5: log.level: expected one of error, warn, info, debug, got "
                     "a sequence");
    CHECK_LOAD_ERROR("detect: 5\n", "t.yaml:1:9: detect: expected a mapping of settings, got '5'");
    CHECK_LOAD_ERROR("detect: [1]\n",
                     "t.yaml:1:9: detect: expected a mapping of settings, got a sequence");
    CHECK_LOAD_ERROR("- detect\n", "t.yaml:1:1: expected a mapping of settings, got a sequence");
    CHECK_LOAD_ERROR("detect\n", "t.yaml:1:1: expected a mapping of settings, got 'detect'");
    CHECK_LOAD_ERROR("? [a]\n: 1\n", "t.yaml:1:3: expected a setting name, got a sequence");
    CHECK_LOAD_ERROR("detect:\n  min_face: &a 30\n  max_side: *a\n",
                     "t.yaml:3:13: detect.max_side: expected an integer, got an alias");
    CHECK_LOAD_ERROR("log:\n  level: info\n---\nlog:\n  level: debug\n",
                     "t.yaml:3:1: only one YAML document is allowed");
    /* A valid key before the error is not applied either (checked by the macro). */
    CHECK_LOAD_ERROR("detect:\n  min_face: 30\n  max_side: big\n",
                     "t.yaml:3:13: detect.max_side: expected an integer, got 'big'");
    /* Values are shown short and printable. */
    CHECK_LOAD_ERROR("log:\n  level: \"a\\tb0123456789012345678901234567890123456789012345678\"\n",
                     "log.level: 'a?b012345678901234567890123456789012345678901234...' is "
                     "not one of");
}

static void test_set(void)
{
    fm_config c, d;
    fm_error e = {0};
    fm_config_defaults(&c);
    fm_config_defaults(&d);
    CHECK(fm_config_set(&c, "detect.min_face=40", &e) == FM_OK);
    CHECK(c.detect.min_face == 40);
    CHECK(fm_config_set(&c, "  detect.min_face =\t41 ", &e) == FM_OK);
    CHECK(c.detect.min_face == 41);
    CHECK(fm_config_set(&c, "models.dir=/data/models=v2", &e) == FM_OK);
    CHECK(strcmp(c.models.dir, "/data/models=v2") == 0);
    CHECK(fm_config_set(&c, "log.level=DEBUG", &e) == FM_OK);
    CHECK(c.log.level == FM_LOG_DEBUG);
    CHECK(fm_config_set(&c, "detect.scale_factor=7e-1", &e) == FM_OK);
    CHECK(c.detect.scale_factor == 0.7);
    CHECK(fm_config_set(&c, "detect.pnet_threshold=1", &e) == FM_OK);
    CHECK(c.detect.pnet_threshold == 1.0);
    CHECK(fm_config_set(&c, "detect.pnet_threshold=0", &e) == FM_OK);
    CHECK(c.detect.pnet_threshold == 0.0);
    /* -0 (however written, or a negative number too small for a double) is 0: stored
     * without its sign, so dump and `facemill config` print 0, not -0 */
    const char *const zeros[] = {"detect.pnet_threshold=-0", "detect.pad=-0.0e3",
                                 "heads.race_min_prob=-1e-400"};
    for (size_t i = 0; i < sizeof zeros / sizeof zeros[0]; i++)
        CHECK_MSG(fm_config_set(&c, zeros[i], &e) == FM_OK, "%s: %s", zeros[i], e.msg);
    CHECK(c.detect.pnet_threshold == 0.0 && !signbit(c.detect.pnet_threshold));
    CHECK(c.detect.pad == 0.0 && !signbit(c.detect.pad));
    CHECK(c.heads.race_min_prob == 0.0 && !signbit(c.heads.race_min_prob));
    CHECK(load_text(&c, "detect:\n  rnet_threshold: -0\n", &e) == FM_OK);
    CHECK(c.detect.rnet_threshold == 0.0 && !signbit(c.detect.rnet_threshold));
    char *dumped = NULL;
    size_t dumped_len = 0;
    FILE *mem = open_memstream(&dumped, &dumped_len);
    CHECK(mem && fm_config_dump(&c, mem) == FM_OK);
    fclose(mem);
    CHECK_MSG(dumped && strstr(dumped, "  pnet_threshold: 0\n") && !strstr(dumped, "-0"),
              "%s", dumped ? dumped : "(none)");
    free(dumped);
    CHECK(fm_config_set(&c, "decode.max_pixels=+1000000000", &e) == FM_OK);
    CHECK(c.decode.max_pixels == 1000000000);
    CHECK(c.decode.formats == FM_FORMAT_ALL);
    CHECK(fm_config_set(&c, "decode.formats=jpeg", &e) == FM_OK);
    CHECK(c.decode.formats == FM_FORMAT_JPEG);
    CHECK(fm_config_set(&c, "decode.formats= TIFF ,jpeg,\tpng , jpeg", &e) == FM_OK);
    CHECK(c.decode.formats == (FM_FORMAT_TIFF | FM_FORMAT_JPEG | FM_FORMAT_PNG));
    CHECK(fm_config_set(&c, "decode.formats=jpeg,png,webp,heic,avif,tiff", &e) == FM_OK);
    CHECK(c.decode.formats == FM_FORMAT_ALL);

    CHECK_SET_ERROR("detect.min_face", "'detect.min_face': expected KEY=VALUE");
    CHECK_SET_ERROR("detect.min_face=abc", "detect.min_face: expected an integer, got 'abc'");
    CHECK_SET_ERROR("detect.min_face=", "detect.min_face: expected an integer, got ''");
    CHECK_SET_ERROR("detect.min_face=0x10", "detect.min_face: expected an integer, got '0x10'");
    CHECK_SET_ERROR("detect.min_face=7", "detect.min_face: must be between 8 and 10000, got '7'");
    CHECK_SET_ERROR("decode.max_pixels=1000000001",
                    "decode.max_pixels: must be between 1 and 1000000000");
    CHECK_SET_ERROR("detect.scale_factor=nan", "detect.scale_factor: expected a number");
    CHECK_SET_ERROR("detect.scale_factor=inf", "detect.scale_factor: expected a number");
    CHECK_SET_ERROR("detect.scale_factor=0x1p-1", "detect.scale_factor: expected a number");
    CHECK_SET_ERROR("detect.scale_factor=0.2", "detect.scale_factor: must be between 0.3 and 0.95");
    CHECK_SET_ERROR("log.level=trace", "log.level: 'trace' is not one of: error, warn, info, debug");
    CHECK_SET_ERROR("decode.formats=jpeg,gif",
                    "decode.formats: 'gif' is not one of: jpeg, png, webp, heic, avif, tiff");
    CHECK_SET_ERROR("decode.formats=",
                    "decode.formats: expected names separated by commas, got ''");
    CHECK_SET_ERROR("decode.formats=jpeg,,png",
                    "decode.formats: expected names separated by commas, got 'jpeg,,png'");
    CHECK_SET_ERROR("decode.formats=jpeg,", "decode.formats: expected names separated by commas");
    CHECK_SET_ERROR("decode.formats=jpeg png", "decode.formats: 'jpeg png' is not one of");
    CHECK_SET_ERROR("embed.backbone=", "embed.backbone: must not be empty");
    CHECK_SET_ERROR("detect.min_fase=30", "unknown key 'detect.min_fase'");
    CHECK_SET_ERROR("detect=30", "'detect' is a section, not a setting");
    CHECK_SET_ERROR("=30", "unknown key ''");

    char big[FM_CONFIG_STRING_MAX + 32];
    int n = snprintf(big, sizeof big, "models.dir=");
    memset(big + n, 'a', FM_CONFIG_STRING_MAX - 1);
    big[n + FM_CONFIG_STRING_MAX - 1] = '\0';
    fm_config_defaults(&c);
    CHECK(fm_config_set(&c, big, &e) == FM_OK);
    CHECK(strlen(c.models.dir) == FM_CONFIG_STRING_MAX - 1);
    big[n + FM_CONFIG_STRING_MAX - 1] = 'a';
    big[n + FM_CONFIG_STRING_MAX] = '\0';
    CHECK_SET_ERROR(big, "models.dir: must be at most 1023 bytes long, got 1024");

    /* A NULL error record is allowed. */
    CHECK(fm_config_set(&c, "nope=1", NULL) == FM_ERR_CONFIG);
}

/* fm_config_load_file on path with standard input read from fd (-1: as it is), given
 * at most 5 seconds (fm_test_alarm). */
static fm_status load_in_time(fm_config *c, const char *path, int fd, fm_error *e)
{
    int saved = fd >= 0 ? dup(STDIN_FILENO) : -1;
    if (fd >= 0)
        dup2(fd, STDIN_FILENO);
    fm_test_alarm(5);
    fm_status st = fm_config_load_file(c, path, e);
    fm_test_alarm(0);
    if (saved >= 0) {
        dup2(saved, STDIN_FILENO);
        close(saved);
    }
    return st;
}

/* A configuration is a regular file, standard input as "/dev/stdin", a pipe another
 * program writes (a shell's `<(...)`) or a character device (/dev/null); a named FIFO
 * (whose open waits for a writer) or a directory is refused at once, naming it. */
static void test_not_regular(void)
{
    char fifo[300], path[300];
    snprintf(fifo, sizeof fifo, "%s/fifo.yaml", tmpdir);
    CHECK(mkfifo(fifo, 0600) == 0);
    const struct {
        const char *path, *why;
    } refused[] = {
        {fifo, "a named FIFO, whose open would wait for a writer (give a file, or a pipe "
               "such as <(...))"},
        {tmpdir, "a directory, not a configuration file"},
    };
    fm_config c, d;
    fm_error e = {0};
    fm_config_defaults(&d);
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char want[400];
        snprintf(want, sizeof want, "%s: %s", refused[i].path, refused[i].why);
        fm_config_defaults(&c);
        fm_status st = load_in_time(&c, refused[i].path, -1, &e);
        CHECK_MSG(st == FM_ERR_IO && strcmp(e.msg, want) == 0, "%s: %s %s",
                  refused[i].path, fm_status_to_string(st), e.msg);
        CHECK(fm_config_equal(&c, &d));
    }
    /* named by FACEMILL_CONFIG: the same */
    setenv(FM_CONFIG_ENV, fifo, 1);
    fm_test_alarm(5);
    fm_status st = fm_config_apply(&c, NULL, NULL, 0, &e);
    fm_test_alarm(0);
    unsetenv(FM_CONFIG_ENV);
    CHECK_MSG(st == FM_ERR_IO && strstr(e.msg, FM_CONFIG_ENV) &&
              strstr(e.msg, "a named FIFO"), "%s", e.msg);
    unlink(fifo);

    /* /dev/null: nothing changes */
    fm_config_defaults(&c);
    st = load_in_time(&c, "/dev/null", -1, &e);
    CHECK_MSG(st == FM_OK && fm_config_equal(&c, &d), "/dev/null: %s", e.msg);
    /* a pipe by its /proc/self/fd name, as a shell's <(...) passes it */
    int q[2];
    CHECK(pipe(q) == 0);
    const char piped[] = "detect:\n  min_face: 35\n";
    CHECK(write(q[1], piped, sizeof piped - 1) == (ssize_t)(sizeof piped - 1));
    close(q[1]);
    snprintf(path, sizeof path, "/proc/self/fd/%d", q[0]);
    st = load_in_time(&c, path, -1, &e);
    CHECK_MSG(st == FM_OK && c.detect.min_face == 35, "%s: %s", path, e.msg);
    /* read again by the same name (as a program re-executed for its OpenBLAS kernels
     * does): the same settings, not an empty pipe's defaults */
    fm_config_defaults(&c);
    st = load_in_time(&c, path, -1, &e);
    CHECK_MSG(st == FM_OK && c.detect.min_face == 35, "%s again: %s %d", path, e.msg,
              (int)c.detect.min_face);
    close(q[0]);

    /* /dev/stdin: standard input, a regular file or a pipe */
    write_file(path, sizeof path, "stdin.yaml", "detect:\n  min_face: 33\n");
    int fd = open(path, O_RDONLY);
    fm_config_defaults(&c);
    st = load_in_time(&c, "/dev/stdin", fd, &e);
    CHECK_MSG(st == FM_OK && c.detect.min_face == 33, "%s", e.msg);
    close(fd);
    int p[2];
    CHECK(pipe(p) == 0);
    const char yaml[] = "detect:\n  min_face: 34\n";
    CHECK(write(p[1], yaml, sizeof yaml - 1) == (ssize_t)(sizeof yaml - 1));
    close(p[1]);
    int saved = dup(STDIN_FILENO);
    dup2(p[0], STDIN_FILENO);
    close(p[0]);
    for (int round = 0; round < 2; round++) { /* the second: as a re-executed program */
        fm_config_defaults(&c);
        st = load_in_time(&c, "/dev/stdin", -1, &e);
        CHECK_MSG(st == FM_OK && c.detect.min_face == 34, "/dev/stdin, read %d: %s %d",
                  round + 1, e.msg, (int)c.detect.min_face);
    }
    dup2(saved, STDIN_FILENO);
    close(saved);
    unlink(path);
}

/* The bool type has no setting yet: check its parser on a private struct. */
static void test_bool(void)
{
    struct flags {
        int pad;
        bool flag;
    } s = {0, false};
    fm_config_setting b = {.key = "x.flag", .type = FM_CONFIG_BOOL,
                           .offset = offsetof(struct flags, flag), .help = "test"};
    const char *yes[] = {"true", "yes", "on", "TRUE", "Yes", "On"};
    const char *no[] = {"false", "no", "off", "FALSE", "No", "OFF"};
    fm_error e = {0};
    for (size_t i = 0; i < 6; i++) {
        s.flag = false;
        CHECK(fm_config_setting_parse(&b, yes[i], strlen(yes[i]), &s, &e) == FM_OK && s.flag);
        CHECK(fm_config_setting_parse(&b, no[i], strlen(no[i]), &s, &e) == FM_OK && !s.flag);
    }
    s.flag = true;
    CHECK(fm_config_setting_parse(&b, "maybe", 5, &s, &e) == FM_ERR_CONFIG && s.flag);
    CHECK(strcmp(e.msg, "x.flag: expected true or false, got 'maybe'") == 0);
    CHECK(fm_config_setting_parse(&b, "tr\0ue", 5, &s, &e) == FM_ERR_CONFIG);
    CHECK(strcmp(e.msg, "x.flag: value contains a NUL byte") == 0);
}

static void test_args(void)
{
    char file[512], file2[512];
    write_file(file, sizeof file, "args.yaml",
               "detect:\n  min_face: 30\n  max_side: 800\nlog:\n  level: warn\n");
    write_file(file2, sizeof file2, "env.yaml", "detect:\n  max_faces: 7\n");
    unsetenv(FM_CONFIG_ENV);

    /* The file first, then every --set in order, wherever they stand. */
    char opt_config[600];
    snprintf(opt_config, sizeof opt_config, "--config=%s", file);
    char *argv[] = {"facemill", "--set", "detect.min_face=40", opt_config, "pos1",
                    "--set=detect.min_face=50", "--set", "detect.max_faces=5", "pos2",
                    "--set", "log.level=debug", "--", "--set", "x=y", NULL};
    int argc = (int)(sizeof argv / sizeof argv[0]) - 1;
    fm_config c, d;
    fm_error e = {0};
    fm_config_defaults(&c);
    fm_config_defaults(&d);
    CHECK_MSG(fm_config_from_args(&c, &argc, argv, &e) == FM_OK, "%s", e.msg);
    CHECK(c.detect.min_face == 50);
    CHECK(c.detect.max_side == 800);
    CHECK(c.detect.max_faces == 5);
    CHECK(c.log.level == FM_LOG_DEBUG);
    CHECK(argc == 6);
    const char *rest[] = {"facemill", "pos1", "pos2", "--", "--set", "x=y"};
    for (int i = 0; i < 6 && i < argc; i++)
        CHECK_MSG(strcmp(argv[i], rest[i]) == 0, "argv[%d] = %s", i, argv[i]);
    CHECK(argv[argc] == NULL);

    /* --config FILE as two arguments; nothing else on the line. */
    char *argv2[] = {"x", "--config", file, NULL};
    argc = 3;
    fm_config_defaults(&c);
    CHECK(fm_config_from_args(&c, &argc, argv2, &e) == FM_OK);
    CHECK(argc == 1 && argv2[1] == NULL && c.detect.min_face == 30);

    /* No options: nothing changes. */
    char *argv3[] = {"x", "a", "-v", NULL};
    argc = 3;
    fm_config_defaults(&c);
    CHECK(fm_config_from_args(&c, &argc, argv3, &e) == FM_OK);
    CHECK(argc == 3 && strcmp(argv3[1], "a") == 0 && strcmp(argv3[2], "-v") == 0);
    CHECK(fm_config_equal(&c, &d));

    /* FACEMILL_CONFIG when there is no --config; --config wins over it. */
    setenv(FM_CONFIG_ENV, file2, 1);
    char *argv4[] = {"x", "--set", "detect.min_face=9", NULL};
    argc = 3;
    fm_config_defaults(&c);
    CHECK_MSG(fm_config_from_args(&c, &argc, argv4, &e) == FM_OK, "%s", e.msg);
    CHECK(c.detect.max_faces == 7 && c.detect.min_face == 9 && argc == 1);
    char *argv5[] = {"x", "--config", file, NULL};
    argc = 3;
    fm_config_defaults(&c);
    CHECK(fm_config_from_args(&c, &argc, argv5, &e) == FM_OK);
    CHECK(c.detect.max_faces == 64 && c.detect.min_face == 30);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/nope.yaml", tmpdir);
    setenv(FM_CONFIG_ENV, missing, 1);
    char *argv6[] = {"x", NULL};
    argc = 1;
    fm_config_defaults(&c);
    CHECK(fm_config_from_args(&c, &argc, argv6, &e) == FM_ERR_IO);
    CHECK_MSG(strstr(e.msg, "FACEMILL_CONFIG: ") == e.msg && strstr(e.msg, "nope.yaml"),
              "%s", e.msg);
    unsetenv(FM_CONFIG_ENV);

    /* Errors leave the configuration and argv as they were. */
    struct {
        char *args[6];
        const char *want;
    } bad[] = {
        {{"x", "a", "--set", "detect.min_face=abc", NULL},
         "--set: detect.min_face: expected an integer, got 'abc'"},
        {{"x", "--set", "detect.min_face=30", "--set", NULL}, "--set needs a KEY=VALUE argument"},
        {{"x", "--config", NULL}, "--config needs a FILE argument"},
        {{"x", "--config=", NULL}, "--config= needs a FILE argument"},
        {{"x", "--config", file, "--config", file, NULL}, "--config given more than once"},
        {{"x", "--set", "detect.min_face=30", "--config", missing, NULL}, "nope.yaml: No such file"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *copy[6];
        int n = 0;
        while (bad[i].args[n])
            n++;
        memcpy(copy, bad[i].args, sizeof copy);
        argc = n;
        fm_config_defaults(&c);
        fm_status st = fm_config_from_args(&c, &argc, bad[i].args, &e);
        CHECK(st != FM_OK);
        CHECK_MSG(strstr(e.msg, bad[i].want) != NULL, "case %zu: '%s' lacks '%s'", i, e.msg,
                  bad[i].want);
        CHECK(argc == n && memcmp(copy, bad[i].args, sizeof copy) == 0);
        CHECK(fm_config_equal(&c, &d));
    }

    /* A bad file named by --config: the file's position is in the message. */
    char badfile[512];
    write_file(badfile, sizeof badfile, "badargs.yaml", "engine:\n  threads: 65\n");
    char *argv7[] = {"x", "--config", badfile, NULL};
    argc = 3;
    fm_config_defaults(&c);
    CHECK(fm_config_from_args(&c, &argc, argv7, &e) == FM_ERR_CONFIG);
    CHECK_MSG(strstr(e.msg, "badargs.yaml:2:12: engine.threads: must be between 1 and 64"),
              "%s", e.msg);
    CHECK(argc == 3);
}

static void test_dump(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/dump.yaml", tmpdir);
    fm_config c, d, r;
    fm_error e = {0};

    /* Defaults: readable, and read back equal. */
    fm_config_defaults(&c);
    FILE *f = fopen(path, "w");
    CHECK(f && fm_config_dump(&c, f) == FM_OK);
    fclose(f);
    fm_config_defaults(&r);
    perturb(&r, &fm_config_settings[0]);
    CHECK_MSG(fm_config_load_file(&r, path, &e) == FM_OK, "%s", e.msg);
    CHECK(fm_config_equal(&r, &c));

    char *text = NULL;
    size_t len = 0;
    f = open_memstream(&text, &len);
    CHECK(fm_config_dump(&c, f) == FM_OK);
    fclose(f);
    CHECK(strstr(text, "\nlog:\n  level: info\n  file: \"\"\nengine:\n  threads: 1\n") != NULL);
    CHECK(strstr(text, "\nmodels:\n  dir: \"\"\n") != NULL);
    CHECK(strstr(text, "  scale_factor: 0.709\n  pnet_threshold: 0.6\n") != NULL);
    CHECK(strstr(text, "\ndetect:\n") != NULL && strstr(text, "\n  max_faces: 64\n") != NULL);
    free(text);

    /* Every setting changed, awkward string, floats that need all 17 digits. */
    fm_config_defaults(&c);
    for (size_t i = 0; i < fm_config_settings_count; i++)
        perturb(&c, &fm_config_settings[i]);
    snprintf(c.models.dir, sizeof c.models.dir, "we\"ird\\ path: #x\ttab ~ yes 'q' \xc3\xa9");
    c.detect.scale_factor = 0.1 + 0.2;
    c.detect.rnet_threshold = 1.0 / 3.0;
    c.detect.onet_threshold = 5e-324; /* smallest subnormal */
    f = fopen(path, "w");
    CHECK(f && fm_config_dump(&c, f) == FM_OK);
    fclose(f);
    fm_config_defaults(&r);
    CHECK_MSG(fm_config_load_file(&r, path, &e) == FM_OK, "%s", e.msg);
    CHECK(fm_config_equal(&r, &c));
    CHECK(strcmp(r.models.dir, c.models.dir) == 0);
    CHECK(r.detect.scale_factor == 0.1 + 0.2);
    fm_config_defaults(&d);
    CHECK(!fm_config_equal(&r, &d));
    unlink(path);

    /* describe names every key with its bounds. */
    f = open_memstream(&text, &len);
    CHECK(fm_config_describe(f) == FM_OK);
    fclose(f);
    for (size_t i = 0; i < fm_config_settings_count; i++) {
        char line[128];
        snprintf(line, sizeof line, "%s (", fm_config_settings[i].key);
        CHECK_MSG(strstr(text, line) != NULL, "describe lacks %s", fm_config_settings[i].key);
    }
    CHECK(strstr(text, "detect.min_face (int, default 20, 8..10000)\n    ") != NULL);
    CHECK(strstr(text, "detect.scale_factor (float, default 0.709, 0.3..0.95)\n") != NULL);
    CHECK(strstr(text, "log.level (one of: error, warn, info, debug, default info)\n") != NULL);
    CHECK(strstr(text, "models.dir (string, default \"\")\n") != NULL);
    CHECK(strstr(text, "decode.formats (some of: jpeg, png, webp, heic, avif, tiff, default "
                       "jpeg,png,webp,heic,avif,tiff)\n") != NULL);
    free(text);
}

int main(void)
{
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "config") != 0)
        return 1;
    test_table();
    test_defaults();
    test_default_file();
    test_nested_file();
    test_load_errors();
    test_set();
    test_not_regular();
    test_bool();
    test_args();
    test_dump();
    fm_test_remove_tree(tmpdir);
    return fm_test_done("test_config");
}
