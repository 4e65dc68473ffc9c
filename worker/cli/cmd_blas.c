/* cmd_blas.c - engine.blas_kernels for the computing subcommands of `facemill`
 * (cmd_blas.h): the configuration read ahead of the subcommand, so the kernel set is
 * settled (and the program re-executed if need be) before anything computes. */
#include "cmd_blas.h"
#include "facemill/blas.h"
#include "facemill/config.h"
#include "facemill/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The subcommands that run the engine. */
static const char *const computing[] = {"detect", "predict", "train", "eval", "bench", NULL};

int fm_cmd_blas_startup(int argc, char **argv)
{
    if (argc < 2)
        return 0;
    int computes = 0;
    for (int i = 0; computing[i]; i++)
        computes |= strcmp(argv[1], computing[i]) == 0;
    if (!computes)
        return 0;
    for (int i = 2; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 0;
    /* fm_config_from_args removes what it reads: give it a copy of the arguments */
    int n = argc - 1;
    char **args = calloc((size_t)n + 1, sizeof *args);
    fm_config *c = malloc(sizeof *c);
    fm_error err = {0};
    int rc = 0;
    if (!args || !c) {
        fprintf(stderr, "facemill %s: out of memory\n", argv[1]);
        rc = 1;
        goto done;
    }
    memcpy(args, argv + 1, (size_t)n * sizeof *args);
    fm_config_defaults(c);
    if (fm_config_from_args(c, &n, args, &err) != FM_OK)
        goto done; /* the subcommand reads the same and says what is wrong */
    fm_log_init(argv[1], c->log.level);
    fm_blas_choice choice;
    if (fm_blas_select(c->engine.blas_kernels, &choice, &err) != FM_OK) {
        fprintf(stderr, "facemill %s: %s\n", argv[1], fm_error_text(&err));
        rc = 1;
        goto done;
    }
    fm_log_info("BLAS kernels %s: %s", choice.core, choice.reason);
done:
    free(args);
    free(c);
    return rc;
}
