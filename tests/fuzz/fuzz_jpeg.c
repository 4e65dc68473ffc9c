/* fuzz_jpeg.c - libFuzzer entry for the image decoder (JPEG, PNG and WebP: the name
 * is older than the other two).
 *
 * Archives hold whatever people uploaded, so fm_decode sees hostile bytes. For any
 * input it must return FM_OK or an error: no crash, over-read, leak or hang. Inputs
 * of odd length go through a decoder with a target side, so JPEG's DCT scaling path
 * is fuzzed too; decoded pixels are read and drawn on so a wrong size or stride shows
 * up as a sanitizer report.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DFACEMILL_FUZZ=ON ...; seed corpus:
 * tests/test_image --corpus DIR, plus tests/fuzz/regress/ (inputs it found that once
 * went wrong, each checked by test_image).
 */
#include "facemill/image.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Kept for the whole run, like a worker thread keeps its decoder. */
    static fm_decoder *full, *scaled;
    if (!full) {
        fm_decode_opts o = {.max_pixels = 1u << 22, .max_bytes = 1u << 20};
        if (fm_decoder_new(&full, &o, NULL) != FM_OK)
            return 0;
        o.target_side = 48;
        if (fm_decoder_new(&scaled, &o, NULL) != FM_OK)
            return 0;
    }
    fm_decoder *d = (size & 1) ? scaled : full;
    fm_image img;
    fm_error err = {0};
    if (fm_decode(d, data, size, &img, &err) != FM_OK)
        return 0;
    unsigned sum = 0;
    for (int y = 0; y < img.h; y++)
        for (size_t x = 0; x < (size_t)img.w * 3; x++)
            sum += img.data[(size_t)y * img.stride + x];
    fm_image_draw_rect(&img, -2, -2, img.w, img.h / 2, 2, (fm_rgb){(uint8_t)sum, 0, 0});
    fm_image_draw_point(&img, img.w / 2, img.h / 2, 3, (fm_rgb){0, 255, 0});
    return 0;
}
