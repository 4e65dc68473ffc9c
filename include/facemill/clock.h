/* clock.h - the one clock facemill measures durations with.
 *
 * Why it exists: stage times, training progress, timeouts and rates all subtract two
 * readings of the same clock. CLOCK_MONOTONIC never jumps with the wall clock (NTP,
 * an administrator's date), so a difference is always an elapsed time; one helper
 * keeps every caller on that clock and in one unit.
 */
#ifndef FACEMILL_CLOCK_H
#define FACEMILL_CLOCK_H

#ifdef __cplusplus
extern "C" {
#endif

/* Milliseconds of CLOCK_MONOTONIC, with the sub-millisecond part as the fraction
 * (a double holds nanoseconds exactly for the first 100 days of uptime and to
 * better than a microsecond for centuries). Only differences of two readings mean
 * anything. Thread-safe, async-signal-safe. */
double fm_now_ms(void);

#ifdef __cplusplus
}
#endif
#endif
