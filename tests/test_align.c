/* test_align.c - the similarity fit against an independent least-squares solve, the
 * warp against exact pixel moves and a naive bilinear reference, and the warp's AVX2
 * rows against its portable path (the same bytes). */
#define _GNU_SOURCE /* MAP_ANONYMOUS */
#include "facemill/align.h"
#include "facemill/nn.h"
#include "fm_test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static fm_test_rng rng = FM_TEST_RNG(12345);

/* Solves the 4-parameter linear least squares (a, b, tx, ty) by normal equations
 * and Gaussian elimination: an independent route to the same optimum. */
static void lsq_reference(const float *p, const float *q, int n, double out[4])
{
    double A[4][5] = {{0}};
    for (int i = 0; i < n; i++) {
        double rows[2][4] = {{p[2 * i], -p[2 * i + 1], 1, 0}, {p[2 * i + 1], p[2 * i], 0, 1}};
        double rhs[2] = {q[2 * i], q[2 * i + 1]};
        for (int r = 0; r < 2; r++)
            for (int j = 0; j < 4; j++) {
                for (int k = 0; k < 4; k++)
                    A[j][k] += rows[r][j] * rows[r][k];
                A[j][4] += rows[r][j] * rhs[r];
            }
    }
    for (int c = 0; c < 4; c++) {
        int piv = c;
        for (int r = c + 1; r < 4; r++)
            if (fabs(A[r][c]) > fabs(A[piv][c]))
                piv = r;
        for (int k = 0; k < 5; k++) {
            double t = A[c][k];
            A[c][k] = A[piv][k];
            A[piv][k] = t;
        }
        for (int r = 0; r < 4; r++) {
            if (r == c)
                continue;
            double f = A[r][c] / A[c][c];
            for (int k = 0; k < 5; k++)
                A[r][k] -= f * A[c][k];
        }
    }
    for (int j = 0; j < 4; j++)
        out[j] = A[j][4] / A[j][j];
}

static void test_fit(void)
{
    for (int trial = 0; trial < 200; trial++) {
        double s = fm_test_rng_range(&rng, 0.1, 5), th = fm_test_rng_range(&rng, -3.1, 3.1);
        double tx = fm_test_rng_range(&rng, -500, 500), ty = fm_test_rng_range(&rng, -500, 500);
        float p[10], q[10];
        for (int i = 0; i < 5; i++) {
            p[2 * i] = (float)fm_test_rng_range(&rng, 0, 1000);
            p[2 * i + 1] = (float)fm_test_rng_range(&rng, 0, 1000);
            double x = p[2 * i], y = p[2 * i + 1];
            q[2 * i] = (float)(s * (cos(th) * x - sin(th) * y) + tx);
            q[2 * i + 1] = (float)(s * (sin(th) * x + cos(th) * y) + ty);
        }
        float M[6];
        CHECK(fm_align_similarity(p, q, 5, M, NULL) == FM_OK);
        double err = 0;
        for (int i = 0; i < 5; i++) {
            float ox, oy;
            fm_align_apply(M, p[2 * i], p[2 * i + 1], &ox, &oy);
            err = fmax(err, fmax(fabs(ox - q[2 * i]), fabs(oy - q[2 * i + 1])));
        }
        CHECK_MSG(err < 2e-3 * (1 + s), "exact similarity recovered to %g px", err);

        /* With noise: must equal the independent least-squares optimum. */
        for (int i = 0; i < 10; i++)
            q[i] += (float)fm_test_rng_range(&rng, -20, 20);
        CHECK(fm_align_similarity(p, q, 5, M, NULL) == FM_OK);
        double ref[4];
        lsq_reference(p, q, 5, ref);
        CHECK_MSG(fabs(M[0] - ref[0]) < 1e-4 * (1 + fabs(ref[0])) &&
                      fabs(M[3] - ref[1]) < 1e-4 * (1 + fabs(ref[1])) &&
                      fabs(M[2] - ref[2]) < 2e-3 * (1 + fabs(ref[2])) &&
                      fabs(M[5] - ref[3]) < 2e-3 * (1 + fabs(ref[3])),
                  "fit (%g %g %g %g) vs reference (%g %g %g %g)", M[0], M[3], M[2], M[5],
                  ref[0], ref[1], ref[2], ref[3]);
        CHECK(M[1] == -M[3] && M[4] == M[0]); /* a similarity: no shear */

        float inv[6], x, y;
        CHECK(fm_align_invert(M, inv, NULL) == FM_OK);
        fm_align_apply(M, 123.f, 456.f, &x, &y);
        fm_align_apply(inv, x, y, &x, &y);
        CHECK(fabs(x - 123) < 1e-2 && fabs(y - 456) < 1e-2);
    }
    float same[10] = {5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, M[6];
    fm_error e = {0};
    CHECK(fm_align_similarity(same, same, 5, M, &e) == FM_ERR_INVALID);
    CHECK(strstr(e.msg, "coincide") != NULL);
    CHECK(fm_align_similarity(same, same, 1, M, &e) == FM_ERR_INVALID);
    float sing[6] = {1, 2, 0, 2, 4, 0}, inv[6];
    CHECK(fm_align_invert(sing, inv, &e) == FM_ERR_INVALID);
}

/* Naive bilinear sample with a constant border, written independently of align.c. */
static double ref_sample(const uint8_t *img, int w, int h, int ch, int c, double sx, double sy,
                         int fill)
{
    int x0 = (int)floor(sx), y0 = (int)floor(sy);
    double fx = sx - x0, fy = sy - y0, acc = 0;
    for (int dy = 0; dy < 2; dy++)
        for (int dx = 0; dx < 2; dx++) {
            int xx = x0 + dx, yy = y0 + dy;
            double v = (xx >= 0 && yy >= 0 && xx < w && yy < h) ? img[(yy * w + xx) * ch + c] : fill;
            acc += v * (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy);
        }
    return acc;
}

static void test_warp(void)
{
    enum { W = 37, H = 29, C = 3 };
    static uint8_t img[W * H * C], out[64 * 64 * C];
    for (int i = 0; i < W * H * C; i++)
        img[i] = (uint8_t)fm_test_rng_range(&rng, 0, 256);

    /* Identity reproduces the image exactly. */
    float id[6] = {1, 0, 0, 0, 1, 0};
    fm_align_warp(img, W, H, W * C, C, id, out, W, H, NULL);
    CHECK(memcmp(img, out, sizeof img) == 0);

    /* Integer translation moves pixels; outside gets the fill value. */
    float tr[6] = {1, 0, 3, 0, 1, -2};
    fm_warp_opts fill7 = {FM_BORDER_CONSTANT, 7};
    fm_align_warp(img, W, H, W * C, C, tr, out, W, H, &fill7);
    int bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < C; c++) {
                int sx = x + 3, sy = y - 2;
                int want = (sx < W && sy >= 0) ? img[(sy * W + sx) * C + c] : 7;
                bad += out[(y * W + x) * C + c] != want;
            }
    CHECK_MSG(bad == 0, "%d pixels wrong after translation", bad);

    /* Replicate border repeats edge pixels. */
    fm_warp_opts rep = {FM_BORDER_REPLICATE, 0};
    float far[6] = {1, 0, -100, 0, 1, -100};
    fm_align_warp(img, W, H, W * C, C, far, out, 4, 4, &rep);
    CHECK(out[0] == img[0] && out[1] == img[1] && out[2] == img[2]);

    /* 90-degree rotation about the centre is an exact pixel permutation. */
    float rot[6] = {0, -1, W - 1, 1, 0, 0}; /* out(x,y) <- src(W-1-y, x) */
    fm_align_warp(img, W, H, W * C, C, rot, out, H, W, NULL);
    bad = 0;
    for (int y = 0; y < W; y++)
        for (int x = 0; x < H; x++)
            for (int c = 0; c < C; c++)
                bad += out[(y * H + x) * C + c] != img[(x * W + (W - 1 - y)) * C + c];
    CHECK_MSG(bad == 0, "%d pixels wrong after rotation", bad);

    /* Random similarity transforms against the naive reference. */
    for (int trial = 0; trial < 50; trial++) {
        double s = fm_test_rng_range(&rng, 0.3, 3), th = fm_test_rng_range(&rng, -3, 3);
        float M[6] = {(float)(s * cos(th)), (float)(-s * sin(th)), 0,
                      (float)(s * sin(th)), (float)(s * cos(th)), 0};
        M[2] = (float)fm_test_rng_range(&rng, -10, 40);
        M[5] = (float)fm_test_rng_range(&rng, -10, 40);
        fm_warp_opts o = {FM_BORDER_CONSTANT, (uint8_t)fm_test_rng_range(&rng, 0, 256)};
        fm_align_warp(img, W, H, W * C, C, M, out, 64, 64, &o);
        int worst = 0;
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 64; x++) {
                double sx = (double)M[0] * x + (double)M[1] * y + M[2];
                double sy = (double)M[3] * x + (double)M[4] * y + M[5];
                for (int c = 0; c < C; c++) {
                    double r = ref_sample(img, W, H, C, c, sx, sy, o.fill);
                    int d = abs((int)out[(y * 64 + x) * C + c] - (int)lrint(r));
                    worst = d > worst ? d : worst;
                }
            }
        CHECK_MSG(worst <= 1, "warp differs from reference by %d", worst);
    }

    /* fm_align_face puts the landmarks onto the template. */
    float lm[10] = {10, 10, 25, 11, 17, 16, 12, 22, 24, 23};
    float tpl[10] = {20, 20, 44, 20, 32, 32, 22, 44, 42, 44};
    float M[6];
    CHECK(fm_align_face(img, W, H, W * C, lm, tpl, out, 64, 64, NULL, M, NULL) == FM_OK);
    float ox, oy;
    fm_align_apply(M, lm[0], lm[1], &ox, &oy);
    CHECK(fabs(ox - tpl[0]) < 3 && fabs(oy - tpl[1]) < 3);
}

/* The AVX2 rows (four output pixels at a time) and AVX-512's (eight, then the AVX2
 * rows' four) give the portable path's bytes: random images with padded rows, random
 * similarity transforms from shrinking to enlarging with every pixel or only part of
 * the output inside, both border rules, odd output widths (tails of 1-7 pixels), and
 * transforms that reach the last row and column
 * (where the four-byte gathers stop being taken). */
static void test_warp_isa(void)
{
    if (fm_nn_isa_best() < FM_NN_ISA_AVX2) {
        fprintf(stderr, "warp: no AVX2 here, the portable path only\n");
        return;
    }
    const fm_nn_isa best = fm_nn_isa_best();
    long pixels = 0, differ = 0, fast_lanes_possible = 0;
    for (int trial = 0; trial < 300; trial++) {
        int w = 2 + (int)fm_test_rng_int(&rng, 300), h = 2 + (int)fm_test_rng_int(&rng, 300);
        size_t stride = (size_t)w * 3 + (size_t)fm_test_rng_int(&rng, 3) * 5;
        uint8_t *img = malloc(stride * (size_t)h);
        int ow = 1 + (int)fm_test_rng_int(&rng, 160), oh = 1 + (int)fm_test_rng_int(&rng, 40);
        uint8_t *a = malloc((size_t)ow * oh * 3), *b = malloc((size_t)ow * oh * 3);
        if (!img || !a || !b) {
            CHECK(!"malloc");
            free(img), free(a), free(b);
            return;
        }
        for (size_t i = 0; i < stride * (size_t)h; i++)
            img[i] = (uint8_t)fm_test_rng_int(&rng, 256);
        double s = fm_test_rng_range(&rng, 0.2, 4), th = fm_test_rng_range(&rng, -3.2, 3.2);
        if (trial % 3 == 0)
            th = 0; /* axis-aligned: whole rows inside, up to the last row and column */
        float M[6] = {(float)(s * cos(th)), (float)(-s * sin(th)), 0,
                      (float)(s * sin(th)), (float)(s * cos(th)), 0};
        M[2] = (float)fm_test_rng_range(&rng, -20, w + 20);
        M[5] = (float)fm_test_rng_range(&rng, -20, h + 20);
        if (trial % 3 == 0) { /* ends exactly at the last pixel */
            M[2] = (float)(w - 1 - s * (ow - 1) - fm_test_rng_range(&rng, 0, 0.5));
            M[5] = (float)(h - 1 - s * (oh - 1) - fm_test_rng_range(&rng, 0, 0.5));
        }
        fm_warp_opts o = {trial % 2 ? FM_BORDER_REPLICATE : FM_BORDER_CONSTANT,
                          (uint8_t)fm_test_rng_int(&rng, 256)};
        fm_nn_set_isa(FM_NN_ISA_BASE);
        fm_align_warp(img, w, h, stride, 3, M, a, ow, oh, &o);
        for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) { /* every vector set */
            fm_nn_set_isa((fm_nn_isa)isa);
            fm_align_warp(img, w, h, stride, 3, M, b, ow, oh, &o);
            for (long i = 0; i < (long)ow * oh * 3; i++)
                differ += a[i] != b[i];
        }
        pixels += (long)ow * oh;
        fast_lanes_possible += ow >= 4;
        free(img), free(a), free(b);
    }
    fm_nn_set_isa(best);
    CHECK_MSG(differ == 0, "warp: %ld of %ld bytes differ between base and the sets up to %s",
              differ, pixels * 3, fm_nn_isa_name(best));
    CHECK(fast_lanes_possible > 100);
    fprintf(stderr, "warp: %ld pixels of 300 warps, base's bytes on every set up to %s\n",
            pixels, fm_nn_isa_name(best));

    /* An image whose last byte is the last of a page followed by an unreadable page:
     * a gather past the last pixel would fault. The output covers the whole image,
     * one output pixel per input pixel, so the last pixels are read. */
    long page = sysconf(_SC_PAGESIZE);
    const int w = 37, h = 29;
    size_t bytes = (size_t)w * h * 3, span = (bytes + (size_t)page - 1) / (size_t)page *
                                             (size_t)page;
    uint8_t *map = mmap(NULL, span + (size_t)page, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(map != MAP_FAILED);
    if (map == MAP_FAILED)
        return;
    CHECK(mprotect(map + span, (size_t)page, PROT_NONE) == 0);
    uint8_t *img = map + span - bytes;
    for (size_t i = 0; i < bytes; i++)
        img[i] = (uint8_t)(i * 7);
    uint8_t out[37 * 29 * 3], ref[37 * 29 * 3];
    const float shift[6] = {1, 0, 0.25f, 0, 1, 0.25f};
    fm_warp_opts o = {FM_BORDER_REPLICATE, 0};
    fm_nn_set_isa(FM_NN_ISA_BASE);
    fm_align_warp(img, w, h, (size_t)w * 3, 3, shift, ref, w, h, &o);
    for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
        fm_nn_set_isa((fm_nn_isa)isa);
        fm_align_warp(img, w, h, (size_t)w * 3, 3, shift, out, w, h, &o);
        CHECK_MSG(memcmp(out, ref, sizeof out) == 0, "warp to the last byte, %s",
                  fm_nn_isa_name((fm_nn_isa)isa));
    }
    /* coordinates far beyond int's range (their floors convert to INT_MIN): the
     * border rule, as the portable path gives it */
    const float far[6] = {1, 0, 3e12f, 0, 1, -3e12f};
    for (int b = 0; b < 2; b++) {
        fm_warp_opts ob = {b ? FM_BORDER_REPLICATE : FM_BORDER_CONSTANT, 9};
        fm_nn_set_isa(FM_NN_ISA_BASE);
        fm_align_warp(img, w, h, (size_t)w * 3, 3, far, ref, w, h, &ob);
        for (int isa = FM_NN_ISA_AVX2; isa <= (int)best; isa++) {
            fm_nn_set_isa((fm_nn_isa)isa);
            fm_align_warp(img, w, h, (size_t)w * 3, 3, far, out, w, h, &ob);
            CHECK(memcmp(out, ref, sizeof out) == 0);
        }
    }
    fm_nn_set_isa(best);
    munmap(map, span + (size_t)page);
}

int main(void)
{
    test_fit();
    test_warp();
    test_warp_isa();
    return fm_test_done("test_align");
}
