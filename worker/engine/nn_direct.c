/* nn_direct.c - the engine's own vector kernels and their run-time dispatch: a direct
 * convolution (stride 1, no padding, one group) with bias and PReLU applied as each
 * output is stored, vectorised PReLU and 2x2 / 3x3 stride-2 max pooling.
 *
 * MTCNN's layers have few channels (3 to 64) and, in P-Net, very wide images: as im2col
 * + sgemm they are small-M multiplies that spend most of their time copying (im2col,
 * packing, zeroing) and in separate passes for bias and PReLU. The direct kernel reads
 * the input rows in place: a tile of output channels x output columns (AVX2: 4 or 5 x
 * 16; AVX-512: 4, 5 or 8 x 32) sums over every input channel and tap, then adds
 * the bias, applies PReLU and stores once. Small planes (R-Net's and O-Net's crops)
 * run as one flat run of outputs as wide as the input, so rows of 9 or 22 outputs do
 * not each leave a partial tile. Measured with facemill-bench-ops, it beats im2col +
 * sgemm on P-Net's three layers and on R-Net's and O-Net's layers except the last
 * convolution of each (3x3 outputs, fewer than a tile: 1.1-2.6x). Small planes with
 * enough output channels run in position tiles instead (positions x channels, below:
 * faster, and the same bits), and so do those last convolutions. P-Net's wide 3x3
 * layers (conv2 and conv3) run as Winograd's F(4x4, 3x3) on wide levels and F(2x2,
 * 3x3) on narrow ones, with the products in registers (nn_direct_tiles.h): fewer
 * multiplies, results equal within rounding (fm_nn_set_winograd(0) turns both off,
 * fm_nn_set_winograd4(0) the first).
 *
 * Dispatch: the convolution's loops are written once (nn_direct_tiles.h) and compiled
 * for AVX2+FMA and for AVX-512 with target attributes; the widest set the CPU has is
 * chosen (fm_nn_isa_best). Both give the same bits. Max pooling has a row kernel for
 * each (AVX-512's masks take whole rows, edges included); PReLU has AVX2 only (it
 * moves memory, not arithmetic). Without AVX2 and FMA, or after
 * fm_nn_set_isa(FM_NN_ISA_BASE), the callers use their portable paths. */
#include "nn_impl.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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
    /* Reads what libgcc found at start-up (for AVX-512, that the OS saves the ZMM and
     * mask registers too): cheap, and nothing to cache or race on. */
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return FM_NN_ISA_BASE;
    return __builtin_cpu_supports("avx512f") ? FM_NN_ISA_AVX512 : FM_NN_ISA_AVX2;
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
    return isa == FM_NN_ISA_AVX512 ? "avx512" : isa == FM_NN_ISA_AVX2 ? "avx2+fma" : "base";
}

int fm_nn_isa_from_name(const char *name)
{
    for (int isa = FM_NN_ISA_BASE; name && isa <= FM_NN_ISA_AVX512; isa++)
        if (strcmp(name, fm_nn_isa_name((fm_nn_isa)isa)) == 0)
            return isa;
    return -1;
}

/* ---- direct convolution -------------------------------------------------------- */

/* Which kernel runs a layer (column tiles, position tiles or im2col + sgemm) is decided
 * alike for every instruction set, in the AVX2 kernels' tile sizes, so that every set
 * gives the same results. */
#define DC_OC 4    /* output channels per column tile (AVX2) */
#define DC_COLS 16 /* output columns per column tile (AVX2) */
#define PT_OC 16   /* output channels per position tile (AVX2) */
/* The largest tiles of any set, which size the scratch for packed weights. */
#define DC_OC_MAX 8
#define PT_OC_MAX 32
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
 * run flat, when each output has at most DC_FLAT_MAX_K multiply-adds: O-Net's first
 * layer (32 x 46 x 48, 70,656 floats, its rows of 46 outputs a tile of 32 and a third
 * of one empty when row by row) among them, with its 3x3 pool read where the runs lie
 * (facemill-bench-detect at 640x480, the two builds alternated on two cores six times:
 * O-Net 1.21 times P-Net's time before, 1.02 after, the same bits); with more than
 * DC_MAX_K of them (which never run with the pool in one pass), planes of up to
 * DC_FLAT_FLOATS_WIDE_K: the dlib ResNet's stem after space to depth (32 x 72 x 75,
 * K 192), whose rows of 72 outputs were two tiles of 32 and a third with 8 (flat, 0.54
 * to 0.45 ms a face by facemill-bench-ops). */
#ifndef DC_FLAT_FLOATS
#define DC_FLAT_FLOATS 73728
#endif
#ifndef DC_FLAT_FLOATS_WIDE_K
#define DC_FLAT_FLOATS_WIDE_K 262144
#endif
#ifndef DC_FLAT_MAX_K
#define DC_FLAT_MAX_K 600
#endif

/* 1 when g's output planes are small enough to run flat (dc_image). */
static int dc_flat(const conv_geom *g)
{
    size_t oc4 = ((size_t)g->co + DC_OC - 1) / DC_OC * DC_OC;
    const size_t most = g->k > DC_MAX_K ? DC_FLAT_FLOATS_WIDE_K : DC_FLAT_FLOATS;
    return oc4 * (size_t)g->oh * (size_t)g->w <= most &&
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
 * saved: R-Net's and O-Net's first layers, K 27, are faster in column tiles).
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

/* 1 when g is padded or strided: the direct kernels read the input in place, so
 * position tiles run such a layer over a zero-bordered copy of it (bordered_geom). */
static int dc_bordered(const conv_geom *g)
{
    return g->sh != 1 || g->sw != 1 || g->pt != 0 || g->pl != 0 ||
           g->oh != g->h - g->kh + 1 || g->ow != g->w - g->kw + 1;
}

/* Padded and stride-2 layers with small output planes run in position tiles too,
 * where Winograd does not apply: the dlib ResNet's 128- and 256-channel layers (8x8
 * outputs and smaller, 1,152 and 2,304 multiply-adds per output) and its stride-2
 * layers, which im2col + sgemm ran at a fifth to two thirds of sgemm's speed at one
 * face, much of it spent packing the weights (2.4 MB a layer for 16 outputs; position
 * tiles keep them packed, fm_nn_const_declare). Layers Winograd takes stay there (the
 * 64-channel layers, 17x17: as fast either way), and so do layers with one output a
 * channel (the last two, 1x1): a matrix-vector product that reads its weights once
 * whatever runs it (0.05 ms in sgemm, 0.06 in position tiles), and whose kept panels
 * would take 4.7 MB. Tuned with facemill-bench-ops. */
#ifndef PT_BORDER_MAX_PLANE
#define PT_BORDER_MAX_PLANE 300
#endif
static int pt_bordered_fits(const conv_geom *g)
{
    return pt_fits(g) && g->p <= PT_BORDER_MAX_PLANE && g->p > 1 && g->sh == g->sw &&
           (g->sh == 1 || g->sh == 2) && !nn_winograd_fits(g);
}

/* g with the zero border its padding asks for made part of the input: exactly the
 * rows and columns its outputs read, unpadded. */
static conv_geom bordered_geom(const conv_geom *g)
{
    conv_geom b = *g;
    b.h = (g->oh - 1) * g->sh + g->kh;
    b.w = (g->ow - 1) * g->sw + g->kw;
    b.pt = b.pl = 0;
    return b;
}

/* Images per call of the position kernel (positions run across them, each tile of
 * channels over all of a chunk's positions): with small weights, a chunk's input kept
 * in L1 with a tile's weights; with large weights (the dlib ResNet's, 0.6 to 2.4 MB a
 * layer), chunks up to half of L2, so that the weights, read from L3, serve every
 * image of a batch instead of one (eight faces took longer each than one). */
#ifndef PT_CHUNK_BYTES
#define PT_CHUNK_BYTES 16384
#endif
#ifndef PT_CHUNK_BIG_W
#define PT_CHUNK_BIG_W (256 * 1024) /* weights' bytes from which chunks are large */
#endif
#ifndef PT_CHUNK_BIG
#define PT_CHUNK_BIG (1024 * 1024)
#endif
static int pt_chunk_images(const conv_geom *g)
{
    const size_t in_img = (size_t)g->c * g->h * g->w * sizeof(float);
    const size_t w_bytes = (size_t)g->co * g->k * sizeof(float);
    const size_t chunk = (w_bytes >= PT_CHUNK_BIG_W ? PT_CHUNK_BIG : PT_CHUNK_BYTES) / in_img;
    return chunk < 1 ? 1 : chunk > (size_t)g->n ? g->n : (int)chunk;
}

/* Wide 3x3 layers run as Winograd in registers (nn_direct_tiles.h; F(2x2, 3x3) here,
 * F(4x4, 3x3) on the widest, below):
 * P-Net's conv2 and conv3, whose rows are hundreds of outputs wide. WT_CO: the output
 * channels must fill the widest set's product groups; WT_MIN_OW: narrower rows (the
 * pyramid's small levels) leave the passes' vectors of blocks mostly empty; WT_MIN_C:
 * with fewer input channels the transforms cost what the products save (O-Net's
 * conv1, 3 channels on 46 columns, ran no faster: it stays in column tiles, and so do
 * O-Net's results); WT_MAX_C keeps a pass's transformed input (16 x c x 32 floats) in
 * L1 and L2. Tuned with facemill-bench-ops. */
#define WT_CO 8
#define WT_BLK_MAX 32 /* blocks per pass, the widest set's */
#ifndef WT_MIN_OW
#define WT_MIN_OW 32
#endif
#ifndef WT_MIN_C
#define WT_MIN_C 8
#endif
#ifndef WT_MAX_C
#define WT_MAX_C 32
#endif
static int wt_shape(const conv_geom *g)
{
    return g->kh == 3 && g->kw == 3 && g->co % WT_CO == 0 && g->c >= WT_MIN_C &&
           g->c <= WT_MAX_C;
}
static int wt_fits(const conv_geom *g)
{
    return nn_winograd_enabled() && wt_shape(g) && g->ow >= WT_MIN_OW;
}

/* Of those, the ones at least W4_MIN_OW outputs wide and W4_MIN_OH high run as F(4x4,
 * 3x3) (fm_nn_set_winograd4(0) keeps them on F(2x2)): its passes take 4 x 32 columns
 * with AVX-512 (4 x 16 with AVX2), and a block row 4 output rows. Tuned with
 * facemill-bench-ops. */
#ifndef W4_MIN_OW
#define W4_MIN_OW 64
#endif
#ifndef W4_MIN_OH
#define W4_MIN_OH 4
#endif
#define W4_BLK_MAX 32 /* blocks per pass, the widest set's */
static int winograd4_on = 1;

int fm_nn_set_winograd4(int on)
{
    int was = winograd4_on;
    winograd4_on = on != 0;
    return was;
}

static int w4_fits(const conv_geom *g)
{
    return winograd4_on && wt_fits(g) && g->ow >= W4_MIN_OW && g->oh >= W4_MIN_OH;
}

/* See nn_impl.h. */
int nn_direct_fits(const conv_geom *g)
{
    return nn_direct_fits_k(g, DC_MAX_K);
}

/* See nn_impl.h. */
int nn_direct_fits_k(const conv_geom *g, int max_k)
{
    if (fm_nn_isa_now() < FM_NN_ISA_AVX2)
        return 0;
    if (g->groups != 1)
        return 0;
    if (dc_bordered(g))
        return pt_bordered_fits(g);
    /* Narrow outputs waste most of a column tile; large K multiplies well through
     * sgemm. Position tiles take any width: R-Net's and O-Net's last convolutions (2x2
     * kernels, 3x3 outputs) run in them 2-3 times as fast as im2col + sgemm (0.26-0.41
     * of sgemm's speed there, 0.75-1.3 in position tiles, by facemill-bench-ops). With
     * OpenBLAS's SkylakeX kernels the results are the same bits (its small-matrix
     * kernel sums in the same order); with its Zen kernels tests/golden's file still
     * holds with room (ages within 0.0072 years, the tolerance is 0.02). */
    return pt_fits(g) || dc_flat(g) || (g->ow >= DC_MIN_OW && g->k <= max_k);
}

/* See nn_impl.h. */
size_t nn_direct_scratch(const conv_geom *g)
{
    size_t oc4 = ((size_t)g->co + DC_OC - 1) / DC_OC * DC_OC;
    /* The flat buffer's largest size is counted for planes too large to run flat, and
     * the position tiles' needs whichever kernel runs g, so that an arena measured on
     * a large plane (MTCNN's detector measures P-Net on its widest level) also holds
     * what the smaller planes of the same layer take. */
    size_t flat = DC_FLAT_FLOATS;
    if (dc_flat(g))
        flat = oc4 * (size_t)g->oh * (size_t)g->w;
    else if (g->k > DC_MAX_K && g->k <= DC_FLAT_MAX_K)
        flat = DC_FLAT_FLOATS_WIDE_K;
    size_t ocd = ((size_t)g->co + DC_OC_MAX - 1) / DC_OC_MAX * DC_OC_MAX;
    size_t tiles = ocd * ((size_t)g->k + 2) + flat;
    /* position tiles: packed weights, bias, slope, tap offsets */
    size_t ocp = ((size_t)g->co + PT_OC_MAX - 1) / PT_OC_MAX * PT_OC_MAX;
    size_t pos = ocp * ((size_t)g->k + 2) + (size_t)g->k;
    size_t need = pos > tiles ? pos : tiles;
    if (dc_bordered(g)) {
        /* position tiles only, with a chunk of bordered images */
        const conv_geom b = bordered_geom(g);
        return pos + (size_t)pt_chunk_images(&b) * b.c * b.h * b.w;
    }
    /* Winograd: transformed weights, bias, slope, a pass's transformed input and
     * products (counted for every width, as the flat buffer is) */
    if (wt_shape(g)) {
        size_t wt = 16 * (size_t)g->c * g->co + 2 * (size_t)g->co +
                    16 * (size_t)g->c * WT_BLK_MAX + 16 * (size_t)WT_CO * WT_BLK_MAX;
        size_t w4 = 36 * (size_t)g->c * g->co + 2 * (size_t)g->co +
                    36 * (size_t)g->c * W4_BLK_MAX + 36 * (size_t)WT_CO * W4_BLK_MAX;
        need = wt > need ? wt : need;
        need = w4 > need ? w4 : need;
    }
    return need;
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

/* ---- position tiles: small output planes ------------------------------------------
 *
 * R-Net's and O-Net's planes are a few outputs wide (3 to 46): tiles of 16 consecutive
 * outputs waste much of each vector on them (R-Net conv2: 9x9 outputs in 112 slots
 * when flat). Here the vectors run along the output channels instead: a tile is
 * TL_PT_POS output positions x 2 vectors of channels (AVX2: 6 positions, 12
 * accumulators of 16 registers; AVX-512: 8, 16 of 32, so that the dlib ResNet's 8x8
 * and 4x4 planes fill whole tiles), each position
 * broadcasting its input under the tap, so a tile may take positions from any row and
 * any image of a chunk, and only the last tile of a chunk and channel counts that are
 * not a multiple of the tile's (16 for AVX2, 32 for AVX-512) are partly empty. Every
 * output is summed in the same order as by dc_tile (each input channel, tap row, tap
 * column, from 0, one fused multiply-add each), then the bias added and PReLU applied
 * the same way: the two kernels give the same bits, so choosing between them changes
 * no result. */
#define PT_POS 6   /* AVX2's TL_PT_POS (pt_tile names up to 8 positions' pointers) */
#define PT_POS1 12 /* pt_tile1's (one vector of channels: a half-empty last tile) */
/* The kernels of one instruction set (nn_direct_tiles.h): column tiles for each
 * kernel width, position tiles, and the output channels each packs per tile. */
typedef void (*dc_image_fn)(const conv_geom *g, const float *x, const float *wpk,
                            const float *b, const float *s, int prelu, float *y, int flat);
typedef void (*pt_chunk_fn)(const conv_geom *g, const float *x, int n, const int *off,
                            const float *wpk, const float *b, const float *s, int prelu,
                            float *y);
typedef void (*dp_image_fn)(const conv_geom *g, const float *x, const float *wpk,
                            const float *b, const float *s, int prelu, float *y, int ph,
                            int pw);
typedef void (*wt_image_fn)(const conv_geom *g, const float *x, const float *u,
                            const float *b, const float *s, int prelu, float *y,
                            float *vbuf, float *mbuf);
typedef struct dc_kernels {
    int pt_oc; /* output channels per position tile */
    pt_chunk_fn positions;
    wt_image_fn winograd; /* nn_direct_tiles.h, "Winograd F(2x2, 3x3), direct" */
    wt_image_fn winograd4; /* "Winograd F(4x4, 3x3), direct" */
    int wt_co;            /* its output channels per product group */
    nn_wg_input_fn wg_input;   /* nn_winograd.c's transforms */
    nn_wg_output_fn wg_output;
    struct {
        int oc;               /* output channels per column tile: 4, 5, and a wider one */
        dc_image_fn image[4]; /* kernel width 1, 2, 3x3, any */
    } cols[3];
    dp_image_fn pool[3]; /* 3x3 with the 2x2 pool, the tiles of cols */
} dc_kernels;

/* AVX2 and FMA: 8 lanes; column tiles of 4 channels x 16 columns (8 accumulators; 12
 * made GCC spill), position tiles of 6 positions x 16 channels. nn_direct_tiles.h
 * undefines these macros. */
#define TL_NAME(x) x##_avx2
#define TL_TARGET __attribute__((target("avx2,fma")))
#define TL_V __m256
#define TL_VN 8
#define TL_MASK __m256i
#define TL_TAIL(n)                                                                        \
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define TL_ZERO() _mm256_setzero_ps()
#define TL_SET1(f) _mm256_set1_ps(f)
#define TL_BCAST(p) _mm256_broadcast_ss(p)
#define TL_LOAD(p) _mm256_loadu_ps(p)
#define TL_LOADM(p, m) _mm256_maskload_ps(p, m)
#define TL_STORE(p, v) _mm256_storeu_ps(p, v)
#define TL_STOREM(p, m, v) _mm256_maskstore_ps(p, m, v)
#define TL_ADD(a, b) _mm256_add_ps(a, b)
#define TL_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define TL_PRELU(a, s)                                                                    \
    _mm256_blendv_ps(_mm256_mul_ps(a, s), a,                                              \
                     _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_GT_OQ))
#define TL_SUB(a, b) _mm256_sub_ps(a, b)
/* shuffle within 128-bit halves (0 2 8 10 | 4 6 12 14), then the 64-bit quarters */
#define TL_EVEN(lo, hi)                                                                   \
    _mm256_castpd_ps(_mm256_permute4x64_pd(                                               \
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xd8))
#define TL_ODD(lo, hi)                                                                    \
    _mm256_castpd_ps(_mm256_permute4x64_pd(                                               \
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xdd)), 0xd8))
#define TL_ZIPLO(a, b)                                                                    \
    _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x20)
#define TL_ZIPHI(a, b)                                                                    \
    _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x31)
#define TL_UNPACKLO(a, b) _mm256_unpacklo_ps(a, b)
#define TL_UNPACKHI(a, b) _mm256_unpackhi_ps(a, b)
#define TL_SHUFLO(a, b) _mm256_shuffle_ps(a, b, 0x44)
#define TL_SHUFHI(a, b) _mm256_shuffle_ps(a, b, 0xee)
#define TL_MAX(a, b) _mm256_max_ps(a, b)
#define TL_KEEP(m, a, f) _mm256_blendv_ps(f, a, _mm256_castsi256_ps(m))
/* lane 4 q + k holds block 2 k + q: block b + 1 is in lane 4 + k (q = 0) or k + 1
 * (q = 1), the last (lane 7) past the vector */
#define TL_NEXT0(o, e)                                                                    \
    _mm256_blend_ps(_mm256_permutevar8x32_ps(o, _mm256_setr_epi32(4, 5, 6, 7, 1, 2, 3, 0)), \
                    _mm256_broadcastss_ps(_mm256_castps256_ps128(e)), 0x80)
#define TL_NEXT1(o, e)                                                                    \
    _mm256_blend_ps(_mm256_permutevar8x32_ps(o, _mm256_setr_epi32(4, 5, 6, 7, 1, 2, 3, 0)), \
                    _mm256_permutevar8x32_ps(e, _mm256_set1_epi32(1)), 0x80)
#define TL_WT_CO 4
#define TL_PT_POS PT_POS
#include "nn_direct_tiles.h"

/* The lanes [0, n) of 16 (n may be <= 0 or >= 16). */
static inline __mmask16 lanes16(int n)
{
    return (__mmask16)(n >= 16 ? 0xffffu : n <= 0 ? 0u : (1u << n) - 1u);
}

/* Lane indices for _mm512_permutex2var_ps: the even and odd lanes of two vectors (the
 * Winograd kernel's stride-2 split and the stride-2 max pools), and the lanes of a and
 * b interleaved (a0 b0 a1 b1 ..., low and high halves). */
__attribute__((target("avx512f"))) static inline __m512i even512(void)
{
    return _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}
__attribute__((target("avx512f"))) static inline __m512i odd512(void)
{
    return _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
__attribute__((target("avx512f"))) static inline __m512i ziplo512(void)
{
    return _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}
__attribute__((target("avx512f"))) static inline __m512i ziphi512(void)
{
    return _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}

/* AVX-512 (F): 16 lanes, masks in k registers; column tiles of 4, 5 or 8 channels x 32
 * columns (32 vector registers: 16 accumulators fit), position tiles of 6 positions x
 * 32 channels. facemill-bench-ops, 8 channels against 4: P-Net conv2 (16 channels)
 * and conv3 (32) 1.10-1.13 and 1.06-1.08 of sgemm against 0.94-0.98 and 0.90-0.92,
 * O-Net conv1 (32) 0.70-0.74 against 0.57-0.60; P-Net conv1 (10 channels, 16 slots
 * against 12) 0.61-0.63 against 0.67-0.69, and in two tiles of 5 (10 slots) 1.24-1.41
 * ms against 1.58-1.65 in three of 4. */
#define TL_NAME(x) x##_avx512
#define TL_TARGET __attribute__((target("avx512f,avx2,fma")))
#define TL_V __m512
#define TL_VN 16
#define TL_MASK __mmask16
#define TL_TAIL(n) lanes16(n)
#define TL_ZERO() _mm512_setzero_ps()
#define TL_SET1(f) _mm512_set1_ps(f)
#define TL_BCAST(p) _mm512_set1_ps(*(p))
#define TL_LOAD(p) _mm512_loadu_ps(p)
#define TL_LOADM(p, m) _mm512_maskz_loadu_ps(m, p)
#define TL_STORE(p, v) _mm512_storeu_ps(p, v)
#define TL_STOREM(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#define TL_ADD(a, b) _mm512_add_ps(a, b)
#define TL_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define TL_PRELU(a, s)                                                                    \
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_GT_OQ),          \
                         _mm512_mul_ps(a, s), a)
#define TL_SUB(a, b) _mm512_sub_ps(a, b)
#define TL_EVEN(lo, hi) _mm512_permutex2var_ps(lo, even512(), hi)
#define TL_ODD(lo, hi) _mm512_permutex2var_ps(lo, odd512(), hi)
#define TL_ZIPLO(a, b) _mm512_permutex2var_ps(a, ziplo512(), b)
#define TL_ZIPHI(a, b) _mm512_permutex2var_ps(a, ziphi512(), b)
#define TL_UNPACKLO(a, b) _mm512_unpacklo_ps(a, b)
#define TL_UNPACKHI(a, b) _mm512_unpackhi_ps(a, b)
#define TL_SHUFLO(a, b) _mm512_shuffle_ps(a, b, 0x44)
#define TL_SHUFHI(a, b) _mm512_shuffle_ps(a, b, 0xee)
#define TL_MAX(a, b) _mm512_max_ps(a, b)
#define TL_KEEP(m, a, f) _mm512_mask_blend_ps(m, f, a)
/* lane 4 q + k holds block 4 k + q: block b + 1 is in lane 4 (q + 1) + k (q < 3) or
 * k + 1 (q = 3), the last (lane 15) past the vector: e[0] (16) or e[1] (17) */
#define TL_NEXT0(o, e)                                                                    \
    _mm512_permutex2var_ps(o, _mm512_setr_epi32(4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, \
                                                1, 2, 3, 16),                             \
                           e)
#define TL_NEXT1(o, e)                                                                    \
    _mm512_permutex2var_ps(o, _mm512_setr_epi32(4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, \
                                                1, 2, 3, 17),                             \
                           e)
#define TL_WT_CO 8
#define TL_DC_OC_WIDE 8
#define TL_PT_POS 8
#include "nn_direct_tiles.h"

/* The kernels for the set in effect (nn_direct_fits has checked there is one). */
static const dc_kernels *dc_kernels_now(void)
{
    return fm_nn_isa_now() >= FM_NN_ISA_AVX512 ? &kernels_avx512 : &kernels_avx2;
}
#endif

#if NN_HAVE_AVX2
/* Packs g's weights for tiles of `tile` output channels into dst: [co/tile][k][tile]
 * (zero rows past co). A block of 16 taps of a tile's rows at a time, so that the
 * scattered stores stay within a few cache lines. */
static void dc_pack_weights(const conv_geom *g, const float *w, int tile, float *dst)
{
    const int oct = (g->co + tile - 1) / tile * tile;
    const size_t k = (size_t)g->k;
    for (int oc0 = 0; oc0 < oct; oc0 += tile) {
        float *panel = dst + (size_t)(oc0 / tile) * k * tile;
        for (size_t k0 = 0; k0 < k; k0 += 16) {
            const size_t kn = k - k0 < 16 ? k - k0 : 16;
            for (int oc = 0; oc < tile; oc++) {
                float *d = panel + k0 * tile + oc;
                if (oc0 + oc >= g->co) {
                    for (size_t j = 0; j < kn; j++)
                        d[j * tile] = 0.0f;
                    continue;
                }
                const float *src = w + (size_t)(oc0 + oc) * k + k0;
                for (size_t j = 0; j < kn; j++)
                    d[j * tile] = src[j];
            }
        }
    }
}

/* Bias and slope per output channel into b and s, oct of each (zero past co). */
static void dc_pack_bias(const conv_geom *g, const float *bias, const float *slope,
                         int n_slope, int oct, float *b, float *s)
{
    for (int oc = 0; oc < oct; oc++) {
        b[oc] = bias && oc < g->co ? bias[oc] : 0.0f;
        s[oc] = slope && oc < g->co ? slope[n_slope == 1 ? 0 : oc] : 0.0f;
    }
}

/* Packs g's weights for tiles of `tile` output channels into scratch (dc_pack_weights),
 * then bias and slope per output channel, the channel count rounded up to a whole tile
 * (returned). */
static int dc_pack(const conv_geom *g, const float *w, const float *bias,
                   const float *slope, int n_slope, int tile, float *scratch)
{
    const int oct = (g->co + tile - 1) / tile * tile;
    float *b = scratch + (size_t)oct * (size_t)g->k, *s = b + oct;
    dc_pack_weights(g, w, tile, scratch);
    dc_pack_bias(g, bias, slope, n_slope, oct, b, s);
    return oct;
}

/* nn_kept_layout's maker for position tiles: arg is the tile. */
static void make_positions(const conv_geom *g, const float *w, int tile, float *dst)
{
    dc_pack_weights(g, w, tile, dst);
}

/* g's weights w packed for tiles of `tile` channels, kept (nn_kept_layout) or NULL:
 * the caller packs them itself. Small weights are packed per call: it costs little,
 * and leaves the panels in L1 for the tiles, where kept panels were cold after the
 * backbone's turn (R-Net and O-Net took 7-10% longer in the worker with theirs kept). */
#ifndef PT_KEEP_MIN_BYTES
#define PT_KEEP_MIN_BYTES (256 * 1024)
#endif
static const float *kept_weights(const conv_geom *g, const float *w, int tile)
{
    const size_t oct = ((size_t)g->co + tile - 1) / tile * tile;
    if (oct * (size_t)g->k * sizeof *w < PT_KEEP_MIN_BYTES)
        return NULL;
    return nn_kept_layout(g, w, NN_KEEP_POSITIONS, tile, oct * (size_t)g->k,
                          make_positions);
}

/* nn_conv_direct in position tiles: weights packed [co/T][k][T] for tiles of T = kn->pt_oc
 * channels (zero past co; kept, or packed into scratch), bias and slope per channel,
 * the input offset of each tap; chunks of images. A padded or strided g runs over a
 * zero-bordered copy of each chunk (bordered_geom), after the tap offsets. */
static void conv_positions(const dc_kernels *kn, const conv_geom *g, const float *x,
                           const float *w, const float *bias, const float *slope,
                           int n_slope, float *y, float *scratch)
{
    const int tile = kn->pt_oc;
    const int oct = (g->co + tile - 1) / tile * tile;
    const float *wpk = kept_weights(g, w, tile);
    if (!wpk) {
        dc_pack_weights(g, w, tile, scratch);
        wpk = scratch;
    }
    float *b = scratch + (size_t)oct * (size_t)g->k;
    float *s = b + oct;
    int *off = (int *)(s + oct);
    float *border = s + oct + g->k;
    dc_pack_bias(g, bias, slope, n_slope, oct, b, s);
    const int bordered = dc_bordered(g);
    const conv_geom gb = bordered ? bordered_geom(g) : *g;
    int t = 0;
    for (int ci = 0; ci < gb.c; ci++)
        for (int ky = 0; ky < gb.kh; ky++)
            for (int kx = 0; kx < gb.kw; kx++)
                off[t++] = (ci * gb.h + ky) * gb.w + kx;
    const size_t in_img = (size_t)g->c * g->h * g->w, out_img = (size_t)g->co * g->p;
    const int chunk = pt_chunk_images(&gb);
    dc_addressable(wpk, sizeof *wpk * (size_t)oct * g->k, "packed weights");
    dc_addressable(b, sizeof *b * 2 * (size_t)oct + sizeof *off * (size_t)g->k,
                   "bias, slope and offsets");
    for (int n = 0; n < g->n; n += chunk) {
        const int nb = g->n - n < chunk ? g->n - n : chunk;
        const float *xn = x + (size_t)n * in_img;
        if (bordered) {
            /* row r of the bordered plane is input row r - pt, column q input column
             * q - pl (the columns [lo, hi) of a row); outside the input, zero */
            const int lo = g->pl < gb.w ? g->pl : gb.w;
            const int hi = g->pl + g->w < gb.w ? g->pl + g->w : gb.w;
            float *dst = border;
            for (int i = 0; i < nb * g->c; i++) {
                const float *src = xn + (size_t)i * g->h * g->w;
                for (int r = 0; r < gb.h; r++, dst += gb.w) {
                    const int iy = r - g->pt;
                    if (iy < 0 || iy >= g->h) {
                        memset(dst, 0, (size_t)gb.w * sizeof *dst);
                        continue;
                    }
                    for (int q = 0; q < lo; q++)
                        dst[q] = 0.0f;
                    if (hi > lo)
                        memcpy(dst + lo, src + (size_t)iy * g->w,
                               (size_t)(hi - lo) * sizeof *dst);
                    for (int q = hi; q < gb.w; q++)
                        dst[q] = 0.0f;
                }
            }
            xn = border;
            dc_addressable(border, sizeof *border * gb.c * gb.h * gb.w * nb,
                           "bordered input");
        } else {
            dc_addressable(xn, sizeof *x * in_img * nb, "input");
        }
        dc_addressable(y + (size_t)n * out_img, sizeof *y * out_img * nb, "output");
        kn->positions(&gb, xn, nb, off, wpk, b, s, slope != NULL, y + (size_t)n * out_img);
    }
}
#endif

#if NN_HAVE_AVX2
/* The outputs of a flat run (rows w apart) into rows of ow: with AVX-512 masked
 * copies of whole rows (R-Net's and O-Net's first convolutions give rows of 22 and 46
 * outputs, tens of thousands of them per image, where memcpy's call was most of the
 * copy's cost), memcpy otherwise. */
__attribute__((target("avx512f"))) static void flat_copy512(float *dst, const float *src,
                                                            int rows, int ow, int w)
{
    for (int r = 0; r < rows; r++, dst += ow, src += w)
        for (int x = 0; x < ow; x += 16) {
            const __mmask16 m = lanes16(ow - x);
            _mm512_mask_storeu_ps(dst + x, m, _mm512_maskz_loadu_ps(m, src + x));
        }
}

static void flat_copy(float *dst, const float *src, int rows, int ow, int w)
{
    if (fm_nn_isa_now() >= FM_NN_ISA_AVX512) {
        flat_copy512(dst, src, rows, ow, w);
        return;
    }
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * ow, src + (size_t)r * w, (size_t)ow * sizeof *dst);
}
#endif

#if NN_HAVE_AVX2
/* The F(4x4, 3x3) weights U = G w G^T (6x6 per input and output channel, computed in
 * double, rounded once), each position e = 6 i + j a plane of `plane` floats [co /
 * group][c][group]. */
static void winograd4_weights(const conv_geom *g, const float *w, float *u, size_t plane,
                              int group)
{
    static const double G[6][3] = {
        {1.0 / 4, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6},
        {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
        {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1},
    };
    for (int o = 0; o < g->co; o++) {
        for (int i = 0; i < g->c; i++) {
            const float *k = w + ((size_t)o * g->c + i) * 9;
            double t[6][3]; /* G k */
            for (int r = 0; r < 6; r++)
                for (int j = 0; j < 3; j++)
                    t[r][j] = G[r][0] * k[j] + G[r][1] * k[3 + j] + G[r][2] * k[6 + j];
            float *dst = u + ((size_t)(o / group) * g->c + i) * group + o % group;
            for (int r = 0; r < 6; r++)
                for (int j = 0; j < 6; j++)
                    dst[(size_t)(6 * r + j) * plane] =
                        (float)(t[r][0] * G[j][0] + t[r][1] * G[j][1] + t[r][2] * G[j][2]);
        }
    }
}

/* nn_kept_layout's makers for the direct Winograd kernels: arg is the product group. */
static void make_wt2(const conv_geom *g, const float *w, int group, float *u)
{
    nn_winograd_weights(g, w, u, (size_t)g->co * g->c, group);
}
static void make_wt4(const conv_geom *g, const float *w, int group, float *u)
{
    winograd4_weights(g, w, u, (size_t)g->co * g->c, group);
}

/* nn_conv_direct as Winograd in registers, F(4x4, 3x3) (four) or F(2x2, 3x3): the
 * transformed weights [36 or 16][co][c] (the output channels in the set's product
 * groups; a model's kept, nn_keep.c, others computed here), bias and slope per
 * channel, then each image. */
static void conv_winograd(const dc_kernels *kn, const conv_geom *g, int four, const float *x,
                          const float *w, const float *bias, const float *slope,
                          int n_slope, float *y, float *scratch)
{
    const size_t pos = four ? 36 : 16, blk = four ? W4_BLK_MAX : WT_BLK_MAX;
    const size_t eu = (size_t)g->co * g->c;
    float *uf = scratch, *b = uf + pos * eu, *s = b + g->co;
    float *vbuf = s + g->co, *mbuf = vbuf + pos * (size_t)g->c * blk;
    /* a model's weights: transformed once and kept (nn_keep.c); others here */
    const nn_layout_fn make = four ? make_wt4 : make_wt2;
    const float *u = nn_kept_layout(g, w, four ? NN_KEEP_WT4 : NN_KEEP_WT2, kn->wt_co,
                                    pos * eu, make);
    if (!u) {
        make(g, w, kn->wt_co, uf);
        u = uf;
    }
    for (int o = 0; o < g->co; o++) {
        b[o] = bias ? bias[o] : 0.0f;
        s[o] = slope ? slope[n_slope == 1 ? 0 : o] : 0.0f;
    }
    const size_t in_img = (size_t)g->c * g->h * g->w, out_img = (size_t)g->co * g->p;
    dc_addressable(uf, sizeof *uf * (pos * eu + 2 * (size_t)g->co +
                                     pos * ((size_t)g->c + WT_CO) * blk),
                   "transformed weights and buffers");
    if (u != uf)
        dc_addressable(u, sizeof *u * pos * eu, "cached transformed weights");
    const wt_image_fn fn = four ? kn->winograd4 : kn->winograd;
    for (int n = 0; n < g->n; n++) {
        dc_addressable(x + (size_t)n * in_img, sizeof *x * in_img, "input");
        dc_addressable(y + (size_t)n * out_img, sizeof *y * out_img, "output");
        fn(g, x + (size_t)n * in_img, u, b, s, slope != NULL, y + (size_t)n * out_img, vbuf,
           mbuf);
    }
}
#endif

#if NN_HAVE_AVX2
/* The column tile (kn->cols index) for co output channels: the one that leaves the
 * fewest channels empty, the widest of equals. */
static int dc_tile_for(const dc_kernels *kn, int co)
{
    int t = 0, waste = (kn->cols[0].oc - co % kn->cols[0].oc) % kn->cols[0].oc;
    for (int i = 1; i < 3; i++) {
        const int oc = kn->cols[i].oc, wi = (oc - co % oc) % oc;
        if (wi < waste || (wi == waste && oc > kn->cols[t].oc)) {
            t = i;
            waste = wi;
        }
    }
    return t;
}
#endif

/* See nn_impl.h. */
int nn_wg_kernels(nn_wg_input_fn *in, nn_wg_output_fn *out)
{
#if NN_HAVE_AVX2
    if (fm_nn_isa_now() >= FM_NN_ISA_AVX2) {
        const dc_kernels *kn = dc_kernels_now();
        *in = kn->wg_input;
        *out = kn->wg_output;
        return 1;
    }
#endif
    (void)in, (void)out;
    return 0;
}

/* See nn_impl.h. */
void nn_conv_direct(const conv_geom *g, const float *x, const float *w, const float *bias,
                    const float *slope, int n_slope, float *y, float *scratch)
{
#if NN_HAVE_AVX2
    const dc_kernels *kn = dc_kernels_now();
    if (wt_fits(g)) {
        conv_winograd(kn, g, w4_fits(g), x, w, bias, slope, n_slope, y, scratch);
        return;
    }
    if (pt_fits(g)) {
        conv_positions(kn, g, x, w, bias, slope, n_slope, y, scratch);
        return;
    }
    const int t = dc_tile_for(kn, g->co);
    const int oct = dc_pack(g, w, bias, slope, n_slope, kn->cols[t].oc, scratch);
    float *wpk = scratch;
    float *b = wpk + (size_t)oct * (size_t)g->k;
    float *s = b + oct;
    const size_t in_img = (size_t)g->c * g->h * g->w, out_img = (size_t)g->co * g->p;
    dc_image_fn fn = kn->cols[t].image[g->kw == 1                 ? 0
                                       : g->kw == 2               ? 1
                                       : g->kw == 3 && g->kh == 3 ? 2
                                                                  : 3];
    const int flat = dc_flat(g);
    float *yf = s + oct; /* flat: oh x w per output channel */
    dc_addressable(wpk, sizeof *wpk * (size_t)oct * ((size_t)g->k + 2), "packed weights");
    for (int n = 0; n < g->n; n++) {
        float *yn = y + (size_t)n * out_img;
        dc_addressable(x + (size_t)n * in_img, sizeof *x * in_img, "input");
        dc_addressable(flat ? yf : yn,
                       sizeof *y * (flat ? (size_t)g->co * g->oh * g->w : out_img), "output");
        fn(g, x + (size_t)n * in_img, wpk, b, s, slope != NULL, flat ? yf : yn, flat);
        if (flat)
            flat_copy(yn, yf, g->co * g->oh, g->ow, g->w);
    }
#else
    (void)g, (void)x, (void)w, (void)bias, (void)slope, (void)n_slope, (void)y,
        (void)scratch;
#endif
}

/* See nn_impl.h. */
int nn_conv_flat_pool_fits(const conv_geom *g)
{
#if NN_HAVE_AVX2
    return nn_direct_fits(g) && !wt_fits(g) && !pt_fits(g) && dc_flat(g);
#else
    (void)g;
    return 0;
#endif
}

/* See nn_impl.h. */
void nn_conv_flat_pool(const conv_geom *g, int k, int ph, int pw, const float *x,
                       const float *w, const float *bias, const float *slope, int n_slope,
                       float *y, float *scratch)
{
#if NN_HAVE_AVX2
    const dc_kernels *kn = dc_kernels_now();
    const int t = dc_tile_for(kn, g->co);
    const int oct = dc_pack(g, w, bias, slope, n_slope, kn->cols[t].oc, scratch);
    float *wpk = scratch;
    float *b = wpk + (size_t)oct * (size_t)g->k;
    float *s = b + oct;
    const size_t in_img = (size_t)g->c * g->h * g->w;
    const size_t fplane = (size_t)g->oh * (size_t)g->w, pplane = (size_t)ph * (size_t)pw;
    dc_image_fn fn = kn->cols[t].image[g->kw == 1                 ? 0
                                       : g->kw == 2               ? 1
                                       : g->kw == 3 && g->kh == 3 ? 2
                                                                  : 3];
    float *yf = s + oct; /* flat: oh x w per output channel */
    dc_addressable(wpk, sizeof *wpk * (size_t)oct * ((size_t)g->k + 2), "packed weights");
    for (int n = 0; n < g->n; n++) {
        dc_addressable(x + (size_t)n * in_img, sizeof *x * in_img, "input");
        dc_addressable(yf, sizeof *yf * (size_t)g->co * fplane, "output");
        fn(g, x + (size_t)n * in_img, wpk, b, s, slope != NULL, yf, 1);
        float *yn = y + (size_t)n * (size_t)g->co * pplane;
        for (int c = 0; c < g->co; c++)
            nn_maxpool_s2_strided(yf + (size_t)c * fplane, g->oh, g->ow, (size_t)g->w, k,
                                  yn + (size_t)c * pplane, ph, pw);
    }
#else
    (void)g, (void)k, (void)ph, (void)pw, (void)x, (void)w, (void)bias, (void)slope,
        (void)n_slope, (void)y, (void)scratch;
#endif
}

/* See nn_impl.h. */
int nn_conv_pool_fits(const conv_geom *g)
{
#if NN_HAVE_AVX2
    return fm_nn_isa_now() >= FM_NN_ISA_AVX512 && nn_direct_fits(g) && !pt_fits(g) &&
           !wt_fits(g) && !dc_flat(g) && g->kh == 3 && g->kw == 3 && g->ow >= DC_MIN_OW &&
           g->k <= DC_MAX_K;
#else
    (void)g;
    return 0;
#endif
}

/* See nn_impl.h. */
void nn_conv_pool_direct(const conv_geom *g, int ph, int pw, const float *x, const float *w,
                         const float *bias, const float *slope, int n_slope, float *y,
                         float *scratch)
{
#if NN_HAVE_AVX2
    const dc_kernels *kn = dc_kernels_now();
    const int t = dc_tile_for(kn, g->co);
    const int oct = dc_pack(g, w, bias, slope, n_slope, kn->cols[t].oc, scratch);
    const float *wpk = scratch, *b = wpk + (size_t)oct * (size_t)g->k, *s = b + oct;
    const size_t in_img = (size_t)g->c * g->h * g->w;
    const size_t out_img = (size_t)g->co * (size_t)ph * (size_t)pw;
    dc_addressable(wpk, sizeof *wpk * (size_t)oct * ((size_t)g->k + 2), "packed weights");
    for (int n = 0; n < g->n; n++) {
        dc_addressable(x + (size_t)n * in_img, sizeof *x * in_img, "input");
        dc_addressable(y + (size_t)n * out_img, sizeof *y * out_img, "output");
        kn->pool[t](g, x + (size_t)n * in_img, wpk, b, s, slope != NULL,
                    y + (size_t)n * out_img, ph, pw);
    }
#else
    (void)g, (void)ph, (void)pw, (void)x, (void)w, (void)bias, (void)slope, (void)n_slope,
        (void)y, (void)scratch;
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

/* The row of maxpool_s2_row with AVX-512, the whole row: 16 outputs a step from input
 * columns [2 ox, 2 ox + 32 + (k == 3)), the columns past the input (the ceil-mode
 * overhang and beyond) loaded as -inf and the outputs past ow not stored, so no column
 * is left to a scalar tail (on R-Net's and O-Net's crops, 11 and 23 outputs wide, the
 * tail had been a third of the row). Returns ow. */
__attribute__((target("avx512f"))) static int maxpool_s2_row512(const float *const *rows,
                                                                int kr, int k, int in_w,
                                                                int ow, float *out)
{
    const __m512i even = even512(), odd = odd512();
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int ox = 0; ox < ow; ox += 16) {
        const int c0 = 2 * ox;
        __m512 m = ninf;
        /* shift 0: columns c0 + 2j and c0 + 2j + 1; shift 1 (k = 3): c0 + 2j + 2 */
        for (int shift = 0; shift < (k == 3 ? 2 : 1); shift++) {
            const int c = c0 + shift;
            const __mmask16 mlo = lanes16(in_w - c), mhi = lanes16(in_w - c - 16);
            __m512 lo = ninf, hi = ninf;
            for (int r = 0; r < kr; r++) {
                lo = _mm512_max_ps(lo, _mm512_mask_loadu_ps(ninf, mlo, rows[r] + c));
                hi = _mm512_max_ps(hi, _mm512_mask_loadu_ps(ninf, mhi, rows[r] + c + 16));
            }
            m = _mm512_max_ps(m, _mm512_permutex2var_ps(lo, odd, hi));
            if (shift == 0)
                m = _mm512_max_ps(m, _mm512_permutex2var_ps(lo, even, hi));
        }
        _mm512_mask_storeu_ps(out + ox, lanes16(ow - ox), m);
    }
    return ow;
}

/* A whole plane at most 32 columns wide (R-Net's and O-Net's crops after their first
 * convolutions, 22 down to 8 columns), with AVX-512: each output row is the maximum
 * of its input rows (two vectors each, the columns past w loaded as -inf), then of
 * columns 2j, 2j + 1 and (k = 3) 2j + 2 picked from those two vectors: one pass per
 * output row, no row-by-row set-up (which had been most of the time on these
 * planes). Column 2j + 2 of the last lane (j = 15, w = 32) is past the input: its
 * index repeats column 31, the maximum is the same. Same results as the row kernel. */
__attribute__((target("avx512f"))) static void maxpool_s2_small512(const float *xc, int h,
                                                                   int w, size_t stride,
                                                                   int k, float *yc, int oh,
                                                                   int ow)
{
    const __m512i even = even512(), odd = odd512();
    const __m512i next = _mm512_setr_epi32(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30, 31);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const __mmask16 mlo = lanes16(w), mhi = lanes16(w - 16), mout = lanes16(ow);
    for (int oy = 0; oy < oh; oy++) {
        __m512 lo = ninf, hi = ninf;
        for (int r = 0; r < k && 2 * oy + r < h; r++) {
            const float *row = xc + (size_t)(2 * oy + r) * stride;
            lo = _mm512_max_ps(lo, _mm512_mask_loadu_ps(ninf, mlo, row));
            hi = _mm512_max_ps(hi, _mm512_mask_loadu_ps(ninf, mhi, row + 16));
        }
        __m512 m = _mm512_max_ps(_mm512_permutex2var_ps(lo, even, hi),
                                 _mm512_permutex2var_ps(lo, odd, hi));
        if (k == 3)
            m = _mm512_max_ps(m, _mm512_permutex2var_ps(lo, next, hi));
        _mm512_mask_storeu_ps(yc + (size_t)oy * (size_t)ow, mout, m);
    }
}
#endif

/* See nn_impl.h. */
int nn_maxpool_s2(const float *xc, int h, int w, int k, float *yc, int oh, int ow)
{
    return nn_maxpool_s2_strided(xc, h, w, (size_t)w, k, yc, oh, ow);
}

/* See nn_impl.h. */
int nn_maxpool_s2_strided(const float *xc, int h, int w, size_t stride, int k, float *yc,
                          int oh, int ow)
{
#if NN_HAVE_AVX2
    if (fm_nn_isa_now() < FM_NN_ISA_AVX2 || (k != 2 && k != 3))
        return 0;
    const int wide = fm_nn_isa_now() >= FM_NN_ISA_AVX512;
    if (wide && w <= 32 && ow <= 16) {
        maxpool_s2_small512(xc, h, w, stride, k, yc, oh, ow);
        return 1;
    }
    for (int oy = 0; oy < oh; oy++) {
        const float *rows[3];
        int kr = 0;
        for (int r = 0; r < k && 2 * oy + r < h; r++)
            rows[kr++] = xc + (size_t)(2 * oy + r) * stride;
        float *out = yc + (size_t)oy * (size_t)ow;
        int ox = wide ? maxpool_s2_row512(rows, kr, k, w, ow, out)
                      : maxpool_s2_row(rows, kr, k, w, ow, out);
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
    (void)xc, (void)h, (void)w, (void)stride, (void)k, (void)yc, (void)oh, (void)ow;
    return 0;
#endif
}
