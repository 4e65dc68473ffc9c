/* cmd_blas.h - the OpenBLAS kernel choice (include/facemill/blas.h) for the
 * subcommands of `facemill` that compute. Program code, not part of libfacemill. */
#ifndef FACEMILL_CMD_BLAS_H
#define FACEMILL_CMD_BLAS_H

#include "facemill/config.h"

/* Called by a command that computes (detect, predict, train, eval, bench) once its
 * command line has been checked: after cli_start (so --config, --set and
 * FACEMILL_CONFIG count) and after the command's own usage errors, so that one comes
 * out alone, and before anything is done. Applies engine.blas_kernels with
 * fm_blas_select, which may re-execute the program with its original command line,
 * and logs the kernel set and why in one INFO line. Returns 0 to go on, or 1 (a bad
 * engine.blas_kernels, or kernels that failed their self-check with no way back; the
 * message is on stderr). */
int fm_cmd_blas_apply(const char *command, const fm_config *c);

#endif
