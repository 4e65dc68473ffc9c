/* cmd_predict.c - `facemill predict IMAGE...`: the whole labelling pipeline on image
 * files, one JSON line per image with every face's box, landmarks and attributes.
 *
 * It is the local, single-process form of what a worker does; a bad image gets an
 * error record and the exit code becomes 1 at the end, the others go on.
 */
#include "cli_opts.h"
#include "cmd_blas.h"
#include "cmd_draw.h"
#include "cmd_util.h"
#include "commands.h"
#include "facemill/align.h"
#include "facemill/backbone.h"
#include "facemill/config.h"
#include "facemill/json.h"
#include "facemill/nn.h"
#include "facemill/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 16 /* images per pipeline call */

static const cli_cmd cmd = {
    "predict", "[options] IMAGE...", 1, -1,
    "Finds the faces in each IMAGE (JPEG, PNG, WebP, HEIC, AVIF or TIFF) and labels\n"
    "them with age, gender and ethnicity. Prints one JSON object per image and\n"
    "line, in the result schema that `facemill detect` and `facemill export` print\n"
    "too (proto/RESULTS.md):\n"
    "  {\"schema\": 2, \"source\", \"width\", \"height\", \"error\": null,\n"
    "   \"times_ms\": {\"decode\", \"detect\", \"align\", \"embed\", \"heads\"},\n"
    "   \"faces\": [{\"box\": {\"x1\", \"y1\", \"x2\", \"y2\"}, \"score\",\n"
    "   \"landmarks\": {\"left_eye\": {\"x\", \"y\"}, \"right_eye\", \"nose\",\n"
    "   \"mouth_left\", \"mouth_right\"}, \"age\", \"age_std\", \"gender\",\n"
    "   \"gender_probs\": {\"male\", \"female\"}, \"race\", \"race_probs\": {\"White\",\n"
    "   \"Black\", \"Asian\", \"Indian\", \"Others\"}}]}\n"
    "An image that failed has \"error\": {\"code\", \"name\", \"text\"} and no faces.\n"
    "age is the expected value of the predicted age distribution, age_std its\n"
    "standard deviation. gender (race) is null, its probabilities still given,\n"
    "when the most probable class is below heads.gender_min_prob or\n"
    "heads.race_min_prob (both 0 by default: never). Coordinates as in `facemill\n"
    "detect`. Settings: detect.*, decode.*, embed.*, heads.*, models.dir,\n"
    "engine.threads. With heads.model empty, faces carry no attributes (no age,\n"
    "gender or race keys).\n",
    "exit status: 0 every image processed, 1 any failed, 2 usage error", NULL};

/* --draw / --draw-dir for one labelled image; 0, or -1 after a message. */
static int draw_result(fm_decoder *full, const char *path, const fm_image_result *r,
                       const fm_config *c, const char *draw, const char *draw_dir)
{
    char out[4096];
    fm_error e = {0};
    if ((draw_dir && fm_cmd_draw_path(out, sizeof out, draw_dir, path, &e) != FM_OK) ||
        fm_cmd_draw_labels(full, path, r, c->heads.gender_min_prob, c->heads.race_min_prob,
                           draw ? draw : out, &e) != FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&e));
        return -1;
    }
    return 0;
}

/* --chips-dir for one labelled image: each face aligned as the backbone sees it, cut
 * from the image at its full size, as DIR/<file name>.face<N>.jpg (N from 1, in the
 * order of the results). 0, or -1 after a message. */
static int write_chips(fm_decoder *full, const char *path, const fm_image_result *r,
                       const fm_backbone *bb, const char *dir)
{
    if (r->n_faces == 0)
        return 0;
    int h = 0, w = 0;
    fm_backbone_input_size(bb, &h, &w);
    char base[4096], out[4200];
    fm_error e = {0};
    fm_image img;
    uint8_t *px = malloc((size_t)w * (size_t)h * 3);
    fm_status st = px ? fm_cmd_draw_path(base, sizeof base, dir, path, &e)
                      : fm_error_set(&e, FM_ERR_NOMEM, "--chips-dir: out of memory");
    if (st == FM_OK)
        st = fm_decode_file(full, path, &img, &e);
    for (int j = 0; st == FM_OK && j < r->n_faces; j++) {
        fm_warp_opts wo = {FM_BORDER_REPLICATE, 0};
        fm_image chip = {0};
        chip.data = px;
        chip.w = chip.orig_w = w;
        chip.h = chip.orig_h = h;
        chip.stride = 3 * (size_t)w;
        chip.scale_num = chip.scale_denom = 1;
        int len = snprintf(out, sizeof out, "%s.face%d.jpg", base, j + 1);
        if (len < 0 || (size_t)len >= sizeof out)
            st = fm_error_set(&e, FM_ERR_INVALID, "%s: output path too long", path);
        else if ((st = fm_align_face(img.data, img.w, img.h, img.stride,
                                     r->faces[j].det.landmarks, fm_backbone_template(bb), px,
                                     w, h, &wo, NULL, &e)) == FM_OK)
            st = fm_image_write_jpeg(&chip, out, 95, &e);
    }
    free(px);
    if (st != FM_OK) {
        cli_fail(&cmd, "%s", fm_error_text(&e));
        return -1;
    }
    return 0;
}

int fm_cmd_predict(int argc, char **argv)
{
    const char *draw = NULL, *draw_dir = NULL, *chips_dir = NULL;
    const cli_opt opts[] = {
        CLI_PATH("--draw", 0, "OUT.jpg", &draw,
                 "write the (single) image at its full size with each face's box and "
                 "labels (age +/- spread, gender and ethnicity with their probabilities), "
                 "the text scaled with the image"),
        CLI_PATH("--draw-dir", 0, "DIR", &draw_dir,
                 "the same for each image, as DIR/<file name> (DIR is created when "
                 "missing; equal file names overwrite each other)"),
        CLI_PATH("--chips-dir", 0, "DIR", &chips_dir,
                 "write each face aligned as the backbone sees it (cut from the image at "
                 "its full size) as DIR/<file name>.face<N>.jpg (equal file names "
                 "overwrite each other); label such chips again without detection with "
                 "--set detect.mode=aligned"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (rc >= 0)
        return rc;
    rc = CLI_EXIT_OK;
    char **images = a.operands;
    int n_images = a.n;
    fm_error err = {0};
    if (draw && draw_dir)
        return cli_usage_error(&cmd, "--draw and --draw-dir exclude each other");
    if (draw && n_images != 1)
        return cli_usage_error(&cmd, "--draw takes exactly one image (use --draw-dir)");
    /* the pipeline has a backbone exactly when it loads heads: said before anything is
     * logged or created */
    if (chips_dir && !c.heads.model[0])
        return cli_usage_error(&cmd, "--chips-dir aligns faces for the backbone: "
                                     "heads.model must not be empty");
    if (fm_cmd_blas_apply(cmd.name, &c) != 0)
        return CLI_EXIT_FAILURE;
    fm_pipeline *p = NULL;
    fm_decoder *full = NULL; /* --draw: the originals at full size */
    fm_decode_opts fo = {(uint64_t)c.decode.max_pixels, (size_t)c.decode.max_bytes, 0,
                         (unsigned)c.decode.formats};
    fm_pipeline_opts po = {BATCH, 0, 0};
    if ((draw_dir && fm_cmd_make_dirs(draw_dir, &err) != FM_OK) ||
        (chips_dir && fm_cmd_make_dirs(chips_dir, &err) != FM_OK) ||
        fm_nn_set_threads((int)c.engine.threads, &err) != FM_OK ||
        fm_pipeline_open(&p, &c, &po, &err) != FM_OK ||
        ((draw || draw_dir || chips_dir) && fm_decoder_new(&full, &fo, &err) != FM_OK)) {
        fm_pipeline_close(&p);
        return cli_fail(&cmd, "%s", fm_error_text(&err));
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
            rc = cli_fail(&cmd, "%s", fm_error_text(&err));
            break;
        }
        for (int i = 0; i < n; i++) {
            if (res[i].error.code != FM_OK)
                rc = CLI_EXIT_FAILURE;
            fm_cmd_json_result(&j, images[i0 + i], &res[i], &c);
            fm_json_newline(&j);
            if (res[i].error.code == FM_OK && (draw || draw_dir) &&
                draw_result(full, images[i0 + i], &res[i], &c, draw, draw_dir) != 0)
                rc = CLI_EXIT_FAILURE;
            if (res[i].error.code == FM_OK && chips_dir &&
                write_chips(full, images[i0 + i], &res[i], fm_pipeline_backbone(p),
                            chips_dir) != 0)
                rc = CLI_EXIT_FAILURE;
        }
    }
    if (fflush(stdout) != 0)
        rc = cli_fail(&cmd, "writing to stdout failed");
    fm_pipeline_close(&p);
    fm_decoder_destroy(&full);
    return rc;
}
