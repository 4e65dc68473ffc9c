/* bench_embed.c - facemill-bench-embed: how long the backbone takes per face, at
 * batch 1 and at the batch sizes the worker uses, on this machine.
 *
 * Why it exists: embedding is the largest fixed cost per face, and batching faces
 * across images is how the design makes its matrix multiplies large. This measures
 * both so the effect of the batch (and of the engine) is a number, and compares the
 * achieved GFLOPS with what cblas_sgemm reaches (facemill-bench-ops).
 *
 * For each batch size: one warm-up call, then repeated calls for at least
 * --seconds; prints the fastest and the mean time per call, milliseconds per face,
 * faces per second and GFLOPS; at the end, the memory the engine keeps for the
 * model's weights in its own layouts. The work per face is what the engine counts from the
 * network's layer shapes when the model opens (convolutions and dense layers, 2 FLOP
 * per multiply-add: fm_backbone_flop); --gflop overrides it. One OpenBLAS thread unless
 * --threads says otherwise. Faces are fixed pseudo-random pixels (the work does not
 * depend on them). A 1024^3 cblas_sgemm is timed first, and again before and after
 * each batch size (the faster of the two is that row's "sgemm" and its ratio's
 * divisor), so the figures can be read against what the machine delivers at that
 * moment (machines are shared, and their speed drifts within a run), and the
 * OpenBLAS kernel set in use is printed: chosen as engine.blas_kernels auto does
 * (include/facemill/blas.h); OPENBLAS_CORETYPE in the environment picks another.
 */
#include "facemill/backbone.h"
#include "facemill/clock.h"
#include "facemill/blas.h"
#include "facemill/modelpath.h"
#include "facemill/nn.h"

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZES 16

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill-bench-embed [--model PATH] [--batch N]... [--threads N]\n"
            "                            [--seconds S] [--gflop G] [--no-winograd]\n"
            "                            [--no-own-gemm]\n"
            "  --model PATH  backbone model (default dlib_resnet.fmm, found through the\n"
            "                model search path: see facemill(1))\n"
            "  --batch N     a batch size to time (repeatable; default 1 and 16)\n"
            "  --threads N   OpenBLAS threads (default 1)\n"
            "  --seconds S   time spent per batch size (default 2)\n"
            "  --gflop G     work per face for GFLOPS (default: counted from the layers)\n"
            "  --no-winograd 3x3 convolutions as im2col + sgemm only (for comparison)\n"
            "  --no-own-gemm the convolutions' matrix products through cblas_sgemm instead\n"
            "                of the engine's own kernel (for comparison)\n");
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    /* the npm network through the model search path (include/facemill/modelpath.h) */
    char default_model[FM_MODEL_PATH_MAX] = "dlib_resnet.fmm";
    fm_model_dirs *dirs = malloc(sizeof *dirs);
    if (dirs && fm_model_dirs_init(dirs, NULL, NULL) == FM_OK)
        fm_model_find(dirs, NULL, "dlib_resnet.fmm", default_model, sizeof default_model,
                      NULL);
    free(dirs);
    const char *model = default_model;
    int sizes[MAX_SIZES], n_sizes = 0, threads = 1, winograd = 1, own_gemm = 1;
    double seconds = 2.0, gflop = 0.0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--no-winograd") == 0) {
            winograd = 0;
            continue;
        }
        if (strcmp(a, "--no-own-gemm") == 0) {
            own_gemm = 0;
            continue;
        }
        if (ok && strcmp(a, "--model") == 0)
            model = v;
        else if (ok && strcmp(a, "--batch") == 0)
            ok = n_sizes < MAX_SIZES && parse_int(v, 1, 1024, &sizes[n_sizes++]) == 0;
        else if (ok && strcmp(a, "--threads") == 0)
            ok = parse_int(v, 1, 1024, &threads) == 0;
        else if (ok && strcmp(a, "--seconds") == 0)
            ok = (seconds = atof(v)) > 0.0;
        else if (ok && strcmp(a, "--gflop") == 0)
            ok = (gflop = atof(v)) > 0.0;
        else
            ok = 0;
        if (!ok) {
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (n_sizes == 0) {
        sizes[n_sizes++] = 1;
        sizes[n_sizes++] = 16;
    }
    int max_batch = 1;
    for (int i = 0; i < n_sizes; i++)
        max_batch = sizes[i] > max_batch ? sizes[i] : max_batch;

    fm_error err = {0};
    fm_backbone *b = NULL;
    uint8_t *pixels = NULL;
    const uint8_t **faces = NULL;
    float *outs[FM_BACKBONE_OUTPUT_COUNT] = {NULL};
    int rc = 1;
    fm_blas_choice blas;
    fm_nn_set_winograd(winograd); /* before the arena is measured */
    fm_nn_set_own_gemm(own_gemm);
    if (fm_blas_select("auto", &blas, &err) || fm_nn_set_threads(threads, &err) ||
        fm_backbone_open(&b, model, max_batch, &err)) {
        fprintf(stderr, "facemill-bench-embed: %s\n", fm_error_text(&err));
        goto done;
    }
    if (gflop <= 0.0)
        gflop = fm_backbone_flop(b) * 1e-9;
    int h, w;
    fm_backbone_input_size(b, &h, &w);
    const size_t face_bytes = (size_t)h * w * 3;
    pixels = malloc(face_bytes * max_batch);
    faces = malloc(sizeof *faces * max_batch);
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        outs[k] = malloc(sizeof(float) * (size_t)max_batch * fm_backbone_dim(b, k));
    if (!pixels || !faces || !outs[0] || !outs[1]) {
        fprintf(stderr, "facemill-bench-embed: out of memory\n");
        goto done;
    }
    uint32_t s = 12345u;
    for (size_t i = 0; i < face_bytes * max_batch; i++) {
        s = s * 1664525u + 1013904223u;
        pixels[i] = (uint8_t)(s >> 24);
    }
    for (int i = 0; i < max_batch; i++)
        faces[i] = pixels + face_bytes * i;

    printf("facemill-bench-embed: %s (%s, %dx%d), OpenBLAS core %s, %d thread%s", model,
           fm_backbone_arch(b), w, h, openblas_get_corename(), fm_nn_threads(),
           fm_nn_threads() == 1 ? "" : "s");
    if (gflop > 0.0)
        printf(", %.3f GFLOP per face", gflop);
    const double sgemm = fm_blas_sgemm_gflops();
    const int own = fm_nn_own_gemm_active();
    printf("\n  kernels: %s\n  3x3 convolutions: %s\n  matrix products: %s%s\n"
           "  cblas_sgemm 1024^3 now: %.1f GFLOPS\n",
           blas.reason,
           winograd ? "Winograd F(2x2, 3x3) where it pays" : "im2col + sgemm (--no-winograd)",
           own ? "the engine's own kernel, " : "cblas_sgemm",
           own ? fm_nn_isa_name(fm_nn_isa_now()) : "", sgemm);
    printf("  %6s %8s %12s %12s %10s %10s %8s %8s %7s\n", "batch", "calls", "best ms",
           "mean ms", "ms/face", "faces/s", "GFLOPS", "sgemm", "/sgemm");
    for (int i = 0; i < n_sizes; i++) {
        const int n = sizes[i];
        /* sgemm again around each row: a shared machine's speed drifts */
        double row_sgemm = fm_blas_sgemm_gflops();
        if (fm_backbone_forward(b, faces, n, outs, &err)) {
            fprintf(stderr, "facemill-bench-embed: %s\n", fm_error_text(&err));
            goto done;
        }
        double best = 1e30, total = 0.0, start = fm_now_ms();
        int calls = 0;
        while (calls < 3 || (fm_now_ms() - start) / 1e3 < seconds) {
            double t0 = fm_now_ms();
            if (fm_backbone_forward(b, faces, n, outs, &err)) {
                fprintf(stderr, "facemill-bench-embed: %s\n", fm_error_text(&err));
                goto done;
            }
            double t = (fm_now_ms() - t0) / 1e3;
            best = t < best ? t : best;
            total += t;
            calls++;
        }
        const double after = fm_blas_sgemm_gflops();
        row_sgemm = after > row_sgemm ? after : row_sgemm;
        const double per_face = best / n;
        printf("  %6d %8d %12.2f %12.2f %10.2f %10.1f ", n, calls, best * 1e3,
               total / calls * 1e3, per_face * 1e3, 1.0 / per_face);
        if (gflop > 0.0)
            printf("%8.1f %8.1f %7.2f\n", gflop / per_face, row_sgemm,
                   row_sgemm > 0.0 ? gflop / per_face / row_sgemm : 0.0);
        else
            printf("%8s %8.1f %7s\n", "-", row_sgemm, "-");
    }
    printf("  weights kept packed by the engine (fm_nn_const_declare): %.1f MB\n",
           (double)fm_nn_const_kept_bytes() / (1024.0 * 1024.0));
    rc = 0;
done:
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        free(outs[k]);
    free(faces);
    free(pixels);
    fm_backbone_close(&b);
    return rc;
}
