/* text.c - UTF-8 decoding and the identifier rules of text.h. */
#include "facemill/text.h"

#include <stdio.h>
#include <string.h>

int fm_utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    *cp = c;
    if (c < 0x80)
        return 1;
    int len;
    uint32_t v, min;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2, v = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, v = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0; /* a continuation byte, an overlong lead (C0, C1) or beyond U+10FFFF */
    }
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return len;
}

int fm_text_is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

const char *fm_text_check(const char *s, size_t max, char *buf, size_t size)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0) {
        snprintf(buf, size, "empty");
        return buf;
    }
    if (n > max) {
        snprintf(buf, size, "longer than %zu bytes (%zu)", max, n);
        return buf;
    }
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = fm_utf8_next(p + i, n - i, &cp);
        if (k == 0) {
            snprintf(buf, size, "not valid UTF-8 (byte 0x%02x at %zu)", (unsigned)cp, i);
            return buf;
        }
        if (fm_text_is_control(cp)) {
            snprintf(buf, size, "holds control character U+%04X at byte %zu", (unsigned)cp, i);
            return buf;
        }
        i += (size_t)k;
    }
    return NULL;
}
