/* clock.c - the monotonic clock of include/facemill/clock.h. */
#include "facemill/clock.h"

#include <time.h>

double fm_now_ms(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail on Linux for a valid pointer */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}
