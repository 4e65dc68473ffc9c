/* bench_ops.c - facemill-bench-ops: how close the engine's convolutions come to the
 * machine's sgemm speed, measured in one run so the numbers compare.
 *
 * Prints cblas_sgemm GFLOPS for 1024^3 and for shapes like the convolutions', then,
 * for convolution layers of the shapes facemill runs (MTCNN P-Net on a 640x480 pyramid
 * level, R-Net/O-Net on batches of crops, dlib's ResNet at 150x150, FaceNet blocks, a
 * depthwise layer), milliseconds per call, GFLOPS and the ratio to the 1024^3 sgemm;
 * 3x3 stride-1 layers with enough channels twice, as the engine runs them (Winograd's
 * F(2x2, 3x3) where it pays) and without it ("no Winograd": im2col + sgemm, or the
 * direct kernel where that applies); MTCNN's small planes also as the direct kernel
 * runs them without its position tiles ("column tiles": 16 columns wide in AVX2, 32
 * in AVX-512).
 * Then, for the dlib ResNet layers a trainer runs at batch 32, the backward pass
 * (fm_nn_conv2d_backward with dx, dw and db) against the forward pass of the same
 * layer: it does twice the forward's multiply-adds, so a ratio near 2 means it runs at
 * the forward's speed. --grad-only runs just that part.
 * One OpenBLAS thread unless --threads N says otherwise; the count is set explicitly.
 * --isa NAME caps the instruction set of the engine's own kernels (base, avx2+fma,
 * avx512), to compare them in one run.
 * The kernel set is chosen as engine.blas_kernels auto does (include/facemill/blas.h;
 * OPENBLAS_CORETYPE in the environment picks another).
 * Each figure is the fastest of repeated calls over about a quarter of a second. */
#include "facemill/clock.h"
#include "facemill/blas.h"
#include "facemill/grad.h"
#include "facemill/nn.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIN_MS 250.0 /* repeat calls for at least this long */
#define MIN_REPS 3

static float *random_floats(size_t count)
{
    float *p = malloc(count * sizeof *p);
    if (!p) {
        fprintf(stderr, "facemill-bench-ops: out of memory (%zu floats)\n", count);
        return NULL;
    }
    unsigned s = 12345u;
    for (size_t i = 0; i < count; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = (float)((s >> 9) & 0xffff) / 32768.0f - 1.0f;
    }
    return p;
}

/* Fastest seconds per call of one sgemm of the given shape (row-major, no transpose). */
static double time_sgemm(int m, int n, int k, float *a, float *b, float *c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c,
                n);
    double best = 1e30, start = fm_now_ms();
    for (int rep = 0; rep < MIN_REPS || fm_now_ms() - start < MIN_MS; rep++) {
        double t0 = fm_now_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f,
                    c, n);
        double t = (fm_now_ms() - t0) / 1e3;
        best = t < best ? t : best;
    }
    return best;
}

typedef struct layer {
    const char *name;
    int n, c, h, w;   /* input */
    int co, k, stride, pad, groups;
} layer;

static const layer layers[] = {
    {"P-Net conv1 3->10 (640x480 level)", 1, 3, 480, 640, 10, 3, 1, 0, 1},
    {"P-Net conv2 10->16", 1, 10, 239, 319, 16, 3, 1, 0, 1},
    {"P-Net conv3 16->32", 1, 16, 237, 317, 32, 3, 1, 0, 1},
    {"P-Net conv4 1x1 32->6", 1, 32, 235, 315, 6, 1, 1, 0, 1},
    {"R-Net conv1 3->28 (64 x 24x24)", 64, 3, 24, 24, 28, 3, 1, 0, 1},
    {"R-Net conv2 28->48", 64, 28, 11, 11, 48, 3, 1, 0, 1},
    {"R-Net conv3 2x2 48->64", 64, 48, 4, 4, 64, 2, 1, 0, 1},
    {"O-Net conv1 3->32 (16 x 48x48)", 16, 3, 48, 48, 32, 3, 1, 0, 1},
    {"O-Net conv2 32->64", 16, 32, 23, 23, 64, 3, 1, 0, 1},
    {"O-Net conv3 64->64", 16, 64, 10, 10, 64, 3, 1, 0, 1},
    {"O-Net conv4 2x2 64->128", 16, 64, 4, 4, 128, 2, 1, 0, 1},
    {"dlib stem 7x7/2 3->32 (8 x 150x150)", 8, 3, 150, 150, 32, 7, 2, 0, 1},
    {"dlib 3x3 32->32 @35", 8, 32, 35, 35, 32, 3, 1, 1, 1},
    {"dlib 3x3/2 32->64 @35 (down)", 8, 32, 35, 35, 64, 3, 2, 0, 1},
    {"dlib 3x3 64->64 @17", 8, 64, 17, 17, 64, 3, 1, 1, 1},
    {"dlib 3x3/2 64->128 @17 (down)", 8, 64, 17, 17, 128, 3, 2, 0, 1},
    {"dlib 3x3 128->128 @8", 8, 128, 8, 8, 128, 3, 1, 1, 1},
    {"dlib 3x3 256->256 @4", 8, 256, 4, 4, 256, 3, 1, 1, 1},
    {"dlib stem 7x7/2 3->32 (1 face)", 1, 3, 150, 150, 32, 7, 2, 0, 1},
    {"dlib 3x3 32->32 @35 (1 face)", 1, 32, 35, 35, 32, 3, 1, 1, 1},
    {"dlib 3x3/2 32->64 @35 (1 face)", 1, 32, 35, 35, 64, 3, 2, 0, 1},
    {"dlib 3x3 64->64 @17 (1 face)", 1, 64, 17, 17, 64, 3, 1, 1, 1},
    {"dlib 3x3/2 64->128 @17 (1 face)", 1, 64, 17, 17, 128, 3, 2, 0, 1},
    {"dlib 3x3 128->128 @8 (1 face)", 1, 128, 8, 8, 128, 3, 1, 1, 1},
    {"dlib 3x3/2 128->256 @8 (1 face)", 1, 128, 8, 8, 256, 3, 2, 0, 1},
    {"dlib 3x3 256->256 @4 (1 face)", 1, 256, 4, 4, 256, 3, 1, 1, 1},
    {"dlib 3x3 256->256 @3 (1 face)", 1, 256, 3, 3, 256, 3, 1, 1, 1},
    {"dlib 3x3/2 256->256 @4 (1 face)", 1, 256, 4, 4, 256, 3, 2, 0, 1},
    {"dlib 3x3 256->256 @1 (1 face)", 1, 256, 1, 1, 256, 3, 1, 1, 1},
    {"FaceNet 1x1 256->32 @17 (8 faces)", 8, 256, 17, 17, 32, 1, 1, 0, 1},
    {"FaceNet 3x3 32->32 @17", 8, 32, 17, 17, 32, 3, 1, 1, 1},
    {"FaceNet 1x1 896->128 @8", 8, 896, 8, 8, 128, 1, 1, 0, 1},
    {"FaceNet 1x1 1792->192 @3", 8, 1792, 3, 3, 192, 1, 1, 0, 1},
    {"depthwise 3x3 32ch @112 (4 images)", 4, 32, 112, 112, 32, 3, 1, 1, 32},
};

/* Runs one layer; returns 0 on success. tag follows the name ("" or " im2col").
 * keep: the weights are declared unchanging, as a model file's are
 * (fm_nn_const_declare), so that the engine may keep its own layouts of them. */
static int bench_layer(const layer *l, const char *tag, double sgemm_gflops, int keep)
{
    fm_error err = {0};
    fm_arena *measure = NULL, *arena = NULL;
    fm_tensor x = fm_tensor_make(l->n, l->c, l->h, l->w, NULL);
    fm_tensor w = fm_tensor_make(l->co, l->c / l->groups, l->k, l->k, NULL);
    fm_tensor b = fm_tensor_make(1, l->co, 1, 1, NULL);
    fm_tensor y = {0};
    fm_conv2d_params p = fm_conv2d_sym(l->stride, l->pad);
    p.groups = l->groups;
    int rc = 1;
    if (fm_nn_conv2d_shape(&x, &w, &p, &y, &err) ||
        fm_arena_new_measuring(&measure, &err) ||
        fm_nn_conv2d(measure, &x, &w, &b, &p, &y, &err))
        goto fail;
    size_t scratch = fm_arena_high_water(measure);
    if (fm_arena_new(scratch, &arena, &err))
        goto fail;
    x.data = random_floats(fm_tensor_count(&x));
    w.data = random_floats(fm_tensor_count(&w));
    b.data = random_floats(fm_tensor_count(&b));
    y.data = random_floats(fm_tensor_count(&y));
    if (!x.data || !w.data || !b.data || !y.data)
        goto fail;
    if (keep)
        fm_nn_const_declare(w.data, fm_tensor_count(&w) * sizeof *w.data);
    if (fm_nn_conv2d(arena, &x, &w, &b, &p, &y, &err))
        goto fail;
    double best = 1e30, start = fm_now_ms();
    for (int rep = 0; rep < MIN_REPS || fm_now_ms() - start < MIN_MS; rep++) {
        double t0 = fm_now_ms();
        fm_nn_conv2d(arena, &x, &w, &b, &p, &y, &err);
        double t = (fm_now_ms() - t0) / 1e3;
        best = t < best ? t : best;
    }
    double flop = 2.0 * y.n * y.c * y.h * y.w * (double)(w.c * w.h * w.w);
    double gflops = flop / best * 1e-9;
    char name[64], in[32], out[32], kern[24];
    snprintf(name, sizeof name, "%s%s", l->name, tag);
    snprintf(in, sizeof in, "%dx%dx%dx%d", l->n, l->c, l->h, l->w);
    snprintf(out, sizeof out, "%dx%dx%d", y.c, y.h, y.w);
    snprintf(kern, sizeof kern, "%dx%d/%d p%d%s", l->k, l->k, l->stride, l->pad,
             l->groups > 1 ? " dw" : "");
    printf("  %-40s %-16s %-12s %-12s %8.1f %8.3f %8.2f %7.2f %7.2f\n", name, in, kern, out,
           (double)scratch / 1024.0, flop * 1e-9, best * 1e3, gflops, gflops / sgemm_gflops);
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "facemill-bench-ops: %s: %s\n", l->name, fm_error_text(&err));
    if (keep && w.data)
        fm_nn_const_forget(w.data);
    free(x.data);
    free(w.data);
    free(b.data);
    free(y.data);
    fm_arena_destroy(&measure);
    fm_arena_destroy(&arena);
    return rc;
}

/* Training layers of the dlib ResNet (150x150 input) at batch 32. */
static const layer grad_layers[] = {
    {"dlib 3x3 32->32 @35 (32 faces)", 32, 32, 35, 35, 32, 3, 1, 1, 1},
    {"dlib 3x3/2 32->64 @35 (down)", 32, 32, 35, 35, 64, 3, 2, 0, 1},
    {"dlib 3x3 64->64 @17", 32, 64, 17, 17, 64, 3, 1, 1, 1},
    {"dlib 3x3 128->128 @8", 32, 128, 8, 8, 128, 3, 1, 1, 1},
    {"dlib 3x3 256->256 @4", 32, 256, 4, 4, 256, 3, 1, 1, 1},
};

/* Forward and backward of one layer; returns 0 on success. */
static int bench_grad_layer(const layer *l)
{
    fm_error err = {0};
    fm_arena *measure = NULL, *arena = NULL;
    fm_tensor x = fm_tensor_make(l->n, l->c, l->h, l->w, NULL);
    fm_tensor w = fm_tensor_make(l->co, l->c, l->k, l->k, NULL);
    fm_tensor b = fm_tensor_make(1, l->co, 1, 1, NULL);
    fm_tensor y = {0}, dx = x, dw = w, db = b;
    fm_conv2d_params p = fm_conv2d_sym(l->stride, l->pad);
    int rc = 1;
    if (fm_nn_conv2d_shape(&x, &w, &p, &y, &err) ||
        fm_arena_new_measuring(&measure, &err) ||
        fm_nn_conv2d(measure, &x, &w, &b, &p, &y, &err))
        goto fail;
    size_t fwd_scratch = fm_arena_high_water(measure);
    fm_tensor dy = y;
    fm_arena_destroy(&measure);
    if (fm_arena_new_measuring(&measure, &err) ||
        fm_nn_conv2d_backward(measure, &x, &w, &p, &dy, &dx, &dw, &db, &err))
        goto fail;
    size_t scratch = fm_arena_high_water(measure);
    if (fm_arena_new(scratch > fwd_scratch ? scratch : fwd_scratch, &arena, &err))
        goto fail;
    x.data = random_floats(fm_tensor_count(&x));
    w.data = random_floats(fm_tensor_count(&w));
    b.data = random_floats(fm_tensor_count(&b));
    y.data = random_floats(fm_tensor_count(&y));
    dy.data = random_floats(fm_tensor_count(&y));
    dx.data = random_floats(fm_tensor_count(&x));
    dw.data = random_floats(fm_tensor_count(&w));
    db.data = random_floats(fm_tensor_count(&b));
    if (!x.data || !w.data || !b.data || !y.data || !dy.data || !dx.data || !dw.data ||
        !db.data)
        goto fail;
    double best[2] = {1e30, 1e30};
    for (int pass = 0; pass < 2; pass++) {
        double start = fm_now_ms();
        for (int rep = -1; rep < MIN_REPS || fm_now_ms() - start < MIN_MS; rep++) {
            double t0 = fm_now_ms();
            fm_status st = pass ? fm_nn_conv2d_backward(arena, &x, &w, &p, &dy, &dx, &dw,
                                                        &db, &err)
                                : fm_nn_conv2d(arena, &x, &w, &b, &p, &y, &err);
            if (st)
                goto fail;
            double t = (fm_now_ms() - t0) / 1e3;
            if (rep >= 0) /* the first call warms caches and OpenBLAS */
                best[pass] = t < best[pass] ? t : best[pass];
        }
    }
    double flop = 2.0 * y.n * y.c * y.h * y.w * (double)(w.c * w.h * w.w);
    char in[32], kern[24];
    snprintf(in, sizeof in, "%dx%dx%dx%d", l->n, l->c, l->h, l->w);
    snprintf(kern, sizeof kern, "%dx%d/%d p%d -> %d", l->k, l->k, l->stride, l->pad, l->co);
    printf("  %-32s %-16s %-14s %8.0f %8.0f %8.2f %7.2f %8.2f %7.2f %6.2f\n", l->name, in,
           kern, (double)fwd_scratch / 1024.0, (double)scratch / 1024.0, best[0] * 1e3,
           flop / best[0] * 1e-9, best[1] * 1e3, 2.0 * flop / best[1] * 1e-9,
           best[1] / best[0]);
    rc = 0;
fail:
    if (rc)
        fprintf(stderr, "facemill-bench-ops: %s: %s\n", l->name, fm_error_text(&err));
    free(x.data);
    free(w.data);
    free(b.data);
    free(y.data);
    free(dy.data);
    free(dx.data);
    free(dw.data);
    free(db.data);
    fm_arena_destroy(&measure);
    fm_arena_destroy(&arena);
    return rc;
}

/* The sgemm and forward convolution sections; returns nonzero when a layer failed. */
static int bench_forward(void)
{
    int failed = 0;
    static const struct {
        const char *name;
        int m, n, k;
    } gemms[] = {
        {"1024^3", 1024, 1024, 1024},
        {"64x3136x576 (3x3 64ch @56)", 64, 3136, 576},
        {"32x1369x288 (3x3 32ch @37)", 32, 1369, 288},
        {"256x200x2304 (3x3 256ch, 8x5x5)", 256, 200, 2304},
        {"10x9709x27 (P-Net conv1 tile)", 10, 9709, 27},
    };
    printf("\ncblas_sgemm (row-major, fastest of repeated calls)\n");
    printf("  %-38s %6s %6s %6s %9s %8s\n", "shape", "M", "N", "K", "ms", "GFLOPS");
    double base = 0.0;
    for (size_t i = 0; i < sizeof gemms / sizeof gemms[0]; i++) {
        int m = gemms[i].m, n = gemms[i].n, k = gemms[i].k;
        float *a = random_floats((size_t)m * k), *b = random_floats((size_t)k * n);
        float *c = random_floats((size_t)m * n);
        if (!a || !b || !c) {
            free(a);
            free(b);
            free(c);
            return 1;
        }
        double t = time_sgemm(m, n, k, a, b, c);
        double gflops = 2.0 * m * n * (double)k / t * 1e-9;
        if (i == 0)
            base = gflops;
        printf("  %-38s %6d %6d %6d %9.3f %8.2f\n", gemms[i].name, m, n, k, t * 1e3, gflops);
        free(a);
        free(b);
        free(c);
    }

    printf("\nfm_nn_conv2d (with bias; ratio = GFLOPS / sgemm 1024^3 GFLOPS = %.2f)\n", base);
    printf("  %-40s %-16s %-12s %-12s %8s %8s %8s %7s %7s\n", "layer", "input NxCxHxW",
           "kernel", "output", "scr KiB", "GFLOP", "ms", "GFLOPS", "ratio");
    for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++) {
        const layer *l = &layers[i];
        failed |= bench_layer(l, "", base, 1);
        if (l->n == 1 && l->c >= 128)
            /* the dlib ResNet's wide layers at one face, weights packed on every call */
            failed |= bench_layer(l, " packed per call", base, 0);
        if ((l->pad || l->stride > 1) && l->groups == 1 && l->co >= 64) {
            /* padded and strided layers without position tiles: im2col + sgemm, or
             * Winograd where it applies */
            fm_nn_set_position_tiles(0);
            failed |= bench_layer(l, " no position tiles", base, 1);
            fm_nn_set_position_tiles(1);
        }
        if (l->k == 3 && l->stride == 1 && l->pad == 0 && l->groups == 1 && l->c >= 8 &&
            l->w - 2 >= 64) {
            /* P-Net's wide layers with F(2x2, 3x3) instead of F(4x4, 3x3) */
            fm_nn_set_winograd4(0);
            failed |= bench_layer(l, " F(2x2)", base, 1);
            fm_nn_set_winograd4(1);
        }
        if (l->k == 3 && l->stride == 1 && l->groups == 1 && l->c >= 16) {
            /* the same layer without Winograd's F(2x2, 3x3), where it may apply */
            fm_nn_set_winograd(0);
            failed |= bench_layer(l, " no Winograd", base, 1);
            fm_nn_set_winograd(1);
        }
        if (l->stride == 1 && l->pad == 0 && l->groups == 1 && l->co >= 16 &&
            l->h * l->w <= 4096) {
            /* MTCNN's small planes without the direct kernel's position tiles */
            fm_nn_set_position_tiles(0);
            failed |= bench_layer(l, " column tiles", base, 1);
            fm_nn_set_position_tiles(1);
        }
    }
    return failed;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: facemill-bench-ops [--threads N] [--grad-only] [--isa NAME]\n"
                 "  --threads N  OpenBLAS threads (default 1)\n"
                 "  --isa NAME   the engine's kernels: base, avx2+fma or avx512 (default: "
                 "the best)\n"
                 "  --grad-only  only the convolution backward pass against the forward\n");
}

int main(int argc, char **argv)
{
    int threads = 1, grad_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1024) {
                fprintf(stderr, "facemill-bench-ops: --threads wants 1..1024, got '%s'\n",
                        argv[i]);
                return 2;
            }
            threads = (int)v;
        } else if (strcmp(argv[i], "--isa") == 0 && i + 1 < argc) {
            int isa = fm_nn_isa_from_name(argv[++i]);
            if (isa < 0) {
                fprintf(stderr, "facemill-bench-ops: --isa: '%s' is not base, avx2+fma or "
                                "avx512\n", argv[i]);
                return 2;
            }
            fm_nn_set_isa((fm_nn_isa)isa);
        } else if (strcmp(argv[i], "--grad-only") == 0) {
            grad_only = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    fm_error err = {0};
    fm_blas_choice blas;
    if (fm_blas_select("auto", &blas, &err) || fm_nn_set_threads(threads, &err)) {
        fprintf(stderr, "facemill-bench-ops: %s\n", fm_error_text(&err));
        return 1;
    }
    printf("facemill-bench-ops: %s, core %s, %d thread%s\n  kernels: %s\n  engine "
           "kernels: %s\n", openblas_get_config(), openblas_get_corename(), fm_nn_threads(),
           fm_nn_threads() == 1 ? "" : "s", blas.reason, fm_nn_isa_name(fm_nn_isa_now()));
    int failed = grad_only ? 0 : bench_forward();
    printf("\nfm_nn_conv2d_backward (dx, dw, db) against fm_nn_conv2d (with bias); the "
           "backward pass\ndoes twice the forward's multiply-adds\n");
    printf("  %-32s %-16s %-14s %8s %8s %8s %7s %8s %7s %6s\n", "layer", "input NxCxHxW",
           "kernel", "fwd KiB", "bwd KiB", "fwd ms", "GFLOPS", "bwd ms", "GFLOPS", "ratio");
    for (size_t i = 0; i < sizeof grad_layers / sizeof grad_layers[0]; i++)
        failed |= bench_grad_layer(&grad_layers[i]);
    return failed ? 1 : 0;
}
