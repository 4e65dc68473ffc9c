/* cmd_blas.c - engine.blas_kernels for the computing subcommands of `facemill`
 * (cmd_blas.h): settled (and the program re-executed if need be) once the command
 * line has been checked and before anything computes. */
#include "cmd_blas.h"
#include "facemill/blas.h"
#include "facemill/log.h"
#include "facemill/nn.h"

#include <stdio.h>

int fm_cmd_blas_apply(const char *command, const fm_config *c)
{
    fm_blas_choice choice;
    fm_error err = {0};
    if (fm_blas_select(c->engine.blas_kernels, &choice, &err) != FM_OK) {
        fprintf(stderr, "facemill %s: %s\n", command, fm_error_text(&err));
        return 1;
    }
    fm_log_info("BLAS kernels %s: %s", choice.core, choice.reason);
    fm_log_debug("engine kernels %s", fm_nn_isa_name(fm_nn_isa_now()));
    return 0;
}
