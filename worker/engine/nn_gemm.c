/* nn_gemm.c - the engine's own single-threaded matrix multiply, C = A B (row-major, no
 * transposes), for the forward convolutions' products (Winograd's 16, im2col's, 1x1).
 *
 * Why it exists: those products are small and skinny (the dlib ResNet's Winograd
 * products are 32 to 128 channels deep over a few hundred blocks), so sgemm spends much
 * of its time packing, and its speed is whatever kernel set OpenBLAS runs: with
 * OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU, or OpenBLAS's SSE3 "Prescott" kernels on
 * a CPU it does not know, half or a third of what the CPU can do. Here the CPU's own
 * widest set runs whatever OpenBLAS chose, and nothing is packed: A's rows are read in
 * place (a broadcast per row and k), B's rows in place (one or two vectors per k).
 *
 * A tile of MR rows x NR columns of C stays in registers while k runs over A's columns
 * in blocks of KC (so a block of A stays in cache across B's column tiles): AVX-512
 * 8 x 32 (16 accumulators; 8 x 16 for the last 16 or fewer columns), AVX2 and FMA
 * 6 x 16 (12). Columns past n are masked, rows past m read row 0 and are not stored.
 * Products of one to four columns run with the lanes along C's rows instead
 * (nn_gemm_skinny, below), from A kept transposed. Every element of C is the sum of its k
 * products in the order of k, one fused multiply-add after the other from zero,
 * whatever the shapes, the tiles, the blocks and the instruction set: AVX2 and AVX-512
 * give the same bits, and a column's result does not depend on the others (a face's
 * answer does not depend on the faces multiplied with it).
 *
 * Used when the engine's kernels run AVX2 or better (fm_nn_isa_now) and BLAS runs one
 * thread (more threads: OpenBLAS's threaded sgemm, for training's large products);
 * otherwise, and after fm_nn_set_own_gemm(0), cblas_sgemm. */
#include "nn_impl.h"

#include <cblas.h>
#include <stdatomic.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define GEMM_X86 1
#include <immintrin.h>
#else
#define GEMM_X86 0
#endif

#ifndef GEMM_KC
#define GEMM_KC 256 /* k per block: 8 rows of A (8 KB) and B's 32-column panel (32 KB) */
#endif

static atomic_int own_gemm = 1;

int fm_nn_set_own_gemm(int on)
{
    return atomic_exchange(&own_gemm, on != 0);
}

#if GEMM_X86
/* C[0..mr) x [0..32) of one tile (+)= A[0..mr) x B over kc steps of k. a[r] is row r of
 * A at this block's first column; lanes of B outside m0/m1 are not read. */
/* The accumulators are named variables, not an array: an array indexed under the
 * row test stays in memory (GCC stores it on every step of k). */
#define ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)

static inline __attribute__((always_inline, target("avx512f"))) void
tile_8x32(int kc, const float *const a[8], const float *b, size_t ldb, float *c, size_t ldc,
          int mr, __mmask16 m0, __mmask16 m1, int add, const int two)
{
#define DECL(r)                                                                           \
    __m512 s##r##0 = _mm512_setzero_ps(), s##r##1 = _mm512_setzero_ps();                 \
    const float *a##r = a[r];                                                             \
    if (add && r < mr) {                                                                  \
        s##r##0 = _mm512_maskz_loadu_ps(m0, c + (size_t)(r)*ldc);                         \
        if (two)                                                                          \
            s##r##1 = _mm512_maskz_loadu_ps(m1, c + (size_t)(r)*ldc + 16);                \
    }
    ROWS8(DECL)
#undef DECL
    for (int k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
        const __m512 b1 = two ? _mm512_maskz_loadu_ps(m1, b + 16) : b0;
        b += ldb;
#define STEP(r)                                                                           \
    {                                                                                     \
        const __m512 x = _mm512_set1_ps(a##r[k]);                                         \
        s##r##0 = _mm512_fmadd_ps(x, b0, s##r##0);                                        \
        if (two)                                                                          \
            s##r##1 = _mm512_fmadd_ps(x, b1, s##r##1);                                    \
    }
        ROWS8(STEP)
#undef STEP
    }
#define STORE(r)                                                                          \
    if (r < mr) {                                                                         \
        _mm512_mask_storeu_ps(c + (size_t)(r)*ldc, m0, s##r##0);                          \
        if (two)                                                                          \
            _mm512_mask_storeu_ps(c + (size_t)(r)*ldc + 16, m1, s##r##1);                 \
    }
    ROWS8(STORE)
#undef STORE
}

/* The tile for 32 columns (masks all set, constant), for 17 to 31 and for 16 and fewer
 * (one vector per row). */
typedef void tile_8x32_fn(int kc, const float *const a[8], const float *b, size_t ldb,
                          float *c, size_t ldc, int mr, __mmask16 m0, __mmask16 m1, int add);
__attribute__((target("avx512f"))) static void tile_8x32_full(int kc, const float *const a[8],
                                                              const float *b, size_t ldb,
                                                              float *c, size_t ldc, int mr,
                                                              __mmask16 m0, __mmask16 m1,
                                                              int add)
{
    (void)m0, (void)m1;
    tile_8x32(kc, a, b, ldb, c, ldc, mr, 0xffff, 0xffff, add, 1);
}
__attribute__((target("avx512f"))) static void tile_8x32_part(int kc, const float *const a[8],
                                                              const float *b, size_t ldb,
                                                              float *c, size_t ldc, int mr,
                                                              __mmask16 m0, __mmask16 m1,
                                                              int add)
{
    tile_8x32(kc, a, b, ldb, c, ldc, mr, m0, m1, add, 1);
}
__attribute__((target("avx512f"))) static void tile_8x16_part(int kc, const float *const a[8],
                                                              const float *b, size_t ldb,
                                                              float *c, size_t ldc, int mr,
                                                              __mmask16 m0, __mmask16 m1,
                                                              int add)
{
    (void)m1;
    tile_8x32(kc, a, b, ldb, c, ldc, mr, m0, 0, add, 0);
}

__attribute__((target("avx512f"))) static void gemm_avx512(int m, int n, int k,
                                                           const float *a, size_t lda,
                                                           const float *b, size_t ldb,
                                                           float *c, size_t ldc)
{
    for (int k0 = 0; k0 < k; k0 += GEMM_KC) {
        const int kc = k - k0 < GEMM_KC ? k - k0 : GEMM_KC;
        for (int j = 0; j < n; j += 32) {
            const int cols = n - j < 32 ? n - j : 32;
            const __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xffff : (1u << cols) - 1);
            const __mmask16 m1 =
                (__mmask16)(cols >= 32 ? 0xffff : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
            for (int i = 0; i < m; i += 8) {
                const int mr = m - i < 8 ? m - i : 8;
                const float *rows[8];
                for (int r = 0; r < 8; r++)
                    rows[r] = a + (size_t)(i + (r < mr ? r : 0)) * lda + k0;
                tile_8x32_fn *tile = cols == 32  ? tile_8x32_full
                                     : cols > 16 ? tile_8x32_part
                                                 : tile_8x16_part;
                tile(kc, rows, b + (size_t)k0 * ldb + j, ldb, c + (size_t)i * ldc + j, ldc, mr,
                     m0, m1, k0 > 0);
            }
        }
    }
}

/* The AVX2 tile: 6 x 16, the same sums in the same order. */
__attribute__((target("avx2,fma"))) static void tile_6x16(int kc, const float *const a[6],
                                                          const float *b, size_t ldb,
                                                          float *c, size_t ldc, int mr,
                                                          __m256i q0, __m256i q1, int add)
{
#define DECL(r)                                                                           \
    __m256 s##r##0 = _mm256_setzero_ps(), s##r##1 = _mm256_setzero_ps();                 \
    const float *a##r = a[r];                                                             \
    if (add && r < mr) {                                                                  \
        s##r##0 = _mm256_maskload_ps(c + (size_t)(r)*ldc, q0);                            \
        s##r##1 = _mm256_maskload_ps(c + (size_t)(r)*ldc + 8, q1);                        \
    }
    ROWS6(DECL)
#undef DECL
    for (int k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_maskload_ps(b, q0), b1 = _mm256_maskload_ps(b + 8, q1);
        b += ldb;
#define STEP(r)                                                                           \
    {                                                                                     \
        const __m256 x = _mm256_broadcast_ss(a##r + k);                                   \
        s##r##0 = _mm256_fmadd_ps(x, b0, s##r##0);                                        \
        s##r##1 = _mm256_fmadd_ps(x, b1, s##r##1);                                        \
    }
        ROWS6(STEP)
#undef STEP
    }
#define STORE(r)                                                                          \
    if (r < mr) {                                                                         \
        _mm256_maskstore_ps(c + (size_t)(r)*ldc, q0, s##r##0);                            \
        _mm256_maskstore_ps(c + (size_t)(r)*ldc + 8, q1, s##r##1);                        \
    }
    ROWS6(STORE)
#undef STORE
}

__attribute__((target("avx2,fma"))) static void gemm_avx2(int m, int n, int k, const float *a,
                                                          size_t lda, const float *b,
                                                          size_t ldb, float *c, size_t ldc)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int k0 = 0; k0 < k; k0 += GEMM_KC) {
        const int kc = k - k0 < GEMM_KC ? k - k0 : GEMM_KC;
        for (int j = 0; j < n; j += 16) {
            const int cols = n - j < 16 ? n - j : 16;
            /* lanes below cols: all bits set, the sign bit maskload reads */
            const __m256i q0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lane);
            const __m256i q1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8), lane);
            for (int i = 0; i < m; i += 6) {
                const int mr = m - i < 6 ? m - i : 6;
                const float *rows[6];
                for (int r = 0; r < 6; r++)
                    rows[r] = a + (size_t)(i + (r < mr ? r : 0)) * lda + k0;
                tile_6x16(kc, rows, b + (size_t)k0 * ldb + j, ldb, c + (size_t)i * ldc + j,
                          ldc, mr, q0, q1, k0 > 0);
            }
        }
    }
}
#endif

/* ---- few columns: C = At^T B with A kept transposed (nn_gemm_skinny) ---------------
 * A product with one to four columns (a layer whose output is one pixel, for one to
 * four faces) fills one lane in sixteen of the tiles above. Here the lanes run along
 * C's rows instead: At (A transposed, k x m, a kept layout of the weights) gives
 * vectors of rows, B's element of each column is broadcast. Each element is still
 * the sum of its products in the order of k, one fused multiply-add after another
 * from zero: the same bits as nn_gemm's kernels. */
#if GEMM_X86
static inline __attribute__((always_inline, target("avx512f"))) void
skinny_512(int m, int k, const float *at, const float *b, size_t ldb, float *c, size_t ldc,
           const int n)
{
    for (int i0 = 0; i0 < m; i0 += 64) {
        __mmask16 mk[4];
        for (int v = 0; v < 4; v++) {
            const int left = m - i0 - 16 * v;
            mk[v] = (__mmask16)(left >= 16 ? 0xffff : left > 0 ? (1u << left) - 1 : 0);
        }
        __m512 s[4][4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                s[j][v] = _mm512_setzero_ps();
        const float *ap = at + i0, *bp = b;
        for (int q = 0; q < k; q++, ap += m, bp += ldb) {
            __m512 a[4];
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                a[v] = _mm512_maskz_loadu_ps(mk[v], ap + 16 * v);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                if (j < n) {
                    const __m512 x = _mm512_set1_ps(bp[j]);
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++)
                        s[j][v] = _mm512_fmadd_ps(a[v], x, s[j][v]);
                }
            }
        }
        /* C is row-major: column j of these rows, one element per row */
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            if (j < n) {
                float out[64];
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++)
                    _mm512_storeu_ps(out + 16 * v, s[j][v]);
                const int rows = m - i0 < 64 ? m - i0 : 64;
                for (int r = 0; r < rows; r++)
                    c[(size_t)(i0 + r) * ldc + j] = out[r];
            }
        }
    }
}

__attribute__((target("avx512f"))) static void skinny_avx512(int m, int n, int k,
                                                             const float *at, const float *b,
                                                             size_t ldb, float *c, size_t ldc)
{
    switch (n) {
    case 1: skinny_512(m, k, at, b, ldb, c, ldc, 1); break;
    case 2: skinny_512(m, k, at, b, ldb, c, ldc, 2); break;
    case 3: skinny_512(m, k, at, b, ldb, c, ldc, 3); break;
    default: skinny_512(m, k, at, b, ldb, c, ldc, 4); break;
    }
}

static inline __attribute__((always_inline, target("avx2,fma"))) void
skinny_256(int m, int k, const float *at, const float *b, size_t ldb, float *c, size_t ldc,
           const int n)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int i0 = 0; i0 < m; i0 += 16) {
        const __m256i q0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(m - i0), lane);
        const __m256i q1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(m - i0 - 8), lane);
        __m256 s[4][2];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            s[j][0] = s[j][1] = _mm256_setzero_ps();
        const float *ap = at + i0, *bp = b;
        for (int q = 0; q < k; q++, ap += m, bp += ldb) {
            const __m256 a0 = _mm256_maskload_ps(ap, q0), a1 = _mm256_maskload_ps(ap + 8, q1);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                if (j < n) {
                    const __m256 x = _mm256_broadcast_ss(bp + j);
                    s[j][0] = _mm256_fmadd_ps(a0, x, s[j][0]);
                    s[j][1] = _mm256_fmadd_ps(a1, x, s[j][1]);
                }
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            if (j < n) {
                float out[16];
                _mm256_storeu_ps(out, s[j][0]);
                _mm256_storeu_ps(out + 8, s[j][1]);
                const int rows = m - i0 < 16 ? m - i0 : 16;
                for (int r = 0; r < rows; r++)
                    c[(size_t)(i0 + r) * ldc + j] = out[r];
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void skinny_avx2(int m, int n, int k,
                                                            const float *at, const float *b,
                                                            size_t ldb, float *c, size_t ldc)
{
    switch (n) {
    case 1: skinny_256(m, k, at, b, ldb, c, ldc, 1); break;
    case 2: skinny_256(m, k, at, b, ldb, c, ldc, 2); break;
    case 3: skinny_256(m, k, at, b, ldb, c, ldc, 3); break;
    default: skinny_256(m, k, at, b, ldb, c, ldc, 4); break;
    }
}
#endif

int fm_nn_own_gemm_active(void)
{
#if GEMM_X86
    return atomic_load_explicit(&own_gemm, memory_order_relaxed) && nn_blas_threads() == 1 &&
           fm_nn_isa_now() >= FM_NN_ISA_AVX2;
#else
    return 0;
#endif
}

void nn_gemm_skinny(int m, int n, int k, const float *at, const float *b, int ldb, float *c,
                    int ldc)
{
#if GEMM_X86
    if (fm_nn_isa_now() >= FM_NN_ISA_AVX512)
        skinny_avx512(m, n, k, at, b, (size_t)ldb, c, (size_t)ldc);
    else
        skinny_avx2(m, n, k, at, b, (size_t)ldb, c, (size_t)ldc);
#else
    (void)m, (void)n, (void)k, (void)at, (void)b, (void)ldb, (void)c, (void)ldc;
#endif
}

void nn_gemm(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
             int ldc)
{
#if GEMM_X86
    if (fm_nn_own_gemm_active()) {
        const fm_nn_isa isa = fm_nn_isa_now();
        if (isa >= FM_NN_ISA_AVX512) {
            gemm_avx512(m, n, k, a, (size_t)lda, b, (size_t)ldb, c, (size_t)ldc);
            return;
        }
        if (isa >= FM_NN_ISA_AVX2) {
            gemm_avx2(m, n, k, a, (size_t)lda, b, (size_t)ldb, c, (size_t)ldc);
            return;
        }
    }
#endif
    nn_blas_ready();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb,
                0.0f, c, ldc);
}
