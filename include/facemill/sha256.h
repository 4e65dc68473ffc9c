/* sha256.h - SHA-256 (FIPS 180-4) of image bytes and of files.
 *
 * Why it exists: results carry the content hash of every image, so the same picture
 * found twice (or again in a rerun) is recognised without trusting file names; model
 * files are listed and traced (expand.source_sha256) by the hash of their bytes.
 * No state is shared; a context is a plain value on the caller's stack.
 */
#ifndef FACEMILL_SHA256_H
#define FACEMILL_SHA256_H

#include "facemill/status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FM_SHA256_BYTES 32

typedef struct fm_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    size_t nbuf;
} fm_sha256;

void fm_sha256_init(fm_sha256 *s);
void fm_sha256_update(fm_sha256 *s, const void *data, size_t len);
/* Writes the 32-byte digest to out; s must be initialised again before reuse. */
void fm_sha256_final(fm_sha256 *s, uint8_t out[FM_SHA256_BYTES]);
/* One call: the digest of len bytes at data. */
void fm_sha256_digest(const void *data, size_t len, uint8_t out[FM_SHA256_BYTES]);
/* The digest as 64 lowercase hex digits plus NUL in hex. */
void fm_sha256_hex(const uint8_t digest[FM_SHA256_BYTES], char hex[2 * FM_SHA256_BYTES + 1]);

/* The digest of the whole file at path, read in chunks (any size), as 64 lowercase
 * hex digits plus NUL in hex. FM_ERR_IO with the path and the errno text when the file
 * cannot be opened or read, or why it is not a regular file (refused without blocking,
 * file.h; hex is then "-"); FM_ERR_INVALID for NULL arguments. */
fm_status fm_sha256_file(const char *path, char hex[2 * FM_SHA256_BYTES + 1],
                         fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
