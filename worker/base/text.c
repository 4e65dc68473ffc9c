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

/* The verdict on s (n bytes, at most max), with the byte offset and the code point
 * (or bad byte) it is about. */
static fm_text_verdict judge(const char *s, size_t max, size_t *at, uint32_t *what)
{
    size_t n = s ? strlen(s) : 0;
    *at = n;
    *what = 0;
    if (n == 0)
        return FM_TEXT_EMPTY;
    if (n > max)
        return FM_TEXT_LONG;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        int k = fm_utf8_next(p + i, n - i, what);
        *at = i;
        if (k == 0)
            return FM_TEXT_UTF8;
        if (fm_text_is_control(*what))
            return FM_TEXT_CONTROL;
        i += (size_t)k;
    }
    return FM_TEXT_OK;
}

fm_text_verdict fm_text_fault(const char *s, size_t max)
{
    size_t at;
    uint32_t what;
    return judge(s, max, &at, &what);
}

const char *fm_text_check(const char *s, size_t max, char *buf, size_t size)
{
    size_t at;
    uint32_t what;
    switch (judge(s, max, &at, &what)) {
    case FM_TEXT_OK: return NULL;
    case FM_TEXT_EMPTY: snprintf(buf, size, "empty"); break;
    case FM_TEXT_LONG: snprintf(buf, size, "longer than %zu bytes (%zu)", max, at); break;
    case FM_TEXT_UTF8:
        snprintf(buf, size, "not valid UTF-8 (byte 0x%02x at %zu)", (unsigned)what, at);
        break;
    case FM_TEXT_CONTROL:
        snprintf(buf, size, "holds control character U+%04X at byte %zu", (unsigned)what, at);
        break;
    }
    return buf;
}
