/* cmd_predict.c - `facemill predict IMAGE...`: the whole labelling pipeline on image
 * files, one JSON line per image with every face's box, landmarks and attributes.
 *
 * It is the local, single-process form of what a worker does; a bad image gets an
 * error record and the exit code becomes 1 at the end, the others go on.
 */
#include "cmd_draw.h"
#include "cmd_util.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/json.h"
#include "facemill/log.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 16 /* images per pipeline call */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill predict [--config FILE] [--set KEY=VALUE]...\n"
            "                        [--draw OUT.jpg | --draw-dir DIR] IMAGE...\n"
            "\n"
            "Finds the faces in each JPEG IMAGE and labels them with age, gender and\n"
            "ethnicity. Prints one JSON object per image and line, in the result schema\n"
            "that `facemill detect` and `facemill export` print too (proto/RESULTS.md):\n"
            "  {\"schema\": 2, \"source\", \"width\", \"height\", \"error\": null,\n"
            "   \"times_ms\": {\"decode\", \"detect\", \"align\", \"embed\", \"heads\"},\n"
            "   \"faces\": [{\"box\": {\"x1\", \"y1\", \"x2\", \"y2\"}, \"score\",\n"
            "   \"landmarks\": {\"left_eye\": {\"x\", \"y\"}, \"right_eye\", \"nose\",\n"
            "   \"mouth_left\", \"mouth_right\"}, \"age\", \"age_std\", \"gender\",\n"
            "   \"gender_probs\": {\"male\", \"female\"}, \"race\", \"race_probs\": {\"White\",\n"
            "   \"Black\", \"Asian\", \"Indian\", \"Others\"}}]}\n"
            "An image that failed has \"error\": {\"code\", \"name\", \"text\"} and no faces.\n"
            "age is the expected value of the predicted age distribution, age_std its\n"
            "standard deviation. Coordinates as in `facemill detect`. Settings: detect.*,\n"
            "decode.*, embed.*, heads.model, models.dir, engine.threads. With heads.model\n"
            "empty, faces carry no attributes (no age, gender or race keys).\n"
            "\n"
            "  --draw OUT.jpg   write the (single) image at its full size with each face's\n"
            "                   box and labels (age +/- spread, gender and ethnicity with\n"
            "                   their probabilities), text scaled with the image\n"
            "  --draw-dir DIR   the same for each image, as DIR/<file name>\n"
            "\n"
            "Exit code: 0 when every image was processed, 1 when any failed, 2 on a usage\n"
            "error.\n");
}

/* --draw / --draw-dir for one labelled image; 0, or -1 after a message. */
static int draw_result(fm_decoder *full, const char *path, const fm_image_result *r,
                       const char *draw, const char *draw_dir)
{
    char out[4096];
    fm_error e = {0};
    if ((draw_dir && fm_cmd_draw_path(out, sizeof out, draw_dir, path, &e) != FM_OK) ||
        fm_cmd_draw_labels(full, path, r, draw ? draw : out, &e) != FM_OK) {
        fprintf(stderr, "facemill predict: %s\n", fm_error_text(&e));
        return -1;
    }
    return 0;
}

int fm_cmd_predict(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    fm_config c;
    fm_error err = {0};
    fm_config_defaults(&c);
    if (fm_config_from_args(&c, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill predict: %s\n", fm_error_text(&err));
        return 1;
    }
    fm_log_init("predict", c.log.level);
    int n_images = 0, rc = 0, dashdash = 0;
    char **images = calloc((size_t)argc + 1, sizeof *images);
    if (!images) {
        fprintf(stderr, "facemill predict: out of memory\n");
        return 1;
    }
    const char *draw = NULL, *draw_dir = NULL;
    for (int i = 1; i < argc; i++) {
        int m = 0;
        if (!dashdash && strcmp(argv[i], "--") == 0) {
            dashdash = 1;
        } else if (!dashdash && ((m = fm_cmd_take_opt(argc, argv, &i, "--draw", &draw)) ||
                                 (m = fm_cmd_take_opt(argc, argv, &i, "--draw-dir",
                                                      &draw_dir)))) {
            if (m < 0) {
                fprintf(stderr, "facemill predict: %s needs a value\n", argv[i]);
                free(images);
                return 2;
            }
        } else if (!dashdash && argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "facemill predict: unknown option '%s'\n\n", argv[i]);
            usage(stderr);
            free(images);
            return 2;
        } else {
            images[n_images++] = argv[i];
        }
    }
    if (n_images == 0 || (draw && draw_dir) || (draw && n_images != 1)) {
        fprintf(stderr, "facemill predict: %s\n\n",
                n_images == 0 ? "no image given"
                : draw_dir    ? "--draw and --draw-dir exclude each other"
                              : "--draw takes exactly one image (use --draw-dir)");
        usage(stderr);
        free(images);
        return 2;
    }
    fm_pipeline *p = NULL;
    fm_decoder *full = NULL; /* --draw: the originals at full size */
    fm_decode_opts fo = {(uint64_t)c.decode.max_pixels, (size_t)c.decode.max_bytes, 0};
    fm_pipeline_opts po = {BATCH, 0, 0};
    if (fm_nn_set_threads((int)c.engine.threads, &err) != FM_OK ||
        fm_pipeline_open(&p, &c, &po, &err) != FM_OK ||
        ((draw || draw_dir) && fm_decoder_new(&full, &fo, &err) != FM_OK)) {
        fprintf(stderr, "facemill predict: %s\n", fm_error_text(&err));
        fm_pipeline_close(&p);
        free(images);
        return 1;
    }
    fm_json j;
    fm_json_init(&j, stdout);
    fm_pipeline_input in[BATCH];
    fm_image_result res[BATCH];
    for (int i0 = 0; i0 < n_images; i0 += BATCH) {
        int n = n_images - i0 < BATCH ? n_images - i0 : BATCH;
        for (int i = 0; i < n; i++) {
            memset(&in[i], 0, sizeof in[i]);
            in[i].path = images[i0 + i];
        }
        if (fm_pipeline_run(p, in, n, res, &err) != FM_OK) {
            fprintf(stderr, "facemill predict: %s\n", fm_error_text(&err));
            rc = 1;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (res[i].error.code != FM_OK)
                rc = 1;
            fm_cmd_json_result(&j, images[i0 + i], &res[i]);
            fm_json_newline(&j);
            if (res[i].error.code == FM_OK && (draw || draw_dir) &&
                draw_result(full, images[i0 + i], &res[i], draw, draw_dir) != 0)
                rc = 1;
        }
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "facemill predict: writing to stdout failed\n");
        rc = 1;
    }
    fm_pipeline_close(&p);
    fm_decoder_destroy(&full);
    free(images);
    return rc;
}
