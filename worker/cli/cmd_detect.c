/* cmd_detect.c - `facemill detect`: runs the face detector on image files and prints
 * one JSON line per image, optionally drawing the detections or dumping the decoded
 * pixels.
 *
 * It exists to look at the detector from the shell (which faces, where, how fast) and
 * to feed the reference test: --ppm-dir writes exactly the RGB pixels the detector saw,
 * so tests/reference/mtcnn_ref.py can run on identical input. A bad image never stops
 * the run: it gets an error record and the exit code becomes 1 at the end.
 */
#include "cli_opts.h"
#include "cmd_blas.h"
#include "cmd_draw.h"
#include "cmd_util.h"
#include "commands.h"
#include "facemill/clock.h"
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

static const cli_cmd cmd = {
    "detect", "[options] IMAGE...", 1, -1,
    "Finds faces and five landmarks in each IMAGE (JPEG, PNG, WebP, HEIC, AVIF or\n"
    "TIFF) and prints one JSON object per image and line, in the result schema\n"
    "that `facemill predict` and `facemill export` print too (proto/RESULTS.md),\n"
    "without attributes:\n"
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
    "engine.threads (see `facemill config --describe`).\n",
    "exit status: 0 every image processed, 1 any failed, 2 usage error", NULL};

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

/* What one run of the command holds. */
typedef struct detect_run {
    fm_detect_opts opts;
    fm_detector *det;
    fm_decoder *dec;
    fm_face *faces; /* opts.max_faces */
    const char *draw, *draw_dir, *ppm_dir;
} detect_run;

static fm_status run_open(detect_run *r, fm_config *c, fm_error *err)
{
    fm_status st;
    if (c->detect.mode != FM_DETECT_MTCNN)
        return fm_error_set(err, FM_ERR_INVALID,
                            "facemill detect runs the detector: detect.mode must be mtcnn "
                            "(aligned and cropped place one face per image without it; "
                            "`facemill predict` shows where)");
    fm_detect_opts_from_config(&r->opts, c);
    if ((st = fm_nn_set_threads((int)c->engine.threads, err)) != FM_OK ||
        (st = fm_config_resolve_models(c, FM_RESOLVE_DETECTOR, err)) != FM_OK ||
        (st = fm_detector_open(&r->det, c->models.dir, &r->opts, err)) != FM_OK)
        return st;
    fm_decode_opts decopts = {(uint64_t)c->decode.max_pixels, (size_t)c->decode.max_bytes,
                              r->opts.max_side, (unsigned)c->decode.formats};
    if (!(r->faces = calloc((size_t)r->opts.max_faces, sizeof *r->faces)))
        return fm_error_set(err, FM_ERR_NOMEM, "out of memory");
    if ((st = fm_decoder_new(&r->dec, &decopts, err)) != FM_OK)
        return st;
    fm_log_debug("detector arena: %zu bytes", fm_detector_arena_bytes(r->det));
    return FM_OK;
}

static void run_close(detect_run *r)
{
    fm_decoder_destroy(&r->dec);
    fm_detector_close(&r->det);
    free(r->faces);
}

/* Detects, prints and draws one image. Returns 0, or 1 when it failed. */
static int detect_one(detect_run *r, fm_json *j, const char *path)
{
    fm_image img;
    fm_error e = {0};
    int n = 0;
    fm_detect_times t;
    char out[4096];
    double t0 = fm_now_ms();
    fm_status st = fm_decode_file(r->dec, path, &img, &e);
    double decode_ms = fm_now_ms() - t0;
    if (!st && r->ppm_dir) {
        st = out_path(out, sizeof out, r->ppm_dir, path, 1, ".ppm", &e);
        if (!st)
            st = write_ppm(&img, out, &e);
    }
    if (!st)
        st = fm_detect(r->det, &img, r->faces, r->opts.max_faces, &n, &t, &e);
    if (st) {
        print_error(j, path, &e);
        return 1;
    }
    fm_log_debug("%s: %dx%d pixels, %d levels, %d boxes into R-Net, %d into O-Net, "
                 "%d faces", path, img.w, img.h, t.levels, t.pnet_boxes, t.rnet_boxes,
                 t.onet_boxes);
    if (t.truncated)
        fm_log_warn("%s: candidate buffer full, lowest-scoring candidates dropped", path);
    print_result(j, path, &img, r->faces, n, decode_ms, &t);
    if (!r->draw && !r->draw_dir)
        return 0;
    const char *dst = r->draw;
    if (r->draw_dir) {
        st = fm_cmd_draw_path(out, sizeof out, r->draw_dir, path, &e);
        dst = out;
    }
    draw_faces(&img, r->faces, n);
    if (!st)
        st = fm_image_write_jpeg(&img, dst, 90, &e);
    if (st) {
        cli_fail(&cmd, "%s", fm_error_text(&e));
        return 1;
    }
    return 0;
}

int fm_cmd_detect(int argc, char **argv)
{
    detect_run r = {0};
    const cli_opt opts[] = {
        CLI_PATH("--draw", 0, "OUT.jpg", &r.draw,
                 "write the (single) image with boxes and landmarks drawn"),
        CLI_PATH("--draw-dir", 0, "DIR", &r.draw_dir,
                 "write DIR/<file name> with the detections for each image (DIR is "
                 "created when missing; equal file names overwrite each other)"),
        CLI_PATH("--ppm-dir", 0, "DIR", &r.ppm_dir,
                 "write the decoded RGB pixels as DIR/<file name>.ppm (binary PPM, "
                 "extension replaced; DIR is created when missing); equal names overwrite "
                 "each other"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    if (r.draw && r.draw_dir)
        return cli_usage_error(&cmd, "--draw and --draw-dir exclude each other");
    if (r.draw && a.n != 1)
        return cli_usage_error(&cmd, "--draw takes exactly one image (use --draw-dir)");
    if (fm_cmd_blas_apply(cmd.name, &c) != 0)
        return CLI_EXIT_FAILURE;
    fm_error err = {0};
    if ((r.draw_dir && fm_cmd_make_dirs(r.draw_dir, &err) != FM_OK) ||
        (r.ppm_dir && fm_cmd_make_dirs(r.ppm_dir, &err) != FM_OK) ||
        run_open(&r, &c, &err) != FM_OK) {
        run_close(&r);
        return cli_fail(&cmd, "%s", fm_error_text(&err));
    }
    rc = CLI_EXIT_OK;
    fm_json j;
    fm_json_init(&j, stdout);
    for (int i = 0; i < a.n; i++)
        if (detect_one(&r, &j, a.operands[i]))
            rc = CLI_EXIT_FAILURE;
    if (fflush(stdout) != 0)
        rc = cli_fail(&cmd, "writing to stdout failed");
    run_close(&r);
    return rc;
}
