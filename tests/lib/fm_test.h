/* fm_test.h - what the test programs share (the fm_testlib library, tests/lib): a
 * check macro that reports file and line and keeps going, and a summary that sets the
 * exit code; whole files read, written and copied; scratch directories; child
 * programs run and waited for; waiting for a condition with a deadline; a seeded
 * random generator; where the source tree and the build's programs are.
 *
 * Tests are plain programs: exit 0 passes, 77 (FM_TEST_SKIP) skips, anything else
 * fails. Nothing here is thread-safe: a test checks from one thread. Messages about a
 * helper's own failure (a file that cannot be written, a program that cannot start)
 * go to stderr, so a caller only counts them.
 */
#ifndef FM_TEST_H
#define FM_TEST_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

/* ---- checks ---------------------------------------------------------------------- */

extern int fm_test_checks;   /* CHECKs run */
extern int fm_test_failures; /* CHECKs failed */

#define CHECK(cond)                                                                     \
    do {                                                                                \
        fm_test_checks++;                                                               \
        if (!(cond)) {                                                                  \
            fm_test_failures++;                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                               \
    } while (0)

#define CHECK_MSG(cond, ...)                                                            \
    do {                                                                                \
        fm_test_checks++;                                                               \
        if (!(cond)) {                                                                  \
            fm_test_failures++;                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                               \
            fputc('\n', stderr);                                                        \
        }                                                                               \
    } while (0)

#define FM_TEST_SKIP 77

/* Prints "NAME: N checks, M failed" and returns the exit code for main: 1 when a
 * check failed, else 0. */
int fm_test_done(const char *name);

/* Prints "NAME: skipped: " and the reason, and returns FM_TEST_SKIP for main. */
int fm_test_skip(const char *name, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- where things are -------------------------------------------------------------- */

/* The source tree: FACEMILL_SOURCE_DIR (ctest sets it), else the tree this library was
 * built from. Never NULL. */
const char *fm_test_source_dir(void);

/* The build's programs (facemill, facemill-broker, ...): FACEMILL_BIN_DIR (ctest sets
 * it), else BUILD/bin of the build this library belongs to. Never NULL. */
const char *fm_test_bin_dir(void);

/* SOURCE/rel (fm_test_source_dir) and BIN/program (fm_test_bin_dir) into buf; return
 * buf. A path that does not fit in size ends the test program (exit 1). */
char *fm_test_source_path(char *buf, size_t size, const char *rel);
char *fm_test_bin_path(char *buf, size_t size, const char *program);

/* ---- files and directories ---------------------------------------------------------- */

/* The whole of the file at path, with a NUL byte after it (not counted in *len, so
 * text can be used as a string); *len (when len is not NULL) gets its size. NULL when
 * it cannot be read. Caller frees. */
void *fm_test_read_file(const char *path, size_t *len);

/* What is left of f, from where it stands to its end (a pipe too), with a NUL byte
 * after it; *len as above. NULL when reading fails. f stays open. Caller frees. */
void *fm_test_read_stream(FILE *f, size_t *len);

/* All that is in the seekable stream f (a tmpfile() written to), read from its start:
 * for checking what a function wrote. As fm_test_read_stream otherwise. */
void *fm_test_read_back(FILE *f, size_t *len);

/* Writes size bytes of data to path (created or truncated). 0, or -1 with a message. */
int fm_test_write_file(const char *path, const void *data, size_t size);

/* Copies the file from to the path to (created or truncated). 0, or -1 with a
 * message. */
int fm_test_copy_file(const char *from, const char *to);

/* Makes a new directory TMPDIR/fm_test_NAME.XXXXXX (/tmp when TMPDIR is unset or
 * empty) and writes its path into dir. 0, or -1 with a message. */
int fm_test_tmpdir(char *dir, size_t size, const char *name);

/* Removes path and everything below it; symbolic links are removed, not followed.
 * 0 when it is gone (or was never there), -1 with a message. */
int fm_test_remove_tree(const char *path);

/* ---- child programs ---------------------------------------------------------------- */

/* Starts the program argv[0] (a path) with argv (NULL-terminated); its stdout goes to
 * /dev/null when quiet. Returns its pid, or -1 with a message. */
pid_t fm_test_start(char *const argv[], int quiet);

/* Waits for pid to end, at most timeout_ms (< 0: as long as it takes). Returns its wait
 * status (WIFEXITED, WEXITSTATUS), or -1 when it did not end in time: it is then
 * killed (SIGKILL) and reaped. */
int fm_test_reap(pid_t pid, int timeout_ms);

/* Runs argv (as fm_test_start) to its end. Returns its exit code, or -1 when it could
 * not start or was ended by a signal. */
int fm_test_run(char *const argv[], int quiet);

/* ---- time ---------------------------------------------------------------------------- */

/* Sleeps ms milliseconds (the rest of them after a signal). */
void fm_test_sleep_ms(long ms);

/* Arms SIGALRM seconds from now with a handler that does nothing and restarts no
 * system call, so an open or read that would wait for ever (a FIFO without a writer)
 * fails with EINTR instead: a test of what must not block fails rather than hangs.
 * 0 disarms it and puts the signal's former action back. */
void fm_test_alarm(unsigned seconds);

/* Calls cond(ctx) until it returns non-zero, every 10 ms, for at most timeout_ms of
 * fm_now_ms (include/facemill/clock.h). Returns 1 when cond held, 0 when the deadline
 * passed first. Waits for a condition, never for a time: a slow machine only makes a
 * passing wait longer. */
int fm_test_wait_for(int (*cond)(void *ctx), void *ctx, int timeout_ms);

/* ---- random numbers ------------------------------------------------------------------ */

/* xorshift64 (shifts 13, 7, 17): a fixed seed gives the same numbers on every machine,
 * so a test's random cases are the same cases every run. One generator per test (or
 * per purpose), seeded with FM_TEST_RNG(seed), seed not 0. */
typedef struct fm_test_rng {
    uint64_t state;
} fm_test_rng;

#define FM_TEST_RNG(seed) {(seed)}

/* The next state (64 random bits). */
uint64_t fm_test_rng_next(fm_test_rng *r);

/* 32 random bits (bits 16..47 of the next state). */
uint32_t fm_test_rng_u32(fm_test_rng *r);

/* Uniform in [0, n), n > 0 (fm_test_rng_u32 modulo n). */
int fm_test_rng_int(fm_test_rng *r, int n);

/* Uniform in [0, 1), 53 bits. */
double fm_test_rng_uniform(fm_test_rng *r);

/* Uniform in [lo, hi) (fm_test_rng_uniform scaled). */
double fm_test_rng_range(fm_test_rng *r, double lo, double hi);

/* Uniform in [-1, 1), from 32 bits (fm_test_rng_u32). */
float fm_test_rng_signed(fm_test_rng *r);

/* ---- memory -------------------------------------------------------------------------- */

/* malloc(size) (size 0: 1 byte) that ends the test program with "out of memory" (exit
 * 1) when there is none: for the test's own buffers, never for what it checks. */
void *fm_test_alloc(size_t size);

#endif
