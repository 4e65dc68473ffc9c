/* bench_detect.c - facemill-bench-detect: what face detection costs per stage, and
 * how often it finds the face in UTKFace's aligned crops.
 *
 *   facemill-bench-detect [--models DIR] [--sample FILE.jpg] [--repeat N] [--threads N]
 *                         [--config FILE] [--set KEY=VALUE]... [--utk DIR]
 *                         [--misses FILE] [--pad F] [--no-speed]
 *                         [--no-position-tiles] [--no-winograd] [--winograd2]
 *                         [--isa NAME] [--only 640|12mp-jpeg|12mp] [--small-faces]
 *
 * 1. Speed at the configured settings (detect.* of --config FILE, else of the file
 *    FACEMILL_CONFIG names, else the defaults; --set changes them), median of
 *    --repeat runs (default 5), one OpenBLAS thread unless --threads, between two
 *    measurements of cblas_sgemm 1024^3 on one thread (the figure targets scale by;
 *    a change between them says the machine's speed moved during the runs):
 *      - a 640x480 image,
 *      - a 12 MP (4000x3000) image the way the pipeline sees it: JPEG-encoded, decoded
 *        with DCT scaling to what max_side needs (1/2: 2000x1500), then detected;
 *      - the same 12 MP pixels detected at full resolution (no DCT scaling).
 *    Both images are made from the sample photo (default samples/sample1.jpg in the
 *    model search path) by a bilinear resize with the warp of align.h (centre crop to the
 *    target aspect ratio).
 * 2. With --utk DIR (e.g. ../shared/data/utkface/val): the fraction of images with at
 *    least one face, images per second (decode + detect, one thread) and the face
 *    count histogram; --misses FILE lists the images without a face. Without the
 *    directory it prints "skip: ...".
 * 3. With --small-faces: faces found by their size, every pyramid level against the
 *    configured detect.min_face_frac. The faces the detector finds in the six sample
 *    photos at full size (every level) are the reference; each photo is shrunk by a box
 *    filter of 3 to 14 pixels into the top-left corner of a gray 1920x1280 frame and
 *    detected with min_face_frac 0 and with the configured value; a reference face
 *    counts as found when a detection overlaps its shrunk box by IoU >= 0.4. Prints,
 *    per band of shrunk face width, the faces and the share found by each, and the
 *    mean P-Net time per frame of each.
 * --pad F sets the detector's pad option (a mid-gray border of F times the long side,
 * for tight face crops; see detect.h), like --set detect.pad=F; --no-speed skips
 * part 1. --no-position-tiles runs R-Net's and O-Net's small planes in the direct
 * kernel's column tiles (fm_nn_set_position_tiles(0)), for comparison: the results
 * are the same bits, only the time differs. --no-winograd runs P-Net's wide 3x3 layers
 * in column tiles instead of Winograd (fm_nn_set_winograd(0)), for comparison: the
 * results differ by rounding; --winograd2 runs them as F(2x2, 3x3) instead of F(4x4,
 * 3x3) where the latter applies (fm_nn_set_winograd4(0); rounding again). --isa NAME caps the instruction set of
 * the engine's own kernels (base, avx2+fma, avx512; fm_nn_set_isa), for comparison:
 * avx2+fma and avx512 give the same bits. --only runs one of the three images of part 1
 * (640: the 640x480 image, 12mp-jpeg: the DCT-scaled decode, 12mp: full resolution),
 * for profiling one case with perf; it measures nothing with --no-speed, which is
 * refused. A usage error is one line naming what was wrong, then the usage; exit 2.
 */
#include "facemill/align.h"
#include "facemill/clock.h"
#include "facemill/blas.h"
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/image.h"
#include "facemill/modelpath.h"
#include "facemill/nn.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A w x h resize of src (centre crop to the aspect ratio, bilinear). The caller frees
 * the returned pixels; NULL when out of memory. */
static uint8_t *resize(const fm_image *src, int w, int h, fm_image *out)
{
    uint8_t *px = malloc((size_t)w * (size_t)h * 3);
    if (!px)
        return NULL;
    double sx = (double)src->w / w, sy = (double)src->h / h;
    double s = sx < sy ? sx : sy; /* source pixels per output pixel */
    fm_align_resample(src, (src->w - s * w) / 2, (src->h - s * h) / 2, s * w, s * h, w, h,
                      px, out);
    return px;
}

typedef struct stage_times {
    double decode, pnet, rnet, onet, total;
    int faces, levels, rnet_in, onet_in;
} stage_times;

/* Runs detection repeat times on img (or, with jpeg_path, decode + detect) and
 * prints the medians. */
static int bench_image(const char *label, fm_detector *det, fm_decoder *dec,
                       const fm_image *img, const char *jpeg_path, int repeat)
{
    double *v = calloc((size_t)repeat * 5, sizeof *v);
    fm_face faces[64];
    stage_times last = {0};
    fm_image dimg = {0};
    if (!v)
        return 1;
    for (int r = 0; r < repeat; r++) {
        fm_error e = {0};
        fm_detect_times t;
        int n = 0;
        double t0 = fm_now_ms();
        const fm_image *use = img;
        if (jpeg_path) {
            if (fm_decode_file(dec, jpeg_path, &dimg, &e) != FM_OK) {
                fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&e));
                free(v);
                return 1;
            }
            use = &dimg;
        }
        double t1 = fm_now_ms();
        if (fm_detect(det, use, faces, 64, &n, &t, &e) != FM_OK) {
            fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&e));
            free(v);
            return 1;
        }
        double t2 = fm_now_ms();
        v[0 * repeat + r] = t1 - t0;
        v[1 * repeat + r] = t.pnet_ms;
        v[2 * repeat + r] = t.rnet_ms;
        v[3 * repeat + r] = t.onet_ms;
        v[4 * repeat + r] = t2 - t0;
        last.faces = n;
        last.levels = t.levels;
        last.rnet_in = t.pnet_boxes;
        last.onet_in = t.rnet_boxes;
    }
    const fm_image *shown = jpeg_path ? &dimg : img;
    printf("%-34s %4dx%-4d %3d levels %5d/%3d crops %2d faces | decode %7.1f  pnet %7.1f  "
           "rnet %6.1f  onet %6.1f  total %7.1f ms\n",
           label, shown->w, shown->h, last.levels, last.rnet_in, last.onet_in, last.faces,
           median(v, repeat), median(v + repeat, repeat), median(v + 2 * repeat, repeat),
           median(v + 3 * repeat, repeat), median(v + 4 * repeat, repeat));
    free(v);
    return 0;
}

/* ---- faces found by size (--small-faces) ----------------------------------------- */

#define SF_W 1920
#define SF_H 1280
#define SF_KMIN 3
#define SF_KMAX 14
#define SF_BANDS 9
static const double sf_band[SF_BANDS + 1] = {0, 16, 20, 24, 28, 32, 40, 48, 64, 1e9};

static double sf_iou(const float *a, const double *b)
{
    double iw = (a[2] < b[2] ? a[2] : b[2]) - (a[0] > b[0] ? a[0] : b[0]);
    double ih = (a[3] < b[3] ? a[3] : b[3]) - (a[1] > b[1] ? a[1] : b[1]);
    if (iw <= 0 || ih <= 0)
        return 0;
    double inter = iw * ih;
    double ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return ua > 0 ? inter / ua : 0;
}

/* Part 3: the six sample photos shrunk into a frame; all[0] runs every level, all[1]
 * the configured min_face_frac. */
static int bench_small_faces(fm_detector *det[2], fm_decoder *dec_full, double frac)
{
    long faces[SF_BANDS] = {0}, found[2][SF_BANDS] = {{0}};
    double pnet_ms[2] = {0, 0};
    long frames = 0;
    uint8_t *px = malloc((size_t)SF_W * SF_H * 3);
    fm_model_dirs *dirs = malloc(sizeof *dirs);
    fm_error err = {0};
    int rc = 1;
    if (!px || !dirs || fm_model_dirs_init(dirs, NULL, &err) != FM_OK) {
        fprintf(stderr, "facemill-bench-detect: %s\n", dirs && px ? fm_error_text(&err)
                                                                   : "out of memory");
        goto done;
    }
    for (int s = 1; s <= 6; s++) {
        char name[64], path[FM_MODEL_PATH_MAX];
        fm_image src;
        fm_face ref[64], got[64];
        int nref = 0;
        fm_detect_times t;
        snprintf(name, sizeof name, "samples/sample%d.jpg", s);
        if (fm_model_find(dirs, "--small-faces", name, path, sizeof path, &err) != FM_OK ||
            fm_decode_file(dec_full, path, &src, &err) != FM_OK ||
            fm_detect(det[0], &src, ref, 64, &nref, &t, &err) != FM_OK) {
            fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
            goto done;
        }
        /* the frame reads the decoder's pixels, which the next decode replaces */
        for (int k = SF_KMIN; k <= SF_KMAX; k++) {
            fm_image frame;
            fm_align_shrink_box(&src, k, SF_W, SF_H, px, &frame);
            frames++;
            for (int v = 0; v < 2; v++) {
                int n = 0;
                if (fm_detect(det[v], &frame, got, 64, &n, &t, &err) != FM_OK) {
                    fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
                    goto done;
                }
                pnet_ms[v] += t.pnet_ms;
                for (int i = 0; i < nref; i++) {
                    /* the reference box in the frame's pixels (centres at integers) */
                    double b[4];
                    for (int j = 0; j < 4; j++)
                        b[j] = (ref[i].box[j] + 0.5) / k - 0.5;
                    double width = b[2] - b[0];
                    int band = 0;
                    while (band + 1 < SF_BANDS && width >= sf_band[band + 1])
                        band++;
                    if (v == 0)
                        faces[band]++;
                    for (int g = 0; g < n; g++)
                        if (sf_iou(got[g].box, b) >= 0.4) {
                            found[v][band]++;
                            break;
                        }
                }
            }
        }
    }
    printf("faces found by size: the sample photos' faces shrunk by 1/%d to 1/%d in a %dx%d "
           "frame (%ld frames)\n", SF_KMIN, SF_KMAX, SF_W, SF_H, frames);
    printf("  face width, px   faces   every level   min_face_frac %g\n", frac);
    for (int b = 0; b < SF_BANDS; b++) {
        if (!faces[b])
            continue;
        char band[32];
        if (b + 1 == SF_BANDS)
            snprintf(band, sizeof band, "%g and more", sf_band[b]);
        else
            snprintf(band, sizeof band, "%g-%g", sf_band[b], sf_band[b + 1]);
        printf("  %-15s %6ld   %10.1f%%   %10.1f%%\n", band, faces[b],
               100.0 * found[0][b] / faces[b], 100.0 * found[1][b] / faces[b]);
    }
    printf("  P-Net per frame, ms: every level %.1f, min_face_frac %g %.1f\n",
           pnet_ms[0] / frames, frac, pnet_ms[1] / frames);
    rc = 0;
done:
    free(px);
    free(dirs);
    return rc;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Detection rate over the JPEG files of dir. */
static int bench_utk(const char *dir, fm_detector *det, fm_decoder *dec, const char *misses)
{
    DIR *dp = opendir(dir);
    if (!dp) {
        printf("skip: UTKFace folder %s not found\n", dir);
        return 0;
    }
    size_t n = 0, cap = 0;
    char **names = NULL;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        if (!has_suffix(de->d_name, ".jpg"))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn)
                break;
            names = nn;
        }
        names[n] = strdup(de->d_name);
        if (names[n])
            n++;
    }
    closedir(dp);
    if (n == 0) {
        printf("skip: no JPEG files in %s\n", dir);
        free(names);
        return 0;
    }
    qsort(names, n, sizeof *names, cmp_str);
    FILE *mf = misses ? fopen(misses, "w") : NULL;
    size_t with_face = 0, failed = 0, hist[4] = {0};
    double pnet = 0, rnet = 0, onet = 0, t0 = fm_now_ms();
    char path[4096];
    fm_face faces[64];
    for (size_t i = 0; i < n; i++) {
        fm_image img;
        fm_error e = {0};
        fm_detect_times t;
        int nf = 0;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (fm_decode_file(dec, path, &img, &e) != FM_OK ||
            fm_detect(det, &img, faces, 64, &nf, &t, &e) != FM_OK) {
            fprintf(stderr, "%s\n", fm_error_text(&e));
            failed++;
            continue;
        }
        pnet += t.pnet_ms;
        rnet += t.rnet_ms;
        onet += t.onet_ms;
        hist[nf < 3 ? nf : 3]++;
        if (nf > 0)
            with_face++;
        else if (mf)
            fprintf(mf, "%s\n", path);
    }
    double secs = (fm_now_ms() - t0) / 1e3;
    if (mf)
        fclose(mf);
    size_t ok = n - failed;
    printf("UTKFace %s: %zu images (%zu failed to decode), with >= 1 face: %zu = %.2f%%; "
           "faces 0/1/2/3+: %zu/%zu/%zu/%zu\n",
           dir, n, failed, with_face, ok ? 100.0 * (double)with_face / (double)ok : 0.0,
           hist[0], hist[1], hist[2], hist[3]);
    printf("  %.1f images/s (decode + detect, one thread); per image pnet %.2f  rnet %.2f  "
           "onet %.2f ms\n",
           (double)n / secs, ok ? pnet / (double)ok : 0.0, ok ? rnet / (double)ok : 0.0,
           ok ? onet / (double)ok : 0.0);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: facemill-bench-detect [--models DIR] [--sample FILE.jpg] [--repeat N]\n"
                 "                             [--threads N] [--config FILE]\n"
                 "                             [--set KEY=VALUE]... [--utk DIR]\n"
                 "                             [--misses FILE] [--pad F] [--no-speed]\n"
                 "                             [--no-position-tiles] [--no-winograd]\n"
                 "                             [--winograd2] [--isa NAME]\n"
                 "                             [--only 640|12mp-jpeg|12mp] [--small-faces]\n"
                 "--config FILE: the configuration (YAML, see facemill.yaml(5)) over\n"
                 "the defaults, else the file FACEMILL_CONFIG names; then each --set,\n"
                 "in order.\n");
}

/* A usage error: one line naming what was wrong, then the usage; returns 2. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("facemill-bench-detect: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    usage(stderr);
    return 2;
}

/* The options that take a value, and what each takes (for a missing value). */
static const char *const value_opts[][2] = {
    {"--models", "a directory"},
    {"--sample", "a JPEG file"},
    {"--repeat", "a whole number from 1 to 1000000"},
    {"--threads", "a whole number from 1 to 64"},
    {"--utk", "a directory"},
    {"--misses", "a file name"},
    {"--pad", "a number from 0 to 1"},
    {"--isa", "base, avx2+fma or avx512"},
    {"--only", "640, 12mp-jpeg or 12mp"},
};

/* What option a takes as its value, or NULL when a takes none (or is no option). */
static const char *value_of(const char *a)
{
    for (size_t k = 0; k < sizeof value_opts / sizeof value_opts[0]; k++)
        if (strcmp(a, value_opts[k][0]) == 0)
            return value_opts[k][1];
    return NULL;
}

int main(int argc, char **argv)
{
    fm_config c;
    fm_error err = {0};
    fm_config_defaults(&c);
    if (fm_config_from_args(&c, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
        return 2;
    }
    const char *models = c.models.dir, *sample = "samples/sample1.jpg";
    const char *utk = NULL, *misses = NULL, *only = NULL;
    int repeat = 5, threads = (int)c.engine.threads, speed = 1, small_faces = 0;
    double pad = -1; /* -1: detect.pad of the configuration */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--no-speed") == 0) {
            speed = 0;
            continue;
        }
        if (strcmp(a, "--small-faces") == 0) {
            small_faces = 1;
            continue;
        }
        if (strcmp(a, "--no-position-tiles") == 0) {
            fm_nn_set_position_tiles(0);
            continue;
        }
        if (strcmp(a, "--no-winograd") == 0) {
            fm_nn_set_winograd(0);
            continue;
        }
        if (strcmp(a, "--winograd2") == 0) {
            fm_nn_set_winograd4(0);
            continue;
        }
        const char *takes = value_of(a);
        if (!takes)
            return a[0] == '-' && a[1] ? usage_error("unknown option '%s'", a)
                                       : usage_error("unexpected argument '%s'", a);
        if (i + 1 == argc)
            return usage_error("%s needs %s", a, takes);
        const char *v = argv[++i];
        if (strcmp(a, "--isa") == 0) {
            int isa = fm_nn_isa_from_name(v);
            if (isa < 0)
                return usage_error("--isa: '%s' is not %s", v, takes);
            fm_nn_set_isa((fm_nn_isa)isa);
        } else if (strcmp(a, "--models") == 0)
            models = v;
        else if (strcmp(a, "--sample") == 0)
            sample = v;
        else if (strcmp(a, "--utk") == 0)
            utk = v;
        else if (strcmp(a, "--misses") == 0)
            misses = v;
        else if (strcmp(a, "--only") == 0) {
            if (strcmp(v, "640") != 0 && strcmp(v, "12mp-jpeg") != 0 &&
                strcmp(v, "12mp") != 0)
                return usage_error("--only: '%s' is not %s", v, takes);
            only = v;
        } else if (strcmp(a, "--repeat") == 0 || strcmp(a, "--threads") == 0) {
            char *end = NULL;
            long n = strtol(v, &end, 10), most = a[2] == 'r' ? 1000000 : 64;
            if (end == v || *end || n < 1 || n > most)
                return usage_error("%s needs %s, not '%s'", a, takes, v);
            if (a[2] == 'r')
                repeat = (int)n;
            else
                threads = (int)n;
        } else { /* --pad */
            char *end = NULL;
            pad = strtod(v, &end);
            if (end == v || *end || !(pad >= 0 && pad <= 1))
                return usage_error("--pad needs %s, not '%s'", takes, v);
        }
    }
    if (only && !speed)
        return usage_error("--only and --no-speed exclude each other (--only picks an "
                           "image of part 1)");
    if (repeat < 1)
        repeat = 1;
    /* the models and the sample photo through the model search path */
    char sample_path[FM_MODEL_PATH_MAX];
    fm_model_dirs *dirs = malloc(sizeof *dirs);
    snprintf(c.models.dir, sizeof c.models.dir, "%s", models);
    if (!dirs || fm_config_resolve_models(&c, FM_RESOLVE_DETECTOR, &err) != FM_OK ||
        fm_model_dirs_init(dirs, NULL, &err) != FM_OK ||
        fm_model_find(dirs, "--sample", sample, sample_path, sizeof sample_path, &err) !=
            FM_OK) {
        fprintf(stderr, "facemill-bench-detect: %s\n",
                dirs ? fm_error_text(&err) : "out of memory");
        free(dirs);
        return 1;
    }
    free(dirs);
    models = c.models.dir;
    sample = sample_path;

    int rc = 1;
    fm_detector *det = NULL;
    fm_decoder *dec_full = NULL, *dec = NULL;
    uint8_t *px640 = NULL, *px12 = NULL;
    char tmp12[] = "/tmp/facemill-bench-12mp-XXXXXX";
    int tmpfd = -1;
    fm_detect_opts o;
    fm_detect_opts_from_config(&o, &c);
    if (pad >= 0)
        o.pad = pad;
    fm_blas_choice blas;
    if (fm_blas_select(c.engine.blas_kernels, &blas, &err) != FM_OK) {
        fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_decode_opts dopt = {0};
    dopt.target_side = o.max_side;
    fm_image src, img640, img12;
    if (fm_nn_set_threads(threads, &err) != FM_OK ||
        fm_detector_open(&det, models, &o, &err) != FM_OK ||
        fm_decoder_new(&dec_full, NULL, &err) != FM_OK ||
        fm_decoder_new(&dec, &dopt, &err) != FM_OK) {
        fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
        goto done;
    }
    printf("settings: min_face %g, min_face_frac %g, max_side %d, scale_factor %g, "
           "thresholds %g/%g/%g, pad %g, %d OpenBLAS thread(s); detector arena %.1f MiB\n",
           o.min_face, o.min_face_frac, o.max_side, o.scale_factor, o.pnet_threshold, o.rnet_threshold,
           o.onet_threshold, o.pad, fm_nn_threads(),
           (double)fm_detector_arena_bytes(det) / 1048576.0);
    printf("BLAS kernels %s: %s\nengine kernels: %s\n", blas.core, blas.reason,
           fm_nn_isa_name(fm_nn_isa_now()));
    if (fm_decode_file(dec_full, sample, &src, &err) != FM_OK) {
        fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
        goto done;
    }
    px640 = resize(&src, 640, 480, &img640);
    px12 = resize(&src, 4000, 3000, &img12);
    tmpfd = mkstemp(tmp12);
    if (!px640 || !px12 || tmpfd < 0) {
        fprintf(stderr, "facemill-bench-detect: out of memory or no temporary file\n");
        goto done;
    }
    close(tmpfd);
    if (fm_image_write_jpeg(&img12, tmp12, 92, &err) != FM_OK) {
        fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
        goto done;
    }
    int run640 = !only || strcmp(only, "640") == 0;
    int run12j = !only || strcmp(only, "12mp-jpeg") == 0;
    int run12 = !only || strcmp(only, "12mp") == 0;
    if (speed) {
        /* the machine's speed around the runs: targets scale by it, and on a shared
         * machine the two may differ */
        printf("cblas_sgemm 1024^3, 1 thread, before the runs: %.1f GFLOPS\n",
               fm_blas_sgemm_gflops());
        printf("sample %s, median of %d runs:\n", sample, repeat);
        if ((run640 && bench_image("640x480", det, dec, &img640, NULL, repeat)) ||
            (run12j && bench_image("12 MP JPEG, DCT-scaled decode", det, dec, NULL, tmp12,
                                   repeat)) ||
            (run12 && bench_image("12 MP pixels, full resolution", det, dec, &img12, NULL,
                                  repeat)))
            goto done;
        printf("cblas_sgemm 1024^3, 1 thread, after the runs: %.1f GFLOPS\n",
               fm_blas_sgemm_gflops());
    }
    if (utk) {
        if (bench_utk(utk, det, dec, misses))
            goto done;
    } else {
        printf("skip: no UTKFace folder given (--utk DIR)\n");
    }
    if (small_faces) {
        fm_detect_opts all = o;
        all.min_face_frac = 0;
        fm_detector *pair[2] = {NULL, det};
        if (fm_detector_open(&pair[0], models, &all, &err) != FM_OK) {
            fprintf(stderr, "facemill-bench-detect: %s\n", fm_error_text(&err));
            goto done;
        }
        int bad = bench_small_faces(pair, dec_full, o.min_face_frac);
        fm_detector_close(&pair[0]);
        if (bad)
            goto done;
    }
    rc = 0;
done:
    if (tmpfd >= 0)
        unlink(tmp12);
    free(px640);
    free(px12);
    fm_decoder_destroy(&dec);
    fm_decoder_destroy(&dec_full);
    fm_detector_close(&det);
    return rc;
}
