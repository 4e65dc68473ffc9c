/* cmd_detect.c - `facemill detect`: runs the face detector on image files and prints
 * one JSON line per image, optionally drawing the detections or dumping the decoded
 * pixels.
 *
 * It exists to look at the detector from the shell (which faces, where, how fast) and
 * to feed the reference test: --ppm-dir writes exactly the RGB pixels the detector saw,
 * so tests/reference/mtcnn_ref.py can run on identical input. A bad image never stops
 * the run: it gets an error record and the exit code becomes 1 at the end.
 */
#include "cmd_util.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/image.h"
#include "facemill/json.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/modelpath.h"
#include "facemill/result_json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill detect [--config FILE] [--set KEY=VALUE]...\n"
            "                       [--draw OUT.jpg | --draw-dir DIR] [--ppm-dir DIR] "
            "IMAGE...\n"
            "\n"
            "Finds faces and five landmarks in each JPEG IMAGE and prints one JSON object\n"
            "per image and line, in the result schema that `facemill predict` and\n"
            "`facemill export` print too (proto/RESULTS.md), without attributes:\n"
            "  {\"schema\": 2, \"source\", \"width\", \"height\", \"error\": null,\n"
            "   \"scale\": [num, denom],\n"
            "   \"times_ms\": {\"decode\", \"pnet\", \"rnet\", \"onet\"},\n"
            "   \"faces\": [{\"box\": {\"x1\", \"y1\", \"x2\", \"y2\"}, \"score\",\n"
            "   \"landmarks\": {\"left_eye\": {\"x\", \"y\"}, \"right_eye\", \"nose\",\n"
            "   \"mouth_left\", \"mouth_right\"}}]}\n"
            "An image that failed has \"error\": {\"code\", \"name\", \"text\"} and no faces.\n"
            "Coordinates are pixels of the original (upright) image, (0, 0) the centre of\n"
            "the top-left pixel; width and height are its size; scale is the DCT scale the\n"
            "image was decoded at (detect.max_side decides it). Landmarks left and right\n"
            "as seen in the image. Settings: detect.*, decode.*, models.dir and\n"
            "engine.threads (see `facemill config --describe`).\n"
            "\n"
            "  --draw OUT.jpg   write the (single) image with boxes and landmarks drawn\n"
            "  --draw-dir DIR   write DIR/<file name> with the detections for each image\n"
            "  --ppm-dir DIR    write the decoded RGB pixels as DIR/<file name>.ppm (binary\n"
            "                   PPM, extension replaced); equal names overwrite each other\n"
            "\n"
            "Exit code: 0 when every image was processed, 1 when any failed, 2 on a usage\n"
            "error.\n");
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* dir/<base of path><suffix>; with strip_ext the base's last extension is dropped. */
static fm_status out_path(char *buf, size_t size, const char *dir, const char *path,
                          int strip_ext, const char *suffix, fm_error *err)
{
    const char *b = base_name(path);
    size_t n = strlen(b);
    const char *dot = strip_ext ? strrchr(b, '.') : NULL;
    if (dot && dot != b)
        n = (size_t)(dot - b);
    int len = snprintf(buf, size, "%s/%.*s%s", dir, (int)n, b, suffix);
    if (len < 0 || (size_t)len >= size)
        return fm_error_set(err, FM_ERR_INVALID, "%s: output path too long", path);
    return FM_OK;
}

static fm_status write_ppm(const fm_image *img, const char *path, fm_error *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return fm_error_set(err, FM_ERR_IO, "%s: %s", path, strerror(errno));
    int ok = fprintf(f, "P6\n%d %d\n255\n", img->w, img->h) > 0;
    for (int y = 0; ok && y < img->h; y++)
        ok = fwrite(img->data + (size_t)y * img->stride, 3, (size_t)img->w, f) ==
             (size_t)img->w;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok)
        return fm_error_set(err, FM_ERR_IO, "%s: write failed", path);
    return FM_OK;
}

/* Draws the faces (original coordinates) onto the decoded pixels. */
static void draw_faces(fm_image *img, const fm_face *faces, int n)
{
    double num = img->scale_num > 0 ? img->scale_num : 1;
    double den = img->scale_denom > 0 ? img->scale_denom : 1;
    double r = num / den;
    int big = img->w > img->h ? img->w : img->h;
    int t = (int)lround(big / 500.0);
    if (t < 1)
        t = 1;
    const fm_rgb green = {0, 255, 0}, red = {255, 0, 0};
#define TO_DEC(u) ((int)lround(((double)(u) + 0.5) * r - 0.5))
    for (int i = 0; i < n; i++) {
        const fm_face *f = &faces[i];
        fm_image_draw_rect(img, TO_DEC(f->box[0]), TO_DEC(f->box[1]), TO_DEC(f->box[2]),
                           TO_DEC(f->box[3]), t, green);
        for (int k = 0; k < 5; k++)
            fm_image_draw_point(img, TO_DEC(f->landmarks[2 * k]),
                                TO_DEC(f->landmarks[2 * k + 1]), 2 * t, red);
    }
#undef TO_DEC
}

static void print_error(fm_json *j, const char *path, const fm_error *e)
{
    fm_result_image im = {path, -1, -1, fm_result_error_code(e->code), fm_error_text(e)};
    fm_result_json_begin(j, &im);
    fm_result_json_faces(j);
    fm_result_json_end(j);
    fm_json_newline(j);
}

static void print_result(fm_json *j, const char *path, const fm_image *img,
                         const fm_face *faces, int n, double decode_ms,
                         const fm_detect_times *t)
{
    static const char *const stages[4] = {"decode", "pnet", "rnet", "onet"};
    const double ms[4] = {decode_ms, t->pnet_ms, t->rnet_ms, t->onet_ms};
    fm_result_image im = {path, img->orig_w, img->orig_h, FM_RESULT_ERROR_NONE, NULL};
    fm_result_json_begin(j, &im);
    fm_json_key(j, "scale");
    fm_json_arr_begin(j);
    fm_json_int(j, img->scale_num);
    fm_json_int(j, img->scale_denom);
    fm_json_arr_end(j);
    fm_result_json_times(j, stages, ms, 4);
    fm_result_json_faces(j);
    for (int i = 0; i < n; i++) {
        fm_result_face f;
        fm_cmd_result_face(&f, &faces[i], NULL);
        fm_result_json_face(j, &f);
    }
    fm_result_json_end(j);
    fm_json_newline(j);
}

int fm_cmd_detect(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    }
    fm_config c;
    fm_error err = {0};
    fm_config_defaults(&c);
    if (fm_config_from_args(&c, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill detect: %s\n", fm_error_text(&err));
        return 1;
    }
    fm_log_init("detect", c.log.level);

    const char *draw = NULL, *draw_dir = NULL, *ppm_dir = NULL;
    char **images = calloc((size_t)argc + 1, sizeof *images);
    int n_images = 0, rc = 0;
    fm_face *faces = NULL;
    fm_decoder *dec = NULL;
    fm_detector *det = NULL;
    if (!images) {
        fprintf(stderr, "facemill detect: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int m;
        if (strcmp(argv[i], "--") == 0) {
            while (++i < argc)
                images[n_images++] = argv[i];
            break;
        }
        if ((m = fm_cmd_take_opt(argc, argv, &i, "--draw", &v)) != 0)
            draw = v;
        else if ((m = fm_cmd_take_opt(argc, argv, &i, "--draw-dir", &v)) != 0)
            draw_dir = v;
        else if ((m = fm_cmd_take_opt(argc, argv, &i, "--ppm-dir", &v)) != 0)
            ppm_dir = v;
        else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "facemill detect: unknown option '%s'\n\n", argv[i]);
            usage(stderr);
            rc = 2;
            goto done;
        } else {
            images[n_images++] = argv[i];
            continue;
        }
        if (m < 0) {
            fprintf(stderr, "facemill detect: %s needs a value\n", argv[i]);
            rc = 2;
            goto done;
        }
    }
    if (n_images == 0 || (draw && draw_dir) || (draw && n_images != 1)) {
        fprintf(stderr, "facemill detect: %s\n\n",
                n_images == 0 ? "no image given"
                : draw_dir    ? "--draw and --draw-dir exclude each other"
                              : "--draw takes exactly one image (use --draw-dir)");
        usage(stderr);
        rc = 2;
        goto done;
    }

    if (fm_nn_set_threads((int)c.engine.threads, &err) != FM_OK) {
        fprintf(stderr, "facemill detect: %s\n", fm_error_text(&err));
        rc = 1;
        goto done;
    }
    fm_detect_opts dopts;
    fm_detect_opts_from_config(&dopts, &c);
    if (fm_config_resolve_models(&c, FM_RESOLVE_DETECTOR, &err) != FM_OK ||
        fm_detector_open(&det, c.models.dir, &dopts, &err) != FM_OK) {
        fprintf(stderr, "facemill detect: %s\n", fm_error_text(&err));
        rc = 1;
        goto done;
    }
    fm_decode_opts decopts = {0};
    decopts.max_pixels = (uint64_t)c.decode.max_pixels;
    decopts.max_bytes = (size_t)c.decode.max_bytes;
    decopts.target_side = dopts.max_side;
    faces = calloc((size_t)dopts.max_faces, sizeof *faces);
    if (!faces || fm_decoder_new(&dec, &decopts, &err) != FM_OK) {
        fprintf(stderr, "facemill detect: %s\n", faces ? fm_error_text(&err) : "out of memory");
        rc = 1;
        goto done;
    }
    fm_log_debug("detector arena: %zu bytes", fm_detector_arena_bytes(det));

    fm_json j;
    fm_json_init(&j, stdout);
    for (int i = 0; i < n_images; i++) {
        const char *path = images[i];
        fm_image img;
        fm_error e = {0};
        int n = 0;
        fm_detect_times t;
        char out[4096];
        double t0 = fm_cmd_now_ms();
        fm_status st = fm_decode_file(dec, path, &img, &e);
        double decode_ms = fm_cmd_now_ms() - t0;
        if (!st && ppm_dir) {
            st = out_path(out, sizeof out, ppm_dir, path, 1, ".ppm", &e);
            if (!st)
                st = write_ppm(&img, out, &e);
        }
        if (!st)
            st = fm_detect(det, &img, faces, dopts.max_faces, &n, &t, &e);
        if (st) {
            print_error(&j, path, &e);
            rc = 1;
            continue;
        }
        fm_log_debug("%s: %dx%d pixels, %d levels, %d boxes into R-Net, %d into O-Net, "
                     "%d faces", path, img.w, img.h, t.levels, t.pnet_boxes, t.rnet_boxes,
                     t.onet_boxes);
        if (t.truncated)
            fm_log_warn("%s: candidate buffer full, lowest-scoring candidates dropped", path);
        print_result(&j, path, &img, faces, n, decode_ms, &t);
        if (draw || draw_dir) {
            const char *dst = draw;
            if (draw_dir) {
                st = out_path(out, sizeof out, draw_dir, path, 0, "", &e);
                dst = out;
            }
            draw_faces(&img, faces, n);
            if (!st)
                st = fm_image_write_jpeg(&img, dst, 90, &e);
            if (st) {
                fprintf(stderr, "facemill detect: %s\n", fm_error_text(&e));
                rc = 1;
            }
        }
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "facemill detect: writing to stdout failed\n");
        rc = 1;
    }
done:
    fm_decoder_destroy(&dec);
    fm_detector_close(&det);
    free(faces);
    free(images);
    return rc;
}
