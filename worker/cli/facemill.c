/* facemill.c - the `facemill` program: one executable, one subcommand per job
 * (git style). This file only dispatches; each subcommand lives in its own file. */
#include "cli_opts.h"
#include "commands.h"
#include "facemill/log.h"

#include <locale.h>
#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    fm_command_fn fn;
    const char *help;
} command;

static const command commands[] = {
    /* --- command table --- */
    {"model", fm_cmd_model, "inspect, verify, compact and expand model files"},
    {"models", fm_cmd_models, "fetch the pretrained models, list every model file found"},
    {"config", fm_cmd_config, "show the effective configuration"},
    {"detect", fm_cmd_detect, "find faces and landmarks in images"},
    {"predict", fm_cmd_predict, "faces with age, gender and ethnicity"},
    {"train", fm_cmd_train, "train the attribute heads (--freeze)"},
    {"eval", fm_cmd_eval, "measure the attributes on UTKFace-named images"},
    {"export", fm_cmd_export, "write a results database out as JSONL or CSV"},
    {"submit", fm_cmd_submit, "submit images to a broker and wait for their results"},
    {"status", fm_cmd_status, "show a broker's queue, workers, rates and failures"},
    {"label", fm_cmd_label, "label images on this machine into a results database"},
    {"bench", fm_cmd_bench, "measure labelling on this machine: images/s, stages, GFLOPS"},
    {"keygen", fm_cmd_keygen, "make a CurveZMQ key pair for a broker, sink, worker or client"},
    {"report", fm_cmd_report, "a results database as one HTML page (charts, faces)"},
    /* --- end of command table --- */
    {NULL, NULL, NULL},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: facemill COMMAND [ARGS...]\n\ncommands:\n");
    for (const command *c = commands; c->name; c++)
        fprintf(out, "  %-10s %s\n", c->name, c->help);
    fprintf(out, "\n`facemill COMMAND --help` (or `facemill help COMMAND`) describes one "
                 "command;\n`facemill --version` prints the version.\n\n");
    cli_help_common(out);
    fprintf(out, "\nexit status: 0 success, 1 failure, 2 usage error; label and submit: 3 "
                 "the run\n  did not finish\n");
}

int main(int argc, char **argv)
{
    fm_log_init("facemill", -1);
    /* Characters as UTF-8 (numbers and the rest stay "C"): libarchive gives a zip's
     * UTF-8 member names (Python's zipfile, 7-Zip and Windows write them) only in a
     * UTF-8 locale, and none at all in the C locale. */
    setlocale(LC_CTYPE, "C.UTF-8");
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("facemill %s\n", FACEMILL_VERSION);
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "help") == 0 && argc > 2) { /* help COMMAND: COMMAND --help */
        for (const command *c = commands; c->name; c++)
            if (strcmp(argv[2], c->name) == 0) {
                char *args[] = {argv[2], "--help", NULL};
                return c->fn(2, args);
            }
        fprintf(stderr, "facemill: unknown command '%s' (see facemill --help)\n", argv[2]);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    for (const command *c = commands; c->name; c++)
        if (strcmp(argv[1], c->name) == 0)
            return c->fn(argc - 1, argv + 1);
    fprintf(stderr, "facemill: unknown command '%s' (see facemill --help)\n", argv[1]);
    return CLI_EXIT_USAGE;
}
