/* cli_opts.h - the one option parser of the `facemill` commands and the prologue they
 * share.
 *
 * Why it exists: each command describes its options in one table (long name, short
 * name, the value's type and range, help), and the same table drives the parsing and
 * the --help text, so the help cannot list an option the parser refuses or miss one
 * it takes. A number is taken only when the whole argument is a number in range
 * (`-j abc`, `--timeout 5x`, `nan` are usage errors naming the option and what it
 * accepts), and every command exits the same way: 0 success, 1 failure, 2 usage.
 * The options every command takes (--help, --config, --set, the log level) are
 * parsed, applied and documented here once. Program code, not part of libfacemill.
 *
 * A command:
 *
 *     static const cli_cmd cmd = {"export", "[options] DB", 1, 1, "Writes ...", NULL};
 *     const char *out = NULL;
 *     int times = 0;
 *     const cli_opt opts[] = {
 *         CLI_PATH("--output", 'o', "FILE", &out, "write to FILE instead of stdout"),
 *         CLI_FLAG("--times", 0, &times, "add the stage times"),
 *         CLI_END,
 *     };
 *     fm_config c;
 *     cli_args a;
 *     int rc = cli_start(&cmd, opts, argc, argv, &c, &a);
 *     if (rc >= 0)
 *         return rc;            (--help printed, or a usage error reported)
 *     ... a.operands[0 .. a.n) ...
 */
#ifndef FACEMILL_CLI_OPTS_H
#define FACEMILL_CLI_OPTS_H

#include "facemill/config.h"

#include <stdint.h>
#include <stdio.h>

/* The exit codes of every command; label and submit add 3 (a run that did not
 * finish), which ops/man/facemill.1 documents with these. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };

typedef enum cli_type {
    CLI_TYPE_FLAG, /* no value: the int target becomes (int)lo */
    CLI_TYPE_INT,  /* a whole decimal number in [lo, hi]: int, int64_t or uint64_t */
    CLI_TYPE_NUM,  /* a finite decimal number in [lo, hi]: double */
    CLI_TYPE_STR,  /* any text: const char * (points into argv) */
    CLI_TYPE_PATH, /* a file or directory name, not empty: const char * */
    CLI_TYPE_ENUM, /* one of names: the int target becomes its index */
    CLI_TYPE_CALL, /* fn(target, value) decides: lists, repeated options, other names */
} cli_type;

/* Where a CLI_TYPE_INT value is stored. */
typedef enum cli_int_store { CLI_STORE_INT, CLI_STORE_INT64, CLI_STORE_UINT64 } cli_int_store;

typedef struct cli_opt {
    const char *name;          /* "--workers"; NULL ends a table */
    char short_name;           /* 'j' for -j, or 0 */
    cli_type type;
    const char *value;         /* the value's name in the help: "N", "FILE" (not enums) */
    double lo, hi;             /* CLI_TYPE_INT, CLI_TYPE_NUM: bounds; FLAG: value set */
    const char *const *names;  /* CLI_TYPE_ENUM: the accepted values, NULL-ended */
    int (*fn)(void *target, const char *value); /* CLI_TYPE_CALL: 0, or -1 refused */
    const char *accepts;       /* CLI_TYPE_CALL: what fn takes, for the error message */
    void *target;
    cli_int_store store;       /* CLI_TYPE_INT */
    const char *help;          /* one sentence or two; wrapped when printed */
} cli_opt;

/* The table's lines. Each refuses to compile unless the target has the type the
 * option stores. */
#define CLI_FLAG(l, s, p, h)                                                            \
    {.name = (l), .short_name = (s), .type = CLI_TYPE_FLAG, .lo = 1,                    \
     .target = _Generic((p), int *: (p)), .help = (h)}
#define CLI_INT(l, s, v, lo_, hi_, p, h)                                                \
    {.name = (l), .short_name = (s), .type = CLI_TYPE_INT, .value = (v), .lo = (lo_),   \
     .hi = (hi_), .target = (p),                                                        \
     .store = _Generic((p), int *: CLI_STORE_INT, int64_t *: CLI_STORE_INT64,           \
                       uint64_t *: CLI_STORE_UINT64),                                   \
     .help = (h)}
#define CLI_NUM(l, s, v, lo_, hi_, p, h)                                                \
    {.name = (l), .short_name = (s), .type = CLI_TYPE_NUM, .value = (v), .lo = (lo_),   \
     .hi = (hi_), .target = _Generic((p), double *: (p)), .help = (h)}
#define CLI_STR(l, s, v, p, h)                                                          \
    {.name = (l), .short_name = (s), .type = CLI_TYPE_STR, .value = (v),                \
     .target = _Generic((p), const char **: (p)), .help = (h)}
#define CLI_PATH(l, s, v, p, h)                                                         \
    {.name = (l), .short_name = (s), .type = CLI_TYPE_PATH, .value = (v),               \
     .target = _Generic((p), const char **: (p)), .help = (h)}
#define CLI_ENUM(l, s, allowed, p, h)                                                   \
    {.name = (l), .short_name = (s), .type = CLI_TYPE_ENUM, .names = (allowed),         \
     .target = _Generic((p), int *: (p)), .help = (h)}
#define CLI_CALL(l, s, v, what, f, p, h)                                                \
    {.name = (l), .short_name = (s), .type = CLI_TYPE_CALL, .value = (v),               \
     .accepts = (what), .fn = (f), .target = (p), .help = (h)}
#define CLI_END {.name = NULL}

/* The names of a CLI_ENUM that sets an int to 0 ("off") or 1 ("on"). */
extern const char *const cli_off_on[];

/* A command: what its help says around the options. */
typedef struct cli_cmd {
    const char *name;      /* "label", "model compact": after "facemill " */
    const char *synopsis;  /* after the name on the usage line: "[options] INPUT..." */
    int min_operands;      /* arguments that are not options */
    int max_operands;      /* -1: any number */
    const char *about;     /* what the command does, printed as given */
    const char *exits;     /* its exit status line; NULL: 0 success, 1 failure, 2 usage */
    void (*defaults)(fm_config *c); /* its configuration before options; NULL:
                                       fm_config_defaults */
} cli_cmd;

/* What cli_start leaves for the command. */
typedef struct cli_args {
    int n;                 /* operands */
    char **operands;       /* n, in order (slots of argv), NULL after the last */
    const char *config;    /* --config FILE, or NULL */
    int log_level;         /* -q, -v or --log-level as an fm_log_level, or -1 */
} cli_args;

/* The prologue of every command. Parses argv[1..argc) (argv[0] is the command's name;
 * "--" ends the options) against opts and the options every command takes, then:
 *   --help or -h anywhere: prints the help on stdout and returns CLI_EXIT_OK;
 *   a usage error (unknown option, missing or bad value, wrong number of operands,
 *   a bad --config or --set): prints one line on stderr, returns CLI_EXIT_USAGE;
 *   otherwise sets *c to the command's defaults and applies the configuration: the
 *   --config file or $FACEMILL_CONFIG, then each --set in order, then the log options
 *   to log.level; starts the log as the command; fills *a and returns -1.
 * It logs nothing: a command that computes applies engine.blas_kernels itself once
 * its own usage errors are ruled out (fm_cmd_blas_apply, cmd_blas.h).
 * The operands are moved to the front of argv (a->operands = argv + 1). Option
 * values point into argv. */
int cli_start(const cli_cmd *cmd, const cli_opt *opts, int argc, char **argv,
              fm_config *c, cli_args *a);

/* Prints the help of cmd and its options on out: the usage line, about, the options
 * with what each accepts, the common options, the exit status. */
void cli_help(FILE *out, const cli_cmd *cmd, const cli_opt *opts);

/* Prints the options every command takes (for `facemill --help`). */
void cli_help_common(FILE *out);

/* "facemill" and argv[0..argc) separated by spaces, cut to fit size: the command
 * line as given, for a trained file's lineage. */
void cli_command_line(char *buf, size_t size, int argc, char **argv);

/* Prints "facemill NAME: MESSAGE (see facemill NAME --help)" on stderr and returns
 * CLI_EXIT_USAGE: a usage error found after cli_start (a required option missing,
 * options that exclude each other). */
int cli_usage_error(const cli_cmd *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints "facemill NAME: MESSAGE" on stderr and returns CLI_EXIT_FAILURE. */
int cli_fail(const cli_cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Checks an output file a command is about to write before anything is written:
 * returns -1 when out may be written (a new file, or one that is no database), else
 * prints why and returns CLI_EXIT_USAGE. Refused: the database db itself (under any
 * name: the same device and inode), and any SQLite database or write-ahead log, so
 * `facemill export labels.db -o labels.db` or a slip of the shell's completion does
 * not empty a night's results. */
int cli_check_output(const cli_cmd *cmd, const char *out, const char *db);

/* 1 when the paths a and b name the same file: the same device and inode when both
 * exist; when neither does, the same name in the same real directory (the names as
 * given when a directory cannot be resolved); 0 otherwise. */
int cli_same_file(const char *a, const char *b);

/* Parses s as what opt accepts into opt's target. Returns 0, or -1 (target untouched)
 * with what it accepts, "expected an integer from 0 to 4096", in why. */
int cli_parse_value(const cli_opt *opt, const char *s, char *why, size_t size);

#endif
