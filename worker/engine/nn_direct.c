/* nn_direct.c - the engine's own vector kernels and their run-time dispatch: a direct
 * convolution (stride 1, no padding, one group) with bias and PReLU applied as each
 * output is stored, vectorised PReLU and 2x2 / 3x3 stride-2 max pooling.
 *
 * MTCNN's layers have few channels (3 to 64) and, in P-Net, very wide images: as im2col
 * + sgemm they are small-M multiplies that spend most of their time copying (im2col,
 * packing, zeroing) and in separate passes for bias and PReLU. The direct kernel reads
 * the input rows in place: a tile of 4 output channels x 16 output columns (8 AVX2
 * accumulators; 12 made GCC spill) sums over every input channel and tap, then adds
 * the bias, applies PReLU and stores once. Small planes (R-Net's and O-Net's crops)
 * run as one flat run of outputs as wide as the input, so rows of 9 or 22 outputs do
 * not each leave a partial tile. Measured with facemill-bench-ops, it beats im2col +
 * sgemm on P-Net's three layers and on R-Net's and O-Net's layers except the last
 * convolution of each (3x3 outputs, fewer than a tile: 1.1-2.6x). Small planes with
 * enough output channels run in position tiles instead (positions x channels, below:
 * faster, and the same bits).
 *
 * Dispatch: the AVX2+FMA variants are compiled with a target attribute and chosen when
 * the CPU has both (fm_nn_isa_best); otherwise, or after fm_nn_set_isa(FM_NN_ISA_BASE),
 * the callers use their portable paths. */
#include "nn_impl.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define NN_HAVE_AVX2 1
#include <immintrin.h>
#else
#define NN_HAVE_AVX2 0
#endif

/* ---- dispatch ------------------------------------------------------------------ */

static int isa_cap = -1; /* FM_NN_ISA_* the caller allows; -1: not set (the best) */

fm_nn_isa fm_nn_isa_best(void)
{
#if NN_HAVE_AVX2
    /* Reads what libgcc found at start-up: cheap, and nothing to cache or race on. */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? FM_NN_ISA_AVX2
                                                                            : FM_NN_ISA_BASE;
#else
    return FM_NN_ISA_BASE;
#endif
}

fm_nn_isa fm_nn_set_isa(fm_nn_isa isa)
{
    isa_cap = isa;
    return fm_nn_isa_now();
}

fm_nn_isa fm_nn_isa_now(void)
{
    fm_nn_isa best = fm_nn_isa_best();
    if (isa_cap < 0 || isa_cap > (int)best)
        return best;
    return (fm_nn_isa)isa_cap;
}

const char *fm_nn_isa_name(fm_nn_isa isa)
{
    return isa == FM_NN_ISA_AVX2 ? "avx2+fma" : "base";
}

/* ---- direct convolution -------------------------------------------------------- */

#ifndef DC_OC
#define DC_OC 4  /* output channels per tile */
#endif
#ifndef DC_NV
#define DC_NV 2  /* vectors of 8 output columns per tile */
#endif
#define DC_COLS (8 * DC_NV)
#define PT_OC 16 /* output channels per position tile (below) */
/* Tuning (facemill-bench-ops): row by row, outputs narrower than DC_MIN_OW columns or
 * with more than DC_MAX_K multiply-adds each go to im2col + sgemm (R-Net conv2, 9
 * columns, and O-Net conv2, K 288, were slower direct row by row; flat, they are
 * faster: R-Net conv2 2.8 to 2.1 ms, O-Net conv2 4.2 to 3.5, conv3 1.5 to 1.1). */
#ifndef DC_MIN_OW
#define DC_MIN_OW 16
#endif
#ifndef DC_MAX_K
#define DC_MAX_K 160
#endif
/* Planes of at most DC_FLAT_FLOATS output floats (all channels, as wide as the input)
 * run flat, when each output has at most DC_FLAT_MAX_K multiply-adds. */
#ifndef DC_FLAT_FLOATS
#define DC_FLAT_FLOATS 65536
#endif
#ifndef DC_FLAT_MAX_K
#define DC_FLAT_MAX_K 600
#endif

/* 1 when g's output planes are small enough to run flat (dc_image). */
static int dc_flat(const conv_geom *g)
{
    size_t oc4 = ((size_t)g->co + DC_OC - 1) / DC_OC * DC_OC;
    return oc4 * (size_t)g->oh * (size_t)g->w <= DC_FLAT_FLOATS &&
           (g->oh - 1) * g->w + g->ow >= DC_COLS && g->k <= DC_FLAT_MAX_K;
}

/* Small planes run in position tiles (1, the default) or as flat runs (0). */
static int pt_on = 1;

int fm_nn_set_position_tiles(int on)
{
    int was = pt_on;
    pt_on = on != 0;
    return was;
}

/* 1 when g runs in position tiles: small output planes (at most PT_MAX_PLANE outputs
 * per channel) with at least 16 output channels and PT_MIN_K multiply-adds per
 * output (with fewer, the scattered stores of the outputs cost more than the lanes
 * saved: R-Net's and O-Net's first layers, K 27, are faster in 16-column tiles).
 * Tuned with facemill-bench-ops. */
#ifndef PT_MAX_PLANE
#define PT_MAX_PLANE 2500
#endif
#ifndef PT_MIN_K
#define PT_MIN_K 64
#endif
static int pt_fits(const conv_geom *g)
{
    return pt_on && g->co >= PT_OC && g->p <= PT_MAX_PLANE && g->k >= PT_MIN_K;
}

/* See nn_impl.h. */
int nn_direct_fits(const conv_geom *g)
{
    if (fm_nn_isa_now() < FM_NN_ISA_AVX2)
        return 0;
    if (g->groups != 1 || g->sh != 1 || g->sw != 1 || g->pt != 0 || g->pl != 0)
        return 0;
    if (g->oh != g->h - g->kh + 1 || g->ow != g->w - g->kw + 1)
        return 0; /* bottom or right padding */
    /* Narrow outputs waste most of a tile; large K multiplies well through sgemm.
     * R-Net's and O-Net's last convolutions (3x3 outputs) would run twice as fast in
     * position tiles (0.4 and 0.6 of sgemm as im2col + sgemm, 0.9 in position tiles),
     * but the change of rounding moves the sample photos' attributes by up to 1e-3
     * relative through the boxes and landmarks, beyond tests/golden's 1e-4: they stay
     * with sgemm, and this choice keeps every result the same bits. */
    return dc_flat(g) || (g->ow >= DC_MIN_OW && g->k <= DC_MAX_K);
}

/* See nn_impl.h. */
size_t nn_direct_scratch(const conv_geom *g)
{
    size_t oc4 = ((size_t)g->co + DC_OC - 1) / DC_OC * DC_OC;
    /* The flat buffer's largest size is counted for planes too large to run flat, and
     * the position tiles' needs whichever kernel runs g, so that an arena measured on
     * a large plane (MTCNN's detector measures P-Net on its widest level) also holds
     * what the smaller planes of the same layer take. */
    size_t flat = dc_flat(g) ? oc4 * (size_t)g->oh * (size_t)g->w : DC_FLAT_FLOATS;
    size_t tiles = oc4 * ((size_t)g->k + 2) + flat;
    /* position tiles: packed weights, bias, slope, tap offsets */
    size_t oc16 = ((size_t)g->co + PT_OC - 1) / PT_OC * PT_OC;
    size_t pos = oc16 * ((size_t)g->k + 2) + (size_t)g->k;
    return pos > tiles ? pos : tiles;
}

#if NN_HAVE_AVX2
#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE_AVX2 static inline __attribute__((always_inline, target("avx2,fma")))

/* Under AddressSanitizer every vector load and store of the direct convolution is
 * checked, which made it ten times slower and MTCNN's share of a sanitized test run
 * 90% (test_detect: 49 s against 5). Its loops (dc_*) are left uninstrumented there;
 * instead nn_conv_direct checks, before each image, that the whole regions they may
 * touch are addressable: the image's input, the packed weights, bias and slope, the
 * output. Within those regions test_nn checks every output against the reference, at
 * tails, edges and odd shapes. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#define DC_ASAN_OFF __attribute__((no_sanitize_address))
static void dc_addressable(const void *p, size_t bytes, const char *what)
{
    void *bad = __asan_region_is_poisoned((void *)(uintptr_t)p, bytes);
    if (bad) {
        fprintf(stderr, "nn_conv_direct: %s [%p, +%zu) is not addressable at %p\n", what, p,
                bytes, bad);
        __asan_describe_address(bad);
        abort();
    }
}
#else
#define DC_ASAN_OFF
#define dc_addressable(p, bytes, what) ((void)0)
#endif
#define DC_INLINE INLINE_AVX2 DC_ASAN_OFF

/* One tile: output channels oc..oc+3 (nco of them stored) at row oy, columns
 * ox..ox+15 (the first rem stored; tail: masked loads and stores). xp points at input
 * channel 0, row oy, column ox; wp at the tile's packed weights [k][4]. */
DC_INLINE void dc_tile(const float *restrict xp, size_t plane, int w, int c, const int kh,
                         const int kw, const float *restrict wp, const float *restrict b4,
                         const float *restrict s4, int prelu, float *restrict yp,
                         size_t oplane, int nco, const int tail, int rem)
{
    __m256 acc[DC_OC][DC_NV];
    for (int r = 0; r < DC_OC; r++)
        for (int v = 0; v < DC_NV; v++)
            acc[r][v] = _mm256_setzero_ps();
    __m256i m[DC_NV];
    if (tail) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (int v = 0; v < DC_NV; v++)
            m[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem - 8 * v), lane);
    }
    const float *wk = wp;
    for (int ci = 0; ci < c; ci++) {
        const float *xc = xp + (size_t)ci * plane;
        for (int ky = 0; ky < kh; ky++) {
            const float *xr = xc + (size_t)ky * (size_t)w;
            for (int kx = 0; kx < kw; kx++, wk += DC_OC) {
                __m256 xv[DC_NV];
                for (int v = 0; v < DC_NV; v++)
                    xv[v] = tail ? _mm256_maskload_ps(xr + kx + 8 * v, m[v])
                                 : _mm256_loadu_ps(xr + kx + 8 * v);
                for (int r = 0; r < DC_OC; r++) {
                    const __m256 wv = _mm256_broadcast_ss(wk + r);
                    for (int v = 0; v < DC_NV; v++)
                        acc[r][v] = _mm256_fmadd_ps(wv, xv[v], acc[r][v]);
                }
            }
        }
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int r = 0; r < DC_OC; r++) {
        if (r >= nco)
            break;
        const __m256 bv = _mm256_set1_ps(b4[r]), sv = _mm256_set1_ps(s4[r]);
        float *yr = yp + (size_t)r * oplane;
        for (int v = 0; v < DC_NV; v++) {
            __m256 a = _mm256_add_ps(acc[r][v], bv);
            if (prelu)
                a = _mm256_blendv_ps(_mm256_mul_ps(a, sv), a,
                                     _mm256_cmp_ps(a, zero, _CMP_GT_OQ));
            if (tail)
                _mm256_maskstore_ps(yr + 8 * v, m[v], a);
            else
                _mm256_storeu_ps(yr + 8 * v, a);
        }
    }
}

/* The tiles of one run of len outputs whose taps start at xp (rows g->w apart) and
 * which are stored from yp on (output channels oplane apart). */
DC_INLINE void dc_run(const conv_geom *g, const float *xp, int len, const float *wpk,
                        const float *b4, const float *s4, int prelu, float *yp,
                        size_t oplane, const int kh, const int kw)
{
    const size_t plane = (size_t)g->h * (size_t)g->w, wtile = (size_t)g->k * DC_OC;
    for (int ox = 0; ox < len; ox += DC_COLS) {
        const int rem = len - ox;
        for (int oc = 0; oc < g->co; oc += DC_OC) {
            const int nco = g->co - oc < DC_OC ? g->co - oc : DC_OC;
            const float *wp = wpk + (size_t)(oc / DC_OC) * wtile;
            float *y = yp + (size_t)oc * oplane + ox;
            if (rem >= DC_COLS)
                dc_tile(xp + ox, plane, g->w, g->c, kh, kw, wp, b4 + oc, s4 + oc, prelu, y,
                        oplane, nco, 0, rem);
            else
                dc_tile(xp + ox, plane, g->w, g->c, kh, kw, wp, b4 + oc, s4 + oc, prelu, y,
                        oplane, nco, 1, rem);
        }
    }
}

/* One image: a run per output row into y, or (flat) one run over the whole plane as
 * if the output were as wide as the input, into yf (oh x w per output channel; the
 * last kw - 1 columns of each row are not outputs, and the caller drops them). A
 * valid convolution's taps of consecutive outputs are consecutive inputs across row
 * ends too, so small planes fill whole tiles instead of one partial tile per row. */
DC_INLINE void dc_image(const conv_geom *g, const float *x, const float *wpk,
                          const float *b4, const float *s4, int prelu, float *y, int flat,
                          const int kh, const int kw)
{
    if (flat) {
        dc_run(g, x, (g->oh - 1) * g->w + g->ow, wpk, b4, s4, prelu, y,
               (size_t)g->oh * (size_t)g->w, kh, kw);
        return;
    }
    for (int oy = 0; oy < g->oh; oy++)
        dc_run(g, x + (size_t)oy * (size_t)g->w, g->ow, wpk, b4, s4, prelu,
               y + (size_t)oy * (size_t)g->ow, (size_t)g->p, kh, kw);
}

/* ---- position tiles: small output planes ------------------------------------------
 *
 * R-Net's and O-Net's planes are a few outputs wide (3 to 46): tiles of 16 consecutive
 * outputs waste much of each vector on them (R-Net conv2: 9x9 outputs in 112 slots
 * when flat). Here the vectors run along the output channels instead: a tile is
 * PT_POS output positions x 16 channels (2 vectors, 12 accumulators), each position
 * broadcasting its input under the tap, so a tile may take positions from any row and
 * any image of a chunk, and only the last tile of a chunk and channel counts that are
 * not a multiple of 16 are partly empty. Every output is summed in the same order as
 * by dc_tile (each input channel, tap row, tap column, from 0, one fused multiply-add
 * each), then the bias added and PReLU applied the same way: the two kernels give the
 * same bits, so choosing between them changes no result. */
#define PT_POS 6 /* pt_tile names its 6 positions' pointers */
/* Input of a chunk of images (positions run across them), in bytes: kept in L1 with
 * a tile's weights. */
#ifndef PT_CHUNK_BYTES
#define PT_CHUNK_BYTES 16384
#endif

/* One tile: positions whose inputs start at xs[0..PT_POS) (unused ones repeat the
 * first) and outputs at ys[0..npos); channels oc..oc+15 of which nco are stored. */
DC_INLINE void pt_tile(const float *const *xs, int npos, const int *restrict off, int k,
                       const float *restrict wp, const float *restrict b16,
                       const float *restrict s16, int prelu, float *const *ys,
                       size_t oplane, int nco)
{
    __m256 acc[PT_POS][2];
    for (int p = 0; p < PT_POS; p++)
        acc[p][0] = acc[p][1] = _mm256_setzero_ps();
    const float *x0 = xs[0], *x1 = xs[1], *x2 = xs[2], *x3 = xs[3], *x4 = xs[4],
                *x5 = xs[5];
    for (int t = 0; t < k; t++) {
        const int o = off[t];
        const __m256 w0 = _mm256_loadu_ps(wp + (size_t)t * PT_OC);
        const __m256 w1 = _mm256_loadu_ps(wp + (size_t)t * PT_OC + 8);
#define PT_FMA(p, xp)                                                                     \
    do {                                                                                  \
        const __m256 xv = _mm256_broadcast_ss(xp + o);                                    \
        acc[p][0] = _mm256_fmadd_ps(w0, xv, acc[p][0]);                                   \
        acc[p][1] = _mm256_fmadd_ps(w1, xv, acc[p][1]);                                   \
    } while (0)
        PT_FMA(0, x0);
        PT_FMA(1, x1);
        PT_FMA(2, x2);
        PT_FMA(3, x3);
        PT_FMA(4, x4);
        PT_FMA(5, x5);
#undef PT_FMA
    }
    const __m256 zero = _mm256_setzero_ps();
    const __m256 bv[2] = {_mm256_loadu_ps(b16), _mm256_loadu_ps(b16 + 8)};
    const __m256 sv[2] = {_mm256_loadu_ps(s16), _mm256_loadu_ps(s16 + 8)};
    /* Constant indices only: an accumulator indexed by a variable would live in memory
     * (GCC then stores all 12 on every tap). */
    float out[PT_POS][PT_OC];
    for (int p = 0; p < PT_POS; p++)
        for (int v = 0; v < 2; v++) {
            __m256 a = _mm256_add_ps(acc[p][v], bv[v]);
            if (prelu)
                a = _mm256_blendv_ps(_mm256_mul_ps(a, sv[v]), a,
                                     _mm256_cmp_ps(a, zero, _CMP_GT_OQ));
            _mm256_storeu_ps(out[p] + 8 * v, a);
        }
    for (int p = 0; p < npos; p++)
        for (int r = 0; r < nco; r++)
            ys[p][(size_t)r * oplane] = out[p][r];
}

/* Images [0, n) of one chunk (input x, output y): every output position, in tiles. */
AVX2 DC_ASAN_OFF static void pt_chunk(const conv_geom *g, const float *x, int n,
                                      const int *off, const float *wpk, const float *b16,
                                      const float *s16, int prelu, float *y)
{
    const size_t in_img = (size_t)g->c * g->h * g->w, out_img = (size_t)g->co * g->p;
    const int total = n * g->p;
    for (int oc = 0; oc < g->co; oc += PT_OC) {
        const int nco = g->co - oc < PT_OC ? g->co - oc : PT_OC;
        const float *wp = wpk + (size_t)(oc / PT_OC) * (size_t)g->k * PT_OC;
        int img = 0, oy = 0, ox = 0; /* the next position */
        for (int q = 0; q < total; q += PT_POS) {
            const float *xs[PT_POS];
            float *ys[PT_POS];
            const int npos = total - q < PT_POS ? total - q : PT_POS;
            for (int p = 0; p < npos; p++) {
                xs[p] = x + img * in_img + (size_t)oy * g->w + ox;
                ys[p] = y + img * out_img + (size_t)oc * g->p + (size_t)oy * g->ow + ox;
                if (++ox == g->ow) {
                    ox = 0;
                    if (++oy == g->oh) {
                        oy = 0;
                        img++;
                    }
                }
            }
            for (int p = npos; p < PT_POS; p++)
                xs[p] = xs[0];
            pt_tile(xs, npos, off, g->k, wp, b16 + oc, s16 + oc, prelu, ys, (size_t)g->p,
                    nco);
        }
    }
}

/* The kernel widths with their own code (constants inlined); 3x3 has both sides
 * constant, so its 9 taps unroll. */
#define DC_VARIANT(name, kh, kw)                                                          \
    AVX2 DC_ASAN_OFF static void name(const conv_geom *g, const float *x, const float *wpk, \
                          const float *b4, const float *s4, int prelu, float *y, int flat) \
    {                                                                                     \
        dc_image(g, x, wpk, b4, s4, prelu, y, flat, kh, kw);                              \
    }
DC_VARIANT(dc_image_k1, g->kh, 1)
DC_VARIANT(dc_image_k2, g->kh, 2)
DC_VARIANT(dc_image_k3, 3, 3)
DC_VARIANT(dc_image_kn, g->kh, g->kw)
#endif

#if NN_HAVE_AVX2
/* Packs g's weights for tiles of `tile` output channels into scratch: [co/tile][k][tile]
 * (zero rows past co), then bias and slope per output channel, the channel count
 * rounded up to a whole tile (returned). */
static int dc_pack(const conv_geom *g, const float *w, const float *bias,
                   const float *slope, int n_slope, int tile, float *scratch)
{
    const int oct = (g->co + tile - 1) / tile * tile;
    float *b = scratch + (size_t)oct * (size_t)g->k, *s = b + oct;
    for (int oc = 0; oc < oct; oc++) {
        float *dst = scratch + (size_t)(oc / tile) * (size_t)g->k * tile + oc % tile;
        const float *src = w + (size_t)oc * (size_t)g->k;
        for (int k = 0; k < g->k; k++)
            dst[(size_t)k * tile] = oc < g->co ? src[k] : 0.0f;
        b[oc] = bias && oc < g->co ? bias[oc] : 0.0f;
        s[oc] = slope && oc < g->co ? slope[n_slope == 1 ? 0 : oc] : 0.0f;
    }
    return oct;
}

/* nn_conv_direct in position tiles: weights packed [co/16][k][16] (zero past co), bias
 * and slope per channel, the input offset of each tap; chunks of images. */
static void conv_positions(const conv_geom *g, const float *x, const float *w,
                           const float *bias, const float *slope, int n_slope, float *y,
                           float *scratch)
{
    const int oc16 = dc_pack(g, w, bias, slope, n_slope, PT_OC, scratch);
    float *wpk = scratch;
    float *b16 = wpk + (size_t)oc16 * (size_t)g->k;
    float *s16 = b16 + oc16;
    int *off = (int *)(s16 + oc16);
    int t = 0;
    for (int ci = 0; ci < g->c; ci++)
        for (int ky = 0; ky < g->kh; ky++)
            for (int kx = 0; kx < g->kw; kx++)
                off[t++] = (ci * g->h + ky) * g->w + kx;
    const size_t in_img = (size_t)g->c * g->h * g->w, out_img = (size_t)g->co * g->p;
    int chunk = (int)(PT_CHUNK_BYTES / (in_img * sizeof *x));
    chunk = chunk < 1 ? 1 : chunk;
    dc_addressable(wpk, sizeof *wpk * (size_t)oc16 * ((size_t)g->k + 2) +
                            sizeof *off * (size_t)g->k, "packed weights");
    for (int n = 0; n < g->n; n += chunk) {
        const int nb = g->n - n < chunk ? g->n - n : chunk;
        dc_addressable(x + (size_t)n * in_img, sizeof *x * in_img * nb, "input");
        dc_addressable(y + (size_t)n * out_img, sizeof *y * out_img * nb, "output");
        pt_chunk(g, x + (size_t)n * in_img, nb, off, wpk, b16, s16, slope != NULL,
                 y + (size_t)n * out_img);
    }
}
#endif

/* See nn_impl.h. */
void nn_conv_direct(const conv_geom *g, const float *x, const float *w, const float *bias,
                    const float *slope, int n_slope, float *y, float *scratch)
{
#if NN_HAVE_AVX2
    if (pt_fits(g)) {
        conv_positions(g, x, w, bias, slope, n_slope, y, scratch);
        return;
    }
    const int oc4 = dc_pack(g, w, bias, slope, n_slope, DC_OC, scratch);
    float *wpk = scratch;
    float *b4 = wpk + (size_t)oc4 * (size_t)g->k;
    float *s4 = b4 + oc4;
    const size_t in_img = (size_t)g->c * g->h * g->w, out_img = (size_t)g->co * g->p;
    void (*fn)(const conv_geom *, const float *, const float *, const float *,
               const float *, int, float *, int) =
        g->kw == 1                   ? dc_image_k1
        : g->kw == 2                 ? dc_image_k2
        : g->kw == 3 && g->kh == 3   ? dc_image_k3
                                     : dc_image_kn;
    const int flat = dc_flat(g);
    float *yf = s4 + oc4; /* flat: oh x w per output channel */
    dc_addressable(wpk, sizeof *wpk * (size_t)oc4 * ((size_t)g->k + 2), "packed weights");
    for (int n = 0; n < g->n; n++) {
        float *yn = y + (size_t)n * out_img;
        dc_addressable(x + (size_t)n * in_img, sizeof *x * in_img, "input");
        dc_addressable(flat ? yf : yn,
                       sizeof *y * (flat ? (size_t)g->co * g->oh * g->w : out_img), "output");
        fn(g, x + (size_t)n * in_img, wpk, b4, s4, slope != NULL, flat ? yf : yn, flat);
        for (int oc = 0; flat && oc < g->co; oc++)
            for (int oy = 0; oy < g->oh; oy++)
                memcpy(yn + ((size_t)oc * g->oh + oy) * g->ow,
                       yf + ((size_t)oc * g->oh + oy) * g->w, (size_t)g->ow * sizeof *yn);
    }
#else
    (void)g, (void)x, (void)w, (void)bias, (void)slope, (void)n_slope, (void)y,
        (void)scratch;
#endif
}

/* ---- PReLU --------------------------------------------------------------------- */

#if NN_HAVE_AVX2
AVX2 static void prelu_avx2(const float *x, float s, float *y, size_t count)
{
    const __m256 sv = _mm256_set1_ps(s), zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(y + i, _mm256_blendv_ps(_mm256_mul_ps(a, sv), a,
                                                 _mm256_cmp_ps(a, zero, _CMP_GT_OQ)));
    }
    for (; i < count; i++) {
        float m = s * x[i];
        y[i] = x[i] > 0.0f ? x[i] : m;
    }
}
#endif

/* See nn_impl.h. */
void nn_prelu_plane(const float *x, float s, float *y, size_t count)
{
#if NN_HAVE_AVX2
    if (fm_nn_isa_now() >= FM_NN_ISA_AVX2) {
        prelu_avx2(x, s, y, count);
        return;
    }
#endif
    /* The product first, then a select: both sides computed, so the loop vectorises
     * (a conditional multiply does not, under the default -ftrapping-math). */
    for (size_t i = 0; i < count; i++) {
        float v = x[i], m = s * v;
        y[i] = v > 0.0f ? v : m;
    }
}

/* ---- max pooling, stride 2 ------------------------------------------------------ */

#if NN_HAVE_AVX2
/* Pairwise maximum of adjacent columns: out[j] = max(in[2j], in[2j + 1]) for 8 j, from
 * the 16 floats at a. */
INLINE_AVX2 __m256 pair_max(__m256 lo, __m256 hi)
{
    __m256 ev = _mm256_shuffle_ps(lo, hi, 0x88); /* 0 2 8 10 | 4 6 12 14 */
    __m256 od = _mm256_shuffle_ps(lo, hi, 0xdd); /* 1 3 9 11 | 5 7 13 15 */
    __m256 m = _mm256_max_ps(ev, od);
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), 0xd8));
}

/* One output row of a k x k stride-2 max pool (k = 2 or 3) over the input rows
 * rows[0..kr) (kr <= k: the ceil-mode overhang drops rows), for output columns
 * [0, full) whose windows lie inside the input; the caller does the rest. */
AVX2 static int maxpool_s2_row(const float *const *rows, int kr, int k, int in_w, int ow,
                               float *out)
{
    int ox = 0;
    /* Vector of 8 outputs reads input columns [2 ox, 2 ox + 16 + (k == 3)). */
    for (; ox + 8 <= ow && 2 * ox + 16 + (k == 3) <= in_w; ox += 8) {
        __m256 lo = _mm256_loadu_ps(rows[0] + 2 * ox);
        __m256 hi = _mm256_loadu_ps(rows[0] + 2 * ox + 8);
        for (int r = 1; r < kr; r++) {
            lo = _mm256_max_ps(lo, _mm256_loadu_ps(rows[r] + 2 * ox));
            hi = _mm256_max_ps(hi, _mm256_loadu_ps(rows[r] + 2 * ox + 8));
        }
        __m256 m = pair_max(lo, hi);
        if (k == 3) {
            /* Column 2 ox + 2: the even columns shifted by one output. */
            __m256 lo2 = _mm256_loadu_ps(rows[0] + 2 * ox + 1);
            __m256 hi2 = _mm256_loadu_ps(rows[0] + 2 * ox + 9);
            for (int r = 1; r < kr; r++) {
                lo2 = _mm256_max_ps(lo2, _mm256_loadu_ps(rows[r] + 2 * ox + 1));
                hi2 = _mm256_max_ps(hi2, _mm256_loadu_ps(rows[r] + 2 * ox + 9));
            }
            /* odd positions of (column + 1) = column 2j + 2 */
            __m256 od = _mm256_shuffle_ps(lo2, hi2, 0xdd);
            od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), 0xd8));
            m = _mm256_max_ps(m, od);
        }
        _mm256_storeu_ps(out + ox, m);
    }
    return ox;
}
#endif

/* See nn_impl.h. */
int nn_maxpool_s2(const float *xc, int h, int w, int k, float *yc, int oh, int ow)
{
#if NN_HAVE_AVX2
    if (fm_nn_isa_now() < FM_NN_ISA_AVX2 || (k != 2 && k != 3))
        return 0;
    for (int oy = 0; oy < oh; oy++) {
        const float *rows[3];
        int kr = 0;
        for (int r = 0; r < k && 2 * oy + r < h; r++)
            rows[kr++] = xc + (size_t)(2 * oy + r) * (size_t)w;
        float *out = yc + (size_t)oy * (size_t)ow;
        int ox = maxpool_s2_row(rows, kr, k, w, ow, out);
        for (; ox < ow; ox++) {
            int c0 = 2 * ox, c1 = c0 + k < w ? c0 + k : w;
            float m = rows[0][c0];
            for (int r = 0; r < kr; r++)
                for (int c = c0; c < c1; c++)
                    m = rows[r][c] > m ? rows[r][c] : m;
            out[ox] = m;
        }
    }
    return 1;
#else
    (void)xc, (void)h, (void)w, (void)k, (void)yc, (void)oh, (void)ow;
    return 0;
#endif
}
