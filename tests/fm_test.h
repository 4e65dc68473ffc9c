/* fm_test.h - the few helpers every test program uses: a check macro that reports
 * file and line and keeps going, and a summary that sets the exit code.
 * Tests are plain programs: exit 0 passes, 77 skips, anything else fails. */
#ifndef FM_TEST_H
#define FM_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int fm_test_failures;
static int fm_test_checks;

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

/* Prints "N checks, M failed" and returns the exit code for main. */
static inline int fm_test_done(const char *name)
{
    fprintf(stderr, "%s: %d checks, %d failed\n", name, fm_test_checks, fm_test_failures);
    return fm_test_failures ? 1 : 0;
}

#endif
