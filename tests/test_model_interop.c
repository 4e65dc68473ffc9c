/* test_model_interop.c - model files written by Python are read exactly by C, and the
 * other way round; both writers produce the same bytes for the same model.
 *
 * Why it exists: converters and the trainer write .fmm files with
 * models/tools/fmmodel.py, workers read them with worker/engine/model.c. A difference in
 * layout, padding, CRC or encoding between the two would only show up on a worker
 * refusing (or misreading) a freshly converted model. The Python half of this test is
 * tests/model_interop.py; it runs under /usr/bin/python3 (Debian's numpy). Also runs
 * `facemill model info` / `verify` on the files. Skips (77) without python3/numpy.
 */
#include "facemill/model.h"
#include "fm_test.h"
#include "fm_test_model.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define PYTHON "/usr/bin/python3"

static char tmpdir[256];

/* ------------------------------------------------ the reference model (C side) --- */
/* Must match reference() in tests/model_interop.py. */

static const char *const labels[] = {"White", "Black", "Asian", "Indian", "Others", ""};
static const int64_t input_size[] = {150, 150};
static const double input_mean[] = {127.5, 127.5, 127.5};
static const double input_scale[] = {1 / 128.0, 1 / 128.0, 1 / 128.0};
static const double templ[] = {38.2946, 51.6963, 73.5318, 51.5014, 56.0252,
                               71.7366, 41.5493, 92.3655, 70.7299, 92.2041};
#define NAME_UTF8 "Interop \xc3\x84\xc3\xb6 \xe6\xbc\xa2\xe5\xad\x97 \xf0\x9f\x98\x80"

static float ramp[120], bias[3], bits[35], one[1], fc[64 * 17], thirds[40];
static uint16_t half[33], rounded[40];

/* Halfs of every kind first (zeros, subnormals, the normal range's ends, infinities,
 * quiet and signalling NaNs), then an LCG's bit patterns; the same as half_bits() in
 * tests/model_interop.py. */
static const uint16_t half_special[] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x7bff,
                                        0xfbff, 0x7c00, 0xfc00, 0x7e00, 0x7d01, 0xffff};

static void bits_tensor(float *out, int n, uint32_t seed)
{
    uint32_t x = seed;
    for (int i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        memcpy(&out[i], &x, 4);
    }
}

static void make_tensors(void)
{
    for (int i = 0; i < 120; i++)
        ramp[i] = (float)(i * 0.125 - 6.0);
    bias[0] = 1.5f;
    bias[1] = -2.25f;
    bias[2] = (float)3.0e38;
    bits_tensor(bits, 35, 12345);
    one[0] = 42.0f;
    for (int i = 0; i < 64 * 17; i++)
        fc[i] = (float)((double)i / 17.0);
    uint32_t x = 777;
    for (int i = 0; i < 33; i++) {
        x = x * 1664525u + 1013904223u;
        half[i] = i < 12 ? half_special[i] : (uint16_t)(x >> 16);
    }
    /* Rounded by each writer's own conversion: values near ties, tiny, huge. */
    for (int i = 0; i < 40; i++) {
        thirds[i] = (float)((double)(i - 20) / 3.0 * pow(8.0, i % 9 - 4));
        rounded[i] = fm_model_f32_to_f16(thirds[i]);
    }
}

static fm_status write_reference(const char *path, fm_error *err)
{
    fm_model_writer *w = fm_model_writer_new();
    fm_status st;
    const uint64_t d_ramp[] = {2, 3, 4, 5}, d_bias[] = {3}, d_bits[] = {7, 5}, d_one[] = {1},
                   d_fc[] = {64, 17}, d_half[] = {3, 11}, d_rounded[] = {40};
    if (!w)
        return FM_ERR_NOMEM;
    if ((st = fm_model_writer_add_str(w, "general.architecture", "interop.test", err)) ||
        (st = fm_model_writer_add_str(w, "general.name", NAME_UTF8, err)) ||
        (st = fm_model_writer_add_str(w, "general.empty", "", err)) ||
        (st = fm_model_writer_add_i64(w, "a.i64.min", INT64_MIN, err)) ||
        (st = fm_model_writer_add_i64(w, "a.i64.max", INT64_MAX, err)) ||
        (st = fm_model_writer_add_i64(w, "a.i64.zero", 0, err)) ||
        (st = fm_model_writer_add_f64(w, "a.f64.tenth", 0.1, err)) ||
        (st = fm_model_writer_add_f64(w, "a.f64.negzero", -0.0, err)) ||
        (st = fm_model_writer_add_f64(w, "a.f64.big", 1e308, err)) ||
        (st = fm_model_writer_add_f64(w, "a.f64.denormal", 5e-324, err)) ||
        (st = fm_model_writer_add_f64(w, "a.f64.inf", INFINITY, err)) ||
        (st = fm_model_writer_add_i64_array(w, "input.size", input_size, 2, err)) ||
        (st = fm_model_writer_add_f64_array(w, "input.mean", input_mean, 3, err)) ||
        (st = fm_model_writer_add_f64_array(w, "input.scale", input_scale, 3, err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.race", labels, 6, err)) ||
        (st = fm_model_writer_add_f64_array(w, "align.template", templ, 10, err)) ||
        (st = fm_model_writer_add_tensor(w, "conv1.w", 4, d_ramp, ramp, err)) ||
        (st = fm_model_writer_add_tensor(w, "conv1.b", 1, d_bias, bias, err)) ||
        (st = fm_model_writer_add_tensor(w, "bits", 2, d_bits, bits, err)) ||
        (st = fm_model_writer_add_tensor_f16(w, "half", 2, d_half, half, err)) ||
        (st = fm_model_writer_add_tensor(w, "one", 1, d_one, one, err)) ||
        (st = fm_model_writer_add_tensor(w, "fc.w", 2, d_fc, fc, err)) ||
        (st = fm_model_writer_add_tensor_f16(w, "rounded", 1, d_rounded, rounded, err)))
        goto done;
    st = fm_model_writer_save(w, path, err);
done:
    fm_model_writer_destroy(&w);
    return st;
}

static int same_f64(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Checks that the model at path holds exactly the reference. */
static void check_reference(const char *path)
{
    fm_error err = {0};
    fm_model *m = NULL;
    CHECK_MSG(fm_model_open(&m, path, FM_MODEL_VERIFY_DATA, &err) == FM_OK, "%s", err.msg);
    if (!m)
        return;
    const char *s;
    size_t len, n;
    int64_t v;
    double d;
    const int64_t *iv;
    const double *dv;
    const char *const *sv;
    const char *keys[] = {"general.architecture", "general.name", "general.empty",
                          "a.i64.min", "a.i64.max", "a.i64.zero", "a.f64.tenth",
                          "a.f64.negzero", "a.f64.big", "a.f64.denormal", "a.f64.inf",
                          "input.size", "input.mean", "input.scale", "labels.race",
                          "align.template"};
    CHECK(fm_model_meta_count(m) == 16);
    for (size_t i = 0; i < 16; i++) {
        const char *key = NULL;
        CHECK(fm_model_meta_at(m, i, &key, NULL) == FM_OK && key && strcmp(key, keys[i]) == 0);
    }
    CHECK(fm_model_meta_str(m, "general.architecture", &s, &len, NULL) == FM_OK &&
          strcmp(s, "interop.test") == 0);
    CHECK(fm_model_meta_str(m, "general.name", &s, &len, NULL) == FM_OK &&
          strcmp(s, NAME_UTF8) == 0 && len == strlen(NAME_UTF8));
    CHECK(fm_model_meta_str(m, "general.empty", &s, &len, NULL) == FM_OK && len == 0);
    CHECK(fm_model_meta_i64(m, "a.i64.min", &v, NULL) == FM_OK && v == INT64_MIN);
    CHECK(fm_model_meta_i64(m, "a.i64.max", &v, NULL) == FM_OK && v == INT64_MAX);
    CHECK(fm_model_meta_i64(m, "a.i64.zero", &v, NULL) == FM_OK && v == 0);
    CHECK(fm_model_meta_f64(m, "a.f64.tenth", &d, NULL) == FM_OK && same_f64(d, 0.1));
    CHECK(fm_model_meta_f64(m, "a.f64.negzero", &d, NULL) == FM_OK && same_f64(d, -0.0));
    CHECK(fm_model_meta_f64(m, "a.f64.big", &d, NULL) == FM_OK && same_f64(d, 1e308));
    CHECK(fm_model_meta_f64(m, "a.f64.denormal", &d, NULL) == FM_OK && same_f64(d, 5e-324));
    CHECK(fm_model_meta_f64(m, "a.f64.inf", &d, NULL) == FM_OK && same_f64(d, INFINITY));
    CHECK(fm_model_meta_i64_array(m, "input.size", &iv, &n, NULL) == FM_OK && n == 2 &&
          iv[0] == 150 && iv[1] == 150);
    CHECK(fm_model_meta_f64_array(m, "input.mean", &dv, &n, NULL) == FM_OK && n == 3 &&
          memcmp(dv, input_mean, sizeof input_mean) == 0);
    CHECK(fm_model_meta_f64_array(m, "input.scale", &dv, &n, NULL) == FM_OK && n == 3 &&
          memcmp(dv, input_scale, sizeof input_scale) == 0);
    CHECK(fm_model_meta_f64_array(m, "align.template", &dv, &n, NULL) == FM_OK && n == 10 &&
          memcmp(dv, templ, sizeof templ) == 0);
    CHECK(fm_model_meta_str_array(m, "labels.race", &sv, &n, NULL) == FM_OK && n == 6);
    for (size_t i = 0; i < n && i < 6; i++)
        CHECK(strcmp(sv[i], labels[i]) == 0);

    struct {
        const char *name;
        unsigned ndim;
        uint64_t dims[4];
        const void *data;
        size_t count;
        fm_model_dtype dtype;
    } want[] = {{"conv1.w", 4, {2, 3, 4, 5}, ramp, 120, FM_MODEL_DTYPE_F32},
                {"conv1.b", 1, {3}, bias, 3, FM_MODEL_DTYPE_F32},
                {"bits", 2, {7, 5}, bits, 35, FM_MODEL_DTYPE_F32},
                {"half", 2, {3, 11}, half, 33, FM_MODEL_DTYPE_F16},
                {"one", 1, {1}, one, 1, FM_MODEL_DTYPE_F32},
                {"fc.w", 2, {64, 17}, fc, 64 * 17, FM_MODEL_DTYPE_F32},
                {"rounded", 1, {40}, rounded, 40, FM_MODEL_DTYPE_F16}};
    CHECK(fm_model_tensor_count(m) == 7);
    for (size_t i = 0; i < 7; i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        const float *data = NULL;
        size_t esize = fm_model_dtype_size(want[i].dtype);
        CHECK(t && strcmp(t->name, want[i].name) == 0 && t->dtype == want[i].dtype);
        CHECK(t && t->count == want[i].count && t->nbytes == want[i].count * esize &&
              memcmp(t->raw, want[i].data, want[i].count * esize) == 0);
        fm_status st = fm_model_tensor_expect(m, want[i].name, want[i].ndim, want[i].dims,
                                              &data, &err);
        if (want[i].dtype == FM_MODEL_DTYPE_F16) {
            /* Halfs are never bound as floats. */
            CHECK(st == FM_ERR_FORMAT && data == NULL && t && t->data == NULL);
            CHECK_MSG(strstr(err.msg, "is f16: expand the file first (facemill model "
                                      "expand ") != NULL, "%s", err.msg);
        } else {
            CHECK_MSG(st == FM_OK, "%s", err.msg);
            CHECK(data && memcmp(data, want[i].data, want[i].count * 4) == 0);
        }
    }
    fm_model_close(&m);
}

/* Writes corrupted variants of the model (every index byte xor'ed, CRC fixed, plus
 * truncations and data flips) into dir with the C reader's verdict for each in
 * dir/manifest, then asks fmmodel.py to reach the same verdict on every file.
 * Returns the number of files. */
static int check_agreement(const uint8_t *good, size_t len, const char *dir,
                           const char *script)
{
    char manifest[400], path[400], name[64];
    snprintf(manifest, sizeof manifest, "%s/manifest", dir);
    FILE *mf = fopen(manifest, "w");
    uint8_t *b = malloc(len);
    uint64_t dir_end = fm_test_get64(good + 40) + fm_test_get64(good + 48);
    int files = 0;
    CHECK(mf && b);
    if (!mf || !b) {
        free(b);
        return 0;
    }
    const uint8_t pats[] = {0x01, 0xff};
    for (size_t pos = 0; pos < len; pos++) {
        for (size_t k = 0; k < 2; k++) {
            size_t n = len;
            memcpy(b, good, len);
            if (pos < dir_end) {
                if (pos >= 72 && pos < 76)
                    continue;
                b[pos] ^= pats[k];
                fm_test_fix_index_crc(b, len);
            } else if (k == 0 && pos % 97 == 0) {
                b[pos] ^= 0x20; /* data byte: data CRC */
            } else if (k == 1 && pos % 61 == 0) {
                n = pos; /* truncation */
            } else {
                continue;
            }
            snprintf(name, sizeof name, "f%05d.fmm", files);
            snprintf(path, sizeof path, "%s/%s", dir, name);
            CHECK(fm_test_write_file(path, b, n) == 0);
            fm_model *m = NULL;
            fm_status st = fm_model_open(&m, path, FM_MODEL_VERIFY_DATA, NULL);
            fm_model_close(&m);
            CHECK(st == FM_OK || st == FM_ERR_FORMAT || st == FM_ERR_VERSION);
            fprintf(mf, "%s %s\n", name,
                    st == FM_OK ? "ok" : st == FM_ERR_VERSION ? "version" : "format");
            files++;
        }
    }
    fclose(mf);
    free(b);
    char *agree[] = {PYTHON, (char *)script, "agree", manifest, NULL};
    int rc = fm_test_run(agree, 0);
    CHECK_MSG(rc == 0, "fmmodel.py disagrees with the C reader (exit %d)", rc);
    for (int i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/f%05d.fmm", dir, i);
        unlink(path);
    }
    unlink(manifest);
    return files;
}

int main(void)
{
    if (access(PYTHON, X_OK) != 0)
        return fm_test_skip("test_model_interop", "no %s", PYTHON);
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "interop") != 0)
        return 1;
    char script[1024], py_file[320], c_file[320], bad_file[320], cli[1024];
    fm_test_source_path(script, sizeof script, "tests/model_interop.py");
    snprintf(py_file, sizeof py_file, "%s/py.fmm", tmpdir);
    snprintf(c_file, sizeof c_file, "%s/c.fmm", tmpdir);
    snprintf(bad_file, sizeof bad_file, "%s/bad.fmm", tmpdir);
    make_tensors();

    /* Python writes, C reads. */
    char *py_write[] = {PYTHON, script, "write", py_file, NULL};
    int rc = fm_test_run(py_write, 0);
    if (rc == FM_TEST_SKIP) {
        fm_test_remove_tree(tmpdir);
        return FM_TEST_SKIP;
    }
    CHECK_MSG(rc == 0, "fmmodel.py write exited %d", rc);
    check_reference(py_file);

    /* C writes, Python reads. */
    fm_error err = {0};
    CHECK_MSG(write_reference(c_file, &err) == FM_OK, "%s", err.msg);
    check_reference(c_file);
    char *py_check[] = {PYTHON, script, "check", c_file, NULL};
    CHECK_MSG((rc = fm_test_run(py_check, 0)) == 0, "fmmodel.py check of the C file exited %d",
              rc);
    char *py_check_py[] = {PYTHON, script, "check", py_file, NULL};
    CHECK_MSG((rc = fm_test_run(py_check_py, 0)) == 0,
              "fmmodel.py check of its own file exited %d", rc);

    /* Both writers produce the same bytes. */
    size_t la = 0, lb = 0;
    uint8_t *a = fm_test_read_file(py_file, &la);
    uint8_t *b = fm_test_read_file(c_file, &lb);
    CHECK(a && b && la == lb && memcmp(a, b, la) == 0);
    fprintf(stderr, "interop: Python and C files are %zu and %zu bytes, %s\n", la, lb,
            a && b && la == lb && memcmp(a, b, la) == 0 ? "byte-identical" : "DIFFERENT");

    /* fmmodel.py and the C reader reach the same verdict on corrupted files. */
    if (a)
        fprintf(stderr, "agreement: %d corrupted files checked by both readers\n",
                check_agreement(a, la, tmpdir, script));

    /* A corrupted data byte: refused by the Python reader and by `facemill model
     * verify`, which still accepts the good files. */
    if (a && la > 64) {
        a[la - 1] ^= 0x40;
        CHECK(fm_test_write_file(bad_file, a, la) == 0);
        char *py_bad[] = {PYTHON, script, "check", bad_file, NULL};
        CHECK((rc = fm_test_run(py_bad, 0)) == 1);
    }
    fm_test_bin_path(cli, sizeof cli, "facemill");
    char *info[] = {cli, "model", "info", py_file, NULL};
    char *verify_ok[] = {cli, "model", "verify", py_file, c_file, NULL};
    char *verify_bad[] = {cli, "model", "verify", c_file, bad_file, NULL};
    char *usage[] = {cli, "model", NULL};
    CHECK_MSG((rc = fm_test_run(info, 1)) == 0, "facemill model info exited %d", rc);
    CHECK_MSG((rc = fm_test_run(verify_ok, 1)) == 0, "facemill model verify exited %d", rc);
    CHECK_MSG((rc = fm_test_run(verify_bad, 1)) == 1, "verify of a bad file exited %d", rc);
    CHECK_MSG((rc = fm_test_run(usage, 1)) == 2, "usage error exited %d", rc);
    free(a);
    free(b);
    fm_test_remove_tree(tmpdir);
    return fm_test_done("test_model_interop");
}
