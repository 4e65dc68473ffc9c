/* cmd_blas.h - the OpenBLAS kernel choice (include/facemill/blas.h) for the
 * subcommands of `facemill` that compute. Program code, not part of libfacemill. */
#ifndef FACEMILL_CMD_BLAS_H
#define FACEMILL_CMD_BLAS_H

/* Called by main with its own argc and argv (argv[1] the subcommand) before the
 * subcommand runs. For a subcommand that computes (detect, predict, train, eval,
 * bench), unless --help or -h is among its arguments: reads the configuration from
 * its arguments as the subcommand will (--config, --set, FACEMILL_CONFIG), applies
 * engine.blas_kernels with fm_blas_select (which may re-execute the program with the
 * same arguments) and logs the kernel set and why in one INFO line. Returns 0 to go
 * on, or the exit code to stop with (1: a bad engine.blas_kernels, or kernels that
 * failed their self-check with no way back; the message is on stderr). A
 * configuration that does not load is left for the subcommand to report. */
int fm_cmd_blas_startup(int argc, char **argv);

#endif
