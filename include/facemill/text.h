/* text.h - strings that come from outside: UTF-8 decoding, the rules for the
 * identifiers peers choose (job ids, tags, worker names), and escaping for logs.
 *
 * Why one place: the broker checks what enters, the logger and the JSON writer escape
 * what they print, and they must agree on what a control character or a bad byte is.
 *
 * A control character is Unicode's category Cc: U+0000-U+001F, U+007F and
 * U+0080-U+009F. Valid UTF-8 is RFC 3629: shortest form, no surrogates, at most
 * U+10FFFF.
 */
#ifndef FACEMILL_TEXT_H
#define FACEMILL_TEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bounds of the identifiers peers choose, in bytes (proto/README.md). */
#define FM_TEXT_ID_MAX 256     /* Job.id (as FM_WIRE_JOB_ID_MAX) */
#define FM_TEXT_TAG_MAX 256    /* Job.tag */
#define FM_TEXT_NAME_MAX 127   /* WorkerReady.name, Heartbeat.name */

/* Decodes the UTF-8 sequence at s (n > 0 bytes available). Returns its length (1-4)
 * with *cp set, or 0 when the bytes there are not valid UTF-8 (*cp is then the first
 * byte). */
int fm_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

/* 1 when code point cp is a control character (category Cc). */
int fm_text_is_control(uint32_t cp);

/* What is wrong with an identifier, if anything (fm_text_fault). */
typedef enum fm_text_verdict {
    FM_TEXT_OK = 0,
    FM_TEXT_EMPTY,    /* NULL or "" */
    FM_TEXT_LONG,     /* more than max bytes */
    FM_TEXT_UTF8,     /* not valid UTF-8 */
    FM_TEXT_CONTROL,  /* holds a control character */
} fm_text_verdict;

/* The verdict on an identifier of at most max bytes; fm_text_check says the same in
 * words, with where. */
fm_text_verdict fm_text_fault(const char *s, size_t max);

/* Checks an identifier a peer chose: not empty, at most max bytes, valid UTF-8, no
 * control character (NUL included). Returns NULL when s passes, else why it does not
 * ("longer than 256 bytes", "not valid UTF-8", "holds control character U+001B", ...)
 * in buf. s may be NULL (empty). */
const char *fm_text_check(const char *s, size_t max, char *buf, size_t size);

/* Room fm_text_check needs for its reason. */
#define FM_TEXT_WHY_MAX 64

#ifdef __cplusplus
}
#endif
#endif
