/* cli_opts.c - the option parser and the prologue of the `facemill` commands (see
 * cli_opts.h). One pass over argv finds each option in the command's table or in the
 * table of the options every command takes, checks and stores its value, and moves
 * the operands to the front; --help is honoured wherever it stands, so a usage error
 * elsewhere on the line never hides the help. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "cli_opts.h"
#include "facemill/log.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define HELP_COLUMN 24 /* where an option's help starts */
#define HELP_WIDTH 79  /* the column help text wraps before */
#define COMMON_OPTS 7  /* lines of the common table, its end included */

const char *const cli_off_on[] = {"off", "on", NULL};

/* ---- values ---------------------------------------------------------------------- */

/* What o accepts, for messages: "expected an integer from 0 to 4096". */
static void describe(const cli_opt *o, char *buf, size_t size)
{
    int n = 0;
    switch (o->type) {
    case CLI_TYPE_FLAG:
        snprintf(buf, size, "no value");
        return;
    case CLI_TYPE_INT:
        snprintf(buf, size, "expected an integer from %.0f to %.0f", o->lo, o->hi);
        return;
    case CLI_TYPE_NUM:
        snprintf(buf, size, "expected a number from %g to %g", o->lo, o->hi);
        return;
    case CLI_TYPE_STR:
        snprintf(buf, size, "expected %s", o->value);
        return;
    case CLI_TYPE_PATH:
        snprintf(buf, size, "expected %s (a path, not empty)", o->value);
        return;
    case CLI_TYPE_ENUM:
        n = snprintf(buf, size, "expected one of");
        for (int i = 0; o->names[i] && n > 0 && (size_t)n < size; i++)
            n += snprintf(buf + n, size - (size_t)n, "%s %s", i ? "," : "", o->names[i]);
        return;
    case CLI_TYPE_CALL:
        snprintf(buf, size, "expected %s", o->accepts);
        return;
    }
}

/* s is written as a decimal number starts: digits (or a point) at s[0] or after one
 * sign, and no hexadecimal; so no spaces, no empty string, no "nan" or "inf", which
 * strtod would take. */
static int starts_number(const char *s)
{
    if (strpbrk(s, "xX"))
        return 0;
    if (*s == '+' || *s == '-')
        s++;
    return isdigit((unsigned char)*s) || *s == '.';
}

static int parse_int(const cli_opt *o, const char *s)
{
    char *end = NULL;
    errno = 0;
    long long v = starts_number(s) ? strtoll(s, &end, 10) : 0;
    if (!end || end == s || *end || errno || v < (long long)o->lo || v > (long long)o->hi)
        return -1;
    if (o->store == CLI_STORE_INT)
        *(int *)o->target = (int)v;
    else if (o->store == CLI_STORE_INT64)
        *(int64_t *)o->target = (int64_t)v;
    else
        *(uint64_t *)o->target = (uint64_t)v; /* lo >= 0 in every table */
    return 0;
}

static int parse_num(const cli_opt *o, const char *s)
{
    char *end = NULL;
    errno = 0;
    double v = starts_number(s) ? strtod(s, &end) : NAN;
    if (!end || end == s || *end || errno || !isfinite(v) || v < o->lo || v > o->hi)
        return -1;
    *(double *)o->target = v == 0 ? 0.0 : v; /* no -0 */
    return 0;
}

static int parse_enum(const cli_opt *o, const char *s)
{
    for (int i = 0; o->names[i]; i++)
        if (strcmp(s, o->names[i]) == 0) {
            *(int *)o->target = i;
            return 0;
        }
    return -1;
}

static int store(const cli_opt *o, const char *s)
{
    switch (o->type) {
    case CLI_TYPE_FLAG:
        *(int *)o->target = (int)o->lo;
        return 0;
    case CLI_TYPE_INT:
        return parse_int(o, s);
    case CLI_TYPE_NUM:
        return parse_num(o, s);
    case CLI_TYPE_PATH:
        if (!*s)
            return -1;
        /* fall through */
    case CLI_TYPE_STR:
        *(const char **)o->target = s;
        return 0;
    case CLI_TYPE_ENUM:
        return parse_enum(o, s);
    case CLI_TYPE_CALL:
        return o->fn(o->target, s);
    }
    return -1;
}

int cli_parse_value(const cli_opt *o, const char *s, char *why, size_t size)
{
    if (store(o, s) == 0)
        return 0;
    describe(o, why, size);
    return -1;
}

/* ---- the options every command takes --------------------------------------------- */

typedef struct common {
    int help;
    const char *config;
    const char **sets; /* argc slots */
    int n_sets;
    int log_level;
} common;

static int take_config(void *target, const char *value)
{
    common *st = target;
    if (st->config || !*value)
        return -1;
    st->config = value;
    return 0;
}

static int take_set(void *target, const char *value)
{
    common *st = target;
    if (!strchr(value, '='))
        return -1;
    st->sets[st->n_sets++] = value;
    return 0;
}

static int take_log_level(void *target, const char *value)
{
    int level = fm_log_level_parse(value);
    if (level < 0)
        return -1;
    *(int *)target = level;
    return 0;
}

/* The common table with its targets in st. */
static void common_table(common *st, cli_opt t[COMMON_OPTS])
{
    const cli_opt c[COMMON_OPTS] = {
        CLI_FLAG("--help", 'h', &st->help, "print this help and exit"),
        CLI_CALL("--config", 0, "FILE", "a configuration file's path, given once",
                 take_config, st,
                 "the configuration file (YAML) applied over the defaults; without it, "
                 "the file named by $" FM_CONFIG_ENV " when that is set"),
        CLI_CALL("--set", 0, "KEY=VALUE", "KEY=VALUE", take_set, st,
                 "one setting, applied after the file; any number, in order "
                 "(`facemill config --describe` lists them)"),
        {.name = "--quiet", .short_name = 'q', .type = CLI_TYPE_FLAG, .lo = FM_LOG_ERROR,
         .target = &st->log_level, .help = "log errors only (log.level=error)"},
        {.name = "--verbose", .short_name = 'v', .type = CLI_TYPE_FLAG, .lo = FM_LOG_DEBUG,
         .target = &st->log_level, .help = "log everything (log.level=debug)"},
        CLI_CALL("--log-level", 0, "LEVEL", "error, warn, info or debug", take_log_level,
                 &st->log_level, "least severe message logged: error, warn, info or debug"),
        CLI_END,
    };
    memcpy(t, c, sizeof c);
}

/* ---- parsing --------------------------------------------------------------------- */

/* The option of the two tables named by a long name (len bytes) or a short one. */
static const cli_opt *find(const cli_opt *const tables[2], const char *name, size_t len,
                           char short_name)
{
    for (int k = 0; k < 2; k++)
        for (const cli_opt *o = tables[k]; o->name; o++)
            if (short_name ? o->short_name == short_name
                           : strlen(o->name) == len && strncmp(o->name, name, len) == 0)
                return o;
    return NULL;
}

/* How the option was written, for messages: "-j" or "--workers". */
static void spelled(char *buf, size_t size, const char *token, const cli_opt *o)
{
    if (token[1] == '-')
        snprintf(buf, size, "%s", o->name);
    else
        snprintf(buf, size, "-%c", o->short_name);
}

/* One option at argv[*i] (advanced past its value). Returns 0, or -1 with the
 * message in msg. */
static int parse_option(const cli_opt *const tables[2], int argc, char **argv, int *i,
                        char *msg, size_t size)
{
    const char *tok = argv[*i], *value = NULL;
    const cli_opt *o;
    if (tok[1] == '-') {
        const char *eq = strchr(tok, '=');
        o = find(tables, tok, eq ? (size_t)(eq - tok) : strlen(tok), 0);
        value = eq ? eq + 1 : NULL;
    } else {
        o = find(tables, NULL, 0, tok[1]);
        value = tok[2] ? tok + 2 : NULL;
        if (o && o->type == CLI_TYPE_FLAG && value)
            o = NULL; /* "-qx" is no option of ours */
    }
    if (!o) {
        snprintf(msg, size, "unknown option '%s'", tok);
        return -1;
    }
    char name[64], why[256];
    spelled(name, sizeof name, tok, o);
    if (o->type == CLI_TYPE_FLAG && value) {
        snprintf(msg, size, "%s takes no value", name);
        return -1;
    }
    if (o->type != CLI_TYPE_FLAG && !value) {
        if (*i + 1 >= argc) {
            describe(o, why, sizeof why);
            snprintf(msg, size, "%s needs a value: %s", name, why);
            return -1;
        }
        value = argv[++*i];
    }
    if (cli_parse_value(o, value, why, sizeof why) != 0) {
        snprintf(msg, size, "%s '%s': %s", name, value, why);
        return -1;
    }
    return 0;
}

/* Parses argv into the two tables, moving the operands to argv[1..*n]. Returns 0, or
 * -1 with the first error in msg (the rest is still read, for --help). */
static int parse(const cli_opt *const tables[2], int argc, char **argv, int *n, char *msg,
                 size_t size)
{
    int bad = 0, w = 1, options = 1;
    for (int i = 1; i < argc; i++) {
        const char *tok = argv[i];
        if (options && strcmp(tok, "--") == 0) {
            options = 0;
        } else if (options && tok[0] == '-' && tok[1]) {
            char m[512];
            if (parse_option(tables, argc, argv, &i, m, sizeof m) != 0 && !bad) {
                snprintf(msg, size, "%s", m);
                bad = 1;
            }
        } else {
            argv[w++] = argv[i];
        }
    }
    argv[w] = NULL; /* w <= argc, and argv[argc] is NULL */
    *n = w - 1;
    return bad ? -1 : 0;
}

/* The operands' count against the command's bounds: 0, or -1 with msg. */
static int count_check(const cli_cmd *cmd, int n, char **operands, char *msg, size_t size)
{
    if (n < cmd->min_operands) {
        snprintf(msg, size, "expected at least %d argument%s: facemill %s %s",
                 cmd->min_operands, cmd->min_operands > 1 ? "s" : "", cmd->name,
                 cmd->synopsis);
        return -1;
    }
    if (cmd->max_operands >= 0 && n > cmd->max_operands) {
        snprintf(msg, size, "unexpected argument '%s'", operands[cmd->max_operands]);
        return -1;
    }
    return 0;
}

int cli_start(const cli_cmd *cmd, const cli_opt *opts, int argc, char **argv,
              fm_config *c, cli_args *a)
{
    common st = {.log_level = -1};
    cli_opt ctab[COMMON_OPTS];
    const cli_opt *const tables[2] = {opts, ctab};
    char msg[1024];
    int n = 0;
    memset(a, 0, sizeof *a);
    if (!(st.sets = malloc((size_t)(argc > 0 ? argc : 1) * sizeof *st.sets)))
        return cli_fail(cmd, "out of memory");
    common_table(&st, ctab);
    int rc = parse(tables, argc, argv, &n, msg, sizeof msg);
    if (st.help) {
        cli_help(stdout, cmd, opts);
        free(st.sets);
        return CLI_EXIT_OK;
    }
    if (rc == 0)
        rc = count_check(cmd, n, argv + 1, msg, sizeof msg);
    fm_error err = {0};
    if (cmd->defaults)
        cmd->defaults(c);
    else
        fm_config_defaults(c);
    if (rc == 0 && fm_config_apply(c, st.config, st.sets, st.n_sets, &err) != FM_OK) {
        snprintf(msg, sizeof msg, "%s", fm_error_text(&err));
        rc = -1;
    }
    free(st.sets);
    if (rc != 0)
        return cli_usage_error(cmd, "%s", msg);
    if (st.log_level >= 0)
        c->log.level = st.log_level;
    fm_log_init(cmd->name, (int)c->log.level);
    a->n = n;
    a->operands = argv + 1;
    a->config = st.config;
    a->log_level = st.log_level;
    return -1;
}

/* ---- help ------------------------------------------------------------------------ */

/* Writes text starting at column *col, wrapping before HELP_WIDTH onto lines indented
 * by indent; updates *col. */
static void wrap(FILE *out, const char *text, int *col, int indent)
{
    while (*text) {
        size_t len = strcspn(text, " ");
        if (*col > indent && *col + 1 + (int)len > HELP_WIDTH) {
            fprintf(out, "\n%*s", indent, "");
            *col = indent;
        } else if (*col > indent) {
            fputc(' ', out);
            (*col)++;
        }
        fwrite(text, 1, len, out);
        *col += (int)len;
        text += len;
        while (*text == ' ')
            text++;
    }
}

/* The option's value as the help shows it: "N", "auto|bar|lines|none". */
static void value_name(char *buf, size_t size, const cli_opt *o)
{
    buf[0] = '\0';
    if (o->type == CLI_TYPE_ENUM) {
        size_t n = 0;
        for (int i = 0; o->names[i] && n < size; i++)
            n += (size_t)snprintf(buf + n, size - n, "%s%s", i ? "|" : "", o->names[i]);
    } else if (o->type != CLI_TYPE_FLAG) {
        snprintf(buf, size, "%s", o->value);
    }
}

static void help_option(FILE *out, const cli_opt *o)
{
    char left[256], value[160], range[96] = "";
    value_name(value, sizeof value, o);
    int n = o->short_name ? snprintf(left, sizeof left, "  -%c, %s", o->short_name, o->name)
                          : snprintf(left, sizeof left, "  %s", o->name);
    if (value[0])
        snprintf(left + n, sizeof left - (size_t)n, " %s", value);
    fputs(left, out);
    int col = (int)strlen(left);
    if (col > HELP_COLUMN - 2) {
        fputc('\n', out);
        col = 0;
    }
    fprintf(out, "%*s", HELP_COLUMN - col, "");
    col = HELP_COLUMN;
    wrap(out, o->help, &col, HELP_COLUMN);
    if (o->type == CLI_TYPE_INT)
        snprintf(range, sizeof range, "[%.0f..%.0f]", o->lo, o->hi);
    else if (o->type == CLI_TYPE_NUM)
        snprintf(range, sizeof range, "[%g..%g]", o->lo, o->hi);
    wrap(out, range, &col, HELP_COLUMN);
    fputc('\n', out);
}

void cli_help_common(FILE *out)
{
    common st = {.log_level = -1};
    cli_opt ctab[COMMON_OPTS];
    common_table(&st, ctab);
    fprintf(out, "common options (every command):\n");
    for (const cli_opt *o = ctab; o->name; o++)
        help_option(out, o);
}

void cli_help(FILE *out, const cli_cmd *cmd, const cli_opt *opts)
{
    fprintf(out, "usage: facemill %s %s\n\n%s", cmd->name, cmd->synopsis, cmd->about);
    if (opts[0].name) {
        fprintf(out, "\noptions:\n");
        for (const cli_opt *o = opts; o->name; o++)
            help_option(out, o);
    }
    fputc('\n', out);
    cli_help_common(out);
    int col = 0;
    fputc('\n', out);
    wrap(out, cmd->exits ? cmd->exits : "exit status: 0 success, 1 failure, 2 usage error",
         &col, 2);
    fputc('\n', out);
}

/* ---- messages -------------------------------------------------------------------- */

void cli_command_line(char *buf, size_t size, int argc, char **argv)
{
    snprintf(buf, size, "facemill");
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, size - l, " %s", argv[i]);
    }
}

int cli_usage_error(const cli_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "facemill %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see facemill %s --help)\n", cmd->name);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_fail(const cli_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "facemill %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_EXIT_FAILURE;
}

/* See cli_opts.h. */
/* The real directory of path into dir and its last part into *base (path itself). */
static int split_real(const char *path, char dir[PATH_MAX], const char **base)
{
    const char *slash = strrchr(path, '/');
    char d[PATH_MAX];
    *base = slash ? slash + 1 : path;
    if (!slash)
        snprintf(d, sizeof d, ".");
    else if (slash == path)
        snprintf(d, sizeof d, "/");
    else
        snprintf(d, sizeof d, "%.*s", (int)(slash - path), path);
    return realpath(d, dir) ? 0 : -1;
}

int cli_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    int ea = stat(a, &sa) == 0, eb = stat(b, &sb) == 0;
    if (ea || eb)
        return ea && eb && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    char da[PATH_MAX], db[PATH_MAX];
    const char *ba, *bb;
    if (split_real(a, da, &ba) != 0 || split_real(b, db, &bb) != 0)
        return strcmp(a, b) == 0;
    return strcmp(da, db) == 0 && strcmp(ba, bb) == 0;
}

/* True when out names one of db's companion files (its -wal, -shm or -journal),
 * whether or not that exists now: SQLite makes and empties them as it goes. */
static int is_companion(const char *out, const char *db)
{
    char od[PATH_MAX], dd[PATH_MAX];
    const char *ob, *dbase;
    if (!db || split_real(out, od, &ob) != 0 || split_real(db, dd, &dbase) != 0 ||
        strcmp(od, dd) != 0)
        return 0;
    size_t n = strlen(dbase);
    static const char *const sfx[] = {"-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 3; i++)
        if (strncmp(ob, dbase, n) == 0 && strcmp(ob + n, sfx[i]) == 0)
            return 1;
    return 0;
}

int cli_check_output(const cli_cmd *cmd, const char *out, const char *db)
{
    struct stat so, sd;
    if (out && is_companion(out, db))
        return cli_usage_error(cmd, "%s is a file SQLite keeps beside the database %s: not "
                               "overwritten", out, db);
    if (!out || stat(out, &so) != 0 || !S_ISREG(so.st_mode))
        return -1; /* a new file, a terminal, a pipe */
    if (db && stat(db, &sd) == 0 && so.st_dev == sd.st_dev && so.st_ino == sd.st_ino)
        return cli_usage_error(cmd, "%s is the database %s itself: not overwritten", out, db);
    unsigned char head[16] = {0};
    FILE *f = fopen(out, "rb");
    size_t n = f ? fread(head, 1, sizeof head, f) : 0;
    if (f)
        fclose(f);
    static const char sqlite_magic[16] = "SQLite format 3"; /* and its NUL */
    if (n == sizeof head && memcmp(head, sqlite_magic, sizeof head) == 0)
        return cli_usage_error(cmd, "%s is an SQLite database: not overwritten (remove it "
                               "or write elsewhere)", out);
    /* a write-ahead log's header: magic 0x377f0682 or 0x377f0683, big-endian */
    if (n >= 4 && head[0] == 0x37 && head[1] == 0x7f && head[2] == 0x06 &&
        (head[3] == 0x82 || head[3] == 0x83))
        return cli_usage_error(cmd, "%s is an SQLite write-ahead log: not overwritten", out);
    return -1;
}
