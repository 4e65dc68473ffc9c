/* blas.h - the OpenBLAS kernel set a program computes with: chosen, not suffered.
 *
 * Why it exists: OpenBLAS builds with DYNAMIC_ARCH (Debian's) pick their kernels from
 * the CPU's identity when the library loads. A CPU the release does not know gets the
 * SSE3 "Prescott" kernels, about 3x slower than the AVX2 ones it could run; and some
 * CPU / OpenBLAS pairs compute wrong results with kernels the CPU claims to support.
 * The kernel set can only be chosen before OpenBLAS initialises, through the
 * environment variable OPENBLAS_CORETYPE, so a program that should run another set
 * re-executes itself (/proc/self/exe, the same arguments) with that variable set, and the
 * new process checks the new kernels numerically before it computes anything.
 *
 * The setting, engine.blas_kernels:
 *   auto  when OpenBLAS picked kernels for an older instruction set than the CPU and
 *         the operating system support, switch to the best set for the CPU (cpuid:
 *         AVX-512 F/CD/BW/DQ/VL -> SkylakeX, Cooperlake with AVX512_BF16; AVX2 + FMA ->
 *         Haswell, Zen on AMD and Hygon; AVX -> Sandybridge); otherwise keep
 *         OpenBLAS's choice. Kernel sets for the same instruction set (Haswell and Zen)
 *         count as equal: no switch between them.
 *   keep  OpenBLAS's choice; nothing is looked at or changed.
 *   NAME  that kernel set (an OpenBLAS core name, any case: Haswell, Zen, SkylakeX,
 *         Sandybridge, Prescott, ...), whatever the CPU.
 * OPENBLAS_CORETYPE set in the environment before the program started is the user's
 * choice and wins over every setting: it is never changed.
 *
 * The self-check: cblas_sgemm on pseudo-random matrices of awkward shapes, in the
 * three layouts the engine calls (A B, A B^T, A^T B; beta 0 and 1), against a plain
 * loop in double precision. It runs in a child process forked by the re-executed
 * program, so kernels that crash (an instruction the CPU lacks: SIGILL) or hang (20 s)
 * fail it like wrong results do. On failure the program re-executes once more with
 * OpenBLAS's own choice and says why. A test hook, read by the self-check only:
 * FACEMILL_BLAS_SELFTEST_FAIL=1 corrupts one result element, =crash raises SIGILL.
 *
 * Processes: FM_BLAS_ENV_MARK in the environment records what was decided, as
 * "STATE:NAME:ORIGINAL[:DETAIL]" with STATE check (re-executed to try NAME), ok (NAME
 * passed) or failed (NAME failed; OPENBLAS_CORETYPE removed again). A process started
 * by a facemill program (facemill label's workers, forked pipeline processes) inherits
 * the decision and does not check again; a mark that does not match OPENBLAS_CORETYPE
 * is ignored. Every state leads to at most one more exec, so nothing loops.
 *
 * Cost: cpuid and a string comparison when nothing changes; one exec of the program
 * plus a fork and about 2 ms of sgemm when it switches.
 */
#ifndef FACEMILL_BLAS_H
#define FACEMILL_BLAS_H

#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The environment variable that carries the decision to re-executed and child
 * processes. */
#define FM_BLAS_ENV_MARK "FACEMILL_BLAS_KERNELS"

/* What runs and why. */
typedef struct fm_blas_choice {
    char core[32];     /* the kernel set running (openblas_get_corename) */
    char reason[512];  /* why, one sentence for the log */
    double check_ms;   /* the self-check in this process (fork, run, wait); 0: none */
    int switched;      /* 1 when this process was re-executed to run core */
} fm_blas_choice;

/* Applies setting ("auto", "keep" or a kernel set name; see above) to this process.
 * Call at start-up, in the program's main thread, before anything runs BLAS or reads
 * standard input. It may replace the process image (execv of /proc/self/exe with the
 * command line the program was started with, /proc/self/cmdline; stdio flushed
 * first), in which case it does not return here: the new process calls it again from
 * main and gets the answer. Returns FM_OK with *out filled when the process goes on with the kernels
 * in *out (whatever went wrong on the way is in out->reason: the program runs on with
 * OpenBLAS's choice); FM_ERR_INVALID when setting is none of the accepted values;
 * FM_ERR_INTERNAL when the kernels this process runs failed the self-check and the
 * process could not re-execute with others (it must not compute). */
fm_status fm_blas_select(const char *setting, fm_blas_choice *out, fm_error *err);

/* The last choice fm_blas_select made in this process (or inherited through fork):
 * 1 and *out filled, 0 when it has not run. */
int fm_blas_selected(fm_blas_choice *out);

/* GFLOPS of the fastest of five 1024^3 cblas_sgemm calls on the calling thread's
 * OpenBLAS settings (0 when out of memory): the reference the benchmarks quote next
 * to their own figures, measured in the same run. Takes about 0.2 s. */
double fm_blas_sgemm_gflops(void);

/* The name of the kernel set OpenBLAS runs now (openblas_get_corename). */
const char *fm_blas_core(void);

#ifdef __cplusplus
}
#endif
#endif
