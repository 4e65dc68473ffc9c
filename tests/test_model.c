/* test_model.c - the model file module: writer -> reader round trips with exact values,
 * a hostile-file suite that corrupts every field the reader checks (on an f32 file
 * and on one with f16 tensors), f16 tensors kept away from float bindings, and
 * existing files rewritten byte for byte.
 *
 * Why it exists: the reader is the boundary between untrusted files and pointers the
 * engine dereferences without further checks. Each corruption below must come back
 * as the right status with a message, never as a crash or an out-of-bounds read (the
 * sanitizer build runs this same program).
 */
#include "facemill/model.h"
#include "facemill/sha256.h"
#include "fm_test.h"
#include "fm_test_model.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static char base_path[300];
static char work_path[300];

/* ---------------------------------------------------------------- helpers ---- */

static void fix_data_crc(uint8_t *b, size_t len)
{
    uint64_t data_offset = fm_test_get64(b + 56);
    fm_test_put32(b + 76, fm_model_crc32(0, b + data_offset, len - (size_t)data_offset));
    fm_test_fix_index_crc(b, len);
}

/* Reads everything a model hands out, so ASan sees any pointer past the mapping. */
static double touch_model(const fm_model *m)
{
    double sum = 0;
    for (size_t i = 0; i < fm_model_tensor_count(m); i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        CHECK((t->dtype == FM_MODEL_DTYPE_F32) == (t->data != NULL));
        CHECK(t->nbytes == t->count * fm_model_dtype_size(t->dtype));
        const uint8_t *raw = t->raw;
        for (uint64_t k = 0; k < t->nbytes; k++)
            sum += raw[k] & 1;
        for (uint64_t k = 0; t->data && k < t->count; k++)
            sum += t->data[k] == t->data[k] ? 1 : 0;
        sum += (double)strlen(t->name);
        CHECK(fm_model_tensor(m, t->name) == t);
    }
    for (size_t i = 0; i < fm_model_meta_count(m); i++) {
        const char *key, *s;
        fm_model_meta_type type;
        size_t n = 0, len;
        int64_t v;
        double d;
        const int64_t *iv;
        const double *dv;
        CHECK(fm_model_meta_at(m, i, &key, &type) == FM_OK);
        sum += (double)strlen(key);
        switch (type) {
        case FM_MODEL_META_I64: fm_model_meta_i64(m, key, &v, NULL); sum += (double)(v & 1); break;
        case FM_MODEL_META_F64: fm_model_meta_f64(m, key, &d, NULL); sum += d == d; break;
        case FM_MODEL_META_STR: fm_model_meta_str(m, key, &s, &len, NULL); sum += (double)len; break;
        case FM_MODEL_META_I64_ARRAY:
            fm_model_meta_i64_array(m, key, &iv, &n, NULL);
            for (size_t k = 0; k < n; k++)
                sum += (double)(iv[k] & 1);
            break;
        case FM_MODEL_META_F64_ARRAY:
            fm_model_meta_f64_array(m, key, &dv, &n, NULL);
            for (size_t k = 0; k < n; k++)
                sum += dv[k] == dv[k];
            break;
        case FM_MODEL_META_STR_ARRAY:
            fm_model_meta_str_array(m, key, NULL, &n, NULL);
            for (size_t k = 0; k < n; k++) {
                fm_model_meta_str_array_at(m, key, k, &s, &len, NULL);
                sum += (double)strlen(s);
            }
            break;
        }
    }
    return sum;
}

/* Writes buf to the work file and opens it; on success touches and closes it. */
static fm_status open_bytes(const uint8_t *buf, size_t len, unsigned flags, fm_error *err)
{
    if (fm_test_write_file(work_path, buf, len) != 0)
        exit(1);
    fm_model *m = (fm_model *)(uintptr_t)1;
    fm_status st = fm_model_open(&m, work_path, flags, err);
    if (st == FM_OK) {
        touch_model(m);
        fm_model_close(&m);
        CHECK(m == NULL);
    } else {
        CHECK(m == NULL);
        CHECK(err->msg[0] != '\0');
        CHECK(err->code == st);
    }
    return st;
}

static int n_cases;

/* Opens buf and checks the status (and, when substr is not NULL, the message). */
static void expect(const uint8_t *buf, size_t len, unsigned flags, fm_status want,
                   const char *substr, const char *label)
{
    fm_error err = {0};
    fm_status st = open_bytes(buf, len, flags, &err);
    n_cases++;
    CHECK_MSG(st == want, "%s: got '%s' (%s), want '%s'", label, fm_status_to_string(st),
              err.msg, fm_status_to_string(want));
    if (substr && st == want)
        CHECK_MSG(strstr(err.msg, substr) != NULL, "%s: message '%s' lacks '%s'", label,
                  err.msg, substr);
}

/* Copies the base file, sets the little-endian field of width bytes (1, 4 or 8) at
 * off to v, fixes the index CRC and expects want. */
static void expect_field(const uint8_t *base, size_t len, size_t off, int width, uint64_t v,
                         fm_status want, const char *substr, const char *label)
{
    uint8_t *b = malloc(len);
    memcpy(b, base, len);
    if (width == 1)
        b[off] = (uint8_t)v;
    else if (width == 4)
        fm_test_put32(b + off, (uint32_t)v);
    else
        fm_test_put64(b + off, v);
    fm_test_fix_index_crc(b, len);
    char l[160];
    snprintf(l, sizeof l, "%s = %" PRIu64, label, v);
    expect(b, len, 0, want, substr, l);
    free(b);
}

/* The u32 / u64 field at off set to v (expect_field). */
static void expect_u32(const uint8_t *base, size_t len, size_t off, uint32_t v,
                       fm_status want, const char *substr, const char *label)
{
    expect_field(base, len, off, 4, v, want, substr, label);
}

static void expect_u64(const uint8_t *base, size_t len, size_t off, uint64_t v,
                       fm_status want, const char *substr, const char *label)
{
    expect_field(base, len, off, 8, v, want, substr, label);
}

/* Positions of the fields of directory entry idx / metadata entry idx in a file. */
typedef struct dirpos {
    size_t name_len, name, dtype, ndim, dims, offset, nbytes;
} dirpos;

static dirpos dir_entry(const uint8_t *b, unsigned idx)
{
    size_t pos = (size_t)fm_test_get64(b + 40);
    for (unsigned i = 0;; i++) {
        dirpos d;
        d.name_len = pos;
        d.name = pos + 4;
        d.dtype = d.name + fm_test_get32(b + pos);
        d.ndim = d.dtype + 4;
        d.dims = d.ndim + 4;
        d.offset = d.dims + 8 * fm_test_get32(b + d.ndim);
        d.nbytes = d.offset + 8;
        if (i == idx)
            return d;
        pos = d.nbytes + 8;
    }
}

typedef struct metapos {
    size_t key_len, key, type, value;
} metapos;

static metapos meta_entry(const uint8_t *b, unsigned idx)
{
    size_t pos = 128;
    for (unsigned i = 0;; i++) {
        metapos e;
        e.key_len = pos;
        e.key = pos + 4;
        e.type = e.key + fm_test_get32(b + pos);
        e.value = e.type + 4;
        if (i == idx)
            return e;
        uint32_t type = fm_test_get32(b + e.type), n;
        switch (type) {
        case 1: case 2: pos = e.value + 8; break;
        case 3: pos = e.value + 4 + fm_test_get32(b + e.value); break;
        case 4: case 5: pos = e.value + 4 + 8 * (size_t)fm_test_get32(b + e.value); break;
        default:
            n = fm_test_get32(b + e.value);
            pos = e.value + 4;
            for (uint32_t k = 0; k < n; k++)
                pos += 4 + fm_test_get32(b + pos);
        }
    }
}

/* --------------------------------------------------------------- the model ---- */

#define T1_N 15
#define T3_N 54

static const int64_t base_i64s[] = {INT64_MIN, -1, 0, 1, INT64_MAX};
static const double base_f64s[] = {0.1, -0.0, 1e308, 5e-324, -2.5};
static const char *const base_strs[] = {"White", "Black", "", "Indian \xc3\xa9\xe6\xbc\xa2",
                                        "Others"};

static float t1_data[T1_N], t2_data[T1_N], t3_data[T3_N], t4_data[1];

/* The base model: every metadata type and four tensors; t1 and t2 have the same size
 * (for the overlap case), conv1.w spans several 64-byte blocks. */
static fm_status build_base(const char *path, fm_error *err)
{
    for (int i = 0; i < T1_N; i++) {
        t1_data[i] = (float)i * 0.25f - 1.0f;
        t2_data[i] = -(float)i * 1e-3f;
    }
    for (int i = 0; i < T3_N; i++)
        t3_data[i] = (float)(i * i) / 7.0f;
    t4_data[0] = 3.0e38f;
    fm_model_writer *w = fm_model_writer_new();
    fm_status st = FM_OK;
    const uint64_t d1[] = {3, 5}, d2[] = {T1_N}, d3[] = {2, 3, 3, 3}, d4[] = {1};
    if (!w)
        return FM_ERR_NOMEM;
    if ((st = fm_model_writer_add_str(w, "general.architecture", "test.arch", err)) ||
        (st = fm_model_writer_add_i64(w, "a.i64", -1234567890123LL, err)) ||
        (st = fm_model_writer_add_f64(w, "a.f64", 0.1, err)) ||
        (st = fm_model_writer_add_str(w, "a.str", "h\xc3\xa9llo \xf0\x9f\x98\x80", err)) ||
        (st = fm_model_writer_add_i64_array(w, "a.i64s", base_i64s, 5, err)) ||
        (st = fm_model_writer_add_f64_array(w, "a.f64s", base_f64s, 5, err)) ||
        (st = fm_model_writer_add_str_array(w, "labels.race", base_strs, 5, err)) ||
        (st = fm_model_writer_add_i64_array(w, "a.empty", NULL, 0, err)) ||
        (st = fm_model_writer_add_str_array(w, "a.emptys", NULL, 0, err)) ||
        (st = fm_model_writer_add_str(w, "a.blank", "", err)) ||
        (st = fm_model_writer_add_tensor(w, "t1", 2, d1, t1_data, err)) ||
        (st = fm_model_writer_add_tensor(w, "t2", 1, d2, t2_data, err)) ||
        (st = fm_model_writer_add_tensor(w, "conv1.w", 4, d3, t3_data, err)) ||
        (st = fm_model_writer_add_tensor(w, "t4", 1, d4, t4_data, err)))
        goto done;
    st = fm_model_writer_save(w, path, err);
done:
    fm_model_writer_destroy(&w);
    CHECK(w == NULL);
    return st;
}

/* ------------------------------------------------------------------ tests ---- */

static void test_crc(void)
{
    CHECK(fm_model_crc32(0, "123456789", 9) == 0xCBF43926u);
    CHECK(fm_model_crc32(0, "", 0) == 0);
    uint8_t buf[1000];
    for (int i = 0; i < 1000; i++)
        buf[i] = (uint8_t)(i * 131 + 7);
    uint32_t whole = fm_model_crc32(0, buf, sizeof buf);
    for (size_t cut = 0; cut <= 1000; cut += 37)
        CHECK(fm_model_crc32(fm_model_crc32(0, buf, cut), buf + cut, 1000 - cut) == whole);
}

static void test_round_trip(void)
{
    fm_error err = {0};
    fm_model *m = NULL;
    CHECK_MSG(build_base(base_path, &err) == FM_OK, "%s", err.msg);
    CHECK_MSG(fm_model_open(&m, base_path, FM_MODEL_VERIFY_DATA, &err) == FM_OK, "%s", err.msg);
    if (!m)
        return;
    CHECK(strcmp(fm_model_path(m), base_path) == 0);
    struct stat sb;
    CHECK(stat(base_path, &sb) == 0 && fm_model_file_size(m) == (uint64_t)sb.st_size);

    const char *s;
    size_t len, n;
    int64_t v;
    double d;
    const int64_t *iv;
    const double *dv;
    const char *const *sv;
    CHECK(fm_model_meta_count(m) == 10);
    CHECK(fm_model_meta_str(m, "general.architecture", &s, &len, NULL) == FM_OK &&
          strcmp(s, "test.arch") == 0 && len == 9);
    CHECK(fm_model_meta_i64(m, "a.i64", &v, NULL) == FM_OK && v == -1234567890123LL);
    CHECK(fm_model_meta_f64(m, "a.f64", &d, NULL) == FM_OK && d == 0.1);
    CHECK(fm_model_meta_str(m, "a.str", &s, NULL, NULL) == FM_OK &&
          strcmp(s, "h\xc3\xa9llo \xf0\x9f\x98\x80") == 0);
    CHECK(fm_model_meta_i64_array(m, "a.i64s", &iv, &n, NULL) == FM_OK && n == 5 &&
          memcmp(iv, base_i64s, sizeof base_i64s) == 0);
    CHECK(fm_model_meta_f64_array(m, "a.f64s", &dv, &n, NULL) == FM_OK && n == 5 &&
          memcmp(dv, base_f64s, sizeof base_f64s) == 0);
    CHECK(fm_model_meta_str_array(m, "labels.race", &sv, &n, NULL) == FM_OK && n == 5);
    for (size_t i = 0; i < 5 && n == 5; i++) {
        CHECK(strcmp(sv[i], base_strs[i]) == 0);
        CHECK(fm_model_meta_str_array_at(m, "labels.race", i, &s, &len, NULL) == FM_OK &&
              s == sv[i] && len == strlen(base_strs[i]));
    }
    CHECK(fm_model_meta_i64_array(m, "a.empty", &iv, &n, NULL) == FM_OK && n == 0);
    CHECK(fm_model_meta_str_array(m, "a.emptys", NULL, &n, NULL) == FM_OK && n == 0);
    CHECK(fm_model_meta_str(m, "a.blank", &s, &len, NULL) == FM_OK && len == 0 && s[0] == 0);
    const char *key;
    fm_model_meta_type type;
    CHECK(fm_model_meta_at(m, 6, &key, &type) == FM_OK && strcmp(key, "labels.race") == 0 &&
          type == FM_MODEL_META_STR_ARRAY);
    CHECK(fm_model_meta_at(m, 10, &key, &type) == FM_ERR_INVALID);

    /* Wrong type, missing key, out-of-range index. */
    fm_error e2 = {0};
    v = 42;
    CHECK(fm_model_meta_i64(m, "a.f64", &v, &e2) == FM_ERR_INVALID && v == 42);
    CHECK(strstr(e2.msg, "'a.f64' is f64, not i64") != NULL);
    CHECK(fm_model_meta_str(m, "a.i64", &s, NULL, NULL) == FM_ERR_INVALID);
    CHECK(fm_model_meta_f64_array(m, "a.i64s", &dv, &n, NULL) == FM_ERR_INVALID);
    CHECK(fm_model_meta_i64_array(m, "a.f64s", &iv, &n, NULL) == FM_ERR_INVALID);
    CHECK(fm_model_meta_str_array(m, "a.str", &sv, &n, NULL) == FM_ERR_INVALID);
    CHECK(fm_model_meta_f64(m, "no.such", &d, &e2) == FM_ERR_NOT_FOUND);
    CHECK(strstr(e2.msg, "'no.such' not found") != NULL);
    CHECK(fm_model_meta_str(m, "general", &s, NULL, NULL) == FM_ERR_NOT_FOUND);
    CHECK(fm_model_meta_str_array_at(m, "labels.race", 5, &s, &len, NULL) == FM_ERR_INVALID);

    /* Tensors: directory order, exact data, alignment. */
    CHECK(fm_model_tensor_count(m) == 4);
    const char *names[] = {"t1", "t2", "conv1.w", "t4"};
    const float *datas[] = {t1_data, t2_data, t3_data, t4_data};
    const uint64_t counts[] = {T1_N, T1_N, T3_N, 1};
    for (size_t i = 0; i < 4; i++) {
        const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
        CHECK(t && strcmp(t->name, names[i]) == 0 && t->name_len == strlen(names[i]));
        CHECK(t && t->dtype == FM_MODEL_DTYPE_F32 && t->count == counts[i] &&
              t->nbytes == counts[i] * 4 && t->offset % 64 == 0);
        CHECK(t && (uintptr_t)t->data % 64 == 0);
        CHECK(t && memcmp(t->data, datas[i], (size_t)t->nbytes) == 0);
        CHECK(fm_model_tensor(m, names[i]) == t);
    }
    CHECK(fm_model_tensor_at(m, 4) == NULL);
    const fm_model_tensor_info *c = fm_model_tensor(m, "conv1.w");
    CHECK(c && c->ndim == 4 && c->dims[0] == 2 && c->dims[1] == 3 && c->dims[2] == 3 &&
          c->dims[3] == 3);
    const fm_model_tensor_info *t1 = fm_model_tensor(m, "t1");
    CHECK(t1 && t1->ndim == 2 && t1->dims[0] == 3 && t1->dims[1] == 5 && t1->dims[2] == 1 &&
          t1->dims[3] == 1);
    CHECK(fm_model_tensor(m, "t") == NULL && fm_model_tensor(m, "t1 ") == NULL &&
          fm_model_tensor(m, "") == NULL && fm_model_tensor(m, NULL) == NULL);

    /* The checked lookup builders use. */
    const float *data = NULL;
    const uint64_t want[] = {2, 0, 3, 3}, bad[] = {2, 3, 5, 0}, exact[] = {3, 5};
    CHECK(fm_model_tensor_expect(m, "conv1.w", 4, want, &data, &e2) == FM_OK && data == c->data);
    CHECK(fm_model_tensor_expect(m, "conv1.w", 4, NULL, NULL, &e2) == FM_OK);
    CHECK(fm_model_tensor_expect(m, "t1", 2, exact, &data, &e2) == FM_OK && data == t1->data);
    CHECK(fm_model_tensor_expect(m, "conv1.w", 4, bad, &data, &e2) == FM_ERR_FORMAT);
    CHECK_MSG(strstr(e2.msg, "tensor 'conv1.w': f32 shape [2, 3, 3, 3], expected f32 "
                             "[2, 3, 5, *]") != NULL, "%s", e2.msg);
    CHECK(fm_model_tensor_expect(m, "conv1.w", 3, NULL, &data, &e2) == FM_ERR_FORMAT);
    CHECK(fm_model_tensor_expect(m, "conv2.w", 4, NULL, &data, &e2) == FM_ERR_NOT_FOUND);
    CHECK(strstr(e2.msg, "tensor 'conv2.w' not found") != NULL);
    CHECK(fm_model_tensor_expect(m, "t1", 0, NULL, &data, &e2) == FM_ERR_INVALID);
    CHECK(fm_model_tensor_expect(m, "t1", 5, NULL, &data, &e2) == FM_ERR_INVALID);

    fm_model_close(&m);
    CHECK(m == NULL);
    fm_model_close(&m);
    fm_model_close(NULL);
    fm_model_writer_destroy(NULL);
    fm_model_writer *nw = NULL;
    fm_model_writer_destroy(&nw);

    /* The empty model: header only. */
    char path[320];
    snprintf(path, sizeof path, "%s/empty.fmm", tmpdir);
    fm_model_writer *w = fm_model_writer_new();
    CHECK(w && fm_model_writer_save(w, path, &err) == FM_OK);
    fm_model_writer_destroy(&w);
    CHECK(stat(path, &sb) == 0 && sb.st_size == 128);
    CHECK(fm_model_open(&m, path, FM_MODEL_VERIFY_DATA, &err) == FM_OK);
    if (m) {
        CHECK(fm_model_tensor_count(m) == 0 && fm_model_meta_count(m) == 0);
        CHECK(fm_model_tensor(m, "x") == NULL);
        CHECK(fm_model_meta_i64(m, "x", &v, NULL) == FM_ERR_NOT_FOUND);
        fm_model_close(&m);
    }
    unlink(path);
}

static void test_writer_errors(void)
{
    fm_error err = {0};
    fm_model_writer *w = fm_model_writer_new();
    float f[4] = {1, 2, 3, 4};
    const uint64_t d1[] = {4}, d0[] = {0}, d5[] = {1, 1, 1, 1, 4}, dbig[] = {UINT64_MAX / 2, 4};
    char long_key[300];
    memset(long_key, 'a', 256);
    long_key[256] = 0;
    CHECK(fm_model_writer_add_i64(w, "", 1, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_i64(w, "A", 1, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_i64(w, "a-b", 1, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_i64(w, "a b", 1, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_i64(w, long_key, 1, &err) == FM_ERR_INVALID);
    long_key[255] = 0;
    CHECK(fm_model_writer_add_i64(w, long_key, 1, &err) == FM_OK);
    CHECK(fm_model_writer_add_i64(w, NULL, 1, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_i64(NULL, "a", 1, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_i64(w, "a", 1, &err) == FM_OK);
    CHECK(fm_model_writer_add_f64(w, "a", 1, &err) == FM_ERR_INVALID);
    CHECK(strstr(err.msg, "duplicate metadata key 'a'") != NULL);
    CHECK(fm_model_writer_add_str(w, "s", "\xff", &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_str(w, "s", "\xc0\x80", &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_str(w, "s", "\xed\xa0\x80", &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_str(w, "s", NULL, &err) == FM_ERR_INVALID);
    const char *bad_arr[] = {"ok", "\xfe"};
    CHECK(fm_model_writer_add_str_array(w, "s", bad_arr, 2, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_i64_array(w, "s", NULL, 3, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_f64_array(w, "s", NULL, FM_MODEL_MAX_COUNT + 1, &err) ==
          FM_ERR_LIMIT);
    char *huge = malloc(FM_MODEL_MAX_STR + 2);
    memset(huge, 'x', FM_MODEL_MAX_STR + 1);
    huge[FM_MODEL_MAX_STR + 1] = 0;
    CHECK(fm_model_writer_add_str(w, "s", huge, &err) == FM_ERR_LIMIT);
    huge[FM_MODEL_MAX_STR] = 0;
    CHECK(fm_model_writer_add_str(w, "s", huge, &err) == FM_OK);
    free(huge);

    CHECK(fm_model_writer_add_tensor(w, "t", 1, d1, f, &err) == FM_OK);
    CHECK(fm_model_writer_add_tensor(w, "t", 1, d1, f, &err) == FM_ERR_INVALID);
    CHECK(strstr(err.msg, "duplicate tensor 't'") != NULL);
    CHECK(fm_model_writer_add_tensor(w, "", 1, d1, f, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor(w, "a\nb", 1, d1, f, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor(w, "a\xff", 1, d1, f, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor(w, "u", 0, d1, f, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor(w, "u", 5, d5, f, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor(w, "u", 1, d0, f, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor(w, "u", 2, dbig, f, &err) == FM_ERR_LIMIT);
    CHECK(fm_model_writer_add_tensor(w, "u", 1, d1, NULL, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor(w, "Conv/1 w\xc3\xa9", 1, d1, f, &err) == FM_OK);

    /* A save that cannot create its temporary file leaves nothing behind. */
    char path[400];
    snprintf(path, sizeof path, "%s/no/such/dir/m.fmm", tmpdir);
    CHECK(fm_model_writer_save(w, path, &err) == FM_ERR_IO);
    CHECK(strstr(err.msg, "m.fmm.tmp.") != NULL);
    CHECK(fm_model_writer_save(w, NULL, &err) == FM_ERR_INVALID);
    snprintf(path, sizeof path, "%s/w.fmm", tmpdir);
    CHECK(fm_model_writer_save(w, path, &err) == FM_OK);
    fm_model *m = NULL;
    CHECK(fm_model_open(&m, path, FM_MODEL_VERIFY_DATA, &err) == FM_OK);
    const char *s;
    size_t len = 0;
    CHECK(m && fm_model_meta_str(m, "s", &s, &len, NULL) == FM_OK && len == FM_MODEL_MAX_STR);
    CHECK(m && fm_model_tensor(m, "Conv/1 w\xc3\xa9") != NULL);
    fm_model_close(&m);
    unlink(path);
    fm_model_writer_destroy(&w);

    /* Limits: 4096 metadata entries and 65536 tensors are fine, one more is not. */
    w = fm_model_writer_new();
    char key[32];
    fm_status st = FM_OK;
    for (int i = 0; i < FM_MODEL_MAX_META && st == FM_OK; i++) {
        snprintf(key, sizeof key, "k.%d", i);
        st = fm_model_writer_add_i64(w, key, i, &err);
    }
    CHECK(st == FM_OK);
    CHECK(fm_model_writer_add_i64(w, "k.more", 0, &err) == FM_ERR_LIMIT);
    for (int i = 0; i < FM_MODEL_MAX_TENSORS && st == FM_OK; i++) {
        snprintf(key, sizeof key, "t%d", i);
        float one = (float)i;
        const uint64_t d[] = {1};
        st = fm_model_writer_add_tensor(w, key, 1, d, &one, &err);
    }
    CHECK(st == FM_OK);
    CHECK(fm_model_writer_add_tensor(w, "t.more", 1, d1, f, &err) == FM_ERR_LIMIT);
    CHECK(fm_model_writer_save(w, path, &err) == FM_OK);
    fm_model_writer_destroy(&w);
    CHECK(fm_model_open(&m, path, FM_MODEL_VERIFY_DATA, &err) == FM_OK);
    if (m) {
        int64_t v = 0;
        CHECK(fm_model_meta_count(m) == FM_MODEL_MAX_META);
        CHECK(fm_model_meta_i64(m, "k.4095", &v, NULL) == FM_OK && v == 4095);
        CHECK(fm_model_tensor_count(m) == FM_MODEL_MAX_TENSORS);
        const fm_model_tensor_info *t = fm_model_tensor(m, "t65535");
        CHECK(t && t->data[0] == 65535.0f && t->offset == 65535ull * 64);
        fm_model_close(&m);
    }
    unlink(path);
}

/* Replacing a mapped model by rename: the old mapping keeps the old contents. */
static void test_replace(void)
{
    fm_error err = {0};
    char path[320];
    snprintf(path, sizeof path, "%s/replace.fmm", tmpdir);
    fm_model *a = NULL, *b = NULL;
    for (int round = 0; round < 2; round++) {
        fm_model_writer *w = fm_model_writer_new();
        float v[1024];
        for (int i = 0; i < 1024; i++)
            v[i] = (float)(round * 10000 + i);
        const uint64_t d[] = {1024};
        CHECK(fm_model_writer_add_i64(w, "round", round, &err) == FM_OK);
        CHECK(fm_model_writer_add_tensor(w, "v", 1, d, v, &err) == FM_OK);
        CHECK(fm_model_writer_save(w, path, &err) == FM_OK);
        fm_model_writer_destroy(&w);
        CHECK(fm_model_open(round ? &b : &a, path, 0, &err) == FM_OK);
    }
    if (a && b) {
        int64_t r = -1;
        CHECK(fm_model_meta_i64(a, "round", &r, NULL) == FM_OK && r == 0);
        CHECK(fm_model_meta_i64(b, "round", &r, NULL) == FM_OK && r == 1);
        CHECK(fm_model_tensor(a, "v")->data[1023] == 1023.0f);
        CHECK(fm_model_tensor(b, "v")->data[1023] == 11023.0f);
    }
    fm_model_close(&a);
    fm_model_close(&b);
    unlink(path);
    /* No temporary file is left in the directory. */
    DIR *dir = opendir(tmpdir);
    struct dirent *de;
    int tmp_files = 0;
    while (dir && (de = readdir(dir)))
        if (strstr(de->d_name, ".tmp."))
            tmp_files++;
    if (dir)
        closedir(dir);
    CHECK(tmp_files == 0);
}

static void test_paths(void)
{
    fm_error err = {0};
    fm_model *m = NULL;
    char path[320];
    snprintf(path, sizeof path, "%s/does-not-exist.fmm", tmpdir);
    CHECK(fm_model_open(&m, path, 0, &err) == FM_ERR_IO && m == NULL);
    CHECK(strstr(err.msg, "does-not-exist.fmm: open: No such file") != NULL);
    CHECK(fm_model_open(&m, tmpdir, 0, &err) == FM_ERR_IO && m == NULL);
    CHECK(fm_model_open(&m, NULL, 0, &err) == FM_ERR_INVALID);
    CHECK(fm_model_open(NULL, base_path, 0, &err) == FM_ERR_INVALID);
    CHECK(fm_model_open(&m, base_path, 0x80, &err) == FM_ERR_INVALID && m == NULL);
    CHECK(fm_model_open(&m, base_path, 0, NULL) == FM_OK); /* err may be NULL */
    fm_model_close(&m);
    snprintf(path, sizeof path, "%s/does-not-exist.fmm", tmpdir);
    CHECK(fm_model_open(&m, path, 0, NULL) == FM_ERR_IO);

    /* A FIFO is refused by its type, without waiting for a writer (given 5 seconds):
     * opened as a model, or hashed as one (expand.source_sha256, --teacher). */
    snprintf(path, sizeof path, "%s/fifo.fmm", tmpdir);
    CHECK(mkfifo(path, 0600) == 0);
    fm_test_alarm(5);
    fm_status st = fm_model_open(&m, path, 0, &err);
    fm_test_alarm(0);
    CHECK_MSG(st == FM_ERR_IO && m == NULL &&
              strstr(err.msg, "fifo.fmm: open: a FIFO, not a regular file"), "%s", err.msg);
    char hex[2 * FM_SHA256_BYTES + 1];
    fm_test_alarm(5);
    st = fm_sha256_file(path, hex, &err);
    fm_test_alarm(0);
    CHECK_MSG(st == FM_ERR_IO && strcmp(hex, "-") == 0 &&
              strstr(err.msg, "fifo.fmm: open: a FIFO, not a regular file"), "%s", err.msg);
    unlink(path);
}

static void test_header(const uint8_t *base, size_t len)
{
    uint8_t *b = malloc(len + 64);
    uint64_t meta_size = fm_test_get64(base + 32), dir_offset = fm_test_get64(base + 40),
             dir_size = fm_test_get64(base + 48), data_offset = fm_test_get64(base + 56),
             data_size = fm_test_get64(base + 64);
    uint32_t n_meta = fm_test_get32(base + 16), n_tensors = fm_test_get32(base + 20);

    expect(base, len, 0, FM_OK, NULL, "base file");
    expect(base, len, FM_MODEL_VERIFY_DATA, FM_OK, NULL, "base file, verify");

    /* Empty, tiny and header-only prefixes. */
    expect(base, 0, 0, FM_ERR_FORMAT, "file size 0 is smaller than the 128-byte header",
           "zero-byte file");
    expect(base, 127, 0, FM_ERR_FORMAT, "smaller than the 128-byte header", "127 bytes");

    /* Magic: every byte. */
    for (int i = 0; i < 8; i++) {
        memcpy(b, base, len);
        b[i] ^= 0x20;
        expect(b, len, 0, FM_ERR_FORMAT, "bad magic", "magic byte");
    }
    /* Version: anything but 1 is FM_ERR_VERSION, CRC fixed or not. */
    expect_u32(base, len, 8, 0, FM_ERR_VERSION, "version 0 is not supported", "version");
    expect_u32(base, len, 8, 2, FM_ERR_VERSION, "version 2 is not supported", "version");
    expect_u32(base, len, 8, UINT32_MAX, FM_ERR_VERSION, NULL, "version");
    memcpy(b, base, len);
    fm_test_put32(b + 8, 2);
    expect(b, len, 0, FM_ERR_VERSION, NULL, "version 2, stale crc");

    uint32_t hs[] = {0, 64, 127, 129, 256, UINT32_MAX};
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++)
        expect_u32(base, len, 12, hs[i], FM_ERR_FORMAT, "header_size", "header_size");
    uint32_t nm[] = {FM_MODEL_MAX_META + 1, UINT32_MAX, n_meta + 1, n_meta - 1, 0};
    for (size_t i = 0; i < sizeof nm / sizeof *nm; i++)
        expect_u32(base, len, 16, nm[i], FM_ERR_FORMAT, NULL, "n_meta");
    expect_u32(base, len, 16, FM_MODEL_MAX_META + 1, FM_ERR_FORMAT, "n_meta 4097 exceeds 4096",
               "n_meta");
    expect_u32(base, len, 16, n_meta - 1, FM_ERR_FORMAT, "but meta_size ends the section",
               "n_meta");
    uint32_t nt[] = {FM_MODEL_MAX_TENSORS + 1, UINT32_MAX, n_tensors + 1, n_tensors - 1, 0};
    for (size_t i = 0; i < sizeof nt / sizeof *nt; i++)
        expect_u32(base, len, 20, nt[i], FM_ERR_FORMAT, NULL, "n_tensors");
    expect_u32(base, len, 20, n_tensors - 1, FM_ERR_FORMAT, "but dir_size ends the section",
               "n_tensors");

    uint64_t mo[] = {0, 127, 129, 192, UINT64_MAX};
    for (size_t i = 0; i < sizeof mo / sizeof *mo; i++)
        expect_u64(base, len, 24, mo[i], FM_ERR_FORMAT, "meta_offset", "meta_offset");
    uint64_t ms[] = {0, meta_size - 1, meta_size + 1, UINT64_MAX, UINT64_MAX - 127, len};
    for (size_t i = 0; i < sizeof ms / sizeof *ms; i++)
        expect_u64(base, len, 32, ms[i], FM_ERR_FORMAT, NULL, "meta_size");
    uint64_t dof[] = {0, dir_offset - 1, dir_offset + 1, UINT64_MAX, 128};
    for (size_t i = 0; i < sizeof dof / sizeof *dof; i++)
        expect_u64(base, len, 40, dof[i], FM_ERR_FORMAT, NULL, "dir_offset");
    uint64_t ds[] = {0, dir_size - 1, dir_size + 1, UINT64_MAX, UINT64_MAX - dir_offset + 1,
                     len - dir_offset + 1};
    for (size_t i = 0; i < sizeof ds / sizeof *ds; i++)
        expect_u64(base, len, 48, ds[i], FM_ERR_FORMAT, NULL, "dir_size");
    uint64_t dao[] = {0, data_offset + 1, data_offset - 64, data_offset + 64,
                      UINT64_MAX & ~(uint64_t)63, UINT64_MAX, 128};
    for (size_t i = 0; i < sizeof dao / sizeof *dao; i++)
        expect_u64(base, len, 56, dao[i], FM_ERR_FORMAT, NULL, "data_offset");
    expect_u64(base, len, 56, data_offset + 1, FM_ERR_FORMAT, "is not a multiple of 64",
               "data_offset");
    uint64_t dsz[] = {0, data_size - 1, data_size + 1, UINT64_MAX,
                      UINT64_MAX - data_offset + 1};
    for (size_t i = 0; i < sizeof dsz / sizeof *dsz; i++)
        expect_u64(base, len, 64, dsz[i], FM_ERR_FORMAT, "is not the file size", "data_size");

    /* Index CRC: wrong value. Data CRC: only checked with VERIFY_DATA. */
    memcpy(b, base, len);
    b[72] ^= 1;
    expect(b, len, 0, FM_ERR_FORMAT, "index_crc32", "index crc flipped");
    memcpy(b, base, len);
    b[76] ^= 1;
    fm_test_fix_index_crc(b, len);
    expect(b, len, 0, FM_OK, NULL, "data crc wrong, no verify");
    expect(b, len, FM_MODEL_VERIFY_DATA, FM_ERR_FORMAT, "data_crc32", "data crc wrong, verify");

    /* Reserved bytes: each one. */
    for (int i = 80; i < 128; i++) {
        memcpy(b, base, len);
        b[i] = (uint8_t)(i == 100 ? 0x80 : 1);
        fm_test_fix_index_crc(b, len);
        expect(b, len, 0, FM_ERR_FORMAT, "reserved header byte", "reserved byte");
    }

    /* One extra byte at the end, and a file whose header promises more data. */
    memcpy(b, base, len);
    b[len] = 0;
    expect(b, len + 1, 0, FM_ERR_FORMAT, "is not the file size", "one byte appended");
    free(b);
}

static void test_truncation(const uint8_t *base, size_t len)
{
    uint8_t *b = malloc(len);
    uint64_t dir_end = fm_test_get64(base + 40) + fm_test_get64(base + 48);
    uint64_t data_offset = fm_test_get64(base + 56);
    int bad = 0, cases = 0;
    /* Every cut point of the index region, and every 7th byte of the data section. */
    for (size_t cut = 0; cut < len; cut += cut < dir_end + 64 ? 1 : 7) {
        fm_error err = {0};
        fm_status st = open_bytes(base, cut, 0, &err);
        cases++;
        if (st != FM_ERR_FORMAT) {
            bad++;
            fprintf(stderr, "cut %zu: %s\n", cut, fm_status_to_string(st));
        }
    }
    CHECK_MSG(bad == 0, "%d of %d truncations not refused", bad, cases);
    n_cases += cases;

    /* Truncated, with data_size and the CRC patched to match: the tensors that no
     * longer fit must be named. */
    bad = 0;
    cases = 0;
    for (size_t cut = (size_t)data_offset; cut < len; cut += 4) {
        memcpy(b, base, len);
        fm_test_put64(b + 64, cut - data_offset);
        fm_test_fix_index_crc(b, cut);
        fm_error err = {0};
        fm_status st = open_bytes(b, cut, 0, &err);
        cases++;
        if (st != FM_ERR_FORMAT || !strstr(err.msg, "bytes exceeds data size")) {
            bad++;
            fprintf(stderr, "consistent cut %zu: %s %s\n", cut, fm_status_to_string(st),
                    err.msg);
        }
    }
    CHECK_MSG(bad == 0, "%d of %d consistent truncations not refused", bad, cases);
    n_cases += cases;
    free(b);
}

/* Sets a u32/u64 at pos in a copy of base, fixes the CRC and expects want. */
static void test_directory(const uint8_t *base, size_t len)
{
    dirpos t1 = dir_entry(base, 0), t2 = dir_entry(base, 1), c3 = dir_entry(base, 2),
           t4 = dir_entry(base, 3);
    uint64_t data_size = fm_test_get64(base + 64);
    CHECK(fm_test_get32(base + t1.name_len) == 2 && memcmp(base + t1.name, "t1", 2) == 0);
    CHECK(memcmp(base + c3.name, "conv1.w", 7) == 0 && fm_test_get32(base + c3.ndim) == 4);

    /* dtype: f16 with an f32 entry's nbytes, reserved int8, unknown values. */
    expect_u32(base, len, t1.dtype, 1, FM_ERR_FORMAT,
                "tensor 't1': nbytes 60 is not product(dims) x 2 = 30", "dtype f16");
    expect_u32(base, len, t1.dtype, 2, FM_ERR_FORMAT, "dtype 2 (int8)", "dtype");
    expect_u32(base, len, t1.dtype, 3, FM_ERR_FORMAT, "dtype 3", "dtype");
    expect_u32(base, len, t1.dtype, UINT32_MAX, FM_ERR_FORMAT, NULL, "dtype");
    /* ndim. */
    expect_u32(base, len, t1.ndim, 0, FM_ERR_FORMAT, "ndim 0 is not 1..4", "ndim");
    expect_u32(base, len, t1.ndim, 5, FM_ERR_FORMAT, "ndim 5 is not 1..4", "ndim");
    expect_u32(base, len, c3.ndim, 5, FM_ERR_FORMAT, "ndim 5", "ndim");
    expect_u32(base, len, t1.ndim, UINT32_MAX, FM_ERR_FORMAT, NULL, "ndim");
    expect_u32(base, len, t1.ndim, 1, FM_ERR_FORMAT, NULL, "ndim 1 (entry misread)");
    /* dims. */
    expect_u64(base, len, t1.dims, 0, FM_ERR_FORMAT, "tensor 't1': dims[0] is 0", "dim 0");
    expect_u64(base, len, c3.dims + 24, 0, FM_ERR_FORMAT, "dims[3] is 0", "dim 0");
    expect_u64(base, len, t1.dims, 4, FM_ERR_FORMAT, "nbytes 60 is not", "dims vs nbytes");
    {
        uint8_t *b = malloc(len);
        memcpy(b, base, len);
        for (int d = 0; d < 4; d++)
            fm_test_put64(b + c3.dims + 8 * d, (uint64_t)1 << 32);
        fm_test_fix_index_crc(b, len);
        expect(b, len, 0, FM_ERR_FORMAT, "product of dims overflows", "dims overflow");
        /* dims whose product x 4 wraps to exactly nbytes. */
        memcpy(b, base, len);
        fm_test_put64(b + t4.dims, ((uint64_t)1 << 62) + 1);
        fm_test_fix_index_crc(b, len);
        expect(b, len, 0, FM_ERR_FORMAT, "overflows", "dims x 4 wraps");
        free(b);
    }
    /* nbytes. */
    uint64_t nb[] = {0, 56, 64, UINT64_MAX, UINT64_MAX - 3};
    for (size_t i = 0; i < sizeof nb / sizeof *nb; i++)
        expect_u64(base, len, t1.nbytes, nb[i], FM_ERR_FORMAT, "is not product(dims) x 4",
                    "nbytes");
    /* offset: unaligned, out of bounds, overflowing u64. */
    uint64_t off1 = fm_test_get64(base + t1.offset), off3 = fm_test_get64(base + c3.offset);
    expect_u64(base, len, t1.offset, off1 + 4, FM_ERR_FORMAT, "is not a multiple of 64",
                "unaligned offset");
    expect_u64(base, len, t1.offset, off1 + 1, FM_ERR_FORMAT, NULL, "unaligned offset");
    expect_u64(base, len, c3.offset, (data_size + 63) / 64 * 64, FM_ERR_FORMAT,
                "exceeds data size", "offset past the end");
    expect_u64(base, len, c3.offset, off3 + 64 * ((data_size - off3) / 64), FM_ERR_FORMAT,
                "exceeds data size", "offset, tail out of bounds");
    expect_u64(base, len, c3.offset, UINT64_MAX & ~(uint64_t)63, FM_ERR_FORMAT,
                "exceeds data size", "offset + nbytes overflows u64");
    expect_u64(base, len, t4.offset, UINT64_MAX - 63, FM_ERR_FORMAT, "exceeds data size",
                "offset near u64 max");
    /* Overlaps: t2 on t1 (same size), and t4 inside conv1.w. */
    expect_u64(base, len, t2.offset, off1, FM_ERR_FORMAT, "overlaps tensor", "overlap same");
    expect_u64(base, len, t4.offset, off3 + 64, FM_ERR_FORMAT,
                "tensor 't4' [", "overlap partial");
    /* Names: length, characters, UTF-8, duplicates. */
    expect_u32(base, len, t1.name_len, 0, FM_ERR_FORMAT, "name_len 0 is not 1..255",
                "name_len");
    expect_u32(base, len, t1.name_len, 256, FM_ERR_FORMAT, "name_len 256", "name_len");
    expect_u32(base, len, t1.name_len, UINT32_MAX, FM_ERR_FORMAT, NULL, "name_len");
    expect_u32(base, len, t1.name_len, 3, FM_ERR_FORMAT, NULL, "name_len + 1");
    expect_field(base, len, t1.name, 1, 0x01, FM_ERR_FORMAT, "control characters", "name ctrl");
    expect_field(base, len, t1.name, 1, 0x00, FM_ERR_FORMAT, "control characters", "name NUL");
    expect_field(base, len, t1.name, 1, 0x7f, FM_ERR_FORMAT, "control characters", "name DEL");
    expect_field(base, len, t1.name, 1, 0xff, FM_ERR_FORMAT, "not UTF-8", "name bad UTF-8");
    expect_field(base, len, t1.name + 1, 1, 0xc3, FM_ERR_FORMAT, NULL, "name truncated UTF-8");
    expect_field(base, len, t1.name, 1, ' ', FM_OK, NULL, "name with a space");
    expect_field(base, len, t2.name + 1, 1, '1', FM_ERR_FORMAT, "tensor 't1': duplicate name",
                "duplicate name");
    expect_field(base, len, t4.name + 1, 1, '1', FM_ERR_FORMAT, "duplicate name",
                "duplicate name, far apart");
}

static void test_metadata(const uint8_t *base, size_t len)
{
    metapos arch = meta_entry(base, 0), i64 = meta_entry(base, 1), f64 = meta_entry(base, 2),
            str = meta_entry(base, 3), i64s = meta_entry(base, 4), race = meta_entry(base, 6);
    CHECK(memcmp(base + i64.key, "a.i64", 5) == 0 && memcmp(base + f64.key, "a.f64", 5) == 0);
    CHECK(memcmp(base + race.key, "labels.race", 11) == 0);

    expect_u32(base, len, arch.key_len, 0, FM_ERR_FORMAT, "metadata entry 0: key_len 0",
                "key_len 0");
    expect_u32(base, len, arch.key_len, 256, FM_ERR_FORMAT, "key_len 256", "key_len 256");
    expect_u32(base, len, arch.key_len, UINT32_MAX, FM_ERR_FORMAT, NULL, "key_len max");
    const uint8_t bad_chars[] = {'A', 'Z', '-', ' ', '/', 0, 0x80, 0xc3, 0xff};
    for (size_t i = 0; i < sizeof bad_chars; i++)
        expect_field(base, len, i64.key + 2, 1, bad_chars[i], FM_ERR_FORMAT,
                    "key has bytes outside [a-z0-9_.]", "key char");
    expect_field(base, len, f64.key + 2, 1, 'i', FM_ERR_FORMAT, "metadata 'a.i64': duplicate key",
                "duplicate key");
    uint32_t types[] = {0, 7, 100, UINT32_MAX};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        expect_u32(base, len, i64.type, types[i], FM_ERR_FORMAT, "metadata 'a.i64': type",
                    "meta type");
    /* A wrong but valid type misreads the rest of the section. */
    expect_u32(base, len, i64.type, FM_MODEL_META_STR, FM_ERR_FORMAT, NULL, "i64 as str");
    expect_u32(base, len, f64.type, FM_MODEL_META_STR_ARRAY, FM_ERR_FORMAT, NULL,
                "f64 as str[]");
    /* String lengths, UTF-8. */
    expect_u32(base, len, str.value, FM_MODEL_MAX_STR + 1, FM_ERR_FORMAT,
                "value length 1048577 exceeds", "str len > 1 MiB");
    expect_u32(base, len, str.value, FM_MODEL_MAX_STR, FM_ERR_FORMAT,
                "but the section ends", "str len past the section");
    expect_u32(base, len, str.value, UINT32_MAX, FM_ERR_FORMAT, NULL, "str len max");
    expect_field(base, len, str.value + 4, 1, 0xff, FM_ERR_FORMAT, "not valid UTF-8", "str 0xff");
    expect_field(base, len, str.value + 4 + 1, 1, 0x80, FM_ERR_FORMAT, "not valid UTF-8",
                "str bad continuation");
    {
        uint8_t *b = malloc(len);
        const uint8_t bad_seqs[][3] = {{0xc0, 0x80, 'l'}, {0xed, 0xa0, 0x80},
                                       {0xf4, 0x90, 0x80}, {0xe0, 0x80, 0x80}};
        for (size_t i = 0; i < 4; i++) {
            memcpy(b, base, len);
            memcpy(b + str.value + 4 + 1, bad_seqs[i], 3);
            fm_test_fix_index_crc(b, len);
            expect(b, len, 0, FM_ERR_FORMAT, "not valid UTF-8", "overlong/surrogate/too big");
        }
        free(b);
    }
    expect_field(base, len, str.value + 4, 1, 0x01, FM_OK, NULL, "control char in a str value");
    /* Array counts. */
    expect_u32(base, len, i64s.value, FM_MODEL_MAX_COUNT + 1, FM_ERR_FORMAT,
                "count 1048577 exceeds", "array count > 1M");
    expect_u32(base, len, i64s.value, FM_MODEL_MAX_COUNT, FM_ERR_FORMAT,
                "but the section ends", "array count past the section");
    expect_u32(base, len, i64s.value, 4, FM_ERR_FORMAT, NULL, "array count - 1");
    expect_u32(base, len, race.value, FM_MODEL_MAX_COUNT, FM_ERR_FORMAT, "needs at least",
                "str[] count past the section");
    expect_u32(base, len, race.value + 4, 1000, FM_ERR_FORMAT, "element 0", "str[] elem len");
    expect_field(base, len, race.value + 4 + 4, 1, 0xfe, FM_ERR_FORMAT, "element 0 is not valid",
                "str[] elem UTF-8");
}

static void test_data_section(const uint8_t *base, size_t len)
{
    uint8_t *b = malloc(len);
    uint64_t data_offset = fm_test_get64(base + 56);
    uint64_t dir_end = fm_test_get64(base + 40) + fm_test_get64(base + 48);
    dirpos t1 = dir_entry(base, 0);
    uint64_t off1 = fm_test_get64(base + t1.offset);

    /* A flipped data byte: found only when asked. */
    memcpy(b, base, len);
    b[data_offset + off1 + 5] ^= 0x10;
    expect(b, len, 0, FM_OK, NULL, "data byte flipped, no verify");
    expect(b, len, FM_MODEL_VERIFY_DATA, FM_ERR_FORMAT, "data_crc32", "data byte flipped");
    memcpy(b, base, len);
    b[len - 1] ^= 0x01;
    expect(b, len, FM_MODEL_VERIFY_DATA, FM_ERR_FORMAT, "data_crc32", "last byte flipped");

    /* Non-zero padding with a matching data CRC: refused by the verify only. */
    memcpy(b, base, len);
    b[data_offset + off1 + 60] = 7; /* t1 is 60 bytes: the next 4 are padding */
    fix_data_crc(b, len);
    expect(b, len, 0, FM_OK, NULL, "padding set, no verify");
    expect(b, len, FM_MODEL_VERIFY_DATA, FM_ERR_FORMAT, "of the data section is not zero",
           "padding set, verify");
    if (data_offset > dir_end) {
        memcpy(b, base, len);
        b[dir_end] = 1;
        expect(b, len, 0, FM_OK, NULL, "pre-data padding set, no verify");
        expect(b, len, FM_MODEL_VERIFY_DATA, FM_ERR_FORMAT, "before data_offset is not zero",
               "pre-data padding set");
    }
    free(b);
}

/* Every byte of the index, xor'ed with several patterns: without a CRC fix every one is
 * refused; with it, the reader must answer (any status) without crashing. */
static void test_fuzz_index(const uint8_t *base, size_t len)
{
    uint8_t *b = malloc(len);
    uint64_t dir_end = fm_test_get64(base + 40) + fm_test_get64(base + 48);
    const uint8_t pats[] = {0x01, 0x80, 0xff, 0x41};
    int accepted_stale = 0, ok_fixed = 0, cases = 0;
    for (size_t pos = 0; pos < dir_end; pos++) {
        for (size_t k = 0; k < sizeof pats; k++) {
            fm_error err = {0};
            memcpy(b, base, len);
            b[pos] ^= pats[k];
            if (open_bytes(b, len, 0, &err) == FM_OK)
                accepted_stale++;
            if (pos < 72 || pos >= 76) {
                fm_test_fix_index_crc(b, len);
                fm_status st = open_bytes(b, len, FM_MODEL_VERIFY_DATA, &err);
                CHECK(st == FM_OK || st == FM_ERR_FORMAT || st == FM_ERR_VERSION);
                ok_fixed += st == FM_OK;
            }
            cases++;
        }
    }
    CHECK_MSG(accepted_stale == 0, "%d corrupted files accepted", accepted_stale);
    fprintf(stderr, "fuzz: %d index corruptions, all refused; with the CRC fixed %d still "
                    "valid (value bytes)\n", cases, ok_fixed);
    n_cases += 2 * cases;
    free(b);
}

/* ------------------------------------------------------------- f16 tensors ---- */

#define H1_N 3       /* 6 bytes: the next tensor still starts 64 bytes on */
#define H3_N (4 * 33)

static uint16_t h1_bits[H1_N], h3_bits[H3_N];
static float f2_data[4] = {1.5f, -2.0f, 0.0f, 65504.0f};

/* A model mixing f16 and f32 tensors: "h" f16 [3], "f" f32 [2, 2], "hh" f16 [4, 33]
 * holding bit patterns of every kind (zeros, subnormals, normals, infinities, NaNs). */
static fm_status build_f16(const char *path, fm_error *err)
{
    h1_bits[0] = 0x3c00; /* 1.0 */
    h1_bits[1] = 0x8001; /* the negative smallest subnormal */
    h1_bits[2] = 0x7d01; /* a signalling NaN with a payload */
    uint32_t x = 99;
    for (int i = 0; i < H3_N; i++) {
        x = x * 1664525u + 1013904223u;
        h3_bits[i] = (uint16_t)(x >> 16);
    }
    const uint64_t d1[] = {H1_N}, d2[] = {2, 2}, d3[] = {4, 33};
    fm_model_writer *w = fm_model_writer_new();
    fm_status st;
    if (!w)
        return FM_ERR_NOMEM;
    if ((st = fm_model_writer_add_str(w, "general.architecture", "test.f16", err)) ||
        (st = fm_model_writer_add_tensor_f16(w, "h", 1, d1, h1_bits, err)) ||
        (st = fm_model_writer_add_tensor(w, "f", 2, d2, f2_data, err)) ||
        (st = fm_model_writer_add_tensor_f16(w, "hh", 2, d3, h3_bits, err)))
        goto done;
    st = fm_model_writer_save(w, path, err);
done:
    fm_model_writer_destroy(&w);
    return st;
}

/* f16 tensors: written and read back exactly, never handed out as floats, refused by
 * the float binding with a message that says what to do; then the hostile suites on
 * this file. */
static void test_f16(void)
{
    fm_error err = {0};
    char path[320];
    snprintf(path, sizeof path, "%s/compact.f16.fmm", tmpdir);
    CHECK_MSG(build_f16(path, &err) == FM_OK, "%s", err.msg);
    fm_model *m = NULL;
    CHECK_MSG(fm_model_open(&m, path, FM_MODEL_VERIFY_DATA, &err) == FM_OK, "%s", err.msg);
    if (!m)
        return;
    const fm_model_tensor_info *h = fm_model_tensor(m, "h"), *f = fm_model_tensor(m, "f"),
                               *hh = fm_model_tensor(m, "hh");
    CHECK(h && f && hh);
    if (h && f && hh) {
        CHECK(h->dtype == FM_MODEL_DTYPE_F16 && h->count == H1_N && h->nbytes == 2 * H1_N);
        CHECK(h->offset == 0 && f->offset == 64 && hh->offset == 128);
        CHECK(h->data == NULL && hh->data == NULL);
        CHECK(h->raw && (uintptr_t)h->raw % 64 == 0 && (uintptr_t)hh->raw % 64 == 0);
        CHECK(memcmp(h->raw, h1_bits, sizeof h1_bits) == 0);
        CHECK(hh->dtype == FM_MODEL_DTYPE_F16 && hh->ndim == 2 && hh->dims[1] == 33 &&
              hh->nbytes == 2 * H3_N && memcmp(hh->raw, h3_bits, sizeof h3_bits) == 0);
        CHECK(f->dtype == FM_MODEL_DTYPE_F32 && f->data && (const void *)f->data == f->raw &&
              memcmp(f->data, f2_data, sizeof f2_data) == 0);
    }
    CHECK(fm_model_file_size(m) % 64 == 8); /* "hh" ends the file: 128 + 264 data bytes */
    const float *data = (const float *)(uintptr_t)1;
    char want[1000];
    snprintf(want, sizeof want, "%s: tensor 'hh' is f16: expand the file first (facemill "
                                "model expand %s OUT.fmm)", path, path);
    CHECK(fm_model_tensor_expect(m, "hh", 2, NULL, &data, &err) == FM_ERR_FORMAT);
    CHECK_MSG(strcmp(err.msg, want) == 0, "%s", err.msg);
    CHECK(data == (const float *)(uintptr_t)1); /* untouched */
    CHECK(fm_model_tensor_expect(m, "h", 1, NULL, NULL, &err) == FM_ERR_FORMAT);
    CHECK(fm_model_tensor_expect(m, "f", 2, NULL, &data, &err) == FM_OK && data == f->data);
    CHECK(strcmp(fm_model_dtype_name(FM_MODEL_DTYPE_F16), "f16") == 0 &&
          strcmp(fm_model_dtype_name(FM_MODEL_DTYPE_F32), "f32") == 0 &&
          strcmp(fm_model_dtype_name((fm_model_dtype)7), "unknown") == 0);
    CHECK(fm_model_dtype_size(FM_MODEL_DTYPE_F16) == 2 &&
          fm_model_dtype_size(FM_MODEL_DTYPE_F32) == 4 &&
          fm_model_dtype_size(FM_MODEL_DTYPE_I8) == 0);
    fm_model_close(&m);

    /* Writer errors are the f32 writer's. */
    fm_model_writer *w = fm_model_writer_new();
    const uint64_t d[] = {2}, d0[] = {0};
    CHECK(fm_model_writer_add_tensor(w, "x", 1, d, f2_data, &err) == FM_OK);
    CHECK(fm_model_writer_add_tensor_f16(w, "x", 1, d, h1_bits, &err) == FM_ERR_INVALID);
    CHECK(strstr(err.msg, "duplicate tensor 'x'") != NULL);
    CHECK(fm_model_writer_add_tensor_f16(w, "y", 1, d, NULL, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor_f16(w, "y", 1, d0, h1_bits, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor_f16(w, "y", 5, d, h1_bits, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor_f16(w, "", 1, d, h1_bits, &err) == FM_ERR_INVALID);
    CHECK(fm_model_writer_add_tensor_f16(w, "y", 1, d, h1_bits, &err) == FM_OK);
    fm_model_writer_destroy(&w);

    size_t len = 0;
    uint8_t *b = fm_test_read_file(path, &len);
    CHECK(b != NULL);
    if (!b)
        return;
    dirpos e0 = dir_entry(b, 0), e1 = dir_entry(b, 1), e2 = dir_entry(b, 2);
    CHECK(fm_test_get32(b + e0.dtype) == 1 && fm_test_get32(b + e1.dtype) == 0 &&
          fm_test_get32(b + e2.dtype) == 1);
    expect_u32(b, len, e0.dtype, 0, FM_ERR_FORMAT,
               "tensor 'h': nbytes 6 is not product(dims) x 4 = 12", "f16 read as f32");
    expect_u32(b, len, e1.dtype, 1, FM_ERR_FORMAT,
               "tensor 'f': nbytes 16 is not product(dims) x 2 = 8", "f32 read as f16");
    expect_u32(b, len, e2.dtype, 2, FM_ERR_FORMAT, "dtype 2 (int8) is not supported",
               "int8");
    expect_u64(b, len, e0.nbytes, 12, FM_ERR_FORMAT, "is not product(dims) x 2 = 6",
               "f16 nbytes x 4");
    expect_u64(b, len, e0.dims, 32, FM_ERR_FORMAT, "nbytes 6 is not product(dims) x 2 = 64",
               "f16 dims");
    expect_u64(b, len, e0.nbytes, 64, FM_ERR_FORMAT, NULL, "f16 nbytes");
    {
        /* "h" grown to 32 halfs fills its 64-byte block exactly (the zero padding
         * becomes data: valid, even verified); one more overlaps "f". */
        uint8_t *c = malloc(len);
        memcpy(c, b, len);
        fm_test_put64(c + e0.dims, 32);
        fm_test_put64(c + e0.nbytes, 64);
        fm_test_fix_index_crc(c, len);
        expect(c, len, FM_MODEL_VERIFY_DATA, FM_OK, NULL, "f16 tensor filling its block");
        fm_test_put64(c + e0.dims, 33);
        fm_test_put64(c + e0.nbytes, 66);
        fm_test_fix_index_crc(c, len);
        expect(c, len, 0, FM_ERR_FORMAT, "tensor 'f' [64, 80) overlaps tensor 'h' [0, 66)",
               "f16 tensor one half into the next");
        free(c);
    }
    /* The generic suites, on a file with f16 tensors. */
    test_truncation(b, len);
    test_fuzz_index(b, len);
    free(b);
    unlink(path);
}

/* Copying every metadata entry and tensor of a file into a writer gives the same
 * bytes: the committed heads (written by the C writer before f16 existed) and, when
 * models/fetch has run, the converted backbone (written by fmmodel.py). */
static void test_rewrite(void)
{
    const char *files[] = {"models/heads_dlib.fmm", "models/cache/dlib_resnet.fmm",
                           "models/cache/mtcnn_pnet.fmm"};
    char in[1024], out[320];
    snprintf(out, sizeof out, "%s/rewrite.fmm", tmpdir);
    for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
        fm_test_source_path(in, sizeof in, files[k]);
        if (access(in, R_OK) != 0) {
            fprintf(stderr, "rewrite: %s missing (run models/fetch), not checked\n", in);
            continue;
        }
        fm_error err = {0};
        fm_model *m = NULL;
        fm_model_writer *w = fm_model_writer_new();
        CHECK_MSG(fm_model_open(&m, in, FM_MODEL_VERIFY_DATA, &err) == FM_OK, "%s", err.msg);
        for (size_t i = 0; m && i < fm_model_meta_count(m); i++)
            CHECK_MSG(fm_model_writer_add_meta_from(w, m, i, &err) == FM_OK, "%s", err.msg);
        for (size_t i = 0; m && i < fm_model_tensor_count(m); i++) {
            const fm_model_tensor_info *t = fm_model_tensor_at(m, i);
            CHECK(fm_model_writer_add_tensor(w, t->name, t->ndim, t->dims, t->data, &err) ==
                  FM_OK);
        }
        if (m) {
            CHECK(fm_model_writer_add_meta_from(w, m, 0, &err) == FM_ERR_INVALID);
            CHECK(fm_model_writer_add_meta_from(w, m, fm_model_meta_count(m), &err) ==
                  FM_ERR_INVALID);
        }
        CHECK_MSG(fm_model_writer_save(w, out, &err) == FM_OK, "%s", err.msg);
        fm_model_writer_destroy(&w);
        fm_model_close(&m);
        size_t la = 0, lb = 0;
        uint8_t *a = fm_test_read_file(in, &la), *b = fm_test_read_file(out, &lb);
        int same = a && b && la == lb && memcmp(a, b, la) == 0;
        CHECK_MSG(same, "%s: rewritten file differs", files[k]);
        fprintf(stderr, "rewrite: %s, %zu bytes, %s\n", files[k], la,
                same ? "byte-identical" : "DIFFERENT");
        free(a);
        free(b);
    }
    unlink(out);
}

int main(void)
{
    if (fm_test_tmpdir(tmpdir, sizeof tmpdir, "model") != 0)
        return 1;
    snprintf(base_path, sizeof base_path, "%s/base.fmm", tmpdir);
    snprintf(work_path, sizeof work_path, "%s/work.fmm", tmpdir);

    test_crc();
    test_round_trip();
    test_writer_errors();
    test_replace();
    test_paths();

    size_t len = 0;
    uint8_t *base = fm_test_read_file(base_path, &len);
    CHECK(base != NULL && len > 128);
    if (base) {
        fprintf(stderr, "base model: %zu bytes, index %" PRIu64 " bytes, data at %" PRIu64 "\n",
                len, fm_test_get64(base + 40) + fm_test_get64(base + 48), fm_test_get64(base + 56));
        test_header(base, len);
        test_truncation(base, len);
        test_directory(base, len);
        test_metadata(base, len);
        test_data_section(base, len);
        test_fuzz_index(base, len);
        free(base);
    }
    test_f16();
    test_rewrite();
    fprintf(stderr, "hostile files opened: %d\n", n_cases);
    fm_test_remove_tree(tmpdir);
    return fm_test_done("test_model");
}
