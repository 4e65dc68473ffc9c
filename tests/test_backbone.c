/* test_backbone.c - the backbone module (worker/vision/backbone.c) with the dlib ResNet
 * architecture (worker/vision/arch_dlib_resnet.c), on model files this test writes.
 *
 * Why it exists: agreement with the original library is checked by
 * tests/reference/check_dlib_resnet.py, which needs fetched weights, node and the npm
 * registry. This test needs nothing: it writes a dlib_resnet model with random weights
 * and hostile variants of it, and checks
 *   - every error path of fm_backbone_open says what is wrong: missing file, unknown or
 *     missing architecture, missing or wrongly shaped tensor, missing or malformed
 *     metadata, bad arguments; fm_backbone_forward refuses bad batches;
 *   - the metadata comes through (input size, template, output lengths);
 *   - two calls give bit-identical outputs; a batch of N equals N batches of 1;
 *     asking for one output gives the same values as asking for both;
 *   - "embedding" is fc.weight times "pooled" (the outputs are wired right).
 * When models/cache/dlib_resnet.fmm exists (models/fetch), the batching and
 * determinism checks also run on the real weights; without it the test exits 77
 * (skipped) once everything else has passed.
 */
#include "facemill/backbone.h"
#include "facemill/model.h"
#include "fm_test.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define SIDE 150
#define BATCH 11 /* more than FM_BACKBONE_CHUNK: a batch runs in several passes */
#define EMBED 128
#define POOLED 256

typedef struct block_spec {
    const char *name;
    int cin, cout;
} block_spec;

static const block_spec blocks[] = {
    {"conv32_1", 32, 32},     {"conv32_2", 32, 32},     {"conv32_3", 32, 32},
    {"conv64_down", 32, 64},  {"conv64_1", 64, 64},     {"conv64_2", 64, 64},
    {"conv64_3", 64, 64},     {"conv128_down", 64, 128}, {"conv128_1", 128, 128},
    {"conv128_2", 128, 128},  {"conv256_down", 128, 256}, {"conv256_1", 256, 256},
    {"conv256_2", 256, 256},  {"conv256_down_out", 256, 256},
};
#define N_BLOCKS ((int)(sizeof blocks / sizeof blocks[0]))

static const double tmpl[10] = {47.049183, 46.099033, 99.976133, 46.099033, 73.5127,
                                76.0625,   49.9149,   102.5233,  97.1104,   102.5233};

static fm_test_rng rng = FM_TEST_RNG(12345);

/* What to break in a written model. */
typedef struct variant {
    const char *arch;        /* general.architecture; NULL leaves it out */
    const char *skip_tensor; /* a tensor left out */
    const char *bad_tensor;  /* a tensor written with one output channel too many */
    const char *skip_meta;   /* a metadata key left out */
    int mean_count;          /* values in input.mean */
    int no_tensors;          /* write metadata only */
} variant;

static const variant good = {"dlib_resnet", NULL, NULL, NULL, 3, 0};

static float *fc_copy; /* fc.weight of the last model written, [EMBED][POOLED] */

static int add_tensor(fm_model_writer *w, const variant *v, const char *name, unsigned ndim,
                      uint64_t *dims, float amp)
{
    fm_error err = {0};
    if (v->skip_tensor && strcmp(v->skip_tensor, name) == 0)
        return 0;
    if (v->bad_tensor && strcmp(v->bad_tensor, name) == 0)
        dims[0]++;
    uint64_t count = 1;
    for (unsigned i = 0; i < ndim; i++)
        count *= dims[i];
    float *data = malloc(count * sizeof *data);
    if (!data)
        return -1;
    for (uint64_t i = 0; i < count; i++)
        data[i] = amp * fm_test_rng_signed(&rng);
    if (strcmp(name, "fc.weight") == 0 && count == (uint64_t)EMBED * POOLED)
        memcpy(fc_copy, data, count * sizeof *data);
    fm_status st = fm_model_writer_add_tensor(w, name, ndim, dims, data, &err);
    free(data);
    if (st)
        fprintf(stderr, "add_tensor %s: %s\n", name, fm_error_text(&err));
    return st ? -1 : 0;
}

static int add_conv(fm_model_writer *w, const variant *v, const char *prefix, int cout,
                    int cin, int k)
{
    char name[128];
    uint64_t wd[4] = {(uint64_t)cout, (uint64_t)cin, (uint64_t)k, (uint64_t)k};
    uint64_t bd[1] = {(uint64_t)cout};
    /* uniform with variance 1 / fan_in: activations stay of order 1 through 29 layers */
    const float amp = 1.7f / sqrtf((float)(cin * k * k));
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (add_tensor(w, v, name, 4, wd, amp))
        return -1;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return add_tensor(w, v, name, 1, bd, 0.1f);
}

/* Writes a dlib_resnet model (random weights) changed as v says. 0 on success. */
static int write_model(const char *path, const variant *v)
{
    fm_error err = {0};
    fm_model_writer *w = fm_model_writer_new();
    const double mean[4] = {122.782, 117.001, 104.298, 0.0};
    const double scale[3] = {1.0 / 255, 1.0 / 255, 1.0 / 255};
    const int64_t size[2] = {SIDE, SIDE};
    int rc = -1;
    if (!w)
        return -1;
#define META(key, call)                                                                  \
    if (!(v->skip_meta && strcmp(v->skip_meta, key) == 0) && (call))                     \
        goto done
    if (v->arch && fm_model_writer_add_str(w, "general.architecture", v->arch, &err))
        goto done;
    META("input.size", fm_model_writer_add_i64_array(w, "input.size", size, 2, &err));
    META("input.mean",
         fm_model_writer_add_f64_array(w, "input.mean", mean, (size_t)v->mean_count, &err));
    META("input.scale", fm_model_writer_add_f64_array(w, "input.scale", scale, 3, &err));
    META("align.template", fm_model_writer_add_f64_array(w, "align.template", tmpl, 10, &err));
#undef META
    if (!v->no_tensors) {
        if (add_conv(w, v, "conv32_down", 32, 3, 7))
            goto done;
        for (int i = 0; i < N_BLOCKS; i++) {
            char prefix[96];
            snprintf(prefix, sizeof prefix, "%s.conv1", blocks[i].name);
            if (add_conv(w, v, prefix, blocks[i].cout, blocks[i].cin, 3))
                goto done;
            snprintf(prefix, sizeof prefix, "%s.conv2", blocks[i].name);
            if (add_conv(w, v, prefix, blocks[i].cout, blocks[i].cout, 3))
                goto done;
        }
        uint64_t fd[2] = {EMBED, POOLED};
        if (add_tensor(w, v, "fc.weight", 2, fd, 1.7f / 16.0f))
            goto done;
    }
    if (fm_model_writer_save(w, path, &err))
        goto done;
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "write_model %s: %s\n", path, fm_error_text(&err));
    fm_model_writer_destroy(&w);
    return rc;
}

/* Opening path must fail with code and a message containing want1 and want2. */
static void expect_open_error(const char *path, int max_batch, fm_status code,
                              const char *want1, const char *want2)
{
    static char sentinel;
    fm_error err = {0};
    fm_backbone *b = (fm_backbone *)(void *)&sentinel; /* must come back NULL */
    fm_status st = fm_backbone_open(&b, path, max_batch, &err);
    CHECK_MSG(st == code, "%s: status %s, expected %s (%s)", path, fm_status_to_string(st),
              fm_status_to_string(code), err.msg);
    CHECK(b == NULL);
    CHECK_MSG(!want1 || strstr(err.msg, want1), "message '%s' lacks '%s'", err.msg, want1);
    CHECK_MSG(!want2 || strstr(err.msg, want2), "message '%s' lacks '%s'", err.msg, want2);
    fprintf(stderr, "  expected error: %s\n", err.msg);
}

static void test_errors(const char *dir)
{
    char path[4096];
    fm_error err = {0};
    fm_backbone *b = NULL;

    snprintf(path, sizeof path, "%s/no-such-file.fmm", dir);
    expect_open_error(path, 1, FM_ERR_IO, "no-such-file.fmm", NULL);
    CHECK(fm_backbone_open(NULL, path, 1, &err) == FM_ERR_INVALID);
    CHECK(fm_backbone_open(&b, NULL, 1, &err) == FM_ERR_INVALID && b == NULL);

    variant v = good;
    v.no_tensors = 1;
    v.arch = "mtcnn.pnet";
    snprintf(path, sizeof path, "%s/arch.fmm", dir);
    CHECK(write_model(path, &v) == 0);
    expect_open_error(path, 1, FM_ERR_UNSUPPORTED, "'mtcnn.pnet'", "dlib_resnet");

    v.arch = NULL;
    CHECK(write_model(path, &v) == 0);
    expect_open_error(path, 1, FM_ERR_NOT_FOUND, "general.architecture", "arch.fmm");

    const char *keys[] = {"input.size", "input.mean", "input.scale", "align.template"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        v = good;
        v.no_tensors = 1;
        v.skip_meta = keys[i];
        snprintf(path, sizeof path, "%s/meta.fmm", dir);
        CHECK(write_model(path, &v) == 0);
        expect_open_error(path, 1, FM_ERR_NOT_FOUND, keys[i], "meta.fmm");
    }
    v = good;
    v.no_tensors = 1;
    v.mean_count = 4;
    CHECK(write_model(path, &v) == 0);
    expect_open_error(path, 1, FM_ERR_FORMAT, "input.mean", "4 values");

    v = good;
    v.skip_tensor = "conv128_1.conv2.weight";
    snprintf(path, sizeof path, "%s/tensor.fmm", dir);
    CHECK(write_model(path, &v) == 0);
    expect_open_error(path, 1, FM_ERR_NOT_FOUND, "'conv128_1.conv2.weight' not found",
                      "tensor.fmm");

    v = good;
    v.bad_tensor = "conv64_down.conv1.weight";
    CHECK(write_model(path, &v) == 0);
    expect_open_error(path, 1, FM_ERR_FORMAT, "'conv64_down.conv1.weight'", "[64, 32, 3, 3]");

    v = good;
    v.skip_tensor = "fc.weight";
    CHECK(write_model(path, &v) == 0);
    expect_open_error(path, 1, FM_ERR_NOT_FOUND, "'fc.weight'", NULL);

    fm_backbone_close(NULL);
    fm_backbone_close(&b);
}

/* Runs n faces; returns the status. Outputs as fm_backbone_forward. */
static fm_status run(fm_backbone *b, uint8_t *faces, int n, float *emb, float *pooled)
{
    const uint8_t *ptrs[BATCH];
    for (int i = 0; i < n; i++)
        ptrs[i] = faces + (size_t)i * SIDE * SIDE * 3;
    float *out[FM_BACKBONE_OUTPUT_COUNT] = {emb, pooled};
    fm_error err = {0};
    fm_status st = fm_backbone_forward(b, ptrs, n, out, &err);
    CHECK_MSG(st == FM_OK, "forward: %s", err.msg);
    return st;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* Batching, determinism and output checks on the model at path. fc: its fc.weight
 * (NULL to skip the wiring check). */
static void test_forward(const char *path, const float *fc)
{
    fm_error err = {0};
    fm_backbone *b = NULL;
    fm_status st = fm_backbone_open(&b, path, BATCH, &err);
    CHECK_MSG(st == FM_OK, "open %s: %s", path, err.msg);
    if (st)
        return;
    int h = 0, w = 0;
    fm_backbone_input_size(b, &h, &w);
    CHECK(h == SIDE && w == SIDE);
    CHECK(strcmp(fm_backbone_arch(b), "dlib_resnet") == 0);
    CHECK(fm_backbone_dim(b, FM_BACKBONE_EMBEDDING) == EMBED);
    CHECK(fm_backbone_dim(b, FM_BACKBONE_POOLED) == POOLED);
    CHECK(fm_backbone_max_batch(b) == BATCH);
    const float *t = fm_backbone_template(b);
    double tmpl_err = 0;
    for (int i = 0; i < 10; i++)
        tmpl_err = fmax(tmpl_err, fabs((double)t[i] - (float)tmpl[i]));
    /* the file's doubles, each rounded to float once: exactly */
    CHECK_MSG(tmpl_err == 0, "template differs from the file's values by %g", tmpl_err);

    static uint8_t faces[BATCH * SIDE * SIDE * 3];
    for (size_t i = 0; i < sizeof faces; i++)
        faces[i] = (uint8_t)((fm_test_rng_signed(&rng) + 1.0f) * 127.99f);
    /* one smooth face too, so not every input is noise */
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++)
            for (int c = 0; c < 3; c++)
                faces[((size_t)SIDE * SIDE * 3) + ((size_t)y * SIDE + x) * 3 + c] =
                    (uint8_t)(40 + x + y / 2 + 20 * c);

    static float e1[BATCH * EMBED], p1[BATCH * POOLED], e2[BATCH * EMBED],
        p2[BATCH * POOLED], es[EMBED], ps[POOLED];
    if (run(b, faces, BATCH, e1, p1) || run(b, faces, BATCH, e2, p2))
        goto done;
    CHECK_MSG(memcmp(e1, e2, sizeof e1) == 0 && memcmp(p1, p2, sizeof p1) == 0,
              "two calls differ");
    int finite = 1;
    for (int i = 0; i < BATCH * EMBED; i++)
        finite &= isfinite(e1[i]);
    CHECK(finite);
    CHECK(max_abs(e1, BATCH * EMBED) > 1e-3);

    /* one output at a time */
    memset(e2, 0, sizeof e2);
    memset(p2, 0, sizeof p2);
    if (run(b, faces, BATCH, e2, NULL) || run(b, faces, BATCH, NULL, p2))
        goto done;
    CHECK(memcmp(e1, e2, sizeof e1) == 0 && memcmp(p1, p2, sizeof p1) == 0);

    /* a batch of N equals N batches of 1 (OpenBLAS may pick other kernels for other
     * matrix shapes, so allow rounding differences) */
    double worst = 0, scale = max_abs(e1, BATCH * EMBED) + max_abs(p1, BATCH * POOLED);
    int exact = 1;
    for (int i = 0; i < BATCH; i++) {
        if (run(b, faces + (size_t)i * SIDE * SIDE * 3, 1, es, ps))
            goto done;
        for (int k = 0; k < EMBED; k++) {
            double d = fabs((double)es[k] - e1[i * EMBED + k]);
            worst = d > worst ? d : worst;
            exact &= es[k] == e1[i * EMBED + k];
        }
        for (int k = 0; k < POOLED; k++) {
            double d = fabs((double)ps[k] - p1[i * POOLED + k]);
            worst = d > worst ? d : worst;
            exact &= ps[k] == p1[i * POOLED + k];
        }
    }
    CHECK_MSG(worst <= 1e-5 * scale, "batch of %d vs singles: max difference %g (scale %g)",
              BATCH, worst, scale);
    fprintf(stderr, "  %s: batch of %d vs %d singles: max |difference| %.3g (%s), outputs "
            "up to %.3g\n", path, BATCH, BATCH, worst, exact ? "bit-identical" : "rounding",
            scale);

    /* embedding = fc.weight . pooled */
    if (fc) {
        double err_max = 0;
        for (int i = 0; i < BATCH; i++)
            for (int o = 0; o < EMBED; o++) {
                double s = 0;
                for (int k = 0; k < POOLED; k++)
                    s += (double)fc[o * POOLED + k] * p1[i * POOLED + k];
                double d = fabs(s - e1[i * EMBED + o]);
                err_max = d > err_max ? d : err_max;
            }
        fprintf(stderr, "  %s: embedding vs fc.weight . pooled: max |difference| %.3g "
                "(bound %.3g)\n", path, err_max, 1e-5 * (1 + max_abs(e1, BATCH * EMBED)));
        CHECK_MSG(err_max <= 1e-5 * (1 + max_abs(e1, BATCH * EMBED)),
                  "embedding != fc . pooled: %g", err_max);
    }

    /* bad batches */
    const uint8_t *ptrs[BATCH + 1];
    for (int i = 0; i <= BATCH; i++)
        ptrs[i] = faces;
    float *out[FM_BACKBONE_OUTPUT_COUNT] = {e2, p2};
    CHECK(fm_backbone_forward(b, ptrs, 0, out, &err) == FM_ERR_INVALID);
    CHECK(fm_backbone_forward(b, ptrs, BATCH + 1, out, &err) == FM_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "1..11") != NULL, "%s", err.msg);
    ptrs[1] = NULL;
    CHECK(fm_backbone_forward(b, ptrs, 2, out, &err) == FM_ERR_INVALID);
    CHECK(fm_backbone_forward(b, NULL, 1, out, &err) == FM_ERR_INVALID);
    /* and it still works after them */
    if (run(b, faces, BATCH, e2, p2) == FM_OK)
        CHECK(memcmp(e1, e2, sizeof e1) == 0);
done:
    fm_backbone_close(&b);
    CHECK(b == NULL);
}

int main(void)
{
    char dir[512];
    if (fm_test_tmpdir(dir, sizeof dir, "backbone") != 0)
        return 1;
    fc_copy = calloc((size_t)EMBED * POOLED, sizeof *fc_copy);
    if (!fc_copy)
        return 1;
    test_errors(dir);
    fm_error err = {0};
    fm_backbone *b = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/random.fmm", dir);
    CHECK(write_model(path, &good) == 0);
    expect_open_error(path, 0, FM_ERR_INVALID, "max_batch 0", NULL);
    CHECK(fm_backbone_open(&b, path, 100000, &err) == FM_ERR_INVALID && b == NULL);
    test_forward(path, fc_copy);

    fm_test_source_path(path, sizeof path, "models/cache/dlib_resnet.fmm");
    int real = access(path, R_OK) == 0;
    if (real)
        test_forward(path, NULL);
    else
        fprintf(stderr, "  %s not found (models/fetch): real weights not tested\n", path);

    fm_test_remove_tree(dir);
    free(fc_copy);
    int rc = fm_test_done("test_backbone");
    if (rc == 0 && !real)
        return fm_test_skip("test_backbone", "the real weights were not tested");
    return rc;
}
