/* test_degrade.c - the controlled damages of `facemill eval --degrade` on generated
 * images: what each must do (gray: R = G = B = luma; blur of a constant is constant;
 * rotation by 0 is the identity; JPEG changes pixels, not the size; ...) and the spec
 * parser.
 *
 * `test_degrade --dump IN.jpg DIR` writes DIR/SPEC.jpg for every damage of the suite
 * applied to IN.jpg (variant 0 and, as SPEC-1.jpg, variant 1), to look at them. */
#include "fm_test.h"

#include "facemill/degrade.h"
#include "facemill/image.h"

#include <string.h>

enum { W = 64, H = 48 };

static uint8_t *px(fm_image *im, int x, int y)
{
    return im->data + (size_t)y * im->stride + (size_t)x * 3;
}

/* a textured image: smooth gradients plus a checkerboard */
static fm_image make(uint8_t *buf, int w, int h, int constant)
{
    fm_image im = {w, h, (size_t)w * 3, buf, w, h, 1, 1, 1};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = px(&im, x, y);
            if (constant) {
                p[0] = 90, p[1] = 140, p[2] = 200;
                continue;
            }
            int check = ((x / 2 + y / 2) & 1) * 60;
            p[0] = (uint8_t)(40 + 2 * x + check);
            p[1] = (uint8_t)(30 + 3 * y);
            p[2] = (uint8_t)(200 - check);
        }
    return im;
}

static fm_image apply(const char *spec, const fm_image *in, unsigned variant)
{
    fm_degrade d;
    fm_image out = {0};
    fm_error err = {0};
    CHECK_MSG(fm_degrade_parse(spec, &d) == 0, "%s", spec);
    CHECK_MSG(fm_degrade_apply(&d, in, variant, &out, &err) == FM_OK, "%s: %s", spec,
              fm_error_text(&err));
    return out;
}

static int same_pixels(fm_image *a, fm_image *b)
{
    if (a->w != b->w || a->h != b->h)
        return 0;
    for (int y = 0; y < a->h; y++)
        if (memcmp(px(a, 0, y), px(b, 0, y), (size_t)a->w * 3))
            return 0;
    return 1;
}

static double mean_abs_diff(fm_image *a, fm_image *b)
{
    double s = 0;
    for (int y = 0; y < a->h; y++)
        for (int x = 0; x < 3 * a->w; x++)
            s += abs(px(a, 0, y)[x] - px(b, 0, y)[x]);
    return s / (3.0 * a->w * a->h);
}

static void test_parse(void)
{
    fm_degrade d;
    for (int k = 0; fm_degrade_suite[k]; k++)
        CHECK_MSG(fm_degrade_parse(fm_degrade_suite[k], &d) == 0 &&
                      !strcmp(d.name, fm_degrade_suite[k]),
                  "%s", fm_degrade_suite[k]);
    CHECK(fm_degrade_parse("blur1.5", &d) == 0 && d.kind == FM_DEGRADE_BLUR && d.param == 1.5);
    CHECK(fm_degrade_parse("rot25", &d) == 0 && d.alternate && d.param == 25);
    CHECK(fm_degrade_parse("rot-25", &d) == 0 && !d.alternate && d.param == -25);
    CHECK(fm_degrade_parse("rot+25", &d) == 0 && !d.alternate && d.param == 25);
    CHECK(fm_degrade_parse("down24", &d) == 0 && d.kind == FM_DEGRADE_DOWN && d.param == 24);
    const char *bad[] = {"", "down", "down3", "down24x", "down2.5", "jpeg0", "jpeg101", "blur",
                         "blur0", "rot", "rot200", "grey", "all", "none ", "offcenter", NULL};
    for (int k = 0; bad[k]; k++)
        CHECK_MSG(fm_degrade_parse(bad[k], &d) == -1, "'%s' accepted", bad[k]);
    CHECK(fm_degrade_parse(NULL, &d) == -1);
}

static void test_damages(void)
{
    static uint8_t tex_buf[W * H * 3], flat_buf[W * H * 3];
    fm_image tex = make(tex_buf, W, H, 0), flat = make(flat_buf, W, H, 1);
    tex.scale_num = 1, tex.scale_denom = 2, tex.orig_w = 2 * W, tex.orig_h = 2 * H;

    fm_image o = apply("none", &tex, 0);
    CHECK(same_pixels(&o, &tex) && o.scale_denom == 2 && o.orig_w == 2 * W);
    free(o.data);

    o = apply("gray", &tex, 0);
    int gray_ok = 1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = px(&o, x, y), *q = px(&tex, x, y);
            double luma = 0.299 * q[0] + 0.587 * q[1] + 0.114 * q[2];
            gray_ok &= p[0] == p[1] && p[1] == p[2] && fabs(p[0] - luma) <= 0.5 + 1e-9;
        }
    CHECK(gray_ok);
    free(o.data);

    const char *keep_flat[] = {"blur1.5", "blur3", "down24", "down48", "rot25", "rot-25",
                               "rot0", NULL};
    for (int k = 0; keep_flat[k]; k++) {
        o = apply(keep_flat[k], &flat, 1);
        CHECK_MSG(same_pixels(&o, &flat), "%s changed a constant image", keep_flat[k]);
        free(o.data);
    }

    o = apply("rot0", &tex, 0);
    CHECK(same_pixels(&o, &tex));
    free(o.data);
    o = apply("rot+25", &tex, 0);
    fm_image o1 = apply("rot+25", &tex, 1), o2 = apply("rot25", &tex, 1),
             o3 = apply("rot-25", &tex, 0);
    CHECK(same_pixels(&o, &o1));   /* rot+25 turns every image the same way */
    CHECK(same_pixels(&o2, &o3));  /* rot25 turns odd variants by -25 */
    CHECK(!same_pixels(&o, &o3) && !same_pixels(&o, &tex));
    /* the centre pixel stays (the image's centre is a pixel's centre on odd sizes) */
    free(o.data), free(o1.data), free(o2.data), free(o3.data);
    static uint8_t odd_buf[31 * 31 * 3];
    fm_image odd = make(odd_buf, 31, 31, 0);
    o = apply("rot90", &odd, 0);
    /* 90 degrees: the output's (15, 5) comes from the input's (5, 15) or (25, 15) */
    CHECK(!memcmp(px(&o, 15, 15), px(&odd, 15, 15), 3));
    CHECK(!memcmp(px(&o, 15, 5), px(&odd, 5, 15), 3) ||
          !memcmp(px(&o, 15, 5), px(&odd, 25, 15), 3));
    free(o.data);

    o = apply("jpeg15", &tex, 0);
    double d = mean_abs_diff(&o, &tex);
    CHECK(o.w == W && o.h == H && o.scale_denom == 2);
    CHECK_MSG(d > 1 && d < 40, "jpeg15 moved pixels by %g on average", d);
    fm_image hi = apply("jpeg95", &tex, 0);
    CHECK(mean_abs_diff(&hi, &tex) < d); /* quality matters */
    free(o.data), free(hi.data);

    /* blur and down: the checkerboard is averaged away, the gradients stay */
    const char *smooth[] = {"blur3", "down24", NULL};
    for (int k = 0; smooth[k]; k++) {
        o = apply(smooth[k], &tex, 0);
        int a = px(&o, 30, 20)[2], b = px(&o, 32, 20)[2], c = px(&tex, 30, 20)[2],
            e = px(&tex, 32, 20)[2];
        CHECK_MSG(abs(c - e) == 60 && abs(a - b) < 15, "%s: %d %d", smooth[k], a, b);
        CHECK(o.w == W && o.h == H);
        free(o.data);
    }
    o = apply("blur1.5", &tex, 0);
    fm_image b3 = apply("blur3", &tex, 0);
    CHECK(mean_abs_diff(&o, &tex) < mean_abs_diff(&b3, &tex));
    free(o.data), free(b3.data);

    o = apply("dark", &tex, 0);
    o1 = apply("bright", &tex, 0);
    int dark_ok = 1, bright_ok = 1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < 3 * W; x++) {
            int v = px(&tex, 0, y)[x];
            dark_ok &= px(&o, 0, y)[x] < v || v == 0;
            bright_ok &= px(&o1, 0, y)[x] > v || v == 255;
        }
    CHECK(dark_ok && bright_ok);
    /* -1.5 stops of sRGB 128 (linear 0.2158 / 2.83 = 0.0763): sRGB 78 */
    uint8_t gray128[3 * 4] = {128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128, 128};
    fm_image g = {2, 2, 6, gray128, 2, 2, 1, 1, 1};
    free(o.data);
    o = apply("dark", &g, 0);
    CHECK_MSG(abs(px(&o, 0, 0)[0] - 78) <= 1, "dark 128 -> %d", px(&o, 0, 0)[0]);
    free(o.data), free(o1.data);

    o = apply("occlude", &tex, 0);
    int occl_ok = 1;
    for (int y = 0; y < H; y++) {
        int in_band = y >= 29 && y < 41; /* 0.60 * 48 = 28.8, 0.85 * 48 = 40.8 */
        for (int x = 0; x < W; x++)
            occl_ok &= in_band ? px(&o, x, y)[0] == 128 && px(&o, x, y)[2] == 128
                               : !memcmp(px(&o, x, y), px(&tex, x, y), 3);
    }
    CHECK(occl_ok);
    free(o.data);

    for (unsigned v = 0; v < 4; v++) {
        o = apply("offcentre", &flat, v);
        CHECK(o.w == 96 && o.h == 72 && o.orig_w == 96);
        free(o.data);
        o = apply("offcentre", &tex, v);
        CHECK(o.w == 96 && o.h == 72 && o.orig_w == 192 && o.orig_h == 144);
        int x0 = v & 1 ? 32 : 0, y0 = v & 2 ? 24 : 0;
        int inside = 1;
        for (int y = 0; y < H; y++)
            inside &= !memcmp(px(&o, x0, y0 + y), px(&tex, 0, y), (size_t)W * 3);
        CHECK_MSG(inside, "variant %u: the image is not in its corner", v);
        /* the opposite corner is the flat fill: one colour */
        int fx = v & 1 ? 0 : 95, fy = v & 2 ? 0 : 71, gx = v & 1 ? 5 : 90;
        CHECK(!memcmp(px(&o, fx, fy), px(&o, gx, fy), 3));
        free(o.data);
    }

    fm_degrade dd;
    fm_error err = {0};
    fm_degrade_parse("gray", &dd);
    fm_image none = {0};
    CHECK(fm_degrade_apply(&dd, &none, 0, &o, &err) == FM_ERR_INVALID && o.data == NULL);
}

static int dump(const char *in_path, const char *dir)
{
    fm_decoder *dec = NULL;
    fm_image im;
    fm_error err = {0};
    if (fm_decoder_new(&dec, NULL, &err) || fm_decode_file(dec, in_path, &im, &err)) {
        fprintf(stderr, "%s\n", fm_error_text(&err));
        return 1;
    }
    for (int k = 0; fm_degrade_suite[k]; k++)
        for (unsigned v = 0; v < 2; v++) {
            fm_image o = apply(fm_degrade_suite[k], &im, v);
            char path[4096];
            snprintf(path, sizeof path, "%s/%s%s.jpg", dir, fm_degrade_suite[k], v ? "-1" : "");
            if (fm_image_write_jpeg(&o, path, 95, &err))
                fprintf(stderr, "%s\n", fm_error_text(&err));
            free(o.data);
        }
    fm_decoder_destroy(&dec);
    return fm_test_done("test_degrade --dump");
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--dump"))
        return dump(argv[2], argv[3]);
    test_parse();
    test_damages();
    return fm_test_done("test_degrade");
}
