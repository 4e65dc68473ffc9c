/* embed_tool.c - facemill-embed-tool: the C half of the backbone reference check
 * (tests/reference/check_dlib_resnet.py).
 *
 * Why it exists: the check feeds the same fixed-size RGB faces to facemill's backbone
 * and to the original library, then compares the embeddings. This program makes those
 * inputs from photos with facemill's own decoder and warp, and runs the backbone on
 * them. Raw files are used both ways so nothing but pixels crosses between the two
 * implementations.
 *
 *   facemill-embed-tool crops SIZE OUTDIR PHOTO.jpg...
 *       for every photo: a centre square of the short side and a centre square of
 *       half of it, each resized to SIZE x SIZE (bilinear, pixel-centre aligned);
 *       writes OUTDIR/NAME-full.rgb and OUTDIR/NAME-half.rgb (SIZE*SIZE*3 bytes, RGB)
 *       and prints their paths
 *   facemill-embed-tool embed MODEL.fmm OUT.f32 FACE.rgb...
 *       runs all faces through the backbone in one batch and writes n x dim float32
 *       (little-endian host order) of the "embedding" output to OUT.f32, then
 *       "pooled" to OUT.f32.pooled
 * Exit status 0 on success, 1 on error (message on stderr), 2 on bad usage.
 */
#include "facemill/align.h"
#include "facemill/backbone.h"
#include "facemill/image.h"
#include "fm_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void)
{
    fprintf(stderr, "usage: facemill-embed-tool crops SIZE OUTDIR PHOTO.jpg...\n"
                    "       facemill-embed-tool embed MODEL.fmm OUT.f32 FACE.rgb...\n");
    return 2;
}

/* Writes a square of side `side` centred in img, resized to size x size, to path. */
static int write_crop(const fm_image *img, int side, int size, const char *path, uint8_t *buf)
{
    const float s = (float)side / (float)size;
    const float x0 = ((float)img->w - (float)side) / 2.0f;
    const float y0 = ((float)img->h - (float)side) / 2.0f;
    /* output pixel centre (x + 0.5) * s lands at source x0 + (x + 0.5) * s - 0.5 */
    const float m_inv[6] = {s, 0.0f, x0 + 0.5f * s - 0.5f, 0.0f, s, y0 + 0.5f * s - 0.5f};
    const fm_warp_opts opts = {FM_BORDER_REPLICATE, 0};
    fm_align_warp(img->data, img->w, img->h, img->stride, 3, m_inv, buf, size, size, &opts);
    if (fm_test_write_file(path, buf, (size_t)size * size * 3) != 0)
        return 1;
    printf("%s\n", path);
    return 0;
}

static int cmd_crops(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const int size = atoi(argv[0]);
    if (size < 1 || size > 4096)
        return usage();
    const char *outdir = argv[1];
    fm_error err = {0};
    fm_decoder *d = NULL;
    uint8_t *buf = malloc((size_t)size * size * 3);
    int rc = 1;
    if (!buf || fm_decoder_new(&d, NULL, &err)) {
        fprintf(stderr, "facemill-embed-tool: %s\n", buf ? fm_error_text(&err) : "out of memory");
        goto done;
    }
    for (int i = 2; i < argc; i++) {
        fm_image img;
        if (fm_decode_file(d, argv[i], &img, &err)) {
            fprintf(stderr, "facemill-embed-tool: %s\n", fm_error_text(&err));
            goto done;
        }
        const char *base = strrchr(argv[i], '/');
        base = base ? base + 1 : argv[i];
        const size_t stem = strcspn(base, ".");
        const int side = img.w < img.h ? img.w : img.h;
        char path[4096];
        snprintf(path, sizeof path, "%s/%.*s-full.rgb", outdir, (int)stem, base);
        if (write_crop(&img, side, size, path, buf))
            goto done;
        snprintf(path, sizeof path, "%s/%.*s-half.rgb", outdir, (int)stem, base);
        if (write_crop(&img, side / 2, size, path, buf))
            goto done;
    }
    rc = 0;
done:
    fm_decoder_destroy(&d);
    free(buf);
    return rc;
}

static int cmd_embed(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *model = argv[0], *out_path = argv[1];
    const int n = argc - 2;
    fm_error err = {0};
    fm_backbone *b = NULL;
    uint8_t *pixels = NULL;
    const uint8_t **faces = NULL;
    float *outs[FM_BACKBONE_OUTPUT_COUNT] = {NULL};
    int rc = 1, h, w;

    if (fm_backbone_open(&b, model, n, &err)) {
        fprintf(stderr, "facemill-embed-tool: %s\n", fm_error_text(&err));
        goto done;
    }
    fm_backbone_input_size(b, &h, &w);
    const size_t face_bytes = (size_t)h * w * 3;
    pixels = malloc(face_bytes * n);
    faces = malloc(sizeof *faces * n);
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        outs[k] = malloc(sizeof(float) * (size_t)n * fm_backbone_dim(b, k));
    if (!pixels || !faces || !outs[0] || !outs[1]) {
        fprintf(stderr, "facemill-embed-tool: out of memory\n");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        size_t got = 0;
        uint8_t *face = fm_test_read_file(argv[2 + i], &got);
        faces[i] = pixels + face_bytes * i;
        if (face && got == face_bytes)
            memcpy(pixels + face_bytes * i, face, face_bytes);
        free(face);
        if (got != face_bytes) {
            fprintf(stderr, "facemill-embed-tool: %s: expected %zu bytes (%dx%d RGB)\n",
                    argv[2 + i], face_bytes, w, h);
            goto done;
        }
    }
    if (fm_backbone_forward(b, faces, n, outs, &err)) {
        fprintf(stderr, "facemill-embed-tool: %s\n", fm_error_text(&err));
        goto done;
    }
    char pooled_path[4096];
    snprintf(pooled_path, sizeof pooled_path, "%s.pooled", out_path);
    if (fm_test_write_file(out_path, outs[FM_BACKBONE_EMBEDDING],
                           sizeof(float) * n * fm_backbone_dim(b, FM_BACKBONE_EMBEDDING)) ||
        fm_test_write_file(pooled_path, outs[FM_BACKBONE_POOLED],
                           sizeof(float) * n * fm_backbone_dim(b, FM_BACKBONE_POOLED)))
        goto done;
    rc = 0;
done:
    for (int k = 0; k < FM_BACKBONE_OUTPUT_COUNT; k++)
        free(outs[k]);
    free(faces);
    free(pixels);
    fm_backbone_close(&b);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "crops") == 0)
        return cmd_crops(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "embed") == 0)
        return cmd_embed(argc - 2, argv + 2);
    return usage();
}
