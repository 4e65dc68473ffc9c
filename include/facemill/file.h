/* file.h - opening a file a program is told to read (a certificate, a model) without
 * waiting for anything that is not a regular file.
 *
 * Why it exists: open(2) of a FIFO for reading waits until something writes to it,
 * and reading a terminal or a device may never end, so a program given one of those
 * names would hang for ever before saying a word. The files opened here are read only
 * when they are regular files, which is found out without blocking: opened with
 * O_NONBLOCK, checked with fstat(2), then made blocking again. (Images have the same
 * rule in fm_decode_file, and the worker's by-path jobs in their own open; a
 * configuration may also be a pipe or a character device: fm_file_open_stream.)
 */
#ifndef FACEMILL_FILE_H
#define FACEMILL_FILE_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opens path read-only (close-on-exec, never as a controlling terminal) when it is a
 * regular file, without blocking on anything else. Returns the descriptor, blocking
 * as open(2) leaves it, or -1 with why it was not opened in *why (static text): the
 * error of open(2) or fstat(2), or "a FIFO, not a regular file" (a directory, a
 * device, a socket). */
int fm_file_open_regular(const char *path, const char **why);

/* fm_file_open_regular that also takes what a configuration may be: a pipe another
 * program writes (one without a name: a shell's <(...)) or a character device
 * (/dev/null). A named FIFO is still refused without waiting for a writer, and so are
 * directories, sockets and block devices. */
int fm_file_open_stream(const char *path, const char **why);

/* fm_file_open_regular as a stdio stream for reading ("rb"), or NULL with why set. */
FILE *fm_file_fopen_regular(const char *path, const char **why);

#ifdef __cplusplus
}
#endif
#endif
