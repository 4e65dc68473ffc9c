/* test_model_f16.c - binary16 <-> binary32 conversion (worker/model_f16.c).
 *
 * Why it exists: a compact model file is expanded on every machine, by this code or by
 * models/tools/fmmodel.py, and must give the same floats everywhere. The checks run
 * against references computed a different way (ldexp and the FPU's own
 * round-to-nearest-even through nearbyint in double precision):
 *  - every one of the 65,536 halfs: f16 -> f32 is the exact value, and f32 -> f16
 *    gives the same bits back (NaN payloads and signed zeros included);
 *  - every tie between two neighbouring halfs goes to the even one, and one float
 *    either side of it goes to the nearer one (normal, subnormal, the boundary
 *    between them, and the top of the range);
 *  - subnormal boundaries, underflow to signed zero, overflow to infinity, NaNs;
 *  - a sweep of 17 million floats spread over all 2^32 bit patterns.
 */
#include "facemill/model.h"
#include "fm_test.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static uint32_t bits_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The value of half h, computed from its fields with ldexp (finite h only). */
static double ref_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return (h & 0x8000) ? -v : v;
}

/* The nearest half to finite x, ties to even, using the FPU's rounding (nearbyint in
 * the default mode) on exact double products instead of bit manipulation. */
static uint16_t ref_round(float x)
{
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs((double)x);
    if (a < ldexp(1, -14)) {
        double n = nearbyint(a * ldexp(1, 24)); /* exact product, 0..1024 */
        return sign | (uint16_t)n;              /* 1024 is the smallest normal */
    }
    int k;
    frexp(a, &k); /* a = f x 2^k, f in [0.5, 1) */
    int E = k - 1;
    double n = nearbyint(ldexp(a, 10 - E)); /* 1024..2048 */
    if (n == 2048) {
        E++;
        n = 1024;
    }
    if (E > 15)
        return sign | 0x7c00;
    return sign | (uint16_t)(((E + 15) << 10) | ((int)n - 1024));
}

static void test_all_halfs(void)
{
    int bad_value = 0, bad_back = 0, nans = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = fm_model_f16_to_f32(h);
        uint32_t fb = bits_of(f);
        int e = (h >> 10) & 0x1f, m = h & 0x3ff;
        if (e == 0x1f) {
            /* Infinity or NaN: sign, all-ones exponent, payload shifted up. */
            uint32_t want = (uint32_t)(h & 0x8000) << 16 | 0x7f800000u | (uint32_t)m << 13;
            if (fb != want)
                bad_value++;
            if (m) {
                nans++;
                if (!isnan(f))
                    bad_value++;
            } else if (!isinf(f)) {
                bad_value++;
            }
        } else {
            double want = ref_value(h);
            if ((double)f != want || !signbit(f) != !signbit(want))
                bad_value++;
            if (ref_round(f) != h)
                bad_value++;
        }
        if (fm_model_f32_to_f16(f) != h) {
            if (bad_back < 5)
                fprintf(stderr, "half 0x%04x -> 0x%08x -> 0x%04x\n", h, fb,
                        fm_model_f32_to_f16(f));
            bad_back++;
        }
    }
    CHECK_MSG(bad_value == 0, "%d halfs expand to a wrong float", bad_value);
    CHECK_MSG(bad_back == 0, "%d halfs do not survive f16 -> f32 -> f16", bad_back);
    CHECK(nans == 2 * 1023);
}

/* The midpoint between every two neighbouring finite halfs of the same sign (the
 * midpoint is exact in binary32: 13 more fraction bits), and the floats next to it. */
static void test_ties(void)
{
    int bad = 0, ties = 0;
    for (uint32_t s = 0; s < 2; s++) {
        for (uint32_t i = 0; i < 0x7bff; i++) {
            uint16_t lo = (uint16_t)(i | s << 15), hi = (uint16_t)(lo + 1);
            double mid = (ref_value(lo) + ref_value(hi)) / 2;
            float fm = (float)mid;
            if ((double)fm != mid) {
                bad++;
                continue;
            }
            uint16_t even = (lo & 1) ? hi : lo;
            float towards_lo = nextafterf(fm, (float)ref_value(lo));
            float towards_hi = nextafterf(fm, (float)ref_value(hi));
            if (fm_model_f32_to_f16(fm) != even || fm_model_f32_to_f16(towards_lo) != lo ||
                fm_model_f32_to_f16(towards_hi) != hi) {
                if (bad < 5)
                    fprintf(stderr, "tie 0x%04x/0x%04x: got 0x%04x 0x%04x 0x%04x\n", lo, hi,
                            fm_model_f32_to_f16(towards_lo), fm_model_f32_to_f16(fm),
                            fm_model_f32_to_f16(towards_hi));
                bad++;
            }
            ties++;
        }
    }
    CHECK_MSG(bad == 0, "%d of %d ties rounded wrong", bad, ties);
    CHECK(ties == 2 * 0x7bff);
}

static void test_boundaries(void)
{
    const float tiny = ldexpf(1, -24);   /* smallest subnormal half */
    const float normal = ldexpf(1, -14); /* smallest normal half */
    struct {
        float x;
        uint16_t want;
        const char *what;
    } cases[] = {
        {0.0f, 0x0000, "zero"},
        {-0.0f, 0x8000, "negative zero"},
        {1.0f, 0x3c00, "one"},
        {-2.0f, 0xc000, "minus two"},
        {0.1f, 0x2e66, "0.1"},
        {1.0f / 3, 0x3555, "1/3"},
        {tiny, 0x0001, "smallest subnormal"},
        {-tiny, 0x8001, "minus smallest subnormal"},
        {tiny / 2, 0x0000, "half the smallest subnormal: tie to even zero"},
        {-tiny / 2, 0x8000, "minus half the smallest subnormal: negative zero"},
        {nextafterf(tiny / 2, 1), 0x0001, "just above half the smallest subnormal"},
        {nextafterf(tiny / 2, 0), 0x0000, "just below half the smallest subnormal"},
        {tiny * 1.5f, 0x0002, "1.5 x smallest: tie to even 2"},
        {tiny * 2.5f, 0x0002, "2.5 x smallest: tie to even 2"},
        {ldexpf(1, -30), 0x0000, "2^-30 underflows"},
        {FLT_MIN, 0x0000, "smallest normal float underflows"},
        {float_of(1), 0x0000, "smallest float subnormal"},
        {float_of(0x80000001u), 0x8000, "minus smallest float subnormal"},
        {1023 * tiny, 0x03ff, "largest subnormal half"},
        {1023.5f * tiny, 0x0400, "largest subnormal + half: tie to even = smallest normal"},
        {normal, 0x0400, "smallest normal half"},
        {nextafterf(normal, 0), 0x0400, "just below the smallest normal rounds up to it"},
        {65504.0f, 0x7bff, "largest half"},
        {-65504.0f, 0xfbff, "minus largest half"},
        {65519.0f, 0x7bff, "65519"},
        {nextafterf(65520.0f, 0), 0x7bff, "just below 65520"},
        {65520.0f, 0x7c00, "65520 overflows (tie to even 2^16)"},
        {-65520.0f, 0xfc00, "-65520 overflows"},
        {65536.0f, 0x7c00, "2^16"},
        {1e6f, 0x7c00, "1e6"},
        {FLT_MAX, 0x7c00, "FLT_MAX"},
        {-FLT_MAX, 0xfc00, "-FLT_MAX"},
        {INFINITY, 0x7c00, "infinity"},
        {-INFINITY, 0xfc00, "minus infinity"},
        {2049.0f, 0x6800, "2049: tie to even 2048"},
        {2051.0f, 0x6802, "2051: tie to even 2052"},
        {float_of(0x7fc00000u), 0x7e00, "quiet NaN"},
        {float_of(0xffc00000u), 0xfe00, "negative quiet NaN"},
        {float_of(0x7f800001u), 0x7c01, "NaN with only low payload bits stays NaN"},
        {float_of(0x7fa00000u), 0x7d00, "signalling NaN keeps its payload, not quieted"},
        {float_of(0x7fffffffu), 0x7fff, "NaN, all payload bits"},
        {float_of(0xff801fffu), 0xfc01, "negative NaN, low payload"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint16_t got = fm_model_f32_to_f16(cases[i].x);
        CHECK_MSG(got == cases[i].want, "%s: 0x%08x -> 0x%04x, want 0x%04x", cases[i].what,
                  bits_of(cases[i].x), got, cases[i].want);
    }
    /* Every float subnormal and every float below 2^-25 flushes to a signed zero. */
    int bad = 0;
    for (uint32_t u = 0; u < 0x33000000u; u += 4099)
        bad += fm_model_f32_to_f16(float_of(u)) != 0 ||
               fm_model_f32_to_f16(float_of(u | 0x80000000u)) != 0x8000;
    CHECK_MSG(bad == 0, "%d tiny floats did not flush to zero", bad);
}

/* Floats spread over every bit pattern (a prime stride), against ref_round. */
static void test_sweep(void)
{
    uint64_t n = 0, bad = 0;
    for (uint64_t u = 0; u <= UINT32_MAX; u += 61) {
        float x = float_of((uint32_t)u);
        if (isnan(x))
            continue;
        n++;
        uint16_t got = fm_model_f32_to_f16(x), want = ref_round(x);
        if (got != want) {
            if (bad < 5)
                fprintf(stderr, "0x%08x: got 0x%04x, want 0x%04x\n", (uint32_t)u, got, want);
            bad++;
        }
    }
    CHECK_MSG(bad == 0, "%llu of %llu floats rounded wrong", (unsigned long long)bad,
              (unsigned long long)n);
    /* Every multiple of 61 below 2^32, less those in the two NaN ranges
     * [0x7f800001, 0x7fffffff] and [0xff800001, 0xffffffff]: the sweep saw them all. */
    const uint64_t m = 61, total = (uint64_t)UINT32_MAX / m + 1;
    const uint64_t nan_pos = 0x7fffffffu / m - 0x7f800000u / m,
                   nan_neg = (uint64_t)0xffffffffu / m - 0xff800000u / m;
    CHECK_MSG(n == total - nan_pos - nan_neg, "sweep saw %llu floats, want %llu",
              (unsigned long long)n, (unsigned long long)(total - nan_pos - nan_neg));
    fprintf(stderr, "sweep: %llu floats\n", (unsigned long long)n);
}

int main(void)
{
    test_all_halfs();
    test_ties();
    test_boundaries();
    test_sweep();
    return fm_test_done("test_model_f16");
}
