/* backbone.c - the face embedding network of a worker, whatever its architecture:
 * opens the model file, picks the C builder named by general.architecture, reads the
 * input convention and alignment template from the metadata, sizes one arena for the
 * largest batch, and runs batches of aligned faces through it.
 *
 * Why it exists: the pipeline (align, embed, heads) should not know which backbone it
 * runs. Everything architecture-specific lives in worker/arch_*.c behind fm_arch_ops
 * (backbone-impl.h); this file is the generic part, so adding an architecture is one
 * file and one line in the table below.
 *
 * Memory: the arena's size is measured once at open by running the network on a
 * measuring arena for every pass size 1..min(max_batch, FM_BACKBONE_CHUNK) (the
 * engine's scratch needs depend on the batch; larger batches run in passes), so
 * fm_backbone_forward never allocates: it takes the input tensor and every
 * intermediate from the arena and resets it before each pass.
 */
#include "backbone-impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits on what a model file may ask for (a bad file must not make us allocate
 * absurd arenas). */
#define MAX_INPUT_SIDE 4096
#define MAX_BATCH 1024

static const fm_arch_ops *const archs[] = {
    &fm_arch_dlib_resnet,
    &fm_arch_facenet_irv1,
    /* --- architectures --- */
    NULL,
};

struct fm_backbone {
    fm_model *model;
    const fm_arch_ops *ops;
    void *state;   /* ops->bind's, released with ops->unbind */
    fm_arena *arena;
    int max_batch;
    int chunk;     /* faces per network pass: min(max_batch, FM_BACKBONE_CHUNK) */
    fm_backbone_input in;
    int dims[FM_BACKBONE_OUTPUT_COUNT];
    double flop;   /* per face, counted by the measuring run of one face */
};

static const fm_arch_ops *find_arch(const char *name)
{
    for (size_t i = 0; archs[i]; i++)
        if (strcmp(archs[i]->name, name) == 0)
            return archs[i];
    return NULL;
}

/* "dlib_resnet, facenet_irv1" into buf, for messages. */
static const char *arch_names(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; archs[i] && used < size; i++) {
        int k = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", archs[i]->name);
        if (k < 0)
            break;
        used += (size_t)k;
    }
    return buf;
}

/* Reads the f64 array key of exactly count finite values into out (as floats). */
static fm_status read_floats(const fm_model *m, const char *key, size_t count, float *out,
                             fm_error *err)
{
    const double *v = NULL;
    size_t n = 0;
    fm_status st = fm_model_meta_f64_array(m, key, &v, &n, err);
    if (st)
        return st;
    if (n != count)
        return fm_error_set(err, FM_ERR_FORMAT, "%s: metadata '%s' has %zu values, expected %zu",
                            fm_model_path(m), key, n, count);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i]) || fabs(v[i]) > 1e30)
            return fm_error_set(err, FM_ERR_FORMAT, "%s: metadata '%s'[%zu] = %g is not a usable "
                                "number", fm_model_path(m), key, i, v[i]);
        out[i] = (float)v[i];
    }
    return FM_OK;
}

fm_status fm_backbone_read_input(const fm_model *m, fm_backbone_input *out, fm_error *err)
{
    const char *path = fm_model_path(m);
    const int64_t *size = NULL;
    size_t count = 0;
    fm_status st;
    if ((st = fm_model_meta_i64_array(m, "input.size", &size, &count, err)))
        return st;
    if (count != 2 || size[0] < 1 || size[0] > MAX_INPUT_SIDE || size[1] < 1 ||
        size[1] > MAX_INPUT_SIDE)
        return fm_error_set(err, FM_ERR_FORMAT,
                            "%s: metadata 'input.size' must be 2 values (height, width) in 1..%d",
                            path, MAX_INPUT_SIDE);
    out->h = (int)size[0];
    out->w = (int)size[1];

    if ((st = read_floats(m, "input.mean", 3, out->mean, err)) ||
        (st = read_floats(m, "input.scale", 3, out->scale, err)) ||
        (st = read_floats(m, "align.template", 10, out->tmpl, err)))
        return st;
    for (int c = 0; c < 3; c++)
        if (out->scale[c] == 0.0f)
            return fm_error_set(err, FM_ERR_FORMAT, "%s: metadata 'input.scale'[%d] is 0", path, c);
    return FM_OK;
}

/* Reads general.architecture and the input convention. */
static fm_status read_metadata(fm_backbone *b, fm_error *err)
{
    const fm_model *m = b->model;
    const char *arch = NULL;
    fm_status st;

    if ((st = fm_model_meta_str(m, "general.architecture", &arch, NULL, err)))
        return st;
    b->ops = find_arch(arch);
    if (!b->ops) {
        char known[256];
        return fm_error_set(err, FM_ERR_UNSUPPORTED,
                            "%s: architecture '%s' is not a backbone this build runs (known: %s)",
                            fm_model_path(m), arch, arch_names(known, sizeof known));
    }
    return fm_backbone_read_input(m, &b->in, err);
}

/* Runs the network on a measuring arena for every pass size up to b->chunk, with
 * and without caller-provided outputs, and returns the largest fill level seen. The
 * run of one face with every output gives the work per face (b->flop). */
static fm_status measure(fm_backbone *b, size_t *bytes, fm_error *err)
{
    fm_arena *a = NULL;
    fm_status st = fm_arena_new_measuring(&a, err);
    if (st)
        return st;
    for (int n = 1; n <= b->chunk; n++) {
        for (int with_out = 0; with_out < 2; with_out++) {
            fm_tensor x, outs[FM_BACKBONE_OUTPUT_COUNT];
            fm_tensor *want[FM_BACKBONE_OUTPUT_COUNT] = {NULL};
            double flop_before = fm_arena_flop(a);
            fm_arena_reset(a, 0);
            if ((st = fm_tensor_alloc(a, n, 3, b->in.h, b->in.w, &x, err)))
                goto done;
            for (int k = 0; with_out && k < FM_BACKBONE_OUTPUT_COUNT; k++) {
                outs[k] = fm_tensor_make(n, b->dims[k], 1, 1, NULL);
                want[k] = &outs[k];
            }
            if ((st = b->ops->forward(b->state, a, &x, want, err))) {
                fm_error_prefix(err, "%s: batch of %d", fm_model_path(b->model), n);
                goto done;
            }
            if (n == 1 && with_out) /* everything computed (the last layer too) */
                b->flop = fm_arena_flop(a) - flop_before;
        }
    }
    *bytes = fm_arena_high_water(a);
done:
    fm_arena_destroy(&a);
    return st;
}

fm_status fm_backbone_open(fm_backbone **out, const char *path, int max_batch, fm_error *err)
{
    fm_status st;
    if (!out || !path)
        return fm_error_set(err, FM_ERR_INVALID, "fm_backbone_open: NULL argument");
    *out = NULL;
    if (max_batch < 1 || max_batch > MAX_BATCH)
        return fm_error_set(err, FM_ERR_INVALID, "%s: max_batch %d is not in 1..%d", path,
                            max_batch, MAX_BATCH);
    fm_backbone *b = calloc(1, sizeof *b);
    if (!b)
        return fm_error_set(err, FM_ERR_NOMEM, "%s: out of memory", path);
    b->max_batch = max_batch;
    b->chunk = max_batch < FM_BACKBONE_CHUNK ? max_batch : FM_BACKBONE_CHUNK;
    if ((st = fm_model_open(&b->model, path, 0, err)) || (st = read_metadata(b, err)) ||
        (st = b->ops->bind(b->model, &b->state, b->dims, err)))
        goto fail;
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        if (b->dims[k] < 1) {
            st = fm_error_set(err, FM_ERR_INTERNAL, "%s: architecture %s gave output %d length %d",
                              path, b->ops->name, k, b->dims[k]);
            goto fail;
        }
    size_t bytes = 0;
    if ((st = measure(b, &bytes, err)) || (st = fm_arena_new(bytes, &b->arena, err)))
        goto fail;
    *out = b;
    return FM_OK;
fail:
    fm_backbone_close(&b);
    return st;
}

void fm_backbone_close(fm_backbone **pb)
{
    if (!pb || !*pb)
        return;
    fm_backbone *b = *pb;
    if (b->state)
        b->ops->unbind(b->state);
    fm_arena_destroy(&b->arena);
    fm_model_close(&b->model);
    free(b);
    *pb = NULL;
}

const char *fm_backbone_arch(const fm_backbone *b)
{
    return b->ops->name;
}

void fm_backbone_input_size(const fm_backbone *b, int *h, int *w)
{
    if (h)
        *h = b->in.h;
    if (w)
        *w = b->in.w;
}

const float *fm_backbone_template(const fm_backbone *b)
{
    return b->in.tmpl;
}

int fm_backbone_dim(const fm_backbone *b, fm_backbone_output which)
{
    if ((int)which < 0 || which >= FM_BACKBONE_OUTPUT_COUNT)
        return 0;
    return b->dims[which];
}

int fm_backbone_max_batch(const fm_backbone *b)
{
    return b->max_batch;
}

double fm_backbone_flop(const fm_backbone *b)
{
    return b->flop;
}

/* Writes face (h x w RGB interleaved) into image i of x as (pixel - mean) * scale, planar. */
static void normalise(const fm_backbone *b, const uint8_t *face, fm_tensor *x, int i)
{
    const size_t plane = (size_t)b->in.h * b->in.w;
    float *dst = x->data + (size_t)i * 3 * plane;
    for (int c = 0; c < 3; c++) {
        const float mean = b->in.mean[c], scale = b->in.scale[c];
        float *p = dst + c * plane;
        const uint8_t *src = face + c;
        for (size_t k = 0; k < plane; k++)
            p[k] = ((float)src[3 * k] - mean) * scale;
    }
}

fm_status fm_backbone_forward(fm_backbone *b, const uint8_t *const *faces, int n,
                              float *out[FM_BACKBONE_OUTPUT_COUNT], fm_error *err)
{
    if (!b || !faces)
        return fm_error_set(err, FM_ERR_INVALID, "fm_backbone_forward: NULL argument");
    if (n < 1 || n > b->max_batch)
        return fm_error_set(err, FM_ERR_INVALID,
                            "fm_backbone_forward: batch of %d faces, this backbone takes 1..%d",
                            n, b->max_batch);
    for (int i = 0; i < n; i++)
        if (!faces[i])
            return fm_error_set(err, FM_ERR_INVALID, "fm_backbone_forward: face %d is NULL", i);

    /* passes of at most b->chunk faces: see FM_BACKBONE_CHUNK */
    fm_status st = FM_OK;
    for (int i0 = 0; i0 < n && st == FM_OK; i0 += b->chunk) {
        const int m = n - i0 < b->chunk ? n - i0 : b->chunk;
        fm_tensor outs[FM_BACKBONE_OUTPUT_COUNT];
        fm_tensor *want[FM_BACKBONE_OUTPUT_COUNT] = {NULL};
        for (int k = 0; out && k < FM_BACKBONE_OUTPUT_COUNT; k++)
            if (out[k]) {
                outs[k] = fm_tensor_make(m, b->dims[k], 1, 1,
                                         out[k] + (size_t)i0 * (size_t)b->dims[k]);
                want[k] = &outs[k];
            }
        fm_tensor x;
        fm_arena_reset(b->arena, 0);
        st = fm_tensor_alloc(b->arena, m, 3, b->in.h, b->in.w, &x, err);
        if (st == FM_OK) {
            for (int i = 0; i < m; i++)
                normalise(b, faces[i0 + i], &x, i);
            st = b->ops->forward(b->state, b->arena, &x, want, err);
        }
        fm_arena_reset(b->arena, 0);
    }
    return st;
}
