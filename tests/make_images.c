/* make_images.c - writes small test inputs for the service tests: N distinct JPEGs
 * (gradients with a per-image pattern, so every file has its own content hash) and,
 * with --bad, a corrupt JPEG, a truncated JPEG, a PNG signature and a text file.
 *
 *   make_images DIR N [--size S] [--bad]
 *
 * Uses TurboJPEG (tjCompress2, the TurboJPEG 2 API Debian 12 ships). Exit 0 on success. */
#include "fm_test.h"

#include <turbojpeg.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes DIR/name; 0, or -1 with a message. */
static int write_file(const char *dir, const char *name, const void *data, size_t size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return fm_test_write_file(path, data, size);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: make_images DIR N [--size S] [--bad]\n");
        return 2;
    }
    const char *dir = argv[1];
    long n = strtol(argv[2], NULL, 10);
    int size = 48, bad = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = atoi(argv[++i]);
        else if (strcmp(argv[i], "--bad") == 0)
            bad = 1;
    }
    if (n < 0 || size < 8 || size > 4096)
        return 2;
    tjhandle tj = tjInitCompress();
    unsigned char *rgb = malloc((size_t)size * size * 3);
    unsigned char *jpeg = NULL;
    unsigned long jsize = 0;
    int rc = 1;
    if (!tj || !rgb)
        goto done;
    char name[64];
    for (long k = 0; k < n; k++) {
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++) {
                unsigned char *p = rgb + 3 * ((size_t)y * size + x);
                p[0] = (unsigned char)(x * 255 / size);
                p[1] = (unsigned char)(y * 255 / size);
                p[2] = (unsigned char)((k * 37 + (x ^ y)) & 255);
            }
        /* a few pixels spell k in binary, so images never coincide */
        for (int b = 0; b < 24 && b < size; b++)
            rgb[3 * b] = (k >> b) & 1 ? 255 : 0;
        if (tjCompress2(tj, rgb, size, 0, size, TJPF_RGB, &jpeg, &jsize, TJSAMP_420, 85, 0) != 0) {
            fprintf(stderr, "make_images: %s\n", tjGetErrorStr2(tj));
            goto done;
        }
        snprintf(name, sizeof name, "img%06ld.jpg", k);
        if (write_file(dir, name, jpeg, jsize) != 0)
            goto done;
    }
    if (bad) {
        if (!jpeg && tjCompress2(tj, rgb, size, 0, size, TJPF_RGB, &jpeg, &jsize, TJSAMP_420,
                                 85, 0) != 0)
            goto done;
        unsigned char *c = malloc(jsize);
        if (!c)
            goto done;
        memcpy(c, jpeg, jsize);
        for (unsigned long i = jsize / 3; i < jsize - 2; i += 7)
            c[i] = 0xff; /* markers everywhere inside the entropy-coded data */
        memset(c + 2, 0, 16); /* and a broken header segment */
        int w = write_file(dir, "bad_corrupt.jpg", c, jsize) || 
                write_file(dir, "bad_truncated.jpg", jpeg, jsize / 3);
        free(c);
        static const unsigned char png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n',
                                            0, 0, 0, 13, 'I', 'H', 'D', 'R'};
        if (w || write_file(dir, "bad_format.png", png, sizeof png) ||
            write_file(dir, "bad_text.jpg", "this is not an image\n", 21))
            goto done;
    }
    rc = 0;
done:
    tjFree(jpeg);
    free(rgb);
    if (tj)
        tjDestroy(tj);
    return rc;
}
