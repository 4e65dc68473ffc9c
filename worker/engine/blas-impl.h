/* blas-impl.h - the parts of blas_select.c that tests drive directly: the CPU's
 * instruction sets, the table of OpenBLAS kernel sets, the decision (a pure function
 * of the setting, the running kernels, the environment and the CPU) and the numerical
 * self-check. Not part of the public API (include/facemill/blas.h). */
#ifndef FACEMILL_BLAS_IMPL_H
#define FACEMILL_BLAS_IMPL_H

#include "facemill/blas.h"

#include <stddef.h>

/* Instruction set levels, each including the ones below. */
typedef enum fm_blas_isa {
    FM_BLAS_ISA_SSE2 = 0,   /* x86-64 baseline */
    FM_BLAS_ISA_SSE3 = 1,
    FM_BLAS_ISA_AVX = 2,    /* with the OS saving YMM state */
    FM_BLAS_ISA_AVX2 = 3,   /* AVX2 and FMA */
    FM_BLAS_ISA_AVX512 = 4, /* F, CD, BW, DQ, VL, with the OS saving ZMM state */
} fm_blas_isa;

/* What the CPU offers, from cpuid and xgetbv. */
typedef struct fm_blas_cpu {
    int known;          /* 0: not an x86 CPU (nothing below is meaningful) */
    char vendor[13];    /* "GenuineIntel", "AuthenticAMD", ... */
    fm_blas_isa level;  /* highest level the CPU and the OS support */
    int avx512_bf16;
} fm_blas_cpu;

/* Reads this CPU. */
void fm_blas_cpu_read(fm_blas_cpu *out);

/* "AVX2 and FMA" etc. for a level (static text). */
const char *fm_blas_isa_text(fm_blas_isa level);

/* The OpenBLAS spelling of a kernel set name given in any case, NULL when OpenBLAS
 * 0.3.21 (x86-64) has no such set; *level (may be NULL) gets the instruction set its
 * kernels need. */
const char *fm_blas_core_lookup(const char *name, fm_blas_isa *level);

/* The kernel set best suited to cpu (see blas.h, "auto"); NULL for an unknown CPU. */
const char *fm_blas_best_core(const fm_blas_cpu *cpu);

/* The decision for a fresh process (no inherited mark). */
typedef struct fm_blas_plan {
    int change;           /* 1: re-execute with OPENBLAS_CORETYPE = target */
    const char *target;   /* static text */
    char why[256];        /* keeping: why; changing: why target */
} fm_blas_plan;

/* Decides for setting (see blas.h) when OpenBLAS runs `running`, the environment's
 * OPENBLAS_CORETYPE is user_env (NULL: unset) and the CPU is cpu. FM_ERR_INVALID (the
 * message lists what is accepted) for a bad setting. */
fm_status fm_blas_plan_for(const char *setting, const char *running, const char *user_env,
                           const fm_blas_cpu *cpu, fm_blas_plan *out, fm_error *err);

/* The self-check in this process, on the kernels it runs (see blas.h). Returns 0 when
 * every element agrees with the reference, 1 otherwise with the first disagreement
 * in detail. Reads FACEMILL_BLAS_SELFTEST_FAIL (the test hook). Allocates a few
 * hundred KiB and frees them. */
int fm_blas_self_check(char *detail, size_t size);

/* The self-check in a forked child with one OpenBLAS thread: 0 pass; 1 wrong
 * results, a crash, a hang (timeout_ms) or no child, with detail saying which. *ms
 * (may be NULL) gets the wall time. */
int fm_blas_self_check_child(int timeout_ms, char *detail, size_t size, double *ms);

#endif
