/* fm_test_heif.c - see fm_test_heif.h. */
#include "fm_test_heif.h"

#include <libheif/heif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* x265, the HEVC encoder these tests encode with, keeps one allocation of its own
 * (1,168 bytes) past the encoder's release and libheif's deinit, and LeakSanitizer
 * reports it at exit in every program that encoded a HEIC. It is the encoder's, which
 * the product never runs; the programs linked with this file leave it out. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libx265.so\n";
}

typedef struct sink {
    uint8_t *p;
    size_t n;
    int failed;
} sink;

static struct heif_error write_sink(struct heif_context *ctx, const void *data, size_t size,
                                    void *userdata)
{
    (void)ctx;
    sink *s = userdata;
    uint8_t *p = realloc(s->p, s->n + size);
    if (!p) {
        s->failed = 1;
        return (struct heif_error){heif_error_Memory_allocation_error,
                                   heif_suberror_Unspecified, "out of memory"};
    }
    memcpy(p + s->n, data, size);
    s->p = p;
    s->n += size;
    return (struct heif_error){heif_error_Ok, heif_suberror_Unspecified, "ok"};
}

/* fm_test_heif_encode with ch channels (3: RGB, 4: RGBA). */
static int encode(const uint8_t *px, int ch, int w, int h, int av1, int quality, uint8_t **out,
                  size_t *n)
{
    struct heif_image *im = NULL;
    struct heif_context *c = heif_context_alloc();
    struct heif_encoder *enc = NULL;
    sink s = {NULL, 0, 0};
    struct heif_error e = heif_image_create(
        w, h, heif_colorspace_RGB,
        ch == 4 ? heif_chroma_interleaved_RGBA : heif_chroma_interleaved_RGB, &im);
    if (!e.code)
        e = heif_image_add_plane(im, heif_channel_interleaved, w, h, 8);
    if (!e.code) {
        int stride;
        uint8_t *p = heif_image_get_plane(im, heif_channel_interleaved, &stride);
        for (int y = 0; y < h; y++)
            memcpy(p + (size_t)y * (size_t)stride, px + (size_t)y * (size_t)w * (size_t)ch,
                   (size_t)w * (size_t)ch);
        e = heif_context_get_encoder_for_format(
            c, av1 ? heif_compression_AV1 : heif_compression_HEVC, &enc);
    }
    if (!e.code)
        e = heif_encoder_set_lossy_quality(enc, quality);
    if (!e.code)
        e = heif_context_encode_image(c, im, enc, NULL, NULL);
    struct heif_writer wr = {1, write_sink};
    if (!e.code)
        e = heif_context_write(c, &wr, &s);
    if (enc)
        heif_encoder_release(enc);
    heif_image_release(im);
    heif_context_free(c);
    if (e.code || s.failed) {
        fprintf(stderr, "libheif encode (%s): %s\n", av1 ? "AV1" : "HEVC", e.message);
        free(s.p);
        return -1;
    }
    *out = s.p;
    *n = s.n;
    return 0;
}

int fm_test_heif_encode(const uint8_t *rgb, int w, int h, int av1, int quality,
                        uint8_t **out, size_t *n)
{
    return encode(rgb, 3, w, h, av1, quality, out, n);
}

int fm_test_heif_encode_rgba(const uint8_t *rgba, int w, int h, int quality, uint8_t **out,
                             size_t *n)
{
    return encode(rgba, 4, w, h, 0, quality, out, n);
}

static uint64_t rd_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static void wr_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* The box of type t among the boxes in [p, end) (32-bit sizes), or NULL. */
static const uint8_t *find_box(const uint8_t *p, const uint8_t *end, const char *t)
{
    while (p && end - p >= 8) {
        uint64_t n = rd_be(p, 4);
        if (n < 8 || n > (uint64_t)(end - p))
            return NULL;
        if (memcmp(p + 4, t, 4) == 0)
            return p;
        p += n;
    }
    return NULL;
}

/* As ISO/IEC 23008-12 lays it out: the irot box appended to ipco, its 1-based index
 * associated (essential) with the primary item in ipma, the sizes of ipco, ipma, iprp
 * and meta grown, and the iloc offsets into the mdat after meta moved by the bytes
 * added. */
int fm_test_heif_add_irot(const uint8_t *f, size_t n, int angle, uint8_t **out,
                          size_t *outn)
{
    const uint8_t *end = f + n;
    const uint8_t *meta = find_box(f, end, "meta");
    const uint8_t *mend = meta ? meta + rd_be(meta, 4) : NULL;
    const uint8_t *iprp = meta ? find_box(meta + 12, mend, "iprp") : NULL;
    const uint8_t *ipco = iprp ? find_box(iprp + 8, iprp + rd_be(iprp, 4), "ipco") : NULL;
    const uint8_t *ipma = iprp ? find_box(iprp + 8, iprp + rd_be(iprp, 4), "ipma") : NULL;
    const uint8_t *pitm = meta ? find_box(meta + 12, mend, "pitm") : NULL;
    const uint8_t *iloc = meta ? find_box(meta + 12, mend, "iloc") : NULL;
    const uint8_t *mdat = find_box(f, end, "mdat");
    if (!ipco || !ipma || !pitm || !iloc || pitm[8] != 0 || !mdat || mdat < meta) {
        fprintf(stderr, "fm_test_heif_add_irot: not the layout libheif writes\n");
        return -1;
    }
    const uint64_t primary = rd_be(pitm + 12, 2);
    int nprops = 0;
    const uint8_t *ipco_end = ipco + rd_be(ipco, 4);
    for (const uint8_t *q = ipco + 8; q < ipco_end; q += rd_be(q, 4))
        nprops++;
    const int wide = ipma[11] & 1, long_ids = ipma[8] >= 1;
    const size_t add_prop = 9, add_assoc = wide ? 2 : 1, add = add_prop + add_assoc;

    /* the primary item's entry in ipma: its count byte and the end of its list */
    const uint8_t *q = ipma + 12, *ipma_end = ipma + rd_be(ipma, 4);
    const uint64_t entries = rd_be(q, 4);
    q += 4;
    const uint8_t *assoc_at = NULL, *count_at = NULL;
    for (uint64_t i = 0; i < entries && q < ipma_end; i++) {
        const uint64_t id = rd_be(q, long_ids ? 4 : 2);
        q += long_ids ? 4 : 2;
        const uint8_t *cnt = q++;
        q += (size_t)*cnt * (wide ? 2 : 1);
        if (id == primary) {
            count_at = cnt;
            assoc_at = q;
        }
    }
    if (!assoc_at || ipco_end > ipma) {
        fprintf(stderr, "fm_test_heif_add_irot: no ipma entry for the primary item\n");
        return -1;
    }
    uint8_t *b = malloc(n + add);
    if (!b)
        return -1;
    const size_t cut1 = (size_t)(ipco_end - f), cut2 = (size_t)(assoc_at - f);
    const uint8_t irot[9] = {0, 0, 0, 9, 'i', 'r', 'o', 't', (uint8_t)(angle & 3)};
    size_t o = 0;
    memcpy(b, f, cut1);
    o += cut1;
    memcpy(b + o, irot, add_prop);
    o += add_prop;
    memcpy(b + o, f + cut1, cut2 - cut1);
    o += cut2 - cut1;
    const int index = nprops + 1;
    if (wide) {
        b[o++] = (uint8_t)(0x80 | (index >> 8));
        b[o++] = (uint8_t)index;
    } else {
        b[o++] = (uint8_t)(0x80 | index);
    }
    memcpy(b + o, f + cut2, n - cut2);
    /* positions in the copy of the boxes that grew */
#define AT(x) (b + ((x) - f) + ((x) >= ipco_end ? add_prop : 0))
    wr_be(AT(meta), rd_be(meta, 4) + add, 4);
    wr_be(AT(iprp), rd_be(iprp, 4) + add, 4);
    wr_be(AT(ipco), rd_be(ipco, 4) + add_prop, 4);
    wr_be(AT(ipma), rd_be(ipma, 4) + add_assoc, 4);
    (*AT(count_at))++;
    uint8_t *l = AT(iloc);
#undef AT
    /* iloc: the data in the mdat after meta moves by add */
    const int v = l[8];
    const int off_sz = l[12] >> 4, len_sz = l[12] & 15, base_sz = l[13] >> 4;
    const int idx_sz = v >= 1 ? (l[13] & 15) : 0;
    uint8_t *r = l + 14;
    const uint64_t items = rd_be(r, v < 2 ? 2 : 4);
    r += v < 2 ? 2 : 4;
    for (uint64_t i = 0; i < items; i++) {
        r += v < 2 ? 2 : 4; /* item id */
        int method = 0;
        if (v >= 1) {
            method = r[1] & 15;
            r += 2;
        }
        r += 2; /* data reference index */
        uint8_t *base = r;
        r += base_sz;
        const uint64_t extents = rd_be(r, 2);
        r += 2;
        for (uint64_t k = 0; k < extents; k++) {
            r += idx_sz;
            if (method == 0 && base_sz == 0)
                wr_be(r, rd_be(r, off_sz) + add, off_sz);
            r += off_sz + len_sz;
        }
        if (method == 0 && base_sz > 0)
            wr_be(base, rd_be(base, base_sz) + add, base_sz);
    }
    *out = b;
    *outn = n + add;
    return 0;
}
