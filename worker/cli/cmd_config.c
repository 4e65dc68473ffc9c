/* cmd_config.c - `facemill config`: shows the configuration a process started with
 * the same options would run with (defaults, then the file, then --set), or lists
 * every setting. The quickest way to check a config file before deploying it. */
#include "cli_opts.h"
#include "commands.h"
#include "facemill/config.h"
#include "facemill/detect.h"
#include "facemill/modelpath.h"

#include <stdio.h>
#include <stdlib.h>

static const cli_cmd cmd = {
    "config", "[options]", 0, 0,
    "Prints the effective configuration as YAML: the built-in defaults, then\n"
    "FILE (or the file named by $" FM_CONFIG_ENV "), then each --set in order. Comments\n"
    "after it give the absolute file each model setting resolves to and the\n"
    "model search path (see `facemill models list`).\n",
    NULL, NULL};

/* One comment line: the file `name` of setting `key` resolves to, or why it does not. */
static void resolved_line(FILE *out, const fm_model_dirs *d, const char *key,
                          const char *list)
{
    char path[FM_CONFIG_STRING_MAX * 4];
    fm_error err = {0};
    if (fm_model_find_list(d, key, list, path, sizeof path, &err) == FM_OK)
        fprintf(out, "#   %s: %s\n", key, path);
    else
        fprintf(out, "#   %s: NOT FOUND (%s)\n", key, fm_error_text(&err));
}

/* The model settings resolved through the search path, as YAML comments (the output
 * stays a configuration file that loads). */
static fm_status print_resolved(const fm_config *c, FILE *out)
{
    fm_model_dirs *d = malloc(sizeof *d);
    if (!d)
        return FM_ERR_NOMEM;
    fm_error err = {0};
    fprintf(out, "\n# model files (resolved through the model search path):\n");
    if (fm_model_dirs_init(d, c->models.dir, &err) != FM_OK) {
        fprintf(out, "#   models.dir: NOT FOUND (%s)\n", fm_error_text(&err));
        free(d);
        return FM_OK;
    }
    resolved_line(out, d, "models.dir (" FM_DETECT_PNET_FILE ")", FM_DETECT_PNET_FILE);
    resolved_line(out, d, "embed.backbone", c->embed.backbone);
    if (c->heads.model[0])
        resolved_line(out, d, "heads.model", c->heads.model);
    fprintf(out, "# model search path:\n");
    for (int i = 0; i < d->n; i++)
        fprintf(out, "#   %s  (%s)\n", d->d[i].path, d->d[i].origin);
    free(d);
    return FM_OK;
}

int fm_cmd_config(int argc, char **argv)
{
    int describe = 0;
    const cli_opt opts[] = {
        CLI_FLAG("--describe", 0, &describe,
                 "list every key with its type, default, bounds and help instead"),
        CLI_END,
    };
    fm_config c;
    cli_args a;
    int code = cli_start(&cmd, opts, argc, argv, &c, &a);
    if (code >= 0)
        return code;
    fm_status st = describe ? fm_config_describe(stdout) : fm_config_dump(&c, stdout);
    if (st == FM_OK && !describe)
        st = print_resolved(&c, stdout);
    if (st == FM_OK && fflush(stdout) != 0)
        st = FM_ERR_IO;
    if (st != FM_OK)
        return cli_fail(&cmd, "writing to stdout failed");
    return CLI_EXIT_OK;
}
