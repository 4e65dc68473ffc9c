/* model_f16.c - IEEE binary16 <-> binary32 conversion for compact model files.
 *
 * Why it exists: trained weights are committed in a compact form (f16 tensors, half
 * the size) and expanded once on each machine into the f32 file that workers map.
 * The same committed file must expand to the same bytes everywhere, whichever
 * expander runs (this one, or models/tools/fmmodel.py before the C build exists), so
 * the conversion is done on bit patterns with integer arithmetic only: no dependence
 * on the FPU's rounding mode, on F16C instructions being present, or on how a
 * compiler or numpy treats signalling NaNs. The rules (round to nearest even,
 * subnormals, overflow, NaN payloads) are those of model.h and fmmodel.py.
 */
#include "facemill/model.h"

#include <string.h>

_Static_assert(sizeof(float) == 4, "binary32 floats");

uint16_t fm_model_f32_to_f16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;

    if (a >= 0x7f800000u) {
        if (a == 0x7f800000u)
            return sign | 0x7c00u; /* infinity */
        /* NaN: keep the top 10 payload bits; never let it collapse to infinity. */
        uint16_t payload = (uint16_t)((a >> 13) & 0x3ffu);
        return sign | 0x7c00u | (payload ? payload : 1u);
    }
    /* 65520 = 65504 + half an ulp: the tie goes to the even neighbour 2^16, which
     * does not exist in binary16, so it and everything above become infinity. */
    if (a >= 0x477ff000u)
        return sign | 0x7c00u;
    if (a >= 0x38800000u) {
        /* Normal half (|x| >= 2^-14): rebias the exponent from 127 to 15 and round
         * the 23-bit fraction to 10 bits; a carry out of the fraction correctly
         * bumps the exponent. */
        uint32_t r = a - 0x38000000u;
        r += 0x0fffu + ((r >> 13) & 1u);
        return sign | (uint16_t)(r >> 13);
    }
    /* Below 2^-25 everything rounds to zero (2^-25 itself is the tie between 0 and
     * the smallest subnormal 2^-24, and goes to the even one, 0: handled below). */
    if (a < 0x33000000u)
        return sign;
    /* Subnormal half: the value in units of 2^-24 is the 24-bit significand shifted
     * right by 126 - exponent (14..24 here), rounded to nearest even. The largest
     * results round up to 0x400, which is exactly the smallest normal half. */
    const uint32_t e = a >> 23;
    const uint32_t sig = (a & 0x7fffffu) | 0x800000u;
    const unsigned shift = 126u - e;
    const uint32_t q = sig >> shift, rem = sig & ((1u << shift) - 1u),
                   halfway = 1u << (shift - 1u);
    const uint32_t r = q + (rem > halfway || (rem == halfway && (q & 1u)));
    return sign | (uint16_t)r;
}

float fm_model_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu, u;
    if (e == 0x1fu) {
        u = sign | 0x7f800000u | (m << 13); /* infinity, or NaN with its payload */
    } else if (e) {
        u = sign | ((e + 112u) << 23) | (m << 13);
    } else if (!m) {
        u = sign; /* signed zero */
    } else {
        /* Subnormal half m x 2^-24: normalise so the leading 1 becomes implicit. */
        uint32_t k = 0;
        while (!(m & 0x400u)) {
            m <<= 1;
            k++;
        }
        u = sign | ((113u - k) << 23) | ((m & 0x3ffu) << 13);
    }
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}
