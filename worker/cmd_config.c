/* cmd_config.c - `facemill config`: shows the configuration a process started with
 * the same options would run with (defaults, then the file, then --set), or lists
 * every setting. The quickest way to check a config file before deploying it. */
#include "commands.h"
#include "facemill/config.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: facemill config [--config FILE] [--set KEY=VALUE]...\n"
            "       facemill config --describe\n"
            "\n"
            "Prints the effective configuration as YAML: the built-in defaults, then\n"
            "FILE (or the file named by $%s), then each --set in order.\n"
            "--describe lists every key with its type, default, bounds and help.\n",
            FM_CONFIG_ENV);
}

int fm_cmd_config(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    }
    fm_config c;
    fm_error err = {0};
    fm_config_defaults(&c);
    if (fm_config_from_args(&c, &argc, argv, &err) != FM_OK) {
        fprintf(stderr, "facemill config: %s\n", fm_error_text(&err));
        return 1;
    }
    bool describe = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--describe") == 0) {
            describe = true;
        } else {
            fprintf(stderr, "facemill config: unexpected argument '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    fm_status st = describe ? fm_config_describe(stdout) : fm_config_dump(&c, stdout);
    if (st == FM_OK && fflush(stdout) != 0)
        st = FM_ERR_IO;
    if (st != FM_OK) {
        fprintf(stderr, "facemill config: writing to stdout failed\n");
        return 1;
    }
    return 0;
}
